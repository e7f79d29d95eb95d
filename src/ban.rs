//! A ban: a verdict's users kept out of a room, or of every room of an app, for a time. The
//! verdict contract carries it (`ban`), intake records it in `bans` in the verdict's own
//! transaction (so it holds from the moment the verdict is recorded, before any kick is sent),
//! and the public API (`api`) answers token servers from it.

use std::fmt;

/// Longest ban a verdict may ask for: one year (365 days).
pub const MAX_BAN_SECONDS: u32 = 31_536_000;

/// Where a ban keeps its users out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BanScope {
    /// The verdict's room of its app.
    Room,
    /// Every room of the verdict's app.
    App,
}

impl BanScope {
    pub fn as_str(self) -> &'static str {
        match self {
            BanScope::Room => "room",
            BanScope::App => "app",
        }
    }

    pub fn parse(s: &str) -> Option<BanScope> {
        match s {
            "room" => Some(BanScope::Room),
            "app" => Some(BanScope::App),
            _ => None,
        }
    }
}

impl fmt::Display for BanScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a verdict asks beyond the kick: `{"seconds": N, "scope": "room" | "app"}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ban {
    /// 1 ..= [`MAX_BAN_SECONDS`], counted from when the verdict is recorded.
    pub seconds: u32,
    pub scope: BanScope,
}

/// Where a ban stands, as ops filter them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BanState {
    /// Keeps its users out now.
    Active,
    /// Ran its time.
    Expired,
    /// Ended early by a person or a token server.
    Lifted,
}

impl BanState {
    pub fn as_str(self) -> &'static str {
        match self {
            BanState::Active => "active",
            BanState::Expired => "expired",
            BanState::Lifted => "lifted",
        }
    }

    pub fn parse(s: &str) -> Option<BanState> {
        match s {
            "active" => Some(BanState::Active),
            "expired" => Some(BanState::Expired),
            "lifted" => Some(BanState::Lifted),
            _ => None,
        }
    }
}
