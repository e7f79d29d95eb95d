//! `bouncer audit`: who was kicked, when, why, by which verdict, did it work, and if not why.

use std::io::Write;

use chrono::{DateTime, Utc};

use super::output::{self, Format, Tabular, opt, time};
use super::{Cli, CliError, CliResult};
use crate::audit::bans::{BanFilter, BanRow, RoomRef};
use crate::audit::query::{self, AuditRow, Filter, StatusFilter, Story, SummaryRow, parse_when};
use crate::ban::BanState;
use crate::vendors::{self, Vendor};

/// A vendor named on the command line: one of the registry's names.
pub fn parse_vendor(s: &str) -> Result<Vendor, String> {
    Vendor::parse(s).ok_or_else(|| format!("{s:?} is not a vendor; one of: {}", vendors::NAMES.join(", ")))
}

#[derive(clap::Args, Debug, Clone)]
pub struct FilterArgs {
    /// One verdict (repeat for several). With the table format and a single verdict: its story.
    #[arg(long = "verdict", value_name = "ID")]
    pub verdicts: Vec<String>,
    /// Room id as text (numeric TRTC rooms by their digits).
    #[arg(long)]
    pub room: Option<String>,
    #[arg(long)]
    pub user: Option<String>,
    #[arg(long)]
    pub app: Option<i64>,
    #[arg(long, value_parser = parse_vendor)]
    pub vendor: Option<Vendor>,
    /// Verdict status (pending, done, failed) or kick status (pending, kicked, gone, failed).
    #[arg(long, value_parser = StatusFilter::parse)]
    pub status: Option<StatusFilter>,
    /// Received at or after: a duration back from now (90s, 30m, 2h, 7d) or an RFC 3339 time.
    #[arg(long, value_parser = parse_when)]
    pub since: Option<DateTime<Utc>>,
    /// Received before: same forms as --since.
    #[arg(long, value_parser = parse_when)]
    pub until: Option<DateTime<Utc>>,
    /// At most this many rows (0: no limit). `bouncer audit` shows 1000 unless told otherwise;
    /// `bouncer replay` replays every match unless told otherwise.
    #[arg(long)]
    pub limit: Option<i64>,
}

/// How many rows `bouncer audit` shows when `--limit` is not given.
pub const AUDIT_DEFAULT_LIMIT: i64 = 1000;

