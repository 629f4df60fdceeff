//! Variants of object kinds that corpora nobody here wrote (PostgreSQL's
//! regression database, other projects' test suites) found wanting: each
//! shape in at least two forms, migrated whole with `--roles`, then `pg_dump
//! -s` of both sides compared and the catalogs read where pg_dump does not
//! print what matters (persistence, population, compression).

mod common;

use common::*;
use pg_dbmigrator::pg::quote::ident;
use pg_dbmigrator::testkit::{self, Cluster, ClusterOptions, Server, TestDb};

/// Migrate `db` into a new target database with `--roles`; `pg_dump -s` of
/// both sides must be identical. Returns the target's conninfo.
async fn migrate_and_compare(db: &TestDb, extra: &[&str]) -> String {
    let target = other_target_db(db, "to");
    let mut args = vec!["--roles"];
    args.extend_from_slice(extra);
    migrate_clean(&db.source, &target, &args).await;
    let (a, b) = (schema_dump(&db.source), schema_dump(&target));
    assert!(a == b, "pg_dump -s differs:\n{}", diff_hint(&a, &b));
    target
}

/// One column per row of `sql`'s result, on both sides, must be equal.
async fn same_rows(source: &str, target: &str, sql: &str) -> Vec<String> {
    let read = |ci: String| async move {
        testkit::client(&ci)
            .await
            .query(sql, &[])
            .await
            .unwrap_or_else(|e| panic!("{sql}: {}", testkit_message(&e)))
            .iter()
            .map(|r| r.get::<_, String>(0))
            .collect::<Vec<String>>()
    };
    let (a, b) = (
        read(source.to_string()).await,
        read(target.to_string()).await,
    );
    assert_eq!(a, b, "{sql}");
    a
}

fn testkit_message(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.message().to_string())
        .unwrap_or_else(|| e.to_string())
}

/// Item 1: role names with a double quote or a backslash, in every place a
/// privilege list or an owner names them.
#[tokio::test]
async fn role_names_with_quotes_and_backslashes_in_privileges() {
    let pair = testkit::shared_pair();
    let db = pair.fresh_db("odd_roles").await;
    let quoted = "regress_quoted  \\\"\" role";
    let slash = "dbm back\\slash";
    let admin = pair.source.admin_conninfo();
    for r in [quoted, slash] {
        let _ = testkit::execute(&admin, &format!("CREATE ROLE {}", ident(r))).await;
    }
    let (q, s) = (ident(quoted), ident(slash));
    testkit::execute(
        &db.source,
        &format!(
            "ALTER SCHEMA public OWNER TO {q};
             CREATE SCHEMA app AUTHORIZATION {s};
             CREATE TABLE app.t (id int, note text);
             ALTER TABLE app.t OWNER TO {s};
             GRANT SELECT ON app.t TO {q};
             GRANT UPDATE (note) ON app.t TO {q} WITH GRANT OPTION;
             GRANT USAGE ON SCHEMA app TO {q};
             SET ROLE {q};
             GRANT UPDATE (note) ON app.t TO {s};
             RESET ROLE;
             CREATE FUNCTION app.f() RETURNS int LANGUAGE sql AS 'SELECT 1';
             REVOKE EXECUTE ON FUNCTION app.f() FROM PUBLIC;
             GRANT EXECUTE ON FUNCTION app.f() TO {q};
             CREATE SEQUENCE app.s;
             GRANT USAGE ON SEQUENCE app.s TO {q};
             ALTER DEFAULT PRIVILEGES FOR ROLE {s} IN SCHEMA app GRANT SELECT ON TABLES TO {q};
             GRANT CREATE ON SCHEMA public TO {s};
             INSERT INTO app.t VALUES (1, 'one');"
        ),
    )
    .await
    .unwrap();
    let target = migrate_and_compare(&db, &[]).await;
    let acls = same_rows(
        &db.source,
        &target,
        "SELECT c.relname || ' ' || c.relacl::text || ' ' || coalesce(
                (SELECT string_agg(a.attname || a.attacl::text, ',') FROM pg_attribute a
                  WHERE a.attrelid = c.oid AND a.attacl IS NOT NULL), '')
           FROM pg_class c WHERE c.relnamespace = 'app'::regnamespace AND c.relacl IS NOT NULL
         UNION ALL SELECT nspname || ' ' || pg_get_userbyid(nspowner) || ' ' || nspacl::text
           FROM pg_namespace WHERE nspname IN ('public', 'app')
         UNION ALL SELECT defaclacl::text FROM pg_default_acl
         ORDER BY 1",
    )
    .await;
    assert!(
        acls.iter().any(|a| a.contains("regress_quoted"))
            && acls.iter().any(|a| a.contains("slash")),
        "{acls:?}"
    );
}

