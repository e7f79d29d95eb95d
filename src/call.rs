//! One chunk's vendor calls. The chunk is sent once; an expired signature is signed again at once
//! (once), a parameter error on several users splits the chunk in halves until the bad user id is
//! alone, and anything worth retrying is scheduled in the kick's row (full jitter, up to the
//! deadline from its first attempt) rather than waited for here. A configuration error pauses the
//! app and schedules the chunk after the pause. Every call is charged to the quota right before it
//! is sent, and recorded in `kick_attempts`.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use chrono::{DateTime, Utc};

use crate::app::{LaneCtx, deadline_message};
use crate::audit::results::{AttemptRow, KickChange, KickOutcome};
use crate::audit::writer::AuditMsg;
use crate::batch::{Entry, Target};
use crate::quota::Quota;
use crate::states::KickStatus;
use crate::vendor_api::{Blame, CallReport, KickRequest, Outcome};

/// How a part of the chunk came out.
enum End {
    Kicked {
        request_id: String,
    },
    Gone {
        code: String,
    },
    Failed {
        error: String,
    },
    /// Try again at or after this time (within each kick's deadline).
    Retry {
        not_before: DateTime<Utc>,
        error: String,
    },
}

/// Part of a chunk with its own state (a chunk splits to isolate a bad user).
struct Part {
    entries: Vec<Entry>,
    /// Calls made for this part (each carried every entry).
    calls: i32,
    resigned: bool,
    first_call_at: Option<DateTime<Utc>>,
}

impl Part {
    fn new(entries: Vec<Entry>, calls: i32, first_call_at: Option<DateTime<Utc>>) -> Part {
        Part { entries, calls, resigned: false, first_call_at }
    }
}

/// The process stopped owning the quota (or is shutting down) before this part was sent.
struct Stopped;

/// The lane's hold on the quota for a chunk not yet charged: released (and the lane woken to cut
/// the next chunk) when the chunk's first call is charged, or when the task ends without one.
pub(crate) struct FirstCharge(Arc<LaneCtx>);

impl FirstCharge {
    /// Taken by the lane as it hands a chunk over.
    pub(crate) fn take(ctx: &Arc<LaneCtx>) -> FirstCharge {
        ctx.stats.awaiting_quota.fetch_add(1, Ordering::Relaxed);
        FirstCharge(ctx.clone())
    }
}

impl Drop for FirstCharge {
    fn drop(&mut self) {
        self.0.stats.awaiting_quota.fetch_sub(1, Ordering::Relaxed);
        self.0.call_done.notify_one();
    }
}

/// Sends one chunk and records how every user in it came out.
pub async fn run(ctx: Arc<LaneCtx>, target: Target, chunk: Vec<Entry>, first_charge: FirstCharge) {
    let mut first_charge = Some(first_charge);
    let n = chunk.len();
    let reason = chunk.first().and_then(|e| e.reason.clone());
    let mut parts = vec![Part::new(chunk, 0, None)];
    let mut attempt_no = 0;
    let mut outcomes = Vec::new();
    while let Some(mut part) = parts.pop() {
        match attempt(&ctx, &target, reason.as_deref(), &mut part, &mut attempt_no, &mut first_charge).await {
            Ok(Some(end)) => conclude(&ctx, &part, end, &mut outcomes),
            Ok(None) => {
                // Split on a parameter error: the halves go next, first half first.
                let mid = part.entries.len() / 2;
                let second = part.entries.split_off(mid);
                parts.push(Part::new(second, part.calls, part.first_call_at));
                parts.push(Part::new(part.entries, part.calls, part.first_call_at));
            }
            Err(Stopped) => {
                // Nothing is lost: the kicks stay pending in the database for the next owner. Calls
                // already made for this part are counted, and it is due again at once.
                if part.calls > 0 {
                    let end = End::Retry { not_before: Utc::now(), error: "owner changed mid-chunk".into() };
                    conclude(&ctx, &part, end, &mut outcomes);
                }
            }
        }
    }
    ctx.stats.calling_users.fetch_sub(n, Ordering::Relaxed);
    ctx.stats.calls_in_flight.fetch_sub(1, Ordering::Relaxed);
    ctx.call_done.notify_one();
    ctx.record(outcomes).await;
}

