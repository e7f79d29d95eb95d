//! Audit maintenance, run by the one replica holding the `audit:maintenance` lease (handed out by
//! the elector like a quota group, and taken over when its holder stops or dies): the folder moves
//! rollup deltas into the per-minute rollups every second, and the pruner applies `[retention]`
//! once a minute, in batches with pauses between them.
//!
//! Correctness does not rest on the lease: a fold deletes the deltas it adds in one statement and
//! skips rows another folder holds, and pruning deletes only rows that may go, skipping locked
//! ones. The lease keeps the work in one place, so replicas do not compete for the same rows.

use std::time::Duration;

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use crate::audit::Db;
use crate::audit::retention::{self, Table};
use crate::audit::rollups;
use crate::config::RetentionConfig;

/// How often committed deltas are folded: the rollups' own lag (readers add unfolded deltas, so
/// this bounds work, not correctness).
const FOLD_EVERY: Duration = Duration::from_secs(1);
/// How often a pruning pass starts.
const PRUNE_EVERY: Duration = Duration::from_secs(60);
/// The shortest pause between two batches (River pauses 50 ms – 1 s between its batches).
const PAUSE: Duration = Duration::from_millis(50);
/// After each batch pruning rests this many times as long as the batch took, so it takes at most
/// a ninth of one backend's time however busy the server is: a busy server makes batches slower
/// and the rests longer. Measured (`bouncer bench --preset retention`, BENCHMARKS.md): with 50 ms
/// rests alone pruning took about half a backend beside intake running flat out on 2 cores and
/// cost intake ~29 % of its rate; a ninth keeps that near the 10 % budget, and still prunes two
/// days of 1,000,000 verdicts within the hour (16 min) and 10,000,000 a day in about two hours
/// a day, spread over it.
const REST_FACTOR: u32 = 8;
/// The longest rest, whatever one batch took (a batch stalled by a checkpoint should not stop
/// pruning for minutes).
const REST_MAX: Duration = Duration::from_secs(5);
/// How long to wait after an error before trying again.
const BACKOFF: Duration = Duration::from_secs(5);

/// Folds and prunes until `cancel`.
pub(crate) async fn run(db: Db, retention: RetentionConfig, cancel: CancellationToken) {
    tracing::info!("audit maintenance: folding rollups and applying retention on this replica");
    let folder = fold_loop(&db, &cancel);
    let pruner = prune_loop(&db, &retention, &cancel);
    tokio::join!(folder, pruner);
}

async fn fold_loop(db: &Db, cancel: &CancellationToken) {
    let mut every = tokio::time::interval(FOLD_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = every.tick() => {}
        }
        // Fold until the deltas are fewer than a batch (a backlog after downtime drains at once).
        loop {
            match rollups::fold(db).await {
                Ok(n) => {
                    metrics::counter!("bouncer_rollup_deltas_folded_total").increment(n.max(0) as u64);
                    if n < rollups::FOLD_BATCH || cancel.is_cancelled() {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot fold rollups; trying again shortly");
                    sleep_or_cancel(BACKOFF, cancel).await;
                    break;
                }
            }
        }
    }
}

async fn prune_loop(db: &Db, retention: &RetentionConfig, cancel: &CancellationToken) {
    let mut warned = false;
    loop {
        if let Err(e) = prune(db, retention, cancel).await {
            tracing::warn!(error = %e, "pruning stopped early; next pass in a minute");
        }
        vacuum_if_autovacuum_is_off(db, &mut warned).await;
        if sleep_or_cancel(PRUNE_EVERY, cancel).await {
            return;
        }
    }
}

/// One pass over every table with a window: batches until a table has nothing left past its
/// cutoff (or a batch was given up to a lock). Returns the rows removed per table.
pub async fn prune(
    db: &Db,
    retention: &RetentionConfig,
    cancel: &CancellationToken,
) -> Result<Vec<(Table, retention::Removed)>, crate::audit::AuditError> {
    let mut out = Vec::new();
    for table in Table::ALL {
        let Some(window) = table.window(retention) else { continue };
        // One cutoff per table and pass: rows that age past it during the pass wait for the next.
        let cutoff = Utc::now() - window;
        let mut total = retention::Removed::default();
        let mut cursor = retention::Cursor::start();
        loop {
            if cancel.is_cancelled() {
                break;
            }
            let began = std::time::Instant::now();
            let Some(batch) = retention::prune_batch(db, table, cutoff, &cursor).await? else {
                tracing::debug!(%table, "a pruning batch met a lock and was given up");
                break;
            };
            let removed = batch.removed;
            total.rows += removed.rows;
            total.dependents += removed.dependents;
            metrics::counter!("bouncer_rows_pruned_total", "table" => table.as_str()).increment(removed.rows as u64);
            if table == Table::Verdicts {
                metrics::counter!("bouncer_rows_pruned_total", "table" => "kicks+replays")
                    .increment(removed.dependents as u64);
            }
            if batch.examined < retention::BATCH {
                break;
            }
            if let Some(c) = batch.cursor {
                cursor = c;
            }
            sleep_or_cancel(rest_after(began.elapsed()), cancel).await;
        }
        if total.rows > 0 {
            tracing::info!(%table, rows = total.rows, with_them = total.dependents, %cutoff, "pruned");
        }
        out.push((table, total));
    }
    Ok(out)
}

/// Where the server's autovacuum is off, Bouncer's own tables would never give back their dead
/// rows: the outbox, rollup deltas and leases (rewritten every second) would bloat and slow every
/// read of them, and the space pruning frees would never be reused. So the maintenance replica
/// says so once and vacuums its tables by autovacuum's own rule after each pruning pass.
async fn vacuum_if_autovacuum_is_off(db: &Db, warned: &mut bool) {
    match retention::autovacuum_on(db).await {
        Ok(true) => return,
        Ok(false) => {}
        Err(e) => {
            tracing::debug!(error = %e, "cannot read the autovacuum setting");
            return;
        }
    }
    if !*warned {
        tracing::warn!(
            "PostgreSQL's autovacuum is off: this replica vacuums Bouncer's tables itself after each pruning pass; turn autovacuum on"
        );
        *warned = true;
    }
    let due = match retention::vacuums_due(db).await {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read table statistics for vacuuming");
            return;
        }
    };
    for vacuum in due {
        let started = std::time::Instant::now();
        match db.vacuum(vacuum).await {
            Ok(()) => tracing::info!(
                statement = vacuum,
                seconds = started.elapsed().as_secs_f64(),
                "vacuumed (autovacuum is off)"
            ),
            Err(e) => tracing::warn!(statement = vacuum, error = %e, "vacuum failed"),
        }
    }
}

/// How long pruning rests after a batch that took `batch`.
fn rest_after(batch: Duration) -> Duration {
    (batch * REST_FACTOR).clamp(PAUSE, REST_MAX)
}

/// Sleeps for `d`; true if cancelled first.
async fn sleep_or_cancel(d: Duration, cancel: &CancellationToken) -> bool {
    tokio::select! {
        () = cancel.cancelled() => true,
        () = tokio::time::sleep(d) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pruning_rests_eight_times_as_long_as_each_batch_took_within_bounds() {
        assert_eq!(rest_after(Duration::from_millis(40)), Duration::from_millis(320));
        assert_eq!(rest_after(Duration::from_millis(1)), PAUSE, "never less than the shortest pause");
        assert_eq!(rest_after(Duration::from_secs(3)), REST_MAX, "never longer than the longest rest");
    }
}
