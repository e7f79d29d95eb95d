//! `bouncer sim`: serve the vendor simulator until SIGINT/SIGTERM.

use std::net::SocketAddr;

use bouncer::cli::{CliError, CliResult, invalid_config};
use bouncer::config::Config;
use bouncer::vendor_api::{trtc, zego};
use bouncer_sim::{self as sim, SimSettings};

#[derive(clap::Args, Debug)]
pub struct SimArgs {
    /// Address to serve both vendors' APIs and the `/_sim/` control API on.
    #[arg(long, default_value = "127.0.0.1:9188")]
    listen: SocketAddr,
    /// Calls per second per ZEGO AppID (raise above the documented 50 only for benchmarks).
    #[arg(long, default_value_t = zego::MAX_CALLS_PER_SECOND)]
    zego_rate: u32,
    /// Calls per second per TRTC (SecretId, action) (documented: 20).
    #[arg(long, default_value_t = trtc::MAX_CALLS_PER_SECOND)]
    trtc_rate: u32,
    /// Lag like a busy vendor gateway: each request takes this many microseconds of one shared
    /// request loop and is counted as arriving when the loop takes it up (0: no loop).
    #[arg(long, default_value_t = 0)]
    handling_us: u64,
    /// Where room callbacks go: Bouncer's API (`[api] listen`), e.g. http://127.0.0.1:9192;
    /// each app with a callback secret gets `<url>/v1/callbacks/<vendor>/<app id>`.
    #[arg(long)]
    callback_url: Option<String>,
}

/// Serves the apps of the configuration at `config` (default `bouncer.toml`).
pub(crate) async fn run(config: Option<&std::path::Path>, args: &SimArgs) -> CliResult {
    // The sim reads only the [[zego]] and [[trtc]] sections, so one file can serve both.
    let path = config.map_or_else(|| "bouncer.toml".into(), std::path::Path::to_path_buf);
    let config = Config::load_vendors_only(&path).map_err(|e| invalid_config(&path, &e))?;
    let settings = SimSettings {
        zego: config.zego,
        trtc: config.trtc,
        zego_rate: args.zego_rate,
        trtc_rate: args.trtc_rate,
        callback_url: args.callback_url.clone(),
    };
    let running = sim::start(settings, args.listen)
        .await
        .map_err(|e| CliError::failed(format!("cannot listen on {}: {e}", args.listen)))?;
    running.sim.set_handling(std::time::Duration::from_micros(args.handling_us));
    // Scripts wait for this line to know the port (useful with --listen 127.0.0.1:0).
    println!("bouncer sim listening on http://{}", running.addr);
    tracing::info!(addr = %running.addr, zego_rate = args.zego_rate, trtc_rate = args.trtc_rate, "simulator ready");
    bouncer::shutdown::signal().await;
    tracing::info!("simulator stopping");
    Ok(())
}
