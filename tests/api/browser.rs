//! The ops console in a real headless Chromium, driven through WebDriver (ChromeDriver): what an
//! operator clicks through, what a viewer cannot do, what another site cannot make the browser do,
//! and hostile data that must stay text. Also takes the README's screenshots.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`deploy/services.sh` installs them as root);
//! BOUNCER_TEST_CHROMIUM / BOUNCER_TEST_CHROMEDRIVER point elsewhere.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use argon2::Argon2;
use argon2::password_hash::PasswordHasher;
use bouncer::config::FileWebUser;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;
use sqlx::PgPool;

use crate::helpers::{Apps, ConsoleProcess, EnvOptions, SimControl, TestEnv, free_port, verdict};

const HOSTILE_USER: &str = "\"><img src=x onerror=alert(1)>";
const HOSTILE_REASON: &str = "<script>alert('reason')</script>";
const HOSTILE_LINK: &str = "javascript:alert(document.cookie)";
/// Would retitle the page if any markup from the database ran.
const HOSTILE_NOTE: &str =
    "</pre><img src=x onerror=\"document.title='pwned'\"><script>document.title='pwned'</script>";

/// A headless Chromium behind its own ChromeDriver; both are killed (with the browser's helper
/// processes: one process group) on drop.
struct Chromium {
    driver: Child,
    client: Option<Client>,
    profile: PathBuf,
}

