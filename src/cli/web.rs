//! `bouncer web`: the ops console (see [`crate::web`]), or `--hash-password` to make a
//! `web.auth.users` entry's hash.

use std::io::BufRead;
use std::net::SocketAddr;

use argon2::Argon2;
use argon2::password_hash::PasswordHasher;

use super::{Cli, CliError, CliResult};

#[derive(clap::Args, Debug)]
pub struct WebArgs {
    /// Address to serve the console on (overrides `web.listen`, default 127.0.0.1:9190).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Read a password from stdin and print its argon2 hash for `web.auth.users`, then exit.
    #[arg(long)]
    hash_password: bool,
}

pub(crate) async fn run(cli: &Cli, args: &WebArgs) -> CliResult {
    if args.hash_password {
        return hash_password();
    }
    let mut config = cli.load_config()?;
    if let Some(listen) = args.listen {
        config.web.listen = listen;
    }
    // Checked before connecting: the refusal names the key, whatever the database does.
    if let Some(why) = crate::web::refusal(&config.web) {
        return Err(CliError::usage(why));
    }
    let pool = crate::audit::connect(&config.postgres, std::time::Duration::from_secs(5))
        .await
        .map_err(|e| CliError::failed(format!("cannot reach the audit database: {e}")))?;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let signal = shutdown.clone();
    tokio::spawn(async move {
        crate::shutdown::signal().await;
        signal.cancel();
    });
    crate::web::serve(pool, config.web, config.outcomes.enabled, shutdown).await.map_err(CliError::failed)
}

fn hash_password() -> CliResult {
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).map_err(|e| CliError::failed(format!("stdin: {e}")))?;
    let password = line.trim_end_matches(['\r', '\n']);
    if password.is_empty() {
        return Err(CliError::usage("no password on stdin"));
    }
    let hash = Argon2::default()
        .hash_password(password.as_bytes())
        .map_err(|e| CliError::failed(format!("cannot hash: {e}")))?;
    println!("{hash}");
    Ok(())
}
