//! Recording a batch of deliveries in one transaction, isolating any message PostgreSQL refuses
//! for its data, and settling every delivery once its record is committed.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::time::Duration;

use lapin::BasicProperties;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicRejectOptions};
use serde_json::value::RawValue;
use tokio_util::sync::CancellationToken;

use super::{Intake, unix_ms};
use crate::audit::intake::{self as record, NewVerdict, Recorded, Rejection};
use crate::keys::{AppKey, WakeNote};
use crate::retry::Backoff;
use crate::states::{KickStatus, VerdictStatus};
use crate::text::single_line;
use crate::verdict::{ContractError, Rule, Verdict};

/// Deliveries that parsed as verdicts, and deliveries kept as rejected with why.
type Arrivals = Vec<(Delivery, Verdict)>;
type Rejected = Vec<(Delivery, ContractError)>;

/// How recording a batch ended.
enum Recording {
    Recorded(HashMap<String, Recorded>, BTreeSet<AppKey>),
    /// Shutdown came while PostgreSQL was away; no delivery was answered.
    Stopped,
    /// PostgreSQL refused the data (see [`crate::audit::AuditError::is_data_error`]).
    Refused(crate::audit::AuditError),
}

impl Intake {
    /// Records a batch, then answers the broker for every delivery in it (ack or dead-letter). A batch the database refuses for its
    /// data is recorded message by message, so one message nobody can store costs only itself.
    pub(super) async fn handle_batch(&self, deliveries: Vec<Delivery>, shutdown: &CancellationToken) {
        let mut rejected: Vec<(Delivery, ContractError)> = Vec::new();
        let mut arrivals: Vec<(Delivery, Verdict)> = Vec::new();
        for d in deliveries {
            match Verdict::parse(&d.data) {
                Ok(verdict) => arrivals.push((d, verdict)),
                Err(e) => rejected.push((d, e)),
            }
        }
        let (arrivals, reused) = reused_in_batch(arrivals);
        rejected.extend(reused);
        match self.record_held(&arrivals, &rejected, shutdown).await {
            Recording::Recorded(recorded, woken) => {
                self.answer_recorded(arrivals, rejected, recorded, woken, shutdown).await;
            }
            Recording::Stopped => {}
            Recording::Refused(e) => {
                tracing::warn!(error = %e, deliveries = arrivals.len() + rejected.len(),
                    "PostgreSQL refused a batch's data; recording its messages one by one");
                for (d, v) in arrivals {
                    self.record_alone(vec![(d, v)], vec![], shutdown).await;
                }
                for (d, e) in rejected {
                    self.record_alone(vec![], vec![(d, e)], shutdown).await;
                }
            }
        }
    }

    /// One message on its own. If the database refuses even that, the message is the offender:
    /// it is kept as rejected (its body as bytes, which always store) and dead-lettered.
    async fn record_alone(
        &self,
        arrivals: Vec<(Delivery, Verdict)>,
        rejected: Vec<(Delivery, ContractError)>,
        shutdown: &CancellationToken,
    ) {
        let e = match self.record_held(&arrivals, &rejected, shutdown).await {
            Recording::Recorded(recorded, woken) => {
                return self.answer_recorded(arrivals, rejected, recorded, woken, shutdown).await;
            }
            Recording::Stopped => return,
            Recording::Refused(e) => e,
        };
        if let Some(d) = arrivals.into_iter().map(|(d, _)| d).chain(rejected.into_iter().map(|(d, _)| d)).next() {
            let why = ContractError {
                field: None,
                rule: Rule::Unstorable,
                message: crate::text::single_line(&format!("PostgreSQL cannot store this message: {e}")).into_owned(),
            };
            self.keep_as_rejected(d, why, shutdown).await;
        }
    }

    /// Answers the broker for what was recorded. A verdict the database left out names, under an id already
    /// recorded, a different verdict: that message is kept as rejected instead of acked.
    async fn answer_recorded(
        &self,
        arrivals: Vec<(Delivery, Verdict)>,
        rejected: Vec<(Delivery, ContractError)>,
        recorded: HashMap<String, Recorded>,
        woken: BTreeSet<AppKey>,
        shutdown: &CancellationToken,
    ) {
        let (arrivals, reused): (Vec<_>, Vec<_>) =
            arrivals.into_iter().partition(|(_, v)| recorded.contains_key(&v.verdict_id));
        for (d, _) in reused {
            self.keep_as_rejected(d, reused_id(), shutdown).await;
        }
        self.answer(arrivals, rejected, recorded, woken).await;
    }

