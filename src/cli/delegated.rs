//! `bouncer sim`, `bouncer demo` and `bouncer bench` are served by the `bouncer-tools` binary, so
//! the worker ships without the simulator and the load generator. Like `git` and `cargo` with
//! their external subcommands, this process is replaced by `bouncer-tools <command> <args>`: found
//! beside this executable first (a `cargo build` puts both in `target/<profile>/`, the container
//! image ships both), then on `PATH`.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::{Command, ExitCode};

use super::Cli;

/// Everything after the subcommand, handed over as it is (`--help` included).
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<OsString>,
}

pub(crate) const TOOLS_BINARY: &str = "bouncer-tools";

fn tools_binary() -> PathBuf {
    let beside = std::env::current_exe().ok().map(|exe| exe.with_file_name(TOOLS_BINARY));
    beside.filter(|p| p.is_file()).unwrap_or_else(|| PathBuf::from(TOOLS_BINARY))
}

pub(crate) fn exec(cli: &Cli, command: &str, args: &Args) -> ExitCode {
    let binary = tools_binary();
    let mut cmd = Command::new(&binary);
    cmd.arg(command).args(&args.args);
    // Global flags given before the subcommand reach the tools through their environment names.
    if let Some(config) = &cli.config {
        cmd.env("BOUNCER_CONFIG", config);
    }
    cmd.env("BOUNCER_LOG_FORMAT", cli.log_format.name());
    let e = replace_process(&mut cmd);
    eprintln!(
        "bouncer {command} is provided by the {TOOLS_BINARY} binary, which could not be run ({}: {e}); \
         build it with `cargo build --release` (the workspace builds both binaries) or put it on PATH",
        binary.display()
    );
    ExitCode::from(super::EXIT_FAILURE)
}

/// Runs `cmd` in place of this process and returns only if that failed.
#[cfg(unix)]
fn replace_process(cmd: &mut Command) -> std::io::Error {
    std::os::unix::process::CommandExt::exec(cmd)
}

#[cfg(not(unix))]
fn replace_process(cmd: &mut Command) -> std::io::Error {
    match cmd.status() {
        Ok(status) => std::process::exit(status.code().unwrap_or(i32::from(super::EXIT_FAILURE))),
        Err(e) => e,
    }
}
