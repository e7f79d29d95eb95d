//! The `bouncer` command line. Each subcommand is a small module; this file only parses and
//! dispatches. Exit codes: 0 success, 1 a run-time failure (a service unreachable, a command that
//! did not finish), 2 bad usage or invalid configuration.

mod audit;
mod check;
mod delegated;
mod error;
mod kick;
pub mod output;
mod prune;
mod replay;
mod status;
mod unban;
mod web;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::Config;
use crate::telemetry::{self, LogFormat};

#[derive(Parser, Debug)]
#[command(name = "bouncer", version, about = "Enforces content-moderation verdicts in ZEGO and TRTC rooms")]
pub struct Cli {
    /// Configuration file. Without this flag a missing `bouncer.toml` is fine: the defaults and
    /// `BOUNCER_*` environment variables are used.
    #[arg(long, global = true, env = "BOUNCER_CONFIG")]
    config: Option<PathBuf>,
    /// Log format: text (default) or json.
    #[arg(long, global = true, env = "BOUNCER_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Validate the configuration, then check that RabbitMQ and PostgreSQL answer.
    Check(check::CheckArgs),
    /// Create the database if needed and apply the audit schema migrations (idempotent).
    Migrate(MigrateArgs),
    /// Consume verdicts and enforce them until SIGINT/SIGTERM.
    Run,
    /// Review the audit trail: rows, one verdict's story, or a summary.
    Audit(audit::AuditArgs),
    /// Re-enforce failed verdicts (after the cause is fixed): back to pending, due now.
    Replay(replay::ReplayArgs),
    /// Apply `[retention]` now (with --dry-run: show what would go, per table).
    Prune(prune::PruneArgs),
    /// Quota owners, live replicas, and pending users per app.
    Status(status::StatusArgs),
    /// Publish a manual verdict through the same queue and contract (with --ban-secs: and ban).
    Kick(kick::KickArgs),
    /// End a user's bans now (recorded with who and why).
    Unban(unban::UnbanArgs),
    /// The ops console: the audit trail as pages, and replay (reads PostgreSQL only).
    Web(web::WebArgs),
    /// Run the whole system on this machine for under a minute and show what happened
    /// (bouncer-tools demo; `bouncer demo --help` for its flags).
    #[command(disable_help_flag = true)]
    Demo(delegated::Args),
    /// Load-test a worker against the simulator and report utilisation, fill and latency
    /// (bouncer-tools bench).
    #[command(disable_help_flag = true)]
    Bench(delegated::Args),
    /// Run a vendor simulator (ZEGO KickoutUser and TRTC RemoveUser*) for tests and sandboxes
    /// (bouncer-tools sim).
    #[command(disable_help_flag = true)]
    Sim(delegated::Args),
}

pub use audit::print_story;
pub use error::{CliError, CliResult, EXIT_FAILURE, EXIT_USAGE, exit};

impl Cli {
    /// Loads the configuration the flags point at, printing every problem on failure.
    fn load_config(&self) -> Result<Config, CliError> {
        let (path, required) = match &self.config {
            Some(p) => (p.clone(), true),
            None => (PathBuf::from("bouncer.toml"), false),
        };
        Config::load(&path, required).map_err(|e| invalid_config(&path, &e))
    }
}

impl Cli {
    /// A pool to the configured audit database, for commands that only read or change it.
    async fn audit_pool(&self) -> Result<crate::audit::Db, CliError> {
        let config = self.load_config()?;
        crate::audit::connect(&config.postgres, std::time::Duration::from_secs(5))
            .await
            .map_err(|e| CliError::failed(format!("cannot reach the audit database: {e}")))
    }
}

/// Every problem of a configuration, each with its key.
pub fn invalid_config(path: &std::path::Path, e: &crate::config::ConfigError) -> CliError {
    let mut text = format!("{}: invalid configuration", path.display());
    for p in &e.0 {
        text.push_str(&format!("\n  error: {p}"));
    }
    CliError::usage(text)
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo prints its own story; its worker only speaks up about problems.
    // The tools' commands replace this process with `bouncer-tools` before anything else runs.
    match &cli.command {
        Command::Sim(args) => return delegated::exec(&cli, "sim", args),
        Command::Demo(args) => return delegated::exec(&cli, "demo", args),
        Command::Bench(args) => return delegated::exec(&cli, "bench", args),
        _ => {}
    }
    telemetry::init(cli.log_format, "info");
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    runtime.block_on(run(cli))
}

