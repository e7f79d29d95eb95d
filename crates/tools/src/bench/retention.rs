//! `bouncer bench --preset retention`: retention at a large platform's volume, beside intake.
//!
//! A trail of 7 days × N verdicts a day (N = 1,000,000, or `--verdicts N`) is written straight into
//! PostgreSQL as the console preset writes its own (1–5 users each, one vendor call each, 2 %
//! failed). Then rounds of the many-apps intake (10,000 verdicts of 200 apps, a real `bouncer run`
//! and simulator each) run in that same database: three before pruning, then pairs of rounds while
//! a real `bouncer prune` with `[retention] verdicts_days = 5` removes the two oldest days — in one
//! round of each pair it runs, in the other it is stopped (SIGSTOP) between two of its batches —
//! and three after. Throughout, a sampler reads `pg_locks` every 10 ms for anyone in the database
//! waiting on a lock: the longest wait of a statement not pruning's is the figure (pruning itself
//! gives up after 100 ms). The database's size is read after the load, after pruning and after the
//! last rounds.
//!
//! Why pairs: "intake's rate without pruning" must be read on the same tables, the same cache and
//! the same host minute as the rate with it. Rounds before pruning run on tables fresh from a
//! 14 GB load and rounds after it on vacuumed ones, and a shared 2-core host's speed drifts by
//! twofold over the half hour between them; a stopped pruner changes only the one thing measured.
//! The order within a pair alternates, so a drift during the pruning favours neither side.
//!
//! The load writes with triggers off (`session_replication_role = replica`): the trail's rollup
//! deltas would otherwise be folded by the rounds' worker while it is measured, which is not what a
//! deployment pruning its 90th day meets. Rollups are not what this preset measures.

use std::collections::HashMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use bouncer::config::Config;
use serde::Serialize;
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection};
use tokio_util::sync::CancellationToken;

use super::report::Machine;
use super::workload::workload;
use super::{BenchArgs, console};
use crate::testkit::{bouncer_command, drop_database};

const DAYS: i64 = 7;
const KEEP_DAYS: u32 = 5;
const DEFAULT_PER_DAY: usize = 1_000_000;
const ROUNDS_BESIDE: usize = 3;
/// Pairs of rounds (pruner running, pruner stopped) at most; a prune that takes longer goes on
/// alone.
const MAX_PAIRS: usize = 40;
/// The pruning process's `application_name`: how the sampler tells its waits from intake's.
const PRUNER: &str = "bouncer-bench-prune";

/// The trail: `$1` verdicts over the last `$2` days, evenly, the newest now; 2 % failed, none
/// pending (the rounds' workers own other apps, so a pending trail verdict would stay so).
const GEN: &str = "CREATE TEMP TABLE gen AS
     SELECT g,
            CASE WHEN g % 3 = 0 THEN 'trtc' ELSE 'zego' END AS vendor,
            1000 + (g * 7) % 20 AS app_id,
            'room-' || (g * 13) % 5000 AS room_id,
            ARRAY(SELECT 'user-' || ((g::bigint * 7919 + i * 104729) % 300000)
                  FROM generate_series(1, 1 + g % 5) i) AS user_ids,
            now() - interval '1 day' * $2::float8 * (($1 - g)::float8 / $1) AS at,
            CASE WHEN g % 50 = 7 THEN 'failed' ELSE 'done' END AS status
     FROM generate_series(1, $1::int) g";

#[derive(Serialize, Default)]
struct LockWaits {
    /// Longest wait seen of a statement not pruning's (intake, enforcement, the relay...).
    others_max_ms: f64,
    /// Distinct waits of those over 100 ms: before pruning, during, after.
    others_over_100ms: [usize; 3],
    /// The longest of those waits before pruning, during, after (ms).
    others_max_ms_by_phase: [f64; 3],
    /// The statement that waited longest (its first 200 characters), the lock it waited for and
    /// the statement of the backend that held it.
    others_worst: Option<String>,
    /// Longest wait seen of pruning's own statements (they give up at 100 ms).
    pruning_max_ms: f64,
    samples: u64,
}

