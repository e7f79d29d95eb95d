//! Fault tests: the worker is killed, its broker connection is closed by force, its PostgreSQL is
//! restarted. They run one at a time (a lock, below) and touch only their own resources: the
//! worker's own connections (by name) and a private PostgreSQL cluster.

mod api;
mod outcomes;
mod pacing;
mod private_pg;
mod private_rabbit;
mod reentry;
mod replicas;
mod rollups;

use std::time::Duration;

use serde_json::json;

use bouncer_tools::testkit as helpers;
use helpers::{Apps, EnvOptions, SimControl, TestEnv, verdict};

/// One fault test at a time: they load the machine and restart things.
pub(crate) static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub(crate) async fn publish_many(env: &TestEnv, n: u32) {
    for i in 0..n {
        let v = if i % 2 == 0 {
            verdict(
                &format!("c-{i}"),
                "zego",
                env.apps.zego[(i as usize / 2) % env.apps.zego.len()].0,
                json!(format!("r{}", i % 9)),
                &[&format!("u{i}"), &format!("w{}", i % 50)],
            )
        } else {
            verdict(&format!("c-{i}"), "trtc", env.apps.trtc[0].0, json!(i % 9 + 1), &[&format!("u{i}")])
        };
        env.publish_json(&v).await;
    }
}

pub(crate) async fn count(env: &TestEnv, sql: &'static str) -> i64 {
    let pool = env.pool().await;
    let n = sqlx::query_scalar(sql).fetch_one(&pool).await.unwrap_or(-1);
    pool.close().await;
    n
}

