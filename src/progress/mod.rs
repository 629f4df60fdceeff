//! Where a running migration stands, for people, for monitoring and for the
//! programs that embed the library: a snapshot kept up to date from the
//! resume token (every stage change and every copied table or chunk goes
//! through it), from the copy workers (bytes counted as COPY data flows, so
//! the percentage moves inside a big table) and from the online loop (lag,
//! apply rate, cutover).
//!
//! Readers never hold up the migration: the snapshot is published on a
//! [`tokio::sync::watch`] channel ([`crate::Migrator::subscribe`], a reader that
//! falls behind sees only the latest one) and the typed [`Event`]s on a
//! [`tokio::sync::broadcast`] channel ([`crate::Migrator::events`], a reader more
//! than [`EVENT_BUFFER`] events behind skips the oldest and is told how
//! many with `RecvError::Lagged`). A migration task only stores and sends;
//! no caller code runs on it, under a lock or otherwise.
//!
//! The CLI prints the events as NDJSON (`migrate --json`), one object a
//! line, under the versioned schema [`EVENT_SCHEMA`] ([`Event::to_json`]),
//! and serves the snapshot over HTTP as Prometheus metrics at `/metrics`
//! and as JSON at `/status` (`--http ADDR`). The HTTP side is a few lines
//! of HTTP/1.1 on a tokio listener: two read-only GET endpoints need no
//! framework. It binds to loopback unless told otherwise.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::error::{MigrationError, Result};
use crate::resume::{ResumeToken, Stage, StageStatus};

/// The online part of the snapshot.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct OnlineSnapshot {
    /// Source WAL bytes not yet applied on the target.
    pub lag_bytes: u64,
    /// Seconds since the commit of the last applied source transaction
    /// (0 when caught up).
    pub lag_seconds: f64,
    /// The source WAL position applied on the target (`0/16B3748`).
    pub applied_lsn: String,
    /// Source transactions applied since streaming began.
    pub transactions: u64,
    /// Rows they changed.
    pub rows: u64,
    /// Recent apply rate.
    pub transactions_per_second: f64,
    /// Recent apply rate in rows.
    pub rows_per_second: f64,
    /// Caught up: an automatic cutover would start, and
    /// [`crate::CutoverHandle::wait_caught_up`] resolves.
    pub ready_to_cut_over: bool,
    /// After the cutover: how long writes were blocked on the source.
    pub cutover_downtime_seconds: Option<f64>,
    /// After the cutover: the source's WAL position at the fence.
    pub fence_lsn: Option<String>,
    /// `--fallback` after the cutover: the new server's WAL bytes not yet
    /// applied on the old source.
    #[serde(default)]
    pub fallback_lag_bytes: Option<u64>,
}

/// What one copy worker is doing.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct WorkerSnapshot {
    /// The worker's number, from 0.
    pub worker: usize,
    /// The table, or `table#i/n` for a chunk; in a whole-cluster
    /// migration, after its database and a slash (`appdb/public.t`).
    pub item: String,
    /// Seconds on this item so far.
    pub seconds: f64,
    /// COPY bytes of this item moved so far.
    #[serde(default)]
    pub bytes: u64,
}

/// One of the signals `--source-pressure` watches on the source (see
/// [`crate::SourcePressure`] for what each one does and why).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum PressureSignal {
    /// A physical standby replays further behind than its threshold.
    StandbyLag,
    /// Our replication slot retains more WAL than its threshold.
    SlotWal,
    /// A session waits for a lock one of our sessions holds.
    LockWait,
}

impl PressureSignal {
    /// The name the JSON and the metrics' `signal` label use.
    pub fn as_str(self) -> &'static str {
        match self {
            PressureSignal::StandbyLag => "standby_lag",
            PressureSignal::SlotWal => "slot_wal",
            PressureSignal::LockWait => "lock_wait",
        }
    }

    /// For people: what is over its threshold.
    pub fn describe(self) -> &'static str {
        match self {
            PressureSignal::StandbyLag => "standby replay lag",
            PressureSignal::SlotWal => "WAL retained by our slot",
            PressureSignal::LockWait => "lock waits behind our sessions",
        }
    }
}

/// A signal over its threshold at the latest sample.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct PressureReason {
    /// Which signal.
    pub signal: PressureSignal,
    /// What was measured (the standby furthest behind, the longest
    /// waiter), in `unit`.
    pub value: f64,
    /// Its threshold, in `unit`.
    pub threshold: f64,
    /// `seconds`, `bytes` or `percent`.
    pub unit: String,
    /// Whether it holds the copy paused; `false`: reported only (WAL our
    /// slot retains, a lock waiter past `lock_pause_seconds`, any signal
    /// once the copy is over).
    pub pauses: bool,
    /// For people: which standby, slot or waiter, and what is done.
    pub detail: String,
}

impl PressureReason {
    /// The value against its threshold, for people: `3.2s > 1s`,
    /// `45.0 MB > 16.0 MB`, `85% > 80%`.
    pub fn measured(&self) -> String {
        match self.unit.as_str() {
            "bytes" => format!(
                "{} > {}",
                human_bytes(self.value as u64),
                human_bytes(self.threshold as u64)
            ),
            "percent" => format!("{:.0}% > {}%", self.value, self.threshold),
            _ => format!("{:.1}s > {}s", self.value, self.threshold),
        }
    }
}

/// `--source-pressure`: what the governor sees of the source and what it
/// does about it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct PressureSnapshot {
    /// The copy is paused now: no worker reads its next chunk.
    pub paused: bool,
    /// The signals over their threshold at the latest sample (empty: the
    /// source is fine).
    pub reasons: Vec<PressureReason>,
    /// Seconds the copy has been paused so far, the current pause
    /// included.
    pub paused_seconds: f64,
    /// How many pauses began.
    pub pauses: u64,
}

/// What `--source-pressure` did over a run: the report's
/// `source_pressure`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct PressureSummary {
    /// Seconds the copy was paused.
    pub paused_seconds: f64,
    /// How many pauses there were.
    pub pauses: u64,
    /// The signals that crossed their threshold at least once (paused for
    /// or reported).
    pub signals: Vec<PressureSignal>,
}

impl PressureSummary {
    /// Two copies' (a copy started again on a new snapshot, the databases
    /// of a cluster) added up.
    pub(crate) fn add(&mut self, other: &PressureSummary) {
        self.paused_seconds += other.paused_seconds;
        self.pauses += other.pauses;
        for s in &other.signals {
            if !self.signals.contains(s) {
                self.signals.push(*s);
            }
        }
        self.signals.sort();
    }
}

/// The part of a migration running now: its stages, as the resume token
/// records them ([`Stage`] under the name embedders read). Serialized as
/// the stage's name (`copy_data`, `stream`, ...), the names the events and
/// the status page use.
pub use crate::resume::Stage as Phase;

/// Where the migration stands.
///
/// Byte counts include the items still being copied: `bytes_copied` and
/// `heap_bytes_done` grow while a big table streams, not only when it
/// commits (an item whose transaction is retried counts again from zero).
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct Snapshot {
    /// The migration's id ([`crate::MigrationReport::migration_id`]).
    pub migration_id: String,
    /// The stage running now (or the last one); `None` before the first.
    /// Serialized as `stage`.
    #[serde(rename = "stage")]
    pub phase: Option<Phase>,
    /// Stages finished, in order (a resumed run includes the earlier
    /// attempt's).
    pub stages_done: Vec<Phase>,
    /// Tables (or chunks of split tables) copied, and how many there are.
    pub items_done: u64,
    /// How many items the copy has (0 until it is planned).
    pub items_total: u64,
    /// Rows of the items copied.
    pub rows_copied: u64,
    /// COPY data moved: the items copied, and the part moved so far of
    /// those still copying (`bytes_in_flight`).
    pub bytes_copied: u64,
    /// COPY data moved so far by the items still copying.
    #[serde(default)]
    pub bytes_in_flight: u64,
    /// Heap size of everything to copy (from the catalogs).
    pub bytes_total: u64,
    /// Heap size of the tables and chunks copied so far, plus an estimate
    /// for those still copying (their COPY bytes so far, at most their
    /// heap size): what [`Snapshot::percent`] and the ETA count.
    #[serde(default)]
    pub heap_bytes_done: u64,
    /// Online runs: streaming and cutover (`None` before streaming).
    pub online: Option<OnlineSnapshot>,
    /// Warnings of this run (the last 50), recorded by the library itself
    /// (every warning it logs) and, in the CLI, by its log.
    #[serde(default)]
    pub warnings: Vec<String>,
    /// Copy workers busy with an item right now.
    #[serde(default)]
    pub workers: Vec<WorkerSnapshot>,
    /// Errors of this run so far (a failed cutover attempt, the run's own
    /// failure, ...).
    #[serde(default)]
    pub errors: u64,
    /// The run finished (successfully or not).
    pub completed: bool,
    /// Seconds since the run started ([`crate::Migrator::run`],
    /// `dump::run`, `restore::run`), frozen when it ends; 0 before.
    pub elapsed_seconds: f64,
    /// Seconds the copy of the data has taken so far (0 before it began;
    /// frozen once it is done): the time [`Snapshot::rate`] divides by.
    #[serde(default)]
    pub copy_seconds: f64,
    /// `--max-rate`: the copy reads the source no faster than this many
    /// bytes a second (a rate at the cap is this governor, not the link).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_rate: Option<u64>,
    /// `--source-pressure`: whether the copy is paused and why (`None`:
    /// the governor is off, or has not sampled yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pressure: Option<PressureSnapshot>,
    /// A whole-cluster migration: the database being migrated (with
    /// several at once, the first copying, else the first running; its
    /// stage is `phase`). The counters above are the cluster's sums (see
    /// `databases`), except in a cluster's dump or restore, which go one
    /// database at a time and show the current one's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    /// A whole-cluster migration: databases finished so far.
    #[serde(default)]
    pub databases_done: u64,
    /// A whole-cluster migration: how many databases it takes (0 otherwise).
    #[serde(default)]
    pub databases_total: u64,
    /// A whole-cluster migration: one row per database, in the cluster's
    /// order; the counters above are then their sums (databases not
    /// started yet count with their planned heap size in `bytes_total`),
    /// so the percentage, rate and ETA are the whole cluster's. Empty for a
    /// single-database run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub databases: Vec<DatabaseProgress>,
}

