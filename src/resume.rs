//! The resume token: a small JSON file that records what a migration has
//! finished, so a crashed or interrupted run continues where it stopped.
//!
//! It lives at `<dump_path>.resume.json`. Every save is atomic (sibling temp
//! file, fsync, rename, fsync of the directory), so a crash leaves either the
//! old or the new token, never half of one. The config hash binds a token to
//! the migration that wrote it: resuming with another target or other filters
//! is refused before anything is touched. No password is ever written here.
//!
//! A foundation: it stores what stages record (their record types are
//! defined here, below them) and imports no stage.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::{EndpointConfig, Filters, MigrationConfig, MigrationMode};
use crate::error::{MigrationError, Remedy, Result};

pub mod cluster;
mod files;
mod journal;

pub use files::{discard_files, DiscardedFiles};

// What the token records of the stages' outputs: defined here, below the
// stages that write them (the archive, the replica identity fixes).

/// One file of the archive, as it is on disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Relative to the archive root, `/`-separated.
    pub path: String,
    /// Bytes on disk (compressed, for data files).
    pub size: u64,
    /// Lowercase hex SHA-256 of the bytes on disk.
    pub sha256: String,
}

/// The COPY format a data file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataFormat {
    Text,
    Binary,
}

/// One data file: the COPY output of one table, or of one chunk of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataFile {
    pub file: FileEntry,
    /// 0-based position of this chunk in the table.
    pub chunk: u32,
    /// How many chunks the table was split into.
    pub chunks: u32,
    /// The heap pages this chunk covers, `[first, end)`; `None` when the table
    /// was not split by pages, an `end` of `None` runs to the table's end.
    #[serde(default)]
    pub pages: Option<(u64, Option<u64>)>,
    /// Rows COPY reported for this file.
    pub rows: u64,
    pub format: DataFormat,
    /// Bytes of the COPY stream before compression.
    pub raw_bytes: u64,
}

/// What --fix-replica-identity changed on one table, recorded in the resume token so cleanup can undo it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaIdentityFix {
    /// The table's schema.
    pub schema: String,
    /// The table.
    pub name: String,
    /// pg_class.relreplident before: 'd', 'n', 'f' or 'i' (as a String of one char).
    pub original: String,
    /// For original 'i': the index that was the identity.
    pub original_index: Option<String>,
    /// What we set.
    pub new: NewIdentity,
}

/// The replica identity a run gave a table without a primary key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum NewIdentity {
    /// `REPLICA IDENTITY USING INDEX` this unique index.
    UsingIndex(String),
    /// `REPLICA IDENTITY FULL`.
    Full,
}

/// Bumped whenever the token's layout changes incompatibly.
pub const TOKEN_SCHEMA_VERSION: u32 = 1;

/// The stages of a migration, in order. Each is recorded when it finishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Stage {
    /// Checks before any change: connections, versions, settings, the
    /// target's emptiness, what online needs on the source.
    Preflight,
    /// Creating the target database or cleaning it (`--clean`).
    PrepareTarget,
    /// The schema before the data: types, tables, functions, ...
    SchemaPreData,
    /// The rows (see [`crate::Snapshot::percent`]).
    CopyData,
    /// The schema after the data: indexes, constraints, triggers, ...
    SchemaPostData,
    /// Sequence values.
    Sequences,
    /// Large objects.
    LargeObjects,
    /// Removing the run's bookkeeping from the target.
    Finalize,
    /// Comparing source and target (`VerifyLevel`).
    Verify,
    /// Writing a dump archive (per-file markers in `dumped`).
    Dump,
    /// Loading a dump archive into the target.
    Restore,
    /// Online: applying the source's changes to the target.
    Stream,
    /// Online: fence, drain, sequences, cleanup.
    Cutover,
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Stage {
    /// The fault point around the stage's work (run through
    /// [`TokenStore::run_stage`]).
    fn fault_point(self) -> Option<crate::faults::Point> {
        use crate::faults::Point;
        Some(match self {
            Stage::PrepareTarget => Point::PrepareTarget,
            Stage::SchemaPreData => Point::SchemaPreData,
            Stage::CopyData => Point::CopyData,
            Stage::SchemaPostData => Point::SchemaPostData,
            Stage::LargeObjects => Point::LargeObjects,
            Stage::Finalize => Point::Finalize,
            _ => return None,
        })
    }

    /// The stage's name in events, reports and the resume token
    /// (`copy_data`, `stream`, ...).
    pub fn as_str(&self) -> &'static str {
        match self {
            Stage::Preflight => "preflight",
            Stage::PrepareTarget => "prepare_target",
            Stage::SchemaPreData => "schema_pre_data",
            Stage::CopyData => "copy_data",
            Stage::SchemaPostData => "schema_post_data",
            Stage::Sequences => "sequences",
            Stage::LargeObjects => "large_objects",
            Stage::Finalize => "finalize",
            Stage::Verify => "verify",
            Stage::Dump => "dump",
            Stage::Restore => "restore",
            Stage::Stream => "stream",
            Stage::Cutover => "cutover",
        }
    }
}

/// Where one endpoint is, without credentials: what identifies "the same
/// server and database" across runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointIdentity {
    pub hosts: Vec<String>,
    pub ports: Vec<u16>,
    pub dbname: String,
}

