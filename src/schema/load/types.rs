//! Base types (created through a shell type, as pg_dump does), shell types
//! for range types with a canonical function, and the dependency edges a
//! table's row type carries: a function, view, domain or default over the
//! row type of a table needs that table first.

use std::collections::HashMap;

use super::pipeline::Catalog;

use super::{comment_on, query, user_object, Comments};
use crate::error::Result;
use crate::pg::quote::{ident, literal, qualified};
use crate::schema::model::{class, SchemaModel, SchemaObject};
use crate::schema::sort::ObjectKind;

/// A table's (view's, materialized view's) row type and its array type
/// stand for the relation: whoever uses the row type needs the relation.
pub(super) async fn alias_row_types(c: &Catalog<'_>, m: &mut SchemaModel) -> Result<()> {
    for r in query(
        c,
        "row types",
        "SELECT c.oid, c.reltype, t.typarray FROM pg_catalog.pg_class c
           JOIN pg_catalog.pg_type t ON t.oid = c.reltype
          WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f') AND c.oid >= 16384",
    )
    .await?
    {
        let (rel, rowtype, arr): (u32, u32, u32) = (r.get(0), r.get(1), r.get(2));
        if let Some(&i) = m.by_ref.get(&(class::PG_CLASS, rel)) {
            m.alias((class::PG_TYPE, rowtype), i);
            if arr != 0 {
                m.alias((class::PG_TYPE, arr), i);
            }
        }
    }
    Ok(())
}

/// `(src, fn)`: the functions an object of catalog `cls` calls, directly or
/// through SQL-standard bodies calling further functions.
fn reached_functions(cls: u32) -> String {
    format!(
        "WITH RECURSIVE reach(src, fn) AS (
             SELECT dd.objid, dd.refobjid FROM pg_catalog.pg_depend dd WHERE dd.classid = {cls} AND dd.refclassid = 1255
             UNION
             SELECT r.src, d.refobjid FROM reach r JOIN pg_catalog.pg_depend d
                 ON d.classid = 1255 AND d.objid = r.fn AND d.refclassid = 1255)"
    )
}

/// A column default calling a function over its own table's row type (or
/// one whose SQL-standard body reads the table) is a loop (table → default
/// → function → row type → table). pg_dump's repair:
/// the default becomes a separate `ALTER TABLE ... SET DEFAULT` after both.
pub(super) async fn split_row_type_defaults(c: &Catalog<'_>, m: &mut SchemaModel) -> Result<()> {
    let rows = query(
        c,
        "defaults over row types",
        &format!(
            "{} SELECT DISTINCT d.oid, d.adrelid, a.attname::text, pg_catalog.pg_get_expr(d.adbin, d.adrelid)
           FROM pg_catalog.pg_attrdef d
           JOIN pg_catalog.pg_attribute a ON a.attrelid = d.adrelid AND a.attnum = d.adnum
           JOIN pg_catalog.pg_class k ON k.oid = d.adrelid
           JOIN pg_catalog.pg_type rt ON rt.oid = k.reltype
           JOIN reach ON reach.src = d.oid
           JOIN pg_catalog.pg_depend fd ON fd.classid = 1255 AND fd.objid = reach.fn
                                        AND ((fd.refclassid = 1247 AND fd.refobjid IN (rt.oid, rt.typarray))
                                             OR (fd.refclassid = 1259 AND fd.refobjid = k.oid))
          WHERE a.attgenerated = '' AND k.relkind IN ('r', 'p')",
            reached_functions(class::PG_ATTRDEF)
        ),
    )
    .await?;
    for r in rows {
        let (adoid, rel, col, expr): (u32, u32, String, String) =
            (r.get(0), r.get(1), r.get(2), r.get(3));
        let Some(&ti) = m.by_ref.get(&(class::PG_CLASS, rel)) else {
            continue;
        };
        let prefix = format!("    {} ", ident(&col));
        let clause = format!(" DEFAULT {expr}");
        let Some(create) = m.objects[ti].create.first() else {
            continue;
        };
        let mut found = false;
        let lines: Vec<String> = create
            .split('\n')
            .map(|l| {
                if !found && l.starts_with(&prefix) && l.contains(&clause) {
                    found = true;
                    l.replacen(&clause, "", 1)
                } else {
                    l.to_string()
                }
            })
            .collect();
        if !found {
            continue;
        }
        m.objects[ti].create.set(0, lines.join("\n"));
        let t = &m.objects[ti];
        let q = t.describe.trim_start_matches("TABLE ").to_string();
        let (nsp, name) = (t.key.namespace.clone(), t.key.name.clone());
        let mut o = SchemaObject::new(
            ObjectKind::AttrDef,
            &nsp,
            &name,
            adoid,
            format!("DEFAULT {q}.{}", ident(&col)),
        );
        o.create.push(format!(
            "ALTER TABLE ONLY {q} ALTER COLUMN {} SET DEFAULT {expr};",
            ident(&col)
        ));
        o.deps.push(ti);
        o.part_of.push(ti);
        let i = m.add(o, &[]);
        m.by_ref.insert((class::PG_ATTRDEF, adoid), i);
    }
    Ok(())
}

