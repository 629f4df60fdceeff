//! schema::acl against its oracle: the GRANT/REVOKE lines `pg_dump
//! --schema-only` prints for a database full of odd privileges must equal the
//! commands built from that database's catalogs, and running those commands
//! on a copy of the objects must reproduce the catalogs' ACLs exactly.

use std::path::PathBuf;
use std::process::Command;

use pg_dbmigrator::pg::quote::{ident, literal, qualified};
use pg_dbmigrator::schema::acl::{build_acl_commands, build_default_acl_commands, AclObjectKind};
use pg_dbmigrator::testkit;

/// Roles are cluster-wide, shared with other test runs; the odd one checks
/// quoting of spaces, quotes and backslashes everywhere.
const ODD: &str = "dbm_acl odd \"q\\";
const ROLES: &[&str] = &[
    "dbm_acl_owner",
    "dbm_acl_reader",
    "dbm_acl_writer",
    "dbm_acl_grantor",
    ODD,
];

/// Objects, created by their owner on both sides; no privileges yet.
fn objects_sql() -> String {
    "CREATE SCHEMA dbm_s AUTHORIZATION dbm_acl_owner;
     SET ROLE dbm_acl_owner;
     CREATE TABLE dbm_s.t (id int, \"Odd Col\" text, secret text);
     CREATE TABLE dbm_s.\"Mixed Case\" (x int);
     CREATE VIEW dbm_s.v AS SELECT id FROM dbm_s.t;
     CREATE SEQUENCE dbm_s.q;
     CREATE SEQUENCE dbm_s.q_none;
     CREATE FUNCTION dbm_s.f(a integer) RETURNS integer LANGUAGE sql AS 'SELECT a';
     CREATE PROCEDURE dbm_s.p() LANGUAGE sql AS 'SELECT 1';
     CREATE TYPE dbm_s.mood AS ENUM ('a', 'b');
     CREATE DOMAIN dbm_s.posint AS integer CHECK (VALUE > 0);
     RESET ROLE;"
        .to_string()
}

/// The privileges, source only.
fn grants_sql() -> String {
    let odd = ident(ODD);
    format!(
        "SET ROLE dbm_acl_owner;
         GRANT USAGE ON SCHEMA dbm_s TO dbm_acl_reader, dbm_acl_grantor, {odd};
         GRANT ALL ON SCHEMA dbm_s TO dbm_acl_writer WITH GRANT OPTION;
         GRANT SELECT, INSERT ON dbm_s.t TO dbm_acl_reader;
         GRANT ALL ON dbm_s.t TO dbm_acl_writer WITH GRANT OPTION;
         GRANT SELECT, UPDATE ON dbm_s.t TO dbm_acl_grantor WITH GRANT OPTION;
         GRANT SELECT ON dbm_s.t TO PUBLIC;
         GRANT SELECT (id, \"Odd Col\"), UPDATE (\"Odd Col\") ON dbm_s.t TO dbm_acl_reader;
         GRANT REFERENCES (id) ON dbm_s.t TO {odd} WITH GRANT OPTION;
         GRANT ALL (secret) ON dbm_s.t TO dbm_acl_writer;
         REVOKE TRUNCATE ON dbm_s.t FROM dbm_acl_owner;
         GRANT ALL ON dbm_s.\"Mixed Case\" TO {odd};
         GRANT SELECT ON dbm_s.v TO dbm_acl_reader;
         GRANT USAGE, SELECT ON SEQUENCE dbm_s.q TO dbm_acl_reader;
         GRANT ALL ON SEQUENCE dbm_s.q TO dbm_acl_writer;
         REVOKE ALL ON SEQUENCE dbm_s.q_none FROM dbm_acl_owner;
         REVOKE ALL ON FUNCTION dbm_s.f(integer) FROM PUBLIC;
         GRANT EXECUTE ON FUNCTION dbm_s.f(integer) TO dbm_acl_grantor WITH GRANT OPTION;
         GRANT EXECUTE ON PROCEDURE dbm_s.p() TO dbm_acl_reader;
         REVOKE USAGE ON TYPE dbm_s.mood FROM PUBLIC;
         GRANT USAGE ON TYPE dbm_s.mood TO {odd};
         GRANT USAGE ON DOMAIN dbm_s.posint TO dbm_acl_reader WITH GRANT OPTION;
         SET ROLE dbm_acl_grantor;
         GRANT SELECT ON dbm_s.t TO {odd} WITH GRANT OPTION;
         GRANT UPDATE ON dbm_s.t TO dbm_acl_reader;
         GRANT EXECUTE ON FUNCTION dbm_s.f(integer) TO dbm_acl_reader;
         SET ROLE {odd};
         GRANT SELECT ON dbm_s.t TO dbm_acl_writer;
         RESET ROLE;
         ALTER DEFAULT PRIVILEGES FOR ROLE dbm_acl_owner GRANT SELECT ON TABLES TO dbm_acl_reader;
         ALTER DEFAULT PRIVILEGES FOR ROLE dbm_acl_owner REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC;
         ALTER DEFAULT PRIVILEGES FOR ROLE dbm_acl_owner REVOKE USAGE ON TYPES FROM PUBLIC;
         ALTER DEFAULT PRIVILEGES FOR ROLE dbm_acl_owner GRANT CREATE ON SCHEMAS TO dbm_acl_reader;
         ALTER DEFAULT PRIVILEGES FOR ROLE dbm_acl_owner IN SCHEMA dbm_s
             GRANT USAGE ON SEQUENCES TO {odd};
         ALTER DEFAULT PRIVILEGES FOR ROLE dbm_acl_owner IN SCHEMA dbm_s
             GRANT ALL ON TABLES TO dbm_acl_writer WITH GRANT OPTION;
         ALTER DEFAULT PRIVILEGES FOR ROLE dbm_acl_writer IN SCHEMA dbm_s
             GRANT EXECUTE ON FUNCTIONS TO dbm_acl_reader;"
    )
}

/// Idempotent even when another process creates the same role concurrently.
fn roles_sql() -> String {
    ROLES
        .iter()
        .map(|r| {
            format!(
                "DO $$BEGIN
                   IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = {lit}) THEN
                     CREATE ROLE {id};
                   END IF;
                 EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
                 END$$;",
                lit = literal(r),
                id = ident(r)
            )
        })
        .collect()
}

async fn rows(conninfo: &str, sql: &str) -> Vec<Vec<Option<String>>> {
    testkit::client(conninfo)
        .await
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .into_iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => {
                Some((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect())
            }
            _ => None,
        })
        .collect()
}

