//! The schema engine against pg_dump as the oracle: rebuild a source schema
//! on an empty target from the catalogs, then `pg_dump --schema-only` of
//! both must be identical.

mod common;

use std::process::Command;

use common::*;
use pg_dbmigrator::testkit;
use pg_dbmigrator::EndpointConfig;

/// `pg_dump --schema-only` with a fixed restrict key, from the server's own bin dir.
fn schema_dump(conninfo: &str) -> String {
    let bin = testkit::find_bin_dir()
        .expect("server binaries")
        .join("pg_dump");
    let out = Command::new(bin)
        .args(["--schema-only", "--restrict-key=pgdbmtest", "-d", conninfo])
        .output()
        .expect("running pg_dump");
    assert!(
        out.status.success(),
        "pg_dump failed: {}",
        text(&out.stderr)
    );
    text(&out.stdout)
}

fn first_difference(a: &str, b: &str) -> String {
    let (al, bl): (Vec<&str>, Vec<&str>) = (a.lines().collect(), b.lines().collect());
    for (i, (x, y)) in al.iter().zip(bl.iter()).enumerate() {
        if x != y {
            let from = i.saturating_sub(8);
            return format!(
                "line {i}:\n--- source\n{}\n--- target\n{}",
                al[from..(i + 8).min(al.len())].join("\n"),
                bl[from..(i + 8).min(bl.len())].join("\n")
            );
        }
    }
    format!("lengths differ: {} vs {} lines", al.len(), bl.len())
}

async fn assert_rebuilds(prefix: &str, sql: &str) {
    let db = testkit::shared_pair().fresh_db(prefix).await;
    testkit::execute(&db.source, sql)
        .await
        .expect("loading the schema on the source");
    let source = EndpointConfig::parse(&db.source).unwrap();
    let target = EndpointConfig::parse(&db.target).unwrap();
    let script = pg_dbmigrator::schema::read(&source, None)
        .await
        .expect("reading the schema");
    assert!(script.warnings.is_empty(), "{:?}", script.warnings);
    pg_dbmigrator::schema::apply_all(&target, &script)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "applying: {e}\n{}",
                script.to_sql(&[
                    pg_dbmigrator::schema::Part::PreData,
                    pg_dbmigrator::schema::Part::PostData
                ])
            )
        });
    let (a, b) = (schema_dump(&db.source), schema_dump(&db.target));
    assert!(a == b, "schema dumps differ: {}", first_difference(&a, &b));
}

#[tokio::test]
async fn demo_schema_rebuilds_identically() {
    assert_rebuilds("sch_demo", &fixture("demo_schema.sql")).await;
}

#[tokio::test]
async fn core_schema_rebuilds_identically() {
    assert_rebuilds("sch_core", &fixture("schema_core.sql")).await;
}

/// The CLI prints the DDL; applied by psql (as a DBA would) it gives the same schema.
#[tokio::test]
async fn schema_command_output_applies_with_psql() {
    let db = testkit::shared_pair().fresh_db("sch_cli").await;
    testkit::execute(&db.source, &fixture("schema_core.sql"))
        .await
        .unwrap();
    let out = run(&["-q", "schema", "--source", &db.source]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let sql = text(&out.stdout);
    assert!(sql.contains("CREATE TABLE core.customers"), "{sql}");
    let psql = testkit::find_bin_dir().unwrap().join("psql");
    let applied = Command::new(psql)
        .args([
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            &db.target,
            "-c",
            &sql,
        ])
        .output()
        .unwrap();
    assert!(applied.status.success(), "psql: {}", text(&applied.stderr));
    let (a, b) = (schema_dump(&db.source), schema_dump(&db.target));
    assert!(a == b, "schema dumps differ: {}", first_difference(&a, &b));

    // --section pre-data has no indexes; post-data has no CREATE TABLE.
    let pre = text(
        &run(&[
            "-q",
            "schema",
            "--source",
            &db.source,
            "--section",
            "pre-data",
        ])
        .stdout,
    );
    let post = text(
        &run(&[
            "-q",
            "schema",
            "--source",
            &db.source,
            "--section",
            "post-data",
        ])
        .stdout,
    );
    assert!(pre.contains("CREATE TABLE") && !pre.contains("CREATE INDEX"));
    assert!(post.contains("CREATE INDEX") && !post.contains("CREATE TABLE"));
}
