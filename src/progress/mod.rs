//! Where a running migration stands, for people and for monitoring: a
//! snapshot kept up to date from the resume token (every stage change and
//! every copied table or chunk goes through it) and from the online loop
//! (lag, apply rate, cutover), served over HTTP as Prometheus metrics at
//! `/metrics` and as JSON at `/status` (`--http ADDR`).
//!
//! It also turns those changes into events (stage started and finished,
//! item copied, lag sample, cutover started, finished or failed) for a sink
//! the caller installs: the CLI prints them as NDJSON (`migrate --json`),
//! one object a line, under the versioned schema [`EVENT_SCHEMA`].
//!
//! The HTTP side is a few lines of HTTP/1.1 on a tokio listener: two
//! read-only GET endpoints need no framework. It binds to loopback unless
//! told otherwise.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::error::{MigrationError, Result};
use crate::resume::{ResumeToken, StageStatus};

/// The online part of the snapshot.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct OnlineSnapshot {
    /// Source WAL bytes not yet applied on the target.
    pub lag_bytes: u64,
    /// Seconds since the commit of the last applied source transaction
    /// (0 when caught up).
    pub lag_seconds: f64,
    pub applied_lsn: String,
    pub transactions: u64,
    pub rows: u64,
    pub transactions_per_second: f64,
    pub rows_per_second: f64,
    /// Caught up: an automatic cutover would start.
    pub ready_to_cut_over: bool,
    pub cutover_downtime_seconds: Option<f64>,
    pub fence_lsn: Option<String>,
    /// `--fallback` after the cutover: the new server's WAL bytes not yet
    /// applied on the old source.
    #[serde(default)]
    pub fallback_lag_bytes: Option<u64>,
}

/// What one copy worker is doing.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct WorkerSnapshot {
    pub worker: usize,
    /// The table, or `table#i/n` for a chunk.
    pub item: String,
    pub seconds: f64,
}

/// Where the migration stands.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct Snapshot {
    pub migration_id: String,
    /// The stage running now (or the last one).
    pub stage: Option<String>,
    pub stages_done: Vec<String>,
    /// Tables (or chunks of split tables) copied, and how many there are.
    pub items_done: u64,
    pub items_total: u64,
    pub rows_copied: u64,
    pub bytes_copied: u64,
    /// Heap size of everything to copy (from the catalogs).
    pub bytes_total: u64,
    /// Heap size of the tables and chunks copied so far (what the
    /// percentage and the ETA count; COPY data is bigger or smaller).
    #[serde(default)]
    pub heap_bytes_done: u64,
    pub online: Option<OnlineSnapshot>,
    /// Warnings logged so far (the last 50).
    #[serde(default)]
    pub warnings: Vec<String>,
    /// Copy workers busy with an item right now.
    #[serde(default)]
    pub workers: Vec<WorkerSnapshot>,
    /// Errors logged so far (a failed cutover attempt, a lost connection
    /// retried, the run's own failure).
    #[serde(default)]
    pub errors: u64,
    pub completed: bool,
    pub elapsed_seconds: f64,
}

/// The schema every event names in its `schema` field. Version 1:
/// `{"schema", "ts" (RFC 3339), "event", ...}` with `event` one of
/// `stage_started {stage}`, `stage_finished {stage, seconds}`,
/// `item_copied {item, rows, bytes, seconds}`, `lag {lag_bytes,
/// lag_seconds, applied_lsn, transactions_per_second, rows_per_second,
/// ready_to_cut_over}`, `cutover_started {attempt}`, `cutover_finished
/// {downtime_seconds, fence_lsn}`, `cutover_failed {error}`, `warning
/// {message}`, `error {message}`, `summary {report}` (the last line of a
/// successful run).
pub const EVENT_SCHEMA: &str = "pg_dbmigrator.events/1";

/// Where events go.
pub type EventSink = Box<dyn Fn(serde_json::Value) + Send + Sync>;

/// What the previous token looked like, to see what changed.
#[derive(Debug, Default)]
struct Seen {
    stages: std::collections::BTreeMap<String, StageStatus>,
    items: std::collections::BTreeSet<String>,
    cutover_attempts: u32,
    cutover_done: bool,
    cutover_error: Option<String>,
    last_lag_event: Option<Instant>,
}

/// Shared by the migration (which updates it) and the HTTP server (which
/// reads it).
pub struct Progress {
    state: Mutex<Snapshot>,
    seen: Mutex<Seen>,
    sink: Mutex<Option<EventSink>>,
    /// Heap bytes of each table to copy (quoted `schema.table`).
    table_bytes: Mutex<std::collections::HashMap<String, u64>>,
    /// Busy copy workers: item and start.
    workers: Mutex<std::collections::BTreeMap<usize, (String, Instant)>>,
    started: Instant,
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
            sink: Mutex::new(None),
            table_bytes: Mutex::new(Default::default()),
            workers: Mutex::new(Default::default()),
            started: Instant::now(),
        }
    }
}

