//! The one error type of the library.
//!
//! Every failure a caller can see is a [`MigrationError`]. Server errors keep
//! their SQLSTATE, message, detail and hint so a DBA gets what psql would have
//! shown. Each variant maps to one documented exit code of the binary
//! ([`MigrationError::exit_code`]). No variant ever carries a password: errors
//! from connection strings describe the offending part, never echo the input.

use std::fmt;

/// Exit codes of the `pg_dbmigrator` binary, documented in the README.
pub mod exit_code {
    /// Success.
    pub const OK: i32 = 0;
    /// The migration failed (server error, I/O error, a transient fault that
    /// outlasted its retries, the copy's snapshot lost where it may not be
    /// replaced, bug).
    pub const FAILED: i32 = 1;
    /// Usage or configuration error: bad flags, malformed conninfo,
    /// unreachable host, authentication failure, mismatched resume state,
    /// an incomplete or damaged dump archive.
    pub const CONFIG: i32 = 2;
    /// `verify` found differences between source and target.
    pub const VERIFY_DIFFERENCES: i32 = 3;
    /// Interrupted by Ctrl-C / SIGTERM; the resume token was saved.
    pub const INTERRUPTED: i32 = 130;
}

/// A server-reported error, as libpq would print it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbErrorInfo {
    /// `ERROR`, `FATAL`, ... (the server's non-localized severity).
    pub severity: String,
    /// The five-character SQLSTATE ([`MigrationError::sql_state`] types it).
    pub sqlstate: String,
    /// The primary message.
    pub message: String,
    /// `DETAIL`, when the server sent one.
    pub detail: Option<String>,
    /// `HINT`, when the server sent one.
    pub hint: Option<String>,
}

impl fmt::Display for DbErrorInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} (SQLSTATE {})",
            self.severity, self.message, self.sqlstate
        )?;
        if let Some(d) = &self.detail {
            write!(f, "; DETAIL: {d}")?;
        }
        if let Some(h) = &self.hint {
            write!(f, "; HINT: {h}")?;
        }
        Ok(())
    }
}

/// What kind of failure an error is, for a caller that decides what to do
/// next (retry, fix the configuration, page someone) without matching
/// messages. New kinds may be added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The configuration or the flags: a malformed connection string, a
    /// setting out of range, a resume token of another migration, a
    /// damaged archive. Nothing was changed; fix the input.
    Configuration,
    /// The server refused the login (SQLSTATE class 28: a wrong password,
    /// no `pg_hba.conf` entry). Retrying the same credentials will not help.
    Authentication,
    /// A server could not be reached, or the link to it was lost, or it
    /// was shutting down or starting up. Retryable: `--resume` (or calling
    /// again with `resume`) continues where the run stopped.
    Connection,
    /// The target is not fit to be written: not empty, missing tables, a
    /// setting too small.
    TargetNotReady,
    /// The source cannot be migrated as it is: a preflight check failed
    /// (replication settings, replica identities, the lock table) or it
    /// holds objects not supported yet.
    SourceNotReady,
    /// A server refused the data or a statement during the work (a CHECK
    /// or foreign key violation on the target, a type error); a
    /// serialization failure or a deadlock is retryable.
    Data,
    /// A local file could not be read or written: a full disk, a missing
    /// directory, no permission.
    Storage,
    /// Verify found differences between the source and the target.
    Verification,
    /// The caller cancelled the run; its resume token was saved.
    Cancelled,
    /// A bug or an unexpected state: please report it.
    Internal,
}

