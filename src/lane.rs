//! One lane per configured app: it owns that app's room batches, cuts chunks when the app's quota
//! lets a call start, and hands each chunk to a call task ([`crate::retry::execute`]). Lanes never
//! wait on each other, so one failing or throttled app cannot slow another.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::audit::writer::AuditSink;
use crate::batch::{RoomBatches, VerdictRef};
use crate::quota::{Quota, Quotas};
use crate::retry::RetrySchedule;
use crate::vendor::{Client, trtc};
use crate::verdict::{RoomId, Vendor};

/// Longest pause after repeated configuration failures (bad secret, no permission).
const MAX_CONFIG_PAUSE: Duration = Duration::from_secs(60);
/// Weight of the newest second in the smoothed throughput.
const EWMA_ALPHA: f64 = 0.3;

/// What intake and the lane share about one app. Every field is safe to read from any task.
pub struct LaneStats {
    pub vendor: Vendor,
    pub app_id: u32,
    /// Most users per call for this app.
    pub chunk_size: usize,
    /// Verdicts handed to this lane whose deliveries are still held (see [`crate::inflight`]).
    pub held_verdicts: AtomicUsize,
    /// Users waiting in room batches.
    pub waiting_users: AtomicUsize,
    /// Users inside a call task (being sent, or waiting to retry).
    pub calling_users: AtomicUsize,
    /// Rooms with users waiting.
    pub open_rooms: AtomicUsize,
    /// Users whose kick ended (kicked, gone or failed) since start.
    pub finished_users: AtomicU64,
    /// Smoothed users finished per second while the lane had work (f64 bits). Starts at the
    /// nominal rate (calls/s × chunk size) so a new app is trusted until measured.
    throughput: AtomicU64,
    /// Configuration failures in a row; sets the pause length.
    config_failures: AtomicU32,
    /// No call starts before this instant (after a configuration failure).
    paused_until: Mutex<Option<Instant>>,
}

impl LaneStats {
    pub fn new(vendor: Vendor, app_id: u32, chunk_size: usize, rate_per_second: u32) -> LaneStats {
        let nominal = f64::from(rate_per_second) * chunk_size as f64;
        LaneStats {
            vendor,
            app_id,
            chunk_size,
            held_verdicts: AtomicUsize::new(0),
            waiting_users: AtomicUsize::new(0),
            calling_users: AtomicUsize::new(0),
            open_rooms: AtomicUsize::new(0),
            finished_users: AtomicU64::new(0),
            throughput: AtomicU64::new(nominal.to_bits()),
            config_failures: AtomicU32::new(0),
            paused_until: Mutex::new(None),
        }
    }

    pub fn pending_users(&self) -> usize {
        self.waiting_users.load(Ordering::Relaxed) + self.calling_users.load(Ordering::Relaxed)
    }

    pub fn throughput(&self) -> f64 {
        f64::from_bits(self.throughput.load(Ordering::Relaxed))
    }

    pub fn paused_until(&self) -> Option<Instant> {
        let p = *self.paused_until.lock().unwrap_or_else(|e| e.into_inner());
        p.filter(|t| *t > Instant::now())
    }

    /// Whether intake should hand this lane a verdict of `users` more users now, or defer it.
    ///
    /// A lane takes work while what it already holds would drain within `hold` at its measured
    /// throughput, and while it holds fewer than `max_held` verdicts and `max_open_rooms` rooms.
    /// A healthy app at full speed keeps taking its backlog; an app whose vendor hangs, fails
    /// or throttles stops finishing users, its throughput falls, and its new verdicts are
    /// deferred instead of filling the prefetch window other apps need.
    pub fn accepts(&self, users: usize, hold: Duration, max_held: usize, max_open_rooms: usize) -> bool {
        if self.paused_until().is_some()
            || self.held_verdicts.load(Ordering::Relaxed) >= max_held
            || self.open_rooms.load(Ordering::Relaxed) >= max_open_rooms
        {
            return false;
        }
        let budget = (self.throughput() * hold.as_secs_f64()).max(self.chunk_size as f64);
        (self.pending_users() + users) as f64 <= budget
    }

    /// Once a second: fold the users finished in the last second into the throughput, but only
    /// if the lane had work (an idle app keeps its last measured speed).
    fn tick(&self, last_finished: &mut u64, had_work: bool) {
        let finished = self.finished_users.load(Ordering::Relaxed);
        let done = (finished - *last_finished) as f64;
        *last_finished = finished;
        if had_work {
            let t = self.throughput() * (1.0 - EWMA_ALPHA) + done * EWMA_ALPHA;
            self.throughput.store(t.to_bits(), Ordering::Relaxed);
        }
    }

