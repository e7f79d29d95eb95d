//! The real vendor clients against a running `bouncer sim`.

use std::io::{BufRead, BufReader};
use std::time::Duration;

use bouncer::config::Config;
use bouncer::vendor_api::trtc::TrtcClient;
use bouncer::vendor_api::zego::ZegoClient;
use bouncer::vendor_api::{Blame, Client, KickRequest, Outcome, RequestError};
use bouncer::verdict::RoomId;
use serde_json::json;

use crate::helpers::{Apps, SimControl, TempFile, set_vendor_timeouts, start_sim};

fn users(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("user-{i}")).collect()
}

fn request(app_id: u32, room: RoomId, n: usize) -> KickRequest {
    KickRequest {
        action: bouncer::vendors::Action::Kick,
        app_id,
        room,
        user_ids: users(n),
        reason: Some("spam".into()),
    }
}

fn clients(config: &Config) -> (Client, Client) {
    (Client::Zego(ZegoClient::new(&config.zego[0])), Client::Trtc(TrtcClient::new(&config.trtc[0])))
}

#[tokio::test]
async fn both_vendors_and_both_trtc_room_kinds_kick_successfully() {
    let apps = Apps::random(1, 1);
    let sim = start_sim(&apps).await;
    let (zego, trtc) = clients(&apps.config(&sim.endpoint()));

    let r = zego.kick_once(&request(apps.zego[0].0, RoomId::Text("room-1".into()), 5)).await.unwrap();
    assert!(matches!(&r.outcome, Outcome::Done { request_id } if !request_id.is_empty()), "{r:?}");
    assert_eq!((r.action, r.http_status, r.vendor_code.as_deref()), ("KickoutUser", Some(200), Some("0")));

    let r = trtc.kick_once(&request(apps.trtc[0].0, RoomId::Numeric(1234), 10)).await.unwrap();
    assert!(matches!(r.outcome, Outcome::Done { .. }), "{r:?}");
    assert_eq!(r.action, "RemoveUser");

    let r = trtc.kick_once(&request(apps.trtc[0].0, RoomId::Text("1234".into()), 3)).await.unwrap();
    assert!(matches!(r.outcome, Outcome::Done { .. }), "{r:?}");
    assert_eq!(r.action, "RemoveUserByStrRoomId");

    let seen = SimControl::new(&sim).requests().await;
    let summary: Vec<_> =
        seen.iter().map(|r| (r.action.as_str(), r.room_id.as_str(), r.room_numeric, r.user_ids.len())).collect();
    assert_eq!(
        summary,
        [
            ("KickoutUser", "room-1", false, 5),
            ("RemoveUser", "1234", true, 10),
            ("RemoveUserByStrRoomId", "1234", false, 3)
        ]
    );
    assert!(seen.iter().all(|r| r.rejection.is_none()), "{seen:?}");
}

#[tokio::test]
async fn a_wrong_secret_is_refused_by_the_sim_and_classified_as_configuration() {
    let apps = Apps::random(1, 1);
    let sim = start_sim(&apps).await;
    let mut wrong = Apps { zego: apps.zego.clone(), trtc: apps.trtc.clone(), forbid_rules: false, callbacks: false };
    wrong.zego[0].1 = "not-the-secret".into();
    wrong.trtc[0].2 = "not-the-key".into();
    let (zego, trtc) = clients(&wrong.config(&sim.endpoint()));

    for (client, req) in [
        (&zego, request(apps.zego[0].0, RoomId::Text("r".into()), 1)),
        (&trtc, request(apps.trtc[0].0, RoomId::Numeric(7), 1)),
    ] {
        let r = client.kick_once(&req).await.unwrap();
        assert!(
            matches!(&r.outcome, Outcome::Permanent { blame: Blame::Configuration, .. }),
            "{:?} got {r:?}",
            client.vendor()
        );
    }
    let stats = SimControl::new(&sim).stats().await;
    assert_eq!(stats["rejections"]["signature"], 2, "{stats}");
    assert_eq!(stats["kicked_users"], 0);
}

