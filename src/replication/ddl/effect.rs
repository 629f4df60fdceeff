//! Schema changes made inside a function, a procedure or a `DO` block,
//! replayed by their effect.
//!
//! The client's query string (`SELECT partman.run_maintenance()`) is not
//! the DDL that ran, and running it again would repeat its other effects
//! (its row changes stream through pgoutput anyway). So the capture, in
//! the transaction that made the change (the catalogs as they stood right
//! after the command), describes each object the command touched: a
//! table's columns, constraints, partitions and options, an index's
//! definition, a sequence's parameters. The applier describes the same
//! object on the target with the same query, and builds the statements
//! that take the target's object to the source's state ([`table_plan`],
//! [`index_plan`], [`sequence_plan`]). What a DROP removed arrives as
//! [`super::DroppedObject`]s ([`drop_sql`]).
//!
//! Whatever cannot be reproduced this way (another kind of object, a
//! change that is not a difference of state such as a rename) is not
//! guessed at: the applier records it, streaming goes on, and the cutover
//! is refused naming it.

use serde::{Deserialize, Serialize};

use crate::pg::quote;

/// A table (`relkind` r or p) as it stands: the JSON of [`DESCRIBE_TABLE_SQL`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableState {
    /// The command tag that touched it (only in captured effects).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub tag: String,
    /// Qualified and quoted (`format('%I.%I')`).
    pub name: String,
    pub relkind: String,
    pub persistence: String,
    pub owner: String,
    #[serde(default)]
    pub acl: Option<Vec<String>>,
    #[serde(default)]
    pub options: Vec<String>,
    #[serde(default)]
    pub comment: Option<String>,
    #[serde(default)]
    pub partkey: Option<String>,
    /// The partitioned table it is a partition of, and its bound.
    #[serde(default)]
    pub parent: Option<String>,
    #[serde(default)]
    pub bound: Option<String>,
    /// Inheritance parents (not partitioning), in order.
    #[serde(default)]
    pub inherits: Vec<String>,
    #[serde(default)]
    pub partitions: Vec<Partition>,
    #[serde(default)]
    pub columns: Vec<Column>,
    /// The table's own constraints (not NOT NULL, not those a partition
    /// takes from its parent).
    #[serde(default)]
    pub constraints: Vec<Constraint>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Partition {
    pub name: String,
    pub bound: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Column {
    pub name: String,
    #[serde(rename = "type")]
    pub type_: String,
    #[serde(default)]
    pub collation: Option<String>,
    #[serde(default)]
    pub not_null: bool,
    #[serde(default)]
    pub default: Option<String>,
    /// The expression of a stored generated column.
    #[serde(default)]
    pub generated: Option<String>,
    /// `a` (ALWAYS), `d` (BY DEFAULT) or empty.
    #[serde(default)]
    pub identity: String,
    /// Set only where it is not the type's default.
    #[serde(default)]
    pub storage: Option<String>,
    /// Declared in this table (not only inherited).
    #[serde(default = "yes")]
    pub local: bool,
    #[serde(default)]
    pub comment: Option<String>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Constraint {
    pub name: String,
    pub def: String,
}

/// An index as it stands: the JSON of [`DESCRIBE_INDEX_SQL`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexState {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub tag: String,
    pub name: String,
    pub table: String,
    /// `pg_get_indexdef`.
    pub def: String,
    /// The partitioned index it is attached to.
    #[serde(default)]
    pub parent: Option<String>,
    #[serde(default)]
    pub partitioned: bool,
    #[serde(default = "yes")]
    pub valid: bool,
    /// It backs a constraint of its table (made with the constraint).
    #[serde(default)]
    pub constraint: bool,
    #[serde(default)]
    pub comment: Option<String>,
}

/// A sequence as it stands: the JSON of [`DESCRIBE_SEQUENCE_SQL`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SequenceState {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub tag: String,
    pub name: String,
    #[serde(rename = "type")]
    pub type_: String,
    pub start: String,
    pub increment: String,
    pub min: String,
    pub max: String,
    pub cache: String,
    pub cycle: bool,
    /// `table.column` (quoted) of OWNED BY.
    #[serde(default)]
    pub owned_by: Option<String>,
    /// An identity column's own sequence (made and changed with its column).
    #[serde(default)]
    pub identity: bool,
    pub owner: String,
    pub persistence: String,
}

/// A function or procedure as it stands: the JSON of [`DESCRIBE_ROUTINE_SQL`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoutineState {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub tag: String,
    /// `schema.name(argument types)`, as `regprocedure` prints it.
    pub name: String,
    /// `f` or `p`.
    pub prokind: String,
    /// `pg_get_functiondef`: a whole `CREATE OR REPLACE` statement.
    pub def: String,
    pub owner: String,
    #[serde(default)]
    pub acl: Option<Vec<String>>,
    #[serde(default)]
    pub comment: Option<String>,
}

/// One object a command inside a function touched, as it stood after it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Effect {
    Table(TableState),
    Index(IndexState),
    Sequence(SequenceState),
    Routine(RoutineState),
    /// Any other object: not reproduced.
    Other {
        #[serde(default)]
        tag: String,
        #[serde(default)]
        object_type: String,
        #[serde(default)]
        identity: Option<String>,
    },
}

impl Effect {
    /// How the object is named in the records of what was not reproduced
    /// (the same words as a [`super::DroppedObject`]'s, so a later DROP of
    /// it clears the record).
    pub fn key(&self) -> String {
        match self {
            Effect::Table(t) => format!("table {}", t.name),
            Effect::Index(i) => format!("index {}", i.name),
            Effect::Sequence(s) => format!("sequence {}", s.name),
            Effect::Routine(r) if r.prokind == "p" => format!("procedure {}", r.name),
            Effect::Routine(r) => format!("function {}", r.name),
            Effect::Other {
                object_type,
                identity,
                tag,
            } => match identity {
                Some(i) => format!("{} {i}", object_type.to_lowercase()),
                None => format!("{} ({tag})", object_type.to_lowercase()),
            },
        }
    }

