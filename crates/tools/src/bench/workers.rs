//! The workers of a run: `bouncer run` children, each with its own HTTP port and replica name.

use std::path::Path;
use std::process::{Child, Stdio};

use crate::testkit::{bouncer_binary, bouncer_command, free_port};

use super::report;

pub(super) struct Workers {
    children: Vec<Child>,
    pub(super) ports: Vec<u16>,
    /// Each worker's public API address, when asked for (`api`).
    pub(super) api_addrs: Vec<String>,
    /// Peak RSS (MiB) and CPU seconds seen per worker.
    pub(super) usage: Vec<(f64, f64)>,
}

impl Workers {
    /// `n` workers; with `api`, each also serves the public API on a port of its own.
    pub(super) fn start(config: &Path, n: usize, id: &str, api: bool) -> Result<Workers, String> {
        let mut w = Workers { children: Vec::new(), ports: Vec::new(), api_addrs: Vec::new(), usage: Vec::new() };
        for k in 0..n {
            let port = free_port()?;
            let api_addr = if api { Some(format!("127.0.0.1:{}", free_port()?)) } else { None };
            w.children.push(spawn_worker(config, port, api_addr.as_deref(), &format!("bench-{id}-{k}"))?);
            w.ports.push(port);
            w.api_addrs.extend(api_addr);
            w.usage.push((0.0, 0.0));
        }
        Ok(w)
    }

    pub(super) fn sample(&mut self) {
        for (child, u) in self.children.iter().zip(self.usage.iter_mut()) {
            if let Some((cpu, rss)) = report::process_usage(child.id()) {
                *u = (cpu, rss.max(u.1));
            }
        }
    }

    pub(super) fn signal(&self, k: usize, sig: &str) {
        let _ = std::process::Command::new("kill").args([sig, &self.children[k].id().to_string()]).status();
    }

    pub(super) async fn stop(mut self) {
        self.sample();
        for k in 0..self.children.len() {
            self.signal(k, "-TERM");
        }
        let children = std::mem::take(&mut self.children);
        let _ = tokio::task::spawn_blocking(move || {
            for mut c in children {
                let _ = c.wait();
            }
        })
        .await;
    }
}

/// A run that ends early (an error) leaves no worker behind.
impl Drop for Workers {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn spawn_worker(config: &Path, port: u16, api: Option<&str>, name: &str) -> Result<Child, String> {
    let mut command = bouncer_command();
    if let Some(addr) = api {
        command.env("BOUNCER_API__LISTEN", addr);
    }
    command
        .args(["run", "--config", &config.to_string_lossy()])
        .env("BOUNCER_LOG", std::env::var("BOUNCER_LOG").unwrap_or_else(|_| "warn".into()))
        .env("BOUNCER_HTTP__LISTEN", format!("127.0.0.1:{port}"))
        .env("BOUNCER_OWNERSHIP__WORKER_ID", name)
        .stdout(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start the worker ({}): {e}", bouncer_binary().display()))
}
