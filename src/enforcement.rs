//! Enforcement of the quota groups this replica owns: what each group is (its apps and quotas,
//! from the vendor registry's quota plans), and starting and stopping its lanes when the elector
//! announces a gain or a loss. The elector (`ownership`) only holds leases; this module is
//! where work starts and stops (as River's client starts work on its elector's word).
//!
//! Stopping a group never lets a call outlive the lease it was started under: calls in flight get
//! a short drain, then are given up (the next owner retries their kicks), and only then may the
//! lease be released (see `quota` for why).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::app::{AppHealth, LaneCtx, LaneStats, Quotas};
use crate::audit::Db;
use crate::audit::writer::AuditSink;
use crate::config::Config;
use crate::keys::AppKey;
use crate::lane::{self, LaneLimits};
use crate::lease::Lease;
use crate::quota::Quota;
use crate::retry::RetrySchedule;
use crate::rules::{self, RulesLane};
use crate::vendor_api::trtc::TrtcClient;
use crate::vendor_api::zego::ZegoClient;
use crate::vendor_api::{Client, QuotaKey};
use crate::vendors::{Vendor, ZEGO_DEL_FORBID_USER_RULE, ZEGO_SET_FORBID_USER_RULE};
use crate::wake::Wakers;

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
    /// Not a vendor quota: the outcome relay, which one replica at a time runs (so a verdict's
    /// events leave in order), handed out and taken over like a quota group.
    pub fn relay() -> QuotaGroup {
        QuotaGroup("outbox:relay".into())
    }
    /// Not a vendor quota either: audit maintenance (rollups folded, retention applied), run by one
    /// replica at a time ([`crate::maintenance`]).
    pub fn maintenance() -> QuotaGroup {
        QuotaGroup("audit:maintenance".into())
    }
    /// A vendor's quota (not the relay's or maintenance's lease): these are spread across replicas.
    pub fn is_vendor_quota(&self) -> bool {
        *self != QuotaGroup::relay() && *self != QuotaGroup::maintenance()
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
    let mut add = |group: QuotaGroup, vendor: Vendor, client: Client, rate: u32| {
        out.entry(group.clone())
            .or_insert_with(|| GroupApps { group, vendor, apps: Vec::new() })
            .apps
            .push((client, rate));
    };
    for z in &config.zego {
        add(QuotaGroup::zego(z.app_id), Vendor::Zego, Client::Zego(ZegoClient::new(z)), z.rate_per_second);
    }
    for t in &config.trtc {
        add(QuotaGroup::trtc(&t.secret_id), Vendor::Trtc, Client::Trtc(TrtcClient::new(t)), t.rate_per_second);
    }
    out.into_values().collect()
}

/// Everything a lane needs that does not change with ownership.
pub struct EnforceSettings {
    pub retry: RetrySchedule,
    pub linger: Duration,
    pub buffer_secs: f64,
    /// `pacing.jitter_ms`: how long an unanswered call may still reach the vendor.
    pub jitter: Duration,
    pub grace: Duration,
    /// Where vendor calls run (a runtime of their own, started by the worker).
    pub calls: tokio::runtime::Handle,
}

/// What `/metrics` and `/readyz` read about the lanes running now.
#[derive(Default)]
pub struct LaneView {
    pub lanes: Mutex<HashMap<AppKey, Arc<LaneStats>>>,
}

/// One group being enforced here.
struct Running {
    /// Stops the group's lanes and call tasks.
    cancel: CancellationToken,
    /// Gives up the group's calls in flight.
    abandon: CancellationToken,
    tracker: TaskTracker,
    apps: Vec<AppKey>,
}

/// A group whose lanes were stopped; its calls in flight may still be settling.
pub struct Stopped {
    abandon: CancellationToken,
    tracker: TaskTracker,
}

impl Stopped {
    /// Lets calls in flight finish within `drain`, then gives up those still out (their kicks are
    /// retried by the next owner) and waits for their tasks to record that.
    pub async fn wind_down(&self, drain: Duration) {
        if tokio::time::timeout(drain, self.tracker.wait()).await.is_ok() {
            return;
        }
        tracing::warn!(
            "calls still in flight after the drain are abandoned; their kicks are retried by the next owner"
        );
        self.abandon.cancel();
        if tokio::time::timeout(ABANDON_WAIT, self.tracker.wait()).await.is_err() {
            tracing::warn!("call tasks did not end after being abandoned");
        }
    }
}

/// What every group's lanes are started with, as the worker wires it.
pub struct Wiring {
    /// The main pool, for the lanes' fetches.
    pub pool: Db,
    pub groups: Vec<GroupApps>,
    pub settings: EnforceSettings,
    pub audit: AuditSink,
    pub wakers: Arc<Wakers>,
    pub view: Arc<LaneView>,
    /// The outcome relay's settings (`None`: `outcomes.enabled = false`).
    pub outcomes: Option<crate::outcomes::Outcomes>,
    /// `[retention]`, applied by whoever holds the maintenance lease.
    pub retention: crate::config::RetentionConfig,
}

/// The lanes of the groups this replica owns.
pub struct Enforcement {
    wiring: Wiring,
    running: BTreeMap<QuotaGroup, Running>,
}

impl Enforcement {
    pub fn new(wiring: Wiring) -> Enforcement {
        Enforcement { wiring, running: BTreeMap::new() }
    }

