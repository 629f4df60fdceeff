//! `pg::connect` against real servers: TCP, Unix sockets, authentication
//! failures, timeouts, multiple hosts and every TLS mode.

mod common;

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use pg_dbmigrator::config::{EndpointConfig, Host, Secret, SslMode};
use pg_dbmigrator::error::exit_code;
use pg_dbmigrator::pg::catalog::server_version_num;
use pg_dbmigrator::pg::connect::connect;
use pg_dbmigrator::pg::quote;
use pg_dbmigrator::testkit::{self, CertFiles, Cluster, ClusterOptions};
use pg_dbmigrator::MigrationError;

/// Connect and run a trivial query, or panic with the error.
async fn ok(ep: &EndpointConfig) -> tokio_postgres::Client {
    let client = connect(ep, "source")
        .await
        .unwrap_or_else(|e| panic!("connect to {ep:?} failed: {e}"));
    client.simple_query("SELECT 1").await.unwrap();
    client
}

/// Expect a Connect error; check it never shows the password.
async fn fails(ep: &EndpointConfig) -> MigrationError {
    let err = match connect(ep, "target").await {
        Ok(_) => panic!("connect to {ep:?} unexpectedly succeeded"),
        Err(e) => e,
    };
    assert!(
        matches!(err, MigrationError::Connect { ref endpoint, .. } if endpoint == "target"),
        "{err:?}"
    );
    eprintln!("ERR: {err}");
    assert_eq!(err.exit_code(), exit_code::CONFIG);
    if let Some(pw) = &ep.password {
        let pw = pw.expose();
        assert!(!err.to_string().contains(pw), "password in error: {err}");
        assert!(
            !format!("{err:?}").contains(pw),
            "password in error: {err:?}"
        );
    }
    err
}

fn reason(err: &MigrationError) -> &str {
    match err {
        MigrationError::Connect { reason, .. } => reason,
        _ => unreachable!(),
    }
}

async fn is_ssl(client: &tokio_postgres::Client) -> bool {
    let row = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap();
    row.get(0)
}

fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn plain_cluster() -> &'static Cluster {
    testkit::shared_pair()
        .target
        .cluster()
        .expect("connect tests need testkit-owned clusters (unset PG_DBMIGRATOR_TEST_*)")
}

#[tokio::test]
async fn tcp_with_password() {
    let c = plain_cluster();
    let client = ok(&c.endpoint("postgres")).await;
    let v = server_version_num(&client).await.unwrap();
    assert_eq!((v / 10000) as u32, c.major, "{v}");
    let row = client
        .query_one("SHOW application_name", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "pg_dbmigrator");
}

#[tokio::test]
async fn unix_socket_ignores_sslmode() {
    let c = plain_cluster();
    let mut ep = c.endpoint("postgres");
    ep.hosts = vec![Host::Unix(c.socket_dir.clone())];
    ep.password = None;
    ep.sslmode = SslMode::Require; // libpq ignores it on sockets; so do we
    let client = ok(&ep).await;
    let row = client
        .query_one("SELECT inet_server_addr() IS NULL", &[])
        .await
        .unwrap();
    assert!(row.get::<_, bool>(0), "not a Unix-socket session");
}

#[tokio::test]
async fn wrong_password_keeps_sqlstate_and_hides_password() {
    let c = plain_cluster();
    let mut ep = c.endpoint("postgres");
    ep.password = Some(Secret::new("Wr0ng-pa55word-XYZ"));
    let err = fails(&ep).await;
    assert_eq!(err.sqlstate(), Some("28P01"), "{err:?}");
    assert!(
        reason(&err).contains("password authentication failed for user \"postgres\""),
        "{err}"
    );
    assert!(
        err.to_string().contains("cannot connect to target"),
        "{err}"
    );
    assert!(
        err.to_string().contains(&format!("port={}", c.port)),
        "{err}"
    );
}

