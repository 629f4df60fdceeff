//! The `pg_dbmigrator` command: a thin layer over the library.
//!
//! Results go to stdout, logs to stderr. Exit codes: 0 ok, 1 failed,
//! 2 usage or configuration error, 3 verification differences,
//! 130 interrupted (the resume token was saved).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[path = "pg_dbmigrator/config_file.rs"]
mod config_file;
#[path = "pg_dbmigrator/console.rs"]
mod console;
use pg_dbmigrator::error::exit_code;
use pg_dbmigrator::{
    CopyFormat, CopyMethod, CutoverMode, EndpointConfig, Filters, MigrationConfig, MigrationError,
    MigrationMode, Migrator, ResumeToken, SourcePressure, Statistics, VerifyLevel, VerifyOptions,
};
use tokio_util::sync::CancellationToken;

#[derive(Parser, Debug)]
#[command(
    name = "pg_dbmigrator",
    version,
    about = "Move a PostgreSQL database between servers, natively (no pg_dump, pg_restore or psql)"
)]
struct Cli {
    /// More log output on stderr (-v debug, -vv trace).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// Less log output (-q warnings only, -qq errors only).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    quiet: u8,
    /// Log line format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    /// Read flags from this TOML file (long flag names as keys, at the top
    /// level or in a [command] table); the command line and
    /// PG_DBMIGRATOR_<FLAG> variables win over it. Also PG_DBMIGRATOR_CONFIG.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Live progress on stderr: auto (a line redrawn in place on a
    /// terminal, else a progress log line every few seconds), always (the
    /// line even without a terminal), never.
    #[arg(long, value_enum, default_value_t = ProgressArg::Auto, global = true)]
    progress: ProgressArg,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum ProgressArg {
    Auto,
    Always,
    Never,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Copy a database from --source to --target.
    Migrate(MigrateArgs),
    /// Say what `migrate` with the same flags would do (tables, sizes,
    /// splits, what it creates on each side, every preflight problem with
    /// its fix, an estimated copy time from a measured sample), changing
    /// nothing on either server. Exit 0 when ready, 2 when something would
    /// stop it. Same as `migrate --dry-run`.
    Plan(MigrateArgs),
    /// Compare source and target: row counts, checksums, sequences, large objects.
    Verify(VerifyArgs),
    /// Show the state recorded in a migration's resume token.
    Status(StatusArgs),
    /// Print the source's schema as SQL (read from its catalogs).
    Schema(SchemaArgs),
    /// Dump the source into an archive directory (zstd COPY streams, schema,
    /// manifest with SHA-256 of every file), to carry and restore elsewhere.
    Dump(DumpArgs),
    /// Load an archive made by `dump` into the target.
    Restore(RestoreArgs),
    /// Ask the running online migration that uses --dump-path to cut over
    /// now, and wait until it has (prints the write downtime).
    Cutover(CutoverArgs),
    /// After a `--fallback` cutover: return to the old source. Fences the
    /// new server, drains its changes back, syncs sequences, large objects
    /// and unlogged tables, and makes the old source writable again (prints
    /// the write downtime).
    Rollback(CutoverArgs),
    /// After a `--fallback` cutover: end the fallback and remove the
    /// reverse slot, publication and bookkeeping from both servers.
    Finish(CutoverArgs),
    /// Remove everything an online migration created: slot, publication,
    /// replica identity changes, write fence, and our bookkeeping on the target.
    Cleanup(CleanupArgs),
    /// Make a fenced source database writable again (rollback after a cutover).
    Unfence(UnfenceArgs),
    /// Remove a finished migration's files: resume token, journal, lock,
    /// summary and work directory. Give the flags that identify it as given
    /// to migrate. Refused while it runs, and unless it completed (--force).
    /// Nothing on the servers is touched (see cleanup).
    Forget(ForgetArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff), e.g. `pg_dbmigrator man > pg_dbmigrator.1`.
    Man,
}

#[derive(Args, Debug)]
struct CutoverArgs {
    /// The work directory of the running migration (as given to migrate --dump-path).
    #[arg(long)]
    dump_path: PathBuf,
    /// Give up waiting for the cutover to finish after this many seconds
    /// (the cutover itself goes on).
    #[arg(long, default_value_t = 600)]
    wait_seconds: u64,
    /// Print the outcome as JSON on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct CleanupArgs {
    #[command(flatten)]
    endpoints: Endpoints,
    /// The migration's work directory (default: derived as by migrate).
    #[arg(long)]
    dump_path: Option<PathBuf>,
    /// The migration's name, when migrate was given --migration-id.
    #[arg(long)]
    migration_id: Option<String>,
    #[command(flatten)]
    filters: FilterArgs,
    /// As given to migrate (only needed to find the default work directory).
    #[arg(long)]
    data_only: bool,
    /// As given to migrate (only needed to find the default work directory).
    #[arg(long)]
    no_large_objects: bool,
    /// Print what was removed as JSON on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct ForgetArgs {
    #[command(flatten)]
    endpoints: Endpoints,
    /// As given to migrate.
    #[arg(long, value_enum, default_value_t = ModeArg::Offline)]
    mode: ModeArg,
    /// As given to migrate (a migration through an archive is complete
    /// once its restore is).
    #[arg(long, value_enum, default_value_t = CopyMethodArg::Stream)]
    copy_method: CopyMethodArg,
    /// The migration's work directory (default: derived as by migrate).
    #[arg(long)]
    dump_path: Option<PathBuf>,
    /// The migration's name, when migrate was given --migration-id.
    #[arg(long)]
    migration_id: Option<String>,
    #[command(flatten)]
    filters: FilterArgs,
    /// As given to migrate (only needed to find the default work directory).
    #[arg(long)]
    data_only: bool,
    /// As given to migrate (only needed to find the default work directory).
    #[arg(long)]
    no_large_objects: bool,
    /// Remove the files of a migration that did not complete too (it can
    /// then no longer be resumed).
    #[arg(long)]
    force: bool,
    /// Print what was removed as JSON on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct UnfenceArgs {
    /// Source connection string (the database that was fenced).
    #[arg(long, env = "PG_DBMIGRATOR_SOURCE", hide_env_values = true)]
    source: String,
}

#[derive(Clone, Copy, Debug, PartialEq, ValueEnum)]
enum StatisticsArg {
    /// From the source where the target can import them (18+).
    Carry,
    /// ANALYZE the loaded tables.
    Analyze,
    /// Left to autovacuum.
    None,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum CopyMethodArg {
    /// COPY streams straight from the source into the target.
    Stream,
    /// Dump into --dump-path, then restore from it.
    Dump,
}

#[derive(Args, Debug)]
struct DumpArgs {
    /// Source connection string (URI or key=value, as libpq).
    #[arg(long, env = "PG_DBMIGRATOR_SOURCE", hide_env_values = true)]
    source: String,
    /// The archive directory (new or empty); its resume token is <dump-path>.resume.json.
    #[arg(long)]
    dump_path: PathBuf,
    /// Parallel dump workers.
    #[arg(short = 'j', long, default_value_t = 4)]
    jobs: usize,
    /// Cut tables bigger than this into page ranges dumped in parallel (as migrate).
    #[arg(long, value_parser = parse_size)]
    split_size: Option<u64>,
    /// zstd level: 1 (fastest) to 22 (smallest).
    #[arg(long, default_value_t = pg_dbmigrator::archive::DEFAULT_ZSTD_LEVEL)]
    compress_level: i32,
    /// COPY format of the data files: text restores into any major version;
    /// binary is faster but restores only into the source's major (auto = text).
    #[arg(long, value_enum, default_value_t = CopyFormatArg::Auto)]
    copy_format: CopyFormatArg,
    /// Rows only, no schema.
    #[arg(long)]
    data_only: bool,
    #[command(flatten)]
    filters: FilterArgs,
    /// Leave large objects out.
    #[arg(long)]
    no_large_objects: bool,
    /// Leave owners out of the schema.
    #[arg(long)]
    no_owner: bool,
    /// Leave privileges out of the schema.
    #[arg(long)]
    no_acl: bool,
    /// Leave subscriptions out of the schema.
    #[arg(long)]
    no_subscriptions: bool,
    /// Leave security labels out of the schema (a target without the label provider).
    #[arg(long)]
    no_security_labels: bool,
    /// Leave columns' compression methods out: every column takes the
    /// target's default (a target built without lz4).
    #[arg(long)]
    no_toast_compression: bool,
    #[command(flatten)]
    tablespaces: TablespaceArgs,
    /// Continue an interrupted dump: finished files are kept.
    #[arg(long, conflicts_with = "force_clean")]
    resume: bool,
    /// Replace the contents of a non-empty --dump-path.
    #[arg(long)]
    force_clean: bool,
    /// The whole cluster: the globals (roles with their password hashes,
    /// memberships, settings, tablespaces) and every database, each into
    /// its own archive under --dump-path; --source names the maintenance
    /// database.
    #[arg(long)]
    all_databases: bool,
    /// With --all-databases: leave out the databases matching PATTERN.
    #[arg(
        long = "exclude-database",
        value_name = "PATTERN",
        requires = "all_databases"
    )]
    exclude_databases: Vec<String>,
    /// With --all-databases: archive roles without their passwords.
    #[arg(long, requires = "all_databases")]
    no_role_passwords: bool,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct RestoreArgs {
    /// Target connection string. A full archive creates the database when absent.
    #[arg(long, env = "PG_DBMIGRATOR_TARGET", hide_env_values = true)]
    target: String,
    /// The archive directory written by `dump`.
    #[arg(long)]
    dump_path: PathBuf,
    /// Parallel load workers.
    #[arg(short = 'j', long, default_value_t = 4)]
    jobs: usize,
    /// Sessions building indexes while other tables still load (default: as --jobs).
    #[arg(long)]
    index_jobs: Option<usize>,
    /// Do not ANALYZE the tables after loading them.
    #[arg(long)]
    skip_analyze: bool,
    /// Leave large objects out.
    #[arg(long)]
    no_large_objects: bool,
    /// Leave columns' compression methods out: every column takes the
    /// target's default (a target built without lz4).
    #[arg(long)]
    no_toast_compression: bool,
    #[command(flatten)]
    tablespaces: TablespaceArgs,
    /// Continue an interrupted restore: files already loaded are kept.
    #[arg(long, conflicts_with = "force_clean")]
    resume: bool,
    /// Drop and recreate a non-empty target database (full archives), or
    /// erase the rows of the tables in the archive (--data-only archives).
    #[arg(long)]
    force_clean: bool,
    /// A cluster archive (`dump --all-databases`): the globals, then every
    /// database; --target names the maintenance database.
    #[arg(long)]
    all_databases: bool,
    /// With --all-databases: change roles and tablespaces that exist on the
    /// target and differ from the archive's.
    #[arg(long, requires = "all_databases")]
    roles_overwrite: bool,
    /// With --all-databases: create roles without their passwords.
    #[arg(long, requires = "all_databases")]
    no_role_passwords: bool,
    /// With --all-databases: /OLD=/NEW tablespace directories.
    #[arg(long, value_name = "OLD=NEW", value_parser = parse_location_mapping, requires = "all_databases")]
    tablespace_location: Vec<(String, String)>,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum SectionArg {
    PreData,
    PostData,
}

#[derive(Args, Debug)]
struct SchemaArgs {
    /// Source connection string (URI or key=value, as libpq).
    #[arg(long, env = "PG_DBMIGRATOR_SOURCE", hide_env_values = true)]
    source: String,
    /// Only this section (pre-data: before the rows; post-data: indexes,
    /// constraints, privileges and refreshes, after them). Default: everything.
    #[arg(long, value_enum)]
    section: Option<SectionArg>,
}

#[derive(Args, Debug)]
struct Endpoints {
    /// Source connection string (URI or key=value, as libpq). Passwords are
    /// best given through PGPASSWORD or ~/.pgpass.
    #[arg(long, env = "PG_DBMIGRATOR_SOURCE", hide_env_values = true)]
    source: String,
    /// Target connection string.
    #[arg(long, env = "PG_DBMIGRATOR_TARGET", hide_env_values = true)]
    target: String,
}

#[derive(Args, Debug)]
struct FilterArgs {
    /// Only schemas matching this pattern (pg_dump syntax; repeatable).
    #[arg(short = 'n', long = "schema")]
    schema: Vec<String>,
    /// Leave out schemas matching this pattern (repeatable).
    #[arg(short = 'N', long = "exclude-schema")]
    exclude_schema: Vec<String>,
    /// Only tables matching this pattern (repeatable). A partitioned table brings its partitions.
    #[arg(short = 't', long = "table")]
    table: Vec<String>,
    /// Leave out tables matching this pattern (repeatable).
    #[arg(short = 'T', long = "exclude-table")]
    exclude_table: Vec<String>,
    /// Create these tables but copy (and compare) none of their rows (repeatable).
    #[arg(long = "exclude-table-data")]
    exclude_table_data: Vec<String>,
}

impl FilterArgs {
    fn filters(&self) -> Filters {
        Filters {
            schemas: self.schema.clone(),
            exclude_schemas: self.exclude_schema.clone(),
            tables: self.table.clone(),
            exclude_tables: self.exclude_table.clone(),
            exclude_table_data: self.exclude_table_data.clone(),
        }
    }
}

#[derive(Args, Debug)]
struct TablespaceArgs {
    /// Put every object in the target database's default tablespace.
    #[arg(long, conflicts_with = "tablespace_mapping")]
    no_tablespaces: bool,
    /// OLD=NEW: objects in the source's tablespace OLD go to the target's
    /// NEW (repeatable). Unmapped tablespaces keep their name and must
    /// exist on the target.
    #[arg(long, value_name = "OLD=NEW", value_parser = parse_tablespace_mapping)]
    tablespace_mapping: Vec<(String, String)>,
}

/// `OLD=NEW`, both names non-empty.
fn parse_tablespace_mapping(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((old, new)) if !old.is_empty() && !new.is_empty() && !new.contains('=') => {
            Ok((old.to_string(), new.to_string()))
        }
        _ => Err(format!(
            "{s:?}: give a source and a target tablespace name as OLD=NEW"
        )),
    }
}

/// `OLD=NEW`, both absolute directories.
fn parse_location_mapping(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((old, new)) if old.starts_with('/') && new.starts_with('/') => {
            Ok((old.to_string(), new.to_string()))
        }
        _ => Err(format!(
            "{s:?}: give the source's and the target's tablespace directories as /OLD=/NEW"
        )),
    }
}

