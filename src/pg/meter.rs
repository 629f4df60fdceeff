//! The socket side of the round-trip meter: a session's socket that
//! counts its turns into the run's meter (`recorded::meter`, where the
//! meter and its task-local live, so that `recorded::carried` takes it
//! into spawned tasks without importing `pg`).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

pub(crate) use crate::recorded::meter::{apart, current, enter, scope, Meter};

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

    /// `inner`, counting into this task's meter only when `count`.
    pub fn new_if(inner: S, count: bool) -> Self {
        let mut m = Self::new(inner);
        if !count {
            m.meter = None;
        }
        m
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
    use crate::recorded::meter::inherit;
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

    #[tokio::test]
    async fn a_session_opened_apart_does_not_count_into_the_run() {
        let meter = Meter::new();
        scope(meter.clone(), async {
            let (a, mut b) = tokio::io::duplex(64);
            // Opened apart (the source-pressure sampler's session), used
            // later in the run's own task.
            let mut a = apart(async { Metered::new(a) }).await;
            a.write_all(b"q").await.unwrap();
            b.write_all(b"r").await.unwrap();
            let mut buf = [0u8; 1];
            a.read_exact(&mut buf).await.unwrap();
        })
        .await;
        assert_eq!(meter.total(), 0);
    }
}
