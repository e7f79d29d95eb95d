//! `bouncer bench`: an end-to-end load generator and reporter. It runs a simulator in this
//! process and `bouncer run` as a child (so its CPU time and peak memory are its own), publishes a
//! workload with publisher confirms, waits until every verdict is terminal, and reports.
//!
//! Its parts, in the order a run meets them: [`workload`] (what a preset publishes), [`stack`]
//! (simulator, apps, config file, teardown), [`workers`] (the `bouncer run` children), [`run`]
//! (publish, wait, measure), [`report`] and [`print`]; [`baseline`] measures the broker alone,
//! [`console`] times the console's pages and [`checks`] the public API's ban checks.

mod baseline;
mod checks;
mod console;
mod events;
mod print;
mod reentry;
mod report;
mod retention;
mod run;
mod stack;
mod workers;
mod workload;

use serde_json::json;

use baseline::baseline;
use report::Machine;
use workload::workload;

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
    /// 1,000,000 verdicts written straight into PostgreSQL, then every `bouncer web` page timed.
    Console,
    /// 1,000,000 active bans, 2,000 ban checks/s for 30 s over two replicas' APIs, while they
    /// enforce the backlog preset's backlog.
    Bans,
    /// 200 banned users rejoining at random over 30 s (their callbacks spread over two replicas)
    /// beside a 10,000-user backlog of the same ZEGO app: callback → re-kick latency.
    Reentry,
    /// 7 days × 1,000,000 verdicts (`--verdicts`: a day's) written into PostgreSQL, then
    /// `bouncer prune` keeping 5 days beside rounds of the many-apps intake in that database:
    /// intake with and without pruning, lock waits, the database's size.
    Retention,
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
    /// A lagging vendor: the simulator handles requests one at a time on one loop, this many
    /// microseconds each, and counts a call as arriving when the loop takes it up. With the stuck
    /// preset, the calls sent while the released backlog is answered arrive late and bunched.
    #[arg(long, default_value_t = 0)]
    vendor_handling_us: u64,
    /// Console preset: write the trail into this database and keep it (a later run with the same
    /// name reuses it instead of writing it again). Retention preset: write the trail there and
    /// keep it (pruned) afterwards.
    #[arg(long)]
    console_database: Option<String>,
    /// Send the workers through PgBouncer in transaction mode at this server URL (no database:
    /// the run's is appended), with `postgres.pooler = "transaction"`. Without `--direct-url` the
    /// workers have no LISTEN connection (lanes poll every `postgres.poll_interval_ms`) and the
    /// bench migrates the database first. The bench's own counting stays direct.
    #[arg(long, value_name = "URL")]
    through_pooler: Option<String>,
    /// With `--through-pooler`: give the workers `postgres.direct_url` (the run's database, direct)
    /// for LISTEN and migrations.
    #[arg(long, requires = "through_pooler")]
    direct_url: bool,
    /// Write this many outcome events into the outbox before the workers start: the relay's
    /// drain rate (events/s with confirms) is then measured against a backlog, not against the
    /// rate verdicts happen to finish at.
    #[arg(long, default_value_t = 0)]
    outbox_backlog: usize,
}

pub(crate) async fn run(args: &BenchArgs) -> bouncer::cli::CliResult {
    bench_main(args).await.map_err(|e| bouncer::cli::CliError::failed(format!("bench failed: {e}")))
}

async fn bench_main(args: &BenchArgs) -> Result<(), String> {
    crate::testkit::ensure_services(&args.amqp, &args.postgres, args.through_pooler.as_deref()).await?;
    if args.preset == Preset::Console {
        return console::run(args).await;
    }
    if args.preset == Preset::Retention {
        return retention::run(args).await;
    }
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
    let mut report = run::run_workload(args, &w).await?;
    report.baseline_msgs_per_second = baseline_rate;
    report.ratio_to_baseline = baseline_rate.zip(report.intake_verdicts_per_second).map(|(b, i)| i / b);
    report.batched_baseline_msgs_per_second = batched_rate;
    report.ratio_to_batched_baseline = batched_rate.zip(report.intake_verdicts_per_second).map(|(b, i)| i / b);
    if args.json {
        println!("{}", serde_json::to_string(&report).map_err(|e| e.to_string())?);
    } else {
        print::report(&report).map_err(|e| e.to_string())?;
    }
    Ok(())
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
        Preset::Console => "console",
        Preset::Bans => "bans",
        Preset::Reentry => "reentry",
        Preset::Retention => "retention",
    }
}
