//! Retention and rollups: old rows go in batches, never what is still needed; the console's
//! overview counts from rollups and equals a count over the raw trail.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{Apps, ConsoleProcess, EnvOptions, SimControl, TestEnv, stderr, stdout, verdict};
use crate::web::{Browser, user};

/// `bouncer prune --format json`'s lines, by table.
fn by_table(out: &std::process::Output) -> std::collections::BTreeMap<String, Value> {
    assert!(out.status.success(), "{}", stderr(out));
    stdout(out)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("a JSON line"))
        .map(|v| (v["table"].as_str().expect("table").to_owned(), v))
        .collect()
}

async fn verdict_ids(pool: &sqlx::PgPool) -> BTreeSet<String> {
    sqlx::query_scalar("SELECT verdict_id FROM verdicts").fetch_all(pool).await.unwrap().into_iter().collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn pruning_takes_old_finished_verdicts_and_keeps_unfinished_ones_active_bans_unsent_events_and_recent_ones() {
    let env = TestEnv::new(Apps::random(1, 0), EnvOptions { deadline_secs: 2, ..EnvOptions::default() }).await;
    let app = env.apps.zego[0].0;
    let sim = SimControl::new(&env.sim);
    sim.set_faults(json!({"vendor": "zego", "bad_users": ["p"]})).await;
    let mut banned = verdict("v-banned", "zego", app, json!("r1"), &["b"]);
    banned["ban"] = json!({"seconds": 31_536_000, "scope": "room"});
    let mut lifted = verdict("v-lifted", "zego", app, json!("r2"), &["l"]);
    lifted["ban"] = json!({"seconds": 600, "scope": "room"});
    env.publish_all(&[
        verdict("v-old", "zego", app, json!("r1"), &["o1", "o2"]),
        verdict("v-unsent", "zego", app, json!("r1"), &["s"]),
        verdict("v-reopened", "zego", app, json!("r3"), &["p"]),
        verdict("v-recent", "zego", app, json!("r9"), &["n"]),
        banned,
        lifted,
    ])
    .await;
    let mut worker = env.worker();
    env.wait_for_count("SELECT count(*) FROM verdicts WHERE status <> 'pending'", 6, Duration::from_secs(60)).await;
    let app_text = app.to_string();
    let unban =
        env.cli(&["unban", "--vendor", "zego", "--app", &app_text, "--user", "l", "--room", "r2", "--reason", "t"]);
    assert!(unban.status.success(), "{}", stderr(&unban));
    env.wait_for_count("SELECT count(*) FROM outbox", 0, Duration::from_secs(30)).await;
    worker.signal("-TERM");
    worker.wait_exit(Duration::from_secs(30)).expect("the worker stops");

    // With no worker running: a failed verdict reopened by a replay stays pending (its kick too),
    // and an event the relay has not sent yet waits in the outbox (as while the broker is away).
    let replay = env.cli(&["replay", "--verdict", "v-reopened", "--actor", "test"]);
    assert!(replay.status.success(), "{}", stderr(&replay));
    let pool = env.pool().await;
    for sql in [
        "INSERT INTO outbox (event_id, type, subject, routing_key, event)
         VALUES (gen_random_uuid(), 'bouncer.verdict.finished', 'v-unsent', 'verdict.done', '{}')",
        // Everything but v-recent happened 100 days ago (retention keeps 90 by default) …
        "UPDATE verdicts SET received_at = received_at - interval '100 days',
                             finished_at = finished_at - interval '100 days' WHERE verdict_id <> 'v-recent'",
        "UPDATE kick_attempts SET started_at = started_at - interval '100 days' WHERE NOT verdict_ids @> '{v-recent}'",
        // … and the lifted ban ended 400 days ago (ended bans are kept 365).
        "UPDATE bans SET created_at = created_at - interval '400 days', expires_at = expires_at - interval '400 days',
                         ended_at = ended_at - interval '400 days', lifted_at = lifted_at - interval '400 days'
         WHERE user_id = 'l'",
    ] {
        sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&pool).await.unwrap();
    }
    let old_calls: i64 =
        sqlx::query_scalar("SELECT count(*) FROM kick_attempts WHERE started_at < now() - interval '90 days'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(old_calls >= 3, "the old verdicts' calls (rooms r1, r2, r3): {old_calls}");

    let dry = by_table(&env.cli(&["prune", "--dry-run", "--format", "json"]));
    assert_eq!(dry["verdicts"]["prunable_rows"], 2, "v-old and v-lifted: {dry:#?}");
    assert_eq!(dry["kick_attempts"]["prunable_rows"], old_calls);
    assert_eq!(dry["bans"]["prunable_rows"], 1);
    assert_eq!(dry["rejected_messages"]["window_days"], 30);
    assert!(dry["verdicts"]["bytes"].as_i64().unwrap() > 0);
    assert_eq!(verdict_ids(&pool).await.len(), 6, "a dry run changes nothing");

    let pruned = by_table(&env.cli(&["prune", "--format", "json"]));
    assert_eq!(pruned["verdicts"]["rows"], 2, "{pruned:#?}");
    assert_eq!(pruned["verdicts"]["with_them"], 3, "v-old's two kicks and v-lifted's one");
    assert_eq!(pruned["kick_attempts"]["rows"], old_calls);
    assert_eq!(pruned["bans"]["rows"], 1);
    let kept: BTreeSet<String> =
        ["v-banned", "v-recent", "v-reopened", "v-unsent"].into_iter().map(String::from).collect();
    assert_eq!(verdict_ids(&pool).await, kept, "unfinished, banning, unsent and recent verdicts stay");
    let orphans: i64 =
        sqlx::query_scalar("SELECT count(*) FROM kicks WHERE verdict_id NOT IN (SELECT verdict_id FROM verdicts)")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(orphans, 0);
    let pending: i64 =
        sqlx::query_scalar("SELECT count(*) FROM kicks WHERE verdict_id = 'v-reopened' AND status = 'pending'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(pending, 1, "the reopened verdict's kick is still pending");
    let bans: Vec<String> =
        sqlx::query_scalar("SELECT user_id FROM bans ORDER BY user_id").fetch_all(&pool).await.unwrap();
    assert_eq!(bans, ["b"], "the ban in force stays; the one ended 400 days ago went");
    // Rollups outlive the rows they counted: the month's chart still shows the pruned verdicts.
    let counted: i64 = sqlx::query_scalar(
        "SELECT sum(n)::bigint FROM (SELECT n FROM rollups WHERE metric = 'verdicts'
                                     UNION ALL SELECT n FROM rollup_deltas WHERE metric = 'verdicts') r",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(counted, 6);
    let again = by_table(&env.cli(&["prune", "--format", "json"]));
    assert!(again.values().all(|t| t["rows"] == 0), "a second pass finds nothing: {again:#?}");

    // Inside the window a republished verdict_id is the same verdict; past it (pruned), a new one.
    let _worker = env.worker();
    env.publish_all(&[
        verdict("v-recent", "zego", app, json!("r9"), &["n"]),
        verdict("v-old", "zego", app, json!("r1"), &["o1", "o2"]),
    ])
    .await;
    env.wait_for_count(
        "SELECT deliveries::bigint FROM verdicts WHERE verdict_id = 'v-recent'",
        2,
        Duration::from_secs(30),
    )
    .await;
    env.wait_for_count(
        "SELECT count(*) FROM verdicts WHERE verdict_id = 'v-old' AND deliveries = 1 AND received_at > now() - interval '1 hour'",
        1,
        Duration::from_secs(30),
    )
    .await;
    let recent_kicks: i64 = sqlx::query_scalar("SELECT count(*) FROM kick_attempts WHERE verdict_ids @> '{v-recent}'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(recent_kicks, 1, "a duplicate inside the window is not kicked again");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_overview_counts_from_rollups_what_a_count_over_the_raw_trail_says() {
    let opts = EnvOptions { deadline_secs: 2, retry_max_ms: 200, ..EnvOptions::default() };
    let mut env = TestEnv::new(Apps::random(1, 1), opts).await;
    env.edit_config(|c| c.web.auth.users = vec![user("ops", "ops", "viewer")]);
    let (zego, trtc) = (env.apps.zego[0].0, env.apps.trtc[0].0);
    let sim = SimControl::new(&env.sim);
    sim.set_faults(json!({"vendor": "trtc", "bad_users": ["bad"]})).await;
    let mut batch = Vec::new();
    for i in 0..40 {
        batch.push(verdict(&format!("z-{i}"), "zego", zego, json!(format!("r{}", i % 4)), &[&format!("u{i}")]));
        let users = if i % 5 == 0 { vec!["bad".to_owned()] } else { vec![format!("t{i}")] };
        let users: Vec<&str> = users.iter().map(String::as_str).collect();
        batch.push(verdict(&format!("t-{i}"), "trtc", trtc, json!(i % 3 + 1), &users));
    }
    env.publish_all(&batch).await;
    env.publish(b"{not json").await;
    let _worker = env.worker();
    env.wait_for_count("SELECT count(*) FROM verdicts WHERE status <> 'pending'", 80, Duration::from_secs(90)).await;
    env.wait_for_count("SELECT count(*) FROM rejected_messages", 1, Duration::from_secs(30)).await;
    // The maintenance lease's holder folds deltas within a second or so.
    env.wait_for_count("SELECT count(*) FROM rollup_deltas", 0, Duration::from_secs(30)).await;

    let pool = env.pool().await;
    let raw: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT vendor, status, count(*) FROM verdicts WHERE received_at >= date_trunc('minute', now()) - interval '1439 minutes'
         GROUP BY 1, 2 ORDER BY 1, 2",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let rolled: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT vendor, key, sum(n)::bigint FROM rollups WHERE metric = 'verdicts' GROUP BY 1, 2 HAVING sum(n) <> 0 ORDER BY 1, 2",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(rolled, raw);
    for (metric, raw_sql) in [
        ("calls", "SELECT vendor, outcome, count(*) FROM kick_attempts GROUP BY 1, 2 ORDER BY 1, 2"),
        (
            "call_users",
            "SELECT vendor, outcome, sum(cardinality(user_ids))::bigint FROM kick_attempts GROUP BY 1, 2 ORDER BY 1, 2",
        ),
        (
            "latency",
            "SELECT vendor, bouncer_latency_bucket(finished_at - received_at), count(*) FROM verdicts
             WHERE finished_at IS NOT NULL GROUP BY 1, 2 ORDER BY 1, 2",
        ),
    ] {
        let raw: Vec<(String, String, i64)> =
            sqlx::query_as(sqlx::AssertSqlSafe(raw_sql)).fetch_all(&pool).await.unwrap();
        let rolled: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT vendor, key, sum(n)::bigint FROM rollups WHERE metric = $1 GROUP BY 1, 2 HAVING sum(n) <> 0 ORDER BY 1, 2",
        )
        .bind(metric)
        .fetch_all(&pool)
        .await
        .unwrap();
        assert_eq!(rolled, raw, "{metric}");
    }

    let console = ConsoleProcess::start(&env.config.0).await;
    let (status, page) = Browser::new(&console).get("ops", "/").await;
    assert_eq!(status, 200);
    let failed = raw.iter().filter(|(_, s, _)| s == "failed").map(|(.., n)| n).sum::<i64>();
    assert!(failed >= 8, "the bad TRTC user's verdicts failed: {raw:?}");
    for (figure, label) in
        [(80, "verdicts in 24 h"), (80 - failed, "done"), (failed, "failed"), (1, "rejected messages")]
    {
        assert!(page.contains(&format!("<b>{figure}</b> {label}")), "{figure} {label} in {page}");
    }
    assert!(page.contains("p99 <b>≤ "), "the latency comes from the rollups' buckets");
}