/// An event object: schema, time, type, then `fields`.
pub fn event(kind: &str, fields: serde_json::Value) -> serde_json::Value {
    let mut v = serde_json::json!({
        "schema": EVENT_SCHEMA,
        "ts": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "event": kind,
    });
    if let (Some(o), serde_json::Value::Object(f)) = (v.as_object_mut(), fields) {
        o.extend(f);
    }
    v
}

impl Progress {
    pub fn new() -> Arc<Self> {
        Arc::new(Progress::default())
    }

    /// Count an error logged.
    pub fn add_error(&self) {
        self.with(|s| s.errors += 1);
    }

    /// Keep a warning for the status (the last 50).
    pub fn add_warning(&self, message: &str) {
        self.with(|s| {
            s.warnings.push(message.to_string());
            if s.warnings.len() > 50 {
                s.warnings.remove(0);
            }
        });
    }

    /// Send every event to `sink` from now on.
    pub fn set_sink(&self, sink: EventSink) {
        *self.sink.lock().unwrap_or_else(|p| p.into_inner()) = Some(sink);
    }

    /// Emit one event to the sink, if there is one.
    pub fn emit(&self, kind: &str, fields: serde_json::Value) {
        if let Some(s) = self.sink.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            s(event(kind, fields));
        }
    }

    /// Events for what changed in the token since the last call.
    fn events_from_token(&self, t: &ResumeToken) {
        let mut out = Vec::new();
        {
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            for r in &t.stages {
                let name = r.stage.as_str().to_string();
                let before = seen.stages.insert(name.clone(), r.status);
                if before != Some(r.status) {
                    match r.status {
                        StageStatus::Running => {
                            out.push(("stage_started", serde_json::json!({ "stage": name })))
                        }
                        StageStatus::Done => out.push((
                            "stage_finished",
                            serde_json::json!({
                                "stage": name,
                                "seconds": r.finished_at.map(|f| (f - r.started_at).num_milliseconds() as f64 / 1000.0),
                            }),
                        )),
                    }
                }
            }
            for (item, m) in &t.copied {
                if seen.items.insert(item.clone()) {
                    out.push((
                        "item_copied",
                        serde_json::json!({ "item": item, "rows": m.rows, "bytes": m.bytes, "seconds": m.seconds }),
                    ));
                }
            }
            if let Some(c) = t.online.as_ref().and_then(|o| o.cutover.as_ref()) {
                if c.attempts > seen.cutover_attempts {
                    seen.cutover_attempts = c.attempts;
                    out.push((
                        "cutover_started",
                        serde_json::json!({ "attempt": c.attempts }),
                    ));
                }
                if c.completed && !seen.cutover_done {
                    seen.cutover_done = true;
                    out.push((
                        "cutover_finished",
                        serde_json::json!({
                            "downtime_seconds": c.downtime_seconds,
                            "fence_lsn": c.fence_lsn.map(|l| l.to_string()),
                        }),
                    ));
                }
                if c.error.is_some() && c.error != seen.cutover_error {
                    seen.cutover_error = c.error.clone();
                    out.push(("cutover_failed", serde_json::json!({ "error": c.error })));
                }
            }
        }
        for (kind, fields) in out {
            self.emit(kind, fields);
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut Snapshot) -> R) -> R {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut s)
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Snapshot {
        let mut s = self.with(|s| s.clone());
        s.elapsed_seconds = self.started.elapsed().as_secs_f64();
        s.workers = self
            .workers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(w, (item, since))| WorkerSnapshot {
                worker: *w,
                item: item.clone(),
                seconds: since.elapsed().as_secs_f64(),
            })
            .collect();
        s
    }

    /// Copy worker `worker` started on `item` (`None`: it is idle).
    pub fn worker(&self, worker: usize, item: Option<&str>) {
        let mut w = self.workers.lock().unwrap_or_else(|p| p.into_inner());
        match item {
            Some(i) => {
                w.insert(worker, (i.to_string(), Instant::now()));
            }
            None => {
                w.remove(&worker);
            }
        }
    }

    /// One more item copied: counted in O(1), without reading the token.
    pub fn observe_copied(&self, item: &str, m: &crate::resume::CopyMarker) {
        let new = {
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            seen.items.insert(item.to_string())
        };
        if !new {
            return;
        }
        self.emit(
            "item_copied",
            serde_json::json!({ "item": item, "rows": m.rows, "bytes": m.bytes, "seconds": m.seconds }),
        );
        let heap = self.heap_share(item);
        self.with(|s| {
            s.heap_bytes_done += heap;
            s.items_done += 1;
            s.rows_copied += m.rows;
            s.bytes_copied += m.bytes;
        });
    }

    /// The part of its table's heap an item stands for: a chunk
    /// `schema.table#i/n` counts for 1/n.
    fn heap_share(&self, item: &str) -> u64 {
        let sizes = self.table_bytes.lock().unwrap_or_else(|p| p.into_inner());
        match item.split_once('#') {
            None => sizes.get(item).copied().unwrap_or(0),
            Some((table, part)) => {
                let n: u64 = part
                    .split_once('/')
                    .and_then(|(_, n)| n.parse().ok())
                    .unwrap_or(1);
                sizes.get(table).copied().unwrap_or(0) / n.max(1)
            }
        }
    }

    /// Take stages and copied items from the token (called on every full save).
    pub fn observe_token(&self, t: &ResumeToken) {
        self.events_from_token(t);
        // A chunk `schema.table#i/n` counts for 1/n of its table's heap.
        let heap_done: u64 = t.copied.keys().map(|k| self.heap_share(k)).sum();
        self.with(|s| {
            s.heap_bytes_done = heap_done;
            s.migration_id = t.migration_id.clone();
            s.stage = t.current_stage().map(|r| r.stage.as_str().to_string());
            s.stages_done = t
                .stages
                .iter()
                .filter(|r| r.status == StageStatus::Done)
                .map(|r| r.stage.as_str().to_string())
                .collect();
            s.items_done = t.copied.len() as u64;
            s.rows_copied = t.copied.values().map(|c| c.rows).sum();
            s.bytes_copied = t.copied.values().map(|c| c.bytes).sum();
            s.completed = t.completed;
            if let Some(c) = t.online.as_ref().and_then(|o| o.cutover.as_ref()) {
                let o = s.online.get_or_insert_with(Default::default);
                o.cutover_downtime_seconds = c.downtime_seconds;
                o.fence_lsn = c.fence_lsn.map(|l| l.to_string());
            }
        });
    }

    /// What is to be copied: known once the copy is planned. `tables`:
    /// each table's heap size by quoted `schema.table`.
    pub fn set_totals(&self, items: u64, tables: Vec<(String, u64)>) {
        let bytes = tables.iter().map(|(_, b)| b).sum();
        *self.table_bytes.lock().unwrap_or_else(|p| p.into_inner()) = tables.into_iter().collect();
        self.with(|s| {
            s.items_total = items;
            s.bytes_total = bytes;
        });
    }

    /// A lag sample of the online loop (an event every 5 seconds).
    pub fn set_online(&self, f: impl FnOnce(&mut OnlineSnapshot)) {
        let o = self.with(|s| {
            let o = s.online.get_or_insert_with(Default::default);
            f(o);
            o.clone()
        });
        let due = {
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            let due = seen
                .last_lag_event
                .is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(5));
            if due {
                seen.last_lag_event = Some(Instant::now());
            }
            due
        };
        if due {
            self.emit(
                "lag",
                serde_json::json!({
                    "lag_bytes": o.lag_bytes,
                    "lag_seconds": o.lag_seconds,
                    "applied_lsn": o.applied_lsn,
                    "transactions_per_second": o.transactions_per_second,
                    "rows_per_second": o.rows_per_second,
                    "ready_to_cut_over": o.ready_to_cut_over,
                }),
            );
        }
    }
}

