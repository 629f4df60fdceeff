//! The running state of one migration, beside its description: where
//! progress is published, the cancellation tree's root, and the cutover
//! signal a caller can raise. The orchestrator builds it (the binary or
//! [`crate::Migrator`] supplies the progress handle) and hands it down;
//! [`crate::MigrationConfig`] stays a pure description that can be
//! serialized, hashed and compared.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use std::time::Duration;

use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use crate::error::MigrationError;
use crate::progress::Progress;
use crate::resume::TokenObserver;

/// Asks a running online migration to cut over (see [`CutoverHandle`]),
/// and tells the handles how streaming stands and how each cutover
/// attempt ended.
#[derive(Debug)]
pub struct CutoverSignal {
    requested: AtomicBool,
    notify: Notify,
    state: watch::Sender<ControlState>,
}

impl Default for CutoverSignal {
    fn default() -> Self {
        CutoverSignal {
            requested: AtomicBool::new(false),
            notify: Notify::new(),
            state: watch::Sender::new(ControlState::default()),
        }
    }
}

/// Where the online loop stands, for the handles.
#[derive(Debug, Clone, Default)]
struct ControlState {
    /// In the streaming loop: a request is taken.
    streaming: bool,
    /// Streaming and caught up (the snapshot's `ready_to_cut_over`).
    caught_up: bool,
    /// The run ended (any way).
    ended: bool,
    /// Cutover attempts ended so far, and the last one's result.
    attempts: u64,
    last: Option<std::result::Result<CutoverDone, CutoverError>>,
}

impl CutoverSignal {
    /// Whether a cutover was asked for since the last call (and forget it).
    pub fn take(&self) -> bool {
        self.requested.swap(false, Ordering::AcqRel)
    }

    /// Wait until a cutover is asked for.
    pub async fn notified(&self) {
        self.notify.notified().await
    }

    /// A run begins: not streaming, not ended; stale requests forgotten.
    pub(crate) fn run_started(&self) {
        self.requested.store(false, Ordering::Release);
        self.state.send_modify(|s| {
            s.streaming = false;
            s.caught_up = false;
            s.ended = false;
        });
    }

    /// The run ended: waiting handles resolve.
    pub(crate) fn run_ended(&self) {
        self.state.send_modify(|s| {
            s.streaming = false;
            s.caught_up = false;
            s.ended = true;
        });
    }

    /// The online loop streams (requests are taken) or stopped streaming.
    pub(crate) fn set_streaming(&self, streaming: bool) {
        self.state.send_if_modified(|s| {
            let was = (s.streaming, s.caught_up);
            s.streaming = streaming;
            s.caught_up &= streaming;
            was != (s.streaming, s.caught_up)
        });
    }

    /// The online loop's latest lag check.
    pub(crate) fn set_caught_up(&self, caught_up: bool) {
        self.state.send_if_modified(|s| {
            let now = caught_up && s.streaming;
            std::mem::replace(&mut s.caught_up, now) != now
        });
    }

    /// Streaming (requests are taken), and whether caught up.
    pub(crate) fn streaming_state(&self) -> (bool, bool) {
        let s = self.state.borrow();
        (s.streaming, s.caught_up)
    }

    /// A cutover attempt ended.
    pub(crate) fn attempt_ended(&self, r: std::result::Result<CutoverDone, CutoverError>) {
        self.state.send_modify(|s| {
            s.attempts += 1;
            s.last = Some(r);
        });
    }
}

/// A completed cutover.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct CutoverDone {
    /// How long writes were blocked on the source (the fence up to the
    /// end of the drain).
    pub downtime: Duration,
    /// The source's WAL position the target was drained to.
    pub fence_lsn: Option<String>,
}

