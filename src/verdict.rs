//! The verdict contract, version 1: what moderation pipelines publish, one JSON object per AMQP
//! message body. [`Verdict::parse`] turns raw bytes into domain types or a [`ContractError`] that
//! names the field and the rule it broke. The same rules are published as
//! `deploy/verdict.schema.json`; a test keeps the two in agreement.

use std::fmt;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

pub use crate::ban::{Ban, BanScope, MAX_BAN_SECONDS};

/// Largest accepted message body. Larger bodies are rejected before any parsing.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// `verdict_id`, `user_ids[]` and string `room_id` values are at most this many bytes.
pub const MAX_ID_BYTES: usize = 128;
/// At most this many users per verdict (after nothing is collapsed: the raw array length).
pub const MAX_USERS: usize = 100;
/// `reason` is stored in full up to this size.
pub const MAX_REASON_BYTES: usize = 4 * 1024;
/// TRTC numeric rooms are `1..=MAX_TRTC_NUMERIC_ROOM` (the vendor's documented range).
pub const MAX_TRTC_NUMERIC_ROOM: u64 = 4_294_967_294;
/// `detected_at` must fall in `EARLIEST_DETECTION..=LATEST_DETECTION` (UTC, after applying its
/// offset). PostgreSQL cannot store every instant RFC 3339 can write (year 0, or 9999-12-31 with a
/// negative offset, which is year 10000 in UTC), and no moderation pipeline detected anything
/// before 1970: such a value is a bug upstream, and taking it would poison the latency figures.
pub const EARLIEST_DETECTION: &str = "1970-01-01T00:00:00Z";
pub const LATEST_DETECTION: &str = "9999-12-31T23:59:59Z";

const FIELDS: [&str; 11] = [
    "verdict_id",
    "vendor",
    "app_id",
    "room_id",
    "user_ids",
    "reason",
    "source",
    "detected_at",
    "evidence",
    "ban",
    // Optional version marker so a publisher can say which contract it speaks.
    "contract_version",
];

/// The vendor whose API enforces a verdict (registered in [`crate::vendors`]).
pub use crate::vendors::Vendor;

/// A room as the vendor knows it. For TRTC a numeric room and a string room with the same digits
/// are different rooms (different APIs), so the distinction is kept all the way to the wire.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RoomId {
    Text(String),
    /// Only for TRTC: `RemoveUser` with an integer `RoomId`.
    Numeric(u32),
}

impl RoomId {
    pub fn is_numeric(&self) -> bool {
        matches!(self, RoomId::Numeric(_))
    }

    /// Rebuilds a room from its audit form (`room_id` text plus `room_id_numeric`).
    pub fn from_parts(text: &str, numeric: bool) -> Option<RoomId> {
        if numeric { text.parse().ok().map(RoomId::Numeric) } else { Some(RoomId::Text(text.to_owned())) }
    }

    fn to_json(&self) -> Value {
        match self {
            RoomId::Text(s) => Value::String(s.clone()),
            RoomId::Numeric(n) => Value::from(*n),
        }
    }
}

impl fmt::Display for RoomId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RoomId::Text(s) => f.write_str(s),
            RoomId::Numeric(n) => write!(f, "{n}"),
        }
    }
}

/// A verdict that passed every rule of the contract.
#[derive(Clone, Debug, PartialEq)]
pub struct Verdict {
    pub verdict_id: String,
    pub vendor: Vendor,
    pub app_id: u32,
    pub room_id: RoomId,
    /// Distinct, in the order first seen.
    pub user_ids: Vec<String>,
    pub reason: Option<String>,
    pub source: Option<String>,
    pub detected_at: Option<DateTime<Utc>>,
    pub evidence: Option<Map<String, Value>>,
    /// Keep the users out for a time after the kick; `None`: kick only.
    pub ban: Option<Ban>,
}

/// Why a message broke the contract: the field (when one is to blame) and the rule.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
// The field name can be any key a publisher wrote: shown escaped, it cannot forge a log line.
#[error("{}{message}", field.as_ref().map(|f| format!("field `{}`: ", crate::text::single_line(f))).unwrap_or_default())]
pub struct ContractError {
    /// The offending field, `None` for whole-body problems (size, encoding, not an object).
    pub field: Option<String>,
    /// A stable, low-cardinality name of the rule (used as a metric label).
    pub rule: Rule,
    pub message: String,
}

