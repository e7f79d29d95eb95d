//! `bouncer bench --preset bans`: token servers asking the public API while a backlog is
//! enforced. 1,000,000 active bans are written straight into PostgreSQL (through the pipeline
//! they would take the vendors' limits hours), then 2,000 checks a second for 30 s are spread over
//! the replicas' API listeners, open loop: each check is sent at its scheduled moment whatever the
//! earlier ones are doing, and its latency counts from that moment (a slow answer cannot hide the
//! checks queued behind it). Half the checks ask about banned users (a room ban in its room, or an
//! app ban anywhere), half about users nobody banned.
//!
//! The checks come from a client of their own, as a token server is: its requests are sent and
//! timed on threads apart from the bench's publishing and sampling. The first
//! [`CheckLoad::warmup_seconds`] open its connections and are reported apart (`warmup`), as a
//! token server's first checks after it starts are not its steady state; the 30 s that count
//! start after them.

use std::time::{Duration, Instant};

use serde::Serialize;
use sqlx::{ConnectOptions, Connection};

use super::report::Latency;

/// What the preset asks of the API.
#[derive(Clone, Debug)]
pub(super) struct CheckLoad {
    pub(super) bans: usize,
    pub(super) per_second: f64,
    pub(super) seconds: u64,
    /// Checks at the same rate before the counted ones.
    pub(super) warmup_seconds: u64,
}

/// What the checks saw.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub(crate) struct CheckReport {
    pub(crate) active_bans: i64,
    pub(crate) load_seconds: f64,
    pub(crate) replicas: usize,
    pub(crate) checks: usize,
    pub(crate) checks_per_second: f64,
    /// Transport failures and any status but 200, the warm-up's too.
    pub(crate) errors: usize,
    pub(crate) banned_answers: usize,
    pub(crate) latency: Latency,
    /// The checks answered "banned" (PostgreSQL has the ban's details) and "not banned" (the
    /// replica's copy of the bans can say so alone).
    pub(crate) latency_banned: Latency,
    pub(crate) latency_not_banned: Latency,
    /// The warm-up's checks (not counted above).
    pub(crate) warmup: Latency,
    /// How late the client itself started each counted check: its own wait for a core, on a
    /// machine it shares with what it measures (a token server has its own). Part of every
    /// latency above.
    pub(crate) client_lag: Latency,
}

/// Apps the bans are spread over (not the run's vendor apps: the check needs no configured app).
const APPS: u32 = 20;
const FIRST_APP: u32 = 3_000_000;
const ROOMS: usize = 1000;

/// Writes `n` active bans: one user each, a fifth of them app-wide, ending within a day or two.
pub(super) async fn load_bans(url: &str, n: usize) -> Result<f64, String> {
    let started = Instant::now();
    // One long INSERT by design: not a slow statement worth a warning.
    let options = url
        .parse::<sqlx::postgres::PgConnectOptions>()
        .map_err(|e| format!("bans database: {e}"))?
        .log_slow_statements(tracing::log::LevelFilter::Off, Duration::from_secs(3600));
    let mut conn = options.connect().await.map_err(|e| format!("bans database: {e}"))?;
    sqlx::query(
        "INSERT INTO bans (vendor, app_id, user_id, scope, room_id, room_id_numeric, verdict_id, verdict_ids,
                           reason, expires_at)
         SELECT 'zego', $2 + g % $3, 'banned-' || g, CASE WHEN g % 5 = 0 THEN 'app' ELSE 'room' END,
                CASE WHEN g % 5 = 0 THEN NULL ELSE 'room-' || g % $4 END, CASE WHEN g % 5 = 0 THEN NULL ELSE false END,
                'bench-ban-' || g, ARRAY['bench-ban-' || g], 'benchmark',
                now() + interval '1 day' + interval '1 second' * (g % 86400)
         FROM generate_series(1, $1::int) g",
    )
    .bind(n as i64)
    .bind(i64::from(FIRST_APP))
    .bind(i64::from(APPS))
    .bind(ROOMS as i64)
    .execute(&mut conn)
    .await
    .map_err(|e| format!("writing bans: {e}"))?;
    sqlx::raw_sql("VACUUM ANALYZE bans").execute(&mut conn).await.map_err(|e| format!("VACUUM: {e}"))?;
    let _ = conn.close().await;
    Ok(started.elapsed().as_secs_f64())
}

