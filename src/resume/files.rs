//! The files a migration leaves behind, and [`discard_files`], which
//! removes them once they are no longer needed.
//!
//! Every run keeps, beside its work directory `<dump_path>`: the resume
//! token (`.resume.json`) and its journal (`.resume.json.journal`), the
//! run's lock (`.resume.json.lock`), the report (`.summary.json`, unless
//! `no_summary`), the CLI's live progress (`.progress.json`, while it
//! runs), request files of `cutover` / `rollback` / `finish`, and with
//! `--copy-method dump` the restore's own token
//! (`.restore.resume.json`). They are what lets a rerun answer "already
//! complete" or resume; once the migration is done and its report read,
//! nothing needs them.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::{journal, request_path, work_location, Definition, ResumeToken, RunLock, Stage};
use crate::config::{CopyMethod, MigrationConfig};
use crate::error::{MigrationError, Result};

/// What [`discard_files`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DiscardedFiles {
    /// The migration whose files these were.
    pub migration_id: String,
    /// The work directory (removed with everything in it, if it existed).
    pub dump_path: PathBuf,
    /// Every file and directory removed, in the order removed. Empty when
    /// there was nothing to remove (a second call, or a migration that
    /// never ran).
    pub removed: Vec<PathBuf>,
    /// The token recorded the migration complete (false only with `force`).
    pub was_complete: bool,
}

/// Remove the files of the migration `config` describes (the same
/// migration `Migrator::new(config).run(..)` runs: found by its
/// `dump_path`, or derived from its endpoints and filters as a run
/// derives it).
///
/// Refused, with nothing removed, when the migration is not recorded
/// complete (its files are what a `resume` continues from) unless `force`,
/// or when the online fallback of a `--fallback` migration has not ended
/// (its record is what `rollback` and `finish` need) unless `force`. Always
/// refused while a run of it is in progress (its lock is held): the lock is
/// taken for the removal, so no run can start meanwhile either.
///
/// Nothing on either server is touched: an online migration's slot and
/// publication are `cleanup`'s business.
pub fn discard_files(config: &MigrationConfig, force: bool) -> Result<DiscardedFiles> {
    let def = Definition::from_config(config)?;
    let (migration_id, dump_path) = work_location(config, &def);
    let token_path = ResumeToken::path_for(&dump_path);
    let restore_token_path = ResumeToken::restore_path_for(&dump_path);
    let lock_path = RunLock::path_for(&token_path);
    let lock_existed = lock_path.exists();
    let lock = RunLock::acquire(&token_path).map_err(|e| match e {
        MigrationError::Resume { message, remedies } => MigrationError::Resume {
            message: format!("{message}; its files were not removed"),
            remedies,
        },
        other => other,
    })?;
    if RunLock::is_held(&restore_token_path) {
        return Err(MigrationError::resume_refused(format!(
            "a restore of this migration's archive is in progress (lock {}); its files were not removed",
            RunLock::path_for(&restore_token_path).display()
        )));
    }
    let token = ResumeToken::load(&token_path)?;
    let was_complete = match config.copy_method {
        // The restore's token is the last record of a migration through an archive.
        CopyMethod::Dump => ResumeToken::load(&restore_token_path)?
            .is_some_and(|t| t.completed && t.is_done(Stage::Verify)),
        CopyMethod::Stream => token.as_ref().is_some_and(|t| t.completed),
    };
    if !force {
        if let Some(t) = &token {
            t.check_matches(&def, &token_path)?;
        }
        let anything = token.is_some() || dump_path.exists() || restore_token_path.exists();
        if anything && !was_complete {
            return Err(MigrationError::resume_refused(format!(
                "the migration {migration_id} is not recorded complete ({}): its files are what \
                 --resume continues from, so they were kept. Finish it with --resume, or remove them \
                 anyway with force (the CLI's --force)",
                match &token {
                    Some(t) => format!(
                        "resume token {}, at stage {}",
                        token_path.display(),
                        t.current_stage().map_or("none", |s| s.stage.as_str())
                    ),
                    None => format!("no resume token at {}", token_path.display()),
                }
            )));
        }
        let fallback = token
            .as_ref()
            .and_then(|t| t.online.as_ref())
            .and_then(|o| o.fallback.as_ref());
        if fallback.is_some_and(|f| !f.ended) {
            return Err(MigrationError::resume_refused(format!(
                "the migration {migration_id} has a fallback that has not ended: `rollback` or `finish` \
                 need its resume token {}, so its files were kept (remove them anyway with force)",
                token_path.display()
            )));
        }
    }

    let mut removed = Vec::new();
    let mut files = vec![
        token_path.clone(),
        journal::path_for(&token_path),
        restore_token_path.clone(),
        journal::path_for(&restore_token_path),
        RunLock::path_for(&restore_token_path),
        summary_path(&dump_path),
        sibling(&dump_path, ".progress.json"),
    ];
    for what in ["cutover", "rollback", "finish"] {
        files.push(request_path(&dump_path, what));
    }
    for f in files {
        remove_file(&f, &mut removed)?;
    }
    if dump_path.is_dir() {
        if !removable_dir(&dump_path) {
            return Err(MigrationError::Config(format!(
                "the work directory {} is a system or home directory: not removing it (the other files are removed)",
                dump_path.display()
            )));
        }
        std::fs::remove_dir_all(&dump_path).map_err(|e| {
            MigrationError::io(
                format!("removing the work directory {}", dump_path.display()),
                e,
            )
        })?;
        removed.push(dump_path.clone());
    }
    // Last, still held: no run can start between the removals. (A lock
    // file made by this call is not reported as the migration's.)
    let mut lock_removed = Vec::new();
    remove_file(&lock_path, &mut lock_removed)?;
    if lock_existed {
        removed.extend(lock_removed);
    }
    drop(lock);
    Ok(DiscardedFiles {
        migration_id,
        dump_path,
        removed,
        was_complete,
    })
}

/// `<dump_path>.summary.json`, as `MigrationReport::summary_path`.
fn summary_path(dump_path: &Path) -> PathBuf {
    sibling(dump_path, ".summary.json")
}

fn sibling(dump_path: &Path, suffix: &str) -> PathBuf {
    let mut s = dump_path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

fn remove_file(path: &Path, removed: &mut Vec<PathBuf>) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => {
            removed.push(path.to_path_buf());
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(MigrationError::io(
            format!("removing {}", path.display()),
            e,
        )),
    }
}

/// Not `/`, the temp dir or the home directory itself: a `dump_path`
/// pointed there by mistake must not take them with it.
fn removable_dir(dir: &Path) -> bool {
    let Ok(dir) = dir.canonicalize() else {
        return true;
    };
    let mut never = vec![PathBuf::from("/"), std::env::temp_dir()];
    if let Some(home) = std::env::var_os("HOME") {
        never.push(PathBuf::from(home));
    }
    dir.parent().is_some()
        && !never
            .iter()
            .any(|n| n.canonicalize().is_ok_and(|n| n == dir))
}
