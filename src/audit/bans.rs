//! The `bans` table: bans imposed by verdicts (inside intake's transaction), the check token
//! servers ask, the list ops read, and lifting.
//!
//! A ban is *active* while it is open (`ended_at IS NULL`) and `expires_at` is ahead; an open row
//! whose time has run is *expired* and is closed (`ended_at = expires_at`) when a new ban for the
//! same user and place arrives, which then starts a row of its own. A new ban for a place with an
//! active one extends it to the later end instead.

use std::collections::{BTreeMap, HashSet};

use chrono::{DateTime, Utc};
use sqlx::{FromRow, Postgres, QueryBuilder};

use super::{AuditError, Db};
use crate::ban::{BanScope, BanState, RuleState};
use crate::ban_index::{self, Place};
use crate::keys::AppKey;
use crate::vendors::Vendor;
use crate::verdict::Verdict;

type Tx = sqlx::Transaction<'static, sqlx::Postgres>;

/// A room as a token server or an operator names it. TRTC's numeric room 1234 and string room
/// "1234" are different rooms; `numeric: None` means either (a TRTC room of digits asked about
/// without saying which: the safe reading counts a ban in either).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoomRef {
    pub text: String,
    pub numeric: Option<bool>,
}

/// The place and user a ban row is unique for while open; sorted, it is the order rows are
/// locked in by every writer.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct BanKey {
    vendor: Vendor,
    app_id: i64,
    user_id: String,
    scope: BanScope,
    /// `None` for scope `app`.
    room: Option<(String, bool)>,
}

/// What the verdicts of one batch impose on one key.
struct Imposed<'a> {
    seconds: u32,
    /// The verdict whose ban ends last, and its reason.
    verdict_id: &'a str,
    reason: Option<&'a str>,
    verdict_ids: Vec<&'a str>,
}

