//! The streaming session: receive pgoutput from the slot, apply it through
//! the [`Applier`], and tell the source what is safely applied.
//!
//! Three parts. A reader task owns the socket's read half and queues
//! messages in order (bounded). A feedback task sends standby status
//! updates at least every second and at once when the server asks, from
//! shared counters, so a busy or stalled apply path never gets us
//! disconnected. The apply loop (the caller's task) decodes, applies and
//! groups source transactions into target commits.
//!
//! Flush feedback is the end LSN of the newest source transaction whose
//! target commit is on the target's disk; when nothing is in flight, the
//! last keepalive's WAL end (else a quiet publication would pin the source's
//! WAL forever). Streamed (in-progress) transactions are spooled to disk
//! per transaction and applied at their Stream Commit; an aborted
//! subtransaction is cut off the spool.
//!
//! A dropped connection on either side ends the session with a transient
//! error; [`run`] reconnects and resumes from the progress on the target.

use std::collections::HashMap;
use std::io::{BufReader, BufWriter, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::apply::Applier;
use super::pgoutput::{self, Message};
use super::{Lsn, PgTimestamp};
use crate::config::EndpointConfig;
use crate::error::{MigrationError, Result};
use crate::faults::{self, Point};
use crate::pg::connect;
use crate::pg::replication::{ReplicationMessage, ReplicationSession, StandbyStatus};

/// Counters shared by the apply loop, the feedback task and the orchestrator.
#[derive(Debug, Default)]
pub struct StreamShared {
    /// Highest WAL position received.
    pub received: AtomicU64,
    /// End LSN of the last source transaction committed on the target.
    pub committed: AtomicU64,
    /// End LSN of the last source transaction durable on the target.
    pub durable: AtomicU64,
    /// (keepalive WAL end, committed position it needs durable first): the
    /// idle flush position.
    idle: Mutex<(u64, u64)>,
    /// Commit time of the last applied source transaction (PgTimestamp µs).
    pub last_commit_time: AtomicI64,
    pub transactions: AtomicU64,
    pub rows: AtomicU64,
    /// Schema changes captured on the source and replayed on the target.
    pub schema_changes: AtomicU64,
    /// End LSN of the transaction carrying our fence marker (0: not seen).
    pub marker_end: AtomicU64,
    /// Ask the server for keepalives on every update (during cutover).
    pub eager: AtomicBool,
    /// Streaming sessions started (1 + reconnects).
    pub sessions: AtomicU64,
    /// A session is connected and streaming.
    pub streaming: AtomicBool,
    /// Source transactions up to here are applied one statement at a time
    /// (a set-wise apply failed in them).
    pub safe_until: AtomicU64,
    wake: Notify,
}

impl StreamShared {
    /// How far the target is, counting a quiet stream as caught up to the
    /// last keepalive.
    pub fn applied_position(&self) -> Lsn {
        let committed = self.committed.load(Ordering::Acquire);
        let (idle_end, needs) = *self.idle.lock().expect("poisoned");
        Lsn(if committed >= needs {
            committed.max(idle_end)
        } else {
            committed
        })
    }

    /// What may be confirmed to the source as flushed.
    fn flush_position(&self) -> Lsn {
        let durable = self.durable.load(Ordering::Acquire);
        let (idle_end, needs) = *self.idle.lock().expect("poisoned");
        Lsn(if durable >= needs {
            durable.max(idle_end)
        } else {
            durable
        })
    }

    /// Ask for a status update now.
    pub fn wake(&self) {
        self.wake.notify_one();
    }
}

/// What to stream from and where to.
#[derive(Debug, Clone)]
pub struct StreamTarget {
    pub source: EndpointConfig,
    pub target: EndpointConfig,
    pub slot: String,
    pub publication: String,
    pub migration_id: String,
    /// Where streamed transactions are spooled.
    pub spool_dir: PathBuf,
}

/// The end of a drain: wait until `done()` (polled every 20 ms) while the
/// streaming task `h` runs, then stop it (`stop`) and wait for its clean
/// end. If `limit` passes first, the task is handed back still running
/// (`Ok(Some(h))`); if it ends first, its error.
pub async fn drain(
    mut h: tokio::task::JoinHandle<Result<()>>,
    stop: &CancellationToken,
    limit: Duration,
    done: impl Fn() -> bool,
) -> Result<Option<tokio::task::JoinHandle<Result<()>>>> {
    let deadline = Instant::now() + limit;
    while !done() {
        if Instant::now() > deadline {
            return Ok(Some(h));
        }
        tokio::select! {
            r = &mut h => {
                return Err(match r {
                    Ok(Err(e)) => e,
                    _ => MigrationError::Internal("streaming stopped during the drain".into()),
                });
            }
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
    }
    stop.cancel();
    match h.await {
        Ok(Ok(())) => Ok(None),
        Ok(Err(e)) => Err(e),
        Err(e) => Err(MigrationError::Internal(format!(
            "streaming task failed: {e}"
        ))),
    }
}

/// Stream and apply until `stop` fires, reconnecting after dropped
/// connections. Returns Ok after a clean stop (the last durable position
/// has been reported to the source).
pub async fn run(
    t: StreamTarget,
    shared: Arc<StreamShared>,
    stop: CancellationToken,
) -> Result<()> {
    // A link down for minutes: capped, jittered backoff, and a warning
    // when it starts and every half minute, not one per attempt.
    let mut outage = crate::pg::connect::Outage::default();
    loop {
        if stop.is_cancelled() {
            return Ok(());
        }
        shared.sessions.fetch_add(1, Ordering::Relaxed);
        let began = Instant::now();
        let r = session(&t, &shared, &stop).await;
        if began.elapsed() > Duration::from_secs(60) {
            // A session that ran a while: the outage before it is over.
            if let Some((down, attempts)) = outage.recovered() {
                info!(down_for = ?down, attempts, "replication had reconnected");
            }
        }
        shared.streaming.store(false, Ordering::Release);
        match r {
            Ok(()) => return Ok(()),
            Err(e) if is_transient(&e) => {
                if outage
                    .down_for()
                    .is_some_and(|d| d > Duration::from_secs(600))
                {
                    return Err(e);
                }
                let delay = outage.note(&e, "replication interrupted; reconnecting");
                tokio::select! {
                    _ = stop.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(delay) => {}
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// Errors after which reconnecting can help: lost connections, servers
/// shutting down or starting up.
pub fn is_transient(e: &MigrationError) -> bool {
    // 55006: the slot is still held by the walsender of a session that
    // died (it lets go once it notices, at worst after wal_sender_timeout).
    e.is_transient() || e.sqlstate() == Some("55006")
}

/// A spooled streamed transaction.
struct Spool {
    path: PathBuf,
    out: BufWriter<std::fs::File>,
    len: u64,
    /// First offset of each subtransaction, in order of appearance.
    subxacts: Vec<(u32, u64)>,
}

impl Spool {
    fn open(dir: &Path, xid: u32) -> Result<Self> {
        let path = dir.join(format!("stream-{xid}.spool"));
        let f = std::fs::File::create(&path).map_err(|e| {
            MigrationError::io(format!("creating spool file {}", path.display()), e)
        })?;
        Ok(Spool {
            path,
            out: BufWriter::new(f),
            len: 0,
            subxacts: Vec::new(),
        })
    }

    fn append(&mut self, subxid: u32, payload: &[u8]) -> Result<()> {
        if !self.subxacts.iter().any(|(x, _)| *x == subxid) {
            self.subxacts.push((subxid, self.len));
        }
        let io = |e| MigrationError::io(format!("writing spool file {}", self.path.display()), e);
        self.out
            .write_all(&(payload.len() as u32).to_be_bytes())
            .map_err(io)?;
        self.out.write_all(payload).map_err(|e| {
            MigrationError::io(format!("writing spool file {}", self.path.display()), e)
        })?;
        self.len += 4 + payload.len() as u64;
        Ok(())
    }

    /// Cut off a subtransaction and every one started after it.
    fn abort_subxact(&mut self, subxid: u32) -> Result<()> {
        let Some(pos) = self.subxacts.iter().position(|(x, _)| *x == subxid) else {
            return Ok(());
        };
        let offset = self.subxacts[pos].1;
        self.subxacts.truncate(pos);
        let io = |e| MigrationError::io("truncating a spool file", e);
        self.out.flush().map_err(io)?;
        let f = self.out.get_mut();
        f.set_len(offset).map_err(io)?;
        f.seek(std::io::SeekFrom::Start(offset)).map_err(io)?;
        self.len = offset;
        Ok(())
    }

    /// Read the spooled messages back, in order.
    fn finish(mut self) -> Result<(PathBuf, BufReader<std::fs::File>)> {
        let io = |e| MigrationError::io("reading a spool file", e);
        self.out.flush().map_err(io)?;
        let f = std::fs::File::open(&self.path).map_err(io)?;
        Ok((self.path, BufReader::new(f)))
    }
}

fn read_record(r: &mut impl Read) -> Result<Option<Bytes>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(MigrationError::io("reading a spool file", e)),
    }
    let mut buf = vec![0u8; u32::from_be_bytes(len) as usize];
    r.read_exact(&mut buf)
        .map_err(|e| MigrationError::io("reading a spool file", e))?;
    Ok(Some(Bytes::from(buf)))
}

/// Group source transactions into one target commit for at most this long.
const BATCH_TIME: Duration = Duration::from_millis(300);
/// …during the cutover.
const EAGER_BATCH_TIME: Duration = Duration::from_millis(30);
/// …or this many source transactions.
const BATCH_TXNS: u64 = 2000;

/// One connected session: returns Ok on stop, Err on failure.
async fn session(
    t: &StreamTarget,
    shared: &Arc<StreamShared>,
    stop: &CancellationToken,
) -> Result<()> {
    let target = Arc::new(connect::connect(&t.target, "target").await?);
    let mut applier = Applier::new(target.clone(), &t.migration_id).await?;
    applier.set_safe_until(Lsn(shared.safe_until.load(Ordering::Acquire)));
    let start = applier.start_lsn();
    shared.committed.fetch_max(start.0, Ordering::AcqRel);
    shared.durable.fetch_max(start.0, Ordering::AcqRel);

    let repl = ReplicationSession::connect_labeled(&t.source, "source").await?;
    let proto = repl.max_proto_version().min(4);
    let streaming = proto >= 2;
    let stream = repl
        .start_replication(&t.slot, start, &t.publication, proto, streaming)
        .await?;
    info!(slot = %t.slot, start = %start, proto, streaming, "streaming changes from the source");
    shared.streaming.store(true, Ordering::Release);
    let (mut reader, writer) = stream.split();

    let session_stop = stop.child_token();
    let (tx, mut rx) = mpsc::channel::<Result<ReplicationMessage>>(8192);
    let reader_stop = session_stop.clone();
    let reader_shared = shared.clone();
    let reader_task = tokio::spawn(async move {
        loop {
            let m = tokio::select! {
                _ = reader_stop.cancelled() => break,
                m = reader.next_message() => m,
            };
            match m {
                Ok(Some(msg)) => {
                    if let ReplicationMessage::PrimaryKeepalive(k) = &msg {
                        reader_shared
                            .received
                            .fetch_max(k.wal_end.0, Ordering::AcqRel);
                        if k.reply_requested {
                            reader_shared.wake();
                        }
                    } else if let ReplicationMessage::XLogData(x) = &msg {
                        reader_shared
                            .received
                            .fetch_max(x.wal_end.0.max(x.wal_start.0), Ordering::AcqRel);
                    }
                    // Never block on a full queue once the session stops
                    // (the apply loop may have failed and stopped reading).
                    let sent = tokio::select! {
                        _ = reader_stop.cancelled() => false,
                        r = tx.send(Ok(msg)) => r.is_ok(),
                    };
                    if !sent {
                        break;
                    }
                }
                Ok(None) => {
                    let _ = tx
                        .send(Err(MigrationError::Client {
                            context: "reading the replication stream".into(),
                            message: "the source ended the stream".into(),
                        }))
                        .await;
                    break;
                }
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    break;
                }
            }
        }
        reader
    });
    let fb_stop = session_stop.clone();
    let fb_shared = shared.clone();
    let fb_writer = writer.clone();
    let feedback_task = tokio::spawn(async move {
        let mut last_flush = 0u64;
        loop {
            let eager = fb_shared.eager.load(Ordering::Acquire);
            let period = if eager {
                Duration::from_millis(100)
            } else {
                Duration::from_secs(1)
            };
            tokio::select! {
                _ = fb_stop.cancelled() => break,
                _ = fb_shared.wake.notified() => {}
                _ = tokio::time::sleep(period) => {}
            }
            let flush = fb_shared.flush_position().0.max(last_flush);
            last_flush = flush;
            let write = fb_shared.received.load(Ordering::Acquire).max(flush);
            let mut st = StandbyStatus::new(Lsn(write), Lsn(flush));
            st.reply_requested = eager;
            if let Err(e) = fb_writer.send_status(st).await {
                debug!(error = %e, "status update failed");
                break;
            }
        }
    });

    let result = apply_loop(t, shared, &mut applier, &mut rx, stop).await;
    session_stop.cancel();
    drop(rx);
    let _ = feedback_task.await;
    let reader = reader_task.await.ok();
    match &result {
        Ok(()) => {
            // A clean stop: report the final durable position, then end.
            let _ = applier.refresh_durable().await;
            shared
                .durable
                .fetch_max(applier.durable().0, Ordering::AcqRel);
            let flush = shared.flush_position();
            let write = Lsn(shared.received.load(Ordering::Acquire).max(flush.0));
            let _ = writer.send_status(StandbyStatus::new(write, flush)).await;
            if let Some(reader) = reader {
                if let Ok(s) =
                    crate::pg::replication::ReplicationStream::unsplit(reader, writer).await
                {
                    let _ = tokio::time::timeout(Duration::from_secs(5), async {
                        if let Ok(sess) = s.finish().await {
                            let _ = sess.close().await;
                        }
                    })
                    .await;
                }
            }
        }
        Err(e) => {
            let set_wise = applier.batch_used_sets() && matches!(e, MigrationError::Db { .. });
            applier.abort().await;
            if set_wise {
                // A set statement can fail where single statements would
                // not (two rows swapping a unique value): replay this
                // stretch one statement at a time.
                let upto = shared.received.load(Ordering::Acquire);
                shared.safe_until.fetch_max(upto, Ordering::AcqRel);
                warn!(error = %e, until = %Lsn(upto), "a set-wise apply failed; replaying those transactions one statement at a time");
                return Err(MigrationError::Client {
                    context: "applying changes set-wise".into(),
                    message: e.to_string(),
                });
            }
        }
    }
    result
}

async fn apply_loop(
    t: &StreamTarget,
    shared: &Arc<StreamShared>,
    applier: &mut Applier,
    rx: &mut mpsc::Receiver<Result<ReplicationMessage>>,
    stop: &CancellationToken,
) -> Result<()> {
    let mut spools: HashMap<u32, Spool> = HashMap::new();
    let mut in_stream: Option<u32> = None;
    let mut batch_started: Option<Instant> = None;
    let mut last_refresh = Instant::now();
    // The fallback's reverse stream has its own fault point.
    let commit_point = if super::reverse::is_progress_id(&t.migration_id) {
        Point::ReverseApplyCommit
    } else {
        Point::ApplyCommit
    };
    std::fs::create_dir_all(&t.spool_dir)
        .map_err(|e| MigrationError::io(format!("creating {}", t.spool_dir.display()), e))?;
    let result: Result<()> = async {
        loop {
            let msg = tokio::select! {
                biased;
                _ = stop.cancelled() => {
                    if !applier.in_source_txn() {
                        faults::before(commit_point).await;
                        applier.commit_batch().await?;
                        faults::after(commit_point).await;
                        return Ok(());
                    }
                    // Finish the transaction being received first.
                    match rx.recv().await { Some(m) => m, None => return Ok(()) }
                }
                m = rx.recv() => match m { Some(m) => m, None => return Ok(()) },
                _ = tokio::time::sleep(Duration::from_millis(100)), if applier.has_unflushed() || applier.has_open_batch() => {
                    if applier.has_open_batch() && !applier.in_source_txn() {
                        faults::before(commit_point).await;
                        commit(applier, shared).await?;
                        faults::after(commit_point).await;
                        batch_started = None;
                    }
                    refresh(applier, shared).await?;
                    last_refresh = Instant::now();
                    continue;
                }
            }?;
            let x = match msg {
                ReplicationMessage::PrimaryKeepalive(k) => {
                    if !applier.in_source_txn() && !applier.has_open_batch() && in_stream.is_none() {
                        *shared.idle.lock().expect("poisoned") = (k.wal_end.0, applier.committed().0);
                    }
                    continue;
                }
                ReplicationMessage::XLogData(x) => x,
            };
            let m = pgoutput::decode_bytes(x.data.clone(), in_stream.is_some())?;
            if let Some(xid) = in_stream {
                match m {
                    Message::StreamStop => in_stream = None,
                    other => {
                        let sub = change_xid(&other).unwrap_or(xid);
                        spools
                            .get_mut(&xid)
                            .ok_or_else(|| MigrationError::Internal("stream block without spool".into()))?
                            .append(sub, &x.data)?;
                    }
                }
                continue;
            }
            let at_commit = match m {
                Message::StreamStart(s) => {
                    if let std::collections::hash_map::Entry::Vacant(e) = spools.entry(s.xid) {
                        e.insert(Spool::open(&t.spool_dir, s.xid)?);
                    }
                    in_stream = Some(s.xid);
                    false
                }
                Message::StreamAbort(a) => {
                    if a.subxid == a.xid {
                        if let Some(s) = spools.remove(&a.xid) {
                            let _ = std::fs::remove_file(&s.path);
                        }
                    } else if let Some(s) = spools.get_mut(&a.xid) {
                        s.abort_subxact(a.subxid)?;
                    }
                    false
                }
                Message::StreamCommit(c) => {
                    let spool = spools.remove(&c.xid).ok_or_else(|| {
                        MigrationError::Internal(format!("Stream Commit of unknown transaction {}", c.xid))
                    })?;
                    let (path, mut r) = spool.finish()?;
                    applier
                        .apply(Message::Begin(pgoutput::Begin {
                            final_lsn: c.commit_lsn,
                            commit_time: c.commit_time,
                            xid: c.xid,
                        }))
                        .await?;
                    let mut changes = 0u64;
                    while let Some(rec) = read_record(&mut r)? {
                        let m = pgoutput::decode_bytes(rec, true)?;
                        applier.apply(m).await?;
                        changes += 1;
                    }
                    applier
                        .apply(Message::Commit(pgoutput::Commit {
                            flags: 0,
                            commit_lsn: c.commit_lsn,
                            end_lsn: c.end_lsn,
                            commit_time: c.commit_time,
                        }))
                        .await?;
                    let _ = std::fs::remove_file(path);
                    info!(xid = c.xid, messages = changes, commit_lsn = %c.commit_lsn, "applied a large transaction the source streamed while it was in progress");
                    shared.last_commit_time.store(c.commit_time.0, Ordering::Release);
                    true
                }
                Message::Begin(b) => {
                    shared.last_commit_time.store(b.commit_time.0, Ordering::Release);
                    applier.apply(Message::Begin(b)).await?
                }
                other => applier.apply(other).await?,
            };
            if at_commit {
                let eager = shared.eager.load(Ordering::Acquire);
                applier.sync_commit = eager;
                let started = *batch_started.get_or_insert_with(Instant::now);
                let st = applier.stats;
                shared.transactions.store(st.transactions, Ordering::Release);
                // During the cutover, the fence marker's transaction is
                // committed at once (the writes wait for it), and batches
                // are short (keepalives the cutover asks for keep the
                // queue from ever looking empty).
                let marker = applier.marker_end.is_some_and(|m| m.0 > shared.marker_end.load(Ordering::Acquire));
                let batch_time = if eager { EAGER_BATCH_TIME } else { BATCH_TIME };
                if marker
                    || rx.is_empty()
                    || started.elapsed() >= batch_time
                    || applier.pending_txns() >= BATCH_TXNS
                {
                    faults::before(commit_point).await;
                    commit(applier, shared).await?;
                    faults::after(commit_point).await;
                    batch_started = None;
                    if last_refresh.elapsed() >= Duration::from_millis(200) {
                        refresh(applier, shared).await?;
                        last_refresh = Instant::now();
                    }
                }
            }
        }
    }
    .await;
    for (_, s) in spools.drain() {
        let _ = std::fs::remove_file(&s.path);
    }
    result
}

async fn commit(applier: &mut Applier, shared: &StreamShared) -> Result<()> {
    if applier.commit_batch().await? > 0 || applier.committed().0 > 0 {
        shared
            .durable
            .fetch_max(applier.durable().0, Ordering::AcqRel);
        shared
            .committed
            .fetch_max(applier.committed().0, Ordering::AcqRel);
        shared.rows.store(applier.stats.rows, Ordering::Release);
        shared
            .schema_changes
            .store(applier.stats.schema_changes, Ordering::Release);
        shared
            .transactions
            .store(applier.stats.transactions, Ordering::Release);
        if let Some(m) = applier.marker_end {
            shared.marker_end.fetch_max(m.0, Ordering::AcqRel);
        }
    }
    Ok(())
}

async fn refresh(applier: &mut Applier, shared: &StreamShared) -> Result<()> {
    let d = applier.refresh_durable().await?;
    shared.durable.fetch_max(d.0, Ordering::AcqRel);
    Ok(())
}

/// The (sub)transaction id a message inside a stream block carries.
fn change_xid(m: &Message) -> Option<u32> {
    match m {
        Message::Insert(x) => x.xid,
        Message::Update(x) => x.xid,
        Message::Delete(x) => x.xid,
        Message::Truncate(x) => x.xid,
        Message::Relation(x) => x.xid,
        Message::Type(x) => x.xid,
        Message::LogicalMessage(x) => x.xid,
        _ => None,
    }
}

/// Microseconds since the last applied commit's source timestamp.
pub fn seconds_since(ts: i64) -> f64 {
    if ts == 0 {
        return 0.0;
    }
    let now = PgTimestamp::now().0;
    ((now - ts) as f64 / 1e6).max(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spool_cuts_aborted_subtransactions_and_later_ones() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), 7).unwrap();
        s.append(7, b"a").unwrap();
        s.append(8, b"b").unwrap();
        s.append(9, b"c").unwrap();
        s.append(8, b"d").unwrap();
        s.abort_subxact(8).unwrap();
        s.append(7, b"e").unwrap();
        let (_, mut r) = s.finish().unwrap();
        let mut got = Vec::new();
        while let Some(b) = read_record(&mut r).unwrap() {
            got.push(b);
        }
        assert_eq!(
            got,
            vec![Bytes::from_static(b"a"), Bytes::from_static(b"e")]
        );
    }

    fn db(state: &str) -> Box<crate::error::DbErrorInfo> {
        Box::new(crate::error::DbErrorInfo {
            severity: "ERROR".into(),
            sqlstate: state.into(),
            message: "m".into(),
            detail: None,
            hint: None,
        })
    }

    #[test]
    fn reconnect_after_lost_sessions_not_after_refusals() {
        let dberr = |s: &str| MigrationError::Db {
            context: "c".into(),
            info: db(s),
        };
        let connect = |s: &str| MigrationError::Connect {
            endpoint: "source".into(),
            target: "t".into(),
            reason: "r".into(),
            db: Some(db(s)),
        };
        for e in [
            dberr("57P01"),
            dberr("08006"),
            dberr("55006"),
            connect("57P03"),
        ] {
            assert!(is_transient(&e), "{e:?}");
        }
        for e in [
            dberr("23505"),
            dberr("55000"),
            connect("28P01"),
            connect("28000"),
        ] {
            assert!(!is_transient(&e), "{e:?}");
        }
    }

    #[test]
    fn idle_flush_waits_for_durable_commits() {
        let s = StreamShared::default();
        s.durable.store(100, Ordering::Release);
        *s.idle.lock().unwrap() = (500, 200);
        assert_eq!(s.flush_position(), Lsn(100));
        s.durable.store(200, Ordering::Release);
        assert_eq!(s.flush_position(), Lsn(500));
    }
}
