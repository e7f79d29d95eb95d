//! What a preset publishes and does: its apps (segments), how they arrive, and the verdict bodies.

use std::time::Duration;

use serde_json::json;

use bouncer::verdict::Vendor;

use super::checks::CheckLoad;
use super::reentry::ReentryLoad;
use super::report;
use super::{BenchArgs, Preset};

/// One app's share of a workload.
#[derive(Clone, Debug)]
pub(super) struct Segment {
    pub(super) vendor: Vendor,
    pub(super) verdicts: usize,
    /// Users per verdict cycle through 1..=max (exactly max when `fixed`).
    pub(super) max_users: usize,
    pub(super) rooms: usize,
    pub(super) fixed: bool,
    /// Its verdicts ban their users for an hour, and its (ZEGO) app has ban rules on.
    pub(super) banned: bool,
}

/// What a preset publishes and does.
pub(super) struct Workload {
    pub(super) segments: Vec<Segment>,
    /// Backlogs arrive app by app (a pipeline catching up on one app, then the next); a stream
    /// interleaves apps.
    pub(super) interleaved: bool,
    /// `None`: publish everything, then start the workers. `Some(r)`: a Poisson stream of r/s.
    pub(super) stream_rate: Option<f64>,
    pub(super) sim_rate_multiplier: u32,
    pub(super) http_502_rate: f64,
    pub(super) replicas: usize,
    /// Replicas preset: SIGKILL one replica, later SIGTERM another.
    pub(super) disrupt: bool,
    /// Stuck preset: the first app hangs with this backlog while the second streams at 20/s.
    pub(super) stuck: bool,
    /// Memory preset: stop this long after everything is recorded (the backlog still pending).
    pub(super) stop_after_recorded: Option<Duration>,
    /// Bans preset: ban checks against the workers' public API during the run.
    pub(super) checks: Option<CheckLoad>,
    /// Reentry preset: banned users of the first (ZEGO) app rejoining during the run.
    pub(super) reentries: Option<ReentryLoad>,
    /// Retention preset: run in this existing database (beside its trail) and keep it; verdict ids
    /// then carry the run's id, so rounds in one database stay apart.
    pub(super) database: Option<String>,
}

impl Workload {
    /// Whether the workers serve the public API.
    pub(super) fn api(&self) -> bool {
        self.checks.is_some() || self.reentries.is_some()
    }
}

fn seg(vendor: Vendor, verdicts: usize, max_users: usize, rooms: usize) -> Segment {
    Segment { vendor, verdicts, max_users, rooms, fixed: false, banned: false }
}

impl Segment {
    pub(super) fn users_of(&self, j: usize) -> usize {
        if self.fixed { self.max_users } else { users_of(j, self.max_users) }
    }
}

