#![allow(dead_code)] // shared by the api and faults test binaries; each uses a part

//! Shared test plumbing: a fresh database per test, the real binary, a simulator with random apps.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Output;

use bouncer::config::Config;
use bouncer::sim::{self, RunningSim, SimSettings};
use bouncer::vendor::{trtc, zego};
use sqlx::Connection as _;

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
        if self.name.is_empty() {
            return;
        }
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

/// The runtime every test simulator of this process serves on: the simulator timestamps call
/// arrivals, and a test's own work (or a blocking wait) on its runtime must not delay them.
fn sim_runtime() -> &'static tokio::runtime::Runtime {
    static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("test-sim")
            .enable_all()
            .build()
            .expect("simulator runtime")
    })
}

/// A simulator serving `apps` at the documented limits.
pub async fn start_sim(apps: &Apps) -> RunningSim {
    let cfg = apps.config("http://127.0.0.1:1");
    sim::start_on(
        SimSettings {
            zego: cfg.zego,
            trtc: cfg.trtc,
            zego_rate: zego::MAX_CALLS_PER_SECOND,
            trtc_rate: trtc::MAX_CALLS_PER_SECOND,
        },
        "127.0.0.1:0".parse().expect("address"),
        sim_runtime().handle(),
    )
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

// ---------------------------------------------------------------------------------------------
// A whole pipeline: its own queue names, database, simulator and a real `bouncer run` process.
// ---------------------------------------------------------------------------------------------

use std::time::{Duration, Instant};

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Connection, ConnectionProperties};

/// Settings a test may change before the worker starts.
pub struct EnvOptions {
    pub linger_ms: u64,
    pub retry_initial_ms: u64,
    pub retry_max_ms: u64,
    pub deadline_secs: u64,
    pub prefetch: u32,
    pub grace_secs: u64,
    pub timeout_ms: u64,
    /// `pacing.jitter_ms`. Tests default to 40: a debug worker and a debug simulator sharing two
    /// busy cores with RabbitMQ, PostgreSQL and other tests add up to ~30 ms of scheduling delay
    /// between a call being charged and the simulator counting it, on top of any jitter a test
    /// injects. The test that measures the 20 ms default runs alone (tests/faults/pacing.rs).
    pub jitter_ms: u64,
}

impl Default for EnvOptions {
    fn default() -> Self {
        EnvOptions {
            linger_ms: 25,
            retry_initial_ms: 50,
            retry_max_ms: 500,
            deadline_secs: 60,
            prefetch: 500,
            grace_secs: 10,
            timeout_ms: 2000,
            jitter_ms: 40,
        }
    }
}

pub struct TestEnv {
    pub apps: Apps,
    pub sim: RunningSim,
    pub db: TestDb,
    pub queue: String,
    /// The worker's RabbitMQ connection name (fault tests close connections by it).
    pub connection_name: String,
    pub config: TempFile,
    pub config_text: String,
    publisher: Option<(Connection, lapin::Channel)>,
}

impl TestEnv {
    pub async fn new(apps: Apps, opts: EnvOptions) -> TestEnv {
        let sim = start_sim(&apps).await;
        let db = TestDb::named();
        let id = uuid::Uuid::new_v4().simple().to_string();
        let queue = format!("bouncer.test.{id}");
        let connection_name = format!("bouncer-test-{id}");
        let text = format!(
            "[amqp]\nurl = \"{}\"\nqueue = \"{queue}\"\nprefetch = {}\nconnection_name = \"{connection_name}\"\n\
             [postgres]\nurl = \"{}\"\n[http]\nlisten = \"127.0.0.1:0\"\n\
             [batch]\nlinger_ms = {}\n[retry]\ninitial_ms = {}\nmax_interval_ms = {}\ndeadline_secs = {}\n\
             [shutdown]\ngrace_secs = {}\n[pacing]\njitter_ms = {}\n\n{}",
            amqp_url(),
            opts.prefetch,
            db.url,
            opts.linger_ms,
            opts.retry_initial_ms,
            opts.retry_max_ms,
            opts.deadline_secs,
            opts.grace_secs,
            opts.jitter_ms,
            apps.toml(&sim.endpoint()).replace("timeout_ms = 2000", &format!("timeout_ms = {}", opts.timeout_ms)),
        );
        let config = TempFile::with(&text);
        let mut env = TestEnv { apps, sim, db, queue, connection_name, config, config_text: text, publisher: None };
        env.declare().await;
        env
    }

