//! Hostile input: no message, header or connection stops the enforcement of other verdicts, and
//! every message is accounted for.

use std::time::Duration;

use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use serde_json::json;

use crate::helpers::{Apps, EnvOptions, TestEnv, metric_sum, parse_prometheus, verdict};

fn header(pairs: &[(&str, &str)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in pairs {
        t.insert(ShortString::from(*k), AMQPValue::LongString(LongString::from(*v)));
    }
    t
}

#[tokio::test(flavor = "multi_thread")]
async fn each_poison_is_recorded_and_dead_lettered_with_a_named_rule_and_the_verdict_after_it_finishes() {
    let env = TestEnv::new(Apps::random(1, 0), EnvOptions::default()).await;
    let _worker = env.worker();
    let app = env.apps.zego[0].0;
    let base = |id: &str| verdict(id, "zego", app, json!("r"), &["u1"]);
    let with = |id: &str, field: &str, value: serde_json::Value| {
        let mut v = base(id);
        v[field] = value;
        v.to_string().into_bytes()
    };
    // (body, headers, the rule it is recorded under)
    let poisons: Vec<(Vec<u8>, FieldTable, &str)> = vec![
        (with("p1", "user_ids", json!(["a\u{0}b"])), FieldTable::default(), "nul_character"),
        (with("p2", "reason", json!("r\u{0}")), FieldTable::default(), "nul_character"),
        (with("p3\u{0}", "reason", json!("x")), FieldTable::default(), "nul_character"),
        (with("p4", "room_id", json!("r\u{0}")), FieldTable::default(), "nul_character"),
        (with("p5", "source", json!("\u{0}")), FieldTable::default(), "nul_character"),
        (with("p6", "evidence", json!({"k\u{0}": 1})), FieldTable::default(), "nul_character"),
        (with("p7", "evidence", json!({"k": ["\u{0}"]})), FieldTable::default(), "nul_character"),
        (with("p8", "unknown\u{0}key", json!(1)), FieldTable::default(), "nul_character"),
        (with("p9", "detected_at", json!("0000-01-01T00:00:00Z")), FieldTable::default(), "out_of_range"),
        (with("p10", "detected_at", json!("9999-12-31T23:59:59-23:59")), FieldTable::default(), "out_of_range"),
        (b"not json".to_vec(), header(&[("key\u{0}with-nul", "v\u{0}")]), "not_json"),
        // Headers must fit one AMQP frame (128 KiB here): 100 KB of them on a 8-byte body.
        (b"not json".to_vec(), header(&[("big", &"h".repeat(100_000))]), "not_json"),
    ];
    let count = poisons.len() as i64;
    for (i, (body, headers, _)) in poisons.iter().enumerate() {
        env.publish_with(body, headers.clone()).await;
        env.publish_json(&base(&format!("good-{i}"))).await;
    }
    env.wait_for_count("SELECT count(*) FROM verdicts WHERE status = 'done'", count, Duration::from_secs(30)).await;
    env.wait_for_count("SELECT count(*) FROM rejected_messages", count, Duration::from_secs(10)).await;

    let pool = env.pool().await;
    // The contract promises each poison recorded under its rule, not an order: intake records two
    // batches at once on two connections, so row ids follow commit order. Compare as sets of
    // (payload, rule).
    let rows: Vec<(Vec<u8>, String)> =
        sqlx::query_as("SELECT payload, rule FROM rejected_messages").fetch_all(&pool).await.unwrap();
    let mut recorded: Vec<(Vec<u8>, String)> = rows;
    recorded.sort();
    let mut want: Vec<(Vec<u8>, String)> =
        poisons.iter().map(|(body, _, rule)| (body.clone(), (*rule).to_owned())).collect();
    want.sort();
    assert_eq!(recorded, want);
    // Headers are stored without the NUL, and a huge header set as a note of its size; the two
    // `not_json` rows are told apart by what they hold, not by which was committed first.
    let headers: Vec<serde_json::Value> =
        sqlx::query_scalar("SELECT headers FROM rejected_messages WHERE rule = 'not_json'")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(headers.len(), 2);
    let nul = headers.iter().find(|h| h.get("bouncer_headers_omitted").is_none()).expect("the small header set");
    let big = headers.iter().find(|h| h.get("bouncer_headers_omitted").is_some()).expect("the capped header set");
    assert!(nul.get("key\\u0000with-nul").is_some(), "{nul}");
    assert!(big.to_string().len() < 1_000, "headers stored capped: {} bytes", big.to_string().len());
    assert!(big["bouncer_headers_omitted"]["bytes"].as_u64().unwrap() > 100_000);
    let verdicts: i64 = sqlx::query_scalar("SELECT count(*) FROM verdicts").fetch_one(&pool).await.unwrap();
    assert_eq!(verdicts, count, "only the good verdicts were recorded");
    env.wait_for_dead_letters(count as u32, Duration::from_secs(10)).await;
    assert_eq!(env.queue_depth("").await, 0);
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_message_the_database_refuses_costs_only_itself_and_its_batch_is_recorded_one_by_one() {
    let env = TestEnv::new(Apps::random(1, 0), EnvOptions::default()).await;
    let app = env.apps.zego[0].0;
    {
        // Let a worker create the schema, then make PostgreSQL refuse one verdict for its data
        // (SQLSTATE 22023, as it would for a value it cannot store) whatever the contract says.
        let _worker = env.worker();
        env.wait_for_count("SELECT count(*) FROM verdicts", 0, Duration::from_secs(30)).await;
    }
    let pool = env.pool().await;
    sqlx::raw_sql(
        "CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
           IF NEW.verdict_id LIKE 'poison%' THEN
             RAISE EXCEPTION 'test: this value cannot be stored' USING ERRCODE = '22023';
           END IF;
           RETURN NEW;
         END $$;
         CREATE TRIGGER refuse_poison BEFORE INSERT ON verdicts FOR EACH ROW EXECUTE FUNCTION refuse_poison();",
    )
    .execute(&pool)
    .await
    .unwrap();
    // Published before the worker starts, so they arrive together in one batch.
    let mut all: Vec<serde_json::Value> =
        (0..10).map(|i| verdict(&format!("good-{i}"), "zego", app, json!("r"), &[&format!("u{i}")])).collect();
    all.push(verdict("poison-1", "zego", app, json!("r"), &["p"]));
    all.extend((10..20).map(|i| verdict(&format!("good-{i}"), "zego", app, json!("r"), &[&format!("u{i}")])));
    env.publish_all(&all).await;
    let worker = env.worker();
    env.wait_for_count("SELECT count(*) FROM verdicts WHERE status = 'done'", 20, Duration::from_secs(30)).await;
    env.wait_for_count("SELECT count(*) FROM rejected_messages", 1, Duration::from_secs(10)).await;
    let (rule, reason, payload): (String, String, Vec<u8>) =
        sqlx::query_as("SELECT rule, reason, payload FROM rejected_messages").fetch_one(&pool).await.unwrap();
    assert_eq!(rule, "unstorable");
    assert!(reason.contains("cannot be stored"), "{reason}");
    assert_eq!(serde_json::from_slice::<serde_json::Value>(&payload).unwrap()["verdict_id"], "poison-1");
    env.wait_for_dead_letters(1, Duration::from_secs(10)).await;
    assert_eq!(env.queue_depth("").await, 0);
    let deliveries: i64 = sqlx::query_scalar("SELECT sum(deliveries) FROM verdicts").fetch_one(&pool).await.unwrap();
    assert_eq!(deliveries, 20, "each good verdict recorded once");
    assert!(worker.log_text().contains("recording its messages one by one"));
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn hundreds_of_idle_http_connections_neither_stop_enforcement_nor_exhaust_descriptors() {
    let env = TestEnv::new(Apps::random(1, 0), EnvOptions::default()).await;
    let worker = env.worker();
    let addr = worker.http_addr();
    let fds = || std::fs::read_dir(format!("/proc/{}/fd", worker.child.id())).map(|d| d.count()).unwrap_or(0);
    // Counted once the worker has enforced a verdict: its pools and channels are open by then, so
    // what a busy machine delays opening is not mistaken for what the idle clients hold.
    env.publish_json(&verdict("warm-up", "zego", env.apps.zego[0].0, json!("r"), &["w"])).await;
    env.wait_for_count("SELECT count(*) FROM verdicts WHERE status = 'done'", 1, Duration::from_secs(20)).await;
    let before = fds();
    // Half-open requests: a request line, never the end of the headers.
    let mut idle = Vec::new();
    for _ in 0..400 {
        if let Ok(mut s) = tokio::net::TcpStream::connect(&addr).await {
            use tokio::io::AsyncWriteExt;
            let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n").await;
            idle.push(s);
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let during = fds();
    assert!(
        during <= before + bouncer::http::MAX_CONNECTIONS + 16,
        "descriptors {before} → {during} with {} idle clients",
        idle.len()
    );
    env.publish_json(&verdict("while-idle", "zego", env.apps.zego[0].0, json!("r"), &["u"])).await;
    env.wait_for_count("SELECT count(*) FROM verdicts WHERE status = 'done'", 2, Duration::from_secs(20)).await;
    // The idle clients are dropped after the header timeout; probes answer again.
    tokio::time::sleep(bouncer::http::HEADER_READ_TIMEOUT + Duration::from_secs(1)).await;
    let ready = reqwest::get(format!("http://{addr}/readyz")).await.expect("readyz answers");
    assert_eq!(ready.status(), 200);
    assert!(fds() <= before + 16, "descriptors released: {before} → {}", fds());
    drop(idle);
}

#[tokio::test(flavor = "multi_thread")]
async fn verdicts_for_an_unconfigured_app_are_counted_as_failed_once() {
    let env = TestEnv::new(Apps::random(1, 0), EnvOptions::default()).await;
    let worker = env.worker();
    env.publish_json(&verdict("nobody-serves", "zego", 4_000_000_007, json!("r"), &["a", "b", "c"])).await;
    env.wait_for_count("SELECT count(*) FROM verdicts WHERE status = 'failed'", 1, Duration::from_secs(20)).await;
    let addr = worker.http_addr();
    let text = reqwest::get(format!("http://{addr}/metrics")).await.unwrap().text().await.unwrap();
    let samples = parse_prometheus(&text);
    let value = |name: &str, label: (&str, &str)| metric_sum(&samples, name, label);
    assert_eq!(value("bouncer_verdicts_finished_total", ("status", "failed")), 1.0);
    assert_eq!(value("bouncer_kicks_total", ("outcome", "failed")), 3.0);
    assert_eq!(value("bouncer_verdicts_received_total", ("outcome", "unconfigured_app")), 1.0);
    let received: f64 =
        samples.iter().filter(|(n, _, _)| n == "bouncer_verdicts_received_total").map(|(_, _, v)| v).sum();
    assert_eq!(received, 1.0, "one arrival, counted once");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_publisher_set_bouncer_header_changes_nothing_that_is_recorded() {
    let env = TestEnv::new(Apps::random(1, 0), EnvOptions::default()).await;
    let _worker = env.worker();
    let v = verdict("with-headers", "zego", env.apps.zego[0].0, json!("r"), &["u"]);
    env.publish_with(v.to_string().as_bytes(), header(&[("x-bouncer-deferrals", "5"), ("x-delivery-count", "9")]))
        .await;
    env.wait_for_count(
        "SELECT count(*) FROM verdicts WHERE status = 'done' AND deliveries = 1 AND deferrals = 0",
        1,
        Duration::from_secs(20),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_verdict_id_reused_for_other_users_is_kept_as_rejected_not_swallowed_as_a_duplicate() {
    let env = TestEnv::new(Apps::random(1, 0), EnvOptions::default()).await;
    let _worker = env.worker();
    let app = env.apps.zego[0].0;
    env.publish_json(&verdict("v-1", "zego", app, json!("r"), &["a", "b"])).await;
    env.wait_for_count("SELECT count(*) FROM verdicts WHERE status = 'done'", 1, Duration::from_secs(20)).await;
    // The same verdict again (users in another order) is a duplicate; other users or another room
    // under the same id are not.
    env.publish_json(&verdict("v-1", "zego", app, json!("r"), &["b", "a"])).await;
    env.publish_json(&verdict("v-1", "zego", app, json!("r"), &["c"])).await;
    env.publish_json(&verdict("v-1", "zego", app, json!("elsewhere"), &["a", "b"])).await;
    env.wait_for_count(
        "SELECT count(*) FROM rejected_messages WHERE rule = 'verdict_id_reused' AND field = 'verdict_id'",
        2,
        Duration::from_secs(20),
    )
    .await;
    let pool = env.pool().await;
    let (deliveries, users): (i32, Vec<String>) =
        sqlx::query_as("SELECT deliveries, user_ids FROM verdicts WHERE verdict_id = 'v-1'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!((deliveries, users), (2, vec!["a".to_owned(), "b".to_owned()]));
    let kept: Vec<Vec<u8>> =
        sqlx::query_scalar("SELECT payload FROM rejected_messages ORDER BY id").fetch_all(&pool).await.unwrap();
    // Two batches may be recorded at once, so the rows are not necessarily in publishing order.
    let mut kept: Vec<String> =
        kept.iter().map(|p| serde_json::from_slice::<serde_json::Value>(p).unwrap()).map(|v| v.to_string()).collect();
    kept.sort();
    let mut want = vec![
        verdict("v-1", "zego", app, json!("r"), &["c"]).to_string(),
        verdict("v-1", "zego", app, json!("elsewhere"), &["a", "b"]).to_string(),
    ];
    want.sort();
    assert_eq!(kept, want, "both messages kept as received");
    env.wait_for_dead_letters(2, Duration::from_secs(10)).await;
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn frames_the_client_cannot_parse_among_twenty_verdicts_cost_none_of_them() {
    let env = TestEnv::new(Apps::random(1, 0), EnvOptions::default()).await;
    let app = env.apps.zego[0].0;
    let good: Vec<serde_json::Value> =
        (0..10).map(|i| verdict(&format!("g-{i}"), "zego", app, json!("r"), &[&format!("u{i}")])).collect();
    env.publish_all(&good).await;
    let poison = verdict("poison-frame", "zego", app, json!("r"), &["p"]).to_string();
    crate::helpers::publish_raw(&env.queue, b"\xff\xfe", None, poison.as_bytes()).await;
    let more: Vec<serde_json::Value> =
        (10..15).map(|i| verdict(&format!("g-{i}"), "zego", app, json!("r"), &[&format!("u{i}")])).collect();
    env.publish_all(&more).await;
    // A header key that is not UTF-8 does the same.
    let poison = verdict("poison-header", "zego", app, json!("r"), &["q"]).to_string();
    crate::helpers::publish_raw(&env.queue, b"application/json", Some(b"\xff\xfe"), poison.as_bytes()).await;
    let rest: Vec<serde_json::Value> =
        (15..20).map(|i| verdict(&format!("g-{i}"), "zego", app, json!("r"), &[&format!("u{i}")])).collect();
    env.publish_all(&rest).await;
    let worker = env.worker();
    env.wait_for_count("SELECT count(*) FROM verdicts WHERE status = 'done'", 20, Duration::from_secs(90)).await;
    // The broker dead-letters the poison at the delivery limit, and nothing else.
    env.wait_for_dead_letters(2, Duration::from_secs(60)).await;
    assert_eq!(env.queue_depth("").await, 0, "the poison left the queue");
    let pool = env.pool().await;
    let most: i32 = sqlx::query_scalar("SELECT max(deliveries) FROM verdicts").fetch_one(&pool).await.unwrap();
    assert!(most <= 3, "innocent verdicts were redelivered up to {most} times");
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM rejected_messages WHERE rule = 'unparseable_frame'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!((1..=2).contains(&rows), "each episode is in the audit trail: {rows}");
    let text = reqwest::get(format!("http://{}/metrics", worker.http_addr())).await.unwrap().text().await.unwrap();
    let failures: f64 = parse_prometheus(&text)
        .iter()
        .filter(|(n, _, _)| n == "bouncer_unparseable_deliveries_total")
        .map(|(_, _, v)| v)
        .sum();
    assert!(failures >= 1.0, "counted: {failures}");
    // Intake takes its full prefetch again once the poison is gone.
    let fresh: Vec<serde_json::Value> =
        (20..100).map(|i| verdict(&format!("g-{i}"), "zego", app, json!("r"), &[&format!("u{i}")])).collect();
    env.publish_all(&fresh).await;
    env.wait_for_count("SELECT count(*) FROM verdicts WHERE status = 'done'", 100, Duration::from_secs(30)).await;
    assert!(worker.log_text().contains("quarantine over"), "prefetch restored");
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn thousands_of_hostile_bodies_among_valid_verdicts_are_all_accounted_for_and_the_worker_keeps_running() {
    let env = TestEnv::new(Apps::random(1, 1), EnvOptions { prefetch: 300, ..EnvOptions::default() }).await;
    let mut worker = env.worker();
    let zego = env.apps.zego[0].0;
    let trtc = env.apps.trtc[0].0;
    let kinds = |i: usize| -> Vec<u8> {
        let good = verdict(&format!("h-{i}"), "zego", zego, json!("r"), &["u"]);
        let with = |field: &str, value: serde_json::Value| {
            let mut v = good.clone();
            v[field] = value;
            v.to_string().into_bytes()
        };
        match i % 16 {
            0 => (0..(i % 97)).map(|k| (k * 31 + i) as u8).collect(),
            1 => good.to_string().into_bytes()[..(i % 40)].to_vec(),
            2 => with("user_ids", json!([format!("a\u{0}{i}")])),
            3 => with("detected_at", json!("0000-01-01T00:00:00Z")),
            4 => with("evidence", json!({"deep": [[[[{"k\u{0}": 1}]]]]})),
            5 => with(&format!("unknown-{i}\u{202e}\n"), json!(1)),
            6 => with("room_id", json!(-1)),
            7 => with("user_ids", json!((0..101).map(|k| format!("u{k}")).collect::<Vec<_>>())),
            8 => with("reason", json!("\u{1b}[2J".repeat(2000))),
            9 => vec![b'['; 5000],
            10 => with("app_id", json!(1e300)),
            11 => format!("{{\"verdict_id\":\"x{i}\",\"verdict_id\":\"dup-key\"}}").into_bytes(),
            12 => with("contract_version", json!("one")),
            13 => with("vendor", json!("agora")),
            14 => "\u{feff}{}".as_bytes().to_vec(),
            _ => with("detected_at", json!("9999-12-31T23:59:59-23:59")),
        }
    };
    let mut published = 0usize;
    let mut valid = 0usize;
    let mut bodies: Vec<Vec<u8>> = Vec::new();
    for i in 0..3000 {
        bodies.push(kinds(i));
        if i % 6 == 0 {
            let v = if i % 12 == 0 {
                verdict(&format!("ok-{i}"), "zego", zego, json!("r"), &[&format!("u{i}")])
            } else {
                verdict(&format!("ok-{i}"), "trtc", trtc, json!(1000 + i % 7), &[&format!("u{i}")])
            };
            bodies.push(v.to_string().into_bytes());
            valid += 1;
        }
    }
    let publisher =
        bouncer::publisher::Publisher::connect(&env.parsed_config().amqp, "hostile").await.expect("publisher");
    for chunk in bodies.chunks(1000) {
        assert!(publisher.publish_all(chunk, &[]).await.iter().all(|ok| *ok));
        published += chunk.len();
    }
    publisher.close().await;

    // Every message accounted for: rejected rows + verdict deliveries = published. (Polled through
    // the helper, which also waits for the worker to have created the schema.)
    env.wait_for_count(
        "SELECT (SELECT count(*) FROM rejected_messages) + (SELECT COALESCE(sum(deliveries), 0) FROM verdicts)",
        published as i64,
        Duration::from_secs(90),
    )
    .await;
    env.wait_for_count(
        "SELECT count(*) FROM verdicts WHERE verdict_id LIKE 'ok-%' AND status = 'done'",
        valid as i64,
        Duration::from_secs(90),
    )
    .await;
    assert!(worker.child.try_wait().expect("status").is_none(), "the worker never exited");
    assert_eq!(env.queue_depth("").await, 0);
}
