//! The relay: publishes the outbox's events to the outcomes exchange with publisher confirms, and
//! deletes an event only once the broker confirmed it. It runs on the one replica that holds the
//! `outbox:relay` lease (the elector hands it out like a quota group; any replica can take it
//! over), so events of one verdict leave in order and replicas never wait on each other: intake and
//! enforcement only insert rows.
//!
//! Per event, what the broker answers decides:
//!
//! | answer | meaning | row |
//! |---|---|---|
//! | `Ack` | every bound queue has it (persisted) | deleted |
//! | `Ack` with the message returned | no queue is bound for its routing key | deleted, counted (`bouncer_events_unroutable_total`): the broker drops an unroutable message as it drops any; bind a queue (or set `outcomes.queue`) first |
//! | `Nack`, an error, no answer in 10 s | not known to be stored | kept, tried again with backoff (same event id) |
//!
//! A lost connection rejects every confirm still pending: those events go out again, with the
//! same id (consumers dedupe on `id`).

use std::time::{Duration, Instant};

use futures_util::future::join_all;
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use lapin::{Confirmation, PublisherConfirm};
use secrecy::ExposeSecret;
use tokio_util::sync::CancellationToken;

use super::{EventType, Outcomes};
use crate::audit::Db;
use crate::audit::outbox::{self, Pending};
use crate::retry::Backoff;

/// Most events published before their confirms are awaited together.
const BATCH: i64 = 1_000;
/// How long a batch's confirms may take before the missing ones are tried again.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);
/// How often an idle relay looks for new events (no NOTIFY per verdict: a NOTIFY takes a global
/// lock at commit and would serialise every replica's finishing transactions).
const POLL: Duration = Duration::from_millis(50);

/// Runs until `cancel`: connects (and reconnects), declares the exchange, relays.
pub(crate) async fn run(db: Db, settings: Outcomes, cancel: CancellationToken) {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    tracing::info!(exchange = %settings.exchange, "relaying outcome events");
    while !cancel.is_cancelled() {
        let connected = async {
            let props = ConnectionProperties::default()
                .with_connection_name(format!("{}-relay", settings.connection_name).into());
            let conn = Connection::connect(settings.url.expose_secret(), props).await?;
            let channel = conn.create_channel().await?;
            channel.confirm_select(ConfirmSelectOptions::default()).await?;
            declare(&channel, &settings).await?;
            Ok::<_, lapin::Error>((conn, channel))
        };
        let (conn, channel) = tokio::select! {
            () = cancel.cancelled() => return,
            c = connected => match c {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "outcome relay cannot reach RabbitMQ; events wait in the outbox");
                    if !Backoff::sleep(backoff.next_wait(), &cancel).await {
                        return;
                    }
                    continue;
                }
            },
        };
        backoff.reset();
        let ended = relay(&db, &settings, &channel, &cancel).await;
        let _ = channel.close(200, "relay stopping".into()).await;
        let _ = conn.close(200, "relay stopping".into()).await;
        if let Err(e) = ended {
            tracing::warn!(error = %e, "outcome relay lost its channel; reconnecting");
            if !Backoff::sleep(backoff.next_wait(), &cancel).await {
                return;
            }
        }
    }
}

