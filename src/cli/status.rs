//! `bouncer status`: who enforces what right now. Quota owners (worker, since, last confirmed),
//! live replicas, and pending users with the oldest pending verdict per app; read from
//! PostgreSQL, so it works from any host with database access.

use super::output::{self, Format, Tabular};
use super::{Cli, CliError, CliResult};
use crate::audit::leases::{self, OwnerRow, WorkerRow};
use crate::audit::work::{self, PendingByApp};

#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    /// `table` (default on a terminal) or `json` (one object).
    #[arg(long, value_enum)]
    format: Option<Format>,
}

impl Tabular for OwnerRow {
    const HEADERS: &'static [&'static str] = &["quota_group", "worker_id", "term", "since", "last_confirmed", "live"];
    fn cells(&self) -> Vec<String> {
        vec![
            self.quota_group.clone(),
            self.worker_id.clone(),
            self.term.to_string(),
            output::time(&self.acquired_at),
            output::time(&self.confirmed_at),
            if self.live { "yes".into() } else { "expired".into() },
        ]
    }
}

impl Tabular for WorkerRow {
    const HEADERS: &'static [&'static str] = &["worker_id", "hostname", "pid", "started_at", "last_seen_at", "live"];
    fn cells(&self) -> Vec<String> {
        vec![
            self.worker_id.clone(),
            self.hostname.clone(),
            self.pid.to_string(),
            output::time(&self.started_at),
            output::time(&self.last_seen_at),
            if self.live { "yes".into() } else { "gone".into() },
        ]
    }
}

impl Tabular for PendingByApp {
    const HEADERS: &'static [&'static str] = &["vendor", "app_id", "pending_users", "due_now", "oldest_pending"];
    fn cells(&self) -> Vec<String> {
        vec![
            self.vendor.clone(),
            self.app_id.to_string(),
            self.pending_users.to_string(),
            self.due_users.to_string(),
            self.oldest_pending_at.as_ref().map(output::time).unwrap_or_default(),
        ]
    }
}

pub(crate) async fn run(cli: &Cli, args: &StatusArgs) -> CliResult {
    let pool = cli.audit_pool().await?;
    let result = async {
        let owners = leases::owners(&pool).await?;
        let workers = leases::workers(&pool).await?;
        let pending = work::pending_by_app(&pool).await?;
        let outbox = crate::audit::outbox::depth(&pool).await?;
        Ok::<_, crate::audit::AuditError>((owners, workers, pending, outbox))
    }
    .await;
    pool.close().await;
    let (owners, workers, pending, (events, oldest)) =
        result.map_err(|e| CliError::failed(format!("status failed: {e}")))?;
    // The outcome relay's and audit maintenance's leases are not vendor quotas: shown on their own.
    let relay_group = crate::enforcement::QuotaGroup::relay();
    let maintenance_group = crate::enforcement::QuotaGroup::maintenance();
    let (relay, owners): (Vec<OwnerRow>, Vec<OwnerRow>) =
        owners.into_iter().partition(|o| o.quota_group == relay_group.as_str());
    let (maintenance, owners): (Vec<OwnerRow>, Vec<OwnerRow>) =
        owners.into_iter().partition(|o| o.quota_group == maintenance_group.as_str());
    let printed = match output::resolve(args.format) {
        Format::Json => {
            let doc = serde_json::json!({"quota_owners": owners, "workers": workers, "pending": pending,
                "outbox": {"events": events, "oldest_seconds": oldest, "relay": relay.first()},
                "maintenance": maintenance.first()});
            println!("{doc}");
            Ok(())
        }
        format => (|| {
            println!("quota owners:");
            output::print(&owners, format)?;
            println!("\nreplicas:");
            output::print(&workers, format)?;
            println!("\npending:");
            output::print(&pending, format)?;
            // The outcome relay is the `outbox:relay` row among the quota owners.
            let by = relay.first().map_or_else(|| "no replica".to_owned(), |r| r.worker_id.clone());
            println!("\noutcome events waiting in the outbox: {events} (oldest {oldest:.1} s); relayed by {by}");
            let by = maintenance.first().map_or_else(|| "no replica".to_owned(), |r| r.worker_id.clone());
            println!("rollups folded and retention applied by {by}");
            Ok::<(), std::io::Error>(())
        })(),
    };
    printed.map_err(|e| CliError::failed(format!("status failed: {e}")))
}
