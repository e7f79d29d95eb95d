//! The vendor simulator behind `bouncer sim`: a stand-in for ZEGO's and Tencent's kick APIs on one port, for tests, the demo,
//! benchmarks and sandboxes. It verifies signatures with its own code ([`verify`]), enforces the
//! documented limits (users per call, reason length, timestamp skew, and the per-quota call rate
//! as a sliding 1 s window), injects faults on request ([`faults`]), records every call and counts.
//!
//! Routes: `GET /?Action=KickoutUser&...` (ZEGO), `POST /` with `X-TC-Action` (TRTC), and the
//! control API under `/_sim/`: `GET stats` (JSON), `GET metrics` (Prometheus text),
//! `GET requests` (every recorded call), `GET rules` (ZEGO ban rules kept), `PUT faults` /
//! `DELETE faults`, `POST reset`. ZEGO's ban-rule APIs (`SetForbidUserRule`,
//! `DelForbidUserRule`, `DescribeForbidUserRules`) are served beside `KickoutUser` ([`rules`]).
//!
//! One module per part of a call's path: [`server`](crate::start) receives it and renders the
//! answer (`call`), `zego` and `trtc` check it as each vendor does, `records` keeps what was seen
//! and the counters, [`faults`] and [`window`] are the injected faults and the rate limit.

mod call;
pub mod faults;
mod records;
mod rooms;
mod rules;
mod server;
mod trtc;
pub mod verify;
pub mod window;
mod zego;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use secrecy::SecretString;
use tokio::sync::Notify;

use bouncer::config::{TrtcApp, ZegoApp};
use call::{Answer, Call, Refusal};
use faults::{Faults, Scope, chance};
use records::{Counters, QuotaState};

pub use records::Record;
pub use rooms::{Delivery, JoinRequest, Member, RoomKey, trtc_sign, zego_callback_signature};
pub use rules::SimRule;
pub use server::{RunningSim, router, start, start_on};

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
    /// Where room callbacks go: `<callback_url>/v1/callbacks/<vendor>/<app id>` (None: nowhere
    /// until set through `PUT /_sim/callback_url`).
    pub callback_url: Option<String>,
}

/// The simulator's shared state.
pub struct Sim {
    /// ZEGO AppId → ServerSecret.
    zego_secrets: HashMap<u32, SecretString>,
    /// TRTC SecretId → SecretKey.
    trtc_keys: HashMap<String, SecretString>,
    /// TRTC SdkAppIds the account may manage.
    trtc_apps: HashSet<u32>,
    /// ZEGO AppIds with ban rules switched on (`forbid_rules`).
    forbid_enabled: HashSet<u32>,
    /// ZEGO ban rules, in force and recently expired.
    rules: Mutex<Vec<rules::SimRule>>,
    /// Room callback signing secrets: ZEGO AppId → CallbackSecret, TRTC SdkAppId → key.
    zego_callback: HashMap<u32, SecretString>,
    trtc_callback: HashMap<u32, SecretString>,
    /// Where room callbacks go (see [`SimSettings::callback_url`]).
    callback_base: Mutex<Option<String>>,
    /// Who is in which room.
    rooms: Mutex<rooms::Rooms>,
    /// Every callback delivery attempt.
    deliveries: Mutex<Vec<rooms::Delivery>>,
    /// Sends callbacks.
    http: reqwest::Client,
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
    /// How long each request occupies the vendor's one request loop, in microseconds (0: no
    /// loop). See [`Sim::set_handling`].
    handling_us: AtomicU64,
    /// When the request loop is next free.
    loop_free: Mutex<Instant>,
}

