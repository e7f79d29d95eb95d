//! `bouncer bench --preset console`: every page of `bouncer web` timed over a large audit trail.
//!
//! The trail is written straight into PostgreSQL (a million verdicts through the pipeline would
//! take the vendors' limits hours): by default 1,000,000 verdicts of 1–5 users from 300,000
//! repeat offenders, over 30 days, with a busy last day (10 %) and a busier last hour (1 %); one
//! vendor call per verdict, 2 % failed, pending work in the last hour, 10,000 rejected messages
//! and 5,000 replays. Then a real `bouncer web` (default configuration) serves it and each page
//! is fetched 30 times after 3 warm-ups, one request at a time: the figures are what one
//! operator waits.

use std::time::{Duration, Instant};

use bouncer::config::{Config, FileConfig, FileZego};
use serde::Serialize;
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection};

use super::BenchArgs;
use super::report::Machine;
use crate::testkit::{ConsoleProcess, Names, drop_database, stack_config};

const WARMUP: usize = 3;
const SAMPLES: usize = 30;
const DEFAULT_VERDICTS: usize = 1_000_000;

#[derive(Serialize)]
struct PageTiming {
    page: String,
    path: String,
    status: u16,
    bytes: usize,
    p50_ms: f64,
    p95_ms: f64,
    max_ms: f64,
}

#[derive(Serialize)]
struct ConsoleReport {
    preset: &'static str,
    machine: Machine,
    verdicts: i64,
    kicks: i64,
    kick_attempts: i64,
    load_seconds: Option<f64>,
    /// Rollup deltas the load's triggers left, folded before timing (as a running deployment's
    /// maintenance lease holder would have).
    deltas_folded: i64,
    pages: Vec<PageTiming>,
    overview: OverviewCheck,
}

/// The overview's 24 h cards (read from rollups) beside a direct count over the raw tables in the
/// same minute.
#[derive(Serialize)]
struct OverviewCheck {
    /// verdicts, done, failed, pending, rejected messages: by a count over `verdicts` and
    /// `rejected_messages`.
    raw: [i64; 5],
    /// The same cards as the page shows them.
    shown: [Option<i64>; 5],
    equal: bool,
}

const CARDS: [&str; 5] = ["verdicts in 24 h", "done", "failed", "pending", "rejected messages"];

