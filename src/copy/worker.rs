//! One copy worker: streaming COPY bytes from the source (a session on the
//! shared snapshot) or an archive file, into the target or an archive file.
//!
//! The bytes are passed through untouched: `COPY ... TO STDOUT` on the
//! source feeds `COPY ... FROM STDIN` on the target, or a zstd file.
//! Backpressure holds on every path (tokio-postgres stops reading the source
//! socket while the target is slow; the archive's bounded channels do the
//! same), so memory stays flat whatever the table size.

use crate::faults::{self, Point};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::Bytes;
use futures::{SinkExt, Stream, StreamExt};
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::plan::WorkItem;
use super::rows::RowCounter;
use super::{record_done, CopyContext, Input, Output, Scheduler, STATE_SCHEMA};
use crate::archive::{self, AsyncDataWriter, DataFile, DataFormat};
use crate::error::{MigrationError, Result};
use crate::pg::catalog::TableInfo;
use crate::pg::{connect, quote, session};

/// How often a long table copy logs its progress.
const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// The COPY wire format used for a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WireFormat {
    /// `COPY ... (FORMAT binary)`: same major, or types that allow it.
    Binary,
    /// `COPY ... (FORMAT text)`.
    Text,
}

/// One copy worker: takes items from the shared queue until it is empty.
/// Reads from the source (on the shared snapshot) or an archive, writes to
/// the target or an archive, as the context says.
pub(super) async fn run(id: usize, sched: &Scheduler, stop: &CancellationToken) -> Result<()> {
    let ctx = &sched.ctx;
    // The run reached both servers already: a failure now is a fault of the
    // moment (a link down), retried like one.
    let (mut src, mut dst) = {
        let mut retry = ctx.retry();
        loop {
            match reopen(ctx).await {
                Ok(sessions) => break sessions,
                Err(e) => retry.wait(e, "opening sessions", stop).await?,
            }
        }
    };
    let mut dst_pid = target_pid(&dst).await;
    debug!(worker = id, "copy worker ready");
    let mut first = true;
    // Small tables travel several per target transaction: one commit (one
    // WAL flush) and one marker round trip for the group instead of each.
    let group_limit = if dst.is_some() { GROUP_ITEMS } else { 1 };
    loop {
        // A whole-cluster migration's budget: taken before the items, so a
        // waiting worker holds none back from another database.
        let _permit = crate::recorded::job_permit().await;
        let group = sched.next_items(group_limit, SMALL_ITEM_BYTES, GROUP_BYTES);
        if group.is_empty() {
            break;
        }
        if stop.is_cancelled() {
            return Err(MigrationError::Cancelled);
        }
        let mut results = Vec::with_capacity(group.len());
        if let (Output::Target(_), true) = (&ctx.output, dst.is_some()) {
            // A transient fault (a dropped connection, a server restarting)
            // loses only this transaction: the group starts again from its
            // beginning on new sessions, the same snapshot.
            let mut retry = ctx.retry();
            loop {
                let d = dst.as_ref().expect("target session");
                results.clear();
                let loaded = async {
                    d.batch_execute("BEGIN").await.map_err(|e| {
                        MigrationError::db("starting a copy transaction on the target", e)
                    })?;
                    for item in group.iter() {
                        let t = &sched.tables[item.table];
                        let (started, format, input) =
                            start_item(ctx, src.as_ref(), id, t, item, &mut first).await?;
                        let r = load_item(ctx, d, t, item, format, input, stop).await?;
                        results.push(ItemResult { started, ..r });
                    }
                    // The rows are in, not committed.
                    faults::before(Point::CopyItem).await;
                    d.batch_execute("COMMIT").await.map_err(|e| {
                        MigrationError::db("committing a copy transaction on the target", e)
                    })
                };
                let Err(e) = loaded.await else {
                    break;
                };
                let _ = d.batch_execute("ROLLBACK").await;
                let what = group
                    .first()
                    .map(|item| item.name(&sched.tables[item.table]))
                    .unwrap_or_default();
                retry.wait(e, &what, stop).await?;
                // New sessions on both sides: the source's was in the middle
                // of a COPY, the target's may be gone.
                loop {
                    match reopen(ctx).await {
                        Ok((s, d)) => {
                            (src, dst) = (s, d);
                            break;
                        }
                        Err(e) => retry.wait(e, &what, stop).await?,
                    }
                }
                let lost_pid = std::mem::replace(&mut dst_pid, target_pid(&dst).await);
                first = true;
                // A connection lost during COMMIT leaves the outcome unknown:
                // the group's markers, written in its transaction, tell,
                // once the lost session's process has ended (it may be
                // committing still).
                if results.len() == group.len() {
                    let d = dst.as_ref().expect("target session");
                    if let Some(p) = lost_pid {
                        crate::pg::sessions::settle_lost(d, p, "target").await?;
                    }
                    let committed = super::committed_items(d, &ctx.migration_id).await?;
                    if group
                        .iter()
                        .all(|item| committed.contains(&item.name(&sched.tables[item.table])))
                    {
                        info!(worker = id, item = %what, "the interrupted commit had gone through");
                        break;
                    }
                }
            }
        } else if let Output::Archive { dir, level } = &ctx.output {
            faults::before(Point::CopyItem).await;
            for item in &group {
                let t = &sched.tables[item.table];
                let (started, format, input) =
                    start_item(ctx, src.as_ref(), id, t, item, &mut first).await?;
                let r = dump_item(dir, *level, t.oid, item, format, input, stop).await?;
                results.push(ItemResult { started, ..r });
            }
        } else {
            unreachable!("target workers have a session");
        }
        // Committed (or written), not recorded.
        faults::after(Point::CopyItem).await;
        let finished = Instant::now();
        let mut done = Vec::with_capacity(group.len());
        for (item, r) in group.iter().zip(results) {
            let t = &sched.tables[item.table];
            let name = item.name(t);
            let r = ItemResult {
                finished: if group.len() > 1 {
                    finished
                } else {
                    r.finished
                },
                snapshot: src.as_ref().map(|s| s.1.clone()).unwrap_or_default(),
                ..r
            };
            // A re-shaped table names where its rows went.
            let item = match &t.load_into {
                Some(l) => format!("{name} into {}", l.relation),
                None => name.clone(),
            };
            info!(
                item = %item,
                rows = r.rows,
                bytes = r.bytes,
                seconds = format!("{:.2}", r.finished.duration_since(r.started).as_secs_f64()),
                format = ?r.format,
                freeze = r.freeze,
                "copied"
            );
            done.push((name, r));
        }
        // Items that committed together are recorded together (one fsync).
        record_done(ctx, &done)?;
        for (item, (_, r)) in group.iter().zip(done) {
            sched.item_done(item, r);
        }
        if let Some(p) = &ctx.progress {
            let _ = p.worker(id, None);
        }
    }
    if let Some((src, _)) = src {
        let _ = src.batch_execute("COMMIT").await;
    }
    Ok(())
}

