//! The file format (serde). Defaults live here; meaning and limits are checked in `validate`.
//! Public so that tools and tests build a configuration as a typed value and serialise it
//! ([`FileConfig::to_toml`]) instead of assembling TOML text.

use serde::{Serialize, Serializer};

use super::*;

#[derive(Deserialize, Serialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub amqp: FileAmqp,
    #[serde(default)]
    pub postgres: FilePostgres,
    #[serde(default)]
    pub http: FileHttp,
    #[serde(default)]
    pub batch: FileBatch,
    #[serde(default)]
    pub retry: FileRetry,
    #[serde(default)]
    pub ownership: FileOwnership,
    #[serde(default)]
    pub pacing: FilePacing,
    #[serde(default)]
    pub shutdown: FileShutdown,
    #[serde(default)]
    pub web: FileWeb,
    #[serde(default)]
    pub api: FileApi,
    #[serde(default)]
    pub outcomes: FileOutcomes,
    #[serde(default)]
    pub retention: FileRetention,
    #[serde(default)]
    pub zego: Vec<FileZego>,
    #[serde(default)]
    pub trtc: Vec<FileTrtc>,
}

#[derive(Deserialize, Serialize, Clone)]
#[serde(deny_unknown_fields, default)]
pub struct FileAmqp {
    #[serde(serialize_with = "expose")]
    pub url: SecretString,
    pub queue: String,
    pub prefetch: u32,
    pub connection_name: String,
    pub delivery_limit: u32,
    /// Obsolete since enforcement reads its work from PostgreSQL: accepted, with a warning.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub defer_ms: Option<u64>,
    /// Obsolete (as above).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_unacked_per_app: Option<u32>,
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

#[derive(Deserialize, Serialize, Clone)]
#[serde(deny_unknown_fields, default)]
pub struct FilePostgres {
    #[serde(serialize_with = "expose")]
    pub url: SecretString,
    pub max_connections: u32,
    /// `"none"` or `"transaction"`: what sits between `url` and PostgreSQL.
    pub pooler: String,
    #[serde(serialize_with = "expose_opt", skip_serializing_if = "Option::is_none")]
    pub direct_url: Option<SecretString>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub direct_url_env: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub direct_url_file: Option<PathBuf>,
    pub poll_interval_ms: u64,
}

impl Default for FilePostgres {
    fn default() -> Self {
        FilePostgres {
            url: "postgres://postgres@127.0.0.1:5432/bouncer".into(),
            max_connections: 10,
            pooler: "none".into(),
            direct_url: None,
            direct_url_env: None,
            direct_url_file: None,
            poll_interval_ms: 250,
        }
    }
}

impl FilePostgres {
    /// `direct_url` in its three forms; none given is fine (it is optional).
    pub(super) fn direct_url_secret(&self) -> Option<FileSecret> {
        (self.direct_url.is_some() || self.direct_url_env.is_some() || self.direct_url_file.is_some()).then(|| {
            FileSecret {
                value: self.direct_url.clone(),
                env: self.direct_url_env.clone(),
                file: self.direct_url_file.clone(),
            }
        })
    }
}

#[derive(Deserialize, Serialize, Clone)]
#[serde(deny_unknown_fields, default)]
pub struct FileHttp {
    pub listen: String,
}

impl Default for FileHttp {
    fn default() -> Self {
        FileHttp { listen: "127.0.0.1:9187".into() }
    }
}

#[derive(Deserialize, Serialize, Clone)]
#[serde(deny_unknown_fields, default)]
pub struct FileBatch {
    pub linger_ms: u64,
    /// Obsolete since enforcement reads its work from PostgreSQL: accepted, with a warning.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_open_batches: Option<u64>,
    /// Obsolete (as above).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hold_secs: Option<u64>,
}

impl Default for FileBatch {
    fn default() -> Self {
        FileBatch { linger_ms: 25, max_open_batches: None, hold_secs: None }
    }
}

#[derive(Deserialize, Serialize, Clone)]
#[serde(deny_unknown_fields, default)]
pub struct FileOwnership {
    pub lease_ms: u64,
    pub heartbeat_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worker_id: Option<String>,
}

impl Default for FileOwnership {
    fn default() -> Self {
        FileOwnership { lease_ms: 3_000, heartbeat_ms: 500, worker_id: None }
    }
}

#[derive(Deserialize, Serialize, Clone)]
#[serde(deny_unknown_fields, default)]
pub struct FilePacing {
    pub jitter_ms: u64,
    pub buffer_ms: u64,
}

impl Default for FilePacing {
    fn default() -> Self {
        FilePacing { jitter_ms: 25, buffer_ms: 2_000 }
    }
}

#[derive(Deserialize, Serialize, Clone)]
#[serde(deny_unknown_fields, default)]
pub struct FileRetry {
    pub initial_ms: u64,
    pub max_interval_ms: u64,
    pub deadline_secs: u64,
}

impl Default for FileRetry {
    fn default() -> Self {
        FileRetry { initial_ms: 200, max_interval_ms: 10_000, deadline_secs: 600 }
    }
}

#[derive(Deserialize, Serialize, Clone)]
#[serde(deny_unknown_fields, default)]
pub struct FileShutdown {
    pub grace_secs: u64,
}

impl Default for FileShutdown {
    fn default() -> Self {
        FileShutdown { grace_secs: 10 }
    }
}

impl FileConfig {
    /// Every key the file can hold, each with a value of its type (one entry per vendor array):
    /// what a `BOUNCER_*` override is typed by. Options are filled in so that their keys appear.
    pub(super) fn schema() -> toml::Table {
        let mut c = FileConfig::default();
        c.amqp.defer_ms = Some(0);
        c.amqp.max_unacked_per_app = Some(0);
        c.batch.max_open_batches = Some(0);
        c.batch.hold_secs = Some(0);
        c.ownership.worker_id = Some(String::new());
        let mut zego = FileZego::new(0, "", "");
        zego.server_secret_env = Some(String::new());
        zego.server_secret_file = Some(PathBuf::new());
        zego.is_test = Some(false);
        zego.callback_secret = Some("".into());
        zego.callback_secret_env = Some(String::new());
        zego.callback_secret_file = Some(PathBuf::new());
        let mut trtc = FileTrtc::new(0, "", "", "", "");
        trtc.secret_key_env = Some(String::new());
        trtc.secret_key_file = Some(PathBuf::new());
        trtc.callback_key = Some("".into());
        trtc.callback_key_env = Some(String::new());
        trtc.callback_key_file = Some(PathBuf::new());
        c.zego.push(zego);
        c.trtc.push(trtc);
        c.web.csrf_secret_env = Some(String::new());
        c.web.csrf_secret_file = Some(PathBuf::new());
        c.web.auth.proxy_header = Some(String::new());
        c.web.auth.proxy_addresses.push(String::new());
        c.web.auth.proxy_operators.push(String::new());
        c.web.auth.users.push(FileWebUser { name: String::new(), password_hash: "".into(), role: String::new() });
        toml::Table::try_from(&c).unwrap_or_default()
    }
}

/// A secret given inline, by environment variable name, or by file path: exactly one of the three.
pub(super) struct FileSecret {
    pub value: Option<SecretString>,
    pub env: Option<String>,
    pub file: Option<PathBuf>,
}

#[derive(Deserialize, Serialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct FileZego {
    pub app_id: u32,
    #[serde(serialize_with = "expose_opt", skip_serializing_if = "Option::is_none")]
    pub server_secret: Option<SecretString>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_secret_env: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_secret_file: Option<PathBuf>,
    #[serde(default = "zego_endpoint")]
    pub endpoint: String,
    #[serde(default = "zego_rate")]
    pub rate_per_second: u32,
    #[serde(default = "zego_chunk")]
    pub chunk_size: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub is_test: Option<bool>,
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    #[serde(default = "default_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Also enforce bans with ZEGO ban rules (`SetForbidUserRule`); ZEGO support must switch the
    /// feature on for the AppID first.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub forbid_rules: bool,
    /// ZEGO's CallbackSecret: room_login / room_logout callbacks for this app are verified with
    /// it (absent: callbacks for this app are refused).
    #[serde(default, serialize_with = "expose_opt", skip_serializing_if = "Option::is_none")]
    pub callback_secret: Option<SecretString>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback_secret_env: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback_secret_file: Option<PathBuf>,
}

