//! ZEGO `KickoutUser`: `GET {endpoint}/?Action=KickoutUser&...` signed with signature version 2.0
//! (`md5(AppId + SignatureNonce + ServerSecret + Timestamp)`), answering `{Code, Message, RequestId}`
//! with HTTP 200. Facts: `shared/vendors/README.md` §1.

use std::time::Instant;

use md5::{Digest, Md5};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use super::{Blame, CallReport, Class, KickRequest, RequestError, check_users, http_client, unix_now};
use crate::config::ZegoApp;
use crate::vendors::{self, Action};
use crate::verdict::{RoomId, Vendor};

pub const ACTION: &str = vendors::ZEGO_KICKOUT_USER.name;
/// At most 5 users per `KickoutUser` call.
pub const MAX_USERS_PER_CALL: usize = vendors::ZEGO_KICKOUT_USER.max_users_per_call;
/// 50 calls per second per AppID, shared by all its rooms.
pub const MAX_CALLS_PER_SECOND: u32 = vendors::ZEGO_KICKOUT_USER.max_calls_per_second;
/// `CustomReason` is at most 256 bytes. Whether before or after URL-encoding is not documented:
/// we keep the raw UTF-8 within 256 bytes (the reading the vendor page's example suggests).
pub const MAX_REASON_BYTES: usize = 256;
/// The server accepts timestamps up to 10 minutes away from its clock.
pub const MAX_SKEW_SECS: i64 = vendors::ZEGO.max_skew_secs;

/// Characters left as they are in query values: RFC 3986 unreserved.
pub const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');

/// `lowercase_hex(md5(AppId + SignatureNonce + ServerSecret + Timestamp))`, decimal numbers.
pub fn signature(app_id: u32, nonce: &str, server_secret: &str, timestamp: i64) -> String {
    let mut h = Md5::new();
    h.update(app_id.to_string());
    h.update(nonce);
    h.update(server_secret);
    h.update(timestamp.to_string());
    hex::encode(h.finalize())
}

/// 8 random bytes as 16 lowercase hex characters, fresh for every call.
pub fn nonce() -> String {
    hex::encode(rand::random::<[u8; 8]>())
}

/// ZEGO's return codes and what Bouncer does with each ("全局返回码"). Codes not listed:
/// `100000000..=100000017` are configuration problems; anything else unknown is treated as a
/// permanent parameter error (fail fast, replayable) rather than retried blindly for minutes.
pub const CODES: &[(i64, Class)] = &[
    (0, Class::Done),
    (1, Class::Retry),
    (7, Class::SlowDown),
    (206, Class::SlowDown),
    (207, Class::SlowDown),
    (100_000_004, Class::Resign),
    (100_000_015, Class::Retry),
    (100_000_005, Class::Permanent(Blame::Configuration)),
    (2, Class::Permanent(Blame::Parameters)),
    (3, Class::Permanent(Blame::Parameters)),
    (8, Class::Permanent(Blame::Parameters)),
    (9, Class::Permanent(Blame::Configuration)),
    (104, Class::Gone),
    (105, Class::Gone),
    (5024, Class::Gone),
    (50001, Class::Gone),
    // "User list too long": only our own chunking could cause it; splitting is the cure.
    (50011, Class::Permanent(Blame::Parameters)),
    (50003, Class::Permanent(Blame::Parameters)),
];

pub fn classify(code: i64) -> Class {
    if let Some((_, class)) = CODES.iter().find(|(c, _)| *c == code) {
        return *class;
    }
    if (100_000_000..=100_000_017).contains(&code) {
        return Class::Permanent(Blame::Configuration);
    }
    Class::Permanent(Blame::Parameters)
}

/// The JSON body of every answer. `RequestId` is documented as a string; tolerate a number.
#[derive(Debug, Deserialize)]
pub struct Reply {
    #[serde(rename = "Code")]
    pub code: i64,
    #[serde(rename = "Message", default)]
    pub message: String,
    #[serde(rename = "RequestId", default)]
    pub request_id: Option<serde_json::Value>,
}

/// The common (signed) parameters of one call.
pub struct Common<'a> {
    pub app_id: u32,
    pub nonce: &'a str,
    pub timestamp: i64,
    pub signature: &'a str,
    pub is_test: Option<bool>,
}

