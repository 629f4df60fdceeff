//! Decoder for the messages of PostgreSQL's `pgoutput` plugin, protocol
//! versions 1 to 4.
//!
//! Each XLogData payload of a logical replication stream holds exactly one
//! message; [`decode`] turns it into a [`Message`]. The decoder is pure (no
//! I/O, no state) because the one piece of context it needs, whether the
//! message sits inside a Stream Start … Stream Stop block, belongs to the
//! consumer that tracks the stream: inside such a block every data message
//! (Relation, Type, Insert, Update, Delete, Truncate, Message) carries the
//! xid of its (sub)transaction right after the type byte, and that xid is
//! what a Stream Abort of a subtransaction refers to, so it is kept.
//!
//! Layouts follow `src/backend/replication/logical/proto.c` and the
//! "Logical Replication Message Formats" chapter of the documentation. The
//! decoder is strict: a message must be consumed to its last byte, so a
//! wrong `in_stream` flag or a format change shows up as an error instead of
//! as silently shifted values.

use std::fmt;

use bytes::{Buf, Bytes};

use crate::error::{MigrationError, Result};
use crate::pg::replication::{Lsn, PgTimestamp};

/// One pgoutput message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Begin(Begin),
    Commit(Commit),
    Origin(Origin),
    Relation(Relation),
    Type(Type),
    Insert(Insert),
    Update(Update),
    Delete(Delete),
    Truncate(Truncate),
    /// A logical decoding message (`pg_logical_emit_message`).
    LogicalMessage(LogicalMessage),
    /// Protocol 2+: the start of a block of a streamed in-progress transaction.
    StreamStart(StreamStart),
    /// Protocol 2+: the end of the current stream block.
    StreamStop,
    /// Protocol 2+: a streamed transaction committed.
    StreamCommit(StreamCommit),
    /// Protocol 2+: a streamed (sub)transaction aborted.
    StreamAbort(StreamAbort),
    /// Protocol 3+ with `two_phase`: the start of a prepared transaction.
    BeginPrepare(BeginPrepare),
    /// Protocol 3+ with `two_phase`: PREPARE TRANSACTION.
    Prepare(Prepare),
    /// Protocol 3+ with `two_phase`: COMMIT PREPARED.
    CommitPrepared(CommitPrepared),
    /// Protocol 3+ with `two_phase`: ROLLBACK PREPARED.
    RollbackPrepared(RollbackPrepared),
    /// Protocol 3+ with `two_phase` and streaming: a streamed transaction was prepared.
    StreamPrepare(Prepare),
}

/// 'B': a transaction starts (sent lazily, before its first published change).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Begin {
    /// The LSN of the commit record; equals [`Commit::commit_lsn`].
    pub final_lsn: Lsn,
    pub commit_time: PgTimestamp,
    pub xid: u32,
}

/// 'C': the transaction begun by the last Begin committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit {
    /// Unused by the server so far (always 0).
    pub flags: u8,
    pub commit_lsn: Lsn,
    /// The end of the commit record: the position to report as flushed once
    /// this transaction is durable on the target, and to resume from.
    pub end_lsn: Lsn,
    pub commit_time: PgTimestamp,
}

/// 'O': the transaction was itself replicated into the source, from this origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The commit LSN on the origin server.
    pub commit_lsn: Lsn,
    pub name: String,
}

/// A table's replica identity (`pg_class.relreplident`): which old values
/// Update and Delete carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicaIdentity {
    /// 'd': the primary key.
    Default,
    /// 'n': nothing; updates and deletes carry no old values.
    Nothing,
    /// 'f': every column.
    Full,
    /// 'i': the columns of a chosen unique index.
    Index,
}

impl ReplicaIdentity {
    fn from_byte(b: u8) -> Option<Self> {
        Some(match b {
            b'd' => ReplicaIdentity::Default,
            b'n' => ReplicaIdentity::Nothing,
            b'f' => ReplicaIdentity::Full,
            b'i' => ReplicaIdentity::Index,
            _ => return None,
        })
    }
}

/// One published column of a [`Relation`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// Bit 1: part of the replica identity key.
    pub flags: u8,
    pub name: String,
    pub type_oid: u32,
    /// `atttypmod`: e.g. the length of varchar(n) or numeric's precision/scale; -1 when none.
    pub type_modifier: i32,
}

impl Column {
    /// Whether the column belongs to the replica identity (every column under FULL).
    pub fn is_key(&self) -> bool {
        self.flags & 1 != 0
    }
}

/// 'R': the shape of a table, sent before its first change in a session and
/// again after anything invalidates the server's cache of it (ALTER TABLE,
/// but also e.g. a new index). Tuples of later changes follow its columns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    /// The (sub)transaction, only inside a stream block.
    pub xid: Option<u32>,
    pub oid: u32,
    /// The schema; empty means `pg_catalog`.
    pub namespace: String,
    pub name: String,
    pub replica_identity: ReplicaIdentity,
    pub columns: Vec<Column>,
}

/// 'Y': a non-builtin type used by a following Relation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Type {
    pub xid: Option<u32>,
    pub oid: u32,
    pub namespace: String,
    pub name: String,
}

