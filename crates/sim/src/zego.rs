//! ZEGO `KickoutUser` as the simulator checks it.

use std::time::Instant;

use secrecy::ExposeSecret;

use bouncer::vendor_api::{QuotaKey, zego};
use bouncer::vendors::{
    RuleApi, ZEGO_DEL_FORBID_USER_RULE, ZEGO_DESCRIBE_FORBID_USER_RULES, ZEGO_SET_FORBID_USER_RULE,
};

use crate::Sim;
use crate::call::{Call, Refusal, zego_no};
use crate::faults::chance;
use crate::verify;

/// The ban-rule APIs the simulator serves beside `KickoutUser`.
const RULE_APIS: [RuleApi; 3] = [ZEGO_SET_FORBID_USER_RULE, ZEGO_DEL_FORBID_USER_RULE, ZEGO_DESCRIBE_FORBID_USER_RULES];

/// The quota shown for calls naming an AppId the simulator does not know.
const UNKNOWN_ZEGO_QUOTA: &str = "zego:unknown";

impl Sim {
    /// A ZEGO call — `KickoutUser` or a ban-rule API — checked in the order the real service
    /// plausibly does. A success may carry `Data`.
    pub(crate) async fn zego(&self, query: &str, call: &mut Call) -> Result<Option<serde_json::Value>, Refusal> {
        let received = Instant::now();
        call.vendor = "zego";
        let params: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes()).into_owned().collect();
        let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        call.user_ids = params.iter().filter(|(n, _)| n == "UserId[]").map(|(_, v)| v.clone()).collect();
        call.room_id = get("RoomId").unwrap_or_default().to_owned();
        call.reason = get("CustomReason").map(str::to_owned);
        call.nonce = get("SignatureNonce").map(str::to_owned);
        call.timestamp = get("Timestamp").and_then(|t| t.parse().ok());
        let action = get("Action").unwrap_or_default();
        let rule_api = RULE_APIS.iter().find(|a| a.name == action);
        if action != zego::ACTION && rule_api.is_none() {
            return Err(zego_no(100_000_006, "unsupported Action", "bad_params"));
        }
        call.action = action.to_owned();
        call.rule = rule_api.is_some();
        let app = get("AppId").unwrap_or_default();
        call.app_id = app.parse().map_err(|_| zego_no(100_000_002, "AppId missing or not a uint32", "bad_params"))?;
        // Only a configured AppId has a quota: anybody can send any AppId, and counters or metric
        // labels keyed by unauthenticated values would grow without bound.
        let known = self.zego_secrets.contains_key(&call.app_id);
        // Each rule API has a limit of its own per AppID, apart from KickoutUser's.
        let (quota, rate) = match rule_api {
            Some(api) => (format!("{}:{}", QuotaKey::Zego { app_id: call.app_id }, api.name), api.max_calls_per_second),
            None => (QuotaKey::Zego { app_id: call.app_id }.to_string(), self.zego_rate),
        };
        call.quota = if known { quota } else { UNKNOWN_ZEGO_QUOTA.to_owned() };
        let (f, at) = self.reach("zego", call, known.then_some(rate), received).await?;

        let secret = self
            .zego_secrets
            .get(&call.app_id)
            .ok_or_else(|| zego_no(100_000_005, "signature error (AppId unknown)", "signature"))?;
        if get("SignatureVersion") != Some("2.0") {
            return Err(zego_no(100_000_009, "SignatureVersion must be 2.0", "bad_params"));
        }
        let (Some(nonce), Some(ts_raw), Some(sig)) = (get("SignatureNonce"), get("Timestamp"), get("Signature")) else {
            return Err(zego_no(100_000_005, "signature parameters missing", "signature"));
        };
        let ts = call.timestamp.ok_or_else(|| zego_no(100_000_003, "Timestamp is not unix seconds", "bad_params"))?;
        if !verify::zego_signature_ok(app, nonce, secret.expose_secret(), ts_raw, sig) {
            return Err(zego_no(100_000_005, "signature error", "signature"));
        }
        if (chrono::Utc::now().timestamp() - ts).abs() > zego::MAX_SKEW_SECS || self.take_expired("zego", call.app_id) {
            return Err(zego_no(100_000_004, "signature expired", "expired"));
        }
        if !self.admit(&call.quota, rate, at) {
            return Err(zego_no(206, "app QPS limit exceeded", "rate_limited"));
        }
        if let Some(api) = rule_api {
            return self.zego_rule(api, &params, call, &f);
        }
        if call.room_id.is_empty() {
            return Err(zego_no(2, "RoomId missing", "bad_params"));
        }
        if call.user_ids.is_empty() || call.user_ids.iter().any(String::is_empty) {
            return Err(zego_no(2, "UserId[] missing or empty", "bad_params"));
        }
        if call.user_ids.len() > zego::MAX_USERS_PER_CALL {
            return Err(zego_no(50011, "user list too long", "too_many_users"));
        }
        if call.reason.as_ref().is_some_and(|r| r.len() > zego::MAX_REASON_BYTES) {
            return Err(zego_no(3, "CustomReason longer than 256 bytes", "reason_too_long"));
        }
        if chance(f.throttle_rate) {
            return Err(zego_no(206, "app QPS limit exceeded (injected)", "throttled"));
        }
        if chance(f.internal_error_rate) {
            return Err(zego_no(1, "request failed, please retry (injected)", "internal_error"));
        }
        if f.gone_rooms.contains(&call.room_id) {
            return Err(zego_no(104, "room does not exist", "room_gone"));
        }
        if call.user_ids.iter().any(|u| f.bad_users.contains(u)) {
            return Err(zego_no(2, "invalid UserId", "bad_user"));
        }
        Ok(None)
    }
}
