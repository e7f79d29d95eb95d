//! `bouncer check`: is this configuration valid, and do the services it names answer?

use std::time::Duration;

use secrecy::ExposeSecret;

use super::{Cli, CliError, CliResult};
use crate::config::{Pooler, PostgresConfig, redact_url};

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
    println!("{}", pooler_mode(&config.postgres));
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
                Ok(n) if config.postgres.session_url().is_none() => {
                    ok = false;
                    println!(
                        "postgres: reachable ({}) but {n} migration(s) pending, and postgres.direct_url is not set: \
                         `bouncer migrate` and `bouncer run` refuse until it is (migrations need a session)",
                        redact_url(pg_url)
                    );
                }
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
    if let (Pooler::Transaction, Some(direct)) = (config.postgres.pooler, &config.postgres.direct_url) {
        let shown = redact_url(direct.expose_secret());
        match crate::audit::check_session(&config.postgres, timeout).await {
            Ok(()) => println!("postgres.direct_url: ok ({shown}), a session for LISTEN and migrations"),
            Err(e) => {
                ok = false;
                println!("postgres.direct_url: FAILED ({shown}): {e}");
            }
        }
    }
    // Each service's line above says what failed.
    if ok { Ok(()) } else { Err(CliError::Reported) }
}

/// Which way `bouncer run` will reach PostgreSQL, and why.
fn pooler_mode(pg: &PostgresConfig) -> String {
    let poll_ms = pg.poll_interval.as_millis();
    match (pg.pooler, &pg.direct_url) {
        (Pooler::None, _) => "postgres mode: direct (postgres.pooler = \"none\"): prepared statements cached per \
             connection, LISTEN/NOTIFY wake-ups and migrations on postgres.url"
            .into(),
        (Pooler::Transaction, Some(_)) => "postgres mode: through a transaction pooler (postgres.pooler = \
             \"transaction\"): every statement in a transaction, none prepared by name; LISTEN/NOTIFY wake-ups and \
             migrations on postgres.direct_url, which bypasses the pooler"
            .into(),
        (Pooler::Transaction, None) => format!(
            "postgres mode: through a transaction pooler (postgres.pooler = \"transaction\"): every statement in a \
             transaction, none prepared by name; no postgres.direct_url, so no LISTEN: lanes poll for work every \
             {poll_ms} ms (postgres.poll_interval_ms; up to that much latency more), and migrations are refused \
             (set postgres.direct_url, or run `bouncer migrate` with a direct postgres.url)"
        ),
    }
}
