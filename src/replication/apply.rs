//! The applier: replays decoded pgoutput changes on one target session, in
//! source commit order, exactly once.
//!
//! Exactly once: every target transaction ends by moving our progress row
//! (`_pg_dbmigrator.progress`, the end LSN of the last source transaction in
//! it) in the same transaction as the changes, so a crash keeps both or
//! neither. A restart starts from that row and skips any source transaction
//! whose commit lies before it.
//!
//! Speed: one prepared statement per (relation, operation, column set),
//! values passed through as text parameters (the source's output functions
//! wrote them; the target's input functions read them; nothing is decoded
//! here), statements pipelined with a bound on what is in flight, and
//! several source transactions grouped per target commit, cut only at
//! source commit boundaries. The session runs with `synchronous_commit =
//! off`; what may be reported to the source as flushed is tracked against
//! the target's WAL flush position (see [`Applier::durable`]).

use std::collections::{HashMap, VecDeque};
use std::error::Error as StdError;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use tokio_postgres::types::{Format, IsNull, ToSql, Type};
use tokio_postgres::{Client, Statement};
use tracing::debug;

use super::batch::{self, SegKind};
use super::ddl;
use super::pgoutput::{self, OldTuple, ReplicaIdentity, Tuple, Value};
use super::Lsn;
use crate::error::{MigrationError, Result};
use crate::pg::quote;

/// Held-back changes are applied once they reach this size (memory bound,
/// and the size of one set statement).
const MAX_PENDING_BYTES: usize = 16 << 20;
const MAX_PENDING_ROWS: usize = 50_000;
/// Runs of inserts at least this long go as one COPY.
const COPY_MIN_ROWS: usize = 8;
/// Statements in flight before we wait for the oldest one.
const MAX_IN_FLIGHT: usize = 512;
/// Parameter bytes in flight before we wait (bounds memory and server buffers).
const MAX_IN_FLIGHT_BYTES: usize = 8 << 20;

/// Tables created on the source during the run whose changes cannot
/// stream (no replica identity), with why.
pub const UNSTREAMED_DDL: &str =
    "CREATE TABLE IF NOT EXISTS _pg_dbmigrator.unstreamed (name text PRIMARY KEY, reason text NOT NULL)";

/// Schema changes made inside a function, a procedure or a `DO` block
/// that could not be reproduced on the target, by object: the cutover is
/// refused while any is left (a later DROP of the object, or a replay
/// that makes it match, clears its row).
pub const UNREPLAYED_DDL: &str = "CREATE TABLE IF NOT EXISTS _pg_dbmigrator.unreplayed (object text PRIMARY KEY, reason text NOT NULL, commit_lsn text NOT NULL)";

/// What the replay of one nested schema change did: the objects it could
/// not reproduce (with why), those it did, and the statements it ran.
#[derive(Debug, Default)]
struct Outcome {
    failed: Vec<(String, String)>,
    done: Vec<String>,
    applied: Vec<String>,
}

/// The progress table (in our bookkeeping schema, removed at cutover).
pub const PROGRESS_DDL: &str = "CREATE TABLE IF NOT EXISTS _pg_dbmigrator.progress (
    migration_id text PRIMARY KEY,
    end_lsn pg_catalog.pg_lsn NOT NULL,
    commit_time timestamptz,
    applied_at timestamptz NOT NULL DEFAULT pg_catalog.now()
) WITH (fillfactor = 50)";

/// A statement parameter: a pgoutput value handed to the target in text
/// form (its input function parses it), or a text array of such values
/// (binary array format) for the set statements of [`super::batch`].
#[derive(Debug, Clone)]
enum TextParam {
    Text(Option<Bytes>),
    Array(Vec<Option<Bytes>>),
}

impl TextParam {
    /// Bytes it takes on the wire (roughly), to bound what is in flight.
    fn len(&self) -> usize {
        match self {
            TextParam::Text(v) => v.as_ref().map_or(0, |b| b.len()) + 8,
            TextParam::Array(vs) => vs
                .iter()
                .map(|v| v.as_ref().map_or(0, |b| b.len()) + 8)
                .sum(),
        }
    }

    fn into_text(self) -> Option<Bytes> {
        match self {
            TextParam::Text(v) => v,
            TextParam::Array(_) => unreachable!("arrays are built from texts, not the reverse"),
        }
    }
}

impl ToSql for TextParam {
    fn to_sql(
        &self,
        _ty: &Type,
        out: &mut BytesMut,
    ) -> std::result::Result<IsNull, Box<dyn StdError + Sync + Send>> {
        match self {
            TextParam::Text(Some(b)) => {
                out.put_slice(b);
                Ok(IsNull::No)
            }
            TextParam::Text(None) => Ok(IsNull::Yes),
            TextParam::Array(vals) => {
                let dim = postgres_protocol::types::ArrayDimension {
                    len: i32::try_from(vals.len())?,
                    lower_bound: 1,
                };
                postgres_protocol::types::array_to_sql(
                    Some(dim),
                    Type::TEXT.oid(),
                    vals.iter(),
                    |v, buf| match v {
                        Some(b) => {
                            buf.put_slice(b);
                            Ok(postgres_protocol::IsNull::No)
                        }
                        None => Ok(postgres_protocol::IsNull::Yes),
                    },
                    out,
                )?;
                Ok(IsNull::No)
            }
        }
    }

    fn accepts(_ty: &Type) -> bool {
        true
    }

    fn encode_format(&self, _ty: &Type) -> Format {
        match self {
            TextParam::Text(_) => Format::Text,
            TextParam::Array(_) => Format::Binary,
        }
    }

    tokio_postgres::types::to_sql_checked!();
}

/// What we know of a source relation: its target table and columns.
#[derive(Debug, Clone)]
struct RelInfo {
    /// Quoted `schema.table`.
    target: String,
    /// Quoted column names, in the Relation's order.
    columns: Vec<String>,
    key: Vec<bool>,
    identity: ReplicaIdentity,
    /// The target column is GENERATED ALWAYS AS IDENTITY (cannot be SET).
    identity_always: Vec<bool>,
    /// The type has no equality operator (json, point, …): compare as text.
    compare_as_text: Vec<bool>,
    /// The target column's type (`format_type`), for set statements.
    types: Vec<String>,
    /// Changes may be held back and applied set-wise (no trigger fires
    /// on the target under the replica role, not REPLICA IDENTITY FULL).
    set_ok: bool,
    /// Inserts may be held back: no trigger fires on the target under the
    /// replica role (any replica identity).
    set_insert_ok: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum StmtKey {
    Insert(u32, Vec<bool>),
    Copy(u32),
    SetUpdate(u32, Vec<bool>),
    SetDelete(u32),
    /// Relation, columns SET, columns in the WHERE.
    Update(u32, Vec<bool>, Vec<bool>),
    Delete(u32, Vec<bool>),
}

type Pending =
    Pin<Box<dyn Future<Output = (std::result::Result<u64, tokio_postgres::Error>, Ctx)> + Send>>;

/// What a statement was for, to say so when it fails.
#[derive(Debug, Clone)]
struct Ctx {
    what: &'static str,
    relation: String,
    commit_lsn: Lsn,
}

/// Counters for lag and rate reporting.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApplyStats {
    pub transactions: u64,
    pub rows: u64,
    pub target_commits: u64,
    /// Schema changes captured on the source and replayed here.
    pub schema_changes: u64,
}

