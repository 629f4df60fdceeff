//! The live progress line on stderr (`--progress`), and the log writer that
//! keeps log lines from tearing it: every log record first clears the line,
//! then the line is drawn again below the record.
//!
//! On a terminal (or with `--progress always`) the line is redrawn four
//! times a second; without one (`auto`), a progress log line is written
//! every few seconds instead; `never` shows neither.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use pg_dbmigrator::human_bytes;
use pg_dbmigrator::progress::{Progress, Snapshot};
use tokio_util::sync::CancellationToken;

/// The line as last drawn ("" when none is shown), and whether it may be
/// drawn (false once the run is over).
struct Bar {
    text: String,
    active: bool,
}

/// Erase the `text` drawn last (its lines; the cursor ends at the start of
/// the first).
fn erase(text: &str) -> String {
    let lines = text.lines().count().max(1);
    let mut s = String::from(CLEAR);
    for _ in 1..lines {
        s.push_str("\x1b[1A\x1b[2K");
    }
    s
}

fn bar() -> &'static Mutex<Bar> {
    static BAR: OnceLock<Mutex<Bar>> = OnceLock::new();
    BAR.get_or_init(|| {
        Mutex::new(Bar {
            text: String::new(),
            active: false,
        })
    })
}

const CLEAR: &str = "\r\x1b[2K";

/// `tracing`'s writer: one record at a time, around the progress line.
pub struct LogWriter;

pub struct Record(Vec<u8>);

impl Write for Record {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for Record {
    fn drop(&mut self) {
        let bar = bar().lock().unwrap_or_else(|p| p.into_inner());
        let mut err = std::io::stderr().lock();
        if bar.text.is_empty() {
            let _ = err.write_all(&self.0);
        } else {
            let _ = write!(err, "{}", erase(&bar.text));
            let _ = err.write_all(&self.0);
            let _ = write!(err, "{}", bar.text);
        }
        let _ = err.flush();
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = Record;

    fn make_writer(&'a self) -> Self::Writer {
        Record(Vec::with_capacity(256))
    }
}

fn draw(text: &str) {
    let mut bar = bar().lock().unwrap_or_else(|p| p.into_inner());
    if !bar.active {
        return;
    }
    let old = std::mem::replace(&mut bar.text, text.to_string());
    let mut err = std::io::stderr().lock();
    let _ = write!(
        err,
        "{}{text}",
        if old.is_empty() {
            CLEAR.to_string()
        } else {
            erase(&old)
        }
    );
    let _ = err.flush();
}

fn clear() {
    let mut bar = bar().lock().unwrap_or_else(|p| p.into_inner());
    bar.active = false;
    if !bar.text.is_empty() {
        let old = std::mem::take(&mut bar.text);
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "{}", erase(&old));
        let _ = err.flush();
    }
}

/// One line: stage, items, bytes with percentage, rate and ETA of the
/// copy; lag and apply rate while streaming.
/// (Percentage, rate and ETA are the library's: [`Snapshot::percent`],
/// [`Snapshot::rate`], [`Snapshot::eta`].)
pub fn line(s: &Snapshot) -> String {
    let stage = s.phase.map_or("starting", |p| p.as_str());
    let mut out = match &s.database {
        // A whole-cluster migration: databases done of how many, and the
        // one shown (the counts after it are the whole cluster's).
        Some(db) if !s.databases.is_empty() => format!(
            "[{}/{} databases done, {db}] [{stage}]",
            s.databases_done, s.databases_total
        ),
        // (A cluster's dump or restore: one database at a time.)
        Some(db) => format!(
            "[{db} {}/{}] [{stage}]",
            s.databases_done + 1,
            s.databases_total
        ),
        None if !s.databases.is_empty() => format!(
            "[{}/{} databases done] [{stage}]",
            s.databases_done, s.databases_total
        ),
        None => format!("[{stage}]"),
    };
    if s.items_total > 0 || s.items_done > 0 {
        out.push_str(&format!(" {}/{} items", s.items_done, s.items_total));
    }
    if let Some(pct) = s.percent() {
        out.push_str(&format!(
            " {} / {} ({pct:.0}%)",
            human_bytes(s.heap_bytes_done),
            human_bytes(s.bytes_total)
        ));
        if let (Some(rate), Some(eta)) = (s.rate(), s.eta()) {
            out.push_str(&format!(
                " {}/s ETA {:.0}s",
                human_bytes(rate as u64),
                eta.as_secs_f64()
            ));
        }
    }
    if let Some(o) = &s.online {
        out.push_str(&format!(
            " | lag {} ({:.1}s), {:.0} tx/s, {:.0} rows/s{}",
            human_bytes(o.lag_bytes),
            o.lag_seconds,
            o.transactions_per_second,
            o.rows_per_second,
            if o.ready_to_cut_over {
                ", ready to cut over"
            } else {
                ""
            }
        ));
        if let Some(l) = o.fallback_lag_bytes {
            out.push_str(&format!(
                " | fallback: new server -> old source lag {}",
                human_bytes(l)
            ));
        }
    }
    // `--source-pressure`: why the copy is paused, or what is reported.
    if let Some(p) = &s.pressure {
        let list = |pauses: bool| {
            p.reasons
                .iter()
                .filter(|r| r.pauses == pauses)
                .map(|r| format!("{} ({})", r.signal.describe(), r.measured()))
                .collect::<Vec<_>>()
                .join(", ")
        };
        if p.paused {
            out.push_str(&format!(" | paused: {}", list(true)));
        }
        let reported = list(false);
        if !reported.is_empty() {
            out.push_str(&format!(" | source: {reported}"));
        }
    }
    // One line per busy copy worker.
    for w in &s.workers {
        out.push_str(&format!(
            "\n  worker {}: {} ({:.1}s)",
            w.worker, w.item, w.seconds
        ));
    }
    out
}

/// The live-state file beside a resume token (`<dump-path>.progress.json`),
/// which `status` reads while the migration runs.
pub fn live_path(token_path: &std::path::Path) -> std::path::PathBuf {
    let s = token_path.to_string_lossy();
    let base = s.strip_suffix(".resume.json").unwrap_or(&s);
    std::path::PathBuf::from(format!("{base}.progress.json"))
}

/// Keeps the live-state file fresh (twice a second) until dropped; then
/// removes it.
pub struct Published(CancellationToken, std::path::PathBuf);

impl Drop for Published {
    fn drop(&mut self) {
        self.0.cancel();
        let _ = std::fs::remove_file(&self.1);
    }
}

pub fn publish(progress: Arc<Progress>, path: std::path::PathBuf) -> Published {
    let stop = CancellationToken::new();
    let guard = Published(stop.clone(), path.clone());
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        let tmp = path.with_extension("json.partial");
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            let json = serde_json::to_vec(&progress.snapshot()).expect("snapshot serializes");
            if std::fs::write(&tmp, json)
                .and_then(|()| std::fs::rename(&tmp, &path))
                .is_err()
            {
                let _ = std::fs::remove_file(&tmp);
            }
        }
    });
    guard
}