/// One object's statements, labelled for failure messages.
struct Block {
    what: String,
    commands: Vec<String>,
}

/// Skips the catalog schemas; everything else in the database counts, so an
/// ACL pg_dump prints that the test forgot to read shows up as a difference.
const USER_SCHEMA: &str = "n.nspname <> 'information_schema' AND n.nspname !~ '^pg_'";

fn col(row: &[Option<String>], i: usize) -> &str {
    row[i].as_deref().expect("non-NULL column")
}

/// Every ACL of the database as commands, in an order that can be replayed:
/// schemas first (later grantors need USAGE), a table's columns after the
/// table, default privileges last (as pg_dump's ACL pass does).
async fn catalog_commands(conninfo: &str, major: u32) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut push = |what: String, commands: Vec<String>| blocks.push(Block { what, commands });

    let init = |classid: &str, objid: &str, subid: &str| {
        format!(
            "(SELECT ip.initprivs::text FROM pg_init_privs ip WHERE ip.classoid = '{classid}'::regclass \
             AND ip.objoid = {objid} AND ip.objsubid = {subid})"
        )
    };

    let schemas = rows(
        conninfo,
        &format!(
            "SELECT n.nspname, n.nspacl::text, coalesce({}, acldefault('n', n.nspowner)::text), \
             pg_get_userbyid(n.nspowner) FROM pg_namespace n WHERE {USER_SCHEMA} ORDER BY 1",
            init("pg_namespace", "n.oid", "0")
        ),
    )
    .await;
    for r in &schemas {
        let target = format!("SCHEMA {}", ident(col(r, 0)));
        let cmds = build_acl_commands(
            AclObjectKind::Schema,
            &target,
            None,
            r[1].as_deref(),
            col(r, 2),
            col(r, 3),
            major,
        )
        .unwrap();
        push(target, cmds);
    }

    let rels = rows(
        conninfo,
        &format!(
            "SELECT c.oid, n.nspname, c.relname, c.relkind, c.relacl::text, \
             coalesce({}, acldefault(CASE c.relkind WHEN 'S' THEN 's' ELSE 'r' END::\"char\", \
             c.relowner)::text), pg_get_userbyid(c.relowner) \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE {USER_SCHEMA} AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S') ORDER BY 2, 3",
            init("pg_class", "c.oid", "0")
        ),
    )
    .await;
    for r in &rels {
        let (kind, word) = if col(r, 3) == "S" {
            (AclObjectKind::Sequence, "SEQUENCE")
        } else {
            (AclObjectKind::Table, "TABLE")
        };
        let target = format!("{word} {}", qualified(col(r, 1), col(r, 2)));
        let owner = col(r, 6).to_string();
        let cmds = build_acl_commands(
            kind,
            &target,
            None,
            r[4].as_deref(),
            col(r, 5),
            &owner,
            major,
        )
        .unwrap();
        push(target.clone(), cmds);
        let cols = rows(
            conninfo,
            &format!(
                "SELECT a.attname, a.attacl::text, coalesce({}, '{{}}') FROM pg_attribute a \
                 WHERE a.attrelid = {} AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
                init("pg_class", "a.attrelid", "a.attnum"),
                col(r, 0)
            ),
        )
        .await;
        for c in &cols {
            let column = ident(col(c, 0));
            let cmds = build_acl_commands(
                AclObjectKind::Column,
                &target,
                Some(&column),
                c[1].as_deref(),
                col(c, 2),
                &owner,
                major,
            )
            .unwrap();
            push(format!("{target} column {column}"), cmds);
        }
    }

    let funcs = rows(
        conninfo,
        &format!(
            "SELECT n.nspname, p.proname, pg_get_function_identity_arguments(p.oid), p.prokind, \
             p.proacl::text, coalesce({}, acldefault('f', p.proowner)::text), \
             pg_get_userbyid(p.proowner) \
             FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace \
             WHERE {USER_SCHEMA} ORDER BY 1, 2, 3",
            init("pg_proc", "p.oid", "0")
        ),
    )
    .await;
    for r in &funcs {
        let word = if col(r, 3) == "p" {
            "PROCEDURE"
        } else {
            "FUNCTION"
        };
        let target = format!(
            "{word} {}.{}({})",
            ident(col(r, 0)),
            ident(col(r, 1)),
            col(r, 2)
        );
        let cmds = build_acl_commands(
            AclObjectKind::Function,
            &target,
            None,
            r[4].as_deref(),
            col(r, 5),
            col(r, 6),
            major,
        )
        .unwrap();
        push(target, cmds);
    }

    // Neither array types nor the row types of tables have ACLs of their own
    // in a dump.
    let types = rows(
        conninfo,
        &format!(
            "SELECT n.nspname, t.typname, t.typacl::text, \
             coalesce({}, acldefault('T', t.typowner)::text), pg_get_userbyid(t.typowner) \
             FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace \
             WHERE {USER_SCHEMA} AND NOT (t.typelem <> 0 AND t.typlen = -1) \
             AND (t.typrelid = 0 OR (SELECT relkind FROM pg_class WHERE oid = t.typrelid) = 'c') \
             ORDER BY 1, 2",
            init("pg_type", "t.oid", "0")
        ),
    )
    .await;
    for r in &types {
        let target = format!("TYPE {}", qualified(col(r, 0), col(r, 1)));
        let cmds = build_acl_commands(
            AclObjectKind::Type,
            &target,
            None,
            r[2].as_deref(),
            col(r, 3),
            col(r, 4),
            major,
        )
        .unwrap();
        push(target, cmds);
    }

    let defaults = rows(
        conninfo,
        "SELECT pg_get_userbyid(d.defaclrole), n.nspname, d.defaclobjtype, d.defaclacl::text, \
         CASE WHEN d.defaclnamespace = 0 THEN acldefault(CASE d.defaclobjtype WHEN 'S' \
         THEN 's' ELSE d.defaclobjtype END::\"char\", d.defaclrole)::text ELSE '{}' END \
         FROM pg_default_acl d LEFT JOIN pg_namespace n ON n.oid = d.defaclnamespace \
         ORDER BY 1, 2, 3",
    )
    .await;
    for r in &defaults {
        let objtype = col(r, 2).chars().next().expect("objtype");
        let cmds = build_default_acl_commands(
            col(r, 0),
            r[1].as_deref(),
            objtype,
            col(r, 3),
            col(r, 4),
            major,
        )
        .unwrap();
        push(format!("default {} {:?} {objtype}", col(r, 0), r[1]), cmds);
    }
    blocks
}

