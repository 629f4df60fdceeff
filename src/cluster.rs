//! Whole-cluster migrations (`all_databases`): the orchestrator one floor
//! above the database orchestrators. It lists the source's databases, has
//! the globals stage carry roles, memberships, settings and tablespaces,
//! then runs each database's own migration (offline: `migrate`) as a
//! single-database run would, in its own work dir and with its own resume
//! token, and records each one's end in the cluster's token
//! ([`crate::resume::cluster`]). It threads no "all databases" flag through
//! the orchestrators below: each of them sees one ordinary migration.
//!
//! Also here: [`run_database`], the one-database run that
//! [`crate::Migrator::run`] and this orchestrator share (run lock, sessions
//! tagged with the migration's id, the summary file).
//!
//! May not touch: the stages directly, except the globals and the
//! catalog reads that list the databases.

pub(crate) mod archive;
mod checks;

pub(crate) use checks::{plan, verify};

use std::path::{Path, PathBuf};

use tracing::info;

use crate::config::{MigrationConfig, MigrationMode};
use crate::context::RunContext;
use crate::error::{MigrationError, Remedy, Result};
use crate::faults::{self, around, Point};
use crate::globals::{self, GlobalsOptions};
use crate::pg::{connect, sessions};
use crate::report::{DatabaseReport, MigrationReport};
use crate::resume::cluster::{database_dir, ClusterDatabase, ClusterToken, CLUSTER_TOKEN_VERSION};
use crate::resume::{self, Definition, EndpointIdentity, ResumeToken, RunLock};

/// One database's migration, as [`crate::Migrator::run`] runs it: one run
/// at a time (its lock), its sessions tagged with its id, offline or
/// online, and its report saved beside the token.
pub(crate) async fn run_database(
    cfg: &MigrationConfig,
    run: &RunContext,
) -> Result<MigrationReport> {
    let def = Definition::from_config(cfg)?;
    let (id, path) = resume::work_location(cfg, &def);
    let _lock = RunLock::acquire(&ResumeToken::path_for(&path))?;
    let cfg = sessions::tagged(cfg, &id);
    let report = match cfg.mode {
        MigrationMode::Online => crate::online::run(&cfg, run).await?,
        MigrationMode::Offline => crate::migrate::run(&cfg, run).await?,
    };
    if !report.already_complete && !cfg.no_summary {
        // (An already complete migration keeps its finishing run's report.)
        report.save_summary()?;
    }
    Ok(report)
}

/// Where a cluster migration works: `dump_path`, or a directory in the
/// temp dir named after the two servers.
fn cluster_dir(
    cfg: &MigrationConfig,
    source: &EndpointIdentity,
    target: &EndpointIdentity,
) -> PathBuf {
    cfg.dump_path.clone().unwrap_or_else(|| {
        use sha2::Digest;
        let h = sha2::Sha256::digest(format!("{source}|{target}").as_bytes());
        std::env::temp_dir().join(format!("pg_dbmigrator-cluster-{}", &hex::encode(h)[..12]))
    })
}

