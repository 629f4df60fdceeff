//! Full migrations from older majors (PostgreSQL 13 and 14, from the npm
//! embedded-postgres binaries) into the shared PostgreSQL 15 target, with
//! pg_dump 15 as the oracle for both sides.

mod common;

use common::*;
use pg_dbmigrator::testkit::{self, Cluster, ClusterOptions, Server};

const DATA: &str = "
    INSERT INTO core.customers (code, name, mood, qty, pair, span, tags)
         SELECT 'C' || g, 'name ' || g, 'ok', 1 + g % 400, ROW(g, 'p' || g)::core.pair, core.floatrange(g, g + 1), ARRAY['t' || g]
           FROM generate_series(1, 200) g;
    INSERT INTO core.orders (customer_id, placed)
         SELECT c.id, tstzrange('2024-01-01'::timestamptz + c.id * interval '1 day', '2024-01-01'::timestamptz + c.id * interval '1 day' + interval '1 hour')
           FROM core.customers c;
    INSERT INTO core.events SELECT g, '2024-01-01'::date + g, 'a', jsonb_build_object('g', g) FROM generate_series(1, 500) g;
    REFRESH MATERIALIZED VIEW core.order_counts;";

/// Kinds added after the fixture was written, in their older-major forms.
const NEWER_KINDS: &str = "
    CREATE PUBLICATION xv_pub FOR TABLE core.events, core.customers WITH (publish = 'insert, delete');
    COMMENT ON PUBLICATION xv_pub IS 'events out';
    CREATE FOREIGN DATA WRAPPER xv_fdw;
    CREATE SERVER xv_srv FOREIGN DATA WRAPPER xv_fdw OPTIONS (host 'remote.invalid');
    CREATE FOREIGN TABLE core.xv_remote (id int OPTIONS (column_name 'rid') NOT NULL, note text)
        SERVER xv_srv OPTIONS (table_name 'remote');";

/// A throwaway cluster of `major` from the npm binaries (`logical`: with
/// `wal_level = logical`, for an online source).
async fn start_major(major: u32, logical: bool) -> Server {
    let cluster = tokio::task::spawn_blocking(move || {
        let bin = testkit::ensure_embedded_major(major)
            .unwrap_or_else(|e| panic!("PostgreSQL {major}: {e}"));
        Cluster::start(&ClusterOptions {
            bin_dir: Some(bin),
            logical,
            ..Default::default()
        })
        .unwrap_or_else(|e| panic!("PostgreSQL {major} cluster: {e}"))
    })
    .await
    .unwrap();
    assert_eq!(cluster.major, major);
    Server::from_cluster(cluster)
}

