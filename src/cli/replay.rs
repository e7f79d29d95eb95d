//! `bouncer replay`: enforce failed verdicts again once the cause is fixed. A database operation:
//! each verdict goes back to `pending` with its failed users due now (a fresh retry schedule and
//! deadline), who asked is recorded in `replays`, and the owners of the quotas are woken. Users
//! already kicked are not kicked again; RabbitMQ is not involved.

use super::audit::FilterArgs;
use super::output::{self, Format, Tabular};
use super::{Cli, CliError, CliResult};
use crate::audit::query::{self, ReplayCandidate};

#[derive(clap::Args, Debug)]
pub struct ReplayArgs {
    #[command(flatten)]
    filter: FilterArgs,
    /// List what would be replayed, change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Who is replaying (recorded). Default: $BOUNCER_ACTOR, else the OS user.
    #[arg(long, env = "BOUNCER_ACTOR")]
    actor: Option<String>,
    #[arg(long, value_enum)]
    format: Option<Format>,
}

impl Tabular for ReplayCandidate {
    const HEADERS: &'static [&'static str] = &["verdict_id", "status", "vendor", "app_id"];
    fn cells(&self) -> Vec<String> {
        vec![self.verdict_id.clone(), self.status.to_string(), self.vendor.clone(), self.app_id.to_string()]
    }
}

impl serde::Serialize for ReplayCandidate {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        serde_json::json!({"verdict_id": self.verdict_id, "status": self.status, "vendor": self.vendor, "app_id": self.app_id})
            .serialize(s)
    }
}

/// The OS user running the command.
pub fn os_user() -> String {
    std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .ok()
        .or_else(|| {
            let out = std::process::Command::new("id").arg("-un").output().ok()?;
            Some(String::from_utf8_lossy(&out.stdout).trim().to_owned()).filter(|s| !s.is_empty())
        })
        .unwrap_or_else(|| "unknown".into())
}

pub(crate) async fn run(cli: &Cli, args: &ReplayArgs) -> CliResult {
    query::replay_status_rule(args.filter.status).map_err(|e| CliError::usage(format!("--status: {e}")))?;
    let pool = cli.audit_pool().await?;
    // Without --limit a replay takes every match; with it, at most that many.
    let filter = args.filter.filter(None);
    let candidates = query::replay_candidates(&pool, &filter)
        .await
        .map_err(|e| CliError::failed(format!("cannot select verdicts: {e}")))?;
    if args.dry_run {
        let _ = output::print(&candidates, output::resolve(args.format));
        eprintln!("{} verdict(s) would be replayed (dry run: nothing changed)", candidates.len());
        return Ok(());
    }
    if candidates.is_empty() {
        eprintln!("nothing to replay");
        return Ok(());
    }
    let actor = args.actor.clone().unwrap_or_else(os_user);
    let total = candidates.len();
    let done = query::replay(&pool, &candidates, &actor, |done| eprintln!("replayed {done}/{total} verdict(s)"))
        .await
        .map_err(|e| CliError::failed(format!("cannot reopen verdicts: {e}")))?;
    pool.close().await;
    println!("replayed {done} verdict(s) as {actor}");
    Ok(())
}