/// The live state of a running migration, if its file is fresh.
pub fn read_live(token_path: &std::path::Path) -> Option<Snapshot> {
    let path = live_path(token_path);
    let age = std::fs::metadata(&path)
        .ok()?
        .modified()
        .ok()?
        .elapsed()
        .ok()?;
    if age > Duration::from_secs(5) {
        return None; // left by a process that died
    }
    serde_json::from_slice(&std::fs::read(&path).ok()?).ok()
}

/// Where warnings and errors logged by the library also go as events
/// (`migrate --json`).
fn event_target() -> &'static Mutex<Option<Arc<Progress>>> {
    static T: OnceLock<Mutex<Option<Arc<Progress>>>> = OnceLock::new();
    T.get_or_init(|| Mutex::new(None))
}

/// Prints the events on stdout (see [`events_to_stdout`]).
pub struct Printer(tokio::task::JoinHandle<()>);

impl Printer {
    /// Wait until the run's last event (its summary, or its failure) is
    /// printed; at most a few seconds.
    pub async fn finish(self) {
        let mut h = self.0;
        if tokio::time::timeout(Duration::from_secs(5), &mut h)
            .await
            .is_err()
        {
            h.abort();
        }
    }
}

/// Print every event of `progress` as one JSON line on stdout, warnings and
/// errors from the log included, on a task of its own (a blocked stdout
/// never holds up the migration: the events wait in the progress's buffer)
/// until the run's last event.
pub fn events_to_stdout(progress: &Arc<Progress>) -> Printer {
    let mut rx = progress.events();
    Printer(tokio::spawn(async move {
        use pg_dbmigrator::progress::Event;
        use tokio::sync::broadcast::error::RecvError;
        loop {
            let e = match rx.recv().await {
                Ok(e) => e,
                Err(RecvError::Lagged(n)) => {
                    tracing::warn!(skipped = n, "stdout is slow: events were skipped");
                    continue;
                }
                Err(RecvError::Closed) => break,
            };
            let last = matches!(
                e,
                Event::Summary { .. }
                    | Event::Error {
                        exit_code: Some(_),
                        ..
                    }
            );
            // Written on the blocking pool: a blocked pipe parks this
            // task, not a runtime thread the migration needs.
            let line = format!("{}\n", e.to_json());
            let _ = tokio::task::spawn_blocking(move || {
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(line.as_bytes());
                let _ = out.flush();
            })
            .await;
            if last {
                break;
            }
        }
    }))
}

/// Warnings and errors of the log also go to `progress` (its status, and
/// its events when a sink is set).
pub fn log_into(progress: &Arc<Progress>) {
    *event_target().lock().unwrap_or_else(|p| p.into_inner()) = Some(progress.clone());
}

