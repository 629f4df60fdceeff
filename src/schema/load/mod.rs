//! Reading the schema from the source's catalogs into a [`SchemaModel`].
//!
//! Runs on one session inside the migration's snapshot, with pg_dump's
//! settings (`search_path = ''`, so every deparse function schema-qualifies
//! names). Relations are locked in ACCESS SHARE mode before any `pg_get_*`
//! function touches them: those read the current catalog cache, not the
//! snapshot. One bulk query per catalog; per-kind builders turn the rows
//! into statements.
//!
//! First slice (issue 3 in progress): schemas, enum / domain / composite /
//! range types, functions and procedures, sequences (OWNED BY, identity),
//! tables (columns, defaults, generated and identity columns, NOT NULL,
//! inheritance, partitions created standalone then attached, reloptions,
//! UNLOGGED), CHECK / PRIMARY KEY / UNIQUE / EXCLUDE / FOREIGN KEY
//! constraints, indexes (with partition attach), views and materialized
//! views, owners and comments. Not yet: aggregates, triggers, rules,
//! policies, statistics, extensions, collations, ACLs.

use std::collections::HashMap;

use tokio_postgres::Client;

use pipeline::Catalog;

use super::model::{class, SchemaModel, SchemaObject};
use super::sort::ObjectKind;
use super::tablespace;
use crate::error::{MigrationError, Result};
use crate::pg::compact::{self, CompactRow};
use crate::pg::quote::{ident, literal, qualified};

mod aggregates;
mod casts;
mod database;
mod foreign;
mod operators;
mod pipeline;
mod publications;
mod security_labels;
mod subscriptions;
mod text_search;
mod types;

pub use database::{limit_statements, reopen_statements, set_clause, LIMITED_DATABASE_SQL};

/// pg_dump's session settings for introspection, and no JIT (see
/// `pg::session`'s common settings).
pub async fn setup_session(client: &Client) -> Result<()> {
    client
        .batch_execute(
            "SELECT pg_catalog.set_config('search_path', '', false); SET jit = off; \
             SET DateStyle = ISO; SET IntervalStyle = postgres; SET extra_float_digits = 3; \
             SET row_security = off; SET statement_timeout = 0; SET lock_timeout = 0; \
             SET idle_in_transaction_session_timeout = 0",
        )
        .await
        .map_err(|e| MigrationError::db("configuring the schema session", e))
}

/// The WHERE fragment keeping namespaces (alias `n`) that hold user objects.
const USER_NAMESPACE: &str =
    "n.nspname NOT IN ('pg_catalog', 'information_schema', '_pg_dbmigrator') \
     AND n.nspname !~ '^pg_(toast|temp_|toast_temp_)'";

/// The WHERE fragment that keeps user objects of namespace alias `n` whose
/// catalog row (class `cls`, oid expression `oid`) is not an extension member.
fn user_object(cls: u32, oid: &str) -> String {
    format!(
        "{USER_NAMESPACE} AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend e WHERE e.classid = {cls} \
         AND e.objid = {oid} AND e.deptype = 'e')"
    )
}

/// As [`query`], each row kept as a [`CompactRow`]: for the reads the load
/// holds whole (a row per relation, a row per column), which as
/// tokio-postgres rows were the schema load's largest memory.
async fn compact_rows(c: &Catalog<'_>, what: &str, sql: &str) -> Result<Vec<CompactRow>> {
    let mut out = Vec::new();
    compact_each(c, what, sql, |r| out.push(r)).await?;
    out.shrink_to_fit();
    Ok(out)
}

/// Each row of one read made a [`CompactRow`] as it arrives, for a loader
/// that files them itself (by relation, say).
async fn compact_each(
    c: &Catalog<'_>,
    what: &str,
    sql: &str,
    mut each: impl FnMut(CompactRow),
) -> Result<()> {
    let mut types = None;
    c.each(what, sql, |r| {
        let types = types.get_or_insert_with(|| compact::types_of(r));
        each(CompactRow::new(r, types));
    })
    .await
}

/// Rows keyed by their first column (an owner's oid), in the order read:
/// a loader looking up each object's rows by filtering the whole answer
/// costs objects × rows (at 25,000 tables with a CHECK each, 625 million
/// decodes).
fn by_owner(rows: &[tokio_postgres::Row]) -> HashMap<u32, Vec<&tokio_postgres::Row>> {
    let mut out: HashMap<u32, Vec<&tokio_postgres::Row>> = HashMap::new();
    for r in rows {
        out.entry(r.get(0)).or_default().push(r);
    }
    out
}

/// One catalog read (see [`pipeline`]: in the load, sent ahead with the
/// others of its segment).
async fn query(c: &Catalog<'_>, what: &str, sql: &str) -> Result<Vec<tokio_postgres::Row>> {
    c.rows(what, sql).await
}

/// As [`query`], handing each row to `each` as it arrives instead of
/// collecting them: for the catalog reads that grow with the schema
/// (`pg_depend` has a dozen rows per table), whose rows held all at once
/// would be the run's peak memory.
async fn query_each(
    c: &Catalog<'_>,
    what: &str,
    sql: &str,
    each: impl FnMut(&tokio_postgres::Row),
) -> Result<()> {
    c.each(what, sql, each).await
}

/// Comments, keyed by `(classoid, objoid, objsubid)`.
type Comments = HashMap<(u32, u32, i32), String>;

fn comment_on(comments: &Comments, key: (u32, u32, i32), what: &str) -> Option<String> {
    comments
        .get(&key)
        .map(|c| format!("COMMENT ON {what} IS {};", literal(c)))
}

/// Whether the session's role is a superuser: only one may read password
/// hashes and subscriptions' connection strings.
async fn is_superuser(c: &Catalog<'_>) -> Result<bool> {
    Ok(query(
        c,
        "the source role",
        "SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user",
    )
    .await?
    .first()
    .is_some_and(|r| r.get::<_, bool>(0)))
}

/// Load the schema. `server_major` gates catalog columns that changed.
/// `lock_only`: the relations to lock while reading (all user tables when `None`).
///
/// The loaders run twice (see [`pipeline`]): a dry run that writes their
/// reads down, then the load, its reads sent a segment at a time.
pub async fn load(
    client: &Client,
    server_major: u32,
    opts: &super::ReadOptions,
    lock_only: Option<&std::collections::HashSet<u32>>,
) -> Result<SchemaModel> {
    // Reads no relation through a deparse function: before the lock, as
    // ever, and on its own (its statements are prepared).
    let refresh = crate::pg::catalog::matview_refresh(client, &opts.filters.compile()?).await?;
    // Known before the dry run, so it foresees the reads a superuser makes
    // (subscriptions): a read it misses is run alone, after everything in
    // flight is collected into memory (`pg_depend` included).
    let superuser = is_superuser(&Catalog::direct(client)).await?;
    let record = Catalog::record(client);
    load_with(&record, server_major, opts, lock_only, &refresh, superuser).await?;
    let c = Catalog::pipelined(client, record);
    let m = load_with(&c, server_major, opts, lock_only, &refresh, superuser).await?;
    let counts = c.counts().await;
    tracing::debug!(
        "schema: {} catalog reads pipelined, {} on their own",
        counts.pipelined,
        counts.alone
    );
    Ok(m)
}

async fn load_with(
    c: &Catalog<'_>,
    server_major: u32,
    opts: &super::ReadOptions,
    lock_only: Option<&std::collections::HashSet<u32>>,
    refresh: &crate::pg::catalog::MatviewRefresh,
    superuser: bool,
) -> Result<SchemaModel> {
    let mut m = SchemaModel::default();
    let comments: Comments = query(
        c,
        "comments",
        "SELECT classoid, objoid, objsubid, description FROM pg_catalog.pg_description",
    )
    .await?
    .iter()
    .map(|r| ((r.get(0), r.get(1), r.get(2)), r.get(3)))
    .collect();

    load_namespaces(c, &mut m, &comments).await?;
    load_types(c, &mut m, &comments, server_major).await?;
    load_functions(c, &mut m, &comments).await?;
    types::load_base_types(c, &mut m, &comments, server_major).await?;
    types::range_shells(c, &mut m).await?;
    let rels = load_relations(
        c,
        &mut m,
        &comments,
        server_major,
        lock_only,
        refresh,
        !opts.no_toast_compression,
    )
    .await?;
    types::split_row_type_defaults(c, &mut m).await?;
    types::split_row_type_checks(c, &mut m, &comments).await?;
    load_sequences(c, &mut m, &comments, &rels, server_major).await?;
    load_constraints_and_indexes(c, &mut m, &comments, &rels, server_major).await?;
    load_aggregates(c, &mut m, &comments).await?;
    aggregates::load_ordered_set_aggregates(c, &mut m, &comments).await?;
    operators::load_operators(c, &mut m, &comments).await?;
    operators::load_opfamilies_and_classes(c, &mut m, &comments).await?;
    casts::load_casts(c, &mut m, &comments).await?;
    casts::load_conversions(c, &mut m, &comments).await?;
    casts::load_transforms(c, &mut m, &comments).await?;
    casts::load_languages(c, &mut m, &comments, server_major).await?;
    casts::load_access_methods(c, &mut m, &comments).await?;
    casts::table_access_methods(c, &mut m).await?;
    load_collations(c, &mut m, &comments, server_major).await?;
    text_search::load_text_search(c, &mut m, &comments).await?;
    foreign::load_foreign(c, &mut m, &comments, server_major).await?;
    load_event_triggers(c, &mut m, &comments).await?;
    load_extensions(c, &mut m, &comments).await?;
    // After extensions: an extension table's row type stands for the extension.
    types::alias_row_types(c, &mut m).await?;
    load_rules_triggers_policies(c, &mut m, &comments, &rels, server_major).await?;
    load_statistics(c, &mut m, &comments, server_major).await?;
    publications::load_publications(c, &mut m, &comments, server_major).await?;
    if !opts.no_subscriptions {
        subscriptions::load_subscriptions(c, &mut m, &comments, server_major, superuser).await?;
    }
    if !opts.no_security_labels {
        security_labels::load_security_labels(c, &mut m).await?;
    }
    load_acls(c, &mut m, server_major, opts.filters.selects_objects()).await?;
    database::load_database(c, &mut m, server_major).await?;

    // Catalog dependencies, minus pins and extension membership. Last:
    // each is resolved to the objects of its two rows as it arrives.
    query_each(
        c,
        "dependencies",
        "SELECT classid, objid, refclassid, refobjid FROM pg_catalog.pg_depend \
          WHERE deptype NOT IN ('p', 'e') AND classid <> 0",
        |r| m.add_catalog_dep((r.get(0), r.get(1)), (r.get(2), r.get(3))),
    )
    .await?;
    Ok(m)
}

async fn load_namespaces(c: &Catalog<'_>, m: &mut SchemaModel, comments: &Comments) -> Result<()> {
    let sql = format!(
        "SELECT n.oid, n.nspname::text, pg_catalog.pg_get_userbyid(n.nspowner)::text \
           FROM pg_catalog.pg_namespace n WHERE {} ORDER BY 2",
        user_object(class::PG_NAMESPACE, "n.oid")
    );
    for r in query(c, "schemas", &sql).await? {
        let (oid, name, owner): (u32, String, String) = (r.get(0), r.get(1), r.get(2));
        let q = ident(&name);
        let mut o = SchemaObject::new(ObjectKind::Namespace, "", &name, oid, format!("SCHEMA {q}"));
        if name != "public" {
            o.create.push(format!("CREATE SCHEMA {q};"));
            o.owner = Some(format!("ALTER SCHEMA {q} OWNER TO {};", ident(&owner)).into());
        } else if owner != "pg_database_owner" {
            // Before PostgreSQL 15 public belongs to the bootstrap superuser;
            // pg_dump keeps that owner, and so do we.
            o.owner = Some(format!("ALTER SCHEMA public OWNER TO {};", ident(&owner)).into());
        }
        // public's initdb comment is not a change to carry over.
        let key = (class::PG_NAMESPACE, oid, 0);
        let initdb_comment = name == "public"
            && comments.get(&key).map(String::as_str) == Some("standard public schema");
        if !initdb_comment {
            o.comments
                .extend(comment_on(comments, key, &format!("SCHEMA {q}")));
        }
        // The target's public schema has the initdb comment: a source
        // whose comment was removed has it removed (pg_dump prints IS '').
        if name == "public" && !comments.contains_key(&key) {
            o.comments
                .push("COMMENT ON SCHEMA public IS NULL;".to_string());
        }
        m.add(o, &[(class::PG_NAMESPACE, oid)]);
    }
    Ok(())
}

