//! The native dump archive on disk: a directory with a manifest, the schema
//! as SQL, and every table's data as zstd-compressed COPY streams.
//!
//! This is only the file layer under `dump` and `restore`; it knows nothing
//! about databases. What it guarantees, so that restore can trust an archive
//! or refuse it with a message that says what to do:
//!
//! * a file under its final name is complete: writers write `NAME.partial`
//!   and rename it only after an fsync, so a crash leaves `.partial`
//!   leftovers ([`list_partial_files`], [`remove_partial_files`]) and never a
//!   short file that looks finished;
//! * `manifest.json` is written last and atomically, so its presence means the
//!   dump finished; it lists every file with its size and the SHA-256 of its
//!   on-disk (compressed) bytes, which makes checking a whole archive
//!   ([`Archive::verify_all`]) cost one read of the compressed data;
//! * reading a data file ([`Archive::open_data`]) checks the same digest as it
//!   goes and ends the stream with an error instead of its normal end when the
//!   file is not the one that was dumped, before the loader commits.
//!
//! Layout (table numbers are positions, the names live in the manifest, so
//! file names never depend on the characters of a table's name):
//!
//! ```text
//! DIR/manifest.json
//! DIR/schema/pre-data.sql
//! DIR/schema/post-data.sql
//! DIR/schema/steps.json
//! DIR/data/00007.0002.copy.zst   (table 7 of the dump, chunk 2)
//! ```
//!
//! A stage: the on-disk format (manifest, writer, reader) and nothing else;
//! it talks to no server. The `dump` and `restore` orchestrators drive it.

mod manifest;
mod reader;
mod writer;

#[cfg(test)]
mod tests;

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use crate::error::{MigrationError, Result};

pub use manifest::{
    Compression, DataFile, DataFormat, FileEntry, LargeObjectMeta, Manifest, SequenceValue,
    TableEntry,
};
pub use reader::{Archive, DataStream, VerifySummary};
pub use writer::{
    write_small_file, write_small_file_async, AsyncDataWriter, DataWriter, WrittenFile,
};

/// The manifest's name at the archive root.
pub const MANIFEST_FILE: &str = "manifest.json";
/// `Manifest::format` of every archive this tool writes.
pub const FORMAT_NAME: &str = "pg_dbmigrator-archive";
/// The newest `Manifest::format_version` this build reads (and the one it writes).
pub const FORMAT_VERSION: u32 = 1;
/// Appended to a file's name while it is being written.
pub const PARTIAL_SUFFIX: &str = ".partial";
/// Where the manifest is written before it is renamed into place.
pub const MANIFEST_TMP_FILE: &str = "manifest.json.tmp";
pub use crate::config::DEFAULT_ZSTD_LEVEL;

/// Schema objects created before the data is loaded (tables, types, functions).
pub const PRE_DATA_FILE: &str = "schema/pre-data.sql";
/// Schema objects created after the data (indexes, constraints, triggers).
pub const POST_DATA_FILE: &str = "schema/post-data.sql";
/// The schema steps in machine-readable form.
pub const STEPS_FILE: &str = "schema/steps.json";
/// Reserved for large objects (`Manifest::large_objects`).
pub const LARGE_OBJECTS_FILE: &str = "large_objects.json";
/// Reserved for sequence values (`Manifest::sequences`).
pub const SEQUENCES_FILE: &str = "sequences.json";

/// The relative path of one chunk of one table's data, e.g.
/// `data/00007.0002.copy.zst`.
///
/// `table_ordinal` is any number unique to the table within the dump (its
/// position in [`Manifest::tables`] is the natural choice). The name uses only
/// digits so it is valid on every filesystem, whatever the table is called;
/// numbers wider than the padding still give distinct names.
pub fn data_file_path(table_ordinal: u32, chunk: u32) -> String {
    format!("data/{table_ordinal:05}.{chunk:04}.copy.zst")
}

/// "archive file data/x in /some/dir", the start of every message about one file.
pub(crate) fn describe(dir: &Path, rel: &str) -> String {
    format!("archive file {rel} in {}", dir.display())
}