/// Records the bans of verdicts recorded for the first time in this transaction: each starts
/// now, before any kick. Several verdicts of one batch banning the same user in the same place
/// make one row (the longest wins, every verdict is listed). Returns the fingerprints of the
/// places banned (`ban_index`).
pub(crate) async fn impose(
    db: &Db,
    tx: &mut Tx,
    verdicts: &[&Verdict],
    rule_apps: &HashSet<AppKey>,
) -> Result<Vec<u64>, AuditError> {
    let mut by_key: BTreeMap<BanKey, Imposed<'_>> = BTreeMap::new();
    for v in verdicts {
        let Some(ban) = v.ban else { continue };
        let room = match ban.scope {
            BanScope::Room => Some((v.room_id.to_string(), v.room_id.is_numeric())),
            BanScope::App => None,
        };
        for user in &v.user_ids {
            let key = BanKey {
                vendor: v.vendor,
                app_id: i64::from(v.app_id),
                user_id: user.clone(),
                scope: ban.scope,
                room: room.clone(),
            };
            let entry = by_key.entry(key).or_insert_with(|| Imposed {
                seconds: 0,
                verdict_id: &v.verdict_id,
                reason: v.reason.as_deref(),
                verdict_ids: Vec::new(),
            });
            if ban.seconds > entry.seconds {
                (entry.seconds, entry.verdict_id, entry.reason) = (ban.seconds, &v.verdict_id, v.reason.as_deref());
            }
            entry.verdict_ids.push(&v.verdict_id);
        }
    }
    if by_key.is_empty() {
        return Ok(Vec::new());
    }
    let keys: Vec<&BanKey> = by_key.keys().collect();
    let fingerprints = keys
        .iter()
        .map(|k| {
            let place = match &k.room {
                None => Place::App,
                Some((text, numeric)) => Place::Room { text, numeric: *numeric },
            };
            ban_index::fingerprint(k.vendor.as_str(), k.app_id, place, &k.user_id)
        })
        .collect();
    let vendors: Vec<&str> = keys.iter().map(|k| k.vendor.as_str()).collect();
    let apps: Vec<i64> = keys.iter().map(|k| k.app_id).collect();
    let users: Vec<&str> = keys.iter().map(|k| k.user_id.as_str()).collect();
    let scopes: Vec<&str> = keys.iter().map(|k| k.scope.as_str()).collect();
    let rooms: Vec<Option<&str>> = keys.iter().map(|k| k.room.as_ref().map(|r| r.0.as_str())).collect();
    let numerics: Vec<Option<bool>> = keys.iter().map(|k| k.room.as_ref().map(|r| r.1)).collect();
    // A new ban of an app with vendor ban rules starts with its rule pending.
    let with_rule: Vec<bool> = keys
        .iter()
        .map(|k| u32::try_from(k.app_id).is_ok_and(|a| rule_apps.contains(&AppKey::new(k.vendor, a))))
        .collect();
    // Open rows whose time has run end where it ran out; the new ban starts a row of its own.
    db.query(
        "UPDATE bans SET ended_at = expires_at WHERE id IN (
             SELECT b.id FROM bans b
             JOIN UNNEST($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::bool[])
                  AS x(vendor, app_id, user_id, scope, room_id, room_id_numeric)
               ON b.vendor = x.vendor AND b.app_id = x.app_id AND b.user_id = x.user_id AND b.scope = x.scope
              AND coalesce(b.room_id, '') = coalesce(x.room_id, '')
              AND coalesce(b.room_id_numeric, false) = coalesce(x.room_id_numeric, false)
             WHERE b.ended_at IS NULL AND b.expires_at <= now()
             ORDER BY b.vendor, b.app_id, b.user_id, b.scope, b.room_id, b.room_id_numeric
             FOR UPDATE OF b)",
    )
    .bind(&vendors)
    .bind(&apps)
    .bind(&users)
    .bind(&scopes)
    .bind(&rooms)
    .bind(&numerics)
    .execute(&mut **tx)
    .await?;
    let imposed: Vec<&Imposed<'_>> = by_key.values().collect();
    let seconds: Vec<i32> = imposed.iter().map(|i| i.seconds as i32).collect();
    let verdict_ids: Vec<&str> = imposed.iter().map(|i| i.verdict_id).collect();
    let reasons: Vec<Option<&str>> = imposed.iter().map(|i| i.reason).collect();
    // text[][] must be rectangular: every key's verdicts travel as one comma-free JSON array.
    let all_ids: Vec<String> =
        imposed.iter().map(|i| serde_json::to_string(&i.verdict_ids).unwrap_or_else(|_| "[]".into())).collect();
    db.query(
        "INSERT INTO bans AS b (vendor, app_id, user_id, scope, room_id, room_id_numeric, verdict_id, verdict_ids,
                               reason, expires_at, rule_state)
         SELECT vendor, app_id, user_id, scope, room_id, room_id_numeric, verdict_id,
                ARRAY(SELECT jsonb_array_elements_text(all_ids::jsonb)), reason,
                now() + make_interval(secs => seconds), CASE WHEN with_rule THEN 'pending' ELSE 'none' END
         FROM UNNEST($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::bool[], $7::int[],
                     $8::text[], $9::text[], $10::text[], $11::bool[])
              AS x(vendor, app_id, user_id, scope, room_id, room_id_numeric, seconds, verdict_id, reason, all_ids,
                   with_rule)
         -- Rows locked in key order by every batch (the input is sorted by key).
         ORDER BY vendor, app_id, user_id, scope, room_id, room_id_numeric
         ON CONFLICT (vendor, app_id, user_id, scope, (coalesce(room_id, '')), (coalesce(room_id_numeric, false)))
            WHERE ended_at IS NULL
         DO UPDATE SET
            verdict_id = CASE WHEN EXCLUDED.expires_at > b.expires_at THEN EXCLUDED.verdict_id ELSE b.verdict_id END,
            reason = CASE WHEN EXCLUDED.expires_at > b.expires_at THEN EXCLUDED.reason ELSE b.reason END,
            expires_at = greatest(b.expires_at, EXCLUDED.expires_at),
            -- The last 100: a pipeline that bans one user again and again must not grow a row forever.
            verdict_ids = (b.verdict_ids || EXCLUDED.verdict_ids)
                [greatest(1, cardinality(b.verdict_ids) + cardinality(EXCLUDED.verdict_ids) - 99):],
            -- An app that gained rules since: the extended ban gets one too. (A rule in force is
            -- re-armed to the new end by the rules lane.)
            rule_state = CASE WHEN b.rule_state = 'none' THEN EXCLUDED.rule_state ELSE b.rule_state END,
            updated_at = now()",
    )
    .bind(&vendors)
    .bind(&apps)
    .bind(&users)
    .bind(&scopes)
    .bind(&rooms)
    .bind(&numerics)
    .bind(&seconds)
    .bind(&verdict_ids)
    .bind(&reasons)
    .bind(&all_ids)
    .bind(&with_rule)
    .execute(&mut **tx)
    .await?;
    Ok(fingerprints)
}

