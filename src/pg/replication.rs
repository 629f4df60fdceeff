//! A `replication=database` session: the source side of an online migration.
//!
//! tokio-postgres cannot open a walsender connection, so this module speaks
//! the wire protocol itself on top of `postgres-protocol`: it connects the way
//! [`crate::pg::connect`] does (hosts in order, libpq `sslmode` semantics over
//! our rustls configuration, `connect_timeout` per host), authenticates
//! (trust, cleartext, md5, SCRAM-SHA-256 with `tls-server-end-point` channel
//! binding under TLS), runs replication commands with the simple-query
//! protocol, and enters CopyBoth mode for `START_REPLICATION`.
//!
//! The same connect, without `replication=database`, opens the copy's
//! pipelined target sessions ([`crate::pg::wire`], through
//! `ReplicationSession::connect_plain`): one implementation of hosts,
//! sslmode and authentication below tokio-postgres.
//!
//! The stream splits into a [`ReplicationReader`] and a cloneable
//! [`ReplicationWriter`], because the server must keep receiving standby
//! status updates even while the reader is back-pressured by a slow apply;
//! otherwise `wal_sender_timeout` kills the session.
//!
//! Errors never contain the password: it is only handed to the SCRAM/md5
//! routines and the password message, and server errors are kept as
//! [`DbErrorInfo`] exactly as [`MigrationError::db`] keeps them.

use std::fmt;
use std::io;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use postgres_protocol::authentication::sasl::{self, ChannelBinding, ScramSha256};
use postgres_protocol::message::backend::{ErrorFields, Message};
use postgres_protocol::message::frontend;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::Mutex;
use tokio_postgres::fallible_iterator::FallibleIterator;

use crate::config::{EndpointConfig, Host, SslMode};
use crate::error::{DbErrorInfo, MigrationError, Result};
use crate::pg::connect::{open_socket, DEFAULT_APPLICATION_NAME};

/// A WAL position. PostgreSQL prints it as two hexadecimal halves, `16/B374D848`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl Lsn {
    /// `0/0`: "no position"; the server ignores it in status updates, and
    /// `START_REPLICATION ... 0/0` means "from the slot's confirmed_flush_lsn".
    pub const INVALID: Lsn = Lsn(0);

    pub fn is_valid(self) -> bool {
        self.0 != 0
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

/// Why a string is not an LSN.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid LSN {0:?}: expected two hexadecimal numbers like 16/B374D848")]
pub struct LsnParseError(String);

impl FromStr for Lsn {
    type Err = LsnParseError;

    /// Accepts exactly what `pg_lsn_in` accepts: 1–8 hex digits, `/`, 1–8 hex digits.
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        let err = || LsnParseError(s.to_string());
        let (hi, lo) = s.split_once('/').ok_or_else(err)?;
        let half = |p: &str| {
            if p.is_empty() || p.len() > 8 || !p.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(err());
            }
            u32::from_str_radix(p, 16).map_err(|_| err())
        };
        Ok(Lsn((u64::from(half(hi)?) << 32) | u64::from(half(lo)?)))
    }
}

impl From<u64> for Lsn {
    fn from(v: u64) -> Self {
        Lsn(v)
    }
}

impl From<Lsn> for u64 {
    fn from(l: Lsn) -> Self {
        l.0
    }
}

impl serde::Serialize for Lsn {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Lsn {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Seconds from the Unix epoch to PostgreSQL's epoch, 2000-01-01 00:00 UTC.
const PG_EPOCH_UNIX_SECS: u64 = 946_684_800;

/// A replication-protocol timestamp: microseconds since 2000-01-01 UTC, as
/// the server sends them (send times, commit times) and expects them back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct PgTimestamp(pub i64);

impl PgTimestamp {
    pub fn now() -> Self {
        Self::from_system_time(SystemTime::now())
    }

    pub fn from_system_time(t: SystemTime) -> Self {
        let epoch = UNIX_EPOCH + Duration::from_secs(PG_EPOCH_UNIX_SECS);
        match t.duration_since(epoch) {
            Ok(d) => PgTimestamp(i64::try_from(d.as_micros()).unwrap_or(i64::MAX)),
            Err(e) => PgTimestamp(-i64::try_from(e.duration().as_micros()).unwrap_or(i64::MAX)),
        }
    }

    pub fn to_system_time(self) -> SystemTime {
        let epoch = UNIX_EPOCH + Duration::from_secs(PG_EPOCH_UNIX_SECS);
        let d = Duration::from_micros(self.0.unsigned_abs());
        if self.0 >= 0 {
            epoch + d
        } else {
            epoch - d
        }
    }
}

/// What `IDENTIFY_SYSTEM` returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemIdentity {
    /// The cluster's system identifier; it changes when a cluster is rebuilt
    /// or restored elsewhere, so a resume can tell it is not the same source.
    pub systemid: String,
    pub timeline: u32,
    /// Current WAL flush position.
    pub xlogpos: Lsn,
    /// The database this walsender is bound to.
    pub dbname: Option<String>,
}

/// What `CREATE_REPLICATION_SLOT ... LOGICAL` returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatedSlot {
    pub slot_name: String,
    /// Changes committed after this point are decoded; everything before is
    /// in the exported snapshot.
    pub consistent_point: Lsn,
    /// The exported snapshot, for `SET TRANSACTION SNAPSHOT`. Valid only until
    /// the next command on this session, or until it closes.
    pub snapshot_name: Option<String>,
    pub output_plugin: Option<String>,
}

/// How the session authenticated, for logs and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    /// The server asked for nothing (trust, peer, cert).
    None,
    Cleartext,
    Md5,
    ScramSha256,
    /// SCRAM bound to the TLS server certificate (`tls-server-end-point`).
    ScramSha256Plus,
}

/// Anything a session can run over: TCP, Unix socket, or TLS over TCP.
pub(crate) trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}
pub(crate) type BoxIo = Box<dyn Io>;

/// Largest backend message we accept. PostgreSQL caps a datum at 1 GB; a
/// length beyond that means the byte stream is out of step.
const MAX_FRAME: usize = (1 << 30) + (1 << 20);

const COPY_BOTH_RESPONSE_TAG: u8 = b'W';

/// Read one whole backend message (tag, length, body) into its own buffer.
/// We frame messages ourselves because postgres-protocol's parser does not
/// know CopyBothResponse and consumes the frame before it fails.
pub(crate) async fn read_frame<R: AsyncRead + Unpin + ?Sized>(
    r: &mut R,
    buf: &mut BytesMut,
) -> io::Result<BytesMut> {
    loop {
        if buf.len() >= 5 {
            let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
            if !(4..=MAX_FRAME).contains(&len) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "invalid message length {len} for message type {:?}",
                        buf[0] as char
                    ),
                ));
            }
            if buf.len() > len {
                return Ok(buf.split_to(len + 1));
            }
            buf.reserve(len + 1 - buf.len());
        } else {
            buf.reserve(64 * 1024);
        }
        if r.read_buf(buf).await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "server closed the connection unexpectedly",
            ));
        }
    }
}

