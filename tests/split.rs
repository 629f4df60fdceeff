//! Big tables cut into page ranges: every row arrives exactly once, even
//! from tables full of dead tuples and pages of different fill, and a
//! crash in the middle of a split table resumes without copying a finished
//! chunk again.

mod common;

use std::collections::BTreeMap;
use std::process::Stdio;

use common::*;
use pg_dbmigrator::testkit;
use pg_dbmigrator::ResumeToken;

/// A table whose heap has everything a ctid range can trip on: dead tuples
/// (deleted, never vacuumed), runs of emptied pages, updated rows moved to
/// the end, TOASTed values, and a low fill factor on part of its life.
const UNEVEN: &str = "
    CREATE TABLE public.uneven (id int PRIMARY KEY, v text, big text) WITH (autovacuum_enabled = off);
    CREATE INDEX uneven_v ON public.uneven (v);
    CREATE TABLE public.small (id int PRIMARY KEY, note text);";
const UNEVEN_ROWS: &str = "
    INSERT INTO public.uneven SELECT g, md5(g::text), NULL FROM generate_series(1, 20000) g;
    ALTER TABLE public.uneven SET (fillfactor = 40);
    INSERT INTO public.uneven SELECT g, md5(g::text), NULL FROM generate_series(20001, 30000) g;
    DELETE FROM public.uneven WHERE id % 3 = 0;
    DELETE FROM public.uneven WHERE id BETWEEN 5000 AND 9000;
    UPDATE public.uneven SET v = v || '-updated' WHERE id % 7 = 0;
    UPDATE public.uneven SET big = repeat(md5(id::text), 400) WHERE id % 1000 = 1;
    INSERT INTO public.small SELECT g, 'note ' || g FROM generate_series(1, 500) g;";

