//! The schema engine against pg_dump as the oracle: rebuild a source schema
//! on an empty target from the catalogs, then `pg_dump --schema-only` of
//! both must be identical.

mod common;

use common::*;
use pg_dbmigrator::testkit;
use pg_dbmigrator::EndpointConfig;

async fn assert_rebuilds(prefix: &str, sql: &str) {
    let db = testkit::shared_pair().fresh_db(prefix).await;
    testkit::execute(&db.source, sql)
        .await
        .expect("loading the schema on the source");
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
}

#[tokio::test]
async fn demo_schema_rebuilds_identically() {
    assert_rebuilds("sch_demo", &fixture("demo_schema.sql")).await;
}

#[tokio::test]
async fn core_schema_rebuilds_identically() {
    assert_rebuilds("sch_core", &fixture("schema_core.sql")).await;
}

/// The CLI prints the DDL; applied by psql (as a DBA would) it gives the same schema.
#[tokio::test]
async fn schema_command_output_applies_with_psql() {
    let db = testkit::shared_pair().fresh_db("sch_cli").await;
    testkit::execute(&db.source, &fixture("schema_core.sql"))
        .await
        .unwrap();
    let out = run(&["-q", "schema", "--source", &db.source]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let sql = text(&out.stdout);
    assert!(sql.contains("CREATE TABLE core.customers"), "{sql}");
    let psql = testkit::find_bin_dir().unwrap().join("psql");
    let applied = std::process::Command::new(psql)
        .args([
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            &db.target,
            "-c",
            &sql,
        ])
        .output()
        .unwrap();
    assert!(applied.status.success(), "psql: {}", text(&applied.stderr));
    let (a, b) = (schema_dump(&db.source), schema_dump(&db.target));
    assert!(a == b, "schema dumps differ: {}", diff_hint(&a, &b));

    // --section pre-data has no indexes; post-data has no CREATE TABLE.
    let pre = text(
        &run(&[
            "-q",
            "schema",
            "--source",
            &db.source,
            "--section",
            "pre-data",
        ])
        .stdout,
    );
    let post = text(
        &run(&[
            "-q",
            "schema",
            "--source",
            &db.source,
            "--section",
            "post-data",
        ])
        .stdout,
    );
    assert!(pre.contains("CREATE TABLE") && !pre.contains("CREATE INDEX"));
    assert!(post.contains("CREATE INDEX") && !post.contains("CREATE TABLE"));
}

/// Grants of every kind the engine covers, including a grant made by a
/// non-owner grantor and the owner revoking its own privilege, and default
/// privileges: pg_dump --schema-only identical after the rebuild.
#[tokio::test]
async fn privileges_rebuild_identically() {
    let roles = "DO $$ BEGIN
        IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'dbm_priv_owner') THEN CREATE ROLE dbm_priv_owner; END IF;
        IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'dbm_priv_reader') THEN CREATE ROLE dbm_priv_reader; END IF;
        IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'dbm priv \"odd\"') THEN CREATE ROLE \"dbm priv \"\"odd\"\"\"; END IF;
      EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$;";
    let pair = testkit::shared_pair();
    testkit::execute(&pair.source.conninfo("postgres"), roles)
        .await
        .unwrap();
    testkit::execute(&pair.target.conninfo("postgres"), roles)
        .await
        .unwrap();
    let sql = r#"
        CREATE SCHEMA priv AUTHORIZATION dbm_priv_owner;
        GRANT USAGE ON SCHEMA priv TO dbm_priv_reader;
        CREATE TABLE priv.t (id int, secret text, note text);
        ALTER TABLE priv.t OWNER TO dbm_priv_owner;
        GRANT SELECT, INSERT ON priv.t TO dbm_priv_reader WITH GRANT OPTION;
        GRANT UPDATE (note) ON priv.t TO "dbm priv ""odd""";
        REVOKE TRUNCATE ON priv.t FROM dbm_priv_owner;
        SET ROLE dbm_priv_reader;
        GRANT SELECT ON priv.t TO "dbm priv ""odd""";
        RESET ROLE;
        CREATE SEQUENCE priv.s; ALTER SEQUENCE priv.s OWNER TO dbm_priv_owner;
        GRANT USAGE ON SEQUENCE priv.s TO dbm_priv_reader;
        CREATE FUNCTION priv.f(a int) RETURNS int LANGUAGE sql AS $$ SELECT a $$;
        REVOKE EXECUTE ON FUNCTION priv.f(int) FROM PUBLIC;
        GRANT EXECUTE ON FUNCTION priv.f(int) TO dbm_priv_reader;
        CREATE TYPE priv.e AS ENUM ('a'); REVOKE USAGE ON TYPE priv.e FROM PUBLIC;
        CREATE DOMAIN priv.d AS int; GRANT ALL ON DOMAIN priv.d TO dbm_priv_reader;
        CREATE VIEW priv.v AS SELECT id FROM priv.t; GRANT SELECT ON priv.v TO PUBLIC;
        ALTER DEFAULT PRIVILEGES FOR ROLE dbm_priv_owner GRANT SELECT ON TABLES TO dbm_priv_reader;
        ALTER DEFAULT PRIVILEGES FOR ROLE dbm_priv_owner IN SCHEMA priv GRANT USAGE ON SEQUENCES TO dbm_priv_reader;
        ALTER DEFAULT PRIVILEGES FOR ROLE dbm_priv_owner REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC;
    "#;
    assert_rebuilds("sch_priv", sql).await;
}

