//! Cross-site request forgery: every form that changes something carries a token bound to the
//! signed-in actor (an HMAC of the name under a key), and a POST is refused without it or when
//! the browser says it comes from another site. The key is `web.csrf_secret` when set (several
//! replicas behind one address must share it), else random per process: a console restarted
//! mid-confirmation then asks for the confirmation again.

use axum::http::HeaderMap;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

pub(crate) struct Csrf {
    key: Vec<u8>,
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

    fn mac(&self, actor: &str) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.key).expect("any key length");
        mac.update(actor.as_bytes());
        mac
    }

    /// The token `actor`'s forms carry.
    pub fn token(&self, actor: &str) -> String {
        hex::encode(self.mac(actor).finalize().into_bytes())
    }

    /// Whether a POST by `actor` carrying `token` may change anything.
    pub fn allows(&self, actor: &str, token: &str, headers: &HeaderMap) -> bool {
        // Fetch metadata: browsers that send it say so for cross-site requests outright.
        let cross_site = headers.get("sec-fetch-site").is_some_and(|v| v.as_bytes() == b"cross-site");
        let Ok(given) = hex::decode(token) else { return false };
        !cross_site && self.mac(actor).verify_slice(&given).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_bound_to_its_actor_and_refused_cross_site() {
        let csrf = Csrf::new();
        let token = csrf.token("alice");
        let mut headers = HeaderMap::new();
        assert!(csrf.allows("alice", &token, &headers));
        assert!(!csrf.allows("bob", &token, &headers));
        assert!(!csrf.allows("alice", "", &headers));
        assert!(!csrf.allows("alice", &Csrf::new().token("alice"), &headers));
        headers.insert("sec-fetch-site", "cross-site".parse().unwrap());
        assert!(!csrf.allows("alice", &token, &headers));
    }

    #[test]
    fn replicas_sharing_a_key_accept_each_others_tokens() {
        let key = [7u8; 32];
        let (a, b) = (Csrf::with_key(&key), Csrf::with_key(&key));
        assert!(b.allows("alice", &a.token("alice"), &HeaderMap::new()));
        assert!(!Csrf::with_key(&[8u8; 32]).allows("alice", &a.token("alice"), &HeaderMap::new()));
    }
}
