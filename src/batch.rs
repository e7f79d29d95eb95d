//! Pending users of one app, grouped by [`Target`]: a room and what is done to its users there (the
//! action). A target is ready to send when it holds a full chunk, or when `linger` has passed since
//! its oldest pending user arrived. The same user pending twice for a target is sent once, on
//! behalf of every verdict that named them. (The batches work for any key; "room" below means the
//! key.)
//!
//! Chunks are cut when a call can actually start (late), so users who arrive while the quota
//! makes a call wait still ride along: chunks fill up under load.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::time::Instant;

use crate::vendors::Action;
use crate::verdict::RoomId;

/// What one vendor call is about: an action in a room. Batches, chunks and quotas are keyed by it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Target {
    pub room: RoomId,
    pub action: Action,
}

impl Target {
    pub fn kick(room: RoomId) -> Target {
        Target { room, action: Action::Kick }
    }
}

impl std::fmt::Display for Target {
    /// The room as logs show it (the action is a field of its own where it matters).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.room.fmt(f)
    }
}

/// A room past its linger for this long is served before fuller ones.
pub const STARVED: Duration = Duration::from_secs(1);

/// A verdict as the lanes know it: its id, shared by every user entry it produced.
pub type VerdictRef = Arc<str>;

/// One verdict's claim on a user's kick, with that kick's retry state from its row.
#[derive(Clone, Debug, PartialEq)]
pub struct Claim {
    pub verdict: VerdictRef,
    /// When the first call carrying this kick started (the deadline counts from here).
    pub first_attempt_at: Option<DateTime<Utc>>,
    /// Retries scheduled so far (the backoff exponent).
    pub scheduled_retries: i32,
    pub last_error: Option<String>,
    /// A re-kick of a banned user who came back (`reentries.id`), on behalf of the verdict whose
    /// ban held: urgent, served before any other room.
    pub reentry: Option<i64>,
    /// The trace id its verdict was published with (W3C `traceparent`), for the call's log lines.
    pub trace_id: Option<Arc<str>>,
}

impl Claim {
    pub fn new(verdict: &str) -> Claim {
        Claim {
            verdict: Arc::from(verdict),
            first_attempt_at: None,
            scheduled_retries: 0,
            last_error: None,
            reentry: None,
            trace_id: None,
        }
    }

    /// The same work: one verdict's kick, or one re-entry.
    fn same_work(&self, other: &Claim) -> bool {
        self.verdict == other.verdict && self.reentry == other.reentry
    }
}

/// One user waiting to be kicked from one room.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub user_id: String,
    /// Every verdict waiting on this kick (usually one).
    pub claims: Vec<Claim>,
    /// The reason of the first verdict that named the user.
    pub reason: Option<Arc<str>>,
    /// When the user entered the batch (linger is counted from here).
    pub since: Instant,
    /// `detected_at` (or receipt) of the first verdict: verdict-to-kick latency starts here.
    pub origin: DateTime<Utc>,
}

#[derive(Debug, Default)]
struct Room {
    order: VecDeque<String>,
    entries: HashMap<String, Entry>,
}

/// What batches are keyed by.
pub trait BatchKey: Clone + Eq + std::hash::Hash + Ord + std::fmt::Debug {}
impl<K: Clone + Eq + std::hash::Hash + Ord + std::fmt::Debug> BatchKey for K {}

#[derive(Debug)]
pub struct RoomBatches<K: BatchKey = Target> {
    chunk_size: usize,
    linger: Duration,
    rooms: HashMap<K, Room>,
    /// Rooms holding at least a full chunk, oldest first (may hold stale ids: checked on use).
    full: VecDeque<K>,
    full_set: HashSet<K>,
    /// (deadline of the room's oldest entry, room); stale items are skipped on use.
    deadlines: BinaryHeap<Reverse<(Instant, K)>>,
    /// Rooms with a re-kick at the front, in arrival order (stale ids checked on use).
    urgent: VecDeque<K>,
    pending: usize,
}

impl<K: BatchKey> RoomBatches<K> {
    pub fn new(chunk_size: usize, linger: Duration) -> RoomBatches<K> {
        RoomBatches {
            chunk_size: chunk_size.max(1),
            linger,
            rooms: HashMap::new(),
            full: VecDeque::new(),
            full_set: HashSet::new(),
            deadlines: BinaryHeap::new(),
            urgent: VecDeque::new(),
            pending: 0,
        }
    }

