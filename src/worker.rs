//! `bouncer run`: wires the stages together and owns the shutdown sequence.
//!
//! ```text
//! RabbitMQ ─▶ intake ──(one transaction per batch, then ack)──▶ PostgreSQL (verdicts, pending kicks)
//!                 │ wake-up: in-process, or NOTIFY                      │ due kicks
//!                 ▼                                                     ▼
//!       ownership (elector: one replica per quota group) ─▶ lanes ─▶ calls ─(quota)─▶ vendor
//!                                                                      │ attempts, outcomes,
//!                                                                      ▼ retry schedules
//!                                                          audit writer ──▶ PostgreSQL
//! ```
//!
//! Shared state (documented where it lives): [`BrokerStatus`] (intake → `/readyz`),
//! [`OwnershipView`] (elector and lanes → `/metrics`, `/readyz`), [`Wakers`] (intake and the
//! listener → lanes).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::audit::{self, Db, writer};
use crate::config::Config;
use crate::enforcement::{self, EnforceSettings, Enforcement, Wiring};
use crate::intake::{BrokerStatus, Intake};
use crate::keys::AppKey;
use crate::ownership::{Elector, Identity, OwnershipView};
use crate::retry::{Backoff, RetrySchedule};
use crate::vendors::Vendor;
use crate::wake::{self, Wakers};

/// What the HTTP surface (health, readiness, metrics) looks at.
#[derive(Clone)]
pub struct Health {
    pub broker: Arc<BrokerStatus>,
    pub pool: Db,
    pub ownership: Arc<OwnershipView>,
    /// `[retention]`: the metrics say how far pruning is behind it.
    pub retention: crate::config::RetentionConfig,
}

/// The worker's connections to PostgreSQL.
struct Pools {
    /// Enforcement's fetches and the audit writer.
    main: Db,
    /// Leases: a busy main pool must not cost a renewal.
    reserved: Db,
    /// Intake: new verdicts are recorded without queueing behind enforcement for a connection.
    intake: Db,
}

/// Migrates and connects every pool, retrying until PostgreSQL answers or `shutdown`; refuses
/// (`Err`) when the schema needs migrating and nothing can migrate it.
async fn connect(config: &Config, shutdown: &CancellationToken) -> Result<Option<Pools>, String> {
    let Some(main) = prepare_database(config, shutdown).await? else { return Ok(None) };
    let Some(reserved) = reserved_pool(config, 3, shutdown).await else { return Ok(None) };
    let Some(intake) = reserved_pool(config, crate::intake::PIPELINE_DEPTH as u32, shutdown).await else {
        return Ok(None);
    };
    Ok(Some(Pools { main, reserved, intake }))
}

/// Vendor calls run on a thread of their own: a call is charged to its quota right before it is
/// sent, and bursts of intake's or the audit writer's work on the main runtime should not sit in
/// between (the pacing holds the limit whatever the delay; a delay costs throughput).
fn calls_runtime() -> Option<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name(crate::priority::CALLS_THREAD)
        .enable_all()
        .build()
        .map_err(|e| tracing::error!(error = %e, "cannot start the vendor-call runtime"))
        .ok()
}

/// Writes what the audit writers hold (10 s at most), then stops them.
async fn stop_writers(audit: writer::AuditSink, stop: CancellationToken, tasks: Vec<tokio::task::JoinHandle<()>>) {
    if tokio::time::timeout(Duration::from_secs(10), audit.flush()).await.is_err() {
        tracing::warn!("audit writer did not flush in time; those kicks stay pending and are retried");
    }
    drop(audit);
    stop.cancel();
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(1), t).await;
    }
}

/// Connects to PostgreSQL and applies migrations, retrying until it works or `shutdown`. Behind
/// a transaction pooler without `postgres.direct_url` nothing can migrate: a current schema is
/// used as it is, one that needs migrating is refused (`Err`, naming the key).
async fn prepare_database(config: &Config, shutdown: &CancellationToken) -> Result<Option<Db>, String> {
    let attempt = || async {
        let can_migrate = config.postgres.session_url().is_some();
        if can_migrate {
            audit::migrate(&config.postgres, Duration::from_secs(5)).await?;
        }
        let db = audit::connect(&config.postgres, Duration::from_secs(5)).await?;
        if !can_migrate && audit::pending_migrations(&db).await? > 0 {
            db.close().await;
            return Ok(Err(format!("the schema needs migrating, and {}", audit::NEEDS_DIRECT_URL)));
        }
        Ok::<_, audit::AuditError>(Ok(db))
    };
    Backoff::new(Duration::from_millis(500), Duration::from_secs(10))
        .until_ok(shutdown, attempt, |e: &audit::AuditError, wait| {
            tracing::error!(error = %e, retry_in_ms = wait.as_millis() as u64, "PostgreSQL not ready");
        })
        .await
        .transpose()
}

/// This replica's name: configured, else host name and process id.
pub(crate) fn worker_id(config: &Config) -> (String, String) {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    let id = config.ownership.worker_id.clone().unwrap_or_else(|| format!("{host}-{}", std::process::id()));
    (id, host)
}