/// A mutex poisoned by a panicking handler still holds consistent counters: keep going.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Sim {
    pub fn new(s: SimSettings) -> Sim {
        Sim {
            zego_secrets: s.zego.iter().map(|z| (z.app_id, z.server_secret.clone())).collect(),
            trtc_keys: s.trtc.iter().map(|t| (t.secret_id.clone(), t.secret_key.clone())).collect(),
            trtc_apps: s.trtc.iter().map(|t| t.sdk_app_id).collect(),
            forbid_enabled: s.zego.iter().filter(|z| z.forbid_rules).map(|z| z.app_id).collect(),
            rules: Mutex::default(),
            zego_callback: s.zego.iter().filter_map(|z| Some((z.app_id, z.callback_secret.clone()?))).collect(),
            trtc_callback: s.trtc.iter().filter_map(|t| Some((t.sdk_app_id, t.callback_key.clone()?))).collect(),
            callback_base: Mutex::new(s.callback_url.clone()),
            rooms: Mutex::default(),
            deliveries: Mutex::default(),
            // The vendors give up on a receiver after 5 s (TRTC's documented timeout).
            http: reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap_or_default(),
            zego_rate: s.zego_rate,
            trtc_rate: s.trtc_rate,
            started: Instant::now(),
            quotas: Mutex::default(),
            faults: Mutex::default(),
            faults_changed: Notify::new(),
            records: Mutex::default(),
            counters: Mutex::default(),
            handling_us: AtomicU64::new(0),
            loop_free: Mutex::new(Instant::now()),
        }
    }

    /// Makes the simulator lag as a busy vendor gateway does: every request takes `handling` of
    /// one shared request loop, one request at a time, and its arrival is stamped (and counted
    /// against its quota) when the loop takes it up, not when its bytes came in. A call held by a
    /// `hang` takes the loop again when it is answered. So when many held calls are released
    /// together, the calls sent meanwhile wait behind their answers and are stamped late and
    /// bunched, as the vendor's own arrival clock would count them. Zero turns the loop off.
    pub fn set_handling(&self, handling: Duration) {
        let us = u64::try_from(handling.as_micros()).unwrap_or(u64::MAX);
        self.handling_us.store(us, Ordering::Relaxed);
    }

    fn handling(&self) -> Duration {
        Duration::from_micros(self.handling_us.load(Ordering::Relaxed))
    }

    /// Waits for a turn on the request loop for something ready at `ready`, and for the turn to
    /// end. Returns when the turn began (computed, so this task's own wake-up delay adds nothing).
    async fn loop_turn(&self, ready: Instant) -> Instant {
        let handling = self.handling();
        if handling.is_zero() {
            return ready;
        }
        let start = {
            let mut free = lock(&self.loop_free);
            let start = (*free).max(ready);
            *free = start + handling;
            start
        };
        tokio::time::sleep_until((start + handling).into()).await;
        start
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
    /// With a request loop ([`Sim::set_handling`]) the arrival is the start of the call's turn.
    async fn arrival(&self, f: &Faults, received: Instant) -> Instant {
        let mut at = received;
        if f.arrival_jitter_ms > 0 {
            at += Duration::from_micros(rand::random_range(0..=f.arrival_jitter_ms * 1000));
            tokio::time::sleep_until(at.into()).await;
        }
        self.loop_turn(at).await
    }

    /// A call reaching the vendor: delayed by any injected jitter, counted against its quota at
    /// `limit` (`None`: a quota the simulator does not know, not counted), then met by transport
    /// faults. Returns the fault rule that applies to the rest of the call, and the arrival.
    async fn reach(
        &self,
        vendor: &str,
        call: &mut Call,
        limit: Option<u32>,
        received: Instant,
    ) -> Result<(Faults, Instant), Refusal> {
        let f = self.faults_for(vendor, call.app_id);
        let at = self.arrival(&f, received).await;
        call.arrived = Some(at);
        if let Some(limit) = limit {
            self.arrive(&call.quota, limit, at);
        }
        match self.transport_faults(&f).await {
            Some(refusal) => Err(refusal),
            None => Ok((f, at)),
        }
    }

    /// Transport-level faults, applied before the vendor looks at the call.
    async fn transport_faults(&self, f: &Faults) -> Option<Refusal> {
        if f.latency_ms > 0 {
            tokio::time::sleep(Duration::from_millis(f.latency_ms)).await;
        }
        if f.hang {
            let changed = self.faults_changed.notified();
            let _ = tokio::time::timeout(MAX_HANG, changed).await;
            // Answering a released call takes the request loop too.
            self.loop_turn(Instant::now()).await;
            return Some((Answer::Http(StatusCode::GATEWAY_TIMEOUT), "hang"));
        }
        if chance(f.http_502_rate) {
            return Some((Answer::Http(StatusCode::BAD_GATEWAY), "http_502"));
        }
        None
    }

    /// Wakes hanging calls (used at shutdown).
    pub fn release_hangs(&self) {
        self.faults_changed.notify_waiters();
    }
}
