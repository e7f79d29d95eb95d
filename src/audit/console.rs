//! Queries only the ops console (`bouncer web`) makes; the story, search rows, pending work and
//! replays are shared with the CLI (`query`, `work`, `leases`).

use chrono::{DateTime, Utc};

use super::query::{Filter, Rows, push_filters};
use super::rollups::{self, Metric};
use super::{AuditError, Db};

/// The verdict as received, and its evidence, for the story page.
pub async fn message(db: &Db, verdict_id: &str) -> Result<Option<serde_json::Value>, AuditError> {
    Ok(db
        .run(async |c| {
            db.query_scalar("SELECT payload FROM verdicts WHERE verdict_id = $1")
                .bind(verdict_id)
                .fetch_optional(c)
                .await
        })
        .await?)
}

/// One dead-lettered message.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RejectedView {
    pub id: i64,
    pub received_at: DateTime<Utc>,
    pub reason: String,
    pub field: Option<String>,
    pub rule: Option<String>,
    /// The body as stored (capped); shown as text, never interpreted.
    pub payload: Vec<u8>,
    pub payload_size: i32,
    pub headers: serde_json::Value,
}

/// Rejected messages, newest first, before `before` (an id: keyset pagination).
pub async fn rejected(db: &Db, before: Option<i64>, limit: i64) -> Result<Vec<RejectedView>, AuditError> {
    Ok(db
        .run(async |c| {
            db.query_as(
                "SELECT id, received_at, reason, field, rule, payload, payload_size, headers
                 FROM rejected_messages WHERE id < coalesce($1, 9223372036854775807) ORDER BY id DESC LIMIT $2",
            )
            .bind(before)
            .bind(limit)
            .fetch_all(c)
            .await
        })
        .await?)
}

/// Counts for the overview, over the last `hours`.
#[derive(Debug, Clone, Default)]
pub struct Totals {
    pub verdicts: i64,
    pub done: i64,
    pub failed: i64,
    pub pending: i64,
    pub rejected: i64,
}

impl Totals {
    /// From the verdict chart's samples over the same window (one scan of the day's verdicts
    /// serves both) and the rejected messages counted apart.
    pub fn of(verdicts: &[Sample], rejected: i64) -> Totals {
        let mut t = Totals { rejected, ..Totals::default() };
        for s in verdicts {
            t.verdicts += s.count;
            match s.outcome.as_str() {
                "done" => t.done += s.count,
                "failed" => t.failed += s.count,
                "pending" => t.pending += s.count,
                _ => {}
            }
        }
        t
    }
}

/// Rejected messages received in the last `hours` (from the rollups).
pub async fn rejected_count(db: &Db, hours: i32) -> Result<i64, AuditError> {
    Ok(rollups::totals(db, Metric::Rejected, hours * 60).await?.iter().map(|t| t.count).sum())
}

/// A count in one time bucket for one vendor and outcome (a verdict's status, a call's outcome).
#[derive(Debug, Clone)]
pub struct Sample {
    pub at: DateTime<Utc>,
    pub vendor: String,
    pub outcome: String,
    pub count: i64,
}

fn samples(rows: Vec<rollups::Bucketed>) -> Vec<Sample> {
    rows.into_iter().map(|r| Sample { at: r.at, vendor: r.vendor, outcome: r.key, count: r.count }).collect()
}

/// Verdicts received in the last `minutes` whole minutes, counted per `bucket_mins` by vendor and
/// status (from the rollups: the same numbers as a count over `verdicts`, without reading it).
pub async fn verdicts_over_time(db: &Db, minutes: i32, bucket_mins: i32) -> Result<Vec<Sample>, AuditError> {
    Ok(samples(rollups::series(db, Metric::Verdicts, minutes, bucket_mins).await?))
}

/// Users in vendor calls made in the last `minutes`, per `bucket_mins` by vendor and outcome
/// (`ok` is a kick done; `retry` a call to be tried again).
pub async fn kicks_over_time(db: &Db, minutes: i32, bucket_mins: i32) -> Result<Vec<Sample>, AuditError> {
    Ok(samples(rollups::series(db, Metric::CallUsers, minutes, bucket_mins).await?))
}

