//! The console's pages: each handler reads PostgreSQL and renders one template. Everything shown
//! passes through askama's HTML escaping; nothing from the database is marked safe.

use std::sync::Arc;

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::Deserialize;

use super::Console;
use super::auth::Actor;
use super::chart::{self, Chart};
use crate::audit::console::{self, RejectedView, VerdictRow};
use crate::audit::query::{self, Story};
use crate::audit::{leases, work};
use crate::states::VerdictStatus;

const PAGE: i64 = 50;

/// Why a page could not be served.
pub(crate) enum PageError {
    /// Reading or rendering failed: shown without details (they go to the log).
    Internal(String),
    /// A parameter the console cannot use: 400, naming it.
    Parameter { name: &'static str, why: &'static str },
}

impl<E: std::fmt::Display> From<E> for PageError {
    fn from(e: E) -> Self {
        PageError::Internal(e.to_string())
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        match self {
            PageError::Internal(e) => {
                tracing::error!(error = %crate::text::single_line(&e), "console page failed");
                (StatusCode::INTERNAL_SERVER_ERROR, "the console could not read the audit database; see its log")
                    .into_response()
            }
            PageError::Parameter { name, why } => (StatusCode::BAD_REQUEST, format!("{name}: {why}")).into_response(),
        }
    }
}

/// Refuses a value PostgreSQL cannot take as text (a NUL character) before it gets there.
pub(crate) fn no_nul(name: &'static str, value: &str) -> Result<(), PageError> {
    if value.contains('\0') {
        return Err(PageError::Parameter { name, why: "contains a NUL character" });
    }
    Ok(())
}

pub(crate) type PageResult = Result<Response, PageError>;

pub(crate) fn render(t: impl Template) -> PageResult {
    Ok(Html(t.render()?).into_response())
}

/// A percentile read off the rollups' latency buckets: at most the bucket's upper bound.
fn at_most_ms(v: Option<f64>) -> String {
    match v {
        Some(v) if v.is_infinite() => "> 300000 ms".into(),
        Some(v) => format!("≤ {v:.0} ms"),
        None => "–".into(),
    }
}

struct PendingRow {
    vendor: String,
    app_id: i64,
    pending_users: i64,
    due_users: i64,
    oldest: String,
}

#[derive(Template)]
#[template(path = "web/overview.html")]
struct Overview {
    actor: Actor,
    day: console::Totals,
    latency: (String, String, String),
    charts: Vec<Chart>,
    failures: Vec<console::FailureCode>,
    pending: Vec<PendingRow>,
    owners: Vec<leases::OwnerRow>,
    workers: Vec<leases::WorkerRow>,
    live_replicas: usize,
    /// Outcome events waiting in the outbox, and the oldest's age in seconds.
    outbox: (i64, String),
}

/// Series in a fixed order (so colours and stacking do not move between refreshes): what went
/// well at the bottom.
const VERDICT_SERIES: &[&str] =
    &["zego done", "trtc done", "zego pending", "trtc pending", "zego failed", "trtc failed"];
const KICK_SERIES: &[&str] =
    &["zego ok", "trtc ok", "zego gone", "trtc gone", "zego retry", "trtc retry", "zego permanent", "trtc permanent"];