/// The trail, generated in SQL. `$1` is the number of verdicts, `$2` the share of them older than
/// a day (0.9 by default; 0 with `--verdicts`: a day at that volume). Verdict `g` is received at a
/// time that grows with `g`; the newest 1 % fall in the last hour.
pub(super) const LOAD: &[&str] = &[
    "CREATE TEMP TABLE gen AS
     SELECT g,
            CASE WHEN g % 3 = 0 THEN 'trtc' ELSE 'zego' END AS vendor,
            1000 + (g * 7) % 20 AS app_id,
            'room-' || (g * 13) % 5000 AS room_id,
            ARRAY(SELECT 'user-' || ((g::bigint * 7919 + i * 104729) % 300000)
                  FROM generate_series(1, 1 + g % 5) i) AS user_ids,
            CASE WHEN g > $1 * 0.99 THEN now() - interval '1 hour' * (($1 - g)::float8 / ($1 * 0.01))
                 WHEN g > $1 * $2 THEN now() - interval '1 day' * (($1 - g)::float8 / ($1 * (1 - $2)))
                 ELSE now() - interval '30 days' + interval '29 days' * (g::float8 / ($1 * $2)) END AS at,
            CASE WHEN g % 50 = 7 THEN 'failed'
                 WHEN g > $1 * 0.999 AND g % 4 = 0 THEN 'pending'
                 ELSE 'done' END AS status
     FROM generate_series(1, $1::int) g",
    "INSERT INTO verdicts (verdict_id, vendor, app_id, room_id, room_id_numeric, user_ids, reason, source,
                           evidence, payload, received_at, last_delivery_at, status, finished_at)
     SELECT 'v-' || g, vendor, app_id, room_id, false, user_ids,
            (ARRAY['spam', 'harassment', 'nudity', 'hate speech'])[1 + g % 4], 'bench',
            jsonb_build_object('clip', 'https://evidence.example/' || g, 'score', 0.9),
            jsonb_build_object('verdict_id', 'v-' || g, 'vendor', vendor, 'app_id', app_id, 'room_id', room_id,
                               'user_ids', to_jsonb(user_ids), 'reason', 'spam'),
            at, at, status, CASE WHEN status <> 'pending' THEN at + interval '1 ms' * (150 + (g::bigint * 7919) % 2000) END
     FROM gen",
    "INSERT INTO kicks (verdict_id, user_id, status, attempts, last_error, vendor_request_id, updated_at,
                        vendor, app_id, next_attempt_at)
     SELECT 'v-' || g, u,
            CASE status WHEN 'done' THEN 'kicked' WHEN 'failed' THEN 'failed' ELSE 'pending' END,
            CASE WHEN status = 'pending' THEN 0 ELSE 1 END,
            CASE WHEN status = 'failed' THEN '2: invalid UserId' END,
            CASE WHEN status = 'done' THEN md5(g::text) END,
            at, vendor, app_id, CASE WHEN status = 'pending' THEN at END
     FROM gen, unnest(user_ids) u",
    "INSERT INTO kick_attempts (vendor, app_id, room_id, action, user_ids, verdict_ids, attempt, started_at,
                                latency_ms, http_status, vendor_code, vendor_message, vendor_request_id, outcome)
     SELECT vendor, app_id, room_id, CASE vendor WHEN 'zego' THEN 'KickoutUser' ELSE 'RemoveUserByStrRoomId' END,
            user_ids, ARRAY['v-' || g], 1, at + interval '200 ms', 40 + g % 60, 200,
            CASE WHEN status = 'failed' THEN '2' ELSE '0' END,
            CASE WHEN status = 'failed' THEN 'invalid UserId' ELSE 'success' END,
            md5(g::text), CASE WHEN status = 'failed' THEN 'permanent' ELSE 'ok' END
     FROM gen WHERE status <> 'pending'",
    "INSERT INTO rejected_messages (received_at, reason, field, rule, payload, payload_size)
     SELECT now() - interval '30 days' * random(), 'user_ids: must not be empty', 'user_ids', 'empty',
            convert_to('{\"verdict_id\": \"bad-' || r || '\", \"user_ids\": []}', 'UTF8'), 40
     FROM generate_series(1, 10000) r",
    "INSERT INTO replays (verdict_id, actor, requested_at, previous_status, published)
     SELECT 'v-' || g, 'ops', at + interval '1 hour', 'failed', true FROM gen WHERE g % 50 = 7 LIMIT 5000",
];

/// Whether the database already holds a trail (a kept `--console-database`).
async fn loaded(conn: &mut PgConnection) -> bool {
    sqlx::query_scalar::<_, i64>("SELECT count(*) FROM (SELECT 1 FROM verdicts LIMIT 1) t")
        .fetch_one(&mut *conn)
        .await
        .is_ok_and(|n| n > 0)
}

async fn load(conn: &mut PgConnection, verdicts: usize, history: f64) -> Result<f64, String> {
    let started = Instant::now();
    for step in LOAD {
        let q = sqlx::query(sqlx::AssertSqlSafe(*step));
        let q = if step.contains("$1") { q.bind(verdicts as i64).bind(history) } else { q };
        q.execute(&mut *conn).await.map_err(|e| format!("loading the trail: {e}\n{step}"))?;
    }
    for step in ["DROP TABLE gen", "VACUUM ANALYZE"] {
        sqlx::raw_sql(step).execute(&mut *conn).await.map_err(|e| format!("{step}: {e}"))?;
    }
    Ok(started.elapsed().as_secs_f64())
}