impl EndpointIdentity {
    pub fn of(ep: &EndpointConfig) -> Self {
        EndpointIdentity {
            hosts: ep.hosts.iter().map(|h| h.to_string()).collect(),
            ports: ep.ports.clone(),
            dbname: ep.dbname.clone(),
        }
    }
}

impl EndpointIdentity {
    /// An archive directory standing in for a server (dump and restore).
    pub fn archive(dir: &Path) -> Self {
        EndpointIdentity {
            hosts: vec!["archive".into()],
            ports: Vec::new(),
            dbname: dir.display().to_string(),
        }
    }
}

impl std::fmt::Display for EndpointIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.ports.is_empty() && self.hosts == ["archive"] {
            return write!(f, "archive {}", self.dbname);
        }
        let ports: Vec<String> = self.ports.iter().map(|p| p.to_string()).collect();
        write!(
            f,
            "host={} port={} dbname={}",
            self.hosts.join(","),
            ports.join(","),
            self.dbname
        )
    }
}

/// What defines a migration; hashed into the token's config hash. Tuning
/// (jobs, formats, verify level) is left out: it may change between attempts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Definition {
    pub mode: MigrationMode,
    pub data_only: bool,
    pub source: EndpointIdentity,
    pub target: EndpointIdentity,
    /// Sorted and deduplicated, so flag order does not matter.
    pub filters: Filters,
    pub large_objects: bool,
    /// Names of what an online migration creates on the source.
    pub slot_name: Option<String>,
    pub publication_name: Option<String>,
}

impl Definition {
    pub fn from_config(cfg: &MigrationConfig) -> Result<Self> {
        let source = cfg
            .source
            .as_ref()
            .ok_or_else(|| MigrationError::Config("no source given (--source)".into()))?;
        let target = cfg
            .target
            .as_ref()
            .ok_or_else(|| MigrationError::Config("no target given (--target)".into()))?;
        Ok(Definition {
            mode: cfg.mode,
            data_only: cfg.data_only,
            source: EndpointIdentity::of(source),
            target: EndpointIdentity::of(target),
            filters: cfg.filters.normalized(),
            large_objects: cfg.large_objects,
            slot_name: None,
            publication_name: None,
        })
    }

    /// SHA-256 over a canonical JSON form: stable across processes, machines
    /// and Rust versions (serde_json writes struct fields in declaration order).
    pub fn hash(&self) -> String {
        let json = serde_json::to_vec(self).expect("definition serializes");
        hex::encode(Sha256::digest(&json))
    }

    /// Human-readable differences against an earlier definition, naming the
    /// flags to restore.
    pub fn differences(&self, earlier: &Definition) -> Vec<String> {
        let mut out = Vec::new();
        if self.mode != earlier.mode {
            out.push(format!(
                "--mode was {:?}, now {:?}",
                earlier.mode, self.mode
            ));
        }
        if self.data_only != earlier.data_only {
            out.push(format!(
                "--data-only was {}, now {}",
                if earlier.data_only {
                    "given"
                } else {
                    "not given"
                },
                if self.data_only { "given" } else { "not given" }
            ));
        }
        if self.source != earlier.source {
            out.push(format!(
                "--source was {}, now {}",
                earlier.source, self.source
            ));
        }
        if self.target != earlier.target {
            out.push(format!(
                "--target was {}, now {}",
                earlier.target, self.target
            ));
        }
        let f = (&self.filters, &earlier.filters);
        for (flag, now, was) in [
            ("--schema", &f.0.schemas, &f.1.schemas),
            (
                "--exclude-schema",
                &f.0.exclude_schemas,
                &f.1.exclude_schemas,
            ),
            ("--table", &f.0.tables, &f.1.tables),
            ("--exclude-table", &f.0.exclude_tables, &f.1.exclude_tables),
            (
                "--exclude-table-data",
                &f.0.exclude_table_data,
                &f.1.exclude_table_data,
            ),
        ] {
            if now != was {
                out.push(format!("{flag} was {was:?}, now {now:?}"));
            }
        }
        if self.large_objects != earlier.large_objects {
            out.push("--no-large-objects differs".to_string());
        }
        if self.slot_name != earlier.slot_name || self.publication_name != earlier.publication_name
        {
            out.push("the migration id (slot / publication names) differs".to_string());
        }
        out
    }
}

/// The source-side state of an online migration. Each change is recorded
/// before it is made (and each removal after it is done), so a crash at any
/// point leaves a record `cleanup` can finish.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct OnlineState {
    pub slot_name: String,
    pub publication_name: String,
    /// We created the publication (and must drop it).
    pub publication_created: bool,
    /// We created the slot (and must drop it).
    pub slot_created: bool,
    /// Where the slot's snapshot sits: the copy shows exactly the
    /// transactions committed before it; streaming starts here.
    pub consistent_point: Option<crate::pg::replication::Lsn>,
    /// Replica identities changed by --fix-replica-identity (restored at cleanup).
    #[serde(default)]
    pub replica_identity_fixes: Vec<ReplicaIdentityFix>,
    /// The source database is fenced (read-only for other sessions).
    #[serde(default)]
    pub fenced: bool,
    #[serde(default)]
    pub cutover: Option<CutoverRecord>,
    /// Our DDL capture (event trigger and its functions) is, or may be,
    /// on the source: removed at the cutover and by cleanup.
    #[serde(default)]
    pub ddl_capture: bool,
    /// Without capture: the schema fingerprint of the migrated objects at
    /// the snapshot (object -> digest), compared under the fence.
    #[serde(default)]
    pub fingerprint: Option<std::collections::BTreeMap<String, String>>,
    /// `--fallback`: the reverse stream (new server -> old source) started
    /// at the cutover, and how it ended.
    #[serde(default)]
    pub fallback: Option<FallbackState>,
}

