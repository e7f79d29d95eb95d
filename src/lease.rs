//! This process's right to call one quota group, as its call tasks see it.
//!
//! The elector (`ownership`) extends it after each confirmed renewal to
//! `(when the renewal was sent) + TTL − margin`: the database set the lease's expiry to its own
//! `now() + TTL`, and its `now()` came after the send, so this process stops starting calls before
//! anyone else can take the lease over. Every call checks it right before it is sent.

use std::sync::Mutex;

use tokio::time::Instant;

pub struct Lease {
    /// The database's term for this ownership (for logs and release).
    pub term: i64,
    valid_until: Mutex<Instant>,
}

impl Lease {
    pub fn new(term: i64, valid_until: Instant) -> Lease {
        Lease { term, valid_until: Mutex::new(valid_until) }
    }

    fn slot(&self) -> std::sync::MutexGuard<'_, Instant> {
        self.valid_until.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a call may start now.
    pub fn is_valid(&self) -> bool {
        Instant::now() < *self.slot()
    }

    /// Resolves once the lease has run out (not renewed in time). A revocation is not seen
    /// until the time it replaced: whoever revokes also cancels the lanes and call tasks.
    pub async fn lapsed(&self) {
        loop {
            let until = *self.slot();
            if Instant::now() >= until {
                return;
            }
            tokio::time::sleep_until(until).await;
        }
    }

    /// A renewal was confirmed: the lease runs to `until`, unless it ran out already. A lease that
    /// ran out stays out, even when a slow renewal comes back confirmed: its lanes and call tasks
    /// stopped on seeing it (leaving the kicks they held pending), so the elector drops the group
    /// and takes it afresh. Returns whether the lease was still valid.
    pub fn extend_to(&self, until: Instant) -> bool {
        let mut v = self.slot();
        if Instant::now() >= *v {
            return false;
        }
        *v = (*v).max(until);
        true
    }

    /// Stop starting calls at once (release, loss, shutdown).
    pub fn revoke(&self) {
        *self.slot() = Instant::now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn a_lease_not_renewed_runs_out_by_itself_and_a_revoked_one_at_once() {
        let l = Lease::new(1, Instant::now() + Duration::from_secs(2));
        assert!(l.is_valid());
        tokio::time::advance(Duration::from_millis(1500)).await;
        l.extend_to(Instant::now() + Duration::from_secs(2));
        tokio::time::advance(Duration::from_millis(1999)).await;
        assert!(l.is_valid());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(!l.is_valid(), "expired without a renewal");
        assert!(!l.extend_to(Instant::now() + Duration::from_secs(2)), "a renewal confirmed too late");
        assert!(!l.is_valid(), "does not bring a lease that ran out back");
        let l = Lease::new(2, Instant::now() + Duration::from_secs(2));
        l.revoke();
        assert!(!l.is_valid());
        assert!(!l.extend_to(Instant::now() + Duration::from_secs(2)), "nor one revoked");
    }

    #[tokio::test(start_paused = true)]
    async fn lapsed_waits_out_every_renewal_and_ends_when_the_lease_runs_out() {
        let l = std::sync::Arc::new(Lease::new(1, Instant::now() + Duration::from_secs(2)));
        let t0 = Instant::now();
        let waiter = tokio::spawn({
            let l = l.clone();
            async move {
                l.lapsed().await;
                Instant::now()
            }
        });
        tokio::time::sleep(Duration::from_millis(1500)).await;
        l.extend_to(Instant::now() + Duration::from_secs(2));
        let lapsed_at = waiter.await.unwrap();
        // The renewal moved the end to 3.5 s (the paused clock may round a sleep up by a ms).
        let lapsed = lapsed_at - t0;
        assert!(lapsed >= Duration::from_millis(3500) && lapsed < Duration::from_millis(3510), "{lapsed:?}");
    }
}