/// The server's error or notice fields, as [`MigrationError::db`] keeps them.
pub(crate) fn error_info(mut fields: ErrorFields<'_>) -> DbErrorInfo {
    let mut info = DbErrorInfo {
        severity: String::new(),
        sqlstate: String::new(),
        message: String::new(),
        detail: None,
        hint: None,
    };
    let mut nonlocalized = None;
    while let Ok(Some(f)) = fields.next() {
        let v = String::from_utf8_lossy(f.value_bytes()).into_owned();
        match f.type_() {
            b'S' => info.severity = v,
            b'V' => nonlocalized = Some(v),
            b'C' => info.sqlstate = v,
            b'M' => info.message = v,
            b'D' => info.detail = Some(v),
            b'H' => info.hint = Some(v),
            _ => {}
        }
    }
    if info.severity.is_empty() {
        info.severity = nonlocalized.unwrap_or_else(|| "ERROR".into());
    }
    info
}

fn protocol_error(context: &str, message: impl Into<String>) -> MigrationError {
    MigrationError::Client {
        context: context.to_string(),
        message: message.into(),
    }
}

pub(crate) fn parse_message(frame: &mut BytesMut) -> io::Result<Message> {
    Message::parse(frame)?
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "incomplete message"))
}

/// Quote a string for the replication command grammar, which knows only
/// `'...'` with doubled quotes (no `E''`, and backslashes are plain).
fn repl_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Quote an identifier for the replication command grammar.
fn repl_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Server settings that decide the text form of every value pgoutput sends
/// (it renders them with the output functions of the walsender session).
/// The same settings the built-in subscriber sends, so values re-enter the
/// target unchanged whatever the source's defaults are.
const STREAM_OPTIONS: &str = "-c datestyle=ISO -c intervalstyle=postgres -c extra_float_digits=3";

/// Why one host could not be used.
struct Failure {
    reason: String,
    db: Option<Box<DbErrorInfo>>,
    /// The server accepted the SSLRequest, so a `prefer` retry is allowed.
    tls_tried: bool,
}

impl Failure {
    fn io(e: &io::Error) -> Self {
        let reason = crate::pg::connect::io_reason(e, false);
        Failure {
            reason,
            db: None,
            tls_tried: false,
        }
    }

    fn msg(reason: impl Into<String>) -> Self {
        Failure {
            reason: reason.into(),
            db: None,
            tls_tried: false,
        }
    }

    fn db(info: DbErrorInfo) -> Self {
        let mut reason = info.message.clone();
        if let Some(h) = &info.hint {
            reason.push_str(" (HINT: ");
            reason.push_str(h);
            reason.push(')');
        }
        Failure {
            reason,
            db: Some(Box::new(info)),
            tls_tried: false,
        }
    }
}

/// What to do about TLS on one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TlsWant {
    /// Never send an SSLRequest.
    Off,
    /// SSLRequest; continue in plaintext if the server says no.
    Try,
    /// SSLRequest; fail if the server says no.
    Must,
}

/// A logical walsender session in command mode.
pub struct ReplicationSession {
    io: BoxIo,
    rbuf: BytesMut,
    params: Vec<(String, String)>,
    backend_pid: i32,
    auth: AuthMethod,
    tls: bool,
    /// START_REPLICATION already ran on this connection (see start_replication).
    streamed: bool,
}

impl fmt::Debug for ReplicationSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplicationSession")
            .field("backend_pid", &self.backend_pid)
            .field("server_version", &self.parameter("server_version"))
            .field("auth", &self.auth)
            .field("tls", &self.tls)
            .finish()
    }
}

impl ReplicationSession {
    /// Open a `replication=database` session to `ep` (named "source
    /// (replication)" in errors: the slot always lives on the source).
    pub async fn connect(ep: &EndpointConfig) -> Result<Self> {
        Self::connect_labeled(ep, "source (replication)").await
    }

    /// As [`connect`](Self::connect), naming the endpoint `label` in errors.
    pub async fn connect_labeled(ep: &EndpointConfig, label: &str) -> Result<Self> {
        Self::open(ep, label, true).await
    }

    /// A plain session (no `replication=database`) opened the same way,
    /// its socket counted by the run's round-trip meter: the copy's
    /// pipelined target session ([`crate::pg::wire`]) takes its parts.
    pub(crate) async fn connect_plain(ep: &EndpointConfig, label: &str) -> Result<Self> {
        Self::open(ep, label, false).await
    }

    /// The socket, what was read past ReadyForQuery (nothing, unless the
    /// server spoke first), and the server process id.
    pub(crate) fn into_parts(self) -> (BoxIo, BytesMut, i32) {
        (self.io, self.rbuf, self.backend_pid)
    }

    async fn open(ep: &EndpointConfig, label: &str, replication: bool) -> Result<Self> {
        let fail = |reason: String, db: Option<Box<DbErrorInfo>>| MigrationError::Connect {
            endpoint: label.to_string(),
            target: ep.redacted(),
            reason,
            db,
        };
        if ep.hosts.is_empty() {
            return Err(fail("no host given".into(), None));
        }
        // As in connect.rs: certificate files are read only when TLS can be
        // used at all, so a broken sslrootcert does not break sslmode=disable.
        let needs_tls =
            ep.sslmode != SslMode::Disable && ep.hosts.iter().any(|h| matches!(h, Host::Tcp(_)));
        let tls = if needs_tls {
            Some(crate::pg::tls::client_config(ep).map_err(|e| fail(e.to_string(), None))?)
        } else {
            None
        };
        crate::pg::connect::each_host(ep, label, "replication connection", |host, port| {
            let attempt = connect_host(ep, host, port, tls.as_ref(), replication);
            async move {
                attempt.await.map_err(|f| crate::pg::connect::Failure {
                    reason: f.reason,
                    db: f.db.map(|d| *d),
                })
            }
        })
        .await
    }

