//! `--fallback`, an orchestrator: after the cutover, the new server's
//! changes stream back to the old source until `rollback` returns to it or
//! `finish` ends the fallback.
//!
//! Stages, in order: [`start`] at the cutover (reverse publication and
//! slot on the new server while the old source is fenced, see
//! `replication::reverse`); [`run`]: the forward streamer and applier with
//! the endpoints swapped; then either the rollback (the cutover's steps in
//! the opposite direction: fence the new server, drain to its fence,
//! sequences, unlogged tables, large objects, materialized views, remove
//! the reverse objects, unfence the old source) or the finish (remove the
//! reverse objects). Every step is recorded in the resume token first, so
//! `--resume` after a crash continues the stream or the rollback.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_postgres::Client;
use tracing::{error, info};

use crate::config::MigrationConfig;
use crate::context::RunContext;
use crate::copy;
use crate::error::{MigrationError, Result};
use crate::faults::{self, around, Point};
use crate::migrate::CopyPhase;
use crate::pg::{catalog, connect, quote, session};
use crate::progress::human_bytes;
use crate::replication::source::{current_wal, end_other_sessions, fence_db, unfence_db};
use crate::replication::stream::{self, StreamShared, StreamTarget};
use crate::replication::{ddl, preflight, reverse, Lsn, FENCE_MESSAGE_PREFIX};
pub use crate::report::FallbackSummary;
use crate::resume::{request_path, CutoverRecord, FallbackState, TokenStore};

fn state_of(store: &TokenStore) -> Option<FallbackState> {
    store.snapshot().online.and_then(|o| o.fallback)
}

fn save(store: &TokenStore, st: &FallbackState) -> Result<()> {
    store.update(|t| {
        if let Some(o) = t.online.as_mut() {
            o.fallback = Some(st.clone());
        }
    })
}

const CONTROL_DOWN: &str =
    "cannot read the new server's WAL position; reconnecting the control session";

/// A session for control statements on either server, writable even when
/// its database is fenced.
async fn control(ep: &crate::config::EndpointConfig, label: &str) -> Result<Client> {
    let c = connect::connect(ep, label).await?;
    session::setup_source(&c).await?;
    c.batch_execute("SET default_transaction_read_only = off; SET statement_timeout = 0")
        .await
        .map_err(|e| MigrationError::db(format!("configuring a {label} control session"), e))?;
    Ok(c)
}

/// At the cutover, under the fence: create the reverse direction.
pub(crate) async fn start(
    cfg: &MigrationConfig,
    phase: &CopyPhase,
    dst: &Client,
    src: &Client,
    slot: &str,
) -> Result<()> {
    let store = &phase.store;
    let mut st = state_of(store).unwrap_or_else(|| FallbackState {
        slot_name: reverse::object_name(slot),
        publication_name: reverse::object_name(slot),
        ..Default::default()
    });
    let tables = reverse::tables(dst, &phase.filters).await?;
    reverse::create(
        &phase.target,
        dst,
        src,
        &tables,
        &phase.migration_id,
        &mut st,
        &mut |s| save(store, s),
    )
    .await?;
    // Schema changes on the new server stream back too, when it allows
    // capture (nobody writes there before the cutover ends).
    let whole = phase.filters == crate::config::filter::CompiledFilters::default();
    match ddl::capture_possible(dst, whole, cfg.data_only).await? {
        Ok(()) => {
            st.ddl_capture = true;
            save(store, &st)?;
            dst.batch_execute(&ddl::install_sql(
                &st.publication_name,
                &ddl::trigger_name(&st.slot_name),
            ))
            .await
            .map_err(|e| {
                MigrationError::db("installing the schema change capture on the new server", e)
            })?;
        }
        Err(why) => {
            crate::recorded::warn_recorded!("schema changes on the new server cannot be captured during the fallback ({why}): keep its schema frozen until `rollback` or `finish`");
        }
    }
    Ok(())
}

/// Whether the replication slot `slot` exists on the server of `c`.
async fn slot_exists(c: &Client, slot: &str) -> Result<bool> {
    Ok(c.query_opt(
        "SELECT 1 FROM pg_catalog.pg_replication_slots WHERE slot_name = $1",
        &[&slot],
    )
    .await
    .map_err(|e| MigrationError::db("looking up the fallback's replication slot", e))?
    .is_some())
}

