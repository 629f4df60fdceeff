//! verify finds what a user would lose: a changed row, a missing row, a
//! sequence behind, a changed large object. Exit code 3.

mod common;

use common::*;
use pg_dbmigrator::testkit;

#[tokio::test]
async fn verify_detects_each_kind_of_difference() {
    let db = rich_db("verifydiff").await;
    testkit::execute(
        &db.source,
        "CREATE SEQUENCE public.vseq; SELECT setval('public.vseq', 500);
         CREATE TABLE public.vt (id int PRIMARY KEY, v text); INSERT INTO public.vt SELECT g, 'v' || g FROM generate_series(1, 100) g;
         SELECT lo_from_bytea(4242, 'large object contents');",
    )
    .await
    .unwrap();
    testkit::execute(
        &db.target,
        "CREATE SEQUENCE public.vseq; CREATE TABLE public.vt (id int PRIMARY KEY, v text);",
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = run(&[
        "-q",
        "migrate",
        "--data-only",
        "--source",
        &db.source,
        "--target",
        &db.target,
        "--dump-path",
        dir.path().join("w").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));

    let clean = run(&[
        "-q", "verify", "--source", &db.source, "--target", &db.target,
    ]);
    assert_eq!(
        clean.status.code(),
        Some(0),
        "{}{}",
        text(&clean.stdout),
        text(&clean.stderr)
    );
    assert!(text(&clean.stdout).contains("0 differences"));

    testkit::execute(
        &db.target,
        "UPDATE public.vt SET v = 'changed' WHERE id = 7;
         SELECT setval('public.vseq', 100);
         SELECT lo_put(4242, 0, 'L');",
    )
    .await
    .unwrap();
    let out = run(&[
        "-q", "verify", "--source", &db.source, "--target", &db.target, "--json",
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let kinds: Vec<(String, String)> = v["differences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["kind"].as_str().unwrap().to_string(),
                d["object"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(
        kinds.contains(&("checksum".into(), "public.vt".into())),
        "{kinds:?}"
    );
    assert!(
        kinds.contains(&("sequence".into(), "public.vseq".into())),
        "{kinds:?}"
    );
    assert!(
        kinds.contains(&("large_object_content".into(), "large object 4242".into())),
        "{kinds:?}"
    );
    assert_eq!(kinds.len(), 3, "{kinds:?}");

    // A missing row: the count differs. The text report names it.
    testkit::execute(&db.target, "DELETE FROM public.vt WHERE id = 8")
        .await
        .unwrap();
    let out = run(&[
        "-q", "verify", "--source", &db.source, "--target", &db.target, "--level", "count",
    ]);
    assert_eq!(out.status.code(), Some(3));
    let s = text(&out.stdout);
    assert!(
        s.contains("public.vt") && s.contains("row count") && s.contains("100") && s.contains("99"),
        "{s}"
    );
    assert!(
        s.contains("sequence value") && s.contains("(behind)"),
        "{s}"
    );

    // A table the target lacks.
    testkit::execute(&db.source, "CREATE TABLE public.only_on_source (id int)")
        .await
        .unwrap();
    let out = run(&[
        "-q", "verify", "--source", &db.source, "--target", &db.target, "--level", "count",
    ]);
    assert_eq!(out.status.code(), Some(3));
    let s = text(&out.stdout);
    assert!(
        s.contains("public.only_on_source") && s.contains("table missing on target"),
        "{s}"
    );
}

/// A verify of part of a database names the source tables with rows it
/// left out, so a clean result is not mistaken for the whole database's.
#[tokio::test]
async fn verify_names_the_source_tables_with_rows_it_did_not_compare() {
    let db = testkit::shared_pair().fresh_db("verifyout").await;
    let ddl = "CREATE TABLE public.kept (id int PRIMARY KEY);
               CREATE TABLE public.left_out (id int);
               CREATE TABLE public.emptied (id int);
               CREATE SCHEMA other; CREATE TABLE other.far (id int);";
    testkit::execute(&db.source, ddl).await.unwrap();
    testkit::execute(&db.target, ddl).await.unwrap();
    testkit::execute(
        &db.source,
        "INSERT INTO public.kept VALUES (1), (2); INSERT INTO public.left_out VALUES (1);
         INSERT INTO public.emptied VALUES (1); DELETE FROM public.emptied;
         INSERT INTO other.far VALUES (3);",
    )
    .await
    .unwrap();
    testkit::execute(&db.target, "INSERT INTO public.kept VALUES (1), (2)")
        .await
        .unwrap();
    let out = run(&[
        "-q", "verify", "--source", &db.source, "--target", &db.target, "-t", "kept", "--json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["differences"].as_array().unwrap().len(), 0, "{v:#}");
    assert_eq!(
        v["outside_filters"],
        serde_json::json!(["other.far", "public.left_out"]),
        "{v:#}"
    );
    let out = run(&[
        "-q", "verify", "--source", &db.source, "--target", &db.target, "-n", "public", "-T",
        "left_out",
    ]);
    let s = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{s}{}", text(&out.stderr));
    assert!(
        s.contains("0 differences")
            && s.contains("not compared: 2 source table(s) with rows outside the filters: other.far, public.left_out"),
        "{s}"
    );
}

/// Small tables are compared many per query; a difference in one of them
/// is still named on that table alone, and a table the target cannot
/// answer (a column missing) is reported without hiding its neighbours.
#[tokio::test]
async fn verify_in_bulk_names_each_differing_table() {
    let db = testkit::shared_pair().fresh_db("verifybulk").await;
    let ddl = "DO $$ BEGIN FOR i IN 0..149 LOOP
                 EXECUTE format('CREATE TABLE public.t%s (id int PRIMARY KEY, v text)', i);
                 EXECUTE format('INSERT INTO public.t%s SELECT g, %L || g FROM generate_series(1, 3) g', i, 'r' || i);
               END LOOP; END $$;";
    testkit::execute(&db.source, ddl).await.unwrap();
    testkit::execute(&db.target, ddl).await.unwrap();
    let clean = run(&[
        "-q", "verify", "--source", &db.source, "--target", &db.target, "--jobs", "2",
    ]);
    assert_eq!(
        clean.status.code(),
        Some(0),
        "{}{}",
        text(&clean.stdout),
        text(&clean.stderr)
    );
    assert!(text(&clean.stdout).contains("0 differences"));

    testkit::execute(
        &db.target,
        "UPDATE public.t10 SET v = 'changed' WHERE id = 2;
         DELETE FROM public.t75 WHERE id = 3;
         ALTER TABLE public.t120 RENAME COLUMN v TO w;",
    )
    .await
    .unwrap();
    let out = run(&[
        "-q", "verify", "--source", &db.source, "--target", &db.target, "--jobs", "2", "--json",
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut kinds: Vec<(String, String)> = v["differences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["kind"].as_str().unwrap().to_string(),
                d["object"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    kinds.sort();
    assert_eq!(
        kinds,
        vec![
            ("checksum".to_string(), "public.t10".to_string()),
            ("error".to_string(), "public.t120".to_string()),
            ("row_count".to_string(), "public.t75".to_string()),
        ],
        "{v:#}"
    );
}