/// The fingerprint of every open ban (`ban_index`), computed by PostgreSQL: a million bans
/// travel as a million `bigint`s.
pub async fn open_ban_fingerprints(db: &Db) -> Result<Vec<u64>, sqlx::Error> {
    use futures_util::TryStreamExt;
    db.run(async |c| {
        let mut rows = db
            .query_scalar::<i64>(concat!(
                "SELECT ",
                crate::ban_fingerprint_sql!(),
                " FROM bans WHERE ended_at IS NULL AND expires_at > now()"
            ))
            .fetch(c);
        let mut all = Vec::new();
        while let Some(f) = rows.try_next().await? {
            all.push(f as u64);
        }
        Ok(all)
    })
    .await
}

/// A ban as ops and token servers read it.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct BanRow {
    pub id: i64,
    pub vendor: String,
    pub app_id: i64,
    pub user_id: String,
    pub scope: BanScope,
    pub room_id: Option<String>,
    pub room_id_numeric: Option<bool>,
    /// As of the query.
    pub state: BanState,
    pub verdict_id: String,
    pub verdict_ids: Vec<String>,
    pub reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
    pub lifted_at: Option<DateTime<Utc>>,
    pub lifted_by: Option<String>,
    pub lift_reason: Option<String>,
    pub rule_state: RuleState,
    pub rule_expires_at: Option<DateTime<Utc>>,
    pub rule_error: Option<String>,
}

const BAN_COLUMNS: &str = "id, vendor, app_id, user_id, scope, room_id, room_id_numeric,
    CASE WHEN lifted_at IS NOT NULL THEN 'lifted'
         WHEN ended_at IS NULL AND expires_at > now() THEN 'active' ELSE 'expired' END AS state,
    verdict_id, verdict_ids, reason, created_at, expires_at, ended_at, lifted_at, lifted_by, lift_reason,
    rule_state, rule_expires_at, rule_error";

/// The bans `verdict_id` set or extended (found through its users: one index probe each).
pub(crate) async fn of_verdict(
    db: &Db,
    c: &mut sqlx::PgConnection,
    vendor: &str,
    app_id: i64,
    users: &[&str],
    verdict_id: &str,
) -> Result<Vec<BanRow>, sqlx::Error> {
    db.query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {BAN_COLUMNS} FROM bans
         WHERE vendor = $1 AND app_id = $2 AND user_id = ANY($3) AND $4 = ANY(verdict_ids) ORDER BY user_id, id"
    )))
    .bind(vendor)
    .bind(app_id)
    .bind(users)
    .bind(verdict_id)
    .fetch_all(c)
    .await
}

/// The ban that keeps a user out, for the check.
#[derive(Debug, Clone, sqlx::FromRow, PartialEq)]
pub struct ActiveBan {
    pub user_id: String,
    pub id: i64,
    pub scope: BanScope,
    pub room_id: Option<String>,
    pub room_id_numeric: Option<bool>,
    pub expires_at: DateTime<Utc>,
    pub verdict_id: String,
    pub reason: Option<String>,
}

/// One user asked about, in one place: an entry of a batch of checks.
#[derive(Clone, Debug)]
pub struct CheckItem {
    pub vendor: Vendor,
    pub app_id: u32,
    pub user_id: String,
    pub room: Option<RoomRef>,
}

