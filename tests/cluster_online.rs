//! `migrate --all-databases --mode online`: every database streams through
//! its own slot at once, and the whole cluster cuts over once. Against this
//! binary's own pair of throwaway servers whose source has
//! `wal_level=logical` (databases are cluster-wide: one test at a time).

mod common;

use std::future::IntoFuture;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use pg_dbmigrator::pg::quote::ident;
use pg_dbmigrator::testkit;
use pg_dbmigrator::{
    CutoverError, CutoverMode, EndpointConfig, MigrationConfig, MigrationMode, Migrator,
};
use tokio_util::sync::CancellationToken;

/// The pair's databases are the test's: one test at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The databases written to while streaming, a quiet one, and one with
/// no table at all.
const BUSY: [&str; 2] = ["shop_a", "shop_b"];
const ALL: [&str; 4] = ["shop_a", "shop_b", "quiet_c", "empty_d"];

const SCHEMA: &str = "
CREATE TABLE accounts (id bigserial PRIMARY KEY, owner text NOT NULL, balance bigint NOT NULL DEFAULT 0);
CREATE TABLE notes (id int PRIMARY KEY, body text);
CREATE UNLOGGED TABLE cache (k int PRIMARY KEY, v text);
CREATE SEQUENCE counter_seq;
INSERT INTO accounts (owner, balance) SELECT 'owner ' || g, g FROM generate_series(1, 3000) g;
INSERT INTO notes SELECT g, repeat(md5(g::text), 20) FROM generate_series(1, 200) g;
INSERT INTO cache SELECT g, 'c' || g FROM generate_series(1, 20) g;
SELECT nextval('counter_seq') FROM generate_series(1, 5);
";

fn pair() -> &'static testkit::Pair {
    testkit::shared_logical_pair()
}

/// The source's databases, made once; each test starts them writable.
static SOURCE: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();

async fn source_cluster() {
    let admin = pair().source.admin_conninfo();
    for db in ALL {
        testkit::execute(&admin, &format!("CREATE DATABASE {}", ident(db)))
            .await
            .unwrap();
        if db != "empty_d" {
            testkit::execute(&pair().source.conninfo(db), SCHEMA)
                .await
                .unwrap();
        }
    }
}

/// Before a test: the source's databases writable (an earlier cutover
/// fenced them) without our objects, and the target server as new.
async fn reset() {
    SOURCE.get_or_init(source_cluster).await;
    let (src, dst) = (
        pair().source.admin_conninfo(),
        pair().target.admin_conninfo(),
    );
    for db in ALL {
        testkit::execute(
            &src,
            &format!(
                "ALTER DATABASE {} RESET default_transaction_read_only",
                ident(db)
            ),
        )
        .await
        .unwrap();
        testkit::execute(&pair().source.conninfo(db), "DROP TABLE IF EXISTS loose")
            .await
            .unwrap();
        if db != "empty_d" {
            // (What a rollback brought back from the new server.)
            testkit::execute(
                &pair().source.conninfo(db),
                "DELETE FROM notes WHERE id <= -20",
            )
            .await
            .unwrap();
        }
        testkit::execute(
            &dst,
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", ident(db)),
        )
        .await
        .unwrap();
    }
}

fn config(dir: &std::path::Path, cutover: CutoverMode) -> MigrationConfig {
    MigrationConfig {
        source: Some(EndpointConfig::parse(&pair().source.admin_conninfo()).unwrap()),
        target: Some(EndpointConfig::parse(&pair().target.admin_conninfo()).unwrap()),
        all_databases: true,
        mode: MigrationMode::Online,
        cutover,
        jobs: 2,
        dump_path: Some(dir.to_path_buf()),
        ..Default::default()
    }
}

/// Errors a writer may see once its database is fenced: its session was
/// ended, or its new session is read-only.
fn fence_error(e: &tokio_postgres::Error) -> bool {
    match e.code() {
        Some(c) => c.code() == "57P01" || c.code() == "25006",
        None => true,
    }
}

