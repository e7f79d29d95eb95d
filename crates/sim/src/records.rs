//! What the simulator saw: every call (capped), and counters per quota, served as JSON and as
//! Prometheus text.

use std::collections::BTreeMap;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::call::{Answer, Call};
use crate::window::SlidingWindow;
use crate::{Sim, lock};

const MAX_RECORDS: usize = 500_000;

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

/// Counters for one quota.
#[derive(Debug, Default)]
pub(crate) struct QuotaState {
    pub(crate) window: SlidingWindow,
    pub(crate) limit: u32,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// Successful calls by how many users they carried.
    users_per_call: BTreeMap<usize, u64>,
    kicked_users: u64,
    rejections: BTreeMap<String, u64>,
    seq: u64,
}

impl Sim {
    pub(crate) fn record(&self, call: Call, answer: &Answer, rejection: Option<&'static str>) {
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
                None if call.rule => {}
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
        lock(&self.rules).clear();
        *lock(&self.rooms) = Default::default();
        lock(&self.deliveries).clear();
        *lock(&self.counters) = Counters::default();
    }
}
