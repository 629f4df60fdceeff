//! Full offline migrations: schema from the catalogs, data, post-data,
//! verify; pg_dump --schema-only of source and target identical. And the
//! refusals that keep a user from losing objects silently.

mod common;

use common::*;
use pg_dbmigrator::testkit;

const CORE_DATA: &str = "
    INSERT INTO core.customers (code, name, mood, qty, pair, span, tags)
         SELECT 'C' || g, 'name ' || g, (ARRAY['sad','ok','happy','meh'])[1 + g % 4]::core.mood, 1 + g % 400,
                ROW(g, 'p' || g)::core.pair, core.floatrange(g, g + 1), ARRAY['t' || g]
           FROM generate_series(1, 300) g;
    INSERT INTO core.orders (customer_id, placed)
         SELECT c.id, tstzrange('2024-01-01'::timestamptz + c.id * interval '1 day', '2024-01-01'::timestamptz + c.id * interval '1 day' + interval '1 hour')
           FROM core.customers c;
    INSERT INTO core.events SELECT g, '2024-01-01'::date + g, CASE WHEN g % 2 = 0 THEN 'a' ELSE 'b' END, jsonb_build_object('g', g)
           FROM generate_series(1, 700) g;
    BEGIN; INSERT INTO core.a VALUES (1, 1); INSERT INTO core.b VALUES (1, 1); COMMIT;
    INSERT INTO core.vehicle VALUES (1, 4); INSERT INTO core.car VALUES (2, 4, 5);
    INSERT INTO \"Odd Schema\".\"Mixed Case\" VALUES ('x', 1);
    REFRESH MATERIALIZED VIEW core.order_counts;";

#[tokio::test]
async fn full_migration_into_a_new_database() {
    let db = testkit::shared_pair().fresh_db("full").await;
    testkit::execute(&db.source, &fixture("schema_core.sql"))
        .await
        .unwrap();
    testkit::execute(&db.source, CORE_DATA).await.unwrap();
    // A target database that does not exist yet: the tool creates it.
    let target = other_target_db(&db, "new");
    let report = migrate_clean(&db.source, &target, &[]).await;
    assert!(report["schema_steps"].as_u64().unwrap() > 30, "{report:#}");
    let (a, b) = (schema_dump(&db.source), schema_dump(&target));
    assert!(a == b, "schema dumps differ:\n{}", diff_hint(&a, &b));
    assert_eq!(
        content_digest(&db.source).await,
        content_digest(&target).await
    );
    // The populated materialized view was refreshed after the data; the other stays unpopulated.
    assert_eq!(
        testkit::query_scalar(&target, "SELECT count(*) FROM core.order_counts").await,
        "300"
    );
    assert_eq!(
        testkit::query_scalar(
            &target,
            "SELECT relispopulated::text FROM pg_class WHERE relname = 'empty_mv'"
        )
        .await,
        "false"
    );
    // Identity continues where the source's did.
    assert_eq!(
        testkit::query_scalar(&target, "SELECT (nextval('core.customers_id_seq') = (SELECT max(id) FROM core.customers) + 5)::text").await,
        "true"
    );
}