async fn load_types(
    c: &Catalog<'_>,
    m: &mut SchemaModel,
    comments: &Comments,
    major: u32,
) -> Result<()> {
    let enum_labels: HashMap<u32, Vec<String>> = {
        let mut h: HashMap<u32, Vec<String>> = HashMap::new();
        for r in query(
            c,
            "enum labels",
            "SELECT enumtypid, enumlabel::text FROM pg_catalog.pg_enum ORDER BY enumtypid, enumsortorder",
        )
        .await?
        {
            h.entry(r.get(0)).or_default().push(r.get(1));
        }
        h
    };
    let sql = format!(
        "SELECT t.oid, n.nspname::text, t.typname::text, t.typtype::text,
                pg_catalog.pg_get_userbyid(t.typowner)::text,
                pg_catalog.format_type(t.typbasetype, t.typtypmod), t.typnotnull,
                pg_catalog.pg_get_expr(t.typdefaultbin, 'pg_catalog.pg_type'::pg_catalog.regclass),
                -- A domain over a base type with a DEFAULT inherits it unbound: not ours to print.
                CASE WHEN t.typdefaultbin IS NULL AND t.typdefault IS NOT DISTINCT FROM
                          (SELECT b.typdefault FROM pg_catalog.pg_type b WHERE b.oid = t.typbasetype) THEN NULL ELSE t.typdefault END,
                CASE WHEN t.typtype = 'd' AND t.typcollation <> 0
                          AND t.typcollation IS DISTINCT FROM (SELECT b.typcollation FROM pg_catalog.pg_type b WHERE b.oid = t.typbasetype)
                     THEN (SELECT pg_catalog.format('%I.%I', cn.nspname, co.collname) FROM pg_catalog.pg_collation co
                             JOIN pg_catalog.pg_namespace cn ON cn.oid = co.collnamespace WHERE co.oid = t.typcollation) END,
                t.typrelid
           FROM pg_catalog.pg_type t JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace
          WHERE t.typtype IN ('e', 'd', 'c', 'r')
            AND (t.typtype <> 'c' OR (SELECT k.relkind FROM pg_catalog.pg_class k WHERE k.oid = t.typrelid) = 'c')
            AND {}",
        user_object(class::PG_TYPE, "t.oid")
    );
    let types = query(c, "types", &sql).await?;
    let domain_checks = query(
        c,
        "domain constraints",
        "SELECT contypid, oid, conname::text, pg_catalog.pg_get_constraintdef(oid), convalidated
           FROM pg_catalog.pg_constraint WHERE contypid <> 0 AND contype = 'c' ORDER BY contypid, conname",
    )
    .await?;
    let domain_checks = by_owner(&domain_checks);
    let comp_attrs = query(
        c,
        "composite type attributes",
        "SELECT a.attrelid, a.attname::text, pg_catalog.format_type(a.atttypid, a.atttypmod),
                CASE WHEN a.attcollation <> 0 AND a.attcollation IS DISTINCT FROM (SELECT ty.typcollation FROM pg_catalog.pg_type ty WHERE ty.oid = a.atttypid)
                     THEN (SELECT pg_catalog.format('%I.%I', cn.nspname, co.collname) FROM pg_catalog.pg_collation co
                             JOIN pg_catalog.pg_namespace cn ON cn.oid = co.collnamespace WHERE co.oid = a.attcollation) END,
                a.attnum::int4
           FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_class k ON k.oid = a.attrelid
          WHERE k.relkind = 'c' AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attrelid, a.attnum",
    )
    .await?;
    let comp_attrs = by_owner(&comp_attrs);
    let multirange = if major >= 14 {
        "(SELECT pg_catalog.format('%I.%I', mn.nspname, mt.typname) FROM pg_catalog.pg_type mt JOIN pg_catalog.pg_namespace mn ON mn.oid = mt.typnamespace WHERE mt.oid = r.rngmultitypid)"
    } else {
        "NULL::text"
    };
    let ranges = query(
        c,
        "range types",
        &format!(
            "SELECT r.rngtypid, pg_catalog.format_type(r.rngsubtype, NULL), {multirange},
                    CASE WHEN NOT oc.opcdefault THEN pg_catalog.format('%I.%I', ocn.nspname, oc.opcname) END,
                    CASE WHEN r.rngcollation <> 0 AND r.rngcollation IS DISTINCT FROM (SELECT st.typcollation FROM pg_catalog.pg_type st WHERE st.oid = r.rngsubtype)
                         THEN (SELECT pg_catalog.format('%I.%I', cn.nspname, co.collname) FROM pg_catalog.pg_collation co
                                 JOIN pg_catalog.pg_namespace cn ON cn.oid = co.collnamespace WHERE co.oid = r.rngcollation) END,
                    CASE WHEN r.rngcanonical <> 0 THEN r.rngcanonical::pg_catalog.regproc::text END,
                    CASE WHEN r.rngsubdiff <> 0 THEN r.rngsubdiff::pg_catalog.regproc::text END,
                    (SELECT t.typname::text FROM pg_catalog.pg_type t WHERE t.oid = r.rngtypid)
               FROM pg_catalog.pg_range r
               JOIN pg_catalog.pg_opclass oc ON oc.oid = r.rngsubopc
               JOIN pg_catalog.pg_namespace ocn ON ocn.oid = oc.opcnamespace"
        ),
    )
    .await?;
    let ranges: HashMap<u32, &tokio_postgres::Row> = ranges.iter().map(|r| (r.get(0), r)).collect();

    for r in &types {
        let (oid, nsp, name, typtype, owner): (u32, String, String, String, String) =
            (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4));
        let q = qualified(&nsp, &name);
        let (word, body) = match typtype.as_str() {
            "e" => {
                let labels = enum_labels.get(&oid).cloned().unwrap_or_default();
                let list: Vec<String> = labels
                    .iter()
                    .map(|l| format!("\n    {}", literal(l)))
                    .collect();
                (
                    "TYPE",
                    format!("CREATE TYPE {q} AS ENUM ({}\n);", list.join(",")),
                )
            }
            "d" => {
                let mut s = format!("CREATE DOMAIN {q} AS {}", r.get::<_, String>(5));
                if let Some(coll) = r.get::<_, Option<String>>(9) {
                    s.push_str(&format!(" COLLATE {coll}"));
                }
                let default: Option<String> = r
                    .get::<_, Option<String>>(7)
                    .or(r.get::<_, Option<String>>(8).map(|d| literal(&d)));
                if let Some(d) = default {
                    s.push_str(&format!(" DEFAULT {d}"));
                }
                if r.get::<_, bool>(6) {
                    s.push_str(" NOT NULL");
                }
                for ck in domain_checks.get(&oid).into_iter().flatten() {
                    if ck.get::<_, bool>(4) {
                        s.push_str(&format!(
                            "\n\tCONSTRAINT {} {}",
                            ident(&ck.get::<_, String>(2)),
                            ck.get::<_, String>(3)
                        ));
                    }
                }
                s.push(';');
                ("DOMAIN", s)
            }
            "c" => {
                let relid: u32 = r.get(10);
                let attrs: Vec<String> = comp_attrs
                    .get(&relid)
                    .into_iter()
                    .flatten()
                    .map(|a| {
                        let mut s = format!(
                            "\n\t{} {}",
                            ident(&a.get::<_, String>(1)),
                            a.get::<_, String>(2)
                        );
                        if let Some(coll) = a.get::<_, Option<String>>(3) {
                            s.push_str(&format!(" COLLATE {coll}"));
                        }
                        s
                    })
                    .collect();
                (
                    "TYPE",
                    format!("CREATE TYPE {q} AS ({}\n);", attrs.join(",")),
                )
            }
            _ => {
                let Some(rg) = ranges.get(&oid) else { continue };
                let mut opts = vec![format!("subtype = {}", rg.get::<_, String>(1))];
                if let Some(mr) = rg.get::<_, Option<String>>(2) {
                    // Only when not the automatic name (<range name> with "range" → "multirange").
                    let auto = {
                        let tn: String = rg.get(7);
                        let base = if tn.contains("range") {
                            tn.replacen("range", "multirange", 1)
                        } else {
                            format!("{tn}_multirange")
                        };
                        qualified(&nsp, &base)
                    };
                    if mr != auto {
                        opts.push(format!("multirange_type_name = {mr}"));
                    }
                }
                if let Some(opc) = rg.get::<_, Option<String>>(3) {
                    opts.push(format!("subtype_opclass = {opc}"));
                }
                if let Some(coll) = rg.get::<_, Option<String>>(4) {
                    opts.push(format!("collation = {coll}"));
                }
                if let Some(f) = rg.get::<_, Option<String>>(5) {
                    opts.push(format!("canonical = {f}"));
                }
                if let Some(f) = rg.get::<_, Option<String>>(6) {
                    opts.push(format!("subtype_diff = {f}"));
                }
                (
                    "TYPE",
                    format!(
                        "CREATE TYPE {q} AS RANGE (\n    {}\n);",
                        opts.join(",\n    ")
                    ),
                )
            }
        };
        let mut o = SchemaObject::new(ObjectKind::Type, &nsp, &name, oid, format!("{word} {q}"));
        o.create.push(body);
        o.owner = Some(format!("ALTER {word} {q} OWNER TO {};", ident(&owner)).into());
        o.comments.extend(comment_on(
            comments,
            (class::PG_TYPE, oid, 0),
            &format!("{word} {q}"),
        ));
        let relid: u32 = r.get(10);
        if typtype == "c" {
            for a in comp_attrs.get(&relid).into_iter().flatten() {
                let what = format!("COLUMN {q}.{}", ident(&a.get::<_, String>(1)));
                o.comments.extend(comment_on(
                    comments,
                    (class::PG_CLASS, relid, a.get::<_, i32>(4)),
                    &what,
                ));
            }
        }
        let i = m.add(o, &[(class::PG_TYPE, oid)]);
        if relid != 0 {
            m.alias((class::PG_CLASS, relid), i);
        }
        // Unvalidated domain checks come after the data, like pg_dump.
        if typtype == "d" {
            for ck in domain_checks.get(&oid).into_iter().flatten() {
                let coid: u32 = ck.get(1);
                let cname: String = ck.get(2);
                if ck.get::<_, bool>(4) {
                    m.alias((class::PG_CONSTRAINT, coid), i);
                    m.objects[i].comments.extend(comment_on(
                        comments,
                        (class::PG_CONSTRAINT, coid, 0),
                        &format!("CONSTRAINT {} ON DOMAIN {q}", ident(&cname)),
                    ));
                    continue;
                }
                let mut co = SchemaObject::new(
                    ObjectKind::Constraint,
                    &nsp,
                    &cname,
                    coid,
                    format!("CONSTRAINT {} ON DOMAIN {q}", ident(&cname)),
                );
                co.create.push(format!(
                    "ALTER DOMAIN {q}\n    ADD CONSTRAINT {} {};",
                    ident(&cname),
                    ck.get::<_, String>(3)
                ));
                co.deps.push(i);
                co.part_of.push(i);
                co.comments.extend(comment_on(
                    comments,
                    (class::PG_CONSTRAINT, coid, 0),
                    &format!("CONSTRAINT {} ON DOMAIN {q}", ident(&cname)),
                ));
                m.add(co, &[(class::PG_CONSTRAINT, coid)]);
            }
        }
    }
    // Array types stand for their element type (dependencies through `int[]` columns).
    for r in query(
        c,
        "array types",
        "SELECT t.oid, t.typelem FROM pg_catalog.pg_type t WHERE t.typelem <> 0 AND t.oid >= 16384
            AND (SELECT e.typarray FROM pg_catalog.pg_type e WHERE e.oid = t.typelem) = t.oid",
    )
    .await?
    {
        let (arr, elem): (u32, u32) = (r.get(0), r.get(1));
        if let Some(&i) = m.by_ref.get(&(class::PG_TYPE, elem)) {
            m.alias((class::PG_TYPE, arr), i);
        }
    }
    Ok(())
}

async fn load_functions(c: &Catalog<'_>, m: &mut SchemaModel, comments: &Comments) -> Result<()> {
    let sql = format!(
        "SELECT p.oid, n.nspname::text, p.proname::text, pg_catalog.pg_get_function_identity_arguments(p.oid),
                p.prokind::text, pg_catalog.pg_get_userbyid(p.proowner)::text,
                CASE WHEN p.prokind IN ('f', 'p', 'w') THEN pg_catalog.pg_get_functiondef(p.oid) END
           FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
          WHERE {} AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d WHERE d.classid = {} AND d.objid = p.oid AND d.deptype = 'i')",
        user_object(class::PG_PROC, "p.oid"),
        class::PG_PROC
    );
    for r in query(c, "functions", &sql).await? {
        let (oid, nsp, name, args, kind, owner): (u32, String, String, String, String, String) =
            (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5));
        let Some(def) = r.get::<_, Option<String>>(6) else {
            continue; // aggregates: load_aggregates
        };
        let word = if kind == "p" { "PROCEDURE" } else { "FUNCTION" };
        let sig = format!("{}({args})", qualified(&nsp, &name));
        let mut o = SchemaObject::new(ObjectKind::Func, &nsp, &name, oid, format!("{word} {sig}"));
        o.key.tiebreak.push(args.clone().into());
        let def = def.trim_end().to_string();
        o.create.push(format!("{def};"));
        o.owner = Some(format!("ALTER {word} {sig} OWNER TO {};", ident(&owner)).into());
        o.comments.extend(comment_on(
            comments,
            (class::PG_PROC, oid, 0),
            &format!("{word} {sig}"),
        ));
        m.add(o, &[(class::PG_PROC, oid)]);
    }
    Ok(())
}

/// What later loaders need to know about a relation.
#[derive(Debug, Clone)]
pub(crate) struct Rel {
    pub index: usize,
    pub oid: u32,
    /// Shared with the sort keys of the table's indexes, constraints and
    /// triggers (their tie-breaker).
    pub qname: std::sync::Arc<str>,
    pub namespace: String,
    pub kind: char,
    pub unlogged: bool,
}

fn reloptions_clause(opts: &Option<Vec<String>>) -> Option<String> {
    let opts = opts.as_ref().filter(|o| !o.is_empty())?;
    let items: Vec<String> = opts
        .iter()
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => format!("{k}={}", literal(v)),
            None => kv.clone(),
        })
        .collect();
    Some(format!("WITH ({})", items.join(", ")))
}