/// The whole cluster: globals, then every database.
pub(crate) async fn run(cfg: &MigrationConfig, run: &RunContext) -> Result<MigrationReport> {
    let started = std::time::Instant::now();
    if cfg.mode == MigrationMode::Online {
        return Err(MigrationError::Unsupported(
            "an online migration of every database (all_databases with online mode) is not built yet; \
             migrate the databases one by one online, or the whole cluster offline"
                .into(),
        ));
    }
    cfg.validate()?;
    let source = cfg
        .source
        .clone()
        .ok_or_else(|| MigrationError::Config("no source given (--source)".into()))?;
    let target = cfg
        .target
        .clone()
        .ok_or_else(|| MigrationError::Config("no target given (--target)".into()))?;
    let excluded = checks::excluded_patterns(&cfg.exclude_databases)?;
    let (src_id, dst_id) = (EndpointIdentity::of(&source), EndpointIdentity::of(&target));
    if src_id == dst_id {
        return Err(MigrationError::Config(
            "the source and the target are the same server: a cluster cannot be migrated onto itself".into(),
        ));
    }
    let dir = cluster_dir(cfg, &src_id, &dst_id);
    let token_path = ClusterToken::path_for(&dir);
    let _lock = RunLock::acquire(&token_path)?;
    let existing = if cfg.force_clean {
        None
    } else {
        ClusterToken::load(&token_path)?
    };
    let mut token = match existing {
        Some(t) => {
            t.check_matches(cfg.mode, &src_id, &dst_id, &token_path)?;
            if !cfg.resume {
                return Err(MigrationError::resume_refused(format!(
                    "a resume token for this cluster migration exists at {}{}",
                    token_path.display(),
                    if t.completed { " (completed)" } else { "" }
                ))
                .with_remedy(Remedy::Resume)
                .with_remedy(Remedy::ForceClean));
            }
            t
        }
        None => {
            let databases = checks::select_databases(&source, &excluded).await?;
            let mut t = ClusterToken {
                schema_version: CLUSTER_TOKEN_VERSION,
                mode: cfg.mode,
                source: src_id.clone(),
                target: dst_id.clone(),
                globals_done: false,
                databases: databases
                    .into_iter()
                    .enumerate()
                    .map(|(i, (name, bytes))| ClusterDatabase {
                        dir: database_dir(i, &name),
                        name,
                        bytes,
                        done: false,
                    })
                    .collect(),
                completed: false,
                updated_at: chrono::Utc::now(),
            };
            around(Point::ClusterPlan, async { t.save(&token_path) }).await?;
            info!(
                databases = t.databases.len(),
                token = %token_path.display(),
                "cluster migration planned"
            );
            t
        }
    };
    if token.completed {
        info!(token = %token_path.display(), "the cluster migration had completed; nothing left to do");
    }

    // The globals first: every database's objects name their roles, and
    // their tablespaces must exist before a database is created in one.
    let mut globals_report = None;
    if !token.globals_done {
        let src = connect::connect(&source, "source").await?;
        let dst = connect::connect(&target, "target").await?;
        let opts = GlobalsOptions {
            no_role_passwords: cfg.no_role_passwords,
            roles_overwrite: cfg.roles_overwrite,
            tablespace_locations: cfg.tablespace_locations.clone(),
        };
        let report = around(Point::Globals, globals::migrate(&src, &dst, &opts)).await?;
        info!("globals: {}", report.summary());
        token.globals_done = true;
        token.save(&token_path)?;
        globals_report = Some(report);
    }

    let reports = Box::pin(offline_databases(cfg, run, &dir, &token_path, &mut token)).await?;
    token.completed = true;
    token.save(&token_path)?;
    let mut report = cluster_report(&dir, &token_path, reports, started);
    report.globals = globals_report;
    Ok(report)
}

/// An error of one database's migration, saying which.
fn in_database(name: &str, e: MigrationError) -> MigrationError {
    match e {
        MigrationError::Cancelled => MigrationError::Cancelled,
        e => {
            tracing::error!(database = %name, "the migration of database {name} failed: {e}");
            e
        }
    }
}

/// The cluster's report: the databases' added up, each kept in `databases`.
fn cluster_report(
    dir: &Path,
    token_path: &Path,
    reports: Vec<DatabaseReport>,
    started: std::time::Instant,
) -> MigrationReport {
    let mut total = MigrationReport::empty(
        "cluster".into(),
        dir.to_path_buf(),
        token_path.to_path_buf(),
    );
    for r in reports.iter().map(|d| &d.report) {
        total.resumed |= r.resumed;
        total.source_version = r.source_version;
        total.target_version = r.target_version;
        total.tables.extend(r.tables.iter().cloned());
        total
            .skipped_tables
            .extend(r.skipped_tables.iter().cloned());
        total.sequences += r.sequences;
        total.large_objects += r.large_objects;
        total.large_object_bytes += r.large_object_bytes;
        total.rows += r.rows;
        total.bytes += r.bytes;
        total.schema_steps += r.schema_steps;
    }
    total.already_complete =
        !reports.is_empty() && reports.iter().all(|d| d.report.already_complete);
    total.seconds = started.elapsed().as_secs_f64();
    total.databases = reports;
    total
}

