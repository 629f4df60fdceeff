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
//! A foundation: no SQL, no stage logic.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

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

    fn turn(&self) {
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

/// A socket that counts its session's round trips into a meter.
pub(crate) struct Metered<S> {
    inner: S,
    meter: Option<Arc<Meter>>,
    /// Whether we wrote since the server last sent anything.
    wrote: bool,
}

impl<S> Metered<S> {
    /// `inner`, counting into this task's meter (none: counting nothing).
    pub fn new(inner: S) -> Self {
        Metered {
            inner,
            meter: current(),
            wrote: false,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Metered<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut me.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before && me.wrote {
            me.wrote = false;
            if let Some(m) = &me.meter {
                m.turn();
            }
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Metered<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        let r = Pin::new(&mut me.inner).poll_write(cx, data);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            me.wrote = true;
        }
        r
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        let r = Pin::new(&mut me.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            me.wrote = true;
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn counts_turns_by_stage() {
        let meter = Meter::new();
        let (a, mut b) = tokio::io::duplex(1 << 16);
        scope(meter.clone(), async move {
            let mut a = Metered::new(a);
            let mut buf = [0u8; 64];
            // Two statements sent together, answered in two reads: one turn.
            a.write_all(b"q1").await.unwrap();
            a.write_all(b"q2").await.unwrap();
            b.write_all(b"r1").await.unwrap();
            a.read_exact(&mut buf[..2]).await.unwrap();
            b.write_all(b"r2").await.unwrap();
            a.read_exact(&mut buf[..2]).await.unwrap();
            enter("copy");
            for _ in 0..3 {
                a.write_all(b"q").await.unwrap();
                b.write_all(b"r").await.unwrap();
                a.read_exact(&mut buf[..1]).await.unwrap();
            }
            // The server speaking on its own (a notice): no turn.
            b.write_all(b"n").await.unwrap();
            a.read_exact(&mut buf[..1]).await.unwrap();
        })
        .await;
        assert_eq!(
            meter.by_stage(),
            vec![("preflight".to_string(), 1), ("copy".to_string(), 3)]
        );
        assert_eq!(meter.total(), 4);
    }

    #[tokio::test]
    async fn spawned_tasks_count_into_their_parents_meter() {
        let meter = Meter::new();
        scope(meter.clone(), async {
            enter("verify");
            tokio::spawn(inherit(async {
                assert!(current().is_some());
                let (a, mut b) = tokio::io::duplex(64);
                let mut a = Metered::new(a);
                a.write_all(b"q").await.unwrap();
                b.write_all(b"r").await.unwrap();
                let mut buf = [0u8; 1];
                a.read_exact(&mut buf).await.unwrap();
            }))
            .await
            .unwrap();
        })
        .await;
        assert_eq!(meter.by_stage(), vec![("verify".to_string(), 1)]);
        // Outside any run: nothing to count into, nothing breaks.
        assert!(current().is_none());
    }
}