    /// Points the worker at another PostgreSQL (a private cluster in fault tests).
    pub fn use_database(&mut self, url: &str) {
        self.config_text = self.config_text.replace(&self.db.url, url);
        self.config = TempFile::with(&self.config_text);
        self.db.url = url.to_owned();
        self.db.name = String::new();
    }

    pub fn parsed_config(&self) -> Config {
        Config::from_toml(&self.config_text).expect("test config")
    }

    /// Declares the worker's topology so messages published before it starts are kept.
    async fn declare(&mut self) {
        let conn =
            Connection::connect(&amqp_url(), ConnectionProperties::default()).await.expect("connect to RabbitMQ");
        let ch = conn.create_channel().await.expect("channel");
        bouncer::intake::topology::declare(&ch, &self.parsed_config().amqp).await.expect("declare topology");
        ch.confirm_select(ConfirmSelectOptions::default()).await.expect("confirms");
        self.publisher = Some((conn, ch));
    }

    /// Publishes one raw body to the verdict queue and waits for the broker's confirm.
    pub async fn publish(&self, body: &[u8]) {
        self.publish_with(body, lapin::types::FieldTable::default()).await;
    }

    /// Publishes one raw body with AMQP headers (any a publisher could set).
    pub async fn publish_with(&self, body: &[u8], headers: lapin::types::FieldTable) {
        let (_, ch) = self.publisher.as_ref().expect("publisher");
        let confirm = ch
            .basic_publish(
                "".into(),
                self.queue.as_str().into(),
                BasicPublishOptions::default(),
                body,
                BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_content_type("application/json".into())
                    .with_headers(headers),
            )
            .await
            .expect("publish");
        assert!(confirm.await.expect("confirm").is_ack(), "broker refused a message");
    }

    pub async fn publish_json(&self, v: &serde_json::Value) {
        self.publish(v.to_string().as_bytes()).await;
    }

    /// Publishes many verdicts, then waits for every confirm (a backlog in seconds, not minutes).
    pub async fn publish_all(&self, verdicts: &[serde_json::Value]) {
        let publisher =
            bouncer::publisher::Publisher::connect(&self.parsed_config().amqp, "test").await.expect("publisher");
        for chunk in verdicts.chunks(1000) {
            let bodies: Vec<Vec<u8>> = chunk.iter().map(|v| v.to_string().into_bytes()).collect();
            assert!(publisher.publish_all(&bodies, &[]).await.iter().all(|ok| *ok), "broker refused a message");
        }
        publisher.close().await;
    }

    /// Live leases: (quota group, worker id).
    pub async fn owners(&self) -> Vec<(String, String)> {
        let pool = self.pool().await;
        let rows = sqlx::query_as(
            "SELECT quota_group, worker_id FROM quota_owners WHERE expires_at > now() ORDER BY quota_group",
        )
        .fetch_all(&pool)
        .await
        .unwrap_or_default();
        pool.close().await;
        rows
    }

    pub fn worker(&self) -> WorkerProcess {
        WorkerProcess::start(&self.config.0)
    }

    /// A replica named `name` (its `worker_id` in `workers` and `quota_owners`).
    pub fn replica(&self, name: &str) -> WorkerProcess {
        WorkerProcess::start_with_env(&self.config.0, &[("BOUNCER_OWNERSHIP__WORKER_ID", name)])
    }

