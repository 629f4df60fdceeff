//! `dump --all-databases` and `restore --all-databases`: a whole cluster
//! through a directory of archives. The directory holds `databases.json`
//! (which databases, in which subdirectory), `globals.json` (the globals
//! stage's model of roles, memberships, settings and tablespaces, with the
//! password hashes the source let us read, as `pg_dumpall`'s output holds
//! them; owner-only permissions) and one ordinary archive per database,
//! written and read by `dump` and `restore`. A cluster token beside the
//! directory records which databases are done, for `--resume`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tracing::info;

use crate::config::MigrationConfig;
use crate::context::RunContext;
use crate::error::{MigrationError, Result};
use crate::faults::{around, Point};
use crate::globals::{self, GlobalsOptions, GlobalsReport};
use crate::pg::connect;
use crate::resume::cluster::{ClusterDatabase, ClusterToken};
use crate::resume::EndpointIdentity;

use super::checks::{excluded_patterns, select_databases};
use super::{open_token, planned};

const DATABASES_FILE: &str = "databases.json";
const GLOBALS_FILE: &str = "globals.json";

/// What `databases.json` says.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ArchiveIndex {
    /// The databases, in the order they were dumped.
    databases: Vec<ClusterDatabase>,
}

/// One database of a cluster dump or restore.
#[derive(Debug, Clone, Serialize)]
pub struct ArchivedDatabase {
    /// The database's name.
    pub name: String,
    /// Its archive.
    pub dir: PathBuf,
    /// Rows dumped or restored in this run.
    pub rows: u64,
}

/// What a cluster dump or restore did.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterArchiveReport {
    /// The cluster archive's directory.
    pub dump_path: PathBuf,
    /// Each database, in order.
    pub databases: Vec<ArchivedDatabase>,
    /// Roles in the archive's globals.
    pub roles: usize,
    /// A restore: what the globals stage did (`None` when an earlier run
    /// of it had).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub globals: Option<GlobalsReport>,
    /// Seconds the run took.
    pub seconds: f64,
}

impl ClusterArchiveReport {
    /// A human summary for the terminal.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "{} database(s) and {} role(s) in {:.1}s, archive {}\n",
            self.databases.len(),
            self.roles,
            self.seconds,
            self.dump_path.display()
        );
        for d in &self.databases {
            s.push_str(&format!("  {}: {} rows\n", d.name, d.rows));
        }
        if let Some(g) = &self.globals {
            s.push_str(&format!("  {}\n", g.summary()));
        }
        s
    }
}

fn write_private(path: &Path, bytes: &[u8], what: &str) -> Result<()> {
    crate::resume::write_atomically(path, bytes, what)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| MigrationError::io(format!("restricting {}", path.display()), e))?;
    }
    Ok(())
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path, what: &str) -> Result<T> {
    let bytes = std::fs::read(path).map_err(|e| {
        MigrationError::Archive(format!(
            "{} has no {what} ({e}): is it a cluster archive written by `dump --all-databases`?",
            path.parent().unwrap_or(path).display()
        ))
    })?;
    serde_json::from_slice(&bytes).map_err(|e| {
        MigrationError::Archive(format!("{} is damaged ({e}): dump again", path.display()))
    })
}