/// The schema as `pg_dbmigrator schema` reads it back from a database.
async fn read_back(ci: &str) -> String {
    let out = run_async(&["-q", "schema", "--source", ci]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    text(&out.stdout)
}

/// Both databases' schemas, read back, are the same.
async fn assert_same_schema(a: &str, b: &str) {
    let (sa, sb) = (read_back(a).await, read_back(b).await);
    assert!(
        sa == sb,
        "schemas read back differ:\n{}",
        diff_hint(&sa, &sb)
    );
}

async fn older_major_into_15(major: u32) {
    let source = start_major(major, true).await;
    let pair = testkit::shared_pair();
    let db = testkit::fresh_db_on(&source, &pair.target, &format!("from{major}")).await;
    testkit::execute(&db.source, &fixture("schema_core.sql"))
        .await
        .unwrap();
    testkit::execute(&db.source, DATA).await.unwrap();
    testkit::execute(&db.source, NEWER_KINDS).await.unwrap();
    let target = other_target_db(&db, "up");
    let report = migrate_clean(&db.source, &target, &[]).await;
    assert_eq!(
        report["source_version"].as_i64().unwrap() / 10000,
        major as i64
    );
    let (mut a, mut b) = (schema_dump(&db.source), schema_dump(&target));
    if major < 14 {
        // Multirange types appeared in 14: the target has one per range type
        // and pg_dump names it, as it would after pg_dump/pg_restore.
        let strip = |s: &str| {
            s.lines()
                .filter(|l| !l.trim_start().starts_with("multirange_type_name = "))
                .collect::<Vec<_>>()
                .join("\n")
        };
        a = strip(&a);
        b = strip(&b);
    }
    assert!(a == b, "schema dumps differ:\n{}", diff_hint(&a, &b));
    online_from_older_major(&db.source, &other_target_db(&db, "online"), major).await;
    source.cluster().unwrap().stop();
}

/// The same source moved online into another database under writes:
/// PostgreSQL 13 speaks pgoutput protocol 1 (no streaming, no logical
/// messages: the cutover drains to the fence by WAL position), 14 protocol 2.
async fn online_from_older_major(source: &str, target: &str, major: u32) {
    use pg_dbmigrator::{CutoverMode, EndpointConfig, MigrationConfig, MigrationMode, Migrator};
    use std::sync::atomic::Ordering;
    let (writer, written) = fence_ended_writer(source).await;
    let dir = tempfile::tempdir().unwrap();
    let report = Migrator::new(MigrationConfig {
        source: Some(EndpointConfig::parse(source).unwrap()),
        target: Some(EndpointConfig::parse(target).unwrap()),
        mode: MigrationMode::Online,
        cutover: CutoverMode::Auto,
        fix_replica_identity: true,
        jobs: 2,
        dump_path: Some(dir.path().join("work")),
        ..Default::default()
    })
    .run(tokio_util::sync::CancellationToken::new())
    .await
    .unwrap_or_else(|e| panic!("online migration from PostgreSQL {major}: {e}"));
    let _ = tokio::time::timeout(std::time::Duration::from_secs(30), writer).await;
    assert!(
        written.load(Ordering::Relaxed) > 0,
        "the writer never wrote"
    );
    let v = report.verify.as_ref().expect("verify ran");
    assert!(v.is_clean(), "{}", v.differences_table());
    assert!(report.online.as_ref().unwrap().apply.transactions > 0);
    assert_eq!(content_digest(source).await, content_digest(target).await);
}

#[tokio::test]
async fn full_migration_from_pg13() {
    older_major_into_15(13).await;
}

#[tokio::test]
async fn full_migration_from_pg14() {
    older_major_into_15(14).await;
}

/// PostgreSQL 17 into 17 with the rich fixture. No pg_dump 17 can be
/// installed on this machine, so the oracle is the catalogs read back from
/// both sides (deparsed by the same server version) plus verify.
#[tokio::test]
async fn rich_full_migration_pg17_to_pg17() {
    let (source, target) = tokio::join!(start_major(17, false), start_major(17, false));
    let db = testkit::fresh_db_on(&source, &target, "rich17").await;
    let schema = fixture("rich_schema.sql");
    testkit::execute(&db.source, &schema)
        .await
        .expect("rich schema on 17");
    // The fixture's roles, on the target server too (loading the schema there creates them).
    testkit::execute(&db.target, &schema)
        .await
        .expect("rich roles on the target");
    testkit::execute(&db.source, &fixture("rich_data.sql"))
        .await
        .expect("rich data on 17");
    let new_target = other_target_db(&db, "full");
    let report = migrate_clean(&db.source, &new_target, &[]).await;
    assert_eq!(report["source_version"].as_i64().unwrap() / 10000, 17);
    assert_same_schema(&db.source, &new_target).await;
    source.cluster().unwrap().stop();
    target.cluster().unwrap().stop();
}

/// Preflight refuses an extension the target server cannot install at the
/// source's version (adminpack left PostgreSQL in 17), before anything is
/// created on the target.
#[tokio::test]
async fn extension_missing_on_target_is_refused() {
    let target_server = start_major(17, false).await;
    let pair = testkit::shared_pair();
    let db = testkit::fresh_db_on(&pair.source, &target_server, "extmiss").await;
    testkit::execute(
        &db.source,
        "CREATE EXTENSION adminpack; CREATE TABLE public.t (id int);",
    )
    .await
    .unwrap();
    let target = other_target_db(&db, "x");
    let out = run_async(&["-q", "migrate", "--source", &db.source, "--target", &target]).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains("not available on the target") && err.contains("adminpack"),
        "{err}"
    );
    let exists = testkit::query_scalar(
        &target_server.conninfo("postgres"),
        &format!(
            "SELECT count(*) FROM pg_database WHERE datname = '{}_x'",
            db.name
        ),
    )
    .await;
    assert_eq!(exists, "0", "nothing may be created on a refused target");
    target_server.cluster().unwrap().stop();
}

