//! The resume token of a whole-cluster migration (`all_databases`): which
//! databases the run migrates (fixed by its first run, so a resume never
//! picks up a database created since), where each one's own work dir and
//! token are, and which are done; whether the globals (roles, tablespaces)
//! were applied. Each database keeps its own resume token in its work dir,
//! so a database killed in its copy resumes exactly as a single-database
//! run does. A record type and its file, nothing else: no server access.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::config::MigrationMode;
use crate::error::{MigrationError, Remedy, Result};
use crate::resume::EndpointIdentity;

/// Bumped when the layout changes incompatibly.
pub const CLUSTER_TOKEN_VERSION: u32 = 1;

/// One database of the cluster migration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterDatabase {
    /// The database's name (the same on both servers).
    pub name: String,
    /// Its work dir, relative to the cluster's.
    pub dir: String,
    /// Heap bytes when the run was planned: the order of the work.
    pub bytes: u64,
    /// Its migration completed (verified, sealed).
    pub done: bool,
}

/// The cluster migration's record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterToken {
    /// [`CLUSTER_TOKEN_VERSION`].
    pub schema_version: u32,
    /// Offline or online.
    pub mode: MigrationMode,
    /// The source server (its maintenance database).
    pub source: EndpointIdentity,
    /// The target server (its maintenance database).
    pub target: EndpointIdentity,
    /// Roles, memberships, settings and tablespaces were applied.
    pub globals_done: bool,
    /// The databases, in the order they are started.
    pub databases: Vec<ClusterDatabase>,
    /// Online: the cluster's one cutover passed its barrier (every
    /// database fenced and drained); a resumed run finishes each
    /// database's cutover without waiting for the others.
    #[serde(default)]
    pub cutover_passed: bool,
    /// Online: the cluster's cutover attempts that ended so far.
    #[serde(default)]
    pub cutover_attempts: u32,
    /// Online: why the last attempt failed (none once one succeeded).
    #[serde(default)]
    pub cutover_error: Option<String>,
    /// Online: the cluster's write downtime (from the first database's
    /// fence to the last database's end of its cutover).
    #[serde(default)]
    pub cutover_downtime_seconds: Option<f64>,
    /// Online with `--fallback`, after the cutover: the cluster's one
    /// `rollback` (or its `finish`).
    #[serde(default)]
    pub fallback: ClusterFallback,
    /// Every database is done.
    pub completed: bool,
    /// When the token was last written.
    pub updated_at: DateTime<Utc>,
}

/// The end of a whole cluster's `--fallback`: one rollback for every
/// database (through the same kind of barrier as the cutover), or a
/// finish.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterFallback {
    /// The run streams back after its cutover (`--fallback`).
    #[serde(default)]
    pub enabled: bool,
    /// A rollback was asked and has not failed since: a resumed run asks
    /// every database for it again.
    #[serde(default)]
    pub rollback_requested: bool,
    /// The rollback passed its barrier (every database's new server
    /// fenced and drained back): a resumed run finishes each database's
    /// rollback without waiting for the others.
    #[serde(default)]
    pub rollback_passed: bool,
    /// Rollback attempts that ended so far.
    #[serde(default)]
    pub rollback_attempts: u32,
    /// Why the last attempt failed.
    #[serde(default)]
    pub rollback_error: Option<String>,
    /// The cluster's write downtime of its rollback (from the first new
    /// server's fence to the last old source's unfence).
    #[serde(default)]
    pub rollback_downtime_seconds: Option<f64>,
    /// `finish` was asked: every database ends its fallback.
    #[serde(default)]
    pub finish_requested: bool,
    /// How the fallback ended: "rollback" or "finish".
    #[serde(default)]
    pub ended_by: Option<String>,
}

impl ClusterToken {
    /// The token of the cluster migration whose work dir is `dump_path`.
    pub fn path_for(dump_path: &Path) -> PathBuf {
        let mut s = dump_path.as_os_str().to_owned();
        s.push(".cluster.json");
        PathBuf::from(s)
    }

    /// The token at `path`, if there is one.
    pub fn load(path: &Path) -> Result<Option<ClusterToken>> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(MigrationError::io(
                    format!("reading the cluster resume token {}", path.display()),
                    e,
                ))
            }
        };
        let token: ClusterToken = serde_json::from_slice(&bytes).map_err(|e| {
            MigrationError::resume_refused(format!(
                "the cluster resume token {} is damaged ({e})",
                path.display()
            ))
            .with_remedy(Remedy::ForceClean)
        })?;
        if token.schema_version != CLUSTER_TOKEN_VERSION {
            return Err(MigrationError::resume_refused(format!(
                "the cluster resume token {} has version {}, this pg_dbmigrator writes {}",
                path.display(),
                token.schema_version,
                CLUSTER_TOKEN_VERSION
            ))
            .with_remedy(Remedy::ForceClean));
        }
        Ok(Some(token))
    }

    /// Write it atomically.
    pub fn save(&mut self, path: &Path) -> Result<()> {
        self.updated_at = Utc::now();
        crate::resume::write_json_atomically(path, self, "cluster resume token")
    }

    /// A resumed run must migrate between the same servers.
    pub fn check_matches(
        &self,
        mode: MigrationMode,
        source: &EndpointIdentity,
        target: &EndpointIdentity,
        path: &Path,
    ) -> Result<()> {
        let mut diffs = Vec::new();
        if self.mode != mode {
            diffs.push(format!("mode was {:?}, now {mode:?}", self.mode));
        }
        if &self.source != source {
            diffs.push(format!("source was {}, now {}", self.source, source));
        }
        if &self.target != target {
            diffs.push(format!("target was {}, now {}", self.target, target));
        }
        if diffs.is_empty() {
            return Ok(());
        }
        Err(MigrationError::resume_refused(format!(
            "the cluster resume token {} was written for another migration: {}",
            path.display(),
            diffs.join("; ")
        ))
        .with_remedy(Remedy::ForceClean))
    }
}

/// A directory name for database number `i` named `name`: readable, safe
/// on any file system, unique by its number.
pub fn database_dir(i: usize, name: &str) -> String {
    let safe: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(40)
        .collect();
    format!("{i:03}-{safe}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_dirs_are_safe_and_unique_by_number() {
        assert_eq!(database_dir(0, "shop"), "000-shop");
        assert_eq!(database_dir(12, "we/ird \"db\""), "012-we_ird__db_");
        assert_ne!(database_dir(1, "a b"), database_dir(2, "a_b"));
    }
}
