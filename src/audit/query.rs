//! Reading the audit trail for ops (`bouncer audit`) and selecting verdicts to replay.

use chrono::{DateTime, Utc};
use sqlx::{Postgres, QueryBuilder};

use super::{AuditError, Db};
use crate::keys::{AppKey, WORK_CHANNEL, WakeNote};
use crate::states::{AttemptOutcome, KickStatus, VerdictStatus};
use crate::vendors::Vendor;

/// What ops filter by. Every field narrows the result; `None` means any.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub verdicts: Vec<String>,
    pub room: Option<String>,
    pub user: Option<String>,
    pub app: Option<i64>,
    pub vendor: Option<Vendor>,
    /// A verdict status or a kick status.
    pub status: Option<StatusFilter>,
    /// On `received_at` of the verdict.
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    pub limit: Option<i64>,
}

/// A filter's time as people write it: `2h`, `30m`, `90s`, `7d`, `1w` back from now, or an RFC 3339 timestamp.
pub fn parse_when(s: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: i64 = n.parse().map_err(|_| format!("{s:?} is neither a duration like 2h nor an RFC 3339 time"))?;
    let unit_secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 604_800,
        _ => return Err(format!("{s:?}: unit must be s, m, h, d or w")),
    };
    let too_far = || format!("{s:?} reaches before the earliest time this tool can show");
    let secs = n.checked_mul(unit_secs).ok_or_else(too_far)?;
    let t = chrono::Duration::try_seconds(secs).and_then(|d| Utc::now().checked_sub_signed(d)).ok_or_else(too_far)?;
    // PostgreSQL keeps no time before 4713 BC: anything earlier means "from the beginning".
    Ok(t.max(earliest_time()))
}

/// The earliest time a filter passes to PostgreSQL (year 1: before any trail was written).
fn earliest_time() -> DateTime<Utc> {
    DateTime::from_timestamp(-62_135_596_800, 0).unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// A status to filter by: a verdict's (`pending`, `done`, `failed`) or a kick's (`pending`,
/// `kicked`, `gone`, `failed`); the audit rows match either.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusFilter {
    Pending,
    Done,
    Failed,
    Kicked,
    Gone,
}

impl StatusFilter {
    pub const ALL: [StatusFilter; 5] =
        [StatusFilter::Pending, StatusFilter::Done, StatusFilter::Failed, StatusFilter::Kicked, StatusFilter::Gone];

    pub fn as_str(self) -> &'static str {
        match self {
            StatusFilter::Pending => "pending",
            StatusFilter::Done => "done",
            StatusFilter::Failed => "failed",
            StatusFilter::Kicked => "kicked",
            StatusFilter::Gone => "gone",
        }
    }

    /// Reads a status as written on the command line or in the console's form.
    pub fn parse(s: &str) -> Result<StatusFilter, String> {
        StatusFilter::ALL.into_iter().find(|f| f.as_str() == s).ok_or_else(|| {
            let names: Vec<&str> = StatusFilter::ALL.iter().map(|f| f.as_str()).collect();
            format!("{s:?} is not a status; one of: {}", names.join(", "))
        })
    }
}

/// Which rows the filters narrow, and so how `user` and `status` are matched.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rows {
    /// `audit_log`, a row per user: status is the verdict's or the user's kick's (audit rows).
    AuditLog,
    /// `verdicts`, a row per verdict: status is the verdict's, the user one it named (the
    /// console's search, replay).
    Verdicts,
}

/// Appends ` AND ...` for each filter to a query selecting from the `rows` named.
pub(crate) fn push_filters(qb: &mut QueryBuilder<Postgres>, f: &Filter, rows: Rows) {
    if !f.verdicts.is_empty() {
        qb.push(" AND verdict_id = ANY(").push_bind(f.verdicts.clone()).push(")");
    }
    if let Some(room) = &f.room {
        qb.push(" AND room_id = ").push_bind(room.clone());
    }
    if let Some(user) = &f.user {
        match rows {
            // Through the B-tree on kicks.user_id (every user of a verdict has a kick row):
            // `user_ids @>` would need a GIN index on verdicts that every intake pays for.
            Rows::Verdicts => qb
                .push(" AND verdict_id IN (SELECT verdict_id FROM kicks WHERE user_id = ")
                .push_bind(user.clone())
                .push(")"),
            Rows::AuditLog => qb.push(" AND user_id = ").push_bind(user.clone()),
        };
    }
    if let Some(app) = f.app {
        qb.push(" AND app_id = ").push_bind(app);
    }
    if let Some(vendor) = &f.vendor {
        qb.push(" AND vendor = ").push_bind(vendor.as_str());
    }
    if let Some(status) = &f.status {
        match rows {
            Rows::AuditLog => {
                qb.push(" AND (verdict_status = ").push_bind(status.as_str());
                qb.push(" OR kick_status = ").push_bind(status.as_str()).push(")");
            }
            Rows::Verdicts => {
                qb.push(" AND status = ").push_bind(status.as_str());
            }
        }
    }
    if let Some(since) = f.since {
        qb.push(" AND received_at >= ").push_bind(since);
    }
    if let Some(until) = f.until {
        qb.push(" AND received_at < ").push_bind(until);
    }
}

