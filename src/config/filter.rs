//! Which tables a migration covers: pg_dump-style name patterns.
//!
//! Patterns are turned into the same anchored POSIX regular expressions that
//! psql's `processSQLNamePattern` builds for pg_dump (with `force_escape`),
//! so the server does the matching with `~` exactly as pg_dump would, and a
//! DBA's `--table` / `--schema` arguments select the same objects.

// MigrationError is large by design (it keeps the server's full error
// report); boxing it is a crate-wide change to error.rs, not one for here.

use crate::error::{MigrationError, Result};

/// Include/exclude patterns, with pg_dump's syntax (`*`, `?`, `"quoted"`, `schema.table`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Filters {
    /// `--schema`: only these schemas (empty: all).
    pub schemas: Vec<String>,
    /// `--exclude-schema`.
    pub exclude_schemas: Vec<String>,
    /// `--table`: only these tables (empty: all).
    pub tables: Vec<String>,
    /// `--exclude-table`.
    pub exclude_tables: Vec<String>,
    /// `--exclude-table-data`: the table is created, its rows are not copied.
    /// Left out of the serialized form when empty, so the resume token's
    /// definition hash of a run without it stays what it was.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude_table_data: Vec<String>,
}

/// [`Filters`] as server-side regexes, ready for `nspname ~ $1`.
///
/// A table entry is `(schema regex, name regex)`; a `None` schema means the
/// pattern had no dot, which pg_dump reads as "any schema on the search path".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompiledFilters {
    /// Of [`Filters::schemas`].
    pub schemas: Vec<String>,
    /// Of [`Filters::exclude_schemas`].
    pub exclude_schemas: Vec<String>,
    /// Of [`Filters::tables`].
    pub tables: Vec<(Option<String>, String)>,
    /// Of [`Filters::exclude_tables`].
    pub exclude_tables: Vec<(Option<String>, String)>,
    /// Of [`Filters::exclude_table_data`].
    pub exclude_table_data: Vec<(Option<String>, String)>,
}

impl Filters {
    /// No pattern at all: the migration covers everything.
    pub fn is_empty(&self) -> bool {
        self.schemas.is_empty()
            && self.exclude_schemas.is_empty()
            && self.tables.is_empty()
            && self.exclude_tables.is_empty()
            && self.exclude_table_data.is_empty()
    }

    /// Whether the filters select objects (anything but `--exclude-table-data`).
    pub fn selects_objects(&self) -> bool {
        !(self.schemas.is_empty()
            && self.exclude_schemas.is_empty()
            && self.tables.is_empty()
            && self.exclude_tables.is_empty())
    }

    /// Each list sorted and deduplicated, so that two runs given the same
    /// patterns in another order hash alike (the resume token compares them).
    pub fn normalized(&self) -> Filters {
        let norm = |v: &Vec<String>| {
            let mut v = v.clone();
            v.sort();
            v.dedup();
            v
        };
        Filters {
            schemas: norm(&self.schemas),
            exclude_schemas: norm(&self.exclude_schemas),
            tables: norm(&self.tables),
            exclude_tables: norm(&self.exclude_tables),
            exclude_table_data: norm(&self.exclude_table_data),
        }
    }

    /// Converts every pattern; the error names the option and the pattern.
    pub fn compile(&self) -> Result<CompiledFilters> {
        let schemas = |flag: &str, v: &[String]| -> Result<Vec<String>> {
            v.iter()
                .map(|p| schema_regex(p).map_err(|e| bad_pattern(flag, p, &e)))
                .collect()
        };
        let tables = |flag: &str, v: &[String]| -> Result<Vec<(Option<String>, String)>> {
            v.iter()
                .map(|p| table_regex(p).map_err(|e| bad_pattern(flag, p, &e)))
                .collect()
        };
        Ok(CompiledFilters {
            schemas: schemas("--schema", &self.schemas)?,
            exclude_schemas: schemas("--exclude-schema", &self.exclude_schemas)?,
            tables: tables("--table", &self.tables)?,
            exclude_tables: tables("--exclude-table", &self.exclude_tables)?,
            exclude_table_data: tables("--exclude-table-data", &self.exclude_table_data)?,
        })
    }
}

fn bad_pattern(flag: &str, pattern: &str, reason: &str) -> MigrationError {
    MigrationError::Config(format!("invalid {flag} pattern \"{pattern}\": {reason}"))
}