/// Turns a part's end into one `kicks` change per claim.
fn conclude(ctx: &LaneCtx, part: &Part, end: End, outcomes: &mut Vec<KickOutcome>) {
    let now = Utc::now();
    let vendor = ctx.stats.vendor.as_str();
    for entry in &part.entries {
        for claim in &entry.claims {
            let first = claim.first_attempt_at.or(part.first_call_at);
            let (change, error, request_id) = match &end {
                End::Kicked { request_id } => {
                    (KickChange::Ended(KickStatus::Kicked), None, Some(request_id.clone()).filter(|r| !r.is_empty()))
                }
                End::Gone { code } => (
                    KickChange::Ended(KickStatus::Gone),
                    Some(format!("room or user no longer exists (vendor code {code})")),
                    None,
                ),
                End::Failed { error } => (KickChange::Ended(KickStatus::Failed), Some(error.clone()), None),
                End::Retry { not_before, error } => {
                    let scheduled = ctx.retry.next_attempt(claim.scheduled_retries, first.unwrap_or(now), now);
                    match scheduled.map(|t| t.max(*not_before)) {
                        Some(at) if !ctx.retry.past_deadline(first.unwrap_or(now), at) => {
                            (KickChange::RetryAt(at), Some(error.clone()), None)
                        }
                        _ => {
                            let attempts = claim.scheduled_retries + 1;
                            let why = deadline_message(&ctx.retry, attempts, Some(error));
                            (KickChange::Ended(KickStatus::Failed), Some(why), None)
                        }
                    }
                }
            };
            if claim.reentry.is_some() {
                // A re-kick: counted apart from verdicts' kicks, with the time from the callback
                // reaching Bouncer (the entry's origin) to the first call carrying it.
                if let KickChange::Ended(status) = change {
                    metrics::counter!("bouncer_rekicks_total", "vendor" => vendor, "outcome" => status.as_str())
                        .increment(1);
                }
                if claim.first_attempt_at.is_none()
                    && let Some(first_call) = part.first_call_at
                {
                    let latency = (first_call - entry.origin).to_std().unwrap_or_default();
                    metrics::histogram!("bouncer_reentry_to_call_seconds", "vendor" => vendor)
                        .record(latency.as_secs_f64());
                }
            } else if let KickChange::Ended(status) = change {
                // Counted like `kicks` rows (one per verdict and user), so the metric matches the audit.
                metrics::counter!("bouncer_kicks_total", "vendor" => vendor, "outcome" => status.as_str()).increment(1);
                if status == KickStatus::Kicked {
                    let latency = (now - entry.origin).to_std().unwrap_or_default();
                    metrics::histogram!("bouncer_verdict_to_kick_seconds", "vendor" => vendor)
                        .record(latency.as_secs_f64());
                }
            }
            outcomes.push(KickOutcome {
                verdict_id: claim.verdict.to_string(),
                user_id: entry.user_id.clone(),
                change,
                attempts: part.calls,
                first_attempt_at: first,
                last_error: error,
                vendor_request_id: request_id,
                reentry: claim.reentry,
            });
        }
    }
}

/// What one call came to, as `attempt` reads it.
enum Next {
    /// The part ended, or must be split (`None`).
    Done(Option<End>),
    /// Sign again and call once more (an expired signature, the first time).
    Again,
}