/// Verdicts and kicked users per minute, over the last hour (one bar a minute) and the last day
/// (one bar per 15 minutes, as a per-minute average): verdicts hour, verdicts day, kicks hour,
/// kicks day.
async fn charts(pool: &crate::audit::Db) -> Result<(Vec<Chart>, console::Totals), PageError> {
    let now = Utc::now();
    let (hour, day) = ((60, 1), (24 * 60, 15));
    let (vh, vd, kh, kd, rejected) = tokio::try_join!(
        console::verdicts_over_time(pool, hour.0, hour.1),
        console::verdicts_over_time(pool, day.0, day.1),
        console::kicks_over_time(pool, hour.0, hour.1),
        console::kicks_over_time(pool, day.0, day.1),
        console::rejected_count(pool, 24),
    )?;
    let draw = |what: &str, samples: &[console::Sample], (minutes, bucket): (i32, i32), order| {
        let span = if minutes == hour.0 { "last hour" } else { "last 24 h (15-minute averages)" };
        let width = chrono::Duration::minutes(bucket.into());
        chart::stacked(&format!("{what} per minute, {span}"), samples, now, (minutes / bucket) as usize, width, order)
    };
    let charts = vec![
        draw("Verdicts", &vh, hour, VERDICT_SERIES),
        draw("Verdicts", &vd, day, VERDICT_SERIES),
        draw("Kicks by outcome", &kh, hour, KICK_SERIES),
        draw("Kicks by outcome", &kd, day, KICK_SERIES),
    ];
    Ok((charts, console::Totals::of(&vd, rejected)))
}

/// Each part is its own query over the last day; they run side by side on the pool's
/// connections, so the page costs about its slowest query, not their sum.
pub(crate) async fn overview(State(c): State<Arc<Console>>, actor: Actor) -> PageResult {
    let pool = &c.pool;
    let (l, pending, workers, (charts, day), failures, owners, outbox) = tokio::try_join!(
        // The last hour: how fast enforcement is now (and a tenth of a busy day's sort).
        async { Ok::<_, PageError>(console::latency(pool, 60).await?) },
        async { Ok(work::pending_by_app(pool).await?) },
        async { Ok(leases::workers(pool).await?) },
        charts(pool),
        async { Ok(console::failures_by_code(pool, 24).await?) },
        async { Ok(leases::owners(pool).await?) },
        async { Ok(crate::audit::outbox::depth(pool).await?) },
    )?;
    render(Overview {
        live_replicas: workers.iter().filter(|w| w.live).count(),
        day,
        latency: (at_most_ms(l.p50), at_most_ms(l.p95), at_most_ms(l.p99)),
        charts,
        failures,
        pending: pending
            .into_iter()
            .map(|p| PendingRow {
                vendor: p.vendor,
                app_id: p.app_id,
                pending_users: p.pending_users,
                due_users: p.due_users,
                oldest: p.oldest_pending_at.map(|t| t.to_string()).unwrap_or_default(),
            })
            .collect(),
        owners,
        workers,
        actor,
        outbox: (outbox.0, format!("{:.1}", outbox.1)),
    })
}

/// One vendor in the search form's choices.
pub(crate) struct VendorChoice {
    pub(crate) name: &'static str,
    pub(crate) selected: bool,
}

impl VendorChoice {
    pub(crate) fn all(chosen: &str) -> Vec<VendorChoice> {
        crate::vendors::NAMES.iter().map(|name| VendorChoice { name, selected: chosen.trim() == *name }).collect()
    }
}

/// The search form as typed (strings, so that it shows again as given).
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct SearchForm {
    #[serde(default)]
    pub(crate) user: String,
    #[serde(default)]
    pub(crate) room: String,
    #[serde(default)]
    pub(crate) app: String,
    #[serde(default)]
    pub(crate) vendor: String,
    #[serde(default)]
    pub(crate) status: String,
    #[serde(default)]
    pub(crate) since: String,
    #[serde(default)]
    pub(crate) until: String,
    /// Keyset cursor: the last row's received_at and verdict_id.
    #[serde(default)]
    pub(crate) after_at: String,
    #[serde(default)]
    pub(crate) after_id: String,
    /// Set by a bulk replay's redirect: how many verdicts it reopened.
    #[serde(default)]
    pub(crate) replayed: Option<usize>,
}

/// A form field as given, trimmed; `None` when blank.
pub(crate) fn some(s: &str) -> Option<String> {
    (!s.trim().is_empty()).then(|| s.trim().to_owned())
}

