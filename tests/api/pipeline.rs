//! `bouncer run` end to end: real RabbitMQ, real PostgreSQL, the simulator as vendor.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use serde_json::json;

use crate::helpers::{Apps, EnvOptions, SimControl, TestEnv, verdict};

#[tokio::test(flavor = "multi_thread")]
async fn a_thousand_verdicts_across_five_apps_are_enforced_in_full_chunks_within_quota() {
    // The whole backlog is pending before any room's linger ends (a linger far longer than intake
    // takes, even in a debug build on a loaded machine: about 2 s), so only full chunks go before
    // it and the only call of a room that may be short is its last.
    let opts = EnvOptions { prefetch: 2000, linger_ms: 10_000, ..EnvOptions::default() };
    let env = TestEnv::new(Apps::random(3, 2), opts).await;
    let mut expected: HashMap<(String, u32, String), HashSet<String>> = HashMap::new();
    for i in 0..1000u32 {
        let (vendor, app) = if i % 5 < 3 {
            ("zego", env.apps.zego[(i % 5) as usize].0)
        } else {
            ("trtc", env.apps.trtc[(i % 5 - 3) as usize].0)
        };
        let room = match (vendor, i % 4) {
            ("trtc", 0) => json!(1000 + i % 3),
            (_, r) => json!(format!("room-{r}")),
        };
        // Overlapping users: the same user appears in several verdicts of a room.
        let users: Vec<String> = (0..(1 + i % 3)).map(|k| format!("u{}", (i * 7 + k * 13) % 300)).collect();
        let user_refs: Vec<&str> = users.iter().map(String::as_str).collect();
        let key = (
            vendor.to_string(),
            app,
            room.to_string().trim_matches('"').to_string() + if room.is_number() { "#n" } else { "" },
        );
        expected.entry(key).or_default().extend(users.iter().cloned());
        env.publish_json(&verdict(&format!("v-{i}"), vendor, app, room, &user_refs)).await;
    }
    let _worker = env.worker();
    env.wait_for_count("SELECT count(*) FROM verdicts WHERE status = 'done'", 1000, Duration::from_secs(90)).await;

    let pool = env.pool().await;
    let not_kicked: i64 =
        sqlx::query_scalar("SELECT count(*) FROM kicks WHERE status <> 'kicked'").fetch_one(&pool).await.unwrap();
    assert_eq!(not_kicked, 0);
    // Every kicked (verdict, user) was carried by an `ok` call naming that verdict, and no user was
    // sent twice for the same verdicts: ok calls carry at most one user slot per kick. (A user named
    // again by a verdict recorded after their first call is kicked again, for that verdict.)
    let orphans: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM kicks k WHERE NOT EXISTS (SELECT 1 FROM kick_attempts a WHERE a.outcome = 'ok'
           AND k.verdict_id = ANY(a.verdict_ids) AND k.user_id = ANY(a.user_ids))",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(orphans, 0, "kicks without an ok attempt");
    let (slots, kicks): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT COALESCE(sum(cardinality(user_ids)), 0) FROM kick_attempts WHERE outcome = 'ok'),
                (SELECT count(*) FROM kicks)",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(slots <= kicks, "{slots} users sent for {kicks} kicks: something was sent twice");

    let records = SimControl::new(&env.sim).requests().await;
    let mut sent: HashMap<(String, u32, String), HashSet<String>> = HashMap::new();
    for r in records.iter().filter(|r| r.rejection.is_none()) {
        let max = if r.vendor == "zego" { 5 } else { 10 };
        assert!(r.user_ids.len() <= max, "{r:?}");
        let room = r.room_id.clone() + if r.room_numeric { "#n" } else { "" };
        sent.entry((r.vendor.clone(), r.app_id, room)).or_default().extend(r.user_ids.iter().cloned());
    }
    assert_eq!(sent, expected, "every user of every room was kicked");

    // Chunks are full whenever enough users were pending: per room only the remainder is short.
    let mut short: HashMap<(String, u32, String), usize> = HashMap::new();
    for r in records.iter().filter(|r| r.rejection.is_none()) {
        let max = if r.vendor == "zego" { 5 } else { 10 };
        if r.user_ids.len() < max {
            *short
                .entry((r.vendor.clone(), r.app_id, r.room_id.clone() + if r.room_numeric { "#n" } else { "" }))
                .or_default() += 1;
        }
    }
    assert!(short.values().all(|n| *n <= 1), "rooms with more than one short call: {short:?}");

    let stats = SimControl::new(&env.sim).stats().await;
    for (quota, q) in stats["quotas"].as_object().unwrap() {
        assert!(q["max_calls_in_1s"].as_u64().unwrap() <= q["limit"].as_u64().unwrap(), "{quota} went over: {q}");
        assert_eq!(q["rate_limited"], 0, "{quota}: {q}");
    }
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_same_verdict_published_three_times_is_enforced_once() {
    let env = TestEnv::new(Apps::random(1, 0), EnvOptions::default()).await;
    let _worker = env.worker();
    let v = verdict("dup-1", "zego", env.apps.zego[0].0, json!("r"), &["a", "b"]);
    for _ in 0..3 {
        env.publish_json(&v).await;
    }
    env.wait_for_count(
        "SELECT count(*) FROM verdicts WHERE status = 'done' AND deliveries = 3",
        1,
        Duration::from_secs(20),
    )
    .await;
    // Let any stray duplicate work show up before counting calls.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let kicked: Vec<String> = SimControl::new(&env.sim)
        .requests()
        .await
        .into_iter()
        .filter(|r| r.rejection.is_none())
        .flat_map(|r| r.user_ids)
        .collect();
    assert_eq!(kicked.len(), 2, "{kicked:?}");
    assert_eq!(env.queue_depth("").await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hundred_malformed_messages_are_recorded_and_dead_lettered_while_good_ones_are_enforced() {
    let env = TestEnv::new(Apps::random(1, 1), EnvOptions::default()).await;
    let _worker = env.worker();
    let zego = env.apps.zego[0].0;
    let trtc = env.apps.trtc[0].0;
    let bad_kinds: Vec<Vec<u8>> = vec![
        b"not json".to_vec(),
        vec![0xff, 0xfe, 0x00],
        b"[]".to_vec(),
        json!({"verdict_id": "x", "vendor": "zego", "app_id": zego, "room_id": "r"}).to_string().into_bytes(),
        json!({"verdict_id": "x", "vendor": "agora", "app_id": zego, "room_id": "r", "user_ids": ["u"]})
            .to_string()
            .into_bytes(),
        json!({"verdict_id": "x", "vendor": "zego", "app_id": "1", "room_id": "r", "user_ids": ["u"]})
            .to_string()
            .into_bytes(),
        json!({"verdict_id": "x", "vendor": "zego", "app_id": zego, "room_id": "r", "user_ids": []})
            .to_string()
            .into_bytes(),
        json!({"verdict_id": "x", "vendor": "trtc", "app_id": trtc, "room_id": 0, "user_ids": ["u"]})
            .to_string()
            .into_bytes(),
        json!({"verdict_id": "x", "vendor": "zego", "app_id": zego, "room_id": "r", "user_ids": ["u"], "extra": 1})
            .to_string()
            .into_bytes(),
        vec![b'{'; 65 * 1024],
    ];
    for i in 0..100 {
        env.publish(&bad_kinds[i % bad_kinds.len()]).await;
        env.publish_json(&verdict(
            &format!("good-{i}"),
            "zego",
            zego,
            json!(format!("room-{}", i % 7)),
            &[&format!("u{i}")],
        ))
        .await;
    }
    env.wait_for_count("SELECT count(*) FROM verdicts WHERE status = 'done'", 100, Duration::from_secs(60)).await;
    env.wait_for_count("SELECT count(*) FROM rejected_messages", 100, Duration::from_secs(10)).await;
    let pool = env.pool().await;
    let by_rule: Vec<(String, i64)> =
        sqlx::query_as("SELECT rule, count(*) FROM rejected_messages GROUP BY rule ORDER BY rule")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(by_rule.len(), 10, "one rule per kind of bad message: {by_rule:?}");
    assert!(by_rule.iter().all(|(_, n)| *n == 10), "{by_rule:?}");
    let capped: i64 = sqlx::query_scalar("SELECT count(*) FROM rejected_messages WHERE payload_size > length(payload)")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(capped, 10, "the 65 KiB bodies are stored capped, with their real size");
    pool.close().await;
    env.wait_for_dead_letters(100, Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn with_thirty_percent_http_502_every_verdict_still_ends_done() {
    let env = TestEnv::new(Apps::random(1, 1), EnvOptions::default()).await;
    SimControl::new(&env.sim).set_faults(json!({"http_502_rate": 0.3})).await;
    let _worker = env.worker();
    for i in 0..200u32 {
        let v = if i % 2 == 0 {
            verdict(&format!("f-{i}"), "zego", env.apps.zego[0].0, json!(format!("r{}", i % 5)), &[&format!("u{i}")])
        } else {
            verdict(&format!("f-{i}"), "trtc", env.apps.trtc[0].0, json!(i % 5 + 1), &[&format!("u{i}"), "shared"])
        };
        env.publish_json(&v).await;
    }
    env.wait_for_count("SELECT count(*) FROM verdicts WHERE status = 'done'", 200, Duration::from_secs(90)).await;
    let pool = env.pool().await;
    let retried: i64 =
        sqlx::query_scalar("SELECT count(*) FROM kick_attempts WHERE outcome = 'retry' AND http_status = 502")
            .fetch_one(&pool)
            .await
            .unwrap();
    let stats = SimControl::new(&env.sim).stats().await;
    assert!(retried > 0, "the fault was injected");
    assert_eq!(stats["rejections"]["http_502"].as_i64(), Some(retried), "every 502 is in the audit trail");
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hanging_app_fails_at_the_deadline_while_another_app_keeps_normal_latency() {
    let opts = EnvOptions { deadline_secs: 3, timeout_ms: 500, retry_max_ms: 300, ..EnvOptions::default() };
    let env = TestEnv::new(Apps::random(2, 0), opts).await;
    let (stuck, healthy) = (env.apps.zego[0].0, env.apps.zego[1].0);
    SimControl::new(&env.sim).set_faults(json!({"vendor": "zego", "app_id": stuck, "hang": true})).await;
    let _worker = env.worker();
    for i in 0..40u32 {
        let app = if i % 2 == 0 { stuck } else { healthy };
        env.publish_json(&verdict(&format!("h-{i}"), "zego", app, json!("room"), &[&format!("u{i}")])).await;
    }
    env.wait_for_count("SELECT count(*) FROM verdicts WHERE status <> 'pending'", 40, Duration::from_secs(60)).await;
    let pool = env.pool().await;
    let rows: Vec<(i64, String, chrono::DateTime<chrono::Utc>)> =
        sqlx::query_as("SELECT app_id, status, finished_at FROM verdicts ORDER BY verdict_id")
            .fetch_all(&pool)
            .await
            .unwrap();
    let mut healthy_last = None;
    let mut stuck_first = None;
    for (app, status, finished) in rows {
        if app == i64::from(stuck) {
            assert_eq!(status, "failed");
            stuck_first = Some(stuck_first.map_or(finished, |t: chrono::DateTime<chrono::Utc>| t.min(finished)));
        } else {
            assert_eq!(status, "done");
            healthy_last = Some(healthy_last.map_or(finished, |t: chrono::DateTime<chrono::Utc>| t.max(finished)));
        }
    }
    // Relative, not a stopwatch: every healthy verdict was done before the stuck app's first
    // verdict even reached its deadline, so the stuck app held nothing up.
    assert!(healthy_last < stuck_first, "healthy finished {healthy_last:?}, stuck first gave up {stuck_first:?}");
    let errors: Vec<String> = sqlx::query_scalar("SELECT DISTINCT last_error FROM kicks WHERE status = 'failed'")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert!(errors.iter().all(|e| e.contains("deadline") && e.contains("timeout")), "{errors:?}");
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_user_id_in_a_trtc_chunk_fails_alone() {
    let env = TestEnv::new(Apps::random(0, 1), EnvOptions { linger_ms: 200, ..EnvOptions::default() }).await;
    let app = env.apps.trtc[0].0;
    SimControl::new(&env.sim).set_faults(json!({"vendor": "trtc", "app_id": app, "bad_users": ["bad-user"]})).await;
    let mut users: Vec<String> = (0..6).map(|i| format!("good-{i}")).collect();
    users.push("bad-user".into());
    let refs: Vec<&str> = users.iter().map(String::as_str).collect();
    env.publish_json(&verdict("mixed", "trtc", app, json!("room"), &refs)).await;
    env.publish_json(&verdict("clean", "trtc", app, json!("room"), &["good-6", "good-7", "good-8"])).await;
    let _worker = env.worker();
    env.wait_for_count("SELECT count(*) FROM verdicts WHERE status <> 'pending'", 2, Duration::from_secs(30)).await;
    let pool = env.pool().await;
    let kicks: Vec<(String, String, String, Option<String>)> =
        sqlx::query_as("SELECT verdict_id, user_id, status, last_error FROM kicks ORDER BY verdict_id, user_id")
            .fetch_all(&pool)
            .await
            .unwrap();
    for (verdict_id, user, status, error) in &kicks {
        if user == "bad-user" {
            assert_eq!(status, "failed");
            assert!(error.as_deref().unwrap_or_default().starts_with("InvalidParameter.UserIds"), "{error:?}");
        } else {
            assert_eq!(status, "kicked", "{verdict_id}/{user}: {error:?}");
        }
    }
    let statuses: Vec<(String, String)> =
        sqlx::query_as("SELECT verdict_id, status FROM verdicts ORDER BY 1").fetch_all(&pool).await.unwrap();
    assert_eq!(statuses, [("clean".into(), "done".into()), ("mixed".into(), "failed".into())]);
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stuck_apps_backlog_far_beyond_the_prefetch_leaves_the_queue_and_does_not_hold_up_another_app() {
    let opts = EnvOptions { prefetch: 40, deadline_secs: 120, timeout_ms: 1000, ..EnvOptions::default() };
    let env = TestEnv::new(Apps::random(1, 1), opts).await;
    let (stuck, healthy) = (env.apps.zego[0].0, env.apps.trtc[0].0);
    SimControl::new(&env.sim).set_faults(json!({"vendor": "zego", "app_id": stuck, "hang": true})).await;
    // 300 verdicts of the stuck app sit in front of the healthy app's, far beyond the prefetch.
    for i in 0..300u32 {
        env.publish_json(&verdict(
            &format!("s-{i}"),
            "zego",
            stuck,
            json!(format!("r{}", i % 10)),
            &[&format!("u{i}")],
        ))
        .await;
    }
    for i in 0..20u32 {
        env.publish_json(&verdict(&format!("ok-{i}"), "trtc", healthy, json!(7), &[&format!("u{i}")])).await;
    }
    let _worker = env.worker();
    // The stuck app's calls only end at its 120 s deadline: the healthy app finishing within 30 s
    // proves it was not queued behind them.
    env.wait_for_count(
        "SELECT count(*) FROM verdicts WHERE status = 'done' AND vendor = 'trtc'",
        20,
        Duration::from_secs(30),
    )
    .await;
    // Intake never waits on a vendor: every message was recorded and acked.
    env.wait_for_count("SELECT count(*) FROM verdicts", 320, Duration::from_secs(10)).await;
    assert_eq!(env.queue_depth("").await, 0, "the queue holds nothing once recorded");
    let pool = env.pool().await;
    let pending: i64 =
        sqlx::query_scalar("SELECT count(*) FROM verdicts WHERE status = 'pending'").fetch_one(&pool).await.unwrap();
    assert_eq!(pending, 300, "nothing of the stuck app was lost or failed early");
    // Its kicks wait in the database on their retry schedule.
    let scheduled: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM kicks WHERE status = 'pending' AND app_id = $1 AND next_attempt_at IS NOT NULL",
    )
    .bind(i64::from(stuck))
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(scheduled, 300);
    pool.close().await;
}
