//! The library as a Rust service embeds it: the progress subscription (a
//! watch of snapshots, a broadcast of typed events) and the online control
//! (`wait_caught_up`, `request().await`), against real servers. Also the
//! CLI's NDJSON `progress` events, which serialize the same typed events.

mod common;

use std::time::{Duration, Instant};

use common::*;
use pg_dbmigrator::progress::{Event, Phase, Snapshot};
use pg_dbmigrator::testkit::{self, TestDb};
use pg_dbmigrator::{
    CutoverError, CutoverMode, EndpointConfig, MigrationConfig, MigrationMode, Migrator,
};
use tokio_util::sync::CancellationToken;

/// One table of about 150 MB of heap (600k rows of ~250 bytes), on both
/// sides (data only), filled on the source.
async fn big_table_db(prefix: &str) -> TestDb {
    let db = testkit::shared_pair().fresh_db(prefix).await;
    let ddl = "CREATE TABLE big (id int NOT NULL, pad text NOT NULL)";
    testkit::execute(&db.target, ddl).await.unwrap();
    testkit::execute(&db.source, ddl).await.unwrap();
    testkit::execute(
        &db.source,
        "INSERT INTO big SELECT g, repeat(md5(g::text), 7) FROM generate_series(1, 600000) g; ANALYZE big",
    )
    .await
    .unwrap();
    db
}

fn data_only(db: &TestDb, dump: &std::path::Path) -> MigrationConfig {
    MigrationConfig {
        source: Some(EndpointConfig::parse(&db.source).unwrap()),
        target: Some(EndpointConfig::parse(&db.target).unwrap()),
        data_only: true,
        jobs: 2,
        // No page ranges: the one table is one item, copied by one worker.
        split_bytes: Some(0),
        dump_path: Some(dump.to_path_buf()),
        ..Default::default()
    }
}

/// How many times `values` goes up.
fn rises(values: &[f64]) -> usize {
    values.windows(2).filter(|w| w[1] > w[0]).count()
}

/// The percentage of a single-item copy moves while the item is still
/// copying (counted as the COPY data flows), in the library's snapshot
/// subscription and in its typed `Progress` events; ETA and rate come from
/// the library; elapsed time counts from the run's start.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn percent_rises_inside_one_big_table_through_the_library() {
    let db = big_table_db("lib_progress_big").await;
    let dir = tempfile::tempdir().unwrap();
    // Paced (see the CLI test below), so the percentage is seen moving.
    let migrator = Migrator::new(MigrationConfig {
        max_rate: Some(40 << 20),
        ..data_only(&db, &dir.path().join("w"))
    });
    // Created well before the run: elapsed time must not count this wait.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut snapshots = migrator.subscribe();
    let mut events = migrator.events();
    let watcher = tokio::spawn(async move {
        // Percentages seen while the one item was not yet committed.
        let mut seen: Vec<Snapshot> = Vec::new();
        while snapshots.changed().await.is_ok() {
            let s = snapshots.borrow_and_update().clone();
            let done = s.completed;
            if s.phase == Some(Phase::CopyData) && s.items_done == 0 {
                seen.push(s);
            }
            if done {
                break;
            }
        }
        seen
    });
    let event_reader = tokio::spawn(async move {
        let mut percents = Vec::new();
        loop {
            match events.recv().await {
                Ok(Event::Progress {
                    percent: Some(p), ..
                }) => percents.push(p),
                Ok(Event::ItemCopied { .. }) => break,
                Ok(_) => {}
                Err(e) => panic!("events: {e}"),
            }
        }
        percents
    });
    let t0 = Instant::now();
    let report = migrator
        .run(CancellationToken::new())
        .await
        .expect("migration");
    let run_secs = t0.elapsed().as_secs_f64();
    assert_eq!(report.rows, 600_000);
    assert_eq!(report.tables.len(), 1);

    let seen = tokio::time::timeout(Duration::from_secs(10), watcher)
        .await
        .expect("the subscription saw the end")
        .unwrap();
    let percents: Vec<f64> = seen.iter().filter_map(|s| s.percent()).collect();
    assert!(
        rises(&percents) >= 5,
        "the snapshot's percent rose {} times inside the table: {percents:?}",
        rises(&percents)
    );
    assert!(
        percents.iter().any(|p| *p > 10.0 && *p < 100.0),
        "{percents:?}"
    );
    assert!(
        seen.iter()
            .any(|s| s.bytes_in_flight > 0 && s.bytes_copied > 0),
        "COPY bytes counted before the commit"
    );
    assert!(seen.iter().any(|s| s.eta().is_some() && s.rate().is_some()));
    assert!(seen.iter().any(|s| s.workers.iter().any(|w| w.bytes > 0)));

    let event_percents = tokio::time::timeout(Duration::from_secs(10), event_reader)
        .await
        .expect("the events reached the item")
        .unwrap();
    assert!(
        rises(&event_percents) >= 5,
        "the Progress events' percent rose {} times: {event_percents:?}",
        rises(&event_percents)
    );

    let last = migrator.subscribe().borrow().clone();
    assert!(last.completed, "the last snapshot is the end: {last:?}");
    assert_eq!(last.percent(), Some(100.0));
    assert_eq!(last.eta(), None, "no ETA once done");
    assert!(
        last.elapsed_seconds <= run_secs + 0.2 && last.elapsed_seconds > 0.0,
        "elapsed counts from the run's start: {} vs a run of {run_secs}",
        last.elapsed_seconds
    );
}