/// One column value of a tuple.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// 'n'.
    Null,
    /// 'u': a TOASTed value the change did not modify; it is not sent, and
    /// the target must keep what it has.
    UnchangedToast,
    /// 't': the type's text output, in the session's client_encoding (UTF8).
    Text(Bytes),
    /// 'b': the type's binary send format (only with the `binary` option).
    Binary(Bytes),
}

impl Value {
    /// The value as text, when it is a text value in valid UTF-8.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Value::Text(b) => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }
}

/// Tuple data: one value per column of the Relation, in its order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Tuple(pub Vec<Value>);

/// The old values an Update or Delete carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OldTuple {
    /// 'K': the replica identity key. Still one value per column: non-key
    /// columns are 'n' placeholders, so pick key columns by [`Column::is_key`].
    Key(Tuple),
    /// 'O': the whole old row (REPLICA IDENTITY FULL).
    Full(Tuple),
}

impl OldTuple {
    pub fn tuple(&self) -> &Tuple {
        match self {
            OldTuple::Key(t) | OldTuple::Full(t) => t,
        }
    }
}

/// 'I'.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Insert {
    pub xid: Option<u32>,
    pub relation_oid: u32,
    pub new: Tuple,
}

/// 'U'. `old` is present when the key changed ('K') or under REPLICA
/// IDENTITY FULL ('O'); otherwise the key is in `new`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    pub xid: Option<u32>,
    pub relation_oid: u32,
    pub old: Option<OldTuple>,
    pub new: Tuple,
}

/// 'D'.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delete {
    pub xid: Option<u32>,
    pub relation_oid: u32,
    pub old: OldTuple,
}

/// 'T'.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truncate {
    pub xid: Option<u32>,
    /// Bit 1: CASCADE, bit 2: RESTART IDENTITY.
    pub options: u8,
    pub relation_oids: Vec<u32>,
}

impl Truncate {
    pub fn cascade(&self) -> bool {
        self.options & 1 != 0
    }

    pub fn restart_identity(&self) -> bool {
        self.options & 2 != 0
    }
}

/// 'M'.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogicalMessage {
    pub xid: Option<u32>,
    /// Transactional messages arrive inside their transaction; the others
    /// immediately, outside any Begin/Commit.
    pub transactional: bool,
    pub lsn: Lsn,
    pub prefix: String,
    pub content: Bytes,
}

/// 'S'.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamStart {
    /// The top-level transaction.
    pub xid: u32,
    /// The first block of this transaction (an Origin may follow).
    pub first_segment: bool,
}

/// 'c'.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamCommit {
    pub xid: u32,
    pub flags: u8,
    pub commit_lsn: Lsn,
    pub end_lsn: Lsn,
    pub commit_time: PgTimestamp,
}

/// 'A'. When `subxid == xid` the whole transaction aborted; otherwise only
/// that subtransaction (and those started after it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamAbort {
    pub xid: u32,
    pub subxid: u32,
    /// Only with `streaming 'parallel'` (protocol 4).
    pub abort_lsn: Option<Lsn>,
    /// Only with `streaming 'parallel'` (protocol 4).
    pub abort_time: Option<PgTimestamp>,
}

/// 'b'.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BeginPrepare {
    pub prepare_lsn: Lsn,
    pub end_lsn: Lsn,
    pub prepare_time: PgTimestamp,
    pub xid: u32,
    pub gid: String,
}

/// 'P' and 'p'.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepare {
    pub flags: u8,
    pub prepare_lsn: Lsn,
    pub end_lsn: Lsn,
    pub prepare_time: PgTimestamp,
    pub xid: u32,
    pub gid: String,
}

/// 'K' (as a message type; inside Update/Delete 'K' marks a key tuple).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitPrepared {
    pub flags: u8,
    pub commit_lsn: Lsn,
    pub end_lsn: Lsn,
    pub commit_time: PgTimestamp,
    pub xid: u32,
    pub gid: String,
}

/// 'r'.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RollbackPrepared {
    pub flags: u8,
    pub prepare_end_lsn: Lsn,
    pub rollback_end_lsn: Lsn,
    pub prepare_time: PgTimestamp,
    pub rollback_time: PgTimestamp,
    pub xid: u32,
    pub gid: String,
}

/// Why a payload is not a valid pgoutput message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    /// The message type byte (0 for an empty payload).
    pub kind: u8,
    /// Byte offset in the payload where decoding stopped.
    pub offset: usize,
    pub reason: String,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.kind == 0 {
            write!(f, "{}", self.reason)
        } else {
            write!(
                f,
                "{} message ('{}'): {} at byte {}",
                kind_name(self.kind),
                self.kind.escape_ascii(),
                self.reason,
                self.offset
            )
        }
    }
}

impl std::error::Error for DecodeError {}

#[doc(hidden)]
impl From<DecodeError> for MigrationError {
    fn from(e: DecodeError) -> Self {
        MigrationError::Client {
            context: "decoding a pgoutput message".into(),
            message: e.to_string(),
        }
    }
}