/// The durable topic exchange and, if configured, the one queue bound to every event. Intake
/// declares them too, on every replica, before it consumes: an event is never produced before
/// its exchange exists.
pub(crate) async fn declare(channel: &Channel, s: &Outcomes) -> lapin::Result<()> {
    channel
        .exchange_declare(
            s.exchange.as_str().into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions { durable: true, ..ExchangeDeclareOptions::default() },
            FieldTable::default(),
        )
        .await?;
    if let Some(queue) = &s.queue {
        let mut args = FieldTable::default();
        args.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
        let durable = QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() };
        channel.queue_declare(queue.as_str().into(), durable, args).await?;
        channel
            .queue_bind(
                queue.as_str().into(),
                s.exchange.as_str().into(),
                "#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    Ok(())
}

/// Relays until cancelled (`Ok`) or the channel fails (`Err`).
///
/// Two batches at a time: while the broker confirms one, the next is read and published, so the
/// database and the broker work side by side. Order per subject holds: an event waits in the
/// outbox until its predecessor is deleted, and that happens only after the predecessor's confirm.
async fn relay(db: &Db, s: &Outcomes, channel: &Channel, cancel: &CancellationToken) -> Result<(), lapin::Error> {
    let mut in_flight: Option<(Vec<Pending>, Sent)> = None;
    loop {
        if cancel.is_cancelled() {
            if let Some((batch, sent)) = in_flight.take() {
                settle_and_record(db, &batch, sent).await?;
            }
            return Ok(());
        }
        let skip: Vec<i64> = in_flight.iter().flat_map(|(b, _)| b.iter().map(|p| p.id)).collect();
        let batch = match outbox::due(db, BATCH, &skip).await {
            Ok(b) => b,
            Err(e) => {
                metrics::counter!("bouncer_database_errors_total", "op" => "outbox").increment(1);
                tracing::warn!(error = %e, "cannot read the outbox; trying again shortly");
                if let Some((batch, sent)) = in_flight.take() {
                    settle_and_record(db, &batch, sent).await?;
                }
                if !Backoff::sleep(Duration::from_secs(1), cancel).await {
                    return Ok(());
                }
                continue;
            }
        };
        let full = batch.len() as i64 == BATCH;
        let next = if batch.is_empty() {
            None
        } else {
            let sent = send(s, channel, &batch).await;
            Some((batch, sent))
        };
        let settled = in_flight.take();
        let idle = next.is_none() && settled.is_none();
        if let Some((batch, sent)) = settled {
            // A lost channel loses nothing: the next batch's events stay in the outbox and go out
            // again after the reconnect.
            settle_and_record(db, &batch, sent).await?;
        }
        if let Some((_, sent)) = &next
            && let Some(e) = &sent.channel_error
        {
            let e = e.clone();
            if let Some((batch, sent)) = next {
                settle_and_record(db, &batch, sent).await?;
            }
            return Err(e);
        }
        in_flight = next;
        if idle {
            if !Backoff::sleep(POLL, cancel).await {
                return Ok(());
            }
        } else if !full && !Backoff::sleep(Duration::from_millis(1), cancel).await {
            if let Some((batch, sent)) = in_flight.take() {
                settle_and_record(db, &batch, sent).await?;
            }
            return Ok(());
        }
    }
}

/// A batch published, its confirms not yet awaited.
struct Sent {
    confirms: Vec<(i64, PublisherConfirm)>,
    failed: Vec<(i64, String)>,
    /// The channel failed while publishing: reconnect after recording.
    channel_error: Option<lapin::Error>,
}

/// How a batch came out.
#[derive(Default)]
struct Published {
    confirmed: Vec<i64>,
    unroutable: Vec<i64>,
    failed: Vec<(i64, String)>,
    /// The channel failed: reconnect after recording.
    channel_error: Option<lapin::Error>,
}

/// Publishes every event of the batch (their confirms are awaited by [`settle`]).
async fn send(s: &Outcomes, channel: &Channel, batch: &[Pending]) -> Sent {
    // Published side by side: the frames still leave in the batch's order (the futures are
    // polled in order), and a batch holds at most one event per subject anyway.
    let messages: Vec<(Vec<u8>, BasicProperties)> = batch.iter().map(|p| message(s, p)).collect();
    let sent = join_all(batch.iter().zip(&messages).map(|(p, (body, properties))| {
        channel.basic_publish(
            s.exchange.as_str().into(),
            p.routing_key.as_str().into(),
            BasicPublishOptions { mandatory: true, ..BasicPublishOptions::default() },
            body,
            properties.clone(),
        )
    }))
    .await;
    let mut out = Sent { confirms: Vec::with_capacity(batch.len()), failed: Vec::new(), channel_error: None };
    for (p, sent) in batch.iter().zip(sent) {
        match sent {
            Ok(confirm) => out.confirms.push((p.id, confirm)),
            Err(e) => {
                out.failed.push((p.id, e.to_string()));
                out.channel_error.get_or_insert(e);
            }
        }
    }
    out
}

/// Awaits a published batch's confirms together.
async fn settle(sent: Sent) -> Published {
    let Sent { confirms, failed, channel_error } = sent;
    let mut out = Published { failed, channel_error, ..Published::default() };
    let ids: Vec<i64> = confirms.iter().map(|(id, _)| *id).collect();
    let answers = tokio::time::timeout(CONFIRM_TIMEOUT, join_all(confirms.into_iter().map(|(_, c)| c))).await;
    let Ok(answers) = answers else {
        out.failed.extend(ids.into_iter().map(|id| (id, "no confirm within 10 s".to_owned())));
        return out;
    };
    for (id, answer) in ids.into_iter().zip(answers) {
        match answer {
            Ok(Confirmation::Ack(None)) | Ok(Confirmation::NotRequested) => out.confirmed.push(id),
            Ok(Confirmation::Ack(Some(_))) => out.unroutable.push(id),
            Ok(Confirmation::Nack(_)) => out.failed.push((id, "nacked by the broker".into())),
            Err(e) => out.failed.push((id, e.to_string())),
        }
    }
    out
}

/// Settles a batch and records it; the channel's error, if it failed, for a reconnect.
async fn settle_and_record(db: &Db, batch: &[Pending], sent: Sent) -> Result<(), lapin::Error> {
    let outcome = settle(sent).await;
    let lost = outcome.channel_error.clone();
    record(db, batch, outcome).await;
    lost.map_or(Ok(()), Err)
}

/// Writes a batch's outcome: confirmed and unroutable events deleted, the rest rescheduled.
async fn record(db: &Db, batch: &[Pending], p: Published) {
    let now = chrono::Utc::now();
    let confirmed: std::collections::HashSet<i64> = p.confirmed.iter().copied().collect();
    for e in batch.iter().filter(|e| confirmed.contains(&e.id)) {
        metrics::counter!("bouncer_events_published_total", "type" => type_label(&e.r#type)).increment(1);
        if e.attempts > 0 {
            metrics::counter!("bouncer_events_republished_total").increment(1);
        }
        let waited = (now - e.created_at).to_std().unwrap_or_default();
        metrics::histogram!("bouncer_event_confirm_seconds").record(waited.as_secs_f64());
    }
    if !p.unroutable.is_empty() {
        metrics::counter!("bouncer_events_unroutable_total").increment(p.unroutable.len() as u64);
        tracing::warn!(
            events = p.unroutable.len(),
            "outcome events with no queue bound for their routing key were dropped by the broker"
        );
    }
    if !p.failed.is_empty() {
        metrics::counter!("bouncer_events_retried_total").increment(p.failed.len() as u64);
        tracing::warn!(events = p.failed.len(), error = %p.failed[0].1, "outcome events not confirmed; trying again");
    }
    let done: Vec<i64> = p.confirmed.iter().chain(&p.unroutable).copied().collect();
    let failed: Vec<i64> = p.failed.iter().map(|(id, _)| *id).collect();
    let error = p.failed.first().map(|(_, e)| e.as_str()).unwrap_or_default();
    // Until PostgreSQL takes the result, the events stay in the outbox and go out again (with the
    // same ids): a duplicate, never a loss.
    let started = Instant::now();
    while let Err(e) = outbox::sent(db, &done).await {
        tracing::warn!(error = %e, "cannot delete published events yet; retrying");
        if started.elapsed() > Duration::from_secs(10) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = outbox::failed(db, &failed, error).await;
}

/// A metric label: one of the known types (a row's type is data).
fn type_label(t: &str) -> &'static str {
    [EventType::VerdictFinished, EventType::BanLifted, EventType::ReentryKicked]
        .into_iter()
        .map(EventType::as_str)
        .find(|k| *k == t)
        .unwrap_or("other")
}

fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

/// The message: the CloudEvents document (structured mode) with this deployment's `source`, and
/// its attributes as AMQP properties and `ce-` headers.
fn message(s: &Outcomes, p: &Pending) -> (Vec<u8>, BasicProperties) {
    let mut event = p.event.clone();
    event["source"] = serde_json::Value::String(s.source.clone());
    let body = serde_json::to_vec(&event).unwrap_or_default();
    let mut headers = FieldTable::default();
    let attr = |k: &str| event.get(k).and_then(|v| v.as_str()).map(str::to_owned);
    for key in ["specversion", "id", "source", "type", "subject", "time", "datacontenttype"] {
        if let Some(v) = attr(key) {
            headers.insert(ShortString::from(format!("ce-{key}")), text(&v));
        }
    }
    if let Some(tp) = &p.traceparent {
        headers.insert("traceparent".into(), text(tp));
        headers.insert("ce-traceparent".into(), text(tp));
    }
    let properties = BasicProperties::default()
        .with_content_type("application/cloudevents+json".into())
        .with_delivery_mode(2)
        .with_message_id(p.event_id.to_string().into())
        .with_type(p.r#type.as_str().into())
        .with_timestamp(chrono::Utc::now().timestamp().max(0) as u64)
        .with_headers(headers);
    (body, properties)
}