    /// Records one message as rejected and dead-letters it. Should the database refuse even that,
    /// it is dead-lettered all the same.
    async fn keep_as_rejected(&self, d: Delivery, why: ContractError, shutdown: &CancellationToken) {
        let one = vec![(d, why)];
        match self.record_held(&[], &one, shutdown).await {
            Recording::Recorded(recorded, woken) => self.answer(vec![], one, recorded, woken).await,
            Recording::Stopped => {}
            Recording::Refused(e) => {
                metrics::counter!("bouncer_database_errors_total", "op" => "intake").increment(1);
                tracing::error!(error = %e, "a message could not be recorded even as rejected; dead-lettering it");
                for (d, _) in one {
                    let _ = d.acker.reject(BasicRejectOptions { requeue: false }).await;
                }
            }
        }
    }

    /// Records, holding on while PostgreSQL is away: no delivery is answered without it, and while we
    /// wait no new deliveries are taken. Gives up at once on a data error.
    async fn record_held(
        &self,
        arrivals: &[(Delivery, Verdict)],
        rejected: &[(Delivery, ContractError)],
        shutdown: &CancellationToken,
    ) -> Recording {
        // 100 ms, doubling to 5 s while PostgreSQL is away.
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let started = std::time::Instant::now();
        loop {
            match self.record(arrivals, rejected).await {
                Ok((recorded, woken)) => {
                    self.status.holding_since_ms.store(0, Ordering::Relaxed);
                    tracing::debug!(
                        deliveries = arrivals.len() + rejected.len(),
                        record_ms = started.elapsed().as_millis() as u64,
                        "intake batch recorded"
                    );
                    return Recording::Recorded(recorded, woken);
                }
                Err(e) if e.is_data_error() => return Recording::Refused(e),
                Err(e) => {
                    let _ = self.status.holding_since_ms.compare_exchange(
                        0,
                        unix_ms(),
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    );
                    metrics::counter!("bouncer_database_errors_total", "op" => "intake").increment(1);
                    let wait = backoff.next_wait();
                    tracing::error!(error = %e, retry_in_ms = wait.as_millis() as u64, "cannot record deliveries; holding them");
                    // Unanswered deliveries go back to the broker when the connection closes.
                    if !Backoff::sleep(wait, shutdown).await {
                        return Recording::Stopped;
                    }
                }
            }
        }
    }

    /// Answers the broker for a recorded batch: malformed messages dead-lettered, the rest acked.
    async fn answer(
        &self,
        arrivals: Vec<(Delivery, Verdict)>,
        rejected: Vec<(Delivery, ContractError)>,
        recorded: HashMap<String, Recorded>,
        woken: BTreeSet<AppKey>,
    ) {
        // Lanes of this process learn of their new work at once; other replicas by NOTIFY.
        for app in &woken {
            self.wakers.wake(*app);
        }

        for (d, e) in rejected {
            metrics::counter!("bouncer_rejected_messages_total", "rule" => e.rule.as_str()).increment(1);
            metrics::counter!("bouncer_verdicts_received_total", "outcome" => "rejected").increment(1);
            tracing::warn!(reason = %e, "malformed message recorded and dead-lettered");
            let _ = d.acker.reject(BasicRejectOptions { requeue: false }).await;
        }
        let mut seen: HashSet<&str> = HashSet::new();
        for (d, v) in &arrivals {
            let first_in_batch = seen.insert(v.verdict_id.as_str());
            if let Some(r) = recorded.get(&v.verdict_id) {
                let outcome = outcome(r, first_in_batch, self.serves(v));
                metrics::counter!("bouncer_verdicts_received_total", "outcome" => outcome).increment(1);
                // The publisher's trace id (W3C traceparent), so its trace reaches this line.
                let trace_id = traceparent(&d.properties).and_then(|t| t.split('-').nth(1).map(str::to_owned));
                tracing::debug!(verdict_id = %single_line(&v.verdict_id), vendor = %v.vendor, app_id = v.app_id,
                    room_id = %single_line(&v.room_id.to_string()), trace_id = trace_id.as_deref().unwrap_or(""),
                    status = %r.status, deliveries = r.deliveries, outcome, "verdict recorded");
            }
        }
        // `Ok(false)`: the delivery predates a reconnect and was not acked. The broker sends the
        // message again; recording it again only counts the delivery. Acks are sent together
        // rather than one awaited after another.
        let acks =
            futures_util::future::join_all(arrivals.iter().map(|(d, _)| d.acker.ack(BasicAckOptions::default()))).await;
        let unacked = acks.iter().filter(|a| !matches!(a, Ok(true))).count();
        if unacked > 0 {
            tracing::warn!(
                unacked,
                "deliveries from before a reconnect could not be acked; the broker redelivers them"
            );
        }
    }

