//! A throwaway RabbitMQ node on its own ports, data and logs, so a test can stop the broker for a
//! while without touching the one other tests use. Debian's scripts run the node as the
//! `rabbitmq` user when we are root (sharing its Erlang cookie with `rabbitmqctl`); the machine's
//! `rabbitmq.conf` names the shared node's port, so the node gets a config file of its own, and
//! no plugins (the management plugin's port is the shared node's too).

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

pub struct PrivateRabbit {
    dir: PathBuf,
    node: String,
    port: u16,
    dist_port: u16,
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
    listener.local_addr().expect("port").port()
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| o.stdout.starts_with(b"0\n")).unwrap_or(false)
}

/// A RabbitMQ script: Debian's wrapper (which switches to `rabbitmq`) as root, the script itself
/// otherwise.
fn script(name: &str) -> Command {
    if is_root() {
        Command::new(format!("/usr/sbin/{name}"))
    } else {
        Command::new(format!("/usr/lib/rabbitmq/bin/{name}"))
    }
}

impl PrivateRabbit {
    pub fn start() -> PrivateRabbit {
        let id = uuid::Uuid::new_v4().simple().to_string()[..10].to_owned();
        let dir = std::env::temp_dir().join(format!("bouncer-rabbit-{id}"));
        std::fs::create_dir_all(&dir).expect("node dir");
        let (port, dist_port) = (free_port(), free_port());
        std::fs::write(dir.join("rabbitmq.conf"), format!("listeners.tcp.local = 127.0.0.1:{port}\n")).expect("conf");
        std::fs::write(dir.join("enabled_plugins"), "[].\n").expect("plugins");
        if is_root() {
            let owned = Command::new("chown").args(["-R", "rabbitmq:rabbitmq", &dir.to_string_lossy()]).status();
            assert!(owned.is_ok_and(|s| s.success()), "chown the node's folder to rabbitmq");
        }
        let rabbit = PrivateRabbit { dir, node: format!("bouncer-{id}@localhost"), port, dist_port };
        rabbit.start_again();
        rabbit
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// Starts the node (again: its queues and persistent messages are kept) and waits until it
    /// takes connections.
    pub fn start_again(&self) {
        let d = self.dir.to_string_lossy();
        let started = script("rabbitmq-server")
            .arg("-detached")
            .env("RABBITMQ_NODENAME", &self.node)
            .env("RABBITMQ_CONFIG_FILE", format!("{d}/rabbitmq.conf"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", format!("{d}/enabled_plugins"))
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", format!("{d}/mnesia"))
            .env("RABBITMQ_LOG_BASE", format!("{d}/log"))
            .env("RABBITMQ_PID_FILE", format!("{d}/pid"))
            .status();
        assert!(started.is_ok_and(|s| s.success()), "rabbitmq-server -detached");
        let waited = self.ctl(&["wait", &format!("{d}/pid"), "--timeout", "60"]);
        assert!(waited, "the private RabbitMQ node did not start (its log: {d}/log)");
        let since = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(since.elapsed() < Duration::from_secs(30), "the private RabbitMQ node does not listen");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the node (the whole Erlang VM): its clients' connections drop and new ones are refused.
    pub fn stop(&self) {
        assert!(self.ctl(&["stop"]), "rabbitmqctl stop");
        let since = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
            assert!(since.elapsed() < Duration::from_secs(30), "the private RabbitMQ node still listens");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn ctl(&self, args: &[&str]) -> bool {
        script("rabbitmqctl").args(["-q", "-n", &self.node]).args(args).status().is_ok_and(|s| s.success())
    }
}

impl Drop for PrivateRabbit {
    fn drop(&mut self) {
        self.ctl(&["stop"]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
