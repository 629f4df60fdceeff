//! Round trips, counted and bounded: a migration across a distance pays
//! the link's round-trip time for every statement it waits on, so 500
//! tables must not cost thousands of them. The testkit's proxy sits in
//! front of both servers and counts the turns of every connection (the
//! tool's own count is not trusted here); the bound is per table, so a
//! statement added to every table's path, unpipelined, fails this test in
//! CI instead of a user's migration across a continent.

mod common;

use common::*;
use pg_dbmigrator::testkit::{self, proxy::FaultProxy};

/// Tenant schemas of five small tables each (keys, a foreign key or two,
/// an index, an identity, a trigger and its function): the shape whose
/// cost is per object, not per byte.
const TENANTS: u32 = 100;

fn tenant_sql(i: u32) -> String {
    let s = format!("t{i:04}");
    format!(
        "CREATE SCHEMA {s};
CREATE TABLE {s}.customers (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, name text NOT NULL, email text NOT NULL UNIQUE);
CREATE TABLE {s}.products (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, sku text NOT NULL UNIQUE, price numeric(10,2) NOT NULL);
CREATE TABLE {s}.orders (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, customer_id bigint NOT NULL REFERENCES {s}.customers, created_at timestamptz NOT NULL, note text);
CREATE INDEX orders_customer_created_idx ON {s}.orders (customer_id, created_at);
CREATE TABLE {s}.order_items (order_id bigint NOT NULL REFERENCES {s}.orders, product_id bigint NOT NULL REFERENCES {s}.products, qty integer NOT NULL, PRIMARY KEY (order_id, product_id));
CREATE TABLE {s}.audit (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, at timestamptz NOT NULL, what text NOT NULL);
CREATE FUNCTION {s}.orders_audit() RETURNS trigger LANGUAGE plpgsql AS $f$
BEGIN
  INSERT INTO {s}.audit (at, what) VALUES (NEW.created_at, 'order ' || NEW.id);
  RETURN NEW;
END $f$;
CREATE TRIGGER orders_audit AFTER INSERT ON {s}.orders FOR EACH ROW EXECUTE FUNCTION {s}.orders_audit();
INSERT INTO {s}.customers (name, email) SELECT 'customer ' || g, 'c' || g || '@{s}.example.com' FROM generate_series(1, 20) g;
INSERT INTO {s}.products (sku, price) SELECT 'SKU-' || g, g * 1.5 FROM generate_series(1, 10) g;
INSERT INTO {s}.orders (customer_id, created_at, note) SELECT 1 + g % 20, now(), 'note ' || g FROM generate_series(1, 50) g;
INSERT INTO {s}.order_items SELECT 1 + (g - 1) / 2, 1 + (g - 1) % 10, 1 FROM generate_series(1, 100) g;
"
    )
}

