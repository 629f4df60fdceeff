//! The globals stage against real servers: roles (SCRAM and MD5 passwords,
//! attributes, a quoted name), memberships with ADMIN and GRANTED BY, role
//! and per-database settings, a parameter privilege, comments and a
//! tablespace go from the shared source to the shared target, where
//! `pg_dumpall --globals-only` must then print the same globals, each LOGIN
//! role logs in with its own password, and a second run changes nothing.
//! Roles are cluster-wide, so one test builds the whole fixture and walks
//! through every case in order; a PostgreSQL 17 target comes last.

mod common;

use std::path::Path;

use common::{line_diff, login, normalized_globals, pg_dumpall_globals, require_passwords};

use pg_dbmigrator::globals::{self, GlobalsOptions};
use pg_dbmigrator::pg::quote::ident;
use pg_dbmigrator::testkit::{self, Cluster, ClusterOptions};
use pg_dbmigrator::ErrorKind;

const WEIRD: &str = "Weird \"Role\" name";

/// (role, password) of every LOGIN role with a password.
const LOGINS: &[(&str, &str)] = &[
    ("g_scram", "scram-pw"),
    ("g_md5", "md5-pw"),
    (WEIRD, "weird-pw"),
    ("g_member", "member-pw"),
    ("g_nonsuper", "nonsuper-pw"),
];

/// An empty directory the server's OS user may use as a tablespace.
fn tablespace_dir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("pgdbm-globals-ts-")
        .tempdir_in("/tmp")
        .unwrap();
    let ids = std::process::Command::new("id")
        .args(["-u", "postgres"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<u32>().ok());
    let is_root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    if let (true, Some(uid)) = (is_root, ids) {
        std::os::unix::fs::chown(dir.path(), Some(uid), None).unwrap();
    }
    dir
}

fn fixture(db: &str, location: &Path) -> String {
    let w = ident(WEIRD);
    let db = ident(db);
    let loc = location.display();
    format!(
        "BEGIN;
         SET password_encryption = 'scram-sha-256';
         CREATE ROLE g_scram LOGIN PASSWORD 'scram-pw' VALID UNTIL '2031-01-02 03:04:05+00' CONNECTION LIMIT 7;
         CREATE ROLE {w} LOGIN CREATEDB PASSWORD 'weird-pw';
         CREATE ROLE g_member LOGIN NOINHERIT PASSWORD 'member-pw';
         CREATE ROLE g_nonsuper LOGIN CREATEROLE PASSWORD 'nonsuper-pw';
         SET password_encryption = 'md5';
         CREATE ROLE g_md5 LOGIN PASSWORD 'md5-pw';
         RESET password_encryption;
         CREATE ROLE g_group NOLOGIN;
         CREATE ROLE g_admin NOLOGIN CREATEROLE;
         CREATE ROLE g_repl LOGIN REPLICATION BYPASSRLS;
         GRANT g_group TO g_admin WITH ADMIN OPTION;
         GRANT g_group TO g_member GRANTED BY g_admin;
         GRANT g_group TO {w};
         GRANT pg_read_all_data TO g_repl;
         ALTER ROLE g_scram SET work_mem = '8MB';
         ALTER ROLE g_member SET search_path = \"$user\", public;
         ALTER ROLE g_scram IN DATABASE {db} SET statement_timeout = '5s';
         GRANT SET ON PARAMETER work_mem TO g_member;
         GRANT SET, ALTER SYSTEM ON PARAMETER log_min_duration_statement TO g_admin;
         COMMENT ON ROLE g_group IS 'the group';
         COMMIT;@@
         CREATE TABLESPACE g_space OWNER g_admin LOCATION '{loc}';@@
         BEGIN;
         ALTER TABLESPACE g_space SET (seq_page_cost = 2);
         GRANT CREATE ON TABLESPACE g_space TO g_member;
         COMMENT ON TABLESPACE g_space IS 'a space';
         COMMIT;"
    )
}

