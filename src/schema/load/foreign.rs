//! Foreign-data wrappers, foreign servers and user mappings, as pg_dump's
//! dumpForeignDataWrapper / dumpForeignServer / dumpUserMappings print them:
//! options kept in their catalog order; a server's user mappings are created
//! with it (pg_dump dumps them from the server's entry).

use super::pipeline::Catalog;

use super::{comment_on, query, Comments};
use crate::error::Result;
use crate::pg::quote::{ident, literal};
use crate::schema::acl::{build_acl_commands, AclObjectKind};
use crate::schema::model::{SchemaModel, SchemaObject};
use crate::schema::sort::ObjectKind;

const PG_FOREIGN_DATA_WRAPPER: u32 = 2328;
const PG_FOREIGN_SERVER: u32 = 1417;

fn not_member(cls: u32, oid: &str) -> String {
    format!(
        "NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend e WHERE e.classid = {cls} \
         AND e.objid = {oid} AND e.deptype = 'e')"
    )
}

/// `OPTIONS (a 'x', b 'y')` from a catalog options array column, as SQL
/// producing the text (NULL when there are none).
pub(super) fn options_sql(col: &str) -> String {
    format!(
        "(SELECT pg_catalog.string_agg(pg_catalog.quote_ident(o.option_name) || ' ' || pg_catalog.quote_literal(o.option_value), ', ' ORDER BY u.ord)
            FROM pg_catalog.unnest({col}) WITH ORDINALITY AS u(opt, ord)
            CROSS JOIN LATERAL pg_catalog.pg_options_to_table(ARRAY[u.opt]) o)"
    )
}

fn with_options(mut s: String, opts: Option<String>) -> String {
    if let Some(o) = opts {
        s.push_str(&format!(" OPTIONS (\n    {o}\n)"));
    }
    s.push(';');
    s
}

pub(super) async fn load_foreign(
    c: &Catalog<'_>,
    m: &mut SchemaModel,
    comments: &Comments,
    major: u32,
) -> Result<()> {
    let sql = format!(
        "SELECT w.oid, w.fdwname::text, pg_catalog.pg_get_userbyid(w.fdwowner)::text,
                NULLIF(w.fdwhandler, 0)::pg_catalog.regproc::text, NULLIF(w.fdwvalidator, 0)::pg_catalog.regproc::text,
                {}, w.fdwacl::text,
                COALESCE((SELECT ip.initprivs::text FROM pg_catalog.pg_init_privs ip
                           WHERE ip.classoid = {PG_FOREIGN_DATA_WRAPPER} AND ip.objoid = w.oid AND ip.objsubid = 0),
                         pg_catalog.acldefault('F', w.fdwowner)::text)
           FROM pg_catalog.pg_foreign_data_wrapper w WHERE {} ORDER BY 2",
        options_sql("w.fdwoptions"),
        not_member(PG_FOREIGN_DATA_WRAPPER, "w.oid")
    );
    for r in query(c, "foreign-data wrappers", &sql).await? {
        let (oid, name, owner): (u32, String, String) = (r.get(0), r.get(1), r.get(2));
        let q = ident(&name);
        let mut s = format!("CREATE FOREIGN DATA WRAPPER {q}");
        if let Some(h) = r.get::<_, Option<String>>(3) {
            s.push_str(&format!(" HANDLER {h}"));
        }
        if let Some(v) = r.get::<_, Option<String>>(4) {
            s.push_str(&format!(" VALIDATOR {v}"));
        }
        let what = format!("FOREIGN DATA WRAPPER {q}");
        let mut o = SchemaObject::new(ObjectKind::Fdw, "", &name, oid, what.clone());
        o.create.push(with_options(s, r.get(5)));
        o.owner = Some(format!("ALTER {what} OWNER TO {};", ident(&owner)).into());
        o.comments.extend(comment_on(
            comments,
            (PG_FOREIGN_DATA_WRAPPER, oid, 0),
            &what,
        ));
        o.acl = build_acl_commands(
            AclObjectKind::ForeignDataWrapper,
            &what,
            None,
            r.get::<_, Option<String>>(6).as_deref(),
            &r.get::<_, String>(7),
            &owner,
            major,
        )?
        .into();
        m.add(o, &[(PG_FOREIGN_DATA_WRAPPER, oid)]);
    }

    // User mappings, keyed by server; pg_user_mappings shows the options to
    // a superuser (and to the mapping's own user).
    let mappings = query(
        c,
        "user mappings",
        &format!(
            "SELECT u.srvid, u.usename::text, {} FROM pg_catalog.pg_user_mappings u ORDER BY 1, 2",
            options_sql("u.umoptions")
        ),
    )
    .await?;
    let sql = format!(
        "SELECT s.oid, s.srvname::text, pg_catalog.pg_get_userbyid(s.srvowner)::text, s.srvtype, s.srvversion,
                w.fdwname::text, {}, s.srvacl::text,
                COALESCE((SELECT ip.initprivs::text FROM pg_catalog.pg_init_privs ip
                           WHERE ip.classoid = {PG_FOREIGN_SERVER} AND ip.objoid = s.oid AND ip.objsubid = 0),
                         pg_catalog.acldefault('S', s.srvowner)::text)
           FROM pg_catalog.pg_foreign_server s JOIN pg_catalog.pg_foreign_data_wrapper w ON w.oid = s.srvfdw
          WHERE {} ORDER BY 2",
        options_sql("s.srvoptions"),
        not_member(PG_FOREIGN_SERVER, "s.oid")
    );
    for r in query(c, "foreign servers", &sql).await? {
        let (oid, name, owner): (u32, String, String) = (r.get(0), r.get(1), r.get(2));
        let q = ident(&name);
        let mut s = format!("CREATE SERVER {q}");
        if let Some(t) = r.get::<_, Option<String>>(3) {
            s.push_str(&format!(" TYPE {}", literal(&t)));
        }
        if let Some(v) = r.get::<_, Option<String>>(4) {
            s.push_str(&format!(" VERSION {}", literal(&v)));
        }
        s.push_str(&format!(
            " FOREIGN DATA WRAPPER {}",
            ident(&r.get::<_, String>(5))
        ));
        let what = format!("SERVER {q}");
        let mut o = SchemaObject::new(ObjectKind::ForeignServer, "", &name, oid, what.clone());
        o.create.push(with_options(s, r.get(6)));
        for um in mappings.iter().filter(|u| u.get::<_, u32>(0) == oid) {
            let user: String = um.get(1);
            let who = if user == "public" {
                "PUBLIC".to_string()
            } else {
                ident(&user)
            };
            o.create.push(with_options(
                format!("CREATE USER MAPPING FOR {who} SERVER {q}"),
                um.get(2),
            ));
        }
        o.owner = Some(format!("ALTER {what} OWNER TO {};", ident(&owner)).into());
        o.comments
            .extend(comment_on(comments, (PG_FOREIGN_SERVER, oid, 0), &what));
        o.acl = build_acl_commands(
            AclObjectKind::ForeignServer,
            &format!("FOREIGN SERVER {q}"),
            None,
            r.get::<_, Option<String>>(7).as_deref(),
            &r.get::<_, String>(8),
            &owner,
            major,
        )?
        .into();
        m.add(o, &[(PG_FOREIGN_SERVER, oid)]);
    }
    Ok(())
}