    pub fn tag(&self) -> &str {
        match self {
            Effect::Table(t) => &t.tag,
            Effect::Index(i) => &i.tag,
            Effect::Sequence(s) => &s.tag,
            Effect::Routine(r) => &r.tag,
            Effect::Other { tag, .. } => tag,
        }
    }

    /// The object's name, for describing it on the target.
    pub fn name(&self) -> Option<&str> {
        match self {
            Effect::Table(t) => Some(&t.name),
            Effect::Index(i) => Some(&i.name),
            Effect::Sequence(s) => Some(&s.name),
            Effect::Routine(r) => Some(&r.name),
            Effect::Other { .. } => None,
        }
    }

    /// The query that describes the object on the target, given its oid,
    /// and the one that finds that oid from [`Self::name`].
    pub fn describe_sql(&self) -> Option<(&'static str, &'static str)> {
        Some(match self {
            Effect::Table(_) => (DESCRIBE_TABLE_SQL, REGCLASS_SQL),
            Effect::Index(_) => (DESCRIBE_INDEX_SQL, REGCLASS_SQL),
            Effect::Sequence(_) => (DESCRIBE_SEQUENCE_SQL, REGCLASS_SQL),
            Effect::Routine(_) => (DESCRIBE_ROUTINE_SQL, REGPROCEDURE_SQL),
            Effect::Other { .. } => return None,
        })
    }

    /// The same object without the command tag (for comparing with the
    /// target's description).
    pub fn untagged(&self) -> Effect {
        let mut e = self.clone();
        match &mut e {
            Effect::Table(t) => t.tag.clear(),
            Effect::Index(i) => i.tag.clear(),
            Effect::Sequence(s) => s.tag.clear(),
            Effect::Routine(r) => r.tag.clear(),
            Effect::Other { .. } => {}
        }
        e
    }
}

/// The description of table `$1` (an oid), as [`TableState`] JSON. Run on
/// the source by the capture and on the target by the applier, both with
/// `search_path = pg_catalog`, so that types and expressions come out
/// alike (qualified).
pub const DESCRIBE_TABLE_SQL: &str = "SELECT pg_catalog.json_build_object(
  'kind', 'table',
  'name', pg_catalog.format('%I.%I', n.nspname, c.relname),
  'relkind', c.relkind::text,
  'persistence', c.relpersistence::text,
  'owner', pg_catalog.pg_get_userbyid(c.relowner),
  'acl', c.relacl::text[],
  'options', coalesce(c.reloptions, '{}'),
  'comment', pg_catalog.obj_description(c.oid, 'pg_class'),
  'partkey', CASE WHEN c.relkind = 'p' THEN pg_catalog.pg_get_partkeydef(c.oid) END,
  'parent', (SELECT pg_catalog.format('%I.%I', pn.nspname, p.relname)
               FROM pg_catalog.pg_inherits i JOIN pg_catalog.pg_class p ON p.oid = i.inhparent
               JOIN pg_catalog.pg_namespace pn ON pn.oid = p.relnamespace
              WHERE i.inhrelid = c.oid AND c.relispartition),
  'bound', CASE WHEN c.relispartition THEN pg_catalog.pg_get_expr(c.relpartbound, c.oid) END,
  'inherits', coalesce((SELECT pg_catalog.json_agg(pg_catalog.format('%I.%I', pn.nspname, p.relname) ORDER BY i.inhseqno)
               FROM pg_catalog.pg_inherits i JOIN pg_catalog.pg_class p ON p.oid = i.inhparent
               JOIN pg_catalog.pg_namespace pn ON pn.oid = p.relnamespace
              WHERE i.inhrelid = c.oid AND NOT c.relispartition), '[]'),
  'partitions', coalesce((SELECT pg_catalog.json_agg(pg_catalog.json_build_object(
                   'name', pg_catalog.format('%I.%I', kn.nspname, k.relname),
                   'bound', pg_catalog.pg_get_expr(k.relpartbound, k.oid)) ORDER BY kn.nspname, k.relname)
               FROM pg_catalog.pg_inherits i JOIN pg_catalog.pg_class k ON k.oid = i.inhrelid
               JOIN pg_catalog.pg_namespace kn ON kn.oid = k.relnamespace
              WHERE i.inhparent = c.oid AND k.relispartition), '[]'),
  'columns', coalesce((SELECT pg_catalog.json_agg(pg_catalog.json_build_object(
                   'name', a.attname,
                   'type', pg_catalog.format_type(a.atttypid, a.atttypmod),
                   'collation', CASE WHEN a.attcollation <> t.typcollation
                                     THEN pg_catalog.format('%I.%I', cn.nspname, co.collname) END,
                   'not_null', a.attnotnull,
                   'default', CASE WHEN a.attgenerated = '' THEN pg_catalog.pg_get_expr(ad.adbin, ad.adrelid) END,
                   'generated', CASE WHEN a.attgenerated <> '' THEN pg_catalog.pg_get_expr(ad.adbin, ad.adrelid) END,
                   'identity', a.attidentity::text,
                   'storage', CASE WHEN a.attstorage <> t.typstorage THEN a.attstorage::text END,
                   'local', a.attislocal,
                   'comment', pg_catalog.col_description(c.oid, a.attnum)) ORDER BY a.attnum)
               FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
               LEFT JOIN pg_catalog.pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum
               LEFT JOIN pg_catalog.pg_collation co ON co.oid = a.attcollation
               LEFT JOIN pg_catalog.pg_namespace cn ON cn.oid = co.collnamespace
              WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped), '[]'),
  'constraints', coalesce((SELECT pg_catalog.json_agg(pg_catalog.json_build_object(
                   'name', k.conname, 'def', pg_catalog.pg_get_constraintdef(k.oid)) ORDER BY k.conname)
               FROM pg_catalog.pg_constraint k
              WHERE k.conrelid = c.oid AND k.conislocal AND k.conparentid = 0 AND k.contype <> 'n'), '[]'))
  FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
 WHERE c.oid = $1";

