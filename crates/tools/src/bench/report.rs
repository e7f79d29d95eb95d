//! The numbers `bouncer bench` reports, computed from what the simulator recorded and what the
//! audit trail says. Pure functions, so the report's arithmetic is tested on its own.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use bouncer::vendor_api::{QuotaKey, trtc};
use bouncer_sim::Record;

/// p50/p95/p99/max of a sample, in milliseconds.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Latency {
    pub count: usize,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// Nearest-rank percentile of an ascending sample.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

impl Latency {
    pub fn of(mut sample: Vec<f64>) -> Latency {
        sample.sort_by(f64::total_cmp);
        Latency {
            count: sample.len(),
            p50_ms: percentile(&sample, 50.0),
            p95_ms: percentile(&sample, 95.0),
            p99_ms: percentile(&sample, 99.0),
            max_ms: sample.last().copied().unwrap_or(0.0),
        }
    }
}

/// One vendor quota under load.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct QuotaReport {
    pub quota: String,
    pub limit_per_second: u32,
    /// Successful calls.
    pub calls: usize,
    /// From the first to the last successful call.
    pub active_seconds: f64,
    pub calls_per_second: f64,
    /// `calls_per_second / limit`, in percent.
    pub utilisation_pct: f64,
    /// Most calls (of any outcome) the vendor saw in any sliding 1 s window.
    pub max_calls_in_any_1s: u64,
    /// Successful calls by users carried.
    pub users_per_call: BTreeMap<usize, usize>,
    /// Average users per call against the vendor maximum, in percent.
    pub chunk_fill_pct: f64,
    /// Calls that were full, not counting each room's last call (its remainder), in percent.
    pub full_calls_pct: f64,
}

/// Per-quota figures from the simulator's records; `max_in_1s` and `limit` come from its stats.
pub fn quota_reports(records: &[Record], max_in_1s: &HashMap<String, (u64, u32)>) -> Vec<QuotaReport> {
    let mut by_quota: BTreeMap<&str, Vec<&Record>> = BTreeMap::new();
    for r in records.iter().filter(|r| r.rejection.is_none()) {
        by_quota.entry(r.quota.as_str()).or_default().push(r);
    }
    by_quota
        .into_iter()
        .map(|(quota, mut calls)| {
            calls.sort_by_key(|r| (r.at_unix_ms, r.seq));
            // A ZEGO ban-rule quota (`zego:<AppId>:SetForbidUserRule`) names one user a call.
            let max_users = match QuotaKey::parse(quota) {
                Some(q) => q.max_users_per_call(),
                None if quota.starts_with("zego:") => 1,
                None => trtc::MAX_USERS_PER_CALL,
            };
            let (max_window, limit) = max_in_1s.get(quota).copied().unwrap_or((0, 0));
            let span = match (calls.first(), calls.last()) {
                (Some(a), Some(b)) => (b.at_unix_ms.saturating_sub(a.at_unix_ms)) as f64 / 1000.0,
                _ => 0.0,
            };
            // n calls spaced evenly over `span` run at (n - 1) / span calls per second.
            let rate = if span > 0.0 { (calls.len() - 1) as f64 / span } else { 0.0 };
            let mut users_per_call = BTreeMap::new();
            for r in &calls {
                *users_per_call.entry(r.user_ids.len()).or_insert(0) += 1;
            }
            let users: usize = calls.iter().map(|r| r.user_ids.len()).sum();
            let mut last_of_room: HashMap<(&str, bool), u64> = HashMap::new();
            for r in &calls {
                last_of_room.insert((r.room_id.as_str(), r.room_numeric), r.seq);
            }
            let not_last: Vec<&&Record> = calls
                .iter()
                .filter(|r| last_of_room.get(&(r.room_id.as_str(), r.room_numeric)) != Some(&r.seq))
                .collect();
            let full = not_last.iter().filter(|r| r.user_ids.len() == max_users).count();
            QuotaReport {
                quota: quota.to_owned(),
                limit_per_second: limit,
                calls: calls.len(),
                active_seconds: span,
                calls_per_second: rate,
                utilisation_pct: if limit > 0 { 100.0 * rate / f64::from(limit) } else { 0.0 },
                max_calls_in_any_1s: max_window,
                users_per_call,
                chunk_fill_pct: if calls.is_empty() {
                    0.0
                } else {
                    100.0 * users as f64 / (calls.len() * max_users) as f64
                },
                full_calls_pct: if not_last.is_empty() { 100.0 } else { 100.0 * full as f64 / not_last.len() as f64 },
            }
        })
        .collect()
}

