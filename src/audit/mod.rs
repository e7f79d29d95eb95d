//! The audit repository: the only module that speaks SQL. Bound parameters only.

pub mod query;
pub mod writer;

use std::time::Duration;

use secrecy::ExposeSecret;
use sqlx::migrate::MigrateDatabase;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, PgPool, Postgres};

use crate::config::PostgresConfig;

/// The migrations in `migrations/`, compiled in.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Stored bodies of rejected messages are cut to this size (`payload_size` keeps the real one).
pub const REJECTED_PAYLOAD_CAP: usize = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("PostgreSQL: {0}")]
    Db(#[from] sqlx::Error),
    #[error("PostgreSQL migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

fn options(cfg: &PostgresConfig) -> Result<PgConnectOptions, sqlx::Error> {
    let opts: PgConnectOptions = cfg.url.expose_secret().parse()?;
    // Statement logging would put user ids into logs at INFO; keep it for slow statements only.
    Ok(opts
        .log_statements(tracing::log::LevelFilter::Trace)
        .log_slow_statements(tracing::log::LevelFilter::Warn, Duration::from_secs(2)))
}

/// A pool to the configured database. Waits at most `connect_timeout` for the first connection.
pub async fn connect(cfg: &PostgresConfig, connect_timeout: Duration) -> Result<PgPool, AuditError> {
    Ok(PgPoolOptions::new()
        .max_connections(cfg.max_connections)
        .acquire_timeout(connect_timeout)
        .connect_with(options(cfg)?)
        .await?)
}

/// Like [`connect`], but keeps trying for up to `within`: a worker starting alongside may still be
/// creating the database (the demo, the benchmark, `kick --wait`).
pub async fn connect_within(cfg: &PostgresConfig, within: Duration) -> Result<PgPool, AuditError> {
    let started = std::time::Instant::now();
    loop {
        match connect(cfg, Duration::from_secs(2)).await {
            Err(_) if started.elapsed() < within => tokio::time::sleep(Duration::from_millis(200)).await,
            result => return result,
        }
    }
}

/// Creates the database if it does not exist yet, then applies pending migrations. Running it
/// again is a no-op.
pub async fn migrate(cfg: &PostgresConfig, connect_timeout: Duration) -> Result<MigrateReport, AuditError> {
    let url = cfg.url.expose_secret();
    let created = if Postgres::database_exists(url).await? {
        false
    } else {
        Postgres::create_database(url).await?;
        true
    };
    let pool = connect(cfg, connect_timeout).await?;
    let before = applied_versions(&pool).await.unwrap_or_default();
    MIGRATOR.run(&pool).await?;
    let after = applied_versions(&pool).await?;
    pool.close().await;
    Ok(MigrateReport {
        created_database: created,
        applied: after.len().saturating_sub(before.len()),
        total: after.len(),
    })
}

/// What `migrate` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MigrateReport {
    pub created_database: bool,
    /// Migrations applied by this run.
    pub applied: usize,
    /// Migrations applied in all.
    pub total: usize,
}

async fn applied_versions(pool: &PgPool) -> Result<Vec<i64>, sqlx::Error> {
    sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success ORDER BY version").fetch_all(pool).await
}

/// A malformed message, as it will be stored.
pub struct Rejection<'a> {
    pub reason: &'a str,
    pub field: Option<&'a str>,
    pub rule: &'a str,
    pub payload: &'a [u8],
    pub headers: serde_json::Value,
    /// The `verdict_id` when the body was readable enough to have one.
    pub verdict_id: Option<&'a str>,
}

/// Records a rejected message; returns its id.
pub async fn record_rejection(pool: &PgPool, r: &Rejection<'_>) -> Result<i64, AuditError> {
    let capped = &r.payload[..r.payload.len().min(REJECTED_PAYLOAD_CAP)];
    let id = sqlx::query_scalar(
        "INSERT INTO rejected_messages (reason, field, rule, payload, payload_size, headers, verdict_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
    )
    .bind(r.reason)
    .bind(r.field)
    .bind(r.rule)
    .bind(capped)
    .bind(i32::try_from(r.payload.len()).unwrap_or(i32::MAX))
    .bind(&r.headers)
    .bind(r.verdict_id)
    .fetch_one(pool)
    .await?;
    Ok(id)
}

