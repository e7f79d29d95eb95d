//! TRTC's room event callbacks, verified as Tencent signs them: `Sign = base64(HMAC-SHA256(key,
//! body))` over the raw body bytes exactly as they arrived (the documented example keeps its
//! newlines and tabs), checked before the body is parsed. `RoomId` is a number or a string, as the
//! client's room was; a number stays a numeric room, as in the verdict contract.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, Utc};
use hmac::{Hmac, KeyInit, Mac};
use serde_json::Value;
use sha2::Sha256;

use super::{Refusal, RoomCallback, RoomEvent, event_key, fresh, from_millis};
use crate::vendors::Vendor;
use crate::verdict::RoomId;

/// The room event group; media events (group 2) are answered and ignored.
pub const GROUP_ROOM: i64 = 1;
pub const ENTER_ROOM: i64 = 103;
pub const EXIT_ROOM: i64 = 104;
/// 104's `Reason` when the user was removed from the room (RemoveUser).
pub const REASON_REMOVED: i64 = 3;

/// Longest body read; room events are a few hundred bytes.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// The `Sign` of `body` under `key`, as TRTC computes it.
pub fn sign(key: &str, body: &[u8]) -> String {
    STANDARD.encode(mac(key, body).finalize().into_bytes())
}

fn mac(key: &str, body: &[u8]) -> Hmac<Sha256> {
    // HMAC takes a key of any length.
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key.as_bytes()).unwrap_or_else(|_| unreachable!());
    mac.update(body);
    mac
}

