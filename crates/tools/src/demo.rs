//! `bouncer demo`: the whole system in under a minute on this machine. It reuses (or brings up,
//! through `deploy/services.sh`) RabbitMQ and PostgreSQL, runs a simulator for three apps (one of
//! them flaky) and a worker in this process, publishes a realistic stream of verdicts (duplicates
//! and malformed messages included), then shows what happened from the audit trail.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use secrecy::ExposeSecret;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use bouncer::audit::query::{self, Filter};
use bouncer::cli::output;
use bouncer::config::Config;
use bouncer::config::{FileConfig, FileTrtc, FileZego};
use bouncer::publisher::Publisher;
use bouncer::vendor_api::{trtc, zego};
use bouncer_sim::faults::Faults;

use crate::testkit::{Names, delete_queues, drop_database, point_vendors_at, stack_config, start_sim_for};

const ZEGO_OK: u32 = 1_000_001;
const ZEGO_FLAKY: u32 = 1_000_002;
const TRTC: u32 = 1_400_000_001;
const VERDICTS: usize = 400;

#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// PostgreSQL server for the demo database `bouncer_demo` (recreated each run).
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432")]
    postgres: String,
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    amqp: String,
    /// Names the demo's database (`bouncer_<name>`) and queue (`bouncer.<name>`).
    #[arg(long, default_value = "demo")]
    name: String,
}

/// The demo's configuration: the defaults, its own names, quicker retries and three apps.
fn demo_config(args: &DemoArgs) -> FileConfig {
    let secret = |n: u32| format!("demo-secret-{n}-{}", uuid::Uuid::new_v4().simple());
    let mut file = stack_config(&Names::of(&[&args.name]), &args.amqp, &args.postgres);
    file.batch.linger_ms = 25;
    file.retry.initial_ms = 100;
    file.retry.max_interval_ms = 1000;
    file.retry.deadline_secs = 20;
    file.shutdown.grace_secs = 3;
    // The simulator's address is filled in once it listens.
    let endpoint = "http://127.0.0.1:1";
    // The healthy app receives room callbacks (the re-entry scene), verified by the public API.
    let zego_ok = FileZego { callback_secret: Some(secret(4).into()), ..FileZego::new(ZEGO_OK, &secret(1), endpoint) };
    file.zego = vec![zego_ok, FileZego::new(ZEGO_FLAKY, &secret(2), endpoint)];
    file.api.listen = Some("127.0.0.1:0".into());
    // Outcome events land in a queue of the demo's own (deleted with its other queues).
    file.outcomes.queue = Some(format!("{}.outcomes", file.amqp.queue));
    file.api.tokens = vec![bouncer::config::FileApiToken {
        name: "demo".into(),
        token: Some(secret(5).into()),
        token_env: None,
        token_file: None,
    }];
    file.trtc = vec![FileTrtc::new(TRTC, "AKIDdemo", &secret(3), "ap-singapore", endpoint)];
    file
}

/// A realistic stream: busy rooms, users in several verdicts, republished duplicates, malformed
/// messages, a room that no longer exists and a user id TRTC refuses.
fn stream() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let now = chrono::Utc::now();
    for i in 0..VERDICTS {
        let (vendor, app, room) = match i % 5 {
            0 | 1 => ("zego", ZEGO_OK, json!(format!("live-{}", i % 7))),
            2 | 3 => ("zego", ZEGO_FLAKY, json!(format!("party-{}", i % 4))),
            _ => ("trtc", TRTC, if i % 2 == 0 { json!(8800 + (i % 3) as u64) } else { json!("karaoke") }),
        };
        let mut users: Vec<String> = (0..(1 + i % 4)).map(|k| format!("user-{}", (i * 31 + k * 7) % 250)).collect();
        let room = if i == 42 { json!("closed-room") } else { room };
        if i == 44 {
            users.push("bad id!".into());
        }
        let reason = ["spam", "harassment", "违规内容", "nudity"][i % 4];
        let source = ["asr-v3", "vision-v7", "text-filter"][i % 3];
        let v = json!({
            "verdict_id": format!("demo-{i:04}"), "vendor": vendor, "app_id": app, "room_id": room,
            "user_ids": users, "reason": reason, "source": source,
            "detected_at": (now - chrono::Duration::milliseconds(300)).to_rfc3339(),
            "evidence": {"score": 0.9 + (i % 10) as f64 / 100.0},
        });
        out.push(v.to_string().into_bytes());
        if i % 20 == 7 {
            out.push(v.to_string().into_bytes()); // a pipeline retried its publish
        }
        if i % 50 == 13 {
            out.push(match i % 3 {
                0 => b"{not json".to_vec(),
                1 => json!({"verdict_id": "x", "vendor": "agora", "app_id": 1, "room_id": "r", "user_ids": ["u"]})
                    .to_string()
                    .into_bytes(),
                _ => json!({"verdict_id": "y", "vendor": "zego", "app_id": ZEGO_OK, "room_id": "r", "user_ids": []})
                    .to_string()
                    .into_bytes(),
            });
        }
    }
    out
}

