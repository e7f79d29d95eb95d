//! Per-minute rollups of the trail (`rollups`), which the console's overview reads instead of a
//! day of raw rows. The migration's triggers write a delta (`rollup_deltas`) in every transaction
//! that changes what a rollup counts; [`fold`] moves committed deltas into `rollups`, each delta
//! deleted in the statement that adds it, so none is counted twice or lost. Readers add the
//! deltas not yet folded: what they show equals a count over the raw rows at any moment.

use chrono::{DateTime, Utc};

use super::{AuditError, Db};

/// What a rollup counts (the `metric` column).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Metric {
    /// Verdicts by the minute received, keyed by their status now.
    Verdicts,
    /// Finished verdicts by the minute received, keyed by the latency bucket's upper bound (ms).
    Latency,
    /// Vendor calls by the minute started, keyed by outcome.
    Calls,
    /// Users in vendor calls, keyed by outcome.
    CallUsers,
    /// Calls that were not `ok`, keyed by vendor code (or `http <status>`).
    CallCodes,
    /// Rejected messages, keyed by the broken rule.
    Rejected,
}

impl Metric {
    pub fn as_str(self) -> &'static str {
        match self {
            Metric::Verdicts => "verdicts",
            Metric::Latency => "latency",
            Metric::Calls => "calls",
            Metric::CallUsers => "call_users",
            Metric::CallCodes => "call_codes",
            Metric::Rejected => "rejected",
        }
    }
}

/// Deltas folded per statement: a second's worth at a busy deployment's rate, in one short
/// transaction.
pub const FOLD_BATCH: i64 = 10_000;

/// Folds up to [`FOLD_BATCH`] of the oldest committed deltas into `rollups`; returns how many.
/// Rows another folder holds are skipped, not waited for.
pub async fn fold(db: &Db) -> Result<i64, AuditError> {
    Ok(db
        .run(async |c| {
            db.query_scalar(
                "WITH d AS (
                     DELETE FROM rollup_deltas WHERE id IN (
                         SELECT id FROM rollup_deltas ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED)
                     RETURNING metric, minute, vendor, app_id, key, n),
                 folded AS (
                     INSERT INTO rollups AS r (metric, minute, vendor, app_id, key, n)
                     SELECT metric, minute, vendor, app_id, key, sum(n) FROM d GROUP BY 1, 2, 3, 4, 5
                     ON CONFLICT (metric, minute, vendor, app_id, key) DO UPDATE SET n = r.n + excluded.n
                     RETURNING 1)
                 SELECT count(*) FROM d",
            )
            .bind(FOLD_BATCH)
            .fetch_one(c)
            .await
        })
        .await?)
}

/// Deltas not yet folded, and how long the oldest has waited (seconds; 0 when none).
pub async fn lag(db: &Db) -> Result<(i64, f64), AuditError> {
    Ok(db
        .run(async |c| {
            db.query_as(
                "SELECT (SELECT count(*) FROM rollup_deltas),
                        coalesce((SELECT extract(epoch FROM now() - created_at)::float8
                                  FROM rollup_deltas ORDER BY id LIMIT 1), 0)",
            )
            .fetch_one(c)
            .await
        })
        .await?)
}

/// A sum over a window of minutes, by bucket, vendor and key.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Bucketed {
    pub at: DateTime<Utc>,
    pub vendor: String,
    pub key: String,
    pub count: i64,
}

/// `metric` over the last `minutes` whole minutes (the current one included), summed per
/// `bucket_mins` (aligned to the hour), vendor and key; folded and unfolded counts together.
pub async fn series(db: &Db, metric: Metric, minutes: i32, bucket_mins: i32) -> Result<Vec<Bucketed>, AuditError> {
    Ok(db
        .run(async |c| {
            db.query_as(
                "WITH since AS (SELECT date_trunc('minute', now()) - make_interval(mins => $2) AS t)
                 SELECT date_bin(make_interval(mins => $3), minute, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS at,
                        vendor, key, sum(n)::bigint AS count
                 FROM (SELECT minute, vendor, key, n FROM rollups, since WHERE metric = $1 AND minute > since.t
                       UNION ALL
                       SELECT minute, vendor, key, n FROM rollup_deltas, since WHERE metric = $1 AND minute > since.t) r
                 GROUP BY 1, 2, 3 HAVING sum(n) <> 0",
            )
            .bind(metric.as_str())
            .bind(minutes)
            .bind(bucket_mins)
            .fetch_all(c)
            .await
        })
        .await?)
}

/// A sum over a window of minutes, by vendor and key.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Total {
    pub vendor: String,
    pub key: String,
    pub count: i64,
}

