//! Bans: a verdict keeps its users out for a time, and token servers ask the public API.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{ApiClient, Apps, EnvOptions, TOKEN_SERVER, TestEnv, verdict};

fn with_ban(mut v: Value, seconds: u32, scope: &str) -> Value {
    v["ban"] = json!({"seconds": seconds, "scope": scope});
    v
}

/// Waits until the database's clock is past `t` (an RFC 3339 time the API gave).
async fn wait_past(env: &TestEnv, t: &str) {
    let pool = env.pool().await;
    loop {
        let past: bool =
            sqlx::query_scalar("SELECT now() > $1::timestamptz").bind(t).fetch_one(&pool).await.expect("clock");
        if past {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_room_ban_keeps_its_users_out_of_that_room_until_it_ends_is_extended_or_is_lifted() {
    let mut env = TestEnv::new(Apps::random(1, 0), EnvOptions::default()).await;
    let token = env.enable_api();
    let app = env.apps.zego[0].0;
    env.publish_all(&[
        with_ban(verdict("v-room", "zego", app, json!("r1"), &["u1", "u2"]), 60, "room"),
        with_ban(verdict("v-app", "zego", app, json!("r1"), &["u3"]), 60, "app"),
        with_ban(verdict("v-short", "zego", app, json!("r1"), &["u4"]), 2, "room"),
    ])
    .await;
    let worker = env.worker();
    env.wait_for_count("SELECT count(*) FROM kicks WHERE status = 'kicked'", 4, Duration::from_secs(60)).await;
    let api = ApiClient::new(&worker, Some(&token));

    // A room ban: that room only, and not for a ticket good for any room.
    let a = api.check("zego", app, "u1", Some(("r1", None))).await;
    assert_eq!(a["banned"], true, "{a}");
    assert_eq!(
        (a["scope"].as_str(), a["room_id"].as_str(), a["verdict_id"].as_str()),
        (Some("room"), Some("r1"), Some("v-room"))
    );
    assert_eq!(a["reason"], "spam");
    assert!(!api.banned("zego", app, "u1", Some(("r2", None))).await, "another room");
    assert!(!api.banned("zego", app, "u1", None).await, "without a room only app bans count");
    assert!(!api.banned("zego", app + 1, "u1", Some(("r1", None))).await, "another app");
    // An app ban: every room, and without one.
    assert!(api.banned("zego", app, "u3", Some(("r9", None))).await);
    assert!(api.banned("zego", app, "u3", None).await);

    // A 2 s ban reads not banned once its end has passed.
    let short = api.check("zego", app, "u4", Some(("r1", None))).await;
    assert_eq!(short["banned"], true, "{short}");
    wait_past(&env, short["expires_at"].as_str().expect("expires_at")).await;
    assert!(!api.banned("zego", app, "u4", Some(("r1", None))).await, "the 2 s ban has ended");

    // A second verdict extends the ban and both stay traceable.
    let before = a["expires_at"].as_str().expect("expires_at").to_owned();
    env.publish_json(&with_ban(verdict("v-again", "zego", app, json!("r1"), &["u1"]), 600, "room")).await;
    env.wait_for_count("SELECT count(*) FROM kicks WHERE status = 'kicked'", 5, Duration::from_secs(60)).await;
    let again = api.check("zego", app, "u1", Some(("r1", None))).await;
    assert_eq!(again["verdict_id"], "v-again");
    assert!(again["expires_at"].as_str() > Some(before.as_str()), "{again} extends {before}");
    let listed = api.get(&format!("/v1/bans?vendor=zego&app_id={app}&user_id=u1")).await;
    let bans = listed.body["bans"].as_array().expect("bans");
    assert_eq!(bans.len(), 1, "one ban, extended: {listed:?}");
    assert_eq!(bans[0]["verdict_ids"], json!(["v-room", "v-again"]));

    // Lifted: not banned at once, and who lifted it is recorded.
    let lifted = api
        .post(
            "/v1/bans/lift",
            &json!({"vendor": "zego", "app_id": app, "user_id": "u1", "room_id": "r1", "reason": "appeal granted"}),
        )
        .await;
    assert_eq!((lifted.status, lifted.body["lifted"].as_u64()), (StatusCode::OK, Some(1)), "{lifted:?}");
    assert!(!api.banned("zego", app, "u1", Some(("r1", None))).await, "lifted");
    assert!(api.banned("zego", app, "u2", Some(("r1", None))).await, "the other user stays banned");
    let lifted = api.get(&format!("/v1/bans?vendor=zego&app_id={app}&state=lifted")).await;
    let row = &lifted.body["bans"][0];
    assert_eq!((row["user_id"].as_str(), row["lifted_by"].as_str()), (Some("u1"), Some(TOKEN_SERVER)));
    assert_eq!(row["lift_reason"], "appeal granted");
    let expired = api.get(&format!("/v1/bans?vendor=zego&app_id={app}&state=expired")).await;
    assert_eq!(
        expired.body["bans"].as_array().map(|b| b.iter().map(|b| b["user_id"].clone()).collect::<Vec<_>>()),
        Some(vec![json!("u4")])
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn trtc_numeric_and_string_rooms_of_the_same_digits_are_different_rooms_to_the_check() {
    let mut env = TestEnv::new(Apps::random(0, 1), EnvOptions::default()).await;
    let token = env.enable_api();
    let app = env.apps.trtc[0].0;
    env.publish_all(&[
        with_ban(verdict("v-int", "trtc", app, json!(1234), &["n"]), 60, "room"),
        with_ban(verdict("v-str", "trtc", app, json!("1234"), &["s"]), 60, "room"),
    ])
    .await;
    let worker = env.worker();
    env.wait_for_count("SELECT count(*) FROM kicks WHERE status = 'kicked'", 2, Duration::from_secs(60)).await;
    let api = ApiClient::new(&worker, Some(&token));
    assert!(api.banned("trtc", app, "n", Some(("1234", Some("int")))).await);
    assert!(!api.banned("trtc", app, "n", Some(("1234", Some("str")))).await);
    assert!(api.banned("trtc", app, "s", Some(("1234", Some("str")))).await);
    assert!(!api.banned("trtc", app, "s", Some(("1234", Some("int")))).await);
    // Unsaid: either kind counts.
    assert!(api.banned("trtc", app, "n", Some(("1234", None))).await);
    assert!(api.banned("trtc", app, "s", Some(("1234", None))).await);
    // In a body, the JSON type says which.
    let many = api
        .post("/v1/bans/check", &json!({"vendor": "trtc", "app_id": app, "room_id": 1234, "user_ids": ["s", "n", "x"]}))
        .await;
    let answers: Vec<(Value, Value)> = many.body["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| (r["user_id"].clone(), r["banned"].clone()))
        .collect();
    assert_eq!(answers, vec![(json!("s"), json!(false)), (json!("n"), json!(true)), (json!("x"), json!(false))]);
    assert_eq!(many.body["results"][1]["room_id_type"], "int");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_api_refuses_a_missing_or_wrong_token_and_names_every_bad_parameter() {
    let mut env = TestEnv::new(Apps::random(1, 0), EnvOptions::default()).await;
    let token = env.enable_api();
    let worker = env.worker();
    let api = ApiClient::new(&worker, Some(&token));
    let app = env.apps.zego[0].0;
    let check = format!("/v1/bans/check?vendor=zego&app_id={app}&user_id=u");
    for stranger in
        [api.with_token(None), api.with_token(Some("not-the-token-at-all")), api.with_token(Some(&format!("{token}x")))]
    {
        let a = stranger.get(&check).await;
        assert_eq!((a.status, a.body["code"].as_str()), (StatusCode::UNAUTHORIZED, Some("unauthorized")), "{a:?}");
        assert!(!a.body.to_string().contains(&token));
    }
    let bad = [
        ("/v1/bans/check?vendor=zego&user_id=u".to_owned(), "app_id"),
        (format!("/v1/bans/check?vendor=agora&app_id={app}&user_id=u"), "vendor"),
        ("/v1/bans/check?vendor=zego&app_id=abc&user_id=u".to_owned(), "app_id"),
        (format!("/v1/bans/check?vendor=zego&app_id={app}&user_id="), "user_id"),
        (format!("/v1/bans/check?vendor=zego&app_id={app}&user_id={}", "u".repeat(129)), "user_id"),
        (format!("/v1/bans/check?vendor=zego&app_id={app}&user_id=u&room=r"), "room"),
        (format!("/v1/bans/check?vendor=zego&app_id={app}&user_id=u&room_id_type=int"), "room_id_type"),
        (format!("/v1/bans/check?vendor=trtc&app_id={app}&user_id=u&room_id=r&room_id_type=int"), "room_id"),
        ("/v1/bans?state=gone".to_owned(), "state"),
        ("/v1/bans?limit=0".to_owned(), "limit"),
    ];
    for (path, parameter) in bad {
        let a = api.get(&path).await;
        assert_eq!(
            (a.status, a.body["parameter"].as_str()),
            (StatusCode::BAD_REQUEST, Some(parameter)),
            "{path}: {a:?}"
        );
    }
    let hundred_one: Vec<String> = (0..101).map(|i| format!("u{i}")).collect();
    let bodies = [
        (json!({"vendor": "zego", "app_id": app, "user_ids": hundred_one}), "user_ids"),
        (json!({"vendor": "zego", "app_id": app, "user_ids": ["a", 7]}), "user_ids[1]"),
        (json!({"vendor": "zego", "app_id": app}), "user_ids"),
        (json!({"vendor": "zego", "app_id": "1", "user_ids": ["a"]}), "app_id"),
        (json!({"vendor": "zego", "app_id": app, "user_ids": ["a"], "room": "r"}), "room"),
    ];
    for (body, parameter) in bodies {
        let a = api.post("/v1/bans/check", &body).await;
        assert_eq!(
            (a.status, a.body["parameter"].as_str()),
            (StatusCode::BAD_REQUEST, Some(parameter)),
            "{body}: {a:?}"
        );
    }
    let lift = api.post("/v1/bans/lift", &json!({"vendor": "zego", "app_id": app, "user_id": "u"})).await;
    assert_eq!((lift.status, lift.body["parameter"].as_str()), (StatusCode::BAD_REQUEST, Some("reason")));
    let not_json = api.post_raw("/v1/bans/check", "{not json").await;
    assert_eq!((not_json.status, not_json.body["code"].as_str()), (StatusCode::BAD_REQUEST, Some("bad_body")));
    let huge = api.post_raw("/v1/bans/check", &format!("{{\"pad\": \"{}\"}}", "x".repeat(70_000))).await;
    assert_eq!((huge.status, huge.body["code"].as_str()), (StatusCode::PAYLOAD_TOO_LARGE, Some("body_too_large")));
    let nowhere = api.get("/v1/nowhere").await;
    assert_eq!((nowhere.status, nowhere.body["code"].as_str()), (StatusCode::NOT_FOUND, Some("not_found")));
}

#[tokio::test(flavor = "multi_thread")]
async fn every_path_of_the_openapi_document_answers_as_the_document_says() {
    let mut env = TestEnv::new(Apps::random(1, 0), EnvOptions::default()).await;
    let token = env.enable_api();
    let app = env.apps.zego[0].0;
    env.publish_json(&with_ban(verdict("v-1", "zego", app, json!("r1"), &["u1"]), 60, "app")).await;
    let worker = env.worker();
    env.wait_for_count("SELECT count(*) FROM kicks WHERE status = 'kicked'", 1, Duration::from_secs(60)).await;
    let api = ApiClient::new(&worker, Some(&token));

    // Served without a token, and the same as the file in deploy/.
    let served = api.with_token(None).get("/v1/openapi.json").await;
    let file: Value = serde_json::from_str(bouncer::api::OPENAPI).expect("the document is JSON");
    assert_eq!((served.status, &served.body), (StatusCode::OK, &file));
    assert_eq!(file["openapi"], "3.1.0");

    // One request per operation, and the error answers, each checked against its schema.
    let calls: Vec<(&str, &str, ApiAnswer)> = vec![
        ("/v1/bans/check", "get", api.get(&format!("/v1/bans/check?vendor=zego&app_id={app}&user_id=u1")).await),
        (
            "/v1/bans/check",
            "get",
            api.get(&format!("/v1/bans/check?vendor=zego&app_id={app}&user_id=u2&room_id=r1")).await,
        ),
        ("/v1/bans/check", "get", api.get("/v1/bans/check?vendor=zego").await),
        ("/v1/bans/check", "get", api.with_token(None).get("/v1/bans/check").await),
        (
            "/v1/bans/check",
            "post",
            api.post("/v1/bans/check", &json!({"vendor": "zego", "app_id": app, "user_ids": ["u1", "u2"]})).await,
        ),
        ("/v1/bans", "get", api.get("/v1/bans?limit=1").await),
        ("/v1/bans", "get", api.get(&format!("/v1/bans?vendor=zego&app_id={app}&state=active")).await),
        (
            "/v1/bans/lift",
            "post",
            api.post("/v1/bans/lift", &json!({"vendor": "zego", "app_id": app, "user_id": "u1", "reason": "test"}))
                .await,
        ),
        (
            "/v1/bans/lift",
            "post",
            api.post("/v1/bans/lift", &json!({"vendor": "zego", "app_id": app, "user_id": "u1", "reason": "again"}))
                .await,
        ),
        // The vendors' callbacks (no app of this test has a callback secret: refused).
        (
            "/v1/callbacks/zego/{app_id}",
            "post",
            api.with_token(None).post_raw(&format!("/v1/callbacks/zego/{app}"), "{}").await,
        ),
        (
            "/v1/callbacks/trtc/{sdk_app_id}",
            "post",
            api.with_token(None).post_raw(&format!("/v1/callbacks/trtc/{app}"), "{}").await,
        ),
    ];
    let mut covered = std::collections::BTreeSet::new();
    for (path, method, answer) in &calls {
        let operation = &file["paths"][*path][*method];
        assert!(operation.is_object(), "{method} {path} is in the document");
        let status = answer.status.as_u16().to_string();
        let mut response = &operation["responses"][&status];
        if let Some(r) = response["$ref"].as_str() {
            response = &file["components"]["responses"][r.rsplit('/').next().expect("name")];
        }
        let schema = &response["content"]["application/json"]["schema"];
        assert!(schema.is_object(), "{method} {path} documents status {status}: {answer:?}");
        // The whole document as the root (its keys are no JSON Schema keywords), pointing at the
        // response's schema: `$ref`s inside resolve against the document.
        let mut root = file.clone();
        root["$ref"] = format!("#{}", pointer_of(schema, &file)).into();
        let validator =
            jsonschema::options().with_draft(jsonschema::Draft::Draft202012).build(&root).expect("the schema compiles");
        let errors: Vec<String> = validator.iter_errors(&answer.body).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{method} {path} {status}: {errors:?} in {}", answer.body);
        covered.insert((*path, *method));
    }
    let documented: usize =
        file["paths"].as_object().expect("paths").values().map(|p| p.as_object().map_or(0, |o| o.len())).sum();
    assert_eq!(covered.len() + 1, documented, "every operation but openapi.json itself was called");
}

use crate::helpers::ApiAnswer;

/// A JSON pointer to `schema` inside `doc` (schemas are either `$ref`s or inline in a response).
fn pointer_of(schema: &Value, doc: &Value) -> String {
    if let Some(r) = schema["$ref"].as_str() {
        return r.trim_start_matches('#').to_owned();
    }
    fn find(v: &Value, target: &Value, path: &mut Vec<String>) -> bool {
        if std::ptr::eq(v, target) {
            return true;
        }
        match v {
            Value::Object(m) => m.iter().any(|(k, c)| {
                path.push(k.replace('~', "~0").replace('/', "~1"));
                find(c, target, path) || {
                    path.pop();
                    false
                }
            }),
            _ => false,
        }
    }
    let mut path = Vec::new();
    assert!(find(doc, schema, &mut path), "schema inside the document");
    format!("/{}", path.join("/"))
}

/// A user id written to attack whoever reads it: markup, a bidi override, a terminal escape, and
/// the longest id the contract allows.
fn hostile_user() -> String {
    let mut u = "<script>alert(1)</script>\u{202e}evil\u{1b}[2J".to_owned();
    while u.len() < 128 {
        u.push('x');
    }
    u
}

#[tokio::test(flavor = "multi_thread")]
async fn ops_ban_with_kick_read_bans_in_the_audit_and_unban_with_hostile_ids_shown_escaped() {
    let mut env = TestEnv::new(Apps::random(1, 0), EnvOptions::default()).await;
    let token = env.enable_api();
    let worker = env.worker();
    let app = env.apps.zego[0].0;
    let user = hostile_user();
    let reason = "<b>spam</b> \u{202e}gnp.exe";
    let out = env.cli(&[
        "kick",
        "--vendor",
        "zego",
        "--app",
        &app.to_string(),
        "--room",
        "studio",
        "--user",
        &user,
        "--reason",
        reason,
        "--ban-secs",
        "3600",
        "--ban-scope",
        "app",
        "--verdict-id",
        "manual-ban-1",
        "--actor",
        "mod-dave",
        "--wait",
        "60",
    ]);
    assert!(out.status.success(), "{}", crate::helpers::stderr(&out));
    let story = crate::helpers::stdout(&out);
    assert!(story.contains("ban:      3600 s, scope app"), "{story}");
    assert!(!story.contains('\u{202e}') && !story.contains('\u{1b}'), "the story is escaped: {story}");

    // The API round-trips the id and the reason exactly, as JSON.
    let api = ApiClient::new(&worker, Some(&token));
    let a = api.check("zego", app, &user, Some(("anywhere", None))).await;
    assert_eq!(
        (a["banned"].as_bool(), a["scope"].as_str(), a["reason"].as_str()),
        (Some(true), Some("app"), Some(reason))
    );
    let listed = api.get(&format!("/v1/bans?vendor=zego&app_id={app}")).await;
    assert_eq!(listed.body["bans"][0]["user_id"].as_str(), Some(user.as_str()));

    let table = env.cli(&["audit", "--bans", "--active", "--format", "table"]);
    let text = crate::helpers::stdout(&table);
    assert!(text.contains("manual-ban-1") && text.contains("active"), "{text}");
    assert!(!text.contains('\u{202e}') && !text.contains('\u{1b}'), "the table is escaped: {text}");
    let json_lines = env.cli(&["audit", "--bans", "--format", "json"]);
    let row: Value =
        serde_json::from_str(crate::helpers::stdout(&json_lines).lines().next().expect("a row")).expect("json");
    assert_eq!(row["user_id"].as_str(), Some(user.as_str()), "JSON keeps the id as it is");

    let nothing =
        env.cli(&["unban", "--vendor", "zego", "--app", &app.to_string(), "--user", "nobody", "--reason", "x"]);
    assert!(nothing.status.success() && crate::helpers::stderr(&nothing).contains("nothing lifted"));
    let unban = env.cli(&[
        "unban",
        "--vendor",
        "zego",
        "--app",
        &app.to_string(),
        "--user",
        &user,
        "--reason",
        "appeal",
        "--actor",
        "mod-erin",
        "--format",
        "json",
    ]);
    assert!(unban.status.success(), "{}", crate::helpers::stderr(&unban));
    let lifted: Value =
        serde_json::from_str(crate::helpers::stdout(&unban).lines().next().expect("a row")).expect("json");
    assert_eq!((lifted["state"].as_str(), lifted["lifted_by"].as_str()), (Some("lifted"), Some("mod-erin")));
    assert!(!api.banned("zego", app, &user, None).await, "unbanned at once");
    let still = env.cli(&["audit", "--bans", "--active", "--format", "json"]);
    assert_eq!(crate::helpers::stdout(&still).trim(), "", "no active ban left");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_ban_holds_from_the_moment_its_verdict_is_recorded_before_the_kick_and_its_id_cannot_be_reused() {
    let mut env = TestEnv::new(Apps::random(1, 0), EnvOptions::default()).await;
    let token = env.enable_api();
    let app = env.apps.zego[0].0;
    // The vendor holds every call: the kick cannot have happened.
    crate::helpers::SimControl::new(&env.sim).set_faults(json!({"vendor": "zego", "hang": true})).await;
    env.publish_json(&with_ban(verdict("v-first", "zego", app, json!("r1"), &["u1"]), 600, "room")).await;
    let worker = env.worker();
    env.wait_for_count("SELECT count(*) FROM verdicts", 1, Duration::from_secs(60)).await;
    let api = ApiClient::new(&worker, Some(&token));
    assert!(api.banned("zego", app, "u1", Some(("r1", None))).await, "banned before any kick");
    let pool = env.pool().await;
    let kicked: i64 =
        sqlx::query_scalar("SELECT count(*) FROM kicks WHERE status = 'kicked'").fetch_one(&pool).await.unwrap();
    assert_eq!(kicked, 0, "and the kick is still pending");

    // The same id with another ban is another verdict: kept as rejected, the first ban unchanged.
    env.publish_json(&with_ban(verdict("v-first", "zego", app, json!("r1"), &["u1"]), 31_536_000, "app")).await;
    env.wait_for_count(
        "SELECT count(*) FROM rejected_messages WHERE rule = 'verdict_id_reused'",
        1,
        Duration::from_secs(60),
    )
    .await;
    assert!(!api.banned("zego", app, "u1", None).await, "the reused id did not ban the user app-wide");
    crate::helpers::SimControl::new(&env.sim).clear_faults().await;
    pool.close().await;
}

/// Whether `worker`'s API answers checks from its copy of the bans.
async fn copy_is_loaded(worker: &crate::helpers::WorkerProcess) -> bool {
    worker.metrics_text().await.lines().any(|l| l.trim() == "bouncer_ban_index_ready 1")
}

/// Asks until `worker` says `user` is banned there (a replica learns another's bans by NOTIFY,
/// milliseconds after their commit), or gives up after 10 s.
async fn becomes_banned(
    api: &ApiClient,
    vendor: &str,
    app: u32,
    user: &str,
    room: Option<(&str, Option<&str>)>,
) -> bool {
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(10) {
        if api.banned(vendor, app, user, room).await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// A replica answers "not banned" from its own copy of the bans' fingerprints, so that copy must
/// hold every ban: those in PostgreSQL before it started (fingerprinted by SQL at its load) and
/// those another replica records (sent by NOTIFY). A ban the copy missed would read "not banned".
#[tokio::test(flavor = "multi_thread")]
async fn a_replica_knows_bans_written_before_it_started_and_bans_another_replica_recorded() {
    use bouncer::ban_index::{Place, fingerprint};

    let mut env = TestEnv::new(Apps::random(1, 1), EnvOptions::default()).await;
    let token = env.enable_api();
    env.migrate_directly().await;
    let pool = env.pool().await;
    let (zego, trtc) = (env.apps.zego[0].0, env.apps.trtc[0].0);
    let hostile = hostile_user();
    let hostile_room = "<i>\u{202e}room</i>\u{1b}[0m\u{00e9}";
    // vendor, app, user, room (none: app-wide), whether the room is a numeric TRTC room
    let bans: Vec<(&str, u32, &str, Option<&str>, bool)> = vec![
        ("zego", zego, &hostile, None, false),
        ("zego", zego, "u-room", Some(hostile_room), false),
        ("trtc", trtc, &hostile, Some("1234"), true),
        ("trtc", trtc, "u-string-room", Some("1234"), false),
    ];
    for (n, (vendor, app, user, room, numeric)) in bans.iter().enumerate() {
        sqlx::query(
            "INSERT INTO bans (vendor, app_id, user_id, scope, room_id, room_id_numeric, verdict_id, verdict_ids,
                               reason, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, ARRAY[$7], 'written before any replica', now() + interval '1 hour')",
        )
        .bind(vendor)
        .bind(i64::from(*app))
        .bind(user)
        .bind(if room.is_some() { "room" } else { "app" })
        .bind(room)
        .bind(room.map(|_| *numeric))
        .bind(format!("v-before-{n}"))
        .execute(&pool)
        .await
        .expect("a ban written straight into PostgreSQL");
    }

    // PostgreSQL fingerprints what Rust fingerprints, bit for bit.
    let db = bouncer::audit::Db::session(pool.clone());
    let mut by_sql = bouncer::audit::bans::open_ban_fingerprints(&db).await.expect("fingerprints from SQL");
    let mut by_rust: Vec<u64> = bans
        .iter()
        .map(|(vendor, app, user, room, numeric)| {
            let place = room.map_or(Place::App, |text| Place::Room { text, numeric: *numeric });
            fingerprint(vendor, i64::from(*app), place, user)
        })
        .collect();
    by_sql.sort_unstable();
    by_rust.sort_unstable();
    assert_eq!(by_sql, by_rust, "SQL and Rust fingerprint the same bans alike");

    let replicas = [env.replica("a"), env.replica("b")];
    for worker in &replicas {
        let started = std::time::Instant::now();
        while !copy_is_loaded(worker).await {
            assert!(started.elapsed() < Duration::from_secs(60), "a replica never loaded its copy of the bans");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    for worker in &replicas {
        let api = ApiClient::new(worker, Some(&token));
        assert!(api.banned("zego", zego, &hostile, None).await, "the app ban, asked without a room");
        assert!(api.banned("zego", zego, &hostile, Some(("anywhere", None))).await, "the app ban, in any room");
        assert!(api.banned("zego", zego, "u-room", Some((hostile_room, None))).await, "the room ban in its room");
        assert!(!api.banned("zego", zego, "u-room", Some(("elsewhere", None))).await, "and not elsewhere");
        assert!(api.banned("trtc", trtc, &hostile, Some(("1234", Some("int")))).await, "the numeric room's ban");
        assert!(!api.banned("trtc", trtc, &hostile, Some(("1234", Some("str")))).await, "not in the string room");
        assert!(api.banned("trtc", trtc, "u-string-room", Some(("1234", Some("str")))).await, "the string room's ban");
        assert!(api.banned("trtc", trtc, "u-string-room", Some(("1234", None))).await, "a room of either kind");
    }

    // Bans recorded while both run: each verdict is taken in by one replica or the other, and
    // both answer "banned" for every user.
    let users: Vec<String> = (0..10).map(|n| format!("<b>u{n}</b>\u{202e}")).collect();
    for (n, user) in users.iter().enumerate() {
        env.publish_json(&with_ban(
            verdict(&format!("v-live-{n}"), "zego", zego, json!("r-live"), &[user]),
            600,
            "room",
        ))
        .await;
    }
    env.wait_for_count("SELECT count(*) FROM bans", 14, Duration::from_secs(60)).await;
    for worker in &replicas {
        let api = ApiClient::new(worker, Some(&token));
        for user in &users {
            assert!(
                becomes_banned(&api, "zego", zego, user, Some(("r-live", None))).await,
                "{user:?} on every replica"
            );
        }
    }
    pool.close().await;
}