async fn load_relations(
    c: &Catalog<'_>,
    m: &mut SchemaModel,
    comments: &Comments,
    major: u32,
    lock_only: Option<&std::collections::HashSet<u32>>,
    refresh: &crate::pg::catalog::MatviewRefresh,
    with_compression: bool,
) -> Result<HashMap<u32, Rel>> {
    // Names first, no server functions: then lock, then deparse.
    let sql = format!(
        "SELECT c.oid, pg_catalog.format('%I.%I', n.nspname, c.relname)
           FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
          WHERE c.relkind IN ('r', 'p') AND c.relpersistence <> 't' AND {}",
        user_object(class::PG_CLASS, "c.oid")
    );
    // Tables only: LOCK refuses materialized views, and views and
    // materialized views are protected through the tables they read.
    let names: Vec<tokio_postgres::Row> = query(c, "relations", &sql)
        .await?
        .into_iter()
        .filter(|r| lock_only.is_none_or(|only| only.contains(&r.get::<_, u32>(0))))
        .collect();
    for chunk in names.chunks(500) {
        let list: Vec<String> = chunk.iter().map(|r| r.get::<_, String>(1)).collect();
        if !list.is_empty() {
            c.session()
                .await
                .batch_execute(&format!(
                    "LOCK TABLE {} IN ACCESS SHARE MODE",
                    list.join(", ")
                ))
                .await
                .map_err(|e| MigrationError::db("locking relations for schema reading", e))?;
        }
    }
    // The deparse reads below go out after the lock, never with it.
    c.barrier().await;
    let sql = format!(
        "SELECT c.oid, n.nspname::text, c.relname::text, c.relkind::text, c.relpersistence::text,
                pg_catalog.pg_get_userbyid(c.relowner)::text,
                (pg_catalog.array_remove(c.reloptions, NULL)::text[]
                 || COALESCE((SELECT pg_catalog.array_agg('toast.' || x) FROM pg_catalog.pg_class tc, pg_catalog.unnest(tc.reloptions) x
                               WHERE tc.oid = c.reltoastrelid), '{{}}'::text[]))::text[],
                c.relispartition,
                CASE WHEN c.relispartition THEN pg_catalog.pg_get_expr(c.relpartbound, c.oid) END,
                CASE WHEN c.relkind = 'p' THEN pg_catalog.pg_get_partkeydef(c.oid) END,
                c.relreplident::text, c.relforcerowsecurity, c.relispopulated,
                CASE WHEN c.relkind IN ('v', 'm') THEN pg_catalog.pg_get_viewdef(c.oid) END,
                CASE WHEN c.reloftype <> 0 THEN pg_catalog.format_type(c.reloftype, NULL) END,
                (SELECT pg_catalog.quote_ident(fs.srvname) FROM pg_catalog.pg_foreign_table ft
                   JOIN pg_catalog.pg_foreign_server fs ON fs.oid = ft.ftserver WHERE ft.ftrelid = c.oid),
                (SELECT {} FROM pg_catalog.pg_foreign_table ft WHERE ft.ftrelid = c.oid),
                (SELECT t.spcname::text FROM pg_catalog.pg_tablespace t WHERE t.oid = c.reltablespace)
           FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
          WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f') AND c.relpersistence <> 't' AND {}",
        foreign::options_sql("ft.ftoptions"),
        user_object(class::PG_CLASS, "c.oid")
    );
    let rows = compact_rows(c, "relation definitions", &sql).await?;
    let compression = if major >= 14 {
        "a.attcompression::text"
    } else {
        "''::text"
    };
    // PostgreSQL 18 keeps NOT NULL constraints in pg_constraint, with a
    // name, NO INHERIT and NOT VALID.
    let not_null = if major >= 18 {
        "(SELECT co.conname::text FROM pg_catalog.pg_constraint co
           WHERE co.conrelid = a.attrelid AND co.contype = 'n' AND co.conkey[1] = a.attnum),
         (SELECT co.convalidated FROM pg_catalog.pg_constraint co
           WHERE co.conrelid = a.attrelid AND co.contype = 'n' AND co.conkey[1] = a.attnum),
         (SELECT co.connoinherit FROM pg_catalog.pg_constraint co
           WHERE co.conrelid = a.attrelid AND co.contype = 'n' AND co.conkey[1] = a.attnum)"
    } else {
        "NULL::text, NULL::bool, NULL::bool"
    };
    let stattarget = if major >= 17 {
        "a.attstattarget::int4"
    } else {
        "NULLIF(a.attstattarget, -1)::int4"
    };
    let mut cols_by_rel: HashMap<u32, Vec<CompactRow>> = HashMap::new();
    compact_each(
        c,
        "columns",
        &format!(
            "SELECT a.attrelid, a.attname::text, pg_catalog.format_type(a.atttypid, a.atttypmod), a.attnotnull,
                    a.attislocal, a.attidentity::text, a.attgenerated::text,
                    pg_catalog.pg_get_expr(d.adbin, d.adrelid), d.oid,
                    CASE WHEN a.attcollation <> 0 AND a.attcollation IS DISTINCT FROM (SELECT ty.typcollation FROM pg_catalog.pg_type ty WHERE ty.oid = a.atttypid)
                         THEN (SELECT pg_catalog.format('%I.%I', cn.nspname, co.collname) FROM pg_catalog.pg_collation co
                                 JOIN pg_catalog.pg_namespace cn ON cn.oid = co.collnamespace WHERE co.oid = a.attcollation) END,
                    a.attnum, {compression}, {stattarget},
                    CASE WHEN a.attstorage <> ty.typstorage THEN a.attstorage::text END,
                    a.attoptions::text[], {fdw_options}, {not_null}
               FROM pg_catalog.pg_attribute a
               JOIN pg_catalog.pg_class k ON k.oid = a.attrelid
               JOIN pg_catalog.pg_type ty ON ty.oid = a.atttypid
               LEFT JOIN pg_catalog.pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
              WHERE k.relkind IN ('r', 'p', 'v', 'm', 'f') AND a.attnum > 0 AND NOT a.attisdropped
              ORDER BY a.attrelid, a.attnum",
            fdw_options = foreign::options_sql("a.attfdwoptions")
        ),
        |r| cols_by_rel.entry(r.get(0)).or_default().push(r),
    )
    .await?;
    // NOT VALID NOT NULL constraints (PostgreSQL 18) are added after the
    // data like NOT VALID checks; valid ones are part of the column.
    let checks = query(
        c,
        "check constraints",
        "SELECT conrelid, oid, conname::text, pg_catalog.pg_get_constraintdef(oid), conislocal, convalidated
           FROM pg_catalog.pg_constraint
          WHERE (contype = 'c' OR (contype = 'n' AND NOT convalidated)) AND conrelid <> 0
          ORDER BY conrelid, conname",
    )
    .await?;
    let checks = by_owner(&checks);
    let parents = query(
        c,
        "inheritance",
        "SELECT i.inhrelid, pg_catalog.format('%I.%I', pn.nspname, p.relname), i.inhparent
           FROM pg_catalog.pg_inherits i JOIN pg_catalog.pg_class p ON p.oid = i.inhparent
           JOIN pg_catalog.pg_namespace pn ON pn.oid = p.relnamespace
          WHERE p.relkind IN ('r', 'p') ORDER BY i.inhrelid, i.inhseqno",
    )
    .await?;
    let mut parents_of: HashMap<u32, Vec<(String, u32)>> = HashMap::new();
    for r in &parents {
        parents_of
            .entry(r.get(0))
            .or_default()
            .push((r.get(1), r.get(2)));
    }

    let mut rels = HashMap::new();
    let mut refresh_of: HashMap<u32, usize> = HashMap::new();
    for r in &rows {
        let (oid, nsp, name, kind, persistence, owner): (
            u32,
            String,
            String,
            String,
            String,
            String,
        ) = (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5));
        let kind = kind.chars().next().unwrap_or('r');
        let q = qualified(&nsp, &name);
        let is_partition: bool = r.get(7);
        let reloptions: Option<Vec<String>> = r.get(6);
        let word = match kind {
            'v' => "VIEW",
            'm' => "MATERIALIZED VIEW",
            'f' => "FOREIGN TABLE",
            _ => "TABLE",
        };
        let mut o = SchemaObject::new(ObjectKind::Table, &nsp, &name, oid, format!("{word} {q}"));
        let mut extra = Vec::new();
        match kind {
            'v' | 'm' => {
                let def: String = r.get(13);
                let def = def.trim_end().trim_end_matches(';').to_string();
                let (with_opts, check): (Vec<String>, Option<String>) = {
                    let mut w = Vec::new();
                    let mut ck = None;
                    for kv in reloptions.clone().unwrap_or_default() {
                        if let Some(v) = kv.strip_prefix("check_option=") {
                            ck = Some(v.to_uppercase());
                        } else {
                            w.push(kv);
                        }
                    }
                    (w, ck)
                };
                let with = reloptions_clause(&Some(with_opts))
                    .map(|w| format!(" {w}"))
                    .unwrap_or_default();
                if kind == 'v' {
                    let check = check
                        .map(|c| format!("\n  WITH {c} CHECK OPTION"))
                        .unwrap_or_default();
                    o.create
                        .push(format!("CREATE VIEW {q}{with} AS\n{def}{check};"));
                    for col in cols_by_rel.get(&oid).into_iter().flatten() {
                        if let Some(d) = col.get::<_, Option<String>>(7) {
                            o.create.push(format!(
                                "ALTER VIEW {q} ALTER COLUMN {} SET DEFAULT {d};",
                                ident(&col.get::<_, String>(1))
                            ));
                        }
                    }
                    // Stand-in with the same columns, for when the real definition
                    // needs something created after the data (pg_dump's dummy view).
                    let cols: Vec<String> = cols_by_rel
                        .get(&oid)
                        .map(|v| {
                            v.iter()
                                .map(|col| {
                                    let coll = col
                                        .get::<_, Option<String>>(9)
                                        .map(|c| format!(" COLLATE {c}"))
                                        .unwrap_or_default();
                                    format!(
                                        "\n    NULL::{}{coll} AS {}",
                                        col.get::<_, String>(2),
                                        ident(&col.get::<_, String>(1))
                                    )
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    o.placeholder =
                        Some(format!("CREATE VIEW {q} AS\n SELECT{};", cols.join(",")).into());
                } else {
                    o.create.push(tablespace::wrap(
                        r.get::<_, Option<String>>(17).as_deref(),
                        format!("CREATE MATERIALIZED VIEW {q}{with} AS\n{def}\n  WITH NO DATA;"),
                    ));
                    let own_cols = cols_by_rel
                        .get(&oid)
                        .map(|v| v.iter().collect::<Vec<_>>())
                        .unwrap_or_default();
                    o.create
                        .extend(column_settings(&q, &own_cols, with_compression));
                }
            }
            _ => {
                let own_cols = cols_by_rel
                    .get(&oid)
                    .map(|v| v.iter().collect::<Vec<_>>())
                    .unwrap_or_default();
                let mut lines = Vec::new();
                let of_type: Option<String> = r.get(14);
                let inherit_later =
                    !is_partition && inherits_out_of_order(&parents_of, &cols_by_rel, &checks, oid);
                for col in &own_cols {
                    let local: bool = col.get(4);
                    if !local && !is_partition {
                        continue;
                    }
                    let cname: String = col.get(1);
                    // A typed table's columns come from its type: only their
                    // options are printed.
                    if of_type.is_some()
                        && col.get::<_, Option<String>>(7).is_none()
                        && !col.get::<_, bool>(3)
                    {
                        continue;
                    }
                    let mut s = if of_type.is_some() {
                        format!("    {} WITH OPTIONS", ident(&cname))
                    } else {
                        format!("    {} {}", ident(&cname), col.get::<_, String>(2))
                    };
                    if let Some(coll) = col.get::<_, Option<String>>(9) {
                        s.push_str(&format!(" COLLATE {coll}"));
                    }
                    let generated: String = col.get(6);
                    let mut def: Option<String> = col.get(7);
                    // An inheritance child that declares a column its parent
                    // generates takes the parent's expression: printing its
                    // own is refused ("child column specifies generation
                    // expression"), so pg_dump leaves it out. Partitions are
                    // created on their own and attached, so they keep theirs.
                    if !generated.is_empty()
                        && !is_partition
                        && !inherit_later
                        && parent_generates(&parents_of, &cols_by_rel, oid, &cname)
                    {
                        def = None;
                    }
                    if let Some(d) = &def {
                        if generated == "s" {
                            s.push_str(&format!(" GENERATED ALWAYS AS ({d}) STORED"));
                        } else if generated == "v" {
                            // PostgreSQL 18's virtual generated columns.
                            s.push_str(&format!(" GENERATED ALWAYS AS ({d}) VIRTUAL"));
                        } else {
                            s.push_str(&format!(" DEFAULT {d}"));
                        }
                    }
                    if col.get::<_, bool>(3) && col.get::<_, Option<bool>>(17) != Some(false) {
                        // pg_dump names the constraint unless the name is the default.
                        if let Some(nn) = col.get::<_, Option<String>>(16) {
                            if nn != format!("{name}_{cname}_not_null") {
                                s.push_str(&format!(" CONSTRAINT {}", ident(&nn)));
                            }
                        }
                        s.push_str(" NOT NULL");
                        if col.get::<_, Option<bool>>(18) == Some(true) {
                            s.push_str(" NO INHERIT");
                        }
                    }
                    lines.push(s);
                }
                // An inherited column NOT NULL in the child only.
                if !is_partition {
                    for col in own_cols
                        .iter()
                        .filter(|c| !c.get::<_, bool>(4) && c.get::<_, bool>(3))
                    {
                        let cname: String = col.get(1);
                        let parent_nn =
                            parents_of.get(&oid).into_iter().flatten().any(|(_, poid)| {
                                cols_by_rel.get(poid).into_iter().flatten().any(|pc| {
                                    pc.get::<_, String>(1) == cname && pc.get::<_, bool>(3)
                                })
                            });
                        if !parent_nn {
                            extra.push(format!(
                                "ALTER TABLE ONLY {q} ALTER COLUMN {} SET NOT NULL;",
                                ident(&cname)
                            ));
                        }
                    }
                }
                extra.extend(column_settings(&q, &own_cols, with_compression));
                for ck in checks.get(&oid).into_iter().flatten() {
                    let (local, valid): (bool, bool) = (ck.get(4), ck.get(5));
                    if valid && (local || is_partition) {
                        lines.push(format!(
                            "    CONSTRAINT {} {}",
                            ident(&ck.get::<_, String>(2)),
                            ck.get::<_, String>(3)
                        ));
                    }
                }
                let unlogged = match (persistence.as_str(), kind) {
                    (_, 'f') => "FOREIGN ",
                    ("u", _) => "UNLOGGED ",
                    _ => "",
                };
                let mut s = match &of_type {
                    Some(t) if lines.is_empty() => format!("CREATE {unlogged}TABLE {q} OF {t}"),
                    Some(t) => format!(
                        "CREATE {unlogged}TABLE {q} OF {t} (\n{}\n)",
                        lines.join(",\n")
                    ),
                    None => format!("CREATE {unlogged}TABLE {q} (\n{}\n)", lines.join(",\n")),
                };
                if inherit_later {
                    // Created with its own column order, then made a child:
                    // INHERITS would put the parents' columns first.
                    for (k, (parent, _)) in parents_of[&oid].iter().enumerate() {
                        extra.insert(k, format!("ALTER TABLE ONLY {q} INHERIT {parent};"));
                    }
                } else if !is_partition {
                    if let Some(ps) = parents_of.get(&oid) {
                        let names: Vec<&str> = ps.iter().map(|p| p.0.as_str()).collect();
                        s.push_str(&format!("\nINHERITS ({})", names.join(", ")));
                    }
                }
                if let Some(pk) = r.get::<_, Option<String>>(9) {
                    s.push_str(&format!("\nPARTITION BY {pk}"));
                }
                if let Some(server) = r.get::<_, Option<String>>(15) {
                    s.push_str(&format!("\nSERVER {server}"));
                    if let Some(opts) = r.get::<_, Option<String>>(16) {
                        s.push_str(&format!("\nOPTIONS (\n    {opts}\n)"));
                    }
                }
                if let Some(w) = reloptions_clause(&reloptions) {
                    s.push_str(&format!("\n{w}"));
                }
                s.push(';');
                o.create.push(tablespace::wrap(
                    r.get::<_, Option<String>>(17).as_deref(),
                    s,
                ));
                o.create.extend(extra);
                // A foreign table has no replica identity (always 'n').
                match r.get::<_, String>(10).as_str() {
                    _ if kind == 'f' => {}
                    "f" => o
                        .create
                        .push(format!("ALTER TABLE ONLY {q} REPLICA IDENTITY FULL;")),
                    "n" => o
                        .create
                        .push(format!("ALTER TABLE ONLY {q} REPLICA IDENTITY NOTHING;")),
                    _ => {}
                }
                if r.get::<_, bool>(11) {
                    o.create
                        .push(format!("ALTER TABLE ONLY {q} FORCE ROW LEVEL SECURITY;"));
                }
            }
        }
        o.owner = Some(format!("ALTER {word} {q} OWNER TO {};", ident(&owner)).into());
        let kw = word;
        o.comments.extend(comment_on(
            comments,
            (class::PG_CLASS, oid, 0),
            &format!("{kw} {q}"),
        ));
        for col in cols_by_rel
            .get(&oid)
            .map(|v| v.iter().collect::<Vec<_>>())
            .unwrap_or_default()
        {
            let attnum: i16 = col.get(10);
            let cname: String = col.get(1);
            o.comments.extend(comment_on(
                comments,
                (class::PG_CLASS, oid, attnum as i32),
                &format!("COLUMN {q}.{}", ident(&cname)),
            ));
        }
        let i = m.add(o, &[(class::PG_CLASS, oid)]);
        // Inline defaults and CHECKs stand for the table.
        for col in cols_by_rel
            .get(&oid)
            .map(|v| v.iter().collect::<Vec<_>>())
            .unwrap_or_default()
        {
            if let Some(adoid) = col.get::<_, Option<u32>>(8) {
                m.alias((class::PG_ATTRDEF, adoid), i);
            }
        }
        for ck in checks.get(&oid).into_iter().flatten() {
            let (coid, cname, def, local, valid): (u32, String, String, bool, bool) =
                (ck.get(1), ck.get(2), ck.get(3), ck.get(4), ck.get(5));
            if valid && (local || is_partition) {
                m.alias((class::PG_CONSTRAINT, coid), i);
                m.objects[i].comments.extend(comment_on(
                    comments,
                    (class::PG_CONSTRAINT, coid, 0),
                    &format!("CONSTRAINT {} ON {q}", ident(&cname)),
                ));
            } else if local {
                // NOT VALID: after the data, so the load is not checked.
                let mut co = SchemaObject::new(
                    ObjectKind::Constraint,
                    &nsp,
                    &cname,
                    coid,
                    format!("CONSTRAINT {} ON {q}", ident(&cname)),
                );
                co.key.tiebreak.push(name.clone().into());
                co.create.push(format!(
                    "ALTER TABLE {q}\n    ADD CONSTRAINT {} {def};",
                    ident(&cname)
                ));
                co.deps.push(i);
                co.part_of.push(i);
                co.comments.extend(comment_on(
                    comments,
                    (class::PG_CONSTRAINT, coid, 0),
                    &format!("CONSTRAINT {} ON {q}", ident(&cname)),
                ));
                m.add(co, &[(class::PG_CONSTRAINT, coid)]);
            }
        }
        // A view's _RETURN rule is part of the view.
        rels.insert(
            oid,
            Rel {
                index: i,
                oid,
                qname: q.as_str().into(),
                namespace: nsp.clone(),
                kind,
                unlogged: persistence == "u",
            },
        );
        if is_partition {
            if let (Some(bound), Some(ps)) = (r.get::<_, Option<String>>(8), parents_of.get(&oid)) {
                let (pname, poid) = ps[0].clone();
                let mut a = SchemaObject::new(
                    ObjectKind::TableAttach,
                    &nsp,
                    &name,
                    oid,
                    format!("TABLE ATTACH {q}"),
                );
                a.create.push(format!(
                    "ALTER TABLE ONLY {pname} ATTACH PARTITION {q} {bound};"
                ));
                a.deps.push(i);
                a.part_of.push(i);
                a.needs.push((class::PG_CLASS, poid));
                m.add(a, &[]);
            }
        }
        if kind == 'm' && !refresh.unpopulated.contains(&oid) {
            let mut rf = SchemaObject::new(
                ObjectKind::RefreshMatview,
                &nsp,
                &name,
                oid,
                format!("MATERIALIZED VIEW DATA {q}"),
            );
            rf.create.push(format!("REFRESH MATERIALIZED VIEW {q};"));
            rf.deps.push(i);
            rf.part_of.push(i);
            refresh_of.insert(oid, m.add(rf, &[]));
        }
    }
    // A refresh reads the materialized views below it: they come first
    // (pg_dump's buildMatViewRefreshDependencies).
    for (reader, read) in &refresh.reads {
        if let (Some(&a), Some(&b)) = (refresh_of.get(reader), refresh_of.get(read)) {
            m.objects[a].deps.push(b);
        }
    }
    for r in query(
        c,
        "view rules",
        "SELECT oid, ev_class FROM pg_catalog.pg_rewrite WHERE rulename = '_RETURN'",
    )
    .await?
    {
        let (rule, rel): (u32, u32) = (r.get(0), r.get(1));
        if let Some(rl) = rels.get(&rel) {
            m.alias((class::PG_REWRITE, rule), rl.index);
        }
    }
    // A child created after its parent's NOT VALID constraint inherited it
    // valid; adding the constraint after the data makes every copy NOT
    // VALID, so validate the child's afterwards (its rows passed already).
    for r in query(
        c,
        "inherited constraints valid below a NOT VALID parent",
        "SELECT DISTINCT ch.conrelid, ch.conname::text, pa.oid
           FROM pg_catalog.pg_constraint ch
           JOIN pg_catalog.pg_inherits i ON i.inhrelid = ch.conrelid
           JOIN pg_catalog.pg_constraint pa ON pa.conrelid = i.inhparent AND pa.conname = ch.conname
                                           AND pa.contype = ch.contype
          WHERE ch.contype IN ('c', 'n') AND NOT ch.conislocal AND ch.convalidated AND NOT pa.convalidated",
    )
    .await?
    {
        let (relid, cname, parent_con): (u32, String, u32) = (r.get(0), r.get(1), r.get(2));
        let Some(rel) = rels.get(&relid) else {
            continue;
        };
        let mut o = on_table(
            ObjectKind::Constraint,
            &cname,
            relid,
            format!("VALIDATE CONSTRAINT {} ON {}", ident(&cname), rel.qname),
            rel,
        );
        o.create.push(format!(
            "ALTER TABLE {} VALIDATE CONSTRAINT {};",
            rel.qname,
            ident(&cname)
        ));
        o.needs.push((class::PG_CONSTRAINT, parent_con));
        m.add(o, &[]);
    }
    Ok(rels)
}

async fn load_sequences(
    c: &Catalog<'_>,
    m: &mut SchemaModel,
    comments: &Comments,
    rels: &HashMap<u32, Rel>,
    major: u32,
) -> Result<()> {
    let sql = format!(
        "SELECT c.oid, n.nspname::text, c.relname::text, c.relpersistence::text, pg_catalog.pg_get_userbyid(c.relowner)::text,
                pg_catalog.format_type(s.seqtypid, NULL), s.seqstart, s.seqincrement, s.seqmin, s.seqmax, s.seqcache, s.seqcycle,
                d.refobjid, d.deptype::text, a.attname::text, a.attidentity::text
           FROM pg_catalog.pg_sequence s
           JOIN pg_catalog.pg_class c ON c.oid = s.seqrelid
           JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
           LEFT JOIN pg_catalog.pg_depend d ON d.classid = {pc} AND d.objid = c.oid AND d.refclassid = {pc}
                AND d.deptype IN ('a', 'i') AND d.refobjsubid > 0
           LEFT JOIN pg_catalog.pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
          WHERE {}",
        user_object(class::PG_CLASS, "c.oid"),
        pc = class::PG_CLASS
    );
    for r in query(c, "sequences", &sql).await? {
        let (oid, nsp, name, persistence, owner, typ): (
            u32,
            String,
            String,
            String,
            String,
            String,
        ) = (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5));
        let (start, inc, min, max, cache, cycle): (i64, i64, i64, i64, i64, bool) =
            (r.get(6), r.get(7), r.get(8), r.get(9), r.get(10), r.get(11));
        let q = qualified(&nsp, &name);
        let (tmin, tmax) = match typ.as_str() {
            "smallint" => (i16::MIN as i64, i16::MAX as i64),
            "integer" => (i32::MIN as i64, i32::MAX as i64),
            _ => (i64::MIN, i64::MAX),
        };
        let (dmin, dmax) = if inc > 0 { (1, tmax) } else { (tmin, -1) };
        let identity = r.get::<_, Option<String>>(13).as_deref() == Some("i");
        let mut opts = String::new();
        // An identity sequence takes its type from the column.
        if typ != "bigint" && !identity {
            opts.push_str(&format!("\n    AS {typ}"));
        }
        opts.push_str(&format!("\n    START WITH {start}\n    INCREMENT BY {inc}"));
        opts.push_str(&if min == dmin {
            "\n    NO MINVALUE".to_string()
        } else {
            format!("\n    MINVALUE {min}")
        });
        opts.push_str(&if max == dmax {
            "\n    NO MAXVALUE".to_string()
        } else {
            format!("\n    MAXVALUE {max}")
        });
        opts.push_str(&format!("\n    CACHE {cache}"));
        if cycle {
            opts.push_str("\n    CYCLE");
        }
        let owner_rel: Option<u32> = r.get(12);
        let deptype: Option<String> = r.get(13);
        let col: Option<String> = r.get(14);
        if deptype.as_deref() == Some("i") {
            // Identity: created by the column, with these exact options.
            let (Some(trel), Some(col)) = (owner_rel.and_then(|t| rels.get(&t)), col) else {
                continue;
            };
            let how = if r.get::<_, Option<String>>(15).as_deref() == Some("a") {
                "ALWAYS"
            } else {
                "BY DEFAULT"
            };
            let stmt = format!(
                "ALTER TABLE {} ALTER COLUMN {} ADD GENERATED {how} AS IDENTITY (\n    SEQUENCE NAME {q}{opts}\n);",
                trel.qname,
                ident(&col)
            );
            m.objects[trel.index].create.push(stmt);
            // The sequence takes its table's persistence; since 15 either
            // can be changed on its own (pg_dump prints the difference).
            let seq_unlogged = persistence == "u";
            if major >= 15 && seq_unlogged != trel.unlogged {
                let word = if seq_unlogged { "UNLOGGED" } else { "LOGGED" };
                m.objects[trel.index]
                    .create
                    .push(format!("ALTER SEQUENCE {q} SET {word};"));
            }
            m.objects[trel.index].comments.extend(comment_on(
                comments,
                (class::PG_CLASS, oid, 0),
                &format!("SEQUENCE {q}"),
            ));
            m.alias((class::PG_CLASS, oid), trel.index);
            continue;
        }
        let unlogged = if persistence == "u" { "UNLOGGED " } else { "" };
        let mut o = SchemaObject::new(ObjectKind::Table, &nsp, &name, oid, format!("SEQUENCE {q}"));
        o.create
            .push(format!("CREATE {unlogged}SEQUENCE {q}{opts};"));
        o.owner = Some(format!("ALTER SEQUENCE {q} OWNER TO {};", ident(&owner)).into());
        o.comments.extend(comment_on(
            comments,
            (class::PG_CLASS, oid, 0),
            &format!("SEQUENCE {q}"),
        ));
        let i = m.add(o, &[(class::PG_CLASS, oid)]);
        if let (Some(trel), Some(col)) = (owner_rel.and_then(|t| rels.get(&t)), col) {
            // OWNED BY is its own step: the table's default needs the sequence first.
            let mut ob = SchemaObject::new(
                ObjectKind::Table,
                &nsp,
                &name,
                oid,
                format!("SEQUENCE OWNED BY {q}"),
            );
            ob.key.tiebreak.push("owned by".into());
            ob.create.push(format!(
                "ALTER SEQUENCE {q} OWNED BY {}.{};",
                trel.qname,
                ident(&col)
            ));
            ob.deps.extend([i, trel.index]);
            ob.part_of.extend([i, trel.index]);
            m.add(ob, &[]);
            // The sequence's 'a' dependency on the column belongs to OWNED BY:
            // the sequence itself must come before the table whose default uses it.
            m.skip_deps
                .insert(((class::PG_CLASS, oid), (class::PG_CLASS, trel.oid)));
        }
    }
    Ok(())
}

async fn load_constraints_and_indexes(
    c: &Catalog<'_>,
    m: &mut SchemaModel,
    comments: &Comments,
    rels: &HashMap<u32, Rel>,
    major: u32,
) -> Result<()> {
    let _ = major;
    // PRIMARY KEY / UNIQUE / EXCLUDE / FOREIGN KEY.
    let mut index_owner: HashMap<u32, usize> = HashMap::new();
    query_each(
        c,
        "constraints",
        "SELECT co.oid, co.conrelid, co.conname::text, co.contype::text, pg_catalog.pg_get_constraintdef(co.oid),
                co.conindid, co.conparentid,
                (SELECT pg_catalog.array_remove(ic.reloptions, NULL)::text[] FROM pg_catalog.pg_class ic WHERE ic.oid = co.conindid),
                CASE WHEN co.conindid <> 0 THEN pg_catalog.pg_get_indexdef(co.conindid) END,
                co.condeferrable,
                (SELECT t.spcname::text FROM pg_catalog.pg_class ic JOIN pg_catalog.pg_tablespace t ON t.oid = ic.reltablespace
                  WHERE ic.oid = co.conindid)
           FROM pg_catalog.pg_constraint co
          WHERE co.contype IN ('p', 'u', 'x', 'f') AND co.conrelid <> 0
          ORDER BY co.conrelid, co.conname",
        |r| {
            let (oid, relid, name, contype, def, indid, parentid): (
                u32,
                u32,
                String,
                String,
                String,
                u32,
                u32,
            ) = (
                r.get(0),
                r.get(1),
                r.get(2),
                r.get(3),
                r.get(4),
                r.get(5),
                r.get(6),
            );
            let Some(rel) = rels.get(&relid) else {
                return;
            };
            if contype == "f" && parentid != 0 {
                return; // cloned onto partitions automatically
            }
            let only = if rel.kind == 'p' && contype == "f" {
                ""
            } else {
                "ONLY "
            };
            let mut def = def;
            if contype != "f" && contype != "x" {
                if let Some(w) = reloptions_clause(&r.get(7)) {
                    match def.find(" DEFERRABLE") {
                        Some(p) => def.insert_str(p, &format!(" {w}")),
                        None => def.push_str(&format!(" {w}")),
                    }
                }
            }
            let kind = if contype == "f" {
                ObjectKind::FkConstraint
            } else {
                ObjectKind::Constraint
            };
            let mut o = on_table(
                kind,
                &name,
                oid,
                format!("CONSTRAINT {} ON {}", ident(&name), rel.qname),
                rel,
            );
            // A key of a plain table is built as a unique index, then attached:
            // see `SchemaObject::index_first`. Deferrable keys and temporal
            // (WITHOUT OVERLAPS) keys cannot be attached that way.
            let indexdef: Option<String> = r.get(8);
            let attachable = matches!(contype.as_str(), "p" | "u")
                && rel.kind == 'r'
                && !r.get::<_, bool>(9)
                && !def.contains("WITHOUT OVERLAPS");
            match indexdef.filter(|d| attachable && d.starts_with("CREATE UNIQUE INDEX ")) {
                Some(indexdef) => {
                    let word = if contype == "p" {
                        "PRIMARY KEY"
                    } else {
                        "UNIQUE"
                    };
                    o.index_first = Some(
                        tablespace::wrap(
                            r.get::<_, Option<String>>(10).as_deref(),
                            format!("{indexdef};"),
                        )
                        .into(),
                    );
                    o.create.push(format!(
                        "ALTER TABLE ONLY {}\n    ADD CONSTRAINT {} {word} USING INDEX {};",
                        rel.qname,
                        ident(&name),
                        ident(&name)
                    ));
                }
                // A foreign key of a plain table: added NOT VALID (no scan, brief
                // locks), validated later in parallel. Partitioned tables cannot
                // take NOT VALID foreign keys before PostgreSQL 18.
                None if contype == "f" && rel.kind == 'r' && !def.ends_with(" NOT VALID") => {
                    o.create.push(format!(
                        "ALTER TABLE {only}{}\n    ADD CONSTRAINT {} {def} NOT VALID;",
                        rel.qname,
                        ident(&name)
                    ));
                    o.validate_later = Some(
                        format!(
                            "ALTER TABLE {only}{} VALIDATE CONSTRAINT {};",
                            rel.qname,
                            ident(&name)
                        )
                        .into(),
                    );
                }
                None => o.create.push(tablespace::wrap(
                    r.get::<_, Option<String>>(10).as_deref(),
                    format!(
                        "ALTER TABLE {only}{}\n    ADD CONSTRAINT {} {def};",
                        rel.qname,
                        ident(&name)
                    ),
                )),
            }
            if contype != "f" && rel.kind == 'r' {
                o.data_of = Some(rel.qname.clone());
            }
            o.comments.extend(comment_on(
                comments,
                (class::PG_CONSTRAINT, oid, 0),
                &format!("CONSTRAINT {} ON {}", ident(&name), rel.qname),
            ));
            if contype != "f" && indid != 0 {
                // The index backing the key may have a comment of its own
                // (pg_dump prints it with the constraint). PostgreSQL keeps the
                // index's name equal to the constraint's.
                o.comments.extend(comment_on(
                    comments,
                    (class::PG_CLASS, indid, 0),
                    &format!("INDEX {}", qualified(&rel.namespace, &name)),
                ));
            }
            let i = m.add(o, &[(class::PG_CONSTRAINT, oid)]);
            if contype != "f" && indid != 0 {
                m.alias((class::PG_CLASS, indid), i);
                index_owner.insert(indid, i);
            }
        },
    )
    .await?;
    // Indexes not backing a constraint, and partition index attachments.
    query_each(
        c,
        "indexes",
        "SELECT i.indexrelid, i.indrelid, ic.relname::text, pg_catalog.pg_get_indexdef(i.indexrelid),
                i.indisclustered, i.indisreplident,
                (SELECT pg_catalog.format('%I.%I', pn.nspname, p.relname) FROM pg_catalog.pg_inherits h
                   JOIN pg_catalog.pg_class p ON p.oid = h.inhparent JOIN pg_catalog.pg_namespace pn ON pn.oid = p.relnamespace
                  WHERE h.inhrelid = i.indexrelid),
                (SELECT h.inhparent FROM pg_catalog.pg_inherits h WHERE h.inhrelid = i.indexrelid),
                pg_catalog.format('%I.%I', n.nspname, ic.relname),
                (SELECT pg_catalog.array_agg(a.attnum::text || ' ' || a.attstattarget::text ORDER BY a.attnum)
                   FROM pg_catalog.pg_attribute a WHERE a.attrelid = i.indexrelid AND a.attstattarget >= 0),
                (SELECT t.spcname::text FROM pg_catalog.pg_tablespace t WHERE t.oid = ic.reltablespace)
           FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid
           JOIN pg_catalog.pg_namespace n ON n.oid = ic.relnamespace
          WHERE i.indisready",
        |r| {
            let (oid, relid, name, def): (u32, u32, String, String) =
                (r.get(0), r.get(1), r.get(2), r.get(3));
            let Some(rel) = rels.get(&relid) else {
                return;
            };
            let iq: String = r.get(8);
            let owner_obj = match index_owner.get(&oid) {
                Some(&i) => i,
                None => {
                    let mut o = on_table(ObjectKind::Index, &name, oid, format!("INDEX {iq}"), rel);
                    o.create.push(tablespace::wrap(
                        r.get::<_, Option<String>>(10).as_deref(),
                        format!("{def};"),
                    ));
                    if rel.kind == 'r' {
                        o.data_of = Some(rel.qname.clone());
                    }
                    if let Some(cm) =
                        comment_on(comments, (class::PG_CLASS, oid, 0), &format!("INDEX {iq}"))
                    {
                        o.comments.push(cm);
                    }
                    m.add(o, &[(class::PG_CLASS, oid)])
                }
            };
            for st in r.get::<_, Option<Vec<String>>>(9).unwrap_or_default() {
                if let Some((num, target)) = st.split_once(' ') {
                    m.objects[owner_obj].create.push(format!(
                        "ALTER INDEX {iq} ALTER COLUMN {num} SET STATISTICS {target};"
                    ));
                }
            }
            if r.get::<_, bool>(4) {
                m.objects[owner_obj].create.push(format!(
                    "ALTER TABLE {} CLUSTER ON {};",
                    rel.qname,
                    ident(&name)
                ));
            }
            if r.get::<_, bool>(5) {
                m.objects[owner_obj].create.push(format!(
                    "ALTER TABLE ONLY {} REPLICA IDENTITY USING INDEX {};",
                    rel.qname,
                    ident(&name)
                ));
            }
            if let (Some(parent), Some(poid)) =
                (r.get::<_, Option<String>>(6), r.get::<_, Option<u32>>(7))
            {
                let mut a = SchemaObject::new(
                    ObjectKind::IndexAttach,
                    &rel.namespace,
                    &name,
                    oid,
                    format!("INDEX ATTACH {iq}"),
                );
                a.create
                    .push(format!("ALTER INDEX {parent} ATTACH PARTITION {iq};"));
                a.deps.push(owner_obj);
                a.part_of.push(owner_obj);
                a.needs.push((class::PG_CLASS, poid));
                m.add(a, &[]);
            }
        },
    )
    .await?;
    Ok(())
}

/// Objects in the source that this version cannot reproduce yet. A full
/// migration refuses to start while any exist, rather than silently
/// leaving out a trigger, a policy or a grant; each entry names the object.
pub async fn unsupported(client: &Client, opts: &super::ReadOptions) -> Result<Vec<String>> {
    let c = &Catalog::direct(client);
    let mut out = Vec::new();
    // Filters by schema or table leave subscriptions out (as pg_dump's do).
    let subscriptions = opts.filters.schemas.is_empty() && opts.filters.tables.is_empty();
    if !opts.no_subscriptions && subscriptions {
        out.extend(subscriptions::unreadable(c).await?);
    }
    // Owners that are not the same role everywhere are fine; comments on
    // kinds we do not load are not checked.
    Ok(out)
}

/// Roles a full migration's DDL names, so they must exist on the target:
/// the owner of every object it creates (`ALTER ... OWNER TO`), every
/// grantee and grantor of the privileges it carries (grants are made as the
/// grantor), the roles of default privileges (`ALTER DEFAULT PRIVILEGES FOR
/// ROLE`), policies (`TO role`), user mappings (`FOR role`) and per-role
/// settings (`ALTER ROLE ... IN DATABASE`). Owners are left out under
/// `--no-owner`, privileges under `--no-acl`, subscriptions when they are
/// not migrated.
pub async fn owner_roles(client: &Client, opts: &super::ReadOptions) -> Result<Vec<String>> {
    let c = &Catalog::direct(client);
    let user_ns = USER_NAMESPACE;
    // In user schemas: (catalog alias and join, owner column, acl column).
    let in_schemas: &[(&str, &str, Option<&str>)] = &[
        ("pg_catalog.pg_class x JOIN pg_catalog.pg_namespace n ON n.oid = x.relnamespace", "x.relowner", Some("x.relacl")),
        ("pg_catalog.pg_proc x JOIN pg_catalog.pg_namespace n ON n.oid = x.pronamespace", "x.proowner", Some("x.proacl")),
        ("pg_catalog.pg_type x JOIN pg_catalog.pg_namespace n ON n.oid = x.typnamespace", "x.typowner", Some("x.typacl")),
        ("pg_catalog.pg_namespace x JOIN pg_catalog.pg_namespace n ON n.oid = x.oid", "x.nspowner", Some("x.nspacl")),
        ("pg_catalog.pg_operator x JOIN pg_catalog.pg_namespace n ON n.oid = x.oprnamespace", "x.oprowner", None),
        ("pg_catalog.pg_opfamily x JOIN pg_catalog.pg_namespace n ON n.oid = x.opfnamespace", "x.opfowner", None),
        ("pg_catalog.pg_opclass x JOIN pg_catalog.pg_namespace n ON n.oid = x.opcnamespace", "x.opcowner", None),
        ("pg_catalog.pg_conversion x JOIN pg_catalog.pg_namespace n ON n.oid = x.connamespace", "x.conowner", None),
        ("pg_catalog.pg_collation x JOIN pg_catalog.pg_namespace n ON n.oid = x.collnamespace", "x.collowner", None),
        ("pg_catalog.pg_ts_config x JOIN pg_catalog.pg_namespace n ON n.oid = x.cfgnamespace", "x.cfgowner", None),
        ("pg_catalog.pg_ts_dict x JOIN pg_catalog.pg_namespace n ON n.oid = x.dictnamespace", "x.dictowner", None),
        ("pg_catalog.pg_statistic_ext x JOIN pg_catalog.pg_namespace n ON n.oid = x.stxnamespace", "x.stxowner", None),
    ];
    // Database-wide objects: (catalog and condition, owner column, acl column).
    let this_db = "(SELECT d.oid FROM pg_catalog.pg_database d WHERE d.datname = pg_catalog.current_database())";
    let mut global: Vec<(String, &str, Option<&str>)> = vec![
        (
            "pg_catalog.pg_language x WHERE x.oid >= 16384".into(),
            "x.lanowner",
            Some("x.lanacl"),
        ),
        (
            "pg_catalog.pg_event_trigger x WHERE true".into(),
            "x.evtowner",
            None,
        ),
        (
            "pg_catalog.pg_publication x WHERE true".into(),
            "x.pubowner",
            None,
        ),
        (
            "pg_catalog.pg_foreign_data_wrapper x WHERE true".into(),
            "x.fdwowner",
            Some("x.fdwacl"),
        ),
        (
            "pg_catalog.pg_foreign_server x WHERE true".into(),
            "x.srvowner",
            Some("x.srvacl"),
        ),
        (
            format!("pg_catalog.pg_database x WHERE x.oid = {this_db}"),
            "x.datdba",
            Some("x.datacl"),
        ),
    ];
    // Subscriptions are not migrated under --no-subscriptions or a schema
    // or table filter (see `unsupported`).
    if !opts.no_subscriptions && opts.filters.schemas.is_empty() && opts.filters.tables.is_empty() {
        global.push((
            format!("pg_catalog.pg_subscription x WHERE x.subdbid = {this_db}"),
            "x.subowner",
            None,
        ));
    }
    let mut parts = Vec::new();
    for (from, owner, acl) in in_schemas {
        // public's owner is only set when it is not the default one.
        let cond = if owner.ends_with("nspowner") {
            format!("{user_ns} AND (n.nspname <> 'public' OR pg_catalog.pg_get_userbyid(x.nspowner) <> 'pg_database_owner')")
        } else {
            user_ns.to_string()
        };
        if !opts.no_owner {
            parts.push(format!("SELECT {owner} FROM {from} WHERE {cond}"));
        }
        if let (Some(acl), false) = (acl, opts.no_acl) {
            parts.push(format!("SELECT (pg_catalog.aclexplode({acl})).grantee FROM {from} WHERE {acl} IS NOT NULL AND {user_ns}"));
            parts.push(format!("SELECT (pg_catalog.aclexplode({acl})).grantor FROM {from} WHERE {acl} IS NOT NULL AND {user_ns}"));
        }
    }
    for (from, owner, acl) in &global {
        if !opts.no_owner {
            parts.push(format!("SELECT {owner} FROM {from}"));
        }
        if let (Some(acl), false) = (acl, opts.no_acl) {
            parts.push(format!(
                "SELECT (pg_catalog.aclexplode({acl})).grantee FROM {from} AND {acl} IS NOT NULL"
            ));
            parts.push(format!(
                "SELECT (pg_catalog.aclexplode({acl})).grantor FROM {from} AND {acl} IS NOT NULL"
            ));
        }
    }
    if !opts.no_acl {
        for who in ["grantee", "grantor"] {
            parts.push(format!(
                "SELECT (pg_catalog.aclexplode(a.attacl)).{who} FROM pg_catalog.pg_attribute a
                   JOIN pg_catalog.pg_class x ON x.oid = a.attrelid JOIN pg_catalog.pg_namespace n ON n.oid = x.relnamespace
                  WHERE a.attacl IS NOT NULL AND {user_ns}"
            ));
            parts.push(format!(
                "SELECT (pg_catalog.aclexplode(x.defaclacl)).{who} FROM pg_catalog.pg_default_acl x"
            ));
        }
        parts.push("SELECT x.defaclrole FROM pg_catalog.pg_default_acl x".into());
        if !opts.filters.selects_objects() {
            parts.extend(builtin_acl_roles());
        }
    }
    // Named whatever the options: policies, user mappings, role settings.
    parts.push("SELECT pg_catalog.unnest(x.polroles) FROM pg_catalog.pg_policy x".into());
    parts.push("SELECT x.umuser FROM pg_catalog.pg_user_mappings x".into());
    parts.push(format!(
        "SELECT x.setrole FROM pg_catalog.pg_db_role_setting x WHERE x.setdatabase = {this_db}"
    ));
    let sql = format!(
        "SELECT DISTINCT pg_catalog.pg_get_userbyid(r)::text FROM ({}) AS u(r) WHERE r <> 0 ORDER BY 1",
        parts.join("\n UNION ")
    );
    Ok(query(c, "the roles the schema names", &sql)
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// How many user objects (relations, types, functions, non-public schemas)
/// a database holds: a full migration wants an empty target.
pub async fn user_object_count(client: &Client) -> Result<i64> {
    let c = &Catalog::direct(client);
    let user_ns = USER_NAMESPACE;
    let sql = format!(
        "SELECT (SELECT pg_catalog.count(*) FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE {user_ns})
              + (SELECT pg_catalog.count(*) FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace WHERE {user_ns})
              + (SELECT pg_catalog.count(*) FROM pg_catalog.pg_namespace n WHERE {user_ns} AND n.nspname <> 'public')
              + (SELECT pg_catalog.count(*) FROM pg_catalog.pg_extension WHERE extname <> 'plpgsql')"
    );
    Ok(query(c, "target objects", &sql).await?[0].get(0))
}

/// The baseline an ACL is compared with: `pg_init_privs` when the object
/// has initial privileges, else the built-in default for its kind and owner.
pub(super) fn baseline_sql(classid: u32, oid_expr: &str, kind: char, owner_expr: &str) -> String {
    format!(
        "COALESCE((SELECT ip.initprivs::text FROM pg_catalog.pg_init_privs ip
                    WHERE ip.classoid = {classid} AND ip.objoid = {oid_expr} AND ip.objsubid = 0),
                  pg_catalog.acldefault('{kind}', {owner_expr})::text)"
    )
}

/// Privileges (GRANT / REVOKE against the default) of tables, views,
/// sequences, columns, functions, types, schemas, and default privileges.
/// They land in the script's ACL part, after every object and the data.
async fn load_acls(c: &Catalog<'_>, m: &mut SchemaModel, major: u32, filtered: bool) -> Result<()> {
    use super::acl::{build_acl_commands, build_default_acl_commands, AclObjectKind};
    let add = |m: &mut SchemaModel, cls: u32, oid: u32, cmds: Vec<String>| {
        if let Some(&i) = m.by_ref.get(&(cls, oid)) {
            m.objects[i].acl.extend(cmds);
        }
    };
    // One query per kind, each returning (oid, target, acl, baseline, owner).
    let rel = |kinds: &str, word: &str, acl_kind: char| {
        format!(
            "SELECT c.oid, '{word} ' || pg_catalog.format('%I.%I', n.nspname, c.relname), c.relacl::text, {}, pg_catalog.pg_get_userbyid(c.relowner)::text
               FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
              WHERE c.relkind IN ({kinds}) AND c.relacl IS NOT NULL AND {}",
            baseline_sql(class::PG_CLASS, "c.oid", acl_kind, "c.relowner"),
            user_object(class::PG_CLASS, "c.oid")
        )
    };
    let specs: Vec<(&str, AclObjectKind, u32, String)> = vec![
        ("table privileges", AclObjectKind::Table, class::PG_CLASS, rel("'r', 'p', 'v', 'm', 'f'", "TABLE", 'r')),
        ("sequence privileges", AclObjectKind::Sequence, class::PG_CLASS, rel("'S'", "SEQUENCE", 's')),
        (
            "function privileges",
            AclObjectKind::Function,
            class::PG_PROC,
            format!(
                "SELECT p.oid, CASE p.prokind WHEN 'p' THEN 'PROCEDURE ' ELSE 'FUNCTION ' END
                        || pg_catalog.format('%I.%I', n.nspname, p.proname) || '(' || pg_catalog.pg_get_function_identity_arguments(p.oid) || ')',
                        p.proacl::text, {}, pg_catalog.pg_get_userbyid(p.proowner)::text
                   FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
                  WHERE p.proacl IS NOT NULL AND {}",
                baseline_sql(class::PG_PROC, "p.oid", 'f', "p.proowner"),
                user_object(class::PG_PROC, "p.oid")
            ),
        ),
        (
            "type privileges",
            AclObjectKind::Type,
            class::PG_TYPE,
            format!(
                "SELECT t.oid, CASE t.typtype WHEN 'd' THEN 'DOMAIN ' ELSE 'TYPE ' END || pg_catalog.format('%I.%I', n.nspname, t.typname),
                        t.typacl::text, {}, pg_catalog.pg_get_userbyid(t.typowner)::text
                   FROM pg_catalog.pg_type t JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace
                  WHERE t.typacl IS NOT NULL AND t.typtype IN ('e', 'd', 'c', 'r', 'b') AND {}",
                baseline_sql(class::PG_TYPE, "t.oid", 'T', "t.typowner"),
                user_object(class::PG_TYPE, "t.oid")
            ),
        ),
        (
            "schema privileges",
            AclObjectKind::Schema,
            class::PG_NAMESPACE,
            format!(
                "SELECT n.oid, 'SCHEMA ' || pg_catalog.quote_ident(n.nspname), n.nspacl::text, {}, pg_catalog.pg_get_userbyid(n.nspowner)::text
                   FROM pg_catalog.pg_namespace n
                  WHERE n.nspacl IS NOT NULL AND n.nspname <> 'public' AND {}",
                baseline_sql(class::PG_NAMESPACE, "n.oid", 'n', "n.nspowner"),
                user_object(class::PG_NAMESPACE, "n.oid")
            ),
        ),
        (
            // public: pg_dump compares its ACL with PostgreSQL 15's default for
            // it (owner: USAGE and CREATE; PUBLIC: USAGE), whatever the major.
            "public schema privileges",
            AclObjectKind::Schema,
            class::PG_NAMESPACE,
            "SELECT n.oid, 'SCHEMA public', n.nspacl::text,
                    pg_catalog.array_append(pg_catalog.acldefault('n', n.nspowner),
                                            pg_catalog.makeaclitem(0, n.nspowner, 'USAGE', false))::text,
                    pg_catalog.pg_get_userbyid(n.nspowner)::text
               FROM pg_catalog.pg_namespace n WHERE n.nspname = 'public' AND n.nspacl IS NOT NULL"
                .to_string(),
        ),
    ];
    for (what, kind, cls, sql) in specs {
        for r in query(c, what, &sql).await? {
            let (oid, target, acl, base, owner): (u32, String, String, String, String) =
                (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4));
            let cmds = build_acl_commands(kind, &target, None, Some(&acl), &base, &owner, major)?;
            add(m, cls, oid, cmds);
        }
    }
    // Columns: compared with no privileges at all.
    let sql = format!(
        "SELECT c.oid, pg_catalog.format('%I.%I', n.nspname, c.relname), pg_catalog.quote_ident(a.attname), a.attacl::text,
                pg_catalog.pg_get_userbyid(c.relowner)::text
           FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
           JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
          WHERE a.attacl IS NOT NULL AND a.attnum > 0 AND NOT a.attisdropped AND {}
          ORDER BY c.oid, a.attnum",
        user_object(class::PG_CLASS, "c.oid")
    );
    for r in query(c, "column privileges", &sql).await? {
        let (oid, q, col, acl, owner): (u32, String, String, String, String) =
            (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4));
        let cmds = build_acl_commands(
            AclObjectKind::Column,
            &format!("TABLE {q}"),
            Some(&col),
            Some(&acl),
            "{}",
            &owner,
            major,
        )?;
        add(m, class::PG_CLASS, oid, cmds);
    }
    if !filtered {
        load_builtin_acls(c, m, major).await?;
    }
    // Default privileges: after everything else, or new objects on the
    // target would pick up grants their source twins do not have.
    let sql = "SELECT d.oid, pg_catalog.pg_get_userbyid(d.defaclrole)::text, n.nspname::text, d.defaclobjtype::text, d.defaclacl::text,
                      CASE WHEN d.defaclnamespace = 0
                           THEN pg_catalog.acldefault(CASE WHEN d.defaclobjtype = 'S' THEN 's' ELSE d.defaclobjtype END::\"char\", d.defaclrole)::text
                           ELSE '{}' END
                 FROM pg_catalog.pg_default_acl d LEFT JOIN pg_catalog.pg_namespace n ON n.oid = d.defaclnamespace
                ORDER BY 2, 3 NULLS FIRST, 4";
    for r in query(c, "default privileges", sql).await? {
        let (oid, role, nsp, objtype, acl, base): (
            u32,
            String,
            Option<String>,
            String,
            String,
            String,
        ) = (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5));
        let t = objtype.chars().next().unwrap_or('r');
        let cmds = build_default_acl_commands(&role, nsp.as_deref(), t, &acl, &base, major)?;
        let mut o = SchemaObject::new(
            ObjectKind::DefaultAcl,
            nsp.as_deref().unwrap_or(""),
            &role,
            oid,
            format!(
                "DEFAULT PRIVILEGES FOR ROLE {}{} ON {}",
                ident(&role),
                nsp.as_deref()
                    .map(|n| format!(" IN SCHEMA {}", ident(n)))
                    .unwrap_or_default(),
                match t {
                    'r' => "TABLES",
                    'S' => "SEQUENCES",
                    'f' => "FUNCTIONS",
                    'T' => "TYPES",
                    _ => "SCHEMAS",
                }
            ),
        );
        o.key.tiebreak.push(objtype.clone().into());
        o.acl = cmds.into();
        m.add(o, &[]);
    }
    Ok(())
}

