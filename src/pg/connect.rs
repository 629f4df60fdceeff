//! Opening sessions the way libpq would.
//!
//! An [`EndpointConfig`] is turned into tokio-postgres sessions here: hosts
//! are tried in order, `sslmode` keeps its libpq meaning (including `allow`,
//! which tokio-postgres lacks), and every attempt is bounded as a whole by
//! `connect_timeout`, because tokio-postgres only bounds the TCP connect and a
//! server that accepts but never answers would otherwise hang us forever.
//! Failures become one-line [`MigrationError::Connect`] reasons a DBA can act
//! on; the password never appears in them.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::config::SslMode as PgSslMode;
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::{Client, NoTls};

use crate::config::{EndpointConfig, Host, SslMode};
use crate::error::{client_message, db_info, DbErrorInfo, MigrationError, Result};
use crate::pg::meter::Metered;
use crate::pg::tls::MakeRustlsConnect;

/// The `application_name` shown in `pg_stat_activity` when none is configured,
/// so a DBA can tell our sessions apart.
pub const DEFAULT_APPLICATION_NAME: &str = "pg_dbmigrator";

/// Why one host could not be reached.
pub(crate) struct Failure {
    pub reason: String,
    pub db: Option<DbErrorInfo>,
}

/// Open a session to `ep`. `label` ("source", "target") names the endpoint in
/// errors so a two-server run says which side failed.
/// [`connect`], again while the failure is transient (a link that is down
/// for a moment, a server restarting), with [`Retry`]'s backoff: for a
/// session lost in the middle of a run, not for the first connection (whose
/// failure is the user's to hear at once).
pub async fn reconnect(
    ep: &EndpointConfig,
    label: &str,
    cancel: &tokio_util::sync::CancellationToken,
) -> Result<Client> {
    let mut retry = Retry::new();
    loop {
        match connect(ep, label).await {
            Ok(c) => return Ok(c),
            Err(e) => {
                retry
                    .wait(e, &format!("connecting to the {label}"), cancel)
                    .await?
            }
        }
    }
}

/// How long transient faults of one unit of work are retried, counted from
/// the first: a link down for this long is no longer a blip.
const RETRY_FOR: Duration = Duration::from_secs(120);

/// Capped, jittered backoff for one unit of work (a copy item, an index
/// build, a lost session): the one retry policy of the crate.
pub struct Retry {
    since: Option<std::time::Instant>,
    attempt: u32,
    /// Also told of each retry (the run's progress, as a warning).
    note: Option<Note>,
}

/// Where [`Retry`] reports a retry besides the log.
pub type Note = std::sync::Arc<dyn Fn(String) + Send + Sync>;

impl Default for Retry {
    fn default() -> Self {
        Self::new()
    }
}

impl Retry {
    pub fn new() -> Self {
        Retry {
            since: None,
            attempt: 0,
            note: None,
        }
    }

    /// A retry policy that also hands each retry's message to `note` (the
    /// run's progress records it as a warning); its log record then has
    /// the target `pg_dbmigrator::recorded`, which the CLI's
    /// log-to-events layer skips.
    pub fn noting(note: Option<Note>) -> Self {
        Retry {
            note,
            ..Self::new()
        }
    }

    /// After `e`: wait before the next attempt, or give `e` back when it is
    /// not transient, the run is stopping, or faults went on too long.
    pub async fn wait(
        &mut self,
        e: MigrationError,
        what: &str,
        stop: &tokio_util::sync::CancellationToken,
    ) -> Result<()> {
        let since = *self.since.get_or_insert_with(std::time::Instant::now);
        if !e.is_transient() || stop.is_cancelled() || since.elapsed() > RETRY_FOR {
            return Err(e);
        }
        self.attempt += 1;
        let delay = backoff(self.attempt);
        match &self.note {
            None => crate::recorded::warn_recorded!(
                "{what}: interrupted by a transient fault ({e}); retrying from its beginning on a new session in {delay:?} (attempt {})",
                self.attempt
            ),
            Some(note) => {
                tracing::warn!(
                    target: "pg_dbmigrator::recorded",
                    work = %what, attempt = self.attempt, retry_in = ?delay, error = %e,
                    "interrupted by a transient fault; retrying from its beginning on a new session"
                );
                note(format!(
                    "{what}: interrupted by a transient fault ({e}); retrying from its beginning on a new session (attempt {})",
                    self.attempt
                ));
            }
        }
        tokio::select! {
            _ = stop.cancelled() => Err(MigrationError::Cancelled),
            _ = tokio::time::sleep(delay) => Ok(()),
        }
    }
}

