//! `pg_dbmigrator dump`: the source database into an archive directory.
//!
//! One exported snapshot for everything, as in a direct migration: the
//! schema (as SQL for people and as steps for restore), each table or chunk
//! as a zstd COPY stream written by `jobs` workers, sequences and large
//! objects. Every finished file is recorded in the resume token with its
//! digest before the next starts; a resumed dump keeps those and redoes the
//! rest (the `.partial` leftovers of the crash are removed first). The
//! manifest is written last: its presence says the archive is complete.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::archive::{
    self, archive_dir, AsyncDataWriter, DataFile, DataFormat, LargeObjectMeta, Manifest,
    SequenceValue, TableEntry, LARGE_OBJECTS_FILE, POST_DATA_FILE, PRE_DATA_FILE, SEQUENCES_FILE,
    STEPS_FILE,
};
use crate::config::{CopyFormat, MigrationConfig};
use crate::context::RunContext;
use crate::copy::{self, CopyContext};
use crate::error::{MigrationError, Result};
use crate::faults::{self, around, Point};
use crate::pg::catalog;
use crate::pg::{connect, session};
use crate::resume::{Definition, EndpointIdentity, ResumeToken, Stage, TokenStore};
use crate::schema::{self, Part};
use crate::target::TargetNeeds;

/// What a finished dump wrote.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DumpReport {
    pub dump_path: PathBuf,
    pub token_path: PathBuf,
    pub resumed: bool,
    pub tables: usize,
    /// Files written in this run (files of an interrupted run are kept).
    pub files_written: usize,
    pub files_kept: usize,
    pub rows: u64,
    /// COPY bytes before compression, and the archive's size on disk.
    pub raw_bytes: u64,
    pub archive_bytes: u64,
    pub sequences: usize,
    pub large_objects: usize,
    pub seconds: f64,
    /// `--resume` of a dump its token records complete: nothing was done.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub already_complete: bool,
}

impl DumpReport {
    pub fn summary(&self) -> String {
        if self.already_complete {
            return format!(
                "the dump into {} is already complete: nothing left to do\n",
                self.dump_path.display()
            );
        }
        format!(
            "dump {} in {:.1}s: {} tables ({} rows), {} files written, {} kept from the interrupted run; \
             {} of COPY data in {} on disk ({:.1}x); sequences: {}; large objects: {}\n  archive: {}\n",
            if self.resumed { "resumed and finished" } else { "finished" },
            self.seconds,
            self.tables,
            self.rows,
            self.files_written,
            self.files_kept,
            crate::progress::human_bytes(self.raw_bytes),
            crate::progress::human_bytes(self.archive_bytes),
            if self.archive_bytes > 0 { self.raw_bytes as f64 / self.archive_bytes as f64 } else { 0.0 },
            self.sequences,
            self.large_objects,
            self.dump_path.display()
        )
    }
}

/// The definition of a dump: the archive stands in for the target.
pub(crate) fn definition(cfg: &MigrationConfig, dir: &Path) -> Result<Definition> {
    let source = cfg
        .source
        .as_ref()
        .ok_or_else(|| MigrationError::Config("no source given (--source)".into()))?;
    Ok(Definition {
        mode: cfg.mode,
        data_only: cfg.data_only,
        source: EndpointIdentity::of(source),
        target: EndpointIdentity::archive(dir),
        filters: cfg.filters.normalized(),
        large_objects: cfg.large_objects,
        slot_name: None,
        publication_name: None,
    })
}

/// Dump the source into the archive directory `cfg.dump_path`. `binary`
/// allows binary COPY for tables whose types allow it (only when the
/// archive will be restored into the same major version).
pub async fn run(cfg: &MigrationConfig, run: &RunContext) -> Result<DumpReport> {
    let _publishing = run.progress.as_ref().map(|p| p.start_run());
    let r = crate::context::recording(run.progress.clone(), async {
        let binary = cfg.copy_format == CopyFormat::Binary;
        let dir = archive_dir(cfg, "dump")?;
        let _lock = crate::resume::RunLock::acquire(&ResumeToken::path_for(&dir))?;
        run_with(cfg, binary, run)
            .await
            .map_err(|e| disk_full(e, &dir, None))
    })
    .await;
    run.outcome(r)
}