/// Objects the engine cannot reproduce yet stop the migration before
/// anything is created on the target.
#[tokio::test]
async fn unsupported_objects_refuse_and_change_nothing() {
    let db = testkit::shared_pair().fresh_db("unsup").await;
    testkit::execute(
        &db.source,
        "CREATE TABLE public.t (id int);
         DO $$BEGIN
            IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'dbm_unsup_reader') THEN
              CREATE ROLE dbm_unsup_reader LOGIN PASSWORD 'reader-pw';
            END IF;
          EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
          END$$;
         GRANT SELECT ON public.t TO dbm_unsup_reader;
         CREATE SUBSCRIPTION dbm_unsup_sub CONNECTION 'host=unsup.invalid' PUBLICATION p
           WITH (connect = false, slot_name = NONE);",
    )
    .await
    .unwrap();
    // A subscription's connection string is readable only by a superuser:
    // a plain source role is refused with the way out named.
    let reader = db
        .source
        .split_whitespace()
        .map(|kv| {
            if kv.starts_with("user=") {
                "user=dbm_unsup_reader".to_string()
            } else if kv.starts_with("password=") {
                "password=reader-pw".to_string()
            } else {
                kv.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(" ");
    let reader = if reader.contains("password=") {
        reader
    } else {
        format!("{reader} password=reader-pw")
    };
    let target = other_target_db(&db, "never");
    let out = run(&["-q", "migrate", "--source", &reader, "--target", &target]);
    let _ = testkit::execute(&db.source, "DROP SUBSCRIPTION dbm_unsup_sub").await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains("subscription dbm_unsup_sub") && err.contains("--no-subscriptions"),
        "{err}"
    );
    let admin = db
        .target
        .replace(&format!("dbname={}", db.name), "dbname=postgres");
    let exists = testkit::query_scalar(
        &admin,
        &format!(
            "SELECT count(*) FROM pg_database WHERE datname = '{}_never'",
            db.name
        ),
    )
    .await;
    assert_eq!(
        exists, "0",
        "the target database must not have been created"
    );
}

/// A non-empty target database is refused; --force-clean drops and recreates it.
#[tokio::test]
async fn non_empty_target_database() {
    let db = testkit::shared_pair().fresh_db("fullne").await;
    testkit::execute(
        &db.source,
        "CREATE TABLE public.src_only (id int); INSERT INTO public.src_only VALUES (1);",
    )
    .await
    .unwrap();
    testkit::execute(
        &db.target,
        "CREATE TABLE public.precious (id int); INSERT INTO public.precious VALUES (42);",
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let dump = dir.path().join("w");
    let out = run_async(&[
        "-q",
        "migrate",
        "--source",
        &db.source,
        "--target",
        &db.target,
        "--dump-path",
        dump.to_str().unwrap(),
    ])
    .await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("is not empty"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(
        testkit::query_scalar(&db.target, "SELECT id::text FROM public.precious").await,
        "42"
    );
    let out = run_async(&[
        "-q",
        "migrate",
        "--source",
        &db.source,
        "--target",
        &db.target,
        "--force-clean",
        "--dump-path",
        dump.to_str().unwrap(),
    ])
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(schema_dump(&db.source), schema_dump(&db.target));
}

/// Objects owned by a role the target server lacks: refused, naming the role.
#[tokio::test]
async fn missing_owner_role_is_refused() {
    let db = testkit::shared_pair().fresh_db("roles").await;
    testkit::execute(
        &db.source,
        "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'dbm_src_only_role') THEN CREATE ROLE dbm_src_only_role; END IF; END $$;
         CREATE TABLE public.owned (id int); ALTER TABLE public.owned OWNER TO dbm_src_only_role;
         DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'dbm_src_only_grantee') THEN CREATE ROLE dbm_src_only_grantee; END IF; END $$;
         CREATE TABLE public.shared (id int); GRANT SELECT ON public.shared TO dbm_src_only_grantee;",
    )
    .await
    .unwrap();
    let target = other_target_db(&db, "r");
    let out = run(&["-q", "migrate", "--source", &db.source, "--target", &target]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("dbm_src_only_role") && err.contains("dbm_src_only_grantee"),
        "{err}"
    );
}

/// kill -9 during post-data, then --resume: finished steps are not redone
/// (a second CREATE INDEX would fail) and the schemas end up identical.
#[tokio::test]
async fn kill_9_during_post_data_then_resume() {
    let db = testkit::shared_pair().fresh_db("fullkill").await;
    testkit::execute(&db.source, &fixture("schema_core.sql"))
        .await
        .unwrap();
    testkit::execute(&db.source, CORE_DATA).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let dump = dir.path().join("w");
    let token_path = pg_dbmigrator::ResumeToken::path_for(&dump);
    let args = [
        "migrate",
        "--source",
        &db.source,
        "--target",
        &db.target,
        "--jobs",
        "2",
        "--dump-path",
        dump.to_str().unwrap(),
    ];
    let mut child = command(&args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // As soon as core.orders exists on the target, hold a lock that lets its
    // COPY through but blocks index and constraint builds on it.
    let blocker = testkit::client(&db.target).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let r = blocker
            .batch_execute("BEGIN; LOCK TABLE core.orders IN ROW EXCLUSIVE MODE")
            .await;
        if r.is_ok() {
            break;
        }
        let _ = blocker.batch_execute("ROLLBACK").await;
        assert!(
            std::time::Instant::now() < deadline,
            "core.orders never appeared"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // Wait until post-data has started and committed some steps.
    loop {
        let steps: i64 = blocker
            .query_one(
                "SELECT count(*) FROM _pg_dbmigrator.steps WHERE item LIKE 'post:%'",
                &[],
            )
            .await
            .map(|r| r.get(0))
            .unwrap_or(0);
        if steps > 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "post-data did not start"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    blocker.batch_execute("COMMIT").await.unwrap();
    let t = pg_dbmigrator::ResumeToken::load(&token_path)
        .unwrap()
        .unwrap();
    // Index builds run beside the copy: the blocked one on core.orders
    // keeps the copy stage open, with other tables' indexes committed.
    assert!(!t.is_done(pg_dbmigrator::Stage::SchemaPostData));

    let mut resume: Vec<&str> = args.to_vec();
    resume.push("--resume");
    let out = run_async(&resume).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("0 differences"),
        "{}",
        text(&out.stdout)
    );
    let (a, b) = (schema_dump(&db.source), schema_dump(&db.target));
    assert!(a == b, "schema dumps differ:\n{}", diff_hint(&a, &b));
}

/// The rich fixture (every object kind, odd names, partitions, inheritance,
/// extensions, privileges, policies, triggers...) through a full migration:
/// identical pg_dump --schema-only, verify clean.
#[tokio::test]
async fn rich_fixture_full_migration() {
    let db = rich_db("fullrich").await;
    // rich_db also loaded the schema into the target's test database, which
    // created the fixture's (cluster-wide) roles there; migrate into a new one.
    let target = other_target_db(&db, "full");
    migrate_clean(&db.source, &target, &[]).await;
    let (a, b) = (schema_dump(&db.source), schema_dump(&target));
    assert!(a == b, "schema dumps differ:\n{}", diff_hint(&a, &b));
}

/// A full migration whose pattern matches nothing stops before anything,
/// naming the pattern, as pg_dump does ("no matching tables were found").
#[tokio::test]
async fn full_migration_with_a_pattern_matching_nothing_is_refused() {
    let db = testkit::shared_pair().fresh_db("fullfilt").await;
    testkit::execute(&db.source, "CREATE TABLE public.t (id int)")
        .await
        .unwrap();
    let target = other_target_db(&db, "new");
    let out = run_async(&[
        "-q", "migrate", "--source", &db.source, "--target", &target, "--table", "t", "--table",
        "x",
    ])
    .await;
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("no matching tables")
            && err.contains("--table \"x\"")
            && !err.contains("\"t\""),
        "{err}"
    );
    assert!(!target_database_exists(&format!("{}_new", db.name)).await);
}

/// --roles creates what the target lacks: attributes, memberships, and with
/// --role-passwords the password hash, which is never printed.
#[tokio::test]
async fn roles_are_created_on_the_target() {
    let db = testkit::shared_pair().fresh_db("mkroles").await;
    let (owner, reader, group) = ("dbm_mk_owner", "dbm_mk_reader", "dbm_mk_group");
    testkit::execute(
        &db.source,
        &format!(
            "CREATE ROLE {group} NOLOGIN;
             CREATE ROLE {owner} LOGIN CONNECTION LIMIT 7 PASSWORD 'owner-secret-pw';
             CREATE ROLE {reader} LOGIN IN ROLE {group};
             CREATE SCHEMA mk AUTHORIZATION {owner};
             CREATE TABLE mk.t (id int); ALTER TABLE mk.t OWNER TO {owner};
             GRANT SELECT ON mk.t TO {group}; GRANT INSERT ON mk.t TO {reader};"
        ),
    )
    .await
    .unwrap();
    let target = other_target_db(&db, "r");
    let dir = tempfile::tempdir().unwrap();
    let dump = dir.path().join("w");
    let out = run_async(&[
        "-vv",
        "migrate",
        "--source",
        &db.source,
        "--target",
        &target,
        "--roles",
        "--role-passwords",
        "--dump-path",
        dump.to_str().unwrap(),
    ])
    .await;
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert_eq!(schema_dump(&db.source), schema_dump(&target));
    let q = |ci: &str| {
        let ci = ci.to_string();
        async move {
            testkit::query_scalar(
                &ci,
                &format!(
                    "SELECT r.rolcanlogin::text || r.rolconnlimit || coalesce(a.rolpassword, '-')
                       || (SELECT string_agg(pg_get_userbyid(m.roleid), ',') FROM pg_auth_members m WHERE m.member = '{reader}'::regrole)
                       FROM pg_roles r JOIN pg_authid a ON a.oid = r.oid WHERE r.rolname = '{owner}'"
                ),
            )
            .await
        }
    };
    assert_eq!(
        q(&db.source).await,
        q(&target).await,
        "role attributes, hash and membership"
    );
    let hash = testkit::query_scalar(
        &db.source,
        &format!("SELECT rolpassword FROM pg_authid WHERE rolname = '{owner}'"),
    )
    .await;
    let token = std::fs::read_to_string(pg_dbmigrator::ResumeToken::path_for(&dump)).unwrap();
    for needle in [hash.as_str(), "owner-secret-pw"] {
        assert!(
            !all.contains(needle) && !token.contains(needle),
            "a password leaked"
        );
    }
}

/// --no-owner --no-acl: roles the target lacks do not matter; objects
/// belong to the migrating role and carry no grants.
#[tokio::test]
async fn no_owner_no_acl() {
    let db = testkit::shared_pair().fresh_db("noowner").await;
    testkit::execute(
        &db.source,
        "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'dbm_src_only_x') THEN CREATE ROLE dbm_src_only_x; END IF; END $$;
         CREATE TABLE public.o (id int); ALTER TABLE public.o OWNER TO dbm_src_only_x;
         GRANT SELECT ON public.o TO PUBLIC; INSERT INTO public.o VALUES (1), (2);",
    )
    .await
    .unwrap();
    let target = other_target_db(&db, "n");
    let out = run_async(&[
        "-q",
        "migrate",
        "--source",
        &db.source,
        "--target",
        &target,
        "--no-owner",
        "--no-acl",
    ])
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        testkit::query_scalar(&target, "SELECT pg_get_userbyid(relowner)::text || ':' || coalesce(relacl::text, 'none') || ':' || (SELECT count(*) FROM public.o) FROM pg_class WHERE oid = 'public.o'::regclass").await,
        "postgres:none:2"
    );
}

/// pagila's shape: SQL and PL/pgSQL function bodies that name tables and
/// types created after them (in name order and by dependency). The target
/// session must not validate bodies (pg_dump's check_function_bodies =
/// false), or the first such function fails with "relation does not exist".
#[tokio::test]
async fn function_bodies_naming_later_objects_migrate() {
    let db = testkit::shared_pair().fresh_db("bodies").await;
    testkit::execute(
        &db.source,
        "SET check_function_bodies = false;
         CREATE FUNCTION public.a_in_stock(p_film int) RETURNS SETOF int LANGUAGE sql AS
             $$ SELECT id FROM public.z_inventory WHERE film = $1 AND public.z_available(id) $$;
         CREATE TYPE public.z_money AS (amount numeric, currency text);
         CREATE FUNCTION public.a_total() RETURNS public.z_money LANGUAGE sql STABLE AS
             $$ SELECT ROW(sum(amount), 'EUR')::public.z_money FROM public.z_payment $$;
         CREATE FUNCTION public.a_touch() RETURNS trigger LANGUAGE plpgsql AS
             $$ BEGIN INSERT INTO public.z_log VALUES (NEW.id); RETURN NEW; END $$;
         CREATE TABLE public.z_inventory (id int PRIMARY KEY, film int NOT NULL);
         CREATE TABLE public.z_payment (id int PRIMARY KEY, amount numeric NOT NULL);
         CREATE TABLE public.z_log (id int);
         CREATE FUNCTION public.z_available(int) RETURNS boolean LANGUAGE sql AS
             $$ SELECT NOT EXISTS (SELECT 1 FROM public.z_log WHERE id = $1) $$;
         CREATE TRIGGER z_touch AFTER INSERT ON public.z_inventory FOR EACH ROW EXECUTE FUNCTION public.a_touch();
         INSERT INTO public.z_payment SELECT g, g * 1.5 FROM generate_series(1, 20) g;
         INSERT INTO public.z_inventory SELECT g, g % 3 FROM generate_series(1, 30) g;",
    )
    .await
    .unwrap();
    let target = other_target_db(&db, "bodies");
    migrate_clean(&db.source, &target, &[]).await;
    let (a, b) = (schema_dump(&db.source), schema_dump(&target));
    assert!(a == b, "schema dumps differ: {}", diff_hint(&a, &b));
    // The functions work on the target, over the migrated rows.
    for sql in [
        "SELECT count(*) FROM public.a_in_stock(1)",
        "SELECT (public.a_total()).amount::text",
    ] {
        assert_eq!(
            testkit::query_scalar(&db.source, sql).await,
            testkit::query_scalar(&target, sql).await,
            "{sql}"
        );
    }
}

/// The database's own settings, per-role settings, comment, owner and
/// privileges come over as `pg_dump --create` carries them, onto a target
/// database of another name.
#[tokio::test]
async fn database_properties_are_carried() {
    let db = testkit::shared_pair().fresh_db("dbprops").await;
    let role_sql = "DO $$BEGIN
          IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'dbm_props_app') THEN CREATE ROLE dbm_props_app; END IF;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
        END$$;";
    for side in [&db.source, &db.target] {
        testkit::execute(side, role_sql).await.unwrap();
    }
    let name = db.name.clone();
    testkit::execute(
        &db.source,
        &format!(
            "CREATE TABLE public.t (id int PRIMARY KEY); INSERT INTO public.t VALUES (1);
             ALTER DATABASE \"{name}\" SET work_mem TO '64MB';
             ALTER DATABASE \"{name}\" SET search_path TO \"$user\", public, app;
             ALTER DATABASE \"{name}\" SET statement_timeout TO '5min';
             ALTER ROLE dbm_props_app IN DATABASE \"{name}\" SET lock_timeout TO '3s';
             COMMENT ON DATABASE \"{name}\" IS 'the shop''s data';
             REVOKE ALL ON DATABASE \"{name}\" FROM PUBLIC;
             GRANT CONNECT, TEMPORARY ON DATABASE \"{name}\" TO dbm_props_app;"
        ),
    )
    .await
    .unwrap();
    let target = other_target_db(&db, "new");
    migrate_clean(&db.source, &target, &[]).await;
    let props = |ci: String| async move {
        testkit::query_scalar(
            &ci,
            "SELECT concat_ws(' | ',
                    (SELECT string_agg(coalesce(pg_get_userbyid(s.setrole), '-') || ':' || array_to_string(s.setconfig, ','), ';' ORDER BY s.setrole)
                       FROM pg_db_role_setting s WHERE s.setdatabase = d.oid),
                    shobj_description(d.oid, 'pg_database'),
                    pg_get_userbyid(d.datdba),
                    regexp_replace(d.datacl::text, '=[^/]*/', '=x/', 'g'),
                    has_database_privilege('dbm_props_app', d.oid, 'TEMPORARY')::text,
                    has_database_privilege('public', d.oid, 'CONNECT')::text)
               FROM pg_database d WHERE d.datname = current_database()",
        )
        .await
    };
    let (a, b) = (props(db.source.clone()).await, props(target.clone()).await);
    assert_eq!(a, b);
    assert!(
        a.contains("work_mem=64MB")
            && a.contains("lock_timeout=3s")
            && a.contains("the shop's data"),
        "{a}"
    );
    let _ = testkit::execute(
        &db.source,
        &format!("ALTER ROLE dbm_props_app IN DATABASE \"{name}\" RESET ALL"),
    )
    .await;
}

