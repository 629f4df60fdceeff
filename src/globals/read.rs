//! Reading a server's globals from its shared catalogs. The same queries
//! serve the source (what to carry) and the target (what is there already).

use std::collections::HashMap;

use tokio_postgres::Client;

use super::model::*;
use crate::error::{MigrationError, Result};

async fn rows(
    c: &Client,
    what: &str,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<Vec<tokio_postgres::Row>> {
    c.query(sql, params)
        .await
        .map_err(|e| MigrationError::db(format!("reading {what}"), e))
}

/// The server's major version.
pub async fn server_major(c: &Client) -> Result<u32> {
    let r = rows(
        c,
        "the server version",
        "SELECT pg_catalog.current_setting('server_version_num')::int",
        &[],
    )
    .await?;
    Ok(r[0].get::<_, i32>(0) as u32 / 10000)
}

/// Read every global of the server `c` is connected to. With `passwords`,
/// hashes are read when the session may read `pg_authid` (a superuser, or
/// a role granted SELECT on it); otherwise they are [`Password::Unknown`].
pub async fn read_globals(c: &Client, passwords: bool) -> Result<Globals> {
    let major = server_major(c).await?;
    if !(13..=18).contains(&major) {
        return Err(MigrationError::Unsupported(format!(
            "globals of a PostgreSQL {major} server (13 to 18 are supported)"
        )));
    }
    let bootstrap: String = rows(
        c,
        "the bootstrap superuser",
        "SELECT rolname::text FROM pg_catalog.pg_roles WHERE oid = 10",
        &[],
    )
    .await?[0]
        .get(0);
    let readable = passwords
        && rows(
            c,
            "whether password hashes are readable",
            "SELECT pg_catalog.has_table_privilege('pg_catalog.pg_authid', 'SELECT')",
            &[],
        )
        .await?[0]
            .get::<_, bool>(0);

    let labels = shared_labels(c).await?;
    let pw = if readable {
        "(SELECT a.rolpassword FROM pg_catalog.pg_authid a WHERE a.oid = r.oid)"
    } else {
        "NULL::text"
    };
    // VALID UNTIL in UTC so both sides' texts compare whatever their TimeZone.
    let sql = format!(
        "SELECT r.oid, r.rolname::text, r.rolsuper, r.rolinherit, r.rolcreaterole, r.rolcreatedb,
                r.rolcanlogin, r.rolreplication, r.rolbypassrls, r.rolconnlimit,
                CASE WHEN r.rolvaliduntil IS NULL THEN NULL
                     WHEN pg_catalog.isfinite(r.rolvaliduntil)
                     THEN pg_catalog.to_char(r.rolvaliduntil AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00'
                     ELSE r.rolvaliduntil::text END,
                {pw},
                pg_catalog.shobj_description(r.oid, 'pg_authid'),
                (SELECT s.setconfig::text[] FROM pg_catalog.pg_db_role_setting s
                  WHERE s.setrole = r.oid AND s.setdatabase = 0)
           FROM pg_catalog.pg_roles r
          WHERE r.oid <> 10 AND r.rolname !~ '^pg_'
          ORDER BY 2"
    );
    let mut roles = Vec::new();
    for r in rows(c, "roles", &sql, &[]).await? {
        let oid: u32 = r.get(0);
        roles.push(Role {
            name: r.get(1),
            superuser: r.get(2),
            inherit: r.get(3),
            createrole: r.get(4),
            createdb: r.get(5),
            login: r.get(6),
            replication: r.get(7),
            bypassrls: r.get(8),
            connection_limit: r.get(9),
            valid_until: r.get(10),
            password: if readable {
                match r.get::<_, Option<String>>(11) {
                    Some(h) => Password::Hash(Secret(h)),
                    None => Password::None,
                }
            } else {
                Password::Unknown
            },
            comment: r.get(12),
            labels: labels.get(&("pg_authid", oid)).cloned().unwrap_or_default(),
            settings: r.get::<_, Option<Vec<String>>>(13).unwrap_or_default(),
        });
    }

    let (inherit, set) = if major >= 16 {
        ("a.inherit_option", "a.set_option")
    } else {
        ("NULL::bool", "NULL::bool")
    };
    // Roles that vanished (old servers kept dangling OIDs) are skipped;
    // a vanished grantor is dropped, as pg_dumpall does.
    let sql = format!(
        "SELECT ur.rolname::text, um.rolname::text, ug.rolname::text, a.admin_option, {inherit}, {set}
           FROM pg_catalog.pg_auth_members a
           LEFT JOIN pg_catalog.pg_roles ur ON ur.oid = a.roleid
           LEFT JOIN pg_catalog.pg_roles um ON um.oid = a.member
           LEFT JOIN pg_catalog.pg_roles ug ON ug.oid = a.grantor
          WHERE NOT (ur.rolname ~ '^pg_' AND um.rolname ~ '^pg_')
          ORDER BY 1, 2, 3"
    );
    let mut memberships = Vec::new();
    for r in rows(c, "role memberships", &sql, &[]).await? {
        let (Some(role), Some(member)) = (r.get::<_, Option<String>>(0), r.get(1)) else {
            continue;
        };
        memberships.push(Membership {
            role,
            member,
            grantor: r.get(2),
            admin: r.get(3),
            inherit: r.get(4),
            set: r.get(5),
        });
    }

    let mut database_role_settings = Vec::new();
    for r in rows(
        c,
        "per-database role settings",
        "SELECT r.rolname::text, d.datname::text, s.setconfig::text[]
           FROM pg_catalog.pg_db_role_setting s
           JOIN pg_catalog.pg_roles r ON r.oid = s.setrole
           JOIN pg_catalog.pg_database d ON d.oid = s.setdatabase
          WHERE r.oid <> 10 AND r.rolname !~ '^pg_'
          ORDER BY 2, 1",
        &[],
    )
    .await?
    {
        database_role_settings.push(DatabaseRoleSetting {
            role: r.get(0),
            database: r.get(1),
            settings: r.get::<_, Option<Vec<String>>>(2).unwrap_or_default(),
        });
    }

    let mut parameter_acls = Vec::new();
    if major >= 15 {
        for r in rows(
            c,
            "parameter privileges",
            "SELECT parname::text, paracl::text FROM pg_catalog.pg_parameter_acl ORDER BY 1",
            &[],
        )
        .await?
        {
            parameter_acls.push(ParameterAcl {
                name: r.get(0),
                acl: r.get(1),
            });
        }
    }

    let mut tablespaces = Vec::new();
    for r in rows(
        c,
        "tablespaces",
        "SELECT t.oid, t.spcname::text, pg_catalog.pg_get_userbyid(t.spcowner)::text,
                pg_catalog.pg_tablespace_location(t.oid), t.spcacl::text, t.spcoptions::text[],
                pg_catalog.shobj_description(t.oid, 'pg_tablespace')
           FROM pg_catalog.pg_tablespace t
          WHERE t.spcname NOT IN ('pg_default', 'pg_global')
          ORDER BY 1",
        &[],
    )
    .await?
    {
        let oid: u32 = r.get(0);
        let location: String = r.get::<_, Option<String>>(3).unwrap_or_default();
        tablespaces.push(Tablespace {
            name: r.get(1),
            owner: r.get(2),
            // In-place tablespaces report a relative path: recreated in place.
            location: if location.starts_with('/') {
                location
            } else {
                String::new()
            },
            acl: r.get(4),
            options: r.get::<_, Option<Vec<String>>>(5).unwrap_or_default(),
            comment: r.get(6),
            labels: labels
                .get(&("pg_tablespace", oid))
                .cloned()
                .unwrap_or_default(),
        });
    }

    Ok(Globals {
        server_major: major,
        bootstrap,
        passwords_read: readable,
        roles,
        memberships,
        database_role_settings,
        parameter_acls,
        tablespaces,
    })
}

/// Security labels on roles and tablespaces, by catalog and object.
async fn shared_labels(c: &Client) -> Result<HashMap<(&'static str, u32), Vec<SecLabel>>> {
    let mut out: HashMap<(&'static str, u32), Vec<SecLabel>> = HashMap::new();
    for r in rows(
        c,
        "security labels on roles and tablespaces",
        "SELECT l.classoid::regclass::text, l.objoid, l.provider::text, l.label
           FROM pg_catalog.pg_shseclabel l
          WHERE l.classoid IN ('pg_catalog.pg_authid'::regclass, 'pg_catalog.pg_tablespace'::regclass)
          ORDER BY 3",
        &[],
    )
    .await?
    {
        let catalog = if r.get::<_, String>(0) == "pg_authid" {
            "pg_authid"
        } else {
            "pg_tablespace"
        };
        out.entry((catalog, r.get(1))).or_default().push(SecLabel {
            provider: r.get(2),
            label: r.get(3),
        });
    }
    Ok(out)
}
