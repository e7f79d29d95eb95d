//! A sliding one-second window per quota, as the vendor would enforce it: a call is admitted
//! while fewer than `limit` calls were admitted in the last second. Separately it tracks every
//! arrival, admitted or not, so the highest number of calls seen in any 1 s window is exact.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

const WINDOW: Duration = Duration::from_secs(1);

#[derive(Debug, Default)]
pub struct SlidingWindow {
    /// Arrival times of admitted calls within the last second.
    admitted: VecDeque<Instant>,
    /// Arrival times of all calls within the last second.
    arrivals: VecDeque<Instant>,
    /// The most calls that arrived within any window `(t - 1 s, t]`.
    pub max_arrivals_in_window: usize,
    /// The most admitted calls within any such window.
    pub max_admitted_in_window: usize,
    pub calls: u64,
    pub rate_limited: u64,
}

/// Drops entries outside the half-open window `(now - 1 s, now]`.
fn evict(q: &mut VecDeque<Instant>, now: Instant) {
    while let Some(front) = q.front() {
        if now.duration_since(*front) >= WINDOW {
            q.pop_front();
        } else {
            break;
        }
    }
}

impl SlidingWindow {
    /// Counts an arrival. The maximum over all windows is reached at a window ending on an
    /// arrival, so measuring at each arrival is exact.
    pub fn arrive(&mut self, now: Instant) {
        evict(&mut self.arrivals, now);
        self.arrivals.push_back(now);
        self.calls += 1;
        self.max_arrivals_in_window = self.max_arrivals_in_window.max(self.arrivals.len());
    }

    /// Whether a call arriving `now` is within the limit; admitted calls count against it.
    pub fn admit(&mut self, now: Instant, limit: u32) -> bool {
        evict(&mut self.admitted, now);
        if self.admitted.len() >= limit as usize {
            self.rate_limited += 1;
            return false;
        }
        self.admitted.push_back(now);
        self.max_admitted_in_window = self.max_admitted_in_window.max(self.admitted.len());
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sixty_calls_in_one_second_admit_exactly_fifty() {
        let t0 = Instant::now();
        let mut w = SlidingWindow::default();
        let admitted = (0..60)
            .filter(|i| {
                let now = t0 + Duration::from_millis(i * 10); // 60 calls within 600 ms
                w.arrive(now);
                w.admit(now, 50)
            })
            .count();
        assert_eq!(admitted, 50);
        assert_eq!(w.rate_limited, 10);
        assert_eq!(w.max_arrivals_in_window, 60);
        assert_eq!(w.max_admitted_in_window, 50);
    }

    #[test]
    fn the_window_slides_rather_than_resetting_each_second() {
        let t0 = Instant::now();
        let mut w = SlidingWindow::default();
        // 50 calls at 900..949 ms fill the window; at 1 000 ms, calls from 900 ms still count.
        for i in 0..50 {
            assert!(w.admit(t0 + Duration::from_millis(900 + i), 50));
        }
        assert!(!w.admit(t0 + Duration::from_millis(1_000), 50));
        // A fixed per-second counter would allow this one; the sliding window frees a slot
        // only once the 900 ms call is a full second old.
        assert!(!w.admit(t0 + Duration::from_millis(1_899), 50));
        assert!(w.admit(t0 + Duration::from_millis(1_900), 50));
    }

    #[test]
    fn evenly_spaced_calls_at_the_limit_are_all_admitted() {
        let t0 = Instant::now();
        let mut w = SlidingWindow::default();
        for i in 0..500u64 {
            let now = t0 + Duration::from_millis(i * 20);
            w.arrive(now);
            assert!(w.admit(now, 50), "call {i}");
        }
        assert_eq!(w.max_arrivals_in_window, 50);
    }
}