/// Remove our DDL capture from the new server.
async fn remove_capture(tctl: &Client, st: &mut FallbackState) -> Result<()> {
    if st.ddl_capture {
        tctl.batch_execute(&ddl::remove_sql(&ddl::trigger_name(&st.slot_name)))
            .await
            .map_err(|e| {
                MigrationError::db("removing the schema change capture from the new server", e)
            })?;
        st.ddl_capture = false;
    }
    Ok(())
}

/// Whether this migration's fallback is under way (the cutover is done,
/// the reverse stream not ended).
pub(crate) fn active(store: &TokenStore) -> bool {
    state_of(store).is_some_and(|f| !f.ended && f.start_lsn.is_some())
}

/// Stream back until `rollback` or `finish` is asked (or a resumed
/// rollback is due), then do it.
pub(crate) async fn run(
    cfg: &MigrationConfig,
    phase: &CopyPhase,
    run: &RunContext,
) -> Result<FallbackSummary> {
    let store = phase.store.clone();
    let cancel = run.cancel.clone();
    let mut st = state_of(&store).ok_or_else(|| {
        MigrationError::Internal("no fallback is recorded in the resume token".into())
    })?;
    let shared = Arc::new(StreamShared::default());
    let target = StreamTarget {
        source: phase.target.clone(),
        target: phase.source.clone(),
        slot: st.slot_name.clone(),
        publication: st.publication_name.clone(),
        migration_id: reverse::progress_id(&phase.migration_id),
        spool_dir: phase.dump_path.join("spool_back"),
    };
    let rollback_file = request_path(&phase.dump_path, "rollback");
    let finish_file = request_path(&phase.dump_path, "finish");
    // A rollback a crash interrupted is finished first.
    let mut want_rollback = st
        .rollback
        .as_ref()
        .is_some_and(|r| r.started_at.is_some() && !r.completed);
    let mut want_finish = st.finishing;
    let mut tctl = control(&phase.target, "target").await?;
    let seat = run.cluster.as_deref();
    if want_rollback && seat.is_some_and(|s| !s.rollback_passed()) {
        // A whole cluster's rollback killed before every database was
        // drained back: nothing irreversible happened here. The new
        // server's fence is lifted and the stream goes on until the
        // cluster asks every database for its rollback again.
        want_rollback = false;
        unfence_db(&tctl).await?;
        info!("the cluster's interrupted rollback had not passed its barrier: the new server's fence is lifted and the fallback stream goes on until the cluster rolls back again");
    }
    // A run killed after the reverse slot's removal and before its record:
    // nothing was lost if the removal came after the drain to the fence
    // (a rollback's, or a finish's); otherwise the slot vanished while it
    // held the new server's changes.
    if st.slot_created && !slot_exists(&tctl, &st.slot_name).await? {
        let drained = st.finishing || st.rollback.as_ref().is_some_and(|r| r.drained);
        if !drained {
            return Err(MigrationError::resume_refused(format!(
                "the fallback's replication slot {} is missing on the new server: its changes since the cutover cannot be streamed back. \
                 Copy them to the old source yourself, or keep the new server",
                quote::ident(&st.slot_name)
            )));
        }
        info!(slot = %st.slot_name, "the reverse slot was already removed after the drain; finishing");
        st.slot_created = false;
        save(&store, &st)?;
    }
    let mut stop = cancel.child_token();
    // A slot already removed (a crash late in a rollback or finish) has
    // nothing left to stream: everything before its removal was drained.
    let mut streamer = st.slot_created.then(|| {
        tokio::spawn(crate::recorded::carried(stream::run(
            target.clone(),
            shared.clone(),
            stop.clone(),
        )))
    });
    info!(
        "fallback: streaming the new server's changes back to the old source; `pg_dbmigrator rollback --dump-path {d}` returns to it, `pg_dbmigrator finish --dump-path {d}` ends the fallback",
        d = phase.dump_path.display()
    );
    let started = Instant::now();
    let mut last_log = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut ctl_outage = connect::Outage::default();
    let mut ctl_retry_at: Option<Instant> = None;
    loop {
        if want_rollback {
            want_rollback = false;
            let _ = std::fs::remove_file(&rollback_file);
            match rollback(
                cfg,
                phase,
                &mut st,
                &tctl,
                &shared,
                &mut stop,
                &mut streamer,
                seat,
            )
            .await
            {
                Ok(downtime) => {
                    return Ok(FallbackSummary {
                        ended_by: "rollback".into(),
                        rollback_downtime_seconds: Some(downtime),
                        transactions_streamed_back: shared.transactions.load(Ordering::Acquire),
                    })
                }
                Err(e) => {
                    run.error(format!("rollback failed; the new server's fence is lifted and the fallback stream goes on. Fix the cause, then run `pg_dbmigrator rollback --dump-path {}` again: {e}", phase.dump_path.display()));
                    if let Err(u) = unfence_db(&tctl).await {
                        error!(error = %u, "lifting the new server's fence failed: run `pg_dbmigrator unfence --source <the new server>`");
                    }
                    if let Some(s) = seat {
                        s.rollback_settled();
                    }
                    let msg = e.to_string();
                    if let Some(r) = st.rollback.as_mut() {
                        r.error = Some(msg);
                    }
                    save(&store, &st)?;
                    shared.eager.store(false, Ordering::Release);
                    if streamer.is_none() && st.slot_created {
                        stop = cancel.child_token();
                        streamer = Some(tokio::spawn(crate::recorded::carried(stream::run(
                            target.clone(),
                            shared.clone(),
                            stop.clone(),
                        ))));
                    }
                    continue;
                }
            }
        }
        if want_finish || finish_file.exists() {
            info!("finish requested: ending the fallback");
            st.finishing = true;
            save(&store, &st)?;
            stop.cancel();
            if let Some(h) = streamer.take() {
                let _ = h.await;
            }
            let src = control(&phase.source, "source").await?;
            faults::before(Point::RemoveReverse).await;
            remove_capture(&tctl, &mut st).await?;
            reverse::remove(&tctl, Some(&src), &mut st).await?;
            faults::after(Point::RemoveReverse).await;
            save(&store, &st)?;
            let fixes = store
                .snapshot()
                .online
                .map(|o| o.replica_identity_fixes)
                .unwrap_or_default();
            preflight::restore_replica_identities(&tctl, &fixes).await?;
            st.ended = true;
            faults::before(Point::FallbackEnd).await;
            save(&store, &st)?;
            faults::after(Point::FallbackEnd).await;
            let _ = std::fs::remove_file(&finish_file);
            info!("fallback finished: nothing of ours is left on either server");
            return Ok(FallbackSummary {
                ended_by: "finish".into(),
                rollback_downtime_seconds: None,
                transactions_streamed_back: shared.transactions.load(Ordering::Acquire),
            });
        }
        tokio::select! {
            _ = cancel.cancelled() => {
                stop.cancel();
                if let Some(h) = streamer.take() { let _ = h.await; }
                info!("stopped during the fallback; the reverse slot is kept: continue with --resume, or remove everything with `pg_dbmigrator cleanup`");
                return Err(MigrationError::Cancelled);
            }
            r = async { streamer.as_mut().expect("streaming").await }, if streamer.is_some() => {
                return Err(match r {
                    Ok(Err(e)) => e,
                    Ok(Ok(())) => MigrationError::Internal("the fallback stream stopped unexpectedly".into()),
                    Err(e) => MigrationError::Internal(format!("fallback streaming task failed: {e}")),
                });
            }
            _ = tick.tick() => {}
        }
        if rollback_file.exists() {
            info!("rollback requested");
            want_rollback = true;
            continue;
        }
        if finish_file.exists() {
            want_finish = true;
            continue;
        }
        // Reverse lag: the new server's WAL position minus what the old
        // source has applied.
        // While the new server cannot be reached: backoff, and said once
        // (and every so often), not at every tick.
        if let Some(at) = ctl_retry_at {
            if Instant::now() < at {
                continue;
            }
            ctl_retry_at = None;
            match control(&phase.target, "target").await {
                Ok(c) => tctl = c,
                Err(e) => {
                    ctl_retry_at = Some(Instant::now() + ctl_outage.note(&e, CONTROL_DOWN));
                    continue;
                }
            }
        }
        let wal = match current_wal(&tctl).await {
            Ok(l) => {
                if let Some((down, attempts)) = ctl_outage.recovered() {
                    info!(down_for = ?down, attempts, "the new server's WAL position can be read again");
                }
                l
            }
            Err(e) => {
                ctl_retry_at = Some(Instant::now() + ctl_outage.note(&e, CONTROL_DOWN));
                continue;
            }
        };
        let applied = shared.applied_position();
        let lag = wal.0.saturating_sub(applied.0);
        match (seat, &run.progress) {
            // The cluster publishes its most lagging database's.
            (Some(s), _) => s.set_online(|o| o.fallback_lag_bytes = Some(lag)),
            (None, Some(p)) => p.set_online(|o| o.fallback_lag_bytes = Some(lag)),
            (None, None) => {}
        }
        if last_log.elapsed() >= Duration::from_secs(10) {
            last_log = Instant::now();
            let secs = started.elapsed().as_secs_f64().max(0.001);
            let tx = shared.transactions.load(Ordering::Acquire);
            info!(lag = %human_bytes(lag), applied = %applied, transactions = tx, tx_per_s = format!("{:.0}", tx as f64 / secs), "fallback streaming");
        }
    }
}