/// Failed vendor calls by vendor and code over the last `hours`.
#[derive(Debug, Clone)]
pub struct FailureCode {
    pub vendor: String,
    pub code: String,
    pub calls: i64,
}

pub async fn failures_by_code(db: &Db, hours: i32) -> Result<Vec<FailureCode>, AuditError> {
    let mut rows: Vec<FailureCode> = rollups::totals(db, Metric::CallCodes, hours * 60)
        .await?
        .into_iter()
        .map(|t| FailureCode { vendor: t.vendor, code: t.key, calls: t.count })
        .collect();
    rows.sort_by(|a, b| b.calls.cmp(&a.calls).then_with(|| (&a.vendor, &a.code).cmp(&(&b.vendor, &b.code))));
    rows.truncate(20);
    Ok(rows)
}

/// Verdict → last kick latency percentiles (ms) of the verdicts received in the last `minutes`,
/// finished ones only: each the upper bound of the rollup bucket it falls in.
#[derive(Debug, Clone, Default)]
pub struct Latency {
    pub p50: Option<f64>,
    pub p95: Option<f64>,
    pub p99: Option<f64>,
}

pub async fn latency(db: &Db, minutes: i32) -> Result<Latency, AuditError> {
    let buckets: Vec<(f64, i64)> = rollups::totals(db, Metric::Latency, minutes)
        .await?
        .into_iter()
        .filter_map(|t| rollups::bucket_bound(&t.key).map(|b| (b, t.count)))
        .collect();
    let p = rollups::percentiles(&buckets, &[0.5, 0.95, 0.99]);
    Ok(Latency { p50: p[0], p95: p[1], p99: p[2] })
}

/// One verdict in a result list.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct VerdictRow {
    pub verdict_id: String,
    pub received_at: DateTime<Utc>,
    pub vendor: String,
    pub app_id: i64,
    pub room_id: String,
    pub status: String,
    pub users: i32,
    pub reason: Option<String>,
}

/// Verdicts matching `f` (the filters `bouncer audit` takes), newest first, strictly before
/// `after` (received_at, verdict_id): keyset pagination, so a page deep in a million rows costs
/// what the first does.
pub async fn search(
    db: &Db,
    f: &Filter,
    after: Option<(DateTime<Utc>, String)>,
    limit: i64,
) -> Result<Vec<VerdictRow>, AuditError> {
    let mut qb = sqlx::QueryBuilder::new(
        "SELECT verdict_id, received_at, vendor, app_id, room_id, status, cardinality(user_ids) AS users, reason
         FROM verdicts WHERE true",
    );
    push_filters(&mut qb, f, Rows::Verdicts);
    if let Some((at, id)) = after {
        qb.push(" AND (received_at, verdict_id) < (").push_bind(at).push(", ").push_bind(id).push(")");
    }
    qb.push(" ORDER BY received_at DESC, verdict_id DESC LIMIT ").push_bind(limit);
    Ok(db.run(async |c| qb.build_query_as().persistent(db.statements_named()).fetch_all(c).await).await?)
}

/// Spends a confirmation token (by its fingerprint): true the first time, false once spent.
/// Spent tokens older than `ttl` are cleared on the way.
pub async fn spend_token(db: &Db, fingerprint: &[u8], ttl: chrono::Duration) -> Result<bool, AuditError> {
    let spent: Option<i32> = db
        .run(async |c| {
            db.query_scalar(
                "WITH old AS (DELETE FROM console_tokens WHERE used_at < now() - $2 * interval '1 second')
                 INSERT INTO console_tokens (fingerprint) VALUES ($1) ON CONFLICT DO NOTHING RETURNING 1",
            )
            .bind(fingerprint)
            .bind(ttl.num_seconds() as f64)
            .fetch_optional(c)
            .await
        })
        .await?;
    Ok(spent.is_some())
}