/// The description of index `$1`, as [`IndexState`] JSON (see
/// [`DESCRIBE_TABLE_SQL`]).
pub const DESCRIBE_INDEX_SQL: &str = "SELECT pg_catalog.json_build_object(
  'kind', 'index',
  'name', pg_catalog.format('%I.%I', n.nspname, c.relname),
  'table', (SELECT pg_catalog.format('%I.%I', tn.nspname, t.relname)
              FROM pg_catalog.pg_class t JOIN pg_catalog.pg_namespace tn ON tn.oid = t.relnamespace
             WHERE t.oid = x.indrelid),
  'def', pg_catalog.pg_get_indexdef(c.oid),
  'parent', (SELECT pg_catalog.format('%I.%I', pn.nspname, p.relname)
               FROM pg_catalog.pg_inherits i JOIN pg_catalog.pg_class p ON p.oid = i.inhparent
               JOIN pg_catalog.pg_namespace pn ON pn.oid = p.relnamespace
              WHERE i.inhrelid = c.oid),
  'partitioned', c.relkind = 'I',
  'valid', x.indisvalid,
  'constraint', EXISTS (SELECT 1 FROM pg_catalog.pg_constraint k
                         WHERE k.conindid = c.oid AND k.conrelid = x.indrelid AND k.contype IN ('p', 'u', 'x')),
  'comment', pg_catalog.obj_description(c.oid, 'pg_class'))
  FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
  JOIN pg_catalog.pg_index x ON x.indexrelid = c.oid
 WHERE c.oid = $1";

/// The description of sequence `$1`, as [`SequenceState`] JSON (see
/// [`DESCRIBE_TABLE_SQL`]).
pub const DESCRIBE_SEQUENCE_SQL: &str = "SELECT pg_catalog.json_build_object(
  'kind', 'sequence',
  'name', pg_catalog.format('%I.%I', n.nspname, c.relname),
  'type', pg_catalog.format_type(s.seqtypid, NULL),
  'start', s.seqstart::text, 'increment', s.seqincrement::text,
  'min', s.seqmin::text, 'max', s.seqmax::text, 'cache', s.seqcache::text, 'cycle', s.seqcycle,
  'owned_by', (SELECT pg_catalog.format('%I.%I.%I', tn.nspname, t.relname, a.attname)
                 FROM pg_catalog.pg_depend d JOIN pg_catalog.pg_class t ON t.oid = d.refobjid
                 JOIN pg_catalog.pg_namespace tn ON tn.oid = t.relnamespace
                 JOIN pg_catalog.pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
                WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.objid = c.oid
                  AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass
                  AND d.deptype IN ('a', 'i') AND d.refobjsubid > 0
                LIMIT 1),
  'identity', EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                       WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.objid = c.oid AND d.deptype = 'i'),
  'owner', pg_catalog.pg_get_userbyid(c.relowner),
  'persistence', c.relpersistence::text)
  FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
  JOIN pg_catalog.pg_sequence s ON s.seqrelid = c.oid
 WHERE c.oid = $1";

/// The description of function or procedure `$1`, as [`RoutineState`]
/// JSON (see [`DESCRIBE_TABLE_SQL`]); NULL for an aggregate.
pub const DESCRIBE_ROUTINE_SQL: &str = "SELECT pg_catalog.json_build_object(
  'kind', 'routine',
  'name', p.oid::pg_catalog.regprocedure::text,
  'prokind', p.prokind::text,
  'def', pg_catalog.pg_get_functiondef(p.oid),
  'owner', pg_catalog.pg_get_userbyid(p.proowner),
  'acl', p.proacl::text[],
  'comment', pg_catalog.obj_description(p.oid, 'pg_proc'))
  FROM pg_catalog.pg_proc p
 WHERE p.oid = $1 AND p.prokind IN ('f', 'p')";

/// The oid of relation `$1` (a qualified name), NULL when absent.
pub const REGCLASS_SQL: &str = "SELECT pg_catalog.to_regclass($1)::pg_catalog.oid";

/// The oid of routine `$1` (`schema.name(types)`), NULL when absent.
pub const REGPROCEDURE_SQL: &str = "SELECT pg_catalog.to_regprocedure($1)::pg_catalog.oid";

/// The statements that take the target's object to the source's state,
/// and the fields to leave out of the check that follows (something
/// deferred to a later command of the same firing).
#[derive(Debug)]
pub struct Plan {
    pub statements: Vec<String>,
    pub unchecked: Vec<&'static str>,
}

impl Plan {
    fn of(statements: Vec<String>) -> Plan {
        Plan {
            statements,
            unchecked: Vec::new(),
        }
    }
}

fn creates(tag: &str) -> bool {
    tag.starts_with("CREATE") || tag == "SELECT INTO"
}

fn column_def(c: &Column) -> String {
    let mut s = format!("{} {}", quote::ident(&c.name), c.type_);
    if let Some(coll) = &c.collation {
        s.push_str(&format!(" COLLATE {coll}"));
    }
    if let Some(g) = &c.generated {
        s.push_str(&format!(" GENERATED ALWAYS AS ({g}) STORED"));
    } else if let Some(d) = &c.default {
        s.push_str(&format!(" DEFAULT {d}"));
    }
    match c.identity.as_str() {
        "a" => s.push_str(" GENERATED ALWAYS AS IDENTITY"),
        "d" => s.push_str(" GENERATED BY DEFAULT AS IDENTITY"),
        _ => {}
    }
    if c.not_null {
        s.push_str(" NOT NULL");
    }
    s
}

