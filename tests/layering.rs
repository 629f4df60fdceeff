//! The crate's layers hold (see ARCHITECTURE.md): foundations import no
//! stage or orchestrator, stages import no orchestrator, and no two
//! top-level modules import each other, directly or around a loop. Read
//! from the `crate::` paths of every source file (its unit tests and doc
//! comments left out), so a new upward import fails here with its file.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Each top-level module and its layer: 0 foundations, 1 stages,
/// 2 orchestrators, 3 the cluster orchestrator above them. `lib` is the
/// crate root (the `Migrator` dispatch).
const LAYERS: &[(&str, u8)] = &[
    ("error", 0),
    ("config", 0),
    ("pg", 0),
    ("resume", 0),
    ("progress", 0),
    ("context", 0),
    ("workers", 0),
    ("faults", 0),
    ("recorded", 0),
    ("testkit", 0),
    ("schema", 1),
    ("globals", 1),
    ("copy", 1),
    ("archive", 1),
    ("verify", 1),
    ("replication", 1),
    ("target", 1),
    ("report", 1),
    ("migrate", 2),
    ("online", 2),
    ("fallback", 2),
    ("dump", 2),
    ("restore", 2),
    ("plan", 2),
    ("cluster", 3),
    ("lib", 3),
];

fn layer_name(l: u8) -> &'static str {
    [
        "foundation",
        "stage",
        "orchestrator",
        "cluster orchestrator",
    ][l as usize]
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            if p.file_name().is_some_and(|n| n != "bin") {
                rust_files(&p, out);
            }
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The top-level module a file under `src/` belongs to.
fn component(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy();
    first.trim_end_matches(".rs").to_string()
}

/// The file's code without its unit tests, comments and doc comments.
fn code_of(text: &str) -> String {
    let cut = text
        .find("#[cfg(test)]\nmod tests")
        .map_or(text, |i| &text[..i]);
    cut.lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The top-level modules a piece of code names through `crate::`.
fn imports(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        let after = &rest[i + "crate::".len()..];
        let name: String = after
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        let before = rest[..i].chars().last();
        // `pg_dbmigrator::...` and the like are not `crate::`.
        if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') && !name.is_empty() {
            out.insert(name);
        }
        rest = after;
    }
    out
}

/// Component -> components it imports, and each edge's first file.
fn graph() -> BTreeMap<String, BTreeMap<String, String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut g: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for f in files {
        let from = component(&src, &f);
        let code = code_of(&std::fs::read_to_string(&f).unwrap());
        let entry = g.entry(from.clone()).or_default();
        for to in imports(&code) {
            if to != from {
                entry
                    .entry(to)
                    .or_insert_with(|| f.strip_prefix(&src).unwrap().display().to_string());
            }
        }
    }
    g
}

fn layer_of(c: &str) -> Option<u8> {
    LAYERS.iter().find(|(n, _)| *n == c).map(|(_, l)| *l)
}

#[test]
fn every_module_has_a_layer() {
    for c in graph().keys() {
        assert!(
            layer_of(c).is_some(),
            "src/{c} has no layer: add it to LAYERS here and to ARCHITECTURE.md"
        );
    }
}

#[test]
fn no_module_imports_a_higher_layer() {
    let mut wrong = Vec::new();
    for (from, tos) in graph() {
        let Some(lf) = layer_of(&from) else { continue };
        for (to, file) in tos {
            let Some(lt) = layer_of(&to) else { continue };
            if lt > lf {
                wrong.push(format!(
                    "src/{file}: a {} imports the {} `{to}`",
                    layer_name(lf),
                    layer_name(lt)
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "upward imports:\n{}", wrong.join("\n"));
}

#[test]
fn top_level_modules_import_each_other_in_no_loop() {
    let g = graph();
    // Depth-first search for a back edge; the loop is named with its files.
    fn visit(
        g: &BTreeMap<String, BTreeMap<String, String>>,
        n: &str,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| p == n) {
            let mut l = path[i..].to_vec();
            l.push(n.to_string());
            return Some(l);
        }
        if done.contains(n) {
            return None;
        }
        path.push(n.to_string());
        for to in g
            .get(n)
            .map(|m| m.keys().cloned().collect::<Vec<_>>())
            .unwrap_or_default()
        {
            if let Some(l) = visit(g, &to, path, done) {
                return Some(l);
            }
        }
        path.pop();
        done.insert(n.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for n in g.keys() {
        if let Some(l) = visit(&g, n, &mut Vec::new(), &mut done) {
            let steps: Vec<String> = l
                .windows(2)
                .map(|w| format!("{} -> {} (src/{})", w[0], w[1], g[&w[0]][&w[1]]))
                .collect();
            panic!("import loop:\n{}", steps.join("\n"));
        }
    }
}

#[test]
fn the_reader_sees_imports() {
    // The parser itself: a test that cannot fail proves nothing.
    let code = code_of(
        "use crate::pg::quote;\n/// see [`crate::migrate`]\nlet x = crate::copy::plan(); // crate::dump\n#[cfg(test)]\nmod tests { use crate::online; }",
    );
    assert_eq!(
        imports(&code).into_iter().collect::<Vec<_>>(),
        vec!["copy".to_string(), "pg".to_string()]
    );
}

/// The binary's crates are optional, behind the default `cli` feature, and
/// the library never names them: `default-features = false` embeds the
/// library alone (issue 23: an embedder's tree without clap or anyhow).
#[test]
fn the_library_compiles_without_the_clis_crates() {
    let manifest =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml")).unwrap();
    let cli = [
        "clap",
        "clap_complete",
        "clap_mangen",
        "anyhow",
        "toml",
        "tracing-subscriber",
    ];
    for dep in cli {
        let line = manifest
            .lines()
            .find(|l| l.starts_with(&format!("{dep} =")))
            .unwrap_or_else(|| panic!("{dep} is not a dependency any more: update this test"));
        assert!(
            line.contains("optional = true"),
            "{dep} must be optional (behind the `cli` feature): {line}"
        );
        assert!(
            manifest.contains(&format!("\"dep:{dep}\"")),
            "the `cli` feature must enable {dep}"
        );
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    for f in files {
        let code = code_of(&std::fs::read_to_string(&f).unwrap());
        let file = f.strip_prefix(&src).unwrap().display().to_string();
        for dep in cli {
            let name = dep.replace('-', "_");
            assert!(
                !code.contains(&format!("{name}::")) && !code.contains(&format!("use {name}")),
                "src/{file} names {dep}, which the library may not use"
            );
        }
    }
}