#[tokio::test]
async fn closed_port_fails_fast() {
    let c = plain_cluster();
    let mut ep = c.endpoint("postgres");
    ep.ports = vec![closed_port()];
    let t = Instant::now();
    let err = fails(&ep).await;
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    assert!(reason(&err).contains("connection refused"), "{err}");
    assert_eq!(err.sqlstate(), None);
}

#[tokio::test]
async fn silent_listener_times_out() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    // Accept and hold every connection without ever answering.
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let c = plain_cluster();
    for mode in [SslMode::Disable, SslMode::Prefer] {
        let mut ep = c.endpoint("postgres");
        ep.ports = vec![port];
        ep.sslmode = mode;
        ep.sslrootcert = Some("/nonexistent/root.crt".into());
        ep.connect_timeout = Duration::from_secs(2);
        let t = Instant::now();
        let err = fails(&ep).await;
        let took = t.elapsed();
        assert!(took >= Duration::from_millis(1900), "{took:?}");
        assert!(took < Duration::from_secs(5), "{took:?}");
        assert!(reason(&err).contains("timed out after 2s"), "{err}");
    }
    holder.abort();
}

#[tokio::test]
async fn hosts_are_tried_in_order() {
    let c = plain_cluster();
    let mut ep = c.endpoint("postgres");
    let dead = closed_port();
    ep.hosts = vec![Host::Tcp("127.0.0.1".into()), Host::Tcp("localhost".into())];
    ep.ports = vec![dead, c.port];
    ok(&ep).await;

    // Both down: the error names the last host tried.
    let dead2 = closed_port();
    ep.ports = vec![dead, dead2];
    let err = fails(&ep).await;
    assert!(
        reason(&err).starts_with(&format!("localhost:{dead2}: connection refused")),
        "{err}"
    );
}

#[tokio::test]
async fn awkward_password_user_and_options() {
    let c = plain_cluster();
    let admin = c.conninfo("postgres");
    let user = "odd user@x";
    let password = "p@ss%20: w o'rd\\ end=1";
    testkit::execute(
        &admin,
        &format!(
            "DROP ROLE IF EXISTS {u}; CREATE ROLE {u} LOGIN PASSWORD {p}",
            u = quote::ident(user),
            p = quote::literal(password)
        ),
    )
    .await
    .unwrap();
    let mut ep = c.endpoint("postgres");
    ep.user = user.into();
    ep.password = Some(Secret::new(password));
    ep.application_name = Some("mig test".into());
    ep.options = Some("-c search_path=a_schema,public -c statement_timeout=123s".into());
    let client = ok(&ep).await;
    let got: Vec<String> = {
        let mut v = Vec::new();
        for q in [
            "SELECT current_user::text",
            "SHOW application_name",
            "SHOW search_path",
            "SHOW statement_timeout",
        ] {
            v.push(client.query_one(q, &[]).await.unwrap().get(0));
        }
        v
    };
    assert_eq!(got, [user, "mig test", "a_schema,public", "123s"]);

    // Debug never shows the password, and neither does a failure.
    assert!(!format!("{ep:?}").contains(password));
    ep.password = Some(Secret::new(format!("{password}-wrong")));
    let err = fails(&ep).await;
    assert_eq!(err.sqlstate(), Some("28P01"));
}

// ---------------------------------------------------------------- TLS

struct TlsEnv {
    dir: PathBuf,
    ca: CertFiles,
    other_ca: CertFiles,
    client: CertFiles,
    /// Cert for localhost + 127.0.0.1; pg_hba allows hostssl only.
    good: Cluster,
    /// Cert for wrong.example only; role `plainonly` is rejected over TLS.
    misnamed: Cluster,
}

