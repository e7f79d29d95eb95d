//! The retry schedule, as data: exponential ceilings (backon's builder, no jitter of its own)
//! with full jitter applied here, bounded by a total deadline counted from a kick's first attempt.
//! The schedule is applied by writing the next attempt time to the kick's row, so a restart or a
//! new owner of the quota continues it instead of retrying at once.
//!
//! backon's own jitter adds `[0, d)` on top of each delay; "full jitter" draws the whole wait
//! uniformly from `[0, d]`, which spreads retries of many chunks hitting the same failure best.
//!
//! [`Backoff`] is the other half: the one wait every reconnect and retry loop of the process uses
//! (PostgreSQL at start, the LISTEN connection, the broker session, intake's and the audit
//! writer's held writes), doubling from a first step to a ceiling each loop documents, cancelled
//! by shutdown. Loops only classify what failed; the waiting is written once, here.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use crate::config::RetryConfig;

#[derive(Clone, Debug)]
pub struct RetrySchedule {
    pub initial: Duration,
    pub max_interval: Duration,
    /// No retry starts after this much time since the first attempt.
    pub deadline: Duration,
}

impl From<&RetryConfig> for RetrySchedule {
    fn from(c: &RetryConfig) -> Self {
        RetrySchedule { initial: c.initial, max_interval: c.max_interval, deadline: c.deadline }
    }
}

impl RetrySchedule {
    /// Upper bounds of successive waits: initial, 2×, 4×, … capped at `max_interval`, forever.
    pub fn ceilings(&self) -> impl Iterator<Item = Duration> + use<> {
        ExponentialBuilder::default()
            .with_min_delay(self.initial)
            .with_max_delay(self.max_interval)
            .with_factor(2.0)
            .without_max_times()
            .build()
    }

    /// A wait drawn uniformly from `[0, ceiling]`.
    pub fn full_jitter(ceiling: Duration) -> Duration {
        ceiling.mul_f64(rand::random::<f64>())
    }

    /// When the next attempt of a kick may start, after `scheduled` retries so far, or `None`
    /// when that would be past the deadline counted from `first_attempt`.
    pub fn next_attempt(
        &self,
        scheduled: i32,
        first_attempt: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Option<DateTime<Utc>> {
        let n = usize::try_from(scheduled).unwrap_or(0);
        let ceiling = self.ceilings().nth(n).unwrap_or(self.max_interval);
        let at = now + Self::full_jitter(ceiling);
        (!self.past_deadline(first_attempt, at)).then_some(at)
    }

    /// Whether an attempt at `at` would start after the deadline.
    pub fn past_deadline(&self, first_attempt: DateTime<Utc>, at: DateTime<Utc>) -> bool {
        (at - first_attempt).to_std().is_ok_and(|d| d > self.deadline)
    }
}

/// Waits between tries of something that must work eventually: `first`, 2×, 4×, … up to
/// `ceiling` (backon's exponential builder, no jitter: one process retries one thing), back to
/// `first` after [`Backoff::reset`].
pub struct Backoff {
    first: Duration,
    ceiling: Duration,
    steps: backon::ExponentialBackoff,
}

impl Backoff {
    pub fn new(first: Duration, ceiling: Duration) -> Backoff {
        Backoff { first, ceiling, steps: Self::steps(first, ceiling) }
    }

    fn steps(first: Duration, ceiling: Duration) -> backon::ExponentialBackoff {
        ExponentialBuilder::default()
            .with_min_delay(first)
            .with_max_delay(ceiling)
            .with_factor(2.0)
            .without_max_times()
            .build()
    }

    /// The wait before the next try.
    pub fn next_wait(&mut self) -> Duration {
        self.steps.next().unwrap_or(self.ceiling)
    }

    /// Back to the first step (after a try that worked for a while).
    pub fn reset(&mut self) {
        self.steps = Self::steps(self.first, self.ceiling);
    }

    /// Waits `wait` unless `cancel` fires first; false when cancelled.
    pub async fn sleep(wait: Duration, cancel: &CancellationToken) -> bool {
        tokio::select! {
            () = tokio::time::sleep(wait) => true,
            () = cancel.cancelled() => false,
        }
    }

