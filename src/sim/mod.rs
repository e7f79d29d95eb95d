//! `bouncer sim`: a stand-in for ZEGO's and Tencent's kick APIs on one port, for tests, the demo,
//! benchmarks and sandboxes. It verifies signatures with its own code ([`verify`]), enforces the
//! documented limits (users per call, reason length, timestamp skew, and the per-quota call rate
//! as a sliding 1 s window), injects faults on request ([`faults`]), records every call and counts.
//!
//! Routes: `GET /?Action=KickoutUser&...` (ZEGO), `POST /` with `X-TC-Action` (TRTC), and the
//! control API under `/_sim/`: `GET stats` (JSON), `GET metrics` (Prometheus text),
//! `GET requests` (every recorded call), `PUT faults` / `DELETE faults`, `POST reset`.

pub mod faults;
pub mod verify;
pub mod window;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Json, Router};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::Notify;

use crate::config::{TrtcApp, ZegoApp};
use crate::vendor::{QuotaKey, trtc, zego};
use faults::{Faults, Scope, chance};
use window::SlidingWindow;

/// The most calls recorded; older ones are dropped beyond this (counters keep counting).
const MAX_RECORDS: usize = 500_000;
/// A hanging call gives up after this long even if the faults never change.
const MAX_HANG: Duration = Duration::from_secs(600);

/// What the simulator serves.
#[derive(Clone, Debug)]
pub struct SimSettings {
    pub zego: Vec<ZegoApp>,
    pub trtc: Vec<TrtcApp>,
    /// Calls per second per ZEGO AppID (the documented 50 unless raised for benchmarks).
    pub zego_rate: u32,
    /// Calls per second per TRTC (SecretId, action) (the documented 20 unless raised).
    pub trtc_rate: u32,
}

/// One call as the simulator saw it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Record {
    pub seq: u64,
    /// Milliseconds since the simulator started.
    pub at_ms: u64,
    /// Wall-clock arrival, milliseconds since the UNIX epoch (for latency across processes).
    pub at_unix_ms: u64,
    pub vendor: String,
    pub app_id: u32,
    pub action: String,
    pub quota: String,
    pub room_id: String,
    pub room_numeric: bool,
    pub user_ids: Vec<String>,
    /// `CustomReason` as decoded (ZEGO only).
    pub reason: Option<String>,
    pub timestamp: Option<i64>,
    /// ZEGO `SignatureNonce`, or the TC3 signature (unique per signing).
    pub nonce: Option<String>,
    pub http_status: u16,
    /// The vendor code answered (`"0"` / `""` for ZEGO / TRTC success).
    pub code: String,
    /// Why the call was not a success, in the simulator's words (`rate_limited`, `signature`...).
    pub rejection: Option<String>,
}

/// The quota shown for calls naming an AppId, SecretId or action the simulator does not know.
const UNKNOWN_ZEGO_QUOTA: &str = "zego:unknown";
const UNKNOWN_TRTC_QUOTA: &str = "trtc:unknown";

/// Counters for one quota.
#[derive(Debug, Default)]
struct QuotaState {
    window: SlidingWindow,
    limit: u32,
}

#[derive(Debug, Default)]
struct Counters {
    /// Successful calls by how many users they carried.
    users_per_call: BTreeMap<usize, u64>,
    kicked_users: u64,
    rejections: BTreeMap<String, u64>,
    seq: u64,
}

/// The simulator's shared state.
pub struct Sim {
    /// ZEGO AppId → ServerSecret.
    zego_secrets: HashMap<u32, SecretString>,
    /// TRTC SecretId → SecretKey.
    trtc_keys: HashMap<String, SecretString>,
    /// TRTC SdkAppIds the account may manage.
    trtc_apps: HashSet<u32>,
    zego_rate: u32,
    trtc_rate: u32,
    started: Instant,
    /// Sliding windows and counters per quota (`zego:<AppId>`, `trtc:<SecretId>:<Action>`).
    quotas: Mutex<BTreeMap<String, QuotaState>>,
    /// Fault rules by scope.
    faults: Mutex<HashMap<Scope, Faults>>,
    /// Woken whenever the faults change, so hanging calls end.
    faults_changed: Notify,
    /// Every call, oldest first, capped at [`MAX_RECORDS`].
    records: Mutex<Vec<Record>>,
    counters: Mutex<Counters>,
}