/// The server process of the target session, to find it again if the
/// session is lost (see [`crate::pg::sessions::settle_lost`]).
async fn target_pid(dst: &Option<Client>) -> Option<i32> {
    match dst {
        Some(d) => crate::pg::sessions::backend_pid(d).await.ok(),
        None => None,
    }
}

/// The source session of a worker: on the shared snapshot.
async fn open_source(ctx: &CopyContext) -> Result<Option<(Client, String)>> {
    match &ctx.input {
        Input::Server {
            endpoint,
            snapshot_id,
        } => {
            let src = connect::connect(endpoint, "source").await?;
            session::setup_source(&src).await?;
            let snapshot = session::import_snapshot(&src, snapshot_id).await?;
            Ok(Some((src, snapshot)))
        }
        Input::Archive(_) => Ok(None),
    }
}

async fn open_target(ctx: &CopyContext) -> Result<Option<Client>> {
    match &ctx.output {
        Output::Target(endpoint) => {
            let dst = connect::connect(endpoint, "target").await?;
            session::setup_target(&dst).await?;
            Ok(Some(dst))
        }
        Output::Archive { .. } => Ok(None),
    }
}

async fn reopen(ctx: &CopyContext) -> Result<(Option<(Client, String)>, Option<Client>)> {
    Ok((open_source(ctx).await?, open_target(ctx).await?))
}

