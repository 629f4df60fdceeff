//! The reverse direction of `--fallback`: after the cutover the new server
//! (the migration's target) streams its changes back to the old source.
//!
//! This module creates and removes what that needs: a publication and a
//! logical slot on the new server, and the apply progress row on the old
//! source. It reads and writes nothing else; the `fallback` orchestrator
//! drives the stream (with the same streamer and applier as the forward
//! direction, endpoints swapped) and the rollback.

use tokio_postgres::Client;
use tracing::info;

use super::source::drop_slot;
use super::Lsn;
use crate::config::EndpointConfig;
use crate::error::{MigrationError, Result};
use crate::pg::catalog::{self, TableInfo};
use crate::pg::quote;
use crate::pg::replication::ReplicationSession;
use crate::resume::FallbackState;

/// The reverse slot's and publication's name.
pub fn object_name(forward: &str) -> String {
    let mut n = format!("{forward}_back");
    n.truncate(63);
    n
}

/// The key of the reverse direction's progress row on the old source.
pub fn progress_id(migration_id: &str) -> String {
    format!("{migration_id}.back")
}

/// Whether a stream's progress id is a reverse stream's.
pub fn is_progress_id(id: &str) -> bool {
    id.ends_with(".back")
}

/// Create the publication and the slot on the new server (recording each
/// in `save` before it is made), then the progress row on the old source
/// at the slot's consistent point. Called at the cutover while the old
/// source is fenced and before anyone writes on the new server, so the
/// slot starts exactly where both servers are equal.
pub async fn create(
    target: &EndpointConfig,
    dst: &Client,
    src: &Client,
    tables: &[TableInfo],
    migration_id: &str,
    state: &mut FallbackState,
    save: &mut (dyn FnMut(&FallbackState) -> Result<()> + Send),
) -> Result<Lsn> {
    let published: Vec<String> = tables.iter().map(TableInfo::qualified).collect();
    let exists: bool = dst
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_publication WHERE pubname = $1)",
            &[&state.publication_name],
        )
        .await
        .map_err(|e| MigrationError::db("looking up the fallback publication on the target", e))?
        .get(0);
    if !exists {
        state.publication_created = true;
        save(state)?;
        let sql = if published.is_empty() {
            format!(
                "CREATE PUBLICATION {}",
                quote::ident(&state.publication_name)
            )
        } else {
            format!(
                "CREATE PUBLICATION {} FOR TABLE {}",
                quote::ident(&state.publication_name),
                published.join(", ")
            )
        };
        dst.batch_execute(&sql).await.map_err(|e| {
            MigrationError::db("creating the fallback publication on the target", e)
        })?;
    }
    let start = match state.start_lsn {
        Some(l) => l,
        None => {
            state.slot_created = true;
            save(state)?;
            let mut repl = ReplicationSession::connect_labeled(target, "target").await?;
            let slot = repl.create_logical_slot(&state.slot_name, false).await?;
            let _ = repl.close().await;
            state.start_lsn = Some(slot.consistent_point);
            save(state)?;
            slot.consistent_point
        }
    };
    crate::copy::prepare_target_state(src).await?;
    super::apply::init_progress(src, &progress_id(migration_id), start).await?;
    info!(slot = %state.slot_name, start = %start, tables = published.len(), "fallback: the new server's changes stream back to the old source from here");
    Ok(start)
}

/// The tables the reverse stream carries: the migrated ones, as the new
/// server has them (unlogged tables are recopied at the rollback).
pub async fn tables(
    dst: &Client,
    filters: &crate::config::filter::CompiledFilters,
) -> Result<Vec<TableInfo>> {
    let unlogged = catalog::unlogged_tables(dst).await?;
    Ok(catalog::list_tables(dst, filters)
        .await?
        .into_iter()
        .filter(|t| t.row_filter.is_none() && !unlogged.contains(&t.qualified()))
        .collect())
}

/// Drop the reverse slot and publication (idempotent) and the progress
/// bookkeeping on the old source.
pub async fn remove(dst: &Client, src: Option<&Client>, state: &mut FallbackState) -> Result<()> {
    if state.slot_created {
        drop_slot(dst, &state.slot_name).await?;
        state.slot_created = false;
    }
    if state.publication_created {
        dst.batch_execute(&format!(
            "DROP PUBLICATION IF EXISTS {}",
            quote::ident(&state.publication_name)
        ))
        .await
        .map_err(|e| MigrationError::db("dropping the fallback publication on the target", e))?;
        state.publication_created = false;
    }
    if let Some(src) = src {
        crate::copy::drop_target_state(src).await?;
    }
    Ok(())
}
