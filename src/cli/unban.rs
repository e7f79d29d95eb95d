//! `bouncer unban`: ends a user's bans now, recorded with who and why (as the API's lift does).

use super::output::{self, Format};
use super::{Cli, CliError, CliResult};
use crate::audit::bans::{self, Lift, RoomRef};

#[derive(clap::Args, Debug)]
pub struct UnbanArgs {
    #[arg(long, value_parser = super::audit::parse_vendor)]
    vendor: crate::vendors::Vendor,
    /// ZEGO AppId or TRTC SdkAppId.
    #[arg(long)]
    app: u32,
    #[arg(long)]
    user: String,
    /// Only this room's ban. Without it: every active ban of the user in the app (app scope and
    /// every room).
    #[arg(long)]
    room: Option<String>,
    /// The room is a TRTC numeric room (as `kick --numeric-room`); by default a string room.
    #[arg(long, requires = "room")]
    numeric_room: bool,
    /// Why the ban ends early (recorded).
    #[arg(long)]
    reason: String,
    /// Recorded as who lifted it. Default: $BOUNCER_ACTOR or the OS user.
    #[arg(long, env = "BOUNCER_ACTOR")]
    actor: Option<String>,
    /// table (default on a terminal), json (one object per line) or csv.
    #[arg(long, value_enum)]
    format: Option<Format>,
}

pub(crate) async fn run(cli: &Cli, args: &UnbanArgs) -> CliResult {
    if args.reason.trim().is_empty() {
        return Err(CliError::usage("--reason: say why the ban ends early"));
    }
    let room = args.room.as_ref().map(|r| RoomRef { text: r.clone(), numeric: Some(args.numeric_room) });
    let actor = args.actor.clone().unwrap_or_else(super::replay::os_user);
    let events = cli.load_config()?.outcomes.enabled;
    let db = cli.audit_pool().await?;
    let lift = Lift {
        events,
        vendor: args.vendor,
        app_id: args.app,
        user_id: &args.user,
        room: room.as_ref(),
        actor: &actor,
        reason: &args.reason,
    };
    let lifted = bans::lift(&db, &lift).await;
    db.close().await;
    let lifted = lifted.map_err(|e| CliError::failed(format!("cannot lift: {e}")))?;
    let user = crate::text::single_line(&args.user);
    if lifted.is_empty() {
        let hint = if args.room.is_some() && !args.numeric_room && args.vendor == crate::vendors::Vendor::Trtc {
            " (a TRTC numeric room needs --numeric-room)"
        } else {
            ""
        };
        eprintln!("no active ban of user {user} matched; nothing lifted{hint}");
        return Ok(());
    }
    eprintln!("lifted {} ban(s) of user {user} as {}", lifted.len(), crate::text::single_line(&actor));
    output::print(&lifted, output::resolve(args.format)).map_err(|e| CliError::failed(e.to_string()))
}
