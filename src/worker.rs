//! `bouncer run`: wires the pieces together and owns the shutdown sequence.
//!
//! ```text
//! RabbitMQ ─▶ Intake ──record──▶ PostgreSQL
//!               │ hand off / defer
//!               ▼
//!            Lane per app ─▶ call tasks ─(quota)─▶ vendor
//!                                │ attempts, outcomes
//!                                ▼
//!                          AuditWriter ──commit──▶ PostgreSQL ──▶ ack
//! ```

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::audit::{self, writer};
use crate::config::Config;
use crate::consumer::{BrokerStatus, Intake};
use crate::inflight::Inflight;
use crate::lane::{self, LaneCtx, LaneHandle};
use crate::quota::Quotas;
use crate::retry::RetrySchedule;
use crate::vendor::Client;
use crate::vendor::trtc::TrtcClient;
use crate::vendor::zego::ZegoClient;
use crate::verdict::Vendor;

/// What the HTTP surface (health, readiness, metrics) looks at.
#[derive(Clone)]
pub struct Health {
    pub broker: Arc<BrokerStatus>,
    pub pool: PgPool,
    pub inflight: Arc<Inflight>,
    pub lanes: Arc<Vec<LaneHandle>>,
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

/// Runs the worker until `shutdown` is cancelled, then drains: in-flight vendor calls get the
/// grace period, finished work is recorded and acked, everything else is left unacked for
/// redelivery. `on_ready` receives the health handle once the worker is wired up.
pub async fn run(config: Config, shutdown: CancellationToken, on_ready: impl FnOnce(Health)) {
    let Some(pool) = prepare_database(&config, &shutdown).await else { return };
    let inflight = Arc::new(Inflight::default());
    let (audit, writer_tasks) = writer::spawn(pool.clone(), inflight.clone());
    let quotas = Quotas::default();
    let tracker = TaskTracker::new();
    let retry = RetrySchedule::from(&config.retry);
    let linger = Duration::from_millis(config.batch.linger_ms);

    let mut lanes: HashMap<(Vendor, u32), LaneHandle> = HashMap::new();
    let clients = config
        .zego
        .iter()
        .map(|z| (Client::Zego(ZegoClient::new(z)), z.rate_per_second))
        .chain(config.trtc.iter().map(|t| (Client::Trtc(TrtcClient::new(t)), t.rate_per_second)));
    for (client, rate) in clients {
        let ctx = LaneCtx::new(client, rate, &quotas, retry.clone(), audit.clone(), shutdown.clone());
        let key = (ctx.stats.vendor, ctx.stats.app_id);
        lanes.insert(key, lane::spawn(Arc::new(ctx), linger, &tracker));
    }
    let status = Arc::new(BrokerStatus::default());
    on_ready(Health {
        broker: status.clone(),
        pool: pool.clone(),
        inflight: inflight.clone(),
        lanes: Arc::new(lanes.values().cloned().collect()),
    });
    tracing::info!(zego_apps = config.zego.len(), trtc_apps = config.trtc.len(), "worker started");

    let intake = Intake {
        pool: pool.clone(),
        lanes,
        inflight: inflight.clone(),
        audit: audit.clone(),
        amqp: config.amqp.clone(),
        batch: config.batch.clone(),
        status,
    };
    let conn = intake.run(&shutdown).await;

    tracing::info!(
        in_flight = inflight.len(),
        grace_secs = config.shutdown.grace.as_secs(),
        "stopping: draining in-flight vendor calls"
    );
    tracker.close();
    if tokio::time::timeout(config.shutdown.grace, tracker.wait()).await.is_err() {
        tracing::warn!("grace period over; unfinished calls are left for redelivery");
    }
    // Record and ack what finished; the writer keeps running for stragglers until we exit.
    if tokio::time::timeout(Duration::from_secs(10), audit.flush()).await.is_err() {
        tracing::warn!("audit writer did not flush in time; unacked verdicts will be redelivered");
    }
    drop(intake);
    drop(audit);
    if let Some(conn) = conn {
        // Whatever is still unacked goes back to the queue for another worker.
        let _ = conn.close(200, "bouncer shutting down".into()).await;
    }
    writer_tasks.iter().for_each(|t| t.abort());
    pool.close().await;
    tracing::info!(left_unacked = inflight.len(), "stopped");
}