/// Why a relative path may not appear in an archive, if it may not.
///
/// Paths come from the manifest, which restore reads from a directory the user
/// handed over: a path must not reach outside the archive, and the names of
/// unfinished files are reserved so a leftover can never be listed as data.
pub(crate) fn check_relative_path(rel: &str) -> std::result::Result<(), String> {
    if rel.is_empty() {
        return Err("the path is empty".into());
    }
    if rel.starts_with('/') {
        return Err(format!("{rel:?} is absolute"));
    }
    if rel.contains('\\') || rel.contains('\0') || rel.contains(':') {
        return Err(format!(
            "{rel:?} contains a character reserved on some filesystems"
        ));
    }
    for part in rel.split('/') {
        if part.is_empty() || part == "." || part == ".." {
            return Err(format!(
                "{rel:?} is not a plain relative path (empty, '.' or '..' component)"
            ));
        }
    }
    if rel.ends_with(PARTIAL_SUFFIX) || rel == MANIFEST_FILE || rel == MANIFEST_TMP_FILE {
        return Err(format!("{rel:?} is a name reserved by the archive format"));
    }
    Ok(())
}

/// The absolute location of `rel` inside the archive at `dir`.
pub(crate) fn resolve(dir: &Path, rel: &str) -> Result<PathBuf> {
    check_relative_path(rel).map_err(|why| {
        MigrationError::Archive(format!(
            "the archive in {} names an unusable file: {why}; the manifest was edited or damaged — dump again",
            dir.display()
        ))
    })?;
    Ok(rel
        .split('/')
        .fold(dir.to_path_buf(), |p, part| p.join(part)))
}

/// `path` with [`PARTIAL_SUFFIX`] appended to its file name.
pub(crate) fn partial_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(PARTIAL_SUFFIX);
    PathBuf::from(s)
}

/// Make a rename in `dir` durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        match File::open(dir).and_then(|d| d.sync_all()) {
            Ok(()) => Ok(()),
            // Some filesystems (network ones, mostly) cannot fsync a
            // directory; their renames are as durable as they get.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::InvalidInput | io::ErrorKind::Unsupported
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

/// Create the directories between the archive root and `path` when missing.
///
/// Their own entries are fsynced too: a finished file is only durable if the
/// directory holding it survives a crash.
pub(crate) fn ensure_parent(dir: &Path, path: &Path) -> Result<()> {
    let Some(parent) = path.parent() else {
        return Ok(());
    };
    if parent.is_dir() {
        return Ok(());
    }
    std::fs::create_dir_all(parent).map_err(|e| {
        MigrationError::io(format!("creating the directory {}", parent.display()), e)
    })?;
    // The archive root's own entry is the business of whoever chose it.
    let mut d = parent;
    while d != dir && d.starts_with(dir) {
        let Some(up) = d.parent() else { break };
        sync_dir(up).map_err(|e| MigrationError::io(format!("syncing {}", up.display()), e))?;
        d = up;
    }
    Ok(())
}

/// Every unfinished file under the archive directory `dir` (`*.partial` and
/// `manifest.json.tmp`), sorted. A missing `dir` has none.
///
/// They are what an interrupted dump leaves behind; a resumed dump removes
/// them ([`remove_partial_files`]) and writes those files again.
pub fn list_partial_files(dir: impl AsRef<Path>) -> Result<Vec<PathBuf>> {
    fn walk(d: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
        let entries = match std::fs::read_dir(d) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => {
                return Err(MigrationError::io(format!("listing {}", d.display()), e));
            }
        };
        for entry in entries {
            let entry =
                entry.map_err(|e| MigrationError::io(format!("listing {}", d.display()), e))?;
            let path = entry.path();
            let kind = entry
                .file_type()
                .map_err(|e| MigrationError::io(format!("inspecting {}", path.display()), e))?;
            if kind.is_dir() {
                walk(&path, out)?;
            } else {
                let name = entry.file_name();
                let name = name.to_string_lossy();
                if name.ends_with(PARTIAL_SUFFIX) || name == MANIFEST_TMP_FILE {
                    out.push(path);
                }
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir.as_ref(), &mut out)?;
    out.sort();
    Ok(out)
}

/// Remove what [`list_partial_files`] finds; returns what was removed, for the log.
pub fn remove_partial_files(dir: impl AsRef<Path>) -> Result<Vec<PathBuf>> {
    let found = list_partial_files(dir)?;
    for path in &found {
        match std::fs::remove_file(path) {
            Ok(()) => {}
            // Removed meanwhile: what we wanted.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(MigrationError::io(
                    format!("removing the unfinished file {}", path.display()),
                    e,
                ));
            }
        }
    }
    Ok(found)
}

/// The archive directory a dump or restore works on: `--dump-path`, required.
pub(crate) fn archive_dir(cfg: &crate::config::MigrationConfig, what: &str) -> Result<PathBuf> {
    cfg.dump_path.clone().ok_or_else(|| {
        MigrationError::Config(format!("{what} needs --dump-path: the archive directory"))
    })
}
