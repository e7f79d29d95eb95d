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
//!
//! The elector only announces: it tells [`Enforcement`] to start a group it gained and to stop one
//! it lost or hands over, and releases a lease only once the group's calls have wound down.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::audit::{Db, leases};
use crate::config::OwnershipConfig;
use crate::enforcement::{Enforcement, LaneView, QuotaGroup};
use crate::lease::Lease;
use crate::quota::WINDOW;

/// Renewals stop counting this long before the database's expiry, for clock-rate drift.
const SAFETY_MARGIN: Duration = Duration::from_millis(200);
/// A replica handing a group over waits at most this long for its calls in flight first.
const HANDOVER_DRAIN: Duration = Duration::from_millis(500);

/// What `/metrics`, `/readyz` and shutdown read about this replica's ownership.
#[derive(Default)]
pub struct OwnershipView {
    pub owned_groups: AtomicUsize,
    pub live_workers: AtomicUsize,
    /// Lanes running now, by app.
    pub lanes: Arc<LaneView>,
}

/// Who this replica is, in `workers` and `quota_owners`.
pub struct Identity {
    pub worker_id: String,
    pub hostname: String,
}

pub struct Elector {
    /// The elector's own connections (leases must not wait behind enforcement traffic).
    leases: Db,
    me: Identity,
    ownership: OwnershipConfig,
    groups: Vec<QuotaGroup>,
    enforcement: Enforcement,
    /// Woken when a lease is released somewhere.
    owners_changed: Arc<tokio::sync::Notify>,
    view: Arc<OwnershipView>,
    owned: BTreeMap<QuotaGroup, Arc<Lease>>,
}

impl Elector {
    pub fn new(
        leases: Db,
        me: Identity,
        ownership: OwnershipConfig,
        enforcement: Enforcement,
        owners_changed: Arc<tokio::sync::Notify>,
        view: Arc<OwnershipView>,
    ) -> Elector {
        let groups = enforcement.group_names();
        Elector { leases, me, ownership, groups, enforcement, owners_changed, view, owned: BTreeMap::new() }
    }

    /// Runs rounds until `shutdown`, then hands every group over and leaves.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(self.ownership.heartbeat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let owners = self.owners_changed.clone();
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
                    &self.me.worker_id,
                    &self.me.hostname,
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
            self.owned.iter().filter(|(_, l)| !l.is_valid()).map(|(g, _)| g.clone()).collect();
        self.lose_ran_out(lapsed);
        let sent = Instant::now();
        let budget = self.budget();
        let mine: Vec<String> = self.owned.keys().map(|g| g.as_str().to_owned()).collect();
        let renewed = leases::renew(
            &self.leases,
            &self.me.worker_id,
            &self.me.hostname,
            std::process::id(),
            &mine,
            self.ownership.lease,
        );
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
        // A lease that ran out while the renewal was on its way is not brought back (see
        // `Lease::extend_to`): its lanes may have stopped, so the group is dropped here and taken
        // afresh once the database shows it free.
        let ran_out: Vec<QuotaGroup> =
            self.owned.iter().filter(|(_, lease)| !lease.extend_to(until)).map(|(g, _)| g.clone()).collect();
        self.lose_ran_out(ran_out);
        let lost: Vec<QuotaGroup> =
            self.owned.keys().filter(|g| !kept.iter().any(|k| k == g.as_str())).cloned().collect();
        for g in lost {
            tracing::error!(quota_group = %g.as_str(), "lease taken over: stopped calling this quota");
            self.lose(&g);
        }

