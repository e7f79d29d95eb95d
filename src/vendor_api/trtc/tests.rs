use super::*;
use crate::vendor_api::Outcome;
use std::time::Duration;

const SECRET_ID: &str = "AKIDz8krbsJ5yKBZQpn74WFkmLPx3*******";
const SECRET_KEY: &str = "Gu5t9xGARNpq86cd98joQYCN3*******";

#[test]
fn official_cvm_example() {
    let body = br#"{"Limit": 1, "Filters": [{"Values": ["\u672a\u547d\u540d"], "Name": "instance-name"}]}"#;
    assert_eq!(sha256_hex(body), "35e9c5b0e3ae67532d3c9f17ead6c90222632e5b1ff7f6e89887f1398934f064");
    let input = SignInput {
        method: "POST",
        query: "",
        headers: &[
            ("Content-Type", "application/json; charset=utf-8"),
            ("Host", "cvm.tencentcloudapi.com"),
            ("X-TC-Action", "DescribeInstances"),
        ],
        body,
        service: "cvm",
        timestamp: 1551113065,
    };
    let (signed, canonical) = canonical_request(&input);
    assert_eq!(signed, "content-type;host;x-tc-action");
    assert_eq!(sha256_hex(canonical.as_bytes()), "7019a55be8395899b900fb5564e4200d984910f34794a27cb3fb7d10ff6a1e84");
    assert_eq!(sign(&"*".repeat(32), &input).1, "10b1a37a7301a02ca19a647ad722d5e43b4b3cff309d421d85b46093f6ab6c4f");
}

/// Signs like the official SDK does for TRTC: `content-type;host`, the vectors' fixed inputs.
fn sign_trtc(method: &str, query: &str, content_type: &str, body: &[u8]) -> String {
    let headers = [("content-type", content_type), ("host", "trtc.tencentcloudapi.com")];
    let input = SignInput { method, query, headers: &headers, body, service: SERVICE, timestamp: 1551113065 };
    authorization(SECRET_ID, SECRET_KEY, &input)
}

fn expected_auth(signature: &str) -> String {
    format!(
        "TC3-HMAC-SHA256 Credential={SECRET_ID}/2019-02-25/trtc/tc3_request, \
         SignedHeaders=content-type;host, Signature={signature}"
    )
}

#[test]
fn trtc_vector_1_remove_user_post() {
    let body = br#"{"SdkAppId": 1400000001, "RoomId": 1234, "UserIds": ["test1", "test2"]}"#;
    assert_eq!(sha256_hex(body), "7d92e62d28350ac68668924c7ac84c3674772d07ad79510e059ccb8788903f05");
    assert_eq!(
        sign_trtc("POST", "", "application/json", body),
        expected_auth("fcbb3a848021ab9fd6ec43562b9eff6f1f70b9867a803b6aa683c8b58a2ca7cd")
    );
}

#[test]
fn trtc_vector_2_remove_user_get() {
    let query = "SdkAppId=1400000001&RoomId=1234&UserIds.0=test1&UserIds.1=test2";
    assert_eq!(
        sign_trtc("GET", query, "application/x-www-form-urlencoded", b""),
        expected_auth("534222f502701ec1c81782bc51b12ca6064cfe7f178c65ee818a3e485d112ad9")
    );
}

#[test]
fn trtc_vector_3_remove_user_by_str_room_id() {
    let body = br#"{"SdkAppId": 1400000001, "RoomId": "abcd", "UserIds": ["test1", "test2"]}"#;
    assert_eq!(sha256_hex(body), "e67a68fa26c4608168385aaa400f74fb320cbbb23403ed877bd87f46910a76fe");
    assert_eq!(
        sign_trtc("POST", "", "application/json", body),
        expected_auth("de6185e395b3db6afb56573a8695ce5c9800031ce2d5f307d38a2f5e4fea5e90")
    );
}

#[test]
fn utc_date_is_utc() {
    assert_eq!(utc_date(1551113065), "2019-02-25");
    assert_eq!(utc_date(1551139199), "2019-02-25");
    assert_eq!(utc_date(1551139200), "2019-02-26");
}

