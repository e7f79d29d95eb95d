//! Secrets given inline, by environment variable or by file: exactly one, never printed.

use super::*;

pub(super) fn resolve_secret(
    key: &str,
    s: FileSecret,
    env: &dyn Fn(&str) -> Option<String>,
    p: &mut Vec<Problem>,
) -> Option<SecretString> {
    let given = [s.value.is_some(), s.env.is_some(), s.file.is_some()].iter().filter(|b| **b).count();
    if given != 1 {
        p.push(problem(
            key,
            if given == 0 {
                format!("missing: give {key}, {key}_env (an environment variable name) or {key}_file (a path)")
            } else {
                format!("give only one of {key}, {key}_env and {key}_file")
            },
        ));
        return None;
    }
    let resolved = if let Some(v) = s.value {
        Ok(v)
    } else if let Some(name) = s.env {
        env(&name)
            .map(SecretString::from)
            .ok_or_else(|| problem(format!("{key}_env"), format!("environment variable {name} is not set")))
    } else if let Some(path) = s.file {
        std::fs::read_to_string(&path)
            // Files written by editors and `echo` end in a newline that is not part of the secret.
            .map(|t| SecretString::from(t.trim_end_matches(['\n', '\r']).to_owned()))
            .map_err(|e| problem(format!("{key}_file"), format!("cannot read {}: {e}", path.display())))
    } else {
        return None;
    };
    match resolved {
        Ok(secret) if secret.expose_secret().is_empty() => {
            p.push(problem(key, "is empty"));
            None
        }
        Ok(secret) => Some(secret),
        Err(e) => {
            p.push(e);
            None
        }
    }
}

/// A secret that may be left out altogether (a feature then stays off); given, it follows the
/// rules of [`resolve_secret`].
pub(super) fn resolve_optional_secret(
    key: &str,
    s: FileSecret,
    env: &dyn Fn(&str) -> Option<String>,
    p: &mut Vec<Problem>,
) -> Option<SecretString> {
    if s.value.is_none() && s.env.is_none() && s.file.is_none() {
        return None;
    }
    resolve_secret(key, s, env, p)
}
