//! Data-only migrations between real servers: the rich fixture in binary and
//! text COPY modes, snapshot consistency, and the binary without client tools.

mod common;

use common::*;
use pg_dbmigrator::testkit;
use pg_dbmigrator::{CopyFormat, EndpointConfig, MigrationConfig, Migrator, VerifyLevel};
use tokio_util::sync::CancellationToken;

fn config(db: &testkit::TestDb, dump: &std::path::Path) -> MigrationConfig {
    MigrationConfig {
        source: Some(EndpointConfig::parse(&db.source).unwrap()),
        target: Some(EndpointConfig::parse(&db.target).unwrap()),
        data_only: true,
        jobs: 3,
        dump_path: Some(dump.to_path_buf()),
        ..Default::default()
    }
}

async fn rich_roundtrip(format: CopyFormat) {
    let db = rich_db(&format!("rich_{format:?}").to_lowercase()).await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&db, &dir.path().join("work"));
    cfg.copy_format = format;
    let report = Migrator::new(cfg)
        .run(CancellationToken::new())
        .await
        .expect("migration");
    let v = report.verify.as_ref().expect("verify ran");
    assert!(
        v.is_clean(),
        "verify differences:\n{}",
        v.differences_table()
    );
    assert!(
        report.tables.len() >= 20,
        "tables copied: {}",
        report.tables.len()
    );
    assert!(v.sequences >= 5, "sequences compared: {}", v.sequences);
    assert!(
        v.large_objects >= 3,
        "large objects compared: {}",
        v.large_objects
    );
    let formats: std::collections::BTreeSet<_> = report
        .tables
        .iter()
        .map(|t| format!("{:?}", t.format))
        .collect();
    match format {
        CopyFormat::Text => assert_eq!(formats.len(), 1, "{formats:?}"),
        // Same major: binary, except tables whose types embed user OIDs.
        _ => assert!(
            formats.contains("Binary") && formats.contains("Text"),
            "{formats:?}"
        ),
    }
    // An oracle independent of our verify: sorted row texts of every table.
    assert_eq!(
        content_digest(&db.source).await,
        content_digest(&db.target).await
    );
    // Nothing of ours is left on the target.
    let left = testkit::query_scalar(
        &db.target,
        "SELECT count(*) FROM pg_namespace WHERE nspname = '_pg_dbmigrator'",
    )
    .await;
    assert_eq!(left, "0");
}

#[tokio::test]
async fn rich_fixture_binary() {
    rich_roundtrip(CopyFormat::Auto).await;
}

#[tokio::test]
async fn rich_fixture_text() {
    rich_roundtrip(CopyFormat::Text).await;
}

