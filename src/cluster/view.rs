//! A whole-cluster migration's progress: each database's run publishes
//! into its own [`Progress`] (run side by side, their counters would
//! overwrite each other in one), and a merger task writes their rows and
//! sums into the cluster's progress every [`MERGE_EVERY`], and forwards
//! their events to it (also when a database ends, before the cluster says
//! so, so that its events come before its `database_finished`). The cluster's own publisher (started by
//! [`crate::Migrator::run`]) then sends `progress` events and snapshots of
//! the whole cluster.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::broadcast::{self, error::TryRecvError};
use tokio_util::sync::CancellationToken;

use crate::context::ClusterSeat;
use crate::progress::{DatabaseState, Event, Member, Progress, Snapshot};
use crate::resume::cluster::ClusterToken;

/// How often the databases' progress is merged into the cluster's.
const MERGE_EVERY: Duration = Duration::from_millis(200);

/// One database's place in the view.
struct Slot {
    name: String,
    planned_bytes: u64,
    state: DatabaseState,
    progress: Option<Arc<Progress>>,
    /// Its events not forwarded yet.
    events: Option<broadcast::Receiver<Event>>,
    seat: Option<Arc<ClusterSeat>>,
    /// When its copy began, as first seen.
    copy_started: Option<Instant>,
}

struct Shared {
    parent: Arc<Progress>,
    slots: Mutex<Vec<Slot>>,
    /// When every database's copy had ended (the cluster's rate stops).
    copy_ended: Mutex<Option<Instant>>,
}

/// The cluster run's view of its databases' progress; `None` inside when
/// the run publishes none. Stop it with [`ClusterView::stop`].
pub(crate) struct ClusterView {
    shared: Option<Arc<Shared>>,
    stop: CancellationToken,
    merger: Option<tokio::task::JoinHandle<()>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl ClusterView {
    /// Start merging into `parent` (nothing to do without one), with a row
    /// per database of `token`, in its order (those recorded done count
    /// as done).
    pub(crate) fn start(parent: Option<Arc<Progress>>, token: &ClusterToken) -> ClusterView {
        let stop = CancellationToken::new();
        let Some(parent) = parent else {
            return ClusterView {
                shared: None,
                stop,
                merger: None,
            };
        };
        let slots = token
            .databases
            .iter()
            .map(|d| Slot {
                name: d.name.clone(),
                planned_bytes: d.bytes,
                state: if d.done {
                    DatabaseState::Done
                } else {
                    DatabaseState::Waiting
                },
                progress: None,
                events: None,
                seat: None,
                copy_started: None,
            })
            .collect();
        let shared = Arc::new(Shared {
            parent,
            slots: Mutex::new(slots),
            copy_ended: Mutex::new(None),
        });
        shared.merge();
        let me = shared.clone();
        let token = stop.clone();
        let merger = tokio::spawn(async move {
            let mut tick = tokio::time::interval(MERGE_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = token.cancelled() => break,
                    _ = tick.tick() => me.merge(),
                }
            }
        });
        ClusterView {
            shared: Some(shared),
            stop,
            merger: Some(merger),
        }
    }

    /// Database `i` starts: the progress its run publishes into (`None`
    /// when the cluster's run publishes none), whose events reach the
    /// cluster's. `seat`: online, where its lag samples go.
    pub(crate) fn begin(&self, i: usize, seat: Option<Arc<ClusterSeat>>) -> Option<Arc<Progress>> {
        let shared = self.shared.as_ref()?;
        let child = Progress::new();
        {
            let mut slots = lock(&shared.slots);
            let slot = &mut slots[i];
            slot.state = DatabaseState::Running;
            slot.progress = Some(child.clone());
            slot.events = Some(child.events());
            slot.seat = seat;
            slot.copy_started = None;
        }
        *lock(&shared.copy_ended) = None;
        Some(child)
    }

