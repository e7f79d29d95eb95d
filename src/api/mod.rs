//! The public API on `[api].listen`, served by `bouncer run` on every replica, stateless over
//! PostgreSQL: token servers ask whether a user is banned before issuing an entry ticket, and
//! callers with a token list and lift bans. One route table (below), one error type
//! ([`error::ApiError`]), bearer tokens from `[[api.tokens]]` compared in constant time.
//! Described by `deploy/api.openapi.json`, served at `/v1/openapi.json` without a token.

mod bans;
mod callbacks;
mod coalesce;
mod error;
mod known_bans;
mod params;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::header;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use secrecy::ExposeSecret;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio_util::sync::CancellationToken;

use crate::audit::Db;
use crate::audit::bans::{ActiveBan, CheckItem};
use crate::ban_index::{BanIndex, Lookup};
use crate::config::Config;
use error::ApiError;

/// The OpenAPI 3.1 document of this listener.
pub const OPENAPI: &str = include_str!("../../deploy/api.openapi.json");

/// How often the API's pool is brought back to its size (after PostgreSQL was away).
const KEEP_OPEN_EVERY: Duration = Duration::from_secs(1);

/// Largest request body: a check of 100 users of 128 bytes each is about 14 KiB.
const MAX_BODY_BYTES: usize = 64 * 1024;

/// What every handler shares.
#[derive(Clone)]
pub(crate) struct ApiState {
    db: Db,
    /// Checks, coalesced into few statements under load.
    checks: coalesce::Coalescer,
    /// SHA-256 of each configured token, with its name. Hashing first makes every comparison
    /// the same length, so its time says nothing about the token's length.
    tokens: Arc<Vec<(String, [u8; 32])>>,
    /// How long a request may wait for PostgreSQL before it is answered 503.
    database_timeout: Duration,
    /// 503s since the last one logged: an overloaded or unreachable database must not also
    /// flood the log (one line a second says it).
    refusals: Arc<Throttle>,
    /// The vendors' callback signing secrets, per app.
    callbacks: Arc<callbacks::CallbackKeys>,
    /// `outcomes.enabled`: lifts and re-entries are also outcome events.
    events: bool,
    /// This replica's copy of where bans hold: a check it says "not banned" to is answered
    /// without PostgreSQL.
    known_bans: Arc<BanIndex>,
}

/// At most one log line a second, counting what it held back.
#[derive(Default)]
pub(crate) struct Throttle {
    /// Milliseconds since `UNIX_EPOCH` of the last line.
    last_ms: std::sync::atomic::AtomicU64,
    held: std::sync::atomic::AtomicU64,
}

impl Throttle {
    /// `Some(how many were held back)` when a line may be written now.
    fn suppressed(&self) -> Option<u64> {
        use std::sync::atomic::Ordering::Relaxed;
        let now = chrono::Utc::now().timestamp_millis().max(0) as u64;
        let last = self.last_ms.load(Relaxed);
        if now.saturating_sub(last) >= 1000 && self.last_ms.compare_exchange(last, now, Relaxed, Relaxed).is_ok() {
            return Some(self.held.swap(0, Relaxed));
        }
        self.held.fetch_add(1, Relaxed);
        None
    }
}

/// The name of the token a request came with (`[[api.tokens]] name`): the actor of a lift.
#[derive(Clone, Debug)]
pub(crate) struct Caller(pub(crate) String);

