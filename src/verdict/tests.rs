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

#[test]
fn a_ban_keeps_its_seconds_and_defaults_to_the_room() {
    let v = parse(&with("ban", json!({"seconds": 60}))).unwrap();
    assert_eq!(v.ban, Some(Ban { seconds: 60, scope: BanScope::Room }));
    let v = parse(&with("ban", json!({"seconds": MAX_BAN_SECONDS, "scope": "app"}))).unwrap();
    assert_eq!(v.ban, Some(Ban { seconds: MAX_BAN_SECONDS, scope: BanScope::App }));
    assert_eq!(parse(&with("ban", Value::Null)).unwrap().ban, None, "null means absent");
    assert_eq!(
        parse(&with("ban", json!({"seconds": 5, "scope": null}))).unwrap().ban.map(|b| b.scope),
        Some(BanScope::Room)
    );
}

#[test]
fn a_ban_names_its_broken_part() {
    rejects(with("ban", json!(60)), Some("ban"), Rule::WrongType);
    rejects(with("ban", json!({})), Some("ban.seconds"), Rule::Missing);
    rejects(with("ban", json!({"seconds": 0})), Some("ban.seconds"), Rule::OutOfRange);
    rejects(with("ban", json!({"seconds": MAX_BAN_SECONDS + 1})), Some("ban.seconds"), Rule::OutOfRange);
    rejects(with("ban", json!({"seconds": -1})), Some("ban.seconds"), Rule::OutOfRange);
    rejects(with("ban", json!({"seconds": 1.5})), Some("ban.seconds"), Rule::WrongType);
    rejects(with("ban", json!({"seconds": "60"})), Some("ban.seconds"), Rule::WrongType);
    rejects(with("ban", json!({"seconds": 60, "scope": "world"})), Some("ban.scope"), Rule::BadValue);
    rejects(with("ban", json!({"seconds": 60, "scope": 1})), Some("ban.scope"), Rule::WrongType);
    rejects(with("ban", json!({"seconds": 60, "until": "x"})), Some("ban.until"), Rule::UnknownField);
}

#[test]
fn the_same_id_with_another_ban_is_another_enforcement() {
    let plain = parse(&good()).unwrap();
    let banned = parse(&with("ban", json!({"seconds": 60}))).unwrap();
    assert!(!plain.same_enforcement(&banned));
    assert!(banned.same_enforcement(&banned.clone()));
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
        let room =
            prop_oneof![text(MAX_ID_BYTES).prop_map(RoomId::Text), (1u32..=u32::MAX - 1).prop_map(RoomId::Numeric),];
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
            proptest::option::of((1u32..=MAX_BAN_SECONDS, any::<bool>())),
        )
            .prop_map(|(verdict_id, zego, app_id, room_id, users, reason, source, secs, evidence, ban)| {
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
                    ban: ban
                        .map(|(seconds, app)| Ban { seconds, scope: if app { BanScope::App } else { BanScope::Room } }),
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
