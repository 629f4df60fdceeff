//! Text search parsers, templates, dictionaries and configurations, as
//! pg_dump's dumpTSParser / dumpTSTemplate / dumpTSDictionary / dumpTSConfig
//! print them: parsers and templates have no owner (superuser objects);
//! dictionaries carry their init options; a configuration is created with its
//! parser, then every token mapping is added.

use std::collections::BTreeMap;

use super::pipeline::Catalog;

use super::{comment_on, query, user_object, Comments};
use crate::error::Result;
use crate::pg::quote::{ident, qualified};
use crate::schema::model::{SchemaModel, SchemaObject};
use crate::schema::sort::ObjectKind;

const PG_TS_DICT: u32 = 3600;
const PG_TS_PARSER: u32 = 3601;
const PG_TS_CONFIG: u32 = 3602;
const PG_TS_TEMPLATE: u32 = 3764;

pub(super) async fn load_text_search(
    c: &Catalog<'_>,
    m: &mut SchemaModel,
    comments: &Comments,
) -> Result<()> {
    // Parsers.
    let sql = format!(
        "SELECT p.oid, n.nspname::text, p.prsname::text, p.prsstart::pg_catalog.regproc::text,
                p.prstoken::pg_catalog.regproc::text, p.prsend::pg_catalog.regproc::text,
                NULLIF(p.prsheadline, 0)::pg_catalog.regproc::text, p.prslextype::pg_catalog.regproc::text
           FROM pg_catalog.pg_ts_parser p JOIN pg_catalog.pg_namespace n ON n.oid = p.prsnamespace
          WHERE {} ORDER BY 2, 3",
        user_object(PG_TS_PARSER, "p.oid")
    );
    for r in query(c, "text search parsers", &sql).await? {
        let (oid, nsp, name): (u32, String, String) = (r.get(0), r.get(1), r.get(2));
        let q = qualified(&nsp, &name);
        let mut opts = vec![
            format!("START = {}", r.get::<_, String>(3)),
            format!("GETTOKEN = {}", r.get::<_, String>(4)),
            format!("END = {}", r.get::<_, String>(5)),
        ];
        if let Some(h) = r.get::<_, Option<String>>(6) {
            opts.push(format!("HEADLINE = {h}"));
        }
        opts.push(format!("LEXTYPES = {}", r.get::<_, String>(7)));
        let what = format!("TEXT SEARCH PARSER {q}");
        let mut o = SchemaObject::new(ObjectKind::TsParser, &nsp, &name, oid, what.clone());
        o.create.push(format!(
            "CREATE TEXT SEARCH PARSER {q} (\n    {} );",
            opts.join(",\n    ")
        ));
        o.comments
            .extend(comment_on(comments, (PG_TS_PARSER, oid, 0), &what));
        m.add(o, &[(PG_TS_PARSER, oid)]);
    }

    // Templates.
    let sql = format!(
        "SELECT t.oid, n.nspname::text, t.tmplname::text, NULLIF(t.tmplinit, 0)::pg_catalog.regproc::text,
                t.tmpllexize::pg_catalog.regproc::text
           FROM pg_catalog.pg_ts_template t JOIN pg_catalog.pg_namespace n ON n.oid = t.tmplnamespace
          WHERE {} ORDER BY 2, 3",
        user_object(PG_TS_TEMPLATE, "t.oid")
    );
    for r in query(c, "text search templates", &sql).await? {
        let (oid, nsp, name): (u32, String, String) = (r.get(0), r.get(1), r.get(2));
        let q = qualified(&nsp, &name);
        let mut opts = Vec::new();
        if let Some(i) = r.get::<_, Option<String>>(3) {
            opts.push(format!("INIT = {i}"));
        }
        opts.push(format!("LEXIZE = {}", r.get::<_, String>(4)));
        let what = format!("TEXT SEARCH TEMPLATE {q}");
        let mut o = SchemaObject::new(ObjectKind::TsTemplate, &nsp, &name, oid, what.clone());
        o.create.push(format!(
            "CREATE TEXT SEARCH TEMPLATE {q} (\n    {} );",
            opts.join(",\n    ")
        ));
        o.comments
            .extend(comment_on(comments, (PG_TS_TEMPLATE, oid, 0), &what));
        m.add(o, &[(PG_TS_TEMPLATE, oid)]);
    }

    // Dictionaries.
    let sql = format!(
        "SELECT d.oid, n.nspname::text, d.dictname::text, pg_catalog.pg_get_userbyid(d.dictowner)::text,
                pg_catalog.format('%I.%I', tn.nspname, t.tmplname), d.dictinitoption
           FROM pg_catalog.pg_ts_dict d JOIN pg_catalog.pg_namespace n ON n.oid = d.dictnamespace
           JOIN pg_catalog.pg_ts_template t ON t.oid = d.dicttemplate
           JOIN pg_catalog.pg_namespace tn ON tn.oid = t.tmplnamespace
          WHERE {} ORDER BY 2, 3",
        user_object(PG_TS_DICT, "d.oid")
    );
    for r in query(c, "text search dictionaries", &sql).await? {
        let (oid, nsp, name, owner, tmpl): (u32, String, String, String, String) =
            (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4));
        let q = qualified(&nsp, &name);
        let mut body = format!("    TEMPLATE = {tmpl}");
        if let Some(opt) = r.get::<_, Option<String>>(5) {
            body.push_str(&format!(",\n    {opt}"));
        }
        let what = format!("TEXT SEARCH DICTIONARY {q}");
        let mut o = SchemaObject::new(ObjectKind::TsDict, &nsp, &name, oid, what.clone());
        o.create
            .push(format!("CREATE TEXT SEARCH DICTIONARY {q} (\n{body} );"));
        o.owner = Some(format!("ALTER {what} OWNER TO {};", ident(&owner)).into());
        o.comments
            .extend(comment_on(comments, (PG_TS_DICT, oid, 0), &what));
        m.add(o, &[(PG_TS_DICT, oid)]);
    }

    // Configurations, and their mappings (token alias → dictionaries in order).
    let sql = format!(
        "SELECT c.oid, n.nspname::text, c.cfgname::text, pg_catalog.pg_get_userbyid(c.cfgowner)::text,
                pg_catalog.format('%I.%I', pn.nspname, p.prsname)
           FROM pg_catalog.pg_ts_config c JOIN pg_catalog.pg_namespace n ON n.oid = c.cfgnamespace
           JOIN pg_catalog.pg_ts_parser p ON p.oid = c.cfgparser
           JOIN pg_catalog.pg_namespace pn ON pn.oid = p.prsnamespace
          WHERE {} ORDER BY 2, 3",
        user_object(PG_TS_CONFIG, "c.oid")
    );
    let configs = query(c, "text search configurations", &sql).await?;
    if configs.is_empty() {
        return Ok(());
    }
    let mut maps: BTreeMap<u32, Vec<(i32, String, String)>> = BTreeMap::new();
    for r in query(
        c,
        "text search configuration mappings",
        "SELECT m.mapcfg, m.maptokentype, t.alias::text, m.mapdict::pg_catalog.regdictionary::text
           FROM pg_catalog.pg_ts_config_map m JOIN pg_catalog.pg_ts_config c ON c.oid = m.mapcfg
           CROSS JOIN LATERAL pg_catalog.ts_token_type(c.cfgparser) t
          WHERE t.tokid = m.maptokentype AND c.oid >= 16384
          ORDER BY m.mapcfg, m.maptokentype, m.mapseqno",
    )
    .await?
    {
        maps.entry(r.get(0))
            .or_default()
            .push((r.get(1), r.get(2), r.get(3)));
    }
    for r in &configs {
        let (oid, nsp, name, owner, parser): (u32, String, String, String, String) =
            (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4));
        let q = qualified(&nsp, &name);
        let what = format!("TEXT SEARCH CONFIGURATION {q}");
        let mut o = SchemaObject::new(ObjectKind::TsConfig, &nsp, &name, oid, what.clone());
        o.create.push(format!(
            "CREATE TEXT SEARCH CONFIGURATION {q} (\n    PARSER = {parser} );"
        ));
        // One ADD MAPPING per token type, its dictionaries in mapseqno order.
        let mut grouped: Vec<(String, Vec<String>)> = Vec::new();
        for (_, alias, dict) in maps.get(&oid).map(Vec::as_slice).unwrap_or(&[]) {
            match grouped.last_mut() {
                Some((a, dicts)) if a == alias => dicts.push(dict.clone()),
                _ => grouped.push((alias.clone(), vec![dict.clone()])),
            }
        }
        for (alias, dicts) in grouped {
            o.create.push(format!(
                "ALTER {what}\n    ADD MAPPING FOR {} WITH {};",
                ident(&alias),
                dicts.join(", ")
            ));
        }
        o.owner = Some(format!("ALTER {what} OWNER TO {};", ident(&owner)).into());
        o.comments
            .extend(comment_on(comments, (PG_TS_CONFIG, oid, 0), &what));
        m.add(o, &[(PG_TS_CONFIG, oid)]);
    }
    Ok(())
}
