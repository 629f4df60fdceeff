//! Subscriptions of the migrated database, as pg_dump's dumpSubscription
//! prints them: `connect = false`, so nothing is contacted and no slot is
//! made, and disabled; the DBA points and enables them after cutover.
//! Reading a connection string needs a superuser; without one they are
//! refused by name (see [`unreadable`]), never skipped in silence.

use super::pipeline::Catalog;

use super::{comment_on, is_superuser, query, Comments};
use crate::error::Result;
use crate::pg::quote::{ident, literal};
use crate::schema::model::{SchemaModel, SchemaObject};
use crate::schema::sort::ObjectKind;

const PG_SUBSCRIPTION: u32 = 6100;

/// Subscriptions of this database the role cannot read (not a superuser).
pub(super) async fn unreadable(c: &Catalog<'_>) -> Result<Vec<String>> {
    if is_superuser(c).await? {
        return Ok(Vec::new());
    }
    Ok(query(
        c,
        "subscriptions",
        "SELECT s.subname::text FROM pg_catalog.pg_subscription s JOIN pg_catalog.pg_database d ON d.oid = s.subdbid
          WHERE d.datname = pg_catalog.current_database() ORDER BY 1",
    )
    .await?
    .iter()
    .map(|r| {
        format!(
            "subscription {} (reading its connection needs a superuser source role; or pass --no-subscriptions)",
            r.get::<_, String>(0)
        )
    })
    .collect())
}

pub(super) async fn load_subscriptions(
    c: &Catalog<'_>,
    m: &mut SchemaModel,
    comments: &Comments,
    major: u32,
    superuser: bool,
) -> Result<()> {
    if !superuser {
        return Ok(());
    }
    let v = |min: u32, expr: &str, other: &str| {
        if major >= min {
            expr.to_string()
        } else {
            other.to_string()
        }
    };
    let sql = format!(
        "SELECT s.oid, s.subname::text, pg_catalog.pg_get_userbyid(s.subowner)::text, s.subconninfo,
                s.subslotname::text, s.subsynccommit, s.subpublications::text[],
                {}, {}, {}, {}, {}, {}, {}, {}
           FROM pg_catalog.pg_subscription s JOIN pg_catalog.pg_database d ON d.oid = s.subdbid
          WHERE d.datname = pg_catalog.current_database() ORDER BY 2",
        v(14, "s.subbinary", "false"),
        // A boolean before 16, then 'f', 't' or 'p' (parallel).
        if major >= 16 {
            "s.substream::text".to_string()
        } else if major >= 14 {
            "CASE WHEN s.substream THEN 't' ELSE 'f' END".to_string()
        } else {
            "'f'::text".to_string()
        },
        v(15, "s.subtwophasestate::text", "'d'::text"),
        v(15, "s.subdisableonerr", "false"),
        v(16, "s.suborigin", "'any'::text"),
        v(16, "s.subpasswordrequired", "true"),
        v(16, "s.subrunasowner", "false"),
        v(17, "s.subfailover", "false"),
    );
    for r in query(c, "subscriptions", &sql).await? {
        let (oid, name, owner): (u32, String, String) = (r.get(0), r.get(1), r.get(2));
        let q = ident(&name);
        let pubs: Vec<String> = r
            .get::<_, Vec<String>>(6)
            .iter()
            .map(|p| ident(p))
            .collect();
        let mut s = format!(
            "CREATE SUBSCRIPTION {q} CONNECTION {} PUBLICATION {} WITH (connect = false, slot_name = {}",
            literal(&r.get::<_, String>(3)),
            pubs.join(", "),
            r.get::<_, Option<String>>(4)
                .map(|n| literal(&n))
                .unwrap_or_else(|| "NONE".into())
        );
        if r.get::<_, bool>(7) {
            s.push_str(", binary = true");
        }
        match r.get::<_, String>(8).as_str() {
            "f" => {}
            "p" => s.push_str(", streaming = parallel"),
            _ => s.push_str(", streaming = on"),
        }
        if r.get::<_, String>(9) != "d" {
            s.push_str(", two_phase = on");
        }
        if r.get::<_, bool>(10) {
            s.push_str(", disable_on_error = true");
        }
        let origin: String = r.get(11);
        if !origin.eq_ignore_ascii_case("any") {
            s.push_str(&format!(", origin = {origin}"));
        }
        if !r.get::<_, bool>(12) {
            s.push_str(", password_required = false");
        }
        if r.get::<_, bool>(13) {
            s.push_str(", run_as_owner = true");
        }
        if r.get::<_, bool>(14) {
            s.push_str(", failover = true");
        }
        let sync: String = r.get(5);
        if sync != "off" {
            s.push_str(&format!(", synchronous_commit = {}", ident(&sync)));
        }
        s.push_str(");");
        let what = format!("SUBSCRIPTION {q}");
        let mut o = SchemaObject::new(ObjectKind::Subscription, "", &name, oid, what.clone());
        o.create.push(s);
        o.owner = Some(format!("ALTER {what} OWNER TO {};", ident(&owner)).into());
        o.comments
            .extend(comment_on(comments, (PG_SUBSCRIPTION, oid, 0), &what));
        m.add(o, &[(PG_SUBSCRIPTION, oid)]);
    }
    Ok(())
}
