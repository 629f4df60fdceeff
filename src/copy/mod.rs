//! The data copier: every table's rows, the sequences and the large objects,
//! read under one exported snapshot and streamed straight into the target.
//!
//! A coordinator session on the source exports a REPEATABLE READ snapshot and
//! stays open until every worker has imported it; `jobs` copy workers then
//! each hold one source and one target session and take work items (whole
//! tables, or page ranges of big ones, see [`plan`]) largest-first from a
//! shared queue. An item is copied in one target transaction that also
//! records it in `_pg_dbmigrator.copied`, so after a crash the target itself
//! says which items committed: none is ever loaded twice.
//!
//! Beside them, `index_jobs` index workers build a table's indexes and keys
//! as soon as its last item is in (while other tables still copy), attach
//! key constraints to the built indexes, then ANALYZE the table.
//!
//! A stage: writes only to the target (or to an archive); reads the source
//! on the snapshot it is given and never changes it; imports no orchestrator.

mod batch;
mod large_objects;
mod recopy;
pub mod steps;
pub(crate) use steps::{apply_after_data, apply_steps, pending_early_steps, take_early_steps};
pub mod plan;
pub mod pressure;
pub mod rate;
mod rows;
mod sequences;
pub(crate) mod statistics;
mod worker;

use crate::faults::{self, Point};
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::config::EndpointConfig;
use crate::error::{MigrationError, Result};
use crate::pg::catalog::TableInfo;
use crate::pg::{connect, quote, session};
use crate::resume::{CopyMarker, TokenStore};
use crate::schema::Step;
use crate::workers::Workers;
use plan::WorkItem;
use worker::ItemResult;

pub use large_objects::{copy_large_objects, erase_large_objects, large_object_metadata};
pub use recopy::{recopy_large_objects, recopy_unlogged, refresh_matviews};
pub(crate) use rows::RowCounter;
pub use sequences::{copy_moved_sequences, copy_sequences, presync_sequences, SequenceValues};
pub use worker::WireFormat;
pub(crate) use worker::{empty_partitioned, empty_table};

/// Schema on the target holding our bookkeeping; dropped when the migration completes.
pub const STATE_SCHEMA: &str = "_pg_dbmigrator";

/// What one table's copy did (all its chunks together).
#[derive(Debug, Clone, serde::Serialize)]
pub struct TableResult {
    /// The table, quoted (`schema.name`).
    pub table: String,
    /// Rows copied.
    pub rows: u64,
    /// COPY bytes moved.
    pub bytes: u64,
    /// From the start of its first chunk to the end of its last.
    pub seconds: f64,
    /// Items copied in this run (a table split in chunks has several).
    pub chunks: u32,
    /// Loaded with COPY FREEZE (whole tables the target could truncate).
    pub freeze: bool,
    /// Binary or text COPY.
    pub format: WireFormat,
    /// `txid_current_snapshot()` as the worker saw it: identical for every
    /// worker, because all imported the coordinator's snapshot.
    pub snapshot: String,
    /// Re-shaped: the target relation the rows went into (a partitioned
    /// table, or the plain table holding a partitioned source's rows).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loaded_into: Option<String>,
}

/// Shared by all workers of one copy.
pub struct CopyContext {
    pub input: Input,
    pub output: Output,
    pub migration_id: String,
    pub jobs: usize,
    /// Sessions building indexes and keys beside the copy.
    pub index_jobs: usize,
    /// Binary COPY allowed for tables whose types allow it.
    pub binary: bool,
    /// ANALYZE each table once its indexes are built.
    pub analyze: bool,
    pub token: Arc<TokenStore>,
    /// Where each worker's current item is shown, if anywhere.
    pub progress: Option<Arc<crate::progress::Progress>>,
    /// `--max-rate`: the cap on the source's read rate, shared by every
    /// worker.
    pub rate: Option<Arc<rate::RateLimit>>,
    /// `--source-pressure`: the copy starts a governor that samples the
    /// source and holds every worker while it is under pressure.
    pub pressure: Option<pressure::Watch>,
}

impl CopyContext {
    /// The retry policy of a worker: each retry is also a warning of the
    /// run's progress.
    pub(crate) fn retry(&self) -> connect::Retry {
        connect::Retry::noting(
            self.progress
                .clone()
                .map(|p| std::sync::Arc::new(move |m: String| p.warn(m)) as connect::Note),
        )
    }
}

/// Where the rows come from.
pub enum Input {
    /// The source server, on the exported snapshot.
    Server {
        endpoint: Box<EndpointConfig>,
        snapshot_id: String,
    },
    /// A dump archive (restore): each item names its file.
    Archive(Arc<crate::archive::Archive>),
}

/// Where the rows go.
pub enum Output {
    Target(Box<EndpointConfig>),
    /// A dump archive directory, zstd at this level.
    Archive {
        dir: std::path::PathBuf,
        level: i32,
    },
}

