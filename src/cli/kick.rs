//! `bouncer kick`: a manual verdict from the command line, published through the same queue and
//! contract as the pipelines' verdicts, so it is enforced and audited the same way.

use std::time::{Duration, Instant};

use serde_json::json;

use super::{Cli, CliError, CliResult};
use crate::publisher::Publisher;
use crate::states::VerdictStatus;
use crate::verdict::Verdict;

#[derive(clap::Args, Debug)]
pub struct KickArgs {
    #[arg(long, value_parser = super::audit::parse_vendor)]
    vendor: crate::vendors::Vendor,
    /// ZEGO AppId or TRTC SdkAppId.
    #[arg(long)]
    app: u32,
    #[arg(long)]
    room: String,
    /// Send the room as an integer (TRTC RemoveUser); by default it is a string room.
    #[arg(long)]
    numeric_room: bool,
    /// A user to kick (repeat for several).
    #[arg(long = "user", required = true)]
    users: Vec<String>,
    #[arg(long)]
    reason: Option<String>,
    /// The verdict id (default: manual-<uuid>). Reusing an id never kicks twice.
    #[arg(long)]
    verdict_id: Option<String>,
    /// Recorded as the verdict's source, as `manual:<actor>`. Default: $BOUNCER_ACTOR or the OS user.
    #[arg(long, env = "BOUNCER_ACTOR")]
    actor: Option<String>,
    /// Also ban the users for this many seconds (1..31536000) from when the verdict is recorded.
    #[arg(long, value_name = "SECONDS")]
    ban_secs: Option<u32>,
    /// Where the ban holds: the verdict's room (default) or every room of the app.
    #[arg(long, value_name = "room|app", requires = "ban_secs", value_parser = parse_scope)]
    ban_scope: Option<crate::ban::BanScope>,
    /// Wait up to this many seconds for the verdict to finish and print its story.
    #[arg(long, value_name = "SECONDS", num_args = 0..=1, default_missing_value = "60")]
    wait: Option<u64>,
}

/// `--ban-scope`: `room` or `app`.
pub(crate) fn parse_scope(s: &str) -> Result<crate::ban::BanScope, String> {
    s.parse::<crate::ban::BanScope>().ok().ok_or_else(|| format!("{s:?}: must be room or app"))
}

pub(crate) async fn run(cli: &Cli, args: &KickArgs) -> CliResult {
    let config = cli.load_config()?;
    let room = if args.numeric_room {
        let n = args
            .room
            .parse::<u64>()
            .map_err(|_| CliError::usage(format!("--numeric-room: {:?} is not a number", args.room)))?;
        json!(n)
    } else {
        json!(args.room)
    };
    let actor = args.actor.clone().unwrap_or_else(super::replay::os_user);
    let verdict_id = args.verdict_id.clone().unwrap_or_else(|| format!("manual-{}", uuid::Uuid::new_v4()));
    let mut body = json!({
        "verdict_id": verdict_id, "vendor": args.vendor.as_str(), "app_id": args.app, "room_id": room,
        "user_ids": args.users, "source": format!("manual:{actor}"), "detected_at": chrono::Utc::now().to_rfc3339(),
    });
    if let Some(r) = &args.reason {
        body["reason"] = json!(r);
    }
    if let Some(seconds) = args.ban_secs {
        let scope = args.ban_scope.unwrap_or(crate::ban::BanScope::Room);
        body["ban"] = json!({"seconds": seconds, "scope": scope.as_str()});
    }
    // The same contract as every publisher: refuse here what the worker would dead-letter.
    let bytes = body.to_string().into_bytes();
    Verdict::parse(&bytes).map_err(|e| CliError::usage(format!("not a valid verdict: {e}")))?;
    let publisher = Publisher::connect(&config.amqp, "kick")
        .await
        .map_err(|e| CliError::failed(format!("cannot reach RabbitMQ: {e}")))?;
    let confirmed = publisher.publish_all(&[bytes], &[("x-bouncer-manual-by", actor.as_str())]).await;
    publisher.close().await;
    if confirmed != [true] {
        return Err(CliError::failed("the broker did not confirm the verdict; nothing was queued"));
    }
    println!("queued verdict {verdict_id}");
    let Some(wait) = args.wait else { return Ok(()) };
    let started = Instant::now();
    // The worker may still be creating the database on a first run: keep trying within `wait`.
    let pool = crate::audit::connect_within(&config.postgres, Duration::from_secs(wait))
        .await
        .map_err(|e| CliError::failed(format!("cannot reach the audit database: {e}")))?;
    while started.elapsed() < Duration::from_secs(wait) {
        if let Ok(Some(story)) = crate::audit::query::story(&pool, &verdict_id).await
            && story.verdict.status != VerdictStatus::Pending
        {
            let _ = super::audit::print_story(&story);
            return if story.verdict.status == VerdictStatus::Done { Ok(()) } else { Err(CliError::Reported) };
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(CliError::failed(format!("verdict {verdict_id} not finished after {wait}s (is a worker running?)")))
}
