//! What a migration is: endpoints, mode, filters and tuning.
//!
//! [`MigrationConfig`] is plain data (serde, `Default`) so a library caller can
//! build it in code or load it from a file; the CLI fills it from flags.
//! A foundation and a pure description: no runtime handles (progress,
//! cancellation and the cutover signal travel in [`crate::context`]), no I/O.

pub(crate) mod conninfo;
pub mod endpoint;
pub mod filter;

use std::path::PathBuf;

pub use endpoint::{EndpointConfig, Host, Secret, SslMode};
pub use filter::Filters;

/// Offline (copy a quiet database) or online (copy, then replicate changes until cutover).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MigrationMode {
    #[default]
    Offline,
    Online,
}

/// Wire format of the COPY streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CopyFormat {
    /// Binary when both servers have the same major version and the table's
    /// column types allow it; text otherwise.
    #[default]
    Auto,
    /// Binary wherever the column types allow it, even across majors.
    Binary,
    /// Always text.
    Text,
}

/// How much `verify` checks after a migration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VerifyLevel {
    None,
    Count,
    #[default]
    Checksum,
}

/// How a migration moves the rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CopyMethod {
    /// COPY streams straight from the source into the target.
    #[default]
    Stream,
    /// A dump archive in `dump_path`, then a restore from it.
    Dump,
}

/// When an online migration cuts over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CutoverMode {
    /// Stay in sync until asked (`pg_dbmigrator cutover`, or a [`crate::CutoverHandle`]).
    #[default]
    Manual,
    /// As soon as the lag has stayed under `cutover_lag_bytes` for a moment.
    Auto,
}

/// The archive's zstd level unless the user asks otherwise. Level 1:
/// compression must keep up with COPY from a fast server; COPY text still
/// shrinks several times at this level.
pub const DEFAULT_ZSTD_LEVEL: i32 = 1;

/// Everything that defines and tunes one migration.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct MigrationConfig {
    pub source: Option<EndpointConfig>,
    pub target: Option<EndpointConfig>,
    pub mode: MigrationMode,
    /// Copy rows only, into a target whose schema already exists.
    pub data_only: bool,
    /// Parallel COPY workers (each one source and one target session).
    pub jobs: usize,
    /// Sessions building indexes and keys beside the copy; `None`: as `jobs`.
    pub index_jobs: Option<usize>,
    /// Tables bigger than this are cut into page ranges of about this size
    /// (PostgreSQL 14+ sources). `None`: from the database size and `jobs`;
    /// `Some(0)`: never split.
    pub split_bytes: Option<u64>,
    /// ANALYZE each table once loaded and indexed.
    pub analyze: bool,
    /// How the data travels: straight from server to server, or through
    /// an archive in `dump_path` (dumped, then restored).
    pub copy_method: CopyMethod,
    /// zstd level of archive files (1 fastest … 22 smallest).
    pub compress_level: i32,
    pub filters: Filters,
    pub copy_format: CopyFormat,
    /// Copy large objects (ids, contents, owners).
    pub large_objects: bool,
    pub verify: VerifyLevel,
    /// Work directory; the resume token is `<dump_path>.resume.json`.
    /// `None`: a new directory under the temp dir.
    pub dump_path: Option<PathBuf>,
    /// Continue the run recorded in the resume token.
    pub resume: bool,
    /// Discard the resume token and erase half-built target data, then start over.
    pub force_clean: bool,
    /// Names the slot, publication and work files; generated when absent.
    pub migration_id: Option<String>,
    /// When the source session holding the exported snapshot is lost in
    /// the middle of the copy, stop (the way out is `--resume` or
    /// `--force-clean`) rather than go on with the tables not yet copied
    /// on a new snapshot, which makes the copy no longer one point in time.
    pub strict_snapshot: bool,
    /// Full migrations: create the roles the schema names that the target lacks.
    pub roles: bool,
    /// With `roles`: copy their password hashes (needs a superuser source role).
    pub role_passwords: bool,
    /// Leave owners out: every object belongs to the migrating target role.
    pub no_owner: bool,
    /// Leave privileges (GRANT/REVOKE, default privileges) out.
    pub no_acl: bool,
    /// Leave subscriptions out of the schema (pg_dump's `--no-subscriptions`).
    pub no_subscriptions: bool,
    /// Leave security labels out of the schema (pg_dump's
    /// `--no-security-labels`): for a target without the label provider.
    pub no_security_labels: bool,
    /// Leave columns' compression methods out (pg_dump's
    /// `--no-toast-compression`): for a target built without lz4.
    pub no_toast_compression: bool,
    /// Put every object in the target database's default tablespace
    /// (pg_dump's `--no-tablespaces`).
    pub no_tablespaces: bool,
    /// `OLD=NEW` pairs: objects in the source's tablespace OLD go to the
    /// target's NEW; other names are kept and must exist on the target.
    pub tablespace_mapping: Vec<(String, String)>,
    /// Online: when to cut over.
    pub cutover: CutoverMode,
    /// Online, `cutover = auto`: the lag (bytes of source WAL not yet
    /// applied) under which the target counts as caught up.
    pub cutover_lag_bytes: u64,
    /// Online: give tables without a usable replica identity one (USING
    /// INDEX when a suitable unique index exists, else FULL) on the source,
    /// restored at cleanup. Without it such tables stop the preflight.
    pub fix_replica_identity: bool,
    /// Online: at cutover, make the source database read-only for every
    /// other session. Off for operators who stop writes themselves.
    pub fence: bool,
    /// Online: leave the replication slot on the source after cutover.
    pub keep_slot: bool,
    /// Online: leave the publication on the source after cutover.
    pub keep_publication: bool,
    /// Online: at the cutover, start streaming the new server's changes
    /// back to the old source (`rollback` returns to it, `finish` ends it).
    pub fallback: bool,
    /// Migrate the whole cluster: the roles, memberships, settings and
    /// tablespaces (`pg_dumpall --globals-only`), then every database that
    /// allows connections (`template0` aside; `postgres` and `template1`
    /// when they hold objects). `source` and `target` then name each
    /// server's maintenance database (usually `postgres`).
    pub all_databases: bool,
    /// With `all_databases`: databases to leave out, as pg_dumpall's
    /// `--exclude-database` patterns (`*` and `?`, quotes for case).
    pub exclude_databases: Vec<String>,
}

impl Default for MigrationConfig {
    fn default() -> Self {
        MigrationConfig {
            source: None,
            target: None,
            mode: MigrationMode::Offline,
            data_only: false,
            jobs: 4,
            index_jobs: None,
            split_bytes: None,
            analyze: true,
            copy_method: CopyMethod::Stream,
            compress_level: DEFAULT_ZSTD_LEVEL,
            filters: Filters::default(),
            copy_format: CopyFormat::Auto,
            large_objects: true,
            verify: VerifyLevel::Checksum,
            dump_path: None,
            resume: false,
            force_clean: false,
            migration_id: None,
            strict_snapshot: false,
            roles: false,
            role_passwords: false,
            no_owner: false,
            no_subscriptions: false,
            no_security_labels: false,
            no_toast_compression: false,
            no_tablespaces: false,
            tablespace_mapping: Vec::new(),
            no_acl: false,
            cutover: CutoverMode::Manual,
            cutover_lag_bytes: 1024 * 1024,
            fix_replica_identity: false,
            fence: true,
            keep_slot: false,
            keep_publication: false,
            fallback: false,
            all_databases: false,
            exclude_databases: Vec::new(),
        }
    }
}
