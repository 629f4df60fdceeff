//! A governor that protects a live source: `--max-rate` caps how fast the
//! copy reads it, over every worker. Measured on a table of about 200 MB
//! of COPY data, cut into page ranges copied in parallel: the rate the run
//! reports (its COPY bytes over its copy stage's seconds) is the cap, give
//! or take a tenth.

mod common;

use common::*;
use pg_dbmigrator::testkit;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_rate_holds_the_copy_to_its_cap() {
    let pair = testkit::shared_pair();
    let db = pair.fresh_db("max_rate").await;
    testkit::execute(
        &db.source,
        "CREATE TABLE big (id int, pad text);
         INSERT INTO big SELECT g, repeat(md5(g::text), 6) FROM generate_series(1, 1000000) g;
         CREATE TABLE small (id int PRIMARY KEY); INSERT INTO small SELECT generate_series(1, 100);",
    )
    .await
    .unwrap();
    let cap: u64 = 20 << 20;
    let out = run_migrate(
        &db.source,
        &db.target,
        &[
            "--json",
            "--jobs",
            "2",
            "--max-rate",
            "20MB",
            "--split-size",
            "64MB",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let report = report_of(&out.stdout);
    assert_eq!(report["verify"]["differences"].as_array().unwrap().len(), 0);
    // The cap is shown while the copy runs (`/metrics` too, from the same
    // snapshot): the progress events carry the snapshot's fields.
    let events = check_events(&out.stdout);
    assert!(
        events
            .iter()
            .any(|e| e["event"] == "progress" && e["max_rate"] == cap),
        "no progress event shows the cap"
    );
    let bytes = report["bytes"].as_u64().unwrap();
    let copy_secs = report["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s[0] == "copy_data")
        .and_then(|s| s[1].as_f64())
        .expect("a copy stage");
    let rate = bytes as f64 / copy_secs;
    eprintln!(
        "{bytes} bytes in {copy_secs:.2}s: {:.2} MB/s against a cap of 20 MB/s",
        rate / (1 << 20) as f64
    );
    assert!(
        bytes > 180 << 20,
        "{bytes} bytes: the table is smaller than meant"
    );
    let ratio = rate / cap as f64;
    assert!(
        (0.9..=1.1).contains(&ratio),
        "read at {:.1}% of the cap",
        ratio * 100.0
    );
    assert_eq!(
        content_digest(&db.source).await,
        content_digest(&db.target).await
    );
    // A cap of nothing is refused before anything starts.
    let err = migrate_refused(
        &db.source,
        &other_target_db(&db, "zero"),
        &["--max-rate", "0"],
    )
    .await;
    assert!(err.contains("--max-rate"), "{err}");
}
