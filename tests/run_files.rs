//! The files a run leaves (resume token, journal, lock, summary, work
//! directory) against real servers: `no_summary` writes no summary, and
//! `discard_files` (the CLI's `forget`) removes a finished migration's
//! files, refusing an unfinished or running one. Also what a rerun of a
//! finished migration answers.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use pg_dbmigrator::testkit::{self, TestDb};
use pg_dbmigrator::{
    discard_files, ErrorKind, MigrationConfig, MigrationError, MigrationReport, Migrator, Remedy,
};
use tokio_util::sync::CancellationToken;

/// A table `t` on both sides (data only), with `rows` rows on the source.
async fn db_with_rows(prefix: &str, rows: usize) -> TestDb {
    let db = testkit::shared_pair().fresh_db(prefix).await;
    add_table(
        &db,
        "CREATE TABLE t (id int PRIMARY KEY, pad text)",
        &format!("INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, {rows}) g"),
    )
    .await;
    db
}

fn config(db: &TestDb, work: &Path) -> pg_dbmigrator::MigrationConfigBuilder {
    MigrationConfig::offline(&db.source, &db.target)
        .data_only(true)
        .jobs(2)
        .dump_path(work)
}

async fn run(config: &MigrationConfig) -> pg_dbmigrator::Result<MigrationReport> {
    Migrator::new(config.clone())
        .run(CancellationToken::new())
        .await
}

fn with_suffix(p: &Path, suffix: &str) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

#[tokio::test]
async fn no_summary_writes_none_and_the_report_does_not_point_at_one() {
    let db = db_with_rows("files_nosum", 100).await;
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("w");
    let cfg = config(&db, &work).no_summary(true).build().unwrap();
    let report = run(&cfg).await.expect("migration");
    assert_eq!(report.rows, 100);
    assert!(!report.summary_path().exists());
    assert!(
        !report.summary().contains("summary (JSON)"),
        "{}",
        report.summary()
    );
    // The token is still written: it is what a rerun answers from.
    assert!(with_suffix(&work, ".resume.json").exists());

    // Without it, the summary is there.
    let db = db_with_rows("files_sum", 10).await;
    let work = dir.path().join("w2");
    let report = run(&config(&db, &work).build().unwrap()).await.unwrap();
    assert!(report.summary_path().exists());
    assert!(report.summary().contains("summary (JSON)"));
}

/// An interrupted run's files are kept unless forced; a finished one's are
/// removed, all of them, and only when no run holds the lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discard_files_removes_a_finished_migration_only() {
    let db = db_with_rows("files_discard", 2000).await;
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("w");
    let cfg = config(&db, &work).build().unwrap();
    let token = with_suffix(&work, ".resume.json");

    // Nothing ran yet: nothing to remove, and no error.
    let none = discard_files(&cfg, false).unwrap();
    assert!(none.removed.is_empty(), "{none:?}");
    assert!(!with_suffix(&token, ".lock").exists());

    // Interrupted mid-copy (the copy waits on a lock held on the target).
    let blocker = block_copies_into(&db, "t").await;
    let cancel = CancellationToken::new();
    let migrator = Migrator::new(cfg.clone());
    let c = cancel.clone();
    let running = tokio::spawn(async move { migrator.run(c).await });
    wait_for_file(&token).await;
    // Running: refused even with force, and nothing is removed.
    let e = discard_files(&cfg, true).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Configuration, "{e}");
    assert!(e.to_string().contains("in progress"), "{e}");
    assert!(token.exists());
    cancel.cancel();
    let r = running.await.unwrap();
    assert!(matches!(r, Err(MigrationError::Cancelled)), "{r:?}");
    drop(blocker);

    // Not complete: refused, saying how to go on.
    let e = discard_files(&cfg, false).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Configuration, "{e}");
    let m = e.to_string();
    assert!(
        m.contains("not recorded complete") && m.contains("--resume"),
        "{m}"
    );
    assert!(token.exists() && work.exists());

    // Resumed to the end.
    let resumed = MigrationConfig {
        resume: true,
        ..cfg.clone()
    };
    let report = run(&resumed).await.expect("resume");
    assert!(report.resumed);
    let summary = report.summary_path();
    assert!(summary.exists());

    // A plain rerun of the finished migration: refused, saying what to do;
    // --resume answers "already complete".
    let e = run(&cfg).await.unwrap_err();
    let m = e.to_string();
    assert_eq!(e.kind(), ErrorKind::Configuration, "{m}");
    assert!(
        m.contains("already completed") && m.contains("`resume`") && m.contains("discard_files"),
        "{m}"
    );
    assert_eq!(
        e.remedies(),
        [Remedy::Resume, Remedy::ForceClean, Remedy::DiscardFiles]
    );
    let again = run(&resumed).await.unwrap();
    assert!(again.already_complete);

    // Finished: everything goes.
    let gone = discard_files(&cfg, false).unwrap();
    assert!(gone.was_complete);
    for p in [&token, &summary, &work, &with_suffix(&token, ".lock")] {
        assert!(gone.removed.contains(p), "{p:?} not in {:?}", gone.removed);
        assert!(!p.exists(), "{p:?} still there");
    }
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    // Twice is fine: nothing more to remove.
    assert!(discard_files(&cfg, false).unwrap().removed.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_removes_an_unfinished_migration() {
    let db = db_with_rows("files_force", 2000).await;
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("w");
    let cfg = config(&db, &work).build().unwrap();
    let token = with_suffix(&work, ".resume.json");
    let blocker = block_copies_into(&db, "t").await;
    let cancel = CancellationToken::new();
    let migrator = Migrator::new(cfg.clone());
    let c = cancel.clone();
    let running = tokio::spawn(async move { migrator.run(c).await });
    wait_for_file(&token).await;
    cancel.cancel();
    assert!(running.await.unwrap().is_err());
    drop(blocker);
    assert!(discard_files(&cfg, false).is_err());
    let gone = discard_files(&cfg, true).unwrap();
    assert!(!gone.was_complete);
    assert!(gone.removed.contains(&token));
    assert!(!token.exists() && !work.exists());
}

/// The command line: `migrate --no-summary`, then `forget` with the same flags.
#[tokio::test]
async fn cli_no_summary_and_forget() {
    let db = db_with_rows("files_cli", 50).await;
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("w");
    let dump = work.to_str().unwrap();
    let mut args = migrate_args(&db, dump);
    args.push("--no-summary".into());
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run_async(&a).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(!with_suffix(&work, ".summary.json").exists());
    assert!(!text(&out.stdout).contains("summary (JSON)"));

    // forget, with the flags that identify the migration.
    let out = run_async(&[
        "forget",
        "--source",
        &db.source,
        "--target",
        &db.target,
        "--data-only",
        "--dump-path",
        dump,
    ])
    .await;
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(stdout.contains("file(s) removed"), "{stdout}");
    assert!(stdout.contains(".resume.json"), "{stdout}");
    assert!(!with_suffix(&work, ".resume.json").exists() && !work.exists());
}

async fn wait_for_file(p: &Path) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !p.exists() {
        assert!(std::time::Instant::now() < deadline, "{p:?} never appeared");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
