//! Every vendor Bouncer enforces through, registered once with the facts its documentation gives
//! (`shared/vendors/README.md`): its name (config section, metric label, CLI and console value),
//! the APIs each action calls with their limits, how its quotas group, its regions and clock skew.
//! Configuration defaults and checks, CLI value lists, console filters, metrics, the elector's
//! quota groups and the simulator's known vendors all read this list, so adding a vendor is a
//! registry entry, a client module under `vendor_api/` and its config section.
//!
//! A leaf: it names no other module of the crate.

use std::fmt;

/// The vendor whose API enforces a verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Vendor {
    Zego,
    Trtc,
}

/// What enforcing a verdict does to its users. Today every verdict kicks; an action is a dimension
/// of pending work, batches, quotas and attempts, so a ban or a mute lands beside it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum Action {
    #[default]
    Kick,
}

impl Action {
    pub const ALL: [Action; 1] = [Action::Kick];

    /// The name stored in `kicks.action` and shown in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Kick => "kick",
        }
    }

    pub fn parse(s: &str) -> Option<Action> {
        Action::ALL.into_iter().find(|a| a.as_str() == s)
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which rooms an API takes (TRTC has one API for numeric rooms, one for string rooms).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rooms {
    Any,
    Numeric,
    Text,
}

/// How a vendor's calls count against its limits, and so what one replica owns together.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuotaPlan {
    /// One quota per app id, shared by all its APIs (ZEGO: 50 calls/s per AppID).
    PerApp,
    /// One quota per account credential and API, shared by every app using the credential (TRTC:
    /// 20 calls/s per API; per SecretId is the safe reading of an undocumented scope). A replica
    /// owns every API of one credential together.
    PerCredentialAndApi,
}

/// One vendor API an action calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Api {
    pub action: Action,
    pub rooms: Rooms,
    /// The vendor's name for it (`Action=` / `X-TC-Action`), as recorded in `kick_attempts.action`.
    pub name: &'static str,
    pub max_calls_per_second: u32,
    pub max_users_per_call: usize,
}

/// What the vendor's documentation says.
#[derive(Clone, Copy, Debug)]
pub struct VendorFacts {
    pub vendor: Vendor,
    /// Lower case: the config section (`[[zego]]`), metric label, CLI and console value.
    pub name: &'static str,
    /// As people write it.
    pub title: &'static str,
    pub apis: &'static [Api],
    pub quota_plan: QuotaPlan,
    /// Regions the APIs are served in (empty: the vendor has none to choose).
    pub regions: &'static [&'static str],
    /// How far a signed timestamp may be from the vendor's clock.
    pub max_skew_secs: i64,
}

pub const ZEGO_KICKOUT_USER: Api = Api {
    action: Action::Kick,
    rooms: Rooms::Any,
    name: "KickoutUser",
    max_calls_per_second: 50,
    max_users_per_call: 5,
};
pub const TRTC_REMOVE_USER: Api = Api {
    action: Action::Kick,
    rooms: Rooms::Numeric,
    name: "RemoveUser",
    max_calls_per_second: 20,
    max_users_per_call: 10,
};
pub const TRTC_REMOVE_USER_BY_STR_ROOM_ID: Api = Api {
    action: Action::Kick,
    rooms: Rooms::Text,
    name: "RemoveUserByStrRoomId",
    max_calls_per_second: 20,
    max_users_per_call: 10,
};

/// A vendor API that keeps users out beyond a kick (a ban rule), with its own limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RuleApi {
    pub name: &'static str,
    pub max_calls_per_second: u32,
}

/// ZEGO's user ban rules (`shared/vendors/bans-and-callbacks.md` §1): each API has a limit of
/// its own per AppID, apart from `KickoutUser`'s.
pub const ZEGO_SET_FORBID_USER_RULE: RuleApi = RuleApi { name: "SetForbidUserRule", max_calls_per_second: 10 };
pub const ZEGO_DEL_FORBID_USER_RULE: RuleApi = RuleApi { name: "DelForbidUserRule", max_calls_per_second: 10 };
/// 1/s on the Chinese page, 10/s on the English one: the lower is the safe reading.
pub const ZEGO_DESCRIBE_FORBID_USER_RULES: RuleApi =
    RuleApi { name: "DescribeForbidUserRules", max_calls_per_second: 1 };