#[derive(Serialize)]
struct RetentionReport {
    preset: &'static str,
    machine: Machine,
    verdicts_per_day: usize,
    days: i64,
    keep_days: u32,
    load_seconds: f64,
    /// Verdicts older than the window when pruning started, and after.
    past_window_before: i64,
    past_window_after: i64,
    /// Time the pruner ran (its stopped rounds not counted), and from its start to its end.
    prune_seconds: f64,
    prune_wall_seconds: f64,
    prune_exit: String,
    /// Intake (verdicts/s) of each many-apps round.
    intake_before: Vec<f64>,
    /// The pairs' rounds with the pruner running, and with it stopped, in pair order.
    intake_during: Vec<f64>,
    intake_paused: Vec<f64>,
    intake_after: Vec<f64>,
    /// Median of the rounds with the pruner running over median of those with it stopped.
    intake_ratio: Option<f64>,
    /// Median over the pairs of (running / stopped).
    intake_ratio_pairs: Option<f64>,
    /// Median with the pruner running over median of the rounds before and after pruning (the
    /// earlier reading, kept for comparison).
    intake_ratio_beside: Option<f64>,
    lock_waits: LockWaits,
    size_after_load_mib: f64,
    size_after_prune_mib: f64,
    size_after_rounds_mib: f64,
}

