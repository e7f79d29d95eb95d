//! One run, in its phases: publish the workload (a backlog before the workers start, or a stream
//! once every quota is owned), wait until every verdict is terminal (disrupting replicas on the
//! way when the preset says so), then measure.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use lapin::types::FieldTable;
use secrecy::ExposeSecret;
use sqlx::postgres::PgPoolOptions;

use bouncer::config::Config;
use bouncer::publisher::Publisher;
use bouncer::vendor_api::QuotaKey;

use crate::testkit::wait_ready;

use super::report::{self, Latency, Machine, Report};
use super::stack::BenchStack;
use super::workers::Workers;
use super::workload::{Workload, bodies};
use super::{BenchArgs, preset_name};

pub(super) async fn run_workload(args: &BenchArgs, w: &Workload) -> Result<Report, String> {
    let stack = BenchStack::start(args, w)?;
    let result = Run::new(args, w, &stack).execute().await;
    stack.teardown().await;
    result
}

/// A run's state between its phases.
struct Run<'a> {
    args: &'a BenchArgs,
    w: &'a Workload,
    stack: &'a BenchStack,
    /// (segment index, body) in publishing order; verdict `<prefix><i>` is `bodies[i]`.
    bodies: Vec<(usize, Vec<u8>)>,
    prefix: String,
    /// When the run started (RFC 3339): its own rows are those received since, in a database that
    /// may hold others (the retention preset's trail and earlier rounds).
    since: String,
    /// When each verdict was published (ms since the UNIX epoch); for a backlog, the workers' start.
    published_at: Vec<u64>,
    extra: Extra,
}

/// What some presets measure besides the common figures.
#[derive(Default)]
struct Extra {
    events: Vec<Disruption>,
    queue_depth_5s_after_backlog: Option<u32>,
    released_at_ms: Option<u64>,
    recorded_at: Option<Instant>,
    pending_kicks: Option<i64>,
    /// Bans preset: the checks, running beside the backlog.
    checks: Option<tokio::task::JoinHandle<super::checks::CheckReport>>,
    /// The outcome events consumer (every preset: events are on by default).
    outcome_events: Option<super::events::Consumer>,
    /// Reentry preset: the joins, running beside the backlog.
    joins: Option<tokio::task::JoinHandle<usize>>,
    /// Bans preset: the bans written before the run, and how long that took.
    bans_loaded: Option<(i64, f64)>,
}

/// A replica killed or stopped, and the quota groups it owned then.
struct Disruption {
    what: &'static str,
    at_ms: u64,
    groups: Vec<String>,
}

fn now_ms() -> u64 {
    chrono::Utc::now().timestamp_millis().max(0) as u64
}

async fn count(pool: &sqlx::PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned())).fetch_one(pool).await.unwrap_or(0)
}

