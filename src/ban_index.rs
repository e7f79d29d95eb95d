//! Every replica's own copy of *where* bans are open, so that the answer to nearly every check a
//! token server asks — "not banned" — comes from memory, with no round trip to PostgreSQL. On two
//! shared cores a round trip per check was most of the check's cost and all of its tail while a
//! backlog was being enforced (BENCHMARKS.md, *bans*).
//!
//! The copy is a set of 64-bit *fingerprints* of (vendor, app, place, user), one per open ban. It
//! only ever says "certainly not banned" or "ask PostgreSQL": a check whose fingerprint is here
//! goes to PostgreSQL as before, which holds the ban's details and is the authority on lifts and
//! ends. So a ban lifted or run out is never answered from here, and a stale entry (or a
//! fingerprint collision, p ≈ 2⁻⁴⁴ per check at a million bans) costs a round trip, never a wrong
//! answer.
//!
//! How it stays whole — a ban missing from the copy would be answered "not banned":
//! - Intake adds the fingerprints of the bans it records to its own process's copy *before* its
//!   transaction commits, and announces them on `keys::BANS_CHANNEL` in that transaction (PostgreSQL
//!   delivers the notification to every listener at commit, never for a rolled-back one). A ban is
//!   seen by the checks of the replica that recorded it from the moment its verdict is recorded,
//!   and by the other replicas' when the notification arrives (about a millisecond after commit;
//!   the kick itself goes out later than that).
//! - Each replica LISTENs first, then loads the fingerprint of every open ban. A ban committed
//!   between the two is in both, which is harmless; one committed after the load began arrives
//!   as a notification.
//! - Until its first load is done, and from the moment its LISTEN connection is lost (a
//!   notification may have been missed) until it has loaded again, the copy is *not ready*: every
//!   check goes to PostgreSQL. Without a session connection (behind a transaction pooler without
//!   `postgres.direct_url`) it is never ready.
//! - It is loaded again every [`RELOAD_EVERY`], which drops the bans lifted or run out meanwhile.
//!
//! Fingerprints are the first 8 bytes of SHA-256 over an unambiguous encoding, computed by
//! PostgreSQL for the load ([`ban_fingerprint_sql!`](crate::ban_fingerprint_sql)) and by Rust for lookups and intake
//! ([`fingerprint`]); a test holds the two equal. SHA-256 so that it is the same on every replica
//! and release, and so that a hostile user id cannot be made to collide with a banned one.
//!
//! Memory: 8 bytes per open ban in one sorted array (a million bans: 8 MB), plus the bans
//! recorded since the last load in a hash set.

use std::collections::HashSet;
use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sha2::{Digest, Sha256};

/// How often the copy is loaded again, dropping lifted and ended bans (until then their users'
/// checks cost a round trip). Loading a million bans costs PostgreSQL about a second of one core.
pub const RELOAD_EVERY: Duration = Duration::from_secs(15 * 60);

/// Most fingerprints in one notification: 17 bytes each (16 hex digits and a comma) within
/// PostgreSQL's 8,000-byte payload limit.
pub(crate) const PER_NOTIFICATION: usize = 450;

/// PostgreSQL's fingerprint of a `bans` row, as a `bigint` (the same bits as [`fingerprint`]'s
/// `u64`). Bytes: vendor, NUL, app id in decimal, NUL, place (`app`, or `room:n:` / `room:s:` and
/// the room for a numeric / string room), NUL, user id. Ids cannot hold NUL (rule
/// `nul_character`), so the encoding is unambiguous. A macro, to be spliced into statements.
#[macro_export]
macro_rules! ban_fingerprint_sql {
    () => {
        "('x' || encode(substring(sha256(
            convert_to(vendor, 'UTF8') || '\\x00'::bytea || convert_to(app_id::text, 'UTF8') || '\\x00'::bytea
            || convert_to(CASE WHEN scope = 'app' THEN 'app'
                               ELSE 'room:' || CASE WHEN room_id_numeric THEN 'n' ELSE 's' END || ':' || room_id END,
                          'UTF8')
            || '\\x00'::bytea || convert_to(user_id, 'UTF8')) FROM 1 FOR 8), 'hex'))::bit(64)::bigint"
    };
}

/// Where a ban holds: the whole app, or one room (its text and whether it is a numeric TRTC room).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Place<'a> {
    App,
    Room { text: &'a str, numeric: bool },
}

