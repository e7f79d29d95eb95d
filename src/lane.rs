//! One lane per app of an owned quota group: it fetches the app's due kicks from PostgreSQL into
//! room batches (a few seconds of work at most, so memory does not grow with the backlog), cuts a
//! chunk whenever the quota lets a call start, and hands each chunk to a call task
//! ([`crate::call`]).
//!
//! The lane remembers every kick it holds — waiting in a batch, in a call, or with its result on
//! the way to the database — and skips those when it fetches, until the audit writer says their
//! result is committed. So a kick is never called twice by one owner.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use crate::app::{LaneCtx, deadline_message};
use crate::audit::Db;
use crate::audit::results::{KickChange, KickOutcome};
use crate::audit::work::{self, DueKick};
use crate::batch::{Claim, RoomBatches, Target};
use crate::keys::KickKey;
use crate::states::KickStatus;
use crate::text::single_line;
use crate::vendor_api::Client;
use crate::wake::LaneWake;

/// The longest a chunk not yet charged holds the next one back (charging takes microseconds once
/// the quota shows a slot; this only bounds the unforeseen).
const UNCHARGED_HOLD: Duration = Duration::from_secs(1);

/// A fetch that takes longer than this is abandoned and tried again on the next wake-up.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// How a lane sizes its fetches and its calls in flight.
#[derive(Clone, Copy, Debug)]
pub struct LaneLimits {
    pub linger: Duration,
    /// Most users held in memory: a few seconds of the quota's work.
    pub capacity: usize,
    /// Most calls in flight at once: two seconds of the quota. A vendor that answers in
    /// milliseconds never reaches it; one that hangs holds this many connections, not
    /// rate × timeout of them, and the rest of its work waits in the database.
    pub max_in_flight: usize,
}

impl LaneLimits {
    /// `buffer_secs` of work at the app's rate and chunk size, at least one chunk.
    pub fn for_app(client: &Client, rate_per_second: u32, linger: Duration, buffer_secs: f64) -> LaneLimits {
        let per_second = f64::from(rate_per_second) * client.chunk_size() as f64;
        let capacity = ((per_second * buffer_secs).ceil() as usize).max(client.chunk_size());
        let max_in_flight = (rate_per_second as usize * 2).max(2);
        LaneLimits { linger, capacity, max_in_flight }
    }
}

/// The lane's memory: the batches and every kick it holds.
struct Held {
    batches: RoomBatches,
    keys: HashSet<KickKey>,
}

