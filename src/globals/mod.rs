//! The globals stage: what `pg_dumpall --globals-only` carries (roles with
//! their attributes, password hashes, comments, labels and settings; role
//! memberships; privileges on parameters; tablespaces), read natively from
//! the source's shared catalogs and applied natively on the target, for a
//! whole-cluster migration (`--all-databases`).
//!
//! It reads both servers' globals into the same [`Globals`] model and
//! applies the difference ([`plan::plan`]), so a second run changes nothing
//! and an existing role is compared, not blindly recreated: differences
//! are reported in the [`GlobalsReport`] and changed only with
//! [`GlobalsOptions::roles_overwrite`].
//!
//! It may not touch: anything inside a database (schemas, objects, the
//! database's own properties: `schema::load` carries those, including
//! `ALTER DATABASE ... SET`), the target's bootstrap superuser, and the
//! attributes, password or settings of the role the migration connects as
//! on the target. A password hash never reaches a log, an error, a `Debug`
//! or a query's text (it travels as COPY data: see [`Statement`]).
//! Per-database role settings wait for their database:
//! [`apply_database_settings`], after the orchestrator created it.

pub mod model;
pub mod plan;
pub mod read;

use tokio_postgres::Client;

pub use model::{
    DatabaseRoleSetting, Globals, Membership, ParameterAcl, Password, Role, SecLabel, Secret,
    Tablespace,
};
pub use plan::{Statement, TargetSession};

use crate::error::{MigrationError, Result};

/// How the globals are carried.
#[derive(Debug, Clone, Default)]
pub struct GlobalsOptions {
    /// Create roles without their passwords even when the source session
    /// could read the hashes (every LOGIN role is then reported and warned
    /// about: it cannot log in with a password until one is set).
    pub no_role_passwords: bool,
    /// Change what differs on the target (role attributes, passwords,
    /// grant options, settings, tablespace owners and options, comments)
    /// instead of only reporting it. The bootstrap superuser and the role
    /// the migration connects as are never altered, even so.
    pub roles_overwrite: bool,
    /// Tablespace directories: (source location, target location). A
    /// location not listed is used as is on the target host. (This maps
    /// directories, like pg_basebackup's `--tablespace-mapping`;
    /// `MigrationConfig::tablespace_mapping` maps names for the objects.)
    pub tablespace_locations: Vec<(String, String)>,
}

/// Something the target has otherwise than the source and that was left
/// as it is (see [`GlobalsOptions::roles_overwrite`]), or could not be
/// carried. Never holds a password.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Difference {
    /// `role x`, `tablespace t`, `membership of m in r`, ...
    pub object: String,
    /// What differs, or why it could not be carried.
    pub detail: String,
}

/// What the globals stage did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct GlobalsReport {
    /// Roles created on the target.
    pub roles_created: Vec<String>,
    /// Existing roles changed to match the source (`roles_overwrite`).
    pub roles_updated: Vec<String>,
    /// Existing roles left as they are (identical, or with differences
    /// listed in [`GlobalsReport::differences`]).
    pub roles_unchanged: Vec<String>,
    /// LOGIN roles whose password was not carried (not readable on the
    /// source, or `no_role_passwords`): they cannot log in with a password
    /// on the target unless it had one already.
    pub without_password: Vec<String>,
    /// Memberships granted.
    pub memberships_granted: usize,
    /// Memberships the target had already.
    pub memberships_unchanged: usize,
    /// `ALTER ROLE ... SET/RESET` statements run (with `IN DATABASE` for
    /// [`apply_database_settings`]).
    pub settings_applied: usize,
    /// Settings the target had already.
    pub settings_unchanged: usize,
    /// Comments and security labels set on roles and tablespaces.
    pub comments_and_labels_applied: usize,
    /// `GRANT ... ON PARAMETER` statements run.
    pub parameter_privileges_applied: usize,
    /// Parameter privileges the target had already.
    pub parameter_privileges_unchanged: usize,
    /// Tablespaces created on the target.
    pub tablespaces_created: Vec<String>,
    /// Existing tablespaces changed (`roles_overwrite`).
    pub tablespaces_updated: Vec<String>,
    /// Tablespaces the target had already.
    pub tablespaces_unchanged: Vec<String>,
    /// What was not applied, and why.
    pub differences: Vec<Difference>,
    /// Warnings also recorded in the run's progress (`warn_recorded!`).
    pub warnings: Vec<String>,
}