/// Applies source transactions to the target. Feed it the decoded messages
/// in stream order; call [`Applier::commit_batch`] at a source commit
/// boundary when it is time to commit on the target.
pub struct Applier {
    client: Arc<Client>,
    migration_id: String,
    relations: HashMap<u32, RelInfo>,
    statements: HashMap<StmtKey, Statement>,
    progress_stmt: Statement,
    in_flight: VecDeque<Pending>,
    in_flight_bytes: usize,
    /// A target transaction is open.
    in_target_txn: bool,
    /// The source transaction being applied (its commit LSN), if any.
    source_txn: Option<Lsn>,
    /// Skip the changes of the current source transaction (applied before).
    skipping: bool,
    /// Everything with a commit before this was applied by an earlier run.
    progress: Lsn,
    /// End LSN (and commit time) of the last source transaction in the open batch.
    batch_end: Option<(Lsn, pgoutput::Begin)>,
    batch_txns: u64,
    batch_rows: u64,
    /// (source end LSN, target WAL position after its commit): not yet known durable.
    unflushed: VecDeque<(Lsn, Lsn)>,
    durable: Lsn,
    /// The end LSN of the last source transaction committed on the target.
    committed: Lsn,
    /// Our fence marker's transaction, once its end is known.
    marker_prefix: String,
    marker_seen_in_txn: bool,
    pub marker_end: Option<Lsn>,
    pub stats: ApplyStats,
    /// Commit with `synchronous_commit = on` (during the cutover: the
    /// drain waits for durability, and a flush per commit is cheaper than
    /// waiting for the WAL writer).
    pub sync_commit: bool,
    /// Changes held back for set-wise application (see [`super::batch`]).
    pending: batch::Pending,
    /// Set-wise application is allowed at all.
    set_enabled: bool,
    /// Source transactions committed at or before this are applied one
    /// statement at a time (after a set statement failed there).
    safe_until: Lsn,
    /// The current source transaction is applied set-wise.
    txn_set_mode: bool,
    /// The open target transaction holds set-wise changes: if it fails,
    /// replaying it one statement at a time may succeed.
    batch_used_sets: bool,
    /// The last schema change: its source transaction, its query string,
    /// and the index of the next firing with that string (one query string
    /// of several DDL statements fires the trigger once for each).
    ddl_repeat: Option<(Lsn, String, usize)>,
}

impl Applier {
    /// Set up the apply session: the progress row must exist (see
    /// [`init_progress`]); its value is where this run starts.
    pub async fn new(client: Arc<Client>, migration_id: &str) -> Result<Self> {
        crate::pg::session::setup_target(&client).await?;
        client
            .batch_execute("SET session_replication_role = replica; SET lock_timeout = 0; SET statement_timeout = 0; SET default_transaction_read_only = off")
            .await
            .map_err(|e| MigrationError::db("configuring the apply session (session_replication_role = replica needs superuser, or on PostgreSQL 15+ GRANT SET ON PARAMETER session_replication_role)", e))?;
        let progress = read_progress(&client, migration_id).await?.ok_or_else(|| {
            MigrationError::Internal("the apply progress row is missing on the target".into())
        })?;
        let progress_stmt = client
            .prepare(
                "UPDATE _pg_dbmigrator.progress SET end_lsn = $1::text::pg_catalog.pg_lsn, commit_time = $2::text::timestamptz, applied_at = pg_catalog.now() WHERE migration_id = $3::text",
            )
            .await
            .map_err(|e| MigrationError::db("preparing the progress update", e))?;
        Ok(Applier {
            client,
            migration_id: migration_id.to_string(),
            relations: HashMap::new(),
            statements: HashMap::new(),
            progress_stmt,
            in_flight: VecDeque::new(),
            in_flight_bytes: 0,
            in_target_txn: false,
            source_txn: None,
            skipping: false,
            progress,
            batch_end: None,
            batch_txns: 0,
            batch_rows: 0,
            unflushed: VecDeque::new(),
            durable: progress,
            committed: progress,
            marker_prefix: crate::replication::FENCE_MESSAGE_PREFIX.to_string(),
            marker_seen_in_txn: false,
            marker_end: None,
            stats: ApplyStats::default(),
            sync_commit: false,
            pending: batch::Pending::default(),
            set_enabled: std::env::var("PG_DBMIGRATOR_APPLY").map_or(true, |v| v != "sequential"),
            safe_until: Lsn(0),
            txn_set_mode: false,
            batch_used_sets: false,
            ddl_repeat: None,
        })
    }

    /// Apply the source transactions committed at or before `lsn` one
    /// statement at a time.
    pub fn set_safe_until(&mut self, lsn: Lsn) {
        self.safe_until = lsn;
    }

    /// Whether the open target transaction held set-wise changes (a failure
    /// in it may be a set statement's: replay one statement at a time).
    pub fn batch_used_sets(&self) -> bool {
        self.batch_used_sets
    }

    /// Where this run started: the end of the last source transaction
    /// applied by any earlier run.
    pub fn start_lsn(&self) -> Lsn {
        self.progress
    }

    /// The end LSN of the newest source transaction whose target commit is
    /// known to be on the target's disk: the only value that may be
    /// reported to the source as flushed.
    pub fn durable(&self) -> Lsn {
        self.durable
    }

    /// The end LSN of the last source transaction committed on the target
    /// (durable or not yet).
    pub fn committed(&self) -> Lsn {
        self.committed
    }

    /// Source transactions in the open target transaction.
    pub fn pending_txns(&self) -> u64 {
        self.batch_txns
    }

    /// Inside a source transaction (between Begin and Commit)?
    pub fn in_source_txn(&self) -> bool {
        self.source_txn.is_some()
    }

    /// Is a target transaction open (changes applied but not committed)?
    pub fn has_open_batch(&self) -> bool {
        self.in_target_txn
    }

    /// Whether target commits remain whose durability is not yet known.
    pub fn has_unflushed(&self) -> bool {
        !self.unflushed.is_empty()
    }

    /// Apply one decoded message outside of stream blocks. Returns true at
    /// a source commit (a point where the batch may be committed).
    pub async fn apply(&mut self, msg: pgoutput::Message) -> Result<bool> {
        use pgoutput::Message as M;
        match msg {
            M::Begin(b) => {
                self.begin(b).await?;
                Ok(false)
            }
            M::Commit(c) => {
                self.commit_source(c.commit_lsn, c.end_lsn).await?;
                Ok(true)
            }
            M::Relation(r) => {
                self.relation(r).await?;
                Ok(false)
            }
            M::Insert(i) => {
                self.insert(i.relation_oid, i.new).await?;
                Ok(false)
            }
            M::Update(u) => {
                self.update(u.relation_oid, u.old, u.new).await?;
                Ok(false)
            }
            M::Delete(d) => {
                self.delete(d.relation_oid, d.old).await?;
                Ok(false)
            }
            M::Truncate(t) => {
                self.truncate(&t).await?;
                Ok(false)
            }
            M::LogicalMessage(m) => {
                if m.transactional && m.prefix == self.marker_prefix && !self.skipping {
                    self.marker_seen_in_txn = true;
                }
                if m.transactional && m.prefix == ddl::DDL_MESSAGE_PREFIX && !self.skipping {
                    self.schema_change(&m).await?;
                }
                Ok(false)
            }
            M::Type(_) | M::Origin(_) => Ok(false),
            other => Err(MigrationError::Internal(format!(
                "unexpected pgoutput message outside a stream: {other:?}"
            ))),
        }
    }

    /// A streamed transaction's commit: replay its spooled changes as one
    /// source transaction.
    pub async fn apply_streamed(
        &mut self,
        commit: &pgoutput::StreamCommit,
        changes: Vec<pgoutput::Message>,
    ) -> Result<()> {
        self.begin(pgoutput::Begin {
            final_lsn: commit.commit_lsn,
            commit_time: commit.commit_time,
            xid: commit.xid,
        })
        .await?;
        for m in changes {
            match m {
                pgoutput::Message::Relation(_)
                | pgoutput::Message::Insert(_)
                | pgoutput::Message::Update(_)
                | pgoutput::Message::Delete(_)
                | pgoutput::Message::Truncate(_)
                | pgoutput::Message::LogicalMessage(_)
                | pgoutput::Message::Type(_)
                | pgoutput::Message::Origin(_) => {
                    self.apply(m).await?;
                }
                _ => {}
            }
        }
        self.commit_source(commit.commit_lsn, commit.end_lsn).await
    }

    async fn begin(&mut self, b: pgoutput::Begin) -> Result<()> {
        if self.source_txn.is_some() {
            return Err(MigrationError::Internal(
                "Begin inside an open source transaction".into(),
            ));
        }
        self.source_txn = Some(b.final_lsn);
        self.marker_seen_in_txn = false;
        // Applied by an earlier run (the source may resend after its own crash).
        self.skipping = b.final_lsn < self.progress;
        if self.skipping {
            debug!(commit_lsn = %b.final_lsn, "skipping a transaction applied before");
            return Ok(());
        }
        if !self.in_target_txn {
            self.push("BEGIN", "", b.final_lsn, None, Vec::new())
                .await?;
            self.in_target_txn = true;
        }
        self.txn_set_mode = self.set_enabled && b.final_lsn > self.safe_until;
        self.batch_end = Some((b.final_lsn, b));
        Ok(())
    }

