//! Outcome events: every verdict's result comes back on RabbitMQ as a CloudEvent, from the
//! transactional outbox, with the trail's figures and the publisher's trace context.

use std::collections::BTreeMap;
use std::time::Duration;

use lapin::types::{AMQPValue, FieldTable, LongString};
use serde_json::{Value, json};

use crate::helpers::{Apps, Arrived, EnvOptions, SimControl, TestEnv, metric_sum, parse_prometheus, verdict};

fn schema() -> jsonschema::Validator {
    let doc: Value = serde_json::from_str(include_str!("../../deploy/event.schema.json")).expect("schema is JSON");
    jsonschema::options().with_draft(jsonschema::Draft::Draft202012).build(&doc).expect("the schema compiles")
}

#[tokio::test(flavor = "multi_thread")]
async fn every_verdict_done_gone_failed_or_replayed_comes_back_as_an_event_equal_to_the_trail() {
    let mut env = TestEnv::new(Apps::random(1, 1), EnvOptions::default()).await;
    env.enable_outcomes_queue();
    let (zego, trtc) = (env.apps.zego[0].0, env.apps.trtc[0].0);
    let sim = SimControl::new(&env.sim);
    sim.set_faults(json!({"vendor": "zego", "gone_rooms": ["closed"]})).await;
    sim.set_faults(json!({"vendor": "trtc", "bad_users": ["bad"]})).await;
    let mut banned = verdict("v-ban", "zego", zego, json!("r1"), &["e"]);
    banned["ban"] = json!({"seconds": 600, "scope": "app"});
    env.publish_all(&[
        verdict("v-done", "zego", zego, json!("r1"), &["a", "b"]),
        verdict("v-gone", "zego", zego, json!("closed"), &["c"]),
        verdict("v-failed", "trtc", trtc, json!(77), &["d", "bad"]),
        banned,
    ])
    .await;
    let worker = env.worker();
    env.wait_for_count("SELECT count(*) FROM verdicts WHERE status <> 'pending'", 4, Duration::from_secs(60)).await;
    sim.clear_faults().await;
    let replay = env.cli(&["replay", "--verdict", "v-failed", "--actor", "test"]);
    assert!(replay.status.success(), "{}", crate::helpers::stderr(&replay));
    env.wait_for_count("SELECT count(*) FROM verdicts WHERE status = 'done'", 4, Duration::from_secs(60)).await;
    env.wait_for_count("SELECT count(*) FROM outbox", 0, Duration::from_secs(30)).await;

    let events = env.read_events(&env.outcomes_queue(), 5, Duration::from_secs(30)).await;
    assert_eq!(events.len(), 5, "four finishes and the replay's: {events:#?}");
    let validator = schema();
    for e in &events {
        let errors: Vec<String> = validator.iter_errors(&e.event).map(|x| x.to_string()).collect();
        assert!(errors.is_empty(), "{errors:?} in {}", e.event);
        assert_eq!(e.message_id.as_deref(), e.event["id"].as_str(), "message_id is the event id");
        assert_eq!(e.kind.as_deref(), Some("bouncer.verdict.finished"));
        assert_eq!(e.content_type.as_deref(), Some("application/cloudevents+json"));
        assert!(e.persistent);
        assert_eq!(e.headers.get("ce-id").map(String::as_str), e.event["id"].as_str());
        assert_eq!(e.event["source"], format!("bouncer/{}", env.queue));
        assert_eq!(e.event["subject"], e.event["data"]["verdict_id"]);
    }
    let keys: BTreeMap<(String, i64), String> = events
        .iter()
        .map(|e| {
            (
                (e.event["subject"].as_str().unwrap().to_owned(), e.event["data"]["replay"].as_i64().unwrap()),
                e.routing_key.clone(),
            )
        })
        .collect();
    let want: BTreeMap<(String, i64), String> = [
        (("v-ban", 0), format!("verdict.done.zego.{zego}")),
        (("v-done", 0), format!("verdict.done.zego.{zego}")),
        (("v-failed", 0), format!("verdict.failed.trtc.{trtc}")),
        (("v-failed", 1), format!("verdict.done.trtc.{trtc}")),
        (("v-gone", 0), format!("verdict.done.zego.{zego}")),
    ]
    .into_iter()
    .map(|((v, r), k)| ((v.to_owned(), r), k))
    .collect();
    assert_eq!(keys, want, "one event per finish, routed by status, vendor and app");
    let ids: std::collections::BTreeSet<&str> = events.iter().filter_map(|e| e.event["id"].as_str()).collect();
    assert_eq!(ids.len(), 5, "each finish is an event of its own");

    // The latest event of each verdict says what the trail says.
    let pool = env.pool().await;
    for e in events.iter().filter(|e| !(e.event["subject"] == "v-failed" && e.event["data"]["replay"] == 0)) {
        let id = e.event["subject"].as_str().unwrap();
        let trail: Vec<(String, String, i32)> =
            sqlx::query_as("SELECT user_id, status, attempts FROM kicks WHERE verdict_id = $1 ORDER BY user_id")
                .bind(id)
                .fetch_all(&pool)
                .await
                .unwrap();
        let said: Vec<(String, String, i32)> = e.event["data"]["users"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| {
                (
                    u["user_id"].as_str().unwrap().into(),
                    u["outcome"].as_str().unwrap().into(),
                    u["attempts"].as_i64().unwrap() as i32,
                )
            })
            .collect();
        assert_eq!(said, trail, "{id}");
        let status: String = sqlx::query_scalar("SELECT status FROM verdicts WHERE verdict_id = $1")
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(e.event["data"]["status"], status);
    }
    let first_failed =
        events.iter().find(|e| e.event["subject"] == "v-failed" && e.event["data"]["replay"] == 0).unwrap();
    assert_eq!(first_failed.event["data"]["room_id"], json!(77), "a numeric TRTC room stays a number");
    let bad = first_failed.event["data"]["users"].as_array().unwrap().iter().find(|u| u["user_id"] == "bad").unwrap();
    assert_eq!(bad["outcome"], "failed");
    let ban = events.iter().find(|e| e.event["subject"] == "v-ban").unwrap();
    assert_eq!(ban.event["data"]["ban"], json!({"seconds": 600, "scope": "app"}));
    let metrics = parse_prometheus(&worker.metrics_text().await);
    assert!(metric_sum(&metrics, "bouncer_events_published_total", ("type", "bouncer.verdict.finished")) >= 5.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn events_nobody_is_bound_for_neither_fill_the_outbox_nor_stall_the_relay() {
    let env = TestEnv::new(Apps::random(1, 0), EnvOptions::default()).await;
    let app = env.apps.zego[0].0;
    let verdicts: Vec<Value> =
        (0..50).map(|i| verdict(&format!("u-{i}"), "zego", app, json!("r"), &[&format!("u{i}")])).collect();
    env.publish_all(&verdicts).await;
    let worker = env.worker();
    env.wait_for_count("SELECT count(*) FROM verdicts WHERE status = 'done'", 50, Duration::from_secs(60)).await;
    env.wait_for_count("SELECT count(*) FROM outbox", 0, Duration::from_secs(30)).await;
    let metrics = parse_prometheus(&worker.metrics_text().await);
    let unroutable: f64 =
        metrics.iter().filter(|(n, _, _)| n == "bouncer_events_unroutable_total").map(|(_, _, v)| *v).sum();
    assert_eq!(unroutable, 50.0, "each counted, then dropped as the broker drops any unroutable message");
    let log = worker.log_text();
    assert!(log.contains("no queue bound for their routing key"), "Bouncer says so, once a batch");
    assert!(!log.contains("Server returned us a message"), "and the AMQP client's line per event is not logged");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_verdict_published_with_a_traceparent_yields_events_of_the_same_trace() {
    let mut env = TestEnv::new(Apps::random(1, 0), EnvOptions::default()).await;
    env.enable_outcomes_queue();
    let app = env.apps.zego[0].0;
    let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let mut headers = FieldTable::default();
    headers.insert("traceparent".into(), AMQPValue::LongString(LongString::from(parent)));
    let worker = env.worker();
    env.publish_with(verdict("traced", "zego", app, json!("r"), &["t"]).to_string().as_bytes(), headers).await;
    env.publish_json(&verdict("untraced", "zego", app, json!("r"), &["t2"])).await;
    let events: Vec<Arrived> = env.read_events(&env.outcomes_queue(), 2, Duration::from_secs(60)).await;
    let traced = events.iter().find(|e| e.event["subject"] == "traced").expect("the traced verdict's event");
    assert_eq!(traced.event["traceparent"], parent, "the extension attribute");
    assert_eq!(traced.headers.get("traceparent").map(String::as_str), Some(parent), "and the AMQP header");
    let untraced = events.iter().find(|e| e.event["subject"] == "untraced").expect("the other event");
    assert!(untraced.event.get("traceparent").is_none());
    let log = worker.log_text();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("4bf92f3577b34da6a3ce929d0e0e4736")).collect();
    assert!(
        lines.iter().any(|l| l.contains("verdict recorded")),
        "the trace id is on the verdict's intake line: {lines:?}"
    );
    assert!(
        lines.iter().any(|l| l.contains("vendor call") && l.contains("traced")),
        "and on its vendor call's line, beside its verdict id: {lines:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rekick_and_a_lifted_ban_are_events_too_in_the_order_they_happened() {
    let mut env = TestEnv::new(Apps::random(1, 0).with_callbacks(), EnvOptions::default()).await;
    env.enable_outcomes_queue();
    let token = env.enable_api();
    let app = env.apps.zego[0].0;
    let mut banned = verdict("v-b", "zego", app, json!("r"), &["u"]);
    banned["ban"] = json!({"seconds": 600});
    env.publish_json(&banned).await;
    // A second ban of the same user elsewhere: one lift ends both, two events.
    let mut elsewhere = verdict("v-c", "zego", app, json!("r2"), &["u"]);
    elsewhere["ban"] = json!({"seconds": 600});
    env.publish_json(&elsewhere).await;
    let worker = env.worker();
    let sim = SimControl::new(&env.sim);
    sim.set_callback_url(&format!("http://{}", worker.api_addr())).await;
    env.wait_for_count("SELECT count(*) FROM kicks WHERE status = 'kicked'", 2, Duration::from_secs(60)).await;
    assert!(sim.join("zego", app, json!("r"), "u").await);
    env.wait_for_count("SELECT count(*) FROM reentries WHERE status = 'kicked'", 1, Duration::from_secs(60)).await;
    let api = crate::helpers::ApiClient::new(&worker, Some(&token));
    let lift = json!({"vendor": "zego", "app_id": app, "user_id": "u", "reason": "appeal"});
    assert_eq!(api.post("/v1/bans/lift", &lift).await.body["lifted"], 2);
    let all = env.read_events(&env.outcomes_queue(), 5, Duration::from_secs(30)).await;
    let other: Vec<&str> =
        all.iter().filter(|e| e.event["subject"] == "v-c").map(|e| e.event["type"].as_str().unwrap()).collect();
    assert_eq!(other, ["bouncer.verdict.finished", "bouncer.ban.lifted"]);
    let ids: std::collections::BTreeSet<&str> = all.iter().filter_map(|e| e.event["id"].as_str()).collect();
    assert_eq!(ids.len(), 5, "every event its own id (two lifts in one statement too)");
    let events: Vec<Arrived> = all.into_iter().filter(|e| e.event["subject"] == "v-b").collect();
    let kinds: Vec<(&str, &str)> =
        events.iter().map(|e| (e.event["type"].as_str().unwrap(), e.routing_key.as_str())).collect();
    let (finished, kicked, lifted) =
        (format!("verdict.done.zego.{app}"), format!("reentry.kicked.zego.{app}"), format!("ban.lifted.zego.{app}"));
    assert_eq!(
        kinds,
        [
            ("bouncer.verdict.finished", finished.as_str()),
            ("bouncer.reentry.kicked", kicked.as_str()),
            ("bouncer.ban.lifted", lifted.as_str())
        ],
        "one subject (the verdict), in order"
    );
    assert_eq!(events[1].event["data"]["user_id"], "u");
    assert_eq!(events[2].event["data"]["lifted_by"], crate::helpers::TOKEN_SERVER);
    let validator = schema();
    assert!(events.iter().all(|e| validator.is_valid(&e.event)));
}
