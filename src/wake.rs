//! Telling the owner of a quota that new work is due, promptly: in-process when intake runs in
//! the owner's own process, otherwise through PostgreSQL's LISTEN/NOTIFY (one notification per
//! intake transaction). Lanes also poll every second, so a lost notification only costs latency.
//!
//! A notification's payload is `<worker id>|<vendor>:<app id>,…`, or `<worker id>|*` when the list
//! would not fit PostgreSQL's 8000-byte payload limit (every lane then looks).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::audit::intake::{WORK_CHANNEL, wake_payload};
use crate::audit::leases::OWNERS_CHANNEL;
use crate::verdict::Vendor;

/// One wake-up per configured app, shared by intake, the listener and the app's lane (whichever
/// incarnation of it runs now), plus one for the elector.
pub struct Wakers {
    apps: HashMap<(Vendor, u32), Arc<Notify>>,
    /// Woken when a lease is released somewhere, so contenders look at once.
    pub owners: Arc<Notify>,
}

impl Wakers {
    pub fn new(apps: impl IntoIterator<Item = (Vendor, u32)>) -> Wakers {
        Wakers { apps: apps.into_iter().map(|k| (k, Arc::new(Notify::new()))).collect(), owners: Arc::default() }
    }

    pub fn get(&self, vendor: Vendor, app_id: u32) -> Option<Arc<Notify>> {
        self.apps.get(&(vendor, app_id)).cloned()
    }

    /// Wakes the app's lane if it runs here (or the next one to start).
    pub fn wake(&self, vendor: Vendor, app_id: u32) {
        if let Some(n) = self.apps.get(&(vendor, app_id)) {
            n.notify_one();
        }
    }

    fn wake_all(&self) {
        self.apps.values().for_each(|n| n.notify_one());
    }

    /// Acts on a notification from another process.
    fn on_work(&self, me: &str, payload: &str) {
        let Some((from, apps)) = payload.split_once('|') else { return };
        if from == me {
            return; // intake in this process already woke its lanes
        }
        if apps == "*" {
            return self.wake_all();
        }
        for app in apps.split(',') {
            if let Some((vendor, id)) = app.split_once(':')
                && let (Some(vendor), Ok(id)) = (Vendor::parse(vendor), id.parse::<u32>())
            {
                self.wake(vendor, id);
            }
        }
    }
}

/// The payload announcing new work for `apps`.
pub fn payload(me: &str, apps: &BTreeSet<(Vendor, u32)>) -> String {
    let list: Vec<String> = apps.iter().map(|(v, id)| format!("{v}:{id}")).collect();
    wake_payload(me, list.iter().map(String::as_str))
}

/// Listens until `shutdown`, reconnecting after errors (PgListener resubscribes by itself).
pub async fn listen(pool: PgPool, wakers: Arc<Wakers>, me: String, shutdown: CancellationToken) {
    let mut wait = Duration::from_millis(200);
    'connect: loop {
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "cannot LISTEN for new work; lanes poll meanwhile");
                tokio::select! {
                    () = tokio::time::sleep(wait) => {},
                    () = shutdown.cancelled() => return,
                }
                wait = (wait * 2).min(Duration::from_secs(5));
                continue 'connect;
            }
        };
        if let Err(e) = listener.listen_all([WORK_CHANNEL, OWNERS_CHANNEL]).await {
            tracing::warn!(error = %e, "cannot LISTEN for new work; lanes poll meanwhile");
            continue 'connect;
        }
        wait = Duration::from_millis(200);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                n = listener.recv() => match n {
                    Ok(n) if n.channel() == WORK_CHANNEL => wakers.on_work(&me, n.payload()),
                    Ok(_) => wakers.owners.notify_one(),
                    Err(e) => {
                        tracing::warn!(error = %e, "LISTEN connection lost; lanes poll until it is back");
                        tokio::select! {
                            () = tokio::time::sleep(wait) => {},
                            () = shutdown.cancelled() => return,
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

    #[test]
    fn a_payload_lists_the_apps_or_says_everyone() {
        let apps: BTreeSet<(Vendor, u32)> = [(Vendor::Zego, 1), (Vendor::Trtc, 2)].into();
        assert_eq!(payload("w1", &apps), "w1|zego:1,trtc:2");
        let many: BTreeSet<(Vendor, u32)> = (0..2000).map(|i| (Vendor::Zego, 1_000_000 + i)).collect();
        assert_eq!(payload("w1", &many), "w1|*");
    }

    #[tokio::test]
    async fn a_notification_wakes_the_named_lanes_but_not_from_this_process() {
        let w = Wakers::new([(Vendor::Zego, 1), (Vendor::Trtc, 2)]);
        let (z, t) = (w.get(Vendor::Zego, 1).unwrap(), w.get(Vendor::Trtc, 2).unwrap());
        w.on_work("me", "me|zego:1");
        w.on_work("me", "other|trtc:2,zego:999,bogus");
        let woke = |n: &Arc<Notify>| n.notified().now_or_never_is_ready();
        assert!(!woke(&z), "own notifications are ignored");
        assert!(woke(&t));
        w.on_work("me", "other|*");
        assert!(woke(&z) && woke(&t));
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