/// Writers on the busy databases' sources: with `reconnect`, a writer
/// whose session the fence ended (or made read-only) writes on in a new
/// session; without it, it stops at the fence.
struct Writers {
    stop: Arc<AtomicBool>,
    committed: Vec<Arc<AtomicU64>>,
    fenced: Arc<AtomicU64>,
    bad: Arc<Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Writers {
    fn start(reconnect: bool) -> Writers {
        let stop = Arc::new(AtomicBool::new(false));
        let fenced = Arc::new(AtomicU64::new(0));
        let bad = Arc::new(Mutex::new(Vec::new()));
        let mut committed = Vec::new();
        let mut tasks = Vec::new();
        for (d, db) in BUSY.iter().enumerate() {
            let count = Arc::new(AtomicU64::new(0));
            committed.push(count.clone());
            for w in 0..2i64 {
                let (ci, stop, count, fenced, bad) = (
                    pair().source.conninfo(db),
                    stop.clone(),
                    count.clone(),
                    fenced.clone(),
                    bad.clone(),
                );
                tasks.push(tokio::spawn(async move {
                    let mut c = testkit::client(&ci).await;
                    let mut i: i64 = 0;
                    while !stop.load(Ordering::Relaxed) {
                        i += 1;
                        let k = 1_000_000 * (d as i64 + 1) + i * 2 + w;
                        let sql = format!(
                            "BEGIN;
                             INSERT INTO accounts (owner, balance) VALUES ('w{k}', {k});
                             UPDATE accounts SET balance = balance + 1 WHERE id = {};
                             DELETE FROM accounts WHERE id = {};
                             INSERT INTO notes VALUES ({k}, 'n{k}') ON CONFLICT (id) DO UPDATE SET body = excluded.body;
                             INSERT INTO cache VALUES ({k} % 50, 'w{k}') ON CONFLICT (k) DO UPDATE SET v = excluded.v;
                             SELECT nextval('counter_seq');
                             COMMIT;",
                            1 + (k * 7) % 3000,
                            1 + (k * 13) % 3000
                        );
                        match c.batch_execute(&sql).await {
                            Ok(()) => {
                                count.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) if fence_error(&e) => {
                                fenced.fetch_add(1, Ordering::Relaxed);
                                if !reconnect {
                                    return;
                                }
                                tokio::time::sleep(Duration::from_millis(100)).await;
                                if let Ok(n) = testkit::try_client(&ci).await {
                                    c = n;
                                }
                            }
                            Err(e) => {
                                bad.lock().unwrap().push(format!("{db} writer {w} step {i}: {e:?}"));
                                return;
                            }
                        }
                        tokio::time::sleep(Duration::from_millis(3)).await;
                    }
                }));
            }
        }
        Writers {
            stop,
            committed,
            fenced,
            bad,
            tasks,
        }
    }

    /// Stop; the errors that were not the fence's.
    async fn finish(self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
        eprintln!(
            "writers: {:?} committed, {} fence errors",
            self.committed
                .iter()
                .map(|n| n.load(Ordering::Relaxed))
                .collect::<Vec<_>>(),
            self.fenced.load(Ordering::Relaxed)
        );
        for (db, n) in BUSY.iter().zip(&self.committed) {
            let n = n.load(Ordering::Relaxed);
            assert!(
                n >= 20,
                "the writers of {db} committed only {n} transactions"
            );
        }
        self.bad.lock().unwrap().clone()
    }
}

/// Every database the same on both sides: schema, rows, sequences.
async fn assert_same_databases() {
    for db in ALL {
        let (s, t) = (pair().source.conninfo(db), pair().target.conninfo(db));
        assert_same_schema(&s, &t);
        assert_eq!(
            content_digest(&s).await,
            content_digest(&t).await,
            "rows of {db}"
        );
        assert_eq!(
            sequences(&s).await,
            sequences(&t).await,
            "sequences of {db}"
        );
    }
}

/// Nothing of ours on either server; every source database fenced (the
/// cutover's fence, on purpose), then lifted for the next test.
async fn assert_nothing_left_and_fenced() {
    let admin = pair().source.admin_conninfo();
    let slots =
        testkit::query_scalar(&admin, "SELECT count(*)::text FROM pg_replication_slots").await;
    assert_eq!(slots, "0", "replication slots left on the source");
    for db in ALL {
        let src = pair().source.conninfo(db);
        let ours = testkit::query_scalar(
            &src,
            "SELECT ((SELECT count(*) FROM pg_publication) + (SELECT count(*) FROM pg_event_trigger)
                     + (SELECT count(*) FROM pg_namespace WHERE nspname = '_pg_dbmigrator'))::text",
        )
        .await;
        assert_eq!(
            ours, "0",
            "publication, event trigger or schema of ours left in {db}"
        );
        let ri = testkit::query_scalar(
            &src,
            "SELECT coalesce(string_agg(relname || '=' || relreplident::text, ',' ORDER BY relname), '') FROM pg_class
              WHERE relname IN ('accounts', 'notes')",
        )
        .await;
        let want = if db == "empty_d" {
            ""
        } else {
            "accounts=d,notes=d"
        };
        assert_eq!(ri, want, "replica identities in {db}");
        let tgt = testkit::query_scalar(
            &pair().target.conninfo(db),
            "SELECT count(*)::text FROM pg_namespace WHERE nspname = '_pg_dbmigrator'",
        )
        .await;
        assert_eq!(tgt, "0", "our bookkeeping schema left on the target's {db}");
        let e = testkit::execute(&src, "CREATE TABLE fence_probe (i int)")
            .await
            .expect_err("the source is fenced after the cutover");
        assert_eq!(e.code().map(|c| c.code()), Some("25006"), "{db}: {e:?}");
        let un = run_async(&["unfence", "--source", &src]).await;
        assert_eq!(un.status.code(), Some(0), "{}", text(&un.stderr));
        testkit::execute(
            &src,
            "CREATE TABLE fence_probe (i int); DROP TABLE fence_probe",
        )
        .await
        .expect("writable after unfence");
    }
}