#[derive(Deserialize, Serialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct FileTrtc {
    pub sdk_app_id: u32,
    pub secret_id: String,
    #[serde(serialize_with = "expose_opt", skip_serializing_if = "Option::is_none")]
    pub secret_key: Option<SecretString>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_key_env: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_key_file: Option<PathBuf>,
    pub region: String,
    #[serde(default = "trtc_endpoint")]
    pub endpoint: String,
    #[serde(default = "trtc_rate")]
    pub rate_per_second: u32,
    #[serde(default = "trtc_chunk")]
    pub chunk_size: usize,
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    #[serde(default = "default_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// The signing key of TRTC's room event callbacks (console: callback configuration).
    #[serde(default, serialize_with = "expose_opt", skip_serializing_if = "Option::is_none")]
    pub callback_key: Option<SecretString>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback_key_env: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback_key_file: Option<PathBuf>,
}

pub fn zego_endpoint() -> String {
    "https://rtc-api.zego.im".into()
}
pub fn zego_rate() -> u32 {
    vendors::ZEGO.max_calls_per_second(Action::Kick)
}
pub fn zego_chunk() -> usize {
    vendors::ZEGO.max_users_per_call(Action::Kick)
}
pub fn trtc_endpoint() -> String {
    "https://trtc.tencentcloudapi.com".into()
}
pub fn trtc_rate() -> u32 {
    vendors::TRTC.max_calls_per_second(Action::Kick)
}
pub fn trtc_chunk() -> usize {
    vendors::TRTC.max_users_per_call(Action::Kick)
}
pub fn default_timeout_ms() -> u64 {
    5_000
}