/// Extensions, at their source version; their member objects are not
/// created one by one, and anything depending on a member depends on the
/// extension.
/// Queries for the roles named by the privileges [`load_builtin_acls`]
/// replays: grantees and grantors of items the ACL of a built-in or
/// extension object has beyond what `pg_init_privs` recorded, other than the
/// object's owner (whose name may differ on the target: the bootstrap
/// superuser's).
fn builtin_acl_roles() -> Vec<String> {
    let member = |cls: u32| {
        format!(
            "EXISTS (SELECT 1 FROM pg_catalog.pg_depend e WHERE e.classid = {cls} AND e.objid = x.oid AND e.deptype = 'e')"
        )
    };
    // (catalog, acl, acldefault kind, owner, created by the system)
    let specs = [
        (
            class::PG_CLASS,
            "pg_catalog.pg_class x",
            "x.relacl",
            'r',
            "x.relowner",
            "x.relnamespace = 'pg_catalog'::pg_catalog.regnamespace",
        ),
        (
            class::PG_PROC,
            "pg_catalog.pg_proc x",
            "x.proacl",
            'f',
            "x.proowner",
            "x.pronamespace = 'pg_catalog'::pg_catalog.regnamespace",
        ),
        (
            class::PG_TYPE,
            "pg_catalog.pg_type x",
            "x.typacl",
            'T',
            "x.typowner",
            "x.typnamespace = 'pg_catalog'::pg_catalog.regnamespace",
        ),
        (
            class::PG_NAMESPACE,
            "pg_catalog.pg_namespace x",
            "x.nspacl",
            'n',
            "x.nspowner",
            "x.nspname = 'pg_catalog'",
        ),
        (
            2612,
            "pg_catalog.pg_language x",
            "x.lanacl",
            'l',
            "x.lanowner",
            "x.oid < 16384",
        ),
        (
            2328,
            "pg_catalog.pg_foreign_data_wrapper x",
            "x.fdwacl",
            'F',
            "x.fdwowner",
            "false",
        ),
    ];
    let mut out = Vec::new();
    for (cls, from, acl, kind, owner, system) in specs {
        let base = baseline_sql(cls, "x.oid", kind, owner);
        // A NULL ACL without an initial one is the default, its own
        // baseline: only the rest are compared item by item (the item-wise
        // lookup over every built-in function cost 0.8 s a run).
        for who in ["grantee", "grantor"] {
            out.push(format!(
                "SELECT e.{who} FROM {from},
                        pg_catalog.unnest(COALESCE({acl}, pg_catalog.acldefault('{kind}', {owner}))) AS i,
                        LATERAL pg_catalog.aclexplode(ARRAY[i]) AS e
                  WHERE ({acl} IS NOT NULL OR x.oid IN (SELECT ip.objoid FROM pg_catalog.pg_init_privs ip
                                                         WHERE ip.classoid = {cls} AND ip.objsubid = 0))
                    AND ({system} OR {}) AND NOT (i = ANY (({base})::pg_catalog.aclitem[]))
                    AND e.{who} <> {owner}",
                member(cls)
            ));
        }
    }
    for who in ["grantee", "grantor"] {
        out.push(format!(
            "SELECT e.{who} FROM pg_catalog.pg_attribute a
               JOIN pg_catalog.pg_class x ON x.oid = a.attrelid,
                    pg_catalog.unnest(a.attacl) AS i,
                    LATERAL pg_catalog.aclexplode(ARRAY[i]) AS e
              WHERE a.attacl IS NOT NULL
                AND (x.relnamespace = 'pg_catalog'::pg_catalog.regnamespace OR {})
                AND NOT (i = ANY (COALESCE((SELECT ip.initprivs FROM pg_catalog.pg_init_privs ip
                                             WHERE ip.classoid = {} AND ip.objoid = x.oid
                                               AND ip.objsubid = a.attnum), '{{}}')))
                AND e.{who} <> x.relowner",
            member(class::PG_CLASS),
            class::PG_CLASS
        ));
    }
    out
}