/// The reverse direction of a `--fallback` migration. Each object is
/// recorded before it is made, like the forward ones.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct FallbackState {
    /// Slot and publication on the target (the new server).
    pub slot_name: String,
    pub publication_name: String,
    pub slot_created: bool,
    pub publication_created: bool,
    /// The reverse slot's consistent point: the old source has everything
    /// the new server committed before it.
    pub start_lsn: Option<crate::pg::replication::Lsn>,
    /// `rollback`: the cutover in the opposite direction.
    #[serde(default)]
    pub rollback: Option<CutoverRecord>,
    /// Our DDL capture is (or may be) installed on the new server.
    #[serde(default)]
    pub ddl_capture: bool,
    /// `finish` began (a resumed run finishes it before anything else).
    #[serde(default)]
    pub finishing: bool,
    /// The fallback ended (by `rollback` or `finish`); nothing of it is left.
    #[serde(default)]
    pub ended: bool,
}

/// What the cutover did, for the report and for `pg_dbmigrator cutover`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct CutoverRecord {
    pub started_at: Option<DateTime<Utc>>,
    pub fence_lsn: Option<crate::pg::replication::Lsn>,
    /// Writes blocked: from the fence to the end of the cutover.
    pub downtime_seconds: Option<f64>,
    pub completed: bool,
    /// The last failed attempt, if any (the fence was lifted).
    pub error: Option<String>,
    /// Cutover attempts started (so `pg_dbmigrator cutover` can tell its
    /// own attempt from an earlier one).
    #[serde(default)]
    pub attempts: u32,
    /// This attempt drained the stream to its fence (`fence_lsn`) and the
    /// source stays fenced (without `--fence`, the operator stopped the
    /// writes): the target holds every change the slot could still give,
    /// so the slot is no longer needed. Recorded before the cutover drops
    /// the slot, cleared before a failed attempt lifts the fence (and at
    /// the start of an attempt that drains again); a resume that finds the
    /// slot missing with this set finishes the cutover instead of refusing.
    /// Without it a missing slot is lost: it held changes the target lacks.
    #[serde(default)]
    pub drained: bool,
}

/// Status of a stage in the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StageStatus {
    Running,
    Done,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageRecord {
    pub stage: Stage,
    pub status: StageStatus,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// A table (or, later, a chunk) whose copy committed on the target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CopyMarker {
    pub rows: u64,
    pub bytes: u64,
    pub seconds: f64,
    pub done_at: DateTime<Utc>,
}

/// Properties of the database that `pg_dump --create` carries and that
/// would get in the migration's own way if set early: a connection limit
/// (the copy's sessions), `ALLOW_CONNECTIONS = false` (every session),
/// `IS_TEMPLATE` (dropping it under `--force-clean`). The migration sets
/// them on the target database at the very end, after verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DatabaseLimits {
    /// `datconnlimit`; -1 for none.
    pub connection_limit: i32,
    pub is_template: bool,
    pub allow_connections: bool,
}