/// Where a database of a whole-cluster migration stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum DatabaseState {
    /// Not started yet.
    #[default]
    Waiting,
    /// Its migration runs (schema, copy, indexes, ...: see its stage).
    Running,
    /// Online: copied, streaming changes until the cluster's cutover.
    Streaming,
    /// Its migration completed.
    Done,
    /// Its migration failed.
    Failed,
}

impl DatabaseState {
    /// The name the JSON, the metrics and the page use.
    pub fn as_str(self) -> &'static str {
        match self {
            DatabaseState::Waiting => "waiting",
            DatabaseState::Running => "running",
            DatabaseState::Streaming => "streaming",
            DatabaseState::Done => "done",
            DatabaseState::Failed => "failed",
        }
    }
}

/// One database's row of a whole-cluster migration's [`Snapshot`]: its
/// own counters, which the cluster's add up.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct DatabaseProgress {
    /// The database.
    pub name: String,
    /// Where it stands.
    pub state: DatabaseState,
    /// Its stage running now (or its last one). Serialized as `stage`.
    #[serde(rename = "stage")]
    pub phase: Option<Phase>,
    /// Its items copied ([`Snapshot::items_done`]).
    pub items_done: u64,
    /// Its items to copy ([`Snapshot::items_total`]).
    pub items_total: u64,
    /// Its COPY bytes moved ([`Snapshot::bytes_copied`]).
    pub bytes_copied: u64,
    /// Its heap bytes copied ([`Snapshot::heap_bytes_done`]); all of
    /// `bytes_total` once done.
    pub heap_bytes_done: u64,
    /// Its heap size to copy: the size planned for the cluster until its
    /// own copy is planned.
    pub bytes_total: u64,
    /// How far its copy is, 0 to 100 (100 once done).
    pub percent: Option<f64>,
    /// Online, while it streams: its source WAL bytes not yet applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_bytes: Option<u64>,
}

impl Snapshot {
    /// How far the data copy is, 0 to 100, by heap size (items still
    /// copying included); `None` until the copy is planned, or when there
    /// is nothing to copy.
    pub fn percent(&self) -> Option<f64> {
        if self.bytes_total == 0 {
            return None;
        }
        Some((self.heap_bytes_done as f64 / self.bytes_total as f64 * 100.0).min(100.0))
    }

    /// The copy's speed in heap bytes a second since it began; `None`
    /// before anything was counted.
    pub fn rate(&self) -> Option<f64> {
        (self.copy_seconds > 0.0 && self.heap_bytes_done > 0)
            .then(|| self.heap_bytes_done as f64 / self.copy_seconds)
    }

    /// The time left to the end of the data copy at [`Snapshot::rate`];
    /// `None` outside the copy stage or before a rate is known.
    pub fn eta(&self) -> Option<Duration> {
        if !self.phase.is_some_and(copies) || self.completed {
            return None;
        }
        let rate = self.rate()?;
        let left = self.bytes_total.saturating_sub(self.heap_bytes_done) as f64 / rate;
        Some(Duration::from_secs_f64(left.min(1e9)))
    }
}

/// The stages that move rows, whose progress is counted in bytes: the
/// copy, and a dump's or a restore's.
fn copies(phase: Phase) -> bool {
    matches!(phase, Phase::CopyData | Phase::Dump | Phase::Restore)
}

/// What `/status` serves: the snapshot and what the library computes from
/// it, so a page or a script need not.
#[derive(Serialize)]
struct StatusView<'a> {
    #[serde(flatten)]
    snapshot: &'a Snapshot,
    percent: Option<f64>,
    bytes_per_second: Option<f64>,
    eta_seconds: Option<f64>,
}

impl<'a> From<&'a Snapshot> for StatusView<'a> {
    fn from(s: &'a Snapshot) -> Self {
        StatusView {
            snapshot: s,
            percent: s.percent(),
            bytes_per_second: s.rate(),
            eta_seconds: s.eta().map(|d| d.as_secs_f64()),
        }
    }
}

/// The schema every event names in its `schema` field. Version 1:
/// `{"schema", "ts" (RFC 3339), "event", ...}` with `event` one of
/// `stage_started {stage}`, `stage_finished {stage, seconds}`,
/// `item_copied {item, rows, bytes, seconds}`, `progress {stage,
/// items_done, items_total, bytes_copied, heap_bytes_done, bytes_total,
/// percent, bytes_per_second, eta_seconds}`, `lag {lag_bytes,
/// lag_seconds, applied_lsn, transactions_per_second, rows_per_second,
/// ready_to_cut_over}`, `cutover_started {attempt}`, `cutover_finished
/// {downtime_seconds, fence_lsn}`, `cutover_failed {error}`, `throttled
/// {reasons}`, `unthrottled {seconds, paused_seconds}`, `warning
/// {message}`, `error {message, exit_code?}`, `summary {report}` (the
/// last line of a successful run).
pub const EVENT_SCHEMA: &str = "pg_dbmigrator.events/1";

/// How many events a subscriber may fall behind before it skips some.
pub const EVENT_BUFFER: usize = 4096;

/// Something that happened in a run, as [`crate::Migrator::events`] delivers it.
/// Serialized (`{"event": "<kind>", ...fields}`) it is the NDJSON event of
/// the CLI, under [`EVENT_SCHEMA`].
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Event {
    /// A stage began (or, resumed, began again).
    StageStarted {
        /// Which.
        stage: Phase,
    },
    /// A stage finished and was recorded in the resume token.
    StageFinished {
        /// Which.
        stage: Phase,
        /// How long it took in this run, when it ran in this run.
        seconds: Option<f64>,
    },
    /// A table, or a chunk `table#i/n` of a split one, committed.
    ItemCopied {
        /// The table (quoted), or `table#i/n`.
        item: String,
        /// Rows copied.
        rows: u64,
        /// COPY bytes moved.
        bytes: u64,
        /// Seconds the item took.
        seconds: f64,
    },
    /// The copy moved: sent when its whole percentage changes (checked
    /// ten times a second: at most about a hundred of these a run, plus
    /// one every 10 s while the copy runs).
    Progress {
        /// [`Snapshot::phase`].
        stage: Option<Phase>,
        /// [`Snapshot::items_done`].
        items_done: u64,
        /// [`Snapshot::items_total`].
        items_total: u64,
        /// [`Snapshot::bytes_copied`].
        bytes_copied: u64,
        /// [`Snapshot::heap_bytes_done`].
        heap_bytes_done: u64,
        /// [`Snapshot::bytes_total`].
        bytes_total: u64,
        /// [`Snapshot::percent`].
        percent: Option<f64>,
        /// [`Snapshot::rate`].
        bytes_per_second: Option<f64>,
        /// [`Snapshot::eta`] in seconds.
        eta_seconds: Option<f64>,
        /// [`Snapshot::max_rate`]: the copy is held to it.
        #[serde(skip_serializing_if = "Option::is_none")]
        max_rate: Option<u64>,
    },
    /// `--source-pressure` paused the copy, or changed why it holds it
    /// paused (a warning says so too, at most once a minute a signal).
    Throttled {
        /// [`PressureSnapshot::reasons`]: those that hold the copy
        /// (`pauses`) and those reported beside them.
        reasons: Vec<PressureReason>,
    },
    /// The copy goes on after a pause.
    Unthrottled {
        /// How long this pause lasted.
        seconds: f64,
        /// [`PressureSnapshot::paused_seconds`]: every pause so far.
        paused_seconds: f64,
    },
    /// Online, every 5 s while streaming (see [`OnlineSnapshot`]).
    Lag {
        /// [`OnlineSnapshot::lag_bytes`].
        lag_bytes: u64,
        /// [`OnlineSnapshot::lag_seconds`].
        lag_seconds: f64,
        /// [`OnlineSnapshot::applied_lsn`].
        applied_lsn: String,
        /// [`OnlineSnapshot::transactions_per_second`].
        transactions_per_second: f64,
        /// [`OnlineSnapshot::rows_per_second`].
        rows_per_second: f64,
        /// [`OnlineSnapshot::ready_to_cut_over`].
        ready_to_cut_over: bool,
    },
    /// A cutover attempt began (the source is being fenced).
    CutoverStarted {
        /// 1 for the first attempt of the run.
        attempt: u32,
    },
    /// The cutover finished: the target has everything.
    CutoverFinished {
        /// Writes blocked on the source.
        downtime_seconds: Option<f64>,
        /// The source's WAL position at the fence.
        fence_lsn: Option<String>,
    },
    /// A cutover attempt failed; the source was unfenced and streaming
    /// goes on.
    CutoverFailed {
        /// Why.
        error: Option<String>,
    },
    /// A whole-cluster migration began a database's migration.
    DatabaseStarted {
        /// The database.
        name: String,
        /// Its number, from 1.
        number: u64,
        /// How many databases the run takes.
        of: u64,
    },
    /// A whole-cluster migration finished a database's migration.
    DatabaseFinished {
        /// The database.
        name: String,
    },
    /// Something the operator should know; the run goes on.
    Warning {
        /// The warning, as logged.
        message: String,
    },
    /// An error of the run; the run's own failure carries its exit code.
    Error {
        /// The error's message.
        message: String,
        /// The CLI's exit code for the run's own failure.
        #[serde(skip_serializing_if = "Option::is_none")]
        exit_code: Option<i32>,
    },
    /// The final report: the CLI's last line (the library returns the
    /// report from `run` and does not send this itself).
    #[doc(hidden)]
    Summary { report: serde_json::Value },
}