/// A pg_dump `--table` pattern as `(schema regex, name regex)`, each anchored
/// `^(...)$`. The schema part is `None` when the pattern has no unquoted dot.
///
/// Outside double quotes letters fold to lower case, `*` is `.*` and `?` is
/// `.`; inside them every character is literal (`""` is one quote). Regex
/// metacharacters are always escaped, so a pattern can never be an invalid
/// or surprising regex. `database.schema.table` is refused: a migration
/// works on one database.
pub fn pattern_to_regex(pattern: &str) -> Result<(Option<String>, String)> {
    table_regex(pattern)
        .map_err(|e| MigrationError::Config(format!("invalid name pattern \"{pattern}\": {e}")))
}

/// A pg_dump `--schema` pattern as an anchored regex; a dot is refused,
/// since `database.schema` cannot name anything in the one database we read.
pub fn schema_pattern_to_regex(pattern: &str) -> Result<String> {
    schema_regex(pattern)
        .map_err(|e| MigrationError::Config(format!("invalid schema pattern \"{pattern}\": {e}")))
}

fn table_regex(pattern: &str) -> std::result::Result<(Option<String>, String), String> {
    let mut parts = split_pattern(pattern)?;
    match parts.len() {
        1 => Ok((None, anchor(&parts[0]))),
        2 => {
            let name = parts.pop().unwrap_or_default();
            Ok((Some(anchor(&parts[0])), anchor(&name)))
        }
        _ => Err("improper qualified name (too many dotted names)".to_string()),
    }
}

fn schema_regex(pattern: &str) -> std::result::Result<String, String> {
    let parts = split_pattern(pattern)?;
    if parts.len() != 1 {
        return Err("improper qualified name (too many dotted names)".to_string());
    }
    Ok(anchor(&parts[0]))
}

fn anchor(body: &str) -> String {
    format!("^({body})$")
}