impl SearchForm {
    pub(crate) fn filter(&self) -> Result<query::Filter, String> {
        for (name, value) in self.pairs() {
            if value.contains('\0') {
                return Err(format!("{name}: contains a NUL character"));
            }
        }
        let time = |name: &str, v: &str| -> Result<Option<DateTime<Utc>>, String> {
            some(v).map(|v| crate::audit::query::parse_when(&v).map_err(|e| format!("{name}: {e}"))).transpose()
        };
        Ok(query::Filter {
            user: some(&self.user),
            room: some(&self.room),
            app: some(&self.app).map(|a| a.parse().map_err(|_| format!("app: not a number: {a}"))).transpose()?,
            vendor: some(&self.vendor)
                .map(|v| crate::vendors::Vendor::parse(&v).ok_or_else(|| format!("vendor: unknown vendor {v:?}")))
                .transpose()?,
            status: some(&self.status)
                .map(|s| query::StatusFilter::parse(&s).map_err(|e| format!("status: {e}")))
                .transpose()?,
            since: time("since", &self.since)?,
            until: time("until", &self.until)?,
            ..query::Filter::default()
        })
    }

    fn after(&self) -> Option<(DateTime<Utc>, String)> {
        let at = DateTime::parse_from_rfc3339(self.after_at.trim()).ok()?.with_timezone(&Utc);
        Some((at, some(&self.after_id)?))
    }

    /// The filters as given, without the cursor: what a link or a hidden field repeats.
    pub(crate) fn pairs(&self) -> Vec<(&'static str, &str)> {
        [
            ("user", &self.user),
            ("room", &self.room),
            ("app", &self.app),
            ("vendor", &self.vendor),
            ("status", &self.status),
            ("since", &self.since),
            ("until", &self.until),
        ]
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| (k, v.as_str()))
        .collect()
    }

    /// `pairs` and `extra` as a query string.
    pub(crate) fn query(&self, extra: &[(&str, &str)]) -> String {
        let mut q = url::form_urlencoded::Serializer::new(String::new());
        q.extend_pairs(self.pairs()).extend_pairs(extra);
        q.finish()
    }

    /// The link to the page after `last`.
    fn next(&self, last: &VerdictRow) -> String {
        let at = last.received_at.to_rfc3339();
        format!("/verdicts?{}", self.query(&[("after_at", &at), ("after_id", &last.verdict_id)]))
    }
}

#[derive(Template)]
#[template(path = "web/verdicts.html")]
struct Verdicts {
    actor: Actor,
    heading: String,
    form: SearchForm,
    /// The registry's vendors, for the filter's choices.
    vendors: Vec<VendorChoice>,
    problem: Option<String>,
    rows: Vec<VerdictRow>,
    next: Option<String>,
    /// For an operator looking at failed verdicts: the confirmation of replaying all of them.
    bulk_replay: Option<String>,
    /// On a user's page: the user's bans (in every app), newest first.
    user_bans: Option<Vec<crate::audit::bans::BanRow>>,
    /// On a user's page: the user's re-entries while banned, newest first.
    user_reentries: Option<Vec<crate::audit::reentries::ReentryRow>>,
}

async fn verdict_list(
    c: &Console,
    actor: Actor,
    form: SearchForm,
    heading: String,
    user_bans: Option<Vec<crate::audit::bans::BanRow>>,
    user_reentries: Option<Vec<crate::audit::reentries::ReentryRow>>,
) -> PageResult {
    let (rows, problem) = match form.filter() {
        Ok(filter) => (console::search(&c.pool, &filter, form.after(), PAGE).await?, None),
        Err(problem) => (Vec::new(), Some(problem)),
    };
    let next = (rows.len() as i64 == PAGE).then(|| rows.last().map(|r| form.next(r))).flatten();
    let offer = actor.may_replay() && problem.is_none() && !rows.is_empty() && form.status.trim() == "failed";
    let bulk_replay = offer.then(|| format!("/replay?{}", form.query(&[])));
    let vendors = VendorChoice::all(&form.vendor);
    // A form problem is the asker's: the page shows it, with 400.
    let status = if problem.is_some() { StatusCode::BAD_REQUEST } else { StatusCode::OK };
    let mut page = render(Verdicts {
        actor,
        heading,
        form,
        vendors,
        problem,
        rows,
        next,
        bulk_replay,
        user_bans,
        user_reentries,
    })?;
    *page.status_mut() = status;
    Ok(page)
}

