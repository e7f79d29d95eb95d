//! The broker alone: a bare consume-and-ack loop, the yardstick for intake.

use std::time::{Duration, Instant};

use futures_util::{FutureExt, StreamExt};
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use serde_json::json;

use bouncer::config::Config;
use bouncer::publisher::Publisher;

/// The broker's own rate here: publish `n` verdict-sized messages to a fresh quorum queue, then
/// consume them with prefetch 500 and time the consuming. Acked one after another (`together` =
/// false: the baseline the intake target was set against), or whatever has arrived acked at once
/// as intake acks (the broker's ceiling).
pub(super) async fn baseline(amqp: &str, n: usize, together: bool) -> Result<f64, String> {
    let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
    let mut config = Config::default();
    config.amqp.url = amqp.to_owned().into();
    config.amqp.queue = format!("bouncer.baseline.{id}");
    config.amqp.connection_name = format!("bouncer-baseline-{id}");
    let publisher = Publisher::connect(&config.amqp, "publisher").await.map_err(|e| format!("RabbitMQ: {e}"))?;
    let body = json!({"verdict_id": "baseline-000000", "vendor": "zego", "app_id": 2000000, "room_id": "room-1",
                      "user_ids": ["b1-0"], "reason": "benchmark"})
    .to_string()
    .into_bytes();
    for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
        let bodies = vec![body.clone(); chunk.len()];
        publisher.publish_all(&bodies, &[]).await;
    }
    publisher.close().await;
    let conn =
        lapin::Connection::connect(amqp, lapin::ConnectionProperties::default()).await.map_err(|e| e.to_string())?;
    let ch = conn.create_channel().await.map_err(|e| e.to_string())?;
    ch.basic_qos(500, BasicQosOptions::default()).await.map_err(|e| e.to_string())?;
    let mut consumer = ch
        .basic_consume(
            config.amqp.queue.as_str().into(),
            "baseline".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| e.to_string())?;
    let mut got = 0;
    let mut started = None;
    while got < n {
        match tokio::time::timeout(Duration::from_secs(30), consumer.next()).await {
            Ok(Some(Ok(first))) => {
                started.get_or_insert_with(Instant::now);
                let mut batch = vec![first];
                if together {
                    while batch.len() < 250 {
                        match consumer.next().now_or_never() {
                            Some(Some(Ok(d))) => batch.push(d),
                            _ => break,
                        }
                    }
                }
                for ack in
                    futures_util::future::join_all(batch.iter().map(|d| d.acker.ack(BasicAckOptions::default()))).await
                {
                    ack.map_err(|e| e.to_string())?;
                }
                got += batch.len();
            }
            _ => return Err("baseline consumer stalled".into()),
        }
    }
    let rate = n as f64 / started.map(|s| s.elapsed().as_secs_f64()).unwrap_or(1.0).max(1e-6);
    bouncer::intake::topology::delete(&ch, &config.amqp.queue).await;
    let _ = conn.close(200, "baseline done".into()).await;
    Ok(rate)
}
