//! The outcome events of a run, as a pipeline receives them: a queue of the bench's own
//! (`<queue>.outcomes`, deleted with the run's other queues) bound to every event before the
//! workers start, consumed while they run. Each event's latency is its arrival here less the
//! verdict's `finished_at` (the commit that wrote the event): finished → published, confirmed and
//! delivered. Throughput is the relay's: events over the span they arrived in, and the busiest
//! second.

use std::collections::HashSet;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicQosOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Connection, ConnectionProperties, ExchangeKind};
use serde::Serialize;
use tokio::task::JoinHandle;

use super::report::Latency;

/// What the consumer saw.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub(crate) struct EventsReport {
    pub(crate) received: usize,
    /// Distinct event ids (the rest were duplicates: at least once).
    pub(crate) distinct: usize,
    /// `bouncer.verdict.finished` → received here.
    pub(crate) finished_to_received: Latency,
    /// Events over the span from the first arrival to the last.
    pub(crate) events_per_second: f64,
    /// The most events that arrived in one second.
    pub(crate) busiest_second: usize,
}

/// (arrival ms since the epoch, finished_at ms if a verdict event, event id)
pub(super) type Seen = (i64, Option<i64>, String);

/// The consumer's task and what stops it.
pub(super) type Consumer = (JoinHandle<Vec<Seen>>, tokio_util::sync::CancellationToken);

/// Binds `<queue>.outcomes` to the exchange and consumes until `stop`.
pub(super) async fn start(
    amqp: &str,
    queue: &str,
    stop: tokio_util::sync::CancellationToken,
) -> Result<JoinHandle<Vec<Seen>>, String> {
    let conn =
        Connection::connect(amqp, ConnectionProperties::default()).await.map_err(|e| format!("RabbitMQ: {e}"))?;
    let ch = conn.create_channel().await.map_err(|e| e.to_string())?;
    let (exchange, events) = (format!("{queue}.outcomes"), format!("{queue}.outcomes"));
    let durable = ExchangeDeclareOptions { durable: true, ..ExchangeDeclareOptions::default() };
    ch.exchange_declare(exchange.as_str().into(), ExchangeKind::Topic, durable, FieldTable::default())
        .await
        .map_err(|e| e.to_string())?;
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
    let q = QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() };
    ch.queue_declare(events.as_str().into(), q, args).await.map_err(|e| e.to_string())?;
    ch.queue_bind(
        events.as_str().into(),
        exchange.as_str().into(),
        "#".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .map_err(|e| e.to_string())?;
    ch.basic_qos(2000, BasicQosOptions::default()).await.map_err(|e| e.to_string())?;
    let opts = BasicConsumeOptions { no_ack: true, ..BasicConsumeOptions::default() };
    let mut consumer = ch
        .basic_consume(events.as_str().into(), "bench".into(), opts, FieldTable::default())
        .await
        .map_err(|e| e.to_string())?;
    Ok(tokio::spawn(async move {
        let mut seen = Vec::new();
        loop {
            let next = tokio::select! {
                () = stop.cancelled() => break,
                d = consumer.next() => d,
            };
            let Some(Ok(d)) = next else { break };
            let now = chrono::Utc::now().timestamp_millis();
            let event: serde_json::Value = serde_json::from_slice(&d.data).unwrap_or_default();
            let finished = event["data"]["finished_at"]
                .as_str()
                .filter(|_| event["type"] == "bouncer.verdict.finished")
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.timestamp_millis());
            seen.push((now, finished, event["id"].as_str().unwrap_or_default().to_owned()));
        }
        let _ = conn.close(200, "bench done".into()).await;
        seen
    }))
}

/// Waits (up to 30 s) until `want` distinct events arrived, then stops the consumer and reports.
pub(super) async fn finish(
    handle: JoinHandle<Vec<Seen>>,
    stop: tokio_util::sync::CancellationToken,
    pool: &sqlx::PgPool,
) -> EventsReport {
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(30) {
        let waiting: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox").fetch_one(pool).await.unwrap_or(1);
        if waiting == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The last confirmed events are on their way to the consumer.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.cancel();
    let seen = handle.await.unwrap_or_default();
    let distinct = seen.iter().map(|(_, _, id)| id.as_str()).collect::<HashSet<_>>().len();
    let latencies: Vec<f64> = seen.iter().filter_map(|(at, fin, _)| fin.map(|f| (at - f).max(0) as f64)).collect();
    let first = seen.iter().map(|s| s.0).min().unwrap_or(0);
    let last = seen.iter().map(|s| s.0).max().unwrap_or(0);
    let mut per_second = std::collections::HashMap::<i64, usize>::new();
    for (at, _, _) in &seen {
        *per_second.entry(at / 1000).or_default() += 1;
    }
    EventsReport {
        received: seen.len(),
        distinct,
        finished_to_received: Latency::of(latencies),
        events_per_second: seen.len() as f64 / (((last - first) as f64) / 1000.0).max(0.001),
        busiest_second: per_second.values().copied().max().unwrap_or(0),
    }
}

/// Writes `n` outcome events into the outbox, each the size of a real `bouncer.verdict.finished`
/// of a two-user verdict (without `finished_at`, so they count in the throughput, not the latency).
pub(super) async fn fill_outbox(pool: &sqlx::PgPool, n: usize) -> Result<(), String> {
    eprintln!("  writing {n} outcome events into the outbox");
    sqlx::query(
        "INSERT INTO outbox (event_id, type, subject, routing_key, event)
         SELECT x.id, 'bouncer.verdict.finished', 'backlog-' || x.g, 'verdict.done.zego.1',
                jsonb_build_object('specversion', '1.0', 'id', x.id, 'type', 'bouncer.verdict.finished',
                    'subject', 'backlog-' || x.g, 'time', now(), 'datacontenttype', 'application/json',
                    'data', jsonb_build_object('verdict_id', 'backlog-' || x.g, 'vendor', 'zego', 'app_id', 1,
                        'room_id', 'room-1', 'status', 'done', 'replay', 0,
                        'users', jsonb_build_array(
                            jsonb_build_object('user_id', 'u-' || x.g, 'outcome', 'kicked', 'attempts', 1,
                                               'error', NULL, 'vendor_request_id', gen_random_uuid()),
                            jsonb_build_object('user_id', 'v-' || x.g, 'outcome', 'kicked', 'attempts', 1,
                                               'error', NULL, 'vendor_request_id', gen_random_uuid())),
                        'attempts', 1, 'last_vendor_code', '0', 'last_vendor_message', 'success',
                        'last_request_id', gen_random_uuid(), 'received_at', now(), 'ban', NULL))
         FROM (SELECT g, bouncer_uuidv7() AS id FROM generate_series(1, $1::int) g) x",
    )
    .bind(n as i64)
    .execute(pool)
    .await
    .map_err(|e| format!("filling the outbox: {e}"))?;
    Ok(())
}
