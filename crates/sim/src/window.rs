//! A sliding one-second window per quota, as the vendor would enforce it: a call is admitted
//! while fewer than `limit` calls were admitted in the second before it arrived. Separately it
//! tracks every arrival, admitted or not, so the highest number of calls seen in any 1 s window is
//! exact.
//!
//! Arrival times are given by the caller and may come slightly out of order (the simulator's
//! network jitter delays some calls past later ones), so both logs are kept sorted.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

const WINDOW: Duration = Duration::from_secs(1);
/// Arrivals older than this behind the newest are dropped (jitter is far shorter).
const KEEP: Duration = Duration::from_secs(3);

#[derive(Debug, Default)]
pub struct SlidingWindow {
    /// Arrival times of admitted calls, sorted.
    admitted: VecDeque<Instant>,
    /// Arrival times of all calls, sorted.
    arrivals: VecDeque<Instant>,
    /// The most calls that arrived within any window `(t - 1 s, t]`.
    pub max_arrivals_in_window: usize,
    /// The most admitted calls within any such window.
    pub max_admitted_in_window: usize,
    pub calls: u64,
    pub rate_limited: u64,
}

/// Inserts `at` in order and drops what is far behind the newest entry.
fn insert(q: &mut VecDeque<Instant>, at: Instant) {
    let pos = q.partition_point(|t| *t <= at);
    q.insert(pos, at);
    let newest = q.back().copied().unwrap_or(at);
    while q.front().is_some_and(|t| newest.duration_since(*t) > KEEP) {
        q.pop_front();
    }
}

/// Calls in `(end - 1 s, end]`.
fn in_window_ending(q: &VecDeque<Instant>, end: Instant) -> usize {
    q.iter().filter(|t| **t <= end && end.duration_since(**t) < WINDOW).count()
}

/// The fullest window `(x - 1 s, x]` containing `at`: the maximum is reached at a window ending
/// on an arrival, so only those ending within a second after `at` are looked at.
fn fullest_around(q: &VecDeque<Instant>, at: Instant) -> usize {
    q.iter().filter(|x| **x >= at && x.duration_since(at) < WINDOW).map(|x| in_window_ending(q, *x)).max().unwrap_or(0)
}

impl SlidingWindow {
    /// Counts an arrival at `at`.
    pub fn arrive(&mut self, at: Instant) {
        insert(&mut self.arrivals, at);
        self.calls += 1;
        self.max_arrivals_in_window = self.max_arrivals_in_window.max(fullest_around(&self.arrivals, at));
    }

    /// Whether a call arriving at `at` is within the limit; admitted calls count against it. Calls
    /// can be decided out of arrival order, so every window the call falls in is checked, not just
    /// the one ending at it.
    pub fn admit(&mut self, at: Instant, limit: u32) -> bool {
        insert(&mut self.admitted, at);
        let fullest = fullest_around(&self.admitted, at);
        if fullest > limit as usize {
            let pos = self.admitted.partition_point(|t| *t < at);
            self.admitted.remove(pos);
            self.rate_limited += 1;
            return false;
        }
        self.max_admitted_in_window = self.max_admitted_in_window.max(fullest);
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

    #[test]
    fn a_call_decided_after_later_ones_is_refused_if_any_second_it_falls_in_is_full() {
        let t0 = Instant::now();
        let mut w = SlidingWindow::default();
        for i in 0..50u64 {
            assert!(w.admit(t0 + Duration::from_millis(500 + i * 10), 50));
        }
        // Arrived at 450 ms, decided last: the second (450, 1450] would hold 51.
        assert!(!w.admit(t0 + Duration::from_millis(450), 50));
        assert_eq!(w.max_admitted_in_window, 50);
    }

    #[test]
    fn a_call_delayed_past_later_ones_still_counts_in_every_window_it_falls_in() {
        let t0 = Instant::now();
        let mut w = SlidingWindow::default();
        // 50 calls 20 ms apart, then one that left early but arrives late, inside their second.
        for i in 0..50u64 {
            w.arrive(t0 + Duration::from_millis(100 + i * 20));
        }
        assert_eq!(w.max_arrivals_in_window, 50);
        w.arrive(t0 + Duration::from_millis(990));
        assert_eq!(w.max_arrivals_in_window, 51);
    }
}
