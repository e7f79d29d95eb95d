use super::*;

const GOOD: &str = r#"
    [amqp]
    queue = "q"
    [[zego]]
    app_id = 1234567890
    server_secret = "abcdefghijklmnopqrstuvwxyz012345"
    [[trtc]]
    sdk_app_id = 1400000001
    secret_id = "AKID"
    secret_key = "key"
    region = "ap-guangzhou"
"#;

fn problems(text: &str) -> Vec<Problem> {
    Config::from_toml(text).expect_err("should be invalid").0
}

fn keys(text: &str) -> Vec<String> {
    problems(text).into_iter().map(|p| p.key).collect()
}

#[test]
fn good_config_loads_with_defaults() {
    let c = Config::from_toml(GOOD).unwrap();
    assert_eq!(c.amqp.queue, "q");
    assert_eq!(c.amqp.prefetch, 500);
    assert_eq!(c.batch.linger_ms, 25);
    assert_eq!(c.zego[0].rate_per_second, 50);
    assert_eq!(c.zego[0].chunk_size, 5);
    assert_eq!(c.trtc[0].rate_per_second, 20);
    assert_eq!(c.trtc[0].chunk_size, 10);
    assert_eq!(c.zego[0].endpoint.as_str(), "https://rtc-api.zego.im/");
    assert_eq!(c.retry.deadline, Duration::from_secs(600));
    assert_eq!(c.trtc[0].timeouts.total, Duration::from_secs(5));
}

#[test]
fn empty_file_is_a_valid_config_with_no_apps() {
    let c = Config::from_toml("").unwrap();
    assert!(c.zego.is_empty() && c.trtc.is_empty());
}

#[test]
fn rate_and_chunk_above_vendor_limits_are_refused_by_key() {
    let text = GOOD.replace("server_secret =", "rate_per_second = 51\nchunk_size = 6\nserver_secret =");
    assert_eq!(keys(&text), ["zego[0].rate_per_second", "zego[0].chunk_size"]);
    let text = GOOD.replace("region =", "rate_per_second = 21\nchunk_size = 11\nregion =");
    assert_eq!(keys(&text), ["trtc[0].rate_per_second", "trtc[0].chunk_size"]);
}

#[test]
fn unknown_region_duplicate_app_and_missing_secret_are_all_reported() {
    let text = format!("{}\n[[zego]]\napp_id = 1234567890\n", GOOD.replace("ap-guangzhou", "mars-1"));
    let ps = problems(&text);
    let ks: Vec<_> = ps.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(ks, ["zego[1].app_id", "zego[1].server_secret", "trtc[0].region"], "{ps:?}");
    assert!(ps[0].reason.contains("already configured at zego[0]"));
    assert!(ps[1].reason.starts_with("missing"));
    assert!(ps[2].reason.contains("ap-beijing"));
}

#[test]
fn type_errors_and_unknown_keys_name_their_path() {
    let ps = problems(&GOOD.replace("app_id = 1234567890", "app_id = \"x\""));
    assert_eq!(ps[0].key, "zego[0].app_id", "{ps:?}");
    let ps = problems("[batch]\nlingr_ms = 5\n");
    assert_eq!(ps[0].key, "batch.lingr_ms", "{ps:?}");
    assert!(ps[0].reason.contains("lingr_ms"), "{ps:?}");
    let ps = problems("[bogus]\n");
    assert!(ps[0].reason.contains("bogus"), "{ps:?}");
    let ps = problems("not toml at all = = =");
    assert_eq!(ps[0].key, "(file)");
}