/// Privileges changed on objects the system or an extension created: pg_dump
/// compares each one's ACL with what `pg_init_privs` recorded when it was
/// created (initdb, CREATE EXTENSION) and replays the difference, for
/// `pg_catalog` and its objects, built-in languages and every extension
/// member. Such objects are not in the model (the target has them already),
/// so each gets an object of its own that holds only its privileges.
async fn load_builtin_acls(c: &Catalog<'_>, m: &mut SchemaModel, major: u32) -> Result<()> {
    use super::acl::{build_acl_commands, AclObjectKind};
    // Created by the system or an extension: not ours to create, but
    // privileges granted or revoked on it since are the user's.
    let builtin = |cls: u32, oid: &str, created_by_system: &str| {
        format!(
            "({created_by_system} OR EXISTS (SELECT 1 FROM pg_catalog.pg_depend e WHERE e.classid = {cls}
                AND e.objid = {oid} AND e.deptype = 'e'))"
        )
    };
    let in_catalog = |nsp: &str| format!("{nsp} = 'pg_catalog'::pg_catalog.regnamespace");
    // The effective ACL, its baseline, and which objects can differ at all:
    // a NULL ACL without an initial one is the default, its own baseline
    // (checking every built-in function's cost a quarter second a run).
    let init = |cls: u32, oid: &str, acl: &str, kind: char, owner: &str| {
        (
            format!("COALESCE({acl}, pg_catalog.acldefault('{kind}', {owner}))"),
            baseline_sql(cls, oid, kind, owner),
            format!(
                "({acl} IS NOT NULL OR {oid} IN (SELECT ip.objoid FROM pg_catalog.pg_init_privs ip
                                                   WHERE ip.classoid = {cls} AND ip.objsubid = 0))"
            ),
        )
    };
    struct Spec {
        what: &'static str,
        acl_kind: AclObjectKind,
        kind: ObjectKind,
        sql: String,
    }
    let select = |target: &str,
                  (acl, base, may_differ): (String, String, String),
                  owner: &str,
                  nsp: &str,
                  name: &str,
                  from: &str,
                  cond: String| {
        format!(
            "SELECT {target}, {acl}::text, {base}, pg_catalog.pg_get_userbyid({owner})::text, {nsp}, {name}, x.oid
               FROM {from}
              WHERE {cond} AND {may_differ} AND {acl} IS DISTINCT FROM ({base})::pg_catalog.aclitem[]"
        )
    };
    let specs = [
        Spec {
            what: "privileges on built-in and extension relations",
            acl_kind: AclObjectKind::Table,
            kind: ObjectKind::Table,
            sql: select(
                "CASE x.relkind WHEN 'S' THEN 'SEQUENCE ' ELSE 'TABLE ' END || pg_catalog.format('%I.%I', n.nspname, x.relname)",
                init(class::PG_CLASS, "x.oid", "x.relacl", 'r', "x.relowner"),
                "x.relowner",
                "n.nspname::text",
                "x.relname::text",
                "pg_catalog.pg_class x JOIN pg_catalog.pg_namespace n ON n.oid = x.relnamespace",
                format!(
                    "x.relkind IN ('r', 'p', 'v', 'm', 'f') AND {}",
                    builtin(class::PG_CLASS, "x.oid", &in_catalog("x.relnamespace"))
                ),
            ),
        },
        Spec {
            what: "privileges on extension sequences",
            acl_kind: AclObjectKind::Sequence,
            kind: ObjectKind::Table,
            sql: select(
                "'SEQUENCE ' || pg_catalog.format('%I.%I', n.nspname, x.relname)",
                init(class::PG_CLASS, "x.oid", "x.relacl", 's', "x.relowner"),
                "x.relowner",
                "n.nspname::text",
                "x.relname::text",
                "pg_catalog.pg_class x JOIN pg_catalog.pg_namespace n ON n.oid = x.relnamespace",
                format!(
                    "x.relkind = 'S' AND {}",
                    builtin(class::PG_CLASS, "x.oid", &in_catalog("x.relnamespace"))
                ),
            ),
        },
        Spec {
            what: "privileges on built-in and extension functions",
            acl_kind: AclObjectKind::Function,
            kind: ObjectKind::Func,
            sql: select(
                "CASE x.prokind WHEN 'p' THEN 'PROCEDURE ' ELSE 'FUNCTION ' END
                    || pg_catalog.format('%I.%I', n.nspname, x.proname) || '(' || pg_catalog.pg_get_function_identity_arguments(x.oid) || ')'",
                init(class::PG_PROC, "x.oid", "x.proacl", 'f', "x.proowner"),
                "x.proowner",
                "n.nspname::text",
                "x.proname::text",
                "pg_catalog.pg_proc x JOIN pg_catalog.pg_namespace n ON n.oid = x.pronamespace",
                builtin(class::PG_PROC, "x.oid", &in_catalog("x.pronamespace")),
            ),
        },
        Spec {
            what: "privileges on built-in and extension types",
            acl_kind: AclObjectKind::Type,
            kind: ObjectKind::Type,
            sql: select(
                "CASE x.typtype WHEN 'd' THEN 'DOMAIN ' ELSE 'TYPE ' END || pg_catalog.format('%I.%I', n.nspname, x.typname)",
                init(class::PG_TYPE, "x.oid", "x.typacl", 'T', "x.typowner"),
                "x.typowner",
                "n.nspname::text",
                "x.typname::text",
                "pg_catalog.pg_type x JOIN pg_catalog.pg_namespace n ON n.oid = x.typnamespace",
                builtin(class::PG_TYPE, "x.oid", &in_catalog("x.typnamespace")),
            ),
        },
        Spec {
            what: "privileges on pg_catalog and extension schemas",
            acl_kind: AclObjectKind::Schema,
            kind: ObjectKind::Namespace,
            sql: select(
                "'SCHEMA ' || pg_catalog.quote_ident(x.nspname)",
                init(class::PG_NAMESPACE, "x.oid", "x.nspacl", 'n', "x.nspowner"),
                "x.nspowner",
                "''::text",
                "x.nspname::text",
                "pg_catalog.pg_namespace x",
                builtin(class::PG_NAMESPACE, "x.oid", "x.nspname = 'pg_catalog'"),
            ),
        },
        Spec {
            what: "privileges on built-in and extension languages",
            acl_kind: AclObjectKind::Language,
            kind: ObjectKind::ProcLang,
            sql: select(
                "'LANGUAGE ' || pg_catalog.quote_ident(x.lanname)",
                init(2612, "x.oid", "x.lanacl", 'l', "x.lanowner"),
                "x.lanowner",
                "''::text",
                "x.lanname::text",
                "pg_catalog.pg_language x",
                format!("x.lanpltrusted AND {}", builtin(2612, "x.oid", "x.oid < 16384")),
            ),
        },
        Spec {
            what: "privileges on extension foreign-data wrappers",
            acl_kind: AclObjectKind::ForeignDataWrapper,
            kind: ObjectKind::Fdw,
            sql: select(
                "'FOREIGN DATA WRAPPER ' || pg_catalog.quote_ident(x.fdwname)",
                init(2328, "x.oid", "x.fdwacl", 'F', "x.fdwowner"),
                "x.fdwowner",
                "''::text",
                "x.fdwname::text",
                "pg_catalog.pg_foreign_data_wrapper x",
                builtin(2328, "x.oid", "false"),
            ),
        },
    ];
    for spec in specs {
        for r in query(c, spec.what, &spec.sql).await? {
            let (target, acl, base, owner, nsp, name, oid): (
                String,
                String,
                String,
                String,
                String,
                String,
                u32,
            ) = (
                r.get(0),
                r.get(1),
                r.get(2),
                r.get(3),
                r.get(4),
                r.get(5),
                r.get(6),
            );
            let cmds = build_acl_commands(
                spec.acl_kind,
                &target,
                None,
                Some(&acl),
                &base,
                &owner,
                major,
            )?;
            if cmds.is_empty() {
                continue;
            }
            let mut o = SchemaObject::new(spec.kind, &nsp, &name, oid, target);
            o.acl = cmds.into();
            m.add(o, &[]);
        }
    }
    // Columns of built-in and extension tables, compared with what
    // pg_init_privs holds for the column (no privileges when nothing).
    let sql = format!(
        "SELECT pg_catalog.format('%I.%I', n.nspname, x.relname), pg_catalog.quote_ident(a.attname),
                COALESCE(a.attacl, '{{}}')::text,
                COALESCE((SELECT ip.initprivs FROM pg_catalog.pg_init_privs ip
                           WHERE ip.classoid = {cls} AND ip.objoid = x.oid AND ip.objsubid = a.attnum), '{{}}')::text,
                pg_catalog.pg_get_userbyid(x.relowner)::text, n.nspname::text, x.relname::text, x.oid, a.attnum::int4
           FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_class x ON x.oid = a.attrelid
           JOIN pg_catalog.pg_namespace n ON n.oid = x.relnamespace
          WHERE a.attnum > 0 AND NOT a.attisdropped AND x.relkind IN ('r', 'p', 'v', 'm', 'f') AND {}
            AND COALESCE(a.attacl, '{{}}') IS DISTINCT FROM
                COALESCE((SELECT ip.initprivs FROM pg_catalog.pg_init_privs ip
                           WHERE ip.classoid = {cls} AND ip.objoid = x.oid AND ip.objsubid = a.attnum), '{{}}')
          ORDER BY x.oid, a.attnum",
        builtin(class::PG_CLASS, "x.oid", &in_catalog("x.relnamespace")),
        cls = class::PG_CLASS
    );
    for r in query(
        c,
        "privileges on columns of built-in and extension tables",
        &sql,
    )
    .await?
    {
        let (q, col, acl, base, owner, nsp, name, oid, attnum): (
            String,
            String,
            String,
            String,
            String,
            String,
            String,
            u32,
            i32,
        ) = (
            r.get(0),
            r.get(1),
            r.get(2),
            r.get(3),
            r.get(4),
            r.get(5),
            r.get(6),
            r.get(7),
            r.get(8),
        );
        let cmds = build_acl_commands(
            AclObjectKind::Column,
            &format!("TABLE {q}"),
            Some(&col),
            Some(&acl),
            &base,
            &owner,
            major,
        )?;
        if cmds.is_empty() {
            continue;
        }
        let mut o = SchemaObject::new(
            ObjectKind::Table,
            &nsp,
            &name,
            oid,
            format!("COLUMN {q}.{col}"),
        );
        o.key.tiebreak.push(format!("{attnum:05}").into());
        o.acl = cmds.into();
        m.add(o, &[]);
    }
    Ok(())
}