impl<'a> Run<'a> {
    fn new(args: &'a BenchArgs, w: &'a Workload, stack: &'a BenchStack) -> Run<'a> {
        // In a shared database each round's verdict ids are its own.
        let prefix = if w.database.is_some() { format!("bench-{}-", stack.id) } else { "bench-".to_owned() };
        let bodies = bodies(w, &stack.app_ids, &prefix);
        let published_at = vec![0; bodies.len()];
        let since = chrono::Utc::now().to_rfc3339();
        Run { args, w, stack, bodies, prefix, since, published_at, extra: Extra::default() }
    }

    async fn execute(mut self) -> Result<Report, String> {
        self.stack.prepare_database().await?;
        if let Some(load) = &self.w.checks {
            self.load_bans(load).await?;
        }
        if self.args.outbox_backlog > 0 {
            bouncer::audit::migrate(&self.stack.config.postgres, Duration::from_secs(10))
                .await
                .map_err(|e| format!("migrate: {e}"))?;
            let pool = self.pool().await?;
            super::events::fill_outbox(&pool, self.args.outbox_backlog).await?;
            pool.close().await;
        }
        if let Some(load) = &self.w.reentries {
            bouncer::audit::migrate(&self.stack.config.postgres, Duration::from_secs(10))
                .await
                .map_err(|e| format!("migrate: {e}"))?;
            let pool = self.pool().await?;
            super::reentry::load_bans(&pool, self.stack.app_ids[0], load.users).await?;
            pool.close().await;
        }
        let stop = tokio_util::sync::CancellationToken::new();
        let amqp = self.stack.config.amqp.url.expose_secret().to_owned();
        let consumer = super::events::start(&amqp, &self.stack.config.amqp.queue, stop.clone()).await?;
        self.extra.outcome_events = Some((consumer, stop));
        let publisher = Publisher::connect(&self.stack.config.amqp, "bench-publisher")
            .await
            .map_err(|e| format!("RabbitMQ: {e}"))?;
        let started = match (self.w.stream_rate, self.w.checks.clone()) {
            (Some(rate), _) => self.stream(&publisher, rate).await,
            (None, Some(load)) => self.backlog_in_service(&publisher, load).await,
            (None, None) => self.backlog(&publisher).await,
        };
        publisher.close().await;
        let (mut workers, started) = started?;
        if let Some(load) = self.w.reentries.clone() {
            for port in &workers.ports {
                wait_ready(*port).await?;
            }
            eprintln!("  {} banned users rejoin over {} s", load.users, load.seconds);
            let (sim, app, addrs) = (self.stack.running.sim.clone(), self.stack.app_ids[0], workers.api_addrs.clone());
            self.extra.joins = Some(tokio::spawn(super::reentry::join(sim, app, addrs, load)));
        }
        let pool = self.pool().await?;
        let waited = self.await_finished(&pool, &mut workers, started).await;
        if let Err(e) = waited {
            workers.stop().await;
            return Err(e);
        }
        let report = self.measure(&pool, workers, started).await;
        pool.close().await;
        report
    }

    /// A direct pool on the run's database, whatever the workers go through (a pooler is the
    /// subject of some runs; the bench's own counting is not). Waits up to 30 s for the workers
    /// to create the database.
    async fn pool(&self) -> Result<sqlx::PgPool, String> {
        let url = self.stack.config.postgres.url.expose_secret();
        let started = Instant::now();
        loop {
            match PgPoolOptions::new().max_connections(4).acquire_timeout(Duration::from_secs(2)).connect(url).await {
                Ok(pool) => return Ok(pool),
                Err(_) if started.elapsed() < Duration::from_secs(30) => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => return Err(format!("audit database: {e}")),
            }
        }
    }

    /// The bans preset's bans, written before anything runs (the schema first: the workers are
    /// not up yet to create it).
    async fn load_bans(&mut self, load: &super::checks::CheckLoad) -> Result<(), String> {
        bouncer::audit::migrate(&self.stack.config.postgres, Duration::from_secs(10))
            .await
            .map_err(|e| format!("migrate: {e}"))?;
        eprintln!("  writing {} active bans", load.bans);
        let secs = super::checks::load_bans(self.stack.config.postgres.url.expose_secret(), load.bans).await?;
        let pool = self.pool().await?;
        let active = count(&pool, "SELECT count(*) FROM bans WHERE ended_at IS NULL AND expires_at > now()").await;
        pool.close().await;
        eprintln!("  {active} active bans written in {secs:.1} s");
        self.extra.bans_loaded = Some((active, secs));
        Ok(())
    }

    /// Starts the checks once every worker is ready and has loaded its copy of the bans (as a
    /// replica in service has); they run beside the backlog. Returns when the counted checks
    /// begin (after the warm-up).
    async fn start_checks(&mut self, workers: &Workers, load: super::checks::CheckLoad) -> Result<Instant, String> {
        for port in &workers.ports {
            wait_ready(*port).await?;
            wait_ban_index(*port).await?;
        }
        let token = self.stack.api_token.clone().ok_or("the bans preset needs an API token")?;
        let addrs = workers.api_addrs.clone();
        let (active, secs) = self.extra.bans_loaded.unwrap_or((0, 0.0));
        eprintln!(
            "  {} ban checks/s for {} s over {} replicas, after {} s of warm-up",
            load.per_second,
            load.seconds,
            addrs.len(),
            load.warmup_seconds
        );
        let begin = Instant::now();
        let counted = begin + Duration::from_secs(load.warmup_seconds);
        self.extra.checks =
            Some(tokio::spawn(async move { super::checks::run(&addrs, &token, &load, begin, active, secs).await }));
        Ok(counted)
    }

    /// A backlog: everything queued first, then the workers start. Latency counts from their
    /// start, not from queueing.
    async fn backlog(&mut self, publisher: &Publisher) -> Result<(Workers, Instant), String> {
        let total = self.bodies.len();
        for (n, chunk) in self.bodies.chunks(1000).enumerate() {
            let plain: Vec<Vec<u8>> = chunk.iter().map(|(_, b)| b.clone()).collect();
            if publisher.publish_all(&plain, &[]).await.iter().any(|ok| !ok) {
                return Err("the broker did not confirm a message".into());
            }
            eprintln!("  queued {}/{}", (n * 1000 + chunk.len()).min(total), total);
        }
        self.published_at.fill(now_ms());
        let workers = Workers::start(&self.stack.config_path, self.w.replicas, &self.stack.id, self.w.api())?;
        Ok((workers, Instant::now()))
    }

    /// The bans preset: replicas in service — ready, their copy of the bans loaded, every quota
    /// owned — answer checks; a second into the counted checks the backlog arrives, published as fast as the
    /// broker confirms, and is enforced while the checks go on. (Queued before the replicas
    /// start, it would be taken in while they load their copy, before any check.) Latency counts
    /// from each message's publishing.
    async fn backlog_in_service(
        &mut self,
        publisher: &Publisher,
        load: super::checks::CheckLoad,
    ) -> Result<(Workers, Instant), String> {
        let workers = Workers::start(&self.stack.config_path, self.w.replicas, &self.stack.id, self.w.api())?;
        let counted = self.start_checks(&workers, load).await?;
        self.await_owned().await?;
        tokio::time::sleep_until((counted + Duration::from_secs(1)).into()).await;
        let started = Instant::now();
        let total = self.bodies.len();
        for n in 0..total.div_ceil(1000) {
            let range = n * 1000..((n + 1) * 1000).min(total);
            let plain: Vec<Vec<u8>> = self.bodies[range.clone()].iter().map(|(_, b)| b.clone()).collect();
            self.published_at[range.clone()].fill(now_ms());
            if publisher.publish_all(&plain, &[]).await.iter().any(|ok| !ok) {
                return Err("the broker did not confirm a message".into());
            }
            eprintln!("  published {}/{}", range.end, total);
        }
        Ok((workers, started))
    }

    /// A Poisson stream of `rate` verdicts/s into running workers, once they own every quota.
    async fn stream(&mut self, publisher: &Publisher, rate: f64) -> Result<(Workers, Instant), String> {
        let mut workers = Workers::start(&self.stack.config_path, self.w.replicas, &self.stack.id, self.w.api())?;
        for port in &workers.ports {
            wait_ready(*port).await?;
        }
        self.await_owned().await?;
        // Stuck: the hanging app's backlog first, then the healthy stream.
        let stream_from = if self.w.stuck { self.w.segments[0].verdicts } else { 0 };
        if self.w.stuck {
            self.stuck_backlog(publisher, stream_from).await?;
        }
        let started = Instant::now();
        let mut next = Instant::now();
        for (i, (_, body)) in self.bodies.iter().enumerate().skip(stream_from) {
            // Poisson arrivals: exponential gaps with mean 1/rate.
            let gap = -(1.0 - rand::random::<f64>()).ln() / rate;
            next += Duration::from_secs_f64(gap);
            tokio::time::sleep_until(next.into()).await;
            self.published_at[i] = now_ms();
            if publisher.publish_all(std::slice::from_ref(body), &[]).await != [true] {
                return Err("the broker did not confirm a message".into());
            }
            workers.sample();
        }
        if self.w.stuck {
            self.stack.running.sim.clear_faults();
            self.extra.released_at_ms = Some(now_ms());
            eprintln!("  the stuck app answers again");
        }
        Ok((workers, started))
    }

    /// A stream measures enforcement in its steady state: every quota group owned, and shared out
    /// among the replicas (a handover pauses a quota for one vendor window).
    async fn await_owned(&self) -> Result<(), String> {
        let pool = self.pool().await?;
        let waited = Instant::now();
        let groups = self.w.segments.len() as i64;
        let owners_wanted = self.w.replicas.min(self.w.segments.len()) as i64;
        loop {
            // Vendor quota groups only (the relay's and maintenance's leases are not quotas).
            let owned = count(&pool, &format!("SELECT count(*) FROM quota_owners WHERE {VENDOR_QUOTA}")).await;
            let owners =
                count(&pool, &format!("SELECT count(DISTINCT worker_id) FROM quota_owners WHERE {VENDOR_QUOTA}")).await;
            if owned >= groups && owners >= owners_wanted {
                break;
            }
            if waited.elapsed() > Duration::from_secs(30) {
                return Err("the quota groups were never all owned".into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Let a handover that has just happened finish its vendor window.
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        pool.close().await;
        Ok(())
    }

    /// The hanging app's backlog, published in bursts until intake has recorded it all.
    async fn stuck_backlog(&mut self, publisher: &Publisher, n: usize) -> Result<(), String> {
        for chunk in self.bodies[..n].chunks(1000) {
            let plain: Vec<Vec<u8>> = chunk.iter().map(|(_, b)| b.clone()).collect();
            publisher.publish_all(&plain, &[]).await;
        }
        // Intake takes the backlog in (it never waits on the vendor); 5 s after the last publish
        // the queue holds what it holds. The healthy stream starts then, so its latency is the
        // healthy app's, not that of messages queued behind a 5,000-message burst.
        let published = Instant::now();
        tokio::time::sleep(Duration::from_secs(5)).await;
        self.extra.queue_depth_5s_after_backlog = Some(queue_depth(&self.stack.config).await);
        let pool = self.pool().await?;
        while count(&pool, &format!("SELECT count(*) FROM verdicts WHERE {}", self.mine())).await < n as i64 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        pool.close().await;
        eprintln!("  stuck backlog recorded {:.1} s after its last publish", published.elapsed().as_secs_f64());
        Ok(())
    }

    /// Polls until every verdict is terminal (or, for the memory preset, until everything has been
    /// recorded for a while), disrupting replicas on the way when the preset asks for it.
    async fn await_finished(
        &mut self,
        pool: &sqlx::PgPool,
        workers: &mut Workers,
        started: Instant,
    ) -> Result<(), String> {
        let total = self.bodies.len();
        let mut progress = Instant::now();
        let (mut killed, mut stopped) = (false, false);
        loop {
            let finished =
                count(pool, &format!("SELECT count(*) FROM verdicts WHERE status <> 'pending' AND {}", self.mine()))
                    .await;
            workers.sample();
            if self.w.disrupt && !killed && started.elapsed() >= Duration::from_secs(12) {
                self.extra.events.push(disrupt(pool, workers, 0, "-KILL", "sigkill").await);
                killed = true;
            }
            if self.w.disrupt && !stopped && started.elapsed() >= Duration::from_secs(20) {
                self.extra.events.push(disrupt(pool, workers, 1, "-TERM", "sigterm").await);
                stopped = true;
            }
            if progress.elapsed() >= Duration::from_secs(1) {
                eprintln!("  {:>6.1}s  finished {finished}/{total}", started.elapsed().as_secs_f64());
                progress = Instant::now();
            }
            if let Some(linger) = self.w.stop_after_recorded {
                let recorded =
                    count(pool, &format!("SELECT count(*) FROM verdicts WHERE {}", self.mine())).await as usize;
                let pending = count(
                    pool,
                    &format!("SELECT count(*) FROM kicks k JOIN verdicts v USING (verdict_id) WHERE k.status = 'pending' AND v.{}", self.mine()),
                )
                .await;
                if recorded >= total && self.extra.recorded_at.is_none() {
                    self.extra.recorded_at = Some(Instant::now());
                    self.extra.pending_kicks = Some(pending);
                }
                if self.extra.recorded_at.is_some_and(|t| t.elapsed() >= linger) {
                    self.extra.pending_kicks = Some(pending);
                    return Ok(());
                }
            } else if finished as usize >= total {
                return Ok(());
            }
            if started.elapsed() > Duration::from_secs(self.args.timeout) {
                return Err(format!("only {finished} of {total} verdicts finished in {}s", self.args.timeout));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The condition on `verdicts` (or `rejected_messages`) for the run's own rows.
    fn mine(&self) -> String {
        format!("received_at >= '{}'", self.since)
    }

    /// Whether verdict `i` belongs to the stuck preset's hanging app (left out of latencies).
    fn of_stuck_app(&self, i: usize) -> bool {
        self.w.stuck && self.bodies.get(i).is_some_and(|(k, _)| *k == 0)
    }

    /// The report, from the database, the simulator's records and the workers' usage.
    async fn measure(mut self, pool: &sqlx::PgPool, mut workers: Workers, started: Instant) -> Result<Report, String> {
        let (w, total) = (self.w, self.bodies.len());
        // The end is the last verdict's commit, not when the poll happened to look.
        let started_unix_ms = now_ms().saturating_sub(started.elapsed().as_millis() as u64);
        let last: Option<chrono::DateTime<chrono::Utc>> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT max(finished_at) FROM verdicts WHERE {}",
            self.mine()
        )))
        .fetch_one(pool)
        .await
        .unwrap_or(None);
        let wall = match last {
            Some(t) if w.stop_after_recorded.is_none() => {
                (t.timestamp_millis().max(0) as u64).saturating_sub(started_unix_ms) as f64 / 1000.0
            }
            _ => started.elapsed().as_secs_f64(),
        }
        .max(0.001);
        let intake_span: Option<f64> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT extract(epoch FROM max(received_at) - min(received_at))::float8 FROM verdicts WHERE {}",
            self.mine()
        )))
        .fetch_one(pool)
        .await
        .unwrap_or(None);
        // The checks run their full time, beside the workers, whatever the backlog did.
        let ban_checks = match self.extra.checks.take() {
            Some(handle) => {
                while !handle.is_finished() {
                    workers.sample();
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Some(handle.await.map_err(|e| format!("the checks failed: {e}"))?)
            }
            None => None,
        };
        let reentry = match self.extra.joins.take() {
            Some(handle) => {
                let joins = handle.await.map_err(|e| format!("the joins failed: {e}"))?;
                Some(super::reentry::report(pool, &self.stack.running.sim, self.stack.app_ids[0], joins).await)
            }
            None => None,
        };
        let events = match self.extra.outcome_events.take() {
            Some((handle, stop)) => Some(super::events::finish(handle, stop, pool).await),
            None => None,
        };
        workers.sample();
        let cpu: f64 = workers.usage.iter().map(|u| u.0).sum();
        let rss = workers.usage.iter().map(|u| u.1).fold(0.0, f64::max);
        workers.stop().await;

        let sim = &self.stack.running.sim;
        let records = sim.records(0);
        let stats = sim.stats();
        // Utilisation is measured against the documented limit, not the simulator's (maybe raised) one.
        let windows: HashMap<String, (u64, u32)> = stats["quotas"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, q)| {
                        // A quota that is no kick quota (a ZEGO ban-rule API): the simulator's limit,
                        // which is the documented one.
                        let simulated = q["limit"].as_u64().and_then(|l| u32::try_from(l).ok()).unwrap_or(0);
                        let limit = QuotaKey::parse(k).map_or(simulated, |q| q.max_calls_per_second());
                        (k.clone(), (q["max_calls_in_1s"].as_u64().unwrap_or(0), limit))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let to_call: Vec<f64> = report::sent_at_by_verdict(&records)
            .iter()
            .filter(|(v, _)| !self.of_stuck_app(**v))
            .filter_map(|(v, t)| self.published_at.get(*v).map(|p| t.saturating_sub(*p) as f64))
            .collect();
        let finished: Vec<(String, Option<chrono::DateTime<chrono::Utc>>, String)> = sqlx::query_as(
            sqlx::AssertSqlSafe(format!("SELECT verdict_id, finished_at, status FROM verdicts WHERE {}", self.mine())),
        )
        .fetch_all(pool)
        .await
        .map_err(|e| e.to_string())?;
        let to_finish: Vec<f64> = finished
            .iter()
            .filter_map(|(id, at, _)| {
                let i: usize = id.strip_prefix(self.prefix.as_str())?.parse().ok()?;
                if self.of_stuck_app(i) {
                    return None;
                }
                let at = at.as_ref()?.timestamp_millis().max(0) as u64;
                Some(at.saturating_sub(*self.published_at.get(i)?) as f64)
            })
            .collect();
        let drain = self.extra.released_at_ms.map(|t| {
            let after: Vec<bouncer_sim::Record> = records.iter().filter(|r| r.at_unix_ms >= t).cloned().collect();
            report::quota_reports(&after, &windows)
        });
        let users: usize = w.segments.iter().map(|s| (0..s.verdicts).map(|j| s.users_of(j)).sum::<usize>()).sum();
        Ok(Report {
            preset: preset_name(self.args.preset).into(),
            machine: Machine::this(),
            verdicts: total,
            users,
            apps: w.segments.len(),
            replicas: w.replicas,
            prefetch: self.stack.config.amqp.prefetch.into(),
            postgres_route: self.stack.postgres_route.into(),
            wall_seconds: wall,
            verdicts_per_second: total as f64 / wall,
            kicks_per_second: users as f64 / wall,
            intake_verdicts_per_second: intake_span
                .filter(|s| *s > 0.0 && w.stream_rate.is_none())
                .map(|s| total as f64 / s),
            quotas: report::quota_reports(&records, &windows),
            publish_to_vendor_call: Latency::of(to_call),
            publish_to_ack: Latency::of(to_finish),
            worker_cpu_seconds: cpu,
            worker_cpu_seconds_per_1000_verdicts: cpu * 1000.0 / total as f64,
            worker_peak_rss_mib: rss,
            pending_kicks: self.extra.pending_kicks,
            queue_depth_5s_after_backlog: self.extra.queue_depth_5s_after_backlog,
            takeovers: takeover_gaps(&records, &self.extra.events),
            drain_after_release: drain,
            rejected: count(pool, &format!("SELECT count(*) FROM rejected_messages WHERE {}", self.mine())).await,
            failed_verdicts: finished.iter().filter(|(_, _, s)| s == "failed").count() as i64,
            vendor_faults_injected: stats["rejections"]["http_502"].as_u64().unwrap_or(0),
            retries: count(
                pool,
                &format!(
                    "SELECT count(*) FROM kick_attempts WHERE outcome = 'retry' AND started_at >= '{}'",
                    self.since
                ),
            )
            .await,
            ban_checks,
            reentry,
            events,
            baseline_msgs_per_second: None,
            ratio_to_baseline: None,
            batched_baseline_msgs_per_second: None,
            ratio_to_batched_baseline: None,
        })
    }
}

/// Live leases of vendor quota groups (`zego:<AppId>`, `trtc:<SecretId>`).
const VENDOR_QUOTA: &str = "expires_at > now() AND (quota_group LIKE 'zego:%' OR quota_group LIKE 'trtc:%')";

async fn disrupt(pool: &sqlx::PgPool, workers: &Workers, k: usize, sig: &str, what: &'static str) -> Disruption {
    let name = format!("-{k}");
    let owned: Vec<(String, String)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT quota_group, worker_id FROM quota_owners WHERE {VENDOR_QUOTA}"
    )))
    .fetch_all(pool)
    .await
    .unwrap_or_default();
    let groups = owned.into_iter().filter(|(_, w)| w.ends_with(&name)).map(|(g, _)| g).collect();
    let at_ms = now_ms();
    workers.signal(k, sig);
    eprintln!("  {what} replica {k}");
    Disruption { what, at_ms, groups }
}

