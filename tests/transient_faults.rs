//! Transient faults are not the user's problem: connections cut in the
//! middle of the work (through the testkit's fault proxy, so the fault hits
//! mid-statement) are retried, and the run completes without a second
//! command. Where the work cannot go on as it was (the session holding the
//! copy's snapshot lost), the run says so: in its report, or by refusing
//! with the way out under `--strict-snapshot`.

mod common;

use std::time::{Duration, Instant};

use common::*;
use pg_dbmigrator::testkit::{self, proxy::FaultProxy};

/// Bytes per second each way of each connection through a proxy in front
/// of a server while a test waits for a COPY to cut: a 16 MB table then
/// takes 4 s, not a fraction of one (the cap is lifted with the cut).
const COPY_PACE: u64 = 4 << 20;

/// Wait until `sql` (on `ci`) answers true, or fail after `limit`. One
/// session, opened again only when lost (or while the database does not
/// exist yet), so polling stays quick on a loaded machine.
async fn wait_for(ci: &str, sql: &str, limit: Duration, what: &str) {
    let deadline = Instant::now() + limit;
    let mut client = None;
    loop {
        if client.is_none() {
            client = testkit::try_client(ci).await.ok();
        }
        if let Some(c) = &client {
            match c.query_one(sql, &[]).await {
                Ok(r) if r.get::<_, bool>(0) => return,
                Ok(_) => {}
                Err(_) if c.is_closed() => client = None,
                Err(_) => {}
            }
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The target's connections cut for 3 s in the middle of a big table's COPY:
/// the copy item starts again from its beginning on new sessions (the
/// target side of a COPY is one transaction, rolled back with the
/// connection), and the run ends clean.
#[tokio::test(flavor = "multi_thread")]
async fn target_cut_for_three_seconds_mid_copy_is_retried() {
    let pair = testkit::shared_pair();
    let db = pair.fresh_db("cut_mid_copy").await;
    testkit::execute(
        &db.source,
        "CREATE TABLE big (id int PRIMARY KEY, pad text);
         INSERT INTO big SELECT g, repeat(md5(g::text), 8) FROM generate_series(1, 60000) g;
         CREATE TABLE small (id int PRIMARY KEY); INSERT INTO small SELECT generate_series(1, 100);",
    )
    .await
    .unwrap();
    let cluster = pair
        .target
        .cluster()
        .expect("the testkit's own target server");
    let proxy = FaultProxy::start(format!("127.0.0.1:{}", cluster.port).parse().unwrap()).unwrap();
    // Paced, so the COPY lasts long enough to be cut in its middle.
    proxy.set_bandwidth(Some(COPY_PACE));
    let target_direct = other_target_db(&db, "up");
    let target = proxy.route(&target_direct);
    let run = tokio::spawn({
        let (source, target) = (db.source.clone(), target.clone());
        async move { run_migrate(&source, &target, &["--json", "--jobs", "2"]).await }
    });
    // The big table's COPY is running on the target: cut.
    // This test's own database: other tests copy tables named big too.
    wait_for(
        &pair.target.admin_conninfo(),
        &format!(
            "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE datname = '{}_up' AND query LIKE 'COPY%big%FROM STDIN%')",
            db.name
        ),
        Duration::from_secs(60),
        "the big table's COPY on the target",
    )
    .await;
    proxy.cut_for(Duration::from_secs(3));
    proxy.set_bandwidth(None);
    let out = tokio::time::timeout(Duration::from_secs(180), run)
        .await
        .expect("the run finished")
        .unwrap();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("retrying"), "no retry was logged: {err}");
    let report = report_of(&out.stdout);
    assert_clean(&report, &db.source, &target_direct).await;
}

/// `migrate` with `extra` flags and `env` set (the test pause points),
/// work files under a temp dir kept for a second run: returns the output
/// and the dump path's arguments.
async fn migrate_in(
    dir: &std::path::Path,
    source: &str,
    target: &str,
    extra: &[&str],
    env: &[(&str, String)],
) -> std::process::Output {
    let dump = dir.join("w");
    let mut args: Vec<String> = [
        "migrate",
        "--source",
        source,
        "--target",
        target,
        "--dump-path",
        dump.to_str().unwrap(),
        "--json",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    tokio::task::spawn_blocking(move || {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut c = command(&a);
        for (k, v) in &env {
            c.env(k, v);
        }
        c.output().expect("running pg_dbmigrator")
    })
    .await
    .unwrap()
}

/// A run paused at a test pause point: the file the run creates there
/// and waits on.
struct Pause(std::path::PathBuf);

impl Pause {
    fn new(dir: &std::path::Path) -> Pause {
        Pause(dir.join("paused"))
    }

    fn env(&self, point: &str) -> Vec<(&'static str, String)> {
        vec![
            ("PG_DBMIGRATOR_TEST_PAUSE_AT", point.to_string()),
            (
                "PG_DBMIGRATOR_TEST_PAUSE_FILE",
                self.0.to_str().unwrap().to_string(),
            ),
        ]
    }

    /// Wait until the run is paused (or fail after `limit`); the point.
    async fn reached(&self, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(point) = std::fs::read_to_string(&self.0) {
                if !point.is_empty() {
                    return point;
                }
            }
            assert!(
                Instant::now() < deadline,
                "the run never reached its pause point"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn resume(&self) {
        std::fs::remove_file(&self.0).unwrap();
    }
}

/// The proxy's delay is on every round trip, both ways, changeable on a
/// connection already open: a query's round trip through it takes at
/// least twice the delay (benchmarks use it as a slow link).
#[tokio::test(flavor = "multi_thread")]
async fn a_delayed_link_slows_every_round_trip() {
    let pair = testkit::shared_pair();
    let cluster = pair
        .target
        .cluster()
        .expect("the testkit's own target server");
    let proxy = FaultProxy::start(format!("127.0.0.1:{}", cluster.port).parse().unwrap()).unwrap();
    let c = testkit::try_client(&proxy.route(&pair.target.admin_conninfo()))
        .await
        .unwrap();
    let rtt = || async {
        let t0 = Instant::now();
        c.simple_query("SELECT 1").await.unwrap();
        t0.elapsed()
    };
    assert!(rtt().await < Duration::from_millis(100));
    proxy.set_delay(Duration::from_millis(100));
    let slow = rtt().await;
    assert!(slow >= Duration::from_millis(200), "{slow:?}");
    proxy.set_delay(Duration::ZERO);
    assert!(rtt().await < Duration::from_millis(100));
}

/// The target's connections cut for 3 s in the middle of an index build
/// (made slow by a function that sleeps per row): the build is done again
/// on a new session once the lost session's own build has ended (it may
/// have committed: its marker says), and the run ends clean.
#[tokio::test(flavor = "multi_thread")]
async fn target_cut_during_an_index_build_is_retried() {
    let pair = testkit::shared_pair();
    let db = pair.fresh_db("cut_mid_index").await;
    testkit::execute(
        &db.source,
        "CREATE FUNCTION slow_key(int) RETURNS int IMMUTABLE LANGUAGE plpgsql
           AS $$ BEGIN PERFORM pg_catalog.pg_sleep(0.001); RETURN $1; END $$;
         CREATE TABLE slow (id int PRIMARY KEY, pad text);
         INSERT INTO slow SELECT g, repeat(md5(g::text), 30) FROM generate_series(1, 1100) g;
         CREATE INDEX slow_built ON slow (slow_key(id));",
    )
    .await
    .unwrap();
    let cluster = pair
        .target
        .cluster()
        .expect("the testkit's own target server");
    let proxy = FaultProxy::start(format!("127.0.0.1:{}", cluster.port).parse().unwrap()).unwrap();
    let target_direct = other_target_db(&db, "up");
    let target = proxy.route(&target_direct);
    let run = tokio::spawn({
        let (source, target) = (db.source.clone(), target.clone());
        // ANALYZE would evaluate the slow expression again.
        async move {
            run_migrate(
                &source,
                &target,
                &["--json", "--jobs", "2", "--skip-analyze"],
            )
            .await
        }
    });
    wait_for(
        &pair.target.admin_conninfo(),
        "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE query LIKE 'CREATE INDEX slow_built%')",
        Duration::from_secs(60),
        "the slow index build on the target",
    )
    .await;
    proxy.cut_for(Duration::from_secs(3));
    let out = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the run finished")
        .unwrap();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("retrying"), "no retry was logged: {err}");
    let report = report_of(&out.stdout);
    assert_eq!(
        report["verify"]["differences"].as_array().unwrap().len(),
        0,
        "{report:#}"
    );
    let c = testkit::client(&target_direct).await;
    let n: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_indexes WHERE indexname = 'slow_built'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
}

/// The target's connections cut for 1 s while the schema is applied (the
/// run paused before its first batch of schema steps, the link cut, the
/// run let go), and again once verify's sessions are open: the batch is
/// applied on a new session, verify starts again on new ones, and the run
/// ends clean, every object there once.
#[tokio::test(flavor = "multi_thread")]
async fn target_cut_during_the_schema_stage_and_verify_is_retried() {
    let pair = testkit::shared_pair();
    let db = pair.fresh_db("cut_mid_schema").await;
    testkit::execute(
        &db.source,
        "CREATE TABLE a (id int PRIMARY KEY, b text); INSERT INTO a SELECT g, g::text FROM generate_series(1, 500) g;
         CREATE VIEW v AS SELECT id FROM a; CREATE SEQUENCE s; SELECT nextval('s');",
    )
    .await
    .unwrap();
    let cluster = pair
        .target
        .cluster()
        .expect("the testkit's own target server");
    let proxy = FaultProxy::start(format!("127.0.0.1:{}", cluster.port).parse().unwrap()).unwrap();
    let target_direct = other_target_db(&db, "up");
    let target = proxy.route(&target_direct);
    let dir = tempfile::tempdir().unwrap();
    let pause = Pause::new(dir.path());
    let run = tokio::spawn({
        let (source, target, env) = (
            db.source.clone(),
            target.clone(),
            pause.env("schema_batch,verify"),
        );
        let dir = dir.path().to_path_buf();
        async move { migrate_in(&dir, &source, &target, &[], &env).await }
    });
    for point in ["schema_batch", "verify"] {
        assert_eq!(pause.reached(Duration::from_secs(60)).await, point);
        proxy.cut_for(Duration::from_secs(1));
        pause.resume();
    }
    let out = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the run finished")
        .unwrap();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains("retrying")
            && err
                .contains("pre schema steps from TABLE public.a: interrupted by a transient fault"),
        "no retry of the schema batch was logged: {err}"
    );
    assert!(
        err.contains("retrying") && err.contains("verify: interrupted by a transient fault"),
        "no retry of verify was logged: {err}"
    );
    let report = report_of(&out.stdout);
    assert_clean(&report, &db.source, &target_direct).await;
}

/// The source's connections of the copy workers (not the coordinator's,
/// which holds the exported snapshot and sent nothing meanwhile) cut for
/// 3 s in the middle of a big table's COPY: the workers import the same
/// snapshot again on new sessions, and the copy is still one point in time.
#[tokio::test(flavor = "multi_thread")]
async fn source_workers_cut_mid_copy_import_the_snapshot_again() {
    let (db, proxy, source) = big_source("cut_src_workers").await;
    let pair = testkit::shared_pair();
    let target = other_target_db(&db, "up");
    let run = tokio::spawn({
        let (source, target) = (source.clone(), target.clone());
        async move { run_migrate(&source, &target, &["--json", "--jobs", "2"]).await }
    });
    let ports = copying_ports(&pair.source.admin_conninfo(), &db.name).await;
    proxy.cut_ports_for(&ports, Duration::from_secs(3));
    proxy.set_bandwidth(None);
    let out = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the run finished")
        .unwrap();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("retrying"), "no retry was logged: {err}");
    let report = report_of(&out.stdout);
    assert_eq!(report["point_in_time"], true, "{report:#}");
    assert_clean(&report, &db.source, &target).await;
}

/// Every source connection cut for 3 s in the middle of a big table's
/// COPY, the coordinator's too: the exported snapshot is gone with it. The
/// big table is cut in chunks, some copied when the link goes: it is
/// emptied and copied again whole on a new snapshot (chunks read on two
/// snapshots could miss or double a row), the run finishes clean, and its
/// report says the copy is no longer one point in time.
#[tokio::test(flavor = "multi_thread")]
async fn source_cut_losing_the_snapshot_goes_on_with_a_new_one_and_says_so() {
    let (db, proxy, source) = big_source("cut_src_all").await;
    let target = other_target_db(&db, "up");
    let run = tokio::spawn({
        let (source, target) = (source.clone(), target.clone());
        let extra = ["--json", "--jobs", "2", "--split-size", "2MB"];
        async move { run_migrate(&source, &target, &extra).await }
    });
    wait_for(
        &target,
        "SELECT count(*) > 0 FROM _pg_dbmigrator.copied WHERE item LIKE 'public.big#%'",
        Duration::from_secs(60),
        "a chunk of the big table committed on the target",
    )
    .await;
    proxy.cut_for(Duration::from_secs(3));
    proxy.set_bandwidth(None);
    let out = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the run finished")
        .unwrap();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains("the source session holding the exported snapshot was lost")
            && err.contains("partly copied on the lost snapshot: copying it again whole"),
        "{err}"
    );
    let report = report_of(&out.stdout);
    assert_eq!(report["point_in_time"], false, "{report:#}");
    assert!(
        report["snapshot_note"]
            .as_str()
            .unwrap()
            .contains("not one point in time"),
        "{report:#}"
    );
    assert_clean(&report, &db.source, &target).await;
    // The big table's key is built beside the copy once its rows are in,
    // which they were not when the snapshot went: the copy started again
    // must still build it.
    let want = keys_and_indexes(&db.source).await;
    assert!(
        want.len() >= 4,
        "both tables' keys and their indexes: {want:?}"
    );
    assert_eq!(keys_and_indexes(&target).await, want);
}

/// Every index and constraint of the database's public tables, defined.
async fn keys_and_indexes(conninfo: &str) -> Vec<String> {
    let c = testkit::client(conninfo).await;
    let rows = c
        .query(
            "SELECT format('%s: %s', indexrelid::regclass, pg_get_indexdef(indexrelid)) FROM pg_index
              WHERE indrelid::regclass::text IN ('big', 'small')
             UNION ALL
             SELECT format('%s: %s', conname, pg_get_constraintdef(oid)) FROM pg_constraint
              WHERE conrelid::regclass::text IN ('big', 'small')
             ORDER BY 1",
            &[],
        )
        .await
        .unwrap();
    rows.iter().map(|r| r.get(0)).collect()
}

/// The same loss under `--strict-snapshot`: the run stops (exit 1) saying
/// what happened and the ways out (`--force-clean`, `--resume`).
#[tokio::test(flavor = "multi_thread")]
async fn strict_snapshot_refuses_a_new_snapshot() {
    let (db, proxy, source) = big_source("cut_src_strict").await;
    let pair = testkit::shared_pair();
    let target = other_target_db(&db, "up");
    let dir = tempfile::tempdir().unwrap();
    let run = tokio::spawn({
        let (source, target) = (source.clone(), target.clone());
        let dir = dir.path().to_path_buf();
        async move {
            migrate_in(
                &dir,
                &source,
                &target,
                &["--jobs", "2", "--strict-snapshot"],
                &[],
            )
            .await
        }
    });
    copying_ports(&pair.source.admin_conninfo(), &db.name).await;
    proxy.cut_for(Duration::from_secs(1));
    proxy.set_bandwidth(None);
    let out = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the run finished")
        .unwrap();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("the source session holding the exported snapshot was lost during the copy")
            && err.contains("--strict-snapshot")
            && err.contains("--force-clean")
            && err.contains("--resume"),
        "{err}"
    );
    // The token stays for `--resume` (whose continuing tests/resume.rs
    // covers).
    assert!(
        dir.path().join("w.resume.json").exists(),
        "no resume token was kept"
    );
}