/// Why a cutover request did not end in a cutover.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum CutoverError {
    /// Refused: the migration is not streaming. Before the copy has
    /// finished a request is refused, never queued: the lag at that point
    /// is the whole copy's worth of changes, and a cutover then would
    /// block writes for as long as draining them takes. Wait with
    /// [`CutoverHandle::wait_caught_up`] and ask again. (Also after the
    /// cutover, and in an offline migration.)
    NotStreaming,
    /// The attempt failed; the fence is lifted and streaming goes on, so
    /// a later request may succeed.
    Failed(Arc<MigrationError>),
    /// The run ended (failed, cancelled, or cut over by another request)
    /// before this request was answered.
    RunEnded,
}

impl std::fmt::Display for CutoverError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CutoverError::NotStreaming => f.write_str(
                "the migration is not streaming (the copy has not finished, the cutover is done, or it is offline): cutover refused",
            ),
            CutoverError::Failed(e) => write!(f, "the cutover failed (streaming goes on): {e}"),
            CutoverError::RunEnded => f.write_str("the migration ended before cutting over"),
        }
    }
}

impl std::error::Error for CutoverError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CutoverError::Failed(e) => Some(&**e),
            _ => None,
        }
    }
}

/// A library caller's way to trigger and follow the cutover of a running
/// `CutoverMode::Manual` online migration (the CLI's `pg_dbmigrator
/// cutover`). Cheap to clone; take it with [`crate::Migrator::cutover_handle`]
/// before [`crate::Migrator::run`].
#[derive(Debug, Clone)]
pub struct CutoverHandle(pub(crate) Arc<CutoverSignal>);

impl CutoverHandle {
    /// Resolves once the migration streams and has caught up (the lag is
    /// under `cutover_lag_bytes`: the snapshot's `ready_to_cut_over`), at
    /// once if it is now; `Err(RunEnded)` if the run ends first.
    pub async fn wait_caught_up(&self) -> std::result::Result<(), CutoverError> {
        let mut rx = self.0.state.subscribe();
        let r = rx.wait_for(|s| s.caught_up || s.ended).await;
        match r {
            Ok(s) if s.caught_up => Ok(()),
            _ => Err(CutoverError::RunEnded),
        }
    }

    /// Request the cutover now; the migration starts it within a second,
    /// whatever the lag. The request is made by this call: the returned
    /// [`CutoverRequest`] may be dropped (fire and forget), or awaited for
    /// the outcome of the next cutover attempt to end. Made while the
    /// migration is not streaming (during the copy, say) it is refused,
    /// not queued: awaiting it gives [`CutoverError::NotStreaming`].
    pub fn request(&self) -> CutoverRequest {
        let rx = self.0.state.subscribe();
        let (streaming, attempts) = {
            let s = rx.borrow();
            (s.streaming, s.attempts)
        };
        if !streaming {
            return CutoverRequest {
                rx,
                after: attempts,
                refused: true,
            };
        }
        self.0.requested.store(true, Ordering::Release);
        self.0.notify.notify_one();
        CutoverRequest {
            rx,
            after: attempts,
            refused: false,
        }
    }
}

/// A cutover request made by [`CutoverHandle::request`]; await it for the
/// outcome (the downtime and the fence LSN, or why not).
#[derive(Debug)]
pub struct CutoverRequest {
    rx: watch::Receiver<ControlState>,
    after: u64,
    refused: bool,
}

impl CutoverRequest {
    /// Whether the request was refused because the migration was not
    /// streaming (awaiting it gives [`CutoverError::NotStreaming`]).
    pub fn is_refused(&self) -> bool {
        self.refused
    }
}

impl std::future::IntoFuture for CutoverRequest {
    type Output = std::result::Result<CutoverDone, CutoverError>;
    type IntoFuture =
        std::pin::Pin<Box<dyn std::future::Future<Output = Self::Output> + Send + 'static>>;

    fn into_future(self) -> Self::IntoFuture {
        let CutoverRequest {
            mut rx,
            after,
            refused,
        } = self;
        Box::pin(async move {
            if refused {
                return Err(CutoverError::NotStreaming);
            }
            let s = rx
                .wait_for(|s| s.attempts > after || s.ended)
                .await
                .map(|s| s.clone());
            match s {
                Ok(s) if s.attempts > after => s.last.unwrap_or(Err(CutoverError::RunEnded)),
                _ => Err(CutoverError::RunEnded),
            }
        })
    }
}

