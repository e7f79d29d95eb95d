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
use super::csrf::{CsrfRefusal, TOKEN_TTL, fingerprint};
use super::pages::{PageResult, SearchForm, render};
use crate::audit::AuditError;
use crate::audit::console;
use crate::audit::query::{self, Filter, ReplayCandidate};

/// Verdict ids listed on the bulk confirmation.
const SHOWN: usize = 20;
/// Verdicts a bulk replay selects at a time.
const BULK_PAGE: i64 = 500;

fn forbidden() -> PageResult {
    Ok((StatusCode::FORBIDDEN, "only operators replay verdicts").into_response())
}

fn refused_form(why: CsrfRefusal) -> PageResult {
    Ok((StatusCode::FORBIDDEN, why.message()).into_response())
}

/// What a single replay's form does, as its token names it.
fn one_action(id: &str) -> String {
    format!("replay:{id}")
}

/// What a bulk replay's form does: its fixed search.
fn all_action(form: &SearchForm) -> String {
    format!("replay-all:{}", form.query(&[]))
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

/// Why a replay POST is refused, if it is: not an operator, no valid CSRF token for this action,
/// or a confirmation already used (its token is spent here, once).
async fn refusal(
    c: &Console,
    actor: &Actor,
    action: &str,
    form: &ReplayForm,
    headers: &HeaderMap,
) -> Result<Option<PageResult>, AuditError> {
    if !actor.may_replay() {
        return Ok(Some(forbidden()));
    }
    if let Err(why) = c.csrf.check(&actor.name, action, &form.csrf, headers) {
        return Ok(Some(refused_form(why)));
    }
    if !console::spend_token(&c.pool, &fingerprint(&form.csrf), TOKEN_TTL).await? {
        let used = (StatusCode::CONFLICT, "this confirmation was already used; nothing was replayed twice");
        return Ok(Some(Ok(used.into_response())));
    }
    Ok(None)
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
    let csrf = c.csrf.token(&actor.name, &one_action(&id));
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
    if let Some(refused) = refusal(&c, &actor, &one_action(&id), &form, &headers).await? {
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
    let status = query::StatusFilter::parse(form.status.trim()).map_err(|e| format!("status: {e}"))?;
    query::replay_status_rule(Some(status)).map_err(|e| format!("status: {e}"))?;
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
    // A count and the first ids, not every candidate: eight operators confirming a replay of
    // 300,000 failed verdicts must not hold them all in memory.
    let count = usize::try_from(query::replay_count(&c.pool, &filter).await?).unwrap_or(0);
    let first = query::replay_page(&c.pool, &filter, None, SHOWN as i64).await?;
    render(BulkPage {
        filters: form.pairs().into_iter().map(|(k, v)| (k, v.to_owned())).collect(),
        count,
        shown: first.into_iter().map(|c| c.verdict_id).collect(),
        action: format!("/replay?{}", form.query(&[])),
        csrf: c.csrf.token(&actor.name, &all_action(&form)),
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
    if let Some(refused) = refusal(&c, &actor, &all_action(&form), &token, &headers).await? {
        return refused;
    }
    // Already fixed by the confirmation; fixing again only caps `until` at now, a no-op for it.
    let (form, filter) = match fixed(&form) {
        Ok(f) => f,
        Err(problem) => return Ok((StatusCode::BAD_REQUEST, problem).into_response()),
    };
    // Page by page (keyset), each page its own transactions: memory stays flat, and a partial
    // failure leaves what was done done (the count below says how far it got).
    let mut reopened = 0;
    let mut after = None;
    loop {
        let page = query::replay_page(&c.pool, &filter, after.as_ref(), BULK_PAGE).await?;
        let Some(last) = page.last() else { break };
        after = Some((last.received_at, last.verdict_id.clone()));
        reopened += reopen(&c, &page, &actor).await?;
        if (page.len() as i64) < BULK_PAGE {
            break;
        }
    }
    tracing::info!(actor = %single_line(&actor.name), reopened, filters = %single_line(&form.query(&[])), "bulk replay from the console");
    let list = SearchForm { status: String::new(), ..form };
    let replayed = reopened.to_string();
    Ok(Redirect::to(&format!("/verdicts?{}", list.query(&[("replayed", &replayed)]))).into_response())
}