impl Default for DatabaseLimits {
    fn default() -> Self {
        DatabaseLimits {
            connection_limit: -1,
            is_template: false,
            allow_connections: true,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResumeToken {
    pub schema_version: u32,
    pub migration_id: String,
    pub mode: MigrationMode,
    pub config_hash: String,
    /// The definition the hash was computed from (no secrets), kept so a
    /// refusal can say which flag changed.
    pub definition: Definition,
    pub dump_path: PathBuf,
    pub stages: Vec<StageRecord>,
    /// Finished copy items: whole tables keyed by quoted `schema.table`,
    /// chunks as `schema.table#i/n`.
    pub copied: BTreeMap<String, CopyMarker>,
    /// How big tables were cut into page ranges; reused on resume so chunk
    /// names keep meaning the same pages.
    /// Dumps: the archive files finished so far, by item name.
    #[serde(default)]
    pub dumped: BTreeMap<String, DataFile>,
    #[serde(default)]
    pub chunk_plan: BTreeMap<String, Vec<crate::pg::catalog::PageRange>>,
    pub snapshot_name: Option<String>,
    pub slot_name: Option<String>,
    pub publication_name: Option<String>,
    pub last_applied_lsn: Option<String>,
    /// Online migrations: what was created or changed on the source, so
    /// resume, cutover and cleanup know what to continue and to undo.
    #[serde(default)]
    pub online: Option<OnlineState>,
    /// The database's limits to set at the end: an online run resumed
    /// after its copy does not read the schema again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database_limits: Option<DatabaseLimits>,
    /// Set when the whole migration finished.
    pub completed: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl ResumeToken {
    pub fn new(migration_id: String, definition: Definition, dump_path: PathBuf) -> Self {
        let now = Utc::now();
        ResumeToken {
            schema_version: TOKEN_SCHEMA_VERSION,
            migration_id,
            mode: definition.mode,
            config_hash: definition.hash(),
            slot_name: definition.slot_name.clone(),
            publication_name: definition.publication_name.clone(),
            definition,
            dump_path,
            stages: Vec::new(),
            copied: BTreeMap::new(),
            chunk_plan: BTreeMap::new(),
            dumped: BTreeMap::new(),
            snapshot_name: None,
            database_limits: None,
            last_applied_lsn: None,
            online: None,
            completed: false,
            created_at: now,
            updated_at: now,
        }
    }

    /// The token's path for a work directory: `<dump_path>.resume.json`.
    pub fn path_for(dump_path: &Path) -> PathBuf {
        let mut s = dump_path.as_os_str().to_owned();
        s.push(".resume.json");
        PathBuf::from(s)
    }

    /// The token of a restore from the archive at `dump_path`: beside the
    /// archive, apart from the dump's own token.
    pub fn restore_path_for(dump_path: &Path) -> PathBuf {
        let mut s = dump_path.as_os_str().to_owned();
        s.push(".restore.resume.json");
        PathBuf::from(s)
    }

    pub fn is_done(&self, stage: Stage) -> bool {
        self.stages
            .iter()
            .any(|s| s.stage == stage && s.status == StageStatus::Done)
    }

    pub fn stage_started(&mut self, stage: Stage) {
        let now = Utc::now();
        if let Some(s) = self.stages.iter_mut().find(|s| s.stage == stage) {
            s.status = StageStatus::Running;
            s.started_at = now;
            s.finished_at = None;
        } else {
            self.stages.push(StageRecord {
                stage,
                status: StageStatus::Running,
                started_at: now,
                finished_at: None,
            });
        }
    }

    pub fn stage_done(&mut self, stage: Stage) {
        let now = Utc::now();
        match self.stages.iter_mut().find(|s| s.stage == stage) {
            Some(s) => {
                s.status = StageStatus::Done;
                s.finished_at = Some(now);
            }
            None => self.stages.push(StageRecord {
                stage,
                status: StageStatus::Done,
                started_at: now,
                finished_at: Some(now),
            }),
        }
    }

    /// The stage in progress, or the last one finished.
    pub fn current_stage(&self) -> Option<&StageRecord> {
        self.stages
            .iter()
            .find(|s| s.status == StageStatus::Running)
            .or_else(|| self.stages.last())
    }

    /// Read a token. A missing file is `Ok(None)`; a damaged one is an error
    /// that says how to recover.
    pub fn load(path: &Path) -> Result<Option<Self>> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(MigrationError::io(
                    format!("reading resume token {}", path.display()),
                    e,
                ))
            }
        };
        // Read the version first so an incompatible token gets a precise message.
        let value: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| {
            MigrationError::resume_refused(format!(
                "resume token {} is damaged ({e})",
                path.display()
            ))
            .with_remedy(Remedy::ForceClean)
        })?;
        let version = value.get("schema_version").and_then(|v| v.as_u64());
        if version != Some(TOKEN_SCHEMA_VERSION as u64) {
            return Err(MigrationError::resume_refused(format!(
                "resume token {} has schema version {}, this pg_dbmigrator writes version {}; \
                 finish it with the version that started it, or start over",
                path.display(),
                version.map_or("(none)".to_string(), |v| v.to_string()),
                TOKEN_SCHEMA_VERSION
            ))
            .with_remedy(Remedy::ForceClean));
        }
        let mut token: ResumeToken = serde_json::from_value(value).map_err(|e| {
            MigrationError::resume_refused(format!(
                "resume token {} is damaged ({e})",
                path.display()
            ))
            .with_remedy(Remedy::ForceClean)
        })?;
        let replay = journal::read(&journal::path_for(path), &token)?;
        for r in replay.records {
            r.apply(&mut token);
        }
        Ok(Some(token))
    }

    /// Remove the token and its journal (a missing one is fine).
    pub fn remove(path: &Path) {
        let _ = std::fs::remove_file(path);
        let _ = std::fs::remove_file(journal::path_for(path));
    }

    /// Refuse to continue a token written for another migration.
    pub fn check_matches(&self, definition: &Definition, path: &Path) -> Result<()> {
        if self.config_hash == definition.hash() {
            return Ok(());
        }
        let diffs = definition.differences(&self.definition);
        let what = if diffs.is_empty() {
            "the migration's definition changed".to_string()
        } else {
            diffs.join("; ")
        };
        Err(MigrationError::resume_refused(format!(
            "the resume token {} was written for another migration: {what}. \
             Run again with the original settings to resume it, or discard it and start over",
            path.display()
        ))
        .with_remedy(Remedy::ForceClean))
    }

    /// Write the token atomically: temp file in the same directory, fsync,
    /// rename over the old one, fsync the directory; then start its journal
    /// afresh. A crash between the two leaves records the token already
    /// holds, which replay again harmlessly.
    pub fn save(&mut self, path: &Path) -> Result<()> {
        self.updated_at = Utc::now();
        write_json_atomically(path, self, "resume token")?;
        // Everything the journal held is in the token now.
        journal::reset(&journal::path_for(path), self)
    }
}

/// Write `bytes` (and a newline) to `path` atomically: a temp file in the
/// same directory, fsync, rename over the old file, fsync the directory. A
/// reader, or a run after a crash, sees the old file or the new one.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8], what: &str) -> Result<()> {
    write_atomically_with(path, what, |w| w.write_all(bytes))
}