pub(super) async fn run(args: &BenchArgs) -> Result<(), String> {
    let per_day = args.verdicts.unwrap_or(DEFAULT_PER_DAY);
    let (id, database, mut file) = console::trail_database(args, "retention");
    let server = args.postgres.trim_end_matches('/');
    file.retention.verdicts_days = KEEP_DAYS;
    let text = file.to_toml();
    let config = Config::from_toml(&text).map_err(|e| e.to_string())?;
    bouncer::audit::migrate(&config.postgres, Duration::from_secs(10)).await.map_err(|e| e.to_string())?;
    let options: PgConnectOptions = format!("{server}/{database}").parse().map_err(|e: sqlx::Error| e.to_string())?;
    let mut conn =
        PgConnection::connect_with(&options.clone().disable_statement_logging()).await.map_err(|e| e.to_string())?;

    let total = per_day * DAYS as usize;
    eprintln!("bench: writing {DAYS} days × {per_day} verdicts into {database}");
    let started = Instant::now();
    sqlx::raw_sql("SET session_replication_role = replica").execute(&mut conn).await.map_err(|e| e.to_string())?;
    sqlx::query(GEN)
        .bind(total as i64)
        .bind(DAYS as f64)
        .execute(&mut conn)
        .await
        .map_err(|e| format!("{e}\n{GEN}"))?;
    // The console preset's inserts from `gen`: verdicts, kicks, vendor calls, rejected messages, replays.
    for step in &console::LOAD[1..] {
        sqlx::query(sqlx::AssertSqlSafe(*step)).execute(&mut conn).await.map_err(|e| format!("{e}\n{step}"))?;
    }
    for step in ["RESET session_replication_role", "DROP TABLE gen", "VACUUM ANALYZE"] {
        sqlx::raw_sql(step).execute(&mut conn).await.map_err(|e| format!("{step}: {e}"))?;
    }
    let load_seconds = started.elapsed().as_secs_f64();
    let size_after_load_mib = size_mib(&mut conn).await?;
    eprintln!("bench: written in {load_seconds:.0} s; {size_after_load_mib:.0} MiB");

    let stop = CancellationToken::new();
    let phase = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let sampler = tokio::spawn(sample_lock_waits(options.clone(), database.clone(), stop.clone(), phase.clone()));
    let mut w = workload(args);
    w.database = Some(database.clone());
    let round = async |label: &str| -> Result<f64, String> {
        let r = super::run::run_workload(args, &w).await?;
        let rate = r.intake_verdicts_per_second.unwrap_or(0.0);
        eprintln!("bench: {label} round: intake {rate:.0} verdicts/s");
        Ok(rate)
    };
    let mut intake_before = Vec::new();
    for _ in 0..ROUNDS_BESIDE {
        intake_before.push(round("before pruning").await?);
    }

    let past_window = format!("SELECT count(*) FROM verdicts WHERE received_at < now() - interval '{KEEP_DAYS} days'");
    let past_window_before: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(past_window.clone()))
        .fetch_one(&mut conn)
        .await
        .map_err(|e| e.to_string())?;
    let config_path = std::env::temp_dir().join(format!("bouncer-bench-retention-{id}.toml"));
    std::fs::write(&config_path, &text).map_err(|e| e.to_string())?;
    eprintln!("bench: bouncer prune (verdicts_days = {KEEP_DAYS}) beside intake rounds");
    let prune_started = Instant::now();
    phase.store(1, std::sync::atomic::Ordering::Relaxed);
    let mut pruner = tokio::process::Command::from(bouncer_command())
        .args(["prune", "--config", &config_path.to_string_lossy()])
        .env("PGAPPNAME", PRUNER)
        .env("BOUNCER_LOG", "info")
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("bouncer prune: {e}"))?;
    let pid = pruner.id().ok_or("bouncer prune exited at once")?;
    let mut intake_during = Vec::new();
    let mut intake_paused = Vec::new();
    let mut stopped_for = Duration::ZERO;
    let mut exit = None;
    'pairs: while intake_during.len() < MAX_PAIRS {
        let pair = intake_during.len();
        // Alternate the order: even pairs run first, odd pairs stop first.
        for running in [pair % 2 == 0, pair % 2 == 1] {
            if running {
                intake_during.push(round("during pruning").await?);
            } else {
                let stopped = Instant::now();
                if !stop_between_batches(&mut conn, pid).await? {
                    break 'pairs;
                }
                let rate = round("pruning stopped").await;
                signal(pid, "CONT")?;
                stopped_for += stopped.elapsed();
                intake_paused.push(rate?);
            }
            if let Some(status) = pruner.try_wait().map_err(|e| e.to_string())? {
                exit = Some(status);
                break 'pairs;
            }
        }
    }
    // A pair the pruner's end cut short has one round only: compare whole pairs.
    let whole = intake_during.len().min(intake_paused.len());
    intake_during.truncate(whole);
    intake_paused.truncate(whole);
    let exit = match exit {
        Some(s) => s,
        None => pruner.wait().await.map_err(|e| e.to_string())?,
    };
    let prune_wall_seconds = prune_started.elapsed().as_secs_f64();
    let prune_seconds = prune_wall_seconds - stopped_for.as_secs_f64();
    let _ = std::fs::remove_file(&config_path);
    let past_window_after: i64 =
        sqlx::query_scalar(sqlx::AssertSqlSafe(past_window)).fetch_one(&mut conn).await.map_err(|e| e.to_string())?;
    let size_after_prune_mib = size_mib(&mut conn).await?;
    eprintln!("bench: pruned in {prune_seconds:.0} s ({exit}); {past_window_after} verdicts left past the window");

    phase.store(2, std::sync::atomic::Ordering::Relaxed);
    let mut intake_after = Vec::new();
    for _ in 0..ROUNDS_BESIDE {
        intake_after.push(round("after pruning").await?);
    }
    stop.cancel();
    let lock_waits = sampler.await.map_err(|e| e.to_string())??;
    let size_after_rounds_mib = size_mib(&mut conn).await?;
    conn.close().await.map_err(|e| e.to_string())?;
    if args.console_database.is_none() {
        drop_database(&format!("{server}/postgres"), &database).await;
    }

    let without: Vec<f64> = intake_before.iter().chain(&intake_after).copied().collect();
    let intake_ratio = median(&intake_during).zip(median(&intake_paused)).map(|(d, p)| d / p);
    let pairs: Vec<f64> = intake_during.iter().zip(&intake_paused).map(|(d, p)| d / p).collect();
    let intake_ratio_pairs = median(&pairs);
    let intake_ratio_beside = median(&intake_during).zip(median(&without)).map(|(d, b)| d / b);
    let report = RetentionReport {
        preset: "retention",
        machine: Machine::this(),
        verdicts_per_day: per_day,
        days: DAYS,
        keep_days: KEEP_DAYS,
        load_seconds,
        past_window_before,
        past_window_after,
        prune_seconds,
        prune_wall_seconds,
        prune_exit: exit.to_string(),
        intake_before,
        intake_during,
        intake_paused,
        intake_after,
        intake_ratio,
        intake_ratio_pairs,
        intake_ratio_beside,
        lock_waits,
        size_after_load_mib,
        size_after_prune_mib,
        size_after_rounds_mib,
    };
    if args.json {
        println!("{}", serde_json::to_string(&report).map_err(|e| e.to_string())?);
    } else {
        print(&report);
    }
    if !exit.success() {
        return Err(format!("bouncer prune failed ({exit})"));
    }
    Ok(())
}

