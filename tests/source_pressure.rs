//! `--source-pressure`: the governor that spares a live source, against
//! real servers. Each test makes the source show one kind of strain
//! while a copy paced by `--max-rate` runs, and checks what a DBA relies
//! on: the copy pauses (no byte read while it holds) for the signals that
//! pause it, says why (progress snapshot, events, warnings, report), goes
//! on once the strain is gone, and the migration ends with every row.
//!
//! - a session waiting for a lock our copy holds (`LOCK TABLE ... ACCESS
//!   EXCLUSIVE`): paused until the waiter is cancelled; and with a short
//!   `lock-pause`, paused only that long, then the copy goes on and the
//!   waiter gets its lock once the copy is over (no deadlock); and on a
//!   table not copied yet, where the worker that starts it after the
//!   pause queues up behind the waiter: named, with the way out;
//! - a physical standby (started with `pg_basebackup`) whose replay is
//!   paused while the source writes: paused until it replays again;
//! - online, WAL our slot retains over a share of a small
//!   `max_slot_wal_keep_size`: reported and warned, never paused for.
//!
//! The tests share one pair of servers (the slot test changes a server
//! setting, the standby test attaches a standby): they run one at a time.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use pg_dbmigrator::progress::{Event, Phase, PressureSignal, Snapshot};
use pg_dbmigrator::testkit::{self, TestDb};
use pg_dbmigrator::{
    CutoverMode, EndpointConfig, LagLimit, MigrationConfig, MigrationMode, Migrator,
    SourcePressure, WalLimit,
};
use tokio_util::sync::CancellationToken;

/// One test at a time (see the module's doc).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The copy's pace: `big` takes about 8 s to copy.
const RATE: u64 = 2 << 20;

/// `big` (about 16 MB of COPY data, read by one worker) and `small`, on
/// both sides (data only), filled on the source.
async fn paced_db(prefix: &str) -> TestDb {
    let db = testkit::shared_pair().fresh_db(prefix).await;
    let ddl = "CREATE TABLE big (id int PRIMARY KEY, pad text NOT NULL);
               CREATE TABLE small (id int PRIMARY KEY)";
    testkit::execute(&db.target, ddl).await.unwrap();
    testkit::execute(&db.source, ddl).await.unwrap();
    testkit::execute(
        &db.source,
        "INSERT INTO big SELECT g, repeat(md5(g::text), 3) FROM generate_series(1, 150000) g;
         INSERT INTO small SELECT generate_series(1, 100); ANALYZE",
    )
    .await
    .unwrap();
    db
}

fn config(db: &TestDb, dump: &std::path::Path, pressure: SourcePressure) -> MigrationConfig {
    MigrationConfig {
        source: Some(EndpointConfig::parse(&db.source).unwrap()),
        target: Some(EndpointConfig::parse(&db.target).unwrap()),
        data_only: true,
        jobs: 2,
        split_bytes: Some(0),
        max_rate: Some(RATE),
        source_pressure: Some(pressure),
        dump_path: Some(dump.to_path_buf()),
        ..Default::default()
    }
}

/// Only `signal` watched (the others off), with the default lock pause.
fn only(signal: PressureSignal) -> SourcePressure {
    let d = SourcePressure::default();
    SourcePressure {
        standby_lag: d
            .standby_lag
            .filter(|_| signal == PressureSignal::StandbyLag),
        slot_wal: d.slot_wal.filter(|_| signal == PressureSignal::SlotWal),
        lock_wait_seconds: d
            .lock_wait_seconds
            .filter(|_| signal == PressureSignal::LockWait),
        ..d
    }
}

/// Wait up to `secs` for a snapshot that `f` accepts.
async fn wait_for(
    rx: &mut tokio::sync::watch::Receiver<Snapshot>,
    secs: u64,
    what: &str,
    f: impl FnMut(&Snapshot) -> bool,
) -> Snapshot {
    let s = tokio::time::timeout(Duration::from_secs(secs), rx.wait_for(f))
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
        .unwrap_or_else(|_| panic!("the run ended before {what}"))
        .clone();
    s
}

fn paused_for(s: &Snapshot, signal: PressureSignal) -> bool {
    s.pressure
        .as_ref()
        .is_some_and(|p| p.paused && p.reasons.iter().any(|r| r.signal == signal && r.pauses))
}

