//! The one place identifiers and literals are quoted. Never build SQL by hand
//! with `format!("\"{}\"")`: call these.

/// Words that must be quoted to be used as a column or table name: PostgreSQL's
/// reserved, type/function-name and column-name keywords (unreserved ones need
/// no quoting).
const KEYWORDS: &[&str] = &[
    "all",
    "analyse",
    "analyze",
    "and",
    "any",
    "array",
    "as",
    "asc",
    "asymmetric",
    "authorization",
    "between",
    "bigint",
    "binary",
    "bit",
    "boolean",
    "both",
    "case",
    "cast",
    "char",
    "character",
    "check",
    "coalesce",
    "collate",
    "collation",
    "column",
    "concurrently",
    "constraint",
    "create",
    "cross",
    "current_catalog",
    "current_date",
    "current_role",
    "current_schema",
    "current_time",
    "current_timestamp",
    "current_user",
    "dec",
    "decimal",
    "default",
    "deferrable",
    "desc",
    "distinct",
    "do",
    "else",
    "end",
    "except",
    "exists",
    "extract",
    "false",
    "fetch",
    "float",
    "for",
    "foreign",
    "freeze",
    "from",
    "full",
    "grant",
    "greatest",
    "group",
    "grouping",
    "having",
    "ilike",
    "in",
    "initially",
    "inner",
    "inout",
    "int",
    "integer",
    "intersect",
    "interval",
    "into",
    "is",
    "isnull",
    "join",
    "json",
    "json_array",
    "json_arrayagg",
    "json_exists",
    "json_object",
    "json_objectagg",
    "json_query",
    "json_scalar",
    "json_serialize",
    "json_table",
    "json_value",
    "lateral",
    "leading",
    "least",
    "left",
    "like",
    "limit",
    "localtime",
    "localtimestamp",
    "merge_action",
    "national",
    "natural",
    "nchar",
    "none",
    "normalize",
    "not",
    "notnull",
    "null",
    "nullif",
    "numeric",
    "offset",
    "on",
    "only",
    "or",
    "order",
    "out",
    "outer",
    "overlaps",
    "overlay",
    "placing",
    "position",
    "precision",
    "primary",
    "real",
    "references",
    "returning",
    "right",
    "row",
    "select",
    "session_user",
    "setof",
    "similar",
    "smallint",
    "some",
    "substring",
    "symmetric",
    "system_user",
    "table",
    "tablesample",
    "then",
    "time",
    "timestamp",
    "to",
    "trailing",
    "treat",
    "trim",
    "true",
    "union",
    "unique",
    "user",
    "using",
    "values",
    "varchar",
    "variadic",
    "verbose",
    "when",
    "where",
    "window",
    "with",
    "xmlattributes",
    "xmlconcat",
    "xmlelement",
    "xmlexists",
    "xmlforest",
    "xmlnamespaces",
    "xmlparse",
    "xmlpi",
    "xmlroot",
    "xmlserialize",
    "xmltable",
];

/// Quote an identifier the way `quote_ident()` does: bare when it is a plain
/// lower-case name that is not a keyword, double-quoted (with `"` doubled) otherwise.
pub fn ident(name: &str) -> String {
    let plain = !name.is_empty()
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !KEYWORDS.contains(&name);
    if plain {
        name.to_string()
    } else {
        format!("\"{}\"", name.replace('"', "\"\""))
    }
}

/// `schema.name`, each part quoted.
/// The name an [`ident`] output stands for: `"a""b"` is `a"b`, a bare
/// word is itself (already folded to lower case, as `ident` leaves it).
/// `None` for text `ident` cannot have written.
pub fn unquote_ident(quoted: &str) -> Option<String> {
    match quoted.strip_prefix('"') {
        Some(rest) => {
            let body = rest.strip_suffix('"')?;
            if body.replace("\"\"", "").contains('"') {
                return None;
            }
            Some(body.replace("\"\"", "\""))
        }
        None if !quoted.is_empty() && !quoted.contains(['"', ' ', ';']) => Some(quoted.to_string()),
        None => None,
    }
}

pub fn qualified(schema: &str, name: &str) -> String {
    format!("{}.{}", ident(schema), ident(name))
}

/// Quote a string literal the way `quote_literal()` does: `'it''s'`, and the
/// `E'...'` form with doubled backslashes when the value holds a backslash, so
/// it reads the same whatever `standard_conforming_strings` is.
pub fn literal(value: &str) -> String {
    let body = value.replace('\'', "''");
    if value.contains('\\') {
        format!("E'{}'", body.replace('\\', "\\\\"))
    } else {
        format!("'{body}'")
    }
}

/// A comma-separated list of quoted identifiers.
pub fn ident_list<I>(names: I) -> String
where
    I: IntoIterator,
    I::Item: AsRef<str>,
{
    names
        .into_iter()
        .map(|n| ident(n.as_ref()))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idents() {
        assert_eq!(ident("abc_1"), "abc_1");
        assert_eq!(ident("Abc"), "\"Abc\"");
        assert_eq!(ident("1abc"), "\"1abc\"");
        assert_eq!(ident("select"), "\"select\"");
        assert_eq!(ident("user"), "\"user\"");
        assert_eq!(ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(ident("café"), "\"café\"");
        assert_eq!(ident(""), "\"\"");
        assert_eq!(ident("with space"), "\"with space\"");
        assert_eq!(qualified("public", "T"), "public.\"T\"");
        assert_eq!(ident_list(&["a", "B"]), "a, \"B\"");
    }

    #[test]
    fn unquoting_reverses_ident() {
        for name in ["abc", "Fast Disk", "a\"b", "select", "x;y", "ü"] {
            assert_eq!(unquote_ident(&ident(name)).as_deref(), Some(name));
        }
        assert_eq!(unquote_ident("\"a\"b\""), None);
        assert_eq!(unquote_ident(""), None);
    }

    #[test]
    fn literals() {
        assert_eq!(literal("abc"), "'abc'");
        assert_eq!(literal("it's"), "'it''s'");
        assert_eq!(literal("a\\b"), "E'a\\\\b'");
        assert_eq!(literal(""), "''");
    }
}
