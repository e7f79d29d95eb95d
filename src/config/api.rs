//! `[api]`: the public API listener (ban checks for token servers, lifting): where it listens,
//! who may call it (`[[api.tokens]]`), and how many database connections it may use. Served by
//! `bouncer run` on every replica; absent `listen` means off.

use serde::Serialize;

use super::*;

/// `[api]` as written in the file.
#[derive(Deserialize, Serialize, Clone)]
#[serde(deny_unknown_fields, default)]
pub struct FileApi {
    /// `host:port`; absent: no API listener.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tokens: Vec<FileApiToken>,
    /// Connections of its own to PostgreSQL: the API never waits behind enforcement or intake.
    pub max_connections: u32,
    /// How long a request may wait for a connection before it is answered 503 (a statement
    /// already sent gets five times as long).
    pub database_timeout_ms: u64,
    /// A kick the vendor has not confirmed (room callback: removed by a server API) within this
    /// long is listed by `bouncer audit --unconfirmed`.
    pub confirm_within_secs: u64,
    /// The nice value (0–19) `bouncer run` gives every thread but the API's while the API
    /// listens, so a token server's check is not kept waiting for a core by intake or
    /// enforcement; 0 leaves every thread as it started.
    pub background_nice: i32,
}

impl Default for FileApi {
    fn default() -> Self {
        FileApi {
            listen: None,
            tokens: Vec::new(),
            max_connections: 8,
            database_timeout_ms: 1000,
            confirm_within_secs: 60,
            background_nice: 5,
        }
    }
}

/// `[[api.tokens]]`: one caller (a token server, a script), by name.
#[derive(Deserialize, Serialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct FileApiToken {
    /// Shown in logs and recorded as the actor of a lift; the token itself never is.
    pub name: String,
    #[serde(default, serialize_with = "file::expose_opt", skip_serializing_if = "Option::is_none")]
    pub token: Option<SecretString>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_env: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
}

/// One caller of the API.
#[derive(Clone, Debug)]
pub struct ApiToken {
    pub name: String,
    pub token: SecretString,
}

/// `[api]`, validated.
#[derive(Clone, Debug)]
pub struct ApiConfig {
    pub listen: Option<SocketAddr>,
    pub tokens: Vec<ApiToken>,
    pub max_connections: u32,
    pub database_timeout: Duration,
    /// `confirm_within_secs`.
    pub confirm_within: Duration,
    pub background_nice: i32,
}

/// Tokens shorter than this are guessable.
const MIN_TOKEN_BYTES: usize = 16;

pub(super) fn validate_api(f: FileApi, env: &dyn Fn(&str) -> Option<String>, p: &mut Vec<Problem>) -> ApiConfig {
    let listen = f.listen.as_deref().and_then(|l| match l.parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(e) => {
            p.push(problem("api.listen", format!("must be an address like 0.0.0.0:9192 ({e})")));
            None
        }
    });
    let mut tokens: Vec<ApiToken> = Vec::new();
    for (i, t) in f.tokens.into_iter().enumerate() {
        let key = |k: &str| format!("api.tokens[{i}].{k}");
        let name_ok = !t.name.is_empty() && t.name.len() <= 64 && t.name.chars().all(|c| c.is_ascii_graphic());
        if !name_ok {
            p.push(problem(key("name"), "must be 1 to 64 printable ASCII characters without spaces"));
        } else if tokens.iter().any(|o| o.name == t.name) {
            p.push(problem(key("name"), format!("token {:?} is configured twice", t.name)));
        }
        let secret = FileSecret { value: t.token, env: t.token_env, file: t.token_file };
        let Some(token) = resolve_secret(&key("token"), secret, env, p) else { continue };
        if token.expose_secret().len() < MIN_TOKEN_BYTES {
            p.push(problem(
                key("token"),
                format!("must be at least {MIN_TOKEN_BYTES} bytes (for example: openssl rand -hex 32)"),
            ));
        } else if tokens.iter().any(|o| o.token.expose_secret() == token.expose_secret()) {
            p.push(problem(key("token"), "is the same as another token's: each caller needs its own"));
        }
        tokens.push(ApiToken { name: t.name, token });
    }
    if listen.is_some() && tokens.is_empty() {
        p.push(problem("api.tokens", "at least one [[api.tokens]] is required when api.listen is set"));
    }
    if !(1..=100).contains(&f.max_connections) {
        p.push(problem("api.max_connections", format!("must be 1..=100, got {}", f.max_connections)));
    }
    if !(50..=30_000).contains(&f.database_timeout_ms) {
        p.push(problem("api.database_timeout_ms", format!("must be 50..=30000, got {}", f.database_timeout_ms)));
    }
    if !(1..=86_400).contains(&f.confirm_within_secs) {
        p.push(problem("api.confirm_within_secs", format!("must be 1..=86400, got {}", f.confirm_within_secs)));
    }
    if !(0..=19).contains(&f.background_nice) {
        p.push(problem("api.background_nice", format!("must be 0..=19 (a nice value), got {}", f.background_nice)));
    }
    ApiConfig {
        background_nice: f.background_nice,
        confirm_within: Duration::from_secs(f.confirm_within_secs),
        listen,
        tokens,
        max_connections: f.max_connections,
        database_timeout: Duration::from_millis(f.database_timeout_ms),
    }
}
