//! Schema reproduction from the catalogs (pg_dump's design, not its code):
//! load every object once, build a dependency graph, sort it by type
//! priority and name with a stable topological sort, repair the known
//! dependency loops, and emit pre-data and post-data DDL.
//!
//! Being built (issue 3): see [`load`] for the object kinds covered so far.
//! A stage: reads the source's catalogs (never writes there) and plans DDL
//! as data; applying it with markers is `copy::steps`. A new object kind goes
//! into [`load`] (one loader file per family) and [`sort::ObjectKind`].

pub mod acl;
pub mod emit;
pub mod filter;
pub mod load;
pub mod model;
pub mod sort;
pub mod statements;
pub mod tablespace;

pub use emit::{Part, SchemaScript, Statements, Step};

use crate::config::EndpointConfig;
use crate::error::{MigrationError, Result};
use crate::pg::{catalog, connect};

/// What to leave out of a schema (pg_dump's `--no-owner`, `--no-acl`), and
/// where its objects go.
#[derive(Debug, Clone, Default)]
pub struct ReadOptions {
    pub no_owner: bool,
    pub no_acl: bool,
    /// Leave subscriptions out (pg_dump's `--no-subscriptions`).
    pub no_subscriptions: bool,
    /// Leave security labels out (pg_dump's `--no-security-labels`).
    pub no_security_labels: bool,
    /// Leave columns' compression methods out (pg_dump's
    /// `--no-toast-compression`): every column takes the target's default.
    pub no_toast_compression: bool,
    /// `--tablespace-mapping` / `--no-tablespaces`.
    pub tablespaces: tablespace::Placement,
    /// `-n/-N/-t/-T`: only the objects they select (see [`filter`]).
    pub filters: crate::config::filter::Filters,
}

impl ReadOptions {
    /// The options a migration or dump described by `cfg` reads with.
    pub fn of(cfg: &crate::config::MigrationConfig) -> Self {
        ReadOptions {
            no_owner: cfg.no_owner,
            no_acl: cfg.no_acl,
            no_subscriptions: cfg.no_subscriptions,
            no_security_labels: cfg.no_security_labels,
            no_toast_compression: cfg.no_toast_compression,
            tablespaces: tablespace::Placement::of(cfg),
            filters: cfg.filters.clone(),
        }
    }
}

/// Read the source's schema in one REPEATABLE READ snapshot and plan it.
/// `snapshot` imports an exported snapshot (the data copy's) when given.
pub async fn read(source: &EndpointConfig, snapshot: Option<&str>) -> Result<SchemaScript> {
    read_with(source, snapshot, &ReadOptions::default()).await
}

/// As [`read`], with options.
pub async fn read_with(
    source: &EndpointConfig,
    snapshot: Option<&str>,
    opts: &ReadOptions,
) -> Result<SchemaScript> {
    let c = connect::connect(source, "source").await?;
    let major = (catalog::server_version_num(&c).await? / 10000) as u32;
    match snapshot {
        Some(id) => crate::pg::session::import_snapshot(&c, id)
            .await
            .map(|_| ())?,
        None => c
            .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .await
            .map_err(|e| MigrationError::db("opening the schema snapshot", e))?,
    }
    load::setup_session(&c).await?;
    // With filters, only the selected relations are locked (as pg_dump
    // does): the rest of a large database stays out of the lock table.
    let selection = if opts.filters.selects_objects() {
        let compiled = opts.filters.compile()?;
        Some(filter::Selection {
            relations: catalog::selected_relations(&c, &compiled).await?,
            excluded_relations: catalog::excluded_relations(&c, &compiled).await?,
            schemas: catalog::schemas_in_scope(&c, &compiled).await?,
            excluded_schemas: catalog::schemas_matching(&c, &compiled.exclude_schemas).await?,
            tables_only: !opts.filters.tables.is_empty(),
            everything: opts.filters.schemas.is_empty() && opts.filters.tables.is_empty(),
        })
    } else {
        None
    };
    let mut model = load::load(&c, major, opts, selection.as_ref().map(|s| &s.relations)).await?;
    let notes = match &selection {
        Some(selection) => filter::apply(&mut model, selection)?,
        None => Vec::new(),
    };
    let unsupported = load::unsupported(&c, opts).await?;
    let _ = c.batch_execute("COMMIT").await;
    let mut script = SchemaScript::plan_with(model, opts)?;
    tablespace::place(&mut script, &opts.tablespaces);
    script.unsupported = unsupported;
    for w in &script.warnings {
        crate::recorded::warn_recorded!("{w}");
    }
    for note in &notes {
        tracing::info!("filters: {note}");
    }
    script.filter_notes = notes;
    Ok(script)
}

/// `--no-toast-compression` for a script read before (from an archive):
/// every column's compression method is left out.
pub fn drop_compression(script: &mut SchemaScript) {
    for step in [&mut script.pre_data, &mut script.post_data]
        .into_iter()
        .flatten()
    {
        step.sql
            .retain(|s| !(s.starts_with("ALTER TABLE ONLY ") && s.contains(" SET COMPRESSION ")));
    }
}

/// The columns the script gives lz4 compression (`schema.table.column`),
/// which a server built without lz4 cannot create.
pub fn lz4_columns(script: &SchemaScript) -> Vec<String> {
    const SET_LZ4: &str = " SET COMPRESSION lz4;";
    [&script.pre_data, &script.post_data]
        .into_iter()
        .flatten()
        .flat_map(|step| step.sql.iter())
        .filter(|s| s.ends_with(SET_LZ4))
        .filter_map(|s| {
            let rest = s.strip_prefix("ALTER TABLE ONLY ")?;
            let (table, column) = rest.strip_suffix(SET_LZ4)?.split_once(" ALTER COLUMN ")?;
            Some(format!("{table}.{column}"))
        })
        .collect()
}

/// What the filters brought along or left out, for the report.
pub fn filter_notes(script: Option<&SchemaScript>) -> Vec<String> {
    script.map(|s| s.filter_notes.clone()).unwrap_or_default()
}

/// Apply a whole script to a target database (all parts, in order).
pub async fn apply_all(target: &EndpointConfig, script: &SchemaScript) -> Result<()> {
    let c = connect::connect(target, "target").await?;
    c.batch_execute(emit::APPLY_SETTINGS)
        .await
        .map_err(|e| MigrationError::db("configuring the target session", e))?;
    for part in [Part::PreData, Part::PostData, Part::Acl, Part::Last] {
        emit::apply(&c, script.part(part), &mut |_| Ok(())).await?;
    }
    Ok(())
}
