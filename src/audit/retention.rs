//! Retention (`[retention]`): the trail's old rows go in small batches, oldest first, each batch a
//! short transaction that skips rows someone else holds and gives up on any lock it would wait for
//! ([`LOCK_TIMEOUT`]), so intake and enforcement never queue behind pruning.
//!
//! What is never pruned, whatever its age: a verdict not finished, or with a kick still pending, a
//! ban still in force or a re-kick still pending on its behalf, or an outcome event not yet sent
//! (the outbox holds it); a ban in force or whose vendor rule still needs a call; a re-kick still
//! pending; an unsent outcome event (the relay deletes those once the broker has them). Vendor
//! calls go by their own time. Rollups have their own window and outlive the rows they counted.

use std::fmt;

use chrono::{DateTime, Utc};

use super::{AuditError, Db};
use crate::config::RetentionConfig;

/// Rows per batch (River's JobCleaner and GoodJob delete 1,000 at a time): a batch of verdicts
/// with their kicks takes tens of milliseconds, short enough that nothing waits long on it.
pub const BATCH: i64 = 1_000;

/// The longest any pruning statement waits for a lock before giving up its batch (it is tried
/// again on the next pass): pruning waits, never the trail's writers.
pub const LOCK_TIMEOUT: &str = "100ms";

/// A kind of row with a retention window, named by its table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Table {
    /// Finished verdicts, with their kicks and replays (deleted with them).
    Verdicts,
    KickAttempts,
    Reentries,
    KickConfirmations,
    RejectedMessages,
    Bans,
    Rollups,
}

