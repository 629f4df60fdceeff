//! The replication session and the pgoutput decoder against real servers:
//! connecting with `replication=database` (trust, SCRAM, md5, cleartext,
//! TLS with channel binding), IDENTIFY_SYSTEM, a slot with an exported
//! snapshot that a normal session imports, a stream of inserts, updates,
//! deletes, truncates and logical messages decoded message by message,
//! streamed (in-progress) transactions, and standby status updates that move
//! the slot's `confirmed_flush_lsn`.
//!
//! Every slot is dropped at the end, and by a guard when a test fails: a
//! forgotten slot pins WAL on the server forever.

use std::collections::HashMap;
use std::time::Duration;

use pg_dbmigrator::config::{EndpointConfig, Host, Secret, SslMode};
use pg_dbmigrator::pg::quote::literal;
use pg_dbmigrator::pg::replication::{
    AuthMethod, Lsn, ReplicationMessage, ReplicationReader, ReplicationSession, ReplicationStream,
    ReplicationWriter, StandbyStatus,
};
use pg_dbmigrator::replication::pgoutput::{self, Message, OldTuple, Tuple, Value};
use pg_dbmigrator::testkit::{self, Cluster, ClusterOptions};
use pg_dbmigrator::MigrationError;

/// How long any single wait on the server may take before the test fails.
const WAIT: Duration = Duration::from_secs(30);

/// Drops a replication slot when the test ends without doing it itself,
/// terminating the walsender that may still hold it.
struct SlotGuard {
    conninfo: String,
    name: String,
    armed: bool,
}

impl SlotGuard {
    fn new(conninfo: &str, name: &str) -> Self {
        SlotGuard {
            conninfo: conninfo.to_string(),
            name: name.to_string(),
            armed: true,
        }
    }

    fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let (conninfo, name) = (self.conninfo.clone(), self.name.clone());
        // We may be inside the test's runtime (unwinding): use a thread of our own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let Ok(c) = testkit::try_client(&conninfo).await else {
                    return;
                };
                let lit = literal(&name);
                for _ in 0..100 {
                    let sql = format!(
                        "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots \
                         WHERE slot_name = {lit} AND active_pid IS NOT NULL;
                         SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
                         WHERE slot_name = {lit}"
                    );
                    if c.batch_execute(&sql).await.is_ok() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                eprintln!("could not drop replication slot {name}");
            });
        })
        .join();
    }
}

