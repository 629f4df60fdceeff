//! `pg_dbmigrator restore`: an archive directory into the target.
//!
//! Every file of the archive is checked against the manifest's digest
//! before anything touches the target, so a damaged or truncated archive
//! is refused by file name and changes nothing. Then the same stages as a
//! direct migration, with the archive in place of the source: the target
//! database (created like the source's), pre-data, the data files loaded in
//! parallel (each in one transaction with its marker, whole tables with
//! COPY FREEZE; each file's digest and row count checked again while
//! loading), index builds beside the load, post-data, sequences and large
//! objects. A crash resumes per file.

use std::sync::Arc;
use std::time::Instant;

use futures::{SinkExt, StreamExt};
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::archive::{
    archive_dir, Archive, DataFormat, LargeObjectMeta, SequenceValue, STEPS_FILE,
};
use crate::config::MigrationConfig;
use crate::context::RunContext;
use crate::copy::{self, CopyContext, TableResult};
use crate::error::{MigrationError, Result};
use crate::faults::{self, around, Point};
use crate::pg::catalog::{self, LargeObjectInfo, TableInfo};
use crate::pg::{connect, quote, session};
use crate::report::MigrationReport;
use crate::resume::{Definition, EndpointIdentity, ResumeToken, Stage, TokenStore};
use crate::schema::model::DatabaseLimits;
use crate::schema::SchemaScript;
use crate::target::TargetNeeds;

/// Restore the archive in `cfg.dump_path` into `cfg.target`.
pub async fn run(cfg: &MigrationConfig, run: &RunContext) -> Result<MigrationReport> {
    let _publishing = run.progress.as_ref().map(|p| p.start_run());
    let r = crate::context::recording(run.progress.clone(), async {
        let dir = archive_dir(cfg, "restore")?;
        let _lock = crate::resume::RunLock::acquire(&ResumeToken::restore_path_for(&dir))?;
        let (report, _) = run_locked(cfg, run, true).await?;
        Ok(report)
    })
    .await;
    run.outcome(r)
}

