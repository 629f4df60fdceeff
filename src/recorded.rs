//! What a run's tasks carry without a handle threaded through every call:
//! the sink of the warnings recorded for the run (connection retries,
//! preflight, target preparation, conninfo read inside a run), which the
//! run sets ([`recording`]), the job budget a whole-cluster migration
//! shares among its databases' copy workers ([`with_budget`]), and the
//! run's round-trip meter ([`meter`]; the socket that counts into it is
//! `pg::meter`'s). Spawned tasks carry all three ([`carried`]). The sink
//! is a closure (the run's progress, see `context`), so this module
//! imports nothing of the crate and anyone may use it: a leaf foundation.

use std::future::Future;
use std::sync::Arc;

pub(crate) mod meter;

/// Where a run's warnings go.
pub(crate) type Sink = Arc<dyn Fn(String) + Send + Sync>;

tokio::task_local! {
    static SINK: Sink;
    static BUDGET: Arc<tokio::sync::Semaphore>;
}

/// Run `fut` with copy workers that take a permit of `budget` for each
/// group of items they copy (`None`: no budget beyond their own number).
pub(crate) async fn with_budget<F: Future>(
    budget: Option<Arc<tokio::sync::Semaphore>>,
    fut: F,
) -> F::Output {
    match budget {
        Some(b) => BUDGET.scope(b, fut).await,
        None => fut.await,
    }
}

/// A permit of the run's job budget, held while a worker copies; `None`
/// when the run has none (a single-database run).
pub(crate) async fn job_permit() -> Option<tokio::sync::OwnedSemaphorePermit> {
    let budget = BUDGET.try_with(Arc::clone).ok()?;
    budget.acquire_owned().await.ok()
}

/// The `tracing` target of the log records whose warning or error the
/// library recorded in the run's progress itself (the CLI's log-to-events
/// layer skips them, so they are not counted twice).
pub const RECORDED_TARGET: &str = "pg_dbmigrator::recorded";

/// Run `fut` as part of a run whose warnings go to `sink`.
pub(crate) async fn recording<F: Future>(sink: Option<Sink>, fut: F) -> F::Output {
    match sink {
        Some(s) => SINK.scope(s, fut).await,
        None => fut.await,
    }
}

/// `fut`, carrying the current run's sink into a task it is spawned as (a
/// task-local does not follow a spawn by itself).
pub(crate) fn carried<F: Future>(fut: F) -> impl Future<Output = F::Output> {
    let budget = BUDGET.try_with(Arc::clone).ok();
    meter::inherit(recording(
        SINK.try_with(Arc::clone).ok(),
        with_budget(budget, fut),
    ))
}

/// Log a warning and record it in the current run's progress, if the task
/// works for one: see [`warn_recorded`].
pub(crate) fn record_warning(message: String) {
    tracing::warn!(target: "pg_dbmigrator::recorded", "{message}");
    let _ = SINK.try_with(|s| s(message));
}

/// `tracing::warn!` for what an operator or an embedder should see: the
/// warning is also recorded in the run's progress, so a library caller
/// without a `tracing` subscriber gets it in `Snapshot::warnings` and as
/// an `Event::Warning`. Takes `format!` arguments.
macro_rules! warn_recorded {
    ($($arg:tt)*) => {
        $crate::recorded::record_warning(format!($($arg)*))
    };
}
pub(crate) use warn_recorded;
