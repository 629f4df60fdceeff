//! `--config FILE` and `PG_DBMIGRATOR_<FLAG>`: flags from a TOML file and
//! from the environment, with the command line winning over the
//! environment and the environment over the file; shell completions and
//! the manual page generated from the CLI definition.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::{command, text};
use pg_dbmigrator::testkit;

fn write_config(dir: &Path, body: &str, mode: u32) -> String {
    let p = dir.join("migration.toml");
    std::fs::write(&p, body).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    p.to_str().unwrap().to_string()
}

/// `status` names the token it looked for: which --dump-path won.
fn status_path(config: &str, env: Option<&str>, cli: Option<&str>) -> String {
    let mut args = vec!["status", "--config", config];
    if let Some(c) = cli {
        args.extend(["--dump-path", c]);
    }
    let mut cmd = command(&args);
    if let Some(e) = env {
        cmd.env("PG_DBMIGRATOR_DUMP_PATH", e);
    }
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    for who in ["from-section", "from-top", "from-env", "from-cli"] {
        if err.contains(&format!("/nonexistent/{who}.resume.json")) {
            return who.to_string();
        }
    }
    panic!("no token path in: {err}");
}

#[test]
fn command_line_beats_environment_beats_file() {
    let dir = tempfile::tempdir().unwrap();
    let top_only = write_config(dir.path(), "dump-path = \"/nonexistent/from-top\"\n", 0o600);
    assert_eq!(status_path(&top_only, None, None), "from-top");
    let cfg = write_config(
        dir.path(),
        "dump_path = \"/nonexistent/from-top\"\n[status]\ndump-path = \"/nonexistent/from-section\"\n",
        0o600,
    );
    assert_eq!(status_path(&cfg, None, None), "from-section");
    assert_eq!(
        status_path(&cfg, Some("/nonexistent/from-env"), None),
        "from-env"
    );
    assert_eq!(
        status_path(
            &cfg,
            Some("/nonexistent/from-env"),
            Some("/nonexistent/from-cli")
        ),
        "from-cli"
    );
}

#[test]
fn unknown_settings_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    for (body, needle) in [
        ("jobz = 4\n", "`jobz`"),
        ("[migrat]\njobs = 4\n", "[migrat]"),
        ("[status]\njobs = 4\n", "`status.jobs`"),
        ("jobs = [\n", "not valid TOML"),
    ] {
        let cfg = write_config(dir.path(), body, 0o600);
        let out = command(&["status", "--config", &cfg, "--dump-path", "/nonexistent/x"])
            .output()
            .unwrap();
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{body}: {err}");
        assert!(err.contains(needle) && err.contains(&cfg), "{body}: {err}");
    }
}

/// Connection strings and flags from the file drive a real command; a file
/// that holds a password and is readable by others gets a warning.
#[tokio::test]
async fn verify_with_everything_in_the_file() {
    let db = testkit::shared_pair().fresh_db("cfgfile").await;
    testkit::execute(
        &db.source,
        "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1), (2)",
    )
    .await
    .unwrap();
    testkit::execute(
        &db.target,
        "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1), (2)",
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let body = format!(
        "source = \"{}\"\ntarget = \"{}\"\n[verify]\njobs = 2\nlevel = \"count\"\nno-large-objects = true\n",
        db.source, db.target
    );
    for (mode, warned) in [(0o600, false), (0o644, true)] {
        let cfg = write_config(dir.path(), &body, mode);
        let out = common::run_async(&["verify", "--config", &cfg]).await;
        let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
        assert_eq!(out.status.code(), Some(0), "{stderr}");
        assert!(stdout.contains("0 differences"), "{stdout}");
        assert_eq!(
            stderr.contains("readable by other users"),
            warned,
            "mode {mode:o}: {stderr}"
        );
        let pw = db
            .source
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix("password="))
            .unwrap();
        assert!(
            !stderr.contains(pw),
            "the warning must not print the password"
        );
    }
}