/// Builds the full query string (after `?`) for one signed call.
pub fn query_string(c: &Common<'_>, room: &str, users: &[String], reason: Option<&str>) -> String {
    let enc = |v: &str| utf8_percent_encode(v, QUERY_VALUE).to_string();
    let mut q = format!(
        "Action={ACTION}&AppId={}&SignatureNonce={}&Timestamp={}&SignatureVersion=2.0&Signature={}",
        c.app_id, c.nonce, c.timestamp, c.signature
    );
    if let Some(t) = c.is_test {
        q.push_str(if t { "&IsTest=true" } else { "&IsTest=false" });
    }
    q.push_str("&RoomId=");
    q.push_str(&enc(room));
    for u in users {
        // The vendor page writes the key as `UserId[]`, unencoded; we follow it to the letter.
        q.push_str("&UserId[]=");
        q.push_str(&enc(u));
    }
    if let Some(r) = reason {
        q.push_str("&CustomReason=");
        q.push_str(&enc(super::truncate_utf8(r, MAX_REASON_BYTES)));
    }
    q
}

/// One configured ZEGO app.
#[derive(Clone, Debug)]
pub struct ZegoClient {
    pub(super) app_id: u32,
    pub(super) secret: SecretString,
    pub(super) endpoint: url::Url,
    is_test: Option<bool>,
    chunk_size: usize,
    pub(super) http: reqwest::Client,
    /// `forbid_rules`: bans are also set as ZEGO ban rules.
    forbid_rules: bool,
}

impl ZegoClient {
    pub fn new(app: &ZegoApp) -> ZegoClient {
        ZegoClient {
            app_id: app.app_id,
            secret: app.server_secret.clone(),
            endpoint: app.endpoint.clone(),
            is_test: app.is_test,
            chunk_size: app.chunk_size.min(MAX_USERS_PER_CALL),
            http: http_client(app.timeouts),
            forbid_rules: app.forbid_rules,
        }
    }

    /// Whether this app's bans are also set as ZEGO ban rules.
    pub fn forbid_rules(&self) -> bool {
        self.forbid_rules
    }

    pub fn chunk_size(&self) -> usize {
        self.chunk_size
    }

    pub fn app_id(&self) -> u32 {
        self.app_id
    }

    pub async fn kick_once(&self, req: &KickRequest) -> Result<CallReport, RequestError> {
        if req.app_id != self.app_id {
            return Err(RequestError::UnknownApp { vendor: Vendor::Zego, app_id: req.app_id });
        }
        // Kicks are all this client calls; the registry lists its APIs.
        if req.action != Action::Kick {
            return Err(RequestError::Unsupported { vendor: Vendor::Zego, action: req.action });
        }
        check_users(Vendor::Zego, &req.user_ids, MAX_USERS_PER_CALL)?;
        let room = match &req.room {
            RoomId::Text(r) => r.as_str(),
            RoomId::Numeric(n) => return Err(RequestError::NumericZegoRoom(*n)),
        };
        let nonce = nonce();
        let ts = unix_now();
        let sig = signature(self.app_id, &nonce, self.secret.expose_secret(), ts);
        let mut url = self.endpoint.clone();
        let common =
            Common { app_id: self.app_id, nonce: &nonce, timestamp: ts, signature: &sig, is_test: self.is_test };
        url.set_query(Some(&query_string(&common, room, &req.user_ids, req.reason.as_deref())));

        let started = Instant::now();
        let resp = match self.http.get(url).send().await {
            Ok(r) => r,
            Err(e) => {
                return Ok(CallReport::transport(ACTION, &e.without_url(), started.elapsed()));
            }
        };
        let status = resp.status().as_u16();
        if status != 200 {
            // Undocumented: any non-200 is a transport failure, retryable (safe reading).
            return Ok(CallReport::http_error(ACTION, status, started.elapsed()));
        }
        let body = resp.bytes().await;
        let latency = started.elapsed();
        let body = match body {
            Ok(b) => b,
            Err(e) => return Ok(CallReport::transport(ACTION, &e.without_url(), latency)),
        };
        Ok(interpret(&body, latency))
    }
}

