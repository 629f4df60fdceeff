//! Our sessions on the servers, told apart by their `application_name`.
//!
//! Every session of a run carries `pg_dbmigrator <migration id>`, so a DBA
//! sees whose they are in `pg_stat_activity`, and so a later run of the
//! same migration can find what a killed one left behind: a server session
//! outlives its client until it next talks to it, and a statement sent in
//! one query with its marker (a `CREATE INDEX`, a copied table's commit)
//! runs on and commits after its client died. A resumed run that did not
//! wait for it would build the same index beside it, or apply a step twice.
//!
//! A user's own `application_name` is kept (libpq's convention); such a
//! run cannot tell the earlier run's sessions from anyone else's and does
//! not wait for them.

use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::config::{EndpointConfig, MigrationConfig};
use crate::error::{MigrationError, Result};
use crate::pg::connect;

const PREFIX: &str = "pg_dbmigrator ";

/// The `application_name` of a migration's sessions.
pub fn tag(migration_id: &str) -> String {
    // NAMEDATALEN: the server keeps 63 bytes of it.
    let mut t = format!("{PREFIX}{migration_id}");
    let mut end = t.len().min(63);
    while !t.is_char_boundary(end) {
        end -= 1;
    }
    t.truncate(end);
    t
}

/// `cfg` with its endpoints' sessions tagged with `migration_id` (a name
/// the user gave is kept).
pub fn tagged(cfg: &MigrationConfig, migration_id: &str) -> MigrationConfig {
    let mut cfg = cfg.clone();
    for ep in [cfg.source.as_mut(), cfg.target.as_mut()]
        .into_iter()
        .flatten()
    {
        if ep.application_name.is_none() {
            ep.application_name = Some(tag(migration_id));
        }
    }
    cfg
}

/// How long an earlier run's statement may take to finish on its own
/// before it is ended.
const GRACE: Duration = Duration::from_secs(5);

/// Wait for the sessions an earlier, dead run of this migration left on
/// `ep`'s server to end, ending them when they do not within a few seconds.
/// Called before a run changes anything; only the caller's run lock (the
/// earlier process is gone) makes this safe. Returns how many there were.
pub async fn end_earlier(ep: &EndpointConfig, label: &str) -> Result<usize> {
    let Some(tag) = ep
        .application_name
        .as_deref()
        .filter(|a| a.starts_with(PREFIX))
    else {
        return Ok(0);
    };
    let c = connect::connect_server(ep, label).await?;
    wait_for_tagged(&c, tag, label, "of the interrupted run").await
}

/// This run's own other sessions on `c`'s server (work stopped in the
/// middle: an index build whose worker was stopped runs on, server side,
/// and commits if it can): wait for them to end, ending them after a few
/// seconds, so what the markers say next is final and nothing is built
/// twice. `c` is the one session of the run left open there; sessions
/// under a user's own `application_name` cannot be told apart and are not
/// waited for.
pub async fn end_others(
    c: &tokio_postgres::Client,
    ep: &EndpointConfig,
    label: &str,
) -> Result<usize> {
    match ep
        .application_name
        .as_deref()
        .filter(|a| a.starts_with(PREFIX))
    {
        Some(tag) => wait_for_tagged(c, tag, label, "of work this run stopped").await,
        None => Ok(0),
    }
}

/// Wait for the sessions tagged `tag` other than `c`'s own to end, ending
/// them after [`GRACE`]; `whose` says whose they are in the log. Returns
/// how many there were.
async fn wait_for_tagged(
    c: &tokio_postgres::Client,
    tag: &str,
    label: &str,
    whose: &str,
) -> Result<usize> {
    let list = "SELECT pid, backend_type, coalesce(state, ''), left(query, 120)
                  FROM pg_catalog.pg_stat_activity
                 WHERE application_name = $1 AND pid <> pg_catalog.pg_backend_pid()
                 ORDER BY pid";
    let read = |rows: Vec<tokio_postgres::Row>| -> Vec<(i32, String)> {
        rows.iter()
            .map(|r| {
                let (pid, kind, state, q): (i32, String, String, String) =
                    (r.get(0), r.get(1), r.get(2), r.get(3));
                (pid, format!("pid {pid} ({kind}, {state}): {q}"))
            })
            .collect()
    };
    let err = |e| {
        MigrationError::db(
            format!("listing the earlier run's sessions on the {label}"),
            e,
        )
    };
    let first = read(
        c.query_typed(list, &[(&tag, tokio_postgres::types::Type::TEXT)])
            .await
            .map_err(err)?,
    );
    if first.is_empty() {
        return Ok(0);
    }
    for (_, s) in &first {
        info!(endpoint = label, session = %s, "waiting for a session {whose} to end");
    }
    let started = Instant::now();
    let mut terminated = false;
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let left = read(c.query(list, &[&tag]).await.map_err(err)?);
        if left.is_empty() {
            return Ok(first.len());
        }
        if started.elapsed() >= GRACE && !terminated {
            for (pid, s) in &left {
                warn!(endpoint = label, session = %s, "ending a session {whose}: its statement is rolled back and redone by this run");
                let ok: bool = c
                    .query_one("SELECT pg_catalog.pg_terminate_backend($1)", &[pid])
                    .await
                    .map(|r| r.get(0))
                    .unwrap_or(false);
                if !ok {
                    return Err(refusal(label, &left));
                }
            }
            terminated = true;
        }
        if started.elapsed() >= GRACE * 4 {
            return Err(refusal(label, &left));
        }
    }
}

