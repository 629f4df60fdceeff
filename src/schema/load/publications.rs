//! Publications, as pg_dump's dumpPublication / dumpPublicationTable /
//! dumpPublicationNamespace print them: the publication with its `publish`
//! list, then each table (`ONLY`, column list, row filter) and each schema
//! added to it after the data. An online migration's own publication
//! (`pg_dbmigrator_...`) is never reproduced.

use super::pipeline::Catalog;

use super::{comment_on, query, Comments};
use crate::error::Result;
use crate::pg::quote::{ident, qualified};
use crate::schema::model::{class, SchemaModel, SchemaObject};
use crate::schema::sort::ObjectKind;

const PG_PUBLICATION: u32 = 6104;
const PG_PUBLICATION_REL: u32 = 6106;
const PG_PUBLICATION_NAMESPACE: u32 = 6237;

const OURS: &str = "p.pubname NOT LIKE 'pg\\_dbmigrator\\_%'";

pub(super) async fn load_publications(
    c: &Catalog<'_>,
    m: &mut SchemaModel,
    comments: &Comments,
    major: u32,
) -> Result<()> {
    let via_root = if major >= 13 { "p.pubviaroot" } else { "false" };
    let sql = format!(
        "SELECT p.oid, p.pubname::text, pg_catalog.pg_get_userbyid(p.pubowner)::text, p.puballtables,
                p.pubinsert, p.pubupdate, p.pubdelete, p.pubtruncate, {via_root}
           FROM pg_catalog.pg_publication p WHERE {OURS} ORDER BY 2"
    );
    let mut pubs = Vec::new();
    for r in query(c, "publications", &sql).await? {
        let (oid, name, owner): (u32, String, String) = (r.get(0), r.get(1), r.get(2));
        let q = ident(&name);
        let mut s = format!("CREATE PUBLICATION {q}");
        if r.get::<_, bool>(3) {
            s.push_str(" FOR ALL TABLES");
        }
        let publish: Vec<&str> = [(4, "insert"), (5, "update"), (6, "delete"), (7, "truncate")]
            .iter()
            .filter(|(i, _)| r.get::<_, bool>(*i))
            .map(|(_, w)| *w)
            .collect();
        s.push_str(&format!(" WITH (publish = '{}'", publish.join(", ")));
        if r.get::<_, bool>(8) {
            s.push_str(", publish_via_partition_root = true");
        }
        s.push_str(");");
        let what = format!("PUBLICATION {q}");
        let mut o = SchemaObject::new(ObjectKind::Publication, "", &name, oid, what.clone());
        o.create.push(s);
        o.owner = Some(format!("ALTER {what} OWNER TO {};", ident(&owner)).into());
        o.comments
            .extend(comment_on(comments, (PG_PUBLICATION, oid, 0), &what));
        let i = m.add(o, &[(PG_PUBLICATION, oid)]);
        pubs.push((oid, name, i));
    }
    if pubs.is_empty() {
        return Ok(());
    }

    // Tables, with their column lists and row filters (PostgreSQL 15).
    let (attrs, qual) = if major >= 15 {
        (
            "(SELECT pg_catalog.string_agg(pg_catalog.quote_ident(a.attname), ', ' ORDER BY u.ord)
                FROM pg_catalog.unnest(pr.prattrs::pg_catalog.int2[]) WITH ORDINALITY AS u(n, ord)
                JOIN pg_catalog.pg_attribute a ON a.attrelid = pr.prrelid AND a.attnum = u.n)",
            "pg_catalog.pg_get_expr(pr.prqual, pr.prrelid)",
        )
    } else {
        ("NULL::text", "NULL::text")
    };
    let sql = format!(
        "SELECT pr.oid, pr.prpubid, pr.prrelid, n.nspname::text, k.relname::text, {attrs}, {qual}
           FROM pg_catalog.pg_publication_rel pr JOIN pg_catalog.pg_publication p ON p.oid = pr.prpubid
           JOIN pg_catalog.pg_class k ON k.oid = pr.prrelid JOIN pg_catalog.pg_namespace n ON n.oid = k.relnamespace
          WHERE {OURS} ORDER BY 4, 5"
    );
    for r in query(c, "publication tables", &sql).await? {
        let (oid, pubid, relid, nsp, rel): (u32, u32, u32, String, String) =
            (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4));
        let Some((_, pubname, pi)) = pubs.iter().find(|p| p.0 == pubid) else {
            continue;
        };
        let t = qualified(&nsp, &rel);
        let mut s = format!("ALTER PUBLICATION {} ADD TABLE ONLY {t}", ident(pubname));
        if let Some(cols) = r.get::<_, Option<String>>(5) {
            s.push_str(&format!(" ({cols})"));
        }
        if let Some(w) = r.get::<_, Option<String>>(6) {
            s.push_str(&format!(" WHERE ({w})"));
        }
        s.push(';');
        let mut o = SchemaObject::new(
            ObjectKind::PublicationRel,
            &nsp,
            &rel,
            oid,
            format!("PUBLICATION TABLE {} {t}", ident(pubname)),
        );
        o.key.tiebreak.push(pubname.clone().into());
        o.create.push(s);
        o.deps.push(*pi);
        o.part_of.push(*pi);
        if let Some(&t) = m.by_ref.get(&(class::PG_CLASS, relid)) {
            o.part_of.push(t);
        }
        o.needs.push((class::PG_CLASS, relid));
        m.add(o, &[(PG_PUBLICATION_REL, oid)]);
    }

    if major >= 15 {
        let sql = format!(
            "SELECT pn.oid, pn.pnpubid, pn.pnnspid, n.nspname::text
               FROM pg_catalog.pg_publication_namespace pn JOIN pg_catalog.pg_publication p ON p.oid = pn.pnpubid
               JOIN pg_catalog.pg_namespace n ON n.oid = pn.pnnspid
              WHERE {OURS} ORDER BY 4"
        );
        for r in query(c, "publication schemas", &sql).await? {
            let (oid, pubid, nspid, nsp): (u32, u32, u32, String) =
                (r.get(0), r.get(1), r.get(2), r.get(3));
            let Some((_, pubname, pi)) = pubs.iter().find(|p| p.0 == pubid) else {
                continue;
            };
            let mut o = SchemaObject::new(
                ObjectKind::PublicationTableInSchema,
                &nsp,
                pubname,
                oid,
                format!(
                    "PUBLICATION TABLES IN SCHEMA {} {}",
                    ident(pubname),
                    ident(&nsp)
                ),
            );
            o.create.push(format!(
                "ALTER PUBLICATION {} ADD TABLES IN SCHEMA {};",
                ident(pubname),
                ident(&nsp)
            ));
            o.deps.push(*pi);
            o.part_of.push(*pi);
            if let Some(&n) = m.by_ref.get(&(class::PG_NAMESPACE, nspid)) {
                o.part_of.push(n);
            }
            o.needs.push((class::PG_NAMESPACE, nspid));
            m.add(o, &[(PG_PUBLICATION_NAMESPACE, oid)]);
        }
    }
    Ok(())
}
