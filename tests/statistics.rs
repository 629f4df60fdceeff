//! Optimizer statistics carried, not sampled again: PostgreSQL 15 into 18
//! (embedded binaries), where the target imports what the source's
//! ANALYZE computed. Every carried table's `pg_stats` rows and its
//! `relpages`/`reltuples` (and its indexes') equal the source's, and no
//! ANALYZE ran on it; a table the source never analyzed and one with
//! extended statistics are analyzed instead, and the report says which
//! and why. Autovacuum is off on the tables (their reloptions travel with
//! them), so nothing else touches the statistics in between.

mod common;

use pg_dbmigrator::testkit::{self, Cluster, ClusterOptions, Server};
use std::time::Duration;

use pg_dbmigrator::{
    CutoverMode, EndpointConfig, MigrationConfig, MigrationMode, Migrator, Statistics,
};
use tokio_util::sync::CancellationToken;

const TARGET_MAJOR: u32 = 18;

fn start_target() -> Cluster {
    let bin = testkit::ensure_embedded_major(TARGET_MAJOR)
        .unwrap_or_else(|e| panic!("PostgreSQL {TARGET_MAJOR} binaries: {e}"));
    Cluster::start(&ClusterOptions {
        bin_dir: Some(bin),
        ..Default::default()
    })
    .unwrap_or_else(|e| panic!("PostgreSQL {TARGET_MAJOR} cluster: {e}"))
}

const SCHEMA: &str = "
CREATE SCHEMA st;
CREATE TABLE st.orders (
    id bigint PRIMARY KEY, customer int NOT NULL, status text NOT NULL,
    tags text[], amount numeric(10,2), placed date NOT NULL
) WITH (autovacuum_enabled = false);
CREATE INDEX orders_lower_status ON st.orders (lower(status));
INSERT INTO st.orders
  SELECT g, g % 97, (ARRAY['new','paid','shipped','void'])[1 + g % 4],
         ARRAY['t' || (g % 7), 't' || (g % 11)], (g % 1000) / 10.0, date '2024-01-01' + g % 365
  FROM generate_series(1, 20000) g;
CREATE TABLE st.notes (id int PRIMARY KEY, body text) WITH (autovacuum_enabled = false);
INSERT INTO st.notes SELECT g, repeat('n', g % 50) FROM generate_series(1, 3000) g;
-- Never analyzed on the source: nothing to carry.
CREATE TABLE st.raw (id int, v text) WITH (autovacuum_enabled = false);
INSERT INTO st.raw SELECT g, md5(g::text) FROM generate_series(1, 5000) g;
-- Extended statistics: 18 cannot import them.
CREATE TABLE st.pairs (a int, b int) WITH (autovacuum_enabled = false);
CREATE STATISTICS st.pairs_ab (dependencies) ON a, b FROM st.pairs;
INSERT INTO st.pairs SELECT g % 100, g % 100 FROM generate_series(1, 4000) g;
ANALYZE st.orders, st.notes, st.pairs;
";

/// The columns of `pg_stats` both majors have, as text, for `table`.
async fn column_stats(ci: &str, table: &str) -> Vec<String> {
    let c = testkit::client(ci).await;
    let rows = c
        .query(
            "SELECT concat_ws(' | ', attname, inherited, null_frac, avg_width, n_distinct,
                    most_common_vals::text, most_common_freqs::text, histogram_bounds::text,
                    correlation, most_common_elems::text, most_common_elem_freqs::text,
                    elem_count_histogram::text)
               FROM pg_stats WHERE schemaname = 'st' AND tablename = $1 ORDER BY attname, inherited",
            &[&table],
        )
        .await
        .unwrap();
    rows.iter().map(|r| r.get(0)).collect()
}

async fn sizes(ci: &str, rel: &str) -> String {
    testkit::query_scalar(
        ci,
        &format!(
            "SELECT relpages || ' ' || reltuples FROM pg_class WHERE oid = 'st.{rel}'::regclass"
        ),
    )
    .await
}