/// `value` as pretty JSON, written as [`write_atomically`] does. Written
/// as it is serialized: a token naming 25,000 copied tables is 3.7 MB of
/// JSON, which built whole first (and grown by doubling) was the run's
/// last spike of memory.
pub(crate) fn write_json_atomically<T: Serialize>(
    path: &Path,
    value: &T,
    what: &str,
) -> Result<()> {
    write_atomically_with(path, what, |w| {
        serde_json::to_writer_pretty(w, value).map_err(std::io::Error::from)
    })
}

fn write_atomically_with(
    path: &Path,
    what: &str,
    body: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| Path::new("."));
    let ctx = |doing: &str| format!("{doing} {what} {}", path.display());
    std::fs::create_dir_all(dir)
        .map_err(|e| MigrationError::io(ctx("creating the directory of"), e))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".resume-")
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(|e| MigrationError::io(ctx("writing"), e))?;
    {
        let mut w = std::io::BufWriter::new(tmp.as_file_mut());
        body(&mut w)
            .and_then(|_| w.write_all(b"\n"))
            .and_then(|_| w.flush())
            .map_err(|e| MigrationError::io(ctx("writing"), e))?;
    }
    tmp.as_file()
        .sync_all()
        .map_err(|e| MigrationError::io(ctx("writing"), e))?;
    tmp.persist(path)
        .map_err(|e| MigrationError::io(ctx("renaming"), e.error))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Held by a run for its whole life (an advisory lock on `<token>.lock`):
/// one run of a migration at a time, and a later run, `cutover` or
/// `cleanup` can tell that the run which wrote the token is gone.
pub struct RunLock {
    file: Option<std::fs::File>,
    token_path: PathBuf,
}

impl Drop for RunLock {
    /// A run refused before it wrote a token leaves no lock file behind.
    /// Removed while still held, so no other run can hold the old file.
    fn drop(&mut self) {
        if !self.token_path.exists() {
            let _ = std::fs::remove_file(Self::path_for(&self.token_path));
        }
        self.file.take();
    }
}

/// Token paths whose last run died before writing its token (its lock
/// file was left behind): `--resume` starts those from the beginning.
fn died_unrecorded() -> &'static std::sync::Mutex<std::collections::HashSet<PathBuf>> {
    static SET: std::sync::OnceLock<std::sync::Mutex<std::collections::HashSet<PathBuf>>> =
        std::sync::OnceLock::new();
    SET.get_or_init(Default::default)
}

impl RunLock {
    pub fn path_for(token_path: &Path) -> PathBuf {
        let mut s = token_path.as_os_str().to_owned();
        s.push(".lock");
        PathBuf::from(s)
    }

    /// Take the lock of the migration whose token is at `token_path`, or
    /// refuse because another live process holds it.
    pub fn acquire(token_path: &Path) -> Result<RunLock> {
        let path = Self::path_for(token_path);
        // A lock file left without a token: a run died here before its
        // first record (see `resolve_token`).
        if path.exists() && !token_path.exists() {
            died_unrecorded()
                .lock()
                .unwrap()
                .insert(token_path.to_path_buf());
        }
        if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                MigrationError::io(format!("creating the directory of {}", path.display()), e)
            })?;
        }
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| MigrationError::io(format!("opening {}", path.display()), e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let holder = std::fs::read_to_string(&path).unwrap_or_default();
                return Err(MigrationError::resume_refused(format!(
                    "another run of this migration is in progress ({}; lock {}).                      Wait for it to finish, or stop it first",
                    holder.trim().trim_end_matches('.'),
                    path.display()
                )));
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(MigrationError::io(format!("locking {}", path.display()), e))
            }
        }
        let _ = file.set_len(0).and_then(|_| {
            writeln!(
                file,
                "pid {} since {}",
                std::process::id(),
                Utc::now().format("%Y-%m-%d %H:%M:%S UTC")
            )
        });
        Ok(RunLock {
            file: Some(file),
            token_path: token_path.to_path_buf(),
        })
    }

    /// Whether a live process holds the lock of the token at `token_path`.
    pub fn is_held(token_path: &Path) -> bool {
        let Ok(file) = std::fs::File::open(Self::path_for(token_path)) else {
            return false;
        };
        matches!(
            file.try_lock_shared(),
            Err(std::fs::TryLockError::WouldBlock)
        )
    }
}

/// Told of every state a [`TokenStore`] saves (stages, copied items,
/// cutover): the progress reporting, which stands above this module.
pub trait TokenObserver: Send + Sync {
    fn observe_token(&self, token: &ResumeToken);
    /// One item recorded through the journal (the token was not saved whole).
    fn observe_copied(&self, item: &str, marker: &CopyMarker);
}

/// A token shared by concurrent workers: every update is saved before the
/// caller moves on, under one lock, so saves never interleave. Per-item
/// markers go to the journal, one durable append each.
pub struct TokenStore {
    path: PathBuf,
    token: std::sync::Mutex<ResumeToken>,
    /// Opened at the first record (it may have a torn tail to cut off).
    journal: std::sync::Mutex<Option<journal::Appender>>,
    observer: Option<std::sync::Arc<dyn TokenObserver>>,
}

