//! The rules lane of one ZEGO app with `forbid_rules`: it keeps a ZEGO ban rule in force for each
//! of the app's active bans (`SetForbidUserRule`, type 4 for a room ban, type 3 for an app ban,
//! login disabled), re-arms rules before they lapse for bans longer than ZEGO's one-day maximum,
//! and deletes the rule of a lifted ban (`DelForbidUserRule`). It runs beside the app's kick lane
//! while this replica owns the app's quota group, with quotas of its own (Set 10/s, Del 10/s), so
//! rules never slow the kicks: the kick goes out at once, the rule follows at its own pace.
//!
//! Where ZEGO is silent (README, "Where the vendors are silent"): a second Set on the same key is
//! sent with the full wanted `EffectiveTime` and `Data.ExpireTime` is trusted as the rule's end;
//! 50123 (200 rules of a type in force) leaves the ban enforced by Bouncer alone (`refused_limit`,
//! tried again when a rule of that type is deleted, and every few minutes as rules lapse); 9 (not
//! enabled) pauses the app's rules loudly while its bans stand; 206 is a rate refusal.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::audit::Db;
use crate::audit::bans::{self, RuleWork};
use crate::ban::{BanScope, RuleState};
use crate::lease::Lease;
use crate::quota::Quota;
use crate::retry::Backoff;
use crate::vendor_api::zego::ZegoClient;
use crate::vendor_api::zego_rules::{ForbidRule, RuleOutcome};
use crate::vendors::{ZEGO_DEL_FORBID_USER_RULE, ZEGO_MAX_RULE_SECONDS, ZEGO_SET_FORBID_USER_RULE};

/// Bans read per fetch.
const BATCH: i64 = 50;
/// How often an idle lane looks for new bans (a rule a second late is fine: the kick went first,
/// and the check answers from PostgreSQL at once).
const IDLE_POLL: Duration = Duration::from_secs(1);
/// How long rules pause after ZEGO says the feature is not enabled (code 9).
const NOT_ENABLED_PAUSE: Duration = Duration::from_secs(300);
/// How often bans refused for the rule limit (50123) are tried again: rules lapse meanwhile.
const LIMIT_RETRY: Duration = Duration::from_secs(300);
/// Re-arm a rule that ends before its ban when it has less than this left.
pub(crate) const REARM_BEFORE: chrono::TimeDelta = chrono::TimeDelta::minutes(10);

/// What one lane needs.
pub(crate) struct RulesLane {
    pub client: ZegoClient,
    pub db: Db,
    pub set_quota: Arc<Quota>,
    pub del_quota: Arc<Quota>,
    pub lease: Arc<Lease>,
    /// Stops the lane (ownership ends).
    pub cancel: CancellationToken,
    /// Gives up a call in flight (the lease was lost).
    pub abandon: CancellationToken,
}

/// What to do about one ban's rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum RuleCall {
    /// `SetForbidUserRule` for this many seconds.
    Set(u32),
    Delete,
    /// No call: record this state (and why).
    Settle(RuleState, &'static str),
    /// Nothing to do (yet).
    Nothing,
}

/// Seconds a rule set now should last: the ban's remaining whole seconds less one, at most ZEGO's
/// day, so the rule never outlives the ban — ZEGO counts `EffectiveTime` from its own receipt of
/// the call (`ExpireTime` = its Unix second + `EffectiveTime`), which comes after `now`: the second
/// held back covers a call up to a second in flight. `None` when too little is left.
pub(crate) fn rule_seconds(now: DateTime<Utc>, ban_ends: DateTime<Utc>) -> Option<u32> {
    let left = (ban_ends - now).num_seconds() - 1;
    (left >= 1).then(|| u32::try_from(left).unwrap_or(u32::MAX).min(ZEGO_MAX_RULE_SECONDS))
}

/// Whether a rule in force must be set again now: it ends before its ban, within [`REARM_BEFORE`].
pub(crate) fn needs_rearm(now: DateTime<Utc>, ban_ends: DateTime<Utc>, rule_ends: DateTime<Utc>) -> bool {
    rule_ends < ban_ends - chrono::TimeDelta::seconds(5) && rule_ends < now + REARM_BEFORE && ban_ends > now
}

