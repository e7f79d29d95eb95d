//! Typed configuration: a TOML file, overridden key by key from `BOUNCER_*` environment variables,
//! validated in one pass that reports every problem with its key. Secrets are held as
//! [`SecretString`] from the moment they are read and are never printed.
//!
//! Environment overrides: `BOUNCER_<SECTION>__<KEY>` (double underscore between levels, array
//! indexes as numbers), e.g. `BOUNCER_AMQP__URL`, `BOUNCER_BATCH__LINGER_MS`,
//! `BOUNCER_ZEGO__0__SERVER_SECRET`. A few variables are the CLI's own and are not config keys:
//! see [`RESERVED_ENV`].

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::vendor::{trtc, zego};

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

// ---------------------------------------------------------------------------------------------
// The file format (serde). Defaults live here; meaning and limits are checked in `validate`.
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(default)]
    amqp: FileAmqp,
    #[serde(default)]
    postgres: FilePostgres,
    #[serde(default)]
    http: FileHttp,
    #[serde(default)]
    batch: FileBatch,
    #[serde(default)]
    retry: FileRetry,
    #[serde(default)]
    ownership: FileOwnership,
    #[serde(default)]
    pacing: FilePacing,
    #[serde(default)]
    shutdown: FileShutdown,
    #[serde(default)]
    zego: Vec<FileZego>,
    #[serde(default)]
    trtc: Vec<FileTrtc>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct FileAmqp {
    url: SecretString,
    queue: String,
    prefetch: u32,
    connection_name: String,
    delivery_limit: u32,
    /// Obsolete since enforcement reads its work from PostgreSQL: accepted, with a warning.
    defer_ms: Option<u64>,
    /// Obsolete (as above).
    max_unacked_per_app: Option<u32>,
}

