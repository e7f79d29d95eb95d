//! Meaning and limits: every problem found in one pass, each named by its key.

use super::*;

/// Checks meaning and limits, resolves secrets, and turns file types into domain types.
pub(super) fn validate(f: FileConfig, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, Vec<Problem>> {
    let mut p = Vec::new();
    let Sections { prefetch, listen, mut warnings } = check_sections(&f, &mut p);
    let zego_apps = check_zego(f.zego, env, &mut p);
    let trtc_apps = check_trtc(f.trtc, env, &mut p);
    let web = validate_web(f.web, env, &mut p);
    let api = validate_api(f.api, env, &mut p);
    let outcomes = validate_outcomes(f.outcomes, &mut p);
    let retention = validate_retention(f.retention, &mut p);
    let (pooler, direct_url) = check_pooler(&f.postgres, env, &mut p);
    if pooler == Pooler::None && direct_url.is_some() {
        warnings.push(problem(
            "postgres.direct_url",
            "only used with postgres.pooler = \"transaction\" (postgres.url is direct already); ignored",
        ));
    }

    if !p.is_empty() {
        return Err(p);
    }
    Ok(Config {
        amqp: AmqpConfig {
            url: f.amqp.url,
            queue: f.amqp.queue,
            prefetch,
            connection_name: f.amqp.connection_name,
            delivery_limit: f.amqp.delivery_limit,
        },
        postgres: PostgresConfig {
            url: f.postgres.url,
            max_connections: f.postgres.max_connections,
            pooler,
            direct_url,
            poll_interval: Duration::from_millis(f.postgres.poll_interval_ms),
        },
        http: HttpConfig { listen },
        batch: BatchConfig { linger_ms: f.batch.linger_ms },
        ownership: OwnershipConfig {
            lease: Duration::from_millis(f.ownership.lease_ms),
            heartbeat: Duration::from_millis(f.ownership.heartbeat_ms),
            worker_id: f.ownership.worker_id,
        },
        pacing: PacingConfig {
            jitter: Duration::from_millis(f.pacing.jitter_ms),
            buffer: Duration::from_millis(f.pacing.buffer_ms),
        },
        warnings,
        retry: RetryConfig {
            initial: Duration::from_millis(f.retry.initial_ms),
            max_interval: Duration::from_millis(f.retry.max_interval_ms),
            deadline: Duration::from_secs(f.retry.deadline_secs),
        },
        shutdown: ShutdownConfig { grace: Duration::from_secs(f.shutdown.grace_secs) },
        web,
        api,
        outcomes,
        retention,
        zego: zego_apps,
        trtc: trtc_apps,
    })
}

/// What the general sections' checks produce besides problems.
struct Sections {
    prefetch: u16,
    listen: SocketAddr,
    warnings: Vec<Problem>,
}

/// `[amqp]`, `[postgres]`, `[http]`, `[batch]`, `[retry]`, `[ownership]`, `[pacing]`, and the
/// obsolete keys still accepted.
fn check_sections(f: &FileConfig, p: &mut Vec<Problem>) -> Sections {
    let amqp_url = f.amqp.url.expose_secret();
    if !(amqp_url.starts_with("amqp://") || amqp_url.starts_with("amqps://")) {
        p.push(problem("amqp.url", "must start with amqp:// or amqps://"));
    }
    if f.amqp.queue.is_empty() || f.amqp.queue.len() > 200 {
        p.push(problem("amqp.queue", "must be 1 to 200 bytes"));
    }
    let prefetch = match u16::try_from(f.amqp.prefetch) {
        Ok(n) if n > 0 => n,
        _ => {
            p.push(problem("amqp.prefetch", format!("must be in 1..=65535, got {}", f.amqp.prefetch)));
            1
        }
    };
    let obsolete = "obsolete since enforcement reads its work from PostgreSQL (intake never holds or defers \
                    deliveries); ignored, remove it";
    let mut warnings = Vec::new();
    for (key, given) in [
        ("amqp.defer_ms", f.amqp.defer_ms.is_some()),
        ("amqp.max_unacked_per_app", f.amqp.max_unacked_per_app.is_some()),
        ("batch.hold_secs", f.batch.hold_secs.is_some()),
        ("batch.max_open_batches", f.batch.max_open_batches.is_some()),
    ] {
        if given {
            warnings.push(problem(key, obsolete));
        }
    }
    if f.ownership.lease_ms < 1_000 || f.ownership.lease_ms > 60_000 {
        p.push(problem("ownership.lease_ms", format!("must be in 1000..=60000, got {}", f.ownership.lease_ms)));
    }
    if f.ownership.heartbeat_ms == 0 || f.ownership.heartbeat_ms * 2 > f.ownership.lease_ms {
        p.push(problem(
            "ownership.heartbeat_ms",
            format!("must be at least 1 and at most half of ownership.lease_ms, got {}", f.ownership.heartbeat_ms),
        ));
    }
    if f.ownership.worker_id.as_ref().is_some_and(|w| w.is_empty() || w.len() > 200) {
        p.push(problem("ownership.worker_id", "must be 1 to 200 bytes"));
    }
    if f.pacing.jitter_ms > 500 {
        p.push(problem("pacing.jitter_ms", format!("must be at most 500, got {}", f.pacing.jitter_ms)));
    }
    if f.pacing.buffer_ms < 100 || f.pacing.buffer_ms > 60_000 {
        p.push(problem("pacing.buffer_ms", format!("must be in 100..=60000, got {}", f.pacing.buffer_ms)));
    }
    if f.amqp.delivery_limit == 0 {
        p.push(problem("amqp.delivery_limit", "must be at least 1"));
    }
    let pg_url = f.postgres.url.expose_secret();
    if !(pg_url.starts_with("postgres://") || pg_url.starts_with("postgresql://")) {
        p.push(problem("postgres.url", "must start with postgres:// or postgresql://"));
    }
    if f.postgres.max_connections == 0 {
        p.push(problem("postgres.max_connections", "must be at least 1"));
    }
    let listen = f.http.listen.parse::<SocketAddr>().unwrap_or_else(|e| {
        p.push(problem("http.listen", format!("must be an address like 127.0.0.1:9187 ({e})")));
        SocketAddr::from(([127, 0, 0, 1], 9187))
    });
    if f.batch.linger_ms > 60_000 {
        p.push(problem("batch.linger_ms", format!("must be at most 60000, got {}", f.batch.linger_ms)));
    }
    if f.retry.initial_ms == 0 {
        p.push(problem("retry.initial_ms", "must be at least 1"));
    }
    if f.retry.max_interval_ms < f.retry.initial_ms {
        p.push(problem("retry.max_interval_ms", "must be at least retry.initial_ms"));
    }
    if f.retry.deadline_secs == 0 {
        p.push(problem("retry.deadline_secs", "must be at least 1"));
    }
    Sections { prefetch, listen, warnings }
}

/// `postgres.pooler`, `postgres.direct_url` (three forms) and `postgres.poll_interval_ms`.
fn check_pooler(
    f: &FilePostgres,
    env: &dyn Fn(&str) -> Option<String>,
    p: &mut Vec<Problem>,
) -> (Pooler, Option<SecretString>) {
    let pooler = Pooler::parse(&f.pooler).unwrap_or_else(|| {
        p.push(problem(
            "postgres.pooler",
            format!(
                "must be \"none\" (PostgreSQL itself, or a session pooler) or \"transaction\" (a transaction \
                 pooler such as PgBouncer's pool_mode = transaction), got {:?}",
                f.pooler
            ),
        ));
        Pooler::None
    });
    let direct_url = f.direct_url_secret().and_then(|s| resolve_secret("postgres.direct_url", s, env, p));
    if let Some(url) = &direct_url {
        let u = url.expose_secret();
        if !(u.starts_with("postgres://") || u.starts_with("postgresql://")) {
            p.push(problem("postgres.direct_url", "must start with postgres:// or postgresql://"));
        }
    }
    if !(10..=60_000).contains(&f.poll_interval_ms) {
        p.push(problem("postgres.poll_interval_ms", format!("must be in 10..=60000, got {}", f.poll_interval_ms)));
    }
    (pooler, direct_url)
}

/// Every `[[zego]]` entry.
fn check_zego(entries: Vec<FileZego>, env: &dyn Fn(&str) -> Option<String>, p: &mut Vec<Problem>) -> Vec<ZegoApp> {
    let mut zego_apps = Vec::new();
    let mut seen = HashMap::new();
    for (i, z) in entries.into_iter().enumerate() {
        let key = |k: &str| format!("zego[{i}].{k}");
        check_app_id("zego", i, "app_id", z.app_id, &mut seen, p);
        let callback_secret =
            FileSecret { value: z.callback_secret, env: z.callback_secret_env, file: z.callback_secret_file };
        let callback_secret = resolve_optional_secret(&key("callback_secret"), callback_secret, env, p);
        let resolved = check_connection(
            &key,
            AppEntry {
                secret_key: "server_secret",
                secret: FileSecret { value: z.server_secret, env: z.server_secret_env, file: z.server_secret_file },
                rate: (z.rate_per_second, vendors::ZEGO.max_calls_per_second(Action::Kick)),
                chunk: (z.chunk_size, vendors::ZEGO.max_users_per_call(Action::Kick)),
                endpoint: &z.endpoint,
                connect_timeout_ms: z.connect_timeout_ms,
                timeout_ms: z.timeout_ms,
            },
            env,
            p,
        );
        if let Some((server_secret, endpoint, timeouts)) = resolved {
            zego_apps.push(ZegoApp {
                app_id: z.app_id,
                server_secret,
                endpoint,
                rate_per_second: z.rate_per_second,
                chunk_size: z.chunk_size,
                is_test: z.is_test,
                timeouts,
                forbid_rules: z.forbid_rules,
                callback_secret,
            });
        }
    }
    zego_apps
}

/// Every `[[trtc]]` entry; apps sharing a SecretId share its rate.
fn check_trtc(entries: Vec<FileTrtc>, env: &dyn Fn(&str) -> Option<String>, p: &mut Vec<Problem>) -> Vec<TrtcApp> {
    let mut trtc_apps: Vec<TrtcApp> = Vec::new();
    let mut seen = HashMap::new();
    for (i, t) in entries.into_iter().enumerate() {
        let key = |k: &str| format!("trtc[{i}].{k}");
        check_app_id("trtc", i, "sdk_app_id", t.sdk_app_id, &mut seen, p);
        let callback_key = FileSecret { value: t.callback_key, env: t.callback_key_env, file: t.callback_key_file };
        let callback_key = resolve_optional_secret(&key("callback_key"), callback_key, env, p);
        if t.secret_id.trim().is_empty() {
            p.push(problem(key("secret_id"), "must not be empty"));
        }
        if !vendors::TRTC.regions.contains(&t.region.as_str()) {
            p.push(problem(
                key("region"),
                format!("unknown region {:?}; RemoveUser supports {}", t.region, vendors::TRTC.regions.join(", ")),
            ));
        }
        // Apps sharing credentials share one vendor quota (the safe reading): one rate for all.
        if let Some(other) =
            trtc_apps.iter().find(|o| o.secret_id == t.secret_id && o.rate_per_second != t.rate_per_second)
        {
            p.push(problem(
                key("rate_per_second"),
                format!(
                    "apps sharing secret_id share one quota; app {} has rate_per_second {}, this one {}",
                    other.sdk_app_id, other.rate_per_second, t.rate_per_second
                ),
            ));
        }
        let resolved = check_connection(
            &key,
            AppEntry {
                secret_key: "secret_key",
                secret: FileSecret { value: t.secret_key, env: t.secret_key_env, file: t.secret_key_file },
                rate: (t.rate_per_second, vendors::TRTC.max_calls_per_second(Action::Kick)),
                chunk: (t.chunk_size, vendors::TRTC.max_users_per_call(Action::Kick)),
                endpoint: &t.endpoint,
                connect_timeout_ms: t.connect_timeout_ms,
                timeout_ms: t.timeout_ms,
            },
            env,
            p,
        );
        if let Some((secret_key, endpoint, timeouts)) = resolved {
            trtc_apps.push(TrtcApp {
                sdk_app_id: t.sdk_app_id,
                secret_id: t.secret_id,
                secret_key,
                region: t.region,
                endpoint,
                rate_per_second: t.rate_per_second,
                chunk_size: t.chunk_size,
                timeouts,
                callback_key,
            });
        }
    }
    trtc_apps
}

/// An app id is set and configured once per vendor (`seen`: app id → first index).
fn check_app_id(
    section: &str,
    i: usize,
    id_key: &str,
    app_id: u32,
    seen: &mut HashMap<u32, usize>,
    p: &mut Vec<Problem>,
) {
    let key = format!("{section}[{i}].{id_key}");
    if let Some(first) = seen.insert(app_id, i) {
        p.push(problem(&key, format!("app {app_id} is already configured at {section}[{first}]")));
    }
    if app_id == 0 {
        p.push(problem(key, "must not be 0"));
    }
}

/// What a ZEGO and a TRTC entry share: a secret, a rate and chunk size under the vendor's limits
/// (value, limit), an endpoint and timeouts.
struct AppEntry<'a> {
    /// The secret's key name (`server_secret`, `secret_key`); `_env` and `_file` forms follow it.
    secret_key: &'static str,
    secret: FileSecret,
    rate: (u32, u32),
    chunk: (usize, usize),
    endpoint: &'a str,
    connect_timeout_ms: u64,
    timeout_ms: u64,
}

