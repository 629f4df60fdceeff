//! Which objects a filtered full migration creates (`-n/-N/-t/-T`), with
//! pg_dump's meaning: the selected schemas with everything in them, or the
//! selected tables with the objects that are pieces of them (indexes,
//! constraints, triggers, rules, policies, defaults, owned sequences).
//!
//! Where pg_dump would write a script that fails on an empty database,
//! the target here being one, we differ on purpose:
//! - what a selected object needs and no filter excludes (its schema, a
//!   type, a trigger function, a collation) comes along, and is named;
//! - a foreign key or a partition/index ATTACH to a relation left out is
//!   left out, and named;
//! - extensions and procedural languages always come (they hold no user
//!   rows, and selected tables use their types);
//! - anything else a selected object needs that the filters exclude (a
//!   table a view reads, a sequence a default calls, a schema given to
//!   `-N`) stops the migration before anything is written, naming both.
//!
//! Pure work on the model: the catalog reads are the caller's.

use std::collections::HashSet;

use super::model::SchemaModel;
use super::sort::ObjectKind;
use crate::error::{MigrationError, Result};

/// What the filters select, as read from the source.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// pg_class oids of the relations in scope (tables, views, sequences...).
    pub relations: HashSet<u32>,
    /// Schemas in scope under `-n` / `-N`.
    pub schemas: HashSet<String>,
    /// Schemas given to `-N`: nothing in them comes along.
    pub excluded_schemas: HashSet<String>,
    /// `-t` was given: tables only, nothing else by schema.
    pub tables_only: bool,
    /// Neither `-n` nor `-t` (pg_dump's include_everything): objects outside
    /// any schema (casts, servers, publications, event triggers) come too.
    pub everything: bool,
}

/// Objects that exist only beside others and are dropped, not refused,
/// when one of those is left out.
fn droppable(kind: ObjectKind) -> bool {
    matches!(
        kind,
        ObjectKind::FkConstraint | ObjectKind::TableAttach | ObjectKind::IndexAttach
    )
}

/// Keep only what `sel` selects. Returns notes for the user: what came
/// along and what was left out beside a selected object.
pub fn apply(model: &mut SchemaModel, sel: &Selection) -> Result<Vec<String>> {
    let deps = model.resolve();
    let n = model.objects.len();
    let relation = |i: usize| {
        let o = &model.objects[i];
        o.key.kind == ObjectKind::Table && o.part_of.is_empty()
    };
    let mut keep: Vec<bool> = model
        .objects
        .iter()
        .enumerate()
        .map(|(i, o)| {
            let ns = o.key.namespace.as_str();
            match o.key.kind {
                _ if !o.part_of.is_empty() => false, // follows its owners below
                ObjectKind::DatabaseProperties | ObjectKind::Extension | ObjectKind::ProcLang => {
                    true
                }
                ObjectKind::Namespace => !sel.tables_only && sel.schemas.contains(&o.key.name),
                ObjectKind::Table if relation(i) => sel.relations.contains(&o.key.oid),
                _ if ns.is_empty() => sel.everything,
                _ => !sel.tables_only && sel.schemas.contains(ns),
            }
        })
        .collect();
    let mut dropped = vec![false; n];
    let mut notes = Vec::new();
    let mut refusals = Vec::new();
    loop {
        let mut changed = false;
        // Pieces follow the objects they belong to.
        for i in 0..n {
            let o = &model.objects[i];
            if !keep[i]
                && !dropped[i]
                && !o.part_of.is_empty()
                && o.part_of.iter().all(|&p| keep[p])
            {
                keep[i] = true;
                changed = true;
            }
        }
        // What a kept object needs comes along, unless the filters exclude it.
        for i in 0..n {
            if !keep[i] {
                continue;
            }
            for &j in &deps[i] {
                if keep[j] || !keep[i] {
                    continue;
                }
                let (oi, oj) = (&model.objects[i], &model.objects[j]);
                let excluded_schema = sel.excluded_schemas.contains(&oj.key.namespace)
                    || (oj.key.kind == ObjectKind::Namespace
                        && sel.excluded_schemas.contains(&oj.key.name));
                if droppable(oi.key.kind) && (relation(j) || !oj.part_of.is_empty()) {
                    keep[i] = false;
                    dropped[i] = true;
                    notes.push(format!(
                        "left out {}: it needs {}, which the filters leave out",
                        oi.describe, oj.describe
                    ));
                } else if relation(j) || !oj.part_of.is_empty() || excluded_schema {
                    refusals.push(format!("{} needs {}", oi.describe, oj.describe));
                    dropped[i] = true;
                    keep[i] = false;
                } else {
                    keep[j] = true;
                    notes.push(format!(
                        "also created {}: {} needs it",
                        oj.describe, oi.describe
                    ));
                }
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    if !refusals.is_empty() {
        refusals.sort();
        refusals.dedup();
        return Err(MigrationError::Config(format!(
            "the filters select objects that need others they leave out: {}. \
             Add those to the selection (--table / --schema) or leave the objects that need them out (--exclude-table / --exclude-schema)",
            refusals.join("; ")
        )));
    }
    model.retain(&keep);
    Ok(notes)
}