#[tokio::test]
async fn split_table_with_dead_tuples_arrives_complete() {
    let db = testkit::shared_pair().fresh_db("split").await;
    testkit::execute(&db.source, UNEVEN).await.unwrap();
    testkit::execute(&db.source, UNEVEN_ROWS).await.unwrap();
    let target = other_target_db(&db, "new");
    let dir = tempfile::tempdir().unwrap();
    let dump = dir.path().join("w");
    let out = run_async(&[
        "migrate",
        "--source",
        &db.source,
        "--target",
        &target,
        "--jobs",
        "3",
        "--split-size",
        "64kB",
        "--json",
        "--dump-path",
        dump.to_str().unwrap(),
    ])
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let report = common::report_of(&out.stdout);
    assert_eq!(
        report["verify"]["differences"].as_array().unwrap().len(),
        0,
        "{report:#}"
    );
    let tables: BTreeMap<String, &serde_json::Value> = report["tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["table"].as_str().unwrap().to_string(), t))
        .collect();
    let uneven = tables["public.uneven"];
    assert!(
        uneven["chunks"].as_u64().unwrap() > 5,
        "the table was not split: {uneven}"
    );
    assert_eq!(uneven["freeze"], false, "{uneven}");
    assert_eq!(tables["public.small"]["chunks"], 1);
    // Under 1 MB: loaded without TRUNCATE + FREEZE, which cost more there
    // than they save.
    assert_eq!(tables["public.small"]["freeze"], false);
    // The token holds the plan: contiguous ranges, the last one open.
    let token = ResumeToken::load(&ResumeToken::path_for(&dump))
        .unwrap()
        .unwrap();
    let plan = &token.chunk_plan["public.uneven"];
    assert_eq!(plan.len() as u64, uneven["chunks"].as_u64().unwrap());
    assert_eq!(plan[0].start, 0);
    assert!(plan.windows(2).all(|w| w[0].end == Some(w[1].start)));
    assert_eq!(plan.last().unwrap().end, None);
    // Independent of verify: same rows, and the keys and indexes built beside the copy.
    assert_eq!(
        content_digest(&db.source).await,
        content_digest(&target).await
    );
    assert_eq!(schema_dump(&db.source), schema_dump(&target));
    // Nothing of ours is left on the target.
    assert_eq!(
        testkit::query_scalar(
            &target,
            "SELECT count(*)::text FROM pg_namespace WHERE nspname = '_pg_dbmigrator'"
        )
        .await,
        "0"
    );
}

#[tokio::test]
async fn kill_9_mid_split_table_then_resume_copies_no_chunk_twice() {
    let db = testkit::shared_pair().fresh_db("splitkill").await;
    testkit::execute(&db.target, UNEVEN).await.unwrap();
    testkit::execute(&db.source, UNEVEN).await.unwrap();
    testkit::execute(&db.source, UNEVEN_ROWS).await.unwrap();
    testkit::execute(
        &db.source,
        "INSERT INTO public.uneven SELECT g, md5(g::text), NULL FROM generate_series(30001, 120000) g",
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let dump = dir.path().join("w");
    let token_path = ResumeToken::path_for(&dump);
    let mut base = migrate_args(&db, dump.to_str().unwrap());
    base.extend(["--split-size".to_string(), "64kB".to_string()]);
    let a: Vec<&str> = base.iter().map(String::as_str).collect();
    let mut child = command(&a)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Once a few chunks are in, stop the rest: a SHARE lock waits for the
    // chunks being written, then holds every further COPY back.
    let blocker = testkit::client(&db.target).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let done = ResumeToken::load(&token_path)
            .ok()
            .flatten()
            .map_or(0, |t| t.copied.len());
        if done >= 5 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no chunk was copied");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    blocker
        .batch_execute("BEGIN; LOCK TABLE public.uneven IN SHARE MODE")
        .await
        .unwrap();
    // Let the token catch up with the last commits before the lock.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    child.kill().unwrap();
    child.wait().unwrap();
    blocker.batch_execute("COMMIT").await.unwrap();

    let token = ResumeToken::load(&token_path).unwrap().unwrap();
    let chunks_done = token
        .copied
        .keys()
        .filter(|k| k.starts_with("public.uneven#"))
        .count();
    let n = token.chunk_plan["public.uneven"].len();
    assert!(
        chunks_done >= 5 && chunks_done < n,
        "want a partly copied table: {chunks_done} of {n} chunks"
    );
    // The rows of finished chunks, with the transaction that wrote them.
    let rows_before = testkit::query_scalar(
        &db.target,
        "SELECT string_agg(id || ':' || xmin, ',' ORDER BY id) FROM public.uneven",
    )
    .await;
    assert!(!rows_before.is_empty());

    let mut resume = a.clone();
    resume.extend(["--resume", "--json"]);
    let out = run_async(&resume).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let report = common::report_of(&out.stdout);
    assert_eq!(
        report["verify"]["differences"].as_array().unwrap().len(),
        0,
        "{report:#}"
    );
    let uneven = report["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["table"] == "public.uneven")
        .expect("public.uneven finished in the resumed run");
    // The target's markers may be one chunk ahead of the token.
    let copied_again = uneven["chunks"].as_u64().unwrap() as usize;
    assert!(
        copied_again <= n - chunks_done,
        "the resumed run copied finished chunks again: {uneven}"
    );
    // Every row of a finished chunk is still the one written before the crash.
    let rewritten = testkit::query_scalar(
        &db.target,
        &format!(
            "SELECT count(*)::text FROM unnest(string_to_array('{rows_before}', ',')) AS b(r)
              WHERE NOT EXISTS (SELECT 1 FROM public.uneven u WHERE u.id || ':' || u.xmin = b.r)"
        ),
    )
    .await;
    assert_eq!(rewritten, "0", "rows of finished chunks were rewritten");
    assert_eq!(
        content_digest(&db.source).await,
        content_digest(&db.target).await
    );
}

/// A whole table of 1 MB or more is loaded with COPY FREEZE (all-visible
/// at once, as ANALYZE counts it); one under 1 MB, without TRUNCATE and
/// FREEZE; on a PostgreSQL 15 target neither is split by default.
#[tokio::test]
async fn whole_tables_over_a_megabyte_arrive_frozen() {
    let db = testkit::shared_pair().fresh_db("freeze").await;
    testkit::execute(
        &db.source,
        "CREATE TABLE public.wide (id int PRIMARY KEY, v text);
         INSERT INTO public.wide SELECT g, md5(g::text) FROM generate_series(1, 40000) g;
         CREATE TABLE public.tiny (id int PRIMARY KEY);
         INSERT INTO public.tiny SELECT generate_series(1, 10);",
    )
    .await
    .unwrap();
    let target = other_target_db(&db, "new");
    let report = common::migrate_clean(&db.source, &target, &["--jobs", "2"]).await;
    let by_name = |n: &str| {
        report["tables"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["table"] == n)
            .cloned()
            .unwrap()
    };
    let wide = by_name("public.wide");
    assert_eq!(wide["chunks"], 1, "{wide}");
    assert_eq!(wide["freeze"], true, "{wide}");
    assert_eq!(by_name("public.tiny")["freeze"], false);
    let frozen = testkit::query_scalar(
        &target,
        "SELECT (relallvisible = relpages AND relpages > 0)::text FROM pg_class WHERE oid = 'public.wide'::regclass",
    )
    .await;
    assert_eq!(frozen, "true");
}