/// Checks an entry's shared keys (named through `key`); its secret, endpoint and timeouts when
/// all are usable.
fn check_connection(
    key: &dyn Fn(&str) -> String,
    e: AppEntry<'_>,
    env: &dyn Fn(&str) -> Option<String>,
    p: &mut Vec<Problem>,
) -> Option<(SecretString, url::Url, Timeouts)> {
    let secret = resolve_secret(&key(e.secret_key), e.secret, env, p);
    check_rate(&key("rate_per_second"), e.rate.0, e.rate.1, p);
    check_chunk(&key("chunk_size"), e.chunk.0, e.chunk.1, p);
    let endpoint = check_endpoint(&key("endpoint"), e.endpoint, p);
    let timeouts = check_timeouts(&key(""), e.connect_timeout_ms, e.timeout_ms, p);
    Some((secret?, endpoint?, timeouts))
}

pub(super) fn check_rate(key: &str, rate: u32, max: u32, p: &mut Vec<Problem>) {
    if rate == 0 || rate > max {
        p.push(problem(key, format!("must be in 1..={max} (the vendor's documented limit), got {rate}")));
    }
}

pub(super) fn check_chunk(key: &str, size: usize, max: usize, p: &mut Vec<Problem>) {
    if size == 0 || size > max {
        p.push(problem(key, format!("must be in 1..={max} (users per call the vendor accepts), got {size}")));
    }
}

pub(super) fn check_endpoint(key: &str, raw: &str, p: &mut Vec<Problem>) -> Option<url::Url> {
    match url::Url::parse(raw) {
        Ok(u) if (u.scheme() == "https" || u.scheme() == "http") && u.host_str().is_some() => Some(u),
        Ok(_) => {
            p.push(problem(key, format!("must be an http:// or https:// URL with a host, got {raw:?}")));
            None
        }
        Err(e) => {
            p.push(problem(key, format!("not a URL ({e}): {raw:?}")));
            None
        }
    }
}

pub(super) fn check_timeouts(prefix: &str, connect_ms: u64, total_ms: u64, p: &mut Vec<Problem>) -> Timeouts {
    for (k, v) in [("connect_timeout_ms", connect_ms), ("timeout_ms", total_ms)] {
        if v == 0 || v > 300_000 {
            p.push(problem(format!("{prefix}{k}"), format!("must be in 1..=300000, got {v}")));
        }
    }
    Timeouts { connect: Duration::from_millis(connect_ms), total: Duration::from_millis(total_ms) }
}