impl TokenStore {
    pub fn new(path: PathBuf, token: ResumeToken) -> Self {
        TokenStore {
            path,
            token: std::sync::Mutex::new(token),
            journal: std::sync::Mutex::new(None),
            observer: None,
        }
    }

    /// Record a copied item: durable in the journal before this returns.
    pub fn record_copied(&self, item: &str, marker: CopyMarker) -> Result<()> {
        self.record_copied_many(vec![(item.to_string(), marker)])
    }

    /// Record items that committed together: one append, one fsync.
    pub fn record_copied_many(&self, items: Vec<(String, CopyMarker)>) -> Result<()> {
        let records: Vec<journal::Record> = items
            .iter()
            .map(|(item, marker)| journal::Record::Copied {
                item: item.clone(),
                marker: marker.clone(),
            })
            .collect();
        self.append(records)?;
        if let Some(o) = &self.observer {
            for (item, marker) in &items {
                o.observe_copied(item, marker);
            }
        }
        Ok(())
    }

    /// Record an archive file written: durable in the journal before this returns.
    pub fn record_dumped(&self, item: &str, file: DataFile) -> Result<()> {
        // What the progress counts of it (a dump's items are its files).
        let marker = CopyMarker {
            rows: file.rows,
            bytes: file.raw_bytes,
            seconds: 0.0,
            done_at: Utc::now(),
        };
        self.append(vec![journal::Record::Dumped {
            item: item.to_string(),
            file,
        }])?;
        if let Some(o) = &self.observer {
            o.observe_copied(item, &marker);
        }
        Ok(())
    }

    /// Append under the token's lock, so a full save (which folds the
    /// journal in and resets it) never runs between the append and the
    /// in-memory update.
    fn append(&self, records: Vec<journal::Record>) -> Result<()> {
        let mut t = self.token.lock().unwrap_or_else(|p| p.into_inner());
        let mut j = self.journal.lock().unwrap_or_else(|p| p.into_inner());
        if j.is_none() {
            *j = Some(journal::Appender::open(&journal::path_for(&self.path), &t)?);
        }
        j.as_mut().expect("opened above").append(&records)?;
        for r in records {
            r.apply(&mut t);
        }
        Ok(())
    }

