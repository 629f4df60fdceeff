//! Which objects a filtered full migration creates (`-n/-N/-t/-T`), with
//! pg_dump's meaning: the selected schemas with everything in them, or the
//! selected tables with the objects that are pieces of them (indexes,
//! constraints, triggers, rules, policies, defaults, owned sequences).
//!
//! Where pg_dump would write a script that fails on an empty database,
//! the target here being one, we differ on purpose:
//! - what a selected object needs and no filter excludes (its schema, a
//!   type, a trigger function, a collation) comes along, and is named;
//! - so does a sequence a selected table's default calls without owning
//!   it (pagila's `actor_actor_id_seq`, a sequence shared by two tables or
//!   owned by a table left out): it is created and its value is set with
//!   the data, as for owned sequences (`pg::catalog::list_sequences` lists
//!   the same ones), and named as brought along;
//! - a foreign key or a partition/index ATTACH to a relation left out is
//!   left out, and named;
//! - extensions and procedural languages always come (they hold no user
//!   rows, and selected tables use their types);
//! - anything else a selected object needs that the filters leave out (a
//!   table a view reads, a sequence `--exclude-table` names, anything in a
//!   schema given to `-N`) stops the migration before anything is written.
//!   The message starts with that object (the cause) and the flag that
//!   fixes it; what falls only because a refused object falls (its primary
//!   key, its indexes) is not listed.
//!
//! Pure work on the model: the catalog reads are the caller's.

use std::collections::HashSet;

use super::model::SchemaModel;
use super::sort::ObjectKind;
use crate::error::{MigrationError, Result};
use crate::pg::quote;

/// What the filters select, as read from the source.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// pg_class oids of the relations in scope (tables, views, sequences...).
    pub relations: HashSet<u32>,
    /// pg_class oids of the relations an `--exclude-table` pattern names:
    /// never brought along.
    pub excluded_relations: HashSet<u32>,
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

/// A selected object that needs one the filters leave out.
struct Refusal {
    /// The object left out that is needed: a relation, or an object in a
    /// schema `-N` names.
    cause: usize,
    /// The object needing it.
    by: usize,
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
            let ns: &str = &o.key.namespace;
            match o.key.kind {
                _ if !o.part_of.is_empty() => false, // follows its owners below
                ObjectKind::DatabaseProperties | ObjectKind::Extension | ObjectKind::ProcLang => {
                    true
                }
                ObjectKind::Namespace => !sel.tables_only && sel.schemas.contains(&*o.key.name),
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
        // Pieces follow the objects they belong to, and fall with them.
        for i in 0..n {
            let o = &model.objects[i];
            if o.part_of.is_empty() || dropped[i] {
                continue;
            }
            if !keep[i] && o.part_of.iter().all(|&p| keep[p]) {
                keep[i] = true;
                changed = true;
            } else if keep[i] && o.part_of.iter().any(|&p| dropped[p]) {
                keep[i] = false;
                dropped[i] = true;
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
                let excluded = excluded_by(model, sel, j).is_some();
                if dropped[j] {
                    // Refused or left out itself: what needs it goes with
                    // it, and the message names j's cause, not this.
                    keep[i] = false;
                    dropped[i] = true;
                } else if droppable(oi.key.kind) && (relation(j) || !oj.part_of.is_empty()) {
                    keep[i] = false;
                    dropped[i] = true;
                    notes.push(format!(
                        "left out {}: it needs {}, which the filters leave out",
                        oi.describe, oj.describe
                    ));
                } else if relation(j) && oj.is_sequence() && !excluded {
                    keep[j] = true;
                    notes.push(format!(
                        "brought along {} (created, its value set with the data): {} needs it",
                        oj.describe, oi.describe
                    ));
                } else if relation(j) || !oj.part_of.is_empty() || excluded {
                    refusals.push(Refusal {
                        cause: owning_relation(model, j),
                        by: i,
                    });
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
        return Err(MigrationError::Config(refusal_message(
            model, sel, refusals,
        )));
    }
    model.retain(&keep);
    Ok(notes)
}

/// The relation an object is a piece of (following `part_of` up), or the
/// object itself.
fn owning_relation(model: &SchemaModel, mut i: usize) -> usize {
    for _ in 0..8 {
        match model.objects[i].part_of.first() {
            Some(&p) => i = p,
            None => break,
        }
    }
    i
}

/// How the filters exclude object `i`, when they name it: `-N` its schema,
/// or `-T` the relation.
fn excluded_by(model: &SchemaModel, sel: &Selection, i: usize) -> Option<String> {
    let o = &model.objects[i];
    let schema: &str = if o.key.kind == ObjectKind::Namespace {
        &o.key.name
    } else {
        &o.key.namespace
    };
    if sel.excluded_schemas.contains(schema) {
        return Some(format!(
            "is in schema {}, which --exclude-schema leaves out",
            quote::ident(schema)
        ));
    }
    if o.key.kind == ObjectKind::Table
        && o.part_of.is_empty()
        && sel.excluded_relations.contains(&o.key.oid)
    {
        return Some("is left out by --exclude-table".to_string());
    }
    None
}

/// The refusal, cause first: the first sentence names the object the
/// selection leaves out, what needs it, and the flags that fix it; the
/// other refusals follow.
fn refusal_message(model: &SchemaModel, sel: &Selection, mut refusals: Vec<Refusal>) -> String {
    let d = |i: usize| &*model.objects[i].describe;
    refusals.sort_by(|a, b| (d(a.cause), d(a.by)).cmp(&(d(b.cause), d(b.by))));
    refusals.dedup_by(|a, b| a.cause == b.cause && a.by == b.by);
    let first = &refusals[0];
    let (cause, by) = (
        &model.objects[first.cause],
        owning_relation(model, first.by),
    );
    let pattern = |o: &super::model::SchemaObject| quote::qualified(&o.key.namespace, &o.key.name);
    let add = match excluded_by(model, sel, first.cause) {
        Some(how) => format!(
            "{} {how}, and {} needs it: drop that {} ",
            cause.describe,
            d(first.by),
            if how.contains("schema") {
                "--exclude-schema"
            } else {
                "--exclude-table"
            }
        ),
        // -n and -t both narrow: under -n, it is its schema that is missing.
        None if sel.tables_only => format!(
            "{} is outside the selection, and {} needs it: add it with --table {} ",
            cause.describe,
            d(first.by),
            pattern(cause)
        ),
        None => format!(
            "{} is outside the selection, and {} needs it: add its schema with --schema {} ",
            cause.describe,
            d(first.by),
            quote::ident(&cause.key.namespace)
        ),
    };
    let by_obj = &model.objects[by];
    let leave_out = if by_obj.key.kind == ObjectKind::Table && by_obj.part_of.is_empty() {
        format!("--exclude-table {}", pattern(by_obj))
    } else {
        format!("--exclude-schema {}", quote::ident(&by_obj.key.namespace))
    };
    let mut msg = format!("{add}or leave {} out with {leave_out}", by_obj.describe);
    if refusals.len() > 1 {
        let rest: Vec<String> = refusals[1..]
            .iter()
            .map(|r| format!("{} needs {}", d(r.by), d(r.cause)))
            .collect();
        msg.push_str(&format!(
            ". The filters also leave out: {}",
            rest.join("; ")
        ));
    }
    msg
}
