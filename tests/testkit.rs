//! The throwaway clusters every other integration test relies on.

use std::io::BufRead as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pg_dbmigrator::testkit::{self, Cluster, ClusterOptions};

#[tokio::test]
async fn shared_pair_starts_with_logical_source() {
    let pair = testkit::shared_pair();
    let src = pair.source.conninfo("postgres");
    let tgt = pair.target.conninfo("postgres");
    assert_eq!(
        testkit::query_scalar(&src, "SHOW wal_level").await,
        "logical"
    );
    assert_eq!(testkit::query_scalar(&tgt, "SELECT 1").await, "1");
    assert!(pair.source.major() >= 10, "major {}", pair.source.major());
    assert_eq!(
        testkit::query_scalar(&src, "SHOW server_version_num").await[..2]
            .parse::<u32>()
            .ok(),
        Some(pair.source.major()).filter(|m| *m >= 10)
    );
}

#[tokio::test]
async fn fresh_db_gives_distinct_databases_on_both_servers() {
    let pair = testkit::shared_pair();
    let a = pair.fresh_db("Fresh-Test").await;
    let b = pair.fresh_db("Fresh-Test").await;
    assert_ne!(a.name, b.name);
    assert!(a.name.starts_with("fresh_test_"), "{}", a.name);
    assert!(a
        .name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'));
    for db in [&a, &b] {
        assert_eq!(
            testkit::query_scalar(&db.source, "SELECT current_database()").await,
            db.name
        );
        assert_eq!(
            testkit::query_scalar(&db.target, "SELECT current_database()").await,
            db.name
        );
    }
    // Separate databases: a table made in one is not visible in the other.
    testkit::execute(
        &a.source,
        "CREATE TABLE t (id int); INSERT INTO t VALUES (1), (2)",
    )
    .await
    .unwrap();
    assert_eq!(
        testkit::query_scalar(&a.source, "SELECT count(*) FROM t").await,
        "2"
    );
    let n = testkit::query_scalar(
        &b.source,
        "SELECT count(*) FROM pg_class WHERE relname = 't'",
    )
    .await;
    assert_eq!(n, "0");
    pair.drop_db(&b).await;
    let left = testkit::query_scalar(
        &pair.target.conninfo("postgres"),
        &format!(
            "SELECT count(*) FROM pg_database WHERE datname = '{}'",
            b.name
        ),
    )
    .await;
    assert_eq!(left, "0");
}

#[tokio::test]
async fn cluster_stop_removes_its_directory() {
    let cluster = tokio::task::spawn_blocking(|| Cluster::start(&ClusterOptions::default()))
        .await
        .unwrap()
        .expect("cluster starts");
    let data = cluster.data_dir.clone();
    assert!(data.join("PG_VERSION").exists());
    // TCP with password, and the Unix socket with trust.
    assert_eq!(
        testkit::query_scalar(&cluster.conninfo("postgres"), "SELECT current_user").await,
        "postgres"
    );
    assert_eq!(
        testkit::query_scalar(&cluster.socket_conninfo("postgres"), "SELECT 42").await,
        "42"
    );
    assert_eq!(
        testkit::query_scalar(&cluster.conninfo("postgres"), "SHOW wal_level").await,
        "replica"
    );
    let port = cluster.port;
    tokio::task::spawn_blocking(move || {
        cluster.stop();
        cluster.stop(); // idempotent
        drop(cluster); // and Drop after stop is harmless
    })
    .await
    .unwrap();
    assert!(!data.exists(), "{} still exists", data.display());
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
}

#[tokio::test]
async fn extra_conf_is_applied() {
    let opts = ClusterOptions {
        extra_conf: vec![("work_mem".into(), "'7MB'".into())],
        ..Default::default()
    };
    let cluster = tokio::task::spawn_blocking(move || Cluster::start(&opts))
        .await
        .unwrap()
        .expect("cluster starts");
    assert_eq!(
        testkit::query_scalar(&cluster.conninfo("postgres"), "SHOW work_mem").await,
        "7MB"
    );
    tokio::task::spawn_blocking(move || drop(cluster))
        .await
        .unwrap();
}

#[tokio::test]
async fn external_server_by_conninfo() {
    // What PG_DBMIGRATOR_TEST_SOURCE/TARGET do: attach to a running server.
    let pair = testkit::shared_pair();
    let owned = pair.target.cluster().expect("owned cluster");
    let ci = owned.conninfo("postgres");
    let server = tokio::task::spawn_blocking(move || testkit::Server::external(&ci))
        .await
        .unwrap()
        .expect("external server reachable");
    assert_eq!(server.major(), owned.major);
    assert!(!format!("{server:?}").contains(&owned.password));
    let other = pair.fresh_db("ext").await;
    assert_eq!(
        testkit::query_scalar(&server.conninfo(&other.name), "SELECT current_database()").await,
        other.name
    );
    let bad = tokio::task::spawn_blocking(|| testkit::Server::external("host=127.0.0.1 port=1"))
        .await
        .unwrap();
    assert!(bad.is_err());
}

const CHILD_ENV: &str = "PG_DBMIGRATOR_TESTKIT_ABORT_CHILD";

/// Not a test on its own (ignored, so it never passes doing nothing): run by
/// `watchdog_cleans_up_after_abort` in a child process, which starts a
/// cluster and dies without any cleanup.
#[test]
#[ignore = "a child process of watchdog_cleans_up_after_abort"]
fn abort_child() {
    assert!(
        std::env::var_os(CHILD_ENV).is_some(),
        "run only by watchdog_cleans_up_after_abort"
    );
    let cluster = Cluster::start(&ClusterOptions::default()).expect("cluster starts");
    println!("DATA_DIR={}", cluster.data_dir.display());
    println!("PORT={}", cluster.port);
    std::process::abort();
}

#[test]
fn watchdog_cleans_up_after_abort() {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "abort_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut data_dir = None;
    let mut port = None;
    for line in std::io::BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        // The harness prints "test abort_child ... " on the same line.
        if let Some((_, d)) = line.split_once("DATA_DIR=") {
            data_dir = Some(PathBuf::from(d));
        }
        if let Some((_, p)) = line.split_once("PORT=") {
            port = Some(p.trim().parse::<u16>().unwrap());
        }
    }
    let status = child.wait().unwrap();
    assert!(!status.success(), "child was meant to abort");
    let data_dir = data_dir.expect("child reported its data dir");
    let port = port.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while data_dir.exists() || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
        assert!(
            Instant::now() < deadline,
            "cluster of aborted process not cleaned up: {}",
            data_dir.display()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
