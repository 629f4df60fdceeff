//! The kill-point sweep: every fault point in the registry
//! (`pg_dbmigrator::faults::Point::ALL`), on both sides of its side
//! effect, in every run that reaches it. Each case kills the run with
//! SIGKILL exactly there (`PG_DBMIGRATOR_TEST_KILL_AT`), then resumes it
//! once. The resume must complete; the target must then hold exactly the
//! source's rows (a row copied or applied twice shows as a count or
//! checksum difference: the workload inserts into a table without a key),
//! its sequences and large objects, and `pg_dump --schema-only` of both
//! must be identical (a schema step run twice shows as a second index).
//! `cleanup` cases must leave nothing of ours on either server.
//!
//! A point that its registered runs do not reach fails the sweep: the
//! registry says where each point is, and a new point is swept the day it
//! is registered.
//!
//! CI runs a fixed, seeded sample of the cases of each run
//! (`PG_DBMIGRATOR_SWEEP_SAMPLE` per run, default 8;
//! `PG_DBMIGRATOR_SWEEP_SEED` picks them). `PG_DBMIGRATOR_SWEEP=full`
//! runs every case (216, about 15 minutes on two cores);
//! `PG_DBMIGRATOR_SWEEP_ONLY=after:copy_item` runs one point's cases.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{command, content_digest, sequences, text};
use pg_dbmigrator::faults::{Flow, Point, Side};
use pg_dbmigrator::testkit::{self, TestDb};

/// A small database with a bit of everything a step touches: keys,
/// an index, a foreign key, a table without a key (its rows would double
/// if anything were applied twice), an unlogged table, a materialized
/// view, a sequence, a large object, and a connection limit (the seal).
const FIXTURE: &str = "
CREATE TABLE accounts (id serial PRIMARY KEY, owner text NOT NULL, balance int NOT NULL DEFAULT 0);
CREATE INDEX accounts_owner ON accounts (owner);
CREATE TABLE counters (id int PRIMARY KEY, n bigint NOT NULL);
CREATE TABLE events (account int REFERENCES accounts, v text, at timestamptz NOT NULL DEFAULT now());
CREATE INDEX events_v ON events (v);
CREATE UNLOGGED TABLE scratch (k int PRIMARY KEY, v text);
CREATE SEQUENCE tickets START 100;
INSERT INTO accounts (owner, balance) SELECT 'owner ' || g, g FROM generate_series(1, 300) g;
INSERT INTO counters SELECT g, 0 FROM generate_series(1, 10) g;
INSERT INTO events (account, v) SELECT 1 + g % 300, md5(g::text) FROM generate_series(1, 2000) g;
INSERT INTO scratch SELECT g, 'x' FROM generate_series(1, 20) g;
CREATE MATERIALIZED VIEW totals AS SELECT owner, sum(balance) AS s FROM accounts GROUP BY owner;
SELECT nextval('tickets'), nextval('tickets');
SELECT lo_from_bytea(0, 'a large object');
DO $$BEGIN EXECUTE format('ALTER DATABASE %I CONNECTION LIMIT 40', current_database()); END$$;
";

/// The online runs' flags: the sweep's cutover comes by itself, and the
/// table without a key gets a replica identity (restored at the end).
const ONLINE_ARGS: &[&str] = &[
    "--mode",
    "online",
    "--cutover",
    "auto",
    "--fix-replica-identity",
];

/// One case: a point, a side, a run that reaches it.
#[derive(Debug, Clone, Copy)]
struct Case {
    point: Point,
    side: Side,
    flow: Flow,
}

impl Case {
    fn spec(&self) -> String {
        format!("{}:{}", self.side.as_str(), self.point.name())
    }
}