fn print(r: &RetentionReport) {
    let rates = |v: &[f64]| v.iter().map(|x| format!("{x:.0}")).collect::<Vec<_>>().join(", ");
    println!(
        "retention over {} days × {} verdicts ({} CPUs, {}); written in {:.0} s",
        r.days, r.verdicts_per_day, r.machine.cpus, r.machine.os, r.load_seconds
    );
    println!(
        "bouncer prune, verdicts_days = {}: {} verdicts past the window → {} in {:.0} s of running ({:.0} s with its stops)",
        r.keep_days, r.past_window_before, r.past_window_after, r.prune_seconds, r.prune_wall_seconds
    );
    println!(
        "many-apps intake, verdicts/s: before [{}], pruning running [{}], pruning stopped [{}], after [{}]",
        rates(&r.intake_before),
        rates(&r.intake_during),
        rates(&r.intake_paused),
        rates(&r.intake_after)
    );
    let pct = |x: Option<f64>| x.map_or_else(|| "n/a".to_owned(), |x| format!("{:.0} %", x * 100.0));
    println!(
        "intake while pruning: {} of its rate with pruning stopped (medians; median of the {} pairs' ratios {}); {} of the rounds before and after",
        pct(r.intake_ratio),
        r.intake_paused.len(),
        pct(r.intake_ratio_pairs),
        pct(r.intake_ratio_beside)
    );
    let l = &r.lock_waits;
    println!(
        "lock waits ({} samples, every 10 ms): others' longest {:.0} ms (before / during / after pruning: {:.0} / {:.0} / {:.0} ms; over 100 ms: {} / {} / {}){}; pruning's longest {:.0} ms",
        l.samples,
        l.others_max_ms,
        l.others_max_ms_by_phase[0],
        l.others_max_ms_by_phase[1],
        l.others_max_ms_by_phase[2],
        l.others_over_100ms[0],
        l.others_over_100ms[1],
        l.others_over_100ms[2],
        l.others_worst.as_deref().map(|q| format!(" in: {q}")).unwrap_or_default(),
        l.pruning_max_ms
    );
    println!(
        "database size: {:.0} MiB after the load, {:.0} MiB after pruning, {:.0} MiB after the last rounds",
        r.size_after_load_mib, r.size_after_prune_mib, r.size_after_rounds_mib
    );
}