/// For each group a disrupted replica owned: how long until its quota saw a call again.
fn takeover_gaps(records: &[bouncer_sim::Record], events: &[Disruption]) -> Vec<report::Takeover> {
    let mut out = Vec::new();
    for e in events {
        for g in &e.groups {
            let next = records
                .iter()
                .filter(|r| report::quota_group(&r.quota) == *g && r.at_unix_ms > e.at_ms)
                .map(|r| r.at_unix_ms)
                .min();
            out.push(report::Takeover {
                event: e.what.into(),
                quota_group: g.clone(),
                resumed_after_ms: next.map(|n| n - e.at_ms),
            });
        }
    }
    out
}

async fn queue_depth(config: &Config) -> u32 {
    let Ok(conn) =
        lapin::Connection::connect(config.amqp.url.expose_secret(), lapin::ConnectionProperties::default()).await
    else {
        return 0;
    };
    let depth = match conn.create_channel().await {
        Ok(ch) => ch
            .queue_declare(
                config.amqp.queue.as_str().into(),
                lapin::options::QueueDeclareOptions { passive: true, ..Default::default() },
                FieldTable::default(),
            )
            .await
            .map(|q| q.message_count())
            .unwrap_or(0),
        Err(_) => 0,
    };
    let _ = conn.close(200, "measured".into()).await;
    depth
}

/// Waits until the worker on `port` answers ban checks from its copy of the bans
/// (`bouncer_ban_index_ready`), up to a minute.
async fn wait_ban_index(port: u16) -> Result<(), String> {
    let url = format!("http://127.0.0.1:{port}/metrics");
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(60) {
        if let Ok(r) = reqwest::get(&url).await
            && let Ok(text) = r.text().await
            && text.lines().any(|l| l.trim() == "bouncer_ban_index_ready 1")
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err("the worker never loaded its copy of the bans".into())
}