/// Verifies a callback for `sdk_app_id` (from the URL) and reads it. `given` is the `Sign`
/// header, `key` the app's `callback_key`.
pub fn verify(
    sdk_app_id: u32,
    body: &[u8],
    given: Option<&str>,
    key: &str,
    now: DateTime<Utc>,
) -> Result<RoomCallback, Refusal> {
    let given = given.map(str::trim).filter(|s| !s.is_empty()).ok_or(Refusal::MissingSignature)?;
    let given = STANDARD.decode(given).map_err(|_| Refusal::BadSignature)?;
    // `verify_slice` compares in constant time.
    mac(key, body).verify_slice(&given).map_err(|_| Refusal::BadSignature)?;
    let v: Value = serde_json::from_slice(body).map_err(|e| Refusal::malformed("body", format!("not JSON: {e}")))?;
    if !v.is_object() {
        return Err(Refusal::malformed("body", "not a JSON object"));
    }
    let sent_ms =
        v["CallbackTs"].as_i64().ok_or_else(|| Refusal::malformed("CallbackTs", "missing or not an integer"))?;
    if !fresh(sent_ms.div_euclid(1000), now) {
        return Err(Refusal::Stale);
    }
    let group =
        v["EventGroupId"].as_i64().ok_or_else(|| Refusal::malformed("EventGroupId", "missing or not an integer"))?;
    let kind = v["EventType"].as_i64().ok_or_else(|| Refusal::malformed("EventType", "missing or not an integer"))?;
    let info = &v["EventInfo"];
    let event = match (group, kind) {
        (GROUP_ROOM, ENTER_ROOM) => RoomEvent::Entered,
        (GROUP_ROOM, EXIT_ROOM) if info["Reason"].as_i64() == Some(REASON_REMOVED) => RoomEvent::Removed,
        _ => RoomEvent::Other,
    };
    let room = match &info["RoomId"] {
        Value::String(s) if !s.is_empty() => RoomId::Text(s.clone()),
        Value::Number(n) => RoomId::Numeric(
            n.as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| Refusal::malformed("EventInfo.RoomId", "a numeric room must be 1..=4294967295"))?,
        ),
        // Room-less events of other groups are not acted on anyway.
        _ if event == RoomEvent::Other => RoomId::Text(String::new()),
        _ => return Err(Refusal::malformed("EventInfo.RoomId", "missing: a string or a number")),
    };
    let user_id = match info["UserId"].as_str() {
        Some(u) if !u.is_empty() => u.to_owned(),
        _ if event == RoomEvent::Other => String::new(),
        _ => return Err(Refusal::malformed("EventInfo.UserId", "missing")),
    };
    let event_ms = info["EventMsTs"].as_i64().or_else(|| info["EventTs"].as_i64().map(|s| s.saturating_mul(1000)));
    // A redelivery carries the same event (its send time may differ): type, room (with its kind),
    // user, the event's own time and, for old setups, UniqueId.
    let room_key = match &room {
        RoomId::Numeric(n) => format!("n:{n}"),
        RoomId::Text(s) => format!("s:{s}"),
    };
    let key = event_key(&[
        &kind.to_string(),
        &room_key,
        &user_id,
        &event_ms.map(|m| m.to_string()).unwrap_or_else(|| sent_ms.to_string()),
        &info["UniqueId"].as_i64().map(|u| u.to_string()).unwrap_or_default(),
    ]);
    Ok(RoomCallback {
        vendor: Vendor::Trtc,
        app_id: sdk_app_id,
        event,
        room,
        user_id,
        at: event_ms.and_then(from_millis),
        event_key: key,
        nonce: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    /// The body of Tencent's "Verify Signature Example" (trtc.io/document/54912), byte for byte.
    const DOC_BODY: &str = "{\n\t\"EventGroupId\":\t1,\n\t\"EventType\":\t103,\n\t\"CallbackTs\":\t1615554923704,\n\t\"EventInfo\":\t{\n\t\t\"RoomId\":\t12345,\n\t\t\"EventTs\":\t1608441737,\n\t\t\"UserId\":\t\"test\",\n\t\t\"UniqueId\":\t1615554922656,\n\t\t\"Role\":\t20,\n\t\t\"Reason\":\t1\n\t}\n}";

    fn at(ms: i64) -> DateTime<Utc> {
        Utc.timestamp_millis_opt(ms).unwrap()
    }

    #[test]
    fn the_documented_body_and_key_give_the_documented_sign_and_verify() {
        assert_eq!(DOC_BODY.len(), 212);
        assert_eq!(sign("123654", DOC_BODY.as_bytes()), "IncDMWHWRAoOHN72/K0wTTIY8pDyMINRLtBsmg3b+Uo=");
        let cb = verify(
            1400000000,
            DOC_BODY.as_bytes(),
            Some("IncDMWHWRAoOHN72/K0wTTIY8pDyMINRLtBsmg3b+Uo="),
            "123654",
            at(1615554923704),
        )
        .unwrap();
        assert_eq!(cb.event, RoomEvent::Entered);
        assert_eq!(cb.room, RoomId::Numeric(12345));
        assert_eq!(cb.user_id, "test");
        assert_eq!(cb.at, Some(at(1608441737000)));
    }

    #[test]
    fn the_same_json_reserialised_a_tampered_body_and_a_wrong_key_are_refused() {
        let sign = sign("123654", DOC_BODY.as_bytes());
        let now = at(1615554923704);
        let compact = serde_json::to_string(&serde_json::from_str::<Value>(DOC_BODY).unwrap()).unwrap();
        assert_eq!(verify(1, compact.as_bytes(), Some(&sign), "123654", now), Err(Refusal::BadSignature));
        let tampered = DOC_BODY.replace("\"test\"", "\"tess\"");
        assert_eq!(verify(1, tampered.as_bytes(), Some(&sign), "123654", now), Err(Refusal::BadSignature));
        assert_eq!(verify(1, DOC_BODY.as_bytes(), Some(&sign), "123655", now), Err(Refusal::BadSignature));
        assert_eq!(verify(1, DOC_BODY.as_bytes(), None, "123654", now), Err(Refusal::MissingSignature));
        assert_eq!(verify(1, DOC_BODY.as_bytes(), Some("%%%"), "123654", now), Err(Refusal::BadSignature));
        assert_eq!(
            verify(1, DOC_BODY.as_bytes(), Some(&sign), "123654", at(1615554923704 + 301_000)),
            Err(Refusal::Stale)
        );
    }

    #[test]
    fn a_string_room_stays_a_string_and_a_removal_is_told_from_a_normal_exit() {
        let now = at(1687770731922);
        let body = |room: &str, reason: i64| {
            format!(
                r#"{{"EventGroupId":1,"EventType":104,"CallbackTs":1687770731922,"EventInfo":{{"RoomId":{room},"EventTs":1687770731,"EventMsTs":1687770731898,"UserId":"test","Role":20,"Reason":{reason}}}}}"#
            )
        };
        let removed = body("\"12345\"", 3);
        let cb = verify(1, removed.as_bytes(), Some(&sign("k", removed.as_bytes())), "k", now).unwrap();
        assert_eq!((cb.event, cb.room.clone()), (RoomEvent::Removed, RoomId::Text("12345".into())));
        let numeric = body("12345", 3);
        let other = verify(1, numeric.as_bytes(), Some(&sign("k", numeric.as_bytes())), "k", now).unwrap();
        assert_ne!(cb.event_key, other.event_key, "string and numeric rooms are different rooms");
        let normal = body("12345", 1);
        let cb = verify(1, normal.as_bytes(), Some(&sign("k", normal.as_bytes())), "k", now).unwrap();
        assert_eq!(cb.event, RoomEvent::Other);
    }
}
