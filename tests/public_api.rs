//! The library's public surface, checked in as `tests/public-api.txt`.
//!
//! An embedder's code breaks when an item it uses changes, so a change to
//! the surface should be a decision, not a side effect: this test renders
//! every public item (paths, signatures, fields, variants, trait impls)
//! from rustdoc's JSON output of the library alone (no default features)
//! and fails when the rendering differs from the checked-in file, or when
//! any listed item has no documentation (rustc's `missing_docs` does not
//! look at types re-exported from hidden modules; this does).
//!
//! After an intended change: `PG_DBMIGRATOR_BLESS=1 cargo test --test
//! public_api` rewrites the file; review its diff like code.
//!
//! rustdoc's JSON output is unstable, so the test builds it with
//! `RUSTC_BOOTSTRAP=1` in its own target dir (`target/public-api`). A
//! toolchain whose JSON layout differs shows here as a rendering change.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

const LISTING: &str = "tests/public-api.txt";

#[test]
fn the_public_api_is_the_checked_in_one_and_documented() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let json = build_rustdoc_json(root);
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let api = Api::new(&doc);
    let (lines, undocumented) = api.render();
    let rendered = lines.join("\n") + "\n";

    let listing = root.join(LISTING);
    if std::env::var_os("PG_DBMIGRATOR_BLESS").is_some() {
        std::fs::write(&listing, &rendered).unwrap();
    }
    let expected = std::fs::read_to_string(&listing).unwrap_or_default();
    let mut problems = String::new();
    if expected != rendered {
        let old: BTreeSet<&str> = expected.lines().collect();
        let new: BTreeSet<&str> = rendered.lines().collect();
        problems.push_str(&format!(
            "the public API differs from {LISTING}\n  removed:\n{}\n  added:\n{}\n\
             If the change is intended, run `PG_DBMIGRATOR_BLESS=1 cargo test --test public_api` \
             and commit the file.\n",
            old.difference(&new)
                .map(|l| format!("    - {l}"))
                .collect::<Vec<_>>()
                .join("\n"),
            new.difference(&old)
                .map(|l| format!("    + {l}"))
                .collect::<Vec<_>>()
                .join("\n"),
        ));
    }
    if !undocumented.is_empty() {
        problems.push_str(&format!(
            "public items without documentation:\n{}\n",
            undocumented
                .iter()
                .map(|l| format!("    {l}"))
                .collect::<Vec<_>>()
                .join("\n")
        ));
    }
    assert!(problems.is_empty(), "{problems}");
}

fn build_rustdoc_json(root: &Path) -> PathBuf {
    let target_dir = root.join("target").join("public-api");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(root)
        .env("RUSTC_BOOTSTRAP", "1")
        .env_remove("RUSTDOCFLAGS")
        .args([
            "rustdoc",
            "--lib",
            "--no-default-features",
            "--locked",
            "--target-dir",
        ])
        .arg(&target_dir)
        .args(["--", "-Z", "unstable-options", "--output-format", "json"])
        // Hidden items are in the output so that public types re-exported
        // from hidden modules can be rendered; the walk skips the rest.
        .arg("--document-hidden-items")
        .output()
        .expect("running cargo rustdoc");
    assert!(
        out.status.success(),
        "cargo rustdoc --output-format json failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    target_dir.join("doc").join("pg_dbmigrator.json")
}

struct Api<'a> {
    index: &'a serde_json::Map<String, Value>,
    root: String,
    /// This crate's types named in the rendered signatures and fields.
    named: std::cell::RefCell<BTreeSet<String>>,
}

impl<'a> Api<'a> {
    fn new(doc: &'a Value) -> Self {
        Api {
            index: doc["index"].as_object().expect("rustdoc JSON has an index"),
            root: id_key(&doc["root"]),
            named: Default::default(),
        }
    }

