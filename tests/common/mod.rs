//! Shared helpers for the integration tests: fixtures, running the binary,
//! reading the target. The servers come from `pg_dbmigrator::testkit`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use pg_dbmigrator::testkit::{self, TestDb};

pub fn fixture(name: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}

/// A fresh database pair loaded with `fixtures/<name>_schema.sql` on both
/// sides and `fixtures/<name>_data.sql` on the source (two separate calls:
/// see fixtures/README.md).
pub async fn fixture_db(prefix: &str, name: &str) -> TestDb {
    let db = testkit::shared_pair().fresh_db(prefix).await;
    let schema = fixture(&format!("{name}_schema.sql"));
    for side in [&db.source, &db.target] {
        testkit::execute(side, &schema)
            .await
            .unwrap_or_else(|e| panic!("{name} schema: {e}"));
    }
    testkit::execute(&db.source, &fixture(&format!("{name}_data.sql")))
        .await
        .unwrap_or_else(|e| panic!("{name} data: {e}"));
    db
}

/// The rich fixture: every type and shape a copier gets wrong.
pub async fn rich_db(prefix: &str) -> TestDb {
    fixture_db(prefix, "rich").await
}

/// The small demo shop.
pub async fn demo_db(prefix: &str) -> TestDb {
    fixture_db(prefix, "demo").await
}

/// Run `ddl` on both sides, then `rows` on the source.
pub async fn add_table(db: &TestDb, ddl: &str, rows: &str) {
    testkit::execute(&db.source, ddl).await.unwrap();
    testkit::execute(&db.target, ddl).await.unwrap();
    testkit::execute(&db.source, rows).await.unwrap();
}

/// Hold a SHARE lock on a target table: reads go through, but COPY into it
/// waits until the returned session commits. Makes "mid-copy" deterministic.
pub async fn block_copies_into(db: &TestDb, table: &str) -> tokio_postgres::Client {
    let blocker = testkit::client(&db.target).await;
    blocker
        .batch_execute(&format!("BEGIN; LOCK TABLE {table} IN SHARE MODE"))
        .await
        .unwrap();
    blocker
}

