//! How statements reach PostgreSQL: over a pooled connection as they are, or, behind a
//! transaction pooler, each unit of work in a transaction of its own with unnamed statements.
//!
//! Why, behind a transaction pooler (PgBouncer's `pool_mode = transaction`): the pooler lends a
//! server connection until the end of a transaction, and a statement outside one is a
//! transaction that ends at each Sync. sqlx sends a statement with parameters in two exchanges —
//! parse and describe, then bind and execute — each ended by a Sync, so outside a transaction the
//! second may reach another server connection: one where the statement does not exist, or where
//! another client's unnamed statement waits to run with our parameters. Inside a transaction the
//! pooler keeps the server until COMMIT. And a named prepared statement (sqlx caches statements
//! as `sqlx_s_1`, `sqlx_s_2`, … per client connection) outlives the transaction on a server the
//! next client gets, which is how `bouncer migrate` failed behind PgBouncer 1.18 with
//! `prepared statement "sqlx_s_2" already exists`. So there every statement is unnamed (parsed
//! each time) and runs inside BEGIN … COMMIT: two round trips more per unit of work and a parse
//! per statement (README, "Deploying behind a pooler", has the measured cost).
//!
//! Everything else that needs a session is not done through such a pooler at all: LISTEN
//! (wake-ups) and migrations (sqlx takes a session advisory lock) use `postgres.direct_url`, and
//! connections send no startup parameter a pooler would refuse (`extra_float_digits`).

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use sqlx::postgres::{PgArguments, PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::query::{Query, QueryAs, QueryScalar};
use sqlx::{ConnectOptions, FromRow, PgConnection, PgPool, Postgres, SqlSafeStr, Transaction};

use crate::config::{Pooler, PostgresConfig};

/// A pool of connections to the audit database, and how statements must travel over it.
#[derive(Clone, Debug)]
pub struct Db {
    pool: PgPool,
    pooler: Pooler,
}

impl Db {
    /// A session pool (from `audit::bulk_session_pool`) as a `Db`: direct, never a pooler.
    pub fn session(pool: PgPool) -> Db {
        Db { pool, pooler: Pooler::None }
    }
}

/// Connection options for `url`, as `pooler` needs them.
pub(crate) fn options(url: &SecretString, pooler: Pooler) -> Result<PgConnectOptions, sqlx::Error> {
    let opts: PgConnectOptions = url.expose_secret().parse()?;
    // Statement logging would put user ids into logs at INFO; keep it for slow statements only.
    let opts = opts
        .log_statements(tracing::log::LevelFilter::Trace)
        .log_slow_statements(tracing::log::LevelFilter::Warn, Duration::from_secs(2));
    Ok(match pooler {
        // No JIT: Bouncer's statements touch a few rows by key, but the planner prices a GIN probe
        // of `kick_attempts.verdict_ids` at tens of thousands of rows (its statistics cannot know
        // that verdict ids are unique), so writing ten finished verdicts' events looked worth
        // compiling: 430 ms of LLVM for 1 ms of work, 2 - 4 s on a busy host (found by the
        // retention bench). A startup parameter, so it holds for every statement of the session.
        Pooler::None => opts.options([("jit", "off")]),
        // PgBouncer refuses startup parameters it cannot track; sqlx sends `extra_float_digits`
        // unless told not to (Bouncer reads no floats that would lose digits: counts and
        // durations in milliseconds, rounded on purpose). Nor can `jit` travel that way: the
        // README asks for `ALTER ROLE … SET jit = off` behind a pooler.
        Pooler::Transaction => opts.extra_float_digits(None).statement_cache_capacity(0),
    })
}

impl Db {
    /// A pool of up to `size` connections to `postgres.url`; waits at most `connect_timeout` for
    /// the first.
    pub async fn connect(cfg: &PostgresConfig, size: u32, connect_timeout: Duration) -> Result<Db, sqlx::Error> {
        let pool = PgPoolOptions::new()
            .max_connections(size)
            .acquire_timeout(connect_timeout)
            .connect_with(options(&cfg.url, cfg.pooler)?)
            .await?;
        Ok(Db { pool, pooler: cfg.pooler })
    }

    /// A pool of `size` connections to `postgres.url` kept open for a listener that must answer
    /// fast under load (the public API): it serves (answering 503) while PostgreSQL is away, a
    /// statement waits at most `acquire_timeout` for a connection, and connections are opened
    /// by [`Db::keep_open`] in the background, never by a request. Why: a connection opened
    /// inside a request's acquire is abandoned when that request gives up, and under a burst the
    /// waiters that reach the front of the queue have almost no time left, so no connection is
    /// ever completed and every request times out (sqlx issue 3513). Connections are not pinged
    /// before each use (a round trip per check); a dead one fails its request and is replaced.
    pub fn connect_kept_open(cfg: &PostgresConfig, size: u32, acquire_timeout: Duration) -> Result<Db, sqlx::Error> {
        let mut pool = PgPoolOptions::new()
            .max_connections(size)
            .acquire_timeout(acquire_timeout)
            .test_before_acquire(false)
            .idle_timeout(None);
        if cfg.pooler == Pooler::None {
            // The API's statements are few and run thousands of times a second: one plan each,
            // kept. PostgreSQL would otherwise re-plan a statement whose parameters are arrays
            // (a batch of checks) on every execution, because a plan for the batch in hand looks
            // cheaper than one for any batch — and planning it costs more than running it.
            // (Behind a transaction pooler statements are unnamed and planned each time anyway,
            // and a session setting would leak to other clients of the pooler's connection.)
            pool = pool.after_connect(|conn, _| {
                Box::pin(async move {
                    sqlx::raw_sql("SET plan_cache_mode = force_generic_plan").execute(conn).await?;
                    Ok(())
                })
            });
        }
        let pool = pool.connect_lazy_with(options(&cfg.url, cfg.pooler)?);
        Ok(Db { pool, pooler: cfg.pooler })
    }

    /// Opens connections until the pool holds `size`, every `every`, until `stop`.
    pub async fn keep_open(self, size: u32, every: Duration, stop: tokio_util::sync::CancellationToken) {
        loop {
            let missing = size.saturating_sub(self.pool.size());
            if missing > 0 {
                // Acquired and released at once: each opens a connection the pool keeps.
                let opened = futures_util::future::join_all((0..missing).map(|_| self.pool.acquire())).await;
                drop(opened);
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
        }
    }

    /// Runs `work` on one connection: as it is on a direct connection; behind a transaction
    /// pooler inside a transaction of its own, committed if `work` succeeds and rolled back if
    /// it fails. For one statement, or several that need no transaction of their own.
    pub async fn run<T>(
        &self,
        work: impl AsyncFnOnce(&mut PgConnection) -> Result<T, sqlx::Error>,
    ) -> Result<T, sqlx::Error> {
        match self.pooler {
            Pooler::None => work(&mut *self.pool.acquire().await?).await,
            Pooler::Transaction => {
                let mut tx = self.pool.begin().await?;
                match work(&mut tx).await {
                    Ok(v) => {
                        tx.commit().await?;
                        Ok(v)
                    }
                    Err(e) => {
                        // Hand the server back to the pooler now, not when this connection is
                        // next used.
                        let _ = tx.rollback().await;
                        Err(e)
                    }
                }
            }
        }
    }

    /// One utility statement outside any transaction block (`VACUUM` refuses to run in one), by
    /// the simple protocol; through a transaction pooler it is a transaction of its own.
    pub(crate) async fn utility(&self, sql: &'static str) -> Result<(), sqlx::Error> {
        sqlx::raw_sql(sql).execute(&mut *self.pool.acquire().await?).await?;
        Ok(())
    }

    /// A `VACUUM`, paced as autovacuum paces its own (`vacuum_cost_delay` 2 ms, PostgreSQL's
    /// `autovacuum_vacuum_cost_delay` default; a manual `VACUUM` runs unpaced and would take the
    /// disk and a core from intake). Behind a transaction pooler a session setting could land on
    /// another client's connection, so there it runs unpaced.
    pub(crate) async fn vacuum(&self, sql: &'static str) -> Result<(), sqlx::Error> {
        if self.pooler != Pooler::None {
            return self.utility(sql).await;
        }
        let mut c = self.pool.acquire().await?;
        sqlx::raw_sql("SET vacuum_cost_delay = '2ms'").execute(&mut *c).await?;
        let done = sqlx::raw_sql(sql).execute(&mut *c).await;
        if sqlx::raw_sql("RESET vacuum_cost_delay").execute(&mut *c).await.is_err() {
            // The setting must not outlive this vacuum on a pooled connection.
            c.close_on_drop();
        }
        done.map(|_| ())
    }

    /// A transaction, in either mode.
    pub async fn begin(&self) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
        self.pool.begin().await
    }

    /// Whether statements may be prepared by name and cached on the connection.
    pub(crate) fn statements_named(&self) -> bool {
        self.pooler == Pooler::None
    }

    /// A statement, prepared by name only where that survives (see the module docs).
    pub fn query<'q>(&self, sql: impl SqlSafeStr) -> Query<'q, Postgres, PgArguments> {
        sqlx::query(sql).persistent(self.statements_named())
    }

    /// A statement whose rows become `O`.
    pub fn query_as<'q, O>(&self, sql: impl SqlSafeStr) -> QueryAs<'q, Postgres, O, PgArguments>
    where
        O: for<'r> FromRow<'r, PgRow>,
    {
        sqlx::query_as(sql).persistent(self.statements_named())
    }

    /// A statement whose rows are one value each.
    pub fn query_scalar<'q, O>(&self, sql: impl SqlSafeStr) -> QueryScalar<'q, Postgres, O, PgArguments>
    where
        (O,): for<'r> FromRow<'r, PgRow>,
    {
        sqlx::query_scalar(sql).persistent(self.statements_named())
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}
