//! `[web]`: the ops console (`bouncer web`): where it listens and who may use it. Its file schema,
//! validated form and checks live together here; the worker never reads them.

use std::net::IpAddr;

use serde::Serialize;

use super::*;

/// `[web]` as written in the file.
#[derive(Deserialize, Serialize, Clone)]
#[serde(deny_unknown_fields, default)]
pub struct FileWeb {
    pub listen: String,
    /// Host names (with or without a port) the console answers to besides its listen address and,
    /// on loopback, `localhost`: the name people and proxies use to reach it. Any other `Host`
    /// is refused (421), so a page whose name re-resolves to this address (DNS rebinding) reads
    /// nothing.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allowed_hosts: Vec<String>,
    pub auth: FileWebAuth,
    /// The key CSRF tokens are signed with, shared by every console replica behind one address
    /// (inline, `_env` or `_file`). Unset: a random key per process, which is right for one.
    #[serde(serialize_with = "file::expose_opt", skip_serializing_if = "Option::is_none")]
    pub csrf_secret: Option<SecretString>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub csrf_secret_env: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub csrf_secret_file: Option<PathBuf>,
}

impl Default for FileWeb {
    fn default() -> Self {
        FileWeb {
            listen: "127.0.0.1:9190".into(),
            allowed_hosts: Vec::new(),
            auth: FileWebAuth::default(),
            csrf_secret: None,
            csrf_secret_env: None,
            csrf_secret_file: None,
        }
    }
}

/// `[web.auth]`: HTTP basic users, a trusted proxy's user header, or both.
#[derive(Deserialize, Serialize, Clone)]
#[serde(deny_unknown_fields, default)]
pub struct FileWebAuth {
    pub users: Vec<FileWebUser>,
    /// A header carrying the signed-in user name, set by a reverse proxy (oauth2-proxy's
    /// `X-Forwarded-User`), believed only from `proxy_addresses`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy_header: Option<String>,
    pub proxy_addresses: Vec<String>,
    /// The role of users signed in through the proxy header.
    pub proxy_role: String,
    /// Users signed in through the proxy header who are operators whatever `proxy_role` says.
    pub proxy_operators: Vec<String>,
}

impl Default for FileWebAuth {
    fn default() -> Self {
        FileWebAuth {
            users: Vec::new(),
            proxy_header: None,
            proxy_addresses: Vec::new(),
            proxy_role: "viewer".into(),
            proxy_operators: Vec::new(),
        }
    }
}

/// `[[web.auth.users]]`.
#[derive(Deserialize, Serialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct FileWebUser {
    pub name: String,
    /// An argon2 PHC string (`bouncer web --hash-password` prints one).
    #[serde(serialize_with = "file::expose")]
    pub password_hash: SecretString,
    pub role: String,
}

/// What a signed-in person may do on the console.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Reads every page.
    Viewer,
    /// Reads, and replays failed verdicts.
    Operator,
}

impl Role {
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "viewer" => Some(Role::Viewer),
            "operator" => Some(Role::Operator),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
        }
    }
}

#[derive(Clone, Debug)]
pub struct WebUser {
    pub name: String,
    /// Not a secret in itself, but no business of logs either.
    pub password_hash: SecretString,
    pub role: Role,
}

/// `[web]`, validated.
#[derive(Clone, Debug)]
pub struct WebConfig {
    pub listen: SocketAddr,
    /// `web.allowed_hosts`, lower case, ports dropped.
    pub allowed_hosts: Vec<String>,
    pub users: Vec<WebUser>,
    pub proxy_header: Option<axum::http::HeaderName>,
    pub proxy_addresses: Vec<IpAddr>,
    pub proxy_role: Role,
    pub proxy_operators: Vec<String>,
    /// `web.csrf_secret`: None for a key of the process's own.
    pub csrf_secret: Option<SecretString>,
}

impl WebConfig {
    /// Whether any way of signing in is configured.
    pub fn has_auth(&self) -> bool {
        !self.users.is_empty() || self.proxy_header.is_some()
    }
}

fn role(key: String, raw: &str, p: &mut Vec<Problem>) -> Role {
    Role::parse(raw).unwrap_or_else(|| {
        p.push(problem(key, format!("must be viewer or operator, got {raw:?}")));
        Role::Viewer
    })
}

