//! `bouncer web`: the ops console. Server-rendered pages over the audit trail (overview, search,
//! a verdict's story, a user's verdicts and bans, bans, rejected messages), replay and lifting
//! bans, reading PostgreSQL only. Every value on a
//! page was written by a moderation pipeline about an abusive user, so everything is escaped by
//! the template engine, no page runs script (the Content-Security-Policy forbids it), and every
//! change is a POST with a CSRF token from a signed-in operator.

mod auth;
mod bans;
mod chart;
mod csrf;
mod pages;
mod replay;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderValue, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use secrecy::ExposeSecret;
use tokio_util::sync::CancellationToken;

use crate::audit::Db;
use crate::config::WebConfig;
use auth::{Actor, Auth, Refused};
use csrf::Csrf;

pub use auth::refusal;

/// The escaper of every `{{ }}` in the console's HTML templates (`askama.toml`): HTML-escaped as
/// askama's own escaper does, with control and bidi characters made visible as the CLI shows them
/// (`\u{202e}`), so data cannot reorder or hide what an operator reads. Line breaks stay.
#[derive(Clone, Copy, Debug, Default)]
pub struct VisibleHtml;

impl askama::filters::Escaper for VisibleHtml {
    fn write_escaped_str<W: std::fmt::Write>(&self, dest: W, string: &str) -> std::fmt::Result {
        askama::filters::Html.write_escaped_str(dest, &crate::text::for_page(string))
    }
}

/// What every handler shares: the pool, who may sign in, the CSRF key.
pub(crate) struct Console {
    pool: Db,
    auth: Auth,
    csrf: Csrf,
    /// `outcomes.enabled`: a lift from the Bans page is also a `bouncer.ban.lifted` event.
    events: bool,
}

impl FromRequestParts<Arc<Console>> for Actor {
    type Rejection = Refused;

    async fn from_request_parts(parts: &mut Parts, c: &Arc<Console>) -> Result<Actor, Refused> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(a)| *a)
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
        c.auth.actor(&parts.headers, peer).await
    }
}

const CSS: &str = include_str!("../../templates/web/console.css");

/// No script at all, styles from this origin only, forms post here only, never in a frame.
const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; \
                   frame-ancestors 'none'; base-uri 'none'";

async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let h = response.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // `same-origin`, not `no-referrer`: under `no-referrer` a browser sends `Origin: null` with the
    // console's own form posts, and the CSRF check compares `Origin` with `Host`. No referrer
    // leaves the console either way.
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The `Host` names the console answers to: its listen address (any name when it listens on every
/// address: sign-in is then required, and a browser sends no credentials to a rebound name),
/// `localhost` names on loopback, and `web.allowed_hosts`.
#[derive(Clone)]
struct Hosts {
    any: bool,
    names: Arc<Vec<String>>,
}

impl Hosts {
    fn of(config: &WebConfig) -> Hosts {
        let ip = config.listen.ip();
        let mut names = config.allowed_hosts.clone();
        names.push(match ip {
            std::net::IpAddr::V4(v4) => v4.to_string(),
            std::net::IpAddr::V6(v6) => format!("[{v6}]"),
        });
        if ip.is_loopback() {
            names.extend(["localhost", "127.0.0.1", "[::1]"].map(str::to_owned));
        }
        Hosts { any: ip.is_unspecified() && config.allowed_hosts.is_empty(), names: Arc::new(names) }
    }

    fn allows(&self, headers: &axum::http::HeaderMap) -> bool {
        if self.any {
            return true;
        }
        let mut values = headers.get_all(header::HOST).iter();
        let (Some(value), None) = (values.next(), values.next()) else { return false };
        let host = value.to_str().ok().and_then(crate::config::host_name);
        host.is_some_and(|h| self.names.contains(&h))
    }
}

/// Refuses a request for a name the console does not answer to (421 Misdirected Request): DNS
/// rebinding would otherwise let any web page read the console through a visitor's browser.
async fn check_host(hosts: Hosts, request: Request, next: Next) -> Response {
    if !hosts.allows(request.headers()) {
        return (axum::http::StatusCode::MISDIRECTED_REQUEST, "this console does not answer to that host name")
            .into_response();
    }
    next.run(request).await
}

fn router(console: Arc<Console>) -> Router {
    let hosts = Hosts::of(console.auth.config());
    Router::new()
        .route("/", get(pages::overview))
        .route("/verdicts", get(pages::verdicts))
        .route("/verdicts/{id}", get(pages::story))
        .route("/verdicts/{id}/replay", get(replay::confirm_one).post(replay::replay_one))
        .route("/replay", get(replay::confirm_all).post(replay::replay_all))
        .route("/users/{id}", get(pages::user))
        .route("/bans", get(bans::list))
        .route("/bans/{id}/lift", get(bans::confirm).post(bans::lift))
        .route("/rejected", get(pages::rejected))
        .route("/static/console.css", get(|| async { ([(header::CONTENT_TYPE, "text/css")], CSS).into_response() }))
        .layer(middleware::from_fn(move |r, n| check_host(hosts.clone(), r, n)))
        .layer(middleware::from_fn(security_headers))
        .with_state(console)
}

/// Serves the console on `config.listen` until `shutdown`; refuses a non-loopback address
/// without authentication ([`refusal`]).
pub async fn serve(pool: Db, config: WebConfig, events: bool, shutdown: CancellationToken) -> Result<(), String> {
    if let Some(why) = refusal(&config) {
        return Err(why);
    }
    let (listener, addr) = crate::serve::bind(config.listen, "web.listen").await?;
    tracing::info!(%addr, "console listening");
    let csrf = match &config.csrf_secret {
        Some(key) => Csrf::with_key(key.expose_secret().as_bytes()),
        None => Csrf::new(),
    };
    let console = Arc::new(Console { pool, auth: Auth::new(config), csrf, events });
    crate::serve::serve(listener, router(console), crate::serve::CONSOLE, shutdown).await;
    Ok(())
}
