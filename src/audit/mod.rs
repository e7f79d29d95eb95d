//! The audit repository: the only module that speaks SQL. Bound parameters only.
//!
//! - [`intake`]: verdicts, their pending kicks and rejected messages, one transaction per batch;
//! - [`work`]: what the owner of a quota fetches (due kicks);
//! - [`results`] and [`writer`]: vendor calls, per-user outcomes and retry schedules;
//! - [`leases`]: live replicas and who owns which vendor quota;
//! - [`query`]: reading the trail for ops, and replays;
//! - [`rollups`] and [`retention`]: per-minute counts for the console, and pruning old rows;
//! - [`Db`]: how statements travel, directly or through a transaction pooler.

pub mod bans;
pub mod console;
pub(crate) mod intake;
pub mod leases;
pub mod outbox;
pub mod query;
pub mod reentries;
pub(crate) mod results;
pub mod retention;
pub mod rollups;
pub mod work;
pub(crate) mod writer;

use std::time::Duration;

use secrecy::ExposeSecret;
use sqlx::migrate::MigrateDatabase;
use sqlx::postgres::PgPoolOptions;
use sqlx::{PgPool, Postgres};

use crate::config::{Pooler, PostgresConfig};

mod db;
pub use db::Db;

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
    /// Migrating needs a session, and only a transaction pooler is configured.
    #[error("{NEEDS_DIRECT_URL}")]
    NeedsDirectUrl,
}

/// Why migrations are refused behind a transaction pooler without `postgres.direct_url`.
pub const NEEDS_DIRECT_URL: &str = "migrating the schema needs a session of its own (sqlx holds a \
    session advisory lock while it migrates), which postgres.url cannot give through a transaction pooler \
    (postgres.pooler = \"transaction\"): set postgres.direct_url to a connection that bypasses the pooler";

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

/// A pool to the configured database. Waits at most `connect_timeout` for the first connection.
pub async fn connect(cfg: &PostgresConfig, connect_timeout: Duration) -> Result<Db, AuditError> {
    Ok(Db::connect(cfg, cfg.max_connections, connect_timeout).await?)
}

/// A pool of `size` connections of its own, for work that must never wait behind the main pool:
/// the elector's lease renewals, intake.
pub async fn connect_reserved(cfg: &PostgresConfig, size: u32, connect_timeout: Duration) -> Result<Db, AuditError> {
    Ok(Db::connect(cfg, size, connect_timeout).await?)
}

/// Like [`connect`], but keeps trying for up to `within`: a worker starting alongside may still be
/// creating the database (the demo, the benchmark, `kick --wait`).
pub async fn connect_within(cfg: &PostgresConfig, within: Duration) -> Result<Db, AuditError> {
    let started = std::time::Instant::now();
    let mut backoff = crate::retry::Backoff::new(Duration::from_millis(200), Duration::from_millis(200));
    loop {
        match connect(cfg, Duration::from_secs(2)).await {
            Err(_) if started.elapsed() < within => tokio::time::sleep(backoff.next_wait()).await,
            result => return result,
        }
    }
}

/// A pool for what needs a session of its own (LISTEN), connected on first use: on
/// `postgres.direct_url` behind a transaction pooler, on `postgres.url` otherwise; `None` when
/// only a transaction pooler is configured.
pub fn session_pool(cfg: &PostgresConfig, size: u32, connect_timeout: Duration) -> Option<PgPool> {
    let url = cfg.session_url()?;
    let opts = db::options(url, Pooler::None).ok()?;
    Some(PgPoolOptions::new().max_connections(size).acquire_timeout(connect_timeout).connect_lazy_with(opts))
}

/// As [`session_pool`], for a session whose statements are long by design (loading the
/// fingerprint of every open ban, `ban_index`): a statement is logged as slow only after a
/// minute.
pub fn bulk_session_pool(cfg: &PostgresConfig, connect_timeout: Duration) -> Option<PgPool> {
    use sqlx::ConnectOptions;
    let url = cfg.session_url()?;
    let opts = db::options(url, Pooler::None)
        .ok()?
        .log_slow_statements(tracing::log::LevelFilter::Warn, Duration::from_secs(60));
    Some(PgPoolOptions::new().max_connections(2).acquire_timeout(connect_timeout).connect_lazy_with(opts))
}

/// Opens a session where [`session_pool`] would and asks it one question: `bouncer check`.
pub async fn check_session(cfg: &PostgresConfig, connect_timeout: Duration) -> Result<(), AuditError> {
    let Some(pool) = session_pool(cfg, 1, connect_timeout) else { return Err(AuditError::NeedsDirectUrl) };
    let answered = sqlx::query("SELECT 1").execute(&pool).await;
    pool.close().await;
    answered?;
    Ok(())
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
    let db = connect(cfg, connect_timeout).await?;
    let statements = console_grants(role);
    let mut tx = db.begin().await?;
    for s in &statements {
        // No parameters: the simple protocol, fine behind any pooler inside a transaction.
        sqlx::raw_sql(sqlx::AssertSqlSafe(s.clone())).execute(&mut *tx).await?;
    }
    tx.commit().await?;
    db.close().await;
    Ok(statements)
}

/// Creates the database if it does not exist yet, then applies pending migrations. Running it
/// again is a no-op. Both need a session: through `postgres.direct_url` behind a transaction
/// pooler, refused ([`AuditError::NeedsDirectUrl`]) when there is none.
pub async fn migrate(cfg: &PostgresConfig, connect_timeout: Duration) -> Result<MigrateReport, AuditError> {
    let session = cfg.session_url().ok_or(AuditError::NeedsDirectUrl)?;
    let url = session.expose_secret();
    let created = if Postgres::database_exists(url).await? {
        false
    } else {
        Postgres::create_database(url).await?;
        true
    };
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(connect_timeout)
        .connect_with(db::options(session, Pooler::None)?)
        .await?;
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

/// The migrations a database has applied.
const APPLIED_VERSIONS: &str = "SELECT version FROM _sqlx_migrations WHERE success ORDER BY version";

async fn applied_versions(pool: &PgPool) -> Result<Vec<i64>, sqlx::Error> {
    sqlx::query_scalar(APPLIED_VERSIONS).fetch_all(pool).await
}

/// How many of the compiled-in migrations this database has not applied yet.
pub async fn pending_migrations(db: &Db) -> Result<usize, AuditError> {
    let applied: Vec<i64> = db
        .run(async |c| {
            let exists: bool =
                db.query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL").fetch_one(&mut *c).await?;
            if !exists {
                return Ok(Vec::new());
            }
            db.query_scalar(APPLIED_VERSIONS).fetch_all(c).await
        })
        .await?;
    Ok(MIGRATOR.iter().filter(|m| !applied.contains(&m.version)).count())
}
