//! Re-entry across replicas: a callback may reach any replica; the re-kick is made by the owner
//! of the app's quota, after a takeover if the owner dies, and once however often the vendor
//! delivers the callback.

use std::time::Duration;

use serde_json::json;

use crate::SERIAL;
use crate::helpers::{Apps, EnvOptions, SimControl, TestEnv, WorkerProcess, verdict};

/// Successful kick calls the simulator saw carrying `user`.
async fn kicks_of(sim: &SimControl, user: &str) -> usize {
    sim.requests().await.iter().filter(|r| r.rejection.is_none() && r.user_ids.iter().any(|u| u == user)).count()
}

/// The replica owning the app's quota now (waits for one).
async fn owner(env: &TestEnv) -> String {
    for _ in 0..300 {
        if let Some((_, w)) = env.owners().await.into_iter().next() {
            return w;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no replica took the quota");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_callback_at_any_replica_is_rekicked_once_by_the_quota_owner_even_after_the_owner_is_killed() {
    let _serial = SERIAL.lock().await;
    let mut env = TestEnv::new(Apps::random(1, 0).with_callbacks(), EnvOptions::default()).await;
    env.enable_api();
    let app = env.apps.zego[0].0;
    let mut v = verdict("ban-abc", "zego", app, json!("r"), &["a", "b", "c"]);
    v["ban"] = json!({"seconds": 600});
    env.publish_json(&v).await;
    let mut replicas: Vec<(String, WorkerProcess)> =
        ["one", "two"].into_iter().map(|n| (n.to_owned(), env.replica(n))).collect();
    env.wait_for_count("SELECT count(*) FROM kicks WHERE status = 'kicked'", 3, Duration::from_secs(60)).await;
    let sim = SimControl::new(&env.sim);
    let pool = env.pool().await;

    // At the replica that does not own the quota.
    let owning = owner(&env).await;
    let other = replicas.iter().find(|(n, _)| *n != owning).expect("two replicas");
    sim.set_callback_url(&format!("http://{}", other.1.api_addr())).await;
    assert!(sim.join("zego", app, json!("r"), "a").await);
    env.wait_for_count("SELECT count(*) FROM reentries WHERE status = 'kicked'", 1, Duration::from_secs(30)).await;
    let (by,): (String,) =
        sqlx::query_as("SELECT received_by FROM reentries WHERE user_id = 'a'").fetch_one(&pool).await.unwrap();
    assert_eq!(by, other.0, "received by the replica without the quota");
    assert_eq!(kicks_of(&sim, "a").await, 2, "and kicked again by the owner");

    // Delivered five times (each signed anew): recorded and re-kicked once.
    let (status, _) =
        sim.join_with(json!({"vendor": "zego", "app_id": app, "room_id": "r", "user_id": "b", "deliveries": 5})).await;
    assert_eq!(status, 200);
    for _ in 0..300 {
        let answered = sim
            .deliveries()
            .await
            .iter()
            .filter(|d| d.user_id == "b" && d.event == "room_login" && d.status == 200)
            .count();
        if answered == 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    env.wait_for_count("SELECT count(*) FROM reentries WHERE status = 'kicked'", 2, Duration::from_secs(30)).await;
    let entries: i64 =
        sqlx::query_scalar("SELECT count(*) FROM reentries WHERE user_id = 'b'").fetch_one(&pool).await.unwrap();
    assert_eq!(entries, 1);
    assert_eq!(kicks_of(&sim, "b").await, 2, "the verdict's kick and one re-kick");

    // The owner is killed; the callback reaches the survivor, which re-kicks once it has taken over.
    let owning = owner(&env).await;
    let i = replicas.iter().position(|(n, _)| *n == owning).expect("the owner is ours");
    let (_, mut dead) = replicas.remove(i);
    dead.signal("-KILL");
    dead.wait_exit(Duration::from_secs(5)).expect("killed");
    let (survivor, process) = &replicas[0];
    sim.set_callback_url(&format!("http://{}", process.api_addr())).await;
    assert!(sim.join("zego", app, json!("r"), "c").await);
    env.wait_for_count("SELECT count(*) FROM reentries WHERE status = 'kicked'", 3, Duration::from_secs(60)).await;
    assert_eq!(&owner(&env).await, survivor);
    assert_eq!(kicks_of(&sim, "c").await, 2);
    let stats = sim.stats().await;
    for (quota, q) in stats["quotas"].as_object().expect("quotas") {
        assert!(q["max_calls_in_1s"].as_u64() <= q["limit"].as_u64(), "{quota} went over: {q}");
    }
}