/// Runs the worker until `shutdown` is cancelled, then stops in order: intake stops consuming
/// (everything it took is already recorded and acked), the elector hands every quota group over
/// (calls in flight get up to half a second, within the grace period, then are given up and
/// retried by the next owner; their results are written), and the process leaves.
/// `on_ready` receives the health handle once the worker is wired up. Refuses to start (`Err`,
/// the reason) only when the database needs migrating and nothing can migrate it.
///
/// `known_bans`: the copy of where bans hold that this process's API answers from
/// (the API's `Serving::known_bans`); intake adds the bans it records to it.
pub async fn run(
    config: Config,
    known_bans: Option<Arc<crate::ban_index::BanIndex>>,
    shutdown: CancellationToken,
    on_ready: impl FnOnce(Health),
) -> Result<(), String> {
    for w in &config.warnings {
        tracing::warn!(key = %w.key, "configuration: {}", w.reason);
    }
    // No longer incremented (nothing is deferred), still exported so dashboards keep their series.
    for vendor in crate::vendors::NAMES {
        metrics::counter!("bouncer_deferrals_total", "vendor" => vendor).absolute(0);
    }
    let Some(Pools { main: pool, reserved, intake: intake_pool }) = connect(&config, &shutdown).await? else {
        return Ok(());
    };
    let Some(calls) = calls_runtime() else { return Err("cannot start the vendor-call runtime".into()) };
    let (me, hostname) = worker_id(&config);
    let writers_stop = CancellationToken::new();
    let events = config.outcomes.enabled;
    let (audit, writer_tasks) = writer::spawn(pool.clone(), writers_stop.clone(), events);
    let groups = enforcement::groups(&config);
    let apps: HashSet<_> =
        groups.iter().flat_map(|g| g.apps.iter().map(move |(c, _)| AppKey::new(g.vendor, c.app_id()))).collect();
    let wakers = Arc::new(Wakers::new(apps.iter().copied(), config.postgres.poll_interval));
    let view = Arc::new(OwnershipView::default());
    let status = Arc::new(BrokerStatus::default());
    on_ready(Health {
        broker: status.clone(),
        pool: pool.clone(),
        ownership: view.clone(),
        retention: config.retention.clone(),
    });
    tracing::info!(worker_id = %me, zego_apps = config.zego.len(), trtc_apps = config.trtc.len(), quota_groups = groups.len(),
        "worker started");

    // On SIGTERM intake stops and the quotas are handed over at the same moment: another replica
    // takes over while this one finishes.
    let listener = match audit::session_pool(&config.postgres, 1, Duration::from_secs(5)) {
        Some(session) => tokio::spawn(wake::listen(session, wakers.clone(), me.clone(), shutdown.clone())),
        None => {
            tracing::info!(
                poll_interval_ms = config.postgres.poll_interval.as_millis() as u64,
                "no LISTEN connection behind a transaction pooler without postgres.direct_url: lanes poll for work"
            );
            tokio::spawn(async {})
        }
    };
    let enforcement = Enforcement::new(Wiring {
        pool: pool.clone(),
        groups,
        settings: EnforceSettings {
            retry: RetrySchedule::from(&config.retry),
            linger: Duration::from_millis(config.batch.linger_ms),
            buffer_secs: config.pacing.buffer.as_secs_f64(),
            jitter: config.pacing.jitter,
            grace: config.shutdown.grace,
            calls: calls.handle().clone(),
        },
        audit: audit.clone(),
        wakers: wakers.clone(),
        view: view.lanes.clone(),
        outcomes: crate::outcomes::Outcomes::from_config(&config),
        retention: config.retention.clone(),
    });
    let identity = Identity { worker_id: me.clone(), hostname };
    let elector = Elector::new(
        reserved.clone(),
        identity,
        config.ownership.clone(),
        enforcement,
        wakers.owners.clone(),
        view.clone(),
    );
    let elector = tokio::spawn(elector.run(shutdown.clone()));

    let rule_apps =
        config.zego.iter().filter(|z| z.forbid_rules).map(|z| AppKey::new(Vendor::Zego, z.app_id)).collect();
    let outcomes = crate::outcomes::Outcomes::from_config(&config);
    let intake = Intake {
        pool: intake_pool.clone(),
        apps,
        rule_apps,
        wakers,
        me,
        amqp: config.amqp.clone(),
        status,
        events,
        outcomes,
        known_bans,
    };
    let stopped = async {
        shutdown.cancelled().await;
        tracing::info!(grace_secs = config.shutdown.grace.as_secs(), "stopping: intake ends, quotas are handed over");
        tokio::time::sleep(Duration::from_secs(5)).await;
    };
    tokio::select! {
        () = intake.run(&shutdown) => tracing::info!("intake stopped"),
        () = stopped => tracing::warn!("intake did not stop within 5 s; its unacked deliveries go back to the broker"),
    }
    let _ = elector.await;
    let _ = listener.await;
    reserved.close().await;
    // Every call was answered or given up before the leases were released.
    calls.shutdown_background();
    stop_writers(audit, writers_stop, writer_tasks).await;
    pool.close().await;
    intake_pool.close().await;
    tracing::info!("stopped");
    Ok(())
}

/// A pool of `size` connections of its own, retried every second until PostgreSQL answers or
/// shutdown.
async fn reserved_pool(config: &Config, size: u32, shutdown: &CancellationToken) -> Option<Db> {
    let attempt = || audit::connect_reserved(&config.postgres, size, Duration::from_secs(5));
    Backoff::new(Duration::from_secs(1), Duration::from_secs(1))
        .until_ok(shutdown, attempt, |e: &audit::AuditError, _| tracing::error!(error = %e, "PostgreSQL not ready"))
        .await
}
