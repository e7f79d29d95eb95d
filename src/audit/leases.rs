//! Live replicas and quota leases (`workers`, `quota_owners`). Times come from PostgreSQL's clock
//! alone, so replicas on hosts whose clocks disagree still agree on who owns what.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::{AuditError, Db};

use crate::keys::OWNERS_CHANNEL;

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Removes this replica (on shutdown) and rows of replicas gone for over an hour.
pub async fn leave(db: &Db, worker: &str) -> Result<(), AuditError> {
    db.run(async |c| {
        db.query("DELETE FROM workers WHERE worker_id = $1 OR expires_at < now() - interval '1 hour'")
            .bind(worker)
            .execute(c)
            .await
    })
    .await?;
    Ok(())
}

/// One heartbeat in one round trip: refreshes this replica's row and extends its leases on
/// `groups`. Returns how many replicas are live and the groups it still holds (a lease missing
/// from the answer was lost).
pub async fn renew(
    db: &Db,
    worker: &str,
    hostname: &str,
    pid: u32,
    groups: &[String],
    ttl: Duration,
) -> Result<(i64, Vec<String>), AuditError> {
    Ok(db
        .run(async |c| {
            db.query_as(
                "WITH me AS (
                     INSERT INTO workers (worker_id, hostname, pid, expires_at)
                     VALUES ($1, $2, $3, now() + $5 * interval '1 millisecond')
                     ON CONFLICT (worker_id) DO UPDATE SET last_seen_at = now(), expires_at = EXCLUDED.expires_at
                     RETURNING 1),
                 kept AS (
                     UPDATE quota_owners SET confirmed_at = now(), expires_at = now() + $5 * interval '1 millisecond'
                     WHERE worker_id = $1 AND quota_group = ANY($4) AND expires_at > now()
                     RETURNING quota_group)
                 -- The statement's snapshot does not see `me` (it runs all the same): count this replica.
                 SELECT 1 + (SELECT count(*) FROM workers WHERE expires_at > now() AND worker_id <> $1),
                        ARRAY(SELECT quota_group FROM kept)",
            )
            .bind(worker)
            .bind(hostname)
            .bind(i32::try_from(pid).unwrap_or(i32::MAX))
            .bind(groups)
            .bind(millis(ttl))
            .fetch_one(c)
            .await
        })
        .await?)
}

/// A lease just taken.
#[derive(Clone, Debug)]
pub struct Acquired {
    pub term: i64,
    /// How long to wait before the first call: until `wait_after_previous` past the last moment
    /// the previous owner could have started one (zero when there was none, or it is long past).
    pub first_call_in: Duration,
}

/// Takes `group` if nobody holds a live lease on it.
pub async fn acquire(
    db: &Db,
    worker: &str,
    group: &str,
    ttl: Duration,
    wait_after_previous: Duration,
) -> Result<Option<Acquired>, AuditError> {
    // ON CONFLICT … WHERE re-checks the expiry under the row lock, so of two contenders only one
    // gets a row back.
    let row: Option<(i64, f64)> = db.run(async |c| db.query_as(
        "INSERT INTO quota_owners AS o (quota_group, worker_id, expires_at)
         VALUES ($1, $2, now() + $3 * interval '1 millisecond')
         ON CONFLICT (quota_group) DO UPDATE
            SET worker_id = EXCLUDED.worker_id, term = o.term + 1, acquired_at = now(), confirmed_at = now(),
                expires_at = EXCLUDED.expires_at, previous_expires_at = o.expires_at
          WHERE o.expires_at <= now()
         RETURNING term,
                   COALESCE(extract(epoch FROM previous_expires_at + $4 * interval '1 millisecond' - now()) * 1000, 0)::float8",
    )
    .bind(group)
    .bind(worker)
    .bind(millis(ttl))
    .bind(millis(wait_after_previous))
    .fetch_optional(c)
    .await).await?;
    Ok(row.map(|(term, wait_ms)| Acquired { term, first_call_in: Duration::from_secs_f64(wait_ms.max(0.0) / 1000.0) }))
}

/// Gives these leases (group and term) up now — each ends at the current time — and tells
/// contenders with one notification: a notifying commit takes PostgreSQL's global notify lock, so a
/// replica leaving with many leases sends one, not one per lease.
pub async fn release(db: &Db, worker: &str, leases: &[(&str, i64)]) -> Result<(), AuditError> {
    if leases.is_empty() {
        return Ok(());
    }
    let groups: Vec<&str> = leases.iter().map(|(g, _)| *g).collect();
    let terms: Vec<i64> = leases.iter().map(|(_, t)| *t).collect();
    let mut tx = db.begin().await?;
    db.query(
        "UPDATE quota_owners o SET expires_at = LEAST(o.expires_at, now())
         FROM UNNEST($2::text[], $3::int8[]) AS r(quota_group, term)
         WHERE o.quota_group = r.quota_group AND o.term = r.term AND o.worker_id = $1",
    )
    .bind(worker)
    .bind(&groups)
    .bind(&terms)
    .execute(&mut *tx)
    .await?;
    // Listeners look at every free lease on any notification; the payload names the first.
    db.query("SELECT pg_notify($1, $2)").bind(OWNERS_CHANNEL).bind(groups[0]).execute(&mut *tx).await?;
    tx.commit().await?;
    Ok(())
}

/// Leases on these groups that nobody holds now (free or expired).
pub async fn free_groups(db: &Db, groups: &[String]) -> Result<Vec<String>, AuditError> {
    Ok(db
        .run(async |c| {
            db.query_scalar(
                "SELECT g FROM UNNEST($1::text[]) AS g
                 WHERE NOT EXISTS (SELECT 1 FROM quota_owners o WHERE o.quota_group = g AND o.expires_at > now())",
            )
            .bind(groups)
            .fetch_all(c)
            .await
        })
        .await?)
}

/// One lease, for `bouncer status`.
#[derive(Clone, Debug, sqlx::FromRow, serde::Serialize)]
pub struct OwnerRow {
    pub quota_group: String,
    pub worker_id: String,
    pub term: i64,
    pub acquired_at: DateTime<Utc>,
    pub confirmed_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    /// Whether the lease is live now (an expired one is free to take).
    pub live: bool,
}

pub async fn owners(db: &Db) -> Result<Vec<OwnerRow>, AuditError> {
    Ok(db
        .run(async |c| {
            db.query_as(
                "SELECT quota_group, worker_id, term, acquired_at, confirmed_at, expires_at, expires_at > now() AS live
                 FROM quota_owners ORDER BY quota_group",
            )
            .fetch_all(c)
            .await
        })
        .await?)
}

/// One replica, for `bouncer status`.
#[derive(Clone, Debug, sqlx::FromRow, serde::Serialize)]
pub struct WorkerRow {
    pub worker_id: String,
    pub hostname: String,
    pub pid: i32,
    pub started_at: DateTime<Utc>,
    pub last_seen_at: DateTime<Utc>,
    pub live: bool,
}

pub async fn workers(db: &Db) -> Result<Vec<WorkerRow>, AuditError> {
    Ok(db
        .run(async |c| {
            db.query_as(
                "SELECT worker_id, hostname, pid, started_at, last_seen_at, expires_at > now() AS live
                 FROM workers ORDER BY started_at",
            )
            .fetch_all(c)
            .await
        })
        .await?)
}