/// Why a migration (or `plan`, `verify`, `cleanup`) failed. The message
/// says what is wrong and what to do, and never holds a password;
/// [`MigrationError::kind`] classifies it and
/// [`MigrationError::is_retryable`] says whether running again may succeed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MigrationError {
    /// Bad configuration or flags; nothing was changed.
    #[error("configuration error: {0}")]
    Config(String),

    /// A connection string could not be parsed. The message names the part
    /// that is wrong; the string itself is never repeated (it may hold a password).
    #[error("invalid connection string for {endpoint}: {reason}")]
    ConnInfo {
        /// `source` or `target`.
        endpoint: String,
        /// What is wrong with it.
        reason: String,
    },

    /// Could not connect or authenticate (unreachable host, timeout, wrong password, TLS).
    #[error("cannot connect to {endpoint} ({target}): {reason}")]
    Connect {
        /// `source` or `target`.
        endpoint: String,
        /// Redacted description: host, port, user, dbname; never the password.
        target: String,
        /// Why, as the client library or the server put it.
        reason: String,
        /// The server's error when it refused the login (SQLSTATE 28...).
        db: Option<Box<DbErrorInfo>>,
    },

    /// The server reported an error while we were doing `context`.
    #[error("{context}: {info}")]
    Db {
        /// What the migration was doing.
        context: String,
        /// The server's error.
        info: Box<DbErrorInfo>,
    },

    /// Any other error from the client library (broken connection, protocol).
    #[error("{context}: {message}")]
    Client {
        /// What the migration was doing.
        context: String,
        /// The client library's message, with its causes.
        message: String,
    },

    /// The resume token does not match this run, or is damaged, or the
    /// run cannot continue from it.
    #[error("resume refused: {message}{}", Remedies(remedies))]
    Resume {
        /// What is wrong.
        message: String,
        /// What the caller can do ([`MigrationError::remedies`]).
        remedies: Vec<Remedy>,
    },

    /// The target is not in a state we may write to (non-empty, missing tables).
    #[error("target not ready: {message}{}", Remedies(remedies))]
    TargetNotReady {
        /// What is wrong.
        message: String,
        /// What the caller can do ([`MigrationError::remedies`]).
        remedies: Vec<Remedy>,
    },

    /// A dump archive is incomplete, damaged or from a newer version. The
    /// message names the file and says what to do about it.
    #[error("{0}")]
    Archive(String),

    /// A preflight check failed (online replication needs, the source's
    /// lock table); nothing was created on either server. The message lists every problem and its fix.
    #[error("preflight failed: {0}")]
    Preflight(String),

    /// A feature that is not built yet.
    #[error("not supported yet: {0}")]
    Unsupported(String),

    /// Verification found differences (the report lists them).
    #[error("verification found {0} difference(s)")]
    VerifyDifferences(usize),

    /// A file or socket operation failed (work dir, archive, token).
    #[error("{context}: {source}")]
    Io {
        /// What the migration was doing.
        context: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },

    /// The source session holding the copy's exported snapshot was lost in
    /// the middle of the copy, and the run may not go on with a new one
    /// (`--strict-snapshot`, or an online copy that had begun: its slot
    /// pairs with that snapshot only). The message says what to run.
    #[error("{message}{}", Remedies(remedies))]
    SnapshotLost {
        /// What happened.
        message: String,
        /// What the caller can do ([`MigrationError::remedies`]).
        remedies: Vec<Remedy>,
        /// Rows of this migration were committed on the target already.
        copied_any: bool,
    },

    /// Cancelled by the caller (Ctrl-C, SIGTERM, cancellation token).
    #[error("interrupted")]
    Cancelled,

    /// A bug in pg_dbmigrator (an invariant did not hold); please report it.
    #[error("internal error: {0}")]
    Internal(String),
}

/// What a caller can do about an error, as [`MigrationError::remedies`]
/// lists them. The error's message words them for a library caller (the
/// configuration field or function to use); the CLI words them as its
/// flags and commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Remedy {
    /// Run the same migration again with [`crate::MigrationConfig::resume`]
    /// set: it continues from what is recorded, keeping the work done.
    Resume,
    /// Run again with [`crate::MigrationConfig::force_clean`] set: what
    /// the earlier run left (the target's contents, the resume token) is
    /// discarded and the migration starts over.
    ForceClean,
    /// Call [`crate::cleanup`] with the same configuration: it removes
    /// what an online migration left on the source and the target.
    Cleanup,
    /// Call [`crate::unfence`] on the source: it lifts the write fence.
    Unfence,
    /// Run again with [`crate::MigrationConfig::fix_replica_identity`] set.
    FixReplicaIdentity,
    /// Remove a finished migration's files with [`crate::discard_files`].
    DiscardFiles,
}

static CLI_WORDING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Word remedies as the command line's flags and commands from now on
/// (the binary calls this once at start).
#[doc(hidden)]
pub fn use_cli_wording() {
    CLI_WORDING.store(true, std::sync::atomic::Ordering::Relaxed);
}