/// The `i`th check's query, for the replica `i % replicas`: a banned user where the ban holds,
/// or a user nobody banned — every replica gets both kinds in turn.
fn check_query(i: usize, bans: usize, replicas: usize) -> String {
    let g = 1 + (i.wrapping_mul(7919) % bans.max(1));
    let app = FIRST_APP + (g as u32) % APPS;
    if (i / replicas.max(1)).is_multiple_of(2) {
        format!("vendor=zego&app_id={app}&user_id=banned-{g}&room_id=room-{}", g % ROOMS)
    } else {
        format!("vendor=zego&app_id={app}&user_id=clean-{g}&room_id=room-{}", g % ROOMS)
    }
}

/// Sends the checks, round robin over `api_addrs`, the first due at `begin` (the counted ones
/// from `begin` + the warm-up), and reports.
pub(super) async fn run(
    api_addrs: &[String],
    token: &str,
    load: &CheckLoad,
    begin: Instant,
    active: i64,
    load_seconds: f64,
) -> CheckReport {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().expect("http client");
    let per_second = load.per_second as usize;
    let warmup = per_second * load.warmup_seconds as usize;
    let total = warmup + (load.per_second * load.seconds as f64) as usize;
    let gap = Duration::from_secs_f64(1.0 / load.per_second);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    // The client's own runtime: requests are sent and their answers read on its thread, not
    // behind the bench's publishing on the caller's runtime.
    let client = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("bench-checks")
        .enable_all()
        .build()
        .expect("the checks' runtime");
    // The pacer is a thread of its own that sleeps to each check's moment and hands it to the
    // client then: tokio's timers fire on a 1 ms wheel, so at 2,000 checks a second they would
    // release checks in clumps up to a millisecond late, and that lateness would count as the
    // API's latency.
    let runtime = client.handle().clone();
    let (addrs, bans, token) = (api_addrs.to_vec(), load.bans, token.to_owned());
    let pacer = std::thread::Builder::new()
        .name("bench-pacer".into())
        .spawn(move || {
            for i in 0..total {
                let due = begin + gap * i as u32;
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                let url =
                    format!("http://{}/v1/bans/check?{}", addrs[i % addrs.len()], check_query(i, bans, addrs.len()));
                let (http, tx, token) = (http.clone(), tx.clone(), token.clone());
                runtime.spawn(async move {
                    let client_lag = due.elapsed().as_secs_f64() * 1000.0;
                    let answer = http.get(&url).bearer_auth(token).send().await;
                    let ok_banned = match answer {
                        Ok(r) if r.status() == 200 => {
                            r.json::<serde_json::Value>().await.ok().map(|v| v["banned"] == true)
                        }
                        _ => None,
                    };
                    let _ = tx.send((i, due.elapsed().as_secs_f64() * 1000.0, ok_banned, client_lag));
                });
            }
        })
        .expect("the pacer thread");
    let (mut ms, mut errors, mut banned) = (Vec::with_capacity(total), 0, 0);
    let (mut ms_banned, mut ms_not_banned, mut ms_warmup) = (Vec::new(), Vec::new(), Vec::new());
    let mut seconds: Vec<Vec<f64>> = vec![Vec::new(); load.seconds as usize + 1];
    let mut lags = Vec::new();
    while let Some((i, latency, answer, lag)) = rx.recv().await {
        let Some(counted) = i.checked_sub(warmup) else {
            ms_warmup.push(latency);
            errors += usize::from(answer.is_none());
            continue;
        };
        ms.push(latency);
        lags.push(lag);
        if let Some(s) = seconds.get_mut(counted / per_second.max(1)) {
            s.push(latency);
        }
        match answer {
            None => errors += 1,
            Some(true) => {
                banned += 1;
                ms_banned.push(latency);
            }
            Some(false) => ms_not_banned.push(latency),
        }
    }
    let _ = pacer.join();
    client.shutdown_background();
    let elapsed = (Instant::now() - begin).as_secs_f64() - load.warmup_seconds as f64;
    // Second by second: where a slow stretch was.
    for (k, mut s) in seconds.into_iter().enumerate().filter(|(_, s)| !s.is_empty()) {
        s.sort_by(f64::total_cmp);
        let p99 = super::report::percentile(&s, 99.0);
        eprintln!("  checks, second {k:>2}: p50 {:>7.2} ms  p99 {:>7.2} ms", super::report::percentile(&s, 50.0), p99);
    }
    CheckReport {
        active_bans: active,
        load_seconds,
        replicas: api_addrs.len(),
        checks: ms.len(),
        checks_per_second: ms.len() as f64 / elapsed,
        errors,
        banned_answers: banned,
        latency: Latency::of(ms),
        latency_banned: Latency::of(ms_banned),
        latency_not_banned: Latency::of(ms_not_banned),
        warmup: Latency::of(ms_warmup),
        client_lag: Latency::of(lags),
    }
}