/// [`run`] for a caller that holds the run's lock (`migrate --copy-method
/// dump`). With `seal`, the database's limits are set on the target at the
/// end (see [`crate::target::seal_database`]); otherwise they are returned
/// for the caller to set after its own last step.
pub(crate) async fn run_locked(
    cfg: &MigrationConfig,
    run: &RunContext,
    seal: bool,
) -> Result<(MigrationReport, Option<DatabaseLimits>)> {
    let cancel = run.cancel.clone();
    let started = Instant::now();
    if cfg.jobs == 0 {
        return Err(MigrationError::Config("--jobs must be at least 1".into()));
    }
    let dir = archive_dir(cfg, "restore")?;
    let target_ep = cfg
        .target
        .clone()
        .ok_or_else(|| MigrationError::Config("no target given (--target)".into()))?;
    // The archive first: a bad one is refused before any server is touched.
    let archive = Arc::new(Archive::open(&dir)?);
    let m = archive.manifest().clone();
    let checked = archive.verify_all(cfg.jobs.max(2)).await?;
    info!(archive = %dir.display(), files = checked.files, bytes = checked.bytes, "archive checked against its manifest");

    let def = Definition {
        mode: cfg.mode,
        data_only: m.data_only,
        source: EndpointIdentity::archive(&dir),
        target: EndpointIdentity::of(&target_ep),
        filters: Default::default(),
        large_objects: cfg.large_objects,
        slot_name: None,
        publication_name: None,
    };
    let token_path = ResumeToken::restore_path_for(&dir);
    if let Some(t) = crate::resume::completed_token(cfg, &def, &token_path)? {
        info!(token = %token_path.display(), "the restore had completed; nothing left to do");
        return Ok((MigrationReport::already_complete(&t, token_path), None));
    }
    let (existing, resumed) = crate::resume::resolve_token(cfg, &def, &token_path, "restore")?;
    // Killed while removing our bookkeeping (whose markers said what was
    // done): everything before it had completed, only the end is left.
    let finalizing = resumed
        && existing
            .as_ref()
            .is_some_and(|t| t.stages.iter().any(|s| s.stage == Stage::Finalize));
    let migration_id = cfg
        .migration_id
        .clone()
        .unwrap_or_else(|| format!("r{}", &def.hash()[..12]));
    let cfg = &crate::pg::sessions::tagged(cfg, &migration_id);
    let target_ep = cfg.target.clone().expect("checked above");
    crate::pg::sessions::end_earlier(&target_ep, "target").await?;

    let placement = crate::schema::tablespace::Placement::of(cfg);
    let script: Option<SchemaScript> = if m.data_only {
        None
    } else {
        let entry = m.schema_file(STEPS_FILE).ok_or_else(|| {
            MigrationError::Archive(format!(
                "archive {} has no {STEPS_FILE} although it is not a --data-only dump: dump again",
                dir.display()
            ))
        })?;
        let text = archive.read_text(entry)?;
        let mut script: SchemaScript = serde_json::from_str(&text).map_err(|e| {
            MigrationError::Archive(format!(
                "{STEPS_FILE} in {} cannot be read ({e}): it was written by an incompatible version — dump again with this version",
                dir.display()
            ))
        })?;
        crate::schema::tablespace::place(&mut script, &placement);
        if cfg.no_toast_compression {
            crate::schema::drop_compression(&mut script);
        }
        Some(script)
    };
    if let Some(script) = &script {
        let needs = TargetNeeds {
            source_version: m.source_server_version,
            roles: m.roles.clone(),
            encoding: m.encoding.clone(),
            lc_collate: m.lc_collate.clone().unwrap_or_default(),
            lc_ctype: m.lc_ctype.clone().unwrap_or_default(),
            locale_provider: m.locale_provider.clone(),
            extensions: m.extensions.clone(),
            roles_hint: "Create them on the target first (the archive holds no role definitions), or dump again with --no-owner / --no-acl",
            tablespace: m.database_tablespace.as_deref().and_then(|t| placement.map(t)),
            // Not in the manifest: a 16+ target refuses such a column itself.
            generated_under_plain_parents: Vec::new(),
        };
        let mut cfg = cfg.clone();
        cfg.roles = false; // role definitions are not in the archive
        around(
            Point::TargetDatabase,
            crate::target::prepare_target_database(None, &target_ep, &needs, resumed, &cfg, script),
        )
        .await?;
    }
    let mut dst = connect::connect(&target_ep, "target").await?;
    session::setup_ddl_target(&dst).await?;
    let mut script = script;
    crate::target::fit_to_database_default(&dst, script.as_mut()).await?;
    let target_version = catalog::server_version_num(&dst).await?;
    let binary_files = m
        .tables
        .iter()
        .flat_map(|t| &t.files)
        .any(|f| f.format == DataFormat::Binary);
    if binary_files && target_version / 10000 != m.source_server_version / 10000 {
        return Err(MigrationError::Archive(format!(
            "archive {} holds binary COPY data from PostgreSQL {}, and the target runs {}: restore it into PostgreSQL {}, or dump again with --copy-format text",
            dir.display(),
            m.source_server_version / 10000,
            target_version / 10000,
            m.source_server_version / 10000
        )));
    }

    let mut tables: Vec<TableInfo> = m
        .tables
        .iter()
        .map(|t| TableInfo {
            oid: 0,
            schema: t.schema.clone(),
            name: t.name.clone(),
            columns: t.columns.iter().collect(),
            all_columns: t.columns.iter().collect(),
            bytes: t.files.iter().map(|f| f.raw_bytes).sum::<u64>() as i64,
            row_estimate: t.rows as f64,
            // Column types are not in the archive: no binary-type check.
            binary_safe: false,
            partition_root: None,
            load_into: None,
            column_types: Default::default(),
            row_filter: t.row_filter.clone(),
        })
        .collect();
    let los: Vec<LargeObjectInfo> = match &m.large_objects {
        Some(e) if cfg.large_objects => {
            let metas: Vec<LargeObjectMeta> = serde_json::from_slice(&archive.read_small_file(e)?)
                .map_err(|e| {
                    MigrationError::Archive(format!("large_objects.json cannot be read: {e}"))
                })?;
            metas.into_iter().map(LargeObjectInfo::from).collect()
        }
        _ => Vec::new(),
    };
    if m.data_only && !resumed {
        if cfg.force_clean {
            // Erase what is in the way: the rows of the archive's tables,
            // the large objects with its ids, our bookkeeping.
            for t in &tables {
                dst.batch_execute("BEGIN")
                    .await
                    .map_err(|e| MigrationError::db("erasing target data", e))?;
                copy::empty_table(&dst, &t.qualified()).await?;
                dst.batch_execute("COMMIT")
                    .await
                    .map_err(|e| MigrationError::db("erasing target data", e))?;
            }
            let oids: Vec<u32> = los.iter().map(|l| l.oid).collect();
            copy::erase_large_objects(&dst, &oids).await?;
        }
        // Refused before anything of ours is written (token included).
        crate::target::preflight_target(&dst, &mut tables, &[], &los, false).await?;
    }
    let mut token = match existing {
        Some(t) if resumed => t,
        _ => ResumeToken::new(migration_id.clone(), def.clone(), dir.clone()),
    };
    token.stage_started(Stage::Restore);
    faults::before(Point::RecordStart).await;
    token.save(&token_path)?;
    faults::after(Point::RecordStart).await;
    let store = Arc::new(TokenStore::new(token_path.clone(), token).observed(run.token_observer()));
    if !resumed {
        copy::drop_target_state(&dst).await?;
    }
    around(Point::PrepareTarget, copy::prepare_target_state(&dst)).await?;
    let mut stages = Vec::new();
    let mut schema_steps = 0;
    let schema_notes = crate::schema::filter_notes(script.as_ref());
    if let (Some(script), false) = (&script, finalizing) {
        let t0 = Instant::now();
        schema_steps += around(
            Point::SchemaPreData,
            crate::copy::apply_steps(
                &mut dst,
                &target_ep,
                &migration_id,
                "pre",
                &script.pre_data,
                &cancel,
            ),
        )
        .await?;
        stages.push((
            Stage::SchemaPreData.as_str().to_string(),
            t0.elapsed().as_secs_f64(),
        ));
    }
    if !finalizing {
        crate::target::preflight_target(&dst, &mut tables, &[], &los, resumed).await?;
    }

    // Data files, and beside them the index builds of loaded tables.
    let t0 = Instant::now();
    let done_on_target = copy::committed_items(&dst, &migration_id).await?;
    let mut items = Vec::new();
    let mut skipped = Vec::new();
    for (i, t) in m.tables.iter().enumerate() {
        let mut pending = false;
        for f in &t.files {
            let item = copy::plan::WorkItem {
                table: i,
                chunk: f.chunk,
                chunks: f.chunks,
                pages: f
                    .pages
                    .map(|(start, end)| copy::plan::PageRange { start, end }),
                est_bytes: f.raw_bytes,
                file: Some(Box::new(f.clone())),
            };
            if done_on_target.contains(&item.name(&tables[i])) {
                continue;
            }
            pending = true;
            items.push(item);
        }
        if !pending {
            skipped.push(t.qualified.clone());
        }
    }
    items.sort_by_key(|i| std::cmp::Reverse(i.est_bytes));
    if let Some(p) = &run.progress {
        // The archive's raw COPY bytes stand for the heap sizes: they are
        // what the in-flight counts of the restore's COPYs add up to.
        p.set_totals(
            m.tables.iter().map(|t| t.files.len() as u64).sum(),
            m.tables
                .iter()
                .map(|t| {
                    (
                        t.qualified.clone(),
                        t.files.iter().map(|f| f.raw_bytes).sum(),
                    )
                })
                .collect(),
        );
    }
    let early = crate::copy::take_early_steps(script.as_mut());
    let mut early = crate::copy::pending_early_steps(&dst, &migration_id, &early).await?;
    let ctx = Arc::new(CopyContext {
        input: copy::Input::Archive(archive.clone()),
        output: copy::Output::Target(Box::new(target_ep.clone())),
        migration_id: migration_id.clone(),
        jobs: cfg.jobs,
        index_jobs: cfg.index_jobs.unwrap_or(cfg.jobs),
        binary: true,
        // (An archive holds no statistics to carry: analyzed.)
        analyze: cfg.statistics != crate::config::Statistics::None,
        token: store.clone(),
        progress: run.progress.clone(),
        // (From an archive: nothing is read from the source.)
        rate: None,
        pressure: None,
    });
    let outcome = if finalizing {
        Default::default()
    } else {
        around(
            Point::CopyData,
            copy::copy_tables(
                ctx,
                tables.clone().into(),
                items,
                &mut early,
                cancel.clone(),
            ),
        )
        .await?
    };
    schema_steps += outcome.index_steps;
    stages.push((
        Stage::CopyData.as_str().to_string(),
        t0.elapsed().as_secs_f64(),
    ));

    if let (Some(script), false) = (&script, finalizing) {
        let t0 = Instant::now();
        schema_steps += around(
            Point::SchemaPostData,
            crate::copy::apply_after_data(
                &mut dst,
                &target_ep,
                &migration_id,
                script,
                cfg.jobs,
                &cancel,
            ),
        )
        .await?;
        stages.push((
            Stage::SchemaPostData.as_str().to_string(),
            t0.elapsed().as_secs_f64(),
        ));
    }

    // Sequences: idempotent, always redone.
    let t0 = Instant::now();
    let mut nseq = 0;
    if let Some(e) = &m.sequences {
        let values: Vec<SequenceValue> = serde_json::from_slice(&archive.read_small_file(e)?)
            .map_err(|e| MigrationError::Archive(format!("sequences.json cannot be read: {e}")))?;
        faults::before(Point::Sequences).await;
        for s in &values {
            let q = quote::qualified(&s.schema, &s.name);
            dst.query_one(
                "SELECT pg_catalog.setval($1::text::regclass, $2, $3)",
                &[&q, &s.last_value, &s.is_called],
            )
            .await
            .map_err(|e| MigrationError::db(format!("setting sequence {q} on the target"), e))?;
        }
        nseq = values.len();
        faults::after(Point::Sequences).await;
    }
    stages.push((
        Stage::Sequences.as_str().to_string(),
        t0.elapsed().as_secs_f64(),
    ));

    // Large objects: a half-done stage is erased and redone.
    let t0 = Instant::now();
    let mut lo_bytes = 0;
    if !los.is_empty() && !store.snapshot().is_done(Stage::LargeObjects) {
        store.update(|t| t.stage_started(Stage::LargeObjects))?;
        let oids: Vec<u32> = los.iter().map(|l| l.oid).collect();
        copy::erase_large_objects(&dst, &oids).await?;
        let data = m.large_object_data.as_ref().ok_or_else(|| {
            MigrationError::Archive(format!(
                "archive {} lists large objects but not their contents: dump again",
                dir.display()
            ))
        })?;
        lo_bytes = around(
            Point::LargeObjects,
            restore_large_objects(&dst, &archive, data, &los, &cancel),
        )
        .await?;
        store.update(|t| t.stage_done(Stage::LargeObjects))?;
    }
    stages.push((
        Stage::LargeObjects.as_str().to_string(),
        t0.elapsed().as_secs_f64(),
    ));

    let t0 = Instant::now();
    // Recorded first: from here on the markers are going.
    store.update(|t| t.stage_started(Stage::Finalize))?;
    around(Point::Finalize, copy::drop_target_state(&dst)).await?;
    stages.push((
        Stage::Finalize.as_str().to_string(),
        t0.elapsed().as_secs_f64(),
    ));
    let limits = script.as_ref().and_then(|s| s.database_limits);
    if seal {
        crate::target::seal_database(&target_ep, limits).await?;
    }
    faults::before(Point::Complete).await;
    store.update(|t| {
        t.stage_done(Stage::Restore);
        // For `migrate --copy-method dump` resumed after this point: it
        // seals the database itself, after its verify.
        t.database_limits = limits;
        t.completed = true;
    })?;
    faults::after(Point::Complete).await;
    let results: Vec<TableResult> = outcome.tables;
    Ok((
        MigrationReport {
            migration_id,
            dump_path: dir,
            token_path,
            resumed,
            snapshot_id: m.snapshot_id.clone(),
            source_version: m.source_server_version,
            target_version,
            rows: results.iter().map(|r| r.rows).sum(),
            bytes: results.iter().map(|r| r.bytes).sum(),
            tables: results,
            skipped_tables: skipped,
            sequences: nseq,
            large_objects: los.len(),
            large_object_bytes: lo_bytes,
            schema_steps,
            schema_notes,
            stages,
            seconds: started.elapsed().as_secs_f64(),
            verify: None,
            online: None,
            already_complete: false,
            snapshot_note: None,
            databases: Vec::new(),
            globals: None,
            statistics: None,
            source_pressure: None,
            round_trips: None,
        },
        (!seal).then_some(limits).flatten(),
    ))
}

