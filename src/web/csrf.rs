//! Cross-site request forgery: every form that changes something carries a token bound to the
//! signed-in actor, to what the form does (its action: `replay:<id>`, or the bulk replay's fixed
//! search) and to when it was shown — an HMAC of the three under a key, expiring after
//! [`TOKEN_TTL`]. A POST is refused without a valid token, when the browser marks it cross-site
//! (`Sec-Fetch-Site`), and when its `Origin` names another host than the one it was sent to. A
//! replay's token is also spent when used (`console_tokens`), so a double click or two operators
//! on one confirmation replay once.
//!
//! The key is `web.csrf_secret` when set (several replicas behind one address must share it),
//! else random per process: a console restarted mid-confirmation then asks for it again.

use axum::http::{HeaderMap, header};
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

/// How long a confirmation stays usable.
pub(crate) const TOKEN_TTL: chrono::Duration = chrono::Duration::minutes(15);
/// How far ahead of this console's clock a token may claim to be issued (another replica's clock).
const CLOCK_SKEW: chrono::Duration = chrono::Duration::minutes(1);

pub(crate) struct Csrf {
    key: Vec<u8>,
}

/// Why a POST was refused.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum CsrfRefusal {
    CrossSite,
    OtherOrigin,
    Invalid,
    Expired,
}

impl CsrfRefusal {
    pub fn message(&self) -> &'static str {
        match self {
            CsrfRefusal::CrossSite | CsrfRefusal::OtherOrigin | CsrfRefusal::Invalid => {
                "refused: this form did not come from the console (CSRF)"
            }
            CsrfRefusal::Expired => "this confirmation has expired; confirm again",
        }
    }
}

impl Csrf {
    /// A key of this process's own.
    pub fn new() -> Csrf {
        Csrf { key: rand::random::<[u8; 32]>().to_vec() }
    }

    /// The configured shared key.
    pub fn with_key(key: &[u8]) -> Csrf {
        Csrf { key: key.to_vec() }
    }

    fn mac(&self, actor: &str, action: &str, issued: i64) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.key).expect("any key length");
        // Lengths first, so no actor/action split can be read two ways.
        for part in [actor.as_bytes(), action.as_bytes(), issued.to_string().as_bytes()] {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        mac
    }

    /// The token `actor`'s form for `action` carries, issued now.
    pub fn token(&self, actor: &str, action: &str) -> String {
        self.token_at(actor, action, chrono::Utc::now().timestamp())
    }

    fn token_at(&self, actor: &str, action: &str, issued: i64) -> String {
        format!("{issued}.{}", hex::encode(self.mac(actor, action, issued).finalize().into_bytes()))
    }

    /// Whether a POST by `actor` for `action` carrying `token` may change anything.
    pub fn check(&self, actor: &str, action: &str, token: &str, headers: &HeaderMap) -> Result<(), CsrfRefusal> {
        // Fetch metadata: browsers that send it say so for cross-site requests outright.
        if headers.get("sec-fetch-site").is_some_and(|v| v.as_bytes() == b"cross-site") {
            return Err(CsrfRefusal::CrossSite);
        }
        if !same_origin(headers) {
            return Err(CsrfRefusal::OtherOrigin);
        }
        let (issued, mac) = token.split_once('.').ok_or(CsrfRefusal::Invalid)?;
        let issued: i64 = issued.parse().map_err(|_| CsrfRefusal::Invalid)?;
        let given = hex::decode(mac).map_err(|_| CsrfRefusal::Invalid)?;
        self.mac(actor, action, issued).verify_slice(&given).map_err(|_| CsrfRefusal::Invalid)?;
        let now = chrono::Utc::now().timestamp();
        if issued > now + CLOCK_SKEW.num_seconds() || now - issued > TOKEN_TTL.num_seconds() {
            return Err(CsrfRefusal::Expired);
        }
        Ok(())
    }
}

/// A token's fingerprint, as spent tokens are kept (the token itself is not stored).
pub(crate) fn fingerprint(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// No `Origin`, or one whose host and port are the request's own `Host`.
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else { return true };
    let Ok(origin) = origin.to_str() else { return false };
    let authority = origin.split_once("://").map_or("", |(_, rest)| rest).trim_end_matches('/');
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
    // "null" (sandboxed frames, some redirects) names no origin the console could trust.
    !authority.is_empty() && authority.eq_ignore_ascii_case(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn a_token_is_bound_to_its_actor_and_its_action() {
        let csrf = Csrf::new();
        let token = csrf.token("alice", "replay:v1");
        let none = HeaderMap::new();
        assert_eq!(csrf.check("alice", "replay:v1", &token, &none), Ok(()));
        assert_eq!(csrf.check("bob", "replay:v1", &token, &none), Err(CsrfRefusal::Invalid));
        assert_eq!(csrf.check("alice", "replay:v2", &token, &none), Err(CsrfRefusal::Invalid));
        assert_eq!(csrf.check("alice", "replay:v1", "", &none), Err(CsrfRefusal::Invalid));
        let other = Csrf::new().token("alice", "replay:v1");
        assert_eq!(csrf.check("alice", "replay:v1", &other, &none), Err(CsrfRefusal::Invalid));
    }

    #[test]
    fn a_token_expires_and_cannot_be_moved_in_time() {
        let csrf = Csrf::new();
        let now = chrono::Utc::now().timestamp();
        let old = csrf.token_at("alice", "a", now - TOKEN_TTL.num_seconds() - 1);
        assert_eq!(csrf.check("alice", "a", &old, &HeaderMap::new()), Err(CsrfRefusal::Expired));
        // Changing the time voids the signature.
        let fresh = csrf.token_at("alice", "a", now);
        let moved = fresh.replacen(&now.to_string(), &(now + 1).to_string(), 1);
        assert_eq!(csrf.check("alice", "a", &moved, &HeaderMap::new()), Err(CsrfRefusal::Invalid));
    }

    #[test]
    fn cross_site_and_foreign_origins_are_refused() {
        let csrf = Csrf::new();
        let token = csrf.token("alice", "a");
        let h = headers(&[("sec-fetch-site", "cross-site")]);
        assert_eq!(csrf.check("alice", "a", &token, &h), Err(CsrfRefusal::CrossSite));
        let h = headers(&[("origin", "http://evil.example"), ("host", "127.0.0.1:9190")]);
        assert_eq!(csrf.check("alice", "a", &token, &h), Err(CsrfRefusal::OtherOrigin));
        let h = headers(&[("origin", "null"), ("host", "127.0.0.1:9190")]);
        assert_eq!(csrf.check("alice", "a", &token, &h), Err(CsrfRefusal::OtherOrigin));
        let h = headers(&[("origin", "http://127.0.0.1:9190"), ("host", "127.0.0.1:9190")]);
        assert_eq!(csrf.check("alice", "a", &token, &h), Ok(()));
    }

    #[test]
    fn replicas_sharing_a_key_accept_each_others_tokens() {
        let key = [7u8; 32];
        let (a, b) = (Csrf::with_key(&key), Csrf::with_key(&key));
        assert_eq!(b.check("alice", "x", &a.token("alice", "x"), &HeaderMap::new()), Ok(()));
        let c = Csrf::with_key(&[8u8; 32]);
        assert_eq!(c.check("alice", "x", &a.token("alice", "x"), &HeaderMap::new()), Err(CsrfRefusal::Invalid));
    }
}
