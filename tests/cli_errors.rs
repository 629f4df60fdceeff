//! Bad input gets one clear line on stderr, exit code 2, within the timeout,
//! and never shows a password. Passwords with awkward characters work.

mod common;

use std::time::{Duration, Instant};

use common::*;
use pg_dbmigrator::testkit;

fn assert_one_line_exit_2(out: &std::process::Output, needle: &str) {
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {err}");
    assert_eq!(
        err.trim().lines().count(),
        1,
        "expected one line, got: {err}"
    );
    assert!(
        err.to_lowercase().contains(&needle.to_lowercase()),
        "expected {needle:?} in: {err}"
    );
    assert!(
        text(&out.stdout).is_empty(),
        "stdout must stay empty on errors"
    );
}

#[tokio::test]
async fn malformed_conninfo() {
    let db = testkit::shared_pair().fresh_db("malformed").await;
    let out = run(&[
        "-q",
        "migrate",
        "--data-only",
        "--source",
        "postgresql://u:s3cr3t@host:notaport/db",
        "--target",
        &db.target,
    ]);
    assert_one_line_exit_2(&out, "port");
    assert!(!text(&out.stderr).contains("s3cr3t"));
    let out = run(&[
        "-q",
        "migrate",
        "--data-only",
        "--source",
        "host=x password='s3cr3t",
        "--target",
        &db.target,
    ]);
    assert_one_line_exit_2(&out, "--source");
    assert!(!text(&out.stderr).contains("s3cr3t"));
    let out = run(&[
        "-q",
        "migrate",
        "--data-only",
        "--source",
        "host=x bogus_key=1",
        "--target",
        &db.target,
    ]);
    assert_one_line_exit_2(&out, "bogus_key");
}

#[tokio::test]
async fn unreachable_host_is_quick_and_clear() {
    let db = testkit::shared_pair().fresh_db("unreach").await;
    // A closed port.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let started = Instant::now();
    let src = format!(
        "host=127.0.0.1 port={port} user=postgres dbname=x password=s3cr3t connect_timeout=3"
    );
    let out = run(&[
        "-q",
        "migrate",
        "--data-only",
        "--source",
        &src,
        "--target",
        &db.target,
    ]);
    assert_one_line_exit_2(&out, "source");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(!text(&out.stderr).contains("s3cr3t"));

    // A server that accepts and never answers: bounded by connect_timeout.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let hold = std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in listener.incoming().take(4) {
            held.push(s);
        }
        std::thread::sleep(Duration::from_secs(20));
    });
    let src = format!(
        "postgresql://postgres:s3cr3t@127.0.0.1:{port}/x?connect_timeout=2&sslmode=disable"
    );
    let started = Instant::now();
    let out = run(&[
        "-q",
        "migrate",
        "--data-only",
        "--source",
        &src,
        "--target",
        &db.target,
    ]);
    assert_one_line_exit_2(&out, "timed out");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "took {:?}",
        started.elapsed()
    );
    assert!(!text(&out.stderr).contains("s3cr3t"));
    drop(hold);
}

#[tokio::test]
async fn wrong_password() {
    let db = testkit::shared_pair().fresh_db("wrongpw").await;
    let bad = format!("{} password=definitely-wrong-pw", db.source);
    let out = run(&[
        "-q",
        "migrate",
        "--data-only",
        "--source",
        &bad,
        "--target",
        &db.target,
    ]);
    assert_one_line_exit_2(&out, "password authentication failed");
    assert!(!text(&out.stderr).contains("definitely-wrong-pw"));
}

/// A password with `@`, `%`, `:` and spaces works in both forms and is never printed.
#[tokio::test]
async fn awkward_password_works_and_never_shows() {
    let db = demo_db("pw").await;
    let pw = "p@ss:w%rd with spaces";
    testkit::execute(
        &db.source,
        &format!(
            "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'dbm_pw_user') THEN CREATE ROLE dbm_pw_user LOGIN SUPERUSER; END IF; END $$;
             ALTER ROLE dbm_pw_user PASSWORD '{pw}'"
        ),
    )
    .await
    .unwrap();
    testkit::execute(
        &db.target,
        &format!(
            "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'dbm_pw_user') THEN CREATE ROLE dbm_pw_user LOGIN SUPERUSER; END IF; END $$;
             ALTER ROLE dbm_pw_user PASSWORD '{pw}'"
        ),
    )
    .await
    .unwrap();
    let src_ep = pg_dbmigrator::EndpointConfig::parse(&db.source).unwrap();
    let dst_ep = pg_dbmigrator::EndpointConfig::parse(&db.target).unwrap();
    let hostport = |e: &pg_dbmigrator::EndpointConfig| (e.hosts[0].to_string(), e.ports[0]);
    let (sh, sp) = hostport(&src_ep);
    let (th, tp) = hostport(&dst_ep);
    let encoded = "p%40ss%3Aw%25rd%20with%20spaces";
    let uri = format!(
        "postgresql://dbm_pw_user:{encoded}@{sh}:{sp}/{}?sslmode=disable",
        db.name
    );
    let kv = format!(
        "host={th} port={tp} user=dbm_pw_user dbname={} password='{pw}' sslmode=disable",
        db.name
    );
    let dir = tempfile::tempdir().unwrap();
    let dump = dir.path().join("w");
    let out = run(&[
        "-vv",
        "migrate",
        "--data-only",
        "--source",
        &uri,
        "--target",
        &kv,
        "--dump-path",
        dump.to_str().unwrap(),
    ]);
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{all}");
    let token = std::fs::read_to_string(pg_dbmigrator::ResumeToken::path_for(&dump)).unwrap();
    for needle in [pw, encoded, "w%rd", "p@ss"] {
        assert!(!all.contains(needle), "password leaked in output: {needle}");
        assert!(
            !token.contains(needle),
            "password leaked in token: {needle}"
        );
    }
    // And a wrong one through the same route: the message names the user, not the password.
    let bad = uri.replace("spaces", "spaceX");
    let out = run(&["-q", "verify", "--source", &bad, "--target", &kv]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("dbm_pw_user") && !err.contains("p@ss") && !err.contains("spaceX"),
        "{err}"
    );
    // Debug and Display of the parsed endpoint hide it too.
    let ep = pg_dbmigrator::EndpointConfig::parse(&kv).unwrap();
    assert!(!format!("{ep:?} {ep}").contains("p@ss"));
}