/// The rules a message can break. Stable names: they are metric labels and audit values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Rule {
    TooLarge,
    NotUtf8,
    NotJson,
    NotObject,
    UnknownField,
    Missing,
    WrongType,
    OutOfRange,
    TooLong,
    Empty,
    BadValue,
    /// A string (or an object key) anywhere in the body holds U+0000, which PostgreSQL's text and
    /// jsonb cannot store.
    NulCharacter,
    /// A `verdict_id` already names another verdict (vendor, app, room, users or ban differ): the
    /// id is the idempotency key, so the new message is kept as rejected rather than dropped as a
    /// duplicate or enforced under another verdict's name.
    VerdictIdReused,
    /// Not a contract rule: PostgreSQL refused to store the message for a reason the contract
    /// does not check. Recorded with the database's reason so the contract can learn it.
    Unstorable,
}

impl Rule {
    pub fn as_str(self) -> &'static str {
        match self {
            Rule::TooLarge => "too_large",
            Rule::NotUtf8 => "not_utf8",
            Rule::NotJson => "not_json",
            Rule::NotObject => "not_object",
            Rule::UnknownField => "unknown_field",
            Rule::Missing => "missing_field",
            Rule::WrongType => "wrong_type",
            Rule::OutOfRange => "out_of_range",
            Rule::TooLong => "too_long",
            Rule::Empty => "empty",
            Rule::BadValue => "bad_value",
            Rule::NulCharacter => "nul_character",
            Rule::Unstorable => "unstorable",
            Rule::VerdictIdReused => "verdict_id_reused",
        }
    }
}

fn err(field: &str, rule: Rule, message: impl Into<String>) -> ContractError {
    ContractError { field: Some(field.to_owned()), rule, message: message.into() }
}

fn body_err(rule: Rule, message: impl Into<String>) -> ContractError {
    ContractError { field: None, rule, message: message.into() }
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "an integer",
        Value::Number(_) => "a non-integer number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn wrong_type(field: &str, expected: &str, got: &Value) -> ContractError {
    err(field, Rule::WrongType, format!("must be {expected}, got {}", json_type(got)))
}

/// A string with a byte-length window; `what` names the value in messages.
fn bounded_str(field: &str, v: &Value, max: usize, allow_empty: bool) -> Result<String, ContractError> {
    let Value::String(s) = v else {
        return Err(wrong_type(field, "a string", v));
    };
    if s.is_empty() && !allow_empty {
        return Err(err(field, Rule::Empty, "must not be empty"));
    }
    if s.len() > max {
        return Err(err(field, Rule::TooLong, format!("must be at most {max} bytes of UTF-8, got {}", s.len())));
    }
    Ok(s.clone())
}

impl Verdict {
    /// Parses one AMQP message body. Checks run cheapest first: size, UTF-8, JSON, then fields in
    /// contract order, so the error names the first rule broken.
    pub fn parse(body: &[u8]) -> Result<Verdict, ContractError> {
        if body.len() > MAX_BODY_BYTES {
            return Err(body_err(
                Rule::TooLarge,
                format!("body is {} bytes, at most {MAX_BODY_BYTES} allowed", body.len()),
            ));
        }
        let text = std::str::from_utf8(body).map_err(|e| {
            body_err(Rule::NotUtf8, format!("body is not valid UTF-8 (bad byte at offset {})", e.valid_up_to()))
        })?;
        let value: Value =
            serde_json::from_str(text).map_err(|e| body_err(Rule::NotJson, format!("body is not valid JSON: {e}")))?;
        let Value::Object(mut obj) = value else {
            return Err(body_err(Rule::NotObject, format!("body must be a JSON object, got {}", json_type(&value))));
        };
        // Before anything names a field: a key itself may hold the NUL.
        for (key, v) in &obj {
            if key.contains('\0') || holds_nul(v) {
                return Err(err(
                    &key.replace('\0', "\\u0000"),
                    Rule::NulCharacter,
                    "must not contain U+0000 (\\u0000) in any string or key; it cannot be stored",
                ));
            }
        }
        if let Some(unknown) = obj.keys().find(|k| !FIELDS.contains(&k.as_str())) {
            return Err(err(unknown, Rule::UnknownField, "is not part of the verdict contract (version 1)"));
        }
        // `null` means absent, as for every optional field.
        if let Some(v) = obj.get("contract_version")
            && !v.is_null()
            && v.as_u64() != Some(1)
        {
            return Err(err("contract_version", Rule::BadValue, "must be 1 when given"));
        }

        let mut required = |field: &str| {
            obj.remove(field).filter(|v| !v.is_null()).ok_or_else(|| err(field, Rule::Missing, "is required"))
        };
        let verdict_id = bounded_str("verdict_id", &required("verdict_id")?, MAX_ID_BYTES, false)?;
        let vendor_value = required("vendor")?;
        let vendor = match &vendor_value {
            Value::String(s) => Vendor::parse(s)
                .ok_or_else(|| err("vendor", Rule::BadValue, format!("must be \"zego\" or \"trtc\", got {s:?}")))?,
            other => {
                return Err(wrong_type("vendor", "a string (\"zego\" or \"trtc\")", other));
            }
        };
        let app_id = parse_app_id(&required("app_id")?)?;
        let room_id = parse_room_id(vendor, &required("room_id")?)?;
        let user_ids = parse_user_ids(&required("user_ids")?)?;

        let mut optional = |field: &str| obj.remove(field).filter(|v| !v.is_null());
        let reason = optional("reason").map(|v| bounded_str("reason", &v, MAX_REASON_BYTES, true)).transpose()?;
        let source = optional("source").map(|v| bounded_str("source", &v, MAX_BODY_BYTES, true)).transpose()?;
        let detected_at = optional("detected_at").map(|v| parse_time(&v)).transpose()?;
        let evidence = match optional("evidence") {
            None => None,
            Some(Value::Object(m)) => Some(m),
            Some(other) => return Err(wrong_type("evidence", "a JSON object", &other)),
        };
        let ban = optional("ban").map(|v| parse_ban(&v)).transpose()?;

        Ok(Verdict { verdict_id, vendor, app_id, room_id, user_ids, reason, source, detected_at, evidence, ban })
    }