/// A source database with a big table (a COPY of a few seconds) and a
/// small one, and a fault proxy in front of the source server: the
/// database, the proxy, and the database's conninfo through the proxy.
async fn big_source(name: &str) -> (testkit::TestDb, FaultProxy, String) {
    let pair = testkit::shared_pair();
    let db = pair.fresh_db(name).await;
    testkit::execute(
        &db.source,
        "CREATE TABLE big (id int PRIMARY KEY, pad text);
         INSERT INTO big SELECT g, repeat(md5(g::text), 8) FROM generate_series(1, 60000) g;
         CREATE TABLE small (id int PRIMARY KEY); INSERT INTO small SELECT generate_series(1, 100);",
    )
    .await
    .unwrap();
    let cluster = pair
        .source
        .cluster()
        .expect("the testkit's own source server");
    let proxy = FaultProxy::start(format!("127.0.0.1:{}", cluster.port).parse().unwrap()).unwrap();
    // Paced, so the COPY lasts long enough to be cut in its middle.
    proxy.set_bandwidth(Some(COPY_PACE));
    let source = proxy.route(&db.source);
    (db, proxy, source)
}

/// Wait until the big table's COPY runs on the source in database `db`
/// (other tests copy tables named big too); the client ports of the
/// sessions running a COPY TO there (the copy workers').
async fn copying_ports(admin: &str, db: &str) -> Vec<u16> {
    let sql = format!(
        "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE datname = '{db}' AND query LIKE 'COPY%big%TO STDOUT%')"
    );
    wait_for(
        admin,
        &sql,
        Duration::from_secs(60),
        "the big table's COPY on the source",
    )
    .await;
    let c = testkit::client(admin).await;
    c.query(
        "SELECT client_port FROM pg_stat_activity
          WHERE datname = $1 AND query LIKE 'COPY%TO STDOUT%' AND client_port IS NOT NULL",
        &[&db],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| r.get::<_, i32>(0) as u16)
    .collect()
}

