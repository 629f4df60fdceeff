//! Each `ErrorKind` from a real failure, through the library as an embedder
//! calls it: a bad connection string, a wrong password, a port nobody
//! listens on, a target that is not empty, and a CHECK violation on the
//! target. Each is classified, and only the connection fault is retryable.

use pg_dbmigrator::testkit;
use pg_dbmigrator::{EndpointConfig, ErrorKind, MigrationConfig, MigrationError, Migrator, Remedy};
use tokio_postgres::error::SqlState;
use tokio_util::sync::CancellationToken;

async fn run(source: EndpointConfig, target: EndpointConfig, data_only: bool) -> MigrationError {
    let work = tempfile::tempdir().unwrap();
    let config = MigrationConfig {
        source: Some(source),
        target: Some(target),
        data_only,
        jobs: 2,
        dump_path: Some(work.path().join("m")),
        ..Default::default()
    };
    Migrator::new(config)
        .run(CancellationToken::new())
        .await
        .expect_err("the run must fail")
}

fn ep(conninfo: &str) -> EndpointConfig {
    EndpointConfig::parse(conninfo).unwrap()
}

#[test]
fn a_malformed_connection_string_is_a_configuration_error() {
    let e = EndpointConfig::parse("host=localhost port=notaport").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Configuration, "{e}");
    assert!(!e.is_retryable());
}

#[tokio::test]
async fn a_wrong_password_is_authentication_and_not_retryable() {
    let db = testkit::shared_pair().fresh_db("ek_auth").await;
    let mut source = ep(&db.source);
    source.password = Some(pg_dbmigrator::config::Secret::new("not-the-password"));
    // Over TCP: the test servers ask for a password there.
    let e = run(source, ep(&db.target), false).await;
    assert_eq!(e.kind(), ErrorKind::Authentication, "{e}");
    assert_eq!(e.sql_state(), Some(SqlState::INVALID_PASSWORD), "{e}");
    assert!(!e.is_retryable(), "{e}");
}

#[tokio::test]
async fn an_unreachable_port_is_a_retryable_connection_error() {
    let db = testkit::shared_pair().fresh_db("ek_port").await;
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let e = run(
        ep(&format!(
            "host=127.0.0.1 port={port} user=postgres dbname=x connect_timeout=2"
        )),
        ep(&db.target),
        false,
    )
    .await;
    assert_eq!(e.kind(), ErrorKind::Connection, "{e}");
    assert!(e.is_retryable(), "{e}");
}

#[tokio::test]
async fn a_target_that_is_not_empty_is_target_not_ready() {
    let db = testkit::shared_pair().fresh_db("ek_nonempty").await;
    testkit::execute(&db.source, "CREATE TABLE t (id int PRIMARY KEY)")
        .await
        .unwrap();
    testkit::execute(&db.target, "CREATE TABLE already_here (id int)")
        .await
        .unwrap();
    let e = run(ep(&db.source), ep(&db.target), false).await;
    assert_eq!(e.kind(), ErrorKind::TargetNotReady, "{e}");
    assert!(!e.is_retryable());
    // The way out is typed, and the message words it for a library
    // caller (the configuration field), not as the CLI's flag.
    assert_eq!(e.remedies(), [Remedy::ForceClean], "{e}");
    let text = e.to_string();
    assert!(
        text.contains("`force_clean`") && !text.contains("--force-clean"),
        "{text}"
    );
}

#[tokio::test]
async fn a_check_violation_on_the_target_is_data_with_its_sqlstate() {
    let db = testkit::shared_pair().fresh_db("ek_check").await;
    testkit::execute(
        &db.source,
        "CREATE TABLE t (id int PRIMARY KEY, v int); INSERT INTO t SELECT g, g FROM generate_series(1, 100) g",
    )
    .await
    .unwrap();
    testkit::execute(
        &db.target,
        "CREATE TABLE t (id int PRIMARY KEY, v int CHECK (v < 50))",
    )
    .await
    .unwrap();
    let e = run(ep(&db.source), ep(&db.target), true).await;
    assert_eq!(e.kind(), ErrorKind::Data, "{e}");
    assert_eq!(e.sql_state(), Some(SqlState::CHECK_VIOLATION), "{e}");
    assert!(!e.is_retryable());
}