/// Item 2: a generated column that an inheritance child declares itself
/// (created on its own, then INHERIT; and created in another column order,
/// then INHERIT), and a partition's generated column.
#[tokio::test]
async fn generated_columns_of_children_and_partitions() {
    let db = testkit::shared_pair().fresh_db("gen_children").await;
    testkit::execute(
        &db.source,
        "CREATE TABLE p (a int, b int GENERATED ALWAYS AS (a * 2) STORED);
         CREATE TABLE c1 (a int, b int GENERATED ALWAYS AS (a * 2) STORED);
         ALTER TABLE c1 INHERIT p;
         CREATE TABLE c2 (b int GENERATED ALWAYS AS (a * 2) STORED, a int, extra text);
         ALTER TABLE c2 INHERIT p;
         CREATE TABLE pp (a int, b int GENERATED ALWAYS AS (a + 1) STORED) PARTITION BY RANGE (a);
         CREATE TABLE pp1 PARTITION OF pp FOR VALUES FROM (0) TO (100);
         CREATE TABLE pp2 (a int, b int GENERATED ALWAYS AS (a + 1) STORED);
         ALTER TABLE pp ATTACH PARTITION pp2 FOR VALUES FROM (100) TO (200);
         INSERT INTO p (a) VALUES (1); INSERT INTO c1 (a) VALUES (2);
         INSERT INTO c2 (a, extra) VALUES (3, 'x'); INSERT INTO pp (a) VALUES (5), (150);",
    )
    .await
    .unwrap();
    let target = migrate_and_compare(&db, &[]).await;
    let rows = same_rows(
        &db.source,
        &target,
        "SELECT tableoid::regclass || ' ' || a || ' ' || b FROM p
         UNION ALL SELECT tableoid::regclass || ' ' || a || ' ' || b FROM pp ORDER BY 1",
    )
    .await;
    assert_eq!(
        rows,
        ["c1 2 4", "c2 3 6", "p 1 2", "pp1 5 6", "pp2 150 151"]
    );
    // The child created in its own column order keeps it.
    same_rows(
        &db.source,
        &target,
        "SELECT string_agg(format('%s:%s:%s:%s', attname, attislocal, attinhcount, attgenerated), ',' ORDER BY attnum)
           FROM pg_attribute WHERE attrelid = 'c2'::regclass AND attnum > 0",
    )
    .await;
}

/// Item 3 and 11: materialized views left unpopulated where pg_dump leaves
/// them: over an unpopulated one (directly and through a view), and those
/// `--exclude-table-data` names; one over another populated one is
/// refreshed after it, whatever their names' order.
#[tokio::test]
async fn materialized_views_populated_as_on_the_source() {
    let db = testkit::shared_pair().fresh_db("matviews").await;
    testkit::execute(
        &db.source,
        "CREATE TABLE t (x int); INSERT INTO t SELECT generate_series(1, 10);
         CREATE MATERIALIZED VIEW base AS SELECT x FROM t;
         CREATE MATERIALIZED VIEW on_base AS SELECT sum(x) AS s FROM base;
         CREATE VIEW v AS SELECT x FROM base;
         CREATE MATERIALIZED VIEW through_view AS SELECT count(*) AS n FROM v;
         REFRESH MATERIALIZED VIEW base WITH NO DATA;
         CREATE MATERIALIZED VIEW z_low AS SELECT x FROM t WHERE x < 5;
         CREATE VIEW z_view AS SELECT x FROM z_low;
         CREATE MATERIALIZED VIEW a_high AS SELECT max(x) AS m FROM z_view;
         CREATE MATERIALIZED VIEW skipped AS SELECT x FROM t;
         CREATE MATERIALIZED VIEW over_skipped AS SELECT count(*) AS n FROM skipped;",
    )
    .await
    .unwrap();
    let target = migrate_and_compare(&db, &["--exclude-table-data", "skipped"]).await;
    let populated =
        "SELECT relname || ' ' || relispopulated FROM pg_class WHERE relkind = 'm' ORDER BY 1";
    let read = |ci: String| async move {
        testkit::client(&ci)
            .await
            .query(populated, &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get::<_, String>(0))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        read(target.clone()).await,
        [
            "a_high true",
            "base false",
            "on_base false",
            "over_skipped false",
            "skipped false",
            "through_view false",
            "z_low true"
        ]
    );
    same_rows(
        &db.source,
        &target,
        "SELECT 'a_high ' || m FROM a_high UNION ALL SELECT 'z_low ' || count(*) FROM z_low",
    )
    .await;
}