/// Folds every delta the load's triggers wrote into `rollups`, as the maintenance lease's holder
/// does a second at a time; returns how many.
async fn fold_all(config: &Config) -> Result<i64, String> {
    let db = bouncer::audit::connect(&config.postgres, Duration::from_secs(10)).await.map_err(|e| e.to_string())?;
    let mut folded = 0;
    loop {
        match bouncer::audit::rollups::fold(&db).await.map_err(|e| format!("folding rollups: {e}"))? {
            0 => return Ok(folded),
            n => folded += n,
        }
    }
}

/// The number a card of the overview shows: `<b>N</b> label`.
fn card(page: &str, label: &str) -> Option<i64> {
    let end = page.find(&format!("</b> {label}</div>"))?;
    let start = page[..end].rfind("<b>")? + 3;
    page[start..end].parse().ok()
}

/// Fetches the overview between two direct counts over the raw tables; a minute that turns over in
/// between (the 24 h window moves) is tried again.
async fn check_overview(conn: &mut PgConnection, http: &reqwest::Client, base: &str) -> Result<OverviewCheck, String> {
    const RAW: &str = "WITH since AS (SELECT date_trunc('minute', now()) - interval '1439 minutes' AS t)
        SELECT (SELECT t FROM since),
               count(*), count(*) FILTER (WHERE status = 'done'), count(*) FILTER (WHERE status = 'failed'),
               count(*) FILTER (WHERE status = 'pending'),
               (SELECT count(*) FROM rejected_messages, since WHERE received_at >= since.t)
        FROM verdicts, since WHERE received_at >= since.t";
    type Raw = (chrono::DateTime<chrono::Utc>, i64, i64, i64, i64, i64);
    let mut last = None;
    for _ in 0..5 {
        let before: Raw = sqlx::query_as(RAW).fetch_one(&mut *conn).await.map_err(|e| e.to_string())?;
        let page = http.get(format!("{base}/")).send().await.map_err(|e| e.to_string())?;
        let page = page.text().await.map_err(|e| e.to_string())?;
        let after: Raw = sqlx::query_as(RAW).fetch_one(&mut *conn).await.map_err(|e| e.to_string())?;
        let raw = [before.1, before.2, before.3, before.4, before.5];
        let shown = CARDS.map(|label| card(&page, label));
        let check = OverviewCheck { raw, shown, equal: shown.iter().zip(raw).all(|(s, r)| *s == Some(r)) };
        if before == after {
            return Ok(check);
        }
        last = Some(check);
    }
    last.ok_or_else(|| "the overview was never fetched".into())
}

/// Arguments that hit real rows: the middle verdict's user, room and time, and a failed
/// verdict next to it.
#[derive(sqlx::FromRow)]
struct Picks {
    user_id: String,
    vendor: String,
    app_id: i64,
    room_id: String,
    mid_id: String,
    mid_at: chrono::DateTime<chrono::Utc>,
    failed_id: String,
    failed_app: i64,
}

async fn picks(conn: &mut PgConnection, verdicts: usize) -> Result<Picks, String> {
    let mid = verdicts / 2;
    sqlx::query_as(
        "SELECT k.user_id, v.vendor, v.app_id, v.room_id, v.verdict_id AS mid_id, v.received_at AS mid_at,
                f.verdict_id AS failed_id, f.app_id AS failed_app
         FROM verdicts v JOIN kicks k USING (verdict_id),
              LATERAL (SELECT verdict_id, app_id FROM verdicts WHERE verdict_id = $2) f
         WHERE v.verdict_id = $1 LIMIT 1",
    )
    .bind(format!("v-{mid}"))
    .bind(format!("v-{}", mid - mid % 50 + 7))
    .fetch_one(conn)
    .await
    .map_err(|e| format!("choosing pages to open: {e}"))
}

