//! The public API while its PostgreSQL is away: a clear 503 with Retry-After, then answers again.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{ApiClient, Apps, EnvOptions, TestEnv, verdict};
use crate::{SERIAL, private_pg};

#[tokio::test(flavor = "multi_thread")]
async fn the_ban_check_answers_503_with_retry_after_while_postgres_is_stopped_and_serves_again_after() {
    let _serial = SERIAL.lock().await;
    let pg = private_pg::PrivatePg::start();
    let mut env = TestEnv::new(Apps::random(1, 0), EnvOptions::default()).await;
    env.use_database(&pg.url("bouncer_api"));
    let token = env.enable_api();
    let app = env.apps.zego[0].0;
    let mut banning = verdict("v-1", "zego", app, json!("r1"), &["u1"]);
    banning["ban"] = json!({"seconds": 3600, "scope": "app"});
    env.publish_json(&banning).await;
    let worker = env.worker();
    env.wait_for_count("SELECT count(*) FROM kicks WHERE status = 'kicked'", 1, Duration::from_secs(60)).await;
    let api = ApiClient::new(&worker, Some(&token));
    let check = format!("/v1/bans/check?vendor=zego&app_id={app}&user_id=u1");
    assert_eq!(api.get(&check).await.body["banned"], true);

    pg.stop();
    let away = api.get(&check).await;
    assert_eq!(away.status, StatusCode::SERVICE_UNAVAILABLE, "{away:?}");
    assert_eq!(away.body["code"], "database_unavailable");
    assert_eq!(away.retry_after.as_deref(), Some("1"));
    let text = away.body.to_string();
    assert!(!text.contains("SELECT") && !text.contains("bans"), "no SQL in the answer: {text}");

    pg.start_again();
    let started = Instant::now();
    loop {
        let a = api.get(&check).await;
        if a.status == StatusCode::OK {
            assert_eq!(a.body["banned"], true, "the ban outlived the restart: {a:?}");
            break;
        }
        assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE, "{a:?}");
        assert!(started.elapsed() < Duration::from_secs(60), "the API never answered again");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
