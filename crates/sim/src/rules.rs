//! ZEGO user ban rules as the simulator keeps them: `SetForbidUserRule`, `DelForbidUserRule` and
//! `DescribeForbidUserRules` with the documented parameters, ranges, limits and return codes
//! (`shared/vendors/bans-and-callbacks.md` §1), off unless an app enables them
//! (`[[zego]] forbid_rules = true` in the simulator's configuration).
//!
//! Where the documentation is silent the simulator takes one reading and says so: a Set on a key
//! that has a rule replaces it (and does not count as one more rule); deleting a key without a rule
//! succeeds; expired rules are kept (Describe lists them) for an hour after they end.

use std::time::Duration;

use serde::Serialize;
use serde_json::{Value, json};

use bouncer::vendors::{RuleApi, ZEGO_MAX_IP_RULES, ZEGO_MAX_RULE_SECONDS, ZEGO_MAX_RULES_PER_TYPE};

use crate::call::{Call, Refusal, zego_no};
use crate::faults::Faults;
use crate::{Sim, lock};

/// Expired rules are forgotten this long after they end.
const KEEP_EXPIRED: Duration = Duration::from_secs(3600);

/// One rule as ZEGO would list it.
#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct SimRule {
    pub app_id: u32,
    pub rule_type: u32,
    pub ip: String,
    pub room_id: String,
    pub user_id: String,
    pub disabled_privileges: Vec<u32>,
    /// Unix seconds.
    pub expire_time: i64,
}

impl SimRule {
    fn key(&self) -> (u32, &str, &str, &str) {
        (self.rule_type, &self.ip, &self.room_id, &self.user_id)
    }
}

fn bad(message: &str) -> Refusal {
    zego_no(2, message.to_owned(), "bad_params")
}

impl Sim {
    /// A rule call whose signature, timestamp and rate were checked already.
    pub(crate) fn zego_rule(
        &self,
        api: &RuleApi,
        params: &[(String, String)],
        call: &mut Call,
        f: &Faults,
    ) -> Result<Option<Value>, Refusal> {
        let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str()).filter(|v| !v.is_empty());
        if !self.forbid_enabled.contains(&call.app_id) || f.rules_not_enabled {
            return Err(zego_no(9, "API permission not enabled, contact ZEGO support", "rules_not_enabled"));
        }
        let rule_type: u32 = get("RuleType")
            .and_then(|t| t.parse().ok())
            .filter(|t| (1..=4).contains(t))
            .ok_or_else(|| bad("RuleType must be 1..4"))?;
        // Describe takes the type alone; Set and Del address a rule by its type and key.
        let keyed = api.name != "DescribeForbidUserRules";
        let need = |k: &str, when: bool| -> Result<String, Refusal> {
            if !(when && keyed) {
                return Ok(String::new());
            }
            get(k).map(str::to_owned).ok_or_else(|| bad(&format!("{k} is required for RuleType {rule_type}")))
        };
        let ip = need("IP", rule_type == 1)?;
        let room_id = need("RoomId", rule_type == 2 || rule_type == 4)?;
        let user_id = need("UserId", rule_type == 3 || rule_type == 4)?;
        call.room_id = room_id.clone();
        call.user_ids = if user_id.is_empty() { Vec::new() } else { vec![user_id.clone()] };
        let now = chrono::Utc::now().timestamp();
        let mut rules = lock(&self.rules);
        rules.retain(|r| r.expire_time + KEEP_EXPIRED.as_secs() as i64 > now);
        match api.name {
            "SetForbidUserRule" => {
                let privileges: Vec<u32> = params
                    .iter()
                    .filter(|(n, _)| n == "DisabledPrivilege[]")
                    .map(|(_, v)| v.parse::<u32>().ok().filter(|p| *p == 1 || *p == 2))
                    .collect::<Option<Vec<u32>>>()
                    .filter(|p| !p.is_empty())
                    .ok_or_else(|| bad("DisabledPrivilege[] must list 1 (login) and/or 2 (publish)"))?;
                let secs: i64 = get("EffectiveTime")
                    .and_then(|t| t.parse().ok())
                    .filter(|t| (1..=i64::from(ZEGO_MAX_RULE_SECONDS)).contains(t))
                    .ok_or_else(|| bad("EffectiveTime must be 1..86400"))?;
                let rule = SimRule {
                    app_id: call.app_id,
                    rule_type,
                    ip,
                    room_id,
                    user_id,
                    disabled_privileges: privileges,
                    expire_time: now + secs,
                };
                let max = if rule_type == 1 { ZEGO_MAX_IP_RULES } else { ZEGO_MAX_RULES_PER_TYPE };
                let in_force = rules
                    .iter()
                    .filter(|r| {
                        r.app_id == call.app_id
                            && r.rule_type == rule_type
                            && r.expire_time > now
                            && r.key() != rule.key()
                    })
                    .count();
                if in_force >= max {
                    return Err(zego_no(50123, "number of rules in force exceeds the limit", "rules_limit"));
                }
                rules.retain(|r| !(r.app_id == call.app_id && r.key() == rule.key()));
                let expire_time = rule.expire_time;
                rules.push(rule);
                Ok(Some(json!({"ExpireTime": expire_time})))
            }
            "DelForbidUserRule" => {
                rules.retain(|r| {
                    !(r.app_id == call.app_id
                        && r.key() == (rule_type, ip.as_str(), room_id.as_str(), user_id.as_str()))
                });
                Ok(None)
            }
            _ => {
                let list: Vec<Value> = rules
                    .iter()
                    .filter(|r| r.app_id == call.app_id && r.rule_type == rule_type)
                    .map(|r| {
                        json!({"RuleType": r.rule_type, "IP": r.ip, "RoomId": r.room_id, "UserId": r.user_id,
                               "DisabledPrivilegeList": r.disabled_privileges, "ExpireTime": r.expire_time})
                    })
                    .collect();
                Ok(Some(json!({"RuleList": list})))
            }
        }
    }

    /// Every rule kept (in force and recently expired), for tests and the control API.
    pub fn rules(&self) -> Vec<SimRule> {
        lock(&self.rules).clone()
    }
}
