//! Casts, conversions, transforms, procedural languages that are not
//! extensions, access methods, and the table access method of tables and
//! materialized views that do not use heap.

use super::pipeline::Catalog;

use super::{baseline_sql, comment_on, query, user_object, Comments};
use crate::error::Result;
use crate::pg::quote::{ident, literal, qualified};
use crate::schema::acl::{build_acl_commands, AclObjectKind};
use crate::schema::model::{class, SchemaModel, SchemaObject};
use crate::schema::sort::ObjectKind;

const PG_CAST: u32 = 2605;
const PG_CONVERSION: u32 = 2607;
const PG_TRANSFORM: u32 = 3576;
const PG_LANGUAGE: u32 = 2612;
const PG_AM: u32 = 2601;

/// Not an extension member (catalog `cls`, oid expression `oid`).
fn not_member(cls: u32, oid: &str) -> String {
    format!(
        "NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend e WHERE e.classid = {cls} AND e.objid = {oid} AND e.deptype = 'e')"
    )
}

pub(super) async fn load_casts(
    c: &Catalog<'_>,
    m: &mut SchemaModel,
    comments: &Comments,
) -> Result<()> {
    // Casts PostgreSQL makes itself (a range's multirange casts) are internal.
    let sql = format!(
        "SELECT c.oid, pg_catalog.format_type(c.castsource, NULL), pg_catalog.format_type(c.casttarget, NULL),
                c.castmethod::text, c.castcontext::text,
                CASE WHEN c.castfunc <> 0 THEN c.castfunc::pg_catalog.regprocedure::text END
           FROM pg_catalog.pg_cast c
          WHERE c.oid >= 16384 AND {}
            AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend i WHERE i.classid = {PG_CAST} AND i.objid = c.oid AND i.deptype = 'i')",
        not_member(PG_CAST, "c.oid")
    );
    let needed = casts_needed_by_casts(c).await?;
    for r in query(c, "casts", &sql).await? {
        let (oid, src, dst, method, context): (u32, String, String, String, String) =
            (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4));
        let what = format!("CAST ({src} AS {dst})");
        let how = match (method.as_str(), r.get::<_, Option<String>>(5)) {
            ("i", _) => "WITH INOUT".to_string(),
            (_, Some(f)) => format!("WITH FUNCTION {f}"),
            _ => "WITHOUT FUNCTION".to_string(),
        };
        let ctx = match context.as_str() {
            "a" => " AS ASSIGNMENT",
            "i" => " AS IMPLICIT",
            _ => "",
        };
        let mut o = SchemaObject::new(
            ObjectKind::Cast,
            "",
            &format!("{src} {dst}"),
            oid,
            what.clone(),
        );
        o.create.push(format!("CREATE {what} {how}{ctx};"));
        o.comments
            .extend(comment_on(comments, (PG_CAST, oid, 0), &what));
        o.needs.extend(
            needed
                .get(&oid)
                .into_iter()
                .flatten()
                .map(|&b| (PG_CAST, b)),
        );
        m.add(o, &[(PG_CAST, oid)]);
    }
    Ok(())
}

/// The binary-coercible casts each function cast needs first, by cast.
/// `CREATE CAST ... WITH FUNCTION f` checks that the source type (a domain
/// taken as its base type) is f's argument type or binary-coercible to it,
/// and that f's result type (likewise) is the target type or
/// binary-coercible to it; binary-coercible means an implicit `WITHOUT
/// FUNCTION` cast between the two (parse_coerce.c's IsBinaryCoercible).
/// Before PostgreSQL 18 nothing records that dependency in pg_depend.
async fn casts_needed_by_casts(
    c: &Catalog<'_>,
) -> Result<std::collections::HashMap<u32, Vec<u32>>> {
    let base = |t: &str| {
        format!(
            "(WITH RECURSIVE d(t) AS (SELECT {t} UNION ALL
                  SELECT ty.typbasetype FROM pg_catalog.pg_type ty JOIN d ON ty.oid = d.t WHERE ty.typtype = 'd')
              SELECT d.t FROM d JOIN pg_catalog.pg_type ty ON ty.oid = d.t WHERE ty.typtype <> 'd')"
        )
    };
    let sql = format!(
        "SELECT c.oid, b.oid
           FROM pg_catalog.pg_cast c JOIN pg_catalog.pg_proc p ON p.oid = c.castfunc
           JOIN pg_catalog.pg_cast b ON b.castmethod = 'b' AND b.castcontext = 'i' AND b.oid <> c.oid
          WHERE c.oid >= 16384
            AND ((p.prorettype <> c.casttarget AND b.castsource = {} AND b.casttarget = c.casttarget)
              OR (c.castsource <> p.proargtypes[0] AND b.castsource = {} AND b.casttarget = p.proargtypes[0]))",
        base("p.prorettype"),
        base("c.castsource")
    );
    let mut out: std::collections::HashMap<u32, Vec<u32>> = Default::default();
    for r in query(c, "the casts casts rely on", &sql).await? {
        out.entry(r.get(0)).or_default().push(r.get(1));
    }
    Ok(out)
}

