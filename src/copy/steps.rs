//! Schema steps applied on the target with their markers: steps commit
//! together with their marker rows (many per transaction), so a resumed
//! run never applies one twice, and a batch interrupted by a transient
//! fault is applied again on a new session unless its markers show that
//! its commit went through.
//! The post-data steps that need only one table's rows run beside the copy
//! (see [`crate::schema::Step::table`]); the rest follow the data.

use std::sync::Arc;

use crate::faults::Point;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::config::EndpointConfig;
use crate::error::{MigrationError, Result};
use crate::pg::connect::{self, Retry};
use crate::pg::{session, sessions};
use crate::schema::{self, Step};

/// Take the post-data steps that need only one table's rows (index builds
/// and keys, see [`Step::table`]) out of the script, to run beside the
/// copy. Moved, not copied: at 25,000 tables they are tens of megabytes,
/// and nothing after the copy runs them again (the copy stage ends with
/// every one applied, or fails).
pub(crate) fn take_early_steps(script: Option<&mut schema::SchemaScript>) -> Vec<Arc<Step>> {
    let Some(script) = script else {
        return Vec::new();
    };
    // Counted first, so neither list grows by doubling; and collected by
    // push, since `map(Arc::new).collect()` would keep the steps' own
    // allocation, ten times the pointers' size, for the whole run.
    let n = script
        .post_data
        .iter()
        .filter(|s| s.table.is_some())
        .count();
    let mut early = Vec::with_capacity(n);
    let mut rest = Vec::with_capacity(script.post_data.len() - n);
    for step in std::mem::take(&mut script.post_data) {
        if step.table.is_some() {
            early.push(Arc::new(step));
        } else {
            rest.push(step);
        }
    }
    script.post_data = rest;
    early
}

/// Of the steps [`take_early_steps`] took, those not committed yet (a
/// resumed run, or a copy started again on a new snapshot).
pub(crate) async fn pending_early_steps(
    dst: &Client,
    migration_id: &str,
    early: &[Arc<Step>],
) -> Result<Vec<Arc<Step>>> {
    if early.is_empty() {
        return Ok(Vec::new());
    }
    let done =
        super::committed_among(dst, migration_id, "post", early.iter().map(|s| &**s)).await?;
    Ok(early
        .iter()
        .filter(|s| !done.contains(&super::step_marker("post", s)))
        .cloned()
        .collect())
}

/// Everything after the rows: the rest of post-data in order, then the
/// foreign key validations in parallel, privileges, and the last steps.
/// Returns how many steps were applied now.
pub(crate) async fn apply_after_data(
    dst: &mut Client,
    target: &EndpointConfig,
    migration_id: &str,
    script: &schema::SchemaScript,
    jobs: usize,
    cancel: &CancellationToken,
) -> Result<usize> {
    let mut n = apply_steps(dst, target, migration_id, "post", &script.post_data, cancel).await?;
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
    n += apply_steps(dst, target, migration_id, "acl", &script.acl, cancel).await?;
    n += apply_steps(dst, target, migration_id, "last", &script.last, cancel).await?;
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
/// before the bad one and names it exactly. A transient fault (the session
/// lost, the server restarting, a serialization failure or deadlock) is
/// retried with [`Retry`]: on a new session when the old one is gone
/// (`dst` is replaced, so the caller goes on with the new one), once the
/// lost session's server process has ended, with the steps the markers do
/// not show committed. Returns how many were applied.
pub(crate) async fn apply_steps(
    dst: &mut Client,
    target: &EndpointConfig,
    migration_id: &str,
    part: &str,
    steps: &[Step],
    cancel: &CancellationToken,
) -> Result<usize> {
    let mut retry = Retry::new();
    let done = loop {
        match super::committed_among(
            dst,
            migration_id,
            part,
            steps.iter().filter(|s| !s.parallel),
        )
        .await
        {
            Ok(d) => break d,
            Err(e) => {
                retry.wait(e, "reading schema progress", cancel).await?;
                reopen(
                    dst,
                    target,
                    None,
                    &mut retry,
                    "reading schema progress",
                    cancel,
                )
                .await?;
            }
        }
    };
    // Foreign key validations run afterwards, in parallel (apply_parallel).
    let todo: Vec<&Step> = steps
        .iter()
        .filter(|s| !s.parallel && !done.contains(&super::step_marker(part, s)))
        .collect();
    let mut pid = if todo.is_empty() {
        None
    } else {
        sessions::backend_pid(dst).await.ok()
    };
    let mut n = 0;
    for batch in &batches(&todo) {
        if cancel.is_cancelled() {
            return Err(MigrationError::Cancelled);
        }
        crate::faults::test_pause_at("schema_batch").await;
        crate::faults::before(Point::SchemaStep).await;
        let mut retry = Retry::new();
        let mut left = batch.clone();
        loop {
            let Err(e) = apply_batch(dst, migration_id, part, &left).await else {
                break;
            };
            let what = format!("{part} schema steps from {}", left[0].describe);
            // A serialization failure or deadlock leaves the session
            // usable; anything else is redone on a new one.
            let keep = !dst.is_closed() && matches!(e.sqlstate(), Some("40001" | "40P01"));
            retry.wait(e, &what, cancel).await?;
            if !keep {
                reopen(dst, target, pid, &mut retry, &what, cancel).await?;
                pid = sessions::backend_pid(dst).await.ok();
            }
            let done =
                super::committed_among(dst, migration_id, part, left.iter().copied()).await?;
            left.retain(|s| !done.contains(&super::step_marker(part, s)));
            if left.is_empty() {
                info!(%what, "the interrupted commit had gone through");
                break;
            }
        }
        crate::faults::after(Point::SchemaStep).await;
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

/// A new schema session in place of `dst`, opened with `retry`'s backoff;
/// with `lost` (the old session's server process) only once that process
/// has ended, so the markers read next are final.
pub(crate) async fn reopen(
    dst: &mut Client,
    target: &EndpointConfig,
    lost: Option<i32>,
    retry: &mut Retry,
    what: &str,
    cancel: &CancellationToken,
) -> Result<()> {
    loop {
        let opened = async {
            let c = connect::connect(target, "target").await?;
            session::setup_ddl_target(&c).await?;
            Ok(c)
        };
        match opened.await {
            Ok(c) => {
                *dst = c;
                break;
            }
            Err(e) => retry.wait(e, what, cancel).await?,
        }
    }
    if let Some(pid) = lost {
        sessions::settle_lost(dst, pid, "target").await?;
    }
    Ok(())
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
        step.sql.push_joined(&mut sql);
        sql.push('\n');
    }
    sql.push_str(&super::markers_insert(migration_id, part, batch));
    if let Err(e) = dst.batch_execute(&sql).await {
        let e = MigrationError::db(
            format!("applying {} schema steps on the target", batch.len()),
            e,
        );
        if e.is_transient() {
            // Not the steps' fault: the caller retries the batch.
            return Err(e);
        }
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
        let size = s.sql.text_len();
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
