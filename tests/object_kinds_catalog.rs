//! Catalog-level object kinds (text search objects, ...) rebuilt from the
//! source's catalogs: `pg_dump --schema-only` of source and target must be
//! identical, owners, comments and privileges included.

mod common;

use common::*;
use pg_dbmigrator::testkit;
use pg_dbmigrator::EndpointConfig;

/// A non-superuser owner, created on both servers (idempotent, race-safe).
const OWNER_SQL: &str = "DO $$BEGIN
   IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'okc_owner') THEN CREATE ROLE okc_owner; END IF;
 EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
 END$$;";

async fn assert_rebuilds(prefix: &str, sql: &str) -> (String, String) {
    let db = testkit::shared_pair().fresh_db(prefix).await;
    for side in [&db.source, &db.target] {
        testkit::execute(side, OWNER_SQL).await.expect("owner role");
    }
    testkit::execute(&db.source, sql)
        .await
        .expect("loading the fixture on the source");
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
    assert!(a == b, "schema dumps differ: {}", diff_hint(&a, &b));
    (a, b)
}

const TEXT_SEARCH: &str = "
CREATE SCHEMA fts;
CREATE TEXT SEARCH PARSER fts.prs (
    START = pg_catalog.prsd_start, GETTOKEN = pg_catalog.prsd_nexttoken,
    END = pg_catalog.prsd_end, LEXTYPES = pg_catalog.prsd_lextype,
    HEADLINE = pg_catalog.prsd_headline);
COMMENT ON TEXT SEARCH PARSER fts.prs IS 'a parser of our own';
CREATE TEXT SEARCH TEMPLATE fts.tmpl (INIT = pg_catalog.dsimple_init, LEXIZE = pg_catalog.dsimple_lexize);
COMMENT ON TEXT SEARCH TEMPLATE fts.tmpl IS 'a template of our own';
CREATE TEXT SEARCH DICTIONARY fts.plain (TEMPLATE = pg_catalog.simple, STOPWORDS = english, ACCEPT = false);
COMMENT ON TEXT SEARCH DICTIONARY fts.plain IS 'simple, with stop words';
ALTER TEXT SEARCH DICTIONARY fts.plain OWNER TO okc_owner;
CREATE TEXT SEARCH DICTIONARY fts.mine (TEMPLATE = fts.tmpl);
CREATE TEXT SEARCH DICTIONARY fts.stems (TEMPLATE = snowball, LANGUAGE = english);
CREATE TEXT SEARCH CONFIGURATION fts.cfg (PARSER = fts.prs);
ALTER TEXT SEARCH CONFIGURATION fts.cfg ADD MAPPING FOR asciiword, word WITH fts.plain, fts.stems;
ALTER TEXT SEARCH CONFIGURATION fts.cfg ADD MAPPING FOR int, uint WITH fts.mine;
ALTER TEXT SEARCH CONFIGURATION fts.cfg ADD MAPPING FOR email WITH simple;
ALTER TEXT SEARCH CONFIGURATION fts.cfg OWNER TO okc_owner;
COMMENT ON TEXT SEARCH CONFIGURATION fts.cfg IS 'configuration with mappings';
CREATE TEXT SEARCH CONFIGURATION public.copy_of_english (COPY = pg_catalog.english);
ALTER TEXT SEARCH CONFIGURATION public.copy_of_english ALTER MAPPING FOR asciiword WITH fts.plain, english_stem;
CREATE TABLE fts.docs (id int PRIMARY KEY, body text,
    tsv tsvector GENERATED ALWAYS AS (to_tsvector('fts.cfg'::regconfig, body)) STORED);
CREATE INDEX docs_tsv ON fts.docs USING gin (tsv);
";

#[tokio::test]
async fn text_search_objects_rebuild_identically() {
    let (dump, _) = assert_rebuilds("okc_ts", TEXT_SEARCH).await;
    // The dump really holds the objects (a rebuild of nothing would also be identical).
    for needle in [
        "CREATE TEXT SEARCH PARSER fts.prs",
        "CREATE TEXT SEARCH TEMPLATE fts.tmpl",
        "CREATE TEXT SEARCH DICTIONARY fts.plain",
        "ALTER TEXT SEARCH DICTIONARY fts.plain OWNER TO okc_owner;",
        "ADD MAPPING FOR email WITH simple;",
        "COMMENT ON TEXT SEARCH CONFIGURATION fts.cfg",
        "CREATE TEXT SEARCH CONFIGURATION public.copy_of_english",
    ] {
        assert!(dump.contains(needle), "{needle} missing from:\n{dump}");
    }
}

