//! What an online migration changes on the source, and its undo: the
//! publication and the slot (with the exported snapshot the copy reads),
//! the `--fix-replica-identity` changes, the write fence at cutover
//! (read-only database, other sessions ended), and `cleanup` / `unfence`,
//! which remove all of it. The only module that writes to the source; each
//! change is recorded in the resume token before the next step.

use std::time::{Duration, Instant};

use serde::Serialize;
use tokio_postgres::Client;
use tracing::{info, warn};

use super::ddl;
use super::preflight::{self, SourceChecks};
use super::{object_name, Lsn};
use crate::config::filter::CompiledFilters;
use crate::config::{EndpointConfig, MigrationConfig};
use crate::copy;
use crate::error::{MigrationError, Result};
use crate::faults::{self, around, Point};
use crate::pg::catalog::{self, TableInfo};
use crate::pg::replication::ReplicationSession;
use crate::pg::{connect, quote, session};
use crate::resume::{Definition, OnlineState, ResumeToken};

/// What the copy phase needs to create on the source, and what it created.
#[derive(Debug, Default)]
pub(crate) struct OnlinePrep {
    pub state: OnlineState,
    /// This run created source objects (undone if it fails before copying).
    pub created_now: bool,
    pub unlogged: Vec<String>,
}

pub(crate) fn names(cfg_id: &str) -> (String, String) {
    let n = object_name(cfg_id);
    (n.clone(), n)
}

