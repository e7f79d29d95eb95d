//! Outcome events as a pipeline receives them: a test binds its own queue (or lets the worker
//! declare `outcomes.queue`) and reads what arrived.

use std::time::{Duration, Instant};

use lapin::options::{BasicAckOptions, BasicGetOptions};
use lapin::{Connection, ConnectionProperties};

use crate::testkit::TestEnv;

/// One event as it arrived: the AMQP properties that matter and the CloudEvents document.
#[derive(Clone, Debug)]
pub struct Arrived {
    pub routing_key: String,
    pub message_id: Option<String>,
    pub kind: Option<String>,
    pub content_type: Option<String>,
    pub persistent: bool,
    /// Headers whose values are strings.
    pub headers: std::collections::BTreeMap<String, String>,
    pub event: serde_json::Value,
}

impl TestEnv {
    /// The queue the worker declares and binds to every event (`outcomes.queue`), set with
    /// [`TestEnv::enable_outcomes_queue`].
    pub fn outcomes_queue(&self) -> String {
        format!("{}.outcomes", self.queue)
    }

    /// Makes the worker declare [`TestEnv::outcomes_queue`] bound to every event.
    pub fn enable_outcomes_queue(&mut self) {
        let q = self.outcomes_queue();
        self.edit_config(|f| f.outcomes.queue = Some(q));
    }

    /// Reads events from `queue` until `want` arrived or `timeout` passed (acking each).
    pub async fn read_events(&self, queue: &str, want: usize, timeout: Duration) -> Vec<Arrived> {
        let conn = Connection::connect(&self.amqp, ConnectionProperties::default()).await.expect("connect");
        let mut ch = conn.create_channel().await.expect("channel");
        let mut out = Vec::new();
        let started = Instant::now();
        while out.len() < want && started.elapsed() < timeout {
            match ch.basic_get(queue.into(), BasicGetOptions::default()).await {
                Ok(Some(m)) => {
                    let p = &m.delivery.properties;
                    let headers = p
                        .headers()
                        .as_ref()
                        .map(|h| {
                            h.inner()
                                .iter()
                                .filter_map(|(k, v)| match v {
                                    lapin::types::AMQPValue::LongString(s) => {
                                        Some((k.to_string(), String::from_utf8_lossy(s.as_bytes()).into_owned()))
                                    }
                                    _ => None,
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    out.push(Arrived {
                        routing_key: m.delivery.routing_key.to_string(),
                        message_id: p.message_id().as_ref().map(|s| s.to_string()),
                        kind: p.kind().as_ref().map(|s| s.to_string()),
                        content_type: p.content_type().as_ref().map(|s| s.to_string()),
                        persistent: *p.delivery_mode() == Some(2),
                        headers,
                        event: serde_json::from_slice(&m.delivery.data).expect("an event is JSON"),
                    });
                    let _ = m.delivery.acker.ack(BasicAckOptions::default()).await;
                }
                Ok(None) => tokio::time::sleep(Duration::from_millis(50)).await,
                // The queue is not declared yet (the worker declares it): the broker closed the
                // channel; open another and look again.
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    ch = conn.create_channel().await.expect("channel");
                }
            }
        }
        let _ = conn.close(200, "read".into()).await;
        out
    }
}