const FOREIGN: &str = "
CREATE EXTENSION postgres_fdw;
CREATE FOREIGN DATA WRAPPER okc_wrapper HANDLER public.postgres_fdw_handler OPTIONS (debug 'true', mode 'fast');
COMMENT ON FOREIGN DATA WRAPPER okc_wrapper IS 'a wrapper of our own';
GRANT USAGE ON FOREIGN DATA WRAPPER okc_wrapper TO PUBLIC;
CREATE FOREIGN DATA WRAPPER okc_bare VALIDATOR pg_catalog.postgresql_fdw_validator;
CREATE SERVER okc_remote TYPE 'postgresql' VERSION '15' FOREIGN DATA WRAPPER postgres_fdw
    OPTIONS (host 'db.example', port '5433', dbname 'remote db');
COMMENT ON SERVER okc_remote IS 'the remote side';
GRANT USAGE ON FOREIGN SERVER okc_remote TO okc_owner WITH GRANT OPTION;
CREATE SERVER okc_other FOREIGN DATA WRAPPER okc_wrapper;
ALTER SERVER okc_other OWNER TO okc_owner;
CREATE USER MAPPING FOR PUBLIC SERVER okc_remote OPTIONS (user 'reader', password 'it''s secret');
CREATE USER MAPPING FOR okc_owner SERVER okc_remote OPTIONS (user 'owner');
CREATE USER MAPPING FOR okc_owner SERVER okc_other;
";

#[tokio::test]
async fn foreign_wrappers_servers_and_user_mappings_rebuild_identically() {
    let (dump, _) = assert_rebuilds("okc_fdw", FOREIGN).await;
    for needle in [
        "CREATE FOREIGN DATA WRAPPER okc_wrapper HANDLER public.postgres_fdw_handler OPTIONS (",
        "CREATE FOREIGN DATA WRAPPER okc_bare VALIDATOR postgresql_fdw_validator;",
        "GRANT ALL ON FOREIGN DATA WRAPPER okc_wrapper TO PUBLIC;",
        "CREATE SERVER okc_remote TYPE 'postgresql' VERSION '15' FOREIGN DATA WRAPPER postgres_fdw OPTIONS (",
        "GRANT ALL ON FOREIGN SERVER okc_remote TO okc_owner WITH GRANT OPTION;",
        "CREATE USER MAPPING FOR public SERVER okc_remote OPTIONS (",
        "password 'it''s secret'",
        "CREATE USER MAPPING FOR okc_owner SERVER okc_other;",
    ] {
        assert!(dump.contains(needle), "{needle} missing from:\n{dump}");
    }
}

const PUBLICATIONS: &str = "
CREATE SCHEMA okc_pub;
CREATE TABLE okc_pub.orders (id int PRIMARY KEY, region text, total numeric, secret text);
CREATE TABLE okc_pub.parted (id int, at date) PARTITION BY RANGE (at);
CREATE TABLE okc_pub.parted_2026 PARTITION OF okc_pub.parted FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
CREATE SCHEMA okc_pub_all;
CREATE TABLE okc_pub_all.log (id int);
CREATE PUBLICATION okc_filtered FOR TABLE okc_pub.orders (id, region, total) WHERE (region = 'eu' AND total > 10)
    WITH (publish = 'insert, update');
COMMENT ON PUBLICATION okc_filtered IS 'EU orders, no secrets';
ALTER PUBLICATION okc_filtered OWNER TO okc_owner;
CREATE PUBLICATION okc_rooted FOR TABLE okc_pub.parted WITH (publish_via_partition_root = true);
CREATE PUBLICATION okc_schema FOR TABLES IN SCHEMA okc_pub_all, TABLE okc_pub.orders WITH (publish = 'delete, truncate');
CREATE PUBLICATION okc_everything FOR ALL TABLES;
CREATE PUBLICATION okc_empty;
";