fn kind_name(kind: u8) -> &'static str {
    match kind {
        b'B' => "Begin",
        b'C' => "Commit",
        b'O' => "Origin",
        b'R' => "Relation",
        b'Y' => "Type",
        b'I' => "Insert",
        b'U' => "Update",
        b'D' => "Delete",
        b'T' => "Truncate",
        b'M' => "Message",
        b'S' => "Stream Start",
        b'E' => "Stream Stop",
        b'c' => "Stream Commit",
        b'A' => "Stream Abort",
        b'b' => "Begin Prepare",
        b'P' => "Prepare",
        b'K' => "Commit Prepared",
        b'r' => "Rollback Prepared",
        b'p' => "Stream Prepare",
        _ => "unknown",
    }
}

/// Decode one pgoutput message. `in_stream`: the message arrived between a
/// Stream Start and its Stream Stop, so data messages carry an xid.
pub fn decode(payload: &[u8], in_stream: bool) -> Result<Message> {
    decode_bytes(Bytes::copy_from_slice(payload), in_stream)
}

/// As [`decode`], without copying: text and binary values, and message
/// contents, are slices of `payload` (pass [`XLogData::data`](crate::pg::replication::XLogData)).
pub fn decode_bytes(payload: Bytes, in_stream: bool) -> Result<Message> {
    decode_inner(payload, in_stream).map_err(MigrationError::from)
}

/// [`decode_bytes`] with the precise error type.
pub fn try_decode(payload: Bytes, in_stream: bool) -> std::result::Result<Message, DecodeError> {
    decode_inner(payload, in_stream)
}