#[test]
fn completions_and_manual_page_come_from_the_cli_definition() {
    let out = command(&["completions", "bash"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let script = text(&out.stdout);
    for sub in [
        "migrate",
        "cutover",
        "cleanup",
        "unfence",
        "--fix-replica-identity",
    ] {
        assert!(script.contains(sub), "completion lacks {sub}");
    }
    let out = command(&["man"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let man = text(&out.stdout);
    assert!(man.contains(".TH pg_dbmigrator"), "{man}");
    assert!(man.contains("migrate"), "{man}");
}

/// `--progress always` draws the live line on stderr (cleared before the
/// report); without a terminal the default writes no escape codes at all.
#[tokio::test]
async fn progress_line_only_when_asked_or_on_a_terminal() {
    let db = common::demo_db("progress").await;
    let dir = tempfile::tempdir().unwrap();
    let mut args = common::migrate_args(&db, dir.path().join("a").to_str().unwrap());
    args.extend(["--progress", "always"].map(String::from));
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = common::run_async(&a).await;
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains("\r\x1b[2K["),
        "no progress line drawn: {err:?}"
    );
    // Log records are whole lines between redraws, and the line is gone at
    // the end (what follows the last clear is nothing or a whole record).
    // A display of several lines (a worker line under the status) is
    // cleared line by line upwards: "\r ESC[2K" then "ESC[1A ESC[2K" each.
    let tail = err.rsplit("\r\x1b[2K").next().unwrap();
    let tail = tail.trim_start_matches("\x1b[1A\x1b[2K");
    assert!(
        tail.is_empty() || tail.ends_with('\n'),
        "the line was left: {err:?}"
    );

    // Default, stderr not a terminal: plain log lines.
    let db = common::demo_db("progress_auto").await;
    let args = common::migrate_args(&db, dir.path().join("b").to_str().unwrap());
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = common::run_async(&a).await;
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        !err.contains('\x1b'),
        "escape codes without a terminal: {err:?}"
    );
}

/// `migrate --json` writes NDJSON events under the documented schema:
/// every stage started and finished, each copied table, and the report last.
#[tokio::test]
async fn json_events_of_an_offline_run() {
    let db = common::demo_db("events").await;
    let dir = tempfile::tempdir().unwrap();
    let mut args = common::migrate_args(&db, dir.path().join("w").to_str().unwrap());
    args.push("--json".into());
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = common::run_async(&a).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let events = common::check_events(&out.stdout);
    let report = common::report_of(&out.stdout);
    let copied = events
        .iter()
        .filter(|e| e["event"] == "item_copied")
        .count();
    assert_eq!(
        copied,
        report["tables"].as_array().unwrap().len(),
        "{events:#?}"
    );
}

/// `/metrics` during an offline copy: one table held back by a lock on the
/// target, the counters show the rest; once it is released, they grow.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_grow_during_the_copy() {
    let db = common::demo_db("metrics_copy").await;
    let blocker = common::block_copies_into(&db, "shop.documents").await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("m.log");
    let mut args = common::migrate_args(&db, dir.path().join("w").to_str().unwrap());
    args.extend(["--http", "127.0.0.1:0"].map(String::from));
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut child = common::command(&a)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let scrape = |addr: &str| common::http_get(addr, "/metrics").1;
    let value = common::metric;
    // Wait for the address, then for every table but the blocked one.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let (addr, before) = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(addr) = text
            .split("metrics=http://")
            .nth(1)
            .and_then(|s| s.split('/').next())
        {
            let m = scrape(addr);
            let total = value(&m, "items_total");
            if total > 0.0 && value(&m, "items_done") == total - 1.0 {
                break (addr.to_string(), m);
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "copy never got there: {text}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert!(
        before.contains("pg_dbmigrator_stage{stage=\"copy_data\"} 1"),
        "{before}"
    );
    // Let the blocked table go, and hold the run after its copy (a lock on
    // a table already copied stops the steps after the copy) so the grown
    // counters can be read before the process ends.
    blocker
        .batch_execute("COMMIT; BEGIN; LOCK TABLE shop.customers IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let after = loop {
        let m = scrape(&addr);
        if value(&m, "items_done") == value(&m, "items_total") {
            break m;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the copy did not finish: {m}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    // A small table's COPY data is sent without waiting for the target
    // to take it (the pipelined copy), so the blocked table's bytes may
    // already count as moved before it was let go; its heap counts as
    // done only once its transaction committed.
    assert!(value(&before, "bytes_copied") > 0.0, "{before}");
    assert!(value(&after, "bytes_copied") >= value(&before, "bytes_copied"));
    assert!(value(&after, "heap_bytes_done") > value(&before, "heap_bytes_done"));
    blocker.batch_execute("COMMIT").await.unwrap();
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(
        status.success(),
        "{}",
        std::fs::read_to_string(&log).unwrap()
    );
}