/// The snapshot in the Prometheus text format, names prefixed
/// `pg_dbmigrator_`.
pub fn metrics_text(s: &Snapshot) -> String {
    let mut out = String::new();
    let mut metric = |name: &str, help: &str, kind: &str, value: f64| {
        out.push_str(&format!(
            "# HELP pg_dbmigrator_{name} {help}\n# TYPE pg_dbmigrator_{name} {kind}\npg_dbmigrator_{name} {value}\n"
        ));
    };
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
        "Seconds since the migration started.",
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
    if let Some(stage) = &s.stage {
        out.push_str(&format!(
            "# HELP pg_dbmigrator_stage The stage running now.\n# TYPE pg_dbmigrator_stage gauge\npg_dbmigrator_stage{{stage=\"{stage}\"}} 1\n"
        ));
    }
    out
}

/// The status page: one self-contained HTML file (no external assets).
pub const PAGE: &str = include_str!("page.html");

/// Who may cut over from the page: the holder of `token` (printed once at
/// start-up), through `request`.
pub struct CutoverControl {
    pub token: String,
    pub request: Box<dyn Fn() + Send + Sync>,
}

/// Serve the page at `/`, `/metrics`, `/status` and `POST /cutover` (with
/// the header `X-Cutover-Token`; 403 without the right one) on `addr` until
/// `stop`; returns the bound address (port 0 picks a free one).
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
                        serde_json::to_string_pretty(&progress.snapshot())
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
                                (c.request)();
                                ("200 OK", "text/plain", "cutover requested\n".into())
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
pub const LISTED_TABLES: usize = 100;

/// What the JSON form adds up instead of listing.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct OtherTables {
    pub count: usize,
    pub rows: u64,
    pub bytes: u64,
}

/// The `LISTED_TABLES` largest by `size`, in their order, and the rest added
/// up by `add`.
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
    fn metrics_are_prometheus_text() {
        let s = Snapshot {
            items_done: 3,
            bytes_copied: 1024,
            stage: Some("copy_data".into()),
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
