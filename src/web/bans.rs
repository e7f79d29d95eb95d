//! The console's Bans page: search bans by vendor, app, user, room and state, and lift one — a
//! GET that shows the ban and asks why, and a POST from a signed-in operator with the CSRF token
//! the GET handed out, recorded with the actor as `web:<name>` (viewers cannot lift).

use std::sync::Arc;

use askama::Template;
use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect};
use serde::Deserialize;

use super::Console;
use super::auth::Actor;
use super::csrf::{TOKEN_TTL, fingerprint};
use super::pages::{PageResult, VendorChoice, no_nul, render, some};
use crate::audit::bans::{self, BanFilter, BanRow, RoomRef};
use crate::audit::console;
use crate::ban::BanState;
use crate::text::single_line;

const PAGE: i64 = 50;

/// The Bans page's filters, as the form sends them.
#[derive(Deserialize, Default, Clone)]
pub(crate) struct BanSearch {
    #[serde(default)]
    user: String,
    #[serde(default)]
    room: String,
    #[serde(default)]
    app: String,
    #[serde(default)]
    vendor: String,
    #[serde(default)]
    state: String,
    /// Keyset cursor: the last row's id.
    #[serde(default)]
    before: String,
    /// Set by a lift's redirect.
    #[serde(default)]
    lifted: String,
}

impl BanSearch {
    fn filter(&self) -> Result<BanFilter, String> {
        for v in [&self.user, &self.room, &self.app, &self.vendor, &self.state] {
            if v.contains('\0') {
                return Err("a filter contains a NUL character".into());
            }
        }
        Ok(BanFilter {
            vendor: some(&self.vendor)
                .map(|v| crate::vendors::Vendor::parse(&v).ok_or_else(|| format!("vendor: unknown vendor {v:?}")))
                .transpose()?,
            app_id: some(&self.app).map(|a| a.parse().map_err(|_| format!("app: not an app id: {a}"))).transpose()?,
            user_id: some(&self.user),
            // A room by its text: numeric and string TRTC rooms of the same digits both show.
            room: some(&self.room).map(|text| RoomRef { text, numeric: None }),
            state: some(&self.state)
                .map(|s| {
                    s.parse::<BanState>()
                        .ok()
                        .ok_or_else(|| format!("state: must be active, expired or lifted, got {s:?}"))
                })
                .transpose()?,
            before_id: some(&self.before).and_then(|b| b.parse().ok()),
            limit: PAGE,
        })
    }

    fn next(&self, last: &BanRow) -> String {
        let mut q = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in [
            ("user", &self.user),
            ("room", &self.room),
            ("app", &self.app),
            ("vendor", &self.vendor),
            ("state", &self.state),
        ] {
            if !v.is_empty() {
                q.append_pair(k, v);
            }
        }
        q.append_pair("before", &last.id.to_string());
        format!("/bans?{}", q.finish())
    }
}

#[derive(Template)]
#[template(path = "web/bans.html")]
struct BansPage {
    actor: Actor,
    form: BanSearch,
    vendors: Vec<VendorChoice>,
    problem: Option<String>,
    rows: Vec<BanRow>,
    next: Option<String>,
    can_lift: bool,
}

/// `/bans`: bans newest first, filtered.
pub(crate) async fn list(State(c): State<Arc<Console>>, actor: Actor, Query(form): Query<BanSearch>) -> PageResult {
    let (rows, problem) = match form.filter() {
        Ok(f) => (bans::list(&c.pool, &f).await?, None),
        Err(p) => (Vec::new(), Some(p)),
    };
    let next = (rows.len() as i64 == PAGE).then(|| rows.last().map(|r| form.next(r))).flatten();
    let status = if problem.is_some() { StatusCode::BAD_REQUEST } else { StatusCode::OK };
    let vendors = VendorChoice::all(&form.vendor);
    let can_lift = actor.may_replay();
    let mut page = render(BansPage { actor, form, vendors, problem, rows, next, can_lift })?;
    *page.status_mut() = status;
    Ok(page)
}

fn action(id: i64) -> String {
    format!("lift:{id}")
}

fn forbidden() -> PageResult {
    Ok((StatusCode::FORBIDDEN, "only operators lift bans").into_response())
}

#[derive(Template)]
#[template(path = "web/lift.html")]
struct LiftPage {
    actor: Actor,
    ban: BanRow,
    csrf: String,
}

/// The confirmation: the ban, and a reason to give.
pub(crate) async fn confirm(State(c): State<Arc<Console>>, actor: Actor, Path(id): Path<i64>) -> PageResult {
    if !actor.may_replay() {
        return forbidden();
    }
    let Some(ban) = bans::one(&c.pool, id).await? else {
        return Ok((StatusCode::NOT_FOUND, "no such ban").into_response());
    };
    if !ban.state.is_active() {
        return Ok((StatusCode::CONFLICT, "this ban is not active; nothing to lift").into_response());
    }
    let csrf = c.csrf.token(&actor.name, &action(id));
    render(LiftPage { actor, ban, csrf })
}

#[derive(Deserialize)]
pub(crate) struct LiftForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    reason: String,
}

/// Lifts the ban: what `bouncer unban` does for one ban, recorded as `web:<name>`.
pub(crate) async fn lift(
    State(c): State<Arc<Console>>,
    actor: Actor,
    Path(id): Path<i64>,
    headers: HeaderMap,
    Form(form): Form<LiftForm>,
) -> PageResult {
    if !actor.may_replay() {
        return forbidden();
    }
    if let Err(why) = c.csrf.check(&actor.name, &action(id), &form.csrf, &headers) {
        return Ok((StatusCode::FORBIDDEN, why.message()).into_response());
    }
    no_nul("reason", &form.reason)?;
    let reason = form.reason.trim();
    if reason.is_empty() || reason.len() > crate::verdict::MAX_REASON_BYTES {
        return Ok((StatusCode::BAD_REQUEST, "reason: say why the ban ends early (at most 4096 bytes)").into_response());
    }
    if !console::spend_token(&c.pool, &fingerprint(&form.csrf), TOKEN_TTL).await? {
        return Ok((StatusCode::CONFLICT, "this confirmation was already used").into_response());
    }
    let actor_name = format!("web:{}", actor.name);
    let lifted = bans::lift_one(&c.pool, id, &actor_name, reason, c.events).await?;
    tracing::info!(ban_id = id, actor = %single_line(&actor_name), lifted = lifted.is_some(), "lift from the console");
    let Some(ban) = lifted else {
        return Ok((StatusCode::CONFLICT, "this ban is no longer active; nothing was lifted").into_response());
    };
    let user: String = url::form_urlencoded::byte_serialize(ban.user_id.as_bytes()).collect();
    Ok(Redirect::to(&format!("/bans?user={user}&lifted={id}")).into_response())
}
