//! `[retention]`: how long the audit trail keeps each kind of row (README, "Retention and
//! rollups"). Days per kind; `0` keeps that kind forever.

use serde::Serialize;

use super::*;

/// The longest window a key accepts: ten years (a longer one is a typo for 0).
const MAX_DAYS: u32 = 3650;

/// `[retention]` as written in the file.
#[derive(Deserialize, Serialize, Clone)]
#[serde(deny_unknown_fields, default)]
pub struct FileRetention {
    /// Finished verdicts with their kicks, vendor calls, replays, re-entries and confirmations.
    pub verdicts_days: u32,
    /// Rejected (dead-lettered) messages.
    pub rejected_days: u32,
    /// Bans, counted from when they ended (lifted or expired).
    pub bans_days: u32,
    /// The per-minute rollups the console's overview reads.
    pub rollups_days: u32,
}

impl Default for FileRetention {
    fn default() -> Self {
        FileRetention { verdicts_days: 90, rejected_days: 30, bans_days: 365, rollups_days: 400 }
    }
}

/// One kind's window: `None` keeps it forever.
pub type Window = Option<chrono::Duration>;

/// `[retention]`, validated.
#[derive(Clone, Debug)]
pub struct RetentionConfig {
    pub verdicts: Window,
    pub rejected: Window,
    pub bans: Window,
    pub rollups: Window,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        validate_retention(FileRetention::default(), &mut Vec::new())
    }
}

pub(super) fn validate_retention(f: FileRetention, p: &mut Vec<Problem>) -> RetentionConfig {
    let mut window = |key: &str, days: u32| -> Window {
        if days > MAX_DAYS {
            p.push(problem(key, format!("must be 0 (keep forever) to {MAX_DAYS} days")));
        }
        (days > 0).then(|| chrono::Duration::days(days.into()))
    };
    RetentionConfig {
        verdicts: window("retention.verdicts_days", f.verdicts_days),
        rejected: window("retention.rejected_days", f.rejected_days),
        bans: window("retention.bans_days", f.bans_days),
        rollups: window("retention.rollups_days", f.rollups_days),
    }
}