/// The wait before attempt `attempt` (1, 2, ...) after a transient fault:
/// 500 ms doubling to 5 s at most, plus up to a quarter more, so sessions
/// cut at once do not all return at once.
pub fn backoff(attempt: u32) -> Duration {
    let base = Duration::from_millis(250) * 2u32.saturating_pow(attempt.clamp(1, 5));
    let base = base.min(Duration::from_secs(5));
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    base + base / 4 * (nanos % 1000) / 1000
}

/// A fault that may go on a while (a link down under a session that
/// reconnects by itself): when to try again ([`backoff`]), and whether to
/// say so. The first failure is a warning, the attempts after it debug
/// lines, with a warning again every [`Outage::WARN_EVERY`] while it lasts,
/// so a link down for minutes is a few lines, not one per attempt.
#[derive(Debug, Default)]
pub struct Outage {
    since: Option<std::time::Instant>,
    last_warned: Option<std::time::Instant>,
    attempts: u32,
}

/// What [`Outage::failed`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NextAttempt {
    /// Wait this long before trying again.
    pub delay: Duration,
    /// Log this failure as a warning (else as a debug line).
    pub warn: bool,
    /// Since the first failure of this outage.
    pub down_for: Duration,
    /// Failures so far in this outage.
    pub attempts: u32,
}

impl Outage {
    pub const WARN_EVERY: Duration = Duration::from_secs(30);

    /// One more failure.
    pub fn failed(&mut self) -> NextAttempt {
        let now = std::time::Instant::now();
        let since = *self.since.get_or_insert(now);
        self.attempts += 1;
        let warn = self
            .last_warned
            .is_none_or(|w| now.duration_since(w) >= Self::WARN_EVERY);
        if warn {
            self.last_warned = Some(now);
        }
        NextAttempt {
            delay: backoff(self.attempts),
            warn,
            down_for: now.duration_since(since),
            attempts: self.attempts,
        }
    }

    /// [`failed`](Self::failed) with `e`, logged as it decides (`what`
    /// says what failed and what is done about it); the wait before the
    /// next attempt.
    pub fn note(&mut self, e: &MigrationError, what: &str) -> Duration {
        let next = self.failed();
        if next.warn {
            crate::recorded::warn_recorded!(
                "{what} ({e}; down for {:?}, {} attempts, next in {:?}; further attempts are logged at debug level, with a warning every 30 s while it lasts)",
                next.down_for, next.attempts, next.delay
            );
        } else {
            tracing::debug!(error = %e, retry_in = ?next.delay, attempts = next.attempts, "{what}: still failing");
        }
        next.delay
    }

    /// The outage is over: how long it lasted and how many failures it
    /// had, if there was one.
    pub fn recovered(&mut self) -> Option<(Duration, u32)> {
        let since = self.since.take()?;
        let n = std::mem::take(&mut self.attempts);
        self.last_warned = None;
        Some((since.elapsed(), n))
    }

    /// Since the first failure of the outage under way, if any.
    pub fn down_for(&self) -> Option<Duration> {
        self.since.map(|s| s.elapsed())
    }
}

pub async fn connect(ep: &EndpointConfig, label: &str) -> Result<Client> {
    let fail = |reason: String, db: Option<DbErrorInfo>| MigrationError::Connect {
        endpoint: label.to_string(),
        target: ep.redacted(),
        reason,
        db: db.map(Box::new),
    };
    if ep.hosts.is_empty() {
        return Err(fail("no host given".into(), None));
    }

    // Certificate files are read only when TLS can actually be used, so a
    // broken sslrootcert does not break `sslmode=disable` or Unix sockets.
    let needs_tls =
        ep.sslmode != SslMode::Disable && ep.hosts.iter().any(|h| matches!(h, Host::Tcp(_)));
    let tls = if needs_tls {
        Some(MakeRustlsConnect::for_endpoint(ep).map_err(|e| fail(e.to_string(), None))?)
    } else {
        None
    };

    each_host(ep, label, "connection", |host, port| {
        connect_host(ep, host, port, tls.as_ref(), label)
    })
    .await
}