/// The fingerprint of a ban of `user_id` in `place` of the app.
pub fn fingerprint(vendor: &str, app_id: i64, place: Place<'_>, user_id: &str) -> u64 {
    let mut h = Sha256::new();
    h.update(vendor.as_bytes());
    h.update([0]);
    h.update(app_id.to_string().as_bytes());
    h.update([0]);
    match place {
        Place::App => h.update(b"app"),
        Place::Room { text, numeric } => {
            h.update(if numeric { b"room:n:" } else { b"room:s:" });
            h.update(text.as_bytes());
        }
    }
    h.update([0]);
    h.update(user_id.as_bytes());
    let digest = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

/// The notifications announcing `fingerprints`: comma-separated hex, at most
/// [`PER_NOTIFICATION`] each.
pub(crate) fn payloads(fingerprints: &[u64]) -> Vec<String> {
    fingerprints
        .chunks(PER_NOTIFICATION)
        .map(|c| c.iter().map(|f| format!("{f:016x}")).collect::<Vec<_>>().join(","))
        .collect()
}

/// The fingerprints a notification carries (anything unreadable is skipped: only Bouncer sends
/// on the channel, and a fingerprint too many costs a round trip).
pub(crate) fn parse(payload: &str) -> impl Iterator<Item = u64> + '_ {
    payload.split(',').filter_map(|h| u64::from_str_radix(h.trim(), 16).ok())
}

/// What the copy says of a check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// No open ban of the user holds there.
    NotBanned,
    /// A ban may hold, or the copy is not ready: PostgreSQL answers.
    Ask,
}

/// The copy. Shared by the process's intake (which adds what it records), its follower (which
/// loads and applies notifications) and its API (which reads).
#[derive(Default)]
pub struct BanIndex {
    ready: AtomicBool,
    sets: RwLock<Sets>,
}

#[derive(Default)]
struct Sets {
    /// Every open ban as of the last load, sorted.
    loaded: Vec<u64>,
    /// Added since the last load began.
    recent: HashSet<u64>,
    /// While a load runs: what was added before it began (it may have committed after the load's
    /// snapshot; its notification, if so, comes after and lands in `recent`).
    before_load: HashSet<u64>,
}

impl BanIndex {
    pub fn new() -> BanIndex {
        metrics::gauge!("bouncer_ban_index_ready").set(0.0);
        BanIndex::default()
    }

    /// Whether the copy answers now.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    pub(crate) fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
        metrics::gauge!("bouncer_ban_index_ready").set(if ready { 1.0 } else { 0.0 });
    }

    /// What the copy says of `user_id` in the app: with no room, only app bans count; with a
    /// room, app bans and that room's (a room of unknown kind: either kind's).
    pub fn lookup(&self, vendor: &str, app_id: i64, user_id: &str, room: Option<(&str, Option<bool>)>) -> Lookup {
        if !self.is_ready() {
            return Lookup::Ask;
        }
        // At most three places (the app, and a room of either kind), hashed before the lock.
        let app = fingerprint(vendor, app_id, Place::App, user_id);
        let in_room = |text, numeric| Some(fingerprint(vendor, app_id, Place::Room { text, numeric }, user_id));
        let prints = match room {
            None => [Some(app), None, None],
            Some((text, Some(numeric))) => [Some(app), in_room(text, numeric), None],
            Some((text, None)) => [Some(app), in_room(text, false), in_room(text, true)],
        };
        let sets = self.sets.read().unwrap_or_else(|e| e.into_inner());
        let held = prints.into_iter().flatten().any(|f| sets.holds(f));
        if held { Lookup::Ask } else { Lookup::NotBanned }
    }

    /// Adds bans (intake, before its commit; the follower, from notifications).
    pub fn add(&self, fingerprints: impl IntoIterator<Item = u64>) {
        let mut sets = self.sets.write().unwrap_or_else(|e| e.into_inner());
        sets.recent.extend(fingerprints);
        metrics::gauge!("bouncer_ban_index_entries").set((sets.loaded.len() + sets.recent.len()) as f64);
    }

    /// A load begins: what was added so far is kept for lookups until the load is in.
    pub(crate) fn begin_load(&self) {
        let mut sets = self.sets.write().unwrap_or_else(|e| e.into_inner());
        let recent = std::mem::take(&mut sets.recent);
        sets.before_load.extend(recent);
    }

    /// The load is in: it replaces what was loaded before and what was added before it began.
    pub(crate) fn finish_load(&self, mut loaded: Vec<u64>) {
        loaded.sort_unstable();
        loaded.dedup();
        loaded.shrink_to_fit();
        let mut sets = self.sets.write().unwrap_or_else(|e| e.into_inner());
        sets.loaded = loaded;
        sets.before_load = HashSet::new();
        metrics::gauge!("bouncer_ban_index_entries").set((sets.loaded.len() + sets.recent.len()) as f64);
        drop(sets);
        self.set_ready(true);
    }
}

