//! Who is asking: an HTTP basic user checked against an argon2 hash, a user named by a trusted
//! reverse proxy's header (believed only from the configured proxy addresses), or — on a loopback
//! listener with no authentication configured — the local operator.
//!
//! Password checks are built not to help a guesser: argon2 runs on the blocking pool behind a
//! small semaphore (guessers cannot starve signed-in requests of the async threads), an unknown
//! user name costs the same argon2 check as a known one (against a hash made at start), and after
//! [`FREE_FAILURES`] failures a user name or an address waits, doubling up to [`MAX_LOCKOUT`]
//! (429 with `Retry-After`).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use argon2::Argon2;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
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

/// Password checks running at once; more wait (argon2 takes tens of milliseconds of a core).
const CONCURRENT_CHECKS: usize = 2;
/// Failed sign-ins a user name or an address gets before it must wait.
pub(crate) const FREE_FAILURES: u32 = 5;
/// The longest wait after repeated failures.
pub(crate) const MAX_LOCKOUT: Duration = Duration::from_secs(60);
/// Names and addresses whose failures are remembered at most (a flood of names forgets the oldest).
const REMEMBERED: usize = 10_000;

/// Failed sign-ins by user name and by address, and until when each must wait.
#[derive(Default)]
struct Throttle {
    failures: Mutex<HashMap<String, (u32, Instant)>>,
}

impl Throttle {
    /// How long `key` must still wait, if it must.
    fn wait(&self, key: &str) -> Option<Duration> {
        let f = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        f.get(key).map(|(_, until)| until.saturating_duration_since(Instant::now())).filter(|d| !d.is_zero())
    }

    fn failed(&self, key: String) {
        let mut f = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if f.len() >= REMEMBERED && !f.contains_key(&key) {
            let now = Instant::now();
            f.retain(|_, (_, until)| *until > now);
            if f.len() >= REMEMBERED {
                f.clear();
            }
        }
        let entry = f.entry(key).or_insert((0, Instant::now()));
        entry.0 += 1;
        if entry.0 >= FREE_FAILURES {
            let wait = Duration::from_secs(1 << (entry.0 - FREE_FAILURES).min(6)).min(MAX_LOCKOUT);
            entry.1 = Instant::now() + wait;
        }
    }

    fn succeeded(&self, key: &str) {
        self.failures.lock().unwrap_or_else(|e| e.into_inner()).remove(key);
    }
}

/// The console's authentication, built once from `[web]`.
pub(crate) struct Auth {
    config: WebConfig,
    /// Credentials already verified (an HMAC of them under `cache_key`): argon2 is slow by design
    /// and a page load makes several requests.
    verified: Mutex<HashSet<[u8; 32]>>,
    cache_key: [u8; 32],
    checks: Arc<tokio::sync::Semaphore>,
    throttle: Throttle,
    /// Checked for unknown user names, so they cost what known ones do.
    dummy_hash: Arc<String>,
}

impl Auth {
    pub fn new(config: WebConfig) -> Auth {
        // With the default parameters, as `bouncer web --hash-password` makes users' hashes.
        let dummy_hash =
            Argon2::default().hash_password(b"not anyone's password").map(|h| h.to_string()).unwrap_or_default();
        Auth {
            config,
            verified: Mutex::default(),
            cache_key: rand::random(),
            checks: Arc::new(tokio::sync::Semaphore::new(CONCURRENT_CHECKS)),
            throttle: Throttle::default(),
            dummy_hash: Arc::new(dummy_hash),
        }
    }

    pub fn config(&self) -> &WebConfig {
        &self.config
    }

    /// The actor behind a request from `peer`, or why it is refused.
    pub async fn actor(&self, headers: &HeaderMap, peer: SocketAddr) -> Result<Actor, Refused> {
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
            return self.basic(headers, peer).await;
        }
        if self.config.proxy_header.is_none() && self.config.listen.ip().is_loopback() {
            return Ok(Actor { name: "local".into(), role: Role::Operator });
        }
        Err(Refused::ProxyOnly)
    }

    async fn basic(&self, headers: &HeaderMap, peer: SocketAddr) -> Result<Actor, Refused> {
        let (name, password, text) = credentials(headers).ok_or(Refused::SignIn)?;
        let fingerprint = self.fingerprint(&text);
        let user = self.config.users.iter().find(|u| u.name == name);
        if let Some(user) = user
            && self.verified.lock().map(|v| v.contains(&fingerprint)).unwrap_or(false)
        {
            return Ok(Actor { name: user.name.clone(), role: user.role });
        }
        let (by_name, by_peer) = (format!("user:{name}"), format!("ip:{}", peer.ip()));
        if let Some(wait) = self.throttle.wait(&by_name).max(self.throttle.wait(&by_peer)) {
            return Err(Refused::TooMany(wait.as_secs().max(1)));
        }
        // An unknown name is checked against the dummy hash: the same work, the same answer time.
        let hash = user.map_or_else(|| self.dummy_hash.to_string(), |u| u.password_hash.expose_secret().to_owned());
        let permit = self.checks.clone().acquire_owned().await.map_err(|_| Refused::SignIn)?;
        let ok = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            PasswordHash::new(&hash).is_ok_and(|h| Argon2::default().verify_password(password.as_bytes(), &h).is_ok())
        })
        .await
        .unwrap_or(false);
        match user {
            Some(user) if ok => {
                self.throttle.succeeded(&by_name);
                self.throttle.succeeded(&by_peer);
                if let Ok(mut v) = self.verified.lock() {
                    v.insert(fingerprint);
                }
                Ok(Actor { name: user.name.clone(), role: user.role })
            }
            _ => {
                self.throttle.failed(by_name);
                self.throttle.failed(by_peer);
                Err(Refused::SignIn)
            }
        }
    }

    fn fingerprint(&self, credentials: &str) -> [u8; 32] {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.cache_key).expect("any key length");
        mac.update(credentials.as_bytes());
        mac.finalize().into_bytes().into()
    }
}