/// A `tracing` layer: WARN and ERROR records become `warning` / `error`
/// events when events are on.
pub struct EventLayer;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for EventLayer {
    fn on_event(
        &self,
        event: &tracing::Event<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        // What the library recorded itself is in the progress already.
        if event.metadata().target() == pg_dbmigrator::context::RECORDED_TARGET {
            return;
        }
        let level = *event.metadata().level();
        let kind = if level == tracing::Level::ERROR {
            "error"
        } else if level == tracing::Level::WARN {
            "warning"
        } else {
            return;
        };
        let Some(p) = event_target()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        else {
            return;
        };
        struct Msg(String);
        impl tracing::field::Visit for Msg {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                if field.name() == "message" {
                    self.0 = format!("{value:?}");
                } else {
                    self.0.push_str(&format!(" {}={value:?}", field.name()));
                }
            }
        }
        let mut m = Msg(String::new());
        event.record(&mut m);
        if kind == "warning" {
            p.warn(m.0.trim());
        } else {
            p.error(m.0.trim());
        }
    }
}

/// How progress is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// A line redrawn in place.
    Bar,
    /// A log line every few seconds.
    Log,
    Off,
}

/// Shows progress until dropped; the line is gone when it is.
pub struct Shown(CancellationToken);

impl Drop for Shown {
    fn drop(&mut self) {
        self.0.cancel();
        clear();
    }
}

/// Show `progress` until the returned guard is dropped.
pub fn show(progress: Arc<Progress>, mode: Mode) -> Option<Shown> {
    if mode == Mode::Off {
        return None;
    }
    if mode == Mode::Bar {
        bar().lock().unwrap_or_else(|p| p.into_inner()).active = true;
    }
    let stop = CancellationToken::new();
    let guard = Shown(stop.clone());
    tokio::spawn(async move {
        let period = match mode {
            Mode::Bar => Duration::from_millis(250),
            _ => Duration::from_secs(5),
        };
        let mut tick = tokio::time::interval(period);
        if mode == Mode::Log {
            tick.tick().await; // nothing to say at the very start
        }
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            let text = line(&progress.snapshot());
            match mode {
                Mode::Bar => draw(&text),
                _ => tracing::info!("progress: {}", text.replace("\n  ", "; ")),
            }
        }
    });
    Some(guard)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_says_where_the_copy_is() {
        let s = Snapshot {
            phase: Some(pg_dbmigrator::Phase::CopyData),
            items_done: 3,
            items_total: 8,
            heap_bytes_done: 50 << 20,
            bytes_total: 200 << 20,
            elapsed_seconds: 6.0,
            copy_seconds: 5.0,
            ..Default::default()
        };
        let l = line(&s);
        assert!(l.starts_with("[copy_data] 3/8 items"), "{l}");
        assert!(l.contains("(25%)") && l.contains("ETA 15s"), "{l}");
    }

    #[test]
    fn the_line_says_why_the_copy_is_paused() {
        use pg_dbmigrator::progress::{PressureReason, PressureSignal, PressureSnapshot};
        let reason = |signal, value, threshold: f64, unit: &str, pauses| PressureReason {
            signal,
            value,
            threshold,
            unit: unit.into(),
            pauses,
            detail: String::new(),
        };
        let s = Snapshot {
            phase: Some(pg_dbmigrator::Phase::CopyData),
            pressure: Some(PressureSnapshot {
                paused: true,
                reasons: vec![
                    reason(PressureSignal::LockWait, 3.24, 1.0, "seconds", true),
                    reason(PressureSignal::SlotWal, 85.2, 80.0, "percent", false),
                ],
                paused_seconds: 2.0,
                pauses: 1,
            }),
            ..Default::default()
        };
        let l = line(&s);
        assert!(
            l.contains("| paused: lock waits behind our sessions (3.2s > 1s)"),
            "{l}"
        );
        assert!(
            l.contains("| source: WAL retained by our slot (85% > 80%)"),
            "{l}"
        );
    }

    #[test]
    fn a_cluster_shows_its_databases_and_its_total() {
        let s = Snapshot {
            phase: Some(pg_dbmigrator::Phase::CopyData),
            database: Some("appdb".into()),
            databases_done: 1,
            databases_total: 3,
            databases: vec![Default::default(); 3],
            heap_bytes_done: 50 << 20,
            bytes_total: 200 << 20,
            ..Default::default()
        };
        let l = line(&s);
        assert!(
            l.starts_with("[1/3 databases done, appdb] [copy_data]"),
            "{l}"
        );
        assert!(l.contains("(25%)") && !l.contains('\n'), "{l}");
    }

    #[test]
    fn one_line_per_busy_worker_and_all_of_them_erased() {
        let s = Snapshot {
            phase: Some(pg_dbmigrator::Phase::CopyData),
            workers: vec![
                pg_dbmigrator::progress::WorkerSnapshot {
                    worker: 0,
                    item: "public.a#1/4".into(),
                    seconds: 1.25,
                    bytes: 0,
                },
                pg_dbmigrator::progress::WorkerSnapshot {
                    worker: 1,
                    item: "public.b".into(),
                    seconds: 0.5,
                    bytes: 0,
                },
            ],
            ..Default::default()
        };
        let l = line(&s);
        assert_eq!(l.lines().count(), 3, "{l}");
        assert!(l.contains("\n  worker 0: public.a#1/4 (1.2s)"), "{l}");
        assert_eq!(erase(&l), format!("{CLEAR}\x1b[1A\x1b[2K\x1b[1A\x1b[2K"));
    }
}