impl Chromium {
    async fn start() -> Chromium {
        let binary = std::env::var("BOUNCER_TEST_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
        let driver_path = std::env::var("BOUNCER_TEST_CHROMEDRIVER").unwrap_or_else(|_| "/usr/bin/chromedriver".into());
        let port = free_port().expect("free port");
        let driver = {
            use std::os::unix::process::CommandExt;
            Command::new(&driver_path)
                .arg(format!("--port={port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(0)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {driver_path} ({e}); run deploy/services.sh as root"))
        };
        let profile = std::env::temp_dir().join(format!("bouncer-chromium-{}", uuid::Uuid::new_v4()));
        let mut chromium = Chromium { driver, client: None, profile };
        // The flags the machine notes give: this machine's closed network refuses Chromium's
        // background connections.
        let args = [
            "--headless=new".to_owned(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--window-size=1280,1000".into(),
            format!("--user-data-dir={}", chromium.profile.display()),
        ];
        let mut caps = serde_json::Map::new();
        caps.insert("goog:chromeOptions".into(), json!({"binary": binary, "args": args}));
        let url = format!("http://127.0.0.1:{port}");
        let started = Instant::now();
        let client = loop {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match ClientBuilder::new(connector).capabilities(caps.clone()).connect(&url).await {
                Ok(c) => break c,
                Err(e) if started.elapsed() > Duration::from_secs(30) => panic!("no WebDriver session: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        };
        chromium.client = Some(client);
        chromium
    }

    fn page(&self) -> &Client {
        self.client.as_ref().expect("a session")
    }

    async fn text(&self, css: &str) -> String {
        let page = self.page();
        page.find(Locator::Css(css)).await.unwrap_or_else(|e| panic!("{css}: {e}")).text().await.expect("text")
    }

    async fn texts(&self, css: &str) -> Vec<String> {
        let mut out = Vec::new();
        for e in self.page().find_all(Locator::Css(css)).await.expect("find_all") {
            out.push(e.text().await.expect("text"));
        }
        out
    }

    async fn click(&self, css: &str) {
        let e = self.page().wait().for_element(Locator::Css(css)).await.unwrap_or_else(|e| panic!("{css}: {e}"));
        e.click().await.unwrap_or_else(|e| panic!("click {css}: {e}"));
    }

    async fn count(&self, css: &str) -> usize {
        self.page().find_all(Locator::Css(css)).await.expect("find_all").len()
    }

    /// Nothing on the page ran: no dialog opened and no handler retitled it.
    async fn assert_no_script_ran(&self) {
        let page = self.page();
        assert!(page.get_alert_text().await.is_err(), "a dialog opened: script ran");
        let title = page.title().await.expect("title");
        assert!(!title.contains("pwned"), "markup from the database ran: title {title}");
        assert_eq!(
            self.count("main script, main img, main iframe").await,
            0,
            "markup from the database became elements"
        );
        assert_eq!(self.count("a[href^='javascript']").await, 0, "a javascript: URL became a link");
    }

    /// Saves a screenshot under the test build's scratch folder and, when
    /// BOUNCER_SCREENSHOTS_DIR is set (how README's pictures are refreshed), there too.
    async fn screenshot(&self, name: &str) {
        let png = self.page().screenshot().await.expect("screenshot");
        let mut dirs = vec![PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("screenshots")];
        if let Ok(dir) = std::env::var("BOUNCER_SCREENSHOTS_DIR") {
            dirs.push(dir.into());
        }
        for dir in dirs {
            std::fs::create_dir_all(&dir).expect("screenshot folder");
            std::fs::write(dir.join(name), &png).expect("write screenshot");
        }
    }

    async fn close(mut self) {
        if let Some(client) = self.client.take() {
            let _ = client.close().await;
        }
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        let group = format!("-{}", self.driver.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.driver.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

fn user(name: &str, role: &str) -> FileWebUser {
    let hash = Argon2::default().hash_password(name.as_bytes()).expect("hash").to_string();
    FileWebUser { name: name.into(), password_hash: hash.into(), role: role.into() }
}

/// The console's address with `name` (password = name) signed in through the URL.
fn signed_in(console: &ConsoleProcess, name: &str) -> String {
    console.base.replacen("http://", &format!("http://{name}:{name}@"), 1)
}

/// A vendor call as the database holds it: attempt, outcome, HTTP status, vendor code, RequestId.
type CallRow = (i32, String, Option<i32>, Option<String>, Option<String>);

async fn replays(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM replays").fetch_one(pool).await.expect("count replays")
}

/// A second site (another host name than the console's 127.0.0.1) serving one page: a form that
/// posts a replay to the console without a token.
async fn attacker_site(target: String) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let page = format!(
        "<!doctype html><title>free prizes</title><form method=post action=\"{target}\">\
         <input type=hidden name=csrf value=\"\"><button id=win>Win</button></form>"
    );
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut socket, _)) = listener.accept().await {
            let mut buf = [0u8; 4096];
            let _ = socket.read(&mut buf).await;
            let response = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{page}",
                page.len()
            );
            let _ = socket.write_all(response.as_bytes()).await;
        }
    });
    format!("http://localhost:{port}/")
}

#[tokio::test]
async fn an_operator_finds_a_user_reads_the_story_and_replays_it_in_a_real_browser() {
    let opts = EnvOptions { deadline_secs: 2, retry_max_ms: 200, ..EnvOptions::default() };
    let mut env = TestEnv::new(Apps::random(2, 1), opts).await;
    env.edit_config(|c| c.web.auth.users = vec![user("alice", "operator")]);
    let control = SimControl::new(&env.sim);
    control.set_faults(json!({"vendor": "zego", "bad_users": ["spammer-7", "spammer-9"]})).await;
    // A morning's traffic for the overview, and one verdict that fails.
    let (zego_a, zego_b, trtc) = (env.apps.zego[0].0, env.apps.zego[1].0, env.apps.trtc[0].0);
    let mut batch = Vec::new();
    for i in 0..40 {
        let (vendor, app) = [("zego", zego_a), ("zego", zego_b), ("trtc", trtc)][i % 3];
        let users = [format!("u{i}-a"), format!("u{i}-b")];
        let mut v = verdict(&format!("v-{i}"), vendor, app, json!(format!("room-{}", i % 4)), &[&users[0], &users[1]]);
        v["reason"] = json!(["spam", "harassment", "nudity"][i % 3]);
        batch.push(v);
    }
    let mut failing = verdict("story-1", "zego", zego_a, json!("room-9"), &["spammer-7", "friend-8"]);
    failing["reason"] = json!("hate speech");
    failing["evidence"] = json!({"clip": "https://evidence.example/clip/91", "score": 0.97});
    batch.push(failing);
    // Failures to replay in bulk (app B) and one the filter leaves out (app A).
    for i in 0..3 {
        batch.push(verdict(&format!("bulk-{i}"), "zego", zego_b, json!("room-2"), &["spammer-9"]));
    }
    batch.push(verdict("other-app", "zego", zego_a, json!("room-2"), &["spammer-9"]));
    env.publish_all(&batch).await;
    let _worker = env.worker();
    env.wait_for_count("SELECT count(*) FROM verdicts WHERE status <> 'pending'", 45, Duration::from_secs(90)).await;

    let console = ConsoleProcess::start(&env.config.0).await;
    let browser = Chromium::start().await;
    let page = browser.page();
    page.goto(&signed_in(&console, "alice")).await.expect("overview");
    assert!(browser.text("header .actor").await.contains("alice (operator)"));
    assert_eq!(browser.text("#live-replicas").await, "1", "one worker runs");
    browser.screenshot("console-overview.png").await;

    // Search by user, open the verdict from the results.
    browser.click("nav a[href='/verdicts']").await;
    page.find(Locator::Css("input[name=user]")).await.expect("user field").send_keys("spammer-7").await.expect("type");
    browser.click("form.filters button").await;
    // The unfiltered list had the verdict too: wait for the results page, which repeats the search.
    page.wait().for_element(Locator::Css("input[name=user][value='spammer-7']")).await.expect("the results");
    assert_eq!(browser.count("table.results tr.row").await, 1, "only the verdict naming spammer-7");
    browser.click("a[href='/verdicts/story-1']").await;
    page.wait().for_element(Locator::Css("table.calls")).await.expect("the story");
    assert_eq!(browser.text("h1 .status").await, "failed");

    // The vendor calls on the page are the database's, row for row.
    let pool = env.pool().await;
    let rows: Vec<CallRow> = sqlx::query_as(
        "SELECT attempt, outcome::text, http_status, vendor_code, vendor_request_id FROM kick_attempts
         WHERE verdict_ids @> ARRAY['story-1'] ORDER BY started_at, id",
    )
    .fetch_all(&pool)
    .await
    .expect("attempts");
    assert!(!rows.is_empty());
    let shown = browser.texts("table.calls tr.call").await;
    assert_eq!(shown.len(), rows.len(), "one row per vendor call: {shown:?}");
    for (row, (attempt, outcome, http, code, request_id)) in shown.iter().zip(&rows) {
        for want in [attempt.to_string(), outcome.clone()]
            .into_iter()
            .chain(http.map(|h| h.to_string()))
            .chain(code.clone())
            .chain(request_id.clone())
        {
            assert!(row.contains(&want), "{want} missing from {row}");
        }
    }
    assert!(browser.text("pre.message").await.contains("https://evidence.example/clip/91"));
    browser.screenshot("console-story.png").await;

    // Replay: a confirmation first, then the worker enforces it again.
    control.clear_faults().await;
    browser.click("a.button[href='/verdicts/story-1/replay']").await;
    browser.click("#confirm-replay").await;
    page.wait().for_element(Locator::Css("table.calls")).await.expect("back on the story");
    env.wait_for_count(
        "SELECT count(*) FROM verdicts WHERE verdict_id = 'story-1' AND status = 'done'",
        1,
        Duration::from_secs(60),
    )
    .await;
    page.refresh().await.expect("reload");
    assert_eq!(browser.text("h1 .status").await, "done");
    assert_eq!(browser.texts("td.actor-name").await, vec!["web:alice".to_owned()]);
    assert_eq!(browser.count("a.button[href$='/replay']").await, 0, "a done verdict offers no replay");

    // Bulk: the failed verdicts of one app, from the filtered list.
    browser.click("nav a[href='/verdicts?status=failed']").await;
    page.wait().for_element(Locator::Css("table.results")).await.expect("failed list");
    assert_eq!(browser.count("table.results tr.row").await, 4);
    page.find(Locator::Css("input[name=app]"))
        .await
        .expect("app field")
        .send_keys(&zego_b.to_string())
        .await
        .expect("type");
    browser.click("form.filters button").await;
    let filtered = format!("input[name=app][value='{zego_b}']");
    page.wait().for_element(Locator::Css(&filtered)).await.expect("filtered");
    assert_eq!(browser.count("table.results tr.row").await, 3);
    browser.click("#replay-all").await;
    page.wait().for_element(Locator::Css("#confirm-replay-all")).await.expect("bulk confirmation");
    assert_eq!(browser.text("h1").await, "Replay 3 verdicts?");
    assert_eq!(browser.count("ul.ids li").await, 3);
    browser.click("#confirm-replay-all").await;
    page.wait().for_element(Locator::Css("#replayed")).await.expect("back on the list");
    assert_eq!(browser.text("#replayed").await, "Replayed 3 verdicts.");
    env.wait_for_count(
        "SELECT count(*) FROM verdicts WHERE verdict_id LIKE 'bulk-%' AND status = 'done'",
        3,
        Duration::from_secs(60),
    )
    .await;
    let left: Vec<(String, String)> =
        sqlx::query_as("SELECT verdict_id, status::text FROM verdicts WHERE verdict_id = 'other-app'")
            .fetch_all(&pool)
            .await
            .expect("other-app");
    assert_eq!(left, vec![("other-app".to_owned(), "failed".to_owned())], "the filter's other app was replayed");
    let actors: Vec<String> =
        sqlx::query_scalar("SELECT DISTINCT actor FROM replays").fetch_all(&pool).await.expect("actors");
    assert_eq!(actors, vec!["web:alice".to_owned()]);
    browser.close().await;
    pool.close().await;
}

#[tokio::test]
async fn a_viewer_cannot_replay_and_another_site_cannot_post_one_in_a_real_browser() {
    let opts = EnvOptions { deadline_secs: 2, retry_max_ms: 200, ..EnvOptions::default() };
    let mut env = TestEnv::new(Apps::random(1, 0), opts).await;
    env.edit_config(|c| c.web.auth.users = vec![user("bob", "viewer")]);
    let control = SimControl::new(&env.sim);
    control.set_faults(json!({"vendor": "zego", "bad_users": ["u1"]})).await;
    env.publish_json(&verdict("failed-1", "zego", env.apps.zego[0].0, json!("room-1"), &["u1"])).await;
    let _worker = env.worker();
    env.wait_for_count("SELECT count(*) FROM verdicts WHERE status = 'failed'", 1, Duration::from_secs(60)).await;
    let pool = env.pool().await;

    let console = ConsoleProcess::start(&env.config.0).await;
    let browser = Chromium::start().await;
    let page = browser.page();
    page.goto(&format!("{}/verdicts/failed-1", signed_in(&console, "bob"))).await.expect("story");
    assert_eq!(browser.text("h1 .status").await, "failed");
    assert_eq!(browser.count("a[href$='/replay'], form[action$='/replay']").await, 0, "a viewer is offered a replay");
    page.goto(&format!("{}/verdicts/failed-1/replay", console.base)).await.expect("confirmation");
    assert!(browser.text("body").await.contains("only operators"), "a viewer reached the confirmation");
    // A POST the viewer's browser makes anyway (built in the page, with a made-up token).
    page.goto(&format!("{}/verdicts/failed-1", console.base)).await.expect("story");
    page.execute(
        "const f = document.createElement('form'); f.method = 'post'; f.action = '/verdicts/failed-1/replay';
         const t = document.createElement('input'); t.name = 'csrf'; t.value = '00'; f.appendChild(t);
         document.body.appendChild(f); f.submit();",
        vec![],
    )
    .await
    .expect("post");
    page.wait().for_element(Locator::XPath("//body[contains(., 'only operators')]")).await.expect("refused");
    assert_eq!(replays(&pool).await, 0, "a viewer replayed");
    browser.close().await;
    drop(console);

    // Without sign-in on loopback everyone is the local operator: the token is the only defence
    // against a page on another site that posts to the console.
    env.edit_config(|c| c.web.auth.users = Vec::new());
    let console = ConsoleProcess::start(&env.config.0).await;
    let browser = Chromium::start().await;
    let page = browser.page();
    let target = format!("{}/verdicts/failed-1/replay", console.base);
    page.goto(&attacker_site(target).await).await.expect("the other site");
    browser.click("#win").await;
    page.wait().for_element(Locator::XPath("//body[contains(., 'CSRF')]")).await.expect("refused");
    assert_eq!(replays(&pool).await, 0, "another site replayed a verdict");
    // The same browser on the console itself can.
    page.goto(&format!("{}/verdicts/failed-1/replay", console.base)).await.expect("confirmation");
    browser.click("#confirm-replay").await;
    page.wait().for_element(Locator::Css("table.calls")).await.expect("back on the story");
    assert_eq!(replays(&pool).await, 1);
    browser.close().await;
    pool.close().await;
}

#[tokio::test]
async fn hostile_ids_reasons_and_evidence_render_as_text_and_run_no_script_in_a_real_browser() {
    let opts = EnvOptions { deadline_secs: 2, retry_max_ms: 200, ..EnvOptions::default() };
    let env = TestEnv::new(Apps::random(1, 0), opts).await;
    let control = SimControl::new(&env.sim);
    control.set_faults(json!({"vendor": "zego", "bad_users": [HOSTILE_USER]})).await;
    let mut v = verdict("hostile-1", "zego", env.apps.zego[0].0, json!(HOSTILE_REASON), &[HOSTILE_USER]);
    v["reason"] = json!(HOSTILE_REASON);
    v["evidence"] = json!({"url": HOSTILE_LINK, "note": HOSTILE_NOTE});
    env.publish_json(&v).await;
    let _worker = env.worker();
    env.wait_for_count("SELECT count(*) FROM verdicts WHERE status = 'failed'", 1, Duration::from_secs(60)).await;

    let console = ConsoleProcess::start(&env.config.0).await;
    let browser = Chromium::start().await;
    let page = browser.page();
    page.goto(&format!("{}/verdicts?status=failed", console.base)).await.expect("list");
    browser.assert_no_script_ran().await;
    assert!(browser.texts("table.results td").await.iter().any(|t| t == HOSTILE_REASON), "the reason as text");
    browser.click("a[href='/verdicts/hostile-1']").await;
    page.wait().for_element(Locator::Css("table.calls")).await.expect("the story");
    browser.assert_no_script_ran().await;
    assert_eq!(browser.text("dd.room").await, HOSTILE_REASON);
    assert_eq!(browser.text("dd.reason").await, HOSTILE_REASON);
    assert_eq!(browser.texts("td.user a").await, vec![HOSTILE_USER.to_owned()]);
    let message = browser.text("pre.message").await;
    assert!(message.contains(HOSTILE_LINK) && message.contains("<script>document.title='pwned'</script>"), "{message}");
    // The user's page, reached through the escaped link.
    browser.click("td.user a").await;
    page.wait().for_element(Locator::Css("table.results")).await.expect("the user's page");
    browser.assert_no_script_ran().await;
    assert!(browser.text("h1").await.ends_with(HOSTILE_USER), "{}", browser.text("h1").await);
    assert_eq!(browser.count("a[href='/verdicts/hostile-1']").await, 1);
    browser.close().await;
}

#[tokio::test]
async fn an_operator_lifts_a_ban_from_the_bans_page_and_a_viewer_cannot_in_a_real_browser() {
    let mut env = TestEnv::new(Apps::random(1, 0), EnvOptions::default()).await;
    env.edit_config(|c| c.web.auth.users = vec![user("alice", "operator"), user("bob", "viewer")]);
    let mut banning = verdict("ban-1", "zego", env.apps.zego[0].0, json!("room-1"), &[HOSTILE_USER, "u2"]);
    banning["ban"] = json!({"seconds": 3600});
    banning["reason"] = json!(HOSTILE_REASON);
    env.publish_json(&banning).await;
    let _worker = env.worker();
    env.wait_for_count("SELECT count(*) FROM kicks WHERE status = 'kicked'", 2, Duration::from_secs(60)).await;
    let pool = env.pool().await;
    let hostile_ban: i64 = sqlx::query_scalar("SELECT id FROM bans WHERE user_id = $1")
        .bind(HOSTILE_USER)
        .fetch_one(&pool)
        .await
        .expect("ban");
    let lifted = async |pool: &PgPool| -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM bans WHERE lifted_at IS NOT NULL")
            .fetch_one(pool)
            .await
            .expect("count")
    };
    let console = ConsoleProcess::start(&env.config.0).await;

    // A viewer sees the bans but is offered no lift, and a lift posted anyway is refused.
    let browser = Chromium::start().await;
    let page = browser.page();
    page.goto(&format!("{}/bans", signed_in(&console, "bob"))).await.expect("bans");
    assert_eq!(browser.count("table.bans tr.ban").await, 2);
    assert_eq!(browser.count("a.lift").await, 0, "a viewer is offered a lift");
    page.goto(&format!("{}/bans/{hostile_ban}/lift", console.base)).await.expect("confirmation");
    assert!(browser.text("body").await.contains("only operators"), "a viewer reached the confirmation");
    page.goto(&format!("{}/bans", console.base)).await.expect("bans");
    page.execute(
        &format!(
            "const f = document.createElement('form'); f.method = 'post'; f.action = '/bans/{hostile_ban}/lift';
             for (const [k, v] of [['csrf', '00'], ['reason', 'x']]) {{
               const i = document.createElement('input'); i.name = k; i.value = v; f.appendChild(i); }}
             document.body.appendChild(f); f.submit();"
        ),
        vec![],
    )
    .await
    .expect("post");
    page.wait().for_element(Locator::XPath("//body[contains(., 'only operators')]")).await.expect("refused");
    assert_eq!(lifted(&pool).await, 0, "a viewer lifted a ban");
    browser.close().await;

    // An operator lifts one, with a reason, after a confirmation; hostile values stay text.
    let browser = Chromium::start().await;
    let page = browser.page();
    page.goto(&format!("{}/bans?state=active", signed_in(&console, "alice"))).await.expect("bans");
    browser.assert_no_script_ran().await;
    assert!(browser.texts("td.user").await.iter().any(|u| u.contains("onerror")), "the hostile id shows as text");
    browser.click(&format!("#ban-{hostile_ban} a.lift")).await;
    page.wait().for_element(Locator::Css("#confirm-lift")).await.expect("the confirmation");
    browser.assert_no_script_ran().await;
    page.find(Locator::Css("#lift-reason")).await.expect("reason").send_keys("appeal granted").await.expect("type");
    browser.click("#confirm-lift").await;
    page.wait().for_element(Locator::Css("#lifted")).await.expect("back on the bans");
    page.goto(&format!("{}/bans", console.base)).await.expect("every ban");
    browser.screenshot("console-bans.png").await;
    let row: (String, String) = sqlx::query_as("SELECT lifted_by, lift_reason FROM bans WHERE id = $1")
        .bind(hostile_ban)
        .fetch_one(&pool)
        .await
        .expect("lifted");
    assert_eq!(row, ("web:alice".to_owned(), "appeal granted".to_owned()));
    assert_eq!(lifted(&pool).await, 1, "one ban lifted, the other stands");
    // The story shows the verdict's bans, the user page the user's.
    page.goto(&format!("{}/verdicts/ban-1", console.base)).await.expect("story");
    assert_eq!(browser.count("table.bans tr.ban").await, 2);
    assert!(browser.text("dd.ban").await.contains("3600 s"));
    page.goto(&format!("{}/users/u2", console.base)).await.expect("user");
    assert_eq!(browser.texts("table.bans tr.ban td.state").await, vec!["active".to_owned()]);
    browser.close().await;
    pool.close().await;
}