#[test]
fn secrets_come_inline_from_env_or_file_never_two() {
    let env: HashMap<String, String> = [("MY_SECRET".to_string(), "from-env".to_string())].into();
    let text = GOOD.replace("server_secret = ", "server_secret_env = \"MY_SECRET\"\n#");
    let c = Config::from_toml_with_env(&text, &env).unwrap();
    assert_eq!(c.zego[0].server_secret.expose_secret(), "from-env");

    let ps = problems(&text);
    assert_eq!(ps[0].key, "zego[0].server_secret_env");
    assert!(ps[0].reason.contains("MY_SECRET is not set"));

    let dir = std::env::temp_dir().join(format!("bouncer-cfg-{}", uuid::Uuid::new_v4()));
    std::fs::write(&dir, "from-file\n").unwrap();
    let text = GOOD.replace("secret_key = \"key\"", &format!("secret_key_file = {:?}", dir.display().to_string()));
    let c = Config::from_toml(&text).unwrap();
    assert_eq!(c.trtc[0].secret_key.expose_secret(), "from-file");
    std::fs::remove_file(&dir).unwrap();
    assert_eq!(keys(&text), ["trtc[0].secret_key_file"]);

    let text = GOOD.replace("secret_key = \"key\"", "secret_key = \"key\"\nsecret_key_env = \"X\"");
    assert_eq!(keys(&text), ["trtc[0].secret_key"]);
}

#[test]
fn secrets_never_show_in_debug_output() {
    let c = Config::from_toml(GOOD).unwrap();
    let dump = format!("{c:?}");
    assert!(!dump.contains("abcdefghijklmnopqrstuvwxyz012345"));
    assert!(!dump.contains("guest:guest"));
}