/// Tables under this size (estimated heap bytes) may share a transaction.
const SMALL_ITEM_BYTES: u64 = 1 << 20;
/// At most this many items, and this many bytes, per shared transaction.
const GROUP_ITEMS: usize = 32;
const GROUP_BYTES: u64 = 8 << 20;

/// Start reading one item: before each item after the first, a new
/// snapshot transaction on the same snapshot (so a worker holds one source
/// table's locks at a time); then show it and open its input, which adds
/// its COPY bytes to the progress's counter for the worker as they flow
/// (one relaxed atomic add a chunk), so the percentage moves inside a big
/// table.
async fn start_item(
    ctx: &CopyContext,
    src: Option<&(Client, String)>,
    worker: usize,
    t: &TableInfo,
    item: &WorkItem,
    first: &mut bool,
) -> Result<(Instant, WireFormat, Rows)> {
    if let (Some((src, _)), Input::Server { snapshot_id, .. }) = (src, &ctx.input) {
        if !*first {
            session::reimport_snapshot(src, snapshot_id).await?;
        }
    }
    *first = false;
    let started = Instant::now();
    let (format, input) = open_input(ctx, src, t, item).await?;
    let input: Rows = match &ctx.progress {
        Some(p) => {
            let moved = p.worker(worker, Some(&item.name(t)));
            Box::pin(input.inspect(move |chunk| {
                if let Ok(b) = chunk {
                    moved.fetch_add(b.len() as u64, Ordering::Relaxed);
                }
            }))
        }
        None => input,
    };
    Ok((started, format, input))
}

/// A COPY data stream, whatever it comes from.
type Rows = Pin<Box<dyn Stream<Item = Result<Bytes>> + Send>>;

/// What one item's copy did.
#[derive(Debug, Clone)]
pub(super) struct ItemResult {
    pub rows: u64,
    pub bytes: u64,
    pub started: Instant,
    pub finished: Instant,
    pub format: WireFormat,
    pub freeze: bool,
    pub snapshot: String,
    /// For a dump: the file written.
    pub file: Option<DataFile>,
}

/// Start reading an item: `COPY ... TO STDOUT` on the source, or its
/// archive file.
async fn open_input(
    ctx: &CopyContext,
    src: Option<&(Client, String)>,
    t: &TableInfo,
    item: &WorkItem,
) -> Result<(WireFormat, Rows)> {
    if let Input::Archive(archive) = &ctx.input {
        let file = item.file.as_ref().expect("archive items name their file");
        let format = match file.format {
            DataFormat::Binary => WireFormat::Binary,
            DataFormat::Text => WireFormat::Text,
        };
        return Ok((format, Box::pin(archive.open_data(file)?)));
    }
    let (src, _) = src.expect("server input has a session");
    let name = t.qualified();
    let format = if ctx.binary && t.binary_safe {
        WireFormat::Binary
    } else {
        WireFormat::Text
    };
    let cols = quote::ident_list(&t.columns);
    let opts = match format {
        WireFormat::Binary => " (FORMAT binary)",
        WireFormat::Text => "",
    };
    // A table whose columns are all generated (or that has none) is copied
    // with an empty select list and no column list.
    let sql = match (&item.pages, t.columns.is_empty()) {
        _ if t.row_filter.is_some() => format!(
            "COPY (SELECT {} FROM ONLY {name} {}) TO STDOUT{opts}",
            if t.columns.is_empty() {
                String::new()
            } else {
                cols.clone()
            },
            t.row_filter.as_deref().unwrap_or_default()
        ),
        (None, false) => format!("COPY {name} ({cols}) TO STDOUT{opts}"),
        (None, true) => format!("COPY (SELECT FROM ONLY {name}) TO STDOUT{opts}"),
        (Some(p), _) => format!(
            "COPY (SELECT {cols} FROM ONLY {name} WHERE {}) TO STDOUT{opts}",
            p.predicate()
        ),
    };
    let item_name = item.name(t);
    let out = src
        .copy_out(sql.as_str())
        .await
        .map_err(|e| MigrationError::db(format!("reading {item_name} from the source"), e))?;
    let rows = super::batch::batched(out).map(move |r| {
        r.map_err(|e| MigrationError::db(format!("reading {item_name} from the source"), e))
    });
    Ok((format, Box::pin(rows)))
}