/// For each verdict (its users are named `b<verdict>-<n>`), when the last of its users was sent
/// in a successful call, in unix milliseconds.
pub fn sent_at_by_verdict(records: &[Record]) -> HashMap<usize, u64> {
    let mut first_call: HashMap<&str, u64> = HashMap::new();
    for r in records.iter().filter(|r| r.rejection.is_none()) {
        for u in &r.user_ids {
            let t = first_call.entry(u.as_str()).or_insert(r.at_unix_ms);
            *t = (*t).min(r.at_unix_ms);
        }
    }
    let mut by_verdict: HashMap<usize, u64> = HashMap::new();
    for (user, t) in first_call {
        if let Some(v) = bench_verdict_of(user) {
            let e = by_verdict.entry(v).or_insert(t);
            *e = (*e).max(t);
        }
    }
    by_verdict
}

/// The bench names users `b<verdict index>-<n>` so vendor calls map back to verdicts.
pub fn bench_user(verdict: usize, n: usize) -> String {
    format!("b{verdict}-{n}")
}

fn bench_verdict_of(user: &str) -> Option<usize> {
    user.strip_prefix('b')?.split('-').next()?.parse().ok()
}

/// The quota group a simulator quota counts against: `zego:<app>` as is, `trtc:<id>:<action>` →
/// `trtc:<id>` (the name in `quota_owners`).
pub fn quota_group(quota: &str) -> String {
    QuotaKey::parse(quota).map_or_else(|| quota.to_owned(), |q| q.group())
}

/// How long a quota group of a killed or stopped replica went without calls.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Takeover {
    /// `sigkill` or `sigterm`.
    pub event: String,
    pub quota_group: String,
    /// From the signal to the group's next call (none: it had nothing left to do).
    pub resumed_after_ms: Option<u64>,
}

/// The whole report; field names are stable for scripts (`--json`).
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub preset: String,
    pub machine: Machine,
    pub verdicts: usize,
    pub users: usize,
    pub apps: usize,
    /// `bouncer run` processes.
    pub replicas: usize,
    /// The worker's prefetch during the run.
    pub prefetch: u32,
    /// How the workers reached PostgreSQL: `direct`, `pooler` (PgBouncer in transaction mode,
    /// no direct URL: lanes poll) or `pooler+direct_url` (LISTEN on the direct URL).
    pub postgres_route: String,
    /// From the worker's start (backlog) or the first publish (stream) to the last verdict finished.
    pub wall_seconds: f64,
    pub verdicts_per_second: f64,
    pub kicks_per_second: f64,
    /// Backlogs: verdicts recorded (and acked) per second, first to last receipt.
    pub intake_verdicts_per_second: Option<f64>,
    pub quotas: Vec<QuotaReport>,
    pub publish_to_vendor_call: Latency,
    pub publish_to_ack: Latency,
    pub worker_cpu_seconds: f64,
    pub worker_cpu_seconds_per_1000_verdicts: f64,
    /// The largest peak RSS of any replica.
    pub worker_peak_rss_mib: f64,
    /// Bans preset: the public API's ban checks during the run.
    pub ban_checks: Option<super::checks::CheckReport>,
    /// The outcome events the run produced, as a consumer bound to every event received them.
    pub events: Option<super::events::EventsReport>,
    /// Reentry preset: banned users rejoining, and their re-kicks.
    pub reentry: Option<super::reentry::ReentryReport>,
    /// Memory preset: kicks pending in PostgreSQL while the peak was measured.
    pub pending_kicks: Option<i64>,
    /// Stuck preset: messages in the queue about 5 s after the stuck backlog was published.
    pub queue_depth_5s_after_backlog: Option<u32>,
    /// Replicas preset: each disrupted replica's quota groups.
    pub takeovers: Vec<Takeover>,
    /// Stuck preset: the quotas once the stuck vendor answered again.
    pub drain_after_release: Option<Vec<QuotaReport>>,
    pub rejected: i64,
    pub failed_verdicts: i64,
    pub vendor_faults_injected: u64,
    pub retries: i64,
    /// Set when a baseline ran beside the workload.
    pub baseline_msgs_per_second: Option<f64>,
    pub ratio_to_baseline: Option<f64>,
    /// The same, against the broker's ceiling: a consumer that acks what has arrived at once.
    pub batched_baseline_msgs_per_second: Option<f64>,
    pub ratio_to_batched_baseline: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    pub cpus: usize,
    pub os: String,
}

