//! What enforcement writes: every vendor call (`kick_attempts`), every kick that ended or was
//! scheduled for a retry (`kicks`), and the verdicts that have nothing left to kick.
//!
//! Rows named by key are checked for `status IS NOT DISTINCT FROM 'pending'`, not `= 'pending'`
//! (the same for non-null `status`): `=` lets the planner reach them through the partial indexes
//! of pending rows (`kicks_due`, `verdicts_unfinished`, `reentries_due`), whose statistics say
//! "about none" between bursts, so during a backlog every batch scanned every pending row, and every
//! verdict it closed scanned every pending kick again (12 s to close 2,500 verdicts beside a week's
//! trail, found by the retention bench). The key's own index is always right for a list of keys.

use chrono::{DateTime, Utc};
use sqlx::{Postgres, Transaction};

use super::{AuditError, Db};
use crate::states::{AttemptOutcome, KickStatus, VerdictStatus};

/// One vendor call (`kick_attempts` row).
#[derive(Clone, Debug, serde::Serialize)]
pub struct AttemptRow {
    pub vendor: &'static str,
    pub app_id: i64,
    pub room_id: String,
    pub room_id_numeric: bool,
    pub action: &'static str,
    pub user_ids: Vec<String>,
    pub verdict_ids: Vec<String>,
    pub attempt: i32,
    pub started_at: DateTime<Utc>,
    pub latency_ms: i32,
    pub http_status: Option<i32>,
    pub vendor_code: Option<String>,
    pub vendor_message: Option<String>,
    pub vendor_request_id: Option<String>,
    pub outcome: AttemptOutcome,
    pub error: Option<String>,
}

/// What happened to one user's kick for one verdict.
#[derive(Clone, Debug, PartialEq)]
pub enum KickChange {
    /// Kicked, gone or failed: nothing more will be attempted.
    Ended(KickStatus),
    /// Still pending; the next attempt may start at this time (the schedule lives here, so a
    /// restart or a new owner continues it).
    RetryAt(DateTime<Utc>),
}

/// A `kicks` row update.
#[derive(Clone, Debug)]
pub struct KickOutcome {
    pub verdict_id: String,
    pub user_id: String,
    pub change: KickChange,
    /// Vendor calls that carried this user since the last update.
    pub attempts: i32,
    /// When the first of those calls started (kept if the row has one already).
    pub first_attempt_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub vendor_request_id: Option<String>,
    /// A re-kick's outcome: updates `reentries` row `reentry` instead of a `kicks` row.
    pub reentry: Option<i64>,
}

