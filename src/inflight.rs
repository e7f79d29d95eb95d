//! Deliveries held unacked until their verdict's terminal state is committed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use lapin::Acker;
use lapin::options::BasicAckOptions;

use crate::lane::LaneStats;

/// One held delivery.
struct Held {
    acker: Acker,
    /// The lane working on the verdict, to release its hold.
    lane: Arc<LaneStats>,
}

/// Every verdict this worker is enforcing, by `verdict_id`.
#[derive(Default)]
pub struct Inflight {
    /// Verdict id → the one delivery to ack when it finishes.
    held: Mutex<HashMap<String, Held>>,
}

impl Inflight {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Held>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn len(&self) -> usize {
        self.map().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn contains(&self, verdict_id: &str) -> bool {
        self.map().contains_key(verdict_id)
    }

    /// Starts holding a delivery for a verdict handed to `lane`.
    pub fn hold(&self, verdict_id: &str, acker: Acker, lane: Arc<LaneStats>) {
        lane.held_verdicts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.map().insert(verdict_id.to_owned(), Held { acker, lane });
    }

    /// The verdict arrived again while being enforced here (a republish, or a redelivery after
    /// the connection broke). Hold the newest delivery, which is surely live, and return the
    /// older one to be acked: if it was already dead, acking it is harmless.
    pub fn replace(&self, verdict_id: &str, acker: Acker) -> Option<Acker> {
        self.map().get_mut(verdict_id).map(|h| std::mem::replace(&mut h.acker, acker))
    }

    /// The verdicts reached a terminal state in PostgreSQL: ack their deliveries. Returns how many
    /// acks the broker took; `Ok(false)` (a delivery from before a reconnect) means the message
    /// will come again and be acked then, as its verdict is already terminal.
    pub async fn finish(&self, verdict_ids: impl IntoIterator<Item = &str>) -> usize {
        let done: Vec<Held> = {
            let mut map = self.map();
            verdict_ids.into_iter().filter_map(|id| map.remove(id)).collect()
        };
        let acks = done.iter().map(|h| {
            h.lane.held_verdicts.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            h.acker.ack(BasicAckOptions::default())
        });
        let results = futures_util::future::join_all(acks).await;
        results.iter().filter(|r| matches!(r, Ok(true))).count()
    }
}
