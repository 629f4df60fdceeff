//! `migrate --all-databases`: a whole cluster in one run, against this
//! binary's own pair of throwaway servers (databases are cluster-wide, so
//! every test here works on the whole pair, one at a time).

mod common;

use common::*;
use pg_dbmigrator::testkit;

/// The pair's databases are the test's: one test at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The source cluster of the issue: a LATIN1 database with C collation, an
/// empty one, user objects in `postgres`, a customized `template1` and a
/// database created from it, an application database, and one to exclude.
async fn source_cluster(pair: &testkit::Pair) {
    let admin = pair.source.admin_conninfo();
    for sql in [
        "CREATE DATABASE latin1db ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0",
        "CREATE DATABASE emptydb",
        "CREATE TABLE in_postgres (id int PRIMARY KEY, note text); INSERT INTO in_postgres VALUES (1, 'kept')",
    ] {
        testkit::execute(&admin, sql).await.unwrap();
    }
    let template1 = pair.source.conninfo("template1");
    testkit::execute(
        &template1,
        "CREATE TABLE tmpl_audit (at timestamptz DEFAULT now(), what text); \
         CREATE FUNCTION tmpl_hello() RETURNS text LANGUAGE sql AS 'SELECT ''hi'''",
    )
    .await
    .unwrap();
    for sql in [
        "CREATE DATABASE fromtmpl",
        "CREATE DATABASE appdb TEMPLATE template0",
        "CREATE DATABASE skipme_1 TEMPLATE template0",
    ] {
        testkit::execute(&admin, sql).await.unwrap();
    }
    testkit::execute(
        &pair.source.conninfo("fromtmpl"),
        "INSERT INTO tmpl_audit (what) SELECT 'row ' || g FROM generate_series(1, 50) g",
    )
    .await
    .unwrap();
    testkit::execute(
        &pair.source.conninfo("latin1db"),
        "CREATE TABLE names (id serial PRIMARY KEY, name text); \
         INSERT INTO names (name) VALUES ('Müller'), ('Ørsted'), ('Zoë')",
    )
    .await
    .unwrap();
    testkit::execute(
        &pair.source.conninfo("appdb"),
        "CREATE SCHEMA shop; \
         CREATE TABLE shop.items (id bigserial PRIMARY KEY, name text NOT NULL, price numeric); \
         INSERT INTO shop.items (name, price) SELECT 'item ' || g, g / 10.0 FROM generate_series(1, 20000) g; \
         CREATE INDEX ON shop.items (name); \
         SELECT lo_from_bytea(0, 'a large object')",
    )
    .await
    .unwrap();
    testkit::execute(
        &pair.source.conninfo("skipme_1"),
        "CREATE TABLE not_wanted (id int)",
    )
    .await
    .unwrap();
}

fn migrate_args<'a>(pair_src: &'a str, pair_dst: &'a str, dir: &'a str) -> Vec<&'a str> {
    vec![
        "migrate",
        "--source",
        pair_src,
        "--target",
        pair_dst,
        "--all-databases",
        "--exclude-database",
        "skipme_*",
        "--dump-path",
        dir,
        "--jobs",
        "2",
    ]
}

async fn database_names(conninfo: &str) -> Vec<String> {
    testkit::client(conninfo)
        .await
        .query(
            "SELECT datname::text FROM pg_database WHERE datname <> 'template0' ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Every migrated database is the same on both sides: schema, rows.
async fn assert_same_databases(pair: &testkit::Pair, names: &[&str]) {
    for name in names {
        let (s, t) = (pair.source.conninfo(name), pair.target.conninfo(name));
        assert_same_schema(&s, &t);
        assert_eq!(
            content_digest(&s).await,
            content_digest(&t).await,
            "rows of database {name}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_cluster_in_one_run_killed_between_two_databases_then_resumed() {
    let _one = ONE_AT_A_TIME.lock().await;
    let pair = testkit::shared_pair();
    source_cluster(pair).await;
    let (src, dst) = (pair.source.admin_conninfo(), pair.target.admin_conninfo());
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("cluster");
    let w = work.to_str().unwrap();

    // Killed right after the first database's migration recorded itself
    // complete, before the cluster's token says so.
    let out = command(&migrate_args(&src, &dst, w))
        .env("PG_DBMIGRATOR_TEST_KILL_AT", "after:complete#1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), None, "killed: {}", text(&out.stderr));

    let mut args = migrate_args(&src, &dst, w);
    args.extend(["--resume", "--json"]);
    let out = run_async(&args).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let report = report_of(&out.stdout);
    let migrated: Vec<&str> = report["databases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        migrated.first(),
        Some(&"template1"),
        "template1 first: {migrated:?}"
    );
    let mut sorted = migrated.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        [
            "appdb",
            "emptydb",
            "fromtmpl",
            "latin1db",
            "postgres",
            "template1"
        ],
        "every database but template0 and the excluded one"
    );
    assert!(!database_names(&dst).await.contains(&"skipme_1".to_string()));
    assert_same_databases(pair, &sorted).await;

    // Created as the source has it: encoding and collation.
    let props = |c: String| async move {
        let r = testkit::client(&c)
            .await
            .query_one(
                "SELECT pg_encoding_to_char(encoding)::text, datcollate::text FROM pg_database WHERE datname = 'latin1db'",
                &[],
            )
            .await
            .unwrap();
        (r.get::<_, String>(0), r.get::<_, String>(1))
    };
    assert_eq!(
        props(dst.clone()).await,
        ("LATIN1".to_string(), "C".to_string())
    );
    assert_eq!(props(src.clone()).await, props(dst.clone()).await);

    // A finished cluster migration, resumed, is a success that does nothing.
    let out = run_async(&args).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(report_of(&out.stdout)["already_complete"], true);

    // Run again without --resume: refused, with both ways out.
    let out = run_async(&migrate_args(&src, &dst, w)).await;
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("--resume") && err.contains("--force-clean"),
        "{err}"
    );
}
