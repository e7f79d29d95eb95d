//! The overview's charts, drawn on the server as SVG (no script, nothing to load): stacked bars,
//! one column per time bucket, one segment per series ("zego done", "trtc retry"...), scaled to
//! the busiest column.

use chrono::{DateTime, Duration, Utc};

use crate::audit::console::Sample;

/// SVG units: the chart is `WIDTH` × `HEIGHT`, columns share the width.
const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 120.0;

pub(crate) struct Segment {
    pub y: f64,
    pub h: f64,
    /// CSS classes: the vendor and the outcome (`zego done`).
    pub class: String,
}

pub(crate) struct Column {
    pub x: f64,
    pub width: f64,
    pub segments: Vec<Segment>,
    /// The tooltip: when, and each series' count per minute.
    pub title: String,
}

pub(crate) struct Chart {
    pub heading: String,
    pub columns: Vec<Column>,
    /// The series present, in drawing order.
    pub legend: Vec<String>,
    /// The busiest column's total, per minute (the top of the scale).
    pub peak: String,
}

/// `samples` (counts per bucket start and series) over the `buckets` buckets of `bucket` that end
/// at `now`'s bucket, as per-minute rates. Series are drawn in `order`; unknown ones after.
pub(crate) fn stacked(
    heading: &str,
    samples: &[Sample],
    now: DateTime<Utc>,
    buckets: usize,
    bucket: Duration,
    order: &[&str],
) -> Chart {
    let mut series: Vec<String> = order.iter().map(|s| s.to_string()).collect();
    let name = |s: &Sample| format!("{} {}", s.vendor, s.outcome);
    for s in samples {
        if !series.contains(&name(s)) {
            series.push(name(s));
        }
    }
    let mut counts = vec![vec![0i64; series.len()]; buckets];
    let bucket_secs = bucket.num_seconds().max(1);
    let newest = now.timestamp().div_euclid(bucket_secs);
    for s in samples {
        let ago = newest - s.at.timestamp().div_euclid(bucket_secs);
        if (0..buckets as i64).contains(&ago) {
            let Some(k) = series.iter().position(|n| *n == name(s)) else { continue };
            counts[buckets - 1 - ago as usize][k] += s.count;
        }
    }
    let minutes = bucket_secs as f64 / 60.0;
    let peak = counts.iter().map(|c| c.iter().sum::<i64>()).max().unwrap_or(0);
    let scale = HEIGHT * 0.95 / (peak.max(1) as f64);
    let width = WIDTH / buckets as f64;
    let columns = counts
        .iter()
        .enumerate()
        .map(|(i, column)| {
            let mut top = HEIGHT;
            let mut segments = Vec::new();
            let mut parts = Vec::new();
            for (k, &n) in column.iter().enumerate().filter(|(_, n)| **n > 0) {
                let h = n as f64 * scale;
                top -= h;
                segments.push(Segment { y: top, h, class: series[k].clone() });
                parts.push(format!("{} {}", series[k], rate(n as f64 / minutes)));
            }
            let at = DateTime::from_timestamp((newest - (buckets - 1 - i) as i64) * bucket_secs, 0).unwrap_or(now);
            let what = if parts.is_empty() { "nothing".to_owned() } else { parts.join(", ") };
            Column {
                x: i as f64 * width,
                width: (width - 1.0).max(1.0),
                segments,
                title: format!("{} UTC: {what} per minute", at.format("%H:%M")),
            }
        })
        .collect();
    let used: Vec<String> =
        series.iter().enumerate().filter(|(k, _)| counts.iter().any(|c| c[*k] > 0)).map(|(_, s)| s.clone()).collect();
    Chart { heading: heading.to_owned(), columns, legend: used, peak: rate(peak as f64 / minutes) }
}

fn rate(per_minute: f64) -> String {
    if per_minute >= 10.0 || per_minute.fract() == 0.0 {
        format!("{per_minute:.0}")
    } else {
        format!("{per_minute:.1}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at: DateTime<Utc>, series: &str, count: i64) -> Sample {
        let (vendor, outcome) = series.split_once(' ').unwrap();
        Sample { at, vendor: vendor.into(), outcome: outcome.into(), count }
    }

    #[test]
    fn the_newest_bucket_is_drawn_last_and_stacks_its_series_in_order() {
        let now = DateTime::from_timestamp(1_800_000_030, 0).unwrap();
        let samples = [
            sample(now, "trtc done", 2),
            sample(now, "zego done", 6),
            sample(now - Duration::minutes(59), "zego failed", 1),
        ];
        let c = stacked("x", &samples, now, 60, Duration::minutes(1), &["zego done", "zego failed", "trtc done"]);
        assert_eq!(c.columns.len(), 60);
        let last = &c.columns[59];
        assert_eq!(last.segments.iter().map(|s| s.class.as_str()).collect::<Vec<_>>(), ["zego done", "trtc done"]);
        assert!(last.segments[0].y > last.segments[1].y, "later series sit on top");
        assert_eq!(c.columns[0].segments[0].class, "zego failed");
        assert_eq!(c.peak, "8");
        assert_eq!(c.legend, ["zego done", "zego failed", "trtc done"]);
    }

    #[test]
    fn wide_buckets_show_per_minute_rates_and_drop_what_is_outside_the_window() {
        let now = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let samples = [sample(now, "zego ok", 30), sample(now - Duration::hours(25), "zego ok", 1000)];
        let c = stacked("x", &samples, now, 96, Duration::minutes(15), &[]);
        assert_eq!(c.peak, "2");
        assert!(c.columns[95].title.contains("zego ok 2 per minute"), "{}", c.columns[95].title);
        assert!(c.columns[..95].iter().all(|col| col.segments.is_empty()));
    }
}
