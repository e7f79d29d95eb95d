//! The real binaries as child processes: one-shot `bouncer` commands and `bouncer run` workers.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

/// The `bouncer` binary of this build: `BOUNCER_BIN` if set, else the one beside this executable
/// (`target/<profile>/` for `bouncer-tools`, its parent for a test binary in `deps/`).
pub fn bouncer_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("BOUNCER_BIN") {
        return path.into();
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    let dir = if dir.ends_with("deps") { dir.parent().map(Path::to_path_buf).unwrap_or(dir) } else { dir };
    dir.join(format!("bouncer{}", std::env::consts::EXE_SUFFIX))
}

/// A `bouncer` command with none of this process's `BOUNCER_*` variables.
pub fn bouncer_command() -> std::process::Command {
    let mut cmd = std::process::Command::new(bouncer_binary());
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("BOUNCER_")) {
        cmd.env_remove(k);
    }
    cmd
}

/// Runs the real `bouncer` binary with a clean `BOUNCER_*` environment.
pub fn bouncer(args: &[&str], env: &[(&str, &str)]) -> Output {
    bouncer_command().args(args).envs(env.iter().copied()).output().expect("run bouncer")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A `bouncer run` child process, killed on drop; its log is kept in a temp file.
pub struct WorkerProcess {
    pub child: std::process::Child,
    pub log: PathBuf,
}

impl WorkerProcess {
    pub fn start(config: &Path) -> WorkerProcess {
        Self::start_with_env(config, &[])
    }

    /// A worker with extra environment (`BOUNCER_*` overrides: a replica's own name, say).
    pub fn start_with_env(config: &Path, env: &[(&str, &str)]) -> WorkerProcess {
        Self::spawn(config, env, "json")
    }

    /// A worker logging in the text format people read (its `http_addr` is not readable then).
    pub fn start_with_text_log(config: &Path) -> WorkerProcess {
        Self::spawn(config, &[], "text")
    }

    fn spawn(config: &Path, env: &[(&str, &str)], log_format: &str) -> WorkerProcess {
        let log = std::env::temp_dir().join(format!("bouncer-worker-{}.log", uuid::Uuid::new_v4().simple()));
        let file = std::fs::File::create(&log).expect("log file");
        let child = bouncer_command()
            .args(["run", "--config", config.to_str().expect("utf-8 path"), "--log-format", log_format])
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
        // Whether the worker was still running when the test gave up tells a hang from a death.
        let state = match self.child.try_wait() {
            Ok(None) => "still running when the test ended".to_owned(),
            Ok(Some(status)) => format!("had exited: {status}"),
            Err(e) => format!("state unknown: {e}"),
        };
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- worker log {} (the worker {state}) ---\n{}",
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
        // BOUNCER_KEEP_LOGS=1 keeps every worker's log for a post-mortem of a flaky run.
        if std::env::var_os("BOUNCER_KEEP_LOGS").is_none() {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

impl WorkerProcess {
    /// The worker's HTTP address, read from its log once it is serving.
    pub fn http_addr(&self) -> String {
        self.logged_addr("serving /metrics")
    }

    /// The worker's `/metrics` text.
    pub async fn metrics_text(&self) -> String {
        let url = format!("http://{}/metrics", self.http_addr());
        reqwest::get(url).await.expect("metrics").text().await.expect("metrics text")
    }

    /// The worker's public API address (`[api].listen`), read from its log once it is serving.
    pub fn api_addr(&self) -> String {
        self.logged_addr("serving the public API")
    }

    /// The `addr` of the first log line whose message starts with `message`.
    fn logged_addr(&self, message: &str) -> String {
        let started = Instant::now();
        loop {
            for line in self.log_text().lines() {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(line)
                    && v["message"].as_str().is_some_and(|m| m.starts_with(message))
                {
                    return v["addr"].as_str().expect("addr field").to_owned();
                }
            }
            assert!(started.elapsed() < Duration::from_secs(20), "the worker never logged {message:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Waits (at most 30 s) for a worker's `/readyz` on `port` to answer 200.
pub async fn wait_ready(port: u16) -> Result<(), String> {
    let url = format!("http://127.0.0.1:{port}/readyz");
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(30) {
        if reqwest::get(&url).await.is_ok_and(|r| r.status().is_success()) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err("the worker never became ready".into())
}

/// A free port on loopback (for a child's listener; free when asked, taken by the child).
pub fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("no free port: {e}"))?;
    Ok(l.local_addr().map_err(|e| format!("no free port: {e}"))?.port())
}

/// A `bouncer web` child process on a free loopback port, killed on drop.
pub struct ConsoleProcess {
    pub child: std::process::Child,
    /// `http://127.0.0.1:<port>`.
    pub base: String,
}

impl ConsoleProcess {
    /// Starts the console on `config` and waits until it accepts connections.
    pub async fn start(config: &Path) -> ConsoleProcess {
        ConsoleProcess::try_start(config).await.unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`ConsoleProcess::start`], saying what went wrong instead of panicking (the benchmark).
    pub async fn try_start(config: &Path) -> Result<ConsoleProcess, String> {
        let port = free_port()?;
        let listen = format!("127.0.0.1:{port}");
        let config = config.to_str().ok_or("the config path is not UTF-8")?;
        let child = bouncer_command()
            .args(["web", "--config", config, "--listen", &listen])
            .stdout(std::process::Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start bouncer web: {e}"))?;
        let console = ConsoleProcess { child, base: format!("http://{listen}") };
        let started = std::time::Instant::now();
        while tokio::net::TcpStream::connect(&listen).await.is_err() {
            if started.elapsed() > Duration::from_secs(30) {
                return Err(format!("bouncer web never listened on {listen}"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(console)
    }
}

impl Drop for ConsoleProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