/// Preflight the source, then create (recording each first) the replica
/// identity fixes, the publication and the slot; import the slot's
/// snapshot on the coordinator session `src` and export it again for the
/// copy workers. Returns `(snapshot_id, txid_snapshot)`.
pub(crate) async fn prepare_source(
    cfg: &MigrationConfig,
    src: &Client,
    filters: &CompiledFilters,
    o: &mut OnlinePrep,
    token: &mut ResumeToken,
    token_path: &std::path::Path,
) -> Result<(String, String)> {
    let tables = catalog::list_tables(src, filters).await?;
    let resuming = o.state.publication_created || o.state.slot_created;
    let report = preflight::check_source(
        src,
        &SourceChecks {
            tables: &tables,
            slot_name: &o.state.slot_name,
            publication_name: &o.state.publication_name,
            resuming,
            fix_replica_identity: cfg.fix_replica_identity,
            large_objects: cfg.large_objects,
        },
    )
    .await?;
    o.unlogged = report.unlogged.clone();
    for f in &report.fixes {
        if !o.state.replica_identity_fixes.contains(f) {
            o.state.replica_identity_fixes.push(f.clone());
        }
    }
    let save = |token: &mut ResumeToken, state: &OnlineState| -> Result<()> {
        token.online = Some(state.clone());
        token.slot_name = Some(state.slot_name.clone());
        token.publication_name = Some(state.publication_name.clone());
        token.save(token_path)
    };
    // Recorded before made: a crash in between leaves a record to undo.
    save(token, &o.state)?;
    o.created_now = true;
    if !report.fixes.is_empty() {
        around(
            Point::ReplicaIdentity,
            preflight::apply_replica_identity_fixes(src, &report.fixes),
        )
        .await?;
        for f in &report.fixes {
            info!(table = %quote::qualified(&f.schema, &f.name), identity = ?f.new, "replica identity set (--fix-replica-identity; restored at cleanup)");
        }
    }
    let mut published: Vec<String> = tables
        .iter()
        .map(TableInfo::qualified)
        .filter(|t| !o.unlogged.contains(t))
        .collect();
    if !cfg.data_only {
        // Extensions' configuration tables (pg_partman's `part_config`)
        // are copied with the schema: their changes stream too, when the
        // table has a replica identity. Publishing one without would make
        // its UPDATEs and DELETEs fail on the source.
        let (with, without) = catalog::extension_config_tables_by_identity(src).await?;
        for t in &without {
            crate::recorded::warn_recorded!("{t}: an extension's configuration table without a key: its changes during the run are not streamed (verify reports them); change it before the run or after the cutover");
        }
        published.extend(with);
    }
    let pub_exists: bool = src
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_publication WHERE pubname = $1)",
            &[&o.state.publication_name],
        )
        .await
        .map_err(|e| MigrationError::db("looking up the publication", e))?
        .get(0);
    if !pub_exists {
        o.state.publication_created = true;
        save(token, &o.state)?;
        let sql = if published.is_empty() {
            format!(
                "CREATE PUBLICATION {}",
                quote::ident(&o.state.publication_name)
            )
        } else {
            format!(
                "CREATE PUBLICATION {} FOR TABLE {}",
                quote::ident(&o.state.publication_name),
                published.join(", ")
            )
        };
        around(Point::Publication, src.batch_execute(&sql))
            .await
            .map_err(|e| MigrationError::db("creating the publication on the source", e))?;
        info!(publication = %o.state.publication_name, tables = published.len(), "publication created");
    }
    // Schema changes: captured from before the slot (so every change after
    // its snapshot is in the stream), or guarded by a fingerprint.
    let whole = filters == &CompiledFilters::default();
    let capture = ddl::capture_possible(src, whole, cfg.data_only).await?;
    match &capture {
        Ok(()) => {
            o.state.ddl_capture = true;
            save(token, &o.state)?;
            around(Point::Capture, install_capture(src, &o.state)).await?;
            info!("schema changes on the source are captured and replayed on the target at their place in the stream");
        }
        Err(why) => {
            info!(reason = %why, "schema changes on the source cannot be captured: a schema fingerprint taken at the snapshot is compared under the fence, and any change refuses the cutover");
        }
    }
    o.state.slot_created = true;
    o.state.consistent_point = None;
    save(token, &o.state)?;
    let source = cfg.source.as_ref().expect("checked");
    let mut repl = ReplicationSession::connect_labeled(source, "source").await?;
    info!(slot = %o.state.slot_name, "creating the replication slot (waits for transactions running on the source to finish)");
    faults::before(Point::Slot).await;
    let slot = repl.create_logical_slot(&o.state.slot_name, true).await?;
    faults::after(Point::Slot).await;
    let name = slot.snapshot_name.clone().ok_or_else(|| {
        MigrationError::Internal("CREATE_REPLICATION_SLOT exported no snapshot".into())
    })?;
    o.state.consistent_point = Some(slot.consistent_point);
    save(token, &o.state)?;
    info!(slot = %o.state.slot_name, consistent_point = %slot.consistent_point, snapshot = %name, "replication slot created");
    // The slot session must stay idle until the snapshot is imported; the
    // coordinator then holds it (and exports it again) for the whole copy.
    session::import_snapshot(src, &name).await?;
    if capture.is_err() {
        let names = fingerprint_scope(src, filters, whole).await?;
        o.state.fingerprint = Some(ddl::fingerprint(src, names.as_deref()).await?);
        save(token, &o.state)?;
    }
    let row = crate::pg::query_one_once(
        src,
        "SELECT pg_catalog.pg_export_snapshot(), pg_catalog.txid_current_snapshot()::text",
    )
    .await
    .map_err(|e| MigrationError::db("exporting the slot's snapshot again", e))?;
    let _ = repl.close().await;
    Ok((row.get(0), row.get(1)))
}

/// Install the event trigger and its functions (idempotent).
async fn install_capture(src: &Client, state: &OnlineState) -> Result<()> {
    src.batch_execute(&ddl::install_sql(
        &state.publication_name,
        &ddl::trigger_name(&state.slot_name),
    ))
    .await
    .map_err(|e| {
        MigrationError::db(
            "installing the schema change capture (event trigger) on the source",
            e,
        )
    })
}