pub use crate::recorded::RECORDED_TARGET;

/// Run `fut` as part of a run whose warnings go to `progress` (see
/// [`crate::recorded`]).
pub(crate) async fn recording<F: std::future::Future>(
    progress: Option<Arc<Progress>>,
    fut: F,
) -> F::Output {
    let sink = progress.map(|p| Arc::new(move |m: String| p.warn(m)) as crate::recorded::Sink);
    crate::recorded::recording(sink, fut).await
}

/// What a run carries besides its [`crate::MigrationConfig`].
#[derive(Clone, Default)]
pub struct RunContext {
    /// Cancelling it stops every task of the run (they save the token first).
    pub cancel: CancellationToken,
    /// Where progress is published, if anywhere (`--http`, `--json`, the console).
    pub progress: Option<Arc<Progress>>,
    /// Raised by a [`CutoverHandle`].
    pub cutover: Arc<CutoverSignal>,
    /// A database of an online whole-cluster migration: its place at the
    /// cluster's cutover barrier (set by the cluster orchestrator only).
    pub(crate) cluster: Option<Arc<ClusterSeat>>,
}

impl RunContext {
    pub fn new(cancel: CancellationToken) -> Self {
        RunContext {
            cancel,
            ..Default::default()
        }
    }

    /// Log a warning about the run and record it in the progress (its
    /// snapshot and a `warning` event), so a library caller sees it without
    /// a `tracing` subscriber. The log record's target is
    /// [`RECORDED_TARGET`]: the CLI's log-to-events layer skips it.
    pub(crate) fn warn(&self, message: impl Into<String>) {
        let message = message.into();
        tracing::warn!(target: "pg_dbmigrator::recorded", "{message}");
        if let Some(p) = &self.progress {
            p.warn(message);
        }
    }

    /// [`RunContext::warn`] for an error that does not end the run.
    pub(crate) fn error(&self, message: impl Into<String>) {
        let message = message.into();
        tracing::error!(target: "pg_dbmigrator::recorded", "{message}");
        if let Some(p) = &self.progress {
            p.error(message);
        }
    }

    /// Record the run's outcome: a failure is counted and sent as an
    /// `error` event with its exit code.
    pub(crate) fn outcome<T>(&self, r: crate::error::Result<T>) -> crate::error::Result<T> {
        if let (Err(e), Some(p)) = (&r, &self.progress) {
            p.run_failed(e);
        }
        r
    }

    /// The progress handle as the resume token's observer.
    pub fn token_observer(&self) -> Option<Arc<dyn TokenObserver>> {
        self.progress.clone().map(|p| p as Arc<dyn TokenObserver>)
    }
}

impl std::fmt::Debug for RunContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunContext")
            .field("cancelled", &self.cancel.is_cancelled())
            .field("progress", &self.progress.is_some())
            .field("cutover", &self.cutover)
            .finish()
    }
}

/// The one cutover of an online whole-cluster migration: a barrier between
/// the reversible part of every database's cutover (guard, fence, drain,
/// sequences, recopies) and the irreversible part (capture, slot and
/// publication removed). The cluster orchestrator opens a round with
/// [`ClusterCutover::begin`] and asks each database to cut over; each
/// database's attempt takes a [`ClusterTicket`] when it starts and arrives
/// with it exactly once: `ok` after its reversible part, or failed (an
/// error, or the ticket dropped unused). When every member has arrived ok,
/// all proceed; otherwise every attempt fails (each lifts its fence and
/// streams on). Once a round passed, the barrier stays passed (a database
/// whose irreversible part failed retries alone).
pub(crate) struct ClusterCutover {
    state: std::sync::Mutex<BarrierState>,
    resolved: watch::Sender<(u64, Option<std::result::Result<(), String>>)>,
    /// Persists a passed round before any database proceeds.
    on_pass: Box<dyn Fn() -> crate::error::Result<()> + Send + Sync>,
    /// How long an arrived member waits for the others.
    timeout: Duration,
    /// The databases' runs are cancelled: nobody waits any more.
    cancel: CancellationToken,
    /// What passes this barrier, for messages: "cutover" or "rollback".
    what: &'static str,
}

