//! The verdict contract, version 1: what moderation pipelines publish, one JSON object per AMQP
//! message body. [`Verdict::parse`] turns raw bytes into domain types or a [`ContractError`] that
//! names the field and the rule it broke. The same rules are published as
//! `deploy/verdict.schema.json`; a test keeps the two in agreement.

use std::fmt;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

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

const FIELDS: [&str; 10] = [
    "verdict_id",
    "vendor",
    "app_id",
    "room_id",
    "user_ids",
    "reason",
    "source",
    "detected_at",
    "evidence",
    // Optional version marker so a publisher can say which contract it speaks.
    "contract_version",
];

/// The vendor whose kick API enforces a verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Vendor {
    Zego,
    Trtc,
}

impl Vendor {
    pub fn as_str(self) -> &'static str {
        match self {
            Vendor::Zego => "zego",
            Vendor::Trtc => "trtc",
        }
    }

    pub fn parse(s: &str) -> Option<Vendor> {
        match s {
            "zego" => Some(Vendor::Zego),
            "trtc" => Some(Vendor::Trtc),
            _ => None,
        }
    }
}

impl fmt::Display for Vendor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

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
    /// A `verdict_id` already names another verdict (vendor, app, room or users differ): the
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

        Ok(Verdict { verdict_id, vendor, app_id, room_id, user_ids, reason, source, detected_at, evidence })
    }

    /// Whether `other` asks for the same enforcement: vendor, app, room and set of users (reason,
    /// source and evidence are descriptions, not identity).
    pub fn same_enforcement(&self, other: &Verdict) -> bool {
        let mut a: Vec<&String> = self.user_ids.iter().collect();
        let mut b: Vec<&String> = other.user_ids.iter().collect();
        a.sort_unstable();
        b.sort_unstable();
        self.vendor == other.vendor && self.app_id == other.app_id && self.room_id == other.room_id && a == b
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
mod tests {
    use super::*;
    use serde_json::json;

    fn good() -> Value {
        json!({
            "verdict_id": "v-1",
            "vendor": "trtc",
            "app_id": 1400000001,
            "room_id": 1234,
            "user_ids": ["a", "b"],
        })
    }

    fn parse(v: &Value) -> Result<Verdict, ContractError> {
        Verdict::parse(v.to_string().as_bytes())
    }

    fn with(field: &str, value: Value) -> Value {
        let mut v = good();
        v[field] = value;
        v
    }

    fn without(field: &str) -> Value {
        let mut v = good();
        v.as_object_mut().map(|m| m.remove(field));
        v
    }

    #[track_caller]
    fn rejects(v: Value, field: Option<&str>, rule: Rule) {
        let e = parse(&v).expect_err("should be rejected");
        assert_eq!(e.field.as_deref(), field, "{e}");
        assert_eq!(e.rule, rule, "{e}");
    }

    #[test]
    fn minimal_trtc_numeric_verdict_parses() {
        let v = parse(&good()).unwrap();
        assert_eq!(v.vendor, Vendor::Trtc);
        assert_eq!(v.app_id, 1_400_000_001);
        assert_eq!(v.room_id, RoomId::Numeric(1234));
        assert_eq!(v.user_ids, ["a", "b"]);
        assert_eq!(v.reason, None);
    }

    #[test]
    fn full_verdict_parses_every_optional_field() {
        let v = parse(&json!({
            "verdict_id": "v-9", "vendor": "zego", "app_id": 1234567890, "room_id": "room-1",
            "user_ids": ["u1"], "reason": "spam", "source": "asr-model-7",
            "detected_at": "2026-11-22T03:00:00+08:00", "evidence": {"score": 0.98},
            "contract_version": 1
        }))
        .unwrap();
        assert_eq!(v.room_id, RoomId::Text("room-1".into()));
        assert_eq!(v.reason.as_deref(), Some("spam"));
        assert_eq!(v.source.as_deref(), Some("asr-model-7"));
        assert_eq!(v.detected_at.unwrap().to_rfc3339(), "2026-11-21T19:00:00+00:00");
        assert_eq!(v.evidence.unwrap()["score"], json!(0.98));
    }

    #[test]
    fn trtc_string_room_stays_a_string_room() {
        let v = parse(&with("room_id", json!("1234"))).unwrap();
        assert_eq!(v.room_id, RoomId::Text("1234".into()));
    }

    #[test]
    fn zego_integer_room_becomes_its_decimal_string() {
        let mut g = with("vendor", json!("zego"));
        g["room_id"] = json!(98765);
        assert_eq!(parse(&g).unwrap().room_id, RoomId::Text("98765".into()));
        g["room_id"] = json!(-1);
        rejects(g, Some("room_id"), Rule::OutOfRange);
    }

    #[test]
    fn trtc_numeric_room_range_is_enforced() {
        rejects(with("room_id", json!(0)), Some("room_id"), Rule::OutOfRange);
        rejects(with("room_id", json!(4_294_967_295u64)), Some("room_id"), Rule::OutOfRange);
        rejects(with("room_id", json!(-5)), Some("room_id"), Rule::OutOfRange);
        assert!(parse(&with("room_id", json!(4_294_967_294u64))).is_ok());
        assert!(parse(&with("room_id", json!(1))).is_ok());
    }

    #[test]
    fn room_id_of_wrong_type_or_empty_is_rejected() {
        rejects(with("room_id", json!(12.5)), Some("room_id"), Rule::WrongType);
        rejects(with("room_id", json!(true)), Some("room_id"), Rule::WrongType);
        rejects(with("room_id", json!([1])), Some("room_id"), Rule::WrongType);
        rejects(with("room_id", json!("")), Some("room_id"), Rule::Empty);
        rejects(with("room_id", json!("r".repeat(129))), Some("room_id"), Rule::TooLong);
    }

    #[test]
    fn every_required_field_is_required() {
        for f in ["verdict_id", "vendor", "app_id", "room_id", "user_ids"] {
            rejects(without(f), Some(f), Rule::Missing);
            rejects(with(f, Value::Null), Some(f), Rule::Missing);
        }
    }

    #[test]
    fn verdict_id_is_1_to_128_bytes() {
        rejects(with("verdict_id", json!("")), Some("verdict_id"), Rule::Empty);
        rejects(with("verdict_id", json!("x".repeat(129))), Some("verdict_id"), Rule::TooLong);
        // 43 three-byte characters are 129 bytes: the limit is bytes, not characters.
        rejects(with("verdict_id", json!("违".repeat(43))), Some("verdict_id"), Rule::TooLong);
        assert!(parse(&with("verdict_id", json!("x".repeat(128)))).is_ok());
        rejects(with("verdict_id", json!(17)), Some("verdict_id"), Rule::WrongType);
    }

    #[test]
    fn vendor_must_be_zego_or_trtc() {
        rejects(with("vendor", json!("agora")), Some("vendor"), Rule::BadValue);
        rejects(with("vendor", json!("ZEGO")), Some("vendor"), Rule::BadValue);
        rejects(with("vendor", json!(1)), Some("vendor"), Rule::WrongType);
    }

    #[test]
    fn app_id_is_a_positive_uint32() {
        rejects(with("app_id", json!("1400000001")), Some("app_id"), Rule::WrongType);
        rejects(with("app_id", json!(1.5)), Some("app_id"), Rule::WrongType);
        rejects(with("app_id", json!(0)), Some("app_id"), Rule::OutOfRange);
        rejects(with("app_id", json!(-3)), Some("app_id"), Rule::OutOfRange);
        rejects(with("app_id", json!(4_294_967_296u64)), Some("app_id"), Rule::OutOfRange);
        assert!(parse(&with("app_id", json!(4_294_967_295u64))).is_ok());
    }

    #[test]
    fn user_ids_rules() {
        rejects(with("user_ids", json!([])), Some("user_ids"), Rule::Empty);
        rejects(with("user_ids", json!("a")), Some("user_ids"), Rule::WrongType);
        rejects(with("user_ids", json!(["a", 7])), Some("user_ids[1]"), Rule::WrongType);
        rejects(with("user_ids", json!(["a", ""])), Some("user_ids[1]"), Rule::Empty);
        rejects(with("user_ids", json!(["u".repeat(129)])), Some("user_ids[0]"), Rule::TooLong);
        let many: Vec<String> = (0..101).map(|i| format!("u{i}")).collect();
        rejects(with("user_ids", json!(many)), Some("user_ids"), Rule::TooLong);
        let hundred: Vec<String> = (0..100).map(|i| format!("u{i}")).collect();
        assert_eq!(parse(&with("user_ids", json!(hundred))).unwrap().user_ids.len(), 100);
    }

    #[test]
    fn duplicate_users_collapse_keeping_first_order() {
        let v = parse(&with("user_ids", json!(["b", "a", "b", "c", "a"]))).unwrap();
        assert_eq!(v.user_ids, ["b", "a", "c"]);
    }

    #[test]
    fn reason_is_at_most_4_kib_and_a_string() {
        assert!(parse(&with("reason", json!("r".repeat(4096)))).is_ok());
        rejects(with("reason", json!("r".repeat(4097))), Some("reason"), Rule::TooLong);
        rejects(with("reason", json!(["spam"])), Some("reason"), Rule::WrongType);
        assert_eq!(parse(&with("reason", json!(""))).unwrap().reason.as_deref(), Some(""));
    }

    #[test]
    fn optional_fields_have_types() {
        rejects(with("source", json!(3)), Some("source"), Rule::WrongType);
        rejects(with("detected_at", json!("yesterday")), Some("detected_at"), Rule::BadValue);
        rejects(with("detected_at", json!("2026-11-22 03:00:00")), Some("detected_at"), Rule::BadValue);
        rejects(with("detected_at", json!(1700000000)), Some("detected_at"), Rule::WrongType);
        rejects(with("evidence", json!([1, 2])), Some("evidence"), Rule::WrongType);
        rejects(with("evidence", json!("x")), Some("evidence"), Rule::WrongType);
        rejects(with("contract_version", json!(2)), Some("contract_version"), Rule::BadValue);
        // null means absent for optional fields
        assert_eq!(parse(&with("reason", Value::Null)).unwrap().reason, None);
    }

    #[test]
    fn unknown_fields_are_rejected_by_name() {
        rejects(with("user_id", json!("a")), Some("user_id"), Rule::UnknownField);
        let e = parse(&with("priority", json!(1))).unwrap_err();
        assert_eq!(e.to_string(), "field `priority`: is not part of the verdict contract (version 1)");
    }

    #[test]
    fn whole_body_problems_name_no_field() {
        let e = Verdict::parse(b"\xff\xfe{}").unwrap_err();
        assert_eq!((e.field.as_deref(), e.rule), (None, Rule::NotUtf8));
        let e = Verdict::parse(b"{\"verdict_id\": ").unwrap_err();
        assert_eq!((e.field.as_deref(), e.rule), (None, Rule::NotJson));
        for body in ["[1,2]", "\"v\"", "42", "null"] {
            let e = Verdict::parse(body.as_bytes()).unwrap_err();
            assert_eq!((e.field.as_deref(), e.rule), (None, Rule::NotObject), "{body}");
        }
        let e = Verdict::parse(b"").unwrap_err();
        assert_eq!(e.rule, Rule::NotJson);
    }

    #[test]
    fn a_65_kib_body_is_too_large_before_anything_else() {
        let mut v = good();
        v["reason"] = json!("r".repeat(66 * 1024));
        let e = parse(&v).unwrap_err();
        assert_eq!((e.field.as_deref(), e.rule), (None, Rule::TooLarge));
        let junk = vec![0xffu8; 65 * 1024];
        assert_eq!(Verdict::parse(&junk).unwrap_err().rule, Rule::TooLarge);
    }

    #[test]
    fn to_json_round_trips() {
        let v = parse(&json!({
            "verdict_id": "v", "vendor": "trtc", "app_id": 7, "room_id": "abc",
            "user_ids": ["x"], "reason": "r", "source": "s",
            "detected_at": "2026-01-01T00:00:00Z", "evidence": {"k": [1]}
        }))
        .unwrap();
        assert_eq!(parse(&v.to_json()).unwrap(), v);
        let n = parse(&good()).unwrap();
        assert_eq!(parse(&n.to_json()).unwrap(), n);
    }

    #[test]
    fn what_postgresql_cannot_store_is_refused_with_a_named_rule() {
        let nul = |v: Value| {
            let e = parse(&v).expect_err("a NUL must be refused");
            assert_eq!(e.rule, Rule::NulCharacter, "{e}");
            e.field
        };
        assert_eq!(nul(with("user_ids", json!(["a\u{0}b"]))).as_deref(), Some("user_ids"));
        for field in ["verdict_id", "room_id", "reason", "source"] {
            assert_eq!(nul(with(field, json!("x\u{0}"))).as_deref(), Some(field));
        }
        assert_eq!(nul(with("evidence", json!({"k\u{0}": 1}))).as_deref(), Some("evidence"));
        assert_eq!(nul(with("evidence", json!({"k": ["deep", {"v": "\u{0}"}]}))).as_deref(), Some("evidence"));
        // An unknown key holding a NUL is named escaped, so the name itself can be stored.
        assert_eq!(nul(with("x\u{0}y", json!(1))).as_deref(), Some("x\\u0000y"));
        // The escape as text (a backslash, a `u`, four digits) is an ordinary string.
        assert!(
            Verdict::parse(br#"{"verdict_id":"v","vendor":"zego","app_id":1,"room_id":"r","user_ids":["a\\u0000b"]}"#)
                .is_ok()
        );

        for t in ["0000-01-01T00:00:00Z", "9999-12-31T23:59:59-23:59", "1900-01-01T00:00:00Z", "1969-12-31T23:59:59Z"] {
            rejects(with("detected_at", json!(t)), Some("detected_at"), Rule::OutOfRange);
        }
        for t in ["1970-01-01T00:00:00Z", "9999-12-31T23:59:59Z", "2026-11-24T08:00:00+08:00"] {
            assert!(parse(&with("detected_at", json!(t))).is_ok(), "{t}");
        }
    }

    #[test]
    fn evidence_numbers_survive_a_round_trip() {
        // Found by the verdict_parse fuzz target: without serde_json's float_roundtrip this long
        // decimal parsed one ulp away from the value its own serialisation parses to.
        let body = br#"{"verdict_id":"v","vendor":"zego","app_id":1,"room_id":"r","user_ids":["u"],"evidence":{"score":544444444444444444444444444444444444444444444444444444444444444444444444444.98}}"#;
        let v = Verdict::parse(body).unwrap();
        assert_eq!(Verdict::parse(v.to_json().to_string().as_bytes()).unwrap(), v);
    }

    #[test]
    fn an_unknown_key_cannot_forge_a_log_line_through_the_error_message() {
        let e = parse(&with("x\nlevel=ERROR forged", json!(1))).unwrap_err();
        assert_eq!(e.rule, Rule::UnknownField);
        assert!(!e.to_string().contains('\n'), "{e}");
        assert!(e.to_string().contains("x\\nlevel=ERROR forged"), "{e}");
    }

    #[test]
    fn a_null_contract_version_means_absent() {
        assert!(parse(&with("contract_version", Value::Null)).is_ok());
        assert!(parse(&with("contract_version", json!(1))).is_ok());
        rejects(with("contract_version", json!("1")), Some("contract_version"), Rule::BadValue);
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn text(max: usize) -> impl Strategy<Value = String> {
            // Any Unicode scalar but U+0000 (refused by rule); at most four bytes a character, so
            // max / 4 characters always fit the byte budget.
            proptest::collection::vec(any::<char>().prop_map(|c| if c == '\0' { '0' } else { c }), 1..=max / 4)
                .prop_map(|cs| cs.into_iter().collect::<String>())
        }

        fn verdicts() -> impl Strategy<Value = Verdict> {
            let room = prop_oneof![
                text(MAX_ID_BYTES).prop_map(RoomId::Text),
                (1u32..=u32::MAX - 1).prop_map(RoomId::Numeric),
            ];
            (
                text(MAX_ID_BYTES),
                any::<bool>(),
                1u32..,
                room,
                proptest::collection::vec(text(MAX_ID_BYTES), 1..=MAX_USERS),
                proptest::option::of(text(200)),
                proptest::option::of(text(50)),
                proptest::option::of(0i64..253_402_300_799),
                proptest::option::of(proptest::collection::btree_map(text(20), text(20), 0..4)),
            )
                .prop_map(|(verdict_id, zego, app_id, room_id, users, reason, source, secs, evidence)| {
                    let vendor = if zego { Vendor::Zego } else { Vendor::Trtc };
                    // ZEGO rooms are strings: a numeric one is its digits.
                    let room_id = match (vendor, room_id) {
                        (Vendor::Zego, RoomId::Numeric(n)) => RoomId::Text(n.to_string()),
                        (_, r) => r,
                    };
                    let mut user_ids: Vec<String> = Vec::new();
                    for u in users {
                        if !user_ids.contains(&u) {
                            user_ids.push(u);
                        }
                    }
                    Verdict {
                        verdict_id,
                        vendor,
                        app_id,
                        room_id,
                        user_ids,
                        reason,
                        source,
                        detected_at: secs.and_then(|s| DateTime::from_timestamp(s, 0)),
                        evidence: evidence.map(|m| m.into_iter().map(|(k, v)| (k, Value::String(v))).collect()),
                    }
                })
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

            #[test]
            fn any_bytes_parse_or_are_refused_without_panicking(body in proptest::collection::vec(any::<u8>(), 0..512)) {
                let _ = Verdict::parse(&body);
            }

            #[test]
            fn any_json_object_parses_or_is_refused_with_a_rule(
                pairs in proptest::collection::vec((prop_oneof![Just("verdict_id".to_owned()), Just("user_ids".to_owned()),
                    Just("room_id".to_owned()), Just("app_id".to_owned()), Just("vendor".to_owned()), ".{0,12}"],
                    prop_oneof![any::<i64>().prop_map(Value::from), ".{0,20}".prop_map(Value::from),
                        Just(Value::Null), Just(json!(["a", "b"])), Just(json!({"k": "\u{0}"}))]), 0..8)
            ) {
                let obj: Map<String, Value> = pairs.into_iter().collect();
                if let Err(e) = Verdict::parse(Value::Object(obj).to_string().as_bytes()) {
                    prop_assert!(!e.to_string().is_empty());
                }
            }

            #[test]
            fn a_parsed_verdict_serialised_again_parses_equal(v in verdicts()) {
                let body = v.to_json().to_string();
                prop_assume!(body.len() <= MAX_BODY_BYTES);
                let parsed = Verdict::parse(body.as_bytes()).map_err(|e| TestCaseError::fail(format!("{e}: {body}")))?;
                prop_assert_eq!(&parsed, &v);
                prop_assert_eq!(Verdict::parse(parsed.to_json().to_string().as_bytes()).ok(), Some(parsed));
            }
        }
    }
}
