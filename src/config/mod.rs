//! Typed configuration: a TOML file, overridden key by key from `BOUNCER_*` environment variables,
//! validated in one pass that reports every problem with its key. Secrets are held as
//! [`SecretString`] from the moment they are read and are never printed.
//!
//! Environment overrides: `BOUNCER_<SECTION>__<KEY>` (double underscore between levels, array
//! indexes as numbers), e.g. `BOUNCER_AMQP__URL`, `BOUNCER_BATCH__LINGER_MS`,
//! `BOUNCER_ZEGO__0__SERVER_SECRET`. A few variables are the CLI's own and are not config keys:
//! see [`RESERVED_ENV`].
//!
//! In four files besides this one (the validated types and the entry points): `file` (the TOML
//! schema and its defaults), `env` (the overrides), `validate` (meaning and limits) and `secret`
//! (inline, `_env` or `_file` secrets).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::vendors::{self, Action};

mod api;
mod env;
pub mod file;
mod outcomes;
mod retention;
mod secret;
mod validate;
mod web;

use api::validate_api;
pub use api::{ApiConfig, ApiToken, FileApi, FileApiToken};
use env::apply_env_overrides;
use file::*;
pub use file::{FileConfig, FileTrtc, FileZego};
use outcomes::validate_outcomes;
pub use outcomes::{FileOutcomes, OutcomesConfig};
use retention::validate_retention;
pub use retention::{FileRetention, RetentionConfig};
use secret::{resolve_optional_secret, resolve_secret};
use validate::*;
use web::validate_web;
pub use web::{FileWeb, FileWebAuth, FileWebUser, Role, WebConfig, WebUser, host_name};

/// Environment variables with the `BOUNCER_` prefix that belong to the CLI, not the config file.
pub const RESERVED_ENV: [&str; 4] = ["BOUNCER_CONFIG", "BOUNCER_LOG_FORMAT", "BOUNCER_LOG", "BOUNCER_ACTOR"];
const ENV_PREFIX: &str = "BOUNCER_";

/// One thing wrong with the configuration, named by its key (`zego[1].rate_per_second`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub reason: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.reason)
    }
}

/// Every problem found, in file order where there is one.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n{}", .0.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
pub struct ConfigError(pub Vec<Problem>);

fn problem(key: impl Into<String>, reason: impl Into<String>) -> Problem {
    Problem { key: key.into(), reason: reason.into() }
}

/// `[batch]`: how long a room's chunk may wait for company.
#[derive(Clone, Debug)]
pub struct BatchConfig {
    /// Flush a chunk this long after its first user became due, full or not.
    pub linger_ms: u64,
}

/// `[ownership]`: how replicas share the vendor quotas (the elector, `ownership`, reads them).
#[derive(Clone, Debug)]
pub struct OwnershipConfig {
    /// How long a quota lease lasts without renewal: an owner that cannot confirm it within this
    /// stops calling, and another replica may take over.
    pub lease: Duration,
    /// How often leases are renewed and shares rebalanced.
    pub heartbeat: Duration,
    /// This replica's name in `workers` and `quota_owners` (default: host name and process id).
    pub worker_id: Option<String>,
}

/// `[pacing]`: how calls are spaced and how much work an owner holds in memory.
#[derive(Clone, Debug)]
pub struct PacingConfig {
    /// How long a call that ended without an answer (timeout, reset, given up) may still reach
    /// the vendor; a new owner also waits this long on top of a window (see `quota`).
    pub jitter: Duration,
    /// Work an owner holds in memory per app, in seconds of its quota.
    pub buffer: Duration,
}

// ---------------------------------------------------------------------------------------------
// The validated configuration the rest of Bouncer uses.
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
pub struct Config {
    pub amqp: AmqpConfig,
    pub postgres: PostgresConfig,
    pub http: HttpConfig,
    pub batch: BatchConfig,
    pub retry: RetryConfig,
    pub ownership: OwnershipConfig,
    pub pacing: PacingConfig,
    /// Keys that are accepted but no longer mean anything, each with what to do about it.
    pub warnings: Vec<Problem>,
    pub shutdown: ShutdownConfig,
    /// `[web]`: read by `bouncer web` only.
    pub web: WebConfig,
    /// `[api]`: the public API `bouncer run` serves.
    pub api: ApiConfig,
    /// `[outcomes]`: outcome events back to the pipelines.
    pub outcomes: OutcomesConfig,
    /// `[retention]`: how long the audit trail keeps each kind of row.
    pub retention: RetentionConfig,
    pub zego: Vec<ZegoApp>,
    pub trtc: Vec<TrtcApp>,
}