/// One user of one verdict (a row of the `audit_log` view).
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct AuditRow {
    pub received_at: DateTime<Utc>,
    pub verdict_id: String,
    pub vendor: String,
    pub app_id: i64,
    pub room_id: String,
    pub room_id_numeric: bool,
    pub user_id: String,
    pub kick_status: KickStatus,
    pub verdict_status: VerdictStatus,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub vendor_request_id: Option<String>,
    pub updated_at: DateTime<Utc>,
    pub reason: Option<String>,
    pub source: Option<String>,
    pub deliveries: i32,
    pub finished_at: Option<DateTime<Utc>>,
}

pub async fn rows(db: &Db, f: &Filter) -> Result<Vec<AuditRow>, AuditError> {
    let mut qb = QueryBuilder::new(
        "SELECT received_at, verdict_id, vendor, app_id, room_id, room_id_numeric, user_id, kick_status,
                verdict_status, attempts, last_error, vendor_request_id, updated_at, reason, source, deliveries,
                finished_at
         FROM audit_log WHERE true",
    );
    push_filters(&mut qb, f, Rows::AuditLog);
    qb.push(" ORDER BY received_at DESC, verdict_id, user_id");
    if let Some(limit) = f.limit {
        qb.push(" LIMIT ").push_bind(limit);
    }
    Ok(db.run(async |c| qb.build_query_as().persistent(db.statements_named()).fetch_all(c).await).await?)
}

/// Counts per vendor and app over the filtered rows.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct SummaryRow {
    pub vendor: String,
    pub app_id: i64,
    pub verdicts: i64,
    pub verdicts_done: i64,
    pub verdicts_failed: i64,
    pub verdicts_pending: i64,
    pub kicks: i64,
    pub kicked: i64,
    pub gone: i64,
    pub kicks_failed: i64,
    pub kicks_pending: i64,
}

pub async fn summary(db: &Db, f: &Filter) -> Result<Vec<SummaryRow>, AuditError> {
    let mut qb = QueryBuilder::new(
        "SELECT vendor, app_id,
                count(DISTINCT verdict_id) AS verdicts,
                count(DISTINCT verdict_id) FILTER (WHERE verdict_status = 'done') AS verdicts_done,
                count(DISTINCT verdict_id) FILTER (WHERE verdict_status = 'failed') AS verdicts_failed,
                count(DISTINCT verdict_id) FILTER (WHERE verdict_status = 'pending') AS verdicts_pending,
                count(*) AS kicks,
                count(*) FILTER (WHERE kick_status = 'kicked') AS kicked,
                count(*) FILTER (WHERE kick_status = 'gone') AS gone,
                count(*) FILTER (WHERE kick_status = 'failed') AS kicks_failed,
                count(*) FILTER (WHERE kick_status = 'pending') AS kicks_pending
         FROM audit_log WHERE true",
    );
    push_filters(&mut qb, f, Rows::AuditLog);
    qb.push(" GROUP BY vendor, app_id ORDER BY vendor, app_id");
    Ok(db.run(async |c| qb.build_query_as().persistent(db.statements_named()).fetch_all(c).await).await?)
}

/// Rejected messages in the window (they have no vendor or app).
pub async fn rejected_count(db: &Db, f: &Filter) -> Result<i64, AuditError> {
    let mut qb = QueryBuilder::new("SELECT count(*) FROM rejected_messages WHERE true");
    if let Some(since) = f.since {
        qb.push(" AND received_at >= ").push_bind(since);
    }
    if let Some(until) = f.until {
        qb.push(" AND received_at < ").push_bind(until);
    }
    Ok(db.run(async |c| qb.build_query_scalar().persistent(db.statements_named()).fetch_one(c).await).await?)
}

