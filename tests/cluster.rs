//! `migrate --all-databases`: a whole cluster in one run, against this
//! binary's own pair of throwaway servers (databases are cluster-wide, so
//! every test here works on the whole pair, one at a time).

mod common;

use common::*;
use pg_dbmigrator::pg::quote::ident;
use pg_dbmigrator::testkit;

/// The pair's databases are the test's: one test at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The source cluster of the issue: a LATIN1 database with C collation, an
/// empty one, user objects in `postgres`, a customized `template1` and a
/// database created from it, an application database, and one to exclude.
async fn source_cluster(pair: &testkit::Pair) {
    let admin = pair.source.admin_conninfo();
    testkit::execute(
        &admin,
        "CREATE ROLE app_owner LOGIN PASSWORD 'owner pw' CONNECTION LIMIT 20; \
         SET password_encryption = 'md5'; \
         CREATE ROLE \"Legacy \"\"User\"\"\" LOGIN PASSWORD 'legacy pw'; \
         RESET password_encryption; \
         CREATE ROLE readers NOLOGIN; \
         GRANT readers TO app_owner WITH ADMIN OPTION; \
         GRANT readers TO \"Legacy \"\"User\"\"\" GRANTED BY app_owner; \
         ALTER ROLE app_owner SET work_mem = '8MB'; \
         GRANT SET ON PARAMETER work_mem TO readers; \
         COMMENT ON ROLE readers IS 'the read-only group'",
    )
    .await
    .unwrap();
    for sql in [
        "CREATE DATABASE latin1db ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0",
        "CREATE DATABASE emptydb",
        // A database on the ICU locale provider, created alike.
        "CREATE DATABASE icudb LOCALE_PROVIDER icu ICU_LOCALE 'en-US' TEMPLATE template0",
        "CREATE TABLE in_postgres (id int PRIMARY KEY, note text); INSERT INTO in_postgres VALUES (1, 'kept')",
    ] {
        testkit::execute(&admin, sql).await.unwrap();
    }
    let template1 = pair.source.conninfo("template1");
    testkit::execute(
        &template1,
        "CREATE TABLE tmpl_audit (at timestamptz DEFAULT now(), what text); \
         CREATE FUNCTION tmpl_hello() RETURNS text LANGUAGE sql AS 'SELECT ''hi'''",
    )
    .await
    .unwrap();
    for sql in [
        "CREATE DATABASE fromtmpl",
        "CREATE DATABASE appdb TEMPLATE template0",
        "CREATE DATABASE skipme_1 TEMPLATE template0",
    ] {
        testkit::execute(&admin, sql).await.unwrap();
    }
    testkit::execute(
        &pair.source.conninfo("fromtmpl"),
        "INSERT INTO tmpl_audit (what) SELECT 'row ' || g FROM generate_series(1, 50) g",
    )
    .await
    .unwrap();
    testkit::execute(
        &pair.source.conninfo("latin1db"),
        "CREATE TABLE names (id serial PRIMARY KEY, name text); \
         INSERT INTO names (name) VALUES ('Müller'), ('Ørsted'), ('Zoë')",
    )
    .await
    .unwrap();
    testkit::execute(
        &pair.source.conninfo("appdb"),
        "CREATE SCHEMA shop; \
         CREATE TABLE shop.items (id bigserial PRIMARY KEY, name text NOT NULL, price numeric); \
         INSERT INTO shop.items (name, price) SELECT 'item ' || g, g / 10.0 FROM generate_series(1, 20000) g; \
         CREATE INDEX ON shop.items (name); \
         SELECT lo_from_bytea(0, 'a large object'); \
         ALTER SCHEMA shop OWNER TO app_owner; ALTER TABLE shop.items OWNER TO app_owner; \
         GRANT USAGE ON SCHEMA shop TO readers; GRANT SELECT ON shop.items TO readers",
    )
    .await
    .unwrap();
    testkit::execute(
        &admin,
        "ALTER ROLE app_owner IN DATABASE appdb SET search_path = shop, public",
    )
    .await
    .unwrap();
    testkit::execute(
        &pair.source.conninfo("skipme_1"),
        "CREATE TABLE not_wanted (id int)",
    )
    .await
    .unwrap();
}

fn migrate_args<'a>(pair_src: &'a str, pair_dst: &'a str, dir: &'a str) -> Vec<&'a str> {
    vec![
        "migrate",
        "--source",
        pair_src,
        "--target",
        pair_dst,
        "--all-databases",
        "--exclude-database",
        "skipme_*",
        "--dump-path",
        dir,
        "--jobs",
        "2",
    ]
}

