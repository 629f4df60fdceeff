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

use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::config::filter::CompiledFilters;
use crate::config::{CopyFormat, CopyMethod, MigrationConfig, Statistics, VerifyLevel};
use crate::context::RunContext;
use crate::copy::{self, CopyContext, TableResult};
use crate::copy::{apply_after_data, apply_steps, pending_early_steps, take_early_steps};
use crate::error::{MigrationError, Remedy, Result};
use crate::faults::{self, around, Point};
use crate::pg::catalog::{self};
use crate::pg::{connect, session};
use crate::progress::{human_bytes, summarize};
use crate::report::MigrationReport;
use crate::resume::{resolve_token, work_location};
use crate::resume::{Definition, ResumeToken, Stage, TokenStore};
use crate::schema::{self};
use crate::target::{
    force_clean, preflight_target, prepare_target_database, refuse_bad_scope, server_version_of,
    TargetNeeds,
};
use crate::verify::{self, VerifyOptions, VerifyReport};

/// The offline migration: preflight, snapshot, schema, data beside the
/// index builds, sequences, large objects, the rest of the schema, verify
/// ([`copy_phase`] then [`finish`]); or, with `--copy-method dump`, a dump
/// and a restore.
pub(crate) async fn run(cfg: &MigrationConfig, run: &RunContext) -> Result<MigrationReport> {
    cfg.validate()?;
    if cfg.copy_method == CopyMethod::Dump {
        return run_via_archive(cfg, run).await;
    }
    let def = Definition::from_config(cfg)?;
    let (_, dump_path) = work_location(cfg, &def);
    let token_path = ResumeToken::path_for(&dump_path);
    if let Some(t) = crate::resume::completed_token(cfg, &def, &token_path)? {
        info!(token = %token_path.display(), "the migration had completed; nothing left to do");
        return Ok(MigrationReport::already_complete(&t, token_path));
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
    /// Set on the target database at the very end (see
    /// [`crate::target::seal_database`]).
    pub database_limits: Option<crate::schema::model::DatabaseLimits>,
    /// Why the copy is not one point in time, when it is not (see
    /// [`MigrationReport::snapshot_note`]).
    pub snapshot_note: Option<String>,
    /// Where the target's statistics came from (see
    /// [`MigrationReport::statistics`]).
    pub statistics: Option<crate::report::StatisticsReport>,
    /// What `--source-pressure` did during the copy (see
    /// [`MigrationReport::source_pressure`]).
    pub pressure: Option<crate::progress::PressureSummary>,
}

/// Validate, preflight, snapshot, schema, data, sequences, large objects.
/// For an online migration `online` creates the publication and the slot
/// and the snapshot is the slot's.
pub(crate) async fn copy_phase(
    cfg: &MigrationConfig,
    run: &RunContext,
    mut online: Option<&mut crate::replication::source::OnlinePrep>,
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
    if online.is_none() {
        // A killed run's sessions end before this run touches anything.
        around(
            Point::EndEarlierRuns,
            crate::pg::sessions::end_earlier_runs(cfg),
        )
        .await?;
    }
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
            crate::replication::source::prepare_source(
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
        around(
            Point::TargetDatabase,
            prepare_target_database(Some(&src), &target_ep, &needs, resumed, cfg, &script),
        )
        .await?;
        Some(script)
    } else {
        None
    };
    let mut dst = connect::connect(&target_ep, "target").await?;
    let replica_role = session::setup_ddl_target(&dst).await?;
    let mut script = script;
    crate::target::fit_to_database_default(&dst, script.as_mut()).await?;
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
            ResumeToken::remove(&token_path);
        }
    }
    if !resumed {
        // Bookkeeping left by an attempt whose token is gone must not count.
        copy::drop_target_state(&dst).await?;
    }

    let (mut tables, seqs, los) =
        catalog::data_in_scope(&src, &filters, full, cfg.large_objects).await?;
    let done_on_target = copy::committed_items(&dst, &migration_id).await?;
    if !full {
        preflight_target(&dst, &mut tables, &seqs, &los, resumed).await?;
        if let (Some(t), true) = (
            tables.iter().find(|t| t.load_into.is_some()),
            online.is_some(),
        ) {
            // The stream names the source's tables; nothing maps them yet.
            return Err(MigrationError::Config(format!(
                "{} would load into {} on the target, whose shape differs (re-shaping); an online migration \
                 replicates into tables of the same shape only. Migrate with --mode offline, or create \
                 the table on the target in the source's shape",
                t.qualified(),
                t.target_name()
            )));
        }
    }
    if !replica_role && !full {
        run.warn("cannot set session_replication_role = replica on the target (needs superuser); triggers and foreign keys fire during the copy, so tables referenced by foreign keys may fail to load");
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
    token.database_limits = script.as_ref().and_then(|s| s.database_limits);
    faults::before(Point::RecordStart).await;
    token.save(&token_path)?;
    faults::after(Point::RecordStart).await;
    let store = Arc::new(TokenStore::new(token_path.clone(), token).observed(run.token_observer()));

    store
        .run_stage(
            Stage::PrepareTarget,
            &mut stages,
            copy::prepare_target_state(&dst),
        )
        .await?;

    // Schema before the data: tables, types, functions, views.
    let mut schema_steps = 0;
    let schema_notes = schema::filter_notes(script.as_ref());
    if let Some(script) = &script {
        let pre = apply_steps(
            &mut dst,
            &target_ep,
            &migration_id,
            "pre",
            &script.pre_data,
            &cancel,
        );
        schema_steps += store
            .run_stage(Stage::SchemaPreData, &mut stages, pre)
            .await?
            .unwrap_or(0);
        // The tables exist now: the same checks as a data-only run.
        preflight_target(&dst, &mut tables, &seqs, &los, resumed).await?;
    }
    // Applied (or recorded applied by an earlier run): nothing reads the
    // pre-data steps again, and at 25,000 tables they are megabytes the
    // copy can use.
    if let Some(s) = script.as_mut() {
        s.pre_data = Vec::new();
    }
    let mut early = take_early_steps(script.as_mut());
    // Shared with the copy's workers rather than copied for them.
    let tables: Arc<[catalog::TableInfo]> = tables.into();

    // Tables, and beside them each loaded table's indexes and keys.
    let mut skipped = Vec::new();
    let mut snapshot_note = None;
    let mut coordinator_snapshot = coordinator_snapshot;
    let mut src = src;
    let pressure = cfg
        .source_pressure
        .clone()
        .map(|thresholds| copy::pressure::Watch {
            thresholds,
            source: source_ep.clone(),
            slot: online.as_ref().map(|o| o.state.slot_name.clone()),
        });
    let copy_data = async {
        let block_size = catalog::block_size(&src).await?;
        let total: u64 = tables.iter().map(|t| t.bytes.max(0) as u64).sum();
        let decision = copy::plan::decide_split(
            cfg.split_bytes,
            total,
            cfg.jobs,
            source_version,
            Some(target_version),
        );
        info!(split_bytes = decision.bytes, "split: {}", decision.reason);
        let split = decision.bytes;
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
        let mut done_on_target = done_on_target;
        let mut snapshot_id = snapshot_id.clone();
        let mut renewed = 0;
        loop {
            let token_done: BTreeSet<String> = store.snapshot().copied.keys().cloned().collect();
            let mut todo = Vec::new();
            let mut pending_tables = BTreeSet::new();
            for item in &items {
                let name = item.name(&tables[item.table]);
                // The target's own record is the truth; the token may lag one item behind.
                if done_on_target.contains(&name) {
                    if !token_done.contains(&name) {
                        info!(item = %name, "copy had committed before the interruption; recording it");
                    }
                    continue;
                }
                pending_tables.insert(item.table);
                todo.push(item.clone());
            }
            for (i, t) in tables.iter().enumerate() {
                if !pending_tables.contains(&i) && !skipped.contains(&t.qualified()) {
                    info!(table = %t.qualified(), "already copied, skipping");
                    skipped.push(t.qualified());
                }
            }
            // Those committed are never needed again.
            early = pending_early_steps(&dst, &migration_id, &early).await?;
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
                // Carried statistics replace the ANALYZE after each load.
                analyze: match cfg.statistics {
                    Statistics::Analyze => true,
                    Statistics::None => false,
                    Statistics::Carry => !copy::statistics::target_can_import(target_version),
                },
                token: store.clone(),
                progress: run.progress.clone(),
                rate: cfg
                    .max_rate
                    .map(|r| Arc::new(copy::rate::RateLimit::new(r))),
                pressure: pressure.clone(),
            });
            let e = match copy::copy_tables(ctx, tables.clone(), todo, &mut early, cancel.clone())
                .await
            {
                Ok(outcome) => return Ok(outcome),
                Err(e) => e,
            };
            if !snapshot_lost(&src, &e).await {
                return Err(e);
            }
            // The coordinator holding the exported snapshot is gone, and
            // the snapshot with it: no worker can import it again.
            let now_done = copy::committed_items(&dst, &migration_id).await?;
            let online = online.is_some();
            let copied_any = !now_done.is_empty();
            let why = if online && copied_any {
                Some("tables were copied on it already")
            } else if cfg.strict_snapshot {
                Some("--strict-snapshot wants the copy to be one point in time")
            } else if online {
                // Nothing copied: the online run starts over from a new slot.
                Some("nothing was copied on it yet")
            } else if renewed >= MAX_SNAPSHOTS {
                Some("it was lost too many times in this run")
            } else {
                None
            };
            if let Some(why) = why {
                return Err(snapshot_lost_refusal(&e, online, copied_any, why));
            }
            renewed += 1;
            run.warn(format!("the source session holding the exported snapshot was lost during the copy ({e}): \
                   the tables not yet copied are copied on a new snapshot, so the copy is no longer one point in time \
                   (--strict-snapshot stops instead)"));
            src = connect::reconnect(&source_ep, "source", &cancel).await?;
            session::setup_source(&src).await?;
            let (id, txids) = session::begin_exported_snapshot(&src).await?;
            (snapshot_id, coordinator_snapshot) = (id, txids);
            store.update(|t| t.snapshot_name = Some(snapshot_id.clone()))?;
            // Work the failed attempt stopped may still run on the target.
            crate::pg::sessions::end_others(&dst, &target_ep, "target").await?;
            // A table some of whose chunks were copied on the lost
            // snapshot is copied again whole on the new one.
            let mut again = Vec::new();
            for (i, t) in tables.iter().enumerate() {
                let names: Vec<String> = items
                    .iter()
                    .filter(|it| it.table == i)
                    .map(|it| it.name(t))
                    .collect();
                let done = names.iter().filter(|n| now_done.contains(*n)).count();
                if done == 0 || done == names.len() {
                    continue;
                }
                if t.load_into.is_some() {
                    let why = format!(
                        "{} was partly copied into {}, which other tables load too, so it cannot be emptied alone",
                        t.qualified(),
                        t.target_name()
                    );
                    return Err(snapshot_lost_refusal(&e, false, true, &why));
                }
                copy::restart_table(&dst, &migration_id, &t.target_name(), &names).await?;
                store.update(|tok| {
                    for n in &names {
                        tok.copied.remove(n);
                    }
                })?;
                info!(table = %t.qualified(), "partly copied on the lost snapshot: copying it again whole");
                again.extend(names);
            }
            done_on_target = now_done
                .into_iter()
                .filter(|n| !again.contains(n))
                .collect();
            let on_old: Vec<String> = tables
                .iter()
                .map(|t| t.qualified())
                .filter(|q| {
                    items.iter().any(|it| {
                        let name = it.name(&tables[it.table]);
                        &tables[it.table].qualified() == q && done_on_target.contains(&name)
                    })
                })
                .collect();
            snapshot_note = Some(format!(
                "not one point in time: the source session holding the exported snapshot was lost during the copy \
                 ({e}); {} table(s) had been copied on the first snapshot ({}), the others were copied on a new \
                 snapshot taken then. Writes to the source in between may show as differences",
                on_old.len(),
                crate::progress::summarize(&on_old)
            ));
            info!(snapshot = %snapshot_id, "copying the rest on a new snapshot");
        }
    };
    let outcome = store
        .run_stage(Stage::CopyData, &mut stages, copy_data)
        .await?
        .unwrap_or_default();
    // Every one of them is applied now (the copy stage ends that way; a
    // copy that succeeded took them).
    drop(early);
    schema_steps += outcome.index_steps;
    let pressure = outcome.pressure;
    let results = outcome.tables;
    // The main target session sat idle through the copy: a link that
    // dropped meanwhile (the copy retried through it) took it along.
    let mut dst = if dst.is_closed() {
        run.warn("the target session was lost during the copy; reconnecting");
        let c = connect::reconnect(&target_ep, "target", &cancel).await?;
        session::setup_ddl_target(&c).await?;
        c
    } else {
        dst
    };

    // Schema after the data: indexes, constraints, then privileges and refreshes.
    if let Some(script) = &script {
        let post = apply_after_data(
            &mut dst,
            &target_ep,
            &migration_id,
            script,
            cfg.jobs,
            &cancel,
        );
        schema_steps += store
            .run_stage(Stage::SchemaPostData, &mut stages, post)
            .await?
            .unwrap_or(0);
    }

    // Statistics, once the last index build has rewritten the tables'
    // sizes (again after a resume that had not reached the sequences: the
    // import is idempotent).
    let statistics = match cfg.statistics {
        Statistics::Carry if copy::statistics::target_can_import(target_version) => {
            if store.snapshot().is_done(Stage::Sequences) {
                None
            } else {
                let copied: std::collections::BTreeMap<String, u64> =
                    results.iter().map(|r| (r.table.clone(), r.rows)).collect();
                let o =
                    copy::statistics::carry(&src, &dst, &tables, &copied, source_version).await?;
                Some(crate::report::StatisticsReport {
                    carried_tables: o.carried.len(),
                    analyzed_tables: o
                        .analyzed
                        .into_iter()
                        .map(|(t, why)| (t, why.to_string()))
                        .collect(),
                    seconds: o.seconds,
                    after_cutover: None,
                })
            }
        }
        Statistics::Carry => {
            info!(
                target_version,
                "the target cannot import statistics (PostgreSQL 18+ can): the loaded tables were analyzed"
            );
            None
        }
        _ => None,
    };

    // Sequences: cheap and idempotent, always redone.
    let t0 = Instant::now();
    store.update(|t| t.stage_started(Stage::Sequences))?;
    let nseq = around(Point::Sequences, copy::copy_sequences(&src, &dst, &seqs)).await?;
    store.update(|t| t.stage_done(Stage::Sequences))?;
    stages.push((
        Stage::Sequences.as_str().to_string(),
        t0.elapsed().as_secs_f64(),
    ));

    // Large objects: a half-done stage is erased and redone.
    if cancel.is_cancelled() {
        return Err(MigrationError::Cancelled);
    }
    let large_objects = async {
        if resumed {
            let oids: Vec<u32> = los.iter().map(|l| l.oid).collect();
            copy::erase_large_objects(&dst, &oids).await?;
        }
        Ok(copy::copy_large_objects(&src, &dst, &los, &cancel).await?.1)
    };
    let lo_bytes = store
        .run_stage(Stage::LargeObjects, &mut stages, large_objects)
        .await?
        .unwrap_or(0);
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
        database_limits: script.as_ref().and_then(|s| s.database_limits),
        snapshot_note,
        statistics,
        pressure,
    })
}