#[test]
fn env_overrides_replace_and_add_keys_with_the_right_types() {
    let env: HashMap<String, String> = [
        ("BOUNCER_AMQP__PREFETCH", "7"),
        ("BOUNCER_BATCH__LINGER_MS", "40"),
        ("BOUNCER_ZEGO__0__SERVER_SECRET", "12345"),
        ("BOUNCER_TRTC__1__SDK_APP_ID", "1400000002"),
        ("BOUNCER_TRTC__1__SECRET_ID", "999"),
        ("BOUNCER_TRTC__1__SECRET_KEY", "k2"),
        ("BOUNCER_TRTC__1__REGION", "ap-beijing"),
        ("BOUNCER_LOG_FORMAT", "json"),
        ("UNRELATED", "x"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let c = Config::from_toml_with_env(GOOD, &env).unwrap();
    assert_eq!(c.amqp.prefetch, 7);
    assert_eq!(c.batch.linger_ms, 40);
    assert_eq!(c.zego[0].server_secret.expose_secret(), "12345");
    assert_eq!(c.trtc[1].secret_id, "999");
    assert_eq!(c.trtc[1].region, "ap-beijing");
}

#[test]
fn env_overrides_take_the_type_of_their_key_not_of_their_look() {
    // Keys the file does not set: a string key keeps a numeric-looking value as text, an integer
    // or boolean key parses it, whatever the file holds.
    let env: HashMap<String, String> = [
        ("BOUNCER_OWNERSHIP__WORKER_ID", "12345"),
        ("BOUNCER_HTTP__LISTEN", "127.0.0.1:9999"),
        ("BOUNCER_SHUTDOWN__GRACE_SECS", "3"),
        ("BOUNCER_ZEGO__0__IS_TEST", "true"),
        ("BOUNCER_ZEGO__0__SERVER_SECRET", "98765432123"),
        ("BOUNCER_TRTC__0__SECRET_KEY", "true"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let c = Config::from_toml_with_env(GOOD, &env).unwrap();
    assert_eq!(c.ownership.worker_id.as_deref(), Some("12345"));
    assert_eq!(c.shutdown.grace, Duration::from_secs(3));
    assert_eq!(c.zego[0].server_secret.expose_secret(), "98765432123");
    assert_eq!(c.trtc[0].secret_key.expose_secret(), "true");
    let env: HashMap<String, String> = [("BOUNCER_ZEGO__0__IS_TEST".to_string(), "yes".to_string())].into();
    let e = Config::from_toml_with_env(GOOD, &env).unwrap_err();
    assert_eq!(
        (e.0[0].key.as_str(), e.0[0].reason.as_str()),
        ("BOUNCER_ZEGO__0__IS_TEST", "expected true or false, got \"yes\"")
    );
}

#[test]
fn bad_env_override_names_the_variable() {
    let env: HashMap<String, String> = [("BOUNCER_AMQP__PREFETCH".to_string(), "lots".to_string())].into();
    let e = Config::from_toml_with_env("[amqp]\nprefetch = 5\n", &env).unwrap_err();
    assert_eq!(e.0[0].key, "BOUNCER_AMQP__PREFETCH");
    let env: HashMap<String, String> = [("BOUNCER_ZEGO__3__APP_ID".to_string(), "1".to_string())].into();
    let e = Config::from_toml_with_env("", &env).unwrap_err();
    assert!(e.0[0].reason.contains("skips"), "{e}");
}

#[test]
fn trtc_apps_sharing_credentials_must_share_a_rate() {
    let text = format!(
        "{GOOD}\n[[trtc]]\nsdk_app_id = 1400000002\nsecret_id = \"AKID\"\nsecret_key = \"k\"\nregion = \"ap-beijing\"\nrate_per_second = 10\n"
    );
    assert_eq!(keys(&text), ["trtc[1].rate_per_second"]);
}

#[test]
fn obsolete_keys_still_load_with_a_warning_naming_each() {
    let text = GOOD.replace("queue = \"q\"", "queue = \"q\"\ndefer_ms = 500\nmax_unacked_per_app = 3")
        + "\n[batch]\nhold_secs = 4\n";
    let c = Config::from_toml(&text).unwrap();
    let keys: Vec<&str> = c.warnings.iter().map(|w| w.key.as_str()).collect();
    assert_eq!(keys, ["amqp.defer_ms", "amqp.max_unacked_per_app", "batch.hold_secs"]);
    assert!(c.warnings[0].reason.contains("obsolete"));
    assert!(Config::from_toml(GOOD).unwrap().warnings.is_empty());
}

#[test]
fn ownership_and_pacing_have_safe_defaults_and_limits() {
    let c = Config::from_toml(GOOD).unwrap();
    assert_eq!(c.ownership.lease, Duration::from_secs(3));
    assert_eq!(c.ownership.heartbeat, Duration::from_millis(500));
    assert_eq!(c.pacing.jitter, Duration::from_millis(25));
    assert_eq!(keys("[ownership]\nlease_ms = 2000\nheartbeat_ms = 1500\n"), ["ownership.heartbeat_ms"]);
    assert_eq!(keys("[pacing]\njitter_ms = 900\n"), ["pacing.jitter_ms"]);
}

#[test]
fn redact_url_hides_passwords() {
    assert_eq!(redact_url("amqp://guest:guest@h:5672/%2f"), "amqp://guest:***@h:5672/%2f");
    assert_eq!(redact_url("postgres://postgres@h/db"), "postgres://postgres@h/db");
    assert_eq!(
        redact_url("postgres://u@h/db?password=hunter2&sslmode=require"),
        "postgres://u@h/db?password=***&sslmode=require"
    );
    assert!(!redact_url("postgres://u:pw1@h/db?sslpassword=pw2").contains("pw"));
}

#[test]
fn config_errors_name_the_key_and_never_echo_a_secret() {
    let secret = "s3cr3t-value-that-must-not-leak";
    let syntax = format!("[[zego]]\napp_id = 1\nserver_secret = \"{secret}\" junk\n");
    let e = Config::from_toml(&syntax).unwrap_err().to_string();
    assert!(!e.contains(secret) && e.contains("line 3"), "{e}");
    let typed = "[[zego]]\napp_id = 1\nserver_secret = 98765432123\n";
    let e = Config::from_toml(typed).unwrap_err().to_string();
    assert!(!e.contains("98765432123") && e.contains("server_secret") && e.contains("string"), "{e}");
}

#[test]
fn the_console_csrf_key_is_optional_shared_by_env_and_at_least_32_bytes() {
    assert!(Config::from_toml("").unwrap().web.csrf_secret.is_none(), "unset: a key per process");
    let key = "k".repeat(32);
    let env: HashMap<String, String> = [("CSRF".to_string(), key.clone())].into();
    let c = Config::from_toml_with_env("[web]\ncsrf_secret_env = \"CSRF\"\n", &env).unwrap();
    assert_eq!(c.web.csrf_secret.unwrap().expose_secret(), key);
    assert_eq!(keys("[web]\ncsrf_secret_env = \"CSRF\"\n"), ["web.csrf_secret_env"]);
    let short = problems("[web]\ncsrf_secret = \"short\"\n");
    assert_eq!(short[0].key, "web.csrf_secret");
    assert!(!short[0].reason.contains("short"), "the value is never shown: {}", short[0].reason);
}

#[test]
fn the_example_config_shows_the_defaults_of_the_tuning_keys_it_sets() {
    let example: file::FileConfig =
        toml::from_str(include_str!("../../deploy/bouncer.example.toml")).expect("the example parses");
    let d = file::FileConfig::default();
    let pairs = [
        ("pacing.jitter_ms", example.pacing.jitter_ms, d.pacing.jitter_ms),
        ("pacing.buffer_ms", example.pacing.buffer_ms, d.pacing.buffer_ms),
        ("batch.linger_ms", example.batch.linger_ms, d.batch.linger_ms),
        ("ownership.lease_ms", example.ownership.lease_ms, d.ownership.lease_ms),
        ("ownership.heartbeat_ms", example.ownership.heartbeat_ms, d.ownership.heartbeat_ms),
        ("retry.initial_ms", example.retry.initial_ms, d.retry.initial_ms),
        ("retry.max_interval_ms", example.retry.max_interval_ms, d.retry.max_interval_ms),
        ("retry.deadline_secs", example.retry.deadline_secs, d.retry.deadline_secs),
        ("shutdown.grace_secs", example.shutdown.grace_secs, d.shutdown.grace_secs),
        ("postgres.poll_interval_ms", example.postgres.poll_interval_ms, d.postgres.poll_interval_ms),
        ("retention.verdicts_days", example.retention.verdicts_days.into(), d.retention.verdicts_days.into()),
        ("retention.rejected_days", example.retention.rejected_days.into(), d.retention.rejected_days.into()),
        ("retention.bans_days", example.retention.bans_days.into(), d.retention.bans_days.into()),
        ("retention.rollups_days", example.retention.rollups_days.into(), d.retention.rollups_days.into()),
    ];
    assert_eq!(example.postgres.pooler, d.postgres.pooler, "deploy/bouncer.example.toml shows postgres.pooler");
    for (key, shown, default) in pairs {
        assert_eq!(shown, default, "deploy/bouncer.example.toml shows {key} = {shown}; the default is {default}");
    }
}

#[test]
fn the_pooler_is_none_by_default_and_transaction_takes_a_direct_url_in_any_secret_form() {
    let c = Config::from_toml(GOOD).unwrap();
    assert_eq!(c.postgres.pooler, Pooler::None);
    assert!(c.postgres.direct_url.is_none());
    assert_eq!(c.postgres.poll_interval, Duration::from_millis(250));
    assert_eq!(
        c.postgres.session_url().map(|u| u.expose_secret().to_owned()),
        Some(c.postgres.url.expose_secret().to_owned())
    );

    let pooled = format!("{GOOD}\n[postgres]\nurl = \"postgres://u@pgbouncer:6432/b\"\npooler = \"transaction\"\n");
    let c = Config::from_toml(&pooled).unwrap();
    assert_eq!(c.postgres.pooler, Pooler::Transaction);
    assert!(c.postgres.session_url().is_none(), "only a transaction pooler: no session anywhere");

    let env: HashMap<String, String> = [("PG_DIRECT".to_string(), "postgres://u:pw@db:5432/b".to_string())].into();
    let c = Config::from_toml_with_env(&format!("{pooled}direct_url_env = \"PG_DIRECT\"\n"), &env).unwrap();
    assert_eq!(
        c.postgres.session_url().map(|u| u.expose_secret().to_owned()).as_deref(),
        Some("postgres://u:pw@db:5432/b")
    );
    assert!(!format!("{:?}", c.postgres).contains("pw"), "the direct URL is a secret");

    let two = format!("{pooled}direct_url = \"postgres://db/b\"\ndirect_url_env = \"PG_DIRECT\"\n");
    assert_eq!(keys(&two), ["postgres.direct_url"]);
    assert_eq!(keys(&format!("{pooled}direct_url = \"mysql://db/b\"\n")), ["postgres.direct_url"]);
}

#[test]
fn a_bad_pooler_value_or_poll_interval_is_refused_by_key_and_a_useless_direct_url_is_a_warning() {
    let ps = problems(&format!("{GOOD}\n[postgres]\npooler = \"session\"\npoll_interval_ms = 5\n"));
    let found: Vec<&str> = ps.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(found, ["postgres.pooler", "postgres.poll_interval_ms"]);
    assert!(ps[0].reason.contains("\"none\"") && ps[0].reason.contains("\"transaction\""), "{}", ps[0].reason);

    let c = Config::from_toml(&format!("{GOOD}\n[postgres]\ndirect_url = \"postgres://db/b\"\n")).unwrap();
    assert!(c.warnings.iter().any(|w| w.key == "postgres.direct_url"), "{:?}", c.warnings);
    assert!(c.postgres.session_url().is_some_and(|u| u.expose_secret() == c.postgres.url.expose_secret()));
}

#[test]
fn the_api_is_off_by_default_and_on_only_with_tokens_of_its_callers() {
    let c = Config::from_toml("").unwrap();
    assert!(c.api.listen.is_none() && c.api.tokens.is_empty());
    assert_eq!(keys("[api]\nlisten = \"127.0.0.1:9192\"\n"), vec!["api.tokens"]);
    let token = "t0123456789abcdef";
    let ok = format!("[api]\nlisten = \"127.0.0.1:9192\"\n[[api.tokens]]\nname = \"ts\"\ntoken = \"{token}\"\n");
    let c = Config::from_toml(&ok).unwrap();
    assert_eq!((c.api.tokens[0].name.as_str(), c.api.max_connections), ("ts", 8));
    assert!(!format!("{c:?}").contains(token), "the token stays secret");
    let short = "[api]\nlisten = \"127.0.0.1:9192\"\n[[api.tokens]]\nname = \"ts\"\ntoken = \"short\"\n";
    assert_eq!(keys(short), vec!["api.tokens[0].token"]);
    let twice = format!(
        "[api]\nlisten = \"127.0.0.1:9192\"\n[[api.tokens]]\nname = \"ts\"\ntoken = \"{token}\"\n[[api.tokens]]\nname = \"ts\"\ntoken = \"{token}x\"\n"
    );
    assert_eq!(keys(&twice), vec!["api.tokens[1].name"]);
    let bad = "[api]\nlisten = \"nowhere\"\nmax_connections = 0\n";
    assert_eq!(keys(bad), vec!["api.listen", "api.max_connections"]);
    let env_missing = "[api]\n[[api.tokens]]\nname = \"ts\"\ntoken_env = \"NOT_SET_ANYWHERE_42\"\n";
    assert_eq!(keys(env_missing), vec!["api.tokens[0].token_env"]);
}

#[test]
fn retention_keeps_each_kind_for_its_days_zero_forever_and_refuses_more_than_ten_years_by_key() {
    let c = Config::from_toml("").unwrap();
    assert_eq!(c.retention.verdicts, Some(chrono::Duration::days(90)));
    assert_eq!(c.retention.rejected, Some(chrono::Duration::days(30)));
    assert_eq!(c.retention.bans, Some(chrono::Duration::days(365)));
    assert_eq!(c.retention.rollups, Some(chrono::Duration::days(400)));
    let forever = Config::from_toml("[retention]\nverdicts_days = 0\nbans_days = 7\n").unwrap();
    assert_eq!((forever.retention.verdicts, forever.retention.bans), (None, Some(chrono::Duration::days(7))));
    let ps = problems("[retention]\nverdicts_days = 3651\nrollups_days = 99999\n");
    let found: Vec<&str> = ps.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(found, ["retention.verdicts_days", "retention.rollups_days"]);
    assert!(ps[0].reason.contains("3650"), "{}", ps[0].reason);
    assert_eq!(keys("[retention]\nverdicts_dayz = 5\n"), ["retention.verdicts_dayz"]);
    assert_eq!(keys("[retention]\nbans_days = -1\n"), ["retention.bans_days"]);
}
