//! Object kinds beyond tables and plain types (issue 11): base types made
//! through shell types, functions over table row types, operators and
//! their classes and families, casts, conversions, transforms, languages,
//! access methods and aggregates of every kind. Each fixture is rebuilt on
//! an empty target from the catalogs, and `pg_dump -s` of source and target
//! must be identical; two run the whole `migrate` CLI with data.

mod common;

use common::*;
use pg_dbmigrator::pg::quote::{ident, literal};
use pg_dbmigrator::testkit;
use pg_dbmigrator::EndpointConfig;

/// A non-superuser owner and a grantee, present on both clusters.
const ROLES: &[&str] = &["dbm_kt_owner", "dbm_kt_user"];

fn roles_sql() -> String {
    ROLES
        .iter()
        .map(|r| {
            format!(
                "DO $$BEGIN
                   IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = {lit}) THEN
                     CREATE ROLE {id};
                   END IF;
                 EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
                 END$$;",
                lit = literal(r),
                id = ident(r)
            )
        })
        .collect()
}

async fn fresh(prefix: &str, sql: &str) -> testkit::TestDb {
    let db = testkit::shared_pair().fresh_db(prefix).await;
    for ci in [&db.source, &db.target] {
        testkit::execute(ci, &roles_sql()).await.expect("roles");
    }
    testkit::execute(&db.source, sql)
        .await
        .expect("loading the fixture on the source");
    db
}

async fn assert_rebuilds(prefix: &str, sql: &str) -> testkit::TestDb {
    let db = fresh(prefix, sql).await;
    let source = EndpointConfig::parse(&db.source).unwrap();
    let target = EndpointConfig::parse(&db.target).unwrap();
    let script = pg_dbmigrator::schema::read(&source, None)
        .await
        .expect("reading the schema");
    assert!(script.warnings.is_empty(), "{:?}", script.warnings);
    assert!(
        script.unsupported.is_empty(),
        "refused: {:?}",
        script.unsupported
    );
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
    db
}

/// A base type over int4's internal I/O, with every option, an array of it
/// in a table, a domain and a range over it.
const BASE_TYPE: &str = "
CREATE SCHEMA kt;
CREATE TYPE kt.code;
CREATE FUNCTION kt.code_in(cstring) RETURNS kt.code LANGUAGE internal IMMUTABLE STRICT AS 'int4in';
CREATE FUNCTION kt.code_out(kt.code) RETURNS cstring LANGUAGE internal IMMUTABLE STRICT AS 'int4out';
CREATE FUNCTION kt.code_recv(internal) RETURNS kt.code LANGUAGE internal IMMUTABLE STRICT AS 'int4recv';
CREATE FUNCTION kt.code_send(kt.code) RETURNS bytea LANGUAGE internal IMMUTABLE STRICT AS 'int4send';
CREATE TYPE kt.code (
    INPUT = kt.code_in, OUTPUT = kt.code_out, RECEIVE = kt.code_recv, SEND = kt.code_send,
    INTERNALLENGTH = 4, PASSEDBYVALUE, ALIGNMENT = int4, STORAGE = plain,
    CATEGORY = 'N', PREFERRED = false, DEFAULT = '42', DELIMITER = ';'
);
COMMENT ON TYPE kt.code IS 'a four-byte code';
ALTER TYPE kt.code OWNER TO dbm_kt_owner;
REVOKE USAGE ON TYPE kt.code FROM PUBLIC;
GRANT USAGE ON TYPE kt.code TO dbm_kt_user;
-- A varlena, collatable one over text's I/O, with an element type.
CREATE TYPE kt.label;
CREATE FUNCTION kt.label_in(cstring) RETURNS kt.label LANGUAGE internal IMMUTABLE STRICT AS 'textin';
CREATE FUNCTION kt.label_out(kt.label) RETURNS cstring LANGUAGE internal IMMUTABLE STRICT AS 'textout';
CREATE TYPE kt.label (INPUT = kt.label_in, OUTPUT = kt.label_out, INTERNALLENGTH = VARIABLE,
    STORAGE = extended, COLLATABLE = true, CATEGORY = 'S', PREFERRED = true, ALIGNMENT = int4);
