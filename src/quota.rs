//! Call pacing for one vendor quota (ZEGO: an AppID; TRTC: a SecretId and action).
//!
//! The vendor counts *arrivals* in any sliding 1 s window, on its own clock, and that clock can
//! lag: a gateway busy answering a released backlog takes new requests up late and bunched. So the
//! pacing rests on what is known, not on an assumed delay: a call's arrival lies somewhere between
//! the moment it was charged here (just before it is sent) and the moment its answer came back.
//! Until the answer comes, it may arrive at any moment.
//!
//! **The rule.** A set of calls can land in one vendor window only if the latest start among them
//! is less than a second after the earliest *end* (answer) among them. A new call starts later
//! than every earlier one, so it may start at `now` only while fewer than `rate` earlier calls
//! could still arrive after `now − 1 s`: calls still in flight, and calls answered less than a
//! second ago. Ends only ever move earlier than assumed (an open call's end is taken as "never"
//! until it comes), so a set allowed once stays allowed, and **no vendor window can hold more
//! than `rate` calls, however late or bunched the vendor stamps them** — including calls answered
//! late, out of order, or all at once.
//!
//! **Calls without an answer** (a timeout, a connection reset, a call abandoned when ownership
//! ends) give no proof of when they arrived: bytes already sent may still reach the vendor a
//! little after we stop waiting. Such a call counts as possibly arriving for `allowance`
//! (`pacing.jitter_ms`) after we gave up on it. The same allowance covers a previous owner's
//! calls at a takeover (see the elector, `ownership`): it abandons every call still in flight before its
//! lease ends, so the new owner waits one window plus the allowance after that end.
//!
//! **What it costs.** A call's slot frees one second after its *answer*, not after its start:
//! a quota runs at `rate / (1 s + latency)`. Against a vendor answering in 20 ms that is 98 % of
//! the limit; while a recovering vendor takes 200 ms, 83 %; a vendor that hangs gets at most
//! `rate` calls in flight and none after them until answers come back. Utilisation is traded for
//! never being refused (a refusal pauses the quota for a whole second, ~`rate` calls of capacity).
//!
//! Calls are also smoothed (GCRA: one call per `1 s / rate` on average, never closer than half of
//! that) so they do not go out in bursts. Why not governor: its GCRA spaces calls but knows
//! nothing of answers, and it runs on its own clock, which tokio's paused test clock cannot drive.
//!
//! Every attempt is charged, retries, re-signs and split halves included.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// The vendor's window.
pub const WINDOW: Duration = Duration::from_secs(1);
/// How long a quota pauses after the vendor answers with a rate-limit code: a full window.
pub const SLOW_DOWN: Duration = Duration::from_secs(1);
/// Added to the window so a start exactly one window after an end never meets it in a closed
/// window at the vendor.
const EPSILON: Duration = Duration::from_millis(1);

struct Guard {
    /// Calls charged and not yet ended: each may still arrive at any moment.
    open: usize,
    /// Until when each ended call may have arrived, the latest `rate` of them, sorted.
    ends: VecDeque<Instant>,
    /// No call starts before this (a new owner waiting out the previous one, or a slow-down).
    not_before: Instant,
    /// The smoother's theoretical time of the next call.
    next_slot: Instant,
}

/// One vendor quota, shared by every call that counts against it in this process.
pub struct Quota {
    pub rate_per_second: u32,
    /// How long a call that ended without an answer may still arrive.
    allowance: Duration,
    /// Average spacing of calls.
    period: Duration,
    guard: Mutex<Guard>,
    /// Woken whenever a call ends: a window may have freed earlier than a waiter planned.
    ended: Notify,
}

/// A call charged to a quota, from just before it is sent until its answer. Say how it ended with
/// [`Charge::answered`] or [`Charge::unanswered`]; dropped without either (a cancelled task),
/// it counts as unanswered.
pub struct Charge {
    quota: Arc<Quota>,
    done: bool,
}

