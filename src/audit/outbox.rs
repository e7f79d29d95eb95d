//! The outbox of outcome events (`outbox`): rows written in the transactions that finish verdicts
//! (and lift bans, re-kick banned users who came back), read and deleted by the relay once the
//! broker confirmed them. Each row holds the whole CloudEvents document but its `source`, which
//! the relay adds from its configuration.

use chrono::{DateTime, Utc};
use sqlx::{Postgres, Transaction};

use super::{AuditError, Db};

/// The `bouncer.verdict.finished` event type (the audit layer does not import the relay's
/// module: the relay reads the audit layer).
const VERDICT_FINISHED: &str = "bouncer.verdict.finished";

/// The `data` of `bouncer.verdict.finished`, built from the audit trail in the finishing
/// transaction: what the trail says is what the event says.
const VERDICT_FINISHED_DATA: &str = "
    jsonb_build_object(
        'verdict_id', v.verdict_id,
        'vendor', v.vendor,
        'app_id', v.app_id,
        'room_id', CASE WHEN v.room_id_numeric THEN to_jsonb(v.room_id::bigint) ELSE to_jsonb(v.room_id) END,
        'status', v.status,
        'replay', v.replays,
        'users', (SELECT coalesce(jsonb_agg(jsonb_build_object(
                      'user_id', k.user_id, 'outcome', k.status, 'attempts', k.attempts,
                      'error', k.last_error, 'vendor_request_id', k.vendor_request_id) ORDER BY k.user_id), '[]')
                  FROM kicks k WHERE k.verdict_id = v.verdict_id),
        'attempts', (SELECT count(*) FROM kick_attempts a WHERE a.verdict_ids @> ARRAY[v.verdict_id]),
        'last_vendor_code', last.vendor_code,
        'last_vendor_message', last.vendor_message,
        'last_request_id', last.vendor_request_id,
        'received_at', v.received_at,
        'finished_at', v.finished_at,
        'ban', CASE WHEN v.ban_seconds IS NULL THEN NULL
                    ELSE jsonb_build_object('seconds', v.ban_seconds, 'scope', v.ban_scope) END)";

/// Writes a `bouncer.verdict.finished` event for each of `ids` (verdicts this transaction just
/// finished), each with a new event id.
pub(crate) async fn verdicts_finished(
    db: &Db,
    tx: &mut Transaction<'_, Postgres>,
    ids: &[String],
) -> Result<(), AuditError> {
    if ids.is_empty() {
        return Ok(());
    }
    let event_ids: Vec<uuid::Uuid> = ids.iter().map(|_| uuid::Uuid::now_v7()).collect();
    let sql = format!(
        "INSERT INTO outbox (event_id, type, subject, routing_key, event, traceparent)
         SELECT x.event_id, $3, v.verdict_id, 'verdict.' || v.status || '.' || v.vendor || '.' || v.app_id,
                jsonb_build_object('specversion', '1.0', 'id', x.event_id, 'type', $3, 'subject', v.verdict_id,
                                   'time', v.finished_at, 'datacontenttype', 'application/json',
                                   'data', {VERDICT_FINISHED_DATA})
                || CASE WHEN v.traceparent IS NULL THEN '{{}}'::jsonb
                        ELSE jsonb_build_object('traceparent', v.traceparent) END,
                v.traceparent
         FROM unnest($1::text[], $2::uuid[]) WITH ORDINALITY AS x(verdict_id, event_id, n)
         JOIN verdicts v ON v.verdict_id = x.verdict_id
         -- The verdict's calls through the GIN index, then the newest: `OFFSET 0` keeps the planner
         -- from walking `kick_attempts_started` backwards instead, which under LIMIT 1 with an
         -- incremental sort read the whole table for every verdict (a 290 s finish beside a week's
         -- trail of 142,000 calls, found by the retention bench).
         LEFT JOIN LATERAL (
             SELECT a.vendor_code, a.vendor_message, a.vendor_request_id
             FROM (SELECT * FROM kick_attempts a WHERE a.verdict_ids @> ARRAY[v.verdict_id] OFFSET 0) a
             ORDER BY a.started_at DESC, a.id DESC LIMIT 1) last ON true
         ORDER BY x.n"
    );
    db.query(sqlx::AssertSqlSafe(sql)).bind(ids).bind(&event_ids).bind(VERDICT_FINISHED).execute(&mut **tx).await?;
    Ok(())
}

/// One event as the relay reads it.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct Pending {
    pub id: i64,
    pub event_id: uuid::Uuid,
    pub r#type: String,
    pub subject: String,
    pub routing_key: String,
    pub event: serde_json::Value,
    pub traceparent: Option<String>,
    pub created_at: DateTime<Utc>,
    pub attempts: i32,
}

/// Up to `limit` due events, oldest first, at most one per subject: the oldest of its subject,
/// so a subject's events go out one at a time and in order (a later one waits while an earlier
/// one is retried or still awaits its confirm). `in_flight`: events published and not yet
/// settled, left out.
pub async fn due(db: &Db, limit: i64, in_flight: &[i64]) -> Result<Vec<Pending>, AuditError> {
    Ok(db
        .run(async |c| {
            db.query_as(
                "SELECT o.id, o.event_id, o.type, o.subject, o.routing_key, o.event, o.traceparent, o.created_at,
                        o.attempts
                 FROM outbox o
                 WHERE o.next_attempt_at <= now() AND o.id <> ALL($2)
                   -- Probed per event through `outbox_subject` (OFFSET 0 keeps it a subplan): with
                   -- statistics from a quiet moment the planner joined every due event to a full
                   -- scan of the outbox, 4.4 s a batch at 8,000 waiting (the retention bench).
                   AND NOT EXISTS (SELECT 1 FROM outbox p WHERE p.subject = o.subject AND p.id < o.id OFFSET 0)
                 ORDER BY o.id LIMIT $1",
            )
            .bind(limit)
            .bind(in_flight)
            .fetch_all(c)
            .await
        })
        .await?)
}

/// Deletes events the broker confirmed (or returned as unroutable).
pub async fn sent(db: &Db, ids: &[i64]) -> Result<(), AuditError> {
    if ids.is_empty() {
        return Ok(());
    }
    db.run(async |c| db.query("DELETE FROM outbox WHERE id = ANY($1)").bind(ids).execute(c).await).await?;
    Ok(())
}

/// Schedules events the broker did not confirm for another try, after `retry_in` doubled per
/// attempt (at most a minute).
pub async fn failed(db: &Db, ids: &[i64], error: &str) -> Result<(), AuditError> {
    if ids.is_empty() {
        return Ok(());
    }
    db.run(async |c| {
        db.query(
            "UPDATE outbox SET attempts = attempts + 1, last_error = $2,
                    next_attempt_at = now() + least(interval '60 seconds',
                                                    interval '100 milliseconds' * power(2, least(attempts, 10)))
             WHERE id = ANY($1)",
        )
        .bind(ids)
        .bind(error)
        .execute(c)
        .await
    })
    .await?;
    Ok(())
}

/// Events waiting and the age of the oldest, in seconds (`/metrics`, `bouncer status`, the
/// console's overview).
pub async fn depth(db: &Db) -> Result<(i64, f64), AuditError> {
    Ok(db
        .run(async |c| {
            db.query_as("SELECT count(*), coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8 FROM outbox")
                .fetch_one(c)
                .await
        })
        .await?)
}