impl CopyContext {
    fn target(&self) -> Option<&EndpointConfig> {
        match &self.output {
            Output::Target(t) => Some(t),
            Output::Archive { .. } => None,
        }
    }
}

/// Per-session settings of index workers: a bigger sort memory than the
/// server default and parallel workers for a single big index build.
/// Never lowered below what the server already has.
const INDEX_SESSION_SETTINGS: &str = "
    SELECT pg_catalog.set_config('maintenance_work_mem',
             CASE WHEN pg_catalog.pg_size_bytes(pg_catalog.current_setting('maintenance_work_mem')) >= 536870912
                  THEN pg_catalog.current_setting('maintenance_work_mem') ELSE '512MB' END, false),
           pg_catalog.set_config('max_parallel_maintenance_workers',
             GREATEST(pg_catalog.current_setting('max_parallel_maintenance_workers')::int, 4)::text, false)";

/// The marker of a schema step in `_pg_dbmigrator.steps`.
pub(crate) fn step_marker(part: &str, step: &Step) -> String {
    format!("{part}:{}", step.describe)
}

/// One INSERT of the marker rows of `steps`.
pub(crate) fn markers_insert(migration_id: &str, part: &str, steps: &[&Step]) -> String {
    let rows: Vec<String> = steps
        .iter()
        .map(|s| {
            format!(
                "({}, {})",
                quote::literal(migration_id),
                quote::literal(&step_marker(part, s))
            )
        })
        .collect();
    format!(
        "INSERT INTO {STATE_SCHEMA}.steps (migration_id, item) VALUES {};",
        rows.join(", ")
    )
}

/// Apply one schema step in one implicit transaction together with its
/// marker row, so a crash never leaves it half-applied or applied twice.
pub(crate) async fn apply_step(
    dst: &Client,
    migration_id: &str,
    part: &str,
    step: &Step,
) -> Result<()> {
    let mut sql = step.sql.joined();
    sql.push('\n');
    sql.push_str(&markers_insert(migration_id, part, &[step]));
    dst.batch_execute(&sql)
        .await
        .map_err(|e| MigrationError::db(format!("creating {} on the target", step.describe), e))
}

/// Apply independent steps (foreign key validations) with up to `jobs`
/// sessions, each step with its marker; steps already marked are skipped.
/// Returns how many were applied now.
pub(crate) async fn apply_parallel(
    target: &EndpointConfig,
    migration_id: &str,
    part: &str,
    steps: Vec<Step>,
    jobs: usize,
    cancel: &CancellationToken,
) -> Result<usize> {
    if steps.is_empty() {
        return Ok(0);
    }
    let first = connect::connect(target, "target").await?;
    let done = committed_among(&first, migration_id, part, &steps).await?;
    let todo: VecDeque<Step> = steps
        .into_iter()
        .filter(|s| !done.contains(&step_marker(part, s)))
        .collect();
    let n = todo.len();
    let queue = Arc::new(Mutex::new(todo));
    let mut workers = Workers::new(cancel, "schema step");
    let stop = workers.stop_token();
    for _ in 0..jobs.max(1).min(n) {
        let (queue, target, stop) = (queue.clone(), target.clone(), stop.clone());
        let (migration_id, part) = (migration_id.to_string(), part.to_string());
        workers.spawn(async move {
            let mut dst = connect::connect(&target, "target").await?;
            session::setup_ddl_target(&dst).await?;
            let mut pid = crate::pg::sessions::backend_pid(&dst).await?;
            loop {
                let Some(mut batch) = take_parallel_batch(&queue, jobs) else {
                    return Ok(());
                };
                let t0 = Instant::now();
                let (what, n) = (batch[0].describe.clone(), batch.len());
                // A transient fault: the batch again on a new session,
                // without the steps whose markers show they committed.
                let mut retry = connect::Retry::new();
                loop {
                    let refs: Vec<&Step> = batch.iter().collect();
                    let Err(e) = steps::apply_batch(&dst, &migration_id, &part, &refs).await
                    else {
                        break;
                    };
                    retry.wait(e, &what, &stop).await?;
                    steps::reopen(&mut dst, &target, Some(pid), &mut retry, &what, &stop).await?;
                    pid = crate::pg::sessions::backend_pid(&dst).await?;
                    let done = committed_among(&dst, &migration_id, &part, &batch).await?;
                    batch.retain(|s| !done.contains(&step_marker(&part, s)));
                    if batch.is_empty() {
                        break;
                    }
                }
                info!(step = %what, steps = n, seconds = format!("{:.2}", t0.elapsed().as_secs_f64()), "applied");
            }
        });
    }
    workers.join(cancel).await?;
    Ok(n)
}

/// At most this many parallel steps (foreign-key validations) travel
/// together.
const PARALLEL_BATCH: usize = 16;