impl Table {
    pub const ALL: [Table; 7] = [
        Table::Verdicts,
        Table::KickAttempts,
        Table::Reentries,
        Table::KickConfirmations,
        Table::RejectedMessages,
        Table::Bans,
        Table::Rollups,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Table::Verdicts => "verdicts",
            Table::KickAttempts => "kick_attempts",
            Table::Reentries => "reentries",
            Table::KickConfirmations => "kick_confirmations",
            Table::RejectedMessages => "rejected_messages",
            Table::Bans => "bans",
            Table::Rollups => "rollups",
        }
    }

    /// The window that applies (`None`: kept forever).
    pub fn window(self, r: &RetentionConfig) -> Option<chrono::Duration> {
        match self {
            Table::Verdicts | Table::KickAttempts | Table::Reentries | Table::KickConfirmations => r.verdicts,
            Table::RejectedMessages => r.rejected,
            Table::Bans => r.bans,
            Table::Rollups => r.rollups,
        }
    }

    /// The rows of this table past `$1` that may go: the predicate every statement below shares,
    /// over the alias `t`.
    fn prunable(self) -> &'static str {
        match self {
            Table::Verdicts => {
                "t.received_at < $1 AND t.status <> 'pending' AND t.finished_at < $1
                 -- By key, not through the pending rows' index (see `results`).
                 AND NOT EXISTS (SELECT 1 FROM kicks k WHERE k.verdict_id = t.verdict_id
                                 AND k.status IS NOT DISTINCT FROM 'pending')
                 AND NOT EXISTS (SELECT 1 FROM bans b WHERE b.verdict_id = t.verdict_id AND b.ended_at IS NULL
                                 AND b.expires_at > now())
                 AND NOT EXISTS (SELECT 1 FROM reentries r WHERE r.verdict_id = t.verdict_id
                                 AND r.status IS NOT DISTINCT FROM 'pending')
                 -- Probed per verdict (OFFSET 0 keeps it a subplan): the outbox is a queue whose
                 -- statistics lag, and a hash of it read its dead rows every batch.
                 AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.subject = t.verdict_id OFFSET 0)"
            }
            Table::KickAttempts => "t.started_at < $1",
            Table::Reentries => "t.received_at < $1 AND t.status <> 'pending'",
            Table::KickConfirmations => "t.received_at < $1",
            Table::RejectedMessages => "t.received_at < $1",
            Table::Bans => {
                "coalesce(t.ended_at, t.expires_at) < $1 AND t.rule_state NOT IN ('pending', 'in_force', 'delete_due')
                 -- Through the pending re-entries' index: there is none on `ban_id`, and few are pending.
                 AND NOT EXISTS (SELECT 1 FROM reentries r WHERE r.ban_id = t.id AND r.status = 'pending')"
            }
            Table::Rollups => "t.minute < $1",
        }
    }

    /// The column whose age decides, as an expression over `t` (for the oldest row).
    fn age_column(self) -> &'static str {
        match self {
            Table::Verdicts | Table::Reentries | Table::KickConfirmations | Table::RejectedMessages => "t.received_at",
            Table::KickAttempts => "t.started_at",
            Table::Bans => "coalesce(t.ended_at, t.expires_at)",
            Table::Rollups => "t.minute",
        }
    }

    /// One batch: deletes up to `$2` prunable rows, oldest first; returns the rows deleted from
    /// this table and, for verdicts, the kicks and replays that went with them, then how many rows
    /// were examined and the last of them (verdicts: `$3`, `$4` is where the pass has got to).
    fn delete_batch(self) -> String {
        let (table, key, pred, age) = (self.as_str(), self.key(), self.prunable(), self.age_column());
        match self {
            // The next `$2` verdicts past the cutoff after the cursor, by the received_at index;
            // only those are checked against the guards. Asking for "the oldest prunable" instead
            // made the planner anti-join every old verdict against kicks, bans and the outbox:
            // 1.9 s a batch with 1,400,000 verdicts past the cutoff, and a pass over two days of
            // 1,000,000 would have taken over an hour. Verdict rows are locked first, then their
            // kicks (the lock order everywhere).
            Table::Verdicts => format!(
                "WITH c AS MATERIALIZED (
                          SELECT t.verdict_id, t.received_at FROM verdicts t
                          WHERE t.received_at < $1 AND t.received_at >= $3 AND (t.received_at, t.verdict_id) > ($3, $4)
                          ORDER BY t.received_at, t.verdict_id LIMIT $2),
                      v AS (SELECT t.verdict_id FROM verdicts t
                            WHERE t.verdict_id IN (SELECT verdict_id FROM c) AND {pred}
                            FOR UPDATE SKIP LOCKED),
                      k AS (DELETE FROM kicks WHERE verdict_id IN (SELECT verdict_id FROM v) RETURNING 1),
                      r AS (DELETE FROM replays WHERE verdict_id IN (SELECT verdict_id FROM v) RETURNING 1),
                      d AS (DELETE FROM verdicts WHERE verdict_id IN (SELECT verdict_id FROM v) RETURNING 1),
                      last AS (SELECT received_at, verdict_id FROM c ORDER BY received_at DESC, verdict_id DESC LIMIT 1)
                 SELECT (SELECT count(*) FROM d), (SELECT count(*) FROM k) + (SELECT count(*) FROM r),
                        (SELECT count(*) FROM c), (SELECT received_at FROM last), (SELECT verdict_id FROM last)"
            ),
            _ => format!(
                "WITH d AS (DELETE FROM {table} WHERE {key} IN (
                                SELECT {key} FROM {table} t WHERE {pred} ORDER BY {age} LIMIT $2 FOR UPDATE SKIP LOCKED)
                            RETURNING 1)
                 SELECT count(*), 0::bigint, count(*), NULL::timestamptz, NULL::text FROM d"
            ),
        }
    }

    fn key(self) -> &'static str {
        match self {
            Table::Verdicts => "verdict_id",
            // Rollups have a composite key; the physical row id is stable within the statement.
            Table::Rollups => "ctid",
            _ => "id",
        }
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What one batch removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Removed {
    pub rows: i64,
    /// Rows of dependent tables that went with them (a verdict's kicks and replays).
    pub dependents: i64,
}

/// Where a pass over `verdicts` has got to: the last verdict it examined, by (received_at,
/// verdict_id). The guards keep some old verdicts (an active ban's, say); the pass goes past them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cursor {
    pub at: DateTime<Utc>,
    pub verdict_id: String,
}