#[tokio::test]
async fn globals_stage_carries_what_pg_dumpall_carries() {
    let pair = testkit::shared_pair();
    let (Some(src_cluster), Some(tgt_cluster)) = (pair.source.cluster(), pair.target.cluster())
    else {
        eprintln!("skipped: needs throwaway clusters (roles are cluster-wide)");
        return;
    };
    // The PostgreSQL 17 clusters start meanwhile (a target, then a source
    // of 16+ grant options and a target for them).
    let start17 = || {
        tokio::task::spawn_blocking(|| {
            let bin = testkit::ensure_embedded_major(17)?;
            Cluster::start(&ClusterOptions {
                bin_dir: Some(bin),
                ..Default::default()
            })
        })
    };
    let pg17 = start17();
    let pg17b = start17();
    let (src_ci, tgt_ci) = (pair.source.admin_conninfo(), pair.target.admin_conninfo());
    let db = pair.fresh_db("globals").await;
    let (src_dir, tgt_dir) = (tablespace_dir(), tablespace_dir());
    // CREATE TABLESPACE runs alone: a multi-statement query is a transaction.
    for batch in fixture(&db.name, src_dir.path()).split("@@") {
        testkit::execute(&src_ci, batch).await.unwrap();
    }
    require_passwords(tgt_cluster).await;

    let opts = GlobalsOptions {
        tablespace_locations: vec![(
            src_dir.path().display().to_string(),
            tgt_dir.path().display().to_string(),
        )],
        ..Default::default()
    };
    let source = testkit::client(&src_ci).await;
    let target = testkit::client(&tgt_ci).await;

    // A password hash shows nowhere in the model's Debug.
    let g = globals::read(&source, &opts).await.unwrap();
    assert!(g.passwords_read);
    let dbg = format!("{g:?}");
    let md5 = testkit::query_scalar(
        &src_ci,
        "SELECT rolpassword FROM pg_authid WHERE rolname = 'g_md5'",
    )
    .await;
    assert!(md5.starts_with("md5"));
    assert!(
        !dbg.contains("SCRAM-SHA-256$") && !dbg.contains(&md5),
        "{dbg}"
    );

    // The server logs every statement meanwhile: no hash may be in one.
    testkit::execute(&tgt_ci, "ALTER SYSTEM SET log_statement = 'all'")
        .await
        .unwrap();
    testkit::execute(&tgt_ci, "SELECT pg_reload_conf()")
        .await
        .unwrap();
    let report = globals::migrate(&source, &target, &opts).await.unwrap();
    let log = tgt_cluster.log_tail(1 << 20);
    let scram = testkit::query_scalar(
        &src_ci,
        "SELECT rolpassword FROM pg_authid WHERE rolname = 'g_scram'",
    )
    .await;
    assert!(
        log.contains("CREATE ROLE g_scram"),
        "statements are not logged"
    );
    assert!(
        !log.contains(&scram) && !log.contains(&md5),
        "a hash is in the server log"
    );
    let mut created = report.roles_created.clone();
    created.sort();
    let mut expected = vec![
        "g_admin",
        "g_group",
        "g_md5",
        "g_member",
        "g_nonsuper",
        "g_repl",
        "g_scram",
        WEIRD,
    ];
    expected.sort();
    assert_eq!(created, expected, "{report:#?}");
    assert!(report.without_password.is_empty(), "{report:#?}");
    assert!(report.differences.is_empty(), "{report:#?}");
    assert_eq!(report.tablespaces_created, ["g_space"]);
    assert_eq!(report.memberships_granted, 4, "{report:#?}");
    assert_eq!(report.parameter_privileges_applied, 2, "{report:#?}");

    // pg_dumpall --globals-only of both: the same, but for the bootstrap
    // superuser and the mapped location.
    let (a, b) = (
        normalized_globals(&pg_dumpall_globals(&src_ci)),
        normalized_globals(&pg_dumpall_globals(&tgt_ci)),
    );
    assert!(
        a == b,
        "pg_dumpall --globals-only differs:\n{}",
        line_diff(&a, &b)
    );
    assert!(a.contains("GRANTED BY g_admin"), "{a}");

    // Every LOGIN role logs in with its own password; a wrong one fails.
    for (user, pw) in LOGINS {
        login(tgt_cluster, user, pw)
            .await
            .unwrap_or_else(|e| panic!("{user} cannot log in to the target: {e}"));
    }
    assert!(login(tgt_cluster, "g_md5", "wrong").await.is_err());
    assert!(login(tgt_cluster, "g_repl", "").await.is_err());

    // A second run changes nothing.
    let again = globals::migrate(&source, &target, &opts).await.unwrap();
    assert!(!again.changed(), "{again:#?}");
    assert_eq!(again.roles_unchanged.len(), 8);
    assert!(again.differences.is_empty(), "{again:#?}");
    assert_eq!(again.tablespaces_unchanged, ["g_space"]);

    // Per-database role settings, once the database exists on the target.
    let s = globals::apply_database_settings(&target, &g, &db.name, &db.name, &opts)
        .await
        .unwrap();
    assert_eq!(s.settings_applied, 1, "{s:#?}");
    let on_target = testkit::query_scalar(
        &tgt_ci,
        &format!(
            "SELECT array_to_string(setconfig, ',') FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase
              WHERE d.datname = '{}' AND s.setrole = 'g_scram'::regrole",
            db.name
        ),
    )
    .await;
    assert_eq!(on_target, "statement_timeout=5s");
    let s = globals::apply_database_settings(&target, &g, &db.name, &db.name, &opts)
        .await
        .unwrap();
    assert!(!s.changed(), "{s:#?}");

    // An existing role that differs is reported and left, changed only
    // with roles_overwrite.
    testkit::execute(&tgt_ci, "ALTER ROLE g_group CREATEDB")
        .await
        .unwrap();
    let r = globals::migrate(&source, &target, &opts).await.unwrap();
    assert!(r.roles_updated.is_empty());
    assert!(
        r.differences
            .iter()
            .any(|d| d.object == "role g_group" && d.detail.contains("CREATEDB")),
        "{r:#?}"
    );
    let createdb = "SELECT rolcreatedb::text FROM pg_roles WHERE rolname = 'g_group'";
    assert_eq!(testkit::query_scalar(&tgt_ci, createdb).await, "true");
    let overwrite = GlobalsOptions {
        roles_overwrite: true,
        ..opts.clone()
    };
    let r = globals::migrate(&source, &target, &overwrite)
        .await
        .unwrap();
    assert_eq!(r.roles_updated, ["g_group"], "{r:#?}");
    assert_eq!(testkit::query_scalar(&tgt_ci, createdb).await, "false");

    // A source session that may not read pg_authid: no passwords, and a
    // warning naming every LOGIN role.
    let nonsuper = testkit::client(&format!(
        "host=127.0.0.1 port={} user=g_nonsuper password=nonsuper-pw dbname=postgres sslmode=disable",
        src_cluster.port
    ))
    .await;
    let r = globals::migrate(&nonsuper, &target, &opts).await.unwrap();
    let mut nopw = r.without_password.clone();
    nopw.sort();
    let mut logins = vec![
        "g_md5",
        "g_member",
        "g_nonsuper",
        "g_repl",
        "g_scram",
        WEIRD,
    ];
    logins.sort();
    assert_eq!(nopw, logins, "{r:#?}");
    let warning = r
        .warnings
        .iter()
        .find(|w| w.contains("password"))
        .unwrap_or_else(|| panic!("no password warning: {r:#?}"));
    for l in &logins {
        assert!(warning.contains(l), "{warning}");
    }
    // (The roles exist already; an unknown password is no difference.)
    assert!(!r.changed(), "{r:#?}");

    // A tablespace whose directory is missing on the target: a clear error.
    let extra_dir = tablespace_dir();
    testkit::execute(
        &src_ci,
        &format!(
            "CREATE TABLESPACE g_space2 LOCATION '{}'",
            extra_dir.path().display()
        ),
    )
    .await
    .unwrap();
    let mut missing = opts.clone();
    missing.tablespace_locations.push((
        extra_dir.path().display().to_string(),
        "/nonexistent/pgdbm".into(),
    ));
    let e = globals::migrate(&source, &target, &missing)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::TargetNotReady, "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("g_space2") && msg.contains("tablespace_locations"),
        "{msg}"
    );

    // 15 -> 17: the same globals, checked in the catalogs.
    let pg17 = pg17.await.unwrap().expect("PostgreSQL 17 cluster");
    let ci17 = pg17.conninfo("postgres");
    let dir17 = tablespace_dir();
    let dir17b = tablespace_dir();
    let opts17 = GlobalsOptions {
        tablespace_locations: vec![
            (
                src_dir.path().display().to_string(),
                dir17.path().display().to_string(),
            ),
            (
                extra_dir.path().display().to_string(),
                dir17b.path().display().to_string(),
            ),
        ],
        ..Default::default()
    };
    let t17 = testkit::client(&ci17).await;
    let r = globals::migrate(&source, &t17, &opts17).await.unwrap();
    assert_eq!(r.roles_created.len(), 8, "{r:#?}");
    assert_eq!(r.tablespaces_created, ["g_space", "g_space2"]);
    let again = globals::migrate(&source, &t17, &opts17).await.unwrap();
    assert!(!again.changed(), "{again:#?}");
    let catalog = [
        "SELECT string_agg(format('%s %s %s %s %s %s %s %s %s', rolname, rolsuper, rolinherit, rolcreaterole,
                rolcreatedb, rolcanlogin, rolreplication, rolbypassrls, rolconnlimit), E'\\n' ORDER BY rolname)
           FROM pg_roles WHERE rolname !~ '^pg_' AND oid <> 10",
        "SELECT string_agg(format('%s %s %s', r.rolname, m.rolname, a.admin_option), E'\\n' ORDER BY r.rolname, m.rolname)
           FROM pg_auth_members a JOIN pg_roles r ON r.oid = a.roleid JOIN pg_roles m ON m.oid = a.member",
        "SELECT string_agg(format('%s %s', r.rolname, s.setconfig), E'\\n' ORDER BY r.rolname)
           FROM pg_db_role_setting s JOIN pg_roles r ON r.oid = s.setrole WHERE s.setdatabase = 0",
        "SELECT string_agg(format('%s %s', parname, paracl), E'\\n' ORDER BY parname) FROM pg_parameter_acl",
        "SELECT string_agg(format('%s %s %s %s %s', spcname, pg_get_userbyid(spcowner), spcacl, spcoptions,
                shobj_description(oid, 'pg_tablespace')), E'\\n' ORDER BY spcname)
           FROM pg_tablespace WHERE spcname !~ '^pg_'",
        "SELECT string_agg(format('%s %s', rolname, shobj_description(oid, 'pg_authid')), E'\\n' ORDER BY rolname)
           FROM pg_roles WHERE shobj_description(oid, 'pg_authid') IS NOT NULL",
        "SELECT string_agg(format('%s %s', rolname, rolpassword), E'\\n' ORDER BY rolname)
           FROM pg_authid WHERE rolname !~ '^pg_' AND oid <> 10",
    ];
    for q in catalog {
        let (a, b) = (
            testkit::query_scalar(&src_ci, q).await,
            testkit::query_scalar(&ci17, q).await,
        );
        assert_eq!(a, b, "{q}");
    }

    // 17 -> 17: 16+ grant options, and a grantor that sorts before the
    // admin it needs (replayed after it).
    testkit::execute(
        &ci17,
        "CREATE ROLE h_group; CREATE ROLE h_zadmin; CREATE ROLE h_amember LOGIN;
         GRANT h_group TO h_zadmin WITH ADMIN TRUE;
         GRANT h_group TO h_amember WITH INHERIT FALSE, SET FALSE GRANTED BY h_zadmin;",
    )
    .await
    .unwrap();
    let pg17b = pg17b.await.unwrap().expect("PostgreSQL 17 cluster");
    let ci17b = pg17b.conninfo("postgres");
    let (dir17c, dir17d) = (tablespace_dir(), tablespace_dir());
    let opts17b = GlobalsOptions {
        tablespace_locations: vec![
            (
                dir17.path().display().to_string(),
                dir17c.path().display().to_string(),
            ),
            (
                dir17b.path().display().to_string(),
                dir17d.path().display().to_string(),
            ),
        ],
        ..Default::default()
    };
    let s17 = testkit::client(&ci17).await;
    let t17b = testkit::client(&ci17b).await;
    let r = globals::migrate(&s17, &t17b, &opts17b).await.unwrap();
    assert!(r.differences.is_empty(), "{r:#?}");
    let grants = "SELECT string_agg(format('%s %s %s %s %s %s', r.rolname, m.rolname, g.rolname, a.admin_option,
                a.inherit_option, a.set_option), E'\\n' ORDER BY r.rolname, m.rolname, g.rolname)
           FROM pg_auth_members a JOIN pg_roles r ON r.oid = a.roleid JOIN pg_roles m ON m.oid = a.member
           JOIN pg_roles g ON g.oid = a.grantor";
    let (a, b) = (
        testkit::query_scalar(&ci17, grants).await,
        testkit::query_scalar(&ci17b, grants).await,
    );
    assert_eq!(a, b);
    assert!(a.contains("h_group h_amember h_zadmin f f f"), "{a}");
    let again = globals::migrate(&s17, &t17b, &opts17b).await.unwrap();
    assert!(!again.changed(), "{again:#?}");

    // 17 -> 15: what 15 cannot express is granted as it can be, and said.
    let opts15 = GlobalsOptions {
        tablespace_locations: vec![
            (
                dir17.path().display().to_string(),
                tgt_dir.path().display().to_string(),
            ),
            (
                dir17b.path().display().to_string(),
                tablespace_dir().keep().display().to_string(),
            ),
        ],
        ..Default::default()
    };
    let r = globals::migrate(&s17, &target, &opts15).await.unwrap();
    assert!(
        r.warnings
            .iter()
            .any(|w| w.contains("h_amember") && w.contains("cannot be expressed")),
        "{r:#?}"
    );
    assert_eq!(
        testkit::query_scalar(
            &tgt_ci,
            "SELECT format('%s %s', g.rolname, a.admin_option) FROM pg_auth_members a
               JOIN pg_roles g ON g.oid = a.grantor WHERE a.member = 'h_amember'::regrole"
        )
        .await,
        "h_zadmin f"
    );
    pg17.stop();
    pg17b.stop();
}
