//! From a loaded [`SchemaModel`] to an ordered script: sort, split into
//! sections, and print or apply.
//!
//! Sections follow pg_restore's passes: pre-data (before the rows), post-data
//! (indexes, constraints, after the rows), then ACLs (a table whose owner
//! revoked their own INSERT must still load), then the last steps
//! (materialized view refreshes, which need data and final privileges).

use std::sync::Arc;
use thin_vec::ThinVec;
use tokio_postgres::Client;

use super::model::SchemaModel;
use super::sort::{self, ObjectKind, Section, SortKey};
pub use super::statements::Statements;
use crate::error::{MigrationError, Result};

/// One object's statements.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Step {
    /// What it creates, e.g. `TABLE public.t`; also its resume marker.
    pub describe: Box<str>,
    pub sql: Statements,
    /// Set on post-data steps that only need this table's rows (index
    /// builds, key constraints): the copier runs them as soon as the table
    /// is loaded, several at once, while other tables are still copying.
    ///
    /// Shared with the table's other steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<Arc<str>>,
    /// Among a table's steps: wait until its index builds are done (the
    /// `ADD CONSTRAINT ... USING INDEX` that attaches a built index).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub after_indexes: bool,
    /// A foreign key validation: the migration runs these last, several at
    /// once (see `SchemaObject::validate_later`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub parallel: bool,
}

/// The whole schema as ordered steps.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct SchemaScript {
    pub pre_data: Vec<Step>,
    pub post_data: Vec<Step>,
    pub acl: Vec<Step>,
    pub last: Vec<Step>,
    /// Dependency loops that had to be broken arbitrarily.
    pub warnings: Vec<String>,
    /// Source objects this version cannot reproduce yet (see `load::unsupported`).
    pub unsupported: Vec<String>,
    /// What the filters brought along or left out (see [`super::filter`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filter_notes: Vec<String>,
    /// Set on the target database after everything else, verify included
    /// (see [`super::model::DatabaseLimits`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database_limits: Option<super::model::DatabaseLimits>,
}

/// Which part of a script.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    PreData,
    PostData,
    Acl,
    Last,
}

/// Settings for a session that applies a script, as pg_dump's script header sets them.
pub const APPLY_SETTINGS: &str = crate::pg::session::DDL_SETTINGS;

impl SchemaScript {
    /// Order the model and split it into parts.
    pub fn plan(model: SchemaModel) -> Result<SchemaScript> {
        Self::plan_with(model, &super::ReadOptions::default())
    }