/// A verdict's header for its story.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
pub struct VerdictView {
    pub verdict_id: String,
    pub vendor: String,
    pub app_id: i64,
    pub room_id: String,
    pub room_id_numeric: bool,
    pub status: VerdictStatus,
    pub reason: Option<String>,
    pub source: Option<String>,
    pub detected_at: Option<DateTime<Utc>>,
    pub received_at: DateTime<Utc>,
    pub deliveries: i32,
    pub deferrals: i32,
    pub replays: i32,
    pub finished_at: Option<DateTime<Utc>>,
    /// What the verdict asked beyond the kick (`ban`), if anything.
    pub ban_seconds: Option<i32>,
    pub ban_scope: Option<String>,
}

#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
pub struct KickView {
    pub user_id: String,
    pub status: KickStatus,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub vendor_request_id: Option<String>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
pub struct AttemptView {
    pub id: i64,
    pub started_at: DateTime<Utc>,
    pub action: String,
    pub attempt: i32,
    pub user_ids: Vec<String>,
    pub outcome: AttemptOutcome,
    pub http_status: Option<i32>,
    pub vendor_code: Option<String>,
    pub vendor_message: Option<String>,
    pub vendor_request_id: Option<String>,
    pub latency_ms: Option<i32>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
pub struct ReplayView {
    pub requested_at: DateTime<Utc>,
    pub actor: String,
    pub previous_status: VerdictStatus,
    pub published: bool,
}

/// Everything known about one verdict.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Story {
    pub verdict: VerdictView,
    pub kicks: Vec<KickView>,
    pub attempts: Vec<AttemptView>,
    pub replays: Vec<ReplayView>,
    /// The bans this verdict set or extended, as they stand now.
    pub bans: Vec<super::bans::BanRow>,
    /// Its banned users coming back, and their re-kicks.
    pub reentries: Vec<super::reentries::ReentryRow>,
    /// The vendor's word that a kicked user left the room.
    pub confirmations: Vec<super::reentries::Confirmation>,
}

/// One verdict and everything recorded about it, read on one connection (behind a transaction
/// pooler: in one transaction, not four).
pub async fn story(db: &Db, verdict_id: &str) -> Result<Option<Story>, AuditError> {
    Ok(db
        .run(async |c| {
            let Some(verdict) = db
                .query_as::<VerdictView>(
                    "SELECT verdict_id, vendor, app_id, room_id, room_id_numeric, status, reason, source, detected_at,
                            received_at, deliveries, deferrals, replays, finished_at, ban_seconds, ban_scope
                     FROM verdicts WHERE verdict_id = $1",
                )
                .bind(verdict_id)
                .fetch_optional(&mut *c)
                .await?
            else {
                return Ok(None);
            };
            let kicks = db
                .query_as(
                    "SELECT user_id, status, attempts, last_error, vendor_request_id, updated_at
                     FROM kicks WHERE verdict_id = $1 ORDER BY user_id",
                )
                .bind(verdict_id)
                .fetch_all(&mut *c)
                .await?;
            let attempts = db
                .query_as(
                    "SELECT id, started_at, action, attempt, user_ids, outcome, http_status, vendor_code,
                            vendor_message, vendor_request_id, latency_ms, error
                     FROM kick_attempts WHERE verdict_ids @> ARRAY[$1]::text[] ORDER BY started_at, id",
                )
                .bind(verdict_id)
                .fetch_all(&mut *c)
                .await?;
            let replays = db
                .query_as(
                    "SELECT requested_at, actor, previous_status, published FROM replays WHERE verdict_id = $1
                     ORDER BY id",
                )
                .bind(verdict_id)
                .fetch_all(&mut *c)
                .await?;
            let bans = match verdict.ban_seconds {
                None => Vec::new(),
                Some(_) => {
                    let users: Vec<&str> = kicks.iter().map(|k: &KickView| k.user_id.as_str()).collect();
                    super::bans::of_verdict(db, &mut *c, &verdict.vendor, verdict.app_id, &users, verdict_id).await?
                }
            };
            let reentries = super::reentries::of_verdict(db, &mut *c, verdict_id).await?;
            let confirmations = super::reentries::confirmations_of_verdict(db, &mut *c, verdict_id).await?;
            Ok(Some(Story { verdict, kicks, attempts, replays, bans, reentries, confirmations }))
        })
        .await?)
}

/// A verdict chosen for replay.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ReplayCandidate {
    pub verdict_id: String,
    pub status: VerdictStatus,
    pub app_id: i64,
    pub vendor: String,
    /// Where a keyset page of candidates resumes (with the id).
    pub received_at: DateTime<Utc>,
}