    fn serves(&self, v: &Verdict) -> bool {
        self.apps.contains(&AppKey::new(v.vendor, v.app_id))
    }

    /// One transaction for the batch. Returns where each verdict stands and the apps with new work.
    async fn record(
        &self,
        arrivals: &[(Delivery, Verdict)],
        rejected: &[(Delivery, ContractError)],
    ) -> Result<(HashMap<String, Recorded>, BTreeSet<AppKey>), crate::audit::AuditError> {
        let reasons: Vec<String> = rejected.iter().map(|(_, e)| e.to_string()).collect();
        let rejections: Vec<Rejection<'_>> = rejected
            .iter()
            .zip(&reasons)
            .map(|((d, e), reason)| Rejection {
                reason,
                field: e.field.as_deref(),
                rule: e.rule.as_str(),
                payload: &d.data,
                // An unstorable message may owe that to its headers: keep only its body.
                headers: if e.rule == Rule::Unstorable { serde_json::json!({}) } else { headers_json(&d.properties) },
            })
            .collect();
        // One row per verdict id; every arrival counts as a delivery.
        let mut order: Vec<&str> = Vec::new();
        let mut rows: HashMap<&str, (usize, i32)> = HashMap::new();
        for (i, (_, v)) in arrivals.iter().enumerate() {
            let entry = rows.entry(v.verdict_id.as_str()).or_insert_with(|| {
                order.push(v.verdict_id.as_str());
                (i, 0)
            });
            entry.1 += 1;
        }
        // Rows locked in one order by every batch: concurrent batches never deadlock.
        order.sort_unstable();
        let payloads: Vec<Box<RawValue>> = order
            .iter()
            .map(|id| {
                let body = &arrivals[rows[id].0].0.data;
                // The body parsed as a verdict, so it is UTF-8 JSON.
                RawValue::from_string(String::from_utf8_lossy(body).into_owned())
                    .unwrap_or_else(|_| RawValue::from_string("null".into()).expect("null is JSON"))
            })
            .collect();
        let mut woken = BTreeSet::new();
        let new: Vec<NewVerdict<'_>> = order
            .iter()
            .zip(&payloads)
            .map(|(id, payload)| {
                let (i, deliveries) = rows[id];
                let v = &arrivals[i].1;
                let unconfigured = if self.serves(v) {
                    woken.insert(AppKey::new(v.vendor, v.app_id));
                    None
                } else {
                    tracing::error!(verdict_id = %single_line(id), vendor = %v.vendor, app_id = v.app_id,
                        "verdict for an app not configured here recorded as failed");
                    Some(format!("{} app {} is not configured in this worker; replay once it is", v.vendor, v.app_id))
                };
                let traceparent = traceparent(&arrivals[i].0.properties);
                NewVerdict { verdict: v, payload, deliveries, unconfigured, traceparent }
            })
            .collect();
        // Other replicas hear only of apps whose lanes do not run here (see `crate::wake`).
        let elsewhere: Vec<AppKey> = woken.iter().copied().filter(|app| !self.wakers.runs_here(*app)).collect();
        let note = (!elsewhere.is_empty()).then(|| WakeNote::new(&self.me, elsewhere));
        let recorded = record::record(
            &self.pool,
            &new,
            &rejections,
            note.as_ref(),
            &self.rule_apps,
            self.events,
            self.known_bans.as_deref(),
        )
        .await?;
        // Verdicts nobody here can enforce end at intake: counted like those that end at a vendor,
        // so the failure alerts see them.
        for n in new.iter().filter(|n| n.unconfigured.is_some()) {
            let v = n.verdict;
            if let Some(r) = recorded.get(&v.verdict_id).filter(|r| r.inserted && r.status == VerdictStatus::Failed) {
                metrics::counter!("bouncer_verdicts_finished_total", "status" => r.status.as_str()).increment(1);
                metrics::counter!("bouncer_kicks_total", "vendor" => v.vendor.as_str(), "outcome" => KickStatus::Failed.as_str())
                    .increment(v.user_ids.len() as u64);
            }
        }
        Ok((recorded, woken))
    }
}

