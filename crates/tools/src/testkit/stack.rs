//! A whole pipeline for one test: its own queue names, database, simulator and real `bouncer run`
//! processes, its configuration a typed value, and teardown on drop.

use std::process::Output;
use std::time::{Duration, Instant};

use bouncer::config::{Config, FileConfig};
use bouncer_sim::RunningSim;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Connection, ConnectionProperties};

use super::*;

/// The names that keep one stack apart from every other on the same broker and server: queue
/// `bouncer.<parts…>`, connection `bouncer-<parts…>`, database `bouncer_<parts…>`.
pub struct Names {
    pub queue: String,
    pub connection_name: String,
    pub database: String,
}

impl Names {
    pub fn of(parts: &[&str]) -> Names {
        Names {
            queue: format!("bouncer.{}", parts.join(".")),
            connection_name: format!("bouncer-{}", parts.join("-")),
            database: format!("bouncer_{}", parts.join("_")),
        }
    }

    /// `kind` and a fresh random id (`bouncer.test.<id>`, …).
    pub fn unique(kind: &str) -> Names {
        Names::of(&[kind, &uuid::Uuid::new_v4().simple().to_string()[..12]])
    }
}

/// The default configuration pointed at `names` on the broker `amqp_url` and the PostgreSQL
/// server `pg_server` (a URL without a database); everything else stays at its default.
pub fn stack_config(names: &Names, amqp_url: &str, pg_server: &str) -> FileConfig {
    let mut file = FileConfig::default();
    file.amqp.url = amqp_url.into();
    file.amqp.queue = names.queue.clone();
    file.amqp.connection_name = names.connection_name.clone();
    file.postgres.url = format!("{}/{}", pg_server.trim_end_matches('/'), names.database).into();
    file
}

/// Settings a test may change before the worker starts.
pub struct EnvOptions {
    pub linger_ms: u64,
    pub retry_initial_ms: u64,
    pub retry_max_ms: u64,
    pub deadline_secs: u64,
    pub prefetch: u32,
    pub grace_secs: u64,
    pub timeout_ms: u64,
    /// `pacing.jitter_ms`. Tests use the default (25): the pacing counts a call as possibly
    /// arriving until its answer, so scheduling delays of a debug worker on two busy cores between
    /// a call's charge and the simulator counting it cannot break the limit.
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
            jitter_ms: 25,
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
    /// What `config` holds, as a typed value ([`TestEnv::edit_config`] changes both).
    pub file: FileConfig,
    /// The broker this test's worker and the test itself use.
    pub amqp: String,
    publisher: Option<(Connection, lapin::Channel)>,
}

impl TestEnv {
    pub async fn new(apps: Apps, opts: EnvOptions) -> TestEnv {
        TestEnv::on_broker(apps, opts, &amqp_url()).await
    }

    /// A test environment on another broker (a private node in fault tests).
    pub async fn on_broker(apps: Apps, opts: EnvOptions, amqp: &str) -> TestEnv {
        let sim = start_sim(&apps).await;
        let db = TestDb::named();
        let names = Names::unique("test");
        let mut file = stack_config(&names, amqp, &pg_server_url());
        file.postgres.url = db.url.as_str().into();
        file.amqp.prefetch = opts.prefetch;
        file.http.listen = "127.0.0.1:0".into();
        file.batch.linger_ms = opts.linger_ms;
        file.retry.initial_ms = opts.retry_initial_ms;
        file.retry.max_interval_ms = opts.retry_max_ms;
        file.retry.deadline_secs = opts.deadline_secs;
        file.shutdown.grace_secs = opts.grace_secs;
        file.pacing.jitter_ms = opts.jitter_ms;
        let vendors = apps.file_config(&sim.endpoint());
        (file.zego, file.trtc) = (vendors.zego, vendors.trtc);
        set_vendor_timeouts(&mut file, opts.timeout_ms);
        let config = TempFile::with(&file.to_toml());
        let mut env = TestEnv {
            apps,
            sim,
            db,
            queue: names.queue,
            connection_name: names.connection_name,
            config,
            file,
            amqp: amqp.to_owned(),
            publisher: None,
        };
        env.declare().await;
        env
    }

    /// Points the worker at another PostgreSQL (a private cluster in fault tests).
    pub fn use_database(&mut self, url: &str) {
        self.edit_config(|f| f.postgres.url = url.into());
        self.db.url = url.to_owned();
        self.db.name = String::new();
    }

    /// The configuration file's text.
    pub fn config_text(&self) -> String {
        self.file.to_toml()
    }

    pub fn parsed_config(&self) -> Config {
        Config::from_toml(&self.config_text()).expect("test config")
    }

    /// Connects the test's publisher again (after its broker was restarted).
    pub async fn reconnect(&mut self) {
        self.declare().await;
    }