pub(crate) async fn wait_until_done_at_least(env: &TestEnv, n: i64) {
    let started = std::time::Instant::now();
    while count(env, "SELECT count(*) FROM verdicts WHERE status = 'done'").await < n {
        assert!(started.elapsed() < Duration::from_secs(60), "the run never got going");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every verdict terminal and every user kicked; nothing left in the queue.
pub(crate) async fn assert_all_enforced(env: &TestEnv, n: i64) {
    env.wait_for_count("SELECT count(*) FROM verdicts WHERE status = 'done'", n, Duration::from_secs(120)).await;
    assert_eq!(count(env, "SELECT count(*) FROM kicks WHERE status <> 'kicked'").await, 0);
    let started = std::time::Instant::now();
    while env.queue_depth("").await > 0 && started.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(env.queue_depth("").await, 0, "messages left behind");
    assert_eq!(env.queue_depth(".rejected").await, 0, "nothing valid was dead-lettered");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_killed_mid_run_loses_nothing_once_another_starts() {
    let _serial = SERIAL.lock().await;
    let env = TestEnv::new(Apps::random(3, 1), EnvOptions::default()).await;
    publish_many(&env, 2000).await;
    let mut first = env.worker();
    wait_until_done_at_least(&env, 300).await;
    first.signal("-KILL");
    first.wait_exit(Duration::from_secs(5)).expect("killed");
    let done_before = count(&env, "SELECT count(*) FROM verdicts WHERE status = 'done'").await;
    assert!(done_before < 2000, "the kill came mid-run");

    let _second = env.worker();
    assert_all_enforced(&env, 2000).await;
    // A user may have been kicked twice (called before the crash, recorded after it): every such
    // double is visible in kick_attempts, never hidden.
    let ok_calls_per_kick: i64 = count(
        &env,
        "SELECT count(*) FROM kicks k WHERE NOT EXISTS (SELECT 1 FROM kick_attempts a WHERE a.outcome = 'ok'
           AND k.verdict_id = ANY(a.verdict_ids) AND k.user_id = ANY(a.user_ids))",
    )
    .await;
    assert_eq!(ok_calls_per_kick, 0, "every kick has its ok call on record");
    let stats = SimControl::new(&env.sim).stats().await;
    for (quota, q) in stats["quotas"].as_object().unwrap() {
        assert!(q["max_calls_in_1s"].as_u64() <= q["limit"].as_u64(), "{quota}: {q}");
    }
}

/// No sliding second at the simulator held more calls than a quota's limit, and the vendor never
/// refused a call for rate.
async fn assert_within_every_limit(env: &TestEnv) {
    let stats = SimControl::new(&env.sim).stats().await;
    for (quota, q) in stats["quotas"].as_object().expect("quotas") {
        assert!(q["max_calls_in_1s"].as_u64() <= q["limit"].as_u64(), "{quota} went over: {q}");
        assert_eq!(q["rate_limited"], 0, "{quota} was refused for rate: {q}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_killed_three_times_and_restarted_at_once_then_a_postgres_crash_never_go_over_a_vendor_limit() {
    let _serial = SERIAL.lock().await;
    let pg = private_pg::PrivatePg::start();
    // The default allowance, a vendor failing one call in ten and lagging behind its answers.
    let default = bouncer::config::Config::default().pacing.jitter.as_millis() as u64;
    let mut env = TestEnv::new(Apps::random(1, 1), EnvOptions { jitter_ms: default, ..EnvOptions::default() }).await;
    env.use_database(&pg.url("bouncer_chaos"));
    env.sim.sim.set_handling(Duration::from_micros(500));
    SimControl::new(&env.sim).set_faults(json!({"http_502_rate": 0.1})).await;
    publish_many(&env, 3000).await;
    let mut worker = env.worker();
    let mut done = 0;
    for round in 0..3 {
        // Each worker gets going (its own calls finish verdicts) before it is killed mid-backlog;
        // the next starts at once, while the dead one's lease still runs.
        wait_until_done_at_least(&env, done + 150).await;
        worker.signal("-KILL");
        worker.wait_exit(Duration::from_secs(5)).expect("killed");
        done = count(&env, "SELECT count(*) FROM verdicts WHERE status = 'done'").await;
        assert!(done < 3000, "kill {round} came mid-backlog");
        worker = env.worker();
    }
    wait_until_done_at_least(&env, done + 150).await;
    pg.stop();
    tokio::time::sleep(Duration::from_secs(2)).await;
    pg.start_again();
    assert_all_enforced(&env, 3000).await;
    assert!(worker.child.try_wait().unwrap().is_none(), "the last worker kept running");
    assert_within_every_limit(&env).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_forced_broker_disconnect_is_survived_without_help() {
    let _serial = SERIAL.lock().await;
    let env = TestEnv::new(Apps::random(2, 1), EnvOptions::default()).await;
    publish_many(&env, 1500).await;
    let mut worker = env.worker();
    wait_until_done_at_least(&env, 200).await;
    let closed = close_connections_named(&env.connection_name);
    assert!(closed >= 1, "found the worker's connection");
    assert_all_enforced(&env, 1500).await;
    assert!(worker.child.try_wait().unwrap().is_none(), "the worker kept running");
    assert!(worker.log_text().contains("CONNECTION_FORCED"), "the worker saw its connection closed");
    assert_eq!(connections_named(&env.connection_name).len(), 1, "and is connected again under its name");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_postgres_restart_mid_run_settles_nothing_without_its_record() {
    let _serial = SERIAL.lock().await;
    let pg = private_pg::PrivatePg::start();
    // A small prefetch, so most of what arrives during the outage stays visible in the queue.
    let mut env = TestEnv::new(Apps::random(2, 1), EnvOptions { prefetch: 50, ..EnvOptions::default() }).await;
    env.use_database(&pg.url("bouncer_faults"));
    publish_many(&env, 1500).await;
    let mut worker = env.worker();
    wait_until_done_at_least(&env, 200).await;
    pg.stop();
    // Verdicts that arrive while the database is away cannot be recorded: none may be acked.
    for i in 0..300u32 {
        let v = verdict(&format!("late-{i}"), "zego", env.apps.zego[0].0, json!("late-room"), &[&format!("l{i}")]);
        env.publish_json(&v).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let backlog_while_down = env.queue_depth("").await;
    pg.start_again();
    assert_all_enforced(&env, 1800).await;
    assert!(worker.child.try_wait().unwrap().is_none(), "the worker kept running");
    assert!(backlog_while_down >= 250, "what arrived during the outage stayed queued: {backlog_while_down}");
    // Which part meets the outage first varies (intake recording, the elector's heartbeat, the
    // LISTEN connection); each logs it in its own words.
    let log = worker.log_text();
    let said = ["cannot", "heartbeat failed", "could not confirm ownership", "LISTEN connection lost"];
    assert!(said.iter().any(|s| log.contains(s)), "the outage was logged");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_mid_run_exits_cleanly_and_a_second_worker_finishes() {
    let _serial = SERIAL.lock().await;
    let env = TestEnv::new(Apps::random(2, 1), EnvOptions { grace_secs: 5, ..EnvOptions::default() }).await;
    publish_many(&env, 2000).await;
    let mut first = env.worker();
    wait_until_done_at_least(&env, 300).await;
    first.signal("-TERM");
    let status = first.wait_exit(Duration::from_secs(15)).expect("exited within the grace period");
    assert!(status.success(), "{status:?}");
    assert!(first.log_text().contains("stopped"), "shutdown was orderly");
    let left = count(&env, "SELECT count(*) FROM verdicts WHERE status = 'done'").await;
    assert!(left < 2000, "stopped mid-run");
    let _second = env.worker();
    assert_all_enforced(&env, 2000).await;
}

/// The broker's ids of connections with this client-provided name.
fn connections_named(name: &str) -> Vec<String> {
    let out = std::process::Command::new("rabbitmqctl")
        .args(["list_connections", "pid", "client_properties", "-q", "--no-table-headers"])
        .output()
        .expect("rabbitmqctl (installed with rabbitmq-server) lists connections");
    let needle = format!("{{\"connection_name\",\"{name}\"}}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(&needle))
        .filter_map(|l| l.split('\t').next().map(str::to_owned))
        .collect()
}

/// Closes this test worker's broker connections (and no one else's).
pub(crate) fn close_connections_named(name: &str) -> usize {
    let pids = connections_named(name);
    for pid in &pids {
        let status = std::process::Command::new("rabbitmqctl")
            .args(["close_connection", pid, "fault test: forced close"])
            .status()
            .expect("rabbitmqctl close_connection");
        assert!(status.success());
    }
    pids.len()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_demo_runs_green_in_under_a_minute() {
    let _serial = SERIAL.lock().await;
    let name = format!("demo_test_{}", uuid::Uuid::new_v4().simple());
    let started = std::time::Instant::now();
    let out = helpers::bouncer(&["demo", "--name", &name], &[]);
    let took = started.elapsed();
    let text = helpers::stdout(&out);
    // The demo keeps its database for exploring; the test drops it.
    let mut db = helpers::TestDb::named();
    db.name = format!("bouncer_{name}");
    drop(db);
    assert!(out.status.success(), "{text}\n{}", helpers::stderr(&out));
    assert!(took < Duration::from_secs(60), "took {took:?}");
    for needle in [
        "400/400 verdicts finished",
        "audit summary",
        "malformed messages recorded and dead-lettered: 8",
        "and is kicked again",
        "re-entered room live-ban",
        "demo finished",
    ] {
        assert!(text.contains(needle), "demo output lacks {needle:?}:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tiny_bench_runs_and_reports_stable_json() {
    let _serial = SERIAL.lock().await;
    let out = helpers::bouncer(&["bench", "--preset", "backlog", "--verdicts", "60", "--apps", "2", "--json"], &[]);
    assert!(out.status.success(), "{}", helpers::stderr(&out));
    let report: serde_json::Value = serde_json::from_str(helpers::stdout(&out).trim()).expect("one JSON object");
    assert_eq!(report["preset"], "backlog");
    assert_eq!(report["verdicts"], 60);
    assert_eq!(report["failed_verdicts"], 0);
    for key in ["wall_seconds", "verdicts_per_second", "kicks_per_second", "worker_cpu_seconds", "worker_peak_rss_mib"]
    {
        assert!(report[key].as_f64().is_some_and(|v| v > 0.0), "{key}: {report}");
    }
    assert_eq!(report["publish_to_vendor_call"]["count"], 60);
    let quotas = report["quotas"].as_array().expect("quotas");
    assert_eq!(quotas.len(), 2, "one ZEGO and one TRTC quota: {report}");
    for q in quotas {
        assert!(q["max_calls_in_any_1s"].as_u64() <= q["limit_per_second"].as_u64(), "{q}");
        assert!(q["calls"].as_u64().is_some_and(|c| c > 0));
    }
    let baseline = helpers::bouncer(&["bench", "--baseline", "--verdicts", "200", "--json"], &[]);
    assert!(baseline.status.success(), "{}", helpers::stderr(&baseline));
    let b: serde_json::Value = serde_json::from_str(helpers::stdout(&baseline).trim()).expect("JSON");
    assert!(b["msgs_per_second"].as_f64().is_some_and(|r| r > 0.0), "{b}");
}
