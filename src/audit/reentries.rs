//! What a verified room callback records: a banned user's entry (`reentries`, the re-kick's work
//! for the quota owner), the vendor's confirmation of a kick (`kick_confirmations`), and ZEGO's
//! used (timestamp, nonce) pairs (`callback_nonces`). One transaction per callback, committed
//! before the callback is answered: once the vendor hears 200 nothing is lost, and if PostgreSQL
//! cannot answer the vendor hears 503 and delivers again.

use chrono::{DateTime, Utc};
use sqlx::FromRow;

use super::{AuditError, Db};
use crate::callback::{RoomCallback, RoomEvent};
use crate::keys::{AppKey, WORK_CHANNEL, WakeNote};
use crate::verdict::RoomId;

/// Who announces re-kicks on the work channel: not a worker id, so the receiving replica's own
/// listener wakes its lanes too (the API does not share the worker's in-process wake-ups).
const WAKE_FROM: &str = "callback";

/// What a callback came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Recorded {
    /// A banned user entered a room the ban covers: re-kick `reentries.id` is pending.
    Reentry { id: i64, verdict_id: String },
    /// The user entered and no active ban covers the room: nothing to do.
    NotBanned,
    /// The vendor removed a user: recorded in `kick_confirmations`, to be linked to the kick it
    /// confirms by [`link_due`] a moment later (once that kick's result is surely written).
    Removal,
    /// This event was recorded before (a redelivery): acted on once, not again.
    Duplicate,
    /// Nothing Bouncer acts on (a normal exit, a media event).
    Ignored,
    /// ZEGO: this (timestamp, nonce) was used before. Nothing was recorded.
    Replayed,
}

impl Recorded {
    /// The metric label.
    pub fn as_str(&self) -> &'static str {
        match self {
            Recorded::Reentry { .. } => "reentry",
            Recorded::NotBanned => "not_banned",
            Recorded::Removal => "removal",
            Recorded::Duplicate => "duplicate",
            Recorded::Ignored => "ignored",
            Recorded::Replayed => "replayed",
        }
    }
}

fn room_parts(room: &RoomId) -> (String, bool) {
    (room.to_string(), room.is_numeric())
}