    /// Users waiting in all rooms.
    pub fn pending_users(&self) -> usize {
        self.pending
    }

    /// Rooms with at least one user waiting.
    pub fn open_rooms(&self) -> usize {
        self.rooms.len()
    }

    /// Adds a user on behalf of a verdict; returns false if the user was already waiting in this
    /// room (the verdict then shares that kick). `since` is when the user became due: linger
    /// counts from it.
    pub fn add(
        &mut self,
        room: &K,
        user_id: &str,
        claim: Claim,
        reason: Option<&Arc<str>>,
        origin: DateTime<Utc>,
        since: Instant,
    ) -> bool {
        let urgent = claim.reentry.is_some();
        let r = self.rooms.entry(room.clone()).or_default();
        if let Some(e) = r.entries.get_mut(user_id) {
            if !e.claims.iter().any(|c| c.same_work(&claim)) {
                e.claims.push(claim);
            }
            if urgent {
                self.hurry(room, user_id);
            }
            return false;
        }
        let now = since;
        if r.order.is_empty() {
            self.deadlines.push(Reverse((now + self.linger, room.clone())));
        }
        r.order.push_back(user_id.to_owned());
        r.entries.insert(
            user_id.to_owned(),
            Entry { user_id: user_id.to_owned(), claims: vec![claim], reason: reason.cloned(), since: now, origin },
        );
        self.pending += 1;
        if r.order.len() >= self.chunk_size && self.full_set.insert(room.clone()) {
            self.full.push_back(room.clone());
        }
        if urgent {
            self.hurry(room, user_id);
        }
        true
    }

    /// Puts a re-kick first: at the front of its room, its room first in [`Self::ready`], due now.
    fn hurry(&mut self, room: &K, user_id: &str) {
        let Some(r) = self.rooms.get_mut(room) else { return };
        r.order.retain(|u| u != user_id);
        r.order.push_front(user_id.to_owned());
        if let Some(e) = r.entries.get(user_id) {
            // The front changed: its deadline goes on the heap (the old one is skipped as stale).
            self.deadlines.push(Reverse((e.since + self.linger, room.clone())));
        }
        self.urgent.push_back(room.clone());
    }

    fn has_urgent_front(&self, room: &K) -> bool {
        let Some(r) = self.rooms.get(room) else { return false };
        r.order.front().and_then(|u| r.entries.get(u)).is_some_and(|e| e.claims.iter().any(|c| c.reentry.is_some()))
    }

    fn front_deadline(&self, room: &K) -> Option<Instant> {
        let r = self.rooms.get(room)?;
        let first = r.order.front()?;
        r.entries.get(first).map(|e| e.since + self.linger)
    }

    /// The room to serve next, or `None` if nothing is due at `now`:
    /// 0. a room with a re-kick waiting (a banned user came back), at once, linger or not;
    /// 1. a room holding a full chunk (oldest first);
    /// 2. a room whose linger expired more than [`STARVED`] ago (oldest first), so no room waits
    ///    without bound;
    /// 3. among rooms whose linger expired, the one with the most users. When the quota is the
    ///    bottleneck every room is past its linger; serving the oldest would send a stream of
    ///    near-empty calls and waste the quota, serving the fullest keeps calls full.
    pub fn ready(&mut self, now: Instant) -> Option<K> {
        // 0. A re-kick goes before everything: a banned user is in the room now.
        while let Some(room) = self.urgent.front() {
            if self.has_urgent_front(room) {
                return Some(room.clone());
            }
            self.urgent.pop_front();
        }
        while let Some(room) = self.full.front() {
            if self.rooms.get(room).is_some_and(|r| r.order.len() >= self.chunk_size) {
                return Some(room.clone());
            }
            let room = self.full.pop_front()?;
            self.full_set.remove(&room);
        }
        self.skip_stale_deadlines();
        let (oldest_deadline, oldest) = match self.deadlines.peek() {
            Some(Reverse((deadline, room))) if *deadline <= now => (*deadline, room.clone()),
            _ => return None,
        };
        if now.duration_since(oldest_deadline) >= STARVED {
            return Some(oldest);
        }
        self.rooms
            .iter()
            .filter(|(room, _)| self.front_deadline(room).is_some_and(|d| d <= now))
            .max_by_key(|(_, r)| r.order.len())
            .map(|(room, _)| room.clone())
    }