/// A session on `ep`'s server whose database may not exist yet: its own
/// database, else `postgres`, else `template1` (as createdb does).
pub async fn connect_server(ep: &EndpointConfig, label: &str) -> Result<Client> {
    match connect(ep, label).await {
        Ok(c) => Ok(c),
        Err(first) => match connect(&ep.with_dbname("postgres"), label).await {
            Ok(c) => Ok(c),
            Err(_) => connect(&ep.with_dbname("template1"), label)
                .await
                .map_err(|_| first),
        },
    }
}

/// Try `ep`'s hosts in order, as libpq does: each attempt bounded by
/// `connect_timeout`, the first success wins; when all fail, one
/// [`MigrationError::Connect`] with each host's reason (the last one's server
/// error kept). `what` names the kind of session in debug logs.
pub(crate) async fn each_host<'a, T, Fut>(
    ep: &'a EndpointConfig,
    label: &str,
    what: &str,
    mut attempt: impl FnMut(&'a Host, u16) -> Fut,
) -> Result<T>
where
    Fut: std::future::Future<Output = std::result::Result<T, Failure>>,
{
    let many = ep.hosts.len() > 1;
    let mut last: Option<Failure> = None;
    for (i, host) in ep.hosts.iter().enumerate() {
        let port = ep.port_for(i);
        let attempt = attempt(host, port);
        // libpq applies connect_timeout per host; so do we.
        let outcome = if ep.connect_timeout.is_zero() {
            attempt.await
        } else {
            match tokio::time::timeout(ep.connect_timeout, attempt).await {
                Ok(r) => r,
                Err(_) => Err(Failure {
                    reason: format!("timed out after {}", human_duration(ep.connect_timeout)),
                    db: None,
                }),
            }
        };
        match outcome {
            Ok(client) => return Ok(client),
            Err(mut f) => {
                tracing::debug!(endpoint = label, host = %host, port, reason = %f.reason, "{what} attempt failed");
                if many {
                    f.reason = format!("{}: {}", where_(host, port), f.reason);
                }
                last = Some(f);
            }
        }
    }
    let f = last.ok_or_else(|| MigrationError::Connect {
        endpoint: label.to_string(),
        target: ep.redacted(),
        reason: "no host given".into(),
        db: None,
    })?;
    Err(MigrationError::Connect {
        endpoint: label.to_string(),
        target: ep.redacted(),
        reason: f.reason,
        db: f.db.map(Box::new),
    })
}

pub(crate) fn where_(host: &Host, port: u16) -> String {
    match host {
        Host::Tcp(h) if h.contains(':') => format!("[{h}]:{port}"),
        Host::Tcp(h) => format!("{h}:{port}"),
        Host::Unix(dir) => dir.join(format!(".s.PGSQL.{port}")).display().to_string(),
    }
}

fn human_duration(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

async fn connect_host(
    ep: &EndpointConfig,
    host: &Host,
    port: u16,
    tls: Option<&MakeRustlsConnect>,
    label: &str,
) -> std::result::Result<Client, Failure> {
    let mut cfg = tokio_postgres::Config::new();
    match host {
        Host::Tcp(h) => cfg.host(h),
        Host::Unix(dir) => cfg.host_path(dir),
    };
    cfg.port(port)
        .user(&ep.user)
        .dbname(&ep.dbname)
        .application_name(
            ep.application_name
                .as_deref()
                .unwrap_or(DEFAULT_APPLICATION_NAME),
        );
    if let Some(pw) = &ep.password {
        cfg.password(pw.expose());
    }
    if let Some(o) = ep.options.as_deref().filter(|o| !o.is_empty()) {
        cfg.options(o);
    }

    // libpq ignores sslmode on Unix sockets: the server never offers TLS there.
    let tls = match (host, tls) {
        (Host::Tcp(_), Some(t)) => t.clone(),
        _ => return attempt(cfg.ssl_mode(PgSslMode::Disable), host, port, NoTls, label).await,
    };
    match ep.sslmode {
        SslMode::Disable => {
            attempt(cfg.ssl_mode(PgSslMode::Disable), host, port, NoTls, label).await
        }
        SslMode::Allow => {
            // Plain first; only if the server itself turns us away (e.g. a
            // hostssl-only pg_hba) is TLS worth a second try.
            match attempt(cfg.ssl_mode(PgSslMode::Disable), host, port, NoTls, label).await {
                Err(first) if first.db.is_some() => {
                    attempt(cfg.ssl_mode(PgSslMode::Require), host, port, tls, label)
                        .await
                        .map_err(|second| more_telling(first, second))
                }
                other => other,
            }
        }
        SslMode::Prefer => {
            // libpq: when TLS was tried and failed (handshake, or the server
            // rejected the TLS session), try once more without TLS.
            let tried = Arc::new(AtomicBool::new(false));
            let observed = tls.observed(tried.clone());
            match attempt(cfg.ssl_mode(PgSslMode::Prefer), host, port, observed, label).await {
                Err(first) if tried.load(Ordering::Relaxed) => {
                    attempt(cfg.ssl_mode(PgSslMode::Disable), host, port, NoTls, label)
                        .await
                        .map_err(|second| more_telling(first, second))
                }
                other => other,
            }
        }
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
            attempt(cfg.ssl_mode(PgSslMode::Require), host, port, tls, label).await
        }
    }
}

