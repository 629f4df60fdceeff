//! What a migration is: endpoints, mode, filters and tuning.
//!
//! [`MigrationConfig`] is plain data (serde, `Default`) so a library caller can
//! build it in code or load it from a file; the CLI fills it from flags.
//! [`MigrationConfig::builder`] (or [`MigrationConfig::offline`] /
//! [`MigrationConfig::online`]) builds one with typed setters and checks it
//! at `build()`, with the checks a run makes before it touches a server
//! ([`MigrationConfig::validate`]).
//! A foundation and a pure description: no runtime handles (progress,
//! cancellation and the cutover signal travel in [`crate::context`]), no I/O.

mod builder;
pub(crate) mod conninfo;
pub mod endpoint;
pub mod filter;
mod pressure;

use std::path::PathBuf;

pub use builder::{IntoEndpoint, MigrationConfigBuilder};
pub use endpoint::{EndpointConfig, Host, Secret, SslMode};
pub use filter::Filters;
pub use pressure::{LagLimit, SourcePressure, WalLimit};

use crate::error::{MigrationError, Result};

/// Offline (copy a quiet database) or online (copy, then replicate changes until cutover).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MigrationMode {
    /// Copy once; writes to the source during the copy are not carried over.
    #[default]
    Offline,
    /// Copy, then stream the source's changes (logical replication) until
    /// the cutover.
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
    /// No check after the copy.
    None,
    /// Row counts, sequences and large objects.
    Count,
    /// As `Count`, plus a checksum of every table's content.
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

/// Where the target's optimizer statistics come from once the rows are in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Statistics {
    /// Carried from the source's catalogs where the target can import
    /// them (PostgreSQL 18+: no ANALYZE, the source's own numbers, as
    /// pg_upgrade keeps them); ANALYZE where it cannot, and for tables the
    /// source never analyzed or that have extended statistics.
    #[default]
    Carry,
    /// ANALYZE every loaded table of 1000 rows or more (autovacuum
    /// analyzes the smaller ones soon enough).
    Analyze,
    /// Neither: autovacuum analyzes the tables in its own time.
    None,
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
///
/// Build one with [`MigrationConfig::builder`], which checks it, or as a
/// struct literal over `..Default::default()`, checked when it runs (or by
/// [`MigrationConfig::validate`]). Serialized, the endpoints never carry a
/// password: see [`EndpointConfig`].
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct MigrationConfig {
    /// The database to copy from. Required.
    #[serde(serialize_with = "serialize_source")]
    pub source: Option<EndpointConfig>,
    /// The database to copy into (created by a full migration when absent). Required.
    #[serde(serialize_with = "serialize_target")]
    pub target: Option<EndpointConfig>,
    /// Offline or online.
    pub mode: MigrationMode,
    /// Copy rows only, into a target whose schema already exists.
    pub data_only: bool,
    /// Parallel COPY workers (each one source and one target session).
    pub jobs: usize,
    /// Sessions building indexes and keys beside the copy; `None`: as `jobs`.
    pub index_jobs: Option<usize>,
    /// A cap on how fast the copy reads the source, in bytes a second over
    /// every worker (`None`: as fast as it goes): a live source keeps the
    /// I/O and the network its applications need.
    pub max_rate: Option<u64>,
    /// `--source-pressure`: pause the copy while the live source shows
    /// strain (a standby's replay lag, a session waiting for a lock ours
    /// hold) and report what our slot retains (`None`: off). What each
    /// signal does and why: [`SourcePressure`].
    pub source_pressure: Option<SourcePressure>,
    /// Tables bigger than this are cut into page ranges of about this size
    /// (PostgreSQL 14+ sources). `None`: from the database size and `jobs`;
    /// `Some(0)`: never split.
    pub split_bytes: Option<u64>,
    /// The target's optimizer statistics once the rows are in: carried
    /// from the source (default), sampled again by ANALYZE, or left to
    /// autovacuum.
    pub statistics: Statistics,
    /// How the data travels: straight from server to server, or through
    /// an archive in `dump_path` (dumped, then restored).
    pub copy_method: CopyMethod,
    /// zstd level of archive files (1 fastest … 22 smallest).
    pub compress_level: i32,
    /// Which schemas and tables are migrated (pg_dump's patterns).
    pub filters: Filters,
    /// Binary or text COPY.
    pub copy_format: CopyFormat,
    /// Copy large objects (ids, contents, owners).
    pub large_objects: bool,
    /// What is compared once the copy is done.
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
    /// With `all_databases`: change roles and tablespaces that exist on the
    /// target and differ from the source's (otherwise they are reported and
    /// left as they are). The bootstrap superuser and the role the
    /// migration connects as are never altered.
    pub roles_overwrite: bool,
    /// With `all_databases`: create roles without their passwords even
    /// when the source session can read them (every login role is named in
    /// a warning).
    pub no_role_passwords: bool,
    /// With `all_databases`: `(source directory, target directory)` pairs
    /// for tablespaces' locations (the directories must exist on the
    /// target host); a location not listed is used as is.
    pub tablespace_locations: Vec<(String, String)>,
    /// Write no `<dump_path>.summary.json` at the end: for a caller that
    /// keeps the returned report itself and wants no file it must clean up.
    pub no_summary: bool,
}