/// Rows written on the source after the snapshot are not copied, and every
/// worker reads the same snapshot.
#[tokio::test]
async fn snapshot_consistency() {
    let db = demo_db("snap").await;
    add_table(
        &db,
        "CREATE TABLE public.lockme (id int PRIMARY KEY, v text);
         CREATE TABLE public.early (id int PRIMARY KEY, v text);",
        "INSERT INTO public.lockme SELECT g, 'before' FROM generate_series(1, 1000) g;
         INSERT INTO public.early SELECT g, 'before' FROM generate_series(1, 1000) g;",
    )
    .await;
    let digest =
        |t: &str| format!("SELECT md5(string_agg(id||v, ',' ORDER BY id)) FROM public.{t}");
    let expected_lockme = testkit::query_scalar(&db.source, &digest("lockme")).await;
    let expected_early = testkit::query_scalar(&db.source, &digest("early")).await;
    let blocker = block_copies_into(&db, "public.lockme").await;

    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&db, &dir.path().join("work"));
    cfg.jobs = 3;
    cfg.verify = VerifyLevel::None;
    let token_path = Migrator::new(cfg.clone()).token_path().unwrap();
    let run = tokio::spawn(async move { Migrator::new(cfg).run(CancellationToken::new()).await });

    // Wait until every other table is copied: the snapshot is long taken.
    let total_other: usize = testkit::query_scalar(
        &db.source,
        "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog','information_schema') AND n.nspname NOT LIKE 'pg_toast%'",
    )
    .await
    .parse::<usize>()
    .unwrap()
        - 1;
    let t = wait_for_copied(&token_path, total_other).await;
    assert!(!t.copied.contains_key("public.lockme"));
    // Write on the source after the snapshot: insert, update, delete, in tables copied and not yet copied.
    testkit::execute(
        &db.source,
        "INSERT INTO public.lockme VALUES (5000, 'after'); UPDATE public.lockme SET v = 'after' WHERE id <= 10;
         DELETE FROM public.lockme WHERE id BETWEEN 500 AND 600;
         INSERT INTO public.early VALUES (5000, 'after'); DELETE FROM public.early WHERE id = 1;",
    )
    .await
    .unwrap();
    blocker.batch_execute("COMMIT").await.unwrap();
    let report = run.await.unwrap().expect("migration");

    let got_lockme = testkit::query_scalar(&db.target, &digest("lockme")).await;
    let got_early = testkit::query_scalar(&db.target, &digest("early")).await;
    assert_eq!(
        got_lockme, expected_lockme,
        "lockme must hold the snapshot's rows"
    );
    assert_eq!(
        got_early, expected_early,
        "early must hold the snapshot's rows"
    );
    // Every worker saw exactly the same snapshot.
    let snaps: std::collections::BTreeSet<&str> =
        report.tables.iter().map(|t| t.snapshot.as_str()).collect();
    assert_eq!(snaps.len(), 1, "workers saw different snapshots: {snaps:?}");
}

