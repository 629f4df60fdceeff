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
use tokio_postgres::{Client, Statement};
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
    // The source session's snapshot transaction is still its first one.
    let first = std::sync::atomic::AtomicBool::new(true);
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
                    // The transaction and every COPY of the group, prepared
                    // on both ends in one round trip each.
                    let formats: Vec<WireFormat> = group
                        .iter()
                        .map(|item| item_format(ctx, &sched.tables[item.table], item))
                        .collect();
                    let begin = async {
                        d.batch_execute("BEGIN").await.map_err(|e| {
                            MigrationError::db("starting a copy transaction on the target", e)
                        })
                    };
                    let (_, sinks, sources) = futures::try_join!(
                        begin,
                        prepare_all(
                            Some(d),
                            group.iter().zip(&formats).map(|(item, f)| {
                                let t = &sched.tables[item.table];
                                (!may_freeze(t, item)).then(|| copy_in_sql(t, *f, false))
                            }),
                            "target"
                        ),
                        prepare_all(
                            match &ctx.input {
                                Input::Server { .. } => src.as_ref().map(|s| &s.0),
                                Input::Archive(_) => None,
                            },
                            group.iter().zip(&formats).map(|(item, f)| {
                                Some(copy_out_sql(&sched.tables[item.table], item, *f))
                            }),
                            "source"
                        )
                    )?;
                    // Both ends of an item start at once (across a
                    // distance the source's and the target's round trips
                    // overlap), and while one item's COPY ends, the next
                    // one's starts (sent behind its end, in order).
                    let src_session = src.as_ref();
                    let first = &first;
                    let open = |k: usize| {
                        let item = &group[k];
                        let t = &sched.tables[item.table];
                        let format = formats[k];
                        let (source, sink) = (sources[k].as_ref(), sinks[k].as_ref());
                        async move {
                            let ((started, format, input), (sink, freeze)) = futures::try_join!(
                                start_item(
                                    ctx,
                                    sched.gate.as_ref(),
                                    src_session,
                                    id,
                                    t,
                                    item,
                                    format,
                                    source,
                                    first
                                ),
                                open_sink(d, t, item, format, sink)
                            )?;
                            Ok::<_, MigrationError>(Opened {
                                started,
                                format,
                                input,
                                sink,
                                freeze,
                            })
                        }
                    };
                    let mut opened = Some(open(0).await?);
                    for (k, item) in group.iter().enumerate() {
                        let t = &sched.tables[item.table];
                        let o = opened.take().expect("opened");
                        let next = async {
                            match k + 1 < group.len() {
                                true => open(k + 1).await.map(Some),
                                false => Ok(None),
                            }
                        };
                        let (r, next) =
                            load_item(t, item, o.format, o.input, o.sink, o.freeze, stop, next)
                                .await?;
                        results.push(ItemResult {
                            started: o.started,
                            ..r
                        });
                        opened = next;
                    }
                    // The rows are in, not committed: their markers and the
                    // commit travel together.
                    faults::before(Point::CopyItem).await;
                    let markers: Vec<String> = group
                        .iter()
                        .zip(&results)
                        .map(|(item, r)| {
                            format!(
                                "({}, {}, {}, {})",
                                quote::literal(&ctx.migration_id),
                                quote::literal(&item.name(&sched.tables[item.table])),
                                r.rows,
                                r.bytes
                            )
                        })
                        .collect();
                    d.batch_execute(&format!(
                        "INSERT INTO {STATE_SCHEMA}.copied (migration_id, item, rows, bytes) VALUES {}; COMMIT",
                        markers.join(", ")
                    ))
                    .await
                    .map_err(|e| {
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
                first.store(true, Ordering::Relaxed);
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
                let format = item_format(ctx, t, item);
                let (started, format, input) = start_item(
                    ctx,
                    sched.gate.as_ref(),
                    src.as_ref(),
                    id,
                    t,
                    item,
                    format,
                    None,
                    &first,
                )
                .await?;
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
/// table. The item starts, and each chunk is passed on, only once `gate`
/// (`--source-pressure`) is open, each chunk also after its share of
/// `--max-rate`'s clock: while a worker waits it reads no more of its COPY
/// stream, so the source's COPY waits too.
#[allow(clippy::too_many_arguments)]
async fn start_item(
    ctx: &CopyContext,
    gate: Option<&super::pressure::Gate>,
    src: Option<&(Client, String)>,
    worker: usize,
    t: &TableInfo,
    item: &WorkItem,
    format: WireFormat,
    prepared: Option<&Statement>,
    first: &std::sync::atomic::AtomicBool,
) -> Result<(Instant, WireFormat, Rows)> {
    // A paused copy starts nothing new either: no new snapshot
    // transaction, no new table's lock taken while a session waits
    // behind ours.
    if let Some(g) = gate {
        g.wait().await;
    }
    let started = Instant::now();
    // The new snapshot transaction and the COPY go out together (sent in
    // this order, answered in it): one round trip, not two.
    let renew = async {
        match (src, &ctx.input) {
            (Some((src, _)), Input::Server { snapshot_id, .. })
                if !first.load(Ordering::Relaxed) =>
            {
                session::reimport_snapshot(src, snapshot_id).await
            }
            _ => Ok(()),
        }
    };
    let (renewed, opened) = futures::join!(renew, open_input(ctx, src, t, item, format, prepared));
    first.store(false, Ordering::Relaxed);
    renewed?;
    let input = opened?;
    // Held at the gate and to the cap before anything counts it as moved.
    let input: Rows = match (&ctx.rate, gate) {
        (None, None) => input,
        (limit, gate) => {
            let (limit, gate) = (limit.clone(), gate.cloned());
            Box::pin(input.then(move |chunk| {
                let (limit, gate) = (limit.clone(), gate.clone());
                async move {
                    if let Ok(b) = &chunk {
                        if let Some(g) = &gate {
                            g.wait().await;
                        }
                        if let Some(l) = &limit {
                            l.take(b.len()).await;
                        }
                    }
                    chunk
                }
            }))
        }
    };
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

/// Prepare these statements on `client` at once (pipelined: one round
/// trip for all); `None` where there is no statement or no client.
async fn prepare_all(
    client: Option<&Client>,
    sqls: impl Iterator<Item = Option<String>>,
    side: &str,
) -> Result<Vec<Option<Statement>>> {
    let sqls: Vec<Option<String>> = sqls.collect();
    let Some(c) = client else {
        return Ok(sqls.iter().map(|_| None).collect());
    };
    futures::future::try_join_all(sqls.iter().map(|sql| async move {
        match sql {
            Some(sql) => c.prepare(sql).await.map(Some),
            None => Ok(None),
        }
    }))
    .await
    .map_err(|e| MigrationError::db(format!("preparing the COPY statements on the {side}"), e))
}

/// The COPY format of an item: its archive file's, or binary where the
/// context and the table's types allow it.
fn item_format(ctx: &CopyContext, t: &TableInfo, item: &WorkItem) -> WireFormat {
    match (&ctx.input, &item.file) {
        (Input::Archive(_), Some(file)) => match file.format {
            DataFormat::Binary => WireFormat::Binary,
            DataFormat::Text => WireFormat::Text,
        },
        _ if ctx.binary && t.binary_safe => WireFormat::Binary,
        _ => WireFormat::Text,
    }
}

/// An item's `COPY ... TO STDOUT` on the source.
fn copy_out_sql(t: &TableInfo, item: &WorkItem, format: WireFormat) -> String {
    let name = t.qualified();
    let cols = quote::ident_list(&t.columns);
    let opts = match format {
        WireFormat::Binary => " (FORMAT binary)",
        WireFormat::Text => "",
    };
    // A table whose columns are all generated (or that has none) is copied
    // with an empty select list and no column list.
    match (&item.pages, t.columns.is_empty()) {
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
    }
}

/// Start reading an item: `COPY ... TO STDOUT` on the source (`prepared`
/// ahead with its group, or prepared now), or its archive file.
async fn open_input(
    ctx: &CopyContext,
    src: Option<&(Client, String)>,
    t: &TableInfo,
    item: &WorkItem,
    format: WireFormat,
    prepared: Option<&Statement>,
) -> Result<Rows> {
    if let Input::Archive(archive) = &ctx.input {
        let file = item.file.as_ref().expect("archive items name their file");
        return Ok(Box::pin(archive.open_data(file)?));
    }
    let (src, _) = src.expect("server input has a session");
    let item_name = item.name(t);
    let out = match prepared {
        Some(st) => src.copy_out(st).await,
        None => src.copy_out(copy_out_sql(t, item, format).as_str()).await,
    }
    .map_err(|e| MigrationError::db(format!("reading {item_name} from the source"), e))?;
    let rows = super::batch::batched(out).map(move |r| {
        r.map_err(|e| MigrationError::db(format!("reading {item_name} from the source"), e))
    });
    Ok(Box::pin(rows))
}

/// The target's COPY sink of an item.
type CopySink = Pin<Box<tokio_postgres::CopyInSink<Bytes>>>;

/// Whether an item is loaded into its emptied table with FREEZE: a whole
/// table of 1 MB or more. An extension's configuration table holds the
/// extension's own rows already: append the user's, never empty it. A
/// re-shaped table loads into another relation, which other source tables
/// may fill too: never emptied, and a partitioned one takes no FREEZE. A
/// small table is not emptied either: nothing can be in it (an uncommitted
/// load left nothing), and TRUNCATE's new files cost three times its whole
/// load, far more than FREEZE saves on a few pages.
fn may_freeze(t: &TableInfo, item: &WorkItem) -> bool {
    item.is_whole()
        && t.row_filter.is_none()
        && t.load_into.is_none()
        && t.bytes >= SMALL_ITEM_BYTES as i64
}

/// An item's `COPY ... FROM STDIN` on the target.
fn copy_in_sql(t: &TableInfo, format: WireFormat, freeze: bool) -> String {
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
    format!("COPY {}{col_list} FROM STDIN{opts}", t.target_name())
}

/// Start loading one item inside the caller's target transaction: empty
/// a large whole table first (see [`may_freeze`]), then `COPY ... FROM
/// STDIN` (`prepared` ahead with its group when it cannot freeze).
async fn open_sink(
    dst: &Client,
    t: &TableInfo,
    item: &WorkItem,
    format: WireFormat,
    prepared: Option<&Statement>,
) -> Result<(CopySink, bool)> {
    let item_name = item.name(t);
    let tdb = |what: &str, e| MigrationError::db(format!("{what} {item_name} on the target"), e);
    let freeze = if may_freeze(t, item) {
        empty_table(dst, &t.target_name()).await?
    } else {
        false
    };
    let sink = match prepared {
        Some(st) if !freeze => dst.copy_in::<_, Bytes>(st).await,
        _ => {
            dst.copy_in::<_, Bytes>(copy_in_sql(t, format, freeze).as_str())
                .await
        }
    }
    .map_err(|e| tdb("starting COPY into", e))?;
    Ok((Box::pin(sink), freeze))
}

/// An item whose two ends are open.
struct Opened {
    started: Instant,
    format: WireFormat,
    input: Rows,
    sink: CopySink,
    freeze: bool,
}

/// Load one item through its open sink, inside the caller's target
/// transaction; the caller records it in `_pg_dbmigrator.copied` in the
/// same transaction, so it lands wholly or not at all. A whole table of
/// 1 MB or more was emptied first in that transaction, which lets COPY
/// FREEZE write the rows already frozen (no hint-bit rewrite, no
/// anti-wraparound vacuum later). Chunks cannot be emptied (their rows are
/// mixed with other chunks'), and need not be: an uncommitted chunk left
/// nothing behind. `next` runs while the COPY ends: the next item's start, queued behind
/// this one's end on both sessions.
#[allow(clippy::too_many_arguments)]
async fn load_item<T>(
    t: &TableInfo,
    item: &WorkItem,
    format: WireFormat,
    input: Rows,
    mut sink: CopySink,
    freeze: bool,
    stop: &CancellationToken,
    next: impl std::future::Future<Output = Result<T>>,
) -> Result<(ItemResult, T)> {
    let item_name = item.name(t);
    let tdb = |what: &str, e| MigrationError::db(format!("{what} {item_name} on the target"), e);
    let bytes = pump(
        input,
        &item_name,
        item.est_bytes,
        stop,
        Sink::Copy(sink.as_mut(), &|e| tdb("writing", e)),
    )
    .await?;
    let finish = async {
        sink.as_mut()
            .finish()
            .await
            .map_err(|e| tdb("finishing COPY into", e))
    };
    let (rows, next) = futures::try_join!(finish, next)?;
    if let Some(file) = &item.file {
        // The end-to-end check of a restore: the rows the dump counted.
        if rows != file.rows {
            return Err(MigrationError::Archive(format!(
                "archive file {} of {item_name} loaded {rows} rows but the manifest says {}: the archive does not match its manifest — dump again",
                file.file.path, file.rows
            )));
        }
    }
    let r = ItemResult {
        rows,
        bytes,
        started: Instant::now(),
        finished: Instant::now(),
        format,
        freeze,
        snapshot: String::new(),
        file: None,
    };
    Ok((r, next))
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