/// The checks of many callers in one statement, one round trip: for each item (by its position),
/// the active ban that ends last, if any. The statement's shape never changes with the items, so
/// PostgreSQL keeps one plan for it (an index probe per item).
pub async fn check_items(db: &Db, items: &[CheckItem]) -> Result<Vec<Option<ActiveBan>>, AuditError> {
    let vendors: Vec<&str> = items.iter().map(|i| i.vendor.as_str()).collect();
    let apps: Vec<i64> = items.iter().map(|i| i64::from(i.app_id)).collect();
    let users: Vec<&str> = items.iter().map(|i| i.user_id.as_str()).collect();
    let rooms: Vec<Option<&str>> = items.iter().map(|i| i.room.as_ref().map(|r| r.text.as_str())).collect();
    let kinds: Vec<Option<bool>> = items.iter().map(|i| i.room.as_ref().and_then(|r| r.numeric)).collect();
    let rows: Vec<(i64, ActiveBan)> = db
        .run(async |c| {
            let rows = db
                .query(
                    "SELECT x.i, b.user_id, b.id, b.scope, b.room_id, b.room_id_numeric, b.expires_at, b.verdict_id,
                            b.reason
                     FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::bool[]) WITH ORDINALITY
                          AS x(vendor, app_id, user_id, room_id, numeric, i)
                     CROSS JOIN LATERAL (
                         SELECT * FROM bans b
                         WHERE b.vendor = x.vendor AND b.app_id = x.app_id AND b.user_id = x.user_id
                           AND b.ended_at IS NULL AND b.expires_at > now()
                           -- Without a room only app bans count; a room without a kind counts both kinds.
                           AND (b.scope = 'app' OR (b.room_id = x.room_id
                                                    AND (x.numeric IS NULL OR b.room_id_numeric = x.numeric)))
                         ORDER BY b.expires_at DESC LIMIT 1) b",
                )
                .bind(&vendors)
                .bind(&apps)
                .bind(&users)
                .bind(&rooms)
                .bind(&kinds)
                .fetch_all(c)
                .await?;
            rows.iter()
                .map(|r| Ok((sqlx::Row::try_get(r, "i")?, ActiveBan::from_row(r)?)))
                .collect::<Result<Vec<_>, sqlx::Error>>()
        })
        .await?;
    let mut out = vec![None; items.len()];
    for (i, ban) in rows {
        if let Some(slot) = usize::try_from(i - 1).ok().and_then(|i| out.get_mut(i)) {
            *slot = Some(ban);
        }
    }
    Ok(out)
}

/// What ops list bans by. Every field narrows; `None` means any.
#[derive(Clone, Debug, Default)]
pub struct BanFilter {
    pub vendor: Option<Vendor>,
    pub app_id: Option<u32>,
    pub user_id: Option<String>,
    pub room: Option<RoomRef>,
    pub state: Option<BanState>,
    /// Keyset: only bans with a smaller id (newest first).
    pub before_id: Option<i64>,
    pub limit: i64,
}

/// Bans matching `f`, newest first.
pub async fn list(db: &Db, f: &BanFilter) -> Result<Vec<BanRow>, AuditError> {
    let mut qb: QueryBuilder<Postgres> = QueryBuilder::new(format!("SELECT {BAN_COLUMNS} FROM bans WHERE true"));
    if let Some(v) = f.vendor {
        qb.push(" AND vendor = ").push_bind(v.as_str());
    }
    if let Some(a) = f.app_id {
        qb.push(" AND app_id = ").push_bind(i64::from(a));
    }
    if let Some(u) = &f.user_id {
        qb.push(" AND user_id = ").push_bind(u.clone());
    }
    if let Some(r) = &f.room {
        qb.push(" AND room_id = ").push_bind(r.text.clone());
        if let Some(n) = r.numeric {
            qb.push(" AND room_id_numeric = ").push_bind(n);
        }
    }
    match f.state {
        None => {}
        Some(BanState::Active) => {
            qb.push(" AND ended_at IS NULL AND expires_at > now()");
        }
        Some(BanState::Lifted) => {
            qb.push(" AND lifted_at IS NOT NULL");
        }
        Some(BanState::Expired) => {
            qb.push(" AND lifted_at IS NULL AND (ended_at IS NOT NULL OR expires_at <= now())");
        }
    }
    if let Some(id) = f.before_id {
        qb.push(" AND id < ").push_bind(id);
    }
    qb.push(" ORDER BY id DESC LIMIT ").push_bind(f.limit);
    Ok(db.run(async |c| qb.build_query_as().persistent(db.statements_named()).fetch_all(c).await).await?)
}

/// The assignments that lift a ban now, with who (`actor`) and why (`reason`) as parameters: its
/// vendor rule, if it has or may have one, is to be deleted.
fn lifting(actor: &str, reason: &str) -> String {
    format!(
        "ended_at = now(), lifted_at = now(), lifted_by = {actor}, lift_reason = {reason}, updated_at = now(),
         rule_state = CASE WHEN rule_state IN ('pending', 'in_force') THEN 'delete_due' ELSE rule_state END"
    )
}