    /// Tries `op` until it works, telling `failed` each error and the wait before the next try.
    /// `None` once `cancel` fires.
    pub async fn until_ok<T, E, Fut>(
        &mut self,
        cancel: &CancellationToken,
        mut op: impl FnMut() -> Fut,
        mut failed: impl FnMut(&E, Duration),
    ) -> Option<T>
    where
        Fut: std::future::Future<Output = Result<T, E>>,
    {
        loop {
            if cancel.is_cancelled() {
                return None;
            }
            match op().await {
                Ok(v) => return Some(v),
                Err(e) => {
                    let wait = self.next_wait();
                    failed(&e, wait);
                    if !Self::sleep(wait, cancel).await {
                        return None;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule() -> RetrySchedule {
        RetrySchedule {
            initial: Duration::from_millis(200),
            max_interval: Duration::from_secs(10),
            deadline: Duration::from_secs(600),
        }
    }

    #[test]
    fn ceilings_double_then_stay_at_the_maximum() {
        let c: Vec<u64> = schedule().ceilings().take(9).map(|d| d.as_millis() as u64).collect();
        assert_eq!(c, [200, 400, 800, 1600, 3200, 6400, 10000, 10000, 10000]);
    }

    #[test]
    fn full_jitter_stays_within_zero_and_the_ceiling_and_spreads() {
        let ceiling = Duration::from_secs(1);
        let waits: Vec<Duration> = (0..1000).map(|_| RetrySchedule::full_jitter(ceiling)).collect();
        assert!(waits.iter().all(|w| *w <= ceiling));
        assert!(waits.iter().any(|w| *w < Duration::from_millis(100)));
        assert!(waits.iter().any(|w| *w > Duration::from_millis(900)));
    }

    #[test]
    fn the_next_attempt_follows_the_retries_already_scheduled_and_stops_at_the_deadline() {
        let s = schedule();
        let t0 = chrono::Utc::now();
        for (retries, ceiling_ms) in [(0, 200), (3, 1600), (40, 10_000)] {
            let at = s.next_attempt(retries, t0, t0).expect("within the deadline");
            let wait = (at - t0).num_milliseconds();
            assert!((0..=ceiling_ms).contains(&wait), "{retries}: {wait}");
        }
        // Ten minutes after the first attempt no retry is scheduled, whatever the count.
        let late = t0 + chrono::Duration::seconds(600);
        assert_eq!(s.next_attempt(0, t0, late + chrono::Duration::milliseconds(1)), None);
        assert!(!s.past_deadline(t0, t0 + chrono::Duration::seconds(599)));
    }

    #[test]
    fn a_backoff_doubles_to_its_ceiling_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        let waits: Vec<u128> = (0..7).map(|_| b.next_wait().as_millis()).collect();
        assert_eq!(waits, [200, 400, 800, 1600, 3200, 5000, 5000]);
        b.reset();
        assert_eq!(b.next_wait(), Duration::from_millis(200));
    }

    #[tokio::test(start_paused = true)]
    async fn until_ok_retries_with_the_waits_and_stops_when_cancelled() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let cancel = CancellationToken::new();
        let mut tries = 0;
        let mut waits = Vec::new();
        let t0 = tokio::time::Instant::now();
        let got = b
            .until_ok(
                &cancel,
                || {
                    tries += 1;
                    let n = tries;
                    async move { if n < 4 { Err("not yet") } else { Ok(n) } }
                },
                |_: &&str, w| waits.push(w.as_millis()),
            )
            .await;
        assert_eq!(got, Some(4));
        assert_eq!(waits, [100, 200, 400]);
        // 100 + 200 + 400 ms of waiting (the paused clock rounds each sleep up to its next ms).
        let waited = t0.elapsed();
        assert!(waited >= Duration::from_millis(700) && waited < Duration::from_millis(710), "{waited:?}");
        cancel.cancel();
        let never: Option<()> = b.until_ok(&cancel, || async { Err::<(), _>("down") }, |_: &&str, _| {}).await;
        assert_eq!(never, None);
    }
}