async fn database_names(conninfo: &str) -> Vec<String> {
    testkit::client(conninfo)
        .await
        .query(
            "SELECT datname::text FROM pg_database WHERE datname <> 'template0' ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Every migrated database is the same on both sides: schema, rows.
async fn assert_same_databases(pair: &testkit::Pair, names: &[&str]) {
    for name in names {
        let (s, t) = (pair.source.conninfo(name), pair.target.conninfo(name));
        assert_same_schema(&s, &t);
        assert_eq!(
            content_digest(&s).await,
            content_digest(&t).await,
            "rows of database {name}"
        );
    }
}

/// The target server as new: no database, role or object of an earlier case.
async fn reset_target(pair: &testkit::Pair) {
    let admin = pair.target.admin_conninfo();
    for name in database_names(&admin).await {
        if !["postgres", "template1"].contains(&name.as_str()) {
            testkit::execute(
                &admin,
                &format!("DROP DATABASE {} WITH (FORCE)", ident(&name)),
            )
            .await
            .unwrap();
        }
    }
    testkit::execute(&admin, "DROP TABLE IF EXISTS in_postgres")
        .await
        .unwrap();
    testkit::execute(
        &pair.target.conninfo("template1"),
        "DROP TABLE IF EXISTS tmpl_audit; DROP FUNCTION IF EXISTS tmpl_hello()",
    )
    .await
    .unwrap();
    let roles: Vec<String> = testkit::client(&admin)
        .await
        .query(
            "SELECT rolname::text FROM pg_roles WHERE oid <> 10 AND rolname !~ '^pg_'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    for r in roles {
        for db in ["postgres", "template1"] {
            testkit::execute(
                &pair.target.conninfo(db),
                &format!("DROP OWNED BY {}", ident(&r)),
            )
            .await
            .unwrap();
        }
        testkit::execute(&admin, &format!("DROP ROLE {}", ident(&r)))
            .await
            .unwrap();
    }
}

/// The source cluster, built once for every case.
static SOURCE: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();

const MIGRATED: [&str; 7] = [
    "appdb",
    "emptydb",
    "fromtmpl",
    "icudb",
    "latin1db",
    "postgres",
    "template1",
];

/// Everything the run carries is on the target: every database's schema
/// and rows, the globals as `pg_dumpall --globals-only` prints them.
async fn assert_cluster_carried(pair: &testkit::Pair) {
    assert_same_databases(pair, &MIGRATED).await;
    let (src, dst) = (pair.source.admin_conninfo(), pair.target.admin_conninfo());
    let (a, b) = (
        normalized_globals(&pg_dumpall_globals(&src)),
        normalized_globals(&pg_dumpall_globals(&dst)),
    );
    assert!(
        a == b,
        "pg_dumpall --globals-only differs:\n{}",
        line_diff(&a, &b)
    );
    assert!(!database_names(&dst).await.contains(&"skipme_1".to_string()));
}

/// The pair, one test at a time: its source built once, its target as new.
async fn fresh_target() -> (tokio::sync::MutexGuard<'static, ()>, &'static testkit::Pair) {
    let one = ONE_AT_A_TIME.lock().await;
    (one, prepared_pair().await)
}

/// The pair with its source built (once) and its target as new.
async fn prepared_pair() -> &'static testkit::Pair {
    let pair = testkit::shared_pair();
    SOURCE.get_or_init(|| source_cluster(pair)).await;
    reset_target(pair).await;
    pair
}

/// The ICU database keeps its locale provider and locale on the target.
async fn assert_icu_kept(target_admin: &str) {
    let r = testkit::client(target_admin)
        .await
        .query_one(
            "SELECT datlocprovider::text, daticulocale::text FROM pg_database WHERE datname = 'icudb'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        (r.get::<_, String>(0), r.get::<_, Option<String>>(1)),
        ("i".to_string(), Some("en-US".to_string()))
    );
}

/// Kill the run at `spec`, resume it once, and require the whole cluster
/// on the target.
async fn kill_and_resume(spec: &str) {
    let pair = prepared_pair().await;
    let (src, dst) = (pair.source.admin_conninfo(), pair.target.admin_conninfo());
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("cluster");
    let w = work.to_str().unwrap();
    let out = command(&migrate_args(&src, &dst, w))
        .env("PG_DBMIGRATOR_TEST_KILL_AT", spec)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        None,
        "{spec}: not killed: {}",
        text(&out.stderr)
    );
    let mut args = migrate_args(&src, &dst, w);
    args.extend(["--resume", "--json"]);
    let out = run_async(&args).await;
    assert_eq!(out.status.code(), Some(0), "{spec}: {}", text(&out.stderr));
    assert_cluster_carried(pair).await;
}

