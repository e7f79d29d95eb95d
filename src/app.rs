//! An app of an owned quota group, as its lane and its call tasks share it: the vendor client, the
//! quotas its calls count against, whether the vendor accepts its credentials, the lease that
//! allows calling at all, and where results go.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::audit::results::KickOutcome;
use crate::audit::writer::{AuditMsg, AuditSink, Settled};
use crate::batch::Target;
use crate::lease::Lease;
use crate::quota::Quota;
use crate::retry::RetrySchedule;
use crate::vendor_api::Client;
use crate::vendors::{Api, QuotaPlan, Vendor};

/// Longest pause after repeated configuration failures (bad secret, no permission).
const MAX_CONFIG_PAUSE: Duration = Duration::from_secs(60);

/// What `/metrics` reads about one lane. Every field is safe to read from any task.
pub struct LaneStats {
    pub vendor: Vendor,
    pub app_id: u32,
    /// Users waiting in room batches.
    pub waiting_users: AtomicUsize,
    /// Users inside a call.
    pub calling_users: AtomicUsize,
    /// Calls started and not yet answered.
    pub calls_in_flight: AtomicUsize,
    /// Chunks handed to a call task that has not yet been charged for its first call. The lane
    /// cuts the next chunk only when this is 0, so chunks are cut when the quota lets a call
    /// leave — not queued behind each other in the limiter, where a re-kick would wait its turn.
    pub awaiting_quota: AtomicUsize,
    /// Rooms with users waiting.
    pub open_rooms: AtomicUsize,
}

impl LaneStats {
    pub fn new(vendor: Vendor, app_id: u32) -> LaneStats {
        LaneStats {
            vendor,
            app_id,
            waiting_users: AtomicUsize::new(0),
            calling_users: AtomicUsize::new(0),
            calls_in_flight: AtomicUsize::new(0),
            awaiting_quota: AtomicUsize::new(0),
            open_rooms: AtomicUsize::new(0),
        }
    }

    pub fn pending_users(&self) -> usize {
        self.waiting_users.load(Ordering::Relaxed) + self.calling_users.load(Ordering::Relaxed)
    }
}

/// Whether the vendor currently accepts this app's credentials.
#[derive(Default)]
pub struct AppHealth {
    /// Configuration failures in a row; sets the pause length.
    config_failures: AtomicU32,
    /// No call starts before this instant (after a configuration failure).
    paused_until: Mutex<Option<Instant>>,
}

impl AppHealth {
    pub fn paused_until(&self) -> Option<Instant> {
        let p = *self.paused_until.lock().unwrap_or_else(|e| e.into_inner());
        p.filter(|t| *t > Instant::now())
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
    pub fn config_ok(&self, vendor: Vendor, app_id: u32) {
        if self.config_failures.swap(0, Ordering::Relaxed) > 0 {
            *self.paused_until.lock().unwrap_or_else(|e| e.into_inner()) = None;
            tracing::info!(vendor = %vendor, app_id, "vendor accepts our credentials again; sending resumed");
        }
    }
}

/// Everything a lane and its call tasks share about one app.
pub struct LaneCtx {
    pub client: Client,
    pub stats: Arc<LaneStats>,
    pub health: AppHealth,
    /// The quotas its calls count against, by vendor API.
    pub quotas: Arc<Quotas>,
    pub retry: RetrySchedule,
    pub audit: AuditSink,
    /// Where the audit writer reports this lane's kicks as recorded.
    pub settled: Settled,
    pub lease: Arc<Lease>,
    /// Cancelled when this process stops owning the quota group, or shuts down: no new calls.
    pub cancel: CancellationToken,
    /// Cancelled when calls still in flight must be given up: the lease was lost, or a handover's
    /// drain is over. Every call has ended before the lease is released (see `quota`).
    pub abandon: CancellationToken,
    /// The runtime vendor calls run on.
    pub calls: tokio::runtime::Handle,
    /// Woken whenever a call of this app ends (a lane at its cap of calls in flight waits for it).
    pub call_done: tokio::sync::Notify,
}

impl LaneCtx {
    /// The vendor API a target is called through, if the vendor has one for it.
    pub fn api_for(&self, target: &Target) -> Option<&'static Api> {
        self.client.vendor().facts().api(target.action, target.room.is_numeric())
    }