fn serialize_source<S: serde::Serializer>(
    ep: &Option<EndpointConfig>,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    match ep {
        Some(ep) => ep.serialize_named(Some("source"), s),
        None => s.serialize_none(),
    }
}

fn serialize_target<S: serde::Serializer>(
    ep: &Option<EndpointConfig>,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    match ep {
        Some(ep) => ep.serialize_named(Some("target"), s),
        None => s.serialize_none(),
    }
}

impl MigrationConfig {
    /// Every check of a migration's settings that needs no server, as
    /// [`crate::Migrator::run`] makes them before it connects (it calls
    /// this), so a caller can refuse a bad configuration up front with the
    /// same error the run would give. Errors are
    /// [`MigrationError::Config`] ([`crate::ErrorKind::Configuration`]).
    ///
    /// For a migration only: a dump needs no target and a restore no
    /// source, and their commands check what they need.
    pub fn validate(&self) -> Result<()> {
        let config = |m: String| Err(MigrationError::Config(m));
        if self.source.is_none() {
            return config("no source given (--source)".into());
        }
        if self.target.is_none() {
            return config("no target given (--target)".into());
        }
        if self.jobs == 0 {
            return config("--jobs must be at least 1".into());
        }
        if self.max_rate == Some(0) {
            return config(
                "--max-rate must be more than 0 bytes a second (leave it out for no cap)".into(),
            );
        }
        if let Some(p) = &self.source_pressure {
            p.validate()?;
        }
        if self.mode == MigrationMode::Online && self.copy_method != CopyMethod::Stream {
            return config(
                "--mode online copies server to server: --copy-method dump is for offline migrations"
                    .into(),
            );
        }
        if self.copy_method == CopyMethod::Dump && !(1..=22).contains(&self.compress_level) {
            return config(format!(
                "--compress-level {} is out of range: zstd levels are 1 (fastest) to 22 (smallest)",
                self.compress_level
            ));
        }
        if !self.exclude_databases.is_empty() && !self.all_databases {
            return config(
                "--exclude-database leaves databases out of --all-databases: give --all-databases too"
                    .into(),
            );
        }
        if !self.all_databases
            && (self.roles_overwrite
                || self.no_role_passwords
                || !self.tablespace_locations.is_empty())
        {
            return config(
                "--roles-overwrite, --no-role-passwords and --tablespace-location are about the globals of --all-databases: give --all-databases too"
                    .into(),
            );
        }
        if self.all_databases && self.data_only {
            return config(
                "--all-databases migrates whole databases: --data-only is for one database whose schema exists on the target"
                    .into(),
            );
        }
        if self.resume && self.force_clean {
            return config(
                "--resume and --force-clean contradict each other: --resume continues the recorded run, \
                 --force-clean discards it and starts over; give one"
                    .into(),
            );
        }
        if self.role_passwords && !self.roles {
            return config(
                "--role-passwords copies the password hashes of the roles --roles creates: give --roles too"
                    .into(),
            );
        }
        if self.no_tablespaces && !self.tablespace_mapping.is_empty() {
            return config(
                "--no-tablespaces puts everything in the default tablespace: it cannot go with --tablespace-mapping"
                    .into(),
            );
        }
        for (i, (old, new)) in self.tablespace_mapping.iter().enumerate() {
            if old.is_empty() || new.is_empty() {
                return config(format!(
                    "--tablespace-mapping {old:?}={new:?}: give a source and a target tablespace name"
                ));
            }
            if old.contains('\0') || new.contains('\0') {
                return config(format!(
                    "--tablespace-mapping {old:?}={new:?}: a tablespace name cannot hold a NUL byte"
                ));
            }
            if self.tablespace_mapping[..i].iter().any(|(o, _)| o == old) {
                return config(format!(
                    "--tablespace-mapping names tablespace {old:?} twice: map each source tablespace once"
                ));
            }
        }
        self.filters.compile()?;
        Ok(())
    }
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
            statistics: Statistics::Carry,
            max_rate: None,
            source_pressure: None,
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
            roles_overwrite: false,
            no_role_passwords: false,
            tablespace_locations: Vec::new(),
            no_summary: false,
        }
    }
}