/// Every database of the token, offline, several at once: up to `jobs`
/// databases run side by side, started largest first, and their copy
/// workers share one budget of `jobs` permits, so the cluster never copies
/// more than `jobs` items at a time and a small database does not wait for
/// a big one to end. A database that fails does not stop the others: each
/// finishes what it can (and is recorded done), then the first failure is
/// the run's.
async fn offline_databases(
    cfg: &MigrationConfig,
    run: &RunContext,
    dir: &Path,
    token_path: &Path,
    token: &mut ClusterToken,
) -> Result<Vec<DatabaseReport>> {
    use futures::stream::{self, StreamExt};
    let (source, target) = (
        cfg.source.clone().expect("checked"),
        cfg.target.clone().expect("checked"),
    );
    let total = token.databases.len();
    let side_by_side = cfg.jobs.clamp(1, total.max(1));
    let budget = std::sync::Arc::new(tokio::sync::Semaphore::new(cfg.jobs.max(1)));
    let shared = std::sync::Mutex::new(token.clone());
    let one = |i: usize| {
        let db = token.databases[i].clone();
        let (source, target, budget, shared) = (&source, &target, budget.clone(), &shared);
        async move {
            if run.cancel.is_cancelled() {
                return (i, Err(MigrationError::Cancelled));
            }
            let db_dir = dir.join(&db.dir);
            let mut db_cfg = cfg.clone();
            db_cfg.all_databases = false;
            db_cfg.exclude_databases.clear();
            db_cfg.migration_id = None;
            db_cfg.source = Some(source.with_dbname(&db.name));
            db_cfg.target = Some(target.with_dbname(&db.name));
            db_cfg.dump_path = Some(db_dir.clone());
            // Each database resumes from its own token when it has one; a
            // database not started yet starts (a cluster `--resume` is not
            // a database's `--resume`).
            db_cfg.resume = ResumeToken::path_for(&db_dir).exists();
            info!(database = %db.name, done = db.done, "database {} of {total}", i + 1);
            // Side by side, one database's copy counts would overwrite
            // another's: the cluster's progress counts databases (the
            // warnings of all still reach it).
            let db_run = RunContext {
                cancel: run.cancel.clone(),
                progress: if side_by_side == 1 {
                    run.progress.clone()
                } else {
                    None
                },
                cutover: Default::default(),
            };
            if let Some(p) = &run.progress {
                p.begin_database(&db.name, i as u64 + 1, total as u64, side_by_side == 1);
            }
            let r = crate::recorded::with_budget(
                Some(budget),
                Box::pin(run_database(&db_cfg, &db_run)),
            )
            .await
            .map_err(|e| in_database(&db.name, e));
            let r = match r {
                Ok(report) => {
                    faults::before(Point::ClusterDatabase).await;
                    let saved = {
                        let mut t = shared.lock().unwrap_or_else(|p| p.into_inner());
                        t.databases[i].done = true;
                        t.save(token_path)
                    };
                    faults::after(Point::ClusterDatabase).await;
                    saved.map(|()| report)
                }
                Err(e) => Err(e),
            };
            if let (Some(p), Ok(_)) = (&run.progress, &r) {
                p.end_database(&db.name);
            }
            (
                i,
                r.map(|report| DatabaseReport {
                    name: db.name.clone(),
                    report,
                }),
            )
        }
    };
    let mut results: Vec<(usize, Result<DatabaseReport>)> = stream::iter(0..total)
        .map(one)
        .buffer_unordered(side_by_side)
        .collect()
        .await;
    *token = shared.into_inner().unwrap_or_else(|p| p.into_inner());
    results.sort_by_key(|(i, _)| *i);
    let mut reports = Vec::new();
    let mut first_error = None;
    for (_, r) in results {
        match r {
            Ok(d) => reports.push(d),
            Err(MigrationError::Cancelled) if first_error.is_some() => {}
            Err(e) => {
                if first_error
                    .as_ref()
                    .is_none_or(|f| matches!(f, MigrationError::Cancelled))
                {
                    first_error = Some(e);
                }
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(reports),
    }
}
