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
    /// Users whose kick ended.
    Outcomes(Vec<KickOutcome>),
    /// A verdict with nothing left to kick (resumed after a crash): close it if it is complete.
    Check(String),
    /// Answered once everything sent before it is written and acked (used at shutdown).
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// The sending side; cheap to clone. Bounded so a stalled database slows the callers down
/// instead of growing memory without end.
#[derive(Clone)]
pub struct AuditSink(mpsc::Sender<AuditMsg>);

impl AuditSink {
    pub async fn send(&self, msg: AuditMsg) {
        // Only fails once the writer has stopped, which happens after every sender is gone.
        let _ = self.0.send(msg).await;
    }

    /// Waits until everything sent so far is written and its verdicts acked.
    pub async fn flush(&self) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.send(AuditMsg::Flush(tx)).await;
        let _ = rx.await;
    }
}

/// Starts the writer. It ends when every [`AuditSink`] is dropped and the queue is written.
pub fn spawn(pool: PgPool, inflight: Arc<Inflight>) -> (AuditSink, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(MAX_BATCH * 4);
    (AuditSink(tx), tokio::spawn(run(pool, inflight, rx)))
}

async fn run(pool: PgPool, inflight: Arc<Inflight>, mut rx: mpsc::Receiver<AuditMsg>) {
    let mut buf = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut buf, MAX_BATCH).await > 0 {
        let (mut attempts, mut outcomes, mut check, mut flushes) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for msg in buf.drain(..) {
            match msg {
                AuditMsg::Attempt(a) => attempts.push(*a),
                AuditMsg::Outcomes(o) => outcomes.extend(o),
                AuditMsg::Check(id) => check.push(id),
                AuditMsg::Flush(done) => flushes.push(done),
            }
        }
        let mut wait = Duration::from_millis(100);
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
        inflight.finish(finished.iter().map(|(id, _)| id.as_str())).await;
        for done in flushes {
            let _ = done.send(());
        }
    }
}
