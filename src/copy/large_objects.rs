//! Large objects: ids, contents and owners.
//!
//! Contents are read in chunks with `lo_get(oid, offset, len)` inside the
//! migration's snapshot and written with `lo_put`, so a 1 GB object never
//! sits in memory. Objects are committed in batches; the stage is redone as a
//! whole after a crash (objects of an unfinished stage are unlinked first).

use std::collections::HashSet;

use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use crate::error::{MigrationError, Result};
use crate::pg::catalog::LargeObjectInfo;
use crate::pg::quote;

const CHUNK: i32 = 1024 * 1024;
const BATCH_OBJECTS: usize = 200;
const BATCH_BYTES: u64 = 64 * 1024 * 1024;

/// Copy the given large objects from `src` (a session on the snapshot) to `dst`.
/// Returns `(objects, bytes)`.
pub async fn copy_large_objects(
    src: &Client,
    dst: &Client,
    los: &[LargeObjectInfo],
    cancel: &CancellationToken,
) -> Result<(usize, u64)> {
    if los.is_empty() {
        return Ok((0, 0));
    }
    let roles = target_roles(dst).await?;
    let tdb =
        |oid: u32, e| MigrationError::db(format!("writing large object {oid} on the target"), e);
    let mut total: u64 = 0;
    let mut in_batch = (0usize, 0u64);
    let mut missing_roles = HashSet::new();
    dst.batch_execute("BEGIN").await.map_err(|e| tdb(0, e))?;
    for lo in los {
        if cancel.is_cancelled() {
            let _ = dst.batch_execute("ROLLBACK").await;
            return Err(MigrationError::Cancelled);
        }
        dst.query_one("SELECT pg_catalog.lo_create($1)", &[&lo.oid])
            .await
            .map_err(|e| tdb(lo.oid, e))?;
        let mut offset: i64 = 0;
        loop {
            let data: Vec<u8> = src
                .query_one(
                    "SELECT pg_catalog.lo_get($1, $2, $3)",
                    &[&lo.oid, &offset, &CHUNK],
                )
                .await
                .map_err(|e| {
                    MigrationError::db(
                        format!("reading large object {} from the source", lo.oid),
                        e,
                    )
                })?
                .get(0);
            if data.is_empty() {
                break;
            }
            dst.query_one(
                "SELECT pg_catalog.lo_put($1, $2, $3)",
                &[&lo.oid, &offset, &data],
            )
            .await
            .map_err(|e| tdb(lo.oid, e))?;
            offset += data.len() as i64;
            in_batch.1 += data.len() as u64;
            if (data.len() as i32) < CHUNK {
                break;
            }
        }
        total += offset as u64;
        apply_metadata(dst, lo, &roles, &mut missing_roles).await?;
        in_batch.0 += 1;
        if in_batch.0 >= BATCH_OBJECTS || in_batch.1 >= BATCH_BYTES {
            dst.batch_execute("COMMIT; BEGIN")
                .await
                .map_err(|e| tdb(lo.oid, e))?;
            in_batch = (0, 0);
        }
    }
    dst.batch_execute("COMMIT").await.map_err(|e| tdb(0, e))?;
    Ok((los.len(), total))
}

/// Owners, comments and privileges of large objects that exist on the
/// target (restored from an archive).
pub async fn large_object_metadata(dst: &Client, los: &[LargeObjectInfo]) -> Result<()> {
    let roles = target_roles(dst).await?;
    let mut missing_roles = HashSet::new();
    for lo in los {
        apply_metadata(dst, lo, &roles, &mut missing_roles).await?;
    }
    Ok(())
}

async fn target_roles(dst: &Client) -> Result<HashSet<String>> {
    Ok(dst
        .query_typed("SELECT rolname::text FROM pg_catalog.pg_roles", &[])
        .await
        .map_err(|e| MigrationError::db("listing roles on the target", e))?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

async fn apply_metadata(
    dst: &Client,
    lo: &LargeObjectInfo,
    roles: &HashSet<String>,
    missing_roles: &mut HashSet<String>,
) -> Result<()> {
    let tdb =
        |oid: u32, e| MigrationError::db(format!("writing large object {oid} on the target"), e);
    if roles.contains(&lo.owner) {
        dst.batch_execute(&format!(
            "ALTER LARGE OBJECT {} OWNER TO {}",
            lo.oid,
            quote::ident(&lo.owner)
        ))
        .await
        .map_err(|e| tdb(lo.oid, e))?;
    } else if missing_roles.insert(lo.owner.clone()) {
        crate::recorded::warn_recorded!(
            "role {} owning large objects does not exist on the target; they keep the migrating role as owner (create the role and rerun, or ALTER LARGE OBJECT ... OWNER TO afterwards)",
            lo.owner
        );
    }
    if let Some(c) = &lo.comment {
        dst.batch_execute(&format!(
            "COMMENT ON LARGE OBJECT {} IS {}",
            lo.oid,
            quote::literal(c)
        ))
        .await
        .map_err(|e| tdb(lo.oid, e))?;
    }
    let grants = crate::schema::acl::build_acl_commands(
        crate::schema::acl::AclObjectKind::LargeObject,
        &format!("LARGE OBJECT {}", lo.oid),
        None,
        lo.acl.as_deref(),
        &lo.acl_default,
        &lo.owner,
        15,
    )?;
    if !grants.is_empty() {
        dst.batch_execute(&grants.join("\n"))
            .await
            .map_err(|e| tdb(lo.oid, e))?;
    }
    Ok(())
}

/// Unlink those of `oids` that exist on the target (a half-done attempt, or --force-clean).
pub async fn erase_large_objects(dst: &Client, oids: &[u32]) -> Result<u64> {
    let rows = dst
        .query(
            "SELECT pg_catalog.lo_unlink(oid) FROM pg_catalog.pg_largeobject_metadata WHERE oid = ANY($1)",
            &[&oids],
        )
        .await
        .map_err(|e| MigrationError::db("removing large objects from the target", e))?;
    Ok(rows.len() as u64)
}
