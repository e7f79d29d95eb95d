//! The elector: exactly one replica at a time enforces each vendor quota group — a ZEGO AppID, or
//! a TRTC SecretId with every app that uses it and both its actions.
//!
//! Ownership is a lease row in `quota_owners` (term, expiry), renewed every heartbeat by its owner
//! and taken by anyone once it has expired. Why lease rows and not session advisory locks: a lock
//! lives and dies with one connection, and a connection can drop (or sit behind a pooler) while the
//! process that holds the lock keeps calling — GoodJob lost locks that way (good_job#989) and Oban
//! kept stale leadership behind a pooler (oban#1488). A lease carries its own expiry in the
//! database's clock, works through any pooler, and the owner stops by itself:
//!
//! - **never two callers**: the owner stops starting calls at `(send time of its last confirmed
//!   renewal) + TTL − margin`, which is before the database lets anyone take over; the new owner's
//!   first call waits until one vendor window plus the jitter allowance after the last moment the
//!   previous owner could have started one (`previous_expires_at`);
//! - **takeover**: an owner killed outright is replaced within TTL (3 s) + one heartbeat + the
//!   window; one that stops (SIGTERM, or handing over) releases its leases at once and announces it;
//! - **spread**: each replica keeps about `ceil(groups / live replicas)` groups, handing surplus over
//!   gracefully when another replica joins (River's elector and Oban's peers work alike).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::app::{AppHealth, LaneCtx, LaneStats};
use crate::audit::leases;
use crate::audit::writer::AuditSink;
use crate::config::{Config, OwnershipConfig};
use crate::lane::{self, LaneLimits};
use crate::lease::Lease;
use crate::quota::{Quota, WINDOW};
use crate::retry::RetrySchedule;
use crate::vendor_api::trtc::TrtcClient;
use crate::vendor_api::zego::ZegoClient;
use crate::vendor_api::{Client, QuotaKey};
use crate::verdict::Vendor;
use crate::wake::Wakers;

/// Renewals stop counting this long before the database's expiry, for clock-rate drift.
const SAFETY_MARGIN: Duration = Duration::from_millis(200);
/// A replica handing a group over waits at most this long for its calls in flight first.
const HANDOVER_DRAIN: Duration = Duration::from_millis(500);
/// How long abandoned call tasks get to record that they were given up.
const ABANDON_WAIT: Duration = Duration::from_secs(1);

/// A vendor quota group's name in `quota_owners`: `zego:<AppId>` or `trtc:<SecretId>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QuotaGroup(String);

