//! `bouncer bench`: an end-to-end load generator and reporter. It runs a simulator in this
//! process and `bouncer run` as a child (so its CPU time and peak memory are its own), publishes a
//! workload with publisher confirms, waits until every verdict is terminal, and reports.

use std::collections::HashMap;
use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use secrecy::ExposeSecret;
use serde_json::json;

use super::output;
use crate::bench::{self, Latency, Machine, Report};
use crate::config::Config;
use crate::publisher::Publisher;
use crate::sim::{self, SimSettings, faults::Faults};
use crate::vendor::{trtc, zego};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Preset {
    /// 20 000 users queued for 4 apps, then start: utilisation and chunk fill.
    Backlog,
    /// A Poisson stream below quota: latency.
    Steady,
    /// 200 apps, sim limits raised: the engine's own ceiling (runs the baseline too).
    ManyApps,
    /// The backlog with 30 % of calls failing (HTTP 502): nothing lost, retries counted.
    Flaky,
}

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    #[arg(long, value_enum, default_value = "backlog")]
    preset: Preset,
    /// Only measure the broker: a bare consume-and-ack loop over `--verdicts` messages.
    #[arg(long)]
    baseline: bool,
    /// Print the report as one JSON object (stable field names) instead of tables.
    #[arg(long)]
    json: bool,
    /// Override the preset's number of verdicts.
    #[arg(long)]
    verdicts: Option<usize>,
    /// Override the preset's number of apps (split between ZEGO and TRTC as the preset does).
    #[arg(long)]
    apps: Option<usize>,
    /// Steady preset: verdicts per second.
    #[arg(long)]
    rate: Option<f64>,
    /// The worker's `amqp.prefetch` (default: 2000 for the backlog presets, so every app can
    /// have a few seconds of work pending; 500, the config default, for steady).
    #[arg(long)]
    prefetch: Option<u32>,
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432")]
    postgres: String,
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    amqp: String,
    /// Give up waiting for the workload after this many seconds.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
}

/// What a preset publishes.
struct Workload {
    zego_apps: usize,
    trtc_apps: usize,
    verdicts: usize,
    /// Users per verdict cycle through 1..=max.
    max_users: usize,
    rooms_per_app: usize,
    /// `None`: publish everything, then start the worker. `Some(r)`: a Poisson stream of r/s.
    stream_rate: Option<f64>,
    sim_rate_multiplier: u32,
    http_502_rate: f64,
}

fn workload(args: &BenchArgs) -> Workload {
    let mut w = match args.preset {
        Preset::Backlog => Workload {
            zego_apps: 2,
            trtc_apps: 2,
            verdicts: 8_000,
            max_users: 4,
            rooms_per_app: 20,
            stream_rate: None,
            sim_rate_multiplier: 1,
            http_502_rate: 0.0,
        },
        Preset::Steady => Workload {
            zego_apps: 2,
            trtc_apps: 1,
            verdicts: 900,
            max_users: 1,
            rooms_per_app: 10,
            stream_rate: Some(30.0),
            sim_rate_multiplier: 1,
            http_502_rate: 0.0,
        },
        Preset::ManyApps => Workload {
            zego_apps: 200,
            trtc_apps: 0,
            verdicts: 10_000,
            max_users: 1,
            rooms_per_app: 5,
            stream_rate: None,
            sim_rate_multiplier: 20,
            http_502_rate: 0.0,
        },
        Preset::Flaky => Workload {
            zego_apps: 2,
            trtc_apps: 2,
            verdicts: 2_000,
            max_users: 4,
            rooms_per_app: 20,
            stream_rate: None,
            sim_rate_multiplier: 1,
            http_502_rate: 0.3,
        },
    };
    if let Some(v) = args.verdicts {
        w.verdicts = v.max(1);
    }
    if let Some(a) = args.apps {
        let a = a.max(1);
        w.trtc_apps = if w.trtc_apps > 0 { (a / 2).max(if a > 1 { 1 } else { 0 }) } else { 0 };
        w.zego_apps = a - w.trtc_apps;
    }
    if let Some(r) = args.rate {
        w.stream_rate = Some(r.max(0.1));
    }
    w
}

fn preset_name(p: Preset) -> &'static str {
    match p {
        Preset::Backlog => "backlog",
        Preset::Steady => "steady",
        Preset::ManyApps => "many-apps",
        Preset::Flaky => "flaky",
    }
}

pub async fn run(args: &BenchArgs) -> ExitCode {
    super::exit_code("bench", bench_main(args).await)
}

