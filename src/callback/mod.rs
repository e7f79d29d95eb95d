//! The vendors' room callbacks as Bouncer reads them: ZEGO `room_login` / `room_logout`
//! ([`zego`]) and TRTC room events ([`trtc`]), each verified exactly as its vendor signs it and
//! typed at this boundary as a [`RoomCallback`]. Pure functions: no I/O, so the fuzzers and the
//! property tests reach every line.
//!
//! Nothing here acts: a refused callback is a [`Refusal`] and never becomes a `RoomCallback`, so
//! no body without a valid signature can reach enforcement (`src/api/callbacks.rs` acts on what
//! comes out).

pub mod trtc;
pub mod zego;

use chrono::{DateTime, TimeZone, Utc};

use crate::vendors::Vendor;
use crate::verdict::RoomId;

/// How far a callback's timestamp may be from now, either way: both vendors retry for a minute
/// or so, clocks drift, and a captured callback older than this is refused.
pub const MAX_SKEW_SECS: i64 = 300;

/// What a verified callback says happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RoomEvent {
    /// A user entered the room (ZEGO `room_login`, TRTC 103).
    Entered,
    /// A server API removed the user (ZEGO `room_logout` reason 3, TRTC 104 Reason 3): the
    /// vendor's confirmation of a kick.
    Removed,
    /// Anything else (a normal exit, a timeout, a media event): verified, answered, not acted on.
    Other,
}

impl RoomEvent {
    pub fn as_str(self) -> &'static str {
        match self {
            RoomEvent::Entered => "entered",
            RoomEvent::Removed => "removed",
            RoomEvent::Other => "other",
        }
    }
}

/// A verified callback about one user in one room.
#[derive(Clone, Debug, PartialEq)]
pub struct RoomCallback {
    pub vendor: Vendor,
    pub app_id: u32,
    pub event: RoomEvent,
    pub room: RoomId,
    pub user_id: String,
    /// When the vendor says it happened (login or logout time), if it said.
    pub at: Option<DateTime<Utc>>,
    /// The vendor's identity of this event, the same on every redelivery (not the signature or
    /// the send time, which may change): a second delivery finds the first by it.
    pub event_key: String,
    /// ZEGO's signed (timestamp, nonce): refused when seen before (the signature does not cover
    /// the body). `None` for TRTC, whose signature covers the whole body.
    pub nonce: Option<(i64, String)>,
}

/// Why a callback was refused. Every refusal but `Malformed` is a 401: nothing about it can be
/// trusted. The reason is a metric label and a log field; it never carries the body or a secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// No app of this vendor with this id has a callback secret configured.
    UnknownApp,
    /// The signature (or what it covers: ZEGO's timestamp and nonce) is missing.
    MissingSignature,
    BadSignature,
    /// The signed timestamp is more than [`MAX_SKEW_SECS`] from now.
    Stale,
    /// A ZEGO (timestamp, nonce) already used.
    Replayed,
    /// Signed, but not a callback Bouncer can read: the field at fault and why (a 400).
    Malformed {
        field: &'static str,
        why: String,
    },
}

impl Refusal {
    /// The metric label and log field.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::UnknownApp => "unknown_app",
            Refusal::MissingSignature => "missing_signature",
            Refusal::BadSignature => "bad_signature",
            Refusal::Stale => "stale_timestamp",
            Refusal::Replayed => "replayed",
            Refusal::Malformed { .. } => "malformed",
        }
    }

    fn malformed(field: &'static str, why: impl Into<String>) -> Refusal {
        Refusal::Malformed { field, why: why.into() }
    }
}

/// Whether `signed_at` (Unix seconds) is within [`MAX_SKEW_SECS`] of `now`.
fn fresh(signed_at: i64, now: DateTime<Utc>) -> bool {
    now.timestamp().checked_sub(signed_at).is_some_and(|d| d.abs() <= MAX_SKEW_SECS)
}

/// Unix milliseconds as a time, if in range.
fn from_millis(ms: i64) -> Option<DateTime<Utc>> {
    Utc.timestamp_millis_opt(ms).single()
}

/// A stable key from the parts that identify an event (JSON, so no part can run into another).
fn event_key(parts: &[&str]) -> String {
    serde_json::to_string(parts).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn now() -> DateTime<Utc> {
        Utc.timestamp_opt(1_700_000_000, 0).unwrap()
    }

    proptest! {
        /// Whatever arrives, only a body carrying its own valid signature becomes a
        /// `RoomCallback` — the only thing the handler acts on.
        #[test]
        fn no_trtc_body_without_its_signature_is_accepted(body in proptest::collection::vec(any::<u8>(), 0..400), sign in ".{0,60}") {
            if trtc::verify(1, &body, Some(&sign), "key", now()).is_ok() {
                prop_assert_eq!(sign.trim(), trtc::sign("key", &body));
            }
        }

        #[test]
        fn no_zego_body_without_its_signature_is_accepted(
            timestamp in prop_oneof![Just("1700000000".to_owned()), "[0-9]{1,12}"],
            nonce in "[0-9a-z]{0,12}",
            signature in prop_oneof!["[0-9a-f]{40}", ".{0,50}"],
            event in prop_oneof![Just("room_login".to_owned()), Just("room_logout".to_owned()), ".{0,12}"],
            user in ".{0,20}",
        ) {
            let body = serde_json::json!({"event": event, "timestamp": timestamp, "nonce": nonce, "signature": signature,
                                          "room_id": "r", "user_account": user, "reason": "3"}).to_string();
            if zego::verify(1, body.as_bytes(), false, "secret", now()).is_ok() {
                prop_assert_eq!(signature, zego::signature("secret", &timestamp, &nonce));
            }
        }

        /// The same fields signed properly verify (the property above is not vacuous).
        #[test]
        fn a_properly_signed_zego_login_is_accepted(nonce in "[0-9]{1,9}", user in "[a-z0-9]{1,20}") {
            let signature = zego::signature("secret", "1700000000", &nonce);
            let body = serde_json::json!({"event": "room_login", "timestamp": "1700000000", "nonce": nonce,
                                          "signature": signature, "room_id": "r", "user_account": user}).to_string();
            prop_assert!(zego::verify(1, body.as_bytes(), false, "secret", now()).is_ok());
        }
    }
}