/// A tablespace directory beside the cluster's data directory (the
/// servers run as this user, so they may use it); `None` against external
/// servers, whose file systems the test cannot reach.
fn tablespace_dir(server: &testkit::Server, name: &str) -> Option<String> {
    let data = &server.cluster()?.data_dir;
    let dir = data.with_file_name(format!("{}-ts-{name}", data.file_name()?.to_string_lossy()));
    std::fs::create_dir_all(&dir).ok()?;
    use std::os::unix::fs::MetadataExt;
    let owner = std::fs::metadata(data).ok()?;
    std::os::unix::fs::chown(&dir, Some(owner.uid()), Some(owner.gid())).ok()?;
    Some(dir.to_string_lossy().into_owned())
}

/// `(relation, tablespace)` of every user relation, `-` for the default.
async fn placements(ci: &str) -> String {
    testkit::query_scalar(
        ci,
        "SELECT string_agg(c.relname || '=' || coalesce(t.spcname, '-'), ' ' ORDER BY c.relname)
           FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
           LEFT JOIN pg_tablespace t ON t.oid = c.reltablespace
          WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'm', 'i', 'I')",
    )
    .await
}

#[tokio::test]
async fn tablespaces_are_kept_mapped_or_left_out() {
    let pair = testkit::shared_pair();
    let (Some(src_a), Some(src_b), Some(dst_a), Some(dst_n)) = (
        tablespace_dir(&pair.source, "a"),
        tablespace_dir(&pair.source, "b"),
        tablespace_dir(&pair.target, "a"),
        tablespace_dir(&pair.target, "n"),
    ) else {
        panic!(
            "this test makes tablespace directories on the servers' machine, which it cannot \
             do for external servers: run it without PG_DBMIGRATOR_TEST_SOURCE/_TARGET"
        );
    };
    let db = pair.fresh_db("tblspc").await;
    // CREATE TABLESPACE runs outside a transaction: one statement each; a
    // rerun against the same servers finds them made.
    for (server, name, dir) in [
        (&pair.source, "dbm_ts_a", &src_a),
        (&pair.source, "dbm_ts_b", &src_b),
        (&pair.target, "dbm_ts_a", &dst_a),
        (&pair.target, "dbm_ts_new", &dst_n),
    ] {
        let r = testkit::execute(
            &server.admin_conninfo(),
            &format!("CREATE TABLESPACE {name} LOCATION '{dir}'"),
        )
        .await;
        if let Err(e) = r {
            assert!(format!("{e:?}").contains("already exists"), "{e:?}");
        }
    }
    // The database's own default tablespace travels too (CREATE DATABASE ... TABLESPACE).
    testkit::execute(
        &pair.source.admin_conninfo(),
        &format!("ALTER DATABASE \"{}\" SET TABLESPACE dbm_ts_b", db.name),
    )
    .await
    .unwrap();
    let db_space = |ci: String| async move {
        testkit::query_scalar(
            &ci,
            "SELECT t.spcname FROM pg_database d JOIN pg_tablespace t ON t.oid = d.dattablespace WHERE d.datname = current_database()",
        )
        .await
    };
    testkit::execute(
        &db.source,
        "CREATE TABLE public.orders (id int, note text, CONSTRAINT orders_pkey PRIMARY KEY (id) USING INDEX TABLESPACE dbm_ts_b) TABLESPACE dbm_ts_a;
         CREATE INDEX orders_note ON public.orders (note) TABLESPACE pg_default WHERE note <> 'x';
         CREATE TABLE public.codes (c text, CONSTRAINT codes_c_key UNIQUE (c) USING INDEX TABLESPACE dbm_ts_a DEFERRABLE);
         CREATE TABLE public.events (at date, v int) PARTITION BY RANGE (at) TABLESPACE dbm_ts_a;
         CREATE TABLE public.events_2026 PARTITION OF public.events FOR VALUES FROM ('2026-01-01') TO ('2027-01-01') TABLESPACE dbm_ts_b;
         CREATE INDEX events_v ON public.events (v) TABLESPACE dbm_ts_a;
         CREATE MATERIALIZED VIEW public.order_notes TABLESPACE dbm_ts_b AS SELECT note FROM public.orders;
         INSERT INTO public.orders SELECT g, 'n' || g FROM generate_series(1, 50) g;
         INSERT INTO public.codes VALUES ('a'), ('b');
         INSERT INTO public.events VALUES ('2026-03-01', 1);
         REFRESH MATERIALIZED VIEW public.order_notes;",
    )
    .await
    .unwrap();
    let source_places = placements(&db.source).await;
    assert!(
        source_places.contains("orders=dbm_ts_a")
            && source_places.contains("codes_c_key=dbm_ts_a")
            && source_places.contains("orders_pkey=-")
            && source_places.contains("orders_note=pg_default")
            && source_places.contains("events=dbm_ts_a"),
        "{source_places}"
    );

    // dbm_ts_b does not exist on the target: refused, nothing created.
    let refused = other_target_db(&db, "refused");
    let err = migrate_refused(&db.source, &refused, &[]).await;
    assert!(
        err.contains("dbm_ts_b")
            && err.contains("--tablespace-mapping")
            && !err.contains("dbm_ts_a,"),
        "{err}"
    );
    assert!(!target_database_exists(&format!("{}_refused", db.name)).await);

    // Mapped: dbm_ts_b becomes dbm_ts_new, dbm_ts_a is kept by name.
    let mapped = other_target_db(&db, "mapped");
    migrate_clean(
        &db.source,
        &mapped,
        &["--tablespace-mapping", "dbm_ts_b=dbm_ts_new"],
    )
    .await;
    assert_eq!(placements(&mapped).await, source_places);
    assert_eq!(db_space(mapped.clone()).await, "dbm_ts_new");
    let (a, b) = (schema_dump(&db.source), schema_dump(&mapped));
    assert!(a == b, "schema dumps differ: {}", diff_hint(&a, &b));

    // Through an archive, mapped at restore time: dbm_ts_a onto the new
    // database's own default (a partitioned table cannot name it).
    let everything_default = source_places
        .split(' ')
        .map(|p| format!("{}=-", p.split('=').next().unwrap()))
        .collect::<Vec<_>>()
        .join(" ");
    let restored = other_target_db(&db, "restored");
    dump_and_restore(
        &db.source,
        &restored,
        &[],
        &[
            "--tablespace-mapping",
            "dbm_ts_b=dbm_ts_new",
            "--tablespace-mapping",
            "dbm_ts_a=dbm_ts_new",
            "--tablespace-mapping",
            "pg_default=dbm_ts_new",
        ],
    )
    .await;
    assert_eq!(db_space(restored.clone()).await, "dbm_ts_new");
    assert_eq!(placements(&restored).await, everything_default);

    // --no-tablespaces: everything in the default.
    let plain = other_target_db(&db, "plain");
    migrate_clean(&db.source, &plain, &["--no-tablespaces"]).await;
    assert_eq!(placements(&plain).await, everything_default);
    assert_eq!(db_space(plain.clone()).await, "pg_default");
}