impl Event {
    /// The NDJSON object: schema, time (now), kind, then the fields.
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = serde_json::json!({
            "schema": EVENT_SCHEMA,
            "ts": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        });
        if let (Some(o), Ok(serde_json::Value::Object(f))) =
            (v.as_object_mut(), serde_json::to_value(self))
        {
            o.extend(f);
        }
        v
    }

    fn progress(s: &Snapshot) -> Event {
        Event::Progress {
            stage: s.phase,
            items_done: s.items_done,
            items_total: s.items_total,
            bytes_copied: s.bytes_copied,
            heap_bytes_done: s.heap_bytes_done,
            bytes_total: s.bytes_total,
            percent: s.percent(),
            bytes_per_second: s.rate(),
            eta_seconds: s.eta().map(|d| d.as_secs_f64()),
            max_rate: s.max_rate,
        }
    }
}

/// What the previous token looked like, to see what changed.
#[derive(Debug, Default)]
struct Seen {
    stages: std::collections::BTreeMap<Stage, StageStatus>,
    items: std::collections::BTreeSet<String>,
    cutover_attempts: u32,
    cutover_done: bool,
    cutover_error: Option<String>,
    last_lag_event: Option<Instant>,
}

/// A busy copy worker.
struct Busy {
    item: String,
    since: Instant,
    /// COPY bytes moved, added to by the worker per chunk.
    bytes: Arc<AtomicU64>,
    /// The item's share of its table's heap.
    heap: u64,
}

/// When the run started and ended (elapsed time), and when the copy began.
#[derive(Default)]
struct Clock {
    started: Option<Instant>,
    ended: Option<Instant>,
    copy_started: Option<Instant>,
    copy_ended: Option<Instant>,
}

/// Shared by the migration (which updates it), the HTTP server and the
/// subscribers (which read it). Every method is quick and never waits for
/// a reader. Embedders read it through [`crate::Migrator::subscribe`] and
/// [`crate::Migrator::events`]; the type itself serves the CLI.
#[doc(hidden)]
pub struct Progress {
    state: Mutex<Snapshot>,
    seen: Mutex<Seen>,
    events: broadcast::Sender<Event>,
    snapshots: watch::Sender<Snapshot>,
    /// Heap bytes of each table to copy (quoted `schema.table`).
    table_bytes: Mutex<std::collections::HashMap<String, u64>>,
    /// Busy copy workers. Lock order: `workers`, then `state`.
    workers: Mutex<std::collections::BTreeMap<usize, Busy>>,
    clock: Mutex<Clock>,
    /// A run is publishing (see [`Progress::start_run`]).
    running: AtomicBool,
    /// The counters are a whole-cluster migration's sums, written by its
    /// merger ([`Progress::set_merged`]): [`Progress::snapshot`] must not
    /// recompute them from this handle's own (idle) workers and clock.
    merged: AtomicBool,
}

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Progress").finish_non_exhaustive()
    }
}