/// Remove our event trigger and its functions from the source.
pub(crate) async fn remove_capture(src: &Client, state: &mut OnlineState) -> Result<()> {
    if !state.ddl_capture {
        return Ok(());
    }
    src.batch_execute(&ddl::remove_sql(&ddl::trigger_name(&state.slot_name)))
        .await
        .map_err(|e| {
            MigrationError::db(
                "removing the schema change capture (event trigger) from the source",
                e,
            )
        })?;
    state.ddl_capture = false;
    Ok(())
}

/// The tables a fingerprint covers: all (None) for a whole database, else
/// the tables the filters select.
pub(crate) async fn fingerprint_scope(
    c: &Client,
    filters: &CompiledFilters,
    whole: bool,
) -> Result<Option<Vec<String>>> {
    if whole {
        return Ok(None);
    }
    Ok(Some(
        catalog::list_tables(c, filters)
            .await?
            .iter()
            .map(TableInfo::qualified)
            .collect(),
    ))
}

/// A source connection for control statements (lag, fence, sequences): set
/// up before the fence, and explicitly writable so a reconnect after the
/// fence still works.
pub(crate) async fn control(ep: &EndpointConfig) -> Result<Client> {
    let c = connect::connect(ep, "source").await?;
    session::setup_source(&c).await?;
    c.batch_execute("SET default_transaction_read_only = off; SET statement_timeout = 0")
        .await
        .map_err(|e| MigrationError::db("configuring the control session", e))?;
    Ok(c)
}

pub(crate) async fn current_wal(c: &Client) -> Result<Lsn> {
    let s: String = crate::pg::query_one_once(c, "SELECT pg_catalog.pg_current_wal_lsn()::text")
        .await
        .map_err(|e| MigrationError::db("reading the source's WAL position", e))?
        .get(0);
    s.parse()
        .map_err(|_| MigrationError::Internal(format!("bad LSN {s}")))
}

/// A fenced database opens new sessions read-only: ours must write.
pub(crate) async fn writable(c: &Client) -> Result<()> {
    c.batch_execute("SET default_transaction_read_only = off")
        .await
        .map_err(|e| MigrationError::db("configuring a source session", e))
}

/// Make the current database read-only for new sessions and end the other
/// client sessions connected to it.
pub(crate) async fn fence_db(ctl: &Client) -> Result<()> {
    set_read_only(
        ctl,
        true,
        "fencing the source (ALTER DATABASE needs the database owner or a superuser; or stop the writes yourself and pass --no-fence)",
    )
    .await?;
    end_other_sessions(ctl).await
}

/// `default_transaction_read_only` of the current database: the fence.
pub(crate) async fn set_read_only(ctl: &Client, on: bool, what: &str) -> Result<()> {
    let db: String = crate::pg::query_one_once(ctl, "SELECT pg_catalog.current_database()::text")
        .await
        .map_err(|e| MigrationError::db(what, e))?
        .get(0);
    ctl.batch_execute(&format!(
        "ALTER DATABASE {} {}",
        quote::ident(&db),
        if on {
            "SET default_transaction_read_only = on"
        } else {
            "RESET default_transaction_read_only"
        }
    ))
    .await
    .map_err(|e| MigrationError::db(what, e))
}