/// A full file system under the archive, said as such: where, how much is
/// still to come when known, and that `--resume` continues once there is
/// room (files already written are kept).
pub(crate) fn disk_full(
    e: MigrationError,
    dir: &std::path::Path,
    remaining: Option<u64>,
) -> MigrationError {
    match e {
        MigrationError::Io { context, source }
            if source.kind() == std::io::ErrorKind::StorageFull
                && !context.starts_with("the file system") =>
        {
            let needed = remaining
                .map(|b| {
                    format!(
                        "; the tables still to write hold {} on the source (less once compressed)",
                        crate::progress::human_bytes(b)
                    )
                })
                .unwrap_or_default();
            MigrationError::Io {
                context: format!(
                    "the file system holding {} is full{needed}. Free space there, or move the \
                     archive elsewhere, then run the same command with --resume: the files \
                     already written are kept. While {context}",
                    dir.display()
                ),
                source,
            }
        }
        e => e,
    }
}

pub(crate) async fn run_with(
    cfg: &MigrationConfig,
    binary: bool,
    run: &RunContext,
) -> Result<DumpReport> {
    let cancel = run.cancel.clone();
    let started = Instant::now();
    if cfg.jobs == 0 {
        return Err(MigrationError::Config("--jobs must be at least 1".into()));
    }
    let dir = archive_dir(cfg, "dump")?;
    let def = definition(cfg, &dir)?;
    let filters = cfg.filters.compile()?;
    let level = cfg.compress_level;
    if !(1..=22).contains(&level) {
        return Err(MigrationError::Config(format!(
            "--compress-level {level} is out of range: zstd levels are 1 (fastest) to 22 (smallest)"
        )));
    }
    let token_path = ResumeToken::path_for(&dir);
    if let Some(t) = crate::resume::completed_token(cfg, &def, &token_path)? {
        info!(token = %token_path.display(), "the dump had completed; nothing left to do");
        return Ok(DumpReport {
            dump_path: dir,
            token_path,
            resumed: true,
            tables: 0,
            files_written: 0,
            files_kept: t.dumped.len(),
            rows: 0,
            raw_bytes: 0,
            archive_bytes: 0,
            sequences: 0,
            large_objects: 0,
            seconds: started.elapsed().as_secs_f64(),
            already_complete: true,
        });
    }
    let (existing, resumed) = crate::resume::resolve_token(cfg, &def, &token_path, "dump")?;
    let migration_id = cfg
        .migration_id
        .clone()
        .unwrap_or_else(|| format!("d{}", &def.hash()[..12]));
    let cfg = &crate::pg::sessions::tagged(cfg, &migration_id);
    let source_ep = cfg.source.clone().expect("checked by definition");
    around(
        Point::EndEarlierRuns,
        crate::pg::sessions::end_earlier(&source_ep, "source"),
    )
    .await?;
    if !resumed {
        prepare_empty_dir(&dir, cfg.force_clean)?;
    } else {
        let removed = archive::remove_partial_files(&dir)?;
        if !removed.is_empty() {
            info!(
                files = removed.len(),
                "removed unfinished files of the interrupted dump"
            );
        }
    }

    let src = connect::connect(&source_ep, "source").await?;
    session::setup_source(&src).await?;
    let source_version = catalog::server_version_num(&src).await?;
    crate::target::refuse_small_lock_table(&src, &filters, cfg.jobs).await?;
    let (snapshot_id, _) = session::begin_exported_snapshot(&src).await?;
    let snapshot_time = chrono::Utc::now();
    let script = if cfg.data_only {
        None
    } else {
        let opts = schema::ReadOptions::of(cfg);
        let script = schema::read_with(&source_ep, Some(&snapshot_id), &opts).await?;
        if !script.unsupported.is_empty() {
            return Err(MigrationError::Unsupported(format!(
                "the source has objects that schema reproduction does not cover yet: {}. \
                 Dump with --data-only and create the schema on the target yourself",
                crate::progress::summarize(&script.unsupported)
            )));
        }
        Some(script)
    };
    let needs = TargetNeeds::read(&src, source_version, cfg).await?;
    let (tables, seqs, los) =
        catalog::data_in_scope(&src, &filters, !cfg.data_only, cfg.large_objects).await?;
    let dbname: String =
        crate::pg::query_one_once(&src, "SELECT pg_catalog.current_database()::text")
            .await
            .map_err(|e| MigrationError::db("reading the source database's name", e))?
            .get(0);
    info!(source = %source_ep, archive = %dir.display(), tables = tables.len(), binary, "starting dump");

    let mut token = match existing {
        Some(t) if resumed => t,
        _ => ResumeToken::new(migration_id.clone(), def.clone(), dir.clone()),
    };
    token.snapshot_name = Some(snapshot_id.clone());
    token.stage_started(Stage::Dump);
    faults::before(Point::RecordStart).await;
    token.save(&token_path)?;
    faults::after(Point::RecordStart).await;
    let store = Arc::new(TokenStore::new(token_path.clone(), token).observed(run.token_observer()));

    let mut manifest = Manifest::new(
        dbname,
        source_version,
        needs.encoding.clone(),
        snapshot_time,
    );
    manifest.snapshot_id = Some(snapshot_id.clone());
    manifest.copy_format = if binary { "binary" } else { "text" }.to_string();
    manifest.compression.level = level;
    manifest.roles = needs.roles.clone();
    manifest.lc_collate = Some(needs.lc_collate.clone());
    manifest.lc_ctype = Some(needs.lc_ctype.clone());
    manifest.locale_provider = needs.locale_provider.clone();
    manifest.extensions = needs.extensions.clone();
    manifest.database_tablespace = needs.tablespace.clone();
    manifest.data_only = cfg.data_only;
    if let Some(script) = &script {
        faults::before(Point::DumpSchema).await;
        let steps = serde_json::to_vec_pretty(script).expect("schema script serializes");
        manifest.schema = vec![
            archive::write_small_file_async(
                dir.clone(),
                PRE_DATA_FILE,
                script.to_sql(&[Part::PreData]).into_bytes(),
            )
            .await?,
            archive::write_small_file_async(
                dir.clone(),
                POST_DATA_FILE,
                script
                    .to_sql(&[Part::PostData, Part::Acl, Part::Last])
                    .into_bytes(),
            )
            .await?,
            archive::write_small_file_async(dir.clone(), STEPS_FILE, steps).await?,
        ];
        faults::after(Point::DumpSchema).await;
    }

    // Tables: the same plan as a direct copy, each item into its own file.
    let block_size = catalog::block_size(&src).await?;
    let total: u64 = tables.iter().map(|t| t.bytes.max(0) as u64).sum();
    let decision = copy::plan::decide_split(cfg.split_bytes, total, cfg.jobs, source_version, None);
    info!(split_bytes = decision.bytes, "split: {}", decision.reason);
    let split = decision.bytes;
    let stored = store.snapshot().chunk_plan.clone();
    let (items, chunk_plan) = copy::plan::plan(
        &tables,
        split,
        block_size,
        source_version >= 140000,
        &stored,
    );
    store.update(|t| t.chunk_plan = chunk_plan)?;
    if let Some(p) = &run.progress {
        // Totals make the percentage, rate and ETA of the dump.
        p.set_totals(
            items.len() as u64,
            tables
                .iter()
                .map(|t| (t.qualified(), t.bytes.max(0) as u64))
                .collect(),
        );
    }
    let done = store.snapshot().dumped.clone();
    let mut todo = Vec::new();
    let mut kept = 0;
    for item in items {
        let name = item.name(&tables[item.table]);
        match done.get(&name) {
            Some(f)
                if dir.join(&f.file.path).metadata().ok().map(|m| m.len()) == Some(f.file.size) =>
            {
                kept += 1
            }
            _ => todo.push(item),
        }
    }
    let ctx = Arc::new(CopyContext {
        input: copy::Input::Server {
            endpoint: Box::new(source_ep.clone()),
            snapshot_id: snapshot_id.clone(),
        },
        output: copy::Output::Archive {
            dir: dir.clone(),
            level,
        },
        migration_id: store.snapshot().migration_id.clone(),
        jobs: cfg.jobs,
        index_jobs: 0,
        binary,
        analyze: false,
        token: store.clone(),
        progress: run.progress.clone(),
        rate: cfg
            .max_rate
            .map(|r| Arc::new(copy::rate::RateLimit::new(r))),
        pressure: cfg
            .source_pressure
            .clone()
            .map(|thresholds| copy::pressure::Watch {
                thresholds,
                source: source_ep.clone(),
                slot: None,
            }),
    });
    let written = todo.len();
    let remaining: u64 = todo
        .iter()
        .map(|item| item.table)
        .collect::<std::collections::BTreeSet<_>>()
        .iter()
        .map(|&i| tables[i].bytes.max(0) as u64)
        .sum();
    around(
        Point::CopyData,
        copy::copy_tables(
            ctx,
            tables.clone().into(),
            todo,
            &mut Vec::new(),
            cancel.clone(),
        ),
    )
    .await
    .map_err(|e| disk_full(e, &dir, Some(remaining)))?;

    // Sequences (current values, as pg_dump) and large objects, on the snapshot session.
    faults::before(Point::Sequences).await;
    let mut seq_values = Vec::new();
    let states = catalog::sequence_states(&src, &seqs).await?;
    for (s, (last_value, is_called)) in seqs.iter().zip(states) {
        seq_values.push(SequenceValue {
            schema: s.schema.clone(),
            name: s.name.clone(),
            last_value,
            is_called,
        });
    }
    manifest.sequences = Some(
        archive::write_small_file_async(
            dir.clone(),
            SEQUENCES_FILE,
            serde_json::to_vec_pretty(&seq_values).expect("sequences serialize"),
        )
        .await?,
    );
    faults::after(Point::Sequences).await;
    if !los.is_empty() {
        let meta: Vec<LargeObjectMeta> = los.iter().map(LargeObjectMeta::from).collect();
        manifest.large_objects = Some(
            archive::write_small_file_async(
                dir.clone(),
                LARGE_OBJECTS_FILE,
                serde_json::to_vec_pretty(&meta).expect("large objects serialize"),
            )
            .await?,
        );
        manifest.large_object_data = Some(
            around(
                Point::LargeObjects,
                dump_large_objects(&src, &dir, level, &cancel),
            )
            .await?,
        );
    }
    let _ = src.batch_execute("COMMIT").await;

    // The manifest, last.
    let dumped = store.snapshot().dumped.clone();
    let mut rows = 0;
    let mut raw = 0;
    for t in &tables {
        let q = t.qualified();
        let n = store
            .snapshot()
            .chunk_plan
            .get(&q)
            .map_or(1, |p| p.len() as u32);
        let mut files = Vec::new();
        for c in 0..n {
            let name = copy::plan::item_name(&q, c, n);
            let f = dumped.get(&name).cloned().ok_or_else(|| {
                MigrationError::Internal(format!("dump finished without a file for {name}"))
            })?;
            files.push(f);
        }
        let t_rows = files.iter().map(|f| f.rows).sum();
        rows += t_rows;
        raw += files.iter().map(|f| f.raw_bytes).sum::<u64>();
        manifest.tables.push(TableEntry {
            schema: t.schema.clone(),
            name: t.name.clone(),
            qualified: q,
            columns: t.columns.to_vec(),
            rows: t_rows,
            files,
            row_filter: t.row_filter.clone(),
        });
    }
    faults::before(Point::DumpManifest).await;
    manifest.write(&dir)?;
    faults::after(Point::DumpManifest).await;
    faults::before(Point::Complete).await;
    store.update(|t| {
        t.stage_done(Stage::Dump);
        t.completed = true;
    })?;
    faults::after(Point::Complete).await;
    info!(archive = %dir.display(), "dump complete");
    Ok(DumpReport {
        dump_path: dir,
        token_path,
        resumed,
        tables: tables.len(),
        files_written: written,
        files_kept: kept,
        rows,
        raw_bytes: raw,
        archive_bytes: manifest.total_size(),
        sequences: seqs.len(),
        large_objects: los.len(),
        seconds: started.elapsed().as_secs_f64(),
        already_complete: false,
    })
}