    /// A server parameter reported at startup (`server_version`, `server_encoding`, ...).
    pub fn parameter(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The server's major version (e.g. 15), from `server_version`.
    pub fn server_major(&self) -> Option<u32> {
        let v = self.parameter("server_version")?;
        let digits: String = v.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    }

    /// The highest pgoutput `proto_version` this server speaks:
    /// 16+ → 4, 15 → 3, 14 → 2, older → 1.
    pub fn max_proto_version(&self) -> u32 {
        match self.server_major() {
            Some(m) if m >= 16 => 4,
            Some(15) => 3,
            Some(14) => 2,
            _ => 1,
        }
    }

    /// The walsender's process id (`pg_stat_replication.pid`).
    pub fn backend_pid(&self) -> i32 {
        self.backend_pid
    }

    pub fn auth_method(&self) -> AuthMethod {
        self.auth
    }

    /// Whether the session runs over TLS.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// Run one command (replication command or SQL) with the simple-query
    /// protocol and return the rows of its last result set, as text.
    pub async fn simple_query(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>> {
        let context = format!("running {}", command_name(sql));
        let mut out = BytesMut::new();
        frontend::query(sql, &mut out).map_err(|e| MigrationError::io(context.clone(), e))?;
        self.send(&out, &context).await?;
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            let mut frame = self.recv(&context).await?;
            if frame[0] == COPY_BOTH_RESPONSE_TAG {
                // Only START_REPLICATION gets here, and that has its own method.
                return Err(protocol_error(
                    &context,
                    "the command entered COPY mode; use start_replication for START_REPLICATION",
                ));
            }
            match parse_message(&mut frame).map_err(|e| MigrationError::io(context.clone(), e))? {
                Message::RowDescription(_) => rows.clear(),
                Message::DataRow(body) => {
                    let buf = body.buffer();
                    let mut row = Vec::new();
                    let mut ranges = body.ranges();
                    while let Some(r) = ranges
                        .next()
                        .map_err(|e| MigrationError::io(context.clone(), e))?
                    {
                        row.push(r.map(|r| String::from_utf8_lossy(&buf[r]).into_owned()));
                    }
                    rows.push(row);
                }
                Message::ErrorResponse(body) => error = Some(error_info(body.fields())),
                Message::NoticeResponse(body) => log_notice(error_info(body.fields())),
                Message::CopyInResponse(_) | Message::CopyOutResponse(_) => {
                    return Err(protocol_error(
                        &context,
                        "COPY is not supported on a replication session",
                    ))
                }
                Message::ReadyForQuery(_) => break,
                // CommandComplete, EmptyQueryResponse, ParameterStatus, ...
                _ => {}
            }
        }
        match error {
            Some(info) => Err(MigrationError::Db {
                context,
                info: Box::new(info),
            }),
            None => Ok(rows),
        }
    }

    /// `IDENTIFY_SYSTEM`.
    pub async fn identify_system(&mut self) -> Result<SystemIdentity> {
        let rows = self.simple_query("IDENTIFY_SYSTEM").await?;
        let row = single_row(rows, "IDENTIFY_SYSTEM", 4)?;
        let bad = |what: &str| protocol_error("IDENTIFY_SYSTEM", format!("unexpected {what}"));
        Ok(SystemIdentity {
            systemid: row[0].clone().ok_or_else(|| bad("NULL systemid"))?,
            timeline: row[1]
                .as_deref()
                .and_then(|t| t.parse().ok())
                .ok_or_else(|| bad("timeline"))?,
            xlogpos: row[2]
                .as_deref()
                .and_then(|t| t.parse().ok())
                .ok_or_else(|| bad("xlogpos"))?,
            dbname: row[3].clone(),
        })
    }

    /// `CREATE_REPLICATION_SLOT "name" LOGICAL pgoutput EXPORT_SNAPSHOT` (or
    /// `NOEXPORT_SNAPSHOT`). This legacy spelling is the one every major from
    /// 10 to 18 accepts. With `export_snapshot`, the snapshot lives until the
    /// next command on this session: run nothing here until every reader has
    /// imported it.
    pub async fn create_logical_slot(
        &mut self,
        name: &str,
        export_snapshot: bool,
    ) -> Result<CreatedSlot> {
        let sql = format!(
            "CREATE_REPLICATION_SLOT {} LOGICAL pgoutput {}",
            repl_ident(name),
            if export_snapshot {
                "EXPORT_SNAPSHOT"
            } else {
                "NOEXPORT_SNAPSHOT"
            }
        );
        let rows = self.simple_query(&sql).await?;
        let row = single_row(rows, "CREATE_REPLICATION_SLOT", 4)?;
        let bad =
            |what: &str| protocol_error("CREATE_REPLICATION_SLOT", format!("unexpected {what}"));
        Ok(CreatedSlot {
            slot_name: row[0].clone().ok_or_else(|| bad("NULL slot_name"))?,
            consistent_point: row[1]
                .as_deref()
                .and_then(|t| t.parse().ok())
                .ok_or_else(|| bad("consistent_point"))?,
            snapshot_name: row[2].clone(),
            output_plugin: row[3].clone(),
        })
    }

    /// `DROP_REPLICATION_SLOT "name" [WAIT]`. Without `wait`, dropping a slot
    /// another session is streaming from fails; with it, the drop waits for
    /// that session to let go.
    pub async fn drop_slot(&mut self, name: &str, wait: bool) -> Result<()> {
        let sql = format!(
            "DROP_REPLICATION_SLOT {}{}",
            repl_ident(name),
            if wait { " WAIT" } else { "" }
        );
        self.simple_query(&sql).await.map(drop)
    }

    /// `START_REPLICATION SLOT "slot" LOGICAL <start_lsn> (...)` with pgoutput,
    /// entering CopyBoth mode. Once per session: after [`ReplicationStream::finish`]
    /// the session runs commands (DROP_REPLICATION_SLOT, say), but streaming
    /// again needs a new session.
    ///
    /// Options sent: `proto_version`, `publication_names`, `messages 'true'`
    /// on 14+ (so `pg_logical_emit_message` arrives; 12 and 13 reject the
    /// option), and with `streaming` either `'on'` (proto 2 and 3) or
    /// `'parallel'` (proto 4+: the only difference for a client is that
    /// Stream Abort then carries the abort LSN and time).
    pub async fn start_replication(
        mut self,
        slot: &str,
        start_lsn: Lsn,
        publication: &str,
        proto_version: u32,
        streaming: bool,
    ) -> Result<ReplicationStream> {
        const CONTEXT: &str = "starting logical replication";
        if self.streamed {
            // A logical walsender does not reset its end-of-streaming flags
            // (PostgreSQL 15 and 17 at least): a second START_REPLICATION on
            // the same connection ends at once, without an error.
            return Err(MigrationError::Internal(
                "START_REPLICATION runs once per replication session; open a new session to stream again"
                    .into(),
            ));
        }
        if !(1..=4).contains(&proto_version) {
            return Err(MigrationError::Config(format!(
                "pgoutput proto_version {proto_version} is not one of 1, 2, 3, 4"
            )));
        }
        if streaming && proto_version < 2 {
            return Err(MigrationError::Config(
                "streaming of in-progress transactions needs pgoutput proto_version 2 or later"
                    .into(),
            ));
        }
        let mut options = vec![
            format!("\"proto_version\" '{proto_version}'"),
            format!(
                "\"publication_names\" {}",
                repl_literal(&repl_ident(publication))
            ),
        ];
        if self.server_major().is_some_and(|m| m >= 14) {
            options.push("\"messages\" 'true'".into());
        }
        if streaming {
            let mode = if proto_version >= 4 { "parallel" } else { "on" };
            options.push(format!("\"streaming\" '{mode}'"));
        }
        let sql = format!(
            "START_REPLICATION SLOT {} LOGICAL {start_lsn} ({})",
            repl_ident(slot),
            options.join(", ")
        );
        let mut out = BytesMut::new();
        frontend::query(&sql, &mut out).map_err(|e| MigrationError::io(CONTEXT, e))?;
        self.send(&out, CONTEXT).await?;
        let mut error = None;
        loop {
            let mut frame = self.recv(CONTEXT).await?;
            if frame[0] == COPY_BOTH_RESPONSE_TAG {
                if let Some(info) = error {
                    return Err(MigrationError::Db {
                        context: CONTEXT.into(),
                        info: Box::new(info),
                    });
                }
                break;
            }
            match parse_message(&mut frame).map_err(|e| MigrationError::io(CONTEXT, e))? {
                Message::ErrorResponse(body) => error = Some(error_info(body.fields())),
                Message::NoticeResponse(body) => log_notice(error_info(body.fields())),
                Message::ReadyForQuery(_) => {
                    return Err(match error {
                        Some(info) => MigrationError::Db {
                            context: CONTEXT.into(),
                            info: Box::new(info),
                        },
                        None => protocol_error(
                            CONTEXT,
                            "START_REPLICATION ended without entering COPY mode",
                        ),
                    });
                }
                _ => {}
            }
        }
        let ReplicationSession {
            io,
            rbuf,
            params,
            backend_pid,
            auth,
            tls,
            streamed: _,
        } = self;
        let (rd, wr) = tokio::io::split(io);
        Ok(ReplicationStream {
            reader: ReplicationReader {
                rd,
                buf: rbuf,
                state: StreamState::Streaming,
                meta: SessionMeta {
                    params,
                    backend_pid,
                    auth,
                    tls,
                },
            },
            writer: ReplicationWriter {
                inner: Arc::new(Mutex::new(WriterState {
                    wr,
                    done_sent: false,
                })),
            },
        })
    }

    /// Say goodbye (Terminate) and close. Dropping the session also closes it.
    pub async fn close(mut self) -> Result<()> {
        let mut out = BytesMut::new();
        frontend::terminate(&mut out);
        self.send(&out, "closing the replication session").await?;
        let _ = self.io.shutdown().await;
        Ok(())
    }

    async fn send(&mut self, bytes: &[u8], context: &str) -> Result<()> {
        self.io
            .write_all(bytes)
            .await
            .map_err(|e| MigrationError::io(context.to_string(), e))?;
        self.io
            .flush()
            .await
            .map_err(|e| MigrationError::io(context.to_string(), e))
    }

    async fn recv(&mut self, context: &str) -> Result<BytesMut> {
        read_frame(&mut self.io, &mut self.rbuf)
            .await
            .map_err(|e| MigrationError::io(context.to_string(), e))
    }
}

/// "IDENTIFY_SYSTEM", "CREATE_REPLICATION_SLOT", "SELECT", ...: enough to say
/// what failed without echoing a whole statement into the error.
fn command_name(sql: &str) -> String {
    sql.split_whitespace()
        .next()
        .unwrap_or("empty query")
        .chars()
        .take(40)
        .collect()
}

fn single_row(
    mut rows: Vec<Vec<Option<String>>>,
    what: &str,
    min_cols: usize,
) -> Result<Vec<Option<String>>> {
    if rows.len() != 1 || rows[0].len() < min_cols {
        return Err(protocol_error(
            what,
            format!(
                "expected one row of at least {min_cols} columns, got {} row(s)",
                rows.len()
            ),
        ));
    }
    Ok(rows.remove(0))
}

/// Notices matter here: a missing publication is only a WARNING on recent
/// servers ("skipped loading publication"), and then nothing is streamed.
fn log_notice(info: DbErrorInfo) {
    if info.severity == "WARNING" {
        tracing::warn!(sqlstate = %info.sqlstate, "replication source: {}", info.message);
    } else {
        tracing::info!(severity = %info.severity, sqlstate = %info.sqlstate, "replication source: {}", info.message);
    }
}

/// One host, with libpq's `sslmode` fallbacks (as connect.rs does them).
async fn connect_host(
    ep: &EndpointConfig,
    host: &Host,
    port: u16,
    tls: Option<&Arc<rustls::ClientConfig>>,
    replication: bool,
) -> std::result::Result<ReplicationSession, Failure> {
    let attempt = |host, port, tls, want| attempt(ep, host, port, tls, want, replication);
    // libpq ignores sslmode on Unix sockets: the server never offers TLS there.
    let tls = match (host, tls) {
        (Host::Tcp(_), Some(t)) => t,
        _ => return attempt(host, port, None, TlsWant::Off).await,
    };
    match ep.sslmode {
        SslMode::Disable => attempt(host, port, None, TlsWant::Off).await,
        SslMode::Allow => match attempt(host, port, None, TlsWant::Off).await {
            // Plain first; only if the server itself turned us away (e.g. a
            // hostssl-only pg_hba) is TLS worth a second try.
            Err(first) if first.db.is_some() => attempt(host, port, Some(tls), TlsWant::Must)
                .await
                .map_err(|second| more_telling(first, second)),
            other => other,
        },
        SslMode::Prefer => match attempt(host, port, Some(tls), TlsWant::Try).await {
            // libpq: when TLS was tried and failed (handshake, or the server
            // rejected the TLS session), try once more without TLS.
            Err(first) if first.tls_tried => attempt(host, port, None, TlsWant::Off)
                .await
                .map_err(|second| more_telling(first, second)),
            other => other,
        },
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
            attempt(host, port, Some(tls), TlsWant::Must).await
        }
    }
}

