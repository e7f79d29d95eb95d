//! `bouncer check`: is this configuration valid, and do the services it names answer?

use std::time::Duration;

use secrecy::ExposeSecret;

use super::{Cli, CliError, CliResult};
use crate::config::redact_url;

#[derive(clap::Args, Debug)]
pub struct CheckArgs {
    /// Only validate the configuration; do not connect to RabbitMQ or PostgreSQL.
    #[arg(long)]
    offline: bool,
    /// How long to wait for each service.
    #[arg(long, default_value = "5", value_name = "SECONDS")]
    timeout: u64,
}

pub(crate) async fn run(cli: &Cli, args: &CheckArgs) -> CliResult {
    let config = cli.load_config()?;
    println!(
        "config: ok ({} ZEGO app(s), {} TRTC app(s), queue {:?})",
        config.zego.len(),
        config.trtc.len(),
        config.amqp.queue
    );
    for w in &config.warnings {
        println!("  note: {w}");
    }
    if args.offline {
        return Ok(());
    }
    let timeout = Duration::from_secs(args.timeout);
    let mut ok = true;

    let amqp_url = config.amqp.url.expose_secret();
    let props = lapin::ConnectionProperties::default()
        .with_connection_name(format!("{}-check", config.amqp.connection_name).into());
    match tokio::time::timeout(timeout, lapin::Connection::connect(amqp_url, props)).await {
        Ok(Ok(conn)) => {
            println!("rabbitmq: ok ({})", redact_url(amqp_url));
            let _ = conn.close(200, "check done".into()).await;
        }
        Ok(Err(e)) => {
            ok = false;
            println!("rabbitmq: FAILED ({}): {e}", redact_url(amqp_url));
        }
        Err(_) => {
            ok = false;
            println!("rabbitmq: FAILED ({}): no answer within {}s", redact_url(amqp_url), args.timeout);
        }
    }

    let pg_url = config.postgres.url.expose_secret();
    match crate::audit::connect(&config.postgres, timeout).await {
        Ok(pool) => {
            match crate::audit::pending_migrations(&pool).await {
                Ok(0) => println!("postgres: ok ({}), schema up to date", redact_url(pg_url)),
                Ok(n) => {
                    ok = false;
                    println!(
                        "postgres: reachable ({}) but {n} migration(s) pending: run `bouncer migrate`",
                        redact_url(pg_url)
                    );
                }
                Err(e) => {
                    ok = false;
                    println!("postgres: reachable ({}) but the schema cannot be read: {e}", redact_url(pg_url));
                }
            }
            pool.close().await;
        }
        Err(e) => {
            ok = false;
            println!("postgres: FAILED ({}): {e}", redact_url(pg_url));
        }
    }
    // Each service's line above says what failed.
    if ok { Ok(()) } else { Err(CliError::Reported) }
}
