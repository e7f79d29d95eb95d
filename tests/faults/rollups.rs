//! Rollups stay exact through a crash and replays: every change to the trail and its delta commit
//! together, and folding moves each delta once.

use std::time::Duration;

use serde_json::json;

use crate::helpers::{Apps, EnvOptions, SimControl, TestEnv, stderr};
use crate::{SERIAL, count, publish_many, wait_until_done_at_least};

/// Each rollup metric against the same count over the raw trail: (metric, SQL giving vendor, key,
/// count in that order).
const RAW: [(&str, &str); 5] = [
    ("verdicts", "SELECT vendor, status, count(*) FROM verdicts GROUP BY 1, 2"),
    (
        "latency",
        "SELECT vendor, bouncer_latency_bucket(finished_at - received_at), count(*) FROM verdicts
         WHERE finished_at IS NOT NULL GROUP BY 1, 2",
    ),
    ("calls", "SELECT vendor, outcome, count(*) FROM kick_attempts GROUP BY 1, 2"),
    ("call_users", "SELECT vendor, outcome, sum(cardinality(user_ids))::bigint FROM kick_attempts GROUP BY 1, 2"),
    (
        "call_codes",
        "SELECT vendor, coalesce(vendor_code, 'http ' || coalesce(http_status::text, 'none')), count(*)
         FROM kick_attempts WHERE outcome <> 'ok' GROUP BY 1, 2",
    ),
];

async fn assert_rollups_equal_the_trail(env: &TestEnv) {
    let pool = env.pool().await;
    for (metric, raw_sql) in RAW {
        let mut raw: Vec<(String, String, i64)> =
            sqlx::query_as(sqlx::AssertSqlSafe(raw_sql)).fetch_all(&pool).await.unwrap();
        raw.sort();
        // Folded and not yet folded together, as the console reads them.
        let rolled: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT vendor, key, sum(n)::bigint FROM (SELECT vendor, key, n FROM rollups WHERE metric = $1
                                                     UNION ALL SELECT vendor, key, n FROM rollup_deltas WHERE metric = $1) r
             GROUP BY 1, 2 HAVING sum(n) <> 0 ORDER BY 1, 2",
        )
        .bind(metric)
        .fetch_all(&pool)
        .await
        .unwrap();
        assert_eq!(rolled, raw, "{metric}");
    }
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rollups_equal_the_raw_trail_after_a_worker_is_killed_mid_run_and_failed_verdicts_are_replayed() {
    let _serial = SERIAL.lock().await;
    let opts = EnvOptions { deadline_secs: 2, ..EnvOptions::default() };
    let env = TestEnv::new(Apps::random(2, 1), opts).await;
    let sim = SimControl::new(&env.sim);
    // Every 20th TRTC verdict's user is refused for good: those verdicts fail, to be replayed.
    let bad: Vec<String> = (0..1200).filter(|i| i % 40 == 1).map(|i| format!("u{i}")).collect();
    sim.set_faults(json!({"vendor": "trtc", "bad_users": bad})).await;
    publish_many(&env, 1200).await;
    let mut first = env.worker();
    wait_until_done_at_least(&env, 200).await;
    first.signal("-KILL");
    first.wait_exit(Duration::from_secs(5)).expect("killed");
    assert!(count(&env, "SELECT count(*) FROM verdicts WHERE status = 'pending'").await > 0, "killed mid-run");

    let _second = env.worker();
    env.wait_for_count("SELECT count(*) FROM verdicts WHERE status <> 'pending'", 1200, Duration::from_secs(120)).await;
    assert_eq!(count(&env, "SELECT count(*) FROM verdicts WHERE status = 'failed'").await, 30);
    assert_rollups_equal_the_trail(&env).await;

    sim.clear_faults().await;
    let replay = env.cli(&["replay", "--status", "failed", "--actor", "test"]);
    assert!(replay.status.success(), "{}", stderr(&replay));
    env.wait_for_count("SELECT count(*) FROM verdicts WHERE status = 'done'", 1200, Duration::from_secs(60)).await;
    assert_rollups_equal_the_trail(&env).await;
    // The maintenance lease's holder folds everything, and folding changes no total.
    env.wait_for_count("SELECT count(*) FROM rollup_deltas", 0, Duration::from_secs(30)).await;
    assert_rollups_equal_the_trail(&env).await;
}
