//! Schema steps applied on the target with their markers: steps commit
//! together with their marker rows (many per transaction), so a resumed
//! run never applies one twice.
//! The post-data steps that need only one table's rows run beside the copy
//! (see [`crate::schema::Step::table`]); the rest follow the data.

use crate::faults::{around, Point};
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::error::{MigrationError, Result};
use crate::schema::{self, Step};

/// The post-data steps still to run beside the copy (index builds and keys,
/// see [`Step::table`]).
pub(crate) async fn early_steps(
    dst: &Client,
    migration_id: &str,
    script: Option<&schema::SchemaScript>,
) -> Result<Vec<Step>> {
    let Some(script) = script else {
        return Ok(Vec::new());
    };
    let done = super::committed_steps(dst, migration_id).await?;
    Ok(script
        .post_data
        .iter()
        .filter(|s| s.table.is_some() && !done.contains(&super::step_marker("post", s)))
        .cloned()
        .collect())
}

/// Everything after the rows: the rest of post-data in order, then the
/// foreign key validations in parallel, privileges, and the last steps.
/// Returns how many steps were applied now.
pub(crate) async fn apply_after_data(
    dst: &Client,
    target: &crate::config::EndpointConfig,
    migration_id: &str,
    script: &schema::SchemaScript,
    jobs: usize,
    cancel: &CancellationToken,
) -> Result<usize> {
    let mut n = apply_steps(dst, migration_id, "post", &script.post_data, cancel).await?;
    let validations = script.post_data.iter().filter(|s| s.parallel).cloned();
    n += super::apply_parallel(
        target,
        migration_id,
        "post",
        validations.collect(),
        jobs,
        cancel,
    )
    .await?;
    n += apply_steps(dst, migration_id, "acl", &script.acl, cancel).await?;
    n += apply_steps(dst, migration_id, "last", &script.last, cancel).await?;
    Ok(n)
}

/// At most this many steps, or this much SQL, commit together: enough to
/// make 10,000 small objects a few hundred round trips, few enough that a
/// batch's locks fit any target's lock table and a failed batch is cheap
/// to replay one step at a time.
const BATCH_STEPS: usize = 100;
const BATCH_SQL_BYTES: usize = 512 * 1024;

/// Apply schema steps in batches: each batch is one implicit transaction
/// holding its steps and their marker rows in `_pg_dbmigrator.steps`, so a
/// crash leaves a batch wholly applied and recorded or not at all, and a
/// resumed run never applies a step twice. A failing batch is replayed one
/// step at a time (it had rolled back wholly), which applies the steps
/// before the bad one and names it exactly. Returns how many were applied.
pub(crate) async fn apply_steps(
    dst: &Client,
    migration_id: &str,
    part: &str,
    steps: &[Step],
    cancel: &CancellationToken,
) -> Result<usize> {
    let done = super::committed_steps(dst, migration_id).await?;
    // Foreign key validations run afterwards, in parallel (apply_parallel).
    let todo: Vec<&Step> = steps
        .iter()
        .filter(|s| !s.parallel && !done.contains(&super::step_marker(part, s)))
        .collect();
    let mut n = 0;
    for batch in &batches(&todo) {
        if cancel.is_cancelled() {
            return Err(MigrationError::Cancelled);
        }
        around(
            Point::SchemaStep,
            apply_batch(dst, migration_id, part, batch),
        )
        .await?;
        n += batch.len();
    }
    info!(
        part,
        applied = n,
        total = steps.len(),
        "schema steps applied"
    );
    Ok(n)
}

/// Apply `batch` in one implicit transaction with its markers; when it
/// fails, one step at a time, so the error names the step.
pub(crate) async fn apply_batch(
    dst: &Client,
    migration_id: &str,
    part: &str,
    batch: &[&Step],
) -> Result<()> {
    if batch.is_empty() {
        return Ok(());
    }
    if batch.len() == 1 {
        return super::apply_step(dst, migration_id, part, batch[0]).await;
    }
    let mut sql = String::new();
    for step in batch {
        sql.push_str(&step.sql.join("\n"));
        sql.push('\n');
    }
    sql.push_str(&super::markers_insert(migration_id, part, batch));
    if let Err(e) = dst.batch_execute(&sql).await {
        debug!(part, steps = batch.len(), error = %e, "a batch of schema steps failed: replaying it one step at a time");
        for step in batch {
            super::apply_step(dst, migration_id, part, step).await?;
        }
    }
    Ok(())
}

/// Consecutive runs of steps within the batch limits (order kept).
fn batches<'a>(steps: &[&'a Step]) -> Vec<Vec<&'a Step>> {
    let mut out: Vec<Vec<&Step>> = Vec::new();
    let mut bytes = 0;
    for &s in steps {
        let size: usize = s.sql.iter().map(|q| q.len() + 1).sum();
        match out.last_mut() {
            Some(b) if b.len() < BATCH_STEPS && bytes + size <= BATCH_SQL_BYTES => {
                b.push(s);
                bytes += size;
            }
            _ => {
                out.push(vec![s]);
                bytes = size;
            }
        }
    }
    out
}
