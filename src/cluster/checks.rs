//! `plan` and `verify` of a whole cluster: which databases a cluster
//! migration takes (the same choice as the migration's), each database's
//! own plan or comparison, and the globals. Reads only: nothing here
//! changes either server.

use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::config::filter::CompiledFilters;
use crate::config::{EndpointConfig, MigrationConfig};
use crate::error::{MigrationError, Result};
use crate::globals::{self, GlobalsOptions};
use crate::pg::{catalog, connect};
use crate::plan::{DatabasePlan, Plan};
use crate::verify::{ClusterVerifyReport, DatabaseVerifyReport, VerifyOptions};

/// The databases a whole-cluster migration takes from `source`, largest
/// first (`template1` before all): every one that allows connections,
/// `template0` aside, `postgres` and `template1` only when they hold
/// objects, none matching an `excluded` regex.
pub(crate) async fn select_databases(
    source: &EndpointConfig,
    excluded: &[String],
) -> Result<Vec<(String, u64)>> {
    let src = connect::connect(source, "source").await?;
    let listed = catalog::cluster_databases(&src, excluded).await?;
    let mut databases = Vec::new();
    for (name, bytes, excluded) in listed {
        if excluded {
            info!(database = %name, "excluded (--exclude-database)");
            continue;
        }
        // The maintenance databases come along only when someone put
        // objects there: an empty one exists on the target too.
        if name == "postgres" || name == "template1" {
            let c = connect::connect(&source.with_dbname(&name), "source").await?;
            if crate::schema::load::user_object_count(&c).await? == 0 {
                info!(database = %name, "no user objects: not migrated");
                continue;
            }
        }
        databases.push((name, bytes.max(0) as u64));
    }
    databases.sort_by(|a, b| {
        (b.0 == "template1")
            .cmp(&(a.0 == "template1"))
            .then(b.1.cmp(&a.1))
            .then(a.0.cmp(&b.0))
    });
    Ok(databases)
}

/// `--exclude-database` patterns as anchored regexes (psql's pattern rules,
/// as pg_dumpall applies them), matched on the server.
pub(crate) fn excluded_patterns(patterns: &[String]) -> Result<Vec<String>> {
    patterns
        .iter()
        .map(|p| {
            crate::config::filter::schema_pattern_to_regex(p).map_err(|e| {
                MigrationError::Config(format!("invalid --exclude-database pattern \"{p}\": {e}"))
            })
        })
        .collect()
}

/// The plan of a whole-cluster migration: each database's, added up, and
/// the login roles whose passwords cannot be carried.
pub(crate) async fn plan(cfg: &MigrationConfig) -> Result<Plan> {
    cfg.validate()?;
    let source = cfg.source.clone().expect("validated");
    let target = cfg.target.clone().expect("validated");
    let excluded = excluded_patterns(&cfg.exclude_databases)?;
    let mut total = Plan {
        mode: format!("{} (all databases)", mode_name(cfg)),
        migration_id: "cluster".into(),
        ..Default::default()
    };
    let src = connect::connect(&source, "source").await?;
    let opts = GlobalsOptions {
        no_role_passwords: cfg.no_role_passwords,
        roles_overwrite: cfg.roles_overwrite,
        tablespace_locations: cfg.tablespace_locations.clone(),
    };
    let globals = globals::read(&src, &opts).await?;
    total.roles_without_password = globals.login_roles_without_password();
    if !total.roles_without_password.is_empty() {
        total.warnings.push(format!(
            "login role(s) whose password cannot be carried (the source role may not read pg_authid, or no_role_passwords): {}; they cannot log in with a password on the target until one is set",
            total.roles_without_password.join(", ")
        ));
    }
    for (name, _) in select_databases(&source, &excluded).await? {
        let mut db_cfg = cfg.clone();
        db_cfg.all_databases = false;
        db_cfg.exclude_databases.clear();
        db_cfg.source = Some(source.with_dbname(&name));
        db_cfg.target = Some(target.with_dbname(&name));
        // The globals stage creates every role before the databases.
        db_cfg.roles = true;
        let p = Box::pin(crate::plan::plan(&db_cfg)).await?;
        total.source_version = p.source_version;
        total.target_version = p.target_version;
        total.total_bytes += p.total_bytes;
        total.sequences += p.sequences;
        total.large_objects += p.large_objects;
        total.schema_steps = match (total.schema_steps, p.schema_steps) {
            (a, None) => a,
            (None, b) => b,
            (Some(a), Some(b)) => Some(a + b),
        };
        total.estimated_copy_seconds =
            match (total.estimated_copy_seconds, p.estimated_copy_seconds) {
                (a, None) => a,
                (None, b) => b,
                (Some(a), Some(b)) => Some(a + b),
            };
        let prefixed = |items: &[String]| {
            items
                .iter()
                .map(|i| format!("database {name}: {i}"))
                .collect::<Vec<_>>()
        };
        total.refusals.extend(prefixed(&p.refusals));
        total.warnings.extend(prefixed(&p.warnings));
        total.source_changes.extend(prefixed(&p.source_changes));
        total.target_changes.extend(prefixed(&p.target_changes));
        total.databases.push(DatabasePlan { name, plan: p });
    }
    Ok(total)
}

fn mode_name(cfg: &MigrationConfig) -> &'static str {
    match cfg.mode {
        crate::config::MigrationMode::Online => "online",
        crate::config::MigrationMode::Offline => "offline",
    }
}

/// Compare every database a cluster migration takes, and the globals.
pub(crate) async fn verify(
    source: &EndpointConfig,
    target: &EndpointConfig,
    exclude_databases: &[String],
    filters: &CompiledFilters,
    opts: &VerifyOptions,
    cancel: &CancellationToken,
) -> Result<ClusterVerifyReport> {
    let started = std::time::Instant::now();
    let excluded = excluded_patterns(exclude_databases)?;
    let mut out = ClusterVerifyReport::default();
    let dst = connect::connect(target, "target").await?;
    let on_target: Vec<String> = catalog::cluster_databases(&dst, &[])
        .await?
        .into_iter()
        .map(|(name, _, _)| name)
        .collect();
    let src = connect::connect(source, "source").await?;
    out.globals = globals::compare(&src, &dst, &GlobalsOptions::default()).await?;
    for (name, _) in select_databases(source, &excluded).await? {
        if cancel.is_cancelled() {
            return Err(MigrationError::Cancelled);
        }
        if !on_target.contains(&name) {
            out.missing_databases.push(name);
            continue;
        }
        let report = Box::pin(crate::verify::verify(
            &source.with_dbname(&name),
            &target.with_dbname(&name),
            filters,
            opts,
            cancel,
        ))
        .await?;
        out.databases.push(DatabaseVerifyReport { name, report });
    }
    out.seconds = started.elapsed().as_secs_f64();
    Ok(out)
}
