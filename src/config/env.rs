//! `BOUNCER_*` environment overrides, applied to the parsed TOML before it is typed.

use super::*;

/// Applies `BOUNCER_A__B__0__C=value` to `a.b[0].c`. The value takes the type the file schema
/// gives that key ([`FileConfig::schema`]): `"12345"` stays a string for a string key even when
/// the file does not set it, and is an integer for an integer key. A key the schema does not know
/// stays a string; deserialisation then names it as unknown.
///
/// Why not a layered-config crate: the public contract includes overrides of array entries by
/// index (`BOUNCER_ZEGO__0__SERVER_SECRET`), which figment's `Env` provider cannot address
/// (SergioBenitez/Figment#92, #113: indices become map keys that do not merge into the file's
/// array), and every problem must keep its key path (`zego[0].server_secret`).
pub(super) fn apply_env_overrides(table: &mut toml::Table, env: &HashMap<String, String>) -> Result<(), Vec<Problem>> {
    let schema = toml::Value::Table(FileConfig::schema());
    let mut problems = Vec::new();
    // Sorted so that `..__0__..` is created before `..__1__..`.
    let sorted: BTreeMap<_, _> = env.iter().filter(|(k, _)| k.starts_with(ENV_PREFIX)).collect();
    for (name, value) in sorted {
        if RESERVED_ENV.contains(&name.as_str()) {
            continue;
        }
        let path: Vec<String> = name[ENV_PREFIX.len()..].split("__").map(|s| s.to_ascii_lowercase()).collect();
        let typed = typed_by_schema(schema_at(&schema, &path), value);
        match typed.and_then(|v| set_path(table, &path, v)) {
            Ok(()) => {}
            Err(reason) => problems.push(problem(name.clone(), reason)),
        }
    }
    if problems.is_empty() { Ok(()) } else { Err(problems) }
}

/// The schema's value at `path`; an array index selects the array's one example entry.
fn schema_at<'a>(schema: &'a toml::Value, path: &[String]) -> Option<&'a toml::Value> {
    path.iter().try_fold(schema, |node, segment| match node {
        toml::Value::Table(t) => t.get(segment),
        toml::Value::Array(items) => segment.parse::<usize>().ok().and(items.first()),
        _ => None,
    })
}

fn typed_by_schema(schema: Option<&toml::Value>, raw: &str) -> Result<toml::Value, String> {
    use toml::Value as V;
    Ok(match schema {
        Some(V::Integer(_)) => V::Integer(raw.parse().map_err(|_| format!("expected an integer, got {raw:?}"))?),
        Some(V::Boolean(_)) => V::Boolean(raw.parse().map_err(|_| format!("expected true or false, got {raw:?}"))?),
        Some(V::Float(_)) => V::Float(raw.parse().map_err(|_| format!("expected a number, got {raw:?}"))?),
        _ => V::String(raw.to_owned()),
    })
}

fn set_path(table: &mut toml::Table, path: &[String], value: toml::Value) -> Result<(), String> {
    let (first, rest) = path.split_first().ok_or("empty key")?;
    if first.is_empty() {
        return Err("empty key segment".into());
    }
    if rest.is_empty() {
        table.insert(first.clone(), value);
        return Ok(());
    }
    let slot = table.entry(first.clone()).or_insert_with(|| {
        if rest[0].parse::<usize>().is_ok() {
            toml::Value::Array(Vec::new())
        } else {
            toml::Value::Table(toml::Table::new())
        }
    });
    set_in_value(slot, rest, value)
}

fn set_in_value(slot: &mut toml::Value, rest: &[String], value: toml::Value) -> Result<(), String> {
    match slot {
        toml::Value::Table(t) => set_path(t, rest, value),
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
            set_in_value(&mut items[idx], &rest[1..], value)
        }
        _ => Err(format!("{:?} is not a section", rest[0])),
    }
}