/// The statement that lifts bans (`update`, an `UPDATE bans … RETURNING *`) and, when `events`
/// is the SQL `true`, writes a `bouncer.ban.lifted` event for each in the same statement.
fn lift_with_events(update: &str, events: &str) -> String {
    format!(
        "WITH lifted AS ({update} RETURNING *),
              events AS (
                  INSERT INTO outbox (event_id, type, subject, routing_key, event)
                  SELECT l.eid, 'bouncer.ban.lifted', l.verdict_id, 'ban.lifted.' || l.vendor || '.' || l.app_id,
                         jsonb_build_object('specversion', '1.0', 'id', l.eid, 'type', 'bouncer.ban.lifted',
                             'subject', l.verdict_id, 'time', l.lifted_at, 'datacontenttype', 'application/json',
                             'data', jsonb_build_object('ban_id', l.id, 'verdict_id', l.verdict_id, 'vendor', l.vendor,
                                 'app_id', l.app_id, 'user_id', l.user_id, 'scope', l.scope,
                                 'room_id', CASE WHEN l.room_id IS NULL THEN NULL
                                                 WHEN l.room_id_numeric THEN to_jsonb(l.room_id::bigint)
                                                 ELSE to_jsonb(l.room_id) END,
                                 'expires_at', l.expires_at, 'lifted_at', l.lifted_at, 'lifted_by', l.lifted_by,
                                 'reason', l.lift_reason))
                  -- A volatile call in a select list runs once per row (an uncorrelated LATERAL runs once).
                  FROM (SELECT bouncer_uuidv7() AS eid, * FROM lifted) l
                  WHERE {events}
                  ORDER BY l.id)
         SELECT {BAN_COLUMNS} FROM lifted"
    )
}

/// Who lifts a ban, and why.
pub struct Lift<'a> {
    pub vendor: Vendor,
    pub app_id: u32,
    pub user_id: &'a str,
    /// `Some`: that room's ban only; `None`: every active ban of the user in the app (app scope
    /// and every room), which is what "let this user back in" means.
    pub room: Option<&'a RoomRef>,
    pub actor: &'a str,
    pub reason: &'a str,
    /// `outcomes.enabled`: each lift is also a `bouncer.ban.lifted` event.
    pub events: bool,
}

/// Ends the matching active bans now and returns them as they stand after.
pub async fn lift(db: &Db, l: &Lift<'_>) -> Result<Vec<BanRow>, AuditError> {
    let (room_text, room_numeric) = match l.room {
        Some(r) => (Some(r.text.as_str()), r.numeric),
        None => (None, None),
    };
    let update = format!(
        "UPDATE bans SET {}
         WHERE vendor = $1 AND app_id = $2 AND user_id = $3 AND ended_at IS NULL AND expires_at > now()
           AND ($4::text IS NULL OR (room_id = $4 AND ($5::bool IS NULL OR room_id_numeric = $5)))",
        lifting("$6", "$7")
    );
    let sql = lift_with_events(&update, "$8");
    Ok(db
        .run(async |c| {
            db.query_as(sqlx::AssertSqlSafe(sql))
                .bind(l.vendor.as_str())
                .bind(i64::from(l.app_id))
                .bind(l.user_id)
                .bind(room_text)
                .bind(room_numeric)
                .bind(l.actor)
                .bind(l.reason)
                .bind(l.events)
                .fetch_all(c)
                .await
        })
        .await?)
}

/// One ban by id.
pub async fn one(db: &Db, id: i64) -> Result<Option<BanRow>, AuditError> {
    let sql = format!("SELECT {BAN_COLUMNS} FROM bans WHERE id = $1");
    Ok(db.run(async |c| db.query_as(sqlx::AssertSqlSafe(sql)).bind(id).fetch_optional(c).await).await?)
}

/// Ends one ban now, if it is active (the console's lift); `None` if it was not.
pub async fn lift_one(db: &Db, id: i64, actor: &str, reason: &str, events: bool) -> Result<Option<BanRow>, AuditError> {
    let update =
        format!("UPDATE bans SET {} WHERE id = $1 AND ended_at IS NULL AND expires_at > now()", lifting("$2", "$3"));
    let sql = lift_with_events(&update, "$4");
    Ok(db
        .run(async |c| {
            db.query_as(sqlx::AssertSqlSafe(sql)).bind(id).bind(actor).bind(reason).bind(events).fetch_optional(c).await
        })
        .await?)
}

/// Active bans by vendor (the `bouncer_active_bans` gauge).
pub async fn active_by_vendor(db: &Db) -> Result<Vec<(String, i64)>, AuditError> {
    Ok(db
        .run(async |c| {
            db.query_as(
                "SELECT vendor, count(*) FROM bans WHERE ended_at IS NULL AND expires_at > now() GROUP BY vendor",
            )
            .fetch_all(c)
            .await
        })
        .await?)
}

