//! GRANT/REVOKE commands from `aclitem[]` values, the way pg_dump prints them.
//!
//! The target must end up with the same ACL arrays as the source (same items,
//! same grantors, same order), because `pg_dump` prints them and the schema
//! oracle compares dumps. So this follows pg_dump's algorithm rather than
//! inventing its own: diff the ACL against a baseline by whole items, REVOKE
//! what the baseline has and the ACL lacks, GRANT the rest in ACL order, and
//! become the grantor with `SET SESSION AUTHORIZATION` when it is not the owner.
//! Everything here is pure text processing; the caller reads the catalogs.

use std::fmt;

use crate::error::{MigrationError, Result};
use crate::pg::quote::ident;

/// One `aclitem`: who got which privileges from whom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AclItem {
    /// `None` is PUBLIC (the server prints an empty name for it).
    pub grantee: Option<String>,
    /// Empty only in ACLs of ancient servers; treated as the owner then.
    pub grantor: String,
    /// Privilege letters in the order the server printed them, each with its
    /// grant option.
    pub privileges: Vec<(char, bool)>,
}

/// Prints the item the way `aclitemout` does, so items can be compared and
/// logged in the server's own notation.
impl fmt::Display for AclItem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(g) = &self.grantee {
            write_acl_name(f, g)?;
        }
        f.write_str("=")?;
        for (letter, grantable) in &self.privileges {
            write!(f, "{letter}")?;
            if *grantable {
                f.write_str("*")?;
            }
        }
        f.write_str("/")?;
        write_acl_name(f, &self.grantor)
    }
}

/// The server (`putid` in acl.c) quotes a role name unless every byte is an
/// ASCII letter, digit or underscore, and doubles embedded quotes.
fn write_acl_name(f: &mut fmt::Formatter<'_>, name: &str) -> fmt::Result {
    let safe = name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if safe {
        f.write_str(name)
    } else {
        write!(f, "\"{}\"", name.replace('"', "\"\""))
    }
}

fn malformed(text: &str, why: &str) -> MigrationError {
    MigrationError::Internal(format!("malformed aclitem[] {text:?}: {why}"))
}

/// Parse the text form of an `aclitem[]` (`{a=r/b,"=r/b"}`, with array-level
/// quoting and backslash escapes, and the role-name quoting of `aclitemout`
/// inside each item). `{}` is an empty ACL, which means "everything revoked";
/// a NULL ACL (the default) is the caller's business.
pub fn parse_acl(text: &str) -> Result<Vec<AclItem>> {
    split_array(text)?
        .iter()
        .map(|item| parse_item(item).map_err(|why| malformed(text, &why)))
        .collect()
}

/// Split a one-dimensional array literal into its dequoted elements, following
/// `array_in`: double quotes may cover any part of an element, a backslash
/// takes the next character literally, and unquoted whitespace around an
/// element is dropped.
fn split_array(text: &str) -> Result<Vec<String>> {
    let body = text
        .trim()
        .strip_prefix('{')
        .and_then(|s| s.strip_suffix('}'))
        .ok_or_else(|| malformed(text, "not enclosed in braces"))?;
    if body.trim().is_empty() {
        return Ok(Vec::new());
    }
    let mut elements = Vec::new();
    // Each character with whether it was quoted or escaped (and so is kept
    // even when it is whitespace at an edge).
    let mut current: Vec<(char, bool)> = Vec::new();
    let mut in_quotes = false;
    let mut chars = body.chars();
    let finish = |current: &mut Vec<(char, bool)>, elements: &mut Vec<String>| -> Result<()> {
        let start = current
            .iter()
            .position(|&(c, lit)| lit || !c.is_whitespace());
        let end = current
            .iter()
            .rposition(|&(c, lit)| lit || !c.is_whitespace());
        let element: String = match (start, end) {
            (Some(s), Some(e)) => current[s..=e].iter().map(|&(c, _)| c).collect(),
            _ => return Err(malformed(text, "empty element")),
        };
        if current.iter().all(|&(_, lit)| !lit) && element.eq_ignore_ascii_case("null") {
            return Err(malformed(text, "NULL element"));
        }
        elements.push(element);
        current.clear();
        Ok(())
    };
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                let next = chars
                    .next()
                    .ok_or_else(|| malformed(text, "dangling backslash"))?;
                current.push((next, true));
            }
            '"' => in_quotes = !in_quotes,
            '{' | '}' if !in_quotes => {
                return Err(malformed(text, "nested or stray brace"));
            }
            ',' if !in_quotes => finish(&mut current, &mut elements)?,
            _ => current.push((c, in_quotes)),
        }
    }
    if in_quotes {
        return Err(malformed(text, "unterminated quotes"));
    }
    finish(&mut current, &mut elements)?;
    Ok(elements)
}