/// The CLI's `--json` NDJSON carries the same `progress` events: the
/// percentage rises inside the one table, before its `item_copied`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn percent_rises_inside_one_big_table_in_the_cli_events() {
    let db = big_table_db("cli_progress_big").await;
    let dir = tempfile::tempdir().unwrap();
    let mut args = migrate_args(&db, dir.path().join("w").to_str().unwrap());
    // Paced (about 3 s for the table's 135 MB), so the percentage is seen
    // moving whatever the machine's speed: unpaced, a fast one copied it in
    // half a second, four events.
    args.extend(["--split-size", "0", "--max-rate", "40MB", "--json"].map(String::from));
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run_async(&a).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let events = check_events(&out.stdout);
    let mut percents = Vec::new();
    for e in &events {
        if e["event"] == "item_copied" {
            break;
        }
        if e["event"] == "progress" {
            assert_eq!(e["stage"], "copy_data", "{e}");
            assert_eq!(e["items_total"], 1, "{e}");
            percents.push(e["percent"].as_f64().unwrap_or_else(|| panic!("{e}")));
        }
    }
    assert!(
        rises(&percents) >= 5,
        "the NDJSON progress events rose {} times: {percents:?}",
        rises(&percents)
    );
    assert!(events
        .iter()
        .any(|e| e["event"] == "progress" && e["eta_seconds"].as_f64().is_some()));
}

/// A small online pair: a keyed table with rows on the source, its schema
/// on the target (data only).
async fn online_db(prefix: &str) -> TestDb {
    let db = testkit::shared_pair().fresh_db(prefix).await;
    let ddl = "CREATE TABLE orders (id int PRIMARY KEY, note text)";
    testkit::execute(&db.target, ddl).await.unwrap();
    testkit::execute(&db.source, ddl).await.unwrap();
    testkit::execute(
        &db.source,
        "INSERT INTO orders SELECT g, 'order ' || g FROM generate_series(1, 20000) g",
    )
    .await
    .unwrap();
    db
}

fn online(db: &TestDb, dump: &std::path::Path) -> MigrationConfig {
    MigrationConfig {
        mode: MigrationMode::Online,
        cutover: CutoverMode::Manual,
        split_bytes: None,
        ..data_only(db, dump)
    }
}

/// `wait_caught_up()` resolves once streaming has caught up, and
/// `request().await` answers with the cutover's downtime and fence LSN,
/// the same the report gives.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wait_caught_up_then_request_gives_the_downtime() {
    let db = online_db("lib_online_ctl").await;
    let dir = tempfile::tempdir().unwrap();
    let migrator = std::sync::Arc::new(Migrator::new(online(&db, &dir.path().join("w"))));
    let handle = migrator.cutover_handle();
    let snapshots = migrator.subscribe();
    let m = migrator.clone();
    let run = tokio::spawn(async move { m.run(CancellationToken::new()).await });
    // Writes while streaming, applied before the cutover.
    tokio::time::timeout(Duration::from_secs(60), handle.wait_caught_up())
        .await
        .expect("caught up in time")
        .expect("caught up, not ended");
    let s = snapshots.borrow().clone();
    assert_eq!(s.phase, Some(Phase::Stream), "{s:?}");
    testkit::execute(
        &db.source,
        "INSERT INTO orders SELECT g, 'late' FROM generate_series(20001, 20100) g",
    )
    .await
    .unwrap();
    let done = tokio::time::timeout(Duration::from_secs(60), handle.request())
        .await
        .expect("the cutover ends in time")
        .expect("the cutover succeeds");
    let report = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("the run ends")
        .unwrap()
        .expect("the migration succeeds");
    let cut = &report.online.as_ref().expect("online report").cutover;
    assert_eq!(done.fence_lsn, cut.fence_lsn);
    assert!(done.fence_lsn.is_some());
    assert!(
        (done.downtime.as_secs_f64() - cut.downtime_seconds).abs() < 1e-3,
        "{done:?} vs {cut:?}"
    );
    assert_eq!(
        testkit::query_scalar(&db.target, "SELECT count(*)::text FROM orders").await,
        "20100"
    );
    // After the run: no streaming, so a request is refused.
    assert!(matches!(
        handle.request().await,
        Err(CutoverError::NotStreaming)
    ));
}