const FILTER_FIXTURE: &str = "
CREATE SCHEMA app;
CREATE DOMAIN app.email AS text CHECK (VALUE LIKE '%@%');
CREATE TABLE app.customers (id serial PRIMARY KEY, name text NOT NULL, email app.email);
CREATE TABLE app.orders (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    customer_id int REFERENCES app.customers, note text, touched timestamptz);
CREATE INDEX orders_customer ON app.orders (customer_id);
CREATE FUNCTION app.touch() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN NEW.touched := now(); RETURN NEW; END$$;
CREATE TRIGGER orders_touch BEFORE INSERT OR UPDATE ON app.orders FOR EACH ROW EXECUTE FUNCTION app.touch();
ALTER TABLE app.orders ENABLE ROW LEVEL SECURITY;
CREATE POLICY orders_all ON app.orders USING (true);
COMMENT ON TABLE app.orders IS 'the orders';
CREATE VIEW app.order_view AS SELECT o.id, c.name FROM app.orders o JOIN app.customers c ON c.id = o.customer_id;
CREATE TABLE app.events (at date NOT NULL, what text) PARTITION BY RANGE (at);
CREATE TABLE app.events_2026 PARTITION OF app.events FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
CREATE SCHEMA audit;
CREATE TABLE audit.log (id int, line text);
CREATE TABLE public.big (id int PRIMARY KEY, pad text);
CREATE TABLE public.lookup (code text PRIMARY KEY);
INSERT INTO app.customers (name, email) SELECT 'c' || g, 'c' || g || '@x' FROM generate_series(1, 20) g;
INSERT INTO app.orders (customer_id, note) SELECT 1 + g % 20, 'o' || g FROM generate_series(1, 60) g;
INSERT INTO app.events VALUES ('2026-05-01', 'launch');
INSERT INTO audit.log VALUES (1, 'kept on the source');
INSERT INTO public.big SELECT g, 'x' FROM generate_series(1, 30) g;
INSERT INTO public.lookup VALUES ('a'), ('b');
";