impl Machine {
    pub fn this() -> Machine {
        let os = std::fs::read_to_string("/etc/os-release")
            .ok()
            .and_then(|t| {
                t.lines().find_map(|l| l.strip_prefix("PRETTY_NAME=").map(|v| v.trim_matches('"').to_owned()))
            })
            .unwrap_or_else(|| std::env::consts::OS.to_owned());
        Machine { cpus: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1), os }
    }
}

/// CPU seconds (user + system) and peak RSS (MiB) of a process, from /proc.
pub fn process_usage(pid: u32) -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    // USER_HZ is 100 on Linux for every architecture Bouncer targets.
    let cpu = ticks / 100.0;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let hwm_kib: f64 =
        status.lines().find_map(|l| l.strip_prefix("VmHWM:"))?.trim().trim_end_matches("kB").trim().parse().ok()?;
    Some((cpu, hwm_kib / 1024.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(seq: u64, at: u64, quota: &str, room: &str, users: usize) -> Record {
        Record {
            seq,
            at_ms: at,
            at_unix_ms: at,
            vendor: quota.split(':').next().unwrap().into(),
            app_id: 1,
            action: String::new(),
            quota: quota.into(),
            room_id: room.into(),
            room_numeric: false,
            user_ids: (0..users).map(|i| bench_user(seq as usize, i)).collect(),
            reason: None,
            timestamp: None,
            nonce: None,
            http_status: 200,
            code: "0".into(),
            rejection: None,
        }
    }

    #[test]
    fn percentiles_use_nearest_rank() {
        let s: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&s, 50.0), 50.0);
        assert_eq!(percentile(&s, 99.0), 99.0);
        assert_eq!(percentile(&s, 100.0), 100.0);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
        let l = Latency::of(vec![3.0, 1.0, 2.0]);
        assert_eq!((l.p50_ms, l.max_ms, l.count), (2.0, 3.0, 3));
    }

    #[test]
    fn utilisation_and_fill_come_from_the_calls() {
        // 51 calls 20.4 ms apart: 49.02 calls/s against a limit of 50.
        let mut records: Vec<Record> =
            (0..51).map(|i| call(i, i * 204 / 10, "zego:1", if i % 2 == 0 { "a" } else { "b" }, 5)).collect();
        records[50].user_ids.truncate(2); // room a's last call: a remainder, not counted against fill
        records[10].user_ids.truncate(4); // a short call in the middle: counted
        let limits = HashMap::from([("zego:1".to_string(), (50u64, 50u32))]);
        let r = &quota_reports(&records, &limits)[0];
        assert_eq!(r.calls, 51);
        assert!((r.calls_per_second - 49.02).abs() < 0.05, "{}", r.calls_per_second);
        assert!((r.utilisation_pct - 98.04).abs() < 0.1, "{}", r.utilisation_pct);
        assert_eq!(r.users_per_call, BTreeMap::from([(2, 1), (4, 1), (5, 49)]));
        assert!((r.full_calls_pct - 100.0 * 48.0 / 49.0).abs() < 1e-9, "{}", r.full_calls_pct);
        assert_eq!(r.max_calls_in_any_1s, 50);
    }

    #[test]
    fn a_verdict_is_sent_when_its_last_user_is() {
        let mut a = call(1, 100, "zego:1", "r", 0);
        a.user_ids = vec!["b7-0".into(), "b8-0".into()];
        let mut b = call(2, 130, "zego:1", "r", 0);
        b.user_ids = vec!["b7-1".into()];
        let mut refused = call(3, 90, "zego:1", "r", 0);
        refused.user_ids = vec!["b8-0".into()];
        refused.rejection = Some("http_502".into());
        let sent = sent_at_by_verdict(&[a, b, refused]);
        assert_eq!(sent[&7], 130);
        assert_eq!(sent[&8], 100, "refused calls do not count");
    }

    #[test]
    fn a_trtc_quota_belongs_to_its_secret_ids_group() {
        assert_eq!(quota_group("trtc:AKID1:RemoveUser"), "trtc:AKID1");
        assert_eq!(quota_group("trtc:AKID1:RemoveUserByStrRoomId"), "trtc:AKID1");
        assert_eq!(quota_group("zego:123"), "zego:123");
    }

    #[test]
    fn this_process_usage_is_readable() {
        let (cpu, rss) = process_usage(std::process::id()).expect("/proc is readable");
        assert!(cpu >= 0.0 && rss > 1.0);
    }
}
