//! The native archive: `dump` then `restore` reproduces the database (rows,
//! schema, sequences, large objects), a damaged archive is refused by file
//! name before the target is touched, and both halves resume after kill -9.

mod common;

use std::path::Path;
use std::process::Stdio;

use common::*;
use pg_dbmigrator::testkit;
use pg_dbmigrator::ResumeToken;

fn dump_args<'a>(source: &'a str, dir: &'a str) -> Vec<&'a str> {
    vec![
        "dump",
        "--source",
        source,
        "--dump-path",
        dir,
        "--jobs",
        "2",
        "--split-size",
        "64kB",
    ]
}

fn restore_args<'a>(target: &'a str, dir: &'a str) -> Vec<&'a str> {
    vec![
        "restore",
        "--target",
        target,
        "--dump-path",
        dir,
        "--jobs",
        "2",
    ]
}

/// The NDJSON `progress` events of a dump or a restore carry a percentage
/// (the copy's totals are known), and the last one says 100.
fn assert_progress_reaches_100(stdout: &[u8], what: &str) {
    let percents: Vec<f64> = text(stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["event"] == "progress")
        .filter_map(|e| e["percent"].as_f64())
        .collect();
    assert_eq!(percents.last(), Some(&100.0), "{what}: {percents:?}");
}

async fn verify_clean(source: &str, target: &str) {
    let out = run_async(&["verify", "--source", source, "--target", target]).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(text(&out.stdout).contains("0 differences"));
}

/// A big table (many chunks at 64kB) beside the rich fixture.
const BIG: &str = "CREATE TABLE public.big (id bigint PRIMARY KEY, v text, j jsonb);
    INSERT INTO public.big SELECT g, md5(g::text), jsonb_build_object('g', g) FROM generate_series(1, 60000) g;
    DELETE FROM public.big WHERE id % 5 = 0;";

#[tokio::test]
async fn rich_fixture_round_trip() {
    // The fixture on both sides creates its roles on the target server too.
    let db = rich_db("arch").await;
    testkit::execute(&db.source, BIG).await.unwrap();
    let target = other_target_db(&db, "restored");
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("a");
    let a = archive.to_str().unwrap();

    let out = run_async(&[dump_args(&db.source, a), vec!["--json"]].concat()).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let report = common::report_of(&out.stdout);
    assert!(report["large_objects"].as_u64().unwrap() > 0, "{report}");
    // The manifest lists every file with its size and digest; big was split.
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(archive.join("manifest.json")).unwrap()).unwrap();
    let big = manifest["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["qualified"] == "public.big")
        .unwrap();
    assert!(big["files"].as_array().unwrap().len() > 5, "{big}");
    assert_eq!(big["rows"], 48000);
    for f in big["files"].as_array().unwrap() {
        let p = archive.join(f["file"]["path"].as_str().unwrap());
        assert_eq!(
            std::fs::metadata(&p).unwrap().len(),
            f["file"]["size"].as_u64().unwrap()
        );
        assert_eq!(f["file"]["sha256"].as_str().unwrap().len(), 64);
    }
    assert!(archive.join("schema/pre-data.sql").exists());
    assert_progress_reaches_100(&out.stdout, "dump");

    let out = run_async(&[restore_args(&target, a), vec!["--json"]].concat()).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_progress_reaches_100(&out.stdout, "restore");
    verify_clean(&db.source, &target).await;
    let (src_dump, dst_dump) = (schema_dump(&db.source), schema_dump(&target));
    assert!(src_dump == dst_dump, "{}", diff_hint(&src_dump, &dst_dump));
    assert_eq!(
        content_digest(&db.source).await,
        content_digest(&target).await
    );
}

#[tokio::test]
async fn migrate_through_an_archive() {
    let db = demo_db("archmig").await;
    let target = other_target_db(&db, "viadump");
    let report = migrate_clean(
        &db.source,
        &target,
        &["--copy-method", "dump", "--jobs", "2"],
    )
    .await;
    let stages: Vec<&str> = report["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s[0].as_str().unwrap())
        .collect();
    assert_eq!(stages.first(), Some(&"dump"), "{stages:?}");
    assert!(stages.contains(&"verify"), "{stages:?}");
    assert_eq!(schema_dump(&db.source), schema_dump(&target));
}

/// Flip one byte of `path`.
fn corrupt(path: &Path) {
    let mut b = std::fs::read(path).unwrap();
    let i = b.len() / 2;
    b[i] ^= 0x55;
    std::fs::write(path, b).unwrap();
}

#[tokio::test]
async fn damaged_or_truncated_archive_is_refused_by_name() {
    let db = demo_db("archbad").await;
    testkit::execute(&db.source, BIG).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("a");
    let a = archive.to_str().unwrap();
    let out = run_async(&dump_args(&db.source, a)).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(archive.join("manifest.json")).unwrap()).unwrap();
    let files: Vec<String> = manifest["tables"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|t| t["files"].as_array().unwrap().clone())
        .map(|f| f["file"]["path"].as_str().unwrap().to_string())
        .collect();
    let target = other_target_db(&db, "never");
    let database_exists = |name: &str| {
        let name = name.to_string();
        let admin = db.target.clone();
        async move {
            testkit::query_scalar(
                &admin,
                &format!("SELECT count(*)::text FROM pg_database WHERE datname = '{name}'"),
            )
            .await
        }
    };
    let never = format!("{}_never", db.name);

    // A flipped byte.
    let damaged = &files[files.len() / 2];
    let saved = std::fs::read(archive.join(damaged)).unwrap();
    corrupt(&archive.join(damaged));
    let out = run_async(&restore_args(&target, a)).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains(damaged.as_str()) && err.contains("damaged"),
        "{err}"
    );
    assert_eq!(database_exists(&never).await, "0", "the target was touched");
    std::fs::write(archive.join(damaged), saved).unwrap();

    // A truncated file.
    let cut = &files[0];
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(archive.join(cut))
        .unwrap();
    let len = f.metadata().unwrap().len();
    f.set_len(len / 2).unwrap();
    drop(f);
    let out = run_async(&restore_args(&target, a)).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains(cut.as_str()) && err.contains("truncated"),
        "{err}"
    );
    assert_eq!(database_exists(&never).await, "0", "the target was touched");

    // No manifest: an unfinished dump.
    std::fs::remove_file(archive.join("manifest.json")).unwrap();
    let out = run_async(&restore_args(&target, a)).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("manifest.json is missing"),
        "{}",
        text(&out.stderr)
    );
}