/// Records one verified callback (see [`Recorded`]). `received_at` is when it reached this
/// replica, `received_by` the replica's worker id.
pub async fn record(
    db: &Db,
    cb: &RoomCallback,
    received_at: DateTime<Utc>,
    received_by: &str,
) -> Result<Recorded, AuditError> {
    let mut tx = db.begin().await?;
    if let Some((timestamp, nonce)) = &cb.nonce {
        let fresh = db
            .query(
                "INSERT INTO callback_nonces (app_id, timestamp, nonce) VALUES ($1, $2, $3)
                 ON CONFLICT DO NOTHING",
            )
            .bind(i64::from(cb.app_id))
            .bind(timestamp)
            .bind(nonce)
            .execute(&mut *tx)
            .await?
            .rows_affected()
            == 1;
        if !fresh {
            return Ok(Recorded::Replayed);
        }
    }
    let (room_id, numeric) = room_parts(&cb.room);
    let recorded = match cb.event {
        RoomEvent::Other => Recorded::Ignored,
        RoomEvent::Entered => {
            // The ban that keeps the user out longest, as the check answers; the entry is
            // recorded once per event (a redelivery finds it by its key).
            let row: (Option<i64>, Option<String>, Option<i64>) = db
                .query_as(
                    "WITH ban AS (
                         SELECT b.id, b.verdict_id FROM bans b
                         WHERE b.vendor = $1 AND b.app_id = $2 AND b.user_id = $3
                           AND b.ended_at IS NULL AND b.expires_at > now()
                           AND (b.scope = 'app' OR (b.room_id = $4 AND b.room_id_numeric = $5))
                         ORDER BY b.expires_at DESC LIMIT 1),
                     added AS (
                         INSERT INTO reentries (vendor, app_id, room_id, room_id_numeric, user_id, ban_id, verdict_id,
                                                event_key, entered_at, received_at, received_by, next_attempt_at)
                         SELECT $1, $2, $4, $5, $3, ban.id, ban.verdict_id, $6, $7, $8, $9, now() FROM ban
                         ON CONFLICT (vendor, app_id, event_key) DO NOTHING
                         RETURNING id)
                     SELECT (SELECT id FROM ban), (SELECT verdict_id FROM ban), (SELECT id FROM added)",
                )
                .bind(cb.vendor.as_str())
                .bind(i64::from(cb.app_id))
                .bind(&cb.user_id)
                .bind(&room_id)
                .bind(numeric)
                .bind(&cb.event_key)
                .bind(cb.at)
                .bind(received_at)
                .bind(received_by)
                .fetch_one(&mut *tx)
                .await?;
            match row {
                (None, _, _) => Recorded::NotBanned,
                (Some(_), Some(verdict_id), Some(id)) => {
                    let note = WakeNote::new(WAKE_FROM, [AppKey::new(cb.vendor, cb.app_id)]);
                    db.query("SELECT pg_notify($1, $2)")
                        .bind(WORK_CHANNEL)
                        .bind(note.payload())
                        .execute(&mut *tx)
                        .await?;
                    Recorded::Reentry { id, verdict_id }
                }
                _ => Recorded::Duplicate,
            }
        }
        RoomEvent::Removed => {
            let added: Option<(i64,)> = db
                .query_as(
                    "INSERT INTO kick_confirmations (vendor, app_id, room_id, room_id_numeric, user_id, left_at,
                                                     received_at, event_key)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                     ON CONFLICT (vendor, app_id, event_key) DO NOTHING
                     RETURNING id",
                )
                .bind(cb.vendor.as_str())
                .bind(i64::from(cb.app_id))
                .bind(&room_id)
                .bind(numeric)
                .bind(&cb.user_id)
                .bind(cb.at)
                .bind(received_at)
                .bind(&cb.event_key)
                .fetch_optional(&mut *tx)
                .await?;
            match added {
                None => Recorded::Duplicate,
                Some(_) => Recorded::Removal,
            }
        }
    };
    tx.commit().await?;
    Ok(recorded)
}

/// How long a removal waits before it is linked: the vendor reports a server kick as soon as it
/// has happened, often before Bouncer's audit writer has committed the kick's result.
pub const LINK_AFTER: std::time::Duration = std::time::Duration::from_secs(2);