/// Runs a lane until `ctx.cancel`. Call tasks go on `tracker`, so whoever stops the lane can wait
/// for calls in flight.
pub async fn run(
    ctx: Arc<LaneCtx>,
    pool: Db,
    wake: LaneWake,
    mut settled: mpsc::UnboundedReceiver<Vec<KickKey>>,
    limits: LaneLimits,
    tracker: TaskTracker,
) {
    let mut held = Held { batches: RoomBatches::new(ctx.client.chunk_size(), limits.linger), keys: HashSet::new() };
    // The polling fallback (wake-ups are faster): see `LaneWake`.
    let mut poll = tokio::time::interval(wake.tick());
    let mut looked_at = Instant::now();
    let mut want_fetch = true;
    // Re-kicks are fetched on every wake-up and tick, even while the lane is full of kicks.
    let mut want_reentries = true;
    // When the last chunk was handed to its call task (see `UNCHARGED_HOLD`).
    let mut last_handover = Instant::now();
    let mut warned_uncharged = false;
    loop {
        while let Ok(keys) = settled.try_recv() {
            keys.iter().for_each(|k| {
                held.keys.remove(k);
            });
        }
        if want_reentries {
            want_reentries = false;
            fetch_reentries(&ctx, &pool, &mut held).await;
        }
        if want_fetch && held.batches.pending_users() < limits.capacity {
            want_fetch = false;
            looked_at = Instant::now();
            fetch(&ctx, &pool, &mut held, limits.capacity).await;
        }
        ctx.stats.waiting_users.store(held.batches.pending_users(), Ordering::Relaxed);
        ctx.stats.open_rooms.store(held.batches.open_rooms(), Ordering::Relaxed);

        let paused = ctx.health.paused_until();
        // A chunk handed over but not yet charged holds the next one back — for at most
        // `UNCHARGED_HOLD`: a call task that cannot charge (whatever the reason) never stalls the
        // lane, which then cuts chunks as the quota shows slots, as before.
        let uncharged = ctx.stats.awaiting_quota.load(Ordering::Relaxed) > 0;
        let held_back = uncharged && last_handover.elapsed() < UNCHARGED_HOLD;
        if uncharged && !held_back && !warned_uncharged {
            warned_uncharged = true;
            tracing::warn!(vendor = %ctx.stats.vendor, app_id = ctx.stats.app_id,
                "a chunk waited over a second for its first charge; cutting the next ones without waiting");
        }
        let at_cap = ctx.stats.calls_in_flight.load(Ordering::Relaxed) >= limits.max_in_flight || held_back;
        let ready = if paused.is_some() || at_cap { None } else { held.batches.ready(Instant::now()) };
        let quota = ready.as_ref().and_then(|r| ctx.quota_for(r).cloned());
        let wake_at = match (&ready, paused) {
            // At the cap (or with a chunk not yet charged) only a call's charge or end changes
            // anything (the rooms are due already).
            _ if held_back => Some(last_handover + UNCHARGED_HOLD),
            _ if at_cap => None,
            (Some(_), _) => None,
            (None, Some(until)) if held.batches.pending_users() > 0 => Some(until),
            (None, _) => held.batches.next_deadline(),
        };
        tokio::select! {
            () = ctx.cancel.cancelled() => break,
            () = wake.notify.notified() => (want_fetch, want_reentries) = (true, true),
            Some(keys) = settled.recv() => keys.iter().for_each(|k| { held.keys.remove(k); }),
            _ = poll.tick() => {
                let due = wake.poll_due(looked_at.elapsed());
                want_fetch |= due;
                want_reentries |= due;
            },
            () = ctx.call_done.notified(), if at_cap => {},
            waited = async { match &quota { Some(q) => q.ready().await, None => std::future::pending().await } } => {
                metrics::histogram!("bouncer_rate_limiter_wait_seconds", "vendor" => ctx.stats.vendor.as_str())
                    .record(waited.as_secs_f64());
                let Some(room) = ready else { continue };
                if !ctx.may_call() {
                    break;
                }
                let chunk = held.batches.take(&room);
                if chunk.is_empty() {
                    continue;
                }
                ctx.stats.calling_users.fetch_add(chunk.len(), Ordering::Relaxed);
                ctx.stats.calls_in_flight.fetch_add(1, Ordering::Relaxed);
                // Every log line about this call names its verdicts, vendor, app and room.
                let ids: Vec<&str> = chunk.iter().flat_map(|e| e.claims.iter().map(|c| &*c.verdict)).collect();
                // And the publishers' trace ids (W3C traceparent; checked hex at intake), so a
                // pipeline's trace reaches the vendor call.
                let mut traces: Vec<&str> = chunk.iter().flat_map(|e| e.claims.iter().filter_map(|c| c.trace_id.as_deref())).collect();
                traces.sort_unstable();
                traces.dedup();
                // Ids and rooms are data: escaped, so a CR/LF in one cannot forge a text log line.
                let span = tracing::info_span!("chunk", verdict_id = %single_line(&ids.join(",")), vendor = %ctx.stats.vendor,
                    app_id = ctx.stats.app_id, room_id = %single_line(&room.to_string()), trace_id = %traces.join(","));
                let first_charge = crate::call::FirstCharge::take(&ctx);
                let call = tracing::Instrument::instrument(crate::call::run(ctx.clone(), room, chunk, first_charge), span);
                tracker.spawn_on(call, &ctx.calls);
                last_handover = Instant::now();
                warned_uncharged = false;
                if held.batches.pending_users() < limits.capacity / 2 {
                    want_fetch = true;
                }
            },
            () = async { match wake_at { Some(t) => tokio::time::sleep_until(t).await, None => std::future::pending().await } } => {},
        }
    }
    ctx.stats.waiting_users.store(0, Ordering::Relaxed);
    ctx.stats.open_rooms.store(0, Ordering::Relaxed);
}

/// Most re-kicks fetched at once (a few per second arrive even in a raid; more wait a turn).
const REENTRY_FETCH: usize = 100;

/// Adds due re-kicks (banned users who came back) this lane does not hold yet, whatever it holds:
/// they go first ([`crate::batch::RoomBatches::ready`]).
async fn fetch_reentries(ctx: &LaneCtx, pool: &Db, held: &mut Held) {
    let (vendor, app_id) = (ctx.stats.vendor, ctx.stats.app_id);
    let held_reentries = held.keys.iter().filter(|k| k.reentry.is_some()).count();
    let fetched = work::due_reentries(pool, vendor, app_id, held_reentries + REENTRY_FETCH);
    let fetched = tokio::time::timeout(FETCH_TIMEOUT, fetched).await;
    if let Ok(Ok(rows)) = &fetched
        && rows.len() > held_reentries
    {
        tracing::debug!(vendor = %vendor, app_id, due = rows.len(), held = held_reentries, "re-kicks fetched");
    }
    add_rows(ctx, held, fetched).await;
}

/// Fills the batches with due kicks this lane does not hold yet.
async fn fetch(ctx: &LaneCtx, pool: &Db, held: &mut Held, capacity: usize) {
    let want = capacity.saturating_sub(held.batches.pending_users());
    let (vendor, app_id) = (ctx.stats.vendor, ctx.stats.app_id);
    let fetched = work::due(pool, vendor, app_id, held.keys.len() + want);
    add_rows(ctx, held, tokio::time::timeout(FETCH_TIMEOUT, fetched).await).await;
}