/// Of two failed attempts, the one to report: a pg_hba rejection (28000) on
/// the retry only says that transport is not allowed.
fn more_telling(first: Failure, second: Failure) -> Failure {
    let hba = |f: &Failure| f.db.as_ref().is_some_and(|d| d.sqlstate == "28000");
    if hba(&second) && !hba(&first) {
        first
    } else {
        second
    }
}

async fn attempt(
    ep: &EndpointConfig,
    host: &Host,
    port: u16,
    tls: Option<&Arc<rustls::ClientConfig>>,
    want: TlsWant,
    replication: bool,
) -> std::result::Result<ReplicationSession, Failure> {
    // A plain session's turns count into the run's meter like any other
    // session's; a walsender's stream is not a round trip.
    let socket = || async {
        let s = open_socket(host, port).await.map_err(|e| Failure::io(&e))?;
        Ok::<_, Failure>(crate::pg::meter::Metered::new_if(s, !replication))
    };
    let (io, tls_hash, tls_tried): (BoxIo, Option<Option<Vec<u8>>>, bool) = match host {
        Host::Unix(_) => {
            let s = socket().await?;
            (Box::new(s) as BoxIo, None, false)
        }
        Host::Tcp(name) => {
            let mut s = socket().await?;
            match (want, tls) {
                (TlsWant::Off, _) | (_, None) => (Box::new(s) as BoxIo, None, false),
                (TlsWant::Try | TlsWant::Must, Some(config)) => {
                    let mut req = BytesMut::new();
                    frontend::ssl_request(&mut req);
                    s.write_all(&req).await.map_err(|e| Failure::io(&e))?;
                    // Exactly one byte: anything the server (or a man in the
                    // middle) sends after 'S' must go to the TLS handshake,
                    // never be taken as protocol data (CVE-2021-23222).
                    let answer = s.read_u8().await.map_err(|e| Failure::io(&e))?;
                    match answer {
                        b'S' => {
                            let server_name =
                                ServerName::try_from(name.clone()).map_err(|_| {
                                    Failure::msg(format!("invalid host name for TLS: \"{name}\""))
                                })?;
                            let tls_stream = tokio_rustls::TlsConnector::from(config.clone())
                                .connect(server_name, s)
                                .await
                                .map_err(|e| Failure {
                                    tls_tried: true,
                                    ..Failure::msg(format!("TLS handshake failed: {e}"))
                                })?;
                            let hash = tls_stream
                                .get_ref()
                                .1
                                .peer_certificates()
                                .and_then(|c| c.first())
                                .and_then(|c| crate::pg::tls::end_point_hash(c.as_ref()));
                            (Box::new(tls_stream) as BoxIo, Some(hash), true)
                        }
                        b'N' if want == TlsWant::Try => (Box::new(s) as BoxIo, None, false),
                        b'N' => {
                            return Err(Failure::msg(
                                "server does not support TLS, but the sslmode requires it",
                            ))
                        }
                        b'E' => {
                            // A pre-7.4-style error: the server refuses SSLRequest.
                            return Err(Failure::msg(
                                "server rejected the TLS request (is this a PostgreSQL server?)",
                            ));
                        }
                        other => {
                            return Err(Failure::msg(format!(
                                "unexpected answer {:?} to the TLS request (is this a PostgreSQL server?)",
                                other as char
                            )))
                        }
                    }
                }
            }
        }
    };
    startup(ep, io, tls_hash, replication)
        .await
        .map_err(|mut f| {
            f.tls_tried |= tls_tried;
            f
        })
}

