//! Shared test plumbing: a fresh database per test, the real binary, a simulator with random apps.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Output;

use bouncer::config::Config;
use bouncer::sim::{self, RunningSim, SimSettings};
use bouncer::vendor::{trtc, zego};
use sqlx::Connection;

/// The server the per-test databases are created on.
pub fn pg_admin_url() -> String {
    std::env::var("BOUNCER_TEST_PG").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

pub fn amqp_url() -> String {
    std::env::var("BOUNCER_TEST_AMQP").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// A database that exists for one test and is dropped with it.
pub struct TestDb {
    pub name: String,
    pub url: String,
}

impl TestDb {
    /// A name only; the database is created by whoever migrates it (as `bouncer migrate` does).
    pub fn named() -> TestDb {
        let name = format!("bouncer_test_{}", uuid::Uuid::new_v4().simple());
        let admin = pg_admin_url();
        let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(&admin);
        TestDb { url: format!("{base}/{name}"), name }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs outside any async context; a small runtime of its own does the work.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(async {
                if let Ok(mut conn) = sqlx::PgConnection::connect(&pg_admin_url()).await {
                    let sql = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
                    let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut conn).await;
                }
            })
        })
        .join();
    }
}

/// A file in the temp dir, removed on drop.
pub struct TempFile(pub PathBuf);

impl TempFile {
    pub fn with(contents: &str) -> TempFile {
        let path = std::env::temp_dir().join(format!("bouncer-test-{}.toml", uuid::Uuid::new_v4().simple()));
        std::fs::write(&path, contents).expect("write temp file");
        TempFile(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Runs the real `bouncer` binary with a clean `BOUNCER_*` environment.
pub fn bouncer(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_bouncer"));
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("BOUNCER_")) {
        cmd.env_remove(k);
    }
    cmd.args(args).envs(env.iter().copied()).output().expect("run bouncer")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Random app ids and secrets, so parallel tests never share a vendor quota.
pub struct Apps {
    pub zego: Vec<(u32, String)>,
    /// (sdk_app_id, secret_id, secret_key)
    pub trtc: Vec<(u32, String, String)>,
}

impl Apps {
    pub fn random(zego: usize, trtc: usize) -> Apps {
        let id = || rand::random_range(1_000_000..u32::MAX);
        let secret = || uuid::Uuid::new_v4().simple().to_string();
        Apps {
            zego: (0..zego).map(|_| (id(), secret())).collect(),
            trtc: (0..trtc).map(|_| (id(), format!("AKID{}", secret()), secret())).collect(),
        }
    }

    /// `[[zego]]` and `[[trtc]]` sections pointing at `endpoint`.
    pub fn toml(&self, endpoint: &str) -> String {
        let mut s = String::new();
        for (app, secret) in &self.zego {
            s += &format!(
                "[[zego]]\napp_id = {app}\nserver_secret = \"{secret}\"\nendpoint = \"{endpoint}\"\ntimeout_ms = 2000\n\n"
            );
        }
        for (app, id, key) in &self.trtc {
            s += &format!(
                "[[trtc]]\nsdk_app_id = {app}\nsecret_id = \"{id}\"\nsecret_key = \"{key}\"\nregion = \"ap-guangzhou\"\nendpoint = \"{endpoint}\"\ntimeout_ms = 2000\n\n"
            );
        }
        s
    }

    pub fn config(&self, endpoint: &str) -> Config {
        Config::from_toml_with_env(&self.toml(endpoint), &HashMap::new()).expect("test config is valid")
    }
}

/// A simulator serving `apps` at the documented limits.
pub async fn start_sim(apps: &Apps) -> RunningSim {
    let cfg = apps.config("http://127.0.0.1:1");
    sim::start(
        SimSettings {
            zego: cfg.zego,
            trtc: cfg.trtc,
            zego_rate: zego::MAX_CALLS_PER_SECOND,
            trtc_rate: trtc::MAX_CALLS_PER_SECOND,
        },
        "127.0.0.1:0".parse().expect("address"),
    )
    .await
    .expect("start simulator")
}

/// Talks to a simulator's control API over HTTP, as a user would.
pub struct SimControl {
    base: String,
    http: reqwest::Client,
}

impl SimControl {
    pub fn new(sim: &RunningSim) -> SimControl {
        SimControl { base: sim.endpoint(), http: reqwest::Client::new() }
    }

    pub async fn set_faults(&self, faults: serde_json::Value) {
        let r = self.http.put(format!("{}/_sim/faults", self.base)).json(&faults).send().await.expect("put faults");
        assert!(r.status().is_success(), "faults refused: {}", r.text().await.unwrap_or_default());
    }

    pub async fn clear_faults(&self) {
        self.http.delete(format!("{}/_sim/faults", self.base)).send().await.expect("delete faults");
    }

    pub async fn stats(&self) -> serde_json::Value {
        self.http.get(format!("{}/_sim/stats", self.base)).send().await.expect("stats").json().await.expect("json")
    }

    pub async fn requests(&self) -> Vec<bouncer::sim::Record> {
        self.http
            .get(format!("{}/_sim/requests", self.base))
            .send()
            .await
            .expect("requests")
            .json()
            .await
            .expect("json")
    }

    pub async fn metrics(&self) -> String {
        self.http.get(format!("{}/_sim/metrics", self.base)).send().await.expect("metrics").text().await.expect("text")
    }
}
