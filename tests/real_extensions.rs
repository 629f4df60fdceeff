//! Real extensions from Debian's packages (installed by `.ci/run`, else by
//! the testkit on first use, else the test fails naming the command): a
//! database that uses each is migrated whole, and `pg_dump -s`, every
//! table's rows (the extensions' configuration tables included: the user's
//! SRID in PostGIS's `spatial_ref_sys`, pg_partman's `part_config`) and
//! verify all agree.

mod common;

use common::*;
use pg_dbmigrator::testkit;

/// Install (via the testkit) or fail naming the command that installs
/// them: these tests never pass without the extensions they test.
async fn need(exts: &[(&str, &str)]) {
    testkit::shared_pair()
        .ensure_extensions(exts)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
}

/// Rows of a query, as text, for comparing both sides.
async fn rows(conninfo: &str, sql: &str) -> String {
    testkit::query_scalar(
        conninfo,
        &format!(
            "SELECT coalesce(string_agg(x::text, E'\\n' ORDER BY x::text), '') FROM ({sql}) x"
        ),
    )
    .await
}

async fn migrate_and_compare(db: &testkit::TestDb, suffix: &str, extra: &[&str], checks: &[&str]) {
    let target = other_target_db(db, suffix);
    migrate_clean(&db.source, &target, extra).await;
    let (a, b) = (schema_dump(&db.source), schema_dump(&target));
    assert!(a == b, "schema dumps differ: {}", diff_hint(&a, &b));
    assert_eq!(
        content_digest(&db.source).await,
        content_digest(&target).await,
        "table contents differ"
    );
    for sql in checks {
        let (s, t) = (rows(&db.source, sql).await, rows(&target, sql).await);
        assert!(!s.is_empty(), "{sql}: no rows on the source");
        assert_eq!(s, t, "{sql}");
    }
}

#[tokio::test]
async fn postgis_with_a_user_srid() {
    need(&[("postgis", "postgis-3")]).await;
    let db = testkit::shared_pair().fresh_db("ext_postgis").await;
    testkit::execute(
        &db.source,
        "CREATE EXTENSION postgis;
         INSERT INTO spatial_ref_sys (srid, auth_name, auth_srid, srtext, proj4text)
              VALUES (990001, 'local', 990001, '', '+proj=longlat +datum=WGS84 +no_defs');
         CREATE TABLE places (id int PRIMARY KEY, name text, geom geometry(Point, 4326), area geography(Polygon, 4326));
         CREATE INDEX places_geom ON places USING gist (geom);
         CREATE INDEX places_area ON places USING gist (area);
         INSERT INTO places SELECT g, 'p' || g, ST_SetSRID(ST_MakePoint(g * 0.01, g * 0.02), 4326),
                ST_Buffer(ST_SetSRID(ST_MakePoint(g * 0.01, 1), 4326)::geography, 100)::geography
           FROM generate_series(1, 200) g;
         CREATE TABLE local_points (id int PRIMARY KEY, geom geometry(Point, 990001));
         INSERT INTO local_points VALUES (1, ST_SetSRID(ST_MakePoint(1, 2), 990001));",
    )
    .await
    .unwrap();
    let checks = [
        "SELECT srid, proj4text FROM spatial_ref_sys WHERE srid = 990001",
        "SELECT count(*) FROM spatial_ref_sys",
        "SELECT id, ST_AsText(geom), ST_Area(area)::int FROM places",
        "SELECT ST_SRID(geom) FROM local_points",
    ];
    migrate_and_compare(&db, "bin", &[], &checks).await;
    migrate_and_compare(&db, "txt", &["--copy-format", "text"], &checks).await;
    // Through the archive: dump writes the user's configuration rows too.
    migrate_and_compare(&db, "arc", &["--copy-method", "dump"], &checks).await;
}

#[tokio::test]
async fn pg_partman_with_create_parent() {
    need(&[("pg_partman", "partman")]).await;
    let db = testkit::shared_pair().fresh_db("ext_partman").await;
    testkit::execute(
        &db.source,
        "CREATE SCHEMA partman;
         CREATE EXTENSION pg_partman SCHEMA partman;
         CREATE TABLE public.events (id bigint NOT NULL, at timestamptz NOT NULL, payload text) PARTITION BY RANGE (at);
         SELECT partman.create_parent(p_parent_table => 'public.events', p_control => 'at',
                                      p_type => 'native', p_interval => 'daily', p_premake => 2,
                                      p_start_partition => '2026-11-28');
         INSERT INTO public.events SELECT g, timestamptz '2026-11-28' + g * interval '1 hour', 'e' || g
           FROM generate_series(1, 60) g;",
    )
    .await
    .unwrap();
    let checks = [
        "SELECT parent_table, control, partition_interval, premake FROM partman.part_config",
        "SELECT count(*) FROM public.events",
        "SELECT inhrelid::regclass::text FROM pg_inherits WHERE inhparent = 'public.events'::regclass",
    ];
    migrate_and_compare(&db, "bin", &[], &checks).await;
    migrate_and_compare(&db, "txt", &["--copy-format", "text"], &checks).await;
    // Through the archive: dump writes the user's configuration rows too.
    migrate_and_compare(&db, "arc", &["--copy-method", "dump"], &checks).await;
}

/// Extensions with their own types, operators and index support.
#[tokio::test]
async fn ip4r_prefix_semver_and_hll() {
    need(&[
        ("ip4r", "ip4r"),
        ("prefix", "prefix"),
        ("semver", "semver"),
        ("hll", "hll"),
    ])
    .await;
    let db = testkit::shared_pair().fresh_db("ext_types").await;
    testkit::execute(
        &db.source,
        "CREATE EXTENSION ip4r; CREATE EXTENSION prefix; CREATE EXTENSION semver; CREATE EXTENSION hll;
         CREATE TABLE nets (id int PRIMARY KEY, net ip4r NOT NULL, addr ip4, any_net iprange);
         CREATE INDEX nets_gist ON nets USING gist (net);
         INSERT INTO nets SELECT g, ('10.' || g || '.0.0/16')::ip4r, ('192.168.0.' || g)::ip4, ('10.' || g || '.0.0/24')::iprange
           FROM generate_series(1, 200) g;
         CREATE TABLE routes (id int PRIMARY KEY, pfx prefix_range NOT NULL);
         CREATE INDEX routes_gist ON routes USING gist (pfx);
         INSERT INTO routes SELECT g, ('0' || g)::prefix_range FROM generate_series(1, 200) g;
         CREATE TABLE releases (id int PRIMARY KEY, v semver UNIQUE);
         INSERT INTO releases SELECT g, ('1.' || g || '.0')::semver FROM generate_series(1, 200) g;
         CREATE TABLE visitors (day date PRIMARY KEY, users hll);
         INSERT INTO visitors SELECT d::date, (SELECT hll_add_agg(hll_hash_integer(x)) FROM generate_series(1, 50) x)
           FROM generate_series(date '2026-11-01', date '2026-11-30', interval '1 day') d;",
    )
    .await
    .unwrap();
    let checks = [
        "SELECT id FROM nets WHERE net >>= '10.7.1.1'::ip4",
        "SELECT id FROM routes WHERE pfx @> '0123'",
        "SELECT max(v)::text FROM releases",
        "SELECT day, hll_cardinality(users)::int FROM visitors",
    ];
    migrate_and_compare(&db, "bin", &[], &checks).await;
    migrate_and_compare(&db, "txt", &["--copy-format", "text"], &checks).await;
}