/// A new dump needs an empty (or absent) directory: never mix two dumps.
fn prepare_empty_dir(dir: &Path, force_clean: bool) -> Result<()> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                if !force_clean {
                    return Err(MigrationError::Config(format!(
                        "dump directory {} is not empty: dump into a new directory, or pass --force-clean to replace its contents",
                        dir.display()
                    )));
                }
                std::fs::remove_dir_all(dir).map_err(|e| {
                    MigrationError::io(format!("emptying {} (--force-clean)", dir.display()), e)
                })?;
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(MigrationError::io(format!("reading {}", dir.display()), e));
        }
    }
    std::fs::create_dir_all(dir)
        .map_err(|e| MigrationError::io(format!("creating {}", dir.display()), e))
}

/// Large object contents as one binary COPY stream of `(oid, data)`, read
/// on the snapshot session.
async fn dump_large_objects(
    src: &Client,
    dir: &Path,
    level: i32,
    cancel: &CancellationToken,
) -> Result<DataFile> {
    let path = "data/large_objects.copy.zst".to_string();
    let mut w = AsyncDataWriter::create(dir.to_path_buf(), path, level).await?;
    let out = src
        .copy_out(
            "COPY (SELECT oid, pg_catalog.lo_get(oid) FROM pg_catalog.pg_largeobject_metadata ORDER BY oid) TO STDOUT (FORMAT binary)",
        )
        .await
        .map_err(|e| MigrationError::db("reading large objects from the source", e))?;
    futures::pin_mut!(out);
    let mut rows = copy::RowCounter::new(true);
    while let Some(chunk) = out.next().await {
        if cancel.is_cancelled() {
            return Err(MigrationError::Cancelled);
        }
        let chunk =
            chunk.map_err(|e| MigrationError::db("reading large objects from the source", e))?;
        rows.feed(&chunk);
        w.write(chunk).await?;
    }
    let written = w.finish().await?;
    Ok(DataFile {
        file: written.entry,
        chunk: 0,
        chunks: 1,
        pages: None,
        rows: rows.rows(),
        format: DataFormat::Binary,
        raw_bytes: written.raw_bytes,
    })
}