/// The next steps a parallel worker applies in one round trip: at most
/// its share of those left (so large validations still spread over the
/// workers), and every queued validation of a table the batch holds (two
/// batches never wait on each other's table locks). `None`: nothing left.
fn take_parallel_batch(queue: &Mutex<VecDeque<Step>>, jobs: usize) -> Option<Vec<Step>> {
    let mut q = queue.lock().unwrap_or_else(|e| e.into_inner());
    let first = q.pop_front()?;
    let share = (q.len() + 1).div_ceil(jobs.max(1)).clamp(1, PARALLEL_BATCH);
    let mut batch = vec![first];
    while batch.len() < share {
        match q.pop_front() {
            Some(s) => batch.push(s),
            None => break,
        }
    }
    let tables: std::collections::HashSet<String> = batch
        .iter()
        .map(|s| validated_table(s).to_string())
        .collect();
    let mut i = 0;
    while i < q.len() {
        if tables.contains(validated_table(&q[i])) {
            batch.extend(q.remove(i));
        } else {
            i += 1;
        }
    }
    Some(batch)
}

/// The table a validation step locks (`ALTER TABLE [ONLY] t VALIDATE
/// CONSTRAINT c`, as the schema stage writes it); its description when it
/// is another kind of step.
fn validated_table(s: &Step) -> &str {
    s.sql
        .first()
        .and_then(|q| q.strip_prefix("ALTER TABLE "))
        .and_then(|q| q.split(" VALIDATE CONSTRAINT ").next())
        .map(|t| t.trim_start_matches("ONLY "))
        .unwrap_or(&s.describe)
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
    let exists = crate::pg::relation_exists(target, &format!("{STATE_SCHEMA}.copied"))
        .await
        .map_err(|e| MigrationError::db("reading copy progress on the target", e))?;
    if !exists {
        return Ok(BTreeSet::new());
    }
    crate::pg::text_set(
        target,
        &format!("SELECT item FROM {STATE_SCHEMA}.copied WHERE migration_id = $1"),
        migration_id,
    )
    .await
    .map_err(|e| MigrationError::db("reading copy progress on the target", e))
}

/// Schema steps the target says are committed for this migration.
pub async fn committed_steps(target: &Client, migration_id: &str) -> Result<BTreeSet<String>> {
    crate::pg::text_set(
        target,
        &format!("SELECT item FROM {STATE_SCHEMA}.steps WHERE migration_id = $1"),
        migration_id,
    )
    .await
    .map_err(|e| MigrationError::db("reading schema progress on the target", e))
}

/// Of the markers of `steps` (in `part`), those committed. The part's
/// markers are read as they arrive and kept only when they may name one
/// of `steps` (by hash; the caller compares whole names), so a run holds
/// what it may skip and no more. Reading every marker of the migration
/// instead cost a string per step already applied: at 25,000 tables the
/// 110,000 markers of pre-data and of the early post-data steps, 12 MB,
/// when post-data began (none naming a step post-data still had); and
/// sending the names to the server would cost as much again.
pub(crate) async fn committed_among<'a>(
    target: &Client,
    migration_id: &str,
    part: &str,
    steps: impl IntoIterator<Item = &'a Step>,
) -> Result<BTreeSet<String>> {
    use tokio_postgres::types::Type;
    // Spelled as `step_marker` spells a marker, without building it.
    let wanted: std::collections::HashSet<u64> = steps
        .into_iter()
        .map(|s| marker_hash(&[part, ":", &s.describe]))
        .collect();
    let mut out = BTreeSet::new();
    if wanted.is_empty() {
        return Ok(out);
    }
    let prefix = format!("{part}:");
    crate::pg::each_row(
        target,
        &format!(
            "SELECT item FROM {STATE_SCHEMA}.steps \
              WHERE migration_id = $1 AND pg_catalog.starts_with(item, $2)"
        ),
        [(migration_id, Type::TEXT), (prefix.as_str(), Type::TEXT)],
        |r| {
            let item: &str = r.get(0);
            if wanted.contains(&marker_hash(&[item])) {
                out.insert(item.to_string());
            }
        },
    )
    .await
    .map_err(|e| MigrationError::db("reading schema progress on the target", e))?;
    Ok(out)
}

/// The hash of the marker the pieces spell, one after another: the same
/// for a marker built from its part and step as for the marker read back.
fn marker_hash(pieces: &[&str]) -> u64 {
    use std::hash::Hasher;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    pieces.iter().for_each(|p| h.write(p.as_bytes()));
    h.finish()
}

/// Make `table` (a target relation only its own source table loads) as if
/// none of its `items` had been copied: its rows and their markers go in
/// one transaction. For a table some of whose chunks were copied on a
/// snapshot that is lost: the rest cannot be read on that snapshot, and
/// chunks read on two snapshots may hold a row twice or not at all (an
/// update moves a row to another page).
pub async fn restart_table(
    target: &Client,
    migration_id: &str,
    table: &str,
    items: &[String],
) -> Result<()> {
    let ctx = |e| {
        MigrationError::db(
            format!("emptying {table} on the target to copy it again"),
            e,
        )
    };
    target.batch_execute("BEGIN").await.map_err(ctx)?;
    let done = async {
        empty_table(target, table).await?;
        target
            .execute(
                &format!(
                    "DELETE FROM {STATE_SCHEMA}.copied WHERE migration_id = $1 AND item = ANY($2)"
                ),
                &[&migration_id, &items],
            )
            .await
            .map_err(ctx)?;
        target.batch_execute("COMMIT").await.map_err(ctx)
    };
    match done.await {
        Ok(()) => Ok(()),
        Err(e) => {
            let _ = target.batch_execute("ROLLBACK").await;
            Err(e)
        }
    }
}

