//! The simulator a stack's apps are served by, on a runtime of its own, and its control API.

use bouncer::config::{Config, FileConfig};
use bouncer::vendor_api::{trtc, zego};
use bouncer_sim::{self as sim, RunningSim, SimSettings};

use super::Apps;

/// A simulator serving the apps of `file` at `zego_rate` / `trtc_rate` calls per second per
/// quota, on `runtime`: the simulator timestamps call arrivals, so a caller that publishes or
/// polls hard gives it threads of its own.
pub fn start_sim_for(
    file: &FileConfig,
    zego_rate: u32,
    trtc_rate: u32,
    runtime: &tokio::runtime::Handle,
) -> Result<RunningSim, String> {
    let config = Config::from_toml(&file.to_toml()).map_err(|e| e.to_string())?;
    let settings = SimSettings { zego: config.zego, trtc: config.trtc, zego_rate, trtc_rate, callback_url: None };
    sim::start_on(settings, ([127, 0, 0, 1], 0).into(), runtime).map_err(|e| format!("cannot start the simulator: {e}"))
}

/// A multi-threaded runtime of two threads for a simulator (see [`start_sim_for`]).
pub fn sim_runtime(name: &str) -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).thread_name(name).enable_all().build()
}

/// The runtime every test simulator of this process serves on.
fn test_sim_runtime() -> &'static tokio::runtime::Runtime {
    static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RT.get_or_init(|| sim_runtime("test-sim").expect("simulator runtime"))
}

/// A simulator serving `apps` at the documented limits.
pub async fn start_sim(apps: &Apps) -> RunningSim {
    let file = apps.file_config("http://127.0.0.1:1");
    start_sim_for(&file, zego::MAX_CALLS_PER_SECOND, trtc::MAX_CALLS_PER_SECOND, test_sim_runtime().handle())
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

    pub async fn requests(&self) -> Vec<bouncer_sim::Record> {
        self.http
            .get(format!("{}/_sim/requests", self.base))
            .send()
            .await
            .expect("requests")
            .json()
            .await
            .expect("json")
    }

    /// The ZEGO ban rules the simulator keeps (in force and recently expired).
    pub async fn rules(&self) -> Vec<bouncer_sim::SimRule> {
        self.http.get(format!("{}/_sim/rules", self.base)).send().await.expect("rules").json().await.expect("json")
    }

    /// Sends room callbacks to `base` (a worker's API: `http://host:port`) from now on.
    pub async fn set_callback_url(&self, base: &str) {
        let r = self
            .http
            .put(format!("{}/_sim/callback_url", self.base))
            .json(&serde_json::json!({"url": base}))
            .send()
            .await
            .expect("put callback_url");
        assert!(r.status().is_success());
    }

    /// `POST /_sim/rooms/join` with `request` (vendor, app_id, room_id, user_id, …): the status
    /// (200 joined, 403 refused) and the body.
    pub async fn join_with(&self, request: serde_json::Value) -> (u16, serde_json::Value) {
        let r = self.http.post(format!("{}/_sim/rooms/join", self.base)).json(&request).send().await.expect("join");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(serde_json::Value::Null))
    }

    /// `user` joins `room` (a string, or a number for a numeric TRTC room); whether it got in.
    pub async fn join(&self, vendor: &str, app: u32, room: serde_json::Value, user: &str) -> bool {
        let (status, body) = self
            .join_with(serde_json::json!({"vendor": vendor, "app_id": app, "room_id": room, "user_id": user}))
            .await;
        assert!(status == 200 || status == 403, "join answered {status}: {body}");
        status == 200
    }

    /// Whether `user` is in `room` now.
    pub async fn in_room(&self, vendor: &str, app: u32, room: &serde_json::Value, user: &str) -> bool {
        let rooms: Vec<serde_json::Value> =
            self.http.get(format!("{}/_sim/rooms", self.base)).send().await.expect("rooms").json().await.expect("json");
        let (text, numeric) = match room {
            serde_json::Value::String(s) => (s.clone(), false),
            other => (other.to_string(), true),
        };
        rooms.iter().any(|r| {
            r["room"]["vendor"] == vendor
                && r["room"]["app_id"] == app
                && r["room"]["room_id"] == text.as_str()
                && r["room"]["numeric"] == numeric
                && r["members"].as_array().is_some_and(|m| m.iter().any(|m| m["user_id"] == user))
        })
    }

    /// Every room callback delivery attempt the simulator made.
    pub async fn deliveries(&self) -> Vec<bouncer_sim::Delivery> {
        self.http
            .get(format!("{}/_sim/callbacks", self.base))
            .send()
            .await
            .expect("callbacks")
            .json()
            .await
            .expect("json")
    }

    pub async fn metrics(&self) -> String {
        self.http.get(format!("{}/_sim/metrics", self.base)).send().await.expect("metrics").text().await.expect("text")
    }
}
