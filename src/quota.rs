//! Call pacing for one vendor quota (ZEGO: an AppID; TRTC: a SecretId and action).
//!
//! The vendor counts *arrivals* in any sliding 1 s window. A call started at `t` arrives somewhere
//! in `[t + d, t + d + J]`, where `J` is how much the network delay varies (the jitter). So if no
//! window of `1 s + J` at our end holds more than `rate` call starts, no 1 s window at the vendor
//! holds more than `rate` arrivals, whatever the delays do within `J`. [`Quota`] enforces exactly
//! that with a log of the last `rate` starts, and smooths calls (GCRA: one call per `1 s / rate`
//! on average, never closer than half of that) so they do not go out in bursts.
//!
//! Why not governor: its GCRA spaces calls but does not model a window plus jitter, and it runs
//! on its own clock, which tokio's paused test clock cannot drive. The guard is a dozen lines. The cost is the jitter allowance itself: at most
//! `rate` calls per `1 s + J`, i.e. 97.5 % of the limit for the default `J` = 25 ms
//! (`pacing.jitter_ms`: 20 ms of variation on the network to the vendor plus 5 ms between a call
//! being charged here and its bytes leaving; measured in BENCHMARKS.md and the README).
//!
//! Every attempt is charged, retries, re-signs and split halves included.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// The vendor's window.
pub const WINDOW: Duration = Duration::from_secs(1);
/// How long a quota pauses after the vendor answers with a rate-limit code: a full window.
pub const SLOW_DOWN: Duration = Duration::from_secs(1);
/// Added to the guard so a start exactly `1 s + J` after another never meets it in a closed window.
const EPSILON: Duration = Duration::from_millis(1);

struct Guard {
    /// Start times of the last `rate` calls, oldest first.
    starts: VecDeque<Instant>,
    /// No call starts before this (a new owner waiting out the previous one, or a slow-down).
    not_before: Instant,
    /// The smoother's theoretical time of the next call.
    next_slot: Instant,
}

/// One vendor quota, shared by every call that counts against it in this process.
pub struct Quota {
    pub rate_per_second: u32,
    /// The guard's window: `1 s + jitter`.
    span: Duration,
    /// Average spacing of calls.
    period: Duration,
    guard: Mutex<Guard>,
}

