//! The services a stack runs on, and its teardown: the PostgreSQL server that holds one database
//! per test (or per demo, per bench run), the RabbitMQ broker, and temp files.

use std::path::PathBuf;

use sqlx::Connection as _;

/// The server the per-test databases are created on.
pub fn pg_admin_url() -> String {
    std::env::var("BOUNCER_TEST_PG").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// [`pg_admin_url`] without its database: where `/<database>` is appended.
pub fn pg_server_url() -> String {
    let admin = pg_admin_url();
    admin.rsplit_once('/').map(|(b, _)| b.to_owned()).unwrap_or(admin)
}

/// PgBouncer in transaction mode in front of the test server (`deploy/services.sh` starts it),
/// without a database: where `/<database>` is appended.
pub fn pgbouncer_server_url() -> String {
    let url = std::env::var("BOUNCER_TEST_PGBOUNCER")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:6432/postgres".into());
    url.rsplit_once('/').map(|(b, _)| b.to_owned()).unwrap_or(url)
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
        TestDb { url: format!("{}/{name}", pg_server_url()), name }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if self.name.is_empty() {
            return;
        }
        let name = self.name.clone();
        block_on_own_runtime(async move { drop_database(&pg_admin_url(), &name).await });
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

/// Drops a database of the server `admin_url` points at (any database on it), if it exists.
pub async fn drop_database(admin_url: &str, name: &str) {
    if let Ok(mut conn) = sqlx::PgConnection::connect(admin_url).await {
        let sql = format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", name.replace('"', "\"\""));
        let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut conn).await;
        let _ = conn.close().await;
    }
}

/// Creates an empty database on the server `admin_url` points at.
pub async fn create_database(admin_url: &str, name: &str) {
    let mut conn = sqlx::PgConnection::connect(admin_url).await.expect("connect to the test server");
    let sql = format!("CREATE DATABASE \"{}\"", name.replace('"', "\"\""));
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut conn).await.expect("create database");
    let _ = conn.close().await;
}

/// Deletes a verdict queue and the queues and exchanges it brings (dead letters, deferrals).
pub async fn delete_queues(amqp_url: &str, queue: &str) {
    let Ok(conn) = lapin::Connection::connect(amqp_url, lapin::ConnectionProperties::default()).await else { return };
    if let Ok(ch) = conn.create_channel().await {
        bouncer::intake::topology::delete(&ch, queue).await;
    }
    let _ = conn.close(200, "done".into()).await;
}

/// Runs `f` to completion on a runtime of its own: for teardown in `Drop`, which runs outside
/// any async context.
pub fn block_on_own_runtime<F: Future<Output = ()> + Send + 'static>(f: F) {
    let _ = std::thread::spawn(move || {
        if let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() {
            rt.block_on(f);
        }
    })
    .join();
}

async fn reachable(url: &str, default_port: u16) -> bool {
    let Ok(u) = url::Url::parse(url) else { return false };
    let addr = format!("{}:{}", u.host_str().unwrap_or("127.0.0.1"), u.port().unwrap_or(default_port));
    tokio::time::timeout(std::time::Duration::from_secs(2), tokio::net::TcpStream::connect(addr))
        .await
        .is_ok_and(|r| r.is_ok())
}

/// Uses running RabbitMQ and PostgreSQL (and PgBouncer, when `pooler` names one); otherwise
/// runs `deploy/services.sh` when at hand, for what is needed (no browser).
pub async fn ensure_services(amqp: &str, postgres: &str, pooler: Option<&str>) -> Result<(), String> {
    let pooler_up = match pooler {
        Some(url) => reachable(url, 6432).await,
        None => true,
    };
    if reachable(amqp, 5672).await && reachable(postgres, 5432).await && pooler_up {
        return Ok(());
    }
    let script = std::path::Path::new("deploy/services.sh");
    if !script.exists() {
        return Err(
            "RabbitMQ, PostgreSQL or PgBouncer is not reachable; run deploy/services.sh from the source tree".into()
        );
    }
    println!("starting local services (deploy/services.sh)…");
    let mut cmd = std::process::Command::new("bash");
    cmd.arg(script).arg("--no-browser");
    if pooler.is_none() {
        cmd.arg("--no-pooler");
    }
    let ok = cmd.status().map(|s| s.success()).unwrap_or(false);
    if ok { Ok(()) } else { Err("deploy/services.sh could not bring up the services (its output says which)".into()) }
}