async fn relations_of(ci: &str) -> String {
    testkit::query_scalar(
        ci,
        "SELECT coalesce(string_agg(format('%s.%s', n.nspname, c.relname), ' ' ORDER BY n.nspname, c.relname), '')
           FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE n.nspname IN ('app', 'audit', 'public') AND c.relkind IN ('r', 'p', 'v', 'S')",
    )
    .await
}

/// `-n/-N/-t/-T` and `--exclude-table-data` on a full migration, with
/// pg_dump's meaning: the selected objects and their pieces, rows of the
/// selected tables only, verify clean and naming what it did not compare.
#[tokio::test]
async fn filters_select_what_a_full_migration_creates() {
    let db = testkit::shared_pair().fresh_db("filters").await;
    testkit::execute(&db.source, FILTER_FIXTURE).await.unwrap();

    // -n app: the schema and everything in it, nothing else.
    let only_app = other_target_db(&db, "app");
    let report = migrate_clean(&db.source, &only_app, &["-n", "app"]).await;
    let (a, b) = (
        schema_dump_with(&db.source, &["-n", "app"]),
        schema_dump(&only_app),
    );
    assert!(a == b, "schema dumps differ: {}", diff_hint(&a, &b));
    assert_eq!(
        relations_of(&only_app).await,
        "app.customers app.customers_id_seq app.events app.events_2026 app.order_view app.orders app.orders_id_seq"
    );
    assert_eq!(
        report["verify"]["outside_filters"],
        serde_json::json!(["audit.log", "public.big", "public.lookup"]),
        "{report:#}"
    );
    let rows = testkit::query_scalar(
        &only_app,
        "SELECT (SELECT count(*) FROM app.orders) || ' ' || (SELECT max(id) FROM app.orders) || ' ' || nextval('app.customers_id_seq')",
    )
    .await;
    assert_eq!(rows, "60 60 21");

    // The same through an archive: dump -n app, restore.
    let restored = other_target_db(&db, "apprestored");
    dump_and_restore(&db.source, &restored, &["-n", "app"], &[]).await;
    assert_eq!(schema_dump(&restored), b);
    assert_eq!(
        content_digest(&restored).await,
        content_digest(&only_app).await
    );

    // -t app.orders: the table with its index, trigger, policy, comment
    // and identity; its trigger function and schema come along; the
    // foreign key to a table left out is left out, and said so.
    let orders = other_target_db(&db, "orders");
    let report = migrate_clean(&db.source, &orders, &["-t", "app.orders"]).await;
    assert_eq!(relations_of(&orders).await, "app.orders app.orders_id_seq");
    let notes = report["schema_notes"].to_string();
    assert!(
        notes.contains("left out CONSTRAINT orders_customer_id_fkey ON app.orders")
            && notes.contains("also created FUNCTION app.touch()"),
        "{notes}"
    );
    let pieces = testkit::query_scalar(
        &orders,
        "SELECT (SELECT count(*) FROM app.orders) || ' ' ||
                (SELECT string_agg(indexname, ',' ORDER BY indexname) FROM pg_indexes WHERE schemaname = 'app') || ' ' ||
                (SELECT count(*) FROM pg_trigger WHERE tgname = 'orders_touch') ||
                (SELECT count(*) FROM pg_policy WHERE polname = 'orders_all') || ' ' ||
                obj_description('app.orders'::regclass, 'pg_class')",
    )
    .await;
    assert_eq!(pieces, "60 orders_customer,orders_pkey 11 the orders");

    // -N audit -T big --exclude-table-data lookup: lookup is created empty.
    let rest = other_target_db(&db, "rest");
    let report = migrate_clean(
        &db.source,
        &rest,
        &[
            "-N",
            "audit",
            "-T",
            "public.big",
            "--exclude-table-data",
            "public.lookup",
        ],
    )
    .await;
    assert_eq!(
        relations_of(&rest).await,
        "app.customers app.customers_id_seq app.events app.events_2026 app.order_view app.orders app.orders_id_seq public.lookup"
    );
    assert_eq!(
        testkit::query_scalar(&rest, "SELECT count(*) FROM public.lookup").await,
        "0"
    );
    assert_eq!(
        report["verify"]["outside_filters"],
        serde_json::json!(["audit.log", "public.big", "public.lookup"]),
        "{report:#}"
    );
}