/// How many times one run takes a new snapshot after losing one.
const MAX_SNAPSHOTS: u32 = 3;

/// Whether `e`, which stopped the copy, came with the loss of the
/// coordinator `src` (the session whose transaction exported the
/// snapshot): the workers then fail to import it again (22023, invalid
/// snapshot identifier) once the link is back.
async fn snapshot_lost(src: &tokio_postgres::Client, e: &MigrationError) -> bool {
    (e.is_transient() || e.sqlstate() == Some("22023")) && !session::answers(src).await
}

/// The refusal when the copy may not go on with a new snapshot, with the
/// way out; `why` says why not.
fn snapshot_lost_refusal(
    cause: &MigrationError,
    online: bool,
    copied_any: bool,
    why: &str,
) -> MigrationError {
    let message = if online {
        format!(
            "the source session holding the replication slot's snapshot was lost during the copy ({cause}); \
             the slot pairs with that snapshot only, and {why}. A resumed run starts the copy over \
             from a new slot (the target is cleaned first)"
        )
    } else {
        format!(
            "the source session holding the exported snapshot was lost during the copy ({cause}); {why}, \
             so the run stops here. Starting over copies everything again on one snapshot; resuming keeps \
             what was copied and copies the rest on a new snapshot (the same data only if nothing wrote to \
             the source meanwhile)"
        )
    };
    MigrationError::SnapshotLost {
        message,
        copied_any,
        remedies: if online {
            vec![Remedy::Resume]
        } else {
            vec![Remedy::ForceClean, Remedy::Resume]
        },
    }
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
        database_limits: phase_limits,
        snapshot_note,
        statistics,
        pressure,
    } = phase;
    let dst = connect::connect(&target_ep, "target").await?;
    // Finalize: nothing of ours stays on the target.
    store
        .run_stage(Stage::Finalize, &mut stages, copy::drop_target_state(&dst))
        .await?;

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
    crate::target::seal_database(&target_ep, phase_limits).await?;
    faults::before(Point::Complete).await;
    store.update(|t| t.completed = true)?;
    faults::after(Point::Complete).await;

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
        already_complete: false,
        snapshot_note,
        databases: Vec::new(),
        globals: None,
        statistics,
        source_pressure: pressure,
        round_trips: None,
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
    // The restore's token is this migration's last record: its restore
    // completed, then (Verify recorded there) the verify and the seal after
    // it. A resume after the restore completed does only what is left.
    let restore_token = ResumeToken::restore_path_for(&dir);
    let restored = if cfg.resume && !cfg.force_clean {
        ResumeToken::load(&restore_token)?.filter(|t| {
            t.completed && t.definition.target == crate::resume::EndpointIdentity::of(&target_ep)
        })
    } else {
        None
    };
    if let Some(t) = &restored {
        if t.is_done(Stage::Verify) {
            info!(token = %restore_token.display(), "the migration had completed; nothing left to do");
            let mut report = MigrationReport::already_complete(t, restore_token);
            report.migration_id = work_location(&cfg, &def).0;
            report.dump_path = dir;
            return Ok(report);
        }
    }
    let dump_token = ResumeToken::path_for(&dir);
    let dump_done = restored.is_some()
        || cfg.resume
            && !cfg.force_clean
            && ResumeToken::load(&dump_token)?.is_some_and(|t| {
                t.completed
                    && crate::dump::definition(&cfg, &dir)
                        .is_ok_and(|d| t.check_matches(&d, &dump_token).is_ok())
            });
    let t0 = Instant::now();
    if dump_done {
        info!(archive = %dir.display(), "the dump had finished; restoring it");
    } else {
        let mut dcfg = cfg.clone();
        dcfg.resume = cfg.resume && dump_token.exists();
        // A full disk under the archive is said as such, whichever write
        // hit it (the data files say what is still to write).
        let d = crate::dump::run_with(&dcfg, binary, run)
            .await
            .map_err(|e| crate::dump::disk_full(e, &dir, None))?;
        info!(
            files = d.files_written,
            raw = %human_bytes(d.raw_bytes),
            archive = %human_bytes(d.archive_bytes),
            "dumped"
        );
    }
    let dump_secs = t0.elapsed().as_secs_f64();
    let (mut report, limits) = if let Some(t) = &restored {
        info!("the restore had completed; verifying and finishing");
        // A run killed after the seal: verify needs to connect.
        crate::target::reopen(&target_ep).await?;
        let mut report = MigrationReport::already_complete(t, restore_token.clone());
        report.already_complete = false;
        report.migration_id = work_location(&cfg, &def).0;
        report.dump_path = dir.clone();
        (report, t.database_limits)
    } else {
        let mut rcfg = cfg.clone();
        rcfg.resume = cfg.resume && restore_token.exists();
        faults::before(Point::Restored).await;
        crate::restore::run_locked(&rcfg, run, false).await?
    };
    faults::after(Point::Restored).await;
    report
        .stages
        .insert(0, (Stage::Dump.as_str().to_string(), dump_secs));
    report.resumed |= cfg.resume;
    if cfg.verify != VerifyLevel::None {
        let t0 = Instant::now();
        faults::before(Point::Verify).await;
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
        faults::after(Point::Verify).await;
        report.stages.push((
            Stage::Verify.as_str().to_string(),
            t0.elapsed().as_secs_f64(),
        ));
        report.verify = Some(v);
    }
    crate::target::seal_database(&target_ep, limits).await?;
    // The migration's own completion, in the restore's token.
    faults::before(Point::Complete).await;
    if let Some(t) = ResumeToken::load(&restore_token)? {
        TokenStore::new(restore_token.clone(), t).update(|t| t.stage_done(Stage::Verify))?;
    }
    faults::after(Point::Complete).await;
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
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
    faults::before(Point::Verify).await;
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
    faults::after(Point::Verify).await;
    store.update(|t| t.stage_done(Stage::Verify))?;
    stages.push((
        Stage::Verify.as_str().to_string(),
        t0.elapsed().as_secs_f64(),
    ));
    Ok(Some(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cause() -> MigrationError {
        MigrationError::Client {
            context: "reading public.big from the source".into(),
            message: "connection closed".into(),
        }
    }

    #[test]
    fn a_lost_snapshot_refusal_names_the_ways_out() {
        let e = snapshot_lost_refusal(&cause(), false, true, "--strict-snapshot is set");
        let text = e.to_string();
        assert!(
            text.contains("connection closed")
                && text.contains("--strict-snapshot is set")
                && text.contains("`force_clean`")
                && text.contains("`resume`"),
            "{text}"
        );
        assert_eq!(e.remedies(), [Remedy::ForceClean, Remedy::Resume]);
        assert_eq!(e.exit_code(), crate::error::exit_code::FAILED);
        assert!(!e.is_transient());
        let e = snapshot_lost_refusal(&cause(), true, true, "tables were copied on it already");
        let text = e.to_string();
        assert!(
            text.contains("replication slot")
                && text.contains("`resume`")
                && !text.contains("force_clean"),
            "{text}"
        );
        assert_eq!(e.remedies(), [Remedy::Resume]);
        assert!(matches!(
            e,
            MigrationError::SnapshotLost {
                copied_any: true,
                ..
            }
        ));
    }
}