    /// As [`plan`](Self::plan), leaving out owners (`--no-owner`) or
    /// privileges (`--no-acl`) as asked.
    pub fn plan_with(mut model: SchemaModel, opts: &super::ReadOptions) -> Result<SchemaScript> {
        for o in model.objects.iter_mut() {
            if opts.no_owner {
                o.owner = None;
            }
            if opts.no_acl {
                o.acl.clear();
            }
        }
        // A refresh reads other materialized views: they must be refreshed first.
        let refresh_of: std::collections::HashMap<usize, usize> = model
            .objects
            .iter()
            .enumerate()
            .filter(|(_, o)| o.key.kind == ObjectKind::RefreshMatview)
            .filter_map(|(r, o)| o.deps.first().map(|&mv| (mv, r)))
            .collect();
        let mut deps = model.resolve_once();
        for (&mv, &r) in &refresh_of {
            let extra: Vec<usize> = deps[mv]
                .iter()
                .filter_map(|d| refresh_of.get(d).copied())
                .collect();
            deps[r].extend(extra);
        }
        split_pre_data_loops(&mut model, &mut deps);
        split_view_loops(&mut model, &mut deps);
        let section_of = |o: &super::model::SchemaObject| match o.key.kind {
            ObjectKind::RefreshMatview
            | ObjectKind::EventTrigger
            | ObjectKind::DatabaseProperties => Part::Last,
            _ if o.postponed => Part::PostData,
            k if k.section() == Section::PostData => Part::PostData,
            _ => Part::PreData,
        };
        let sections: Vec<Part> = model.objects.iter().map(section_of).collect();
        // Borrowed for the sort: moved out, or copied, they cost a new list
        // of 48-byte keys beside every object (5.5 MB at 25,000 tables).
        let keys: Vec<&SortKey> = model.objects.iter().map(|o| &o.key).collect();
        // Nothing in pre-data may wait for post-data: such an edge is a loop
        // pg_dump repairs (dummy view, postponed function); until those
        // repairs exist, the sorter breaks it and we report it.
        let (order, warnings) =
            sort::sort_with_repairs(&keys, &mut deps, &mut |_loop, _deps| false)
                .map_err(MigrationError::Internal)?;
        drop(keys);
        // The lists grow as the objects they are made of are freed: reserved
        // whole up front, they were the plan's peak at 25,000 tables, beside
        // every object still alive.
        let mut script = SchemaScript {
            warnings,
            database_limits: model.database_limits,
            ..Default::default()
        };
        // An object runs early, beside the copy, only when it is post-data and
        // everything it needs is pre-data or runs early on the same table.
        for &i in &order {
            let o = &model.objects[i];
            let early = o.data_of.is_some()
                && sections[i] == Part::PostData
                && deps[i].iter().all(|&d| {
                    sections[d] == Part::PreData || model.objects[d].data_of == o.data_of
                });
            if !early {
                model.objects[i].data_of = None;
            }
        }
        drop(deps);
        // The steps take each object's texts; the objects, one block of
        // memory, are freed together at the end.
        for i in order {
            let section = sections[i];
            let o = &mut model.objects[i];
            let table = o.data_of.take();
            let mut index_first = o.index_first.take();
            // Applied in order: build and attach in one step.
            let inline_index = if table.is_none() {
                index_first.take()
            } else {
                None
            };
            // The loaders' text, moved: its owner and comments join it.
            let mut sql = std::mem::take(&mut o.create);
            if let Some(index) = inline_index {
                sql.insert(0, index);
            }
            sql.extend(o.owner.take());
            sql.extend(std::mem::take(&mut o.comments));
            let after_indexes = index_first.is_some();
            if let Some(index) = index_first {
                script.post_data.push(Step {
                    describe: format!("INDEX FOR {}", o.describe).into(),
                    sql: [index].into_iter().collect(),
                    table: table.clone(),
                    after_indexes: false,
                    parallel: false,
                });
            }
            let validate = o.validate_later.take().map(|v| Step {
                describe: format!("VALIDATE {}", o.describe).into(),
                sql: [v].into_iter().collect(),
                table: None,
                after_indexes: false,
                parallel: true,
            });
            let acl = std::mem::take(&mut o.acl);
            if !acl.is_empty() {
                script.acl.push(Step {
                    describe: format!("ACL {}", o.describe).into(),
                    sql: acl.iter().collect(),
                    table: None,
                    after_indexes: false,
                    parallel: false,
                });
            }
            let step = Step {
                describe: std::mem::take(&mut o.describe),
                sql,
                table,
                after_indexes,
                parallel: false,
            };
            // What else the object holds in the heap goes now, not with the
            // object list at the end: the next steps' new texts (their
            // descriptions, a text grown by its owner) take its place
            // instead of growing the heap.
            o.key.name = Box::default();
            o.key.tiebreak = ThinVec::new();
            o.part_of = ThinVec::new();
            o.placeholder = None;
            if step.sql.is_empty() {
                continue;
            }
            match section {
                Part::Last => script.last.push(step),
                Part::PostData => script
                    .post_data
                    .extend([Some(step), validate].into_iter().flatten()),
                _ => script.pre_data.push(step),
            }
        }
        drop(model);
        // Step names are resume markers: they must be unique. Counted by
        // reference, so only the few repeated names are ever copied.
        let repeated: std::collections::HashSet<String> = {
            let mut seen: std::collections::HashMap<&str, u32> =
                std::collections::HashMap::with_capacity(
                    script.pre_data.len() + script.post_data.len() + script.acl.len(),
                );
            for part in [
                &script.pre_data,
                &script.post_data,
                &script.acl,
                &script.last,
            ] {
                for step in part {
                    *seen.entry(&*step.describe).or_insert(0) += 1;
                }
            }
            seen.into_iter()
                .filter(|(_, n)| *n > 1)
                .map(|(d, _)| d.to_string())
                .collect()
        };
        if !repeated.is_empty() {
            let mut seen: std::collections::HashMap<String, u32> = std::collections::HashMap::new();
            for part in [
                &mut script.pre_data,
                &mut script.post_data,
                &mut script.acl,
                &mut script.last,
            ] {
                for step in part.iter_mut().filter(|s| repeated.contains(&*s.describe)) {
                    let n = seen.entry(step.describe.to_string()).or_insert(0u32);
                    *n += 1;
                    if *n > 1 {
                        step.describe = format!("{} #{n}", step.describe).into();
                    }
                }
            }
        }
        Ok(script)
    }

    pub fn part(&self, p: Part) -> &[Step] {
        match p {
            Part::PreData => &self.pre_data,
            Part::PostData => &self.post_data,
            Part::Acl => &self.acl,
            Part::Last => &self.last,
        }
    }