fn storage_word(s: &str) -> Option<&'static str> {
    Some(match s {
        "p" => "PLAIN",
        "e" => "EXTERNAL",
        "m" => "MAIN",
        "x" => "EXTENDED",
        _ => return None,
    })
}

fn comment_sql(what: &str, comment: &Option<String>) -> String {
    format!(
        "COMMENT ON {what} IS {}",
        comment
            .as_deref()
            .map_or_else(|| "NULL".to_string(), quote::literal)
    )
}

/// `key=value` of a reloption, as `key = 'value'`.
fn option_sql(o: &str) -> String {
    let (k, v) = o.split_once('=').unwrap_or((o, "true"));
    format!("{} = {}", quote::ident(k), quote::literal(v))
}

fn option_key(o: &str) -> &str {
    o.split_once('=').map_or(o, |(k, _)| k)
}

/// The grantee of an aclitem (`grantee=privs/grantor`), as SQL.
fn acl_grantee(item: &str) -> Option<String> {
    let (who, _) = split_acl(item)?;
    Some(if who.is_empty() {
        "PUBLIC".into()
    } else {
        who.to_string()
    })
}

/// An aclitem's grantee (as written, quoted where needed) and privilege letters.
fn split_acl(item: &str) -> Option<(&str, &str)> {
    // The grantee may be a quoted name holding `=`.
    let mut in_quotes = false;
    for (i, ch) in item.char_indices() {
        match ch {
            '"' => in_quotes = !in_quotes,
            '=' if !in_quotes => {
                let rest = &item[i + 1..];
                let privs = rest.split('/').next().unwrap_or_default();
                return Some((&item[..i], privs));
            }
            _ => {}
        }
    }
    None
}

/// REVOKE and GRANT that make `name`'s privileges `want` where they are
/// `have` (`object`: `TABLE`, `FUNCTION` or `PROCEDURE`).
fn acl_sql(
    object: &str,
    name: &str,
    have: &Option<Vec<String>>,
    want: &Option<Vec<String>>,
) -> std::result::Result<Vec<String>, String> {
    if have == want {
        return Ok(Vec::new());
    }
    let Some(want) = want else {
        return Err(format!(
            "the privileges of {name} are the defaults on the source, set on the target"
        ));
    };
    let mut out = Vec::new();
    let mut revoked: Vec<String> = Vec::new();
    for item in have.iter().flatten().chain(want.iter()) {
        let who =
            acl_grantee(item).ok_or_else(|| format!("unreadable privilege {item} of {name}"))?;
        if !revoked.contains(&who) {
            out.push(format!("REVOKE ALL ON {object} {name} FROM {who}"));
            revoked.push(who);
        }
    }
    for item in want {
        let (_, privs) =
            split_acl(item).ok_or_else(|| format!("unreadable privilege {item} of {name}"))?;
        let who = acl_grantee(item).unwrap_or_default();
        let mut plain = Vec::new();
        let mut with_option = Vec::new();
        let mut chars = privs.chars().peekable();
        while let Some(c) = chars.next() {
            let p = match c {
                'r' => "SELECT",
                'a' => "INSERT",
                'w' => "UPDATE",
                'd' => "DELETE",
                'D' => "TRUNCATE",
                'x' => "REFERENCES",
                't' => "TRIGGER",
                'm' => "MAINTAIN",
                'X' => "EXECUTE",
                _ => return Err(format!("unknown privilege {c} of {name}")),
            };
            if chars.peek() == Some(&'*') {
                chars.next();
                with_option.push(p);
            } else {
                plain.push(p);
            }
        }
        if !plain.is_empty() {
            out.push(format!(
                "GRANT {} ON {object} {name} TO {who}",
                plain.join(", ")
            ));
        }
        if !with_option.is_empty() {
            out.push(format!(
                "GRANT {} ON {object} {name} TO {who} WITH GRANT OPTION",
                with_option.join(", ")
            ));
        }
    }
    Ok(out)
}