/// PostgreSQL 18 keeps NOT NULL constraints in pg_constraint: named ones,
/// NO INHERIT ones and NOT VALID ones (over rows that hold NULLs) come out
/// the same on the target, read from the catalogs of both sides.
#[tokio::test]
async fn pg18_not_null_constraints_rebuild() {
    let (source, target) = tokio::join!(start_major(18, false), start_major(18, false));
    let db = testkit::fresh_db_on(&source, &target, "nn18").await;
    testkit::execute(
        &db.source,
        "CREATE TABLE public.parent (
             a int CONSTRAINT a_is_required NOT NULL,
             b int NOT NULL NO INHERIT,
             c int,
             d int NOT NULL,
             \"Odd Col\" text CONSTRAINT \"Odd Name\" NOT NULL);
         INSERT INTO public.parent VALUES (1, 1, NULL, 1, 'x'), (2, 2, 3, 2, 'y');
         ALTER TABLE public.parent ADD CONSTRAINT c_later NOT NULL c NOT VALID;
         CREATE TABLE public.child (e int) INHERITS (public.parent);
         INSERT INTO public.child VALUES (3, NULL, 4, 3, 'z', 5);
         CREATE TABLE public.parts (k int NOT NULL, v text CONSTRAINT v_set NOT NULL) PARTITION BY LIST (k);
         CREATE TABLE public.parts_1 PARTITION OF public.parts FOR VALUES IN (1);
         INSERT INTO public.parts VALUES (1, 'one');",
    )
    .await
    .unwrap();
    let new_target = other_target_db(&db, "full");
    let report = migrate_clean(&db.source, &new_target, &[]).await;
    assert_eq!(report["source_version"].as_i64().unwrap() / 10000, 18);
    let constraints = |ci: String| async move {
        testkit::query_scalar(
            &ci,
            "SELECT string_agg(format('%s %s valid=%s noinherit=%s local=%s inh=%s', conrelid::regclass, conname,
                                      convalidated, connoinherit, conislocal, coninhcount), E'\\n'
                                      ORDER BY conrelid::regclass::text, conname)
               FROM pg_constraint WHERE contype = 'n' AND connamespace = 'public'::regnamespace",
        )
        .await
    };
    let (sa, sb) = (
        constraints(db.source.clone()).await,
        constraints(new_target.clone()).await,
    );
    assert_eq!(sa, sb);
    for needle in [
        "parent a_is_required valid=t",
        "parent c_later valid=f",
        "parent parent_b_not_null valid=t noinherit=t",
        "parent Odd Name valid=t",
        "child c_later valid=t noinherit=f local=f inh=1",
    ] {
        assert!(sa.contains(needle), "{needle}:\n{sa}");
    }
    assert_same_schema(&db.source, &new_target).await;
    source.cluster().unwrap().stop();
    target.cluster().unwrap().stop();
}

/// The application-shaped fixture from the Debian server (15) into
/// PostgreSQL 17: no pg_dump reads both, so the schemas are compared as
/// read back from each side's catalogs, and the rows by each server's own
/// text output.
#[tokio::test]
async fn application_database_15_into_17() {
    let target = start_major(17, false).await;
    let pair = testkit::shared_pair();
    let db = testkit::fresh_db_on(&pair.source, &target, "app15to17").await;
    load_app_fixture(&db.source).await;
    let new_target = other_target_db(&db, "up");
    let report = migrate_clean(&db.source, &new_target, &["--roles"]).await;
    assert_eq!(report["target_version"].as_i64().unwrap() / 10000, 17);
    assert_same_schema(&db.source, &new_target).await;
    assert_eq!(
        content_digest(&db.source).await,
        content_digest(&new_target).await
    );
    target.cluster().unwrap().stop();
}
