//! The schema load's catalog reads, sent together instead of one by one.
//!
//! The loaders read some 80 catalogs in a fixed order, each read built from
//! the options and the server's major version, not from what an earlier
//! read returned. One after another they cost 80 round trips, 0.8 s across
//! 10 ms and 4 s across 50 ms before the first table moves. So the load
//! runs twice: once against no server ([`Catalog::record`]: every read
//! returns no rows and only its SQL is kept), then for real
//! ([`Catalog::pipelined`]), with each segment's reads sent at once and
//! their answers taken in order as the loaders ask for them.
//!
//! Segments are split at [`Catalog::barrier`]: what comes after one must be
//! sent after the statement before it ran (the `LOCK` that protects the
//! relations from concurrent DDL before `pg_get_*` functions deparse them).
//! A read the record did not foresee (one that depends on an earlier
//! answer) is still correct: the reads in flight are collected into memory
//! to free the connection, and it runs on its own.
//!
//! Every column these reads return must be of a built-in type: a column of
//! another type makes tokio-postgres look the type up with a query of its
//! own, whose answer would queue behind the reads in flight.
//!
//! May not touch: anything but the one session it is given.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;

use futures::TryStreamExt;
use tokio_postgres::{Client, Row, RowStream};

use crate::error::{MigrationError, Result};

type Pending<'c> = Pin<
    Box<dyn Future<Output = std::result::Result<RowStream, tokio_postgres::Error>> + Send + 'c>,
>;

enum Mode {
    /// One read at a time (the loaders' helpers used outside the load).
    Direct,
    /// No server: every read returns nothing and is written down.
    Record,
    /// Reads taken from segments sent ahead.
    Pipelined,
}

/// The loaders' view of the source session.
pub(crate) struct Catalog<'c> {
    client: &'c Client,
    state: tokio::sync::Mutex<State<'c>>,
}

struct State<'c> {
    mode: Mode,
    /// Record: the reads in order, `None` at each barrier.
    recorded: Vec<Option<String>>,
    /// Pipelined: each segment's reads; those sent are emptied.
    segments: Vec<Vec<String>>,
    /// The segment the loaders are in (barriers passed).
    current: usize,
    /// Sent, their answers not taken yet, in the order sent.
    in_flight: VecDeque<(String, Pending<'c>)>,
    /// Answers collected to free the connection for a read not foreseen.
    stash: Vec<(String, std::result::Result<Vec<Row>, tokio_postgres::Error>)>,
    counts: Counts,
}

/// What a load's reads cost: see [`Catalog::counts`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Counts {
    /// Answered from a pipeline.
    pub pipelined: usize,
    /// Run on their own (not foreseen by the record, or no pipeline).
    pub alone: usize,
}

/// Where one read's rows come from.
enum Answer {
    None,
    Stream(RowStream),
    Rows(Vec<Row>),
}

impl<'c> Catalog<'c> {
    fn with(client: &'c Client, mode: Mode, segments: Vec<Vec<String>>) -> Self {
        Catalog {
            client,
            state: tokio::sync::Mutex::new(State {
                mode,
                recorded: Vec::new(),
                segments,
                current: 0,
                in_flight: VecDeque::new(),
                stash: Vec::new(),
                counts: Counts::default(),
            }),
        }
    }

    /// Each read on its own, as it is asked for.
    pub(crate) fn direct(client: &'c Client) -> Self {
        Self::with(client, Mode::Direct, Vec::new())
    }

    /// A dry run that writes the reads down (the client is never used).
    pub(crate) fn record(client: &'c Client) -> Self {
        Self::with(client, Mode::Record, Vec::new())
    }

    /// Reads served from what `record` wrote down, each segment sent whole
    /// at its first read.
    pub(crate) fn pipelined(client: &'c Client, recorded: Catalog<'_>) -> Self {
        let mut segments = vec![Vec::new()];
        for read in recorded.state.into_inner().recorded {
            match read {
                Some(sql) => segments.last_mut().expect("one segment").push(sql),
                None => segments.push(Vec::new()),
            }
        }
        Self::with(client, Mode::Pipelined, segments)
    }

