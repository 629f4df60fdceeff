//! `manifest.json`: what an archive holds and how to check it.
//!
//! The manifest maps tables to their data files and records each file's size
//! and SHA-256, so restore can prove a file is the one that was dumped. Unknown
//! fields are ignored so an older build can read a newer archive of the same
//! `format_version`; a higher `format_version` means an incompatible change and
//! is refused before anything else is parsed.

use std::collections::HashSet;
use std::io::Write;
use std::path::Path;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{
    check_relative_path, sync_dir, FORMAT_NAME, FORMAT_VERSION, MANIFEST_FILE, MANIFEST_TMP_FILE,
};
use crate::error::{MigrationError, Result};
use crate::pg::catalog::LargeObjectInfo;

pub use crate::resume::{DataFile, DataFormat, FileEntry};

/// One table and its data files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableEntry {
    pub schema: String,
    pub name: String,
    /// `"schema"."name"`, quoted as SQL needs it.
    pub qualified: String,
    /// The columns the COPY streams hold, in their order.
    #[serde(default)]
    pub columns: Vec<String>,
    pub rows: u64,
    #[serde(default)]
    pub files: Vec<DataFile>,
    /// An extension's configuration table: the `WHERE` clause (its
    /// `extcondition`) that picked the user's rows. Restore appends them to
    /// the rows `CREATE EXTENSION` put there and never empties the table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub row_filter: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compression {
    /// Always `"zstd"` in format version 1.
    pub algorithm: String,
    pub level: i32,
}

/// The contents of `manifest.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Always [`FORMAT_NAME`].
    pub format: String,
    /// [`FORMAT_VERSION`] when written by this build.
    pub format_version: u32,
    /// The pg_dbmigrator version that wrote the archive.
    pub tool_version: String,
    pub created_at: DateTime<Utc>,
    /// `server_version_num` of the source, e.g. 170002.
    pub source_server_version: i32,
    pub source_database: String,
    /// The source database's encoding; text COPY data is in it.
    pub encoding: String,
    /// When the snapshot the data was read in was taken.
    pub snapshot_time: DateTime<Utc>,
    #[serde(default)]
    pub snapshot_id: Option<String>,
    /// The COPY format the dump was asked for (`auto`, `text` or `binary`);
    /// what each file holds is [`DataFile::format`].
    pub copy_format: String,
    pub compression: Compression,
    /// Schema files, e.g. [`super::PRE_DATA_FILE`].
    #[serde(default)]
    pub schema: Vec<FileEntry>,
    #[serde(default)]
    pub tables: Vec<TableEntry>,
    /// A small JSON file describing large objects (ids, owners, ACLs, comments).
    #[serde(default)]
    pub large_objects: Option<FileEntry>,
    /// Their contents: a binary COPY stream of `(oid, data bytea)` rows.
    #[serde(default)]
    pub large_object_data: Option<DataFile>,
    /// Roles the schema names (owners, grantees): they must exist on the target.
    #[serde(default)]
    pub roles: Vec<String>,
    /// The source database's locale, to create the target database alike.
    #[serde(default)]
    pub lc_collate: Option<String>,
    #[serde(default)]
    pub lc_ctype: Option<String>,
    /// The source database's locale provider (`icu`, `builtin`; `None`:
    /// libc) and its locale and rules.
    #[serde(default)]
    pub locale_provider: Option<DatabaseLocale>,
    /// Extensions (name, version) the schema creates: they must be installable on the target.
    #[serde(default)]
    pub extensions: Vec<(String, String)>,
    /// The source database's default tablespace when not `pg_default`.
    #[serde(default)]
    pub database_tablespace: Option<String>,
    /// Whether the archive holds the schema (a `--data-only` dump does not).
    #[serde(default)]
    pub data_only: bool,
    /// Reserved: a small JSON file with sequence values.
    #[serde(default)]
    pub sequences: Option<FileEntry>,
}

/// Just enough of a manifest to decide whether to parse the rest: a newer
/// format may have changed any other field.
#[derive(Deserialize)]
struct Header {
    #[serde(default)]
    format: Option<String>,
    #[serde(default)]
    format_version: Option<u32>,
}