/// Parse `grantee=privs/grantor`, undoing the role-name quoting of `putid`.
fn parse_item(item: &str) -> std::result::Result<AclItem, String> {
    let (grantee, rest) = take_acl_name(item, '=')?;
    let rest = rest
        .strip_prefix('=')
        .ok_or_else(|| format!("item {item:?} has no '='"))?;
    // Privilege letters hold no '/', so the first one ends them even when the
    // grantor's quoted name contains more.
    let (privs, grantor_text) = rest
        .split_once('/')
        .ok_or_else(|| format!("item {item:?} has no grantor"))?;
    let (grantor, tail) = take_acl_name(grantor_text, '\0')?;
    if !tail.is_empty() {
        return Err(format!("item {item:?} has text after the grantor"));
    }
    let mut privileges: Vec<(char, bool)> = Vec::new();
    for c in privs.chars() {
        match (c, privileges.last_mut()) {
            ('*', Some(last)) if !last.1 => last.1 = true,
            (c, _) if c.is_ascii_alphabetic() => privileges.push((c, false)),
            _ => return Err(format!("item {item:?} has odd privilege {c:?}")),
        }
    }
    Ok(AclItem {
        grantee: (!grantee.is_empty()).then_some(grantee),
        grantor,
        privileges,
    })
}

/// A role name up to an unquoted `stop` (or the end), and the rest.
fn take_acl_name(text: &str, stop: char) -> std::result::Result<(String, &str), String> {
    let mut name = String::new();
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if c == stop {
            break;
        }
        if c != '"' {
            name.push(c);
            rest = &rest[c.len_utf8()..];
            continue;
        }
        rest = &rest[1..];
        loop {
            match rest.find('"') {
                None => return Err(format!("unterminated quoted role name in {text:?}")),
                Some(i) => {
                    name.push_str(&rest[..i]);
                    rest = &rest[i + 1..];
                    if let Some(after) = rest.strip_prefix('"') {
                        name.push('"');
                        rest = after;
                    } else {
                        break;
                    }
                }
            }
        }
    }
    Ok((name, rest))
}

/// What an ACL belongs to. The kind decides which privilege letters mean
/// anything and which set counts as `ALL`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AclObjectKind {
    /// Tables, views, materialized views and foreign tables.
    Table,
    Sequence,
    /// Functions, procedures and aggregates.
    Function,
    Schema,
    /// Types and domains.
    Type,
    Language,
    ForeignDataWrapper,
    ForeignServer,
    Database,
    LargeObject,
    Column,
    Parameter,
    /// Tablespaces (the globals stage).
    Tablespace,
}