pub(crate) async fn verdicts(
    State(c): State<Arc<Console>>,
    actor: Actor,
    Query(form): Query<SearchForm>,
) -> PageResult {
    verdict_list(&c, actor, form, "Verdicts".into(), None, None).await
}

/// Every verdict that named a user, across apps and rooms.
pub(crate) async fn user(State(c): State<Arc<Console>>, actor: Actor, Path(user): Path<String>) -> PageResult {
    no_nul("user", &user)?;
    let heading = format!("User {user}");
    let filter = crate::audit::bans::BanFilter { user_id: Some(user.clone()), limit: PAGE, ..Default::default() };
    let bans = crate::audit::bans::list(&c.pool, &filter).await?;
    let reentries = crate::audit::reentries::of_user(&c.pool, &user, PAGE).await?;
    verdict_list(&c, actor, SearchForm { user, ..SearchForm::default() }, heading, Some(bans), Some(reentries)).await
}

#[derive(Template)]
#[template(path = "web/story.html")]
struct StoryPage {
    actor: Actor,
    story: Story,
    message: String,
    can_replay: bool,
}

pub(crate) async fn story(State(c): State<Arc<Console>>, actor: Actor, Path(id): Path<String>) -> PageResult {
    no_nul("id", &id)?;
    let Some(story) = query::story(&c.pool, &id).await? else {
        return Ok((StatusCode::NOT_FOUND, "no such verdict").into_response());
    };
    let message = console::message(&c.pool, &id).await?.map(|m| serde_json::to_string_pretty(&m)).transpose()?;
    let can_replay = actor.may_replay() && story.verdict.status != VerdictStatus::Done;
    render(StoryPage { actor, story, message: message.unwrap_or_default(), can_replay })
}

struct RejectedRow {
    received_at: String,
    reason: String,
    field: String,
    rule: String,
    size: i32,
    preview: String,
    headers: String,
}

/// A body shown as text: valid UTF-8 as is, other bytes as `\xNN`.
fn preview(bytes: &[u8]) -> String {
    bytes.utf8_chunks().fold(String::new(), |mut out, chunk| {
        out.push_str(chunk.valid());
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02X}"));
        }
        out
    })
}

#[derive(Template)]
#[template(path = "web/rejected.html")]
struct Rejected {
    actor: Actor,
    rows: Vec<RejectedRow>,
    next: Option<String>,
}

#[derive(Deserialize)]
pub(crate) struct Before {
    before: Option<i64>,
}

pub(crate) async fn rejected(State(c): State<Arc<Console>>, actor: Actor, Query(q): Query<Before>) -> PageResult {
    let rows: Vec<RejectedView> = console::rejected(&c.pool, q.before, PAGE).await?;
    let next = (rows.len() as i64 == PAGE).then(|| rows.last().map(|r| format!("/rejected?before={}", r.id))).flatten();
    let rows = rows
        .into_iter()
        .map(|r| RejectedRow {
            received_at: r.received_at.to_string(),
            reason: r.reason,
            field: r.field.unwrap_or_default(),
            rule: r.rule.unwrap_or_default(),
            size: r.payload_size,
            preview: preview(&r.payload),
            headers: serde_json::to_string_pretty(&r.headers).unwrap_or_default(),
        })
        .collect();
    render(Rejected { actor, rows, next })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_that_is_not_utf8_shows_its_bytes() {
        assert_eq!(preview(b"ok \xff\xfe <b>"), "ok \\xFF\\xFE <b>");
    }
}
