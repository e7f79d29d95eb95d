//! Replay from the console: one verdict from its story, or every failed verdict a search found.
//! The same database operation as `bouncer replay` (`audit::query::reopen_for_replay`), recorded
//! with the signed-in actor as `web:<name>`. Each is a GET that shows what will happen and a POST
//! that does it, carrying the CSRF token the GET handed out.

use crate::text::single_line;
use std::sync::Arc;

use askama::Template;
use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect};
use chrono::Utc;
use serde::Deserialize;

use super::Console;
use super::auth::Actor;
use super::pages::{PageResult, SearchForm, render};
use crate::audit::AuditError;
use crate::audit::query::{self, Filter, ReplayCandidate};

/// Verdict ids listed on the bulk confirmation.
const SHOWN: usize = 20;

fn forbidden() -> PageResult {
    Ok((StatusCode::FORBIDDEN, "only operators replay verdicts").into_response())
}

fn cross_site() -> PageResult {
    Ok((StatusCode::FORBIDDEN, "refused: this form did not come from the console (CSRF)").into_response())
}

fn url_part(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[derive(Deserialize)]
pub(crate) struct ReplayForm {
    #[serde(default)]
    csrf: String,
}

/// Reopens `candidates` as the signed-in actor, recorded as `web:<name>`.
async fn reopen(c: &Console, candidates: &[ReplayCandidate], actor: &Actor) -> Result<usize, AuditError> {
    query::replay(&c.pool, candidates, &format!("web:{}", actor.name), |_| {}).await
}

/// Why a replay POST is refused, if it is: not an operator, or no valid CSRF token.
fn refusal(c: &Console, actor: &Actor, form: &ReplayForm, headers: &HeaderMap) -> Option<PageResult> {
    if !actor.may_replay() {
        return Some(forbidden());
    }
    (!c.csrf.allows(&actor.name, &form.csrf, headers)).then(cross_site)
}

#[derive(Template)]
#[template(path = "web/replay.html")]
struct ReplayPage {
    actor: Actor,
    verdict_id: String,
    csrf: String,
}

/// The confirmation for one verdict.
pub(crate) async fn confirm_one(State(c): State<Arc<Console>>, actor: Actor, Path(id): Path<String>) -> PageResult {
    if !actor.may_replay() {
        return forbidden();
    }
    let csrf = c.csrf.token(&actor.name);
    render(ReplayPage { actor, verdict_id: id, csrf })
}

/// One verdict, back to work: what `bouncer replay --verdict ID` does.
pub(crate) async fn replay_one(
    State(c): State<Arc<Console>>,
    actor: Actor,
    Path(id): Path<String>,
    headers: HeaderMap,
    Form(form): Form<ReplayForm>,
) -> PageResult {
    if let Some(refused) = refusal(&c, &actor, &form, &headers) {
        return refused;
    }
    let filter = Filter { verdicts: vec![id.clone()], ..Filter::default() };
    let reopened = reopen(&c, &query::replay_candidates(&c.pool, &filter).await?, &actor).await?;
    tracing::info!(verdict_id = %single_line(&id), actor = %single_line(&actor.name), reopened, "replay from the console");
    Ok(Redirect::to(&format!("/verdicts/{}", url_part(&id))).into_response())
}

/// The search a bulk replay acts on, fixed in time: relative times become absolute and `until`
/// becomes the moment of the confirmation, so the POST replays what the operator was shown, not
/// verdicts that failed since.
fn fixed(form: &SearchForm) -> Result<(SearchForm, Filter), String> {
    // A bulk replay names its status (the list it confirms shows one); the rule is the CLI's.
    let status = Some(form.status.trim()).filter(|s| !s.is_empty()).unwrap_or("(none)");
    crate::audit::query::replay_status_rule(Some(status)).map_err(|e| format!("status: {e}"))?;
    let mut filter = form.filter()?;
    let now = Utc::now();
    filter.until = Some(filter.until.map_or(now, |u| u.min(now)));
    let fixed = SearchForm {
        since: filter.since.map(|t| t.to_rfc3339()).unwrap_or_default(),
        until: filter.until.map(|t| t.to_rfc3339()).unwrap_or_default(),
        ..form.clone()
    };
    Ok((fixed, filter))
}

#[derive(Template)]
#[template(path = "web/replay_all.html")]
struct BulkPage {
    actor: Actor,
    filters: Vec<(&'static str, String)>,
    count: usize,
    shown: Vec<String>,
    action: String,
    csrf: String,
}

/// The confirmation for every verdict a search found: how many, the first few, the filters.
pub(crate) async fn confirm_all(
    State(c): State<Arc<Console>>,
    actor: Actor,
    Query(form): Query<SearchForm>,
) -> PageResult {
    if !actor.may_replay() {
        return forbidden();
    }
    let (form, filter) = match fixed(&form) {
        Ok(f) => f,
        Err(problem) => return Ok((StatusCode::BAD_REQUEST, problem).into_response()),
    };
    let candidates = query::replay_candidates(&c.pool, &filter).await?;
    render(BulkPage {
        filters: form.pairs().into_iter().map(|(k, v)| (k, v.to_owned())).collect(),
        count: candidates.len(),
        shown: candidates.iter().take(SHOWN).map(|c| c.verdict_id.clone()).collect(),
        action: format!("/replay?{}", form.query(&[])),
        csrf: c.csrf.token(&actor.name),
        actor,
    })
}

/// Every verdict the (fixed) search finds, back to work: what `bouncer replay` with the same
/// filters does.
pub(crate) async fn replay_all(
    State(c): State<Arc<Console>>,
    actor: Actor,
    Query(form): Query<SearchForm>,
    headers: HeaderMap,
    Form(token): Form<ReplayForm>,
) -> PageResult {
    if let Some(refused) = refusal(&c, &actor, &token, &headers) {
        return refused;
    }
    // Already fixed by the confirmation; fixing again only caps `until` at now, a no-op for it.
    let (form, filter) = match fixed(&form) {
        Ok(f) => f,
        Err(problem) => return Ok((StatusCode::BAD_REQUEST, problem).into_response()),
    };
    let reopened = reopen(&c, &query::replay_candidates(&c.pool, &filter).await?, &actor).await?;
    tracing::info!(actor = %actor.name, reopened, filters = %form.query(&[]), "bulk replay from the console");
    let list = SearchForm { status: String::new(), ..form };
    let replayed = reopened.to_string();
    Ok(Redirect::to(&format!("/verdicts?{}", list.query(&[("replayed", &replayed)]))).into_response())
}
