//! A run's stack: its names, one app per workload segment, the simulator on threads of its own,
//! the config file the workers read, and the teardown of all of it.

use std::path::PathBuf;

use secrecy::ExposeSecret;

use bouncer::config::{Config, FileTrtc, FileZego};
use bouncer::verdict::Vendor;
use bouncer_sim::RunningSim;
use bouncer_sim::faults::Faults;

use crate::testkit::{Names, delete_queues, drop_database, point_vendors_at, sim_runtime, stack_config, start_sim_for};

use super::BenchArgs;
use super::workload::Workload;

pub(super) struct BenchStack {
    /// The public API's token, when the preset asks the API.
    pub(super) api_token: Option<String>,
    /// The run's random id, in its names and the workers' replica names.
    pub(super) id: String,
    /// The run's configuration with direct connections, for the bench's own use; the workers'
    /// file (`config_path`) may go through a pooler instead.
    pub(super) config: Config,
    /// How the workers reach PostgreSQL: `direct`, `pooler` or `pooler+direct_url`.
    pub(super) postgres_route: &'static str,
    pub(super) config_path: PathBuf,
    /// The AppId of each workload segment, by segment index.
    pub(super) app_ids: Vec<u32>,
    /// Declared before the runtime it serves on: fields drop in order.
    pub(super) running: RunningSim,
    sim_rt: OwnRuntime,
    admin_url: String,
    database: String,
    /// A database the run was given (the retention preset's): kept at teardown.
    keep_database: bool,
}

impl BenchStack {
    /// Everything but the names, the apps and `--prefetch` is the configuration default.
    pub(super) fn start(args: &BenchArgs, w: &Workload) -> Result<BenchStack, String> {
        let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
        let mut names = Names::of(&["bench", &id]);
        if let Some(d) = &w.database {
            names.database = d.clone();
        }
        let mut file = stack_config(&names, &args.amqp, &args.postgres);
        if let Some(p) = args.prefetch {
            file.amqp.prefetch = p;
        }
        let mut app_ids = Vec::new();
        let endpoint = "http://127.0.0.1:1"; // the simulator's, once it listens
        for (k, s) in w.segments.iter().enumerate() {
            let app_id = match s.vendor {
                Vendor::Zego => {
                    let z = 2_000_000 + k as u32;
                    let app = FileZego::new(z, &format!("bench-{z}-{id}"), endpoint);
                    // The reentry preset's app receives room callbacks (the simulator signs them).
                    let callback_secret = w.reentries.as_ref().map(|_| format!("cb{z}{id}").into());
                    file.zego.push(FileZego { forbid_rules: s.banned, callback_secret, ..app });
                    z
                }
                Vendor::Trtc => {
                    let t = 1_400_100_000 + k as u32;
                    let (secret_id, key) = (format!("AKIDbench{t}"), format!("bench-{t}-{id}"));
                    file.trtc.push(FileTrtc::new(t, &secret_id, &key, "ap-guangzhou", endpoint));
                    t
                }
            };
            app_ids.push(app_id);
        }
        // The simulator timestamps arrivals: it gets threads of its own, apart from publishing and
        // polling.
        let sim_rt = OwnRuntime(Some(sim_runtime("bench-sim").map_err(|e| format!("simulator runtime: {e}"))?));
        let (zego_rate, trtc_rate) = (50 * w.sim_rate_multiplier, 20 * w.sim_rate_multiplier);
        let running = start_sim_for(&file, zego_rate, trtc_rate, sim_rt.handle())?;
        running.sim.set_handling(std::time::Duration::from_micros(args.vendor_handling_us));
        if w.http_502_rate > 0.0 || args.arrival_jitter_ms > 0 {
            running.sim.set_faults(Faults {
                http_502_rate: w.http_502_rate,
                arrival_jitter_ms: args.arrival_jitter_ms,
                ..Faults::default()
            });
        }
        if w.stuck {
            running.sim.set_faults(Faults {
                vendor: Some("zego".into()),
                app_id: app_ids.first().copied(),
                hang: true,
                ..Faults::default()
            });
        }
        point_vendors_at(&mut file, &running.endpoint());
        // Token servers' token, for the bans preset (each worker listens where it is told).
        let api_token = w.api().then(|| uuid::Uuid::new_v4().simple().to_string());
        if let Some(t) = &api_token {
            file.api.tokens = vec![bouncer::config::FileApiToken {
                name: "bench".into(),
                token: Some(t.as_str().into()),
                token_env: None,
                token_file: None,
            }];
        }
        let config = Config::from_toml(&file.to_toml()).map_err(|e| e.to_string())?;
        let postgres_route = match &args.through_pooler {
            None => "direct",
            Some(pooler) => {
                let direct = file.postgres.url.clone();
                file.postgres.url = format!("{}/{}", pooler.trim_end_matches('/'), names.database).into();
                file.postgres.pooler = "transaction".into();
                file.postgres.direct_url = args.direct_url.then_some(direct);
                if args.direct_url { "pooler+direct_url" } else { "pooler" }
            }
        };
        let config_path = std::env::temp_dir().join(format!("bouncer-bench-{id}.toml"));
        std::fs::write(&config_path, file.to_toml()).map_err(|e| e.to_string())?;
        Ok(BenchStack {
            api_token,
            id,
            config,
            postgres_route,
            config_path,
            app_ids,
            running,
            sim_rt,
            admin_url: format!("{}/postgres", args.postgres.trim_end_matches('/')),
            database: names.database,
            keep_database: w.database.is_some(),
        })
    }

    /// Brings the schema up to date directly when the workers cannot: behind a transaction pooler
    /// without a direct URL, as an operator would before starting them.
    pub(super) async fn prepare_database(&self) -> Result<(), String> {
        if self.postgres_route == "pooler" {
            bouncer::audit::migrate(&self.config.postgres, std::time::Duration::from_secs(10))
                .await
                .map_err(|e| format!("migrate directly: {e}"))?;
        }
        Ok(())
    }

    /// Stops the simulator, then removes the run's config file, queues and database.
    pub(super) async fn teardown(self) {
        let BenchStack { config, config_path, running, sim_rt, admin_url, database, keep_database, .. } = self;
        drop(running);
        drop(sim_rt);
        let _ = std::fs::remove_file(&config_path);
        delete_queues(config.amqp.url.expose_secret(), &config.amqp.queue).await;
        if !keep_database {
            drop_database(&admin_url, &database).await;
        }
    }
}

/// A runtime owned by async code: dropped without blocking, whatever path ends the run.
struct OwnRuntime(Option<tokio::runtime::Runtime>);

impl OwnRuntime {
    fn handle(&self) -> &tokio::runtime::Handle {
        self.0.as_ref().expect("present until dropped").handle()
    }
}

impl Drop for OwnRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}