/// Reads an HTTP-200 body: the outcome is in `Code`, not in the HTTP status.
pub fn interpret(body: &[u8], latency: std::time::Duration) -> CallReport {
    let reply: Reply = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => {
            return CallReport {
                outcome: super::Outcome::Retry { reason: format!("unreadable reply: {e}"), slow_down: false },
                action: ACTION,
                http_status: Some(200),
                vendor_code: None,
                vendor_message: None,
                vendor_request_id: None,
                latency,
            };
        }
    };
    let request_id = match &reply.request_id {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(v) if !v.is_null() => v.to_string(),
        _ => String::new(),
    };
    let code = reply.code.to_string();
    CallReport {
        outcome: classify(reply.code).into_outcome(code.clone(), reply.message.clone(), request_id.clone()),
        action: ACTION,
        http_status: Some(200),
        vendor_code: Some(code),
        vendor_message: Some(reply.message),
        vendor_request_id: (!request_id.is_empty()).then_some(request_id),
        latency,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vendor_api::Outcome;
    use std::time::Duration;

    #[test]
    fn official_doc_example_signature() {
        assert_eq!(
            signature(12345, "4fd24687296dd9f3", "9193cc662a4c0ec135ec71fb57194b38", 1615186943),
            "43e5cfcca828314675f91b001390566a"
        );
    }

    #[test]
    fn second_vector_signature() {
        assert_eq!(
            signature(1234567890, "0123456789abcdef", "abcdefghijklmnopqrstuvwxyz012345", 1700000000),
            "33c723c09b2efad9b5d4042afd31f118"
        );
    }

    #[test]
    fn nonce_is_16_lowercase_hex_and_fresh() {
        let a = nonce();
        assert_eq!(a.len(), 16);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_ne!(a, nonce());
    }

    /// The documented table, transcribed independently of `CODES`.
    #[test]
    fn every_documented_code_maps_to_its_class() {
        let doc: &[(i64, Class)] = &[
            (0, Class::Done),
            (1, Class::Retry),
            (7, Class::SlowDown),
            (206, Class::SlowDown),
            (207, Class::SlowDown),
            (100000004, Class::Resign),
            (100000015, Class::Retry),
            (100000005, Class::Permanent(Blame::Configuration)),
            (2, Class::Permanent(Blame::Parameters)),
            (3, Class::Permanent(Blame::Parameters)),
            (8, Class::Permanent(Blame::Parameters)),
            (9, Class::Permanent(Blame::Configuration)),
            (104, Class::Gone),
            (5024, Class::Gone),
            (50001, Class::Gone),
            (105, Class::Gone),
            (50011, Class::Permanent(Blame::Parameters)),
            (50003, Class::Permanent(Blame::Parameters)),
        ];
        for (code, class) in doc {
            assert_eq!(classify(*code), *class, "code {code}");
        }
        for code in (100000000..=100000017).filter(|c| ![100000004, 100000015].contains(c)) {
            assert_eq!(classify(code), Class::Permanent(Blame::Configuration), "code {code}");
        }
        // and the table holds nothing the documentation does not
        for (code, class) in CODES {
            assert!(doc.contains(&(*code, *class)), "undocumented row {code}");
        }
    }

    #[test]
    fn query_string_follows_the_vendor_example() {
        let common = Common {
            app_id: 12345,
            nonce: "4fd24687296dd9f3",
            timestamp: 1615186943,
            signature: "43e5cfcca828314675f91b001390566a",
            is_test: None,
        };
        let q = query_string(&common, "room1", &["a".into(), "b".into()], Some("踢出用户-原因"));
        assert_eq!(
            q,
            "Action=KickoutUser&AppId=12345&SignatureNonce=4fd24687296dd9f3&Timestamp=1615186943\
             &SignatureVersion=2.0&Signature=43e5cfcca828314675f91b001390566a&RoomId=room1\
             &UserId[]=a&UserId[]=b&CustomReason=%E8%B8%A2%E5%87%BA%E7%94%A8%E6%88%B7-%E5%8E%9F%E5%9B%A0"
        );
        let test = Common { app_id: 1, nonce: "n", timestamp: 2, signature: "s", is_test: Some(true) };
        let q = query_string(&test, "a b&c", &["x=y".into()], None);
        assert!(q.contains("&IsTest=true&RoomId=a%20b%26c&UserId[]=x%3Dy"), "{q}");
    }

    #[test]
    fn custom_reason_is_cut_to_256_bytes_on_a_char_boundary() {
        let reason = "违".repeat(100); // 300 bytes
        let common = Common { app_id: 1, nonce: "n", timestamp: 2, signature: "s", is_test: None };
        let q = query_string(&common, "r", &["u".into()], Some(&reason));
        let encoded = q.split("CustomReason=").nth(1).unwrap();
        let decoded = percent_encoding::percent_decode_str(encoded).decode_utf8().unwrap();
        assert_eq!(decoded.len(), 255);
        assert_eq!(decoded, "违".repeat(85));
    }

    #[test]
    fn replies_are_read_from_the_body() {
        let r = interpret(br#"{"Code":0,"Message":"success","RequestId":"343649807833778782"}"#, Duration::ZERO);
        assert_eq!(r.outcome, Outcome::Done { request_id: "343649807833778782".into() });
        assert_eq!(r.vendor_request_id.as_deref(), Some("343649807833778782"));
        let r = interpret(br#"{"Code":206,"Message":"app qps limit","RequestId":1}"#, Duration::ZERO);
        assert!(matches!(r.outcome, Outcome::Retry { slow_down: true, .. }));
        assert_eq!(r.vendor_code.as_deref(), Some("206"));
        let r = interpret(br#"{"Code":104,"Message":"room not exist"}"#, Duration::ZERO);
        assert_eq!(r.outcome, Outcome::Gone { code: "104".into() });
        let r = interpret(b"<html>", Duration::ZERO);
        assert!(matches!(r.outcome, Outcome::Retry { slow_down: false, .. }));
    }
}