/// Load the `(oid, data)` stream into a temporary table, then create each
/// object with its contents, owner, comment and privileges, in one
/// transaction.
async fn restore_large_objects(
    dst: &Client,
    archive: &Archive,
    data: &crate::archive::DataFile,
    los: &[LargeObjectInfo],
    cancel: &CancellationToken,
) -> Result<u64> {
    let tdb = |e| MigrationError::db("restoring large objects on the target", e);
    dst.batch_execute(
        "BEGIN; CREATE TEMPORARY TABLE dbm_lo (oid pg_catalog.oid, data pg_catalog.bytea) ON COMMIT DROP",
    )
    .await
    .map_err(tdb)?;
    let sink = dst
        .copy_in::<_, bytes::Bytes>("COPY dbm_lo FROM STDIN (FORMAT binary)")
        .await
        .map_err(tdb)?;
    futures::pin_mut!(sink);
    let mut input = archive.open_data(data)?;
    while let Some(chunk) = input.next().await {
        if cancel.is_cancelled() {
            let _ = dst.batch_execute("ROLLBACK").await;
            return Err(MigrationError::Cancelled);
        }
        sink.as_mut().send(chunk?).await.map_err(tdb)?;
    }
    sink.as_mut().finish().await.map_err(tdb)?;
    let bytes: i64 = crate::pg::query_one_once(dst, "SELECT pg_catalog.count(pg_catalog.lo_from_bytea(oid, data)), COALESCE(pg_catalog.sum(pg_catalog.length(data)), 0)::int8 FROM dbm_lo")
        .await
        .map_err(tdb)?
        .get(1);
    copy::large_object_metadata(dst, los).await?;
    dst.batch_execute("COMMIT").await.map_err(tdb)?;
    Ok(bytes as u64)
}
