//! Online migrations against real servers: a live workload writes on the
//! source while the tool copies the slot's snapshot, applies the stream and
//! cuts over. What a user cares about is asserted: every row and sequence on
//! the target equals the source's, the workload saw no error before the
//! fence, and nothing of ours is left on either server afterwards.

mod common;

use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{content_digest, sequences, text};
use pg_dbmigrator::testkit::{self, TestDb};

/// Tables of every shape the stream must carry: keys, no keys (replica
/// identity fixed by the tool), TOAST, partitions, identity columns,
/// sequences going up and down.
const SCHEMA: &str = "
CREATE TABLE accounts (id bigserial PRIMARY KEY, owner text NOT NULL, balance bigint NOT NULL DEFAULT 0);
CREATE TABLE docs (id int PRIMARY KEY, title text, body text);
ALTER TABLE docs ALTER body SET STORAGE EXTERNAL;
CREATE TABLE events (at timestamptz NOT NULL DEFAULT now(), kind text, payload jsonb);
CREATE TABLE keyed (code text NOT NULL, qty int);
CREATE UNIQUE INDEX keyed_code ON keyed (code);
CREATE TABLE parted (id int NOT NULL, region int NOT NULL, v text, PRIMARY KEY (id, region)) PARTITION BY LIST (region);
CREATE TABLE parted_1 PARTITION OF parted FOR VALUES IN (1);
CREATE TABLE parted_2 PARTITION OF parted FOR VALUES IN (2);
CREATE TABLE ident (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, v text);
CREATE TABLE scratch (id int PRIMARY KEY, v text);
CREATE UNLOGGED TABLE cache (k int PRIMARY KEY, v text);
CREATE MATERIALIZED VIEW account_count AS SELECT count(*) AS n FROM accounts;
CREATE SEQUENCE counter_seq;
CREATE SEQUENCE down_seq INCREMENT BY -1 MINVALUE -1000000 MAXVALUE 0 START 0;
";

const DATA: &str = "
INSERT INTO accounts (owner, balance) SELECT 'owner ' || g, g FROM generate_series(1, 2000) g;
INSERT INTO docs SELECT g, 'title ' || g, repeat(md5(g::text), 200) FROM generate_series(1, 50) g;
INSERT INTO events (kind, payload) SELECT 'k' || (g % 7), jsonb_build_object('n', g) FROM generate_series(1, 500) g;
INSERT INTO keyed SELECT 'c' || g, g FROM generate_series(1, 300) g;
INSERT INTO parted SELECT g, 1 + g % 2, 'v' || g FROM generate_series(1, 1000) g;
INSERT INTO ident (v) SELECT 'i' || g FROM generate_series(1, 100) g;
INSERT INTO scratch SELECT g, 's' || g FROM generate_series(1, 100) g;
INSERT INTO cache SELECT g, 'c' || g FROM generate_series(1, 50) g;
SELECT lo_from_bytea(0, 'a large object from before the snapshot');
SELECT nextval('counter_seq') FROM generate_series(1, 10);
SELECT nextval('down_seq') FROM generate_series(1, 10);
";

async fn online_db(prefix: &str) -> TestDb {
    online_db_on(testkit::shared_pair(), prefix).await
}

async fn online_db_on(pair: &testkit::Pair, prefix: &str) -> TestDb {
    let db = pair.fresh_db(prefix).await;
    testkit::execute(&db.source, SCHEMA).await.unwrap();
    testkit::execute(&db.source, DATA).await.unwrap();
    // Force big transactions to be streamed while in progress.
    testkit::execute(
        &db.source,
        &format!(
            "ALTER DATABASE {} SET logical_decoding_work_mem = '64kB'",
            pg_dbmigrator::pg::quote::ident(&db.name)
        ),
    )
    .await
    .unwrap();
    db
}

/// Errors the workload may see once the fence is up: its session was ended,
/// or its new session is read-only.
fn fence_error(e: &tokio_postgres::Error) -> bool {
    match e.code() {
        Some(c) => {
            let c = c.code();
            c == "57P01" || c == "25006"
        }
        None => true, // the connection was closed under it
    }
}

/// Errors of a session whose server went away (not the fence).
fn restart_error(e: &tokio_postgres::Error) -> bool {
    match e.code() {
        Some(c) => c.code().starts_with("08") || c.code() == "57P02" || c.code() == "57P03",
        None => true,
    }
}

struct Workload {
    stop: Arc<AtomicBool>,
    /// Transactions the workload committed.
    committed: Arc<AtomicU64>,
    /// Errors that were not caused by the fence.
    bad: Arc<Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Workload {
    /// Several sessions writing on the source until stopped or fenced.
    fn start(source: &str) -> Workload {
        Self::start_with(source, false)
    }

    /// With `reconnect`, sessions lost to a server restart connect again.
    fn start_with(source: &str, reconnect: bool) -> Workload {
        let stop = Arc::new(AtomicBool::new(false));
        let committed = Arc::new(AtomicU64::new(0));
        let bad = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for w in 0..4u32 {
            let (source, stop, committed, bad) = (
                source.to_string(),
                stop.clone(),
                committed.clone(),
                bad.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let mut c = testkit::client(&source).await;
                let mut i: i64 = 0;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let sql = step(w, i);
                    match c.batch_execute(&sql).await {
                        Ok(()) => {
                            committed.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) if reconnect && restart_error(&e) => loop {
                            tokio::time::sleep(Duration::from_millis(200)).await;
                            if stop.load(Ordering::Relaxed) {
                                return;
                            }
                            if let Ok(n) = testkit::try_client(&source).await {
                                c = n;
                                break;
                            }
                        },
                        Err(e) => {
                            if !fence_error(&e) {
                                bad.lock()
                                    .unwrap()
                                    .push(format!("writer {w} step {i}: {e:?}"));
                            }
                            return;
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }));
        }
        Workload {
            stop,
            committed,
            bad,
            tasks,
        }
    }

    async fn finish(self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
        let bad = self.bad.lock().unwrap().clone();
        // A workload that never wrote would prove nothing.
        assert!(
            self.committed.load(Ordering::Relaxed) >= 20,
            "the workload committed only {} transactions (errors: {bad:?})",
            self.committed.load(Ordering::Relaxed)
        );
        bad
    }
}

/// One transaction of writer `w`, step `i`.
fn step(w: u32, i: i64) -> String {
    let k = i * 4 + w as i64;
    match w {
        // Keys, deletes, sequences.
        0 => format!(
            "BEGIN;
             INSERT INTO accounts (owner, balance) VALUES ('new {k}', {k});
             UPDATE accounts SET balance = balance + 1 WHERE id = {};
             DELETE FROM accounts WHERE id = {};
             SELECT nextval('counter_seq'); SELECT nextval('down_seq');
             INSERT INTO cache VALUES ({k} % 200, 'w{k}') ON CONFLICT (k) DO UPDATE SET v = excluded.v;
             SELECT CASE WHEN {k} % 40 = 0 THEN lo_from_bytea(0, 'written while streaming') END;
             COMMIT;",
            1 + (k * 7) % 2000,
            1 + (k * 13) % 2000
        ),
        // TOAST: updates that leave the big column alone; primary-key updates.
        1 => match i % 4 {
            0 => format!(
                "INSERT INTO docs VALUES ({}, 'title', repeat(md5('{k}'), 300)) ON CONFLICT (id) DO UPDATE SET body = excluded.body",
                1000 + k
            ),
            1 => format!("UPDATE docs SET title = 'retitled {k}' WHERE id = {}", 1 + k % 50),
            2 => format!(
                "UPDATE docs SET id = {} WHERE id = (SELECT max(id) FROM docs WHERE id >= 1000)",
                100_000 + k
            ),
            _ => "DELETE FROM docs WHERE id = (SELECT min(id) FROM docs WHERE id >= 100000)".to_string(),
        },
        // Tables without a primary key (identity fixed by the tool).
        2 => match i % 4 {
            0 => format!("INSERT INTO events (kind, payload) VALUES ('w{k}', '{{\"k\": {k}}}')"),
            1 => format!(
                "UPDATE events SET kind = kind || 'u' WHERE ctid = (SELECT ctid FROM events WHERE kind <> 'gone' LIMIT 1 OFFSET {})",
                k % 50
            ),
            2 => format!(
                "INSERT INTO keyed VALUES ('n{k}', {k}); UPDATE keyed SET qty = qty + 1 WHERE code = 'c{}'",
                1 + k % 300
            ),
            _ => format!(
                "DELETE FROM events WHERE ctid = (SELECT ctid FROM events LIMIT 1 OFFSET {}); DELETE FROM keyed WHERE code = 'n{}'",
                k % 30,
                k - 8
            ),
        },
        // Partitions (rows moving between them), identity columns.
        _ => match i % 3 {
            0 => format!(
                "INSERT INTO parted VALUES ({}, 1, 'p{k}'); INSERT INTO ident (v) VALUES ('n{k}')",
                10_000 + k
            ),
            1 => format!(
                "UPDATE parted SET region = 3 - region, v = v || 'm' WHERE id = {}",
                1 + k % 1000
            ),
            _ => format!("UPDATE ident SET v = v || 'u' WHERE id = {}", 1 + k % 100),
        },
    }
}

fn spawn_migrate(args: &[&str], log: &std::path::Path, env: &[(&str, &str)]) -> Child {
    let err = std::fs::File::create(log).unwrap();
    let mut c = common::command(args);
    for (k, v) in env {
        c.env(k, v);
    }
    c.stdout(Stdio::piped())
        .stderr(err)
        .spawn()
        .expect("starting pg_dbmigrator")
}

async fn wait_child(mut child: Child, limit: Duration) -> (Option<i32>, String) {
    tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(s) = child.try_wait().unwrap() {
                let mut out = String::new();
                use std::io::Read;
                child
                    .stdout
                    .take()
                    .unwrap()
                    .read_to_string(&mut out)
                    .unwrap();
                return (s.code(), out);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return (None, String::new());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    })
    .await
    .unwrap()
}