impl FilterArgs {
    /// The filter, with `default_limit` when `--limit` was not given (`None`: no limit).
    pub fn filter(&self, default_limit: Option<i64>) -> Filter {
        Filter {
            verdicts: self.verdicts.clone(),
            room: self.room.clone(),
            user: self.user.clone(),
            app: self.app,
            vendor: self.vendor,
            status: self.status,
            since: self.since,
            until: self.until,
            limit: self.limit.or(default_limit).filter(|n| *n > 0),
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct AuditArgs {
    #[command(flatten)]
    filter: FilterArgs,
    /// Counts by vendor and app (verdicts by status, kicks by outcome) instead of rows.
    #[arg(long)]
    summary: bool,
    /// Bans instead of kicks, newest first (filtered by --vendor, --app, --user, --room).
    #[arg(long, conflicts_with = "summary")]
    bans: bool,
    /// With --bans: only bans in force now.
    #[arg(long, requires = "bans")]
    active: bool,
    /// Kicks and re-kicks the vendor has not confirmed (no room callback saying a server API
    /// removed the user) within --within seconds, for apps whose callbacks Bouncer receives
    /// (`callback_secret` / `callback_key`); since --since (default: the last 24 h).
    #[arg(long, conflicts_with_all = ["summary", "bans"])]
    unconfirmed: bool,
    /// With --unconfirmed: seconds a confirmation may take (default: api.confirm_within_secs).
    #[arg(long, requires = "unconfirmed")]
    within: Option<u64>,
    /// table (default on a terminal), json (one object per line) or csv (with a header).
    #[arg(long, value_enum)]
    format: Option<Format>,
}

impl Tabular for AuditRow {
    const HEADERS: &'static [&'static str] = &[
        "received_at",
        "verdict_id",
        "vendor",
        "app_id",
        "room_id",
        "user_id",
        "kick_status",
        "verdict_status",
        "attempts",
        "last_error",
        "vendor_request_id",
        "updated_at",
    ];
    fn cells(&self) -> Vec<String> {
        vec![
            time(&self.received_at),
            self.verdict_id.clone(),
            self.vendor.clone(),
            self.app_id.to_string(),
            self.room_id.clone() + if self.room_id_numeric { " (numeric)" } else { "" },
            self.user_id.clone(),
            self.kick_status.to_string(),
            self.verdict_status.to_string(),
            self.attempts.to_string(),
            opt(&self.last_error),
            opt(&self.vendor_request_id),
            time(&self.updated_at),
        ]
    }
}

impl Tabular for SummaryRow {
    const HEADERS: &'static [&'static str] = &[
        "vendor",
        "app_id",
        "verdicts",
        "verdicts_done",
        "verdicts_failed",
        "verdicts_pending",
        "kicks",
        "kicked",
        "gone",
        "kicks_failed",
        "kicks_pending",
    ];
    fn cells(&self) -> Vec<String> {
        [
            self.verdicts,
            self.verdicts_done,
            self.verdicts_failed,
            self.verdicts_pending,
            self.kicks,
            self.kicked,
            self.gone,
            self.kicks_failed,
            self.kicks_pending,
        ]
        .iter()
        .fold(vec![self.vendor.clone(), self.app_id.to_string()], |mut v, n| {
            v.push(n.to_string());
            v
        })
    }
}

pub(crate) async fn run(cli: &Cli, args: &AuditArgs) -> CliResult {
    let pool = cli.audit_pool().await?;
    let filter = args.filter.filter(Some(AUDIT_DEFAULT_LIMIT));
    let format = output::resolve(args.format);
    let result = if args.unconfirmed {
        let config = cli.load_config()?;
        let within = args.within.map(std::time::Duration::from_secs).unwrap_or(config.api.confirm_within);
        unconfirmed(&pool, &config, &filter, within, format).await
    } else if args.bans {
        bans(&pool, &filter, args.active, format).await
    } else if args.summary {
        summary(&pool, &filter, format).await
    } else if format == Format::Table && filter.verdicts.len() == 1 {
        match query::story(&pool, &filter.verdicts[0]).await {
            Ok(Some(s)) => print_story(&s).map_err(|e| e.to_string()),
            Ok(None) => {
                pool.close().await;
                return Err(CliError::usage(format!("no verdict {:?} in the audit trail", filter.verdicts[0])));
            }
            Err(e) => Err(e.to_string()),
        }
    } else {
        match query::rows(&pool, &filter).await {
            Ok(rows) => output::print(&rows, format).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        }
    };
    pool.close().await;
    result.map_err(|e| CliError::failed(format!("audit failed: {e}")))
}

async fn unconfirmed(
    pool: &crate::audit::Db,
    config: &crate::config::Config,
    filter: &Filter,
    within: std::time::Duration,
    format: Format,
) -> Result<(), String> {
    use crate::keys::AppKey;
    let apps: Vec<AppKey> = config
        .zego
        .iter()
        .filter(|z| z.callback_secret.is_some())
        .map(|z| AppKey::new(Vendor::Zego, z.app_id))
        .chain(config.trtc.iter().filter(|t| t.callback_key.is_some()).map(|t| AppKey::new(Vendor::Trtc, t.sdk_app_id)))
        .filter(|a| {
            filter.vendor.is_none_or(|v| v == a.vendor) && filter.app.is_none_or(|id| id == i64::from(a.app_id))
        })
        .collect();
    if apps.is_empty() && format == Format::Table {
        eprintln!("no app has a callback secret configured: no kick can be confirmed");
    }
    let since = filter.since.unwrap_or_else(|| Utc::now() - chrono::Duration::hours(24));
    let rows = crate::audit::reentries::unconfirmed(pool, &apps, within, since, filter.limit.unwrap_or(i64::MAX))
        .await
        .map_err(|e| e.to_string())?;
    output::print(&rows, format).map_err(|e| e.to_string())
}

impl Tabular for crate::audit::reentries::Unconfirmed {
    const HEADERS: &'static [&'static str] =
        &["kicked_at", "vendor", "app_id", "room_id", "user_id", "verdict_id", "reentry_id"];
    fn cells(&self) -> Vec<String> {
        vec![
            time(&self.kicked_at),
            self.vendor.clone(),
            self.app_id.to_string(),
            self.room_id.clone(),
            self.user_id.clone(),
            opt(&self.verdict_id),
            opt(&self.reentry_id),
        ]
    }
}

async fn bans(pool: &crate::audit::Db, filter: &Filter, active: bool, format: Format) -> Result<(), String> {
    let f = BanFilter {
        vendor: filter.vendor,
        app_id: filter.app.and_then(|a| u32::try_from(a).ok()),
        user_id: filter.user.clone(),
        room: filter.room.clone().map(|text| RoomRef { text, numeric: None }),
        state: active.then_some(BanState::Active),
        before_id: None,
        limit: filter.limit.unwrap_or(i64::MAX),
    };
    let rows = crate::audit::bans::list(pool, &f).await.map_err(|e| e.to_string())?;
    output::print(&rows, format).map_err(|e| e.to_string())
}

impl Tabular for BanRow {
    const HEADERS: &'static [&'static str] = &[
        "created_at",
        "state",
        "vendor",
        "app_id",
        "user_id",
        "scope",
        "room_id",
        "expires_at",
        "verdict_id",
        "reason",
        "lifted_by",
        "lift_reason",
        "vendor_rule",
    ];
    fn cells(&self) -> Vec<String> {
        vec![
            time(&self.created_at),
            self.state.to_string(),
            self.vendor.clone(),
            self.app_id.to_string(),
            self.user_id.clone(),
            self.scope.to_string(),
            self.room_id
                .clone()
                .map(|r| r + if self.room_id_numeric == Some(true) { " (numeric)" } else { "" })
                .unwrap_or_default(),
            time(&self.expires_at),
            self.verdict_id.clone(),
            opt(&self.reason),
            opt(&self.lifted_by),
            opt(&self.lift_reason),
            self.rule_state.to_string(),
        ]
    }
}