/// Every fault point of the cluster orchestrator, each side, and points
/// inside one database's migration (which `tests/kill_points.rs` sweeps
/// for a single database): killed there, the run resumes on the first try.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kill_point_of_a_cluster_migration_resumes() {
    use pg_dbmigrator::faults::{Flow, Point};
    let _one = ONE_AT_A_TIME.lock().await;
    let mut specs = Vec::new();
    for p in Point::ALL
        .iter()
        .filter(|p| p.flows().contains(&Flow::Cluster))
    {
        for side in ["before", "after"] {
            specs.push(format!("{side}:{}", p.name()));
        }
    }
    assert_eq!(specs.len(), 6, "{specs:?}");
    // In the middle of the second database (after the first completed),
    // and between two databases' records.
    specs.extend([
        "before:copy_item#2".to_string(),
        "after:complete#2".to_string(),
    ]);
    for spec in &specs {
        let t0 = std::time::Instant::now();
        kill_and_resume(spec).await;
        eprintln!("{spec}: resumed in {:.1}s", t0.elapsed().as_secs_f64());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_cluster_in_one_run_killed_between_two_databases_then_resumed() {
    let (_one, pair) = fresh_target().await;
    let (src, dst) = (pair.source.admin_conninfo(), pair.target.admin_conninfo());
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("cluster");
    let w = work.to_str().unwrap();

    // The plan lists every database it would take, and is ready.
    let mut plan_args = migrate_args(&src, &dst, w);
    plan_args[0] = "plan";
    plan_args.push("--json");
    let out = run_async(&plan_args).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut planned: Vec<&str> = plan["databases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    planned.sort();
    assert_eq!(planned, MIGRATED, "{plan}");
    assert!(plan["refusals"].as_array().unwrap().is_empty(), "{plan}");

    // Killed right after the first database's migration recorded itself
    // complete, before the cluster's token says so.
    let out = command(&migrate_args(&src, &dst, w))
        .env("PG_DBMIGRATOR_TEST_KILL_AT", "after:complete#1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), None, "killed: {}", text(&out.stderr));
    // status of the interrupted cluster: what is done, what to run.
    let out = run_async(&["status", "--dump-path", w]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let shown = text(&out.stdout);
    assert!(
        shown.contains("continue with the same command and --resume"),
        "{shown}"
    );

    let mut args = migrate_args(&src, &dst, w);
    args.extend(["--resume", "--json"]);
    let out = run_async(&args).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let report = report_of(&out.stdout);
    // Each database's own events reach the cluster's stream (its copied
    // tables), and the cluster's copy progress ends at 100%.
    let events: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .collect();
    let copied: Vec<&str> = events
        .iter()
        .filter(|e| e["event"] == "item_copied")
        .filter_map(|e| e["item"].as_str())
        .collect();
    assert!(
        copied.iter().any(|i| i.contains("items")),
        "appdb's shop.items copied: {copied:?}"
    );
    let last_progress = events
        .iter()
        .rfind(|e| e["event"] == "progress")
        .expect("progress events");
    assert_eq!(last_progress["percent"], 100.0, "{last_progress}");
    assert_eq!(
        last_progress["heap_bytes_done"], last_progress["bytes_total"],
        "{last_progress}"
    );
    // The events name each database as it starts and ends.
    let started: Vec<String> = text(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["event"] == "database_started")
        .map(|e| {
            format!(
                "{} {}/{}",
                e["name"].as_str().unwrap(),
                e["number"],
                e["of"]
            )
        })
        .collect();
    assert_eq!(started.len(), MIGRATED.len(), "{started:?}");
    assert!(started[0].starts_with("template1 1/7"), "{started:?}");
    let migrated: Vec<&str> = report["databases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        migrated.first(),
        Some(&"template1"),
        "template1 first: {migrated:?}"
    );
    let mut sorted = migrated.clone();
    sorted.sort();
    assert_eq!(
        sorted, MIGRATED,
        "every database but template0 and the excluded one"
    );
    assert_cluster_carried(pair).await;
    // The killed run had applied the globals; the resumed one did not redo them.
    assert!(report["globals"].is_null(), "{}", report["globals"]);

    // Every login role logs in to the target with its own password.
    let cluster = pair.target.cluster().expect("the testkit's own target");
    require_passwords(cluster).await;
    login(cluster, "app_owner", "owner pw").await.unwrap();
    login(cluster, "Legacy \"User\"", "legacy pw")
        .await
        .unwrap();
    assert!(login(cluster, "app_owner", "wrong").await.is_err());

    // Created as the source has it: encoding and collation.
    let props = |c: String| async move {
        let r = testkit::client(&c)
            .await
            .query_one(
                "SELECT pg_encoding_to_char(encoding)::text, datcollate::text FROM pg_database WHERE datname = 'latin1db'",
                &[],
            )
            .await
            .unwrap();
        (r.get::<_, String>(0), r.get::<_, String>(1))
    };
    assert_eq!(
        props(dst.clone()).await,
        ("LATIN1".to_string(), "C".to_string())
    );
    assert_eq!(props(src.clone()).await, props(dst.clone()).await);
    assert_icu_kept(&dst).await;

    // verify --all-databases: each database and the globals, clean...
    let verify_args = [
        "verify",
        "--source",
        &src,
        "--target",
        &dst,
        "--all-databases",
        "--exclude-database",
        "skipme_*",
        "--json",
    ];
    let out = run_async(&verify_args).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v["databases"].as_array().unwrap().len(),
        MIGRATED.len(),
        "{v}"
    );
    // ... and it names what differs: a row and a role attribute.
    testkit::execute(
        &pair.target.conninfo("appdb"),
        "INSERT INTO shop.items (name) VALUES ('only on the target')",
    )
    .await
    .unwrap();
    testkit::execute(&dst, "ALTER ROLE readers CONNECTION LIMIT 5")
        .await
        .unwrap();
    let out = run_async(&verify_args).await;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stdout));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let appdb = v["databases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == "appdb")
        .unwrap();
    assert!(
        !appdb["report"]["differences"]
            .as_array()
            .unwrap()
            .is_empty(),
        "{v}"
    );
    assert!(
        v["globals"]
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g["object"].as_str().unwrap().contains("readers")),
        "{v}"
    );
    testkit::execute(
        &pair.target.conninfo("appdb"),
        "DELETE FROM shop.items WHERE name = 'only on the target'",
    )
    .await
    .unwrap();
    testkit::execute(&dst, "ALTER ROLE readers CONNECTION LIMIT -1")
        .await
        .unwrap();

    // status reads the cluster's token: every database done.
    let out = run_async(&["status", "--dump-path", w]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let shown = text(&out.stdout);
    assert!(
        shown.contains(&format!(
            "{} database(s), {} done, completed",
            MIGRATED.len(),
            MIGRATED.len()
        )),
        "{shown}"
    );

    // A finished cluster migration, resumed, is a success that does nothing.
    let out = run_async(&args).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(report_of(&out.stdout)["already_complete"], true);

    // Run again without --resume: refused, with both ways out.
    let out = run_async(&migrate_args(&src, &dst, w)).await;
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("--resume") && err.contains("--force-clean"),
        "{err}"
    );
}

/// 15 to 17 (the npm embedded binaries): every database's rows, verify's
/// checksums and the globals' comparison clean, and the login roles log
/// in with their own passwords. (pg_dump 15 cannot read a 17 server and
/// the embedded packages carry no pg_dump, so the schema is checked by
/// verify and the catalogs rather than by `pg_dump -s`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_cluster_into_postgresql_17() {
    use pg_dbmigrator::testkit::{Cluster, ClusterOptions};
    let _one = ONE_AT_A_TIME.lock().await;
    let pair = testkit::shared_pair();
    SOURCE.get_or_init(|| source_cluster(pair)).await;
    let target = tokio::task::spawn_blocking(|| {
        let bin = testkit::ensure_embedded_major(17)
            .unwrap_or_else(|e| panic!("PostgreSQL 17 binaries: {e}"));
        Cluster::start(&ClusterOptions {
            bin_dir: Some(bin),
            ..Default::default()
        })
        .unwrap_or_else(|e| panic!("PostgreSQL 17 cluster: {e}"))
    })
    .await
    .unwrap();
    let (src, dst) = (pair.source.admin_conninfo(), target.conninfo("postgres"));
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("cluster17");
    let mut args = migrate_args(&src, &dst, work.to_str().unwrap());
    args.push("--json");
    let out = run_async(&args).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let report = report_of(&out.stdout);
    assert_eq!(
        report["databases"].as_array().unwrap().len(),
        MIGRATED.len()
    );
    for name in MIGRATED {
        assert_eq!(
            content_digest(&pair.source.conninfo(name)).await,
            content_digest(&target.conninfo(name)).await,
            "rows of database {name}"
        );
    }
    let out = run_async(&[
        "verify",
        "--source",
        &src,
        "--target",
        &dst,
        "--all-databases",
        "--exclude-database",
        "skipme_*",
    ])
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    require_passwords(&target).await;
    login(&target, "app_owner", "owner pw").await.unwrap();
    login(&target, "Legacy \"User\"", "legacy pw")
        .await
        .unwrap();
    assert!(login(&target, "app_owner", "wrong").await.is_err());
}