impl Cursor {
    /// Before every verdict.
    pub fn start() -> Cursor {
        Cursor { at: DateTime::UNIX_EPOCH, verdict_id: String::new() }
    }
}

/// What one batch did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    pub removed: Removed,
    /// Rows looked at: fewer than [`BATCH`] means the pass is through.
    pub examined: i64,
    /// Verdicts: where the next batch starts.
    pub cursor: Option<Cursor>,
}

/// A batch statement's answer: rows, dependents, examined, and the last examined (at, id).
type BatchRow = (i64, i64, i64, Option<DateTime<Utc>>, Option<String>);

/// Deletes one batch of `table`'s rows older than `cutoff` (verdicts: of the next [`BATCH`]
/// after `after`). A batch that would wait for a lock returns `Ok(None)`: it is given up, and
/// tried again later.
pub async fn prune_batch(
    db: &Db,
    table: Table,
    cutoff: DateTime<Utc>,
    after: &Cursor,
) -> Result<Option<Batch>, AuditError> {
    let mut tx = db.begin().await?;
    // Both local to this transaction: behind a transaction pooler they leave with it.
    db.query(sqlx::AssertSqlSafe(format!("SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))).execute(&mut *tx).await?;
    db.query("SET LOCAL statement_timeout = '60s'").execute(&mut *tx).await?;
    let mut q = db.query_as(sqlx::AssertSqlSafe(table.delete_batch())).bind(cutoff).bind(BATCH);
    if table == Table::Verdicts {
        q = q.bind(after.at).bind(after.verdict_id.as_str());
    }
    let result: Result<BatchRow, sqlx::Error> = q.fetch_one(&mut *tx).await;
    match result {
        Ok((rows, dependents, examined, at, verdict_id)) => {
            tx.commit().await?;
            let cursor = at.zip(verdict_id).map(|(at, verdict_id)| Cursor { at, verdict_id });
            Ok(Some(Batch { removed: Removed { rows, dependents }, examined, cursor }))
        }
        // 55P03 lock_not_available: a lock held by someone else; leave it to them.
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("55P03") => {
            let _ = tx.rollback().await;
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

/// One table's state for `bouncer prune --dry-run` and the metrics.
#[derive(Clone, Debug, serde::Serialize)]
pub struct TableState {
    pub table: &'static str,
    /// Rows kept forever when `None`.
    pub window_days: Option<i64>,
    pub cutoff: Option<DateTime<Utc>>,
    /// The table with its indexes and TOAST, in bytes.
    pub bytes: i64,
    pub oldest: Option<DateTime<Utc>>,
    /// The oldest row that may go (past the cutoff and not needed); how far past the cutoff it
    /// is tells whether pruning keeps up.
    pub oldest_prunable: Option<DateTime<Utc>>,
    /// Rows that would go now (counted only when asked: a count over millions of rows is slow).
    pub prunable_rows: Option<i64>,
}

impl TableState {
    /// Seconds the oldest prunable row is past its cutoff (0 when none waits).
    pub fn behind_seconds(&self) -> f64 {
        match (self.cutoff, self.oldest_prunable) {
            (Some(c), Some(o)) => (c - o).num_milliseconds().max(0) as f64 / 1000.0,
            _ => 0.0,
        }
    }
}

/// The state of every table with a window, at `now`. `count` also counts the rows that would go.
pub async fn states(
    db: &Db,
    r: &RetentionConfig,
    now: DateTime<Utc>,
    count: bool,
) -> Result<Vec<TableState>, AuditError> {
    let mut out = Vec::new();
    for table in Table::ALL {
        let window = table.window(r);
        let cutoff = window.map(|w| now - w);
        let (name, pred, age) = (table.as_str(), table.prunable(), table.age_column());
        let (bytes, oldest): (i64, Option<DateTime<Utc>>) = db
            .run(async |c| {
                db.query_as(sqlx::AssertSqlSafe(format!(
                    "SELECT pg_total_relation_size('{name}'), (SELECT {age} FROM {name} t ORDER BY {age} LIMIT 1)"
                )))
                .fetch_one(c)
                .await
            })
            .await?;
        let (mut oldest_prunable, mut prunable_rows) = (None, None);
        if let Some(cutoff) = cutoff {
            oldest_prunable = db
                .run(async |c| {
                    db.query_scalar(sqlx::AssertSqlSafe(format!(
                        "SELECT {age} FROM {name} t WHERE {pred} ORDER BY {age} LIMIT 1"
                    )))
                    .bind(cutoff)
                    .fetch_optional(c)
                    .await
                })
                .await?;
            if count {
                prunable_rows = Some(
                    db.run(async |c| {
                        db.query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {name} t WHERE {pred}")))
                            .bind(cutoff)
                            .fetch_one(c)
                            .await
                    })
                    .await?,
                );
            }
        }
        out.push(TableState {
            table: name,
            window_days: window.map(|w| w.num_days()),
            cutoff,
            bytes,
            oldest,
            oldest_prunable,
            prunable_rows,
        });
    }
    Ok(out)
}

/// The whole database's size in bytes (it stops growing once retention applies).
pub async fn database_bytes(db: &Db) -> Result<i64, AuditError> {
    Ok(db.run(async |c| db.query_scalar("SELECT pg_database_size(current_database())").fetch_one(c).await).await?)
}

/// Bouncer's tables and when each needs a `VACUUM` by autovacuum's own rule (dead rows over
/// `threshold + scale × live rows`): the queue tables as their migrations tune autovacuum for
/// them, the trail at PostgreSQL's defaults. Used only where autovacuum is off.
const VACUUM_RULES: &[(&str, &str, f64, i64)] = &[
    ("outbox", "VACUUM (SKIP_LOCKED) outbox", 0.01, 1_000),
    ("rollup_deltas", "VACUUM (SKIP_LOCKED) rollup_deltas", 0.01, 1_000),
    ("quota_owners", "VACUUM (SKIP_LOCKED) quota_owners", 0.01, 1_000),
    ("workers", "VACUUM (SKIP_LOCKED) workers", 0.01, 1_000),
    ("verdicts", "VACUUM (SKIP_LOCKED) verdicts", 0.2, 50),
    ("kicks", "VACUUM (SKIP_LOCKED) kicks", 0.2, 50),
    ("kick_attempts", "VACUUM (SKIP_LOCKED) kick_attempts", 0.2, 50),
    ("replays", "VACUUM (SKIP_LOCKED) replays", 0.2, 50),
    ("rejected_messages", "VACUUM (SKIP_LOCKED) rejected_messages", 0.2, 50),
    ("bans", "VACUUM (SKIP_LOCKED) bans", 0.2, 50),
    ("reentries", "VACUUM (SKIP_LOCKED) reentries", 0.2, 50),
    ("kick_confirmations", "VACUUM (SKIP_LOCKED) kick_confirmations", 0.2, 50),
    ("rollups", "VACUUM (SKIP_LOCKED) rollups", 0.2, 50),
];

/// Whether the server runs autovacuum.
pub async fn autovacuum_on(db: &Db) -> Result<bool, AuditError> {
    let on: String =
        db.run(async |c| db.query_scalar("SELECT current_setting('autovacuum')").fetch_one(c).await).await?;
    Ok(on == "on")
}

/// The `VACUUM` statements of Bouncer's tables whose dead rows are past autovacuum's rule now.
pub async fn vacuums_due(db: &Db) -> Result<Vec<&'static str>, AuditError> {
    let stats: Vec<(String, i64, i64)> = db
        .run(async |c| {
            db.query_as("SELECT relname::text, n_live_tup, n_dead_tup FROM pg_stat_user_tables WHERE schemaname = current_schema()")
                .fetch_all(c)
                .await
        })
        .await?;
    Ok(VACUUM_RULES
        .iter()
        .filter(|(table, _, scale, threshold)| {
            stats
                .iter()
                .any(|(name, live, dead)| name == table && *dead as f64 > *threshold as f64 + scale * *live as f64)
        })
        .map(|(_, vacuum, _, _)| *vacuum)
        .collect())
}
