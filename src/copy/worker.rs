//! One copy worker: a source session on the shared snapshot and a target
//! session, streaming COPY bytes from one to the other.
//!
//! The bytes are passed through untouched: `COPY ... TO STDOUT` on the
//! source feeds `COPY ... FROM STDIN` on the target. tokio-postgres applies
//! backpressure on both ends (it stops reading the source socket while the
//! target is slow), so memory stays flat whatever the table size.

use std::time::Instant;

use futures::{SinkExt, StreamExt};
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::plan::WorkItem;
use super::{record_done, CopyContext, Scheduler, STATE_SCHEMA};
use crate::error::{MigrationError, Result};
use crate::pg::catalog::TableInfo;
use crate::pg::{connect, quote, session};

/// How often a long table copy logs its progress.
const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// The COPY wire format used for a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WireFormat {
    Binary,
    Text,
}

/// One copy worker: takes items from the shared queue until it is empty.
pub(super) async fn run(id: usize, sched: &Scheduler, stop: &CancellationToken) -> Result<()> {
    let ctx = &sched.ctx;
    let src = connect::connect(&ctx.source, "source").await?;
    session::setup_source(&src).await?;
    let snapshot = session::import_snapshot(&src, &ctx.snapshot_id).await?;
    let dst = connect::connect(&ctx.target, "target").await?;
    session::setup_target(&dst).await?;
    debug!(worker = id, %snapshot, "copy worker ready");
    while let Some(item) = sched.next_item() {
        if stop.is_cancelled() {
            return Err(MigrationError::Cancelled);
        }
        let t = &sched.tables[item.table];
        let r = match copy_item(ctx, &src, &dst, t, &item, &snapshot, stop).await {
            Ok(r) => r,
            Err(e) => {
                let _ = dst.batch_execute("ROLLBACK").await;
                return Err(e);
            }
        };
        info!(
            item = %item.name(t),
            rows = r.rows,
            bytes = r.bytes,
            seconds = format!("{:.2}", r.finished.duration_since(r.started).as_secs_f64()),
            format = ?r.format,
            freeze = r.freeze,
            "copied"
        );
        record_done(ctx, &item.name(t), &r)?;
        sched.item_done(&item, r);
    }
    let _ = src.batch_execute("COMMIT").await;
    Ok(())
}

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
}

/// Copy one item in one target transaction that also records it in
/// `_pg_dbmigrator.copied`: it lands wholly or not at all. A whole table
/// is emptied first in the same transaction, which both makes a redo after
/// a crash safe and lets COPY FREEZE write the rows already frozen (no
/// hint-bit rewrite, no anti-wraparound vacuum later). Chunks cannot be
/// emptied (their rows are mixed with other chunks'), and need not be:
/// an uncommitted chunk left nothing behind.
async fn copy_item(
    ctx: &CopyContext,
    src: &Client,
    dst: &Client,
    t: &TableInfo,
    item: &WorkItem,
    snapshot: &str,
    stop: &CancellationToken,
) -> Result<ItemResult> {
    let started = Instant::now();
    let name = t.qualified();
    let item_name = item.name(t);
    let format = if ctx.binary && t.binary_safe {
        WireFormat::Binary
    } else {
        WireFormat::Text
    };
    let cols = quote::ident_list(&t.columns);
    let out_opts = match format {
        WireFormat::Binary => " (FORMAT binary)",
        WireFormat::Text => "",
    };
    // A table whose columns are all generated (or that has none) is copied
    // with an empty select list and no column list.
    let copy_out = match (&item.pages, t.columns.is_empty()) {
        (None, false) => format!("COPY {name} ({cols}) TO STDOUT{out_opts}"),
        (None, true) => format!("COPY (SELECT FROM ONLY {name}) TO STDOUT{out_opts}"),
        (Some(p), _) => format!(
            "COPY (SELECT {cols} FROM ONLY {name} WHERE {}) TO STDOUT{out_opts}",
            p.predicate()
        ),
    };
    let tdb = |what: &str, e| MigrationError::db(format!("{what} {item_name} on the target"), e);

    dst.batch_execute("BEGIN")
        .await
        .map_err(|e| tdb("starting the copy of", e))?;
    let freeze = if item.is_whole() {
        empty_table(dst, &name).await?
    } else {
        false
    };
    let mut in_opts = Vec::new();
    if format == WireFormat::Binary {
        in_opts.push("FORMAT binary");
    }
    if freeze {
        in_opts.push("FREEZE");
    }
    let in_opts = if in_opts.is_empty() {
        String::new()
    } else {
        format!(" ({})", in_opts.join(", "))
    };
    let col_list = if t.columns.is_empty() {
        String::new()
    } else {
        format!(" ({cols})")
    };
    let copy_in = format!("COPY {name}{col_list} FROM STDIN{in_opts}");

    let out = src
        .copy_out(copy_out.as_str())
        .await
        .map_err(|e| MigrationError::db(format!("reading {item_name} from the source"), e))?;
    let sink = dst
        .copy_in::<_, bytes::Bytes>(copy_in.as_str())
        .await
        .map_err(|e| tdb("starting COPY into", e))?;
    let out = super::batch::batched(out);
    futures::pin_mut!(out);
    futures::pin_mut!(sink);
    let mut bytes: u64 = 0;
    let mut last_log = Instant::now();
    loop {
        let next = tokio::select! {
            biased;
            _ = stop.cancelled() => return Err(MigrationError::Cancelled),
            n = out.next() => n,
        };
        match next {
            None => break,
            Some(Err(e)) => {
                return Err(MigrationError::db(
                    format!("reading {item_name} from the source"),
                    e,
                ))
            }
            Some(Ok(chunk)) => {
                bytes += chunk.len() as u64;
                if last_log.elapsed() >= PROGRESS_EVERY {
                    last_log = Instant::now();
                    let secs = started.elapsed().as_secs_f64();
                    info!(
                        item = %item_name,
                        bytes,
                        mb_per_s = format!("{:.1}", bytes as f64 / secs / 1e6),
                        estimated_total = item.est_bytes,
                        "copying"
                    );
                }
                tokio::select! {
                    biased;
                    _ = stop.cancelled() => return Err(MigrationError::Cancelled),
                    r = sink.send(chunk) => r.map_err(|e| tdb("writing", e))?,
                }
            }
        }
    }
    let rows = sink
        .as_mut()
        .finish()
        .await
        .map_err(|e| tdb("finishing COPY into", e))?;
    dst.execute(
        &format!("INSERT INTO {STATE_SCHEMA}.copied (migration_id, item, rows, bytes) VALUES ($1, $2, $3, $4)"),
        &[&ctx.migration_id, &item_name, &(rows as i64), &(bytes as i64)],
    )
    .await
    .map_err(|e| tdb("recording the copy of", e))?;
    dst.batch_execute("COMMIT")
        .await
        .map_err(|e| tdb("committing", e))?;
    Ok(ItemResult {
        rows,
        bytes,
        started,
        finished: Instant::now(),
        format,
        freeze,
        snapshot: snapshot.to_string(),
    })
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