/// Remove our bookkeeping from the target.
pub async fn drop_target_state(target: &Client) -> Result<()> {
    target
        .batch_execute(&format!("DROP SCHEMA IF EXISTS {STATE_SCHEMA} CASCADE"))
        .await
        .map_err(|e| MigrationError::db("removing the bookkeeping schema from the target", e))
}

/// What the copy stage did.
#[derive(Debug, Default)]
pub struct CopyOutcome {
    /// Tables with at least one item copied in this run, largest first.
    pub tables: Vec<TableResult>,
    /// Post-data steps (indexes, keys) applied beside the copy.
    pub index_steps: usize,
    pub analyzed: usize,
    /// `--source-pressure`: what its governor did.
    pub pressure: Option<crate::progress::PressureSummary>,
}

/// Work for an index worker.
enum IndexTask {
    /// Build one index of a loaded table.
    Build(Arc<Step>),
    /// Attach keys to the built indexes (a small table's builds too, all
    /// in one transaction), then ANALYZE a table of more than a few rows.
    Finish {
        table: String,
        steps: Vec<Arc<Step>>,
        rows: u64,
    },
    /// Several small tables' `Finish` (too few rows to ANALYZE), in one
    /// transaction: one round trip for them all.
    FinishSmall(Vec<(String, Vec<Arc<Step>>)>),
}

/// At most this many small tables' keys, or steps, travel together.
const FINISH_TABLES: usize = 16;
const FINISH_STEPS: usize = 100;

#[derive(Default)]
struct State {
    /// Index workers run: loaded tables get index and finish tasks.
    indexing: bool,
    items: VecDeque<WorkItem>,
    index_tasks: VecDeque<IndexTask>,
    /// Per table: items not yet committed (queued or running).
    items_left: Vec<u32>,
    /// Per table name: index builds not yet done, and the steps to run after them.
    builds_left: HashMap<String, u32>,
    builds: HashMap<String, Vec<Arc<Step>>>,
    after: HashMap<String, Vec<Arc<Step>>>,
    copies_running: usize,
    index_running: usize,
    /// Per table: its committed items summed as each commits. A list of
    /// the items' results, summed at the end, was 6.5 MB at 25,000 tables.
    tallies: Vec<Option<Tally>>,
    /// `txid_current_snapshot()` as the first committed item saw it; every
    /// worker imported the same snapshot.
    snapshot: Option<Arc<str>>,
    /// Rows loaded now, per table name.
    rows: HashMap<String, u64>,
    index_steps: usize,
    analyzed: usize,
}

/// One table's committed items, summed (see `State::tallies`).
struct Tally {
    rows: u64,
    bytes: u64,
    chunks: u32,
    freeze: bool,
    format: WireFormat,
    started: Instant,
    finished: Instant,
}

/// The shared queues of one copy stage.
pub(crate) struct Scheduler {
    ctx: Arc<CopyContext>,
    tables: Arc<[TableInfo]>,
    state: Mutex<State>,
    wake: tokio::sync::Notify,
    /// `--source-pressure`: what each worker awaits before each chunk.
    gate: Option<pressure::Gate>,
}

impl Scheduler {
    /// The next item, and when it is a small whole table, the small whole
    /// tables after it (up to `max` items and `max_bytes`), to be loaded in
    /// one transaction.
    /// Groups shrink as the queue does (a quarter of each worker's share of
    /// what is left), so a short queue is still spread over every worker
    /// and one slow table holds back few others.
    fn next_items(&self, max: usize, small: u64, max_bytes: u64) -> Vec<WorkItem> {
        let mut s = self.state.lock().unwrap();
        let share = s.items.len() / (4 * self.ctx.jobs.max(1));
        let max = max.min(share).max(1);
        let mut out = Vec::new();
        let mut bytes = 0;
        while out.len() < max {
            let take = match s.items.front() {
                None => false,
                Some(_) if out.is_empty() => true,
                // Chunks are cut to be loaded in parallel: never grouped.
                Some(i) => i.is_whole() && i.est_bytes < small && bytes + i.est_bytes <= max_bytes,
            };
            if !take {
                break;
            }
            let item = s.items.pop_front().expect("checked");
            bytes += item.est_bytes;
            let alone = item.est_bytes >= small || !item.is_whole();
            out.push(item);
            if alone {
                break;
            }
        }
        s.copies_running += out.len();
        out
    }

