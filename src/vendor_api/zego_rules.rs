//! ZEGO user ban rules: `SetForbidUserRule` and `DelForbidUserRule` (GET, signed as
//! `KickoutUser` is), answering `{Code, Message, RequestId, Data}`. Facts:
//! `shared/vendors/bans-and-callbacks.md` §1. A rule is addressed by its type and key: type 4
//! (RoomId + UserId) for a room ban, type 3 (UserId) for an app ban; privilege 1 is login.

use std::time::{Duration, Instant};

use secrecy::ExposeSecret;
use serde::Deserialize;

use super::unix_now;
use super::zego::{QUERY_VALUE, ZegoClient, nonce, signature};
use crate::vendors::{ZEGO_DEL_FORBID_USER_RULE, ZEGO_MAX_RULE_SECONDS, ZEGO_SET_FORBID_USER_RULE};

/// Privilege 1: logging in to a room.
pub const LOGIN: u32 = 1;

/// The rule that keeps one user out: of one room (type 4), or of every room (type 3).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForbidRule {
    pub user_id: String,
    pub room_id: Option<String>,
}

impl ForbidRule {
    /// ZEGO's `RuleType`.
    pub fn rule_type(&self) -> u32 {
        if self.room_id.is_some() { 4 } else { 3 }
    }
}

/// What a rule call came to, typed at the boundary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RuleOutcome {
    /// Set: the rule holds until this Unix second (`Data.ExpireTime`).
    InForce { expires_at: i64 },
    /// Deleted (or there was none to delete).
    Deleted,
    /// 50123: 200 rules of this type are in force already.
    LimitReached,
    /// 9: the feature is not switched on for this AppID.
    NotEnabled,
    /// 206 (and 7, 207): a rate refusal; pause this quota a window.
    SlowDown,
    /// Worth trying again: transport, non-200, unreadable reply, 1, an expired signature.
    Retry { reason: String },
    /// Refused for good (2: bad parameters, and any code not listed).
    Refused { code: i64, message: String },
}

impl RuleOutcome {
    /// The metric label.
    pub fn as_str(&self) -> &'static str {
        match self {
            RuleOutcome::InForce { .. } => "in_force",
            RuleOutcome::Deleted => "deleted",
            RuleOutcome::LimitReached => "limit_reached",
            RuleOutcome::NotEnabled => "not_enabled",
            RuleOutcome::SlowDown => "slow_down",
            RuleOutcome::Retry { .. } => "retry",
            RuleOutcome::Refused { .. } => "failed",
        }
    }
}

/// One rule call: its outcome and how long it took.
#[derive(Clone, Debug)]
pub struct RuleReport {
    pub outcome: RuleOutcome,
    pub latency: Duration,
}

#[derive(Debug, Deserialize)]
struct Reply {
    #[serde(rename = "Code")]
    code: i64,
    #[serde(rename = "Message", default)]
    message: String,
    #[serde(rename = "Data", default)]
    data: Option<ReplyData>,
}

#[derive(Debug, Deserialize)]
struct ReplyData {
    #[serde(rename = "ExpireTime")]
    expire_time: Option<i64>,
}

/// The query string of one signed rule call (after `?`): common parameters, then the rule's.
pub fn query_string(
    action: &str,
    app_id: u32,
    nonce: &str,
    timestamp: i64,
    signature: &str,
    rule: &ForbidRule,
    effective_secs: Option<u32>,
) -> String {
    let enc = |v: &str| percent_encoding::utf8_percent_encode(v, QUERY_VALUE).to_string();
    let mut q = format!(
        "Action={action}&AppId={app_id}&SignatureNonce={nonce}&Timestamp={timestamp}&SignatureVersion=2.0\
         &Signature={signature}&RuleType={}",
        rule.rule_type()
    );
    if let Some(room) = &rule.room_id {
        q.push_str("&RoomId=");
        q.push_str(&enc(room));
    }
    q.push_str("&UserId=");
    q.push_str(&enc(&rule.user_id));
    if let Some(secs) = effective_secs {
        // Repeated key, written as the vendor page writes it.
        q.push_str(&format!("&DisabledPrivilege[]={LOGIN}&EffectiveTime={secs}"));
    }
    q
}

