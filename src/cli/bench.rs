//! `bouncer bench`: an end-to-end load generator and reporter. It runs a simulator in this
//! process and `bouncer run` as a child (so its CPU time and peak memory are its own), publishes a
//! workload with publisher confirms, waits until every verdict is terminal, and reports.

use std::collections::HashMap;
use std::io::Write;
use std::time::{Duration, Instant};

use futures_util::{FutureExt, StreamExt};
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use secrecy::ExposeSecret;
use serde_json::json;

use super::output;
use crate::bench::{self, Latency, Machine, Report};
use crate::config::Config;
use crate::publisher::Publisher;
use crate::sim::{self, SimSettings, faults::Faults};
use crate::vendor::QuotaKey;
use crate::verdict::Vendor;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Preset {
    /// 7,000 single-user verdicts queued app by app (2 ZEGO apps × 2,500 users in 25 rooms, then a
    /// TRTC quota × 2,000 users in 10 rooms), then start: utilisation and chunk fill.
    Backlog,
    /// A Poisson stream below quota: latency (add `--replicas 2` for cross-replica wake-ups).
    Steady,
    /// 200 apps in bursts, sim limits raised: intake against the bare consume-and-ack baseline.
    ManyApps,
    /// A backlog with 30 % of calls failing (HTTP 502): nothing lost, retries counted.
    Flaky,
    /// Three replicas, six quota groups, a backlog; one replica SIGKILLed and one SIGTERMed mid-run.
    Replicas,
    /// A hanging app with a 5,000-verdict backlog beside a healthy app at 20 verdicts/s.
    Stuck,
    /// 100,000 pending kicks, drained at the vendors' limits: the worker's memory.
    Memory,
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
    /// Override the preset's number of verdicts (spread over its apps).
    #[arg(long)]
    verdicts: Option<usize>,
    /// Override the preset's number of apps (about half ZEGO, half TRTC when the preset has both).
    #[arg(long)]
    apps: Option<usize>,
    /// Steady preset: verdicts per second.
    #[arg(long)]
    rate: Option<f64>,
    /// Worker replicas (`bouncer run` processes) sharing the queue and database.
    #[arg(long)]
    replicas: Option<usize>,
    /// The worker's `amqp.prefetch` (default: the configuration default).
    #[arg(long)]
    prefetch: Option<u32>,
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432")]
    postgres: String,
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    amqp: String,
    /// Give up waiting for the workload after this many seconds.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
    /// Network jitter the simulator adds to every call's arrival (0..=N ms, uniform): how the
    /// pacing holds the vendor's limit when arrivals wander.
    #[arg(long, default_value_t = 0)]
    arrival_jitter_ms: u64,
}

/// One app's share of a workload.
#[derive(Clone, Debug)]
struct Segment {
    vendor: Vendor,
    verdicts: usize,
    /// Users per verdict cycle through 1..=max (exactly max when `fixed`).
    max_users: usize,
    rooms: usize,
    fixed: bool,
}

/// What a preset publishes and does.
struct Workload {
    segments: Vec<Segment>,
    /// Backlogs arrive app by app (a pipeline catching up on one app, then the next); a stream
    /// interleaves apps.
    interleaved: bool,
    /// `None`: publish everything, then start the workers. `Some(r)`: a Poisson stream of r/s.
    stream_rate: Option<f64>,
    sim_rate_multiplier: u32,
    http_502_rate: f64,
    replicas: usize,
    /// Replicas preset: SIGKILL one replica, later SIGTERM another.
    disrupt: bool,
    /// Stuck preset: the first app hangs with this backlog while the second streams at 20/s.
    stuck: bool,
    /// Memory preset: stop this long after everything is recorded (the backlog still pending).
    stop_after_recorded: Option<Duration>,
}

fn seg(vendor: Vendor, verdicts: usize, max_users: usize, rooms: usize) -> Segment {
    Segment { vendor, verdicts, max_users, rooms, fixed: false }
}

impl Segment {
    fn users_of(&self, j: usize) -> usize {
        if self.fixed { self.max_users } else { users_of(j, self.max_users) }
    }
}

