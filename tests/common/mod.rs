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

/// A fresh database pair with the rich fixture: schema on both sides, data on the source.
pub async fn rich_db(prefix: &str) -> TestDb {
    let db = testkit::shared_pair().fresh_db(prefix).await;
    let schema = fixture("rich_schema.sql");
    testkit::execute(&db.source, &schema)
        .await
        .expect("rich schema on source");
    testkit::execute(&db.target, &schema)
        .await
        .expect("rich schema on target");
    testkit::execute(&db.source, &fixture("rich_data.sql"))
        .await
        .expect("rich data on source");
    db
}

/// A fresh database pair with the demo fixture.
pub async fn demo_db(prefix: &str) -> TestDb {
    let db = testkit::shared_pair().fresh_db(prefix).await;
    let schema = fixture("demo_schema.sql");
    testkit::execute(&db.source, &schema)
        .await
        .expect("demo schema on source");
    testkit::execute(&db.target, &schema)
        .await
        .expect("demo schema on target");
    testkit::execute(&db.source, &fixture("demo_data.sql"))
        .await
        .expect("demo data on source");
    db
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
    c
}

pub fn run(args: &[&str]) -> Output {
    command(args).output().expect("running pg_dbmigrator")
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
