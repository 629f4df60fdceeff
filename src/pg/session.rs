//! Session settings and snapshot handling shared by every stage.
//!
//! Text forms of dates, intervals, floats and bytea depend on session
//! settings; pinning them on both sides makes COPY text streams parse the
//! same everywhere and verify checksums deterministic.

use tokio_postgres::Client;

use crate::error::{MigrationError, Result};
use crate::pg::quote;

/// Settings every session of ours runs with: no timeouts that would kill a
/// long COPY, deterministic text output, and no JIT: catalog queries with
/// set-returning functions are estimated at hundreds of thousands of rows,
/// and JIT then compiles hundreds of functions for a query that reads a
/// few (measured: 5 to 9 s for the role list of an empty database).
const COMMON_SETTINGS: &str = "SET statement_timeout = 0; SET jit = off; \
     SET lock_timeout = 0; \
     SET idle_in_transaction_session_timeout = 0; \
     SET DateStyle = 'ISO, YMD'; \
     SET IntervalStyle = 'postgres'; \
     SET extra_float_digits = 3; \
     SET TimeZone = 'UTC'; \
     SET bytea_output = 'hex'; \
     SET row_security = off; SET default_tablespace = ''; \
     SET pg_dbmigrator.capture = off";

/// Prepare a source session. `row_security = off` makes a COPY fail loudly
/// instead of silently skipping rows hidden by a policy (as pg_dump does).
pub async fn setup_source(client: &Client) -> Result<()> {
    client
        .batch_execute(COMMON_SETTINGS)
        .await
        .map_err(|e| MigrationError::db("configuring the source session", e))
}

/// Prepare a target session for bulk loading. Returns whether triggers and
/// foreign-key checks are off (`session_replication_role = replica`, which
/// needs superuser or, on PG15+, a granted SET privilege): with them off,
/// tables can be loaded in any order and user triggers do not fire twice.
pub async fn setup_target(client: &Client) -> Result<bool> {
    setup_target_with(client, "").await
}

/// [`setup_target`], with `more` settings sent in the same round trip.
/// The role change travels beside them, pipelined, as a query of its own:
/// refused (no privilege), it must not take the settings down with it.
async fn setup_target_with(client: &Client, more: &str) -> Result<bool> {
    let settings = format!("{COMMON_SETTINGS}; SET synchronous_commit = off{more}");
    let (settings, replica) = futures::join!(
        client.batch_execute(&settings),
        client.batch_execute("SET session_replication_role = replica"),
    );
    settings.map_err(|e| MigrationError::db("configuring the target session", e))?;
    Ok(replica.is_ok())
}

/// [`setup_target`] for the copy's pipelined session: the settings and
/// the role change as two query messages in one round trip (the role
/// change refused must not take the settings down with it).
pub(crate) async fn setup_copy_target(s: &mut crate::pg::wire::CopySession) -> Result<bool> {
    let settings = format!("{COMMON_SETTINGS}; SET synchronous_commit = off");
    let outcomes = s
        .run_all(
            &[&settings, "SET session_replication_role = replica"],
            || "configuring the target session".to_string(),
        )
        .await?;
    let mut outcomes = outcomes.into_iter();
    let settings = outcomes.next().expect("two outcomes");
    settings.ok(|| "configuring the target session".to_string())?;
    Ok(outcomes.next().is_some_and(|o| o.error.is_none()))
}

/// What pg_dump's scripts set before any DDL, for every session that
/// creates schema objects on the target: function bodies are not validated
/// (an SQL function may name a table created later, as pagila's do), names
/// resolve only when qualified, no timeout cuts a long index build, and
/// objects go to the database's default tablespace unless their statement
/// names another (a target's `ALTER DATABASE SET default_tablespace` must
/// not move them).
pub const DDL_SETTINGS: &str = "SET statement_timeout = 0; SET lock_timeout = 0; \
     SET idle_in_transaction_session_timeout = 0; SET client_encoding = 'UTF8'; \
     SET standard_conforming_strings = on; SELECT pg_catalog.set_config('search_path', '', false); \
     SET check_function_bodies = false; SET xmloption = content; SET client_min_messages = warning; \
     SET row_security = off";

/// [`setup_target`] plus [`DDL_SETTINGS`]: for a session that applies
/// schema steps as well as loading rows.
pub async fn setup_ddl_target(client: &Client) -> Result<bool> {
    setup_target_with(client, &format!("; {DDL_SETTINGS}")).await
}

/// Whether the session still answers: the coordinator's, whose loss takes
/// the exported snapshot with it (nothing else tells a quiet session that
/// its link was cut).
pub async fn answers(client: &Client) -> bool {
    !client.is_closed() && client.simple_query("SELECT 1").await.is_ok()
}

/// Open a REPEATABLE READ, READ ONLY transaction and export its snapshot.
/// Returns `(snapshot_id, txid_snapshot_text)`.
pub async fn begin_exported_snapshot(client: &Client) -> Result<(String, String)> {
    client
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .await
        .map_err(|e| MigrationError::db("opening the snapshot transaction", e))?;
    let row = crate::pg::query_one_once(
        client,
        "SELECT pg_catalog.pg_export_snapshot(), pg_catalog.txid_current_snapshot()::text",
    )
    .await
    .map_err(|e| MigrationError::db("exporting the snapshot", e))?;
    Ok((row.get(0), row.get(1)))
}

/// End the session's snapshot transaction and begin another on the same
/// exported snapshot, in one round trip: a copy worker takes each item in
/// its own transaction, so it never holds more than one table's locks and
/// a database of thousands of tables fits the server's lock table.
pub async fn reimport_snapshot(client: &Client, snapshot_id: &str) -> Result<()> {
    client
        .batch_execute(&format!(
            "COMMIT; BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY; SET TRANSACTION SNAPSHOT {}",
            quote::literal(snapshot_id)
        ))
        .await
        .map_err(|e| {
            MigrationError::db(
                format!("importing snapshot {snapshot_id} again (it lives only while the migration's coordinator session is open)"),
                e,
            )
        })
}

/// Open a REPEATABLE READ, READ ONLY transaction on an exported snapshot.
/// Returns the transaction's visible snapshot (`txid_current_snapshot()`),
/// which is identical for every session that imported the same snapshot.
pub async fn import_snapshot(client: &Client, snapshot_id: &str) -> Result<String> {
    client
        .batch_execute(&format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY; SET TRANSACTION SNAPSHOT {}",
            quote::literal(snapshot_id)
        ))
        .await
        .map_err(|e| {
            MigrationError::db(
                format!("importing snapshot {snapshot_id} (it lives only while the migration's coordinator session is open)"),
                e,
            )
        })?;
    let row = crate::pg::query_one_once(client, "SELECT pg_catalog.txid_current_snapshot()::text")
        .await
        .map_err(|e| MigrationError::db("reading the imported snapshot", e))?;
    Ok(row.get(0))
}
