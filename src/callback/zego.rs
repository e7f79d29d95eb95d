//! ZEGO's room callbacks (`room_login`, `room_logout`), verified as ZEGO signs them:
//! `signature = sha1(sort([callback_secret, timestamp, nonce]).join(""))`, lowercase hex, the
//! three sorted as strings. The signature does not cover the body, so the caller also refuses a
//! (timestamp, nonce) seen before ([`RoomCallback::nonce`]).
//!
//! Bodies are JSON (values strings, as current docs type them, or numbers, as older samples show)
//! or a form (`application/x-www-form-urlencoded`, which ZEGO support can switch on); both are read
//! into the same flat map of strings first.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sha1::{Digest, Sha1};
use subtle::ConstantTimeEq;

use super::{Refusal, RoomCallback, RoomEvent, event_key, fresh, from_millis};
use crate::vendors::Vendor;
use crate::verdict::RoomId;

/// `room_logout`'s `reason` when a server API kicked the user.
pub const REASON_KICKED_BY_SERVER: &str = "3";

/// Longest body read; ZEGO's room callbacks are a few hundred bytes.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// The signature of a (timestamp, nonce) under `secret`, as ZEGO computes it.
pub fn signature(secret: &str, timestamp: &str, nonce: &str) -> String {
    let mut parts = [secret, timestamp, nonce];
    parts.sort_unstable();
    hex::encode(Sha1::digest(parts.concat().as_bytes()))
}

/// The body's fields as strings (numbers as their JSON text), or why it is no callback.
pub fn fields(body: &[u8], form: bool) -> Result<HashMap<String, String>, Refusal> {
    if form {
        return Ok(url::form_urlencoded::parse(body).into_owned().collect());
    }
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| Refusal::malformed("body", format!("not JSON: {e}")))?;
    let serde_json::Value::Object(map) = value else {
        return Err(Refusal::malformed("body", "not a JSON object"));
    };
    Ok(map
        .into_iter()
        .filter_map(|(k, v)| match v {
            serde_json::Value::String(s) => Some((k, s)),
            serde_json::Value::Number(n) => Some((k, n.to_string())),
            serde_json::Value::Bool(b) => Some((k, b.to_string())),
            _ => None,
        })
        .collect())
}

