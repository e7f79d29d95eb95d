//! Telling the owner of a quota that new work is due, promptly: in-process when intake runs in
//! the owner's own process, otherwise through PostgreSQL's LISTEN/NOTIFY (one notification per
//! intake transaction that has news for another replica). Lanes also poll every second, so a lost
//! notification only costs latency; while no LISTEN connection is up — none configured behind a
//! transaction pooler, or lost — they poll every `postgres.poll_interval_ms` instead.
//!
//! A notification's payload is a [`WakeNote`]. Intake leaves out the apps whose lanes run in its
//! own process: a NOTIFY takes PostgreSQL's global notify-queue lock from the commit to the end of
//! its WAL flush, so every committing NOTIFY waits behind every other; a single replica that owns
//! everything sends none (the retention bench saw intake commits wait 100–280 ms on that lock while
//! pruning wrote WAL).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::keys::{AppKey, OWNERS_CHANNEL, WORK_CHANNEL, WakeNote};
use crate::retry::Backoff;

/// One wake-up per configured app, shared by intake, the listener and the app's lane (whichever
/// incarnation of it runs now), plus one for the elector.
pub struct Wakers {
    apps: HashMap<AppKey, AppWake>,
    /// Woken when a lease is released somewhere, so contenders look at once.
    pub owners: Arc<Notify>,
    /// Whether a LISTEN connection is up now.
    listening: Arc<AtomicBool>,
    /// How often lanes look for work while it is not (`postgres.poll_interval_ms`).
    poll_interval: Duration,
}

/// One app's wake-up and how many of its lanes run in this process now (0 or 1; a counter, so a
/// lane still ending while its successor starts cannot hide the successor).
#[derive(Default)]
struct AppWake {
    notify: Arc<Notify>,
    lanes_here: Arc<AtomicUsize>,
}

/// The polling fallback while notifications arrive: a lost one costs at most this.
pub const POLL_WHILE_LISTENING: Duration = Duration::from_secs(1);

impl Wakers {
    pub fn new(apps: impl IntoIterator<Item = AppKey>, poll_interval: Duration) -> Wakers {
        metrics::gauge!("bouncer_listen_connected").set(0.0);
        Wakers {
            apps: apps.into_iter().map(|k| (k, AppWake::default())).collect(),
            owners: Arc::default(),
            listening: Arc::default(),
            poll_interval,
        }
    }

    /// Records whether a LISTEN connection is up (lanes read it; ops see it as
    /// `bouncer_listen_connected`).
    fn set_listening(&self, up: bool) {
        self.listening.store(up, Ordering::Relaxed);
        metrics::gauge!("bouncer_listen_connected").set(if up { 1.0 } else { 0.0 });
    }

    /// What the app's lane waits on. The app counts as running here until the lane drops it.
    pub fn for_lane(&self, app: AppKey) -> LaneWake {
        let (notify, here) = match self.apps.get(&app) {
            Some(a) => (a.notify.clone(), a.lanes_here.clone()),
            None => Default::default(),
        };
        here.fetch_add(1, Ordering::Relaxed);
        LaneWake { notify, here, listening: self.listening.clone(), poll_interval: self.poll_interval }
    }

    /// Wakes the app's lane if it runs here (or the next one to start).
    pub fn wake(&self, app: AppKey) {
        if let Some(a) = self.apps.get(&app) {
            a.notify.notify_one();
        }
    }

    /// Whether the app's lane runs in this process now, so an in-process wake-up reaches it. A
    /// lane that stops just after this answered yes costs its successor elsewhere at most one
    /// poll (a new lane also looks for work as it starts).
    pub fn runs_here(&self, app: AppKey) -> bool {
        self.apps.get(&app).is_some_and(|a| a.lanes_here.load(Ordering::Relaxed) > 0)
    }

    fn wake_all(&self) {
        self.apps.values().for_each(|a| a.notify.notify_one());
    }

    /// Acts on a notification from another process.
    fn on_work(&self, me: &str, payload: &str) {
        let Some(note) = WakeNote::parse(payload) else { return };
        if note.from == me {
            return; // intake in this process already woke its lanes
        }
        match note.apps {
            None => self.wake_all(),
            Some(apps) => apps.into_iter().for_each(|app| self.wake(app)),
        }
    }
}

/// A lane's wake-ups: notifications, and how often to look for work without one.
pub struct LaneWake {
    pub notify: Arc<Notify>,
    /// The app's count of lanes running here, held for as long as this lane runs.
    here: Arc<AtomicUsize>,
    listening: Arc<AtomicBool>,
    poll_interval: Duration,
}

impl Drop for LaneWake {
    fn drop(&mut self) {
        self.here.fetch_sub(1, Ordering::Relaxed);
    }
}

