//! The small HTTP surface on `[http].listen`: `/metrics` (Prometheus text), `/healthz` (the
//! process is alive) and `/readyz` (connected to RabbitMQ and PostgreSQL, consumer active).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde_json::json;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::worker::Health;

/// Installs the process-wide metrics recorder. Latency metrics get histogram buckets.
pub fn install_metrics() -> Option<PrometheusHandle> {
    let latency = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];
    PrometheusBuilder::new()
        .set_buckets(&latency)
        .ok()?
        .install_recorder()
        .map_err(|e| tracing::warn!(error = %e, "metrics recorder not installed"))
        .ok()
}

#[derive(Clone)]
struct AppState {
    metrics: Option<PrometheusHandle>,
    /// Filled in once the worker is wired up; until then the process is alive but not ready.
    health: watch::Receiver<Option<Health>>,
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(s): State<AppState>) -> impl IntoResponse {
    let health = s.health.borrow().clone();
    let Some(h) = health else {
        return (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"ready": false, "reason": "starting"})));
    };
    let rabbitmq = h.broker.connected.load(Ordering::Relaxed);
    let consuming = h.broker.consuming.load(Ordering::Relaxed);
    let postgres =
        tokio::time::timeout(Duration::from_secs(2), crate::audit::work::ping(&h.pool)).await.is_ok_and(|r| r.is_ok());
    // Deliveries held unrecorded this long mean intake is stuck though every connection looks up.
    let holding = h.broker.holding_for();
    let intake_recording = holding < INTAKE_STALL;
    let ready = rabbitmq && consuming && postgres && intake_recording;
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    // Owning no quota is fine (another replica may own them all): it is reported, not required.
    let owned = h.ownership.owned_groups.load(Ordering::Relaxed);
    (
        status,
        Json(json!({"ready": ready, "rabbitmq": rabbitmq, "consumer": consuming, "postgres": postgres,
                    "intake_recording": intake_recording, "intake_holding_seconds": holding.as_secs(),
                    "owned_quota_groups": owned})),
    )
}