/// A request made during the copy is refused (documented: not queued), and
/// does not cut over once streaming starts; the migration streams on until
/// a request made after it caught up.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_before_streaming_is_refused() {
    let db = online_db("lib_online_early").await;
    let dir = tempfile::tempdir().unwrap();
    let migrator = std::sync::Arc::new(Migrator::new(online(&db, &dir.path().join("w"))));
    let handle = migrator.cutover_handle();
    let mut snapshots = migrator.subscribe();
    // The copy of `orders` waits on this lock: the run is surely copying.
    let blocker = block_copies_into(&db, "orders").await;
    let m = migrator.clone();
    let run = tokio::spawn(async move { m.run(CancellationToken::new()).await });
    tokio::time::timeout(
        Duration::from_secs(60),
        snapshots.wait_for(|s| s.phase == Some(Phase::CopyData) && !s.workers.is_empty()),
    )
    .await
    .expect("the copy began")
    .unwrap();
    let early = handle.request();
    assert!(early.is_refused());
    let r = tokio::time::timeout(Duration::from_secs(5), early)
        .await
        .expect("a refusal answers at once");
    assert!(matches!(r, Err(CutoverError::NotStreaming)), "{r:?}");
    blocker.batch_execute("COMMIT").await.unwrap();
    tokio::time::timeout(Duration::from_secs(60), handle.wait_caught_up())
        .await
        .expect("caught up in time")
        .expect("caught up");
    // Streaming and caught up for a while: the early request did not cut over.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!run.is_finished(), "the early request cut over");
    let s = snapshots.borrow().clone();
    assert_eq!(s.phase, Some(Phase::Stream), "{s:?}");
    // (Caught up may flip back: other tests write WAL on the same server.)
    assert!(s
        .online
        .as_ref()
        .is_some_and(|o| o.cutover_downtime_seconds.is_none()));
    let done = tokio::time::timeout(Duration::from_secs(60), handle.request())
        .await
        .expect("the cutover ends")
        .expect("the cutover succeeds");
    let report = run.await.unwrap().expect("the migration succeeds");
    assert_eq!(
        report.online.unwrap().cutover.fence_lsn,
        done.fence_lsn,
        "the report's cutover is the one the request answered"
    );
}

/// Subscribers that never read, and one that reads one event every two
/// seconds, do not slow the copy: the run ends on its own time, and the
/// unread snapshot receiver simply holds the latest snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_subscribers_do_not_stall_the_run() {
    let db = testkit::shared_pair().fresh_db("lib_slow_sub").await;
    // Many small tables: many events.
    let mut ddl = String::new();
    for i in 0..60 {
        ddl.push_str(&format!("CREATE TABLE t{i} (id int, v text);"));
    }
    testkit::execute(&db.target, &ddl).await.unwrap();
    testkit::execute(&db.source, &ddl).await.unwrap();
    let mut rows = String::new();
    for i in 0..60 {
        rows.push_str(&format!(
            "INSERT INTO t{i} SELECT g, 'x' FROM generate_series(1, 500) g;"
        ));
    }
    testkit::execute(&db.source, &rows).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let migrator = Migrator::new(data_only(&db, &dir.path().join("w")));
    let never_read_snapshots = migrator.subscribe();
    let never_read_events = migrator.events();
    let mut slow = migrator.events();
    let slow_reader = tokio::spawn(async move {
        let mut n = 0;
        while slow.recv().await.is_ok() {
            n += 1;
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        n
    });
    let t0 = Instant::now();
    let report = tokio::time::timeout(
        Duration::from_secs(60),
        migrator.run(CancellationToken::new()),
    )
    .await
    .expect("the run is not held up by its subscribers")
    .expect("migration");
    let secs = t0.elapsed().as_secs_f64();
    assert_eq!(report.tables.len(), 60);
    // 60 item events alone would take the slow reader two minutes.
    assert!(secs < 60.0, "{secs}");
    assert!(
        !slow_reader.is_finished(),
        "the slow reader is still behind"
    );
    slow_reader.abort();
    assert!(never_read_snapshots.has_changed().unwrap());
    assert!(never_read_snapshots.borrow().completed);
    assert!(never_read_events.len() >= 60, "{}", never_read_events.len());
}

