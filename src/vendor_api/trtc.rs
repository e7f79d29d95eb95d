//! Tencent TRTC `RemoveUser` (numeric rooms) and `RemoveUserByStrRoomId` (string rooms), API 3.0
//! version `2019-07-22`: POST JSON to `{endpoint}/`, signed with TC3-HMAC-SHA256 over exactly the
//! bytes and headers sent. Facts: `shared/vendors/README.md` §2.

use std::time::Instant;

use hmac::{Hmac, KeyInit, Mac};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{Blame, CallReport, Class, KickRequest, RequestError, check_users, host_header, http_client, unix_now};
use crate::config::TrtcApp;
use crate::vendors::{self, Action};
use crate::verdict::{RoomId, Vendor};

pub const VERSION: &str = "2019-07-22";
pub const SERVICE: &str = "trtc";
pub const ACTION_NUMERIC: &str = vendors::TRTC_REMOVE_USER.name;
pub const ACTION_STRING: &str = vendors::TRTC_REMOVE_USER_BY_STR_ROOM_ID.name;
/// At most 10 users per call.
pub const MAX_USERS_PER_CALL: usize = vendors::TRTC_REMOVE_USER.max_users_per_call;
/// 20 calls per second per API. Per what is not documented: the safe reading is per account
/// credentials (SecretId) and per action, so apps sharing a SecretId share the quota.
pub const MAX_CALLS_PER_SECOND: u32 = vendors::TRTC_REMOVE_USER.max_calls_per_second;
/// Regions `RemoveUser` supports.
pub const REGIONS: &[&str] = vendors::TRTC.regions;
/// The server rejects timestamps more than 5 minutes away from its clock.
pub const MAX_SKEW_SECS: i64 = vendors::TRTC.max_skew_secs;
/// Sent and signed byte for byte; no `; charset=` (the signed value must match what is sent).
pub const CONTENT_TYPE: &str = "application/json";

pub fn action_for(room: &RoomId) -> &'static str {
    match room {
        RoomId::Numeric(_) => ACTION_NUMERIC,
        RoomId::Text(_) => ACTION_STRING,
    }
}

type HmacSha256 = Hmac<Sha256>;

pub fn hmac_sha256(key: &[u8], msg: &[u8]) -> Vec<u8> {
    let mut m = HmacSha256::new_from_slice(key).expect("HMAC accepts keys of any length");
    m.update(msg);
    m.finalize().into_bytes().to_vec()
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// UTC date of a unix timestamp, `YYYY-MM-DD`.
pub fn utc_date(timestamp: i64) -> String {
    chrono::DateTime::from_timestamp(timestamp, 0)
        .map(|t| t.format("%Y-%m-%d").to_string())
        .unwrap_or_else(|| "1970-01-01".into())
}

/// The parts of a request TC3 signs.
pub struct SignInput<'a> {
    pub method: &'a str,
    /// The query string exactly as sent (`""` for POST).
    pub query: &'a str,
    /// Signed headers as (name, value); canonicalised (lowercased, trimmed, sorted) here.
    pub headers: &'a [(&'a str, &'a str)],
    pub body: &'a [u8],
    pub service: &'a str,
    pub timestamp: i64,
}

/// The signed header list (`content-type;host`) and the canonical request.
pub fn canonical_request(input: &SignInput<'_>) -> (String, String) {
    let mut headers: Vec<(String, String)> =
        input.headers.iter().map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_ascii_lowercase())).collect();
    headers.sort();
    let canonical_headers: String = headers.iter().map(|(n, v)| format!("{n}:{v}\n")).collect();
    let signed: Vec<&str> = headers.iter().map(|(n, _)| n.as_str()).collect();
    let signed = signed.join(";");
    let canonical =
        format!("{}\n/\n{}\n{}\n{}\n{}", input.method, input.query, canonical_headers, signed, sha256_hex(input.body));
    (signed, canonical)
}

/// `(signed_headers, signature)` for a request.
pub fn sign(secret_key: &str, input: &SignInput<'_>) -> (String, String) {
    let (signed, canonical) = canonical_request(input);
    let date = utc_date(input.timestamp);
    let scope = format!("{date}/{}/tc3_request", input.service);
    let to_sign = format!("TC3-HMAC-SHA256\n{}\n{scope}\n{}", input.timestamp, sha256_hex(canonical.as_bytes()));
    let k_date = hmac_sha256(format!("TC3{secret_key}").as_bytes(), date.as_bytes());
    let k_service = hmac_sha256(&k_date, input.service.as_bytes());
    let k_signing = hmac_sha256(&k_service, b"tc3_request");
    (signed, hex::encode(hmac_sha256(&k_signing, to_sign.as_bytes())))
}