impl ApiState {
    /// `work` within the database budget; any failure to answer is a 503 (logged here, at most
    /// once a second, never shown to the caller).
    ///
    /// The budget is enforced where waiting happens — the pool's acquire timeout is
    /// `database_timeout`, and an unreachable server fails at once — not by cancelling a query in
    /// flight: a cancelled query leaves its connection mid-protocol, the pool closes it, and under
    /// load the API would spend its time opening connections (each a new server process) and
    /// never catch up. The outer timeout only guards against a server that stops answering
    /// mid-query (a network cut), at a multiple of the budget.
    async fn within<T, E: std::fmt::Display>(&self, work: impl Future<Output = Result<T, E>>) -> Result<T, ApiError> {
        match tokio::time::timeout(self.database_timeout * 5, work).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(self.unavailable(e)),
            Err(_) => Err(self.unavailable(format!("no answer within {} ms", (self.database_timeout * 5).as_millis()))),
        }
    }

    /// Checks: those the replica's copy of bans says "not banned" to at once, the others through
    /// the coalescer, within the database budget: a check still waiting for its statement when
    /// the budget runs out is answered 503 (the statement is not cancelled).
    async fn check(&self, items: Vec<CheckItem>) -> Result<Vec<Option<ActiveBan>>, ApiError> {
        let ask: Vec<usize> = (0..items.len())
            .filter(|&i| {
                let it = &items[i];
                let room = it.room.as_ref().map(|r| (r.text.as_str(), r.numeric));
                self.known_bans.lookup(it.vendor.as_str(), i64::from(it.app_id), &it.user_id, room) == Lookup::Ask
            })
            .collect();
        metrics::counter!("bouncer_ban_checks_from_memory_total").increment((items.len() - ask.len()) as u64);
        if ask.is_empty() {
            return Ok(vec![None; items.len()]);
        }
        let n = items.len();
        let asked: Vec<CheckItem> =
            if ask.len() == n { items } else { ask.iter().map(|&i| items[i].clone()).collect() };
        match tokio::time::timeout(self.database_timeout, self.checks.check(asked)).await {
            Ok(Ok(found)) if ask.len() == n => Ok(found),
            Ok(Ok(found)) => {
                let mut all = vec![None; n];
                for (i, ban) in ask.into_iter().zip(found) {
                    all[i] = ban;
                }
                Ok(all)
            }
            Ok(Err(e)) => Err(self.unavailable(e)),
            Err(_) => Err(self.unavailable(format!("no answer within {} ms", self.database_timeout.as_millis()))),
        }
    }

    /// A 503 for a database that did not answer: counted, logged at most once a second.
    fn unavailable(&self, failure: impl std::fmt::Display) -> ApiError {
        metrics::counter!("bouncer_database_errors_total", "op" => "api").increment(1);
        if let Some(suppressed) = self.refusals.suppressed() {
            tracing::warn!(error = %failure, more_since_last_log = suppressed, "API: PostgreSQL did not answer; 503");
        }
        ApiError::unavailable()
    }

    /// The configured token `presented` is, by name: every token is compared, in constant time.
    fn caller(&self, presented: &[u8]) -> Option<Caller> {
        let digest: [u8; 32] = Sha256::digest(presented).into();
        let mut found = None;
        for (name, known) in self.tokens.iter() {
            if bool::from(known.ct_eq(&digest)) {
                found = Some(Caller(name.clone()));
            }
        }
        found
    }
}

/// The route table.
fn routes(state: ApiState) -> Router {
    let authed = Router::new()
        .route("/v1/bans/check", get(bans::check_one).post(bans::check_many))
        .route("/v1/bans", get(bans::list))
        .route("/v1/bans/lift", post(bans::lift))
        .route_layer(middleware::from_fn_with_state(state.clone(), authenticate));
    Router::new()
        .route("/v1/openapi.json", get(openapi))
        // Vendors sign their callbacks; they cannot send a bearer token.
        .route("/v1/callbacks/zego/{app_id}", post(callbacks::zego))
        .route("/v1/callbacks/trtc/{sdk_app_id}", post(callbacks::trtc))
        .merge(authed)
        .fallback(|| async { ApiError::not_found() })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn(observe))
        .with_state(state)
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

/// Refuses a request without one of `[[api.tokens]]` (401; nothing of what was sent is logged).
async fn authenticate(State(s): State<ApiState>, mut request: Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim().as_bytes().to_vec());
    match presented.and_then(|t| s.caller(&t)) {
        Some(caller) => {
            request.extensions_mut().insert(caller);
            next.run(request).await
        }
        None => {
            metrics::counter!("bouncer_api_unauthorized_total").increment(1);
            ApiError::unauthorized().into_response()
        }
    }
}

/// Counts and times every request by route and status; a body over the limit becomes a JSON 413.
async fn observe(request: Request, next: Next) -> Response {
    let route = route_label(request.uri().path());
    let started = Instant::now();
    let mut response = next.run(request).await;
    if response.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE
        && response.headers().get(header::CONTENT_TYPE).is_none_or(|c| c != "application/json")
    {
        response = ApiError::too_large(MAX_BODY_BYTES).into_response();
    }
    let status = response.status().as_u16().to_string();
    metrics::counter!("bouncer_api_requests_total", "route" => route, "status" => status).increment(1);
    metrics::histogram!("bouncer_api_request_duration_seconds", "route" => route)
        .record(started.elapsed().as_secs_f64());
    response
}

