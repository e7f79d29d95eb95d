//! Background work yields the CPU to the API's answers. A token server waits on a user's click
//! for its check; intake and enforcement are throughput work measured over seconds. On a host
//! whose cores are busy (a backlog being taken in and enforced), every thread of the same
//! priority queues for a core alike, and a check took tens of milliseconds that it spent
//! waiting, not working (BENCHMARKS.md, *bans*). So while `[api].listen` is set, `bouncer run`
//! gives every thread of the process but the API's the nice value `[api].background_nice`
//! (default 10): under contention they get a smaller share, with no CPU left idle. Threads
//! started later inherit it from the thread that starts them (Linux's nice is per thread), so
//! it is set once, after the API's runtime has started and before the worker starts its own.
//!
//! A thread's nice can be raised without privileges, never lowered back: so the API's threads
//! are never touched. Elsewhere than Linux this does nothing.

/// The name the API's runtime gives its threads.
pub(crate) const API_THREAD: &str = "bouncer-api";

/// Gives every thread of this process but the API's the nice value `nice`; returns how many it
/// changed. Threads it cannot change are skipped (logged once).
pub fn lower_all_but_api(nice: i32) -> usize {
    if nice <= 0 {
        return 0;
    }
    let changed = lower(nice);
    tracing::info!(
        nice,
        threads = changed,
        "threads other than the API's run at a lower priority (api.background_nice)"
    );
    changed
}

#[cfg(target_os = "linux")]
fn lower(nice: i32) -> usize {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return 0 };
    let mut changed = 0;
    for task in tasks.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim_end() == API_THREAD {
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