/// HTTP basic credentials: (name, password, "name:password").
fn credentials(headers: &HeaderMap) -> Option<(String, String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let encoded = value.strip_prefix("Basic ").or_else(|| value.strip_prefix("basic "))?;
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (name, password) = text.split_once(':')?;
    Some((name.to_owned(), password.to_owned(), text))
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
    /// Too many failed sign-ins from this name or address: wait this many seconds.
    TooMany(u64),
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
            Refused::TooMany(secs) => (
                StatusCode::TOO_MANY_REQUESTS,
                [(header::RETRY_AFTER, secs.to_string())],
                "too many failed sign-ins; wait and try again",
            )
                .into_response(),
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

    async fn from(auth: &Auth, ip: [u8; 4], user: &str) -> Result<Actor, Refused> {
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-user", user.parse().unwrap());
        auth.actor(&headers, SocketAddr::from((ip, 40000))).await
    }

    #[tokio::test]
    async fn the_proxy_header_is_believed_from_the_proxy_only_and_names_operators() {
        let auth = proxied("0.0.0.0:9190");
        let alice = from(&auth, [10, 0, 0, 5], "alice@corp").await.unwrap();
        assert_eq!((alice.name.as_str(), alice.role), ("alice@corp", Role::Operator));
        assert_eq!(from(&auth, [10, 0, 0, 5], "bob@corp").await.unwrap().role, Role::Viewer);
        assert_eq!(from(&auth, [10, 0, 0, 6], "alice@corp").await.unwrap_err(), Refused::ProxyOnly);
    }

    #[tokio::test]
    async fn two_proxy_user_headers_are_refused_whichever_comes_first() {
        let auth = proxied("0.0.0.0:9190");
        let mut headers = HeaderMap::new();
        headers.append("x-forwarded-user", "mallory".parse().unwrap());
        headers.append("x-forwarded-user", "alice@corp".parse().unwrap());
        let got = auth.actor(&headers, SocketAddr::from(([10, 0, 0, 5], 40000))).await;
        assert_eq!(got.unwrap_err(), Refused::ProxyHeader);
        assert_eq!(from(&auth, [10, 0, 0, 5], "").await.unwrap_err(), Refused::ProxyHeader);
    }

    #[tokio::test]
    async fn loopback_without_sign_in_is_the_local_operator_but_not_once_a_proxy_is_configured() {
        let open = Auth::new(crate::config::Config::from_toml("").expect("config").web);
        let local = open.actor(&HeaderMap::new(), SocketAddr::from(([127, 0, 0, 1], 1))).await.unwrap();
        assert_eq!((local.name.as_str(), local.role), ("local", Role::Operator));
        let auth = proxied("127.0.0.1:9190");
        assert_eq!(
            auth.actor(&HeaderMap::new(), SocketAddr::from(([127, 0, 0, 1], 1))).await.unwrap_err(),
            Refused::ProxyOnly
        );
    }

    #[test]
    fn repeated_failures_make_a_name_wait_longer_each_time_and_a_success_forgets_them() {
        let t = Throttle::default();
        for _ in 0..FREE_FAILURES - 1 {
            t.failed("user:alice".into());
        }
        assert_eq!(t.wait("user:alice"), None, "the first failures are free");
        t.failed("user:alice".into());
        let first = t.wait("user:alice").expect("waits");
        t.failed("user:alice".into());
        assert!(t.wait("user:alice").expect("waits") > first);
        t.succeeded("user:alice");
        assert_eq!(t.wait("user:alice"), None);
        assert_eq!(t.wait("ip:10.0.0.1"), None, "others are not touched");
    }
}