/// Of two failed attempts with and without TLS, the one to report: a
/// pg_hba rejection (28000) on the retry only says that transport is not
/// allowed, so the first failure (wrong password, bad certificate) is what
/// the user needs to see.
fn more_telling(first: Failure, second: Failure) -> Failure {
    let hba = |f: &Failure| f.db.as_ref().is_some_and(|d| d.sqlstate == "28000");
    if hba(&second) && !hba(&first) {
        first
    } else {
        second
    }
}

/// A session's byte stream, before TLS: TCP or a Unix socket.
pub(crate) enum Sock {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

impl tokio::io::AsyncRead for Sock {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        match self.get_mut() {
            Sock::Tcp(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            Sock::Unix(s) => std::pin::Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for Sock {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        match self.get_mut() {
            Sock::Tcp(s) => std::pin::Pin::new(s).poll_write(cx, buf),
            Sock::Unix(s) => std::pin::Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> std::task::Poll<io::Result<usize>> {
        match self.get_mut() {
            Sock::Tcp(s) => std::pin::Pin::new(s).poll_write_vectored(cx, bufs),
            Sock::Unix(s) => std::pin::Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Sock::Tcp(s) => s.is_write_vectored(),
            Sock::Unix(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        match self.get_mut() {
            Sock::Tcp(s) => std::pin::Pin::new(s).poll_flush(cx),
            Sock::Unix(s) => std::pin::Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        match self.get_mut() {
            Sock::Tcp(s) => std::pin::Pin::new(s).poll_shutdown(cx),
            Sock::Unix(s) => std::pin::Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// The socket to `host:port`, as libpq opens it: every address of a name
/// tried in turn, Nagle off (our messages are small and latency-bound),
/// TCP keepalives on (tokio-postgres's default: idle 2 hours), so a
/// session whose peer vanished is eventually noticed.
pub(crate) async fn open_socket(host: &Host, port: u16) -> io::Result<Sock> {
    match host {
        Host::Unix(dir) => {
            let s = tokio::net::UnixStream::connect(dir.join(format!(".s.PGSQL.{port}"))).await?;
            Ok(Sock::Unix(s))
        }
        Host::Tcp(name) => {
            let s = tokio::net::TcpStream::connect((name.as_str(), port)).await?;
            s.set_nodelay(true)?;
            let keepalive = socket2::TcpKeepalive::new().with_time(Duration::from_secs(2 * 3600));
            socket2::SockRef::from(&s).set_tcp_keepalive(&keepalive)?;
            Ok(Sock::Tcp(s))
        }
    }
}

/// The line a DBA can act on for a socket error (`tls`: it happened in a
/// TLS handshake).
pub(crate) fn io_reason(e: &io::Error, tls: bool) -> String {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => {
            "connection refused (is the server running on that host and accepting TCP/IP connections?)"
                .to_string()
        }
        io::ErrorKind::NotFound => {
            "no such file or directory (is the server running locally and accepting connections on that socket?)"
                .to_string()
        }
        io::ErrorKind::TimedOut => "timed out".to_string(),
        io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset => {
            "server closed the connection unexpectedly".to_string()
        }
        _ if tls => format!("TLS handshake failed: {e}{}", tls_hint(e)),
        _ => e.to_string(),
    }
}

/// One session over a socket we open ourselves, so its round trips are
/// counted into the run's meter ([`crate::pg::meter`]).
async fn attempt<T>(
    cfg: &tokio_postgres::Config,
    host: &Host,
    port: u16,
    mut tls: T,
    label: &str,
) -> std::result::Result<Client, Failure>
where
    T: MakeTlsConnect<Metered<Sock>>,
    T::Stream: Send + 'static,
    T::TlsConnect: Send,
    <T::TlsConnect as TlsConnect<Metered<Sock>>>::Future: Send,
{
    let io = open_socket(host, port).await.map_err(|e| Failure {
        reason: io_reason(&e, false),
        db: None,
    })?;
    let domain = match host {
        Host::Tcp(h) => h.as_str(),
        Host::Unix(_) => "",
    };
    let tls = tls.make_tls_connect(domain).map_err(|e| {
        let e: Box<dyn std::error::Error + Send + Sync> = e.into();
        Failure {
            reason: e.to_string(),
            db: None,
        }
    })?;
    let (client, connection) = cfg
        .connect_raw(Metered::new(io), tls)
        .await
        .map_err(|e| describe(&e))?;
    let label = label.to_string();
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(endpoint = %label, error = %client_message(&e), "connection closed with error");
        }
    });
    Ok(client)
}

/// One line a DBA can act on, from a tokio-postgres connect error.
fn describe(err: &tokio_postgres::Error) -> Failure {
    if let Some(info) = db_info(err) {
        let mut reason = info.message.clone();
        if let Some(h) = &info.hint {
            reason.push_str(" (HINT: ");
            reason.push_str(h);
            reason.push(')');
        }
        return Failure {
            reason,
            db: Some(info),
        };
    }
    let is_tls = err.to_string().contains("TLS");
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(ioe) = e.downcast_ref::<io::Error>() {
            let reason = io_reason(ioe, is_tls);
            return Failure { reason, db: None };
        }
        cur = e.source();
    }
    let msg = client_message(err);
    let reason = if msg.contains("server does not support TLS") {
        "server does not support TLS, but the sslmode requires it".to_string()
    } else {
        msg
    };
    Failure { reason, db: None }
}

/// What a rustls certificate verdict means for someone holding an sslrootcert.
fn tls_hint(err: &io::Error) -> &'static str {
    use rustls::CertificateError as C;
    match err
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
    {
        Some(rustls::Error::InvalidCertificate(C::UnknownIssuer)) => {
            " (the server certificate is not signed by a CA in sslrootcert)"
        }
        Some(rustls::Error::InvalidCertificate(C::Expired | C::ExpiredContext { .. })) => {
            " (the server certificate has expired)"
        }
        Some(rustls::Error::InvalidCertificate(
            C::NotValidForName | C::NotValidForNameContext { .. },
        )) => " (sslmode=verify-full checks the host name; verify-ca does not)",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_capped_and_jittered() {
        for a in 1..20 {
            let d = backoff(a);
            let base = Duration::from_millis(250) * 2u32.pow(a.clamp(1, 5));
            let base = base.min(Duration::from_secs(5));
            assert!(d >= base && d <= base + base / 4, "{a}: {d:?}");
        }
        assert!(backoff(30) <= Duration::from_millis(6250));
    }

    #[test]
    fn an_outage_warns_once_then_every_so_often() {
        let mut o = Outage::default();
        let first = o.failed();
        assert!(first.warn && first.attempts == 1);
        for _ in 0..50 {
            assert!(
                !o.failed().warn,
                "warned again within {:?}",
                Outage::WARN_EVERY
            );
        }
        assert_eq!(o.recovered().map(|r| r.1), Some(51));
        assert!(o.recovered().is_none());
        assert!(o.failed().warn, "a new outage warns again");
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(human_duration(Duration::from_secs(10)), "10s");
        assert_eq!(human_duration(Duration::from_millis(1500)), "1500ms");
    }

    #[test]
    fn host_labels() {
        assert_eq!(where_(&Host::Tcp("db".into()), 5432), "db:5432");
        assert_eq!(where_(&Host::Tcp("::1".into()), 5432), "[::1]:5432");
        assert_eq!(
            where_(&Host::Unix("/run/pg".into()), 5433),
            "/run/pg/.s.PGSQL.5433"
        );
    }
}