    async fn commit_source(&mut self, commit_lsn: Lsn, end_lsn: Lsn) -> Result<()> {
        let Some(start) = self.source_txn.take() else {
            return Err(MigrationError::Internal(
                "Commit without a source transaction".into(),
            ));
        };
        if start != commit_lsn {
            return Err(MigrationError::Internal(format!(
                "Commit at {commit_lsn} does not match its Begin ({start})"
            )));
        }
        if self.skipping {
            self.skipping = false;
            return Ok(());
        }
        if let Some((_, b)) = self.batch_end.take() {
            self.batch_end = Some((end_lsn, b));
        }
        if self.marker_seen_in_txn {
            self.marker_end = Some(end_lsn);
            self.marker_seen_in_txn = false;
        }
        self.batch_txns += 1;
        self.stats.transactions += 1;
        Ok(())
    }

    /// Commit the open target transaction (at a source commit boundary):
    /// the progress row moves in it. Returns the number of source
    /// transactions it held.
    pub async fn commit_batch(&mut self) -> Result<u64> {
        if !self.in_target_txn {
            return Ok(0);
        }
        if self.source_txn.is_some() {
            return Err(MigrationError::Internal(
                "target commit requested inside a source transaction".into(),
            ));
        }
        self.flush_pending().await?;
        let Some((end, begin)) = self.batch_end.take() else {
            return Err(MigrationError::Internal("empty batch".into()));
        };
        let commit_time =
            chrono::DateTime::<chrono::Utc>::from(begin.commit_time.to_system_time()).to_rfc3339();
        let params = vec![
            TextParam::Text(Some(Bytes::from(end.to_string()))),
            TextParam::Text(Some(Bytes::from(commit_time))),
            TextParam::Text(Some(Bytes::from(self.migration_id.clone()))),
        ];
        let stmt = self.progress_stmt.clone();
        self.push_stmt(stmt, params, "recording progress", "", begin.final_lsn)
            .await?;
        self.drain(0).await?;
        let sql = if self.sync_commit {
            "SET LOCAL synchronous_commit = on; COMMIT; SELECT pg_catalog.pg_current_wal_insert_lsn()::text"
        } else {
            "COMMIT; SELECT pg_catalog.pg_current_wal_insert_lsn()::text"
        };
        let rows = self.client.simple_query(sql).await.map_err(|e| {
            MigrationError::db(format!("committing applied changes up to {end}"), e)
        })?;
        self.in_target_txn = false;
        let local = rows
            .iter()
            .find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).and_then(|s| s.parse().ok()),
                _ => None,
            })
            .unwrap_or(Lsn(u64::MAX));
        if self.sync_commit {
            // On disk once COMMIT returned; so is every earlier commit.
            self.unflushed.clear();
            self.durable = self.durable.max(end);
        } else {
            self.unflushed.push_back((end, local));
        }
        self.committed = end;
        self.progress = end;
        let n = self.batch_txns;
        self.stats.rows += self.batch_rows;
        self.stats.target_commits += 1;
        self.batch_txns = 0;
        self.batch_rows = 0;
        self.batch_used_sets = false;
        Ok(n)
    }

    /// Ask the target how far its WAL is on disk and release the target
    /// commits below it: their source end LSNs become durable.
    pub async fn refresh_durable(&mut self) -> Result<Lsn> {
        if self.unflushed.is_empty() {
            return Ok(self.durable);
        }
        let row = crate::pg::query_one_once(
            &self.client,
            "SELECT pg_catalog.pg_current_wal_flush_lsn()::text",
        )
        .await
        .map_err(|e| MigrationError::db("reading the target's WAL flush position", e))?;
        let flushed: Lsn = row
            .get::<_, String>(0)
            .parse()
            .map_err(|_| MigrationError::Internal("bad pg_lsn from the target".into()))?;
        while let Some(&(end, local)) = self.unflushed.front() {
            if local > flushed {
                break;
            }
            self.durable = self.durable.max(end);
            self.unflushed.pop_front();
        }
        Ok(self.durable)
    }

    async fn relation(&mut self, r: pgoutput::Relation) -> Result<()> {
        let schema = if r.namespace.is_empty() {
            "pg_catalog".to_string()
        } else {
            r.namespace.clone()
        };
        let target = quote::qualified(&schema, &r.name);
        let names: Vec<String> = r.columns.iter().map(|c| c.name.clone()).collect();
        // An error of a pipelined statement must surface as itself, not as
        // "current transaction is aborted" on this lookup.
        self.drain(0).await?;
        // The target's view of the columns: identity kind, equality, type;
        // and whether triggers fire there under the replica role.
        let rows = self
            .client
            .query(
                "SELECT u.n,
                        a.attidentity::text = 'a',
                        NOT EXISTS (SELECT 1 FROM pg_catalog.pg_operator o
                                     WHERE o.oprname = '=' AND o.oprleft = a.atttypid AND o.oprright = a.atttypid)
                        AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_type t WHERE t.oid = a.atttypid AND (t.typelem <> 0 AND t.typlen = -1 OR t.typtype IN ('e', 'd', 'r', 'm'))),
                        pg_catalog.format_type(a.atttypid, a.atttypmod),
                        EXISTS (SELECT 1 FROM pg_catalog.pg_trigger g
                                 WHERE g.tgrelid = pg_catalog.to_regclass($1) AND g.tgenabled IN ('A', 'R'))
                   FROM pg_catalog.unnest($2::text[]) WITH ORDINALITY AS u(n, ord)
                   LEFT JOIN pg_catalog.pg_attribute a
                          ON a.attrelid = pg_catalog.to_regclass($1) AND a.attname = u.n AND NOT a.attisdropped
                  ORDER BY u.ord",
                &[&target, &names],
            )
            .await
            .map_err(|e| MigrationError::db(format!("looking up {target} on the target"), e))?;
        let mut identity_always = Vec::new();
        let mut compare_as_text = Vec::new();
        let mut types = Vec::new();
        let mut replica_triggers = false;
        let mut missing = Vec::new();
        for (row, name) in rows.iter().zip(&names) {
            match row.get::<_, Option<bool>>(1) {
                Some(a) => {
                    identity_always.push(a);
                    compare_as_text.push(row.get::<_, Option<bool>>(2).unwrap_or(false));
                    types.push(row.get::<_, Option<String>>(3).unwrap_or_default());
                    replica_triggers |= row.get::<_, Option<bool>>(4).unwrap_or(false);
                }
                None => missing.push(name.clone()),
            }
        }
        if !missing.is_empty() {
            return Err(MigrationError::target_not_ready(format!(
                "table {target} on the target lacks column(s) {} that the source publishes (the schema changed during the migration?)",
                missing.join(", ")
            )));
        }
        let info = RelInfo {
            target,
            columns: names.iter().map(|n| quote::ident(n)).collect(),
            key: r.columns.iter().map(|c| c.is_key()).collect(),
            identity: r.replica_identity,
            identity_always,
            compare_as_text,
            types,
            set_ok: r.replica_identity != ReplicaIdentity::Full && !replica_triggers,
            set_insert_ok: !replica_triggers,
        };
        let changed = self.relations.get(&r.oid).is_none_or(|old| {
            old.target != info.target
                || old.columns != info.columns
                || old.key != info.key
                || old.identity != info.identity
                || old.types != info.types
        });
        if changed && self.pending.has(r.oid) {
            // Held-back changes were decoded against the old shape.
            self.flush_table(r.oid).await?;
        }
        if changed {
            self.statements.retain(|k, _| match k {
                StmtKey::Insert(o, _)
                | StmtKey::Update(o, _, _)
                | StmtKey::Delete(o, _)
                | StmtKey::Copy(o)
                | StmtKey::SetUpdate(o, _)
                | StmtKey::SetDelete(o) => *o != r.oid,
            });
        }
        self.relations.insert(r.oid, info);
        Ok(())
    }

    /// A schema change captured on the source: replayed here, at its place
    /// in the stream, as the role and with the search_path it ran under.
    /// Everything before it is applied first; the changes after it arrive
    /// with a fresh Relation message (pgoutput sends one after DDL).
    async fn schema_change(&mut self, m: &pgoutput::LogicalMessage) -> Result<()> {
        let txn = self.source_txn.unwrap_or(m.lsn);
        let msg = ddl::DdlMessage::parse(&m.content)?;
        // The k-th firing with the same query string in one transaction is
        // its k-th DDL statement.
        let index = match &self.ddl_repeat {
            Some((t, text, next)) if *t == txn && *text == msg.sql => *next,
            _ => 0,
        };
        // Temporary objects only: nothing to replay, nothing to stop for.
        // The firing counts as a statement of the query string only when
        // it is one (not when REFRESH ... CONCURRENTLY or a function ran it).
        if msg.temporary {
            if !msg.nested && ddl::temporary_takes_statement(&msg, index) {
                self.ddl_repeat = Some((txn, msg.sql.clone(), index + 1));
            }
            return Ok(());
        }
        // Run inside a function: replayed by its effect, and it takes no
        // statement of the query string.
        if msg.nested {
            return self.replay_effects(&msg, txn).await;
        }
        self.ddl_repeat = Some((txn, msg.sql.clone(), index + 1));
        let replay = ddl::replay_plan(&msg, index).map_err(|why| {
            MigrationError::Unsupported(format!(
                "{why} (source transaction committed at {txn}). The migration stops here, before the target drifts: \
                 make such changes with plain DDL statements, or run `pg_dbmigrator cleanup` and migrate again after the change"
            ))
        })?;
        if replay.is_empty() {
            return Ok(());
        }
        self.flush_pending().await?;
        self.drain(0).await?;
        let mut sql = format!(
            "SELECT pg_catalog.set_config('search_path', {}, true);
             SELECT pg_catalog.set_config('role', r.rolname, true) FROM pg_catalog.pg_roles r
              WHERE r.rolname = {} AND pg_catalog.pg_has_role(current_user, r.oid, 'MEMBER');
             {};
             RESET ROLE; RESET search_path;",
            quote::literal(&msg.search_path),
            quote::literal(&msg.role),
            replay
        );
        sql.push_str(&stream_bookkeeping(&msg));
        // A DROP takes the same objects here as on the source (CASCADE).
        let still: Vec<String> = msg
            .dropped
            .iter()
            .filter_map(|d| {
                d.exists_sql().map(|e| {
                    format!(
                        "SELECT {} WHERE {e}",
                        quote::literal(&format!("{} {}", d.kind, d.identity))
                    )
                })
            })
            .collect();
        let check = (!still.is_empty()).then(|| still.join(" UNION ALL "));
        let one_line: String = replay.split_whitespace().collect::<Vec<_>>().join(" ");
        self.client.batch_execute(&sql).await.map_err(|e| {
            MigrationError::db(
                format!(
                    "replaying the source's schema change `{}` (as role {}, source transaction committed at {txn}) on the target",
                    one_line.chars().take(300).collect::<String>(),
                    msg.role
                ),
                e,
            )
        })?;
        if let Some(check) = check {
            let left: Vec<String> = self
                .client
                .query_typed(&check, &[])
                .await
                .map_err(|e| {
                    MigrationError::db("checking what the replayed DROP removed on the target", e)
                })?
                .iter()
                .map(|r| r.get(0))
                .collect();
            if !left.is_empty() {
                return Err(MigrationError::Unsupported(format!(
                    "the source's `{}` (source transaction committed at {txn}) dropped {} there, but not on the target: \
                     the two schemas differ; the migration stops before the target drifts",
                    one_line.chars().take(300).collect::<String>(),
                    left.join(", ")
                )));
            }
        }
        self.stats.schema_changes += 1;
        tracing::info!(statement = %one_line.chars().take(200).collect::<String>(), role = %msg.role, commit_lsn = %txn, "schema change replayed on the target");
        Ok(())
    }

    /// A schema change made inside a function, a procedure or a `DO`
    /// block: what it dropped is dropped, and each object it touched is
    /// taken from its state here to its state on the source right after
    /// the command (see [`ddl::effect`]). Where that fails (a kind not
    /// described, a rename) and the command was a PL/pgSQL statement,
    /// that statement's own text (nothing else of the function) is
    /// replayed instead, and kept only if every object it touched then
    /// matches its description. What cannot be reproduced is recorded
    /// (`_pg_dbmigrator.unreplayed`, in this transaction) and logged;
    /// streaming goes on and the cutover is refused while it is left.
    async fn replay_effects(&mut self, msg: &ddl::DdlMessage, txn: Lsn) -> Result<()> {
        self.flush_pending().await?;
        self.drain(0).await?;
        // What the capture wrote is qualified against pg_catalog alone.
        self.client
            .batch_execute(
                "SELECT pg_catalog.set_config('search_path', 'pg_catalog', true); SAVEPOINT pg_dbmigrator_nested",
            )
            .await
            .map_err(|e| MigrationError::db("preparing the replay of a schema change", e))?;
        let mut out = self.effects_pass(msg).await?;
        let mut by_text = false;
        let statement = msg.context.as_deref().and_then(ddl::nested_statement);
        if let (false, None, Some(stmt)) = (out.failed.is_empty(), &msg.capture_error, statement) {
            self.savepoint_back().await?;
            match self.text_pass(msg, stmt).await? {
                Ok(text) => {
                    out = text;
                    by_text = true;
                }
                Err(why) => {
                    tracing::debug!(reason = %why, "the statement's text did not reproduce it either");
                    self.savepoint_back().await?;
                    out = self.effects_pass(msg).await?;
                }
            }
        }
        let Outcome {
            failed,
            done,
            applied,
        } = out;
        let mut sql = String::from("RELEASE SAVEPOINT pg_dbmigrator_nested; RESET search_path;");
        sql.push_str(&stream_bookkeeping(msg));
        if !(failed.is_empty() && done.is_empty()) {
            sql.push_str(UNREPLAYED_DDL);
            sql.push(';');
        }
        for k in &done {
            if !failed.iter().any(|(f, _)| f == k) {
                sql.push_str(&format!(
                    "DELETE FROM _pg_dbmigrator.unreplayed WHERE object = {};",
                    quote::literal(k)
                ));
            }
        }
        for (k, why) in &failed {
            sql.push_str(&format!(
                "INSERT INTO _pg_dbmigrator.unreplayed (object, reason, commit_lsn) VALUES ({}, {}, {}) \
                 ON CONFLICT (object) DO UPDATE SET reason = EXCLUDED.reason, commit_lsn = EXCLUDED.commit_lsn;",
                quote::literal(k),
                quote::literal(why),
                quote::literal(&txn.to_string())
            ));
        }
        self.client.batch_execute(&sql).await.map_err(|e| {
            MigrationError::db("recording the replay of a schema change on the target", e)
        })?;
        let query = ddl::short(&msg.sql);
        for (k, why) in &failed {
            crate::recorded::warn_recorded!(
                "a schema change made inside a function, procedure or DO block cannot be reproduced on the target \
                 ({k}: {why}; statement {query}, commit {txn}): streaming goes on, and the cutover will be refused naming it");
        }
        if !applied.is_empty() {
            self.stats.schema_changes += 1;
            let one_line = applied.join("; ");
            let how = if by_text {
                "by the statement's own text: it ran inside a function, procedure or DO block"
            } else {
                "by its effect: it ran inside a function, procedure or DO block"
            };
            tracing::info!(statement = %one_line.chars().take(300).collect::<String>(), query = %query, commit_lsn = %txn,
                "schema change replayed on the target ({how})");
        }
        Ok(())
    }

    /// Back to before the nested change's replay (its savepoint kept).
    async fn savepoint_back(&mut self) -> Result<()> {
        self.client
            .batch_execute("ROLLBACK TO SAVEPOINT pg_dbmigrator_nested; SELECT pg_catalog.set_config('search_path', 'pg_catalog', true)")
            .await
            .map_err(|e| MigrationError::db("undoing the replay of a schema change on the target", e))
    }

    /// The drops and effects of a nested change, each in its own savepoint.
    async fn effects_pass(&mut self, msg: &ddl::DdlMessage) -> Result<Outcome> {
        let mut out = Outcome::default();
        if let Some(e) = &msg.capture_error {
            out.failed.push((
                format!("({})", msg.tags.join(", ")),
                format!("capturing it failed on the source: {e}"),
            ));
        }
        for d in &msg.dropped {
            let key = format!("{} {}", d.kind, d.identity);
            match ddl::effect::drop_sql(d) {
                None => out
                    .failed
                    .push((key, format!("a dropped {} is not dropped by name", d.kind))),
                Some(sql) => match self.try_effect(std::slice::from_ref(&sql)).await? {
                    Ok(()) => {
                        out.applied.push(sql);
                        out.done.push(key);
                    }
                    Err(why) => out.failed.push((key, why)),
                },
            }
        }
        for e in &msg.effects {
            match self.replay_effect(e, &mut out.applied).await? {
                Ok(()) => out.done.push(e.key()),
                Err(why) => out.failed.push((e.key(), why)),
            }
        }
        Ok(out)
    }

    /// The PL/pgSQL statement's own text, as the role and with the
    /// search_path it ran under; then every object the capture described
    /// must match it here, and every object the source dropped be gone.
    /// `Ok(Err(why))`: it did not reproduce the change (left for the
    /// caller to undo).
    async fn text_pass(
        &mut self,
        msg: &ddl::DdlMessage,
        stmt: String,
    ) -> Result<std::result::Result<Outcome, String>> {
        let sql = format!(
            "SELECT pg_catalog.set_config('search_path', {}, true);
             SELECT pg_catalog.set_config('role', r.rolname, true) FROM pg_catalog.pg_roles r
              WHERE r.rolname = {} AND pg_catalog.pg_has_role(current_user, r.oid, 'MEMBER');
             {stmt};
             RESET ROLE; SELECT pg_catalog.set_config('search_path', 'pg_catalog', true)",
            quote::literal(&msg.search_path),
            quote::literal(&msg.role),
        );
        if let Err(why) = self.try_effect(std::slice::from_ref(&sql)).await? {
            return Ok(Err(why));
        }
        let mut out = Outcome {
            applied: vec![stmt],
            ..Outcome::default()
        };
        for d in &msg.dropped {
            if let Some(exists) = d.exists_sql() {
                let left: bool =
                    crate::pg::query_one_once(&self.client, &format!("SELECT {exists}"))
                        .await
                        .map_err(|e| {
                            MigrationError::db("checking a replayed DROP on the target", e)
                        })?
                        .get(0);
                if left {
                    return Ok(Err(format!("{} {} is still there", d.kind, d.identity)));
                }
            }
            out.done.push(format!("{} {}", d.kind, d.identity));
        }
        for e in &msg.effects {
            if !matches!(e, ddl::effect::Effect::Other { .. }) {
                let differ = self.differences(e, &[]).await?;
                if !differ.is_empty() {
                    return Ok(Err(format!(
                        "{} differs in: {}",
                        e.name().unwrap_or_default(),
                        differ.join(", ")
                    )));
                }
            }
            out.done.push(e.key());
        }
        Ok(Ok(out))
    }

    /// The fields in which the target's object differs from the source's
    /// description (`unchecked` left out); the whole object when absent.
    async fn differences(
        &mut self,
        e: &ddl::effect::Effect,
        unchecked: &[&str],
    ) -> Result<Vec<String>> {
        let want = serde_json::to_value(e.untagged()).unwrap_or_default();
        let have = match Self::describe_target(&self.client, e).await? {
            Some(d) => serde_json::to_value(d).unwrap_or_default(),
            None => serde_json::Value::Null,
        };
        Ok(match (&want, &have) {
            (serde_json::Value::Object(w), serde_json::Value::Object(h)) => w
                .iter()
                .filter(|(k, v)| !unchecked.contains(&k.as_str()) && h.get(*k) != Some(*v))
                .map(|(k, _)| k.clone())
                .collect(),
            _ => vec!["the whole object".into()],
        })
    }

    /// One object's effect: the plan against the target's object, run in
    /// a savepoint, then the target's object described again and compared
    /// (what the plan does not cover shows there). `Ok(Err(why))`: not
    /// reproduced.
    async fn replay_effect(
        &mut self,
        e: &ddl::effect::Effect,
        applied: &mut Vec<String>,
    ) -> Result<std::result::Result<(), String>> {
        use ddl::effect::{self, Effect};
        let dst = Self::describe_target(&self.client, e).await?;
        let plan = match (e, &dst) {
            (Effect::Table(s), d) => effect::table_plan(
                s,
                match d {
                    Some(Effect::Table(t)) => Some(t),
                    _ => None,
                },
            ),
            (Effect::Index(s), d) => effect::index_plan(
                s,
                match d {
                    Some(Effect::Index(t)) => Some(t),
                    _ => None,
                },
            ),
            // An identity column's sequence is made with its column.
            (Effect::Sequence(s), _) if s.identity => return Ok(Ok(())),
            (Effect::Sequence(s), d) => {
                let owner_exists = match s.owned_by.as_deref().and_then(|o| o.rsplit_once('.')) {
                    Some((table, _)) => crate::pg::relation_exists(&self.client, table)
                        .await
                        .map_err(|e| MigrationError::db("looking up a sequence's table on the target", e))?,
                    None => false,
                };
                effect::sequence_plan(
                    s,
                    match d {
                        Some(Effect::Sequence(t)) => Some(t),
                        _ => None,
                    },
                    owner_exists,
                )
            }
            (Effect::Routine(s), d) => effect::routine_plan(
                s,
                match d {
                    Some(Effect::Routine(t)) => Some(t),
                    _ => None,
                },
            ),
            (Effect::Other { tag, object_type, .. }, _) => {
                return Ok(Err(format!(
                    "{tag} of a {} inside a function, procedure or DO block is not reproduced by its effect",
                    object_type.to_lowercase()
                )))
            }
        };
        let plan = match plan {
            Ok(p) => p,
            Err(why) => return Ok(Err(why)),
        };
        if let Err(why) = self.try_effect(&plan.statements).await? {
            return Ok(Err(why));
        }
        applied.extend(plan.statements.iter().cloned());
        let differ = self.differences(e, &plan.unchecked).await?;
        if differ.is_empty() {
            Ok(Ok(()))
        } else {
            Ok(Err(format!(
                "after the replay, {} still differs on the target in: {}",
                e.name().unwrap_or_default(),
                differ.join(", ")
            )))
        }
    }

    /// The target's description of the object an effect names (`None`
    /// when it is not there), with the query the capture used.
    async fn describe_target(
        client: &Client,
        e: &ddl::effect::Effect,
    ) -> Result<Option<ddl::effect::Effect>> {
        let (Some((describe, find)), Some(name)) = (e.describe_sql(), e.name()) else {
            return Ok(None);
        };
        let oid: Option<u32> = client
            .query_one(find, &[&name])
            .await
            .map_err(|e| MigrationError::db("looking up a changed object on the target", e))?
            .get(0);
        let Some(oid) = oid else {
            return Ok(None);
        };
        let row = client
            .query_opt(describe, &[&oid])
            .await
            .map_err(|e| MigrationError::db("describing a changed object on the target", e))?;
        let Some(v) = row.and_then(|r| r.get::<_, Option<serde_json::Value>>(0)) else {
            return Ok(None);
        };
        // Another kind of object under that name reads as absent.
        Ok(serde_json::from_value(v).ok())
    }

    /// Run an effect's statements in a savepoint: a statement the target
    /// refuses is undone alone (`Ok(Err(why))`); a lost session is an error.
    async fn try_effect(&mut self, stmts: &[String]) -> Result<std::result::Result<(), String>> {
        if stmts.is_empty() {
            return Ok(Ok(()));
        }
        // The savepoint on its own: a query string that does not parse
        // runs none of its statements, yet aborts the transaction.
        self.client
            .batch_execute("SAVEPOINT pg_dbmigrator_effect")
            .await
            .map_err(|e| MigrationError::db("replaying a schema change on the target", e))?;
        let sql = format!(
            "{}; RELEASE SAVEPOINT pg_dbmigrator_effect",
            stmts.join(";\n")
        );
        match self.client.batch_execute(&sql).await {
            Ok(()) => Ok(Ok(())),
            Err(e)
                if e.as_db_error().is_none()
                    || e.code().is_some_and(|c| {
                        let c = c.code();
                        c.starts_with("08") || c.starts_with("57")
                    }) =>
            {
                Err(MigrationError::db(
                    "replaying a schema change on the target",
                    e,
                ))
            }
            Err(e) => {
                let why = e
                    .as_db_error()
                    .map(|d| d.message().to_string())
                    .unwrap_or_default();
                self.client
                    .batch_execute("ROLLBACK TO SAVEPOINT pg_dbmigrator_effect; RELEASE SAVEPOINT pg_dbmigrator_effect")
                    .await
                    .map_err(|u| {
                        MigrationError::db(
                            format!(
                                "undoing the schema change `{}` the target refused ({why})",
                                ddl::short(&stmts.join("; "))
                            ),
                            u,
                        )
                    })?;
                Ok(Err(format!(
                    "the target refused `{}`: {why}",
                    ddl::short(&stmts.join("; "))
                )))
            }
        }
    }

    fn rel(&self, oid: u32) -> Result<&RelInfo> {
        self.relations.get(&oid).ok_or_else(|| {
            MigrationError::Internal(format!(
                "a change for relation {oid} arrived before its Relation message"
            ))
        })
    }

    async fn insert(&mut self, oid: u32, new: Tuple) -> Result<()> {
        if self.skipping {
            return Ok(());
        }
        let rel = self.rel(oid)?.clone();
        if self.txn_set_mode && rel.set_insert_ok {
            let row = new
                .0
                .into_iter()
                .map(|v| param(v).map(|p| p.into_text()))
                .collect::<Result<Vec<_>>>()?;
            self.pending.insert(oid, row);
            self.batch_rows += 1;
            return self.hold_back_done().await;
        }
        self.barrier(oid).await?;
        self.batch_rows += 1;
        self.insert_now(oid, &rel, new).await
    }

    async fn insert_now(&mut self, oid: u32, rel: &RelInfo, new: Tuple) -> Result<()> {
        let mask: Vec<bool> = new
            .0
            .iter()
            .map(|v| !matches!(v, Value::UnchangedToast))
            .collect();
        let key = StmtKey::Insert(oid, mask.clone());
        let stmt = match self.statements.get(&key) {
            Some(s) => s.clone(),
            None => {
                let cols: Vec<&str> = rel
                    .columns
                    .iter()
                    .zip(&mask)
                    .filter(|(_, m)| **m)
                    .map(|(c, _)| c.as_str())
                    .collect();
                let vals: Vec<String> = (1..=cols.len()).map(|i| format!("${i}")).collect();
                let sql = format!(
                    "INSERT INTO {} ({}) OVERRIDING SYSTEM VALUE VALUES ({})",
                    rel.target,
                    cols.join(", "),
                    vals.join(", ")
                );
                self.prepare(key, &sql).await?
            }
        };
        let params = new
            .0
            .into_iter()
            .filter(|v| !matches!(v, Value::UnchangedToast))
            .map(param)
            .collect::<Result<Vec<_>>>()?;
        let commit = self.source_txn.unwrap_or_default();
        self.push_stmt(stmt, params, "INSERT", &rel.target, commit)
            .await
    }

    async fn update(&mut self, oid: u32, old: Option<OldTuple>, new: Tuple) -> Result<()> {
        if self.skipping {
            return Ok(());
        }
        let rel = self.rel(oid)?.clone();
        // SET: the columns sent (unchanged TOAST is not), and where the old
        // value is known, only those that changed.
        let old_vals = old.as_ref().map(|o| o.tuple().0.clone());
        let set: Vec<bool> = new
            .0
            .iter()
            .enumerate()
            .map(|(i, v)| {
                if matches!(v, Value::UnchangedToast) {
                    return false;
                }
                let known_old = match (&old, old_vals.as_ref().and_then(|o| o.get(i))) {
                    (Some(OldTuple::Full(_)), Some(ov)) => Some(ov),
                    (Some(OldTuple::Key(_)), Some(ov)) if rel.key[i] => Some(ov),
                    _ => None,
                };
                match known_old {
                    Some(ov) => ov != v,
                    // Unknown old value: set it, unless the target forbids it
                    // (identity ALWAYS columns only change with the key).
                    None => !(rel.identity_always[i] || (old.is_none() && rel.key[i])),
                }
            })
            .collect();
        let (where_mask, where_vals) = self.where_values(&rel, old.as_ref(), Some(&new))?;
        if !set.iter().any(|s| *s) {
            // Nothing changed in what we can see (e.g. only TOAST untouched): no-op.
            return Ok(());
        }
        let set_vals = new
            .0
            .into_iter()
            .zip(&set)
            .filter(|(_, s)| **s)
            .map(|(v, _)| param(v))
            .collect::<Result<Vec<_>>>()?;
        self.batch_rows += 1;
        // Held back only when the key stays (else a row could move between
        // the keys of one set statement).
        if self.txn_set_mode && rel.set_ok && old.is_none() {
            let set_vals = set_vals.into_iter().map(TextParam::into_text).collect();
            let key_vals = where_vals.into_iter().map(TextParam::into_text).collect();
            self.pending.update(oid, set, set_vals, key_vals);
            return self.hold_back_done().await;
        }
        self.barrier(oid).await?;
        self.update_now(oid, &rel, set, set_vals, where_mask, where_vals)
            .await
    }

    async fn update_now(
        &mut self,
        oid: u32,
        rel: &RelInfo,
        set: Vec<bool>,
        set_vals: Vec<TextParam>,
        where_mask: Vec<bool>,
        where_vals: Vec<TextParam>,
    ) -> Result<()> {
        let key = StmtKey::Update(oid, set.clone(), where_mask.clone());
        let stmt = match self.statements.get(&key) {
            Some(s) => s.clone(),
            None => {
                let mut n = 0;
                let sets: Vec<String> = rel
                    .columns
                    .iter()
                    .zip(&set)
                    .filter(|(_, s)| **s)
                    .map(|(c, _)| {
                        n += 1;
                        format!("{c} = ${n}")
                    })
                    .collect();
                let cond = where_clause(rel, &where_mask, n);
                let sql = format!(
                    "UPDATE ONLY {} SET {} WHERE {}",
                    rel.target,
                    sets.join(", "),
                    cond
                );
                self.prepare(key, &sql).await?
            }
        };
        let mut params = set_vals;
        params.extend(where_vals);
        let commit = self.source_txn.unwrap_or_default();
        self.push_stmt(stmt, params, "UPDATE", &rel.target, commit)
            .await
    }

    async fn delete(&mut self, oid: u32, old: OldTuple) -> Result<()> {
        if self.skipping {
            return Ok(());
        }
        let rel = self.rel(oid)?.clone();
        let (where_mask, where_vals) = self.where_values(&rel, Some(&old), None)?;
        self.batch_rows += 1;
        if self.txn_set_mode && rel.set_ok && matches!(old, OldTuple::Key(_)) {
            let key_vals = where_vals.into_iter().map(TextParam::into_text).collect();
            self.pending.delete(oid, key_vals);
            return self.hold_back_done().await;
        }
        self.barrier(oid).await?;
        self.delete_now(oid, &rel, where_mask, where_vals).await
    }

    async fn delete_now(
        &mut self,
        oid: u32,
        rel: &RelInfo,
        where_mask: Vec<bool>,
        where_vals: Vec<TextParam>,
    ) -> Result<()> {
        let key = StmtKey::Delete(oid, where_mask.clone());
        let stmt = match self.statements.get(&key) {
            Some(s) => s.clone(),
            None => {
                let sql = format!(
                    "DELETE FROM ONLY {} WHERE {}",
                    rel.target,
                    where_clause(rel, &where_mask, 0)
                );
                self.prepare(key, &sql).await?
            }
        };
        let commit = self.source_txn.unwrap_or_default();
        self.push_stmt(stmt, where_vals, "DELETE", &rel.target, commit)
            .await
    }

    /// After holding a change back: bound what is held (memory, and the
    /// size of one set statement).
    async fn hold_back_done(&mut self) -> Result<()> {
        if self.pending.bytes > MAX_PENDING_BYTES || self.pending.rows > MAX_PENDING_ROWS {
            self.flush_pending().await?;
        }
        Ok(())
    }

    /// Before a change applied at once to table `oid`: what is held back
    /// for that table goes first (other tables may wait: their order
    /// relative to this one is not observable, see [`super::batch`]). A
    /// transaction applied one statement at a time flushes everything.
    async fn barrier(&mut self, oid: u32) -> Result<()> {
        if self.txn_set_mode {
            self.flush_table(oid).await
        } else {
            self.flush_pending().await
        }
    }

    /// Apply what is held back: per table, its segments in order.
    async fn flush_pending(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        for (oid, segs) in self.pending.take() {
            self.flush_segments(oid, segs).await?;
        }
        Ok(())
    }

    /// Apply what is held back for one table.
    async fn flush_table(&mut self, oid: u32) -> Result<()> {
        if let Some(segs) = self.pending.take_table(oid) {
            self.flush_segments(oid, segs).await?;
        }
        Ok(())
    }

    async fn flush_segments(&mut self, oid: u32, segs: Vec<batch::Segment>) -> Result<()> {
        self.batch_used_sets = true;
        let commit = self
            .source_txn
            .or(self.batch_end.as_ref().map(|(l, _)| *l))
            .unwrap_or_default();
        let rel = self.rel(oid)?.clone();
        let key_cols: Vec<usize> = (0..rel.key.len()).filter(|i| rel.key[*i]).collect();
        for seg in segs {
            match seg.kind {
                SegKind::Insert if seg.rows.len() >= COPY_MIN_ROWS => {
                    self.copy_rows(oid, &rel, seg.rows, commit).await?;
                }
                SegKind::Insert => {
                    for row in seg.rows {
                        let t = Tuple(row.into_iter().map(value).collect());
                        self.insert_now(oid, &rel, t).await?;
                    }
                }
                SegKind::Update(mask) if seg.rows.len() == 1 => {
                    let mut row = seg.rows.into_iter().next().expect("one row");
                    let key = row.split_off(seg.nset);
                    self.update_now(
                        oid,
                        &rel,
                        mask,
                        row.into_iter().map(TextParam::Text).collect(),
                        rel.key.clone(),
                        key.into_iter().map(TextParam::Text).collect(),
                    )
                    .await?;
                }
                SegKind::Update(mask) => {
                    let stmt_key = StmtKey::SetUpdate(oid, mask.clone());
                    let stmt = match self.statements.get(&stmt_key) {
                        Some(s) => s.clone(),
                        None => {
                            let set: Vec<(&str, &str)> = (0..mask.len())
                                .filter(|i| mask[*i])
                                .map(|i| (rel.columns[i].as_str(), rel.types[i].as_str()))
                                .collect();
                            let key: Vec<(&str, &str)> = key_cols
                                .iter()
                                .map(|&i| (rel.columns[i].as_str(), rel.types[i].as_str()))
                                .collect();
                            let sql = batch::update_sql(&rel.target, &set, &key);
                            self.prepare(stmt_key, &sql).await?
                        }
                    };
                    let params = columns_of(seg.rows);
                    self.push_stmt(stmt, params, "UPDATE (set-wise)", &rel.target, commit)
                        .await?;
                }
                SegKind::Delete if seg.rows.len() == 1 => {
                    let key = seg.rows.into_iter().next().expect("one row");
                    self.delete_now(
                        oid,
                        &rel,
                        rel.key.clone(),
                        key.into_iter().map(TextParam::Text).collect(),
                    )
                    .await?;
                }
                SegKind::Delete => {
                    let stmt_key = StmtKey::SetDelete(oid);
                    let stmt = match self.statements.get(&stmt_key) {
                        Some(s) => s.clone(),
                        None => {
                            let key: Vec<(&str, &str)> = key_cols
                                .iter()
                                .map(|&i| (rel.columns[i].as_str(), rel.types[i].as_str()))
                                .collect();
                            let sql = batch::delete_sql(&rel.target, &key);
                            self.prepare(stmt_key, &sql).await?
                        }
                    };
                    let params = columns_of(seg.rows);
                    self.push_stmt(stmt, params, "DELETE (set-wise)", &rel.target, commit)
                        .await?;
                }
            }
        }
        Ok(())
    }

    /// A run of inserts as one COPY (text format: pgoutput's values are
    /// exactly the output-function text COPY reads).
    async fn copy_rows(
        &mut self,
        oid: u32,
        rel: &RelInfo,
        rows: Vec<Vec<batch::Val>>,
        commit: Lsn,
    ) -> Result<()> {
        use futures::SinkExt;
        let stmt_key = StmtKey::Copy(oid);
        let stmt = match self.statements.get(&stmt_key) {
            Some(s) => s.clone(),
            None => {
                let sql = format!(
                    "COPY {} ({}) FROM STDIN",
                    rel.target,
                    rel.columns.join(", ")
                );
                self.prepare(stmt_key, &sql).await?
            }
        };
        self.drain(0).await?;
        let ctx = |e| {
            MigrationError::db(
                format!(
                    "applying the source transactions up to {commit} (COPY into {})",
                    rel.target
                ),
                e,
            )
        };
        let sink = self.client.copy_in::<_, Bytes>(&stmt).await.map_err(ctx)?;
        futures::pin_mut!(sink);
        let mut buf = BytesMut::with_capacity(64 << 10);
        for row in &rows {
            batch::copy_text_row(&mut buf, row);
            if buf.len() >= 1 << 20 {
                sink.send(buf.split().freeze()).await.map_err(ctx)?;
            }
        }
        if !buf.is_empty() {
            sink.send(buf.freeze()).await.map_err(ctx)?;
        }
        sink.as_mut().finish().await.map_err(ctx)?;
        Ok(())
    }

    /// The row to change: by key (old key tuple when the key changed, else
    /// the new tuple's key columns) or, under REPLICA IDENTITY FULL, by
    /// every column of the old row.
    fn where_values(
        &self,
        rel: &RelInfo,
        old: Option<&OldTuple>,
        new: Option<&Tuple>,
    ) -> Result<(Vec<bool>, Vec<TextParam>)> {
        let source = match (old, new) {
            (Some(o), _) => o.tuple(),
            (None, Some(n)) => n,
            (None, None) => unreachable!(),
        };
        let full = matches!(old, Some(OldTuple::Full(_)));
        if !full && !rel.key.iter().any(|k| *k) {
            return Err(MigrationError::Preflight(format!(
                "table {} has no replica identity on the source: its updates and deletes cannot be applied (run with --fix-replica-identity)",
                rel.target
            )));
        }
        let mut mask = Vec::with_capacity(source.0.len());
        let mut vals = Vec::new();
        for (i, v) in source.0.iter().enumerate() {
            let use_it = if full {
                !matches!(v, Value::UnchangedToast)
            } else {
                rel.key[i]
            };
            mask.push(use_it);
            if use_it {
                if matches!(v, Value::UnchangedToast) {
                    return Err(MigrationError::Internal(format!(
                        "a key column of {} arrived as unchanged TOAST",
                        rel.target
                    )));
                }
                vals.push(param(v.clone())?);
            }
        }
        Ok((mask, vals))
    }

    async fn truncate(&mut self, t: &pgoutput::Truncate) -> Result<()> {
        if self.skipping {
            return Ok(());
        }
        for oid in &t.relation_oids {
            self.flush_table(*oid).await?;
        }
        let mut names = Vec::new();
        for oid in &t.relation_oids {
            names.push(self.rel(*oid)?.target.clone());
        }
        // One statement for all, never CASCADE (as PostgreSQL's own apply).
        let sql = format!(
            "TRUNCATE ONLY {}{}",
            names.join(", "),
            if t.restart_identity() {
                " RESTART IDENTITY"
            } else {
                ""
            }
        );
        let commit = self.source_txn.unwrap_or_default();
        self.push("TRUNCATE", &names.join(", "), commit, Some(sql), Vec::new())
            .await
    }

    async fn prepare(&mut self, key: StmtKey, sql: &str) -> Result<Statement> {
        // The pipeline must be empty: a prepare failing in an aborted
        // transaction would hide the first error.
        self.drain(0).await?;
        let stmt = self
            .client
            .prepare(sql)
            .await
            .map_err(|e| MigrationError::db(format!("preparing `{sql}` on the target"), e))?;
        self.statements.insert(key, stmt.clone());
        Ok(stmt)
    }

    /// Send a statement without waiting for its result.
    async fn push_stmt(
        &mut self,
        stmt: Statement,
        params: Vec<TextParam>,
        what: &'static str,
        relation: &str,
        commit_lsn: Lsn,
    ) -> Result<()> {
        let bytes: usize = params.iter().map(TextParam::len).sum();
        let client = self.client.clone();
        let ctx = Ctx {
            what,
            relation: relation.to_string(),
            commit_lsn,
        };
        let mut fut: Pending = Box::pin(async move {
            let r = client.execute_raw(&stmt, params).await;
            (r, ctx)
        });
        // The first poll sends the request (tokio-postgres queues it on the
        // connection in call order); the answer is collected later.
        if let std::task::Poll::Ready((r, ctx)) = futures::poll!(&mut fut) {
            check(r, &ctx)?;
        } else {
            self.in_flight.push_back(fut);
            self.in_flight_bytes += bytes;
        }
        self.drain(MAX_IN_FLIGHT).await
    }

    /// A statement without parameters (BEGIN, TRUNCATE), pipelined too.
    async fn push(
        &mut self,
        what: &'static str,
        relation: &str,
        commit_lsn: Lsn,
        sql: Option<String>,
        _params: Vec<TextParam>,
    ) -> Result<()> {
        let sql = sql.unwrap_or_else(|| what.to_string());
        let client = self.client.clone();
        let ctx = Ctx {
            what,
            relation: relation.to_string(),
            commit_lsn,
        };
        // Simple query: sent whole on the first poll (a `&str` through
        // execute_raw would prepare first and lose its place in the pipeline).
        let mut fut: Pending = Box::pin(async move {
            let r = client.batch_execute(&sql).await.map(|_| 0);
            (r, ctx)
        });
        if let std::task::Poll::Ready((r, ctx)) = futures::poll!(&mut fut) {
            check(r, &ctx)?;
        } else {
            self.in_flight.push_back(fut);
        }
        Ok(())
    }

    /// Wait for answers until at most `keep` statements are in flight.
    async fn drain(&mut self, keep: usize) -> Result<()> {
        while self.in_flight.len() > keep
            || (keep > 0
                && self.in_flight_bytes > MAX_IN_FLIGHT_BYTES
                && !self.in_flight.is_empty())
        {
            let fut = self.in_flight.pop_front().expect("non-empty");
            let (r, ctx) = fut.await;
            check(r, &ctx)?;
            if self.in_flight.is_empty() {
                self.in_flight_bytes = 0;
            }
        }
        if keep == 0 {
            self.in_flight_bytes = 0;
        }
        Ok(())
    }

    /// After a failure: drop what is in flight and roll back, so the session
    /// can be reused or closed cleanly.
    pub async fn abort(&mut self) {
        while let Some(f) = self.in_flight.pop_front() {
            let _ = f.await;
        }
        self.in_flight_bytes = 0;
        if self.in_target_txn {
            let _ = self.client.batch_execute("ROLLBACK").await;
            self.in_target_txn = false;
        }
        self.pending.take();
        self.source_txn = None;
        self.batch_end = None;
        self.batch_txns = 0;
        self.batch_rows = 0;
    }
}