async fn analyze_count(ci: &str, table: &str) -> String {
    testkit::query_scalar(
        ci,
        &format!(
            "SELECT analyze_count + autoanalyze_count FROM pg_stat_user_tables WHERE relid = 'st.{table}'::regclass"
        ),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statistics_are_carried_into_postgresql_18() {
    let pair = testkit::shared_pair();
    let target = Server::from_cluster(tokio::task::spawn_blocking(start_target).await.unwrap());
    let db = testkit::fresh_db_on(&pair.source, &target, "carry_stats").await;
    testkit::execute(&db.source, SCHEMA).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let report = Migrator::new(MigrationConfig {
        source: Some(EndpointConfig::parse(&db.source).unwrap()),
        target: Some(EndpointConfig::parse(&db.target).unwrap()),
        jobs: 2,
        dump_path: Some(dir.path().join("w")),
        ..Default::default()
    })
    .run(CancellationToken::new())
    .await
    .expect("15 -> 18 migration");
    assert!(report.verify.as_ref().unwrap().is_clean());
    let stats = report.statistics.as_ref().expect("a statistics report");
    eprintln!("{stats:?}");
    assert_eq!(stats.carried_tables, 2, "{stats:?}");
    let analyzed: Vec<&str> = stats
        .analyzed_tables
        .iter()
        .map(|(t, _)| t.as_str())
        .collect();
    assert_eq!(analyzed.len(), 2, "{stats:?}");
    assert!(
        analyzed.contains(&"st.raw") && analyzed.contains(&"st.pairs"),
        "{stats:?}"
    );
    assert!(
        stats
            .analyzed_tables
            .iter()
            .any(|(t, why)| t == "st.pairs" && why.contains("extended")),
        "{stats:?}"
    );
    for table in ["orders", "notes"] {
        let (s, t) = (
            column_stats(&db.source, table).await,
            column_stats(&db.target, table).await,
        );
        assert!(!s.is_empty(), "{table}: the source has statistics");
        assert_eq!(s, t, "pg_stats of st.{table}");
        assert_eq!(
            sizes(&db.source, table).await,
            sizes(&db.target, table).await,
            "relpages/reltuples of st.{table}"
        );
        assert_eq!(
            analyze_count(&db.target, table).await,
            "0",
            "st.{table} analyzed"
        );
    }
    // The indexes' sizes, and the expression index's column statistics.
    for index in ["orders_pkey", "orders_lower_status"] {
        assert_eq!(
            sizes(&db.source, index).await,
            sizes(&db.target, index).await,
            "relpages/reltuples of st.{index}"
        );
    }
    assert_eq!(
        column_stats(&db.source, "orders_lower_status").await,
        column_stats(&db.target, "orders_lower_status").await,
    );
    // Analyzed where there was nothing to carry, or what 18 cannot import.
    for table in ["raw", "pairs"] {
        assert_eq!(analyze_count(&db.target, table).await, "1", "st.{table}");
    }
    assert_eq!(
        testkit::query_scalar(
            &db.target,
            "SELECT count(*) FROM pg_stats_ext WHERE statistics_name = 'pairs_ab' AND dependencies IS NOT NULL"
        )
        .await,
        "1",
        "extended statistics built on the target"
    );
    // Asked for, ANALYZE instead: the old way, and nothing carried.
    let db2 = testkit::fresh_db_on(&pair.source, &target, "analyze_stats").await;
    testkit::execute(&db2.source, SCHEMA).await.unwrap();
    let report = Migrator::new(MigrationConfig {
        source: Some(EndpointConfig::parse(&db2.source).unwrap()),
        target: Some(EndpointConfig::parse(&db2.target).unwrap()),
        jobs: 2,
        statistics: Statistics::Analyze,
        dump_path: Some(dir.path().join("w2")),
        ..Default::default()
    })
    .run(CancellationToken::new())
    .await
    .expect("15 -> 18 migration with ANALYZE");
    assert!(report.statistics.is_none());
    assert_eq!(analyze_count(&db2.target, "orders").await, "1");

    // Online: carried at the end of the copy; at the cutover, the table the
    // stream changed past autovacuum's threshold is analyzed (after the
    // handover), the one it barely touched keeps the carried statistics.
    let db3 = testkit::fresh_db_on(&pair.source, &target, "online_stats").await;
    testkit::execute(&db3.source, SCHEMA).await.unwrap();
    // Keyless tables stream with their whole row as the identity.
    testkit::execute(
        &db3.source,
        "ALTER TABLE st.raw REPLICA IDENTITY FULL; ALTER TABLE st.pairs REPLICA IDENTITY FULL",
    )
    .await
    .unwrap();
    // SCHEMA analyzed in the transaction that loaded the rows, whose counts
    // reached the statistics system after: analyzed again once they have,
    // so the source says what changed since, as it would on a live server.
    let settled = async {
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            testkit::execute(&db3.source, "ANALYZE st.orders, st.notes, st.pairs")
                .await
                .unwrap();
            if testkit::query_scalar(
                &db3.source,
                "SELECT sum(n_mod_since_analyze)::text FROM pg_stat_user_tables
                  WHERE relid IN ('st.orders'::regclass, 'st.notes'::regclass)",
            )
            .await
                == "0"
            {
                break;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), settled)
        .await
        .expect("the source's change counts settle");
    let migrator = std::sync::Arc::new(Migrator::new(MigrationConfig {
        source: Some(EndpointConfig::parse(&db3.source).unwrap()),
        target: Some(EndpointConfig::parse(&db3.target).unwrap()),
        jobs: 2,
        mode: MigrationMode::Online,
        cutover: CutoverMode::Manual,
        dump_path: Some(dir.path().join("w3")),
        ..Default::default()
    }));
    let handle = migrator.cutover_handle();
    let m = migrator.clone();
    let run = tokio::spawn(async move { m.run(CancellationToken::new()).await });
    tokio::time::timeout(Duration::from_secs(120), handle.wait_caught_up())
        .await
        .expect("caught up in time")
        .expect("caught up, not ended");
    // Carried at the end of the copy, before any ANALYZE.
    assert_eq!(analyze_count(&db3.target, "orders").await, "0");
    testkit::execute(
        &db3.source,
        "INSERT INTO st.orders SELECT g, g % 5, 'late', NULL, 1, date '2025-06-01'
           FROM generate_series(20001, 30000) g;
         UPDATE st.notes SET body = 'x' WHERE id <= 10;",
    )
    .await
    .unwrap();
    tokio::time::timeout(Duration::from_secs(120), handle.request())
        .await
        .expect("the cutover ends in time")
        .expect("the cutover succeeds");
    let report = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the run ends")
        .unwrap()
        .expect("the online migration succeeds");
    let after = report
        .statistics
        .as_ref()
        .and_then(|s| s.after_cutover.as_ref())
        .expect("statistics after the cutover in the report");
    eprintln!("{after:?}");
    let analyzed: Vec<&str> = after
        .analyzed_tables
        .iter()
        .map(|(t, _)| t.as_str())
        .collect();
    assert!(analyzed.contains(&"st.orders"), "{after:?}");
    assert!(!analyzed.contains(&"st.notes"), "{after:?}");
    assert_eq!(analyze_count(&db3.target, "orders").await, "1");
    assert_eq!(analyze_count(&db3.target, "notes").await, "0");
    assert_eq!(
        testkit::query_scalar(
            &db3.target,
            "SELECT reltuples::int8 FROM pg_class WHERE oid = 'st.orders'::regclass"
        )
        .await,
        "30000",
        "the analyzed table's row count is the one after the stream"
    );
    assert_eq!(
        column_stats(&db3.source, "notes").await,
        column_stats(&db3.target, "notes").await,
        "the barely changed table keeps the carried statistics"
    );
}
