//! The audit repository: the only module that speaks SQL. Bound parameters only.
//!
//! - [`intake`]: verdicts, their pending kicks and rejected messages, one transaction per batch;
//! - [`work`]: what the owner of a quota fetches (due kicks);
//! - [`results`] and [`writer`]: vendor calls, per-user outcomes and retry schedules;
//! - [`leases`]: live replicas and who owns which vendor quota;
//! - [`query`]: reading the trail for ops, and replays.

pub mod console;
pub(crate) mod intake;
pub mod leases;
pub mod query;
pub(crate) mod results;
pub mod work;
pub(crate) mod writer;

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

impl AuditError {
    /// The database refused the data itself (SQLSTATE classes 22 data exception, 23 integrity
    /// constraint violation, 54 program limit exceeded, or a value sqlx could not encode): trying
    /// again cannot help, while any other error (connection, pool, shutdown, serialisation) can.
    pub fn is_data_error(&self) -> bool {
        match self {
            AuditError::Db(sqlx::Error::Encode(_)) => true,
            AuditError::Db(sqlx::Error::Database(db)) => {
                db.code().is_some_and(|c| c.starts_with("22") || c.starts_with("23") || c.starts_with("54"))
            }
            _ => false,
        }
    }

    /// A deadlock (40P01) or serialization failure (40001): the transaction may simply be retried.
    pub fn is_serialization_failure(&self) -> bool {
        matches!(self, AuditError::Db(sqlx::Error::Database(db)) if db.code().is_some_and(|c| c == "40P01" || c == "40001"))
    }
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

/// A pool of `size` connections of its own, for work that must never wait behind the main pool:
/// the elector's lease renewals and the LISTEN connection.
pub async fn connect_reserved(
    cfg: &PostgresConfig,
    size: u32,
    connect_timeout: Duration,
) -> Result<PgPool, AuditError> {
    Ok(PgPoolOptions::new().max_connections(size).acquire_timeout(connect_timeout).connect_with(options(cfg)?).await?)
}

/// Like [`connect`], but keeps trying for up to `within`: a worker starting alongside may still be
/// creating the database (the demo, the benchmark, `kick --wait`).
pub async fn connect_within(cfg: &PostgresConfig, within: Duration) -> Result<PgPool, AuditError> {
    let started = std::time::Instant::now();
    let mut backoff = crate::retry::Backoff::new(Duration::from_millis(200), Duration::from_millis(200));
    loop {
        match connect(cfg, Duration::from_secs(2)).await {
            Err(_) if started.elapsed() < within => tokio::time::sleep(backoff.next_wait()).await,
            result => return result,
        }
    }
}

/// The console's grants (`console_grants.sql`), for `role`.
const CONSOLE_GRANTS: &str = include_str!("console_grants.sql");

/// The statements that give `role` exactly what `bouncer web` needs, ready to run: comments
/// dropped, the role quoted as an identifier.
pub fn console_grants(role: &str) -> Vec<String> {
    let quoted = format!("\"{}\"", role.replace('"', "\"\""));
    let text: String =
        CONSOLE_GRANTS.lines().filter(|l| !l.trim_start().starts_with("--")).collect::<Vec<_>>().join("\n");
    text.split(';').map(|s| s.trim()).filter(|s| !s.is_empty()).map(|s| s.replace("console_role", &quoted)).collect()
}

/// Runs [`console_grants`] for `role` (which must exist) in one transaction.
pub async fn grant_console(
    cfg: &PostgresConfig,
    role: &str,
    connect_timeout: Duration,
) -> Result<Vec<String>, AuditError> {
    let pool = connect(cfg, connect_timeout).await?;
    let statements = console_grants(role);
    let mut tx = pool.begin().await?;
    for s in &statements {
        sqlx::raw_sql(sqlx::AssertSqlSafe(s.clone())).execute(&mut *tx).await?;
    }
    tx.commit().await?;
    pool.close().await;
    Ok(statements)
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

/// How many of the compiled-in migrations this database has not applied yet.
pub async fn pending_migrations(pool: &PgPool) -> Result<usize, AuditError> {
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL").fetch_one(pool).await?;
    let applied = if exists { applied_versions(pool).await? } else { Vec::new() };
    Ok(MIGRATOR.iter().filter(|m| !applied.contains(&m.version)).count())
}