/// A shell type (`CREATE TYPE x;`) that the listed functions depend on
/// instead of the type itself, which breaks the type ↔ function loop.
fn add_shell(
    m: &mut SchemaModel,
    type_oid: u32,
    nsp: &str,
    name: &str,
    nsp_oid: u32,
    funcs: &[u32],
) {
    let q = qualified(nsp, name);
    let mut shell = SchemaObject::new(
        ObjectKind::ShellType,
        nsp,
        name,
        type_oid,
        format!("SHELL TYPE {q}"),
    );
    shell.create.push(format!("CREATE TYPE {q};"));
    shell.needs.push((class::PG_NAMESPACE, nsp_oid));
    let s = m.add(shell, &[]);
    for &f in funcs {
        let Some(&fi) = m.by_ref.get(&(class::PG_PROC, f)) else {
            continue;
        };
        m.objects[fi].deps.push(s);
        m.skip_deps
            .insert(((class::PG_PROC, f), (class::PG_TYPE, type_oid)));
    }
}

/// User-defined base types: shell type first, then the I/O functions, then
/// `CREATE TYPE ... (INPUT = ..., OUTPUT = ..., ...)` composed from pg_type.
pub(super) async fn load_base_types(
    c: &Catalog<'_>,
    m: &mut SchemaModel,
    comments: &Comments,
    major: u32,
) -> Result<()> {
    let subscript = if major >= 14 {
        "NULLIF(t.typsubscript, 0)::pg_catalog.regproc::text, NULLIF(t.typsubscript, 0)::oid"
    } else {
        "NULL::text, NULL::oid"
    };
    let sql = format!(
        "SELECT t.oid, n.nspname::text, t.typname::text, pg_catalog.pg_get_userbyid(t.typowner)::text, n.oid,
                t.typlen::int4, t.typbyval, t.typalign::text, t.typstorage::text, t.typcategory::text,
                t.typispreferred, t.typdefault, t.typdelim::text, t.typcollation <> 0,
                CASE WHEN t.typelem <> 0 THEN pg_catalog.format_type(t.typelem, NULL) END,
                t.typinput::pg_catalog.regproc::text, t.typoutput::pg_catalog.regproc::text,
                NULLIF(t.typreceive, 0)::pg_catalog.regproc::text, NULLIF(t.typsend, 0)::pg_catalog.regproc::text,
                NULLIF(t.typmodin, 0)::pg_catalog.regproc::text, NULLIF(t.typmodout, 0)::pg_catalog.regproc::text,
                NULLIF(t.typanalyze, 0)::pg_catalog.regproc::text, {subscript},
                t.typinput::oid, t.typoutput::oid, t.typreceive::oid, t.typsend::oid,
                t.typmodin::oid, t.typmodout::oid, t.typanalyze::oid, t.typarray
           FROM pg_catalog.pg_type t JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace
          WHERE t.typtype = 'b' AND t.oid >= 16384 AND {}
            AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend i WHERE i.classid = 1247 AND i.objid = t.oid AND i.deptype = 'i')",
        user_object(class::PG_TYPE, "t.oid")
    );
    for r in query(c, "base types", &sql).await? {
        let (oid, nsp, name, owner, nsp_oid): (u32, String, String, String, u32) =
            (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4));
        let q = qualified(&nsp, &name);
        let typlen: i32 = r.get(5);
        let mut opts = vec![format!(
            "INTERNALLENGTH = {}",
            if typlen == -1 {
                "variable".to_string()
            } else {
                typlen.to_string()
            }
        )];
        opts.push(format!("INPUT = {}", r.get::<_, String>(15)));
        opts.push(format!("OUTPUT = {}", r.get::<_, String>(16)));
        for (col, key) in [
            (17, "RECEIVE"),
            (18, "SEND"),
            (19, "TYPMOD_IN"),
            (20, "TYPMOD_OUT"),
            (21, "ANALYZE"),
            (22, "SUBSCRIPT"),
        ] {
            if let Some(f) = r.get::<_, Option<String>>(col) {
                opts.push(format!("{key} = {f}"));
            }
        }
        if r.get::<_, bool>(6) {
            opts.push("PASSEDBYVALUE".into());
        }
        let align = match r.get::<_, String>(7).as_str() {
            "c" => "char",
            "s" => "int2",
            "d" => "double",
            _ => "int4",
        };
        opts.push(format!("ALIGNMENT = {align}"));
        let storage = match r.get::<_, String>(8).as_str() {
            "e" => "external",
            "x" => "extended",
            "m" => "main",
            _ => "plain",
        };
        opts.push(format!("STORAGE = {storage}"));
        let category: String = r.get(9);
        if category != "U" {
            opts.push(format!("CATEGORY = {}", literal(&category)));
        }
        if r.get::<_, bool>(10) {
            opts.push("PREFERRED = true".into());
        }
        if let Some(d) = r.get::<_, Option<String>>(11) {
            opts.push(format!("DEFAULT = {}", literal(&d)));
        }
        if let Some(e) = r.get::<_, Option<String>>(14) {
            opts.push(format!("ELEMENT = {e}"));
        }
        let delim: String = r.get(12);
        if delim != "," {
            opts.push(format!("DELIMITER = {}", literal(&delim)));
        }
        if r.get::<_, bool>(13) {
            opts.push("COLLATABLE = true".into());
        }
        let mut o = SchemaObject::new(ObjectKind::Type, &nsp, &name, oid, format!("TYPE {q}"));
        o.create.push(format!(
            "CREATE TYPE {q} (\n    {}\n);",
            opts.join(",\n    ")
        ));
        o.owner = Some(format!("ALTER TYPE {q} OWNER TO {};", ident(&owner)).into());
        o.comments.extend(comment_on(
            comments,
            (class::PG_TYPE, oid, 0),
            &format!("TYPE {q}"),
        ));
        let i = m.add(o, &[(class::PG_TYPE, oid)]);
        let arr: u32 = r.get(31);
        if arr != 0 {
            m.alias((class::PG_TYPE, arr), i);
        }
        let mut funcs: Vec<u32> = (24..=30).map(|k| r.get::<_, u32>(k)).collect();
        if let Some(s) = r.get::<_, Option<u32>>(23) {
            funcs.push(s);
        }
        funcs.retain(|&f| f >= 16384);
        add_shell(m, oid, &nsp, &name, nsp_oid, &funcs);
    }
    // A shell type nothing ever defined (`CREATE TYPE x;` alone) is an
    // object of its own, with its owner and comment (pg_dump's
    // dumpUndefinedType).
    let sql = format!(
        "SELECT t.oid, n.nspname::text, t.typname::text, pg_catalog.pg_get_userbyid(t.typowner)::text
           FROM pg_catalog.pg_type t JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace
          WHERE t.typtype = 'p' AND t.oid >= 16384 AND {}",
        user_object(class::PG_TYPE, "t.oid")
    );
    for r in query(c, "shell types", &sql).await? {
        let (oid, nsp, name, owner): (u32, String, String, String) =
            (r.get(0), r.get(1), r.get(2), r.get(3));
        let q = qualified(&nsp, &name);
        let mut o = SchemaObject::new(ObjectKind::Type, &nsp, &name, oid, format!("TYPE {q}"));
        o.create.push(format!("CREATE TYPE {q};"));
        o.owner = Some(format!("ALTER TYPE {q} OWNER TO {};", ident(&owner)).into());
        o.comments.extend(comment_on(
            comments,
            (class::PG_TYPE, oid, 0),
            &format!("TYPE {q}"),
        ));
        m.add(o, &[(class::PG_TYPE, oid)]);
    }
    Ok(())
}