/// A source role that is not a superuser (it may read every table, not
/// `pg_authid`): the run warns naming every login role whose password
/// it cannot carry, and carries everything else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_superuser_source_carries_all_but_the_passwords() {
    let (_one, pair) = fresh_target().await;
    let admin = pair.source.admin_conninfo();
    testkit::execute(
        &admin,
        "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'mover') THEN \
           CREATE ROLE mover LOGIN PASSWORD 'mover pw' CREATEROLE; \
           GRANT pg_read_all_settings TO mover; \
         END IF; END $$",
    )
    .await
    .unwrap();
    // What it may read, granted table by table (pg_read_all_data would
    // let it read pg_authid too).
    for name in MIGRATED {
        testkit::execute(
            &pair.source.conninfo(name),
            "DO $$ DECLARE s text; l oid; BEGIN \
               FOR s IN SELECT nspname FROM pg_namespace WHERE nspname NOT LIKE 'pg_%' AND nspname <> 'information_schema' LOOP \
                 EXECUTE format('GRANT USAGE ON SCHEMA %I TO mover', s); \
                 EXECUTE format('GRANT SELECT ON ALL TABLES IN SCHEMA %I TO mover', s); \
                 EXECUTE format('GRANT SELECT ON ALL SEQUENCES IN SCHEMA %I TO mover', s); \
               END LOOP; \
               FOR l IN SELECT oid FROM pg_largeobject_metadata LOOP \
                 EXECUTE format('GRANT SELECT ON LARGE OBJECT %s TO mover', l); \
               END LOOP; END $$",
        )
        .await
        .unwrap();
    }
    let cluster = pair.source.cluster().expect("the testkit's own source");
    let src = format!(
        "host=127.0.0.1 port={} user=mover password='mover pw' dbname=postgres sslmode=disable",
        cluster.port
    );
    let dst = pair.target.admin_conninfo();
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("nonsuper");
    let mut args = migrate_args(&src, &dst, work.to_str().unwrap());
    args.push("--json");
    let out = run_async(&args).await;
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    let report = report_of(&out.stdout);
    let without: Vec<&str> = report["globals"]["without_password"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    for role in ["app_owner", "Legacy \"User\""] {
        assert!(without.contains(&role), "{without:?}");
        assert!(err.contains(role), "no warning names {role}: {err}");
    }
    let _ = testkit::execute(&dst, "DROP OWNED BY mover; DROP ROLE IF EXISTS mover").await;
    for name in MIGRATED {
        assert_eq!(
            content_digest(&pair.source.conninfo(name)).await,
            content_digest(&pair.target.conninfo(name)).await,
            "rows of database {name}"
        );
    }
}

/// `dump --all-databases` (killed after its second database, then
/// resumed), carried as a directory, then `restore --all-databases`: the
/// same cluster as a direct migration, the globals file private.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_cluster_through_an_archive() {
    let (_one, pair) = fresh_target().await;
    let (src, dst) = (pair.source.admin_conninfo(), pair.target.admin_conninfo());
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("cluster-archive");
    let a = archive.to_str().unwrap();
    let dump = [
        "dump",
        "--all-databases",
        "--source",
        &src,
        "--dump-path",
        a,
        "--exclude-database",
        "skipme_*",
        "--jobs",
        "2",
    ];
    let out = command(&dump)
        .env("PG_DBMIGRATOR_TEST_KILL_AT", "after:cluster_database#2")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), None, "not killed: {}", text(&out.stderr));
    let mut again = dump.to_vec();
    again.push("--resume");
    let out = run_async(&again).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(archive.join("globals.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(
            mode & 0o077,
            0,
            "globals.json holds password hashes: {mode:o}"
        );
    }
    let out = run_async(&[
        "restore",
        "--all-databases",
        "--target",
        &dst,
        "--dump-path",
        a,
        "--jobs",
        "2",
    ])
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_cluster_carried(pair).await;
    assert_icu_kept(&dst).await;
}