#[derive(Clone, Debug)]
pub struct AmqpConfig {
    /// May hold a password: secret.
    pub url: SecretString,
    pub queue: String,
    pub prefetch: u16,
    /// Shown in the RabbitMQ management UI; ops and tests close connections by this name.
    pub connection_name: String,
    /// `x-delivery-limit` on the quorum queue: a message redelivered this often is dead-lettered.
    pub delivery_limit: u32,
}

#[derive(Clone, Debug)]
pub struct PostgresConfig {
    pub url: SecretString,
    pub max_connections: u32,
    /// What sits between `url` and PostgreSQL (`postgres.pooler`).
    pub pooler: Pooler,
    /// A connection that bypasses the pooler, for what needs a session: LISTEN and migrations.
    pub direct_url: Option<SecretString>,
    /// How often lanes look for due work while no LISTEN connection tells them.
    pub poll_interval: Duration,
}

/// `postgres.pooler`: what `postgres.url` reaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pooler {
    /// PostgreSQL itself, or a pooler that gives each client a session of its own (PgBouncer's
    /// `pool_mode = session`): every feature works as is.
    None,
    /// A pooler that lends a server connection for one transaction at a time (PgBouncer's
    /// `pool_mode = transaction`, the default endpoint of several managed offerings): no
    /// session state survives a transaction, so Bouncer runs every statement in a transaction,
    /// prepares none by name, and takes LISTEN and migrations to `postgres.direct_url`.
    Transaction,
}

impl Pooler {
    /// The config value.
    pub fn as_str(self) -> &'static str {
        match self {
            Pooler::None => "none",
            Pooler::Transaction => "transaction",
        }
    }

    fn parse(s: &str) -> Option<Pooler> {
        match s {
            "none" => Some(Pooler::None),
            "transaction" => Some(Pooler::Transaction),
            _ => None,
        }
    }
}

impl PostgresConfig {
    /// Where sessions go (LISTEN, migrations): the direct URL behind a transaction pooler, `url`
    /// otherwise; `None` when only a transaction pooler is configured.
    pub fn session_url(&self) -> Option<&SecretString> {
        match self.pooler {
            Pooler::None => Some(&self.url),
            Pooler::Transaction => self.direct_url.as_ref(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct HttpConfig {
    pub listen: SocketAddr,
}

#[derive(Clone, Debug)]
pub struct RetryConfig {
    pub initial: Duration,
    pub max_interval: Duration,
    pub deadline: Duration,
}

#[derive(Clone, Debug)]
pub struct ShutdownConfig {
    pub grace: Duration,
}

/// Timeouts for every vendor HTTP request.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    pub connect: Duration,
    pub total: Duration,
}

#[derive(Clone, Debug)]
pub struct ZegoApp {
    pub app_id: u32,
    pub server_secret: SecretString,
    pub endpoint: url::Url,
    pub rate_per_second: u32,
    pub chunk_size: usize,
    pub is_test: Option<bool>,
    pub timeouts: Timeouts,
    /// `forbid_rules`: bans are also set as ZEGO ban rules.
    pub forbid_rules: bool,
    /// `callback_secret`: verifies this app's room callbacks (none: they are refused).
    pub callback_secret: Option<SecretString>,
}

#[derive(Clone, Debug)]
pub struct TrtcApp {
    pub sdk_app_id: u32,
    pub secret_id: String,
    pub secret_key: SecretString,
    pub region: String,
    pub endpoint: url::Url,
    pub rate_per_second: u32,
    pub chunk_size: usize,
    pub timeouts: Timeouts,
    /// `callback_key`: verifies this app's room event callbacks (none: they are refused).
    pub callback_key: Option<SecretString>,
}

impl Default for Config {
    fn default() -> Self {
        // The defaults are valid by construction; this cannot report a problem.
        validate(FileConfig::default(), &|_| None).unwrap_or_else(|e| panic!("defaults invalid: {e:?}"))
    }
}

impl Config {
    /// Reads `path` (if it exists, or always when `required`), applies `BOUNCER_*` overrides from
    /// the process environment, and validates.
    pub fn load(path: &Path, required: bool) -> Result<Config, ConfigError> {
        let env: HashMap<String, String> = std::env::vars().collect();
        Self::load_with_env(path, required, &env)
    }

    /// [`Config::load`] with an explicit environment (tests use this to stay hermetic).
    pub fn load_with_env(path: &Path, required: bool, env: &HashMap<String, String>) -> Result<Config, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => String::new(),
            Err(e) => {
                return Err(ConfigError(vec![problem("--config", format!("cannot read {}: {e}", path.display()))]));
            }
        };
        Self::from_toml_with_env(&text, env)
    }

    /// Like [`Config::load`] (file required) but keeps only the `[[zego]]` and `[[trtc]]`
    /// sections: what `bouncer sim` needs, so a worker's file serves the simulator too.
    pub fn load_vendors_only(path: &Path) -> Result<Config, ConfigError> {
        let env: HashMap<String, String> = std::env::vars().collect();
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(vec![problem("--config", format!("cannot read {}: {e}", path.display()))]))?;
        Self::parse(&text, &env, true)
    }