impl QuotaGroup {
    pub fn zego(app_id: u32) -> QuotaGroup {
        QuotaGroup(QuotaKey::zego_group(app_id))
    }
    pub fn trtc(secret_id: &str) -> QuotaGroup {
        QuotaGroup(QuotaKey::trtc_group(secret_id))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A group and the apps whose calls count against it.
pub struct GroupApps {
    pub group: QuotaGroup,
    pub vendor: Vendor,
    /// Each app with its configured rate (apps of one TRTC SecretId share one rate).
    pub apps: Vec<(Client, u32)>,
}

/// Every quota group the configuration names, in a stable order.
pub fn groups(config: &Config) -> Vec<GroupApps> {
    let mut out: BTreeMap<QuotaGroup, GroupApps> = BTreeMap::new();
    for z in &config.zego {
        let group = QuotaGroup::zego(z.app_id);
        out.insert(
            group.clone(),
            GroupApps {
                group,
                vendor: Vendor::Zego,
                apps: vec![(Client::Zego(ZegoClient::new(z)), z.rate_per_second)],
            },
        );
    }
    for t in &config.trtc {
        let group = QuotaGroup::trtc(&t.secret_id);
        out.entry(group.clone())
            .or_insert_with(|| GroupApps { group, vendor: Vendor::Trtc, apps: Vec::new() })
            .apps
            .push((Client::Trtc(TrtcClient::new(t)), t.rate_per_second));
    }
    out.into_values().collect()
}

/// What `/metrics`, `/readyz` and shutdown read about this replica's ownership.
#[derive(Default)]
pub struct OwnershipView {
    pub owned_groups: AtomicUsize,
    pub live_workers: AtomicUsize,
    /// Lanes running now, by app.
    pub lanes: Mutex<HashMap<(Vendor, u32), Arc<LaneStats>>>,
}

/// Everything a lane needs that does not change with ownership.
pub struct EnforceSettings {
    pub retry: RetrySchedule,
    pub linger: Duration,
    pub buffer_secs: f64,
    pub jitter: Duration,
    pub grace: Duration,
    /// Where vendor calls run (see [`crate::worker`]).
    pub calls: tokio::runtime::Handle,
}

/// One group this process owns now.
struct Owned {
    lease: Arc<Lease>,
    /// Stops the group's lanes and call tasks.
    cancel: CancellationToken,
    /// Gives up the group's calls in flight.
    abandon: CancellationToken,
    tracker: TaskTracker,
    apps: Vec<(Vendor, u32)>,
}

pub struct Elector {
    /// The main pool, for the lanes.
    pub pool: PgPool,
    /// The elector's own connections (leases must not wait behind enforcement traffic).
    pub leases: PgPool,
    pub me: String,
    pub hostname: String,
    pub ownership: OwnershipConfig,
    pub groups: Vec<GroupApps>,
    pub enforce: EnforceSettings,
    pub audit: AuditSink,
    pub wakers: Arc<Wakers>,
    pub view: Arc<OwnershipView>,
    owned: BTreeMap<QuotaGroup, Owned>,
}

impl Elector {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        pool: PgPool,
        leases: PgPool,
        me: String,
        hostname: String,
        ownership: OwnershipConfig,
        groups: Vec<GroupApps>,
        enforce: EnforceSettings,
        audit: AuditSink,
        wakers: Arc<Wakers>,
        view: Arc<OwnershipView>,
    ) -> Elector {
        Elector { pool, leases, me, hostname, ownership, groups, enforce, audit, wakers, view, owned: BTreeMap::new() }
    }

    /// Runs rounds until `shutdown`, then hands every group over and leaves.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(self.ownership.heartbeat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let owners = self.wakers.owners.clone();
        // The first round only registers: replicas started together then see each other before
        // anyone takes more than its share.
        let mut registered = false;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = tick.tick() => {},
                () = owners.notified() => {},
            }
            if registered {
                self.round().await;
            } else {
                // Registration is a renewal of no leases.
                let hello = leases::renew(
                    &self.leases,
                    &self.me,
                    &self.hostname,
                    std::process::id(),
                    &[],
                    self.ownership.lease,
                );
                registered = matches!(tokio::time::timeout(self.budget(), hello).await, Ok(Ok(_)));
            }
        }
        self.leave().await;
    }

    /// How long one database call of the elector may take: a third of the lease, so a slow
    /// database costs a renewal, not the lease.
    fn budget(&self) -> Duration {
        self.ownership.lease / 3
    }

    fn lease_until(&self, sent: Instant) -> Instant {
        sent + self.ownership.lease.saturating_sub(SAFETY_MARGIN)
    }

    /// One heartbeat: drop what ran out, renew, then take or hand over groups toward a fair share.
    async fn round(&mut self) {
        let lapsed: Vec<QuotaGroup> =
            self.owned.iter().filter(|(_, o)| !o.lease.is_valid()).map(|(g, _)| g.clone()).collect();
        for g in lapsed {
            tracing::error!(quota_group = %g.as_str(), "could not confirm ownership in time: stopped calling this quota");
            self.drop_group(&g, "lost");
        }
        let sent = Instant::now();
        let budget = self.budget();
        let pid = std::process::id();
        let mine: Vec<String> = self.owned.keys().map(|g| g.as_str().to_owned()).collect();
        let renewed = leases::renew(&self.leases, &self.me, &self.hostname, pid, &mine, self.ownership.lease);
        let (live, kept) = match tokio::time::timeout(budget, renewed).await {
            Ok(Ok((n, kept))) => (usize::try_from(n).unwrap_or(1).max(1), kept),
            Ok(Err(e)) => {
                metrics::counter!("bouncer_database_errors_total", "op" => "heartbeat").increment(1);
                tracing::warn!(error = %e, "heartbeat failed; leases run out unless confirmed in time");
                return;
            }
            Err(_) => {
                tracing::warn!(
                    budget_ms = budget.as_millis() as u64,
                    "heartbeat timed out; leases run out unless confirmed in time"
                );
                return;
            }
        };
        self.view.live_workers.store(live, Ordering::Relaxed);
        let until = self.lease_until(sent);
        let lost: Vec<QuotaGroup> =
            self.owned.keys().filter(|g| !kept.iter().any(|k| k == g.as_str())).cloned().collect();
        for o in self.owned.values() {
            o.lease.extend_to(until);
        }
        for g in lost {
            tracing::error!(quota_group = %g.as_str(), "lease taken over: stopped calling this quota");
            self.drop_group(&g, "lost");
        }

        let share = self.groups.len().div_ceil(live);
        if self.owned.len() > share {
            // Hand the newest surplus over; others pick it up at once (NOTIFY).
            let surplus: Vec<QuotaGroup> = self.owned.keys().rev().take(self.owned.len() - share).cloned().collect();
            for g in surplus {
                self.hand_over(&g, HANDOVER_DRAIN).await;
            }
        } else if self.owned.len() < share {
            let candidates: Vec<String> = self
                .groups
                .iter()
                .filter(|g| !self.owned.contains_key(&g.group))
                .map(|g| g.group.as_str().to_owned())
                .collect();
            let free = match tokio::time::timeout(budget, leases::free_groups(&self.leases, &candidates)).await {
                Ok(Ok(f)) => f,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "cannot read leases");
                    return;
                }
                Err(_) => return,
            };
            for key in free.into_iter().take(share - self.owned.len()) {
                self.try_acquire(&key).await;
            }
        }
        self.view.owned_groups.store(self.owned.len(), Ordering::Relaxed);
    }

    async fn try_acquire(&mut self, key: &str) {
        let sent = Instant::now();
        let wait_after = WINDOW + self.enforce.jitter;
        let acquire = leases::acquire(&self.leases, &self.me, key, self.ownership.lease, wait_after);
        let acquired = match tokio::time::timeout(self.budget(), acquire).await {
            Ok(Ok(Some(a))) => a,
            Ok(Ok(None)) => return, // someone else was quicker
            Ok(Err(e)) => {
                tracing::warn!(quota_group = %key, error = %e, "cannot take a lease");
                return;
            }
            // It may have been taken for us: then it runs out unrenewed, and is free again.
            Err(_) => return,
        };
        let Some(idx) = self.groups.iter().position(|g| g.group.as_str() == key) else { return };
        let not_before = Instant::now() + acquired.first_call_in;
        let lease = Arc::new(Lease::new(acquired.term, self.lease_until(sent)));
        let owned = self.start(idx, lease, not_before);
        tracing::info!(
            quota_group = %key, term = acquired.term, first_call_in_ms = acquired.first_call_in.as_millis() as u64,
            "now enforcing this quota"
        );
        metrics::counter!("bouncer_ownership_changes_total", "change" => "acquired").increment(1);
        self.owned.insert(self.groups[idx].group.clone(), owned);
    }

    /// Starts the lanes of a group just acquired.
    fn start(&self, idx: usize, lease: Arc<Lease>, not_before: Instant) -> Owned {
        let g = &self.groups[idx];
        let cancel = CancellationToken::new();
        let abandon = CancellationToken::new();
        let tracker = TaskTracker::new();
        let rate = g.apps.first().map(|(_, r)| *r).unwrap_or(1);
        // ZEGO: one quota per AppID. TRTC: one per action, shared by every app of the SecretId.
        let (numeric, text) = match g.vendor {
            Vendor::Zego => {
                let q = Arc::new(Quota::new(rate, self.enforce.jitter, not_before));
                (q.clone(), q)
            }
            Vendor::Trtc => (
                Arc::new(Quota::new(rate, self.enforce.jitter, not_before)),
                Arc::new(Quota::new(rate, self.enforce.jitter, not_before)),
            ),
        };
        let mut apps = Vec::new();
        for (client, rate) in &g.apps {
            let app_id = client.app_id();
            let stats = Arc::new(LaneStats::new(g.vendor, app_id));
            let (settled_tx, settled_rx) = mpsc::unbounded_channel();
            let ctx = Arc::new(LaneCtx {
                client: client.clone(),
                stats: stats.clone(),
                health: AppHealth::default(),
                quota_numeric: numeric.clone(),
                quota_text: text.clone(),
                retry: self.enforce.retry.clone(),
                audit: self.audit.clone(),
                settled: settled_tx,
                lease: lease.clone(),
                cancel: cancel.clone(),
                abandon: abandon.clone(),
                calls: self.enforce.calls.clone(),
                call_done: tokio::sync::Notify::new(),
            });
            let limits = LaneLimits::for_app(client, *rate, self.enforce.linger, self.enforce.buffer_secs);
            let wake = self.wakers.get(g.vendor, app_id).unwrap_or_default();
            tracker.spawn(lane::run(ctx, self.pool.clone(), wake, settled_rx, limits, tracker.clone()));
            self.view.lanes.lock().unwrap_or_else(|e| e.into_inner()).insert((g.vendor, app_id), stats);
            apps.push((g.vendor, app_id));
        }
        Owned { lease, cancel, abandon, tracker, apps }
    }

    /// Stops a group's lanes without telling the database (the lease is gone or going anyway).
    /// A lost lease also gives up its calls in flight at once; a released one lets them finish
    /// first (see [`Elector::hand_over`]).
    fn drop_group(&mut self, g: &QuotaGroup, change: &'static str) -> Option<Owned> {
        let o = self.owned.remove(g)?;
        o.lease.revoke();
        o.cancel.cancel();
        if change == "lost" {
            o.abandon.cancel();
        }
        o.tracker.close();
        let mut lanes = self.view.lanes.lock().unwrap_or_else(|e| e.into_inner());
        for app in &o.apps {
            lanes.remove(app);
        }
        metrics::counter!("bouncer_ownership_changes_total", "change" => change).increment(1);
        Some(o)
    }

    /// Stops calling, lets calls in flight finish (up to `drain`), gives up those still out,
    /// lets their results be written, then ends the lease so another replica can start after one
    /// vendor window (plus the allowance).
    async fn hand_over(&mut self, g: &QuotaGroup, drain: Duration) {
        let Some(o) = self.drop_group(g, "released") else { return };
        settle_calls(&o, drain).await;
        let _ = tokio::time::timeout(Duration::from_secs(2), self.audit.flush()).await;
        self.release(g, o.lease.term).await;
        self.view.owned_groups.store(self.owned.len(), Ordering::Relaxed);
    }

    /// Ends this replica's lease on `g` now and tells contenders.
    async fn release(&self, g: &QuotaGroup, term: i64) {
        match tokio::time::timeout(self.budget(), leases::release(&self.leases, &self.me, g.as_str(), term)).await {
            Ok(Ok(())) => tracing::info!(quota_group = %g.as_str(), "handed this quota over"),
            Ok(Err(e)) => {
                tracing::warn!(quota_group = %g.as_str(), error = %e, "could not release the lease; it runs out by itself")
            }
            Err(_) => tracing::warn!(quota_group = %g.as_str(), "releasing the lease timed out; it runs out by itself"),
        }
    }

    /// Shutdown: hand everything over, wait out calls in flight within the grace period, leave.
    async fn leave(&mut self) {
        let groups: Vec<QuotaGroup> = self.owned.keys().cloned().collect();
        let mut stopped = Vec::new();
        for g in &groups {
            if let Some(o) = self.drop_group(g, "released") {
                stopped.push((g.clone(), o));
            }
        }
        // Calls in flight usually end within milliseconds; a hung vendor must not delay takeover,
        // and no call may outlive the lease (the next owner counts on it).
        let drain = HANDOVER_DRAIN.min(self.enforce.grace);
        let started = Instant::now();
        for (_, o) in &stopped {
            settle_calls(o, drain.saturating_sub(started.elapsed())).await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), self.audit.flush()).await;
        for (g, o) in &stopped {
            self.release(g, o.lease.term).await;
        }
        let _ = tokio::time::timeout(self.budget(), leases::leave(&self.leases, &self.me)).await;
        tracing::info!(groups = stopped.len(), "left: every quota handed over");
        self.view.owned_groups.store(0, Ordering::Relaxed);
    }
}