/// A failed cutover reaches the library caller three ways without any
/// `tracing` subscriber: `request().await` is `Err(Failed)`, the snapshot
/// counts an error and keeps its message, and the events carry
/// `CutoverFailed` and `Error`. Streaming goes on; a second request
/// succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_cutover_is_an_error_the_library_reports() {
    let db = online_db("lib_online_cutfail").await;
    for side in [&db.source, &db.target] {
        testkit::execute(side, "CREATE SEQUENCE counter_seq")
            .await
            .unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let migrator = std::sync::Arc::new(Migrator::new(online(&db, &dir.path().join("w"))));
    let handle = migrator.cutover_handle();
    let mut events = migrator.events();
    let snapshots = migrator.subscribe();
    let m = migrator.clone();
    let run = tokio::spawn(async move { m.run(CancellationToken::new()).await });
    tokio::time::timeout(Duration::from_secs(60), handle.wait_caught_up())
        .await
        .expect("caught up in time")
        .expect("caught up");
    // The sequence step will fail: the target lost a sequence.
    testkit::execute(&db.target, "DROP SEQUENCE counter_seq")
        .await
        .unwrap();
    let failed = tokio::time::timeout(Duration::from_secs(60), handle.request())
        .await
        .expect("the attempt ends");
    let Err(CutoverError::Failed(e)) = failed else {
        panic!("expected a failed cutover: {failed:?}");
    };
    assert!(e.to_string().contains("counter_seq"), "{e}");
    // Recorded by the library (the snapshot is at most 100 ms old).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let s = snapshots.borrow().clone();
    assert!(s.errors >= 1, "{s:?}");
    let (mut cutover_failed, mut error) = (false, false);
    while let Ok(e) = events.try_recv() {
        match e {
            Event::CutoverFailed { error: Some(m) } => cutover_failed |= m.contains("counter_seq"),
            Event::Error { message, .. } => error |= message.contains("cutover failed"),
            _ => {}
        }
    }
    assert!(cutover_failed && error, "{cutover_failed} {error}");
    assert!(!run.is_finished(), "streaming goes on");
    testkit::execute(&db.target, "CREATE SEQUENCE counter_seq")
        .await
        .unwrap();
    let done = tokio::time::timeout(Duration::from_secs(60), handle.request())
        .await
        .expect("the second attempt ends")
        .expect("the second attempt succeeds");
    assert!(done.fence_lsn.is_some());
    run.await.unwrap().expect("the migration succeeds");
}