impl GlobalsReport {
    /// Whether the stage changed anything on the target.
    pub fn changed(&self) -> bool {
        !(self.roles_created.is_empty()
            && self.roles_updated.is_empty()
            && self.tablespaces_created.is_empty()
            && self.tablespaces_updated.is_empty())
            || self.memberships_granted
                + self.settings_applied
                + self.comments_and_labels_applied
                + self.parameter_privileges_applied
                > 0
    }

    /// One line for logs and the run's summary.
    pub fn summary(&self) -> String {
        format!(
            "globals: {} role(s) created, {} updated, {} unchanged, {} without password; {} membership(s) granted; {} setting(s); {} parameter privilege(s); {} tablespace(s) created; {} difference(s) not applied",
            self.roles_created.len(),
            self.roles_updated.len(),
            self.roles_unchanged.len(),
            self.without_password.len(),
            self.memberships_granted,
            self.settings_applied,
            self.parameter_privileges_applied,
            self.tablespaces_created.len(),
            self.differences.len()
        )
    }
}

/// The source's globals. Password hashes are read unless
/// `opts.no_role_passwords`, when the session may read `pg_authid`.
pub async fn read(source: &Client, opts: &GlobalsOptions) -> Result<Globals> {
    read::read_globals(source, !opts.no_role_passwords).await
}

async fn target_session(target: &Client) -> Result<TargetSession> {
    let r = crate::pg::query_one_once(
        target,
        "SELECT current_user::text, r.rolsuper,
                    ARRAY(SELECT rolname::text FROM pg_catalog.pg_roles WHERE rolname ~ '^pg_')
               FROM pg_catalog.pg_roles r WHERE r.rolname = current_user",
    )
    .await
    .map_err(|e| MigrationError::db("reading the target session's role", e))?;
    Ok(TargetSession {
        current_user: r.get(0),
        is_superuser: r.get(1),
        predefined: r.get(2),
    })
}

/// Make the target's globals match `globals` (from [`read`]); see the
/// module documentation for what is compared and what is left alone.
/// Statements run one at a time outside a transaction (`CREATE TABLESPACE`
/// cannot run in one); a rerun after a failure continues from what exists.
pub async fn apply(
    target: &Client,
    globals: &Globals,
    opts: &GlobalsOptions,
) -> Result<GlobalsReport> {
    let have = read::read_globals(target, true).await?;
    let session = target_session(target).await?;
    let (statements, report) = plan::plan(globals, &have, &session, opts)?;
    run(target, &statements, &report).await?;
    tracing::info!("{}", report.summary());
    Ok(report)
}

/// What [`apply`] would change on the target to match the source, as if
/// with `roles_overwrite`, without changing anything: `verify`'s view of
/// the globals. Each statement the plan would run is one difference, with
/// what the plan itself reports it cannot carry.
pub async fn compare(
    source: &Client,
    target: &Client,
    opts: &GlobalsOptions,
) -> Result<Vec<Difference>> {
    let src = read(source, opts).await?;
    let have = read::read_globals(target, src.passwords_read).await?;
    let session = target_session(target).await?;
    let everything = GlobalsOptions {
        roles_overwrite: true,
        ..opts.clone()
    };
    let (statements, report) = plan::plan(&src, &have, &session, &everything)?;
    let mut out: Vec<Difference> = statements
        .into_iter()
        .map(|s| Difference {
            object: s.what,
            detail: "the target differs (or lacks it)".into(),
        })
        .collect();
    out.extend(report.differences);
    Ok(out)
}

/// [`read`] from the source, then [`apply`] on the target.
pub async fn migrate(
    source: &Client,
    target: &Client,
    opts: &GlobalsOptions,
) -> Result<GlobalsReport> {
    let globals = read(source, opts).await?;
    apply(target, &globals, opts).await
}

/// `ALTER ROLE ... IN DATABASE` settings of source database `dbname` on the
/// target's database `target_dbname` (which must exist by now). The
/// per-database schema stage carries these too when it loads that
/// database's schema (`schema::load`'s database properties); this is for
/// an orchestrator that creates databases without loading their schema
/// through it, and is a no-op when they are there already.
pub async fn apply_database_settings(
    target: &Client,
    globals: &Globals,
    dbname: &str,
    target_dbname: &str,
    opts: &GlobalsOptions,
) -> Result<GlobalsReport> {
    let have = read::read_globals(target, false).await?;
    let session = target_session(target).await?;
    let (statements, report) =
        plan::plan_database_settings(globals, &have, dbname, target_dbname, &session, opts);
    run(target, &statements, &report).await?;
    Ok(report)
}