/// Item 4: privileges changed on objects the system or an extension created.
#[tokio::test]
async fn privileges_on_built_in_and_extension_objects() {
    let pair = testkit::shared_pair();
    let db = pair.fresh_db("builtin_acl").await;
    let _ = testkit::execute(&pair.source.admin_conninfo(), "CREATE ROLE dbm_monitor").await;
    testkit::execute(
        &db.source,
        "CREATE EXTENSION pg_stat_statements;
         REVOKE EXECUTE ON FUNCTION pg_stat_statements(boolean) FROM PUBLIC;
         GRANT EXECUTE ON FUNCTION pg_stat_statements(boolean) TO dbm_monitor;
         REVOKE SELECT ON pg_stat_statements FROM PUBLIC;
         REVOKE USAGE ON LANGUAGE plpgsql FROM PUBLIC;
         GRANT USAGE ON LANGUAGE plpgsql TO dbm_monitor;
         REVOKE EXECUTE ON FUNCTION pg_catalog.pg_sleep(double precision) FROM PUBLIC;
         GRANT SELECT ON pg_catalog.pg_authid TO dbm_monitor;
         GRANT SELECT (rolname) ON pg_catalog.pg_authid TO dbm_monitor;
         REVOKE SELECT ON pg_catalog.pg_stat_activity FROM PUBLIC;",
    )
    .await
    .unwrap();
    // The role those grants name is needed on the target: refused without
    // --roles, before anything.
    let err = migrate_refused(&db.source, &other_target_db(&db, "refused"), &[]).await;
    assert!(
        err.contains("dbm_monitor") && err.contains("--roles"),
        "{err}"
    );
    let target = migrate_and_compare(&db, &[]).await;
    let acls = same_rows(
        &db.source,
        &target,
        "SELECT p.oid::regprocedure || ' ' || coalesce(p.proacl::text, '-') FROM pg_proc p
          WHERE p.proname IN ('pg_stat_statements', 'pg_sleep')
         UNION ALL SELECT lanname || ' ' || coalesce(lanacl::text, '-') FROM pg_language
         UNION ALL SELECT relname || ' ' || coalesce(relacl::text, '-') FROM pg_class
          WHERE relname IN ('pg_authid', 'pg_stat_activity', 'pg_stat_statements')
         UNION ALL SELECT 'rolname ' || attacl::text FROM pg_attribute
          WHERE attrelid = 'pg_authid'::regclass AND attname = 'rolname'
         ORDER BY 1",
    )
    .await;
    assert!(
        acls.iter()
            .any(|a| a.starts_with("plpgsql") && a.contains("dbm_monitor")),
        "{acls:?}"
    );
}

/// Item 5: shell types nothing defined, with owners and comments.
#[tokio::test]
async fn shell_types_with_owners_and_comments() {
    let pair = testkit::shared_pair();
    let db = pair.fresh_db("shells").await;
    let _ = testkit::execute(&pair.source.admin_conninfo(), "CREATE ROLE dbm_shell_owner").await;
    testkit::execute(
        &db.source,
        "CREATE TYPE lonely;
         COMMENT ON TYPE lonely IS 'never defined';
         CREATE SCHEMA other;
         CREATE TYPE other.\"Also Lonely\";
         ALTER TYPE other.\"Also Lonely\" OWNER TO dbm_shell_owner;",
    )
    .await
    .unwrap();
    let target = migrate_and_compare(&db, &[]).await;
    let shells = same_rows(
        &db.source,
        &target,
        "SELECT format('%s %s %s %s', t.oid::regtype, t.typtype, pg_get_userbyid(t.typowner),
                       coalesce(obj_description(t.oid, 'pg_type'), '-'))
           FROM pg_type t WHERE t.typtype = 'p' AND t.oid >= 16384 ORDER BY 1",
    )
    .await;
    assert_eq!(shells.len(), 2, "{shells:?}");
}

