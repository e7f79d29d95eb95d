//! Publishing verdicts into Bouncer's own queue with publisher confirms (`kick`, `replay`, the
//! demo and the benchmark): the same path and contract as the moderation pipelines use.

use futures_util::future::join_all;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use secrecy::ExposeSecret;

use crate::config::AmqpConfig;

pub struct Publisher {
    conn: Connection,
    channel: Channel,
    queue: String,
}

impl Publisher {
    /// Connects, declares the topology (idempotent) and turns confirms on.
    pub async fn connect(amqp: &AmqpConfig, name: &str) -> lapin::Result<Publisher> {
        let props =
            ConnectionProperties::default().with_connection_name(format!("{}-{name}", amqp.connection_name).into());
        let conn = Connection::connect(amqp.url.expose_secret(), props).await?;
        let channel = conn.create_channel().await?;
        crate::intake::topology::declare(&channel, amqp).await?;
        channel.confirm_select(ConfirmSelectOptions::default()).await?;
        Ok(Publisher { conn, channel, queue: amqp.queue.clone() })
    }

    /// Publishes bodies (persistent, JSON) and waits for every confirm. Returns, per body,
    /// whether the broker confirmed it.
    pub async fn publish_all(&self, bodies: &[Vec<u8>], headers: &[(&str, &str)]) -> Vec<bool> {
        let mut table = FieldTable::default();
        for (k, v) in headers {
            table.insert(ShortString::from(*k), AMQPValue::LongString(LongString::from(*v)));
        }
        let props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into())
            .with_headers(table);
        let mut sent = Vec::with_capacity(bodies.len());
        for body in bodies {
            sent.push(
                self.channel
                    .basic_publish(
                        "".into(),
                        self.queue.as_str().into(),
                        BasicPublishOptions::default(),
                        body,
                        props.clone(),
                    )
                    .await,
            );
        }
        join_all(sent.into_iter().map(|s| async move {
            match s {
                Ok(confirm) => confirm.await.is_ok_and(|c| c.is_ack()),
                Err(_) => false,
            }
        }))
        .await
    }

    pub async fn close(self) {
        let _ = self.channel.close(200, "done".into()).await;
        let _ = self.conn.close(200, "done".into()).await;
    }
}
