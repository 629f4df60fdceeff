//! The database's own properties, as `pg_dump --create` carries them: its
//! owner, comment, privileges, `ALTER DATABASE ... SET` and `ALTER ROLE ...
//! IN DATABASE ... SET`. The target database may have another name, so each
//! statement names it through `current_database()` when it runs; they run
//! last, so a setting such as `default_transaction_read_only` cannot get in
//! the way of the load.

use super::pipeline::Catalog;

use super::{baseline_sql, query};
use crate::error::Result;
use crate::pg::quote::{ident, literal};
use crate::schema::acl::{build_acl_commands, AclObjectKind};
use crate::schema::model::{DatabaseLimits, SchemaModel, SchemaObject};
use crate::schema::sort::ObjectKind;

const PG_DATABASE: u32 = 1262;
/// Stands for the target database's name until the statement runs.
const THIS_DB: &str = "@@pg_dbmigrator.current_database@@";

/// Run `stmt` with [`THIS_DB`] replaced by the current database's name.
fn on_this_db(stmt: &str) -> String {
    format!(
        "DO $pg_dbmigrator$BEGIN EXECUTE pg_catalog.replace({}, {}, pg_catalog.quote_ident(pg_catalog.current_database())); END$pg_dbmigrator$;",
        literal(stmt.trim_end_matches(';')),
        literal(THIS_DB)
    )
}

/// `name TO value` from a `pg_db_role_setting` entry, quoted as pg_dump's
/// makeAlterConfigCommand does: list-valued settings keep their own quoting.
/// Shared with the globals stage (`ALTER ROLE ... SET`).
pub fn set_clause(entry: &str) -> Option<String> {
    let (name, value) = entry.split_once('=')?;
    const LIST_QUOTE: &[&str] = &[
        "local_preload_libraries",
        "search_path",
        "session_preload_libraries",
        "shared_preload_libraries",
        "temp_tablespaces",
        "unix_socket_directories",
    ];
    let value = if LIST_QUOTE.contains(&name.to_ascii_lowercase().as_str()) {
        if value.is_empty() {
            "''".to_string()
        } else {
            value.to_string()
        }
    } else {
        literal(value)
    };
    Some(format!("{} TO {value}", ident(name)))
}

pub(super) async fn load_database(c: &Catalog<'_>, m: &mut SchemaModel, major: u32) -> Result<()> {
    let sql = format!(
        "SELECT d.oid, pg_catalog.pg_get_userbyid(d.datdba)::text, d.datacl::text, {},
                (SELECT s.setconfig FROM pg_catalog.pg_db_role_setting s WHERE s.setdatabase = d.oid AND s.setrole = 0),
                pg_catalog.shobj_description(d.oid, 'pg_database'),
                d.datconnlimit, d.datistemplate, d.datallowconn
           FROM pg_catalog.pg_database d WHERE d.datname = pg_catalog.current_database()",
        baseline_sql(PG_DATABASE, "d.oid", 'd', "d.datdba")
    );
    let rows = query(c, "the database's properties", &sql).await?;
    // Read whatever the first answer holds, so the dry run that foresees
    // the load's reads (see `pipeline`) writes this one down too: a read
    // it missed runs on its own after everything in flight is collected.
    let role_settings = query(
        c,
        "the roles' settings in this database",
        "SELECT pg_catalog.pg_get_userbyid(s.setrole)::text, s.setconfig
           FROM pg_catalog.pg_db_role_setting s JOIN pg_catalog.pg_database d ON d.oid = s.setdatabase
          WHERE d.datname = pg_catalog.current_database() AND s.setrole <> 0 ORDER BY 1",
    )
    .await?;
    let Some(r) = rows.first() else {
        return Ok(());
    };
    let (oid, owner): (u32, String) = (r.get(0), r.get(1));
    let limits = DatabaseLimits {
        connection_limit: r.get(6),
        is_template: r.get(7),
        // Nobody can connect to a database that does not allow connections,
        // this run included; it reads false only when the flag was turned
        // off after the run's sessions connected (to keep the applications
        // out while it runs, say). The target gets it too, at the end.
        allow_connections: r.get(8),
    };
    m.database_limits = (limits != DatabaseLimits::default()).then_some(limits);
    let what = format!("DATABASE {THIS_DB}");
    let mut o = SchemaObject::new(
        ObjectKind::DatabaseProperties,
        "",
        "",
        oid,
        "DATABASE PROPERTIES".to_string(),
    );
    for entry in r.get::<_, Option<Vec<String>>>(4).unwrap_or_default() {
        if let Some(set) = set_clause(&entry) {
            o.create
                .push(on_this_db(&format!("ALTER DATABASE {THIS_DB} SET {set}")));
        }
    }
    for rs in &role_settings {
        let role: String = rs.get(0);
        for entry in rs.get::<_, Option<Vec<String>>>(1).unwrap_or_default() {
            if let Some(set) = set_clause(&entry) {
                o.create.push(on_this_db(&format!(
                    "ALTER ROLE {} IN DATABASE {THIS_DB} SET {set}",
                    ident(&role)
                )));
            }
        }
    }
    o.owner = Some(on_this_db(&format!("ALTER {what} OWNER TO {}", ident(&owner))).into());
    // Shared objects keep their comments in pg_shdescription.
    if let Some(cm) = r.get::<_, Option<String>>(5) {
        o.comments.push(on_this_db(&format!(
            "COMMENT ON {what} IS {}",
            literal(&cm)
        )));
    }
    o.acl = build_acl_commands(
        AclObjectKind::Database,
        &what,
        None,
        r.get::<_, Option<String>>(2).as_deref(),
        &r.get::<_, String>(3),
        &owner,
        major,
    )?
    .iter()
    .map(|s| on_this_db(s))
    .collect();
    m.add(o, &[]);
    Ok(())
}