pub(super) fn validate_web(f: FileWeb, env: &dyn Fn(&str) -> Option<String>, p: &mut Vec<Problem>) -> WebConfig {
    let listen = f.listen.parse::<SocketAddr>().unwrap_or_else(|e| {
        p.push(problem("web.listen", format!("must be an address like 127.0.0.1:9190 ({e})")));
        SocketAddr::from(([127, 0, 0, 1], 9190))
    });
    let mut users: Vec<WebUser> = Vec::new();
    for (i, u) in f.auth.users.into_iter().enumerate() {
        let key = |k: &str| format!("web.auth.users[{i}].{k}");
        if u.name.is_empty() || u.name.len() > 200 || u.name.contains(':') {
            p.push(problem(key("name"), "must be 1 to 200 bytes without ':'"));
        }
        if users.iter().any(|o| o.name == u.name) {
            p.push(problem(key("name"), format!("user {:?} is configured twice", u.name)));
        }
        let hash = u.password_hash.expose_secret();
        if !hash.starts_with("$argon2") || argon2::password_hash::phc::PasswordHash::new(hash).is_err() {
            // The value is never shown: it is close enough to a secret.
            p.push(problem(key("password_hash"), "must be an argon2 PHC string ($argon2id$v=19$...)"));
        }
        let role = role(key("role"), &u.role, p);
        users.push(WebUser { name: u.name, password_hash: u.password_hash, role });
    }
    let proxy_header = f.auth.proxy_header.as_deref().and_then(|h| match axum::http::HeaderName::try_from(h) {
        Ok(name) => Some(name),
        Err(_) => {
            p.push(problem("web.auth.proxy_header", format!("not a header name: {h:?}")));
            None
        }
    });
    let mut proxy_addresses = Vec::new();
    for (i, a) in f.auth.proxy_addresses.iter().enumerate() {
        match a.parse::<IpAddr>() {
            Ok(ip) => proxy_addresses.push(ip),
            Err(_) => p.push(problem(format!("web.auth.proxy_addresses[{i}]"), format!("not an IP address: {a:?}"))),
        }
    }
    if f.auth.proxy_header.is_some() && f.auth.proxy_addresses.is_empty() {
        p.push(problem(
            "web.auth.proxy_addresses",
            "required with web.auth.proxy_header: the header is believed only from these addresses",
        ));
    }
    let proxy_role = role("web.auth.proxy_role".into(), &f.auth.proxy_role, p);
    let secret = FileSecret { value: f.csrf_secret, env: f.csrf_secret_env, file: f.csrf_secret_file };
    let given = secret.value.is_some() || secret.env.is_some() || secret.file.is_some();
    let csrf_secret = given.then(|| resolve_secret("web.csrf_secret", secret, env, p)).flatten();
    if csrf_secret.as_ref().is_some_and(|s| s.expose_secret().len() < 32) {
        p.push(problem("web.csrf_secret", "must be at least 32 bytes (for example: openssl rand -hex 32)"));
    }
    if !f.auth.proxy_operators.is_empty() && f.auth.proxy_header.is_none() {
        p.push(problem("web.auth.proxy_operators", "needs web.auth.proxy_header: it names users the proxy signs in"));
    }
    let proxy_operators = f.auth.proxy_operators;
    let mut allowed_hosts = Vec::new();
    for (i, h) in f.allowed_hosts.iter().enumerate() {
        match host_name(h) {
            Some(name) => allowed_hosts.push(name),
            None => p.push(problem(format!("web.allowed_hosts[{i}]"), format!("not a host name: {h:?}"))),
        }
    }
    WebConfig { listen, allowed_hosts, users, proxy_header, proxy_addresses, proxy_role, proxy_operators, csrf_secret }
}

/// The host of a `Host` header value or a configured name, lower case, without its port; `None`
/// if it is not one (empty, or with characters no host name has).
pub fn host_name(value: &str) -> Option<String> {
    let v = value.trim().to_ascii_lowercase();
    let host = if let Some(rest) = v.strip_prefix('[') {
        // [::1]:9190
        format!("[{}]", rest.split(']').next()?)
    } else {
        v.rsplit_once(':')
            .filter(|(_, port)| port.chars().all(|c| c.is_ascii_digit()))
            .map_or(v.clone(), |(h, _)| h.to_owned())
    };
    let ok = !host.is_empty() && host.chars().all(|c| c.is_ascii_alphanumeric() || "-._[]:".contains(c));
    ok.then_some(host)
}
