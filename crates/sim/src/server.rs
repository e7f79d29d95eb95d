//! The HTTP surface: both vendors' APIs on `/` and the control API under `/_sim/`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Json, Router};
use serde::Deserialize;

use crate::call::{Answer, Call, render};
use crate::faults::Faults;
use crate::{JoinRequest, Sim, SimSettings};

async fn vendor_api(
    State(sim): State<Arc<Sim>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let query = uri.query().unwrap_or_default();
    let mut call = Call::default();
    let result = if headers.contains_key("x-tc-action") && (method == Method::POST || method == Method::GET) {
        sim.trtc(&method, &headers, query, &body, &mut call).await.map(|()| Answer::Trtc { error: None })
    } else if method == Method::GET && query.contains("Action=") {
        sim.zego(query, &mut call).await.map(|data| Answer::Zego { code: 0, message: "success".into(), data })
    } else {
        return (StatusCode::NOT_FOUND, "not a ZEGO or TRTC API call").into_response();
    };
    // A kick that succeeded removes its users from the simulator's room (with the callbacks).
    if result.is_ok() && !call.rule {
        let sim = sim.clone();
        let (vendor, app_id, room, numeric, users) =
            (call.vendor, call.app_id, call.room_id.clone(), call.room_numeric, call.user_ids.clone());
        sim.kicked(vendor, app_id, &room, numeric, &users);
    }
    let (answer, rejection) = match result {
        Ok(success) => (success, None),
        Err((answer, why)) => (answer, Some(why)),
    };
    sim.record(call, &answer, rejection);
    render(answer)
}

async fn put_faults(State(sim): State<Arc<Sim>>, Json(f): Json<Faults>) -> Response {
    match f.validate() {
        Ok(()) => {
            sim.set_faults(f);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => (StatusCode::UNPROCESSABLE_ENTITY, e).into_response(),
    }
}

async fn delete_faults(State(sim): State<Arc<Sim>>) -> StatusCode {
    sim.clear_faults();
    StatusCode::NO_CONTENT
}

async fn join(State(sim): State<Arc<Sim>>, Json(req): Json<JoinRequest>) -> Response {
    match sim.join(&req) {
        Ok(member) => {
            (StatusCode::OK, Json(serde_json::json!({"joined": true, "session_id": member.session_id}))).into_response()
        }
        Err(Ok(refused)) => {
            (StatusCode::FORBIDDEN, Json(serde_json::json!({"joined": false, "refused": refused.refused})))
                .into_response()
        }
        Err(Err(bad)) => (StatusCode::UNPROCESSABLE_ENTITY, bad).into_response(),
    }
}

async fn leave(State(sim): State<Arc<Sim>>, Json(req): Json<JoinRequest>) -> Response {
    match sim.leave(&req) {
        Ok(left) => Json(serde_json::json!({"left": left})).into_response(),
        Err(bad) => (StatusCode::UNPROCESSABLE_ENTITY, bad).into_response(),
    }
}

#[derive(Deserialize)]
struct CallbackUrl {
    url: Option<String>,
}

async fn rooms(State(sim): State<Arc<Sim>>) -> Response {
    let rooms: Vec<serde_json::Value> =
        sim.rooms().into_iter().map(|(k, members)| serde_json::json!({"room": k, "members": members})).collect();
    Json(rooms).into_response()
}

#[derive(Deserialize)]
struct Since {
    #[serde(default)]
    since: u64,
}

pub fn router(sim: Arc<Sim>) -> Router {
    Router::new()
        .route("/", any(vendor_api))
        .route("/_sim/stats", get(|State(s): State<Arc<Sim>>| async move { Json(s.stats()) }))
        .route("/_sim/metrics", get(|State(s): State<Arc<Sim>>| async move { s.prometheus() }))
        .route(
            "/_sim/requests",
            get(|State(s): State<Arc<Sim>>, Query(q): Query<Since>| async move { Json(s.records(q.since)) }),
        )
        .route("/_sim/faults", axum::routing::put(put_faults).delete(delete_faults))
        .route("/_sim/rules", get(|State(s): State<Arc<Sim>>| async move { Json(s.rules()) }))
        .route("/_sim/rooms", get(rooms))
        .route("/_sim/rooms/join", post(join))
        .route("/_sim/rooms/leave", post(leave))
        .route("/_sim/callbacks", get(|State(s): State<Arc<Sim>>| async move { Json(s.deliveries()) }))
        .route(
            "/_sim/callback_url",
            axum::routing::put(|State(s): State<Arc<Sim>>, Json(u): Json<CallbackUrl>| async move {
                s.set_callback_url(u.url);
                StatusCode::NO_CONTENT
            }),
        )
        .route(
            "/_sim/reset",
            post(|State(s): State<Arc<Sim>>| async move {
                s.reset();
                StatusCode::NO_CONTENT
            }),
        )
        .with_state(sim)
}

/// A simulator serving in the background of this process.
pub struct RunningSim {
    pub addr: SocketAddr,
    pub sim: Arc<Sim>,
    task: tokio::task::JoinHandle<()>,
}

impl RunningSim {
    /// `http://addr`, the endpoint to put in a config.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for RunningSim {
    fn drop(&mut self) {
        self.sim.release_hangs();
        self.task.abort();
    }
}

/// Binds `listen` and serves in a background task until the returned handle is dropped.
pub async fn start(settings: SimSettings, listen: SocketAddr) -> std::io::Result<RunningSim> {
    start_on(settings, listen, &tokio::runtime::Handle::current())
}

/// Like [`start`], serving on `runtime`: a simulator that measures call arrivals should not share
/// threads with busy work of its own process (tests give it a runtime of its own).
pub fn start_on(
    settings: SimSettings,
    listen: SocketAddr,
    runtime: &tokio::runtime::Handle,
) -> std::io::Result<RunningSim> {
    let std_listener = std::net::TcpListener::bind(listen)?;
    std_listener.set_nonblocking(true)?;
    let addr = std_listener.local_addr()?;
    let sim = Arc::new(Sim::new(settings));
    let app = router(sim.clone());
    let task = runtime.spawn(async move {
        // Registered with the reactor of the runtime that serves it.
        match tokio::net::TcpListener::from_std(std_listener) {
            Ok(listener) => {
                if let Err(e) = axum::serve(listener, app).await {
                    tracing::error!(error = %e, "simulator stopped");
                }
            }
            Err(e) => tracing::error!(error = %e, "simulator cannot listen"),
        }
    });
    Ok(RunningSim { addr, sim, task })
}
