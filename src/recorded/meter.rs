//! Round trips a run makes to its servers, counted on its own sockets.
//!
//! Across a distance every round trip costs the link's RTT, so a run that
//! waits for an answer per table pays seconds per thousand tables. The
//! count is what tells a regression from a slow link: the report says how
//! many turns each stage took, and a test bounds them.
//!
//! A turn is counted when a session reads the server's first bytes after
//! it wrote (pipelined statements sent together and answered together are
//! one turn, as they cost one RTT). The run installs a [`Meter`] as a task
//! local around its future ([`scope`]); the tasks it spawns take it along
//! ([`inherit`]); every SQL session opened inside counts into it from the
//! stage the run is in when it reads (set by [`enter`], which the resume
//! token's store calls as stages start). Replication streams are not
//! counted: the server pushes there, it does not answer.
//!
//! The meter and its task-local live with the other things a run's tasks
//! carry (`recorded::carried` takes it into spawned tasks); the socket
//! that counts into it is `pg::meter`'s. A leaf: no SQL, nothing of the
//! crate imported.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

/// Stages a run can tell apart; more than any run has.
const MAX_STAGES: usize = 32;

/// The round trips of one run, by stage.
#[derive(Debug)]
pub(crate) struct Meter {
    /// Stage names in the order first entered; index 0 is "preflight".
    names: Mutex<Vec<&'static str>>,
    counts: [AtomicU64; MAX_STAGES],
    current: AtomicUsize,
}

impl Meter {
    pub fn new() -> Arc<Meter> {
        Arc::new(Meter {
            names: Mutex::new(vec!["preflight"]),
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            current: AtomicUsize::new(0),
        })
    }

    /// Count from now on into `stage`.
    pub fn enter(&self, stage: &'static str) {
        let mut names = self.names.lock().unwrap_or_else(|p| p.into_inner());
        let i = match names.iter().position(|n| *n == stage) {
            Some(i) => i,
            None if names.len() < MAX_STAGES => {
                names.push(stage);
                names.len() - 1
            }
            // Never reached with today's stages; the last slot takes the rest.
            None => MAX_STAGES - 1,
        };
        self.current.store(i, Ordering::Relaxed);
    }

    pub(crate) fn turn(&self) {
        self.counts[self.current.load(Ordering::Relaxed)].fetch_add(1, Ordering::Relaxed);
    }

    /// Every stage that made a round trip, in the order first entered.
    pub fn by_stage(&self) -> Vec<(String, u64)> {
        let names = self.names.lock().unwrap_or_else(|p| p.into_inner());
        names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.to_string(), self.counts[i].load(Ordering::Relaxed)))
            .filter(|(_, n)| *n > 0)
            .collect()
    }

    pub fn total(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }
}

tokio::task_local! {
    static METER: Arc<Meter>;
}

/// The meter of the run this task belongs to, if any.
pub(crate) fn current() -> Option<Arc<Meter>> {
    METER.try_with(|m| m.clone()).ok()
}

/// Run `f` counting into `meter`.
pub(crate) fn scope<F: Future>(meter: Arc<Meter>, f: F) -> impl Future<Output = F::Output> {
    METER.scope(meter, f)
}

/// Run `f` outside the run's count: a session opened inside counts into a
/// meter of its own, which nobody reads (`--source-pressure`'s sampler,
/// whose once-a-second reads are not the migration's work).
pub(crate) fn apart<F: Future>(f: F) -> impl Future<Output = F::Output> {
    METER.scope(Meter::new(), f)
}

/// `f`, counting into this task's meter: for a task about to be spawned.
pub(crate) fn inherit<F: Future>(f: F) -> Inherited<F> {
    match current() {
        Some(m) => Inherited::Scoped(Box::pin(METER.scope(m, f))),
        None => Inherited::Plain(Box::pin(f)),
    }
}

/// A future that carries the meter of the task that made it.
pub(crate) enum Inherited<F: Future> {
    Scoped(Pin<Box<tokio::task::futures::TaskLocalFuture<Arc<Meter>, F>>>),
    Plain(Pin<Box<F>>),
}

impl<F: Future> Future for Inherited<F> {
    type Output = F::Output;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // Both variants are boxed, so the enum itself is Unpin.
        match self.get_mut() {
            Inherited::Scoped(f) => f.as_mut().poll(cx),
            Inherited::Plain(f) => f.as_mut().poll(cx),
        }
    }
}

/// Count into this task's meter from now on as `stage`.
pub(crate) fn enter(stage: &'static str) {
    let _ = METER.try_with(|m| m.enter(stage));
}