/// The cutover in the opposite direction. Returns the write downtime. In
/// a whole cluster (`seat`), every database's rollback passes the
/// cluster's barrier between its reversible steps and its irreversible
/// ones (reverse slot removed, old source unfenced), so that either every
/// database returns to the old server or none does.
#[allow(clippy::too_many_arguments)]
async fn rollback(
    cfg: &MigrationConfig,
    phase: &CopyPhase,
    st: &mut FallbackState,
    tctl: &Client,
    shared: &Arc<StreamShared>,
    stop: &mut tokio_util::sync::CancellationToken,
    streamer: &mut Option<tokio::task::JoinHandle<Result<()>>>,
    seat: Option<&crate::context::ClusterSeat>,
) -> Result<f64> {
    let mut ticket = seat.and_then(|s| s.rollback_ticket());
    if let Some(t) = &ticket {
        // A database's own rollback request, outside the cluster's round,
        // is refused before its fence.
        t.joinable()?;
    }
    let r = rollback_steps(
        cfg,
        phase,
        st,
        tctl,
        shared,
        stop,
        streamer,
        seat,
        &mut ticket,
    )
    .await;
    if let (Err(e), Some(t)) = (&r, ticket.take()) {
        // The others stop waiting, told why.
        t.fail(e);
    }
    r
}