/// Load one item inside the caller's target transaction, which also
/// records it in `_pg_dbmigrator.copied`: it lands wholly or not at all. A
/// whole table of 1 MB or more is emptied first in the same transaction,
/// which lets COPY FREEZE write the rows already frozen (no hint-bit
/// rewrite, no anti-wraparound vacuum later). Chunks cannot be
/// emptied (their rows are mixed with other chunks'), and need not be:
/// an uncommitted chunk left nothing behind.
async fn load_item(
    ctx: &CopyContext,
    dst: &Client,
    t: &TableInfo,
    item: &WorkItem,
    format: WireFormat,
    input: Rows,
    stop: &CancellationToken,
) -> Result<ItemResult> {
    // A re-shaped table loads into another relation, which other source
    // tables may fill too: never emptied here, and a partitioned one
    // takes no FREEZE.
    let name = t.target_name();
    let item_name = item.name(t);
    let tdb = |what: &str, e| MigrationError::db(format!("{what} {item_name} on the target"), e);
    // An extension's configuration table holds the extension's own rows
    // already: append the user's, never empty it. A small table is not
    // emptied either: nothing can be in it (an uncommitted load left
    // nothing), and TRUNCATE's new files cost three times its whole load,
    // far more than FREEZE saves on a few pages.
    let freeze = if item.is_whole()
        && t.row_filter.is_none()
        && t.load_into.is_none()
        && t.bytes >= SMALL_ITEM_BYTES as i64
    {
        empty_table(dst, &name).await?
    } else {
        false
    };
    let mut opts = Vec::new();
    if format == WireFormat::Binary {
        opts.push("FORMAT binary");
    }
    if freeze {
        opts.push("FREEZE");
    }
    let opts = if opts.is_empty() {
        String::new()
    } else {
        format!(" ({})", opts.join(", "))
    };
    let col_list = if t.columns.is_empty() {
        String::new()
    } else {
        format!(" ({})", quote::ident_list(&t.columns))
    };
    let copy_in = format!("COPY {name}{col_list} FROM STDIN{opts}");
    let sink = dst
        .copy_in::<_, Bytes>(copy_in.as_str())
        .await
        .map_err(|e| tdb("starting COPY into", e))?;
    futures::pin_mut!(sink);
    let bytes = pump(
        input,
        &item_name,
        item.est_bytes,
        stop,
        Sink::Copy(sink.as_mut(), &|e| tdb("writing", e)),
    )
    .await?;
    let rows = sink
        .as_mut()
        .finish()
        .await
        .map_err(|e| tdb("finishing COPY into", e))?;
    if let Some(file) = &item.file {
        // The end-to-end check of a restore: the rows the dump counted.
        if rows != file.rows {
            return Err(MigrationError::Archive(format!(
                "archive file {} of {item_name} loaded {rows} rows but the manifest says {}: the archive does not match its manifest — dump again",
                file.file.path, file.rows
            )));
        }
    }
    dst.batch_execute(&format!(
        "INSERT INTO {STATE_SCHEMA}.copied (migration_id, item, rows, bytes) VALUES ({}, {}, {rows}, {bytes})",
        quote::literal(&ctx.migration_id),
        quote::literal(&item_name)
    ))
    .await
    .map_err(|e| tdb("recording the copy of", e))?;
    Ok(ItemResult {
        rows,
        bytes,
        started: Instant::now(),
        finished: Instant::now(),
        format,
        freeze,
        snapshot: String::new(),
        file: None,
    })
}

/// Write one item to its archive file; the file gets its final name only
/// once complete (see [`AsyncDataWriter`]).
/// Files are named by table OID and chunk: stable across attempts of the
/// same dump, whatever order the tables come in.
async fn dump_item(
    dir: &std::path::Path,
    level: i32,
    oid: u32,
    item: &WorkItem,
    format: WireFormat,
    input: Rows,
    stop: &CancellationToken,
) -> Result<ItemResult> {
    let path = archive::data_file_path(oid, item.chunk);
    let mut writer = AsyncDataWriter::create(dir.to_path_buf(), path.clone(), level).await?;
    let mut counter = RowCounter::new(format == WireFormat::Binary);
    let bytes = pump(
        input,
        &path,
        item.est_bytes,
        stop,
        Sink::File(&mut writer, &mut counter),
    )
    .await?;
    let written = writer.finish().await?;
    let rows = counter.rows();
    Ok(ItemResult {
        rows,
        bytes,
        started: Instant::now(),
        finished: Instant::now(),
        format,
        freeze: false,
        snapshot: String::new(),
        file: Some(DataFile {
            file: written.entry,
            chunk: item.chunk,
            chunks: item.chunks,
            pages: item.pages.map(|p| (p.start, p.end)),
            rows,
            format: match format {
                WireFormat::Binary => DataFormat::Binary,
                WireFormat::Text => DataFormat::Text,
            },
            raw_bytes: written.raw_bytes,
        }),
    })
}

