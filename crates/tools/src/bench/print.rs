//! The report as tables for a person (`--json` prints it as one object instead).

use std::io::Write;

use bouncer::cli::output;

use super::report::{self, Report};

pub(super) fn report(r: &Report) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "bouncer bench --preset {}  ({} CPUs, {}; {} replica(s), prefetch {}, postgres {})",
        r.preset, r.machine.cpus, r.machine.os, r.replicas, r.prefetch, r.postgres_route
    )?;
    writeln!(
        out,
        "{} verdicts, {} kicks, {} apps in {:.1} s: {:.0} verdicts/s, {:.0} kicks/s",
        r.verdicts, r.users, r.apps, r.wall_seconds, r.verdicts_per_second, r.kicks_per_second
    )?;
    if let Some(i) = r.intake_verdicts_per_second {
        writeln!(out, "intake: {i:.0} verdicts/s recorded and acked")?;
    }
    writeln!(out, "\nper quota (utilisation against the documented limit):")?;
    quota_table(&mut out, &r.quotas)?;
    if let Some(drain) = &r.drain_after_release {
        writeln!(out, "\nonce the stuck vendor answered again:")?;
        quota_table(&mut out, drain)?;
    }
    if let Some(d) = r.queue_depth_5s_after_backlog {
        writeln!(out, "queue depth about 5 s after the stuck backlog was published: {d} (prefetch {})", r.prefetch)?;
    }
    for t in &r.takeovers {
        let gap = t.resumed_after_ms.map(|g| format!("{g} ms")).unwrap_or_else(|| "nothing left".into());
        writeln!(out, "{}: {} resumed after {gap}", t.event, t.quota_group)?;
    }
    if let Some(p) = r.pending_kicks {
        writeln!(out, "pending kicks in PostgreSQL: {p}")?;
    }
    print_rest(&mut out, r)
}

fn quota_table(out: &mut impl Write, quotas: &[report::QuotaReport]) -> std::io::Result<()> {
    let rows = quotas
        .iter()
        .map(|q| {
            vec![
                q.quota.clone(),
                q.calls.to_string(),
                format!("{:.2}", q.calls_per_second),
                q.limit_per_second.to_string(),
                format!("{:.1}%", q.utilisation_pct),
                q.max_calls_in_any_1s.to_string(),
                format!("{:.1}%", q.chunk_fill_pct),
                format!("{:.1}%", q.full_calls_pct),
            ]
        })
        .collect();
    output::table(
        out,
        &["quota", "calls", "calls/s", "limit", "utilisation", "max in any 1 s", "chunk fill", "full calls*"],
        rows,
    )?;
    writeln!(out, "* not counting each room's last call (its remainder)")
}

fn print_rest(out: &mut impl Write, r: &Report) -> std::io::Result<()> {
    for (name, l) in [("publish → vendor call", &r.publish_to_vendor_call), ("publish → ack", &r.publish_to_ack)] {
        writeln!(
            out,
            "{name:<22} p50 {:>7.1} ms  p95 {:>7.1} ms  p99 {:>7.1} ms  max {:>7.1} ms  (n={})",
            l.p50_ms, l.p95_ms, l.p99_ms, l.max_ms, l.count
        )?;
    }
    writeln!(
        out,
        "worker: {:.2} CPU s ({:.3} per 1000 verdicts), peak RSS {:.1} MiB",
        r.worker_cpu_seconds, r.worker_cpu_seconds_per_1000_verdicts, r.worker_peak_rss_mib
    )?;
    writeln!(
        out,
        "rejected {}, failed verdicts {}, injected vendor faults {}, retries {}",
        r.rejected, r.failed_verdicts, r.vendor_faults_injected, r.retries
    )?;
    if let Some(e) = &r.events {
        let l = &e.finished_to_received;
        writeln!(
            out,
            "outcome events: {} received ({} distinct) at {:.0} events/s (busiest second {}); \
             finished → received p50 {:.1} ms  p95 {:.1} ms  p99 {:.1} ms  max {:.1} ms",
            e.received, e.distinct, e.events_per_second, e.busiest_second, l.p50_ms, l.p95_ms, l.p99_ms, l.max_ms
        )?;
    }
    if let Some(e) = &r.reentry {
        let l = |x: &super::report::Latency| {
            format!("p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms (n={})", x.p50_ms, x.p99_ms, x.max_ms, x.count)
        };
        writeln!(out, "re-entries: {} joins, {} recorded, {} re-kicked", e.joins, e.reentries, e.rekicked)?;
        writeln!(out, "  callback → re-kick call, received by the quota owner: {}", l(&e.to_call_on_owner))?;
        writeln!(out, "  callback → re-kick call, received by another replica: {}", l(&e.to_call_from_other))?;
        writeln!(out, "  callback answered in: {}; {} not answered 200", l(&e.callback_answer), e.callback_errors)?;
    }
    if let Some(c) = &r.ban_checks {
        let l = &c.latency;
        writeln!(
            out,
            "ban checks: {} over {} replicas at {:.0}/s against {} active bans (written in {:.1} s): \
             p50 {:.2} ms  p95 {:.2} ms  p99 {:.2} ms  max {:.1} ms; {} errors; {} answered banned",
            c.checks,
            c.replicas,
            c.checks_per_second,
            c.active_bans,
            c.load_seconds,
            l.p50_ms,
            l.p95_ms,
            l.p99_ms,
            l.max_ms,
            c.errors,
            c.banned_answers
        )?;
        for (what, l) in [
            ("answered banned", &c.latency_banned),
            ("answered not banned", &c.latency_not_banned),
            ("warm-up (not counted)", &c.warmup),
            ("the client's own lateness (in the latency)", &c.client_lag),
        ] {
            writeln!(
                out,
                "  {what}: p50 {:.2} ms  p95 {:.2} ms  p99 {:.2} ms  max {:.1} ms (n={})",
                l.p50_ms, l.p95_ms, l.p99_ms, l.max_ms, l.count
            )?;
        }
    }
    if let (Some(b), Some(ratio)) = (r.baseline_msgs_per_second, r.ratio_to_baseline) {
        writeln!(
            out,
            "bare consume-and-ack baseline (each ack awaited): {b:.0} msgs/s; Bouncer with auditing: {:.0}% of it",
            ratio * 100.0
        )?;
    }
    if let (Some(b), Some(ratio)) = (r.batched_baseline_msgs_per_second, r.ratio_to_batched_baseline) {
        writeln!(
            out,
            "broker ceiling (arrived deliveries acked together): {b:.0} msgs/s; Bouncer with auditing: {:.0}% of it",
            ratio * 100.0
        )?;
    }
    Ok(())
}
