//! The file format (serde). Defaults live here; meaning and limits are checked in `validate`.

use super::*;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct FileConfig {
    #[serde(default)]
    pub(super) amqp: FileAmqp,
    #[serde(default)]
    pub(super) postgres: FilePostgres,
    #[serde(default)]
    pub(super) http: FileHttp,
    #[serde(default)]
    pub(super) batch: FileBatch,
    #[serde(default)]
    pub(super) retry: FileRetry,
    #[serde(default)]
    pub(super) ownership: FileOwnership,
    #[serde(default)]
    pub(super) pacing: FilePacing,
    #[serde(default)]
    pub(super) shutdown: FileShutdown,
    #[serde(default)]
    pub(super) zego: Vec<FileZego>,
    #[serde(default)]
    pub(super) trtc: Vec<FileTrtc>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct FileAmqp {
    pub(super) url: SecretString,
    pub(super) queue: String,
    pub(super) prefetch: u32,
    pub(super) connection_name: String,
    pub(super) delivery_limit: u32,
    /// Obsolete since enforcement reads its work from PostgreSQL: accepted, with a warning.
    pub(super) defer_ms: Option<u64>,
    /// Obsolete (as above).
    pub(super) max_unacked_per_app: Option<u32>,
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
pub(super) struct FilePostgres {
    pub(super) url: SecretString,
    pub(super) max_connections: u32,
}

impl Default for FilePostgres {
    fn default() -> Self {
        FilePostgres { url: "postgres://postgres@127.0.0.1:5432/bouncer".into(), max_connections: 10 }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct FileHttp {
    pub(super) listen: String,
}

impl Default for FileHttp {
    fn default() -> Self {
        FileHttp { listen: "127.0.0.1:9187".into() }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct FileBatch {
    pub(super) linger_ms: u64,
    /// Obsolete since enforcement reads its work from PostgreSQL: accepted, with a warning.
    pub(super) max_open_batches: Option<u64>,
    /// Obsolete (as above).
    pub(super) hold_secs: Option<u64>,
}

impl Default for FileBatch {
    fn default() -> Self {
        FileBatch { linger_ms: 25, max_open_batches: None, hold_secs: None }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct FileOwnership {
    pub(super) lease_ms: u64,
    pub(super) heartbeat_ms: u64,
    pub(super) worker_id: Option<String>,
}

impl Default for FileOwnership {
    fn default() -> Self {
        FileOwnership { lease_ms: 3_000, heartbeat_ms: 500, worker_id: None }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct FilePacing {
    pub(super) jitter_ms: u64,
    pub(super) buffer_ms: u64,
}

impl Default for FilePacing {
    fn default() -> Self {
        FilePacing { jitter_ms: 25, buffer_ms: 2_000 }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct FileRetry {
    pub(super) initial_ms: u64,
    pub(super) max_interval_ms: u64,
    pub(super) deadline_secs: u64,
}

impl Default for FileRetry {
    fn default() -> Self {
        FileRetry { initial_ms: 200, max_interval_ms: 10_000, deadline_secs: 600 }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct FileShutdown {
    pub(super) grace_secs: u64,
}

impl Default for FileShutdown {
    fn default() -> Self {
        FileShutdown { grace_secs: 10 }
    }
}

/// A secret given inline, by environment variable name, or by file path: exactly one of the three.
pub(super) struct FileSecret {
    pub(super) value: Option<SecretString>,
    pub(super) env: Option<String>,
    pub(super) file: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileZego {
    pub(super) app_id: u32,
    pub(super) server_secret: Option<SecretString>,
    pub(super) server_secret_env: Option<String>,
    pub(super) server_secret_file: Option<PathBuf>,
    #[serde(default = "zego_endpoint")]
    pub(super) endpoint: String,
    #[serde(default = "zego_rate")]
    pub(super) rate_per_second: u32,
    #[serde(default = "zego_chunk")]
    pub(super) chunk_size: usize,
    pub(super) is_test: Option<bool>,
    #[serde(default = "default_timeout_ms")]
    pub(super) timeout_ms: u64,
    #[serde(default = "default_timeout_ms")]
    pub(super) connect_timeout_ms: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileTrtc {
    pub(super) sdk_app_id: u32,
    pub(super) secret_id: String,
    pub(super) secret_key: Option<SecretString>,
    pub(super) secret_key_env: Option<String>,
    pub(super) secret_key_file: Option<PathBuf>,
    pub(super) region: String,
    #[serde(default = "trtc_endpoint")]
    pub(super) endpoint: String,
    #[serde(default = "trtc_rate")]
    pub(super) rate_per_second: u32,
    #[serde(default = "trtc_chunk")]
    pub(super) chunk_size: usize,
    #[serde(default = "default_timeout_ms")]
    pub(super) timeout_ms: u64,
    #[serde(default = "default_timeout_ms")]
    pub(super) connect_timeout_ms: u64,
}

pub(super) fn zego_endpoint() -> String {
    "https://rtc-api.zego.im".into()
}
pub(super) fn zego_rate() -> u32 {
    zego::MAX_CALLS_PER_SECOND
}
pub(super) fn zego_chunk() -> usize {
    zego::MAX_USERS_PER_CALL
}
pub(super) fn trtc_endpoint() -> String {
    "https://trtc.tencentcloudapi.com".into()
}
pub(super) fn trtc_rate() -> u32 {
    trtc::MAX_CALLS_PER_SECOND
}
pub(super) fn trtc_chunk() -> usize {
    trtc::MAX_USERS_PER_CALL
}
pub(super) fn default_timeout_ms() -> u64 {
    5_000
}