/// The statements that set `limits` on database `dbname`, as `pg_dump
/// --create` prints them; run from another database of its server (after
/// `ALLOW_CONNECTIONS = false` nobody connects to it again).
pub fn limit_statements(limits: &DatabaseLimits, dbname: &str) -> Vec<String> {
    let db = ident(dbname);
    let mut out = Vec::new();
    if limits.connection_limit != -1 {
        out.push(format!(
            "ALTER DATABASE {db} CONNECTION LIMIT = {};",
            limits.connection_limit
        ));
    }
    if limits.is_template {
        out.push(format!("ALTER DATABASE {db} IS_TEMPLATE = true;"));
    }
    if !limits.allow_connections {
        out.push(format!("ALTER DATABASE {db} ALLOW_CONNECTIONS = false;"));
    }
    out
}

/// Undo [`limit_statements`] on `dbname`, so that a resumed run (or
/// `--force-clean`) can connect to it and drop it; the run sets them again
/// at its end.
pub fn reopen_statements(dbname: &str) -> Vec<String> {
    let db = ident(dbname);
    vec![
        format!("ALTER DATABASE {db} ALLOW_CONNECTIONS = true;"),
        format!("ALTER DATABASE {db} IS_TEMPLATE = false;"),
        format!("ALTER DATABASE {db} CONNECTION LIMIT = -1;"),
    ]
}

/// Whether database `dbname` has any of the limits [`reopen_statements`]
/// undoes; `$1` is the name.
pub const LIMITED_DATABASE_SQL: &str = "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_database
     WHERE datname = $1 AND (NOT datallowconn OR datistemplate OR datconnlimit <> -1))";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_set_as_pg_dump_does() {
        let l = DatabaseLimits {
            connection_limit: 7,
            is_template: true,
            allow_connections: false,
        };
        assert_eq!(
            limit_statements(&l, "My db"),
            [
                "ALTER DATABASE \"My db\" CONNECTION LIMIT = 7;",
                "ALTER DATABASE \"My db\" IS_TEMPLATE = true;",
                "ALTER DATABASE \"My db\" ALLOW_CONNECTIONS = false;"
            ]
        );
        assert!(limit_statements(&DatabaseLimits::default(), "d").is_empty());
    }

    #[test]
    fn settings_are_quoted_as_pg_dump_does() {
        assert_eq!(set_clause("work_mem=64MB").unwrap(), "work_mem TO '64MB'");
        assert_eq!(
            set_clause("search_path=\"$user\", app").unwrap(),
            "search_path TO \"$user\", app"
        );
        assert_eq!(set_clause("search_path=").unwrap(), "search_path TO ''");
        assert_eq!(
            set_clause("app.note=it's=fine").unwrap(),
            "\"app.note\" TO 'it''s=fine'"
        );
        assert!(set_clause("garbage").is_none());
    }
}