/// Lets a stopped group's calls in flight finish within `drain`, then gives up those still out
/// (their kicks are retried by the next owner) and waits for their tasks to record that.
async fn settle_calls(o: &Owned, drain: Duration) {
    if tokio::time::timeout(drain, o.tracker.wait()).await.is_ok() {
        return;
    }
    tracing::warn!("calls still in flight after the drain are abandoned; their kicks are retried by the next owner");
    o.abandon.cancel();
    if tokio::time::timeout(ABANDON_WAIT, o.tracker.wait()).await.is_err() {
        tracing::warn!("call tasks did not end after being abandoned");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trtc_apps_sharing_a_secret_id_form_one_group_and_each_zego_app_its_own() {
        let c = Config::from_toml(
            "[[zego]]\napp_id = 1\nserver_secret = \"s\"\n[[zego]]\napp_id = 2\nserver_secret = \"s\"\n\
             [[trtc]]\nsdk_app_id = 10\nsecret_id = \"AKID1\"\nsecret_key = \"k\"\nregion = \"ap-guangzhou\"\n\
             [[trtc]]\nsdk_app_id = 11\nsecret_id = \"AKID1\"\nsecret_key = \"k\"\nregion = \"ap-beijing\"\n\
             [[trtc]]\nsdk_app_id = 12\nsecret_id = \"AKID2\"\nsecret_key = \"k\"\nregion = \"ap-guangzhou\"\n",
        )
        .unwrap();
        let g = groups(&c);
        let names: Vec<(&str, usize)> = g.iter().map(|g| (g.group.as_str(), g.apps.len())).collect();
        assert_eq!(names, [("trtc:AKID1", 2), ("trtc:AKID2", 1), ("zego:1", 1), ("zego:2", 1)]);
    }
}