fn decode_inner(payload: Bytes, in_stream: bool) -> std::result::Result<Message, DecodeError> {
    let Some(&kind) = payload.first() else {
        return Err(DecodeError {
            kind: 0,
            offset: 0,
            reason: "empty pgoutput message".into(),
        });
    };
    let mut r = Reader {
        total: payload.len(),
        buf: payload,
        kind,
    };
    r.buf.advance(1);
    // Data messages carry the (sub)transaction id inside stream blocks.
    let xid = |r: &mut Reader| -> std::result::Result<Option<u32>, DecodeError> {
        if in_stream {
            r.u32("xid").map(Some)
        } else {
            Ok(None)
        }
    };
    let msg = match kind {
        b'B' => Message::Begin(Begin {
            final_lsn: r.lsn("final LSN")?,
            commit_time: r.ts("commit timestamp")?,
            xid: r.u32("xid")?,
        }),
        b'C' => Message::Commit(Commit {
            flags: r.u8("flags")?,
            commit_lsn: r.lsn("commit LSN")?,
            end_lsn: r.lsn("end LSN")?,
            commit_time: r.ts("commit timestamp")?,
        }),
        b'O' => Message::Origin(Origin {
            commit_lsn: r.lsn("origin commit LSN")?,
            name: r.cstr("origin name")?,
        }),
        b'R' => {
            let xid = xid(&mut r)?;
            let oid = r.u32("relation oid")?;
            let namespace = r.cstr("namespace")?;
            let name = r.cstr("relation name")?;
            let ident = r.u8("replica identity")?;
            let replica_identity = ReplicaIdentity::from_byte(ident)
                .ok_or_else(|| r.err(format!("unknown replica identity {:?}", ident as char)))?;
            let ncols = r.count("column count")?;
            let mut columns = Vec::with_capacity(ncols);
            for _ in 0..ncols {
                columns.push(Column {
                    flags: r.u8("column flags")?,
                    name: r.cstr("column name")?,
                    type_oid: r.u32("column type oid")?,
                    type_modifier: r.i32("column type modifier")?,
                });
            }
            Message::Relation(Relation {
                xid,
                oid,
                namespace,
                name,
                replica_identity,
                columns,
            })
        }
        b'Y' => Message::Type(Type {
            xid: xid(&mut r)?,
            oid: r.u32("type oid")?,
            namespace: r.cstr("namespace")?,
            name: r.cstr("type name")?,
        }),
        b'I' => {
            let xid = xid(&mut r)?;
            let relation_oid = r.u32("relation oid")?;
            r.expect(b'N', "new tuple marker 'N'")?;
            Message::Insert(Insert {
                xid,
                relation_oid,
                new: r.tuple()?,
            })
        }
        b'U' => {
            let xid = xid(&mut r)?;
            let relation_oid = r.u32("relation oid")?;
            let old = match r.u8("tuple marker")? {
                b'K' => {
                    let t = OldTuple::Key(r.tuple()?);
                    r.expect(b'N', "new tuple marker 'N'")?;
                    Some(t)
                }
                b'O' => {
                    let t = OldTuple::Full(r.tuple()?);
                    r.expect(b'N', "new tuple marker 'N'")?;
                    Some(t)
                }
                b'N' => None,
                other => {
                    return Err(r.err(format!(
                        "tuple marker {:?} is none of 'K', 'O', 'N'",
                        other as char
                    )))
                }
            };
            Message::Update(Update {
                xid,
                relation_oid,
                old,
                new: r.tuple()?,
            })
        }
        b'D' => {
            let xid = xid(&mut r)?;
            let relation_oid = r.u32("relation oid")?;
            let old = match r.u8("tuple marker")? {
                b'K' => OldTuple::Key(r.tuple()?),
                b'O' => OldTuple::Full(r.tuple()?),
                other => {
                    return Err(r.err(format!(
                        "tuple marker {:?} is neither 'K' nor 'O'",
                        other as char
                    )))
                }
            };
            Message::Delete(Delete {
                xid,
                relation_oid,
                old,
            })
        }
        b'T' => {
            let xid = xid(&mut r)?;
            let nrels = r.u32("relation count")? as usize;
            let options = r.u8("options")?;
            // Each oid is 4 bytes: check before allocating for a bogus count.
            r.need(nrels.saturating_mul(4), "relation oids")?;
            let mut relation_oids = Vec::with_capacity(nrels);
            for _ in 0..nrels {
                relation_oids.push(r.u32("relation oid")?);
            }
            Message::Truncate(Truncate {
                xid,
                options,
                relation_oids,
            })
        }
        b'M' => {
            let xid = xid(&mut r)?;
            let flags = r.u8("flags")?;
            let lsn = r.lsn("message LSN")?;
            let prefix = r.cstr("prefix")?;
            let len = r.u32("content length")? as usize;
            let content = r.take(len, "content")?;
            Message::LogicalMessage(LogicalMessage {
                xid,
                transactional: flags & 1 != 0,
                lsn,
                prefix,
                content,
            })
        }
        b'S' => Message::StreamStart(StreamStart {
            xid: r.u32("xid")?,
            first_segment: r.u8("first segment flag")? != 0,
        }),
        b'E' => Message::StreamStop,
        b'c' => Message::StreamCommit(StreamCommit {
            xid: r.u32("xid")?,
            flags: r.u8("flags")?,
            commit_lsn: r.lsn("commit LSN")?,
            end_lsn: r.lsn("end LSN")?,
            commit_time: r.ts("commit timestamp")?,
        }),
        b'A' => {
            let xid = r.u32("xid")?;
            let subxid = r.u32("subtransaction xid")?;
            // The server adds the abort position only under streaming
            // 'parallel'. Each payload is exactly one message, so its length
            // tells the two layouts apart without guessing.
            let (abort_lsn, abort_time) = match r.buf.remaining() {
                0 => (None, None),
                16 => (Some(r.lsn("abort LSN")?), Some(r.ts("abort timestamp")?)),
                n => {
                    return Err(r.err(format!(
                        "{n} bytes after the xids; expected 0 or 16 (abort LSN and time)"
                    )))
                }
            };
            Message::StreamAbort(StreamAbort {
                xid,
                subxid,
                abort_lsn,
                abort_time,
            })
        }
        b'b' => Message::BeginPrepare(BeginPrepare {
            prepare_lsn: r.lsn("prepare LSN")?,
            end_lsn: r.lsn("end LSN")?,
            prepare_time: r.ts("prepare timestamp")?,
            xid: r.u32("xid")?,
            gid: r.cstr("gid")?,
        }),
        b'P' | b'p' => {
            let p = Prepare {
                flags: r.u8("flags")?,
                prepare_lsn: r.lsn("prepare LSN")?,
                end_lsn: r.lsn("end LSN")?,
                prepare_time: r.ts("prepare timestamp")?,
                xid: r.u32("xid")?,
                gid: r.cstr("gid")?,
            };
            if kind == b'P' {
                Message::Prepare(p)
            } else {
                Message::StreamPrepare(p)
            }
        }
        b'K' => Message::CommitPrepared(CommitPrepared {
            flags: r.u8("flags")?,
            commit_lsn: r.lsn("commit LSN")?,
            end_lsn: r.lsn("end LSN")?,
            commit_time: r.ts("commit timestamp")?,
            xid: r.u32("xid")?,
            gid: r.cstr("gid")?,
        }),
        b'r' => Message::RollbackPrepared(RollbackPrepared {
            flags: r.u8("flags")?,
            prepare_end_lsn: r.lsn("prepare end LSN")?,
            rollback_end_lsn: r.lsn("rollback end LSN")?,
            prepare_time: r.ts("prepare timestamp")?,
            rollback_time: r.ts("rollback timestamp")?,
            xid: r.u32("xid")?,
            gid: r.cstr("gid")?,
        }),
        _ => {
            return Err(DecodeError {
                kind,
                offset: 0,
                reason: "unknown message type".into(),
            })
        }
    };
    if r.buf.has_remaining() {
        return Err(r.err(format!(
            "{} unexpected trailing byte(s) (is the in_stream flag right?)",
            r.buf.remaining()
        )));
    }
    Ok(msg)
}

/// A bounds-checked cursor over one payload.
struct Reader {
    buf: Bytes,
    total: usize,
    kind: u8,
}

type R<T> = std::result::Result<T, DecodeError>;

impl Reader {
    fn offset(&self) -> usize {
        self.total - self.buf.remaining()
    }

    fn err(&self, reason: impl Into<String>) -> DecodeError {
        DecodeError {
            kind: self.kind,
            offset: self.offset(),
            reason: reason.into(),
        }
    }

