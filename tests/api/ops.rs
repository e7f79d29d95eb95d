//! Operating Bouncer: audit, replay and kick from the CLI, metrics, readiness and logs.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{
    Apps, CuttableProxy, EnvOptions, SimControl, TestEnv, amqp_url, metric_sum, parse_prometheus, stderr, stdout,
    verdict,
};

type Pairs = BTreeSet<(String, String)>;

fn pairs_from_json(out: &str) -> Pairs {
    out.lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("JSON line does not parse ({e}): {l}"));
            (v["verdict_id"].as_str().unwrap().to_owned(), v["user_id"].as_str().unwrap().to_owned())
        })
        .collect()
}

fn pairs_from_csv(out: &str) -> Pairs {
    let mut r = csv::Reader::from_reader(out.as_bytes());
    let headers = r.headers().expect("CSV header").clone();
    let vi = headers.iter().position(|h| h == "verdict_id").expect("verdict_id column");
    let ui = headers.iter().position(|h| h == "user_id").expect("user_id column");
    r.records()
        .map(|rec| {
            let rec = rec.expect("CSV record parses");
            (rec[vi].to_owned(), rec[ui].to_owned())
        })
        .collect()
}

async fn pairs_from_sql(pool: &sqlx::PgPool, sql_where: &str) -> Pairs {
    let sql = format!("SELECT verdict_id, user_id FROM audit_log WHERE {sql_where}");
    sqlx::query_as::<_, (String, String)>(sqlx::AssertSqlSafe(sql)).fetch_all(pool).await.unwrap().into_iter().collect()
}

/// A run with every kind of outcome: kicked, gone, a failed user, a wrong secret, malformed input.
async fn mixed_run() -> (TestEnv, crate::helpers::WorkerProcess) {
    let opts = EnvOptions { deadline_secs: 4, retry_max_ms: 300, ..EnvOptions::default() };
    let mut env = TestEnv::new(Apps::random(3, 1), opts).await;
    let (z0, z1, z2, t0) = (env.apps.zego[0].0, env.apps.zego[1].0, env.apps.zego[2].0, env.apps.trtc[0].0);
    env.edit_config(|c| c.zego[2].server_secret = Some("wrong-secret-0123456789".into()));
    let control = SimControl::new(&env.sim);
    control.set_faults(json!({"vendor": "zego", "app_id": z1, "gone_rooms": ["closed-room"]})).await;
    control.set_faults(json!({"vendor": "trtc", "app_id": t0, "bad_users": ["evil"]})).await;
    for i in 0..20 {
        let room = if i % 2 == 0 { "a" } else { "b" };
        env.publish_json(&verdict(&format!("z0-{i}"), "zego", z0, json!(room), &[&format!("u{}", i % 6), "shared"]))
            .await;
    }
    for i in 0..5 {
        env.publish_json(&verdict(&format!("z1-gone-{i}"), "zego", z1, json!("closed-room"), &[&format!("g{i}")]))
            .await;
        env.publish_json(&verdict(&format!("z1-open-{i}"), "zego", z1, json!("open"), &[&format!("o{i}")])).await;
    }
    env.publish_json(&verdict("z2-wrong-secret", "zego", z2, json!("x"), &["w1"])).await;
    for i in 0..4 {
        env.publish_json(&verdict(&format!("t-{i}"), "trtc", t0, json!(9), &[&format!("t{i}")])).await;
    }
    env.publish_json(&verdict("t-evil", "trtc", t0, json!(9), &["t9", "evil"])).await;
    for bad in [&b"nope"[..], b"{}", b"[1]"] {
        env.publish(bad).await;
    }
    let worker = env.worker();
    env.wait_for_count("SELECT count(*) FROM verdicts WHERE status <> 'pending'", 36, Duration::from_secs(60)).await;
    (env, worker)
}