#[tokio::test]
async fn too_many_users_are_refused_before_anything_is_sent() {
    let apps = Apps::random(1, 1);
    let sim = start_sim(&apps).await;
    let (zego, trtc) = clients(&apps.config(&sim.endpoint()));

    let e = zego.kick_once(&request(apps.zego[0].0, RoomId::Text("r".into()), 6)).await.unwrap_err();
    assert_eq!(e, RequestError::TooManyUsers { vendor: bouncer::verdict::Vendor::Zego, max: 5, got: 6 });
    let e = trtc.kick_once(&request(apps.trtc[0].0, RoomId::Numeric(1), 11)).await.unwrap_err();
    assert_eq!(e, RequestError::TooManyUsers { vendor: bouncer::verdict::Vendor::Trtc, max: 10, got: 11 });
    assert!(SimControl::new(&sim).requests().await.is_empty());
}

#[tokio::test]
async fn a_300_byte_chinese_reason_reaches_zego_cut_to_256_bytes_on_a_character() {
    let apps = Apps::random(1, 0);
    let sim = start_sim(&apps).await;
    let zego = Client::Zego(ZegoClient::new(&apps.config(&sim.endpoint()).zego[0]));
    let reason = "违规内容".repeat(25); // 100 characters, 300 bytes
    let req = KickRequest { reason: Some(reason.clone()), ..request(apps.zego[0].0, RoomId::Text("r".into()), 1) };
    let r = zego.kick_once(&req).await.unwrap();
    assert!(matches!(r.outcome, Outcome::Done { .. }), "{r:?}");
    let seen = SimControl::new(&sim).requests().await;
    let sent = seen[0].reason.clone().expect("CustomReason sent");
    assert_eq!(sent.len(), 255, "85 whole characters");
    assert!(reason.starts_with(&sent));
}

#[tokio::test]
async fn an_expired_signature_is_signed_afresh_and_then_succeeds() {
    let apps = Apps::random(1, 1);
    let sim = start_sim(&apps).await;
    let control = SimControl::new(&sim);
    control.set_faults(json!({"vendor": "zego", "expire_next": 1})).await;
    control.set_faults(json!({"vendor": "trtc", "expire_next": 1})).await;
    let (zego, trtc) = clients(&apps.config(&sim.endpoint()));

    for (client, req) in [
        (&zego, request(apps.zego[0].0, RoomId::Text("r".into()), 2)),
        (&trtc, request(apps.trtc[0].0, RoomId::Text("s".into()), 2)),
    ] {
        let first = client.kick_once(&req).await.unwrap();
        assert_eq!(first.outcome, Outcome::Resign, "{first:?}");
        let second = client.kick_once(&req).await.unwrap();
        assert!(matches!(second.outcome, Outcome::Done { .. }), "{second:?}");
    }
    let seen = control.requests().await;
    assert_eq!(seen.len(), 4);
    assert_ne!(seen[0].nonce, seen[1].nonce, "ZEGO re-sign uses a fresh nonce");
    // TC3 has no nonce: a re-sign within the same second is byte-identical. What matters is that
    // the timestamp is taken afresh at send time.
    assert!(seen[3].timestamp >= seen[2].timestamp);
    assert_eq!(seen[0].rejection.as_deref(), Some("expired"));
}

#[tokio::test]
async fn a_hanging_vendor_hits_the_timeout_and_is_classified_retry() {
    let apps = Apps::random(1, 1);
    let sim = start_sim(&apps).await;
    SimControl::new(&sim).set_faults(json!({"hang": true})).await;
    let mut file = apps.file_config(&sim.endpoint());
    set_vendor_timeouts(&mut file, 300);
    let config = Config::from_toml(&file.to_toml()).unwrap();
    let (zego, trtc) = clients(&config);

    for (client, req) in [
        (&zego, request(apps.zego[0].0, RoomId::Text("r".into()), 1)),
        (&trtc, request(apps.trtc[0].0, RoomId::Numeric(9), 1)),
    ] {
        let started = std::time::Instant::now();
        let r = client.kick_once(&req).await.unwrap();
        assert_eq!(r.outcome, Outcome::Retry { reason: "timeout".into(), slow_down: false }, "{r:?}");
        assert!(started.elapsed() < Duration::from_secs(5), "the timeout, not the hang, ended the call");
    }
}

