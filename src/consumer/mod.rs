//! Intake: consume verdicts, record them, and hand each to its app's lane (or defer it).
//!
//! Deliveries are taken in batches (whatever the broker has already sent, up to
//! [`MAX_BATCH`]) and recorded in one transaction. Only then is anything acked, rejected, deferred
//! or dispatched: a delivery is never settled before its record is committed.

pub mod topology;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, BasicRejectOptions,
    ConfirmSelectOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use secrecy::ExposeSecret;
use serde_json::value::RawValue;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::audit::writer::{AuditMsg, AuditSink};
use crate::audit::{self, NewVerdict, Rejection};
use crate::batch::VerdictRef;
use crate::config::{AmqpConfig, BatchConfig, redact_url};
use crate::inflight::Inflight;
use crate::lane::{LaneHandle, LaneMsg};
use crate::verdict::{Vendor, Verdict};

/// Most deliveries recorded in one transaction.
pub const MAX_BATCH: usize = 512;
/// Header counting how often a message was handed to the deferral queue.
pub const DEFERRALS_HEADER: &str = "x-bouncer-deferrals";

/// What `/readyz` reports about the broker side.
#[derive(Default)]
pub struct BrokerStatus {
    /// Connected to RabbitMQ.
    pub connected: AtomicBool,
    /// The verdict consumer is registered and its stream is open.
    pub consuming: AtomicBool,
}

/// Everything intake needs; shared by every broker session of the process.
pub struct Intake {
    pub pool: PgPool,
    /// Lanes by (vendor, app id).
    pub lanes: HashMap<(Vendor, u32), LaneHandle>,
    pub inflight: Arc<Inflight>,
    pub audit: AuditSink,
    pub amqp: AmqpConfig,
    pub batch: BatchConfig,
    pub status: Arc<BrokerStatus>,
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
}

/// One arrival of a valid verdict, waiting to be settled.
struct Arrival {
    delivery: Delivery,
    verdict: Verdict,
    deferrals: i64,
}