/// Take table `dst` (the target's, `None` if absent) to `src` (the
/// source's right after its command). Errors say what cannot be done.
pub fn table_plan(src: &TableState, dst: Option<&TableState>) -> std::result::Result<Plan, String> {
    let name = &src.name;
    let Some(dst) = dst else {
        if !creates(&src.tag) {
            return Err(format!(
                "{} changed {name}, which is not on the target (renamed or moved?)",
                src.tag
            ));
        }
        return Ok(Plan::of(create_table(src)?));
    };
    if dst.relkind != src.relkind {
        return Err(format!("{name} is of another kind on the target"));
    }
    if dst.partkey != src.partkey {
        return Err(format!("the partition key of {name} differs on the target"));
    }
    let mut out = Vec::new();
    if dst.persistence != src.persistence {
        match src.persistence.as_str() {
            "p" => out.push(format!("ALTER TABLE {name} SET LOGGED")),
            "u" => out.push(format!("ALTER TABLE {name} SET UNLOGGED")),
            p => return Err(format!("{name} has persistence {p}")),
        }
    }
    // Partitions first leave (a new one may take a range an old one held).
    if dst.parent.is_some() && (dst.parent != src.parent || dst.bound != src.bound) {
        out.push(format!(
            "ALTER TABLE {} DETACH PARTITION {name}",
            dst.parent.as_deref().unwrap_or_default()
        ));
    }
    for p in &dst.partitions {
        if !src.partitions.contains(p) {
            out.push(format!("ALTER TABLE {name} DETACH PARTITION {}", p.name));
        }
    }
    // Columns: added or dropped, or changed in place. A column gone and
    // another new in the same command is a rename: not guessed at.
    let added: Vec<&Column> = src
        .columns
        .iter()
        .filter(|c| !dst.columns.iter().any(|d| d.name == c.name))
        .collect();
    let dropped: Vec<&Column> = dst
        .columns
        .iter()
        .filter(|d| !src.columns.iter().any(|c| c.name == d.name))
        .collect();
    if !added.is_empty() && !dropped.is_empty() {
        return Err(format!(
            "columns of {name} were renamed or replaced ({} gone, {} new)",
            dropped
                .iter()
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            added
                .iter()
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    // Constraints that go, before the columns they may use.
    let mut adds = Vec::new();
    for k in &dst.constraints {
        match src.constraints.iter().find(|s| s.name == k.name) {
            None => out.push(format!(
                "ALTER TABLE {name} DROP CONSTRAINT {}",
                quote::ident(&k.name)
            )),
            Some(s) if s.def == k.def => {}
            Some(s)
                if k.def.ends_with(" NOT VALID")
                    && k.def.strip_suffix(" NOT VALID") == Some(&s.def) =>
            {
                adds.push(format!(
                    "ALTER TABLE {name} VALIDATE CONSTRAINT {}",
                    quote::ident(&k.name)
                ));
            }
            Some(s) => {
                out.push(format!(
                    "ALTER TABLE {name} DROP CONSTRAINT {}",
                    quote::ident(&k.name)
                ));
                adds.push(format!(
                    "ALTER TABLE {name} ADD CONSTRAINT {} {}",
                    quote::ident(&s.name),
                    s.def
                ));
            }
        }
    }
    for c in &dropped {
        out.push(format!(
            "ALTER TABLE {name} DROP COLUMN {}",
            quote::ident(&c.name)
        ));
    }
    for c in &added {
        out.push(format!("ALTER TABLE {name} ADD COLUMN {}", column_def(c)));
        if let Some(s) = c.storage.as_deref().and_then(storage_word) {
            out.push(format!(
                "ALTER TABLE {name} ALTER COLUMN {} SET STORAGE {s}",
                quote::ident(&c.name)
            ));
        }
        if c.comment.is_some() {
            out.push(comment_sql(
                &format!("COLUMN {name}.{}", quote::ident(&c.name)),
                &c.comment,
            ));
        }
    }
    for c in &src.columns {
        let Some(d) = dst.columns.iter().find(|d| d.name == c.name) else {
            continue;
        };
        let col = format!("ALTER TABLE {name} ALTER COLUMN {}", quote::ident(&c.name));
        if d.identity != c.identity || d.generated != c.generated {
            return Err(format!(
                "the identity or generation of {name}.{} changed",
                quote::ident(&c.name)
            ));
        }
        if d.type_ != c.type_ || d.collation != c.collation {
            let coll = c
                .collation
                .as_deref()
                .map(|x| format!(" COLLATE {x}"))
                .unwrap_or_default();
            out.push(format!("{col} TYPE {}{coll}", c.type_));
        }
        if d.default != c.default {
            match &c.default {
                Some(e) => out.push(format!("{col} SET DEFAULT {e}")),
                None => out.push(format!("{col} DROP DEFAULT")),
            }
        }
        if d.not_null != c.not_null {
            out.push(format!(
                "{col} {} NOT NULL",
                if c.not_null { "SET" } else { "DROP" }
            ));
        }
        if d.storage != c.storage {
            let s = c.storage.as_deref().and_then(storage_word).ok_or_else(|| {
                format!(
                    "the storage of {name}.{} changed back",
                    quote::ident(&c.name)
                )
            })?;
            out.push(format!("{col} SET STORAGE {s}"));
        }
        if d.comment != c.comment {
            out.push(comment_sql(
                &format!("COLUMN {name}.{}", quote::ident(&c.name)),
                &c.comment,
            ));
        }
    }
    for k in &src.constraints {
        if !dst.constraints.iter().any(|d| d.name == k.name) {
            adds.push(format!(
                "ALTER TABLE {name} ADD CONSTRAINT {} {}",
                quote::ident(&k.name),
                k.def
            ));
        }
    }
    out.extend(adds);
    for p in &dst.inherits {
        if !src.inherits.contains(p) {
            out.push(format!("ALTER TABLE {name} NO INHERIT {p}"));
        }
    }
    for p in &src.inherits {
        if !dst.inherits.contains(p) {
            out.push(format!("ALTER TABLE {name} INHERIT {p}"));
        }
    }
    if let (Some(parent), Some(bound)) = (&src.parent, &src.bound) {
        if dst.parent != src.parent || dst.bound != src.bound {
            out.push(format!(
                "ALTER TABLE {parent} ATTACH PARTITION {name} {bound}"
            ));
        }
    }
    for p in &src.partitions {
        if !dst.partitions.contains(p) {
            out.push(format!(
                "ALTER TABLE {name} ATTACH PARTITION {} {}",
                p.name, p.bound
            ));
        }
    }
    let reset: Vec<String> = dst
        .options
        .iter()
        .map(|o| option_key(o))
        .filter(|k| !src.options.iter().any(|o| option_key(o) == *k))
        .map(quote::ident)
        .collect();
    if !reset.is_empty() {
        out.push(format!("ALTER TABLE {name} RESET ({})", reset.join(", ")));
    }
    let set: Vec<String> = src
        .options
        .iter()
        .filter(|o| !dst.options.contains(o))
        .map(|o| option_sql(o))
        .collect();
    if !set.is_empty() {
        out.push(format!("ALTER TABLE {name} SET ({})", set.join(", ")));
    }
    if dst.comment != src.comment {
        out.push(comment_sql(&format!("TABLE {name}"), &src.comment));
    }
    if dst.owner != src.owner {
        out.push(format!(
            "ALTER TABLE {name} OWNER TO {}",
            quote::ident(&src.owner)
        ));
    }
    out.extend(acl_sql("TABLE", name, &dst.acl, &src.acl)?);
    Ok(Plan::of(out))
}

fn create_table(src: &TableState) -> std::result::Result<Vec<String>, String> {
    let name = &src.name;
    let unlogged = match src.persistence.as_str() {
        "p" => "",
        "u" => "UNLOGGED ",
        p => return Err(format!("{name} has persistence {p}")),
    };
    // A partition is made whole and then attached (its columns become
    // inherited, as PARTITION OF leaves them); an inheritance child
    // declares only its own columns.
    let mut elems: Vec<String> = src
        .columns
        .iter()
        .filter(|c| c.local || src.inherits.is_empty())
        .map(column_def)
        .collect();
    elems.extend(
        src.constraints
            .iter()
            .map(|k| format!("CONSTRAINT {} {}", quote::ident(&k.name), k.def)),
    );
    let mut sql = format!("CREATE {unlogged}TABLE {name} ({})", elems.join(", "));
    if !src.inherits.is_empty() {
        sql.push_str(&format!(" INHERITS ({})", src.inherits.join(", ")));
    }
    if let Some(k) = &src.partkey {
        sql.push_str(&format!(" PARTITION BY {k}"));
    }
    if !src.options.is_empty() {
        sql.push_str(&format!(
            " WITH ({})",
            src.options
                .iter()
                .map(|o| option_sql(o))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let mut out = vec![sql];
    for c in &src.columns {
        if let Some(s) = c.storage.as_deref().and_then(storage_word) {
            out.push(format!(
                "ALTER TABLE {name} ALTER COLUMN {} SET STORAGE {s}",
                quote::ident(&c.name)
            ));
        }
        if c.comment.is_some() {
            out.push(comment_sql(
                &format!("COLUMN {name}.{}", quote::ident(&c.name)),
                &c.comment,
            ));
        }
    }
    if src.comment.is_some() {
        out.push(comment_sql(&format!("TABLE {name}"), &src.comment));
    }
    if let (Some(parent), Some(bound)) = (&src.parent, &src.bound) {
        out.push(format!(
            "ALTER TABLE {parent} ATTACH PARTITION {name} {bound}"
        ));
    }
    for p in &src.partitions {
        out.push(format!(
            "ALTER TABLE {name} ATTACH PARTITION {} {}",
            p.name, p.bound
        ));
    }
    out.push(format!(
        "ALTER TABLE {name} OWNER TO {}",
        quote::ident(&src.owner)
    ));
    out.extend(acl_sql("TABLE", name, &None, &src.acl)?);
    Ok(out)
}

/// Take index `dst` to `src` (see [`table_plan`]).
pub fn index_plan(src: &IndexState, dst: Option<&IndexState>) -> std::result::Result<Plan, String> {
    let name = &src.name;
    let mut out = Vec::new();
    match dst {
        None if src.constraint => {
            return Err(format!(
                "{name} backs a constraint of {} that is not on the target",
                src.table
            ))
        }
        None if !creates(&src.tag) => {
            return Err(format!(
                "{} changed {name}, which is not on the target (renamed or moved?)",
                src.tag
            ))
        }
        None => {
            // A valid index of a partitioned table was built on its
            // partitions too (pg_get_indexdef says ON ONLY either way).
            let def = if src.partitioned && src.valid {
                src.def.replacen(" ON ONLY ", " ON ", 1)
            } else {
                src.def.clone()
            };
            out.push(def);
            if let Some(p) = &src.parent {
                out.push(format!("ALTER INDEX {p} ATTACH PARTITION {name}"));
            }
            if src.comment.is_some() {
                out.push(comment_sql(&format!("INDEX {name}"), &src.comment));
            }
        }
        Some(d) => {
            if d.def != src.def || d.table != src.table {
                return Err(format!("{name} is defined otherwise on the target"));
            }
            if d.parent != src.parent {
                match &src.parent {
                    Some(p) => out.push(format!("ALTER INDEX {p} ATTACH PARTITION {name}")),
                    None => return Err(format!("{name} was detached from its parent index")),
                }
            }
            if d.comment != src.comment {
                out.push(comment_sql(&format!("INDEX {name}"), &src.comment));
            }
        }
    }
    Ok(Plan::of(out))
}

/// Take sequence `dst` to `src` (see [`table_plan`]). `owner_exists`:
/// the table of its OWNED BY is on the target (a serial column's sequence
/// is made before its table; the table's own command sets it later).
pub fn sequence_plan(
    src: &SequenceState,
    dst: Option<&SequenceState>,
    owner_exists: bool,
) -> std::result::Result<Plan, String> {
    let name = &src.name;
    let params = format!(
        "AS {} INCREMENT BY {} MINVALUE {} MAXVALUE {} START WITH {} CACHE {} {}",
        src.type_,
        src.increment,
        src.min,
        src.max,
        src.start,
        src.cache,
        if src.cycle { "CYCLE" } else { "NO CYCLE" }
    );
    let mut out = Vec::new();
    let mut unchecked = Vec::new();
    let owned_by = |out: &mut Vec<String>, unchecked: &mut Vec<&'static str>| match &src.owned_by {
        Some(o) if owner_exists => out.push(format!("ALTER SEQUENCE {name} OWNED BY {o}")),
        Some(_) => unchecked.push("owned_by"),
        None => out.push(format!("ALTER SEQUENCE {name} OWNED BY NONE")),
    };
    match dst {
        None => {
            if !creates(&src.tag) {
                return Err(format!(
                    "{} changed {name}, which is not on the target (renamed or moved?)",
                    src.tag
                ));
            }
            let unlogged = if src.persistence == "u" {
                "UNLOGGED "
            } else {
                ""
            };
            out.push(format!("CREATE {unlogged}SEQUENCE {name} {params}"));
            out.push(format!(
                "ALTER SEQUENCE {name} OWNER TO {}",
                quote::ident(&src.owner)
            ));
            if src.owned_by.is_some() {
                owned_by(&mut out, &mut unchecked);
            }
        }
        Some(d) => {
            let same = SequenceState {
                tag: String::new(),
                owned_by: d.owned_by.clone(),
                owner: d.owner.clone(),
                persistence: d.persistence.clone(),
                identity: d.identity,
                ..src.clone()
            };
            if &same != d {
                out.push(format!("ALTER SEQUENCE {name} {params}"));
            }
            if d.persistence != src.persistence {
                out.push(format!(
                    "ALTER SEQUENCE {name} SET {}",
                    if src.persistence == "u" {
                        "UNLOGGED"
                    } else {
                        "LOGGED"
                    }
                ));
            }
            if d.owner != src.owner {
                out.push(format!(
                    "ALTER SEQUENCE {name} OWNER TO {}",
                    quote::ident(&src.owner)
                ));
            }
            if d.owned_by != src.owned_by {
                owned_by(&mut out, &mut unchecked);
            }
        }
    }
    Ok(Plan {
        statements: out,
        unchecked,
    })
}

/// Take function or procedure `dst` to `src` (see [`table_plan`]): its
/// definition is a `CREATE OR REPLACE`, run again when it differs (a
/// change the target cannot replace in place is refused there).
pub fn routine_plan(
    src: &RoutineState,
    dst: Option<&RoutineState>,
) -> std::result::Result<Plan, String> {
    let name = &src.name;
    if dst.is_none() && !creates(&src.tag) {
        return Err(format!(
            "{} changed {name}, which is not on the target (renamed or moved?)",
            src.tag
        ));
    }
    let object = if src.prokind == "p" {
        "PROCEDURE"
    } else {
        "FUNCTION"
    };
    let mut out = Vec::new();
    if dst.is_none_or(|d| d.def != src.def) {
        // Its body names things as the function's callers will see them,
        // not under the replay's search_path: not checked (as pg_dump does).
        out.push("SET LOCAL check_function_bodies = false".into());
        out.push(src.def.clone());
        out.push("RESET check_function_bodies".into());
    }
    if dst.is_none_or(|d| d.owner != src.owner) {
        out.push(format!(
            "ALTER {object} {name} OWNER TO {}",
            quote::ident(&src.owner)
        ));
    }
    let (have_acl, have_comment) = match dst {
        Some(d) => (d.acl.clone(), d.comment.clone()),
        None => (None, None),
    };
    out.extend(acl_sql(object, name, &have_acl, &src.acl)?);
    if have_comment != src.comment {
        out.push(comment_sql(&format!("{object} {name}"), &src.comment));
    }
    Ok(Plan::of(out))
}

/// The DROP of what a DROP removed on the source (`IF EXISTS`: CASCADE on
/// the source may already have taken it here too). `None` for a kind that
/// is not dropped by name.
pub fn drop_sql(d: &super::DroppedObject) -> Option<String> {
    let kind = match d.kind.as_str() {
        "table" => "TABLE",
        "view" => "VIEW",
        "materialized view" => "MATERIALIZED VIEW",
        "sequence" => "SEQUENCE",
        "index" => "INDEX",
        "foreign table" => "FOREIGN TABLE",
        "function" => "FUNCTION",
        "procedure" => "PROCEDURE",
        "type" => "TYPE",
        "schema" => "SCHEMA",
        _ => return None,
    };
    Some(format!("DROP {kind} IF EXISTS {}", d.identity))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(name: &str, ty: &str) -> Column {
        Column {
            name: name.into(),
            type_: ty.into(),
            collation: None,
            not_null: false,
            default: None,
            generated: None,
            identity: String::new(),
            storage: None,
            local: true,
            comment: None,
        }
    }

    fn table(name: &str, cols: Vec<Column>) -> TableState {
        TableState {
            tag: "CREATE TABLE".into(),
            name: name.into(),
            relkind: "r".into(),
            persistence: "p".into(),
            owner: "app".into(),
            acl: None,
            options: vec![],
            comment: None,
            partkey: None,
            parent: None,
            bound: None,
            inherits: vec![],
            partitions: vec![],
            columns: cols,
            constraints: vec![],
        }
    }

    #[test]
    fn a_new_partition_is_created_whole_then_attached() {
        let mut t = table(
            "public.\"Ev 1\"",
            vec![col("id", "bigint"), col("at", "timestamp with time zone")],
        );
        t.columns[0].not_null = true;
        t.columns[1].default = Some("now()".into());
        t.columns[0].local = false;
        t.parent = Some("public.ev".into());
        t.bound = Some("FOR VALUES FROM ('2026-01-01') TO ('2026-02-01')".into());
        t.constraints.push(Constraint {
            name: "pos".into(),
            def: "CHECK ((id > 0))".into(),
        });
        t.options = vec!["fillfactor=70".into()];
        let p = table_plan(&t, None).unwrap().statements;
        assert_eq!(
            p,
            vec![
                "CREATE TABLE public.\"Ev 1\" (id bigint NOT NULL, at timestamp with time zone DEFAULT now(), CONSTRAINT pos CHECK ((id > 0))) WITH (fillfactor = '70')",
                "ALTER TABLE public.ev ATTACH PARTITION public.\"Ev 1\" FOR VALUES FROM ('2026-01-01') TO ('2026-02-01')",
                "ALTER TABLE public.\"Ev 1\" OWNER TO app",
            ]
        );
        // Only a CREATE makes what is missing.
        t.tag = "ALTER TABLE".into();
        assert!(table_plan(&t, None)
            .unwrap_err()
            .contains("not on the target"));
    }

    #[test]
    fn an_altered_table_is_diffed_against_the_target() {
        let before = table("public.t", vec![col("id", "integer"), col("v", "text")]);
        let mut after = before.clone();
        after.tag = "ALTER TABLE".into();
        after.columns.push(col("w", "text"));
        after.columns[1].not_null = true;
        after.constraints.push(Constraint {
            name: "v_len".into(),
            def: "CHECK ((length(v) < 10))".into(),
        });
        after.relkind = "p".into();
        let mut dst = before.clone();
        dst.relkind = "p".into();
        after.partkey = Some("RANGE (id)".into());
        dst.partkey = after.partkey.clone();
        dst.partitions = vec![Partition {
            name: "public.t_old".into(),
            bound: "FOR VALUES FROM (0) TO (10)".into(),
        }];
        after.partitions = vec![Partition {
            name: "public.t_new".into(),
            bound: "FOR VALUES FROM (10) TO (20)".into(),
        }];
        after.owner = "other".into();
        let p = table_plan(&after, Some(&dst)).unwrap().statements;
        assert_eq!(
            p,
            vec![
                "ALTER TABLE public.t DETACH PARTITION public.t_old",
                "ALTER TABLE public.t ADD COLUMN w text",
                "ALTER TABLE public.t ALTER COLUMN v SET NOT NULL",
                "ALTER TABLE public.t ADD CONSTRAINT v_len CHECK ((length(v) < 10))",
                "ALTER TABLE public.t ATTACH PARTITION public.t_new FOR VALUES FROM (10) TO (20)",
                "ALTER TABLE public.t OWNER TO other",
            ]
        );
        // The same state: nothing to do.
        assert!(table_plan(&after, Some(&after.clone()))
            .unwrap()
            .statements
            .is_empty());
        // A column gone and one new: a rename, not guessed at.
        let mut renamed = before.clone();
        renamed.columns[1].name = "v2".into();
        assert!(table_plan(&renamed, Some(&before))
            .unwrap_err()
            .contains("renamed"));
    }

    #[test]
    fn valid_partitioned_indexes_recurse_and_acls_are_rebuilt() {
        let i = IndexState {
            tag: "CREATE INDEX".into(),
            name: "public.ev_at".into(),
            table: "public.ev".into(),
            def: "CREATE INDEX ev_at ON ONLY public.ev USING btree (at)".into(),
            parent: None,
            partitioned: true,
            valid: true,
            constraint: false,
            comment: None,
        };
        assert_eq!(
            index_plan(&i, None).unwrap().statements,
            vec!["CREATE INDEX ev_at ON public.ev USING btree (at)"]
        );
        assert!(index_plan(&i, Some(&i)).unwrap().statements.is_empty());
        let mut t = table("public.t", vec![col("id", "integer")]);
        t.acl = Some(vec![
            "app=arwdDxt/app".into(),
            "=r/app".into(),
            "\"a=b\"=r*w/app".into(),
        ]);
        let p = table_plan(&t, None).unwrap().statements;
        assert_eq!(
            p[2..].to_vec(),
            vec![
                "REVOKE ALL ON TABLE public.t FROM app",
                "REVOKE ALL ON TABLE public.t FROM PUBLIC",
                "REVOKE ALL ON TABLE public.t FROM \"a=b\"",
                "GRANT INSERT, SELECT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER ON TABLE public.t TO app",
                "GRANT SELECT ON TABLE public.t TO PUBLIC",
                "GRANT UPDATE ON TABLE public.t TO \"a=b\"",
                "GRANT SELECT ON TABLE public.t TO \"a=b\" WITH GRANT OPTION",
            ]
        );
    }

    #[test]
    fn effects_parse_with_their_kind_and_name_their_object() {
        let e: Effect = serde_json::from_str(
            r#"{"kind": "other", "tag": "CREATE TYPE", "object_type": "type", "identity": "public.mood"}"#,
        )
        .unwrap();
        assert_eq!(e.key(), "type public.mood");
        let s: Effect = serde_json::from_str(
            r#"{"kind": "sequence", "tag": "CREATE SEQUENCE", "name": "public.s", "type": "bigint", "start": "1",
                "increment": "1", "min": "1", "max": "9", "cache": "1", "cycle": false, "owned_by": "public.t.id",
                "identity": false, "owner": "app", "persistence": "p"}"#,
        )
        .unwrap();
        let Effect::Sequence(seq) = &s else { panic!() };
        let p = sequence_plan(seq, None, false).unwrap();
        assert_eq!(p.unchecked, vec!["owned_by"]);
        assert_eq!(p.statements[0], "CREATE SEQUENCE public.s AS bigint INCREMENT BY 1 MINVALUE 1 MAXVALUE 9 START WITH 1 CACHE 1 NO CYCLE");
        let f: Effect = serde_json::from_str(
            r#"{"kind": "routine", "tag": "CREATE FUNCTION", "name": "public.f(integer)", "prokind": "f",
                "def": "CREATE OR REPLACE FUNCTION public.f(a integer) RETURNS integer LANGUAGE sql AS $f$SELECT a$f$",
                "owner": "app", "acl": ["=X/app", "app=X/app", "ro=X*/app"], "comment": null}"#,
        )
        .unwrap();
        assert_eq!(f.key(), "function public.f(integer)");
        let Effect::Routine(r) = &f else { panic!() };
        let p = routine_plan(r, None).unwrap().statements;
        assert_eq!(p[3], "ALTER FUNCTION public.f(integer) OWNER TO app");
        assert_eq!(
            p.last().unwrap(),
            "GRANT EXECUTE ON FUNCTION public.f(integer) TO ro WITH GRANT OPTION"
        );
        assert!(routine_plan(r, Some(r)).unwrap().statements.is_empty());
        assert_eq!(
            drop_sql(&super::super::DroppedObject {
                kind: "function".into(),
                identity: "public.f(integer)".into()
            })
            .unwrap(),
            "DROP FUNCTION IF EXISTS public.f(integer)"
        );
    }
}