    /// A pool to the test database, waiting (up to 30 s) for the worker to have created it.
    pub async fn pool(&self) -> sqlx::PgPool {
        let started = Instant::now();
        loop {
            match sqlx::PgPool::connect(&self.db.url).await {
                Ok(p) => return p,
                Err(e) if started.elapsed() > Duration::from_secs(30) => panic!("test database never appeared: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }

    /// Messages waiting in a queue of this test (`""`, `".rejected"`, `".deferred"`).
    pub async fn queue_depth(&self, suffix: &str) -> u32 {
        let (_, ch) = self.publisher.as_ref().expect("publisher");
        let q = ch
            .queue_declare(
                format!("{}{suffix}", self.queue).into(),
                lapin::options::QueueDeclareOptions { passive: true, ..Default::default() },
                lapin::types::FieldTable::default(),
            )
            .await
            .expect("queue exists");
        q.message_count()
    }

    /// Waits until the dead-letter queue holds `want` messages (at most `timeout`), then asserts it.
    pub async fn wait_for_dead_letters(&self, want: u32, timeout: Duration) {
        let started = Instant::now();
        while self.queue_depth(".rejected").await < want && started.elapsed() < timeout {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(self.queue_depth(".rejected").await, want, "messages in the dead-letter queue");
    }

    /// Waits until `count(sql)` returns `want`, or fails after `timeout` showing the last value.
    pub async fn wait_for_count(&self, sql: &'static str, want: i64, timeout: Duration) {
        let pool = self.pool().await;
        let started = Instant::now();
        let mut last = -1;
        while started.elapsed() < timeout {
            last = sqlx::query_scalar::<_, i64>(sql).fetch_one(&pool).await.unwrap_or(-1);
            if last == want {
                pool.close().await;
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("waited {timeout:?} for `{sql}` to be {want}; last {last}");
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        let queue = self.queue.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(async {
                let Ok(conn) = Connection::connect(&amqp_url(), ConnectionProperties::default()).await else { return };
                if let Ok(ch) = conn.create_channel().await {
                    bouncer::intake::topology::delete(&ch, &queue).await;
                }
                let _ = conn.close(200, "test done".into()).await;
            })
        })
        .join();
    }
}

/// A `bouncer run` child process, killed on drop; its log is kept in a temp file.
pub struct WorkerProcess {
    pub child: std::process::Child,
    pub log: PathBuf,
}

impl WorkerProcess {
    pub fn start(config: &std::path::Path) -> WorkerProcess {
        Self::start_with_env(config, &[])
    }

    /// A worker with extra environment (`BOUNCER_*` overrides: a replica's own name, say).
    pub fn start_with_env(config: &std::path::Path, env: &[(&str, &str)]) -> WorkerProcess {
        let log = std::env::temp_dir().join(format!("bouncer-worker-{}.log", uuid::Uuid::new_v4().simple()));
        let file = std::fs::File::create(&log).expect("log file");
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_bouncer"));
        for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("BOUNCER_")) {
            cmd.env_remove(k);
        }
        let child = cmd
            .args(["run", "--config", config.to_str().expect("utf-8 path"), "--log-format", "json"])
            .env("BOUNCER_LOG", "info,bouncer=debug")
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::null())
            .stderr(file)
            .spawn()
            .expect("spawn bouncer run");
        WorkerProcess { child, log }
    }

    pub fn signal(&self, sig: &str) {
        let ok = std::process::Command::new("kill").args([sig, &self.child.id().to_string()]).status().expect("kill");
        assert!(ok.success());
    }

    /// Waits for the process to exit, at most `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let started = Instant::now();
        while started.elapsed() < timeout {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- worker log {} ---\n{}",
                self.log.display(),
                self.log_text()
                    .lines()
                    .rev()
                    .take(60)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

/// A valid verdict body.
pub fn verdict(id: &str, vendor: &str, app: u32, room: serde_json::Value, users: &[&str]) -> serde_json::Value {
    serde_json::json!({"verdict_id": id, "vendor": vendor, "app_id": app, "room_id": room, "user_ids": users, "reason": "spam"})
}

impl TestEnv {
    /// Rewrites the worker's config file (before starting a worker).
    pub fn edit_config(&mut self, f: impl FnOnce(&str) -> String) {
        self.config_text = f(&self.config_text);
        self.config = TempFile::with(&self.config_text);
    }

    /// Runs a `bouncer` subcommand against this environment's config.
    pub fn cli(&self, args: &[&str]) -> Output {
        let mut all = args.to_vec();
        all.extend(["--config", self.config.0.to_str().expect("utf-8 path")]);
        bouncer(&all, &[])
    }
}

impl WorkerProcess {
    /// The worker's HTTP address, read from its log once it is serving.
    pub fn http_addr(&self) -> String {
        let started = Instant::now();
        loop {
            for line in self.log_text().lines() {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(line)
                    && v["message"].as_str().is_some_and(|m| m.starts_with("serving /metrics"))
                {
                    return v["addr"].as_str().expect("addr field").to_owned();
                }
            }
            assert!(started.elapsed() < Duration::from_secs(20), "worker never served HTTP");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A TCP proxy to RabbitMQ that a test can cut and restore, making the broker unreachable for
/// one worker without touching anyone else's connections.
pub struct CuttableProxy {
    pub port: u16,
    up: Arc<std::sync::atomic::AtomicBool>,
    conns: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    accept: tokio::task::JoinHandle<()>,
}

use std::sync::Arc;

impl CuttableProxy {
    pub async fn start(target: &str) -> CuttableProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let conns: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
        let (up2, conns2, target) = (up.clone(), conns.clone(), target.to_owned());
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !up2.load(std::sync::atomic::Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let target = target.clone();
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                conns2.lock().unwrap().push(task);
            }
        });
        CuttableProxy { port, up, conns, accept }
    }

    /// Drops every proxied connection and refuses new ones.
    pub fn cut(&self) {
        self.up.store(false, std::sync::atomic::Ordering::SeqCst);
        for t in self.conns.lock().unwrap().drain(..) {
            t.abort();
        }
    }

    pub fn restore(&self) {
        self.up.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for CuttableProxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}

/// The sum of a metric's samples whose label `label.0` is `label.1`.
pub fn metric_sum(samples: &[Sample], name: &str, label: (&str, &str)) -> f64 {
    samples
        .iter()
        .filter(|(n, l, _)| n == name && l.get(label.0).map(String::as_str) == Some(label.1))
        .map(|(_, _, v)| v)
        .sum()
}

/// One sample of Prometheus text: name, labels, value.
pub type Sample = (String, std::collections::BTreeMap<String, String>, f64);

/// Parses Prometheus text exposition, failing on any line that is not a comment, blank or sample.
pub fn parse_prometheus(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty() && !l.starts_with('#')) {
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("no value: {line}"));
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("bad value: {line}"));
        let (name, labels) = match series.split_once('{') {
            None => (series.to_owned(), Default::default()),
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').unwrap_or_else(|| panic!("unclosed labels: {line}"));
                let labels = body
                    .split("\",")
                    .filter(|kv| !kv.is_empty())
                    .map(|kv| {
                        let (k, v) = kv.split_once("=\"").unwrap_or_else(|| panic!("bad label: {line}"));
                        (k.to_owned(), v.trim_end_matches('"').to_owned())
                    })
                    .collect();
                (name.to_owned(), labels)
            }
        };
        assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'), "bad name: {line}");
        out.push((name, labels, value));
    }
    out
}

/// A minimal AMQP 0-9-1 publisher over a raw socket, for what a well-behaved client cannot send:
/// properties whose bytes are not UTF-8 (RabbitMQ passes them on as they are). Publishes one
/// message to `queue` on the default exchange and closes the channel, so the broker has routed it
/// when this returns.
pub async fn publish_raw(queue: &str, content_type: &[u8], header_key: Option<&[u8]>, body: &[u8]) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    async fn frame(s: &mut tokio::net::TcpStream, kind: u8, channel: u16, payload: &[u8]) {
        let mut f = vec![kind];
        f.extend(channel.to_be_bytes());
        f.extend((payload.len() as u32).to_be_bytes());
        f.extend(payload);
        f.push(0xCE);
        s.write_all(&f).await.expect("write frame");
    }
    async fn read_method(s: &mut tokio::net::TcpStream) -> (u16, u16, Vec<u8>) {
        loop {
            let mut head = [0u8; 7];
            s.read_exact(&mut head).await.expect("frame header");
            let size = u32::from_be_bytes([head[3], head[4], head[5], head[6]]) as usize;
            let mut payload = vec![0u8; size + 1];
            s.read_exact(&mut payload).await.expect("frame payload");
            if head[0] == 1 {
                let class = u16::from_be_bytes([payload[0], payload[1]]);
                let method = u16::from_be_bytes([payload[2], payload[3]]);
                return (class, method, payload[4..size].to_vec());
            }
        }
    }
    fn method(class: u16, method: u16, args: &[u8]) -> Vec<u8> {
        let mut p = class.to_be_bytes().to_vec();
        p.extend(method.to_be_bytes());
        p.extend(args);
        p
    }
    fn short(s: &[u8]) -> Vec<u8> {
        let mut v = vec![s.len() as u8];
        v.extend(s);
        v
    }
    let url = url::Url::parse(&amqp_url()).expect("AMQP URL");
    let addr = format!("{}:{}", url.host_str().unwrap_or("127.0.0.1"), url.port().unwrap_or(5672));
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect to RabbitMQ");
    s.write_all(b"AMQP\x00\x00\x09\x01").await.expect("protocol header");
    assert_eq!(read_method(&mut s).await.0, 10, "connection.start");
    let user = url.username();
    let password = url.password().unwrap_or("guest");
    let response = format!("\0{user}\0{password}");
    let mut start_ok = 0u32.to_be_bytes().to_vec(); // no client properties
    start_ok.extend(short(b"PLAIN"));
    start_ok.extend((response.len() as u32).to_be_bytes());
    start_ok.extend(response.as_bytes());
    start_ok.extend(short(b"en_US"));
    frame(&mut s, 1, 0, &method(10, 11, &start_ok)).await;
    let (_, _, tune) = read_method(&mut s).await;
    let mut tune_ok = tune[..2].to_vec(); // channel-max as offered
    tune_ok.extend(131_072u32.to_be_bytes());
    tune_ok.extend(0u16.to_be_bytes()); // no heartbeats
    frame(&mut s, 1, 0, &method(10, 31, &tune_ok)).await;
    let vhost =
        percent_encoding::percent_decode_str(url.path().trim_start_matches('/')).decode_utf8_lossy().into_owned();
    let vhost = if vhost.is_empty() { "/".to_owned() } else { vhost };
    let mut open = short(vhost.as_bytes());
    open.extend(short(b""));
    open.push(0);
    frame(&mut s, 1, 0, &method(10, 40, &open)).await;
    assert_eq!(read_method(&mut s).await.1, 41, "connection.open-ok");
    frame(&mut s, 1, 1, &method(20, 10, &short(b""))).await;
    assert_eq!(read_method(&mut s).await.1, 11, "channel.open-ok");
    let mut publish = 0u16.to_be_bytes().to_vec();
    publish.extend(short(b""));
    publish.extend(short(queue.as_bytes()));
    publish.push(0);
    frame(&mut s, 1, 1, &method(60, 40, &publish)).await;
    // Content header: class, weight, body size, property flags, then the set properties in order.
    let mut header = 60u16.to_be_bytes().to_vec();
    header.extend(0u16.to_be_bytes());
    header.extend((body.len() as u64).to_be_bytes());
    let mut flags = 0x8000u16; // content-type
    let mut props = short(content_type);
    if let Some(key) = header_key {
        flags |= 0x2000; // headers
        let mut table = short(key);
        table.push(b'S');
        table.extend(1u32.to_be_bytes());
        table.push(b'v');
        props.extend((table.len() as u32).to_be_bytes());
        props.extend(table);
    }
    header.extend(flags.to_be_bytes());
    header.extend(props);
    frame(&mut s, 2, 1, &header).await;
    frame(&mut s, 3, 1, body).await;
    // channel.close: its close-ok comes after the publish has been routed.
    let mut close = 200u16.to_be_bytes().to_vec();
    close.extend(short(b"done"));
    close.extend([0, 0, 0, 0]);
    frame(&mut s, 1, 1, &method(20, 40, &close)).await;
    assert_eq!(read_method(&mut s).await.1, 41, "channel.close-ok");
}