/// Two databases written to while they stream, one automatic cutover for
/// the whole cluster: every database equal, the writers saw nothing but
/// the fence, the cluster's downtime reported, nothing of ours left.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn online_cluster_under_load_cuts_over_once() {
    let _one = ONE_AT_A_TIME.lock().await;
    reset().await;
    let dir = tempfile::tempdir().unwrap();
    let writers = Writers::start(false);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let t0 = Instant::now();
    let migrator = Migrator::new(config(&dir.path().join("w"), CutoverMode::Auto));
    let report = tokio::time::timeout(
        Duration::from_secs(300),
        migrator.run(CancellationToken::new()),
    )
    .await
    .expect("the cluster migration ends")
    .expect("the cluster migration succeeds");
    eprintln!(
        "online cluster migration: {:.1}s",
        t0.elapsed().as_secs_f64()
    );
    let bad = writers.finish().await;
    assert!(bad.is_empty(), "writers failed before the fence: {bad:?}");
    let mut names: Vec<&str> = report.databases.iter().map(|d| d.name.as_str()).collect();
    names.sort();
    assert_eq!(names, ["empty_d", "quiet_c", "shop_a", "shop_b"]);
    for d in &report.databases {
        let o = d
            .report
            .online
            .as_ref()
            .expect("each database's online report");
        assert!(
            o.cutover.fenced && o.cutover.fence_lsn.is_some(),
            "{}: {o:?}",
            d.name
        );
        assert!(
            d.report.verify.as_ref().is_some_and(|v| v.is_clean()),
            "{}",
            d.name
        );
    }
    let online = report.online.as_ref().expect("the cluster's online report");
    let downtime = online.cutover.downtime_seconds;
    eprintln!("cluster downtime: {downtime:.3}s");
    assert!(
        downtime > 0.0 && downtime < 1.0,
        "cluster downtime {downtime}s"
    );
    assert!(online.apply.transactions > 0, "{online:?}");
    // The cluster's progress: one row per database, all done, and the
    // cluster's counters their sums.
    let s = migrator.progress().snapshot();
    let mut rows: Vec<&str> = s.databases.iter().map(|d| d.name.as_str()).collect();
    rows.sort();
    assert_eq!(rows, names, "{s:?}");
    assert!(
        s.databases
            .iter()
            .all(|d| d.state == pg_dbmigrator::DatabaseState::Done && d.percent == Some(100.0)),
        "{s:?}"
    );
    assert_eq!(
        s.bytes_copied,
        s.databases.iter().map(|d| d.bytes_copied).sum::<u64>()
    );
    assert!(s.bytes_copied > 0, "{s:?}");
    assert_eq!(s.percent(), Some(100.0), "{s:?}");
    assert_eq!((s.databases_done, s.databases_total), (4, 4));
    assert!(s.online.is_some() && s.completed, "{s:?}");
    let m = pg_dbmigrator::progress::metrics_text(&s);
    assert!(
        m.contains("pg_dbmigrator_database_percent{database=\"shop_a\"} 100\n"),
        "{m}"
    );
    assert!(
        m.contains("pg_dbmigrator_database_state{database=\"shop_b\",state=\"done\"} 1\n"),
        "{m}"
    );
    assert_same_databases().await;
    assert_nothing_left_and_fenced().await;
}

