//! Who is asking: an HTTP basic user checked against an argon2 hash, a user named by a trusted
//! reverse proxy's header (believed only from the configured proxy addresses), or — on a loopback
//! listener with no authentication configured — the local operator.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Mutex;

use argon2::Argon2;
use argon2::password_hash::PasswordVerifier;
use argon2::password_hash::phc::PasswordHash;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use secrecy::ExposeSecret;
use sha2::Sha256;

use crate::config::{Role, WebConfig};

/// A signed-in person.
#[derive(Clone, Debug)]
pub(crate) struct Actor {
    pub name: String,
    pub role: Role,
}

impl Actor {
    pub fn may_replay(&self) -> bool {
        self.role == Role::Operator
    }
}

/// The console's authentication, built once from `[web]`.
pub(crate) struct Auth {
    config: WebConfig,
    /// Credentials already verified (an HMAC of them under `cache_key`): argon2 is slow by design
    /// and a page load makes several requests.
    verified: Mutex<HashSet<[u8; 32]>>,
    cache_key: [u8; 32],
}

impl Auth {
    pub fn new(config: WebConfig) -> Auth {
        Auth { config, verified: Mutex::default(), cache_key: rand::random() }
    }

    pub fn config(&self) -> &WebConfig {
        &self.config
    }

    /// The actor behind a request from `peer`, or why it is refused.
    pub fn actor(&self, headers: &HeaderMap, peer: SocketAddr) -> Result<Actor, Refused> {
        if let Some(name) = &self.config.proxy_header
            && self.config.proxy_addresses.contains(&peer.ip())
            && headers.contains_key(name)
        {
            // Exactly one: a proxy that appends the header instead of replacing it would let a
            // client name itself in a second copy, whichever copy we believed.
            let mut values = headers.get_all(name).iter();
            let (Some(value), None) = (values.next(), values.next()) else { return Err(Refused::ProxyHeader) };
            let Some(user) = value.to_str().ok().filter(|u| !u.is_empty()) else { return Err(Refused::ProxyHeader) };
            let operator = self.config.proxy_operators.iter().any(|o| o == user);
            let role = if operator { Role::Operator } else { self.config.proxy_role };
            return Ok(Actor { name: user.to_owned(), role });
        }
        if !self.config.users.is_empty() {
            return self.basic(headers).ok_or(Refused::SignIn);
        }
        if self.config.proxy_header.is_none() && self.config.listen.ip().is_loopback() {
            return Ok(Actor { name: "local".into(), role: Role::Operator });
        }
        Err(Refused::ProxyOnly)
    }

    fn basic(&self, headers: &HeaderMap) -> Option<Actor> {
        let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
        let encoded = value.strip_prefix("Basic ").or_else(|| value.strip_prefix("basic "))?;
        let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).ok()?;
        let text = String::from_utf8(decoded).ok()?;
        let (name, password) = text.split_once(':')?;
        let user = self.config.users.iter().find(|u| u.name == name)?;
        let fingerprint = self.fingerprint(&text);
        let known = self.verified.lock().map(|v| v.contains(&fingerprint)).unwrap_or(false);
        if !known {
            let hash = PasswordHash::new(user.password_hash.expose_secret()).ok()?;
            Argon2::default().verify_password(password.as_bytes(), &hash).ok()?;
            if let Ok(mut v) = self.verified.lock() {
                v.insert(fingerprint);
            }
        }
        Some(Actor { name: user.name.clone(), role: user.role })
    }

    fn fingerprint(&self, credentials: &str) -> [u8; 32] {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.cache_key).expect("any key length");
        mac.update(credentials.as_bytes());
        mac.finalize().into_bytes().into()
    }
}

/// Why a request has no actor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// No valid basic credentials: the browser asks for them.
    SignIn,
    /// Only the reverse proxy signs people in, and this request did not come through it.
    ProxyOnly,
    /// The proxy's user header came more than once, or empty, or not as text.
    ProxyHeader,
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        match self {
            Refused::SignIn => (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Basic realm=\"bouncer\", charset=\"UTF-8\"")],
                "sign in",
            )
                .into_response(),
            Refused::ProxyOnly => (StatusCode::FORBIDDEN, "sign in through the configured proxy").into_response(),
            Refused::ProxyHeader => {
                (StatusCode::BAD_REQUEST, "the proxy's user header must come exactly once, as text").into_response()
            }
        }
    }
}

/// Why `bouncer web` refuses to listen on `config.listen`, if it does.
pub fn refusal(config: &WebConfig) -> Option<String> {
    (!config.listen.ip().is_loopback() && !config.has_auth()).then(|| {
        format!(
            "web.listen {} is not a loopback address and web.auth configures no way to sign in: \
             set web.auth.users (HTTP basic, argon2 hashes) or web.auth.proxy_header with \
             web.auth.proxy_addresses",
            config.listen
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proxied(listen: &str) -> Auth {
        let text = format!(
            "[web]\nlisten = \"{listen}\"\n[web.auth]\nproxy_header = \"X-Forwarded-User\"\n\
             proxy_addresses = [\"10.0.0.5\"]\nproxy_operators = [\"alice@corp\"]\n"
        );
        Auth::new(crate::config::Config::from_toml(&text).expect("config").web)
    }

    fn from(auth: &Auth, ip: [u8; 4], user: &str) -> Result<Actor, Refused> {
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-user", user.parse().unwrap());
        auth.actor(&headers, SocketAddr::from((ip, 40000)))
    }

    #[test]
    fn the_proxy_header_is_believed_from_the_proxy_only_and_names_operators() {
        let auth = proxied("0.0.0.0:9190");
        let alice = from(&auth, [10, 0, 0, 5], "alice@corp").unwrap();
        assert_eq!((alice.name.as_str(), alice.role), ("alice@corp", Role::Operator));
        assert_eq!(from(&auth, [10, 0, 0, 5], "bob@corp").unwrap().role, Role::Viewer);
        assert_eq!(from(&auth, [10, 0, 0, 6], "alice@corp").unwrap_err(), Refused::ProxyOnly);
    }

    #[test]
    fn two_proxy_user_headers_are_refused_whichever_comes_first() {
        let auth = proxied("0.0.0.0:9190");
        let mut headers = HeaderMap::new();
        headers.append("x-forwarded-user", "mallory".parse().unwrap());
        headers.append("x-forwarded-user", "alice@corp".parse().unwrap());
        let got = auth.actor(&headers, SocketAddr::from(([10, 0, 0, 5], 40000)));
        assert_eq!(got.unwrap_err(), Refused::ProxyHeader);
        assert_eq!(from(&auth, [10, 0, 0, 5], "").unwrap_err(), Refused::ProxyHeader);
    }

    #[test]
    fn loopback_without_sign_in_is_the_local_operator_but_not_once_a_proxy_is_configured() {
        let open = Auth::new(crate::config::Config::from_toml("").expect("config").web);
        let local = open.actor(&HeaderMap::new(), SocketAddr::from(([127, 0, 0, 1], 1))).unwrap();
        assert_eq!((local.name.as_str(), local.role), ("local", Role::Operator));
        let auth = proxied("127.0.0.1:9190");
        assert_eq!(
            auth.actor(&HeaderMap::new(), SocketAddr::from(([127, 0, 0, 1], 1))).unwrap_err(),
            Refused::ProxyOnly
        );
    }
}
