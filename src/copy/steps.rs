//! Schema steps applied on the target with their markers: each step commits
//! together with its marker row, so a resumed run never applies one twice.
//! The post-data steps that need only one table's rows run beside the copy
//! (see [`crate::schema::Step::table`]); the rest follow the data.

use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;
use tracing::info;

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

/// Apply schema steps, each in one implicit transaction together with its
/// marker row in `_pg_dbmigrator.steps`, so a crash never leaves a step
/// half-applied or applied twice. Returns how many were applied now.
pub(crate) async fn apply_steps(
    dst: &Client,
    migration_id: &str,
    part: &str,
    steps: &[Step],
    cancel: &CancellationToken,
) -> Result<usize> {
    let done = super::committed_steps(dst, migration_id).await?;
    let mut n = 0;
    for step in steps {
        // Foreign key validations run afterwards, in parallel (apply_parallel).
        if step.parallel || done.contains(&super::step_marker(part, step)) {
            continue;
        }
        if cancel.is_cancelled() {
            return Err(MigrationError::Cancelled);
        }
        super::apply_step(dst, migration_id, part, step).await?;
        n += 1;
    }
    info!(
        part,
        applied = n,
        total = steps.len(),
        "schema steps applied"
    );
    Ok(n)
}