/// StartupMessage, authentication, and the messages up to ReadyForQuery.
/// `tls` is `Some(certificate hash)` when the stream is encrypted.
async fn startup(
    ep: &EndpointConfig,
    mut io: BoxIo,
    tls: Option<Option<Vec<u8>>>,
    replication: bool,
) -> std::result::Result<ReplicationSession, Failure> {
    let app = ep
        .application_name
        .as_deref()
        .unwrap_or(DEFAULT_APPLICATION_NAME);
    // The user's options first, ours last: the output settings must win or
    // values would come out in a form the target may read differently.
    // A plain session sets what it needs with SET, as the other sessions do.
    let user_options = ep.options.as_deref().map(str::trim).unwrap_or_default();
    let options = match (replication, user_options.is_empty()) {
        (true, false) => format!("{user_options} {STREAM_OPTIONS}"),
        (true, true) => STREAM_OPTIONS.to_string(),
        (false, _) => user_options.to_string(),
    };
    let mut params = vec![
        ("user", ep.user.as_str()),
        ("database", ep.dbname.as_str()),
        ("application_name", app),
        ("client_encoding", "UTF8"),
    ];
    if replication {
        params.push(("replication", "database"));
    }
    if !options.is_empty() {
        params.push(("options", options.as_str()));
    }
    let mut out = BytesMut::new();
    frontend::startup_message(params, &mut out).map_err(|e| Failure::io(&e))?;
    write_flush(&mut io, &out).await?;

    let mut rbuf = BytesMut::new();
    let mut auth = AuthMethod::None;
    let mut scram: Option<ScramSha256> = None;
    let mut scram_done = false;
    let mut server_params = Vec::new();
    let mut backend_pid = 0;
    let password = || {
        ep.password.as_ref().map(|p| p.expose()).ok_or_else(|| {
            Failure::msg("the server asked for a password, but none was given (fe_sendauth: no password supplied)")
        })
    };
    loop {
        let mut frame = read_frame(&mut io, &mut rbuf)
            .await
            .map_err(|e| Failure::io(&e))?;
        let msg = parse_message(&mut frame).map_err(|e| Failure::io(&e))?;
        out.clear();
        match msg {
            Message::AuthenticationOk => {
                // A server that lets us in without SASLFinal has not proven
                // it knows the password verifier; libpq refuses that too.
                if scram.is_some() && !scram_done {
                    return Err(Failure::msg(
                        "the server ended SCRAM authentication without proving it knows the password",
                    ));
                }
            }
            Message::AuthenticationCleartextPassword => {
                auth = AuthMethod::Cleartext;
                frontend::password_message(password()?.as_bytes(), &mut out)
                    .map_err(|e| Failure::io(&e))?;
                write_flush(&mut io, &out).await?;
            }
            Message::AuthenticationMd5Password(body) => {
                auth = AuthMethod::Md5;
                let hash = postgres_protocol::authentication::md5_hash(
                    ep.user.as_bytes(),
                    password()?.as_bytes(),
                    body.salt(),
                );
                frontend::password_message(hash.as_bytes(), &mut out)
                    .map_err(|e| Failure::io(&e))?;
                write_flush(&mut io, &out).await?;
            }
            Message::AuthenticationSasl(body) => {
                let mut plain = false;
                let mut plus = false;
                let mut mechs = body.mechanisms();
                while let Some(m) = mechs.next().map_err(|e| Failure::io(&e))? {
                    plain |= m == sasl::SCRAM_SHA_256;
                    plus |= m == sasl::SCRAM_SHA_256_PLUS;
                }
                // Bind to the certificate when we can: a man in the middle
                // with its own certificate then cannot relay the exchange.
                let (mechanism, binding, method) = match &tls {
                    Some(Some(hash)) if plus => (
                        sasl::SCRAM_SHA_256_PLUS,
                        ChannelBinding::tls_server_end_point(hash.clone()),
                        AuthMethod::ScramSha256Plus,
                    ),
                    Some(_) if plain => (
                        sasl::SCRAM_SHA_256,
                        ChannelBinding::unrequested(),
                        AuthMethod::ScramSha256,
                    ),
                    None if plain => (
                        sasl::SCRAM_SHA_256,
                        ChannelBinding::unsupported(),
                        AuthMethod::ScramSha256,
                    ),
                    _ => {
                        return Err(Failure::msg(
                            "the server offers no SASL mechanism we support (SCRAM-SHA-256)",
                        ))
                    }
                };
                auth = method;
                let s = ScramSha256::new(password()?.as_bytes(), binding);
                frontend::sasl_initial_response(mechanism, s.message(), &mut out)
                    .map_err(|e| Failure::io(&e))?;
                scram = Some(s);
                write_flush(&mut io, &out).await?;
            }
            Message::AuthenticationSaslContinue(body) => {
                let s = scram
                    .as_mut()
                    .ok_or_else(|| Failure::msg("unexpected SASL continuation"))?;
                s.update(body.data())
                    .map_err(|e| Failure::msg(format!("SCRAM authentication failed: {e}")))?;
                frontend::sasl_response(s.message(), &mut out).map_err(|e| Failure::io(&e))?;
                write_flush(&mut io, &out).await?;
            }
            Message::AuthenticationSaslFinal(body) => {
                // Verifies the server's signature: it proves the server knows
                // the password verifier, not just that it let us in.
                scram
                    .as_mut()
                    .ok_or_else(|| Failure::msg("unexpected SASL final message"))?
                    .finish(body.data())
                    .map_err(|e| Failure::msg(format!("SCRAM authentication failed: {e}")))?;
                scram_done = true;
            }
            Message::AuthenticationKerberosV5
            | Message::AuthenticationScmCredential
            | Message::AuthenticationGss
            | Message::AuthenticationGssContinue(_)
            | Message::AuthenticationSspi => {
                return Err(Failure::msg(
                    "the server asks for an authentication method we do not support (GSSAPI/SSPI/Kerberos)",
                ))
            }
            Message::ParameterStatus(body) => {
                let name = body.name().map_err(|e| Failure::io(&e))?.to_string();
                let value = body.value().map_err(|e| Failure::io(&e))?.to_string();
                server_params.push((name, value));
            }
            Message::BackendKeyData(body) => backend_pid = body.process_id(),
            Message::NoticeResponse(body) => log_notice(error_info(body.fields())),
            Message::ErrorResponse(body) => return Err(Failure::db(error_info(body.fields()))),
            Message::ReadyForQuery(_) => {
                return Ok(ReplicationSession {
                    io,
                    rbuf,
                    params: server_params,
                    backend_pid,
                    auth,
                    tls: tls.is_some(),
                    streamed: false,
                });
            }
            _ => return Err(Failure::msg("unexpected message during startup")),
        }
    }
}

