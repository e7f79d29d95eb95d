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

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::audit::{self, writer};
use crate::config::Config;
use crate::enforcement::{self, EnforceSettings, Enforcement};
use crate::intake::{BrokerStatus, Intake};
use crate::keys::AppKey;
use crate::ownership::{Elector, Identity, OwnershipView};
use crate::retry::RetrySchedule;
use crate::wake::{self, Wakers};

/// What the HTTP surface (health, readiness, metrics) looks at.
#[derive(Clone)]
pub struct Health {
    pub broker: Arc<BrokerStatus>,
    pub pool: PgPool,
    pub ownership: Arc<OwnershipView>,
}

/// Connects to PostgreSQL and applies migrations, retrying until it works or `shutdown`.
async fn prepare_database(config: &Config, shutdown: &CancellationToken) -> Option<PgPool> {
    let mut wait = Duration::from_millis(500);
    loop {
        let attempt = async {
            audit::migrate(&config.postgres, Duration::from_secs(5)).await?;
            audit::connect(&config.postgres, Duration::from_secs(5)).await
        };
        match attempt.await {
            Ok(pool) => return Some(pool),
            Err(e) => {
                tracing::error!(error = %e, retry_in_ms = wait.as_millis() as u64, "PostgreSQL not ready");
                tokio::select! {
                    () = tokio::time::sleep(wait) => {},
                    () = shutdown.cancelled() => return None,
                }
                wait = (wait * 2).min(Duration::from_secs(10));
            }
        }
    }
}

/// This replica's name: configured, else host name and process id.
fn worker_id(config: &Config) -> (String, String) {
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
/// `on_ready` receives the health handle once the worker is wired up.
pub async fn run(config: Config, shutdown: CancellationToken, on_ready: impl FnOnce(Health)) {
    for w in &config.warnings {
        tracing::warn!(key = %w.key, "configuration: {}", w.reason);
    }
    // No longer incremented (nothing is deferred), still exported so dashboards keep their series.
    for vendor in crate::vendors::NAMES {
        metrics::counter!("bouncer_deferrals_total", "vendor" => vendor).absolute(0);
    }
    let Some(pool) = prepare_database(&config, &shutdown).await else { return };
    // Leases and wake-ups on connections of their own: a busy main pool must not cost a renewal.
    let Some(reserved) = reserved_pool(&config, 3, &shutdown).await else { return };
    // Intake too: new verdicts are recorded without queueing behind enforcement's fetches and
    // result writes for a connection.
    let Some(intake_pool) = reserved_pool(&config, crate::intake::PIPELINE_DEPTH as u32, &shutdown).await else {
        return;
    };
    // Vendor calls run on a thread of their own: a call is charged to its quota right before it is
    // sent, and intake's or the audit writer's bursts of work on the main runtime must not sit in
    // between (the pacing absorbs only `pacing.jitter_ms` of variation).
    let calls = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("bouncer-calls")
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the vendor-call runtime");
            return;
        }
    };
    let (me, hostname) = worker_id(&config);
    let (audit, writer_tasks) = writer::spawn(pool.clone());
    let groups = enforcement::groups(&config);
    let apps: HashSet<_> =
        groups.iter().flat_map(|g| g.apps.iter().map(move |(c, _)| AppKey::new(g.vendor, c.app_id()))).collect();
    let wakers = Arc::new(Wakers::new(apps.iter().copied()));
    let view = Arc::new(OwnershipView::default());
    let status = Arc::new(BrokerStatus::default());
    on_ready(Health { broker: status.clone(), pool: pool.clone(), ownership: view.clone() });
    tracing::info!(worker_id = %me, zego_apps = config.zego.len(), trtc_apps = config.trtc.len(), quota_groups = groups.len(),
        "worker started");

    // On SIGTERM intake stops and the quotas are handed over at the same moment: another replica
    // takes over while this one finishes.
    let listener = tokio::spawn(wake::listen(reserved.clone(), wakers.clone(), me.clone(), shutdown.clone()));
    let enforcement = Enforcement::new(
        pool.clone(),
        groups,
        EnforceSettings {
            retry: RetrySchedule::from(&config.retry),
            linger: Duration::from_millis(config.batch.linger_ms),
            buffer_secs: config.pacing.buffer.as_secs_f64(),
            jitter: config.pacing.jitter,
            grace: config.shutdown.grace,
            calls: calls.handle().clone(),
        },
        audit.clone(),
        wakers.clone(),
        view.lanes.clone(),
    );
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

    let intake = Intake { pool: intake_pool.clone(), apps, wakers, me, amqp: config.amqp.clone(), status };
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
    if tokio::time::timeout(Duration::from_secs(10), audit.flush()).await.is_err() {
        tracing::warn!("audit writer did not flush in time; those kicks stay pending and are retried");
    }
    drop(audit);
    writer_tasks.iter().for_each(|t| t.abort());
    pool.close().await;
    intake_pool.close().await;
    tracing::info!("stopped");
}

/// A pool of `size` connections of its own, retried until PostgreSQL answers or shutdown.
async fn reserved_pool(config: &Config, size: u32, shutdown: &CancellationToken) -> Option<PgPool> {
    loop {
        match audit::connect_reserved(&config.postgres, size, Duration::from_secs(5)).await {
            Ok(p) => return Some(p),
            Err(e) => {
                tracing::error!(error = %e, "PostgreSQL not ready");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => {},
                    () = shutdown.cancelled() => return None,
                }
            }
        }
    }
}
