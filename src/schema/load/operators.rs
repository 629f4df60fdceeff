//! Operators, operator families and operator classes, composed from
//! `pg_operator`, `pg_opfamily`, `pg_opclass`, `pg_amop` and `pg_amproc`
//! as pg_dump does. A family's members that no class owns (its "loose"
//! members, tied to the family in `pg_depend`) are added by
//! `ALTER OPERATOR FAMILY ... ADD`; a class's own members are listed in its
//! `CREATE OPERATOR CLASS`.

use std::collections::HashMap;

use super::pipeline::Catalog;
use tokio_postgres::Row;

use super::{comment_on, query, user_object, Comments};
use crate::error::Result;
use crate::pg::quote::{ident, qualified};
use crate::schema::model::{SchemaModel, SchemaObject};
use crate::schema::sort::ObjectKind;

pub(super) const PG_OPERATOR: u32 = 2617;
pub(super) const PG_OPFAMILY: u32 = 2753;
pub(super) const PG_OPCLASS: u32 = 2616;
pub(super) const PG_AMOP: u32 = 2602;
pub(super) const PG_AMPROC: u32 = 2603;

pub(super) async fn load_operators(
    c: &Catalog<'_>,
    m: &mut SchemaModel,
    comments: &Comments,
) -> Result<()> {
    let sql = format!(
        "SELECT o.oid, n.nspname::text, o.oprname::text, o.oid::pg_catalog.regoperator::text,
                pg_catalog.pg_get_userbyid(o.oprowner)::text, o.oprkind::text,
                CASE WHEN o.oprleft <> 0 THEN pg_catalog.format_type(o.oprleft, NULL) END,
                CASE WHEN o.oprright <> 0 THEN pg_catalog.format_type(o.oprright, NULL) END,
                o.oprcode::pg_catalog.regprocedure::text,
                CASE WHEN o.oprcom <> 0 THEN (SELECT pg_catalog.format('OPERATOR(%I.%s)', cn.nspname, co.oprname)
                     FROM pg_catalog.pg_operator co JOIN pg_catalog.pg_namespace cn ON cn.oid = co.oprnamespace WHERE co.oid = o.oprcom) END,
                CASE WHEN o.oprnegate <> 0 THEN (SELECT pg_catalog.format('OPERATOR(%I.%s)', cn.nspname, co.oprname)
                     FROM pg_catalog.pg_operator co JOIN pg_catalog.pg_namespace cn ON cn.oid = co.oprnamespace WHERE co.oid = o.oprnegate) END,
                NULLIF(o.oprrest, 0)::pg_catalog.regprocedure::text, NULLIF(o.oprjoin, 0)::pg_catalog.regprocedure::text,
                o.oprcanmerge, o.oprcanhash
           FROM pg_catalog.pg_operator o JOIN pg_catalog.pg_namespace n ON n.oid = o.oprnamespace
          WHERE o.oid >= 16384 AND o.oprcode <> 0 AND {}",
        user_object(PG_OPERATOR, "o.oid")
    );
    for r in query(c, "operators", &sql).await? {
        let (oid, nsp, name, sig, owner): (u32, String, String, String, String) =
            (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4));
        // regprocedure prints `f(integer,integer)`: FUNCTION wants the name.
        let bare = |s: String| s.split('(').next().unwrap_or(&s).to_string();
        let mut opts = vec![format!("FUNCTION = {}", bare(r.get(8)))];
        if let Some(t) = r.get::<_, Option<String>>(6) {
            opts.push(format!("LEFTARG = {t}"));
        }
        if let Some(t) = r.get::<_, Option<String>>(7) {
            opts.push(format!("RIGHTARG = {t}"));
        }
        if let Some(o) = r.get::<_, Option<String>>(9) {
            opts.push(format!("COMMUTATOR = {o}"));
        }
        if let Some(o) = r.get::<_, Option<String>>(10) {
            opts.push(format!("NEGATOR = {o}"));
        }
        if r.get::<_, bool>(13) {
            opts.push("MERGES".into());
        }
        if r.get::<_, bool>(14) {
            opts.push("HASHES".into());
        }
        if let Some(f) = r.get::<_, Option<String>>(11) {
            opts.push(format!("RESTRICT = {}", bare(f)));
        }
        if let Some(f) = r.get::<_, Option<String>>(12) {
            opts.push(format!("JOIN = {}", bare(f)));
        }
        let qname = format!("{}.{name}", ident(&nsp));
        let mut o = SchemaObject::new(
            ObjectKind::Operator,
            &nsp,
            &name,
            oid,
            format!("OPERATOR {sig}"),
        );
        o.key.tiebreak.push(sig.clone().into());
        o.create.push(format!(
            "CREATE OPERATOR {qname} (\n    {}\n);",
            opts.join(",\n    ")
        ));
        o.owner = Some(format!("ALTER OPERATOR {sig} OWNER TO {};", ident(&owner)).into());
        o.comments.extend(comment_on(
            comments,
            (PG_OPERATOR, oid, 0),
            &format!("OPERATOR {sig}"),
        ));
        m.add(o, &[(PG_OPERATOR, oid)]);
    }
    Ok(())
}

