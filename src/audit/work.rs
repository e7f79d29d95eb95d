//! The work queue as the owner of a quota sees it: pending kicks of one app that are due.

use chrono::{DateTime, Utc};

use super::{AuditError, Db};
use crate::vendors::Action;
use crate::verdict::{RoomId, Vendor};

/// One pending kick, with what calling it needs.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct DueKick {
    pub verdict_id: String,
    pub user_id: String,
    pub room_id: String,
    pub room_id_numeric: bool,
    /// What is done to the user (`kicks.action`; `kick` for every row written before actions).
    pub action: String,
    pub reason: Option<String>,
    /// `detected_at`, else when the verdict was received: verdict-to-kick latency starts here.
    pub origin: DateTime<Utc>,
    /// Arrival for a new kick, else when its retry became due; linger counts from here.
    pub next_attempt_at: DateTime<Utc>,
    pub first_attempt_at: Option<DateTime<Utc>>,
    pub scheduled_retries: i32,
    /// The last error, for the deadline message of a kick that fails without another call.
    pub last_error: Option<String>,
    /// Set for a re-kick (`reentries.id`): the row lives in `reentries`, not `kicks`.
    pub reentry_id: Option<i64>,
    /// The W3C `traceparent` its verdict was delivered with: its trace id goes on the call's log
    /// lines.
    pub traceparent: Option<String>,
}

impl DueKick {
    /// The room as the vendor clients take it; `None` if the stored text cannot be one.
    pub fn room(&self) -> Option<RoomId> {
        RoomId::from_parts(&self.room_id, self.room_id_numeric)
    }

    /// The action, if this version knows it (a newer replica's action is never guessed).
    pub fn action(&self) -> Option<Action> {
        Action::parse(&self.action)
    }

    /// The trace id of its verdict's `traceparent` (stored only when valid: `00-<trace>-<span>-<flags>`).
    pub fn trace_id(&self) -> Option<&str> {
        self.traceparent.as_deref()?.split('-').nth(1)
    }
}

/// Up to `limit` due kicks of one app, oldest first. The owner excludes what it already holds, so
/// it asks for that many more: rows it holds are the oldest and come first.
pub async fn due(db: &Db, vendor: Vendor, app_id: u32, limit: usize) -> Result<Vec<DueKick>, AuditError> {
    Ok(db.run(async |c| db.query_as(
        "SELECT k.verdict_id, k.user_id, v.room_id, v.room_id_numeric, k.action, v.reason,
                -- Latency counts from detection when the publisher's clock is plausible: within a week
                -- before receipt (or five minutes after, for skew); otherwise from receipt.
                CASE WHEN v.detected_at BETWEEN v.received_at - interval '7 days' AND v.received_at + interval '5 minutes'
                     THEN v.detected_at ELSE v.received_at END AS origin, k.next_attempt_at, k.first_attempt_at,
                k.scheduled_retries, k.last_error, NULL::bigint AS reentry_id, v.traceparent
         FROM kicks k JOIN verdicts v USING (verdict_id)
         WHERE k.status = 'pending' AND k.vendor = $1 AND k.app_id = $2 AND k.next_attempt_at <= now()
         ORDER BY k.next_attempt_at
         LIMIT $3",
    )
    .bind(vendor.as_str())
    .bind(i64::from(app_id))
    .bind(i64::try_from(limit).unwrap_or(i64::MAX))
    .fetch_all(c)
    .await).await?)
}

/// Up to `limit` due re-kicks of one app (banned users who came back), oldest first. Few at any
/// time, and each is urgent: the lane fetches them on every wake-up, whatever it holds.
pub async fn due_reentries(db: &Db, vendor: Vendor, app_id: u32, limit: usize) -> Result<Vec<DueKick>, AuditError> {
    Ok(db
        .run(async |c| {
            db.query_as(
                "SELECT r.verdict_id, r.user_id, r.room_id, r.room_id_numeric, 'kick' AS action, b.reason,
                -- Callback → vendor call latency counts from the callback's arrival.
                r.received_at AS origin, r.next_attempt_at, r.first_attempt_at, r.scheduled_retries, r.last_error,
                r.id AS reentry_id, v.traceparent
         FROM reentries r LEFT JOIN bans b ON b.id = r.ban_id LEFT JOIN verdicts v ON v.verdict_id = r.verdict_id
         WHERE r.status = 'pending' AND r.vendor = $1 AND r.app_id = $2 AND r.next_attempt_at <= now()
         ORDER BY r.next_attempt_at
         LIMIT $3",
            )
            .bind(vendor.as_str())
            .bind(i64::from(app_id))
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(c)
            .await
        })
        .await?)
}

/// Pending users and the oldest pending arrival, per app (for `bouncer status` and `/metrics`).
#[derive(Clone, Debug, sqlx::FromRow, serde::Serialize)]
pub struct PendingByApp {
    pub vendor: String,
    pub app_id: i64,
    pub pending_users: i64,
    /// Due now (the rest wait for a scheduled retry).
    pub due_users: i64,
    pub oldest_pending_at: Option<DateTime<Utc>>,
}

pub async fn pending_by_app(db: &Db) -> Result<Vec<PendingByApp>, AuditError> {
    Ok(db
        .run(async |c| {
            db.query_as(
                "SELECT k.vendor, k.app_id, count(*) AS pending_users,
                        count(*) FILTER (WHERE k.next_attempt_at <= now()) AS due_users,
                        min(v.received_at) AS oldest_pending_at
                 FROM kicks k JOIN verdicts v USING (verdict_id)
                 WHERE k.status = 'pending'
                 GROUP BY k.vendor, k.app_id ORDER BY k.vendor, k.app_id",
            )
            .fetch_all(c)
            .await
        })
        .await?)
}

/// Whether PostgreSQL answers (readiness).
pub async fn ping(db: &Db) -> Result<(), AuditError> {
    db.run(async |c| db.query("SELECT 1").execute(c).await).await?;
    Ok(())
}

/// Unfinished verdicts in the whole deployment and the age of the oldest, in seconds (`/metrics`).
pub async fn unfinished(db: &Db) -> Result<(i64, f64), AuditError> {
    Ok(db
        .run(async |c| {
            db.query_as(
                "SELECT count(*), COALESCE(extract(epoch FROM now() - min(received_at)), 0)::float8
                 FROM verdicts WHERE status = 'pending'",
            )
            .fetch_one(c)
            .await
        })
        .await?)
}