fn proxy_for(server: &testkit::Server) -> FaultProxy {
    let c = server.cluster().expect("the testkit's own server");
    FaultProxy::start(format!("127.0.0.1:{}", c.port).parse().unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_tables_take_few_round_trips() {
    let pair = testkit::shared_pair();
    let db = pair.fresh_db("round_trips").await;
    let sql: String = (1..=TENANTS).map(tenant_sql).collect();
    testkit::execute(&db.source, &sql).await.unwrap();
    let tables = TENANTS as u64 * 5;
    let (src_proxy, dst_proxy) = (proxy_for(&pair.source), proxy_for(&pair.target));
    // A millisecond each way (or half of PG_DBMIGRATOR_TEST_RTT_MS, to see
    // what a distance costs): what the tool sends without waiting for an
    // answer (a statement's close, a pipelined statement) leaves within
    // the same turn, as it would across a real distance.
    let rtt_ms: u64 = std::env::var("PG_DBMIGRATOR_TEST_RTT_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    // PG_DBMIGRATOR_TEST_NEAR=source (or target): the tool beside that
    // server, the whole distance on the other link.
    let near = std::env::var("PG_DBMIGRATOR_TEST_NEAR").unwrap_or_default();
    for (p, side) in [(&src_proxy, "source"), (&dst_proxy, "target")] {
        if near != side {
            p.set_delay(std::time::Duration::from_micros(rtt_ms * 500));
        }
    }
    let (source, target) = (src_proxy.route(&db.source), dst_proxy.route(&db.target));
    let t0 = std::time::Instant::now();
    // The schema load's debug line says how many catalog reads its dry run
    // did not foresee (see below).
    let dir = tempfile::tempdir().unwrap();
    let dump = dir.path().join("w");
    let args = [
        "migrate",
        "--source",
        &source,
        "--target",
        &target,
        "--dump-path",
        dump.to_str().unwrap(),
        "--json",
        "--jobs",
        "2",
    ]
    .map(String::from);
    // A developer's own filter is kept, with the load's line always let
    // through (a more specific directive wins).
    let filter = format!(
        "{},pg_dbmigrator::schema::load=debug",
        std::env::var("PG_DBMIGRATOR_LOG").unwrap_or_else(|_| "info".to_string())
    );
    let out = tokio::task::spawn_blocking(move || {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        command(&a)
            .env("PG_DBMIGRATOR_LOG", filter)
            .output()
            .expect("running pg_dbmigrator")
    })
    .await
    .unwrap();
    // PG_DBMIGRATOR_TEST_STDERR=<file> (with PG_DBMIGRATOR_LOG=debug): the
    // run's log, to see where a distance's time goes.
    if let Ok(path) = std::env::var("PG_DBMIGRATOR_TEST_STDERR") {
        std::fs::write(path, &out.stderr).unwrap();
    }
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    let report = report_of(&out.stdout);
    assert_eq!(
        report["verify"]["differences"].as_array().unwrap().len(),
        0,
        "{report:#}"
    );
    eprintln!(
        "migrated in {:.1}s at {rtt_ms} ms round-trip time; stages {}",
        t0.elapsed().as_secs_f64(),
        report["stages"]
    );
    let (src, dst) = (src_proxy.round_trips(), dst_proxy.round_trips());
    let per_table = (src + dst) as f64 / tables as f64;
    eprintln!(
        "{tables} tables: {src} round trips to the source, {dst} to the target ({per_table:.2} per table); \
         connections {} + {}",
        src_proxy.connections(),
        dst_proxy.connections()
    );
    // The report's own count (what a user sees, by stage) agrees with the
    // proxies' within a few percent: the two count turns the same way, at
    // the two ends of the same sockets.
    let counted = report["round_trips"]["total"].as_u64().unwrap_or(0);
    let by_stage: u64 = report["round_trips"]["by_stage"]
        .as_array()
        .map(|a| a.iter().map(|s| s[1].as_u64().unwrap_or(0)).sum())
        .unwrap_or(0);
    eprintln!(
        "the report counted {counted}: {}",
        report["round_trips"]["by_stage"]
    );
    assert_eq!(by_stage, counted, "{:#}", report["round_trips"]);
    let seen = (src + dst) as f64;
    assert!(
        (counted as f64 - seen).abs() <= seen * 0.05 + 10.0,
        "the report counted {counted} round trips, the proxies {seen}: {:#}",
        report["round_trips"]
    );
    for stage in ["copy_data", "verify"] {
        assert!(
            report["round_trips"]["by_stage"]
                .as_array()
                .is_some_and(|a| a.iter().any(|s| s[0] == stage)),
            "no {stage} in {:#}",
            report["round_trips"]
        );
    }
    // The preflight does not grow with the tables: the schema's ~80 catalog
    // reads go out a segment at a time, and statements run once are not
    // prepared first (194 before either, 88 measured after, 2026-12-07).
    let preflight = report["round_trips"]["by_stage"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s[0] == "preflight"))
        .and_then(|s| s[1].as_u64())
        .unwrap_or(0);
    assert!(
        (1..=120).contains(&preflight),
        "{preflight} round trips before the copy, the bound is 120: a catalog read run on its own, \
         or a statement run once prepared first? (see schema/load/pipeline.rs, pg::query_one_once)"
    );
    // Every catalog read of the schema load was foreseen by its dry run and
    // sent in its segment's pipeline. One that was not runs on its own, after
    // the reads in flight are collected whole to free the session:
    // `pg_depend`'s rows among them, the load's largest answer, which is
    // otherwise streamed (at 25,000 tables two such reads took the peak
    // heap from 130 to 205 MB, 2026-12-07).
    let log = text(&out.stderr);
    assert!(
        log.contains(" catalog reads pipelined, 0 on their own"),
        "a schema catalog read the dry run did not foresee (see schema/load/pipeline.rs): {}",
        log.lines()
            .filter(|l| l.contains("catalog reads") || l.contains("not foreseen"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let listed = report["tables"].as_array().unwrap().len() as u64;
    let others = report["other_tables"]["count"].as_u64().unwrap_or(0);
    assert_eq!(listed + others, tables, "{report:#}");
    assert_same_schema(&db.source, &db.target);
    assert_eq!(
        content_digest(&db.source).await,
        content_digest(&db.target).await
    );
    // Measured (2026-12-07): 11.2 before the copy's statements were
    // pipelined; 3.5 after: the COPYs of a group prepared on both ends in
    // one round trip, each item's new snapshot sent with its COPY, the
    // source's and the target's starts overlapped, the next item started
    // while the previous one ends, the markers sent with the commit, small
    // tables' indexes and keys and foreign-key validations applied several
    // in one batch, catalog reads and checksums as unnamed statements.
    // 1.16 after the copy's target session went below tokio-postgres
    // (pg::wire): a group's BEGIN, COPYs, data, markers and commit in one
    // flight, the source's COPYs all sent at once. What is left is per
    // group and per stage, not per table; the proxies count a turn each
    // time a server answers after the client spoke, and a COPY's answer
    // arriving while the next one's data is still going out counts as one.
    const BOUND: f64 = 2.0;
    assert!(
        per_table <= BOUND,
        "{per_table:.2} round trips per table, the bound is {BOUND}: a statement added to every table's path? \
         pipeline it with its neighbours (see tests/round_trips.rs)"
    );
}