/// A tmpfs mounted for one test, unmounted when dropped.
struct SmallFs(std::path::PathBuf);

impl SmallFs {
    fn mount(dir: &std::path::Path, size: &str) -> SmallFs {
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .expect("running mount");
        assert!(
            out.status.success(),
            "this test mounts a small tmpfs, which needs root (run the suite as root, as CI \
             does): {}",
            text(&out.stderr)
        );
        SmallFs(dir.to_path_buf())
    }

    fn resize(&self, size: &str) {
        let out = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .output()
            .expect("running mount");
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// A dump path on a file system that fills up: the error names the path,
/// what is still to come and `--resume`; once there is room, `--resume`
/// finishes the dump, and the archive restores whole.
#[tokio::test(flavor = "multi_thread")]
async fn a_full_dump_path_is_said_and_resume_finishes() {
    let pair = testkit::shared_pair();
    let db = pair.fresh_db("full_disk").await;
    testkit::execute(
        &db.source,
        "CREATE TABLE wide (id int PRIMARY KEY, pad text);
         INSERT INTO wide SELECT g, md5(g::text) || md5((g * 7)::text) FROM generate_series(1, 50000) g;",
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let fs = SmallFs::mount(dir.path(), "1m");
    let archive = dir.path().join("archive");
    let archive = archive.to_str().unwrap();
    let out = run_async(&["dump", "--source", &db.source, "--dump-path", archive]).await;
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("the file system holding {archive} is full"))
            && err.contains("still to write hold")
            && err.contains("--resume"),
        "{err}"
    );
    fs.resize("64m");
    let out = run_async(&[
        "dump",
        "--source",
        &db.source,
        "--dump-path",
        archive,
        "--resume",
    ])
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let target = other_target_db(&db, "restored");
    let out = run_async(&["restore", "--target", &target, "--dump-path", archive]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        content_digest(&db.source).await,
        content_digest(&target).await
    );
}

/// `migrate --copy-method dump` with its dump path on a file system that
/// fills up: the error names the path, what is still to come and
/// `--resume`; once there is room, `--resume` finishes the migration.
#[tokio::test(flavor = "multi_thread")]
async fn a_full_dump_path_of_migrate_is_said_and_resume_finishes() {
    let pair = testkit::shared_pair();
    let db = pair.fresh_db("full_disk_migrate").await;
    testkit::execute(
        &db.source,
        "CREATE TABLE wide (id int PRIMARY KEY, pad text);
         INSERT INTO wide SELECT g, md5(g::text) || md5((g * 7)::text) FROM generate_series(1, 50000) g;",
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let fs = SmallFs::mount(dir.path(), "1m");
    let work = dir.path().join("work");
    let work = work.to_str().unwrap();
    let target = other_target_db(&db, "via_dump");
    let args = [
        "migrate",
        "--source",
        &db.source,
        "--target",
        &target,
        "--copy-method",
        "dump",
        "--dump-path",
        work,
    ];
    let out = run_async(&args).await;
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("the file system holding {work} is full"))
            && err.contains("still to write hold")
            && err.contains("--resume"),
        "{err}"
    );
    fs.resize("64m");
    let mut resumed = args.to_vec();
    resumed.extend(["--resume", "--json"]);
    let out = run_async(&resumed).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let report = report_of(&out.stdout);
    assert_clean(&report, &db.source, &target).await;
}

