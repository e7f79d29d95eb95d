//! The vendors' kick APIs behind one boundary: a [`KickRequest`] goes in, a [`CallReport`] with a
//! typed [`Outcome`] comes out. Everything vendor-specific (signing, wire format, error codes)
//! stays in [`zego`] and [`trtc`]. (Named `vendor_api`, not `vendor`: a `vendor/` folder is where
//! vendored sources live, as the patched `vendor/sqlx-core` does at the workspace root.)

mod quota_key;
pub mod trtc;
pub mod zego;
pub mod zego_rules;

pub use quota_key::QuotaKey;

use std::time::Duration;

use crate::config::Timeouts;
use crate::states::AttemptOutcome;
use crate::vendors::Action;
use crate::verdict::{RoomId, Vendor};

/// One call's worth of users in one room.
#[derive(Clone, Debug, PartialEq)]
pub struct KickRequest {
    /// What the call does to its users (the vendor client picks the API for it and the room).
    pub action: Action,
    pub app_id: u32,
    pub room: RoomId,
    pub user_ids: Vec<String>,
    /// Full reason; each client cuts it to what its vendor accepts.
    pub reason: Option<String>,
}

/// Who the vendor blamed for a permanent failure; decides what the caller does next.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Blame {
    /// The request's parameters, possibly one user id: split the chunk to isolate it.
    Parameters,
    /// The room itself (its id is invalid): every user in the call fails, splitting cannot help.
    Room,
    /// Our credentials or account (bad secret, no permission, service not enabled): nothing for
    /// this app will work until a human fixes it. An alert, not a per-user failure.
    Configuration,
}

/// What one vendor call came to, the same for every vendor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The vendor kicked the users.
    Done {
        request_id: String,
    },
    /// The room or user no longer exists: nothing left to kick, not a failure.
    Gone {
        code: String,
    },
    /// Worth trying again later. `slow_down` marks the vendor's rate-limit answers.
    Retry {
        reason: String,
        slow_down: bool,
    },
    /// The signature expired on the way: sign again with a fresh timestamp and nonce, once.
    Resign,
    Permanent {
        code: String,
        message: String,
        blame: Blame,
    },
}

impl Outcome {
    /// What `kick_attempts.outcome` records. A re-sign is a kind of retry.
    pub fn audit_outcome(&self) -> AttemptOutcome {
        match self {
            Outcome::Done { .. } => AttemptOutcome::Ok,
            Outcome::Gone { .. } => AttemptOutcome::Gone,
            Outcome::Retry { .. } | Outcome::Resign => AttemptOutcome::Retry,
            Outcome::Permanent { .. } => AttemptOutcome::Permanent,
        }
    }
}

/// How a vendor error code is to be handled; the rows of each vendor's code table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    Done,
    Gone,
    Retry,
    SlowDown,
    Resign,
    Permanent(Blame),
}

impl Class {
    fn into_outcome(self, code: String, message: String, request_id: String) -> Outcome {
        match self {
            Class::Done => Outcome::Done { request_id },
            Class::Gone => Outcome::Gone { code },
            Class::Retry | Class::SlowDown => {
                Outcome::Retry { reason: format!("vendor code {code}: {message}"), slow_down: self == Class::SlowDown }
            }
            Class::Resign => Outcome::Resign,
            Class::Permanent(blame) => Outcome::Permanent { code, message, blame },
        }
    }
}

/// Everything the audit trail keeps about one vendor call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallReport {
    pub outcome: Outcome,
    /// The vendor action actually called (`KickoutUser`, `RemoveUser`, `RemoveUserByStrRoomId`).
    pub action: &'static str,
    pub http_status: Option<u16>,
    pub vendor_code: Option<String>,
    pub vendor_message: Option<String>,
    pub vendor_request_id: Option<String>,
    pub latency: Duration,
}

impl CallReport {
    fn transport(action: &'static str, err: &reqwest::Error, latency: Duration) -> CallReport {
        // `without_url`: a ZEGO URL carries the signature and nonce; keep errors free of both.
        let reason = if err.is_timeout() {
            "timeout".to_owned()
        } else if err.is_connect() {
            format!("connect: {}", error_chain(err))
        } else {
            format!("transport: {}", error_chain(err))
        };
        CallReport::unanswered(action, reason, latency)
    }

    /// A call sent and then given up on before its answer, because this process stopped owning
    /// the quota: whether the vendor acted on it is unknown, so it is retried like a timeout.
    pub fn abandoned(action: &'static str, latency: Duration) -> CallReport {
        let reason = "abandoned in flight: this replica stopped owning the quota".to_owned();
        CallReport::unanswered(action, reason, latency)
    }

    /// No answer came (nothing from the vendor to record but why): retried later.
    fn unanswered(action: &'static str, reason: String, latency: Duration) -> CallReport {
        CallReport {
            outcome: Outcome::Retry { reason, slow_down: false },
            action,
            http_status: None,
            vendor_code: None,
            vendor_message: None,
            vendor_request_id: None,
            latency,
        }
    }

    /// Whether the vendor answered at all (any HTTP status): then the call reached it before now.
    pub fn answered(&self) -> bool {
        self.http_status.is_some()
    }