/// Item 6: compression on a materialized view's column, and on inherited
/// columns whose own setting differs from the parent's (a child and a
/// partition).
#[tokio::test]
async fn column_compression_of_matviews_and_inherited_columns() {
    let db = testkit::shared_pair().fresh_db("compression").await;
    testkit::execute(
        &db.source,
        "CREATE TABLE p (x text COMPRESSION lz4, y text);
         CREATE TABLE c () INHERITS (p);
         ALTER TABLE c ALTER COLUMN x SET COMPRESSION pglz;
         ALTER TABLE c ALTER COLUMN y SET COMPRESSION lz4;
         CREATE TABLE pp (k int, x text COMPRESSION pglz) PARTITION BY LIST (k);
         CREATE TABLE pp1 PARTITION OF pp FOR VALUES IN (1);
         ALTER TABLE pp1 ALTER COLUMN x SET COMPRESSION lz4;
         CREATE MATERIALIZED VIEW mv AS SELECT x, y FROM p;
         ALTER MATERIALIZED VIEW mv ALTER COLUMN x SET COMPRESSION lz4;
         INSERT INTO c VALUES (repeat('a', 10000), 'y'); INSERT INTO pp VALUES (1, 'z');",
    )
    .await
    .unwrap();
    let target = migrate_and_compare(&db, &[]).await;
    let settings = same_rows(
        &db.source,
        &target,
        "SELECT format('%s.%s %s', attrelid::regclass, attname, coalesce(nullif(attcompression, ''), '-'))
           FROM pg_attribute WHERE attrelid IN ('p'::regclass, 'c'::regclass, 'pp'::regclass, 'pp1'::regclass, 'mv'::regclass)
            AND attnum > 0 ORDER BY 1",
    )
    .await;
    assert!(settings.contains(&"c.x p".to_string()), "{settings:?}");
    assert!(settings.contains(&"mv.x l".to_string()), "{settings:?}");
}

/// Item 6, the other side: lz4 columns into a server built without lz4 (the
/// npm builds of PostgreSQL 17) are refused before anything, naming them and
/// the flag; with `--no-toast-compression` they take the target's default.
#[tokio::test]
async fn lz4_into_a_server_without_lz4_is_refused_first() {
    let server = tokio::task::spawn_blocking(|| {
        let bin =
            testkit::ensure_embedded_major(17).unwrap_or_else(|e| panic!("PostgreSQL 17: {e}"));
        Cluster::start(&ClusterOptions {
            bin_dir: Some(bin),
            ..Default::default()
        })
        .map(Server::from_cluster)
        .unwrap_or_else(|e| panic!("PostgreSQL 17 cluster: {e}"))
    })
    .await
    .unwrap();
    let db = testkit::fresh_db_on(&testkit::shared_pair().source, &server, "no_lz4").await;
    testkit::execute(
        &db.source,
        "CREATE TABLE t (a text COMPRESSION lz4, b text);
         CREATE MATERIALIZED VIEW mv AS SELECT b FROM t;
         ALTER MATERIALIZED VIEW mv ALTER COLUMN b SET COMPRESSION lz4;
         INSERT INTO t VALUES ('a', 'b');",
    )
    .await
    .unwrap();
    let target = server.conninfo("no_lz4_up");
    let err = migrate_refused(&db.source, &target, &[]).await;
    assert!(
        err.contains("built without lz4")
            && err.contains("public.t.a")
            && err.contains("public.mv.b")
            && err.contains("--no-toast-compression"),
        "{err}"
    );
    let exists = testkit::query_scalar(
        &server.admin_conninfo(),
        "SELECT count(*) FROM pg_database WHERE datname = 'no_lz4_up'",
    )
    .await;
    assert_eq!(exists, "0", "the refused run created the target database");
    migrate_clean(&db.source, &target, &["--no-toast-compression"]).await;
    let methods = testkit::query_scalar(
        &target,
        "SELECT string_agg(coalesce(nullif(attcompression, ''), '-'), ',' ORDER BY attrelid, attnum)
           FROM pg_attribute WHERE attrelid IN ('t'::regclass, 'mv'::regclass) AND attnum > 0",
    )
    .await;
    assert_eq!(methods, "-,-,-");
    // Through an archive: restore refuses the same way, and takes the flag.
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("archive");
    let archive = archive.to_str().unwrap();
    let out = run_async(&["dump", "--source", &db.source, "--dump-path", archive]).await;
    assert_eq!(out.status.code(), Some(0), "dump: {}", text(&out.stderr));
    let restored = server.conninfo("no_lz4_restored");
    let out = run_async(&["restore", "--target", &restored, "--dump-path", archive]).await;
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("built without lz4") && err.contains("public.t.a"),
        "{err}"
    );
    let out = run_async(&[
        "restore",
        "--target",
        &restored,
        "--dump-path",
        archive,
        "--no-toast-compression",
    ])
    .await;
    assert_eq!(out.status.code(), Some(0), "restore: {}", text(&out.stderr));
    assert_eq!(
        testkit::query_scalar(&restored, "SELECT a || b FROM t").await,
        "ab"
    );
    server.cluster().unwrap().stop();
}