async fn bench_main(args: &BenchArgs) -> Result<(), String> {
    super::ensure_services(&args.amqp, &args.postgres).await?;
    let w = workload(args);
    if args.baseline {
        let rate = baseline(&args.amqp, w.verdicts).await?;
        if args.json {
            println!(
                "{}",
                json!({"preset": "baseline", "machine": Machine::this(), "messages": w.verdicts, "msgs_per_second": rate})
            );
        } else {
            println!(
                "bare consume-and-ack on a quorum queue, prefetch 500: {} messages at {rate:.0} msgs/s",
                w.verdicts
            );
        }
        return Ok(());
    }
    let baseline_rate =
        if args.preset == Preset::ManyApps { Some(baseline(&args.amqp, w.verdicts).await?) } else { None };
    let mut report = run_workload(args, &w).await?;
    report.baseline_msgs_per_second = baseline_rate;
    report.ratio_to_baseline = baseline_rate.map(|b| report.verdicts_per_second / b);
    if args.json {
        println!("{}", serde_json::to_string(&report).map_err(|e| e.to_string())?);
    } else {
        print_report(&report).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// A free port on loopback for the worker's HTTP surface.
fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

async fn run_workload(args: &BenchArgs, w: &Workload) -> Result<Report, String> {
    let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
    let port = free_port()?;
    let mut apps = String::new();
    let zego_ids: Vec<u32> = (0..w.zego_apps as u32).map(|i| 2_000_000 + i).collect();
    let trtc_ids: Vec<u32> = (0..w.trtc_apps as u32).map(|i| 1_400_100_000 + i).collect();
    for z in &zego_ids {
        apps += &format!("[[zego]]\napp_id = {z}\nserver_secret = \"bench-{z}-{id}\"\nendpoint = \"ENDPOINT\"\n");
    }
    for t in &trtc_ids {
        apps += &format!(
            "[[trtc]]\nsdk_app_id = {t}\nsecret_id = \"AKIDbench{t}\"\nsecret_key = \"bench-{t}-{id}\"\nregion = \"ap-guangzhou\"\nendpoint = \"ENDPOINT\"\n"
        );
    }
    let base = format!(
        "[amqp]\nurl = \"{}\"\nqueue = \"bouncer.bench.{id}\"\nconnection_name = \"bouncer-bench-{id}\"\nprefetch = {prefetch}\n\
         [postgres]\nurl = \"{}/bouncer_bench_{id}\"\n[http]\nlisten = \"127.0.0.1:{port}\"\n\
         [retry]\ninitial_ms = 100\nmax_interval_ms = 2000\ndeadline_secs = 120\n{apps}",
        args.amqp,
        args.postgres.trim_end_matches('/'),
        prefetch = args.prefetch.unwrap_or(if w.stream_rate.is_some() { 500 } else { 2000 }),
    );
    let placeholder = Config::from_toml(&base.replace("ENDPOINT", "http://127.0.0.1:1")).map_err(|e| e.to_string())?;
    let running = sim::start(
        SimSettings {
            zego: placeholder.zego.clone(),
            trtc: placeholder.trtc.clone(),
            zego_rate: 50 * w.sim_rate_multiplier,
            trtc_rate: 20 * w.sim_rate_multiplier,
        },
        "127.0.0.1:0".parse().map_err(|e| format!("{e}"))?,
    )
    .await
    .map_err(|e| format!("simulator: {e}"))?;
    if w.http_502_rate > 0.0 {
        running.sim.set_faults(Faults { http_502_rate: w.http_502_rate, ..Faults::default() });
    }
    let text = base.replace("ENDPOINT", &running.endpoint());
    let config = Config::from_toml(&text).map_err(|e| e.to_string())?;
    let config_path = std::env::temp_dir().join(format!("bouncer-bench-{id}.toml"));
    std::fs::write(&config_path, &text).map_err(|e| e.to_string())?;
    let cleanup = Cleanup {
        config: config.clone(),
        path: config_path.clone(),
        admin: format!("{}/postgres", args.postgres.trim_end_matches('/')),
        db: format!("bouncer_bench_{id}"),
    };

    // Verdicts: users are unique per verdict so vendor calls map back to verdicts.
    let bodies: Vec<Vec<u8>> = (0..w.verdicts)
        .map(|i| {
            let n_apps = w.zego_apps + w.trtc_apps;
            let app = i % n_apps;
            let (vendor, app_id) =
                if app < w.zego_apps { ("zego", zego_ids[app]) } else { ("trtc", trtc_ids[app - w.zego_apps]) };
            // Users per verdict vary within each app (not with the app), 1..=max_users.
            let users: Vec<String> = (0..users_of(i, n_apps, w.max_users)).map(|k| bench::bench_user(i, k)).collect();
            json!({"verdict_id": format!("bench-{i}"), "vendor": vendor, "app_id": app_id,
                   "room_id": format!("room-{}", (i / n_apps) % w.rooms_per_app), "user_ids": users,
                   "reason": "benchmark"})
            .to_string()
            .into_bytes()
        })
        .collect();
    let n_apps = w.zego_apps + w.trtc_apps;
    let users: usize = (0..w.verdicts).map(|i| users_of(i, n_apps, w.max_users)).sum();
    let publisher = Publisher::connect(&config.amqp, "bench-publisher").await.map_err(|e| format!("RabbitMQ: {e}"))?;
    let mut published_at: Vec<u64> = vec![0; w.verdicts];
    let now_ms = || chrono::Utc::now().timestamp_millis().max(0) as u64;

    let mut worker;
    let started;
    if let Some(rate) = w.stream_rate {
        worker = spawn_worker(&config_path)?;
        wait_ready(port).await?;
        started = Instant::now();
        let mut next = Instant::now();
        for (i, body) in bodies.iter().enumerate() {
            // Poisson arrivals: exponential gaps with mean 1/rate.
            let gap = -(1.0 - rand::random::<f64>()).ln() / rate;
            next += Duration::from_secs_f64(gap);
            tokio::time::sleep_until(next.into()).await;
            published_at[i] = now_ms();
            if publisher.publish_all(std::slice::from_ref(body), &[]).await != [true] {
                return Err("the broker did not confirm a message".into());
            }
            if i % 200 == 199 {
                eprintln!("  published {}/{}", i + 1, w.verdicts);
            }
        }
    } else {
        for (n, chunk) in bodies.chunks(1000).enumerate() {
            let t = now_ms();
            if publisher.publish_all(chunk, &[]).await.iter().any(|ok| !ok) {
                return Err("the broker did not confirm a message".into());
            }
            published_at[n * 1000..n * 1000 + chunk.len()].fill(t);
            eprintln!("  queued {}/{}", (n * 1000 + chunk.len()).min(w.verdicts), w.verdicts);
        }
        // The backlog waits for the worker: latency counts from its start, not from queueing.
        let t = now_ms();
        published_at.fill(t);
        worker = spawn_worker(&config_path)?;
        started = Instant::now();
    }
    publisher.close().await;

    let pool = crate::audit::connect_within(&config.postgres, Duration::from_secs(30))
        .await
        .map_err(|e| format!("audit database: {e}"))?;
    let mut usage = (0.0, 0.0);
    let mut progress = Instant::now();
    loop {
        let finished: i64 = sqlx::query_scalar("SELECT count(*) FROM verdicts WHERE status <> 'pending'")
            .fetch_one(&pool)
            .await
            .unwrap_or(0);
        if let Some(u) = bench::process_usage(worker.id()) {
            usage = u;
        }
        if progress.elapsed() >= Duration::from_secs(1) || finished as usize >= w.verdicts {
            eprintln!("  {:>6.1}s  finished {finished}/{}", started.elapsed().as_secs_f64(), w.verdicts);
            progress = Instant::now();
        }
        if finished as usize >= w.verdicts {
            break;
        }
        if started.elapsed() > Duration::from_secs(args.timeout) {
            let _ = worker.kill();
            return Err(format!("only {finished} of {} verdicts finished in {}s", w.verdicts, args.timeout));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The end is the last verdict's commit, not when this loop happened to look.
    let started_unix_ms = now_ms().saturating_sub(started.elapsed().as_millis() as u64);
    let last: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("SELECT max(finished_at) FROM verdicts").fetch_one(&pool).await.unwrap_or(None);
    let wall = match last {
        Some(t) => (t.timestamp_millis().max(0) as u64).saturating_sub(started_unix_ms) as f64 / 1000.0,
        None => started.elapsed().as_secs_f64(),
    }
    .max(0.001);
    if let Some(u) = bench::process_usage(worker.id()) {
        usage = u;
    }
    let _ = std::process::Command::new("kill").args(["-TERM", &worker.id().to_string()]).status();
    let _ = tokio::task::spawn_blocking(move || worker.wait()).await;

    let records = running.sim.records(0);
    let stats = running.sim.stats();
    // Utilisation is measured against the documented limit, not the simulator's (maybe raised) one.
    let windows: HashMap<String, (u64, u32)> = stats["quotas"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, q)| {
                    let limit =
                        if k.starts_with("zego") { zego::MAX_CALLS_PER_SECOND } else { trtc::MAX_CALLS_PER_SECOND };
                    (k.clone(), (q["max_calls_in_1s"].as_u64().unwrap_or(0), limit))
                })
                .collect()
        })
        .unwrap_or_default();
    let sent = bench::sent_at_by_verdict(&records);
    let to_call: Vec<f64> =
        sent.iter().filter_map(|(v, t)| published_at.get(*v).map(|p| t.saturating_sub(*p) as f64)).collect();
    let finished: Vec<(String, Option<chrono::DateTime<chrono::Utc>>, String)> =
        sqlx::query_as("SELECT verdict_id, finished_at, status FROM verdicts")
            .fetch_all(&pool)
            .await
            .map_err(|e| e.to_string())?;
    let to_ack: Vec<f64> = finished
        .iter()
        .filter_map(|(id, at, _)| {
            let i: usize = id.strip_prefix("bench-")?.parse().ok()?;
            let at = at.as_ref()?.timestamp_millis().max(0) as u64;
            Some(at.saturating_sub(*published_at.get(i)?) as f64)
        })
        .collect();
    let failed = finished.iter().filter(|(_, _, s)| s == "failed").count() as i64;
    let rejected: i64 =
        sqlx::query_scalar("SELECT count(*) FROM rejected_messages").fetch_one(&pool).await.unwrap_or(0);
    let retries: i64 = sqlx::query_scalar("SELECT count(*) FROM kick_attempts WHERE outcome = 'retry'")
        .fetch_one(&pool)
        .await
        .unwrap_or(0);
    pool.close().await;
    drop(running);
    cleanup.run().await;

    let faults = stats["rejections"]["http_502"].as_u64().unwrap_or(0);
    Ok(Report {
        preset: preset_name(args.preset).into(),
        machine: Machine::this(),
        verdicts: w.verdicts,
        users,
        apps: w.zego_apps + w.trtc_apps,
        prefetch: config.amqp.prefetch.into(),
        wall_seconds: wall,
        verdicts_per_second: w.verdicts as f64 / wall,
        kicks_per_second: users as f64 / wall,
        quotas: bench::quota_reports(&records, &windows),
        publish_to_vendor_call: Latency::of(to_call),
        publish_to_ack: Latency::of(to_ack),
        worker_cpu_seconds: usage.0,
        worker_cpu_seconds_per_1000_verdicts: usage.0 * 1000.0 / w.verdicts as f64,
        worker_peak_rss_mib: usage.1,
        rejected,
        failed_verdicts: failed,
        vendor_faults_injected: faults,
        retries,
        baseline_msgs_per_second: None,
        ratio_to_baseline: None,
    })
}

fn users_of(verdict: usize, apps: usize, max_users: usize) -> usize {
    1 + (verdict / apps.max(1)) % max_users.max(1)
}

fn spawn_worker(config: &std::path::Path) -> Result<std::process::Child, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    std::process::Command::new(exe)
        .args(["run", "--config", &config.to_string_lossy()])
        .env("BOUNCER_LOG", std::env::var("BOUNCER_LOG").unwrap_or_else(|_| "warn".into()))
        .stdout(std::process::Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start the worker: {e}"))
}

async fn wait_ready(port: u16) -> Result<(), String> {
    let url = format!("http://127.0.0.1:{port}/readyz");
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(30) {
        if reqwest::get(&url).await.is_ok_and(|r| r.status().is_success()) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err("the worker never became ready".into())
}

/// Removes the bench's queues, database and config file.
struct Cleanup {
    config: Config,
    path: std::path::PathBuf,
    admin: String,
    db: String,
}

impl Cleanup {
    async fn run(self) {
        let _ = std::fs::remove_file(&self.path);
        if let Ok(conn) =
            lapin::Connection::connect(self.config.amqp.url.expose_secret(), lapin::ConnectionProperties::default())
                .await
        {
            if let Ok(ch) = conn.create_channel().await {
                crate::intake::topology::delete(&ch, &self.config.amqp.queue).await;
            }
            let _ = conn.close(200, "bench done".into()).await;
        }
        if let Ok(pool) = sqlx::PgPool::connect(&self.admin).await {
            let sql = format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.db);
            let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&pool).await;
            pool.close().await;
        }
    }
}

