//! A ban: a verdict's users kept out of a room, or of every room of an app, for a time. The
//! verdict contract carries it (`ban`), intake records it in `bans` in the verdict's own
//! transaction (so it holds from the moment the verdict is recorded, before any kick is sent),
//! and the public API (`api`) answers token servers from it.

/// Longest ban a verdict may ask for: one year (365 days).
pub const MAX_BAN_SECONDS: u32 = 31_536_000;

pub use crate::states::{BanScope, BanState, RuleState};

/// What a verdict asks beyond the kick: `{"seconds": N, "scope": "room" | "app"}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ban {
    /// 1 ..= [`MAX_BAN_SECONDS`], counted from when the verdict is recorded.
    pub seconds: u32,
    pub scope: BanScope,
}