impl TablespaceArgs {
    /// Into `config`; a tablespace mapped twice is an error.
    fn apply(&self, config: &mut MigrationConfig) -> Result<(), MigrationError> {
        for (i, (old, _)) in self.tablespace_mapping.iter().enumerate() {
            if self.tablespace_mapping[..i].iter().any(|(o, _)| o == old) {
                return Err(MigrationError::Config(format!(
                    "--tablespace-mapping names tablespace {old:?} twice: map each source tablespace once"
                )));
            }
        }
        config.no_tablespaces = self.no_tablespaces;
        config.tablespace_mapping = self.tablespace_mapping.clone();
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum ModeArg {
    Offline,
    Online,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum CopyFormatArg {
    Auto,
    Binary,
    Text,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum VerifyArg {
    None,
    Count,
    Checksum,
}

impl From<VerifyArg> for VerifyLevel {
    fn from(v: VerifyArg) -> Self {
        match v {
            VerifyArg::None => VerifyLevel::None,
            VerifyArg::Count => VerifyLevel::Count,
            VerifyArg::Checksum => VerifyLevel::Checksum,
        }
    }
}

#[derive(Args, Debug)]
struct MigrateArgs {
    #[command(flatten)]
    endpoints: Endpoints,
    #[arg(long, value_enum, default_value_t = ModeArg::Offline)]
    mode: ModeArg,
    /// Copy rows only, into a target whose schema already exists.
    #[arg(long)]
    data_only: bool,
    /// Parallel copy workers.
    #[arg(short = 'j', long, default_value_t = 4)]
    jobs: usize,
    /// Sessions building indexes and keys while other tables still copy
    /// (default: as --jobs).
    #[arg(long)]
    index_jobs: Option<usize>,
    /// Cut tables bigger than this into page ranges copied in parallel
    /// (e.g. 256MB, 1GB; 0 never splits; PostgreSQL 14+ sources).
    /// Default: the database size divided by --jobs, between 64MB and 1GB.
    #[arg(long, value_parser = parse_size)]
    split_size: Option<u64>,
    /// The target's optimizer statistics: carry (from the source, where
    /// the target can import them: PostgreSQL 18+; ANALYZE elsewhere),
    /// analyze, or none (left to autovacuum).
    #[arg(long, value_enum, default_value_t = StatisticsArg::Carry)]
    statistics: StatisticsArg,
    /// The same as --statistics none.
    #[arg(long, conflicts_with = "statistics")]
    skip_analyze: bool,
    /// Cap the copy's read rate from the source, over all workers
    /// (bytes a second: 20MB, 500kB, ...), to leave a live source its I/O.
    #[arg(long, value_parser = parse_size)]
    max_rate: Option<u64>,
    /// Pause the copy while the live source is under pressure: a physical
    /// standby replaying too far behind it, or a session waiting for a
    /// lock ours hold (at most lock-pause a waiter); the WAL our slot
    /// retains is reported, never paused for. Bare: the defaults
    /// standby-lag=30s,slot-wal=80%,lock-wait=1s,lock-pause=60s; or
    /// key=value pairs replacing some (off turns one off; standby-lag and
    /// slot-wal also take sizes: 64MB).
    #[arg(
        long,
        value_name = "THRESHOLDS",
        num_args = 0..=1,
        default_missing_value = "on",
        value_parser = parse_source_pressure
    )]
    source_pressure: Option<SourcePressure>,
    /// stream: server to server; dump: through an archive in --dump-path
    /// (dumped, then restored).
    #[arg(long, value_enum, default_value_t = CopyMethodArg::Stream)]
    copy_method: CopyMethodArg,
    /// zstd level of the archive with --copy-method dump: 1 (fastest) to 22.
    #[arg(long, default_value_t = pg_dbmigrator::archive::DEFAULT_ZSTD_LEVEL)]
    compress_level: i32,
    #[command(flatten)]
    filters: FilterArgs,
    /// COPY wire format: auto is binary between servers of the same major version.
    #[arg(long, value_enum, default_value_t = CopyFormatArg::Auto)]
    copy_format: CopyFormatArg,
    /// Do not copy large objects.
    #[arg(long)]
    no_large_objects: bool,
    /// What to verify after the copy.
    #[arg(long, value_enum, default_value_t = VerifyArg::Checksum)]
    verify: VerifyArg,
    /// Work directory; the resume token is <dump-path>.resume.json.
    /// Default: a directory under the temp dir named after the migration.
    #[arg(long)]
    dump_path: Option<PathBuf>,
    /// Continue an interrupted migration (same flags as the first run).
    #[arg(long, conflicts_with = "force_clean")]
    resume: bool,
    /// Discard the resume token and erase half-built target data, then start over.
    #[arg(long)]
    force_clean: bool,
    /// Name of this migration (default: derived from source, target and filters).
    #[arg(long)]
    migration_id: Option<String>,
    /// When the source session holding the snapshot is lost mid-copy,
    /// stop instead of copying the tables not yet copied on a new snapshot
    /// (which makes the copy no longer one point in time).
    #[arg(long)]
    strict_snapshot: bool,
    /// Full migrations: create the roles the schema names that the target lacks
    /// (attributes and memberships; existing roles are left as they are).
    #[arg(long)]
    roles: bool,
    /// With --roles: copy the roles' password hashes too (needs a superuser source role).
    #[arg(long, requires = "roles")]
    role_passwords: bool,
    /// Leave owners out: objects belong to the target role that creates them.
    #[arg(long)]
    no_owner: bool,
    /// Leave privileges (GRANT/REVOKE, default privileges) out.
    #[arg(long)]
    no_acl: bool,
    /// Leave subscriptions out of the schema.
    #[arg(long)]
    no_subscriptions: bool,
    /// Leave security labels out of the schema (a target without the label provider).
    #[arg(long)]
    no_security_labels: bool,
    /// Leave columns' compression methods out: every column takes the
    /// target's default (a target built without lz4).
    #[arg(long)]
    no_toast_compression: bool,
    #[command(flatten)]
    tablespaces: TablespaceArgs,
    /// Online: cut over automatically once caught up, or (manual) stay in
    /// sync until `pg_dbmigrator cutover --dump-path <same path>`.
    #[arg(long, value_enum, default_value_t = CutoverArg::Manual)]
    cutover: CutoverArg,
    /// Online, --cutover auto: the lag (source WAL bytes not yet applied)
    /// under which the target counts as caught up (e.g. 1MB).
    #[arg(long, value_parser = parse_size, default_value = "1MB")]
    cutover_lag_bytes: u64,
    /// Online: give tables without a usable replica identity one on the
    /// source (USING INDEX of a suitable unique index, else FULL); the
    /// original is restored at cleanup.
    #[arg(long)]
    fix_replica_identity: bool,
    /// Online: do not make the source read-only at cutover (you stop the
    /// writes yourself).
    #[arg(long)]
    no_fence: bool,
    /// Online: keep the replication slot after cutover.
    #[arg(long)]
    keep_slot: bool,
    /// Online: keep the publication after cutover.
    #[arg(long)]
    keep_publication: bool,
    /// Online: at the cutover, stream the new server's changes back to the
    /// old source, so `pg_dbmigrator rollback` can return to it with nothing
    /// lost (`pg_dbmigrator finish` ends the fallback). Needs
    /// `wal_level = logical` on the target.
    #[arg(long)]
    fallback: bool,
    /// Migrate the whole cluster: roles, memberships, settings and
    /// tablespaces, then every database that allows connections (template0
    /// aside; postgres and template1 when they hold objects). --source and
    /// --target name each server's maintenance database (dbname=postgres).
    #[arg(long)]
    all_databases: bool,
    /// With --all-databases: leave out the databases matching PATTERN
    /// (pg_dumpall's rules: * and ?, double quotes keep case). Repeatable.
    #[arg(
        long = "exclude-database",
        value_name = "PATTERN",
        requires = "all_databases"
    )]
    exclude_databases: Vec<String>,
    /// With --all-databases: change roles and tablespaces that exist on the
    /// target and differ from the source's (else they are reported and
    /// left). The bootstrap superuser and the migrating role never change.
    #[arg(long, requires = "all_databases")]
    roles_overwrite: bool,
    /// With --all-databases: create roles without their passwords (every
    /// login role is named in a warning).
    #[arg(long, requires = "all_databases")]
    no_role_passwords: bool,
    /// With --all-databases: OLD=NEW tablespace directories, for a target
    /// host whose tablespaces live elsewhere (repeatable).
    #[arg(long, value_name = "OLD=NEW", value_parser = parse_location_mapping, requires = "all_databases")]
    tablespace_location: Vec<(String, String)>,
    /// Write no <dump-path>.summary.json (the report is still printed).
    #[arg(long)]
    no_summary: bool,
    /// Print the final report as JSON on stdout instead of the text summary.
    #[arg(long)]
    json: bool,
    /// Change nothing: print the plan (as `pg_dbmigrator plan`).
    #[arg(long)]
    dry_run: bool,
    /// Serve Prometheus metrics at http://ADDR/metrics and the status as
    /// JSON at /status while the migration runs (e.g. 127.0.0.1:9187; port
    /// 0 picks a free one; the address is logged).
    #[arg(long, value_name = "ADDR")]
    http: Option<std::net::SocketAddr>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum CutoverArg {
    Auto,
    Manual,
}

#[derive(Args, Debug)]
struct VerifyArgs {
    #[command(flatten)]
    endpoints: Endpoints,
    #[command(flatten)]
    filters: FilterArgs,
    /// Parallel workers per side.
    #[arg(short = 'j', long, default_value_t = 4)]
    jobs: usize,
    /// count: row counts only; checksum: row counts and content checksums.
    #[arg(long, value_enum, default_value_t = VerifyArg::Checksum)]
    level: VerifyArg,
    /// Do not compare large objects.
    #[arg(long)]
    no_large_objects: bool,
    /// Compare every database a `migrate --all-databases` takes, and the
    /// globals (roles, memberships, settings, privileges, tablespaces);
    /// --source and --target name each server's maintenance database.
    #[arg(long)]
    all_databases: bool,
    /// With --all-databases: leave out the databases matching PATTERN.
    #[arg(
        long = "exclude-database",
        value_name = "PATTERN",
        requires = "all_databases"
    )]
    exclude_databases: Vec<String>,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct StatusArgs {
    /// The migration's work directory (as given to migrate --dump-path).
    #[arg(long, required_unless_present = "token")]
    dump_path: Option<PathBuf>,
    /// The resume token file itself.
    #[arg(long)]
    token: Option<PathBuf>,
    #[arg(long)]
    json: bool,
}

