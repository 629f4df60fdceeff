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
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures::{FutureExt, Stream, StreamExt};
use tokio_postgres::{Client, Statement};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::plan::WorkItem;
use super::rows::RowCounter;
use super::{record_done, CopyContext, Input, Output, Scheduler, STATE_SCHEMA};
use crate::archive::{self, AsyncDataWriter, DataFile, DataFormat};
use crate::error::{MigrationError, Result};
use crate::pg::catalog::TableInfo;
use crate::pg::wire::CopySession;
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
    let mut dst_pid = target_pid(&dst);
    debug!(worker = id, "copy worker ready");
    // The source session's snapshot transaction is still its first one.
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
        // A paused copy starts nothing new: no new snapshot transaction, no
        // new table's lock taken while a session waits behind ours.
        if let Some(g) = sched.gate.as_ref() {
            g.wait().await;
        }
        if let (Output::Target(endpoint), true) = (&ctx.output, dst.is_some()) {
            // A transient fault (a dropped connection, a server restarting)
            // loses only this transaction: the group starts again from its
            // beginning on new sessions, the same snapshot.
            let mut retry = ctx.retry();
            loop {
                let d = dst.as_mut().expect("target session");
                results.clear();
                let renew = !first;
                let loaded = load_group(
                    sched,
                    id,
                    src.as_ref(),
                    d,
                    &group,
                    renew,
                    stop,
                    &mut results,
                )
                .await;
                first = false;
                let Err(e) = loaded else {
                    break;
                };
                let what = group
                    .first()
                    .map(|item| item.name(&sched.tables[item.table]))
                    .unwrap_or_default();
                retry.wait(e, &what, stop).await?;
                // New sessions on both sides: the source's was in the middle
                // of a COPY, the target's may be gone (and a failed
                // pipeline's session is out of step: never used again).
                loop {
                    match reopen(ctx).await {
                        Ok((s, d)) => {
                            (src, dst) = (s, d);
                            break;
                        }
                        Err(e) => retry.wait(e, &what, stop).await?,
                    }
                }
                let lost_pid = std::mem::replace(&mut dst_pid, dst.as_ref().map(|d| d.pid()));
                first = true;
                // A connection lost during COMMIT leaves the outcome unknown:
                // the group's markers, written in its transaction, tell,
                // once the lost session's process has ended (it may be
                // committing still).
                if results.len() == group.len() {
                    let c = connect::connect(endpoint, "target").await?;
                    if let Some(p) = lost_pid {
                        crate::pg::sessions::settle_lost(&c, p, "target").await?;
                    }
                    let committed = super::committed_items(&c, &ctx.migration_id).await?;
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
            for (k, item) in group.iter().enumerate() {
                let t = &sched.tables[item.table];
                let format = item_format(ctx, t, item);
                if k > 0 {
                    if let Some(g) = sched.gate.as_ref() {
                        g.wait().await;
                    }
                }
                let renew = !std::mem::replace(&mut first, false);
                let (started, format, input) = start_item(
                    ctx,
                    sched.gate.as_ref(),
                    src.as_ref(),
                    id,
                    t,
                    item,
                    format,
                    None,
                    renew,
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
                snapshot: src.as_ref().map_or_else(|| Arc::from(""), |s| s.1.clone()),
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
    if let Some(d) = dst {
        d.close().await;
    }
    Ok(())
}

/// The server process of the target session, to find it again if the
/// session is lost (see [`crate::pg::sessions::settle_lost`]).
fn target_pid(dst: &Option<CopySession>) -> Option<i32> {
    dst.as_ref().map(|d| d.pid())
}

/// The source session of a worker: on the shared snapshot.
async fn open_source(ctx: &CopyContext) -> Result<Option<(Client, Arc<str>)>> {
    match &ctx.input {
        Input::Server {
            endpoint,
            snapshot_id,
        } => {
            let src = connect::connect(endpoint, "source").await?;
            session::setup_source(&src).await?;
            let snapshot = session::import_snapshot(&src, snapshot_id).await?;
            Ok(Some((src, snapshot.into())))
        }
        Input::Archive(_) => Ok(None),
    }
}

/// The target session of a worker: the pipelined one ([`CopySession`]).
async fn open_target(ctx: &CopyContext) -> Result<Option<CopySession>> {
    match &ctx.output {
        Output::Target(endpoint) => {
            let mut dst = CopySession::connect(endpoint, "target").await?;
            session::setup_copy_target(&mut dst).await?;
            Ok(Some(dst))
        }
        Output::Archive { .. } => Ok(None),
    }
}

async fn reopen(ctx: &CopyContext) -> Result<(Option<(Client, Arc<str>)>, Option<CopySession>)> {
    Ok((open_source(ctx).await?, open_target(ctx).await?))
}

/// Tables under this size (estimated heap bytes) may share a transaction.
const SMALL_ITEM_BYTES: u64 = 1 << 20;
/// At most this many items, and this many bytes, per shared transaction.
const GROUP_ITEMS: usize = 32;
const GROUP_BYTES: u64 = 8 << 20;

/// Start reading one item: with `renew` (every item after a session's
/// first), a new snapshot transaction on the same snapshot first, so a
/// worker holds one source table's locks at a time; then show it and open
/// its input, which adds its COPY bytes to the progress's counter for the
/// worker as they flow (one relaxed atomic add a chunk), so the percentage
/// moves inside a big table. The caller waits at `gate`
/// (`--source-pressure`) before it starts items; each chunk is passed on
/// only once the gate is open, and after its share of `--max-rate`'s
/// clock: while a worker waits it reads no more of its COPY stream, so the
/// source's COPY waits too.
///
/// The first poll sends the item's statements (the renewal, then the
/// COPY, both already prepared) and nothing after it waits before sending:
/// a group's items are started in order and read in that order
/// ([`load_group`]).
#[allow(clippy::too_many_arguments)]
async fn start_item(
    ctx: &CopyContext,
    gate: Option<&super::pressure::Gate>,
    src: Option<&(Client, Arc<str>)>,
    worker: usize,
    t: &TableInfo,
    item: &WorkItem,
    format: WireFormat,
    prepared: Option<&Statement>,
    renew: bool,
) -> Result<(Instant, WireFormat, Rows)> {
    let started = Instant::now();
    // The new snapshot transaction and the COPY go out together (sent in
    // this order, answered in it): one round trip, not two.
    let renew = async {
        match (src, &ctx.input) {
            (Some((src, _)), Input::Server { snapshot_id, .. }) if renew => {
                session::reimport_snapshot(src, snapshot_id).await
            }
            _ => Ok(()),
        }
    };
    let (renewed, opened) = futures::join!(renew, open_input(ctx, src, t, item, format, prepared));
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
    /// Shared by the items of one session.
    pub snapshot: Arc<str>,
    /// For a dump: the file written.
    pub file: Option<Box<DataFile>>,
}

/// Prepare the source's COPY statements at once (pipelined: one round
/// trip for all); `None` for each when there is no source session (an
/// archive's items).
async fn prepare_all(
    client: Option<&Client>,
    sqls: impl Iterator<Item = String>,
) -> Result<Vec<Option<Statement>>> {
    let sqls: Vec<String> = sqls.collect();
    let Some(c) = client else {
        return Ok(sqls.iter().map(|_| None).collect());
    };
    futures::future::try_join_all(
        sqls.iter()
            .map(|sql| async move { c.prepare(sql).await.map(Some) }),
    )
    .await
    .map_err(|e| MigrationError::db("preparing the COPY statements on the source", e))
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
    src: Option<&(Client, Arc<str>)>,
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

/// Load a group of items into the target in one transaction, and commit
/// it with their markers in `_pg_dbmigrator.copied`, so each item lands
/// wholly or not at all; `results` holds every item's result once all are
/// loaded, before the commit (a lost commit is looked up by the caller).
///
/// Across a distance this is where the round trips were, so nothing waits
/// that need not:
/// - the source's COPYs are prepared together (one round trip), then all
///   of them are sent at once, in order, each after its snapshot renewal,
///   and read in that order (the server runs them one after the other, so
///   a worker still holds one source table's lock at a time);
/// - on the target, `BEGIN`, every COPY statement and its data go out
///   without waiting ([`CopySession`]), and the outcomes are read beside
///   the writing; the markers and the commit follow once every COPY has
///   said how many rows it loaded. Two round trips for the group.
///
/// A whole table of 1 MB or more is emptied first in the transaction
/// (answered before its COPY, which takes FREEZE when TRUNCATE was
/// allowed: no hint-bit rewrite, no anti-wraparound vacuum later). Chunks
/// cannot be emptied (their rows are mixed with other chunks'), and need
/// not be: an uncommitted chunk left nothing behind.
#[allow(clippy::too_many_arguments)]
async fn load_group(
    sched: &Scheduler,
    id: usize,
    src: Option<&(Client, Arc<str>)>,
    d: &mut CopySession,
    group: &[WorkItem],
    renew: bool,
    stop: &CancellationToken,
    results: &mut Vec<ItemResult>,
) -> Result<()> {
    let ctx = &sched.ctx;
    let table = |k: usize| &sched.tables[group[k].table];
    let name = |k: usize| group[k].name(table(k));
    let formats: Vec<WireFormat> = (0..group.len())
        .map(|k| item_format(ctx, table(k), &group[k]))
        .collect();
    let src_client = match &ctx.input {
        Input::Server { .. } => src.map(|s| &s.0),
        Input::Archive(_) => None,
    };
    let sources = prepare_all(
        src_client,
        (0..group.len()).map(|k| copy_out_sql(table(k), &group[k], formats[k])),
    )
    .await?;
    // The big tables emptied first, answered: FREEZE depends on it.
    let mut freeze = vec![false; group.len()];
    let mut began = false;
    for k in 0..group.len() {
        if may_freeze(table(k), &group[k]) {
            freeze[k] = empty_on(d, &table(k).target_name(), !began).await?;
            began = true;
        }
    }
    // Every item's source COPY sent now, in order: each future's first
    // poll sends its statements (see `start_item`).
    let mut inputs = Vec::with_capacity(group.len());
    for k in 0..group.len() {
        let mut opening = Box::pin(futures::future::maybe_done(start_item(
            ctx,
            sched.gate.as_ref(),
            src,
            id,
            table(k),
            &group[k],
            formats[k],
            sources[k].as_ref(),
            renew || k > 0,
        )));
        let _ = futures::poll!(opening.as_mut());
        inputs.push(opening);
    }
    // Small tables only, none emptied first: nothing the server answers
    // decides anything before the commit, so the markers and the commit
    // follow the data at once and the group costs one round trip. Their
    // rows are counted as they pass (the server's counts, read after,
    // must agree). Big items wait for the server's counts instead: two
    // round trips are nothing beside their data, and counting them here
    // would cost CPU.
    let one_trip = !began && group.iter().all(|i| i.est_bytes < SMALL_ITEM_BYTES);
    let marker = |k: usize, rows: u64, bytes: u64| {
        format!(
            "({}, {}, {rows}, {bytes})",
            quote::literal(&ctx.migration_id),
            quote::literal(&name(k)),
        )
    };
    let commit = |markers: Vec<String>| {
        format!(
            "INSERT INTO {STATE_SCHEMA}.copied (migration_id, item, rows, bytes) VALUES {}; COMMIT",
            markers.join(", ")
        )
    };
    let (mut w, mut r) = d.halves();
    if !began {
        w.query("BEGIN");
    }
    let target_io = |e| MigrationError::io("loading a copy transaction into the target", e);
    let mut counted = Vec::with_capacity(group.len());
    let writer = async {
        let mut loaded = Vec::with_capacity(group.len());
        for (k, opening) in inputs.iter_mut().enumerate() {
            w.query(&copy_in_sql(table(k), formats[k], freeze[k]));
            opening.as_mut().await;
            let (started, format, input) = opening
                .as_mut()
                .take_output()
                .expect("an item is opened once")?;
            let mut counter = one_trip.then(|| RowCounter::new(format == WireFormat::Binary));
            let bytes = pump(
                input,
                &name(k),
                group[k].est_bytes,
                stop,
                Sink::Wire(&mut w, counter.as_mut()),
            )
            .await?;
            w.copy_done();
            loaded.push((started, format, bytes));
            counted.push(counter.map(|c| c.rows()));
        }
        if one_trip {
            let rows: Vec<u64> = counted.iter().map(|c| c.unwrap_or(0)).collect();
            check_manifest(group, &rows, &name)?;
            let now = Instant::now();
            for (k, (started, format, bytes)) in loaded.iter().enumerate() {
                results.push(ItemResult {
                    rows: rows[k],
                    bytes: *bytes,
                    started: *started,
                    finished: now,
                    format: *format,
                    freeze: false,
                    snapshot: Arc::from(""),
                    file: None,
                });
            }
            // The rows are sent, not committed: their markers and the
            // commit travel behind them (a COPY that fails turns the
            // COMMIT into a rollback).
            faults::before(Point::CopyItem).await;
            w.query(&commit(
                (0..group.len())
                    .map(|k| marker(k, rows[k], loaded[k].2))
                    .collect(),
            ));
        }
        w.flush().await.map_err(target_io)?;
        Ok::<_, MigrationError>(loaded)
    };
    let reader = async {
        if !began {
            r.outcome()
                .await
                .map_err(target_io)?
                .ok(|| "starting a copy transaction on the target".to_string())?;
        }
        let mut rows = Vec::with_capacity(group.len());
        for k in 0..group.len() {
            let o = r
                .outcome()
                .await
                .map_err(target_io)?
                .ok(|| format!("loading {} into the target", name(k)))?;
            rows.push(o.copied().unwrap_or(0));
        }
        if one_trip {
            r.outcome()
                .await
                .map_err(target_io)?
                .ok(|| "committing a copy transaction on the target".to_string())?;
        }
        Ok::<_, MigrationError>(rows)
    };
    let (loaded, rows) = futures::try_join!(writer, reader)?;
    if one_trip {
        for (k, r) in results.iter().enumerate() {
            if r.rows != rows[k] {
                return Err(MigrationError::Internal(format!(
                    "{}: the target loaded {} rows, the COPY stream held {} (committed with the stream's count)",
                    name(k),
                    rows[k],
                    r.rows
                )));
            }
        }
        return Ok(());
    }
    check_manifest(group, &rows, &name)?;
    let now = Instant::now();
    for (k, ((started, format, bytes), rows)) in loaded.into_iter().zip(rows).enumerate() {
        results.push(ItemResult {
            rows,
            bytes,
            started,
            finished: now,
            format,
            freeze: freeze[k],
            snapshot: Arc::from(""),
            file: None,
        });
    }
    // The rows are in, not committed: their markers and the commit
    // travel together.
    faults::before(Point::CopyItem).await;
    let markers = (0..group.len())
        .map(|k| marker(k, results[k].rows, results[k].bytes))
        .collect();
    d.run(&commit(markers), || {
        "committing a copy transaction on the target".to_string()
    })
    .await?;
    Ok(())
}

/// The end-to-end check of a restore: each item loaded the rows its
/// archive file's manifest counted at the dump.
fn check_manifest(group: &[WorkItem], rows: &[u64], name: &dyn Fn(usize) -> String) -> Result<()> {
    for (k, item) in group.iter().enumerate() {
        if let Some(file) = &item.file {
            if rows[k] != file.rows {
                return Err(MigrationError::Archive(format!(
                    "archive file {} of {} loaded {} rows but the manifest says {}: the archive does not match its manifest — dump again",
                    file.file.path,
                    name(k),
                    rows[k],
                    file.rows
                )));
            }
        }
    }
    Ok(())
}

/// Empty a table inside the session's transaction (`begin`: start it in
/// the same round trip): TRUNCATE, or DELETE where TRUNCATE is refused (a
/// table other tables reference by foreign key, or no privilege). Returns
/// whether it was truncated, which is what allows COPY FREEZE.
async fn empty_on(d: &mut CopySession, name: &str, begin: bool) -> Result<bool> {
    let context = || format!("emptying {name} on the target");
    let truncate =
        format!("SAVEPOINT dbm_empty; TRUNCATE ONLY {name}; RELEASE SAVEPOINT dbm_empty");
    let sqls: Vec<&str> = if begin {
        vec!["BEGIN", &truncate]
    } else {
        vec![&truncate]
    };
    let mut outcomes = d.run_all(&sqls, context).await?;
    let truncated = outcomes.pop().expect("one outcome a statement");
    for o in outcomes {
        o.ok(|| "starting a copy transaction on the target".to_string())?;
    }
    if truncated.error.is_none() {
        return Ok(true);
    }
    d.run(
        &format!(
            "ROLLBACK TO SAVEPOINT dbm_empty; DELETE FROM ONLY {name}; RELEASE SAVEPOINT dbm_empty"
        ),
        context,
    )
    .await?;
    Ok(false)
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
        snapshot: Arc::from(""),
        file: Some(Box::new(DataFile {
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
        })),
    })
}

/// Where [`pump`] puts the bytes.
enum Sink<'a, 'w> {
    /// The target's pipelined session, counting the rows where asked.
    Wire(
        &'a mut crate::pg::wire::Writer<'w>,
        Option<&'a mut RowCounter>,
    ),
    File(&'a mut AsyncDataWriter, &'a mut RowCounter),
}

impl Sink<'_, '_> {
    async fn send(&mut self, chunk: Bytes) -> Result<()> {
        match self {
            Sink::Wire(w, rows) => {
                if let Some(rows) = rows {
                    rows.feed(&chunk);
                }
                w.copy_data(&chunk)
                    .await
                    .map_err(|e| MigrationError::io("writing COPY data to the target", e))
            }
            Sink::File(w, rows) => {
                rows.feed(&chunk);
                w.write(chunk).await
            }
        }
    }

    /// Write out what is buffered while the input has nothing ready: the
    /// server works on it while we wait.
    async fn flush(&mut self) -> Result<()> {
        match self {
            Sink::Wire(w, _) if w.pending() => w
                .flush()
                .await
                .map_err(|e| MigrationError::io("writing COPY data to the target", e)),
            _ => Ok(()),
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
    mut sink: Sink<'_, '_>,
) -> Result<u64> {
    let started = Instant::now();
    let mut bytes: u64 = 0;
    let mut last_log = Instant::now();
    loop {
        let next = match input.next().now_or_never() {
            Some(n) => n,
            None => {
                sink.flush().await?;
                tokio::select! {
                    biased;
                    _ = stop.cancelled() => return Err(MigrationError::Cancelled),
                    n = input.next() => n,
                }
            }
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