impl Sets {
    fn holds(&self, f: u64) -> bool {
        self.recent.contains(&f) || self.before_load.contains(&f) || self.loaded.binary_search(&f).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready_with(bans: &[u64]) -> BanIndex {
        let index = BanIndex::new();
        index.begin_load();
        index.finish_load(bans.to_vec());
        index
    }

    #[test]
    fn a_copy_not_yet_loaded_sends_every_check_to_postgres() {
        let index = BanIndex::new();
        assert_eq!(index.lookup("zego", 1, "u1", None), Lookup::Ask);
    }

    #[test]
    fn a_room_ban_holds_in_its_room_of_either_kind_asked_and_not_elsewhere() {
        let ban = fingerprint("trtc", 7, Place::Room { text: "1234", numeric: true }, "u1");
        let index = ready_with(&[ban]);
        assert_eq!(index.lookup("trtc", 7, "u1", Some(("1234", Some(true)))), Lookup::Ask);
        assert_eq!(index.lookup("trtc", 7, "u1", Some(("1234", None))), Lookup::Ask, "either kind");
        assert_eq!(index.lookup("trtc", 7, "u1", Some(("1234", Some(false)))), Lookup::NotBanned, "the string room");
        assert_eq!(index.lookup("trtc", 7, "u1", None), Lookup::NotBanned, "without a room only app bans count");
        assert_eq!(index.lookup("trtc", 8, "u1", Some(("1234", Some(true)))), Lookup::NotBanned, "another app");
        assert_eq!(index.lookup("zego", 7, "u1", Some(("1234", Some(true)))), Lookup::NotBanned, "another vendor");
        assert_eq!(index.lookup("trtc", 7, "u2", Some(("1234", Some(true)))), Lookup::NotBanned, "another user");
    }

    #[test]
    fn an_app_ban_holds_everywhere_in_the_app() {
        let index = ready_with(&[fingerprint("zego", 7, Place::App, "u1")]);
        assert_eq!(index.lookup("zego", 7, "u1", None), Lookup::Ask);
        assert_eq!(index.lookup("zego", 7, "u1", Some(("any", Some(false)))), Lookup::Ask);
    }

    #[test]
    fn fields_cannot_run_into_each_other() {
        let a = fingerprint("zego", 1, Place::Room { text: "a", numeric: false }, "b");
        let b = fingerprint("zego", 1, Place::Room { text: "a\0b", numeric: false }, "");
        let c = fingerprint("zego", 11, Place::App, "x");
        let d = fingerprint("zego", 1, Place::App, "1x");
        assert_ne!(a, b);
        assert_ne!(c, d);
    }

    #[test]
    fn a_ban_added_before_or_during_a_load_is_kept_and_the_load_drops_what_it_does_not_hold() {
        let (old, during, before) = (
            fingerprint("zego", 1, Place::App, "old"),
            fingerprint("zego", 1, Place::App, "during"),
            fingerprint("zego", 1, Place::App, "before"),
        );
        let index = ready_with(&[old]);
        index.add([before]);
        index.begin_load();
        assert_eq!(index.lookup("zego", 1, "before", None), Lookup::Ask, "kept while the load runs");
        index.add([during]);
        // The load saw `before` committed; `old` has ended.
        index.finish_load(vec![before]);
        assert_eq!(index.lookup("zego", 1, "before", None), Lookup::Ask);
        assert_eq!(index.lookup("zego", 1, "during", None), Lookup::Ask, "added during the load");
        assert_eq!(index.lookup("zego", 1, "old", None), Lookup::NotBanned, "ended before the load");
    }

    #[test]
    fn notifications_carry_every_fingerprint_within_the_payload_limit() {
        let all: Vec<u64> = (0..1000u64).map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15)).collect();
        let payloads = payloads(&all);
        assert_eq!(payloads.len(), 3);
        assert!(payloads.iter().all(|p| p.len() < 8000));
        let back: Vec<u64> = payloads.iter().flat_map(|p| parse(p)).collect();
        assert_eq!(back, all);
    }
}