/// Links removals received at least [`LINK_AFTER`] ago (and within the last hour) to the kicks
/// they confirm, oldest removal first, so that two removals of one user link in the order they
/// happened. A removal at time T (the vendor's, else its arrival) confirms the latest unconfirmed
/// kick or re-kick of its user in its room whose first call started at or before T; if none did
/// (the vendor's clock a little behind ours), the earliest one started within 5 s after T. One
/// linker at a time across replicas (a transaction-scoped advisory lock). Returns how many it
/// linked.
pub async fn link_due(db: &Db) -> Result<u64, AuditError> {
    let mut tx = db.begin().await?;
    let ours: bool = db
        .query_scalar("SELECT pg_try_advisory_xact_lock(hashtext('bouncer.kick_confirmations'))")
        .fetch_one(&mut *tx)
        .await?;
    if !ours {
        return Ok(0);
    }
    let due: Vec<i64> = db
        .query_scalar(
            "SELECT id FROM kick_confirmations
             WHERE verdict_id IS NULL AND reentry_id IS NULL
               AND received_at < now() - make_interval(secs => $1) AND received_at > now() - interval '1 hour'
             ORDER BY coalesce(left_at, received_at), id LIMIT 500",
        )
        .bind(LINK_AFTER.as_secs_f64())
        .fetch_all(&mut *tx)
        .await?;
    let mut linked = 0;
    for id in due {
        linked += db
            .query(
                "WITH c AS (SELECT *, coalesce(left_at, received_at) AS t FROM kick_confirmations WHERE id = $1),
                      candidates AS (
                          SELECT k.verdict_id, NULL::bigint AS reentry_id, k.first_attempt_at AS at
                          FROM c JOIN kicks k ON k.user_id = c.user_id AND k.status = 'kicked'
                          JOIN verdicts v ON v.verdict_id = k.verdict_id AND v.vendor = c.vendor AND v.app_id = c.app_id
                               AND v.room_id = c.room_id AND v.room_id_numeric = c.room_id_numeric
                          WHERE k.first_attempt_at <= c.t + interval '5 seconds'
                            AND NOT EXISTS (SELECT 1 FROM kick_confirmations o
                                            WHERE o.verdict_id = k.verdict_id AND o.user_id = k.user_id)
                          UNION ALL
                          SELECT NULL, r.id, r.first_attempt_at
                          FROM c JOIN reentries r ON r.user_id = c.user_id AND r.vendor = c.vendor
                               AND r.app_id = c.app_id AND r.room_id = c.room_id
                               AND r.room_id_numeric = c.room_id_numeric AND r.status = 'kicked'
                          WHERE r.first_attempt_at <= c.t + interval '5 seconds'
                            AND NOT EXISTS (SELECT 1 FROM kick_confirmations o WHERE o.reentry_id = r.id)),
                      target AS (
                          SELECT x.* FROM candidates x, c
                          ORDER BY (x.at <= c.t) DESC, CASE WHEN x.at <= c.t THEN x.at END DESC, x.at
                          LIMIT 1)
                 UPDATE kick_confirmations k SET verdict_id = target.verdict_id, reentry_id = target.reentry_id
                 FROM target WHERE k.id = $1",
            )
            .bind(id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
    }
    tx.commit().await?;
    Ok(linked)
}

/// Forgets ZEGO (timestamp, nonce) pairs whose timestamp can no longer be accepted (older than
/// the skew window, with a margin). Any replica may run it; it deletes nothing still needed.
pub async fn forget_old_nonces(db: &Db) -> Result<u64, AuditError> {
    let done = db
        .run(async |c| {
            db.query("DELETE FROM callback_nonces WHERE seen_at < now() - make_interval(secs => $1)")
                .bind((crate::callback::MAX_SKEW_SECS * 2) as f64)
                .execute(c)
                .await
        })
        .await?;
    Ok(done.rows_affected())
}

/// A re-entry as the audit trail shows it (story, user page, CLI).
#[derive(Clone, Debug, FromRow, serde::Serialize)]
pub struct ReentryRow {
    pub id: i64,
    pub vendor: String,
    pub app_id: i64,
    pub room_id: String,
    pub room_id_numeric: bool,
    pub user_id: String,
    pub ban_id: i64,
    pub verdict_id: String,
    pub entered_at: Option<DateTime<Utc>>,
    pub received_at: DateTime<Utc>,
    pub received_by: Option<String>,
    pub status: String,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub vendor_request_id: Option<String>,
    pub first_attempt_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
    /// When the vendor said the re-kicked user left (its confirmation), if it did.
    pub confirmed_left_at: Option<DateTime<Utc>>,
}

const REENTRY_COLUMNS: &str =
    "r.id, r.vendor, r.app_id, r.room_id, r.room_id_numeric, r.user_id, r.ban_id, r.verdict_id,
    r.entered_at, r.received_at, r.received_by, r.status, r.attempts, r.last_error, r.vendor_request_id,
    r.first_attempt_at, r.updated_at,
    (SELECT coalesce(c.left_at, c.received_at) FROM kick_confirmations c WHERE c.reentry_id = r.id LIMIT 1)
        AS confirmed_left_at";

/// Re-entries under a verdict's ban, oldest first (the first 1,000), on the story's connection.
pub(crate) async fn of_verdict(
    db: &Db,
    c: &mut sqlx::PgConnection,
    verdict_id: &str,
) -> Result<Vec<ReentryRow>, sqlx::Error> {
    let sql = format!("SELECT {REENTRY_COLUMNS} FROM reentries r WHERE r.verdict_id = $1 ORDER BY r.id LIMIT 1000");
    db.query_as(sqlx::AssertSqlSafe(sql)).bind(verdict_id).fetch_all(c).await
}

/// A user's re-entries, newest first.
pub async fn of_user(db: &Db, user_id: &str, limit: i64) -> Result<Vec<ReentryRow>, AuditError> {
    let sql =
        format!("SELECT {REENTRY_COLUMNS} FROM reentries r WHERE r.user_id = $1 ORDER BY r.received_at DESC LIMIT $2");
    Ok(db.run(async |c| db.query_as(sqlx::AssertSqlSafe(sql)).bind(user_id).bind(limit).fetch_all(c).await).await?)
}

/// The vendor's word that a kicked user left the room.
#[derive(Clone, Debug, FromRow, serde::Serialize)]
pub struct Confirmation {
    pub user_id: String,
    pub left_at: DateTime<Utc>,
}

/// When the vendor confirmed each kicked user of a verdict left, on the story's connection.
pub(crate) async fn confirmations_of_verdict(
    db: &Db,
    c: &mut sqlx::PgConnection,
    verdict_id: &str,
) -> Result<Vec<Confirmation>, sqlx::Error> {
    db.query_as(
        "SELECT user_id, coalesce(left_at, received_at) AS left_at FROM kick_confirmations
         WHERE verdict_id = $1 ORDER BY user_id LIMIT 1000",
    )
    .bind(verdict_id)
    .fetch_all(c)
    .await
}

/// A kick the vendor has not confirmed within the window.
#[derive(Clone, Debug, FromRow, serde::Serialize)]
pub struct Unconfirmed {
    pub verdict_id: Option<String>,
    pub reentry_id: Option<i64>,
    pub vendor: String,
    pub app_id: i64,
    pub room_id: String,
    pub user_id: String,
    pub kicked_at: DateTime<Utc>,
}

/// Kicks and re-kicks of `apps` (those whose callbacks Bouncer receives) that ended `kicked`
/// between `since` and `within` ago with no confirmation from the vendor, oldest first.
pub async fn unconfirmed(
    db: &Db,
    apps: &[AppKey],
    within: std::time::Duration,
    since: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<Unconfirmed>, AuditError> {
    let vendors: Vec<&str> = apps.iter().map(|a| a.vendor.as_str()).collect();
    let ids: Vec<i64> = apps.iter().map(|a| i64::from(a.app_id)).collect();
    Ok(db
        .run(async |c| {
            db.query_as(
                "WITH apps AS (SELECT * FROM unnest($1::text[], $2::bigint[]) AS a(vendor, app_id)),
                      cutoff AS (SELECT now() - make_interval(secs => $3) AS t)
                 SELECT * FROM (
                     SELECT k.verdict_id, NULL::bigint AS reentry_id, v.vendor, v.app_id, v.room_id, k.user_id,
                            k.updated_at AS kicked_at
                     FROM verdicts v JOIN apps a ON a.vendor = v.vendor AND a.app_id = v.app_id
                     JOIN kicks k ON k.verdict_id = v.verdict_id AND k.status = 'kicked'
                     WHERE v.received_at >= $4 AND k.updated_at >= $4 AND k.updated_at < (SELECT t FROM cutoff)
                       AND NOT EXISTS (SELECT 1 FROM kick_confirmations c
                                       WHERE c.verdict_id = k.verdict_id AND c.user_id = k.user_id)
                     UNION ALL
                     SELECT NULL, r.id, r.vendor, r.app_id, r.room_id, r.user_id, r.updated_at
                     FROM reentries r JOIN apps a ON a.vendor = r.vendor AND a.app_id = r.app_id
                     WHERE r.status = 'kicked' AND r.received_at >= $4 AND r.updated_at < (SELECT t FROM cutoff)
                       AND NOT EXISTS (SELECT 1 FROM kick_confirmations c WHERE c.reentry_id = r.id)) u
                 ORDER BY kicked_at LIMIT $5",
            )
            .bind(&vendors)
            .bind(&ids)
            .bind(within.as_secs_f64())
            .bind(since)
            .bind(limit)
            .fetch_all(c)
            .await
        })
        .await?)
}
