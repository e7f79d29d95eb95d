//! The broker topology Bouncer declares (idempotently) before consuming:
//!
//! ```text
//! publishers ──(default exchange)──▶ <queue>            quorum, durable, x-delivery-limit
//!                                      │ rejected / over the delivery limit
//!                                      ▼
//!                                  <queue>.dlx (fanout) ──▶ <queue>.rejected   quorum, durable
//! ```
//!
//! Versions before enforcement moved to PostgreSQL also declared `<queue>.deferred`; it is no
//! longer used (the README says how to delete it once empty).
//!
//! Declaring a queue that exists with other arguments fails (PRECONDITION_FAILED): change the
//! arguments of an existing queue with a policy, not with the config file.

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, ExchangeKind};

use crate::config::AmqpConfig;

pub fn dlx(queue: &str) -> String {
    format!("{queue}.dlx")
}
pub fn rejected(queue: &str) -> String {
    format!("{queue}.rejected")
}
/// The deferral queue of earlier versions (only deleted, never declared).
pub fn legacy_deferred(queue: &str) -> String {
    format!("{queue}.deferred")
}

fn table(entries: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in entries {
        t.insert(ShortString::from(*k), v.clone());
    }
    t
}

fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

pub async fn declare(ch: &Channel, cfg: &AmqpConfig) -> lapin::Result<()> {
    let durable = QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() };
    let q = cfg.queue.as_str();
    ch.exchange_declare(
        dlx(q).into(),
        ExchangeKind::Fanout,
        ExchangeDeclareOptions { durable: true, ..ExchangeDeclareOptions::default() },
        FieldTable::default(),
    )
    .await?;
    ch.queue_declare(rejected(q).into(), durable, table(&[("x-queue-type", text("quorum"))])).await?;
    ch.queue_bind(rejected(q).into(), dlx(q).into(), "".into(), QueueBindOptions::default(), FieldTable::default())
        .await?;
    ch.queue_declare(
        q.into(),
        durable,
        table(&[
            ("x-queue-type", text("quorum")),
            ("x-delivery-limit", AMQPValue::LongLongInt(i64::from(cfg.delivery_limit))),
            ("x-dead-letter-exchange", text(&dlx(q))),
        ]),
    )
    .await?;
    Ok(())
}

/// Deletes everything [`declare`] creates for `queue` (tests, the demo and the benchmark clean up
/// with it), then closes the channel. Errors are ignored: what is already gone is fine.
pub async fn delete(ch: &Channel, queue: &str) {
    use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
    // `<queue>.outcomes` is the default outcomes exchange, and the queue tests bind to it.
    let outcomes = format!("{queue}.outcomes");
    for name in [queue.to_owned(), rejected(queue), legacy_deferred(queue), outcomes.clone()] {
        let _ = ch.queue_delete(name.as_str().into(), QueueDeleteOptions::default()).await;
    }
    for name in [dlx(queue), outcomes] {
        let _ = ch.exchange_delete(name.as_str().into(), ExchangeDeleteOptions::default()).await;
    }
    let _ = ch.close(200, "cleaned up".into()).await;
}