impl Default for FileAmqp {
    fn default() -> Self {
        FileAmqp {
            url: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
            queue: "bouncer.verdicts".into(),
            prefetch: 500,
            connection_name: "bouncer".into(),
            delivery_limit: 20,
            defer_ms: None,
            max_unacked_per_app: None,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct FilePostgres {
    url: SecretString,
    max_connections: u32,
}

impl Default for FilePostgres {
    fn default() -> Self {
        FilePostgres { url: "postgres://postgres@127.0.0.1:5432/bouncer".into(), max_connections: 10 }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct FileHttp {
    listen: String,
}

impl Default for FileHttp {
    fn default() -> Self {
        FileHttp { listen: "127.0.0.1:9187".into() }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct FileBatch {
    linger_ms: u64,
    /// Obsolete since enforcement reads its work from PostgreSQL: accepted, with a warning.
    max_open_batches: Option<u64>,
    /// Obsolete (as above).
    hold_secs: Option<u64>,
}

impl Default for FileBatch {
    fn default() -> Self {
        FileBatch { linger_ms: 25, max_open_batches: None, hold_secs: None }
    }
}

/// `[batch]`: how long a room's chunk may wait for company.
#[derive(Clone, Debug)]
pub struct BatchConfig {
    /// Flush a chunk this long after its first user became due, full or not.
    pub linger_ms: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct FileOwnership {
    lease_ms: u64,
    heartbeat_ms: u64,
    worker_id: Option<String>,
}

impl Default for FileOwnership {
    fn default() -> Self {
        FileOwnership { lease_ms: 3_000, heartbeat_ms: 500, worker_id: None }
    }
}

/// `[ownership]`: how replicas share the vendor quotas (see [`crate::ownership`]).
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct FilePacing {
    jitter_ms: u64,
    buffer_ms: u64,
}

impl Default for FilePacing {
    fn default() -> Self {
        FilePacing { jitter_ms: 25, buffer_ms: 2_000 }
    }
}

/// `[pacing]`: how calls are spaced and how much work an owner holds in memory.
#[derive(Clone, Debug)]
pub struct PacingConfig {
    /// Variation of the delay between a call leaving and the vendor counting it that the pacing
    /// absorbs: no `1 s + jitter` window holds more calls than the vendor's limit.
    pub jitter: Duration,
    /// Work an owner holds in memory per app, in seconds of its quota.
    pub buffer: Duration,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct FileRetry {
    initial_ms: u64,
    max_interval_ms: u64,
    deadline_secs: u64,
}

impl Default for FileRetry {
    fn default() -> Self {
        FileRetry { initial_ms: 200, max_interval_ms: 10_000, deadline_secs: 600 }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct FileShutdown {
    grace_secs: u64,
}

impl Default for FileShutdown {
    fn default() -> Self {
        FileShutdown { grace_secs: 10 }
    }
}

/// A secret given inline, by environment variable name, or by file path: exactly one of the three.
struct FileSecret {
    value: Option<SecretString>,
    env: Option<String>,
    file: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileZego {
    app_id: u32,
    server_secret: Option<SecretString>,
    server_secret_env: Option<String>,
    server_secret_file: Option<PathBuf>,
    #[serde(default = "zego_endpoint")]
    endpoint: String,
    #[serde(default = "zego_rate")]
    rate_per_second: u32,
    #[serde(default = "zego_chunk")]
    chunk_size: usize,
    is_test: Option<bool>,
    #[serde(default = "default_timeout_ms")]
    timeout_ms: u64,
    #[serde(default = "default_timeout_ms")]
    connect_timeout_ms: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTrtc {
    sdk_app_id: u32,
    secret_id: String,
    secret_key: Option<SecretString>,
    secret_key_env: Option<String>,
    secret_key_file: Option<PathBuf>,
    region: String,
    #[serde(default = "trtc_endpoint")]
    endpoint: String,
    #[serde(default = "trtc_rate")]
    rate_per_second: u32,
    #[serde(default = "trtc_chunk")]
    chunk_size: usize,
    #[serde(default = "default_timeout_ms")]
    timeout_ms: u64,
    #[serde(default = "default_timeout_ms")]
    connect_timeout_ms: u64,
}

fn zego_endpoint() -> String {
    "https://rtc-api.zego.im".into()
}
fn zego_rate() -> u32 {
    zego::MAX_CALLS_PER_SECOND
}
fn zego_chunk() -> usize {
    zego::MAX_USERS_PER_CALL
}
fn trtc_endpoint() -> String {
    "https://trtc.tencentcloudapi.com".into()
}
fn trtc_rate() -> u32 {
    trtc::MAX_CALLS_PER_SECOND
}
fn trtc_chunk() -> usize {
    trtc::MAX_USERS_PER_CALL
}
fn default_timeout_ms() -> u64 {
    5_000
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
            table.retain(|k, _| k == "zego" || k == "trtc");
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

/// Applies `BOUNCER_A__B__0__C=value` to `a.b[0].c`. The value takes the type of the value it
/// replaces; a new value is a string for string-typed keys, else typed by its look.
fn apply_env_overrides(table: &mut toml::Table, env: &HashMap<String, String>) -> Result<(), Vec<Problem>> {
    let mut problems = Vec::new();
    // Sorted so that `..__0__..` is created before `..__1__..`.
    let sorted: BTreeMap<_, _> = env.iter().filter(|(k, _)| k.starts_with(ENV_PREFIX)).collect();
    for (name, value) in sorted {
        if RESERVED_ENV.contains(&name.as_str()) {
            continue;
        }
        let path: Vec<String> = name[ENV_PREFIX.len()..].split("__").map(|s| s.to_ascii_lowercase()).collect();
        if let Err(reason) = set_path(table, &path, value) {
            problems.push(problem(name.clone(), reason));
        }
    }
    if problems.is_empty() { Ok(()) } else { Err(problems) }
}

const STRING_KEYS: [&str; 10] = [
    "url",
    "queue",
    "connection_name",
    "listen",
    "server_secret",
    "secret_id",
    "secret_key",
    "region",
    "endpoint",
    "server_secret_env",
];

fn typed_like(existing: Option<&toml::Value>, key: &str, raw: &str) -> Result<toml::Value, String> {
    use toml::Value as V;
    let infer = || {
        if STRING_KEYS.contains(&key) || key.ends_with("_env") || key.ends_with("_file") {
            return V::String(raw.to_owned());
        }
        if let Ok(i) = raw.parse::<i64>() {
            V::Integer(i)
        } else if let Ok(b) = raw.parse::<bool>() {
            V::Boolean(b)
        } else {
            V::String(raw.to_owned())
        }
    };
    Ok(match existing {
        Some(V::Integer(_)) => V::Integer(raw.parse().map_err(|_| format!("expected an integer, got {raw:?}"))?),
        Some(V::Boolean(_)) => V::Boolean(raw.parse().map_err(|_| format!("expected true or false, got {raw:?}"))?),
        Some(V::Float(_)) => V::Float(raw.parse().map_err(|_| format!("expected a number, got {raw:?}"))?),
        Some(V::String(_)) => V::String(raw.to_owned()),
        _ => infer(),
    })
}

fn set_path(table: &mut toml::Table, path: &[String], raw: &str) -> Result<(), String> {
    let (first, rest) = path.split_first().ok_or("empty key")?;
    if first.is_empty() {
        return Err("empty key segment".into());
    }
    if rest.is_empty() {
        let v = typed_like(table.get(first), first, raw)?;
        table.insert(first.clone(), v);
        return Ok(());
    }
    let slot = table.entry(first.clone()).or_insert_with(|| {
        if rest[0].parse::<usize>().is_ok() {
            toml::Value::Array(Vec::new())
        } else {
            toml::Value::Table(toml::Table::new())
        }
    });
    set_in_value(slot, rest, raw)
}

fn set_in_value(slot: &mut toml::Value, rest: &[String], raw: &str) -> Result<(), String> {
    match slot {
        toml::Value::Table(t) => set_path(t, rest, raw),
        toml::Value::Array(items) => {
            let idx: usize = rest[0].parse().map_err(|_| format!("{:?} is not an array index", rest[0]))?;
            if idx > items.len() {
                return Err(format!("array index {idx} skips entries (there are {})", items.len()));
            }
            if idx == items.len() {
                items.push(toml::Value::Table(toml::Table::new()));
            }
            if rest.len() == 1 {
                return Err("names an array entry, not a key inside it".into());
            }
            set_in_value(&mut items[idx], &rest[1..], raw)
        }
        _ => Err(format!("{:?} is not a section", rest[0])),
    }
}

/// Checks meaning and limits, resolves secrets, and turns file types into domain types.
fn validate(f: FileConfig, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, Vec<Problem>> {
    let mut p = Vec::new();

    let amqp_url = f.amqp.url.expose_secret();
    if !(amqp_url.starts_with("amqp://") || amqp_url.starts_with("amqps://")) {
        p.push(problem("amqp.url", "must start with amqp:// or amqps://"));
    }
    if f.amqp.queue.is_empty() || f.amqp.queue.len() > 200 {
        p.push(problem("amqp.queue", "must be 1 to 200 bytes"));
    }
    let prefetch = match u16::try_from(f.amqp.prefetch) {
        Ok(n) if n > 0 => n,
        _ => {
            p.push(problem("amqp.prefetch", format!("must be in 1..=65535, got {}", f.amqp.prefetch)));
            1
        }
    };
    let obsolete = "obsolete since enforcement reads its work from PostgreSQL (intake never holds or defers \
                    deliveries); ignored, remove it";
    let mut warnings = Vec::new();
    for (key, given) in [
        ("amqp.defer_ms", f.amqp.defer_ms.is_some()),
        ("amqp.max_unacked_per_app", f.amqp.max_unacked_per_app.is_some()),
        ("batch.hold_secs", f.batch.hold_secs.is_some()),
        ("batch.max_open_batches", f.batch.max_open_batches.is_some()),
    ] {
        if given {
            warnings.push(problem(key, obsolete));
        }
    }
    if f.ownership.lease_ms < 1_000 || f.ownership.lease_ms > 60_000 {
        p.push(problem("ownership.lease_ms", format!("must be in 1000..=60000, got {}", f.ownership.lease_ms)));
    }
    if f.ownership.heartbeat_ms == 0 || f.ownership.heartbeat_ms * 2 > f.ownership.lease_ms {
        p.push(problem(
            "ownership.heartbeat_ms",
            format!("must be at least 1 and at most half of ownership.lease_ms, got {}", f.ownership.heartbeat_ms),
        ));
    }
    if f.ownership.worker_id.as_ref().is_some_and(|w| w.is_empty() || w.len() > 200) {
        p.push(problem("ownership.worker_id", "must be 1 to 200 bytes"));
    }
    if f.pacing.jitter_ms > 500 {
        p.push(problem("pacing.jitter_ms", format!("must be at most 500, got {}", f.pacing.jitter_ms)));
    }
    if f.pacing.buffer_ms < 100 || f.pacing.buffer_ms > 60_000 {
        p.push(problem("pacing.buffer_ms", format!("must be in 100..=60000, got {}", f.pacing.buffer_ms)));
    }
    if f.amqp.delivery_limit == 0 {
        p.push(problem("amqp.delivery_limit", "must be at least 1"));
    }
    let pg_url = f.postgres.url.expose_secret();
    if !(pg_url.starts_with("postgres://") || pg_url.starts_with("postgresql://")) {
        p.push(problem("postgres.url", "must start with postgres:// or postgresql://"));
    }
    if f.postgres.max_connections == 0 {
        p.push(problem("postgres.max_connections", "must be at least 1"));
    }
    let listen = f.http.listen.parse::<SocketAddr>().unwrap_or_else(|e| {
        p.push(problem("http.listen", format!("must be an address like 127.0.0.1:9187 ({e})")));
        SocketAddr::from(([127, 0, 0, 1], 9187))
    });
    if f.batch.linger_ms > 60_000 {
        p.push(problem("batch.linger_ms", format!("must be at most 60000, got {}", f.batch.linger_ms)));
    }
    if f.retry.initial_ms == 0 {
        p.push(problem("retry.initial_ms", "must be at least 1"));
    }
    if f.retry.max_interval_ms < f.retry.initial_ms {
        p.push(problem("retry.max_interval_ms", "must be at least retry.initial_ms"));
    }
    if f.retry.deadline_secs == 0 {
        p.push(problem("retry.deadline_secs", "must be at least 1"));
    }

    let mut zego_apps = Vec::new();
    let mut seen = HashMap::new();
    for (i, z) in f.zego.into_iter().enumerate() {
        let key = |k: &str| format!("zego[{i}].{k}");
        if let Some(first) = seen.insert(z.app_id, i) {
            p.push(problem(key("app_id"), format!("app {} is already configured at zego[{first}]", z.app_id)));
        }
        if z.app_id == 0 {
            p.push(problem(key("app_id"), "must not be 0"));
        }
        let secret = resolve_secret(
            &key("server_secret"),
            FileSecret { value: z.server_secret, env: z.server_secret_env, file: z.server_secret_file },
            env,
            &mut p,
        );
        check_rate(&key("rate_per_second"), z.rate_per_second, zego::MAX_CALLS_PER_SECOND, &mut p);
        check_chunk(&key("chunk_size"), z.chunk_size, zego::MAX_USERS_PER_CALL, &mut p);
        let endpoint = check_endpoint(&key("endpoint"), &z.endpoint, &mut p);
        let timeouts = check_timeouts(&key(""), z.connect_timeout_ms, z.timeout_ms, &mut p);
        if let (Some(server_secret), Some(endpoint)) = (secret, endpoint) {
            zego_apps.push(ZegoApp {
                app_id: z.app_id,
                server_secret,
                endpoint,
                rate_per_second: z.rate_per_second,
                chunk_size: z.chunk_size,
                is_test: z.is_test,
                timeouts,
            });
        }
    }

    let mut trtc_apps: Vec<TrtcApp> = Vec::new();
    let mut seen = HashMap::new();
    for (i, t) in f.trtc.into_iter().enumerate() {
        let key = |k: &str| format!("trtc[{i}].{k}");
        if let Some(first) = seen.insert(t.sdk_app_id, i) {
            p.push(problem(key("sdk_app_id"), format!("app {} is already configured at trtc[{first}]", t.sdk_app_id)));
        }
        if t.sdk_app_id == 0 {
            p.push(problem(key("sdk_app_id"), "must not be 0"));
        }
        if t.secret_id.trim().is_empty() {
            p.push(problem(key("secret_id"), "must not be empty"));
        }
        if !trtc::REGIONS.contains(&t.region.as_str()) {
            p.push(problem(
                key("region"),
                format!("unknown region {:?}; RemoveUser supports {}", t.region, trtc::REGIONS.join(", ")),
            ));
        }
        let secret = resolve_secret(
            &key("secret_key"),
            FileSecret { value: t.secret_key, env: t.secret_key_env, file: t.secret_key_file },
            env,
            &mut p,
        );
        check_rate(&key("rate_per_second"), t.rate_per_second, trtc::MAX_CALLS_PER_SECOND, &mut p);
        check_chunk(&key("chunk_size"), t.chunk_size, trtc::MAX_USERS_PER_CALL, &mut p);
        // Apps sharing credentials share one vendor quota (the safe reading): one rate for all.
        if let Some(other) =
            trtc_apps.iter().find(|o| o.secret_id == t.secret_id && o.rate_per_second != t.rate_per_second)
        {
            p.push(problem(
                key("rate_per_second"),
                format!(
                    "apps sharing secret_id share one quota; app {} has rate_per_second {}, this one {}",
                    other.sdk_app_id, other.rate_per_second, t.rate_per_second
                ),
            ));
        }
        let endpoint = check_endpoint(&key("endpoint"), &t.endpoint, &mut p);
        let timeouts = check_timeouts(&key(""), t.connect_timeout_ms, t.timeout_ms, &mut p);
        if let (Some(secret_key), Some(endpoint)) = (secret, endpoint) {
            trtc_apps.push(TrtcApp {
                sdk_app_id: t.sdk_app_id,
                secret_id: t.secret_id,
                secret_key,
                region: t.region,
                endpoint,
                rate_per_second: t.rate_per_second,
                chunk_size: t.chunk_size,
                timeouts,
            });
        }
    }

    if !p.is_empty() {
        return Err(p);
    }
    Ok(Config {
        amqp: AmqpConfig {
            url: f.amqp.url,
            queue: f.amqp.queue,
            prefetch,
            connection_name: f.amqp.connection_name,
            delivery_limit: f.amqp.delivery_limit,
        },
        postgres: PostgresConfig { url: f.postgres.url, max_connections: f.postgres.max_connections },
        http: HttpConfig { listen },
        batch: BatchConfig { linger_ms: f.batch.linger_ms },
        ownership: OwnershipConfig {
            lease: Duration::from_millis(f.ownership.lease_ms),
            heartbeat: Duration::from_millis(f.ownership.heartbeat_ms),
            worker_id: f.ownership.worker_id,
        },
        pacing: PacingConfig {
            jitter: Duration::from_millis(f.pacing.jitter_ms),
            buffer: Duration::from_millis(f.pacing.buffer_ms),
        },
        warnings,
        retry: RetryConfig {
            initial: Duration::from_millis(f.retry.initial_ms),
            max_interval: Duration::from_millis(f.retry.max_interval_ms),
            deadline: Duration::from_secs(f.retry.deadline_secs),
        },
        shutdown: ShutdownConfig { grace: Duration::from_secs(f.shutdown.grace_secs) },
        zego: zego_apps,
        trtc: trtc_apps,
    })
}

fn resolve_secret(
    key: &str,
    s: FileSecret,
    env: &dyn Fn(&str) -> Option<String>,
    p: &mut Vec<Problem>,
) -> Option<SecretString> {
    let given = [s.value.is_some(), s.env.is_some(), s.file.is_some()].iter().filter(|b| **b).count();
    if given != 1 {
        p.push(problem(
            key,
            if given == 0 {
                format!("missing: give {key}, {key}_env (an environment variable name) or {key}_file (a path)")
            } else {
                format!("give only one of {key}, {key}_env and {key}_file")
            },
        ));
        return None;
    }
    let resolved = if let Some(v) = s.value {
        Ok(v)
    } else if let Some(name) = s.env {
        env(&name)
            .map(SecretString::from)
            .ok_or_else(|| problem(format!("{key}_env"), format!("environment variable {name} is not set")))
    } else if let Some(path) = s.file {
        std::fs::read_to_string(&path)
            // Files written by editors and `echo` end in a newline that is not part of the secret.
            .map(|t| SecretString::from(t.trim_end_matches(['\n', '\r']).to_owned()))
            .map_err(|e| problem(format!("{key}_file"), format!("cannot read {}: {e}", path.display())))
    } else {
        return None;
    };
    match resolved {
        Ok(secret) if secret.expose_secret().is_empty() => {
            p.push(problem(key, "is empty"));
            None
        }
        Ok(secret) => Some(secret),
        Err(e) => {
            p.push(e);
            None
        }
    }
}

fn check_rate(key: &str, rate: u32, max: u32, p: &mut Vec<Problem>) {
    if rate == 0 || rate > max {
        p.push(problem(key, format!("must be in 1..={max} (the vendor's documented limit), got {rate}")));
    }
}

fn check_chunk(key: &str, size: usize, max: usize, p: &mut Vec<Problem>) {
    if size == 0 || size > max {
        p.push(problem(key, format!("must be in 1..={max} (users per call the vendor accepts), got {size}")));
    }
}

fn check_endpoint(key: &str, raw: &str, p: &mut Vec<Problem>) -> Option<url::Url> {
    match url::Url::parse(raw) {
        Ok(u) if (u.scheme() == "https" || u.scheme() == "http") && u.host_str().is_some() => Some(u),
        Ok(_) => {
            p.push(problem(key, format!("must be an http:// or https:// URL with a host, got {raw:?}")));
            None
        }
        Err(e) => {
            p.push(problem(key, format!("not a URL ({e}): {raw:?}")));
            None
        }
    }
}

fn check_timeouts(prefix: &str, connect_ms: u64, total_ms: u64, p: &mut Vec<Problem>) -> Timeouts {
    for (k, v) in [("connect_timeout_ms", connect_ms), ("timeout_ms", total_ms)] {
        if v == 0 || v > 300_000 {
            p.push(problem(format!("{prefix}{k}"), format!("must be in 1..=300000, got {v}")));
        }
    }
    Timeouts { connect: Duration::from_millis(connect_ms), total: Duration::from_millis(total_ms) }
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
mod tests {
    use super::*;

    const GOOD: &str = r#"
        [amqp]
        queue = "q"
        [[zego]]
        app_id = 1234567890
        server_secret = "abcdefghijklmnopqrstuvwxyz012345"
        [[trtc]]
        sdk_app_id = 1400000001
        secret_id = "AKID"
        secret_key = "key"
        region = "ap-guangzhou"
    "#;

    fn problems(text: &str) -> Vec<Problem> {
        Config::from_toml(text).expect_err("should be invalid").0
    }

    fn keys(text: &str) -> Vec<String> {
        problems(text).into_iter().map(|p| p.key).collect()
    }

    #[test]
    fn good_config_loads_with_defaults() {
        let c = Config::from_toml(GOOD).unwrap();
        assert_eq!(c.amqp.queue, "q");
        assert_eq!(c.amqp.prefetch, 500);
        assert_eq!(c.batch.linger_ms, 25);
        assert_eq!(c.zego[0].rate_per_second, 50);
        assert_eq!(c.zego[0].chunk_size, 5);
        assert_eq!(c.trtc[0].rate_per_second, 20);
        assert_eq!(c.trtc[0].chunk_size, 10);
        assert_eq!(c.zego[0].endpoint.as_str(), "https://rtc-api.zego.im/");
        assert_eq!(c.retry.deadline, Duration::from_secs(600));
        assert_eq!(c.trtc[0].timeouts.total, Duration::from_secs(5));
    }

    #[test]
    fn empty_file_is_a_valid_config_with_no_apps() {
        let c = Config::from_toml("").unwrap();
        assert!(c.zego.is_empty() && c.trtc.is_empty());
    }

    #[test]
    fn rate_and_chunk_above_vendor_limits_are_refused_by_key() {
        let text = GOOD.replace("server_secret =", "rate_per_second = 51\nchunk_size = 6\nserver_secret =");
        assert_eq!(keys(&text), ["zego[0].rate_per_second", "zego[0].chunk_size"]);
        let text = GOOD.replace("region =", "rate_per_second = 21\nchunk_size = 11\nregion =");
        assert_eq!(keys(&text), ["trtc[0].rate_per_second", "trtc[0].chunk_size"]);
    }

    #[test]
    fn unknown_region_duplicate_app_and_missing_secret_are_all_reported() {
        let text = format!("{}\n[[zego]]\napp_id = 1234567890\n", GOOD.replace("ap-guangzhou", "mars-1"));
        let ps = problems(&text);
        let ks: Vec<_> = ps.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(ks, ["zego[1].app_id", "zego[1].server_secret", "trtc[0].region"], "{ps:?}");
        assert!(ps[0].reason.contains("already configured at zego[0]"));
        assert!(ps[1].reason.starts_with("missing"));
        assert!(ps[2].reason.contains("ap-beijing"));
    }

    #[test]
    fn type_errors_and_unknown_keys_name_their_path() {
        let ps = problems(&GOOD.replace("app_id = 1234567890", "app_id = \"x\""));
        assert_eq!(ps[0].key, "zego[0].app_id", "{ps:?}");
        let ps = problems("[batch]\nlingr_ms = 5\n");
        assert_eq!(ps[0].key, "batch.lingr_ms", "{ps:?}");
        assert!(ps[0].reason.contains("lingr_ms"), "{ps:?}");
        let ps = problems("[bogus]\n");
        assert!(ps[0].reason.contains("bogus"), "{ps:?}");
        let ps = problems("not toml at all = = =");
        assert_eq!(ps[0].key, "(file)");
    }

    #[test]
    fn secrets_come_inline_from_env_or_file_never_two() {
        let env: HashMap<String, String> = [("MY_SECRET".to_string(), "from-env".to_string())].into();
        let text = GOOD.replace("server_secret = ", "server_secret_env = \"MY_SECRET\"\n#");
        let c = Config::from_toml_with_env(&text, &env).unwrap();
        assert_eq!(c.zego[0].server_secret.expose_secret(), "from-env");

        let ps = problems(&text);
        assert_eq!(ps[0].key, "zego[0].server_secret_env");
        assert!(ps[0].reason.contains("MY_SECRET is not set"));

        let dir = std::env::temp_dir().join(format!("bouncer-cfg-{}", uuid::Uuid::new_v4()));
        std::fs::write(&dir, "from-file\n").unwrap();
        let text = GOOD.replace("secret_key = \"key\"", &format!("secret_key_file = {:?}", dir.display().to_string()));
        let c = Config::from_toml(&text).unwrap();
        assert_eq!(c.trtc[0].secret_key.expose_secret(), "from-file");
        std::fs::remove_file(&dir).unwrap();
        assert_eq!(keys(&text), ["trtc[0].secret_key_file"]);

        let text = GOOD.replace("secret_key = \"key\"", "secret_key = \"key\"\nsecret_key_env = \"X\"");
        assert_eq!(keys(&text), ["trtc[0].secret_key"]);
    }

    #[test]
    fn secrets_never_show_in_debug_output() {
        let c = Config::from_toml(GOOD).unwrap();
        let dump = format!("{c:?}");
        assert!(!dump.contains("abcdefghijklmnopqrstuvwxyz012345"));
        assert!(!dump.contains("guest:guest"));
    }

    #[test]
    fn env_overrides_replace_and_add_keys_with_the_right_types() {
        let env: HashMap<String, String> = [
            ("BOUNCER_AMQP__PREFETCH", "7"),
            ("BOUNCER_BATCH__LINGER_MS", "40"),
            ("BOUNCER_ZEGO__0__SERVER_SECRET", "12345"),
            ("BOUNCER_TRTC__1__SDK_APP_ID", "1400000002"),
            ("BOUNCER_TRTC__1__SECRET_ID", "999"),
            ("BOUNCER_TRTC__1__SECRET_KEY", "k2"),
            ("BOUNCER_TRTC__1__REGION", "ap-beijing"),
            ("BOUNCER_LOG_FORMAT", "json"),
            ("UNRELATED", "x"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let c = Config::from_toml_with_env(GOOD, &env).unwrap();
        assert_eq!(c.amqp.prefetch, 7);
        assert_eq!(c.batch.linger_ms, 40);
        assert_eq!(c.zego[0].server_secret.expose_secret(), "12345");
        assert_eq!(c.trtc[1].secret_id, "999");
        assert_eq!(c.trtc[1].region, "ap-beijing");
    }

    #[test]
    fn bad_env_override_names_the_variable() {
        let env: HashMap<String, String> = [("BOUNCER_AMQP__PREFETCH".to_string(), "lots".to_string())].into();
        let e = Config::from_toml_with_env("[amqp]\nprefetch = 5\n", &env).unwrap_err();
        assert_eq!(e.0[0].key, "BOUNCER_AMQP__PREFETCH");
        let env: HashMap<String, String> = [("BOUNCER_ZEGO__3__APP_ID".to_string(), "1".to_string())].into();
        let e = Config::from_toml_with_env("", &env).unwrap_err();
        assert!(e.0[0].reason.contains("skips"), "{e}");
    }

    #[test]
    fn trtc_apps_sharing_credentials_must_share_a_rate() {
        let text = format!(
            "{GOOD}\n[[trtc]]\nsdk_app_id = 1400000002\nsecret_id = \"AKID\"\nsecret_key = \"k\"\nregion = \"ap-beijing\"\nrate_per_second = 10\n"
        );
        assert_eq!(keys(&text), ["trtc[1].rate_per_second"]);
    }

    #[test]
    fn obsolete_keys_still_load_with_a_warning_naming_each() {
        let text = GOOD.replace("queue = \"q\"", "queue = \"q\"\ndefer_ms = 500\nmax_unacked_per_app = 3")
            + "\n[batch]\nhold_secs = 4\n";
        let c = Config::from_toml(&text).unwrap();
        let keys: Vec<&str> = c.warnings.iter().map(|w| w.key.as_str()).collect();
        assert_eq!(keys, ["amqp.defer_ms", "amqp.max_unacked_per_app", "batch.hold_secs"]);
        assert!(c.warnings[0].reason.contains("obsolete"));
        assert!(Config::from_toml(GOOD).unwrap().warnings.is_empty());
    }

    #[test]
    fn ownership_and_pacing_have_safe_defaults_and_limits() {
        let c = Config::from_toml(GOOD).unwrap();
        assert_eq!(c.ownership.lease, Duration::from_secs(3));
        assert_eq!(c.ownership.heartbeat, Duration::from_millis(500));
        assert_eq!(c.pacing.jitter, Duration::from_millis(25));
        assert_eq!(keys("[ownership]\nlease_ms = 2000\nheartbeat_ms = 1500\n"), ["ownership.heartbeat_ms"]);
        assert_eq!(keys("[pacing]\njitter_ms = 900\n"), ["pacing.jitter_ms"]);
    }

    #[test]
    fn redact_url_hides_passwords() {
        assert_eq!(redact_url("amqp://guest:guest@h:5672/%2f"), "amqp://guest:***@h:5672/%2f");
        assert_eq!(redact_url("postgres://postgres@h/db"), "postgres://postgres@h/db");
        assert_eq!(
            redact_url("postgres://u@h/db?password=hunter2&sslmode=require"),
            "postgres://u@h/db?password=***&sslmode=require"
        );
        assert!(!redact_url("postgres://u:pw1@h/db?sslpassword=pw2").contains("pw"));
    }

    #[test]
    fn config_errors_name_the_key_and_never_echo_a_secret() {
        let secret = "s3cr3t-value-that-must-not-leak";
        let syntax = format!("[[zego]]\napp_id = 1\nserver_secret = \"{secret}\" junk\n");
        let e = Config::from_toml(&syntax).unwrap_err().to_string();
        assert!(!e.contains(secret) && e.contains("line 3"), "{e}");
        let typed = "[[zego]]\napp_id = 1\nserver_secret = 98765432123\n";
        let e = Config::from_toml(typed).unwrap_err().to_string();
        assert!(!e.contains("98765432123") && e.contains("server_secret") && e.contains("string"), "{e}");
    }
}
