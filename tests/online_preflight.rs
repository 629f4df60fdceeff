//! The online preflight against real servers: replica identity problems
//! reported (and nothing changed), `--fix-replica-identity` choices applied
//! and restored (source and target, twice), names already taken, a role
//! that may not replicate, the target's `session_replication_role`
//! privilege, and unlogged tables.

use pg_dbmigrator::config::Filters;
use pg_dbmigrator::pg::catalog::{self, TableInfo};
use pg_dbmigrator::pg::quote::ident;
use pg_dbmigrator::replication::preflight::{
    self, NewIdentity, ReplicaIdentityFix, SourceChecks, SourceReport,
};
use pg_dbmigrator::testkit::{self, TestDb};
use pg_dbmigrator::MigrationError;
use tokio_postgres::{Client, NoTls};

async fn tables(c: &Client) -> Vec<TableInfo> {
    catalog::list_tables(c, &Filters::default().compile().unwrap())
        .await
        .unwrap()
}

async fn check(
    c: &Client,
    tables: &[TableInfo],
    names: &str,
    resuming: bool,
    fix: bool,
) -> pg_dbmigrator::Result<SourceReport> {
    preflight::check_source(
        c,
        &SourceChecks {
            tables,
            slot_name: names,
            publication_name: names,
            resuming,
            fix_replica_identity: fix,
            large_objects: true,
        },
    )
    .await
}

fn preflight_message(r: pg_dbmigrator::Result<SourceReport>) -> String {
    match r {
        Err(MigrationError::Preflight(m)) => m,
        Err(e) => panic!("expected a preflight error, got {e}"),
        Ok(r) => panic!("expected a preflight error, got {r:?}"),
    }
}

/// `relreplident` of a table, and its identity index if any.
async fn identity(conninfo: &str, table: &str) -> String {
    testkit::query_scalar(
        conninfo,
        &format!(
            "SELECT c.relreplident::text || coalesce(':' || (SELECT ic.relname FROM pg_index i \
               JOIN pg_class ic ON ic.oid = i.indexrelid \
              WHERE i.indrelid = c.oid AND i.indisreplident), '') \
               FROM pg_class c WHERE c.oid = '{table}'::regclass"
        ),
    )
    .await
}