#[tokio::test]
async fn the_sim_rate_limits_a_burst_of_60_zego_calls_to_exactly_50() {
    let apps = Apps::random(1, 0);
    let sim = start_sim(&apps).await;
    let zego = Client::Zego(ZegoClient::new(&apps.config(&sim.endpoint()).zego[0]));
    let req = request(apps.zego[0].0, RoomId::Text("r".into()), 1);
    let calls = (0..60).map(|_| zego.kick_once(&req));
    let results = futures_util::future::join_all(calls).await;
    let limited = results
        .iter()
        .filter(|r| matches!(r, Ok(c) if c.outcome == Outcome::Retry { reason: "vendor code 206: app QPS limit exceeded".into(), slow_down: true }))
        .count();
    let stats = SimControl::new(&sim).stats().await;
    let quota = &stats["quotas"][format!("zego:{}", apps.zego[0].0)];
    // Never more than 50 admitted in any second; every refusal is the rate-limit answer.
    assert_eq!(quota["max_admitted_in_1s"], 50, "{stats}");
    assert_eq!(quota["rate_limited"], limited as u64, "{stats}");
    // Exactly 10 refused when all 60 arrive within one second; a loaded machine can spread the
    // burst over more, and each call arriving a second after the first frees a slot.
    if quota["max_calls_in_1s"] == 60 {
        assert_eq!(limited, 10, "{results:?}");
    } else {
        assert!((1..10).contains(&limited), "{limited} refused of a burst spread over more than a second: {stats}");
    }
}

#[tokio::test]
async fn calls_naming_apps_or_secret_ids_the_sim_does_not_know_create_no_quota_and_no_metric_label() {
    let apps = Apps::random(1, 1);
    let sim = start_sim(&apps).await;
    let mut strangers = Vec::new();
    for _ in 0..20 {
        let other = Apps::random(1, 1);
        let (zego, trtc) = clients(&other.config(&sim.endpoint()));
        let _ = zego.kick_once(&request(other.zego[0].0, RoomId::Text("r".into()), 1)).await;
        let _ = trtc.kick_once(&request(other.trtc[0].0, RoomId::Numeric(7), 1)).await;
        strangers.push(other.zego[0].0.to_string());
        strangers.push(other.trtc[0].1.clone());
    }
    let control = SimControl::new(&sim);
    let stats = control.stats().await;
    assert_eq!(stats["quotas"].as_object().map(|q| q.len()), Some(0), "{stats}");
    let metrics = control.metrics().await;
    for s in &strangers {
        assert!(!metrics.contains(s.as_str()), "{s} became a label: {metrics}");
    }
    let records = control.requests().await;
    assert_eq!(records.len(), 40);
    assert!(records.iter().all(|r| r.quota.ends_with(":unknown")), "{records:?}");
}

