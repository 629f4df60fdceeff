//! `pg_dbmigrator plan` / `migrate --dry-run`: what a migration would do,
//! every problem with its fix, and proof that it changed nothing on either
//! server (catalogs compared before and after).

mod common;

use common::{other_target_db, rich_db, run_async, text};
use pg_dbmigrator::testkit;

/// What a plan could change, on one server: relations (with replica
/// identity), namespaces, publications, this database's slots and
/// settings, large objects, databases.
async fn fingerprint(conninfo: &str) -> String {
    let c = testkit::client(conninfo).await;
    c.query_one(
        "SELECT concat_ws(' | ',
            (SELECT string_agg(c.oid::text || c.relname || c.relreplident::text || c.relkind::text, ',' ORDER BY c.oid) FROM pg_class c),
            (SELECT string_agg(nspname, ',' ORDER BY oid) FROM pg_namespace),
            (SELECT string_agg(pubname, ',' ORDER BY oid) FROM pg_publication),
            (SELECT string_agg(slot_name, ',' ORDER BY slot_name) FROM pg_replication_slots WHERE database = current_database()),
            (SELECT string_agg(array_to_string(setconfig, ';'), ',') FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase WHERE d.datname = current_database()),
            (SELECT string_agg(oid::text, ',' ORDER BY oid) FROM pg_largeobject_metadata),
            (SELECT string_agg(datname, ',' ORDER BY datname) FROM pg_database))",
        &[],
    )
    .await
    .unwrap()
    .get(0)
}

/// Online, data-only, into the rich fixture's schema: the plan lists the
/// table without a key (with the fix), the large objects and the unlogged
/// table, refuses without --fix-replica-identity, and changes nothing.
#[tokio::test]
async fn online_plan_lists_problems_with_fixes_and_changes_nothing() {
    let db = rich_db("plan_online").await;
    let before = (fingerprint(&db.source).await, fingerprint(&db.target).await);
    let out = run_async(&[
        "plan",
        "--mode",
        "online",
        "--data-only",
        "--source",
        &db.source,
        "--target",
        &db.target,
        "--jobs",
        "2",
    ])
    .await;
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(2),
        "not ready: {stdout}\n{}",
        text(&out.stderr)
    );
    for needle in [
        "NOT READY",
        "app.no_pk_dupes",
        "--fix-replica-identity",
        "large object",
        "app.unlogged_cache",
        "create the publication",
        "create the logical replication slot",
        "REPLICA IDENTITY FULL",
        "default_transaction_read_only",
        "copy speed sample",
        "estimated copy time",
        // The test servers run 15: no table is split, and the plan says why.
        "split: 0 table(s) cut into page ranges (the target is PostgreSQL 15",
    ] {
        assert!(
            stdout.contains(needle),
            "the plan lacks {needle:?}:\n{stdout}"
        );
    }
    let after = (fingerprint(&db.source).await, fingerprint(&db.target).await);
    assert_eq!(before.0, after.0, "the plan changed the source");
    assert_eq!(before.1, after.1, "the plan changed the target");

    // With the fix it is ready; --json for scripts; `migrate --dry-run` is the same.
    let out = run_async(&[
        "migrate",
        "--dry-run",
        "--json",
        "--mode",
        "online",
        "--data-only",
        "--fix-replica-identity",
        "--source",
        &db.source,
        "--target",
        &db.target,
    ])
    .await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(plan["refusals"].as_array().unwrap().len(), 0, "{plan:#}");
    assert!(plan["tables"].as_array().unwrap().len() >= 20, "{plan:#}");
    assert!(
        plan["sample"]["through_target"].as_bool().unwrap(),
        "{plan:#}"
    );
    assert!(plan["estimated_copy_seconds"].as_f64().unwrap() >= 0.0);
    let after = (fingerprint(&db.source).await, fingerprint(&db.target).await);
    assert_eq!(before, after, "the dry run changed a server");
}

/// A full migration into a database that does not exist yet: the plan says
/// it would create it, samples the source's read speed only, and creates
/// nothing; a non-empty target is refused with its fix.
#[tokio::test]
async fn full_plan_into_an_absent_database_creates_nothing() {
    let db = rich_db("plan_full").await;
    let absent = other_target_db(&db, "new");
    let before = fingerprint(&db.target).await;
    let out = run_async(&[
        "plan", "--roles", "--source", &db.source, "--target", &absent,
    ])
    .await;
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        text(&out.stderr)
    );
    for needle in [
        "create the database",
        "schema objects",
        "reading the source only",
    ] {
        assert!(
            stdout.contains(needle),
            "the plan lacks {needle:?}:\n{stdout}"
        );
    }
    assert_eq!(
        before,
        fingerprint(&db.target).await,
        "no database may appear"
    );

    // The fixture's target already holds the schema: not empty.
    let out = run_async(&[
        "plan", "--roles", "--source", &db.source, "--target", &db.target,
    ])
    .await;
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{stdout}");
    assert!(
        stdout.contains("not empty") && stdout.contains("--force-clean"),
        "{stdout}"
    );
}