/// [`rollback`]'s steps; `ticket` is taken at the cluster's barrier.
#[allow(clippy::too_many_arguments)]
async fn rollback_steps(
    cfg: &MigrationConfig,
    phase: &CopyPhase,
    st: &mut FallbackState,
    tctl: &Client,
    shared: &Arc<StreamShared>,
    stop: &mut tokio_util::sync::CancellationToken,
    streamer: &mut Option<tokio::task::JoinHandle<Result<()>>>,
    seat: Option<&crate::context::ClusterSeat>,
    ticket: &mut Option<crate::context::ClusterTicket>,
) -> Result<f64> {
    let store = &phase.store;
    let r = st.rollback.get_or_insert_with(CutoverRecord::default);
    r.started_at.get_or_insert_with(chrono::Utc::now);
    r.error = None;
    r.attempts += 1;
    save(store, st)?;
    // (1) Fence the new server.
    let fenced_at = Instant::now();
    if let Some(t) = ticket.as_ref() {
        t.fenced(fenced_at);
    }
    around(Point::RollbackFence, fence_db(tctl)).await?;
    tokio::time::sleep(Duration::from_millis(50)).await;
    end_other_sessions(tctl).await?;
    info!("new server fenced: read-only for every other session");
    // (2) Drain the reverse stream to the fence.
    faults::before(Point::RollbackDrain).await;
    if let Some(h) = streamer.take() {
        shared.eager.store(true, Ordering::Release);
        shared.wake();
        shared.marker_end.store(0, Ordering::Release);
        let before = current_wal(tctl).await?;
        let id = format!(
            "{} rollback {}",
            phase.migration_id,
            chrono::Utc::now().timestamp_micros()
        );
        tctl.query_one(
            "SELECT pg_catalog.pg_logical_emit_message(true, $1, $2)::text",
            &[&FENCE_MESSAGE_PREFIX, &id],
        )
        .await
        .map_err(|e| {
            MigrationError::db("writing the rollback fence marker on the new server", e)
        })?;
        let done = || {
            let marker = Lsn(shared.marker_end.load(Ordering::Acquire));
            marker > before && Lsn(shared.durable.load(Ordering::Acquire)) >= marker
        };
        if let Some(h) = stream::drain(h, stop, Duration::from_secs(300), done).await? {
            *streamer = Some(h);
            return Err(MigrationError::Internal(
                "the old source did not catch up with the new server's fence within 5 minutes"
                    .into(),
            ));
        }
        info!("drained the new server's changes to its fence");
        if let Some(r) = st.rollback.as_mut() {
            r.drained = true;
        }
        save(store, st)?;
    }
    faults::after(Point::RollbackDrain).await;
    let src = control(&phase.source, "source").await?;
    // Tables created on the new server that could not stream back.
    if st.ddl_capture {
        let guard = crate::resume::OnlineState {
            ddl_capture: true,
            ..Default::default()
        };
        ddl::cutover_guard(tctl, &src, &guard, None, true).await?;
    }
    // (3) Sequences, unlogged tables, large objects, materialized views.
    faults::before(Point::RollbackCopyBack).await;
    let seqs = catalog::list_sequences(tctl, &phase.filters).await?;
    let nseq = copy::copy_sequences(tctl, &src, &seqs).await?;
    info!(sequences = nseq, "sequences copied back");
    let unlogged_names = catalog::unlogged_tables(tctl).await?;
    let unlogged: Vec<_> = catalog::list_tables(tctl, &phase.filters)
        .await?
        .into_iter()
        .filter(|t| unlogged_names.contains(&t.qualified()))
        .collect();
    copy::recopy_unlogged(tctl, &src, &unlogged).await?;
    if cfg.large_objects {
        let n = copy::recopy_large_objects(tctl, &src, true).await?;
        if n > 0 {
            info!(large_objects = n, "large objects copied back");
        }
    }
    copy::refresh_matviews(&src).await?;
    faults::after(Point::RollbackCopyBack).await;
    if let Some(t) = ticket.take() {
        info!("waiting for the cluster's other databases to reach the rollback barrier");
        t.arrive_ok().await?;
        info!("every database of the cluster is drained back: returning to the old servers");
    }
    // (4) Remove the reverse objects, restore identities, open the old source.
    faults::before(Point::RemoveReverse).await;
    remove_capture(tctl, st).await?;
    reverse::remove(tctl, Some(&src), st).await?;
    faults::after(Point::RemoveReverse).await;
    save(store, st)?;
    let fixes = store
        .snapshot()
        .online
        .map(|o| o.replica_identity_fixes)
        .unwrap_or_default();
    preflight::restore_replica_identities(tctl, &fixes).await?;
    around(Point::Unfence, unfence_db(&src)).await?;
    let downtime = fenced_at.elapsed().as_secs_f64();
    if let Some(s) = seat {
        s.rollback_ended(Instant::now());
    }
    if let Some(r) = st.rollback.as_mut() {
        r.completed = true;
        r.downtime_seconds = Some(downtime);
    }
    st.ended = true;
    faults::before(Point::FallbackEnd).await;
    save(store, st)?;
    faults::after(Point::FallbackEnd).await;
    store.update(|t| {
        if let Some(o) = t.online.as_mut() {
            o.fenced = false;
        }
    })?;
    info!(
        downtime = format!("{downtime:.3}s"),
        "rollback done: the old source is writable again and has every write of the new server; the new server stays read-only (`pg_dbmigrator unfence --source <new server>` lifts it)"
    );
    Ok(downtime)
}