#[tokio::test]
async fn injected_faults_map_to_the_documented_classes() {
    let apps = Apps::random(1, 1);
    let sim = start_sim(&apps).await;
    let control = SimControl::new(&sim);
    let (zego, trtc) = clients(&apps.config(&sim.endpoint()));
    let z = request(apps.zego[0].0, RoomId::Text("gone-room".into()), 2);
    let t = request(apps.trtc[0].0, RoomId::Text("gone-room".into()), 2);

    control.set_faults(json!({"gone_rooms": ["gone-room"]})).await;
    assert_eq!(zego.kick_once(&z).await.unwrap().outcome, Outcome::Gone { code: "104".into() });
    assert_eq!(
        trtc.kick_once(&t).await.unwrap().outcome,
        Outcome::Gone { code: "FailedOperation.RoomNotExist".into() }
    );

    control.set_faults(json!({"http_502_rate": 1.0})).await;
    for c in [zego.kick_once(&z).await.unwrap(), trtc.kick_once(&t).await.unwrap()] {
        assert_eq!(
            (c.http_status, c.outcome),
            (Some(502), Outcome::Retry { reason: "HTTP 502".into(), slow_down: false })
        );
    }

    control.set_faults(json!({"internal_error_rate": 1.0})).await;
    for c in [zego.kick_once(&z).await.unwrap(), trtc.kick_once(&t).await.unwrap()] {
        assert!(matches!(c.outcome, Outcome::Retry { slow_down: false, .. }), "{c:?}");
    }

    control.set_faults(json!({"throttle_rate": 1.0})).await;
    for c in [zego.kick_once(&z).await.unwrap(), trtc.kick_once(&t).await.unwrap()] {
        assert!(matches!(c.outcome, Outcome::Retry { slow_down: true, .. }), "{c:?}");
    }

    // A scoped rule: only the TRTC app refuses user-1; ZEGO is untouched.
    control.clear_faults().await;
    control.set_faults(json!({"vendor": "trtc", "app_id": apps.trtc[0].0, "bad_users": ["user-1"]})).await;
    assert!(matches!(zego.kick_once(&z).await.unwrap().outcome, Outcome::Done { .. }));
    let c = trtc.kick_once(&t).await.unwrap();
    assert!(
        matches!(&c.outcome, Outcome::Permanent { blame: Blame::Parameters, code, .. } if code == "InvalidParameter.UserIds"),
        "{c:?}"
    );

    let metrics = control.metrics().await;
    assert!(metrics.contains("bouncer_sim_rejections_total{reason=\"room_gone\"} 2"), "{metrics}");
    assert!(metrics.contains("# TYPE bouncer_sim_max_calls_in_1s gauge"), "{metrics}");
}

