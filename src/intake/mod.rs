//! Intake: consume verdicts, record each with its pending kicks, and ack right after the commit.
//!
//! Deliveries are taken in batches (whatever the broker has already sent, up to half the
//! prefetch and at most [`MAX_BATCH`]) and recorded in one transaction; only then is anything
//! acked or rejected. Up to [`PIPELINE_DEPTH`] batches are recorded at once, so the broker refills
//! the prefetch window while the database works instead of after it. Intake never waits
//! on a vendor, so the prefetch only bounds intake batches: enforcement reads its work from
//! PostgreSQL ([`crate::lane`]). Every replica runs intake (competing consumers on one queue).

pub mod topology;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, BasicRejectOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use secrecy::ExposeSecret;
use serde_json::value::RawValue;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::audit::intake::{self as record, NewVerdict, Recorded, Rejection};
use crate::config::{AmqpConfig, redact_url};
use crate::states::{KickStatus, VerdictStatus};
use crate::verdict::{ContractError, Rule, Vendor, Verdict};
use crate::wake::{self, Wakers};

/// Most deliveries recorded in one transaction.
pub const MAX_BATCH: usize = 512;
/// Batches being recorded at once. Two overlap one batch's commit and acks with the next one's
/// inserts; each batch's verdict rows are written in `verdict_id` order, so two transactions that
/// share a verdict wait for each other instead of deadlocking.
pub const PIPELINE_DEPTH: usize = 2;

/// What `/readyz` reports about the broker side.
#[derive(Default)]
pub struct BrokerStatus {
    /// Connected to RabbitMQ.
    pub connected: AtomicBool,
    /// The verdict consumer is registered and its stream is open.
    pub consuming: AtomicBool,
    /// Since when (Unix ms) intake has held deliveries it cannot record; 0 when it is not.
    pub holding_since_ms: AtomicU64,
}