impl Charge {
    /// The vendor answered (any HTTP answer): the call arrived before now.
    pub fn answered(mut self) {
        self.done = true;
        self.quota.end(Instant::now());
    }

    /// We stopped waiting without an answer (timeout, reset, abandoned): it may still arrive for
    /// the allowance.
    pub fn unanswered(mut self) {
        self.done = true;
        self.quota.end(Instant::now() + self.quota.allowance);
    }
}

impl Charge {
    /// Nothing was sent after all (ownership ended between the charge and the send).
    pub fn unsent(mut self) {
        self.done = true;
        self.quota.lock().open -= 1;
        self.quota.ended.notify_waiters();
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        if !self.done {
            self.quota.end(Instant::now() + self.quota.allowance);
        }
    }
}

impl Quota {
    /// A quota of `rate_per_second` calls, counting a call that ended without an answer as
    /// possibly arriving for `allowance` more, whose first call may start no earlier than
    /// `not_before`.
    pub fn new(rate_per_second: u32, allowance: Duration, not_before: Instant) -> Quota {
        let rate = rate_per_second.max(1);
        Quota {
            rate_per_second: rate,
            allowance,
            period: WINDOW / rate,
            guard: Mutex::new(Guard {
                open: 0,
                ends: VecDeque::with_capacity(rate as usize + 1),
                not_before,
                next_slot: not_before,
            }),
            ended: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Guard> {
        self.guard.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The earliest instant the next call may start, or `None` while `rate` calls are in flight
    /// (only an answer can free a slot then).
    fn earliest(&self, g: &Guard) -> Option<Instant> {
        let rate = self.rate_per_second as usize;
        if g.open >= rate {
            return None;
        }
        // At most `rate - open - 1` ended calls may still be arriving within the window before
        // the new call: the `(rate - open)`-th latest end must be a window (and a hair) past.
        let k = rate - g.open;
        let by_window = g.ends.len().checked_sub(k).map(|i| g.ends[i] + WINDOW + EPSILON);
        // Half a period of tolerance: a call woken late does not push every later one back.
        let smooth = g.next_slot.checked_sub(self.period / 2).unwrap_or(g.next_slot);
        Some(by_window.map_or(g.not_before, |t| t.max(g.not_before)).max(smooth))
    }

    /// Waits until `earliest` allows a start now (checked under the lock by `take`), waking early
    /// when a call ends. Returns what `take` returned.
    async fn wait_for<T>(&self, mut take: impl FnMut(&mut Guard, Option<Instant>, Instant) -> Option<T>) -> T {
        loop {
            // Registered before looking, so an end between the look and the wait is not missed.
            let ended = self.ended.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            let earliest = {
                let mut g = self.lock();
                let now = Instant::now();
                let earliest = self.earliest(&g);
                if let Some(out) = take(&mut g, earliest, now) {
                    return out;
                }
                earliest
            };
            match earliest {
                Some(t) => {
                    tokio::select! {
                        () = tokio::time::sleep_until(t) => {},
                        () = &mut ended => {},
                    }
                }
                None => ended.await,
            }
        }
    }

    /// Waits until a call could start, without charging it: the lane cuts a chunk at that moment
    /// so users who arrived meanwhile ride along. Returns how long it waited.
    pub async fn ready(&self) -> Duration {
        let started = Instant::now();
        self.wait_for(|_, earliest, now| earliest.filter(|t| *t <= now).map(|_| started.elapsed())).await
    }

    /// Waits until a call may start and charges it; call it right before sending, so the time
    /// charged is the time the call leaves. Returns the charge (end it with the call's answer) and
    /// how long it waited. Safe to cancel: nothing is charged until it returns.
    pub async fn acquire(self: &Arc<Self>) -> (Charge, Duration) {
        let started = Instant::now();
        self.wait_for(|g, earliest, now| {
            let t = earliest?;
            if t > now {
                return None;
            }
            g.open += 1;
            g.next_slot = g.next_slot.max(now) + self.period;
            Some(())
        })
        .await;
        (Charge { quota: self.clone(), done: false }, started.elapsed())
    }

    /// A charged call ended; it may have arrived at the vendor until `until`.
    fn end(&self, until: Instant) {
        {
            let mut g = self.lock();
            g.open = g.open.saturating_sub(1);
            // Ends come nearly in order (answers now, unanswered calls a little later).
            let pos = g.ends.partition_point(|t| *t <= until);
            g.ends.insert(pos, until);
            while g.ends.len() > self.rate_per_second as usize {
                g.ends.pop_front();
            }
        }
        self.ended.notify_waiters();
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

    /// A call as the vendor could see it: charged at `start`, answered (or given up on) at `end`.
    #[derive(Clone, Copy, Debug)]
    struct Span {
        start: Instant,
        end: Instant,
    }

    /// The most calls that could land in one vendor window `(t − 1 s, t]`, whatever their
    /// arrivals within their spans: the calls of a set can share a window iff the latest start is
    /// less than a second after the earliest end. For each call taken as the set's earliest end,
    /// count those that started before that end plus a window and end no earlier.
    fn worst_window(spans: &[Span]) -> usize {
        spans
            .iter()
            .map(|first| {
                spans.iter().filter(|s| s.end >= first.end && s.start < first.end + WINDOW && s.start <= s.end).count()
            })
            .max()
            .unwrap_or(0)
    }

    /// Runs `n` calls through `q` one after another on the paused clock, each answered after
    /// `latency(i)` (`None`: never; it times out after 5 s); calls overlap as a lane's call tasks
    /// do. Returns each call's span as the vendor could see it.
    async fn run_calls(q: Arc<Quota>, n: usize, latency: impl Fn(usize) -> Option<Duration>) -> Vec<Span> {
        let mut tasks = Vec::new();
        for i in 0..n {
            let (charge, _) = q.acquire().await;
            let start = Instant::now();
            let lat = latency(i);
            let allowance = q.allowance;
            tasks.push(tokio::spawn(async move {
                match lat {
                    Some(l) => {
                        tokio::time::sleep(l).await;
                        charge.answered();
                        Span { start, end: Instant::now() }
                    }
                    None => {
                        tokio::time::sleep(Duration::from_secs(5)).await;
                        charge.unanswered();
                        Span { start, end: Instant::now() + allowance }
                    }
                }
            }));
        }
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    }

    #[tokio::test(start_paused = true)]
    async fn fast_answers_keep_every_window_at_the_limit_and_use_nearly_all_of_it() {
        let q = Arc::new(Quota::new(50, Duration::from_millis(25), Instant::now()));
        let spans = run_calls(q, 500, |_| Some(Duration::from_millis(5))).await;
        assert_eq!(worst_window(&spans), 50);
        // 500 calls at 50 per (1 s + 5 ms): about 10 s.
        let took = spans[499].start - spans[0].start;
        assert!(took <= Duration::from_millis(10_100), "{took:?}");
        assert!(spans.windows(2).all(|w| w[1].start - w[0].start >= Duration::from_millis(10)), "bursty");
    }

    #[tokio::test(start_paused = true)]
    async fn answers_arriving_late_never_let_a_window_hold_more_than_the_limit() {
        let q = Arc::new(Quota::new(20, Duration::from_millis(25), Instant::now()));
        // A vendor recovering: answers take 36 – 400 ms, varying call to call.
        let spans = run_calls(q, 300, |i| Some(Duration::from_millis(36 + (i as u64 * 37) % 364))).await;
        assert!(worst_window(&spans) <= 20, "{}", worst_window(&spans));
    }

    #[tokio::test(start_paused = true)]
    async fn answers_out_of_order_and_in_a_burst_never_overfill_a_window() {
        let q = Arc::new(Quota::new(50, Duration::from_millis(25), Instant::now()));
        // Calls 0..60 hang until 2 s, then all answer at once (a released backlog); the rest are
        // quick. Later calls answer before earlier ones.
        let t0 = Instant::now();
        let spans = run_calls(q, 200, move |i| {
            Some(if i < 60 {
                Duration::from_secs(2).saturating_sub(Instant::now() - t0)
            } else if i % 3 == 0 {
                Duration::from_millis(300)
            } else {
                Duration::from_millis(3)
            })
        })
        .await;
        assert!(worst_window(&spans) <= 50, "{}", worst_window(&spans));
    }

    #[tokio::test(start_paused = true)]
    async fn timeouts_count_for_the_allowance_after_we_give_up() {
        let allowance = Duration::from_millis(25);
        let q = Arc::new(Quota::new(10, allowance, Instant::now()));
        // Every third call times out after 5 s.
        let spans = run_calls(q, 60, |i| if i % 3 == 0 { None } else { Some(Duration::from_millis(10)) }).await;
        assert!(worst_window(&spans) <= 10, "{}", worst_window(&spans));
    }

    #[tokio::test(start_paused = true)]
    async fn with_the_limit_in_flight_no_call_starts_until_an_answer_comes() {
        let q = Arc::new(Quota::new(2, Duration::ZERO, Instant::now()));
        let (a, _) = q.acquire().await;
        let (b, _) = q.acquire().await;
        let waited = tokio::time::timeout(Duration::from_secs(30), q.ready()).await;
        assert!(waited.is_err(), "two calls that may still arrive fill the window for as long as they last");
        a.answered();
        let t = Instant::now();
        q.ready().await;
        assert!(Instant::now() - t >= WINDOW, "the answered call may have arrived just now");
        b.answered();
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_charge_counts_as_unanswered() {
        let allowance = Duration::from_millis(100);
        let q = Arc::new(Quota::new(1, allowance, Instant::now()));
        let (c, _) = q.acquire().await;
        drop(c);
        let t = Instant::now();
        q.ready().await;
        assert!(Instant::now() - t >= WINDOW + allowance);
    }

    #[tokio::test(start_paused = true)]
    async fn ready_waits_like_acquire_but_charges_nothing() {
        let t0 = Instant::now();
        let q = Arc::new(Quota::new(2, Duration::ZERO, t0));
        let (a, _) = q.acquire().await;
        a.answered();
        let (b, _) = q.acquire().await;
        b.answered();
        q.ready().await;
        q.ready().await;
        assert!(Instant::now() - t0 >= WINDOW, "the window is full until the first call is a second old");
        let t = Instant::now();
        let (c, _) = q.acquire().await;
        assert_eq!(Instant::now(), t, "ready meant ready: nothing was charged");
        c.answered();
        q.ready().await;
        assert!(Instant::now() - t >= Duration::from_millis(200), "the charged call counts");
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_owner_waits_for_its_first_call() {
        let start = Instant::now();
        let q = Arc::new(Quota::new(50, Duration::from_millis(20), start + Duration::from_millis(700)));
        let (c, _) = q.acquire().await;
        assert!(Instant::now() - start >= Duration::from_millis(700));
        c.answered();
    }

    #[tokio::test(start_paused = true)]
    async fn slow_down_holds_every_call_for_a_full_window() {
        let q = Arc::new(Quota::new(50, Duration::from_millis(20), Instant::now()));
        let (c, _) = q.acquire().await;
        c.answered();
        q.slow_down();
        let started = Instant::now();
        let (c, _) = q.acquire().await;
        assert!(started.elapsed() >= SLOW_DOWN);
        c.answered();
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_callers_share_the_guard() {
        let q = Arc::new(Quota::new(10, Duration::from_millis(20), Instant::now()));
        let tasks: Vec<_> = (0..4)
            .map(|_| {
                let q = q.clone();
                tokio::spawn(async move {
                    let mut spans = Vec::new();
                    for i in 0..25u64 {
                        let (c, _) = q.acquire().await;
                        let start = Instant::now();
                        tokio::time::sleep(Duration::from_millis(1 + i * 7 % 50)).await;
                        c.answered();
                        spans.push(Span { start, end: Instant::now() });
                    }
                    spans
                })
            })
            .collect();
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        assert!(worst_window(&all) <= 10, "{}", worst_window(&all));
    }
}
