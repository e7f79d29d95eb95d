//! Re-entry: the vendors' signed room callbacks re-kick a banned user who comes back, confirm
//! Bouncer's kicks, and a callback that cannot be trusted acts on nothing.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{ApiClient, Apps, EnvOptions, SimControl, TestEnv, metric_sum, parse_prometheus, verdict};

fn banned(id: &str, vendor: &str, app: u32, room: Value, users: &[&str], seconds: u32) -> Value {
    let mut v = verdict(id, vendor, app, room, users);
    v["ban"] = json!({"seconds": seconds, "scope": "room"});
    v
}

/// Successful kick calls the simulator saw carrying `user`.
async fn kicks_of(sim: &SimControl, user: &str) -> usize {
    sim.requests().await.iter().filter(|r| r.rejection.is_none() && r.user_ids.iter().any(|u| u == user)).count()
}

/// Waits until the simulator has had `event` for `user` answered 200 by Bouncer.
async fn wait_delivered(sim: &SimControl, event: &str, user: &str) {
    wait_answered(sim, event, user, 1).await;
}

/// Waits until `n` of `user`'s `event` callbacks have been answered 200 (a later one, when the
/// user had one answered before).
async fn wait_answered(sim: &SimControl, event: &str, user: &str, n: usize) {
    for _ in 0..300 {
        let answered =
            sim.deliveries().await.iter().filter(|d| d.event == event && d.user_id == user && d.status == 200).count();
        if answered >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the {event} callback of {user} was never answered 200: {:?}", sim.deliveries().await);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_banned_user_who_comes_back_is_kicked_again_in_zego_and_in_numeric_and_string_trtc_rooms() {
    let mut env = TestEnv::new(Apps::random(1, 1).with_callbacks(), EnvOptions::default()).await;
    env.enable_api();
    let (zego, trtc) = (env.apps.zego[0].0, env.apps.trtc[0].0);
    let worker = env.worker();
    let sim = SimControl::new(&env.sim);
    sim.set_callback_url(&format!("http://{}", worker.api_addr())).await;
    let places = [("zego", zego, json!("r-z")), ("trtc", trtc, json!(4321)), ("trtc", trtc, json!("4321"))];
    for (i, (vendor, app, room)) in places.iter().enumerate() {
        assert!(sim.join(vendor, *app, room.clone(), &format!("u{i}")).await);
        wait_delivered(&sim, if *vendor == "zego" { "room_login" } else { "103" }, &format!("u{i}")).await;
    }
    let verdicts: Vec<Value> = places
        .iter()
        .enumerate()
        .map(|(i, (vendor, app, room))| banned(&format!("v{i}"), vendor, *app, room.clone(), &[&format!("u{i}")], 600))
        .collect();
    env.publish_all(&verdicts).await;
    env.wait_for_count("SELECT count(*) FROM kicks WHERE status = 'kicked'", 3, Duration::from_secs(60)).await;
    for (i, (vendor, app, room)) in places.iter().enumerate() {
        assert!(!sim.in_room(vendor, *app, room, &format!("u{i}")).await, "the kick removed u{i}");
        assert!(sim.join(vendor, *app, room.clone(), &format!("u{i}")).await, "no vendor rule keeps u{i} out");
    }
    env.wait_for_count("SELECT count(*) FROM reentries WHERE status = 'kicked'", 3, Duration::from_secs(60)).await;
    for (i, (vendor, app, room)) in places.iter().enumerate() {
        assert_eq!(kicks_of(&sim, &format!("u{i}")).await, 2, "kicked, then kicked again");
        assert!(!sim.in_room(vendor, *app, room, &format!("u{i}")).await, "u{i} is out again");
    }
    let pool = env.pool().await;
    let rows: Vec<(String, String, String, bool, i32)> = sqlx::query_as(
        "SELECT verdict_id, user_id, room_id, room_id_numeric, attempts FROM reentries ORDER BY verdict_id",
    )
    .fetch_all(&pool)
    .await
    .expect("reentries");
    let want: Vec<(String, String, String, bool, i32)> = vec![
        ("v0".into(), "u0".into(), "r-z".into(), false, 1),
        ("v1".into(), "u1".into(), "4321".into(), true, 1),
        ("v2".into(), "u2".into(), "4321".into(), false, 1),
    ];
    assert_eq!(rows, want, "each re-entry names the verdict whose ban held, in the room as the vendor sent it");

    // The numeric room's ban does not cover the string room with the same digits.
    assert!(sim.join("trtc", trtc, json!("4321"), "u1").await);
    // u1's third entry callback (joined, came back, now the string room) has been acted on.
    wait_answered(&sim, "103", "u1", 3).await;
    assert_eq!(sqlx::query_scalar::<_, i64>("SELECT count(*) FROM reentries").fetch_one(&pool).await.unwrap(), 3);

    // The vendor's removal callbacks confirm each kick and each re-kick.
    env.wait_for_count(
        "SELECT count(*) FROM kick_confirmations WHERE verdict_id IS NOT NULL OR reentry_id IS NOT NULL",
        6,
        Duration::from_secs(60),
    )
    .await;
    let out = env.cli(&["audit", "--unconfirmed", "--within", "1", "--format", "json"]);
    assert!(
        out.status.success() && crate::helpers::stdout(&out).trim().is_empty(),
        "every kick was confirmed: {out:?}"
    );
    let story = env.cli(&["audit", "--verdict", "v1", "--format", "table"]);
    let text = String::from_utf8_lossy(&story.stdout);
    assert!(text.contains("re-entered"), "the story tells the re-entry: {text}");
    assert!(text.contains("left the room"), "and the vendor's confirmation: {text}");
    let console = crate::helpers::ConsoleProcess::start(&env.config.0).await;
    let page = reqwest::get(format!("{}/verdicts/v1", console.base)).await.unwrap().text().await.unwrap();
    assert!(page.contains("<h2>Re-entries</h2>") && page.contains("left the room at"), "{page}");
    let page = reqwest::get(format!("{}/users/u1", console.base)).await.unwrap().text().await.unwrap();
    assert!(page.contains("class=\"reentry\""), "the user's page lists the re-entry: {page}");
    let metrics = parse_prometheus(&worker.metrics_text().await);
    assert_eq!(metric_sum(&metrics, "bouncer_reentries_total", ("vendor", "trtc")), 2.0);
    assert_eq!(metric_sum(&metrics, "bouncer_rekicks_total", ("outcome", "kicked")), 3.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_user_whose_ban_ended_or_was_lifted_joins_and_stays_and_an_unbanned_join_changes_nothing() {
    let mut env = TestEnv::new(Apps::random(1, 0).with_callbacks(), EnvOptions::default()).await;
    let token = env.enable_api();
    let app = env.apps.zego[0].0;
    env.publish_all(&[
        banned("v-lifted", "zego", app, json!("r"), &["lifted"], 600),
        banned("v-short", "zego", app, json!("r"), &["expired"], 1),
    ])
    .await;
    let worker = env.worker();
    let sim = SimControl::new(&env.sim);
    sim.set_callback_url(&format!("http://{}", worker.api_addr())).await;
    env.wait_for_count("SELECT count(*) FROM kicks WHERE status = 'kicked'", 2, Duration::from_secs(60)).await;
    let api = ApiClient::new(&worker, Some(&token));
    let lift = json!({"vendor": "zego", "app_id": app, "user_id": "lifted", "room_id": "r", "reason": "appeal"});
    assert_eq!(api.post("/v1/bans/lift", &lift).await.body["lifted"], 1);
    while api.banned("zego", app, "expired", Some(("r", None))).await {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for user in ["lifted", "expired", "innocent"] {
        assert!(sim.join("zego", app, json!("r"), user).await);
        wait_delivered(&sim, "room_login", user).await;
    }
    let pool = env.pool().await;
    assert_eq!(sqlx::query_scalar::<_, i64>("SELECT count(*) FROM reentries").fetch_one(&pool).await.unwrap(), 0);
    for user in ["lifted", "expired", "innocent"] {
        assert!(sim.in_room("zego", app, &json!("r"), user).await, "{user} stays");
    }
    assert_eq!(kicks_of(&sim, "innocent").await, 0);
    assert_eq!(kicks_of(&sim, "lifted").await, 1, "only the verdict's kick");

    // Neither was in a room when kicked, so the vendor never confirmed those kicks.
    let out = env.cli(&["audit", "--unconfirmed", "--within", "0", "--format", "json"]);
    assert!(out.status.success(), "{}", crate::helpers::stderr(&out));
    let mut users: Vec<String> = crate::helpers::stdout(&out)
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).expect("a JSON line")["user_id"].as_str().unwrap_or_default().to_owned()
        })
        .collect();
    users.sort();
    assert_eq!(users, ["expired", "lifted"]);
}

/// A ZEGO callback body for `user` entering `room`, signed with `secret` at `timestamp`.
fn zego_login(app: u32, room: &str, user: &str, secret: &str, timestamp: i64, nonce: &str, session: &str) -> String {
    let signature = bouncer_sim::zego_callback_signature(secret, &timestamp.to_string(), nonce);
    json!({"event": "room_login", "appid": app.to_string(), "timestamp": timestamp.to_string(), "nonce": nonce,
           "signature": signature, "room_id": room, "user_account": user, "session_id": session,
           "login_time": (timestamp * 1000).to_string()})
    .to_string()
}

fn trtc_enter(room: Value, user: &str, sent_ms: i64) -> String {
    json!({"EventGroupId": 1, "EventType": 103, "CallbackTs": sent_ms,
           "EventInfo": {"RoomId": room, "EventTs": sent_ms / 1000, "EventMsTs": sent_ms, "UserId": user, "Reason": 1}})
    .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_forged_stale_replayed_or_unknown_callback_is_refused_and_acts_on_nothing() {
    let mut env = TestEnv::new(Apps::random(1, 1).with_callbacks(), EnvOptions::default()).await;
    env.enable_api();
    let (zego, trtc) = (env.apps.zego[0].0, env.apps.trtc[0].0);
    let (zego_secret, trtc_key) = (env.apps.callback_secret(zego), env.apps.callback_secret(trtc));
    env.publish_all(&[
        banned("vz", "zego", zego, json!("r"), &["bad"], 600),
        banned("vt", "trtc", trtc, json!(77), &["bad"], 600),
    ])
    .await;
    let worker = env.worker();
    env.wait_for_count("SELECT count(*) FROM kicks WHERE status = 'kicked'", 2, Duration::from_secs(60)).await;
    let http = reqwest::Client::new();
    let base = format!("http://{}", worker.api_addr());
    let now = chrono::Utc::now().timestamp();
    let post_zego = async |app: u32, body: String, form: bool| {
        http.post(format!("{base}/v1/callbacks/zego/{app}"))
            .header("content-type", if form { "application/x-www-form-urlencoded" } else { "application/json" })
            .body(body)
            .send()
            .await
            .expect("post")
    };
    let post_trtc = async |body: &str, sign: Option<&str>| {
        let mut r = http.post(format!("{base}/v1/callbacks/trtc/{trtc}")).header("content-type", "application/json");
        if let Some(s) = sign {
            r = r.header("Sign", s);
        }
        r.body(body.to_owned()).send().await.expect("post")
    };

    // Refused, each for its reason; none acts.
    let stale = zego_login(zego, "r", "bad", &zego_secret, now - 600, "1", "s-stale");
    let wrong = zego_login(zego, "r", "bad", "not-the-secret", now, "2", "s-wrong");
    let unknown = zego_login(zego + 1, "r", "bad", &zego_secret, now, "3", "s-unknown");
    for (app, body, reason) in
        [(zego, stale, "stale_timestamp"), (zego, wrong, "bad_signature"), (zego + 1, unknown, "unknown_app")]
    {
        let r = post_zego(app, body, false).await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["message"], format!("callback refused: {reason}"));
    }
    let good = zego_login(zego, "r", "bad", &zego_secret, now, "4", "s-good");
    assert_eq!(post_zego(zego, good.clone(), false).await.status(), StatusCode::OK);
    // The same (timestamp, nonce, signature) again — with this body or another — is a replay.
    let replay = good.replace("s-good", "s-other");
    assert_eq!(post_zego(zego, replay, false).await.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(post_zego(zego, good, false).await.status(), StatusCode::UNAUTHORIZED);
    // Numbers and form bodies are read like strings.
    let sig = bouncer_sim::zego_callback_signature(&zego_secret, &now.to_string(), "5");
    let form = format!(
        "event=room_login&appid={zego}&timestamp={now}&nonce=5&signature={sig}&room_id=r&user_account=bad&session_id=s-form&login_time={}",
        now * 1000
    );
    assert_eq!(post_zego(zego, form, true).await.status(), StatusCode::OK);

    let ms = chrono::Utc::now().timestamp_millis();
    let body = trtc_enter(json!(77), "bad", ms);
    let sign = bouncer_sim::trtc_sign(&trtc_key, &body);
    assert_eq!(post_trtc(&body.replace("\"bad\"", "\"bae\""), Some(&sign)).await.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(post_trtc(&body, None).await.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        post_trtc(&body, Some(&bouncer_sim::trtc_sign("wrongkey", &body))).await.status(),
        StatusCode::UNAUTHORIZED
    );
    let old = trtc_enter(json!(77), "bad", ms - 600_000);
    assert_eq!(
        post_trtc(&old, Some(&bouncer_sim::trtc_sign(&trtc_key, &old))).await.status(),
        StatusCode::UNAUTHORIZED
    );
    let not_json = "room 77: bad entered";
    let r = post_trtc(not_json, Some(&bouncer_sim::trtc_sign(&trtc_key, not_json))).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST, "signed but unreadable is a 400");
    assert_eq!(post_trtc(&body, Some(&sign)).await.status(), StatusCode::OK);
    assert_eq!(post_trtc(&body, Some(&sign)).await.status(), StatusCode::OK, "a redelivery is answered…");

    let pool = env.pool().await;
    let entries: Vec<(String, String)> =
        sqlx::query_as("SELECT vendor, event_key FROM reentries ORDER BY vendor, event_key")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(entries.len(), 3, "…and recorded once: the two good ZEGO entries and the TRTC one: {entries:?}");
    let metrics = parse_prometheus(&worker.metrics_text().await);
    for reason in ["stale_timestamp", "bad_signature", "unknown_app", "replayed", "missing_signature", "malformed"] {
        assert!(metric_sum(&metrics, "bouncer_callbacks_refused_total", ("reason", reason)) >= 1.0, "{reason} counted");
    }
    let log = worker.log_text();
    assert!(!log.contains(&zego_secret) && !log.contains(&trtc_key), "no secret in the log");
    assert!(!log.contains("room 77: bad entered"), "no body in the log");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_user_under_a_zego_login_rule_is_refused_at_join_and_nothing_needs_a_rekick() {
    let mut env = TestEnv::new(Apps::random(1, 0).with_forbid_rules().with_callbacks(), EnvOptions::default()).await;
    env.enable_api();
    let app = env.apps.zego[0].0;
    env.publish_json(&banned("v-rule", "zego", app, json!("r"), &["ruled"], 600)).await;
    let worker = env.worker();
    let sim = SimControl::new(&env.sim);
    sim.set_callback_url(&format!("http://{}", worker.api_addr())).await;
    env.wait_for_count("SELECT count(*) FROM bans WHERE rule_state = 'in_force'", 1, Duration::from_secs(60)).await;
    assert!(!sim.join("zego", app, json!("r"), "ruled").await, "ZEGO refuses the login itself");
    assert!(sim.join("zego", app, json!("elsewhere"), "ruled").await, "a room ban's rule holds in its room only");
    wait_delivered(&sim, "room_login", "ruled").await;
    let pool = env.pool().await;
    assert_eq!(sqlx::query_scalar::<_, i64>("SELECT count(*) FROM reentries").fetch_one(&pool).await.unwrap(), 0);
}