#[tokio::test]
async fn publications_rebuild_identically() {
    let (dump, _) = assert_rebuilds("okc_pub", PUBLICATIONS).await;
    for needle in [
        "CREATE PUBLICATION okc_filtered WITH (publish = 'insert, update');",
        "ALTER PUBLICATION okc_filtered ADD TABLE ONLY okc_pub.orders (id, region, total) WHERE (",
        "COMMENT ON PUBLICATION okc_filtered IS 'EU orders, no secrets';",
        "ALTER PUBLICATION okc_filtered OWNER TO okc_owner;",
        "publish_via_partition_root = true",
        "ALTER PUBLICATION okc_schema ADD TABLES IN SCHEMA okc_pub_all;",
        "CREATE PUBLICATION okc_everything FOR ALL TABLES WITH (publish = 'insert, update, delete, truncate');",
        "CREATE PUBLICATION okc_empty WITH (",
    ] {
        assert!(dump.contains(needle), "{needle} missing from:\n{dump}");
    }
}

const SUBSCRIPTIONS: &str = "
CREATE SUBSCRIPTION okc_sub CONNECTION 'host=okc.invalid dbname=shop user=repl'
    PUBLICATION okc_a, \"okc B\"
    WITH (connect = false, slot_name = 'okc_slot', binary = true, streaming = on, synchronous_commit = 'local');
COMMENT ON SUBSCRIPTION okc_sub IS 'from the shop';
CREATE SUBSCRIPTION okc_bare CONNECTION 'host=okc.invalid' PUBLICATION okc_a WITH (connect = false);
";

async fn drop_subscriptions(conninfo: &str) {
    let _ = testkit::execute(
        conninfo,
        "ALTER SUBSCRIPTION okc_sub SET (slot_name = NONE); DROP SUBSCRIPTION okc_sub;
         DROP SUBSCRIPTION okc_bare;",
    )
    .await;
}