    /// The quota a call for `target` spends, if the vendor has an API for it.
    pub fn quota_for(&self, target: &Target) -> Option<&Arc<Quota>> {
        self.quotas.get(self.api_for(target)?.name)
    }

    /// Whether a call may start now: this process still owns the quota and is not stopping it.
    pub fn may_call(&self) -> bool {
        !self.cancel.is_cancelled() && self.lease.is_valid()
    }

    /// Hands kick changes to the audit writer.
    pub async fn record(&self, outcomes: Vec<KickOutcome>) {
        if outcomes.is_empty() {
            return;
        }
        let msg = AuditMsg::Outcomes { app_id: self.stats.app_id, outcomes, settled: self.settled.clone() };
        self.audit.send(msg).await;
    }
}

/// The quotas of one owned group, by vendor API, laid out by the vendor's quota plan: one quota for
/// every API of an app (ZEGO), or one per API shared by every app of a credential (TRTC).
pub struct Quotas {
    by_api: HashMap<&'static str, Arc<Quota>>,
}

impl Quotas {
    pub fn for_vendor(vendor: Vendor, make: impl Fn() -> Quota) -> Quotas {
        let facts = vendor.facts();
        let by_api = match facts.quota_plan {
            QuotaPlan::PerApp => {
                let q = Arc::new(make());
                facts.apis.iter().map(|a| (a.name, q.clone())).collect()
            }
            QuotaPlan::PerCredentialAndApi => facts.apis.iter().map(|a| (a.name, Arc::new(make()))).collect(),
        };
        Quotas { by_api }
    }

    pub fn get(&self, api: &str) -> Option<&Arc<Quota>> {
        self.by_api.get(api)
    }
}

/// Why a kick failed at its deadline, in the audit trail's words.
pub fn deadline_message(retry: &RetrySchedule, attempts: i32, last_error: Option<&str>) -> String {
    format!(
        "gave up at the {}s deadline after {attempts} attempt(s); last error: {}",
        retry.deadline.as_secs(),
        last_error.unwrap_or("none")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_configuration_failures_pause_longer_and_a_success_resumes() {
        let h = AppHealth::default();
        assert_eq!(h.config_failure(), Duration::from_secs(1));
        assert!(h.paused_until().is_some());
        assert_eq!(h.config_failure(), Duration::from_secs(2));
        h.config_ok(Vendor::Zego, 1);
        assert!(h.paused_until().is_none());
        for _ in 0..10 {
            h.config_failure();
        }
        assert_eq!(h.config_failure(), MAX_CONFIG_PAUSE);
    }

    #[test]
    fn quotas_follow_the_vendor_quota_plan() {
        let make = || Quota::new(10, Duration::ZERO, Instant::now());
        let zego = Quotas::for_vendor(Vendor::Zego, make);
        assert!(zego.get("KickoutUser").is_some());
        let trtc = Quotas::for_vendor(Vendor::Trtc, make);
        let (n, t) = (trtc.get("RemoveUser").unwrap(), trtc.get("RemoveUserByStrRoomId").unwrap());
        assert!(!Arc::ptr_eq(n, t), "TRTC: one quota per API");
        assert!(trtc.get("KickoutUser").is_none());
    }

    #[test]
    fn the_deadline_message_names_the_attempts_and_the_last_error() {
        let r = RetrySchedule {
            initial: Duration::from_millis(1),
            max_interval: Duration::from_millis(2),
            deadline: Duration::from_secs(3),
        };
        assert_eq!(
            deadline_message(&r, 4, Some("timeout")),
            "gave up at the 3s deadline after 4 attempt(s); last error: timeout"
        );
    }
}