/// `dump --all-databases`: the globals, then every database a cluster
/// migration would take, each into its own archive under `dump_path`.
pub(crate) async fn dump_all(
    cfg: &MigrationConfig,
    run: &RunContext,
) -> Result<ClusterArchiveReport> {
    let started = std::time::Instant::now();
    let source = cfg
        .source
        .clone()
        .ok_or_else(|| MigrationError::Config("no source given (--source)".into()))?;
    let dir = cfg
        .dump_path
        .clone()
        .ok_or_else(|| MigrationError::Config("a cluster dump needs --dump-path".into()))?;
    let excluded = excluded_patterns(&cfg.exclude_databases)?;
    let token_path = ClusterToken::path_for(&dir);
    let _lock = crate::resume::RunLock::acquire(&token_path)?;
    let mut token = open_token(
        cfg,
        &token_path,
        EndpointIdentity::of(&source),
        EndpointIdentity::archive(&dir),
        "cluster dump",
        async { Ok(planned(select_databases(&source, &excluded).await?)) },
    )
    .await?;
    std::fs::create_dir_all(&dir)
        .map_err(|e| MigrationError::io(format!("creating {}", dir.display()), e))?;
    // The globals first: small, and what every database's owners need.
    let src = connect::connect(&source, "source").await?;
    let model = globals::read(
        &src,
        &GlobalsOptions {
            no_role_passwords: cfg.no_role_passwords,
            ..Default::default()
        },
    )
    .await?;
    for role in model.login_roles_without_password() {
        crate::recorded::warn_recorded!(
            "role {role}: its password could not be read (the source role may not read pg_authid); it is archived without one"
        );
    }
    let json = serde_json::to_vec_pretty(&model).expect("globals serialize");
    around(Point::Globals, async {
        write_private(&dir.join(GLOBALS_FILE), &json, "cluster archive globals")
    })
    .await?;
    let index = ArchiveIndex {
        databases: token.databases.clone(),
    };
    write_private(
        &dir.join(DATABASES_FILE),
        &serde_json::to_vec_pretty(&index).expect("index serializes"),
        "cluster archive index",
    )?;
    let out = each_database(
        cfg,
        run,
        &dir,
        &token_path,
        &mut token,
        "dumping",
        |mut db_cfg, db, db_dir| {
            db_cfg.source = Some(source.with_dbname(&db.name));
            db_cfg.resume = crate::resume::ResumeToken::path_for(db_dir).exists();
            db_cfg.force_clean = cfg.force_clean && !db_cfg.resume;
            async move { Ok(Box::pin(crate::dump::run(&db_cfg, run)).await?.rows) }
        },
    )
    .await?;
    token.globals_done = true;
    token.completed = true;
    token.save(&token_path)?;
    Ok(ClusterArchiveReport {
        dump_path: dir,
        databases: out,
        roles: model.roles.len(),
        globals: None,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// The token of a cluster restore from the archive at `dir`.
fn restore_token_path(dir: &Path) -> PathBuf {
    let mut s = dir.as_os_str().to_owned();
    s.push(".restore.cluster.json");
    PathBuf::from(s)
}

/// `restore --all-databases`: the archive's globals, then each database
/// from its archive (created as the source had it).
pub(crate) async fn restore_all(
    cfg: &MigrationConfig,
    run: &RunContext,
) -> Result<ClusterArchiveReport> {
    let started = std::time::Instant::now();
    let target = cfg
        .target
        .clone()
        .ok_or_else(|| MigrationError::Config("no target given (--target)".into()))?;
    let dir = cfg
        .dump_path
        .clone()
        .ok_or_else(|| MigrationError::Config("a cluster restore needs --dump-path".into()))?;
    let index: ArchiveIndex = read_json(&dir.join(DATABASES_FILE), "databases.json")?;
    let model: globals::Globals = read_json(&dir.join(GLOBALS_FILE), "globals.json")?;
    let token_path = restore_token_path(&dir);
    let _lock = crate::resume::RunLock::acquire(&token_path)?;
    let mut token = open_token(
        cfg,
        &token_path,
        EndpointIdentity::archive(&dir),
        EndpointIdentity::of(&target),
        "cluster restore",
        async {
            Ok(index
                .databases
                .iter()
                .map(|d| ClusterDatabase {
                    done: false,
                    ..d.clone()
                })
                .collect())
        },
    )
    .await?;
    let mut globals_report = None;
    if !token.globals_done {
        let dst = connect::connect(&target, "target").await?;
        let opts = GlobalsOptions {
            no_role_passwords: cfg.no_role_passwords,
            roles_overwrite: cfg.roles_overwrite,
            tablespace_locations: cfg.tablespace_locations.clone(),
        };
        let report = around(Point::Globals, globals::apply(&dst, &model, &opts)).await?;
        token.globals_done = true;
        token.save(&token_path)?;
        globals_report = Some(report);
    }
    let out = each_database(
        cfg,
        run,
        &dir,
        &token_path,
        &mut token,
        "restoring",
        |mut db_cfg, db, db_dir| {
            db_cfg.target = Some(target.with_dbname(&db.name));
            db_cfg.resume = crate::resume::ResumeToken::restore_path_for(db_dir).exists();
            db_cfg.force_clean = cfg.force_clean && !db_cfg.resume;
            async move { Ok(Box::pin(crate::restore::run(&db_cfg, run)).await?.rows) }
        },
    )
    .await?;
    token.completed = true;
    token.save(&token_path)?;
    Ok(ClusterArchiveReport {
        dump_path: dir,
        databases: out,
        roles: model.roles.len(),
        globals: globals_report,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Run `op` (a dump or a restore, given the database's configuration
/// and archive directory; it answers the rows moved) for every database
/// of the token not done yet, one after another, each recorded done.
async fn each_database<F, Fut>(
    cfg: &MigrationConfig,
    run: &RunContext,
    dir: &Path,
    token_path: &Path,
    token: &mut ClusterToken,
    doing: &str,
    op: F,
) -> Result<Vec<ArchivedDatabase>>
where
    F: Fn(MigrationConfig, &ClusterDatabase, &Path) -> Fut,
    Fut: std::future::Future<Output = Result<u64>>,
{
    let total = token.databases.len();
    let mut out = Vec::new();
    for i in 0..total {
        let db = token.databases[i].clone();
        if run.cancel.is_cancelled() {
            return Err(MigrationError::Cancelled);
        }
        let db_dir = dir.join(&db.dir);
        let mut db_cfg = cfg.clone();
        db_cfg.all_databases = false;
        db_cfg.exclude_databases.clear();
        db_cfg.dump_path = Some(db_dir.clone());
        if let Some(p) = &run.progress {
            p.begin_database(&db.name, i as u64 + 1, total as u64, true);
        }
        info!(database = %db.name, "{doing} database {} of {total}", i + 1);
        let rows = op(db_cfg, &db, &db_dir).await?;
        if let Some(p) = &run.progress {
            p.end_database(&db.name);
        }
        if !token.databases[i].done {
            token.databases[i].done = true;
            around(Point::ClusterDatabase, async { token.save(token_path) }).await?;
        }
        out.push(ArchivedDatabase {
            name: db.name,
            dir: db_dir,
            rows,
        });
    }
    Ok(out)
}
