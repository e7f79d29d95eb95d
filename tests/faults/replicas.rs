//! Several `bouncer run` replicas on one queue and database: they share the vendor quotas, one
//! owner per quota group, and take over from each other when one dies, stops or loses PostgreSQL.
//!
//! Three debug replicas, PostgreSQL, RabbitMQ and the simulator share two cores here: a call can
//! sit 100 – 200 ms between being charged and being sent. The pacing counts a call as possibly
//! arriving until its answer, so that costs throughput, never the limit: these tests run at the
//! default `pacing.jitter_ms`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::{Apps, CuttableProxy, EnvOptions, Route, SimControl, TempFile, TestEnv, WorkerProcess, verdict};
use crate::{SERIAL, count};

type Time = chrono::DateTime<chrono::Utc>;

fn now_ms() -> u64 {
    chrono::Utc::now().timestamp_millis().max(0) as u64
}

/// The quota group a simulator quota belongs to: `zego:<app>` as is, `trtc:<id>:<action>` → `trtc:<id>`.
fn group_of(quota: &str) -> String {
    match quota.strip_prefix("trtc:").and_then(|r| r.split_once(':')) {
        Some((secret_id, _action)) => format!("trtc:{secret_id}"),
        None => quota.to_owned(),
    }
}

/// Arrival times (unix ms) of every call, by quota group.
async fn calls_by_group(env: &TestEnv) -> BTreeMap<String, Vec<u64>> {
    let mut by: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for r in SimControl::new(&env.sim).requests().await {
        by.entry(group_of(&r.quota)).or_default().push(r.at_unix_ms);
    }
    by.values_mut().for_each(|v| v.sort_unstable());
    by
}