/// The same database spelt twice (TCP and Unix socket) is refused before
/// anything, with and without --force-clean: the source keeps its rows and
/// no bookkeeping schema appears on it.
#[tokio::test]
async fn same_database_under_two_spellings_is_refused() {
    let pair = testkit::shared_pair();
    let db = pair.fresh_db("same_db").await;
    testkit::execute(
        &db.source,
        "CREATE TABLE keep (id int PRIMARY KEY); INSERT INTO keep SELECT generate_series(1, 10)",
    )
    .await
    .unwrap();
    let Some(socket) = pair.source.socket_conninfo(&db.name) else {
        return; // an external server: no second spelling to try
    };
    for extra in [&[][..], &["--force-clean"][..], &["--data-only"][..]] {
        let dump = tempfile::tempdir().unwrap();
        let mut args = vec![
            "-q",
            "migrate",
            "--source",
            &db.source,
            "--target",
            &socket,
            "--dump-path",
            dump.path().to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let out = run(&args);
        assert_one_line_exit_2(&out, "same database");
        let n = testkit::query_scalar(&db.source, "SELECT count(*) FROM keep").await;
        assert_eq!(n, "10", "{extra:?}: the source lost rows");
        let state = testkit::query_scalar(
            &db.source,
            "SELECT count(*) FROM pg_namespace WHERE nspname = '_pg_dbmigrator'",
        )
        .await;
        assert_eq!(state, "0", "{extra:?}: bookkeeping created on the source");
    }
}

/// A --table or --schema pattern that matches nothing is an error naming
/// it, as in pg_dump, rather than a run that copies nothing and exits 0.
#[tokio::test]
async fn pattern_matching_nothing_is_refused() {
    let db = testkit::shared_pair().fresh_db("no_match").await;
    testkit::execute(&db.source, "CREATE TABLE orders (id int PRIMARY KEY)")
        .await
        .unwrap();
    testkit::execute(&db.target, "CREATE TABLE orders (id int PRIMARY KEY)")
        .await
        .unwrap();
    for (flag, pattern) in [("--table", "ordrs"), ("--schema", "nosuchschema")] {
        let dump = tempfile::tempdir().unwrap();
        let out = run(&[
            "-q",
            "migrate",
            "--data-only",
            "--source",
            &db.source,
            "--target",
            &db.target,
            "--dump-path",
            dump.path().to_str().unwrap(),
            flag,
            pattern,
        ]);
        assert_one_line_exit_2(&out, pattern);
        assert!(text(&out.stderr).contains(flag), "{}", text(&out.stderr));
    }
    // One pattern that matches and one that does not: still refused.
    let dump = tempfile::tempdir().unwrap();
    let out = run(&[
        "-q",
        "migrate",
        "--data-only",
        "--source",
        &db.source,
        "--target",
        &db.target,
        "--dump-path",
        dump.path().to_str().unwrap(),
        "-t",
        "orders",
        "-t",
        "missing_*",
    ]);
    assert_one_line_exit_2(&out, "missing_*");
}

/// A source whose lock table cannot hold a lock per table (the snapshot
/// session's) and the copy workers' few is refused before anything is
/// created, with the max_locks_per_transaction that would do; a database
/// that fits migrates whole, however small the margin (the copy workers
/// never pile up locks).
#[tokio::test]
async fn a_lock_table_too_small_for_the_tables_is_refused_with_the_setting() {
    let cluster = tokio::task::spawn_blocking(|| {
        testkit::Cluster::start(&testkit::ClusterOptions {
            extra_conf: [
                ("max_locks_per_transaction", "20"),
                ("max_connections", "20"),
                ("max_worker_processes", "2"),
                ("autovacuum_max_workers", "1"),
                ("max_wal_senders", "0"),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .to_vec(),
            ..Default::default()
        })
        .expect("a small source cluster")
    })
    .await
    .unwrap();
    let source = testkit::Server::from_cluster(cluster);
    let pair = testkit::shared_pair();
    let db = testkit::fresh_db_on(&source, &pair.target, "locks").await;
    // 20 x (20 + 1 + 2 + 0 + 0 + 1) = 480 slots; 600 tables do not fit.
    testkit::execute(
        &db.source,
        "DO $$BEGIN FOR i IN 1..600 LOOP EXECUTE format('CREATE TABLE t%s (id int)', i); COMMIT; END LOOP; END$$",
    )
    .await
    .unwrap();
    let target = other_target_db(&db, "new");
    let out = run_migrate(&db.source, &target, &["-q"]).await;
    assert_one_line_exit_2(&out, "max_locks_per_transaction to at least");
    let err = text(&out.stderr);
    assert!(
        err.contains("600 tables") && err.contains("room for 480"),
        "{err}"
    );
    assert!(!target_database_exists(&format!("{}_new", db.name)).await);
    // The same limit, a table selection that fits: it migrates.
    migrate_clean(&db.source, &target, &["-t", "t1", "-t", "t2"]).await;
    // 200 tables and the catalogs (about 200) fit in the 432 usable slots
    // once, not with a second lock per table: all of them migrate and
    // verify clean (with two copy workers, and an index each).
    testkit::execute(
        &db.source,
        "DO $$BEGIN FOR i IN 201..600 LOOP EXECUTE format('DROP TABLE t%s', i); COMMIT; END LOOP;
                   FOR i IN 1..200 LOOP EXECUTE format('INSERT INTO t%s SELECT generate_series(1, 3); CREATE INDEX ON t%s (id)', i, i); COMMIT; END LOOP; END$$",
    )
    .await
    .unwrap();
    let whole = other_target_db(&db, "whole");
    migrate_clean(&db.source, &whole, &["--jobs", "2"]).await;
    let rows = testkit::query_scalar(
        &whole,
        "SELECT count(*)::text || ' tables, ' || sum((xpath('/row/c/text()', query_to_xml(format('SELECT count(*) AS c FROM %I', relname), false, true, '')))[1]::text::int)::text || ' rows'
           FROM pg_class WHERE relkind = 'r' AND relnamespace = 'public'::regnamespace",
    )
    .await;
    assert_eq!(rows, "200 tables, 600 rows");
    source.cluster().unwrap().stop();
}

/// `--source-pressure` values that do not read are refused before
/// anything starts (exit 2, stdout empty), naming the flag, the key and
/// what to write; from a config file too, where `true` gives the flag
/// bare (the defaults) and `false` leaves it out.
#[test]
fn bad_source_pressure_values_are_refused_before_anything() {
    // A source that cannot be reached: a value that reads gets that far.
    let source = "host=/nonexistent/socket dbname=x connect_timeout=1";
    let target = "host=/nonexistent/socket dbname=y connect_timeout=1";
    let refused = |out: &std::process::Output, needle: &str| {
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        let first = err.lines().next().unwrap_or_default();
        assert!(first.contains("--source-pressure"), "{err}");
        assert!(first.contains(needle), "expected {needle:?} in: {err}");
        assert!(text(&out.stdout).is_empty(), "stdout must stay empty");
    };
    for (value, needle) in [
        (
            "lock-wait=soon",
            "lock-wait: \"soon\" is not a duration (e.g. 30s)",
        ),
        (
            "bogus=1s",
            "unknown key \"bogus\" (keys: standby-lag, slot-wal, lock-wait, lock-pause)",
        ),
        ("slot-wal=120%", "at most 100%"),
        ("standby-lag=5m", "write min for minutes (or MB for a size)"),
        ("lock-wait", "is not key=value"),
    ] {
        let out = run(&[
            "migrate",
            "--source",
            source,
            "--target",
            target,
            "--source-pressure",
            value,
        ]);
        refused(&out, needle);
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("m.toml");
    let with_file = |body: &str| {
        std::fs::write(&file, body).unwrap();
        run(&[
            "migrate",
            "--config",
            file.to_str().unwrap(),
            "--source",
            source,
            "--target",
            target,
        ])
    };
    refused(
        &with_file("[migrate]\nsource-pressure = \"lock-pause=-1\"\n"),
        "lock-pause",
    );
    // Read, then stopped by the unreachable source (not by the flag).
    for body in [
        "source-pressure = true\n",
        "source-pressure = false\n",
        "source-pressure = \"standby-lag=64MB\"\n",
    ] {
        let out = with_file(body);
        let err = text(&out.stderr);
        assert!(!err.contains("source-pressure"), "{body}: {err}");
        assert!(err.contains("cannot connect"), "{body}: {err}");
    }
}