/// `OPERATOR n op(lt,rt) [FOR ORDER BY f]` for one pg_amop row of the query below.
fn amop_item(r: &Row) -> String {
    let mut s = format!("OPERATOR {} {}", r.get::<_, i16>(2), r.get::<_, String>(3));
    if let Some(f) = r.get::<_, Option<String>>(4) {
        s.push_str(&format!(" FOR ORDER BY {f}"));
    }
    s
}

/// `FUNCTION n (lt, rt) f(args)` for one pg_amproc row of the query below.
fn amproc_item(r: &Row) -> String {
    format!(
        "FUNCTION {} ({}, {}) {}",
        r.get::<_, i16>(2),
        r.get::<_, String>(3),
        r.get::<_, String>(4),
        r.get::<_, String>(5)
    )
}

pub(super) async fn load_opfamilies_and_classes(
    c: &Catalog<'_>,
    m: &mut SchemaModel,
    comments: &Comments,
) -> Result<()> {
    // Members, each with what owns it in pg_depend: a class or a family.
    let amops = query(
        c,
        "operator family operators",
        "SELECT d.refclassid, d.refobjid, ao.amopstrategy, ao.amopopr::pg_catalog.regoperator::text,
                (SELECT pg_catalog.format('%I.%I', sn.nspname, sf.opfname) FROM pg_catalog.pg_opfamily sf
                   JOIN pg_catalog.pg_namespace sn ON sn.oid = sf.opfnamespace WHERE sf.oid = ao.amopsortfamily),
                ao.oid
           FROM pg_catalog.pg_amop ao JOIN pg_catalog.pg_depend d ON d.classid = 2602 AND d.objid = ao.oid
          WHERE d.refclassid IN (2616, 2753) AND d.deptype IN ('a', 'i') AND ao.amopfamily >= 16384
          ORDER BY d.refobjid, ao.amopstrategy, ao.amoplefttype, ao.amoprighttype",
    )
    .await?;
    let amprocs = query(
        c,
        "operator family functions",
        "SELECT d.refclassid, d.refobjid, ap.amprocnum, pg_catalog.format_type(ap.amproclefttype, NULL),
                pg_catalog.format_type(ap.amprocrighttype, NULL), ap.amproc::pg_catalog.regprocedure::text, ap.oid
           FROM pg_catalog.pg_amproc ap JOIN pg_catalog.pg_depend d ON d.classid = 2603 AND d.objid = ap.oid
          WHERE d.refclassid IN (2616, 2753) AND d.deptype IN ('a', 'i') AND ap.amprocfamily >= 16384
          ORDER BY d.refobjid, ap.amproclefttype, ap.amprocrighttype, ap.amprocnum",
    )
    .await?;
    let mut ops_of: HashMap<(u32, u32), Vec<&Row>> = HashMap::new();
    for r in &amops {
        ops_of.entry((r.get(0), r.get(1))).or_default().push(r);
    }
    let mut procs_of: HashMap<(u32, u32), Vec<&Row>> = HashMap::new();
    for r in &amprocs {
        procs_of.entry((r.get(0), r.get(1))).or_default().push(r);
    }
    let sql = format!(
        "SELECT f.oid, n.nspname::text, f.opfname::text, a.amname::text, pg_catalog.pg_get_userbyid(f.opfowner)::text
           FROM pg_catalog.pg_opfamily f JOIN pg_catalog.pg_namespace n ON n.oid = f.opfnamespace
           JOIN pg_catalog.pg_am a ON a.oid = f.opfmethod
          WHERE f.oid >= 16384 AND {}",
        user_object(PG_OPFAMILY, "f.oid")
    );
    for r in query(c, "operator families", &sql).await? {
        let (oid, nsp, name, am, owner): (u32, String, String, String, String) =
            (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4));
        let what = format!(
            "OPERATOR FAMILY {} USING {}",
            qualified(&nsp, &name),
            ident(&am)
        );
        let mut o = SchemaObject::new(ObjectKind::OpFamily, &nsp, &name, oid, what.clone());
        o.key.tiebreak.push(am.clone().into());
        o.create.push(format!("CREATE {what};"));
        let ops = ops_of.get(&(PG_OPFAMILY, oid)).cloned().unwrap_or_default();
        let procs = procs_of
            .get(&(PG_OPFAMILY, oid))
            .cloned()
            .unwrap_or_default();
        let items: Vec<String> = ops
            .iter()
            .map(|r| amop_item(r))
            .chain(procs.iter().map(|r| amproc_item(r)))
            .collect();
        if !items.is_empty() {
            o.create
                .push(format!("ALTER {what} ADD\n    {};", items.join(",\n    ")));
        }
        o.owner = Some(format!("ALTER {what} OWNER TO {};", ident(&owner)).into());
        o.comments
            .extend(comment_on(comments, (PG_OPFAMILY, oid, 0), &what));
        let i = m.add(o, &[(PG_OPFAMILY, oid)]);
        for r in &ops {
            m.alias((PG_AMOP, r.get(5)), i);
        }
        for r in &procs {
            m.alias((PG_AMPROC, r.get(6)), i);
        }
    }
    let sql = format!(
        "SELECT oc.oid, n.nspname::text, oc.opcname::text, a.amname::text, pg_catalog.pg_get_userbyid(oc.opcowner)::text,
                oc.opcdefault, pg_catalog.format_type(oc.opcintype, NULL),
                CASE WHEN oc.opckeytype <> 0 THEN pg_catalog.format_type(oc.opckeytype, NULL) END,
                CASE WHEN f.opfname <> oc.opcname OR f.opfnamespace <> oc.opcnamespace
                     THEN pg_catalog.format('%I.%I', fn.nspname, f.opfname) END
           FROM pg_catalog.pg_opclass oc JOIN pg_catalog.pg_namespace n ON n.oid = oc.opcnamespace
           JOIN pg_catalog.pg_am a ON a.oid = oc.opcmethod
           JOIN pg_catalog.pg_opfamily f ON f.oid = oc.opcfamily
           JOIN pg_catalog.pg_namespace fn ON fn.oid = f.opfnamespace
          WHERE oc.oid >= 16384 AND {}",
        user_object(PG_OPCLASS, "oc.oid")
    );
    for r in query(c, "operator classes", &sql).await? {
        let (oid, nsp, name, am, owner): (u32, String, String, String, String) =
            (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4));
        let q = qualified(&nsp, &name);
        let what = format!("OPERATOR CLASS {q} USING {}", ident(&am));
        let mut s = format!("CREATE OPERATOR CLASS {q}\n    ");
        if r.get::<_, bool>(5) {
            s.push_str("DEFAULT ");
        }
        s.push_str(&format!(
            "FOR TYPE {} USING {}",
            r.get::<_, String>(6),
            ident(&am)
        ));
        if let Some(f) = r.get::<_, Option<String>>(8) {
            s.push_str(&format!(" FAMILY {f}"));
        }
        let ops = ops_of.get(&(PG_OPCLASS, oid)).cloned().unwrap_or_default();
        let procs = procs_of
            .get(&(PG_OPCLASS, oid))
            .cloned()
            .unwrap_or_default();
        let mut items: Vec<String> = Vec::new();
        if let Some(k) = r.get::<_, Option<String>>(7) {
            items.push(format!("STORAGE {k}"));
        }
        items.extend(ops.iter().map(|r| amop_item(r)));
        items.extend(procs.iter().map(|r| amproc_item(r)));
        if items.is_empty() {
            // The grammar wants one item; pg_dump prints the storage type.
            items.push(format!("STORAGE {}", r.get::<_, String>(6)));
        }
        s.push_str(&format!(" AS\n    {};", items.join(",\n    ")));
        let mut o = SchemaObject::new(ObjectKind::OpClass, &nsp, &name, oid, what.clone());
        o.key.tiebreak.push(am.clone().into());
        o.create.push(s);
        o.owner = Some(format!("ALTER {what} OWNER TO {};", ident(&owner)).into());
        o.comments
            .extend(comment_on(comments, (PG_OPCLASS, oid, 0), &what));
        let i = m.add(o, &[(PG_OPCLASS, oid)]);
        for r in &ops {
            m.alias((PG_AMOP, r.get(5)), i);
        }
        for r in &procs {
            m.alias((PG_AMPROC, r.get(6)), i);
        }
    }
    Ok(())
}