/// A mutex poisoned by a panicking handler still holds consistent counters: keep going.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What to answer, before rendering.
enum Answer {
    Http(StatusCode),
    Zego { code: i64, message: String },
    Trtc { error: Option<(&'static str, String)> },
}

/// The identity of a call, filled in as the request is read.
#[derive(Default)]
struct Call {
    vendor: &'static str,
    app_id: u32,
    action: String,
    quota: String,
    room_id: String,
    room_numeric: bool,
    user_ids: Vec<String>,
    reason: Option<String>,
    timestamp: Option<i64>,
    nonce: Option<String>,
    /// When the call arrived (counted against its quota); recorded times are this, not when the
    /// answer was ready.
    arrived: Option<Instant>,
}

type Refusal = (Answer, &'static str);

fn zego_no(code: i64, message: impl Into<String>, why: &'static str) -> Refusal {
    (Answer::Zego { code, message: message.into() }, why)
}

fn trtc_no(code: &'static str, message: impl Into<String>, why: &'static str) -> Refusal {
    (Answer::Trtc { error: Some((code, message.into())) }, why)
}

impl Sim {
    pub fn new(s: SimSettings) -> Sim {
        Sim {
            zego_secrets: s.zego.iter().map(|z| (z.app_id, z.server_secret.clone())).collect(),
            trtc_keys: s.trtc.iter().map(|t| (t.secret_id.clone(), t.secret_key.clone())).collect(),
            trtc_apps: s.trtc.iter().map(|t| t.sdk_app_id).collect(),
            zego_rate: s.zego_rate,
            trtc_rate: s.trtc_rate,
            started: Instant::now(),
            quotas: Mutex::default(),
            faults: Mutex::default(),
            faults_changed: Notify::new(),
            records: Mutex::default(),
            counters: Mutex::default(),
        }
    }

    fn faults_for(&self, vendor: &str, app_id: u32) -> Faults {
        let rules = lock(&self.faults);
        Faults::lookup_order(vendor, app_id).iter().find_map(|s| rules.get(s).cloned()).unwrap_or_default()
    }

    /// Consumes one `expire_next` from the rule that applies, if any is left.
    fn take_expired(&self, vendor: &str, app_id: u32) -> bool {
        let mut rules = lock(&self.faults);
        for scope in Faults::lookup_order(vendor, app_id) {
            if let Some(rule) = rules.get_mut(&scope) {
                if rule.expire_next > 0 {
                    rule.expire_next -= 1;
                    return true;
                }
                return false;
            }
        }
        false
    }

    pub fn set_faults(&self, f: Faults) {
        lock(&self.faults).insert(f.scope(), f);
        self.faults_changed.notify_waiters();
    }

    pub fn clear_faults(&self) {
        lock(&self.faults).clear();
        self.faults_changed.notify_waiters();
    }

    /// Counts an arrival at `at` against a quota (every call, admitted or not).
    fn arrive(&self, quota: &str, limit: u32, at: Instant) {
        let mut q = lock(&self.quotas);
        let state = q.entry(quota.to_owned()).or_default();
        state.limit = limit;
        state.window.arrive(at);
    }

    fn admit(&self, quota: &str, limit: u32, at: Instant) -> bool {
        let mut q = lock(&self.quotas);
        q.entry(quota.to_owned()).or_default().window.admit(at, limit)
    }

    /// When a call received at `received` arrives at the vendor: up to `arrival_jitter_ms` later,
    /// as a network would delay it. Waits until then, and returns that instant (not when this task
    /// happens to wake), so the simulator's own scheduling adds no jitter of its own.
    async fn arrival(&self, f: &Faults, received: Instant) -> Instant {
        if f.arrival_jitter_ms == 0 {
            return received;
        }
        let at = received + Duration::from_micros(rand::random_range(0..=f.arrival_jitter_ms * 1000));
        tokio::time::sleep_until(at.into()).await;
        at
    }

    /// Transport-level faults, applied before the vendor looks at the call.
    async fn transport_faults(&self, f: &Faults) -> Option<Refusal> {
        if f.latency_ms > 0 {
            tokio::time::sleep(Duration::from_millis(f.latency_ms)).await;
        }
        if f.hang {
            let changed = self.faults_changed.notified();
            let _ = tokio::time::timeout(MAX_HANG, changed).await;
            return Some((Answer::Http(StatusCode::GATEWAY_TIMEOUT), "hang"));
        }
        if chance(f.http_502_rate) {
            return Some((Answer::Http(StatusCode::BAD_GATEWAY), "http_502"));
        }
        None
    }

    fn record(&self, call: Call, answer: &Answer, rejection: Option<&'static str>) {
        let arrived = call.arrived.unwrap_or_else(Instant::now);
        let (http_status, code) = match answer {
            Answer::Http(s) => (s.as_u16(), String::new()),
            Answer::Zego { code, .. } => (200, code.to_string()),
            Answer::Trtc { error } => (200, error.as_ref().map(|(c, _)| c.to_string()).unwrap_or_default()),
        };
        let seq = {
            let mut c = lock(&self.counters);
            c.seq += 1;
            match rejection {
                Some(why) => *c.rejections.entry(why.to_owned()).or_default() += 1,
                None => {
                    *c.users_per_call.entry(call.user_ids.len()).or_default() += 1;
                    c.kicked_users += call.user_ids.len() as u64;
                }
            }
            c.seq
        };
        let mut records = lock(&self.records);
        if records.len() >= MAX_RECORDS {
            records.drain(..MAX_RECORDS / 10);
        }
        records.push(Record {
            seq,
            at_ms: arrived.duration_since(self.started).as_millis() as u64,
            at_unix_ms: (chrono::Utc::now().timestamp_millis().max(0) as u64)
                .saturating_sub(arrived.elapsed().as_millis() as u64),
            vendor: call.vendor.to_owned(),
            app_id: call.app_id,
            action: call.action,
            quota: call.quota,
            room_id: call.room_id,
            room_numeric: call.room_numeric,
            user_ids: call.user_ids,
            reason: call.reason,
            timestamp: call.timestamp,
            nonce: call.nonce,
            http_status,
            code,
            rejection: rejection.map(str::to_owned),
        });
    }

    /// A ZEGO `KickoutUser` call, checked in the order the real service plausibly does.
    async fn zego(&self, query: &str, call: &mut Call) -> Result<(), Refusal> {
        let received = Instant::now();
        call.vendor = "zego";
        call.action = zego::ACTION.to_owned();
        let params: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes()).into_owned().collect();
        let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        call.user_ids = params.iter().filter(|(n, _)| n == "UserId[]").map(|(_, v)| v.clone()).collect();
        call.room_id = get("RoomId").unwrap_or_default().to_owned();
        call.reason = get("CustomReason").map(str::to_owned);
        call.nonce = get("SignatureNonce").map(str::to_owned);
        call.timestamp = get("Timestamp").and_then(|t| t.parse().ok());
        if get("Action") != Some(zego::ACTION) {
            return Err(zego_no(100_000_006, "unsupported Action", "bad_params"));
        }
        let app = get("AppId").unwrap_or_default();
        call.app_id = app.parse().map_err(|_| zego_no(100_000_002, "AppId missing or not a uint32", "bad_params"))?;
        // Only a configured AppId has a quota: anybody can send any AppId, and counters or metric
        // labels keyed by unauthenticated values would grow without bound.
        let known = self.zego_secrets.contains_key(&call.app_id);
        call.quota =
            if known { QuotaKey::Zego { app_id: call.app_id }.to_string() } else { UNKNOWN_ZEGO_QUOTA.to_owned() };
        let f = self.faults_for("zego", call.app_id);
        let at = self.arrival(&f, received).await;
        call.arrived = Some(at);
        if known {
            self.arrive(&call.quota, self.zego_rate, at);
        }
        if let Some(r) = self.transport_faults(&f).await {
            return Err(r);
        }

        let secret = self
            .zego_secrets
            .get(&call.app_id)
            .ok_or_else(|| zego_no(100_000_005, "signature error (AppId unknown)", "signature"))?;
        if get("SignatureVersion") != Some("2.0") {
            return Err(zego_no(100_000_009, "SignatureVersion must be 2.0", "bad_params"));
        }
        let (Some(nonce), Some(ts_raw), Some(sig)) = (get("SignatureNonce"), get("Timestamp"), get("Signature")) else {
            return Err(zego_no(100_000_005, "signature parameters missing", "signature"));
        };
        let ts = call.timestamp.ok_or_else(|| zego_no(100_000_003, "Timestamp is not unix seconds", "bad_params"))?;
        if !verify::zego_signature_ok(app, nonce, secret.expose_secret(), ts_raw, sig) {
            return Err(zego_no(100_000_005, "signature error", "signature"));
        }
        if (chrono::Utc::now().timestamp() - ts).abs() > zego::MAX_SKEW_SECS || self.take_expired("zego", call.app_id) {
            return Err(zego_no(100_000_004, "signature expired", "expired"));
        }
        if !self.admit(&call.quota, self.zego_rate, at) {
            return Err(zego_no(206, "app QPS limit exceeded", "rate_limited"));
        }
        if call.room_id.is_empty() {
            return Err(zego_no(2, "RoomId missing", "bad_params"));
        }
        if call.user_ids.is_empty() || call.user_ids.iter().any(String::is_empty) {
            return Err(zego_no(2, "UserId[] missing or empty", "bad_params"));
        }
        if call.user_ids.len() > zego::MAX_USERS_PER_CALL {
            return Err(zego_no(50011, "user list too long", "too_many_users"));
        }
        if call.reason.as_ref().is_some_and(|r| r.len() > zego::MAX_REASON_BYTES) {
            return Err(zego_no(3, "CustomReason longer than 256 bytes", "reason_too_long"));
        }
        if chance(f.throttle_rate) {
            return Err(zego_no(206, "app QPS limit exceeded (injected)", "throttled"));
        }
        if chance(f.internal_error_rate) {
            return Err(zego_no(1, "request failed, please retry (injected)", "internal_error"));
        }
        if f.gone_rooms.contains(&call.room_id) {
            return Err(zego_no(104, "room does not exist", "room_gone"));
        }
        if call.user_ids.iter().any(|u| f.bad_users.contains(u)) {
            return Err(zego_no(2, "invalid UserId", "bad_user"));
        }
        Ok(())
    }

    /// A TRTC `RemoveUser` / `RemoveUserByStrRoomId` call: POST with a JSON body (what Bouncer
    /// sends), or GET with the parameters in the query string (what the official SDKs send when
    /// asked to), TC3-signed either way.
    async fn trtc(
        &self,
        method: &Method,
        headers: &HeaderMap,
        query: &str,
        body: &[u8],
        call: &mut Call,
    ) -> Result<(), Refusal> {
        let received = Instant::now();
        call.vendor = "trtc";
        let header = |k: &str| headers.get(k).and_then(|v| v.to_str().ok()).unwrap_or_default();
        call.action = header("x-tc-action").to_owned();
        let parsed: Value = if method == Method::GET {
            get_parameters(&call.action, query)
        } else {
            serde_json::from_slice(body).unwrap_or(Value::Null)
        };
        call.app_id = parsed["SdkAppId"].as_u64().and_then(|n| u32::try_from(n).ok()).unwrap_or(0);
        call.room_numeric = parsed["RoomId"].is_number();
        call.room_id = match &parsed["RoomId"] {
            Value::String(s) => s.clone(),
            Value::Null => String::new(),
            other => other.to_string(),
        };
        call.user_ids = parsed["UserIds"]
            .as_array()
            .map(|a| a.iter().map(|u| u.as_str().unwrap_or_default().to_owned()).collect())
            .unwrap_or_default();
        call.timestamp = header("x-tc-timestamp").parse().ok();

        let auth = verify::parse_authorization(header("authorization"))
            .map_err(|e| trtc_no("AuthFailure.InvalidAuthorization", format!("{e:?}"), "signature"))?;
        call.nonce = Some(auth.signature.clone());
        // As for ZEGO: a quota only for a configured SecretId and a known action.
        let known = self.trtc_keys.contains_key(&auth.secret_id)
            && [trtc::ACTION_NUMERIC, trtc::ACTION_STRING].contains(&call.action.as_str());
        call.quota = if known {
            QuotaKey::Trtc { secret_id: auth.secret_id.clone(), action: call.action.clone() }.to_string()
        } else {
            UNKNOWN_TRTC_QUOTA.to_owned()
        };
        let f = self.faults_for("trtc", call.app_id);
        let at = self.arrival(&f, received).await;
        call.arrived = Some(at);
        if known {
            self.arrive(&call.quota, self.trtc_rate, at);
        }
        if let Some(r) = self.transport_faults(&f).await {
            return Err(r);
        }

        if header("x-tc-version") != trtc::VERSION {
            return Err(trtc_no("NoSuchVersion", "X-TC-Version must be 2019-07-22", "bad_params"));
        }
        if ![trtc::ACTION_NUMERIC, trtc::ACTION_STRING].contains(&call.action.as_str()) {
            return Err(trtc_no("InvalidAction", "unsupported action", "bad_params"));
        }
        let key = self
            .trtc_keys
            .get(&auth.secret_id)
            .ok_or_else(|| trtc_no("AuthFailure.SecretIdNotFound", "SecretId not found", "signature"))?;
        let ts_raw = header("x-tc-timestamp");
        let ts = call
            .timestamp
            .ok_or_else(|| trtc_no("AuthFailure.InvalidAuthorization", "X-TC-Timestamp missing", "signature"))?;
        if auth.service != trtc::SERVICE || auth.date != trtc::utc_date(ts) {
            return Err(trtc_no("AuthFailure.SignatureFailure", "credential scope mismatch", "signature"));
        }
        // The canonical query string is empty for POST and the query exactly as sent for GET.
        let (signed_method, signed_query) = if method == Method::GET { ("GET", query) } else { ("POST", "") };
        verify::tc3_check(&auth, key.expose_secret(), signed_method, signed_query, headers, body, ts_raw)
            .map_err(|e| trtc_no("AuthFailure.SignatureFailure", format!("signature mismatch ({e:?})"), "signature"))?;
        if (chrono::Utc::now().timestamp() - ts).abs() > trtc::MAX_SKEW_SECS || self.take_expired("trtc", call.app_id) {
            return Err(trtc_no("AuthFailure.SignatureExpire", "signature expired", "expired"));
        }
        if !trtc::REGIONS.contains(&header("x-tc-region")) {
            return Err(trtc_no("UnsupportedRegion", "region not supported", "bad_params"));
        }
        if !self.admit(&call.quota, self.trtc_rate, at) {
            return Err(trtc_no("RequestLimitExceeded", "request limit exceeded", "rate_limited"));
        }
        if parsed.is_null() {
            return Err(trtc_no("InvalidParameter", "body is not JSON", "bad_params"));
        }
        if !self.trtc_apps.contains(&call.app_id) {
            return Err(trtc_no("UnauthorizedOperation.SdkAppId", "no permission for SdkAppId", "unknown_app"));
        }
        let room_ok = match call.action.as_str() {
            trtc::ACTION_NUMERIC => {
                parsed["RoomId"].as_u64().is_some_and(|n| (1..=crate::verdict::MAX_TRTC_NUMERIC_ROOM).contains(&n))
            }
            _ => parsed["RoomId"].as_str().is_some_and(|s| !s.is_empty()),
        };
        if !room_ok {
            return Err(trtc_no("InvalidParameter.RoomId", "RoomId is incorrect", "bad_params"));
        }
        let users_ok = parsed["UserIds"]
            .as_array()
            .is_some_and(|a| !a.is_empty() && a.iter().all(|u| u.as_str().is_some_and(|s| !s.is_empty())));
        if !users_ok {
            return Err(trtc_no("InvalidParameter.UserIds", "UserIds is incorrect", "bad_params"));
        }
        if call.user_ids.len() > trtc::MAX_USERS_PER_CALL {
            return Err(trtc_no("InvalidParameter.UserIds", "at most 10 UserIds", "too_many_users"));
        }
        if chance(f.throttle_rate) {
            return Err(trtc_no("RequestLimitExceeded", "request limit exceeded (injected)", "throttled"));
        }
        if chance(f.internal_error_rate) {
            return Err(trtc_no("InternalError", "internal error (injected)", "internal_error"));
        }
        if f.gone_rooms.contains(&call.room_id) {
            return Err(trtc_no("FailedOperation.RoomNotExist", "The room does not exist.", "room_gone"));
        }
        if call.user_ids.iter().any(|u| f.bad_users.contains(u)) {
            return Err(trtc_no("InvalidParameter.UserIds", "UserIds is incorrect.", "bad_user"));
        }
        Ok(())
    }

    /// Counters as JSON: per quota, users per call, rejections.
    pub fn stats(&self) -> Value {
        let quotas: serde_json::Map<String, Value> = lock(&self.quotas)
            .iter()
            .map(|(k, q)| {
                (
                    k.clone(),
                    json!({
                        "limit": q.limit,
                        "calls": q.window.calls,
                        "rate_limited": q.window.rate_limited,
                        "max_calls_in_1s": q.window.max_arrivals_in_window,
                        "max_admitted_in_1s": q.window.max_admitted_in_window,
                    }),
                )
            })
            .collect();
        let c = lock(&self.counters);
        json!({
            "calls": c.seq,
            "kicked_users": c.kicked_users,
            "users_per_call": c.users_per_call.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
            "rejections": c.rejections,
            "quotas": quotas,
        })
    }

    /// The same counters in Prometheus text format.
    pub fn prometheus(&self) -> String {
        let mut out = String::new();
        let mut family = |name: &str, kind: &str, help: &str, rows: Vec<(String, String)>| {
            out += &format!("# HELP {name} {help}\n# TYPE {name} {kind}\n");
            for (labels, v) in rows {
                out += &format!("{name}{labels} {v}\n");
            }
        };
        let quotas = lock(&self.quotas);
        let per_quota = |f: &dyn Fn(&QuotaState) -> u64| {
            quotas.iter().map(|(k, q)| (format!("{{quota=\"{k}\"}}"), f(q).to_string())).collect()
        };
        family("bouncer_sim_calls_total", "counter", "Calls received per quota.", per_quota(&|q| q.window.calls));
        family(
            "bouncer_sim_rate_limited_total",
            "counter",
            "Calls refused by the sliding-window rate limit.",
            per_quota(&|q| q.window.rate_limited),
        );
        family(
            "bouncer_sim_max_calls_in_1s",
            "gauge",
            "Most calls received in any sliding 1 s window.",
            per_quota(&|q| q.window.max_arrivals_in_window as u64),
        );
        family(
            "bouncer_sim_rate_limit",
            "gauge",
            "Calls per second allowed per quota.",
            per_quota(&|q| q.limit as u64),
        );
        drop(quotas);
        let c = lock(&self.counters);
        family(
            "bouncer_sim_kicked_users_total",
            "counter",
            "Users kicked by successful calls.",
            vec![(String::new(), c.kicked_users.to_string())],
        );
        family(
            "bouncer_sim_successful_calls_total",
            "counter",
            "Successful calls by users carried.",
            c.users_per_call.iter().map(|(k, v)| (format!("{{users=\"{k}\"}}"), v.to_string())).collect(),
        );
        family(
            "bouncer_sim_rejections_total",
            "counter",
            "Calls not answered with success, by reason.",
            c.rejections.iter().map(|(k, v)| (format!("{{reason=\"{k}\"}}"), v.to_string())).collect(),
        );
        out
    }

    pub fn records(&self, since: u64) -> Vec<Record> {
        lock(&self.records).iter().filter(|r| r.seq > since).cloned().collect()
    }

    pub fn reset(&self) {
        lock(&self.records).clear();
        lock(&self.quotas).clear();
        *lock(&self.counters) = Counters::default();
    }

    /// Wakes hanging calls (used at shutdown).
    pub fn release_hangs(&self) {
        self.faults_changed.notify_waiters();
    }
}

fn render(answer: Answer) -> Response {
    let request_id = uuid::Uuid::new_v4().to_string();
    match answer {
        Answer::Http(status) => (status, "").into_response(),
        Answer::Zego { code, message } => {
            Json(json!({"Code": code, "Message": message, "RequestId": request_id})).into_response()
        }
        Answer::Trtc { error: None } => Json(json!({"Response": {"RequestId": request_id}})).into_response(),
        Answer::Trtc { error: Some((code, message)) } => Json(json!({
            "Response": {"Error": {"Code": code, "Message": message}, "RequestId": request_id}
        }))
        .into_response(),
    }
}

async fn vendor_api(
    State(sim): State<Arc<Sim>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let query = uri.query().unwrap_or_default();
    let mut call = Call::default();
    let (result, success) = if headers.contains_key("x-tc-action") && (method == Method::POST || method == Method::GET)
    {
        (sim.trtc(&method, &headers, query, &body, &mut call).await, Answer::Trtc { error: None })
    } else if method == Method::GET && query.contains("Action=") {
        (sim.zego(query, &mut call).await, Answer::Zego { code: 0, message: "success".into() })
    } else {
        return (StatusCode::NOT_FOUND, "not a ZEGO or TRTC API call").into_response();
    };
    let (answer, rejection) = match result {
        Ok(()) => (success, None),
        Err((answer, why)) => (answer, Some(why)),
    };
    sim.record(call, &answer, rejection);
    render(answer)
}

/// A TRTC GET's query parameters as the JSON body a POST would carry: `SdkAppId`, `RoomId` (an
/// integer for `RemoveUser`, a string otherwise) and `UserIds.0`, `UserIds.1`, … in index order.
fn get_parameters(action: &str, query: &str) -> Value {
    let mut app = Value::Null;
    let mut room = Value::Null;
    let mut users: Vec<(usize, String)> = Vec::new();
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        match k.as_ref() {
            "SdkAppId" => app = v.parse::<u64>().map(Value::from).unwrap_or(Value::String(v.into_owned())),
            "RoomId" if action == trtc::ACTION_NUMERIC => {
                room = v.parse::<u64>().map(Value::from).unwrap_or(Value::String(v.into_owned()))
            }
            "RoomId" => room = Value::String(v.into_owned()),
            other => {
                if let Some(i) = other.strip_prefix("UserIds.").and_then(|i| i.parse().ok()) {
                    users.push((i, v.into_owned()));
                }
            }
        }
    }
    users.sort_by_key(|(i, _)| *i);
    serde_json::json!({"SdkAppId": app, "RoomId": room, "UserIds": users.into_iter().map(|(_, u)| u).collect::<Vec<_>>()})
}

async fn put_faults(State(sim): State<Arc<Sim>>, Json(f): Json<Faults>) -> Response {
    match f.validate() {
        Ok(()) => {
            sim.set_faults(f);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => (StatusCode::UNPROCESSABLE_ENTITY, e).into_response(),
    }
}

async fn delete_faults(State(sim): State<Arc<Sim>>) -> StatusCode {
    sim.clear_faults();
    StatusCode::NO_CONTENT
}

#[derive(Deserialize)]
struct Since {
    #[serde(default)]
    since: u64,
}

pub fn router(sim: Arc<Sim>) -> Router {
    Router::new()
        .route("/", any(vendor_api))
        .route("/_sim/stats", get(|State(s): State<Arc<Sim>>| async move { Json(s.stats()) }))
        .route("/_sim/metrics", get(|State(s): State<Arc<Sim>>| async move { s.prometheus() }))
        .route(
            "/_sim/requests",
            get(|State(s): State<Arc<Sim>>, Query(q): Query<Since>| async move { Json(s.records(q.since)) }),
        )
        .route("/_sim/faults", axum::routing::put(put_faults).delete(delete_faults))
        .route(
            "/_sim/reset",
            post(|State(s): State<Arc<Sim>>| async move {
                s.reset();
                StatusCode::NO_CONTENT
            }),
        )
        .with_state(sim)
}

/// A simulator serving in the background of this process.
pub struct RunningSim {
    pub addr: SocketAddr,
    pub sim: Arc<Sim>,
    task: tokio::task::JoinHandle<()>,
}

impl RunningSim {
    /// `http://addr`, the endpoint to put in a config.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for RunningSim {
    fn drop(&mut self) {
        self.sim.release_hangs();
        self.task.abort();
    }
}

/// Binds `listen` and serves in a background task until the returned handle is dropped.
pub async fn start(settings: SimSettings, listen: SocketAddr) -> std::io::Result<RunningSim> {
    start_on(settings, listen, &tokio::runtime::Handle::current())
}

/// Like [`start`], serving on `runtime`: a simulator that measures call arrivals should not share
/// threads with busy work of its own process (tests give it a runtime of its own).
pub fn start_on(
    settings: SimSettings,
    listen: SocketAddr,
    runtime: &tokio::runtime::Handle,
) -> std::io::Result<RunningSim> {
    let std_listener = std::net::TcpListener::bind(listen)?;
    std_listener.set_nonblocking(true)?;
    let addr = std_listener.local_addr()?;
    let sim = Arc::new(Sim::new(settings));
    let app = router(sim.clone());
    let task = runtime.spawn(async move {
        // Registered with the reactor of the runtime that serves it.
        match tokio::net::TcpListener::from_std(std_listener) {
            Ok(listener) => {
                if let Err(e) = axum::serve(listener, app).await {
                    tracing::error!(error = %e, "simulator stopped");
                }
            }
            Err(e) => tracing::error!(error = %e, "simulator cannot listen"),
        }
    });
    Ok(RunningSim { addr, sim, task })
}
