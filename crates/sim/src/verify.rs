//! The simulator's own signature checks, written from the vendor documentation rather than by
//! calling the clients' signing code, so a client bug cannot hide behind a matching sim bug. They
//! work from the request as received: the query parameters, and for TC3 the `Authorization`
//! header's own list of signed headers with the values that actually arrived.

use axum::http::HeaderMap;
use hmac::{Hmac, KeyInit, Mac};
use md5::{Digest, Md5};
use sha2::Sha256;

/// ZEGO v2.0: recompute `md5(AppId + SignatureNonce + ServerSecret + Timestamp)` from the
/// strings exactly as they arrived and compare.
pub fn zego_signature_ok(app_id: &str, nonce: &str, secret: &str, timestamp: &str, signature: &str) -> bool {
    let digest = Md5::digest([app_id, nonce, secret, timestamp].concat().as_bytes());
    let expected = hex::encode(digest);
    constant_time_eq(expected.as_bytes(), signature.as_bytes())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The parts of a TC3 `Authorization` header.
#[derive(Debug, PartialEq, Eq)]
pub struct Tc3Auth {
    pub secret_id: String,
    pub date: String,
    pub service: String,
    pub signed_headers: Vec<String>,
    pub signature: String,
}

/// Why a TC3 request is refused; each maps to one of Tencent's `AuthFailure.*` codes.
#[derive(Debug, PartialEq, Eq)]
pub enum Tc3Error {
    /// `AuthFailure.InvalidAuthorization`
    Malformed(String),
    /// `AuthFailure.SignatureFailure`
    Mismatch,
}

pub fn parse_authorization(value: &str) -> Result<Tc3Auth, Tc3Error> {
    let bad = |why: &str| Tc3Error::Malformed(why.to_owned());
    let rest = value.strip_prefix("TC3-HMAC-SHA256 ").ok_or_else(|| bad("algorithm must be TC3-HMAC-SHA256"))?;
    let mut credential = None;
    let mut signed = None;
    let mut signature = None;
    for part in rest.split(',') {
        let (k, v) = part.trim().split_once('=').ok_or_else(|| bad("expected key=value parts"))?;
        match k {
            "Credential" => credential = Some(v),
            "SignedHeaders" => signed = Some(v),
            "Signature" => signature = Some(v),
            _ => return Err(bad("unknown part")),
        }
    }
    let credential = credential.ok_or_else(|| bad("Credential missing"))?;
    let scope: Vec<&str> = credential.split('/').collect();
    let [secret_id, date, service, terminator] = scope[..] else {
        return Err(bad("Credential must be SecretId/Date/Service/tc3_request"));
    };
    if terminator != "tc3_request" {
        return Err(bad("Credential must end in tc3_request"));
    }
    Ok(Tc3Auth {
        secret_id: secret_id.to_owned(),
        date: date.to_owned(),
        service: service.to_owned(),
        signed_headers: signed.ok_or_else(|| bad("SignedHeaders missing"))?.split(';').map(str::to_owned).collect(),
        signature: signature.ok_or_else(|| bad("Signature missing"))?.to_owned(),
    })
}

fn hmac(key: &[u8], data: &str) -> Vec<u8> {
    let mut mac = <Hmac<Sha256>>::new_from_slice(key).expect("HMAC accepts keys of any length");
    mac.update(data.as_bytes());
    mac.finalize().into_bytes().to_vec()
}

/// Recomputes the TC3 signature of a received request and compares it with the one it carries.
/// `timestamp` is the `X-TC-Timestamp` value as received.
pub fn tc3_check(
    auth: &Tc3Auth,
    secret_key: &str,
    method: &str,
    query: &str,
    headers: &HeaderMap,
    body: &[u8],
    timestamp: &str,
) -> Result<(), Tc3Error> {
    let bad = |why: String| Tc3Error::Malformed(why);
    let mut names = auth.signed_headers.clone();
    if names.iter().any(|n| *n != n.to_ascii_lowercase()) {
        return Err(bad("SignedHeaders must be lowercase".into()));
    }
    names.sort();
    if names != auth.signed_headers {
        return Err(bad("SignedHeaders must be sorted".into()));
    }
    for required in ["content-type", "host"] {
        if !names.iter().any(|n| n == required) {
            return Err(bad(format!("SignedHeaders must include {required}")));
        }
    }
    let mut canonical_headers = String::new();
    for name in &names {
        let value = headers
            .get(name.as_str())
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| bad(format!("signed header {name} was not sent")))?;
        canonical_headers += &format!("{name}:{}\n", value.trim().to_ascii_lowercase());
    }
    let body_hash = hex::encode(Sha256::digest(body));
    let canonical = [method, "/", query, &canonical_headers, &names.join(";"), &body_hash].join("\n");
    let string_to_sign = format!(
        "TC3-HMAC-SHA256\n{timestamp}\n{}/{}/tc3_request\n{}",
        auth.date,
        auth.service,
        hex::encode(Sha256::digest(canonical.as_bytes()))
    );
    let key = ["tc3_request", auth.service.as_str(), auth.date.as_str()]
        .iter()
        .rev()
        .fold(format!("TC3{secret_key}").into_bytes(), |key, part| hmac(&key, part));
    let expected = hex::encode(hmac(&key, &string_to_sign));
    if constant_time_eq(expected.as_bytes(), auth.signature.as_bytes()) { Ok(()) } else { Err(Tc3Error::Mismatch) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn zego_official_vectors_verify() {
        assert!(zego_signature_ok(
            "12345",
            "4fd24687296dd9f3",
            "9193cc662a4c0ec135ec71fb57194b38",
            "1615186943",
            "43e5cfcca828314675f91b001390566a"
        ));
        assert!(zego_signature_ok(
            "1234567890",
            "0123456789abcdef",
            "abcdefghijklmnopqrstuvwxyz012345",
            "1700000000",
            "33c723c09b2efad9b5d4042afd31f118"
        ));
        assert!(!zego_signature_ok(
            "12345",
            "4fd24687296dd9f3",
            "9193cc662a4c0ec135ec71fb57194b39",
            "1615186943",
            "43e5cfcca828314675f91b001390566a"
        ));
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    fn check(
        auth_value: &str,
        key: &str,
        method: &str,
        query: &str,
        h: &HeaderMap,
        body: &[u8],
    ) -> Result<(), Tc3Error> {
        let auth = parse_authorization(auth_value)?;
        tc3_check(&auth, key, method, query, h, body, "1551113065")
    }

    #[test]
    fn tc3_cvm_official_example_verifies() {
        let h = headers(&[
            ("content-type", "application/json; charset=utf-8"),
            ("host", "cvm.tencentcloudapi.com"),
            ("x-tc-action", "DescribeInstances"),
        ]);
        let body = br#"{"Limit": 1, "Filters": [{"Values": ["\u672a\u547d\u540d"], "Name": "instance-name"}]}"#;
        let auth = "TC3-HMAC-SHA256 Credential=AKIDEXAMPLE/2019-02-25/cvm/tc3_request, \
                    SignedHeaders=content-type;host;x-tc-action, \
                    Signature=10b1a37a7301a02ca19a647ad722d5e43b4b3cff309d421d85b46093f6ab6c4f";
        assert_eq!(check(auth, &"*".repeat(32), "POST", "", &h, body), Ok(()));
        assert_eq!(check(auth, &"*".repeat(31), "POST", "", &h, body), Err(Tc3Error::Mismatch));
    }

    const KEY: &str = "Gu5t9xGARNpq86cd98joQYCN3*******";

    fn trtc_auth(signature: &str) -> String {
        format!(
            "TC3-HMAC-SHA256 Credential=AKIDz8krbsJ5yKBZQpn74WFkmLPx3*******/2019-02-25/trtc/tc3_request, \
             SignedHeaders=content-type;host, Signature={signature}"
        )
    }

    #[test]
    fn tc3_trtc_vectors_verify() {
        let json = headers(&[("content-type", "application/json"), ("host", "trtc.tencentcloudapi.com")]);
        let body1 = br#"{"SdkAppId": 1400000001, "RoomId": 1234, "UserIds": ["test1", "test2"]}"#;
        let sig1 = trtc_auth("fcbb3a848021ab9fd6ec43562b9eff6f1f70b9867a803b6aa683c8b58a2ca7cd");
        assert_eq!(check(&sig1, KEY, "POST", "", &json, body1), Ok(()));
        // One byte of body changed: the signature no longer holds.
        let tampered = br#"{"SdkAppId": 1400000001, "RoomId": 1235, "UserIds": ["test1", "test2"]}"#;
        assert_eq!(check(&sig1, KEY, "POST", "", &json, tampered), Err(Tc3Error::Mismatch));

        let form =
            headers(&[("content-type", "application/x-www-form-urlencoded"), ("host", "trtc.tencentcloudapi.com")]);
        let sig2 = trtc_auth("534222f502701ec1c81782bc51b12ca6064cfe7f178c65ee818a3e485d112ad9");
        let q = "SdkAppId=1400000001&RoomId=1234&UserIds.0=test1&UserIds.1=test2";
        assert_eq!(check(&sig2, KEY, "GET", q, &form, b""), Ok(()));

        let body3 = br#"{"SdkAppId": 1400000001, "RoomId": "abcd", "UserIds": ["test1", "test2"]}"#;
        let sig3 = trtc_auth("de6185e395b3db6afb56573a8695ce5c9800031ce2d5f307d38a2f5e4fea5e90");
        assert_eq!(check(&sig3, KEY, "POST", "", &json, body3), Ok(()));
        // A charset added by an HTTP client after signing breaks it, as it would at Tencent.
        let charset =
            headers(&[("content-type", "application/json; charset=utf-8"), ("host", "trtc.tencentcloudapi.com")]);
        assert_eq!(check(&sig3, KEY, "POST", "", &charset, body3), Err(Tc3Error::Mismatch));
    }

    #[test]
    fn malformed_authorization_is_refused_with_a_reason() {
        assert!(matches!(parse_authorization("Basic abc"), Err(Tc3Error::Malformed(_))));
        assert!(matches!(
            parse_authorization("TC3-HMAC-SHA256 Credential=a/b/c, SignedHeaders=host, Signature=x"),
            Err(Tc3Error::Malformed(_))
        ));
        let h = headers(&[("host", "h")]);
        let only_host = "TC3-HMAC-SHA256 Credential=a/2019-02-25/trtc/tc3_request, SignedHeaders=host, Signature=x";
        assert!(
            matches!(check(only_host, KEY, "POST", "", &h, b""), Err(Tc3Error::Malformed(m)) if m.contains("content-type"))
        );
    }
}