/// The `Authorization` header value.
pub fn authorization(secret_id: &str, secret_key: &str, input: &SignInput<'_>) -> String {
    let (signed, signature) = sign(secret_key, input);
    format!(
        "TC3-HMAC-SHA256 Credential={secret_id}/{}/{}/tc3_request, SignedHeaders={signed}, Signature={signature}",
        utc_date(input.timestamp),
        input.service
    )
}

/// TRTC's error codes and what Bouncer does with each. A row matches the code itself and, when
/// `family` is true, every `Code.Sub` below it. First match wins, so specific rows come first.
/// Unknown codes: permanent, blamed on parameters (fail fast, replayable; see README).
pub const CODES: &[(&str, bool, Class)] = &[
    ("FailedOperation.RoomNotExist", false, Class::Gone),
    ("RequestLimitExceeded", true, Class::SlowDown),
    ("InternalError", true, Class::Retry),
    ("ServiceUnavailable", false, Class::Retry),
    ("AuthFailure.SignatureExpire", false, Class::Resign),
    ("AuthFailure", true, Class::Permanent(Blame::Configuration)),
    ("UnauthorizedOperation", true, Class::Permanent(Blame::Configuration)),
    // The app id is ours, not the verdict's: a configuration problem, not a per-user one.
    ("InvalidParameter.SdkAppId", false, Class::Permanent(Blame::Configuration)),
    ("MissingParameter.SdkAppId", false, Class::Permanent(Blame::Configuration)),
    // A bad room fails every user in it; splitting the chunk cannot help.
    ("InvalidParameter.RoomId", false, Class::Permanent(Blame::Room)),
    ("InvalidParameterValue.RoomId", false, Class::Permanent(Blame::Room)),
    ("MissingParameter.RoomId", false, Class::Permanent(Blame::Room)),
    ("InvalidParameter", true, Class::Permanent(Blame::Parameters)),
    ("InvalidParameterValue", true, Class::Permanent(Blame::Parameters)),
    ("MissingParameter", true, Class::Permanent(Blame::Parameters)),
    ("UnknownParameter", false, Class::Permanent(Blame::Parameters)),
    ("LimitExceeded", false, Class::Permanent(Blame::Parameters)),
    ("InvalidAction", false, Class::Permanent(Blame::Configuration)),
    ("NoSuchVersion", false, Class::Permanent(Blame::Configuration)),
    ("UnsupportedRegion", false, Class::Permanent(Blame::Configuration)),
];

pub fn classify(code: &str) -> Class {
    CODES
        .iter()
        .find(|(c, family, _)| {
            code == *c || (*family && code.len() > c.len() && code.starts_with(c) && code.as_bytes()[c.len()] == b'.')
        })
        .map(|(_, _, class)| *class)
        .unwrap_or(Class::Permanent(Blame::Parameters))
}

#[derive(Serialize)]
struct Body<'a> {
    #[serde(rename = "SdkAppId")]
    sdk_app_id: u32,
    #[serde(rename = "RoomId")]
    room_id: RoomJson<'a>,
    #[serde(rename = "UserIds")]
    user_ids: &'a [String],
}

#[derive(Serialize)]
#[serde(untagged)]
enum RoomJson<'a> {
    Numeric(u32),
    Text(&'a str),
}

/// The exact request body for a kick.
pub fn body(sdk_app_id: u32, room: &RoomId, users: &[String]) -> Vec<u8> {
    let room_id = match room {
        RoomId::Numeric(n) => RoomJson::Numeric(*n),
        RoomId::Text(s) => RoomJson::Text(s),
    };
    serde_json::to_vec(&Body { sdk_app_id, room_id, user_ids: users })
        .expect("serialising strings and integers cannot fail")
}

#[derive(Debug, Deserialize)]
pub struct Envelope {
    #[serde(rename = "Response")]
    pub response: ResponseBody,
}

#[derive(Debug, Deserialize)]
pub struct ResponseBody {
    #[serde(rename = "Error")]
    pub error: Option<ErrorBody>,
    #[serde(rename = "RequestId", default)]
    pub request_id: String,
}

#[derive(Debug, Deserialize)]
pub struct ErrorBody {
    #[serde(rename = "Code")]
    pub code: String,
    #[serde(rename = "Message", default)]
    pub message: String,
}

