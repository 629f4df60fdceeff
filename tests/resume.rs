//! Crash and resume: kill -9 in the middle of a migration, refuse a resume
//! with other flags (changing nothing), then resume and finish without
//! copying finished tables again.

mod common;

use std::time::{Duration, Instant};

use common::*;
use pg_dbmigrator::testkit;
use pg_dbmigrator::ResumeToken;

/// xmin of every row of a table: unchanged if and only if the rows were not rewritten.
async fn xmins(conninfo: &str, table: &str) -> String {
    testkit::query_scalar(
        conninfo,
        &format!("SELECT md5(string_agg(xmin::text, ',' ORDER BY ctid)) FROM ONLY {table}"),
    )
    .await
}

#[tokio::test]
async fn kill_9_then_resume() {
    let db = rich_db("resume").await;
    let setup = "CREATE TABLE public.lockme (id int PRIMARY KEY, v text);";
    testkit::execute(&db.source, setup).await.unwrap();
    testkit::execute(&db.target, setup).await.unwrap();
    testkit::execute(
        &db.source,
        "INSERT INTO public.lockme SELECT g, md5(g::text) FROM generate_series(1, 20000) g",
    )
    .await
    .unwrap();

    let blocker = testkit::client(&db.target).await;
    blocker
        .batch_execute("BEGIN; LOCK TABLE public.lockme IN SHARE MODE")
        .await
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let dump = dir.path().join("work");
    let dump_s = dump.to_str().unwrap().to_string();
    let token_path = ResumeToken::path_for(&dump);
    let base = [
        "migrate",
        "--source",
        &db.source,
        "--target",
        &db.target,
        "--data-only",
        "--jobs",
        "2",
        "--dump-path",
        &dump_s,
    ];
    let mut child = command(&base)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();

    // Wait for some finished tables, then kill -9.
    let deadline = Instant::now() + Duration::from_secs(60);
    let done_before_kill = loop {
        if let Ok(Some(t)) = ResumeToken::load(&token_path) {
            if t.copied.len() >= 5 {
                break t.copied.keys().cloned().collect::<Vec<_>>();
            }
        }
        assert!(Instant::now() < deadline, "copy did not progress");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    blocker.batch_execute("COMMIT").await.unwrap();
    let token_after_kill = ResumeToken::load(&token_path).unwrap().unwrap();
    assert!(!token_after_kill.completed);
    assert!(!token_after_kill.copied.contains_key("public.lockme"));
    let mut before = Vec::new();
    for t in &done_before_kill {
        before.push((t.clone(), xmins(&db.target, t).await));
    }
    let target_before = content_digest(&db.target).await;
    let token_bytes = std::fs::read(&token_path).unwrap();

    // A resume with other filters, or against another target, is refused and changes nothing.
    let mut other_filter: Vec<&str> = base.to_vec();
    other_filter.extend(["--resume", "--exclude-table", "public.lockme", "-q"]);
    let out = run(&other_filter);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("--exclude-table") && err.contains("--force-clean"),
        "{err}"
    );
    let other_target = db
        .target
        .replace(&format!("dbname={}", db.name), "dbname=postgres");
    assert_ne!(
        other_target, db.target,
        "conninfo shape changed; fix the test"
    );
    let mut other_tgt: Vec<&str> = base.to_vec();
    other_tgt[4] = &other_target;
    other_tgt.extend(["--resume", "-q"]);
    let out = run(&other_tgt);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("--target was"),
        "{}",
        text(&out.stderr)
    );
    // Without --resume, the existing token is not silently overwritten.
    let out = run(&base);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("--resume"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(
        std::fs::read(&token_path).unwrap(),
        token_bytes,
        "refusals must not touch the token"
    );
    assert_eq!(
        content_digest(&db.target).await,
        target_before,
        "refusals must not touch the target"
    );

    // The real resume.
    let mut resume: Vec<&str> = base.to_vec();
    resume.extend(["--resume", "--json"]);
    let out = run(&resume);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["resumed"], true);
    assert_eq!(
        report["verify"]["differences"].as_array().unwrap().len(),
        0,
        "{report:#}"
    );
    let skipped: Vec<String> = report["skipped_tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    for t in &done_before_kill {
        assert!(
            skipped.contains(t),
            "{t} was copied again (skipped: {skipped:?})"
        );
    }
    for (t, x) in &before {
        assert_eq!(
            &xmins(&db.target, t).await,
            x,
            "{t} was rewritten by the resume"
        );
    }
    let copied_now: Vec<&str> = report["tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["table"].as_str().unwrap())
        .collect();
    assert!(copied_now.contains(&"public.lockme"), "{copied_now:?}");
    assert_eq!(
        content_digest(&db.source).await,
        content_digest(&db.target).await
    );
    assert!(ResumeToken::load(&token_path).unwrap().unwrap().completed);
}

/// Cancellation through the library (what Ctrl-C / SIGTERM do in the binary):
/// the run stops, the token is saved, and a resume finishes the job.
#[tokio::test]
async fn sigterm_saves_token_and_exits_130() {
    let db = demo_db("sigterm").await;
    let setup = "CREATE TABLE public.lockme (id int PRIMARY KEY);";
    testkit::execute(&db.source, setup).await.unwrap();
    testkit::execute(&db.target, setup).await.unwrap();
    testkit::execute(
        &db.source,
        "INSERT INTO public.lockme SELECT generate_series(1, 100)",
    )
    .await
    .unwrap();
    let blocker = testkit::client(&db.target).await;
    blocker
        .batch_execute("BEGIN; LOCK TABLE public.lockme IN SHARE MODE")
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let dump = dir.path().join("work");
    let dump_s = dump.to_str().unwrap().to_string();
    let token_path = ResumeToken::path_for(&dump);
    let base = [
        "migrate",
        "--source",
        &db.source,
        "--target",
        &db.target,
        "--data-only",
        "--jobs",
        "2",
        "--dump-path",
        &dump_s,
    ];
    let child = command(&base)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(Some(t)) = ResumeToken::load(&token_path) {
            if !t.copied.is_empty() {
                break;
            }
        }
        assert!(Instant::now() < deadline, "copy did not progress");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let pid = child.id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let out = child.wait_with_output().unwrap();
    blocker.batch_execute("COMMIT").await.unwrap();
    assert_eq!(
        out.status.code(),
        Some(130),
        "stderr: {}",
        text(&out.stderr)
    );
    assert!(
        text(&out.stderr).contains("--resume"),
        "{}",
        text(&out.stderr)
    );
    let t = ResumeToken::load(&token_path).unwrap().unwrap();
    assert!(!t.completed && !t.copied.is_empty());
    let mut resume: Vec<&str> = base.to_vec();
    resume.push("--resume");
    let out = run(&resume);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    assert_eq!(
        content_digest(&db.source).await,
        content_digest(&db.target).await
    );
}