    /// Whether `other` asks for the same enforcement: vendor, app, room, set of users and ban
    /// (reason, source and evidence are descriptions, not identity).
    pub fn same_enforcement(&self, other: &Verdict) -> bool {
        let mut a: Vec<&String> = self.user_ids.iter().collect();
        let mut b: Vec<&String> = other.user_ids.iter().collect();
        a.sort_unstable();
        b.sort_unstable();
        self.vendor == other.vendor
            && self.app_id == other.app_id
            && self.room_id == other.room_id
            && a == b
            && self.ban == other.ban
    }

    /// The verdict as a contract-v1 message body (used by `kick` and `replay` to publish).
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("verdict_id".into(), Value::String(self.verdict_id.clone()));
        m.insert("vendor".into(), Value::String(self.vendor.as_str().into()));
        m.insert("app_id".into(), Value::from(self.app_id));
        m.insert("room_id".into(), self.room_id.to_json());
        m.insert("user_ids".into(), Value::from(self.user_ids.clone()));
        if let Some(r) = &self.reason {
            m.insert("reason".into(), Value::String(r.clone()));
        }
        if let Some(s) = &self.source {
            m.insert("source".into(), Value::String(s.clone()));
        }
        if let Some(t) = &self.detected_at {
            m.insert("detected_at".into(), Value::String(t.to_rfc3339()));
        }
        if let Some(e) = &self.evidence {
            m.insert("evidence".into(), Value::Object(e.clone()));
        }
        if let Some(b) = &self.ban {
            let ban = serde_json::json!({"seconds": b.seconds, "scope": b.scope.as_str()});
            m.insert("ban".into(), ban);
        }
        Value::Object(m)
    }
}

fn parse_app_id(v: &Value) -> Result<u32, ContractError> {
    let Value::Number(n) = v else {
        return Err(wrong_type("app_id", "an integer", v));
    };
    if !(n.is_u64() || n.is_i64()) {
        return Err(wrong_type("app_id", "an integer", v));
    }
    n.as_u64()
        .and_then(|n| u32::try_from(n).ok())
        .filter(|n| *n > 0)
        .ok_or_else(|| err("app_id", Rule::OutOfRange, format!("must be in 1..=4294967295, got {n}")))
}