/// Stops the pruner between two of its batches: SIGSTOP, wait for the statement it had sent to
/// finish on the server, and if that left it inside a transaction (its locks held for the whole
/// round), let it go on a moment and try again. `false` when it has exited meanwhile.
async fn stop_between_batches(conn: &mut PgConnection, pid: u32) -> Result<bool, String> {
    loop {
        if !signal(pid, "STOP")? {
            return Ok(false);
        }
        let settled = Instant::now();
        loop {
            let states: Vec<String> = sqlx::query_scalar(
                "SELECT coalesce(state, '') FROM pg_stat_activity WHERE application_name = $1 AND pid <> pg_backend_pid()",
            )
            .bind(PRUNER)
            .fetch_all(&mut *conn)
            .await
            .map_err(|e| e.to_string())?;
            if states.iter().all(|s| s == "idle") {
                return Ok(true);
            }
            if states.iter().all(|s| s != "active") || settled.elapsed() > Duration::from_secs(120) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if !signal(pid, "CONT")? {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `kill -SIG pid`; `false` when the process is gone.
fn signal(pid: u32, sig: &str) -> Result<bool, String> {
    let status = std::process::Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .stderr(Stdio::null())
        .status()
        .map_err(|e| format!("kill -{sig}: {e}"))?;
    Ok(status.success())
}

fn median(v: &[f64]) -> Option<f64> {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => None,
        n if n % 2 == 1 => Some(v[n / 2]),
        n => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

async fn size_mib(conn: &mut PgConnection) -> Result<f64, String> {
    let bytes: i64 = sqlx::query_scalar("SELECT pg_database_size(current_database())")
        .fetch_one(conn)
        .await
        .map_err(|e| e.to_string())?;
    Ok(bytes as f64 / (1024.0 * 1024.0))
}

/// One wait, as the samples saw it.
struct SeenWait {
    /// The longest it was seen to last.
    ms: f64,
    /// A statement of the pruning process.
    pruning: bool,
    /// The statement, the lock and the holder's statement.
    what: String,
    /// 0 before pruning, 1 during, 2 after.
    phase: usize,
}

/// Every 10 ms, who in `database` waits on a lock and since when (`pg_locks.waitstart`); one wait
/// is one (pid, waitstart), its length the longest seen of it.
async fn sample_lock_waits(
    options: PgConnectOptions,
    database: String,
    stop: CancellationToken,
    phase: std::sync::Arc<std::sync::atomic::AtomicUsize>,
) -> Result<LockWaits, String> {
    let mut conn = PgConnection::connect_with(&options.disable_statement_logging()).await.map_err(|e| e.to_string())?;
    type Wait = (i32, chrono::DateTime<chrono::Utc>, f64, String, String);
    let mut waits: HashMap<(i32, chrono::DateTime<chrono::Utc>), SeenWait> = HashMap::new();
    let mut samples = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    while !stop.is_cancelled() {
        tick.tick().await;
        let rows: Vec<Wait> = sqlx::query_as(
            "SELECT l.pid, l.waitstart, extract(epoch FROM clock_timestamp() - l.waitstart)::float8 * 1000,
                    coalesce(a.application_name, ''),
                    left(coalesce(a.query, ''), 200) || ' [waits for ' || l.locktype || ' ' || l.mode
                    || coalesce(' on ' || l.relation::regclass::text, '') || ' held by: '
                    || coalesce((SELECT left(b.query, 120) FROM pg_stat_activity b
                                 WHERE b.pid = (pg_blocking_pids(l.pid))[1]), '?') || ']'
             FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
             WHERE NOT l.granted AND l.waitstart IS NOT NULL AND a.datname = $1",
        )
        .bind(&database)
        .fetch_all(&mut conn)
        .await
        .map_err(|e| format!("sampling pg_locks: {e}"))?;
        samples += 1;
        let now = phase.load(std::sync::atomic::Ordering::Relaxed).min(2);
        for (pid, since, ms, app, query) in rows {
            let e = waits.entry((pid, since)).or_insert(SeenWait {
                ms: 0.0,
                pruning: app == PRUNER,
                what: query,
                phase: now,
            });
            e.ms = e.ms.max(ms);
        }
    }
    let _ = conn.close().await;
    let mut out = LockWaits { samples, ..LockWaits::default() };
    for SeenWait { ms, pruning, what: query, phase } in waits.into_values() {
        if pruning {
            out.pruning_max_ms = out.pruning_max_ms.max(ms);
            continue;
        }
        if ms > 100.0 {
            out.others_over_100ms[phase] += 1;
        }
        out.others_max_ms_by_phase[phase] = out.others_max_ms_by_phase[phase].max(ms);
        if ms > out.others_max_ms {
            out.others_max_ms = ms;
            out.others_worst = Some(query.split_whitespace().collect::<Vec<_>>().join(" "));
        }
    }
    Ok(out)
}