impl BrokerStatus {
    /// How long intake has held deliveries without recording them (zero when it is not).
    pub fn holding_for(&self) -> Duration {
        match self.holding_since_ms.load(Ordering::Relaxed) {
            0 => Duration::ZERO,
            since => Duration::from_millis(unix_ms().saturating_sub(since)),
        }
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Everything intake needs; shared by every broker session of the process.
pub struct Intake {
    pub pool: PgPool,
    /// Apps some lane of this deployment can enforce (this replica's configuration).
    pub apps: HashSet<(Vendor, u32)>,
    pub wakers: Arc<Wakers>,
    /// This replica's id, so it ignores its own wake-up notifications.
    pub me: String,
    pub amqp: AmqpConfig,
    pub status: Arc<BrokerStatus>,
}

/// How recording a batch ended.
enum Recording {
    Recorded(HashMap<String, Recorded>, BTreeSet<(Vendor, u32)>),
    /// Shutdown came while PostgreSQL was away; nothing was settled.
    Stopped,
    /// PostgreSQL refused the data (see [`crate::audit::AuditError::is_data_error`]).
    Refused(crate::audit::AuditError),
}

/// Why a broker session ended.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("RabbitMQ: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("the consumer was cancelled or its channel closed")]
    ConsumerEnded,
    #[error("disconnected for over a minute without recovering")]
    Stalled,
    #[error("a delivery could not be parsed by the AMQP client: {0}")]
    Unparseable(String),
}

/// After a frame the AMQP client cannot parse, sessions take one delivery at a time until this
/// many have arrived cleanly (see [`Intake::run`]).
const QUARANTINE_DELIVERIES: usize = 50;
/// The wait before reconnecting after an unparseable frame: the broker is fine, a message is not.
const QUARANTINE_RECONNECT: Duration = Duration::from_millis(500);

impl Intake {
    /// Consumes until `shutdown`, reconnecting with backoff whenever the broker goes away.
    ///
    /// A message whose frame lapin cannot parse (a property or header that is not UTF-8, which
    /// RabbitMQ passes on) kills the connection, and comes back first on every reconnect. Every
    /// other unacked delivery comes back too, each time one delivery nearer the queue's delivery
    /// limit. So after such a failure intake is *quarantined*: it takes one delivery at a time
    /// (prefetch 1), so only the poison is in flight when the connection dies, and reconnects
    /// after half a second; the broker dead-letters the poison once it reaches the delivery
    /// limit, and the prefetch is restored after [`QUARANTINE_DELIVERIES`] clean deliveries.
    pub async fn run(&self, shutdown: &CancellationToken) {
        // Halved here so the first failure waits the first step.
        let mut wait = Duration::from_millis(100);
        let mut quarantined = false;
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            let started = std::time::Instant::now();
            match self.session(shutdown, &mut quarantined).await {
                Ok(conn) => {
                    // Unacked deliveries (none once a batch is settled) go back to the broker.
                    let _ = conn.close(200, "bouncer shutting down".into()).await;
                    return;
                }
                Err(SessionError::Unparseable(detail)) => {
                    metrics::counter!("bouncer_unparseable_deliveries_total").increment(1);
                    self.status.connected.store(false, Ordering::Relaxed);
                    self.status.consuming.store(false, Ordering::Relaxed);
                    if !quarantined {
                        // One row per episode: the bytes never reached us, the broker keeps them.
                        let reason = format!(
                            "a delivery the AMQP client could not parse ({detail}); taking one delivery at a time \
                             until RabbitMQ dead-letters it to {}.rejected at the delivery limit ({})",
                            self.amqp.queue, self.amqp.delivery_limit
                        );
                        let _ = record::record_unparseable(&self.pool, &crate::text::single_line(&reason)).await;
                    }
                    quarantined = true;
                    tracing::error!(error = %detail, queue = %self.amqp.queue, delivery_limit = self.amqp.delivery_limit,
                        "a delivery could not be parsed; quarantined: one delivery at a time until the broker dead-letters it");
                    tokio::select! {
                        () = tokio::time::sleep(QUARANTINE_RECONNECT) => {},
                        () = shutdown.cancelled() => return,
                    }
                }
                Err(e) => {
                    wait = reconnect_wait(wait, started.elapsed());
                    self.status.connected.store(false, Ordering::Relaxed);
                    self.status.consuming.store(false, Ordering::Relaxed);
                    tracing::error!(error = %e, url = %redact_url(self.amqp.url.expose_secret()), retry_in_ms = wait.as_millis() as u64,
                        "RabbitMQ session ended; reconnecting");
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {},
                        () = shutdown.cancelled() => return,
                    }
                }
            }
        }
    }

    async fn session(&self, shutdown: &CancellationToken, quarantined: &mut bool) -> Result<Connection, SessionError> {
        let props = ConnectionProperties::default()
            .with_connection_name(self.amqp.connection_name.clone().into())
            .enable_auto_recover();
        let conn = Connection::connect(self.amqp.url.expose_secret(), props).await?;
        // lapin reports a frame it cannot parse as a connection event, then ends the consumer.
        let (unparseable_tx, mut unparseable) = tokio::sync::mpsc::unbounded_channel::<String>();
        let mut events = conn.events_listener();
        let watcher = tokio::spawn(async move {
            while let Some(event) = events.next().await {
                if let lapin::Event::Error(e) = event
                    && matches!(e.kind(), lapin::ErrorKind::ParsingError(_))
                {
                    let _ = unparseable_tx.send(e.to_string());
                }
            }
        });
        let result = self.consume(&conn, shutdown, quarantined, &mut unparseable).await;
        // The event may trail the consumer's end by a moment.
        let result = match result {
            Err(e) if !matches!(e, SessionError::Unparseable(_)) => {
                match tokio::time::timeout(Duration::from_millis(100), unparseable.recv()).await {
                    Ok(Some(d)) => Err(SessionError::Unparseable(d)),
                    _ => Err(e),
                }
            }
            other => other,
        };
        watcher.abort();
        result.map(|()| conn)
    }

    async fn consume(
        &self,
        conn: &Connection,
        shutdown: &CancellationToken,
        quarantined: &mut bool,
        unparseable: &mut tokio::sync::mpsc::UnboundedReceiver<String>,
    ) -> Result<(), SessionError> {
        let consume = conn.create_channel().await?;
        topology::declare(&consume, &self.amqp).await?;
        let prefetch = if *quarantined { 1 } else { self.amqp.prefetch };
        consume.basic_qos(prefetch, BasicQosOptions::default()).await?;
        let mut clean = 0usize;
        let tag = format!("{}-{}", self.amqp.connection_name, uuid::Uuid::new_v4().simple());
        let mut consumer = consume
            .basic_consume(
                self.amqp.queue.as_str().into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        self.status.connected.store(true, Ordering::Relaxed);
        self.status.consuming.store(true, Ordering::Relaxed);
        tracing::info!(queue = %self.amqp.queue, prefetch, quarantined = *quarantined, "consuming verdicts");
        let mut watchdog = tokio::time::interval(Duration::from_secs(2));
        let mut disconnected_for = 0u32;
        let batch_cap = (usize::from(self.amqp.prefetch) / PIPELINE_DEPTH).clamp(1, MAX_BATCH);
        let mut recording = FuturesUnordered::new();
        loop {
            tokio::select! {
                () = shutdown.cancelled() => {
                    // Batches being recorded finish (or give up at once if they are holding).
                    while recording.next().await.is_some() {}
                    let _ = consume.basic_cancel(tag.as_str().into(), BasicCancelOptions::default()).await;
                    self.status.consuming.store(false, Ordering::Relaxed);
                    return Ok(());
                }
                Some(detail) = unparseable.recv() => {
                    while recording.next().await.is_some() {}
                    return Err(SessionError::Unparseable(detail));
                }
                Some(()) = recording.next(), if !recording.is_empty() => {}
                next = consumer.next(), if recording.len() < PIPELINE_DEPTH => match next {
                    Some(Ok(first)) => {
                        let mut batch = vec![first];
                        while batch.len() < batch_cap {
                            match consumer.next().now_or_never() {
                                Some(Some(Ok(d))) => batch.push(d),
                                _ => break,
                            }
                        }
                        if *quarantined {
                            clean += batch.len();
                            if clean >= QUARANTINE_DELIVERIES {
                                consume.basic_qos(self.amqp.prefetch, BasicQosOptions::default()).await?;
                                *quarantined = false;
                                tracing::info!(prefetch = self.amqp.prefetch, "quarantine over: deliveries parse again");
                            }
                        }
                        recording.push(self.handle_batch(batch, shutdown));
                    }
                    Some(Err(e)) => {
                        self.status.consuming.store(false, Ordering::Relaxed);
                        tracing::warn!(error = %e, "consumer interrupted; waiting for the connection to recover");
                        consume.wait_for_recovery(e).await?;
                        self.status.consuming.store(true, Ordering::Relaxed);
                        tracing::info!("connection recovered; consuming again");
                    }
                    None => {
                        while recording.next().await.is_some() {}
                        return Err(SessionError::ConsumerEnded);
                    }
                },
                _ = watchdog.tick() => {
                    // A consumer can stop silently if recovery stalls: give it a minute, then
                    // start a fresh session.
                    let up = conn.status().connected();
                    self.status.connected.store(up, Ordering::Relaxed);
                    disconnected_for = if up { 0 } else { disconnected_for + 1 };
                    if disconnected_for > 30 {
                        return Err(SessionError::Stalled);
                    }
                }
            }
        }
    }

    /// Records a batch, then settles every delivery in it. A batch the database refuses for its
    /// data is recorded message by message, so one message nobody can store costs only itself.
    async fn handle_batch(&self, deliveries: Vec<Delivery>, shutdown: &CancellationToken) {
        let mut rejected: Vec<(Delivery, ContractError)> = Vec::new();
        let mut arrivals: Vec<(Delivery, Verdict)> = Vec::new();
        for d in deliveries {
            match Verdict::parse(&d.data) {
                Ok(verdict) => arrivals.push((d, verdict)),
                Err(e) => rejected.push((d, e)),
            }
        }
        let (arrivals, reused) = self.split_reused(arrivals).await;
        rejected.extend(reused);
        match self.record_held(&arrivals, &rejected, shutdown).await {
            Recording::Recorded(recorded, woken) => self.settle(arrivals, rejected, recorded, woken).await,
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

    /// Takes out arrivals whose `verdict_id` already names a different verdict, in the database or
    /// earlier in the batch. (Two batches recorded at once can each carry a different verdict under
    /// one new id; the second then counts as a delivery of the first. The check is for publisher
    /// bugs, not a guarantee.) If the database cannot be asked, nothing is taken out: recording
    /// will hold the batch anyway.
    async fn split_reused(
        &self,
        arrivals: Vec<(Delivery, Verdict)>,
    ) -> (Vec<(Delivery, Verdict)>, Vec<(Delivery, ContractError)>) {
        let ids: Vec<&str> = arrivals.iter().map(|(_, v)| v.verdict_id.as_str()).collect();
        let stored = match record::stored_identities(&self.pool, &ids).await {
            Ok(s) => s,
            Err(_) => return (arrivals, Vec::new()),
        };
        let mut first: HashMap<String, Verdict> = HashMap::new();
        let (mut kept, mut reused) = (Vec::new(), Vec::new());
        for (d, v) in arrivals {
            let differs_from_stored = stored.get(&v.verdict_id).is_some_and(|(vendor, app, room, numeric, users)| {
                let stored = Verdict {
                    vendor: Vendor::parse(vendor).unwrap_or(v.vendor),
                    app_id: u32::try_from(*app).unwrap_or(0),
                    room_id: crate::verdict::RoomId::from_parts(room, *numeric).unwrap_or_else(|| v.room_id.clone()),
                    user_ids: users.clone(),
                    ..v.clone()
                };
                !stored.same_enforcement(&v)
            });
            let differs_in_batch = first.get(&v.verdict_id).is_some_and(|f| !f.same_enforcement(&v));
            if differs_from_stored || differs_in_batch {
                let e = ContractError {
                    field: Some("verdict_id".into()),
                    rule: Rule::VerdictIdReused,
                    message: "already names a different verdict (vendor, app, room or users differ); this one was not \
                              enforced"
                        .into(),
                };
                reused.push((d, e));
            } else {
                first.entry(v.verdict_id.clone()).or_insert_with(|| v.clone());
                kept.push((d, v));
            }
        }
        (kept, reused)
    }

    /// One message on its own. If the database refuses even that, the message is the offender:
    /// it is recorded as rejected (its body as bytes, which always store) and dead-lettered.
    async fn record_alone(
        &self,
        arrivals: Vec<(Delivery, Verdict)>,
        rejected: Vec<(Delivery, ContractError)>,
        shutdown: &CancellationToken,
    ) {
        let e = match self.record_held(&arrivals, &rejected, shutdown).await {
            Recording::Recorded(recorded, woken) => return self.settle(arrivals, rejected, recorded, woken).await,
            Recording::Stopped => return,
            Recording::Refused(e) => e,
        };
        let Some(d) = arrivals.into_iter().map(|(d, _)| d).chain(rejected.into_iter().map(|(d, _)| d)).next() else {
            return;
        };
        let why = ContractError {
            field: None,
            rule: Rule::Unstorable,
            message: crate::text::single_line(&format!("PostgreSQL cannot store this message: {e}")).into_owned(),
        };
        let unstorable = vec![(d, why)];
        match self.record_held(&[], &unstorable, shutdown).await {
            Recording::Recorded(recorded, woken) => self.settle(vec![], unstorable, recorded, woken).await,
            Recording::Stopped => {}
            Recording::Refused(e) => {
                // Nothing of it could be written; keep it in the dead-letter queue at least.
                metrics::counter!("bouncer_database_errors_total", "op" => "intake").increment(1);
                tracing::error!(error = %e, "a message could not be recorded even as rejected; dead-lettering it");
                for (d, _) in unstorable {
                    let _ = d.acker.reject(BasicRejectOptions { requeue: false }).await;
                }
            }
        }
    }

    /// Records, holding on while PostgreSQL is away: nothing is settled without it, and while we
    /// wait no new deliveries are taken. Gives up at once on a data error.
    async fn record_held(
        &self,
        arrivals: &[(Delivery, Verdict)],
        rejected: &[(Delivery, ContractError)],
        shutdown: &CancellationToken,
    ) -> Recording {
        let mut wait = Duration::from_millis(100);
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
                    tracing::error!(error = %e, retry_in_ms = wait.as_millis() as u64, "cannot record deliveries; holding them");
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {},
                        // Unsettled deliveries go back to the broker when the connection closes.
                        () = shutdown.cancelled() => return Recording::Stopped,
                    }
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// Settles a recorded batch: malformed messages dead-lettered, the rest acked.
    async fn settle(
        &self,
        arrivals: Vec<(Delivery, Verdict)>,
        rejected: Vec<(Delivery, ContractError)>,
        recorded: HashMap<String, Recorded>,
        woken: BTreeSet<(Vendor, u32)>,
    ) {
        // Lanes of this process learn of their new work at once; other replicas by NOTIFY.
        for (vendor, app_id) in &woken {
            self.wakers.wake(*vendor, *app_id);
        }

        for (d, e) in rejected {
            metrics::counter!("bouncer_rejected_messages_total", "rule" => e.rule.as_str()).increment(1);
            metrics::counter!("bouncer_verdicts_received_total", "outcome" => "rejected").increment(1);
            tracing::warn!(reason = %e, "malformed message recorded and dead-lettered");
            let _ = d.acker.reject(BasicRejectOptions { requeue: false }).await;
        }
        let mut seen: HashSet<&str> = HashSet::new();
        for (_, v) in &arrivals {
            let first_in_batch = seen.insert(v.verdict_id.as_str());
            if let Some(r) = recorded.get(&v.verdict_id) {
                let outcome = outcome(r, first_in_batch, self.serves(v));
                metrics::counter!("bouncer_verdicts_received_total", "outcome" => outcome).increment(1);
                tracing::debug!(verdict_id = %v.verdict_id, vendor = %v.vendor, app_id = v.app_id, room_id = %v.room_id,
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
        self.apps.contains(&(v.vendor, v.app_id))
    }

    /// One transaction for the batch. Returns where each verdict stands and the apps with new work.
    async fn record(
        &self,
        arrivals: &[(Delivery, Verdict)],
        rejected: &[(Delivery, ContractError)],
    ) -> Result<(HashMap<String, Recorded>, BTreeSet<(Vendor, u32)>), crate::audit::AuditError> {
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
                    woken.insert((v.vendor, v.app_id));
                    None
                } else {
                    tracing::error!(verdict_id = %id, vendor = %v.vendor, app_id = v.app_id,
                        "verdict for an app not configured here recorded as failed");
                    Some(format!("{} app {} is not configured in this worker; replay once it is", v.vendor, v.app_id))
                };
                NewVerdict { verdict: v, payload, deliveries, unconfigured }
            })
            .collect();
        let note = (!woken.is_empty()).then(|| wake::payload(&self.me, &woken));
        let recorded = record::record(&self.pool, &new, &rejections, note.as_deref()).await?;
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

/// The wait before reconnecting after a session that lasted `lasted`: doubling up to 30 s while
/// sessions fail at once, back to the first step after one that worked for a while (a broker
/// restart tomorrow should not wait as long as the outage last week ended at).
fn reconnect_wait(previous: Duration, lasted: Duration) -> Duration {
    const FIRST: Duration = Duration::from_millis(200);
    if lasted >= Duration::from_secs(30) { FIRST } else { (previous * 2).clamp(FIRST, Duration::from_secs(30)) }
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
    fn reconnect_backoff_grows_while_sessions_fail_and_resets_after_one_that_worked() {
        let ms = Duration::from_millis;
        let mut wait = ms(100);
        let mut seen = Vec::new();
        for _ in 0..10 {
            wait = reconnect_wait(wait, ms(5));
            seen.push(wait.as_millis());
        }
        assert_eq!(seen, [200, 400, 800, 1600, 3200, 6400, 12800, 25600, 30000, 30000]);
        assert_eq!(reconnect_wait(Duration::from_secs(30), Duration::from_secs(3600)), ms(200));
        assert_eq!(reconnect_wait(Duration::from_secs(30), Duration::from_secs(29)), Duration::from_secs(30));
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