/// A selection that needs an object the filters leave out is refused
/// before anything is created, naming both.
#[tokio::test]
async fn filters_that_break_a_dependency_are_refused() {
    let db = testkit::shared_pair().fresh_db("filterbad").await;
    testkit::execute(&db.source, FILTER_FIXTURE).await.unwrap();
    testkit::execute(
        &db.source,
        "CREATE VIEW public.lookup_view AS SELECT code FROM public.lookup;
         CREATE SEQUENCE public.free_seq;
         ALTER TABLE public.big ALTER COLUMN id SET DEFAULT nextval('public.free_seq');",
    )
    .await
    .unwrap();
    let target = other_target_db(&db, "new");
    for (args, needle) in [
        (
            vec!["-t", "app.order_view", "-t", "app.customers"],
            "TABLE app.orders is outside the selection, and VIEW app.order_view needs it",
        ),
        (
            vec!["-T", "public.lookup"],
            "TABLE public.lookup is left out by --exclude-table, and VIEW public.lookup_view needs it",
        ),
        (
            vec!["-t", "public.big", "-T", "public.free_seq"],
            "SEQUENCE public.free_seq is left out by --exclude-table, and TABLE public.big needs it",
        ),
    ] {
        let err = migrate_refused(&db.source, &target, &args).await;
        assert!(
            err.contains(needle) && err.contains("--exclude-table"),
            "{err}"
        );
        assert!(!target_database_exists(&format!("{}_new", db.name)).await);
    }
}