async fn load_extensions(c: &Catalog<'_>, m: &mut SchemaModel, comments: &Comments) -> Result<()> {
    for r in query(
        c,
        "extensions",
        "SELECT e.oid, e.extname::text, n.nspname::text, e.extversion
           FROM pg_catalog.pg_extension e JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace
          WHERE e.extname <> 'plpgsql'",
    )
    .await?
    {
        let (oid, name, nsp, version): (u32, String, String, String) =
            (r.get(0), r.get(1), r.get(2), r.get(3));
        let q = ident(&name);
        let mut o = SchemaObject::new(
            ObjectKind::Extension,
            "",
            &name,
            oid,
            format!("EXTENSION {q}"),
        );
        o.create.push(format!(
            "CREATE EXTENSION IF NOT EXISTS {q} WITH SCHEMA {} VERSION {};",
            ident(&nsp),
            literal(&version)
        ));
        o.comments.extend(comment_on(
            comments,
            (class::PG_EXTENSION, oid, 0),
            &format!("EXTENSION {q}"),
        ));
        m.add(o, &[(class::PG_EXTENSION, oid)]);
    }
    for r in query(
        c,
        "extension members",
        "SELECT classid, objid, refobjid FROM pg_catalog.pg_depend WHERE deptype = 'e' AND refclassid = 3079",
    )
    .await?
    {
        let (cls, obj, ext): (u32, u32, u32) = (r.get(0), r.get(1), r.get(2));
        if let Some(&i) = m.by_ref.get(&(class::PG_EXTENSION, ext)) {
            m.alias((cls, obj), i);
        }
    }
    Ok(())
}

