//! `BOUNCER_*` environment overrides, applied to the parsed TOML before it is typed.

use super::*;

/// Applies `BOUNCER_A__B__0__C=value` to `a.b[0].c`. The value takes the type of the value it
/// replaces; a new value is a string for string-typed keys, else typed by its look.
pub(super) fn apply_env_overrides(table: &mut toml::Table, env: &HashMap<String, String>) -> Result<(), Vec<Problem>> {
    let mut problems = Vec::new();
    // Sorted so that `..__0__..` is created before `..__1__..`.
    let sorted: BTreeMap<_, _> = env.iter().filter(|(k, _)| k.starts_with(ENV_PREFIX)).collect();
    for (name, value) in sorted {
        if RESERVED_ENV.contains(&name.as_str()) {
            continue;
        }
        let path: Vec<String> = name[ENV_PREFIX.len()..].split("__").map(|s| s.to_ascii_lowercase()).collect();
        if let Err(reason) = set_path(table, &path, value) {
            problems.push(problem(name.clone(), reason));
        }
    }
    if problems.is_empty() { Ok(()) } else { Err(problems) }
}

const STRING_KEYS: [&str; 10] = [
    "url",
    "queue",
    "connection_name",
    "listen",
    "server_secret",
    "secret_id",
    "secret_key",
    "region",
    "endpoint",
    "server_secret_env",
];

fn typed_like(existing: Option<&toml::Value>, key: &str, raw: &str) -> Result<toml::Value, String> {
    use toml::Value as V;
    let infer = || {
        if STRING_KEYS.contains(&key) || key.ends_with("_env") || key.ends_with("_file") {
            return V::String(raw.to_owned());
        }
        if let Ok(i) = raw.parse::<i64>() {
            V::Integer(i)
        } else if let Ok(b) = raw.parse::<bool>() {
            V::Boolean(b)
        } else {
            V::String(raw.to_owned())
        }
    };
    Ok(match existing {
        Some(V::Integer(_)) => V::Integer(raw.parse().map_err(|_| format!("expected an integer, got {raw:?}"))?),
        Some(V::Boolean(_)) => V::Boolean(raw.parse().map_err(|_| format!("expected true or false, got {raw:?}"))?),
        Some(V::Float(_)) => V::Float(raw.parse().map_err(|_| format!("expected a number, got {raw:?}"))?),
        Some(V::String(_)) => V::String(raw.to_owned()),
        _ => infer(),
    })
}

fn set_path(table: &mut toml::Table, path: &[String], raw: &str) -> Result<(), String> {
    let (first, rest) = path.split_first().ok_or("empty key")?;
    if first.is_empty() {
        return Err("empty key segment".into());
    }
    if rest.is_empty() {
        let v = typed_like(table.get(first), first, raw)?;
        table.insert(first.clone(), v);
        return Ok(());
    }
    let slot = table.entry(first.clone()).or_insert_with(|| {
        if rest[0].parse::<usize>().is_ok() {
            toml::Value::Array(Vec::new())
        } else {
            toml::Value::Table(toml::Table::new())
        }
    });
    set_in_value(slot, rest, raw)
}

fn set_in_value(slot: &mut toml::Value, rest: &[String], raw: &str) -> Result<(), String> {
    match slot {
        toml::Value::Table(t) => set_path(t, rest, raw),
        toml::Value::Array(items) => {
            let idx: usize = rest[0].parse().map_err(|_| format!("{:?} is not an array index", rest[0]))?;
            if idx > items.len() {
                return Err(format!("array index {idx} skips entries (there are {})", items.len()));
            }
            if idx == items.len() {
                items.push(toml::Value::Table(toml::Table::new()));
            }
            if rest.len() == 1 {
                return Err("names an array entry, not a key inside it".into());
            }
            set_in_value(&mut items[idx], &rest[1..], raw)
        }
        _ => Err(format!("{:?} is not a section", rest[0])),
    }
}