/// The regex bodies of the dot-separated parts of `pattern`.
///
/// An empty pattern is refused: its regex `^()$` matches no object, so it is
/// always a mistake (usually an unset shell variable).
fn split_pattern(pattern: &str) -> std::result::Result<Vec<String>, String> {
    if pattern.is_empty() {
        return Err("empty pattern".to_string());
    }
    let mut parts = vec![String::new()];
    let mut in_quotes = false;
    let mut chars = pattern.chars().peekable();
    while let Some(c) = chars.next() {
        if !in_quotes && c == '.' {
            parts.push(String::new());
            continue;
        }
        let cur = parts.last_mut().expect("parts is never empty");
        match c {
            '"' if in_quotes && chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            '"' => in_quotes = !in_quotes,
            '*' if !in_quotes => cur.push_str(".*"),
            '?' if !in_quotes => cur.push('.'),
            c if !in_quotes && c.is_ascii_uppercase() => cur.push(c.to_ascii_lowercase()),
            c => {
                if "|*+?()[]{}.^$\\".contains(c) {
                    cur.push('\\');
                }
                cur.push(c);
            }
        }
    }
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(p: &str) -> (Option<String>, String) {
        pattern_to_regex(p).unwrap()
    }
    fn some(s: &str) -> Option<String> {
        Some(s.to_string())
    }

    #[test]
    fn plain_names_fold_to_lower_case() {
        assert_eq!(t("Orders"), (None, "^(orders)$".into()));
        assert_eq!(
            t("public.Orders"),
            (some("^(public)$"), "^(orders)$".into())
        );
    }

    #[test]
    fn wildcards() {
        assert_eq!(t("ord*"), (None, "^(ord.*)$".into()));
        assert_eq!(t("t?"), (None, "^(t.)$".into()));
        assert_eq!(t("sales.*"), (some("^(sales)$"), "^(.*)$".into()));
        assert_eq!(t("*.log_*"), (some("^(.*)$"), "^(log_.*)$".into()));
    }

    #[test]
    fn quotes_keep_case_and_make_everything_literal() {
        assert_eq!(t("\"MyTable\""), (None, "^(MyTable)$".into()));
        assert_eq!(t("\"a.b\""), (None, "^(a\\.b)$".into()));
        assert_eq!(
            t("\"My Schema\".\"T*\""),
            (some("^(My Schema)$"), "^(T\\*)$".into())
        );
        assert_eq!(t("\"x?\""), (None, "^(x\\?)$".into()));
        // Doubled quote inside quotes is one literal quote.
        assert_eq!(t("\"a\"\"b\""), (None, "^(a\"b)$".into()));
        // Quoting part of a name.
        assert_eq!(t("Foo\"Bar\"*"), (None, "^(fooBar.*)$".into()));
    }

    #[test]
    fn regex_metacharacters_are_escaped() {
        assert_eq!(t("a$b"), (None, "^(a\\$b)$".into()));
        assert_eq!(t("a+b"), (None, "^(a\\+b)$".into()));
        assert_eq!(t("t[]"), (None, "^(t\\[\\])$".into()));
        assert_eq!(t("(x)|y"), (None, "^(\\(x\\)\\|y)$".into()));
        assert_eq!(t("a^b\\c"), (None, "^(a\\^b\\\\c)$".into()));
        assert_eq!(t("a{2}"), (None, "^(a\\{2\\})$".into()));
    }

    #[test]
    fn non_ascii_is_kept() {
        assert_eq!(t("Ünïcödé"), (None, "^(Ünïcödé)$".into()));
    }

    #[test]
    fn too_many_dots_is_an_error() {
        let e = pattern_to_regex("db.public.t").unwrap_err();
        assert!(matches!(e, MigrationError::Config(_)));
        assert!(e.to_string().contains("too many dotted names"), "{e}");
        assert!(e.to_string().contains("db.public.t"), "{e}");
        // A quoted dot does not count.
        assert_eq!(t("\"a.b\".c"), (some("^(a\\.b)$"), "^(c)$".into()));
    }

    #[test]
    fn empty_pattern_is_an_error() {
        assert!(pattern_to_regex("").is_err());
        assert!(schema_pattern_to_regex("").is_err());
    }

    #[test]
    fn schema_patterns() {
        assert_eq!(schema_pattern_to_regex("Sales*").unwrap(), "^(sales.*)$");
        assert_eq!(schema_pattern_to_regex("\"A.B\"").unwrap(), "^(A\\.B)$");
        let e = schema_pattern_to_regex("db.sales").unwrap_err();
        assert!(matches!(e, MigrationError::Config(_)));
    }

    #[test]
    fn filters_is_empty_and_normalized() {
        let mut f = Filters::default();
        assert!(f.is_empty());
        f.tables = vec!["b".into(), "a".into(), "b".into()];
        f.exclude_schemas = vec!["z".into(), "y".into()];
        assert!(!f.is_empty());
        let n = f.normalized();
        assert_eq!(n.tables, vec!["a", "b"]);
        assert_eq!(n.exclude_schemas, vec!["y", "z"]);
        let g = Filters {
            tables: vec!["a".into(), "b".into()],
            exclude_schemas: vec!["y".into(), "z".into(), "z".into()],
            ..Filters::default()
        };
        assert_eq!(g.normalized(), n);
    }

    #[test]
    fn compile_converts_every_list() {
        let f = Filters {
            schemas: vec!["App*".into()],
            exclude_schemas: vec!["tmp".into()],
            tables: vec!["public.t1".into(), "t2".into()],
            exclude_tables: vec!["*.log".into()],
            exclude_table_data: vec!["audit.*".into()],
        };
        let c = f.compile().unwrap();
        assert_eq!(
            c.exclude_table_data,
            vec![(Some("^(audit)$".into()), "^(.*)$".into())]
        );
        assert_eq!(c.schemas, vec!["^(app.*)$"]);
        assert_eq!(c.exclude_schemas, vec!["^(tmp)$"]);
        assert_eq!(
            c.tables,
            vec![
                (some("^(public)$"), "^(t1)$".to_string()),
                (None, "^(t2)$".to_string())
            ]
        );
        assert_eq!(
            c.exclude_tables,
            vec![(some("^(.*)$"), "^(log)$".to_string())]
        );
    }

    #[test]
    fn compile_errors_name_the_option() {
        let f = Filters {
            exclude_tables: vec!["a.b.c".into()],
            ..Filters::default()
        };
        let e = f.compile().unwrap_err();
        assert!(matches!(e, MigrationError::Config(_)));
        assert!(e.to_string().contains("--exclude-table"), "{e}");
        let f = Filters {
            schemas: vec!["a.b".into()],
            ..Filters::default()
        };
        assert!(f.compile().unwrap_err().to_string().contains("--schema"));
    }
}