impl LaneWake {
    /// The tick of the lane's polling clock: the fastest it may need to look.
    pub fn tick(&self) -> Duration {
        self.poll_interval.min(POLL_WHILE_LISTENING)
    }

    /// Whether a lane that last looked for work `since` ago should look now, at a tick.
    pub fn poll_due(&self, since: Duration) -> bool {
        // Half a tick of slack: a tick lands a hair early against a fetch made at the previous one.
        !self.listening.load(Ordering::Relaxed) || since + self.tick() / 2 >= POLL_WHILE_LISTENING
    }
}

/// Listens on `pool` (a session: not through a transaction pooler) until `shutdown`,
/// reconnecting after errors (PgListener resubscribes by itself).
pub async fn listen(pool: PgPool, wakers: Arc<Wakers>, me: String, shutdown: CancellationToken) {
    listen_while_up(pool, &wakers, me, shutdown).await;
    wakers.set_listening(false);
}

async fn listen_while_up(pool: PgPool, wakers: &Wakers, me: String, shutdown: CancellationToken) {
    // 200 ms, doubling to 5 s while PostgreSQL is away.
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    'connect: loop {
        let connect = || async {
            let mut l = PgListener::connect_with(&pool).await?;
            l.listen_all([WORK_CHANNEL, OWNERS_CHANNEL]).await?;
            Ok::<_, sqlx::Error>(l)
        };
        let failed =
            |e: &sqlx::Error, _| tracing::warn!(error = %e, "cannot LISTEN for new work; lanes poll meanwhile");
        let Some(mut listener) = backoff.until_ok(&shutdown, connect, failed).await else { return };
        backoff.reset();
        wakers.set_listening(true);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                n = listener.recv() => match n {
                    Ok(n) if n.channel() == WORK_CHANNEL => wakers.on_work(&me, n.payload()),
                    Ok(_) => wakers.owners.notify_one(),
                    Err(e) => {
                        wakers.set_listening(false);
                        tracing::warn!(error = %e, "LISTEN connection lost; lanes poll until it is back");
                        if !Backoff::sleep(backoff.next_wait(), &shutdown).await {
                            return;
                        }
                        // The lanes might have missed work meanwhile.
                        wakers.wake_all();
                        continue 'connect;
                    }
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vendors::Vendor;

    #[tokio::test]
    async fn a_notification_wakes_the_named_lanes_but_not_from_this_process() {
        let (zego, trtc) = (AppKey::new(Vendor::Zego, 1), AppKey::new(Vendor::Trtc, 2));
        let w = Wakers::new([zego, trtc], Duration::from_millis(250));
        let (z, t) = (w.for_lane(zego).notify.clone(), w.for_lane(trtc).notify.clone());
        w.on_work("me", "me|zego:1");
        w.on_work("me", "other|trtc:2,zego:999,bogus");
        let woke = |n: &Arc<Notify>| n.notified().now_or_never_is_ready();
        assert!(!woke(&z), "own notifications are ignored");
        assert!(woke(&t));
        w.on_work("me", "other|*");
        assert!(woke(&z) && woke(&t));
    }

    #[test]
    fn an_app_runs_here_while_a_lane_holds_its_wake_up() {
        let (zego, other) = (AppKey::new(Vendor::Zego, 1), AppKey::new(Vendor::Zego, 2));
        let w = Wakers::new([zego], Duration::from_millis(250));
        assert!(!w.runs_here(zego));
        let ending = w.for_lane(zego);
        let successor = w.for_lane(zego);
        drop(ending);
        assert!(w.runs_here(zego), "the successor still runs");
        drop(successor);
        assert!(!w.runs_here(zego));
        let _unknown = w.for_lane(other);
        assert!(!w.runs_here(other), "an app not configured here never runs here");
    }

    #[test]
    fn lanes_poll_at_the_configured_interval_until_a_listen_connection_is_up_then_every_second() {
        let app = AppKey::new(Vendor::Zego, 1);
        let w = Wakers::new([app], Duration::from_millis(250));
        let lane = w.for_lane(app);
        assert_eq!(lane.tick(), Duration::from_millis(250));
        assert!(lane.poll_due(Duration::from_millis(200)), "no LISTEN: every tick looks");
        w.listening.store(true, Ordering::Relaxed);
        assert!(!lane.poll_due(Duration::from_millis(500)));
        assert!(lane.poll_due(Duration::from_millis(900)), "a tick short of a second, with slack");
        let slow = Wakers::new([app], Duration::from_secs(5));
        assert_eq!(slow.for_lane(app).tick(), POLL_WHILE_LISTENING, "never slower than a second while listening");
    }

    trait Ready {
        fn now_or_never_is_ready(self) -> bool;
    }

    impl<F: std::future::Future> Ready for F {
        fn now_or_never_is_ready(self) -> bool {
            futures_util::FutureExt::now_or_never(self).is_some()
        }
    }
}
