//! One copy worker: a source session on the shared snapshot and a target
//! session, streaming COPY bytes from one to the other.
//!
//! The bytes are passed through untouched: `COPY ... TO STDOUT` on the
//! source feeds `COPY ... FROM STDIN` on the target. tokio-postgres applies
//! backpressure on both ends (it stops reading the source socket while the
//! target is slow), so memory stays flat whatever the table size.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Instant;

use futures::{SinkExt, StreamExt};
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::{record_done, CopyContext, TableResult, STATE_SCHEMA};
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

pub(super) async fn run(
    id: usize,
    ctx: &CopyContext,
    queue: &Mutex<VecDeque<TableInfo>>,
    results: &Mutex<Vec<TableResult>>,
    stop: &CancellationToken,
) -> Result<()> {
    let src = connect::connect(&ctx.source, "source").await?;
    session::setup_source(&src).await?;
    let snapshot = session::import_snapshot(&src, &ctx.snapshot_id).await?;
    let dst = connect::connect(&ctx.target, "target").await?;
    session::setup_target(&dst).await?;
    debug!(worker = id, %snapshot, "copy worker ready");
    loop {
        if stop.is_cancelled() {
            return Err(MigrationError::Cancelled);
        }
        let Some(table) = queue.lock().unwrap().pop_front() else {
            break;
        };
        let r = copy_table(ctx, &src, &dst, &table, &snapshot, stop).await;
        let r = match r {
            Ok(r) => r,
            Err(e) => {
                let _ = dst.batch_execute("ROLLBACK").await;
                return Err(e);
            }
        };
        info!(
            table = %r.table,
            rows = r.rows,
            bytes = r.bytes,
            seconds = format!("{:.2}", r.seconds),
            format = ?r.format,
            "table copied"
        );
        record_done(ctx, &r)?;
        results.lock().unwrap().push(r);
    }
    let _ = src.batch_execute("COMMIT").await;
    Ok(())
}

async fn copy_table(
    ctx: &CopyContext,
    src: &Client,
    dst: &Client,
    t: &TableInfo,
    snapshot: &str,
    stop: &CancellationToken,
) -> Result<TableResult> {
    let started = Instant::now();
    let name = t.qualified();
    let format = if ctx.binary && t.binary_safe {
        WireFormat::Binary
    } else {
        WireFormat::Text
    };
    let opts = match format {
        WireFormat::Binary => " (FORMAT binary)",
        WireFormat::Text => "",
    };
    // A table whose columns are all generated (or that has none) is copied
    // with an empty select list and no column list.
    let (select_list, col_list) = if t.columns.is_empty() {
        (String::new(), String::new())
    } else {
        let l = quote::ident_list(&t.columns);
        (l.clone(), format!(" ({l})"))
    };
    let copy_out = format!("COPY (SELECT {select_list} FROM ONLY {name}) TO STDOUT{opts}");
    let copy_in = format!("COPY {name}{col_list} FROM STDIN{opts}");
    let tdb = |what: &str, e| MigrationError::db(format!("{what} {name} on the target"), e);

    dst.batch_execute("BEGIN")
        .await
        .map_err(|e| tdb("starting the copy of", e))?;
    if ctx.redo {
        empty_table(dst, &name).await?;
    }
    let out = src
        .copy_out(copy_out.as_str())
        .await
        .map_err(|e| MigrationError::db(format!("reading {name} from the source"), e))?;
    let sink = dst
        .copy_in::<_, bytes::Bytes>(copy_in.as_str())
        .await
        .map_err(|e| tdb("starting COPY into", e))?;
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
                    format!("reading {name} from the source"),
                    e,
                ))
            }
            Some(Ok(chunk)) => {
                bytes += chunk.len() as u64;
                if last_log.elapsed() >= PROGRESS_EVERY {
                    last_log = Instant::now();
                    let secs = started.elapsed().as_secs_f64();
                    info!(
                        table = %name,
                        bytes,
                        mb_per_s = format!("{:.1}", bytes as f64 / secs / 1e6),
                        estimated_total = t.bytes,
                        "copying"
                    );
                }
                // `feed` does not flush per row; the sink flushes as its buffer fills.
                tokio::select! {
                    biased;
                    _ = stop.cancelled() => return Err(MigrationError::Cancelled),
                    r = sink.feed(chunk) => r.map_err(|e| tdb("writing", e))?,
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
        &[&ctx.migration_id, &name, &(rows as i64), &(bytes as i64)],
    )
    .await
    .map_err(|e| tdb("recording the copy of", e))?;
    dst.batch_execute("COMMIT")
        .await
        .map_err(|e| tdb("committing", e))?;
    Ok(TableResult {
        table: name,
        rows,
        bytes,
        seconds: started.elapsed().as_secs_f64(),
        format,
        snapshot: snapshot.to_string(),
    })
}

/// Remove rows an interrupted attempt may have left (none can have
/// committed, but a resumed table is emptied to be sure). TRUNCATE is
/// refused on a table other tables reference by foreign key; DELETE then.
pub(crate) async fn empty_table(dst: &Client, name: &str) -> Result<()> {
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
    }
    Ok(())
}
