//! The published JSON Schema and the parser agree on what a valid verdict is.

use bouncer::verdict::Verdict;
use serde_json::{Value, json};

fn schema() -> jsonschema::Validator {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/verdict.schema.json"))
        .expect("deploy/verdict.schema.json is readable");
    let schema: Value = serde_json::from_str(&text).expect("the schema is JSON");
    jsonschema::options().should_validate_formats(true).build(&schema).expect("the schema compiles")
}

fn base() -> Value {
    json!({"verdict_id": "v-1", "vendor": "trtc", "app_id": 1400000001, "room_id": 1234, "user_ids": ["a"]})
}

fn with(field: &str, value: Value) -> Value {
    let mut v = base();
    v[field] = value;
    v
}

fn without(field: &str) -> Value {
    let mut v = base();
    v.as_object_mut().expect("object").remove(field);
    v
}

/// (example, valid?)
fn table() -> Vec<(Value, bool)> {
    let hundred: Vec<String> = (0..100).map(|i| format!("u{i}")).collect();
    let hundred_one: Vec<String> = (0..101).map(|i| format!("u{i}")).collect();
    vec![
        (base(), true),
        (with("room_id", json!("room-7")), true),
        (with("room_id", json!(4294967294u64)), true),
        (with("user_ids", json!(hundred)), true),
        (with("user_ids", json!(["a", "a"])), true),
        (with("reason", json!("r".repeat(4096))), true),
        (with("reason", Value::Null), true),
        (with("detected_at", json!("2026-11-22T03:00:00Z")), true),
        (with("evidence", json!({"score": 0.9, "clip": "s3://x"})), true),
        (with("source", json!("asr-v3")), true),
        (with("contract_version", json!(1)), true),
        (with("ban", json!({"seconds": 60})), true),
        (with("ban", json!({"seconds": 31536000, "scope": "app"})), true),
        (with("ban", json!({"seconds": 1, "scope": "room"})), true),
        (with("ban", Value::Null), true),
        (with("ban", json!({"seconds": 0})), false),
        (with("ban", json!({"seconds": 31536001})), false),
        (with("ban", json!({"scope": "room"})), false),
        (with("ban", json!({"seconds": 60, "scope": "server"})), false),
        (with("ban", json!({"seconds": 60, "extra": 1})), false),
        (with("ban", json!({"seconds": "60"})), false),
        (with("ban", json!(60)), false),
        (json!({"verdict_id": "z", "vendor": "zego", "app_id": 1, "room_id": 0, "user_ids": ["u"]}), true),
        (
            json!({"verdict_id": "z", "vendor": "zego", "app_id": 1, "room_id": "r", "user_ids": ["u"], "reason": "违规"}),
            true,
        ),
        (
            json!({"verdict_id": "x".repeat(128), "vendor": "zego", "app_id": 4294967295u64, "room_id": "r", "user_ids": ["u"]}),
            true,
        ),
        // bad
        (json!([base()]), false),
        (json!("verdict"), false),
        (without("verdict_id"), false),
        (without("vendor"), false),
        (without("app_id"), false),
        (without("room_id"), false),
        (without("user_ids"), false),
        (with("verdict_id", json!("")), false),
        (with("verdict_id", json!("x".repeat(129))), false),
        (with("verdict_id", json!(5)), false),
        (with("vendor", json!("agora")), false),
        (with("app_id", json!("1400000001")), false),
        (with("app_id", json!(0)), false),
        (with("app_id", json!(4294967296u64)), false),
        (with("app_id", json!(-1)), false),
        (with("room_id", json!(0)), false),
        (with("room_id", json!(4294967295u64)), false),
        (with("room_id", json!("")), false),
        (with("room_id", json!(true)), false),
        (with("room_id", json!(1.5)), false),
        (with("user_ids", json!([])), false),
        (with("user_ids", json!(hundred_one)), false),
        (with("user_ids", json!([""])), false),
        (with("user_ids", json!([1])), false),
        (with("user_ids", json!("a")), false),
        (with("user_ids", json!(["u".repeat(129)])), false),
        (with("reason", json!("r".repeat(4097))), false),
        (with("reason", json!(42)), false),
        (with("source", json!({})), false),
        (with("detected_at", json!("yesterday")), false),
        (with("detected_at", json!(1700000000)), false),
        (with("evidence", json!([1])), false),
        (with("contract_version", json!(2)), false),
        (with("verdict_id", Value::Null), false),
        (with("extra", json!(1)), false),
        (json!({"verdict_id": "z", "vendor": "zego", "app_id": 1, "room_id": -4, "user_ids": ["u"]}), false),
        (with("contract_version", Value::Null), true),
        // PostgreSQL cannot store U+0000 in text or jsonb.
        (with("user_ids", json!(["a\u{0}b"])), false),
        (with("verdict_id", json!("v\u{0}")), false),
        (with("room_id", json!("r\u{0}")), false),
        (with("reason", json!("\u{0}")), false),
        (with("source", json!("s\u{0}")), false),
    ]
}

#[test]
fn schema_and_parser_agree_on_every_example() {
    let schema = schema();
    for (example, valid) in table() {
        let parsed = Verdict::parse(example.to_string().as_bytes());
        assert_eq!(parsed.is_ok(), valid, "parser on {example}: {parsed:?}");
        assert_eq!(schema.is_valid(&example), valid, "schema on {example}");
    }
}

/// What JSON Schema cannot say (byte lengths, 1.0 versus 1, body size): the parser is stricter.
/// Listed so the difference is known and stays small; the schema's description says so too.
#[test]
fn where_the_schema_cannot_express_a_rule_the_parser_is_stricter() {
    let schema = schema();
    let stricter = [
        with("verdict_id", json!("违".repeat(43))), // 43 characters, 129 bytes
        with("user_ids", json!(["违".repeat(43)])),
        with("reason", json!("违".repeat(1400))), // 4200 bytes
        with("app_id", json!(1.0)),
        // Instants PostgreSQL cannot store, and NULs below the top level.
        with("detected_at", json!("0000-01-01T00:00:00Z")),
        with("detected_at", json!("9999-12-31T23:59:59-23:59")),
        with("evidence", json!({"k": "\u{0}"})),
    ];
    for example in stricter {
        assert!(schema.is_valid(&example), "schema accepts {example}");
        assert!(Verdict::parse(example.to_string().as_bytes()).is_err(), "parser rejects {example}");
    }
}
