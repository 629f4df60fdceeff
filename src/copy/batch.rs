//! Coalescing a COPY stream's messages into larger buffers.
//!
//! `COPY ... TO STDOUT` sends one CopyData message per row, and
//! tokio-postgres yields each as its own `Bytes`: millions of tiny items for
//! a big table, each costing a poll, a cancellation check and a frame on
//! the way out. COPY data may be cut anywhere between messages (the server
//! reassembles rows), so rows already received are gathered into one buffer
//! of up to [`BATCH_BYTES`] before being passed on. Nothing waits for a
//! batch to fill: whatever is ready is passed on at once.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use futures::Stream;

/// Largest buffer handed on at once.
pub const BATCH_BYTES: usize = 256 * 1024;

pin_project_lite::pin_project! {
    /// See the module documentation.
    pub struct Batched<S> {
        #[pin]
        inner: S,
        buf: BytesMut,
        pending_err: Option<tokio_postgres::Error>,
        done: bool,
    }
}

/// Wrap a COPY OUT stream.
pub fn batched<S>(inner: S) -> Batched<S>
where
    S: Stream<Item = Result<Bytes, tokio_postgres::Error>>,
{
    Batched {
        inner,
        buf: BytesMut::new(),
        pending_err: None,
        done: false,
    }
}

impl<S> Stream for Batched<S>
where
    S: Stream<Item = Result<Bytes, tokio_postgres::Error>>,
{
    type Item = Result<Bytes, tokio_postgres::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut this = self.project();
        if let Some(e) = this.pending_err.take() {
            return Poll::Ready(Some(Err(e)));
        }
        while !*this.done && this.buf.len() < BATCH_BYTES {
            match this.inner.as_mut().poll_next(cx) {
                Poll::Ready(Some(Ok(b))) => {
                    // A big message alone is passed on without a copy.
                    if this.buf.is_empty() && b.len() >= BATCH_BYTES {
                        return Poll::Ready(Some(Ok(b)));
                    }
                    this.buf.extend_from_slice(&b);
                }
                Poll::Ready(Some(Err(e))) => {
                    if this.buf.is_empty() {
                        return Poll::Ready(Some(Err(e)));
                    }
                    // Hand on what came before the error first.
                    *this.pending_err = Some(e);
                    break;
                }
                Poll::Ready(None) => *this.done = true,
                Poll::Pending => break,
            }
        }
        if !this.buf.is_empty() {
            return Poll::Ready(Some(Ok(this.buf.split().freeze())));
        }
        if *this.done {
            Poll::Ready(None)
        } else {
            Poll::Pending
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    #[tokio::test]
    async fn ready_messages_are_joined_in_order_and_nothing_is_lost() {
        let msgs: Vec<Result<Bytes, tokio_postgres::Error>> = (0..10_000)
            .map(|i| Ok(Bytes::from(format!("{i}\n"))))
            .collect();
        let expected: Vec<u8> = (0..10_000)
            .flat_map(|i| format!("{i}\n").into_bytes())
            .collect();
        let out: Vec<Bytes> = batched(futures::stream::iter(msgs))
            .map(|r| r.unwrap())
            .collect()
            .await;
        assert!(out.len() < 10, "{} batches", out.len());
        assert!(out.iter().all(|b| b.len() <= BATCH_BYTES + 16));
        assert_eq!(out.concat(), expected);
    }

    #[tokio::test]
    async fn a_big_message_passes_alone() {
        let big = Bytes::from(vec![7u8; BATCH_BYTES * 2]);
        let out: Vec<Bytes> = batched(futures::stream::iter(vec![
            Ok(big.clone()),
            Ok(Bytes::from_static(b"x")),
        ]))
        .map(|r| r.unwrap())
        .collect()
        .await;
        assert_eq!(out, vec![big, Bytes::from_static(b"x")]);
    }
}