    /// Declares the worker's topology so messages published before it starts are kept.
    async fn declare(&mut self) {
        let conn = Connection::connect(&self.amqp, ConnectionProperties::default()).await.expect("connect to RabbitMQ");
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

    /// Live leases of vendor quota groups (not the outcome relay's or audit maintenance's): (quota group, worker id).
    pub async fn owners(&self) -> Vec<(String, String)> {
        let pool = self.pool().await;
        let rows = sqlx::query_as(
            "SELECT quota_group, worker_id FROM quota_owners
             WHERE expires_at > now() AND quota_group NOT IN ('outbox:relay', 'audit:maintenance')
             ORDER BY quota_group",
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

    /// Writes failed verdicts of one user each (id, user, room) for the first ZEGO app, with their
    /// failed kicks, as the trail would hold them: replays and console tests without a worker.
    pub async fn insert_failed_verdicts(&self, rows: &[(String, String, String)]) {
        let pool = self.pool().await;
        let app = i64::from(self.apps.zego[0].0);
        let (ids, users, rooms): (Vec<&str>, Vec<&str>, Vec<&str>) = columns(rows);
        sqlx::query(
            "INSERT INTO verdicts (verdict_id, vendor, app_id, room_id, room_id_numeric, user_ids, payload, status, finished_at)
             SELECT id, 'zego', $4, room, false, ARRAY[u], '{}'::jsonb, 'failed', now()
             FROM UNNEST($1::text[], $2::text[], $3::text[]) AS x(id, u, room)",
        )
        .bind(&ids)
        .bind(&users)
        .bind(&rooms)
        .bind(app)
        .execute(&pool)
        .await
        .expect("insert verdicts");
        sqlx::query(
            "INSERT INTO kicks (verdict_id, user_id, vendor, app_id, status, attempts, last_error)
             SELECT id, u, 'zego', $3, 'failed', 1, 'vendor code 1' FROM UNNEST($1::text[], $2::text[]) AS x(id, u)",
        )
        .bind(&ids)
        .bind(&users)
        .bind(app)
        .execute(&pool)
        .await
        .expect("insert kicks");
        pool.close().await;
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
        let (queue, amqp) = (self.queue.clone(), self.amqp.clone());
        block_on_own_runtime(async move { delete_queues(&amqp, &queue).await });
    }
}

/// How a test's worker (and every `bouncer` command run on its configuration) reaches
/// PostgreSQL. The test's own checks ([`TestEnv::pool`]) always go straight to the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// Straight to PostgreSQL (`postgres.pooler = "none"`).
    Direct,
    /// Through PgBouncer in transaction mode, with no direct connection: lanes poll, and the
    /// schema must be migrated by someone else.
    Pooler,
    /// Through PgBouncer in transaction mode, with `postgres.direct_url` for LISTEN and
    /// migrations.
    PoolerWithDirectUrl,
}

impl TestEnv {
    /// Sends the worker's statements the way `route` says (before starting a worker).
    pub fn route(&mut self, route: Route) {
        let direct = self.db.url.clone();
        let pooled = format!("{}/{}", pgbouncer_server_url(), self.db.name);
        self.edit_config(|f| match route {
            Route::Direct => {
                f.postgres.url = direct.into();
                f.postgres.pooler = "none".into();
                f.postgres.direct_url = None;
            }
            Route::Pooler | Route::PoolerWithDirectUrl => {
                f.postgres.url = pooled.into();
                f.postgres.pooler = "transaction".into();
                f.postgres.direct_url = (route == Route::PoolerWithDirectUrl).then(|| direct.into());
            }
        });
    }

    /// Creates the test database and brings its schema up to date over a direct connection, as
    /// an operator would before starting workers that cannot migrate.
    pub async fn migrate_directly(&self) {
        let mut file = self.file.clone();
        file.postgres.url = self.db.url.as_str().into();
        file.postgres.pooler = "none".into();
        file.postgres.direct_url = None;
        let config = Config::from_toml(&file.to_toml()).expect("valid config");
        bouncer::audit::migrate(&config.postgres, Duration::from_secs(10)).await.expect("migrate directly");
    }
}

/// A valid verdict body.
pub fn verdict(id: &str, vendor: &str, app: u32, room: serde_json::Value, users: &[&str]) -> serde_json::Value {
    serde_json::json!({"verdict_id": id, "vendor": vendor, "app_id": app, "room_id": room, "user_ids": users, "reason": "spam"})
}

impl TestEnv {
    /// Changes the worker's configuration and rewrites its file (before starting a worker).
    pub fn edit_config(&mut self, f: impl FnOnce(&mut FileConfig)) {
        f(&mut self.file);
        self.config = TempFile::with(&self.file.to_toml());
    }

    /// Runs a `bouncer` subcommand against this environment's config.
    pub fn cli(&self, args: &[&str]) -> Output {
        let mut all = args.to_vec();
        all.extend(["--config", self.config.0.to_str().expect("utf-8 path")]);
        bouncer(&all, &[])
    }
}

fn columns(rows: &[(String, String, String)]) -> (Vec<&str>, Vec<&str>, Vec<&str>) {
    let mut out = (Vec::new(), Vec::new(), Vec::new());
    for (a, b, c) in rows {
        out.0.push(a.as_str());
        out.1.push(b.as_str());
        out.2.push(c.as_str());
    }
    out
}