/// A slot name no other test (or test process) uses.
fn slot_name(tag: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "dbm_{tag}_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

async fn scalar(conninfo: &str, sql: &str) -> String {
    testkit::query_scalar(conninfo, sql).await
}

async fn confirmed_flush(conninfo: &str, slot: &str) -> Lsn {
    scalar(
        conninfo,
        &format!(
            "SELECT coalesce(confirmed_flush_lsn::text, '0/0') FROM pg_replication_slots WHERE slot_name = {}",
            literal(slot)
        ),
    )
    .await
    .parse()
    .unwrap()
}

async fn slot_exists(conninfo: &str, slot: &str) -> bool {
    scalar(
        conninfo,
        &format!(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = {}",
            literal(slot)
        ),
    )
    .await
        == "1"
}

/// Next message from the stream, failing the test after [`WAIT`].
async fn next(reader: &mut ReplicationReader) -> ReplicationMessage {
    tokio::time::timeout(WAIT, reader.next_message())
        .await
        .expect("no replication message within 30 s")
        .expect("reading the stream")
        .expect("the server ended the stream")
}

/// A value as the expected-sequence strings below show it.
fn show_value(v: &Value) -> String {
    match v {
        Value::Null => "NULL".into(),
        Value::UnchangedToast => "TOAST".into(),
        Value::Text(b) if b.len() > 40 => format!("<{} bytes>", b.len()),
        Value::Text(_) => v.as_text().unwrap().to_string(),
        Value::Binary(b) => format!("<binary {} bytes>", b.len()),
    }
}

fn show_tuple(t: &Tuple) -> String {
    let vals: Vec<String> = t.0.iter().map(show_value).collect();
    format!("({})", vals.join(","))
}

fn show_old(o: &OldTuple) -> String {
    match o {
        OldTuple::Key(t) => format!("K{}", show_tuple(t)),
        OldTuple::Full(t) => format!("O{}", show_tuple(t)),
    }
}

/// One line per message; relation oids become names.
fn show(m: &Message, rels: &mut HashMap<u32, String>) -> String {
    let rel = |rels: &HashMap<u32, String>, oid: u32| {
        rels.get(&oid).cloned().unwrap_or_else(|| format!("?{oid}"))
    };
    match m {
        Message::Begin(_) => "BEGIN".into(),
        Message::Commit(_) => "COMMIT".into(),
        Message::Relation(r) => {
            rels.insert(r.oid, r.name.clone());
            let cols: Vec<String> = r
                .columns
                .iter()
                .map(|c| {
                    format!(
                        "{}:{}{}",
                        c.name,
                        c.type_oid,
                        if c.is_key() { ":key" } else { "" }
                    )
                })
                .collect();
            format!(
                "RELATION {}.{} {:?} {}",
                r.namespace,
                r.name,
                r.replica_identity,
                cols.join(" ")
            )
        }
        Message::Insert(i) => format!(
            "INSERT {} new={}",
            rel(rels, i.relation_oid),
            show_tuple(&i.new)
        ),
        Message::Update(u) => match &u.old {
            Some(o) => format!(
                "UPDATE {} old={} new={}",
                rel(rels, u.relation_oid),
                show_old(o),
                show_tuple(&u.new)
            ),
            None => format!(
                "UPDATE {} new={}",
                rel(rels, u.relation_oid),
                show_tuple(&u.new)
            ),
        },
        Message::Delete(d) => format!(
            "DELETE {} old={}",
            rel(rels, d.relation_oid),
            show_old(&d.old)
        ),
        Message::Truncate(t) => {
            let names: Vec<String> = t.relation_oids.iter().map(|o| rel(rels, *o)).collect();
            format!("TRUNCATE {} options={}", names.join(","), t.options)
        }
        Message::LogicalMessage(lm) => format!(
            "MESSAGE {} {} {}",
            if lm.transactional { "tx" } else { "nontx" },
            lm.prefix,
            String::from_utf8_lossy(&lm.content)
        ),
        other => format!("{other:?}"),
    }
}

/// Answers keepalives that ask for a reply; true when it was a keepalive.
async fn answer_keepalive(
    m: &ReplicationMessage,
    writer: &ReplicationWriter,
    received: Lsn,
    flushed: Lsn,
) -> bool {
    match m {
        ReplicationMessage::PrimaryKeepalive(k) => {
            if k.reply_requested {
                writer
                    .send_status(StandbyStatus::new(received.max(k.wal_end), flushed))
                    .await
                    .unwrap();
            }
            true
        }
        ReplicationMessage::XLogData(_) => false,
    }
}

#[tokio::test]
async fn trust_over_unix_socket_identify_system_and_sql() {
    let pair = testkit::shared_pair();
    let db = pair.fresh_db("repl_trust").await;
    let Some(cluster) = pair.source.cluster() else {
        panic!(
            "this test needs the source's Unix socket, unknown for an external server: \
             run it without PG_DBMIGRATOR_TEST_SOURCE"
        );
    };
    // Unix socket with trust; the first host does not exist (multi-host).
    let mut ep = EndpointConfig::parse(&cluster.socket_conninfo(&db.name)).unwrap();
    ep.hosts
        .insert(0, Host::Unix("/nonexistent-dbm-dir".into()));
    ep.ports = vec![cluster.port];
    ep.application_name = Some("dbm_repl_test".into());
    let mut s = ReplicationSession::connect(&ep).await.unwrap();
    assert_eq!(s.auth_method(), AuthMethod::None);
    assert!(!s.is_tls());
    assert_eq!(s.server_major(), Some(pair.source.major()));
    assert!(s.max_proto_version() >= 1);

    let id = s.identify_system().await.unwrap();
    let sysid = scalar(
        &db.source,
        "SELECT system_identifier::text FROM pg_control_system()",
    )
    .await;
    assert_eq!(id.systemid, sysid);
    assert_eq!(id.dbname.as_deref(), Some(db.name.as_str()));
    assert!(id.timeline >= 1);
    let now: Lsn = scalar(&db.source, "SELECT pg_current_wal_lsn()::text")
        .await
        .parse()
        .unwrap();
    assert!(
        id.xlogpos.is_valid() && id.xlogpos <= now,
        "{} vs {now}",
        id.xlogpos
    );

    // A logical walsender runs SQL too, with NULLs kept apart from text.
    let rows = s
        .simple_query("SELECT 1, NULL::text, 'x y', current_database()")
        .await
        .unwrap();
    assert_eq!(
        rows,
        vec![vec![
            Some("1".to_string()),
            None,
            Some("x y".into()),
            Some(db.name.clone())
        ]]
    );
    // The session options fix the text form of values.
    let rows = s.simple_query("SHOW datestyle").await.unwrap();
    assert_eq!(rows[0][0].as_deref(), Some("ISO, MDY"));

    // Server errors keep their SQLSTATE and leave the session usable.
    let e = s.simple_query("SELECT 1/0").await.unwrap_err();
    assert_eq!(e.sqlstate(), Some("22012"), "{e}");
    let e = s
        .simple_query("DROP_REPLICATION_SLOT \"no_such_slot_dbm\"")
        .await
        .unwrap_err();
    assert_eq!(e.sqlstate(), Some("42704"), "{e}");
    s.identify_system().await.unwrap();

    let who = scalar(
        &db.source,
        &format!(
            "SELECT backend_type || '/' || application_name FROM pg_stat_activity WHERE pid = {}",
            s.backend_pid()
        ),
    )
    .await;
    assert_eq!(who, "walsender/dbm_repl_test");
    s.close().await.unwrap();

    // Every host failing: the error names each.
    ep.hosts = vec![Host::Unix("/nonexistent-dbm-dir".into())];
    let e = ReplicationSession::connect(&ep).await.unwrap_err();
    assert!(matches!(e, MigrationError::Connect { .. }), "{e}");
    assert!(e.to_string().contains("no such file"), "{e}");
    pair.drop_db(&db).await;
}

#[tokio::test]
async fn scram_login_and_failed_logins_never_show_the_password() {
    let pair = testkit::shared_pair();
    let db = pair.fresh_db("repl_scram").await;
    let role = format!("dbm_repl_scram_{}", std::process::id());
    let norepl = format!("dbm_repl_norepl_{}", std::process::id());
    let password = "Zq8-very-secret-pw";
    testkit::execute(
        &db.source,
        &format!(
            "SET password_encryption = 'scram-sha-256';
             DROP ROLE IF EXISTS {role}; DROP ROLE IF EXISTS {norepl};
             CREATE ROLE {role} LOGIN REPLICATION PASSWORD {pw};
             CREATE ROLE {norepl} LOGIN PASSWORD {pw};",
            pw = literal(password)
        ),
    )
    .await
    .unwrap();

    // The shared source's pg_hba asks TCP clients for scram-sha-256.
    let mut ep = EndpointConfig::parse(&db.source).unwrap();
    ep.user = role.clone();
    ep.password = Some(Secret::new(password));
    ep.sslmode = SslMode::Disable;
    let mut s = ReplicationSession::connect(&ep).await.unwrap();
    assert_eq!(s.auth_method(), AuthMethod::ScramSha256);
    s.identify_system().await.unwrap();
    s.close().await.unwrap();

    // prefer against a server without TLS: plaintext, as libpq does.
    let mut prefer = ep.clone();
    prefer.sslmode = SslMode::Prefer;
    let s = ReplicationSession::connect(&prefer).await.unwrap();
    assert!(!s.is_tls());
    drop(s);
    // require against the same server: refused before any password is sent.
    let mut require = ep.clone();
    require.sslmode = SslMode::Require;
    let e = ReplicationSession::connect(&require).await.unwrap_err();
    assert!(e.to_string().contains("does not support TLS"), "{e}");

    let wrong = "Wrong-Zq8-very-secret-pw";
    let mut bad = ep.clone();
    bad.password = Some(Secret::new(wrong));
    let e = ReplicationSession::connect(&bad).await.unwrap_err();
    assert_eq!(e.sqlstate(), Some("28P01"), "{e}");
    assert_eq!(e.exit_code(), pg_dbmigrator::error::exit_code::CONFIG);
    let shown = format!("{e} {e:?}");
    assert!(shown.contains("password authentication failed"), "{shown}");
    assert!(
        !shown.contains(password) && !shown.contains(wrong),
        "{shown}"
    );

    let mut none = ep.clone();
    none.password = None;
    let e = ReplicationSession::connect(&none).await.unwrap_err();
    assert!(e.to_string().contains("no password"), "{e}");

    // A role without REPLICATION may log in, but not as a walsender.
    let mut plain = ep.clone();
    plain.user = norepl.clone();
    let e = ReplicationSession::connect(&plain).await.unwrap_err();
    assert_eq!(e.sqlstate(), Some("42501"), "{e}");
    assert!(!format!("{e} {e:?}").contains(password));

    testkit::execute(
        &db.source,
        &format!("DROP ROLE {role}; DROP ROLE {norepl};"),
    )
    .await
    .unwrap();
    pair.drop_db(&db).await;
}

/// A cluster of its own: TLS with a private CA, and pg_hba entries that
/// force each password method.
#[tokio::test]
async fn tls_channel_binding_md5_and_cleartext() {
    let dir = tempfile::tempdir().unwrap();
    let ca = testkit::make_test_ca(dir.path(), "repl-ca").unwrap();
    let server = testkit::make_test_cert(
        dir.path(),
        &ca,
        "repl-server",
        "localhost",
        &["DNS:localhost", "IP:127.0.0.1"],
    )
    .unwrap();
    let other_ca = testkit::make_test_ca(dir.path(), "other-ca").unwrap();
    let hba = "local all all trust\n\
               hostssl all dbm_scram 127.0.0.1/32 scram-sha-256\n\
               host all dbm_md5 127.0.0.1/32 md5\n\
               host all dbm_clear 127.0.0.1/32 password\n\
               host all all 127.0.0.1/32 reject\n";
    let cluster = tokio::task::spawn_blocking(move || {
        Cluster::start(&ClusterOptions {
            ssl: Some((server.cert, server.key)),
            hba: Some(hba.into()),
            ..Default::default()
        })
    })
    .await
    .unwrap()
    .unwrap();
    let admin = cluster.socket_conninfo("postgres");
    let pw = "tls-Pw-4711";
    testkit::execute(
        &admin,
        &format!(
            "SET password_encryption = 'scram-sha-256';
             CREATE ROLE dbm_scram LOGIN REPLICATION PASSWORD {p};
             CREATE ROLE dbm_clear LOGIN REPLICATION PASSWORD {p};
             SET password_encryption = 'md5';
             CREATE ROLE dbm_md5 LOGIN REPLICATION PASSWORD {p};",
            p = literal(pw)
        ),
    )
    .await
    .unwrap();
    let ep = |user: &str, host: &str, mode: SslMode, root: &std::path::Path| EndpointConfig {
        hosts: vec![Host::Tcp(host.into())],
        ports: vec![cluster.port],
        user: user.into(),
        password: Some(Secret::new(pw)),
        dbname: "postgres".into(),
        sslmode: mode,
        sslrootcert: Some(root.display().to_string()),
        sslcert: None,
        sslkey: None,
        application_name: None,
        connect_timeout: Duration::from_secs(10),
        options: None,
    };

    // verify-full by name: SCRAM bound to the certificate.
    let mut s =
        ReplicationSession::connect(&ep("dbm_scram", "localhost", SslMode::VerifyFull, &ca.cert))
            .await
            .unwrap();
    assert!(s.is_tls());
    assert_eq!(s.auth_method(), AuthMethod::ScramSha256Plus);
    s.identify_system().await.unwrap();
    let ssl = scalar(
        &admin,
        &format!(
            "SELECT ssl::text FROM pg_stat_ssl WHERE pid = {}",
            s.backend_pid()
        ),
    )
    .await;
    assert_eq!(ssl, "true");
    drop(s);

    // allow: plaintext first, refused by pg_hba, then TLS.
    let s = ReplicationSession::connect(&ep("dbm_scram", "127.0.0.1", SslMode::Allow, &ca.cert))
        .await
        .unwrap();
    assert!(s.is_tls());
    drop(s);
    // prefer: TLS.
    let s = ReplicationSession::connect(&ep("dbm_scram", "127.0.0.1", SslMode::Prefer, &ca.cert))
        .await
        .unwrap();
    assert!(s.is_tls());
    drop(s);

    // A certificate from the wrong CA is refused during the handshake.
    let e = ReplicationSession::connect(&ep(
        "dbm_scram",
        "localhost",
        SslMode::VerifyCa,
        &other_ca.cert,
    ))
    .await
    .unwrap_err();
    assert!(e.to_string().contains("TLS handshake failed"), "{e}");
    assert!(!format!("{e:?}").contains(pw));

    let mut s =
        ReplicationSession::connect(&ep("dbm_md5", "127.0.0.1", SslMode::Disable, &ca.cert))
            .await
            .unwrap();
    assert_eq!(s.auth_method(), AuthMethod::Md5);
    s.identify_system().await.unwrap();
    drop(s);
    let mut bad = ep("dbm_md5", "127.0.0.1", SslMode::Disable, &ca.cert);
    bad.password = Some(Secret::new("not-the-Pw"));
    let e = ReplicationSession::connect(&bad).await.unwrap_err();
    assert_eq!(e.sqlstate(), Some("28P01"), "{e}");
    assert!(!format!("{e} {e:?}").contains("not-the-Pw"));

    let mut s =
        ReplicationSession::connect(&ep("dbm_clear", "127.0.0.1", SslMode::Disable, &ca.cert))
            .await
            .unwrap();
    assert_eq!(s.auth_method(), AuthMethod::Cleartext);
    s.identify_system().await.unwrap();
    drop(s);
    cluster.stop();
}

/// Everything between `CREATE_REPLICATION_SLOT` and `DROP_REPLICATION_SLOT`
/// on the database `conninfo` names: snapshot import, decoding of every kind
/// of change, feedback, a restart that skips what was confirmed.
async fn slot_stream_and_feedback(conninfo: &str, proto: Option<u32>) {
    testkit::execute(
        conninfo,
        "CREATE TABLE items (id int PRIMARY KEY, name text, qty int, note text);
         ALTER TABLE items ALTER note SET STORAGE EXTERNAL;
         CREATE TABLE full_t (id int, v text);
         ALTER TABLE full_t REPLICA IDENTITY FULL;
         INSERT INTO items VALUES (1, 'a', 10, 'short'), (2, 'b', 20, NULL);
         INSERT INTO full_t VALUES (1, 'A'), (2, 'B');
         CREATE PUBLICATION pub FOR TABLE items, full_t;",
    )
    .await
    .unwrap();
    let ep = EndpointConfig::parse(conninfo).unwrap();
    let mut s = ReplicationSession::connect(&ep).await.unwrap();
    let proto = proto.unwrap_or_else(|| s.max_proto_version());
    let name = slot_name("flow");
    let mut guard = SlotGuard::new(conninfo, &name);
    let slot = s.create_logical_slot(&name, true).await.unwrap();
    assert_eq!(slot.slot_name, name);
    assert_eq!(slot.output_plugin.as_deref(), Some("pgoutput"));
    assert!(slot.consistent_point.is_valid());
    let snapshot = slot.snapshot_name.clone().expect("an exported snapshot");

    // Committed after the slot: in the stream, not in the snapshot.
    testkit::execute(
        conninfo,
        "INSERT INTO items VALUES (3, 'c', NULL, repeat('x', 5000))",
    )
    .await
    .unwrap();
    let c = testkit::client(conninfo).await;
    c.batch_execute(&format!(
        "BEGIN ISOLATION LEVEL REPEATABLE READ; SET TRANSACTION SNAPSHOT {}",
        literal(&snapshot)
    ))
    .await
    .unwrap();
    let ids: Vec<i32> = c
        .query("SELECT id FROM items ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        ids,
        [1, 2],
        "the snapshot shows the rows from before the slot"
    );
    c.batch_execute("COMMIT").await.unwrap();

    for sql in [
        "UPDATE items SET qty = 7 WHERE id = 3",
        "UPDATE items SET id = 30 WHERE id = 3",
        "BEGIN; UPDATE full_t SET v = 'B2' WHERE id = 2; DELETE FROM full_t WHERE id = 1;
         SELECT pg_logical_emit_message(true, 'pfx', 'hello'); COMMIT;",
        "DELETE FROM items WHERE id = 1",
        "TRUNCATE items",
        "SELECT pg_logical_emit_message(false, 'nt', 'bye')",
    ] {
        testkit::execute(conninfo, sql).await.unwrap();
    }
    let wal_after: Lsn = scalar(conninfo, "SELECT pg_current_wal_lsn()::text")
        .await
        .parse()
        .unwrap();

    let stream = s
        .start_replication(&name, slot.consistent_point, "pub", proto, false)
        .await
        .unwrap();
    let pid = stream.backend_pid();
    let (mut reader, writer) = stream.split();

    // Feedback from a task of its own, as an applier would send it.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<StandbyStatus>();
    let feedback_writer = writer.clone();
    let feedback = tokio::spawn(async move {
        while let Some(st) = rx.recv().await {
            feedback_writer.send_status(st).await?;
        }
        Ok::<_, MigrationError>(())
    });

    let mut rels = HashMap::new();
    let mut lines = Vec::new();
    let mut received = Lsn::INVALID;
    let mut open_begin = None;
    let mut last_end = Lsn::INVALID;
    let mut commits = 0;
    while !(commits == 6
        && lines
            .last()
            .is_some_and(|l: &String| l.starts_with("MESSAGE nontx")))
    {
        let m = next(&mut reader).await;
        if answer_keepalive(&m, &writer, received, Lsn::INVALID).await {
            continue;
        }
        let ReplicationMessage::XLogData(x) = m else {
            unreachable!()
        };
        received = received.max(x.wal_start).max(x.wal_end);
        let msg = pgoutput::decode_bytes(x.data.clone(), false).unwrap();
        match &msg {
            Message::Begin(b) => {
                assert!(b.final_lsn > slot.consistent_point);
                open_begin = Some(b.clone());
            }
            Message::Commit(cm) => {
                let b = open_begin.take().expect("Commit after Begin");
                assert_eq!(b.final_lsn, cm.commit_lsn);
                assert_eq!(b.commit_time, cm.commit_time);
                assert!(cm.end_lsn > cm.commit_lsn && cm.end_lsn > last_end);
                assert_eq!(
                    x.wal_start, cm.end_lsn,
                    "a Commit's XLogData starts at its end LSN"
                );
                last_end = cm.end_lsn;
                // Before 15, transactions of other databases on a shared
                // server arrive as empty Begin/Commit pairs.
                if lines.last().is_some_and(|l: &String| l == "BEGIN") {
                    lines.pop();
                    continue;
                }
                commits += 1;
            }
            _ => {}
        }
        lines.push(show(&msg, &mut rels));
    }
    assert!(last_end <= wal_after);
    let int4 = 23;
    let text = 25;
    let expected = vec![
        "BEGIN".to_string(),
        format!("RELATION public.items Default id:{int4}:key name:{text} qty:{int4} note:{text}"),
        "INSERT items new=(3,c,NULL,<5000 bytes>)".into(),
        "COMMIT".into(),
        "BEGIN".into(),
        "UPDATE items new=(3,c,7,TOAST)".into(),
        "COMMIT".into(),
        "BEGIN".into(),
        "UPDATE items old=K(3,NULL,NULL,NULL) new=(30,c,7,TOAST)".into(),
        "COMMIT".into(),
        "BEGIN".into(),
        format!("RELATION public.full_t Full id:{int4}:key v:{text}:key"),
        "UPDATE full_t old=O(2,B) new=(2,B2)".into(),
        "DELETE full_t old=O(1,A)".into(),
        "MESSAGE tx pfx hello".into(),
        "COMMIT".into(),
        "BEGIN".into(),
        "DELETE items old=K(1,NULL,NULL,NULL)".into(),
        "COMMIT".into(),
        "BEGIN".into(),
        // TRUNCATE gives the table a new relfilenode; the relcache
        // invalidation makes the server describe the table again.
        format!("RELATION public.items Default id:{int4}:key name:{text} qty:{int4} note:{text}"),
        "TRUNCATE items options=0".into(),
        "COMMIT".into(),
        "MESSAGE nontx nt bye".into(),
    ];
    assert_eq!(lines, expected, "proto_version {proto}");

    // Confirm everything up to the last commit and ask for an answer: the
    // slot moves exactly there, and the server replies with a keepalive.
    let before = confirmed_flush(conninfo, &name).await;
    assert!(before < last_end);
    tx.send(StandbyStatus {
        reply_requested: true,
        ..StandbyStatus::new(received, last_end)
    })
    .unwrap();
    let keepalive = loop {
        if let ReplicationMessage::PrimaryKeepalive(k) = next(&mut reader).await {
            break k;
        }
    };
    assert!(keepalive.wal_end >= last_end);
    let deadline = tokio::time::Instant::now() + WAIT;
    while confirmed_flush(conninfo, &name).await != last_end {
        assert!(
            tokio::time::Instant::now() < deadline,
            "confirmed_flush_lsn never reached {last_end}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let active = scalar(
        conninfo,
        &format!(
            "SELECT active_pid::text FROM pg_replication_slots WHERE slot_name = {}",
            literal(&name)
        ),
    )
    .await;
    assert_eq!(active, pid.to_string());

    drop(tx);
    feedback.await.unwrap().unwrap();
    let stream = ReplicationStream::unsplit(reader, writer).await.unwrap();
    let mut s = stream.finish().await.unwrap();
    // Back in command mode on the same session.
    s.identify_system().await.unwrap();

    // The server cannot stream twice on one connection; we say so.
    let e = s
        .start_replication(&name, Lsn::INVALID, "pub", proto, false)
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("once per replication session"),
        "{e}"
    );

    // Restarting from 0/0 on a new session resumes at confirmed_flush_lsn:
    // the six confirmed transactions are not sent again, but the
    // non-transactional message written after that point is.
    let s = ReplicationSession::connect(&ep).await.unwrap();
    let stream = s
        .start_replication(&name, Lsn::INVALID, "pub", proto, false)
        .await
        .unwrap();
    testkit::execute(conninfo, "INSERT INTO items VALUES (40, 'd', 1, NULL)")
        .await
        .unwrap();
    let (mut reader, writer) = stream.split();
    let mut again = Vec::new();
    loop {
        let m = next(&mut reader).await;
        if answer_keepalive(&m, &writer, Lsn::INVALID, last_end).await {
            continue;
        }
        let ReplicationMessage::XLogData(x) = m else {
            unreachable!()
        };
        let msg = pgoutput::decode_bytes(x.data, false).unwrap();
        if let Message::Begin(b) = &msg {
            assert!(b.final_lsn > last_end);
        }
        again.push(show(&msg, &mut rels));
        if matches!(msg, Message::Commit(_)) {
            break;
        }
    }
    assert_eq!(
        again,
        [
            "MESSAGE nontx nt bye".to_string(),
            "BEGIN".into(),
            format!(
                "RELATION public.items Default id:{int4}:key name:{text} qty:{int4} note:{text}"
            ),
            "INSERT items new=(40,d,1,NULL)".into(),
            "COMMIT".into(),
        ]
    );
    let mut s = ReplicationStream::unsplit(reader, writer)
        .await
        .unwrap()
        .finish()
        .await
        .unwrap();
    s.drop_slot(&name, false).await.unwrap();
    guard.disarm();
    assert!(!slot_exists(conninfo, &name).await);
    s.close().await.unwrap();
}

#[tokio::test]
async fn slot_snapshot_stream_and_feedback_proto_1() {
    let pair = testkit::shared_pair();
    let db = pair.fresh_db("repl_flow_v1").await;
    slot_stream_and_feedback(&db.source, Some(1)).await;
    pair.drop_db(&db).await;
}

#[tokio::test]
async fn slot_snapshot_stream_and_feedback_highest_proto() {
    let pair = testkit::shared_pair();
    let db = pair.fresh_db("repl_flow_max").await;
    slot_stream_and_feedback(&db.source, None).await;
    pair.drop_db(&db).await;
}

/// In-progress transactions larger than `logical_decoding_work_mem` arrive
/// in Stream Start … Stream Stop blocks whose data messages carry the xid of
/// their (sub)transaction; they end in Stream Commit or Stream Abort, and a
/// rolled-back subtransaction gets a Stream Abort of its own.
async fn streamed_transactions(conninfo: &str) {
    testkit::execute(
        conninfo,
        "CREATE TABLE big (id int PRIMARY KEY, pad text);
         CREATE PUBLICATION pub FOR TABLE big;",
    )
    .await
    .unwrap();
    let mut ep = EndpointConfig::parse(conninfo).unwrap();
    // The smallest limit, so a few hundred kB of changes are streamed.
    ep.options = Some("-c logical_decoding_work_mem=64kB".into());
    let mut s = ReplicationSession::connect(&ep).await.unwrap();
    let proto = s.max_proto_version();
    assert!(proto >= 2, "streaming needs PostgreSQL 14+");
    let name = slot_name("stream");
    let mut guard = SlotGuard::new(conninfo, &name);
    let slot = s.create_logical_slot(&name, false).await.unwrap();
    assert_eq!(slot.snapshot_name, None);

    testkit::execute(
        conninfo,
        "INSERT INTO big SELECT g, repeat('p', 200) FROM generate_series(1, 2000) g",
    )
    .await
    .unwrap();
    testkit::execute(
        conninfo,
        "BEGIN; INSERT INTO big SELECT g, repeat('q', 200) FROM generate_series(10001, 12000) g; ROLLBACK;",
    )
    .await
    .unwrap();
    // A streamed transaction whose subtransaction rolls back: changes carry
    // the subtransaction's xid, and a Stream Abort names it.
    testkit::execute(
        conninfo,
        "BEGIN;
         INSERT INTO big VALUES (20000, 'top');
         SAVEPOINT s;
         INSERT INTO big SELECT g, repeat('s', 200) FROM generate_series(20001, 22000) g;
         ROLLBACK TO SAVEPOINT s;
         INSERT INTO big VALUES (30000, 'after');
         COMMIT;",
    )
    .await
    .unwrap();
    testkit::execute(conninfo, "INSERT INTO big VALUES (0, 'small')")
        .await
        .unwrap();

    #[derive(Debug, PartialEq)]
    enum End {
        Commit(u32),
        Abort { xid: u32, subxid: u32 },
    }
    let stream = s
        .start_replication(&name, slot.consistent_point, "pub", proto, true)
        .await
        .unwrap();
    let (mut reader, writer) = stream.split();
    let mut in_stream = false;
    let mut stream_xid = 0;
    // Per top-level xid: the first-segment flag of each block.
    let mut blocks: HashMap<u32, Vec<bool>> = HashMap::new();
    // Per change xid: (top-level xid, first id, inserts).
    let mut changes: HashMap<u32, (u32, String, u32)> = HashMap::new();
    let mut ends = Vec::new();
    let mut small = Vec::new();
    let mut received = Lsn::INVALID;
    let last_end = loop {
        let m = next(&mut reader).await;
        if answer_keepalive(&m, &writer, received, Lsn::INVALID).await {
            continue;
        }
        let ReplicationMessage::XLogData(x) = m else {
            unreachable!()
        };
        received = received.max(x.wal_end);
        let msg = pgoutput::decode_bytes(x.data, in_stream).unwrap();
        match msg {
            Message::StreamStart(st) => {
                assert!(!in_stream);
                in_stream = true;
                stream_xid = st.xid;
                blocks.entry(st.xid).or_default().push(st.first_segment);
            }
            Message::StreamStop => {
                assert!(in_stream);
                in_stream = false;
            }
            Message::Relation(r) => {
                assert_eq!(r.xid.is_some(), in_stream);
                assert_eq!(r.name, "big");
            }
            Message::Insert(i) if in_stream => {
                let xid = i.xid.expect("changes in a stream carry their xid");
                let e = changes
                    .entry(xid)
                    .or_insert_with(|| (stream_xid, show_value(&i.new.0[0]), 0));
                assert_eq!(
                    e.0, stream_xid,
                    "a subtransaction stays in its top-level stream"
                );
                e.2 += 1;
            }
            Message::Insert(i) => {
                assert_eq!(i.xid, None);
                small.push(show_tuple(&i.new));
            }
            Message::StreamCommit(c) => {
                assert!(!in_stream && c.end_lsn > c.commit_lsn);
                ends.push(End::Commit(c.xid));
            }
            Message::StreamAbort(a) => {
                assert!(!in_stream);
                // Only streaming 'parallel' (proto 4) reports where.
                assert_eq!(a.abort_lsn.is_some(), proto >= 4, "{a:?}");
                assert_eq!(a.abort_time.is_some(), proto >= 4, "{a:?}");
                if let Some(l) = a.abort_lsn {
                    assert!(l > slot.consistent_point);
                }
                ends.push(End::Abort {
                    xid: a.xid,
                    subxid: a.subxid,
                });
            }
            Message::Begin(_) => assert!(!in_stream),
            // (Before 15, other databases' transactions come as empty pairs.)
            Message::Commit(c) if !small.is_empty() => break c.end_lsn,
            Message::Commit(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(small, ["(0,small)"]);
    assert_eq!(blocks.len(), 3, "three streamed transactions: {blocks:?}");
    let by_first = |id: &str| {
        changes
            .iter()
            .find(|(_, c)| c.1 == id)
            .map(|(x, c)| (*x, c.0, c.2))
            .unwrap_or_else(|| panic!("no streamed change starting at id {id}: {changes:?}"))
    };
    // 1..2000 committed: one xid, every row, several blocks.
    let (t1, top1, n1) = by_first("1");
    assert_eq!(t1, top1);
    assert_eq!(n1, 2000);
    assert!(
        blocks[&t1].len() >= 2,
        "2000 rows of 200 bytes exceed 64kB several times"
    );
    assert!(blocks[&t1][0], "the first block is marked as such");
    assert!(blocks[&t1][1..].iter().all(|f| !f));
    // 10001..12000 rolled back: whatever was streamed before the abort.
    let (t2, top2, n2) = by_first("10001");
    assert_eq!(t2, top2);
    assert!(n2 > 0 && n2 <= 2000);
    // The savepoint transaction: the top xid, the rolled-back subxact, and
    // the subxact that followed ROLLBACK TO SAVEPOINT.
    let (t4, top4, n4) = by_first("20000");
    assert_eq!((t4, n4), (top4, 1));
    let (sub, sub_top, n_sub) = by_first("20001");
    assert_eq!(sub_top, t4);
    assert_ne!(sub, t4);
    assert!(n_sub > 0 && n_sub <= 2000);
    let (after, after_top, n_after) = by_first("30000");
    assert_eq!((after_top, n_after), (t4, 1));
    assert!(after != sub && after != t4);
    assert_eq!(
        ends,
        [
            End::Commit(t1),
            End::Abort {
                xid: t2,
                subxid: t2
            },
            End::Abort {
                xid: t4,
                subxid: sub
            },
            End::Commit(t4),
        ]
    );

    writer
        .send_status(StandbyStatus::new(received, last_end))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while confirmed_flush(conninfo, &name).await != last_end {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut s = ReplicationStream::unsplit(reader, writer)
        .await
        .unwrap()
        .finish()
        .await
        .unwrap();
    s.drop_slot(&name, false).await.unwrap();
    guard.disarm();
    assert!(!slot_exists(conninfo, &name).await);
}

#[tokio::test]
async fn streamed_transactions_highest_proto() {
    let pair = testkit::shared_pair();
    assert!(
        pair.source.major() >= 14,
        "streamed transactions need a PostgreSQL 14+ source; PG_DBMIGRATOR_TEST_SOURCE names a {} server",
        pair.source.major()
    );
    let db = pair.fresh_db("repl_streamed").await;
    streamed_transactions(&db.source).await;
    pair.drop_db(&db).await;
}

/// Protocol 4 (streaming 'parallel', abort positions) needs 16+; the local
/// server may be older, so this runs on a PostgreSQL 17 of its own.
#[tokio::test]
async fn proto_4_on_postgres_17() {
    let cluster = tokio::task::spawn_blocking(|| {
        let bin = testkit::ensure_embedded_major(17)?;
        Cluster::start(&ClusterOptions {
            bin_dir: Some(bin),
            logical: true,
            ..Default::default()
        })
    })
    .await
    .unwrap()
    .unwrap_or_else(|e| panic!("PostgreSQL 17: {e}"));
    for db in ["flow", "streamed"] {
        testkit::execute(
            &cluster.conninfo("postgres"),
            &format!("CREATE DATABASE {db}"),
        )
        .await
        .unwrap();
    }
    let s = ReplicationSession::connect(&cluster.endpoint("flow"))
        .await
        .unwrap();
    assert_eq!(s.max_proto_version(), 4);
    drop(s);
    slot_stream_and_feedback(&cluster.conninfo("flow"), None).await;
    streamed_transactions(&cluster.conninfo("streamed")).await;
    cluster.stop();
}

/// A server that accepts but never answers must not hang us: the attempt
/// is bounded by connect_timeout, and the next host is tried.
#[tokio::test]
async fn connect_timeout_bounds_a_silent_server() {
    let pair = testkit::shared_pair();
    let db = pair.fresh_db("repl_timeout").await;
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((sock, _)) = silent.accept().await {
            held.push(sock);
        }
    });
    let real = EndpointConfig::parse(&db.source).unwrap();
    let mut ep = real.clone();
    ep.hosts = vec![Host::Tcp("127.0.0.1".into())];
    ep.ports = vec![silent_port];
    ep.connect_timeout = Duration::from_millis(300);
    let started = std::time::Instant::now();
    let e = ReplicationSession::connect(&ep).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(e.to_string().contains("timed out"), "{e}");

    // Multi-host: the silent one first, then the real server.
    ep.hosts = vec![Host::Tcp("127.0.0.1".into()), real.hosts[0].clone()];
    ep.ports = vec![silent_port, real.port_for(0)];
    let mut s = ReplicationSession::connect(&ep).await.unwrap();
    s.identify_system().await.unwrap();
    holder.abort();
    pair.drop_db(&db).await;
}