    /// The vendor refused our credentials or permissions: pause the whole app, longer each time
    /// in a row (1 s, 2 s, 4 s … 60 s). Returns the pause.
    pub fn config_failure(&self) -> Duration {
        let n = self.config_failures.fetch_add(1, Ordering::Relaxed).min(6);
        let pause = Duration::from_secs(1 << n).min(MAX_CONFIG_PAUSE);
        *self.paused_until.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now() + pause);
        pause
    }

    /// A call went through: the configuration works.
    pub fn config_ok(&self) {
        if self.config_failures.swap(0, Ordering::Relaxed) > 0 {
            *self.paused_until.lock().unwrap_or_else(|e| e.into_inner()) = None;
            tracing::info!(vendor = %self.vendor, app_id = self.app_id, "vendor accepts our credentials again; sending resumed");
        }
    }
}

/// One verdict's users for this lane.
pub struct LaneMsg {
    pub verdict: VerdictRef,
    pub room: RoomId,
    pub users: Vec<String>,
    pub reason: Option<Arc<str>>,
    /// `detected_at`, else when the verdict was received: verdict-to-kick latency starts here.
    pub origin: DateTime<Utc>,
}

/// Everything a lane and its call tasks share.
pub struct LaneCtx {
    pub client: Client,
    pub stats: Arc<LaneStats>,
    /// The quota for numeric rooms (TRTC `RemoveUser`) …
    pub quota_numeric: Arc<Quota>,
    /// … and for string rooms; for ZEGO both are the AppID's one quota.
    pub quota_text: Arc<Quota>,
    pub retry: RetrySchedule,
    pub audit: AuditSink,
    pub shutdown: CancellationToken,
}

impl LaneCtx {
    pub fn new(
        client: Client,
        rate_per_second: u32,
        quotas: &Quotas,
        retry: RetrySchedule,
        audit: AuditSink,
        shutdown: CancellationToken,
    ) -> LaneCtx {
        let (vendor, app_id, chunk) = (client.vendor(), app_id_of(&client), client.chunk_size());
        let (quota_numeric, quota_text) = match &client {
            Client::Zego(_) => {
                let q = quotas.get(&format!("zego:{app_id}"), rate_per_second);
                (q.clone(), q)
            }
            Client::Trtc(c) => (
                quotas.get(&format!("trtc:{}:{}", c.secret_id(), trtc::ACTION_NUMERIC), rate_per_second),
                quotas.get(&format!("trtc:{}:{}", c.secret_id(), trtc::ACTION_STRING), rate_per_second),
            ),
        };
        LaneCtx {
            stats: Arc::new(LaneStats::new(vendor, app_id, chunk, rate_per_second)),
            client,
            quota_numeric,
            quota_text,
            retry,
            audit,
            shutdown,
        }
    }

    pub fn quota_for(&self, room: &RoomId) -> &Arc<Quota> {
        if room.is_numeric() { &self.quota_numeric } else { &self.quota_text }
    }
}

fn app_id_of(client: &Client) -> u32 {
    match client {
        Client::Zego(c) => c.app_id(),
        Client::Trtc(c) => c.sdk_app_id(),
    }
}

/// Where intake sends an app's verdicts.
#[derive(Clone)]
pub struct LaneHandle {
    pub tx: mpsc::UnboundedSender<LaneMsg>,
    pub stats: Arc<LaneStats>,
}

/// Starts a lane; its call tasks run on `tracker` so shutdown can wait for them.
pub fn spawn(ctx: Arc<LaneCtx>, linger: Duration, tracker: &TaskTracker) -> LaneHandle {
    let (tx, rx) = mpsc::unbounded_channel();
    let stats = ctx.stats.clone();
    tracker.spawn(run(ctx, rx, linger, tracker.clone()));
    LaneHandle { tx, stats }
}

fn add(batches: &mut RoomBatches, m: LaneMsg, now: Instant) {
    for u in &m.users {
        batches.add(&m.room, u, &m.verdict, m.reason.as_ref(), m.origin, now);
    }
}