/// What a replay selects: `failed` verdicts when neither a status nor verdicts are named.
fn replay_filter(f: &Filter) -> Filter {
    let mut f = f.clone();
    if f.status.is_none() && f.verdicts.is_empty() {
        f.status = Some(StatusFilter::Failed);
    }
    f
}

/// How many verdicts a replay with this filter would take (the console's confirmation).
pub async fn replay_count(db: &Db, f: &Filter) -> Result<i64, AuditError> {
    let mut qb = QueryBuilder::new("SELECT count(*) FROM verdicts WHERE true");
    push_filters(&mut qb, &replay_filter(f), Rows::Verdicts);
    Ok(db.run(async |c| qb.build_query_scalar().persistent(db.statements_named()).fetch_one(c).await).await?)
}

/// Up to `limit` replay candidates after `after` (received_at, verdict_id), in that order: the
/// console replays a search page by page, so memory does not grow with the number of verdicts,
/// and a verdict that fails again meanwhile is not met twice.
pub async fn replay_page(
    db: &Db,
    f: &Filter,
    after: Option<&(DateTime<Utc>, String)>,
    limit: i64,
) -> Result<Vec<ReplayCandidate>, AuditError> {
    // Straight from verdicts (a user through kicks' index), not through the audit_log join: a
    // bulk replay's confirmation counts thousands of failed verdicts while an operator waits.
    let mut qb = QueryBuilder::new("SELECT verdict_id, status, app_id, vendor, received_at FROM verdicts WHERE true");
    push_filters(&mut qb, &replay_filter(f), Rows::Verdicts);
    if let Some((at, id)) = after {
        qb.push(" AND (received_at, verdict_id) > (").push_bind(*at).push(", ").push_bind(id.clone()).push(")");
    }
    qb.push(" ORDER BY received_at, verdict_id LIMIT ").push_bind(limit);
    Ok(db.run(async |c| qb.build_query_as().persistent(db.statements_named()).fetch_all(c).await).await?)
}

/// Verdicts matching the filter (status on the verdict only; `failed` when no status is given).
/// The one rule for what a replay selects, for `bouncer replay` and the console alike: failed
/// (or pending) verdicts; done ones, and kick statuses, never. Without a status a replay takes the
/// failed verdicts (or the named ones).
pub fn replay_status_rule(status: Option<StatusFilter>) -> Result<(), String> {
    match status {
        None | Some(StatusFilter::Failed | StatusFilter::Pending) => Ok(()),
        Some(_) => Err("a replay takes failed (or pending) verdicts; done verdicts are never enforced twice".into()),
    }
}

pub async fn replay_candidates(db: &Db, f: &Filter) -> Result<Vec<ReplayCandidate>, AuditError> {
    replay_page(db, f, None, f.limit.unwrap_or(i64::MAX)).await
}

/// Verdicts reopened per transaction by [`replay`]: a bulk replay neither holds thousands of row
/// locks at once nor loses what it did if it stops half-way.
const REPLAY_CHUNK: usize = 500;

/// Replays `candidates` as `actor` ([`reopen_for_replay`], a chunk at a time), calling
/// `progress` with the running total after each chunk; returns how many were reopened. What
/// `bouncer replay` and the console's replay buttons do.
pub async fn replay(
    db: &Db,
    candidates: &[ReplayCandidate],
    actor: &str,
    mut progress: impl FnMut(usize),
) -> Result<usize, AuditError> {
    let mut reopened = 0;
    for chunk in candidates.chunks(REPLAY_CHUNK) {
        let mut tries = 0;
        let n = loop {
            tries += 1;
            match reopen_for_replay(db, chunk, actor).await {
                Ok(ids) => break ids.len(),
                // The lock order makes these unexpected; a retry of the chunk is harmless (it
                // reopens only what is still as selected).
                Err(e) if tries < 3 && e.is_serialization_failure() => {
                    tracing::warn!(error = %e, "replay chunk met a deadlock or serialization failure; trying again");
                }
                Err(e) => return Err(e),
            }
        };
        reopened += n;
        progress(reopened);
    }
    Ok(reopened)
}