/// Reads an HTTP-200 body of a rule call.
pub fn interpret(body: &[u8], set: bool) -> RuleOutcome {
    let reply: Reply = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => return RuleOutcome::Retry { reason: format!("unreadable reply: {e}") },
    };
    match reply.code {
        0 if set => match reply.data.and_then(|d| d.expire_time) {
            Some(t) => RuleOutcome::InForce { expires_at: t },
            None => RuleOutcome::Retry { reason: "success without Data.ExpireTime".into() },
        },
        0 => RuleOutcome::Deleted,
        50123 => RuleOutcome::LimitReached,
        9 => RuleOutcome::NotEnabled,
        7 | 206 | 207 => RuleOutcome::SlowDown,
        1 | 100_000_004 | 100_000_015 => {
            RuleOutcome::Retry { reason: format!("code {}: {}", reply.code, reply.message) }
        }
        code => RuleOutcome::Refused { code, message: reply.message },
    }
}

impl ZegoClient {
    /// `SetForbidUserRule` keeping `rule.user_id` from logging in for `effective_secs`
    /// (1 ..= 86400; clamped).
    pub async fn set_forbid_rule(&self, rule: &ForbidRule, effective_secs: u32) -> RuleReport {
        let secs = effective_secs.clamp(1, ZEGO_MAX_RULE_SECONDS);
        self.rule_call(ZEGO_SET_FORBID_USER_RULE.name, rule, Some(secs)).await
    }

    /// `DelForbidUserRule` for `rule`'s type and key.
    pub async fn del_forbid_rule(&self, rule: &ForbidRule) -> RuleReport {
        self.rule_call(ZEGO_DEL_FORBID_USER_RULE.name, rule, None).await
    }

    async fn rule_call(&self, action: &str, rule: &ForbidRule, effective_secs: Option<u32>) -> RuleReport {
        let nonce = nonce();
        let ts = unix_now();
        let sig = signature(self.app_id, &nonce, self.secret.expose_secret(), ts);
        let mut url = self.endpoint.clone();
        url.set_query(Some(&query_string(action, self.app_id, &nonce, ts, &sig, rule, effective_secs)));
        let started = Instant::now();
        let outcome = match self.http.get(url).send().await {
            Err(e) => RuleOutcome::Retry { reason: e.without_url().to_string() },
            Ok(r) if r.status().as_u16() != 200 => {
                RuleOutcome::Retry { reason: format!("HTTP {}", r.status().as_u16()) }
            }
            Ok(r) => match r.bytes().await {
                Ok(body) => interpret(&body, effective_secs.is_some()),
                Err(e) => RuleOutcome::Retry { reason: e.without_url().to_string() },
            },
        };
        RuleReport { outcome, latency: started.elapsed() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_room_ban_is_rule_type_4_an_app_ban_type_3_with_login_disabled() {
        let room = ForbidRule { user_id: "u 1".into(), room_id: Some("room1".into()) };
        let q = query_string("SetForbidUserRule", 1, "n", 2, "s", &room, Some(1800));
        assert_eq!(
            q,
            "Action=SetForbidUserRule&AppId=1&SignatureNonce=n&Timestamp=2&SignatureVersion=2.0&Signature=s\
             &RuleType=4&RoomId=room1&UserId=u%201&DisabledPrivilege[]=1&EffectiveTime=1800"
        );
        let app = ForbidRule { user_id: "u".into(), room_id: None };
        let q = query_string("DelForbidUserRule", 1, "n", 2, "s", &app, None);
        assert!(q.ends_with("&RuleType=3&UserId=u"), "{q}");
    }

    #[test]
    fn rule_replies_are_typed_by_their_code() {
        let set = |b: &str| interpret(b.as_bytes(), true);
        assert_eq!(
            set(r#"{"Code":0,"Message":"success","RequestId":"r","Data":{"ExpireTime":1704282648}}"#),
            RuleOutcome::InForce { expires_at: 1704282648 }
        );
        assert_eq!(interpret(br#"{"Code":0,"Message":"success"}"#, false), RuleOutcome::Deleted);
        assert_eq!(set(r#"{"Code":50123,"Message":"too many"}"#), RuleOutcome::LimitReached);
        assert_eq!(set(r#"{"Code":9,"Message":"no permission"}"#), RuleOutcome::NotEnabled);
        assert_eq!(set(r#"{"Code":206,"Message":"qps"}"#), RuleOutcome::SlowDown);
        assert!(matches!(set(r#"{"Code":2,"Message":"bad"}"#), RuleOutcome::Refused { code: 2, .. }));
        assert!(matches!(set(r#"{"Code":1,"Message":"retry"}"#), RuleOutcome::Retry { .. }));
        assert!(matches!(set(r#"{"Code":0}"#), RuleOutcome::Retry { .. }), "success must say until when");
        assert!(matches!(set("<html>"), RuleOutcome::Retry { .. }));
    }
}
