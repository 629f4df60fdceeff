//! The offline migration, stage by stage.
//!
//! Order: validate the configuration and the resume token (before touching
//! any server), preflight both servers (changing nothing), prepare the
//! target's bookkeeping, export the snapshot, copy tables, sequences and
//! large objects, finalize (remove our bookkeeping), verify. Each stage is
//! recorded in the resume token when it finishes; a resumed run skips
//! finished stages and finished tables.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::filter::CompiledFilters;
use crate::config::{CopyFormat, CopyMethod, MigrationConfig, MigrationMode, VerifyLevel};
use crate::context::RunContext;
use crate::copy::{self, CopyContext, TableResult};
use crate::error::{MigrationError, Result};
use crate::pg::catalog::{self, TableInfo};
use crate::pg::{connect, quote, session};
use crate::resume::{Definition, ResumeToken, Stage, TokenStore};
use crate::schema::{self, Step};
use crate::verify::{self, VerifyOptions, VerifyReport};

/// What a finished migration did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MigrationReport {
    pub migration_id: String,
    pub dump_path: PathBuf,
    pub token_path: PathBuf,
    pub resumed: bool,
    pub snapshot_id: Option<String>,
    pub source_version: i32,
    pub target_version: i32,
    /// Tables copied in this run (tables finished by an earlier attempt are
    /// in `skipped_tables`).
    pub tables: Vec<TableResult>,
    pub skipped_tables: Vec<String>,
    pub sequences: usize,
    pub large_objects: usize,
    pub large_object_bytes: u64,
    pub rows: u64,
    pub bytes: u64,
    /// Schema objects created on the target in this run (full migrations).
    pub schema_steps: usize,
    /// What the filters brought along or left out of the schema.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub schema_notes: Vec<String>,
    pub stages: Vec<(String, f64)>,
    pub seconds: f64,
    pub verify: Option<VerifyReport>,
    /// Online migrations: the streaming and the cutover.
    pub online: Option<crate::replication::online::OnlineReport>,
}

impl MigrationReport {
    /// Where the report is kept as JSON: beside the resume token,
    /// `<dump-path>.summary.json`.
    pub fn summary_path(&self) -> PathBuf {
        let mut s = self.dump_path.as_os_str().to_owned();
        s.push(".summary.json");
        PathBuf::from(s)
    }

    /// Write the report as JSON to [`summary_path`](Self::summary_path)
    /// (atomically: a reader never sees half of it).
    pub fn save_summary(&self) -> Result<()> {
        let path = self.summary_path();
        let json = serde_json::to_vec_pretty(self).expect("report serializes");
        let tmp = path.with_extension("json.partial");
        std::fs::write(&tmp, json)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|e| MigrationError::io(format!("writing the summary {}", path.display()), e))
    }

    /// Bytes per second over the copy stage.
    pub fn throughput(&self) -> f64 {
        let copy = self
            .stages
            .iter()
            .find(|(s, _)| s == Stage::CopyData.as_str())
            .map(|s| s.1)
            .unwrap_or(self.seconds);
        if copy > 0.0 {
            self.bytes as f64 / copy
        } else {
            0.0
        }
    }

    /// A human summary for the terminal.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        s.push_str(&format!(
            "migration {} {} in {:.1}s\n",
            self.migration_id,
            if self.resumed {
                "resumed and finished"
            } else {
                "finished"
            },
            self.seconds
        ));
        s.push_str(&format!(
            "  tables: {} copied ({} rows, {}), {} already done; sequences: {}; large objects: {} ({})\n",
            self.tables.len(),
            self.rows,
            human_bytes(self.bytes),
            self.skipped_tables.len(),
            self.sequences,
            self.large_objects,
            human_bytes(self.large_object_bytes)
        ));
        s.push_str(&format!(
            "  throughput: {}/s\n",
            human_bytes(self.throughput() as u64)
        ));
        for note in &self.schema_notes {
            s.push_str(&format!("  filters: {note}\n"));
        }
        for (name, secs) in &self.stages {
            s.push_str(&format!("  stage {name:<17} {secs:>8.2}s\n"));
        }
        let mut largest: Vec<&TableResult> = self.tables.iter().collect();
        largest.sort_by_key(|t| std::cmp::Reverse(t.bytes));
        if !largest.is_empty() {
            s.push_str("  largest tables:\n");
        }
        for t in largest.iter().take(5) {
            let rate = if t.seconds > 0.0 {
                t.bytes as f64 / t.seconds / 1e6
            } else {
                0.0
            };
            s.push_str(&format!(
                "    {:<40} {:>10} rows {:>10} {:>7.2}s {:>8.1} MB/s {:?}\n",
                t.table,
                t.rows,
                human_bytes(t.bytes),
                t.seconds,
                rate,
                t.format
            ));
        }
        match &self.verify {
            Some(v) if v.is_clean() => s.push_str(&format!(
                "  verify ({:?}): 0 differences in {} tables, {} sequences, {} large objects\n",
                v.level.unwrap_or_default(),
                v.tables.len(),
                v.sequences,
                v.large_objects
            )),
            Some(v) => {
                s.push_str(&format!(
                    "  verify: {} difference(s)\n",
                    v.differences.len()
                ));
                s.push_str(&v.differences_table());
            }
            None => s.push_str("  verify: skipped\n"),
        }
        if let Some(v) = &self.verify {
            let line = v.outside_filters_line();
            if !line.is_empty() {
                s.push_str(&format!("  {line}"));
            }
        }
        if let Some(o) = &self.online {
            s.push_str(&o.summary());
        }
        s.push_str(&format!("  resume token: {}\n", self.token_path.display()));
        s.push_str(&format!(
            "  summary (JSON): {}\n",
            self.summary_path().display()
        ));
        s
    }
}