fn init_logging(cli: &Cli) {
    let level = match (cli.verbose as i32) - (cli.quiet as i32) {
        i32::MIN..=-2 => "error",
        -1 => "warn",
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter =
        tracing_subscriber::EnvFilter::try_from_env("PG_DBMIGRATOR_LOG").unwrap_or_else(|_| {
            tracing_subscriber::EnvFilter::new(format!("pg_dbmigrator={level},warn"))
        });
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(console::LogWriter)
        // Colours only for a terminal: never escape codes in a log file.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false);
    let registry = tracing_subscriber::registry()
        .with(filter)
        .with(console::EventLayer);
    match cli.log_format {
        LogFormat::Text => registry.with(fmt).init(),
        LogFormat::Json => registry.with(fmt.json()).init(),
    }
}

/// Ctrl-C or SIGTERM cancels the run; the library saves the token and returns.
fn cancel_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(s) => { s.recv().await; } None => std::future::pending().await } } => {}
        }
        tracing::warn!("interrupted: stopping workers and saving the resume token");
        t.cancel();
    });
    token
}

/// `--source-pressure`'s thresholds ([`SourcePressure::parse`]); clap's
/// message names the flag and the value already.
fn parse_source_pressure(s: &str) -> Result<SourcePressure, String> {
    SourcePressure::parse(s).map_err(|e| match e {
        MigrationError::Config(m) => {
            let quoted = format!("--source-pressure {s:?}: ");
            m.strip_prefix(quoted.as_str())
                .or_else(|| m.strip_prefix("--source-pressure: "))
                .unwrap_or(&m)
                .to_string()
        }
        e => e.to_string(),
    })
}

/// A size as PostgreSQL writes them: `512kB`, `64MB`, `1GB`, `1TB`, or bytes.
fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size: use a number with kB, MB, GB or TB"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" | "k" => 1 << 10,
        "mb" | "m" => 1 << 20,
        "gb" | "g" => 1 << 30,
        "tb" | "t" => 1 << 40,
        _ => return Err(format!("{s:?}: unknown unit (use kB, MB, GB or TB)")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
}

fn endpoint(label: &str, s: &str) -> Result<EndpointConfig, MigrationError> {
    EndpointConfig::parse(s).map_err(|e| match e {
        MigrationError::ConnInfo { reason, .. } => MigrationError::ConnInfo {
            endpoint: format!("--{label}"),
            reason,
        },
        other => other,
    })
}