/// Item 7: comments on domain constraints, NOT VALID and valid, and on a
/// NOT VALID table constraint.
#[tokio::test]
async fn comments_on_not_valid_constraints() {
    let db = testkit::shared_pair().fresh_db("constraint_comments").await;
    testkit::execute(
        &db.source,
        "CREATE DOMAIN d1 AS int;
         ALTER DOMAIN d1 ADD CONSTRAINT pos CHECK (VALUE > 0) NOT VALID;
         COMMENT ON CONSTRAINT pos ON DOMAIN d1 IS 'positive, checked later';
         CREATE DOMAIN d2 AS text CONSTRAINT short CHECK (length(VALUE) < 10);
         COMMENT ON CONSTRAINT short ON DOMAIN d2 IS 'short';
         CREATE TABLE t (a int);
         ALTER TABLE t ADD CONSTRAINT small CHECK (a < 100) NOT VALID;
         COMMENT ON CONSTRAINT small ON t IS 'small, later';",
    )
    .await
    .unwrap();
    let target = migrate_and_compare(&db, &[]).await;
    let comments = same_rows(
        &db.source,
        &target,
        "SELECT conname || ' ' || convalidated || ' ' || obj_description(oid, 'pg_constraint')
           FROM pg_constraint WHERE conname IN ('pos', 'short', 'small') ORDER BY 1",
    )
    .await;
    assert_eq!(comments.len(), 3, "{comments:?}");
}

/// Item 8: identity sequences whose persistence differs from their table's,
/// both ways.
#[tokio::test]
async fn identity_sequences_keep_their_own_persistence() {
    let db = testkit::shared_pair()
        .fresh_db("identity_persistence")
        .await;
    testkit::execute(
        &db.source,
        "CREATE UNLOGGED TABLE ul (id int GENERATED ALWAYS AS IDENTITY, v text);
         ALTER SEQUENCE ul_id_seq SET LOGGED;
         CREATE TABLE lg (id bigint GENERATED BY DEFAULT AS IDENTITY, v text);
         ALTER SEQUENCE lg_id_seq SET UNLOGGED;
         CREATE UNLOGGED TABLE both_ul (id int GENERATED ALWAYS AS IDENTITY);
         INSERT INTO ul (v) VALUES ('a'), ('b'); INSERT INTO lg (v) VALUES ('c');",
    )
    .await
    .unwrap();
    let target = migrate_and_compare(&db, &[]).await;
    let persistence = same_rows(
        &db.source,
        &target,
        "SELECT format('%s %s', relname, relpersistence) FROM pg_class WHERE relkind IN ('r', 'S') AND relnamespace = 'public'::regnamespace ORDER BY 1",
    )
    .await;
    assert!(
        persistence.contains(&"ul_id_seq p".to_string()),
        "{persistence:?}"
    );
    assert!(
        persistence.contains(&"lg_id_seq u".to_string()),
        "{persistence:?}"
    );
    same_rows(
        &db.source,
        &target,
        "SELECT last_value::text FROM ul_id_seq UNION ALL SELECT last_value::text FROM lg_id_seq",
    )
    .await;
}