fn pg_dump_bin() -> PathBuf {
    testkit::shared_pair()
        .source
        .cluster()
        .map(|c| c.bin_dir.join("pg_dump"))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("pg_dump"))
}

/// The statements of every ACL and DEFAULT ACL entry of `pg_dump
/// --schema-only`, one list per entry.
fn dumped_acl_blocks(conninfo: &str) -> Vec<Vec<String>> {
    let out = Command::new(pg_dump_bin())
        .arg("--schema-only")
        .arg("--dbname")
        .arg(conninfo)
        .output()
        .expect("running pg_dump");
    assert!(
        out.status.success(),
        "pg_dump: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("UTF-8 dump");
    let mut blocks: Vec<Vec<String>> = Vec::new();
    let mut in_acl = false;
    for line in text.lines() {
        if let Some(header) = line.strip_prefix("-- Name: ") {
            in_acl = header.contains("; Type: ACL;") || header.contains("; Type: DEFAULT ACL;");
            if in_acl {
                blocks.push(Vec::new());
            }
        } else if line.starts_with('\\') {
            // psql meta-commands (`\unrestrict`) end the entry.
            in_acl = false;
        } else if in_acl && !line.is_empty() && !line.starts_with("--") {
            blocks.last_mut().expect("block").push(line.to_string());
        }
    }
    blocks
}

/// Blocks as one text, sorted so pg_dump's object order does not matter
/// while the order inside each object's block still does.
fn canonical(mut blocks: Vec<Vec<String>>) -> String {
    blocks.retain(|b| !b.is_empty());
    blocks.sort();
    blocks
        .iter()
        .map(|b| b.join("\n"))
        .collect::<Vec<_>>()
        .join("\n\n")
}

/// Every ACL-bearing catalog row of the test objects, as text.
async fn acl_snapshot(conninfo: &str) -> String {
    let sql = "SELECT string_agg(line, E'\\n' ORDER BY line) FROM ( \
        SELECT 'schema ' || nspname || ' ' || coalesce(nspacl::text, 'NULL') AS line \
          FROM pg_namespace WHERE nspname IN ('dbm_s', 'public') \
        UNION ALL SELECT 'rel ' || oid::regclass::text || ' ' || coalesce(relacl::text, 'NULL') \
          FROM pg_class WHERE relnamespace = 'dbm_s'::regnamespace \
        UNION ALL SELECT 'col ' || attrelid::regclass::text || '.' || attname || ' ' || attacl::text \
          FROM pg_attribute WHERE attacl IS NOT NULL \
          AND attrelid IN (SELECT oid FROM pg_class WHERE relnamespace = 'dbm_s'::regnamespace) \
        UNION ALL SELECT 'proc ' || oid::regprocedure::text || ' ' || coalesce(proacl::text, 'NULL') \
          FROM pg_proc WHERE pronamespace = 'dbm_s'::regnamespace \
        UNION ALL SELECT 'type ' || oid::regtype::text || ' ' || coalesce(typacl::text, 'NULL') \
          FROM pg_type WHERE typnamespace = 'dbm_s'::regnamespace \
        UNION ALL SELECT 'default ' || pg_get_userbyid(defaclrole) || ' ' \
          || coalesce(defaclnamespace::regnamespace::text, '-') || ' ' || defaclobjtype::text || ' ' \
          || defaclacl::text FROM pg_default_acl) s";
    testkit::query_scalar(conninfo, sql).await
}

#[tokio::test]
async fn acl_commands_match_pg_dump_and_reproduce_the_catalogs() {
    let pair = testkit::shared_pair();
    let db = pair.fresh_db("acl_oracle").await;
    for side in [&db.source, &db.target] {
        testkit::execute(side, &roles_sql())
            .await
            .unwrap_or_else(|e| panic!("roles: {e}"));
        testkit::execute(side, &objects_sql())
            .await
            .unwrap_or_else(|e| panic!("objects: {e}"));
    }
    testkit::execute(&db.source, &grants_sql())
        .await
        .unwrap_or_else(|e| panic!("grants: {e:?}"));

    // The source's catalogs, turned into commands, say what pg_dump says
    // (pg_dump comes from the source's installation, so `ALL` means what it
    // means on the source).
    let built = canonical(
        catalog_commands(&db.source, pair.source.major())
            .await
            .into_iter()
            .map(|b| b.commands)
            .collect(),
    );
    let dumped = canonical(dumped_acl_blocks(&db.source));
    assert_eq!(built, dumped, "built (left) vs pg_dump (right)");
    // Guard against a fixture that silently grants nothing.
    for needle in [
        "SET SESSION AUTHORIZATION \"dbm_acl odd \"\"q\\\";",
        "REVOKE ALL ON TABLE dbm_s.t FROM dbm_acl_owner;",
        "GRANT REFERENCES(id) ON TABLE dbm_s.t TO \"dbm_acl odd \"\"q\\\" WITH GRANT OPTION;",
        "REVOKE ALL ON FUNCTION dbm_s.f(a integer) FROM PUBLIC;",
        "ALTER DEFAULT PRIVILEGES FOR ROLE dbm_acl_owner IN SCHEMA dbm_s GRANT ALL ON TABLES  TO dbm_acl_writer WITH GRANT OPTION;",
    ] {
        assert!(built.contains(needle), "missing {needle:?} in\n{built}");
    }

    // Replaying them on objects that only have their owner's defaults gives
    // the same ACLs, items, grantors and order included.
    let blocks = catalog_commands(&db.source, pair.target.major()).await;
    let script: String = blocks
        .iter()
        .flat_map(|b| b.commands.iter())
        .map(|c| format!("{c}\n"))
        .collect();
    testkit::execute(&db.target, &script)
        .await
        .unwrap_or_else(|e| panic!("replaying on the target: {e:?}\n{script}"));
    let (src, tgt) = (
        acl_snapshot(&db.source).await,
        acl_snapshot(&db.target).await,
    );
    assert_eq!(src, tgt, "source (left) vs target (right) ACLs");
    assert_eq!(canonical(dumped_acl_blocks(&db.target)), dumped);

    for b in &blocks {
        // Every non-empty block is a proper list of statements.
        assert!(
            b.commands.iter().all(|c| c.ends_with(';')),
            "{}: {:?}",
            b.what,
            b.commands
        );
    }
    pair.drop_db(&db).await;
}