async fn summary(pool: &crate::audit::Db, filter: &Filter, format: Format) -> Result<(), String> {
    let rows = query::summary(pool, filter).await.map_err(|e| e.to_string())?;
    output::print(&rows, format).map_err(|e| e.to_string())?;
    if format == Format::Table {
        let rejected = query::rejected_count(pool, filter).await.map_err(|e| e.to_string())?;
        println!("\nrejected messages (malformed, dead-lettered): {rejected}");
    }
    Ok(())
}

/// The full story of one verdict, for a person.
pub fn print_story(s: &Story) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    let v = &s.verdict;
    let esc = |s: &str| crate::text::single_line(s).into_owned();
    writeln!(out, "verdict {}  [{}]", esc(&v.verdict_id), v.status)?;
    writeln!(
        out,
        "  {} app {}, room {}{}",
        v.vendor,
        v.app_id,
        esc(&v.room_id),
        if v.room_id_numeric { " (numeric)" } else { "" }
    )?;
    writeln!(out, "  reason:   {}", esc(&opt(&v.reason)))?;
    writeln!(out, "  source:   {}", esc(&opt(&v.source)))?;
    writeln!(out, "  detected: {}", v.detected_at.as_ref().map(time).unwrap_or_default())?;
    writeln!(
        out,
        "  received: {} ({} deliver{}, {} replay(s))",
        time(&v.received_at),
        v.deliveries,
        if v.deliveries == 1 { "y" } else { "ies" },
        v.replays
    )?;
    writeln!(out, "  finished: {}", v.finished_at.as_ref().map(time).unwrap_or_else(|| "-".into()))?;
    if let (Some(seconds), Some(scope)) = (v.ban_seconds, &v.ban_scope) {
        writeln!(out, "  ban:      {seconds} s, scope {scope}")?;
    }
    writeln!(out, "\nusers:")?;
    output::table(
        &mut out,
        &["user_id", "status", "attempts", "vendor_request_id", "last_error"],
        s.kicks
            .iter()
            .map(|k| {
                vec![
                    k.user_id.clone(),
                    k.status.to_string(),
                    k.attempts.to_string(),
                    opt(&k.vendor_request_id),
                    opt(&k.last_error),
                ]
            })
            .collect(),
    )?;
    for c in &s.confirmations {
        writeln!(
            out,
            "  {} left the room at {} (the vendor's confirmation of the kick)",
            esc(&c.user_id),
            time(&c.left_at)
        )?;
    }
    writeln!(out, "\nvendor calls:")?;
    output::table(
        &mut out,
        &["started_at", "action", "attempt", "users", "outcome", "http", "code", "message", "request_id", "latency_ms"],
        s.attempts
            .iter()
            .map(|a| {
                vec![
                    time(&a.started_at),
                    a.action.clone(),
                    a.attempt.to_string(),
                    a.user_ids.join(","),
                    a.outcome.to_string(),
                    opt(&a.http_status),
                    opt(&a.vendor_code),
                    a.vendor_message.clone().or_else(|| a.error.clone()).unwrap_or_default(),
                    opt(&a.vendor_request_id),
                    opt(&a.latency_ms),
                ]
            })
            .collect(),
    )?;
    if !s.reentries.is_empty() {
        writeln!(out, "\nre-entries (banned users who came back):")?;
        for r in &s.reentries {
            let left =
                r.confirmed_left_at.as_ref().map(|t| format!(", left the room at {}", time(t))).unwrap_or_default();
            writeln!(
                out,
                "  {} re-entered room {} at {} (callback at {}): re-kick {} after {} call(s){}{}",
                esc(&r.user_id),
                esc(&r.room_id),
                r.entered_at.as_ref().map(time).unwrap_or_else(|| "-".into()),
                time(&r.received_at),
                esc(&r.status),
                r.attempts,
                r.vendor_request_id.as_deref().map(|id| format!(", request {}", esc(id))).unwrap_or_default(),
                left,
            )?;
        }
    }
    if !s.bans.is_empty() {
        writeln!(out, "\nbans:")?;
        output::table(
            &mut out,
            &["user_id", "state", "scope", "room_id", "expires_at", "verdict_id", "lifted_by", "vendor_rule"],
            s.bans
                .iter()
                .map(|b| {
                    vec![
                        b.user_id.clone(),
                        b.state.to_string(),
                        b.scope.to_string(),
                        opt(&b.room_id),
                        time(&b.expires_at),
                        b.verdict_id.clone(),
                        opt(&b.lifted_by),
                        b.rule_state.to_string(),
                    ]
                })
                .collect(),
        )?;
    }
    if !s.replays.is_empty() {
        writeln!(out, "\nreplays:")?;
        output::table(
            &mut out,
            &["requested_at", "actor", "previous_status", "published"],
            s.replays
                .iter()
                .map(|r| {
                    vec![time(&r.requested_at), r.actor.clone(), r.previous_status.to_string(), r.published.to_string()]
                })
                .collect(),
        )?;
    }
    Ok(())
}