/// A session as `role` (password auth over TCP, as the test servers use).
async fn connect_as(conninfo: &str, role: &str, password: &str) -> Client {
    let mut cfg: tokio_postgres::Config = conninfo.parse().unwrap();
    cfg.user(role).password(password);
    let (client, conn) = cfg.connect(NoTls).await.expect("connect as test role");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// A LOGIN role unique to this test database (roles are cluster-wide).
async fn make_role(conninfo: &str, db: &TestDb, suffix: &str, attrs: &str) -> String {
    let role = format!("{}_{suffix}", db.name);
    testkit::execute(
        conninfo,
        &format!("CREATE ROLE {} LOGIN PASSWORD 'pw' {attrs}", ident(&role)),
    )
    .await
    .unwrap();
    role
}

async fn drop_role(conninfo: &str, role: &str) {
    let r = ident(role);
    let _ = testkit::execute(conninfo, &format!("DROP OWNED BY {r}; DROP ROLE {r}")).await;
}

#[tokio::test]
async fn missing_replica_identity_is_refused_and_nothing_changes() {
    let pair = testkit::shared_pair();
    let db = pair.fresh_db("pf_refuse").await;
    testkit::execute(
        &db.source,
        "CREATE TABLE no_pk (a int, b text);
         CREATE TABLE \"Nothing\" (id int PRIMARY KEY) ;
         ALTER TABLE \"Nothing\" REPLICA IDENTITY NOTHING;
         CREATE TABLE ok_pk (id int PRIMARY KEY);
         CREATE TABLE ok_full (a int);
         ALTER TABLE ok_full REPLICA IDENTITY FULL;
         CREATE TABLE deferred_pk (id int PRIMARY KEY DEFERRABLE);
         CREATE TABLE parted (a int, b text) PARTITION BY RANGE (a);
         CREATE TABLE parted_1 PARTITION OF parted FOR VALUES FROM (0) TO (10);",
    )
    .await
    .unwrap();
    let src = testkit::client(&db.source).await;
    let t = tables(&src).await;
    let before = testkit::query_scalar(
        &db.source,
        "SELECT string_agg(relname || '=' || relreplident::text, ',' ORDER BY relname) FROM pg_class WHERE relkind = 'r' AND relnamespace = 'public'::regnamespace",
    )
    .await;

    let msg = preflight_message(check(&src, &t, "pf_refuse", false, false).await);
    for needle in [
        "public.no_pk",
        "public.\"Nothing\"",
        "public.parted_1",
        // A deferrable primary key cannot identify rows for logical replication.
        "public.deferred_pk (REPLICA IDENTITY DEFAULT, but the primary key is deferrable",
        "ALTER TABLE public.no_pk REPLICA IDENTITY FULL;",
        // The primary key serves once the identity is DEFAULT again.
        "ALTER TABLE public.\"Nothing\" REPLICA IDENTITY DEFAULT;",
        "--fix-replica-identity",
    ] {
        assert!(msg.contains(needle), "{needle:?} missing from:\n{msg}");
    }
    assert!(!msg.contains("ok_pk") && !msg.contains("ok_full"), "{msg}");
    assert!(
        msg.contains("1 problem(s)"),
        "one problem, all tables:\n{msg}"
    );

    let after = testkit::query_scalar(
        &db.source,
        "SELECT string_agg(relname || '=' || relreplident::text, ',' ORDER BY relname) FROM pg_class WHERE relkind = 'r' AND relnamespace = 'public'::regnamespace",
    )
    .await;
    assert_eq!(before, after, "check_source changed nothing");
    assert!(
        after.contains("no_pk=d") && after.contains("Nothing=n"),
        "{after}"
    );
    pair.drop_db(&db).await;
}

#[tokio::test]
async fn fixes_are_chosen_applied_and_restored() {
    let pair = testkit::shared_pair();
    let db = pair.fresh_db("pf_fix").await;
    testkit::execute(
        &db.source,
        "CREATE TABLE with_key (a int NOT NULL, b int NOT NULL, c int NOT NULL, d text);
         CREATE UNIQUE INDEX with_key_ab ON with_key (a, b);
         CREATE UNIQUE INDEX with_key_c ON with_key (c);
         CREATE UNIQUE INDEX with_key_partial ON with_key (a) WHERE d IS NULL;
         CREATE UNIQUE INDEX with_key_expr ON with_key ((a + 1));
         CREATE TABLE nullable_key (a int, b text);
         CREATE UNIQUE INDEX nullable_key_a ON nullable_key (a);
         CREATE TABLE nothing (a int NOT NULL);
         CREATE UNIQUE INDEX nothing_a ON nothing (a);
         ALTER TABLE nothing REPLICA IDENTITY NOTHING;
         CREATE TABLE lost_index (a int NOT NULL);
         CREATE UNIQUE INDEX lost_index_a ON lost_index (a);
         ALTER TABLE lost_index REPLICA IDENTITY USING INDEX lost_index_a;
         DROP INDEX lost_index_a;
         CREATE TABLE fine (id int PRIMARY KEY);",
    )
    .await
    .unwrap();
    let src = testkit::client(&db.source).await;
    let t = tables(&src).await;
    let report = check(&src, &t, "pf_fix", false, true)
        .await
        .expect("preflight passes with fixes");
    let mut fixes = report.fixes.clone();
    fixes.sort_by(|a, b| a.name.cmp(&b.name));
    let fix = |name: &str, original: &str, new: NewIdentity| ReplicaIdentityFix {
        schema: "public".into(),
        name: name.into(),
        original: original.into(),
        original_index: None,
        new,
    };
    assert_eq!(
        fixes,
        vec![
            fix("lost_index", "i", NewIdentity::Full),
            fix("nothing", "n", NewIdentity::UsingIndex("nothing_a".into())),
            fix("nullable_key", "d", NewIdentity::Full),
            // Fewest columns first: with_key_c beats with_key_ab; partial and expression indexes never qualify.
            fix(
                "with_key",
                "d",
                NewIdentity::UsingIndex("with_key_c".into())
            ),
        ]
    );
    assert!(
        report
            .warnings
            .iter()
            .any(|w| w.contains("public.nullable_key gets REPLICA IDENTITY FULL")),
        "{:?}",
        report.warnings
    );
    // Chosen, not applied.
    assert_eq!(identity(&db.source, "with_key").await, "d");

    preflight::apply_replica_identity_fixes(&src, &fixes)
        .await
        .unwrap();
    preflight::apply_replica_identity_fixes(&src, &fixes)
        .await
        .unwrap();
    assert_eq!(identity(&db.source, "with_key").await, "i:with_key_c");
    assert_eq!(identity(&db.source, "nothing").await, "i:nothing_a");
    assert_eq!(identity(&db.source, "nullable_key").await, "f");
    assert_eq!(identity(&db.source, "lost_index").await, "f");
    // Now nothing is missing any more.
    let again = check(&src, &t, "pf_fix", false, true).await.unwrap();
    assert!(again.fixes.is_empty(), "{:?}", again.fixes);

    // The target's schema copy carries what we set; one table never made it there.
    testkit::execute(
        &db.target,
        "CREATE TABLE with_key (a int NOT NULL, b int NOT NULL, c int NOT NULL, d text);
         CREATE UNIQUE INDEX with_key_c ON with_key (c);
         ALTER TABLE with_key REPLICA IDENTITY USING INDEX with_key_c;
         CREATE TABLE nullable_key (a int, b text);
         ALTER TABLE nullable_key REPLICA IDENTITY FULL;
         CREATE TABLE nothing (a int NOT NULL);
         CREATE UNIQUE INDEX nothing_a ON nothing (a);
         ALTER TABLE nothing REPLICA IDENTITY USING INDEX nothing_a;",
    )
    .await
    .unwrap();
    let dst = testkit::client(&db.target).await;
    for _ in 0..2 {
        preflight::restore_replica_identities(&src, &fixes)
            .await
            .unwrap();
        preflight::restore_replica_identities(&dst, &fixes)
            .await
            .unwrap();
        for conninfo in [&db.source, &db.target] {
            assert_eq!(identity(conninfo, "with_key").await, "d");
            assert_eq!(identity(conninfo, "nothing").await, "n");
            assert_eq!(identity(conninfo, "nullable_key").await, "d");
        }
        // Its original index is gone: DEFAULT.
        assert_eq!(identity(&db.source, "lost_index").await, "d");
        assert_eq!(identity(&db.source, "fine").await, "d");
    }

    // An original USING INDEX comes back as that index.
    testkit::execute(
        &db.source,
        "CREATE TABLE by_index (a int NOT NULL);
         CREATE UNIQUE INDEX \"By Index\" ON by_index (a);
         ALTER TABLE by_index REPLICA IDENTITY USING INDEX \"By Index\";",
    )
    .await
    .unwrap();
    let by_index = ReplicaIdentityFix {
        schema: "public".into(),
        name: "by_index".into(),
        original: "i".into(),
        original_index: Some("By Index".into()),
        new: NewIdentity::Full,
    };
    preflight::apply_replica_identity_fixes(&src, std::slice::from_ref(&by_index))
        .await
        .unwrap();
    assert_eq!(identity(&db.source, "by_index").await, "f");
    for _ in 0..2 {
        preflight::restore_replica_identities(&src, std::slice::from_ref(&by_index))
            .await
            .unwrap();
        assert_eq!(identity(&db.source, "by_index").await, "i:By Index");
    }
    pair.drop_db(&db).await;
}

#[tokio::test]
async fn names_already_taken_are_refused_unless_resuming() {
    let pair = testkit::shared_pair();
    let db = pair.fresh_db("pf_names").await;
    let name = format!("{}_obj", db.name);
    testkit::execute(
        &db.source,
        &format!(
            "CREATE TABLE t (id int PRIMARY KEY); CREATE PUBLICATION {} FOR TABLE t",
            ident(&name)
        ),
    )
    .await
    .unwrap();
    let src = testkit::client(&db.source).await;
    let t = tables(&src).await;
    let msg = preflight_message(check(&src, &t, &name, false, false).await);
    assert!(
        msg.contains(&format!("a publication named {name} already exists")),
        "{msg}"
    );
    assert!(
        msg.contains("--force-clean") && msg.contains("cleanup"),
        "{msg}"
    );
    check(&src, &t, &name, true, false)
        .await
        .expect("resuming: the publication is ours");

    // A slot of that name too (slots are cluster-wide: dropped before asserting).
    src.query_one(
        "SELECT pg_create_logical_replication_slot($1, 'pgoutput')::text",
        &[&name],
    )
    .await
    .unwrap();
    let refused = check(&src, &t, &name, false, false).await;
    let resumed = check(&src, &t, &name, true, false).await;
    src.query_one("SELECT pg_drop_replication_slot($1)::text", &[&name])
        .await
        .unwrap();
    let msg = preflight_message(refused);
    assert!(
        msg.contains(&format!("a replication slot named {name} already exists")),
        "{msg}"
    );
    assert!(msg.contains("2 problem(s)"), "{msg}");
    resumed.expect("resuming: the slot is ours");
    pair.drop_db(&db).await;
}

#[tokio::test]
async fn a_role_that_may_not_replicate_is_refused() {
    let pair = testkit::shared_pair();
    let db = pair.fresh_db("pf_role").await;
    let admin = pair.source.admin_conninfo();
    let plain = make_role(&admin, &db, "plain", "").await;
    let repl = make_role(&admin, &db, "repl", "REPLICATION").await;
    testkit::execute(
        &db.source,
        &format!(
            "CREATE TABLE theirs (id int PRIMARY KEY);
             CREATE TABLE mine (id int PRIMARY KEY);
             ALTER TABLE mine OWNER TO {r};
             GRANT CREATE ON DATABASE {d} TO {r};",
            r = ident(&repl),
            d = ident(&db.name)
        ),
    )
    .await
    .unwrap();
    let admin_client = testkit::client(&db.source).await;
    let all = tables(&admin_client).await;

    let c = connect_as(&db.source, &plain, "pw").await;
    let msg = preflight_message(check(&c, &all, "pf_role", false, false).await);
    for needle in [
        format!("the role {plain} may not replicate"),
        format!("ALTER ROLE {plain} REPLICATION"),
        format!("GRANT CREATE ON DATABASE {} TO {plain}", db.name),
        "public.theirs (owner".to_string(),
        "public.mine (owner".to_string(),
        format!("GRANT {repl} TO {plain};"),
        format!("ALTER TABLE public.theirs OWNER TO {plain};"),
        "3 problem(s)".to_string(),
    ] {
        assert!(msg.contains(&needle), "{needle:?} missing from:\n{msg}");
    }
    drop(c);

    // REPLICATION, CREATE on the database and its own table: only `theirs` is refused.
    let c = connect_as(&db.source, &repl, "pw").await;
    let msg = preflight_message(check(&c, &all, "pf_role", false, false).await);
    assert!(msg.contains("1 problem(s)"), "{msg}");
    assert!(
        msg.contains("public.theirs (owner") && !msg.contains("public.mine"),
        "{msg}"
    );
    // `theirs` belongs to a superuser: never suggest joining that role.
    assert!(
        msg.contains(&format!("ALTER TABLE public.theirs OWNER TO {repl};")),
        "{msg}"
    );
    assert!(!msg.contains("GRANT "), "{msg}");
    let mine: Vec<TableInfo> = all.iter().filter(|t| t.name == "mine").cloned().collect();
    let report = check(&c, &mine, "pf_role", false, false)
        .await
        .expect("may replicate");
    assert!(report.server_version >= 120000);
    drop(c);

    pair.drop_db(&db).await;
    drop_role(&admin, &plain).await;
    drop_role(&admin, &repl).await;
}

#[tokio::test]
async fn target_needs_session_replication_role_and_create() {
    let pair = testkit::shared_pair();
    let db = pair.fresh_db("pf_target").await;
    let admin = pair.target.admin_conninfo();
    let role = make_role(&admin, &db, "apply", "").await;

    let su = testkit::client(&db.target).await;
    preflight::check_target(&su)
        .await
        .expect("a superuser passes");

    let c = connect_as(&db.target, &role, "pw").await;
    let err = preflight::check_target(&c)
        .await
        .expect_err("a plain role fails");
    let MigrationError::Preflight(msg) = err else {
        panic!("expected a preflight error, got {err}");
    };
    assert!(msg.contains("session_replication_role"), "{msg}");
    assert!(
        msg.contains(&format!("GRANT CREATE ON DATABASE {} TO {role}", db.name)),
        "{msg}"
    );
    let version: i32 = c
        .query_one("SELECT current_setting('server_version_num')::int4", &[])
        .await
        .unwrap()
        .get(0);
    // The failed SET LOCAL left no transaction open.
    c.batch_execute("CREATE TEMP TABLE still_usable (a int)")
        .await
        .unwrap();
    if version >= 150000 {
        assert!(
            msg.contains(&format!(
                "GRANT SET ON PARAMETER session_replication_role TO {role}"
            )),
            "{msg}"
        );
        testkit::execute(
            &db.target,
            &format!(
                "GRANT SET ON PARAMETER session_replication_role TO {r};
                 GRANT CREATE ON DATABASE {d} TO {r};",
                r = ident(&role),
                d = ident(&db.name)
            ),
        )
        .await
        .unwrap();
        preflight::check_target(&c).await.expect("granted: passes");
    } else {
        assert!(msg.contains("superuser"), "{msg}");
    }
    drop(c);
    pair.drop_db(&db).await;
    drop_role(&admin, &role).await;
}

#[tokio::test]
async fn unlogged_tables_are_reported_not_refused() {
    let pair = testkit::shared_pair();
    let db = pair.fresh_db("pf_unlogged").await;
    testkit::execute(
        &db.source,
        "CREATE UNLOGGED TABLE scratch (a int, b text);
         CREATE TABLE kept (id int PRIMARY KEY);",
    )
    .await
    .unwrap();
    let src = testkit::client(&db.source).await;
    let t = tables(&src).await;
    assert_eq!(t.len(), 2);
    for fix in [false, true] {
        let report = check(&src, &t, "pf_unlogged", false, fix)
            .await
            .expect("passes");
        assert_eq!(report.unlogged, vec!["public.scratch".to_string()]);
        assert!(report.fixes.is_empty(), "{:?}", report.fixes);
        assert!(
            report
                .warnings
                .iter()
                .any(|w| w.contains("unlogged") && w.contains("public.scratch")),
            "{:?}",
            report.warnings
        );
    }
    assert_eq!(identity(&db.source, "scratch").await, "d");
    pair.drop_db(&db).await;
}

#[tokio::test]
async fn every_problem_comes_in_one_error() {
    let pair = testkit::shared_pair();
    // The shared target runs with the default wal_level: a source unfit for logical decoding.
    let db = pair.fresh_db("pf_all").await;
    assert_ne!(
        testkit::query_scalar(&db.target, "SHOW wal_level").await,
        "logical",
        "this test needs a target server without logical WAL (the testkit's default); \
         PG_DBMIGRATOR_TEST_TARGET names one with wal_level=logical"
    );
    testkit::execute(&db.target, "CREATE TABLE no_pk (a int)")
        .await
        .unwrap();
    let c = testkit::client(&db.target).await;
    let t = tables(&c).await;
    let msg = preflight_message(check(&c, &t, "pf_all", false, false).await);
    for needle in [
        "wal_level is `replica`",
        "ALTER SYSTEM SET wal_level = logical",
        "public.no_pk (no primary key",
        "2 problem(s)",
    ] {
        assert!(msg.contains(needle), "{needle:?} missing from:\n{msg}");
    }
    pair.drop_db(&db).await;
}
