//! What `--source-pressure` reads from the source, once a second on a
//! session of its own: how far its physical standbys replay behind, how
//! much WAL our replication slot retains, which sessions wait for a lock
//! one of our sessions holds, and which of ours wait for a lock. Only
//! reads; the queries travel together (one round trip). What the numbers mean for the copy is
//! `copy::pressure`'s business.
//!
//! Our sessions are those with our `application_name` (every session of a
//! run carries `pg_dbmigrator <migration id>`, see [`super::sessions`]).
//! A role without `pg_read_all_stats` (or superuser) sees neither the
//! positions of standbys it did not start nor the lock waits of other
//! roles' sessions in full: [`Sample::hidden_standbys`] counts the
//! standbys it cannot see, so the governor can say so.

use tokio_postgres::Client;

use crate::error::{MigrationError, Result};

/// One physical standby streaming from the source.
#[derive(Debug, Clone, PartialEq)]
pub struct Standby {
    /// Its `application_name` (the standby's `cluster_name`, or
    /// `walreceiver`), and where it connects from.
    pub name: String,
    /// WAL bytes between the source's position and its replay position.
    pub lag_bytes: u64,
    /// `replay_lag` in seconds (0 when caught up and idle: the server
    /// clears it then).
    pub lag_seconds: f64,
}

/// Our replication slot.
#[derive(Debug, Clone, PartialEq)]
pub struct SlotRetention {
    /// WAL bytes it holds back (from its `restart_lsn` to the source's
    /// position).
    pub retained_bytes: u64,
    /// The server's `max_slot_wal_keep_size` in bytes; `None`: -1,
    /// unlimited.
    pub max_keep_bytes: Option<u64>,
    /// `wal_status`: `reserved`, `extended`, `unreserved` (about to be
    /// lost) or `lost`.
    pub wal_status: String,
}

/// A session waiting for a lock that one of our sessions holds.
#[derive(Debug, Clone, PartialEq)]
pub struct LockWaiter {
    pub pid: i32,
    /// Seconds since its wait began (`pg_locks.waitstart`, PostgreSQL
    /// 14+); `None` on older servers, where the sampler counts from when
    /// it first saw the wait.
    pub waited_seconds: Option<f64>,
    /// When its wait began, as the server writes it: with the pid, tells
    /// one wait from the next (empty before 14).
    pub wait_started: String,
    /// The lock mode it asks for (`AccessExclusiveLock`).
    pub mode: String,
    /// What it waits on: a relation's name, or the lock type
    /// (`virtualxid` for `CREATE INDEX CONCURRENTLY` waiting for our
    /// snapshot's transaction).
    pub object: String,
    /// The start of its query, when the role may see it.
    pub query: String,
}

/// A session of ours waiting for a lock.
#[derive(Debug, Clone, PartialEq)]
pub struct OursWaiting {
    pub pid: i32,
    /// The sessions it waits behind (`pg_blocking_pids`).
    pub behind: Vec<i32>,
    /// The start of its statement.
    pub query: String,
}

/// One sample of the source.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sample {
    pub standbys: Vec<Standby>,
    /// Physical standbys whose positions this role may not read.
    pub hidden_standbys: usize,
    /// `None`: no slot asked for, or it is not there.
    pub slot: Option<SlotRetention>,
    pub lock_waiters: Vec<LockWaiter>,
    /// Our own sessions waiting for a lock: one queued behind a lock
    /// waiter that waits for our snapshot cannot go on until that waiter
    /// does.
    pub ours_waiting: Vec<OursWaiting>,
}

/// The source's WAL position, on a primary or a standby.
const WAL_POSITION: &str = "CASE WHEN pg_catalog.pg_is_in_recovery() \
     THEN pg_catalog.pg_last_wal_replay_lsn() ELSE pg_catalog.pg_current_wal_lsn() END";

/// Physical standbys (logical walsenders, ours among them, hold a logical
/// slot; `pg_basebackup` has no replay position).
fn standbys_sql() -> String {
    format!(
        "SELECT coalesce(r.application_name, '') || coalesce(' at ' || pg_catalog.host(r.client_addr), ''),
                pg_catalog.pg_wal_lsn_diff({WAL_POSITION}, r.replay_lsn)::float8,
                coalesce(EXTRACT(epoch FROM r.replay_lag), 0)::float8,
                r.state IS NULL
           FROM pg_catalog.pg_stat_replication r
          WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_replication_slots s
                             WHERE s.active_pid = r.pid AND s.slot_type = 'logical')
            AND (r.replay_lsn IS NOT NULL OR r.state IS NULL)"
    )
}