/// Calls the vendor for one part until it ends (`Some`), must be split (`None`), or ownership
/// stops.
async fn attempt(
    ctx: &LaneCtx,
    target: &Target,
    reason: Option<&str>,
    part: &mut Part,
    attempt_no: &mut i32,
    first_charge: &mut Option<FirstCharge>,
) -> Result<Option<End>, Stopped> {
    let (Some(quota), Some(api)) = (ctx.quota_for(target), ctx.api_for(target)) else {
        // The lane fails such kicks when it fetches them; this is a guard, not a path.
        let error = format!("{} has no API to {} in this room", ctx.stats.vendor, target.action);
        return Ok(Some(End::Failed { error }));
    };
    loop {
        // Charged here, right before sending (the lane waited until the quota was ready).
        let charge = tokio::select! {
            (charge, waited) = quota.acquire() => {
                metrics::histogram!("bouncer_rate_limiter_wait_seconds", "vendor" => ctx.stats.vendor.as_str()).record(waited.as_secs_f64());
                charge
            }
            () = ctx.cancel.cancelled() => return Err(Stopped),
        };
        // The lane may cut the next chunk now.
        drop(first_charge.take());
        if !ctx.may_call() {
            charge.unsent();
            return Err(Stopped);
        }
        *attempt_no += 1;
        part.calls += 1;
        let req = KickRequest {
            action: target.action,
            app_id: ctx.stats.app_id,
            room: target.room.clone(),
            user_ids: part.entries.iter().map(|e| e.user_id.clone()).collect(),
            reason: reason.map(str::to_owned),
        };
        let started_at = Utc::now();
        let started = std::time::Instant::now();
        part.first_call_at.get_or_insert(started_at);
        // A call in flight ends when its answer comes, or when ownership ends: every call of this
        // owner must have ended (answered or given up) before its lease does, so the next owner's
        // first calls cannot meet it in a vendor window (see `quota` and `enforcement`).
        let sent = tokio::select! {
            r = ctx.client.kick_once(&req) => Some(r),
            () = ctx.abandon.cancelled() => None,
            () = ctx.lease.lapsed() => None,
        };
        let abandoned = sent.is_none();
        let report = match sent {
            Some(Ok(r)) => r,
            // Chunks are cut to the client's own limits; this is a bug, not a vendor answer.
            Some(Err(e)) => {
                charge.unsent();
                return Ok(Some(End::Failed { error: format!("refused before sending: {e}") }));
            }
            None => CallReport::abandoned(api.name, started.elapsed()),
        };
        if report.answered() {
            charge.answered();
        } else {
            charge.unanswered();
        }
        let call = Call { target, req, part, attempt: *attempt_no, started_at };
        record(ctx, call, &report).await;
        if abandoned {
            return Err(Stopped);
        }
        match decide(ctx, target, part, report.outcome, quota) {
            Next::Done(end) => return Ok(end),
            Next::Again => {}
        }
    }
}

/// One call as the audit trail keeps it.
struct Call<'a> {
    target: &'a Target,
    req: KickRequest,
    part: &'a Part,
    attempt: i32,
    started_at: DateTime<Utc>,
}