#[tokio::test]
async fn kill_9_during_dump_and_during_restore_then_resume() {
    let db = demo_db("archkill").await;
    testkit::execute(&db.source, BIG).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("a");
    let a = archive.to_str().unwrap();

    // Dump: kill -9 once a few files are finished.
    let dump = dump_args(&db.source, a);
    let mut child = command(&dump)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let token_path = ResumeToken::path_for(&archive);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let n = ResumeToken::load(&token_path)
            .ok()
            .flatten()
            .map_or(0, |t| t.dumped.len());
        if n >= 3 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no file was dumped");
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let token = ResumeToken::load(&token_path).unwrap().unwrap();
    assert!(!token.completed, "the dump finished before the kill");
    assert!(!archive.join("manifest.json").exists());
    let kept: Vec<(String, String)> = token
        .dumped
        .values()
        .map(|f| (f.file.path.clone(), f.file.sha256.clone()))
        .collect();
    let out = run_async(&[dump.clone(), vec!["--resume", "--json"]].concat()).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let report = common::report_of(&out.stdout);
    assert_eq!(report["resumed"], true);
    assert_eq!(report["files_kept"].as_u64().unwrap() as usize, kept.len());
    // Finished files were kept as they were.
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(archive.join("manifest.json")).unwrap()).unwrap();
    let listed: Vec<(String, String)> = manifest["tables"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|t| t["files"].as_array().unwrap().clone())
        .map(|f| {
            (
                f["file"]["path"].as_str().unwrap().to_string(),
                f["file"]["sha256"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for k in &kept {
        assert!(listed.contains(k), "{k:?} was rewritten or dropped");
    }
    // A finished dump, resumed, is a success that writes nothing.
    let out = run_async(&[dump.clone(), vec!["--resume"]].concat()).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("is already complete"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(
        manifest,
        serde_json::from_slice::<serde_json::Value>(
            &std::fs::read(archive.join("manifest.json")).unwrap()
        )
        .unwrap()
    );

    // Restore: hold back loads into public.big once it exists, kill -9
    // after other files committed, then resume.
    let target = other_target_db(&db, "restored");
    let restore = restore_args(&target, a);
    let mut child = command(&restore)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let blocker = loop {
        if let Ok(c) = testkit::try_client(&target).await {
            if c.batch_execute("BEGIN; LOCK TABLE public.big IN SHARE MODE")
                .await
                .is_ok()
            {
                break c;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "public.big never appeared"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    };
    let rtoken = ResumeToken::restore_path_for(&archive);
    loop {
        let n = ResumeToken::load(&rtoken)
            .ok()
            .flatten()
            .map_or(0, |t| t.copied.len());
        if n >= 3 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no file was restored");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    blocker.batch_execute("COMMIT").await.unwrap();
    drop(blocker);
    let t = ResumeToken::load(&rtoken).unwrap().unwrap();
    assert!(!t.completed);
    assert!(!t.copied.keys().any(|k| k.starts_with("public.big")));
    let out = run_async(&[restore.clone(), vec!["--resume", "--json"]].concat()).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let report = common::report_of(&out.stdout);
    let again: Vec<&str> = report["tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["table"].as_str().unwrap())
        .collect();
    for done in t.copied.keys() {
        assert!(
            !again.contains(&done.as_str()),
            "{done} was loaded again: {again:?}"
        );
    }
    verify_clean(&db.source, &target).await;
    assert_eq!(schema_dump(&db.source), schema_dump(&target));
    // A finished restore, resumed, is a success that loads nothing.
    let out = run_async(&[restore.clone(), vec!["--resume", "--json"]].concat()).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(common::report_of(&out.stdout)["already_complete"], true);
    verify_clean(&db.source, &target).await;
}

#[tokio::test]
async fn data_only_restore_refuses_rows_in_the_way_and_force_clean_replaces_them() {
    let db = demo_db("archdata").await;
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("a");
    let a = archive.to_str().unwrap();
    let out = run_async(&[dump_args(&db.source, a), vec!["--data-only"]].concat()).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        !archive.join("schema").exists(),
        "a data-only dump holds no schema"
    );

    // Into the existing (empty) schema on the target.
    let out = run_async(&restore_args(&db.target, a)).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    verify_clean(&db.source, &db.target).await;

    // Again, with the rows now in the way: refused, and no token written.
    let token = ResumeToken::restore_path_for(&archive);
    std::fs::remove_file(&token).unwrap();
    let before = content_digest(&db.target).await;
    let out = run_async(&restore_args(&db.target, a)).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("already contain rows"),
        "{}",
        text(&out.stderr)
    );
    assert!(!token.exists(), "a refused restore wrote its token");
    assert_eq!(content_digest(&db.target).await, before);

    // --force-clean erases them and loads the archive again.
    let out = run_async(&[restore_args(&db.target, a), vec!["--force-clean"]].concat()).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    verify_clean(&db.source, &db.target).await;
}
