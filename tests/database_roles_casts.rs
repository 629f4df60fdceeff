//! Issue 21, items 9, 10 and 14: what `pg_dump --create | psql` carries of
//! the database itself (connection limit, template flag, the public
//! schema's comment, owner and privileges), every role the migrated objects
//! name (created by --roles, refused by name without it), and casts whose
//! function needs another, binary-coercible cast first.

mod common;

use std::process::Stdio;

use common::*;
use pg_dbmigrator::pg::quote::ident;
use pg_dbmigrator::testkit;

/// `datconnlimit datistemplate datallowconn` of database `name` on the
/// target server (read from its maintenance database: the database itself
/// may not accept connections).
async fn target_limits(name: &str) -> String {
    testkit::query_scalar(
        &testkit::shared_pair().target.admin_conninfo(),
        &format!(
            "SELECT datconnlimit || ' ' || datistemplate || ' ' || datallowconn FROM pg_database WHERE datname = {}",
            pg_dbmigrator::pg::quote::literal(name)
        ),
    )
    .await
}

fn dbname_of(conninfo: &str) -> String {
    conninfo
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("dbname="))
        .expect("dbname in conninfo")
        .to_string()
}

/// `migrate` of `db` into `target` stopped at fault point `point` and
/// killed there; returns the arguments to run it again.
async fn kill_at(source: &str, target: &str, dump: &std::path::Path, point: &str) -> Vec<String> {
    let args: Vec<String> = [
        "migrate",
        "--source",
        source,
        "--target",
        target,
        "--dump-path",
        dump.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let log = dump.with_extension("log");
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut child = command(&a)
        .env("PG_DBMIGRATOR_TEST_STOP_AT", point)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains(&format!("TEST_STOP_AT {point}"))
    {
        assert!(
            child.try_wait().unwrap().is_none() && std::time::Instant::now() < deadline,
            "never reached {point}: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    args
}

// ---------------------------------------------------------------- item 9

/// CONNECTION LIMIT and IS_TEMPLATE arrive on the target database, set
/// after everything else; through the archive too.
#[tokio::test]
async fn connection_limit_and_template_flag_are_carried() {
    let db = testkit::shared_pair().fresh_db("dblimits").await;
    testkit::execute(
        &db.source,
        &format!(
            "CREATE TABLE t (id int PRIMARY KEY, v text);
             INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 500) g;
             ALTER DATABASE {0} CONNECTION LIMIT 3;
             ALTER DATABASE {0} IS_TEMPLATE = true;",
            ident(&db.name)
        ),
    )
    .await
    .unwrap();
    let src = testkit::query_scalar(
        &db.source,
        "SELECT datconnlimit || ' ' || datistemplate || ' ' || datallowconn FROM pg_database WHERE datname = current_database()",
    )
    .await;
    assert_eq!(src, "3 true true");
    // plan says so, and that it comes last.
    let absent = other_target_db(&db, "plan");
    let out = run_async(&["plan", "--source", &db.source, "--target", &absent]).await;
    let said = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{said}{}", text(&out.stderr));
    assert!(
        said.contains("after verify")
            && said.contains("CONNECTION LIMIT = 3")
            && said.contains("IS_TEMPLATE = true"),
        "{said}"
    );
    for (suffix, extra) in [
        ("direct", vec!["--jobs", "4"]),
        ("archive", vec!["--copy-method", "dump"]),
    ] {
        let target = other_target_db(&db, suffix);
        migrate_clean(&db.source, &target, &extra).await;
        assert_eq!(target_limits(&dbname_of(&target)).await, src, "{suffix}");
        assert_eq!(
            content_digest(&db.source).await,
            content_digest(&target).await
        );
        assert_eq!(schema_dump(&db.source), schema_dump(&target));
    }
    // The template flag would make the next test's DROP DATABASE fail.
    testkit::execute(
        &testkit::shared_pair().source.admin_conninfo(),
        &format!("ALTER DATABASE {} IS_TEMPLATE = false", ident(&db.name)),
    )
    .await
    .unwrap();
}

/// A run killed after it closed the target database (here: connection
/// limit, template flag, and connections refused, as a source that
/// forbade connections mid-run would leave it) resumes, and ends with the
/// source's properties; --force-clean drops such a database and starts over.
#[tokio::test]
async fn a_closed_target_database_resumes_and_force_cleans() {
    let db = testkit::shared_pair().fresh_db("dbclosed").await;
    testkit::execute(
        &db.source,
        &format!(
            "CREATE TABLE t (id int PRIMARY KEY);
             INSERT INTO t SELECT generate_series(1, 100);
             ALTER DATABASE {0} CONNECTION LIMIT 5;
             ALTER DATABASE {0} IS_TEMPLATE = true;",
            ident(&db.name)
        ),
    )
    .await
    .unwrap();
    let target = other_target_db(&db, "k");
    let name = dbname_of(&target);
    let dir = tempfile::tempdir().unwrap();
    let dump = dir.path().join("w");
    let args = kill_at(&db.source, &target, &dump, "after:seal").await;
    assert_eq!(target_limits(&name).await, "5 true true");
    testkit::execute(
        &testkit::shared_pair().target.admin_conninfo(),
        &format!("ALTER DATABASE {} ALLOW_CONNECTIONS = false", ident(&name)),
    )
    .await
    .unwrap();

    let mut resume: Vec<&str> = args.iter().map(String::as_str).collect();
    resume.extend(["--resume", "--json"]);
    let out = run_async(&resume).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        report_of(&out.stdout)["verify"]["differences"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
    assert_eq!(target_limits(&name).await, "5 true true");
    assert_eq!(schema_dump(&db.source), schema_dump(&target));

    // A template database cannot be dropped: --force-clean lifts the flag first.
    testkit::execute(&target, "CREATE TABLE stray (x int)")
        .await
        .unwrap();
    let mut again: Vec<&str> = args.iter().map(String::as_str).collect();
    again.push("--force-clean");
    let out = run_async(&again).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(target_limits(&name).await, "5 true true");
    assert_eq!(schema_dump(&db.source), schema_dump(&target));
    assert_eq!(
        content_digest(&db.source).await,
        content_digest(&target).await
    );
    for (server, n) in [
        (&testkit::shared_pair().source, db.name.as_str()),
        (&testkit::shared_pair().target, name.as_str()),
    ] {
        testkit::execute(
            &server.admin_conninfo(),
            &format!("ALTER DATABASE {} IS_TEMPLATE = false", ident(n)),
        )
        .await
        .unwrap();
    }
}

/// The public schema's comment: removed on the source, removed on the
/// target (not back to initdb's); changed, changed.
#[tokio::test]
async fn public_schema_comment_removed_or_changed() {
    let db = testkit::shared_pair().fresh_db("pubcomment").await;
    for (suffix, comment) in [("gone", "NULL"), ("changed", "'the app''s schema'")] {
        testkit::execute(
            &db.source,
            &format!(
                "COMMENT ON SCHEMA public IS {comment}; CREATE TABLE IF NOT EXISTS t (id int)"
            ),
        )
        .await
        .unwrap();
        let target = other_target_db(&db, suffix);
        migrate_clean(&db.source, &target, &[]).await;
        let q =
            "SELECT coalesce(obj_description('public'::regnamespace, 'pg_namespace'), '<none>')";
        let (s, t) = (
            testkit::query_scalar(&db.source, q).await,
            testkit::query_scalar(&target, q).await,
        );
        assert_eq!(s, t, "{suffix}");
        assert_ne!(t, "standard public schema");
        let (a, b) = (schema_dump(&db.source), schema_dump(&target));
        assert!(a == b, "{suffix}: {}", diff_hint(&a, &b));
    }
}

// --------------------------------------------------------------- item 10

/// Roles named only by objects the earlier role list missed: a
/// subscription's and an event trigger's owner, a publication's, a foreign
/// server's, a user mapping's, default privileges' FOR ROLE, a policy's
/// TO, a grantor of a schema privilege, the public schema's owner.
fn named_roles_schema(p: &str) -> String {
    format!(
        "CREATE ROLE {p}_sub SUPERUSER NOLOGIN;
         CREATE ROLE {p}_evt SUPERUSER NOLOGIN;
         CREATE ROLE {p}_pub NOLOGIN;
         CREATE ROLE {p}_srv NOLOGIN;
         CREATE ROLE {p}_um NOLOGIN;
         CREATE ROLE {p}_def NOLOGIN;
         CREATE ROLE {p}_pol NOLOGIN;
         CREATE ROLE {p}_grantor NOLOGIN;
         CREATE ROLE {p}_pubowner NOLOGIN;
         CREATE TABLE public.t (id int PRIMARY KEY, who text);
         ALTER TABLE public.t ENABLE ROW LEVEL SECURITY;
         CREATE POLICY mine ON public.t TO {p}_pol USING (who = current_user);
         CREATE PUBLICATION {p}_p FOR TABLE public.t;
         ALTER PUBLICATION {p}_p OWNER TO {p}_pub;
         CREATE SUBSCRIPTION {p}_s CONNECTION 'host=nowhere.invalid dbname=x' PUBLICATION up WITH (connect = false);
         ALTER SUBSCRIPTION {p}_s OWNER TO {p}_sub;
         CREATE FUNCTION public.noop_evt() RETURNS event_trigger LANGUAGE plpgsql AS $$BEGIN END$$;
         CREATE EVENT TRIGGER {p}_e ON ddl_command_end EXECUTE FUNCTION public.noop_evt();
         ALTER EVENT TRIGGER {p}_e OWNER TO {p}_evt;
         CREATE FOREIGN DATA WRAPPER {p}_w;
         GRANT USAGE ON FOREIGN DATA WRAPPER {p}_w TO {p}_srv;
         CREATE SERVER {p}_fs FOREIGN DATA WRAPPER {p}_w;
         ALTER SERVER {p}_fs OWNER TO {p}_srv;
         CREATE USER MAPPING FOR {p}_um SERVER {p}_fs OPTIONS (user 'remote');
         ALTER DEFAULT PRIVILEGES FOR ROLE {p}_def GRANT SELECT ON TABLES TO PUBLIC;
         CREATE SCHEMA app;
         GRANT USAGE ON SCHEMA app TO {p}_grantor WITH GRANT OPTION;
         SET ROLE {p}_grantor; GRANT USAGE ON SCHEMA app TO PUBLIC; RESET ROLE;
         ALTER SCHEMA public OWNER TO {p}_pubowner;
         REVOKE CREATE ON SCHEMA public FROM {p}_pubowner;
         COMMENT ON SCHEMA public IS NULL;"
    )
}

/// Drop what the source cluster cannot keep between tests (subscriptions
/// block DROP DATABASE; event triggers fire on every DDL).
async fn drop_subscription_and_event_trigger(conninfo: &str, p: &str) {
    testkit::execute(
        conninfo,
        &format!(
            "ALTER SUBSCRIPTION {p}_s DISABLE; ALTER SUBSCRIPTION {p}_s SET (slot_name = NONE);
             DROP SUBSCRIPTION {p}_s; DROP EVENT TRIGGER {p}_e;"
        ),
    )
    .await
    .unwrap();
}

/// With --roles every one of them is created first and the schema arrives
/// whole: subscription and event trigger owned by their roles.
#[tokio::test]
async fn roles_creates_every_role_the_objects_name() {
    let db = testkit::shared_pair().fresh_db("namedroles").await;
    let p = "dbm_nr";
    testkit::execute(&db.source, &named_roles_schema(p))
        .await
        .unwrap();
    let target = other_target_db(&db, "r");
    migrate_clean(&db.source, &target, &["--roles"]).await;
    let (a, b) = (schema_dump(&db.source), schema_dump(&target));
    assert!(a == b, "{}", diff_hint(&a, &b));
    let owners = "SELECT (SELECT pg_get_userbyid(subowner) FROM pg_subscription WHERE subdbid = (SELECT oid FROM pg_database WHERE datname = current_database()))
                     || ' ' || (SELECT pg_get_userbyid(evtowner) FROM pg_event_trigger)
                     || ' ' || (SELECT pg_get_userbyid(pubowner) FROM pg_publication)
                     || ' ' || (SELECT pg_get_userbyid(nspowner) FROM pg_namespace WHERE nspname = 'public')
                     || ' ' || (SELECT usename FROM pg_user_mappings)";
    let expected = format!("{p}_sub {p}_evt {p}_pub {p}_pubowner {p}_um");
    assert_eq!(testkit::query_scalar(&db.source, owners).await, expected);
    assert_eq!(testkit::query_scalar(&target, owners).await, expected);
    drop_subscription_and_event_trigger(&target, p).await;
    drop_subscription_and_event_trigger(&db.source, p).await;
}

/// Without --roles: refused before anything is written (no target
/// database), naming the missing roles and the flag that creates them.
#[tokio::test]
async fn missing_subscription_and_event_trigger_owners_are_refused_first() {
    let db = testkit::shared_pair().fresh_db("namedrefuse").await;
    let p = "dbm_nx";
    testkit::execute(&db.source, &named_roles_schema(p))
        .await
        .unwrap();
    let target = other_target_db(&db, "r");
    let err = migrate_refused(&db.source, &target, &[]).await;
    for role in [
        "sub", "evt", "pub", "srv", "um", "def", "pol", "grantor", "pubowner",
    ] {
        assert!(err.contains(&format!("{p}_{role}")), "{role}: {err}");
    }
    assert!(err.contains("--roles"), "{err}");
    assert!(!target_database_exists(&dbname_of(&target)).await);
    // --no-owner leaves out owners only: the policy's, the user mapping's
    // and the per-role ones are still named.
    let err = migrate_refused(&db.source, &target, &["--no-owner", "--no-acl"]).await;
    assert!(err.contains(&format!("{p}_pol")), "{err}");
    assert!(err.contains(&format!("{p}_um")), "{err}");
    assert!(!err.contains(&format!("{p}_sub")), "{err}");
    assert!(!target_database_exists(&dbname_of(&target)).await);
    drop_subscription_and_event_trigger(&db.source, p).await;
}

// --------------------------------------------------------------- item 14

/// Base types `t` and `u` stored like text (text's I/O functions).
const TEXTLIKE_TYPES: &str = "
    CREATE TYPE t;
    CREATE FUNCTION t_in(cstring) RETURNS t LANGUAGE internal IMMUTABLE STRICT AS 'textin';
    CREATE FUNCTION t_out(t) RETURNS cstring LANGUAGE internal IMMUTABLE STRICT AS 'textout';
    CREATE TYPE t (input = t_in, output = t_out, internallength = variable, category = 'S');
    CREATE TYPE u;
    CREATE FUNCTION u_in(cstring) RETURNS u LANGUAGE internal IMMUTABLE STRICT AS 'textin';
    CREATE FUNCTION u_out(u) RETURNS cstring LANGUAGE internal IMMUTABLE STRICT AS 'textout';
    CREATE TYPE u (input = u_in, output = u_out, internallength = variable, category = 'S');";

async fn casts_round_trip(prefix: &str, ddl: &str, checks: &[&str]) {
    let db = testkit::shared_pair().fresh_db(prefix).await;
    testkit::execute(&db.source, &format!("{TEXTLIKE_TYPES}\n{ddl}"))
        .await
        .unwrap();
    let target = other_target_db(&db, "c");
    migrate_clean(&db.source, &target, &[]).await;
    let (a, b) = (schema_dump(&db.source), schema_dump(&target));
    assert!(a == b, "{}", diff_hint(&a, &b));
    for q in checks {
        assert_eq!(
            testkit::query_scalar(&db.source, q).await,
            testkit::query_scalar(&target, q).await,
            "{q}"
        );
    }
}

/// The function returns text (or a domain over text) and the target is
/// `t`: CREATE CAST checks that text is binary-coercible to t, so the
/// implicit `(text AS t) WITHOUT FUNCTION` cast must exist first, though
/// "integer t" sorts before "text t".
#[tokio::test]
async fn cast_after_the_cast_its_result_needs() {
    casts_round_trip(
        "castresult",
        "CREATE DOMAIN text_d AS text;
         CREATE FUNCTION f(int4) RETURNS text LANGUAGE sql IMMUTABLE AS $$ SELECT 'n' || $1 $$;
         CREATE FUNCTION fd(int8) RETURNS text_d LANGUAGE sql IMMUTABLE AS $$ SELECT 'b' || $1 $$;
         CREATE CAST (text AS t) WITHOUT FUNCTION AS IMPLICIT;
         CREATE CAST (int4 AS t) WITH FUNCTION f(int4);
         CREATE CAST (int8 AS t) WITH FUNCTION fd(int8);",
        &[
            "SELECT (5::int4)::t::text",
            "SELECT (6::int8)::t::text",
            "SELECT count(*) FROM pg_cast WHERE casttarget = 't'::regtype",
        ],
    )
    .await;
}

/// The source side: `(u AS int8) WITH FUNCTION g(text)` needs u to be
/// binary-coercible to text, the implicit `(u AS text)` cast, though
/// "u bigint" sorts before "u text".
#[tokio::test]
async fn cast_after_the_cast_its_argument_needs() {
    casts_round_trip(
        "castarg",
        "CREATE FUNCTION g(text) RETURNS int8 LANGUAGE sql IMMUTABLE AS $$ SELECT length($1)::int8 $$;
         CREATE CAST (u AS text) WITHOUT FUNCTION AS IMPLICIT;
         CREATE CAST (u AS int8) WITH FUNCTION g(text);",
        &[
            "SELECT ('hello'::u)::int8::text",
            "SELECT count(*) FROM pg_cast WHERE castsource = 'u'::regtype",
        ],
    )
    .await;
}