/// The cases of `flow`: all under `PG_DBMIGRATOR_SWEEP=full`, else a
/// fixed, seeded sample.
fn cases(flow: Flow) -> Vec<Case> {
    let mut all = Vec::new();
    for &point in Point::ALL {
        if point.flows().contains(&flow) {
            for side in [Side::Before, Side::After] {
                all.push(Case { point, side, flow });
            }
        }
    }
    assert!(!all.is_empty(), "no fault point is registered for {flow:?}");
    if let Ok(only) = std::env::var("PG_DBMIGRATOR_SWEEP_ONLY") {
        // One case by its spec, e.g. `after:copy_item`.
        all.retain(|c| c.spec() == only);
        return all;
    }
    if std::env::var("PG_DBMIGRATOR_SWEEP").is_ok_and(|v| v == "full") {
        return all;
    }
    let n: usize = std::env::var("PG_DBMIGRATOR_SWEEP_SAMPLE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    let mut seed: u64 = std::env::var("PG_DBMIGRATOR_SWEEP_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(22);
    // Fisher-Yates with a small LCG: the same seed, the same sample.
    for i in (1..all.len()).rev() {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let j = (seed >> 33) as usize % (i + 1);
        all.swap(i, j);
    }
    all.truncate(n);
    all
}

/// Run every case of `flow`, each in its own database; say which failed.
async fn sweep(flow: Flow) {
    let cases = cases(flow);
    eprintln!(
        "kill-point sweep of {flow:?}: {} cases: {}",
        cases.len(),
        cases.iter().map(Case::spec).collect::<Vec<_>>().join(", ")
    );
    let mut failed = Vec::new();
    for case in cases {
        let t0 = Instant::now();
        let r = tokio::spawn(run_case(case)).await;
        match r {
            Ok(()) => eprintln!(
                "  {} ({flow:?}): ok in {:.1}s",
                case.spec(),
                t0.elapsed().as_secs_f64()
            ),
            Err(e) => {
                let msg = match e.try_into_panic() {
                    Ok(p) => p
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default(),
                    Err(e) => e.to_string(),
                };
                eprintln!("  {} ({flow:?}): FAILED: {msg}", case.spec());
                failed.push(format!("{}: {msg}", case.spec()));
            }
        }
    }
    assert!(
        failed.is_empty(),
        "{} kill points of {flow:?} did not resume cleanly:\n{}",
        failed.len(),
        failed.join("\n\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_kill_point_of_an_offline_migration_resumes() {
    sweep(Flow::Offline).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_kill_point_of_a_migration_through_an_archive_resumes() {
    sweep(Flow::ViaArchive).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_kill_point_of_dump_and_restore_resumes() {
    sweep(Flow::Archive).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_kill_point_of_an_online_migration_resumes() {
    sweep(Flow::Online).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_kill_point_of_a_fallback_and_its_rollback_resumes() {
    sweep(Flow::Fallback).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_kill_point_of_a_fallback_and_its_finish_resumes() {
    sweep(Flow::Finish).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_kill_point_of_cleanup_finishes_on_the_next_cleanup() {
    sweep(Flow::Cleanup).await;
}

/// The registry's sample is what CI runs: it must name real points.
#[test]
fn the_sample_is_fixed_by_its_seed() {
    let a: Vec<String> = cases(Flow::Online).iter().map(Case::spec).collect();
    let b: Vec<String> = cases(Flow::Online).iter().map(Case::spec).collect();
    assert_eq!(a, b);
}

struct Env {
    db: TestDb,
    dir: tempfile::TempDir,
}

impl Env {
    async fn new(case: &Case) -> Env {
        let prefix = format!(
            "kp_{}_{}",
            case.side.as_str(),
            case.point.name().replace('_', "")
        );
        let t0 = Instant::now();
        let db = testkit::shared_logical_pair().fresh_db(&prefix).await;
        eprintln!("    fresh in {:.1}s", t0.elapsed().as_secs_f64());
        testkit::execute(&db.source, FIXTURE).await.unwrap();
        Env {
            db,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn work(&self) -> String {
        self.dir.path().join("work").to_str().unwrap().to_string()
    }

    fn log(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.log"))
    }

    fn migrate_args(&self, extra: &[&str]) -> Vec<String> {
        let mut a: Vec<String> = [
            "migrate",
            "--source",
            &self.db.source,
            "--target",
            &self.db.target,
            "--jobs",
            "2",
            "--dump-path",
            &self.work(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    }

    /// Start the binary; `kill_at` arms the fault point.
    fn spawn(&self, args: &[String], log: &str, kill_at: Option<&str>) -> Child {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut c = command(&a);
        c.env("PG_DBMIGRATOR_TEST_MIN_STREAM_SECS", "2")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.log(log)).unwrap());
        if let Some(k) = kill_at {
            c.env("PG_DBMIGRATOR_TEST_KILL_AT", k);
        }
        c.spawn().unwrap()
    }

    fn stderr(&self, log: &str) -> String {
        std::fs::read_to_string(self.log(log)).unwrap_or_default()
    }

    /// Run to the end: (killed by our fault point, exit code).
    async fn wait(&self, mut child: Child, log: &str, limit: Duration) -> std::process::ExitStatus {
        let t0 = Instant::now();
        let deadline = Instant::now() + limit;
        loop {
            if let Some(s) = child.try_wait().unwrap() {
                eprintln!("    {log} ended in {:.1}s", t0.elapsed().as_secs_f64());
                return s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "{log} did not end within {limit:?}: {}",
                    tail(&self.stderr(log))
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The first run, armed: it must die at the point.
    fn assert_killed(&self, s: std::process::ExitStatus, log: &str, case: &Case) {
        let err = self.stderr(log);
        if std::env::var("PG_DBMIGRATOR_SWEEP_KEEP").is_ok() {
            std::fs::write(format!("/tmp/kp-{log}.log"), &err).unwrap();
        }
        assert!(
            s.signal() == Some(9) && err.contains(&format!("TEST_STOP_AT {}", case.spec())),
            "{} is registered for {:?} but that run did not stop there (exit {s:?}): {}",
            case.spec(),
            case.flow,
            tail(&err)
        );
    }

    /// A later run: it must succeed.
    fn assert_success(&self, s: std::process::ExitStatus, log: &str, what: &str) {
        assert!(
            s.success(),
            "{what} after the kill failed ({s:?}): {}",
            tail(&self.stderr(log))
        );
    }

    /// The target holds exactly the source: rows, sequences, large
    /// objects, and the schema as pg_dump prints it.
    async fn assert_same(&self) {
        let t0 = Instant::now();
        if std::env::var("PG_DBMIGRATOR_SWEEP_KEEP").is_ok() {
            for e in std::fs::read_dir(self.dir.path()).unwrap() {
                let p = e.unwrap().path();
                if p.extension().is_some_and(|x| x == "log") {
                    std::fs::copy(
                        &p,
                        format!("/tmp/kp-{}", p.file_name().unwrap().to_str().unwrap()),
                    )
                    .unwrap();
                }
            }
        }
        let (s, t) = (&self.db.source, &self.db.target);
        assert_eq!(
            content_digest(s).await,
            content_digest(t).await,
            "rows differ"
        );
        assert_eq!(sequences(s).await, sequences(t).await, "sequences differ");
        let lo = "SELECT count(*)::text FROM pg_largeobject_metadata";
        assert_eq!(
            testkit::query_scalar(s, lo).await,
            testkit::query_scalar(t, lo).await,
            "large objects differ"
        );
        common::assert_same_schema(s, t);
        eprintln!("    compared in {:.1}s", t0.elapsed().as_secs_f64());
        let out = common::run_async(&["verify", "--source", s, "--target", t]).await;
        assert!(
            out.status.success(),
            "verify found differences: {}{}",
            text(&out.stdout),
            tail(&text(&out.stderr))
        );
        eprintln!("    verified in {:.1}s", t0.elapsed().as_secs_f64());
    }
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(25)..].join("\n")
}

async fn run_case(case: Case) {
    let t0 = Instant::now();
    let env = Env::new(&case).await;
    eprintln!("    database ready in {:.1}s", t0.elapsed().as_secs_f64());
    if std::env::var("PG_DBMIGRATOR_SWEEP_KEEP").is_ok() {
        eprintln!("    work files in {}", env.dir.path().display());
    }
    let spec = case.spec();
    match case.flow {
        Flow::Offline | Flow::ViaArchive => {
            let extra: &[&str] = if case.flow == Flow::ViaArchive {
                &["--copy-method", "dump"]
            } else {
                &[]
            };
            let args = env.migrate_args(extra);
            let s = env
                .wait(
                    env.spawn(&args, "m1", Some(&spec)),
                    "m1",
                    Duration::from_secs(120),
                )
                .await;
            env.assert_killed(s, "m1", &case);
            let mut again = args.clone();
            again.push("--resume".into());
            let s = env
                .wait(
                    env.spawn(&again, "m2", None),
                    "m2",
                    Duration::from_secs(120),
                )
                .await;
            env.assert_success(s, "m2", "--resume");
            env.assert_same().await;
        }
        Flow::Archive => {
            let archive = env.dir.path().join("archive");
            let a = archive.to_str().unwrap();
            let dump: Vec<String> = [
                "dump",
                "--source",
                &env.db.source,
                "--jobs",
                "2",
                "--dump-path",
                a,
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            let restore: Vec<String> = [
                "restore",
                "--target",
                &env.db.target,
                "--jobs",
                "2",
                "--dump-path",
                a,
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            let with_resume = |v: &[String]| {
                let mut v = v.to_vec();
                v.push("--resume".into());
                v
            };
            let s = env
                .wait(
                    env.spawn(&dump, "d1", Some(&spec)),
                    "d1",
                    Duration::from_secs(120),
                )
                .await;
            let killed_in_dump = s.signal() == Some(9);
            if killed_in_dump {
                env.assert_killed(s, "d1", &case);
                let s = env
                    .wait(
                        env.spawn(&with_resume(&dump), "d2", None),
                        "d2",
                        Duration::from_secs(120),
                    )
                    .await;
                env.assert_success(s, "d2", "dump --resume");
            } else {
                env.assert_success(s, "d1", "dump");
            }
            let arm = (!killed_in_dump).then_some(spec.as_str());
            let s = env
                .wait(
                    env.spawn(&restore, "r1", arm),
                    "r1",
                    Duration::from_secs(120),
                )
                .await;
            if killed_in_dump {
                env.assert_success(s, "r1", "restore");
            } else {
                env.assert_killed(s, "r1", &case);
                let s = env
                    .wait(
                        env.spawn(&with_resume(&restore), "r2", None),
                        "r2",
                        Duration::from_secs(120),
                    )
                    .await;
                env.assert_success(s, "r2", "restore --resume");
            }
            env.assert_same().await;
        }
        Flow::Online => {
            let load = Workload::start(&env.db.source);
            let args = env.migrate_args(ONLINE_ARGS);
            let s = env
                .wait(
                    env.spawn(&args, "m1", Some(&spec)),
                    "m1",
                    Duration::from_secs(180),
                )
                .await;
            env.assert_killed(s, "m1", &case);
            let mut again = args.clone();
            again.push("--resume".into());
            let s = env
                .wait(
                    env.spawn(&again, "m2", None),
                    "m2",
                    Duration::from_secs(180),
                )
                .await;
            load.stop().await;
            env.assert_success(s, "m2", "--resume");
            env.assert_same().await;
            assert_nothing_left_on_source(&env.db.source, true).await;
        }
        Flow::Fallback => {
            let load = Workload::start(&env.db.source);
            let args = env.migrate_args(&[ONLINE_ARGS, &["--fallback"]].concat());
            let s = fallback_run(&env, &args, "m1", Some(&spec), "rollback").await;
            env.assert_killed(s, "m1", &case);
            let mut again = args.clone();
            again.push("--resume".into());
            let s = fallback_run(&env, &again, "m2", None, "rollback").await;
            load.stop().await;
            env.assert_success(s, "m2", "--resume");
            assert!(
                [
                    "rollback done",
                    "the migration had completed",
                    "the fallback had ended"
                ]
                .iter()
                .any(|m| env.stderr("m2").contains(m)),
                "the resumed fallback did not end by its rollback: {}",
                tail(&env.stderr("m2"))
            );
            env.assert_same().await;
            assert_nothing_left_on_source(&env.db.source, false).await;
        }
        Flow::Finish => {
            let load = Workload::start(&env.db.source);
            let args = env.migrate_args(&[ONLINE_ARGS, &["--fallback"]].concat());
            let s = fallback_run(&env, &args, "m1", Some(&spec), "finish").await;
            env.assert_killed(s, "m1", &case);
            let mut again = args.clone();
            again.push("--resume".into());
            let s = fallback_run(&env, &again, "m2", None, "finish").await;
            load.stop().await;
            env.assert_success(s, "m2", "--resume");
            // After `finish` the new server is the database: it keeps its
            // writes, and nothing of ours is left on either server.
            let n = testkit::query_scalar(
                &env.db.target,
                "SELECT count(*)::text FROM events WHERE v = 'on the new server'",
            )
            .await;
            assert!(n != "0", "the new server lost its writes");
            assert_nothing_left_on_source(&env.db.source, true).await;
            let left = testkit::query_scalar(
                &env.db.target,
                "SELECT concat_ws(' ',
                    (SELECT string_agg('slot ' || slot_name, ' ') FROM pg_replication_slots WHERE database = current_database()),
                    (SELECT string_agg('publication ' || pubname, ' ') FROM pg_publication),
                    (SELECT string_agg('event trigger ' || evtname, ' ') FROM pg_event_trigger WHERE evtname LIKE 'pg_dbmigrator%'),
                    (SELECT string_agg('schema ' || nspname, ' ') FROM pg_namespace WHERE nspname = '_pg_dbmigrator'))",
            )
            .await;
            assert_eq!(left, "", "left on the new server after finish");
        }
        Flow::Cluster => unreachable!("a whole-cluster migration is swept in tests/cluster.rs"),
        Flow::Cleanup => {
            let load = Workload::start(&env.db.source);
            let args = env.migrate_args(&[
                "--mode",
                "online",
                "--cutover",
                "manual",
                "--fix-replica-identity",
            ]);
            let s = env
                .wait(
                    env.spawn(&args, "m1", Some("after:apply_commit")),
                    "m1",
                    Duration::from_secs(180),
                )
                .await;
            load.stop().await;
            assert_eq!(s.signal(), Some(9), "{}", tail(&env.stderr("m1")));
            let cleanup: Vec<String> = [
                "cleanup",
                "--source",
                &env.db.source,
                "--target",
                &env.db.target,
                "--dump-path",
                &env.work(),
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            let s = env
                .wait(
                    env.spawn(&cleanup, "c1", Some(&spec)),
                    "c1",
                    Duration::from_secs(60),
                )
                .await;
            env.assert_killed(s, "c1", &case);
            let s = env
                .wait(
                    env.spawn(&cleanup, "c2", None),
                    "c2",
                    Duration::from_secs(60),
                )
                .await;
            env.assert_success(s, "c2", "cleanup");
            assert_nothing_left_on_source(&env.db.source, false).await;
            let ours = testkit::query_scalar(
                &env.db.target,
                "SELECT count(*)::text FROM pg_namespace WHERE nspname = '_pg_dbmigrator'",
            )
            .await;
            assert_eq!(ours, "0", "our bookkeeping is left on the target");
            assert!(
                !Path::new(&format!("{}.resume.json", env.work())).exists(),
                "the resume token is left"
            );
        }
    }
}

/// Run an online `--fallback` migration: once it streams back, write on
/// the new server and ask for `end` (`rollback` or `finish`; again after
/// each resume).
/// Whether `q` answers the same on both servers. A session the run ends
/// under the check (a fence ends other sessions) is "not yet", not a
/// failure of the test.
async fn same_count(source: &str, target: &str, q: &str) -> bool {
    async fn one(conninfo: &str, q: &str) -> Option<String> {
        let c = testkit::try_client(conninfo).await.ok()?;
        c.query_one(q, &[]).await.ok()?.try_get::<_, String>(0).ok()
    }
    match (one(source, q).await, one(target, q).await) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

async fn fallback_run(
    env: &Env,
    args: &[String],
    log: &str,
    kill_at: Option<&str>,
    end: &'static str,
) -> std::process::ExitStatus {
    let mut child = env.spawn(args, log, kill_at);
    let deadline = Instant::now() + Duration::from_secs(240);
    let mut asked = false;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "{log} did not end: {}",
            tail(&env.stderr(log))
        );
        if !asked
            && env
                .stderr(log)
                .contains("fallback: streaming the new server's changes back")
        {
            asked = true;
            // The application now writes on the new server.
            let w = testkit::execute(
                &env.db.target,
                "INSERT INTO events (account, v) VALUES (1, 'on the new server');
                 UPDATE counters SET n = n + 100 WHERE id = 1;",
            )
            .await;
            if let Err(e) = &w {
                eprintln!("    writing on the new server failed: {e}");
            }
            // Until the write has streamed back (or the run ended).
            let q = "SELECT count(*)::text FROM events WHERE v = 'on the new server'";
            let back = Instant::now() + Duration::from_secs(20);
            while Instant::now() < back
                && child.try_wait().unwrap().is_none()
                && !same_count(&env.db.source, &env.db.target, q).await
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let dump = env.work();
            tokio::spawn(async move { common::run_async(&[end, "--dump-path", &dump]).await });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Nothing of ours on the source: slot, publication, event trigger,
/// replica identity changes, and the fence unless `fenced` (a completed
/// cutover leaves the old source read-only on purpose).
async fn assert_nothing_left_on_source(source: &str, fenced: bool) {
    let fence = testkit::query_scalar(
        source,
        "SELECT count(*)::text FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase
          WHERE d.datname = current_database() AND 'default_transaction_read_only=on' = ANY (s.setconfig)",
    )
    .await;
    assert_eq!(fence == "1", fenced, "the source's fence");
    let left = testkit::query_scalar(
        source,
        "SELECT concat_ws(' ',
            (SELECT string_agg('slot ' || slot_name, ' ') FROM pg_replication_slots WHERE database = current_database()),
            (SELECT string_agg('publication ' || pubname, ' ') FROM pg_publication),
            (SELECT string_agg('event trigger ' || evtname, ' ') FROM pg_event_trigger WHERE evtname LIKE 'pg_dbmigrator%'),
            (SELECT string_agg('identity ' || relname, ' ') FROM pg_class WHERE relname = 'events' AND relreplident <> 'd'))",
    )
    .await;
    assert_eq!(left, "", "left on the source");
}

/// Writes on the source while a run goes on: counters move and rows are
/// added to `events`, which has no key (a change applied twice doubles a
/// row). It stops for good at the first write the fence refuses, so the
/// fenced source stays what the target got.
struct Workload {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Workload {
    fn start(source: &str) -> Workload {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let source = source.to_string();
        let task = tokio::spawn(async move {
            let mut i = 0u64;
            let mut client: Option<tokio_postgres::Client> = None;
            while !s.load(Ordering::Acquire) {
                if client.as_ref().is_none_or(|c| c.is_closed()) {
                    client = testkit::try_client(&source).await.ok();
                }
                let Some(c) = &client else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                i += 1;
                let r = c
                    .batch_execute(&format!(
                        "BEGIN; UPDATE counters SET n = n + 1 WHERE id = {}; INSERT INTO events (account, v) VALUES ({}, 'w{i}'); COMMIT",
                        1 + i % 10,
                        1 + i % 300
                    ))
                    .await;
                if let Err(e) = r {
                    if e.code().is_some_and(|c| c.code() == "25006") {
                        return; // fenced: the source is the target's now
                    }
                    client = None;
                }
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
        });
        Workload { stop, task }
    }

    async fn stop(self) {
        self.stop.store(true, Ordering::Release);
        let _ = self.task.await;
    }
}