fn parse_room_id(vendor: Vendor, v: &Value) -> Result<RoomId, ContractError> {
    match v {
        Value::String(_) => Ok(RoomId::Text(bounded_str("room_id", v, MAX_ID_BYTES, false)?)),
        Value::Number(n) if n.is_u64() || n.is_i64() => match vendor {
            Vendor::Trtc => n
                .as_u64()
                .filter(|n| (1..=MAX_TRTC_NUMERIC_ROOM).contains(n))
                .and_then(|n| u32::try_from(n).ok())
                .map(RoomId::Numeric)
                .ok_or_else(|| {
                    err(
                        "room_id",
                        Rule::OutOfRange,
                        format!("a TRTC numeric room must be in 1..={MAX_TRTC_NUMERIC_ROOM}, got {n}"),
                    )
                }),
            // ZEGO rooms are strings; an integer names the room spelled with its decimal digits.
            Vendor::Zego => n
                .as_u64()
                .map(|n| RoomId::Text(n.to_string()))
                .ok_or_else(|| err("room_id", Rule::OutOfRange, format!("must not be negative, got {n}"))),
        },
        other => Err(wrong_type("room_id", "a string or an integer", other)),
    }
}

/// `ban`: an object with `seconds` (required) and `scope` (default `room`), nothing else.
fn parse_ban(v: &Value) -> Result<Ban, ContractError> {
    let Value::Object(obj) = v else {
        return Err(wrong_type("ban", "an object like {\"seconds\": 3600, \"scope\": \"room\"}", v));
    };
    if let Some(unknown) = obj.keys().find(|k| !["seconds", "scope"].contains(&k.as_str())) {
        return Err(err(&format!("ban.{unknown}"), Rule::UnknownField, "is not part of a ban (seconds, scope)"));
    }
    let seconds = match obj.get("seconds") {
        None | Some(Value::Null) => return Err(err("ban.seconds", Rule::Missing, "is required in a ban")),
        Some(Value::Number(n)) if n.is_u64() || n.is_i64() => n
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .filter(|n| (1..=MAX_BAN_SECONDS).contains(n))
            .ok_or_else(|| {
                err("ban.seconds", Rule::OutOfRange, format!("must be in 1..={MAX_BAN_SECONDS} (one year), got {n}"))
            })?,
        Some(other) => return Err(wrong_type("ban.seconds", "an integer number of seconds", other)),
    };
    let scope = match obj.get("scope") {
        None | Some(Value::Null) => BanScope::Room,
        Some(Value::String(s)) => s
            .parse::<BanScope>()
            .ok()
            .ok_or_else(|| err("ban.scope", Rule::BadValue, format!("must be \"room\" or \"app\", got {s:?}")))?,
        Some(other) => return Err(wrong_type("ban.scope", "a string (\"room\" or \"app\")", other)),
    };
    Ok(Ban { seconds, scope })
}

fn parse_user_ids(v: &Value) -> Result<Vec<String>, ContractError> {
    let Value::Array(items) = v else {
        return Err(wrong_type("user_ids", "an array of strings", v));
    };
    if items.is_empty() {
        return Err(err("user_ids", Rule::Empty, "must list at least one user"));
    }
    if items.len() > MAX_USERS {
        return Err(err(
            "user_ids",
            Rule::TooLong,
            format!("must list at most {MAX_USERS} users, got {}", items.len()),
        ));
    }
    let mut users: Vec<String> = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let user = bounded_str(&format!("user_ids[{i}]"), item, MAX_ID_BYTES, false)?;
        // Duplicates collapse; the list is short (≤ 100) so a linear scan beats hashing.
        if !users.contains(&user) {
            users.push(user);
        }
    }
    Ok(users)
}

fn parse_time(v: &Value) -> Result<DateTime<Utc>, ContractError> {
    let Value::String(s) = v else {
        return Err(wrong_type("detected_at", "an RFC 3339 timestamp string", v));
    };
    let t = DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| err("detected_at", Rule::BadValue, format!("must be an RFC 3339 timestamp ({e}), got {s:?}")))?;
    let bound = |b: &str| DateTime::parse_from_rfc3339(b).map(|b| b.with_timezone(&Utc)).ok();
    match (bound(EARLIEST_DETECTION), bound(LATEST_DETECTION)) {
        (Some(lo), Some(hi)) if (lo..=hi).contains(&t) => Ok(t),
        _ => Err(err(
            "detected_at",
            Rule::OutOfRange,
            format!("must be between {EARLIEST_DETECTION} and {LATEST_DETECTION} in UTC, got {s:?}"),
        )),
    }
}

/// Whether any string or key inside `v` holds U+0000.
fn holds_nul(v: &Value) -> bool {
    match v {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(holds_nul),
        Value::Object(m) => m.iter().any(|(k, v)| k.contains('\0') || holds_nul(v)),
        Value::Null | Value::Bool(_) | Value::Number(_) => false,
    }
}

#[cfg(test)]
mod tests;
