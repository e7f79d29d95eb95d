//! Intake's one transaction per batch of deliveries: rejected messages, verdicts (idempotent on
//! `verdict_id`), their pending kicks with the columns their quota's owner finds them by, and the
//! failure of verdicts for apps nobody here serves. A wake-up for the owners is sent from inside
//! the transaction, so it is delivered exactly when the work becomes visible.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use serde_json::value::RawValue;

use super::{AuditError, Db, REJECTED_PAYLOAD_CAP, bans, results};
use crate::ban_index::BanIndex;
use crate::keys::{AppKey, BANS_CHANNEL, WORK_CHANNEL, WakeNote};
use crate::states::VerdictStatus;
use crate::verdict::Verdict;

/// A malformed message, as it will be stored.
pub struct Rejection<'a> {
    pub reason: &'a str,
    pub field: Option<&'a str>,
    pub rule: &'a str,
    pub payload: &'a [u8],
    pub headers: serde_json::Value,
}

/// A verdict as it enters the audit trail.
pub struct NewVerdict<'a> {
    pub verdict: &'a Verdict,
    /// The body exactly as received (valid JSON: it parsed).
    pub payload: &'a RawValue,
    /// Arrivals of this verdict in the batch.
    pub deliveries: i32,
    /// Why nobody will enforce it (its app is not configured), if so: recorded `failed`.
    pub unconfigured: Option<String>,
    /// The W3C `traceparent` it was delivered with (first delivery), carried into its events.
    pub traceparent: Option<String>,
}

#[derive(serde::Serialize)]
struct VerdictRow<'a> {
    verdict_id: &'a str,
    vendor: &'a str,
    app_id: i64,
    room_id: String,
    room_id_numeric: bool,
    user_ids: &'a [String],
    reason: Option<&'a str>,
    source: Option<&'a str>,
    detected_at: Option<DateTime<Utc>>,
    evidence: Option<&'a serde_json::Map<String, serde_json::Value>>,
    payload: &'a RawValue,
    deliveries: i32,
    ban_seconds: Option<i64>,
    ban_scope: Option<&'a str>,
    traceparent: Option<&'a str>,
}

/// Where a verdict stands after intake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Recorded {
    pub status: VerdictStatus,
    pub deliveries: i32,
    /// First time this verdict was seen.
    pub inserted: bool,
}

/// A delivery the AMQP client could not parse: no bytes to keep, only why (the message itself
/// reaches `<queue>.rejected` when the broker's delivery limit is hit).
pub async fn record_unparseable(db: &Db, reason: &str) -> Result<(), AuditError> {
    db.run(async |c| {
        db.query(
            "INSERT INTO rejected_messages (reason, field, rule, payload, payload_size, headers)
             VALUES ($1, NULL, 'unparseable_frame', ''::bytea, 0, '{}'::jsonb)",
        )
        .bind(reason)
        .execute(c)
        .await
    })
    .await?;
    Ok(())
}