impl fmt::Display for Remedy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cli = CLI_WORDING.load(std::sync::atomic::Ordering::Relaxed);
        f.write_str(match (self, cli) {
            (Remedy::Resume, false) => "run it again with `resume` set to continue",
            (Remedy::Resume, true) => "run the same command with --resume to continue",
            (Remedy::ForceClean, false) => "run it again with `force_clean` set to start over",
            (Remedy::ForceClean, true) => "pass --force-clean to start over",
            (Remedy::Cleanup, false) => "call `cleanup` with the same configuration",
            (Remedy::Cleanup, true) => "run `pg_dbmigrator cleanup` with the same arguments",
            (Remedy::Unfence, false) => "call `unfence` on the source",
            (Remedy::Unfence, true) => "run `pg_dbmigrator unfence --source ...`",
            (Remedy::FixReplicaIdentity, false) => "run it again with `fix_replica_identity` set",
            (Remedy::FixReplicaIdentity, true) => "run again with --fix-replica-identity",
            (Remedy::DiscardFiles, false) => {
                "remove its files with `discard_files` once they are no longer needed"
            }
            (Remedy::DiscardFiles, true) => {
                "remove its files with `pg_dbmigrator forget` (same flags) once they are no longer needed"
            }
        })
    }
}

/// The remedies after a message: "; to fix: A, or B".
struct Remedies<'a>(&'a [Remedy]);

impl fmt::Display for Remedies<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.0.iter().enumerate() {
            f.write_str(if i == 0 { "; to fix: " } else { ", or " })?;
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

/// The library's `Result`: [`MigrationError`] unless said otherwise.
pub type Result<T, E = MigrationError> = std::result::Result<T, E>;

impl MigrationError {
    /// A refusal to resume (see [`MigrationError::Resume`]).
    #[doc(hidden)]
    pub fn resume_refused(message: impl Into<String>) -> Self {
        MigrationError::Resume {
            message: message.into(),
            remedies: Vec::new(),
        }
    }

    /// A target we may not write to (see [`MigrationError::TargetNotReady`]).
    #[doc(hidden)]
    pub fn target_not_ready(message: impl Into<String>) -> Self {
        MigrationError::TargetNotReady {
            message: message.into(),
            remedies: Vec::new(),
        }
    }

    /// Add what the caller can do (for the variants that carry remedies).
    #[doc(hidden)]
    pub fn with_remedy(mut self, remedy: Remedy) -> Self {
        match &mut self {
            MigrationError::Resume { remedies, .. }
            | MigrationError::TargetNotReady { remedies, .. }
            | MigrationError::SnapshotLost { remedies, .. } => remedies.push(remedy),
            _ => {}
        }
        self
    }

    /// What the caller can do about this error, most fitting first;
    /// empty when the message is all there is (or nothing can be done by
    /// running differently). The message words the same remedies.
    pub fn remedies(&self) -> &[Remedy] {
        match self {
            MigrationError::Resume { remedies, .. }
            | MigrationError::TargetNotReady { remedies, .. }
            | MigrationError::SnapshotLost { remedies, .. } => remedies,
            _ => &[],
        }
    }