/// Triggers (with their enabled state), rules, row-level security and
/// policies: all post-data, like pg_dump.
async fn load_rules_triggers_policies(
    c: &Catalog<'_>,
    m: &mut SchemaModel,
    comments: &Comments,
    rels: &HashMap<u32, Rel>,
    major: u32,
) -> Result<()> {
    let clone_filter = if major >= 13 {
        "AND t.tgparentid = 0"
    } else {
        ""
    };
    let sql = format!(
        "SELECT t.oid, t.tgrelid, t.tgname::text, pg_catalog.pg_get_triggerdef(t.oid, false), t.tgenabled::text
           FROM pg_catalog.pg_trigger t WHERE NOT t.tgisinternal {clone_filter} ORDER BY t.tgrelid, t.tgname"
    );
    for r in query(c, "triggers", &sql).await? {
        let (oid, relid, name, def, enabled): (u32, u32, String, String, String) =
            (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4));
        let Some(rel) = rels.get(&relid) else {
            continue;
        };
        let mut o = on_table(
            ObjectKind::Trigger,
            &name,
            oid,
            format!("TRIGGER {} ON {}", ident(&name), rel.qname),
            rel,
        );
        o.create.push(format!("{def};"));
        let word = if rel.kind == 'v' { "VIEW" } else { "TABLE" };
        match enabled.as_str() {
            "D" => o.create.push(format!(
                "ALTER {word} {} DISABLE TRIGGER {};",
                rel.qname,
                ident(&name)
            )),
            "R" => o.create.push(format!(
                "ALTER {word} {} ENABLE REPLICA TRIGGER {};",
                rel.qname,
                ident(&name)
            )),
            "A" => o.create.push(format!(
                "ALTER {word} {} ENABLE ALWAYS TRIGGER {};",
                rel.qname,
                ident(&name)
            )),
            _ => {}
        }
        o.comments.extend(comment_on(
            comments,
            (class::PG_TRIGGER, oid, 0),
            &format!("TRIGGER {} ON {}", ident(&name), rel.qname),
        ));
        m.add(o, &[(class::PG_TRIGGER, oid)]);
    }
    if major >= 13 {
        // A partition's clone of a parent trigger is created by the parent's;
        // only a differing enabled state needs a statement.
        for r in query(
            c,
            "partition trigger states",
            "SELECT t.oid, t.tgrelid, t.tgname::text, t.tgenabled::text, t.tgparentid
               FROM pg_catalog.pg_trigger t JOIN pg_catalog.pg_trigger p ON p.oid = t.tgparentid
              WHERE t.tgparentid <> 0 AND t.tgenabled <> p.tgenabled",
        )
        .await?
        {
            let (oid, relid, name, enabled, parent): (u32, u32, String, String, u32) =
                (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4));
            let Some(rel) = rels.get(&relid) else {
                continue;
            };
            let action = match enabled.as_str() {
                "D" => "DISABLE TRIGGER",
                "R" => "ENABLE REPLICA TRIGGER",
                "A" => "ENABLE ALWAYS TRIGGER",
                _ => "ENABLE TRIGGER",
            };
            let mut o = on_table(
                ObjectKind::Trigger,
                &name,
                oid,
                format!("TRIGGER {} ON {}", ident(&name), rel.qname),
                rel,
            );
            o.create.push(format!(
                "ALTER TABLE {} {action} {};",
                rel.qname,
                ident(&name)
            ));
            o.needs.push((class::PG_TRIGGER, parent));
            m.add(o, &[]);
        }
    }
    for r in query(
        c,
        "rules",
        "SELECT r.oid, r.ev_class, r.rulename::text, pg_catalog.pg_get_ruledef(r.oid), r.ev_enabled::text
           FROM pg_catalog.pg_rewrite r WHERE r.rulename <> '_RETURN' ORDER BY r.ev_class, r.rulename",
    )
    .await?
    {
        let (oid, relid, name, def, enabled): (u32, u32, String, String, String) =
            (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4));
        let Some(rel) = rels.get(&relid) else { continue };
        let mut o = on_table(ObjectKind::Rule, &name, oid, format!("RULE {} ON {}", ident(&name), rel.qname), rel);
        let def = def.trim_end().trim_end_matches(';').to_string();
        o.create.push(format!("{def};"));
        let word = if rel.kind == 'v' { "VIEW" } else { "TABLE" };
        match enabled.as_str() {
            "D" => o.create.push(format!("ALTER {word} {} DISABLE RULE {};", rel.qname, ident(&name))),
            "R" => o.create.push(format!("ALTER {word} {} ENABLE REPLICA RULE {};", rel.qname, ident(&name))),
            "A" => o.create.push(format!("ALTER {word} {} ENABLE ALWAYS RULE {};", rel.qname, ident(&name))),
            _ => {}
        }
        o.comments.extend(comment_on(comments, (class::PG_REWRITE, oid, 0), &format!("RULE {} ON {}", ident(&name), rel.qname)));
        m.add(o, &[(class::PG_REWRITE, oid)]);
    }
    // ENABLE ROW LEVEL SECURITY is its own post-data step (FORCE goes with the table).
    for r in query(
        c,
        "row-level security",
        "SELECT c.oid FROM pg_catalog.pg_class c WHERE c.relrowsecurity",
    )
    .await?
    {
        let oid: u32 = r.get(0);
        let Some(rel) = rels.get(&oid) else { continue };
        let name = rel.qname.clone();
        let mut o = SchemaObject::new(
            ObjectKind::Policy,
            &rel.namespace,
            "",
            oid,
            format!("ROW SECURITY {name}"),
        );
        o.key.tiebreak.push(name.clone());
        o.create
            .push(format!("ALTER TABLE {name} ENABLE ROW LEVEL SECURITY;"));
        o.deps.push(rel.index);
        o.part_of.push(rel.index);
        m.add(o, &[]);
    }
    for r in query(
        c,
        "policies",
        "SELECT p.oid, p.polrelid, p.polname::text, p.polcmd::text, p.polpermissive,
                CASE WHEN p.polroles = '{0}' THEN NULL ELSE pg_catalog.array_to_string(ARRAY(
                    SELECT pg_catalog.quote_ident(ro.rolname) FROM pg_catalog.pg_roles ro WHERE ro.oid = ANY (p.polroles) ORDER BY ro.rolname), ', ') END,
                pg_catalog.pg_get_expr(p.polqual, p.polrelid), pg_catalog.pg_get_expr(p.polwithcheck, p.polrelid)
           FROM pg_catalog.pg_policy p ORDER BY p.polrelid, p.polname",
    )
    .await?
    {
        let (oid, relid, name, cmd, permissive): (u32, u32, String, String, bool) = (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4));
        let Some(rel) = rels.get(&relid) else { continue };
        let mut s = format!("CREATE POLICY {} ON {}", ident(&name), rel.qname);
        if !permissive {
            s.push_str(" AS RESTRICTIVE");
        }
        match cmd.as_str() {
            "r" => s.push_str(" FOR SELECT"),
            "a" => s.push_str(" FOR INSERT"),
            "w" => s.push_str(" FOR UPDATE"),
            "d" => s.push_str(" FOR DELETE"),
            _ => {}
        }
        if let Some(roles) = r.get::<_, Option<String>>(5) {
            s.push_str(&format!(" TO {roles}"));
        }
        if let Some(q) = r.get::<_, Option<String>>(6) {
            s.push_str(&format!(" USING ({q})"));
        }
        if let Some(wc) = r.get::<_, Option<String>>(7) {
            s.push_str(&format!(" WITH CHECK ({wc})"));
        }
        s.push(';');
        let mut o = on_table(ObjectKind::Policy, &name, oid, format!("POLICY {} ON {}", ident(&name), rel.qname), rel);
        o.create.push(s);
        o.comments.extend(comment_on(comments, (3256, oid, 0), &format!("POLICY {} ON {}", ident(&name), rel.qname)));
        m.add(o, &[(3256, oid)]);
    }
    Ok(())
}

/// Extended statistics objects.
async fn load_statistics(
    c: &Catalog<'_>,
    m: &mut SchemaModel,
    comments: &Comments,
    major: u32,
) -> Result<()> {
    let target = match major {
        17.. => "s.stxstattarget::int4",
        13..=16 => "NULLIF(s.stxstattarget, -1)::int4",
        _ => "NULL::int4",
    };
    let sql = format!(
        "SELECT s.oid, n.nspname::text, s.stxname::text, pg_catalog.pg_get_statisticsobjdef(s.oid), {target},
                pg_catalog.pg_get_userbyid(s.stxowner)::text, s.stxrelid
           FROM pg_catalog.pg_statistic_ext s JOIN pg_catalog.pg_namespace n ON n.oid = s.stxnamespace
          WHERE {}",
        user_object(3381, "s.oid")
    );
    for r in query(c, "extended statistics", &sql).await? {
        let (oid, nsp, name, def, owner): (u32, String, String, String, String) =
            (r.get(0), r.get(1), r.get(2), r.get(3), r.get(5));
        let q = qualified(&nsp, &name);
        let mut o = SchemaObject::new(
            ObjectKind::StatsExt,
            &nsp,
            &name,
            oid,
            format!("STATISTICS {q}"),
        );
        o.create.push(format!("{def};"));
        if let Some(t) = r.get::<_, Option<i32>>(4) {
            o.create
                .push(format!("ALTER STATISTICS {q} SET STATISTICS {t};"));
        }
        o.owner = Some(format!("ALTER STATISTICS {q} OWNER TO {};", ident(&owner)).into());
        o.comments.extend(comment_on(
            comments,
            (3381, oid, 0),
            &format!("STATISTICS {q}"),
        ));
        if let Some(&t) = m.by_ref.get(&(class::PG_CLASS, r.get::<_, u32>(6))) {
            o.part_of.push(t);
        }
        m.add(o, &[(3381, oid)]);
    }
    Ok(())
}

/// Plain aggregates (ordered-set and hypothetical ones: `aggregates.rs`), composed from `pg_aggregate` as pg_dump does:
/// `pg_get_functiondef` does not work on aggregates.
async fn load_aggregates(c: &Catalog<'_>, m: &mut SchemaModel, comments: &Comments) -> Result<()> {
    let sql = format!(
        "SELECT p.oid, n.nspname::text, p.proname::text, pg_catalog.pg_get_function_identity_arguments(p.oid),
                pg_catalog.pg_get_userbyid(p.proowner)::text,
                a.aggtransfn::pg_catalog.regproc::text, pg_catalog.format_type(a.aggtranstype, NULL), a.aggtransspace,
                NULLIF(a.aggfinalfn, 0)::pg_catalog.regproc::text, a.aggfinalextra, a.aggfinalmodify::text,
                NULLIF(a.aggcombinefn, 0)::pg_catalog.regproc::text, NULLIF(a.aggserialfn, 0)::pg_catalog.regproc::text,
                NULLIF(a.aggdeserialfn, 0)::pg_catalog.regproc::text, a.agginitval,
                NULLIF(a.aggmtransfn, 0)::pg_catalog.regproc::text, NULLIF(a.aggminvtransfn, 0)::pg_catalog.regproc::text,
                CASE WHEN a.aggmtranstype <> 0 THEN pg_catalog.format_type(a.aggmtranstype, NULL) END, a.aggmtransspace,
                NULLIF(a.aggmfinalfn, 0)::pg_catalog.regproc::text, a.aggmfinalextra, a.aggmfinalmodify::text, a.aggminitval,
                (SELECT pg_catalog.format('OPERATOR(%I.%s)', son.nspname, so.oprname) FROM pg_catalog.pg_operator so
                   JOIN pg_catalog.pg_namespace son ON son.oid = so.oprnamespace WHERE so.oid = a.aggsortop), p.proparallel::text
           FROM pg_catalog.pg_aggregate a JOIN pg_catalog.pg_proc p ON p.oid = a.aggfnoid
           JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
          WHERE a.aggkind = 'n' AND {}",
        user_object(class::PG_PROC, "p.oid")
    );
    for r in query(c, "aggregates", &sql).await? {
        let (oid, nsp, name, args, owner): (u32, String, String, String, String) =
            (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4));
        let args = if args.is_empty() {
            "*".to_string()
        } else {
            args
        };
        let sig = format!("{}({args})", qualified(&nsp, &name));
        let mut opts = vec![
            format!("SFUNC = {}", r.get::<_, String>(5)),
            format!("STYPE = {}", r.get::<_, String>(6)),
        ];
        let sspace: i32 = r.get(7);
        if sspace != 0 {
            opts.push(format!("SSPACE = {sspace}"));
        }
        if let Some(v) = r.get::<_, Option<String>>(14) {
            opts.push(format!("INITCOND = {}", literal(&v)));
        }
        if let Some(f) = r.get::<_, Option<String>>(8) {
            opts.push(format!("FINALFUNC = {f}"));
            if r.get::<_, bool>(9) {
                opts.push("FINALFUNC_EXTRA".into());
            }
            match r.get::<_, String>(10).as_str() {
                "s" => opts.push("FINALFUNC_MODIFY = SHAREABLE".into()),
                "w" => opts.push("FINALFUNC_MODIFY = READ_WRITE".into()),
                _ => {}
            }
        }
        for (i, key) in [
            (11, "COMBINEFUNC"),
            (12, "SERIALFUNC"),
            (13, "DESERIALFUNC"),
        ] {
            if let Some(f) = r.get::<_, Option<String>>(i) {
                opts.push(format!("{key} = {f}"));
            }
        }
        if let Some(f) = r.get::<_, Option<String>>(15) {
            opts.push(format!("MSFUNC = {f}"));
            if let Some(f) = r.get::<_, Option<String>>(16) {
                opts.push(format!("MINVFUNC = {f}"));
            }
            if let Some(t) = r.get::<_, Option<String>>(17) {
                opts.push(format!("MSTYPE = {t}"));
            }
            let ms: i32 = r.get(18);
            if ms != 0 {
                opts.push(format!("MSSPACE = {ms}"));
            }
            if let Some(f) = r.get::<_, Option<String>>(19) {
                opts.push(format!("MFINALFUNC = {f}"));
                if r.get::<_, bool>(20) {
                    opts.push("MFINALFUNC_EXTRA".into());
                }
                match r.get::<_, String>(21).as_str() {
                    "s" => opts.push("MFINALFUNC_MODIFY = SHAREABLE".into()),
                    "w" => opts.push("MFINALFUNC_MODIFY = READ_WRITE".into()),
                    _ => {}
                }
            }
            if let Some(v) = r.get::<_, Option<String>>(22) {
                opts.push(format!("MINITCOND = {}", literal(&v)));
            }
        }
        if let Some(op) = r.get::<_, Option<String>>(23) {
            // `OPERATOR(schema.name)`: a bare qualified operator does not parse.
            opts.push(format!("SORTOP = {op}"));
        }
        match r.get::<_, String>(24).as_str() {
            "s" => opts.push("PARALLEL = safe".into()),
            "r" => opts.push("PARALLEL = restricted".into()),
            _ => {}
        }
        let mut o = SchemaObject::new(
            ObjectKind::Agg,
            &nsp,
            &name,
            oid,
            format!("AGGREGATE {sig}"),
        );
        o.key.tiebreak.push(args.clone().into());
        o.create.push(format!(
            "CREATE AGGREGATE {sig} (\n    {}\n);",
            opts.join(",\n    ")
        ));
        o.owner = Some(format!("ALTER AGGREGATE {sig} OWNER TO {};", ident(&owner)).into());
        o.comments.extend(comment_on(
            comments,
            (class::PG_PROC, oid, 0),
            &format!("AGGREGATE {sig}"),
        ));
        m.add(o, &[(class::PG_PROC, oid)]);
    }
    Ok(())
}