/// Extensions (at their version, with a table using their types), triggers
/// in every enabled state, rules, row-level security with policies, and
/// extended statistics.
#[tokio::test]
async fn triggers_rules_policies_statistics_extensions_rebuild_identically() {
    let roles = "DO $$ BEGIN
        IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'dbm_pol_role') THEN CREATE ROLE dbm_pol_role; END IF;
      EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$;";
    let pair = testkit::shared_pair();
    testkit::execute(&pair.source.conninfo("postgres"), roles)
        .await
        .unwrap();
    testkit::execute(&pair.target.conninfo("postgres"), roles)
        .await
        .unwrap();
    let sql = r#"
        CREATE SCHEMA ext; CREATE EXTENSION citext WITH SCHEMA ext; CREATE EXTENSION hstore WITH SCHEMA ext;
        CREATE SCHEMA app;
        CREATE TABLE app.users (id int PRIMARY KEY, email ext.citext UNIQUE, attrs ext.hstore, owner_name text, a int, b int);
        CREATE FUNCTION app.touch() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$;
        CREATE TRIGGER t_before BEFORE INSERT OR UPDATE ON app.users FOR EACH ROW EXECUTE FUNCTION app.touch();
        CREATE TRIGGER t_disabled AFTER DELETE ON app.users FOR EACH STATEMENT EXECUTE FUNCTION app.touch();
        ALTER TABLE app.users DISABLE TRIGGER t_disabled;
        CREATE TRIGGER t_replica BEFORE UPDATE ON app.users FOR EACH ROW WHEN (OLD.a IS DISTINCT FROM NEW.a) EXECUTE FUNCTION app.touch();
        ALTER TABLE app.users ENABLE REPLICA TRIGGER t_replica;
        CREATE TRIGGER t_always BEFORE INSERT ON app.users FOR EACH ROW EXECUTE FUNCTION app.touch();
        ALTER TABLE app.users ENABLE ALWAYS TRIGGER t_always;
        CREATE CONSTRAINT TRIGGER t_constraint AFTER INSERT ON app.users DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION app.touch();
        COMMENT ON TRIGGER t_before ON app.users IS 'touches';
        CREATE TABLE app.log (msg text);
        CREATE RULE log_delete AS ON DELETE TO app.users DO ALSO INSERT INTO app.log VALUES ('deleted ' || OLD.id);
        CREATE RULE r_off AS ON UPDATE TO app.log DO INSTEAD NOTHING;
        ALTER TABLE app.log DISABLE RULE r_off;
        ALTER TABLE app.users ENABLE ROW LEVEL SECURITY;
        ALTER TABLE app.log ENABLE ROW LEVEL SECURITY; ALTER TABLE app.log FORCE ROW LEVEL SECURITY;
        CREATE POLICY own ON app.users FOR SELECT TO dbm_pol_role USING (owner_name = current_user);
        CREATE POLICY ins ON app.users AS RESTRICTIVE FOR INSERT WITH CHECK (a > 0);
        CREATE POLICY everything ON app.log USING (true) WITH CHECK (msg <> '');
        COMMENT ON POLICY own ON app.users IS 'only your rows';
        CREATE STATISTICS app.users_ab (ndistinct, dependencies) ON a, b FROM app.users;
        ALTER STATISTICS app.users_ab SET STATISTICS 500;
        CREATE STATISTICS app.users_mcv (mcv) ON a, (b + 1) FROM app.users;
        COMMENT ON STATISTICS app.users_mcv IS 'expression stats';
    "#;
    assert_rebuilds("sch_trig", sql).await;
}