fn tls_env() -> &'static TlsEnv {
    static ENV: OnceLock<TlsEnv> = OnceLock::new();
    ENV.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("connect-tls-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let ca = testkit::make_test_ca(&dir, "test-ca").unwrap();
        let other_ca = testkit::make_test_ca(&dir, "other-ca").unwrap();
        let server = testkit::make_test_cert(
            &dir,
            &ca,
            "server",
            "localhost",
            &["DNS:localhost", "IP:127.0.0.1"],
        )
        .unwrap();
        let wrong =
            testkit::make_test_cert(&dir, &ca, "wrong", "wrong.example", &["DNS:wrong.example"])
                .unwrap();
        let client = testkit::make_test_cert(&dir, &ca, "client", "certuser", &[]).unwrap();
        let hba = "local all all trust\n\
                   hostssl all certuser 127.0.0.1/32 cert\n\
                   hostssl all all 127.0.0.1/32 scram-sha-256\n"
            .to_string();
        let good_opts = ClusterOptions {
            ssl: Some((server.cert.clone(), server.key.clone())),
            ssl_ca: Some(ca.cert.clone()),
            hba: Some(hba),
            ..Default::default()
        };
        let bad_opts = ClusterOptions {
            ssl: Some((wrong.cert.clone(), wrong.key.clone())),
            hba: Some(
                "local all all trust\n\
                 hostssl all plainonly 127.0.0.1/32 reject\n\
                 host all all 127.0.0.1/32 scram-sha-256\n"
                    .into(),
            ),
            ..Default::default()
        };
        let (good, misnamed) = std::thread::scope(|s| {
            let a = s.spawn(|| Cluster::start(&good_opts).expect("TLS cluster"));
            let b = s.spawn(|| Cluster::start(&bad_opts).expect("misnamed TLS cluster"));
            (a.join().unwrap(), b.join().unwrap())
        });
        TlsEnv {
            dir,
            ca,
            other_ca,
            client,
            good,
            misnamed,
        }
    })
}

fn tls_ep(c: &Cluster, host: &str, mode: SslMode, root: Option<&PathBuf>) -> EndpointConfig {
    let mut ep = c.endpoint("postgres");
    ep.hosts = vec![Host::Tcp(host.into())];
    ep.sslmode = mode;
    // An explicit root (or an explicitly absent one) keeps ~/.postgresql out of the test.
    ep.sslrootcert = Some(
        root.map(|p| p.display().to_string())
            .unwrap_or_else(|| "/nonexistent/pg_dbmigrator/root.crt".into()),
    );
    ep
}

#[tokio::test]
async fn tls_require_encrypts_without_verification() {
    let env = tls_env();
    for c in [&env.good, &env.misnamed] {
        let client = ok(&tls_ep(c, "127.0.0.1", SslMode::Require, None)).await;
        assert!(is_ssl(&client).await);
    }
}

#[tokio::test]
async fn tls_verify_ca_checks_chain_not_name() {
    let env = tls_env();
    let client = ok(&tls_ep(
        &env.good,
        "127.0.0.1",
        SslMode::VerifyCa,
        Some(&env.ca.cert),
    ))
    .await;
    assert!(is_ssl(&client).await);
    // Name does not match, but verify-ca does not care.
    ok(&tls_ep(
        &env.misnamed,
        "127.0.0.1",
        SslMode::VerifyCa,
        Some(&env.ca.cert),
    ))
    .await;

    let err = fails(&tls_ep(
        &env.good,
        "127.0.0.1",
        SslMode::VerifyCa,
        Some(&env.other_ca.cert),
    ))
    .await;
    assert!(reason(&err).contains("TLS handshake failed"), "{err}");
    assert!(reason(&err).contains("UnknownIssuer"), "{err}");
}

#[tokio::test]
async fn tls_verify_full_checks_name() {
    let env = tls_env();
    let client = ok(&tls_ep(
        &env.good,
        "localhost",
        SslMode::VerifyFull,
        Some(&env.ca.cert),
    ))
    .await;
    assert!(is_ssl(&client).await);
    // The IP SAN matches too.
    ok(&tls_ep(
        &env.good,
        "127.0.0.1",
        SslMode::VerifyFull,
        Some(&env.ca.cert),
    ))
    .await;

    for host in ["localhost", "127.0.0.1"] {
        let err = fails(&tls_ep(
            &env.misnamed,
            host,
            SslMode::VerifyFull,
            Some(&env.ca.cert),
        ))
        .await;
        assert!(reason(&err).contains("not valid for name"), "{err}");
    }
    let err = fails(&tls_ep(
        &env.good,
        "localhost",
        SslMode::VerifyFull,
        Some(&env.other_ca.cert),
    ))
    .await;
    assert!(reason(&err).contains("UnknownIssuer"), "{err}");
}