#[tokio::test]
async fn the_sim_binary_serves_a_config_file_and_stops_on_sigterm() {
    let apps = Apps::random(1, 1);
    // A full worker config: the sim reads only the vendor sections.
    let mut config = apps.file_config("https://example.invalid");
    config.amqp.queue = "ignored".into();
    config.batch.linger_ms = 5;
    let file = TempFile::with(&config.to_toml());
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_bouncer"))
        .args(["sim", "--listen", "127.0.0.1:0", "--config", file.0.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn bouncer sim");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let endpoint = line.trim().rsplit(' ').next().unwrap().to_owned();
    assert!(endpoint.starts_with("http://127.0.0.1:"), "{line}");

    let (zego, trtc) = clients(&apps.config(&endpoint));
    assert!(matches!(
        zego.kick_once(&request(apps.zego[0].0, RoomId::Text("r".into()), 1)).await.unwrap().outcome,
        Outcome::Done { .. }
    ));
    assert!(matches!(
        trtc.kick_once(&request(apps.trtc[0].0, RoomId::Numeric(5), 1)).await.unwrap().outcome,
        Outcome::Done { .. }
    ));

    let kill = std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(kill.success());
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

/// TC3-HMAC-SHA256 for a GET, written from Tencent's "签名方法 v3" the way the official SDKs sign
/// (tencentcloud-sdk-python `_get_tc3_signature`): the canonical query string is the query as sent,
/// the body is empty, the signed content type `application/x-www-form-urlencoded`. Independent of
/// both Bouncer's client and the simulator's verifier.
fn sdk_get_signature(secret_key: &str, host: &str, query: &str, timestamp: i64) -> String {
    use hmac::{Hmac, KeyInit, Mac};
    use sha2::{Digest, Sha256};
    let hmac = |key: &[u8], msg: &str| -> Vec<u8> {
        let mut m = Hmac::<Sha256>::new_from_slice(key).expect("any key length");
        m.update(msg.as_bytes());
        m.finalize().into_bytes().to_vec()
    };
    let date = chrono::DateTime::from_timestamp(timestamp, 0).expect("timestamp").format("%Y-%m-%d").to_string();
    let canonical = format!(
        "GET\n/\n{query}\ncontent-type:application/x-www-form-urlencoded\nhost:{host}\n\ncontent-type;host\n{}",
        hex::encode(Sha256::digest(b""))
    );
    let to_sign = format!(
        "TC3-HMAC-SHA256\n{timestamp}\n{date}/trtc/tc3_request\n{}",
        hex::encode(Sha256::digest(canonical.as_bytes()))
    );
    let k = hmac(format!("TC3{secret_key}").as_bytes(), &date);
    let k = hmac(&k, "trtc");
    let k = hmac(&k, "tc3_request");
    hex::encode(hmac(&k, &to_sign))
}

#[test]
fn the_tests_get_signer_reproduces_the_official_sdk_vector() {
    // ../shared/vendors/README.md, TRTC vector 2 (tencentcloud-sdk-python 3.1.x).
    let query = "SdkAppId=1400000001&RoomId=1234&UserIds.0=test1&UserIds.1=test2";
    assert_eq!(
        sdk_get_signature("Gu5t9xGARNpq86cd98joQYCN3*******", "trtc.tencentcloudapi.com", query, 1_551_113_065),
        "534222f502701ec1c81782bc51b12ca6064cfe7f178c65ee818a3e485d112ad9"
    );
}

#[tokio::test]
async fn the_sim_accepts_a_trtc_get_signed_as_the_official_sdks_sign_it_and_refuses_it_tampered() {
    let apps = Apps::random(0, 1);
    let sim = start_sim(&apps).await;
    let (app, secret_id, secret_key) = apps.trtc[0].clone();
    let host = sim.addr.to_string();
    let now = chrono::Utc::now().timestamp();
    let date = chrono::DateTime::from_timestamp(now, 0).unwrap().format("%Y-%m-%d").to_string();
    let get = |query: String, signed_query: &str| {
        let signature = sdk_get_signature(&secret_key, &host, signed_query, now);
        reqwest::Client::new()
            .get(format!("http://{host}/?{query}"))
            .header("Content-Type", "application/x-www-form-urlencoded")
            .header("X-TC-Action", "RemoveUser")
            .header("X-TC-Version", "2019-07-22")
            .header("X-TC-Region", "ap-guangzhou")
            .header("X-TC-Timestamp", now.to_string())
            .header(
                "Authorization",
                format!(
                    "TC3-HMAC-SHA256 Credential={secret_id}/{date}/trtc/tc3_request, SignedHeaders=content-type;host, Signature={signature}"
                ),
            )
            .send()
    };
    let query = format!("SdkAppId={app}&RoomId=1234&UserIds.0=test1&UserIds.1=test2");
    let ok: serde_json::Value = get(query.clone(), &query).await.unwrap().json().await.unwrap();
    assert!(ok["Response"]["Error"].is_null(), "{ok}");
    assert!(ok["Response"]["RequestId"].is_string(), "{ok}");

    // The same signature over other users is refused.
    let tampered = format!("SdkAppId={app}&RoomId=1234&UserIds.0=test1&UserIds.1=victim");
    let refused: serde_json::Value = get(tampered, &query).await.unwrap().json().await.unwrap();
    assert_eq!(refused["Response"]["Error"]["Code"], "AuthFailure.SignatureFailure", "{refused}");

    let records = SimControl::new(&sim).requests().await;
    assert_eq!(records[0].user_ids, ["test1", "test2"]);
    assert!(records[0].room_numeric && records[0].room_id == "1234", "{:?}", records[0]);
    assert!(records[0].rejection.is_none() && records[1].rejection.is_some(), "{records:?}");
}

/// A signed ZEGO ban-rule call with `params` after the common ones, as a client written from the
/// documentation would send it; the JSON answer. `paced`: first wait out the API's limit (10 calls
/// a second, Describe 1).
async fn rule_call(sim: &str, app: u32, secret: &str, action: &str, params: &str, paced: bool) -> serde_json::Value {
    use bouncer::vendor_api::zego::{nonce, signature};
    if paced {
        tokio::time::sleep(Duration::from_millis(if action.starts_with("Describe") { 1100 } else { 120 })).await;
    }
    let (nonce, ts) = (nonce(), chrono::Utc::now().timestamp());
    let sig = signature(app, &nonce, secret, ts);
    let url = format!(
        "{sim}/?Action={action}&AppId={app}&SignatureNonce={nonce}&Timestamp={ts}&SignatureVersion=2.0&Signature={sig}{params}"
    );
    reqwest::get(url).await.expect("sim answers").json().await.expect("json")
}

#[tokio::test]
async fn the_simulator_keeps_zego_ban_rules_as_documented() {
    let apps = Apps::random(1, 0).with_forbid_rules();
    let sim = start_sim(&apps).await;
    let (app, secret) = (apps.zego[0].0, apps.zego[0].1.clone());
    let call = async |action: &str, params: &str| rule_call(&sim.endpoint(), app, &secret, action, params, true).await;
    let set = "SetForbidUserRule";

    let before = chrono::Utc::now().timestamp();
    let a = call(set, "&RuleType=4&RoomId=r1&UserId=u1&DisabledPrivilege[]=1&EffectiveTime=1800").await;
    let after = chrono::Utc::now().timestamp();
    assert_eq!(a["Code"], 0, "{a}");
    let expires = a["Data"]["ExpireTime"].as_i64().expect("Data.ExpireTime");
    assert!((before + 1800..=after + 1800).contains(&expires), "counted from the call's receipt: {a}");
    // Parameters out of the documented ranges: code 2.
    for bad in [
        "&RuleType=4&RoomId=r1&UserId=u1&DisabledPrivilege[]=1&EffectiveTime=0",
        "&RuleType=4&RoomId=r1&UserId=u1&DisabledPrivilege[]=1&EffectiveTime=86401",
        "&RuleType=5&UserId=u1&DisabledPrivilege[]=1&EffectiveTime=60",
        "&RuleType=4&UserId=u1&DisabledPrivilege[]=1&EffectiveTime=60",
        "&RuleType=3&UserId=u1&EffectiveTime=60",
        "&RuleType=3&UserId=u1&DisabledPrivilege[]=3&EffectiveTime=60",
        "&RuleType=1&DisabledPrivilege[]=1&EffectiveTime=60",
    ] {
        assert_eq!(call(set, bad).await["Code"], 2, "{bad}");
    }
    // A second Set on the same key replaces the rule; another key is another rule.
    let both = "&RuleType=4&RoomId=r1&UserId=u1&DisabledPrivilege[]=1&DisabledPrivilege[]=2&EffectiveTime=60";
    assert_eq!(call(set, both).await["Code"], 0);
    assert_eq!(call(set, "&RuleType=3&UserId=u2&DisabledPrivilege[]=1&EffectiveTime=1").await["Code"], 0);
    let listed = call("DescribeForbidUserRules", "&RuleType=4").await;
    assert_eq!(listed["Data"]["RuleList"].as_array().map(Vec::len), Some(1), "{listed}");
    assert_eq!(listed["Data"]["RuleList"][0]["DisabledPrivilegeList"], json!([1, 2]));
    // An expired rule is still listed (ZEGO purges them late), with its past ExpireTime.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let type3 = call("DescribeForbidUserRules", "&RuleType=3").await;
    assert!(type3["Data"]["RuleList"][0]["ExpireTime"].as_i64() <= Some(chrono::Utc::now().timestamp()), "{type3}");
    // Deleted by type and key.
    assert_eq!(call("DelForbidUserRule", "&RuleType=4&RoomId=r1&UserId=u1").await["Code"], 0);
    assert_eq!(call("DescribeForbidUserRules", "&RuleType=4").await["Data"]["RuleList"], json!([]));
    // Describe twice in a second is over its 1/s.
    let describe =
        async || rule_call(&sim.endpoint(), app, &secret, "DescribeForbidUserRules", "&RuleType=1", false).await;
    let (first, second) = (call("DescribeForbidUserRules", "&RuleType=1").await, describe().await);
    assert_eq!((first["Code"].as_i64(), second["Code"].as_i64()), (Some(0), Some(206)));

    // An app without the feature: 9.
    let plain = Apps::random(1, 0);
    let off = start_sim(&plain).await;
    let params = "&RuleType=3&UserId=u&DisabledPrivilege[]=1&EffectiveTime=60";
    let a = rule_call(&off.endpoint(), plain.zego[0].0, &plain.zego[0].1, set, params, true).await;
    assert_eq!(a["Code"], 9, "{a}");
}