async fn migrate(
    args: MigrateArgs,
    cancel: CancellationToken,
    show_mode: console::Mode,
) -> Result<i32, MigrationError> {
    if args.dry_run {
        return plan(args).await;
    }
    let config = migrate_config(&args)?;
    // NDJSON events on stdout with --json; the report is the last one.
    let (progress, shown, printer) = start_progress(args.json, show_mode);
    let online = config.mode == MigrationMode::Online;
    let migrator = Migrator::new(config).with_progress(progress.clone());
    let _http = match args.http {
        Some(addr) => {
            if !addr.ip().is_loopback() {
                tracing::warn!(%addr, "the status page and its cutover button are served beyond this host: anyone who can reach it and holds the token can cut over");
            }
            let stop = CancellationToken::new();
            let control = online.then(|| {
                let handle = migrator.cutover_handle();
                pg_dbmigrator::progress::CutoverControl {
                    token: uuid::Uuid::new_v4().simple().to_string(),
                    request: Box::new(move || {
                        if handle.request().is_refused() {
                            Err("the migration is not streaming yet (or no longer): cutover refused; ask again once it streams".into())
                        } else {
                            Ok(())
                        }
                    }),
                }
            });
            if let Some(c) = &control {
                // Once, on stderr: the page's Cutover button needs it.
                eprintln!(
                    "pg_dbmigrator: cutover token for the status page: {}",
                    c.token
                );
            }
            let bound =
                pg_dbmigrator::progress::serve(addr, progress.clone(), control, stop.clone())
                    .await?;
            tracing::info!(
                page = %format!("http://{bound}/"),
                metrics = %format!("http://{bound}/metrics"),
                status = %format!("http://{bound}/status"),
                "serving the migration's progress"
            );
            Some(stop.drop_guard())
        }
        None => None,
    };
    let token_path = migrator.token_path()?;
    let published = console::publish(progress.clone(), console::live_path(&token_path));
    let result = migrator.run(cancel).await;
    drop(published);
    // The progress line goes before the report is printed.
    drop(shown);
    finish_run(&progress, printer, &result, |r| r.summary()).await;
    let Some(report) = interrupted(result, &token_path)? else {
        return Ok(exit_code::INTERRUPTED);
    };
    Ok(match &report.verify {
        Some(v) if !v.is_clean() => exit_code::VERIFY_DIFFERENCES,
        _ => exit_code::OK,
    })
}

async fn plan(args: MigrateArgs) -> Result<i32, MigrationError> {
    let config = migrate_config(&args)?;
    let plan = pg_dbmigrator::plan(&config).await?;
    print_report(&plan, args.json, || plan.summary());
    Ok(if plan.ready() {
        exit_code::OK
    } else {
        exit_code::CONFIG
    })
}

fn migrate_config(args: &MigrateArgs) -> Result<MigrationConfig, MigrationError> {
    let mut config = MigrationConfig {
        source: Some(endpoint("source", &args.endpoints.source)?),
        target: Some(endpoint("target", &args.endpoints.target)?),
        mode: match args.mode {
            ModeArg::Offline => MigrationMode::Offline,
            ModeArg::Online => MigrationMode::Online,
        },
        data_only: args.data_only,
        jobs: args.jobs,
        index_jobs: args.index_jobs,
        split_bytes: args.split_size,
        max_rate: args.max_rate,
        source_pressure: args.source_pressure.clone(),
        statistics: match (args.skip_analyze, args.statistics) {
            (true, _) | (false, StatisticsArg::None) => Statistics::None,
            (false, StatisticsArg::Analyze) => Statistics::Analyze,
            (false, StatisticsArg::Carry) => Statistics::Carry,
        },
        copy_method: match args.copy_method {
            CopyMethodArg::Stream => CopyMethod::Stream,
            CopyMethodArg::Dump => CopyMethod::Dump,
        },
        compress_level: args.compress_level,
        filters: args.filters.filters(),
        copy_format: match args.copy_format {
            CopyFormatArg::Auto => CopyFormat::Auto,
            CopyFormatArg::Binary => CopyFormat::Binary,
            CopyFormatArg::Text => CopyFormat::Text,
        },
        large_objects: !args.no_large_objects,
        verify: args.verify.into(),
        dump_path: args.dump_path.clone(),
        resume: args.resume,
        force_clean: args.force_clean,
        migration_id: args.migration_id.clone(),
        strict_snapshot: args.strict_snapshot,
        roles: args.roles,
        role_passwords: args.role_passwords,
        no_owner: args.no_owner,
        no_acl: args.no_acl,
        no_subscriptions: args.no_subscriptions,
        no_security_labels: args.no_security_labels,
        no_toast_compression: args.no_toast_compression,
        cutover: match args.cutover {
            CutoverArg::Auto => CutoverMode::Auto,
            CutoverArg::Manual => CutoverMode::Manual,
        },
        cutover_lag_bytes: args.cutover_lag_bytes,
        fix_replica_identity: args.fix_replica_identity,
        fence: !args.no_fence,
        keep_slot: args.keep_slot,
        keep_publication: args.keep_publication,
        fallback: args.fallback,
        all_databases: args.all_databases,
        exclude_databases: args.exclude_databases.clone(),
        roles_overwrite: args.roles_overwrite,
        no_role_passwords: args.no_role_passwords,
        tablespace_locations: args.tablespace_location.clone(),
        no_summary: args.no_summary,
        ..MigrationConfig::default()
    };
    args.tablespaces.apply(&mut config)?;
    Ok(config)
}

/// The running state of a dump or restore: its cancellation and progress.
fn run_context(
    cancel: CancellationToken,
    progress: &std::sync::Arc<pg_dbmigrator::progress::Progress>,
) -> pg_dbmigrator::RunContext {
    let mut run = pg_dbmigrator::RunContext::new(cancel);
    run.progress = Some(progress.clone());
    run
}