/// A ban whose vendor rule needs a call: set (pending, or in force but ending before the ban and
/// soon), or delete (lifted).
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct RuleWork {
    pub id: i64,
    pub user_id: String,
    pub room_id: Option<String>,
    pub expires_at: DateTime<Utc>,
    pub rule_state: RuleState,
    pub rule_expires_at: Option<DateTime<Utc>>,
    /// A newer open ban of the same user and place has its own rule: deleting this one's would
    /// delete that (a rule is addressed by its key, not by a ban).
    pub superseded: bool,
    /// The database's clock, which every decision about time uses.
    pub db_now: DateTime<Utc>,
}

/// Up to `limit` bans of a ZEGO app whose rules need a call, deletions first.
pub(crate) async fn rule_work(db: &Db, app_id: u32, limit: i64) -> Result<Vec<RuleWork>, AuditError> {
    // Candidates for a re-arm, as `rules::needs_rearm` decides (10 minutes: `rules::REARM_BEFORE`).
    let sql = String::from(
        "WITH due AS (
            (SELECT * FROM bans WHERE vendor = 'zego' AND app_id = $1 AND rule_state IN ('pending', 'delete_due')
             ORDER BY id LIMIT $2)
            UNION ALL
            (SELECT * FROM bans WHERE vendor = 'zego' AND app_id = $1 AND rule_state = 'in_force'
               AND ended_at IS NULL AND expires_at > now()
               AND rule_expires_at < now() + interval '10 minutes'
               AND rule_expires_at < expires_at - interval '5 seconds'
             ORDER BY rule_expires_at LIMIT $2))
         SELECT b.id, b.user_id, b.room_id, b.expires_at, b.rule_state, b.rule_expires_at,
                EXISTS (SELECT 1 FROM bans n
                        WHERE n.vendor = b.vendor AND n.app_id = b.app_id AND n.user_id = b.user_id
                          AND n.scope = b.scope AND n.room_id IS NOT DISTINCT FROM b.room_id AND n.id > b.id
                          AND n.ended_at IS NULL AND n.rule_state IN ('pending', 'in_force')) AS superseded,
                now() AS db_now
         FROM due b ORDER BY (b.rule_state = 'delete_due') DESC, b.id LIMIT $2",
    );
    Ok(db
        .run(async |c| db.query_as(sqlx::AssertSqlSafe(sql)).bind(i64::from(app_id)).bind(limit).fetch_all(c).await)
        .await?)
}

/// Records a rule call's result on its ban, only if the ban's rule is still in the state it was
/// fetched in (a lift meanwhile turned it to `delete_due`: that wins, and the rule is deleted next).
pub(crate) async fn rule_result(
    db: &Db,
    id: i64,
    was: RuleState,
    state: RuleState,
    rule_expires_at: Option<DateTime<Utc>>,
    error: Option<&str>,
) -> Result<(), AuditError> {
    db.run(async |c| {
        db.query(
            "UPDATE bans SET rule_state = $3, rule_expires_at = coalesce($4, rule_expires_at), rule_error = $5
             WHERE id = $1 AND rule_state = $2",
        )
        .bind(id)
        .bind(was)
        .bind(state)
        .bind(rule_expires_at)
        .bind(error)
        .execute(c)
        .await
    })
    .await?;
    Ok(())
}

/// Moves an app's rules in state `from` to `to` (only for rules of bans of `scope`, if given):
/// pausing pending rules when the vendor refuses them all alike, or resuming them. Returns how
/// many moved.
pub(crate) async fn move_rules(
    db: &Db,
    app_id: u32,
    scope: Option<BanScope>,
    from: RuleState,
    to: RuleState,
    error: Option<&str>,
) -> Result<u64, AuditError> {
    let moved = db
        .run(async |c| {
            db.query(
                "UPDATE bans SET rule_state = $4, rule_error = $5
                 WHERE vendor = 'zego' AND app_id = $1 AND rule_state = $3 AND ($2::text IS NULL OR scope = $2)
                   AND ended_at IS NULL AND expires_at > now()",
            )
            .bind(i64::from(app_id))
            .bind(scope)
            .bind(from)
            .bind(to)
            .bind(error)
            .execute(c)
            .await
        })
        .await?;
    Ok(moved.rows_affected())
}
