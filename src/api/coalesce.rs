//! Checks from many callers coalesced into one statement. At 2,000 checks a second each round trip
//! costs PostgreSQL more than its lookup (a backend woken, a transaction begun and ended), and
//! under load checks queue anyway: whatever has queued while every connection was busy goes in
//! the next statement, so the busier the API, the fewer round trips a check costs. An idle API
//! sends each check at once, alone: nothing waits to be batched.
//!
//! A caller that stops waiting (its budget ran out) is skipped if its batch has not started, and
//! otherwise its answer is dropped; the statement itself is never cancelled mid-protocol (that
//! would cost its connection).

use std::sync::Arc;

use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::audit::Db;
use crate::audit::bans::{self, ActiveBan, CheckItem};

/// Most items (users) in one statement.
const MAX_ITEMS: usize = 500;
/// Most checks waiting for a statement; beyond it a check is refused at once (503), so a flood
/// costs memory in proportion to what can be answered, not to what arrived.
const MAX_QUEUED: usize = 20_000;

type Answer = Result<Vec<Option<ActiveBan>>, String>;

struct Waiting {
    items: Vec<CheckItem>,
    reply: oneshot::Sender<Answer>,
}

/// The API's way to the `bans` table for checks.
#[derive(Clone)]
pub(crate) struct Coalescer {
    queue: mpsc::Sender<Waiting>,
}

impl Coalescer {
    /// Statements go out on `db`, at most `concurrency` at once (its connections).
    pub(crate) fn start(db: Db, concurrency: usize) -> Coalescer {
        let (queue, rx) = mpsc::channel(MAX_QUEUED);
        tokio::spawn(dispatch(db, rx, Arc::new(Semaphore::new(concurrency.max(1)))));
        Coalescer { queue }
    }

    /// For each item, the active ban that keeps its user out longest.
    pub(crate) async fn check(&self, items: Vec<CheckItem>) -> Answer {
        let (reply, answer) = oneshot::channel();
        self.queue.try_send(Waiting { items, reply }).map_err(|_| "too many checks waiting".to_owned())?;
        answer.await.map_err(|_| "the check was dropped".to_owned())?
    }
}

/// Takes the first waiting check, waits for a free connection, then takes everything that queued
/// meanwhile (up to [`MAX_ITEMS`]) into the same statement.
async fn dispatch(db: Db, mut rx: mpsc::Receiver<Waiting>, slots: Arc<Semaphore>) {
    while let Some(first) = rx.recv().await {
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        let mut batch = vec![first];
        let mut items: usize = batch[0].items.len();
        while items < MAX_ITEMS {
            match rx.try_recv() {
                Ok(w) => {
                    items += w.items.len();
                    batch.push(w);
                }
                Err(_) => break,
            }
        }
        // Callers that gave up already need no statement.
        batch.retain(|w| !w.reply.is_closed());
        if batch.is_empty() {
            continue;
        }
        let db = db.clone();
        tokio::spawn(async move {
            let all: Vec<CheckItem> = batch.iter().flat_map(|w| w.items.iter().cloned()).collect();
            metrics::histogram!("bouncer_api_check_batch_size").record(all.len() as f64);
            let found = bans::check_items(&db, &all).await.map_err(|e| e.to_string());
            drop(slot);
            let mut answers = found.map(|f| f.into_iter());
            for w in batch {
                let answer = match &mut answers {
                    Ok(f) => Ok(f.by_ref().take(w.items.len()).collect()),
                    Err(e) => Err(e.clone()),
                };
                let _ = w.reply.send(answer);
            }
        });
    }
}
