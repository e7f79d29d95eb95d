//! ZEGO ban rules (`[[zego]] forbid_rules = true`): the simulator holds the right rule for every
//! ban, a lifted ban's rule is deleted, and the vendor's refusals (9, 50123) leave the bans standing.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{ApiClient, Apps, EnvOptions, SimControl, TestEnv, metric_sum, parse_prometheus, verdict};

fn banned(id: &str, app: u32, room: &str, users: &[&str], seconds: u32, scope: &str) -> Value {
    let mut v = verdict(id, "zego", app, json!(room), users);
    v["ban"] = json!({"seconds": seconds, "scope": scope});
    v
}

#[tokio::test(flavor = "multi_thread")]
async fn every_ban_gets_its_zego_rule_and_a_lifted_ban_loses_it() {
    let mut env = TestEnv::new(Apps::random(1, 0).with_forbid_rules(), EnvOptions::default()).await;
    let token = env.enable_api();
    let app = env.apps.zego[0].0;
    env.publish_all(&[
        banned("v-room", app, "r1", &["u1", "u2"], 600, "room"),
        banned("v-app", app, "r1", &["u3"], 7200, "app"),
    ])
    .await;
    let worker = env.worker();
    env.wait_for_count("SELECT count(*) FROM bans WHERE rule_state = 'in_force'", 3, Duration::from_secs(60)).await;
    let pool = env.pool().await;
    let ends: HashMap<String, i64> =
        sqlx::query_as::<_, (String, i64)>("SELECT user_id, floor(extract(epoch FROM expires_at))::bigint FROM bans")
            .fetch_all(&pool)
            .await
            .expect("bans")
            .into_iter()
            .collect();
    let rules = SimControl::new(&env.sim).rules().await;
    let held: BTreeSet<(u32, String, String)> =
        rules.iter().map(|r| (r.rule_type, r.room_id.clone(), r.user_id.clone())).collect();
    let want: BTreeSet<(u32, String, String)> = [(4, "r1", "u1"), (4, "r1", "u2"), (3, "", "u3")]
        .into_iter()
        .map(|(t, r, u)| (t, r.to_owned(), u.to_owned()))
        .collect();
    assert_eq!(held, want, "one rule per ban: type 4 for a room ban, 3 for an app ban");
    for r in &rules {
        assert_eq!(r.disabled_privileges, vec![1], "login is what a ban disables");
        assert!(r.expire_time <= ends[&r.user_id], "the rule never outlives the ban: {r:?}");
        assert!(r.expire_time >= ends[&r.user_id] - 5, "and lasts to its end: {r:?}");
    }

    let api = ApiClient::new(&worker, Some(&token));
    let lifted =
        api.post("/v1/bans/lift", &json!({"vendor": "zego", "app_id": app, "user_id": "u1", "reason": "appeal"})).await;
    assert_eq!(lifted.body["lifted"], 1, "{lifted:?}");
    env.wait_for_count("SELECT count(*) FROM bans WHERE rule_state = 'deleted'", 1, Duration::from_secs(60)).await;
    let left: BTreeSet<String> = SimControl::new(&env.sim).rules().await.into_iter().map(|r| r.user_id).collect();
    assert_eq!(left, BTreeSet::from(["u2".to_owned(), "u3".to_owned()]), "the lifted ban's rule is gone");
}

#[tokio::test(flavor = "multi_thread")]
async fn rules_not_enabled_for_the_app_pause_loudly_and_the_bans_stand() {
    let mut env = TestEnv::new(Apps::random(1, 0).with_forbid_rules(), EnvOptions::default()).await;
    let token = env.enable_api();
    let app = env.apps.zego[0].0;
    SimControl::new(&env.sim).set_faults(json!({"vendor": "zego", "app_id": app, "rules_not_enabled": true})).await;
    env.publish_all(&[banned("v-1", app, "r1", &["u1", "u2"], 600, "room")]).await;
    let worker = env.worker();
    env.wait_for_count("SELECT count(*) FROM kicks WHERE status = 'kicked'", 2, Duration::from_secs(60)).await;
    env.wait_for_count("SELECT count(*) FROM bans WHERE rule_state = 'not_enabled'", 2, Duration::from_secs(60)).await;
    let api = ApiClient::new(&worker, Some(&token));
    assert!(api.banned("zego", app, "u1", Some(("r1", None))).await, "the ban stands without its rule");
    let metrics = reqwest::get(format!("http://{}/metrics", worker.http_addr())).await.unwrap().text().await.unwrap();
    let refused =
        metric_sum(&parse_prometheus(&metrics), "bouncer_vendor_rule_calls_total", ("outcome", "not_enabled"));
    assert_eq!(refused, 1.0, "one call found out, the rest paused: {metrics}");
    assert!(worker.log_text().contains("ban rules are not enabled for this AppID"), "said loudly");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_burst_of_2000_banned_users_in_40_rooms_kicks_in_full_chunks_and_sets_rules_within_their_own_limits() {
    let env =
        TestEnv::new(Apps::random(1, 0).with_forbid_rules(), EnvOptions { linger_ms: 10_000, ..EnvOptions::default() })
            .await;
    let app = env.apps.zego[0].0;
    // 40 rooms of 50 users, 10 verdicts of 5 users each.
    let verdicts: Vec<Value> = (0..400)
        .map(|i| {
            let users: Vec<String> = (0..5).map(|k| format!("u{}-{}", i / 10, (i % 10) * 5 + k)).collect();
            let refs: Vec<&str> = users.iter().map(String::as_str).collect();
            banned(&format!("v-{i}"), app, &format!("room-{}", i / 10), &refs, 3600, "room")
        })
        .collect();
    env.publish_all(&verdicts).await;
    let _worker = env.worker();
    env.wait_for_count("SELECT count(*) FROM kicks WHERE status = 'kicked'", 2000, Duration::from_secs(120)).await;
    // 200 rules of a type in force is ZEGO's limit: the rest are refused and recorded.
    env.wait_for_count("SELECT count(*) FROM bans WHERE rule_state = 'in_force'", 200, Duration::from_secs(120)).await;
    env.wait_for_count("SELECT count(*) FROM bans WHERE rule_state = 'refused_limit'", 1800, Duration::from_secs(60))
        .await;

    let sim = SimControl::new(&env.sim);
    let records = sim.requests().await;
    let kicks: Vec<_> = records.iter().filter(|r| r.action == "KickoutUser" && r.rejection.is_none()).collect();
    assert_eq!(kicks.len(), 400, "2,000 users in 400 full calls");
    assert!(kicks.iter().all(|r| r.user_ids.len() == 5), "every chunk full");
    let stats = sim.stats().await;
    for (quota, q) in stats["quotas"].as_object().expect("quotas") {
        assert!(q["max_calls_in_1s"].as_u64() <= q["limit"].as_u64(), "{quota} went over: {q}");
        assert_eq!(q["rate_limited"], 0, "{quota} was refused for rate: {q}");
    }
    let rule_quota = format!("zego:{app}:SetForbidUserRule");
    assert_eq!(stats["quotas"][&rule_quota]["limit"], 10, "{stats}");
    let sets: Vec<_> = records.iter().filter(|r| r.action == "SetForbidUserRule").collect();
    assert_eq!(sets.iter().filter(|r| r.rejection.is_none()).count(), 200, "200 rules set");
    assert!(sets.iter().any(|r| r.code == "50123"), "then refused for the limit");
    assert!(sets.len() <= 205, "and the other 1,800 bans were not tried one by one: {} calls", sets.len());
    assert_eq!(SimControl::new(&env.sim).rules().await.len(), 200);
}