/// Subscriptions come over disabled and unconnected (as pg_dump makes
/// them); `--no-subscriptions` leaves them out.
#[tokio::test]
async fn subscriptions_rebuild_disabled_or_are_left_out() {
    let db = testkit::shared_pair().fresh_db("okc_sub").await;
    testkit::execute(&db.source, SUBSCRIPTIONS)
        .await
        .expect("subscriptions on the source");
    let source = EndpointConfig::parse(&db.source).unwrap();
    let target = EndpointConfig::parse(&db.target).unwrap();
    let without = pg_dbmigrator::schema::read_with(
        &source,
        None,
        &pg_dbmigrator::schema::ReadOptions {
            no_subscriptions: true,
            ..Default::default()
        },
    )
    .await
    .expect("reading the schema");
    let sql = without.to_sql(&[
        pg_dbmigrator::schema::Part::PreData,
        pg_dbmigrator::schema::Part::PostData,
    ]);
    assert!(!sql.contains("SUBSCRIPTION"), "{sql}");
    let script = pg_dbmigrator::schema::read(&source, None)
        .await
        .expect("reading the schema");
    assert!(script.unsupported.is_empty(), "{:?}", script.unsupported);
    let applied = pg_dbmigrator::schema::apply_all(&target, &script).await;
    let (a, b) = (schema_dump(&db.source), schema_dump(&db.target));
    let enabled = testkit::query_scalar(
        &db.target,
        "SELECT string_agg(subname || ':' || subenabled, ',' ORDER BY subname) FROM pg_subscription
          WHERE subdbid = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .await;
    drop_subscriptions(&db.source).await;
    drop_subscriptions(&db.target).await;
    applied.expect("applying the schema");
    assert!(a == b, "schema dumps differ: {}", diff_hint(&a, &b));
    assert_eq!(enabled, "okc_bare:false,okc_sub:false");
    for needle in [
        "CREATE SUBSCRIPTION okc_sub CONNECTION 'host=okc.invalid dbname=shop user=repl' PUBLICATION okc_a, \"okc B\" WITH (connect = false, slot_name = 'okc_slot', binary = true, streaming = on, synchronous_commit = local);",
        "COMMENT ON SUBSCRIPTION okc_sub IS 'from the shop';",
        "CREATE SUBSCRIPTION okc_bare CONNECTION 'host=okc.invalid' PUBLICATION okc_a WITH (connect = false, slot_name = 'okc_bare');",
    ] {
        assert!(a.contains(needle), "{needle} missing from:\n{a}");
    }
}

const FOREIGN_TABLES: &str = "
CREATE SCHEMA okc_ft;
CREATE FOREIGN DATA WRAPPER okc_ftw;
CREATE SERVER okc_fts FOREIGN DATA WRAPPER okc_ftw OPTIONS (host 'remote.invalid');
CREATE FOREIGN TABLE okc_ft.remote_orders (
    id int OPTIONS (column_name 'order_id') NOT NULL,
    note text COLLATE \"C\" DEFAULT 'none',
    qty int CHECK (qty > 0)
) SERVER okc_fts OPTIONS (schema_name 'shop', table_name 'orders');
COMMENT ON FOREIGN TABLE okc_ft.remote_orders IS 'orders, read through the wrapper';
COMMENT ON COLUMN okc_ft.remote_orders.qty IS 'how many';
ALTER FOREIGN TABLE okc_ft.remote_orders OWNER TO okc_owner;
GRANT SELECT ON okc_ft.remote_orders TO PUBLIC;
CREATE FOREIGN TABLE okc_ft.bare () SERVER okc_fts;
CREATE TABLE okc_ft.measure (id int, at date) PARTITION BY RANGE (at);
CREATE TABLE okc_ft.measure_new PARTITION OF okc_ft.measure FOR VALUES FROM ('2020-01-01') TO ('2030-01-01');
CREATE FOREIGN TABLE okc_ft.measure_old PARTITION OF okc_ft.measure
    FOR VALUES FROM ('2000-01-01') TO ('2020-01-01') SERVER okc_fts OPTIONS (table_name 'measure_archive');
INSERT INTO okc_ft.measure VALUES (1, '2024-05-01'), (2, '2025-06-01');
";

#[tokio::test]
async fn foreign_tables_rebuild_identically() {
    let (dump, _) = assert_rebuilds("okc_ftab", FOREIGN_TABLES).await;
    for needle in [
        "CREATE FOREIGN TABLE okc_ft.remote_orders (",
        "SERVER okc_fts",
        "table_name 'orders'",
        "column_name 'order_id'",
        "COMMENT ON FOREIGN TABLE okc_ft.remote_orders IS",
        "ALTER FOREIGN TABLE okc_ft.remote_orders OWNER TO okc_owner;",
        "GRANT SELECT ON TABLE okc_ft.remote_orders TO PUBLIC;",
        "ATTACH PARTITION okc_ft.measure_old FOR VALUES FROM ('2000-01-01') TO ('2020-01-01');",
    ] {
        assert!(dump.contains(needle), "{needle} missing from:\n{dump}");
    }
}

/// A full migration copies the local rows and not the foreign ones (they
/// live on the remote server), and verify is clean.
#[tokio::test]
async fn full_migration_with_foreign_tables_copies_local_rows_only() {
    let db = testkit::shared_pair().fresh_db("okc_ftm").await;
    for side in [&db.source, &db.target] {
        testkit::execute(side, OWNER_SQL).await.expect("owner role");
    }
    testkit::execute(&db.source, FOREIGN_TABLES)
        .await
        .expect("fixture");
    let target = other_target_db(&db, "new");
    let report = migrate_clean(&db.source, &target, &[]).await;
    assert_eq!(
        testkit::query_scalar(&target, "SELECT count(*) FROM ONLY okc_ft.measure_new").await,
        "2"
    );
    let (a, b) = (schema_dump(&db.source), schema_dump(&target));
    assert!(a == b, "schema dumps differ: {}", diff_hint(&a, &b));
    assert!(report.is_object(), "{report}");
}

/// A child created after its parent's NOT VALID check inherited it valid:
/// the target's copy is valid too (the catalogs say so; pg_dump -s does
/// not print inherited constraints).
#[tokio::test]
async fn inherited_constraints_keep_their_validity() {
    let sql = "CREATE TABLE public.ip (a int, b int);
               INSERT INTO public.ip VALUES (-1, 1);
               ALTER TABLE public.ip ADD CONSTRAINT a_positive CHECK (a > 0) NOT VALID;
               CREATE TABLE public.ic () INHERITS (public.ip);
               INSERT INTO public.ic VALUES (2, 2);";
    let db = testkit::shared_pair().fresh_db("okc_inhvalid").await;
    testkit::execute(&db.source, sql).await.unwrap();
    let target = other_target_db(&db, "new");
    migrate_clean(&db.source, &target, &[]).await;
    let validity = |ci: String| async move {
        testkit::query_scalar(
            &ci,
            "SELECT string_agg(conrelid::regclass || ' ' || conname || ' ' || convalidated, ', '
                               ORDER BY conrelid::regclass::text)
               FROM pg_constraint WHERE contype = 'c' AND connamespace = 'public'::regnamespace",
        )
        .await
    };
    let (a, b) = (validity(db.source.clone()).await, validity(target).await);
    assert_eq!(a, "ic a_positive true, ip a_positive false");
    assert_eq!(a, b);
}