/// Online, every source connection cut for 1 s in the middle of a COPY,
/// so the slot's snapshot is lost. Before anything was copied, the run
/// drops the slot and starts over from a new slot and snapshot by itself;
/// after a table was copied, it refuses (exit 1) with the way out. The two
/// run side by side (they mostly wait).
#[tokio::test(flavor = "multi_thread")]
async fn online_snapshot_lost_starts_over_before_anything_was_copied_else_refuses() {
    tokio::join!(online_starts_over(), online_refuses());
}

/// Nothing copied yet: a new slot, and the migration ends clean, its slot
/// gone.
async fn online_starts_over() {
    let pair = testkit::shared_pair();
    let db = pair.fresh_db("cut_src_online").await;
    testkit::execute(
        &db.source,
        "CREATE TABLE big (id int PRIMARY KEY, pad text);
         INSERT INTO big SELECT g, repeat(md5(g::text), 8) FROM generate_series(1, 60000) g;",
    )
    .await
    .unwrap();
    let cluster = pair
        .source
        .cluster()
        .expect("the testkit's own source server");
    let proxy = FaultProxy::start(format!("127.0.0.1:{}", cluster.port).parse().unwrap()).unwrap();
    // Paced, so the COPY lasts long enough to be cut in its middle.
    proxy.set_bandwidth(Some(COPY_PACE));
    let source = proxy.route(&db.source);
    let target = other_target_db(&db, "up");
    let dir = tempfile::tempdir().unwrap();
    let run = tokio::spawn({
        let (source, target) = (source.clone(), target.clone());
        let dir = dir.path().to_path_buf();
        async move {
            let extra = ["--mode", "online", "--cutover", "auto", "--jobs", "2"];
            migrate_in(&dir, &source, &target, &extra, &[]).await
        }
    });
    copying_ports(&pair.source.admin_conninfo(), &db.name).await;
    proxy.cut_for(Duration::from_secs(1));
    proxy.set_bandwidth(None);
    let out = tokio::time::timeout(Duration::from_secs(180), run)
        .await
        .expect("the run finished")
        .unwrap();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains("dropping the slot and starting over from a new one"),
        "{err}"
    );
    let report = report_of(&out.stdout);
    assert_eq!(report["point_in_time"], true, "{report:#}");
    assert_clean(&report, &db.source, &target).await;
    let c = testkit::client(&db.source).await;
    let slots: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_replication_slots WHERE database = current_database()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(slots, 0, "a slot was left on the source");
}

