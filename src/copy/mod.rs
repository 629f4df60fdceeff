//! The data copier: every table's rows, the sequences and the large objects,
//! read under one exported snapshot and streamed straight into the target.
//!
//! A coordinator session on the source exports a REPEATABLE READ snapshot and
//! stays open until every worker has imported it; `jobs` workers then each
//! hold one source and one target session and take tables largest-first from
//! a shared queue. A table is copied in one target transaction that also
//! records the table in `_pg_dbmigrator.copied`, so after a crash the target
//! itself says which tables committed: none is ever loaded twice.

mod large_objects;
mod sequences;
mod worker;

use std::collections::{BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};

use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use crate::config::EndpointConfig;
use crate::error::{MigrationError, Result};
use crate::pg::catalog::TableInfo;
use crate::resume::{CopyMarker, TokenStore};

pub use large_objects::{copy_large_objects, erase_large_objects};
pub use sequences::copy_sequences;
pub(crate) use worker::empty_table;
pub use worker::WireFormat;

/// Schema on the target holding our bookkeeping; dropped when the migration completes.
pub const STATE_SCHEMA: &str = "_pg_dbmigrator";

/// What one table's copy did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TableResult {
    pub table: String,
    pub rows: u64,
    pub bytes: u64,
    pub seconds: f64,
    pub format: WireFormat,
    /// `txid_current_snapshot()` as the worker saw it: identical for every
    /// worker, because all imported the coordinator's snapshot.
    pub snapshot: String,
}

/// Shared by all workers of one copy.
pub struct CopyContext {
    pub source: EndpointConfig,
    pub target: EndpointConfig,
    pub snapshot_id: String,
    pub migration_id: String,
    pub jobs: usize,
    /// Binary COPY allowed for tables whose types allow it.
    pub binary: bool,
    /// Tables may hold rows from an interrupted attempt: empty them first.
    pub redo: bool,
    pub token: Arc<TokenStore>,
}

/// Create the bookkeeping table on the target (idempotent).
pub async fn prepare_target_state(target: &Client) -> Result<()> {
    target
        .batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS {s};
             CREATE TABLE IF NOT EXISTS {s}.copied (
                 migration_id text NOT NULL,
                 item text NOT NULL,
                 rows bigint NOT NULL,
                 bytes bigint NOT NULL,
                 copied_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
                 PRIMARY KEY (migration_id, item));
             CREATE TABLE IF NOT EXISTS {s}.steps (
                 migration_id text NOT NULL,
                 item text NOT NULL,
                 done_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
                 PRIMARY KEY (migration_id, item))",
            s = STATE_SCHEMA
        ))
        .await
        .map_err(|e| {
            MigrationError::db(
                format!("creating the bookkeeping schema {STATE_SCHEMA} on the target (the target role needs CREATE on the database)"),
                e,
            )
        })
}

/// Items the target says are committed for this migration.
pub async fn committed_items(target: &Client, migration_id: &str) -> Result<BTreeSet<String>> {
    let exists: bool = target
        .query_one(
            "SELECT pg_catalog.to_regclass($1) IS NOT NULL",
            &[&format!("{STATE_SCHEMA}.copied")],
        )
        .await
        .map_err(|e| MigrationError::db("reading copy progress on the target", e))?
        .get(0);
    if !exists {
        return Ok(BTreeSet::new());
    }
    let rows = target
        .query(
            &format!("SELECT item FROM {STATE_SCHEMA}.copied WHERE migration_id = $1"),
            &[&migration_id],
        )
        .await
        .map_err(|e| MigrationError::db("reading copy progress on the target", e))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Schema steps the target says are committed for this migration.
pub async fn committed_steps(target: &Client, migration_id: &str) -> Result<BTreeSet<String>> {
    let rows = target
        .query(
            &format!("SELECT item FROM {STATE_SCHEMA}.steps WHERE migration_id = $1"),
            &[&migration_id],
        )
        .await
        .map_err(|e| MigrationError::db("reading schema progress on the target", e))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Remove our bookkeeping from the target.
pub async fn drop_target_state(target: &Client) -> Result<()> {
    target
        .batch_execute(&format!("DROP SCHEMA IF EXISTS {STATE_SCHEMA} CASCADE"))
        .await
        .map_err(|e| MigrationError::db("removing the bookkeeping schema from the target", e))
}

/// Copy `tables` with `ctx.jobs` workers. Each finished table is recorded in
/// the resume token before the worker takes the next one. On the first
/// error, or on cancellation, every worker stops and the error is returned
/// once all have been joined.
pub async fn copy_tables(
    ctx: Arc<CopyContext>,
    tables: Vec<TableInfo>,
    cancel: CancellationToken,
) -> Result<Vec<TableResult>> {
    if tables.is_empty() {
        return Ok(Vec::new());
    }
    let queue = Arc::new(Mutex::new(VecDeque::from(tables)));
    let results = Arc::new(Mutex::new(Vec::new()));
    let stop = cancel.child_token();
    let n = ctx.jobs.max(1).min(queue.lock().unwrap().len());
    let mut set = tokio::task::JoinSet::new();
    for id in 0..n {
        let (ctx, queue, results, stop) =
            (ctx.clone(), queue.clone(), results.clone(), stop.clone());
        set.spawn(async move {
            // Race the whole worker against cancellation: a worker blocked on
            // a lock or a slow server must not hold up Ctrl-C. Dropping it
            // closes its sessions, which rolls back its open transaction;
            // `_pg_dbmigrator.copied` tells what had committed.
            let r = tokio::select! {
                _ = stop.cancelled() => Err(MigrationError::Cancelled),
                r = worker::run(id, &ctx, &queue, &results, &stop) => r,
            };
            if r.is_err() {
                // Stop the siblings: the migration has failed.
                stop.cancel();
            }
            r
        });
    }
    let mut first_err: Option<MigrationError> = None;
    while let Some(joined) = set.join_next().await {
        let r = joined.unwrap_or_else(|e| {
            Err(MigrationError::Internal(format!(
                "copy worker panicked: {e}"
            )))
        });
        if let Err(e) = r {
            // Prefer the root cause over the "cancelled" of the siblings it stopped.
            let replace = match (&first_err, &e) {
                (None, _) => true,
                (Some(MigrationError::Cancelled), e) => !matches!(e, MigrationError::Cancelled),
                _ => false,
            };
            if replace {
                first_err = Some(e);
            }
        }
    }
    if let Some(e) = first_err {
        return Err(e);
    }
    if cancel.is_cancelled() {
        return Err(MigrationError::Cancelled);
    }
    let mut out = std::mem::take(&mut *results.lock().unwrap());
    out.sort_by_key(|r: &TableResult| std::cmp::Reverse(r.bytes));
    Ok(out)
}

fn record_done(ctx: &CopyContext, r: &TableResult) -> Result<()> {
    ctx.token.update(|t| {
        t.copied.insert(
            r.table.clone(),
            CopyMarker {
                rows: r.rows,
                bytes: r.bytes,
                seconds: r.seconds,
                done_at: chrono::Utc::now(),
            },
        );
    })
}
