//! Transient faults are not the user's problem: connections cut in the
//! middle of the work (through the testkit's fault proxy, so the fault hits
//! mid-statement) are retried, and the run completes without a second
//! command.

mod common;

use std::time::{Duration, Instant};

use common::*;
use pg_dbmigrator::testkit::{self, proxy::FaultProxy};

/// Wait until `sql` (on `ci`) answers true, or fail after `limit`.
async fn wait_for(ci: &str, sql: &str, limit: Duration, what: &str) {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(c) = testkit::try_client(ci).await {
            if let Ok(r) = c.query_one(sql, &[]).await {
                if r.get::<_, bool>(0) {
                    return;
                }
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
         INSERT INTO big SELECT g, repeat(md5(g::text), 8) FROM generate_series(1, 300000) g;
         CREATE TABLE small (id int PRIMARY KEY); INSERT INTO small SELECT generate_series(1, 100);",
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
        async move { run_migrate(&source, &target, &["--json", "--jobs", "2"]).await }
    });
    // The big table's COPY is running on the target: cut.
    wait_for(
        &pair.target.admin_conninfo(),
        "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE query LIKE 'COPY%big%FROM STDIN%')",
        Duration::from_secs(60),
        "the big table's COPY on the target",
    )
    .await;
    proxy.cut_for(Duration::from_secs(3));
    let out = tokio::time::timeout(Duration::from_secs(180), run)
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
    assert_eq!(
        content_digest(&db.source).await,
        content_digest(&target_direct).await
    );
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
         INSERT INTO wide SELECT g, md5(g::text) || md5((g * 7)::text) FROM generate_series(1, 200000) g;",
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let fs = SmallFs::mount(dir.path(), "2m");
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