    /// Keep `observer` up to date with every change.
    pub fn observed(mut self, observer: Option<std::sync::Arc<dyn TokenObserver>>) -> Self {
        if let Some(o) = &observer {
            o.observe_token(&self.token.lock().unwrap_or_else(|p| p.into_inner()));
        }
        self.observer = observer;
        self
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Change the token and save it.
    pub fn update<R>(&self, f: impl FnOnce(&mut ResumeToken) -> R) -> Result<R> {
        let mut t = self.token.lock().unwrap_or_else(|p| p.into_inner());
        let r = f(&mut t);
        // Round trips from here on count as the stage under way.
        if let Some(s) = t
            .stages
            .iter()
            .rev()
            .find(|s| s.status == StageStatus::Running)
        {
            crate::pg::meter::enter(s.stage.as_str());
        }
        // The progress first: whoever sees the change in the file (a test,
        // `status`) then finds it in the progress too, not a few fsyncs later.
        if let Some(o) = &self.observer {
            o.observe_token(&t);
        }
        t.save(&self.path)?;
        Ok(r)
    }

    pub fn snapshot(&self) -> ResumeToken {
        self.token.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Run `work` as `stage` unless the token records it done: marked
    /// started, then done once `work` returns; its time is appended to
    /// `timings` either way. `None` when it had been done already.
    pub async fn run_stage<T>(
        &self,
        stage: Stage,
        timings: &mut Vec<(String, f64)>,
        work: impl std::future::Future<Output = Result<T>>,
    ) -> Result<Option<T>> {
        let t0 = std::time::Instant::now();
        let out = if self.snapshot().is_done(stage) {
            None
        } else {
            self.update(|t| t.stage_started(stage))?;
            let point = stage.fault_point();
            if let Some(p) = point {
                crate::faults::before(p).await;
            }
            let v = work.await?;
            if let Some(p) = point {
                crate::faults::after(p).await;
            }
            self.update(|t| t.stage_done(stage))?;
            Some(v)
        };
        timings.push((stage.as_str().to_string(), t0.elapsed().as_secs_f64()));
        Ok(out)
    }
}

/// Where a migration keeps its files, and its id, derived from what defines
/// it: running the same migration again finds the same token.
pub fn work_location(cfg: &MigrationConfig, def: &Definition) -> (String, PathBuf) {
    let id = cfg
        .migration_id
        .clone()
        .unwrap_or_else(|| format!("m{}", &def.hash()[..12]));
    let path = cfg
        .dump_path
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join(format!("pg_dbmigrator-{id}")));
    (id, path)
}

/// `--resume` of a migration whose token at `token_path` matches this
/// definition and records it complete: that token (the caller answers
/// "already complete", successfully). A finished migration, resumed, is a
/// success, not a refusal.
pub(crate) fn completed_token(
    cfg: &MigrationConfig,
    def: &Definition,
    token_path: &std::path::Path,
) -> Result<Option<ResumeToken>> {
    if !cfg.resume || cfg.force_clean {
        return Ok(None);
    }
    match ResumeToken::load(token_path)? {
        Some(t) if t.completed => {
            t.check_matches(def, token_path)?;
            Ok(Some(t))
        }
        _ => Ok(None),
    }
}

/// Decide from the resume token at `path` whether this run resumes:
/// `--resume` needs a matching, unfinished token; without it, an existing
/// token is never silently overwritten; `--force-clean` ignores it.
pub(crate) fn resolve_token(
    cfg: &MigrationConfig,
    def: &Definition,
    token_path: &std::path::Path,
    what: &str,
) -> Result<(Option<ResumeToken>, bool)> {
    let existing = if cfg.force_clean {
        None
    } else {
        ResumeToken::load(token_path)?
    };
    let resumed = match (&existing, cfg.resume) {
        (Some(t), true) => {
            t.check_matches(def, token_path)?;
            if t.completed {
                return Err(MigrationError::resume_refused(format!(
                    "the {what} recorded in {} already completed; nothing to resume",
                    token_path.display()
                ))
                .with_remedy(Remedy::ForceClean));
            }
            true
        }
        (Some(t), false) if t.completed => {
            return Err(MigrationError::resume_refused(format!(
                "this {what} already completed (resume token {}): nothing was done. Resuming confirms \
                 it is complete (and succeeds); starting over copies it all again (it first erases what \
                 was copied to the target)",
                token_path.display()
            ))
            .with_remedy(Remedy::Resume)
            .with_remedy(Remedy::ForceClean)
            .with_remedy(Remedy::DiscardFiles))
        }
        (Some(t), false) => {
            return Err(MigrationError::resume_refused(format!(
                "a resume token for this {what} exists at {} (stage {}{})",
                token_path.display(),
                t.current_stage().map_or("none", |s| s.stage.as_str()),
                if t.completed { ", completed" } else { "" }
            ))
            .with_remedy(Remedy::Resume)
            .with_remedy(Remedy::ForceClean))
        }
        (None, true) if died_unrecorded().lock().unwrap().contains(token_path) => {
            // Killed before its first record: nothing was recorded, so
            // nothing can be half done that a new run would not redo (the
            // target's own checks still refuse one that is not empty).
            crate::recorded::warn_recorded!("the interrupted run of this {what} ({}) stopped before recording anything: starting from the beginning", token_path.display());
            false
        }
        (None, true) => {
            return Err(MigrationError::resume_refused(format!(
                "nothing to resume: no resume token at {} (pass the --dump-path of the interrupted run, or run without --resume)",
                token_path.display()
            )))
        }
        (None, false) => false,
    };
    Ok((existing, resumed))
}

/// The file `pg_dbmigrator cutover` creates to ask the migration using the
/// same work directory to cut over.
pub fn cutover_request_path(dump_path: &std::path::Path) -> std::path::PathBuf {
    request_path(dump_path, "cutover")
}

/// A request file beside the token (`<dump-path>.<what>`): `cutover`,
/// `rollback`, `finish`. The running migration takes it and removes it.
pub fn request_path(dump_path: &std::path::Path, what: &str) -> std::path::PathBuf {
    let mut s = dump_path.as_os_str().to_owned();
    s.push(format!(".{what}"));
    std::path::PathBuf::from(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Host, SslMode};
    use std::time::Duration;

    fn ep(host: &str, db: &str) -> EndpointConfig {
        EndpointConfig {
            hosts: vec![Host::Tcp(host.into())],
            ports: vec![5432],
            user: "u".into(),
            password: Some(crate::config::Secret::new("hunter2-secret")),
            dbname: db.into(),
            sslmode: SslMode::Prefer,
            sslrootcert: None,
            sslcert: None,
            sslkey: None,
            application_name: None,
            connect_timeout: Duration::from_secs(10),
            options: None,
        }
    }

    fn cfg() -> MigrationConfig {
        MigrationConfig {
            source: Some(ep("a", "src")),
            target: Some(ep("b", "dst")),
            ..Default::default()
        }
    }

    #[test]
    fn hash_is_stable_and_order_independent() {
        let mut c1 = cfg();
        c1.filters.tables = vec!["x".into(), "y".into()];
        let mut c2 = cfg();
        c2.filters.tables = vec!["y".into(), "x".into(), "x".into()];
        c2.jobs = 17;
        let h1 = Definition::from_config(&c1).unwrap().hash();
        let h2 = Definition::from_config(&c2).unwrap().hash();
        assert_eq!(h1, h2);
        assert_eq!(h1.len(), 64);
        let mut c3 = cfg();
        c3.target = Some(ep("c", "dst"));
        assert_ne!(h1, Definition::from_config(&c3).unwrap().hash());
    }

    #[test]
    fn password_never_in_token_and_save_roundtrips() {
        let dir = tempfile::tempdir().unwrap();
        let path = ResumeToken::path_for(&dir.path().join("work"));
        assert!(path.to_string_lossy().ends_with("work.resume.json"));
        let def = Definition::from_config(&cfg()).unwrap();
        let mut t = ResumeToken::new("m1".into(), def.clone(), dir.path().join("work"));
        t.stage_started(Stage::CopyData);
        t.copied.insert(
            "public.t".into(),
            CopyMarker {
                rows: 3,
                bytes: 10,
                seconds: 0.1,
                done_at: Utc::now(),
            },
        );
        t.save(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains("hunter2"));
        let back = ResumeToken::load(&path).unwrap().unwrap();
        assert_eq!(back.copied.len(), 1);
        assert!(!back.is_done(Stage::CopyData));
        back.check_matches(&def, &path).unwrap();
    }

    /// Items recorded through the store are one journal line each (the
    /// token is not rewritten), read back by `load`, and folded into the
    /// token by the next full save.
    #[test]
    fn recorded_items_go_to_the_journal_and_fold_into_the_next_save() {
        let dir = tempfile::tempdir().unwrap();
        let path = ResumeToken::path_for(&dir.path().join("work"));
        let def = Definition::from_config(&cfg()).unwrap();
        let mut t = ResumeToken::new("m1".into(), def, dir.path().join("work"));
        t.save(&path).unwrap();
        let token_bytes = std::fs::read(&path).unwrap();
        let store = TokenStore::new(path.clone(), t);
        for i in 0..50u64 {
            let m = CopyMarker {
                rows: i,
                bytes: i,
                seconds: 0.0,
                done_at: Utc::now(),
            };
            store.record_copied(&format!("public.t{i}"), m).unwrap();
        }
        assert_eq!(
            std::fs::read(&path).unwrap(),
            token_bytes,
            "token untouched"
        );
        let journal = journal::path_for(&path);
        let lines = std::fs::read_to_string(&journal).unwrap().lines().count();
        assert_eq!(lines, 51, "a header and one line per item");
        assert_eq!(ResumeToken::load(&path).unwrap().unwrap().copied.len(), 50);
        store.update(|t| t.stage_done(Stage::CopyData)).unwrap();
        let lines = std::fs::read_to_string(&journal).unwrap().lines().count();
        assert_eq!(lines, 1, "folded into the token");
        let back = ResumeToken::load(&path).unwrap().unwrap();
        assert_eq!(back.copied.len(), 50);
        assert!(back.is_done(Stage::CopyData));
        // Records after the fold append to the fresh journal.
        store
            .record_copied(
                "public.late",
                CopyMarker {
                    rows: 1,
                    bytes: 1,
                    seconds: 0.0,
                    done_at: Utc::now(),
                },
            )
            .unwrap();
        assert_eq!(ResumeToken::load(&path).unwrap().unwrap().copied.len(), 51);
    }

    #[test]
    fn one_run_at_a_time_and_a_dead_run_is_seen() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("w.resume.json");
        assert!(!RunLock::is_held(&token));
        let lock = RunLock::acquire(&token).unwrap();
        assert!(RunLock::is_held(&token));
        let e = RunLock::acquire(&token).err().unwrap().to_string();
        assert!(
            e.contains("another run of this migration is in progress"),
            "{e}"
        );
        assert!(e.contains(&format!("pid {}", std::process::id())), "{e}");
        drop(lock);
        assert!(!RunLock::is_held(&token));
        // No token was written: no lock file is left either.
        assert!(!RunLock::path_for(&token).exists());
        std::fs::write(&token, "{}").unwrap();
        drop(RunLock::acquire(&token).unwrap());
        assert!(RunLock::path_for(&token).exists());
        assert!(!RunLock::is_held(&token));
    }

