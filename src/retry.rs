//! The retry schedule, as data: exponential ceilings (backon's builder, no jitter of its own)
//! with full jitter applied here, bounded by a total deadline.
//!
//! backon's own jitter adds `[0, d)` on top of each delay; "full jitter" draws the whole wait
//! uniformly from `[0, d]`, which spreads retries of many chunks hitting the same failure best.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use tokio::time::Instant;

use crate::audit::writer::AuditMsg;
use crate::audit::{AttemptRow, KickOutcome};
use crate::batch::Entry;
use crate::lane::LaneCtx;
use crate::vendor::{Blame, KickRequest, Outcome};
use crate::verdict::RoomId;

use crate::config::RetryConfig;

#[derive(Clone, Debug)]
pub struct RetrySchedule {
    pub initial: Duration,
    pub max_interval: Duration,
    /// No retry starts after this much time since the first attempt.
    pub deadline: Duration,
}

impl From<&RetryConfig> for RetrySchedule {
    fn from(c: &RetryConfig) -> Self {
        RetrySchedule { initial: c.initial, max_interval: c.max_interval, deadline: c.deadline }
    }
}

impl RetrySchedule {
    /// Upper bounds of successive waits: initial, 2×, 4×, … capped at `max_interval`, forever.
    pub fn ceilings(&self) -> impl Iterator<Item = Duration> + use<> {
        ExponentialBuilder::default()
            .with_min_delay(self.initial)
            .with_max_delay(self.max_interval)
            .with_factor(2.0)
            .without_max_times()
            .build()
    }

    /// A wait drawn uniformly from `[0, ceiling]`.
    pub fn full_jitter(ceiling: Duration) -> Duration {
        ceiling.mul_f64(rand::random::<f64>())
    }
}

// ---------------------------------------------------------------------------------------------
// Running one chunk to its end.
// ---------------------------------------------------------------------------------------------

/// How a group of users ended.
enum End {
    Kicked { request_id: String },
    Gone { code: String },
    Failed { error: String },
}

/// Part of a chunk with its own retry state (a chunk splits into parts to isolate a bad user).
struct Part {
    entries: Vec<Entry>,
    /// Calls that carried each entry, aligned with `entries`.
    attempts: Vec<i32>,
    resigned: bool,
    last_error: Option<String>,
}

impl Part {
    fn new(entries: Vec<Entry>) -> Part {
        let attempts = vec![0; entries.len()];
        Part { entries, attempts, resigned: false, last_error: None }
    }

    fn split(self) -> (Part, Part) {
        let mid = self.entries.len() / 2;
        let (mut e, mut a) = (self.entries, self.attempts);
        let (e2, a2) = (e.split_off(mid), a.split_off(mid));
        (
            Part { entries: e, attempts: a, ..Part::new(Vec::new()) },
            Part { entries: e2, attempts: a2, ..Part::new(Vec::new()) },
        )
    }
}

/// Why the loop stopped without an end: the worker is shutting down. The users stay `pending`
/// and their deliveries unacked, so another worker (or this one, restarted) finishes them.
struct Abandoned;