/// Writes attempts and kick changes in one transaction, then closes every verdict they touched
/// that has no pending user left. Returns the verdicts closed.
pub async fn record(
    db: &Db,
    attempts: &[AttemptRow],
    outcomes: &[KickOutcome],
    events: bool,
) -> Result<Vec<(String, VerdictStatus)>, AuditError> {
    let mut tx = db.begin().await?;
    if !attempts.is_empty() {
        let doc = serde_json::to_value(attempts).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
        db.query(
            "INSERT INTO kick_attempts (vendor, app_id, room_id, room_id_numeric, action, user_ids, verdict_ids,
                                        attempt, started_at, latency_ms, http_status, vendor_code, vendor_message,
                                        vendor_request_id, outcome, error)
             SELECT * FROM jsonb_to_recordset($1) AS x(vendor text, app_id bigint, room_id text,
                  room_id_numeric boolean, action text, user_ids text[], verdict_ids text[], attempt integer,
                  started_at timestamptz, latency_ms integer, http_status integer, vendor_code text,
                  vendor_message text, vendor_request_id text, outcome text, error text)",
        )
        .bind(&doc)
        .execute(&mut *tx)
        .await?;
    }
    let (rekicks, outcomes): (Vec<&KickOutcome>, Vec<&KickOutcome>) =
        outcomes.iter().partition(|o| o.reentry.is_some());
    record_rekicks(db, &mut tx, &rekicks, events).await?;
    let mut ids: Vec<String> = Vec::new();
    if !outcomes.is_empty() {
        // Lock order: the verdicts first, in verdict_id order, then their kicks — as replays do
        // (`reopen_for_replay`), so the two never deadlock.
        let mut verdict_ids: Vec<&str> = outcomes.iter().map(|o| o.verdict_id.as_str()).collect();
        verdict_ids.sort_unstable();
        verdict_ids.dedup();
        db.query("SELECT 1 FROM verdicts WHERE verdict_id = ANY($1) ORDER BY verdict_id FOR NO KEY UPDATE")
            .bind(&verdict_ids)
            .execute(&mut *tx)
            .await?;
        let (status, next) = columns(&outcomes);
        // Only pending rows change: an outcome never overwrites one that has already ended.
        db.query(
            "UPDATE kicks k SET status = x.status, attempts = k.attempts + x.attempts, last_error = x.last_error,
                    vendor_request_id = COALESCE(x.request_id, k.vendor_request_id), updated_at = now(),
                    next_attempt_at = x.next_at,
                    first_attempt_at = COALESCE(k.first_attempt_at, x.first_at),
                    scheduled_retries = k.scheduled_retries + CASE WHEN x.next_at IS NULL THEN 0 ELSE 1 END
             FROM UNNEST($1::text[], $2::text[], $3::text[], $4::int[], $5::text[], $6::text[], $7::timestamptz[],
                         $8::timestamptz[])
                  AS x(verdict_id, user_id, status, attempts, last_error, request_id, next_at, first_at)
             WHERE k.verdict_id = x.verdict_id AND k.user_id = x.user_id AND k.status IS NOT DISTINCT FROM 'pending'",
        )
        .bind(outcomes.iter().map(|o| o.verdict_id.as_str()).collect::<Vec<_>>())
        .bind(outcomes.iter().map(|o| o.user_id.as_str()).collect::<Vec<_>>())
        .bind(status)
        .bind(outcomes.iter().map(|o| o.attempts).collect::<Vec<_>>())
        .bind(outcomes.iter().map(|o| o.last_error.as_deref()).collect::<Vec<_>>())
        .bind(outcomes.iter().map(|o| o.vendor_request_id.as_deref()).collect::<Vec<_>>())
        .bind(next)
        .bind(outcomes.iter().map(|o| o.first_attempt_at).collect::<Vec<_>>())
        .execute(&mut *tx)
        .await?;
        ids.extend(outcomes.iter().filter(|o| matches!(o.change, KickChange::Ended(_))).map(|o| o.verdict_id.clone()));
    }
    ids.sort_unstable();
    ids.dedup();
    let finished = close_finished(db, &mut tx, &ids).await?;
    if events {
        // The outcome events, in the transaction that finishes their verdicts: never one without
        // the other.
        let ids: Vec<String> = finished.iter().map(|(id, _)| id.clone()).collect();
        super::outbox::verdicts_finished(db, &mut tx, &ids).await?;
    }
    tx.commit().await?;
    Ok(finished)
}

/// Each change as the two columns a row update binds: the status it leaves (`pending` while a
/// retry is scheduled) and when it is next due (none once it ended).
fn columns(outcomes: &[&KickOutcome]) -> (Vec<KickStatus>, Vec<Option<DateTime<Utc>>>) {
    outcomes
        .iter()
        .map(|o| match o.change {
            KickChange::Ended(s) => (s, None),
            KickChange::RetryAt(t) => (KickStatus::Pending, Some(t)),
        })
        .unzip()
}