async fn write_flush(io: &mut BoxIo, bytes: &[u8]) -> std::result::Result<(), Failure> {
    io.write_all(bytes).await.map_err(|e| Failure::io(&e))?;
    io.flush().await.map_err(|e| Failure::io(&e))
}

/// What the server said at startup, kept across streaming so [`ReplicationStream::finish`]
/// can hand the session back.
struct SessionMeta {
    params: Vec<(String, String)>,
    backend_pid: i32,
    auth: AuthMethod,
    tls: bool,
}

/// A session in CopyBoth mode after `START_REPLICATION`.
pub struct ReplicationStream {
    reader: ReplicationReader,
    writer: ReplicationWriter,
}

/// WAL data: one pgoutput message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XLogData {
    /// Where the change starts in WAL; 0 for messages that are not the last
    /// one written for a WAL record (Relation, Type, a Begin before Origin).
    pub wal_start: Lsn,
    pub wal_end: Lsn,
    pub send_time: PgTimestamp,
    /// The pgoutput message, see [`crate::replication::pgoutput::decode_bytes`].
    pub data: Bytes,
}

/// The server's heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrimaryKeepalive {
    /// Everything decoded up to here has been sent.
    pub wal_end: Lsn,
    pub send_time: PgTimestamp,
    /// Answer now (a status update) or be disconnected at `wal_sender_timeout`.
    pub reply_requested: bool,
}

/// What the server sends while streaming.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicationMessage {
    XLogData(XLogData),
    PrimaryKeepalive(PrimaryKeepalive),
}

/// A standby status update ('r'). For a logical slot only `flush` moves the
/// slot (its `confirmed_flush_lsn`); all three feed `pg_stat_replication`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StandbyStatus {
    pub write: Lsn,
    pub flush: Lsn,
    pub apply: Lsn,
    pub client_time: PgTimestamp,
    /// Ask the server to answer with a keepalive at once.
    pub reply_requested: bool,
}

impl StandbyStatus {
    /// An update reporting `write` received and `flush` durably applied, stamped now.
    pub fn new(write: Lsn, flush: Lsn) -> Self {
        StandbyStatus {
            write,
            flush,
            apply: flush,
            client_time: PgTimestamp::now(),
            reply_requested: false,
        }
    }

    /// The CopyData frame carrying this update.
    fn encode(&self, out: &mut BytesMut) {
        out.put_u8(b'd');
        out.put_i32(4 + 34);
        out.put_u8(b'r');
        out.put_u64(self.write.0);
        out.put_u64(self.flush.0);
        out.put_u64(self.apply.0);
        out.put_i64(self.client_time.0);
        out.put_u8(u8::from(self.reply_requested));
    }
}

impl ReplicationStream {
    /// The next message, or `None` once the server has ended the stream (CopyDone).
    pub async fn next_message(&mut self) -> Result<Option<ReplicationMessage>> {
        self.reader.next_message().await
    }

    /// Send a standby status update.
    pub async fn send_status(&self, status: StandbyStatus) -> Result<()> {
        self.writer.send_status(status).await
    }

    /// A writer handle for another task (shares the connection's write side).
    pub fn writer(&self) -> ReplicationWriter {
        self.writer.clone()
    }

    /// The walsender's process id.
    pub fn backend_pid(&self) -> i32 {
        self.reader.meta.backend_pid
    }

    /// Separate the halves so one task reads while another sends feedback.
    /// [`unsplit`](Self::unsplit) puts them back together.
    pub fn split(self) -> (ReplicationReader, ReplicationWriter) {
        (self.reader, self.writer)
    }

    /// Rejoin the halves [`split`](Self::split) returned. Halves of two
    /// different streams are refused.
    pub async fn unsplit(reader: ReplicationReader, writer: ReplicationWriter) -> Result<Self> {
        let same = {
            let guard = writer.inner.lock().await;
            reader.rd.is_pair_of(&guard.wr)
        };
        if !same {
            return Err(MigrationError::Internal(
                "ReplicationStream::unsplit: the halves belong to different streams".into(),
            ));
        }
        Ok(ReplicationStream { reader, writer })
    }