/// The broker's own ceiling here: publish `n` verdict-sized messages to a fresh quorum queue, then
/// consume them with prefetch 500, acking each, and time the consuming.
async fn baseline(amqp: &str, n: usize) -> Result<f64, String> {
    let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
    let mut config = Config::default();
    config.amqp.url = amqp.to_owned().into();
    config.amqp.queue = format!("bouncer.baseline.{id}");
    config.amqp.connection_name = format!("bouncer-baseline-{id}");
    let publisher = Publisher::connect(&config.amqp, "publisher").await.map_err(|e| format!("RabbitMQ: {e}"))?;
    let body = json!({"verdict_id": "baseline-000000", "vendor": "zego", "app_id": 2000000, "room_id": "room-1",
                      "user_ids": ["b1-0"], "reason": "benchmark"})
    .to_string()
    .into_bytes();
    for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
        let bodies = vec![body.clone(); chunk.len()];
        publisher.publish_all(&bodies, &[]).await;
    }
    publisher.close().await;
    let conn =
        lapin::Connection::connect(amqp, lapin::ConnectionProperties::default()).await.map_err(|e| e.to_string())?;
    let ch = conn.create_channel().await.map_err(|e| e.to_string())?;
    ch.basic_qos(500, BasicQosOptions::default()).await.map_err(|e| e.to_string())?;
    let mut consumer = ch
        .basic_consume(
            config.amqp.queue.as_str().into(),
            "baseline".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| e.to_string())?;
    let mut got = 0;
    let mut started = None;
    while got < n {
        match tokio::time::timeout(Duration::from_secs(30), consumer.next()).await {
            Ok(Some(Ok(d))) => {
                started.get_or_insert_with(Instant::now);
                d.acker.ack(BasicAckOptions::default()).await.map_err(|e| e.to_string())?;
                got += 1;
            }
            _ => return Err("baseline consumer stalled".into()),
        }
    }
    let rate = n as f64 / started.map(|s| s.elapsed().as_secs_f64()).unwrap_or(1.0).max(1e-6);
    crate::intake::topology::delete(&ch, &config.amqp.queue).await;
    let _ = conn.close(200, "baseline done".into()).await;
    Ok(rate)
}