/// Waits until `pred` holds for the live leases, or fails showing them.
async fn wait_for_owners(env: &TestEnv, what: &str, timeout: Duration, pred: impl Fn(&[(String, String)]) -> bool) {
    let started = Instant::now();
    loop {
        let owners = env.owners().await;
        if pred(&owners) {
            return;
        }
        assert!(started.elapsed() < timeout, "waited {timeout:?} for {what}; leases: {owners:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn groups_of<'a>(owners: &'a [(String, String)], worker: &str) -> Vec<&'a str> {
    owners.iter().filter(|(_, w)| w == worker).map(|(g, _)| g.as_str()).collect()
}

/// Multi-user verdicts, app by app: `per_app` verdicts of `users` users in `rooms` rooms.
fn backlog(env: &TestEnv, per_app: u32, rooms: u32) -> Vec<Value> {
    let mut out = Vec::new();
    let apps =
        env.apps.zego.iter().map(|(a, _)| ("zego", *a, 5)).chain(env.apps.trtc.iter().map(|(a, ..)| ("trtc", *a, 10)));
    for (vendor, app, users) in apps {
        for i in 0..per_app {
            let ids: Vec<String> = (0..users).map(|k| format!("{app}-{i}-{k}")).collect();
            let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
            out.push(verdict(&format!("{app}-{i}"), vendor, app, json!(format!("room-{}", i % rooms)), &refs));
        }
    }
    out
}

/// No sliding second at the simulator held more calls than the quota's limit; on failure, shows
/// the calls of the fullest second (unix ms).
async fn assert_never_over_the_limit(env: &TestEnv) {
    let stats = SimControl::new(&env.sim).stats().await;
    let records = SimControl::new(&env.sim).requests().await;
    for (quota, q) in stats["quotas"].as_object().expect("quotas") {
        if q["max_calls_in_1s"].as_u64() <= q["limit"].as_u64() {
            continue;
        }
        let limit = q["limit"].as_u64().unwrap_or(0) as usize;
        let mut t: Vec<u64> = records.iter().filter(|r| &r.quota == quota).map(|r| r.at_unix_ms).collect();
        t.sort_unstable();
        let dense = (0..t.len().saturating_sub(limit)).find(|i| t[i + limit] - t[*i] < 1000);
        let shown = dense.map(|i| t[i.saturating_sub(3)..(i + limit + 4).min(t.len())].to_vec());
        panic!("{quota} went over: {q}\ncalls around the fullest second: {shown:?}");
    }
}

/// The first call of `group` after `t`, in ms after `t`, if the group was busy (a call in the
/// second before `t`) and had work left.
fn resumed_after(calls: &BTreeMap<String, Vec<u64>>, group: &str, t: u64) -> Option<u64> {
    let times = calls.get(group)?;
    times.iter().any(|c| *c <= t && t - *c <= 1_000).then_some(())?;
    times.iter().find(|c| **c > t).map(|c| c - t)
}

#[tokio::test(flavor = "multi_thread")]
async fn three_replicas_share_six_quotas_and_survive_a_kill_and_a_stop_within_the_vendor_limits() {
    let _serial = SERIAL.lock().await;
    // A 2 s lease keeps the SIGKILL takeover (lease + heartbeat + window + allowance) well inside
    // 5 s on two loaded cores.
    let mut env = TestEnv::new(Apps::random(4, 2), EnvOptions::default()).await;
    env.edit_config(|c| c.ownership.lease_ms = 2000);
    // About 30 s of work for every quota at its limit.
    let work = backlog(&env, 1500, 25);
    let total = work.len() as i64;
    env.publish_all(&work).await;
    let mut replicas: Vec<WorkerProcess> = ["r1", "r2", "r3"].iter().map(|n| env.replica(n)).collect();

    wait_for_owners(&env, "every replica to own a share", Duration::from_secs(30), |o| {
        o.len() == 6 && ["r1", "r2", "r3"].iter().all(|r| !groups_of(o, r).is_empty())
    })
    .await;
    // Disruptions hit a steady state: everything recorded, every quota busy.
    env.wait_for_count("SELECT count(*) FROM verdicts", total, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = env.owners().await;
    let killed: Vec<String> = groups_of(&before, "r1").into_iter().map(str::to_owned).collect();
    let t_kill = now_ms();
    eprintln!("SIGKILL r1 at {t_kill}, owning {killed:?}");
    replicas[0].signal("-KILL");
    replicas[0].wait_exit(Duration::from_secs(5)).expect("killed");

    wait_for_owners(&env, "r2 and r3 to hold every quota", Duration::from_secs(15), |o| {
        o.len() == 6 && o.iter().all(|(_, w)| w == "r2" || w == "r3")
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let middle = env.owners().await;
    let stopped: Vec<String> = groups_of(&middle, "r2").into_iter().map(str::to_owned).collect();
    assert!(!stopped.is_empty(), "r2 owned something before its stop: {middle:?}");
    let t_term = now_ms();
    eprintln!("SIGTERM r2 at {t_term}, owning {stopped:?}");
    replicas[1].signal("-TERM");
    let status = replicas[1].wait_exit(Duration::from_secs(15)).unwrap_or_else(|| {
        let log = replicas[1].log_text();
        let notable: Vec<&str> = log.lines().filter(|l| !l.contains("\"DEBUG\"")).collect();
        panic!("r2 did not stop within the grace period:\n{}", notable[notable.len().saturating_sub(40)..].join("\n"))
    });
    assert!(status.success(), "{status:?}");

    env.wait_for_count("SELECT count(*) FROM verdicts WHERE status = 'done'", total, Duration::from_secs(180)).await;
    assert_eq!(count(&env, "SELECT count(*) FROM kicks WHERE status <> 'kicked'").await, 0);
    assert_eq!(env.queue_depth("").await, 0);

    let calls = calls_by_group(&env).await;
    assert_never_over_the_limit(&env).await;
    let mut gaps = HashMap::new();
    let story = |g: &str| -> String {
        replicas[1..]
            .iter()
            .map(|r| {
                let log = r.log_text();
                let lines: Vec<&str> =
                    log.lines().filter(|l| l.contains(g) || l.contains("WARN") || l.contains("ERROR")).collect();
                lines.join("\n")
            })
            .collect::<Vec<_>>()
            .join("\n--- next replica ---\n")
    };
    for g in &killed {
        let gap = resumed_after(&calls, g, t_kill).expect("the group was busy and had work left after the kill");
        assert!(gap <= 5_000, "{g} resumed {gap} ms after the SIGKILL; logs:\n{}", story(g));
        gaps.insert(g.clone(), gap);
    }
    for g in &stopped {
        if let Some(gap) = resumed_after(&calls, g, t_term) {
            assert!(gap <= 2_000, "{g} resumed {gap} ms after the SIGTERM; logs:\n{}", story(g));
            gaps.insert(g.clone(), gap);
        }
    }
    eprintln!("takeover gaps (ms): {gaps:?}");
    // The stopped replica handed over in an orderly way and left.
    assert!(replicas[1].log_text().contains("handed this quota over"), "orderly handover");
    let workers: BTreeSet<String> =
        env.owners().await.into_iter().map(|(_, w)| w).collect::<BTreeSet<_>>().into_iter().collect();
    assert!(workers.iter().all(|w| w == "r3"), "only r3 is left: {workers:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn two_replicas_through_a_transaction_pooler_take_over_within_five_seconds_of_a_sigkill_and_never_go_over_a_limit()
 {
    let _serial = SERIAL.lock().await;
    let mut env = TestEnv::new(Apps::random(2, 0), EnvOptions::default()).await;
    // Leases, intake, enforcement and the audit trail all go through PgBouncer in transaction
    // mode; no direct URL, so no LISTEN: lanes and contenders poll.
    env.route(Route::Pooler);
    env.edit_config(|c| c.ownership.lease_ms = 2000);
    env.migrate_directly().await;
    // About 20 s of work for every quota at its limit.
    let work = backlog(&env, 1000, 25);
    let total = work.len() as i64;
    env.publish_all(&work).await;
    let mut replicas: Vec<WorkerProcess> = ["p1", "p2"].iter().map(|n| env.replica(n)).collect();
    wait_for_owners(&env, "both replicas to own a share", Duration::from_secs(30), |o| {
        o.len() == 2 && ["p1", "p2"].iter().all(|r| !groups_of(o, r).is_empty())
    })
    .await;
    env.wait_for_count("SELECT count(*) FROM verdicts", total, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let killed: Vec<String> = groups_of(&env.owners().await, "p1").into_iter().map(str::to_owned).collect();
    let t_kill = now_ms();
    eprintln!("SIGKILL p1 at {t_kill}, owning {killed:?}");
    replicas[0].signal("-KILL");
    replicas[0].wait_exit(Duration::from_secs(5)).expect("killed");

    env.wait_for_count("SELECT count(*) FROM verdicts WHERE status = 'done'", total, Duration::from_secs(180)).await;
    assert_eq!(count(&env, "SELECT count(*) FROM kicks WHERE status <> 'kicked'").await, 0);
    assert_never_over_the_limit(&env).await;
    let calls = calls_by_group(&env).await;
    let mut gaps = HashMap::new();
    for g in &killed {
        let gap = resumed_after(&calls, g, t_kill).expect("the group was busy and had work left after the kill");
        assert!(gap <= 5_000, "{g} resumed {gap} ms after the SIGKILL; p2's log:\n{}", replicas[1].log_text());
        gaps.insert(g.clone(), gap);
    }
    eprintln!("takeover gaps through the pooler (ms): {gaps:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_restarted_during_a_vendor_outage_continues_the_retry_schedule_and_the_deadline() {
    let _serial = SERIAL.lock().await;
    let opts = EnvOptions { retry_initial_ms: 4_000, retry_max_ms: 8_000, deadline_secs: 20, ..EnvOptions::default() };
    let env = TestEnv::new(Apps::random(1, 0), opts).await;
    let app = env.apps.zego[0].0;
    SimControl::new(&env.sim).set_faults(json!({"vendor": "zego", "internal_error_rate": 1.0})).await;
    let work: Vec<Value> =
        (0..20).map(|i| verdict(&format!("o-{i}"), "zego", app, json!(format!("r{i}")), &[&format!("u{i}")])).collect();
    env.publish_all(&work).await;
    let mut first = env.worker();
    env.wait_for_count("SELECT count(*) FROM kicks WHERE scheduled_retries >= 1", 20, Duration::from_secs(30)).await;
    first.signal("-TERM");
    first.wait_exit(Duration::from_secs(15)).expect("stopped");
    let restart_ms = now_ms();
    let pool = env.pool().await;
    let schedule: Vec<(String, Time, Time)> =
        sqlx::query_as("SELECT user_id, next_attempt_at, first_attempt_at FROM kicks WHERE status = 'pending'")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(schedule.len(), 20);
    assert!(
        schedule.iter().any(|(_, next, _)| next.timestamp_millis() as u64 > restart_ms + 1_000),
        "some retries are due well after the restart: {schedule:?}"
    );

    let _second = env.worker();
    env.wait_for_count("SELECT count(*) FROM verdicts WHERE status = 'failed'", 20, Duration::from_secs(60)).await;

    // No burst at start: the new worker calls each user no earlier than the schedule it found.
    let records = SimControl::new(&env.sim).requests().await;
    for (user, next, _) in &schedule {
        let first_after = records
            .iter()
            .filter(|r| r.at_unix_ms > restart_ms && r.user_ids.contains(user))
            .map(|r| r.at_unix_ms)
            .min()
            .expect("the user was tried again");
        assert!(
            first_after + 50 >= next.timestamp_millis() as u64,
            "{user} called at {first_after}, scheduled for {}",
            next.timestamp_millis()
        );
    }
    // The deadline counted from the first attempt, before the restart.
    type Ended = (String, Option<String>, Time, Time);
    let ended: Vec<Ended> = sqlx::query_as("SELECT user_id, last_error, first_attempt_at, updated_at FROM kicks")
        .fetch_all(&pool)
        .await
        .unwrap();
    for (user, error, first_at, ended_at) in ended {
        let (_, _, before) = schedule.iter().find(|(u, ..)| *u == user).expect("known user");
        assert_eq!(first_at, *before, "{user}: the first attempt is kept across the restart");
        assert!(error.as_deref().unwrap_or_default().contains("20s deadline"), "{user}: {error:?}");
        let lived = (ended_at - first_at).num_milliseconds();
        assert!(lived <= 21_000, "{user} failed {lived} ms after its first attempt");
    }
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_owner_cut_off_from_postgres_stops_calling_within_its_lease_and_another_takes_over() {
    let _serial = SERIAL.lock().await;
    let env = TestEnv::new(Apps::random(2, 0), EnvOptions::default()).await;
    let work = backlog(&env, 1000, 20);
    let total = work.len() as i64;
    env.publish_all(&work).await;
    // The proxy carries all of a's database traffic: on a runtime of its own, so it does not
    // delay the simulator (which runs on this test's runtime and timestamps arrivals).
    let proxy_rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let proxy = std::thread::scope(|s| {
        s.spawn(|| proxy_rt.block_on(CuttableProxy::start("127.0.0.1:5432"))).join().expect("proxy started")
    });
    let pg = url::Url::parse(&env.db.url).unwrap();
    let proxied = env.db.url.replace(&format!(":{}/", pg.port().unwrap_or(5432)), &format!(":{}/", proxy.port));
    assert_ne!(proxied, env.db.url);
    let mut file = env.file.clone();
    file.postgres.url = proxied.into();
    let cut_config = TempFile::with(&file.to_toml());
    let a = WorkerProcess::start_with_env(&cut_config.0, &[("BOUNCER_OWNERSHIP__WORKER_ID", "cut-a")]);
    wait_for_owners(&env, "a to own both quotas", Duration::from_secs(30), |o| groups_of(o, "cut-a").len() == 2).await;
    let b = env.replica("direct-b");
    wait_for_owners(&env, "one quota each", Duration::from_secs(30), |o| {
        groups_of(o, "cut-a").len() == 1 && groups_of(o, "direct-b").len() == 1
    })
    .await;
    // Everything is recorded (a's intake holds nothing), then a loses its database.
    env.wait_for_count("SELECT count(*) FROM verdicts", total, Duration::from_secs(60)).await;
    let group = groups_of(&env.owners().await, "cut-a")[0].to_owned();
    let t_cut = now_ms();
    proxy.cut();
    eprintln!("cut {group}'s owner off at {t_cut}");

    env.wait_for_count("SELECT count(*) FROM verdicts WHERE status = 'done'", total, Duration::from_secs(120)).await;
    assert_never_over_the_limit(&env).await;
    // a stopped calling within its lease (3 s): the quota's calls pause for the takeover window,
    // starting no later than that, and b took the quota over.
    let calls = calls_by_group(&env).await;
    let times = &calls[&group];
    let pause = times
        .windows(2)
        .find(|w| w[1] > t_cut && w[1] - w[0] >= 1_000)
        .unwrap_or_else(|| panic!("no takeover pause on {group} after the cut"));
    assert!(pause[0] <= t_cut + 3_200, "{group}: calls went on {} ms after the cut", pause[0].saturating_sub(t_cut));
    assert!(a.log_text().contains("stopped calling this quota"), "a said it stopped");
    assert!(b.log_text().contains(&format!("\"quota_group\":\"{group}\"")), "b took {group} over");
    drop(proxy);
    proxy_rt.shutdown_background();
}