    /// End streaming cleanly (CopyDone both ways) and return to command mode,
    /// e.g. to drop the slot on the same session. Messages still in flight
    /// are discarded, so send the last status update before calling this.
    /// Fails while clones of the writer are alive: the session would
    /// otherwise be shared.
    pub async fn finish(self) -> Result<ReplicationSession> {
        const CONTEXT: &str = "ending logical replication";
        let ReplicationStream { mut reader, writer } = self;
        if Arc::strong_count(&writer.inner) != 1 {
            return Err(MigrationError::Internal(
                "ReplicationStream::finish: other writer handles are still alive".into(),
            ));
        }
        let mut error = None;
        if reader.state != StreamState::Ready {
            // Harmless when the server already left COPY mode: outside COPY
            // it ignores CopyDone, as the protocol says.
            writer.copy_done().await?;
        }
        while reader.state != StreamState::Ready {
            let mut frame = read_frame(&mut reader.rd, &mut reader.buf)
                .await
                .map_err(|e| MigrationError::io(CONTEXT, e))?;
            match frame[0] {
                // Data sent before the server saw our CopyDone, and its own CopyDone.
                b'd' | b'c' => continue,
                _ => {}
            }
            match parse_message(&mut frame).map_err(|e| MigrationError::io(CONTEXT, e))? {
                Message::ErrorResponse(body) => error = Some(error_info(body.fields())),
                Message::NoticeResponse(body) => log_notice(error_info(body.fields())),
                Message::ReadyForQuery(_) => reader.state = StreamState::Ready,
                _ => {}
            }
        }
        if let Some(info) = error {
            return Err(MigrationError::Db {
                context: CONTEXT.into(),
                info: Box::new(info),
            });
        }
        let state = Arc::try_unwrap(writer.inner)
            .map_err(|_| {
                MigrationError::Internal(
                    "ReplicationStream::finish: other writer handles are still alive".into(),
                )
            })?
            .into_inner();
        let io = reader.rd.unsplit(state.wr);
        let meta = reader.meta;
        Ok(ReplicationSession {
            io,
            rbuf: reader.buf,
            params: meta.params,
            backend_pid: meta.backend_pid,
            auth: meta.auth,
            tls: meta.tls,
            streamed: true,
        })
    }
}

/// How far the server has taken the end of streaming.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StreamState {
    Streaming,
    /// The server sent CopyDone and waits for ours.
    CopyDone,
    /// The server left COPY mode by itself (CommandComplete or an error);
    /// ReadyForQuery is still to come.
    Ended,
    /// ReadyForQuery seen: the session is in command mode again.
    Ready,
}

/// The receiving half of a [`ReplicationStream`].
pub struct ReplicationReader {
    rd: ReadHalf<BoxIo>,
    buf: BytesMut,
    state: StreamState,
    meta: SessionMeta,
}

impl fmt::Debug for ReplicationReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplicationReader")
            .field("backend_pid", &self.meta.backend_pid)
            .field("state", &self.state)
            .field("buffered", &self.buf.len())
            .finish()
    }
}

impl fmt::Debug for ReplicationWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ReplicationWriter")
    }
}

impl fmt::Debug for ReplicationStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplicationStream")
            .field("reader", &self.reader)
            .finish_non_exhaustive()
    }
}

impl ReplicationReader {
    /// The next XLogData or keepalive; `None` once the server has ended the
    /// stream (CopyDone, or CommandComplete when it stops on its own).
    /// Cancel-safe: a dropped call loses no bytes (they stay in the buffer).
    pub async fn next_message(&mut self) -> Result<Option<ReplicationMessage>> {
        const CONTEXT: &str = "reading the replication stream";
        if self.state != StreamState::Streaming {
            return Ok(None);
        }
        loop {
            let frame = read_frame(&mut self.rd, &mut self.buf)
                .await
                .map_err(|e| MigrationError::io(CONTEXT, e))?;
            match frame[0] {
                b'd' => {
                    let mut body = frame.freeze().slice(5..);
                    if let Some(m) = parse_copy_data(&mut body)? {
                        return Ok(Some(m));
                    }
                }
                b'c' => {
                    self.state = StreamState::CopyDone;
                    return Ok(None);
                }
                _ => {
                    let mut frame = frame;
                    match parse_message(&mut frame).map_err(|e| MigrationError::io(CONTEXT, e))? {
                        Message::ErrorResponse(body) => {
                            self.state = StreamState::Ended;
                            return Err(MigrationError::Db {
                                context: CONTEXT.into(),
                                info: Box::new(error_info(body.fields())),
                            });
                        }
                        // The server left COPY mode without CopyDone; the
                        // ReadyForQuery that follows is read by the next call
                        // or by finish().
                        Message::CommandComplete(_) => {
                            self.state = StreamState::Ended;
                            return Ok(None);
                        }
                        Message::ReadyForQuery(_) => {
                            self.state = StreamState::Ready;
                            return Ok(None);
                        }
                        Message::NoticeResponse(body) => log_notice(error_info(body.fields())),
                        // ParameterStatus and the like may arrive at any time.
                        _ => {}
                    }
                }
            }
        }
    }
}

/// Decode the body of one CopyData frame. Unknown kinds (PG19's primary
/// status update 's', say) are skipped: they answer requests we never make.
fn parse_copy_data(body: &mut Bytes) -> Result<Option<ReplicationMessage>> {
    let short = |what: &str| {
        protocol_error(
            "reading the replication stream",
            format!("{what} message too short"),
        )
    };
    if body.is_empty() {
        return Err(short("empty CopyData"));
    }
    match body.get_u8() {
        b'w' => {
            if body.len() < 24 {
                return Err(short("XLogData"));
            }
            let wal_start = Lsn(body.get_u64());
            let wal_end = Lsn(body.get_u64());
            let send_time = PgTimestamp(body.get_i64());
            Ok(Some(ReplicationMessage::XLogData(XLogData {
                wal_start,
                wal_end,
                send_time,
                data: std::mem::take(body),
            })))
        }
        b'k' => {
            if body.len() < 17 {
                return Err(short("keepalive"));
            }
            Ok(Some(ReplicationMessage::PrimaryKeepalive(
                PrimaryKeepalive {
                    wal_end: Lsn(body.get_u64()),
                    send_time: PgTimestamp(body.get_i64()),
                    reply_requested: body.get_u8() != 0,
                },
            )))
        }
        other => {
            tracing::debug!(
                kind = %(other as char),
                "skipping unknown replication stream message"
            );
            Ok(None)
        }
    }
}

struct WriterState {
    wr: WriteHalf<BoxIo>,
    done_sent: bool,
}

/// The sending half of a [`ReplicationStream`]; clone it freely, every clone
/// writes to the same connection (whole messages, one at a time).
#[derive(Clone)]
pub struct ReplicationWriter {
    inner: Arc<Mutex<WriterState>>,
}

impl ReplicationWriter {
    /// Send a standby status update. After [`ReplicationStream::finish`] began
    /// (CopyDone sent) the server no longer takes updates, so this fails.
    pub async fn send_status(&self, status: StandbyStatus) -> Result<()> {
        const CONTEXT: &str = "sending a standby status update";
        let mut out = BytesMut::with_capacity(39);
        status.encode(&mut out);
        let mut st = self.inner.lock().await;
        if st.done_sent {
            return Err(protocol_error(CONTEXT, "the stream is already ending"));
        }
        st.wr
            .write_all(&out)
            .await
            .map_err(|e| MigrationError::io(CONTEXT, e))?;
        st.wr
            .flush()
            .await
            .map_err(|e| MigrationError::io(CONTEXT, e))
    }

