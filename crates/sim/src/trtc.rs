//! TRTC `RemoveUser` / `RemoveUserByStrRoomId` as the simulator checks them.

use std::time::Instant;

use axum::http::{HeaderMap, Method};
use serde_json::Value;

use secrecy::ExposeSecret;

use bouncer::vendor_api::{QuotaKey, trtc};

use crate::Sim;
use crate::call::{Call, Refusal, trtc_no};
use crate::faults::chance;
use crate::verify;

/// The quota shown for calls naming a SecretId or action the simulator does not know.
const UNKNOWN_TRTC_QUOTA: &str = "trtc:unknown";

impl Sim {
    /// A TRTC `RemoveUser` / `RemoveUserByStrRoomId` call: POST with a JSON body (what Bouncer
    /// sends), or GET with the parameters in the query string (what the official SDKs send when
    /// asked to), TC3-signed either way.
    pub(crate) async fn trtc(
        &self,
        method: &Method,
        headers: &HeaderMap,
        query: &str,
        body: &[u8],
        call: &mut Call,
    ) -> Result<(), Refusal> {
        let received = Instant::now();
        call.vendor = "trtc";
        let header = |k: &str| headers.get(k).and_then(|v| v.to_str().ok()).unwrap_or_default();
        call.action = header("x-tc-action").to_owned();
        let parsed: Value = if method == Method::GET {
            get_parameters(&call.action, query)
        } else {
            serde_json::from_slice(body).unwrap_or(Value::Null)
        };
        call.app_id = parsed["SdkAppId"].as_u64().and_then(|n| u32::try_from(n).ok()).unwrap_or(0);
        call.room_numeric = parsed["RoomId"].is_number();
        call.room_id = match &parsed["RoomId"] {
            Value::String(s) => s.clone(),
            Value::Null => String::new(),
            other => other.to_string(),
        };
        call.user_ids = parsed["UserIds"]
            .as_array()
            .map(|a| a.iter().map(|u| u.as_str().unwrap_or_default().to_owned()).collect())
            .unwrap_or_default();
        call.timestamp = header("x-tc-timestamp").parse().ok();

        let auth = verify::parse_authorization(header("authorization"))
            .map_err(|e| trtc_no("AuthFailure.InvalidAuthorization", format!("{e:?}"), "signature"))?;
        call.nonce = Some(auth.signature.clone());
        // As for ZEGO: a quota only for a configured SecretId and a known action.
        let known = self.trtc_keys.contains_key(&auth.secret_id)
            && [trtc::ACTION_NUMERIC, trtc::ACTION_STRING].contains(&call.action.as_str());
        call.quota = if known {
            QuotaKey::Trtc { secret_id: auth.secret_id.clone(), action: call.action.clone() }.to_string()
        } else {
            UNKNOWN_TRTC_QUOTA.to_owned()
        };
        let (f, at) = self.reach("trtc", call, known.then_some(self.trtc_rate), received).await?;

        if header("x-tc-version") != trtc::VERSION {
            return Err(trtc_no("NoSuchVersion", "X-TC-Version must be 2019-07-22", "bad_params"));
        }
        if ![trtc::ACTION_NUMERIC, trtc::ACTION_STRING].contains(&call.action.as_str()) {
            return Err(trtc_no("InvalidAction", "unsupported action", "bad_params"));
        }
        let key = self
            .trtc_keys
            .get(&auth.secret_id)
            .ok_or_else(|| trtc_no("AuthFailure.SecretIdNotFound", "SecretId not found", "signature"))?;
        let ts_raw = header("x-tc-timestamp");
        let ts = call
            .timestamp
            .ok_or_else(|| trtc_no("AuthFailure.InvalidAuthorization", "X-TC-Timestamp missing", "signature"))?;
        if auth.service != trtc::SERVICE || auth.date != trtc::utc_date(ts) {
            return Err(trtc_no("AuthFailure.SignatureFailure", "credential scope mismatch", "signature"));
        }
        // The canonical query string is empty for POST and the query exactly as sent for GET.
        let (signed_method, signed_query) = if method == Method::GET { ("GET", query) } else { ("POST", "") };
        verify::tc3_check(&auth, key.expose_secret(), signed_method, signed_query, headers, body, ts_raw)
            .map_err(|e| trtc_no("AuthFailure.SignatureFailure", format!("signature mismatch ({e:?})"), "signature"))?;
        if (chrono::Utc::now().timestamp() - ts).abs() > trtc::MAX_SKEW_SECS || self.take_expired("trtc", call.app_id) {
            return Err(trtc_no("AuthFailure.SignatureExpire", "signature expired", "expired"));
        }
        if !trtc::REGIONS.contains(&header("x-tc-region")) {
            return Err(trtc_no("UnsupportedRegion", "region not supported", "bad_params"));
        }
        if !self.admit(&call.quota, self.trtc_rate, at) {
            return Err(trtc_no("RequestLimitExceeded", "request limit exceeded", "rate_limited"));
        }
        if parsed.is_null() {
            return Err(trtc_no("InvalidParameter", "body is not JSON", "bad_params"));
        }
        if !self.trtc_apps.contains(&call.app_id) {
            return Err(trtc_no("UnauthorizedOperation.SdkAppId", "no permission for SdkAppId", "unknown_app"));
        }
        let room_ok = match call.action.as_str() {
            trtc::ACTION_NUMERIC => {
                parsed["RoomId"].as_u64().is_some_and(|n| (1..=bouncer::verdict::MAX_TRTC_NUMERIC_ROOM).contains(&n))
            }
            _ => parsed["RoomId"].as_str().is_some_and(|s| !s.is_empty()),
        };
        if !room_ok {
            return Err(trtc_no("InvalidParameter.RoomId", "RoomId is incorrect", "bad_params"));
        }
        let users_ok = parsed["UserIds"]
            .as_array()
            .is_some_and(|a| !a.is_empty() && a.iter().all(|u| u.as_str().is_some_and(|s| !s.is_empty())));
        if !users_ok {
            return Err(trtc_no("InvalidParameter.UserIds", "UserIds is incorrect", "bad_params"));
        }
        if call.user_ids.len() > trtc::MAX_USERS_PER_CALL {
            return Err(trtc_no("InvalidParameter.UserIds", "at most 10 UserIds", "too_many_users"));
        }
        if chance(f.throttle_rate) {
            return Err(trtc_no("RequestLimitExceeded", "request limit exceeded (injected)", "throttled"));
        }
        if chance(f.internal_error_rate) {
            return Err(trtc_no("InternalError", "internal error (injected)", "internal_error"));
        }
        if f.gone_rooms.contains(&call.room_id) {
            return Err(trtc_no("FailedOperation.RoomNotExist", "The room does not exist.", "room_gone"));
        }
        if call.user_ids.iter().any(|u| f.bad_users.contains(u)) {
            return Err(trtc_no("InvalidParameter.UserIds", "UserIds is incorrect.", "bad_user"));
        }
        Ok(())
    }
}

/// A TRTC GET's query parameters as the JSON body a POST would carry: `SdkAppId`, `RoomId` (an
/// integer for `RemoveUser`, a string otherwise) and `UserIds.0`, `UserIds.1`, … in index order.
fn get_parameters(action: &str, query: &str) -> Value {
    let mut app = Value::Null;
    let mut room = Value::Null;
    let mut users: Vec<(usize, String)> = Vec::new();
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        match k.as_ref() {
            "SdkAppId" => app = v.parse::<u64>().map(Value::from).unwrap_or(Value::String(v.into_owned())),
            "RoomId" if action == trtc::ACTION_NUMERIC => {
                room = v.parse::<u64>().map(Value::from).unwrap_or(Value::String(v.into_owned()))
            }
            "RoomId" => room = Value::String(v.into_owned()),
            other => {
                if let Some(i) = other.strip_prefix("UserIds.").and_then(|i| i.parse().ok()) {
                    users.push((i, v.into_owned()));
                }
            }
        }
    }
    users.sort_by_key(|(i, _)| *i);
    serde_json::json!({"SdkAppId": app, "RoomId": room, "UserIds": users.into_iter().map(|(_, u)| u).collect::<Vec<_>>()})
}