/// Privileges in the order pg_dump lists them in a GRANT, which is not the
/// letter order of the ACL: output must match pg_dump's text.
const TABLE_PRIVS_17: &[(char, &str)] = &[
    ('r', "SELECT"),
    ('a', "INSERT"),
    ('x', "REFERENCES"),
    ('d', "DELETE"),
    ('t', "TRIGGER"),
    ('D', "TRUNCATE"),
    ('m', "MAINTAIN"),
    ('w', "UPDATE"),
];
const TABLE_PRIVS: &[(char, &str)] = &[
    ('r', "SELECT"),
    ('a', "INSERT"),
    ('x', "REFERENCES"),
    ('d', "DELETE"),
    ('t', "TRIGGER"),
    ('D', "TRUNCATE"),
    ('w', "UPDATE"),
];
const COLUMN_PRIVS: &[(char, &str)] = &[
    ('r', "SELECT"),
    ('a', "INSERT"),
    ('x', "REFERENCES"),
    ('w', "UPDATE"),
];
const SEQUENCE_PRIVS: &[(char, &str)] = &[('r', "SELECT"), ('U', "USAGE"), ('w', "UPDATE")];
const FUNCTION_PRIVS: &[(char, &str)] = &[('X', "EXECUTE")];
const SCHEMA_PRIVS: &[(char, &str)] = &[('C', "CREATE"), ('U', "USAGE")];
const USAGE_PRIVS: &[(char, &str)] = &[('U', "USAGE")];
const DATABASE_PRIVS: &[(char, &str)] = &[('C', "CREATE"), ('c', "CONNECT"), ('T', "TEMPORARY")];
const LARGE_OBJECT_PRIVS: &[(char, &str)] = &[('r', "SELECT"), ('w', "UPDATE")];
const PARAMETER_PRIVS: &[(char, &str)] = &[('s', "SET"), ('A', "ALTER SYSTEM")];
const TABLESPACE_PRIVS: &[(char, &str)] = &[('C', "CREATE")];

impl AclObjectKind {
    /// Every privilege the kind has on a server of `server_major`, in
    /// pg_dump's output order. An item holding all of them is printed as
    /// `ALL`; letters outside the set are ignored, so a 17+ `m` (MAINTAIN)
    /// is dropped for an older target, where `ALL` would not include it.
    pub fn privileges(self, server_major: u32) -> &'static [(char, &'static str)] {
        match self {
            AclObjectKind::Table if server_major >= 17 => TABLE_PRIVS_17,
            AclObjectKind::Table => TABLE_PRIVS,
            AclObjectKind::Column => COLUMN_PRIVS,
            AclObjectKind::Sequence => SEQUENCE_PRIVS,
            AclObjectKind::Function => FUNCTION_PRIVS,
            AclObjectKind::Schema => SCHEMA_PRIVS,
            AclObjectKind::Type
            | AclObjectKind::Language
            | AclObjectKind::ForeignDataWrapper
            | AclObjectKind::ForeignServer => USAGE_PRIVS,
            AclObjectKind::Database => DATABASE_PRIVS,
            AclObjectKind::LargeObject => LARGE_OBJECT_PRIVS,
            AclObjectKind::Parameter => PARAMETER_PRIVS,
            AclObjectKind::Tablespace => TABLESPACE_PRIVS,
        }
    }

    /// The GRANT keyword of a privilege letter, when the kind has it there.
    pub fn keyword(self, letter: char, server_major: u32) -> Option<&'static str> {
        self.privileges(server_major)
            .iter()
            .find(|(l, _)| *l == letter)
            .map(|(_, k)| *k)
    }
}

/// The privilege lists of one item: without and with grant option, each
/// already collapsed to `ALL` when the item has the whole set that way.
fn privilege_lists(
    item: &AclItem,
    set: &[(char, &str)],
    column: Option<&str>,
    split_grant_option: bool,
) -> (String, String) {
    let mut plain: Vec<String> = Vec::new();
    let mut with_go: Vec<String> = Vec::new();
    let (mut all_plain, mut all_with_go) = (true, true);
    let spell = |keyword: &str| match column {
        Some(col) => format!("{keyword}({col})"),
        None => keyword.to_string(),
    };
    for &(letter, keyword) in set {
        match item.privileges.iter().find(|(l, _)| *l == letter) {
            Some(&(_, true)) if split_grant_option => {
                with_go.push(spell(keyword));
                all_plain = false;
            }
            Some(_) => {
                plain.push(spell(keyword));
                all_with_go = false;
            }
            None => (all_plain, all_with_go) = (false, false),
        }
    }
    if all_with_go {
        (String::new(), spell("ALL"))
    } else if all_plain {
        (spell("ALL"), String::new())
    } else {
        (plain.join(","), with_go.join(","))
    }
}

fn grantee_sql(item: &AclItem) -> String {
    item.grantee
        .as_deref()
        .map_or_else(|| "PUBLIC".to_string(), ident)
}