/// The server process of a session: what [`settle_lost`] needs to find
/// it again once the session is lost.
pub async fn backend_pid(c: &tokio_postgres::Client) -> Result<i32> {
    crate::pg::query_one_once(c, "SELECT pg_catalog.pg_backend_pid()")
        .await
        .map(|r| r.get(0))
        .map_err(|e| MigrationError::db("reading the session's server process id", e))
}

/// After this run lost the session of server process `pid` (on `c`'s
/// server) in the middle of a statement: wait for that process to end,
/// ending it when it does not within a few seconds. A lost client's
/// backend runs its statement on (an index build, a batch of DDL) and
/// commits it if it can, so until it is gone, whether its work committed
/// is not known, and redoing it beside it would build the same index twice
/// or fail on the name. Afterwards the markers tell.
pub async fn settle_lost(c: &tokio_postgres::Client, pid: i32, label: &str) -> Result<()> {
    let alive = || async {
        c.query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_stat_activity WHERE pid = $1)",
            &[&pid],
        )
        .await
        .map(|r| r.get::<_, bool>(0))
        .map_err(|e| {
            MigrationError::db(
                format!("looking for the lost session's process on the {label}"),
                e,
            )
        })
    };
    let started = Instant::now();
    let mut terminated = false;
    while alive().await? {
        if started.elapsed() >= GRACE && !terminated {
            warn!(endpoint = label, pid, "ending the server process of a lost session: its statement is rolled back and redone");
            let _ = c
                .query_one("SELECT pg_catalog.pg_terminate_backend($1)", &[&pid])
                .await;
            terminated = true;
        }
        if started.elapsed() >= GRACE * 4 {
            return Err(MigrationError::Client {
                context: format!("waiting for the lost session's process {pid} on the {label} to end"),
                message: format!(
                    "it is still running; end it (SELECT pg_terminate_backend({pid})) and run again with --resume"
                ),
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// [`end_earlier`] on both servers of a migration.
pub async fn end_earlier_runs(cfg: &MigrationConfig) -> Result<()> {
    // One after the other, never at once: when the source and the target
    // are the same server, each check would see the other's session,
    // tagged with the same migration, as one of the interrupted run's.
    if let Some(ep) = &cfg.source {
        end_earlier(ep, "source").await?;
    }
    if let Some(ep) = &cfg.target {
        end_earlier(ep, "target").await?;
    }
    Ok(())
}

fn refusal(label: &str, left: &[(i32, String)]) -> MigrationError {
    let pids: Vec<String> = left.iter().map(|(p, _)| p.to_string()).collect();
    MigrationError::resume_refused(format!(
        "sessions of the interrupted run of this migration are still running on the {label} and could not be ended: {}. \
         End them (SELECT pg_terminate_backend(pid) for pid {}) and run again",
        left.iter().map(|(_, s)| s.as_str()).collect::<Vec<_>>().join("; "),
        pids.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_name_the_migration_and_keep_a_users_name() {
        assert_eq!(tag("m0123456789ab"), "pg_dbmigrator m0123456789ab");
        assert_eq!(tag(&"x".repeat(100)).len(), 63);
        let mut cfg = MigrationConfig {
            source: Some(EndpointConfig::parse("host=a dbname=s").unwrap()),
            target: Some(EndpointConfig::parse("host=b dbname=t").unwrap()),
            ..Default::default()
        };
        cfg.target.as_mut().unwrap().application_name = Some("mine".into());
        let t = tagged(&cfg, "m1");
        assert_eq!(
            t.source.unwrap().application_name.as_deref(),
            Some("pg_dbmigrator m1")
        );
        assert_eq!(t.target.unwrap().application_name.as_deref(), Some("mine"));
    }
}
