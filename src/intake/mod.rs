//! Intake: consume verdicts, record each with its pending kicks, and ack right after the commit.
//!
//! The stage in three files: this one (what intake shares, and its reconnect loop), `session`
//! (one broker session: consuming, quarantining what lapin cannot parse) and `recording`
//! (recording a batch, isolating what PostgreSQL refuses, settling deliveries).
//!
//! Deliveries are taken in batches (whatever the broker has already sent, up to half the
//! prefetch and at most [`MAX_BATCH`]) and recorded in one transaction; only then is anything
//! acked or rejected. Up to [`PIPELINE_DEPTH`] batches are recorded at once, so the broker refills
//! the prefetch window while the database works instead of after it. Intake never waits
//! on a vendor, so the prefetch only bounds intake batches: enforcement reads its work from
//! PostgreSQL ([`crate::lane`]). Every replica runs intake (competing consumers on one queue).

mod recording;
mod session;
pub mod topology;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use secrecy::ExposeSecret;
use tokio_util::sync::CancellationToken;

use crate::audit::Db;
use crate::audit::intake as record;
use crate::config::{AmqpConfig, redact_url};
use crate::keys::AppKey;
use crate::retry::Backoff;
use crate::wake::Wakers;

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
    pub pool: Db,
    /// Apps some lane of this deployment can enforce (this replica's configuration).
    pub apps: HashSet<AppKey>,
    /// Apps whose bans are also set as vendor ban rules (`[[zego]] forbid_rules`): their new
    /// bans start with a rule pending.
    pub rule_apps: HashSet<AppKey>,
    pub wakers: Arc<Wakers>,
    /// This replica's id, so it ignores its own wake-up notifications.
    pub me: String,
    pub amqp: AmqpConfig,
    pub status: Arc<BrokerStatus>,
    /// `outcomes.enabled`: verdicts that end at intake get their outcome events.
    pub events: bool,
    /// Where outcome events go (declared with the intake topology), when enabled.
    pub outcomes: Option<crate::outcomes::Outcomes>,
    /// This process's copy of where bans hold (when it serves the API): intake adds the bans it
    /// records before they commit.
    pub known_bans: Option<Arc<crate::ban_index::BanIndex>>,
}

use session::{QUARANTINE_RECONNECT, SessionError};

impl Intake {
    /// Consumes until `shutdown`, reconnecting with backoff whenever the broker goes away.
    ///
    /// A message whose frame lapin cannot parse (a property or header that is not UTF-8, which
    /// RabbitMQ passes on) kills the connection, and comes back first on every reconnect. Every
    /// other unacked delivery comes back too, each time one delivery nearer the queue's delivery
    /// limit. So after such a failure intake is *quarantined*: it takes one delivery at a time
    /// (prefetch 1), so only the poison is in flight when the connection dies, and reconnects
    /// after half a second; the broker dead-letters the poison once it reaches the delivery
    /// limit, and the prefetch is restored after `session::QUARANTINE_DELIVERIES` (50) clean deliveries.
    pub async fn run(&self, shutdown: &CancellationToken) {
        // 200 ms, doubling to 30 s while sessions fail at once; back to the first step after one
        // that worked for 30 s (a broker restart tomorrow should not wait as long as the outage
        // last week ended at).
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
        let mut quarantined = false;
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            let started = std::time::Instant::now();
            match self.session(shutdown, &mut quarantined).await {
                Ok(conn) => {
                    // Unacked deliveries (none once a batch is answered) go back to the broker.
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
                    if !Backoff::sleep(QUARANTINE_RECONNECT, shutdown).await {
                        return;
                    }
                }
                Err(e) => {
                    if started.elapsed() >= SESSION_THAT_WORKED {
                        backoff.reset();
                    }
                    let wait = backoff.next_wait();
                    self.status.connected.store(false, Ordering::Relaxed);
                    self.status.consuming.store(false, Ordering::Relaxed);
                    tracing::error!(error = %e, url = %redact_url(self.amqp.url.expose_secret()), retry_in_ms = wait.as_millis() as u64,
                        "RabbitMQ session ended; reconnecting");
                    if !Backoff::sleep(wait, shutdown).await {
                        return;
                    }
                }
            }
        }
    }
}

/// A broker session that lasted this long worked: the next reconnect starts from the first step.
const SESSION_THAT_WORKED: Duration = Duration::from_secs(30);
