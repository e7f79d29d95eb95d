//! `bouncer check` and `bouncer migrate` as ops run them.

use crate::helpers::{TempFile, TestDb, amqp_url, bouncer, stderr, stdout};

fn example_config() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/bouncer.example.toml"))
        .expect("example config")
}

#[test]
fn check_accepts_the_example_config_offline() {
    let file = TempFile::with(&example_config());
    let out = bouncer(
        &["check", "--offline", "--config", file.0.to_str().unwrap()],
        &[("ZEGO_SERVER_SECRET", "s"), ("TRTC_SECRET_KEY", "k")],
    );
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains("config: ok"), "{}", stdout(&out));
    assert!(stdout(&out).contains("postgres mode: direct (postgres.pooler = \"none\")"), "{}", stdout(&out));
}

#[test]
fn check_says_offline_what_a_transaction_pooler_without_a_direct_url_costs() {
    let file = TempFile::with(&example_config().replace("pooler = \"none\"", "pooler = \"transaction\""));
    let out = bouncer(
        &["check", "--offline", "--config", file.0.to_str().unwrap()],
        &[("ZEGO_SERVER_SECRET", "s"), ("TRTC_SECRET_KEY", "k"), ("BOUNCER_POSTGRES__POLL_INTERVAL_MS", "400")],
    );
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let said = stdout(&out);
    assert!(said.contains("through a transaction pooler"), "{said}");
    assert!(said.contains("lanes poll for work every 400 ms") && said.contains("migrations are refused"), "{said}");
}

#[test]
fn check_names_every_problem_in_a_broken_config_by_key() {
    let broken = example_config()
        .replace("rate_per_second = 50", "rate_per_second = 80")
        .replace("region = \"ap-guangzhou\"", "region = \"eu-nowhere\"")
        .replace("server_secret_env = \"ZEGO_SERVER_SECRET\"", "");
    let file = TempFile::with(&broken);
    let out = bouncer(&["check", "--offline", "--config", file.0.to_str().unwrap()], &[("TRTC_SECRET_KEY", "k")]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("zego[0].rate_per_second: must be in 1..=50"), "{err}");
    assert!(err.contains("trtc[0].region: unknown region \"eu-nowhere\""), "{err}");
    assert!(err.contains("zego[0].server_secret: missing"), "{err}");
}

#[test]
fn check_refuses_a_duplicate_app_and_a_chunk_above_the_vendor_limit() {
    let doubled = format!(
        "{}\n[[trtc]]\nsdk_app_id = 1400000001\nsecret_id = \"x\"\nsecret_key = \"y\"\nregion = \"ap-beijing\"\nchunk_size = 11\n",
        example_config()
    );
    let file = TempFile::with(&doubled);
    let out = bouncer(
        &["check", "--offline", "--config", file.0.to_str().unwrap()],
        &[("ZEGO_SERVER_SECRET", "s"), ("TRTC_SECRET_KEY", "k")],
    );
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("trtc[1].sdk_app_id: app 1400000001 is already configured at trtc[0]"), "{err}");
    assert!(err.contains("trtc[1].chunk_size: must be in 1..=10"), "{err}");
}

#[test]
fn check_says_which_service_failed_and_why() {
    let db = TestDb::named();
    // Nothing listens on port 1: RabbitMQ is unreachable; PostgreSQL answers but has no schema.
    let out = bouncer(
        &["check", "--timeout", "3"],
        &[("BOUNCER_AMQP__URL", "amqp://guest:hunter2@127.0.0.1:1/%2f"), ("BOUNCER_POSTGRES__URL", &db.url)],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let text = stdout(&out);
    assert!(text.contains("rabbitmq: FAILED (amqp://guest:***@127.0.0.1:1/%2f)"), "{text}");
    assert!(text.contains("postgres: FAILED"), "{text}");
    assert!(!text.contains("hunter2") && !stderr(&out).contains("hunter2"), "password leaked: {text}");
}

#[test]
fn migrate_creates_the_schema_and_a_second_run_is_a_no_op() {
    let db = TestDb::named();
    let env = [("BOUNCER_POSTGRES__URL", db.url.as_str()), ("BOUNCER_AMQP__URL", &amqp_url())]
        .map(|(k, v)| (k, v.to_owned()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();

    let first = bouncer(&["migrate"], &env);
    assert!(first.status.success(), "{}", stderr(&first));
    assert!(stdout(&first).contains("created the database"), "{}", stdout(&first));
    let migrations = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations")).unwrap().count();
    let applied = format!("applied {migrations} migration(s); {migrations} in all");
    assert!(stdout(&first).contains(&applied), "{}", stdout(&first));

    let second = bouncer(&["migrate"], &env);
    assert!(second.status.success(), "{}", stderr(&second));
    assert!(stdout(&second).contains("applied 0 migration(s)"), "{}", stdout(&second));

    let check = bouncer(&["check"], &env);
    assert!(check.status.success(), "{}{}", stdout(&check), stderr(&check));
    assert!(stdout(&check).contains("postgres: ok"), "{}", stdout(&check));
    assert!(stdout(&check).contains("rabbitmq: ok"), "{}", stdout(&check));

    let rt = tokio::runtime::Runtime::new().unwrap();
    let tables: Vec<String> = rt.block_on(async {
        let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
        let t = sqlx::query_scalar(
            "SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        pool.close().await;
        t
    });
    for t in ["_sqlx_migrations", "audit_log", "kick_attempts", "kicks", "rejected_messages", "verdicts"] {
        assert!(tables.iter().any(|x| x == t), "missing {t} in {tables:?}");
    }
}

#[test]
fn check_accepts_keys_that_lost_their_meaning_and_names_each_in_a_note() {
    let text = example_config()
        .replace("[amqp]", "[amqp]\ndefer_ms = 5000\nmax_unacked_per_app = 10")
        .replace("[batch]", "[batch]\nhold_secs = 10");
    let file = TempFile::with(&text);
    let out = bouncer(
        &["check", "--offline", "--config", file.0.to_str().unwrap()],
        &[("ZEGO_SERVER_SECRET", "s"), ("TRTC_SECRET_KEY", "k")],
    );
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    for key in ["amqp.defer_ms", "amqp.max_unacked_per_app", "batch.hold_secs"] {
        assert!(stdout(&out).contains(&format!("note: {key}: obsolete")), "{key}: {}", stdout(&out));
    }
}
