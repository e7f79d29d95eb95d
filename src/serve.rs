//! One bounded HTTP server for every listener Bouncer opens (the worker's ops port, the console,
//! and the public API): connections are served one by one with hyper, because
//! `axum::serve` bounds nothing. Each listener states its [`Limits`]; the limits and their whys
//! live here, once.
//!
//! - **a connection cap** that no client can use to starve a probe: when the listener is full, a
//!   new connection takes the place of one held by the address holding the most connections — the
//!   oldest of its connections that has *never completed a request* (still sending its first
//!   head), else its oldest idle one. A client that floods the listener from one address, or a
//!   few, only ever evicts its own connections, while the kubelet's probes and the scraper come
//!   from addresses of their own and hold one or two. (Many attacking addresses degrade this
//!   toward "oldest first"; the NetworkPolicy in `deploy/k8s` keeps them out.) Only when no
//!   connection is evictable (all mid-request) is a new one closed at once;
//! - **a header-read timeout**: a half-sent request does not hold its connection;
//! - **a connection lifetime**: a connection is closed gracefully after it, however busy;
//! - **a head size**: the largest request head read.
//!
//! Every request sees its peer as `ConnectInfo<SocketAddr>`.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
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

/// The public API (`[api]`): token servers ask before every ticket they issue, from pools of
/// keep-alive connections (several replicas of several apps); requests are small (a check names
/// at most 100 users) and answered in milliseconds.
pub const API: Limits = Limits {
    max_connections: 1024,
    header_read_timeout: Duration::from_secs(5),
    connection_lifetime: Duration::from_secs(300),
    max_request_head_bytes: 16 * 1024,
    name: "api",
};

/// What a connection is doing, as eviction reads it.
#[derive(Default)]
struct ConnState {
    /// Serving a request now.
    busy: AtomicBool,
    /// Has completed a request (a real client, not a half-sent head).
    served: AtomicBool,
}

/// The connections a listener serves now, oldest first.
#[derive(Default)]
struct Open {
    next_id: u64,
    /// id (increasing with age) → (its peer, its state, stops the connection).
    connections: BTreeMap<u64, (IpAddr, Arc<ConnState>, CancellationToken)>,
    /// Connections held per peer address.
    per_peer: HashMap<IpAddr, usize>,
}

impl Open {
    /// Makes room for one more if needed (closing the oldest connection that never completed a
    /// request, else the oldest idle one) and registers it; `None` when every connection is
    /// mid-request.
    fn admit(&mut self, peer: IpAddr, max: usize) -> Option<(u64, Arc<ConnState>, CancellationToken)> {
        if self.connections.len() >= max {
            let victim = self.victim()?;
            self.remove(victim);
        }
        self.next_id += 1;
        let (state, stop) = (Arc::new(ConnState::default()), CancellationToken::new());
        self.connections.insert(self.next_id, (peer, state.clone(), stop.clone()));
        *self.per_peer.entry(peer).or_default() += 1;
        Some((self.next_id, state, stop))
    }

    /// The connection to close for a new one: the busiest address's oldest half-sent connection,
    /// else its oldest idle one; failing those, anyone's, in the same order.
    fn victim(&self) -> Option<u64> {
        let idle = |c: &ConnState| !c.busy.load(Ordering::Relaxed);
        let never_served = |c: &ConnState| idle(c) && !c.served.load(Ordering::Relaxed);
        let pick = |of: Option<IpAddr>| {
            let mine = |p: &IpAddr| of.is_none_or(|o| o == *p);
            self.connections
                .iter()
                .find(|(_, (p, c, _))| mine(p) && never_served(c))
                .or_else(|| self.connections.iter().find(|(_, (p, c, _))| mine(p) && idle(c)))
                .map(|(id, _)| *id)
        };
        let busiest = self.per_peer.iter().max_by_key(|(_, n)| **n).map(|(p, _)| *p);
        pick(busiest).or_else(|| pick(None))
    }