    /// Parses TOML text, applies overrides from `env`, and validates.
    pub fn from_toml_with_env(text: &str, env: &HashMap<String, String>) -> Result<Config, ConfigError> {
        Self::parse(text, env, false)
    }

    fn parse(text: &str, env: &HashMap<String, String>, vendors_only: bool) -> Result<Config, ConfigError> {
        let mut table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| ConfigError(vec![problem("(file)", toml_syntax_error(text, &e))]))?;
        apply_env_overrides(&mut table, env).map_err(ConfigError)?;
        if vendors_only {
            table.retain(|k, _| crate::vendors::NAMES.contains(&k));
        }
        let file: FileConfig = serde_path_to_error::deserialize(table).map_err(|e| {
            let key = e.path().to_string();
            ConfigError(vec![problem(
                if key == "." { "(file)".into() } else { key },
                without_value(e.into_inner().message()),
            )])
        })?;
        validate(file, &|name| env.get(name).cloned()).map_err(ConfigError)
    }

    /// Parses TOML text with no environment overrides.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        Self::from_toml_with_env(text, &HashMap::new())
    }
}

/// `scheme://user:***@host/...`: a URL fit for logs and error messages.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            }
            // libpq and sqlx also take the password as a query parameter (`?password=`).
            if u.query().is_some() {
                let pairs: Vec<(String, String)> = u
                    .query_pairs()
                    .map(|(k, v)| {
                        let secret = ["pass", "secret", "token", "key"].iter().any(|s| k.to_lowercase().contains(s));
                        (k.into_owned(), if secret { "***".to_owned() } else { v.into_owned() })
                    })
                    .collect();
                u.query_pairs_mut().clear().extend_pairs(pairs);
            }
            u.to_string()
        }
        Err(_) => "(unparseable URL)".into(),
    }
}

/// A TOML syntax error by line and column, without the offending line: it may hold a secret
/// (`server_secret = "…" junk`).
fn toml_syntax_error(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().lines().next().unwrap_or("syntax error");
    match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map(|l| l.chars().count()).unwrap_or(0) + 1;
            format!(
                "not valid TOML at line {line}, column {column}: {message} (the line is not shown: it may hold a secret)"
            )
        }
        None => format!("not valid TOML: {message}"),
    }
}

/// A deserialisation message without the value serde quotes (`invalid type: integer `98765`,
/// expected a string`): the key may hold a secret. The key and the expected type are kept.
fn without_value(message: &str) -> String {
    let quoted_value = message.starts_with("invalid type:")
        || message.starts_with("invalid value:")
        || message.starts_with("invalid length");
    if !quoted_value {
        return message.to_owned();
    }
    match (message.find('`'), message.find("`,")) {
        (Some(open), Some(close)) if close > open => {
            format!("{}(value not shown){}", &message[..open], &message[close + 1..])
        }
        _ => message.to_owned(),
    }
}

#[cfg(test)]
mod tests;