/// Sends one chunk until every user in it is kicked, gone or failed: retries with backoff until
/// the deadline, re-signs once on an expired signature, splits on a parameter error so one bad
/// user id does not fail its chunk-mates, and waits out configuration failures. Every attempt
/// is charged to the quota (the first was charged by the lane) and written to `kick_attempts`.
pub async fn execute(ctx: Arc<LaneCtx>, room: RoomId, chunk: Vec<Entry>) {
    let n = chunk.len();
    let deadline = Instant::now() + ctx.retry.deadline;
    let reason = chunk.first().and_then(|e| e.reason.clone());
    let mut parts = vec![Part::new(chunk)];
    let mut attempt_no = 0;
    let mut have_permit = true;
    let mut outcomes = Vec::new();
    while let Some(mut part) = parts.pop() {
        let end = match run_part(&ctx, &room, reason.as_deref(), &mut part, &mut attempt_no, &mut have_permit, deadline)
            .await
        {
            Ok(Some(end)) => end,
            Ok(None) => {
                // Split on a parameter error: the halves go next, first half first.
                let (a, b) = part.split();
                parts.push(b);
                parts.push(a);
                continue;
            }
            Err(Abandoned) => {
                ctx.stats.calling_users.fetch_sub(n - outcomes.len(), Ordering::Relaxed);
                if !outcomes.is_empty() {
                    ctx.audit.send(AuditMsg::Outcomes { app_id: ctx.stats.app_id, outcomes }).await;
                }
                return;
            }
        };
        let (status, error, request_id) = match &end {
            End::Kicked { request_id } => ("kicked", None, Some(request_id.clone()).filter(|r| !r.is_empty())),
            End::Gone { code } => ("gone", Some(format!("room or user no longer exists (vendor code {code})")), None),
            End::Failed { error } => ("failed", Some(error.clone()), None),
        };
        let vendor = ctx.stats.vendor.as_str();
        // Counted like `kicks` rows (one per verdict and user), so the metric matches the audit.
        let kicks: usize = part.entries.iter().map(|e| e.verdicts.len()).sum();
        metrics::counter!("bouncer_kicks_total", "vendor" => vendor, "outcome" => status).increment(kicks as u64);
        let now = chrono::Utc::now();
        for (entry, attempts) in part.entries.iter().zip(&part.attempts) {
            if status == "kicked" {
                let latency = (now - entry.origin).to_std().unwrap_or_default();
                metrics::histogram!("bouncer_verdict_to_kick_seconds", "vendor" => vendor)
                    .record(latency.as_secs_f64());
            }
            for v in &entry.verdicts {
                outcomes.push(KickOutcome {
                    verdict_id: v.to_string(),
                    user_id: entry.user_id.clone(),
                    status,
                    attempts: *attempts,
                    last_error: error.clone(),
                    vendor_request_id: request_id.clone(),
                });
            }
        }
        ctx.stats.finished_users.fetch_add(part.entries.len() as u64, Ordering::Relaxed);
    }
    ctx.stats.calling_users.fetch_sub(n, Ordering::Relaxed);
    ctx.audit.send(AuditMsg::Outcomes { app_id: ctx.stats.app_id, outcomes }).await;
}