#[derive(Default)]
struct BarrierState {
    round: u64,
    open: bool,
    passed: bool,
    members: Vec<String>,
    arrived: Vec<(String, std::result::Result<(), String>)>,
    first_fence: Option<std::time::Instant>,
    /// The latest end of a member's irreversible part (its write downtime
    /// ended there).
    last_end: Option<std::time::Instant>,
    /// Members whose failed attempt of the latest round is undone (their
    /// fence lifted).
    settled: Vec<String>,
    failed: Option<String>,
}

impl std::fmt::Debug for ClusterCutover {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        f.debug_struct("ClusterCutover")
            .field("round", &s.round)
            .field("open", &s.open)
            .field("passed", &s.passed)
            .finish()
    }
}

impl ClusterCutover {
    /// A barrier; `passed` when an earlier run's round passed already.
    pub(crate) fn new(
        passed: bool,
        cancel: CancellationToken,
        on_pass: Box<dyn Fn() -> crate::error::Result<()> + Send + Sync>,
    ) -> Self {
        ClusterCutover {
            state: std::sync::Mutex::new(BarrierState {
                passed,
                ..Default::default()
            }),
            resolved: watch::Sender::new((0, None)),
            on_pass,
            timeout: Duration::from_secs(360),
            cancel,
            what: "cutover",
        }
    }

    /// The same barrier for the cluster's rollback of a `--fallback`:
    /// between every database's reversible rollback steps (new server
    /// fenced, drained, sequences and recopies back) and its irreversible
    /// ones (reverse slot removed, old source unfenced).
    pub(crate) fn for_rollback(mut self) -> Self {
        self.what = "rollback";
        self
    }

