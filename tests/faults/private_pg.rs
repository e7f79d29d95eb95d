//! A throwaway PostgreSQL cluster on its own port, so a test can stop and start it without
//! touching the server other tests use.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

pub struct PrivatePg {
    dir: PathBuf,
    port: u16,
    bin: PathBuf,
}

fn bindir() -> PathBuf {
    // Debian keeps the server binaries out of PATH, one folder per major version.
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path().join("bin")).filter(|p| p.join("initdb").exists()).collect())
        .unwrap_or_default();
    versions.sort();
    versions
        .pop()
        .expect("PostgreSQL server binaries under /usr/lib/postgresql/*/bin (deploy/services.sh installs them)")
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| o.stdout.starts_with(b"0\n")).unwrap_or(false)
}

/// Runs a server binary, as the `postgres` user when we are root (the server refuses root).
fn run(bin: &std::path::Path, tool: &str, args: &[&str]) -> bool {
    let path = bin.join(tool);
    let status = if is_root() {
        Command::new("runuser").arg("-u").arg("postgres").arg("--").arg(&path).args(args).status()
    } else {
        Command::new(&path).args(args).status()
    };
    status.map(|s| s.success()).unwrap_or(false)
}

impl PrivatePg {
    pub fn start() -> PrivatePg {
        let bin = bindir();
        let dir = std::env::temp_dir().join(format!("bouncer-pg-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("cluster dir");
        if is_root() {
            assert!(
                Command::new("chown").args(["postgres:postgres", dir.to_str().unwrap()]).status().unwrap().success()
            );
        }
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let d = dir.to_str().unwrap();
        assert!(run(&bin, "initdb", &["-D", d, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"]), "initdb");
        let pg = PrivatePg { dir, port, bin };
        pg.start_again();
        pg
    }

    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    pub fn start_again(&self) {
        let d = self.dir.to_str().unwrap();
        let opts = format!("-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off", self.port, d);
        assert!(
            run(&self.bin, "pg_ctl", &["-D", d, "-o", &opts, "-l", &format!("{d}/log"), "-w", "start"]),
            "pg_ctl start"
        );
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(started.elapsed() < Duration::from_secs(20), "private PostgreSQL did not come up");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn stop(&self) {
        let d = self.dir.to_str().unwrap();
        assert!(run(&self.bin, "pg_ctl", &["-D", d, "-m", "immediate", "-w", "stop"]), "pg_ctl stop");
    }
}

impl Drop for PrivatePg {
    fn drop(&mut self) {
        let d = self.dir.to_str().unwrap_or_default().to_owned();
        run(&self.bin, "pg_ctl", &["-D", &d, "-m", "immediate", "-w", "stop"]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