    async fn copy_done(&self) -> Result<()> {
        const CONTEXT: &str = "ending logical replication";
        let mut out = BytesMut::new();
        frontend::copy_done(&mut out);
        let mut st = self.inner.lock().await;
        if st.done_sent {
            return Ok(());
        }
        st.done_sent = true;
        st.wr
            .write_all(&out)
            .await
            .map_err(|e| MigrationError::io(CONTEXT, e))?;
        st.wr
            .flush()
            .await
            .map_err(|e| MigrationError::io(CONTEXT, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_text_form() {
        assert_eq!(Lsn(0).to_string(), "0/0");
        assert_eq!(Lsn(0x16_B374_D848).to_string(), "16/B374D848");
        assert_eq!(Lsn(u64::MAX).to_string(), "FFFFFFFF/FFFFFFFF");
        for s in ["0/0", "16/B374D848", "FFFFFFFF/FFFFFFFF", "1/0", "0/1"] {
            let l: Lsn = s.parse().unwrap();
            assert_eq!(l.to_string(), s);
        }
        assert_eq!("16/b374d848".parse::<Lsn>().unwrap(), Lsn(0x16_B374_D848));
        assert_eq!(
            "00000001/00000002".parse::<Lsn>().unwrap(),
            Lsn((1 << 32) | 2)
        );
        for bad in [
            "",
            "/",
            "0/",
            "/0",
            "0",
            "0/0/0",
            "g/0",
            "123456789/0",
            "0/123456789",
            " 0/0",
            "0/0 ",
            "-1/0",
            "+1/0",
        ] {
            assert!(bad.parse::<Lsn>().is_err(), "{bad:?} should not parse");
        }
        assert!(Lsn(1) < Lsn(1 << 32));
        assert!(!Lsn::INVALID.is_valid());
        let e = "x".parse::<Lsn>().unwrap_err().to_string();
        assert!(e.contains("\"x\""), "{e}");
    }

    #[test]
    fn lsn_serde_is_the_text_form() {
        let j = serde_json::to_string(&Lsn(0x1_0000_00FF)).unwrap();
        assert_eq!(j, "\"1/FF\"");
        assert_eq!(serde_json::from_str::<Lsn>(&j).unwrap(), Lsn(0x1_0000_00FF));
        assert!(serde_json::from_str::<Lsn>("\"zz\"").is_err());
    }

    #[test]
    fn timestamps_count_from_2000() {
        let y2k = UNIX_EPOCH + Duration::from_secs(PG_EPOCH_UNIX_SECS);
        assert_eq!(PgTimestamp::from_system_time(y2k), PgTimestamp(0));
        let later = y2k + Duration::from_micros(1_500_000);
        assert_eq!(PgTimestamp::from_system_time(later), PgTimestamp(1_500_000));
        assert_eq!(PgTimestamp(1_500_000).to_system_time(), later);
        let before = y2k - Duration::from_secs(1);
        assert_eq!(
            PgTimestamp::from_system_time(before),
            PgTimestamp(-1_000_000)
        );
        assert_eq!(PgTimestamp(-1_000_000).to_system_time(), before);
        assert!(PgTimestamp::now().0 > 800_000_000_000_000); // after 2025
    }

    #[test]
    fn status_update_layout() {
        let s = StandbyStatus {
            write: Lsn(1),
            flush: Lsn(2),
            apply: Lsn(3),
            client_time: PgTimestamp(4),
            reply_requested: true,
        };
        let mut out = BytesMut::new();
        s.encode(&mut out);
        assert_eq!(out.len(), 1 + 4 + 34);
        assert_eq!(&out[..6], b"d\0\0\0\x26r");
        assert_eq!(&out[6..14], &1u64.to_be_bytes());
        assert_eq!(&out[14..22], &2u64.to_be_bytes());
        assert_eq!(&out[22..30], &3u64.to_be_bytes());
        assert_eq!(&out[30..38], &4i64.to_be_bytes());
        assert_eq!(out[38], 1);
    }

    #[test]
    fn copy_data_kinds() {
        let mut w = BytesMut::new();
        w.put_u8(b'w');
        w.put_u64(10);
        w.put_u64(20);
        w.put_i64(30);
        w.put_slice(b"Bpayload");
        let m = parse_copy_data(&mut w.freeze()).unwrap().unwrap();
        assert_eq!(
            m,
            ReplicationMessage::XLogData(XLogData {
                wal_start: Lsn(10),
                wal_end: Lsn(20),
                send_time: PgTimestamp(30),
                data: Bytes::from_static(b"Bpayload"),
            })
        );
        let mut k = BytesMut::new();
        k.put_u8(b'k');
        k.put_u64(99);
        k.put_i64(7);
        k.put_u8(1);
        let m = parse_copy_data(&mut k.freeze()).unwrap().unwrap();
        assert_eq!(
            m,
            ReplicationMessage::PrimaryKeepalive(PrimaryKeepalive {
                wal_end: Lsn(99),
                send_time: PgTimestamp(7),
                reply_requested: true
            })
        );
        assert!(parse_copy_data(&mut Bytes::from_static(b"s123"))
            .unwrap()
            .is_none());
        assert!(parse_copy_data(&mut Bytes::from_static(b"w\0\0")).is_err());
        assert!(parse_copy_data(&mut Bytes::from_static(b"k")).is_err());
        assert!(parse_copy_data(&mut Bytes::new()).is_err());
    }

    #[tokio::test]
    async fn frames_are_cut_at_their_length() {
        let mut wire = Vec::new();
        wire.extend_from_slice(b"W\0\0\0\x07\0\0\0");
        wire.extend_from_slice(b"Z\0\0\0\x05I");
        let mut r = &wire[..];
        let mut buf = BytesMut::new();
        let a = read_frame(&mut r, &mut buf).await.unwrap();
        assert_eq!(&a[..], b"W\0\0\0\x07\0\0\0");
        let b = read_frame(&mut r, &mut buf).await.unwrap();
        assert_eq!(&b[..], b"Z\0\0\0\x05I");
        let e = read_frame(&mut r, &mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        let mut bad = &b"d\0\0\0\x02"[..];
        assert_eq!(
            read_frame(&mut bad, &mut BytesMut::new())
                .await
                .unwrap_err()
                .kind(),
            io::ErrorKind::InvalidData
        );
    }

    #[test]
    fn replication_grammar_quoting() {
        assert_eq!(repl_ident("slot"), "\"slot\"");
        assert_eq!(repl_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(repl_literal("it's"), "'it''s'");
        assert_eq!(repl_literal(&repl_ident("Pub")), "'\"Pub\"'");
        assert_eq!(command_name("  IDENTIFY_SYSTEM"), "IDENTIFY_SYSTEM");
        assert_eq!(command_name(""), "empty query");
    }
}