/// `Ok(None)` after telling the user how to resume an interrupted run.
/// `<dump-path><suffix>`: where a cluster run's token is.
fn cluster_token_path(dump_path: &std::path::Path, suffix: &str) -> PathBuf {
    let mut s = dump_path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

fn interrupted<R>(
    r: Result<R, MigrationError>,
    token: &std::path::Path,
) -> Result<Option<R>, MigrationError> {
    match r {
        Ok(report) => Ok(Some(report)),
        Err(MigrationError::Cancelled) => {
            eprintln!(
                "pg_dbmigrator: interrupted; the resume token is {}. Run the same command with --resume to continue.",
                token.display()
            );
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// A report on stdout: JSON for scripts, or the human summary.
/// Progress for a run: log warnings into it, NDJSON events on stdout with
/// `--json` (the printer), the live line per `--progress`.
fn start_progress(
    json: bool,
    show_mode: console::Mode,
) -> (
    std::sync::Arc<pg_dbmigrator::progress::Progress>,
    Option<console::Shown>,
    Option<console::Printer>,
) {
    let progress = pg_dbmigrator::progress::Progress::new();
    console::log_into(&progress);
    let printer = json.then(|| console::events_to_stdout(&progress));
    let shown = console::show(progress.clone(), show_mode);
    (progress, shown, printer)
}

/// The end of a run with `--json`: the library sent an `error` event for a
/// failure; the `summary` event (holding the report) for a success, then
/// every event is printed. Without `--json` the report's text summary.
async fn finish_run<R: serde::Serialize>(
    progress: &pg_dbmigrator::progress::Progress,
    printer: Option<console::Printer>,
    result: &Result<R, MigrationError>,
    summary: impl FnOnce(&R) -> String,
) {
    match (printer, result) {
        (Some(p), r) => {
            if let Ok(r) = r {
                progress.publish(pg_dbmigrator::Event::Summary {
                    report: serde_json::to_value(r).expect("report serializes"),
                });
            }
            p.finish().await;
        }
        (None, Ok(r)) => print!("{}", summary(r)),
        (None, Err(_)) => {}
    }
}

fn print_report<R: serde::Serialize>(report: &R, json: bool, summary: impl FnOnce() -> String) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(report).expect("report serializes")
        );
    } else {
        print!("{}", summary());
    }
}

async fn dump(
    args: DumpArgs,
    cancel: CancellationToken,
    show_mode: console::Mode,
) -> Result<i32, MigrationError> {
    let (progress, shown, printer) = start_progress(args.json, show_mode);
    let mut config = MigrationConfig {
        source: Some(endpoint("source", &args.source)?),
        data_only: args.data_only,
        jobs: args.jobs,
        split_bytes: args.split_size,
        compress_level: args.compress_level,
        copy_format: match args.copy_format {
            CopyFormatArg::Auto | CopyFormatArg::Text => CopyFormat::Text,
            CopyFormatArg::Binary => CopyFormat::Binary,
        },
        filters: args.filters.filters(),
        large_objects: !args.no_large_objects,
        no_owner: args.no_owner,
        no_acl: args.no_acl,
        no_subscriptions: args.no_subscriptions,
        no_security_labels: args.no_security_labels,
        no_toast_compression: args.no_toast_compression,
        dump_path: Some(args.dump_path.clone()),
        resume: args.resume,
        force_clean: args.force_clean,
        ..MigrationConfig::default()
    };
    args.tablespaces.apply(&mut config)?;
    if args.all_databases {
        config.all_databases = true;
        config.exclude_databases = args.exclude_databases.clone();
        config.no_role_passwords = args.no_role_passwords;
        let token = cluster_token_path(&args.dump_path, ".cluster.json");
        let result =
            pg_dbmigrator::dump_all_databases(&config, &run_context(cancel, &progress)).await;
        drop(shown);
        finish_run(&progress, printer, &result, |r| r.summary()).await;
        return match interrupted(result, &token)? {
            Some(_) => Ok(exit_code::OK),
            None => Ok(exit_code::INTERRUPTED),
        };
    }
    let token = pg_dbmigrator::ResumeToken::path_for(&args.dump_path);
    let result = pg_dbmigrator::dump::run(&config, &run_context(cancel, &progress)).await;
    drop(shown);
    finish_run(&progress, printer, &result, |r| r.summary()).await;
    match interrupted(result, &token)? {
        Some(_) => Ok(exit_code::OK),
        None => Ok(exit_code::INTERRUPTED),
    }
}

async fn restore(
    args: RestoreArgs,
    cancel: CancellationToken,
    show_mode: console::Mode,
) -> Result<i32, MigrationError> {
    let (progress, shown, printer) = start_progress(args.json, show_mode);
    let mut config = MigrationConfig {
        target: Some(endpoint("target", &args.target)?),
        jobs: args.jobs,
        index_jobs: args.index_jobs,
        // (An archive holds no statistics to carry.)
        statistics: if args.skip_analyze {
            Statistics::None
        } else {
            Statistics::Analyze
        },
        large_objects: !args.no_large_objects,
        no_toast_compression: args.no_toast_compression,
        dump_path: Some(args.dump_path.clone()),
        resume: args.resume,
        force_clean: args.force_clean,
        ..MigrationConfig::default()
    };
    args.tablespaces.apply(&mut config)?;
    if args.all_databases {
        config.all_databases = true;
        config.roles_overwrite = args.roles_overwrite;
        config.no_role_passwords = args.no_role_passwords;
        config.tablespace_locations = args.tablespace_location.clone();
        let token = cluster_token_path(&args.dump_path, ".restore.cluster.json");
        let result =
            pg_dbmigrator::restore_all_databases(&config, &run_context(cancel, &progress)).await;
        drop(shown);
        finish_run(&progress, printer, &result, |r| r.summary()).await;
        return match interrupted(result, &token)? {
            Some(_) => Ok(exit_code::OK),
            None => Ok(exit_code::INTERRUPTED),
        };
    }
    let token = pg_dbmigrator::ResumeToken::restore_path_for(&args.dump_path);
    let result = pg_dbmigrator::restore::run(&config, &run_context(cancel, &progress)).await;
    drop(shown);
    finish_run(&progress, printer, &result, |r| r.summary()).await;
    match interrupted(result, &token)? {
        Some(_) => Ok(exit_code::OK),
        None => Ok(exit_code::INTERRUPTED),
    }
}

async fn verify(args: VerifyArgs, cancel: CancellationToken) -> Result<i32, MigrationError> {
    let source = endpoint("source", &args.endpoints.source)?;
    let target = endpoint("target", &args.endpoints.target)?;
    let opts = VerifyOptions {
        level: args.level.into(),
        jobs: args.jobs.max(1),
        large_objects: !args.no_large_objects,
        extension_data: false,
    };
    if args.all_databases {
        let report = pg_dbmigrator::verify_all_databases(
            &source,
            &target,
            &args.exclude_databases,
            &args.filters.filters(),
            &opts,
            &cancel,
        )
        .await?;
        if args.json {
            println!(
                "{}",
                serde_json::to_string_pretty(&report).expect("report serializes")
            );
        } else {
            println!(
                "verify: {} difference(s) in {} database(s) and the globals ({:.1}s)",
                report.differences(),
                report.databases.len() + report.missing_databases.len(),
                report.seconds
            );
            print!("{}", report.summary());
        }
        return Ok(if report.is_clean() {
            exit_code::OK
        } else {
            exit_code::VERIFY_DIFFERENCES
        });
    }
    let report =
        pg_dbmigrator::verify(&source, &target, &args.filters.filters(), &opts, &cancel).await?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("report serializes")
        );
    } else if report.is_clean() {
        println!(
            "verify: 0 differences ({} tables, {} sequences, {} large objects checked in {:.1}s)",
            report.tables.len(),
            report.sequences,
            report.large_objects,
            report.seconds
        );
    } else {
        println!("verify: {} difference(s)", report.differences.len());
        print!("{}", report.differences_table());
    }
    if !args.json {
        print!("{}", report.outside_filters_line());
    }
    Ok(if report.is_clean() {
        exit_code::OK
    } else {
        exit_code::VERIFY_DIFFERENCES
    })
}

async fn schema(args: SchemaArgs) -> Result<i32, MigrationError> {
    use pg_dbmigrator::schema::Part;
    let source = endpoint("source", &args.source)?;
    let script = pg_dbmigrator::schema::read(&source, None).await?;
    let parts: &[Part] = match args.section {
        Some(SectionArg::PreData) => &[Part::PreData],
        Some(SectionArg::PostData) => &[Part::PostData, Part::Acl, Part::Last],
        None => &[Part::PreData, Part::PostData, Part::Acl, Part::Last],
    };
    for u in &script.unsupported {
        tracing::warn!("not reproduced yet, left out of this output: {u}");
    }
    print!("{}", script.to_sql(parts));
    Ok(exit_code::OK)
}

/// `status --dump-path` of a whole-cluster migration: the cluster's
/// token, and where each database's own run stands. `None` when `dir` is
/// not a cluster's.
fn cluster_status(dir: &std::path::Path, json: bool) -> Result<Option<i32>, MigrationError> {
    use pg_dbmigrator::resume::cluster::ClusterToken;
    let Some(cluster) = ClusterToken::load(&ClusterToken::path_for(dir))? else {
        return Ok(None);
    };
    let mut rows = Vec::new();
    for db in &cluster.databases {
        let token = ResumeToken::load(&ResumeToken::path_for(&dir.join(&db.dir)))?;
        let state = match (&token, db.done) {
            (_, true) => "done".to_string(),
            (Some(t), false) if t.completed => "completed (not yet recorded)".to_string(),
            (Some(t), false) => format!(
                "at stage {}",
                t.current_stage().map_or("none", |s| s.stage.as_str())
            ),
            (None, false) => "not started".to_string(),
        };
        rows.push((db.name.clone(), db.dir.clone(), state));
    }
    if json {
        let mut v = serde_json::to_value(&cluster).expect("token serializes");
        v["states"] = serde_json::json!(rows
            .iter()
            .map(|(name, dir, state)| serde_json::json!({"name": name, "dir": dir, "state": state}))
            .collect::<Vec<_>>());
        println!("{}", serde_json::to_string_pretty(&v).expect("serializes"));
        return Ok(Some(exit_code::OK));
    }
    let done = cluster.databases.iter().filter(|d| d.done).count();
    println!(
        "cluster     {} database(s), {done} done{}",
        cluster.databases.len(),
        if cluster.completed {
            ", completed".to_string()
        } else {
            "; continue with the same command and --resume".to_string()
        }
    );
    println!("mode        {:?}", cluster.mode);
    println!("source      {}", cluster.source);
    println!("target      {}", cluster.target);
    println!(
        "globals     {}",
        if cluster.globals_done {
            "done"
        } else {
            "not yet"
        }
    );
    if cluster.mode == MigrationMode::Online {
        let cutover = match (
            cluster.cutover_downtime_seconds,
            cluster.cutover_passed,
            &cluster.cutover_error,
        ) {
            (Some(d), _, _) => format!("done: the cluster's writes were blocked {d:.3}s"),
            (None, true, _) => "passed its barrier, not finished: rerun with --resume".into(),
            (None, false, Some(e)) => format!(
                "failed after {} attempt(s) (every fence lifted): {e}",
                cluster.cutover_attempts
            ),
            (None, false, None) => "not yet".into(),
        };
        println!("cutover     {cutover}");
        let fb = &cluster.fallback;
        if fb.enabled {
            let state = match (&fb.ended_by, fb.rollback_passed, fb.rollback_requested) {
                (Some(by), _, _) if by == "rollback" => format!(
                    "rolled back: the cluster's writes were blocked {:.3}s",
                    fb.rollback_downtime_seconds.unwrap_or_default()
                ),
                (Some(_), _, _) => "finished".into(),
                (None, true, _) => "rollback passed its barrier, not finished: rerun with --resume".into(),
                (None, false, true) => "rollback requested, not passed".into(),
                (None, false, false) if fb.finish_requested => "finish requested".into(),
                (None, false, false) => match &fb.rollback_error {
                    Some(e) => format!("streaming back; the last rollback failed: {e}"),
                    None if cluster.cutover_downtime_seconds.is_some() => "streaming back (`pg_dbmigrator rollback` or `finish` --dump-path <cluster dir>)".into(),
                    None => "after the cutover".into(),
                },
            };
            println!("fallback    {state}");
        }
    }
    println!("updated     {}", cluster.updated_at.to_rfc3339());
    for (name, dir, state) in rows {
        println!("  {name:<30} {state} ({dir})");
    }
    Ok(Some(exit_code::OK))
}