/// The CLI refuses an early cutover the same way: `pg_dbmigrator cutover`
/// during the copy exits 2 and says why, the status page's `POST /cutover`
/// answers 409; neither cuts over once streaming starts; a request then
/// cuts over.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_cli_refuses_a_cutover_before_streaming() {
    let db = online_db("cli_online_early").await;
    let dir = tempfile::tempdir().unwrap();
    let dump = dir.path().join("w");
    let dump_s = dump.to_str().unwrap().to_string();
    let token_path = pg_dbmigrator::ResumeToken::path_for(&dump);
    let log = dir.path().join("m.log");
    let blocker = block_copies_into(&db, "orders").await;
    let mut child = command(&[
        "migrate",
        "--mode",
        "online",
        "--source",
        &db.source,
        "--target",
        &db.target,
        "--data-only",
        "--cutover",
        "manual",
        "--http",
        "127.0.0.1:0",
        "--dump-path",
        &dump_s,
    ])
    .stdout(std::process::Stdio::null())
    .stderr(std::fs::File::create(&log).unwrap())
    .spawn()
    .unwrap();
    let stage_seen = |stage: pg_dbmigrator::Stage| {
        pg_dbmigrator::ResumeToken::load(&token_path)
            .ok()
            .flatten()
            .is_some_and(|t| t.stages.iter().any(|s| s.stage == stage))
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !stage_seen(pg_dbmigrator::Stage::CopyData) {
        assert!(
            Instant::now() < deadline,
            "{}",
            std::fs::read_to_string(&log).unwrap()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let c = run_async(&["cutover", "--dump-path", &dump_s]).await;
    let err = text(&c.stderr);
    assert_eq!(c.status.code(), Some(2), "{err}");
    assert!(
        err.contains("still copying") && err.contains("not queued"),
        "{err}"
    );
    let text_log = std::fs::read_to_string(&log).unwrap();
    let addr = text_log
        .split("metrics=http://")
        .nth(1)
        .and_then(|s| s.split('/').next())
        .unwrap_or_else(|| panic!("no address: {text_log}"))
        .to_string();
    let token = text_log
        .split("cutover token for the status page: ")
        .nth(1)
        .and_then(|s| s.lines().next())
        .unwrap()
        .trim()
        .to_string();
    let (status, body) = http_post(&addr, "/cutover", Some(&token));
    assert!(status.contains("409"), "{status} {body}");
    blocker.batch_execute("COMMIT").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !stage_seen(pg_dbmigrator::Stage::Stream) {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        child.try_wait().unwrap().is_none() && !stage_seen(pg_dbmigrator::Stage::Cutover),
        "an early request cut over: {}",
        std::fs::read_to_string(&log).unwrap()
    );
    let c = run_async(&["cutover", "--dump-path", &dump_s]).await;
    assert_eq!(c.status.code(), Some(0), "{}", text(&c.stderr));
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(
        status.success(),
        "{}",
        std::fs::read_to_string(&log).unwrap()
    );
}

/// A transient fault the copy retries is a warning the library records
/// itself (the snapshot's `warnings`, a `Warning` event), with no
/// `tracing` subscriber installed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retried_fault_is_a_recorded_warning() {
    use pg_dbmigrator::testkit::proxy::FaultProxy;
    let pair = testkit::shared_pair();
    let db = big_table_db("lib_retry_warning").await;
    let cluster = pair.target.cluster().expect("the testkit's own target");
    let proxy = FaultProxy::start(format!("127.0.0.1:{}", cluster.port).parse().unwrap()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = data_only(&db, &dir.path().join("w"));
    cfg.target = Some(EndpointConfig::parse(&proxy.route(&db.target)).unwrap());
    let migrator = Migrator::new(cfg);
    let snapshots = migrator.subscribe();
    let mut events = migrator.events();
    let admin = pair.target.admin_conninfo();
    let cut = async {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let c = testkit::client(&admin).await;
            let copying: bool = c
                .query_one(
                    "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE query LIKE 'COPY%big%FROM STDIN%')",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            if copying {
                break;
            }
            assert!(Instant::now() < deadline, "the COPY never started");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        proxy.cut_for(Duration::from_secs(2));
    };
    let (report, ()) = tokio::join!(migrator.run(CancellationToken::new()), cut);
    let report = report.expect("the run retries and ends");
    assert_eq!(report.rows, 600_000);
    let warnings = snapshots.borrow().warnings.clone();
    assert!(
        warnings.iter().any(|w| w.contains("transient fault")),
        "{warnings:?}"
    );
    let mut warned = false;
    while let Ok(e) = events.try_recv() {
        if let Event::Warning { message } = e {
            warned |= message.contains("transient fault");
        }
    }
    assert!(warned, "no Warning event");
}

/// A warning logged deep in a stage, far from any handle of the run (here:
/// preparing a non-empty target with `force_clean`), is recorded in the
/// run's snapshot and sent as a `Warning` event all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_warning_deep_in_a_stage_is_recorded() {
    let db = testkit::shared_pair().fresh_db("lib_deep_warning").await;
    testkit::execute(
        &db.source,
        "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 10)",
    )
    .await
    .unwrap();
    testkit::execute(&db.target, "CREATE TABLE left_behind (id int)")
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let migrator = Migrator::new(MigrationConfig {
        source: Some(EndpointConfig::parse(&db.source).unwrap()),
        target: Some(EndpointConfig::parse(&db.target).unwrap()),
        force_clean: true,
        dump_path: Some(dir.path().join("w")),
        ..Default::default()
    });
    let snapshots = migrator.subscribe();
    let mut events = migrator.events();
    let report = migrator.run(CancellationToken::new()).await.unwrap();
    assert_eq!(report.rows, 10);
    let warnings = snapshots.borrow().warnings.clone();
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("dropping and recreating")),
        "{warnings:?}"
    );
    let mut warned = false;
    while let Ok(e) = events.try_recv() {
        if let Event::Warning { message } = e {
            warned |= message.contains("dropping and recreating");
        }
    }
    assert!(warned, "no Warning event");
}