impl Default for Progress {
    fn default() -> Self {
        Progress {
            state: Mutex::new(Snapshot::default()),
            seen: Mutex::new(Seen::default()),
            events: broadcast::channel(EVENT_BUFFER).0,
            snapshots: watch::Sender::new(Snapshot::default()),
            table_bytes: Mutex::new(Default::default()),
            workers: Mutex::new(Default::default()),
            clock: Mutex::new(Clock::default()),
            running: AtomicBool::new(false),
            merged: AtomicBool::new(false),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// How often the snapshot is published while a run is going.
const PUBLISH_EVERY: Duration = Duration::from_millis(100);

/// Publishes a run's snapshots until dropped (see [`Progress::start_run`]).
pub(crate) struct RunPublisher {
    progress: Option<Arc<Progress>>,
    stop: CancellationToken,
}

impl Drop for RunPublisher {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(p) = self.progress.take() {
            lock(&p.clock).ended = Some(Instant::now());
            p.running.store(false, Ordering::Release);
            p.snapshots.send_replace(p.snapshot());
        }
    }
}

impl Progress {
    pub fn new() -> Arc<Self> {
        Arc::new(Progress::default())
    }

    /// The latest snapshot, refreshed every 100 ms while a run goes (and
    /// once more when it ends). A receiver that does not read only misses
    /// intermediate snapshots; it never slows the run. Do not hold a
    /// `borrow()` across an await.
    pub fn subscribe(&self) -> watch::Receiver<Snapshot> {
        self.snapshots.subscribe()
    }

    /// The run's events from now on. A receiver more than [`EVENT_BUFFER`]
    /// events behind gets `RecvError::Lagged` and continues with the
    /// oldest it still holds; the run never waits for it.
    pub fn events(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// Send one event to the subscribers (none: dropped).
    pub fn publish(&self, event: Event) {
        let _ = self.events.send(event);
    }

    /// Start publishing a run: elapsed time counts from now, and a task
    /// publishes the snapshot every 100 ms (and sends `progress` events
    /// during the copy) until the returned guard is dropped. The
    /// orchestrators call it ([`crate::Migrator::run`], `dump::run`,
    /// `restore::run`); a nested call (a run inside a run) changes nothing.
    pub(crate) fn start_run(self: &Arc<Self>) -> RunPublisher {
        let stop = CancellationToken::new();
        if self.running.swap(true, Ordering::AcqRel) {
            return RunPublisher {
                progress: None,
                stop,
            };
        }
        *lock(&self.clock) = Clock {
            started: Some(Instant::now()),
            ..Default::default()
        };
        self.merged.store(false, Ordering::Release);
        let me = self.clone();
        let token = stop.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(PUBLISH_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut last_event: Option<(Instant, Option<u64>)> = None;
            loop {
                tokio::select! {
                    _ = token.cancelled() => break,
                    _ = tick.tick() => {}
                }
                let s = me.snapshot();
                if s.phase.is_some_and(copies) && s.bytes_total > 0 {
                    // Whole percent changed (checked every tick), or 10 s passed.
                    let pct = s.percent().map(|p| p as u64);
                    let due = match last_event {
                        None => true,
                        Some((at, p)) => p != pct || at.elapsed() >= Duration::from_secs(10),
                    };
                    if due {
                        last_event = Some((Instant::now(), pct));
                        me.publish(Event::progress(&s));
                    }
                }
                me.snapshots.send_replace(s);
            }
        });
        RunPublisher {
            progress: Some(self.clone()),
            stop,
        }
    }

    /// A whole-cluster migration moves on to database `name` (number
    /// `number` of `of`): with `reset` (a cluster's dump or restore, whose
    /// databases publish here one at a time), what the snapshot says of a
    /// database's copy starts over, the cluster's counts go on; without
    /// (a migration, whose databases publish into their own progress,
    /// merged here), only the cluster's counts move.
    pub(crate) fn begin_database(&self, name: &str, number: u64, of: u64, reset: bool) {
        if !reset {
            // The merger writes the rest.
            self.with(|s| {
                s.databases_total = of;
                s.database = Some(name.to_string());
            });
            self.publish(Event::DatabaseStarted {
                name: name.to_string(),
                number,
                of,
            });
            return;
        }
        *lock(&self.seen) = Seen::default();
        lock(&self.workers).clear();
        lock(&self.table_bytes).clear();
        {
            let mut clock = lock(&self.clock);
            clock.copy_started = None;
            clock.copy_ended = None;
        }
        self.with(|s| {
            let keep = Snapshot {
                migration_id: s.migration_id.clone(),
                warnings: std::mem::take(&mut s.warnings),
                errors: s.errors,
                databases_done: s.databases_done,
                databases_total: of,
                database: Some(name.to_string()),
                ..Default::default()
            };
            *s = keep;
        });
        self.publish(Event::DatabaseStarted {
            name: name.to_string(),
            number,
            of,
        });
    }

    /// A whole-cluster migration finished database `name`.
    pub(crate) fn end_database(&self, name: &str) {
        self.with(|s| s.databases_done += 1);
        self.publish(Event::DatabaseFinished {
            name: name.to_string(),
        });
    }

    /// Record a warning of the run: kept in the snapshot (the last 50) and
    /// sent as a [`Event::Warning`]. The library calls it where it warns
    /// about the run itself (see README, Library); it does not log.
    pub fn warn(&self, message: impl Into<String>) {
        let message = message.into();
        self.add_warning(&message);
        self.publish(Event::Warning { message });
    }

    /// Record an error of the run (counted in the snapshot, sent as an
    /// [`Event::Error`]); it does not log.
    pub fn error(&self, message: impl Into<String>) {
        self.add_error();
        self.publish(Event::Error {
            message: message.into(),
            exit_code: None,
        });
    }

    /// Record the run's own failure, with its exit code.
    pub fn run_failed(&self, e: &MigrationError) {
        self.add_error();
        self.publish(Event::Error {
            message: e.to_string(),
            exit_code: Some(e.exit_code()),
        });
    }

    /// Count an error without an event (the CLI's log does its own).
    pub fn add_error(&self) {
        self.with(|s| s.errors += 1);
    }

    /// Keep a warning for the status (the last 50) without an event.
    pub fn add_warning(&self, message: &str) {
        self.with(|s| {
            s.warnings.push(message.to_string());
            if s.warnings.len() > 50 {
                s.warnings.remove(0);
            }
        });
    }

    /// Events for what changed in the token since the last call; whether
    /// a stage that copies rows just finished.
    fn events_from_token(&self, t: &ResumeToken) -> bool {
        let mut copy_finished = false;
        let mut out = Vec::new();
        {
            let mut seen = lock(&self.seen);
            for r in &t.stages {
                let before = seen.stages.insert(r.stage, r.status);
                if before != Some(r.status) {
                    let stage = r.stage;
                    match r.status {
                        StageStatus::Running => out.push(Event::StageStarted { stage }),
                        StageStatus::Done => out.push(Event::StageFinished {
                            stage,
                            seconds: r
                                .finished_at
                                .map(|f| (f - r.started_at).num_milliseconds() as f64 / 1000.0),
                        }),
                    }
                    if copies(stage) {
                        let mut clock = lock(&self.clock);
                        clock.copy_started.get_or_insert_with(Instant::now);
                        if r.status == StageStatus::Done {
                            clock.copy_ended.get_or_insert_with(Instant::now);
                            copy_finished = true;
                        }
                    }
                }
            }
            for (item, m) in &t.copied {
                if seen.items.insert(item.clone()) {
                    out.push(Event::ItemCopied {
                        item: item.clone(),
                        rows: m.rows,
                        bytes: m.bytes,
                        seconds: m.seconds,
                    });
                }
            }
            if let Some(c) = t.online.as_ref().and_then(|o| o.cutover.as_ref()) {
                if c.attempts > seen.cutover_attempts {
                    seen.cutover_attempts = c.attempts;
                    out.push(Event::CutoverStarted {
                        attempt: c.attempts,
                    });
                }
                if c.completed && !seen.cutover_done {
                    seen.cutover_done = true;
                    out.push(Event::CutoverFinished {
                        downtime_seconds: c.downtime_seconds,
                        fence_lsn: c.fence_lsn.map(|l| l.to_string()),
                    });
                }
                if c.error.is_some() && c.error != seen.cutover_error {
                    seen.cutover_error = c.error.clone();
                    out.push(Event::CutoverFailed {
                        error: c.error.clone(),
                    });
                }
            }
        }
        for e in out {
            self.publish(e);
        }
        copy_finished
    }

    fn with<R>(&self, f: impl FnOnce(&mut Snapshot) -> R) -> R {
        f(&mut lock(&self.state))
    }

    /// The current snapshot, computed now (the subscription's is at most
    /// 100 ms old).
    pub fn snapshot(&self) -> Snapshot {
        if self.merged.load(Ordering::Acquire) {
            let mut s = self.with(|s| s.clone());
            s.elapsed_seconds = self.elapsed();
            return s;
        }
        let workers = lock(&self.workers);
        let mut s = self.with(|s| s.clone());
        let mut in_flight = 0;
        let mut heap_in_flight = 0;
        s.workers = workers
            .iter()
            .map(|(w, b)| {
                let bytes = b.bytes.load(Ordering::Relaxed);
                in_flight += bytes;
                heap_in_flight += bytes.min(b.heap);
                WorkerSnapshot {
                    worker: *w,
                    item: b.item.clone(),
                    seconds: b.since.elapsed().as_secs_f64(),
                    bytes,
                }
            })
            .collect();
        drop(workers);
        s.bytes_in_flight = in_flight;
        s.bytes_copied += in_flight;
        s.heap_bytes_done =
            (s.heap_bytes_done + heap_in_flight).min(s.bytes_total.max(s.heap_bytes_done));
        let clock = lock(&self.clock);
        let now = clock.ended.unwrap_or_else(Instant::now);
        s.elapsed_seconds = clock
            .started
            .map(|t| now.saturating_duration_since(t).as_secs_f64())
            .unwrap_or(0.0);
        s.copy_seconds = clock
            .copy_started
            .map(|t| {
                let end = clock.copy_ended.unwrap_or(now);
                end.saturating_duration_since(t).as_secs_f64()
            })
            .unwrap_or(0.0);
        s
    }

    /// Seconds since the run started (frozen when it ended).
    fn elapsed(&self) -> f64 {
        let clock = lock(&self.clock);
        let now = clock.ended.unwrap_or_else(Instant::now);
        clock
            .started
            .map(|t| now.saturating_duration_since(t).as_secs_f64())
            .unwrap_or(0.0)
    }

    /// A whole-cluster migration's view: its databases' rows and their
    /// sums (see [`merge`]), replacing this handle's own counters until
    /// the next run starts. `copy_seconds`: since the first database's copy
    /// began. Sends the copy's last `progress` event when it reaches 100%
    /// (the run's publisher sends only while a copy stage is current).
    pub(crate) fn set_merged(&self, members: &[Member<'_>], copy_seconds: f64) {
        self.merged.store(true, Ordering::Release);
        let (finished, s) = self.with(|s| {
            let before = s.percent();
            merge(s, members);
            s.copy_seconds = copy_seconds;
            let after = s.percent();
            (after == Some(100.0) && before != after, s.clone())
        });
        if finished {
            let mut s = s;
            s.elapsed_seconds = self.elapsed();
            self.publish(Event::progress(&s));
        }
    }

    /// Copy worker `worker` started on `item` (`None`: it is idle). Returns
    /// the counter the worker adds the item's COPY bytes to as they flow.
    pub fn worker(&self, worker: usize, item: Option<&str>) -> Arc<AtomicU64> {
        let counter = Arc::new(AtomicU64::new(0));
        match item {
            Some(i) => {
                let heap = self.heap_share(i);
                lock(&self.clock)
                    .copy_started
                    .get_or_insert_with(Instant::now);
                lock(&self.workers).insert(
                    worker,
                    Busy {
                        item: i.to_string(),
                        since: Instant::now(),
                        bytes: counter.clone(),
                        heap,
                    },
                );
            }
            None => {
                lock(&self.workers).remove(&worker);
            }
        }
        counter
    }

    /// One more item copied: counted in O(1), without reading the token.
    pub fn observe_copied(&self, item: &str, m: &crate::resume::CopyMarker) {
        let new = lock(&self.seen).items.insert(item.to_string());
        if !new {
            return;
        }
        self.publish(Event::ItemCopied {
            item: item.to_string(),
            rows: m.rows,
            bytes: m.bytes,
            seconds: m.seconds,
        });
        let heap = self.heap_share(item);
        // Out of the workers and into the totals at once, for readers.
        let mut workers = lock(&self.workers);
        workers.retain(|_, b| b.item != item);
        self.with(|s| {
            s.heap_bytes_done += heap;
            s.items_done += 1;
            s.rows_copied += m.rows;
            s.bytes_copied += m.bytes;
        });
        drop(workers);
    }

    /// The part of its table's heap an item stands for: a chunk
    /// `schema.table#i/n` counts for 1/n.
    fn heap_share(&self, item: &str) -> u64 {
        let sizes = lock(&self.table_bytes);
        match item.split_once('#') {
            None => sizes.get(item).copied().unwrap_or(0),
            Some((table, part)) => {
                // Chunk i (from 1) of n: its exact share, so that the n
                // shares add up to the table's heap (and the end to 100%).
                let (i, n) = part
                    .split_once('/')
                    .and_then(|(i, n)| Some((i.parse::<u64>().ok()?, n.parse::<u64>().ok()?)))
                    .filter(|&(i, n)| i >= 1 && i <= n)
                    .unwrap_or((1, 1));
                let bytes = sizes.get(table).copied().unwrap_or(0) as u128;
                let upto = |k: u64| bytes * k as u128 / n as u128;
                (upto(i) - upto(i - 1)) as u64
            }
        }
    }

    /// Take stages and copied items from the token (called on every full save).
    pub fn observe_token(&self, t: &ResumeToken) {
        let copy_finished = self.events_from_token(t);
        // A chunk `schema.table#i/n` counts for 1/n of its table's heap.
        // A dump's items are its archive files.
        let heap_done: u64 = t
            .copied
            .keys()
            .chain(t.dumped.keys())
            .map(|k| self.heap_share(k))
            .sum();
        let mut workers = lock(&self.workers);
        workers.retain(|_, b| !t.copied.contains_key(&b.item) && !t.dumped.contains_key(&b.item));
        self.with(|s| {
            s.heap_bytes_done = heap_done;
            s.migration_id = t.migration_id.clone();
            s.phase = t.current_stage().map(|r| r.stage);
            s.stages_done = t
                .stages
                .iter()
                .filter(|r| r.status == StageStatus::Done)
                .map(|r| r.stage)
                .collect();
            s.items_done = (t.copied.len() + t.dumped.len()) as u64;
            s.rows_copied = t.copied.values().map(|c| c.rows).sum::<u64>()
                + t.dumped.values().map(|d| d.rows).sum::<u64>();
            s.bytes_copied = t.copied.values().map(|c| c.bytes).sum::<u64>()
                + t.dumped.values().map(|d| d.raw_bytes).sum::<u64>();
            s.completed = t.completed;
            if let Some(c) = t.online.as_ref().and_then(|o| o.cutover.as_ref()) {
                let o = s.online.get_or_insert_with(Default::default);
                o.cutover_downtime_seconds = c.downtime_seconds;
                o.fence_lsn = c.fence_lsn.map(|l| l.to_string());
            }
        });
        drop(workers);
        if copy_finished {
            // The copy's last word, even when it took less than a tick.
            self.publish(Event::progress(&self.snapshot()));
        }
    }

    /// What is to be copied: known once the copy is planned. `tables`:
    /// each table's heap size by quoted `schema.table`.
    pub fn set_totals(&self, items: u64, tables: Vec<(String, u64)>) {
        let bytes = tables.iter().map(|(_, b)| b).sum();
        *lock(&self.table_bytes) = tables.into_iter().collect();
        self.with(|s| {
            s.items_total = items;
            s.bytes_total = bytes;
        });
    }

    /// The copy reads under `--max-rate` (`None`: no cap).
    pub(crate) fn set_max_rate(&self, bytes_per_second: Option<u64>) {
        self.with(|s| s.max_rate = bytes_per_second);
    }

    /// The latest state of `--source-pressure`'s governor.
    pub(crate) fn set_pressure(&self, p: PressureSnapshot) {
        self.with(|s| s.pressure = Some(p));
    }

    /// A lag sample of the online loop (an event every 5 seconds).
    pub fn set_online(&self, f: impl FnOnce(&mut OnlineSnapshot)) {
        let o = self.with(|s| {
            let o = s.online.get_or_insert_with(Default::default);
            f(o);
            o.clone()
        });
        let due = {
            let mut seen = lock(&self.seen);
            let due = seen
                .last_lag_event
                .is_none_or(|t| t.elapsed() >= Duration::from_secs(5));
            if due {
                seen.last_lag_event = Some(Instant::now());
            }
            due
        };
        if due {
            self.publish(Event::Lag {
                lag_bytes: o.lag_bytes,
                lag_seconds: o.lag_seconds,
                applied_lsn: o.applied_lsn,
                transactions_per_second: o.transactions_per_second,
                rows_per_second: o.rows_per_second,
                ready_to_cut_over: o.ready_to_cut_over,
            });
        }
    }
}

/// One database of a whole-cluster migration, as its merger sees it.
pub(crate) struct Member<'a> {
    pub name: &'a str,
    /// Its heap size when the cluster run was planned.
    pub planned_bytes: u64,
    /// What the orchestrator knows: waiting, running, done or failed.
    pub state: DatabaseState,
    /// Its own progress, once it started in this run.
    pub snapshot: Option<&'a Snapshot>,
    /// Online: its latest lag sample.
    pub lag_bytes: Option<u64>,
}

/// A whole-cluster migration's rows and sums into `s`: each database's
/// counters, and the cluster's as their sums. A database that has not
/// planned its copy yet counts with its planned size, and one done counts
/// as wholly copied, so the cluster's percentage only grows and ends at
/// 100. Its `phase` and `database` are those of the first database running
/// (one copying, if any, so the ETA is shown while any database copies).
pub(crate) fn merge(s: &mut Snapshot, members: &[Member<'_>]) {
    let mut rows = Vec::with_capacity(members.len());
    let mut workers = Vec::new();
    let (mut rows_copied, mut in_flight) = (0, 0);
    for m in members {
        let own = m.snapshot.cloned().unwrap_or_default();
        let mut row = DatabaseProgress {
            name: m.name.to_string(),
            state: m.state,
            phase: own.phase,
            items_done: own.items_done,
            items_total: own.items_total,
            bytes_copied: own.bytes_copied,
            heap_bytes_done: own.heap_bytes_done,
            bytes_total: if own.bytes_total > 0 {
                own.bytes_total
            } else {
                m.planned_bytes
            },
            percent: None,
            lag_bytes: None,
        };
        if row.state == DatabaseState::Running
            && matches!(row.phase, Some(Phase::Stream | Phase::Cutover))
        {
            row.state = DatabaseState::Streaming;
        }
        if row.state == DatabaseState::Streaming {
            row.lag_bytes = m.lag_bytes;
        }
        if row.state == DatabaseState::Done {
            row.heap_bytes_done = row.bytes_total;
            row.items_done = row.items_done.max(row.items_total);
        }
        row.heap_bytes_done = row.heap_bytes_done.min(row.bytes_total);
        row.percent = if row.state == DatabaseState::Done {
            Some(100.0)
        } else if row.bytes_total > 0 {
            Some(row.heap_bytes_done as f64 / row.bytes_total as f64 * 100.0)
        } else {
            None
        };
        rows_copied += own.rows_copied;
        in_flight += own.bytes_in_flight;
        for w in own.workers {
            workers.push(WorkerSnapshot {
                worker: workers.len(),
                item: format!("{}/{}", m.name, w.item),
                ..w
            });
        }
        rows.push(row);
    }
    let live = |st: DatabaseState| matches!(st, DatabaseState::Running | DatabaseState::Streaming);
    let current = rows
        .iter()
        .find(|r| live(r.state) && r.phase.is_some_and(copies))
        .or_else(|| rows.iter().find(|r| live(r.state)));
    if let Some(r) = current {
        s.phase = r.phase;
        s.database = Some(r.name.clone());
        s.stages_done = members
            .iter()
            .find(|m| m.name == r.name)
            .and_then(|m| m.snapshot)
            .map(|o| o.stages_done.clone())
            .unwrap_or_default();
    }
    s.items_done = rows.iter().map(|r| r.items_done).sum();
    s.items_total = rows.iter().map(|r| r.items_total).sum();
    s.bytes_copied = rows.iter().map(|r| r.bytes_copied).sum();
    s.heap_bytes_done = rows.iter().map(|r| r.heap_bytes_done).sum();
    s.bytes_total = rows.iter().map(|r| r.bytes_total).sum();
    s.rows_copied = rows_copied;
    s.bytes_in_flight = in_flight;
    s.workers = workers;
    // Each database's copy has its own governor: the cluster is paused
    // while any of them is (a standby's lag pauses them all), for the
    // longest total any of them was.
    let pressures: Vec<&PressureSnapshot> = members
        .iter()
        .filter_map(|m| m.snapshot.and_then(|o| o.pressure.as_ref()))
        .collect();
    s.pressure = (!pressures.is_empty()).then(|| {
        let mut reasons: Vec<PressureReason> = Vec::new();
        for r in pressures.iter().flat_map(|p| &p.reasons) {
            if !reasons.contains(r) {
                reasons.push(r.clone());
            }
        }
        PressureSnapshot {
            paused: pressures.iter().any(|p| p.paused),
            reasons,
            paused_seconds: pressures
                .iter()
                .map(|p| p.paused_seconds)
                .fold(0.0, f64::max),
            pauses: pressures.iter().map(|p| p.pauses).sum(),
        }
    });
    s.databases_total = rows.len() as u64;
    s.databases_done = rows
        .iter()
        .filter(|r| r.state == DatabaseState::Done)
        .count() as u64;
    s.completed = !rows.is_empty() && s.databases_done == s.databases_total;
    if s.migration_id.is_empty() {
        s.migration_id = "cluster".into();
    }
    s.databases = rows;
}

/// A Prometheus label value, escaped (backslash, double quote, newline).
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The snapshot in the Prometheus text format, names prefixed
/// `pg_dbmigrator_`.
#[doc(hidden)]
pub fn metrics_text(s: &Snapshot) -> String {
    let mut out = String::new();
    let mut metric = |name: &str, help: &str, kind: &str, value: f64| {
        out.push_str(&format!(
            "# HELP pg_dbmigrator_{name} {help}\n# TYPE pg_dbmigrator_{name} {kind}\npg_dbmigrator_{name} {value}\n"
        ));
    };
    if s.databases_total > 0 {
        metric(
            "databases_done",
            "Databases a whole-cluster migration has finished.",
            "gauge",
            s.databases_done as f64,
        );
        metric(
            "databases_total",
            "Databases a whole-cluster migration takes.",
            "gauge",
            s.databases_total as f64,
        );
    }
    if let Some(r) = s.max_rate {
        metric(
            "max_rate_bytes_per_second",
            "The cap --max-rate puts on the copy's read rate from the source.",
            "gauge",
            r as f64,
        );
    }
    if let Some(p) = &s.pressure {
        metric(
            "throttled",
            "1 while --source-pressure holds the copy paused.",
            "gauge",
            if p.paused { 1.0 } else { 0.0 },
        );
        metric(
            "throttled_seconds_total",
            "Seconds --source-pressure has held the copy paused.",
            "counter",
            p.paused_seconds,
        );
        metric(
            "throttle_pauses_total",
            "Pauses --source-pressure has made.",
            "counter",
            p.pauses as f64,
        );
    }
    metric(
        "items_done",
        "Tables or chunks copied.",
        "gauge",
        s.items_done as f64,
    );
    metric(
        "items_total",
        "Tables or chunks to copy.",
        "gauge",
        s.items_total as f64,
    );
    metric(
        "rows_copied",
        "Rows copied by the initial copy.",
        "counter",
        s.rows_copied as f64,
    );
    metric(
        "bytes_copied",
        "Bytes of COPY data moved by the initial copy.",
        "counter",
        s.bytes_copied as f64,
    );
    metric(
        "bytes_total",
        "Heap size of everything to copy.",
        "gauge",
        s.bytes_total as f64,
    );
    metric(
        "heap_bytes_done",
        "Heap size of the tables and chunks copied so far.",
        "gauge",
        s.heap_bytes_done as f64,
    );
    metric(
        "completed",
        "1 once the migration finished.",
        "gauge",
        if s.completed { 1.0 } else { 0.0 },
    );
    metric(
        "errors",
        "Errors logged so far.",
        "counter",
        s.errors as f64,
    );
    metric(
        "warnings",
        "Warnings logged so far (the status keeps the last 50).",
        "gauge",
        s.warnings.len() as f64,
    );
    metric(
        "elapsed_seconds",
        "Seconds since the run started.",
        "gauge",
        s.elapsed_seconds,
    );
    if let Some(o) = &s.online {
        metric(
            "lag_bytes",
            "Source WAL bytes not yet applied on the target.",
            "gauge",
            o.lag_bytes as f64,
        );
        if let Some(l) = o.fallback_lag_bytes {
            metric(
                "fallback_lag_bytes",
                "After a --fallback cutover: the new server's WAL bytes not yet applied on the old source.",
                "gauge",
                l as f64,
            );
        }
        metric(
            "lag_seconds",
            "Seconds since the commit of the last applied source transaction.",
            "gauge",
            o.lag_seconds,
        );
        metric(
            "applied_transactions",
            "Source transactions applied on the target.",
            "counter",
            o.transactions as f64,
        );
        metric(
            "applied_rows",
            "Row changes applied on the target.",
            "counter",
            o.rows as f64,
        );
        metric(
            "apply_transactions_per_second",
            "Apply rate since streaming began.",
            "gauge",
            o.transactions_per_second,
        );
        metric(
            "ready_to_cut_over",
            "1 when the target has caught up.",
            "gauge",
            if o.ready_to_cut_over { 1.0 } else { 0.0 },
        );
        if let Some(d) = o.cutover_downtime_seconds {
            metric(
                "cutover_downtime_seconds",
                "Writes blocked on the source by the cutover.",
                "gauge",
                d,
            );
        }
    }
    metric(
        "bytes_in_flight",
        "Bytes of COPY data moved so far by the items still copying (included in bytes_copied).",
        "gauge",
        s.bytes_in_flight as f64,
    );
    if let Some(p) = s.percent() {
        metric(
            "copy_percent",
            "How far the data copy is, by heap size (items still copying included).",
            "gauge",
            p,
        );
    }
    if let Some(r) = s.rate() {
        metric(
            "copy_bytes_per_second",
            "Heap bytes copied a second since the copy began.",
            "gauge",
            r,
        );
    }
    if let Some(e) = s.eta() {
        metric(
            "copy_eta_seconds",
            "Seconds left to the end of the data copy at the current rate.",
            "gauge",
            e.as_secs_f64(),
        );
    }
    if let Some(stage) = &s.phase {
        out.push_str(&format!(
            "# HELP pg_dbmigrator_stage The stage running now.\n# TYPE pg_dbmigrator_stage gauge\npg_dbmigrator_stage{{stage=\"{stage}\"}} 1\n"
        ));
    }
    if let Some(p) = &s.pressure {
        pressure_metrics(&mut out, &p.reasons);
    }
    if !s.databases.is_empty() {
        database_metrics(&mut out, &s.databases);
    }
    out
}

/// `--source-pressure`'s signals over their threshold: the measured value
/// and the threshold, labelled with the signal, its unit and whether it
/// pauses the copy (`action="pause"`) or is only reported.
fn pressure_metrics(out: &mut String, reasons: &[PressureReason]) {
    if reasons.is_empty() {
        return;
    }
    for (name, help, value) in [
        (
            "source_pressure",
            "A source signal over its --source-pressure threshold: the value measured.",
            (|r: &PressureReason| r.value) as fn(&PressureReason) -> f64,
        ),
        (
            "source_pressure_threshold",
            "The --source-pressure threshold of a signal over it.",
            |r: &PressureReason| r.threshold,
        ),
    ] {
        out.push_str(&format!(
            "# HELP pg_dbmigrator_{name} {help}\n# TYPE pg_dbmigrator_{name} gauge\n"
        ));
        for r in reasons {
            out.push_str(&format!(
                "pg_dbmigrator_{name}{{signal=\"{}\",unit=\"{}\",action=\"{}\"}} {}\n",
                label(r.signal.as_str()),
                label(&r.unit),
                if r.pauses { "pause" } else { "report" },
                value(r)
            ));
        }
    }
}

/// A whole-cluster migration's series per database, labelled
/// `database="name"` (one family each, so HELP and TYPE come once).
fn database_metrics(out: &mut String, rows: &[DatabaseProgress]) {
    type Value = fn(&DatabaseProgress) -> Option<f64>;
    let families: [(&str, &str, &str, Value); 8] = [
        (
            "percent",
            "How far the database's copy is, by heap size (100 once done).",
            "gauge",
            |r| r.percent,
        ),
        (
            "bytes_copied",
            "Bytes of COPY data the database's copy moved.",
            "counter",
            |r| Some(r.bytes_copied as f64),
        ),
        (
            "heap_bytes_done",
            "Heap size of the database's tables and chunks copied so far.",
            "gauge",
            |r| Some(r.heap_bytes_done as f64),
        ),
        (
            "bytes_total",
            "Heap size of the database's data to copy (planned size until its copy is planned).",
            "gauge",
            |r| Some(r.bytes_total as f64),
        ),
        (
            "items_done",
            "The database's tables or chunks copied.",
            "gauge",
            |r| Some(r.items_done as f64),
        ),
        (
            "items_total",
            "The database's tables or chunks to copy.",
            "gauge",
            |r| Some(r.items_total as f64),
        ),
        (
            "lag_bytes",
            "Online, while the database streams: its source WAL bytes not yet applied.",
            "gauge",
            |r| r.lag_bytes.map(|l| l as f64),
        ),
        (
            "done",
            "1 once the database's migration completed.",
            "gauge",
            |r| {
                Some(if r.state == DatabaseState::Done {
                    1.0
                } else {
                    0.0
                })
            },
        ),
    ];
    for (name, help, kind, value) in families {
        let series: Vec<(String, f64)> = rows
            .iter()
            .filter_map(|r| Some((label(&r.name), value(r)?)))
            .collect();
        if series.is_empty() {
            continue;
        }
        out.push_str(&format!(
            "# HELP pg_dbmigrator_database_{name} {help}\n# TYPE pg_dbmigrator_database_{name} {kind}\n"
        ));
        for (db, v) in series {
            out.push_str(&format!(
                "pg_dbmigrator_database_{name}{{database=\"{db}\"}} {v}\n"
            ));
        }
    }
    out.push_str(
        "# HELP pg_dbmigrator_database_state Where each database stands (1 for its state).\n# TYPE pg_dbmigrator_database_state gauge\n",
    );
    for r in rows {
        out.push_str(&format!(
            "pg_dbmigrator_database_state{{database=\"{}\",state=\"{}\"}} 1\n",
            label(&r.name),
            r.state.as_str()
        ));
    }
}

/// The status page: one self-contained HTML file (no external assets).
#[doc(hidden)]
pub const PAGE: &str = include_str!("page.html");

/// Who may cut over from the page: the holder of `token` (printed once at
/// start-up), through `request` (`Err`: refused, why).
#[doc(hidden)]
pub struct CutoverControl {
    pub token: String,
    pub request: Box<dyn Fn() -> std::result::Result<(), String> + Send + Sync>,
}

/// Serve the page at `/`, `/metrics`, `/status` and `POST /cutover` (with
/// the header `X-Cutover-Token`; 403 without the right one) on `addr` until
/// `stop`; returns the bound address (port 0 picks a free one).
#[doc(hidden)]
pub async fn serve(
    addr: SocketAddr,
    progress: Arc<Progress>,
    cutover: Option<CutoverControl>,
    stop: CancellationToken,
) -> Result<SocketAddr> {
    let cutover = Arc::new(cutover);
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| MigrationError::io(format!("listening on {addr} (--http)"), e))?;
    let bound = listener
        .local_addr()
        .map_err(|e| MigrationError::io("reading the listening address", e))?;
    tokio::spawn(async move {
        loop {
            let (mut sock, peer) = tokio::select! {
                _ = stop.cancelled() => break,
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(_) => continue,
                },
            };
            let progress = progress.clone();
            let cutover = cutover.clone();
            tokio::spawn(async move {
                // The request head, which may come in several pieces.
                let mut buf = Vec::with_capacity(1024);
                let read_head = async {
                    let mut chunk = [0u8; 1024];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 16384 {
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                };
                if tokio::time::timeout(std::time::Duration::from_secs(5), read_head)
                    .await
                    .is_err()
                {
                    return;
                }
                let req = String::from_utf8_lossy(&buf);
                let path = req.split_whitespace().nth(1).unwrap_or("/");
                let method = req.split_whitespace().next().unwrap_or("");
                debug!(%peer, method, path, "http request");
                let (status, ctype, body) = match (method, path) {
                    ("GET", "/metrics") => (
                        "200 OK",
                        "text/plain; version=0.0.4",
                        metrics_text(&progress.snapshot()),
                    ),
                    ("GET", "/status") => (
                        "200 OK",
                        "application/json",
                        serde_json::to_string_pretty(&StatusView::from(&progress.snapshot()))
                            .expect("snapshot serializes"),
                    ),
                    ("GET", "/") => ("200 OK", "text/html; charset=utf-8", PAGE.to_string()),
                    ("POST", "/cutover") => {
                        let given = req.lines().find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.trim()
                                .eq_ignore_ascii_case("x-cutover-token")
                                .then(|| v.trim().to_string())
                        });
                        match cutover.as_ref() {
                            None => (
                                "404 Not Found",
                                "text/plain",
                                "this migration has no cutover (offline)\n".into(),
                            ),
                            Some(c) if given.as_deref().is_some_and(|g| constant_eq(g, &c.token)) => {
                                match (c.request)() {
                                    Ok(()) => ("200 OK", "text/plain", "cutover requested\n".into()),
                                    Err(why) => ("409 Conflict", "text/plain", format!("{why}\n")),
                                }
                            }
                            Some(_) => (
                                "403 Forbidden",
                                "text/plain",
                                "a valid X-Cutover-Token is needed (printed when the migration started)\n".into(),
                            ),
                        }
                    }
                    ("GET", _) => ("404 Not Found", "text/plain", "not found\n".into()),
                    _ => (
                        "405 Method Not Allowed",
                        "text/plain",
                        "GET, or POST /cutover\n".into(),
                    ),
                };
                let head = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = sock.write_all(head.as_bytes()).await;
                let _ = sock.write_all(body.as_bytes()).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    Ok(bound)
}

/// Compare without returning early on the first difference.
fn constant_eq(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

impl crate::resume::TokenObserver for Progress {
    fn observe_token(&self, token: &ResumeToken) {
        Progress::observe_token(self, token)
    }
    fn observe_copied(&self, item: &str, m: &crate::resume::CopyMarker) {
        Progress::observe_copied(self, item, m)
    }
}

#[doc(hidden)]
pub fn human_bytes(b: u64) -> String {
    const U: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i < U.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", U[i])
    }
}

/// A long list shortened for a one-line message.
pub(crate) fn summarize(items: &[String]) -> String {
    const SHOWN: usize = 8;
    let mut s = items
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if items.len() > SHOWN {
        s.push_str(&format!(" and {} more", items.len() - SHOWN));
    }
    s
}

/// How many tables the JSON forms of a report (the summary file, `--json`)
/// list one by one: the largest; the rest are added up in `other_tables`,
/// so a 10,000-table migration writes a summary of kilobytes, not megabytes.
/// The in-memory report keeps every table.
#[doc(hidden)]
pub const LISTED_TABLES: usize = 100;

/// What the JSON form adds up instead of listing.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
#[doc(hidden)]
pub struct OtherTables {
    pub count: usize,
    pub rows: u64,
    pub bytes: u64,
}

/// The `LISTED_TABLES` largest by `size`, in their order, and the rest added
/// up by `add`.
#[doc(hidden)]
pub fn largest<T>(
    items: &[T],
    size: impl Fn(&T) -> u64,
    add: impl Fn(&mut OtherTables, &T),
) -> (Vec<&T>, Option<OtherTables>) {
    if items.len() <= LISTED_TABLES {
        return (items.iter().collect(), None);
    }
    let mut order: Vec<usize> = (0..items.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(size(&items[i])));
    let mut keep: Vec<usize> = order[..LISTED_TABLES].to_vec();
    keep.sort_unstable();
    let mut other = OtherTables::default();
    for &i in &order[LISTED_TABLES..] {
        other.count += 1;
        add(&mut other, &items[i]);
    }
    (keep.into_iter().map(|i| &items[i]).collect(), Some(other))
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_the_largest_are_listed_and_the_rest_added_up() {
        let sizes: Vec<u64> = (0..(LISTED_TABLES as u64 + 5)).collect();
        let (kept, other) = largest(&sizes, |s| *s, |o, s| o.bytes += *s);
        assert_eq!(kept.len(), LISTED_TABLES);
        assert_eq!(
            **kept.first().unwrap(),
            5,
            "order kept, smallest five left out"
        );
        assert_eq!(
            other,
            Some(OtherTables {
                count: 5,
                rows: 0,
                bytes: 1 + 2 + 3 + 4
            })
        );
        let few = [3u64, 1, 2];
        let (kept, other) = largest(&few, |s| *s, |_, _| {});
        assert_eq!(kept, vec![&3, &1, &2]);
        assert_eq!(other, None);
    }

    use super::*;

    #[test]
    fn typed_events_serialize_to_the_ndjson_schema() {
        let v = Event::StageFinished {
            stage: Phase::CopyData,
            seconds: Some(1.5),
        }
        .to_json();
        assert_eq!(v["schema"], EVENT_SCHEMA);
        assert_eq!(v["event"], "stage_finished");
        assert_eq!(v["stage"], "copy_data");
        assert_eq!(v["seconds"], 1.5);
        assert!(v["ts"].as_str().is_some_and(|t| t.ends_with('Z')), "{v}");
        let e = Event::Error {
            message: "x".into(),
            exit_code: None,
        }
        .to_json();
        assert!(e.get("exit_code").is_none(), "{e}");
    }

    #[test]
    fn source_pressure_shows_in_the_metrics_and_the_events() {
        let reason = |signal, value, pauses| PressureReason {
            signal,
            value,
            threshold: 1.0,
            unit: "seconds".into(),
            pauses,
            detail: "pid 7 has waited".into(),
        };
        let s = Snapshot {
            pressure: Some(PressureSnapshot {
                paused: true,
                reasons: vec![
                    reason(PressureSignal::LockWait, 3.5, true),
                    reason(PressureSignal::StandbyLag, 2.0, false),
                ],
                paused_seconds: 2.5,
                pauses: 1,
            }),
            ..Default::default()
        };
        let m = metrics_text(&s);
        for line in [
            "pg_dbmigrator_throttled 1\n",
            "pg_dbmigrator_throttled_seconds_total 2.5\n",
            "pg_dbmigrator_throttle_pauses_total 1\n",
            "pg_dbmigrator_source_pressure{signal=\"lock_wait\",unit=\"seconds\",action=\"pause\"} 3.5\n",
            "pg_dbmigrator_source_pressure{signal=\"standby_lag\",unit=\"seconds\",action=\"report\"} 2\n",
            "pg_dbmigrator_source_pressure_threshold{signal=\"lock_wait\",unit=\"seconds\",action=\"pause\"} 1\n",
        ] {
            assert!(m.contains(line), "{line} not in:\n{m}");
        }
        assert_eq!(
            m.matches("# TYPE pg_dbmigrator_source_pressure gauge")
                .count(),
            1
        );
        // Off: no series at all.
        assert!(!metrics_text(&Snapshot::default()).contains("throttled"));
        let e = Event::Throttled {
            reasons: s.pressure.as_ref().unwrap().reasons.clone(),
        }
        .to_json();
        assert_eq!(e["event"], "throttled");
        assert_eq!(e["reasons"][0]["signal"], "lock_wait");
        assert_eq!(e["reasons"][0]["pauses"], true);
        let e = Event::Unthrottled {
            seconds: 2.5,
            paused_seconds: 2.5,
        }
        .to_json();
        assert_eq!(
            (e["event"].as_str(), e["seconds"].as_f64()),
            (Some("unthrottled"), Some(2.5))
        );
        // `/status` carries the snapshot's pressure as it is.
        let status = serde_json::to_value(StatusView::from(&s)).unwrap();
        assert_eq!(status["pressure"]["paused"], true);
        assert_eq!(status["pressure"]["reasons"][1]["signal"], "standby_lag");
    }

    #[test]
    fn percent_rate_and_eta_come_from_the_snapshot() {
        let mut s = Snapshot {
            phase: Some(Phase::CopyData),
            heap_bytes_done: 50,
            bytes_total: 200,
            copy_seconds: 5.0,
            elapsed_seconds: 60.0,
            ..Default::default()
        };
        assert_eq!(s.percent(), Some(25.0));
        assert_eq!(s.rate(), Some(10.0));
        assert_eq!(s.eta(), Some(Duration::from_secs(15)));
        s.phase = Some(Phase::Stream);
        assert_eq!(s.eta(), None, "an ETA only while copying");
        assert_eq!(Snapshot::default().percent(), None);
    }

    #[test]
    fn bytes_still_copying_count_up_to_the_item_heap() {
        let p = Progress::default();
        p.set_totals(
            2,
            vec![("public.a".into(), 1000), ("public.b".into(), 1000)],
        );
        let moved = p.worker(0, Some("public.a"));
        moved.fetch_add(400, Ordering::Relaxed);
        let s = p.snapshot();
        assert_eq!(
            (s.bytes_in_flight, s.bytes_copied, s.heap_bytes_done),
            (400, 400, 400)
        );
        assert_eq!(s.percent(), Some(20.0));
        moved.fetch_add(5000, Ordering::Relaxed);
        assert_eq!(
            p.snapshot().heap_bytes_done,
            1000,
            "capped at the item's heap"
        );
        // Committed: out of the worker, into the totals, counted once.
        p.observe_copied(
            "public.a",
            &crate::resume::CopyMarker {
                rows: 1,
                bytes: 5400,
                seconds: 1.0,
                done_at: chrono::Utc::now(),
            },
        );
        let s = p.snapshot();
        assert_eq!(
            (s.bytes_in_flight, s.bytes_copied, s.heap_bytes_done),
            (0, 5400, 1000)
        );
        assert!(s.workers.is_empty());
    }

    /// Three databases: one done, one copying, one not started.
    fn cluster_members() -> (Snapshot, Snapshot) {
        let done = Snapshot {
            phase: Some(Phase::Verify),
            items_done: 2,
            items_total: 2,
            rows_copied: 10,
            bytes_copied: 700,
            heap_bytes_done: 1000,
            bytes_total: 1000,
            completed: true,
            ..Default::default()
        };
        let copying = Snapshot {
            phase: Some(Phase::CopyData),
            items_done: 1,
            items_total: 4,
            rows_copied: 5,
            bytes_copied: 300,
            bytes_in_flight: 100,
            heap_bytes_done: 500,
            bytes_total: 2000,
            workers: vec![WorkerSnapshot {
                worker: 0,
                item: "public.t".into(),
                seconds: 1.0,
                bytes: 100,
            }],
            ..Default::default()
        };
        (done, copying)
    }

    #[test]
    fn a_cluster_adds_up_its_databases() {
        let (done, copying) = cluster_members();
        let members = [
            Member {
                name: "a",
                planned_bytes: 900,
                state: DatabaseState::Done,
                snapshot: Some(&done),
                lag_bytes: None,
            },
            Member {
                name: "b",
                planned_bytes: 1800,
                state: DatabaseState::Running,
                snapshot: Some(&copying),
                lag_bytes: Some(5),
            },
            Member {
                name: "c",
                planned_bytes: 1000,
                state: DatabaseState::Waiting,
                snapshot: None,
                lag_bytes: None,
            },
        ];
        let mut s = Snapshot::default();
        merge(&mut s, &members);
        let rows = &s.databases;
        assert_eq!(rows.len(), 3);
        assert_eq!(
            rows.iter().map(|r| r.state).collect::<Vec<_>>(),
            [
                DatabaseState::Done,
                DatabaseState::Running,
                DatabaseState::Waiting
            ]
        );
        // Planned size until the database plans its own copy.
        assert_eq!(rows[2].bytes_total, 1000);
        assert_eq!(rows[1].percent, Some(25.0));
        assert_eq!(rows[0].percent, Some(100.0));
        assert_eq!(rows[1].lag_bytes, None, "lag only while streaming");
        assert_eq!((s.items_done, s.items_total), (3, 6));
        assert_eq!((s.rows_copied, s.bytes_copied), (15, 1000));
        assert_eq!(
            s.bytes_copied,
            rows.iter().map(|r| r.bytes_copied).sum::<u64>()
        );
        assert_eq!((s.heap_bytes_done, s.bytes_total), (1500, 4000));
        assert_eq!(s.percent(), Some(37.5));
        assert_eq!((s.databases_done, s.databases_total), (1, 3));
        assert_eq!(s.database.as_deref(), Some("b"));
        assert_eq!(s.phase, Some(Phase::CopyData));
        assert_eq!(s.workers[0].item, "b/public.t");
        assert_eq!(s.bytes_in_flight, 100);
        assert!(!s.completed);

        // The merged counters survive `snapshot()`; the end is 100%.
        let p = Progress::default();
        p.set_merged(&members, 10.0);
        let got = p.snapshot();
        assert_eq!((got.heap_bytes_done, got.copy_seconds), (1500, 10.0));
        assert_eq!(got.rate(), Some(150.0));
        assert_eq!(got.workers.len(), 1);
        let mut events = p.events();
        let all_done: Vec<Member<'_>> = members
            .iter()
            .map(|m| Member {
                state: DatabaseState::Done,
                ..*m
            })
            .collect();
        p.set_merged(&all_done, 12.0);
        let end = p.snapshot();
        assert_eq!(end.percent(), Some(100.0));
        assert!(end.completed && end.databases_done == 3);
        match events.try_recv() {
            Ok(Event::Progress { percent, .. }) => assert_eq!(percent, Some(100.0)),
            other => panic!("the copy's last progress event: {other:?}"),
        }
        // A database streaming shows its lag.
        let streaming = Snapshot {
            phase: Some(Phase::Stream),
            ..copying.clone()
        };
        let mut s = Snapshot::default();
        merge(
            &mut s,
            &[Member {
                snapshot: Some(&streaming),
                ..members[1]
            }],
        );
        assert_eq!(s.databases[0].state, DatabaseState::Streaming);
        assert_eq!(s.databases[0].lag_bytes, Some(5));
    }

    #[test]
    fn database_series_are_labelled_and_escaped() {
        assert_eq!(label("a\\b\"c\nd"), "a\\\\b\\\"c\\nd");
        let s = Snapshot {
            databases_total: 2,
            databases: vec![
                DatabaseProgress {
                    name: "app\"db".into(),
                    state: DatabaseState::Done,
                    bytes_copied: 42,
                    percent: Some(100.0),
                    ..Default::default()
                },
                DatabaseProgress {
                    name: "b".into(),
                    state: DatabaseState::Streaming,
                    lag_bytes: Some(9),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let m = metrics_text(&s);
        assert!(
            m.contains("pg_dbmigrator_database_bytes_copied{database=\"app\\\"db\"} 42\n"),
            "{m}"
        );
        assert!(
            m.contains("pg_dbmigrator_database_percent{database=\"app\\\"db\"} 100\n"),
            "{m}"
        );
        assert!(
            m.contains("pg_dbmigrator_database_lag_bytes{database=\"b\"} 9\n"),
            "{m}"
        );
        assert!(
            m.contains("pg_dbmigrator_database_state{database=\"b\",state=\"streaming\"} 1\n"),
            "{m}"
        );
        assert_eq!(
            m.matches("# TYPE pg_dbmigrator_database_bytes_copied ")
                .count(),
            1
        );
        // The cluster's own series keep their names.
        assert!(m.contains("pg_dbmigrator_databases_total 2\n"), "{m}");
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["databases"][1]["state"], "streaming");
        assert!(serde_json::to_value(Snapshot::default())
            .unwrap()
            .get("databases")
            .is_none());
    }

    #[test]
    fn metrics_are_prometheus_text() {
        let s = Snapshot {
            items_done: 3,
            bytes_copied: 1024,
            phase: Some(Phase::CopyData),
            online: Some(OnlineSnapshot {
                lag_bytes: 7,
                ..Default::default()
            }),
            ..Default::default()
        };
        let m = metrics_text(&s);
        assert!(m.contains("pg_dbmigrator_items_done 3\n"), "{m}");
        assert!(m.contains("pg_dbmigrator_bytes_copied 1024\n"), "{m}");
        assert!(m.contains("pg_dbmigrator_lag_bytes 7\n"), "{m}");
        assert!(
            m.contains("pg_dbmigrator_stage{stage=\"copy_data\"} 1\n"),
            "{m}"
        );
        for line in m.lines().filter(|l| !l.starts_with('#')) {
            assert!(line.starts_with("pg_dbmigrator_"), "{line}");
        }
    }
}