/// One database's cutover is refused (a table created without a key
/// whose rows did not stream): the cluster's cutover fails naming it,
/// every database is unfenced and streams on; fixed, a second request
/// cuts the whole cluster over.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_refusing_database_fails_the_whole_cutover_then_it_succeeds() {
    let _one = ONE_AT_A_TIME.lock().await;
    reset().await;
    let dir = tempfile::tempdir().unwrap();
    let writers = Writers::start(true);
    let migrator = Migrator::new(config(&dir.path().join("w"), CutoverMode::Manual));
    let handle = migrator.cutover_handle();
    let progress = migrator.progress().clone();
    let run = tokio::spawn(async move { migrator.run(CancellationToken::new()).await });
    tokio::time::timeout(Duration::from_secs(240), handle.wait_caught_up())
        .await
        .expect("every database catches up")
        .expect("streaming");
    // The snapshot's online part is the cluster's: its writers' rates add up.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let o = progress.snapshot().online.expect("an online snapshot");
    assert!(o.transactions > 0 && !o.applied_lsn.is_empty(), "{o:?}");
    let b = pair().source.conninfo("shop_b");
    testkit::execute(
        &b,
        "CREATE TABLE loose (a int NOT NULL, b text); INSERT INTO loose VALUES (1, 'x'), (2, 'y')",
    )
    .await
    .unwrap();
    let t0 = Instant::now();
    let e = match handle.request().await {
        Err(CutoverError::Failed(e)) => e.to_string(),
        other => panic!("the cutover must fail: {other:?}"),
    };
    eprintln!("refused in {:.2}s: {e}", t0.elapsed().as_secs_f64());
    assert!(e.contains("shop_b") && e.contains("public.loose"), "{e}");
    // Every database is writable and streams on.
    for db in BUSY {
        let src = pair().source.conninfo(db);
        testkit::execute(
            &src,
            "INSERT INTO notes VALUES (-5, 'after the failed cutover')",
        )
        .await
        .unwrap_or_else(|e| panic!("{db} is writable after a failed cutover: {e:?}"));
        wait_target(db, "SELECT count(*)::text FROM notes WHERE id = -5", "1").await;
    }
    // Fixed: a key, and the rows that did not stream copied by hand.
    testkit::execute(&b, "ALTER TABLE loose ADD PRIMARY KEY (a)")
        .await
        .unwrap();
    wait_target(
        "shop_b",
        "SELECT count(*)::text FROM pg_index WHERE indrelid = 'loose'::regclass AND indisprimary",
        "1",
    )
    .await;
    testkit::execute(
        &pair().target.conninfo("shop_b"),
        "INSERT INTO loose VALUES (1, 'x'), (2, 'y')",
    )
    .await
    .unwrap();
    let done = tokio::time::timeout(Duration::from_secs(120), handle.request().into_future())
        .await
        .expect("the second cutover ends")
        .expect("the second cutover succeeds");
    eprintln!("cluster cutover: {:?}", done.downtime);
    let report = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the run ends")
        .unwrap()
        .expect("the run succeeds");
    let bad = writers.finish().await;
    assert!(bad.is_empty(), "writers failed: {bad:?}");
    let online = report.online.as_ref().unwrap();
    assert!(
        (online.cutover.downtime_seconds - done.downtime.as_secs_f64()).abs() < 1e-6,
        "{online:?} vs {done:?}"
    );
    assert_same_databases().await;
    assert_nothing_left_and_fenced().await;
}

