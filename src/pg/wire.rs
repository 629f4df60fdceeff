//! The copy's target session, spoken below tokio-postgres's API so that a
//! transaction of several COPYs costs one round trip, not one per table.
//!
//! tokio-postgres hands out a `COPY ... FROM STDIN` sink only once the
//! server's CopyInResponse is back: across a distance, every table costs a
//! round trip on the target however the rest is pipelined. The protocol
//! needs no such wait. With the simple-query protocol a client may write a
//! transaction's `BEGIN`, several COPY statements each followed by its data
//! and CopyDone, and read the outcomes in order beside the writing. When a
//! statement fails, the server discards what is left of that query's copy
//! data (PostgreSQL ignores CopyData and CopyDone outside a COPY) and every
//! later statement fails in the aborted transaction, so the stream stays in
//! step and the transaction is never half done.
//!
//! The session is opened the way a replication session is
//! ([`crate::pg::replication`]: hosts in order, `sslmode`, SCRAM with
//! channel binding), without `replication=database`, its socket counted by
//! the run's round-trip meter. It runs statements without parameters and
//! COPY FROM STDIN, nothing that returns typed values: what reads the
//! catalogs or decides anything stays on tokio-postgres sessions.

use std::io;

use bytes::{BufMut, Bytes, BytesMut};
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use tokio::io::{AsyncWriteExt, ReadHalf, WriteHalf};

use crate::config::EndpointConfig;
use crate::error::{DbErrorInfo, MigrationError, Result};
use crate::pg::replication::{error_info, parse_message, read_frame, BoxIo, ReplicationSession};

/// Buffered bytes are written once there are this many.
const WRITE_AT: usize = 64 * 1024;

/// A plain session on the target for the copy's pipelines.
pub(crate) struct CopySession {
    r: ReadHalf<BoxIo>,
    w: WriteHalf<BoxIo>,
    rbuf: BytesMut,
    out: BytesMut,
    pid: i32,
}

impl std::fmt::Debug for CopySession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CopySession")
            .field("pid", &self.pid)
            .finish()
    }
}

/// What one query message came to: each statement's command tag, and the
/// first error. Rows are not kept: nothing run here returns any worth
/// reading.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    pub tags: Vec<String>,
    pub error: Option<DbErrorInfo>,
}

impl Outcome {
    /// The outcome, or its error as a [`MigrationError::Db`] saying what we
    /// were doing.
    pub fn ok(self, context: impl FnOnce() -> String) -> Result<Outcome> {
        match self.error {
            Some(info) => Err(MigrationError::Db {
                context: context(),
                info: Box::new(info),
            }),
            None => Ok(self),
        }
    }

    /// The rows a COPY loaded, from its `COPY n` tag.
    pub fn copied(&self) -> Option<u64> {
        self.tags
            .iter()
            .rev()
            .find_map(|t| t.strip_prefix("COPY ").and_then(|n| n.parse().ok()))
    }
}

impl CopySession {
    /// Open a session on `ep` (named `label` in errors).
    pub async fn connect(ep: &EndpointConfig, label: &str) -> Result<Self> {
        let (io, rbuf, pid) = ReplicationSession::connect_plain(ep, label)
            .await?
            .into_parts();
        let (r, w) = tokio::io::split(io);
        Ok(CopySession {
            r,
            w,
            rbuf,
            out: BytesMut::with_capacity(WRITE_AT + 1024),
            pid,
        })
    }

    /// The server process of this session.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The writing and the reading halves, to be driven side by side: a
    /// server answering (or raising notices) while we still write must be
    /// read, or both ends wait on full socket buffers.
    pub fn halves(&mut self) -> (Writer<'_>, Reader<'_>) {
        (
            Writer {
                w: &mut self.w,
                out: &mut self.out,
            },
            Reader {
                r: &mut self.r,
                rbuf: &mut self.rbuf,
            },
        )
    }

    /// Send one query message and wait for its outcome; an error in any
    /// of its statements is returned.
    pub async fn run(&mut self, sql: &str, context: impl Fn() -> String) -> Result<Outcome> {
        let mut outcomes = self.run_all(&[sql], &context).await?;
        outcomes.pop().expect("one outcome").ok(context)
    }

    /// Send these query messages together and wait for every outcome,
    /// errors included (each outcome says whether its statements failed).
    pub async fn run_all(
        &mut self,
        sqls: &[&str],
        context: impl Fn() -> String,
    ) -> Result<Vec<Outcome>> {
        let (mut w, mut r) = self.halves();
        for sql in sqls {
            w.query(sql);
        }
        w.flush()
            .await
            .map_err(|e| MigrationError::io(context(), e))?;
        let mut outcomes = Vec::with_capacity(sqls.len());
        for _ in sqls {
            outcomes.push(
                r.outcome()
                    .await
                    .map_err(|e| MigrationError::io(context(), e))?,
            );
        }
        Ok(outcomes)
    }

    /// End the session politely (Terminate), as tokio-postgres does when
    /// a client is dropped; a failure here changes nothing.
    pub async fn close(mut self) {
        let mut buf = BytesMut::new();
        frontend::terminate(&mut buf);
        let _ = self.w.write_all(&buf).await;
        let _ = self.w.flush().await;
    }
}

/// The writing half: messages are buffered and written in large writes.
pub(crate) struct Writer<'a> {
    w: &'a mut WriteHalf<BoxIo>,
    out: &'a mut BytesMut,
}