    fn need(&self, n: usize, what: &str) -> R<()> {
        if self.buf.remaining() < n {
            return Err(self.err(format!(
                "truncated {what} (needs {n} bytes, {} left)",
                self.buf.remaining()
            )));
        }
        Ok(())
    }

    fn u8(&mut self, what: &str) -> R<u8> {
        self.need(1, what)?;
        Ok(self.buf.get_u8())
    }

    fn u32(&mut self, what: &str) -> R<u32> {
        self.need(4, what)?;
        Ok(self.buf.get_u32())
    }

    fn i32(&mut self, what: &str) -> R<i32> {
        self.need(4, what)?;
        Ok(self.buf.get_i32())
    }

    fn lsn(&mut self, what: &str) -> R<Lsn> {
        self.need(8, what)?;
        Ok(Lsn(self.buf.get_u64()))
    }

    fn ts(&mut self, what: &str) -> R<PgTimestamp> {
        self.need(8, what)?;
        Ok(PgTimestamp(self.buf.get_i64()))
    }

    /// An Int16 count, which the server never sends negative.
    fn count(&mut self, what: &str) -> R<usize> {
        self.need(2, what)?;
        let n = self.buf.get_i16();
        usize::try_from(n).map_err(|_| self.err(format!("negative {what} {n}")))
    }

    fn expect(&mut self, byte: u8, what: &str) -> R<()> {
        let got = self.u8(what)?;
        if got != byte {
            return Err(self.err(format!("expected {what}, got {:?}", got as char)));
        }
        Ok(())
    }

    fn take(&mut self, n: usize, what: &str) -> R<Bytes> {
        self.need(n, what)?;
        Ok(self.buf.split_to(n))
    }

    /// A NUL-terminated string (names are in client_encoding, UTF-8).
    fn cstr(&mut self, what: &str) -> R<String> {
        let Some(end) = self.buf.iter().position(|&b| b == 0) else {
            return Err(self.err(format!("unterminated {what}")));
        };
        let s = std::str::from_utf8(&self.buf[..end])
            .map_err(|_| self.err(format!("{what} is not valid UTF-8")))?
            .to_string();
        self.buf.advance(end + 1);
        Ok(s)
    }