/// End the other client sessions of the source database. Run twice: a
/// session that was still logging in while the fence went up opened
/// writable.
///
/// `pg_terminate_backend` only sends the signal: a backend inside its
/// commit finishes it first. So wait until every ended session is gone;
/// otherwise its last commit can land after the fence position we read
/// next, and the drain would stop short of it.
pub(crate) async fn end_other_sessions(ctl: &Client) -> Result<()> {
    let ctx = "ending the other sessions of the source database (fence)";
    // Pick the sessions first, then signal them: a volatile call inside
    // the view's WHERE could run before the filters.
    let pids: Vec<i32> = ctl
        .query_typed(
            "SELECT pid FROM pg_catalog.pg_stat_activity
              WHERE datname = pg_catalog.current_database() AND pid <> pg_catalog.pg_backend_pid()
                AND backend_type = 'client backend'",
            &[],
        )
        .await
        .map_err(|e| MigrationError::db(ctx, e))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if pids.is_empty() {
        return Ok(());
    }
    ctl.query(
        "SELECT pg_catalog.pg_terminate_backend(p) FROM pg_catalog.unnest($1::int4[]) AS p",
        &[&pids],
    )
    .await
    .map_err(|e| MigrationError::db(ctx, e))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let alive: i64 = ctl
            .query_one(
                "SELECT pg_catalog.count(*) FROM pg_catalog.pg_stat_activity WHERE pid = ANY($1::int4[])",
                &[&pids],
            )
            .await
            .map_err(|e| MigrationError::db(ctx, e))?
            .get(0);
        if alive == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(MigrationError::Internal(format!(
                "{alive} session(s) of the source database did not end within 30 s of pg_terminate_backend; \
                 the fence is not complete (end them yourself, or stop the writes and pass --no-fence)"
            )));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

pub(crate) async fn unfence_db(ctl: &Client) -> Result<()> {
    writable(ctl).await?;
    set_read_only(ctl, false, "lifting the fence").await
}

/// Drop a logical slot, waiting briefly for its walsender to let go.
pub(crate) async fn drop_slot(ctl: &Client, slot: &str) -> Result<()> {
    for _ in 0..100 {
        let row = ctl
            .query_opt(
                "SELECT active, active_pid FROM pg_catalog.pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await
            .map_err(|e| MigrationError::db("looking up the replication slot", e))?;
        match row {
            None => return Ok(()),
            Some(r) if !r.get::<_, bool>(0) => {
                return ctl
                    .execute("SELECT pg_catalog.pg_drop_replication_slot($1)", &[&slot])
                    .await
                    .map(drop)
                    .map_err(|e| MigrationError::db("dropping the replication slot", e));
            }
            Some(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    Err(MigrationError::Config(format!(
        "the replication slot {} is in use by another session: stop the migration using it first",
        quote::ident(slot)
    )))
}

/// Undo on the source what `state` records: slot, publication, replica
/// identities, fence. Idempotent.
pub(crate) async fn undo_source(
    src: &Client,
    state: &mut OnlineState,
    unfence: bool,
) -> Result<()> {
    writable(src).await?;
    remove_capture(src, state).await?;
    if state.slot_created {
        drop_slot(src, &state.slot_name).await?;
        state.slot_created = false;
    }
    if state.publication_created {
        src.batch_execute(&format!(
            "DROP PUBLICATION IF EXISTS {}",
            quote::ident(&state.publication_name)
        ))
        .await
        .map_err(|e| MigrationError::db("dropping the publication", e))?;
        state.publication_created = false;
    }
    preflight::restore_replica_identities(src, &state.replica_identity_fixes).await?;
    if unfence && state.fenced {
        unfence_db(src).await?;
        state.fenced = false;
    }
    Ok(())
}

/// What `cleanup` removed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CleanupReport {
    /// The replication slot dropped (empty when there was none).
    pub slot: String,
    /// The publication dropped (empty when there was none).
    pub publication: String,
    /// Tables whose replica identity was set back to what it was.
    pub replica_identities_restored: usize,
    /// The source's write fence was lifted.
    pub unfenced: bool,
    /// The migration's bookkeeping schema on the target was dropped.
    pub target_bookkeeping_dropped: bool,
}

/// Remove everything an online migration created: the slot and the
/// publication on the source, replica identity changes (source and
/// target), the fence, and our bookkeeping on the target. The resume token
/// is deleted last. Refuses while the migration is still streaming.
pub async fn cleanup(cfg: &MigrationConfig) -> Result<CleanupReport> {
    let def = Definition::from_config(cfg)?;
    let (mut migration_id, dump_path) = crate::resume::work_location(cfg, &def);
    let token_path = ResumeToken::path_for(&dump_path);
    let token = ResumeToken::load(&token_path)?;
    if let Some(t) = &token {
        // Filters and flags need not be repeated; the servers must be the same.
        if t.definition.source != def.source || t.definition.target != def.target {
            return Err(MigrationError::resume_refused(format!(
                "the resume token {} belongs to a migration from {} to {}, not between the servers given: pass the same --source and --target",
                token_path.display(),
                t.definition.source,
                t.definition.target
            )));
        }
        migration_id = t.migration_id.clone();
    }
    // Never beside a live run; a dead one's sessions end first (its
    // walsender would keep the slot, a statement could still commit).
    let _lock = crate::resume::RunLock::acquire(&token_path)?;
    let cfg = &crate::pg::sessions::tagged(cfg, &migration_id);
    crate::pg::sessions::end_earlier_runs(cfg).await?;
    let (slot, publication) = names(&migration_id);
    let mut state = token
        .as_ref()
        .and_then(|t| t.online.clone())
        .unwrap_or_else(|| OnlineState {
            slot_name: slot.clone(),
            publication_name: publication.clone(),
            ..Default::default()
        });
    // Whatever carries our names is ours.
    state.slot_created = true;
    state.publication_created = true;
    state.ddl_capture = true;
    let fixes = state.replica_identity_fixes.clone();
    let was_fenced = state.fenced;
    let src = connect::connect(cfg.source.as_ref().expect("checked"), "source").await?;
    around(Point::CleanupSource, undo_source(&src, &mut state, true)).await?;
    if token.is_none() {
        // Without a record we cannot tell whose a read-only setting is:
        // say so rather than change it.
        let read_only: bool = crate::pg::query_one_once(
            &src,
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_db_role_setting s
                          JOIN pg_catalog.pg_database d ON d.oid = s.setdatabase
                         WHERE d.datname = pg_catalog.current_database() AND s.setrole = 0
                           AND 'default_transaction_read_only=on' = ANY (s.setconfig))",
        )
        .await
        .map_err(|e| MigrationError::db("reading the source database's settings", e))?
        .get(0);
        if read_only {
            crate::recorded::warn_recorded!("the source database is read-only for new sessions (default_transaction_read_only = on) and no resume token says why: if it is a pg_dbmigrator fence, {}", crate::error::Remedy::Unfence);
        }
    }
    let mut dropped = false;
    let target = cfg.target.as_ref().expect("checked");
    match connect::connect(target, "target").await {
        Ok(dst) => {
            faults::before(Point::CleanupTarget).await;
            // A --fallback's reverse slot and publication: whatever carries
            // their names is ours.
            let back = super::reverse::object_name(&state.slot_name);
            let mut fb = crate::resume::FallbackState {
                slot_name: back.clone(),
                publication_name: back,
                slot_created: true,
                publication_created: true,
                ..Default::default()
            };
            super::reverse::remove(&dst, None, &mut fb).await?;
            // And a --fallback's DDL capture on the new server.
            dst.batch_execute(&ddl::remove_sql(&ddl::trigger_name(&fb.slot_name)))
                .await
                .map_err(|e| {
                    MigrationError::db("removing the schema change capture from the target", e)
                })?;
            preflight::restore_replica_identities(&dst, &fixes).await?;
            copy::drop_target_state(&dst).await?;
            faults::after(Point::CleanupTarget).await;
            dropped = true;
        }
        Err(e) => {
            warn!(error = %e, "target not reachable (or its database was never created): nothing to remove there")
        }
    }
    faults::before(Point::CleanupToken).await;
    ResumeToken::remove(&token_path);
    let _ = std::fs::remove_file(crate::resume::cutover_request_path(&dump_path));
    let _ = std::fs::remove_dir_all(dump_path.join("spool"));
    faults::after(Point::CleanupToken).await;
    Ok(CleanupReport {
        slot: state.slot_name,
        publication: state.publication_name,
        replica_identities_restored: fixes.len(),
        unfenced: was_fenced,
        target_bookkeeping_dropped: dropped,
    })
}

/// Lift the write fence of a source database (rollback after a cutover).
pub async fn unfence(source: &EndpointConfig) -> Result<()> {
    let c = connect::connect(source, "source").await?;
    unfence_db(&c).await
}
