//! One bounded HTTP server for every listener Bouncer opens (the worker's ops port, the console,
//! and any public listener to come): connections are served one by one with hyper, because
//! `axum::serve` bounds nothing. Each listener states its [`Limits`]; the limits and their whys
//! live here, once.
//!
//! - **a connection cap** that no client can use to starve a probe: when the listener is full, a
//!   new connection takes the place of the oldest one that is *not* serving a request (idle
//!   between requests, or still sending its head). A client that reconnects at once to keep every
//!   slot full only evicts its own half-sent connections, while a probe, which sends its request
//!   the moment it connects, is the newest and served within milliseconds. Only when every
//!   connection is mid-request is a new one closed at once;
//! - **a header-read timeout**: a half-sent request does not hold its connection;
//! - **a connection lifetime**: a connection is closed gracefully after it, however busy;
//! - **a head size**: the largest request head read.
//!
//! Every request sees its peer as `ConnectInfo<SocketAddr>`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
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

/// The connections a listener serves now, oldest first, and whether each is serving a request.
#[derive(Default)]
struct Open {
    next_id: u64,
    /// id (increasing with age) → (serving a request now, stops the connection).
    connections: BTreeMap<u64, (Arc<AtomicBool>, CancellationToken)>,
}

impl Open {
    /// Makes room for one more if needed (closing the oldest connection not serving a request)
    /// and registers it; `None` when every connection is mid-request.
    fn admit(&mut self, max: usize) -> Option<(u64, Arc<AtomicBool>, CancellationToken)> {
        if self.connections.len() >= max {
            let oldest_idle =
                self.connections.iter().find(|(_, (busy, _))| !busy.load(Ordering::Relaxed)).map(|(id, _)| *id)?;
            if let Some((_, stop)) = self.connections.remove(&oldest_idle) {
                stop.cancel();
            }
        }
        self.next_id += 1;
        let (busy, stop) = (Arc::new(AtomicBool::new(false)), CancellationToken::new());
        self.connections.insert(self.next_id, (busy.clone(), stop.clone()));
        Some((self.next_id, busy, stop))
    }
}

/// Serves `app` on `listener` within `limits` until `shutdown`; then stops accepting and gives the
/// connections being served up to their header timeout to finish.
pub async fn serve(listener: TcpListener, app: Router, limits: Limits, shutdown: CancellationToken) {
    let open = Arc::new(Mutex::new(Open::default()));
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
        let admitted = open.lock().unwrap_or_else(|e| e.into_inner()).admit(limits.max_connections);
        let Some((id, busy, stop)) = admitted else {
            // Every connection is mid-request: close this one at once rather than leave it (and
            // whoever waits behind it) in the accept queue.
            metrics::counter!("bouncer_http_connections_refused_total", "listener" => limits.name).increment(1);
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let serving = busy.clone();
        let app = app.clone().layer(axum::Extension(ConnectInfo(peer))).layer(axum::middleware::from_fn(
            move |request: axum::extract::Request, next: axum::middleware::Next| {
                let serving = serving.clone();
                async move {
                    serving.store(true, Ordering::Relaxed);
                    let response = next.run(request).await;
                    serving.store(false, Ordering::Relaxed);
                    response
                }
            },
        ));
        let service = TowerToHyperService::new(app);
        let open = open.clone();
        connections.spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .max_buf_size(limits.max_request_head_bytes)
                .serve_connection(TokioIo::new(stream), service);
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                // Evicted to make room: the connection was idle or still sending its head.
                () = stop.cancelled() => {}
                () = tokio::time::sleep(limits.connection_lifetime) => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(limits.header_read_timeout, conn).await;
                }
            }
            open.lock().unwrap_or_else(|e| e.into_inner()).connections.remove(&id);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_listener_closes_its_oldest_idle_connection_and_never_one_mid_request() {
        let mut open = Open::default();
        let (_, first_busy, first_stop) = open.admit(3).unwrap();
        let (_, _, second_stop) = open.admit(3).unwrap();
        let (_, third_busy, third_stop) = open.admit(3).unwrap();
        first_busy.store(true, Ordering::Relaxed);
        third_busy.store(true, Ordering::Relaxed);
        // Full: the oldest not serving a request (the second) makes room.
        let (_, fourth_busy, _) = open.admit(3).unwrap();
        assert!(second_stop.is_cancelled());
        assert!(!first_stop.is_cancelled() && !third_stop.is_cancelled());
        fourth_busy.store(true, Ordering::Relaxed);
        assert!(open.admit(3).is_none(), "every connection is mid-request");
    }
}