/// A route's metric label: the table's paths are few and fixed.
fn route_label(path: &str) -> &'static str {
    match path {
        "/v1/bans/check" => "/v1/bans/check",
        "/v1/bans" => "/v1/bans",
        "/v1/bans/lift" => "/v1/bans/lift",
        "/v1/openapi.json" => "/v1/openapi.json",
        p if p.starts_with("/v1/callbacks/zego/") => "/v1/callbacks/zego/{app_id}",
        p if p.starts_with("/v1/callbacks/trtc/") => "/v1/callbacks/trtc/{sdk_app_id}",
        _ => "other",
    }
}

/// The public API being served: its address, and the runtime it runs on.
pub struct Serving {
    pub addr: SocketAddr,
    runtime: tokio::runtime::Runtime,
    stop: CancellationToken,
    known_bans: Arc<BanIndex>,
}

impl Serving {
    /// The copy of where bans hold that the checks answer from: the process's intake adds the
    /// bans it records to it ([`crate::worker::run`]).
    pub fn known_bans(&self) -> Arc<BanIndex> {
        self.known_bans.clone()
    }

    /// Stops accepting, gives requests being answered a moment, then stops the API's runtime.
    pub async fn stop(self) {
        self.stop.cancel();
        tokio::time::sleep(Duration::from_millis(200)).await;
        self.runtime.shutdown_background();
    }
}

/// Binds `[api].listen` (if set) and serves until [`Serving::stop`] — after the worker has
/// stopped, so a replica being replaced keeps answering token servers while it drains — on a
/// runtime of its own: a token
/// server's check must not wait behind intake recording a burst on the worker's runtime (the OS
/// shares the cores between the two; tokio would run the check only when an intake task yields).
/// The listener's pool is opened in the background and kept open, so the API answers 503 — not a
/// refused connection — while PostgreSQL is away, and requests never wait for a connection to
/// be opened.
pub async fn serve(config: &Config) -> Result<Option<Serving>, String> {
    let (api, postgres) = (&config.api, &config.postgres);
    let Some(listen) = api.listen else { return Ok(None) };
    let keys = Arc::new(callbacks::CallbackKeys::from_config(config, crate::worker::worker_id(config).0));
    let events = config.outcomes.enabled;
    let shutdown = CancellationToken::new();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name(crate::priority::API_THREAD)
        .enable_all()
        .build()
        .map_err(|e| format!("api: cannot start its runtime: {e}"))?;
    let db = Db::connect_kept_open(postgres, api.max_connections, api.database_timeout)
        .map_err(|e| format!("api: PostgreSQL connection settings: {e}"))?;
    let tokens = api
        .tokens
        .iter()
        .map(|t| (t.name.clone(), Sha256::digest(t.token.expose_secret().as_bytes()).into()))
        .collect();
    let (size, database_timeout) = (api.max_connections, api.database_timeout);
    let known_bans = Arc::new(BanIndex::new());
    // The copy is followed on the caller's runtime, not the API's: loading it is bulk work.
    match crate::audit::bulk_session_pool(postgres, Duration::from_secs(5)) {
        Some(session) => {
            tokio::spawn(known_bans::follow(session, known_bans.clone(), shutdown.clone()));
        }
        None => tracing::info!(
            "no session connection behind a transaction pooler without postgres.direct_url: every ban check asks PostgreSQL"
        ),
    }
    let index = known_bans.clone();
    // Sockets, connections and the coalescer's task belong to the runtime that creates them:
    // bind, connect and start there.
    let stop = shutdown.clone();
    let started = runtime.spawn(async move {
        let state = ApiState {
            checks: coalesce::Coalescer::start(db.clone(), size as usize),
            db: db.clone(),
            tokens: Arc::new(tokens),
            database_timeout,
            refusals: Arc::new(Throttle::default()),
            callbacks: keys.clone(),
            events,
            known_bans: index,
        };
        tokio::spawn(callbacks::housekeeping(db.clone(), keys, shutdown.clone()));
        let (listener, addr) = crate::serve::bind(listen, "api.listen").await?;
        tokio::spawn(db.keep_open(size, KEEP_OPEN_EVERY, shutdown.clone()));
        tokio::spawn(crate::serve::serve(listener, routes(state), crate::serve::API, shutdown));
        Ok::<_, String>(addr)
    });
    let addr = started.await.map_err(|e| format!("api: {e}"))??;
    Ok(Some(Serving { addr, runtime, stop, known_bans }))
}