    /// The script as SQL text, the way a DBA would read or apply it with psql.
    pub fn to_sql(&self, parts: &[Part]) -> String {
        let mut out =
            String::from("--\n-- Generated by pg_dbmigrator from the source's catalogs\n--\n\n");
        for s in APPLY_SETTINGS.split("; ") {
            out.push_str(s.trim_end_matches(';'));
            out.push_str(";\n");
        }
        for p in parts {
            let title = match p {
                Part::PreData => "pre-data",
                Part::PostData => "post-data",
                Part::Acl => "privileges",
                Part::Last => "final steps",
            };
            out.push_str(&format!("\n--\n-- Section: {title}\n--\n"));
            for step in self.part(*p) {
                out.push_str(&format!("\n-- {}\n", step.describe));
                for s in &step.sql {
                    out.push_str(s);
                    out.push('\n');
                }
            }
        }
        out
    }
}

/// Repair what would otherwise make pre-data wait for post-data, as
/// pg_dump does: a view that needs a post-data object (for example a primary
/// key its GROUP BY relies on) becomes a placeholder with the same columns
/// in pre-data plus its real definition in post-data; any other pre-data
/// object in that position (a materialized view, a function) moves to
/// post-data with everything that depends on it.
fn split_pre_data_loops(model: &mut SchemaModel, deps: &mut Vec<Vec<usize>>) {
    let is_post = |m: &SchemaModel, i: usize| {
        m.objects[i].postponed || m.objects[i].key.kind.section() == Section::PostData
    };
    // Iterate: postponing one object can push its dependents.
    loop {
        let mut changed = false;
        for i in 0..model.objects.len() {
            if is_post(model, i) {
                continue;
            }
            let post: Vec<usize> = deps[i]
                .iter()
                .copied()
                .filter(|&d| is_post(model, d))
                .collect();
            if post.is_empty() {
                continue;
            }
            changed = true;
            if model.objects[i].placeholder.is_some() {
                let post_set: Vec<bool> = (0..model.objects.len())
                    .map(|d| is_post(model, d))
                    .collect();
                split_view(model, deps, i, &|d| post_set[d]);
            } else {
                model.objects[i].postponed = true;
            }
        }
        if !changed {
            break;
        }
    }
}

/// Turn view `v` into its placeholder (same columns, no dependencies on
/// objects for which `drop_dep` holds) and add its real definition as a
/// post-data `CREATE OR REPLACE VIEW` that keeps every original dependency.
fn split_view(
    model: &mut SchemaModel,
    deps: &mut Vec<Vec<usize>>,
    v: usize,
    drop_dep: &dyn Fn(usize) -> bool,
) {
    let Some(placeholder) = model.objects[v].placeholder.take() else {
        return;
    };
    let o = &mut model.objects[v];
    let real: Statements = o
        .create
        .iter()
        .map(|s| s.replacen("CREATE VIEW", "CREATE OR REPLACE VIEW", 1))
        .collect();
    o.create = [placeholder].into_iter().collect();
    let mut rule = super::model::SchemaObject::new(
        ObjectKind::Rule,
        &o.key.namespace,
        &o.key.name,
        o.key.oid,
        format!("VIEW DEFINITION {}", o.describe.trim_start_matches("VIEW ")),
    );
    rule.create = real;
    rule.postponed = true;
    let mut rdeps = std::mem::take(&mut deps[v]);
    deps[v] = rdeps.iter().copied().filter(|&d| !drop_dep(d)).collect();
    rdeps.push(v);
    model.objects.push(rule);
    deps.push(rdeps);
}

/// Dependency loops through a view (a view calling a function whose
/// SQL-standard body reads that view): pg_dump's repair is a placeholder
/// view with the same columns, the real definition coming after the loop.
fn split_view_loops(model: &mut SchemaModel, deps: &mut Vec<Vec<usize>>) {
    for _ in 0..64 {
        let keys: Vec<&SortKey> = model.objects.iter().map(|o| &o.key).collect();
        let loops = match sort::topo_sort(&keys, deps) {
            Ok(_) => return,
            Err(loops) => loops,
        };
        let mut split_any = false;
        for lp in loops {
            if let Some(&v) = lp.iter().find(|&&i| model.objects[i].placeholder.is_some()) {
                let members = lp.clone();
                split_view(model, deps, v, &|d| members.contains(&d));
                split_any = true;
            }
        }
        if !split_any {
            return;
        }
    }
}

/// Apply steps in order on a target session already configured with
/// [`APPLY_SETTINGS`]. `done` is called after each step commits (resume markers).
pub async fn apply(
    target: &Client,
    steps: &[Step],
    done: &mut dyn FnMut(&Step) -> Result<()>,
) -> Result<()> {
    for step in steps {
        let sql = step.sql.joined();
        target.batch_execute(&sql).await.map_err(|e| {
            MigrationError::db(format!("creating {} on the target", step.describe), e)
        })?;
        done(step)?;
    }
    Ok(())
}