        // Shares count vendor quota groups only. The outcome relay and audit maintenance are not
        // spread: whoever finds one free takes it (one wins the lease), and it moves only when its
        // holder stops or dies.
        let quota_groups = self.groups.iter().filter(|g| g.is_vendor_quota()).count();
        let owned_quotas = self.owned.keys().filter(|g| g.is_vendor_quota()).count();
        let share = quota_groups.div_ceil(live);
        if owned_quotas > share {
            // Hand the newest surplus over; others pick it up at once (NOTIFY).
            let surplus: Vec<QuotaGroup> =
                self.owned.keys().filter(|g| g.is_vendor_quota()).rev().take(owned_quotas - share).cloned().collect();
            for g in surplus {
                self.hand_over(&g).await;
            }
        } else if owned_quotas < share {
            let candidates: Vec<String> = self
                .groups
                .iter()
                .filter(|g| g.is_vendor_quota() && !self.owned.contains_key(*g))
                .map(|g| g.as_str().to_owned())
                .collect();
            let free = match tokio::time::timeout(budget, leases::free_groups(&self.leases, &candidates)).await {
                Ok(Ok(f)) => f,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "cannot read leases");
                    return;
                }
                Err(_) => return,
            };
            for key in free.into_iter().take(share - owned_quotas) {
                self.try_acquire(&key).await;
            }
        }
        let services: Vec<String> = self
            .groups
            .iter()
            .filter(|g| !g.is_vendor_quota() && !self.owned.contains_key(*g))
            .map(|g| g.as_str().to_owned())
            .collect();
        if !services.is_empty() {
            let free = tokio::time::timeout(budget, leases::free_groups(&self.leases, &services)).await;
            if let Ok(Ok(free)) = free {
                for key in free {
                    self.try_acquire(&key).await;
                }
            }
        }
        self.view.owned_groups.store(owned_quotas_now(&self.owned), Ordering::Relaxed);
    }

    async fn try_acquire(&mut self, key: &str) {
        let sent = Instant::now();
        // The previous owner gave up every call before its lease ended; what it sent may still
        // land for the allowance, and fill a window for a second after that.
        let wait_after = WINDOW + self.enforcement.jitter();
        let acquire = leases::acquire(&self.leases, &self.me.worker_id, key, self.ownership.lease, wait_after);
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
        let Some(group) = self.groups.iter().find(|g| g.as_str() == key).cloned() else { return };
        let not_before = Instant::now() + acquired.first_call_in;
        let lease = Arc::new(Lease::new(acquired.term, self.lease_until(sent)));
        self.enforcement.start(&group, lease.clone(), not_before);
        tracing::info!(
            quota_group = %key, term = acquired.term, first_call_in_ms = acquired.first_call_in.as_millis() as u64,
            "now enforcing this quota"
        );
        metrics::counter!("bouncer_ownership_changes_total", "change" => "acquired").increment(1);
        self.owned.insert(group, lease);
    }

    /// Leases that ran out before a renewal confirmed them: stop calling those groups.
    fn lose_ran_out(&mut self, groups: Vec<QuotaGroup>) {
        for g in groups {
            tracing::error!(quota_group = %g.as_str(), "could not confirm ownership in time: stopped calling this quota");
            self.lose(&g);
        }
    }

    /// The lease is gone (lapsed or taken over): stop at once, calls in flight included, without
    /// telling the database.
    fn lose(&mut self, g: &QuotaGroup) {
        let Some(lease) = self.owned.remove(g) else { return };
        lease.revoke();
        self.enforcement.stop(g, true);
        metrics::counter!("bouncer_ownership_changes_total", "change" => "lost").increment(1);
    }

    /// Stops calling, lets calls in flight wind down (up to the drain), lets their results be
    /// written, then ends the lease so another replica can start after one vendor window (plus
    /// the allowance).
    async fn hand_over(&mut self, g: &QuotaGroup) {
        let Some(lease) = self.owned.remove(g) else { return };
        lease.revoke();
        if let Some(stopped) = self.enforcement.stop(g, false) {
            stopped.wind_down(HANDOVER_DRAIN).await;
        }
        metrics::counter!("bouncer_ownership_changes_total", "change" => "released").increment(1);
        self.enforcement.flush().await;
        self.release(&[(g, lease.term)]).await;
        self.view.owned_groups.store(self.owned.len(), Ordering::Relaxed);
    }

    /// Ends this replica's leases (group and term) now and tells contenders, in one transaction.
    async fn release(&self, groups: &[(&QuotaGroup, i64)]) {
        let leases: Vec<(&str, i64)> = groups.iter().map(|(g, term)| (g.as_str(), *term)).collect();
        let names = || leases.iter().map(|(g, _)| *g).collect::<Vec<_>>().join(",");
        let released = leases::release(&self.leases, &self.me.worker_id, &leases);
        match tokio::time::timeout(self.budget(), released).await {
            Ok(Ok(())) => tracing::info!(quota_group = %names(), "handed this quota over"),
            Ok(Err(e)) => {
                tracing::warn!(quota_group = %names(), error = %e, "could not release the lease; it runs out by itself")
            }
            Err(_) => tracing::warn!(quota_group = %names(), "releasing the lease timed out; it runs out by itself"),
        }
    }

    /// Shutdown: hand everything over (calls in flight wind down within the grace period, at most the
    /// drain), leave.
    async fn leave(&mut self) {
        let groups: Vec<QuotaGroup> = self.owned.keys().cloned().collect();
        let mut stopped = Vec::new();
        for g in &groups {
            if let Some(lease) = self.owned.remove(g) {
                lease.revoke();
                metrics::counter!("bouncer_ownership_changes_total", "change" => "released").increment(1);
                stopped.push((g.clone(), lease.term, self.enforcement.stop(g, false)));
            }
        }
        // Calls in flight usually end within milliseconds; a hung vendor must not delay takeover,
        // and no call may outlive the lease (the next owner counts on it).
        let drain = HANDOVER_DRAIN.min(self.enforcement.grace());
        let started = Instant::now();
        for (_, _, s) in &stopped {
            if let Some(s) = s {
                s.wind_down(drain.saturating_sub(started.elapsed())).await;
            }
        }
        self.enforcement.flush().await;
        let released: Vec<(&QuotaGroup, i64)> = stopped.iter().map(|(g, term, _)| (g, *term)).collect();
        self.release(&released).await;
        let _ = tokio::time::timeout(self.budget(), leases::leave(&self.leases, &self.me.worker_id)).await;
        tracing::info!(groups = stopped.len(), "left: every quota handed over");
        self.view.owned_groups.store(0, Ordering::Relaxed);
    }
}

/// Vendor quota groups among `owned` (the relay's and maintenance's leases are not quotas).
fn owned_quotas_now<V>(owned: &std::collections::BTreeMap<QuotaGroup, V>) -> usize {
    owned.keys().filter(|g| g.is_vendor_quota()).count()
}