/// User-defined collations (the version is left for the target to compute).
async fn load_collations(
    c: &Catalog<'_>,
    m: &mut SchemaModel,
    comments: &Comments,
    major: u32,
) -> Result<()> {
    let icu_locale = match major {
        17.. => "co.colllocale",
        15 | 16 => "co.colliculocale",
        _ => "NULL::text",
    };
    let sql = format!(
        "SELECT co.oid, n.nspname::text, co.collname::text, co.collprovider::text, co.collisdeterministic,
                co.collcollate::text, co.collctype::text, {icu_locale}, pg_catalog.pg_get_userbyid(co.collowner)::text
           FROM pg_catalog.pg_collation co JOIN pg_catalog.pg_namespace n ON n.oid = co.collnamespace
          WHERE co.oid >= 16384 AND {}",
        user_object(class::PG_COLLATION, "co.oid")
    );
    for r in query(c, "collations", &sql).await? {
        let (oid, nsp, name, provider, deterministic, owner): (
            u32,
            String,
            String,
            String,
            bool,
            String,
        ) = (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(8));
        let q = qualified(&nsp, &name);
        let mut opts = Vec::new();
        match provider.as_str() {
            "i" => {
                opts.push("provider = icu".to_string());
                let loc: Option<String> = r
                    .get::<_, Option<String>>(7)
                    .or(r.get::<_, Option<String>>(5));
                if let Some(l) = loc {
                    opts.push(format!("locale = {}", literal(&l)));
                }
            }
            "c" => {
                opts.push("provider = libc".to_string());
                let (coll, ctype): (Option<String>, Option<String>) = (r.get(5), r.get(6));
                if coll == ctype {
                    opts.push(format!("locale = {}", literal(&coll.unwrap_or_default())));
                } else {
                    opts.push(format!(
                        "lc_collate = {}",
                        literal(&coll.unwrap_or_default())
                    ));
                    opts.push(format!(
                        "lc_ctype = {}",
                        literal(&ctype.unwrap_or_default())
                    ));
                }
            }
            other => {
                crate::recorded::warn_recorded!(
                    "collation {q}: provider {other} not reproduced; skipped"
                );
                continue;
            }
        }
        if !deterministic {
            opts.push("deterministic = false".into());
        }
        let mut o = SchemaObject::new(
            ObjectKind::Collation,
            &nsp,
            &name,
            oid,
            format!("COLLATION {q}"),
        );
        o.create
            .push(format!("CREATE COLLATION {q} ({});", opts.join(", ")));
        o.owner = Some(format!("ALTER COLLATION {q} OWNER TO {};", ident(&owner)).into());
        o.comments.extend(comment_on(
            comments,
            (class::PG_COLLATION, oid, 0),
            &format!("COLLATION {q}"),
        ));
        m.add(o, &[(class::PG_COLLATION, oid)]);
    }
    Ok(())
}

/// Event triggers: created last, so they never fire during the migration's own DDL.
async fn load_event_triggers(
    c: &Catalog<'_>,
    m: &mut SchemaModel,
    comments: &Comments,
) -> Result<()> {
    for r in query(
        c,
        "event triggers",
        "SELECT e.oid, e.evtname::text, e.evtevent::text, e.evtfoid::pg_catalog.regproc::text, e.evtenabled::text,
                (SELECT pg_catalog.string_agg(pg_catalog.quote_literal(t), ', ') FROM pg_catalog.unnest(e.evttags) t),
                pg_catalog.pg_get_userbyid(e.evtowner)::text
           FROM pg_catalog.pg_event_trigger e
          WHERE e.evtname NOT LIKE 'pg\\_dbmigrator\\_%'",
    )
    .await?
    {
        let (oid, name, event, func, enabled, owner): (u32, String, String, String, String, String) =
            (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(6));
        let q = ident(&name);
        let mut s = format!("CREATE EVENT TRIGGER {q} ON {}", ident(&event));
        if let Some(tags) = r.get::<_, Option<String>>(5) {
            s.push_str(&format!("\n         WHEN TAG IN ({tags})"));
        }
        s.push_str(&format!("\n   EXECUTE FUNCTION {func}();"));
        let mut o = SchemaObject::new(ObjectKind::EventTrigger, "", &name, oid, format!("EVENT TRIGGER {q}"));
        o.create.push(s);
        match enabled.as_str() {
            "D" => o.create.push(format!("ALTER EVENT TRIGGER {q} DISABLE;")),
            "R" => o.create.push(format!("ALTER EVENT TRIGGER {q} ENABLE REPLICA;")),
            "A" => o.create.push(format!("ALTER EVENT TRIGGER {q} ENABLE ALWAYS;")),
            _ => {}
        }
        o.owner = Some(format!("ALTER EVENT TRIGGER {q} OWNER TO {};", ident(&owner)).into());
        o.comments.extend(comment_on(comments, (3466, oid, 0), &format!("EVENT TRIGGER {q}")));
        m.add(o, &[(3466, oid)]);
    }
    Ok(())
}

/// An object that belongs to a table (constraint, index, trigger, rule,
/// policy): named after the table in messages, sorted by it like pg_dump
/// does, and created after it.
/// The per-column settings pg_dump prints after a table's or materialized
/// view's CREATE, for every column, inherited ones included (their own
/// setting may differ from the parent's they were created with): statistics
/// target, storage, options, compression, foreign-data options. `cols` are
/// rows of the column query in `load_relations`.
fn column_settings(q: &str, cols: &[&CompactRow], compression: bool) -> Vec<String> {
    let mut out = Vec::new();
    for col in cols {
        let cname = ident(&col.get::<_, String>(1));
        if let Some(t) = col.get::<_, Option<i32>>(12) {
            out.push(format!(
                "ALTER TABLE ONLY {q} ALTER COLUMN {cname} SET STATISTICS {t};"
            ));
        }
        if let Some(st) = col.get::<_, Option<String>>(13) {
            let word = match st.as_str() {
                "p" => "PLAIN",
                "e" => "EXTERNAL",
                "m" => "MAIN",
                _ => "EXTENDED",
            };
            out.push(format!(
                "ALTER TABLE ONLY {q} ALTER COLUMN {cname} SET STORAGE {word};"
            ));
        }
        let method = match col.get::<_, String>(11).as_str() {
            _ if !compression => None,
            "p" => Some("pglz"),
            "l" => Some("lz4"),
            _ => None,
        };
        if let Some(method) = method {
            out.push(format!(
                "ALTER TABLE ONLY {q} ALTER COLUMN {cname} SET COMPRESSION {method};"
            ));
        }
        if let Some(opts) = col.get::<_, Option<Vec<String>>>(14) {
            if !opts.is_empty() {
                out.push(format!(
                    "ALTER TABLE ONLY {q} ALTER COLUMN {cname} SET ({});",
                    opts.join(", ")
                ));
            }
        }
        if let Some(opts) = col.get::<_, Option<String>>(15) {
            out.push(format!(
                "ALTER FOREIGN TABLE ONLY {q} ALTER COLUMN {cname} OPTIONS (\n    {opts}\n);"
            ));
        }
    }
    out
}

/// Whether an inheritance child's columns stand in another order than
/// `CREATE TABLE ... INHERITS` gives them (the parents' columns first, then
/// its own), as when a table was created on its own and then made a child
/// with `ALTER TABLE ... INHERIT`, and it can be rebuilt that way: every
/// column and CHECK constraint of it is its own (`attislocal`,
/// `conislocal`), which `INHERIT` requires and leaves as it finds. pg_dump
/// loses such an order; creating the table with its own columns and then
/// `INHERIT` keeps it.
fn inherits_out_of_order(
    parents_of: &HashMap<u32, Vec<(String, u32)>>,
    cols_by_rel: &HashMap<u32, Vec<CompactRow>>,
    checks: &HashMap<u32, Vec<&tokio_postgres::Row>>,
    oid: u32,
) -> bool {
    let Some(parents) = parents_of.get(&oid) else {
        return false;
    };
    let own = cols_by_rel.get(&oid).map(Vec::as_slice).unwrap_or_default();
    if own.iter().any(|c| !c.get::<_, bool>(4))
        || checks
            .get(&oid)
            .into_iter()
            .flatten()
            .any(|k| !k.get::<_, bool>(4))
    {
        return false;
    }
    let mut natural: Vec<String> = Vec::new();
    for (_, poid) in parents {
        for pc in cols_by_rel.get(poid).into_iter().flatten() {
            let name: String = pc.get(1);
            if !natural.contains(&name) {
                natural.push(name);
            }
        }
    }
    for c in own {
        let name: String = c.get(1);
        if !natural.contains(&name) {
            natural.push(name);
        }
    }
    let actual: Vec<String> = own.iter().map(|c| c.get(1)).collect();
    natural != actual
}

/// Whether a parent of table `oid` (any level up) generates column `cname`.
fn parent_generates(
    parents_of: &HashMap<u32, Vec<(String, u32)>>,
    cols_by_rel: &HashMap<u32, Vec<CompactRow>>,
    oid: u32,
    cname: &str,
) -> bool {
    parents_of.get(&oid).into_iter().flatten().any(|(_, poid)| {
        cols_by_rel
            .get(poid)
            .into_iter()
            .flatten()
            .any(|pc| pc.get::<_, String>(1) == cname && !pc.get::<_, String>(6).is_empty())
    })
}

fn on_table(kind: ObjectKind, name: &str, oid: u32, describe: String, rel: &Rel) -> SchemaObject {
    let mut o = SchemaObject::new(kind, &rel.namespace, name, oid, describe);
    o.key.tiebreak.push(rel.qname.clone());
    o.deps.push(rel.index);
    o.part_of.push(rel.index);
    o
}

/// `CREATE ROLE` (with the source's attributes) for each of `names`, and
/// the memberships among the roles that will exist on the target. With
/// `passwords`, the stored password hash goes along when this session may
/// read `pg_authid` (a superuser); the statements then hold a secret and
/// are never logged.
pub async fn role_definitions(
    client: &Client,
    names: &[String],
    existing: &[String],
    passwords: bool,
) -> Result<Vec<String>> {
    let c = &Catalog::direct(client);
    let mut out = Vec::new();
    let can_read_hash = passwords && is_superuser(c).await.unwrap_or(false);
    if passwords && !can_read_hash {
        crate::recorded::warn_recorded!("role passwords: the source role cannot read password hashes (needs superuser); roles are created without passwords");
    }
    let pw = if can_read_hash {
        "(SELECT a.rolpassword FROM pg_catalog.pg_authid a WHERE a.oid = r.oid)"
    } else {
        "NULL::text"
    };
    let sql = format!(
        "SELECT r.rolname::text, r.rolsuper, r.rolinherit, r.rolcreaterole, r.rolcreatedb, r.rolcanlogin,
                r.rolreplication, r.rolbypassrls, r.rolconnlimit, r.rolvaliduntil::text, {pw}
           FROM pg_catalog.pg_roles r WHERE r.rolname = ANY ($1) ORDER BY 1"
    );
    let rows = client
        .query(&sql, &[&names])
        .await
        .map_err(|e| MigrationError::db("reading role definitions from the source", e))?;
    let flag = |on: bool, word: &str| {
        if on {
            word.to_string()
        } else {
            format!("NO{word}")
        }
    };
    for r in &rows {
        let name: String = r.get(0);
        let mut s = format!(
            "CREATE ROLE {} WITH {} {} {} {} {} {} {}",
            ident(&name),
            flag(r.get(1), "SUPERUSER"),
            flag(r.get(2), "INHERIT"),
            flag(r.get(3), "CREATEROLE"),
            flag(r.get(4), "CREATEDB"),
            flag(r.get(5), "LOGIN"),
            flag(r.get(6), "REPLICATION"),
            flag(r.get(7), "BYPASSRLS"),
        );
        let limit: i32 = r.get(8);
        if limit >= 0 {
            s.push_str(&format!(" CONNECTION LIMIT {limit}"));
        }
        if let Some(v) = r.get::<_, Option<String>>(9) {
            s.push_str(&format!(" VALID UNTIL {}", literal(&v)));
        }
        if let Some(h) = r.get::<_, Option<String>>(10) {
            s.push_str(&format!(" PASSWORD {}", literal(&h)));
        }
        s.push(';');
        out.push(s);
    }
    // Memberships involving a created role, among roles the target will have.
    let will_exist: Vec<String> = names.iter().chain(existing.iter()).cloned().collect();
    let rows = client
        .query(
            "SELECT pg_catalog.pg_get_userbyid(m.roleid)::text, pg_catalog.pg_get_userbyid(m.member)::text, m.admin_option
               FROM pg_catalog.pg_auth_members m
              WHERE (pg_catalog.pg_get_userbyid(m.roleid) = ANY ($1) OR pg_catalog.pg_get_userbyid(m.member) = ANY ($1))
                AND pg_catalog.pg_get_userbyid(m.roleid) = ANY ($2) AND pg_catalog.pg_get_userbyid(m.member) = ANY ($2)
              ORDER BY 1, 2",
            &[&names, &will_exist],
        )
        .await
        .map_err(|e| MigrationError::db("reading role memberships from the source", e))?;
    for r in &rows {
        let admin = if r.get::<_, bool>(2) {
            " WITH ADMIN OPTION"
        } else {
            ""
        };
        out.push(format!(
            "GRANT {} TO {}{admin};",
            ident(&r.get::<_, String>(0)),
            ident(&r.get::<_, String>(1))
        ));
    }
    Ok(out)
}
