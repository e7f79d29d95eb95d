//! One bounded HTTP server for every listener Bouncer opens (the worker's ops port, the console,
//! and any public listener to come): connections are served one by one with hyper, because
//! `axum::serve` bounds nothing. Each listener states its [`Limits`]; the limits and their whys
//! live here, once.
//!
//! - **a connection cap**: a connection beyond it is closed as soon as it is accepted, so idle or
//!   hostile clients hold a bounded number of descriptors and nothing waits in the accept queue;
//! - **a header-read timeout**: a half-sent request does not hold its connection;
//! - **a connection lifetime**: a connection is closed gracefully after it, however busy;
//! - **a head size**: the largest request head read.
//!
//! Every request sees its peer as `ConnectInfo<SocketAddr>`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What one listener allows.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Most connections served at once.
    pub max_connections: usize,
    /// A request's headers must arrive within this.
    pub header_read_timeout: Duration,
    /// A connection is closed gracefully after this.
    pub connection_lifetime: Duration,
    /// Largest request head read.
    pub max_request_head_bytes: usize,
    /// The metric label of connections refused at the cap.
    pub name: &'static str,
}

/// The worker's ops port (`/metrics`, `/healthz`, `/readyz`): a scrape and a probe need one
/// connection each; GET requests carry nothing but their head; Prometheus reconnects.
pub const OPS: Limits = Limits {
    max_connections: 256,
    header_read_timeout: Duration::from_secs(5),
    connection_lifetime: Duration::from_secs(60),
    max_request_head_bytes: 16 * 1024,
    name: "ops",
};

/// The console: people with browsers (a few connections each) and form posts; heads carry cookies.
pub const CONSOLE: Limits = Limits {
    max_connections: 512,
    header_read_timeout: Duration::from_secs(10),
    connection_lifetime: Duration::from_secs(120),
    max_request_head_bytes: 64 * 1024,
    name: "console",
};

/// Serves `app` on `listener` within `limits` until `shutdown`; then stops accepting and gives the
/// connections being served up to their header timeout to finish.
pub async fn serve(listener: TcpListener, app: Router, limits: Limits, shutdown: CancellationToken) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let connections = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = shutdown.cancelled() => break,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of descriptors, most likely: wait rather than spin.
                tracing::warn!(error = %e, listener = limits.name, "HTTP accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // Full: close it at once rather than leave it (and whoever waits behind it, a probe say)
        // in the accept queue.
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics::counter!("bouncer_http_connections_refused_total", "listener" => limits.name).increment(1);
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone().layer(axum::Extension(ConnectInfo(peer))));
        connections.spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .max_buf_size(limits.max_request_head_bytes)
                .serve_connection(TokioIo::new(stream), service);
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                () = tokio::time::sleep(limits.connection_lifetime) => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(limits.header_read_timeout, conn).await;
                }
            }
            drop(slot);
        });
    }
    connections.close();
    let _ = tokio::time::timeout(limits.header_read_timeout, connections.wait()).await;
}

/// Binds `listen` for [`serve`], naming the listener's config key in the error.
pub async fn bind(listen: SocketAddr, key: &str) -> Result<(TcpListener, SocketAddr), String> {
    let listener = TcpListener::bind(listen).await.map_err(|e| format!("{key} {listen}: {e}"))?;
    let addr = listener.local_addr().map_err(|e| format!("{key} {listen}: {e}"))?;
    Ok((listener, addr))
}