CREATE TYPE kt.pair;
CREATE FUNCTION kt.pair_in(cstring) RETURNS kt.pair LANGUAGE internal IMMUTABLE STRICT AS 'int8in';
CREATE FUNCTION kt.pair_out(kt.pair) RETURNS cstring LANGUAGE internal IMMUTABLE STRICT AS 'int8out';
CREATE TYPE kt.pair (INPUT = kt.pair_in, OUTPUT = kt.pair_out, INTERNALLENGTH = 8,
    ALIGNMENT = double, ELEMENT = int4, STORAGE = plain);
CREATE DOMAIN kt.small_code AS kt.code;
CREATE FUNCTION kt.code_diff(kt.code, kt.code) RETURNS float8 LANGUAGE sql IMMUTABLE
    AS 'SELECT ($1::text::int4 - $2::text::int4)::float8';
CREATE TYPE kt.coderange AS RANGE (subtype = int4, subtype_diff = int4range_subdiff);
CREATE TYPE kt.ir;
CREATE FUNCTION kt.ir_canon(kt.ir) RETURNS kt.ir LANGUAGE internal IMMUTABLE STRICT AS 'int4range_canonical';
CREATE TYPE kt.ir AS RANGE (subtype = int4, canonical = kt.ir_canon);
CREATE TABLE kt.items (id int PRIMARY KEY, c kt.code, cs kt.code[], l kt.label, p kt.pair, r kt.ir);
";

#[tokio::test]
async fn base_types_through_shell_types_rebuild() {
    assert_rebuilds("kt_base", BASE_TYPE).await;
}

/// Functions over row types of tables that come later in name order, in
/// SQL and PL/pgSQL, returning SETOF, used by a view, a domain over
/// the row type's array and a column default looping back to its table.
const ROW_TYPE: &str = "
CREATE SCHEMA app;
CREATE TABLE app.users (id int PRIMARY KEY, first text NOT NULL, last text NOT NULL);
ALTER TABLE app.users OWNER TO dbm_kt_owner;
CREATE TABLE app.zz_things (id int PRIMARY KEY, rank int, seed int);
CREATE FUNCTION app.a_full_name(app.users) RETURNS text LANGUAGE sql STABLE
    AS 'SELECT $1.first || '' '' || $1.last';
CREATE FUNCTION app.a_initials(u app.users) RETURNS text LANGUAGE plpgsql AS $$
BEGIN RETURN left(u.first, 1) || left(u.last, 1); END $$;
CREATE FUNCTION app.a_active() RETURNS SETOF app.users LANGUAGE sql
    AS 'SELECT * FROM app.users WHERE id > 0';
CREATE FUNCTION app.a_count(app.users[]) RETURNS int LANGUAGE sql AS 'SELECT cardinality($1)';
CREATE FUNCTION app.a_seed(app.zz_things) RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT 7';
CREATE FUNCTION app.a_next_rank() RETURNS int LANGUAGE plpgsql AS $$
BEGIN RETURN app.a_seed(NULL::app.zz_things) + (SELECT count(*) FROM app.zz_things); END $$;
ALTER TABLE app.zz_things ALTER COLUMN rank SET DEFAULT app.a_next_rank(),
    ALTER COLUMN seed SET DEFAULT app.a_seed(NULL::app.zz_things);
CREATE VIEW app.b_names AS SELECT app.a_full_name(u) AS n FROM app.users u;
CREATE DOMAIN app.user_list AS app.users[];
CREATE TABLE app.c_log (id int, who app.users);
COMMENT ON FUNCTION app.a_full_name(app.users) IS 'computed column';
ALTER FUNCTION app.a_full_name(app.users) OWNER TO dbm_kt_owner;
REVOKE EXECUTE ON FUNCTION app.a_full_name(app.users) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION app.a_full_name(app.users) TO dbm_kt_user;
";

#[tokio::test]
async fn functions_over_row_types_of_later_tables_rebuild() {
    assert_rebuilds("kt_rowtype", ROW_TYPE).await;
}
