//! Secrets never leave through a side path: configuration errors, `bouncer check`'s report of a
//! URL, or a worker's log at the most verbose level.

use std::time::Duration;

use serde_json::json;

use crate::helpers::{Apps, EnvOptions, TempFile, TestDb, TestEnv, WorkerProcess, bouncer, stderr, stdout, verdict};

const SECRET: &str = "s3cr3t-value-never-printed-7f2c";

#[test]
fn a_config_syntax_error_names_the_line_but_never_shows_it() {
    let file = TempFile::with(&format!("[[zego]]\napp_id = 1234567890\nserver_secret = \"{SECRET}\" junk\n"));
    let out = bouncer(&["check", "--offline", "--config", file.0.to_str().unwrap()], &[]);
    assert!(!out.status.success());
    let all = stdout(&out) + &stderr(&out);
    assert!(!all.contains(SECRET), "secret echoed: {all}");
    assert!(all.contains("line 3"), "{all}");
}

#[test]
fn a_secret_of_the_wrong_type_is_named_by_key_without_its_value() {
    let file = TempFile::with("[[zego]]\napp_id = 1234567890\nserver_secret = 98765432123\n");
    let out = bouncer(&["check", "--offline", "--config", file.0.to_str().unwrap()], &[]);
    let all = stdout(&out) + &stderr(&out);
    assert!(!all.contains("98765432123"), "secret echoed: {all}");
    assert!(all.contains("server_secret"), "{all}");
}

#[test]
fn check_redacts_a_password_given_as_a_url_query_parameter() {
    let db = TestDb::named();
    let url = format!("{}?password={SECRET}", db.url);
    let out = bouncer(
        &["check", "--timeout", "3"],
        &[("BOUNCER_AMQP__URL", "amqp://guest:hunter2@127.0.0.1:1/%2f"), ("BOUNCER_POSTGRES__URL", &url)],
    );
    let all = stdout(&out) + &stderr(&out);
    assert!(!all.contains(SECRET) && !all.contains("hunter2"), "password leaked: {all}");
    assert!(all.contains("password=***"), "{all}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_logging_at_trace_shows_no_credential() {
    let env = TestEnv::new(Apps::random(1, 1), EnvOptions::default()).await;
    let worker = WorkerProcess::start_with_env(&env.config.0, &[("BOUNCER_LOG", "trace")]);
    env.publish_json(&verdict("traced", "zego", env.apps.zego[0].0, json!("r"), &["u"])).await;
    env.wait_for_count("SELECT count(*) FROM verdicts WHERE status = 'done'", 1, Duration::from_secs(30)).await;
    let log = worker.log_text();
    assert!(log.len() > 10_000, "trace logging is on ({} bytes)", log.len());
    let mut secrets: Vec<String> = env.apps.zego.iter().map(|(_, s)| s.clone()).collect();
    secrets.extend(env.apps.trtc.iter().map(|(_, _, k)| k.clone()));
    for s in &secrets {
        assert!(!log.contains(s.as_str()), "a vendor secret is in the trace log");
    }
    // The AMQP PLAIN response is `\0guest\0guest`; lapin writes it as decimal bytes at trace.
    assert!(!log.contains("0, 103, 117, 101, 115, 116, 0, 103, 117, 101, 115, 116"), "the SASL response is in the log");
    assert!(!log.contains("guest:guest"), "the AMQP URL's password is in the log");
}