fn slot_sql() -> String {
    format!(
        "SELECT pg_catalog.pg_wal_lsn_diff({WAL_POSITION}, s.restart_lsn)::float8,
                pg_catalog.pg_size_bytes(pg_catalog.current_setting('max_slot_wal_keep_size'))::float8,
                coalesce(s.wal_status, '')
           FROM pg_catalog.pg_replication_slots s
          WHERE s.slot_name = $1"
    )
}

/// Sessions not ours waiting for a lock that a session of ours holds
/// (`pg_blocking_pids`: those holding it, and those ahead in its queue).
/// `waitstart` arrived in PostgreSQL 14.
fn lock_waits_sql(server_version: i32) -> String {
    let (waited, started) = if server_version >= 140000 {
        (
            "EXTRACT(epoch FROM pg_catalog.clock_timestamp() - l.waitstart)::float8",
            "coalesce(l.waitstart::text, '')",
        )
    } else {
        ("NULL::float8", "''")
    };
    format!(
        "SELECT l.pid, {waited}, {started}, l.mode,
                CASE WHEN l.relation IS NOT NULL AND l.database = (SELECT d.oid FROM pg_catalog.pg_database d
                                                                   WHERE d.datname = pg_catalog.current_database())
                     THEN l.relation::pg_catalog.regclass::text
                     ELSE l.locktype END,
                coalesce(pg_catalog.left(a.query, 120), '')
           FROM pg_catalog.pg_locks l
           LEFT JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid
          WHERE NOT l.granted AND l.pid IS NOT NULL
            AND a.application_name IS DISTINCT FROM $1
            AND EXISTS (SELECT 1 FROM pg_catalog.pg_stat_activity o
                         WHERE o.pid = ANY (pg_catalog.pg_blocking_pids(l.pid))
                           AND o.application_name = $1)
          ORDER BY l.pid"
    )
}

/// Our sessions waiting for a lock, and behind whom.
const OURS_WAITING: &str = "SELECT a.pid, pg_catalog.pg_blocking_pids(a.pid), coalesce(pg_catalog.left(a.query, 120), '')
       FROM pg_catalog.pg_stat_activity a
      WHERE a.application_name = $1 AND a.wait_event_type = 'Lock' AND a.pid <> pg_catalog.pg_backend_pid()
      ORDER BY a.pid";

/// One sample: the standbys, `slot` (when given) and the sessions waiting
/// behind those named `application_name`, read in one round trip.
pub async fn sample(
    c: &Client,
    server_version: i32,
    application_name: &str,
    slot: Option<&str>,
) -> Result<Sample> {
    let err = |what: &'static str| {
        move |e| {
            MigrationError::db(
                format!("reading {what} on the source (--source-pressure)"),
                e,
            )
        }
    };
    let (standbys_q, slot_q, waits_q) =
        (standbys_sql(), slot_sql(), lock_waits_sql(server_version));
    let standbys = async {
        c.query_typed(&standbys_q, &[])
            .await
            .map_err(err("the standbys' lag"))
    };
    let slot_row = async {
        match slot {
            Some(name) => c
                .query_opt(&slot_q, &[&name])
                .await
                .map_err(err("the WAL our slot retains")),
            None => Ok(None),
        }
    };
    let waits = async {
        c.query(&waits_q, &[&application_name])
            .await
            .map_err(err("lock waits behind our sessions"))
    };
    let ours = async {
        c.query(OURS_WAITING, &[&application_name])
            .await
            .map_err(err("our sessions' lock waits"))
    };
    let (standbys, slot_row, waits, ours) = futures::try_join!(standbys, slot_row, waits, ours)?;
    let mut out = Sample::default();
    for r in standbys {
        if r.get::<_, bool>(3) {
            out.hidden_standbys += 1;
            continue;
        }
        out.standbys.push(Standby {
            name: r.get(0),
            lag_bytes: r.get::<_, Option<f64>>(1).unwrap_or(0.0).max(0.0) as u64,
            lag_seconds: r.get::<_, f64>(2).max(0.0),
        });
    }
    out.slot = slot_row.map(|r| {
        let max: f64 = r.get(1);
        SlotRetention {
            retained_bytes: r.get::<_, Option<f64>>(0).unwrap_or(0.0).max(0.0) as u64,
            max_keep_bytes: (max >= 0.0).then_some(max as u64),
            wal_status: r.get(2),
        }
    });
    out.lock_waiters = waits
        .iter()
        .map(|r| LockWaiter {
            pid: r.get(0),
            waited_seconds: r.get::<_, Option<f64>>(1).map(|s| s.max(0.0)),
            wait_started: r.get(2),
            mode: r.get(3),
            object: r.get(4),
            query: r.get(5),
        })
        .collect();
    out.ours_waiting = ours
        .iter()
        .map(|r| OursWaiting {
            pid: r.get(0),
            behind: r.get(1),
            query: r.get(2),
        })
        .collect();
    Ok(out)
}