#[tokio::test]
async fn tls_require_with_root_cert_verifies_chain() {
    // libpq: a root certificate file makes `require` behave as `verify-ca`.
    let env = tls_env();
    ok(&tls_ep(
        &env.misnamed,
        "127.0.0.1",
        SslMode::Require,
        Some(&env.ca.cert),
    ))
    .await;
    let err = fails(&tls_ep(
        &env.good,
        "127.0.0.1",
        SslMode::Require,
        Some(&env.other_ca.cert),
    ))
    .await;
    assert!(reason(&err).contains("UnknownIssuer"), "{err}");
}

#[tokio::test]
async fn tls_missing_root_file_is_a_clear_error() {
    let env = tls_env();
    let missing = env.dir.join("no-such-root.crt");
    for mode in [SslMode::VerifyCa, SslMode::VerifyFull] {
        let err = fails(&tls_ep(&env.good, "localhost", mode, Some(&missing))).await;
        let r = reason(&err);
        assert!(r.contains("root certificate file"), "{err}");
        assert!(r.contains("does not exist"), "{err}");
        assert!(r.contains("change sslmode"), "{err}");
    }
}

#[tokio::test]
async fn sslmodes_against_hostssl_only_server() {
    let env = tls_env();
    let err = fails(&tls_ep(&env.good, "127.0.0.1", SslMode::Disable, None)).await;
    assert_eq!(err.sqlstate(), Some("28000"), "{err:?}");
    assert!(reason(&err).contains("no encryption"), "{err}");

    for mode in [SslMode::Allow, SslMode::Prefer] {
        let client = ok(&tls_ep(&env.good, "127.0.0.1", mode, None)).await;
        assert!(is_ssl(&client).await, "{mode:?}");
    }
}

#[tokio::test]
async fn sslmodes_against_server_without_tls() {
    let c = plain_cluster();
    for mode in [SslMode::Disable, SslMode::Allow, SslMode::Prefer] {
        let client = ok(&tls_ep(c, "127.0.0.1", mode, None)).await;
        assert!(!is_ssl(&client).await, "{mode:?}");
    }
    let err = fails(&tls_ep(c, "127.0.0.1", SslMode::Require, None)).await;
    assert!(
        reason(&err).starts_with("server does not support TLS"),
        "{err}"
    );
}

#[tokio::test]
async fn tls_client_certificate_authentication() {
    let env = tls_env();
    testkit::execute(
        &env.good.socket_conninfo("postgres"),
        "DO $$ BEGIN CREATE ROLE certuser LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$",
    )
    .await
    .unwrap();
    let mut ep = tls_ep(
        &env.good,
        "localhost",
        SslMode::VerifyFull,
        Some(&env.ca.cert),
    );
    ep.user = "certuser".into();
    ep.password = None;
    let err = fails(&ep).await;
    assert_eq!(err.sqlstate(), Some("28000"), "{err:?}");

    ep.sslcert = Some(env.client.cert.clone());
    ep.sslkey = Some(env.client.key.clone());
    let client = ok(&ep).await;
    let row = client
        .query_one("SELECT current_user::text", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "certuser");

    ep.sslcert = Some(env.dir.join("missing-client.crt"));
    let err = fails(&ep).await;
    assert!(reason(&err).contains("client certificate file"), "{err}");
}