async fn run(ctx: Arc<LaneCtx>, mut rx: mpsc::UnboundedReceiver<LaneMsg>, linger: Duration, tracker: TaskTracker) {
    let mut batches = RoomBatches::new(ctx.client.chunk_size(), linger);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut last_finished = 0;
    loop {
        while let Ok(m) = rx.try_recv() {
            add(&mut batches, m, Instant::now());
        }
        ctx.stats.waiting_users.store(batches.pending_users(), Ordering::Relaxed);
        ctx.stats.open_rooms.store(batches.open_rooms(), Ordering::Relaxed);

        let paused = ctx.stats.paused_until();
        let ready = if paused.is_some() { None } else { batches.ready(Instant::now()) };
        let quota = ready.as_ref().map(|r| ctx.quota_for(r).clone());
        let wake = match (&ready, paused) {
            (Some(_), _) => None,
            (None, Some(until)) if batches.pending_users() > 0 => Some(until),
            (None, _) => batches.next_deadline(),
        };
        tokio::select! {
            () = ctx.shutdown.cancelled() => break,
            m = rx.recv() => match m {
                Some(m) => add(&mut batches, m, Instant::now()),
                None => break,
            },
            waited = async { match &quota { Some(q) => q.acquire().await, None => std::future::pending().await } } => {
                metrics::histogram!("bouncer_rate_limiter_wait_seconds", "vendor" => ctx.stats.vendor.as_str())
                    .record(waited.as_secs_f64());
                // Users who arrived while we waited for the quota ride along.
                while let Ok(m) = rx.try_recv() {
                    add(&mut batches, m, Instant::now());
                }
                let Some(room) = ready else { continue };
                let chunk = batches.take(&room);
                if !chunk.is_empty() {
                    ctx.stats.calling_users.fetch_add(chunk.len(), Ordering::Relaxed);
                    // Every log line about this call names its verdicts, vendor, app and room.
                    let ids: Vec<&str> = chunk.iter().flat_map(|e| e.verdicts.iter().map(|v| &**v)).collect();
                    let span = tracing::info_span!("chunk", verdict_id = %ids.join(","), vendor = %ctx.stats.vendor,
                        app_id = ctx.stats.app_id, room_id = %room);
                    tracker.spawn(tracing::Instrument::instrument(crate::retry::execute(ctx.clone(), room, chunk), span));
                }
            },
            () = async { match wake { Some(t) => tokio::time::sleep_until(t).await, None => std::future::pending().await } } => {},
            _ = tick.tick() => {
                let had_work = ctx.stats.pending_users() > 0;
                ctx.stats.tick(&mut last_finished, had_work);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lane_that_stops_finishing_users_stops_accepting_work() {
        let s = LaneStats::new(Vendor::Zego, 1, 5, 50);
        let hold = Duration::from_secs(10);
        assert!(s.accepts(100, hold, 1000, 1000), "nominal 250 users/s: 100 users drain in well under 10 s");
        s.calling_users.store(2000, Ordering::Relaxed);
        assert!(s.accepts(400, hold, 1000, 1000));
        assert!(!s.accepts(600, hold, 1000, 1000), "2600 users at 250/s exceed 10 s");
        // Five busy seconds with nothing finished: throughput decays, the lane is deemed stuck.
        let mut last = 0;
        for _ in 0..5 {
            s.tick(&mut last, true);
        }
        assert!(s.throughput() < 50.0, "{}", s.throughput());
        assert!(!s.accepts(10, hold, 1000, 1000));
    }

    #[test]
    fn an_idle_app_keeps_its_measured_speed() {
        let s = LaneStats::new(Vendor::Trtc, 1, 10, 20);
        let mut last = 0;
        for _ in 0..30 {
            s.tick(&mut last, false);
        }
        assert_eq!(s.throughput(), 200.0);
        assert!(s.accepts(1, Duration::from_secs(10), 10, 10));
    }

    #[test]
    fn held_and_room_caps_and_pauses_refuse_work() {
        let s = LaneStats::new(Vendor::Zego, 1, 5, 50);
        let hold = Duration::from_secs(10);
        s.held_verdicts.store(10, Ordering::Relaxed);
        assert!(!s.accepts(1, hold, 10, 100));
        s.held_verdicts.store(0, Ordering::Relaxed);
        s.open_rooms.store(100, Ordering::Relaxed);
        assert!(!s.accepts(1, hold, 10, 100));
        s.open_rooms.store(0, Ordering::Relaxed);
        assert_eq!(s.config_failure(), Duration::from_secs(1));
        assert!(!s.accepts(1, hold, 10, 100));
        assert_eq!(s.config_failure(), Duration::from_secs(2));
        s.config_ok();
        assert!(s.accepts(1, hold, 10, 100));
    }
}