/// Adds fetched rows to the batches (failing at once those that cannot be sent).
async fn add_rows(
    ctx: &LaneCtx,
    held: &mut Held,
    fetched: Result<Result<Vec<DueKick>, crate::audit::AuditError>, tokio::time::error::Elapsed>,
) {
    let (vendor, app_id) = (ctx.stats.vendor, ctx.stats.app_id);
    let rows = match fetched {
        Ok(Ok(rows)) => rows,
        Ok(Err(e)) => {
            metrics::counter!("bouncer_database_errors_total", "op" => "fetch").increment(1);
            tracing::warn!(vendor = %vendor, app_id, error = %e, "cannot fetch due kicks; trying again shortly");
            return;
        }
        Err(_) => {
            tracing::warn!(vendor = %vendor, app_id, "fetching due kicks timed out; trying again shortly");
            return;
        }
    };
    let now_utc = chrono::Utc::now();
    let now = Instant::now();
    let mut expired = Vec::new();
    for row in rows {
        let key = KickKey::of(row.verdict_id.as_str(), row.user_id.as_str(), row.reentry_id);
        if held.keys.contains(&key) {
            continue;
        }
        let Some(room) = row.room() else {
            tracing::error!(verdict_id = %single_line(&row.verdict_id), room_id = %single_line(&row.room_id), "stored room is not a room; failing the kick");
            expired.push(ended_without_call(&row, "the stored room id cannot be sent to the vendor".into()));
            held.keys.insert(key);
            continue;
        };
        let target = row.action().map(|action| Target { room, action });
        let Some(target) = target.filter(|t| ctx.api_for(t).is_some()) else {
            let why = format!("{vendor} has no API to {} in this room", row.action);
            tracing::error!(verdict_id = %single_line(&row.verdict_id), action = %single_line(&row.action), "{}; failing the kick", single_line(&why));
            expired.push(ended_without_call(&row, why));
            held.keys.insert(key);
            continue;
        };
        if let Some(first) = row.first_attempt_at
            && ctx.retry.past_deadline(first, now_utc)
        {
            // A restart or takeover after a long outage: the deadline has passed without us.
            let why = deadline_message(&ctx.retry, row.scheduled_retries + 1, row.last_error.as_deref());
            expired.push(ended_without_call(&row, why));
            held.keys.insert(key);
            continue;
        };
        let age = (now_utc - row.next_attempt_at).to_std().unwrap_or_default();
        let since = now.checked_sub(age).unwrap_or(now);
        let claim = Claim {
            verdict: Arc::from(row.verdict_id.as_str()),
            first_attempt_at: row.first_attempt_at,
            scheduled_retries: row.scheduled_retries,
            last_error: row.last_error.clone(),
            reentry: row.reentry_id,
            trace_id: row.trace_id().map(Arc::from),
        };
        let reason = row.reason.as_deref().map(Arc::from);
        held.batches.add(&target, &row.user_id, claim, reason.as_ref(), row.origin, since);
        held.keys.insert(key);
    }
    if !expired.is_empty() {
        metrics::counter!("bouncer_kicks_total", "vendor" => vendor.as_str(), "outcome" => KickStatus::Failed.as_str())
            .increment(expired.len() as u64);
        ctx.record(expired).await;
    }
}

fn ended_without_call(row: &DueKick, error: String) -> KickOutcome {
    KickOutcome {
        verdict_id: row.verdict_id.clone(),
        user_id: row.user_id.clone(),
        change: KickChange::Ended(KickStatus::Failed),
        attempts: 0,
        first_attempt_at: None,
        last_error: Some(error),
        vendor_request_id: None,
        reentry: row.reentry_id,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lane_holds_a_few_seconds_of_its_quota() {
        let zego = crate::config::Config::from_toml(
            "[[zego]]\napp_id = 1\nserver_secret = \"s\"\n[[trtc]]\nsdk_app_id = 2\nsecret_id = \"A\"\nsecret_key = \"k\"\nregion = \"ap-guangzhou\"\n",
        )
        .unwrap();
        let z = Client::Zego(crate::vendor_api::zego::ZegoClient::new(&zego.zego[0]));
        let t = Client::Trtc(crate::vendor_api::trtc::TrtcClient::new(&zego.trtc[0]));
        assert_eq!(LaneLimits::for_app(&z, 50, Duration::ZERO, 2.0).capacity, 500);
        assert_eq!(LaneLimits::for_app(&z, 50, Duration::ZERO, 2.0).max_in_flight, 100);
        assert_eq!(LaneLimits::for_app(&t, 20, Duration::ZERO, 2.0).capacity, 400);
        assert_eq!(LaneLimits::for_app(&z, 1, Duration::ZERO, 0.1).capacity, 5, "at least one chunk");
    }
}
