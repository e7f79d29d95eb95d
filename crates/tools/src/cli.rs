//! The `bouncer-tools` command line: `demo`, `bench` and `sim`, with the same global flags, exit
//! codes and error type as `bouncer` (which hands these commands over to this binary).

use std::path::PathBuf;
use std::process::ExitCode;

use bouncer::cli::{EXIT_FAILURE, exit};
use bouncer::telemetry::{self, LogFormat};
use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "bouncer", bin_name = "bouncer", version, about = "Bouncer's demo, load test and vendor simulator")]
pub struct ToolsCli {
    /// Configuration file (`sim` reads its [[zego]] and [[trtc]] sections; default `bouncer.toml`).
    #[arg(long, global = true, env = "BOUNCER_CONFIG")]
    pub config: Option<PathBuf>,
    /// Log format: text (default) or json.
    #[arg(long, global = true, env = "BOUNCER_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the whole system on this machine for under a minute and show what happened.
    Demo(crate::demo::DemoArgs),
    /// Load-test a worker against the simulator and report utilisation, fill and latency.
    Bench(crate::bench::BenchArgs),
    /// Run a vendor simulator (ZEGO KickoutUser and TRTC RemoveUser*) for tests and sandboxes.
    Sim(crate::sim::SimArgs),
}

/// Entry point of the `bouncer-tools` binary.
pub fn main() -> ExitCode {
    let cli = ToolsCli::parse();
    // The demo and the bench print their own story; their workers only speak up about problems.
    let default_level = if matches!(cli.command, Command::Sim(_)) { "info" } else { "warn" };
    telemetry::init(cli.log_format, default_level);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    runtime.block_on(async {
        exit(match &cli.command {
            Command::Demo(args) => crate::demo::run(args).await,
            Command::Bench(args) => crate::bench::run(args).await,
            Command::Sim(args) => crate::sim::run(cli.config.as_deref(), args).await,
        })
    })
}
