//! Crash and resume: kill -9 in the middle of a migration, refuse a resume
//! with other flags (changing nothing), then resume and finish without
//! copying finished tables again. SIGTERM stops cleanly with exit 130.

mod common;

use std::process::Stdio;

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

fn with(base: &[String], extra: &[&str]) -> Vec<String> {
    let mut v = base.to_vec();
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

fn run_s(args: &[String]) -> std::process::Output {
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    run(&a)
}

#[tokio::test]
async fn kill_9_then_resume() {
    let db = rich_db("resume").await;
    add_table(
        &db,
        "CREATE TABLE public.lockme (id int PRIMARY KEY, v text)",
        "INSERT INTO public.lockme SELECT g, md5(g::text) FROM generate_series(1, 20000) g",
    )
    .await;
    let blocker = block_copies_into(&db, "public.lockme").await;

    let dir = tempfile::tempdir().unwrap();
    let dump = dir.path().join("work");
    let token_path = ResumeToken::path_for(&dump);
    let base = migrate_args(&db, dump.to_str().unwrap());
    let a: Vec<&str> = base.iter().map(String::as_str).collect();
    let mut child = command(&a)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    // Wait for some finished tables, then kill -9.
    let done_before_kill: Vec<String> = wait_for_copied(&token_path, 5)
        .await
        .copied
        .keys()
        .cloned()
        .collect();
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
    let out = run_s(&with(
        &base,
        &["--resume", "--exclude-table", "public.lockme", "-q"],
    ));
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
    let mut other = with(&base, &["--resume", "-q"]);
    other[4] = other_target;
    let out = run_s(&other);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("--target was"),
        "{}",
        text(&out.stderr)
    );
    // Without --resume, the existing token is not silently overwritten.
    let out = run_s(&base);
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
    let out = run_s(&with(&base, &["--resume", "--json"]));
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    let report = common::report_of(&out.stdout);
    assert_eq!(report["resumed"], true);
    assert_eq!(
        report["verify"]["differences"].as_array().unwrap().len(),
        0,
        "{report:#}"
    );
    let skipped: Vec<&str> = report["skipped_tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for t in &done_before_kill {
        assert!(
            skipped.contains(&t.as_str()),
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

/// SIGTERM (like Ctrl-C): workers stop even while blocked, the token is
/// saved, exit 130, and a resume finishes the job.
#[tokio::test]
async fn sigterm_saves_token_and_exits_130() {
    let db = demo_db("sigterm").await;
    add_table(
        &db,
        "CREATE TABLE public.lockme (id int PRIMARY KEY)",
        "INSERT INTO public.lockme SELECT generate_series(1, 100)",
    )
    .await;
    let blocker = block_copies_into(&db, "public.lockme").await;
    let dir = tempfile::tempdir().unwrap();
    let dump = dir.path().join("work");
    let token_path = ResumeToken::path_for(&dump);
    let base = migrate_args(&db, dump.to_str().unwrap());
    let a: Vec<&str> = base.iter().map(String::as_str).collect();
    let child = command(&a)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_copied(&token_path, 1).await;
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
    let out = run_s(&with(&base, &["--resume"]));
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    assert_eq!(
        content_digest(&db.source).await,
        content_digest(&db.target).await
    );
}

/// kill -9 while an index is built beside the copy, then `--resume` at
/// once: the killed run's `CREATE INDEX` (sent with its marker) lives on in
/// its server session and would commit behind the resumed run's back. The
/// resume waits for it or ends it, and finishes on the first try.
#[tokio::test]
async fn resume_right_after_a_kill_during_an_index_build() {
    let db = testkit::shared_pair().fresh_db("idxkill").await;
    testkit::execute(
        &db.source,
        // An index whose build takes seconds whatever the machine: its key
        // function sleeps 2 ms a row.
        "CREATE FUNCTION public.slow_key(int) RETURNS int LANGUAGE plpgsql IMMUTABLE
           AS $$ BEGIN PERFORM pg_sleep(0.002); RETURN $1; END $$;
         CREATE TABLE public.events (id int PRIMARY KEY, payload jsonb NOT NULL);
         INSERT INTO public.events
              SELECT g, jsonb_build_object('k', g % 1000, 'tags', jsonb_build_array(g % 7, md5(g::text)))
                FROM generate_series(1, 2500) g;
         CREATE INDEX events_slow ON public.events (public.slow_key(id));
         CREATE TABLE public.other (id int PRIMARY KEY, v text);
         INSERT INTO public.other SELECT g, md5(g::text) FROM generate_series(1, 1000) g;",
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let dump = dir.path().join("work");
    let base = full_args(&db, &dump);
    let a: Vec<&str> = base.iter().map(String::as_str).collect();
    let mut child = command(&a)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let watcher = testkit::client(&db.target).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let building: i64 = watcher
            .query_one(
                "SELECT count(*) FROM pg_stat_activity
                  WHERE state = 'active' AND application_name LIKE 'pg_dbmigrator %'
                    AND query LIKE '%CREATE INDEX events_slow%'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if building > 0 {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the migration ended before the index build was seen"
        );
        assert!(std::time::Instant::now() < deadline, "no index build seen");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    child.kill().unwrap(); // SIGKILL, the CREATE INDEX still running
    child.wait().unwrap();

    let out = run_s(&with(&base, &["--resume", "--json"]));
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "stderr: {err}");
    assert!(
        err.contains("waiting for a session of the interrupted run"),
        "{err}"
    );
    let report = common::report_of(&out.stdout);
    assert_eq!(
        report["verify"]["differences"].as_array().unwrap().len(),
        0,
        "{report:#}"
    );
    assert_eq!(schema_dump(&db.source), schema_dump(&db.target));
    // No session of either run is left on the target.
    let left: i64 = watcher
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'pg_dbmigrator %'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
}

/// Start a full migration of `db` that stops at fault point `point`, and
/// kill -9 it there.
async fn kill_at(db: &testkit::TestDb, dump: &std::path::Path, point: &str) -> Vec<String> {
    kill_at_with(db, dump, point, &[]).await
}

/// [`kill_at`] with `extra` flags.
async fn kill_at_with(
    db: &testkit::TestDb,
    dump: &std::path::Path,
    point: &str,
    extra: &[&str],
) -> Vec<String> {
    let base = with(&full_args(db, dump), extra);
    let log = dump.with_extension("log");
    let a: Vec<&str> = base.iter().map(String::as_str).collect();
    let mut child = command(&a)
        .env("PG_DBMIGRATOR_TEST_STOP_AT", point)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains(&format!("TEST_STOP_AT {point}"))
    {
        assert!(
            child.try_wait().unwrap().is_none() && std::time::Instant::now() < deadline,
            "never reached {point}: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    base
}

/// Tables with a handful of rows each (and a sequence, an index and a
/// comment, so the schema has several steps per table).
async fn many_small_tables(prefix: &str, n: usize) -> testkit::TestDb {
    let db = testkit::shared_pair().fresh_db(prefix).await;
    testkit::execute(
        &db.source,
        &format!(
            "DO $$BEGIN FOR i IN 1..{n} LOOP
               EXECUTE format('CREATE TABLE public.s%s (id serial PRIMARY KEY, v text)', i);
               EXECUTE format('CREATE INDEX ON public.s%s (v)', i);
               EXECUTE format('COMMENT ON TABLE public.s%s IS %L', i, 'small ' || i);
               EXECUTE format('INSERT INTO public.s%s (v) SELECT md5(g::text) FROM generate_series(1, 1 + %s %% 7) g', i, i);
             END LOOP; END$$"
        ),
    )
    .await
    .unwrap();
    db
}

/// kill -9 between two batches of schema steps: what committed is exactly
/// the first batch with its markers, and the resume applies the rest once.
#[tokio::test]
async fn kill_9_between_schema_batches_then_resume() {
    let db = many_small_tables("schemakill", 150).await;
    let dir = tempfile::tempdir().unwrap();
    let dump = dir.path().join("work");
    let base = kill_at(&db, &dump, "after:schema_step").await;
    // A batch is all or nothing: every marker's object exists, and no
    // table exists without its marker.
    let marked = testkit::query_scalar(
        &db.target,
        "SELECT count(*)::text || ' ' || count(*) FILTER (WHERE item LIKE 'pre:TABLE %')::text FROM _pg_dbmigrator.steps",
    )
    .await;
    let tables = testkit::query_scalar(
        &db.target,
        "SELECT count(*)::text FROM pg_class WHERE relkind = 'r' AND relnamespace = 'public'::regnamespace",
    )
    .await;
    let (markers, table_markers) = marked.split_once(' ').unwrap();
    assert_eq!(markers, "100", "one batch of 100 steps committed");
    assert_eq!(
        table_markers, tables,
        "tables and their markers committed together"
    );

    let out = run_s(&with(&base, &["--resume", "--json"]));
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    let report = common::report_of(&out.stdout);
    assert_eq!(report["verify"]["differences"].as_array().unwrap().len(), 0);
    assert_eq!(schema_dump(&db.source), schema_dump(&db.target));
    assert_eq!(
        content_digest(&db.source).await,
        content_digest(&db.target).await
    );
}

/// kill -9 inside a transaction that loads several small tables: none of
/// the group is on the target, and the resume copies each table once,
/// leaving the tables committed before the kill untouched.
#[tokio::test]
async fn kill_9_inside_a_group_of_small_tables_then_resume() {
    let db = many_small_tables("groupkill", 120).await;
    let dir = tempfile::tempdir().unwrap();
    let dump = dir.path().join("work");
    let base = kill_at(&db, &dump, "before:copy_item#3").await;
    let rows_by_table = testkit::query_scalar(
        &db.target,
        "SELECT coalesce(string_agg(relname, ',' ORDER BY relname), '') FROM pg_class c
          WHERE relkind = 'r' AND relnamespace = 'public'::regnamespace
            AND (xpath('/row/c/text()', query_to_xml(format('SELECT count(*) AS c FROM public.%I', relname), false, true, '')))[1]::text::int > 0",
    )
    .await;
    let marked = testkit::query_scalar(
        &db.target,
        "SELECT coalesce(string_agg(substr(item, 8), ',' ORDER BY substr(item, 8)), '') FROM _pg_dbmigrator.copied",
    )
    .await;
    assert_eq!(
        rows_by_table, marked,
        "only tables with their marker have rows"
    );
    assert!(
        marked.split(',').count() >= 10,
        "a group committed before the kill: {marked}"
    );
    let mut before = Vec::new();
    for t in marked.split(',').filter(|t| !t.is_empty()) {
        let t = format!("public.{t}");
        before.push((t.clone(), xmins(&db.target, &t).await));
    }
    let out = run_s(&with(&base, &["--resume", "--json"]));
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    let report = common::report_of(&out.stdout);
    assert_eq!(report["verify"]["differences"].as_array().unwrap().len(), 0);
    for (t, x) in &before {
        assert_eq!(&xmins(&db.target, t).await, x, "{t} was copied again");
    }
    assert_eq!(
        content_digest(&db.source).await,
        content_digest(&db.target).await
    );
}

/// `migrate --jobs 2 --dump-path <dump>` of a whole database (schema too).
fn full_args(db: &testkit::TestDb, dump: &std::path::Path) -> Vec<String> {
    [
        "migrate",
        "--source",
        &db.source,
        "--target",
        &db.target,
        "--jobs",
        "2",
        "--dump-path",
        dump.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// `--resume` of the finished migration `base`: exit 0, it says it is
/// complete, and nothing is done again (its report file is kept).
fn resume_finished(base: &[String], dump: &std::path::Path) {
    let summary = format!("{}.summary.json", dump.display());
    let before = std::fs::read_to_string(&summary).unwrap();
    let out = run_s(&with(base, &["--resume"]));
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("is already complete"),
        "{}",
        text(&out.stdout)
    );
    let out = run_s(&with(base, &["--resume", "--json"]));
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    assert_eq!(common::report_of(&out.stdout)["already_complete"], true);
    assert_eq!(before, std::fs::read_to_string(&summary).unwrap());
}

/// A finished offline migration, resumed, is a success.
#[tokio::test]
async fn resume_of_a_finished_migration_says_complete() {
    let db = many_small_tables("finished", 3).await;
    let dir = tempfile::tempdir().unwrap();
    let dump = dir.path().join("work");
    let base = full_args(&db, &dump);
    let out = run_s(&base);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    resume_finished(&base, &dump);
}

/// `migrate --copy-method dump` killed after its restore completed: the
/// resume verifies, seals, records the end and exits 0; resumed again, it
/// says it is complete.
#[tokio::test]
async fn kill_9_after_the_restore_of_a_dump_migration_then_resume() {
    let db = many_small_tables("afterrestore", 20).await;
    let dir = tempfile::tempdir().unwrap();
    let dump = dir.path().join("work");
    let base = kill_at_with(&db, &dump, "after:restored", &["--copy-method", "dump"]).await;
    let out = run_s(&with(&base, &["--resume", "--json"]));
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    let report = common::report_of(&out.stdout);
    assert_eq!(report["verify"]["differences"].as_array().unwrap().len(), 0);
    assert_eq!(schema_dump(&db.source), schema_dump(&db.target));
    assert_eq!(
        content_digest(&db.source).await,
        content_digest(&db.target).await
    );
    resume_finished(&base, &dump);
}