/// Attempts one part until it ends (`Some`), must be split (`None`), or the worker stops.
async fn run_part(
    ctx: &LaneCtx,
    room: &RoomId,
    reason: Option<&str>,
    part: &mut Part,
    attempt_no: &mut i32,
    have_permit: &mut bool,
    deadline: Instant,
) -> Result<Option<End>, Abandoned> {
    let quota = ctx.quota_for(room);
    let vendor = ctx.stats.vendor;
    let mut ceilings = ctx.retry.ceilings();
    let give_up = |part: &Part, attempts: i32| End::Failed {
        error: format!(
            "gave up at the {}s deadline after {attempts} attempt(s); last error: {}",
            ctx.retry.deadline.as_secs(),
            part.last_error.as_deref().unwrap_or("none")
        ),
    };
    loop {
        if let Some(until) = ctx.stats.paused_until() {
            if until > deadline {
                return Ok(Some(give_up(part, part.attempts.iter().copied().max().unwrap_or(0))));
            }
            tokio::select! {
                () = tokio::time::sleep_until(until) => {},
                () = ctx.shutdown.cancelled() => return Err(Abandoned),
            }
        }
        if !std::mem::take(have_permit) {
            tokio::select! {
                waited = quota.acquire() => {
                    metrics::histogram!("bouncer_rate_limiter_wait_seconds", "vendor" => vendor.as_str()).record(waited.as_secs_f64());
                }
                () = ctx.shutdown.cancelled() => return Err(Abandoned),
            }
        }
        *attempt_no += 1;
        for a in &mut part.attempts {
            *a += 1;
        }
        let req = KickRequest {
            app_id: ctx.stats.app_id,
            room: room.clone(),
            user_ids: part.entries.iter().map(|e| e.user_id.clone()).collect(),
            reason: reason.map(str::to_owned),
        };
        let started_at = chrono::Utc::now();
        let report = match ctx.client.kick_once(&req).await {
            Ok(r) => r,
            // Chunks are cut to the client's own limits; this is a bug, not a vendor answer.
            Err(e) => return Ok(Some(End::Failed { error: format!("refused before sending: {e}") })),
        };
        let outcome_name = report.outcome.audit_name();
        metrics::histogram!("bouncer_vendor_call_seconds", "vendor" => vendor.as_str(), "action" => report.action, "outcome" => outcome_name)
            .record(report.latency.as_secs_f64());
        let error = match &report.outcome {
            Outcome::Retry { reason, .. } => Some(reason.clone()),
            Outcome::Resign => Some("signature expired".to_owned()),
            Outcome::Permanent { code, message, .. } => Some(format!("{code}: {message}")),
            _ => None,
        };
        ctx.audit
            .send(AuditMsg::Attempt(Box::new(AttemptRow {
                vendor: vendor.as_str(),
                app_id: i64::from(ctx.stats.app_id),
                room_id: room.to_string(),
                room_id_numeric: room.is_numeric(),
                action: report.action,
                user_ids: req.user_ids.clone(),
                verdict_ids: part.entries.iter().flat_map(|e| e.verdicts.iter().map(|v| v.to_string())).collect(),
                attempt: *attempt_no,
                started_at,
                latency_ms: i32::try_from(report.latency.as_millis()).unwrap_or(i32::MAX),
                http_status: report.http_status.map(i32::from),
                vendor_code: report.vendor_code.clone(),
                vendor_message: report.vendor_message.clone(),
                vendor_request_id: report.vendor_request_id.clone(),
                outcome: outcome_name,
                error: error.clone(),
            })))
            .await;
        if error.is_some() {
            part.last_error = error;
        }
        match report.outcome {
            Outcome::Done { request_id } => {
                ctx.stats.config_ok();
                return Ok(Some(End::Kicked { request_id }));
            }
            Outcome::Gone { code } => {
                ctx.stats.config_ok();
                return Ok(Some(End::Gone { code }));
            }
            Outcome::Resign if !part.resigned => {
                // Sign again at once with a fresh timestamp and nonce (charged like any call).
                part.resigned = true;
            }
            Outcome::Resign => {
                tracing::error!(vendor = %vendor, app_id = ctx.stats.app_id, "signature expired twice in a row: this host's clock is probably wrong");
                return Ok(Some(End::Failed {
                    error: "signature expired twice in a row: check this host's clock".into(),
                }));
            }
            Outcome::Retry { reason, slow_down } => {
                if slow_down {
                    quota.slow_down();
                }
                metrics::counter!("bouncer_retries_total", "vendor" => vendor.as_str(), "slow_down" => if slow_down { "true" } else { "false" }).increment(1);
                let ceiling = ceilings.next().unwrap_or(ctx.retry.max_interval);
                let wait = RetrySchedule::full_jitter(ceiling);
                if Instant::now() + wait > deadline {
                    return Ok(Some(give_up(part, part.attempts.iter().copied().max().unwrap_or(0))));
                }
                tracing::debug!(vendor = %vendor, app_id = ctx.stats.app_id, room = %room, %reason, wait_ms = wait.as_millis() as u64, "retrying");
                tokio::select! {
                    () = tokio::time::sleep(wait) => {},
                    () = ctx.shutdown.cancelled() => return Err(Abandoned),
                }
            }
            Outcome::Permanent { blame: Blame::Parameters, .. } if part.entries.len() > 1 => return Ok(None),
            Outcome::Permanent { code, message, blame: Blame::Parameters | Blame::Room } => {
                return Ok(Some(End::Failed { error: format!("{code}: {message}") }));
            }
            Outcome::Permanent { code, message, blame: Blame::Configuration } => {
                let pause = ctx.stats.config_failure();
                metrics::counter!("bouncer_vendor_config_errors_total", "vendor" => vendor.as_str()).increment(1);
                tracing::error!(
                    vendor = %vendor, app_id = ctx.stats.app_id, code = %code, message = %message,
                    pause_secs = pause.as_secs(),
                    "the vendor refused our credentials or permissions: sending for this app is paused; fix the configuration"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule() -> RetrySchedule {
        RetrySchedule {
            initial: Duration::from_millis(200),
            max_interval: Duration::from_secs(10),
            deadline: Duration::from_secs(600),
        }
    }

    #[test]
    fn ceilings_double_then_stay_at_the_maximum() {
        let c: Vec<u64> = schedule().ceilings().take(9).map(|d| d.as_millis() as u64).collect();
        assert_eq!(c, [200, 400, 800, 1600, 3200, 6400, 10000, 10000, 10000]);
    }

    #[test]
    fn full_jitter_stays_within_zero_and_the_ceiling_and_spreads() {
        let ceiling = Duration::from_secs(1);
        let waits: Vec<Duration> = (0..1000).map(|_| RetrySchedule::full_jitter(ceiling)).collect();
        assert!(waits.iter().all(|w| *w <= ceiling));
        assert!(waits.iter().any(|w| *w < Duration::from_millis(100)));
        assert!(waits.iter().any(|w| *w > Duration::from_millis(900)));
    }
}