fn check(r: std::result::Result<u64, tokio_postgres::Error>, ctx: &Ctx) -> Result<()> {
    match r {
        Ok(_) => Ok(()),
        Err(e) => Err(MigrationError::db(
            format!(
                "applying the source transaction committed at {} ({} {}){}",
                ctx.commit_lsn,
                ctx.what,
                ctx.relation,
                if e.as_db_error().is_some() {
                    ""
                } else {
                    ": the target connection failed"
                }
            ),
            e,
        )),
    }
}

fn param(v: Value) -> Result<TextParam> {
    match v {
        Value::Null => Ok(TextParam::Text(None)),
        Value::Text(b) => Ok(TextParam::Text(Some(b))),
        Value::Binary(_) => Err(MigrationError::Internal(
            "binary pgoutput values are not requested".into(),
        )),
        Value::UnchangedToast => Err(MigrationError::Internal(
            "an unchanged TOAST value cannot be a parameter".into(),
        )),
    }
}

/// A pgoutput value back from what was held.
fn value(v: batch::Val) -> Value {
    match v {
        Some(b) => Value::Text(b),
        None => Value::Null,
    }
}

/// Rows of held-back values as one text array per column.
fn columns_of(rows: Vec<Vec<batch::Val>>) -> Vec<TextParam> {
    let n = rows.first().map_or(0, |r| r.len());
    let mut cols: Vec<Vec<batch::Val>> = (0..n).map(|_| Vec::with_capacity(rows.len())).collect();
    for row in rows {
        for (c, v) in cols.iter_mut().zip(row) {
            c.push(v);
        }
    }
    cols.into_iter().map(TextParam::Array).collect()
}