    /// How round `round` ended, once it has.
    pub(crate) fn outcome(&self, round: u64) -> Option<std::result::Result<(), String>> {
        let v = self.resolved.borrow();
        if v.0 == round {
            v.1.clone()
        } else {
            None
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BarrierState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new round for these databases (an unresolved earlier one fails).
    pub(crate) fn begin(&self, members: Vec<String>) -> u64 {
        let mut s = self.lock();
        if s.open {
            let round = s.round;
            self.resolve(
                &mut s,
                round,
                Err("a new cutover round began before this one ended".into()),
            );
        }
        s.round += 1;
        s.open = true;
        s.members = members;
        s.arrived.clear();
        s.first_fence = None;
        s.last_end = None;
        s.settled.clear();
        s.failed = None;
        s.round
    }

    /// Whether every member of the latest round has undone its failed
    /// attempt (see [`ClusterSeat::rollback_settled`]).
    pub(crate) fn all_settled(&self) -> bool {
        let s = self.lock();
        s.members.iter().all(|m| s.settled.contains(m))
    }

    /// From the latest round's first fence to its last member's end.
    pub(crate) fn span(&self) -> Option<Duration> {
        let s = self.lock();
        Some(s.last_end?.saturating_duration_since(s.first_fence?))
    }

    /// The earliest fence of the latest round.
    pub(crate) fn first_fence(&self) -> Option<std::time::Instant> {
        self.lock().first_fence
    }

    /// Fail the open round at once (a member will not arrive).
    pub(crate) fn abort(&self, why: String) {
        let mut s = self.lock();
        let round = s.round;
        self.resolve(&mut s, round, Err(why));
    }

    /// The database whose failure failed the latest round.
    pub(crate) fn failed_database(&self) -> Option<String> {
        self.lock().failed.clone()
    }

    /// Whether a round passed (now or in an earlier run).
    pub(crate) fn passed(&self) -> bool {
        self.lock().passed
    }

    /// Database `name`'s seat at the barrier, for its [`RunContext`].
    #[cfg(test)]
    pub(crate) fn seat(self: &Arc<Self>, name: &str) -> Arc<ClusterSeat> {
        self.seat_with(name, None)
    }

    /// Database `name`'s seat at this barrier and, with `--fallback`, at
    /// the cluster's `rollback` barrier.
    pub(crate) fn seat_with(
        self: &Arc<Self>,
        name: &str,
        rollback: Option<Arc<ClusterCutover>>,
    ) -> Arc<ClusterSeat> {
        Arc::new(ClusterSeat {
            barrier: self.clone(),
            rollback,
            database: name.to_string(),
            online: Default::default(),
        })
    }

    fn resolve(&self, s: &mut BarrierState, round: u64, mut r: std::result::Result<(), String>) {
        if !s.open || s.round != round {
            return;
        }
        if r.is_ok() {
            match (self.on_pass)() {
                Ok(()) => s.passed = true,
                Err(e) => r = Err(format!("recording the cluster's cutover failed: {e}")),
            }
        }
        s.open = false;
        self.resolved.send_replace((round, Some(r)));
    }

    fn arrive(&self, round: Option<u64>, name: &str, r: std::result::Result<(), String>) {
        let mut s = self.lock();
        let Some(round) = round else { return };
        if !s.open || s.round != round || s.arrived.iter().any(|(n, _)| n == name) {
            return;
        }
        s.arrived.push((name.to_string(), r));
        if let Some((n, Err(e))) = s.arrived.iter().find(|(_, r)| r.is_err()) {
            // One failed: nobody proceeds; the others fail at once.
            let msg = format!("the {} of database {n} failed: {e}", self.what);
            s.failed = Some(n.clone());
            self.resolve(&mut s, round, Err(msg));
        } else if s
            .members
            .iter()
            .all(|m| s.arrived.iter().any(|(n, _)| n == m))
        {
            self.resolve(&mut s, round, Ok(()));
        }
    }
}

/// A database's place at the [`ClusterCutover`] barrier, and its latest
/// streaming sample (the cluster publishes their sum).
#[derive(Debug)]
pub(crate) struct ClusterSeat {
    barrier: Arc<ClusterCutover>,
    rollback: Option<Arc<ClusterCutover>>,
    database: String,
    online: std::sync::Mutex<crate::progress::OnlineSnapshot>,
}

impl ClusterSeat {
    /// This database's streaming sample.
    pub(crate) fn set_online(&self, f: impl FnOnce(&mut crate::progress::OnlineSnapshot)) {
        f(&mut self.online.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Its latest streaming sample.
    pub(crate) fn online(&self) -> crate::progress::OnlineSnapshot {
        self.online
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Whether the cluster's cutover passed its barrier (now or in an
    /// earlier run).
    pub(crate) fn passed(&self) -> bool {
        self.barrier.passed()
    }

    /// A cutover attempt of this database begins: it must arrive once.
    pub(crate) fn ticket(&self) -> ClusterTicket {
        self.ticket_at(&self.barrier)
    }

    /// A rollback attempt of this database begins (with `--fallback`).
    pub(crate) fn rollback_ticket(&self) -> Option<ClusterTicket> {
        self.rollback.as_ref().map(|b| self.ticket_at(b))
    }

    /// Whether the cluster's rollback passed its barrier (now or in an
    /// earlier run).
    pub(crate) fn rollback_passed(&self) -> bool {
        self.rollback.as_ref().is_some_and(|b| b.passed())
    }

    /// This database's failed rollback attempt is undone: its new
    /// server's fence is lifted. (The cluster says the rollback failed only
    /// once every database got this far.)
    pub(crate) fn rollback_settled(&self) {
        if let Some(b) = &self.rollback {
            let mut s = b.lock();
            if !s.settled.contains(&self.database) {
                s.settled.push(self.database.clone());
            }
        }
    }

    /// This database's rollback ended (its old source writable again).
    pub(crate) fn rollback_ended(&self, at: std::time::Instant) {
        if let Some(b) = &self.rollback {
            let mut s = b.lock();
            s.last_end = Some(s.last_end.map_or(at, |e| e.max(at)));
        }
    }

    fn ticket_at(&self, barrier: &Arc<ClusterCutover>) -> ClusterTicket {
        let s = barrier.lock();
        let round = (s.open && s.members.contains(&self.database)).then_some(s.round);
        ClusterTicket {
            barrier: barrier.clone(),
            database: self.database.clone(),
            round,
            passed: s.passed,
            arrived: false,
        }
    }
}

/// One cutover attempt's pass through the barrier (see [`ClusterCutover`]).
/// Dropped without arriving, it arrives failed.
pub(crate) struct ClusterTicket {
    barrier: Arc<ClusterCutover>,
    database: String,
    round: Option<u64>,
    passed: bool,
    arrived: bool,
}

impl ClusterTicket {
    /// This database was fenced at `at` (the cluster's downtime starts at
    /// the first).
    pub(crate) fn fenced(&self, now: std::time::Instant) {
        let mut s = self.barrier.lock();
        if s.open && Some(s.round) == self.round {
            s.first_fence = Some(s.first_fence.map_or(now, |f| f.min(now)));
        }
    }

    /// Whether this attempt may go on: part of the cluster's open round,
    /// or after the round passed. (Checked before the fence.)
    pub(crate) fn joinable(&self) -> crate::error::Result<()> {
        if self.passed || self.round.is_some() {
            Ok(())
        } else {
            let what = self.barrier.what;
            Err(MigrationError::Config(format!(
                "in a whole-cluster online migration the {what} is the cluster's: request it through the cluster's work dir (`pg_dbmigrator {what} --dump-path <cluster dir>`){}",
                if what == "cutover" { ", its library handle, or --cutover auto" } else { "" }
            )))
        }
    }

    /// The reversible part is done: wait for every other database's.
    pub(crate) async fn arrive_ok(mut self) -> crate::error::Result<()> {
        self.arrived = true;
        if self.passed {
            return Ok(());
        }
        self.joinable()?;
        let round = self.round.expect("joinable");
        let mut rx = self.barrier.resolved.subscribe();
        self.barrier.arrive(Some(round), &self.database, Ok(()));
        let wait = rx.wait_for(|(r, res)| *r == round && res.is_some());
        let wait = async {
            tokio::select! {
                r = wait => Some(r.map(|v| v.clone())),
                _ = self.barrier.cancel.cancelled() => None,
            }
        };
        let r = match tokio::time::timeout(self.barrier.timeout, wait).await {
            Ok(None) => {
                let mut s = self.barrier.lock();
                self.barrier.resolve(&mut s, round, Err("cancelled".into()));
                return Err(MigrationError::Cancelled);
            }
            Ok(Some(v)) => Ok(v),
            Err(e) => Err(e),
        };
        let r = match r {
            Ok(Ok(v)) => v.1.clone().expect("resolved"),
            Ok(Err(_)) => Err("the cluster's cutover barrier is gone".into()),
            Err(_) => {
                let msg = format!(
                    "not every database reached the {} barrier within {}s",
                    self.barrier.what,
                    self.barrier.timeout.as_secs()
                );
                let mut s = self.barrier.lock();
                self.barrier.resolve(&mut s, round, Err(msg.clone()));
                Err(msg)
            }
        };
        r.map_err(|m| {
            MigrationError::Internal(format!(
                "the cluster's {} did not pass: {m} (database {} lifts its fence and streams on)",
                self.barrier.what, self.database
            ))
        })
    }

    /// The attempt failed before the barrier.
    pub(crate) fn fail(mut self, e: &MigrationError) {
        self.arrived = true;
        self.barrier
            .arrive(self.round, &self.database, Err(e.to_string()));
    }
}

impl Drop for ClusterTicket {
    fn drop(&mut self) {
        if !self.arrived {
            self.barrier.arrive(
                self.round,
                &self.database,
                Err(format!(
                    "its {} attempt ended before the barrier",
                    self.barrier.what
                )),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    fn barrier(passes: Arc<AtomicUsize>) -> Arc<ClusterCutover> {
        Arc::new(ClusterCutover::new(
            false,
            CancellationToken::new(),
            Box::new(move || {
                passes.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }),
        ))
    }

    #[tokio::test]
    async fn every_member_ok_passes_and_stays_passed() {
        let passes = Arc::new(AtomicUsize::new(0));
        let b = barrier(passes.clone());
        let (a, c) = (b.seat("a"), b.seat("c"));
        b.begin(vec!["a".into(), "c".into()]);
        let (ta, tc) = (a.ticket(), c.ticket());
        ta.fenced(std::time::Instant::now());
        let (ra, rc) = tokio::join!(ta.arrive_ok(), tc.arrive_ok());
        assert!(ra.is_ok() && rc.is_ok(), "{ra:?} {rc:?}");
        assert_eq!(passes.load(Ordering::SeqCst), 1);
        assert!(b.passed() && b.first_fence().is_some());
        // A later attempt (a retry after an irreversible step failed) goes through.
        assert!(a.ticket().arrive_ok().await.is_ok());
    }

    #[tokio::test]
    async fn one_failure_fails_every_member_at_once() {
        let passes = Arc::new(AtomicUsize::new(0));
        let b = barrier(passes.clone());
        let (a, c, d) = (b.seat("a"), b.seat("c"), b.seat("d"));
        b.begin(vec!["a".into(), "c".into(), "d".into()]);
        let (ta, tc, td) = (a.ticket(), c.ticket(), d.ticket());
        let waiting = tokio::spawn(ta.arrive_ok());
        tokio::task::yield_now().await;
        tc.fail(&MigrationError::Preflight("refused".into()));
        let ra = waiting.await.unwrap();
        let e = ra.expect_err("a fails with c").to_string();
        assert!(e.contains("database c") && e.contains("refused"), "{e}");
        assert_eq!(b.failed_database().as_deref(), Some("c"));
        // d arrives late, after the round failed: it fails too, at once.
        assert!(td.arrive_ok().await.is_err());
        assert_eq!(passes.load(Ordering::SeqCst), 0);
        assert!(!b.passed());
        // The next round passes.
        b.begin(vec!["a".into(), "c".into(), "d".into()]);
        let (ra, rc, rd) = tokio::join!(
            a.ticket().arrive_ok(),
            c.ticket().arrive_ok(),
            d.ticket().arrive_ok()
        );
        assert!(ra.is_ok() && rc.is_ok() && rd.is_ok());
        assert!(b.passed());
    }

    #[tokio::test]
    async fn a_dropped_ticket_fails_the_round_and_no_round_refuses() {
        let b = barrier(Arc::new(AtomicUsize::new(0)));
        let (a, c) = (b.seat("a"), b.seat("c"));
        // No round open: a database's own attempt is refused before its fence.
        assert!(a.ticket().joinable().is_err());
        b.begin(vec!["a".into(), "c".into()]);
        let ta = a.ticket();
        let waiting = tokio::spawn(ta.arrive_ok());
        tokio::task::yield_now().await;
        drop(c.ticket());
        assert!(waiting.await.unwrap().is_err());
        assert_eq!(b.failed_database().as_deref(), Some("c"));
    }

    #[tokio::test]
    async fn a_cancelled_run_stops_waiting() {
        let cancel = CancellationToken::new();
        let b = Arc::new(ClusterCutover::new(
            false,
            cancel.clone(),
            Box::new(|| Ok(())),
        ));
        let a = b.seat("a");
        b.begin(vec!["a".into(), "c".into()]);
        let waiting = tokio::spawn(a.ticket().arrive_ok());
        tokio::task::yield_now().await;
        cancel.cancel();
        assert!(matches!(
            waiting.await.unwrap(),
            Err(MigrationError::Cancelled)
        ));
    }
}
