//! `bouncer prune`: applies `[retention]` now (what the replica holding the maintenance lease does
//! once a minute), or with `--dry-run` shows what would go: per table, the cutoff, the oldest row,
//! the rows past the cutoff that may go, and the table's size. Safe beside running replicas:
//! batches skip rows others hold and never wait on a lock.

use tokio_util::sync::CancellationToken;

use super::output::{self, Format, Tabular};
use super::{Cli, CliError, CliResult};
use crate::audit::retention::{self, TableState};

#[derive(clap::Args, Debug)]
pub struct PruneArgs {
    /// Change nothing: show what would be pruned.
    #[arg(long)]
    dry_run: bool,
    /// `table` (default on a terminal), `json` (one object per table) or `csv`.
    #[arg(long, value_enum)]
    format: Option<Format>,
}

impl Tabular for TableState {
    const HEADERS: &'static [&'static str] =
        &["table", "keep_days", "cutoff", "oldest_row", "oldest_prunable", "would_prune", "size_mib"];
    fn cells(&self) -> Vec<String> {
        vec![
            self.table.to_owned(),
            self.window_days.map_or_else(|| "forever".into(), |d| d.to_string()),
            self.cutoff.as_ref().map(output::time).unwrap_or_default(),
            self.oldest.as_ref().map(output::time).unwrap_or_default(),
            self.oldest_prunable.as_ref().map(output::time).unwrap_or_default(),
            self.prunable_rows.map(|n| n.to_string()).unwrap_or_default(),
            format!("{:.1}", self.bytes as f64 / (1024.0 * 1024.0)),
        ]
    }
}

/// Rows removed from one table by `bouncer prune`.
#[derive(serde::Serialize)]
struct Pruned {
    table: &'static str,
    rows: i64,
    /// A verdict's kicks and replays, removed with it.
    with_them: i64,
}

impl Tabular for Pruned {
    const HEADERS: &'static [&'static str] = &["table", "rows_pruned", "with_them"];
    fn cells(&self) -> Vec<String> {
        vec![self.table.to_owned(), self.rows.to_string(), self.with_them.to_string()]
    }
}

pub(crate) async fn run(cli: &Cli, args: &PruneArgs) -> CliResult {
    let config = cli.load_config()?;
    let pool = cli.audit_pool().await?;
    let format = output::resolve(args.format);
    let printed = if args.dry_run {
        let states = retention::states(&pool, &config.retention, chrono::Utc::now(), true).await;
        pool.close().await;
        let states = states.map_err(|e| CliError::failed(format!("prune --dry-run failed: {e}")))?;
        output::print(&states, format)
    } else {
        let removed = crate::maintenance::prune(&pool, &config.retention, &CancellationToken::new()).await;
        pool.close().await;
        let removed = removed.map_err(|e| CliError::failed(format!("prune failed: {e}")))?;
        let rows: Vec<Pruned> = removed
            .into_iter()
            .map(|(t, r)| Pruned { table: t.as_str(), rows: r.rows, with_them: r.dependents })
            .collect();
        output::print(&rows, format)
    };
    printed.map_err(|e| CliError::failed(format!("prune failed: {e}")))
}
