//! Reading what a caller sent — query strings and JSON bodies — into domain types, refusing with
//! the parameter's name. Ids follow the verdict contract: 1 to 128 bytes, no U+0000.

use std::collections::HashMap;

use serde_json::{Map, Value};

use super::error::ApiError;
use crate::audit::bans::RoomRef;
use crate::vendors::Vendor;
use crate::verdict::{MAX_ID_BYTES, MAX_TRTC_NUMERIC_ROOM};

/// A query string's parameters, each at most once, only those the endpoint knows.
pub(crate) struct QueryParams(HashMap<String, String>);

impl QueryParams {
    pub(crate) fn parse(raw: Option<&str>, known: &[&str]) -> Result<QueryParams, ApiError> {
        let mut map = HashMap::new();
        for (k, v) in url::form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
            if !known.contains(&k.as_ref()) {
                return Err(ApiError::bad(&k, format!("is not a parameter of this endpoint ({})", known.join(", "))));
            }
            if map.insert(k.to_string(), v.into_owned()).is_some() {
                return Err(ApiError::bad(&k, "is given more than once"));
            }
        }
        Ok(QueryParams(map))
    }

    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    pub(crate) fn required(&self, name: &str) -> Result<&str, ApiError> {
        self.get(name).ok_or_else(|| ApiError::bad(name, "is required"))
    }
}

/// A JSON body's fields, only those the endpoint knows.
pub(crate) struct BodyFields(Map<String, Value>);

impl BodyFields {
    pub(crate) fn parse(body: &[u8], known: &[&str]) -> Result<BodyFields, ApiError> {
        let value: Value =
            serde_json::from_slice(body).map_err(|e| ApiError::bad_body(format!("not valid JSON: {e}")))?;
        let Value::Object(map) = value else { return Err(ApiError::bad_body("must be a JSON object")) };
        if let Some(k) = map.keys().find(|k| !known.contains(&k.as_str())) {
            return Err(ApiError::bad(k, format!("is not a field of this endpoint ({})", known.join(", "))));
        }
        Ok(BodyFields(map))
    }

    /// The field, `None` when absent or null.
    pub(crate) fn get(&self, name: &str) -> Option<&Value> {
        self.0.get(name).filter(|v| !v.is_null())
    }

    pub(crate) fn required(&self, name: &str) -> Result<&Value, ApiError> {
        self.get(name).ok_or_else(|| ApiError::bad(name, "is required"))
    }

    pub(crate) fn string(&self, name: &str) -> Result<Option<&str>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(ApiError::bad(name, "must be a string")),
        }
    }
}

pub(crate) fn vendor(name: &str, s: &str) -> Result<Vendor, ApiError> {
    Vendor::parse(s).ok_or_else(|| ApiError::bad(name, "must be \"zego\" or \"trtc\""))
}

pub(crate) fn vendor_json(name: &str, v: &Value) -> Result<Vendor, ApiError> {
    match v {
        Value::String(s) => vendor(name, s),
        _ => Err(ApiError::bad(name, "must be a string (\"zego\" or \"trtc\")")),
    }
}

pub(crate) fn app_id(name: &str, s: &str) -> Result<u32, ApiError> {
    s.parse::<u32>().ok().filter(|n| *n > 0).ok_or_else(|| ApiError::bad(name, "must be an integer in 1..=4294967295"))
}

pub(crate) fn app_id_json(name: &str, v: &Value) -> Result<u32, ApiError> {
    v.as_u64()
        .and_then(|n| u32::try_from(n).ok())
        .filter(|n| *n > 0)
        .ok_or_else(|| ApiError::bad(name, "must be an integer in 1..=4294967295"))
}

/// A user or room id: 1 to 128 bytes of UTF-8 without U+0000 (what a verdict may carry).
pub(crate) fn id(name: &str, s: &str) -> Result<String, ApiError> {
    if s.is_empty() {
        return Err(ApiError::bad(name, "must not be empty"));
    }
    if s.len() > MAX_ID_BYTES {
        return Err(ApiError::bad(name, format!("must be at most {MAX_ID_BYTES} bytes of UTF-8, got {}", s.len())));
    }
    if s.contains('\0') {
        return Err(ApiError::bad(name, "must not contain U+0000"));
    }
    Ok(s.to_owned())
}

pub(crate) fn id_json(name: &str, v: &Value) -> Result<String, ApiError> {
    match v {
        Value::String(s) => id(name, s),
        _ => Err(ApiError::bad(name, "must be a string")),
    }
}