impl Manifest {
    /// A manifest for a dump starting now, without any file yet.
    pub fn new(
        source_database: impl Into<String>,
        source_server_version: i32,
        encoding: impl Into<String>,
        snapshot_time: DateTime<Utc>,
    ) -> Manifest {
        Manifest {
            format: FORMAT_NAME.to_string(),
            format_version: FORMAT_VERSION,
            tool_version: env!("CARGO_PKG_VERSION").to_string(),
            created_at: Utc::now(),
            source_server_version,
            source_database: source_database.into(),
            encoding: encoding.into(),
            snapshot_time,
            snapshot_id: None,
            copy_format: "auto".to_string(),
            compression: Compression {
                algorithm: "zstd".to_string(),
                level: super::DEFAULT_ZSTD_LEVEL,
            },
            schema: Vec::new(),
            tables: Vec::new(),
            large_objects: None,
            large_object_data: None,
            roles: Vec::new(),
            lc_collate: None,
            lc_ctype: None,
            locale_provider: None,
            extensions: Vec::new(),
            database_tablespace: None,
            data_only: false,
            sequences: None,
        }
    }

    /// Every file the manifest lists: schema, data, large objects, sequences.
    pub fn files(&self) -> impl Iterator<Item = &FileEntry> + '_ {
        self.schema
            .iter()
            .chain(
                self.tables
                    .iter()
                    .flat_map(|t| t.files.iter().map(|f| &f.file)),
            )
            .chain(self.large_objects.iter())
            .chain(self.large_object_data.iter().map(|d| &d.file))
            .chain(self.sequences.iter())
    }

    /// The schema file at `path` (e.g. [`super::PRE_DATA_FILE`]), if listed.
    pub fn schema_file(&self, path: &str) -> Option<&FileEntry> {
        self.schema.iter().find(|f| f.path == path)
    }

    /// Bytes on disk of all listed files.
    pub fn total_size(&self) -> u64 {
        self.files().map(|f| f.size).sum()
    }

    /// Why this manifest cannot describe a usable archive, if it cannot.
    pub(crate) fn problems(&self) -> Option<String> {
        let mut seen = HashSet::new();
        for f in self.files() {
            if let Err(why) = check_relative_path(&f.path) {
                return Some(format!("it lists an unusable file: {why}"));
            }
            if !seen.insert(f.path.as_str()) {
                return Some(format!("it lists {} twice", f.path));
            }
            if f.sha256.len() != 64 || !f.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Some(format!(
                    "the SHA-256 of {} is not 64 hex digits: {:?}",
                    f.path, f.sha256
                ));
            }
        }
        for t in &self.tables {
            // No catalog name holds one; the restore keeps a table's
            // columns NUL-separated (`pg::names::NameList`).
            if let Some(c) = t.columns.iter().find(|c| c.contains('\0')) {
                return Some(format!(
                    "table {} has a column name holding a NUL: {c:?}",
                    t.qualified
                ));
            }
            for d in &t.files {
                if d.chunks == 0 || d.chunk >= d.chunks {
                    return Some(format!(
                        "{} of table {} is chunk {} of {}",
                        d.file.path, t.qualified, d.chunk, d.chunks
                    ));
                }
            }
        }
        None
    }

    /// Write `DIR/manifest.json` atomically: a temporary file, fsync, rename,
    /// fsync of the directory. Write it last: its presence says the dump is
    /// complete.
    pub fn write(&self, dir: impl AsRef<Path>) -> Result<()> {
        let dir = dir.as_ref();
        if let Some(why) = self.problems() {
            return Err(MigrationError::Internal(format!(
                "refusing to write a manifest that restore would refuse: {why}"
            )));
        }
        let mut json = serde_json::to_vec_pretty(self)
            .map_err(|e| MigrationError::Internal(format!("serializing the manifest: {e}")))?;
        json.push(b'\n');
        let tmp = dir.join(MANIFEST_TMP_FILE);
        let ctx = |what: &str| format!("{what} {}", tmp.display());
        let mut f =
            std::fs::File::create(&tmp).map_err(|e| MigrationError::io(ctx("creating"), e))?;
        f.write_all(&json)
            .and_then(|_| f.sync_all())
            .map_err(|e| MigrationError::io(ctx("writing"), e))?;
        drop(f);
        let path = dir.join(MANIFEST_FILE);
        std::fs::rename(&tmp, &path).map_err(|e| {
            MigrationError::io(format!("renaming {} to {MANIFEST_FILE}", tmp.display()), e)
        })?;
        sync_dir(dir).map_err(|e| MigrationError::io(format!("syncing {}", dir.display()), e))
    }

    /// Read and check `DIR/manifest.json`.
    pub fn read(dir: impl AsRef<Path>) -> Result<Manifest> {
        let dir = dir.as_ref();
        let path = dir.join(MANIFEST_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(MigrationError::Archive(if dir.is_dir() {
                    format!(
                        "{} is not a complete pg_dbmigrator archive: {MANIFEST_FILE} is missing \
                         (the dump did not finish: rerun `pg_dbmigrator dump --dump-path {} --resume` \
                         with the same options)",
                        dir.display(),
                        dir.display()
                    )
                } else {
                    format!(
                        "the archive directory {} does not exist: check the path given to --dump-path",
                        dir.display()
                    )
                }));
            }
            Err(e) => return Err(MigrationError::io(format!("reading {}", path.display()), e)),
        };
        let damaged = |why: String| {
            MigrationError::Archive(format!(
                "{} is damaged: {why}; it was changed or cut short after the dump — \
                 copy the archive again or dump again",
                path.display()
            ))
        };
        let header: Header =
            serde_json::from_slice(&bytes).map_err(|e| damaged(format!("not valid JSON ({e})")))?;
        if header.format.as_deref() != Some(FORMAT_NAME) {
            return Err(MigrationError::Archive(format!(
                "{} is not a pg_dbmigrator archive manifest (its \"format\" is {}, expected {FORMAT_NAME:?})",
                path.display(),
                header
                    .format
                    .as_deref()
                    .map(|f| format!("{f:?}"))
                    .unwrap_or_else(|| "missing".to_string()),
            )));
        }
        match header.format_version {
            Some(v) if v > FORMAT_VERSION => {
                return Err(MigrationError::Archive(format!(
                    "the archive in {} has format version {v}, but this pg_dbmigrator ({}) reads \
                     format version {FORMAT_VERSION} at most: restore it with the pg_dbmigrator \
                     version that wrote it or a newer one",
                    dir.display(),
                    env!("CARGO_PKG_VERSION")
                )));
            }
            Some(v) if v >= 1 => {}
            other => {
                return Err(damaged(format!(
                    "its format_version is {}",
                    other.map_or("missing".to_string(), |v| v.to_string())
                )));
            }
        }
        let manifest: Manifest =
            serde_json::from_slice(&bytes).map_err(|e| damaged(e.to_string()))?;
        if let Some(why) = manifest.problems() {
            return Err(damaged(why));
        }
        Ok(manifest)
    }
}

/// A sequence's value as dumped.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SequenceValue {
    pub schema: String,
    pub name: String,
    pub last_value: i64,
    pub is_called: bool,
}

/// A large object's metadata as dumped (contents are in a data file).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct LargeObjectMeta {
    pub oid: u32,
    pub owner: String,
    pub acl: Option<String>,
    pub acl_default: String,
    pub comment: Option<String>,
}

impl From<&LargeObjectInfo> for LargeObjectMeta {
    fn from(l: &LargeObjectInfo) -> Self {
        LargeObjectMeta {
            oid: l.oid,
            owner: l.owner.clone(),
            acl: l.acl.clone(),
            acl_default: l.acl_default.clone(),
            comment: l.comment.clone(),
        }
    }
}

impl From<LargeObjectMeta> for LargeObjectInfo {
    fn from(l: LargeObjectMeta) -> Self {
        LargeObjectInfo {
            oid: l.oid,
            owner: l.owner,
            acl: l.acl,
            acl_default: l.acl_default,
            comment: l.comment,
        }
    }
}

pub use crate::pg::catalog::DatabaseLocale;