/// One configured TRTC app.
#[derive(Clone, Debug)]
pub struct TrtcClient {
    sdk_app_id: u32,
    secret_id: String,
    secret_key: SecretString,
    region: String,
    endpoint: url::Url,
    host: String,
    chunk_size: usize,
    http: reqwest::Client,
}

impl TrtcClient {
    pub fn new(app: &TrtcApp) -> TrtcClient {
        let mut endpoint = app.endpoint.clone();
        endpoint.set_path("/");
        endpoint.set_query(None);
        TrtcClient {
            sdk_app_id: app.sdk_app_id,
            secret_id: app.secret_id.clone(),
            secret_key: app.secret_key.clone(),
            region: app.region.clone(),
            host: host_header(&endpoint),
            endpoint,
            chunk_size: app.chunk_size.min(MAX_USERS_PER_CALL),
            http: http_client(app.timeouts),
        }
    }

    pub fn chunk_size(&self) -> usize {
        self.chunk_size
    }

    pub fn sdk_app_id(&self) -> u32 {
        self.sdk_app_id
    }

    pub fn secret_id(&self) -> &str {
        &self.secret_id
    }

    pub async fn kick_once(&self, req: &KickRequest) -> Result<CallReport, RequestError> {
        if req.app_id != self.sdk_app_id {
            return Err(RequestError::UnknownApp { vendor: Vendor::Trtc, app_id: req.app_id });
        }
        // Kicks are all this client calls; the registry lists its APIs.
        if req.action != Action::Kick {
            return Err(RequestError::Unsupported { vendor: Vendor::Trtc, action: req.action });
        }
        check_users(Vendor::Trtc, &req.user_ids, MAX_USERS_PER_CALL)?;
        let action = action_for(&req.room);
        let payload = body(self.sdk_app_id, &req.room, &req.user_ids);
        let ts = unix_now();
        let auth = authorization(
            &self.secret_id,
            self.secret_key.expose_secret(),
            &SignInput {
                method: "POST",
                query: "",
                headers: &[("content-type", CONTENT_TYPE), ("host", &self.host)],
                body: &payload,
                service: SERVICE,
                timestamp: ts,
            },
        );
        let started = Instant::now();
        let sent = self
            .http
            .post(self.endpoint.clone())
            .header(reqwest::header::HOST, &self.host)
            .header(reqwest::header::CONTENT_TYPE, CONTENT_TYPE)
            .header(reqwest::header::AUTHORIZATION, auth)
            .header("X-TC-Action", action)
            .header("X-TC-Version", VERSION)
            .header("X-TC-Region", &self.region)
            .header("X-TC-Timestamp", ts.to_string())
            .body(payload)
            .send()
            .await;
        let resp = match sent {
            Ok(r) => r,
            Err(e) => return Ok(CallReport::transport(action, &e, started.elapsed())),
        };
        let status = resp.status().as_u16();
        if status != 200 {
            return Ok(CallReport::http_error(action, status, started.elapsed()));
        }
        let body = resp.bytes().await;
        let latency = started.elapsed();
        match body {
            Ok(b) => Ok(interpret(action, &b, latency)),
            Err(e) => Ok(CallReport::transport(action, &e, latency)),
        }
    }
}

/// Reads an HTTP-200 body: failure is an `Error` inside the `Response` envelope.
pub fn interpret(action: &'static str, body: &[u8], latency: std::time::Duration) -> CallReport {
    let envelope: Envelope = match serde_json::from_slice(body) {
        Ok(e) => e,
        Err(e) => {
            return CallReport {
                outcome: super::Outcome::Retry { reason: format!("unreadable reply: {e}"), slow_down: false },
                action,
                http_status: Some(200),
                vendor_code: None,
                vendor_message: None,
                vendor_request_id: None,
                latency,
            };
        }
    };
    let r = envelope.response;
    let (class, code, message) = match r.error {
        None => (Class::Done, None, None),
        Some(e) => (classify(&e.code), Some(e.code), Some(e.message)),
    };
    CallReport {
        outcome: class.into_outcome(
            code.clone().unwrap_or_default(),
            message.clone().unwrap_or_default(),
            r.request_id.clone(),
        ),
        action,
        http_status: Some(200),
        vendor_code: code,
        vendor_message: message,
        vendor_request_id: (!r.request_id.is_empty()).then_some(r.request_id),
        latency,
    }
}

#[cfg(test)]
mod tests;
