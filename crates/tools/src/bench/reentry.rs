//! `bouncer bench --preset reentry`: banned users rejoining while their app's quota is busy with a
//! backlog. 200 room bans are written straight into PostgreSQL before the run (as intake would
//! have recorded them); once the workers are up, the 200 users join their rooms in the simulator
//! at random moments over 30 s, and the simulator posts each `room_login` callback, signed as ZEGO
//! signs it, alternately to the quota owner's API and to the other replica's. Measured: callback
//! received → first re-kick call (`reentries.first_attempt_at - received_at`), split by whether the
//! receiving replica owned the quota; how long Bouncer took to answer each callback (as the
//! simulator saw it); and, from the common report, the backlog's use of its quota.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::report::Latency;

/// What the preset asks.
#[derive(Clone, Debug)]
pub(super) struct ReentryLoad {
    pub(super) users: usize,
    pub(super) seconds: u64,
}

/// What the run saw.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub(crate) struct ReentryReport {
    pub(crate) joins: usize,
    pub(crate) reentries: i64,
    pub(crate) rekicked: i64,
    /// Callback received → first re-kick call, callbacks the quota owner received.
    pub(crate) to_call_on_owner: Latency,
    /// The same, callbacks another replica received (handed over through PostgreSQL).
    pub(crate) to_call_from_other: Latency,
    /// How long Bouncer took to answer the callbacks, as the simulator measured.
    pub(crate) callback_answer: Latency,
    /// Callback deliveries not answered 200.
    pub(crate) callback_errors: usize,
}

const ROOMS: usize = 25;

fn user(i: usize) -> String {
    format!("rejoin-{i}")
}

fn room(i: usize) -> String {
    format!("room-{}", i % ROOMS)
}

/// Writes a room ban of an hour for each of the users, in the app's backlog rooms.
pub(super) async fn load_bans(pool: &sqlx::PgPool, app_id: u32, users: usize) -> Result<(), String> {
    sqlx::query(
        "INSERT INTO bans (vendor, app_id, user_id, scope, room_id, room_id_numeric, verdict_id, verdict_ids, reason,
                           expires_at)
         SELECT 'zego', $1, 'rejoin-' || g, 'room', 'room-' || g % $3, false, 'bench-rejoin-' || g,
                ARRAY['bench-rejoin-' || g], 'benchmark', now() + interval '1 hour'
         FROM generate_series(0, $2::int - 1) g",
    )
    .bind(i64::from(app_id))
    .bind(users as i64)
    .bind(ROOMS as i64)
    .execute(pool)
    .await
    .map_err(|e| format!("writing bans: {e}"))?;
    Ok(())
}

/// The joins, at random moments over the load's seconds, each callback to `api_addrs[i % n]`.
pub(super) async fn join(sim: Arc<bouncer_sim::Sim>, app_id: u32, api_addrs: Vec<String>, load: ReentryLoad) -> usize {
    let mut at: Vec<(Duration, usize)> =
        (0..load.users).map(|i| (Duration::from_secs_f64(rand::random::<f64>() * load.seconds as f64), i)).collect();
    at.sort();
    let started = Instant::now();
    let mut joined = 0;
    for (offset, i) in at {
        tokio::time::sleep_until((started + offset).into()).await;
        let request = bouncer_sim::JoinRequest {
            vendor: "zego".into(),
            app_id,
            room_id: room(i).into(),
            user_id: user(i),
            callback_url: Some(format!("http://{}", api_addrs[i % api_addrs.len()])),
            deliveries: None,
        };
        if sim.join(&request).is_ok() {
            joined += 1;
        }
    }
    joined
}

/// Waits (up to a minute) for every re-entry to end, then reports.
pub(super) async fn report(pool: &sqlx::PgPool, sim: &bouncer_sim::Sim, app_id: u32, joins: usize) -> ReentryReport {
    let waited = Instant::now();
    while waited.elapsed() < Duration::from_secs(60) {
        let (all, open): (i64, i64) =
            sqlx::query_as("SELECT count(*), count(*) FILTER (WHERE status = 'pending') FROM reentries")
                .fetch_one(pool)
                .await
                .unwrap_or((0, 1));
        if all >= joins as i64 && open == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let owner: Option<String> = sqlx::query_scalar("SELECT worker_id FROM quota_owners WHERE quota_group = $1")
        .bind(format!("zego:{app_id}"))
        .fetch_optional(pool)
        .await
        .unwrap_or(None);
    let rows: Vec<(Option<String>, Option<f64>, String)> = sqlx::query_as(
        "SELECT received_by, (extract(epoch FROM first_attempt_at - received_at) * 1000)::float8, status FROM reentries",
    )
    .fetch_all(pool)
    .await
    .unwrap_or_default();
    let (mut on_owner, mut from_other) = (Vec::new(), Vec::new());
    for (by, ms, _) in &rows {
        let Some(ms) = ms else { continue };
        if by.is_some() && *by == owner { on_owner.push(*ms) } else { from_other.push(*ms) }
    }
    let deliveries: Vec<bouncer_sim::Delivery> =
        sim.deliveries().into_iter().filter(|d| d.event == "room_login" && d.user_id.starts_with("rejoin-")).collect();
    ReentryReport {
        joins,
        reentries: rows.len() as i64,
        rekicked: rows.iter().filter(|(_, _, s)| s == "kicked").count() as i64,
        to_call_on_owner: Latency::of(on_owner),
        to_call_from_other: Latency::of(from_other),
        callback_answer: Latency::of(deliveries.iter().map(|d| d.answer_ms).collect()),
        callback_errors: deliveries.iter().filter(|d| d.status != 200).count(),
    }
}