/// pg_dump's diff between an ACL and its baseline. `on` is what follows `ON`
/// (`TABLE s.t`, or `TABLES ` for default privileges), `prefix` goes before
/// each GRANT/REVOKE (`ALTER DEFAULT PRIVILEGES ...`).
fn diff_commands(
    set: &[(char, &str)],
    on: &str,
    column: Option<&str>,
    prefix: &str,
    acl: &[AclItem],
    baseline: &[AclItem],
    owner: Option<&str>,
) -> Vec<String> {
    // REVOKEs and the owner's own grants come first, wherever the owner's
    // item sits in the ACL: pg_dump does so (old servers listed PUBLIC before
    // the owner), and the owner's privileges are what later grants rest on.
    let mut first = Vec::new();
    let mut second = Vec::new();
    for item in baseline.iter().filter(|b| !acl.contains(b)) {
        let (privs, _) = privilege_lists(item, set, column, false);
        if !privs.is_empty() {
            first.push(format!(
                "{prefix}REVOKE {privs} ON {on} FROM {};",
                grantee_sql(item)
            ));
        }
    }
    // ACL order is grant order; chains of grant options depend on it.
    for item in acl.iter().filter(|a| !baseline.contains(a)) {
        let (privs, with_go) = privilege_lists(item, set, column, true);
        if privs.is_empty() && with_go.is_empty() {
            continue;
        }
        let grantor = match (item.grantor.as_str(), owner) {
            ("", Some(o)) => o,
            (g, _) => g,
        };
        let owners_own = owner.is_some_and(|o| item.grantee.as_deref() == Some(o) && grantor == o);
        let out = if owners_own { &mut first } else { &mut second };
        let become_grantor = !grantor.is_empty() && owner != Some(grantor);
        if become_grantor {
            out.push(format!("SET SESSION AUTHORIZATION {};", ident(grantor)));
        }
        let to = grantee_sql(item);
        if !privs.is_empty() {
            out.push(format!("{prefix}GRANT {privs} ON {on} TO {to};"));
        }
        if !with_go.is_empty() {
            out.push(format!(
                "{prefix}GRANT {with_go} ON {on} TO {to} WITH GRANT OPTION;"
            ));
        }
        if become_grantor {
            out.push("RESET SESSION AUTHORIZATION;".to_string());
        }
    }
    first.extend(second);
    first
}

/// The statements that turn an object's baseline privileges into `acl`, as
/// pg_dump prints them (one statement per element, each ending in `;`).
///
/// * `target`: the object as GRANT names it, quoted: `TABLE public.t`,
///   `FUNCTION s.f(a integer)`, `SCHEMA s`, `LARGE OBJECT 1234`.
/// * `column`: the quoted column name for column privileges (kind
///   [`AclObjectKind::Column`], `target` then names the table).
/// * `acl`: the catalog's ACL text; `None` means default privileges, which
///   need no statement.
/// * `baseline`: what the object has before any GRANT: `pg_init_privs` when
///   the object has an entry there, else `acldefault(kind, owner)`, and `{}`
///   for columns.
/// * `owner`: the owner's role name, unquoted.
/// * `server_major`: the major of the server that will run the statements;
///   it decides what `ALL` covers.
pub fn build_acl_commands(
    kind: AclObjectKind,
    target: &str,
    column: Option<&str>,
    acl: Option<&str>,
    baseline: &str,
    owner: &str,
    server_major: u32,
) -> Result<Vec<String>> {
    // pg_dump treats an empty string like NULL.
    let Some(acl) = acl.filter(|a| !a.is_empty()) else {
        return Ok(Vec::new());
    };
    let kind = match (kind, column) {
        (AclObjectKind::Column, None) => {
            return Err(MigrationError::Internal(format!(
                "column privileges on {target} without a column name"
            )))
        }
        (AclObjectKind::Table | AclObjectKind::Column, Some(_)) => AclObjectKind::Column,
        (k, Some(_)) => {
            return Err(MigrationError::Internal(format!(
                "column privileges on {target}, which is a {k:?}"
            )))
        }
        (k, None) => k,
    };
    let acl = parse_acl(acl)?;
    let baseline = parse_acl(baseline)?;
    Ok(diff_commands(
        kind.privileges(server_major),
        target,
        column,
        "",
        &acl,
        &baseline,
        (!owner.is_empty()).then_some(owner),
    ))
}

