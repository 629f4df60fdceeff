//! Where objects live: the tablespace of a table, materialized view or
//! index travels as a `SET default_tablespace` around its statement, as in
//! pg_dump's scripts (a `TABLESPACE` clause would have to be spliced into
//! `pg_get_indexdef` output, before a `WHERE` that may itself contain one).
//!
//! The names are the source's until [`place`] applies the user's choice
//! (`--tablespace-mapping`, `--no-tablespaces`); the target must then have
//! every name [`used`] lists. Pure text work: touches no server.

use std::collections::BTreeSet;

use super::{SchemaScript, Step};
use crate::pg::quote;

const PREFIX: &str = "SET default_tablespace = ";
const RESET: &str = "SET default_tablespace = '';";

/// What to do with the source's tablespace names.
#[derive(Debug, Clone, Default)]
pub struct Placement {
    /// `--no-tablespaces`: every object goes to the target database's default.
    pub none: bool,
    /// `--tablespace-mapping OLD=NEW`, in the order given.
    pub mapping: Vec<(String, String)>,
}

impl Placement {
    pub fn of(cfg: &crate::config::MigrationConfig) -> Self {
        Placement {
            none: cfg.no_tablespaces,
            mapping: cfg.tablespace_mapping.clone(),
        }
    }

    /// The name an object of source tablespace `name` gets, or `None` for
    /// the database default.
    pub fn map(&self, name: &str) -> Option<String> {
        if self.none {
            return None;
        }
        Some(
            self.mapping
                .iter()
                .find(|(old, _)| old == name)
                .map(|(_, new)| new.clone())
                .unwrap_or_else(|| name.to_string()),
        )
    }
}

/// `stmt`, run with `tablespace` as the default (none: unchanged).
pub fn wrap(tablespace: Option<&str>, stmt: String) -> String {
    match tablespace {
        Some(ts) => format!("{PREFIX}{};\n{stmt}\n{RESET}", quote::ident(ts)),
        None => stmt,
    }
}

/// The tablespace a [`wrap`]ped statement names, and the statement itself.
fn unwrap(s: &str) -> Option<(String, &str)> {
    let rest = s.strip_prefix(PREFIX)?;
    let (first, body) = rest.split_once('\n')?;
    let body = body.strip_suffix(RESET)?.strip_suffix('\n')?;
    Some((quote::unquote_ident(first.strip_suffix(';')?)?, body))
}

fn steps_mut(script: &mut SchemaScript) -> impl Iterator<Item = &mut Step> {
    script
        .pre_data
        .iter_mut()
        .chain(script.post_data.iter_mut())
        .chain(script.acl.iter_mut())
        .chain(script.last.iter_mut())
}

/// Apply the user's placement to every statement of `script`.
pub fn place(script: &mut SchemaScript, placement: &Placement) {
    if !placement.none && placement.mapping.is_empty() {
        return;
    }
    for step in steps_mut(script) {
        step.sql.rewrite(|s| {
            unwrap(s).map(|(ts, body)| wrap(placement.map(&ts).as_deref(), body.to_string()))
        });
    }
}

/// Statements naming `default` (the target database's own default
/// tablespace) run without a placement: the result is the same for a
/// table, and PostgreSQL refuses to place a partitioned relation in the
/// database default by name.
pub fn database_default(script: &mut SchemaScript, default: &str) {
    for step in steps_mut(script) {
        step.sql.rewrite(|s| {
            unwrap(s)
                .filter(|(ts, _)| ts == default)
                .map(|(_, body)| body.to_string())
        });
    }
}

/// Every tablespace the script puts objects in.
pub fn used(script: &SchemaScript) -> BTreeSet<String> {
    [
        &script.pre_data,
        &script.post_data,
        &script.acl,
        &script.last,
    ]
    .into_iter()
    .flatten()
    .flat_map(|step| step.sql.iter())
    .filter_map(|s| unwrap(s).map(|(ts, _)| ts))
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn script(sql: Vec<String>) -> SchemaScript {
        SchemaScript {
            pre_data: vec![Step {
                describe: "TABLE public.t".into(),
                sql: sql.iter().collect(),
                table: None,
                after_indexes: false,
                parallel: false,
            }],
            ..Default::default()
        }
    }

    #[test]
    fn wrapped_statements_are_mapped_or_unwrapped() {
        let stmt = "CREATE INDEX i ON public.t USING btree (a) WHERE (b = 'x\ny');".to_string();
        let mut s = script(vec![
            wrap(Some("Fast Disk"), stmt.clone()),
            wrap(Some("slow"), "CREATE TABLE public.t (a int);".into()),
            "COMMENT ON TABLE public.t IS 'SET default_tablespace = x;';".into(),
        ]);
        assert_eq!(
            used(&s).into_iter().collect::<Vec<_>>(),
            vec!["Fast Disk".to_string(), "slow".to_string()]
        );
        assert!(s.pre_data[0].sql[0].starts_with("SET default_tablespace = \"Fast Disk\";\n"));
        place(
            &mut s,
            &Placement {
                none: false,
                mapping: vec![("Fast Disk".into(), "nvme".into())],
            },
        );
        assert_eq!(
            used(&s).into_iter().collect::<Vec<_>>(),
            vec!["nvme".to_string(), "slow".to_string()]
        );
        assert_eq!(unwrap(&s.pre_data[0].sql[0]).unwrap().1, stmt);
        place(
            &mut s,
            &Placement {
                none: true,
                mapping: vec![],
            },
        );
        assert!(used(&s).is_empty());
        assert_eq!(s.pre_data[0].sql[0], stmt);
        assert_eq!(&s.pre_data[0].sql[1], "CREATE TABLE public.t (a int);");
    }

    #[test]
    fn the_database_default_is_not_named() {
        let mut s = script(vec![
            wrap(Some("pg_default"), "CREATE TABLE a ();".into()),
            wrap(Some("other"), "CREATE TABLE b ();".into()),
        ]);
        database_default(&mut s, "pg_default");
        assert_eq!(&s.pre_data[0].sql[0], "CREATE TABLE a ();");
        assert_eq!(
            used(&s).into_iter().collect::<Vec<_>>(),
            vec!["other".to_string()]
        );
    }

    #[test]
    fn no_placement_is_the_source_name() {
        let p = Placement::default();
        assert_eq!(p.map("ts1").as_deref(), Some("ts1"));
    }
}