/// A ZEGO ban rule lives 1 ..= this many seconds (`EffectiveTime`).
pub const ZEGO_MAX_RULE_SECONDS: u32 = 86_400;
/// Rules in force per rule type and AppID: 100 by IP (type 1), 200 of each other type.
pub const ZEGO_MAX_IP_RULES: usize = 100;
pub const ZEGO_MAX_RULES_PER_TYPE: usize = 200;

pub const ZEGO: VendorFacts = VendorFacts {
    vendor: Vendor::Zego,
    name: "zego",
    title: "ZEGO",
    apis: &[ZEGO_KICKOUT_USER],
    quota_plan: QuotaPlan::PerApp,
    regions: &[],
    max_skew_secs: 600,
};
pub const TRTC: VendorFacts = VendorFacts {
    vendor: Vendor::Trtc,
    name: "trtc",
    title: "Tencent TRTC",
    apis: &[TRTC_REMOVE_USER, TRTC_REMOVE_USER_BY_STR_ROOM_ID],
    quota_plan: QuotaPlan::PerCredentialAndApi,
    regions: &["ap-beijing", "ap-guangzhou", "ap-singapore"],
    max_skew_secs: 300,
};

/// The registry, in the order lists show them.
pub const ALL: [&VendorFacts; 2] = [&ZEGO, &TRTC];

/// Every vendor's name, for CLI value lists and console filters.
pub const NAMES: [&str; 2] = [ZEGO.name, TRTC.name];

impl Vendor {
    pub fn facts(self) -> &'static VendorFacts {
        match self {
            Vendor::Zego => &ZEGO,
            Vendor::Trtc => &TRTC,
        }
    }

    pub fn as_str(self) -> &'static str {
        self.facts().name
    }

    pub fn parse(s: &str) -> Option<Vendor> {
        ALL.iter().find(|f| f.name == s).map(|f| f.vendor)
    }

    pub fn all() -> impl Iterator<Item = Vendor> {
        ALL.iter().map(|f| f.vendor)
    }
}

impl fmt::Display for Vendor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl VendorFacts {
    /// The API `action` calls for a room (numeric or not).
    pub fn api(&'static self, action: Action, numeric_room: bool) -> Option<&'static Api> {
        self.apis.iter().find(|a| {
            a.action == action
                && match a.rooms {
                    Rooms::Any => true,
                    Rooms::Numeric => numeric_room,
                    Rooms::Text => !numeric_room,
                }
        })
    }

    /// The most calls per second any of its APIs for `action` allows (the config's ceiling).
    pub fn max_calls_per_second(&self, action: Action) -> u32 {
        self.apis.iter().filter(|a| a.action == action).map(|a| a.max_calls_per_second).min().unwrap_or(1)
    }

    /// The most users one call for `action` may carry.
    pub fn max_users_per_call(&self, action: Action) -> usize {
        self.apis.iter().filter(|a| a.action == action).map(|a| a.max_users_per_call).min().unwrap_or(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_registry_holds_the_documented_limits() {
        assert_eq!((ZEGO.max_calls_per_second(Action::Kick), ZEGO.max_users_per_call(Action::Kick)), (50, 5));
        assert_eq!((TRTC.max_calls_per_second(Action::Kick), TRTC.max_users_per_call(Action::Kick)), (20, 10));
        assert_eq!(ZEGO.api(Action::Kick, false).map(|a| a.name), Some("KickoutUser"));
        assert_eq!(TRTC.api(Action::Kick, true).map(|a| a.name), Some("RemoveUser"));
        assert_eq!(TRTC.api(Action::Kick, false).map(|a| a.name), Some("RemoveUserByStrRoomId"));
    }

    #[test]
    fn names_read_back_and_every_vendor_is_listed_once() {
        for v in Vendor::all() {
            assert_eq!(Vendor::parse(v.as_str()), Some(v));
            assert_eq!(v.facts().vendor, v);
        }
        assert_eq!(NAMES, ["zego", "trtc"]);
        assert_eq!(Vendor::parse("agora"), None);
        assert_eq!(Action::parse("kick"), Some(Action::Kick));
    }
}