fn status(args: StatusArgs) -> Result<i32, MigrationError> {
    let path = match (&args.token, &args.dump_path) {
        (Some(t), _) => t.clone(),
        (None, Some(d)) => ResumeToken::path_for(d),
        (None, None) => unreachable!("clap requires one"),
    };
    if let (None, Some(d)) = (&args.token, &args.dump_path) {
        if !path.exists() {
            if let Some(code) = cluster_status(d, args.json)? {
                return Ok(code);
            }
        }
    }
    let Some(token) = ResumeToken::load(&path)? else {
        return Err(MigrationError::Config(format!(
            "no resume token at {}: no migration has run with that --dump-path",
            path.display()
        )));
    };
    let live = console::read_live(&path);
    if args.json {
        let mut v = serde_json::to_value(&token).expect("token serializes");
        v["live"] = serde_json::to_value(&live).expect("snapshot serializes");
        println!("{}", serde_json::to_string_pretty(&v).expect("serializes"));
        return Ok(exit_code::OK);
    }
    println!("migration   {}", token.migration_id);
    if let Some(l) = &live {
        println!("live        running: {}", console::line(l));
    }
    println!("mode        {:?}", token.mode);
    println!(
        "state       {}",
        if token.completed {
            "completed".to_string()
        } else {
            format!(
                "incomplete (at stage {}); continue with the same command and --resume",
                token.current_stage().map_or("none", |s| s.stage.as_str())
            )
        }
    );
    println!("source      {}", token.definition.source);
    println!("target      {}", token.definition.target);
    println!("started     {}", token.created_at.to_rfc3339());
    println!("updated     {}", token.updated_at.to_rfc3339());
    for s in &token.stages {
        println!(
            "  {:<15} {:?}{}",
            s.stage.as_str(),
            s.status,
            s.finished_at
                .map(|f| format!(
                    " ({:.1}s)",
                    (f - s.started_at).num_milliseconds() as f64 / 1000.0
                ))
                .unwrap_or_default()
        );
    }
    let rows: u64 = token.copied.values().map(|c| c.rows).sum();
    println!(
        "items done  {} tables or chunks ({} rows)",
        token.copied.len(),
        rows
    );
    if let Some(o) = &token.online {
        println!(
            "slot        {}{}",
            o.slot_name,
            if o.slot_created { "" } else { " (dropped)" }
        );
        println!(
            "publication {}{}",
            o.publication_name,
            if o.publication_created {
                ""
            } else {
                " (dropped)"
            }
        );
        if let Some(p) = o.consistent_point {
            println!("snapshot at {p} (streaming starts there)");
        }
        for f in &o.replica_identity_fixes {
            println!(
                "replica identity of {}.{} changed (restored at cleanup)",
                f.schema, f.name
            );
        }
        println!(
            "fence       {}",
            if o.fenced {
                "the source is read-only (`pg_dbmigrator unfence` lifts it)"
            } else {
                "none"
            }
        );
        if let Some(c) = &o.cutover {
            match (c.completed, &c.error) {
                (true, _) => println!(
                    "cutover     done: writes blocked {:.3}s, fence LSN {}",
                    c.downtime_seconds.unwrap_or_default(),
                    c.fence_lsn.map(|l| l.to_string()).unwrap_or_default()
                ),
                (false, Some(e)) => println!("cutover     failed (fence lifted): {e}"),
                (false, None) => println!("cutover     started, not finished: rerun with --resume"),
            }
        }
    }
    if !token.dumped.is_empty() {
        let rows: u64 = token.dumped.values().map(|f| f.rows).sum();
        let size: u64 = token.dumped.values().map(|f| f.file.size).sum();
        println!(
            "dumped      {} files ({} rows, {} on disk)",
            token.dumped.len(),
            rows,
            pg_dbmigrator::human_bytes(size)
        );
    }
    Ok(exit_code::OK)
}

/// The resume token of the migration working in `dump_path`, which must exist.
fn load_token(dump_path: &std::path::Path) -> Result<ResumeToken, MigrationError> {
    let token_path = ResumeToken::path_for(dump_path);
    ResumeToken::load(&token_path)?.ok_or_else(|| {
        MigrationError::Config(format!(
            "no resume token at {}: no migration has run with --dump-path {}",
            token_path.display(),
            dump_path.display()
        ))
    })
}