fn workload(args: &BenchArgs) -> Workload {
    use Vendor::{Trtc, Zego};
    let base = Workload {
        segments: Vec::new(),
        interleaved: false,
        stream_rate: None,
        sim_rate_multiplier: 1,
        http_502_rate: 0.0,
        replicas: 1,
        disrupt: false,
        stuck: false,
        stop_after_recorded: None,
    };
    let mut w = match args.preset {
        Preset::Backlog => Workload {
            segments: vec![seg(Zego, 2_500, 1, 25), seg(Zego, 2_500, 1, 25), seg(Trtc, 2_000, 1, 10)],
            ..base
        },
        Preset::Steady => Workload {
            segments: vec![seg(Zego, 300, 1, 10), seg(Zego, 300, 1, 10), seg(Trtc, 300, 1, 10)],
            interleaved: true,
            stream_rate: Some(30.0),
            ..base
        },
        Preset::ManyApps => {
            Workload { segments: (0..200).map(|_| seg(Zego, 50, 1, 5)).collect(), sim_rate_multiplier: 20, ..base }
        }
        Preset::Flaky => Workload {
            segments: vec![seg(Zego, 500, 4, 20), seg(Zego, 500, 4, 20), seg(Trtc, 500, 4, 20), seg(Trtc, 500, 4, 20)],
            http_502_rate: 0.3,
            ..base
        },
        Preset::Replicas => Workload {
            segments: vec![
                seg(Zego, 1_500, 5, 25),
                seg(Zego, 1_500, 5, 25),
                seg(Zego, 1_500, 5, 25),
                seg(Zego, 1_500, 5, 25),
                seg(Trtc, 600, 10, 20),
                seg(Trtc, 600, 10, 20),
            ],
            replicas: 3,
            disrupt: true,
            ..base
        },
        Preset::Stuck => Workload {
            // The healthy app is a second ZEGO app: 20 verdicts/s is well below its 50 calls/s.
            segments: vec![seg(Zego, 5_000, 1, 20), seg(Zego, 600, 1, 10)],
            stream_rate: Some(20.0),
            stuck: true,
            ..base
        },
        Preset::Memory => Workload {
            // 100,000 kicks queued, drained at the vendors' limits (900 kicks/s): the worker holds
            // a few seconds of it, PostgreSQL the rest.
            segments: [Zego, Zego, Trtc, Trtc]
                .into_iter()
                .map(|v| Segment { fixed: true, ..seg(v, 5_000, 5, 50) })
                .collect(),
            stop_after_recorded: Some(Duration::from_secs(20)),
            ..base
        },
    };
    if let Some(a) = args.apps {
        let a = a.max(1);
        let has_trtc = w.segments.iter().any(|s| s.vendor == Trtc);
        let template = |v: Vendor| w.segments.iter().find(|s| s.vendor == v).cloned().unwrap_or(seg(v, 100, 1, 10));
        let trtc = if has_trtc && a > 1 { a / 2 } else { 0 };
        let (z, t) = (template(Zego), template(Trtc));
        w.segments = (0..a - trtc).map(|_| z.clone()).chain((0..trtc).map(|_| t.clone())).collect();
    }
    if let Some(v) = args.verdicts {
        let n = w.segments.len();
        for (i, s) in w.segments.iter_mut().enumerate() {
            s.verdicts = v / n + usize::from(i < v % n);
        }
    }
    if let Some(r) = args.rate {
        w.stream_rate = Some(r.max(0.1));
    }
    if let Some(r) = args.replicas {
        w.replicas = r.max(1);
    }
    w
}

fn preset_name(p: Preset) -> &'static str {
    match p {
        Preset::Backlog => "backlog",
        Preset::Steady => "steady",
        Preset::ManyApps => "many-apps",
        Preset::Flaky => "flaky",
        Preset::Replicas => "replicas",
        Preset::Stuck => "stuck",
        Preset::Memory => "memory",
    }
}

pub(crate) async fn run(args: &BenchArgs) -> super::CliResult {
    bench_main(args).await.map_err(|e| super::CliError::failed(format!("bench failed: {e}")))
}

