//! Ordered-set and hypothetical-set aggregates (`CREATE AGGREGATE
//! x(direct args ORDER BY aggregated args)`), composed from `pg_aggregate`
//! like the plain ones in `load_aggregates`.

use super::pipeline::Catalog;

use super::{comment_on, query, user_object, Comments};
use crate::error::Result;
use crate::pg::quote::{ident, literal, qualified};
use crate::schema::model::{class, SchemaModel, SchemaObject};
use crate::schema::sort::ObjectKind;

fn modify(v: &str) -> &'static str {
    match v {
        "s" => "SHAREABLE",
        "w" => "READ_WRITE",
        _ => "READ_ONLY",
    }
}

pub(super) async fn load_ordered_set_aggregates(
    c: &Catalog<'_>,
    m: &mut SchemaModel,
    comments: &Comments,
) -> Result<()> {
    let sql = format!(
        "SELECT p.oid, n.nspname::text, p.proname::text, pg_catalog.pg_get_function_identity_arguments(p.oid),
                pg_catalog.pg_get_userbyid(p.proowner)::text, a.aggkind::text,
                a.aggtransfn::pg_catalog.regproc::text, pg_catalog.format_type(a.aggtranstype, NULL), a.aggtransspace,
                NULLIF(a.aggfinalfn, 0)::pg_catalog.regproc::text, a.aggfinalextra, a.aggfinalmodify::text,
                NULLIF(a.aggcombinefn, 0)::pg_catalog.regproc::text, NULLIF(a.aggserialfn, 0)::pg_catalog.regproc::text,
                NULLIF(a.aggdeserialfn, 0)::pg_catalog.regproc::text, a.agginitval, p.proparallel::text
           FROM pg_catalog.pg_aggregate a JOIN pg_catalog.pg_proc p ON p.oid = a.aggfnoid
           JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
          WHERE a.aggkind IN ('o', 'h') AND {}",
        user_object(class::PG_PROC, "p.oid")
    );
    for r in query(c, "ordered-set aggregates", &sql).await? {
        let (oid, nsp, name, args, owner, kind): (u32, String, String, String, String, String) =
            (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5));
        let sig = format!("{}({args})", qualified(&nsp, &name));
        let mut opts = vec![
            format!("SFUNC = {}", r.get::<_, String>(6)),
            format!("STYPE = {}", r.get::<_, String>(7)),
        ];
        let sspace: i32 = r.get(8);
        if sspace != 0 {
            opts.push(format!("SSPACE = {sspace}"));
        }
        if let Some(v) = r.get::<_, Option<String>>(15) {
            opts.push(format!("INITCOND = {}", literal(&v)));
        }
        if let Some(f) = r.get::<_, Option<String>>(9) {
            opts.push(format!("FINALFUNC = {f}"));
            if r.get::<_, bool>(10) {
                opts.push("FINALFUNC_EXTRA".into());
            }
            opts.push(format!(
                "FINALFUNC_MODIFY = {}",
                modify(&r.get::<_, String>(11))
            ));
        }
        for (i, key) in [
            (12, "COMBINEFUNC"),
            (13, "SERIALFUNC"),
            (14, "DESERIALFUNC"),
        ] {
            if let Some(f) = r.get::<_, Option<String>>(i) {
                opts.push(format!("{key} = {f}"));
            }
        }
        match r.get::<_, String>(16).as_str() {
            "s" => opts.push("PARALLEL = safe".into()),
            "r" => opts.push("PARALLEL = restricted".into()),
            _ => {}
        }
        if kind == "h" {
            opts.push("HYPOTHETICAL".into());
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