/// The binary needs no PostgreSQL client program: PATH points nowhere.
#[tokio::test]
async fn binary_runs_without_client_tools() {
    let db = demo_db("nopath").await;
    let dir = tempfile::tempdir().unwrap();
    let dump = dir.path().join("work");
    let out = run(&[
        "migrate",
        "--source",
        &db.source,
        "--target",
        &db.target,
        "--data-only",
        "--dump-path",
        dump.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("0 differences"), "{stdout}");
    assert_eq!(
        content_digest(&db.source).await,
        content_digest(&db.target).await
    );

    // status reads the token.
    let st = run(&["status", "--dump-path", dump.to_str().unwrap(), "--json"]);
    assert_eq!(st.status.code(), Some(0), "{}", text(&st.stderr));
    let v: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
    assert_eq!(v["completed"], true);

    // Running the same migration again is refused: the token says it completed.
    let again = run(&[
        "migrate",
        "--source",
        &db.source,
        "--target",
        &db.target,
        "--data-only",
        "--dump-path",
        dump.to_str().unwrap(),
    ]);
    assert_eq!(again.status.code(), Some(2), "{}", text(&again.stderr));
    assert!(
        text(&again.stderr).contains("--force-clean"),
        "{}",
        text(&again.stderr)
    );
}

/// A target whose tables already hold rows is refused, and nothing changes.
#[tokio::test]
async fn non_empty_target_refused() {
    let db = demo_db("nonempty").await;
    testkit::execute(&db.target, "CREATE TABLE public.t_extra (id int); CREATE TABLE public.busy (id int); INSERT INTO public.busy VALUES (1)").await.unwrap();
    testkit::execute(&db.source, "CREATE TABLE public.t_extra (id int); CREATE TABLE public.busy (id int); INSERT INTO public.busy VALUES (7)").await.unwrap();
    let before = content_digest(&db.target).await;
    let dir = tempfile::tempdir().unwrap();
    let out = run(&[
        "-q",
        "migrate",
        "--source",
        &db.source,
        "--target",
        &db.target,
        "--data-only",
        "--dump-path",
        dir.path().join("w").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("already contain rows") && err.contains("public.busy"),
        "{err}"
    );
    assert_eq!(content_digest(&db.target).await, before);

    // --force-clean erases and migrates.
    let out = run(&[
        "-q",
        "migrate",
        "--source",
        &db.source,
        "--target",
        &db.target,
        "--data-only",
        "--force-clean",
        "--dump-path",
        dir.path().join("w").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        testkit::query_scalar(
            &db.target,
            "SELECT string_agg(id::text, ',') FROM public.busy"
        )
        .await,
        "7"
    );
}

#[tokio::test]
async fn online_mode_needs_logical_wal_on_the_source() {
    // The test target runs with wal_level=replica: as a source it is refused
    // in the online preflight, with the fix, and nothing is created.
    let db = testkit::shared_pair().fresh_db("modes").await;
    let out = run(&[
        "-q", "migrate", "--source", &db.target, "--target", &db.source, "--mode", "online",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("wal_level") && err.contains("logical"),
        "{err}"
    );
    let c = testkit::client(&db.target).await;
    let n: i64 = c
        .query_one("SELECT count(*) FROM pg_publication", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "no publication may be created by a refused run");
}

/// pg_dump-style filters: a quoted schema with a wildcard brings a
/// partitioned table with all its (sub-)partitions; excludes win.
#[tokio::test]
async fn filters_select_tables_like_pg_dump() {
    let db = rich_db("filters").await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&db, &dir.path().join("work"));
    cfg.filters.tables = vec!["\"Sales Data\".meas*".into(), "app.inh_*".into()];
    cfg.filters.exclude_tables = vec!["app.inh_child_b".into()];
    cfg.large_objects = false;
    let report = Migrator::new(cfg)
        .run(CancellationToken::new())
        .await
        .expect("migration");
    assert!(
        report.verify.as_ref().unwrap().is_clean(),
        "{}",
        report.verify.as_ref().unwrap().differences_table()
    );
    let mut copied: Vec<String> = report.tables.iter().map(|t| t.table.clone()).collect();
    copied.sort();
    let expected = [
        "\"Sales Data\".\"measurements 2024 EU\"",
        "\"Sales Data\".measurements_2023",
        "\"Sales Data\".measurements_2024_other",
        "\"Sales Data\".measurements_2024_us",
        "\"Sales Data\".measurements_2025_h0",
        "\"Sales Data\".measurements_2025_h1",
        "\"Sales Data\".measurements_default",
        "app.inh_child_a",
        "app.inh_parent",
    ];
    assert_eq!(copied, expected);
    // The target agrees: only those tables have rows.
    let non_empty = testkit::query_scalar(
        &db.target,
        "SELECT string_agg(format('%I.%I', n.nspname, c.relname), ',' ORDER BY 1)
           FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema')
            AND (xpath('/row/c/text()', query_to_xml(format('SELECT count(*) AS c FROM ONLY %I.%I', n.nspname, c.relname), false, true, '')))[1]::text::int > 0",
    )
    .await;
    let mut expected_sorted: Vec<&str> = expected.to_vec();
    expected_sorted.sort_by_key(|s| s.replace('"', ""));
    let mut got: Vec<&str> = non_empty.split(',').collect();
    got.sort_by_key(|s| s.replace('"', ""));
    assert_eq!(got, expected_sorted);
    assert_eq!(report.large_objects, 0);

    // A pattern with two dots is a usage error, before anything is touched.
    let mut bad = config(&db, &dir.path().join("other"));
    bad.filters.tables = vec!["a.b.c".into()];
    let err = Migrator::new(bad)
        .run(CancellationToken::new())
        .await
        .unwrap_err();
    assert_eq!(err.exit_code(), 2, "{err}");
}

/// A target whose column types differ from the source's (a widened key, a
/// text column turned varchar) still loads: that table goes as text COPY.
#[tokio::test]
async fn differing_column_types_fall_back_to_text() {
    let db = testkit::shared_pair().fresh_db("typediff").await;
    testkit::execute(
        &db.source,
        "CREATE TABLE public.widened (id int4 PRIMARY KEY, note text, at timestamptz);
         INSERT INTO public.widened SELECT g, 'n' || g, '2024-01-01'::timestamptz + g * interval '1 hour' FROM generate_series(1, 500) g;
         CREATE TABLE public.same (id int4 PRIMARY KEY); INSERT INTO public.same SELECT generate_series(1, 10);",
    )
    .await
    .unwrap();
    testkit::execute(
        &db.target,
        "CREATE TABLE public.widened (id int8 PRIMARY KEY, note varchar(20), at timestamptz);
         CREATE TABLE public.same (id int4 PRIMARY KEY);",
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&db, &dir.path().join("work"));
    cfg.verify = VerifyLevel::Count;
    let report = Migrator::new(cfg)
        .run(CancellationToken::new())
        .await
        .expect("migration");
    let fmt = |name: &str| {
        report
            .tables
            .iter()
            .find(|t| t.table == name)
            .map(|t| format!("{:?}", t.format))
            .unwrap()
    };
    assert_eq!(fmt("public.widened"), "Text");
    assert_eq!(fmt("public.same"), "Binary");
    assert!(report.verify.as_ref().unwrap().is_clean());
    let sum = testkit::query_scalar(
        &db.target,
        "SELECT sum(id)::text || '/' || max(note) FROM public.widened",
    )
    .await;
    assert_eq!(sum, "125250/n99");
}

/// A row the target refuses in the middle of the pipelined copy (several
/// small tables in one transaction, sent without waiting): the run fails
/// naming that table and the server's reason, its transaction leaves
/// nothing (every table with rows on the target has its marker, every
/// marker its rows), and once the target accepts the row a resumed run
/// finishes with every row.
#[tokio::test]
async fn a_row_the_target_refuses_fails_its_group_whole_and_the_rerun_finishes() {
    let db = testkit::shared_pair().fresh_db("refused_row").await;
    let mut src = String::new();
    let mut dst = String::new();
    for i in 0..40 {
        src.push_str(&format!(
            "CREATE TABLE public.t{i:02} (id int PRIMARY KEY, v int NOT NULL);
             INSERT INTO public.t{i:02} SELECT g, g FROM generate_series(1, 5) g;"
        ));
        let check = if i == 17 { " CHECK (v > 0)" } else { "" };
        dst.push_str(&format!(
            "CREATE TABLE public.t{i:02} (id int PRIMARY KEY, v int NOT NULL{check});"
        ));
    }
    src.push_str("UPDATE public.t17 SET v = -1 WHERE id = 3;");
    testkit::execute(&db.source, &src).await.unwrap();
    testkit::execute(&db.target, &dst).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&db, &dir.path().join("work"));
    cfg.jobs = 2;
    let err = Migrator::new(cfg.clone())
        .run(CancellationToken::new())
        .await
        .expect_err("a row the target refuses");
    let msg = err.to_string();
    assert!(msg.contains("public.t17"), "{msg}");
    assert_eq!(err.sqlstate(), Some("23514"), "{msg}");
    assert_eq!(
        testkit::query_scalar(&db.target, "SELECT count(*)::text FROM public.t17").await,
        "0"
    );
    // Rows and markers agree table by table: no group half committed.
    let mut committed = 0;
    for i in 0..40 {
        let state = testkit::query_scalar(
            &db.target,
            &format!(
                "SELECT (SELECT count(*) FROM public.t{i:02})::text || '/' ||
                        (SELECT count(*) FROM _pg_dbmigrator.copied WHERE item = 'public.t{i:02}')::text"
            ),
        )
        .await;
        assert!(
            state == "0/0" || state == "5/1",
            "public.t{i:02}: rows/markers {state}"
        );
        committed += usize::from(state == "5/1");
    }
    assert!(
        committed < 39,
        "{committed} tables committed beside the refused one"
    );
    testkit::execute(
        &db.target,
        "ALTER TABLE public.t17 DROP CONSTRAINT t17_v_check",
    )
    .await
    .unwrap();
    cfg.resume = true;
    let report = Migrator::new(cfg)
        .run(CancellationToken::new())
        .await
        .expect("the resumed migration");
    assert!(report.verify.as_ref().unwrap().is_clean());
    assert_eq!(
        content_digest(&db.source).await,
        content_digest(&db.target).await
    );
}