/// Takes out arrivals whose `verdict_id` names, earlier in the same batch, a different verdict.
/// (One already recorded is found by the database when the batch is recorded.)
fn reused_in_batch(arrivals: Arrivals) -> (Arrivals, Rejected) {
    let mut first: HashMap<&str, usize> = HashMap::new();
    let differs: Vec<bool> = arrivals
        .iter()
        .enumerate()
        .map(|(i, (_, v))| {
            let f = *first.entry(v.verdict_id.as_str()).or_insert(i);
            !arrivals[f].1.same_enforcement(v)
        })
        .collect();
    let (mut kept, mut reused) = (Vec::new(), Vec::new());
    for ((d, v), differs) in arrivals.into_iter().zip(differs) {
        if differs { reused.push((d, reused_id())) } else { kept.push((d, v)) }
    }
    (kept, reused)
}

/// Why a message reusing another verdict's id is kept as rejected.
fn reused_id() -> ContractError {
    ContractError {
        field: Some("verdict_id".into()),
        rule: Rule::VerdictIdReused,
        message:
            "already names a different verdict (vendor, app, room, users or ban differ); this one was not enforced"
                .into(),
    }
}

/// The `bouncer_verdicts_received_total` outcome of one arrival.
fn outcome(r: &Recorded, first_in_batch: bool, served: bool) -> &'static str {
    match (r.inserted, r.status) {
        _ if !first_in_batch => "duplicate",
        (true, _) if !served => "unconfigured_app",
        (true, _) => "new",
        (false, VerdictStatus::Pending) => "duplicate",
        (false, _) => "already_finished",
    }
}

/// Largest header document stored with a rejected message (serialised JSON).
pub const MAX_HEADERS_BYTES: usize = 8 * 1024;

/// The W3C trace context a publisher sent (`traceparent` header), if it is one: version `00`
/// `-` 32 hex trace id `-` 16 hex parent id `-` 2 hex flags, ids not all zero. Anything else is
/// ignored (a malformed trace header is no reason to refuse a verdict).
pub(crate) fn traceparent(props: &BasicProperties) -> Option<String> {
    let value = props.headers().as_ref()?.inner().get("traceparent")?;
    let text = match value {
        lapin::types::AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        lapin::types::AMQPValue::ShortString(s) => s.to_string(),
        _ => return None,
    };
    valid_traceparent(text.trim()).then(|| text.trim().to_ascii_lowercase())
}

fn valid_traceparent(t: &str) -> bool {
    let parts: Vec<&str> = t.split('-').collect();
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    let nonzero = |s: &str| s.bytes().any(|b| b != b'0');
    parts.len() == 4
        && hex(parts[0], 2)
        && !parts[0].eq_ignore_ascii_case("ff")
        && hex(parts[1], 32)
        && nonzero(parts[1])
        && hex(parts[2], 16)
        && nonzero(parts[2])
        && hex(parts[3], 2)
}

/// AMQP headers as JSON for the audit trail: U+0000 (which jsonb cannot hold) written as the
/// text `\u0000`, and at most [`MAX_HEADERS_BYTES`]; larger ones are replaced by a note of their
/// size, so a publisher cannot make a tiny message cost megabytes of audit.
fn headers_json(props: &BasicProperties) -> serde_json::Value {
    let Some(value) = props.headers().as_ref().and_then(|h| serde_json::to_value(h.inner()).ok()) else {
        return serde_json::json!({});
    };
    let value = without_nul(value);
    let size = serde_json::to_string(&value).map(|s| s.len()).unwrap_or(usize::MAX);
    if size > MAX_HEADERS_BYTES {
        return serde_json::json!({"bouncer_headers_omitted": {"bytes": size, "limit": MAX_HEADERS_BYTES}});
    }
    value
}

fn without_nul(v: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    let clean = |s: String| if s.contains('\0') { s.replace('\0', "\\u0000") } else { s };
    match v {
        Value::String(s) => Value::String(clean(s)),
        Value::Array(items) => Value::Array(items.into_iter().map(without_nul).collect()),
        Value::Object(m) => Value::Object(m.into_iter().map(|(k, v)| (clean(k), without_nul(v))).collect()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(inserted: bool, status: VerdictStatus) -> Recorded {
        Recorded { status, deliveries: 1, inserted }
    }

    #[test]
    fn each_arrival_is_counted_once_under_one_outcome() {
        assert_eq!(outcome(&r(true, VerdictStatus::Pending), true, true), "new");
        assert_eq!(outcome(&r(true, VerdictStatus::Pending), false, true), "duplicate");
        assert_eq!(outcome(&r(true, VerdictStatus::Failed), true, false), "unconfigured_app");
        assert_eq!(outcome(&r(false, VerdictStatus::Pending), true, true), "duplicate");
        assert_eq!(outcome(&r(false, VerdictStatus::Done), true, true), "already_finished");
    }
}