pub(super) async fn load_conversions(
    c: &Catalog<'_>,
    m: &mut SchemaModel,
    comments: &Comments,
) -> Result<()> {
    let sql = format!(
        "SELECT co.oid, n.nspname::text, co.conname::text, pg_catalog.pg_get_userbyid(co.conowner)::text,
                pg_catalog.pg_encoding_to_char(co.conforencoding)::text, pg_catalog.pg_encoding_to_char(co.contoencoding)::text,
                co.conproc::pg_catalog.regproc::text, co.condefault
           FROM pg_catalog.pg_conversion co JOIN pg_catalog.pg_namespace n ON n.oid = co.connamespace
          WHERE co.oid >= 16384 AND {}",
        user_object(PG_CONVERSION, "co.oid")
    );
    for r in query(c, "conversions", &sql).await? {
        let (oid, nsp, name, owner, from, to, proc, default): (
            u32,
            String,
            String,
            String,
            String,
            String,
            String,
            bool,
        ) = (
            r.get(0),
            r.get(1),
            r.get(2),
            r.get(3),
            r.get(4),
            r.get(5),
            r.get(6),
            r.get(7),
        );
        let q = qualified(&nsp, &name);
        let mut o = SchemaObject::new(
            ObjectKind::Conversion,
            &nsp,
            &name,
            oid,
            format!("CONVERSION {q}"),
        );
        o.create.push(format!(
            "CREATE {}CONVERSION {q} FOR {} TO {} FROM {proc};",
            if default { "DEFAULT " } else { "" },
            literal(&from),
            literal(&to)
        ));
        o.owner = Some(format!("ALTER CONVERSION {q} OWNER TO {};", ident(&owner)).into());
        o.comments.extend(comment_on(
            comments,
            (PG_CONVERSION, oid, 0),
            &format!("CONVERSION {q}"),
        ));
        m.add(o, &[(PG_CONVERSION, oid)]);
    }
    Ok(())
}

pub(super) async fn load_transforms(
    c: &Catalog<'_>,
    m: &mut SchemaModel,
    comments: &Comments,
) -> Result<()> {
    let sql = format!(
        "SELECT t.oid, pg_catalog.format_type(t.trftype, NULL), l.lanname::text,
                CASE WHEN t.trffromsql <> 0 THEN t.trffromsql::pg_catalog.regprocedure::text END,
                CASE WHEN t.trftosql <> 0 THEN t.trftosql::pg_catalog.regprocedure::text END
           FROM pg_catalog.pg_transform t JOIN pg_catalog.pg_language l ON l.oid = t.trflang
          WHERE t.oid >= 16384 AND {}",
        not_member(PG_TRANSFORM, "t.oid")
    );
    for r in query(c, "transforms", &sql).await? {
        let (oid, ty, lang): (u32, String, String) = (r.get(0), r.get(1), r.get(2));
        let what = format!("TRANSFORM FOR {ty} LANGUAGE {}", ident(&lang));
        let mut parts = Vec::new();
        if let Some(f) = r.get::<_, Option<String>>(3) {
            parts.push(format!("FROM SQL WITH FUNCTION {f}"));
        }
        if let Some(f) = r.get::<_, Option<String>>(4) {
            parts.push(format!("TO SQL WITH FUNCTION {f}"));
        }
        let mut o = SchemaObject::new(
            ObjectKind::Transform,
            "",
            &format!("{ty} {lang}"),
            oid,
            what.clone(),
        );
        o.create
            .push(format!("CREATE {what} ({});", parts.join(", ")));
        o.comments
            .extend(comment_on(comments, (PG_TRANSFORM, oid, 0), &what));
        m.add(o, &[(PG_TRANSFORM, oid)]);
    }
    Ok(())
}

