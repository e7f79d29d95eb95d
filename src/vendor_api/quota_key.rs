//! A vendor quota by name. The simulator counts calls against `zego:<AppID>` and
//! `trtc:<SecretId>:<Action>` (the vendors' documented limits, read safely), and replicas own
//! them in groups named `zego:<AppID>` and `trtc:<SecretId>` (`quota_owners.quota_group`). One
//! type writes and reads both forms, so the benchmark's reading of the simulator's labels and the
//! elector's group names cannot drift apart.

use std::fmt;

use super::{trtc, zego};
use crate::verdict::Vendor;

/// One quota the vendor enforces.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum QuotaKey {
    /// A ZEGO AppID: 50 calls per second.
    Zego { app_id: u32 },
    /// A TRTC SecretId and action: 20 calls per second.
    Trtc { secret_id: String, action: String },
}

impl QuotaKey {
    /// Reads `zego:<AppID>` or `trtc:<SecretId>:<Action>`.
    pub fn parse(s: &str) -> Option<QuotaKey> {
        if let Some(app) = s.strip_prefix("zego:") {
            return app.parse().ok().map(|app_id| QuotaKey::Zego { app_id });
        }
        let (secret_id, action) = s.strip_prefix("trtc:")?.split_once(':')?;
        (!secret_id.is_empty() && !action.is_empty())
            .then(|| QuotaKey::Trtc { secret_id: secret_id.to_owned(), action: action.to_owned() })
    }

    pub fn vendor(&self) -> Vendor {
        match self {
            QuotaKey::Zego { .. } => Vendor::Zego,
            QuotaKey::Trtc { .. } => Vendor::Trtc,
        }
    }

    /// The name of the group a replica owns it in.
    pub fn group(&self) -> String {
        match self {
            QuotaKey::Zego { app_id } => Self::zego_group(*app_id),
            QuotaKey::Trtc { secret_id, .. } => Self::trtc_group(secret_id),
        }
    }

    /// `zego:<AppID>`: a ZEGO quota is its own group.
    pub fn zego_group(app_id: u32) -> String {
        format!("zego:{app_id}")
    }

    /// `trtc:<SecretId>`: every app and both actions that use one SecretId.
    pub fn trtc_group(secret_id: &str) -> String {
        format!("trtc:{secret_id}")
    }

    /// The vendor's documented calls per second.
    pub fn max_calls_per_second(&self) -> u32 {
        match self {
            QuotaKey::Zego { .. } => zego::MAX_CALLS_PER_SECOND,
            QuotaKey::Trtc { .. } => trtc::MAX_CALLS_PER_SECOND,
        }
    }

    /// The vendor's documented users per call.
    pub fn max_users_per_call(&self) -> usize {
        match self {
            QuotaKey::Zego { .. } => zego::MAX_USERS_PER_CALL,
            QuotaKey::Trtc { .. } => trtc::MAX_USERS_PER_CALL,
        }
    }
}

impl fmt::Display for QuotaKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QuotaKey::Zego { app_id } => write!(f, "zego:{app_id}"),
            QuotaKey::Trtc { secret_id, action } => write!(f, "trtc:{secret_id}:{action}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_read_back_as_written_and_group_as_the_elector_owns_them() {
        let zego = QuotaKey::Zego { app_id: 1_234_567_890 };
        let trtc = QuotaKey::Trtc { secret_id: "AKID1".into(), action: trtc::ACTION_STRING.into() };
        for q in [&zego, &trtc] {
            assert_eq!(QuotaKey::parse(&q.to_string()).as_ref(), Some(q));
        }
        assert_eq!(trtc.to_string(), "trtc:AKID1:RemoveUserByStrRoomId");
        assert_eq!((zego.group(), trtc.group()), ("zego:1234567890".to_owned(), "trtc:AKID1".to_owned()));
        assert_eq!((zego.max_calls_per_second(), trtc.max_calls_per_second()), (50, 20));
        assert_eq!((zego.max_users_per_call(), trtc.max_users_per_call()), (5, 10));
        for bad in ["zego:unknown", "trtc:unknown", "trtc::RemoveUser", "agora:1", "zego:"] {
            assert_eq!(QuotaKey::parse(bad), None, "{bad}");
        }
    }
}