fn print_report(r: &Report) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "bouncer bench --preset {}  ({} CPUs, {}; worker prefetch {})",
        r.preset, r.machine.cpus, r.machine.os, r.prefetch
    )?;
    writeln!(
        out,
        "{} verdicts, {} kicks, {} apps in {:.1} s: {:.0} verdicts/s, {:.0} kicks/s",
        r.verdicts, r.users, r.apps, r.wall_seconds, r.verdicts_per_second, r.kicks_per_second
    )?;
    writeln!(out, "\nper quota (utilisation against the documented limit):")?;
    let rows = r
        .quotas
        .iter()
        .map(|q| {
            vec![
                q.quota.clone(),
                q.calls.to_string(),
                format!("{:.2}", q.calls_per_second),
                q.limit_per_second.to_string(),
                format!("{:.1}%", q.utilisation_pct),
                q.max_calls_in_any_1s.to_string(),
                format!("{:.1}%", q.chunk_fill_pct),
                format!("{:.1}%", q.full_calls_pct),
            ]
        })
        .collect();
    output::table(
        &mut out,
        &["quota", "calls", "calls/s", "limit", "utilisation", "max in any 1 s", "chunk fill", "full calls*"],
        rows,
    )?;
    writeln!(out, "* not counting each room's last call (its remainder)")?;
    for (name, l) in [("publish → vendor call", &r.publish_to_vendor_call), ("publish → ack", &r.publish_to_ack)] {
        writeln!(
            out,
            "{name:<22} p50 {:>7.1} ms  p95 {:>7.1} ms  p99 {:>7.1} ms  max {:>7.1} ms  (n={})",
            l.p50_ms, l.p95_ms, l.p99_ms, l.max_ms, l.count
        )?;
    }
    writeln!(
        out,
        "worker: {:.2} CPU s ({:.3} per 1000 verdicts), peak RSS {:.1} MiB",
        r.worker_cpu_seconds, r.worker_cpu_seconds_per_1000_verdicts, r.worker_peak_rss_mib
    )?;
    writeln!(
        out,
        "rejected {}, failed verdicts {}, injected vendor faults {}, retries {}",
        r.rejected, r.failed_verdicts, r.vendor_faults_injected, r.retries
    )?;
    if let (Some(b), Some(ratio)) = (r.baseline_msgs_per_second, r.ratio_to_baseline) {
        writeln!(
            out,
            "bare consume-and-ack baseline: {b:.0} msgs/s; Bouncer with auditing: {:.0}% of it",
            ratio * 100.0
        )?;
    }
    Ok(())
}