/// The application-shaped fixture (domains, a composite type with its own
/// operators and operator class, a cast, text search objects, functions
/// over row types and over tables created after them, a full-text trigger,
/// a partitioned table, aggregates incl. an ordered-set one, a
/// materialized view, a postgres_fdw server with a user mapping and a
/// foreign table, a publication, privileges): migrated whole with --roles,
/// in binary and in text COPY, pg_dump -s and every row identical.
#[tokio::test]
async fn application_database_migrates_whole() {
    let db = testkit::shared_pair().fresh_db("appdb").await;
    load_app_fixture(&db.source).await;
    for (suffix, extra) in [
        ("bin", vec!["--roles"]),
        ("txt", vec!["--roles", "--copy-format", "text"]),
    ] {
        let target = other_target_db(&db, suffix);
        migrate_clean(&db.source, &target, &extra).await;
        let (a, b) = (schema_dump(&db.source), schema_dump(&target));
        assert!(a == b, "schema dumps differ: {}", diff_hint(&a, &b));
        assert_eq!(
            content_digest(&db.source).await,
            content_digest(&target).await,
            "table contents differ ({suffix})"
        );
        let probe = "SELECT market.active_listing_count() || ' ' || (SELECT count(*) FROM market.seller_stats)
                     || ' ' || (SELECT count(*) FROM market.orders_other) || ' ' || nextval('market.invoice_no')
                     || ' ' || (SELECT market.label(s) FROM market.sellers s WHERE id = 3)
                     || ' ' || (SELECT count(*) FROM market.listings WHERE search @@ to_tsquery('market.search', 'runs'))";
        assert_eq!(
            testkit::query_scalar(&target, probe).await,
            testkit::query_scalar(&db.source, probe).await
        );
    }
}
