//! The audit writer: one task that turns a stream of call results into few, large transactions,
//! then acks the deliveries of every verdict those transactions finished. If PostgreSQL is away it
//! keeps the batch and tries again; nothing is acked without its record.

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::mpsc;

use super::{AttemptRow, KickOutcome, record_results};
use crate::inflight::Inflight;

/// Most messages folded into one transaction.
const MAX_BATCH: usize = 4_096;

pub enum AuditMsg {
    /// One vendor call.
    Attempt(Box<AttemptRow>),
    /// Users of one app whose kick ended.
    Outcomes { app_id: u32, outcomes: Vec<KickOutcome> },
    /// A verdict of this app with nothing left to kick (resumed after a crash): close it if complete.
    Check { app_id: u32, verdict_id: String },
    /// Answered once everything sent before it is written and acked (used at shutdown).
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// Writers running side by side. Each app's messages always go to the same writer, so the
/// outcomes of one verdict (one app) are never split over two concurrent transactions, each of
/// which could miss the other's update when deciding whether the verdict is finished.
pub const WRITERS: usize = 4;

/// The sending side; cheap to clone. Bounded so a stalled database slows the callers down
/// instead of growing memory without end.
#[derive(Clone)]
pub struct AuditSink(Vec<mpsc::Sender<AuditMsg>>);

impl AuditSink {
    fn lane(&self, app_id: u32) -> &mpsc::Sender<AuditMsg> {
        &self.0[app_id as usize % self.0.len()]
    }

    pub async fn send(&self, msg: AuditMsg) {
        let tx = match &msg {
            AuditMsg::Attempt(a) => self.lane(u32::try_from(a.app_id).unwrap_or_default()),
            AuditMsg::Outcomes { app_id, .. } | AuditMsg::Check { app_id, .. } => self.lane(*app_id),
            AuditMsg::Flush(_) => &self.0[0],
        };
        // Only fails once the writer has stopped, which happens after every sender is gone.
        let _ = tx.send(msg).await;
    }

    /// Waits until everything sent so far is written and its verdicts acked, on every writer.
    pub async fn flush(&self) {
        for tx in &self.0 {
            let (done, wait) = tokio::sync::oneshot::channel();
            let _ = tx.send(AuditMsg::Flush(done)).await;
            let _ = wait.await;
        }
    }
}

/// Starts the writers. They end when every [`AuditSink`] is dropped and their queues are written.
pub fn spawn(pool: PgPool, inflight: Arc<Inflight>) -> (AuditSink, Vec<tokio::task::JoinHandle<()>>) {
    let (senders, tasks) = (0..WRITERS)
        .map(|_| {
            let (tx, rx) = mpsc::channel(MAX_BATCH * 4);
            (tx, tokio::spawn(run(pool.clone(), inflight.clone(), rx)))
        })
        .unzip();
    (AuditSink(senders), tasks)
}

async fn run(pool: PgPool, inflight: Arc<Inflight>, mut rx: mpsc::Receiver<AuditMsg>) {
    let mut buf = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut buf, MAX_BATCH).await > 0 {
        let (mut attempts, mut outcomes, mut check, mut flushes) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for msg in buf.drain(..) {
            match msg {
                AuditMsg::Attempt(a) => attempts.push(*a),
                AuditMsg::Outcomes { outcomes: o, .. } => outcomes.extend(o),
                AuditMsg::Check { verdict_id, .. } => check.push(verdict_id),
                AuditMsg::Flush(done) => flushes.push(done),
            }
        }
        let mut wait = Duration::from_millis(100);
        let started = std::time::Instant::now();
        let finished = loop {
            match record_results(&pool, &attempts, &outcomes, &check).await {
                Ok(f) => break f,
                Err(e) => {
                    metrics::counter!("bouncer_database_errors_total", "op" => "results").increment(1);
                    tracing::error!(error = %e, retry_in_ms = wait.as_millis() as u64, "cannot write audit rows; holding them and retrying");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
            }
        };
        for (_, status) in &finished {
            metrics::counter!("bouncer_verdicts_finished_total", "status" => status.clone()).increment(1);
        }
        let written = started.elapsed();
        inflight.finish(finished.iter().map(|(id, _)| id.as_str())).await;
        tracing::debug!(
            attempts = attempts.len(),
            outcomes = outcomes.len(),
            finished = finished.len(),
            write_ms = written.as_millis() as u64,
            ack_ms = (started.elapsed() - written).as_millis() as u64,
            "audit batch written"
        );
        for done in flushes {
            let _ = done.send(());
        }
    }
}