/// `pg_dbmigrator rollback` / `finish`: like `cutover`, a request file the
/// running migration takes, then a wait for the token to say it is done.
async fn end_fallback(args: CutoverArgs, what: &str) -> Result<i32, MigrationError> {
    use std::time::{Duration, Instant};
    if pg_dbmigrator::resume::cluster::ClusterToken::path_for(&args.dump_path).exists() {
        return cluster_end_fallback(args, what).await;
    }
    let token_path = ResumeToken::path_for(&args.dump_path);
    let load = || load_token(&args.dump_path);
    let fallback = |t: &ResumeToken| t.online.as_ref().and_then(|o| o.fallback.clone());
    let token = load()?;
    let Some(before) = fallback(&token).filter(|f| f.start_lsn.is_some()) else {
        return Err(MigrationError::Config(format!(
            "the migration at {} has no fallback under way: `{what}` follows a cutover of `migrate --mode online --fallback`",
            args.dump_path.display()
        )));
    };
    if before.ended {
        let how = if before.rollback.as_ref().is_some_and(|r| r.completed) {
            "rolled back"
        } else {
            "finished"
        };
        println!("{what}: nothing to do, the fallback was already {how}");
        return Ok(exit_code::OK);
    }
    let attempts_before = before.rollback.as_ref().map_or(0, |r| r.attempts);
    let not_running = |t: &ResumeToken| {
        let interrupted = fallback(t)
            .and_then(|f| f.rollback)
            .is_some_and(|r| r.started_at.is_some() && !r.completed);
        MigrationError::Config(format!(
            "the migration at {} is not running{}: run the same `pg_dbmigrator migrate --mode online --fallback ... --dump-path {}` command again with --resume{}",
            args.dump_path.display(),
            if interrupted { " (it died in the middle of its rollback)" } else { "" },
            args.dump_path.display(),
            if interrupted { ", which finishes the interrupted rollback".to_string() } else { format!(", then run `pg_dbmigrator {what}` again") },
        ))
    };
    if !pg_dbmigrator::resume::RunLock::is_held(&token_path) {
        return Err(not_running(&token));
    }
    let request = pg_dbmigrator::resume::request_path(&args.dump_path, what);
    std::fs::write(&request, chrono::Utc::now().to_rfc3339())
        .map_err(|e| MigrationError::io(format!("writing {}", request.display()), e))?;
    eprintln!("pg_dbmigrator: {what} requested");
    let deadline = Instant::now() + Duration::from_secs(args.wait_seconds);
    loop {
        let t = load()?;
        if let Some(f) = fallback(&t) {
            let r = f.rollback.clone().filter(|r| r.attempts > attempts_before);
            if f.ended {
                match (what, r) {
                    ("rollback", Some(r)) if r.completed => {
                        if args.json {
                            println!("{}", serde_json::to_string_pretty(&r).expect("serializes"));
                        } else {
                            println!(
                                "rollback: done; writes were blocked for {:.3}s; the old source is writable again, the new server stays read-only",
                                r.downtime_seconds.unwrap_or_default()
                            );
                        }
                    }
                    _ => println!(
                        "{what}: done; the reverse slot, publication and bookkeeping are removed"
                    ),
                }
                return Ok(exit_code::OK);
            }
            if let Some(e) = r.and_then(|r| r.error) {
                let _ = std::fs::remove_file(&request);
                return Err(MigrationError::Internal(format!(
                    "the rollback failed and was undone (the new server's fence is lifted, the fallback stream goes on): {e}"
                )));
            }
        }
        if !pg_dbmigrator::resume::RunLock::is_held(&token_path) {
            let t = load()?;
            if fallback(&t).is_some_and(|f| f.ended) {
                continue;
            }
            let _ = std::fs::remove_file(&request);
            return Err(not_running(&t));
        }
        if Instant::now() > deadline {
            return Err(MigrationError::Internal(format!(
                "the {what} has not finished after {}s; it goes on: see the migration's log or `pg_dbmigrator status --dump-path {}`",
                args.wait_seconds,
                args.dump_path.display()
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `pg_dbmigrator cutover`: leave a request file beside the token, wait
/// for the running migration to take it, then for its cutover to end.
async fn cutover(args: CutoverArgs) -> Result<i32, MigrationError> {
    use std::time::{Duration, Instant};
    if pg_dbmigrator::resume::cluster::ClusterToken::path_for(&args.dump_path).exists() {
        return cluster_cutover(args).await;
    }
    if let Some(cluster) = args
        .dump_path
        .parent()
        .filter(|p| pg_dbmigrator::resume::cluster::ClusterToken::path_for(p).exists())
    {
        return Err(MigrationError::Config(format!(
            "{} is one database of a whole-cluster migration: its databases cut over together; run `pg_dbmigrator cutover --dump-path {}`",
            args.dump_path.display(),
            cluster.display()
        )));
    }
    let token_path = ResumeToken::path_for(&args.dump_path);
    let load = || load_token(&args.dump_path);
    let token = load()?;
    if token.mode != MigrationMode::Online {
        return Err(MigrationError::Config(format!(
            "the migration at {} is offline: there is nothing to cut over",
            args.dump_path.display()
        )));
    }
    let record = |t: &ResumeToken| t.online.as_ref().and_then(|o| o.cutover.clone());
    let before = record(&token);
    if before.as_ref().is_some_and(|c| c.completed) || token.completed {
        println!("cutover: already done");
        return Ok(exit_code::OK);
    }
    let attempts_before = before.as_ref().map_or(0, |c| c.attempts);
    // A request to a dead migration would wait for nothing: the running
    // process holds the run lock, so its absence says at once that none is.
    let not_running = |t: &ResumeToken| {
        let interrupted = record(t).filter(|c| c.started_at.is_some() && !c.completed);
        MigrationError::Config(format!(
            "the migration at {} is not running{}: run the same `pg_dbmigrator migrate --mode online ... --dump-path {}` command again with --resume{}",
            args.dump_path.display(),
            if interrupted.is_some() { " (it died in the middle of its cutover)" } else { "" },
            args.dump_path.display(),
            if interrupted.is_some() { ", which finishes the interrupted cutover" } else { ", then ask for the cutover again" },
        ))
    };
    if !pg_dbmigrator::resume::RunLock::is_held(&token_path) {
        return Err(not_running(&token));
    }
    // Like the library's `CutoverHandle::request`: refused, not queued,
    // before streaming (a queued request would cut over whatever the lag).
    if !token
        .stages
        .iter()
        .any(|s| s.stage == pg_dbmigrator::Stage::Stream)
    {
        return Err(MigrationError::Config(format!(
            "the migration at {} is still copying: a cutover is refused until it streams (it is not queued). Ask again once `pg_dbmigrator status --dump-path {}` shows [stream]",
            args.dump_path.display(),
            args.dump_path.display()
        )));
    }
    let request = pg_dbmigrator::online::request_path(&args.dump_path);
    std::fs::write(&request, chrono::Utc::now().to_rfc3339())
        .map_err(|e| MigrationError::io(format!("writing {}", request.display()), e))?;
    // The migration checks for the request several times a second.
    let picked_deadline = Instant::now() + Duration::from_secs(15);
    while request.exists() {
        if !pg_dbmigrator::resume::RunLock::is_held(&token_path) {
            let _ = std::fs::remove_file(&request);
            return Err(not_running(&load()?));
        }
        if Instant::now() > picked_deadline {
            let _ = std::fs::remove_file(&request);
            return Err(MigrationError::Config(format!(
                "no running migration picked up the cutover request: is `pg_dbmigrator migrate --mode online ... --dump-path {}` running? (after a crash, rerun it with --resume)",
                args.dump_path.display()
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("pg_dbmigrator: cutover started");
    let deadline = Instant::now() + Duration::from_secs(args.wait_seconds);
    loop {
        let t = load()?;
        if let Some(c) = record(&t).filter(|c| c.attempts > attempts_before) {
            if c.completed {
                if args.json {
                    println!("{}", serde_json::to_string_pretty(&c).expect("serializes"));
                } else {
                    println!(
                        "cutover: done; writes were blocked for {:.3}s; fence LSN {}",
                        c.downtime_seconds.unwrap_or_default(),
                        c.fence_lsn.map(|l| l.to_string()).unwrap_or_default()
                    );
                }
                return Ok(exit_code::OK);
            }
            if let Some(e) = c.error {
                return Err(MigrationError::Internal(format!(
                    "the cutover failed and was rolled back (the fence is lifted, streaming goes on): {e}"
                )));
            }
        }
        if !pg_dbmigrator::resume::RunLock::is_held(&token_path) {
            // Gone in the middle: a last look, in case it finished first.
            let t = load()?;
            if record(&t).is_some_and(|c| c.completed && c.attempts > attempts_before) {
                continue;
            }
            return Err(not_running(&t));
        }
        if Instant::now() > deadline {
            return Err(MigrationError::Internal(format!(
                "the cutover has not finished after {}s; it goes on: see the migration's log or `pg_dbmigrator status --dump-path {}`",
                args.wait_seconds,
                args.dump_path.display()
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `pg_dbmigrator cutover` of an online whole-cluster migration: the
/// request file beside the cluster's token, then its record of the attempt.
async fn cluster_cutover(args: CutoverArgs) -> Result<i32, MigrationError> {
    use pg_dbmigrator::resume::cluster::ClusterToken;
    use std::time::{Duration, Instant};
    let token_path = ClusterToken::path_for(&args.dump_path);
    let load = || {
        ClusterToken::load(&token_path)?.ok_or_else(|| {
            MigrationError::Config(format!(
                "no cluster resume token at {}",
                token_path.display()
            ))
        })
    };
    let token = load()?;
    if token.mode != MigrationMode::Online {
        return Err(MigrationError::Config(format!(
            "the cluster migration at {} is offline: there is nothing to cut over",
            args.dump_path.display()
        )));
    }
    if token.completed || token.cutover_downtime_seconds.is_some() {
        println!("cutover: already done");
        return Ok(exit_code::OK);
    }
    let not_running = || {
        MigrationError::Config(format!(
            "the cluster migration at {} is not running: run the same `pg_dbmigrator migrate --all-databases --mode online ... --dump-path {}` command again with --resume, then ask for the cutover again",
            args.dump_path.display(),
            args.dump_path.display()
        ))
    };
    if !pg_dbmigrator::resume::RunLock::is_held(&token_path) {
        return Err(not_running());
    }
    let before = token.cutover_attempts;
    let request = pg_dbmigrator::online::request_path(&args.dump_path);
    std::fs::write(&request, chrono::Utc::now().to_rfc3339())
        .map_err(|e| MigrationError::io(format!("writing {}", request.display()), e))?;
    // Taken once every database streams (kept until then, unlike a single
    // database's request, which is refused during the copy).
    let deadline = Instant::now() + Duration::from_secs(args.wait_seconds);
    let mut picked = false;
    loop {
        let t = load()?;
        if t.cutover_attempts > before {
            if let Some(d) = t.cutover_downtime_seconds {
                if args.json {
                    println!("{}", serde_json::json!({ "downtime_seconds": d }));
                } else {
                    println!("cutover: done; the cluster's writes were blocked for {d:.3}s");
                }
                return Ok(exit_code::OK);
            }
            return Err(MigrationError::Internal(format!(
                "the cluster's cutover failed and was rolled back (every fence is lifted, streaming goes on): {}",
                t.cutover_error.unwrap_or_default()
            )));
        }
        if !picked && !request.exists() {
            picked = true;
            eprintln!("pg_dbmigrator: cutover started");
        }
        if !pg_dbmigrator::resume::RunLock::is_held(&token_path) {
            let _ = std::fs::remove_file(&request);
            if load()?.cutover_attempts > before {
                continue;
            }
            return Err(not_running());
        }
        if Instant::now() > deadline {
            if !picked {
                let _ = std::fs::remove_file(&request);
            }
            return Err(MigrationError::Internal(format!(
                "the cluster's cutover has not finished after {}s{}: see the migration's log",
                args.wait_seconds,
                if picked {
                    " (it goes on)"
                } else {
                    " (the request was withdrawn: not every database streams yet)"
                }
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `rollback` / `finish` of a whole cluster's `--fallback`: one request
/// file for the cluster, whose run hands it to every database (a rollback
/// passes its barrier: every database returns, or none does).
async fn cluster_end_fallback(args: CutoverArgs, what: &str) -> Result<i32, MigrationError> {
    use pg_dbmigrator::resume::cluster::ClusterToken;
    use std::time::{Duration, Instant};
    let token_path = ClusterToken::path_for(&args.dump_path);
    let load = || {
        ClusterToken::load(&token_path)?.ok_or_else(|| {
            MigrationError::Config(format!(
                "no cluster resume token at {}",
                token_path.display()
            ))
        })
    };
    let token = load()?;
    let cut_over = token.cutover_passed || token.cutover_downtime_seconds.is_some();
    if !token.fallback.enabled || !cut_over {
        return Err(MigrationError::Config(format!(
            "the cluster migration at {} has no fallback under way: `{what}` follows the cutover of `migrate --all-databases --mode online --fallback`",
            args.dump_path.display()
        )));
    }
    if let Some(how) = &token.fallback.ended_by {
        let how = if how == "rollback" {
            "rolled back"
        } else {
            "finished"
        };
        println!("{what}: nothing to do, the cluster's fallback was already {how}");
        return Ok(exit_code::OK);
    }
    let not_running = |t: &ClusterToken| {
        let interrupted = t.fallback.rollback_requested || t.fallback.rollback_passed;
        MigrationError::Config(format!(
            "the cluster migration at {d} is not running{}: run the same `pg_dbmigrator migrate --all-databases --mode online --fallback ... --dump-path {d}` command again with --resume{}",
            if interrupted { " (it died in the middle of its rollback)" } else { "" },
            if interrupted { ", which finishes the interrupted rollback".to_string() } else { format!(", then run `pg_dbmigrator {what}` again") },
            d = args.dump_path.display(),
        ))
    };
    if !pg_dbmigrator::resume::RunLock::is_held(&token_path) {
        return Err(not_running(&token));
    }
    let before = token.fallback.rollback_attempts;
    let request = pg_dbmigrator::resume::request_path(&args.dump_path, what);
    std::fs::write(&request, chrono::Utc::now().to_rfc3339())
        .map_err(|e| MigrationError::io(format!("writing {}", request.display()), e))?;
    eprintln!("pg_dbmigrator: {what} of the cluster requested");
    let deadline = Instant::now() + Duration::from_secs(args.wait_seconds);
    loop {
        let t = load()?;
        match t.fallback.ended_by.as_deref() {
            Some("rollback") => {
                let d = t.fallback.rollback_downtime_seconds.unwrap_or_default();
                if args.json {
                    println!(
                        "{}",
                        serde_json::json!({ "ended_by": "rollback", "downtime_seconds": d })
                    );
                } else {
                    println!(
                        "rollback: done; the cluster's writes were blocked for {d:.3}s; every old source is writable again, every new server stays read-only"
                    );
                }
                return Ok(exit_code::OK);
            }
            Some(_) => {
                println!("{what}: done; every database's reverse slot, publication and bookkeeping are removed");
                return Ok(exit_code::OK);
            }
            None => {}
        }
        if what == "rollback" && t.fallback.rollback_attempts > before {
            if let Some(e) = &t.fallback.rollback_error {
                let _ = std::fs::remove_file(&request);
                return Err(MigrationError::Internal(format!(
                    "the cluster's rollback failed and was undone (every new server's fence is lifted, the fallback streams go on): {e}"
                )));
            }
        }
        if !pg_dbmigrator::resume::RunLock::is_held(&token_path) {
            if load()?.fallback.ended_by.is_some() {
                continue;
            }
            let _ = std::fs::remove_file(&request);
            return Err(not_running(&load()?));
        }
        if Instant::now() > deadline {
            return Err(MigrationError::Internal(format!(
                "the cluster's {what} has not finished after {}s; it goes on: see the migration's log or `pg_dbmigrator status --dump-path {}`",
                args.wait_seconds,
                args.dump_path.display()
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn cleanup(args: CleanupArgs) -> Result<i32, MigrationError> {
    let config = MigrationConfig {
        source: Some(endpoint("source", &args.endpoints.source)?),
        target: Some(endpoint("target", &args.endpoints.target)?),
        mode: MigrationMode::Online,
        data_only: args.data_only,
        filters: args.filters.filters(),
        large_objects: !args.no_large_objects,
        dump_path: args.dump_path.clone(),
        migration_id: args.migration_id.clone(),
        ..MigrationConfig::default()
    };
    let report = pg_dbmigrator::cleanup(&config).await?;
    print_report(&report, args.json, || {
        format!(
            "cleanup: slot {} and publication {} removed (if present), {} replica identit{} restored, fence {}, target bookkeeping {}\n",
            report.slot,
            report.publication,
            report.replica_identities_restored,
            if report.replica_identities_restored == 1 { "y" } else { "ies" },
            if report.unfenced { "lifted" } else { "not set" },
            if report.target_bookkeeping_dropped { "dropped" } else { "not reachable" }
        )
    });
    Ok(exit_code::OK)
}

fn forget(args: ForgetArgs) -> Result<i32, MigrationError> {
    let config = MigrationConfig {
        source: Some(endpoint("source", &args.endpoints.source)?),
        target: Some(endpoint("target", &args.endpoints.target)?),
        mode: match args.mode {
            ModeArg::Offline => MigrationMode::Offline,
            ModeArg::Online => MigrationMode::Online,
        },
        copy_method: match args.copy_method {
            CopyMethodArg::Stream => CopyMethod::Stream,
            CopyMethodArg::Dump => CopyMethod::Dump,
        },
        data_only: args.data_only,
        filters: args.filters.filters(),
        large_objects: !args.no_large_objects,
        dump_path: args.dump_path.clone(),
        migration_id: args.migration_id.clone(),
        ..MigrationConfig::default()
    };
    let report = pg_dbmigrator::discard_files(&config, args.force)?;
    print_report(&report, args.json, || {
        let mut s = format!(
            "forget: migration {}: {} file(s) removed\n",
            report.migration_id,
            report.removed.len()
        );
        for p in &report.removed {
            s.push_str(&format!("  {}\n", p.display()));
        }
        s
    });
    Ok(exit_code::OK)
}

async fn unfence(args: UnfenceArgs) -> Result<i32, MigrationError> {
    let source = endpoint("source", &args.source)?;
    pg_dbmigrator::unfence(&source).await?;
    println!("unfence: the source database accepts writes again (new sessions)");
    Ok(exit_code::OK)
}

/// The command line, with `--config` and `PG_DBMIGRATOR_*` applied.
fn parse_cli() -> Cli {
    use clap::{CommandFactory, FromArgMatches};
    let cmd = config_file::with_env_vars(Cli::command());
    let args = match config_file::expand(&cmd, std::env::args_os().collect()) {
        Ok(a) => a,
        Err(msg) => {
            eprintln!("pg_dbmigrator: error: {msg}");
            std::process::exit(exit_code::CONFIG);
        }
    };
    let matches = cmd.get_matches_from(args);
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

/// glibc's allocator, told to hand freed memory back to the system: at
/// 25,000 tables the schema load frees tens of megabytes that glibc kept
/// resident for the rest of the run, while the copy's threads grew arenas
/// of their own beside them. Its thresholds for returning memory (128 KiB,
/// its own starting values) are held fixed instead of rising with the
/// largest block freed, and threads share as many arenas as there are
/// cores rather than eight per core. Peak RSS at 25,000 tables: 129.6 →
/// 120.9 MB; the pgbench set's time and CPU unchanged (BENCHMARKS.md).
/// A process-wide choice, so the binary's, not the library's. Settings
/// the user gave glibc (`GLIBC_TUNABLES`, `MALLOC_*`) are left alone.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn tune_malloc() {
    let user_tuned = std::env::vars_os().any(|(k, _)| {
        let k = k.to_string_lossy();
        k == "GLIBC_TUNABLES" || k.starts_with("MALLOC_")
    });
    if user_tuned {
        return;
    }
    let arenas = std::thread::available_parallelism().map_or(2, |n| n.get().max(2));
    let arenas = libc::c_int::try_from(arenas).unwrap_or(libc::c_int::MAX);
    // SAFETY: `mallopt` only sets parameters of glibc's allocator, called
    // here before any thread this process starts; it returns 0 on a
    // refused value, which leaves glibc's default in place.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, arenas);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 128 * 1024);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune_malloc() {}

fn main() -> ExitCode {
    tune_malloc();
    // Remedies in errors name this tool's flags and commands.
    pg_dbmigrator::error::use_cli_wording();
    let cli = parse_cli();
    let show_mode = match cli.progress {
        ProgressArg::Never => console::Mode::Off,
        ProgressArg::Always => console::Mode::Bar,
        ProgressArg::Auto if std::io::IsTerminal::is_terminal(&std::io::stderr()) => {
            console::Mode::Bar
        }
        ProgressArg::Auto => console::Mode::Log,
    };
    match &cli.command {
        Command::Completions { shell } => {
            let mut cmd = config_file::with_env_vars(<Cli as clap::CommandFactory>::command());
            clap_complete::generate(*shell, &mut cmd, "pg_dbmigrator", &mut std::io::stdout());
            return ExitCode::SUCCESS;
        }
        Command::Man => {
            let cmd = config_file::with_env_vars(<Cli as clap::CommandFactory>::command());
            let mut out = std::io::stdout();
            if let Err(e) = clap_mangen::Man::new(cmd).render(&mut out) {
                eprintln!("pg_dbmigrator: error: writing the manual page: {e}");
                return ExitCode::from(exit_code::FAILED as u8);
            }
            return ExitCode::SUCCESS;
        }
        _ => {}
    }
    init_logging(&cli);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pg_dbmigrator: error: cannot start the runtime: {e}");
            return ExitCode::from(exit_code::FAILED as u8);
        }
    };
    let code = rt.block_on(async move {
        let result = match cli.command {
            Command::Migrate(a) => migrate(a, cancel_on_signals(), show_mode).await,
            Command::Plan(a) => plan(a).await,
            Command::Verify(a) => verify(a, cancel_on_signals()).await,
            Command::Status(a) => status(a),
            Command::Schema(a) => schema(a).await,
            Command::Dump(a) => dump(a, cancel_on_signals(), show_mode).await,
            Command::Restore(a) => restore(a, cancel_on_signals(), show_mode).await,
            Command::Cutover(a) => cutover(a).await,
            Command::Rollback(a) => end_fallback(a, "rollback").await,
            Command::Finish(a) => end_fallback(a, "finish").await,
            Command::Cleanup(a) => cleanup(a).await,
            Command::Unfence(a) => unfence(a).await,
            Command::Forget(a) => forget(a),
            Command::Completions { .. } | Command::Man => {
                unreachable!("handled before the runtime")
            }
        };
        match result {
            Ok(code) => code,
            Err(MigrationError::Cancelled) => {
                eprintln!("pg_dbmigrator: interrupted");
                exit_code::INTERRUPTED
            }
            Err(e) => {
                eprintln!("pg_dbmigrator: error: {e}");
                e.exit_code()
            }
        }
    });
    ExitCode::from(code as u8)
}