/// A small table copied, the big one in flight: refused, naming the way
/// out, and leaving the slot and the token for it.
async fn online_refuses() {
    let (db, proxy, source) = big_source("cut_src_online_refused").await;
    let pair = testkit::shared_pair();
    let target = other_target_db(&db, "up");
    let dir = tempfile::tempdir().unwrap();
    let extra = ["--mode", "online", "--cutover", "auto", "--jobs", "2"];
    let run = tokio::spawn({
        let (source, target) = (source.clone(), target.clone());
        let dir = dir.path().to_path_buf();
        async move { migrate_in(&dir, &source, &target, &extra, &[]).await }
    });
    wait_for(
        &target,
        "SELECT count(*) > 0 FROM _pg_dbmigrator.copied WHERE item = 'public.small'",
        Duration::from_secs(60),
        "the small table committed on the target",
    )
    .await;
    copying_ports(&pair.source.admin_conninfo(), &db.name).await;
    proxy.cut_for(Duration::from_secs(1));
    proxy.set_bandwidth(None);
    let out = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the run finished")
        .unwrap();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("the source session holding the replication slot's snapshot was lost")
            && err.contains("tables were copied on it already")
            && err.contains("--resume"),
        "{err}"
    );
    // What `--resume` starts over from is left for it: the token, and the
    // old slot it drops. (The servers are this test binary's own.)
    assert!(dir.path().join("w.resume.json").exists(), "no resume token");
    let c = testkit::client(&db.source).await;
    let slots: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_replication_slots WHERE database = current_database()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(slots, 1, "the slot was not left for --resume");
}

/// Verify found nothing, and the target's rows are the source's.
async fn assert_clean(report: &serde_json::Value, source: &str, target: &str) {
    assert_eq!(
        report["verify"]["differences"].as_array().unwrap().len(),
        0,
        "{report:#}"
    );
    assert_eq!(content_digest(source).await, content_digest(target).await);
}