async fn bench_main(args: &BenchArgs) -> Result<(), String> {
    super::ensure_services(&args.amqp, &args.postgres).await?;
    let w = workload(args);
    let total: usize = w.segments.iter().map(|s| s.verdicts).sum();
    if args.baseline {
        let rate = baseline(&args.amqp, total, false).await?;
        if args.json {
            println!(
                "{}",
                json!({"preset": "baseline", "machine": Machine::this(), "messages": total, "msgs_per_second": rate})
            );
        } else {
            println!("bare consume-and-ack on a quorum queue, prefetch 500: {total} messages at {rate:.0} msgs/s");
        }
        return Ok(());
    }
    let (baseline_rate, batched_rate) = if args.preset == Preset::ManyApps {
        (Some(baseline(&args.amqp, total, false).await?), Some(baseline(&args.amqp, total, true).await?))
    } else {
        (None, None)
    };
    let mut report = run_workload(args, &w).await?;
    report.baseline_msgs_per_second = baseline_rate;
    report.ratio_to_baseline = baseline_rate.zip(report.intake_verdicts_per_second).map(|(b, i)| i / b);
    report.batched_baseline_msgs_per_second = batched_rate;
    report.ratio_to_batched_baseline = batched_rate.zip(report.intake_verdicts_per_second).map(|(b, i)| i / b);
    if args.json {
        println!("{}", serde_json::to_string(&report).map_err(|e| e.to_string())?);
    } else {
        print_report(&report).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// A free port on loopback for a worker's HTTP surface.
fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

/// The verdict bodies in publishing order, each with its app index.
fn bodies(w: &Workload, app_ids: &[u32]) -> Vec<(usize, Vec<u8>)> {
    // (segment, index within it), in the order they are published.
    let mut order: Vec<(usize, usize)> = Vec::new();
    if w.interleaved {
        let most = w.segments.iter().map(|s| s.verdicts).max().unwrap_or(0);
        for j in 0..most {
            for (k, s) in w.segments.iter().enumerate() {
                if j < s.verdicts {
                    order.push((k, j));
                }
            }
        }
    } else {
        for (k, s) in w.segments.iter().enumerate() {
            order.extend((0..s.verdicts).map(|j| (k, j)));
        }
    }
    order
        .into_iter()
        .enumerate()
        .map(|(i, (k, j))| {
            let s = &w.segments[k];
            let users: Vec<String> = (0..s.users_of(j)).map(|n| bench::bench_user(i, n)).collect();
            let body = json!({"verdict_id": format!("bench-{i}"), "vendor": s.vendor.as_str(), "app_id": app_ids[k],
                   "room_id": format!("room-{}", j % s.rooms), "user_ids": users, "reason": "benchmark"})
            .to_string()
            .into_bytes();
            (k, body)
        })
        .collect()
}

/// The workers of a run: `bouncer run` children, each with its own HTTP port and replica name.
struct Workers {
    children: Vec<std::process::Child>,
    ports: Vec<u16>,
    /// Peak RSS (MiB) and CPU seconds seen per worker.
    usage: Vec<(f64, f64)>,
}

impl Workers {
    fn start(config: &std::path::Path, n: usize, id: &str) -> Result<Workers, String> {
        let mut w = Workers { children: Vec::new(), ports: Vec::new(), usage: Vec::new() };
        for k in 0..n {
            let port = free_port()?;
            w.children.push(spawn_worker(config, port, &format!("bench-{id}-{k}"))?);
            w.ports.push(port);
            w.usage.push((0.0, 0.0));
        }
        Ok(w)
    }

    fn sample(&mut self) {
        for (child, u) in self.children.iter().zip(self.usage.iter_mut()) {
            if let Some((cpu, rss)) = bench::process_usage(child.id()) {
                *u = (cpu, rss.max(u.1));
            }
        }
    }

    fn signal(&self, k: usize, sig: &str) {
        let _ = std::process::Command::new("kill").args([sig, &self.children[k].id().to_string()]).status();
    }

    async fn stop(mut self) {
        self.sample();
        for k in 0..self.children.len() {
            self.signal(k, "-TERM");
        }
        let children = std::mem::take(&mut self.children);
        let _ = tokio::task::spawn_blocking(move || {
            for mut c in children {
                let _ = c.wait();
            }
        })
        .await;
    }
}

async fn count(pool: &sqlx::PgPool, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap_or(0)
}

async fn run_workload(args: &BenchArgs, w: &Workload) -> Result<Report, String> {
    let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
    let mut apps = String::new();
    let mut app_ids = Vec::new();
    for (k, s) in w.segments.iter().enumerate() {
        match s.vendor {
            Vendor::Zego => {
                let z = 2_000_000 + k as u32;
                apps +=
                    &format!("[[zego]]\napp_id = {z}\nserver_secret = \"bench-{z}-{id}\"\nendpoint = \"ENDPOINT\"\n");
                app_ids.push(z);
            }
            Vendor::Trtc => {
                let t = 1_400_100_000 + k as u32;
                apps += &format!(
                    "[[trtc]]\nsdk_app_id = {t}\nsecret_id = \"AKIDbench{t}\"\nsecret_key = \"bench-{t}-{id}\"\nregion = \"ap-guangzhou\"\nendpoint = \"ENDPOINT\"\n"
                );
                app_ids.push(t);
            }
        }
    }
    let prefetch = args.prefetch.map(|p| format!("prefetch = {p}\n")).unwrap_or_default();
    // Everything else is the configuration default.
    let base = format!(
        "[amqp]\nurl = \"{}\"\nqueue = \"bouncer.bench.{id}\"\nconnection_name = \"bouncer-bench-{id}\"\n{prefetch}\
         [postgres]\nurl = \"{}/bouncer_bench_{id}\"\n{apps}",
        args.amqp,
        args.postgres.trim_end_matches('/'),
    );
    let placeholder = Config::from_toml(&base.replace("ENDPOINT", "http://127.0.0.1:1")).map_err(|e| e.to_string())?;
    // The simulator timestamps arrivals: it gets threads of its own, apart from publishing and polling.
    let sim_rt = OwnRuntime(Some(
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("bench-sim")
            .enable_all()
            .build()
            .map_err(|e| format!("simulator runtime: {e}"))?,
    ));
    let running = sim::start_on(
        SimSettings {
            zego: placeholder.zego.clone(),
            trtc: placeholder.trtc.clone(),
            zego_rate: 50 * w.sim_rate_multiplier,
            trtc_rate: 20 * w.sim_rate_multiplier,
        },
        "127.0.0.1:0".parse().map_err(|e| format!("{e}"))?,
        sim_rt.handle(),
    )
    .map_err(|e| format!("simulator: {e}"))?;
    if w.http_502_rate > 0.0 || args.arrival_jitter_ms > 0 {
        running.sim.set_faults(Faults {
            http_502_rate: w.http_502_rate,
            arrival_jitter_ms: args.arrival_jitter_ms,
            ..Faults::default()
        });
    }
    if w.stuck {
        running.sim.set_faults(Faults {
            vendor: Some("zego".into()),
            app_id: app_ids.first().copied(),
            hang: true,
            ..Faults::default()
        });
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

    let bodies = bodies(w, &app_ids);
    let total = bodies.len();
    let users: usize = w.segments.iter().map(|s| (0..s.verdicts).map(|j| s.users_of(j)).sum::<usize>()).sum();
    let publisher = Publisher::connect(&config.amqp, "bench-publisher").await.map_err(|e| format!("RabbitMQ: {e}"))?;
    let mut published_at: Vec<u64> = vec![0; total];
    let now_ms = || chrono::Utc::now().timestamp_millis().max(0) as u64;
    let mut extra = Extra::default();

    let mut workers;
    let started;
    if let Some(rate) = w.stream_rate {
        workers = Workers::start(&config_path, w.replicas, &id)?;
        for port in &workers.ports {
            wait_ready(*port).await?;
        }
        // A stream measures enforcement in its steady state: every quota group owned.
        let pool = crate::audit::connect_within(&config.postgres, Duration::from_secs(30))
            .await
            .map_err(|e| format!("audit database: {e}"))?;
        let waited = Instant::now();
        // … and shared out: with several replicas, each owns its share before the stream starts
        // (a handover pauses a quota for one vendor window).
        let owners_wanted = w.replicas.min(w.segments.len()) as i64;
        loop {
            let owned = count(&pool, "SELECT count(*) FROM quota_owners WHERE expires_at > now()").await;
            let owners =
                count(&pool, "SELECT count(DISTINCT worker_id) FROM quota_owners WHERE expires_at > now()").await;
            if owned >= w.segments.len() as i64 && owners >= owners_wanted {
                break;
            }
            if waited.elapsed() > Duration::from_secs(30) {
                return Err("the quota groups were never all owned".into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Let a handover that has just happened finish its vendor window.
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        pool.close().await;
        // Stuck: the hanging app's backlog first, then the healthy stream.
        let stream_from = if w.stuck { w.segments[0].verdicts } else { 0 };
        if w.stuck {
            for chunk in bodies[..stream_from].chunks(1000) {
                let plain: Vec<Vec<u8>> = chunk.iter().map(|(_, b)| b.clone()).collect();
                publisher.publish_all(&plain, &[]).await;
            }
            // Intake takes the backlog in (it never waits on the vendor); 5 s after the last
            // publish the queue holds what it holds. The healthy stream starts then, so its latency
            // is the healthy app's, not that of messages queued behind a 5,000-message burst.
            let published = Instant::now();
            tokio::time::sleep(Duration::from_secs(5)).await;
            extra.queue_depth_5s_after_backlog = Some(queue_depth(&config).await);
            let pool = crate::audit::connect_within(&config.postgres, Duration::from_secs(30))
                .await
                .map_err(|e| format!("audit database: {e}"))?;
            while count(&pool, "SELECT count(*) FROM verdicts").await < stream_from as i64 {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            pool.close().await;
            eprintln!("  stuck backlog recorded {:.1} s after its last publish", published.elapsed().as_secs_f64());
        }
        started = Instant::now();
        let mut next = Instant::now();
        for (i, (_, body)) in bodies.iter().enumerate().skip(stream_from) {
            // Poisson arrivals: exponential gaps with mean 1/rate.
            let gap = -(1.0 - rand::random::<f64>()).ln() / rate;
            next += Duration::from_secs_f64(gap);
            tokio::time::sleep_until(next.into()).await;
            published_at[i] = now_ms();
            if publisher.publish_all(std::slice::from_ref(body), &[]).await != [true] {
                return Err("the broker did not confirm a message".into());
            }
            workers.sample();
        }
        if w.stuck {
            running.sim.clear_faults();
            extra.released_at_ms = Some(now_ms());
            eprintln!("  the stuck app answers again");
        }
    } else {
        for (n, chunk) in bodies.chunks(1000).enumerate() {
            let plain: Vec<Vec<u8>> = chunk.iter().map(|(_, b)| b.clone()).collect();
            if publisher.publish_all(&plain, &[]).await.iter().any(|ok| !ok) {
                return Err("the broker did not confirm a message".into());
            }
            eprintln!("  queued {}/{}", (n * 1000 + chunk.len()).min(total), total);
        }
        // The backlog waits for the workers: latency counts from their start, not from queueing.
        published_at.fill(now_ms());
        workers = Workers::start(&config_path, w.replicas, &id)?;
        started = Instant::now();
    }
    publisher.close().await;

    let pool = crate::audit::connect_within(&config.postgres, Duration::from_secs(30))
        .await
        .map_err(|e| format!("audit database: {e}"))?;
    let mut progress = Instant::now();
    let (mut killed, mut stopped) = (false, false);
    loop {
        let finished = count(&pool, "SELECT count(*) FROM verdicts WHERE status <> 'pending'").await;
        workers.sample();
        if w.disrupt && !killed && started.elapsed() >= Duration::from_secs(12) {
            extra.events.push(disrupt(&pool, &workers, 0, "-KILL", "sigkill").await);
            killed = true;
        }
        if w.disrupt && !stopped && started.elapsed() >= Duration::from_secs(20) {
            extra.events.push(disrupt(&pool, &workers, 1, "-TERM", "sigterm").await);
            stopped = true;
        }
        if progress.elapsed() >= Duration::from_secs(1) {
            eprintln!("  {:>6.1}s  finished {finished}/{total}", started.elapsed().as_secs_f64());
            progress = Instant::now();
        }
        if let Some(linger) = w.stop_after_recorded {
            let recorded = count(&pool, "SELECT count(*) FROM verdicts").await as usize;
            let pending = count(&pool, "SELECT count(*) FROM kicks WHERE status = 'pending'").await;
            if recorded >= total && extra.recorded_at.is_none() {
                extra.recorded_at = Some(Instant::now());
                extra.pending_kicks = Some(pending);
            }
            if extra.recorded_at.is_some_and(|t| t.elapsed() >= linger) {
                extra.pending_kicks = Some(pending);
                break;
            }
        } else if finished as usize >= total {
            break;
        }
        if started.elapsed() > Duration::from_secs(args.timeout) {
            workers.stop().await;
            return Err(format!("only {finished} of {total} verdicts finished in {}s", args.timeout));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The end is the last verdict's commit, not when this loop happened to look.
    let started_unix_ms = now_ms().saturating_sub(started.elapsed().as_millis() as u64);
    let last: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("SELECT max(finished_at) FROM verdicts").fetch_one(&pool).await.unwrap_or(None);
    let wall = match last {
        Some(t) if w.stop_after_recorded.is_none() => {
            (t.timestamp_millis().max(0) as u64).saturating_sub(started_unix_ms) as f64 / 1000.0
        }
        _ => started.elapsed().as_secs_f64(),
    }
    .max(0.001);
    let intake_span: Option<f64> =
        sqlx::query_scalar("SELECT extract(epoch FROM max(received_at) - min(received_at))::float8 FROM verdicts")
            .fetch_one(&pool)
            .await
            .unwrap_or(None);
    let cpu: f64;
    let rss: f64;
    {
        workers.sample();
        cpu = workers.usage.iter().map(|u| u.0).sum();
        rss = workers.usage.iter().map(|u| u.1).fold(0.0, f64::max);
    }
    workers.stop().await;

    let records = running.sim.records(0);
    let stats = running.sim.stats();
    // Utilisation is measured against the documented limit, not the simulator's (maybe raised) one.
    let windows: HashMap<String, (u64, u32)> = stats["quotas"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, q)| {
                    let limit = QuotaKey::parse(k).map_or(0, |q| q.max_calls_per_second());
                    (k.clone(), (q["max_calls_in_1s"].as_u64().unwrap_or(0), limit))
                })
                .collect()
        })
        .unwrap_or_default();
    let sent = bench::sent_at_by_verdict(&records);
    let to_call: Vec<f64> = sent
        .iter()
        .filter(|(v, _)| !w.stuck || bodies.get(**v).is_some_and(|(k, _)| *k != 0))
        .filter_map(|(v, t)| published_at.get(*v).map(|p| t.saturating_sub(*p) as f64))
        .collect();
    let finished: Vec<(String, Option<chrono::DateTime<chrono::Utc>>, String)> =
        sqlx::query_as("SELECT verdict_id, finished_at, status FROM verdicts")
            .fetch_all(&pool)
            .await
            .map_err(|e| e.to_string())?;
    let to_finish: Vec<f64> = finished
        .iter()
        .filter_map(|(id, at, _)| {
            let i: usize = id.strip_prefix("bench-")?.parse().ok()?;
            if w.stuck && bodies.get(i).is_some_and(|(k, _)| *k == 0) {
                return None;
            }
            let at = at.as_ref()?.timestamp_millis().max(0) as u64;
            Some(at.saturating_sub(*published_at.get(i)?) as f64)
        })
        .collect();
    let failed = finished.iter().filter(|(_, _, s)| s == "failed").count() as i64;
    let rejected = count(&pool, "SELECT count(*) FROM rejected_messages").await;
    let retries = count(&pool, "SELECT count(*) FROM kick_attempts WHERE outcome = 'retry'").await;
    pool.close().await;
    let takeovers = takeover_gaps(&records, &extra.events);
    let drain = extra.released_at_ms.map(|t| {
        let after: Vec<crate::sim::Record> = records.iter().filter(|r| r.at_unix_ms >= t).cloned().collect();
        bench::quota_reports(&after, &windows)
    });
    drop(running);
    drop(sim_rt);
    cleanup.run().await;

    let faults = stats["rejections"]["http_502"].as_u64().unwrap_or(0);
    Ok(Report {
        preset: preset_name(args.preset).into(),
        machine: Machine::this(),
        verdicts: total,
        users,
        apps: w.segments.len(),
        replicas: w.replicas,
        prefetch: config.amqp.prefetch.into(),
        wall_seconds: wall,
        verdicts_per_second: total as f64 / wall,
        kicks_per_second: users as f64 / wall,
        intake_verdicts_per_second: intake_span
            .filter(|s| *s > 0.0 && w.stream_rate.is_none())
            .map(|s| total as f64 / s),
        quotas: bench::quota_reports(&records, &windows),
        publish_to_vendor_call: Latency::of(to_call),
        publish_to_ack: Latency::of(to_finish),
        worker_cpu_seconds: cpu,
        worker_cpu_seconds_per_1000_verdicts: cpu * 1000.0 / total as f64,
        worker_peak_rss_mib: rss,
        pending_kicks: extra.pending_kicks,
        queue_depth_5s_after_backlog: extra.queue_depth_5s_after_backlog,
        takeovers,
        drain_after_release: drain,
        rejected,
        failed_verdicts: failed,
        vendor_faults_injected: faults,
        retries,
        baseline_msgs_per_second: None,
        ratio_to_baseline: None,
        batched_baseline_msgs_per_second: None,
        ratio_to_batched_baseline: None,
    })
}

/// A runtime owned by async code: dropped without blocking, whatever path ends the run.
struct OwnRuntime(Option<tokio::runtime::Runtime>);

impl OwnRuntime {
    fn handle(&self) -> &tokio::runtime::Handle {
        self.0.as_ref().expect("present until dropped").handle()
    }
}

impl Drop for OwnRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// What some presets measure besides the common figures.
#[derive(Default)]
struct Extra {
    events: Vec<Disruption>,
    queue_depth_5s_after_backlog: Option<u32>,
    released_at_ms: Option<u64>,
    recorded_at: Option<Instant>,
    pending_kicks: Option<i64>,
}

/// A replica killed or stopped, and the quota groups it owned then.
struct Disruption {
    what: &'static str,
    at_ms: u64,
    groups: Vec<String>,
}

async fn disrupt(pool: &sqlx::PgPool, workers: &Workers, k: usize, sig: &str, what: &'static str) -> Disruption {
    let name = format!("-{k}");
    let owned: Vec<(String, String)> =
        sqlx::query_as("SELECT quota_group, worker_id FROM quota_owners WHERE expires_at > now()")
            .fetch_all(pool)
            .await
            .unwrap_or_default();
    let groups = owned.into_iter().filter(|(_, w)| w.ends_with(&name)).map(|(g, _)| g).collect();
    let at_ms = chrono::Utc::now().timestamp_millis().max(0) as u64;
    workers.signal(k, sig);
    eprintln!("  {what} replica {k}");
    Disruption { what, at_ms, groups }
}

/// For each group a disrupted replica owned: how long until its quota saw a call again.
fn takeover_gaps(records: &[crate::sim::Record], events: &[Disruption]) -> Vec<bench::Takeover> {
    let mut out = Vec::new();
    for e in events {
        for g in &e.groups {
            let next = records
                .iter()
                .filter(|r| bench::quota_group(&r.quota) == *g && r.at_unix_ms > e.at_ms)
                .map(|r| r.at_unix_ms)
                .min();
            out.push(bench::Takeover {
                event: e.what.into(),
                quota_group: g.clone(),
                resumed_after_ms: next.map(|n| n - e.at_ms),
            });
        }
    }
    out
}

async fn queue_depth(config: &Config) -> u32 {
    let Ok(conn) =
        lapin::Connection::connect(config.amqp.url.expose_secret(), lapin::ConnectionProperties::default()).await
    else {
        return 0;
    };
    let depth = match conn.create_channel().await {
        Ok(ch) => ch
            .queue_declare(
                config.amqp.queue.as_str().into(),
                lapin::options::QueueDeclareOptions { passive: true, ..Default::default() },
                FieldTable::default(),
            )
            .await
            .map(|q| q.message_count())
            .unwrap_or(0),
        Err(_) => 0,
    };
    let _ = conn.close(200, "measured".into()).await;
    depth
}

fn users_of(j: usize, max_users: usize) -> usize {
    1 + j % max_users.max(1)
}

fn spawn_worker(config: &std::path::Path, port: u16, name: &str) -> Result<std::process::Child, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    std::process::Command::new(exe)
        .args(["run", "--config", &config.to_string_lossy()])
        .env("BOUNCER_LOG", std::env::var("BOUNCER_LOG").unwrap_or_else(|_| "warn".into()))
        .env("BOUNCER_HTTP__LISTEN", format!("127.0.0.1:{port}"))
        .env("BOUNCER_OWNERSHIP__WORKER_ID", name)
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

/// The broker's own rate here: publish `n` verdict-sized messages to a fresh quorum queue, then
/// consume them with prefetch 500 and time the consuming. Acked one after another (`together` =
/// false: the baseline the intake target was set against), or whatever has arrived acked at once
/// as intake acks (the broker's ceiling).
async fn baseline(amqp: &str, n: usize, together: bool) -> Result<f64, String> {
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
            Ok(Some(Ok(first))) => {
                started.get_or_insert_with(Instant::now);
                let mut batch = vec![first];
                if together {
                    while batch.len() < 250 {
                        match consumer.next().now_or_never() {
                            Some(Some(Ok(d))) => batch.push(d),
                            _ => break,
                        }
                    }
                }
                for ack in
                    futures_util::future::join_all(batch.iter().map(|d| d.acker.ack(BasicAckOptions::default()))).await
                {
                    ack.map_err(|e| e.to_string())?;
                }
                got += batch.len();
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
        "bouncer bench --preset {}  ({} CPUs, {}; {} replica(s), prefetch {})",
        r.preset, r.machine.cpus, r.machine.os, r.replicas, r.prefetch
    )?;
    writeln!(
        out,
        "{} verdicts, {} kicks, {} apps in {:.1} s: {:.0} verdicts/s, {:.0} kicks/s",
        r.verdicts, r.users, r.apps, r.wall_seconds, r.verdicts_per_second, r.kicks_per_second
    )?;
    if let Some(i) = r.intake_verdicts_per_second {
        writeln!(out, "intake: {i:.0} verdicts/s recorded and acked")?;
    }
    writeln!(out, "\nper quota (utilisation against the documented limit):")?;
    quota_table(&mut out, &r.quotas)?;
    if let Some(drain) = &r.drain_after_release {
        writeln!(out, "\nonce the stuck vendor answered again:")?;
        quota_table(&mut out, drain)?;
    }
    if let Some(d) = r.queue_depth_5s_after_backlog {
        writeln!(out, "queue depth about 5 s after the stuck backlog was published: {d} (prefetch {})", r.prefetch)?;
    }
    for t in &r.takeovers {
        let gap = t.resumed_after_ms.map(|g| format!("{g} ms")).unwrap_or_else(|| "nothing left".into());
        writeln!(out, "{}: {} resumed after {gap}", t.event, t.quota_group)?;
    }
    if let Some(p) = r.pending_kicks {
        writeln!(out, "pending kicks in PostgreSQL: {p}")?;
    }
    print_rest(&mut out, r)
}

fn quota_table(out: &mut impl Write, quotas: &[bench::QuotaReport]) -> std::io::Result<()> {
    let rows = quotas
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
        out,
        &["quota", "calls", "calls/s", "limit", "utilisation", "max in any 1 s", "chunk fill", "full calls*"],
        rows,
    )?;
    writeln!(out, "* not counting each room's last call (its remainder)")
}

fn print_rest(out: &mut impl Write, r: &Report) -> std::io::Result<()> {
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
            "bare consume-and-ack baseline (each ack awaited): {b:.0} msgs/s; Bouncer with auditing: {:.0}% of it",
            ratio * 100.0
        )?;
    }
    if let (Some(b), Some(ratio)) = (r.batched_baseline_msgs_per_second, r.ratio_to_batched_baseline) {
        writeln!(
            out,
            "broker ceiling (arrived deliveries acked together): {b:.0} msgs/s; Bouncer with auditing: {:.0}% of it",
            ratio * 100.0
        )?;
    }
    Ok(())
}