/// How many of the compiled-in migrations this database has not applied yet.
pub async fn pending_migrations(pool: &PgPool) -> Result<usize, AuditError> {
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL").fetch_one(pool).await?;
    let applied = if exists { applied_versions(pool).await? } else { Vec::new() };
    Ok(MIGRATOR.iter().filter(|m| !applied.contains(&m.version)).count())
}

// ---------------------------------------------------------------------------------------------
// Intake: one transaction per batch of deliveries.
// ---------------------------------------------------------------------------------------------

/// A verdict as it enters the audit trail.
pub struct NewVerdict<'a> {
    pub verdict: &'a crate::verdict::Verdict,
    /// The body exactly as received (valid JSON: it parsed).
    pub payload: &'a serde_json::value::RawValue,
    /// Arrivals in this batch that count as deliveries (deferral returns do not).
    pub deliveries: i32,
}

#[derive(serde::Serialize)]
struct VerdictRow<'a> {
    verdict_id: &'a str,
    vendor: &'a str,
    app_id: i64,
    room_id: String,
    room_id_numeric: bool,
    user_ids: &'a [String],
    reason: Option<&'a str>,
    source: Option<&'a str>,
    detected_at: Option<chrono::DateTime<chrono::Utc>>,
    evidence: Option<&'a serde_json::Map<String, serde_json::Value>>,
    payload: &'a serde_json::value::RawValue,
    deliveries: i32,
}

/// Where a verdict stands after intake.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Intake {
    pub status: String,
    pub deliveries: i32,
    /// First time this verdict was seen.
    pub inserted: bool,
    pub received_at: chrono::DateTime<chrono::Utc>,
    /// Users still to kick (empty unless `status == "pending"`).
    pub pending_users: Vec<String>,
}

