//! The audit writer: tasks that turn a stream of call results into few, large transactions. If
//! PostgreSQL is away they keep the batch and try again. Once a batch is committed, each lane is
//! told which of its kicks are settled, so it never fetches a kick whose result is still on its way
//! to the database (that would call the vendor twice).

use std::time::Duration;

use tokio::sync::mpsc;

use super::Db;
use super::results::{self, AttemptRow, KickOutcome};
use crate::keys::KickKey;
use crate::retry::Backoff;
use tokio_util::sync::CancellationToken;

/// Most messages folded into one transaction.
const MAX_BATCH: usize = 4_096;

/// Writers running side by side. Each app's messages always go to the same writer, so the
/// outcomes of one verdict (one app) are never split over two concurrent transactions, each of
/// which could miss the other's update when deciding whether the verdict is finished.
pub const WRITERS: usize = 4;

/// Where a lane hears that kicks it handed over are recorded.
pub type Settled = mpsc::UnboundedSender<Vec<KickKey>>;

pub enum AuditMsg {
    /// One vendor call.
    Attempt(Box<AttemptRow>),
    /// Kicks of one app that ended or were scheduled for a retry.
    Outcomes { app_id: u32, outcomes: Vec<KickOutcome>, settled: Settled },
    /// Answered once everything sent before it is written.
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// The sending side; cheap to clone. Bounded so a stalled database slows the callers down
/// instead of growing memory without end.
#[derive(Clone)]
pub struct AuditSink(Vec<mpsc::Sender<AuditMsg>>);

impl AuditSink {
    fn writer_for(&self, app_id: u32) -> &mpsc::Sender<AuditMsg> {
        &self.0[app_id as usize % self.0.len()]
    }

    pub async fn send(&self, msg: AuditMsg) {
        let tx = match &msg {
            AuditMsg::Attempt(a) => self.writer_for(u32::try_from(a.app_id).unwrap_or_default()),
            AuditMsg::Outcomes { app_id, .. } => self.writer_for(*app_id),
            AuditMsg::Flush(_) => &self.0[0],
        };
        // Only fails once the writer has stopped, which happens after every sender is gone.
        let _ = tx.send(msg).await;
    }

    /// Waits until everything sent so far is written, on every writer.
    pub async fn flush(&self) {
        for tx in &self.0 {
            let (done, wait) = tokio::sync::oneshot::channel();
            let _ = tx.send(AuditMsg::Flush(done)).await;
            let _ = wait.await;
        }
    }
}

/// Starts the writers. They end when every [`AuditSink`] is dropped and their queues are written.
/// Starts the writers. Once `stop` is cancelled a writer that cannot reach PostgreSQL gives its
/// batch up instead of holding it (those kicks stay pending and are retried by the next owner).
/// With `events`, each verdict finished gets its outcome event in the same transaction.
pub fn spawn(pool: Db, stop: CancellationToken, events: bool) -> (AuditSink, Vec<tokio::task::JoinHandle<()>>) {
    let (senders, tasks) = (0..WRITERS)
        .map(|_| {
            let (tx, rx) = mpsc::channel(MAX_BATCH * 4);
            (tx, tokio::spawn(run(pool.clone(), rx, stop.clone(), events)))
        })
        .unzip();
    (AuditSink(senders), tasks)
}

async fn run(pool: Db, mut rx: mpsc::Receiver<AuditMsg>, stop: CancellationToken, events: bool) {
    let mut buf = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut buf, MAX_BATCH).await > 0 {
        let (mut attempts, mut outcomes, mut settled_lanes, mut flushes) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for msg in buf.drain(..) {
            match msg {
                AuditMsg::Attempt(a) => attempts.push(*a),
                AuditMsg::Outcomes { outcomes: o, settled, .. } => {
                    let keys: Vec<KickKey> =
                        o.iter().map(|k| KickKey::of(k.verdict_id.as_str(), k.user_id.as_str(), k.reentry)).collect();
                    settled_lanes.push((settled, keys));
                    outcomes.extend(o);
                }
                AuditMsg::Flush(done) => flushes.push(done),
            }
        }
        let started = std::time::Instant::now();
        // 100 ms, doubling to 5 s while PostgreSQL is away.
        let written = Backoff::new(Duration::from_millis(100), Duration::from_secs(5))
            .until_ok(
                &stop,
                || results::record(&pool, &attempts, &outcomes, events),
                |e: &super::AuditError, wait| {
                    metrics::counter!("bouncer_database_errors_total", "op" => "results").increment(1);
                    tracing::error!(error = %e, retry_in_ms = wait.as_millis() as u64, "cannot write audit rows; holding them and retrying");
                },
            )
            .await;
        let Some(finished) = written else {
            tracing::warn!(
                outcomes = outcomes.len(),
                "stopping without PostgreSQL: these kicks stay pending and are retried by the next owner"
            );
            return;
        };
        for (_, status) in &finished {
            metrics::counter!("bouncer_verdicts_finished_total", "status" => status.as_str()).increment(1);
        }
        for (lane, keys) in settled_lanes {
            // A lane that has stopped (ownership moved) no longer needs to know.
            let _ = lane.send(keys);
        }
        tracing::debug!(
            attempts = attempts.len(),
            outcomes = outcomes.len(),
            finished = finished.len(),
            write_ms = started.elapsed().as_millis() as u64,
            "audit batch written"
        );
        for done in flushes {
            let _ = done.send(());
        }
    }
}