    fn item_done(&self, item: &WorkItem, r: ItemResult) {
        let mut s = self.state.lock().unwrap();
        s.copies_running -= 1;
        s.items_left[item.table] -= 1;
        let t = &self.tables[item.table];
        // Post-data steps and ANALYZE go by the target relation: for a
        // re-shaped table, once every source table loading into it is in.
        let target = t.target_name();
        *s.rows.entry(target.clone()).or_default() += r.rows;
        if s.snapshot.is_none() {
            s.snapshot = Some(r.snapshot.clone());
        }
        match &mut s.tallies[item.table] {
            Some(t) => {
                t.rows += r.rows;
                t.bytes += r.bytes;
                t.chunks += 1;
                t.freeze &= r.freeze;
                t.started = t.started.min(r.started);
                t.finished = t.finished.max(r.finished);
            }
            slot @ None => {
                *slot = Some(Tally {
                    rows: r.rows,
                    bytes: r.bytes,
                    chunks: 1,
                    freeze: r.freeze,
                    format: r.format,
                    started: r.started,
                    finished: r.finished,
                })
            }
        }
        let all_in = s.items_left[item.table] == 0
            && (t.load_into.is_none()
                || self
                    .tables
                    .iter()
                    .enumerate()
                    .all(|(i, o)| s.items_left[i] == 0 || o.target_name() != target));
        if all_in {
            Self::table_loaded(&mut s, target, is_small(t));
        }
        drop(s);
        self.wake.notify_waiters();
    }

    /// A table's rows are all in: queue its index builds, or its finish.
    /// A small table's builds and keys are one task, one transaction: on
    /// 10,000 tiny tables, a round trip and a commit per index is most of
    /// the work, and there is nothing to build in parallel.
    fn table_loaded(s: &mut State, table: String, small: bool) {
        if !s.indexing {
            return;
        }
        let mut builds = s.builds.remove(&table).unwrap_or_default();
        let rows = s.rows.get(&table).copied().unwrap_or(0);
        if builds.is_empty() || small {
            builds.extend(s.after.remove(&table).unwrap_or_default());
            s.index_tasks.push_back(IndexTask::Finish {
                table,
                steps: builds,
                rows,
            });
        } else {
            s.builds_left.insert(table, builds.len() as u32);
            s.index_tasks
                .extend(builds.into_iter().map(IndexTask::Build));
        }
    }