impl FileConfig {
    /// The TOML text of this configuration, secrets included (for a file only its owner reads).
    pub fn to_toml(&self) -> String {
        // Every field is a string, number, bool, table or array of tables: nothing TOML refuses.
        toml::to_string(self).unwrap_or_else(|e| format!("# cannot serialise: {e}"))
    }
}

impl FileZego {
    /// An app with an inline secret and every other key at its default.
    pub fn new(app_id: u32, server_secret: &str, endpoint: &str) -> FileZego {
        FileZego {
            app_id,
            server_secret: Some(server_secret.into()),
            server_secret_env: None,
            server_secret_file: None,
            endpoint: endpoint.into(),
            rate_per_second: zego_rate(),
            chunk_size: zego_chunk(),
            is_test: None,
            timeout_ms: default_timeout_ms(),
            connect_timeout_ms: default_timeout_ms(),
            forbid_rules: false,
            callback_secret: None,
            callback_secret_env: None,
            callback_secret_file: None,
        }
    }
}

impl FileTrtc {
    /// An app with an inline secret key and every other key at its default.
    pub fn new(sdk_app_id: u32, secret_id: &str, secret_key: &str, region: &str, endpoint: &str) -> FileTrtc {
        FileTrtc {
            sdk_app_id,
            secret_id: secret_id.into(),
            secret_key: Some(secret_key.into()),
            secret_key_env: None,
            secret_key_file: None,
            region: region.into(),
            endpoint: endpoint.into(),
            rate_per_second: trtc_rate(),
            chunk_size: trtc_chunk(),
            timeout_ms: default_timeout_ms(),
            connect_timeout_ms: default_timeout_ms(),
            callback_key: None,
            callback_key_env: None,
            callback_key_file: None,
        }
    }
}

pub(super) fn expose<S: Serializer>(secret: &SecretString, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(secret.expose_secret())
}

pub(super) fn expose_opt<S: Serializer>(secret: &Option<SecretString>, s: S) -> Result<S::Ok, S::Error> {
    match secret {
        Some(v) => s.serialize_str(v.expose_secret()),
        None => s.serialize_none(),
    }
}