/// The decision for one fetched ban.
pub(crate) fn decide(w: &RuleWork) -> RuleCall {
    match w.rule_state {
        RuleState::DeleteDue if w.superseded => {
            Settle(RuleState::Deleted, "not deleted: a newer ban of the same user and place holds the same rule")
        }
        RuleState::DeleteDue => RuleCall::Delete,
        RuleState::Pending => match rule_seconds(w.db_now, w.expires_at) {
            Some(s) => RuleCall::Set(s),
            None => Settle(RuleState::None, "the ban ended before its rule was set"),
        },
        RuleState::InForce => match (w.rule_expires_at, rule_seconds(w.db_now, w.expires_at)) {
            (Some(rule_ends), Some(s)) if needs_rearm(w.db_now, w.expires_at, rule_ends) => RuleCall::Set(s),
            _ => RuleCall::Nothing,
        },
        _ => RuleCall::Nothing,
    }
}

use RuleCall::Settle;

/// What the lane does after one ban.
enum Next {
    Continue,
    /// Read the work again (what was read is stale), after this long.
    Refetch(Duration),
    Stop,
}

fn scope_of(w: &RuleWork) -> BanScope {
    if w.room_id.is_some() { BanScope::Room } else { BanScope::App }
}

/// Runs until the lane is cancelled.
pub(crate) async fn run(lane: RulesLane) {
    let app = lane.client.app_id();
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
    let mut limit_retried = Instant::now();
    tracing::info!(app_id = app, "ZEGO ban rules lane started");
    loop {
        if lane.cancel.is_cancelled() {
            return;
        }
        if limit_retried.elapsed() >= LIMIT_RETRY {
            limit_retried = Instant::now();
            let _ = bans::move_rules(&lane.db, app, None, RuleState::RefusedLimit, RuleState::Pending, None).await;
        }
        let work = match bans::rule_work(&lane.db, app, BATCH).await {
            Ok(w) => w,
            Err(e) => {
                metrics::counter!("bouncer_database_errors_total", "op" => "rules").increment(1);
                let wait = backoff.next_wait();
                tracing::warn!(app_id = app, error = %e, retry_in_ms = wait.as_millis() as u64, "rules lane cannot read bans");
                if !Backoff::sleep(wait, &lane.cancel).await {
                    return;
                }
                continue;
            }
        };
        let fetched = Instant::now();
        let mut wait = if work.is_empty() { IDLE_POLL } else { Duration::ZERO };
        for w in &work {
            match one(&lane, w, fetched, &mut backoff).await {
                Next::Continue => {}
                Next::Refetch(d) => {
                    wait = d;
                    break;
                }
                Next::Stop => return,
            }
        }
        if !wait.is_zero() && !Backoff::sleep(wait, &lane.cancel).await {
            return;
        }
    }
}