#[test]
fn body_keeps_the_room_type() {
    let users = vec!["test1".to_string(), "test2".to_string()];
    assert_eq!(
        String::from_utf8(body(1400000001, &RoomId::Numeric(1234), &users)).unwrap(),
        r#"{"SdkAppId":1400000001,"RoomId":1234,"UserIds":["test1","test2"]}"#
    );
    assert_eq!(
        String::from_utf8(body(1400000001, &RoomId::Text("1234".into()), &users)).unwrap(),
        r#"{"SdkAppId":1400000001,"RoomId":"1234","UserIds":["test1","test2"]}"#
    );
    assert_eq!(action_for(&RoomId::Numeric(1)), "RemoveUser");
    assert_eq!(action_for(&RoomId::Text("1".into())), "RemoveUserByStrRoomId");
}

/// The documented table, transcribed independently of `CODES`.
#[test]
fn every_documented_code_maps_to_its_class() {
    use Blame::*;
    let doc: &[(&str, Class)] = &[
        ("FailedOperation.RoomNotExist", Class::Gone),
        ("RequestLimitExceeded", Class::SlowDown),
        ("RequestLimitExceeded.UinLimitExceeded", Class::SlowDown),
        ("InternalError", Class::Retry),
        ("InternalError.GetRoomCacheIpError", Class::Retry),
        ("InternalError.GetRoomFromCacheError", Class::Retry),
        ("ServiceUnavailable", Class::Retry),
        ("AuthFailure.SignatureExpire", Class::Resign),
        ("AuthFailure.SignatureFailure", Class::Permanent(Configuration)),
        ("AuthFailure.SecretIdNotFound", Class::Permanent(Configuration)),
        ("UnauthorizedOperation.SdkAppId", Class::Permanent(Configuration)),
        ("InvalidParameter.SdkAppId", Class::Permanent(Configuration)),
        ("MissingParameter.SdkAppId", Class::Permanent(Configuration)),
        ("InvalidParameter.RoomId", Class::Permanent(Room)),
        ("InvalidParameterValue.RoomId", Class::Permanent(Room)),
        ("MissingParameter.RoomId", Class::Permanent(Room)),
        ("InvalidParameter.UserIds", Class::Permanent(Parameters)),
        ("MissingParameter.UserIds", Class::Permanent(Parameters)),
        ("InvalidParameterValue.Other", Class::Permanent(Parameters)),
        ("UnknownParameter", Class::Permanent(Parameters)),
        ("LimitExceeded", Class::Permanent(Parameters)),
        ("InvalidAction", Class::Permanent(Configuration)),
        ("NoSuchVersion", Class::Permanent(Configuration)),
        ("UnsupportedRegion", Class::Permanent(Configuration)),
    ];
    for (code, class) in doc {
        assert_eq!(classify(code), *class, "code {code}");
    }
    for (code, _, class) in CODES {
        assert_eq!(classify(code), *class, "row {code} is shadowed by an earlier row");
    }
    // A family row does not swallow codes that merely share a prefix.
    assert_eq!(classify("InternalErrorX"), Class::Permanent(Parameters));
}

#[test]
fn replies_are_read_from_the_envelope() {
    let ok = br#"{"Response":{"RequestId":"eac6b301-a322-493a-8e36-83b295459397"}}"#;
    let r = interpret(ACTION_NUMERIC, ok, Duration::ZERO);
    assert_eq!(r.outcome, Outcome::Done { request_id: "eac6b301-a322-493a-8e36-83b295459397".into() });
    let err = br#"{"Response":{"Error":{"Code":"RequestLimitExceeded","Message":"slow"},"RequestId":"r"}}"#;
    let r = interpret(ACTION_NUMERIC, err, Duration::ZERO);
    assert!(matches!(r.outcome, Outcome::Retry { slow_down: true, .. }));
    assert_eq!(r.vendor_code.as_deref(), Some("RequestLimitExceeded"));
    assert_eq!(r.vendor_request_id.as_deref(), Some("r"));
    let r = interpret(ACTION_STRING, br#"{"nope":1}"#, Duration::ZERO);
    assert!(matches!(r.outcome, Outcome::Retry { .. }));
}