/// While paused, the copy reads nothing: COPY bytes do not move over
/// `secs` seconds (a chunk already past the gate when it closed is in by
/// the first look).
async fn no_bytes_while_paused(
    rx: &tokio::sync::watch::Receiver<Snapshot>,
    signal: PressureSignal,
    secs: u64,
) -> u64 {
    tokio::time::sleep(Duration::from_millis(700)).await;
    let before = rx.borrow().clone();
    assert!(paused_for(&before, signal), "{:?}", before.pressure);
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let after = rx.borrow().clone();
    assert!(paused_for(&after, signal), "{:?}", after.pressure);
    assert_eq!(
        after.bytes_copied, before.bytes_copied,
        "bytes read while paused"
    );
    assert!(!after.completed);
    after.bytes_copied
}

/// The CLI's live state (`<dump-path>.progress.json`, what `status` reads).
fn read_live(path: &std::path::Path) -> Option<Snapshot> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

/// Wait up to `secs` for a live state that `f` accepts.
async fn poll_live(
    path: &std::path::Path,
    what: &str,
    secs: u64,
    f: impl Fn(&Snapshot) -> bool,
) -> Snapshot {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(s) = read_live(path).filter(|s| f(s)) {
            return s;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every event sent so far.
fn drain(rx: &mut tokio::sync::broadcast::Receiver<Event>) -> Vec<Event> {
    let mut out = Vec::new();
    loop {
        match rx.try_recv() {
            Ok(e) => out.push(e),
            Err(tokio::sync::broadcast::error::TryRecvError::Lagged(_)) => continue,
            Err(_) => return out,
        }
    }
}

/// A session asks for `ACCESS EXCLUSIVE` on `table` and waits behind our
/// copy; returns its pid and its `LOCK`'s outcome, which commits at once
/// when granted.
async fn lock_waiter(
    db: &TestDb,
    table: &str,
) -> (
    i32,
    tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
) {
    let waiter = testkit::client(&db.source).await;
    let pid: i32 = waiter
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let sql = format!("BEGIN; LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE; COMMIT");
    let task = tokio::spawn(async move { waiter.batch_execute(&sql).await });
    (pid, task)
}

/// Through the CLI, the flag bare (the defaults: lock-wait=1s): a session
/// waiting for `ACCESS EXCLUSIVE` on the table being copied pauses the
/// copy: the live state (`<dump-path>.progress.json`, what `status`
/// shows) says paused, why, with the waiter's pid, and no byte is read
/// while it holds; once the waiter is cancelled the copy goes on, the
/// events have `throttled` then `unthrottled`, a warning names the
/// signal, and the report records the time paused.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lock_wait_behind_the_copy_pauses_it_until_the_waiter_is_gone() {
    let _serial = SERIAL.lock().await;
    let db = paced_db("pressure_lock").await;
    let dir = tempfile::tempdir().unwrap();
    let dump = dir.path().join("w");
    let live = dir.path().join("w.progress.json");
    let args: Vec<String> = [
        "migrate",
        "--json",
        "--source",
        &db.source,
        "--target",
        &db.target,
        "--data-only",
        "--jobs",
        "2",
        "--split-size",
        "0",
        "--max-rate",
        "2MB",
        "--source-pressure",
        "--dump-path",
        dump.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let run = tokio::spawn(async move {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        run_async(&a).await
    });
    let read_live = || read_live(&live);
    let poll =
        |what: &'static str, secs: u64, f: fn(&Snapshot) -> bool| poll_live(&live, what, secs, f);
    poll("the copy of big", 60, |s| {
        s.phase == Some(Phase::CopyData) && s.bytes_in_flight > (1 << 20)
    })
    .await;
    let (pid, lock) = lock_waiter(&db, "big").await;
    let s = poll("a pause", 20, |s| paused_for(s, PressureSignal::LockWait)).await;
    let p = s.pressure.clone().unwrap();
    let r = p
        .reasons
        .iter()
        .find(|r| r.signal == PressureSignal::LockWait)
        .unwrap();
    assert!(
        r.value >= 1.0 && r.threshold == 1.0 && r.unit == "seconds",
        "{r:?}"
    );
    assert!(
        r.detail.contains(&format!("pid {pid} ")) && r.detail.contains("big"),
        "{}",
        r.detail
    );
    assert_eq!(p.pauses, 1);
    // No byte read while the waiter waits (the file is written twice a
    // second: look twice, 3 s apart, after it settled).
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let before = read_live().unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = read_live().unwrap();
    assert!(
        paused_for(&after, PressureSignal::LockWait),
        "{:?}",
        after.pressure
    );
    assert_eq!(
        after.bytes_copied, before.bytes_copied,
        "bytes read while paused"
    );
    // The waiter goes away: the copy goes on.
    testkit::execute(&db.source, &format!("SELECT pg_cancel_backend({pid})"))
        .await
        .unwrap();
    let e = lock.await.unwrap().expect_err("the waiter was cancelled");
    assert_eq!(e.code().map(|c| c.code()), Some("57014"), "{e}");
    let stopped_at = after.bytes_copied;
    poll_live(&live, "the copy to go on", 20, |s| {
        s.pressure.as_ref().is_some_and(|p| !p.paused) && s.bytes_copied > stopped_at
    })
    .await;
    let out = run.await.unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let report = report_of(&out.stdout);
    assert_eq!(report["verify"]["differences"].as_array().unwrap().len(), 0);
    assert_eq!(
        content_digest(&db.source).await,
        content_digest(&db.target).await
    );
    let sp = &report["source_pressure"];
    assert_eq!(sp["pauses"], 1, "{sp}");
    assert!(sp["paused_seconds"].as_f64().unwrap() >= 4.0, "{sp}");
    assert_eq!(sp["signals"], serde_json::json!(["lock_wait"]), "{sp}");
    let events = check_events(&out.stdout);
    let throttled = events
        .iter()
        .position(|e| {
            e["event"] == "throttled"
                && e["reasons"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|r| r["signal"] == "lock_wait" && r["pauses"] == true)
        })
        .expect("a throttled event");
    let unthrottled = events
        .iter()
        .position(|e| e["event"] == "unthrottled")
        .expect("an unthrottled event");
    assert!(throttled < unthrottled);
    assert!(events[unthrottled]["seconds"].as_f64().unwrap() >= 4.0);
    assert!(
        events.iter().any(|e| e["event"] == "warning"
            && e["message"]
                .as_str()
                .unwrap()
                .contains("lock waits behind our sessions over its threshold")),
        "no warning names the signal"
    );
    assert!(
        text(&out.stdout).matches("\"event\":\"throttled\"").count() == 1,
        "one pause, one throttled event"
    );
}

/// A waiter that never gives up holds the copy for `lock-pause` only: it
/// waits for the copy's snapshot, which holds `ACCESS SHARE` on every
/// table until the copy ends, so pausing longer would only make it wait
/// longer. The copy goes on (the wait still reported, no longer pausing),
/// the migration completes, and then the waiter gets its lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_waiter_that_stays_holds_the_copy_for_lock_pause_only() {
    let _serial = SERIAL.lock().await;
    let db = paced_db("pressure_lock_pause").await;
    let dir = tempfile::tempdir().unwrap();
    let migrator = Arc::new(Migrator::new(config(
        &db,
        &dir.path().join("w"),
        SourcePressure {
            lock_pause_seconds: 3.0,
            ..only(PressureSignal::LockWait)
        },
    )));
    let mut snapshots = migrator.subscribe();
    let mut events = migrator.events();
    let m = migrator.clone();
    let run = tokio::spawn(async move { m.run(CancellationToken::new()).await });
    wait_for(&mut snapshots, 60, "the copy of big", |s| {
        s.phase == Some(Phase::CopyData) && s.bytes_in_flight > (1 << 20)
    })
    .await;
    let (pid, lock) = lock_waiter(&db, "big").await;
    let paused = wait_for(&mut snapshots, 20, "a pause", |s| {
        paused_for(s, PressureSignal::LockWait)
    })
    .await;
    let since = Instant::now();
    // Goes on by itself while the waiter still waits.
    let on = wait_for(&mut snapshots, 20, "the copy to go on", |s| {
        s.pressure.as_ref().is_some_and(|p| {
            !p.paused
                && p.reasons
                    .iter()
                    .any(|r| r.signal == PressureSignal::LockWait && !r.pauses)
        }) && s.bytes_copied > paused.bytes_copied
    })
    .await;
    let held = since.elapsed().as_secs_f64();
    assert!(
        (1.0..8.0).contains(&held),
        "held {held:.1}s for a lock-pause of 3s"
    );
    let r = on.pressure.as_ref().unwrap().reasons[0].clone();
    assert!(r.detail.contains(&format!("pid {pid} ")), "{}", r.detail);
    assert!(
        !lock.is_finished(),
        "the waiter got its lock during the copy"
    );
    let report = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the migration ends: no deadlock with the waiter")
        .unwrap()
        .expect("the migration succeeds");
    assert!(report.verify.as_ref().unwrap().is_clean());
    // The copy's snapshot is gone: the waiter has its lock (and let go).
    tokio::time::timeout(Duration::from_secs(30), lock)
        .await
        .expect("the waiter gets its lock once the copy is over")
        .unwrap()
        .expect("LOCK TABLE succeeds");
    let sp = report.source_pressure.expect("a pressure summary");
    assert_eq!(sp.pauses, 1, "{sp:?}");
    assert!((2.0..8.0).contains(&sp.paused_seconds), "{sp:?}");
    let s = snapshots.borrow().clone();
    assert!(
        s.warnings
            .iter()
            .any(|w| w.contains(&format!("pid {pid} has waited")) && w.contains("goes on now")),
        "{:?}",
        s.warnings
    );
    let ev = drain(&mut events);
    assert!(ev
        .iter()
        .any(|e| matches!(e, Event::Unthrottled { seconds, .. } if *seconds >= 2.0)));
    assert_eq!(
        content_digest(&db.source).await,
        content_digest(&db.target).await
    );
}

/// A physical standby of the source whose replay is paused falls behind
/// as the source writes: the copy pauses (no byte read) until the
/// standby replays again, then completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_standby_replaying_behind_pauses_the_copy_until_it_catches_up() {
    let _serial = SERIAL.lock().await;
    let pair = testkit::shared_pair();
    let primary = pair.source.cluster().expect(
        "this test starts a standby of the source with pg_basebackup: it needs the testkit's own source cluster \
         (PG_DBMIGRATOR_TEST_SOURCE unset)",
    );
    let standby = tokio::task::spawn_blocking(move || {
        primary.start_standby(&[("wal_receiver_status_interval", "'1s'")])
    })
    .await
    .unwrap()
    .expect("a standby of the source");
    let sb = standby.conninfo("postgres");
    let admin = primary.conninfo("postgres");
    // Streaming, caught up.
    let deadline = Instant::now() + Duration::from_secs(30);
    while testkit::query_scalar(
        &admin,
        "SELECT count(*)::text FROM pg_stat_replication WHERE state = 'streaming' AND replay_lsn IS NOT NULL",
    )
    .await
        != "1"
    {
        assert!(Instant::now() < deadline, "the standby does not stream");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let db = paced_db("pressure_standby").await;
    let dir = tempfile::tempdir().unwrap();
    let limit = 4 << 20;
    let migrator = Arc::new(Migrator::new(config(
        &db,
        &dir.path().join("w"),
        SourcePressure {
            standby_lag: Some(LagLimit::Bytes(limit)),
            ..only(PressureSignal::StandbyLag)
        },
    )));
    let mut snapshots = migrator.subscribe();
    let m = migrator.clone();
    let run = tokio::spawn(async move { m.run(CancellationToken::new()).await });
    wait_for(&mut snapshots, 60, "the copy of big", |s| {
        s.phase == Some(Phase::CopyData)
            && s.bytes_in_flight > (1 << 20)
            && s.pressure.as_ref().is_some_and(|p| !p.paused)
    })
    .await;
    // The standby stops replaying; the source writes 12 MB of WAL (in
    // another database: the migration's tables stay as they are).
    testkit::execute(&sb, "SELECT pg_wal_replay_pause()")
        .await
        .unwrap();
    testkit::execute(
        &admin,
        "DROP TABLE IF EXISTS ballast; CREATE TABLE ballast AS SELECT g, repeat('x', 200) AS pad FROM generate_series(1, 50000) g",
    )
    .await
    .unwrap();
    let s = wait_for(&mut snapshots, 30, "a pause", |s| {
        paused_for(s, PressureSignal::StandbyLag)
    })
    .await;
    let r = s.pressure.as_ref().unwrap().reasons[0].clone();
    assert_eq!(
        (r.unit.as_str(), r.threshold),
        ("bytes", limit as f64),
        "{r:?}"
    );
    assert!(r.value > limit as f64, "{r:?}");
    let at = no_bytes_while_paused(&snapshots, PressureSignal::StandbyLag, 3).await;
    testkit::execute(&sb, "SELECT pg_wal_replay_resume()")
        .await
        .unwrap();
    wait_for(&mut snapshots, 30, "the copy to go on", |s| {
        s.pressure.as_ref().is_some_and(|p| !p.paused) && s.bytes_copied > at
    })
    .await;
    let report = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the migration ends")
        .unwrap()
        .expect("the migration succeeds");
    assert!(report.verify.as_ref().unwrap().is_clean());
    let sp = report.source_pressure.expect("a pressure summary");
    assert!(sp.pauses >= 1 && sp.paused_seconds >= 3.0, "{sp:?}");
    assert_eq!(sp.signals, vec![PressureSignal::StandbyLag]);
    testkit::execute(&admin, "DROP TABLE ballast")
        .await
        .unwrap();
    drop(standby);
    assert_eq!(
        content_digest(&db.source).await,
        content_digest(&db.target).await
    );
}

/// Online: the source writes while the copy runs, and our slot, which
/// moves only once streaming begins, retains that WAL. Over its share of
/// `max_slot_wal_keep_size` it is reported (snapshot, warning) and never
/// paused for: the copy keeps reading, the migration streams the writes
/// and cuts over with every row.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wal_our_slot_retains_is_reported_and_the_copy_goes_on() {
    let _serial = SERIAL.lock().await;
    let pair = testkit::shared_pair();
    let admin = pair.source.admin_conninfo();
    /// Puts `max_slot_wal_keep_size` back however the test ends.
    struct Restore(String);
    impl Drop for Restore {
        fn drop(&mut self) {
            let admin = self.0.clone();
            let _ = std::thread::spawn(move || {
                tokio::runtime::Runtime::new().unwrap().block_on(async {
                    // (ALTER SYSTEM runs alone, outside a transaction.)
                    let _ =
                        testkit::execute(&admin, "ALTER SYSTEM RESET max_slot_wal_keep_size").await;
                    let _ = testkit::execute(&admin, "SELECT pg_reload_conf()").await;
                })
            })
            .join();
        }
    }
    let _restore = Restore(admin.clone());
    testkit::execute(&admin, "ALTER SYSTEM SET max_slot_wal_keep_size = '256MB'")
        .await
        .unwrap();
    testkit::execute(&admin, "SELECT pg_reload_conf()")
        .await
        .unwrap();
    let db = paced_db("pressure_slot").await;
    testkit::execute(
        &db.source,
        "CREATE TABLE writes (id int PRIMARY KEY, pad text)",
    )
    .await
    .unwrap();
    testkit::execute(
        &db.target,
        "CREATE TABLE writes (id int PRIMARY KEY, pad text)",
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let migrator = Arc::new(Migrator::new(MigrationConfig {
        mode: MigrationMode::Online,
        cutover: CutoverMode::Auto,
        ..config(
            &db,
            &dir.path().join("w"),
            SourcePressure {
                slot_wal: Some(WalLimit::Percent(5.0)),
                ..only(PressureSignal::SlotWal)
            },
        )
    }));
    let mut snapshots = migrator.subscribe();
    let m = migrator.clone();
    let run = tokio::spawn(async move { m.run(CancellationToken::new()).await });
    wait_for(&mut snapshots, 60, "the copy of big", |s| {
        s.phase == Some(Phase::CopyData) && s.bytes_in_flight > (1 << 20)
    })
    .await;
    // About 30 MB of WAL, more than 5% of 256 MB.
    testkit::execute(
        &db.source,
        "INSERT INTO writes SELECT g, repeat(md5(g::text), 4) FROM generate_series(1, 150000) g",
    )
    .await
    .unwrap();
    let s = wait_for(&mut snapshots, 30, "the slot's WAL reported", |s| {
        s.pressure.as_ref().is_some_and(|p| {
            p.reasons
                .iter()
                .any(|r| r.signal == PressureSignal::SlotWal)
        })
    })
    .await;
    let p = s.pressure.clone().unwrap();
    let r = &p.reasons[0];
    assert!(!p.paused && !r.pauses, "{p:?}");
    assert_eq!((r.unit.as_str(), r.threshold), ("percent", 5.0), "{r:?}");
    assert!(r.value > 5.0 && r.value < 100.0, "{r:?}");
    assert!(
        r.detail.contains("max_slot_wal_keep_size 256.0 MB"),
        "{}",
        r.detail
    );
    // Reported, not paused: the copy keeps reading.
    let before = s.bytes_copied;
    let s = wait_for(&mut snapshots, 10, "more bytes read", |s| {
        s.bytes_copied > before + RATE || s.phase != Some(Phase::CopyData)
    })
    .await;
    assert!(s
        .pressure
        .as_ref()
        .is_none_or(|p| !p.paused && p.pauses == 0));
    assert!(
        s.warnings
            .iter()
            .any(|w| w.contains("WAL retained by our slot over its threshold")),
        "{:?}",
        s.warnings
    );
    let report = tokio::time::timeout(Duration::from_secs(180), run)
        .await
        .expect("the migration ends")
        .unwrap()
        .expect("the migration succeeds");
    assert!(report.verify.as_ref().unwrap().is_clean());
    let sp = report.source_pressure.expect("a pressure summary");
    assert_eq!((sp.pauses, sp.paused_seconds), (0, 0.0), "{sp:?}");

    assert_eq!(sp.signals, vec![PressureSignal::SlotWal]);
    assert_eq!(
        testkit::query_scalar(&db.target, "SELECT count(*)::text FROM writes").await,
        "150000"
    );
}

/// A waiter on a table the copy has not reached yet: while the copy is
/// paused no worker starts it; once `lock-pause` is over the worker that
/// starts it queues up behind the waiter, which waits for our snapshot:
/// stuck both ways, which the server does not see as a deadlock. The
/// governor says so, naming both pids and how to end it; once the waiter
/// is cancelled the migration completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_queued_behind_a_waiter_is_named_with_the_way_out() {
    let _serial = SERIAL.lock().await;
    let db = paced_db("pressure_stuck").await;
    let dir = tempfile::tempdir().unwrap();
    let migrator = Arc::new(Migrator::new(MigrationConfig {
        // One worker: `big` first (largest first), `small` after it.
        jobs: 1,
        ..config(
            &db,
            &dir.path().join("w"),
            SourcePressure {
                lock_pause_seconds: 2.0,
                ..only(PressureSignal::LockWait)
            },
        )
    }));
    let mut snapshots = migrator.subscribe();
    let m = migrator.clone();
    let run = tokio::spawn(async move { m.run(CancellationToken::new()).await });
    wait_for(&mut snapshots, 60, "the copy of big", |s| {
        s.phase == Some(Phase::CopyData) && s.bytes_in_flight > (1 << 20)
    })
    .await;
    let (pid, lock) = lock_waiter(&db, "small").await;
    wait_for(&mut snapshots, 20, "a pause", |s| {
        paused_for(s, PressureSignal::LockWait)
    })
    .await;
    // While paused, `small` is not started: its copy would queue up.
    let ours_waiting = || async {
        testkit::query_scalar(
            &db.source,
            "SELECT count(*)::text FROM pg_stat_activity
              WHERE application_name LIKE 'pg_dbmigrator %' AND wait_event_type = 'Lock'",
        )
        .await
    };
    assert_eq!(ours_waiting().await, "0");
    let s = wait_for(&mut snapshots, 60, "the stuck worker named", |s| {
        s.warnings
            .iter()
            .any(|w| w.contains(&format!("is queued behind pid {pid}")))
    })
    .await;
    let w = s
        .warnings
        .iter()
        .find(|w| w.contains(&format!("is queued behind pid {pid}")))
        .unwrap();
    assert!(
        w.contains(&format!("SELECT pg_cancel_backend({pid})")) && w.contains("small"),
        "{w}"
    );
    assert_eq!(
        ours_waiting().await,
        "1",
        "our worker waits behind the waiter"
    );
    assert!(!run.is_finished());
    testkit::execute(&db.source, &format!("SELECT pg_cancel_backend({pid})"))
        .await
        .unwrap();
    assert!(lock.await.unwrap().is_err());
    let report = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the migration ends once the waiter is gone")
        .unwrap()
        .expect("the migration succeeds");
    assert!(report.verify.as_ref().unwrap().is_clean());
    assert_eq!(
        content_digest(&db.source).await,
        content_digest(&db.target).await
    );
}