/// Decides, calls and records one ban's rule.
/// `fetched`: when `w` was read, so that time since then counts (`w.db_now` is the database's
/// clock at that moment).
async fn one(lane: &RulesLane, w: &RuleWork, fetched: Instant, backoff: &mut Backoff) -> Next {
    let app = lane.client.app_id();
    let rule = ForbidRule { user_id: w.user_id.clone(), room_id: w.room_id.clone() };
    let set = match decide(w) {
        RuleCall::Nothing => return Next::Continue,
        Settle(state, why) => {
            let _ = bans::rule_result(&lane.db, w.id, w.rule_state, state, None, Some(why)).await;
            return Next::Continue;
        }
        // The seconds are counted again when the call leaves: waiting for the quota takes time.
        RuleCall::Set(_) => Some(SetUntil { ban_ends: w.expires_at, db_now: w.db_now, fetched }),
        RuleCall::Delete => None,
    };
    let is_set = set.is_some();
    let action = if is_set { ZEGO_SET_FORBID_USER_RULE.name } else { ZEGO_DEL_FORBID_USER_RULE.name };
    let Some(outcome) = send(lane, &rule, set).await else { return Next::Stop };
    metrics::counter!("bouncer_vendor_rule_calls_total", "vendor" => "zego", "action" => action, "outcome" => outcome.as_str())
        .increment(1);
    let record = |state: RuleState, until: Option<DateTime<Utc>>, error: Option<String>| async move {
        if let Err(e) = bans::rule_result(&lane.db, w.id, w.rule_state, state, until, error.as_deref()).await {
            metrics::counter!("bouncer_database_errors_total", "op" => "rules").increment(1);
            tracing::warn!(app_id = app, ban_id = w.id, error = %e, "cannot record a rule's result; it is sent again");
        }
    };
    match outcome {
        RuleOutcome::InForce { expires_at } => {
            backoff.reset();
            record(RuleState::InForce, DateTime::from_timestamp(expires_at, 0), None).await;
            Next::Continue
        }
        RuleOutcome::Deleted => {
            backoff.reset();
            record(RuleState::Deleted, None, None).await;
            // A slot of this rule type is free: bans refused for the limit may get theirs.
            let (from, to) = (RuleState::RefusedLimit, RuleState::Pending);
            let _ = bans::move_rules(&lane.db, app, Some(scope_of(w)), from, to, None).await;
            Next::Continue
        }
        RuleOutcome::LimitReached => {
            let why = format!(
                "ZEGO 50123: 200 rules of type {} in force; the ban is enforced by Bouncer alone",
                rule.rule_type()
            );
            record(RuleState::RefusedLimit, None, Some(why.clone())).await;
            // Every other pending ban of the type would be refused alike: recorded now, tried again later.
            let (from, to) = (RuleState::Pending, RuleState::RefusedLimit);
            let moved = bans::move_rules(&lane.db, app, Some(scope_of(w)), from, to, Some(&why)).await.unwrap_or(0);
            metrics::counter!("bouncer_vendor_rules_refused_total", "vendor" => "zego").increment(1 + moved);
            tracing::warn!(
                app_id = app,
                rule_type = rule.rule_type(),
                bans = 1 + moved,
                "ZEGO rule limit reached (50123)"
            );
            Next::Refetch(Duration::ZERO)
        }
        RuleOutcome::NotEnabled => not_enabled(lane, w, is_set).await,
        RuleOutcome::SlowDown => {
            if is_set { &lane.set_quota } else { &lane.del_quota }.slow_down();
            Next::Refetch(Duration::ZERO)
        }
        RuleOutcome::Retry { reason } => {
            let wait = backoff.next_wait();
            tracing::warn!(app_id = app, action, reason = %crate::text::single_line(&reason), retry_in_ms = wait.as_millis() as u64, "ZEGO rule call to be retried");
            Next::Refetch(wait)
        }
        RuleOutcome::Refused { code, message } => {
            let message = crate::text::single_line(&message).into_owned();
            tracing::error!(app_id = app, action, code, message = %message, "ZEGO refused a ban rule");
            record(RuleState::Failed, None, Some(format!("ZEGO {code}: {message}"))).await;
            Next::Continue
        }
    }
}

/// Code 9: the app's rules pause (its bans stand, enforced by Bouncer), loudly, and are tried
/// again after [`NOT_ENABLED_PAUSE`].
async fn not_enabled(lane: &RulesLane, w: &RuleWork, set: bool) -> Next {
    let app = lane.client.app_id();
    let why = "ZEGO 9: ban rules are not enabled for this AppID (ask ZEGO support, or set forbid_rules = false)";
    tracing::error!(app_id = app, pause_secs = NOT_ENABLED_PAUSE.as_secs(), "{why}; rules paused, bans stand");
    metrics::gauge!("bouncer_vendor_rules_paused", "vendor" => "zego").increment(1.0);
    if set {
        let _ = bans::rule_result(&lane.db, w.id, w.rule_state, RuleState::NotEnabled, None, Some(why)).await;
        let _ = bans::move_rules(&lane.db, app, None, RuleState::Pending, RuleState::NotEnabled, Some(why)).await;
    }
    let resumed = Backoff::sleep(NOT_ENABLED_PAUSE, &lane.cancel).await;
    metrics::gauge!("bouncer_vendor_rules_paused", "vendor" => "zego").decrement(1.0);
    if !resumed {
        return Next::Stop;
    }
    let _ = bans::move_rules(&lane.db, app, None, RuleState::NotEnabled, RuleState::Pending, None).await;
    Next::Refetch(Duration::ZERO)
}

/// A Set's time: the ban's end, and the database's clock when the ban was read.
struct SetUntil {
    ban_ends: DateTime<Utc>,
    db_now: DateTime<Utc>,
    fetched: Instant,
}