pub(super) fn workload(args: &BenchArgs) -> Workload {
    use Vendor::{Trtc, Zego};
    let base = Workload {
        segments: Vec::new(),
        interleaved: false,
        stream_rate: None,
        sim_rate_multiplier: 1,
        http_502_rate: 0.0,
        replicas: 1,
        disrupt: false,
        stuck: false,
        stop_after_recorded: None,
        checks: None,
        reentries: None,
        database: None,
    };
    let mut w = match args.preset {
        Preset::Backlog => Workload {
            segments: vec![seg(Zego, 2_500, 1, 25), seg(Zego, 2_500, 1, 25), seg(Trtc, 2_000, 1, 10)],
            ..base
        },
        Preset::Steady => Workload {
            segments: vec![seg(Zego, 300, 1, 10), seg(Zego, 300, 1, 10), seg(Trtc, 300, 1, 10)],
            interleaved: true,
            stream_rate: Some(30.0),
            ..base
        },
        Preset::ManyApps => {
            Workload { segments: (0..200).map(|_| seg(Zego, 50, 1, 5)).collect(), sim_rate_multiplier: 20, ..base }
        }
        Preset::Flaky => Workload {
            segments: vec![seg(Zego, 500, 4, 20), seg(Zego, 500, 4, 20), seg(Trtc, 500, 4, 20), seg(Trtc, 500, 4, 20)],
            http_502_rate: 0.3,
            ..base
        },
        Preset::Replicas => Workload {
            segments: vec![
                seg(Zego, 1_500, 5, 25),
                seg(Zego, 1_500, 5, 25),
                seg(Zego, 1_500, 5, 25),
                seg(Zego, 1_500, 5, 25),
                seg(Trtc, 600, 10, 20),
                seg(Trtc, 600, 10, 20),
            ],
            replicas: 3,
            disrupt: true,
            ..base
        },
        Preset::Stuck => Workload {
            // The healthy app is a second ZEGO app: 20 verdicts/s is well below its 50 calls/s.
            segments: vec![seg(Zego, 5_000, 1, 20), seg(Zego, 600, 1, 10)],
            stream_rate: Some(20.0),
            stuck: true,
            ..base
        },
        Preset::Memory => Workload {
            // 100,000 kicks queued, drained at the vendors' limits (900 kicks/s): the worker holds
            // a few seconds of it, PostgreSQL the rest.
            segments: [Zego, Zego, Trtc, Trtc]
                .into_iter()
                .map(|v| Segment { fixed: true, ..seg(v, 5_000, 5, 50) })
                .collect(),
            stop_after_recorded: Some(Duration::from_secs(20)),
            ..base
        },
        // A burst of 2,000 banned users in 40 rooms of a ZEGO app with ban rules, beside the
        // backlog preset's other apps, enforced by two replicas while token servers ask.
        Preset::Bans => Workload {
            segments: vec![
                Segment { banned: true, ..seg(Zego, 2_000, 1, 40) },
                seg(Zego, 2_500, 1, 25),
                seg(Trtc, 2_000, 1, 10),
            ],
            replicas: 2,
            checks: Some(CheckLoad { bans: 1_000_000, per_second: 2_000.0, seconds: 30, warmup_seconds: 2 }),
            ..base
        },
        // A burst of one app at its full quota (40 s of it) while its banned users come back.
        Preset::Reentry => Workload {
            segments: vec![seg(Zego, 10_000, 1, 25)],
            replicas: 2,
            reentries: Some(ReentryLoad { users: 200, seconds: 30 }),
            ..base
        },
        // Publishes nothing: the console preset writes its trail into PostgreSQL (bench/console.rs).
        Preset::Console => Workload { segments: Vec::new(), ..base },
        // Rounds of the many-apps intake (bench/retention.rs runs them beside pruning).
        Preset::Retention => {
            Workload { segments: (0..200).map(|_| seg(Zego, 50, 1, 5)).collect(), sim_rate_multiplier: 20, ..base }
        }
    };
    // The retention preset's `--verdicts` is its trail's day, not its rounds'.
    if args.preset == Preset::Retention {
        return w;
    }
    if let Some(a) = args.apps {
        let a = a.max(1);
        let has_trtc = w.segments.iter().any(|s| s.vendor == Trtc);
        let template = |v: Vendor| w.segments.iter().find(|s| s.vendor == v).cloned().unwrap_or(seg(v, 100, 1, 10));
        let trtc = if has_trtc && a > 1 { a / 2 } else { 0 };
        let (z, t) = (template(Zego), template(Trtc));
        w.segments = (0..a - trtc).map(|_| z.clone()).chain((0..trtc).map(|_| t.clone())).collect();
    }
    if let Some(v) = args.verdicts {
        let n = w.segments.len();
        for (i, s) in w.segments.iter_mut().enumerate() {
            s.verdicts = v / n + usize::from(i < v % n);
        }
    }
    if let Some(r) = args.rate {
        match &mut w.checks {
            // The bans preset's rate is the checks'.
            Some(c) => c.per_second = r.max(1.0),
            None => w.stream_rate = Some(r.max(0.1)),
        }
    }
    if let Some(r) = args.replicas {
        w.replicas = r.max(1);
    }
    w
}

fn users_of(j: usize, max_users: usize) -> usize {
    1 + j % max_users.max(1)
}

/// The verdict bodies in publishing order, each with its app index; verdict `i` is
/// `<prefix><i>`.
pub(super) fn bodies(w: &Workload, app_ids: &[u32], prefix: &str) -> Vec<(usize, Vec<u8>)> {
    // (segment, index within it), in the order they are published.
    let mut order: Vec<(usize, usize)> = Vec::new();
    if w.interleaved {
        let most = w.segments.iter().map(|s| s.verdicts).max().unwrap_or(0);
        for j in 0..most {
            for (k, s) in w.segments.iter().enumerate() {
                if j < s.verdicts {
                    order.push((k, j));
                }
            }
        }
    } else {
        for (k, s) in w.segments.iter().enumerate() {
            order.extend((0..s.verdicts).map(|j| (k, j)));
        }
    }
    order
        .into_iter()
        .enumerate()
        .map(|(i, (k, j))| {
            let s = &w.segments[k];
            let users: Vec<String> = (0..s.users_of(j)).map(|n| report::bench_user(i, n)).collect();
            let mut body = json!({"verdict_id": format!("{prefix}{i}"), "vendor": s.vendor.as_str(), "app_id": app_ids[k],
                   "room_id": format!("room-{}", j % s.rooms), "user_ids": users, "reason": "benchmark"});
            if s.banned {
                body["ban"] = json!({"seconds": 3600, "scope": "room"});
            }
            let body = body.to_string().into_bytes();
            (k, body)
        })
        .collect()
}