    /// The next index task; `None` when no more can come.
    async fn next_index_task(&self, stop: &CancellationToken) -> Option<IndexTask> {
        loop {
            let notified = self.wake.notified();
            futures::pin_mut!(notified);
            notified.as_mut().enable();
            {
                let mut s = self.state.lock().unwrap();
                if let Some(t) = s.index_tasks.pop_front() {
                    s.index_running += 1;
                    return Some(match t {
                        IndexTask::Finish { table, steps, rows } if rows < ANALYZE_MIN_ROWS => {
                            // Small tables queued together go together.
                            let mut n = steps.len();
                            let mut group = vec![(table, steps)];
                            while let Some(IndexTask::Finish { steps, rows, .. }) =
                                s.index_tasks.front()
                            {
                                if *rows >= ANALYZE_MIN_ROWS
                                    || group.len() >= FINISH_TABLES
                                    || n + steps.len() > FINISH_STEPS
                                {
                                    break;
                                }
                                let Some(IndexTask::Finish { table, steps, .. }) =
                                    s.index_tasks.pop_front()
                                else {
                                    unreachable!("the front is a Finish")
                                };
                                n += steps.len();
                                group.push((table, steps));
                            }
                            match group.len() {
                                1 => {
                                    let (table, steps) = group.pop().expect("one");
                                    IndexTask::Finish { table, steps, rows }
                                }
                                _ => IndexTask::FinishSmall(group),
                            }
                        }
                        t => t,
                    });
                }
                let copies_over = s.items.is_empty() && s.copies_running == 0;
                if copies_over && s.index_running == 0 {
                    return None;
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return None,
                _ = notified => {}
            }
        }
    }

    fn index_task_done(&self, built: Option<String>, steps: usize, analyzed: bool) {
        let mut s = self.state.lock().unwrap();
        s.index_running -= 1;
        s.index_steps += steps;
        s.analyzed += analyzed as usize;
        if let Some(table) = built {
            let left = s.builds_left.get_mut(&table).expect("counted build");
            *left -= 1;
            if *left == 0 {
                s.builds_left.remove(&table);
                let steps = s.after.remove(&table).unwrap_or_default();
                let rows = s.rows.get(&table).copied().unwrap_or(0);
                s.index_tasks
                    .push_back(IndexTask::Finish { table, steps, rows });
            }
        }
        drop(s);
        self.wake.notify_waiters();
    }
}

/// Copy the pending `items` of `tables` with `ctx.jobs` workers, and apply
/// the pending `early` post-data steps (those with [`Step::table`] set)
/// with `ctx.index_jobs` workers as each table is loaded. Each committed
/// item is recorded in the resume token before its worker takes the next.
/// On the first error, or on cancellation, every worker stops and the
/// error is returned once all have been joined.
///
/// `early` is left as it was when the copy fails (a copy started again
/// applies those not committed), and emptied when it succeeds: every one
/// is applied then, and freeing them before the copy sums up matters. At
/// 25,000 tables they are 26 MB, which the caller's list kept alive
/// through the copy's end, where the run's heap peaked.
pub async fn copy_tables(
    ctx: Arc<CopyContext>,
    tables: Arc<[TableInfo]>,
    items: Vec<WorkItem>,
    early: &mut Vec<Arc<Step>>,
    cancel: CancellationToken,
) -> Result<CopyOutcome> {
    if let Some(p) = &ctx.progress {
        p.set_max_rate(ctx.rate.as_ref().map(|r| r.bytes_per_second()));
    }
    let mut st = State {
        items_left: vec![0; tables.len()],
        tallies: (0..tables.len()).map(|_| None).collect(),
        ..Default::default()
    };
    for i in &items {
        st.items_left[i.table] += 1;
    }
    for step in early.iter().cloned() {
        let table = step
            .table
            .as_deref()
            .expect("early steps name their table")
            .to_string();
        if step.after_indexes {
            st.after.entry(table).or_default().push(step);
        } else {
            st.builds.entry(table).or_default().push(step);
        }
    }
    st.indexing = ctx.target().is_some()
        && (!st.builds.is_empty() || !st.after.is_empty() || (ctx.analyze && !items.is_empty()));
    // Tables loaded by an earlier attempt (or not copied at all) are ready now.
    // Shared by the index workers (a copy each was 2 MB at 25,000 tables).
    let copied: BTreeSet<String> = tables
        .iter()
        .enumerate()
        .filter(|(i, _)| st.items_left[*i] > 0)
        .map(|(_, t)| t.target_name())
        .collect();
    let mut ready: BTreeSet<String> = st.builds.keys().chain(st.after.keys()).cloned().collect();
    ready.retain(|t| !copied.contains(t));
    let copied = Arc::new(copied);
    let small: BTreeSet<String> = tables
        .iter()
        .filter(|t| is_small(t))
        .map(|t| t.qualified())
        .collect();
    for t in ready {
        let s = small.contains(&t);
        Scheduler::table_loaded(&mut st, t, s);
    }
    let n_items = items.len();
    st.items = VecDeque::from(items);
    // Started before the workers, stopped and joined after them; its
    // task dies with the run's cancellation like theirs.
    let governor = ctx
        .pressure
        .as_ref()
        .filter(|_| n_items > 0)
        .map(|w| pressure::Governor::start(w, true, ctx.progress.clone(), &cancel));
    let sched = Arc::new(Scheduler {
        ctx: ctx.clone(),
        tables,
        state: Mutex::new(st),
        wake: tokio::sync::Notify::new(),
        gate: governor.as_ref().map(|g| g.gate()),
    });
    // A worker blocked on a lock or a slow server must not hold up Ctrl-C:
    // dropping it closes its sessions, which rolls back its open
    // transaction; `_pg_dbmigrator.copied` tells what had committed.
    let mut workers = Workers::new(&cancel, "copy");
    let stop = workers.stop_token();
    for id in 0..ctx.jobs.max(1).min(n_items) {
        let (sched, stop) = (sched.clone(), stop.clone());
        workers.spawn(async move {
            let r = worker::run(id, &sched, &stop).await;
            // Index workers may be waiting for the last copy.
            sched.wake.notify_waiters();
            r
        });
    }
    if sched.state.lock().unwrap().indexing {
        for id in 0..ctx.index_jobs.max(1) {
            let (sched, stop, copied) = (sched.clone(), stop.clone(), copied.clone());
            workers.spawn(async move { index_worker(id, &sched, &copied, &stop).await });
        }
    }
    let joined = workers.join(&cancel).await;
    let pressure = match governor {
        Some(g) => Some(g.finish(&cancel).await),
        None => None,
    };
    joined?;
    let mut s = sched.state.lock().unwrap();
    if !s.index_tasks.is_empty() || !s.builds.is_empty() || !s.builds_left.is_empty() {
        return Err(MigrationError::Internal(
            "index builds left over after the copy".into(),
        ));
    }
    // All applied, and no task holds one any more.
    *early = Vec::new();
    let snapshot = s.snapshot.take().unwrap_or_default();
    let mut tables: Vec<TableResult> = std::mem::take(&mut s.tallies)
        .into_iter()
        .enumerate()
        .filter_map(|(i, t)| Some((i, t?)))
        .map(|(i, t)| TableResult {
            table: sched.tables[i].qualified(),
            rows: t.rows,
            bytes: t.bytes,
            seconds: t.finished.duration_since(t.started).as_secs_f64(),
            chunks: t.chunks,
            freeze: t.freeze,
            format: t.format,
            snapshot: snapshot.to_string(),
            loaded_into: sched.tables[i]
                .load_into
                .as_ref()
                .map(|l| l.relation.clone()),
        })
        .collect();
    // In place (a stable sort's buffer was 2.6 MB at 25,000 tables).
    tables.sort_unstable_by(|a, b| b.bytes.cmp(&a.bytes).then_with(|| a.table.cmp(&b.table)));
    Ok(CopyOutcome {
        tables,
        index_steps: s.index_steps,
        analyzed: s.analyzed,
        pressure,
    })
}

/// Tables smaller than this (on the source's disk) have their index
/// builds and keys applied in one transaction.
const SMALL_TABLE_BYTES: i64 = 1 << 20;
/// Tables loaded with fewer rows are not analyzed by the migration.
pub(crate) const ANALYZE_MIN_ROWS: u64 = 1000;

fn is_small(t: &TableInfo) -> bool {
    t.bytes < SMALL_TABLE_BYTES
}

/// A target session for index builds and keys.
async fn index_session(target: &EndpointConfig) -> Result<Client> {
    let dst = connect::connect(target, "target").await?;
    session::setup_target(&dst).await?;
    dst.batch_execute(crate::schema::emit::APPLY_SETTINGS)
        .await
        .map_err(|e| MigrationError::db("configuring the target session", e))?;
    dst.batch_execute(INDEX_SESSION_SETTINGS)
        .await
        .map_err(|e| MigrationError::db("configuring the target session", e))?;
    Ok(dst)
}

/// One index worker: a target session applying early post-data steps. A
/// transient fault loses only the step being built (one transaction with
/// its marker): it is built again on a new session, unless its marker
/// shows that its commit went through.
async fn index_worker(
    id: usize,
    sched: &Scheduler,
    copied: &BTreeSet<String>,
    stop: &CancellationToken,
) -> Result<()> {
    let ctx = &sched.ctx;
    let target = ctx.target().expect("index workers run against a target");
    let mut dst = {
        let mut retry = ctx.retry();
        loop {
            match index_session(target).await {
                Ok(c) => break c,
                Err(e) => retry.wait(e, "opening a session", stop).await?,
            }
        }
    };
    let mut pid = crate::pg::sessions::backend_pid(&dst).await.ok();
    debug!(worker = id, "index worker ready");
    while let Some(task) = sched.next_index_task(stop).await {
        let what = match &task {
            IndexTask::Build(step) => step.describe.to_string(),
            IndexTask::Finish { table, .. } => format!("indexes and keys of {table}"),
            IndexTask::FinishSmall(g) => format!(
                "indexes and keys of {} and {} other small table(s)",
                g[0].0,
                g.len() - 1
            ),
        };
        let mut retry = ctx.retry();
        // Steps of this task already committed (known after a fault).
        let mut done: Option<BTreeSet<String>> = None;
        let pending = |steps: &[Arc<Step>], done: &Option<BTreeSet<String>>| -> Vec<Arc<Step>> {
            steps
                .iter()
                .filter(|s| {
                    done.as_ref()
                        .is_none_or(|d| !d.contains(&step_marker("post", s)))
                })
                .cloned()
                .collect()
        };
        faults::before(Point::IndexBuild).await;
        loop {
            let r = match &task {
                IndexTask::Build(step) => {
                    let todo = pending(std::slice::from_ref(step), &done);
                    let t0 = Instant::now();
                    match todo.first() {
                        Some(step) => apply_step(&dst, &ctx.migration_id, "post", step)
                            .await
                            .map(|()| {
                                info!(step = %step.describe, seconds = format!("{:.2}", t0.elapsed().as_secs_f64()), "built");
                            }),
                        None => Ok(()),
                    }
                }
                IndexTask::FinishSmall(group) => {
                    let all: Vec<Arc<Step>> =
                        group.iter().flat_map(|(_, s)| s.iter().cloned()).collect();
                    let todo = pending(&all, &done);
                    let batch: Vec<&Step> = todo.iter().map(|s| &**s).collect();
                    steps::apply_batch(&dst, &ctx.migration_id, "post", &batch).await
                }
                IndexTask::Finish { table, steps, rows } => {
                    let todo = pending(steps, &done);
                    let t0 = Instant::now();
                    let batch: Vec<&Step> = todo.iter().map(|s| &**s).collect();
                    match steps::apply_batch(&dst, &ctx.migration_id, "post", &batch).await {
                        Err(e) => Err(e),
                        Ok(()) => {
                            if !steps.is_empty() {
                                debug!(%table, steps = steps.len(), seconds = format!("{:.2}", t0.elapsed().as_secs_f64()), "indexes and keys");
                            }
                            // Fresh statistics for the planner; only for
                            // tables loaded now, and not for a few rows: the
                            // planner does well on them without, and
                            // autovacuum analyzes any table of more than 50
                            // rows soon after the load anyway.
                            let analyze =
                                ctx.analyze && copied.contains(table) && *rows >= ANALYZE_MIN_ROWS;
                            if analyze {
                                let t0 = Instant::now();
                                dst.batch_execute(&format!("ANALYZE {table}"))
                                    .await
                                    .map_err(|e| {
                                        MigrationError::db(format!("analyzing {table} on the target"), e)
                                    })
                                    .map(|()| {
                                        debug!(%table, seconds = format!("{:.2}", t0.elapsed().as_secs_f64()), "analyzed");
                                    })
                            } else {
                                Ok(())
                            }
                        }
                    }
                }
            };
            let Err(e) = r else {
                break;
            };
            retry.wait(e, &what, stop).await?;
            loop {
                match index_session(target).await {
                    Ok(c) => {
                        dst = c;
                        break;
                    }
                    Err(e) => retry.wait(e, &what, stop).await?,
                }
            }
            // The lost session's build may still be running (a server
            // notices its client is gone only when it next talks to it):
            // the markers are final once it has ended.
            if let Some(p) = pid {
                crate::pg::sessions::settle_lost(&dst, p, "target").await?;
            }
            pid = crate::pg::sessions::backend_pid(&dst).await.ok();
            done = Some(committed_steps(&dst, &ctx.migration_id).await?);
        }
        faults::after(Point::IndexBuild).await;
        match task {
            IndexTask::Build(step) => {
                sched.index_task_done(step.table.as_deref().map(str::to_string), 1, false)
            }
            IndexTask::FinishSmall(group) => {
                let n = group.iter().map(|(_, s)| s.len()).sum();
                sched.index_task_done(None, n, false)
            }
            IndexTask::Finish { table, steps, rows } => {
                let analyze = ctx.analyze && copied.contains(&table) && rows >= ANALYZE_MIN_ROWS;
                sched.index_task_done(None, steps.len(), analyze)
            }
        }
    }
    Ok(())
}

fn record_done(ctx: &CopyContext, done: &[(String, ItemResult)]) -> Result<()> {
    let mut copied = Vec::new();
    for (item, r) in done {
        match &r.file {
            Some(file) => ctx.token.record_dumped(item, (**file).clone())?,
            None => copied.push((
                item.clone(),
                CopyMarker {
                    rows: r.rows,
                    bytes: r.bytes,
                    seconds: r.finished.duration_since(r.started).as_secs_f64(),
                    done_at: chrono::Utc::now(),
                },
            )),
        }
    }
    if copied.is_empty() {
        return Ok(());
    }
    ctx.token.record_copied_many(copied)
}

#[cfg(test)]
mod parallel_batch_tests {
    use super::*;