    fn skip_stale_deadlines(&mut self) {
        while let Some(Reverse((deadline, room))) = self.deadlines.peek() {
            if self.front_deadline(room) == Some(*deadline) {
                break;
            }
            self.deadlines.pop();
        }
    }

    /// When the next room's linger expires, if any room is waiting.
    pub fn next_deadline(&mut self) -> Option<Instant> {
        self.skip_stale_deadlines();
        self.deadlines.peek().map(|Reverse((d, _))| *d)
    }

    /// Cuts up to one chunk from `room`, oldest users first.
    pub fn take(&mut self, room: &K) -> Vec<Entry> {
        let Some(r) = self.rooms.get_mut(room) else { return Vec::new() };
        let n = r.order.len().min(self.chunk_size);
        let chunk: Vec<Entry> = r.order.drain(..n).filter_map(|u| r.entries.remove(&u)).collect();
        self.pending -= chunk.len();
        let remaining_front = r.order.front().and_then(|u| r.entries.get(u)).map(|e| e.since);
        let still_full = r.order.len() >= self.chunk_size;
        if r.order.is_empty() {
            self.rooms.remove(room);
        }
        if let Some(since) = remaining_front {
            self.deadlines.push(Reverse((since + self.linger, room.clone())));
        }
        if !still_full && self.full_set.remove(room) {
            self.full.retain(|x| x != room);
        }
        chunk
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(id: &str) -> Claim {
        Claim::new(id)
    }

    fn room(s: &str) -> RoomId {
        RoomId::Text(s.into())
    }

    fn users(chunk: &[Entry]) -> Vec<&str> {
        chunk.iter().map(|e| e.user_id.as_str()).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_chunk_is_ready_at_once_and_a_partial_one_after_linger() {
        let mut b = RoomBatches::<RoomId>::new(5, Duration::from_millis(25));
        let t0 = Instant::now();
        for u in ["a", "b", "c"] {
            b.add(&room("r1"), u, v("v1"), None, Utc::now(), t0);
        }
        assert_eq!(b.ready(t0), None);
        assert_eq!(b.next_deadline(), Some(t0 + Duration::from_millis(25)));
        for u in ["d", "e", "f"] {
            b.add(&room("r2"), u, v("v2"), None, Utc::now(), t0);
        }
        b.add(&room("r2"), "g", v("v3"), None, Utc::now(), t0);
        b.add(&room("r2"), "h", v("v3"), None, Utc::now(), t0);
        assert_eq!(b.ready(t0), Some(room("r2")), "full chunk first");
        assert_eq!(users(&b.take(&room("r2"))), ["d", "e", "f", "g", "h"]);
        assert_eq!(b.ready(t0), None);

        tokio::time::advance(Duration::from_millis(25)).await;
        let now = Instant::now();
        assert_eq!(b.ready(now), Some(room("r1")));
        assert_eq!(users(&b.take(&room("r1"))), ["a", "b", "c"]);
        assert_eq!(b.ready(now), None);
        assert_eq!(b.next_deadline(), None);
        assert_eq!((b.pending_users(), b.open_rooms()), (0, 0));
    }

    #[test]
    fn the_same_user_pending_twice_in_a_room_is_sent_once_for_both_verdicts() {
        let mut b = RoomBatches::<RoomId>::new(10, Duration::ZERO);
        let now = Instant::now();
        assert!(b.add(&room("r"), "u", v("v1"), None, Utc::now(), now));
        assert!(!b.add(&room("r"), "u", v("v2"), None, Utc::now(), now));
        assert!(b.add(&room("other"), "u", v("v2"), None, Utc::now(), now), "another room is another kick");
        let chunk = b.take(&room("r"));
        assert_eq!(chunk.len(), 1);
        assert_eq!(chunk[0].claims, [v("v1"), v("v2")]);
        assert_eq!(b.pending_users(), 1);
    }

    #[test]
    fn numeric_and_string_rooms_with_the_same_digits_are_different_batches() {
        let mut b = RoomBatches::<RoomId>::new(10, Duration::ZERO);
        let now = Instant::now();
        b.add(&RoomId::Numeric(1234), "u", v("v1"), None, Utc::now(), now);
        b.add(&RoomId::Text("1234".into()), "u", v("v2"), None, Utc::now(), now);
        assert_eq!(b.open_rooms(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn after_a_chunk_is_cut_the_rest_keeps_its_own_arrival_time() {
        let mut b = RoomBatches::<RoomId>::new(2, Duration::from_millis(25));
        let t0 = Instant::now();
        b.add(&room("r"), "a", v("v"), None, Utc::now(), t0);
        tokio::time::advance(Duration::from_millis(10)).await;
        let t1 = Instant::now();
        b.add(&room("r"), "b", v("v"), None, Utc::now(), t1);
        b.add(&room("r"), "c", v("v"), None, Utc::now(), t1);
        assert_eq!(users(&b.take(&room("r"))), ["a", "b"]);
        assert_eq!(b.next_deadline(), Some(t1 + Duration::from_millis(25)), "c's own deadline");
        assert_eq!(b.ready(t1), None);
        assert_eq!(b.ready(t1 + Duration::from_millis(25)), Some(room("r")));
    }

    #[tokio::test(start_paused = true)]
    async fn among_expired_rooms_the_fullest_goes_first_until_one_starves() {
        let mut b = RoomBatches::<RoomId>::new(5, Duration::from_millis(25));
        let t0 = Instant::now();
        b.add(&room("small"), "1", v("v"), None, Utc::now(), t0);
        for u in ["1", "2", "3"] {
            b.add(&room("big"), u, v("v"), None, Utc::now(), t0 + Duration::from_millis(5));
        }
        let t1 = t0 + Duration::from_millis(40);
        assert_eq!(b.ready(t1), Some(room("big")), "3 users beat 1 when both are due");
        b.take(&room("big"));
        for u in ["4", "5", "6"] {
            b.add(&room("big2"), u, v("v"), None, Utc::now(), t1);
        }
        let late = t0 + Duration::from_millis(25) + STARVED;
        assert_eq!(b.ready(late), Some(room("small")), "a starved room goes first");
    }

    #[test]
    fn a_rekick_goes_first_and_at_the_front_of_its_room_whatever_else_is_full_or_due() {
        let mut b = RoomBatches::<RoomId>::new(2, Duration::from_secs(60));
        let now = Instant::now();
        for u in ["1", "2", "3"] {
            b.add(&room("busy"), u, v("v"), None, Utc::now(), now);
        }
        for u in ["a", "b"] {
            b.add(&room("r"), u, v("v2"), None, Utc::now(), now);
        }
        b.add(&room("r"), "z", v("v2"), None, Utc::now(), now);
        let rekick = Claim { reentry: Some(7), ..v("v2") };
        assert!(!b.add(&room("r"), "z", rekick.clone(), None, Utc::now(), now), "z was waiting: the entry is shared");
        assert_eq!(b.ready(now), Some(room("r")), "before the older full room");
        let chunk = b.take(&room("r"));
        assert_eq!(users(&chunk), ["z", "a"]);
        assert_eq!(chunk[0].claims, [v("v2"), rekick], "the kick and the re-kick are both answered");
        assert_eq!(b.ready(now), Some(room("busy")), "then as before");
        b.add(&room("quiet"), "q", Claim { reentry: Some(8), ..v("v3") }, None, Utc::now(), now);
        assert_eq!(b.ready(now), Some(room("quiet")), "alone and long before its linger");
        assert_eq!(users(&b.take(&room("quiet"))), ["q"]);
        assert_eq!(b.ready(now), Some(room("busy")));
    }

    #[test]
    fn full_rooms_are_served_oldest_first() {
        let mut b = RoomBatches::<RoomId>::new(2, Duration::from_secs(60));
        let now = Instant::now();
        for r in ["x", "y"] {
            b.add(&room(r), "1", v("v"), None, Utc::now(), now);
            b.add(&room(r), "2", v("v"), None, Utc::now(), now);
            b.add(&room(r), "3", v("v"), None, Utc::now(), now);
        }
        assert_eq!(b.ready(now), Some(room("x")));
        b.take(&room("x"));
        assert_eq!(b.ready(now), Some(room("y")), "x has 1 left: not full, not due");
        b.take(&room("y"));
        assert_eq!(b.ready(now), None);
        assert_eq!(b.pending_users(), 2);
    }
}