impl Intake {
    /// Consumes until `shutdown`, reconnecting with backoff whenever the broker goes away.
    /// Returns the last connection, still open, so held deliveries can be acked while the worker
    /// drains; closing it hands whatever is unacked back to the broker.
    pub async fn run(&self, shutdown: &CancellationToken) -> Option<Connection> {
        let mut wait = Duration::from_millis(200);
        loop {
            if shutdown.is_cancelled() {
                return None;
            }
            match self.session(shutdown).await {
                Ok(conn) => return Some(conn),
                Err(e) => {
                    self.status.connected.store(false, Ordering::Relaxed);
                    self.status.consuming.store(false, Ordering::Relaxed);
                    tracing::error!(error = %e, url = %redact_url(self.amqp.url.expose_secret()), retry_in_ms = wait.as_millis() as u64,
                        "RabbitMQ session ended; reconnecting");
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {},
                        () = shutdown.cancelled() => return None,
                    }
                    wait = (wait * 2).min(Duration::from_secs(30));
                }
            }
        }
    }

    async fn session(&self, shutdown: &CancellationToken) -> Result<Connection, SessionError> {
        let props = ConnectionProperties::default()
            .with_connection_name(self.amqp.connection_name.clone().into())
            .enable_auto_recover();
        let conn = Connection::connect(self.amqp.url.expose_secret(), props).await?;
        let consume = conn.create_channel().await?;
        let publish = conn.create_channel().await?;
        topology::declare(&consume, &self.amqp).await?;
        consume.basic_qos(self.amqp.prefetch, BasicQosOptions::default()).await?;
        publish.confirm_select(ConfirmSelectOptions::default()).await?;
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
        tracing::info!(queue = %self.amqp.queue, prefetch = self.amqp.prefetch, "consuming verdicts");
        let mut watchdog = tokio::time::interval(Duration::from_secs(2));
        let mut disconnected_for = 0u32;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => {
                    let _ = consume.basic_cancel(tag.as_str().into(), BasicCancelOptions::default()).await;
                    self.status.consuming.store(false, Ordering::Relaxed);
                    return Ok(conn);
                }
                next = consumer.next() => match next {
                    Some(Ok(first)) => {
                        let mut batch = vec![first];
                        while batch.len() < MAX_BATCH {
                            match consumer.next().now_or_never() {
                                Some(Some(Ok(d))) => batch.push(d),
                                _ => break,
                            }
                        }
                        self.handle_batch(batch, &publish, shutdown).await;
                    }
                    Some(Err(e)) => {
                        self.status.consuming.store(false, Ordering::Relaxed);
                        tracing::warn!(error = %e, "consumer interrupted; waiting for the connection to recover");
                        consume.wait_for_recovery(e).await?;
                        self.status.consuming.store(true, Ordering::Relaxed);
                        tracing::info!("connection recovered; consuming again");
                    }
                    None => return Err(SessionError::ConsumerEnded),
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

    /// Records a batch and settles every delivery in it.
    async fn handle_batch(&self, deliveries: Vec<Delivery>, publish: &Channel, shutdown: &CancellationToken) {
        let mut rejected: Vec<(Delivery, crate::verdict::ContractError)> = Vec::new();
        let mut arrivals: Vec<Arrival> = Vec::new();
        for d in deliveries {
            match Verdict::parse(&d.data) {
                Ok(verdict) => {
                    let deferrals = header_int(&d.properties, DEFERRALS_HEADER).unwrap_or(0);
                    arrivals.push(Arrival { delivery: d, verdict, deferrals });
                }
                Err(e) => rejected.push((d, e)),
            }
        }

        // Record first. If PostgreSQL is away, keep trying: nothing is settled without it, and
        // while we wait no new deliveries are taken.
        let mut wait = Duration::from_millis(100);
        let started = std::time::Instant::now();
        let recorded = loop {
            match self.record(&arrivals, &rejected).await {
                Ok(r) => break r,
                Err(e) => {
                    metrics::counter!("bouncer_database_errors_total", "op" => "intake").increment(1);
                    tracing::error!(error = %e, retry_in_ms = wait.as_millis() as u64, "cannot record deliveries; holding them");
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {},
                        // Unsettled deliveries go back to the broker when the connection closes.
                        () = shutdown.cancelled() => return,
                    }
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
            }
        };

        tracing::debug!(
            deliveries = arrivals.len() + rejected.len(),
            record_ms = started.elapsed().as_millis() as u64,
            "intake batch recorded"
        );
        for (d, e) in rejected {
            metrics::counter!("bouncer_rejected_messages_total", "rule" => e.rule.as_str()).increment(1);
            metrics::counter!("bouncer_verdicts_received_total", "outcome" => "rejected").increment(1);
            tracing::warn!(reason = %e, "malformed message recorded and dead-lettered");
            let _ = d.acker.reject(BasicRejectOptions { requeue: false }).await;
        }

        let mut to_defer: Vec<Arrival> = Vec::new();
        let mut seen: std::collections::HashSet<String> = std::collections::HashSet::new();
        for a in arrivals {
            let id = a.verdict.verdict_id.clone();
            let first_in_batch = seen.insert(id.clone());
            let Some(state) = recorded.get(&id) else { continue };
            let span = tracing::info_span!("verdict", verdict_id = %id, vendor = %a.verdict.vendor, app_id = a.verdict.app_id, room_id = %a.verdict.room_id);
            let _enter = span.enter();
            if state.status != "pending" {
                // Already enforced (or failed and kept for replay): never twice.
                metrics::counter!("bouncer_verdicts_received_total", "outcome" => "already_finished").increment(1);
                tracing::debug!(status = %state.status, deliveries = state.deliveries, "verdict already finished; acked");
                ack(&a.delivery).await;
                continue;
            }
            if !first_in_batch {
                // The first copy in this batch carries the verdict.
                metrics::counter!("bouncer_verdicts_received_total", "outcome" => "duplicate").increment(1);
                ack(&a.delivery).await;
                continue;
            }
            if let Some(older) = self.inflight.replace(&id, a.delivery.acker.clone()) {
                metrics::counter!("bouncer_verdicts_received_total", "outcome" => "duplicate").increment(1);
                tracing::debug!(deliveries = state.deliveries, "verdict already being enforced here");
                let _ = older.ack(BasicAckOptions::default()).await;
                continue;
            }
            let Some(lane) = self.lanes.get(&(a.verdict.vendor, a.verdict.app_id)) else {
                // Recorded as failed in the same transaction (see `record`); replayable.
                ack(&a.delivery).await;
                continue;
            };
            if state.pending_users.is_empty() {
                // Resumed after a crash with every user already settled: just close it.
                self.inflight.hold(&id, a.delivery.acker.clone(), lane.stats.clone());
                self.audit.send(AuditMsg::Check { app_id: a.verdict.app_id, verdict_id: id }).await;
                continue;
            }
            let max_held = self.amqp.max_unacked_per_app;
            let hold = Duration::from_secs(self.batch.hold_secs);
            if !lane.stats.accepts(state.pending_users.len(), hold, max_held, self.batch.max_open_batches) {
                to_defer.push(a);
                continue;
            }
            metrics::counter!("bouncer_verdicts_received_total", "outcome" => if state.inserted { "new" } else { "resumed" })
                .increment(1);
            self.dispatch(lane, &a, state);
        }
        if !to_defer.is_empty() {
            self.defer(to_defer, publish, &recorded).await;
        }
    }

    fn dispatch(&self, lane: &LaneHandle, a: &Arrival, state: &audit::Intake) {
        let v = &a.verdict;
        self.inflight.hold(&v.verdict_id, a.delivery.acker.clone(), lane.stats.clone());
        let msg = LaneMsg {
            verdict: VerdictRef::from(v.verdict_id.as_str()),
            room: v.room_id.clone(),
            users: state.pending_users.clone(),
            reason: v.reason.as_deref().map(Arc::from),
            origin: v.detected_at.unwrap_or(state.received_at),
        };
        // A lane only stops at shutdown; the delivery then stays unacked for redelivery.
        let _ = lane.tx.send(msg);
    }

    async fn record(
        &self,
        arrivals: &[Arrival],
        rejected: &[(Delivery, crate::verdict::ContractError)],
    ) -> Result<HashMap<String, audit::Intake>, audit::AuditError> {
        let reasons: Vec<String> = rejected.iter().map(|(_, e)| e.to_string()).collect();
        let rejections: Vec<Rejection<'_>> = rejected
            .iter()
            .zip(&reasons)
            .map(|((d, e), reason)| Rejection {
                reason,
                field: e.field.as_deref(),
                rule: e.rule.as_str(),
                payload: &d.data,
                headers: headers_json(&d.properties),
                verdict_id: None,
            })
            .collect();
        // One row per verdict id; only first-hand arrivals count as deliveries.
        let mut order: Vec<&str> = Vec::new();
        let mut rows: HashMap<&str, (usize, i32)> = HashMap::new();
        for (i, a) in arrivals.iter().enumerate() {
            let id = a.verdict.verdict_id.as_str();
            let entry = rows.entry(id).or_insert_with(|| {
                order.push(id);
                (i, 0)
            });
            if a.deferrals == 0 {
                entry.1 += 1;
            }
        }
        let payloads: Vec<Box<RawValue>> = order
            .iter()
            .map(|id| {
                let body = &arrivals[rows[id].0].delivery.data;
                // The body parsed as a verdict, so it is UTF-8 JSON.
                RawValue::from_string(String::from_utf8_lossy(body).into_owned())
                    .unwrap_or_else(|_| RawValue::from_string("null".into()).expect("null is JSON"))
            })
            .collect();
        let new: Vec<NewVerdict<'_>> = order
            .iter()
            .zip(&payloads)
            .map(|(id, payload)| {
                let (i, deliveries) = rows[id];
                NewVerdict { verdict: &arrivals[i].verdict, payload, deliveries }
            })
            .collect();
        let unconfigured: Vec<(&str, String)> = order
            .iter()
            .filter_map(|id| {
                let v = &arrivals[rows[id].0].verdict;
                (!self.lanes.contains_key(&(v.vendor, v.app_id))).then(|| {
                    (*id, format!("{} app {} is not configured in this worker; replay once it is", v.vendor, v.app_id))
                })
            })
            .collect();
        for (id, why) in &unconfigured {
            metrics::counter!("bouncer_verdicts_received_total", "outcome" => "unconfigured_app").increment(1);
            tracing::error!(verdict_id = %id, reason = %why, "verdict for an unknown app recorded as failed");
        }
        audit::record_intake(&self.pool, &new, &unconfigured, &rejections).await
    }

    /// Hands verdicts whose app cannot take them now to the deferral queue. Each is acked only
    /// after the broker confirmed the copy and the deferral is recorded; a copy the broker did
    /// not confirm is dispatched to its lane after all.
    async fn defer(&self, arrivals: Vec<Arrival>, publish: &Channel, recorded: &HashMap<String, audit::Intake>) {
        let target = topology::deferred(&self.amqp.queue);
        // Publish every copy first, then wait for all the confirms together.
        let mut pending = Vec::with_capacity(arrivals.len());
        for a in &arrivals {
            let props = with_header(&a.delivery.properties, DEFERRALS_HEADER, a.deferrals + 1).with_delivery_mode(2);
            pending.push(
                publish
                    .basic_publish(
                        "".into(),
                        target.as_str().into(),
                        BasicPublishOptions::default(),
                        &a.delivery.data,
                        props,
                    )
                    .await,
            );
        }
        let confirms = futures_util::future::join_all(pending.into_iter().map(|sent| async move {
            match sent {
                Ok(confirm) => confirm.await.is_ok_and(|c| c.is_ack()),
                Err(_) => false,
            }
        }))
        .await;
        let mut confirmed = Vec::new();
        for (a, ok) in arrivals.into_iter().zip(confirms) {
            if ok {
                confirmed.push(a);
            } else if let (Some(lane), Some(state)) =
                (self.lanes.get(&(a.verdict.vendor, a.verdict.app_id)), recorded.get(&a.verdict.verdict_id))
            {
                tracing::warn!(verdict_id = %a.verdict.verdict_id, "deferral not confirmed by the broker; enforcing now instead");
                self.dispatch(lane, &a, state);
            }
        }
        if confirmed.is_empty() {
            return;
        }
        let ids: Vec<&str> = confirmed.iter().map(|a| a.verdict.verdict_id.as_str()).collect();
        let mut wait = Duration::from_millis(100);
        while let Err(e) = audit::record_deferrals(&self.pool, &ids).await {
            tracing::error!(error = %e, "cannot record deferrals; retrying");
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(5));
        }
        for a in &confirmed {
            metrics::counter!("bouncer_verdicts_received_total", "outcome" => "deferred").increment(1);
            metrics::counter!("bouncer_deferrals_total", "vendor" => a.verdict.vendor.as_str()).increment(1);
            tracing::debug!(verdict_id = %a.verdict.verdict_id, vendor = %a.verdict.vendor, app_id = a.verdict.app_id,
                room_id = %a.verdict.room_id, deferrals = a.deferrals + 1, "app busy or failing: verdict deferred");
            ack(&a.delivery).await;
        }
    }
}

async fn ack(d: &Delivery) {
    // `Ok(false)`: the delivery predates a reconnect; it will come again and be acked then.
    let _ = d.acker.ack(BasicAckOptions::default()).await;
}

fn header_int(props: &BasicProperties, name: &str) -> Option<i64> {
    let headers = props.headers().as_ref()?;
    match headers.inner().get(name)? {
        AMQPValue::LongLongInt(n) => Some(*n),
        AMQPValue::LongInt(n) => Some(i64::from(*n)),
        AMQPValue::LongUInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortInt(n) => Some(i64::from(*n)),
        _ => None,
    }
}

fn with_header(props: &BasicProperties, name: &str, value: i64) -> BasicProperties {
    let mut headers = props.headers().clone().unwrap_or_default();
    headers.insert(ShortString::from(name), AMQPValue::LongLongInt(value));
    props.clone().with_headers(headers)
}

/// AMQP headers as JSON for the audit trail.
fn headers_json(props: &BasicProperties) -> serde_json::Value {
    props.headers().as_ref().and_then(|h| serde_json::to_value(h.inner()).ok()).unwrap_or_else(|| serde_json::json!({}))
}