/// The report's warnings, logged and recorded in the run's progress (an
/// operator must see roles left without a password).
fn record_warnings(report: &GlobalsReport) {
    for w in &report.warnings {
        crate::recorded::warn_recorded!("{w}");
    }
}

/// A session-private table that hands a password hash to the server by
/// COPY (data, never logged as a query), for the statement that sets it.
const SECRET_TABLE: &str = "pg_temp.pg_dbmigrator_globals_secret";

async fn run(target: &Client, statements: &[Statement], report: &GlobalsReport) -> Result<()> {
    record_warnings(report);
    let mut secret_table = false;
    let mut result = Ok(());
    for s in statements {
        tracing::debug!("globals: {}: {}", s.what, s.sql);
        let r = match &s.password {
            None => target.batch_execute(&s.sql).await,
            Some(hash) => {
                if !secret_table {
                    target
                        .batch_execute(&format!(
                            "CREATE TEMP TABLE IF NOT EXISTS {SECRET_TABLE} (hash text)"
                        ))
                        .await
                        .map_err(|e| {
                            MigrationError::db("globals: a session table for password hashes", e)
                        })?;
                    secret_table = true;
                }
                run_with_password(target, &s.sql, hash).await
            }
        };
        if let Err(e) = r {
            // Leave no borrowed identity behind on an ACL's failure.
            let _ = target.batch_execute("RESET SESSION AUTHORIZATION").await;
            result = Err(statement_error(s, e));
            break;
        }
    }
    if secret_table {
        let _ = target
            .batch_execute(&format!("DROP TABLE IF EXISTS {SECRET_TABLE}"))
            .await;
    }
    result
}

/// `sql` completed on the server with the quoted `hash`, which travels as
/// COPY data and is deleted right after.
async fn run_with_password(
    target: &Client,
    sql: &str,
    hash: &Secret,
) -> std::result::Result<(), tokio_postgres::Error> {
    use futures::SinkExt;
    target
        .batch_execute(&format!("TRUNCATE {SECRET_TABLE}"))
        .await?;
    let sink = target
        .copy_in::<_, bytes::Bytes>(&format!("COPY {SECRET_TABLE} (hash) FROM STDIN"))
        .await?;
    futures::pin_mut!(sink);
    // A hash holds no tab, newline or backslash; escape anyway.
    let row = hash
        .expose()
        .replace('\\', "\\\\")
        .replace('\t', "\\t")
        .replace('\n', "\\n")
        .replace('\r', "\\r");
    sink.send(bytes::Bytes::from(format!("{row}\n"))).await?;
    sink.as_mut().finish().await?;
    let r = target
        .batch_execute(&format!(
            "DO $pg_dbmigrator$BEGIN EXECUTE {} || (SELECT pg_catalog.quote_literal(hash) FROM {SECRET_TABLE}); END$pg_dbmigrator$",
            crate::pg::quote::literal(sql)
        ))
        .await;
    let cleared = target
        .batch_execute(&format!("TRUNCATE {SECRET_TABLE}"))
        .await;
    r.and(cleared)
}

fn statement_error(s: &Statement, e: tokio_postgres::Error) -> MigrationError {
    if let Some((name, location)) = &s.creates_tablespace {
        if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_FILE) {
            return MigrationError::target_not_ready(format!(
                "tablespace {name}: its directory {location:?} does not exist on the target host; create it there (empty, owned by the server's OS user) or map the source location to another directory with GlobalsOptions::tablespace_locations"
            ));
        }
    }
    MigrationError::db(format!("globals: {}", s.what), e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn warnings_reach_the_runs_progress() {
        let progress = crate::progress::Progress::new();
        let report = GlobalsReport {
            warnings: vec!["role passwords: ... app, admin".into()],
            ..Default::default()
        };
        crate::context::recording(Some(progress.clone()), async { record_warnings(&report) }).await;
        assert_eq!(progress.snapshot().warnings, report.warnings);
    }
}