/// Records one batch in one transaction and returns where each verdict stands. A verdict whose
/// `verdict_id` is already recorded with another vendor, app, room or set of users is not
/// touched and has no entry in the result. `wake`, if any,
/// is announced on [`WORK_CHANNEL`] at commit (NOTIFY serialises commits: once per batch). New
/// bans go into `known_bans` (this process's copy, if it serves the API) and are announced on
/// [`BANS_CHANNEL`] to every other.
pub async fn record(
    db: &Db,
    verdicts: &[NewVerdict<'_>],
    rejections: &[Rejection<'_>],
    wake: Option<&WakeNote>,
    rule_apps: &HashSet<AppKey>,
    events: bool,
    known_bans: Option<&BanIndex>,
) -> Result<HashMap<String, Recorded>, AuditError> {
    let mut tx = db.begin().await?;
    insert_rejections(db, &mut tx, rejections).await?;
    let mut result = HashMap::new();
    if !verdicts.is_empty() {
        let upserted = upsert_verdicts(db, &mut tx, verdicts).await?;
        // A ban holds from the moment its verdict is recorded, before any kick is sent (also for
        // a verdict of an app nobody here serves: the check answers from PostgreSQL alone).
        let by_id: HashMap<&str, &Verdict> =
            verdicts.iter().map(|n| (n.verdict.verdict_id.as_str(), n.verdict)).collect();
        let first_seen: Vec<&Verdict> =
            upserted.iter().filter(|u| u.3).filter_map(|u| by_id.get(u.0.as_str()).copied()).collect();
        let banned = bans::impose(db, &mut tx, &first_seen, rule_apps).await?;
        if !banned.is_empty() {
            // This replica's checks see the bans from now (before the commit: a ban that rolls
            // back costs a round trip, never a wrong answer); every replica's at commit.
            if let Some(index) = known_bans {
                index.add(banned.iter().copied());
            }
            db.query("SELECT pg_notify($1, p) FROM unnest($2::text[]) p")
                .bind(BANS_CHANNEL)
                .bind(crate::ban_index::payloads(&banned))
                .execute(&mut *tx)
                .await?;
        }
        let resumed = insert_kicks(db, &mut tx, verdicts, upserted, &mut result).await?;
        // A verdict still pending with nothing left to kick (its outcomes were written by another
        // path, or it was just failed as unconfigured) is closed here.
        let mut finished: Vec<String> = result
            .iter()
            .filter(|(_, r)| r.inserted && r.status != VerdictStatus::Pending)
            .map(|(id, _)| id.clone())
            .collect();
        for (id, status) in results::close_finished(db, &mut tx, &resumed).await? {
            if let Some(r) = result.get_mut(&id) {
                r.status = status;
            }
            finished.push(id);
        }
        if events {
            // Every verdict that ends here (failed as unconfigured, or closed) gets its event in
            // this transaction.
            finished.sort_unstable();
            finished.dedup();
            super::outbox::verdicts_finished(db, &mut tx, &finished).await?;
        }
    }
    if let Some(note) = wake {
        db.query("SELECT pg_notify($1, $2)").bind(WORK_CHANNEL).bind(note.payload()).execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(result)
}

type Tx = sqlx::Transaction<'static, sqlx::Postgres>;

/// Malformed messages, capped, as `rejected_messages` rows.
async fn insert_rejections(db: &Db, tx: &mut Tx, rejections: &[Rejection<'_>]) -> Result<(), AuditError> {
    if rejections.is_empty() {
        return Ok(());
    }
    let capped: Vec<&[u8]> =
        rejections.iter().map(|r| &r.payload[..r.payload.len().min(REJECTED_PAYLOAD_CAP)]).collect();
    db.query(
        "INSERT INTO rejected_messages (reason, field, rule, payload, payload_size, headers)
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::bytea[], $5::int[], $6::jsonb[])",
    )
    .bind(rejections.iter().map(|r| r.reason).collect::<Vec<_>>())
    .bind(rejections.iter().map(|r| r.field).collect::<Vec<_>>())
    .bind(rejections.iter().map(|r| r.rule).collect::<Vec<_>>())
    .bind(capped)
    .bind(rejections.iter().map(|r| i32::try_from(r.payload.len()).unwrap_or(i32::MAX)).collect::<Vec<_>>())
    .bind(rejections.iter().map(|r| &r.headers).collect::<Vec<_>>())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Inserts new verdicts and counts redeliveries of known ones, in one statement. Returns each
/// verdict it touched: (id, status, deliveries, inserted now).
async fn upsert_verdicts(
    db: &Db,
    tx: &mut Tx,
    verdicts: &[NewVerdict<'_>],
) -> Result<Vec<(String, VerdictStatus, i32, bool)>, AuditError> {
    let rows: Vec<VerdictRow<'_>> = verdicts
        .iter()
        .map(|n| {
            let v = n.verdict;
            VerdictRow {
                verdict_id: &v.verdict_id,
                vendor: v.vendor.as_str(),
                app_id: i64::from(v.app_id),
                room_id: v.room_id.to_string(),
                room_id_numeric: v.room_id.is_numeric(),
                user_ids: &v.user_ids,
                reason: v.reason.as_deref(),
                source: v.source.as_deref(),
                detected_at: v.detected_at,
                evidence: v.evidence.as_ref(),
                payload: n.payload,
                deliveries: n.deliveries,
                ban_seconds: v.ban.map(|b| i64::from(b.seconds)),
                ban_scope: v.ban.map(|b| b.scope.as_str()),
                traceparent: n.traceparent.as_deref(),
            }
        })
        .collect();
    let doc = serde_json::to_value(&rows).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    Ok(db
        .query_as(
            "INSERT INTO verdicts AS v (verdict_id, vendor, app_id, room_id, room_id_numeric, user_ids, reason,
                                        source, detected_at, evidence, payload, deliveries, ban_seconds, ban_scope,
                                        traceparent)
             SELECT verdict_id, vendor, app_id, room_id, room_id_numeric, user_ids, reason, source, detected_at,
                    evidence, payload, deliveries, ban_seconds, ban_scope, traceparent
             FROM jsonb_to_recordset($1) AS x(verdict_id text, vendor text, app_id bigint, room_id text,
                  room_id_numeric boolean, user_ids text[], reason text, source text, detected_at timestamptz,
                  evidence jsonb, payload jsonb, deliveries integer, ban_seconds integer, ban_scope text,
                  traceparent text)
             -- Verdict rows are locked in verdict_id order everywhere (see reopen_for_replay).
             ORDER BY verdict_id
             ON CONFLICT (verdict_id) DO UPDATE
                SET deliveries = v.deliveries + EXCLUDED.deliveries,
                    last_delivery_at = now()
                -- Only the same enforcement counts as a delivery of it: a row whose vendor, app,
                -- room, set of users or ban differs is left alone and not returned (the caller
                -- keeps that message as rejected, rule verdict_id_reused).
                WHERE v.vendor = EXCLUDED.vendor AND v.app_id = EXCLUDED.app_id
                  AND v.room_id = EXCLUDED.room_id AND v.room_id_numeric = EXCLUDED.room_id_numeric
                  AND v.user_ids @> EXCLUDED.user_ids AND v.user_ids <@ EXCLUDED.user_ids
                  AND v.ban_seconds IS NOT DISTINCT FROM EXCLUDED.ban_seconds
                  AND v.ban_scope IS NOT DISTINCT FROM EXCLUDED.ban_scope
             RETURNING verdict_id, status, deliveries, (xmax = 0) AS inserted",
        )
        .bind(&doc)
        .fetch_all(&mut **tx)
        .await?)
}

/// The pending kicks of verdicts inserted now (due at once), and the failure of those nobody here
/// serves. Fills `result`; returns the pending verdicts that may have nothing left to kick.
async fn insert_kicks(
    db: &Db,
    tx: &mut Tx,
    verdicts: &[NewVerdict<'_>],
    upserted: Vec<(String, VerdictStatus, i32, bool)>,
    result: &mut HashMap<String, Recorded>,
) -> Result<Vec<String>, AuditError> {
    let by_id: HashMap<&str, &NewVerdict<'_>> = verdicts.iter().map(|n| (n.verdict.verdict_id.as_str(), n)).collect();
    let (mut kick_v, mut kick_u, mut kick_vendor, mut kick_app) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut resumed = Vec::new();
    let (mut unconfigured_ids, mut unconfigured_why) = (Vec::new(), Vec::new());
    for (id, status, deliveries, inserted) in upserted {
        if let Some(n) = by_id.get(id.as_str()) {
            if inserted {
                for u in &n.verdict.user_ids {
                    kick_v.push(id.clone());
                    kick_u.push(u.clone());
                    kick_vendor.push(n.verdict.vendor.as_str());
                    kick_app.push(i64::from(n.verdict.app_id));
                }
            }
            if status == VerdictStatus::Pending {
                match &n.unconfigured {
                    Some(why) => {
                        unconfigured_ids.push(id.clone());
                        unconfigured_why.push(why.clone());
                    }
                    None if !inserted => resumed.push(id.clone()),
                    None => {}
                }
            }
        }
        result.insert(id, Recorded { status, deliveries, inserted });
    }
    if !kick_v.is_empty() {
        // Due at once: the owner's linger counts from `next_attempt_at`.
        db.query(
            "INSERT INTO kicks (verdict_id, user_id, vendor, app_id, next_attempt_at)
             SELECT v, u, vendor, app, now() FROM UNNEST($1::text[], $2::text[], $3::text[], $4::bigint[])
                  AS x(v, u, vendor, app)
             ON CONFLICT DO NOTHING",
        )
        .bind(&kick_v)
        .bind(&kick_u)
        .bind(&kick_vendor)
        .bind(&kick_app)
        .execute(&mut **tx)
        .await?;
    }
    if !unconfigured_ids.is_empty() {
        db.query(
            // `IS NOT DISTINCT FROM`: by key, not through the pending rows' index (see `results`).
            "UPDATE kicks k SET status = 'failed', last_error = x.error, next_attempt_at = NULL, updated_at = now()
             FROM UNNEST($1::text[], $2::text[]) AS x(verdict_id, error)
             WHERE k.verdict_id = x.verdict_id AND k.status IS NOT DISTINCT FROM 'pending'",
        )
        .bind(&unconfigured_ids)
        .bind(&unconfigured_why)
        .execute(&mut **tx)
        .await?;
        resumed.extend(unconfigured_ids);
    }
    Ok(resumed)
}