/// Where [`pump`] puts the bytes.
enum Sink<'a> {
    Copy(
        Pin<&'a mut tokio_postgres::CopyInSink<Bytes>>,
        &'a (dyn Fn(tokio_postgres::Error) -> MigrationError + Sync),
    ),
    File(&'a mut AsyncDataWriter, &'a mut RowCounter),
}

impl Sink<'_> {
    async fn send(&mut self, chunk: Bytes) -> Result<()> {
        match self {
            Sink::Copy(sink, err) => sink.as_mut().send(chunk).await.map_err(err),
            Sink::File(w, rows) => {
                rows.feed(&chunk);
                w.write(chunk).await
            }
        }
    }
}

/// Move a COPY stream into `sink`, logging progress on long items and
/// stopping at once on cancellation. Returns the bytes moved.
async fn pump(
    mut input: Rows,
    what: &str,
    estimated: u64,
    stop: &CancellationToken,
    mut sink: Sink<'_>,
) -> Result<u64> {
    let started = Instant::now();
    let mut bytes: u64 = 0;
    let mut last_log = Instant::now();
    loop {
        let next = tokio::select! {
            biased;
            _ = stop.cancelled() => return Err(MigrationError::Cancelled),
            n = input.next() => n,
        };
        let Some(chunk) = next.transpose()? else {
            return Ok(bytes);
        };
        bytes += chunk.len() as u64;
        if last_log.elapsed() >= PROGRESS_EVERY {
            last_log = Instant::now();
            let secs = started.elapsed().as_secs_f64();
            info!(
                item = %what,
                bytes,
                mb_per_s = format!("{:.1}", bytes as f64 / secs / 1e6),
                estimated_total = estimated,
                "copying"
            );
        }
        tokio::select! {
            biased;
            _ = stop.cancelled() => return Err(MigrationError::Cancelled),
            r = sink.send(chunk) => r?,
        }
    }
}

/// Empty a table inside the caller's transaction. TRUNCATE is refused on a
/// table other tables reference by foreign key (or without the privilege);
/// DELETE then. Returns whether it was truncated, which is what allows
/// COPY FREEZE in the same transaction.
pub(crate) async fn empty_table(dst: &Client, name: &str) -> Result<bool> {
    let r = dst
        .batch_execute(&format!(
            "SAVEPOINT dbm_empty; TRUNCATE ONLY {name}; RELEASE SAVEPOINT dbm_empty"
        ))
        .await;
    if r.is_err() {
        dst.batch_execute(&format!(
            "ROLLBACK TO SAVEPOINT dbm_empty; DELETE FROM ONLY {name}; RELEASE SAVEPOINT dbm_empty"
        ))
        .await
        .map_err(|e| MigrationError::db(format!("emptying {name} on the target"), e))?;
        return Ok(false);
    }
    Ok(true)
}

/// Empty a partitioned table, all its partitions, inside the caller's
/// transaction (`TRUNCATE ONLY` is refused on a partitioned table).
pub(crate) async fn empty_partitioned(dst: &Client, name: &str) -> Result<()> {
    let r = dst
        .batch_execute(&format!(
            "SAVEPOINT dbm_empty; TRUNCATE {name}; RELEASE SAVEPOINT dbm_empty"
        ))
        .await;
    if r.is_err() {
        dst.batch_execute(&format!(
            "ROLLBACK TO SAVEPOINT dbm_empty; DELETE FROM {name}; RELEASE SAVEPOINT dbm_empty"
        ))
        .await
        .map_err(|e| MigrationError::db(format!("emptying {name} on the target"), e))?;
    }
    Ok(())
}