    /// The groups the configuration names.
    pub fn group_names(&self) -> Vec<QuotaGroup> {
        let relay = self.wiring.outcomes.as_ref().map(|_| QuotaGroup::relay());
        self.wiring.groups.iter().map(|g| g.group.clone()).chain(relay).chain([QuotaGroup::maintenance()]).collect()
    }

    /// `pacing.jitter_ms`, which a new owner waits on top of a window.
    pub fn jitter(&self) -> Duration {
        self.wiring.settings.jitter
    }

    /// How long a stopping replica lets its calls in flight finish.
    pub fn grace(&self) -> Duration {
        self.wiring.settings.grace
    }

    /// Writes every result handed to the audit writer so far.
    pub async fn flush(&self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), self.wiring.audit.flush()).await;
    }

    /// Starts the lanes of a group just acquired under `lease`; no call starts before
    /// `not_before`.
    pub fn start(&mut self, group: &QuotaGroup, lease: Arc<Lease>, not_before: Instant) {
        if *group == QuotaGroup::relay() {
            self.start_relay();
            return;
        }
        if *group == QuotaGroup::maintenance() {
            self.start_maintenance();
            return;
        }
        let Some(g) = self.wiring.groups.iter().find(|g| &g.group == group) else { return };
        let cancel = CancellationToken::new();
        let abandon = CancellationToken::new();
        let tracker = TaskTracker::new();
        let rate = g.apps.first().map(|(_, r)| *r).unwrap_or(1);
        let jitter = self.wiring.settings.jitter;
        // Shared by every app of the group, laid out by the registry's quota plan.
        let quotas = Arc::new(Quotas::for_vendor(g.vendor, || Quota::new(rate, jitter, not_before)));
        let mut apps = Vec::new();
        for (client, rate) in &g.apps {
            let app = AppKey::new(g.vendor, client.app_id());
            let stats = Arc::new(LaneStats::new(g.vendor, app.app_id));
            let (settled_tx, settled_rx) = mpsc::unbounded_channel();
            let ctx = Arc::new(LaneCtx {
                client: client.clone(),
                stats: stats.clone(),
                health: AppHealth::default(),
                quotas: quotas.clone(),
                retry: self.wiring.settings.retry.clone(),
                audit: self.wiring.audit.clone(),
                settled: settled_tx,
                lease: lease.clone(),
                cancel: cancel.clone(),
                abandon: abandon.clone(),
                calls: self.wiring.settings.calls.clone(),
                call_done: tokio::sync::Notify::new(),
            });
            let limits =
                LaneLimits::for_app(client, *rate, self.wiring.settings.linger, self.wiring.settings.buffer_secs);
            let wake = self.wiring.wakers.for_lane(app);
            tracker.spawn(lane::run(ctx, self.wiring.pool.clone(), wake, settled_rx, limits, tracker.clone()));
            if let Client::Zego(z) = client
                && z.forbid_rules()
            {
                // Ban rules at quotas of their own: they never slow the kicks.
                let rule_quota = |rate| Arc::new(Quota::new(rate, jitter, not_before));
                tracker.spawn(rules::run(RulesLane {
                    client: z.clone(),
                    db: self.wiring.pool.clone(),
                    set_quota: rule_quota(ZEGO_SET_FORBID_USER_RULE.max_calls_per_second),
                    del_quota: rule_quota(ZEGO_DEL_FORBID_USER_RULE.max_calls_per_second),
                    lease: lease.clone(),
                    cancel: cancel.clone(),
                    abandon: abandon.clone(),
                }));
            }
            self.wiring.view.lanes.lock().unwrap_or_else(|e| e.into_inner()).insert(app, stats);
            apps.push(app);
        }
        self.running.insert(group.clone(), Running { cancel, abandon, tracker, apps });
    }

    /// Starts the outcome relay (its lease was just acquired).
    fn start_relay(&mut self) {
        let Some(settings) = self.wiring.outcomes.clone() else { return };
        let cancel = CancellationToken::new();
        let tracker = TaskTracker::new();
        tracker.spawn(crate::outcomes::relay::run(self.wiring.pool.clone(), settings, cancel.clone()));
        let running = Running { cancel, abandon: CancellationToken::new(), tracker, apps: Vec::new() };
        self.running.insert(QuotaGroup::relay(), running);
    }

    /// Starts audit maintenance (its lease was just acquired).
    fn start_maintenance(&mut self) {
        let cancel = CancellationToken::new();
        let tracker = TaskTracker::new();
        tracker.spawn(crate::maintenance::run(self.wiring.pool.clone(), self.wiring.retention.clone(), cancel.clone()));
        let running = Running { cancel, abandon: CancellationToken::new(), tracker, apps: Vec::new() };
        self.running.insert(QuotaGroup::maintenance(), running);
    }

    /// Stops a group's lanes: no new calls. A lost lease also gives up its calls in flight at once;
    /// a released one lets them wind down first ([`Stopped::wind_down`]).
    pub fn stop(&mut self, group: &QuotaGroup, lost: bool) -> Option<Stopped> {
        let r = self.running.remove(group)?;
        r.cancel.cancel();
        if lost {
            r.abandon.cancel();
        }
        r.tracker.close();
        let mut lanes = self.wiring.view.lanes.lock().unwrap_or_else(|e| e.into_inner());
        for app in &r.apps {
            lanes.remove(app);
        }
        Some(Stopped { abandon: r.abandon, tracker: r.tracker })
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