/// A range type whose canonical function takes the range itself is built
/// like a base type: shell type, function, then the range.
pub(super) async fn range_shells(c: &Catalog<'_>, m: &mut SchemaModel) -> Result<()> {
    let rows = query(
        c,
        "range canonical functions",
        "SELECT t.oid, n.nspname::text, t.typname::text, n.oid, r.rngcanonical::oid
           FROM pg_catalog.pg_range r JOIN pg_catalog.pg_type t ON t.oid = r.rngtypid
           JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace
          WHERE r.rngcanonical <> 0 AND r.rngcanonical::oid >= 16384 AND t.oid >= 16384",
    )
    .await?;
    let mut done: HashMap<u32, ()> = HashMap::new();
    for r in rows {
        let (oid, nsp, name, nsp_oid, f): (u32, String, String, u32, u32) =
            (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4));
        if !m.by_ref.contains_key(&(class::PG_TYPE, oid)) || done.insert(oid, ()).is_some() {
            continue;
        }
        add_shell(m, oid, &nsp, &name, nsp_oid, &[f]);
    }
    Ok(())
}

/// A CHECK constraint calling a function over its own table's row type is
/// the same loop; pg_dump's repair makes the CHECK a separate constraint,
/// added after the data.
pub(super) async fn split_row_type_checks(
    c: &Catalog<'_>,
    m: &mut SchemaModel,
    comments: &Comments,
) -> Result<()> {
    let rows = query(
        c,
        "checks over row types",
        &format!(
            "{} SELECT DISTINCT co.oid, co.conrelid, co.conname::text, pg_catalog.pg_get_constraintdef(co.oid)
           FROM pg_catalog.pg_constraint co
           JOIN pg_catalog.pg_class k ON k.oid = co.conrelid
           JOIN pg_catalog.pg_type rt ON rt.oid = k.reltype
           JOIN reach ON reach.src = co.oid
           JOIN pg_catalog.pg_depend fd ON fd.classid = 1255 AND fd.objid = reach.fn
                                        AND ((fd.refclassid = 1247 AND fd.refobjid IN (rt.oid, rt.typarray))
                                             OR (fd.refclassid = 1259 AND fd.refobjid = k.oid))
          WHERE co.contype = 'c' AND co.convalidated AND co.conislocal AND co.coninhcount = 0
            AND k.relkind = 'r' AND NOT k.relispartition
            AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_inherits i WHERE i.inhparent = k.oid)",
            reached_functions(class::PG_CONSTRAINT)
        ),
    )
    .await?;
    for r in rows {
        let (coid, rel, name, def): (u32, u32, String, String) =
            (r.get(0), r.get(1), r.get(2), r.get(3));
        let Some(&ti) = m.by_ref.get(&(class::PG_CLASS, rel)) else {
            continue;
        };
        let line = format!("    CONSTRAINT {} {def}", ident(&name));
        let Some(create) = m.objects[ti].create.first() else {
            continue;
        };
        let mut lines: Vec<String> = create.split('\n').map(str::to_string).collect();
        let Some(at) = lines
            .iter()
            .position(|l| l == &line || *l == format!("{line},"))
        else {
            continue;
        };
        let last = !lines[at].ends_with(',');
        lines.remove(at);
        if last && at > 0 {
            if let Some(prev) = lines[at - 1].strip_suffix(',') {
                lines[at - 1] = prev.to_string();
            }
        }
        m.objects[ti].create.set(0, lines.join("\n"));
        let t = &m.objects[ti];
        let q = t.describe.trim_start_matches("TABLE ").to_string();
        let (nsp, tname) = (t.key.namespace.clone(), t.key.name.clone());
        // The comment moves with the constraint.
        let what = format!("CONSTRAINT {} ON {q}", ident(&name));
        let comment = comment_on(comments, (class::PG_CONSTRAINT, coid, 0), &what);
        if let Some(cm) = &comment {
            m.objects[ti].comments.retain(|x| x != cm);
        }
        let mut o = SchemaObject::new(ObjectKind::Constraint, &nsp, &name, coid, what);
        o.key.tiebreak.push(tname.into());
        o.create.push(format!(
            "ALTER TABLE {q}\n    ADD CONSTRAINT {} {def};",
            ident(&name)
        ));
        o.comments.extend(comment);
        o.deps.push(ti);
        o.part_of.push(ti);
        let i = m.add(o, &[]);
        m.by_ref.insert((class::PG_CONSTRAINT, coid), i);
    }
    Ok(())
}