async fn render_metrics(State(s): State<AppState>) -> impl IntoResponse {
    let health = s.health.borrow().clone();
    if let Some(h) = health {
        // Gauges are read at scrape time from the live state. Users held in this replica's
        // memory by vendor (lanes of the quotas it owns):
        let mut by_vendor: std::collections::BTreeMap<&'static str, (usize, usize)> =
            crate::vendors::NAMES.iter().map(|v| (*v, (0, 0))).collect();
        for stats in h.ownership.lanes.lanes.lock().unwrap_or_else(|e| e.into_inner()).values() {
            let e = by_vendor.entry(stats.vendor.as_str()).or_default();
            e.0 += stats.open_rooms.load(Ordering::Relaxed);
            e.1 += stats.pending_users();
        }
        for (vendor, (rooms, users)) in by_vendor {
            metrics::gauge!("bouncer_open_batches", "vendor" => vendor).set(rooms as f64);
            metrics::gauge!("bouncer_pending_users", "vendor" => vendor).set(users as f64);
        }
        // Unfinished verdicts in the whole deployment (the database holds the work).
        let unfinished = tokio::time::timeout(Duration::from_secs(1), crate::audit::work::unfinished(&h.pool)).await;
        if let Ok(Ok((count, secs))) = unfinished {
            metrics::gauge!("bouncer_inflight_verdicts").set(count as f64);
            metrics::gauge!("bouncer_oldest_pending_verdict_seconds").set(secs);
        }
        // Outcome events waiting in the outbox, and how long the oldest has waited.
        let outbox = tokio::time::timeout(Duration::from_secs(1), crate::audit::outbox::depth(&h.pool)).await;
        if let Ok(Ok((count, secs))) = outbox {
            metrics::gauge!("bouncer_outbox_depth").set(count as f64);
            metrics::gauge!("bouncer_outbox_oldest_seconds").set(secs);
        }
        // The trail's tables: size, oldest row, and how far pruning is behind `[retention]`.
        let states = tokio::time::timeout(
            Duration::from_secs(2),
            crate::audit::retention::states(&h.pool, &h.retention, chrono::Utc::now(), false),
        )
        .await;
        if let Ok(Ok(states)) = states {
            let now = chrono::Utc::now();
            for t in states {
                metrics::gauge!("bouncer_table_bytes", "table" => t.table).set(t.bytes as f64);
                let oldest = t.oldest.map_or(0.0, |o| (now - o).num_milliseconds().max(0) as f64 / 1000.0);
                metrics::gauge!("bouncer_oldest_row_seconds", "table" => t.table).set(oldest);
                metrics::gauge!("bouncer_prune_behind_seconds", "table" => t.table).set(t.behind_seconds());
            }
        }
        // Rollup deltas not yet folded, and the oldest one's age.
        let lag = tokio::time::timeout(Duration::from_secs(1), crate::audit::rollups::lag(&h.pool)).await;
        if let Ok(Ok((count, secs))) = lag {
            metrics::gauge!("bouncer_rollup_deltas").set(count as f64);
            metrics::gauge!("bouncer_rollup_lag_seconds").set(secs);
        }
        // Bans in force in the whole deployment, by vendor (a vendor with none reads 0).
        let active = tokio::time::timeout(Duration::from_secs(1), crate::audit::bans::active_by_vendor(&h.pool)).await;
        if let Ok(Ok(rows)) = active {
            for vendor in crate::vendors::NAMES {
                let n = rows.iter().find(|(v, _)| v == vendor).map_or(0, |(_, n)| *n);
                metrics::gauge!("bouncer_active_bans", "vendor" => vendor).set(n as f64);
            }
        }
        metrics::gauge!("bouncer_quota_groups_owned").set(h.ownership.owned_groups.load(Ordering::Relaxed) as f64);
        metrics::gauge!("bouncer_live_workers").set(h.ownership.live_workers.load(Ordering::Relaxed) as f64);
        metrics::gauge!("bouncer_intake_stalled_seconds").set(h.broker.holding_for().as_secs_f64());
        metrics::gauge!("bouncer_consumer_active").set(if h.broker.consuming.load(Ordering::Relaxed) {
            1.0
        } else {
            0.0
        });
    }
    match &s.metrics {
        Some(m) => (StatusCode::OK, [("content-type", "text/plain; version=0.0.4")], m.render()),
        None => {
            (StatusCode::SERVICE_UNAVAILABLE, [("content-type", "text/plain")], "metrics recorder unavailable\n".into())
        }
    }
}

/// `/readyz` fails once intake has held deliveries it cannot record for this long.
pub const INTAKE_STALL: Duration = Duration::from_secs(30);

/// The ops port's limits ([`crate::serve::OPS`]): most connections served at once …
pub const MAX_CONNECTIONS: usize = crate::serve::OPS.max_connections;
/// … how long a request's headers may take …
pub const HEADER_READ_TIMEOUT: Duration = crate::serve::OPS.header_read_timeout;
/// … how long a connection lives …
pub const CONNECTION_LIFETIME: Duration = crate::serve::OPS.connection_lifetime;
/// … and the largest request head read.
pub const MAX_REQUEST_HEAD_BYTES: usize = crate::serve::OPS.max_request_head_bytes;

/// Serves until the process exits. Returns the bound address (useful with port 0).
pub async fn serve(
    listen: SocketAddr,
    metrics: Option<PrometheusHandle>,
    health: watch::Receiver<Option<Health>>,
) -> std::io::Result<SocketAddr> {
    let (listener, addr) = crate::serve::bind(listen, "http.listen").await.map_err(std::io::Error::other)?;
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(render_metrics))
        .with_state(AppState { metrics, health });
    // Until the process exits: the ops port answers probes through shutdown.
    tokio::spawn(crate::serve::serve(listener, app, crate::serve::OPS, CancellationToken::new()));
    Ok(addr)
}