/// Records a batch of arrivals in one transaction: rejections, verdicts (idempotent on
/// `verdict_id`), their kicks, and the failure of verdicts for apps this worker does not serve.
/// Returns where each verdict stands.
pub async fn record_intake(
    pool: &PgPool,
    verdicts: &[NewVerdict<'_>],
    unconfigured: &[(&str, String)],
    rejections: &[Rejection<'_>],
) -> Result<std::collections::HashMap<String, Intake>, AuditError> {
    let mut tx = pool.begin().await?;
    if !rejections.is_empty() {
        let capped: Vec<&[u8]> =
            rejections.iter().map(|r| &r.payload[..r.payload.len().min(REJECTED_PAYLOAD_CAP)]).collect();
        sqlx::query(
            "INSERT INTO rejected_messages (reason, field, rule, payload, payload_size, headers, verdict_id)
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::bytea[], $5::int[], $6::jsonb[], $7::text[])",
        )
        .bind(rejections.iter().map(|r| r.reason).collect::<Vec<_>>())
        .bind(rejections.iter().map(|r| r.field).collect::<Vec<_>>())
        .bind(rejections.iter().map(|r| r.rule).collect::<Vec<_>>())
        .bind(capped)
        .bind(rejections.iter().map(|r| i32::try_from(r.payload.len()).unwrap_or(i32::MAX)).collect::<Vec<_>>())
        .bind(rejections.iter().map(|r| &r.headers).collect::<Vec<_>>())
        .bind(rejections.iter().map(|r| r.verdict_id).collect::<Vec<_>>())
        .execute(&mut *tx)
        .await?;
    }

    let mut result = std::collections::HashMap::new();
    if !verdicts.is_empty() {
        let rows: Vec<VerdictRow<'_>> = verdicts
            .iter()
            .map(|n| {
                let v = n.verdict;
                VerdictRow {
                    verdict_id: &v.verdict_id,
                    vendor: v.vendor.as_str(),
                    app_id: i64::from(v.app_id),
                    room_id: v.room_id.to_string(),
                    room_id_numeric: v.room_id.is_numeric(),
                    user_ids: &v.user_ids,
                    reason: v.reason.as_deref(),
                    source: v.source.as_deref(),
                    detected_at: v.detected_at,
                    evidence: v.evidence.as_ref(),
                    payload: n.payload,
                    deliveries: n.deliveries,
                }
            })
            .collect();
        let doc = serde_json::to_value(&rows).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
        let upserted: Vec<(String, String, i32, bool, chrono::DateTime<chrono::Utc>)> = sqlx::query_as(
            "INSERT INTO verdicts AS v (verdict_id, vendor, app_id, room_id, room_id_numeric, user_ids, reason,
                                        source, detected_at, evidence, payload, deliveries)
             SELECT verdict_id, vendor, app_id, room_id, room_id_numeric, user_ids, reason, source, detected_at,
                    evidence, payload, deliveries
             FROM jsonb_to_recordset($1) AS x(verdict_id text, vendor text, app_id bigint, room_id text,
                  room_id_numeric boolean, user_ids text[], reason text, source text, detected_at timestamptz,
                  evidence jsonb, payload jsonb, deliveries integer)
             -- A deferral coming back is not a delivery: it adds 0.
             ON CONFLICT (verdict_id) DO UPDATE
                SET deliveries = v.deliveries + EXCLUDED.deliveries,
                    last_delivery_at = now()
             RETURNING verdict_id, status, deliveries, (xmax = 0) AS inserted, received_at",
        )
        .bind(&doc)
        .fetch_all(&mut *tx)
        .await?;

        let by_id: std::collections::HashMap<&str, &crate::verdict::Verdict> =
            verdicts.iter().map(|n| (n.verdict.verdict_id.as_str(), n.verdict)).collect();
        let (mut kick_v, mut kick_u) = (Vec::new(), Vec::new());
        let mut resumed = Vec::new();
        for (id, status, deliveries, inserted, received_at) in upserted {
            let pending_users = if inserted {
                by_id.get(id.as_str()).map(|v| v.user_ids.clone()).unwrap_or_default()
            } else {
                Vec::new()
            };
            if inserted {
                for u in &pending_users {
                    kick_v.push(id.clone());
                    kick_u.push(u.clone());
                }
            } else if status == "pending" {
                resumed.push(id.clone());
            }
            result.insert(id, Intake { status, deliveries, inserted, received_at, pending_users });
        }
        if !kick_v.is_empty() {
            sqlx::query(
                "INSERT INTO kicks (verdict_id, user_id) SELECT * FROM UNNEST($1::text[], $2::text[])
                 ON CONFLICT DO NOTHING",
            )
            .bind(&kick_v)
            .bind(&kick_u)
            .execute(&mut *tx)
            .await?;
        }
        if !resumed.is_empty() {
            let rows: Vec<(String, String)> = sqlx::query_as(
                "SELECT verdict_id, user_id FROM kicks WHERE verdict_id = ANY($1) AND status = 'pending'
                 ORDER BY verdict_id, user_id",
            )
            .bind(&resumed)
            .fetch_all(&mut *tx)
            .await?;
            for (id, user) in rows {
                if let Some(i) = result.get_mut(&id) {
                    i.pending_users.push(user);
                }
            }
        }
    }

    if !unconfigured.is_empty() {
        let ids: Vec<&str> = unconfigured.iter().map(|(id, _)| *id).collect();
        let errors: Vec<&str> = unconfigured.iter().map(|(_, e)| e.as_str()).collect();
        sqlx::query(
            "UPDATE kicks k SET status = 'failed', last_error = x.error, updated_at = now()
             FROM UNNEST($1::text[], $2::text[]) AS x(verdict_id, error)
             WHERE k.verdict_id = x.verdict_id AND k.status = 'pending'",
        )
        .bind(&ids)
        .bind(&errors)
        .execute(&mut *tx)
        .await?;
        let failed: Vec<String> = sqlx::query_scalar(
            "UPDATE verdicts SET status = 'failed', finished_at = now()
             WHERE verdict_id = ANY($1) AND status = 'pending' RETURNING verdict_id",
        )
        .bind(&ids)
        .fetch_all(&mut *tx)
        .await?;
        for id in failed {
            if let Some(i) = result.get_mut(&id) {
                i.status = "failed".into();
                i.pending_users.clear();
            }
        }
    }
    tx.commit().await?;
    Ok(result)
}

