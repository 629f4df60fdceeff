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
CREATE FUNCTION kt.label_recv(internal) RETURNS kt.label LANGUAGE internal STABLE STRICT AS 'textrecv';
CREATE FUNCTION kt.label_send(kt.label) RETURNS bytea LANGUAGE internal STABLE STRICT AS 'textsend';
CREATE FUNCTION kt.label_tmin(cstring[]) RETURNS int4 LANGUAGE internal IMMUTABLE STRICT AS 'varchartypmodin';
CREATE FUNCTION kt.label_tmout(int4) RETURNS cstring LANGUAGE internal IMMUTABLE STRICT AS 'varchartypmodout';
CREATE FUNCTION kt.label_analyze(internal) RETURNS bool LANGUAGE internal STRICT AS 'array_typanalyze';
CREATE TYPE kt.label (INPUT = kt.label_in, OUTPUT = kt.label_out, INTERNALLENGTH = VARIABLE,
    STORAGE = extended, COLLATABLE = true, CATEGORY = 'S', PREFERRED = true, ALIGNMENT = int4);
-- The same I/O with binary, typmod and analyze functions, under a quoted name.
CREATE TYPE kt.\"Long Label\";
CREATE FUNCTION kt.\"Long Label In\"(cstring) RETURNS kt.\"Long Label\" LANGUAGE internal IMMUTABLE STRICT AS 'textin';
CREATE FUNCTION kt.long_out(kt.\"Long Label\") RETURNS cstring LANGUAGE internal IMMUTABLE STRICT AS 'textout';
CREATE FUNCTION kt.long_recv(internal) RETURNS kt.\"Long Label\" LANGUAGE internal STABLE STRICT AS 'textrecv';
CREATE FUNCTION kt.long_send(kt.\"Long Label\") RETURNS bytea LANGUAGE internal STABLE STRICT AS 'textsend';
CREATE TYPE kt.\"Long Label\" (INPUT = kt.\"Long Label In\", OUTPUT = kt.long_out,
    RECEIVE = kt.long_recv, SEND = kt.long_send, TYPMOD_IN = kt.label_tmin, TYPMOD_OUT = kt.label_tmout,
    STORAGE = main, ALIGNMENT = double);
-- An analyze function (never run: no table stores this one).
CREATE TYPE kt.analyzed;
CREATE FUNCTION kt.analyzed_in(cstring) RETURNS kt.analyzed LANGUAGE internal IMMUTABLE STRICT AS 'int4in';
CREATE FUNCTION kt.analyzed_out(kt.analyzed) RETURNS cstring LANGUAGE internal IMMUTABLE STRICT AS 'int4out';
CREATE TYPE kt.analyzed (INPUT = kt.analyzed_in, OUTPUT = kt.analyzed_out, INTERNALLENGTH = 4,
    PASSEDBYVALUE, ANALYZE = kt.label_analyze);
COMMENT ON TYPE kt.\"Long Label\" IS 'with every function';
CREATE TYPE kt.pair;
CREATE FUNCTION kt.pair_in(cstring) RETURNS kt.pair LANGUAGE internal IMMUTABLE STRICT AS 'point_in';
CREATE FUNCTION kt.pair_out(kt.pair) RETURNS cstring LANGUAGE internal IMMUTABLE STRICT AS 'point_out';
CREATE TYPE kt.pair (INPUT = kt.pair_in, OUTPUT = kt.pair_out, INTERNALLENGTH = 16,
    ALIGNMENT = double, ELEMENT = float8, STORAGE = plain);
CREATE DOMAIN kt.small_code AS kt.code;
-- Operators and a btree class over the base type, so a range can be built on it.
CREATE FUNCTION kt.code_lt(kt.code, kt.code) RETURNS bool LANGUAGE internal IMMUTABLE STRICT AS 'int4lt';
CREATE FUNCTION kt.code_le(kt.code, kt.code) RETURNS bool LANGUAGE internal IMMUTABLE STRICT AS 'int4le';
CREATE FUNCTION kt.code_eq(kt.code, kt.code) RETURNS bool LANGUAGE internal IMMUTABLE STRICT AS 'int4eq';
CREATE FUNCTION kt.code_ge(kt.code, kt.code) RETURNS bool LANGUAGE internal IMMUTABLE STRICT AS 'int4ge';
CREATE FUNCTION kt.code_gt(kt.code, kt.code) RETURNS bool LANGUAGE internal IMMUTABLE STRICT AS 'int4gt';
CREATE FUNCTION kt.code_cmp(kt.code, kt.code) RETURNS int LANGUAGE internal IMMUTABLE STRICT AS 'btint4cmp';
CREATE FUNCTION kt.code_diff(kt.code, kt.code) RETURNS float8 LANGUAGE internal IMMUTABLE STRICT AS 'int4range_subdiff';
CREATE OPERATOR kt.< (FUNCTION = kt.code_lt, LEFTARG = kt.code, RIGHTARG = kt.code);
CREATE OPERATOR kt.<= (FUNCTION = kt.code_le, LEFTARG = kt.code, RIGHTARG = kt.code);
CREATE OPERATOR kt.= (FUNCTION = kt.code_eq, LEFTARG = kt.code, RIGHTARG = kt.code, MERGES);
CREATE OPERATOR kt.>= (FUNCTION = kt.code_ge, LEFTARG = kt.code, RIGHTARG = kt.code);
CREATE OPERATOR kt.> (FUNCTION = kt.code_gt, LEFTARG = kt.code, RIGHTARG = kt.code);
CREATE OPERATOR CLASS kt.code_ops DEFAULT FOR TYPE kt.code USING btree AS
    OPERATOR 1 kt.<, OPERATOR 2 kt.<=, OPERATOR 3 kt.=, OPERATOR 4 kt.>=, OPERATOR 5 kt.>,
    FUNCTION 1 kt.code_cmp(kt.code, kt.code);
CREATE TYPE kt.coderange AS RANGE (subtype = kt.code, subtype_diff = kt.code_diff, multirange_type_name = kt.codes);
COMMENT ON TYPE kt.coderange IS 'ranges of codes';
CREATE TYPE kt.ir;
CREATE FUNCTION kt.ir_canon(kt.ir) RETURNS kt.ir LANGUAGE internal IMMUTABLE STRICT AS 'int4range_canonical';
CREATE TYPE kt.ir AS RANGE (subtype = int4, canonical = kt.ir_canon);
CREATE TABLE kt.items (id int PRIMARY KEY, c kt.code, cs kt.code[], l kt.label, p kt.pair, r kt.ir, cr kt.coderange,
    ll kt.\"Long Label\"(12));
CREATE INDEX items_c ON kt.items (c);
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
CREATE FUNCTION app.a_things_count() RETURNS bigint LANGUAGE sql STABLE
    BEGIN ATOMIC SELECT count(*) FROM app.zz_things; END;
ALTER TABLE app.zz_things ADD COLUMN seen bigint DEFAULT app.a_things_count();
CREATE FUNCTION app.a_outer() RETURNS bigint LANGUAGE sql STABLE
    BEGIN ATOMIC SELECT app.a_things_count() + 1; END;
ALTER TABLE app.zz_things ADD COLUMN hops bigint DEFAULT app.a_outer();
ALTER TABLE app.zz_things ALTER COLUMN rank SET DEFAULT app.a_next_rank(),
    ALTER COLUMN seed SET DEFAULT app.a_seed(NULL::app.zz_things);
CREATE FUNCTION app.a_valid(app.zz_things) RETURNS bool LANGUAGE sql IMMUTABLE AS 'SELECT $1.id > 0';
ALTER TABLE app.zz_things ADD CONSTRAINT zz_things_valid CHECK (app.a_valid(zz_things));
COMMENT ON CONSTRAINT zz_things_valid ON app.zz_things IS 'checked through the row type';
CREATE FUNCTION app.a_key(app.users) RETURNS text LANGUAGE sql IMMUTABLE AS 'SELECT lower($1.last)';
CREATE INDEX users_key ON app.users (app.a_key(users));
ALTER TABLE app.users ENABLE ROW LEVEL SECURITY;
CREATE POLICY users_named ON app.users USING (app.a_key(users) <> '');
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

/// A composite money type with its own operators (prefix too), a default
/// btree and hash class, a reverse class in a family of another name,
/// loose cross-type members added to a family, and an index using a class.
const OPERATORS: &str = "
CREATE SCHEMA ops;
CREATE TYPE ops.money2 AS (amount numeric, currency text);
CREATE FUNCTION ops.m_lt(ops.money2, ops.money2) RETURNS bool LANGUAGE sql IMMUTABLE AS 'SELECT ($1).amount < ($2).amount';
CREATE FUNCTION ops.m_le(ops.money2, ops.money2) RETURNS bool LANGUAGE sql IMMUTABLE AS 'SELECT ($1).amount <= ($2).amount';
CREATE FUNCTION ops.m_eq(ops.money2, ops.money2) RETURNS bool LANGUAGE sql IMMUTABLE AS 'SELECT ($1).amount = ($2).amount';
CREATE FUNCTION ops.m_ne(ops.money2, ops.money2) RETURNS bool LANGUAGE sql IMMUTABLE AS 'SELECT ($1).amount <> ($2).amount';
CREATE FUNCTION ops.m_ge(ops.money2, ops.money2) RETURNS bool LANGUAGE sql IMMUTABLE AS 'SELECT ($1).amount >= ($2).amount';
CREATE FUNCTION ops.m_gt(ops.money2, ops.money2) RETURNS bool LANGUAGE sql IMMUTABLE AS 'SELECT ($1).amount > ($2).amount';
CREATE FUNCTION ops.m_cmp(ops.money2, ops.money2) RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT CASE WHEN ($1).amount < ($2).amount THEN -1 WHEN ($1).amount > ($2).amount THEN 1 ELSE 0 END';
CREATE FUNCTION ops.m_rcmp(ops.money2, ops.money2) RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT ops.m_cmp($2, $1)';
CREATE FUNCTION ops.m_hash(ops.money2) RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT hashtext(($1).amount::text)';
CREATE FUNCTION ops.m_neg(ops.money2) RETURNS ops.money2 LANGUAGE sql IMMUTABLE AS 'SELECT ROW(-($1).amount, ($1).currency)::ops.money2';
CREATE FUNCTION ops.mn_lt(ops.money2, numeric) RETURNS bool LANGUAGE sql IMMUTABLE AS 'SELECT ($1).amount < $2';
CREATE FUNCTION ops.mn_cmp(ops.money2, numeric) RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT CASE WHEN ($1).amount < $2 THEN -1 WHEN ($1).amount > $2 THEN 1 ELSE 0 END';
CREATE OPERATOR ops.< (FUNCTION = ops.m_lt, LEFTARG = ops.money2, RIGHTARG = ops.money2,
    COMMUTATOR = OPERATOR(ops.>), NEGATOR = OPERATOR(ops.>=), RESTRICT = scalarltsel, JOIN = scalarltjoinsel);
CREATE OPERATOR ops.<= (FUNCTION = ops.m_le, LEFTARG = ops.money2, RIGHTARG = ops.money2,
    COMMUTATOR = OPERATOR(ops.>=), NEGATOR = OPERATOR(ops.>), RESTRICT = scalarlesel, JOIN = scalarlejoinsel);
CREATE OPERATOR ops.= (FUNCTION = ops.m_eq, LEFTARG = ops.money2, RIGHTARG = ops.money2,
    COMMUTATOR = OPERATOR(ops.=), NEGATOR = OPERATOR(ops.<>), RESTRICT = eqsel, JOIN = eqjoinsel, HASHES, MERGES);
CREATE OPERATOR ops.<> (FUNCTION = ops.m_ne, LEFTARG = ops.money2, RIGHTARG = ops.money2,
    COMMUTATOR = OPERATOR(ops.<>), NEGATOR = OPERATOR(ops.=), RESTRICT = neqsel, JOIN = neqjoinsel);
CREATE OPERATOR ops.>= (FUNCTION = ops.m_ge, LEFTARG = ops.money2, RIGHTARG = ops.money2,
    COMMUTATOR = OPERATOR(ops.<=), NEGATOR = OPERATOR(ops.<), RESTRICT = scalargesel, JOIN = scalargejoinsel);
CREATE OPERATOR ops.> (FUNCTION = ops.m_gt, LEFTARG = ops.money2, RIGHTARG = ops.money2,
    COMMUTATOR = OPERATOR(ops.<), NEGATOR = OPERATOR(ops.<=), RESTRICT = scalargtsel, JOIN = scalargtjoinsel);
CREATE OPERATOR ops.~- (FUNCTION = ops.m_neg, RIGHTARG = ops.money2);
CREATE OPERATOR ops.< (FUNCTION = ops.mn_lt, LEFTARG = ops.money2, RIGHTARG = numeric);
COMMENT ON OPERATOR ops.< (ops.money2, ops.money2) IS 'less money';
COMMENT ON OPERATOR ops.~- (NONE, ops.money2) IS 'owed';
ALTER OPERATOR ops.~- (NONE, ops.money2) OWNER TO dbm_kt_owner;
CREATE OPERATOR CLASS ops.money2_ops DEFAULT FOR TYPE ops.money2 USING btree AS
    OPERATOR 1 ops.<, OPERATOR 2 ops.<=, OPERATOR 3 ops.=, OPERATOR 4 ops.>=, OPERATOR 5 ops.>,
    FUNCTION 1 ops.m_cmp(ops.money2, ops.money2);
ALTER OPERATOR FAMILY ops.money2_ops USING btree ADD
    OPERATOR 1 ops.< (ops.money2, numeric),
    FUNCTION 1 (ops.money2, numeric) ops.mn_cmp(ops.money2, numeric);
COMMENT ON OPERATOR FAMILY ops.money2_ops USING btree IS 'money order';
COMMENT ON OPERATOR CLASS ops.money2_ops USING btree IS 'by amount';
ALTER OPERATOR CLASS ops.money2_ops USING btree OWNER TO dbm_kt_owner;
CREATE OPERATOR CLASS ops.money2_hash DEFAULT FOR TYPE ops.money2 USING hash AS
    OPERATOR 1 ops.=, FUNCTION 1 ops.m_hash(ops.money2);
CREATE OPERATOR FAMILY ops.reverse_fam USING btree;
ALTER OPERATOR FAMILY ops.reverse_fam USING btree OWNER TO dbm_kt_owner;
CREATE OPERATOR CLASS ops.money2_rev FOR TYPE ops.money2 USING btree FAMILY ops.reverse_fam AS
    OPERATOR 1 ops.>, OPERATOR 2 ops.>=, OPERATOR 3 ops.=, OPERATOR 4 ops.<=, OPERATOR 5 ops.<,
    FUNCTION 1 ops.m_rcmp(ops.money2, ops.money2);
-- A GiST class with STORAGE and an ordering operator, over built-in support functions.
CREATE OPERATOR CLASS ops.box_overlap FOR TYPE box USING gist AS
    STORAGE box,
    OPERATOR 3 &&, OPERATOR 7 @>,
    OPERATOR 15 <->(box, point) FOR ORDER BY pg_catalog.float_ops,
    FUNCTION 1 gist_box_consistent(internal, box, smallint, oid, internal),
    FUNCTION 2 gist_box_union(internal, internal),
    FUNCTION 5 gist_box_penalty(internal, internal, internal),
    FUNCTION 6 gist_box_picksplit(internal, internal),
    FUNCTION 7 gist_box_same(box, box, internal),
    FUNCTION 8 gist_box_distance(internal, box, smallint, oid, internal);
-- An aggregate sorting by a user operator (created before operators by priority).
CREATE FUNCTION ops.m_larger(ops.money2, ops.money2) RETURNS ops.money2 LANGUAGE sql IMMUTABLE
    AS 'SELECT CASE WHEN ($1).amount >= ($2).amount THEN $1 ELSE $2 END';
CREATE AGGREGATE ops.max_money(ops.money2) (SFUNC = ops.m_larger, STYPE = ops.money2, SORTOP = OPERATOR(ops.>));
-- Names that need quoting; a family with loose members and no class.
CREATE SCHEMA \"My Ops\";
CREATE FUNCTION \"My Ops\".eq_ci(text, text) RETURNS bool LANGUAGE sql IMMUTABLE AS 'SELECT lower($1) = lower($2)';
CREATE FUNCTION \"My Ops\".\"Hash CI\"(text) RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT hashtext(lower($1))';
CREATE OPERATOR \"My Ops\".=~= (FUNCTION = \"My Ops\".eq_ci, LEFTARG = text, RIGHTARG = text,
    COMMUTATOR = OPERATOR(\"My Ops\".=~=), HASHES);
CREATE OPERATOR CLASS \"My Ops\".\"Text CI\" FOR TYPE text USING hash AS
    OPERATOR 1 \"My Ops\".=~=, FUNCTION 1 \"My Ops\".\"Hash CI\"(text);
CREATE OPERATOR FAMILY \"My Ops\".\"Loose Only\" USING hash;
ALTER OPERATOR FAMILY \"My Ops\".\"Loose Only\" USING hash ADD
    OPERATOR 1 \"My Ops\".=~= (text, text), FUNCTION 1 \"My Ops\".\"Hash CI\"(text);
COMMENT ON OPERATOR FAMILY \"My Ops\".\"Loose Only\" USING hash IS 'no class';
CREATE TABLE ops.wallet (id int PRIMARY KEY, m ops.money2, area box, note text);
CREATE INDEX wallet_note_ci ON ops.wallet USING hash (note \"My Ops\".\"Text CI\");
CREATE INDEX wallet_area ON ops.wallet USING gist (area ops.box_overlap);
CREATE INDEX wallet_m_rev ON ops.wallet (m ops.money2_rev);
CREATE INDEX wallet_m_hash ON ops.wallet USING hash (m);
";

#[tokio::test]
async fn operators_families_and_classes_rebuild() {
    assert_rebuilds("kt_ops", OPERATORS).await;
}

/// Casts of every method and context, a conversion, a language that is not
/// an extension (over plpgsql's handlers) with a function in it and a
/// transform for it, index and table access methods with a class and a
/// table and materialized view stored through the new table method.
const CASTS_AND_MORE: &str = "
CREATE SCHEMA cx;
CREATE TYPE cx.tag AS (v text);
CREATE FUNCTION cx.tag_len(cx.tag) RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT length(($1).v)';
CREATE CAST (cx.tag AS int4) WITH FUNCTION cx.tag_len(cx.tag) AS ASSIGNMENT;
CREATE CAST (cx.tag AS text) WITH INOUT AS IMPLICIT;
CREATE TYPE cx.mood AS ENUM ('sad', 'happy');
CREATE CAST (cx.mood AS varchar) WITH INOUT;
CREATE TYPE cx.word;
CREATE FUNCTION cx.word_in(cstring) RETURNS cx.word LANGUAGE internal IMMUTABLE STRICT AS 'int4in';
CREATE FUNCTION cx.word_out(cx.word) RETURNS cstring LANGUAGE internal IMMUTABLE STRICT AS 'int4out';
CREATE TYPE cx.word (INPUT = cx.word_in, OUTPUT = cx.word_out, INTERNALLENGTH = 4, PASSEDBYVALUE);
CREATE CAST (cx.word AS int4) WITHOUT FUNCTION AS IMPLICIT;
CREATE CAST (int4 AS cx.word) WITHOUT FUNCTION;
COMMENT ON CAST (cx.tag AS int4) IS 'length of the tag';
CREATE CONVERSION cx.latin_up FOR 'LATIN1' TO 'UTF8' FROM iso8859_1_to_utf8;
COMMENT ON CONVERSION cx.latin_up IS 'mine';
ALTER CONVERSION cx.latin_up OWNER TO dbm_kt_owner;
CREATE TRUSTED LANGUAGE plkt HANDLER plpgsql_call_handler INLINE plpgsql_inline_handler VALIDATOR plpgsql_validator;
COMMENT ON LANGUAGE plkt IS 'plpgsql under another name';
ALTER LANGUAGE plkt OWNER TO dbm_kt_owner;
REVOKE USAGE ON LANGUAGE plkt FROM PUBLIC;
GRANT USAGE ON LANGUAGE plkt TO dbm_kt_user;
CREATE LANGUAGE plkt_bare HANDLER plpgsql_call_handler;
CREATE FUNCTION cx.one() RETURNS int LANGUAGE plkt AS $$BEGIN RETURN 1; END$$;
CREATE FUNCTION cx.tag_from_sql(internal) RETURNS internal LANGUAGE internal IMMUTABLE STRICT AS 'int4recv';
CREATE FUNCTION cx.tag_to_sql(internal) RETURNS cx.tag LANGUAGE internal IMMUTABLE STRICT AS 'int4recv';
CREATE TRANSFORM FOR cx.tag LANGUAGE plkt (FROM SQL WITH FUNCTION cx.tag_from_sql(internal), TO SQL WITH FUNCTION cx.tag_to_sql(internal));
CREATE TRANSFORM FOR cx.mood LANGUAGE plkt (FROM SQL WITH FUNCTION cx.tag_from_sql(internal));
COMMENT ON TRANSFORM FOR cx.tag LANGUAGE plkt IS 'tags in plkt';
CREATE ACCESS METHOD heap2 TYPE TABLE HANDLER heap_tableam_handler;
CREATE ACCESS METHOD bt2 TYPE INDEX HANDLER bthandler;
COMMENT ON ACCESS METHOD heap2 IS 'heap again';
CREATE OPERATOR CLASS cx.int4_bt2 DEFAULT FOR TYPE int4 USING bt2 AS
    OPERATOR 1 <, OPERATOR 2 <=, OPERATOR 3 =, OPERATOR 4 >=, OPERATOR 5 >, FUNCTION 1 btint4cmp(int4, int4);
CREATE TABLE cx.stored (id int, t cx.tag) USING heap2 WITH (fillfactor = 80);
CREATE MATERIALIZED VIEW cx.stored_ids USING heap2 AS SELECT id FROM cx.stored WITH NO DATA;
CREATE TABLE cx.plain (id int);
";

#[tokio::test]
async fn casts_conversions_transforms_languages_access_methods_rebuild() {
    assert_rebuilds("kt_casts", CASTS_AND_MORE).await;
}

/// Aggregates: every plain option (moving-aggregate ones, serialization,
/// SORTOP, PARALLEL), ordered-set and hypothetical-set ones.
const AGGREGATES: &str = "
CREATE SCHEMA agg;
CREATE AGGREGATE agg.avg4(int4) (
    SFUNC = int4_avg_accum, STYPE = int8[], SSPACE = 16, INITCOND = '{0,0}',
    FINALFUNC = int8_avg, FINALFUNC_MODIFY = READ_ONLY, COMBINEFUNC = int4_avg_combine,
    MSFUNC = int4_avg_accum, MINVFUNC = int4_avg_accum_inv, MSTYPE = int8[], MSSPACE = 16,
    MFINALFUNC = int8_avg, MFINALFUNC_MODIFY = SHAREABLE, MINITCOND = '{0,0}', PARALLEL = SAFE);
CREATE AGGREGATE agg.sum8(int8) (
    SFUNC = int8_avg_accum, STYPE = internal, SSPACE = 48, FINALFUNC = numeric_poly_sum,
    COMBINEFUNC = int8_avg_combine, SERIALFUNC = int8_avg_serialize, DESERIALFUNC = int8_avg_deserialize,
    MSFUNC = int8_avg_accum, MINVFUNC = int8_avg_accum_inv, MSTYPE = internal, MSSPACE = 48,
    MFINALFUNC = numeric_poly_sum, PARALLEL = RESTRICTED);
CREATE AGGREGATE agg.biggest(int4) (SFUNC = int4larger, STYPE = int4, SORTOP = >, COMBINEFUNC = int4larger);
CREATE AGGREGATE agg.pick(float8 ORDER BY anyelement) (
    SFUNC = ordered_set_transition, STYPE = internal, FINALFUNC = percentile_disc_final, FINALFUNC_EXTRA);
CREATE AGGREGATE agg.where_would(VARIADIC \"any\" ORDER BY VARIADIC \"any\") (
    SFUNC = ordered_set_transition_multi, STYPE = internal, FINALFUNC = rank_final, FINALFUNC_EXTRA,
    FINALFUNC_MODIFY = SHAREABLE, HYPOTHETICAL, PARALLEL = SAFE);
CREATE AGGREGATE agg.most_common(ORDER BY anyelement) (
    SFUNC = ordered_set_transition, STYPE = internal, FINALFUNC = mode_final, FINALFUNC_EXTRA,
    FINALFUNC_MODIFY = READ_ONLY);
COMMENT ON AGGREGATE agg.pick(float8 ORDER BY anyelement) IS 'a percentile';
ALTER AGGREGATE agg.pick(float8 ORDER BY anyelement) OWNER TO dbm_kt_owner;
ALTER AGGREGATE agg.biggest(int4) OWNER TO dbm_kt_owner;
REVOKE EXECUTE ON FUNCTION agg.biggest(int4) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION agg.biggest(int4) TO dbm_kt_user;
";

#[tokio::test]
async fn aggregates_of_every_kind_rebuild() {
    assert_rebuilds("kt_aggs", AGGREGATES).await;
}

/// Rows in a table of base-type columns (one without binary I/O) and a
/// table whose defaults call functions over its own row type.
const DATA: &str = "
INSERT INTO kt.items VALUES
    (1, '7', '{1;2;3}', 'first', '(1,2)', '[1,5)', '[2,9)', 'twelve chars'),
    (2, '-3', NULL, 'zweite', NULL, 'empty', NULL, NULL),
    (3, NULL, '{}', NULL, '(3.5,-4)', NULL, 'empty', 'short');
INSERT INTO app.users VALUES (1, 'Ada', 'Lovelace'), (2, 'Alan', 'Turing');
INSERT INTO app.zz_things (id) VALUES (1), (2);
INSERT INTO app.c_log VALUES (1, ROW(1, 'Ada', 'Lovelace')::app.users);
";

async fn migrate_types_and_row_functions(prefix: &str, extra: &[&str]) {
    let db = fresh(prefix, &format!("{BASE_TYPE}{ROW_TYPE}{DATA}")).await;
    let target = other_target_db(&db, "m");
    let report = migrate_clean(&db.source, &target, extra).await;
    assert!(report["schema_steps"].as_u64().unwrap() > 20, "{report:#}");
    let (a, b) = (schema_dump(&db.source), schema_dump(&target));
    assert!(a == b, "schema dumps differ: {}", diff_hint(&a, &b));
    assert_eq!(
        content_digest(&db.source).await,
        content_digest(&target).await
    );
    // The row-type defaults and functions work on the target.
    testkit::execute(&target, "INSERT INTO app.zz_things (id) VALUES (3)")
        .await
        .unwrap();
    let got = testkit::query_scalar(
        &target,
        "SELECT string_agg(app.a_full_name(u) || '/' || app.a_initials(u), ',' ORDER BY id) FROM app.users u",
    )
    .await;
    assert_eq!(got, "Ada Lovelace/AL,Alan Turing/AT");
    let ranks = testkit::query_scalar(
        &target,
        "SELECT string_agg(rank || ':' || seed, ',' ORDER BY id) FROM app.zz_things",
    )
    .await;
    let src_ranks = testkit::query_scalar(
        &db.source,
        "SELECT string_agg(rank || ':' || seed, ',' ORDER BY id) FROM app.zz_things",
    )
    .await;
    assert_eq!(ranks, format!("{src_ranks},9:7"));
}

#[tokio::test]
async fn migrate_base_types_and_row_type_functions_binary_copy() {
    migrate_types_and_row_functions("kt_mig_bin", &[]).await;
}

#[tokio::test]
async fn migrate_base_types_and_row_type_functions_text_copy() {
    migrate_types_and_row_functions("kt_mig_txt", &["--copy-format", "text"]).await;
}

/// Extensions bring operators, classes, families, casts and types of their
/// own: those come with CREATE EXTENSION and are never created one by one;
/// user objects built on them (a cast, an operator, a class, a function
/// over an extension type) still are, after the extension.
const ON_EXTENSIONS: &str = "
CREATE EXTENSION citext;
CREATE EXTENSION cube;
CREATE SCHEMA ux;
CREATE TYPE ux.handle AS (name citext);
CREATE FUNCTION ux.handle_of(citext) RETURNS ux.handle LANGUAGE sql IMMUTABLE AS 'SELECT ROW($1)::ux.handle';
CREATE CAST (citext AS ux.handle) WITH FUNCTION ux.handle_of(citext);
CREATE FUNCTION ux.cube_far(cube, cube) RETURNS bool LANGUAGE sql IMMUTABLE AS 'SELECT cube_distance($1, $2) > 10';
CREATE OPERATOR ux.<<>> (FUNCTION = ux.cube_far, LEFTARG = cube, RIGHTARG = cube, COMMUTATOR = OPERATOR(ux.<<>>));
CREATE FUNCTION ux.ci_cmp_rev(citext, citext) RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT citext_cmp($2, $1)';
CREATE OPERATOR CLASS ux.citext_rev FOR TYPE citext USING btree AS
    OPERATOR 1 >(citext, citext), OPERATOR 3 =(citext, citext), OPERATOR 5 <(citext, citext),
    FUNCTION 1 ux.ci_cmp_rev(citext, citext);
CREATE TABLE ux.people (id int, nick citext, spot cube);
CREATE INDEX people_nick_rev ON ux.people (nick ux.citext_rev);
";

#[tokio::test]
async fn user_objects_on_extension_kinds_rebuild_without_the_members() {
    assert_rebuilds("kt_ext", ON_EXTENSIONS).await;
}

/// Owners of these kinds (and a language's grantees) are roles the
/// migration needs: missing on the target, they are named before anything
/// is written.
#[tokio::test]
async fn missing_owners_of_these_kinds_are_refused() {
    let only_source = [
        "dbm_kt_src_family_owner",
        "dbm_kt_src_operator_owner",
        "dbm_kt_src_language_owner",
        "dbm_kt_src_language_user",
        "dbm_kt_src_conversion_owner",
    ];
    let db = testkit::shared_pair().fresh_db("kt_roles").await;
    let create: String = only_source
        .iter()
        .map(|r| {
            format!(
                "DO $$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = {}) THEN CREATE ROLE {}; END IF;
                 EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END$$;",
                literal(r),
                ident(r)
            )
        })
        .collect();
    testkit::execute(&db.source, &create).await.unwrap();
    testkit::execute(
        &db.source,
        "CREATE SCHEMA o;
         CREATE OPERATOR FAMILY o.fam USING hash;
         ALTER OPERATOR FAMILY o.fam USING hash OWNER TO dbm_kt_src_family_owner;
         CREATE FUNCTION o.f(int, int) RETURNS bool LANGUAGE sql AS 'SELECT $1 = $2';
         CREATE OPERATOR o.=== (FUNCTION = o.f, LEFTARG = int, RIGHTARG = int);
         ALTER OPERATOR o.=== (int, int) OWNER TO dbm_kt_src_operator_owner;
         CREATE TRUSTED LANGUAGE plo HANDLER plpgsql_call_handler;
         ALTER LANGUAGE plo OWNER TO dbm_kt_src_language_owner;
         GRANT USAGE ON LANGUAGE plo TO dbm_kt_src_language_user;
         CREATE CONVERSION o.conv FOR 'LATIN1' TO 'UTF8' FROM iso8859_1_to_utf8;
         ALTER CONVERSION o.conv OWNER TO dbm_kt_src_conversion_owner;",
    )
    .await
    .unwrap();
    let target = other_target_db(&db, "r");
    let out = run_async(&["-q", "migrate", "--source", &db.source, "--target", &target]).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    for r in only_source {
        assert!(err.contains(r), "{r} not named: {err}");
    }
}