    /// Forgets a connection (ended, or evicted: then it is also stopped).
    fn remove(&mut self, id: u64) {
        if let Some((peer, _, stop)) = self.connections.remove(&id) {
            stop.cancel();
            if let Some(n) = self.per_peer.get_mut(&peer) {
                *n -= 1;
                if *n == 0 {
                    self.per_peer.remove(&peer);
                }
            }
        }
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
        let admitted = open.lock().unwrap_or_else(|e| e.into_inner()).admit(peer.ip(), limits.max_connections);
        let Some((id, state, stop)) = admitted else {
            // Every connection is mid-request: close this one at once rather than leave it (and
            // whoever waits behind it) in the accept queue.
            metrics::counter!("bouncer_http_connections_refused_total", "listener" => limits.name).increment(1);
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone().layer(axum::Extension(ConnectInfo(peer))).layer(axum::middleware::from_fn(
            move |request: axum::extract::Request, next: axum::middleware::Next| {
                let state = state.clone();
                async move {
                    state.busy.store(true, Ordering::Relaxed);
                    let response = next.run(request).await;
                    state.served.store(true, Ordering::Relaxed);
                    state.busy.store(false, Ordering::Relaxed);
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
            open.lock().unwrap_or_else(|e| e.into_inner()).remove(id);
        });
    }
    connections.close();
    let _ = tokio::time::timeout(limits.header_read_timeout, connections.wait()).await;
}

/// Connections the kernel queues before they are accepted. The standard library's 128 overflows
/// under a flood of connections, and a probe whose SYN is dropped waits a second to try again;
/// the kernel caps this at `net.core.somaxconn`.
const ACCEPT_BACKLOG: u32 = 4096;

/// Binds `listen` for [`serve`], naming the listener's config key in the error.
pub async fn bind(listen: SocketAddr, key: &str) -> Result<(TcpListener, SocketAddr), String> {
    let err = |e: std::io::Error| format!("{key} {listen}: {e}");
    let socket = if listen.is_ipv4() { tokio::net::TcpSocket::new_v4() } else { tokio::net::TcpSocket::new_v6() }
        .map_err(err)?;
    socket.set_reuseaddr(true).map_err(err)?;
    socket.bind(listen).map_err(err)?;
    let listener = socket.listen(ACCEPT_BACKLOG).map_err(err)?;
    let addr = listener.local_addr().map_err(err)?;
    Ok((listener, addr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_listener_closes_a_half_sent_connection_first_then_an_idle_one_never_one_mid_request() {
        let me: IpAddr = [10, 0, 0, 1].into();
        let mut open = Open::default();
        let (_, scraper, scraper_stop) = open.admit(me, 3).unwrap();
        let (_, _, half_sent_stop) = open.admit(me, 3).unwrap();
        let (_, busy, busy_stop) = open.admit(me, 3).unwrap();
        scraper.served.store(true, Ordering::Relaxed); // kept alive between scrapes, older
        busy.busy.store(true, Ordering::Relaxed);
        // Full: the half-sent one goes, though the scraper's connection is older.
        let (_, fourth, _) = open.admit(me, 3).unwrap();
        assert!(half_sent_stop.is_cancelled());
        assert!(!scraper_stop.is_cancelled() && !busy_stop.is_cancelled());
        // With no half-sent connection left, the oldest idle one does.
        fourth.busy.store(true, Ordering::Relaxed);
        let (_, fifth, _) = open.admit(me, 3).unwrap();
        assert!(scraper_stop.is_cancelled());
        fifth.busy.store(true, Ordering::Relaxed);
        assert!(open.admit(me, 3).is_none(), "every connection is mid-request");
    }

    #[test]
    fn a_flooding_address_only_ever_evicts_its_own_connections() {
        let (kubelet, attacker): (IpAddr, IpAddr) = ([10, 0, 0, 9].into(), [10, 6, 6, 6].into());
        let mut open = Open::default();
        let (_, _, probe_stop) = open.admit(kubelet, 4).unwrap(); // oldest, still sending its head
        let stops: Vec<_> = (0..3).map(|_| open.admit(attacker, 4).unwrap().2).collect();
        for _ in 0..100 {
            open.admit(attacker, 4).unwrap();
        }
        assert!(!probe_stop.is_cancelled(), "the probe's connection survived the flood");
        assert!(stops.iter().all(CancellationToken::is_cancelled));
        assert_eq!(open.per_peer[&kubelet], 1);
        assert_eq!(open.per_peer[&attacker], 3);
    }
}