/// One rule call at its quota, under the lease: a Set (`Some`) or a Del. `None`: stopped before
/// an answer.
async fn send(lane: &RulesLane, rule: &ForbidRule, set: Option<SetUntil>) -> Option<RuleOutcome> {
    let quota = if set.is_some() { &lane.set_quota } else { &lane.del_quota };
    let (charge, _) = tokio::select! {
        c = quota.acquire() => c,
        () = lane.cancel.cancelled() => return None,
    };
    if !lane.lease.is_valid() || lane.cancel.is_cancelled() {
        charge.unsent();
        return None;
    }
    // Counted as the call leaves, on the database's clock as it was read plus the time since.
    let set_secs = match set {
        None => None,
        Some(s) => match rule_seconds(s.db_now + s.fetched.elapsed(), s.ban_ends) {
            Some(secs) => Some(secs),
            None => {
                charge.unsent();
                // Read again, the ban is found ended and its rule settled without a call.
                return Some(RuleOutcome::Retry { reason: "the ban ended while its rule waited for the quota".into() });
            }
        },
    };
    let call = async {
        match set_secs {
            Some(secs) => lane.client.set_forbid_rule(rule, secs).await,
            None => lane.client.del_forbid_rule(rule).await,
        }
    };
    let report = tokio::select! {
        r = call => r,
        () = lane.abandon.cancelled() => {
            charge.unanswered();
            return None;
        }
    };
    match report.outcome {
        // No answer proves when it arrived.
        RuleOutcome::Retry { .. } => charge.unanswered(),
        _ => charge.answered(),
    }
    Some(report.outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap()
    }

    fn work(state: &str, now: i64, ban_ends: i64, rule_ends: Option<i64>) -> RuleWork {
        RuleWork {
            id: 1,
            user_id: "u".into(),
            room_id: Some("r".into()),
            expires_at: at(ban_ends),
            rule_state: state.parse().unwrap(),
            rule_expires_at: rule_ends.map(at),
            superseded: false,
            db_now: at(now),
        }
    }

    #[test]
    fn a_rule_lasts_the_ban_s_whole_seconds_left_at_most_a_day() {
        assert_eq!(rule_seconds(at(0), at(60)), Some(59), "a second held back for the call in flight");
        assert_eq!(rule_seconds(at(0), at(3 * 86_400)), Some(86_400));
        assert_eq!(rule_seconds(at(0), at(1)), None);
        assert_eq!(decide(&work("pending", 0, 60, None)), RuleCall::Set(59));
        assert!(matches!(decide(&work("pending", 61, 60, None)), RuleCall::Settle(RuleState::None, _)));
        let mut lifted = work("delete_due", 0, 60, Some(60));
        assert_eq!(decide(&lifted), RuleCall::Delete);
        lifted.superseded = true;
        assert!(matches!(decide(&lifted), RuleCall::Settle(RuleState::Deleted, _)));
    }

    /// A three-day ban, watched on a simulated clock a second at a time: the rule is set for a
    /// day, re-armed before it lapses, never outlives the ban, and covers it to its last second.
    #[test]
    fn a_ban_longer_than_a_day_is_re_armed_before_its_rule_lapses() {
        let ban_ends = 3 * 86_400 + 123;
        let mut rule_ends: Option<i64> = None;
        let mut sets = Vec::new();
        for now in 0..ban_ends {
            let state = if rule_ends.is_some() { "in_force" } else { "pending" };
            if let RuleCall::Set(secs) = decide(&work(state, now, ban_ends, rule_ends)) {
                sets.push((now, secs));
                rule_ends = Some(now + i64::from(secs));
            }
            let ends = rule_ends.expect("a rule from the start");
            assert!(ends <= ban_ends, "the rule never outlives the ban");
            assert!(ends > now || now + 1 >= ban_ends, "uncovered at {now}");
        }
        let (times, secs): (Vec<i64>, Vec<u32>) = sets.into_iter().unzip();
        assert_eq!(secs[0], 86_400);
        assert_eq!(times.len(), 4, "set, then re-armed three times: {times:?}");
        for pair in times.windows(2) {
            assert_eq!(pair[1] - pair[0], 86_400 - 600 + 1, "re-armed just under 10 minutes before it lapsed");
        }
    }

    #[test]
    fn an_extended_ban_re_arms_its_rule_at_once_and_a_rule_to_the_end_is_left_alone() {
        // A 60 s ban extended to an hour: its rule ends in 30 s, well within 10 minutes.
        assert_eq!(decide(&work("in_force", 30, 3600, Some(60))), RuleCall::Set(3569));
        assert_eq!(decide(&work("in_force", 30, 3600, Some(3600))), RuleCall::Nothing);
        assert_eq!(decide(&work("in_force", 30, 3600, Some(3599))), RuleCall::Nothing, "rounding is no reason");
    }
}
