//! The keys stages pass each other, as types: an app ([`AppKey`]), a verdict ([`VerdictId`]), one
//! user of a verdict ([`KickKey`]), and the wake-up note on PostgreSQL's notification channels
//! ([`WakeNote`]), written and read by the same type. A leaf beside `vendors`.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;

use crate::vendors::Vendor;

/// The channel new work is announced on, with a [`WakeNote`] as payload.
pub const WORK_CHANNEL: &str = "bouncer_work";
/// The channel lease releases are announced on (payload: the quota group), so contenders look at
/// once.
pub const OWNERS_CHANNEL: &str = "bouncer_owners";
/// The channel new bans are announced on (payload: their fingerprints, `ban_index`), so every
/// replica's copy of where bans hold learns of them at commit.
pub const BANS_CHANNEL: &str = "bouncer_bans";

/// One configured app of one vendor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AppKey {
    pub vendor: Vendor,
    pub app_id: u32,
}

impl AppKey {
    pub fn new(vendor: Vendor, app_id: u32) -> AppKey {
        AppKey { vendor, app_id }
    }
}

impl fmt::Display for AppKey {
    /// `<vendor>:<app id>`, as notes and logs show it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.vendor, self.app_id)
    }
}

/// A verdict's id, as the publisher gave it (cheap to clone: lanes hold it once per batch entry).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VerdictId(Arc<str>);

impl VerdictId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<&str> for VerdictId {
    fn from(s: &str) -> VerdictId {
        VerdictId(Arc::from(s))
    }
}

impl From<String> for VerdictId {
    fn from(s: String) -> VerdictId {
        VerdictId(Arc::from(s))
    }
}

impl fmt::Display for VerdictId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::ops::Deref for VerdictId {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

/// One user of one verdict: a `kicks` row; or, with `reentry`, the re-kick of a banned user who
/// came back (a `reentries` row, on behalf of the verdict whose ban held).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct KickKey {
    pub verdict_id: VerdictId,
    pub user_id: String,
    pub reentry: Option<i64>,
}

impl KickKey {
    pub fn new(verdict_id: impl Into<VerdictId>, user_id: impl Into<String>) -> KickKey {
        KickKey { verdict_id: verdict_id.into(), user_id: user_id.into(), reentry: None }
    }

    /// A row of either table: `reentry` names a `reentries` row.
    pub fn of(verdict_id: impl Into<VerdictId>, user_id: impl Into<String>, reentry: Option<i64>) -> KickKey {
        KickKey { verdict_id: verdict_id.into(), user_id: user_id.into(), reentry }
    }
}

/// Which apps have new work, and who announced it: `<from>|<vendor>:<app id>,…`, or `<from>|*`
/// (every lane looks) when the list would not fit PostgreSQL's payload limit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WakeNote {
    /// The announcing worker (its own lanes were woken in-process), or `replay`.
    pub from: String,
    /// `None`: every app.
    pub apps: Option<BTreeSet<AppKey>>,
}

/// Longest payload sent; PostgreSQL refuses 8000 bytes and more.
const MAX_PAYLOAD: usize = 7_000;

impl WakeNote {
    pub fn new(from: &str, apps: impl IntoIterator<Item = AppKey>) -> WakeNote {
        WakeNote { from: from.to_owned(), apps: Some(apps.into_iter().collect()) }
    }

    /// The notification payload.
    pub fn payload(&self) -> String {
        let everyone = || format!("{}|*", self.from);
        let Some(apps) = &self.apps else { return everyone() };
        let list: Vec<String> = apps.iter().map(AppKey::to_string).collect();
        let joined = list.join(",");
        if joined.len() + self.from.len() + 1 > MAX_PAYLOAD { everyone() } else { format!("{}|{joined}", self.from) }
    }

    /// Reads a payload; entries that name no known vendor or no app id are skipped.
    pub fn parse(payload: &str) -> Option<WakeNote> {
        let (from, apps) = payload.split_once('|')?;
        if apps == "*" {
            return Some(WakeNote { from: from.to_owned(), apps: None });
        }
        let apps = apps
            .split(',')
            .filter_map(|app| {
                let (vendor, id) = app.split_once(':')?;
                Some(AppKey::new(Vendor::parse(vendor)?, id.parse().ok()?))
            })
            .collect();
        Some(WakeNote { from: from.to_owned(), apps: Some(apps) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_note_lists_the_apps_or_says_everyone_and_reads_back() {
        let note = WakeNote::new("w1", [AppKey::new(Vendor::Zego, 1), AppKey::new(Vendor::Trtc, 2)]);
        assert_eq!(note.payload(), "w1|zego:1,trtc:2");
        assert_eq!(WakeNote::parse(&note.payload()), Some(note));
        let many = WakeNote::new("w1", (0..2000).map(|i| AppKey::new(Vendor::Zego, 1_000_000 + i)));
        assert_eq!(many.payload(), "w1|*");
        assert_eq!(WakeNote::parse("w1|*").and_then(|n| n.apps), None);
    }

    #[test]
    fn unknown_entries_are_skipped_and_a_payload_without_sender_is_no_note() {
        let note = WakeNote::parse("other|trtc:2,zego:x,agora:1,bogus").unwrap();
        assert_eq!(note.apps, Some([AppKey::new(Vendor::Trtc, 2)].into()));
        assert_eq!(WakeNote::parse("no separator"), None);
    }
}