impl Writer<'_> {
    /// Queue a query message (one or more statements).
    pub fn query(&mut self, sql: &str) {
        frontend::query(sql, self.out).expect("a statement without NUL bytes");
    }

    /// Queue one CopyData message, writing once enough is buffered.
    pub async fn copy_data(&mut self, data: &Bytes) -> io::Result<()> {
        self.out.put_u8(b'd');
        self.out.put_i32(data.len() as i32 + 4);
        self.out.extend_from_slice(data);
        if self.out.len() >= WRITE_AT {
            self.write_out().await?;
        }
        Ok(())
    }

    /// Queue CopyDone: the COPY's data is complete.
    pub fn copy_done(&mut self) {
        frontend::copy_done(self.out);
    }

    /// Whether anything is buffered, not yet written.
    pub fn pending(&self) -> bool {
        !self.out.is_empty()
    }

    async fn write_out(&mut self) -> io::Result<()> {
        self.w.write_all(self.out).await?;
        self.out.clear();
        Ok(())
    }

    /// Write everything buffered and flush the socket.
    pub async fn flush(&mut self) -> io::Result<()> {
        self.write_out().await?;
        self.w.flush().await
    }
}

/// The reading half: one outcome per query message, in the order sent.
pub(crate) struct Reader<'a> {
    r: &'a mut ReadHalf<BoxIo>,
    rbuf: &'a mut BytesMut,
}

impl Reader<'_> {
    /// Read up to the next ReadyForQuery: the outcome of the oldest query
    /// message not yet answered.
    pub async fn outcome(&mut self) -> io::Result<Outcome> {
        let mut o = Outcome::default();
        loop {
            let mut frame = match read_frame(self.r, self.rbuf).await {
                Ok(f) => f,
                // A FATAL error (the server shutting down, the session
                // terminated) is followed by the end of the connection,
                // not by ReadyForQuery: the server's reason is the one to
                // report.
                Err(_) if o.error.is_some() => return Ok(o),
                Err(e) => return Err(e),
            };
            match parse_message(&mut frame)? {
                Message::CommandComplete(body) => o.tags.push(body.tag()?.to_string()),
                // The first error of a query message is its reason; the
                // server sends one, then skips to ReadyForQuery.
                Message::ErrorResponse(body) if o.error.is_none() => {
                    o.error = Some(error_info(body.fields()));
                }
                Message::NoticeResponse(body) => {
                    let info = error_info(body.fields());
                    tracing::debug!(severity = %info.severity, sqlstate = %info.sqlstate, "target: {}", info.message);
                }
                Message::ReadyForQuery(_) => return Ok(o),
                Message::CopyOutResponse(_) | Message::CopyData(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "the target sent COPY data to a session that only loads",
                    ))
                }
                // CopyInResponse (the data is already on its way), rows,
                // EmptyQueryResponse, ParameterStatus, NotificationResponse.
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    fn message(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![tag];
        m.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    fn error(severity: &str, code: &str, text: &str) -> Vec<u8> {
        let mut body = Vec::new();
        for (t, v) in [
            (b'S', severity),
            (b'V', severity),
            (b'C', code),
            (b'M', text),
        ] {
            body.push(t);
            body.extend_from_slice(v.as_bytes());
            body.push(0);
        }
        body.push(0);
        message(b'E', &body)
    }

    async fn outcomes(server_says: Vec<u8>, n: usize) -> Vec<io::Result<Outcome>> {
        let (ours, mut theirs) = tokio::io::duplex(1 << 16);
        theirs.write_all(&server_says).await.unwrap();
        drop(theirs);
        let (mut r, _w) = tokio::io::split(Box::new(ours) as BoxIo);
        let mut rbuf = BytesMut::new();
        let mut reader = Reader {
            r: &mut r,
            rbuf: &mut rbuf,
        };
        let mut out = Vec::new();
        for _ in 0..n {
            out.push(reader.outcome().await);
        }
        out
    }

    #[tokio::test]
    async fn outcomes_come_in_order_with_their_tags_and_errors() {
        let mut said = Vec::new();
        said.extend(message(b'C', b"BEGIN\0"));
        said.extend(message(b'Z', b"T"));
        said.extend(message(b'G', &[0, 0, 0]));
        said.extend(message(b'C', b"COPY 42\0"));
        said.extend(message(b'Z', b"T"));
        said.extend(error("ERROR", "23514", "violates check constraint"));
        said.extend(message(b'Z', b"E"));
        let got = outcomes(said, 3).await;
        let got: Vec<Outcome> = got.into_iter().map(|o| o.unwrap()).collect();
        assert_eq!(got[0].tags, vec!["BEGIN"]);
        assert_eq!(got[1].copied(), Some(42));
        assert_eq!(got[2].error.as_ref().unwrap().sqlstate, "23514");
        assert!(got[2].copied().is_none());
    }

    #[tokio::test]
    async fn a_fatal_error_then_the_end_of_the_connection_keeps_the_servers_reason() {
        let said = error(
            "FATAL",
            "57P01",
            "terminating connection due to administrator command",
        );
        let got = outcomes(said, 1).await.pop().unwrap().unwrap();
        let e = got
            .ok(|| "loading t".to_string())
            .expect_err("the server's error");
        assert_eq!(e.sqlstate(), Some("57P01"));
        assert!(e.is_transient(), "{e}");
        assert!(e.to_string().contains("administrator command"), "{e}");
    }

    #[tokio::test]
    async fn the_end_of_the_connection_alone_is_an_io_error() {
        let got = outcomes(message(b'C', b"COPY 1\0"), 1).await.pop().unwrap();
        assert_eq!(
            got.expect_err("no ReadyForQuery").kind(),
            io::ErrorKind::UnexpectedEof
        );
    }
}