/// Counts the call and hands its `kick_attempts` row to the audit writer.
async fn record(ctx: &LaneCtx, call: Call<'_>, report: &CallReport) {
    let vendor = ctx.stats.vendor;
    let outcome = report.outcome.audit_outcome();
    metrics::histogram!("bouncer_vendor_call_seconds", "vendor" => vendor.as_str(), "action" => report.action, "outcome" => outcome.as_str())
        .record(report.latency.as_secs_f64());
    let error = match &report.outcome {
        Outcome::Retry { reason, .. } => Some(reason.clone()),
        Outcome::Resign => Some("signature expired".to_owned()),
        Outcome::Permanent { code, message, .. } => Some(format!("{code}: {message}")),
        _ => None,
    };
    // One line per call, inside the chunk's span: it names the verdicts and their publishers'
    // trace ids. Vendor text is data: escaped to one line.
    tracing::debug!(action = report.action, users = call.req.user_ids.len(), attempt = call.attempt, outcome = outcome.as_str(),
        latency_ms = report.latency.as_millis() as u64, http_status = report.http_status.unwrap_or(0),
        vendor_code = %crate::text::single_line(report.vendor_code.as_deref().unwrap_or("")),
        request_id = %crate::text::single_line(report.vendor_request_id.as_deref().unwrap_or("")), "vendor call");
    let room = &call.target.room;
    ctx.audit
        .send(AuditMsg::Attempt(Box::new(AttemptRow {
            vendor: vendor.as_str(),
            app_id: i64::from(ctx.stats.app_id),
            room_id: room.to_string(),
            room_id_numeric: room.is_numeric(),
            action: report.action,
            user_ids: call.req.user_ids,
            verdict_ids: call
                .part
                .entries
                .iter()
                .flat_map(|e| e.claims.iter().map(|c| c.verdict.to_string()))
                .collect(),
            attempt: call.attempt,
            started_at: call.started_at,
            latency_ms: i32::try_from(report.latency.as_millis()).unwrap_or(i32::MAX),
            http_status: report.http_status.map(i32::from),
            vendor_code: report.vendor_code.clone(),
            vendor_message: report.vendor_message.clone(),
            vendor_request_id: report.vendor_request_id.clone(),
            outcome,
            error,
        })))
        .await;
}

/// What the vendor's answer means for the part: the vendor outcome, typed at the boundary, turned
/// into an end, a split or another call.
fn decide(ctx: &LaneCtx, target: &Target, part: &mut Part, outcome: Outcome, quota: &Quota) -> Next {
    let vendor = ctx.stats.vendor;
    match outcome {
        Outcome::Done { request_id } => {
            ctx.health.config_ok(vendor, ctx.stats.app_id);
            Next::Done(Some(End::Kicked { request_id }))
        }
        Outcome::Gone { code } => {
            ctx.health.config_ok(vendor, ctx.stats.app_id);
            Next::Done(Some(End::Gone { code }))
        }
        Outcome::Resign if !part.resigned => {
            // Sign again at once with a fresh timestamp and nonce (charged like any call).
            part.resigned = true;
            Next::Again
        }
        Outcome::Resign => {
            tracing::error!(vendor = %vendor, app_id = ctx.stats.app_id, "signature expired twice in a row: this host's clock is probably wrong");
            Next::Done(Some(End::Failed { error: "signature expired twice in a row: check this host's clock".into() }))
        }
        Outcome::Retry { reason, slow_down } => {
            if slow_down {
                quota.slow_down();
            }
            metrics::counter!("bouncer_retries_total", "vendor" => vendor.as_str(), "slow_down" => if slow_down { "true" } else { "false" }).increment(1);
            tracing::debug!(vendor = %vendor, app_id = ctx.stats.app_id, room = %crate::text::single_line(&target.to_string()), %reason, "retry scheduled");
            Next::Done(Some(End::Retry { not_before: Utc::now(), error: reason }))
        }
        Outcome::Permanent { blame: Blame::Parameters, .. } if part.entries.len() > 1 => Next::Done(None),
        Outcome::Permanent { code, message, blame: Blame::Parameters | Blame::Room } => {
            Next::Done(Some(End::Failed { error: format!("{code}: {message}") }))
        }
        Outcome::Permanent { code, message, blame: Blame::Configuration } => {
            let pause = ctx.health.config_failure();
            metrics::counter!("bouncer_vendor_config_errors_total", "vendor" => vendor.as_str()).increment(1);
            tracing::error!(
                vendor = %vendor, app_id = ctx.stats.app_id, code = %code, message = %message,
                pause_secs = pause.as_secs(),
                "the vendor refused our credentials or permissions: sending for this app is paused; fix the configuration"
            );
            let not_before = Utc::now() + pause;
            Next::Done(Some(End::Retry { not_before, error: format!("{code}: {message}") }))
        }
    }
}