async fn run(cli: Cli) -> ExitCode {
    error::exit(match &cli.command {
        Command::Check(args) => check::run(&cli, args).await,
        Command::Migrate(args) => migrate(&cli, args).await,
        Command::Run => run_worker(&cli).await,
        Command::Audit(args) => audit::run(&cli, args).await,
        Command::Replay(args) => replay::run(&cli, args).await,
        Command::Status(args) => status::run(&cli, args).await,
        Command::Prune(args) => prune::run(&cli, args).await,
        Command::Kick(args) => kick::run(&cli, args).await,
        Command::Unban(args) => unban::run(&cli, args).await,
        Command::Web(args) => web::run(&cli, args).await,
        // Handed to bouncer-tools in `main`; never reached.
        Command::Sim(_) | Command::Demo(_) | Command::Bench(_) => Err(CliError::failed("handed to bouncer-tools")),
    })
}

#[derive(clap::Args, Debug)]
struct MigrateArgs {
    /// Then grant this existing role what `bouncer web` needs and nothing more: reads of the
    /// audit tables and the writes a replay makes (src/audit/console_grants.sql). Idempotent.
    #[arg(long, value_name = "ROLE")]
    grant_console: Option<String>,
}

async fn migrate(cli: &Cli, args: &MigrateArgs) -> CliResult {
    let config = cli.load_config()?;
    let timeout = std::time::Duration::from_secs(10);
    let r = crate::audit::migrate(&config.postgres, timeout)
        .await
        .map_err(|e| CliError::failed(format!("migrate failed: {e}")))?;
    if r.created_database {
        println!("created the database");
    }
    println!("applied {} migration(s); {} in all; schema is up to date", r.applied, r.total);
    if let Some(role) = &args.grant_console {
        let ran = crate::audit::grant_console(&config.postgres, role, timeout)
            .await
            .map_err(|e| CliError::failed(format!("cannot grant the console role {role:?}: {e}")))?;
        for statement in ran {
            println!("{statement};");
        }
    }
    Ok(())
}

async fn run_worker(cli: &Cli) -> CliResult {
    let config = cli.load_config()?;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let signal = shutdown.clone();
    tokio::spawn(async move {
        crate::shutdown::signal().await;
        tracing::info!("shutdown requested");
        signal.cancel();
    });
    let (health_tx, health_rx) = tokio::sync::watch::channel(None);
    let metrics = crate::http::install_metrics();
    match crate::http::serve(config.http.listen, metrics, health_rx).await {
        // Tests and scripts read the bound port from this line (useful with port 0).
        Ok(addr) => tracing::info!(%addr, "serving /metrics, /healthz and /readyz"),
        Err(e) => return Err(CliError::failed(format!("cannot listen on http.listen = {}: {e}", config.http.listen))),
    }
    let api = match crate::api::serve(&config).await {
        // As above: tests and scripts read the API's port from this line.
        Ok(Some(api)) => {
            tracing::info!(addr = %api.addr, tokens = config.api.tokens.len(), "serving the public API");
            Some(api)
        }
        Ok(None) => None,
        Err(e) => return Err(CliError::failed(format!("cannot serve the API: {e}"))),
    };
    let known_bans = api.as_ref().map(|a| a.known_bans());
    // Once the worker is wired up (its vendor-call thread started), everything but the API's
    // and the vendor calls' threads, now and started from now on, yields the CPU to them.
    let background_nice = api.is_some().then_some(config.api.background_nice);
    let ran = crate::worker::run(config, known_bans, shutdown, move |h| {
        if let Some(nice) = background_nice {
            crate::priority::lower_background(nice);
        }
        let _ = health_tx.send(Some(h));
    })
    .await;
    if let Some(api) = api {
        api.stop().await;
    }
    ran.map_err(CliError::failed)
}