#[tokio::test(flavor = "multi_thread")]
async fn after_a_mixed_run_audit_metrics_and_logs_tell_the_same_story() {
    let (env, worker) = mixed_run().await;
    let pool = env.pool().await;
    let statuses: Vec<(String, i64)> =
        sqlx::query_as("SELECT status, count(*) FROM kicks GROUP BY 1 ORDER BY 1").fetch_all(&pool).await.unwrap();
    let kinds: Vec<&str> = statuses.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(kinds, ["failed", "gone", "kicked"], "the run has every outcome");

    let future = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let z1 = env.apps.zego[1].0.to_string();
    let cases: Vec<(Vec<&str>, String)> = vec![
        (vec![], "true".into()),
        (vec!["--verdict", "z0-3"], "verdict_id = 'z0-3'".into()),
        (vec!["--verdict", "z0-3", "--verdict", "t-evil"], "verdict_id IN ('z0-3', 't-evil')".into()),
        (vec!["--room", "a"], "room_id = 'a'".into()),
        (vec!["--room", "9"], "room_id = '9'".into()),
        (vec!["--user", "shared"], "user_id = 'shared'".into()),
        (vec!["--app", &z1], format!("app_id = {z1}")),
        (vec!["--vendor", "trtc"], "vendor = 'trtc'".into()),
        (vec!["--status", "failed"], "(verdict_status = 'failed' OR kick_status = 'failed')".into()),
        (vec!["--status", "kicked"], "kick_status = 'kicked'".into()),
        (vec!["--status", "gone"], "kick_status = 'gone'".into()),
        (vec!["--status", "done"], "verdict_status = 'done'".into()),
        (vec!["--since", "1h"], "received_at >= now() - interval '1 hour'".into()),
        (vec!["--since", &future], "false".into()),
        (
            vec!["--until", &future, "--vendor", "zego", "--status", "kicked"],
            "vendor = 'zego' AND kick_status = 'kicked'".into(),
        ),
    ];
    for (args, sql_where) in &cases {
        let want = pairs_from_sql(&pool, sql_where).await;
        let mut json_args = vec!["audit", "--format", "json"];
        json_args.extend(args);
        let out = env.cli(&json_args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        assert_eq!(pairs_from_json(&stdout(&out)), want, "json {args:?}");

        let mut csv_args = vec!["audit", "--format", "csv"];
        csv_args.extend(args);
        let out = env.cli(&csv_args);
        assert_eq!(pairs_from_csv(&stdout(&out)), want, "csv {args:?}");

        if args.first() != Some(&"--verdict") || args.len() > 2 {
            let mut table_args = vec!["audit", "--format", "table"];
            table_args.extend(args);
            let out = env.cli(&table_args);
            assert_eq!(stdout(&out).lines().count(), want.len() + 2, "table {args:?}: header, rule, one line a row");
        }
    }
    let out = env.cli(&["audit", "--format", "json", "--limit", "3"]);
    assert_eq!(stdout(&out).lines().count(), 3);

    // One verdict's story names its users, its vendor calls and what they answered.
    let story = stdout(&env.cli(&["audit", "--format", "table", "--verdict", "t-evil"]));
    for needle in ["verdict t-evil  [failed]", "InvalidParameter.UserIds", "RemoveUser", "vendor calls:", "evil"] {
        assert!(story.contains(needle), "story lacks {needle:?}:\n{story}");
    }

    // The summary's counts equal the rows' counts.
    let summary: Vec<Value> = stdout(&env.cli(&["audit", "--summary", "--format", "json"]))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let sum = |k: &str| summary.iter().map(|r| r[k].as_i64().unwrap()).sum::<i64>();
    for (status, key) in [("kicked", "kicked"), ("gone", "gone")] {
        let rows = stdout(&env.cli(&["audit", "--format", "json", "--status", status])).lines().count() as i64;
        assert_eq!(sum(key), rows, "{status}");
    }
    let failed_kicks: i64 =
        sqlx::query_scalar("SELECT count(*) FROM kicks WHERE status = 'failed'").fetch_one(&pool).await.unwrap();
    assert_eq!(sum("kicks_failed"), failed_kicks);
    let all_rows = stdout(&env.cli(&["audit", "--format", "json", "--limit", "0"])).lines().count() as i64;
    assert_eq!(sum("kicks"), all_rows);
    assert_eq!(sum("verdicts"), 36);
    let done_verdicts: i64 =
        sqlx::query_scalar("SELECT count(*) FROM verdicts WHERE status = 'done'").fetch_one(&pool).await.unwrap();
    assert_eq!(sum("verdicts_done"), done_verdicts);

    // /metrics parses, and its counters match the audit tables.
    let metrics = reqwest::get(format!("http://{}/metrics", worker.http_addr())).await.unwrap().text().await.unwrap();
    let samples = parse_prometheus(&metrics);
    let total = |name: &str, label: (&str, &str)| metric_sum(&samples, name, label);
    for status in ["kicked", "gone", "failed"] {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM kicks WHERE status = $1")
            .bind(status)
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(total("bouncer_kicks_total", ("outcome", status)), n as f64, "kicks {status}");
    }
    for status in ["done", "failed"] {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM verdicts WHERE status = $1")
            .bind(status)
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(total("bouncer_verdicts_finished_total", ("status", status)), n as f64, "verdicts {status}");
    }
    let rejected: f64 =
        samples.iter().filter(|(n, _, _)| n == "bouncer_rejected_messages_total").map(|(_, _, v)| v).sum();
    assert_eq!(rejected, 3.0);
    assert!(total("bouncer_vendor_config_errors_total", ("vendor", "zego")) >= 1.0);
    assert!(samples.iter().any(|(n, _, _)| n == "bouncer_vendor_call_seconds_bucket"));
    assert!(samples.iter().any(|(n, _, _)| n == "bouncer_verdict_to_kick_seconds_bucket"));
    assert!(samples.iter().any(|(n, _, _)| n == "bouncer_rate_limiter_wait_seconds_bucket"));
    for (name, labels, _) in &samples {
        for key in labels.keys() {
            assert!(
                !["user", "user_id", "room", "room_id", "verdict_id"].contains(&key.as_str()),
                "{name} has label {key}"
            );
        }
    }

    // Logs: secrets never appear; lines about a verdict name it with vendor, app and room.
    let log = worker.log_text();
    let mut secrets: Vec<String> = env.apps.zego.iter().map(|(_, s)| s.clone()).collect();
    secrets.extend(env.apps.trtc.iter().map(|(_, _, k)| k.clone()));
    secrets.push("wrong-secret-0123456789".into());
    for s in &secrets {
        assert!(!log.contains(s.as_str()), "a secret is in the log");
    }
    let mut about_verdicts = 0;
    for line in log.lines() {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("log line is not JSON ({e}): {line}"));
        for scope in [&v, &v["span"]] {
            if scope.get("verdict_id").is_some() {
                about_verdicts += 1;
                for field in ["vendor", "app_id", "room_id"] {
                    assert!(scope.get(field).is_some(), "log line names a verdict but not its {field}: {line}");
                }
            }
        }
    }
    assert!(about_verdicts > 0, "some lines are about verdicts");
    assert!(log.contains("the vendor refused our credentials"), "the configuration failure was loud");
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn replay_with_a_limit_of_a_thousand_replays_a_thousand_and_without_one_the_rest() {
    let env = TestEnv::new(Apps::random(1, 0), EnvOptions::default()).await;
    let out = env.cli(&["migrate"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // 1,005 failed verdicts of one user each, written as the trail would hold them.
    let rows: Vec<(String, String, String)> =
        (1..=1005).map(|i| (format!("f-{i}"), format!("u{i}"), "r".to_owned())).collect();
    env.insert_failed_verdicts(&rows).await;
    let pool = env.pool().await;
    let status = |s: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM verdicts WHERE status = $1")
                .bind(s)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };

    let out = env.cli(&["replay", "--status", "failed", "--limit", "1000", "--actor", "ops-dan"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("replayed 1000 verdict(s)"), "{}", stdout(&out));
    assert_eq!((status("pending").await, status("failed").await), (1000, 5));

    let out = env.cli(&["replay", "--status", "failed", "--actor", "ops-dan"]);
    assert!(stdout(&out).contains("replayed 5 verdict(s)"), "{}", stdout(&out));
    assert_eq!(status("failed").await, 0);
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_verdict_is_replayed_once_the_fault_is_cleared() {
    let env = TestEnv::new(Apps::random(0, 1), EnvOptions::default()).await;
    let app = env.apps.trtc[0].0;
    let control = SimControl::new(&env.sim);
    control.set_faults(json!({"gone_rooms": []})).await;
    control.set_faults(json!({"vendor": "trtc", "app_id": app, "bad_users": ["blocked"]})).await;
    let _worker = env.worker();
    env.publish_json(&verdict("to-replay", "trtc", app, json!("stage"), &["fine", "blocked"])).await;
    env.publish_json(&verdict("stays-done", "trtc", app, json!("stage"), &["other"])).await;
    env.wait_for_count("SELECT count(*) FROM verdicts WHERE status <> 'pending'", 2, Duration::from_secs(30)).await;

    let dry = env.cli(&["replay", "--dry-run", "--format", "json"]);
    assert!(dry.status.success(), "{}", stderr(&dry));
    let listed: Vec<Value> = stdout(&dry).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["verdict_id"], "to-replay");
    let pool = env.pool().await;
    let still: String = sqlx::query_scalar("SELECT status FROM verdicts WHERE verdict_id = 'to-replay'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(still, "failed", "a dry run changes nothing");

    control.clear_faults().await;
    let out =
        env.cli(&["replay", "--status", "failed", "--since", "1h", "--app", &app.to_string(), "--actor", "ops-carol"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("replayed 1 verdict(s) as ops-carol"), "{}", stdout(&out));
    env.wait_for_count("SELECT count(*) FROM verdicts WHERE status = 'done'", 2, Duration::from_secs(30)).await;

    let story = stdout(&env.cli(&["audit", "--format", "table", "--verdict", "to-replay"]));
    assert!(story.contains("[done]"), "{story}");
    assert!(story.contains("replays:") && story.contains("ops-carol"), "{story}");
    let replays: Vec<(String, String, bool)> =
        sqlx::query_as("SELECT actor, previous_status, published FROM replays").fetch_all(&pool).await.unwrap();
    assert_eq!(replays, [("ops-carol".into(), "failed".into(), true)]);
    // "fine" was kicked before the replay and is not kicked again.
    let kicked: Vec<String> =
        control.requests().await.into_iter().filter(|r| r.rejection.is_none()).flat_map(|r| r.user_ids).collect();
    assert_eq!(kicked.iter().filter(|u| *u == "fine").count(), 1, "{kicked:?}");
    assert_eq!(kicked.iter().filter(|u| *u == "blocked").count(), 1, "{kicked:?}");
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_manual_kick_from_the_cli_is_enforced_and_audited() {
    let env = TestEnv::new(Apps::random(1, 0), EnvOptions::default()).await;
    let _worker = env.worker();
    let app = env.apps.zego[0].0.to_string();
    let out = env.cli(&[
        "kick",
        "--vendor",
        "zego",
        "--app",
        &app,
        "--room",
        "studio",
        "--user",
        "troll",
        "--user",
        "spammer",
        "--reason",
        "manual review",
        "--actor",
        "mod-dave",
        "--wait",
        "30",
    ]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains("[done]"), "{}", stdout(&out));
    let pool = env.pool().await;
    let (source, reason): (String, String) =
        sqlx::query_as("SELECT source, reason FROM verdicts").fetch_one(&pool).await.unwrap();
    assert_eq!((source.as_str(), reason.as_str()), ("manual:mod-dave", "manual review"));
    let kicked: i64 =
        sqlx::query_scalar("SELECT count(*) FROM kicks WHERE status = 'kicked'").fetch_one(&pool).await.unwrap();
    assert_eq!(kicked, 2);
    let sent = SimControl::new(&env.sim).requests().await;
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].reason.as_deref(), Some("manual review"));

    let bad = env.cli(&["kick", "--vendor", "zego", "--app", "0", "--room", "r", "--user", "u"]);
    assert_eq!(bad.status.code(), Some(2), "an invalid manual verdict is refused before publishing");
    assert!(stderr(&bad).contains("app_id"), "{}", stderr(&bad));
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn readyz_turns_not_ready_while_rabbitmq_is_unreachable_and_ready_again_after() {
    let target = amqp_url().split('@').nth(1).and_then(|h| h.split('/').next()).unwrap_or("127.0.0.1:5672").to_owned();
    let proxy = CuttableProxy::start(&target).await;
    let mut env = TestEnv::new(Apps::random(1, 0), EnvOptions::default()).await;
    let via_proxy = amqp_url().replace(&target, &format!("127.0.0.1:{}", proxy.port));
    env.edit_config(|c| c.amqp.url = via_proxy.into());
    let worker = env.worker();
    let url = format!("http://{}/readyz", worker.http_addr());
    let ready = |want: bool| {
        let url = url.clone();
        async move {
            let started = std::time::Instant::now();
            loop {
                let status = reqwest::get(&url).await.map(|r| r.status().as_u16()).unwrap_or(0);
                if (status == 200) == want {
                    return;
                }
                assert!(started.elapsed() < Duration::from_secs(60), "/readyz never became {want} (last {status})");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    ready(true).await;
    let health = reqwest::get(format!("http://{}/healthz", worker.http_addr())).await.unwrap();
    assert_eq!(health.status(), 200);
    proxy.cut();
    ready(false).await;
    let body: Value = reqwest::get(&url).await.unwrap().json().await.unwrap();
    assert_eq!(body["rabbitmq"], false, "{body}");
    proxy.restore();
    ready(true).await;
    // And it still works end to end.
    env.publish_json(&verdict("after-outage", "zego", env.apps.zego[0].0, json!("r"), &["u"])).await;
    env.wait_for_count("SELECT count(*) FROM verdicts WHERE status = 'done'", 1, Duration::from_secs(60)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn status_shows_who_owns_each_quota_and_what_is_pending_per_app() {
    let env = TestEnv::new(Apps::random(1, 1), EnvOptions::default()).await;
    let (zego, trtc) = (env.apps.zego[0].0, env.apps.trtc[0].0);
    SimControl::new(&env.sim).set_faults(json!({"vendor": "zego", "app_id": zego, "hang": true})).await;
    let _worker = env.replica("ops-replica-1");
    for i in 0..3 {
        env.publish_json(&verdict(&format!("st-{i}"), "zego", zego, json!("r"), &[&format!("u{i}")])).await;
    }
    env.publish_json(&verdict("st-trtc", "trtc", trtc, json!(5), &["x"])).await;
    env.wait_for_count("SELECT count(*) FROM verdicts WHERE status = 'done'", 1, Duration::from_secs(30)).await;

    let out = env.cli(&["status", "--format", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let s: Value = serde_json::from_str(stdout(&out).trim()).expect("one JSON object");
    let owners: Vec<(&str, &str)> = s["quota_owners"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| (o["quota_group"].as_str().unwrap(), o["worker_id"].as_str().unwrap()))
        .collect();
    let trtc_group = format!("trtc:{}", env.apps.trtc[0].1);
    let zego_group = format!("zego:{zego}");
    assert_eq!(owners, [(trtc_group.as_str(), "ops-replica-1"), (zego_group.as_str(), "ops-replica-1")]);
    assert!(s["quota_owners"].as_array().unwrap().iter().all(|o| o["live"] == true), "{s}");
    let workers = s["workers"].as_array().unwrap();
    assert_eq!(workers.len(), 1, "{s}");
    assert_eq!(workers[0]["worker_id"], "ops-replica-1");
    let pending = s["pending"].as_array().unwrap();
    assert_eq!(pending.len(), 1, "only the hanging app has work left: {s}");
    assert_eq!(pending[0]["app_id"], zego);
    assert_eq!(pending[0]["pending_users"], 3);
    assert!(pending[0]["oldest_pending_at"].is_string());

    let table = stdout(&env.cli(&["status", "--format", "table"]));
    assert!(
        table.contains("quota owners:") && table.contains(&zego_group) && table.contains("ops-replica-1"),
        "{table}"
    );
}