/// Poll the resume token until at least `n` tables are recorded as copied.
pub async fn wait_for_copied(token_path: &Path, n: usize) -> pg_dbmigrator::ResumeToken {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        if let Ok(Some(t)) = pg_dbmigrator::ResumeToken::load(token_path) {
            if t.copied.len() >= n {
                return t;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "copy did not reach {n} tables"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// `migrate --data-only --jobs 2 --dump-path <dump>` arguments for a test database.
pub fn migrate_args(db: &TestDb, dump: &str) -> Vec<String> {
    [
        "migrate",
        "--source",
        &db.source,
        "--target",
        &db.target,
        "--data-only",
        "--jobs",
        "2",
        "--dump-path",
        dump,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_pg_dbmigrator"))
}

/// The binary with a scrubbed environment: no PostgreSQL client program is
/// reachable, and no PG* variable leaks in from the developer's shell.
pub fn command(args: &[&str]) -> Command {
    let mut c = Command::new(bin());
    c.env_clear()
        .env("PATH", "/nonexistent")
        .env("HOME", std::env::temp_dir())
        .env("TMPDIR", std::env::temp_dir())
        .args(args);
    // The one variable let through: a developer's log filter, to look
    // inside a test's run (never set in CI).
    if let Ok(filter) = std::env::var("PG_DBMIGRATOR_LOG") {
        c.env("PG_DBMIGRATOR_LOG", filter);
    }
    c
}

pub fn run(args: &[&str]) -> Output {
    command(args).output().expect("running pg_dbmigrator")
}

/// Run the binary off the test's runtime thread, so the runtime keeps
/// driving (and closing) the test's own connections meanwhile.
pub async fn run_async(args: &[&str]) -> Output {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        run(&a)
    })
    .await
    .expect("running pg_dbmigrator")
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// An order-independent digest of every table's rows in a database, computed
/// by a query path independent of the tool's own verify.
pub async fn content_digest(conninfo: &str) -> Vec<(String, i64, String)> {
    let c = testkit::client(conninfo).await;
    c.batch_execute(
        "SET DateStyle = ISO; SET TimeZone = 'UTC'; SET extra_float_digits = 3; SET IntervalStyle = postgres; SET bytea_output = hex",
    )
    .await
    .unwrap();
    let tables = c
        .query(
            "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema', '_pg_dbmigrator')
                AND n.nspname NOT LIKE 'pg_toast%' ORDER BY 1",
            &[],
        )
        .await
        .unwrap();
    let mut out = Vec::new();
    for t in tables {
        let name: String = t.get(0);
        let r = c
            .query_one(
                &format!("SELECT count(*), coalesce(md5(string_agg(x::text, E'\\n' ORDER BY x::text)), '') FROM ONLY {name} x"),
                &[],
            )
            .await
            .unwrap();
        out.push((name, r.get(0), r.get(1)));
    }
    out
}

/// Each sequence's state (`last_value is_called`), by name.
pub async fn sequences(ci: &str) -> Vec<(String, String)> {
    let c = testkit::client(ci).await;
    let mut out = Vec::new();
    for r in c
        .query(
            "SELECT format('%I.%I', schemaname, sequencename) FROM pg_sequences ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
    {
        let name: String = r.get(0);
        let state = c
            .query_one(
                &format!("SELECT last_value::text || ' ' || is_called::text FROM {name}"),
                &[],
            )
            .await
            .unwrap();
        out.push((name, state.get(0)));
    }
    out
}

/// `pg_dump --schema-only` with a fixed restrict key, by the installed
/// server's pg_dump (the oracle for schema fidelity), minus the header line
/// naming the server version (it differs between majors by design).
pub fn schema_dump(conninfo: &str) -> String {
    schema_dump_with(conninfo, &[])
}

/// [`schema_dump`] with more pg_dump options (`-n app`, say).
pub fn schema_dump_with(conninfo: &str, extra: &[&str]) -> String {
    let bin = testkit::find_bin_dir()
        .expect("server binaries")
        .join("pg_dump");
    let out = std::process::Command::new(bin)
        .args(["--schema-only", "--restrict-key=pgdbmtest", "-d", conninfo])
        .args(extra)
        .output()
        .expect("running pg_dump");
    assert!(
        out.status.success(),
        "pg_dump failed: {}",
        text(&out.stderr)
    );
    text(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with("-- Dumped from database version"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The neighbourhood of the first differing line of two dumps.
/// `pg_dump --schema-only` of both databases is the same, or a hint of
/// where it differs.
pub fn assert_same_schema(source: &str, target: &str) {
    let (a, b) = (schema_dump(source), schema_dump(target));
    assert!(
        a == b,
        "pg_dump -s of source and target differ: {}",
        diff_hint(&a, &b)
    );
}

pub fn diff_hint(a: &str, b: &str) -> String {
    let (al, bl): (Vec<&str>, Vec<&str>) = (a.lines().collect(), b.lines().collect());
    match al.iter().zip(&bl).position(|(x, y)| x != y) {
        Some(i) => format!(
            "line {i}:\n--- source\n{}\n--- target\n{}",
            al[i.saturating_sub(8)..(i + 8).min(al.len())].join("\n"),
            bl[i.saturating_sub(8)..(i + 8).min(bl.len())].join("\n")
        ),
        None => format!("lengths differ: {} vs {} lines", al.len(), bl.len()),
    }
}

/// The connection string of another (possibly not yet existing) database on
/// the target server of `db`: full migrations create their target database.
pub fn other_target_db(db: &TestDb, suffix: &str) -> String {
    let ci = db.target.replace(
        &format!("dbname={}", db.name),
        &format!("dbname={}_{suffix}", db.name),
    );
    assert_ne!(ci, db.target, "conninfo shape changed; fix the test helper");
    ci
}

/// `migrate` from `source` to `target` with work files under a temp dir.
pub async fn run_migrate(source: &str, target: &str, extra: &[&str]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let dump = dir.path().join("w");
    let mut args = vec![
        "migrate",
        "--source",
        source,
        "--target",
        target,
        "--dump-path",
        dump.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    run_async(&args).await
}

/// A migration from `source` to `target` expected to be refused with exit
/// 2 before anything is created; returns its stderr.
pub async fn migrate_refused(source: &str, target: &str, extra: &[&str]) -> String {
    let out = run_migrate(source, target, extra).await;
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    err
}

/// `migrate --json` from `source` to `target` (work files under a temp dir),
/// which must succeed with a clean verify; returns the report.
pub async fn migrate_clean(source: &str, target: &str, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["--json"];
    args.extend_from_slice(extra);
    let out = run_migrate(source, target, &args).await;
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    let report = report_of(&out.stdout);
    assert_eq!(
        report["verify"]["differences"].as_array().unwrap().len(),
        0,
        "{report:#}"
    );
    report
}

/// Every event of `migrate --json`, checked against the schema: each has
/// `schema`, `ts` and `event`, and every stage of the report was started
/// and finished, in order, before the summary.
pub fn check_events(stdout: &[u8]) -> Vec<serde_json::Value> {
    let text = String::from_utf8_lossy(stdout);
    let events: Vec<serde_json::Value> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let known = [
        "stage_started",
        "stage_finished",
        "item_copied",
        "progress",
        "lag",
        "cutover_started",
        "cutover_finished",
        "cutover_failed",
        "throttled",
        "unthrottled",
        "warning",
        "error",
        "summary",
    ];
    for e in &events {
        assert_eq!(e["schema"], "pg_dbmigrator.events/1", "{e}");
        assert!(
            chrono::DateTime::parse_from_rfc3339(e["ts"].as_str().unwrap()).is_ok(),
            "{e}"
        );
        assert!(
            known.contains(&e["event"].as_str().unwrap()),
            "unknown event: {e}"
        );
    }
    let report = report_of(stdout);
    for st in report["stages"].as_array().unwrap() {
        let name = st[0].as_str().unwrap();
        for kind in ["stage_started", "stage_finished"] {
            assert!(
                events
                    .iter()
                    .any(|e| e["event"] == kind && e["stage"] == name),
                "no {kind} event for stage {name}: {text}"
            );
        }
    }
    events
}

/// The report of `migrate --json`: its stdout is NDJSON events (schema
/// `pg_dbmigrator.events/1`), the last one `summary` with the report.
pub fn report_of(stdout: &[u8]) -> serde_json::Value {
    let text = String::from_utf8_lossy(stdout);
    let mut events = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let e: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|err| panic!("not an NDJSON event ({err}): {line}"));
        assert_eq!(e["schema"], "pg_dbmigrator.events/1", "{line}");
        assert!(e["ts"].is_string() && e["event"].is_string(), "{line}");
        events.push(e);
    }
    let last = events
        .pop()
        .unwrap_or_else(|| panic!("no events on stdout"));
    assert_eq!(
        last["event"], "summary",
        "the last event must be the summary: {last}"
    );
    last["report"].clone()
}

/// GET over a plain TCP connection (the `--http` listener): (status line, body).
pub fn http_get(addr: &str, path: &str) -> (String, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let (head, body) = resp.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_string(), body.to_string())
}

/// POST with an optional `X-Cutover-Token`: (status line, body).
pub fn http_post(addr: &str, path: &str, token: Option<&str>) -> (String, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let header = token.map_or(String::new(), |t| format!("X-Cutover-Token: {t}\r\n"));
    s.write_all(
        format!("POST {path} HTTP/1.1\r\nHost: {addr}\r\n{header}Content-Length: 0\r\n\r\n")
            .as_bytes(),
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let (head, body) = resp.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_string(), body.to_string())
}

/// A value of `pg_dbmigrator_<name>` in Prometheus text.
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("pg_dbmigrator_{name} ")))
        .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
        .parse()
        .unwrap()
}

/// A session writing to `online_extra` (created here) on `source` until the
/// fence ends it; returns the task and how many transactions it committed.
pub async fn fence_ended_writer(
    source: &str,
) -> (
    tokio::task::JoinHandle<()>,
    std::sync::Arc<std::sync::atomic::AtomicU64>,
) {
    use std::sync::atomic::{AtomicU64, Ordering};
    testkit::execute(
        source,
        "CREATE TABLE public.online_extra (id bigserial PRIMARY KEY, v text, n int NOT NULL DEFAULT 0)",
    )
    .await
    .unwrap();
    let written = std::sync::Arc::new(AtomicU64::new(0));
    let task = tokio::spawn({
        let (source, written) = (source.to_string(), written.clone());
        async move {
            let c = testkit::client(&source).await;
            for i in 1u64.. {
                let sql = format!(
                    "INSERT INTO public.online_extra (v) VALUES ('row {i}'); UPDATE public.online_extra SET n = n + 1 WHERE id = {}",
                    1 + i / 2
                );
                if c.batch_execute(&sql).await.is_err() {
                    return;
                }
                written.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        }
    });
    (task, written)
}

/// Whether a database of this name exists on the shared target server.
pub async fn target_database_exists(name: &str) -> bool {
    let n = testkit::query_scalar(
        &testkit::shared_pair().target.admin_conninfo(),
        &format!(
            "SELECT count(*) FROM pg_database WHERE datname = {}",
            pg_dbmigrator::pg::quote::literal(name)
        ),
    )
    .await;
    n != "0"
}

/// The application-shaped fixture (fixtures/app_*.sql) on a source.
pub async fn load_app_fixture(conninfo: &str) {
    testkit::execute(conninfo, &fixture("app_schema.sql"))
        .await
        .expect("app schema");
    testkit::execute(conninfo, &fixture("app_data.sql"))
        .await
        .expect("app data");
}

/// `dump` of `source` (with `dump_extra`) into a fresh archive, then
/// `restore` of it into `target` (with `restore_extra`); both must succeed.
pub async fn dump_and_restore(
    source: &str,
    target: &str,
    dump_extra: &[&str],
    restore_extra: &[&str],
) {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("archive");
    let archive = archive.to_str().unwrap();
    let mut args = vec!["dump", "--source", source, "--dump-path", archive];
    args.extend_from_slice(dump_extra);
    let out = run_async(&args).await;
    assert_eq!(out.status.code(), Some(0), "dump: {}", text(&out.stderr));
    let mut args = vec!["restore", "--target", target, "--dump-path", archive];
    args.extend_from_slice(restore_extra);
    let out = run_async(&args).await;
    assert_eq!(out.status.code(), Some(0), "restore: {}", text(&out.stderr));
}

/// `pg_dumpall --globals-only` of the server at `conninfo`.
pub fn pg_dumpall_globals(conninfo: &str) -> String {
    let bin = testkit::find_bin_dir()
        .expect("server binaries")
        .join("pg_dumpall");
    let out = std::process::Command::new(bin)
        .args(["--globals-only", "--restrict-key=pgdbmtest", "-d", conninfo])
        .output()
        .expect("running pg_dumpall");
    assert!(
        out.status.success(),
        "pg_dumpall failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The dump without the bootstrap superuser's own lines, with the
/// tablespace location (mapped on purpose) blanked.
pub fn normalized_globals(dump: &str) -> String {
    dump.lines()
        .filter(|l| {
            !l.starts_with("CREATE ROLE postgres;") && !l.starts_with("ALTER ROLE postgres ")
        })
        .map(|l| match l.find(" LOCATION '") {
            Some(i) => format!("{} LOCATION <mapped>;", &l[..i]),
            None => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

pub fn line_diff(a: &str, b: &str) -> String {
    let al: Vec<&str> = a.lines().collect();
    let bl: Vec<&str> = b.lines().collect();
    let mut out = String::new();
    for l in &al {
        if !bl.contains(l) {
            out.push_str(&format!("- {l}\n"));
        }
    }
    for l in &bl {
        if !al.contains(l) {
            out.push_str(&format!("+ {l}\n"));
        }
    }
    if out.is_empty() {
        out = "(same lines, other order)".into();
    }
    out
}

/// Make the target ask every TCP login for a password, MD5 or SCRAM
/// (`md5` in pg_hba.conf accepts both, as the stored hash says), so a
/// role whose hash was not carried cannot log in.
pub async fn require_passwords(cluster: &testkit::Cluster) {
    std::fs::write(
        cluster.data_dir.join("pg_hba.conf"),
        "local all all trust\nlocal replication all trust\nhost all all 127.0.0.1/32 md5\n",
    )
    .unwrap();
    testkit::execute(&cluster.conninfo("postgres"), "SELECT pg_reload_conf()")
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
}

pub async fn login(cluster: &testkit::Cluster, user: &str, password: &str) -> Result<(), String> {
    let ci = format!(
        "host=127.0.0.1 port={} user={} password={} dbname=postgres sslmode=disable",
        cluster.port,
        testkit::conninfo_quote(user),
        testkit::conninfo_quote(password)
    );
    testkit::try_client(&ci)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}