/// The pages an operator opens.
fn pages(p: &Picks) -> Vec<(&'static str, String)> {
    let q = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let mid_at = q(&p.mid_at.to_rfc3339());
    vec![
        ("overview", "/".into()),
        ("verdicts, newest", "/verdicts".into()),
        ("verdicts, failed", "/verdicts?status=failed".into()),
        ("verdicts, pending", "/verdicts?status=pending".into()),
        ("search by user", format!("/verdicts?user={}", q(&p.user_id))),
        ("search by room", format!("/verdicts?vendor={}&app={}&room={}", p.vendor, p.app_id, q(&p.room_id))),
        ("search by app", format!("/verdicts?app={}", p.app_id)),
        ("search by vendor, failed", "/verdicts?vendor=trtc&status=failed".into()),
        ("search by time window", "/verdicts?since=20d&until=19d".into()),
        ("a page deep in the list", format!("/verdicts?after_at={mid_at}&after_id={}", q(&p.mid_id))),
        ("user page", format!("/users/{}", q(&p.user_id))),
        ("verdict story", format!("/verdicts/{}", q(&p.failed_id))),
        ("rejected messages", "/rejected".into()),
        ("bulk replay confirmation, one app", format!("/replay?status=failed&app={}", p.failed_app)),
    ]
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

async fn time_page(http: &reqwest::Client, base: &str, name: &str, path: &str) -> Result<PageTiming, String> {
    let url = format!("{base}{path}");
    let (mut status, mut bytes) = (0, 0);
    let mut ms = Vec::new();
    for i in 0..WARMUP + SAMPLES {
        let started = Instant::now();
        let r = http.get(&url).send().await.map_err(|e| format!("{path}: {e}"))?;
        status = r.status().as_u16();
        bytes = r.bytes().await.map_err(|e| e.to_string())?.len();
        if i >= WARMUP {
            ms.push(started.elapsed().as_secs_f64() * 1000.0);
        }
    }
    ms.sort_by(f64::total_cmp);
    Ok(PageTiming {
        page: name.into(),
        path: path.into(),
        status,
        bytes,
        p50_ms: percentile(&ms, 0.5),
        p95_ms: percentile(&ms, 0.95),
        max_ms: ms[ms.len() - 1],
    })
}

/// A run that writes its trail straight into PostgreSQL: its id, its database (`--console-database`
/// or one of its own) and a configuration pointing there with one ZEGO app (the console and
/// `bouncer prune` need one configured).
pub(super) fn trail_database(args: &BenchArgs, preset: &str) -> (String, String, FileConfig) {
    let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
    let names = Names::of(&["bench", preset, &id]);
    let database = args.console_database.clone().unwrap_or(names.database.clone());
    let server = args.postgres.trim_end_matches('/');
    let mut file = stack_config(&names, &args.amqp, server);
    file.postgres.url = format!("{server}/{database}").into();
    file.zego.push(FileZego::new(2_000_000, &format!("bench-{id}"), "http://127.0.0.1:1"));
    (id, database, file)
}

pub(super) async fn run(args: &BenchArgs) -> Result<(), String> {
    let verdicts = args.verdicts.unwrap_or(DEFAULT_VERDICTS);
    // The default trail is a month with a busy last day; `--verdicts N` is one day of N verdicts.
    let history = if args.verdicts.is_some() { 0.0 } else { 0.9 };
    let (id, database, file) = trail_database(args, "console");
    let server = args.postgres.trim_end_matches('/');
    let text = file.to_toml();
    let config = Config::from_toml(&text).map_err(|e| e.to_string())?;
    bouncer::audit::migrate(&config.postgres, Duration::from_secs(10)).await.map_err(|e| e.to_string())?;
    // Loading statements take seconds by design: not worth a slow-statement warning each.
    let options: PgConnectOptions = format!("{server}/{database}").parse().map_err(|e: sqlx::Error| e.to_string())?;
    let mut conn = PgConnection::connect_with(&options.disable_statement_logging()).await.map_err(|e| e.to_string())?;
    let load_seconds = if loaded(&mut conn).await {
        eprintln!("bench: reusing the trail in {database}");
        None
    } else {
        eprintln!("bench: writing {verdicts} verdicts into {database} (a minute or a few)");
        Some(load(&mut conn, verdicts, history).await?)
    };
    let counts: (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM verdicts), (SELECT count(*) FROM kicks), (SELECT count(*) FROM kick_attempts)",
    )
    .fetch_one(&mut conn)
    .await
    .map_err(|e| e.to_string())?;
    let picks = picks(&mut conn, verdicts).await?;
    let deltas_folded = fold_all(&config).await?;
    sqlx::raw_sql("VACUUM ANALYZE rollups, rollup_deltas").execute(&mut conn).await.map_err(|e| e.to_string())?;

    let config_path = std::env::temp_dir().join(format!("bouncer-bench-console-{id}.toml"));
    std::fs::write(&config_path, &text).map_err(|e| e.to_string())?;
    let console = ConsoleProcess::try_start(&config_path).await?;
    let http = reqwest::Client::new();
    let mut timings = Vec::new();
    for (name, path) in pages(&picks) {
        timings.push(time_page(&http, &console.base, name, &path).await?);
    }
    let overview = check_overview(&mut conn, &http, &console.base).await?;
    conn.close().await.map_err(|e| e.to_string())?;
    drop(console);
    let _ = std::fs::remove_file(&config_path);
    if args.console_database.is_none() {
        drop_database(&format!("{server}/postgres"), &database).await;
    }

    let report = ConsoleReport {
        preset: "console",
        machine: Machine::this(),
        verdicts: counts.0,
        kicks: counts.1,
        kick_attempts: counts.2,
        load_seconds,
        deltas_folded,
        pages: timings,
        overview,
    };
    if args.json {
        println!("{}", serde_json::to_string(&report).map_err(|e| e.to_string())?);
        return Ok(());
    }
    println!(
        "bouncer web over {} verdicts, {} kicks, {} vendor calls ({} CPUs, {}){}",
        report.verdicts,
        report.kicks,
        report.kick_attempts,
        report.machine.cpus,
        report.machine.os,
        report.load_seconds.map(|s| format!("; written in {s:.0} s")).unwrap_or_default()
    );
    println!("{} rollup deltas from the load folded before timing", report.deltas_folded);
    println!("{:<36} {:>6} {:>9} {:>9} {:>9} {:>9}", "page", "status", "bytes", "p50 ms", "p95 ms", "max ms");
    for t in &report.pages {
        println!("{:<36} {:>6} {:>9} {:>9.1} {:>9.1} {:>9.1}", t.page, t.status, t.bytes, t.p50_ms, t.p95_ms, t.max_ms);
    }
    let slow: Vec<&str> = report.pages.iter().filter(|t| t.p95_ms >= 200.0).map(|t| t.page.as_str()).collect();
    if slow.is_empty() {
        println!("every page under 200 ms at p95");
    } else {
        println!("over 200 ms at p95: {}", slow.join(", "));
    }
    let o = &report.overview;
    let shown = |n: Option<i64>| n.map_or("missing".to_owned(), |n| n.to_string());
    for (i, label) in CARDS.iter().enumerate() {
        println!("overview {label:<20} {:>10}   raw count {:>10}", shown(o.shown[i]), o.raw[i]);
    }
    println!(
        "{}",
        if o.equal {
            "the overview equals a direct count over the raw tables"
        } else {
            "THE OVERVIEW DIFFERS FROM THE RAW COUNT"
        }
    );
    if !o.equal {
        return Err("the overview's cards differ from a direct count over the raw tables".into());
    }
    Ok(())
}