/// Wait until `sql` on the target's `db` returns `want`.
async fn wait_target(db: &str, sql: &str, want: &str) {
    let ci = pair().target.conninfo(db);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = testkit::try_client(&ci).await;
        if let Ok(c) = got {
            if let Ok(r) = c.query_one(sql, &[]).await {
                if r.get::<_, String>(0) == want {
                    return;
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "{db}: {sql} never returned {want}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Killed while streaming (the second database had just begun to stream,
/// others may still copy) and in the middle of the cluster's cutover
/// (before the barrier: two databases drained; after it: one slot
/// dropped), the run resumed with
/// `--resume` completes on the first try with every database equal (the
/// first resumed with a manual cutover asked for by `pg_dbmigrator
/// cutover --dump-path <cluster dir>`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_during_the_cluster_cutover_then_resumed() {
    let _one = ONE_AT_A_TIME.lock().await;
    for spec in ["after:stream_start#2", "after:drain#2", "after:drop_slot#1"] {
        reset().await;
        let dir = tempfile::tempdir().unwrap();
        let work = dir.path().join("w");
        let w = work.to_str().unwrap();
        let (src, dst) = (
            pair().source.admin_conninfo(),
            pair().target.admin_conninfo(),
        );
        let args = [
            "migrate",
            "--source",
            &src,
            "--target",
            &dst,
            "--all-databases",
            "--mode",
            "online",
            "--cutover",
            "auto",
            "--dump-path",
            w,
            "--jobs",
            "2",
        ];
        let t0 = Instant::now();
        let out = command(&args)
            .env("PG_DBMIGRATOR_TEST_KILL_AT", spec)
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            None,
            "{spec}: not killed: {}",
            text(&out.stderr)
        );
        let mut resumed = args.to_vec();
        resumed.extend(["--resume", "--json"]);
        let manual = spec == "after:drain#2";
        let out = if manual {
            // Resumed with a manual cutover, asked for from another
            // process through the cluster's work dir.
            resumed[9] = "manual";
            let child = command(&resumed)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            let lock = pg_dbmigrator::resume::cluster::ClusterToken::path_for(&work);
            let deadline = Instant::now() + Duration::from_secs(30);
            while !pg_dbmigrator::resume::RunLock::is_held(&lock) {
                assert!(Instant::now() < deadline, "the resumed run never started");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            // One database's work dir: refused, the cutover is the cluster's.
            let one = std::fs::read_dir(&work)
                .unwrap()
                .map(|e| e.unwrap().path())
                .find(|p| p.is_dir())
                .unwrap();
            let c = run_async(&["cutover", "--dump-path", one.to_str().unwrap()]).await;
            assert_eq!(c.status.code(), Some(2), "{}", text(&c.stderr));
            assert!(
                text(&c.stderr).contains("cut over together"),
                "{}",
                text(&c.stderr)
            );
            let c = run_async(&["cutover", "--dump-path", w]).await;
            assert_eq!(c.status.code(), Some(0), "{}", text(&c.stderr));
            assert!(
                text(&c.stdout).contains("the cluster's writes were blocked for"),
                "{}",
                text(&c.stdout)
            );
            let again = run_async(&["cutover", "--dump-path", w]).await;
            assert!(
                text(&again.stdout).contains("already done"),
                "{}",
                text(&again.stdout)
            );
            tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
                .await
                .unwrap()
        } else {
            run_async(&resumed).await
        };
        assert_eq!(out.status.code(), Some(0), "{spec}: {}", text(&out.stderr));
        eprintln!(
            "{spec}: killed and resumed in {:.1}s",
            t0.elapsed().as_secs_f64()
        );
        if std::env::var("SHOW_RESUME").is_ok() {
            eprintln!("{}\n{}", text(&out.stderr), text(&out.stdout));
        }
        let report = report_of(&out.stdout);
        assert_eq!(
            report["databases"].as_array().unwrap().len(),
            ALL.len(),
            "{report:#}"
        );
        assert_same_databases().await;
        assert_nothing_left_and_fenced().await;
    }
}

/// Cancelled while every database streams (each keeps its slot), then
/// resumed through the library: every database goes on from its own
/// token, and the automatic cutover moves them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancelled_while_streaming_then_resumed_by_the_library() {
    let _one = ONE_AT_A_TIME.lock().await;
    reset().await;
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("w");
    let migrator = Migrator::new(config(&work, CutoverMode::Manual));
    let handle = migrator.cutover_handle();
    let cancel = CancellationToken::new();
    let c = cancel.clone();
    let run = tokio::spawn(async move { migrator.run(c).await });
    tokio::time::timeout(Duration::from_secs(240), handle.wait_caught_up())
        .await
        .expect("every database catches up")
        .expect("streaming");
    testkit::execute(
        &pair().source.conninfo("shop_a"),
        "INSERT INTO notes VALUES (-9, 'while nobody streams')",
    )
    .await
    .unwrap();
    cancel.cancel();
    let r = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("the run stops")
        .unwrap();
    assert!(
        matches!(r, Err(pg_dbmigrator::MigrationError::Cancelled)),
        "{r:?}"
    );
    let slots = testkit::query_scalar(
        &pair().source.admin_conninfo(),
        "SELECT count(*)::text FROM pg_replication_slots",
    )
    .await;
    assert_eq!(slots, ALL.len().to_string(), "one slot kept per database");
    let mut cfg = config(&work, CutoverMode::Auto);
    cfg.resume = true;
    let report = tokio::time::timeout(
        Duration::from_secs(240),
        Migrator::new(cfg).run(CancellationToken::new()),
    )
    .await
    .expect("the resumed run ends")
    .expect("the resumed run succeeds");
    assert!(report.resumed, "{}", report.summary());
    assert!(report.online.as_ref().unwrap().cutover.downtime_seconds > 0.0);
    assert_same_databases().await;
    assert_nothing_left_and_fenced().await;
    // A finished cluster migration, resumed, is a success that does nothing.
    let mut cfg = config(&work, CutoverMode::Auto);
    cfg.resume = true;
    let again = tokio::time::timeout(
        Duration::from_secs(60),
        Migrator::new(cfg).run(CancellationToken::new()),
    )
    .await
    .expect("ends at once")
    .expect("succeeds");
    assert!(again.already_complete, "{}", again.summary());
}

/// Fewer free replication slots than databases: refused before any
/// database starts, nothing of ours created.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn too_few_free_slots_for_every_database_is_refused_first() {
    let _one = ONE_AT_A_TIME.lock().await;
    reset().await;
    let admin = pair().source.admin_conninfo();
    let taken = 10 - ALL.len() + 1;
    testkit::execute(
        &admin,
        &format!("SELECT pg_create_physical_replication_slot('busy_' || g) FROM generate_series(1, {taken}) g"),
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let r = Migrator::new(config(&dir.path().join("w"), CutoverMode::Auto))
        .run(CancellationToken::new())
        .await;
    testkit::execute(
        &admin,
        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name LIKE 'busy\\_%'",
    )
    .await
    .unwrap();
    let e = r.expect_err("refused").to_string();
    assert!(
        e.contains("4 replication slots") && e.contains("3 free slot(s)"),
        "{e}"
    );
    let ours =
        testkit::query_scalar(&admin, "SELECT count(*)::text FROM pg_replication_slots").await;
    assert_eq!(ours, "0");
    for db in ALL {
        let pubs = testkit::query_scalar(
            &pair().source.conninfo(db),
            "SELECT count(*)::text FROM pg_publication",
        )
        .await;
        assert_eq!(pubs, "0", "{db}");
    }
}

/// A migration running in its own process, its output in files; killed
/// if the test ends first (a failed assertion must not leave it running).
struct Running {
    child: std::process::Child,
    out: std::path::PathBuf,
    err: std::path::PathBuf,
}

impl Running {
    fn spawn(argv: &[&str], dir: &std::path::Path, kill_at: Option<&str>) -> Running {
        let (out, err) = (dir.join("migrate.out"), dir.join("migrate.err"));
        let mut cmd = command(argv);
        if let Some(k) = kill_at {
            cmd.env("PG_DBMIGRATOR_TEST_KILL_AT", k);
        }
        let child = cmd
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap())
            .spawn()
            .unwrap();
        Running { child, out, err }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.err).unwrap_or_default()
    }

    /// Its exit code (`None`: killed by a signal) and stdout.
    async fn wait(mut self, limit: Duration) -> (Option<i32>, Vec<u8>) {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return (st.code(), std::fs::read(&self.out).unwrap_or_default());
            }
            assert!(
                Instant::now() < deadline,
                "the migration did not end in {limit:?}: {}",
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The cluster's work dir's token, once `ready` holds for it.
async fn wait_cluster_token(
    work: &std::path::Path,
    what: &str,
    ready: impl Fn(&pg_dbmigrator::resume::cluster::ClusterToken) -> bool,
) {
    use pg_dbmigrator::resume::cluster::ClusterToken;
    let path = ClusterToken::path_for(work);
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        if let Ok(Some(t)) = ClusterToken::load(&path) {
            if ready(&t) {
                return;
            }
        }
        assert!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `migrate --all-databases --mode online --fallback` arguments.
fn fallback_args(work: &str) -> Vec<String> {
    [
        "migrate",
        "--source",
        &pair().source.admin_conninfo(),
        "--target",
        &pair().target.admin_conninfo(),
        "--all-databases",
        "--mode",
        "online",
        "--fallback",
        "--cutover",
        "auto",
        "--dump-path",
        work,
        "--jobs",
        "2",
        "--json",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Nothing of ours on either server: no slot, publication, event trigger
/// or bookkeeping schema in any database.
async fn assert_nothing_of_ours_on_either_side() {
    for server in [&pair().source, &pair().target] {
        let slots = testkit::query_scalar(
            &server.admin_conninfo(),
            "SELECT count(*)::text FROM pg_replication_slots",
        )
        .await;
        assert_eq!(slots, "0", "replication slots left");
        for db in ALL {
            let ours = testkit::query_scalar(
                &server.conninfo(db),
                "SELECT ((SELECT count(*) FROM pg_publication) + (SELECT count(*) FROM pg_event_trigger)
                         + (SELECT count(*) FROM pg_namespace WHERE nspname = '_pg_dbmigrator'))::text",
            )
            .await;
            assert_eq!(
                ours, "0",
                "publication, event trigger or schema of ours left in {db}"
            );
        }
    }
}

/// Whether `ci` refuses a write as read-only.
async fn read_only(ci: &str) -> bool {
    match testkit::execute(
        ci,
        "CREATE TABLE fence_probe (i int); DROP TABLE fence_probe",
    )
    .await
    {
        Ok(()) => false,
        Err(e) => {
            assert_eq!(e.code().map(|c| c.code()), Some("25006"), "{e:?}");
            true
        }
    }
}

/// `--fallback` for a whole cluster: after the one cutover every database
/// streams back. One database's rollback is refused (a table without a
/// key made on its new server, whose rows could not stream back): the
/// cluster's rollback fails naming it and no database moves back. Fixed,
/// the second rollback is killed (-9) in the middle, before its barrier;
/// `--resume` asks every database for it again, and the whole cluster is
/// back on the old server, with every write made on the new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fallback_of_the_whole_cluster_rolls_back_as_one() {
    let _one = ONE_AT_A_TIME.lock().await;
    reset().await;
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("w");
    let w = work.to_str().unwrap().to_string();
    let args = fallback_args(&w);
    let argv: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    // The refused attempt drains shop_b back, and each other database
    // that takes the request before shop_b's refusal ends the round: 1 to
    // 4 drains, as the databases' polls fall. The fifth drain is then in
    // the second attempt whatever the first did (its first to fourth), and
    // before its barrier. (`#6` failed when only shop_b had drained.)
    let child = Running::spawn(&argv, dir.path(), Some("after:rollback_drain#5"));
    wait_cluster_token(&work, "the cluster cut over", |t| {
        t.cutover_downtime_seconds.is_some()
    })
    .await;
    // Written on the new servers after the cutover.
    for db in BUSY {
        testkit::execute(
            &pair().target.conninfo(db),
            "INSERT INTO notes VALUES (-21, 'written on the new server');
             UPDATE accounts SET balance = balance + 1 WHERE id <= 10;
             SELECT nextval('counter_seq')",
        )
        .await
        .unwrap_or_else(|e| panic!("{db}: the new server takes writes: {e:?}"));
    }
    let b = pair().target.conninfo("shop_b");
    testkit::execute(
        &b,
        "CREATE TABLE loose (a int NOT NULL, b text); INSERT INTO loose VALUES (1, 'x'), (2, 'y')",
    )
    .await
    .unwrap();
    let rb = run_async(&["rollback", "--dump-path", &w]).await;
    let err = text(&rb.stderr);
    assert_eq!(
        rb.status.code(),
        Some(1),
        "{err}\n{}\nmigrate: {}",
        text(&rb.stdout),
        child.stderr()
    );
    assert!(
        err.contains("shop_b") && err.contains("loose") && err.contains("fence is lifted"),
        "{err}"
    );
    // No database moved back: every new server takes writes, every old
    // source is still fenced.
    for db in ALL {
        assert!(
            !read_only(&pair().target.conninfo(db)).await,
            "{db}: the new server is writable after a failed rollback"
        );
        assert!(
            read_only(&pair().source.conninfo(db)).await,
            "{db}: the old source stays fenced after a failed rollback"
        );
    }
    // Fixed: a key, and the rows that could not stream back copied by hand.
    testkit::execute(&b, "ALTER TABLE loose ADD PRIMARY KEY (a)")
        .await
        .unwrap();
    let old_b = pair().source.conninfo("shop_b");
    let deadline = Instant::now() + Duration::from_secs(60);
    while testkit::query_scalar(
        &old_b,
        "SELECT count(*)::text FROM pg_index WHERE indrelid = to_regclass('loose') AND indisprimary",
    )
    .await
        != "1"
    {
        assert!(Instant::now() < deadline, "the key never streamed back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let c = testkit::client(&old_b).await;
    c.batch_execute("SET default_transaction_read_only = off")
        .await
        .unwrap();
    c.batch_execute("INSERT INTO loose VALUES (1, 'x'), (2, 'y')")
        .await
        .unwrap();
    drop(c);
    // The second rollback: killed after one of its databases drained back.
    let rb = run_async(&["rollback", "--dump-path", &w]).await;
    assert_ne!(rb.status.code(), Some(0), "{}", text(&rb.stdout));
    let log = child.stderr();
    let (code, _) = child.wait(Duration::from_secs(60)).await;
    assert_eq!(code, None, "not killed: {log}");
    let st = run_async(&["status", "--dump-path", &w]).await;
    assert!(
        text(&st.stdout).contains("rollback requested, not passed"),
        "{}",
        text(&st.stdout)
    );
    // Nothing moved back yet: the old sources stay fenced.
    for db in ALL {
        assert!(read_only(&pair().source.conninfo(db)).await, "{db}");
    }
    let mut resumed = argv.clone();
    resumed.push("--resume");
    let out = run_async(&resumed).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let report = report_of(&out.stdout);
    assert_eq!(
        report["online"]["fallback"]["ended_by"], "rollback",
        "{report:#}"
    );
    let downtime = report["online"]["fallback"]["rollback_downtime_seconds"]
        .as_f64()
        .unwrap_or_default();
    eprintln!("cluster rollback downtime: {downtime:.3}s");
    assert!(downtime > 0.0, "{report:#}");
    // Every database is back on the old server with the new one's writes.
    assert_same_databases().await;
    for db in BUSY {
        assert_eq!(
            testkit::query_scalar(
                &pair().source.conninfo(db),
                "SELECT count(*)::text FROM notes WHERE id = -21"
            )
            .await,
            "1",
            "{db}"
        );
    }
    for db in ALL {
        assert!(
            !read_only(&pair().source.conninfo(db)).await,
            "{db}: the old source is writable after the rollback"
        );
        assert!(
            read_only(&pair().target.conninfo(db)).await,
            "{db}: the new server is read-only after the rollback"
        );
    }
    assert_nothing_of_ours_on_either_side().await;
    let again = run_async(&["rollback", "--dump-path", &w]).await;
    assert_eq!(again.status.code(), Some(0), "{}", text(&again.stderr));
    assert!(
        text(&again.stdout).contains("already rolled back"),
        "{}",
        text(&again.stdout)
    );
}

/// `finish --dump-path <cluster dir>` ends every database's fallback:
/// nothing of ours on either server, the new servers writable, the old
/// sources fenced.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fallback_of_the_whole_cluster_finishes_as_one() {
    let _one = ONE_AT_A_TIME.lock().await;
    reset().await;
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("w");
    let w = work.to_str().unwrap().to_string();
    let args = fallback_args(&w);
    let argv: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    let child = Running::spawn(&argv, dir.path(), None);
    wait_cluster_token(&work, "the cluster cut over", |t| {
        t.cutover_downtime_seconds.is_some()
    })
    .await;
    let f = run_async(&["finish", "--dump-path", &w]).await;
    assert_eq!(f.status.code(), Some(0), "{}", text(&f.stderr));
    let log = child.stderr();
    let (code, out) = child.wait(Duration::from_secs(120)).await;
    assert_eq!(code, Some(0), "{log}");
    let report = report_of(&out);
    assert_eq!(
        report["online"]["fallback"]["ended_by"], "finish",
        "{report:#}"
    );
    assert_nothing_of_ours_on_either_side().await;
    for db in ALL {
        assert!(!read_only(&pair().target.conninfo(db)).await, "{db}");
        assert!(read_only(&pair().source.conninfo(db)).await, "{db}");
    }
}