    fn item(&self, id: &Value) -> Option<&'a Value> {
        self.index.get(&id_key(id))
    }

    /// Every public path of every item, then one rendering per item under
    /// its shortest path, and a `pub use` line for each other path.
    fn render(&self) -> (Vec<String>, Vec<String>) {
        let mut paths: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let root = &self.index[&self.root];
        self.walk(root, "pg_dbmigrator", &mut paths, &mut BTreeSet::new());
        let mut lines = Vec::new();
        let mut undocumented = Vec::new();
        let public: BTreeSet<String> = paths.keys().cloned().collect();
        for (id, mut ps) in paths {
            if id.starts_with("use:") {
                lines.extend(ps.iter().map(|p| format!("pub use {p}")));
                continue;
            }
            ps.sort_by(|a, b| a.len().cmp(&b.len()).then(a.cmp(b)));
            ps.dedup();
            let canonical = &ps[0];
            for other in &ps[1..] {
                lines.push(format!("pub use {other} = {canonical}"));
            }
            let item = &self.index[&id];
            self.render_item(item, canonical, &mut lines, &mut undocumented);
        }
        lines.sort();
        lines.dedup();
        // A type an embedder meets in a signature but cannot name or read
        // the documentation of.
        for id in self.named.borrow().iter() {
            if !public.contains(id) {
                let name = self.index[id]["name"].as_str().unwrap_or("?");
                undocumented.push(format!("{name} (used in the API, but not public)"));
            }
        }
        undocumented.sort();
        undocumented.dedup();
        (lines, undocumented)
    }

    fn walk(
        &self,
        module: &Value,
        path: &str,
        paths: &mut BTreeMap<String, Vec<String>>,
        seen: &mut BTreeSet<String>,
    ) {
        let Some(items) = module["inner"]["module"]["items"].as_array() else {
            return;
        };
        for id in items {
            let Some(item) = self.item(id) else { continue };
            if hidden(item) {
                continue;
            }
            if let Some(u) = item["inner"].get("use") {
                if u["is_glob"].as_bool() == Some(true) {
                    if let Some(m) = self.item(&u["id"]) {
                        self.walk(m, path, paths, seen);
                    }
                    continue;
                }
                let name = u["name"].as_str().unwrap_or("?");
                match self.item(&u["id"]) {
                    Some(target) if hidden(target) => {}
                    Some(target) if target["crate_id"] == 0 => {
                        self.visit(target, &format!("{path}::{name}"), paths, seen)
                    }
                    // A re-export of another crate's item.
                    _ => paths
                        .entry(format!("use:{path}::{name}"))
                        .or_default()
                        .push(format!(
                            "{path}::{name} (from {})",
                            u["source"].as_str().unwrap_or("?")
                        )),
                }
                continue;
            }
            let name = item["name"].as_str().unwrap_or("?");
            self.visit(item, &format!("{path}::{name}"), paths, seen);
        }
    }

    fn visit(
        &self,
        item: &Value,
        path: &str,
        paths: &mut BTreeMap<String, Vec<String>>,
        seen: &mut BTreeSet<String>,
    ) {
        let id = id_key(&item["id"]);
        paths.entry(id.clone()).or_default().push(path.to_string());
        if item["inner"].get("module").is_some() && seen.insert(id) {
            self.walk(item, path, paths, seen);
        }
    }

    fn render_item(
        &self,
        item: &Value,
        path: &str,
        lines: &mut Vec<String>,
        undocumented: &mut Vec<String>,
    ) {
        let documented = |it: &Value, what: &str, undocumented: &mut Vec<String>| {
            if it["docs"].as_str().is_none_or(|d| d.trim().is_empty()) {
                undocumented.push(what.to_string());
            }
        };
        let inner = &item["inner"];
        let kind = inner
            .as_object()
            .and_then(|o| o.keys().next().cloned())
            .unwrap_or_default();
        let attrs = self.attrs(item);
        match kind.as_str() {
            "module" => {
                lines.push(format!("pub mod {path}"));
                documented(item, path, undocumented);
            }
            "struct" => {
                let s = &inner["struct"];
                lines.push(format!(
                    "{attrs}pub struct {path}{}",
                    self.generics(&s["generics"])
                ));
                documented(item, path, undocumented);
                let kind = &s["kind"];
                let fields = kind["plain"]["fields"]
                    .as_array()
                    .or(kind["tuple"].as_array())
                    .cloned()
                    .unwrap_or_default();
                for (i, f) in fields.iter().enumerate() {
                    let Some(f) = self.item(f).filter(|f| !hidden(f)) else {
                        continue;
                    };
                    let name = f["name"]
                        .as_str()
                        .map(str::to_string)
                        .unwrap_or(i.to_string());
                    let what = format!("{path}::{name}");
                    lines.push(format!(
                        "pub field {what}: {}",
                        self.ty(&f["inner"]["struct_field"])
                    ));
                    documented(f, &what, undocumented);
                }
                self.impls(&s["impls"], path, lines, undocumented);
            }
            "enum" => {
                let e = &inner["enum"];
                lines.push(format!(
                    "{attrs}pub enum {path}{}",
                    self.generics(&e["generics"])
                ));
                documented(item, path, undocumented);
                for v in e["variants"].as_array().into_iter().flatten() {
                    let Some(v) = self.item(v).filter(|v| !hidden(v)) else {
                        continue;
                    };
                    let what = format!("{path}::{}", v["name"].as_str().unwrap_or("?"));
                    let vk = &v["inner"]["variant"]["kind"];
                    let shape = if let Some(fields) = vk["struct"]["fields"].as_array() {
                        let fs: Vec<String> = fields
                            .iter()
                            .filter_map(|f| self.item(f))
                            .map(|f| {
                                let fwhat =
                                    format!("{what}::{}", f["name"].as_str().unwrap_or("?"));
                                documented(f, &fwhat, undocumented);
                                format!(
                                    "{}: {}",
                                    f["name"].as_str().unwrap_or("?"),
                                    self.ty(&f["inner"]["struct_field"])
                                )
                            })
                            .collect();
                        format!(" {{ {} }}", fs.join(", "))
                    } else if let Some(fields) = vk["tuple"].as_array() {
                        let fs: Vec<String> = fields
                            .iter()
                            .map(|f| match self.item(f) {
                                Some(f) => self.ty(&f["inner"]["struct_field"]),
                                None => "_".into(),
                            })
                            .collect();
                        format!("({})", fs.join(", "))
                    } else {
                        String::new()
                    };
                    lines.push(format!("{}pub variant {what}{shape}", self.attrs(v)));
                    documented(v, &what, undocumented);
                }
                self.impls(&e["impls"], path, lines, undocumented);
            }
            "function" => {
                lines.push(self.function(&inner["function"], path));
                documented(item, path, undocumented);
            }
            "type_alias" => {
                let t = &inner["type_alias"];
                lines.push(format!(
                    "pub type {path}{} = {}",
                    self.generics(&t["generics"]),
                    self.ty(&t["type"])
                ));
                documented(item, path, undocumented);
            }
            "constant" => {
                let c = &inner["constant"];
                lines.push(format!("pub const {path}: {}", self.ty(&c["type"])));
                documented(item, path, undocumented);
            }
            "static" => {
                lines.push(format!(
                    "pub static {path}: {}",
                    self.ty(&inner["static"]["type"])
                ));
                documented(item, path, undocumented);
            }
            "trait" => {
                lines.push(format!("pub trait {path}"));
                documented(item, path, undocumented);
                for m in inner["trait"]["items"].as_array().into_iter().flatten() {
                    if let Some(m) = self.item(m) {
                        let what = format!("{path}::{}", m["name"].as_str().unwrap_or("?"));
                        if let Some(f) = m["inner"].get("function") {
                            lines.push(self.function(f, &what));
                        }
                        documented(m, &what, undocumented);
                    }
                }
            }
            "macro" => {
                lines.push(format!("macro {path}!"));
                documented(item, path, undocumented);
            }
            other => lines.push(format!("{other} {path}")),
        }
    }

    fn attrs(&self, item: &Value) -> String {
        let non_exhaustive = item["attrs"].as_array().into_iter().flatten().any(|a| {
            a.as_str() == Some("non_exhaustive") || a.to_string().contains("non_exhaustive")
        });
        if non_exhaustive {
            "#[non_exhaustive] ".into()
        } else {
            String::new()
        }
    }

    fn impls(
        &self,
        impls: &Value,
        path: &str,
        lines: &mut Vec<String>,
        undocumented: &mut Vec<String>,
    ) {
        for i in impls.as_array().into_iter().flatten() {
            let Some(imp) = self.item(i).filter(|i| !hidden(i)) else {
                continue;
            };
            let imp = &imp["inner"]["impl"];
            if imp["is_synthetic"].as_bool() == Some(true) || !imp["blanket_impl"].is_null() {
                continue;
            }
            if imp["trait"].is_null() {
                for m in imp["items"].as_array().into_iter().flatten() {
                    let Some(m) = self.item(m) else { continue };
                    if m["visibility"] != "public" || hidden(m) {
                        continue;
                    }
                    let what = format!("{path}::{}", m["name"].as_str().unwrap_or("?"));
                    if let Some(f) = m["inner"].get("function") {
                        lines.push(self.function(f, &what));
                    } else if let Some(c) = m["inner"].get("assoc_const") {
                        lines.push(format!("pub const {what}: {}", self.ty(&c["type"])));
                    } else {
                        lines.push(format!("pub item {what}"));
                    }
                    documented_item(m, &what, undocumented);
                }
            } else {
                let tr = &imp["trait"];
                lines.push(format!(
                    "impl{} {}{} for {path}",
                    self.generics(&imp["generics"]),
                    last(tr["path"].as_str().unwrap_or("?")),
                    self.args(&tr["args"])
                ));
            }
        }
    }

    fn function(&self, f: &Value, path: &str) -> String {
        let h = &f["header"];
        let mut s = String::from("pub ");
        if h["is_const"] == true {
            s.push_str("const ");
        }
        if h["is_async"] == true {
            s.push_str("async ");
        }
        if h["is_unsafe"] == true {
            s.push_str("unsafe ");
        }
        s.push_str(&format!("fn {path}{}(", self.generics(&f["generics"])));
        let inputs: Vec<String> = f["sig"]["inputs"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| {
                let name = p[0].as_str().unwrap_or("_");
                let ty = self.ty(&p[1]);
                match (name, ty.as_str()) {
                    ("self", "Self") => "self".into(),
                    ("self", "&Self") => "&self".into(),
                    ("self", "&mut Self") => "&mut self".into(),
                    _ => format!("{name}: {ty}"),
                }
            })
            .collect();
        s.push_str(&inputs.join(", "));
        s.push(')');
        if !f["sig"]["output"].is_null() {
            s.push_str(&format!(" -> {}", self.ty(&f["sig"]["output"])));
        }
        s
    }

    fn generics(&self, g: &Value) -> String {
        let params: Vec<String> = g["params"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["kind"]["type"]["is_synthetic"] != true)
            .map(|p| {
                let name = p["name"].as_str().unwrap_or("?").to_string();
                let bounds = self.bounds(&p["kind"]["type"]["bounds"]);
                if bounds.is_empty() {
                    name
                } else {
                    format!("{name}: {bounds}")
                }
            })
            .collect();
        let mut s = if params.is_empty() {
            String::new()
        } else {
            format!("<{}>", params.join(", "))
        };
        let wheres: Vec<String> = g["where_predicates"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|w| {
                let b = &w["bound_predicate"];
                (!b.is_null())
                    .then(|| format!("{}: {}", self.ty(&b["type"]), self.bounds(&b["bounds"])))
            })
            .collect();
        if !wheres.is_empty() {
            s.push_str(&format!(" where {}", wheres.join(", ")));
        }
        s
    }

    fn bounds(&self, b: &Value) -> String {
        b.as_array()
            .into_iter()
            .flatten()
            .map(|b| {
                if let Some(t) = b.get("trait_bound") {
                    let tr = &t["trait"];
                    format!(
                        "{}{}",
                        last(tr["path"].as_str().unwrap_or("?")),
                        self.args(&tr["args"])
                    )
                } else if let Some(l) = b.get("outlives") {
                    l.as_str().unwrap_or("'?").to_string()
                } else {
                    "?".into()
                }
            })
            .collect::<Vec<_>>()
            .join(" + ")
    }

    fn args(&self, a: &Value) -> String {
        if let Some(ab) = a.get("angle_bracketed") {
            let mut parts: Vec<String> = ab["args"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|x| {
                    if let Some(t) = x.get("type") {
                        self.ty(t)
                    } else if let Some(l) = x.get("lifetime") {
                        l.as_str().unwrap_or("'?").to_string()
                    } else {
                        "_".into()
                    }
                })
                .collect();
            for c in ab["constraints"].as_array().into_iter().flatten() {
                let name = c["name"].as_str().unwrap_or("?");
                if let Some(t) = c["binding"].get("equality").and_then(|e| e.get("type")) {
                    parts.push(format!("{name} = {}", self.ty(t)));
                } else {
                    parts.push(format!(
                        "{name}: {}",
                        self.bounds(&c["binding"]["constraint"])
                    ));
                }
            }
            if parts.is_empty() {
                String::new()
            } else {
                format!("<{}>", parts.join(", "))
            }
        } else if let Some(p) = a.get("parenthesized") {
            let ins: Vec<String> = p["inputs"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|t| self.ty(t))
                .collect();
            let out = if p["output"].is_null() {
                String::new()
            } else {
                format!(" -> {}", self.ty(&p["output"]))
            };
            format!("({}){out}", ins.join(", "))
        } else {
            String::new()
        }
    }

    fn ty(&self, t: &Value) -> String {
        if let Some(p) = t.get("resolved_path") {
            if let Some(item) = self.item(&p["id"]).filter(|i| i["crate_id"] == 0) {
                if item["inner"].get("struct").is_some() || item["inner"].get("enum").is_some() {
                    self.named.borrow_mut().insert(id_key(&p["id"]));
                }
            }
            return format!(
                "{}{}",
                last(p["path"].as_str().unwrap_or("?")),
                self.args(&p["args"])
            );
        }
        if let Some(g) = t.get("generic") {
            return g.as_str().unwrap_or("?").to_string();
        }
        if let Some(p) = t.get("primitive") {
            return p.as_str().unwrap_or("?").to_string();
        }
        if let Some(r) = t.get("borrowed_ref") {
            let lt = r["lifetime"]
                .as_str()
                .map(|l| format!("{l} "))
                .unwrap_or_default();
            let m = if r["is_mutable"] == true { "mut " } else { "" };
            return format!("&{lt}{m}{}", self.ty(&r["type"]));
        }
        if let Some(ts) = t.get("tuple") {
            let parts: Vec<String> = ts
                .as_array()
                .into_iter()
                .flatten()
                .map(|x| self.ty(x))
                .collect();
            return format!("({})", parts.join(", "));
        }
        if let Some(s) = t.get("slice") {
            return format!("[{}]", self.ty(s));
        }
        if let Some(a) = t.get("array") {
            return format!(
                "[{}; {}]",
                self.ty(&a["type"]),
                a["len"].as_str().unwrap_or("?")
            );
        }
        if let Some(i) = t.get("impl_trait") {
            return format!("impl {}", self.bounds(i));
        }
        if let Some(d) = t.get("dyn_trait") {
            let traits: Vec<String> = d["traits"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|x| {
                    let tr = &x["trait"];
                    format!(
                        "{}{}",
                        last(tr["path"].as_str().unwrap_or("?")),
                        self.args(&tr["args"])
                    )
                })
                .collect();
            let lt = d["lifetime"]
                .as_str()
                .map(|l| format!(" + {l}"))
                .unwrap_or_default();
            return format!("dyn {}{lt}", traits.join(" + "));
        }
        if let Some(q) = t.get("qualified_path") {
            return format!(
                "<{} as {}>::{}",
                self.ty(&q["self_type"]),
                last(q["trait"]["path"].as_str().unwrap_or("?")),
                q["name"].as_str().unwrap_or("?")
            );
        }
        if let Some(p) = t.get("raw_pointer") {
            let m = if p["is_mutable"] == true {
                "mut"
            } else {
                "const"
            };
            return format!("*{m} {}", self.ty(&p["type"]));
        }
        if let Some(f) = t.get("function_pointer") {
            let ins: Vec<String> = f["sig"]["inputs"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| self.ty(&p[1]))
                .collect();
            let out = if f["sig"]["output"].is_null() {
                String::new()
            } else {
                format!(" -> {}", self.ty(&f["sig"]["output"]))
            };
            return format!("fn({}){out}", ins.join(", "));
        }
        if t.get("infer").is_some() {
            return "_".into();
        }
        format!("?{t}")
    }
}

fn hidden(item: &Value) -> bool {
    item["attrs"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|a| a.to_string().contains("doc(hidden)"))
}

fn documented_item(it: &Value, what: &str, undocumented: &mut Vec<String>) {
    if it["docs"].as_str().is_none_or(|d| d.trim().is_empty()) {
        undocumented.push(what.to_string());
    }
}

fn last(path: &str) -> &str {
    path.rsplit("::").next().unwrap_or(path)
}

fn id_key(id: &Value) -> String {
    match id {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}