pub(crate) async fn run(args: &DemoArgs) -> bouncer::cli::CliResult {
    demo(args).await.map_err(|e| bouncer::cli::CliError::failed(format!("demo failed: {e}")))
}

async fn demo(args: &DemoArgs) -> Result<(), String> {
    let started = Instant::now();
    if args.name.is_empty() || !args.name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_') {
        return Err(format!("--name must be lowercase letters, digits and _, got {:?}", args.name));
    }
    crate::testkit::ensure_services(&args.amqp, &args.postgres, None).await?;
    // The simulator first: the worker's config points at its port.
    let mut file = demo_config(args);
    let running = start_sim_for(
        &file,
        zego::MAX_CALLS_PER_SECOND,
        trtc::MAX_CALLS_PER_SECOND,
        &tokio::runtime::Handle::current(),
    )?;
    point_vendors_at(&mut file, &running.endpoint());
    let config = Config::from_toml(&file.to_toml()).map_err(|e| e.to_string())?;
    demo_faults(&running);

    // A clean demo database every run.
    let admin = format!("{}/postgres", args.postgres.trim_end_matches('/'));
    drop_database(&admin, &Names::of(&[&args.name]).database).await;
    println!(
        "▶ simulator for ZEGO apps {ZEGO_OK} (healthy) and {ZEGO_FLAKY} (20% HTTP 502, 5% throttled), TRTC {TRTC}"
    );
    println!(
        "▶ worker consuming queue {:?}, auditing to {}",
        config.amqp.queue,
        bouncer::config::redact_url(config.postgres.url.expose_secret())
    );

    let shutdown = CancellationToken::new();
    let api = bouncer::api::serve(&config).await?.ok_or("the demo's API did not start")?;
    running.sim.set_callback_url(Some(format!("http://{}", api.addr)));
    let worker = tokio::spawn(bouncer::worker::run(config.clone(), Some(api.known_bans()), shutdown.clone(), |_| {}));
    let pool = publish_and_wait(&config).await?;
    let reentry = reentry_scene(&config, &running, &pool).await;
    shutdown.cancel();
    if let Ok(Err(why)) = worker.await {
        return Err(format!("the worker refused to start: {why}"));
    }
    api.stop().await;
    let reentry_verdict = reentry?;

    print_summary(&pool).await?;
    print_vendor_side(&running)?;

    print_stories(&pool).await?;
    print_events(&config, &pool).await?;
    println!("\n■ the banned user who came back (bouncer audit --verdict {reentry_verdict})");
    if let Ok(Some(s)) = query::story(&pool, &reentry_verdict).await {
        bouncer::cli::print_story(&s).map_err(|e| e.to_string())?;
    }
    pool.close().await;
    drop(running);
    delete_queues(config.amqp.url.expose_secret(), &config.amqp.queue).await;
    println!(
        "\n✔ demo finished in {:.1} s. The audit trail stays in database bouncer_{name}; explore it with\n  \
         BOUNCER_POSTGRES__URL={}/bouncer_{name} bouncer audit --summary",
        started.elapsed().as_secs_f64(),
        args.postgres.trim_end_matches('/'),
        name = args.name
    );
    Ok(())
}