    /// The hash must not change between processes, machines or compiler
    /// versions, or every saved token would be refused after an upgrade. A
    /// change of `Definition`'s layout must bump TOKEN_SCHEMA_VERSION and
    /// this value together.
    #[test]
    fn hash_is_pinned() {
        let mut c = cfg();
        c.filters.schemas = vec!["app".into()];
        let h = Definition::from_config(&c).unwrap().hash();
        let json = serde_json::to_string(&Definition::from_config(&c).unwrap()).unwrap();
        assert_eq!(
            json,
            r#"{"mode":"offline","data_only":false,"source":{"hosts":["a"],"ports":[5432],"dbname":"src"},"target":{"hosts":["b"],"ports":[5432],"dbname":"dst"},"filters":{"schemas":["app"],"exclude_schemas":[],"tables":[],"exclude_tables":[]},"large_objects":true,"slot_name":null,"publication_name":null}"#
        );
        assert_eq!(h, hex::encode(Sha256::digest(json.as_bytes())));
        assert_eq!(
            h,
            "319a6bcc837ad7427df3a1fca4061f5866aa173879bddb09cd53548f3dea6f1e"
        );
    }

    #[test]
    fn mismatch_names_the_flag() {
        let dir = tempfile::tempdir().unwrap();
        let def = Definition::from_config(&cfg()).unwrap();
        let t = ResumeToken::new("m1".into(), def, dir.path().join("w"));
        let mut other = cfg();
        other.target = Some(ep("elsewhere", "dst"));
        other.filters.exclude_tables = vec!["big".into()];
        let err = t
            .check_matches(&Definition::from_config(&other).unwrap(), Path::new("x"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("--target was host=b"), "{err}");
        assert!(err.contains("--exclude-table"), "{err}");
        assert!(err.contains("`force_clean`"), "{err}");
    }

    #[test]
    fn damaged_and_foreign_version_tokens_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.json");
        std::fs::write(&p, b"{ not json").unwrap();
        assert!(ResumeToken::load(&p)
            .unwrap_err()
            .to_string()
            .contains("damaged"));
        std::fs::write(&p, br#"{"schema_version": 99}"#).unwrap();
        assert!(ResumeToken::load(&p)
            .unwrap_err()
            .to_string()
            .contains("version 99"));
        assert!(ResumeToken::load(&dir.path().join("none"))
            .unwrap()
            .is_none());
    }
}