impl Quota {
    /// A quota of `rate_per_second` calls, tolerating `jitter` of arrival variation, whose first
    /// call may start no earlier than `not_before`.
    pub fn new(rate_per_second: u32, jitter: Duration, not_before: Instant) -> Quota {
        let rate = rate_per_second.max(1);
        Quota {
            rate_per_second: rate,
            span: WINDOW + jitter + EPSILON,
            period: WINDOW / rate,
            guard: Mutex::new(Guard {
                starts: VecDeque::with_capacity(rate as usize + 1),
                not_before,
                next_slot: not_before,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Guard> {
        self.guard.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The earliest instant the window guard lets the next call start.
    fn earliest(&self, g: &Guard) -> Instant {
        let full = g.starts.len() >= self.rate_per_second as usize;
        let by_window = if full { g.starts.front().map(|t| *t + self.span) } else { None };
        // Half a period of tolerance: a call woken late does not push every later one back.
        let smooth = g.next_slot.checked_sub(self.period / 2).unwrap_or(g.next_slot);
        by_window.map_or(g.not_before, |t| t.max(g.not_before)).max(smooth)
    }

    /// Waits until a call could start, without charging it: the lane cuts a chunk at that moment
    /// so users who arrived meanwhile ride along. Returns how long it waited.
    pub async fn ready(&self) -> Duration {
        let started = Instant::now();
        loop {
            let earliest = self.earliest(&self.lock());
            if earliest <= Instant::now() {
                return started.elapsed();
            }
            tokio::time::sleep_until(earliest).await;
        }
    }

    /// Waits until a call may start and charges it; call it right before sending, so the time
    /// charged is the time the call leaves (the scheduling delay between cutting a chunk and
    /// sending it is not jitter the guard has to absorb). Returns how long it waited. Safe to
    /// cancel: nothing is charged until it returns.
    pub async fn acquire(&self) -> Duration {
        let started = Instant::now();
        loop {
            let earliest = {
                let mut g = self.lock();
                let now = Instant::now();
                let earliest = self.earliest(&g);
                if earliest <= now {
                    g.starts.push_back(now);
                    while g.starts.len() > self.rate_per_second as usize {
                        g.starts.pop_front();
                    }
                    g.next_slot = g.next_slot.max(now) + self.period;
                    return started.elapsed();
                }
                earliest
            };
            // Another task may take the slot meanwhile: look again when woken.
            tokio::time::sleep_until(earliest).await;
        }
    }

    /// The vendor answered with its rate-limit code: hold every call on this quota for a window.
    pub fn slow_down(&self) {
        let until = Instant::now() + SLOW_DOWN;
        let mut g = self.lock();
        g.not_before = g.not_before.max(until);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Starts of `n` calls on a paused clock.
    async fn starts(q: &Quota, n: usize) -> Vec<Instant> {
        let mut out = Vec::new();
        for _ in 0..n {
            q.acquire().await;
            out.push(Instant::now());
        }
        out
    }

    /// The most starts within any window of `span` (closed on both ends).
    fn max_in(times: &[Instant], span: Duration) -> usize {
        (0..times.len()).map(|i| times[i..].iter().take_while(|t| **t - times[i] <= span).count()).max().unwrap_or(0)
    }

    #[tokio::test(start_paused = true)]
    async fn no_window_of_one_second_plus_jitter_holds_more_than_the_rate() {
        let jitter = Duration::from_millis(20);
        let q = Quota::new(50, jitter, Instant::now());
        let t = starts(&q, 500).await;
        assert_eq!(max_in(&t, WINDOW + jitter), 50);
        // And the quota is used: 500 calls take about 10 × 1.021 s, not more.
        let span = t[499] - t[0];
        assert!(span <= Duration::from_millis(10_300), "{span:?}");
        // Calls are spread out, not sent in bursts.
        assert!(t.windows(2).all(|w| w[1] - w[0] >= Duration::from_millis(10)), "bursty");
    }

    #[tokio::test(start_paused = true)]
    async fn arrivals_delayed_by_up_to_the_jitter_never_exceed_the_limit_at_the_vendor() {
        let jitter = Duration::from_millis(20);
        let q = Quota::new(20, jitter, Instant::now());
        let t = starts(&q, 200).await;
        // Worst case for a window: the first call of a run arrives as late as possible and the
        // others as early as possible. Try both extremes alternately and at random.
        for pattern in 0..3u32 {
            let mut arrivals: Vec<Instant> = t
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    let late = match pattern {
                        0 => i % 2 == 0,
                        1 => i % 20 == 0,
                        _ => rand::random::<bool>(),
                    };
                    *s + if late { jitter } else { Duration::ZERO }
                })
                .collect();
            arrivals.sort();
            // The simulator's window is half-open, (t - 1 s, t]: strictly less than 1 s apart.
            let max = (0..arrivals.len())
                .map(|i| arrivals[i..].iter().take_while(|a| **a - arrivals[i] < WINDOW).count())
                .max()
                .unwrap();
            assert!(max <= 20, "pattern {pattern}: {max}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn ready_waits_like_acquire_but_charges_nothing() {
        let t0 = Instant::now();
        let q = Quota::new(2, Duration::ZERO, t0);
        q.acquire().await;
        q.acquire().await;
        q.ready().await;
        q.ready().await;
        assert!(Instant::now() - t0 >= WINDOW, "the window is full until the first call is a second old");
        let t = Instant::now();
        q.acquire().await;
        assert_eq!(Instant::now(), t, "ready meant ready: nothing was charged");
        q.ready().await;
        assert!(Instant::now() - t >= Duration::from_millis(200), "the charged call counts");
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_owner_waits_for_its_first_call() {
        let start = Instant::now();
        let q = Quota::new(50, Duration::from_millis(20), start + Duration::from_millis(700));
        q.acquire().await;
        assert!(Instant::now() - start >= Duration::from_millis(700));
    }

    #[tokio::test(start_paused = true)]
    async fn slow_down_holds_every_call_for_a_full_window() {
        let q = Quota::new(50, Duration::from_millis(20), Instant::now());
        q.acquire().await;
        q.slow_down();
        let started = Instant::now();
        q.acquire().await;
        assert!(started.elapsed() >= SLOW_DOWN);
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_callers_share_the_guard() {
        let q = std::sync::Arc::new(Quota::new(10, Duration::from_millis(20), Instant::now()));
        let tasks: Vec<_> = (0..4)
            .map(|_| {
                let q = q.clone();
                tokio::spawn(async move { starts(&q, 25).await })
            })
            .collect();
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        all.sort();
        assert_eq!(max_in(&all, WINDOW + Duration::from_millis(20)), 10);
    }
}
