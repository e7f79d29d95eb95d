//! One broker session: connect, declare, consume in pipelined batches, and notice a delivery the
//! AMQP client cannot parse (see [`super::Intake::run`] for what happens next).

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::{Intake, MAX_BATCH, PIPELINE_DEPTH, topology};
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use secrecy::ExposeSecret;
use tokio_util::sync::CancellationToken;

/// Why a broker session ended.
#[derive(Debug, thiserror::Error)]
pub(super) enum SessionError {
    #[error("RabbitMQ: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("the consumer was cancelled or its channel closed")]
    ConsumerEnded,
    #[error("disconnected for over 15 s without recovering")]
    Stalled,
    #[error("a delivery could not be parsed by the AMQP client: {0}")]
    Unparseable(String),
}

/// After a frame the AMQP client cannot parse, sessions take one delivery at a time until this
/// many have arrived cleanly (see [`Intake::run`]).
pub(super) const QUARANTINE_DELIVERIES: usize = 50;
/// The wait before reconnecting after an unparseable frame: the broker is fine, a message is not.
pub(super) const QUARANTINE_RECONNECT: Duration = Duration::from_millis(500);

impl Intake {
    pub(super) async fn session(
        &self,
        shutdown: &CancellationToken,
        quarantined: &mut bool,
    ) -> Result<Connection, SessionError> {
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

    /// Declares the topology and starts consuming (one delivery at a time while quarantined).
    /// Returns the channel, the consumer and its tag.
    async fn start_consumer(
        &self,
        conn: &Connection,
        quarantined: bool,
    ) -> Result<(lapin::Channel, lapin::Consumer, String), SessionError> {
        let consume = conn.create_channel().await?;
        topology::declare(&consume, &self.amqp).await?;
        if let Some(o) = &self.outcomes {
            crate::outcomes::relay::declare(&consume, o).await?;
        }
        let prefetch = if quarantined { 1 } else { self.amqp.prefetch };
        consume.basic_qos(prefetch, BasicQosOptions::default()).await?;
        let tag = format!("{}-{}", self.amqp.connection_name, uuid::Uuid::new_v4().simple());
        let consumer = consume
            .basic_consume(
                self.amqp.queue.as_str().into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        self.status.connected.store(true, Ordering::Relaxed);
        self.status.consuming.store(true, Ordering::Relaxed);
        tracing::info!(queue = %self.amqp.queue, prefetch, quarantined, "consuming verdicts");
        Ok((consume, consumer, tag))
    }

    async fn consume(
        &self,
        conn: &Connection,
        shutdown: &CancellationToken,
        quarantined: &mut bool,
        unparseable: &mut tokio::sync::mpsc::UnboundedReceiver<String>,
    ) -> Result<(), SessionError> {
        let (consume, mut consumer, tag) = self.start_consumer(conn, *quarantined).await?;
        let mut clean = 0usize;
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
                    // A consumer can stop silently if recovery stalls (seen: lapin's recovery
                    // stuck on "unexpected connection open-ok … awaiting ProtocolHeader" after a
                    // cut connection): its own retries take a few seconds, so after 15 s start a
                    // fresh session rather than wait out a minute.
                    let up = conn.status().connected();
                    self.status.connected.store(up, Ordering::Relaxed);
                    disconnected_for = if up { 0 } else { disconnected_for + 1 };
                    if disconnected_for > 7 {
                        return Err(SessionError::Stalled);
                    }
                }
            }
        }
    }
}