#[tokio::test]
async fn prefer_falls_back_to_plain_like_libpq() {
    let env = tls_env();
    // Handshake fails (untrusted issuer): retried without TLS.
    let ep = tls_ep(
        &env.misnamed,
        "127.0.0.1",
        SslMode::Prefer,
        Some(&env.other_ca.cert),
    );
    let client = ok(&ep).await;
    assert!(!is_ssl(&client).await);

    // The server rejects the TLS session (hostssl ... reject): retried without TLS.
    testkit::execute(
        &env.misnamed.socket_conninfo("postgres"),
        "DO $$ BEGIN CREATE ROLE plainonly LOGIN PASSWORD 'plain pw'; \
         EXCEPTION WHEN duplicate_object THEN NULL; END $$",
    )
    .await
    .unwrap();
    let mut ep = tls_ep(&env.misnamed, "127.0.0.1", SslMode::Prefer, None);
    ep.user = "plainonly".into();
    ep.password = Some(Secret::new("plain pw"));
    let client = ok(&ep).await;
    assert!(!is_ssl(&client).await);

    // Both attempts fail: the TLS failure is reported, not the pg_hba
    // rejection of the plain retry.
    let ep = tls_ep(
        &env.good,
        "127.0.0.1",
        SslMode::Prefer,
        Some(&env.other_ca.cert),
    );
    let err = fails(&ep).await;
    assert!(reason(&err).contains("UnknownIssuer"), "{err}");
}

#[tokio::test]
async fn wrong_password_is_reported_through_transport_retries() {
    let env = tls_env();
    for mode in [SslMode::Allow, SslMode::Prefer] {
        let mut ep = tls_ep(&env.good, "127.0.0.1", mode, None);
        ep.password = Some(Secret::new("not-the-password-123"));
        let err = fails(&ep).await;
        assert_eq!(err.sqlstate(), Some("28P01"), "{mode:?}: {err}");
    }
}

/// The copy's target sessions speak the protocol themselves (`pg::wire`,
/// pipelined COPYs): over a server that takes TCP only with TLS, a
/// migration verifying the server's name must still move every row, small
/// tables loaded several per transaction and a big one alone, with FREEZE.
#[tokio::test]
async fn a_migration_where_only_tls_is_allowed_moves_every_row() {
    let env = tls_env();
    let c = &env.good;
    let admin = c.socket_conninfo("postgres");
    for sql in [
        "DROP DATABASE IF EXISTS tls_src",
        "DROP DATABASE IF EXISTS tls_dst",
        "CREATE DATABASE tls_src",
    ] {
        testkit::execute(&admin, sql).await.unwrap();
    }
    testkit::execute(&admin, "CREATE DATABASE tls_dst")
        .await
        .unwrap();
    let mut sql = String::from(
        "CREATE TABLE big (id bigint PRIMARY KEY, pad text NOT NULL);
         INSERT INTO big SELECT g, repeat('x', 200) FROM generate_series(1, 20000) g;
         ANALYZE big;",
    );
    for i in 0..40 {
        sql.push_str(&format!(
            "CREATE TABLE small_{i} (id int PRIMARY KEY, big_id bigint REFERENCES big, v text);
             INSERT INTO small_{i} SELECT g, g, 'row ' || g FROM generate_series(1, {}) g;",
            i * 3
        ));
    }
    testkit::execute(&c.socket_conninfo("tls_src"), &sql)
        .await
        .unwrap();
    let tls = |db: &str| {
        format!(
            "host=127.0.0.1 port={} user={} password={} dbname={db} sslmode=verify-full sslrootcert={}",
            c.port,
            c.superuser,
            testkit::conninfo_quote(&c.password),
            env.ca.cert.display()
        )
    };
    let report = common::migrate_clean(&tls("tls_src"), &tls("tls_dst"), &["--jobs", "2"]).await;
    assert_eq!(
        common::content_digest(&c.socket_conninfo("tls_src")).await,
        common::content_digest(&c.socket_conninfo("tls_dst")).await,
        "{report:#}"
    );
    let big = report["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["table"] == "public.big")
        .unwrap_or_else(|| panic!("no public.big in {report:#}"))
        .clone();
    assert_eq!(big["rows"], 20000, "{big:#}");
    assert_eq!(big["freeze"], true, "{big:#}");
}
