//! The small HTTP surface on `[http].listen`: `/metrics` (Prometheus text), `/healthz` (the
//! process is alive) and `/readyz` (connected to RabbitMQ and PostgreSQL, consumer active).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde_json::json;
use tokio::sync::{Semaphore, watch};

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
    let postgres = tokio::time::timeout(Duration::from_secs(2), sqlx::query("SELECT 1").execute(&h.pool))
        .await
        .is_ok_and(|r| r.is_ok());
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
        let unfinished = tokio::time::timeout(
            Duration::from_secs(1),
            sqlx::query_as::<_, (i64, f64)>(
                "SELECT count(*), COALESCE(extract(epoch FROM now() - min(received_at)), 0)::float8
                 FROM verdicts WHERE status = 'pending'",
            )
            .fetch_one(&h.pool),
        )
        .await;
        if let Ok(Ok((count, secs))) = unfinished {
            metrics::gauge!("bouncer_inflight_verdicts").set(count as f64);
            metrics::gauge!("bouncer_oldest_pending_verdict_seconds").set(secs);
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

/// Most connections served at once; a connection beyond it is closed as soon as it is accepted.
/// A scrape and a probe need one each: the cap bounds the descriptors that idle or hostile
/// clients can hold, and the header timeout bounds how long they hold them.
pub const MAX_CONNECTIONS: usize = 256;
/// A request's headers must arrive within this (a half-open request holds a connection).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// A connection is closed gracefully after this, however busy; Prometheus reconnects.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);
/// Largest request head read (GET requests carry nothing else).
pub const MAX_REQUEST_HEAD_BYTES: usize = 16 * 1024;

/// Serves until the process exits. Returns the bound address (useful with port 0).
pub async fn serve(
    listen: SocketAddr,
    metrics: Option<PrometheusHandle>,
    health: watch::Receiver<Option<Health>>,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(render_metrics))
        .with_state(AppState { metrics, health });
    tokio::spawn(accept_loop(listener, app));
    Ok(addr)
}

async fn accept_loop(listener: tokio::net::TcpListener, app: Router) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors, most likely: wait rather than spin.
                tracing::warn!(error = %e, "HTTP accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // Full: close it at once rather than leave it (and whoever waits behind it, a probe say)
        // in the accept queue.
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics::counter!("bouncer_http_connections_refused_total").increment(1);
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .max_buf_size(MAX_REQUEST_HEAD_BYTES)
                .serve_connection(TokioIo::new(stream), service);
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                () = tokio::time::sleep(CONNECTION_LIFETIME) => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(HEADER_READ_TIMEOUT, conn).await;
                }
            }
            drop(slot);
        });
    }
}