/// Counts a hand-off to the deferral queue (after the broker confirmed it).
pub async fn record_deferrals(pool: &PgPool, verdict_ids: &[&str]) -> Result<(), AuditError> {
    sqlx::query(
        "UPDATE verdicts SET deferrals = deferrals + x.n, last_deferred_at = now()
         FROM (SELECT id, count(*)::int AS n FROM UNNEST($1::text[]) AS id GROUP BY id) AS x
         WHERE verdict_id = x.id",
    )
    .bind(verdict_ids)
    .execute(pool)
    .await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Results: vendor calls and per-user outcomes, one transaction per batch.
// ---------------------------------------------------------------------------------------------

/// One vendor call (`kick_attempts` row).
#[derive(Clone, Debug, serde::Serialize)]
pub struct AttemptRow {
    pub vendor: &'static str,
    pub app_id: i64,
    pub room_id: String,
    pub room_id_numeric: bool,
    pub action: &'static str,
    pub user_ids: Vec<String>,
    pub verdict_ids: Vec<String>,
    pub attempt: i32,
    pub started_at: chrono::DateTime<chrono::Utc>,
    pub latency_ms: i32,
    pub http_status: Option<i32>,
    pub vendor_code: Option<String>,
    pub vendor_message: Option<String>,
    pub vendor_request_id: Option<String>,
    pub outcome: &'static str,
    pub error: Option<String>,
}

/// The end of one user's kick for one verdict (`kicks` row update).
#[derive(Clone, Debug)]
pub struct KickOutcome {
    pub verdict_id: String,
    pub user_id: String,
    /// `kicked`, `gone` or `failed`.
    pub status: &'static str,
    /// Vendor calls that carried this user.
    pub attempts: i32,
    pub last_error: Option<String>,
    pub vendor_request_id: Option<String>,
}

/// Writes attempts and outcomes, then closes every verdict in `check` (and every verdict an
/// outcome touched) that has no pending user left. Returns the verdicts closed: (id, status).
pub async fn record_results(
    pool: &PgPool,
    attempts: &[AttemptRow],
    outcomes: &[KickOutcome],
    check: &[String],
) -> Result<Vec<(String, String)>, AuditError> {
    let mut tx = pool.begin().await?;
    if !attempts.is_empty() {
        let doc = serde_json::to_value(attempts).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
        sqlx::query(
            "INSERT INTO kick_attempts (vendor, app_id, room_id, room_id_numeric, action, user_ids, verdict_ids,
                                        attempt, started_at, latency_ms, http_status, vendor_code, vendor_message,
                                        vendor_request_id, outcome, error)
             SELECT * FROM jsonb_to_recordset($1) AS x(vendor text, app_id bigint, room_id text,
                  room_id_numeric boolean, action text, user_ids text[], verdict_ids text[], attempt integer,
                  started_at timestamptz, latency_ms integer, http_status integer, vendor_code text,
                  vendor_message text, vendor_request_id text, outcome text, error text)",
        )
        .bind(&doc)
        .execute(&mut *tx)
        .await?;
    }
    let mut ids: Vec<&str> = check.iter().map(String::as_str).collect();
    if !outcomes.is_empty() {
        sqlx::query(
            "UPDATE kicks k SET status = x.status, attempts = k.attempts + x.attempts, last_error = x.last_error,
                    vendor_request_id = COALESCE(x.request_id, k.vendor_request_id), updated_at = now()
             FROM UNNEST($1::text[], $2::text[], $3::text[], $4::int[], $5::text[], $6::text[])
                  AS x(verdict_id, user_id, status, attempts, last_error, request_id)
             WHERE k.verdict_id = x.verdict_id AND k.user_id = x.user_id",
        )
        .bind(outcomes.iter().map(|o| o.verdict_id.as_str()).collect::<Vec<_>>())
        .bind(outcomes.iter().map(|o| o.user_id.as_str()).collect::<Vec<_>>())
        .bind(outcomes.iter().map(|o| o.status).collect::<Vec<_>>())
        .bind(outcomes.iter().map(|o| o.attempts).collect::<Vec<_>>())
        .bind(outcomes.iter().map(|o| o.last_error.as_deref()).collect::<Vec<_>>())
        .bind(outcomes.iter().map(|o| o.vendor_request_id.as_deref()).collect::<Vec<_>>())
        .execute(&mut *tx)
        .await?;
        ids.extend(outcomes.iter().map(|o| o.verdict_id.as_str()));
    }
    ids.sort_unstable();
    ids.dedup();
    let finished: Vec<(String, String)> = if ids.is_empty() {
        Vec::new()
    } else {
        sqlx::query_as(
            "UPDATE verdicts v
                SET status = CASE WHEN EXISTS (SELECT 1 FROM kicks k WHERE k.verdict_id = v.verdict_id
                                                AND k.status = 'failed') THEN 'failed' ELSE 'done' END,
                    finished_at = now()
              WHERE v.verdict_id = ANY($1) AND v.status = 'pending'
                AND NOT EXISTS (SELECT 1 FROM kicks k WHERE k.verdict_id = v.verdict_id AND k.status = 'pending')
              RETURNING v.verdict_id, v.status",
        )
        .bind(&ids)
        .fetch_all(&mut *tx)
        .await?
    };
    tx.commit().await?;
    Ok(finished)
}