/// `WHERE` for the row to change, parameters numbered after `offset`.
fn where_clause(rel: &RelInfo, mask: &[bool], offset: usize) -> String {
    let mut n = offset;
    let mut conds = Vec::new();
    for (i, used) in mask.iter().enumerate() {
        if !used {
            continue;
        }
        n += 1;
        let c = &rel.columns[i];
        conds.push(if rel.identity == ReplicaIdentity::Full {
            if rel.compare_as_text[i] {
                format!("{c}::text IS NOT DISTINCT FROM ${n}::text")
            } else {
                format!("{c} IS NOT DISTINCT FROM ${n}")
            }
        } else {
            format!("{c} = ${n}")
        });
    }
    if rel.identity == ReplicaIdentity::Full {
        // Duplicate rows are possible without a key: change exactly one.
        format!(
            "ctid = (SELECT ctid FROM ONLY {} WHERE {} LIMIT 1)",
            rel.target,
            conds.join(" AND ")
        )
    } else {
        conds.join(" AND ")
    }
}

/// The bookkeeping of a schema change's tables whose changes do not
/// stream: remembered on the target with the change, and the cutover
/// refuses while their rows differ.
fn stream_bookkeeping(msg: &ddl::DdlMessage) -> String {
    let mut sql = String::new();
    if !(msg.unpublished.is_empty() && msg.published.is_empty()) {
        sql.push_str(UNSTREAMED_DDL);
        sql.push(';');
    }
    for t in &msg.published {
        if !msg.published_with_rows.contains(t) {
            sql.push_str(&format!(
                "DELETE FROM _pg_dbmigrator.unstreamed WHERE name = {};",
                quote::literal(t)
            ));
        }
    }
    for (t, why) in msg
        .unpublished
        .iter()
        .map(|t| (t, "created without a primary key or replica identity: its changes are not streamed"))
        .chain(msg.published_with_rows.iter().map(|t| {
            (t, "given a replica identity only after rows were written into it: those rows were not streamed")
        }))
    {
        sql.push_str(&format!(
            "INSERT INTO _pg_dbmigrator.unstreamed (name, reason) VALUES ({}, {}) ON CONFLICT (name) DO UPDATE SET reason = EXCLUDED.reason;",
            quote::literal(t),
            quote::literal(why)
        ));
    }
    sql
}