    fn http_error(action: &'static str, status: u16, latency: Duration) -> CallReport {
        CallReport {
            outcome: Outcome::Retry { reason: format!("HTTP {status}"), slow_down: status == 429 },
            action,
            http_status: Some(status),
            vendor_code: None,
            vendor_message: None,
            vendor_request_id: None,
            latency,
        }
    }
}

fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut s = err.to_string();
    let mut src = err.source();
    while let Some(e) = src {
        s.push_str(": ");
        s.push_str(&e.to_string());
        src = e.source();
    }
    s
}

/// A request that must not be sent as it stands; refused before anything goes on the wire.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RequestError {
    #[error("{vendor} accepts at most {max} users per call, got {got}")]
    TooManyUsers { vendor: Vendor, max: usize, got: usize },
    #[error("a call needs at least one user")]
    NoUsers,
    #[error("{vendor} app {app_id} is not configured")]
    UnknownApp { vendor: Vendor, app_id: u32 },
    #[error("ZEGO rooms are strings; numeric room {0} must be sent as text")]
    NumericZegoRoom(u32),
    #[error("{vendor} has no API to {action} in this room")]
    Unsupported { vendor: Vendor, action: Action },
}

fn check_users(vendor: Vendor, users: &[String], max: usize) -> Result<(), RequestError> {
    match users.len() {
        0 => Err(RequestError::NoUsers),
        n if n > max => Err(RequestError::TooManyUsers { vendor, max, got: n }),
        _ => Ok(()),
    }
}

/// One HTTP client per distinct pair of timeouts, shared by every app that uses it: each client
/// carries its own TLS root store and connection pool, and hundreds of apps must not mean
/// hundreds of copies (measured: 200 clients cost ~50 MiB of RSS).
fn http_client(t: Timeouts) -> reqwest::Client {
    static CLIENTS: std::sync::OnceLock<
        std::sync::Mutex<std::collections::HashMap<(Duration, Duration), reqwest::Client>>,
    > = std::sync::OnceLock::new();
    let mut clients = CLIENTS.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
    clients
        .entry((t.connect, t.total))
        .or_insert_with(|| {
            reqwest::Client::builder()
                .connect_timeout(t.connect)
                .timeout(t.total)
                .user_agent(concat!("bouncer/", env!("CARGO_PKG_VERSION")))
                .build()
                // Building fails only when the TLS backend cannot initialise: nothing works without it.
                .unwrap_or_else(|e| panic!("cannot build the HTTP client: {e}"))
        })
        .clone()
}

/// Host header value for an endpoint: host plus any explicit port, exactly what is signed.
fn host_header(endpoint: &url::Url) -> String {
    let host = endpoint.host_str().unwrap_or_default();
    match endpoint.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_owned(),
    }
}

/// `s` cut to at most `max` bytes without splitting a character.
pub fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Current unix time in seconds.
fn unix_now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// A configured vendor app, ready to call.
#[derive(Clone, Debug)]
pub enum Client {
    Zego(zego::ZegoClient),
    Trtc(trtc::TrtcClient),
}

impl Client {
    pub fn vendor(&self) -> Vendor {
        match self {
            Client::Zego(_) => Vendor::Zego,
            Client::Trtc(_) => Vendor::Trtc,
        }
    }

    /// The ZEGO AppId or TRTC SdkAppId.
    pub fn app_id(&self) -> u32 {
        match self {
            Client::Zego(c) => c.app_id(),
            Client::Trtc(c) => c.sdk_app_id(),
        }
    }

    /// The most users one call may carry (config, capped by the vendor limit).
    pub fn chunk_size(&self) -> usize {
        match self {
            Client::Zego(c) => c.chunk_size(),
            Client::Trtc(c) => c.chunk_size(),
        }
    }

    /// The vendor API `action` in `room` calls (the registry's name), if the vendor has one.
    pub fn api_name(&self, action: Action, room: &RoomId) -> Option<&'static str> {
        self.vendor().facts().api(action, room.is_numeric()).map(|a| a.name)
    }

    /// One attempt: signs afresh (new timestamp and nonce) and sends.
    pub async fn kick_once(&self, req: &KickRequest) -> Result<CallReport, RequestError> {
        match self {
            Client::Zego(c) => c.kick_once(req).await,
            Client::Trtc(c) => c.kick_once(req).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncate_utf8_never_splits_a_character() {
        let s = "违规内容".repeat(30); // 3 bytes per char, 360 bytes
        let cut = truncate_utf8(&s, 256);
        assert_eq!(cut.len(), 255);
        assert!(s.starts_with(cut));
        assert_eq!(truncate_utf8("abc", 256), "abc");
        assert_eq!(truncate_utf8("a€", 3), "a");
        assert_eq!(truncate_utf8("a€", 4), "a€");
    }

    #[test]
    fn host_header_keeps_explicit_ports_only() {
        let u = url::Url::parse("http://127.0.0.1:8080/").unwrap();
        assert_eq!(host_header(&u), "127.0.0.1:8080");
        let u = url::Url::parse("https://trtc.tencentcloudapi.com").unwrap();
        assert_eq!(host_header(&u), "trtc.tencentcloudapi.com");
        let u = url::Url::parse("https://trtc.tencentcloudapi.com:443").unwrap();
        assert_eq!(host_header(&u), "trtc.tencentcloudapi.com");
    }
}