pub(super) async fn load_languages(
    c: &Catalog<'_>,
    m: &mut SchemaModel,
    comments: &Comments,
    major: u32,
) -> Result<()> {
    let sql = format!(
        "SELECT l.oid, l.lanname::text, pg_catalog.pg_get_userbyid(l.lanowner)::text, l.lanpltrusted,
                l.lanplcallfoid::pg_catalog.regproc::text,
                CASE WHEN l.laninline <> 0 THEN l.laninline::pg_catalog.regproc::text END,
                CASE WHEN l.lanvalidator <> 0 THEN l.lanvalidator::pg_catalog.regproc::text END,
                l.lanacl::text, {}
           FROM pg_catalog.pg_language l
          WHERE l.lanispl AND l.oid >= 16384 AND {}",
        baseline_sql(PG_LANGUAGE, "l.oid", 'l', "l.lanowner"),
        not_member(PG_LANGUAGE, "l.oid")
    );
    for r in query(c, "procedural languages", &sql).await? {
        let (oid, name, owner, trusted, handler): (u32, String, String, bool, String) =
            (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4));
        let q = ident(&name);
        let mut s = format!(
            "CREATE {}PROCEDURAL LANGUAGE {q} HANDLER {handler}",
            if trusted { "TRUSTED " } else { "" }
        );
        if let Some(f) = r.get::<_, Option<String>>(5) {
            s.push_str(&format!(" INLINE {f}"));
        }
        if let Some(f) = r.get::<_, Option<String>>(6) {
            s.push_str(&format!(" VALIDATOR {f}"));
        }
        s.push(';');
        let mut o = SchemaObject::new(
            ObjectKind::ProcLang,
            "",
            &name,
            oid,
            format!("LANGUAGE {q}"),
        );
        o.create.push(s);
        o.owner = Some(format!("ALTER LANGUAGE {q} OWNER TO {};", ident(&owner)).into());
        o.comments.extend(comment_on(
            comments,
            (PG_LANGUAGE, oid, 0),
            &format!("LANGUAGE {q}"),
        ));
        let acl: Option<String> = r.get(7);
        let base: String = r.get(8);
        o.acl = build_acl_commands(
            AclObjectKind::Language,
            &format!("LANGUAGE {q}"),
            None,
            acl.as_deref(),
            &base,
            &owner,
            major,
        )?
        .into();
        m.add(o, &[(PG_LANGUAGE, oid)]);
    }
    Ok(())
}

pub(super) async fn load_access_methods(
    c: &Catalog<'_>,
    m: &mut SchemaModel,
    comments: &Comments,
) -> Result<()> {
    let sql = format!(
        "SELECT a.oid, a.amname::text, a.amtype::text, a.amhandler::pg_catalog.regproc::text
           FROM pg_catalog.pg_am a WHERE a.oid >= 16384 AND {}",
        not_member(PG_AM, "a.oid")
    );
    for r in query(c, "access methods", &sql).await? {
        let (oid, name, kind, handler): (u32, String, String, String) =
            (r.get(0), r.get(1), r.get(2), r.get(3));
        let q = ident(&name);
        let ty = if kind == "t" { "TABLE" } else { "INDEX" };
        let mut o = SchemaObject::new(
            ObjectKind::AccessMethod,
            "",
            &name,
            oid,
            format!("ACCESS METHOD {q}"),
        );
        o.create.push(format!(
            "CREATE ACCESS METHOD {q} TYPE {ty} HANDLER {handler};"
        ));
        o.comments.extend(comment_on(
            comments,
            (PG_AM, oid, 0),
            &format!("ACCESS METHOD {q}"),
        ));
        m.add(o, &[(PG_AM, oid)]);
    }
    Ok(())
}

/// Tables and materialized views on another table access method than heap
/// are created with that method as the default, as pg_dump's scripts do;
/// a partitioned table (PostgreSQL 17) does not take the default and gets
/// `ALTER TABLE ... SET ACCESS METHOD`, as pg_dump 17 prints it.
pub(super) async fn table_access_methods(c: &Catalog<'_>, m: &mut SchemaModel) -> Result<()> {
    let rows = query(
        c,
        "table access methods",
        "SELECT c.oid, a.oid, a.amname::text, c.relkind::text,
                pg_catalog.format('%I.%I', n.nspname, c.relname)
           FROM pg_catalog.pg_class c JOIN pg_catalog.pg_am a ON a.oid = c.relam
           JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
          WHERE c.relkind IN ('r', 'p', 'm') AND a.amtype = 't' AND a.amname <> 'heap'",
    )
    .await?;
    for r in rows {
        let (rel, am, name, kind, q): (u32, u32, String, String, String) =
            (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4));
        let Some(&i) = m.by_ref.get(&(class::PG_CLASS, rel)) else {
            continue;
        };
        let o = &mut m.objects[i];
        if o.create.is_empty() {
            continue;
        }
        if kind == "p" {
            o.create.insert(
                1,
                format!("ALTER TABLE {q} SET ACCESS METHOD {};", ident(&name)),
            );
        } else {
            o.create.insert(
                0,
                format!("SET default_table_access_method = {};", ident(&name)),
            );
            o.create
                .insert(2, "SET default_table_access_method = heap;");
        }
        o.needs.push((PG_AM, am));
    }
    Ok(())
}