    fn tuple(&mut self) -> R<Tuple> {
        let n = self.count("tuple column count")?;
        // At least one kind byte per column: a bogus count cannot make us allocate.
        self.need(n, "tuple columns")?;
        let mut values = Vec::with_capacity(n);
        for _ in 0..n {
            values.push(match self.u8("column kind")? {
                b'n' => Value::Null,
                b'u' => Value::UnchangedToast,
                b't' => {
                    let len = self.u32("text length")? as usize;
                    Value::Text(self.take(len, "text value")?)
                }
                b'b' => {
                    let len = self.u32("binary length")? as usize;
                    Value::Binary(self.take(len, "binary value")?)
                }
                other => {
                    return Err(self.err(format!(
                        "column kind {:?} is none of 'n', 'u', 't', 'b'",
                        other as char
                    )))
                }
            });
        }
        Ok(Tuple(values))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds payloads the way proto.c writes them.
    struct W(Vec<u8>);

    impl W {
        fn new(kind: u8) -> Self {
            W(vec![kind])
        }
        fn u8(mut self, v: u8) -> Self {
            self.0.push(v);
            self
        }
        fn i16(mut self, v: i16) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn u32(mut self, v: u32) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn i32(mut self, v: i32) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn u64(mut self, v: u64) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn i64(mut self, v: i64) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn s(mut self, v: &str) -> Self {
            self.0.extend_from_slice(v.as_bytes());
            self.0.push(0);
            self
        }
        fn raw(mut self, v: &[u8]) -> Self {
            self.0.extend_from_slice(v);
            self
        }
        /// Tuple data from `(kind, value)` pairs.
        fn tuple(mut self, cols: &[(u8, &[u8])]) -> Self {
            self = self.i16(cols.len() as i16);
            for (kind, v) in cols {
                self = self.u8(*kind);
                if matches!(kind, b't' | b'b') {
                    self = self.u32(v.len() as u32).raw(v);
                }
            }
            self
        }
        fn decode(&self, in_stream: bool) -> Message {
            decode(&self.0, in_stream).unwrap_or_else(|e| panic!("{e}"))
        }
        fn fails(&self, in_stream: bool) -> String {
            try_decode(Bytes::copy_from_slice(&self.0), in_stream)
                .expect_err("should not decode")
                .to_string()
        }
    }

    fn text(s: &str) -> Value {
        Value::Text(Bytes::copy_from_slice(s.as_bytes()))
    }

    #[test]
    fn begin_commit_origin() {
        let b = W::new(b'B').u64(0x1_0000_0010).i64(123).u32(777);
        assert_eq!(
            b.decode(false),
            Message::Begin(Begin {
                final_lsn: Lsn(0x1_0000_0010),
                commit_time: PgTimestamp(123),
                xid: 777
            })
        );
        let c = W::new(b'C').u8(0).u64(0x10).u64(0x48).i64(-5);
        assert_eq!(
            c.decode(false),
            Message::Commit(Commit {
                flags: 0,
                commit_lsn: Lsn(0x10),
                end_lsn: Lsn(0x48),
                commit_time: PgTimestamp(-5)
            })
        );
        let o = W::new(b'O').u64(99).s("pg_16384");
        assert_eq!(
            o.decode(false),
            Message::Origin(Origin {
                commit_lsn: Lsn(99),
                name: "pg_16384".into()
            })
        );
        // Begin and Commit have no xid inside streams either.
        assert!(matches!(b.decode(true), Message::Begin(_)));
    }

    fn relation_payload(kind_xid: Option<u32>) -> W {
        let mut w = W::new(b'R');
        if let Some(x) = kind_xid {
            w = w.u32(x);
        }
        w.u32(16385)
            .s("")
            .s("Items")
            .u8(b'd')
            .i16(3)
            .u8(1)
            .s("id")
            .u32(23)
            .i32(-1)
            .u8(0)
            .s("name")
            .u32(1043)
            .i32(24)
            .u8(0)
            .s("note é")
            .u32(25)
            .i32(-1)
    }

    #[test]
    fn relation() {
        let m = relation_payload(None).decode(false);
        let Message::Relation(r) = m else {
            panic!("{m:?}")
        };
        assert_eq!(r.xid, None);
        assert_eq!(r.oid, 16385);
        assert_eq!(r.namespace, "");
        assert_eq!(r.name, "Items");
        assert_eq!(r.replica_identity, ReplicaIdentity::Default);
        assert_eq!(r.columns.len(), 3);
        assert!(r.columns[0].is_key());
        assert!(!r.columns[1].is_key());
        assert_eq!(r.columns[1].type_oid, 1043);
        assert_eq!(r.columns[1].type_modifier, 24);
        assert_eq!(r.columns[2].name, "note é");

        let Message::Relation(r) = relation_payload(Some(901)).decode(true) else {
            panic!()
        };
        assert_eq!(r.xid, Some(901));
        assert_eq!(r.columns.len(), 3);

        for (b, want) in [
            (b'n', ReplicaIdentity::Nothing),
            (b'f', ReplicaIdentity::Full),
            (b'i', ReplicaIdentity::Index),
        ] {
            let w = W::new(b'R').u32(1).s("s").s("t").u8(b).i16(0);
            let Message::Relation(r) = w.decode(false) else {
                panic!()
            };
            assert_eq!(r.replica_identity, want);
            assert!(r.columns.is_empty());
        }
        let bad = W::new(b'R').u32(1).s("s").s("t").u8(b'x').i16(0);
        assert!(bad.fails(false).contains("replica identity"));
        let neg = W::new(b'R').u32(1).s("s").s("t").u8(b'd').i16(-1);
        assert!(neg.fails(false).contains("negative"));
    }

    #[test]
    fn type_message() {
        let w = W::new(b'Y').u32(16400).s("public").s("mood");
        assert_eq!(
            w.decode(false),
            Message::Type(Type {
                xid: None,
                oid: 16400,
                namespace: "public".into(),
                name: "mood".into()
            })
        );
        let w = W::new(b'Y').u32(5).u32(16400).s("public").s("mood");
        let Message::Type(t) = w.decode(true) else {
            panic!()
        };
        assert_eq!(t.xid, Some(5));
    }

    #[test]
    fn insert_with_every_column_kind() {
        let w = W::new(b'I').u32(16385).u8(b'N').tuple(&[
            (b't', b"42"),
            (b'n', b""),
            (b'u', b""),
            (b'b', b"\x00\x01"),
            (b't', b""),
        ]);
        assert_eq!(
            w.decode(false),
            Message::Insert(Insert {
                xid: None,
                relation_oid: 16385,
                new: Tuple(vec![
                    text("42"),
                    Value::Null,
                    Value::UnchangedToast,
                    Value::Binary(Bytes::from_static(b"\x00\x01")),
                    text(""),
                ])
            })
        );
        let Message::Insert(i) = w.decode(false) else {
            panic!()
        };
        assert_eq!(i.new.0[0].as_text(), Some("42"));
        assert_eq!(i.new.0[1].as_text(), None);

        let s = W::new(b'I')
            .u32(700)
            .u32(16385)
            .u8(b'N')
            .tuple(&[(b't', b"1")]);
        let Message::Insert(i) = s.decode(true) else {
            panic!()
        };
        assert_eq!(i.xid, Some(700));
        assert_eq!(i.relation_oid, 16385);
        // The same bytes outside a stream are misaligned, and say so.
        assert!(s.fails(false).contains("Insert"));
    }

    #[test]
    fn update_variants() {
        let plain = W::new(b'U')
            .u32(1)
            .u8(b'N')
            .tuple(&[(b't', b"1"), (b'u', b"")]);
        assert_eq!(
            plain.decode(false),
            Message::Update(Update {
                xid: None,
                relation_oid: 1,
                old: None,
                new: Tuple(vec![text("1"), Value::UnchangedToast])
            })
        );
        let key = W::new(b'U')
            .u32(1)
            .u8(b'K')
            .tuple(&[(b't', b"1"), (b'n', b"")])
            .u8(b'N')
            .tuple(&[(b't', b"2"), (b't', b"x")]);
        let Message::Update(u) = key.decode(false) else {
            panic!()
        };
        assert_eq!(
            u.old,
            Some(OldTuple::Key(Tuple(vec![text("1"), Value::Null])))
        );
        assert_eq!(u.new, Tuple(vec![text("2"), text("x")]));
        let full = W::new(b'U')
            .u32(9)
            .u32(1)
            .u8(b'O')
            .tuple(&[(b't', b"1"), (b't', b"old")])
            .u8(b'N')
            .tuple(&[(b't', b"1"), (b't', b"new")]);
        let Message::Update(u) = full.decode(true) else {
            panic!()
        };
        assert_eq!(u.xid, Some(9));
        assert_eq!(
            u.old.as_ref().map(|o| o.tuple().clone()),
            Some(Tuple(vec![text("1"), text("old")]))
        );
        assert!(matches!(u.old, Some(OldTuple::Full(_))));

        let no_new = W::new(b'U').u32(1).u8(b'K').tuple(&[(b't', b"1")]);
        assert!(no_new.fails(false).contains("truncated"));
        let wrong = W::new(b'U').u32(1).u8(b'K').tuple(&[(b't', b"1")]).u8(b'X');
        assert!(wrong.fails(false).contains("expected new tuple marker"));
        let bad_marker = W::new(b'U').u32(1).u8(b'Q');
        assert!(bad_marker.fails(false).contains("tuple marker"));
    }

    #[test]
    fn delete_variants() {
        let key = W::new(b'D')
            .u32(1)
            .u8(b'K')
            .tuple(&[(b't', b"7"), (b'n', b"")]);
        assert_eq!(
            key.decode(false),
            Message::Delete(Delete {
                xid: None,
                relation_oid: 1,
                old: OldTuple::Key(Tuple(vec![text("7"), Value::Null]))
            })
        );
        let full = W::new(b'D')
            .u32(3)
            .u32(1)
            .u8(b'O')
            .tuple(&[(b't', b"7"), (b't', b"v")]);
        let Message::Delete(d) = full.decode(true) else {
            panic!()
        };
        assert_eq!(d.xid, Some(3));
        assert_eq!(d.old, OldTuple::Full(Tuple(vec![text("7"), text("v")])));
        let n = W::new(b'D').u32(1).u8(b'N').tuple(&[]);
        assert!(n.fails(false).contains("neither 'K' nor 'O'"));
    }

    #[test]
    fn truncate() {
        let w = W::new(b'T').u32(2).u8(3).u32(16385).u32(16390);
        let Message::Truncate(t) = w.decode(false) else {
            panic!()
        };
        assert_eq!(t.relation_oids, vec![16385, 16390]);
        assert!(t.cascade() && t.restart_identity());
        let w = W::new(b'T').u32(11).u32(1).u8(0).u32(16385);
        assert_eq!(
            w.decode(true),
            Message::Truncate(Truncate {
                xid: Some(11),
                options: 0,
                relation_oids: vec![16385]
            })
        );
        let Message::Truncate(t) = W::new(b'T').u32(1).u8(2).u32(5).decode(false) else {
            panic!()
        };
        assert!(!t.cascade() && t.restart_identity());
        // A huge count with nothing behind it is refused before allocating.
        let bogus = W::new(b'T').u32(u32::MAX).u8(0);
        assert!(bogus.fails(false).contains("truncated relation oids"));
    }

    #[test]
    fn logical_message() {
        let w = W::new(b'M').u8(1).u64(0x20).s("pfx").u32(5).raw(b"hello");
        assert_eq!(
            w.decode(false),
            Message::LogicalMessage(LogicalMessage {
                xid: None,
                transactional: true,
                lsn: Lsn(0x20),
                prefix: "pfx".into(),
                content: Bytes::from_static(b"hello")
            })
        );
        let w = W::new(b'M').u32(44).u8(0).u64(1).s("").u32(0);
        let Message::LogicalMessage(m) = w.decode(true) else {
            panic!()
        };
        assert_eq!(m.xid, Some(44));
        assert!(!m.transactional);
        assert!(m.content.is_empty());
        let short = W::new(b'M').u8(1).u64(1).s("p").u32(10).raw(b"abc");
        assert!(short.fails(false).contains("truncated content"));
    }

    #[test]
    fn stream_messages() {
        assert_eq!(
            W::new(b'S').u32(900).u8(1).decode(false),
            Message::StreamStart(StreamStart {
                xid: 900,
                first_segment: true
            })
        );
        assert_eq!(
            W::new(b'S').u32(900).u8(0).decode(true),
            Message::StreamStart(StreamStart {
                xid: 900,
                first_segment: false
            })
        );
        assert_eq!(W::new(b'E').decode(true), Message::StreamStop);
        assert_eq!(
            W::new(b'c')
                .u32(900)
                .u8(0)
                .u64(0x100)
                .u64(0x130)
                .i64(77)
                .decode(false),
            Message::StreamCommit(StreamCommit {
                xid: 900,
                flags: 0,
                commit_lsn: Lsn(0x100),
                end_lsn: Lsn(0x130),
                commit_time: PgTimestamp(77)
            })
        );
        assert_eq!(
            W::new(b'A').u32(900).u32(901).decode(false),
            Message::StreamAbort(StreamAbort {
                xid: 900,
                subxid: 901,
                abort_lsn: None,
                abort_time: None
            })
        );
        assert_eq!(
            W::new(b'A')
                .u32(900)
                .u32(900)
                .u64(0x200)
                .i64(88)
                .decode(false),
            Message::StreamAbort(StreamAbort {
                xid: 900,
                subxid: 900,
                abort_lsn: Some(Lsn(0x200)),
                abort_time: Some(PgTimestamp(88))
            })
        );
        let odd = W::new(b'A').u32(1).u32(1).u64(5);
        assert!(odd.fails(false).contains("expected 0 or 16"));
        assert!(W::new(b'E').u8(0).fails(false).contains("trailing"));
    }

    #[test]
    fn two_phase_messages() {
        assert_eq!(
            W::new(b'b')
                .u64(1)
                .u64(2)
                .i64(3)
                .u32(4)
                .s("gid-1")
                .decode(false),
            Message::BeginPrepare(BeginPrepare {
                prepare_lsn: Lsn(1),
                end_lsn: Lsn(2),
                prepare_time: PgTimestamp(3),
                xid: 4,
                gid: "gid-1".into()
            })
        );
        let p = Prepare {
            flags: 0,
            prepare_lsn: Lsn(1),
            end_lsn: Lsn(2),
            prepare_time: PgTimestamp(3),
            xid: 4,
            gid: "g".into(),
        };
        for (kind, want) in [
            (b'P', Message::Prepare(p.clone())),
            (b'p', Message::StreamPrepare(p.clone())),
        ] {
            let w = W::new(kind).u8(0).u64(1).u64(2).i64(3).u32(4).s("g");
            assert_eq!(w.decode(false), want);
        }
        assert_eq!(
            W::new(b'K')
                .u8(0)
                .u64(5)
                .u64(6)
                .i64(7)
                .u32(8)
                .s("g")
                .decode(false),
            Message::CommitPrepared(CommitPrepared {
                flags: 0,
                commit_lsn: Lsn(5),
                end_lsn: Lsn(6),
                commit_time: PgTimestamp(7),
                xid: 8,
                gid: "g".into()
            })
        );
        assert_eq!(
            W::new(b'r')
                .u8(0)
                .u64(1)
                .u64(2)
                .i64(3)
                .i64(4)
                .u32(5)
                .s("g")
                .decode(false),
            Message::RollbackPrepared(RollbackPrepared {
                flags: 0,
                prepare_end_lsn: Lsn(1),
                rollback_end_lsn: Lsn(2),
                prepare_time: PgTimestamp(3),
                rollback_time: PgTimestamp(4),
                xid: 5,
                gid: "g".into()
            })
        );
    }

    #[test]
    fn malformed_payloads_are_errors() {
        assert!(decode(b"", false).is_err());
        let e = W::new(b'Z').fails(false);
        assert!(e.contains("unknown message type"), "{e}");
        let e = W::new(b'B').u64(1).fails(false);
        assert!(e.contains("Begin") && e.contains("truncated"), "{e}");
        let e = W::new(b'O').u64(1).raw(b"no-nul").fails(false);
        assert!(e.contains("unterminated origin name"), "{e}");
        let e = W::new(b'O').u64(1).raw(b"\xff\0").fails(false);
        assert!(e.contains("UTF-8"), "{e}");
        let e = W::new(b'I')
            .u32(1)
            .u8(b'N')
            .tuple(&[(b'x', b"")])
            .fails(false);
        assert!(e.contains("column kind 'x'"), "{e}");
        let e = W::new(b'I')
            .u32(1)
            .u8(b'N')
            .i16(1)
            .u8(b't')
            .u32(100)
            .raw(b"ab")
            .fails(false);
        assert!(e.contains("truncated text value"), "{e}");
        let e = W::new(b'I').u32(1).u8(b'N').i16(1000).fails(false);
        assert!(e.contains("truncated tuple columns"), "{e}");
        let e = W::new(b'C').u8(0).u64(1).u64(2).i64(3).u8(9).fails(false);
        assert!(e.contains("1 unexpected trailing byte"), "{e}");
        // The crate error keeps the detail.
        let me = decode(b"Z", false).unwrap_err().to_string();
        assert!(me.contains("decoding a pgoutput message"), "{me}");
    }

    #[test]
    fn decode_bytes_does_not_copy_values() {
        let w = W::new(b'I').u32(1).u8(b'N').tuple(&[(b't', b"abcdef")]);
        let payload = Bytes::from(w.0);
        let Message::Insert(i) = decode_bytes(payload.clone(), false).unwrap() else {
            panic!()
        };
        let Value::Text(v) = &i.new.0[0] else {
            panic!()
        };
        let start = payload.as_ptr() as usize;
        let at = v.as_ptr() as usize;
        assert!(
            at > start && at < start + payload.len(),
            "value is a slice of the payload"
        );
    }
}
