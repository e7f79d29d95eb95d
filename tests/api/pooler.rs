//! Behind PgBouncer in transaction mode (`postgres.pooler = "transaction"`): the same mixed
//! pipeline and console as over direct connections; migrations only through
//! `postgres.direct_url`, and without one a worker polls for work.

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{
    ApiClient, Apps, ConsoleProcess, EnvOptions, Route, SimControl, TestEnv, WorkerProcess, create_database,
    parse_prometheus, pg_admin_url, stderr, stdout, verdict,
};
use crate::web::{Browser, csrf_of, user};

/// Valid verdicts the mixed workload publishes (the duplicate counted once).
const VERDICTS: i64 = 33;
const MALFORMED: i64 = 4;

/// A verdict published three times, thirty plain ones over both vendors, one for a room that is
/// gone, one whose TRTC chunk holds a user id the vendor refuses, and four malformed messages; half
/// the calls fail with HTTP 502, so retry schedules are written and followed too (some twenty
/// calls: the chance that none fails is about one in a million).
async fn publish_the_mixed_workload(env: &TestEnv) {
    let (z, t) = (env.apps.zego[0].0, env.apps.trtc[0].0);
    let control = SimControl::new(&env.sim);
    control
        .set_faults(json!({"vendor": "zego", "app_id": z, "gone_rooms": ["closed-room"], "http_502_rate": 0.5}))
        .await;
    control.set_faults(json!({"vendor": "trtc", "app_id": t, "bad_users": ["bad-user"], "http_502_rate": 0.5})).await;
    let dup = verdict("dup", "zego", z, json!("room-a"), &["dup-1", "dup-2"]);
    let mut all: Vec<Value> = vec![dup.clone(), dup.clone(), dup];
    for i in 0..30 {
        let (vendor, app) = if i % 2 == 0 { ("zego", z) } else { ("trtc", t) };
        let users: Vec<String> = (0..3).map(|k| format!("p{i}-{k}")).collect();
        let refs: Vec<&str> = users.iter().map(String::as_str).collect();
        all.push(verdict(&format!("plain-{i}"), vendor, app, json!(format!("room-{}", i % 3)), &refs));
    }
    all.push(verdict("gone", "zego", z, json!("closed-room"), &["g-1"]));
    all.push(verdict("mixed", "trtc", t, json!("room-b"), &["good-0", "good-1", "good-2", "bad-user"]));
    env.publish_all(&all).await;
    for bad in
        [&b"{not json"[..], br#"{"verdict_id":"no-users","vendor":"zego","app_id":1,"room_id":"r"}"#, b"", br#"[1,2]"#]
    {
        env.publish(bad).await;
    }
}

/// Waits for the workload to end and checks every verdict's outcome, the duplicate's single
/// call, the dead letters, and that no quota went over its limit.
/// (On failure the caller's worker prints its log as it is dropped.)
async fn the_mixed_workload_ended_as_it_should(env: &TestEnv) {
    env.wait_for_count("SELECT count(*) FROM verdicts WHERE status <> 'pending'", VERDICTS, Duration::from_secs(60))
        .await;
    env.wait_for_count("SELECT count(*) FROM rejected_messages", MALFORMED, Duration::from_secs(30)).await;
    env.wait_for_dead_letters(MALFORMED as u32, Duration::from_secs(30)).await;
    let pool = env.pool().await;
    let kicks: Vec<(String, String, String)> =
        sqlx::query_as("SELECT verdict_id, user_id, status FROM kicks WHERE status <> 'kicked' ORDER BY 1, 2")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        kicks,
        [("gone".into(), "g-1".into(), "gone".into()), ("mixed".into(), "bad-user".into(), "failed".into())]
    );
    let kicked: i64 =
        sqlx::query_scalar("SELECT count(*) FROM kicks WHERE status = 'kicked'").fetch_one(&pool).await.unwrap();
    assert_eq!(kicked, 2 + 30 * 3 + 3, "every other user was kicked");
    let failed: Vec<String> =
        sqlx::query_scalar("SELECT verdict_id FROM verdicts WHERE status = 'failed'").fetch_all(&pool).await.unwrap();
    assert_eq!(failed, ["mixed"]);
    let deliveries: i32 =
        sqlx::query_scalar("SELECT deliveries FROM verdicts WHERE verdict_id = 'dup'").fetch_one(&pool).await.unwrap();
    assert_eq!(deliveries, 3);
    let retried: i64 = sqlx::query_scalar("SELECT count(*) FROM kick_attempts WHERE outcome = 'retry'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(retried > 0, "retries were recorded");
    pool.close().await;

    let requests = SimControl::new(&env.sim).requests().await;
    let kicked_dup = requests
        .iter()
        .filter(|r| r.http_status == 200 && r.rejection.is_none() && r.user_ids.iter().any(|u| u == "dup-1"))
        .count();
    assert_eq!(kicked_dup, 1, "a verdict delivered three times is kicked once");
    assert!(requests.iter().any(|r| r.http_status == 502), "the retry path ran");
    let stats = SimControl::new(&env.sim).stats().await;
    for (quota, q) in stats["quotas"].as_object().expect("quotas") {
        assert!(q["max_calls_in_1s"].as_u64() <= q["limit"].as_u64(), "{quota} went over: {q}");
    }
}

async fn mixed_pipeline(route: Route) -> TestEnv {
    let mut env = TestEnv::new(Apps::random(1, 1), EnvOptions::default()).await;
    env.route(route);
    publish_the_mixed_workload(&env).await;
    let worker = env.worker(); // migrates: directly, or through postgres.direct_url
    the_mixed_workload_ended_as_it_should(&env).await;
    // A LISTEN connection on the session URL: postgres.url directly, postgres.direct_url behind
    // the pooler.
    assert_eq!(listen_connected(&worker).await, 1.0);
    env
}

#[tokio::test(flavor = "multi_thread")]
async fn the_mixed_pipeline_ends_as_it_should_over_direct_connections() {
    mixed_pipeline(Route::Direct).await;
}

/// PostgreSQL's JIT prices Bouncer's by-key statements high enough to compile them (430 ms of
/// compiling for 1 ms of work, measured), so direct connections turn it off as they open.
#[tokio::test(flavor = "multi_thread")]
async fn bouncers_direct_connections_run_without_jit() {
    let env = TestEnv::new(Apps::random(1, 0), EnvOptions::default()).await;
    env.migrate_directly().await;
    let db = bouncer::audit::connect(&env.parsed_config().postgres, Duration::from_secs(10)).await.expect("connect");
    let jit: String = db.run(async |c| db.query_scalar("SHOW jit").fetch_one(c).await).await.expect("SHOW jit");
    assert_eq!(jit, "off");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_mixed_pipeline_and_the_console_work_through_a_transaction_pooler_with_listen_on_the_direct_url() {
    let mut env = mixed_pipeline(Route::PoolerWithDirectUrl).await;
    env.edit_config(|c| c.web.auth.users = vec![user("alice", "alice", "operator")]);
    let out = env.cli(&["check", "--timeout", "5"]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains("LISTEN/NOTIFY wake-ups and migrations on postgres.direct_url"), "{}", stdout(&out));
    assert!(stdout(&out).contains("postgres.direct_url: ok"), "{}", stdout(&out));

    // Every page reads through the pooler; a replay writes through it.
    let console = ConsoleProcess::start(&env.config.0).await;
    let browser = Browser::new(&console);
    for (path, shows) in [
        ("/", "Overview"),
        ("/verdicts", "plain-29"),
        ("/verdicts?status=failed", "mixed"),
        ("/verdicts?user=bad-user", "mixed"),
        ("/verdicts/mixed", "bad-user"),
        ("/verdicts/dup", "dup-2"),
        ("/rejected", "no-users"),
    ] {
        let (status, page) = browser.get("alice", path).await;
        assert_eq!(status, 200, "{path}: {page}");
        assert!(page.contains(shows), "{path} does not show {shows}: {page}");
    }
    SimControl::new(&env.sim).clear_faults().await;
    let _worker = env.worker();
    let (_, confirm) = browser.get("alice", "/verdicts/mixed/replay").await;
    assert_eq!(browser.post("alice", "/verdicts/mixed/replay", &[("csrf", &csrf_of(&confirm))], false).await, 303);
    env.wait_for_count("SELECT count(*) FROM verdicts WHERE status = 'done'", VERDICTS, Duration::from_secs(60)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn through_a_transaction_pooler_alone_migrations_are_refused_naming_postgres_direct_url_and_a_current_worker_polls()
 {
    let mut env = TestEnv::new(Apps::random(1, 1), EnvOptions::default()).await;
    env.route(Route::Pooler);
    let out = env.cli(&["migrate"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("postgres.direct_url"), "{}", stderr(&out));

    // A database with an outdated (here: no) schema: the worker refuses with the same message.
    create_database(&pg_admin_url(), &env.db.name).await;
    let mut outdated = env.worker();
    let status = outdated.wait_exit(Duration::from_secs(30)).expect("the worker refuses and exits");
    assert!(!status.success());
    assert!(outdated.log_text().contains("postgres.direct_url"), "{}", outdated.log_text());

    env.migrate_directly().await;
    let out = env.cli(&["check", "--timeout", "5"]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains("lanes poll for work every 250 ms"), "{}", stdout(&out));
    publish_the_mixed_workload(&env).await;
    let token = env.enable_api();
    let worker = env.worker();
    the_mixed_workload_ended_as_it_should(&env).await;
    assert!(worker.log_text().contains("lanes poll for work"), "{}", worker.log_text());
    assert_eq!(listen_connected(&worker).await, 0.0, "no LISTEN connection without a direct URL");

    // A ban recorded, checked and lifted through the pooler alone.
    let z = env.apps.zego[0].0;
    let mut banning = verdict("ban-through-pooler", "zego", z, json!("room-p"), &["p-banned"]);
    banning["ban"] = json!({"seconds": 600, "scope": "room"});
    env.publish_json(&banning).await;
    env.wait_for_count("SELECT count(*) FROM bans WHERE user_id = 'p-banned'", 1, Duration::from_secs(60)).await;
    let api = ApiClient::new(&worker, Some(&token));
    assert!(api.banned("zego", z, "p-banned", Some(("room-p", None))).await);
    assert!(!api.banned("zego", z, "p-banned", None).await);
    let lifted = api
        .post("/v1/bans/lift", &json!({"vendor": "zego", "app_id": z, "user_id": "p-banned", "reason": "test"}))
        .await;
    assert_eq!(lifted.body["lifted"], 1, "{lifted:?}");
    assert!(!api.banned("zego", z, "p-banned", Some(("room-p", None))).await);
}

/// The worker's `bouncer_listen_connected` gauge.
async fn listen_connected(worker: &WorkerProcess) -> f64 {
    let text = reqwest::get(format!("http://{}/metrics", worker.http_addr())).await.unwrap().text().await.unwrap();
    let samples = parse_prometheus(&text);
    samples
        .iter()
        .find(|(name, ..)| name == "bouncer_listen_connected")
        .map(|(.., v)| *v)
        .expect("the gauge is exported")
}