/// Re-kick outcomes (`reentries` rows), as kick outcomes are written: only pending rows change.
/// With `events`, each re-kick that ends `kicked` is a `bouncer.reentry.kicked` event, in this
/// transaction.
async fn record_rekicks(
    db: &Db,
    tx: &mut Transaction<'_, Postgres>,
    outcomes: &[&KickOutcome],
    events: bool,
) -> Result<(), AuditError> {
    if outcomes.is_empty() {
        return Ok(());
    }
    let (status, next) = columns(outcomes);
    db.query(
        "WITH changed AS (
             UPDATE reentries r SET status = x.status, attempts = r.attempts + x.attempts, last_error = x.last_error,
                    vendor_request_id = COALESCE(x.request_id, r.vendor_request_id), updated_at = now(),
                    next_attempt_at = x.next_at,
                    first_attempt_at = COALESCE(r.first_attempt_at, x.first_at),
                    scheduled_retries = r.scheduled_retries + CASE WHEN x.next_at IS NULL THEN 0 ELSE 1 END
             FROM UNNEST($1::bigint[], $2::text[], $3::int[], $4::text[], $5::text[], $6::timestamptz[],
                         $7::timestamptz[])
                  AS x(id, status, attempts, last_error, request_id, next_at, first_at)
             WHERE r.id = x.id AND r.status IS NOT DISTINCT FROM 'pending'
             RETURNING r.*)
         INSERT INTO outbox (event_id, type, subject, routing_key, event)
         SELECT c.eid, 'bouncer.reentry.kicked', c.verdict_id, 'reentry.kicked.' || c.vendor || '.' || c.app_id,
                jsonb_build_object('specversion', '1.0', 'id', c.eid, 'type', 'bouncer.reentry.kicked',
                    'subject', c.verdict_id, 'time', c.updated_at, 'datacontenttype', 'application/json',
                    'data', jsonb_build_object('reentry_id', c.id, 'verdict_id', c.verdict_id, 'ban_id', c.ban_id,
                        'vendor', c.vendor, 'app_id', c.app_id,
                        'room_id', CASE WHEN c.room_id_numeric THEN to_jsonb(c.room_id::bigint) ELSE to_jsonb(c.room_id) END,
                        'user_id', c.user_id, 'entered_at', c.entered_at, 'received_at', c.received_at,
                        'first_call_at', c.first_attempt_at, 'kicked_at', c.updated_at, 'attempts', c.attempts,
                        'vendor_request_id', c.vendor_request_id))
         -- A volatile call in a select list runs once per row (an uncorrelated LATERAL runs once).
         FROM (SELECT bouncer_uuidv7() AS eid, * FROM changed) c
         WHERE $8 AND c.status = 'kicked'
         ORDER BY c.id",
    )
    .bind(outcomes.iter().map(|o| o.reentry).collect::<Vec<_>>())
    .bind(status)
    .bind(outcomes.iter().map(|o| o.attempts).collect::<Vec<_>>())
    .bind(outcomes.iter().map(|o| o.last_error.as_deref()).collect::<Vec<_>>())
    .bind(outcomes.iter().map(|o| o.vendor_request_id.as_deref()).collect::<Vec<_>>())
    .bind(next)
    .bind(outcomes.iter().map(|o| o.first_attempt_at).collect::<Vec<_>>())
    .bind(events)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Closes each of `ids` that is pending with no pending user left: `failed` if any user failed,
/// else `done`. Returns those it closed.
pub(crate) async fn close_finished(
    db: &Db,
    tx: &mut Transaction<'_, Postgres>,
    ids: &[String],
) -> Result<Vec<(String, VerdictStatus)>, AuditError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    Ok(db
        .query_as(
            "UPDATE verdicts v
                SET status = CASE WHEN EXISTS (SELECT 1 FROM kicks k WHERE k.verdict_id = v.verdict_id
                                                AND k.status = 'failed') THEN 'failed' ELSE 'done' END,
                    finished_at = now()
              WHERE v.verdict_id = ANY($1) AND v.status IS NOT DISTINCT FROM 'pending'
                AND NOT EXISTS (SELECT 1 FROM kicks k WHERE k.verdict_id = v.verdict_id
                                AND k.status IS NOT DISTINCT FROM 'pending')
              RETURNING v.verdict_id, v.status",
        )
        .bind(ids)
        .fetch_all(&mut **tx)
        .await?)
}