/// Nothing of ours on the source (slot, publication, changed replica
/// identities) or on the target (bookkeeping schema).
async fn assert_nothing_left(db: &TestDb) {
    let src = testkit::client(&db.source).await;
    let slots: i64 = src
        .query_one(
            "SELECT count(*) FROM pg_replication_slots WHERE database = current_database()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(slots, 0, "a replication slot was left on the source");
    let pubs: i64 = src
        .query_one("SELECT count(*) FROM pg_publication", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(pubs, 0, "a publication was left on the source");
    let capture: i64 = src
        .query_one(
            "SELECT (SELECT count(*) FROM pg_event_trigger)
                  + (SELECT count(*) FROM pg_namespace WHERE nspname = '_pg_dbmigrator')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        capture, 0,
        "our DDL capture (event trigger, schema) was left on the source"
    );
    for side in [&db.source, &db.target] {
        let c = testkit::client(side).await;
        let ri: String = c
            .query_one(
                "SELECT string_agg(relname || '=' || relreplident::text, ',' ORDER BY relname) FROM pg_class
                  WHERE relname IN ('events', 'keyed', 'accounts')",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(
            ri, "accounts=d,events=d,keyed=d",
            "replica identities on {side}"
        );
    }
    let tgt = testkit::client(&db.target).await;
    let ours: i64 = tgt
        .query_one(
            "SELECT count(*) FROM pg_namespace WHERE nspname = '_pg_dbmigrator'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(ours, 0, "our bookkeeping schema was left on the target");
}

async fn large_objects(conninfo: &str) -> Vec<(u32, String)> {
    let c = testkit::client(conninfo).await;
    c.query(
        "SELECT oid, md5(lo_get(oid)) FROM pg_largeobject_metadata ORDER BY oid",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

/// Replication slots of this database plus publications, on the source.
async fn slots_and_publications(db: &TestDb) -> i64 {
    testkit::client(&db.source)
        .await
        .query_one(
            "SELECT (SELECT count(*) FROM pg_replication_slots WHERE database = current_database())
                  + (SELECT count(*) FROM pg_publication)",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

async fn assert_same(db: &TestDb) {
    let (a, b) = tokio::join!(content_digest(&db.source), content_digest(&db.target));
    assert_eq!(a, b, "source and target rows differ");
    let (a, b) = tokio::join!(sequences(&db.source), sequences(&db.target));
    assert_eq!(a, b, "sequences differ");
    let (a, b) = tokio::join!(large_objects(&db.source), large_objects(&db.target));
    assert_eq!(a, b, "large objects differ");
}

/// A new session on the source may not write (the fence).
async fn assert_fenced(db: &TestDb) {
    let c = testkit::client(&db.source).await;
    let e = c
        .batch_execute("INSERT INTO accounts (owner) VALUES ('after the fence')")
        .await
        .expect_err("the source must be read-only after the cutover");
    assert_eq!(e.code().map(|c| c.code()), Some("25006"), "{e:?}");
}

/// A test database, its work directory, and the migrate command line.
struct Run {
    db: TestDb,
    dir: tempfile::TempDir,
}

impl Run {
    async fn new(prefix: &str) -> Run {
        Run {
            db: online_db(prefix).await,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    async fn on(pair: &testkit::Pair, prefix: &str) -> Run {
        Run {
            db: online_db_on(pair, prefix).await,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn dump(&self) -> String {
        self.dir.path().join("w").to_str().unwrap().to_string()
    }

    fn token_path(&self) -> std::path::PathBuf {
        pg_dbmigrator::ResumeToken::path_for(std::path::Path::new(&self.dump()))
    }

    fn log(&self, n: &str) -> std::path::PathBuf {
        self.dir.path().join(format!("{n}.log"))
    }

    fn args(&self, extra: &[&str]) -> Vec<String> {
        let mut v: Vec<String> = [
            "migrate",
            "--mode",
            "online",
            "--fix-replica-identity",
            "--source",
            &self.db.source,
            "--target",
            &self.db.target,
            "--jobs",
            "2",
            "--dump-path",
            &self.dump(),
            "--json",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    }

    /// Start migrate; `stop_at` makes it wait at that test point (to be killed).
    fn spawn(&self, extra: &[&str], log: &str, stop_at: Option<&str>) -> Child {
        let args = self.args(extra);
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut env = vec![("PG_DBMIGRATOR_TEST_MIN_STREAM_SECS", "3")];
        if let Some(p) = stop_at {
            env.push(("PG_DBMIGRATOR_TEST_STOP_AT", p));
        }
        spawn_migrate(&a, &self.log(log), &env)
    }

    /// `pg_dbmigrator cleanup`, which must succeed and leave nothing of ours.
    async fn cleanup(&self) {
        let out = common::run_async(&[
            "cleanup",
            "--source",
            &self.db.source,
            "--target",
            &self.db.target,
            "--dump-path",
            &self.dump(),
        ])
        .await;
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        assert_nothing_left(&self.db).await;
    }

    fn stderr(&self, log: &str) -> String {
        std::fs::read_to_string(self.log(log)).unwrap_or_default()
    }

    /// Wait until the process logs that it reached test stop point `p`.
    async fn wait_stop_point(&self, log: &str, p: &str) {
        self.wait_log(log, &format!("TEST_STOP_AT {p}")).await;
    }

    /// Wait until the process's log holds `needle`.
    async fn wait_log(&self, log: &str, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(120);
        while !self.stderr(log).contains(needle) {
            assert!(
                Instant::now() < deadline,
                "never logged {needle:?}: {}",
                self.stderr(log)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Wait until the token says streaming began.
    async fn wait_streaming(&self, log: &str) {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Ok(Some(t)) = pg_dbmigrator::ResumeToken::load(&self.token_path()) {
                if t.stages
                    .iter()
                    .any(|s| s.stage == pg_dbmigrator::Stage::Stream)
                {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "never streamed: {}",
                self.stderr(log)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The migration's result: exit 0 with a clean verify; the target
    /// equals the source; nothing of ours is left; the source is fenced.
    async fn assert_success(&self, code: Option<i32>, out: &str, log: &str) -> serde_json::Value {
        // Set-wise apply must not need its fallback on ordinary workloads
        // (it would hide a broken set statement behind the slow path).
        assert!(
            !self.stderr(log).contains("set-wise apply failed"),
            "{}",
            self.stderr(log)
        );
        self.assert_success_allowing_fallback(code, out, log).await
    }

    async fn assert_success_allowing_fallback(
        &self,
        code: Option<i32>,
        out: &str,
        log: &str,
    ) -> serde_json::Value {
        assert_eq!(code, Some(0), "stderr: {}", self.stderr(log));
        // Passwords appear nowhere: not in the log, the report or the token.
        let token = std::fs::read_to_string(self.token_path()).unwrap();
        for ci in [&self.db.source, &self.db.target] {
            let pw = ci
                .split_whitespace()
                .find_map(|kv| kv.strip_prefix("password="))
                .expect("the test servers use passwords");
            for (what, text) in [
                ("log", self.stderr(log)),
                ("report", out.to_string()),
                ("token", token.clone()),
            ] {
                assert!(!text.contains(pw), "a password leaked into the {what}");
            }
        }
        let report = common::report_of(out.as_bytes());
        assert_eq!(
            report["verify"]["differences"].as_array().unwrap().len(),
            0,
            "{report:#}"
        );
        // The same report is kept as JSON beside the resume token.
        let kept: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(format!("{}.summary.json", self.dump())).unwrap(),
        )
        .unwrap();
        assert_eq!(kept["migration_id"], report["migration_id"]);
        assert_eq!(
            kept["online"]["cutover"]["downtime_seconds"],
            report["online"]["cutover"]["downtime_seconds"]
        );
        assert!(
            report["online"]["cutover"]["fence_lsn"].is_string(),
            "{report:#}"
        );
        assert_same(&self.db).await;
        // Materialized views are refreshed on the target at the cutover.
        let tgt = testkit::client(&self.db.target).await;
        let (mv, n): (i64, i64) = {
            let r = tgt
                .query_one(
                    "SELECT (SELECT n FROM account_count), (SELECT count(*) FROM accounts)",
                    &[],
                )
                .await
                .unwrap();
            (r.get(0), r.get(1))
        };
        assert_eq!(
            mv, n,
            "the materialized view was not refreshed on the target"
        );
        assert_nothing_left(&self.db).await;
        assert_fenced(&self.db).await;
        report
    }
}

/// A TRUNCATE, then a transaction big enough to be streamed while in
/// progress, with a subtransaction rolled back inside it.
fn big_transactions(source: &str, after: Duration) -> tokio::task::JoinHandle<()> {
    let source = source.to_string();
    tokio::spawn(async move {
        tokio::time::sleep(after).await;
        let c = testkit::client(&source).await;
        c.batch_execute("TRUNCATE scratch").await.unwrap();
        c.batch_execute(
            "BEGIN;
             INSERT INTO scratch SELECT g, repeat('x', 200) FROM generate_series(1, 4000) g;
             SAVEPOINT s1;
             INSERT INTO scratch SELECT g, 'rolled back' FROM generate_series(10001, 12000) g;
             ROLLBACK TO SAVEPOINT s1;
             UPDATE scratch SET v = 'updated' WHERE id % 10 = 0;
             COMMIT;",
        )
        .await
        .unwrap();
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn auto_cutover_under_load_loses_nothing() {
    let r = Run::new("online_auto").await;
    let load = Workload::start(&r.db.source);
    let big = big_transactions(&r.db.source, Duration::from_millis(1500));
    // (Auto cutover waits for 3 s of streaming in tests, so the stream
    // carries the big transaction too.)
    let child = r.spawn(&["--cutover", "auto"], "m", None);
    let (code, out) = wait_child(child, Duration::from_secs(240)).await;
    let bad = load.finish().await;
    big.await.unwrap();
    let report = r.assert_success(code, &out, "m").await;
    assert!(
        bad.is_empty(),
        "the workload failed before the fence: {bad:?}"
    );
    // The NDJSON events of an online run: stages, the cutover, warnings.
    let events = common::check_events(out.as_bytes());
    for kind in [
        "cutover_started",
        "cutover_finished",
        "item_copied",
        "warning",
        "lag",
    ] {
        assert!(
            events.iter().any(|e| e["event"] == kind),
            "no {kind} event: {events:#?}"
        );
    }
    assert!(
        report["online"]["apply"]["transactions"].as_u64().unwrap() > 0,
        "{report:#}"
    );
    assert!(
        r.stderr("m").contains("streamed while it was in progress"),
        "the big transaction should have been streamed: {}",
        r.stderr("m")
    );
    let un = common::run_async(&["unfence", "--source", &r.db.source]).await;
    assert_eq!(un.status.code(), Some(0), "{}", text(&un.stderr));
    testkit::execute(
        &r.db.source,
        "INSERT INTO scratch VALUES (-1, 'after unfence')",
    )
    .await
    .expect("writable again after unfence");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn manual_cutover_from_another_process() {
    let r = Run::new("online_manual").await;
    let load = Workload::start(&r.db.source);
    let child = r.spawn(&[], "m", None);
    r.wait_streaming("m").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let c = common::run_async(&["cutover", "--dump-path", &r.dump()]).await;
    assert_eq!(
        c.status.code(),
        Some(0),
        "cutover: {}\nmigrate: {}",
        text(&c.stderr),
        r.stderr("m")
    );
    assert!(
        text(&c.stdout).contains("writes were blocked for"),
        "{}",
        text(&c.stdout)
    );
    let (code, out) = wait_child(child, Duration::from_secs(120)).await;
    let bad = load.finish().await;
    r.assert_success(code, &out, "m").await;
    assert!(
        bad.is_empty(),
        "the workload failed before the fence: {bad:?}"
    );
    // Nothing is running any more: a second request is answered, not lost.
    let again = common::run_async(&["cutover", "--dump-path", &r.dump()]).await;
    assert_eq!(again.status.code(), Some(0), "{}", text(&again.stderr));
    assert!(text(&again.stdout).contains("already done"));
}

/// kill -9 at `point`, then `--resume` completes with every row exactly once.
async fn kill_then_resume(point: &str) -> Run {
    let r = Run::new(&format!("online_kill_{}", point.replace([':', '#'], "_"))).await;
    let load = Workload::start(&r.db.source);
    let mut child = r.spawn(&["--cutover", "auto"], "m1", Some(point));
    r.wait_stop_point("m1", point).await;
    child.kill().unwrap();
    child.wait().unwrap();
    if point == "after:drain" {
        // Asked of a dead migration, `cutover` says so at once.
        let t0 = std::time::Instant::now();
        let out = common::run_async(&["cutover", "--dump-path", &r.dump()]).await;
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
        assert!(
            err.contains("is not running (it died in the middle of its cutover)")
                && err.contains("--resume"),
            "{err}"
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let child = r.spawn(&["--cutover", "auto", "--resume"], "m2", None);
    let (code, out) = wait_child(child, Duration::from_secs(240)).await;
    let bad = load.finish().await;
    r.assert_success(code, &out, "m2").await;
    assert!(
        bad.is_empty(),
        "the workload failed before the fence: {bad:?}"
    );
    r
}

/// `--resume` of the finished migration `r`: it says it is complete and
/// exits 0, changing nothing.
async fn resume_finished(r: &Run) {
    let before = std::fs::read_to_string(format!("{}.summary.json", r.dump())).unwrap();
    let args = r.args(&["--cutover", "auto", "--resume"]);
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = common::run_async(&a).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let report = common::report_of(&out.stdout);
    assert_eq!(report["already_complete"], true, "{report:#}");
    let human: Vec<String> = r.args(&["--cutover", "auto", "--resume"]);
    let a: Vec<&str> = human
        .iter()
        .map(String::as_str)
        .filter(|s| *s != "--json")
        .collect();
    let out = common::run_async(&a).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("is already complete"),
        "{}",
        text(&out.stdout)
    );
    let after = std::fs::read_to_string(format!("{}.summary.json", r.dump())).unwrap();
    assert_eq!(before, after, "the finishing run's report is kept");
    assert_nothing_left(&r.db).await;
}

/// Killed after the cutover dropped the slot, before the token says so:
/// the drain to the fence was recorded, so the missing slot is not "lost";
/// `--resume` finishes the cutover and the migration.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_after_the_cutover_dropped_the_slot_then_resume() {
    let r = kill_then_resume("after:drop_slot").await;
    resume_finished(&r).await;
}

/// Killed after `cutover done`, before the migration recorded its end:
/// `--resume` verifies, records it complete and exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_after_the_cutover_finished_then_resume() {
    let r = kill_then_resume("after:cutover_done").await;
    resume_finished(&r).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_after_slot_creation_then_resume() {
    kill_then_resume("after:slot").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_mid_copy_then_resume() {
    kill_then_resume("after:copy_item").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_after_copy_then_resume() {
    kill_then_resume("after:stream_start").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_between_apply_commit_and_status_update_then_resume() {
    kill_then_resume("after:apply_commit").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_mid_cutover_then_resume() {
    kill_then_resume("after:drain").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ctrl_c_during_copy_then_cleanup_leaves_nothing() {
    let r = Run::new("online_ctrlc").await;
    let mut child = r.spawn(&["--cutover", "auto"], "m", Some("after:copy_item"));
    r.wait_stop_point("m", "after:copy_item").await;
    let pid = child.id() as i32;
    assert_eq!(unsafe_kill(pid, 2), 0);
    let code = tokio::task::spawn_blocking(move || child.wait().unwrap().code())
        .await
        .unwrap();
    assert_eq!(code, Some(130), "stderr: {}", r.stderr("m"));
    // No cutover: the source still takes writes.
    testkit::execute(
        &r.db.source,
        "INSERT INTO scratch VALUES (-5, 'not fenced')",
    )
    .await
    .expect("no fence after Ctrl-C");
    r.cleanup().await;
    assert!(!r.token_path().exists(), "cleanup removes the resume token");
}

fn unsafe_kill(pid: i32, sig: i32) -> i32 {
    std::process::Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .map(|s| if s.success() { 0 } else { 1 })
        .unwrap_or(1)
}

/// The source, then the target, crash and restart while changes stream;
/// the migration reconnects to each and completes without loss.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn source_and_target_restart_while_streaming() {
    // Servers of this test's own: restarting the shared ones would break
    // the tests running beside it.
    let pair: &'static testkit::Pair = Box::leak(Box::new(
        tokio::task::spawn_blocking(testkit::Pair::start)
            .await
            .unwrap()
            .expect("starting a pair of servers"),
    ));
    let r = Run::on(pair, "online_restart").await;
    let load = Workload::start_with(&r.db.source, true);
    let child = r.spawn(&[], "m", None);
    r.wait_streaming("m").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let target = r.db.target.clone();
    let progress = move || {
        let target = target.clone();
        async move {
            match testkit::try_client(&target).await {
                Ok(c) => c
                    .query_one("SELECT end_lsn::text FROM _pg_dbmigrator.progress", &[])
                    .await
                    .map(|row| row.get::<_, String>(0))
                    .unwrap_or_default(),
                Err(_) => String::new(),
            }
        }
    };
    for (side, cluster) in [
        ("source", pair.source.cluster().unwrap()),
        ("target", pair.target.cluster().unwrap()),
    ] {
        let before = progress().await;
        tokio::task::spawn_blocking(move || cluster.restart(true))
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("restarting the {side}: {e}"));
        // Applying goes on after the restart.
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let now = progress().await;
            if !now.is_empty() && now != before {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no progress after the {side} restarted: {}",
                r.stderr("m")
            );
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let c = common::run_async(&["cutover", "--dump-path", &r.dump()]).await;
    assert_eq!(
        c.status.code(),
        Some(0),
        "cutover: {}\nmigrate: {}",
        text(&c.stderr),
        r.stderr("m")
    );
    let (code, out) = wait_child(child, Duration::from_secs(120)).await;
    let bad = load.finish().await;
    let report = r.assert_success(code, &out, "m").await;
    assert!(bad.is_empty(), "the workload failed: {bad:?}");
    assert!(
        report["online"]["apply"]["reconnects"].as_u64().unwrap() >= 2,
        "{report:#}"
    );
    pair.source.cluster().unwrap().stop();
    pair.target.cluster().unwrap().stop();
}

/// Without --fix-replica-identity, tables that could not publish their
/// UPDATEs and DELETEs stop the migration before anything is created.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn missing_replica_identity_refused_before_anything_is_created() {
    let r = Run::new("online_noident").await;
    let args: Vec<String> = r
        .args(&[])
        .into_iter()
        .filter(|a| a != "--fix-replica-identity")
        .collect();
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = common::run_async(&a).await;
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    for needle in [
        "events",
        "keyed",
        "--fix-replica-identity",
        "REPLICA IDENTITY",
    ] {
        assert!(
            err.contains(needle),
            "the message must name {needle}: {err}"
        );
    }
    assert!(
        !err.contains("accounts"),
        "tables with a key are fine: {err}"
    );
    let src = testkit::client(&r.db.source).await;
    let created = slots_and_publications(&r.db).await;
    assert_eq!(created, 0, "nothing may be created on the source");
    let ri: String = src
        .query_one(
            "SELECT string_agg(relname || '=' || relreplident::text, ',' ORDER BY relname) FROM pg_class WHERE relname IN ('events', 'keyed')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(ri, "events=d,keyed=d");
    let tgt = testkit::client(&r.db.target).await;
    let objects: i64 = tgt
        .query_one(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(objects, 0, "nothing may be created on the target");
    assert!(
        !r.token_path().exists(),
        "no resume token for a refused run"
    );
}

/// The library: a data-only online migration into a schema made by hand,
/// cut over through a `CutoverHandle` after the application stopped its
/// writes itself (`fence: false`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn library_cutover_handle_data_only_without_fence() {
    use pg_dbmigrator::{CutoverMode, EndpointConfig, MigrationConfig, MigrationMode, Migrator};
    let r = Run::new("online_lib").await;
    testkit::execute(&r.db.target, SCHEMA).await.unwrap();
    let load = Workload::start(&r.db.source);
    let config = MigrationConfig {
        source: Some(EndpointConfig::parse(&r.db.source).unwrap()),
        target: Some(EndpointConfig::parse(&r.db.target).unwrap()),
        mode: MigrationMode::Online,
        data_only: true,
        jobs: 2,
        cutover: CutoverMode::Manual,
        fix_replica_identity: true,
        fence: false,
        dump_path: Some(r.dir.path().join("w")),
        ..Default::default()
    };
    let migrator = Migrator::new(config);
    let handle = migrator.cutover_handle();
    let run = tokio::spawn(async move {
        migrator
            .run(tokio_util::sync::CancellationToken::new())
            .await
    });
    r.wait_streaming("none").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    // The application stops writing; then the cutover.
    let bad = load.finish().await;
    assert!(bad.is_empty(), "the workload failed: {bad:?}");
    handle.request();
    let report = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the cutover finishes")
        .unwrap()
        .expect("the migration succeeds");
    let online = report.online.as_ref().expect("an online report");
    assert!(!online.cutover.fenced);
    assert!(online.cutover.fence_lsn.is_some());
    assert!(report.verify.as_ref().unwrap().is_clean());
    assert_same(&r.db).await;
    // No fence: the source takes writes.
    testkit::execute(&r.db.source, "INSERT INTO scratch VALUES (-7, 'no fence')")
        .await
        .expect("the source stays writable with fence: false");
}

/// A cutover step that fails lifts the fence, streaming goes on, and a
/// second request (after the cause is fixed) completes the migration.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failed_cutover_lifts_the_fence_and_streaming_goes_on() {
    let r = Run::new("online_cutfail").await;
    let child = r.spawn(&[], "m", None);
    r.wait_streaming("m").await;
    // The sequence step will fail: the target lost a sequence.
    testkit::execute(&r.db.target, "DROP SEQUENCE counter_seq")
        .await
        .unwrap();
    let c = common::run_async(&["cutover", "--dump-path", &r.dump()]).await;
    let err = text(&c.stderr);
    assert_ne!(c.status.code(), Some(0), "{err}");
    assert!(
        err.contains("fence is lifted") && err.contains("counter_seq"),
        "{err}"
    );
    // Writable again, and still streaming: these rows reach the target.
    testkit::execute(
        &r.db.source,
        "INSERT INTO scratch SELECT g, 'after the failed cutover' FROM generate_series(500, 600) g;
         SELECT nextval('counter_seq')",
    )
    .await
    .expect("the fence is lifted after a failed cutover");
    testkit::execute(&r.db.target, "CREATE SEQUENCE counter_seq")
        .await
        .unwrap();
    let c = common::run_async(&["cutover", "--dump-path", &r.dump()]).await;
    assert_eq!(
        c.status.code(),
        Some(0),
        "{}\n{}",
        text(&c.stderr),
        r.stderr("m")
    );
    let (code, out) = wait_child(child, Duration::from_secs(120)).await;
    r.assert_success(code, &out, "m").await;
}

/// A failure after the handover (here the publication's drop, refused by
/// an event trigger of the user's): the writes belong on the target by
/// then, so the source stays fenced and nothing streams again. The run
/// fails saying the cutover completed and what is left; the same run again
/// removes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failure_after_the_handover_keeps_the_fence_and_the_rerun_finishes() {
    let r = Run::new("online_afterhand").await;
    let guard = "CREATE FUNCTION public.keep_publications() RETURNS event_trigger LANGUAGE plpgsql
                   AS $$ BEGIN RAISE EXCEPTION 'publications stay here'; END $$;
                 CREATE EVENT TRIGGER keep_publications ON ddl_command_start
                   WHEN TAG IN ('DROP PUBLICATION') EXECUTE FUNCTION public.keep_publications()";
    testkit::execute(&r.db.source, guard).await.unwrap();
    let child = r.spawn(&["--cutover", "auto"], "m1", None);
    let (code, _) = wait_child(child, Duration::from_secs(180)).await;
    let err = r.stderr("m1");
    assert_ne!(code, Some(0), "{err}");
    assert!(
        err.contains("the cutover completed") && err.contains("publications stay here"),
        "{err}"
    );
    assert!(!err.contains("fence is lifted"), "{err}");
    // Handed over: fenced, the rows all on the target, the slot gone and
    // the publication left.
    assert_fenced(&r.db).await;
    assert_same(&r.db).await;
    assert_eq!(slots_and_publications(&r.db).await, 1);
    let drop_guard = "BEGIN READ WRITE;
                      DROP EVENT TRIGGER keep_publications; DROP FUNCTION public.keep_publications();
                      COMMIT";
    testkit::execute(&r.db.source, drop_guard).await.unwrap();
    testkit::execute(&r.db.target, drop_guard).await.unwrap();
    let child = r.spawn(&["--cutover", "auto", "--resume"], "m2", None);
    let (code, out) = wait_child(child, Duration::from_secs(180)).await;
    assert!(
        r.stderr("m2").contains("the cutover had completed"),
        "{}",
        r.stderr("m2")
    );
    r.assert_success(code, &out, "m2").await;
}

/// Rows swapping a unique value within one batch: one set-wise UPDATE
/// would trip over the unique index, so the applier replays that stretch
/// one statement at a time, and the target still ends up equal.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unique_swaps_fall_back_to_one_statement_at_a_time() {
    let r = Run::new("online_swap").await;
    testkit::execute(
        &r.db.source,
        "CREATE TABLE uniq (id int PRIMARY KEY, code int NOT NULL UNIQUE, note text);
         INSERT INTO uniq SELECT g, g, 'n' FROM generate_series(1, 20) g;",
    )
    .await
    .unwrap();
    let child = r.spawn(&[], "m", None);
    r.wait_streaming("m").await;
    let c = testkit::client(&r.db.source).await;
    for round in 0..5 {
        c.batch_execute(&format!(
            "BEGIN;
             UPDATE uniq SET code = -1 WHERE id = 1;
             UPDATE uniq SET code = 1000 WHERE id = 2;
             UPDATE uniq SET code = (CASE WHEN {round} % 2 = 0 THEN 2 ELSE 1 END) WHERE id = 1;
             UPDATE uniq SET code = (CASE WHEN {round} % 2 = 0 THEN 1 ELSE 2 END) WHERE id = 2;
             UPDATE uniq SET note = note || 'x';
             COMMIT;"
        ))
        .await
        .unwrap();
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let cut = common::run_async(&["cutover", "--dump-path", &r.dump()]).await;
    assert_eq!(
        cut.status.code(),
        Some(0),
        "{}\n{}",
        text(&cut.stderr),
        r.stderr("m")
    );
    let (code, out) = wait_child(child, Duration::from_secs(120)).await;
    r.assert_success_allowing_fallback(code, &out, "m").await;
    assert!(
        r.stderr("m").contains("duplicate key")
            && r.stderr("m").contains("one statement at a time"),
        "the swap should have needed the fallback: {}",
        r.stderr("m")
    );
}

/// A change the target cannot take (a row in the way) stops the migration
/// with the source transaction's position, the table and the server's
/// error; `cleanup` then removes everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn apply_conflict_stops_with_the_transaction_table_and_error() {
    let r = Run::new("online_conflict").await;
    let child = r.spawn(&[], "m", None);
    r.wait_streaming("m").await;
    testkit::execute(
        &r.db.target,
        "INSERT INTO scratch VALUES (777777, 'in the way')",
    )
    .await
    .unwrap();
    testkit::execute(
        &r.db.source,
        "INSERT INTO scratch VALUES (777777, 'from the source')",
    )
    .await
    .unwrap();
    let (code, _) = wait_child(child, Duration::from_secs(120)).await;
    let err = r.stderr("m");
    assert_eq!(code, Some(1), "{err}");
    for needle in ["committed at", "public.scratch", "duplicate key", "777777"] {
        assert!(err.contains(needle), "the error must name {needle}: {err}");
    }
    r.cleanup().await;
}

/// After the copy the slot is the only record of the changes since the
/// snapshot: if it is gone, `--resume` refuses (pointing to
/// `--force-clean`), and `--force-clean` starts over and completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slot_lost_after_the_copy_refuses_resume_then_force_clean_starts_over() {
    let r = Run::new("online_slotlost").await;
    let mut child = r.spawn(&[], "m1", Some("after:stream_start"));
    r.wait_stop_point("m1", "after:stream_start").await;
    child.kill().unwrap();
    child.wait().unwrap();
    let slot: String = pg_dbmigrator::ResumeToken::load(&r.token_path())
        .unwrap()
        .unwrap()
        .online
        .unwrap()
        .slot_name;
    let src = testkit::client(&r.db.source).await;
    src.execute("SELECT pg_drop_replication_slot($1)", &[&slot])
        .await
        .unwrap();
    testkit::execute(
        &r.db.source,
        "INSERT INTO scratch VALUES (-3, 'lost with the slot')",
    )
    .await
    .unwrap();
    let args = r.args(&["--cutover", "auto", "--resume"]);
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = common::run_async(&a).await;
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--force-clean") && err.contains("slot"),
        "{err}"
    );
    let child = r.spawn(&["--cutover", "auto", "--force-clean"], "m3", None);
    let (code, out) = wait_child(child, Duration::from_secs(240)).await;
    r.assert_success(code, &out, "m3").await;
}

/// While the published tables are quiet, the slot still moves with the
/// source's WAL (flush = the last keepalive's WAL end when nothing is in
/// flight), so an idle migration does not pin the source's WAL.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn quiet_publication_does_not_pin_wal() {
    let r = Run::new("online_quiet").await;
    let child = r.spawn(&[], "m", None);
    r.wait_streaming("m").await;
    let src = testkit::client(&r.db.source).await;
    // WAL the publication does not carry: a table created after it.
    src.batch_execute(
        "CREATE TABLE unpublished (id int, v text);
         INSERT INTO unpublished SELECT g, repeat('w', 100) FROM generate_series(1, 20000) g;",
    )
    .await
    .unwrap();
    let lsn: String = src
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let moved: bool = src
            .query_one(
                "SELECT confirmed_flush_lsn >= $1::text::pg_lsn FROM pg_replication_slots
                  WHERE database = current_database() AND slot_name LIKE 'pg_dbmigrator%'",
                &[&lsn],
            )
            .await
            .unwrap()
            .get(0);
        if moved {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the slot did not move past {lsn} while the publication was quiet: {}",
            r.stderr("m")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // DDL is not replicated: the table would make verify differ.
    src.batch_execute("DROP TABLE unpublished").await.unwrap();
    let c = common::run_async(&["cutover", "--dump-path", &r.dump()]).await;
    assert_eq!(c.status.code(), Some(0), "{}", text(&c.stderr));
    let (code, out) = wait_child(child, Duration::from_secs(120)).await;
    r.assert_success(code, &out, "m").await;
}

/// `--keep-slot --keep-publication` leave both on the source after the
/// cutover (for a fall-back replication the operator sets up); `cleanup`
/// removes them later.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keep_slot_and_publication_then_cleanup() {
    let r = Run::new("online_keep").await;
    let child = r.spawn(
        &["--cutover", "auto", "--keep-slot", "--keep-publication"],
        "m",
        None,
    );
    let (code, out) = wait_child(child, Duration::from_secs(120)).await;
    assert_eq!(code, Some(0), "{}", r.stderr("m"));
    let report = common::report_of(out.as_bytes());
    assert_eq!(report["verify"]["differences"].as_array().unwrap().len(), 0);
    let kept = slots_and_publications(&r.db).await;
    assert_eq!(kept, 2, "the slot and the publication are kept");
    r.cleanup().await;
}

/// `--http`: Prometheus metrics and the JSON status, scraped over real HTTP
/// while an online migration runs: the copy's counters, then the applied
/// transactions growing with the source's writes, and the lag.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_and_status_over_http_while_streaming() {
    let r = Run::new("online_http").await;
    let child = r.spawn(&["--http", "127.0.0.1:0"], "m", None);
    r.wait_streaming("m").await;
    let log = r.stderr("m");
    let addr = log
        .split("metrics=http://")
        .nth(1)
        .and_then(|s| s.split('/').next())
        .unwrap_or_else(|| panic!("no metrics address logged: {log}"))
        .to_string();
    let (status, m1) = common::http_get(&addr, "/metrics");
    assert!(status.contains("200"), "{status}");
    let total = common::metric(&m1, "items_total");
    assert!(
        total > 0.0 && common::metric(&m1, "items_done") == total,
        "{m1}"
    );
    assert!(common::metric(&m1, "bytes_copied") > 0.0, "{m1}");
    assert!(
        m1.contains("pg_dbmigrator_stage{stage=\"stream\"} 1"),
        "{m1}"
    );
    // Writes on the source show up as applied transactions and a lag value.
    testkit::execute(
        &r.db.source,
        "INSERT INTO scratch SELECT g, 'x' FROM generate_series(1000, 1100) g",
    )
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let m2 = loop {
        let (_, m) = common::http_get(&addr, "/metrics");
        if m.contains("pg_dbmigrator_applied_transactions")
            && common::metric(&m, "applied_transactions") >= 1.0
        {
            break m;
        }
        assert!(Instant::now() < deadline, "no applied transactions: {m}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    common::metric(&m2, "lag_bytes");
    common::metric(&m2, "lag_seconds");
    let (status, body) = common::http_get(&addr, "/status");
    assert!(status.contains("200"), "{status}");
    let st: serde_json::Value = serde_json::from_str(&body).unwrap();
    let token = pg_dbmigrator::ResumeToken::load(&r.token_path())
        .unwrap()
        .unwrap();
    assert_eq!(st["migration_id"], token.migration_id.as_str());
    assert_eq!(st["stage"], "stream");
    assert!(common::http_get(&addr, "/nope").0.contains("404"));
    // `status` shows the same live state while the migration runs.
    // (The live file is rewritten every half second.)
    let deadline = Instant::now() + Duration::from_secs(10);
    let st = loop {
        let st = common::run_async(&["status", "--dump-path", &r.dump(), "--json"]).await;
        assert_eq!(st.status.code(), Some(0), "{}", text(&st.stderr));
        let st: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
        if st["live"]["stage"] == "stream" || Instant::now() > deadline {
            break st;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(st["live"]["migration_id"], token.migration_id.as_str());
    assert_eq!(st["live"]["stage"], "stream");
    assert_eq!(st["live"]["items_total"].as_f64().unwrap(), total);
    let st = common::run_async(&["status", "--dump-path", &r.dump()]).await;
    assert!(
        text(&st.stdout).contains("live        running: [stream]"),
        "{}",
        text(&st.stdout)
    );
    // The status page: self-contained, with a Cutover button that works
    // only with the token printed at start-up.
    let (status, page) = common::http_get(&addr, "/");
    assert!(status.contains("200"), "{status}");
    assert!(
        page.contains("<button id=\"cutover\"") && page.contains("/status"),
        "{page}"
    );
    assert!(
        !page.contains("src=\"http") && !page.contains("href=\"http"),
        "the page must not load external assets"
    );
    assert!(common::http_post(&addr, "/cutover", None).0.contains("403"));
    assert!(common::http_post(&addr, "/cutover", Some("wrong"))
        .0
        .contains("403"));
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(
        !r.stderr("m").contains("cutover requested"),
        "a refused request must not cut over"
    );
    let log = r.stderr("m");
    let token = log
        .split("cutover token for the status page: ")
        .nth(1)
        .and_then(|s| s.lines().next())
        .unwrap_or_else(|| panic!("no cutover token printed: {log}"))
        .trim()
        .to_string();
    let (status, _) = common::http_post(&addr, "/cutover", Some(&token));
    assert!(status.contains("200"), "{status}");
    let (code, out) = wait_child(child, Duration::from_secs(120)).await;
    let report = r.assert_success(code, &out, "m").await;
    assert!(report["online"]["cutover"]["downtime_seconds"]
        .as_f64()
        .is_some());
}

/// The status page in a real headless Chromium: it renders the live state
/// of an online run (screenshot kept in `target/status-page.png`), its
/// Cutover button is refused with a wrong token and cuts over with the
/// right one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn status_page_in_headless_chromium() {
    let modules = tokio::task::spawn_blocking(testkit::ensure_browser_tools)
        .await
        .unwrap()
        .expect("Chromium and playwright-core");
    let r = Run::new("online_page").await;
    let load = Workload::start(&r.db.source);
    let child = r.spawn(&["--http", "127.0.0.1:0"], "m", None);
    r.wait_streaming("m").await;
    let log = r.stderr("m");
    let addr = log
        .split("page=http://")
        .nth(1)
        .and_then(|s| s.split('/').next())
        .unwrap_or_else(|| panic!("no page address logged: {log}"))
        .to_string();
    let token = log
        .split("cutover token for the status page: ")
        .nth(1)
        .and_then(|s| s.lines().next())
        .unwrap_or_else(|| panic!("no cutover token printed: {log}"))
        .trim()
        .to_string();
    let shot = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target")
        .join("status-page.png");
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("browser")
        .join("status_page.js");
    let out = tokio::process::Command::new("node")
        .arg(&script)
        .arg(format!("http://{addr}/"))
        .arg(&token)
        .arg(&shot)
        .env("NODE_PATH", &modules)
        .output()
        .await
        .expect("running node");
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "browser script failed: {stdout}\n{}\nmigrate: {}",
        text(&out.stderr),
        r.stderr("m")
    );
    assert!(stdout.contains("refused without the token") && stdout.contains("cutover requested"));
    let png = std::fs::read(&shot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "screenshot: {} bytes",
        png.len()
    );
    let (code, out) = wait_child(child, Duration::from_secs(120)).await;
    let bad = load.finish().await;
    r.assert_success(code, &out, "m").await;
    assert!(
        bad.is_empty(),
        "the workload failed before the fence: {bad:?}"
    );
}

/// A deploy on the source while it streams: each statement in its own
/// transaction, writes in between, and the workload running throughout.
const DEPLOY: &[&str] = &[
    "ALTER TABLE scratch ADD COLUMN flag int NOT NULL DEFAULT 7",
    "UPDATE scratch SET flag = id WHERE id <= 20",
    "CREATE TABLE orders (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, item text NOT NULL, qty int)",
    "INSERT INTO orders (item, qty) SELECT 'i' || g, g FROM generate_series(1, 50) g",
    "CREATE INDEX CONCURRENTLY orders_item ON orders (item)",
    "INSERT INTO orders (item, qty) VALUES ('after the index', 1)",
    "ALTER TABLE scratch DROP COLUMN v",
    "UPDATE scratch SET flag = flag + 1 WHERE id % 3 = 0",
    "CREATE VIEW big_orders AS SELECT id, item FROM orders WHERE qty > 25",
    "BEGIN; ALTER TABLE orders ADD COLUMN note text; UPDATE orders SET note = 'n' || id WHERE id <= 10; COMMIT",
    "ALTER TABLE orders RENAME COLUMN qty TO quantity",
    "INSERT INTO orders (item, quantity) VALUES ('after the rename', 99)",
    "CREATE TABLE doomed (id int PRIMARY KEY, v text)",
    "INSERT INTO doomed VALUES (1, 'one'), (2, 'two')",
    "CREATE VIEW doomed_view AS SELECT v FROM doomed",
    "DROP TABLE doomed CASCADE",
    "CREATE FUNCTION order_label(o orders) RETURNS text LANGUAGE sql AS $$ SELECT o.item || ':' || o.quantity $$",
    "COMMENT ON TABLE orders IS 'created while streaming'",
    // An extension: its script's own commands are not replayed one by one.
    "CREATE EXTENSION IF NOT EXISTS pg_trgm",
    "CREATE INDEX orders_item_trgm ON orders USING gin (item gin_trgm_ops)",
    // A rewrite of the whole table under a new relfilenode.
    "ALTER TABLE scratch ALTER COLUMN flag TYPE bigint",
    "UPDATE scratch SET flag = 6000000000 WHERE id = 1",
    // Several statements, DDL and not, in one query string.
    "ALTER TABLE scratch ADD COLUMN extra text; UPDATE scratch SET extra = 'e' || id WHERE id < 5; ALTER TABLE scratch ADD COLUMN more int",
    "INSERT INTO orders (item, quantity) VALUES ('last', 5)",
];

async fn run_deploy(source: &str) {
    let c = testkit::client(source).await;
    for stmt in DEPLOY {
        c.batch_execute(stmt)
            .await
            .unwrap_or_else(|e| panic!("{stmt}: {e:?}"));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn schema_changes_while_streaming_are_replayed_in_place() {
    let r = Run::new("online_ddl").await;
    let load = Workload::start(&r.db.source);
    let child = r.spawn(&[], "m", None);
    r.wait_streaming("m").await;
    run_deploy(&r.db.source).await;
    let c = common::run_async(&["cutover", "--dump-path", &r.dump()]).await;
    assert_eq!(
        c.status.code(),
        Some(0),
        "cutover: {}\nmigrate: {}",
        text(&c.stderr),
        r.stderr("m")
    );
    let (code, out) = wait_child(child, Duration::from_secs(180)).await;
    let bad = load.finish().await;
    r.assert_success(code, &out, "m").await;
    assert!(
        bad.is_empty(),
        "the workload failed before the fence: {bad:?}"
    );
    assert_eq!(
        common::schema_dump(&r.db.source),
        common::schema_dump(&r.db.target),
        "pg_dump -s of source and target differ"
    );
    let log = r.stderr("m");
    assert!(
        log.matches("schema change replayed on the target").count() >= 12,
        "{log}"
    );
    // The new table's rows arrived through the stream (it joined the
    // publication in the transaction that created it).
    let n = testkit::query_scalar(&r.db.target, "SELECT count(*)::text FROM orders").await;
    assert_eq!(n, "53");
}

/// Where capture is not possible (here: a filtered run), the schema is
/// fingerprinted at the snapshot; a change refuses the cutover, naming the
/// objects, and the source stays writable and streaming.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn uncaptured_schema_changes_refuse_the_cutover() {
    let r = Run::new("online_fp").await;
    let mut child = r.spawn(&["-n", "public"], "m", None);
    r.wait_streaming("m").await;
    assert!(
        r.stderr("m").contains("cannot be captured"),
        "{}",
        r.stderr("m")
    );
    testkit::execute(
        &r.db.source,
        "ALTER TABLE scratch ADD COLUMN flag int NOT NULL DEFAULT 7;
         CREATE TABLE orders (id int PRIMARY KEY);",
    )
    .await
    .unwrap();
    let c = common::run_async(&["cutover", "--dump-path", &r.dump()]).await;
    let err = text(&c.stderr);
    assert_ne!(c.status.code(), Some(0), "{err}");
    assert!(
        err.contains("the schema changed on the source")
            && err.contains("relation public.scratch (changed)")
            && err.contains("relation public.orders (created)"),
        "{err}\nmigrate: {}",
        r.stderr("m")
    );
    // Unfenced, and still streaming: a new row reaches the target.
    testkit::execute(
        &r.db.source,
        "INSERT INTO accounts (owner) VALUES ('after the refusal')",
    )
    .await
    .expect("the source is writable after a refused cutover");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let n = testkit::query_scalar(
            &r.db.target,
            "SELECT count(*)::text FROM accounts WHERE owner = 'after the refusal'",
        )
        .await;
        if n == "1" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "streaming stopped: {}",
            r.stderr("m")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    unsafe_kill(child.id() as i32, 2);
    let _ = child.wait();
    r.cleanup().await;
}

/// A table created while streaming without a key cannot stream its
/// changes: the cutover is refused while its rows differ, and goes
/// through once the user has given it a key and copied the rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_table_created_without_a_key_refuses_the_cutover_until_its_rows_match() {
    let r = Run::new("online_nokey").await;
    let child = r.spawn(&[], "m", None);
    r.wait_streaming("m").await;
    for stmt in [
        "CREATE TABLE loose (a int NOT NULL, b text)",
        "INSERT INTO loose VALUES (1, 'x'), (2, 'y')",
    ] {
        testkit::execute(&r.db.source, stmt).await.unwrap();
    }
    let refused = |needle: &'static str| {
        let dump = r.dump();
        async move {
            let c = common::run_async(&["cutover", "--dump-path", &dump]).await;
            let err = text(&c.stderr);
            assert_ne!(c.status.code(), Some(0), "{err}");
            assert!(
                err.contains("public.loose: 2 row(s) on the source, 0 on the target")
                    && err.contains(needle),
                "{err}"
            );
        }
    };
    refused("created without a primary key").await;
    // A key now: the table joins the publication, but its first rows never streamed.
    testkit::execute(&r.db.source, "ALTER TABLE loose ADD PRIMARY KEY (a)")
        .await
        .unwrap();
    refused("only after rows were written into it").await;
    // The user copies them; later rows stream.
    testkit::execute(&r.db.target, "INSERT INTO loose VALUES (1, 'x'), (2, 'y')")
        .await
        .unwrap();
    testkit::execute(&r.db.source, "INSERT INTO loose VALUES (3, 'z')")
        .await
        .unwrap();
    let c = common::run_async(&["cutover", "--dump-path", &r.dump()]).await;
    assert_eq!(
        c.status.code(),
        Some(0),
        "{}\n{}",
        text(&c.stderr),
        r.stderr("m")
    );
    let (code, out) = wait_child(child, Duration::from_secs(120)).await;
    r.assert_success(code, &out, "m").await;
    assert_eq!(
        testkit::query_scalar(
            &r.db.target,
            "SELECT string_agg(a::text, ',' ORDER BY a) FROM loose"
        )
        .await,
        "1,2,3"
    );
}

/// kill -9 with schema changes on both sides of the kill: after
/// `--resume`, each was replayed exactly once (a second ADD COLUMN or
/// CREATE TABLE would fail) and source and target agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_between_schema_changes_then_resume() {
    let r = Run::new("online_ddl_kill").await;
    let load = Workload::start(&r.db.source);
    let mut child = r.spawn(&[], "m1", None);
    r.wait_streaming("m1").await;
    let (first, second) = DEPLOY.split_at(9);
    let c = testkit::client(&r.db.source).await;
    for stmt in first {
        c.batch_execute(stmt).await.unwrap();
    }
    // The first part is on the target before the kill.
    let deadline = Instant::now() + Duration::from_secs(60);
    while testkit::query_scalar(
        &r.db.target,
        "SELECT count(*)::text FROM pg_views WHERE viewname = 'big_orders'",
    )
    .await
        != "1"
    {
        assert!(Instant::now() < deadline, "{}", r.stderr("m1"));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    for stmt in second {
        c.batch_execute(stmt).await.unwrap();
    }
    let child = r.spawn(&["--cutover", "auto", "--resume"], "m2", None);
    let (code, out) = wait_child(child, Duration::from_secs(180)).await;
    let bad = load.finish().await;
    r.assert_success(code, &out, "m2").await;
    assert!(
        bad.is_empty(),
        "the workload failed before the fence: {bad:?}"
    );
    assert_eq!(
        common::schema_dump(&r.db.source),
        common::schema_dump(&r.db.target),
        "pg_dump -s of source and target differ"
    );
}

/// Temporary objects on the source are not schema changes to migrate:
/// `REFRESH MATERIALIZED VIEW CONCURRENTLY` (which creates and drops a
/// temporary table of its own) and a function that works through a temp
/// table run repeatedly while the source streams; the migration goes on,
/// the function's row changes arrive, and the schemas stay the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn temporary_objects_of_refresh_concurrently_and_functions_are_ignored() {
    let r = Run::new("online_ddl_temp").await;
    testkit::execute(
        &r.db.source,
        "CREATE TABLE audit_log (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, batch int NOT NULL, note text NOT NULL);
         CREATE MATERIALIZED VIEW audit_summary AS SELECT batch, count(*) AS n, max(note) AS last_note FROM audit_log GROUP BY batch;
         CREATE UNIQUE INDEX audit_summary_batch ON audit_summary (batch);
         CREATE FUNCTION log_batch(b int) RETURNS int LANGUAGE plpgsql AS $$
         DECLARE n int;
         BEGIN
           DROP TABLE IF EXISTS scratch_batch;
           CREATE TEMP TABLE scratch_batch (note text);
           INSERT INTO scratch_batch SELECT 'batch ' || b || ' row ' || g FROM generate_series(1, 3) g;
           INSERT INTO audit_log (batch, note) SELECT b, note FROM scratch_batch;
           GET DIAGNOSTICS n = ROW_COUNT;
           DROP TABLE scratch_batch;
           RETURN n;
         END $$;",
    )
    .await
    .unwrap();
    let load = Workload::start(&r.db.source);
    let child = r.spawn(&[], "m", None);
    r.wait_streaming("m").await;
    let c = testkit::client(&r.db.source).await;
    let batches = 12;
    for b in 1..=batches {
        let n: i32 = c
            .query_one("SELECT log_batch($1)", &[&b])
            .await
            .unwrap_or_else(|e| panic!("log_batch({b}): {e:?}"))
            .get(0);
        assert_eq!(n, 3);
        c.batch_execute("REFRESH MATERIALIZED VIEW CONCURRENTLY audit_summary")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Temporary statements sent by the client beside real DDL, in one
    // query string: the real one is still replayed.
    c.batch_execute(
        "CREATE TEMP TABLE top_scratch (a int); DROP TABLE top_scratch; \
         COMMENT ON TABLE audit_log IS 'after a temp table'",
    )
    .await
    .unwrap();
    let cut = common::run_async(&["cutover", "--dump-path", &r.dump()]).await;
    assert_eq!(
        cut.status.code(),
        Some(0),
        "cutover: {}\nmigrate: {}",
        text(&cut.stderr),
        r.stderr("m")
    );
    let (code, out) = wait_child(child, Duration::from_secs(180)).await;
    let bad = load.finish().await;
    r.assert_success(code, &out, "m").await;
    assert!(
        bad.is_empty(),
        "the workload failed before the fence: {bad:?}"
    );
    assert_eq!(
        common::schema_dump(&r.db.source),
        common::schema_dump(&r.db.target),
        "pg_dump -s of source and target differ"
    );
    assert_eq!(
        testkit::query_scalar(
            &r.db.target,
            "SELECT obj_description('audit_log'::regclass)"
        )
        .await,
        "after a temp table"
    );
    let rows = "SELECT count(*)::text || ' ' || count(DISTINCT batch)::text FROM audit_log";
    assert_eq!(
        testkit::query_scalar(&r.db.target, rows).await,
        format!("{} {batches}", 3 * batches)
    );
    let summary = "SELECT string_agg(batch || ':' || n || ':' || last_note, ',' ORDER BY batch) FROM audit_summary";
    let on_source = testkit::query_scalar(&r.db.source, summary).await;
    assert!(on_source.starts_with("1:3:batch 1 row 3,"), "{on_source}");
    assert_eq!(
        testkit::query_scalar(&r.db.target, summary).await,
        on_source
    );
}

/// Poll the target until `sql` answers `want` (the stream got there).
async fn wait_target(r: &Run, log: &str, sql: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = testkit::query_scalar(&r.db.target, sql).await;
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{sql}: {got:?}, not {want:?}: {}",
            r.stderr(log)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The partitions of a table, with their bounds.
const PARTITIONS: &str = "SELECT coalesce(string_agg(c.relname || ' ' || pg_get_expr(c.relpartbound, c.oid), E'\\n' ORDER BY c.relname), '')
                            FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = '{}'::regclass";

/// The partitions of `table`, which must be the same on both sides.
async fn same_partitions(r: &Run, table: &str) -> String {
    let sql = PARTITIONS.replace("{}", table);
    let s = testkit::query_scalar(&r.db.source, &sql).await;
    assert_eq!(
        testkit::query_scalar(&r.db.target, &sql).await,
        s,
        "partitions of {table}"
    );
    s
}

/// DDL run inside a function is replayed by its effect (a temp table
/// beside it is still passed over), a type and a function made in a DO
/// block too; DDL the applier does not reproduce (a type made by an SQL
/// function, whose statement text the capture does not see) leaves
/// streaming going but refuses the cutover, naming the object.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ddl_inside_a_function_is_reproduced_and_what_is_not_refuses_the_cutover() {
    let r = Run::new("online_ddl_fn").await;
    testkit::execute(
        &r.db.source,
        "CREATE FUNCTION make_report() RETURNS void LANGUAGE plpgsql AS $$
         BEGIN
           CREATE TEMP TABLE report_scratch AS SELECT 1 AS one;
           CREATE TABLE report_made (id int PRIMARY KEY);
           INSERT INTO report_made SELECT one FROM report_scratch;
           DROP TABLE report_scratch;
         END $$;
         -- An SQL function's body: no statement text reaches the capture.
         CREATE FUNCTION make_mood() RETURNS void LANGUAGE sql AS $$
           CREATE TYPE mood AS ENUM ('ok', 'meh')
         $$;",
    )
    .await
    .unwrap();
    let mut child = r.spawn(&[], "m", None);
    r.wait_streaming("m").await;
    testkit::execute(&r.db.source, "SELECT make_report()")
        .await
        .unwrap();
    wait_target(
        &r,
        "m",
        "SELECT (to_regclass('public.report_made') IS NOT NULL)::text",
        "true",
    )
    .await;
    wait_target(
        &r,
        "m",
        "SELECT string_agg(id::text, ',') FROM report_made",
        "1",
    )
    .await;
    testkit::execute(
        &r.db.source,
        "DO $$ BEGIN
           CREATE TYPE feeling AS ENUM ('fine', 'great');
           CREATE FUNCTION cheer() RETURNS feeling LANGUAGE sql AS 'SELECT ''great''::feeling';
           PERFORM make_mood();
           INSERT INTO report_made VALUES (2);
         END $$",
    )
    .await
    .unwrap();
    // Still streaming: the row of the same transaction arrives.
    wait_target(
        &r,
        "m",
        "SELECT string_agg(id::text, ',' ORDER BY id) FROM report_made",
        "1,2",
    )
    .await;
    let c = common::run_async(&["cutover", "--dump-path", &r.dump()]).await;
    let err = text(&c.stderr);
    // As the fingerprint's refusal: the cutover command fails (exit 1),
    // the migration goes on.
    assert_eq!(
        c.status.code(),
        Some(1),
        "{err}\nmigrate: {}",
        r.stderr("m")
    );
    for needle in [
        "could not be reproduced on the target",
        "type public.mood",
        "CREATE TYPE",
    ] {
        assert!(
            err.contains(needle),
            "the refusal must name {needle}: {err}"
        );
    }
    // The type and the function beside it were reproduced (by the
    // statement's text, by the function's definition).
    assert!(!err.contains("cheer") && !err.contains("feeling"), "{err}");
    assert_eq!(
        testkit::query_scalar(&r.db.target, "SELECT cheer()::text").await,
        "great"
    );
    let log = r.stderr("m");
    assert!(
        log.contains("WARN") && log.contains("cannot be reproduced on the target"),
        "{log}"
    );
    // The source is writable and the stream goes on after the refusal.
    testkit::execute(&r.db.source, "INSERT INTO report_made VALUES (3)")
        .await
        .expect("the source is writable after a refused cutover");
    wait_target(
        &r,
        "m",
        "SELECT string_agg(id::text, ',' ORDER BY id) FROM report_made",
        "1,2,3",
    )
    .await;
    assert!(child.try_wait().unwrap().is_none(), "{}", r.stderr("m"));
    unsafe_kill(child.id() as i32, 2);
    let _ = child.wait();
    r.cleanup().await;
}

/// One plpgsql function that creates a table with an index, adds a
/// constraint and a column, builds a partitioned table with partitions
/// made both ways (PARTITION OF; LIKE + ATTACH), detaches and drops one;
/// an SQL function with a serial column; a DO block; a procedure that
/// commits between its DDL: every object is on the target with its rows,
/// and `pg_dump -s` of both sides is the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ddl_of_functions_procedures_and_do_blocks_is_reproduced_with_its_rows() {
    let r = Run::new("online_ddl_effects").await;
    testkit::execute(
        &r.db.source,
        r#"CREATE FUNCTION reshape() RETURNS void LANGUAGE plpgsql AS $$
         BEGIN
           CREATE TABLE shop_orders (id int PRIMARY KEY, item text NOT NULL, qty int DEFAULT 1);
           CREATE INDEX shop_orders_item ON shop_orders (item);
           ALTER TABLE shop_orders ADD CONSTRAINT qty_positive CHECK (qty > 0);
           ALTER TABLE shop_orders ADD COLUMN note text COLLATE "C";
           ALTER TABLE shop_orders RENAME COLUMN note TO remark;
           INSERT INTO shop_orders SELECT g, 'item ' || g, g, 'n' || g FROM generate_series(1, 20) g;
           CREATE TABLE readings (id int NOT NULL, region int NOT NULL, v numeric(10,2) DEFAULT 0, PRIMARY KEY (id, region))
             PARTITION BY LIST (region);
           CREATE INDEX readings_v ON readings (v);
           CREATE TABLE readings_1 PARTITION OF readings FOR VALUES IN (1);
           CREATE TABLE readings_2 (LIKE readings INCLUDING DEFAULTS INCLUDING CONSTRAINTS);
           ALTER TABLE readings_2 SET (fillfactor = 80);
           ALTER TABLE readings ATTACH PARTITION readings_2 FOR VALUES IN (2);
           CREATE TABLE readings_9 PARTITION OF readings FOR VALUES IN (9);
           INSERT INTO readings SELECT g, 1 + g % 2, g / 3.0 FROM generate_series(1, 30) g;
           INSERT INTO readings VALUES (100, 9, 1);
           ALTER TABLE readings DETACH PARTITION readings_9;
           DROP TABLE readings_9;
           ALTER TABLE accounts ADD COLUMN tier int NOT NULL DEFAULT 0;
           CREATE INDEX accounts_tier ON accounts (tier);
           UPDATE shop_orders SET qty = qty + 1 WHERE id <= 5;
           CREATE FUNCTION order_label(o shop_orders) RETURNS text LANGUAGE sql AS $f$ SELECT o.item || ':' || o.qty $f$;
           REVOKE EXECUTE ON FUNCTION order_label(shop_orders) FROM PUBLIC;
           COMMENT ON FUNCTION order_label(shop_orders) IS 'label';
         END $$;
         CREATE FUNCTION make_tagged() RETURNS void LANGUAGE sql AS $$
           CREATE TABLE tagged (id serial PRIMARY KEY, label text UNIQUE)
         $$;
         CREATE PROCEDURE add_region(r int) LANGUAGE plpgsql AS $$
         BEGIN
           EXECUTE format('CREATE TABLE readings_%s PARTITION OF readings FOR VALUES IN (%s)', r, r);
           EXECUTE format('INSERT INTO readings VALUES (1, %s, 0.5)', r);
           COMMIT;
           EXECUTE format('CREATE INDEX readings_%s_id ON readings_%s (id)', r, r);
           EXECUTE format('COMMENT ON TABLE readings_%s IS %L', r, 'region ' || r);
           INSERT INTO readings VALUES (2, r, 1.5);
         END $$;"#,
    )
    .await
    .unwrap();
    let load = Workload::start(&r.db.source);
    let child = r.spawn(&[], "m", None);
    r.wait_streaming("m").await;
    let c = testkit::client(&r.db.source).await;
    c.batch_execute("SELECT reshape()").await.unwrap();
    c.batch_execute("SELECT make_tagged(); INSERT INTO tagged (label) VALUES ('a'), ('b')")
        .await
        .unwrap();
    c.batch_execute(
        "DO $$ BEGIN
           CREATE TABLE do_made (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, v text);
           INSERT INTO do_made (v) VALUES ('a'), ('b');
           ALTER TABLE do_made ALTER COLUMN v SET NOT NULL;
         END $$",
    )
    .await
    .unwrap();
    c.batch_execute("CALL add_region(3)").await.unwrap();
    // A plain statement after them still replays as text.
    c.batch_execute("COMMENT ON TABLE shop_orders IS 'made by reshape()'")
        .await
        .unwrap();
    let cut = common::run_async(&["cutover", "--dump-path", &r.dump()]).await;
    assert_eq!(
        cut.status.code(),
        Some(0),
        "cutover: {}\nmigrate: {}",
        text(&cut.stderr),
        r.stderr("m")
    );
    let (code, out) = wait_child(child, Duration::from_secs(180)).await;
    let bad = load.finish().await;
    r.assert_success(code, &out, "m").await;
    assert!(
        bad.is_empty(),
        "the workload failed before the fence: {bad:?}"
    );
    common::assert_same_schema(&r.db.source, &r.db.target);
    assert_eq!(
        same_partitions(&r, "readings").await,
        "readings_1 FOR VALUES IN (1)\nreadings_2 FOR VALUES IN (2)\nreadings_3 FOR VALUES IN (3)"
    );
    for (sql, want) in [
        (
            "SELECT count(*)::text || ' ' || sum(qty)::text FROM shop_orders",
            "20 215",
        ),
        ("SELECT count(*)::text FROM readings", "32"),
        (
            "SELECT string_agg(id || v, ',' ORDER BY id) FROM do_made",
            "1a,2b",
        ),
        (
            "SELECT string_agg(id || label, ',' ORDER BY id) FROM tagged",
            "1a,2b",
        ),
        (
            "SELECT (to_regclass('public.readings_9') IS NULL)::text",
            "true",
        ),
        ("SELECT obj_description('readings_3'::regclass)", "region 3"),
        (
            "SELECT order_label(o) FROM shop_orders o WHERE id = 1",
            "item 1:2",
        ),
    ] {
        assert_eq!(
            testkit::query_scalar(&r.db.target, sql).await,
            want,
            "{sql}"
        );
    }
    let log = r.stderr("m");
    assert!(log.contains("by its effect"), "{log}");
    // The column rename and the REVOKE: by the statement's own text.
    assert!(log.contains("by the statement's own text"), "{log}");
    assert!(!log.contains("cannot be reproduced"), "{log}");
}

/// pg_partman's maintenance while the source streams under a workload,
/// beside `REFRESH MATERIALIZED VIEW CONCURRENTLY` and a function working
/// through a temp table: new partitions (premake raised) and old ones
/// dropped (retention, without keeping the table) reach the target with
/// their rows, and the cutover
/// leaves both sides with the same partitions and schema.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pg_partman_maintenance_and_temporary_objects_under_load_migrate() {
    testkit::shared_pair()
        .ensure_extensions(&[("pg_partman", "partman")])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let r = Run::new("online_partman").await;
    testkit::execute(
        &r.db.source,
        "CREATE SCHEMA partman;
         CREATE EXTENSION pg_partman SCHEMA partman;
         CREATE TABLE public.metrics (id bigint NOT NULL, at timestamptz NOT NULL, v text, PRIMARY KEY (id, at))
           PARTITION BY RANGE (at);
         SELECT partman.create_parent(p_parent_table => 'public.metrics', p_control => 'at',
                                      p_type => 'native', p_interval => 'daily', p_premake => 2,
                                      p_start_partition => (now() - interval '6 days')::date::text);
         INSERT INTO public.metrics SELECT g, now() - interval '6 days' + g * interval '1 hour', 'm' || g
           FROM generate_series(1, 150) g;
         CREATE MATERIALIZED VIEW metric_days AS SELECT date_trunc('day', at) AS day, count(*) AS n FROM metrics GROUP BY 1;
         CREATE UNIQUE INDEX metric_days_day ON metric_days (day);
         CREATE FUNCTION tally(b int) RETURNS int LANGUAGE plpgsql AS $$
         DECLARE n int;
         BEGIN
           DROP TABLE IF EXISTS tally_scratch;
           CREATE TEMP TABLE tally_scratch (id bigint);
           INSERT INTO tally_scratch SELECT id FROM metrics WHERE id % 10 = b % 10;
           SELECT count(*) INTO n FROM tally_scratch;
           DROP TABLE tally_scratch;
           RETURN n;
         END $$;",
    )
    .await
    .unwrap();
    let before = testkit::query_scalar(&r.db.source, &PARTITIONS.replace("{}", "metrics")).await;
    let load = Workload::start(&r.db.source);
    let child = r.spawn(&[], "m", None);
    r.wait_streaming("m").await;
    // More partitions ahead, and old ones dropped, at the next maintenance:
    // set while streaming (the extension's configuration table streams).
    testkit::execute(
        &r.db.source,
        "UPDATE partman.part_config SET infinite_time_partitions = true, premake = 5, retention = '3 days',
                retention_keep_table = false
          WHERE parent_table = 'public.metrics'",
    )
    .await
    .unwrap();
    // REFRESH ... CONCURRENTLY about every second, beside the rest.
    let stop = Arc::new(AtomicBool::new(false));
    let refresher = {
        let (source, stop) = (r.db.source.clone(), stop.clone());
        tokio::spawn(async move {
            let c = testkit::client(&source).await;
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                c.batch_execute("REFRESH MATERIALIZED VIEW CONCURRENTLY metric_days")
                    .await
                    .expect("REFRESH MATERIALIZED VIEW CONCURRENTLY");
                n += 1;
                tokio::time::sleep(Duration::from_millis(1000)).await;
            }
            n
        })
    };
    let c = testkit::client(&r.db.source).await;
    for b in 1..=4 {
        c.query_one("SELECT tally($1)", &[&b]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    c.batch_execute("SELECT partman.run_maintenance(p_jobmon => false)")
        .await
        .unwrap();
    // Rows in the new partitions, in the same transaction as more maintenance.
    c.batch_execute(
        "BEGIN;
         INSERT INTO metrics SELECT 1000 + g, now() + g * interval '1 day', 'new' || g FROM generate_series(1, 4) g;
         SELECT partman.run_maintenance(p_jobmon => false);
         COMMIT;",
    )
    .await
    .unwrap();
    for b in 5..=8 {
        c.query_one("SELECT tally($1)", &[&b]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let refreshes = refresher.await.unwrap();
    assert!(refreshes >= 3, "only {refreshes} refreshes");
    let cut = common::run_async(&["cutover", "--dump-path", &r.dump()]).await;
    assert_eq!(
        cut.status.code(),
        Some(0),
        "cutover: {}\nmigrate: {}",
        text(&cut.stderr),
        r.stderr("m")
    );
    let (code, out) = wait_child(child, Duration::from_secs(180)).await;
    let bad = load.finish().await;
    r.assert_success(code, &out, "m").await;
    assert!(
        bad.is_empty(),
        "the workload failed before the fence: {bad:?}"
    );
    common::assert_same_schema(&r.db.source, &r.db.target);
    let after = same_partitions(&r, "metrics").await;
    // Maintenance did both: made partitions and dropped old ones.
    let names = |s: &str| -> Vec<String> {
        s.lines()
            .map(|l| l.split(' ').next().unwrap_or_default().to_string())
            .collect()
    };
    let (old, new) = (names(&before), names(&after));
    assert!(
        new.iter().any(|n| !old.contains(n)),
        "no partition was made: {before}\n--\n{after}"
    );
    assert!(
        old.iter().any(|n| !new.contains(n)),
        "no partition was dropped: {before}\n--\n{after}"
    );
    for sql in [
        "SELECT count(*)::text FROM metrics WHERE v LIKE 'new%'",
        "SELECT premake::text || ' ' || retention FROM partman.part_config",
    ] {
        assert_eq!(
            testkit::query_scalar(&r.db.target, sql).await,
            testkit::query_scalar(&r.db.source, sql).await,
            "{sql}"
        );
    }
    let log = r.stderr("m");
    assert!(log.contains("by its effect"), "{log}");
    assert!(!log.contains("cannot be reproduced"), "{log}");
}

/// Writes of every kind on the new server after a `--fallback` cutover.
const WRITES_ON_THE_NEW_SERVER: &str = "
INSERT INTO accounts (owner, balance) SELECT 'after ' || g, g FROM generate_series(1, 100) g;
UPDATE accounts SET balance = balance + 5 WHERE id % 7 = 0;
DELETE FROM accounts WHERE id % 11 = 0;
SELECT nextval('counter_seq') FROM generate_series(1, 25);
SELECT nextval('down_seq');
SELECT lo_from_bytea(0, 'written on the new server');
INSERT INTO cache VALUES (9999, 'unlogged, on the new server') ON CONFLICT (k) DO UPDATE SET v = excluded.v;
INSERT INTO ident (v) VALUES ('on the new server');
UPDATE keyed SET qty = qty + 100 WHERE code = 'c1';
INSERT INTO events (kind) VALUES ('on the new server');
ALTER TABLE scratch ADD COLUMN added_on_the_new_server int NOT NULL DEFAULT 1;
UPDATE scratch SET added_on_the_new_server = id WHERE id < 10;
CREATE TABLE made_on_the_new_server (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, v text);
INSERT INTO made_on_the_new_server (v) VALUES ('a'), ('b');
";

/// A `--fallback` migration: cutover under load, then returns `until` the
/// fallback streams back.
async fn fallback_cutover(r: &Run) -> Child {
    let load = Workload::start(&r.db.source);
    let child = r.spawn(&["--fallback"], "m", None);
    r.wait_streaming("m").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let c = common::run_async(&["cutover", "--dump-path", &r.dump()]).await;
    assert_eq!(
        c.status.code(),
        Some(0),
        "cutover: {}\nmigrate: {}",
        text(&c.stderr),
        r.stderr("m")
    );
    let bad = load.finish().await;
    assert!(
        bad.is_empty(),
        "the workload failed before the fence: {bad:?}"
    );
    r.wait_log("m", "fallback: streaming the new server's changes back")
        .await;
    child
}

/// Nothing of the fallback on the new server: no slot, no publication.
async fn assert_nothing_left_on_the_new_server(db: &TestDb) {
    let n = testkit::query_scalar(
        &db.target,
        "SELECT ((SELECT count(*) FROM pg_replication_slots WHERE database = current_database())
                 + (SELECT count(*) FROM pg_publication))::text",
    )
    .await;
    assert_eq!(n, "0", "a slot or publication was left on the new server");
    let n = testkit::query_scalar(
        &db.target,
        "SELECT ((SELECT count(*) FROM pg_event_trigger)
                 + (SELECT count(*) FROM pg_namespace WHERE nspname = '_pg_dbmigrator'))::text",
    )
    .await;
    assert_eq!(n, "0", "our DDL capture was left on the new server");
}

/// After `rollback`: the run ended well and verify found nothing; the old
/// source has every write of the new server and takes writes again; the
/// new server is fenced; nothing of ours is left on either.
async fn assert_rolled_back(r: &Run, code: Option<i32>, out: &str, log: &str) {
    assert_eq!(code, Some(0), "{}", r.stderr(log));
    let report = common::report_of(out.as_bytes());
    assert_eq!(
        report["online"]["fallback"]["ended_by"], "rollback",
        "{report:#}"
    );
    assert_eq!(
        report["verify"]["differences"].as_array().unwrap().len(),
        0,
        "{report:#}"
    );
    assert_same(&r.db).await;
    testkit::execute(
        &r.db.source,
        "INSERT INTO accounts (owner) VALUES ('back on the old source')",
    )
    .await
    .expect("the old source is writable after the rollback");
    let e = testkit::client(&r.db.target)
        .await
        .batch_execute("INSERT INTO accounts (owner) VALUES ('split brain')")
        .await
        .expect_err("the new server must be read-only after the rollback");
    assert_eq!(e.code().map(|c| c.code()), Some("25006"), "{e:?}");
    assert_nothing_left(&r.db).await;
    assert_nothing_left_on_the_new_server(&r.db).await;
    // Schema changes made on the new server came back too.
    assert_eq!(
        common::schema_dump(&r.db.source),
        common::schema_dump(&r.db.target),
        "pg_dump -s of the old source and the new server differ"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fallback_then_rollback_returns_every_write_to_the_old_source() {
    let r = Run::on(testkit::shared_logical_pair(), "fb_rollback").await;
    let child = fallback_cutover(&r).await;
    testkit::execute(&r.db.target, WRITES_ON_THE_NEW_SERVER)
        .await
        .unwrap();
    let rb = common::run_async(&["rollback", "--dump-path", &r.dump()]).await;
    assert_eq!(
        rb.status.code(),
        Some(0),
        "rollback: {}\nmigrate: {}",
        text(&rb.stderr),
        r.stderr("m")
    );
    assert!(
        text(&rb.stdout).contains("writes were blocked for"),
        "{}",
        text(&rb.stdout)
    );
    let (code, out) = wait_child(child, Duration::from_secs(120)).await;
    assert_rolled_back(&r, code, &out, "m").await;
    // Asked again, it says so.
    let again = common::run_async(&["rollback", "--dump-path", &r.dump()]).await;
    assert_eq!(again.status.code(), Some(0), "{}", text(&again.stderr));
    assert!(
        text(&again.stdout).contains("already rolled back"),
        "{}",
        text(&again.stdout)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fallback_then_finish_leaves_nothing_on_either_side() {
    let r = Run::on(testkit::shared_logical_pair(), "fb_finish").await;
    let child = fallback_cutover(&r).await;
    testkit::execute(
        &r.db.target,
        "INSERT INTO accounts (owner) VALUES ('kept on the new server')",
    )
    .await
    .unwrap();
    let f = common::run_async(&["finish", "--dump-path", &r.dump()]).await;
    assert_eq!(
        f.status.code(),
        Some(0),
        "finish: {}\nmigrate: {}",
        text(&f.stderr),
        r.stderr("m")
    );
    let (code, out) = wait_child(child, Duration::from_secs(120)).await;
    assert_eq!(code, Some(0), "{}", r.stderr("m"));
    let report = common::report_of(out.as_bytes());
    assert_eq!(
        report["online"]["fallback"]["ended_by"], "finish",
        "{report:#}"
    );
    assert_nothing_left(&r.db).await;
    assert_nothing_left_on_the_new_server(&r.db).await;
    assert_fenced(&r.db).await;
    testkit::execute(
        &r.db.target,
        "INSERT INTO accounts (owner) VALUES ('still writable')",
    )
    .await
    .expect("the new server stays writable after finish");
}

/// kill -9 while the new server streams back, and again in the middle of
/// the rollback: each `--resume` continues where the run died, `rollback`
/// asked of the dead run says so at once, and the old source ends with
/// every write.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_during_the_fallback_and_mid_rollback_then_resume() {
    let r = Run::on(testkit::shared_logical_pair(), "fb_kill").await;
    let mut child = fallback_cutover(&r).await;
    testkit::execute(&r.db.target, WRITES_ON_THE_NEW_SERVER)
        .await
        .unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    // Written while nothing streams back.
    testkit::execute(
        &r.db.target,
        "INSERT INTO accounts (owner) VALUES ('while it was dead')",
    )
    .await
    .unwrap();
    let mut child = r.spawn(
        &["--fallback", "--resume"],
        "m2",
        Some("after:rollback_drain"),
    );
    r.wait_log("m2", "fallback: streaming the new server's changes back")
        .await;
    let rb = {
        let dump = r.dump();
        tokio::spawn(async move { common::run_async(&["rollback", "--dump-path", &dump]).await })
    };
    r.wait_stop_point("m2", "after:rollback_drain").await;
    child.kill().unwrap();
    child.wait().unwrap();
    let out = rb.await.unwrap();
    assert_ne!(out.status.code(), Some(0), "{}", text(&out.stdout));
    let t0 = Instant::now();
    let again = common::run_async(&["rollback", "--dump-path", &r.dump()]).await;
    let err = text(&again.stderr);
    assert_eq!(again.status.code(), Some(2), "{err}");
    assert!(t0.elapsed() < Duration::from_secs(5));
    assert!(
        err.contains("died in the middle of its rollback") && err.contains("--resume"),
        "{err}"
    );
    let child = r.spawn(&["--fallback", "--resume"], "m3", None);
    let (code, out) = wait_child(child, Duration::from_secs(120)).await;
    assert_rolled_back(&r, code, &out, "m3").await;
    assert_eq!(
        testkit::query_scalar(
            &r.db.source,
            "SELECT count(*)::text FROM accounts WHERE owner = 'while it was dead'"
        )
        .await,
        "1"
    );
}

/// `--fallback` into a target that cannot stream back is refused before
/// anything is created on either side.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fallback_into_a_target_without_logical_wal_is_refused_first() {
    let r = Run::new("fb_refused").await;
    let args = r.args(&["--fallback"]);
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = common::run_async(&a).await;
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--fallback needs the target") && err.contains("wal_level = logical"),
        "{err}"
    );
    assert_eq!(slots_and_publications(&r.db).await, 0);
    assert_eq!(
        testkit::query_scalar(
            &r.db.target,
            "SELECT count(*)::text FROM pg_class WHERE relnamespace = 'public'::regnamespace"
        )
        .await,
        "0",
        "nothing may be created on the target"
    );
}

/// A source role that may not create event triggers (not a superuser, but
/// owner of the database and its tables, with REPLICATION): schema changes
/// are fingerprinted instead, and a deploy refuses the cutover, naming
/// what changed; the source is unfenced and still streaming.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_role_without_event_triggers_gets_the_fingerprint_refusal() {
    let db = testkit::shared_pair().fresh_db("online_fp_role").await;
    let role = format!("{}_owner", db.name);
    let q = pg_dbmigrator::pg::quote::ident;
    testkit::execute(
        &db.source,
        &format!(
            "CREATE ROLE {r} LOGIN REPLICATION PASSWORD 'pw';
             ALTER DATABASE {d} OWNER TO {r};
             ALTER SCHEMA public OWNER TO {r};
             SET ROLE {r};
             CREATE TABLE items (id int PRIMARY KEY, v text);
             INSERT INTO items SELECT g, 'v' || g FROM generate_series(1, 100) g;
             CREATE TABLE notes (id int PRIMARY KEY, body text);
             RESET ROLE;",
            r = q(&role),
            d = q(&db.name)
        ),
    )
    .await
    .unwrap();
    let mut cfg: tokio_postgres::Config = db.source.parse().unwrap();
    cfg.user(&role).password("pw");
    let host = match &cfg.get_hosts()[0] {
        tokio_postgres::config::Host::Tcp(h) => h.clone(),
        #[allow(unreachable_patterns)]
        _ => panic!("the test servers listen on TCP"),
    };
    let source = format!(
        "host={host} port={} user={role} password=pw dbname={} sslmode=disable",
        cfg.get_ports()[0],
        db.name
    );
    let dir = tempfile::tempdir().unwrap();
    let dump = dir.path().join("w").to_str().unwrap().to_string();
    let log = dir.path().join("m.log");
    let mut child = spawn_migrate(
        &[
            "migrate",
            "--mode",
            "online",
            "--roles",
            "--source",
            &source,
            "--target",
            &db.target,
            "--dump-path",
            &dump,
            "--json",
        ],
        &log,
        &[],
    );
    let stderr = || std::fs::read_to_string(&log).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !stderr().contains("cannot be captured") || !stderr().contains("streaming") {
        assert!(Instant::now() < deadline, "{}", stderr());
        assert!(child.try_wait().unwrap().is_none(), "{}", stderr());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(stderr().contains("not a superuser"), "{}", stderr());
    testkit::execute(
        &source,
        "ALTER TABLE items ADD COLUMN flag int NOT NULL DEFAULT 7;
         CREATE TABLE orders (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY);
         COMMENT ON TABLE notes IS 'changed';",
    )
    .await
    .unwrap();
    let c = common::run_async(&["cutover", "--dump-path", &dump]).await;
    let err = text(&c.stderr);
    assert_ne!(c.status.code(), Some(0), "{err}");
    for needle in [
        "relation public.items (changed)",
        "relation public.orders (created)",
        "relation public.notes (changed)",
    ] {
        assert!(err.contains(needle), "{needle}: {err}\n{}", stderr());
    }
    testkit::execute(&source, "INSERT INTO notes VALUES (1, 'after the refusal')")
        .await
        .expect("the source is writable after a refused cutover");
    let deadline = Instant::now() + Duration::from_secs(60);
    while testkit::query_scalar(&db.target, "SELECT count(*)::text FROM notes").await != "1" {
        assert!(Instant::now() < deadline, "streaming stopped: {}", stderr());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    unsafe_kill(child.id() as i32, 2);
    let _ = child.wait();
    let out = common::run_async(&[
        "cleanup",
        "--source",
        &source,
        "--target",
        &db.target,
        "--dump-path",
        &dump,
    ])
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(slots_and_publications(&db).await, 0);
    let _ = testkit::execute(
        &db.source,
        &format!(
            "REASSIGN OWNED BY {r} TO CURRENT_USER; DROP OWNED BY {r}",
            r = q(&role)
        ),
    )
    .await;
    let _ = testkit::execute(
        &db.target,
        &format!(
            "REASSIGN OWNED BY {r} TO CURRENT_USER; DROP OWNED BY {r}",
            r = q(&role)
        ),
    )
    .await;
    for side in [&db.source, &db.target] {
        let _ = testkit::execute(side, &format!("DROP ROLE IF EXISTS {}", q(&role))).await;
    }
}
