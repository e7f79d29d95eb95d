//! The code's layout as a rule: no import circle between the top-level modules of any crate.
//!
//! Module `a` *names* module `b` when a file of `a` (outside its unit-test modules) says
//! `crate::b`, directly, in a `crate::{…, b, …}` group, or in a doc link (a reader follows those
//! too). A circle is `a` naming `b` while `b`,
//! directly or through others, names `a`: then neither can be read, tested or moved without the
//! other. Run alone with `cargo test --test api layout::`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every `.rs` file below `dir`.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return out };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(rust_files(&p));
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
    out.sort();
    out
}

/// The text of a file without its unit-test modules (`#[cfg(test)] mod …` to the end of the file,
/// where this code base keeps them).
fn production_text(path: &Path) -> String {
    if path.file_name().is_some_and(|n| n == "tests.rs") || path.components().any(|c| c.as_os_str() == "tests") {
        return String::new();
    }
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut out = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let t = line.trim_start();
        if t.starts_with("#[cfg(test)]") && lines.peek().is_some_and(|n| n.trim_start().starts_with("mod ")) {
            break;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// The top-level modules named by `text` through `crate::`.
fn named_modules(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let ident = |s: &str| -> String { s.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect() };
    for (i, _) in text.match_indices("crate::") {
        let rest = &text[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // `crate::{a::X, b, c::{…}}`: the first segment of each top-level item.
            let mut depth = 0;
            let mut item_start = true;
            for (j, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = true,
                    c if item_start && (c.is_alphanumeric() || c == '_') => {
                        out.insert(ident(&group[j..]));
                        item_start = false;
                    }
                    _ => {}
                }
            }
        } else {
            let name = ident(rest);
            if !name.is_empty() {
                out.insert(name);
            }
        }
    }
    out
}

/// Which top-level module names which, for the crate whose sources are in `src`.
fn graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in rust_files(src) {
        let rel = file.strip_prefix(src).expect("below src");
        let first = rel.components().next().expect("a path").as_os_str().to_string_lossy().into_owned();
        let module = first.trim_end_matches(".rs").to_owned();
        if module == "lib" || module == "main" {
            continue;
        }
        let names = named_modules(&production_text(&file));
        let entry = g.entry(module.clone()).or_default();
        entry.extend(names.into_iter().filter(|n| *n != module));
    }
    // Only edges to modules of this crate (not `crate::` in a string, say).
    let modules: BTreeSet<String> = g.keys().cloned().collect();
    for targets in g.values_mut() {
        targets.retain(|t| modules.contains(t));
    }
    g
}

/// Strongly connected components of more than one module (Tarjan's algorithm).
fn circles(g: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct State<'a> {
        g: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        next: usize,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a str) {
        s.index.insert(v, s.next);
        s.low.insert(v, s.next);
        s.next += 1;
        s.stack.push(v);
        s.on_stack.insert(v);
        for w in s.g.get(v).into_iter().flatten() {
            let w = w.as_str();
            if !s.index.contains_key(w) {
                visit(s, w);
                let lw = s.low[w];
                let lv = s.low.get_mut(v).expect("visited");
                *lv = (*lv).min(lw);
            } else if s.on_stack.contains(w) {
                let iw = s.index[w];
                let lv = s.low.get_mut(v).expect("visited");
                *lv = (*lv).min(iw);
            }
        }
        if s.low[v] == s.index[v] {
            let mut scc = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                scc.push(w.to_owned());
                if w == v {
                    break;
                }
            }
            if scc.len() > 1 {
                scc.sort();
                s.out.push(scc);
            }
        }
    }
    let mut s = State {
        g,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        next: 0,
        out: Vec::new(),
    };
    for v in g.keys() {
        if !s.index.contains_key(v.as_str()) {
            visit(&mut s, v);
        }
    }
    s.out
}

/// One circle shown as the edges inside it, so the fix is readable from the failure.
fn describe(g: &BTreeMap<String, BTreeSet<String>>, scc: &[String]) -> String {
    let members: BTreeSet<&String> = scc.iter().collect();
    let edges: Vec<String> = scc
        .iter()
        .flat_map(|a| {
            g[a].iter().filter(|b| members.contains(b)).map(move |b| format!("{a} → {b}")).collect::<Vec<_>>()
        })
        .collect();
    format!("{{{}}}: {}", scc.join(", "), edges.join("; "))
}

fn assert_no_circle(crate_dir: &str) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join(crate_dir).join("src");
    let g = graph(&src);
    assert!(g.len() > 3, "read the modules of {}", src.display());
    let found = circles(&g);
    let shown: Vec<String> = found.iter().map(|c| describe(&g, c)).collect();
    assert!(found.is_empty(), "import circles in {crate_dir}/src:\n{}", shown.join("\n"));
}

#[test]
fn the_worker_crate_has_no_import_circle() {
    assert_no_circle(".");
}

#[test]
fn the_simulator_has_no_import_circle() {
    assert_no_circle("crates/sim");
}

#[test]
fn the_tools_have_no_import_circle() {
    assert_no_circle("crates/tools");
}

#[test]
fn the_checker_finds_a_circle_through_a_group_import_and_ignores_test_modules() {
    let g: BTreeMap<String, BTreeSet<String>> = [
        ("a", named_modules("use crate::{b::X, c};")),
        ("b", named_modules("use crate::d::Y;")),
        ("c", BTreeSet::new()),
        ("d", named_modules("fn f() { crate::a::g() }")),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    assert_eq!(circles(&g), vec![vec!["a".to_owned(), "b".to_owned(), "d".to_owned()]]);
    let dir = std::env::temp_dir().join(format!("layout-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("m.rs");
    std::fs::write(
        &file,
        "use crate::x::A;\n/// See [`crate::y`].\n#[cfg(test)]\nmod tests {\n    use crate::z::B;\n}\n",
    )
    .unwrap();
    assert_eq!(named_modules(&production_text(&file)), ["x".to_owned(), "y".to_owned()].into_iter().collect());
    let _ = std::fs::remove_dir_all(&dir);
}

/// Statements are built in one place, which knows whether they may be prepared by name: behind a
/// transaction pooler a named statement outlives its transaction on a server another client gets
/// next (`src/audit/db.rs`). Only `audit::Db` builds them; `src/audit/mod.rs` may, for the
/// sessions it opens on purpose (migrations, the direct-URL check), which never go through a pooler.
#[test]
fn every_statement_is_built_by_audit_db() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let allowed = [root.join("audit/db.rs"), root.join("audit/mod.rs")];
    let mut offenders = Vec::new();
    for path in rust_files(&root) {
        if allowed.contains(&path) {
            continue;
        }
        let text = production_text(&path);
        for needle in
            ["sqlx::query(", "sqlx::query_as(", "sqlx::query_scalar(", "sqlx::query_as::<", "sqlx::query_scalar::<"]
        {
            if text.contains(needle) {
                offenders.push(format!("{} builds a statement with {needle}", path.display()));
            }
        }
    }
    assert!(offenders.is_empty(), "build statements with audit::Db (db.query…):\n{}", offenders.join("\n"));
}