    /// Database `i` ended (`ok`: completed): its last events are
    /// forwarded now.
    pub(crate) fn end(&self, i: usize, ok: bool) {
        if let Some(shared) = &self.shared {
            lock(&shared.slots)[i].state = if ok {
                DatabaseState::Done
            } else {
                DatabaseState::Failed
            };
            shared.merge();
        }
    }

    /// Stop merging and forwarding, after a last merge of what the
    /// databases published.
    pub(crate) async fn stop(mut self) {
        self.stop.cancel();
        if let Some(t) = self.merger.take() {
            let _ = t.await;
        }
        if let Some(shared) = &self.shared {
            shared.merge();
        }
    }
}

impl Drop for ClusterView {
    fn drop(&mut self) {
        // Not stopped (an early return): the merger ends on its own.
        self.stop.cancel();
    }
}

/// One event of a database's run, as the cluster's: its periodic copy
/// `progress` is replaced by the cluster's own, warnings and errors are
/// counted in the cluster's snapshot too.
fn forward(parent: &Progress, e: Event) {
    match e {
        Event::Progress { .. } | Event::Summary { .. } => {}
        Event::Warning { message } => parent.warn(message),
        e @ Event::Error { .. } => {
            parent.add_error();
            parent.publish(e);
        }
        e => parent.publish(e),
    }
}

impl Shared {
    /// The databases' events forwarded, and their snapshots merged into
    /// the cluster's.
    fn merge(&self) {
        let mut slots = lock(&self.slots);
        for slot in slots.iter_mut() {
            if let Some(events) = &mut slot.events {
                loop {
                    match events.try_recv() {
                        Ok(e) => forward(&self.parent, e),
                        Err(TryRecvError::Lagged(_)) => continue,
                        Err(_) => break,
                    }
                }
            }
        }
        let now = Instant::now();
        let snaps: Vec<Option<Snapshot>> = slots
            .iter()
            .map(|s| s.progress.as_ref().map(|p| p.snapshot()))
            .collect();
        for (slot, snap) in slots.iter_mut().zip(&snaps) {
            if let Some(s) = snap.as_ref().filter(|s| s.copy_seconds > 0.0) {
                // (A frozen copy time gives a later start: keep the first.)
                let at = now
                    .checked_sub(Duration::from_secs_f64(s.copy_seconds))
                    .unwrap_or(now);
                slot.copy_started = Some(slot.copy_started.map_or(at, |c| c.min(at)));
            }
        }
        let lags: Vec<Option<u64>> = slots
            .iter()
            .map(|s| {
                let o = s.seat.as_ref()?.online();
                (!o.applied_lsn.is_empty()).then_some(o.lag_bytes)
            })
            .collect();
        let members: Vec<Member<'_>> = slots
            .iter()
            .zip(&snaps)
            .zip(&lags)
            .map(|((slot, snap), lag)| Member {
                name: &slot.name,
                planned_bytes: slot.planned_bytes,
                state: slot.state,
                snapshot: snap.as_ref(),
                lag_bytes: *lag,
            })
            .collect();
        // Still to copy: a database waiting, or running before its copy
        // stage is recorded done.
        let copying = slots
            .iter()
            .zip(&snaps)
            .any(|(slot, snap)| match slot.state {
                DatabaseState::Waiting => true,
                DatabaseState::Running => !snap.as_ref().is_some_and(copy_over),
                _ => false,
            });
        let started = slots.iter().filter_map(|s| s.copy_started).min();
        let copy_seconds = {
            let mut ended = lock(&self.copy_ended);
            if !copying && started.is_some() {
                ended.get_or_insert(now);
            }
            started.map_or(0.0, |s| {
                ended
                    .unwrap_or(now)
                    .saturating_duration_since(s)
                    .as_secs_f64()
            })
        };
        self.parent.set_merged(&members, copy_seconds);
    }
}

/// A database's copy is over: its copy stage is recorded done.
fn copy_over(s: &Snapshot) -> bool {
    s.stages_done.contains(&crate::resume::Stage::CopyData)
}