/// The `ALTER DEFAULT PRIVILEGES` statements for one `pg_default_acl` row, as
/// pg_dump prints them.
///
/// * `role`, `schema`: `defaclrole` and `defaclnamespace` as names, unquoted;
///   `schema` is `None` for a global entry.
/// * `objtype`: `defaclobjtype` (`r` tables, `S` sequences, `f` functions,
///   `T` types, `n` schemas).
/// * `baseline`: `acldefault` of the object type (`s` for `S`) and role for a
///   global entry; `{}` for a per-schema one, since those can only add to the
///   global defaults.
pub fn build_default_acl_commands(
    role: &str,
    schema: Option<&str>,
    objtype: char,
    acl: &str,
    baseline: &str,
    server_major: u32,
) -> Result<Vec<String>> {
    let (kind, on) = match objtype {
        'r' => (AclObjectKind::Table, "TABLES"),
        'S' => (AclObjectKind::Sequence, "SEQUENCES"),
        'f' => (AclObjectKind::Function, "FUNCTIONS"),
        'T' => (AclObjectKind::Type, "TYPES"),
        'n' => (AclObjectKind::Schema, "SCHEMAS"),
        other => {
            return Err(MigrationError::Unsupported(format!(
                "default privileges for object type {other:?}"
            )))
        }
    };
    // The role is named in the statement rather than assumed with SET ROLE,
    // so a permission error changes nothing instead of the wrong role's
    // defaults (pg_dump's reasoning).
    let mut prefix = format!("ALTER DEFAULT PRIVILEGES FOR ROLE {} ", ident(role));
    if let Some(s) = schema {
        prefix.push_str(&format!("IN SCHEMA {} ", ident(s)));
    }
    let acl = parse_acl(acl)?;
    let baseline = parse_acl(baseline)?;
    // pg_dump writes `ON <type> <name> TO` with an empty name here, so its
    // lines read `ON TABLES  TO`; the extra space keeps them identical.
    let on = format!("{on} ");
    Ok(diff_commands(
        kind.privileges(server_major),
        &on,
        None,
        &prefix,
        &acl,
        &baseline,
        Some(role),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(grantee: Option<&str>, privs: &str, grantor: &str) -> AclItem {
        parse_item(&format!(
            "{}={privs}/{grantor}",
            grantee
                .map(|g| format!("\"{}\"", g.replace('"', "\"\"")))
                .unwrap_or_default()
        ))
        .unwrap()
    }

    #[test]
    fn parses_plain_items_public_and_grant_options() {
        let acl = parse_acl("{postgres=arwdDxt/postgres,=r/postgres,bob=r*w/alice}").unwrap();
        assert_eq!(
            acl,
            vec![
                AclItem {
                    grantee: Some("postgres".into()),
                    grantor: "postgres".into(),
                    privileges: "arwdDxt".chars().map(|c| (c, false)).collect(),
                },
                AclItem {
                    grantee: None,
                    grantor: "postgres".into(),
                    privileges: vec![('r', false)],
                },
                AclItem {
                    grantee: Some("bob".into()),
                    grantor: "alice".into(),
                    privileges: vec![('r', true), ('w', false)],
                },
            ]
        );
    }

    #[test]
    fn parses_empty_arrays() {
        assert_eq!(parse_acl("{}").unwrap(), vec![]);
        assert_eq!(parse_acl(" { } ").unwrap(), vec![]);
    }

    #[test]
    fn parses_quoted_role_names_as_the_server_prints_them() {
        // The server quotes the role inside the item, then array_out quotes
        // the element and escapes its quotes and backslashes.
        let text = r#"{"\"odd user\"=r*w/postgres","\"a,b\"=U/\"x=y/z\"","\"q\"\"uote\"=X/\"back\\slash\"",plain=C/"\"{brace}\""}"#;
        let acl = parse_acl(text).unwrap();
        assert_eq!(acl[0].grantee.as_deref(), Some("odd user"));
        assert_eq!(acl[0].privileges, vec![('r', true), ('w', false)]);
        assert_eq!(acl[1].grantee.as_deref(), Some("a,b"));
        assert_eq!(acl[1].grantor, "x=y/z");
        assert_eq!(acl[2].grantee.as_deref(), Some("q\"uote"));
        assert_eq!(acl[2].grantor, "back\\slash");
        assert_eq!(acl[3].grantee.as_deref(), Some("plain"));
        assert_eq!(acl[3].grantor, "{brace}");
    }

    #[test]
    fn parses_item_quoting_without_array_quoting() {
        // array_in takes quotes anywhere in an element, so a role name quoted
        // only at the item level reads the same.
        let acl = parse_acl(r#"{postgres=arwdDxt/postgres,=r/postgres,"odd user"=r*w/postgres}"#)
            .unwrap();
        assert_eq!(acl[2].grantee.as_deref(), Some("odd user"));
        assert_eq!(acl[2].privileges, vec![('r', true), ('w', false)]);
    }

    #[test]
    fn display_is_the_server_notation() {
        for text in [
            "postgres=arwdDxt/postgres",
            "=r/postgres",
            "\"odd user\"=r*w*/\"x=y\"",
            "\"q\"\"uote\"=X/a_1",
        ] {
            assert_eq!(parse_item(text).unwrap().to_string(), text);
        }
        let odd = item(Some("sp ace"), "U*", "o");
        assert_eq!(odd.to_string(), "\"sp ace\"=U*/o");
    }

    #[test]
    fn rejects_malformed_input() {
        for bad in [
            "",
            "postgres=r/postgres",
            "{postgres=r/postgres",
            "{postgres/postgres}",
            "{postgres=r}",
            "{postgres=r?/postgres}",
            "{postgres=*r/postgres}",
            "{\"unterminated=r/postgres}",
            "{a=r/b,,c=r/d}",
            "{NULL}",
            "{{a=r/b}}",
            "{\"\"}",
        ] {
            assert!(parse_acl(bad).is_err(), "{bad:?} was accepted");
        }
    }

    fn table(acl: &str, owner: &str) -> Vec<String> {
        let base = format!("{{{owner}=arwdDxt/{owner}}}");
        build_acl_commands(
            AclObjectKind::Table,
            "TABLE public.t",
            None,
            Some(acl),
            &base,
            owner,
            15,
        )
        .unwrap()
    }

    #[test]
    fn null_or_baseline_acl_needs_nothing() {
        let cmds = build_acl_commands(
            AclObjectKind::Table,
            "TABLE public.t",
            None,
            None,
            "{o=arwdDxt/o}",
            "o",
            15,
        )
        .unwrap();
        assert!(cmds.is_empty());
        assert!(table("{o=arwdDxt/o}", "o").is_empty());
    }

    #[test]
    fn grants_in_acl_order_with_all_public_and_grant_option() {
        assert_eq!(
            table("{o=arwdDxt/o,r=ar/o,w=a*r*w*d*D*x*t*/o,=r/o,m=r*w/o}", "o"),
            vec![
                "GRANT SELECT,INSERT ON TABLE public.t TO r;",
                "GRANT ALL ON TABLE public.t TO w WITH GRANT OPTION;",
                "GRANT SELECT ON TABLE public.t TO PUBLIC;",
                "GRANT UPDATE ON TABLE public.t TO m;",
                "GRANT SELECT ON TABLE public.t TO m WITH GRANT OPTION;",
            ]
        );
    }

    #[test]
    fn all_depends_on_the_server_major() {
        let acl = "{o=arwdDxtm/o,r=arwdDxt/o}";
        let base = "{o=arwdDxtm/o}";
        let build = |major| {
            build_acl_commands(
                AclObjectKind::Table,
                "TABLE t",
                None,
                Some(acl),
                base,
                "o",
                major,
            )
            .unwrap()
        };
        assert_eq!(build(15), vec!["GRANT ALL ON TABLE t TO r;"]);
        assert_eq!(
            build(17),
            vec!["GRANT SELECT,INSERT,REFERENCES,DELETE,TRIGGER,TRUNCATE,UPDATE ON TABLE t TO r;"]
        );
        assert_eq!(AclObjectKind::Table.keyword('m', 16), None);
        assert_eq!(AclObjectKind::Table.keyword('m', 17), Some("MAINTAIN"));
    }

    #[test]
    fn revokes_come_first_and_the_owners_own_grants_before_others() {
        // The owner lost TRUNCATE; PUBLIC's grant was made earlier than the
        // owner's re-grant in this ACL, but pg_dump prints the owner first.
        assert_eq!(
            table("{=r/o,o=arwdxt/o,\"Odd One\"=r/o}", "o"),
            vec![
                "REVOKE ALL ON TABLE public.t FROM o;",
                "GRANT SELECT,INSERT,REFERENCES,DELETE,TRIGGER,UPDATE ON TABLE public.t TO o;",
                "GRANT SELECT ON TABLE public.t TO PUBLIC;",
                "GRANT SELECT ON TABLE public.t TO \"Odd One\";",
            ]
        );
        assert_eq!(
            table("{}", "o"),
            vec!["REVOKE ALL ON TABLE public.t FROM o;"]
        );
    }

    #[test]
    fn other_grantors_are_become_with_session_authorization() {
        assert_eq!(
            table("{o=arwdDxt/o,g=r*/o,\"x y\"=r*/g,r=r/\"x y\",o=w/g}", "o"),
            vec![
                "GRANT SELECT ON TABLE public.t TO g WITH GRANT OPTION;",
                "SET SESSION AUTHORIZATION g;",
                "GRANT SELECT ON TABLE public.t TO \"x y\" WITH GRANT OPTION;",
                "RESET SESSION AUTHORIZATION;",
                "SET SESSION AUTHORIZATION \"x y\";",
                "GRANT SELECT ON TABLE public.t TO r;",
                "RESET SESSION AUTHORIZATION;",
                "SET SESSION AUTHORIZATION g;",
                "GRANT UPDATE ON TABLE public.t TO o;",
                "RESET SESSION AUTHORIZATION;",
            ]
        );
    }

    #[test]
    fn functions_types_sequences_and_schemas() {
        let f = build_acl_commands(
            AclObjectKind::Function,
            "FUNCTION s.f(a integer)",
            None,
            Some("{o=X/o,r=X*/o}"),
            "{=X/o,o=X/o}",
            "o",
            15,
        )
        .unwrap();
        assert_eq!(
            f,
            vec![
                "REVOKE ALL ON FUNCTION s.f(a integer) FROM PUBLIC;",
                "GRANT ALL ON FUNCTION s.f(a integer) TO r WITH GRANT OPTION;",
            ]
        );
        let t = build_acl_commands(
            AclObjectKind::Type,
            "TYPE s.mood",
            None,
            Some("{o=U/o}"),
            "{=U/o,o=U/o}",
            "o",
            15,
        )
        .unwrap();
        assert_eq!(t, vec!["REVOKE ALL ON TYPE s.mood FROM PUBLIC;"]);
        let q = build_acl_commands(
            AclObjectKind::Sequence,
            "SEQUENCE s.q",
            None,
            Some("{o=rwU/o,r=rU/o,w=rwU/o}"),
            "{o=rwU/o}",
            "o",
            15,
        )
        .unwrap();
        assert_eq!(
            q,
            vec![
                "GRANT SELECT,USAGE ON SEQUENCE s.q TO r;",
                "GRANT ALL ON SEQUENCE s.q TO w;",
            ]
        );
        let n = build_acl_commands(
            AclObjectKind::Schema,
            "SCHEMA s",
            None,
            Some("{o=UC/o,r=U/o,a=U*C/o}"),
            "{o=UC/o}",
            "o",
            15,
        )
        .unwrap();
        assert_eq!(
            n,
            vec![
                "GRANT USAGE ON SCHEMA s TO r;",
                "GRANT CREATE ON SCHEMA s TO a;",
                "GRANT USAGE ON SCHEMA s TO a WITH GRANT OPTION;",
            ]
        );
        let d = build_acl_commands(
            AclObjectKind::Database,
            "DATABASE db",
            None,
            Some("{=Tc/o,o=CTc/o,r=C/o}"),
            "{=Tc/o,o=CTc/o}",
            "o",
            15,
        )
        .unwrap();
        assert_eq!(d, vec!["GRANT CREATE ON DATABASE db TO r;"]);
        let p = build_acl_commands(
            AclObjectKind::Parameter,
            "PARAMETER work_mem",
            None,
            Some("{r=sA/postgres}"),
            "{}",
            "postgres",
            15,
        )
        .unwrap();
        assert_eq!(p, vec!["GRANT ALL ON PARAMETER work_mem TO r;"]);
    }

    #[test]
    fn column_privileges_name_the_column() {
        let c = build_acl_commands(
            AclObjectKind::Column,
            "TABLE s.t",
            Some("\"Odd Col\""),
            Some("{r=rw/o,a=r*a*x*w*/o,g=x*/o}"),
            "{}",
            "o",
            15,
        )
        .unwrap();
        assert_eq!(
            c,
            vec![
                "GRANT SELECT(\"Odd Col\"),UPDATE(\"Odd Col\") ON TABLE s.t TO r;",
                "GRANT ALL(\"Odd Col\") ON TABLE s.t TO a WITH GRANT OPTION;",
                "GRANT REFERENCES(\"Odd Col\") ON TABLE s.t TO g WITH GRANT OPTION;",
            ]
        );
        assert!(build_acl_commands(
            AclObjectKind::Column,
            "TABLE s.t",
            None,
            Some("{}"),
            "{}",
            "o",
            15
        )
        .is_err());
    }

    #[test]
    fn default_privileges() {
        let global =
            build_default_acl_commands("o", None, 'f', "{o=X/o}", "{=X/o,o=X/o}", 15).unwrap();
        assert_eq!(
            global,
            vec!["ALTER DEFAULT PRIVILEGES FOR ROLE o REVOKE ALL ON FUNCTIONS  FROM PUBLIC;"]
        );
        let tables = build_default_acl_commands(
            "Odd Owner",
            None,
            'r',
            "{\"Odd Owner\"=arwdDxt/\"Odd Owner\",r=r/\"Odd Owner\"}",
            "{\"Odd Owner\"=arwdDxt/\"Odd Owner\"}",
            15,
        )
        .unwrap();
        assert_eq!(
            tables,
            vec!["ALTER DEFAULT PRIVILEGES FOR ROLE \"Odd Owner\" GRANT SELECT ON TABLES  TO r;"]
        );
        let in_schema =
            build_default_acl_commands("o", Some("S"), 'S', "{r=U/o,w=rwU*/o}", "{}", 15).unwrap();
        assert_eq!(
            in_schema,
            vec![
                "ALTER DEFAULT PRIVILEGES FOR ROLE o IN SCHEMA \"S\" GRANT USAGE ON SEQUENCES  TO r;",
                "ALTER DEFAULT PRIVILEGES FOR ROLE o IN SCHEMA \"S\" GRANT SELECT,UPDATE ON SEQUENCES  TO w;",
                "ALTER DEFAULT PRIVILEGES FOR ROLE o IN SCHEMA \"S\" GRANT USAGE ON SEQUENCES  TO w WITH GRANT OPTION;",
            ]
        );
        let types =
            build_default_acl_commands("o", None, 'T', "{o=U/o}", "{=U/o,o=U/o}", 15).unwrap();
        assert_eq!(
            types,
            vec!["ALTER DEFAULT PRIVILEGES FOR ROLE o REVOKE ALL ON TYPES  FROM PUBLIC;"]
        );
        let schemas =
            build_default_acl_commands("o", None, 'n', "{o=UC/o,r=C/o}", "{o=UC/o}", 15).unwrap();
        assert_eq!(
            schemas,
            vec!["ALTER DEFAULT PRIVILEGES FOR ROLE o GRANT CREATE ON SCHEMAS  TO r;"]
        );
        assert!(build_default_acl_commands("o", None, 'x', "{}", "{}", 15).is_err());
    }
}