/// A user in a room is kicked and banned for ten minutes, rejoins at once (their ticket is still
/// good), and is kicked again: ZEGO's `room_login` callback reaches the API, the owner re-kicks.
/// Prints how long the user was back in the room. Returns the banning verdict's id.
async fn reentry_scene(
    config: &Config,
    running: &bouncer_sim::RunningSim,
    pool: &bouncer::audit::Db,
) -> Result<String, String> {
    let (user, room, id) = ("troll-1", "live-ban", "demo-ban-1");
    let join = bouncer_sim::JoinRequest {
        vendor: "zego".into(),
        app_id: ZEGO_OK,
        room_id: room.into(),
        user_id: user.into(),
        callback_url: None,
        deliveries: None,
    };
    let in_room = || running.sim.rooms().iter().any(|(k, m)| k.room_id == room && m.iter().any(|m| m.user_id == user));
    println!("\n■ re-entry: {user} is in room {room} of app {ZEGO_OK}; a verdict bans them for 10 minutes");
    running.sim.join(&join).map_err(|e| format!("join: {e:?}"))?;
    let verdict = json!({"verdict_id": id, "vendor": "zego", "app_id": ZEGO_OK, "room_id": room, "user_ids": [user],
                         "reason": "harassment", "source": "demo", "ban": {"seconds": 600, "scope": "room"}});
    let publisher = Publisher::connect(&config.amqp, "demo-publisher").await.map_err(|e| format!("RabbitMQ: {e}"))?;
    let confirmed = publisher.publish_all(&[verdict.to_string().into_bytes()], &[]).await;
    publisher.close().await;
    if confirmed != [true] {
        return Err("the broker did not confirm the ban".into());
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while in_room() {
        if Instant::now() > deadline {
            return Err(format!("{user} was never kicked"));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    println!("  {user} kicked (and banned: a token server asking GET /v1/bans/check hears banned: true)");
    tokio::time::sleep(Duration::from_millis(300)).await;
    println!("  {user} rejoins with the ticket they still hold…");
    let back = Instant::now();
    running.sim.join(&join).map_err(|e| format!("join: {e:?}"))?;
    while in_room() {
        if back.elapsed() > Duration::from_secs(10) {
            return Err(format!("{user} was never kicked again"));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let took = back.elapsed();
    println!(
        "  …and is kicked again {} ms later: ZEGO's signed room_login callback → re-entry recorded → the quota owner's re-kick",
        took.as_millis()
    );
    // The re-kick's result and the vendor's removal callbacks land in the trail a moment later.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let confirmed: i64 = pool
            .run(async |c| {
                pool.query_scalar("SELECT count(*) FROM kick_confirmations WHERE reentry_id IS NOT NULL")
                    .fetch_one(c)
                    .await
            })
            .await
            .map_err(|e| e.to_string())?;
        if confirmed > 0 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(id.into())
}

/// The outcome events the demo's verdicts produced, as a pipeline bound to the outcomes exchange
/// receives them: counts by routing key, and two of them in full.
async fn print_events(config: &Config, pool: &bouncer::audit::Db) -> Result<(), String> {
    use lapin::options::{BasicAckOptions, BasicGetOptions};
    // Every event is out of the outbox before they are read.
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let waiting: i64 = pool
            .run(async |c| pool.query_scalar("SELECT count(*) FROM outbox").fetch_one(c).await)
            .await
            .map_err(|e| e.to_string())?;
        if waiting == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let queue = config.outcomes.queue.clone().unwrap_or_default();
    let conn = lapin::Connection::connect(config.amqp.url.expose_secret(), lapin::ConnectionProperties::default())
        .await
        .map_err(|e| format!("RabbitMQ: {e}"))?;
    let ch = conn.create_channel().await.map_err(|e| e.to_string())?;
    let mut by_key: std::collections::BTreeMap<String, usize> = std::collections::BTreeMap::new();
    let mut shown: Vec<serde_json::Value> = Vec::new();
    while let Ok(Some(m)) = ch.basic_get(queue.as_str().into(), BasicGetOptions::default()).await {
        let key = m.delivery.routing_key.to_string();
        let event: serde_json::Value = serde_json::from_slice(&m.delivery.data).unwrap_or_default();
        // Two in full: the re-kick, and a verdict that failed.
        let kind = event["type"].as_str().unwrap_or_default().to_owned();
        let interesting = kind == "bouncer.reentry.kicked" || (key.starts_with("verdict.failed") && shown.is_empty());
        if interesting && shown.iter().all(|e| e["type"] != event["type"]) {
            shown.push(event);
        }
        *by_key.entry(key.split('.').take(3).collect::<Vec<_>>().join(".")).or_default() += 1;
        let _ = m.delivery.acker.ack(BasicAckOptions::default()).await;
    }
    let _ = conn.close(200, "demo read its events".into()).await;
    let exchange = format!("{}.outcomes", config.amqp.queue);
    println!("\n■ outcome events (exchange {exchange:?}, read from queue {queue:?}: what the pipelines receive)");
    for (key, n) in &by_key {
        println!("  {key}.*: {n}");
    }
    for e in shown {
        println!("{}", serde_json::to_string_pretty(&e).unwrap_or_default());
    }
    Ok(())
}

/// The simulator's faults for the demo's apps: a flaky ZEGO app, a TRTC user id the vendor
/// refuses, a room that no longer exists.
fn demo_faults(running: &bouncer_sim::RunningSim) {
    running.sim.set_faults(Faults {
        vendor: Some("zego".into()),
        app_id: Some(ZEGO_FLAKY),
        http_502_rate: 0.2,
        throttle_rate: 0.05,
        latency_ms: 20,
        gone_rooms: vec!["closed-room".into()],
        ..Faults::default()
    });
    running.sim.set_faults(Faults {
        vendor: Some("trtc".into()),
        bad_users: vec!["bad id!".into()],
        ..Faults::default()
    });
    running.sim.set_faults(Faults {
        vendor: Some("zego".into()),
        app_id: Some(ZEGO_OK),
        gone_rooms: vec!["closed-room".into()],
        ..Faults::default()
    });
}

/// Publishes the demo's stream in a dozen bursts over ~6 s, then waits (40 s at most) until every
/// verdict is finished. Returns a pool on the demo's database.
async fn publish_and_wait(config: &Config) -> Result<bouncer::audit::Db, String> {
    let publisher = Publisher::connect(&config.amqp, "demo-publisher").await.map_err(|e| format!("RabbitMQ: {e}"))?;
    let bodies = stream();
    let valid = VERDICTS;
    println!(
        "▶ publishing {} messages ({valid} verdicts, republished duplicates, malformed ones) over ~6 s",
        bodies.len()
    );
    for chunk in bodies.chunks(bodies.len() / 12 + 1) {
        let confirmed = publisher.publish_all(chunk, &[]).await;
        if confirmed.iter().any(|c| !c) {
            return Err("the broker did not confirm a message".into());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    publisher.close().await;

    let pool = bouncer::audit::connect_within(&config.postgres, Duration::from_secs(20))
        .await
        .map_err(|e| format!("audit database: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let (finished, total): (i64, i64) = pool
            .run(async |c| {
                pool.query_as("SELECT count(*) FILTER (WHERE status <> 'pending'), count(*) FROM verdicts")
                    .fetch_one(c)
                    .await
            })
            .await
            .map_err(|e| e.to_string())?;
        println!("  {finished}/{valid} verdicts finished");
        if finished as usize >= valid && total as usize >= valid {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!("only {finished} of {valid} verdicts finished in time"));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Ok(pool)
}

/// `bouncer audit --summary`, as the demo prints it, with the rejected and duplicate counts.
async fn print_summary(pool: &bouncer::audit::Db) -> Result<(), String> {
    println!("\n■ audit summary (bouncer audit --summary)");
    let summary = query::summary(pool, &Filter::default()).await.map_err(|e| e.to_string())?;
    let mut out = std::io::stdout();
    let rows = summary
        .iter()
        .map(|r| {
            vec![
                r.vendor.clone(),
                r.app_id.to_string(),
                r.verdicts.to_string(),
                r.verdicts_done.to_string(),
                r.verdicts_failed.to_string(),
                r.kicked.to_string(),
                r.gone.to_string(),
                r.kicks_failed.to_string(),
            ]
        })
        .collect();
    output::table(&mut out, &["vendor", "app_id", "verdicts", "done", "failed", "kicked", "gone", "kick_failed"], rows)
        .map_err(|e| e.to_string())?;
    let rejected = query::rejected_count(pool, &Filter::default()).await.map_err(|e| e.to_string())?;
    let dup: i64 = pool
        .run(async |c| pool.query_scalar("SELECT count(*) FROM verdicts WHERE deliveries > 1").fetch_one(c).await)
        .await
        .map_err(|e| e.to_string())?;
    println!(
        "malformed messages recorded and dead-lettered: {rejected}; verdicts delivered more than once (enforced once): {dup}"
    );
    Ok(())
}

/// Calls per quota at the simulator against the documented limit, and how full the calls were.
fn print_vendor_side(running: &bouncer_sim::RunningSim) -> Result<(), String> {
    let mut out = std::io::stdout();
    println!("\n■ vendor side (simulator): calls per quota vs the documented limit");
    let stats = running.sim.stats();
    let mut rows = Vec::new();
    if let Some(quotas) = stats["quotas"].as_object() {
        for (k, q) in quotas {
            rows.push(vec![
                k.clone(),
                q["calls"].to_string(),
                q["max_calls_in_1s"].to_string(),
                q["limit"].to_string(),
                q["rate_limited"].to_string(),
            ]);
        }
    }
    output::table(&mut out, &["quota", "calls", "max calls in any 1 s", "limit", "rate-limited"], rows)
        .map_err(|e| e.to_string())?;
    let per_call: HashMap<String, u64> = stats["users_per_call"]
        .as_object()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0))).collect())
        .unwrap_or_default();
    let mut sizes: Vec<_> = per_call.into_iter().collect();
    sizes.sort_by_key(|(k, _)| k.parse::<u32>().unwrap_or(0));
    println!(
        "successful calls by users per call: {}",
        sizes.iter().map(|(k, v)| format!("{k}×{v}")).collect::<Vec<_>>().join("  ")
    );
    Ok(())
}

/// Four verdicts' stories, as `bouncer audit --verdict` prints them.
async fn print_stories(pool: &bouncer::audit::Db) -> Result<(), String> {
    let pick = |sql: &'static str| {
        let pool = pool.clone();
        async move { pool.run(async |c| pool.query_scalar::<String>(sql).fetch_optional(c).await).await.ok().flatten() }
    };
    let stories = [
        ("a verdict enforced at once", pick("SELECT verdict_id FROM verdicts WHERE app_id = 1000001 AND status = 'done' ORDER BY verdict_id LIMIT 1").await),
        ("a verdict the flaky app needed retries for", pick(
            "SELECT v.verdict_id FROM verdicts v WHERE v.status = 'done' AND EXISTS (SELECT 1 FROM kick_attempts a
               WHERE a.outcome = 'retry' AND v.verdict_id = ANY(a.verdict_ids)) ORDER BY 1 LIMIT 1").await),
        ("a room that no longer exists", pick("SELECT verdict_id FROM kicks WHERE status = 'gone' LIMIT 1").await),
        ("a user id the vendor refused (only that user failed)", pick("SELECT verdict_id FROM verdicts WHERE status = 'failed' LIMIT 1").await),
    ];
    for (title, id) in stories {
        let Some(id) = id else { continue };
        println!("\n■ {title} (bouncer audit --verdict {id})");
        if let Ok(Some(s)) = query::story(pool, &id).await {
            bouncer::cli::print_story(&s).map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}