/// A room as a caller wrote it.
pub(crate) enum RoomInput<'a> {
    /// From a query string: no type of its own.
    Query(&'a str),
    /// From JSON: a string is a string room, an integer a TRTC numeric room (the verdict contract).
    Json(&'a Value),
}

/// The room a check, list or lift is about. `room_id_type` (`int` or `str`) says which of TRTC's
/// two kinds of room is meant. Without it: a JSON value's own type decides; a query string's
/// TRTC room made only of digits (1..=4294967294) means *either* kind — a check then counts a
/// ban in both, the safe reading when a token server did not say. ZEGO rooms are always strings
/// (an integer is its decimal digits, as in a verdict).
pub(crate) fn room(vendor: Vendor, input: RoomInput<'_>, room_id_type: Option<&str>) -> Result<RoomRef, ApiError> {
    let wanted = match room_id_type {
        None => None,
        Some("int") => Some(true),
        Some("str") => Some(false),
        Some(_) => return Err(ApiError::bad("room_id_type", "must be \"int\" or \"str\"")),
    };
    let (text, json_numeric) = match input {
        RoomInput::Query(s) => (id("room_id", s)?, None),
        RoomInput::Json(Value::String(s)) => (id("room_id", s)?, Some(false)),
        RoomInput::Json(Value::Number(n)) if n.is_u64() => (n.to_string(), Some(true)),
        RoomInput::Json(_) => return Err(ApiError::bad("room_id", "must be a string or a non-negative integer")),
    };
    let numeric = match vendor {
        Vendor::Zego => Some(false),
        Vendor::Trtc => {
            let in_range =
                text.parse::<u64>().is_ok_and(|n| (1..=MAX_TRTC_NUMERIC_ROOM).contains(&n)) && !text.starts_with('0');
            match wanted.or(json_numeric) {
                Some(true) if !in_range => {
                    return Err(ApiError::bad(
                        "room_id",
                        format!("a TRTC numeric room (room_id_type=int) must be in 1..={MAX_TRTC_NUMERIC_ROOM}"),
                    ));
                }
                Some(kind) => Some(kind),
                None if in_range => None,
                None => Some(false),
            }
        }
    };
    Ok(RoomRef { text, numeric })
}

/// A room's kind as the API names it.
pub(crate) fn room_type(numeric: Option<bool>) -> Option<&'static str> {
    numeric.map(|n| if n { "int" } else { "str" })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn q(vendor: Vendor, s: &str, t: Option<&str>) -> Result<RoomRef, ApiError> {
        room(vendor, RoomInput::Query(s), t)
    }

    #[test]
    fn a_trtc_room_of_digits_without_a_type_means_either_kind() {
        assert_eq!(q(Vendor::Trtc, "1234", None).unwrap().numeric, None);
        assert_eq!(q(Vendor::Trtc, "1234", Some("int")).unwrap().numeric, Some(true));
        assert_eq!(q(Vendor::Trtc, "1234", Some("str")).unwrap().numeric, Some(false));
        assert_eq!(q(Vendor::Trtc, "room-1", None).unwrap().numeric, Some(false));
        // Not a numeric room by TRTC's range, or not written as one: only a string room.
        assert_eq!(q(Vendor::Trtc, "4294967295", None).unwrap().numeric, Some(false));
        assert_eq!(q(Vendor::Trtc, "01234", None).unwrap().numeric, Some(false));
        assert!(q(Vendor::Trtc, "room-1", Some("int")).is_err());
        assert!(q(Vendor::Trtc, "0", Some("int")).is_err());
    }

    #[test]
    fn json_rooms_keep_their_own_type_and_zego_rooms_are_strings() {
        let r = |v: Value, t| room(Vendor::Trtc, RoomInput::Json(&v), t).map(|r| r.numeric);
        assert_eq!(r(json!(1234), None).unwrap(), Some(true));
        assert_eq!(r(json!("1234"), None).unwrap(), Some(false));
        assert_eq!(r(json!("1234"), Some("int")).unwrap(), Some(true));
        assert!(r(json!(-1), None).is_err());
        assert!(r(json!(true), None).is_err());
        let z = room(Vendor::Zego, RoomInput::Json(&json!(77)), None).unwrap();
        assert_eq!((z.text.as_str(), z.numeric), ("77", Some(false)));
        assert_eq!(q(Vendor::Zego, "1234", Some("int")).unwrap().numeric, Some(false));
    }

    #[test]
    fn ids_follow_the_verdict_contract() {
        assert!(id("user_id", "").is_err());
        assert!(id("user_id", &"u".repeat(129)).is_err());
        assert!(id("user_id", "a\0b").is_err());
        assert_eq!(id("user_id", &"u".repeat(128)).unwrap().len(), 128);
        assert!(q(Vendor::Zego, "r", Some("float")).is_err());
    }
}