    /// The binary's exit code for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            MigrationError::Config(_)
            | MigrationError::ConnInfo { .. }
            | MigrationError::Connect { .. }
            | MigrationError::Resume { .. }
            | MigrationError::TargetNotReady { .. }
            | MigrationError::Archive(_)
            | MigrationError::Preflight(_)
            | MigrationError::Unsupported(_) => exit_code::CONFIG,
            MigrationError::VerifyDifferences(_) => exit_code::VERIFY_DIFFERENCES,
            MigrationError::Cancelled => exit_code::INTERRUPTED,
            _ => exit_code::FAILED,
        }
    }

    /// The kind of failure (see [`ErrorKind`]).
    pub fn kind(&self) -> ErrorKind {
        match self {
            MigrationError::Config(_)
            | MigrationError::ConnInfo { .. }
            | MigrationError::Resume { .. }
            | MigrationError::Archive(_) => ErrorKind::Configuration,
            MigrationError::Connect { db: Some(info), .. } if info.sqlstate.starts_with("28") => {
                ErrorKind::Authentication
            }
            MigrationError::Connect { .. } | MigrationError::Client { .. } => ErrorKind::Connection,
            MigrationError::Db { info, .. }
                if info.sqlstate.starts_with("08") || info.sqlstate.starts_with("57") =>
            {
                ErrorKind::Connection
            }
            MigrationError::Db { info, .. } if info.sqlstate.starts_with("28") => {
                ErrorKind::Authentication
            }
            MigrationError::Db { .. } => ErrorKind::Data,
            MigrationError::Io { .. } if self.is_transient() => ErrorKind::Connection,
            MigrationError::Io { .. } => ErrorKind::Storage,
            MigrationError::TargetNotReady { .. } => ErrorKind::TargetNotReady,
            MigrationError::Preflight(_) | MigrationError::Unsupported(_) => {
                ErrorKind::SourceNotReady
            }
            MigrationError::VerifyDifferences(_) => ErrorKind::Verification,
            MigrationError::Cancelled => ErrorKind::Cancelled,
            MigrationError::Internal(_) => ErrorKind::Internal,
            // The link to the source was lost with its snapshot: the copy
            // goes on from a new one with `resume`.
            MigrationError::SnapshotLost { .. } => ErrorKind::Connection,
        }
    }

    /// Whether the same call may succeed if made again (with `resume`, so
    /// that finished work is kept): the transient faults of
    /// [`MigrationError::is_transient`] that the run's own retries did not
    /// outlast.
    pub fn is_retryable(&self) -> bool {
        // A lost snapshot is not retried within the run (the copy would no
        // longer be one point in time unasked); a resumed run goes on.
        self.is_transient() || matches!(self, MigrationError::SnapshotLost { .. })
    }

    /// The server's SQLSTATE as tokio-postgres's typed [`SqlState`], to
    /// compare with its constants (`SqlState::CHECK_VIOLATION`).
    ///
    /// [`SqlState`]: tokio_postgres::error::SqlState
    pub fn sql_state(&self) -> Option<tokio_postgres::error::SqlState> {
        self.sqlstate()
            .map(tokio_postgres::error::SqlState::from_code)
    }

    #[doc(hidden)]
    /// Whether trying the same work again may succeed: a lost or refused
    /// connection (not a refused login), a server shutting down or starting
    /// up (class 57, 08), a serialization failure or a deadlock. What
    /// retries does so from the beginning of a unit that left nothing
    /// behind (one transaction).
    pub fn is_transient(&self) -> bool {
        match self {
            // A refused login (wrong password, pg_hba) will not heal by itself.
            MigrationError::Connect { db: Some(info), .. } if info.sqlstate.starts_with("28") => {
                false
            }
            MigrationError::Client { .. } | MigrationError::Connect { .. } => true,
            // The network's faults, not a full disk or a missing file.
            MigrationError::Io { source, .. } => matches!(
                source.kind(),
                std::io::ErrorKind::ConnectionRefused
                    | std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::NotConnected
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::TimedOut
                    | std::io::ErrorKind::UnexpectedEof
                    | std::io::ErrorKind::Interrupted
                    | std::io::ErrorKind::HostUnreachable
                    | std::io::ErrorKind::NetworkUnreachable
                    | std::io::ErrorKind::NetworkDown
            ),
            MigrationError::Db { info, .. } => {
                info.sqlstate.starts_with("08")
                    || info.sqlstate.starts_with("57")
                    || info.sqlstate == "40001"
                    || info.sqlstate == "40P01"
            }
            _ => false,
        }
    }

    #[doc(hidden)]
    /// The server's SQLSTATE when the error came from a server.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            MigrationError::Db { info, .. } => Some(&info.sqlstate),
            MigrationError::Connect { db: Some(info), .. } => Some(&info.sqlstate),
            _ => None,
        }
    }

    #[doc(hidden)]
    /// Wrap a tokio-postgres error with what we were doing, keeping the
    /// server's SQLSTATE, detail and hint when there are some.
    pub fn db(context: impl Into<String>, err: tokio_postgres::Error) -> Self {
        let context = context.into();
        match db_info(&err) {
            Some(info) => MigrationError::Db {
                context,
                info: Box::new(info),
            },
            None => MigrationError::Client {
                context,
                message: client_message(&err),
            },
        }
    }

    #[doc(hidden)]
    /// Wrap an I/O error with what we were doing.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        MigrationError::Io {
            context: context.into(),
            source,
        }
    }
}

#[doc(hidden)]
/// Extract the server's error fields from a tokio-postgres error.
pub fn db_info(err: &tokio_postgres::Error) -> Option<DbErrorInfo> {
    err.as_db_error().map(|e| DbErrorInfo {
        severity: e.severity().to_string(),
        sqlstate: e.code().code().to_string(),
        message: e.message().to_string(),
        detail: e.detail().map(str::to_string),
        hint: e.hint().map(str::to_string),
    })
}

#[doc(hidden)]
/// A one-line message for a client-side error, including its cause chain
/// (tokio-postgres puts the useful part, e.g. "Connection refused", in the source).
pub fn client_message(err: &(dyn std::error::Error + 'static)) -> String {
    let mut msg = err.to_string();
    let mut cur = err.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !msg.contains(&text) {
            msg.push_str(": ");
            msg.push_str(&text);
        }
        cur = s.source();
    }
    msg
}