/// Puts verdicts back to work, due now: failed ones (and their failed kicks) to `pending`, with a
/// fresh retry schedule and deadline; pending ones become due at once. Records who asked in
/// `replays` and wakes the owners. Only verdicts not `done` are touched; returns the ids reopened.
pub async fn reopen_for_replay(
    db: &Db,
    candidates: &[ReplayCandidate],
    actor: &str,
) -> Result<Vec<String>, AuditError> {
    let mut tx = db.begin().await?;
    let (ids, statuses): (Vec<&str>, Vec<VerdictStatus>) =
        candidates.iter().map(|c| (c.verdict_id.as_str(), c.status)).unzip();
    // Lock order, everywhere verdicts and kicks change together: verdict rows first, in
    // verdict_id order, then their kicks (the audit writer and intake do the same), so replays and
    // the writer never deadlock. Only a verdict still as it was selected is reopened: of two
    // replays of one selection, the second finds it pending and leaves it.
    let reopened: Vec<(String, String, String, i64)> = db
        .query_as(
            "WITH old AS (SELECT v.verdict_id, v.status FROM verdicts v
                          JOIN UNNEST($1::text[], $2::text[]) AS x(id, status) ON v.verdict_id = x.id
                          WHERE v.status = x.status AND v.status <> 'done'
                          ORDER BY v.verdict_id FOR NO KEY UPDATE OF v)
             UPDATE verdicts v SET status = 'pending', finished_at = NULL, replays = v.replays + 1
             FROM old WHERE v.verdict_id = old.verdict_id RETURNING v.verdict_id, old.status, v.vendor, v.app_id",
        )
        .bind(&ids)
        .bind(&statuses)
        .fetch_all(&mut *tx)
        .await?;
    let ids: Vec<&str> = reopened.iter().map(|(id, ..)| id.as_str()).collect();
    let previous: Vec<&str> = reopened.iter().map(|(_, s, ..)| s.as_str()).collect();
    db.query(
        "UPDATE kicks SET status = 'pending', next_attempt_at = now(), first_attempt_at = NULL, scheduled_retries = 0,
                updated_at = now()
         WHERE verdict_id = ANY($1) AND status IN ('failed', 'pending')",
    )
    .bind(&ids)
    .execute(&mut *tx)
    .await?;
    // `published`: handed to enforcement (since replays became a database operation, at once).
    db.query(
        "INSERT INTO replays (verdict_id, actor, previous_status, published)
         SELECT id, $3, prev, true FROM UNNEST($1::text[], $2::text[]) AS x(id, prev)",
    )
    .bind(&ids)
    .bind(&previous)
    .bind(actor)
    .execute(&mut *tx)
    .await?;
    let apps: Vec<AppKey> = reopened
        .iter()
        .filter_map(|(_, _, v, a)| Some(AppKey::new(Vendor::parse(v)?, u32::try_from(*a).ok()?)))
        .collect();
    if !apps.is_empty() {
        db.query("SELECT pg_notify($1, $2)")
            .bind(WORK_CHANNEL)
            .bind(WakeNote::new("replay", apps).payload())
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(reopened.into_iter().map(|(id, ..)| id).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn when_takes_durations_and_timestamps() {
        let two_hours = parse_when("2h").unwrap();
        let delta = Utc::now() - two_hours;
        assert!((delta.num_seconds() - 7200).abs() <= 2);
        assert_eq!(parse_when("2026-11-22T03:00:00Z").unwrap().to_rfc3339(), "2026-11-22T03:00:00+00:00");
        assert!(parse_when("2x").is_err());
        assert!(parse_when("yesterday").is_err());
        let week = parse_when("7d").unwrap();
        assert!(((Utc::now() - week).num_seconds() - 7 * 86_400).abs() <= 2);
        // Too far back is an error naming the value, not a panic.
        for far in ["99999999999999d", "9223372036854775807w", "9999999999999s"] {
            assert!(parse_when(far).unwrap_err().contains(far), "{far}");
        }
        // Far, but within what chrono counts: clamped to year 1, which PostgreSQL takes.
        assert_eq!(parse_when("36500000d").unwrap().to_rfc3339(), "0001-01-01T00:00:00+00:00");
    }
}