    fn validation(table: &str, c: &str) -> Step {
        Step {
            describe: format!("VALIDATE FK {c} ON {table}").into(),
            sql: [format!("ALTER TABLE ONLY {table} VALIDATE CONSTRAINT {c};")]
                .into_iter()
                .collect(),
            table: None,
            after_indexes: false,
            parallel: true,
        }
    }

    #[test]
    fn batches_take_a_share_and_every_validation_of_their_tables() {
        let mut q: VecDeque<Step> = VecDeque::new();
        for i in 0..40 {
            q.push_back(validation(&format!("s.t{}", i % 20), &format!("c{i}")));
        }
        let queue = Mutex::new(q);
        let mut seen = std::collections::HashMap::<String, usize>::new();
        let mut sizes = Vec::new();
        let mut n = 0;
        while let Some(b) = take_parallel_batch(&queue, 2) {
            sizes.push(b.len());
            n += b.len();
            for s in &b {
                let owner = seen
                    .entry(validated_table(s).to_string())
                    .or_insert(sizes.len());
                assert_eq!(
                    *owner,
                    sizes.len(),
                    "a table's validations split over batches"
                );
            }
        }
        assert_eq!(n, 40);
        assert!(sizes.iter().all(|&s| s <= 2 * PARALLEL_BATCH), "{sizes:?}");
        assert!(sizes.len() >= 2, "{sizes:?}");
        // Two big validations and two workers: one each.
        let queue = Mutex::new(VecDeque::from(vec![
            validation("s.a", "x"),
            validation("s.b", "y"),
        ]));
        assert_eq!(take_parallel_batch(&queue, 2).unwrap().len(), 1);
        assert_eq!(take_parallel_batch(&queue, 2).unwrap().len(), 1);
        assert!(take_parallel_batch(&queue, 2).is_none());
        assert_eq!(
            validated_table(&validation("\"odd name\".t", "c")),
            "\"odd name\".t"
        );
    }
}

#[cfg(test)]
mod marker_hash_tests {
    use super::*;

    #[test]
    fn a_marker_hashes_alike_built_from_its_pieces_or_read_whole() {
        let step = Step {
            describe: "INDEX FOR CONSTRAINT t_pkey ON \"s p\".\"t é\"".into(),
            sql: Default::default(),
            table: None,
            after_indexes: false,
            parallel: false,
        };
        let read = step_marker("post", &step);
        assert_eq!(
            marker_hash(&["post", ":", &step.describe]),
            marker_hash(&[&read])
        );
        assert_ne!(
            marker_hash(&["pre", ":", &step.describe]),
            marker_hash(&[&read])
        );
    }
}
