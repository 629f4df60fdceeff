//! Copies made under a fence, at the cutover and the rollback: unlogged
//! tables again (logical replication cannot carry them), and
//! materialized views refreshed. Between two given sessions; it decides
//! nothing about when.

use tokio_postgres::Client;
use tracing::info;

use crate::error::{MigrationError, Result};
use crate::pg::catalog::TableInfo;
use crate::pg::quote;

/// Copy unlogged tables again (logical replication cannot carry them).
pub async fn recopy_unlogged(src: &Client, dst: &Client, tables: &[TableInfo]) -> Result<()> {
    use futures::{SinkExt, StreamExt};
    for t in tables {
        let cols = t
            .columns
            .iter()
            .map(quote::ident)
            .collect::<Vec<_>>()
            .join(", ");
        dst.batch_execute("BEGIN")
            .await
            .map_err(|e| MigrationError::db("copying an unlogged table", e))?;
        super::empty_table(dst, &t.qualified()).await?;
        let out = src
            .copy_out(&format!("COPY {} ({cols}) TO STDOUT", t.qualified()))
            .await
            .map_err(|e| {
                MigrationError::db(format!("reading unlogged table {}", t.qualified()), e)
            })?;
        let sink = dst
            .copy_in(&format!("COPY {} ({cols}) FROM STDIN", t.qualified()))
            .await
            .map_err(|e| {
                MigrationError::db(format!("loading unlogged table {}", t.qualified()), e)
            })?;
        futures::pin_mut!(out);
        futures::pin_mut!(sink);
        while let Some(chunk) = out.next().await {
            let chunk = chunk.map_err(|e| MigrationError::db("reading an unlogged table", e))?;
            sink.send(chunk)
                .await
                .map_err(|e| MigrationError::db("loading an unlogged table", e))?;
        }
        sink.as_mut()
            .finish()
            .await
            .map_err(|e| MigrationError::db("loading an unlogged table", e))?;
        dst.batch_execute("COMMIT")
            .await
            .map_err(|e| MigrationError::db("copying an unlogged table", e))?;
        info!(table = %t.qualified(), "unlogged table copied again under the fence");
    }
    Ok(())
}

/// Refresh every populated materialized view (after the cutover's or the
/// rollback's copies: logical replication carries no matview contents).
pub async fn refresh_matviews(dst: &Client) -> Result<()> {
    let rows = dst
        .query_typed(
            "SELECT pg_catalog.format('%I.%I', n.nspname, c.relname)
               FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
              WHERE c.relkind = 'm' AND c.relispopulated ORDER BY c.oid",
            &[],
        )
        .await
        .map_err(|e| MigrationError::db("listing materialized views on the target", e))?;
    for r in rows {
        let name: String = r.get(0);
        dst.batch_execute(&format!("REFRESH MATERIALIZED VIEW {name}"))
            .await
            .map_err(|e| MigrationError::db(format!("refreshing {name}"), e))?;
    }
    Ok(())
}

/// Make the large objects of `dst` those of `src`: every one `src` has is
/// written again, and with `drop_extra` those only `dst` has are removed.
/// Returns how many were copied.
pub async fn recopy_large_objects(src: &Client, dst: &Client, drop_extra: bool) -> Result<usize> {
    let los = crate::pg::catalog::list_large_objects(src).await?;
    let mut oids: Vec<u32> = los.iter().map(|l| l.oid).collect();
    if drop_extra {
        for r in dst
            .query_typed("SELECT oid FROM pg_catalog.pg_largeobject_metadata", &[])
            .await
            .map_err(|e| MigrationError::db("listing large objects", e))?
        {
            oids.push(r.get(0));
        }
        oids.sort_unstable();
        oids.dedup();
    }
    if oids.is_empty() {
        return Ok(0);
    }
    super::erase_large_objects(dst, &oids).await?;
    super::copy_large_objects(src, dst, &los, &tokio_util::sync::CancellationToken::new()).await?;
    Ok(los.len())
}