/// Verifies a callback for `app_id` (from the URL) and reads it. `secret` is the app's
/// `callback_secret`. The signature is checked before anything else in the body is believed.
pub fn verify(app_id: u32, body: &[u8], form: bool, secret: &str, now: DateTime<Utc>) -> Result<RoomCallback, Refusal> {
    let f = fields(body, form)?;
    let get = |k: &str| f.get(k).map(String::as_str).filter(|v| !v.is_empty());
    let (Some(timestamp), Some(nonce), Some(given)) = (get("timestamp"), get("nonce"), get("signature")) else {
        return Err(Refusal::MissingSignature);
    };
    let expected = signature(secret, timestamp, nonce);
    if !bool::from(expected.as_bytes().ct_eq(given.as_bytes())) {
        return Err(Refusal::BadSignature);
    }
    let signed_at: i64 = timestamp.parse().map_err(|_| Refusal::malformed("timestamp", "not Unix seconds"))?;
    if !fresh(signed_at, now) {
        return Err(Refusal::Stale);
    }
    if let Some(appid) = get("appid")
        && appid != app_id.to_string()
    {
        return Err(Refusal::malformed("appid", "does not match the app id in the URL"));
    }
    let event = get("event").ok_or_else(|| Refusal::malformed("event", "missing"))?;
    let room_id = get("room_id").ok_or_else(|| Refusal::malformed("room_id", "missing"))?;
    let user_id = get("user_account").ok_or_else(|| Refusal::malformed("user_account", "missing"))?;
    let millis = |k: &'static str| -> Result<Option<DateTime<Utc>>, Refusal> {
        match get(k) {
            None => Ok(None),
            Some(v) => v
                .parse::<i64>()
                .ok()
                .and_then(from_millis)
                .map(Some)
                .ok_or_else(|| Refusal::malformed(k, "not Unix milliseconds")),
        }
    };
    let login_time = millis("login_time")?;
    let session = get("session_id").unwrap_or_default();
    let (kind, at, key_time) = match event {
        "room_login" => (RoomEvent::Entered, login_time, get("login_time")),
        "room_logout" => {
            let kind =
                if get("reason") == Some(REASON_KICKED_BY_SERVER) { RoomEvent::Removed } else { RoomEvent::Other };
            (kind, millis("logout_time")?, get("logout_time"))
        }
        _ => (RoomEvent::Other, None, None),
    };
    // ZEGO's own advice for telling events apart: user, session and time within the room. A
    // callback without them is keyed by its signed timestamp and nonce (each delivery its own).
    let key = match key_time {
        Some(t) => event_key(&[event, room_id, user_id, session, t]),
        None => event_key(&[event, room_id, user_id, timestamp, nonce]),
    };
    Ok(RoomCallback {
        vendor: Vendor::Zego,
        app_id,
        event: kind,
        room: RoomId::Text(room_id.to_owned()),
        user_id: user_id.to_owned(),
        at,
        event_key: key,
        nonce: Some((signed_at, nonce.to_owned())),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    const NOW: i64 = 1_499_676_978;

    fn now() -> DateTime<Utc> {
        Utc.timestamp_opt(NOW, 0).unwrap()
    }

    fn login(secret: &str, timestamp: i64, nonce: &str) -> String {
        let sig = signature(secret, &timestamp.to_string(), nonce);
        format!(
            r#"{{"event":"room_login","appid":"1","timestamp":"{timestamp}","nonce":"{nonce}","signature":"{sig}","room_id":"rid_1242649","room_name":"room#123","room_seq":"6085791336856668982","user_account":"888120154","user_nickname":"888120154","session_id":"792148503087288320","login_time":"1499676978027","user_role":"2","auth_level":"4","relogin":"0","user_update_seq":"1","callback_data":"user login"}}"#
        )
    }

    #[test]
    fn the_documented_example_signs_as_zego_says() {
        assert_eq!(signature("secret", "1470820198", "123412"), "5bd59fd62953a8059fb7eaba95720f66d19e4517");
    }

    #[test]
    fn the_documented_login_sample_reads_as_an_entry() {
        let cb = verify(1, login("s3cret", NOW, "350176").as_bytes(), false, "s3cret", now()).unwrap();
        assert_eq!(cb.event, RoomEvent::Entered);
        assert_eq!(cb.room, RoomId::Text("rid_1242649".into()));
        assert_eq!(cb.user_id, "888120154");
        assert_eq!(cb.at, Some(Utc.timestamp_millis_opt(1_499_676_978_027).unwrap()));
        assert_eq!(cb.nonce, Some((NOW, "350176".into())));
    }

    #[test]
    fn a_wrong_secret_a_missing_signature_and_a_stale_timestamp_are_refused() {
        let body = login("s3cret", NOW, "350176");
        assert_eq!(verify(1, body.as_bytes(), false, "other", now()), Err(Refusal::BadSignature));
        let unsigned = body.replace("\"signature\"", "\"sig\"");
        assert_eq!(verify(1, unsigned.as_bytes(), false, "s3cret", now()), Err(Refusal::MissingSignature));
        let old = login("s3cret", NOW - 301, "1");
        assert_eq!(verify(1, old.as_bytes(), false, "s3cret", now()), Err(Refusal::Stale));
        let future = login("s3cret", NOW + 301, "1");
        assert_eq!(verify(1, future.as_bytes(), false, "s3cret", now()), Err(Refusal::Stale));
        assert!(verify(1, login("s3cret", NOW - 300, "1").as_bytes(), false, "s3cret", now()).is_ok());
    }

    #[test]
    fn numbers_and_forms_read_like_strings() {
        let sig = signature("k", &NOW.to_string(), "7");
        let numbers = format!(
            r#"{{"event":"room_logout","appid":1,"timestamp":{NOW},"nonce":7,"signature":"{sig}","room_id":"r","user_account":"u","session_id":"s","logout_time":1499676979000,"reason":3}}"#
        );
        let cb = verify(1, numbers.as_bytes(), false, "k", now()).unwrap();
        assert_eq!(cb.event, RoomEvent::Removed);
        let form = format!(
            "event=room_logout&appid=1&timestamp={NOW}&nonce=7&signature={sig}&room_id=r%20one&user_account=u&reason=1&logout_time=1499676979000"
        );
        let cb = verify(1, form.as_bytes(), true, "k", now()).unwrap();
        assert_eq!((cb.event, cb.room), (RoomEvent::Other, RoomId::Text("r one".into())));
    }

    #[test]
    fn a_redelivery_signed_anew_keeps_its_event_key_and_another_app_in_the_body_is_malformed() {
        let a = verify(1, login("k", NOW, "1").as_bytes(), false, "k", now()).unwrap();
        let b = verify(1, login("k", NOW + 2, "2").as_bytes(), false, "k", now()).unwrap();
        assert_eq!(a.event_key, b.event_key);
        assert_ne!(a.nonce, b.nonce);
        let refused = verify(2, login("k", NOW, "1").as_bytes(), false, "k", now()).unwrap_err();
        assert_eq!(refused.reason(), "malformed");
    }
}