pub fn human_bytes(b: u64) -> String {
    const U: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i < U.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", U[i])
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

pub(crate) async fn run(cfg: &MigrationConfig, run: &RunContext) -> Result<MigrationReport> {
    if cfg.jobs == 0 {
        return Err(MigrationError::Config("--jobs must be at least 1".into()));
    }
    if cfg.mode == MigrationMode::Online {
        return crate::replication::online::run(cfg, run).await;
    }
    if cfg.copy_method == CopyMethod::Dump {
        return run_via_archive(cfg, run).await;
    }
    let phase = copy_phase(cfg, run, None).await?;
    finish(cfg, phase, &run.cancel).await
}

/// Everything the copy stages produced, for the stages after them.
pub(crate) struct CopyPhase {
    pub started: Instant,
    pub migration_id: String,
    pub dump_path: PathBuf,
    pub token_path: PathBuf,
    pub resumed: bool,
    pub snapshot_id: String,
    pub source_version: i32,
    pub target_version: i32,
    pub results: Vec<TableResult>,
    pub skipped: Vec<String>,
    pub sequences: usize,
    pub large_objects: usize,
    pub large_object_bytes: u64,
    pub schema_steps: usize,
    pub schema_notes: Vec<String>,
    pub stages: Vec<(String, f64)>,
    pub store: Arc<TokenStore>,
    pub filters: CompiledFilters,
    pub source: crate::config::EndpointConfig,
    pub target: crate::config::EndpointConfig,
}

/// Validate, preflight, snapshot, schema, data, sequences, large objects.
/// For an online migration `online` creates the publication and the slot
/// and the snapshot is the slot's.
pub(crate) async fn copy_phase(
    cfg: &MigrationConfig,
    run: &RunContext,
    mut online: Option<&mut crate::replication::online::OnlinePrep>,
) -> Result<CopyPhase> {
    let cancel = run.cancel.clone();
    let started = Instant::now();
    let def = Definition::from_config(cfg)?;
    let filters = cfg.filters.compile()?;
    let source_ep = cfg.source.clone().expect("checked by Definition");
    let target_ep = cfg.target.clone().expect("checked by Definition");
    let (migration_id, dump_path) = work_location(cfg, &def);
    let token_path = ResumeToken::path_for(&dump_path);

    // The token decides everything before any server is touched.
    let (existing, resumed) = resolve_token(cfg, &def, &token_path, "migration")?;
    let mut token = match existing {
        Some(t) if resumed => t,
        _ => ResumeToken::new(migration_id.clone(), def.clone(), dump_path.clone()),
    };

    // Preflight: connect, check, change nothing.
    let full = !cfg.data_only;
    let src = connect::connect(&source_ep, "source").await?;
    session::setup_source(&src).await?;
    let source_version = catalog::server_version_num(&src).await?;
    refuse_bad_scope(&src, cfg, &target_ep).await?;
    // Snapshot first: the schema, the table list and the data come from the
    // same instant. Online, it is the replication slot's snapshot.
    let (snapshot_id, coordinator_snapshot) = match online.as_deref_mut() {
        Some(o) => {
            crate::replication::online::prepare_source(
                cfg,
                &src,
                &filters,
                o,
                &mut token,
                &token_path,
            )
            .await?
        }
        None => session::begin_exported_snapshot(&src).await?,
    };
    let script = if full {
        let opts = schema::ReadOptions::of(cfg);
        let script = schema::read_with(&source_ep, Some(&snapshot_id), &opts).await?;
        if !script.unsupported.is_empty() {
            return Err(MigrationError::Unsupported(format!(
                "the source has objects that schema reproduction does not cover yet: {}. \
                 Create the schema on the target yourself and run with --data-only",
                summarize(&script.unsupported)
            )));
        }
        let needs = TargetNeeds::read(&src, source_version, cfg).await?;
        prepare_target_database(Some(&src), &target_ep, &needs, resumed, cfg, &script).await?;
        Some(script)
    } else {
        None
    };
    let dst = connect::connect(&target_ep, "target").await?;
    let replica_role = session::setup_ddl_target(&dst).await?;
    let mut script = script;
    if let Some(script) = script.as_mut() {
        let default = catalog::database_tablespace(&dst).await?;
        schema::tablespace::database_default(script, &default);
    }
    let target_version = catalog::server_version_num(&dst).await?;
    let binary = match cfg.copy_format {
        CopyFormat::Text => false,
        CopyFormat::Binary => true,
        CopyFormat::Auto => source_version / 10000 == target_version / 10000,
    };
    info!(
        source = %source_ep, target = %target_ep,
        source_version, target_version, binary,
        migration = %migration_id, token = %token_path.display(),
        "starting {} {}migration",
        if online.is_some() { "online" } else { "offline" },
        if full { "" } else { "data-only " }
    );

    if cfg.force_clean {
        if !full {
            force_clean(&src, &dst, &filters, cfg.large_objects).await?;
        }
        if online.is_none() {
            let _ = std::fs::remove_file(&token_path);
        }
    }
    if !resumed {
        // Bookkeeping left by an attempt whose token is gone must not count.
        copy::drop_target_state(&dst).await?;
    }

    let mut tables = catalog::list_tables(&src, &filters).await?;
    let mut seqs = catalog::list_sequences(&src, &filters).await?;
    if full {
        // The user's rows in extensions' configuration tables, and their
        // sequences, as pg_dump carries them (CREATE EXTENSION on the
        // target brings only the extension's own rows).
        tables.extend(catalog::list_extension_config_tables(&src).await?);
        seqs.extend(catalog::list_extension_config_sequences(&src).await?);
    }
    catalog::lock_tables(&src, &tables).await?;
    let los = if cfg.large_objects {
        catalog::list_large_objects(&src).await?
    } else {
        Vec::new()
    };
    let done_on_target = copy::committed_items(&dst, &migration_id).await?;
    if !full {
        preflight_target(&dst, &mut tables, &seqs, &los, resumed).await?;
    }
    if !replica_role && !full {
        warn!("cannot set session_replication_role = replica on the target (needs superuser); triggers and foreign keys fire during the copy, so tables referenced by foreign keys may fail to load");
    }

    std::fs::create_dir_all(&dump_path).map_err(|e| {
        MigrationError::io(
            format!("creating work directory {}", dump_path.display()),
            e,
        )
    })?;
    let mut stages = Vec::new();
    token.stage_done(Stage::Preflight);
    token.snapshot_name = Some(snapshot_id.clone());
    token.save(&token_path)?;
    let store = Arc::new(TokenStore::new(token_path.clone(), token).observed(run.token_observer()));

    let t0 = Instant::now();
    if !store.snapshot().is_done(Stage::PrepareTarget) {
        store.update(|t| t.stage_started(Stage::PrepareTarget))?;
        copy::prepare_target_state(&dst).await?;
        store.update(|t| t.stage_done(Stage::PrepareTarget))?;
    }
    stages.push((
        Stage::PrepareTarget.as_str().to_string(),
        t0.elapsed().as_secs_f64(),
    ));

    // Schema before the data: tables, types, functions, views.
    let mut schema_steps = 0;
    let schema_notes = script
        .as_ref()
        .map(|s| s.filter_notes.clone())
        .unwrap_or_default();
    if let Some(script) = &script {
        let t0 = Instant::now();
        if !store.snapshot().is_done(Stage::SchemaPreData) {
            store.update(|t| t.stage_started(Stage::SchemaPreData))?;
            schema_steps +=
                apply_steps(&dst, &migration_id, "pre", &script.pre_data, &cancel).await?;
            store.update(|t| t.stage_done(Stage::SchemaPreData))?;
        }
        stages.push((
            Stage::SchemaPreData.as_str().to_string(),
            t0.elapsed().as_secs_f64(),
        ));
        // The tables exist now: the same checks as a data-only run.
        preflight_target(&dst, &mut tables, &seqs, &los, resumed).await?;
    }

    // Tables, and beside them each loaded table's indexes and keys.
    let t0 = Instant::now();
    let mut skipped = Vec::new();
    let mut outcome = copy::CopyOutcome::default();
    if !store.snapshot().is_done(Stage::CopyData) {
        store.update(|t| t.stage_started(Stage::CopyData))?;
        let block_size = catalog::block_size(&src).await?;
        let total: u64 = tables.iter().map(|t| t.bytes.max(0) as u64).sum();
        let split = cfg
            .split_bytes
            .unwrap_or_else(|| copy::plan::default_split_bytes(total, cfg.jobs));
        // TID range scans arrived in PostgreSQL 14; before, a range would
        // scan the whole table once per chunk.
        let tid_range = source_version >= 140000;
        let stored = store.snapshot().chunk_plan.clone();
        let (items, chunk_plan) = copy::plan::plan(&tables, split, block_size, tid_range, &stored);
        if let Some(p) = &run.progress {
            p.set_totals(
                items.len() as u64,
                tables
                    .iter()
                    .map(|t| (t.qualified(), t.bytes.max(0) as u64))
                    .collect(),
            );
        }
        // The plan is durable before the first chunk can commit.
        store.update(|t| t.chunk_plan = chunk_plan)?;
        let token_done: BTreeSet<String> = store.snapshot().copied.keys().cloned().collect();
        let mut todo = Vec::new();
        let mut pending_tables = BTreeSet::new();
        for item in items {
            let name = item.name(&tables[item.table]);
            // The target's own record is the truth; the token may lag one item behind.
            if done_on_target.contains(&name) {
                if !token_done.contains(&name) {
                    info!(item = %name, "copy had committed before the interruption; recording it");
                }
                continue;
            }
            pending_tables.insert(item.table);
            todo.push(item);
        }
        for (i, t) in tables.iter().enumerate() {
            if !pending_tables.contains(&i) {
                info!(table = %t.qualified(), "already copied, skipping");
                skipped.push(t.qualified());
            }
        }
        let early = early_steps(&dst, &migration_id, script.as_ref()).await?;
        let ctx = Arc::new(CopyContext {
            input: copy::Input::Server {
                endpoint: Box::new(source_ep.clone()),
                snapshot_id: snapshot_id.clone(),
            },
            output: copy::Output::Target(Box::new(target_ep.clone())),
            migration_id: migration_id.clone(),
            jobs: cfg.jobs,
            index_jobs: cfg.index_jobs.unwrap_or(cfg.jobs),
            binary,
            analyze: cfg.analyze,
            token: store.clone(),
            progress: run.progress.clone(),
        });
        outcome = copy::copy_tables(ctx, tables.clone(), todo, early, cancel.clone()).await?;
        schema_steps += outcome.index_steps;
        store.update(|t| t.stage_done(Stage::CopyData))?;
    }
    stages.push((
        Stage::CopyData.as_str().to_string(),
        t0.elapsed().as_secs_f64(),
    ));
    let results = std::mem::take(&mut outcome.tables);

    // Schema after the data: indexes, constraints, then privileges and refreshes.
    if let Some(script) = &script {
        let t0 = Instant::now();
        if !store.snapshot().is_done(Stage::SchemaPostData) {
            store.update(|t| t.stage_started(Stage::SchemaPostData))?;
            schema_steps +=
                apply_after_data(&dst, &target_ep, &migration_id, script, cfg.jobs, &cancel)
                    .await?;
            store.update(|t| t.stage_done(Stage::SchemaPostData))?;
        }
        stages.push((
            Stage::SchemaPostData.as_str().to_string(),
            t0.elapsed().as_secs_f64(),
        ));
    }

    // Sequences: cheap and idempotent, always redone.
    let t0 = Instant::now();
    store.update(|t| t.stage_started(Stage::Sequences))?;
    let nseq = copy::copy_sequences(&src, &dst, &seqs).await?;
    store.update(|t| t.stage_done(Stage::Sequences))?;
    stages.push((
        Stage::Sequences.as_str().to_string(),
        t0.elapsed().as_secs_f64(),
    ));

    // Large objects: a half-done stage is erased and redone.
    let t0 = Instant::now();
    let mut lo_bytes = 0;
    if !store.snapshot().is_done(Stage::LargeObjects) {
        if cancel.is_cancelled() {
            return Err(MigrationError::Cancelled);
        }
        store.update(|t| t.stage_started(Stage::LargeObjects))?;
        if resumed {
            let oids: Vec<u32> = los.iter().map(|l| l.oid).collect();
            copy::erase_large_objects(&dst, &oids).await?;
        }
        let (_, b) = copy::copy_large_objects(&src, &dst, &los, &cancel).await?;
        lo_bytes = b;
        store.update(|t| t.stage_done(Stage::LargeObjects))?;
    }
    stages.push((
        Stage::LargeObjects.as_str().to_string(),
        t0.elapsed().as_secs_f64(),
    ));
    let _ = src.batch_execute("COMMIT").await;
    info!(snapshot = %coordinator_snapshot, "snapshot released");

    Ok(CopyPhase {
        started,
        migration_id,
        dump_path,
        token_path,
        resumed,
        snapshot_id,
        source_version,
        target_version,
        results,
        skipped,
        sequences: nseq,
        large_objects: los.len(),
        large_object_bytes: lo_bytes,
        schema_steps,
        schema_notes,
        stages,
        store,
        filters,
        source: source_ep,
        target: target_ep,
    })
}

/// Finalize (remove our bookkeeping from the target) and verify.
pub(crate) async fn finish(
    cfg: &MigrationConfig,
    phase: CopyPhase,
    cancel: &CancellationToken,
) -> Result<MigrationReport> {
    let CopyPhase {
        started,
        migration_id,
        dump_path,
        token_path,
        resumed,
        snapshot_id,
        source_version,
        target_version,
        results,
        skipped,
        sequences: nseq,
        large_objects,
        large_object_bytes: lo_bytes,
        schema_steps,
        schema_notes,
        mut stages,
        store,
        filters,
        source: source_ep,
        target: target_ep,
        ..
    } = phase;
    let dst = connect::connect(&target_ep, "target").await?;
    // Finalize: nothing of ours stays on the target.
    let t0 = Instant::now();
    store.update(|t| t.stage_started(Stage::Finalize))?;
    copy::drop_target_state(&dst).await?;
    store.update(|t| t.stage_done(Stage::Finalize))?;
    stages.push((
        Stage::Finalize.as_str().to_string(),
        t0.elapsed().as_secs_f64(),
    ));

    // Verify.
    let verify_report = verify_stage(
        cfg,
        &source_ep,
        &target_ep,
        &filters,
        &store,
        &mut stages,
        cancel,
    )
    .await?;
    store.update(|t| t.completed = true)?;

    let rows = results.iter().map(|r| r.rows).sum();
    let bytes = results.iter().map(|r| r.bytes).sum();
    Ok(MigrationReport {
        migration_id,
        dump_path,
        token_path,
        resumed,
        snapshot_id: Some(snapshot_id),
        source_version,
        target_version,
        tables: results,
        skipped_tables: skipped,
        sequences: nseq,
        large_objects,
        large_object_bytes: lo_bytes,
        rows,
        bytes,
        schema_steps,
        schema_notes,
        stages,
        seconds: started.elapsed().as_secs_f64(),
        verify: verify_report,
        online: None,
    })
}

/// `migrate --copy-method dump`: dump into `dump_path`, restore from it,
/// verify against the source. Each half keeps its own resume token; a
/// resumed run skips a finished dump.
async fn run_via_archive(cfg: &MigrationConfig, run: &RunContext) -> Result<MigrationReport> {
    let cancel = run.cancel.clone();
    let started = Instant::now();
    let def = Definition::from_config(cfg)?;
    let (_, dir) = work_location(cfg, &def);
    let mut cfg = cfg.clone();
    cfg.dump_path = Some(dir.clone());
    let source_ep = cfg.source.clone().expect("checked by Definition");
    let target_ep = cfg.target.clone().expect("checked by Definition");
    let binary = match cfg.copy_format {
        CopyFormat::Text => false,
        CopyFormat::Binary => true,
        CopyFormat::Auto => {
            let s = connect::connect(&source_ep, "source").await?;
            let sv = catalog::server_version_num(&s).await?;
            let tv = server_version_of(&target_ep).await?;
            sv / 10000 == tv / 10000
        }
    };
    let dump_token = ResumeToken::path_for(&dir);
    let dump_done = cfg.resume
        && !cfg.force_clean
        && ResumeToken::load(&dump_token)?.is_some_and(|t| {
            t.completed
                && crate::archive::dump::definition(&cfg, &dir)
                    .is_ok_and(|d| t.check_matches(&d, &dump_token).is_ok())
        });
    let t0 = Instant::now();
    if dump_done {
        info!(archive = %dir.display(), "the dump had finished; restoring it");
    } else {
        let mut dcfg = cfg.clone();
        dcfg.resume = cfg.resume && dump_token.exists();
        let d = crate::archive::dump::run_with(&dcfg, binary, run).await?;
        info!(
            files = d.files_written,
            raw = %human_bytes(d.raw_bytes),
            archive = %human_bytes(d.archive_bytes),
            "dumped"
        );
    }
    let dump_secs = t0.elapsed().as_secs_f64();
    let mut rcfg = cfg.clone();
    rcfg.resume = cfg.resume && ResumeToken::restore_path_for(&dir).exists();
    let mut report = crate::archive::restore::run(&rcfg, run).await?;
    report
        .stages
        .insert(0, (Stage::Dump.as_str().to_string(), dump_secs));
    report.resumed |= cfg.resume;
    if cfg.verify != VerifyLevel::None {
        let t0 = Instant::now();
        let v = verify::verify(
            &source_ep,
            &target_ep,
            &cfg.filters.compile()?,
            &VerifyOptions {
                level: cfg.verify,
                jobs: cfg.jobs,
                large_objects: cfg.large_objects,
                extension_data: !cfg.data_only,
            },
            &cancel,
        )
        .await?;
        report.stages.push((
            Stage::Verify.as_str().to_string(),
            t0.elapsed().as_secs_f64(),
        ));
        report.verify = Some(v);
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// The roles the schema names that the target server lacks, and every
/// role it has.
pub(crate) async fn missing_roles(
    admin: &Client,
    needs: &TargetNeeds,
) -> Result<(Vec<String>, Vec<String>)> {
    let present: Vec<String> = admin
        .query("SELECT rolname::text FROM pg_catalog.pg_roles", &[])
        .await
        .map_err(|e| MigrationError::db("listing roles on the target", e))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let missing = needs
        .roles
        .iter()
        .filter(|r| !present.contains(r))
        .cloned()
        .collect();
    Ok((missing, present))
}

/// The source's extensions (`name version`) the target server cannot
/// install at the same version.
pub(crate) async fn unavailable_extensions(
    admin: &Client,
    needs: &TargetNeeds,
) -> Result<Vec<String>> {
    let ext_names: Vec<&str> = needs.extensions.iter().map(|e| e.0.as_str()).collect();
    let ext_versions: Vec<&str> = needs.extensions.iter().map(|e| e.1.as_str()).collect();
    Ok(admin
        .query(
            "SELECT u.n || ' ' || u.v
               FROM ROWS FROM (pg_catalog.unnest($1::text[]), pg_catalog.unnest($2::text[])) AS u(n, v)
              WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_available_extension_versions a
                                 WHERE a.name = u.n AND a.version = u.v)
              ORDER BY 1",
            &[&ext_names, &ext_versions],
        )
        .await
        .map_err(|e| MigrationError::db("checking extensions on the target", e))?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// Why the target cannot hold the tablespaces the schema places objects in
/// (after `--tablespace-mapping` / `--no-tablespaces`), or `None` when it can.
pub(crate) async fn tablespace_refusal(
    admin: &Client,
    needs: &TargetNeeds,
    script: &schema::SchemaScript,
) -> Result<Option<String>> {
    let mut names = schema::tablespace::used(script);
    names.extend(needs.tablespace.clone());
    if names.is_empty() {
        return Ok(None);
    }
    let names: Vec<String> = names.into_iter().collect();
    // pg_default needs no CREATE privilege; any other tablespace does.
    let rows = admin
        .query(
            "SELECT u.n, t.oid IS NOT NULL
               FROM pg_catalog.unnest($1::text[]) AS u(n)
               LEFT JOIN pg_catalog.pg_tablespace t ON t.spcname = u.n
              WHERE t.oid IS NULL
                 OR (t.spcname <> 'pg_default' AND NOT pg_catalog.has_tablespace_privilege(t.oid, 'CREATE'))
              ORDER BY 1",
            &[&names],
        )
        .await
        .map_err(|e| MigrationError::db("checking tablespaces on the target", e))?;
    let (mut missing, mut denied) = (Vec::new(), Vec::new());
    for r in rows {
        let name = quote::ident(&r.get::<_, String>(0));
        if r.get::<_, bool>(1) {
            denied.push(name);
        } else {
            missing.push(name);
        }
    }
    let mut why = Vec::new();
    if !missing.is_empty() {
        why.push(format!(
            "tablespace(s) the source places objects in do not exist on the target server: {}",
            missing.join(", ")
        ));
    }
    if !denied.is_empty() {
        why.push(format!(
            "the target role may not create objects in tablespace(s) {} (GRANT CREATE ON TABLESPACE)",
            denied.join(", ")
        ));
    }
    Ok((!why.is_empty()).then(|| {
        format!(
            "{}. Create them on the target first, map them with --tablespace-mapping OLD=NEW, or pass --no-tablespaces",
            why.join("; ")
        )
    }))
}

/// The verify stage (unless `--verify none`), recorded in the token and
/// in `stages`.
pub(crate) async fn verify_stage(
    cfg: &MigrationConfig,
    source: &crate::config::EndpointConfig,
    target: &crate::config::EndpointConfig,
    filters: &CompiledFilters,
    store: &TokenStore,
    stages: &mut Vec<(String, f64)>,
    cancel: &CancellationToken,
) -> Result<Option<VerifyReport>> {
    if cfg.verify == VerifyLevel::None {
        return Ok(None);
    }
    let t0 = Instant::now();
    store.update(|t| t.stage_started(Stage::Verify))?;
    let v = verify::verify(
        source,
        target,
        filters,
        &VerifyOptions {
            level: cfg.verify,
            jobs: cfg.jobs,
            large_objects: cfg.large_objects,
            extension_data: !cfg.data_only,
        },
        cancel,
    )
    .await?;
    store.update(|t| t.stage_done(Stage::Verify))?;
    stages.push((
        Stage::Verify.as_str().to_string(),
        t0.elapsed().as_secs_f64(),
    ));
    Ok(Some(v))
}

/// The server version of an endpoint whose database may not exist yet.
async fn server_version_of(ep: &crate::config::EndpointConfig) -> Result<i32> {
    let c = match connect::connect(ep, "target").await {
        Ok(c) => c,
        Err(first) => match connect::connect(&ep.with_dbname("postgres"), "target").await {
            Ok(c) => c,
            Err(_) => connect::connect(&ep.with_dbname("template1"), "target")
                .await
                .map_err(|_| first)?,
        },
    };
    catalog::server_version_num(&c).await
}

/// The post-data steps still to run beside the copy (index builds and keys,
/// see [`Step::table`]).
pub(crate) async fn early_steps(
    dst: &Client,
    migration_id: &str,
    script: Option<&schema::SchemaScript>,
) -> Result<Vec<Step>> {
    let Some(script) = script else {
        return Ok(Vec::new());
    };
    let done = copy::committed_steps(dst, migration_id).await?;
    Ok(script
        .post_data
        .iter()
        .filter(|s| s.table.is_some() && !done.contains(&copy::step_marker("post", s)))
        .cloned()
        .collect())
}

/// Everything after the rows: the rest of post-data in order, then the
/// foreign key validations in parallel, privileges, and the last steps.
/// Returns how many steps were applied now.
pub(crate) async fn apply_after_data(
    dst: &Client,
    target: &crate::config::EndpointConfig,
    migration_id: &str,
    script: &schema::SchemaScript,
    jobs: usize,
    cancel: &CancellationToken,
) -> Result<usize> {
    let mut n = apply_steps(dst, migration_id, "post", &script.post_data, cancel).await?;
    let validations = script.post_data.iter().filter(|s| s.parallel).cloned();
    n += copy::apply_parallel(
        target,
        migration_id,
        "post",
        validations.collect(),
        jobs,
        cancel,
    )
    .await?;
    n += apply_steps(dst, migration_id, "acl", &script.acl, cancel).await?;
    n += apply_steps(dst, migration_id, "last", &script.last, cancel).await?;
    Ok(n)
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
                return Err(MigrationError::Resume(format!(
                    "the {what} recorded in {} already completed; nothing to resume (use --force-clean to run it again)",
                    token_path.display()
                )));
            }
            true
        }
        (Some(t), false) => {
            return Err(MigrationError::Resume(format!(
                "a resume token for this {what} exists at {} (stage {}{}): pass --resume to continue it, or --force-clean to discard it and start over",
                token_path.display(),
                t.current_stage().map_or("none", |s| s.stage.as_str()),
                if t.completed { ", completed" } else { "" }
            )))
        }
        (None, true) => {
            return Err(MigrationError::Resume(format!(
                "nothing to resume: no resume token at {} (pass the --dump-path of the interrupted run, or run without --resume)",
                token_path.display()
            )))
        }
        (None, false) => false,
    };
    Ok((existing, resumed))
}

/// The target must have every table with every column we copy, every
/// sequence, and (unless resuming) no rows or large objects in the way.
pub(crate) async fn preflight_target(
    dst: &Client,
    tables: &mut [TableInfo],
    seqs: &[catalog::SequenceInfo],
    los: &[catalog::LargeObjectInfo],
    resumed: bool,
) -> Result<()> {
    let schemas: Vec<&str> = tables.iter().map(|t| t.schema.as_str()).collect();
    let names: Vec<&str> = tables.iter().map(|t| t.name.as_str()).collect();
    let rows = dst
        .query(
            "SELECT u.ord, c.relkind::text,
                    (SELECT pg_catalog.array_agg(a.attname::text ORDER BY a.attnum) FROM pg_catalog.pg_attribute a
                      WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''),
                    (SELECT pg_catalog.array_agg(pg_catalog.format_type(a.atttypid, a.atttypmod) ORDER BY a.attnum) FROM pg_catalog.pg_attribute a
                      WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = '')
               FROM ROWS FROM (pg_catalog.unnest($1::text[]), pg_catalog.unnest($2::text[])) WITH ORDINALITY AS u(s, r, ord)
               LEFT JOIN pg_catalog.pg_namespace n ON n.nspname = u.s
               LEFT JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = u.r",
            &[&schemas, &names],
        )
        .await
        .map_err(|e| MigrationError::db("checking tables on the target", e))?;
    let mut problems = Vec::new();
    for r in rows {
        let t = &mut tables[(r.get::<_, i64>(0) - 1) as usize];
        let kind: Option<String> = r.get(1);
        match kind.as_deref() {
            None => problems.push(format!("table {} does not exist", t.qualified())),
            Some("r") => {
                let cols: Vec<String> = r.get::<_, Option<Vec<String>>>(2).unwrap_or_default();
                let types: Vec<String> = r.get::<_, Option<Vec<String>>>(3).unwrap_or_default();
                // Binary COPY needs identical column types; text converts.
                let same_types = t.columns.iter().zip(&t.column_types).all(|(c, ty)| {
                    cols.iter().position(|x| x == c).and_then(|i| types.get(i)) == Some(ty)
                });
                if !same_types && t.binary_safe {
                    info!(table = %t.qualified(), "column types differ on the target; copying as text");
                    t.binary_safe = false;
                }
                let missing: Vec<&String> =
                    t.columns.iter().filter(|c| !cols.contains(c)).collect();
                if !missing.is_empty() {
                    problems.push(format!(
                        "table {} lacks column(s) {}",
                        t.qualified(),
                        missing
                            .iter()
                            .map(|c| quote::ident(c))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                }
            }
            Some(k) => problems.push(format!(
                "{} is not a plain table on the target (relkind {k})",
                t.qualified()
            )),
        }
    }
    // One query for all sequences: those the target lacks.
    let seq_schemas: Vec<&str> = seqs.iter().map(|s| s.schema.as_str()).collect();
    let seq_names: Vec<&str> = seqs.iter().map(|s| s.name.as_str()).collect();
    for r in dst
        .query(
            "SELECT pg_catalog.format('%I.%I', u.s, u.r)
               FROM ROWS FROM (pg_catalog.unnest($1::text[]), pg_catalog.unnest($2::text[])) AS u(s, r)
              WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                                 WHERE n.nspname = u.s AND c.relname = u.r AND c.relkind = 'S')",
            &[&seq_schemas, &seq_names],
        )
        .await
        .map_err(|e| MigrationError::db("checking sequences on the target", e))?
    {
        problems.push(format!("sequence {} does not exist", r.get::<_, String>(0)));
    }
    if !problems.is_empty() {
        return Err(MigrationError::TargetNotReady(format!(
            "the target schema does not match the source: {}. A data-only migration needs the schema created on the target first",
            problems.join("; ")
        )));
    }
    if resumed {
        return Ok(());
    }
    // Rows already there would be duplicated: refuse.
    let mut non_empty = Vec::new();
    for chunk in tables.chunks(200) {
        let sql = chunk
            .iter()
            .map(|t| {
                format!(
                    "SELECT {} WHERE EXISTS (SELECT 1 FROM ONLY {} {})",
                    quote::literal(&t.qualified()),
                    t.qualified(),
                    t.row_filter.as_deref().unwrap_or_default()
                )
            })
            .collect::<Vec<_>>()
            .join(" UNION ALL ");
        for r in dst
            .query(&sql, &[])
            .await
            .map_err(|e| MigrationError::db("checking that target tables are empty", e))?
        {
            non_empty.push(r.get::<_, String>(0));
        }
    }
    if !non_empty.is_empty() {
        return Err(MigrationError::TargetNotReady(format!(
            "target table(s) already contain rows: {}. Empty them, or pass --force-clean to erase them",
            non_empty.join(", ")
        )));
    }
    if !los.is_empty() {
        let oids: Vec<u32> = los.iter().map(|l| l.oid).collect();
        let clash: i64 = dst
            .query_one(
                "SELECT pg_catalog.count(*) FROM pg_catalog.pg_largeobject_metadata WHERE oid = ANY($1)",
                &[&oids],
            )
            .await
            .map_err(|e| MigrationError::db("checking large objects on the target", e))?
            .get(0);
        if clash > 0 {
            return Err(MigrationError::TargetNotReady(format!(
                "{clash} large object(s) with the source's ids already exist on the target; remove them, or pass --force-clean to erase them"
            )));
        }
    }
    Ok(())
}

/// `--force-clean`: erase what a previous attempt (or anyone) left in the
/// target tables in scope, the large objects with the source's ids, and our
/// bookkeeping.
async fn force_clean(
    src: &Client,
    dst: &Client,
    filters: &CompiledFilters,
    large_objects: bool,
) -> Result<()> {
    let tables = catalog::list_tables(src, filters).await?;
    warn!(
        tables = tables.len(),
        "--force-clean: erasing target rows of every table in scope"
    );
    for t in &tables {
        let exists: bool = dst
            .query_one(
                "SELECT pg_catalog.to_regclass($1) IS NOT NULL",
                &[&t.qualified()],
            )
            .await
            .map_err(|e| MigrationError::db("looking up a table on the target", e))?
            .get(0);
        if exists {
            dst.batch_execute("BEGIN")
                .await
                .map_err(|e| MigrationError::db("erasing target data", e))?;
            copy::empty_table(dst, &t.qualified()).await?;
            dst.batch_execute("COMMIT")
                .await
                .map_err(|e| MigrationError::db("erasing target data", e))?;
        }
    }
    if large_objects {
        let oids: Vec<u32> = catalog::list_large_objects(src)
            .await?
            .iter()
            .map(|l| l.oid)
            .collect();
        copy::erase_large_objects(dst, &oids).await?;
    }
    copy::drop_target_state(dst).await
}

/// A long list shortened for a one-line message.
pub(crate) fn summarize(items: &[String]) -> String {
    const SHOWN: usize = 8;
    let mut s = items
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if items.len() > SHOWN {
        s.push_str(&format!(" and {} more", items.len() - SHOWN));
    }
    s
}

/// Checks that need only the source and a look at the target, before
/// anything is created anywhere: every `--schema` / `--table` pattern must
/// match something (as in pg_dump), and the target must not be the source
/// itself under another spelling (socket and TCP, two host names), which
/// `--force-clean` would otherwise try to drop.
pub(crate) async fn refuse_bad_scope(
    src: &Client,
    cfg: &MigrationConfig,
    target_ep: &crate::config::EndpointConfig,
) -> Result<()> {
    let unmatched = catalog::unmatched_patterns(src, &cfg.filters).await?;
    if !unmatched.is_empty() {
        return Err(MigrationError::Config(format!(
            "no matching {} found on the source for {}; check the spelling (patterns fold to lower case unless quoted)",
            if cfg.filters.tables.is_empty() { "schemas were" } else { "tables were" },
            unmatched.join(", ")
        )));
    }
    // A target database that cannot be reached yet (absent, to be created)
    // cannot be the source; other connection problems surface later with
    // their own message.
    if let Ok(dst) = connect::connect(target_ep, "target").await {
        let (a, b) = (
            catalog::database_identity(src).await?,
            catalog::database_identity(&dst).await?,
        );
        if a == b {
            return Err(MigrationError::Config(format!(
                "the source and the target are the same database ({target_ep}); nothing was changed. \
                 Point --target at another database or server"
            )));
        }
    }
    Ok(())
}

/// Apply schema steps, each in one implicit transaction together with its
/// marker row in `_pg_dbmigrator.steps`, so a crash never leaves a step
/// half-applied or applied twice. Returns how many were applied now.
pub(crate) async fn apply_steps(
    dst: &Client,
    migration_id: &str,
    part: &str,
    steps: &[Step],
    cancel: &CancellationToken,
) -> Result<usize> {
    let done = copy::committed_steps(dst, migration_id).await?;
    let mut n = 0;
    for step in steps {
        // Foreign key validations run afterwards, in parallel (apply_parallel).
        if step.parallel || done.contains(&copy::step_marker(part, step)) {
            continue;
        }
        if cancel.is_cancelled() {
            return Err(MigrationError::Cancelled);
        }
        copy::apply_step(dst, migration_id, part, step).await?;
        n += 1;
    }
    info!(
        part,
        applied = n,
        total = steps.len(),
        "schema steps applied"
    );
    Ok(n)
}

/// For a full migration: the target database must be absent (it is
/// created like the source's: encoding and locale) or empty; the roles
/// owning the source's objects must exist on the target server; the target
/// major must not be older than the source's. `--force-clean` drops and
/// recreates a non-empty target database.
/// What a full migration needs of the target server, read from the source
/// (or from an archive's manifest).
pub(crate) struct TargetNeeds {
    pub source_version: i32,
    /// Roles owning or granted objects.
    pub roles: Vec<String>,
    pub encoding: String,
    pub lc_collate: String,
    pub lc_ctype: String,
    /// Extensions (name, version), plpgsql left out.
    pub extensions: Vec<(String, String)>,
    /// What to do about missing roles, for the refusal.
    pub roles_hint: &'static str,
    /// The database's default tablespace when not `pg_default`, placed as
    /// the user asked (`None` also under `--no-tablespaces`).
    pub tablespace: Option<String>,
}

impl TargetNeeds {
    pub async fn read(src: &Client, source_version: i32, cfg: &MigrationConfig) -> Result<Self> {
        let roles = schema::load::owner_roles(src, !cfg.no_owner, !cfg.no_acl).await?;
        let row = src
            .query_one(
                "SELECT pg_catalog.pg_encoding_to_char(d.encoding), d.datcollate::text, d.datctype::text,
                        NULLIF(t.spcname::text, 'pg_default')
                   FROM pg_catalog.pg_database d JOIN pg_catalog.pg_tablespace t ON t.oid = d.dattablespace
                  WHERE d.datname = pg_catalog.current_database()",
                &[],
            )
            .await
            .map_err(|e| MigrationError::db("reading the source database's encoding", e))?;
        let extensions = src
            .query(
                "SELECT extname::text, extversion FROM pg_catalog.pg_extension WHERE extname <> 'plpgsql' ORDER BY 1",
                &[],
            )
            .await
            .map_err(|e| MigrationError::db("listing the source's extensions", e))?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        Ok(TargetNeeds {
            source_version,
            roles,
            encoding: row.get(0),
            lc_collate: row.get(1),
            lc_ctype: row.get(2),
            extensions,
            roles_hint:
                "Create them on the target first, or pass --roles (or --no-owner / --no-acl)",
            tablespace: row
                .get::<_, Option<String>>(3)
                .and_then(|t| schema::tablespace::Placement::of(cfg).map(&t)),
        })
    }
}

pub(crate) async fn prepare_target_database(
    src: Option<&Client>,
    target: &crate::config::EndpointConfig,
    needs: &TargetNeeds,
    resumed: bool,
    cfg: &MigrationConfig,
    script: &schema::SchemaScript,
) -> Result<()> {
    let source_version = needs.source_version;
    let force_clean = cfg.force_clean;
    let dbname = target.dbname.clone();
    let admin = match connect::connect(&target.with_dbname("postgres"), "target").await {
        Ok(c) => c,
        Err(_) => connect::connect(&target.with_dbname("template1"), "target").await?,
    };
    let target_version = catalog::server_version_num(&admin).await?;
    if target_version / 10000 < source_version / 10000 {
        return Err(MigrationError::Config(format!(
            "the target runs PostgreSQL {} and the source {}: migrating to an older major is not supported",
            target_version / 10000,
            source_version / 10000
        )));
    }
    let (missing, present) = missing_roles(&admin, needs).await?;
    if let (false, true, Some(src)) = (missing.is_empty(), cfg.roles, src) {
        // Roles are cluster-wide: created once, before the database, and
        // left in place (a resumed run needs them too).
        let stmts =
            schema::load::role_definitions(src, &missing, &present, cfg.role_passwords).await?;
        for (i, stmt) in stmts.iter().enumerate() {
            admin.batch_execute(stmt).await.map_err(|e| {
                let what = missing
                    .get(i)
                    .map(|r| format!("role {}", quote::ident(r)))
                    .unwrap_or_else(|| "a role membership".into());
                MigrationError::db(format!("creating {what} on the target (--roles)"), e)
            })?;
        }
        info!(roles = ?missing, "created the roles the schema needs on the target");
    } else if !missing.is_empty() {
        return Err(MigrationError::TargetNotReady(format!(
            "role(s) that own or are granted objects on the source do not exist on the target: {}. {}",
            missing.join(", "),
            needs.roles_hint
        )));
    }
    // Every collation must be creatable there (ICU support, OS locales): try
    // each one as a temporary object in a transaction that is rolled back.
    let mut bad_collations = Vec::new();
    for step in script
        .pre_data
        .iter()
        .filter(|s| s.describe.starts_with("COLLATION "))
    {
        let name = step.describe.trim_start_matches("COLLATION ");
        let Some(create) = step.sql.first() else {
            continue;
        };
        let probe = create.replacen(name, "pg_temp.dbm_collation_probe", 1);
        let r = admin
            .batch_execute(&format!("BEGIN; {probe} ROLLBACK;"))
            .await;
        if let Err(e) = r {
            let _ = admin.batch_execute("ROLLBACK").await;
            let msg = crate::error::db_info(&e)
                .map(|i| i.message)
                .unwrap_or_else(|| e.to_string());
            bad_collations.push(format!("{name} ({msg})"));
        }
    }
    if !bad_collations.is_empty() {
        return Err(MigrationError::TargetNotReady(format!(
            "collation(s) cannot be created on the target server: {}. Install the locales or an ICU-enabled build on the target first",
            bad_collations.join(", ")
        )));
    }
    // Every extension must be installable on the target at the source's version.
    let unavailable = unavailable_extensions(&admin, needs).await?;
    if !unavailable.is_empty() {
        return Err(MigrationError::TargetNotReady(format!(
            "extension(s) not available on the target server at the source's version: {}. Install the extension packages on the target first",
            unavailable.join(", ")
        )));
    }
    if let Some(why) = tablespace_refusal(&admin, needs, script).await? {
        return Err(MigrationError::TargetNotReady(why));
    }
    let exists: bool = admin
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_database WHERE datname = $1)",
            &[&dbname],
        )
        .await
        .map_err(|e| MigrationError::db("looking up the target database", e))?
        .get(0);
    if exists && !resumed {
        let objects = {
            let t = connect::connect(target, "target").await?;
            schema::load::user_object_count(&t).await?
        };
        if objects > 0 && !force_clean {
            return Err(MigrationError::TargetNotReady(format!(
                "target database {} is not empty ({objects} objects): migrate into a new or empty database, or pass --force-clean to drop and recreate it",
                quote::ident(&dbname)
            )));
        }
        if objects > 0 {
            warn!(database = %dbname, "--force-clean: dropping and recreating the target database");
            // Our own inspection session may still be closing: retry briefly,
            // but never terminate anyone else's session.
            let mut tries = 0;
            loop {
                let r = admin
                    .batch_execute(&format!("DROP DATABASE {}", quote::ident(&dbname)))
                    .await;
                match r {
                    Ok(()) => break,
                    Err(e)
                        if e.code() == Some(&tokio_postgres::error::SqlState::OBJECT_IN_USE)
                            && tries < 20 =>
                    {
                        tries += 1;
                        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
                    }
                    Err(e) => {
                        return Err(MigrationError::db(
                            "dropping the target database (--force-clean; disconnect other sessions from it first)",
                            e,
                        ))
                    }
                }
            }
        } else {
            return Ok(());
        }
    } else if exists {
        return Ok(());
    }
    let (enc, collate, ctype) = (&needs.encoding, &needs.lc_collate, &needs.lc_ctype);
    let mut sql = format!(
        "CREATE DATABASE {} WITH TEMPLATE = template0 ENCODING = {} LC_COLLATE = {} LC_CTYPE = {}",
        quote::ident(&dbname),
        quote::literal(enc),
        quote::literal(collate),
        quote::literal(ctype)
    );
    if let Some(ts) = &needs.tablespace {
        sql.push_str(&format!(" TABLESPACE = {}", quote::ident(ts)));
    }
    admin.batch_execute(&sql).await.map_err(|e| {
        MigrationError::db(
            format!("creating the target database {}", quote::ident(&dbname)),
            e,
        )
    })?;
    info!(database = %dbname, encoding = %enc, "created the target database");
    Ok(())
}
