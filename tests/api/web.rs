//! The ops console (`bouncer web`) over HTTP: hostile data renders as text, only operators replay,
//! and only through the console's own form.

use std::time::Duration;

use argon2::Argon2;
use argon2::password_hash::PasswordHasher;
use bouncer::config::FileWebUser;
use serde_json::json;

use crate::helpers::{Apps, ConsoleProcess, EnvOptions, SimControl, TestEnv, stderr, verdict};

const HOSTILE_USER: &str = "\"><img src=x onerror=alert(1)>";
const HOSTILE_REASON: &str = "<script>alert('reason')</script>";
const HOSTILE_LINK: &str = "javascript:alert(document.cookie)";

pub(crate) fn user(name: &str, password: &str, role: &str) -> FileWebUser {
    let hash = Argon2::default().hash_password(password.as_bytes()).expect("hash").to_string();
    FileWebUser { name: name.into(), password_hash: hash.into(), role: role.into() }
}

/// A GET or POST as `who` (name = password), without following redirects.
pub(crate) struct Browser {
    http: reqwest::Client,
    base: String,
}

impl Browser {
    pub(crate) fn new(console: &ConsoleProcess) -> Browser {
        let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
        Browser { http, base: console.base.clone() }
    }

    pub(crate) async fn get(&self, who: &str, path: &str) -> (u16, String) {
        let r = self.http.get(format!("{}{path}", self.base)).basic_auth(who, Some(who)).send().await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    pub(crate) async fn post(&self, who: &str, path: &str, form: &[(&str, &str)], cross_site: bool) -> u16 {
        let mut req = self
            .http
            .post(format!("{}{path}", self.base))
            .basic_auth(who, Some(who))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(url::form_urlencoded::Serializer::new(String::new()).extend_pairs(form).finish());
        if cross_site {
            req = req.header("sec-fetch-site", "cross-site");
        }
        req.send().await.unwrap().status().as_u16()
    }
}

pub(crate) fn csrf_of(page: &str) -> String {
    let at = page.find("name=\"csrf\" value=\"").expect("the confirmation carries a token") + 19;
    page[at..].split('"').next().unwrap().to_owned()
}

#[tokio::test]
async fn the_console_refuses_a_public_address_without_sign_in_and_names_the_key() {
    let env = TestEnv::new(Apps::random(1, 0), EnvOptions::default()).await;
    let out = env.cli(&["web", "--listen", "0.0.0.0:0"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("web.listen") && stderr(&out).contains("web.auth.users"), "{}", stderr(&out));
}

#[tokio::test]
async fn a_hostile_verdict_shows_as_text_and_only_an_operator_replays_it_through_the_console_form() {
    let opts = EnvOptions { deadline_secs: 2, retry_max_ms: 200, ..EnvOptions::default() };
    let mut env = TestEnv::new(Apps::random(1, 0), opts).await;
    env.edit_config(|c| c.web.auth.users = vec![user("alice", "alice", "operator"), user("bob", "bob", "viewer")]);
    let app = env.apps.zego[0].0;
    let control = SimControl::new(&env.sim);
    control.set_faults(json!({"vendor": "zego", "bad_users": [HOSTILE_USER]})).await;
    let mut v = verdict("hostile-1", "zego", app, json!("room-1"), &[HOSTILE_USER]);
    v["reason"] = json!(HOSTILE_REASON);
    v["evidence"] = json!({"url": HOSTILE_LINK, "note": "</pre><script>alert(2)</script>"});
    env.publish_json(&v).await;
    let _worker = env.worker();
    env.wait_for_count("SELECT count(*) FROM verdicts WHERE status = 'failed'", 1, Duration::from_secs(60)).await;

    let console = ConsoleProcess::start(&env.config.0).await;
    let browser = Browser::new(&console);
    assert_eq!(browser.get("bob", "/").await.0, 200);
    assert_eq!(browser.get("mallory", "/").await.0, 401, "unknown users are asked to sign in");

    // Search by user finds the verdict; every hostile string is escaped text.
    let query =
        format!("/verdicts?user={}", url::form_urlencoded::byte_serialize(HOSTILE_USER.as_bytes()).collect::<String>());
    let (status, list) = browser.get("bob", &query).await;
    assert_eq!(status, 200);
    assert!(list.contains("href=\"/verdicts/hostile-1\""), "{list}");
    let (_, story) = browser.get("bob", "/verdicts/hostile-1").await;
    for raw in [HOSTILE_USER, HOSTILE_REASON, "<script>alert(2)"] {
        assert!(!story.contains(raw), "{raw} appears unescaped");
    }
    assert!(story.contains("&#60;script&#62;alert(") || story.contains("&lt;script&gt;alert("), "{story}");
    assert!(!story.contains("href=\"javascript:"), "a javascript: URL became a link");
    // The vendor call the database holds is on the page.
    let pool = env.pool().await;
    let (code, message): (String, String) = sqlx::query_as(
        "SELECT vendor_code, vendor_message FROM kick_attempts WHERE verdict_ids @> ARRAY['hostile-1'] LIMIT 1",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(story.contains(&format!("<td>{code}</td>")) && story.contains(&message), "{story}");

    // A viewer sees no replay button and cannot replay, token or not.
    assert!(!story.contains("/replay"), "a viewer is offered a replay");
    assert_eq!(browser.get("bob", "/verdicts/hostile-1/replay").await.0, 403);
    assert_eq!(browser.post("bob", "/verdicts/hostile-1/replay", &[("csrf", "00")], false).await, 403);

    // An operator confirms first; a POST without the token or from another site is refused.
    let (status, confirm) = browser.get("alice", "/verdicts/hostile-1/replay").await;
    assert_eq!(status, 200);
    let token = csrf_of(&confirm);
    assert_eq!(browser.post("alice", "/verdicts/hostile-1/replay", &[], false).await, 403);
    assert_eq!(browser.post("alice", "/verdicts/hostile-1/replay", &[("csrf", &token)], true).await, 403);
    // The same for a bulk replay; and done verdicts are never replayed, whoever asks.
    assert_eq!(browser.get("bob", "/replay?status=failed").await.0, 403);
    assert_eq!(browser.post("bob", "/replay?status=failed", &[("csrf", &token)], false).await, 403);
    assert_eq!(browser.post("alice", "/replay?status=failed", &[], false).await, 403);
    assert_eq!(browser.post("alice", "/replay?status=failed", &[("csrf", &token)], true).await, 403);
    // A token is bound to its form: this one, for one verdict, replays nothing else.
    assert_eq!(browser.post("alice", "/replay?status=failed", &[("csrf", &token)], false).await, 403);
    assert_eq!(browser.get("alice", "/replay?status=done").await.0, 400);
    let (status, bulk) = browser.get("alice", "/replay?status=failed").await;
    assert!(status == 200 && bulk.contains("Replay 1 verdict?"), "{bulk}");
    let replays: i64 = sqlx::query_scalar("SELECT count(*) FROM replays").fetch_one(&pool).await.unwrap();
    assert_eq!(replays, 0, "a refused POST replayed");

    control.clear_faults().await;
    assert_eq!(browser.post("alice", "/verdicts/hostile-1/replay", &[("csrf", &token)], false).await, 303);
    env.wait_for_count("SELECT count(*) FROM verdicts WHERE status = 'done'", 1, Duration::from_secs(60)).await;
    let (_, story) = browser.get("alice", "/verdicts/hostile-1").await;
    assert!(story.contains("web:alice"), "the replay shows its actor: {story}");
    pool.close().await;
}

#[tokio::test]
async fn every_console_page_carries_the_security_headers() {
    let env = TestEnv::new(Apps::random(1, 0), EnvOptions::default()).await;
    let _worker = env.worker(); // creates the schema
    env.wait_for_count("SELECT count(*) FROM verdicts", 0, Duration::from_secs(30)).await;
    let console = ConsoleProcess::start(&env.config.0).await;
    for path in ["/", "/verdicts", "/rejected", "/verdicts/none"] {
        let r = reqwest::get(format!("{}{path}", console.base)).await.unwrap();
        let h = r.headers();
        let csp = h.get("content-security-policy").and_then(|v| v.to_str().ok()).unwrap_or_default();
        assert!(csp.contains("default-src 'none'") && !csp.contains("unsafe-inline"), "{path}: {csp}");
        assert_eq!(h.get("x-frame-options").map(|v| v.as_bytes()), Some(&b"DENY"[..]), "{path}");
        assert_eq!(h.get("referrer-policy").map(|v| v.as_bytes()), Some(&b"same-origin"[..]), "{path}");
    }
}

#[tokio::test]
async fn the_console_reads_and_replays_with_only_the_grants_migrate_gives_its_role() {
    let opts = EnvOptions { deadline_secs: 2, retry_max_ms: 200, ..EnvOptions::default() };
    let mut env = TestEnv::new(Apps::random(1, 0), opts).await;
    let control = SimControl::new(&env.sim);
    control.set_faults(json!({"vendor": "zego", "bad_users": ["u1"]})).await;
    env.publish_json(&verdict("failed-1", "zego", env.apps.zego[0].0, json!("room-1"), &["u1", "u2"])).await;
    let _worker = env.worker();
    env.wait_for_count("SELECT count(*) FROM verdicts WHERE status = 'failed'", 1, Duration::from_secs(60)).await;

    let pool = env.pool().await;
    let role = format!("console_{}", uuid::Uuid::new_v4().simple());
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE ROLE {role} LOGIN"))).execute(&pool).await.unwrap();
    let out = env.cli(&["migrate", "--grant-console", &role]);
    assert!(out.status.success(), "{}", stderr(&out));

    let url = url::Url::parse(&env.db.url).unwrap();
    let mut as_role = url.clone();
    as_role.set_username(&role).unwrap();
    env.edit_config(|c| c.postgres.url = as_role.as_str().into());
    let console = ConsoleProcess::start(&env.config.0).await;
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    for path in
        ["/", "/verdicts", "/verdicts?user=u1", "/verdicts/failed-1", "/users/u2", "/rejected", "/replay?status=failed"]
    {
        let r = http.get(format!("{}{path}", console.base)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}: {}", r.text().await.unwrap_or_default());
    }
    let confirm =
        http.get(format!("{}/verdicts/failed-1/replay", console.base)).send().await.unwrap().text().await.unwrap();
    control.clear_faults().await;
    let r = http
        .post(format!("{}/verdicts/failed-1/replay", console.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("csrf={}", csrf_of(&confirm)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303, "the replay was refused: {}", r.text().await.unwrap_or_default());
    env.wait_for_count("SELECT count(*) FROM verdicts WHERE status = 'done'", 1, Duration::from_secs(60)).await;

    // Nothing beyond that: no deletes, no rewriting what a verdict said or what a vendor answered.
    let limited = sqlx::PgPool::connect(as_role.as_str()).await.unwrap();
    for sql in [
        "DELETE FROM verdicts",
        "UPDATE verdicts SET payload = '{}'",
        "UPDATE kick_attempts SET outcome = 'ok'",
        "DELETE FROM replays",
        "INSERT INTO rejected_messages (reason, payload, payload_size) VALUES ('x', '', 0)",
    ] {
        let e = sqlx::raw_sql(sql).execute(&limited).await.expect_err(sql);
        assert!(e.to_string().contains("permission denied"), "{sql}: {e}");
    }
    limited.close().await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP OWNED BY {role}"))).execute(&pool).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP ROLE {role}"))).execute(&pool).await.unwrap();
    pool.close().await;
}
