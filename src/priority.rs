//! Background work yields the CPU to the API's answers. A token server waits on a user's click
//! for its check; intake and enforcement are throughput work measured over seconds. On a host
//! whose cores are busy (a backlog being taken in and enforced), every thread of the same
//! priority queues for a core alike, and a check took tens of milliseconds that it spent
//! waiting, not working (BENCHMARKS.md, *bans*). So while `[api].listen` is set, `bouncer run`
//! gives every thread of the process but the API's the nice value `[api].background_nice`
//! (default 5): under contention they get a smaller share, with no CPU left idle. Threads
//! started later inherit it from the thread that starts them (Linux's nice is per thread), so
//! it is set once, when the worker is wired up.
//!
//! Why 5 and not more: intake and the lanes feed the vendor calls, and a backlog that arrives
//! while the cores are busy must still reach its quota. At nice 10 a ZEGO quota of the bans
//! bench fell under 97 % in 9 of 17 runs (its lane ran dry while intake waited for a core); at
//! nice 5 in 2 of 8, and the checks' p99 was no worse (BENCHMARKS.md, *bans*).
//!
//! The vendor-call thread keeps its priority: it does little work, but each call leaves at its
//! moment in the quota's pacing, and a call sent late is throughput lost for good. It is started
//! before the worker is wired up, so it is there to be skipped.
//!
//! A thread's nice can be raised without privileges, never lowered back: so the API's threads
//! are never touched. Elsewhere than Linux this does nothing.

/// The name the API's runtime gives its threads.
pub(crate) const API_THREAD: &str = "bouncer-api";
/// The name of the thread vendor calls are sent from.
pub(crate) const CALLS_THREAD: &str = "bouncer-calls";

/// Gives every thread of this process but the API's and the vendor calls' the nice value `nice`;
/// returns how many it changed. Threads it cannot change are skipped (logged at debug).
pub(crate) fn lower_background(nice: i32) -> usize {
    if nice <= 0 {
        return 0;
    }
    let changed = lower(nice);
    tracing::info!(
        nice,
        threads = changed,
        "threads other than the API's and the vendor calls' run at a lower priority (api.background_nice)"
    );
    changed
}

#[cfg(target_os = "linux")]
fn lower(nice: i32) -> usize {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return 0 };
    let mut changed = 0;
    for task in tasks.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if [API_THREAD, CALLS_THREAD].contains(&comm.trim_end()) {
            continue;
        }
        let Some(tid) = task.file_name().to_str().and_then(|t| t.parse::<i32>().ok()) else { continue };
        let Some(pid) = rustix::process::Pid::from_raw(tid) else { continue };
        match rustix::process::setpriority_process(Some(pid), nice) {
            Ok(()) => changed += 1,
            Err(e) => tracing::debug!(tid, error = %e, "cannot lower a thread's priority"),
        }
    }
    changed
}

#[cfg(not(target_os = "linux"))]
fn lower(_nice: i32) -> usize {
    0
}