    /// The session, for a statement that is not a read: what is in flight
    /// is collected first, so the statement is not queued behind it.
    pub(crate) async fn session(&self) -> &'c Client {
        self.state.lock().await.drain().await;
        self.client
    }

    /// What follows must be sent after what the loaders ran before this
    /// point: the reads after it wait for it.
    pub(crate) async fn barrier(&self) {
        let mut st = self.state.lock().await;
        match st.mode {
            Mode::Record => st.recorded.push(None),
            Mode::Direct => {}
            Mode::Pipelined => {
                st.drain().await;
                st.current += 1;
            }
        }
    }

    /// Reads served from a pipeline and reads run on their own so far.
    pub(crate) async fn counts(&self) -> Counts {
        self.state.lock().await.counts
    }

    /// Send the current segment's reads (once), each polled once so the
    /// requests go out in order.
    async fn send_current(&self, st: &mut State<'c>) {
        let Some(segment) = st.segments.get_mut(st.current) else {
            return;
        };
        for sql in std::mem::take(segment) {
            let client = self.client;
            let text = sql.clone();
            let mut pending: Pending<'c> = Box::pin(async move { run(client, &text).await });
            // The first poll writes the request; an answer cannot be back
            // yet, but one that is is kept as it is.
            if let std::task::Poll::Ready(done) = futures::poll!(pending.as_mut()) {
                pending = Box::pin(futures::future::ready(done));
            }
            st.in_flight.push_back((sql, pending));
        }
    }

    /// The rows of one read.
    pub(crate) async fn rows(&self, what: &str, sql: &str) -> Result<Vec<Row>> {
        let fail = |e| MigrationError::db(format!("reading {what} from the source catalogs"), e);
        match self.answer(what, sql).await.map_err(fail)? {
            Answer::None => Ok(Vec::new()),
            Answer::Rows(rows) => Ok(rows),
            Answer::Stream(stream) => stream.try_collect().await.map_err(fail),
        }
    }

    /// Each row of one read, handed over as it arrives.
    pub(crate) async fn each(
        &self,
        what: &str,
        sql: &str,
        mut each: impl FnMut(&Row),
    ) -> Result<()> {
        let fail = |e| MigrationError::db(format!("reading {what} from the source catalogs"), e);
        match self.answer(what, sql).await.map_err(fail)? {
            Answer::None => {}
            Answer::Rows(rows) => rows.iter().for_each(each),
            Answer::Stream(stream) => {
                futures::pin_mut!(stream);
                while let Some(r) = stream.try_next().await.map_err(fail)? {
                    each(&r);
                }
            }
        }
        Ok(())
    }

    /// One read's answer: from the pipeline, from the stash, or run now.
    /// The lock is let go before the rows are read: they are the
    /// connection's next messages either way.
    async fn answer(
        &self,
        what: &str,
        sql: &str,
    ) -> std::result::Result<Answer, tokio_postgres::Error> {
        let mut st = self.state.lock().await;
        match st.mode {
            Mode::Record => {
                st.recorded.push(Some(sql.to_string()));
                return Ok(Answer::None);
            }
            Mode::Direct => {}
            Mode::Pipelined => {
                self.send_current(&mut st).await;
                if st.in_flight.front().is_some_and(|(s, _)| s == sql) {
                    let (_, pending) = st.in_flight.pop_front().expect("front");
                    st.counts.pipelined += 1;
                    // Not drained while this one is read: the caller reads
                    // it whole before asking for the next.
                    drop(st);
                    return pending.await.map(Answer::Stream);
                }
                if let Some(i) = st.stash.iter().position(|(s, _)| s == sql) {
                    let (_, rows) = st.stash.swap_remove(i);
                    st.counts.pipelined += 1;
                    return rows.map(Answer::Rows);
                }
                tracing::debug!("schema: reading {what} was not foreseen: run on its own");
                st.drain().await;
            }
        }
        st.counts.alone += 1;
        drop(st);
        run(self.client, sql).await.map(Answer::Stream)
    }
}

/// One catalog read: an unnamed statement parsed, bound and run in one
/// round trip (`query` would prepare it first, then close it).
async fn run(c: &Client, sql: &str) -> std::result::Result<RowStream, tokio_postgres::Error> {
    c.query_typed_raw(
        sql,
        std::iter::empty::<(
            &(dyn tokio_postgres::types::ToSql + Sync),
            tokio_postgres::types::Type,
        )>(),
    )
    .await
}

impl State<'_> {
    /// Take every answer in flight into the stash, so the connection is free
    /// for a statement sent now.
    async fn drain(&mut self) {
        while let Some((sql, pending)) = self.in_flight.pop_front() {
            let rows = match pending.await {
                Ok(stream) => stream.try_collect::<Vec<Row>>().await,
                Err(e) => Err(e),
            };
            self.stash.push((sql, rows));
        }
    }
}