/// `metric` over the last `minutes` whole minutes, summed by vendor and key.
pub async fn totals(db: &Db, metric: Metric, minutes: i32) -> Result<Vec<Total>, AuditError> {
    Ok(db
        .run(async |c| {
            db.query_as(
                "WITH since AS (SELECT date_trunc('minute', now()) - make_interval(mins => $2) AS t)
                 SELECT vendor, key, sum(n)::bigint AS count
                 FROM (SELECT vendor, key, n FROM rollups, since WHERE metric = $1 AND minute > since.t
                       UNION ALL
                       SELECT vendor, key, n FROM rollup_deltas, since WHERE metric = $1 AND minute > since.t) r
                 GROUP BY 1, 2 HAVING sum(n) <> 0",
            )
            .bind(metric.as_str())
            .bind(minutes)
            .fetch_all(c)
            .await
        })
        .await?)
}

/// Where the overview's windows start: `minutes` whole minutes back, the current minute included
/// (what [`series`] sums; a direct count over raw rows uses the same start).
pub fn window_start(now: DateTime<Utc>, minutes: i64) -> DateTime<Utc> {
    use chrono::{DurationRound, TimeDelta};
    let minute = now.duration_trunc(TimeDelta::minutes(1)).unwrap_or(now);
    minute - TimeDelta::minutes(minutes - 1)
}

/// Percentiles from a latency histogram: for each of `ps`, the upper bound (ms) of the bucket the
/// percentile falls in (`None` without finished verdicts; `f64::INFINITY` past the last bound).
pub fn percentiles(buckets: &[(f64, i64)], ps: &[f64]) -> Vec<Option<f64>> {
    let mut sorted: Vec<(f64, i64)> = buckets.iter().copied().filter(|(_, n)| *n > 0).collect();
    sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total: i64 = sorted.iter().map(|(_, n)| n).sum();
    ps.iter()
        .map(|p| {
            if total == 0 {
                return None;
            }
            // The smallest bound with at least p of the verdicts at or below it.
            let rank = (p * total as f64).ceil().max(1.0) as i64;
            let mut seen = 0;
            sorted
                .iter()
                .find(|(_, n)| {
                    seen += n;
                    seen >= rank
                })
                .map(|(b, _)| *b)
        })
        .collect()
}

/// A latency bucket's key as the migration writes it (`"250"`, `"+Inf"`).
pub fn bucket_bound(key: &str) -> Option<f64> {
    if key == "+Inf" { Some(f64::INFINITY) } else { key.parse().ok() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_name_the_bucket_each_falls_in() {
        // 90 verdicts at ≤ 100 ms, 9 at ≤ 500, 1 past the last bound.
        let h = [(100.0, 90), (500.0, 9), (f64::INFINITY, 1), (50.0, 0)];
        assert_eq!(
            percentiles(&h, &[0.5, 0.9, 0.95, 0.99, 1.0]),
            vec![Some(100.0), Some(100.0), Some(500.0), Some(500.0), Some(f64::INFINITY)]
        );
        assert_eq!(percentiles(&[], &[0.5]), vec![None]);
        assert_eq!(percentiles(&[(10.0, 0)], &[0.5]), vec![None]);
    }

    #[test]
    fn bucket_keys_read_back() {
        assert_eq!(bucket_bound("250"), Some(250.0));
        assert_eq!(bucket_bound("+Inf"), Some(f64::INFINITY));
        assert_eq!(bucket_bound("x"), None);
    }

    #[test]
    fn a_window_counts_the_current_minute_and_whole_ones_before_it() {
        let now: DateTime<Utc> = "2026-12-03T12:34:56Z".parse().unwrap();
        assert_eq!(window_start(now, 60), "2026-12-03T11:35:00Z".parse::<DateTime<Utc>>().unwrap());
        assert_eq!(window_start(now, 1), "2026-12-03T12:34:00Z".parse::<DateTime<Utc>>().unwrap());
    }
}