/// Create the progress table and row at `start` (the slot's consistent
/// point) unless it exists. Runs once, right after the copy is durable.
pub async fn init_progress(client: &Client, migration_id: &str, start: Lsn) -> Result<Lsn> {
    client
        .batch_execute(PROGRESS_DDL)
        .await
        .map_err(|e| MigrationError::db("creating the apply progress table on the target", e))?;
    client
        .execute(
            "INSERT INTO _pg_dbmigrator.progress (migration_id, end_lsn) VALUES ($1, $2::text::pg_catalog.pg_lsn) ON CONFLICT (migration_id) DO NOTHING",
            &[&migration_id, &start.to_string()],
        )
        .await
        .map_err(|e| MigrationError::db("recording the apply start on the target", e))?;
    read_progress(client, migration_id)
        .await?
        .ok_or_else(|| MigrationError::Internal("progress row vanished".into()))
}

/// The end LSN of the last source transaction applied, if streaming began.
pub async fn read_progress(client: &Client, migration_id: &str) -> Result<Option<Lsn>> {
    let exists = crate::pg::relation_exists(client, "_pg_dbmigrator.progress")
        .await
        .map_err(|e| MigrationError::db("looking for the apply progress on the target", e))?;
    if !exists {
        return Ok(None);
    }
    let row = client
        .query_opt(
            "SELECT end_lsn::text FROM _pg_dbmigrator.progress WHERE migration_id = $1",
            &[&migration_id],
        )
        .await
        .map_err(|e| MigrationError::db("reading the apply progress on the target", e))?;
    Ok(row.and_then(|r| r.get::<_, String>(0).parse().ok()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel(identity: ReplicaIdentity) -> RelInfo {
        RelInfo {
            target: "public.t".into(),
            columns: vec!["id".into(), "\"Val\"".into(), "doc".into()],
            key: vec![
                true,
                identity == ReplicaIdentity::Full,
                identity == ReplicaIdentity::Full,
            ],
            identity,
            identity_always: vec![false; 3],
            compare_as_text: vec![false, false, true],
            types: vec!["integer".into(), "text".into(), "json".into()],
            set_ok: identity != ReplicaIdentity::Full,
            set_insert_ok: true,
        }
    }

    #[test]
    fn where_by_key() {
        let r = rel(ReplicaIdentity::Default);
        assert_eq!(where_clause(&r, &[true, false, false], 2), "id = $3");
    }

    #[test]
    fn where_full_changes_one_row_and_compares_without_equality_as_text() {
        let r = rel(ReplicaIdentity::Full);
        assert_eq!(
            where_clause(&r, &[true, true, true], 0),
            "ctid = (SELECT ctid FROM ONLY public.t WHERE id IS NOT DISTINCT FROM $1 AND \"Val\" IS NOT DISTINCT FROM $2 AND doc::text IS NOT DISTINCT FROM $3::text LIMIT 1)"
        );
    }
}
