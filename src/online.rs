//! The online migration, an orchestrator: preflight, publication and slot
//! (`replication::source`), a copy of the slot's snapshot (the offline
//! stages, `migrate::copy_phase`), streaming until cutover, the cutover
//! itself. `cleanup` and `unfence` are re-exported from
//! `replication::source`, which owns every change made on the source.
//!
//! Everything created or changed on the source is recorded in the resume
//! token *before* it is made, so a crash at any point leaves a record that
//! `--resume` or `cleanup` can finish. Resume rules: a slot whose copy did
//! not finish is useless (its snapshot died with the session), so the run
//! starts over from a new slot; after the copy, streaming continues from
//! the progress stored on the target; a cutover that was interrupted is
//! finished.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::config::{CutoverMode, MigrationConfig};
use crate::context::RunContext;
use crate::copy;
use crate::error::{MigrationError, Result};
use crate::faults::{self, around, Point};
use crate::migrate::{self, CopyPhase};
use crate::pg::catalog::{self, TableInfo};
use crate::pg::{connect, quote};
use crate::progress::human_bytes;
use crate::replication::ddl;
use crate::replication::preflight::{self};
pub use crate::replication::source::{cleanup, unfence, CleanupReport};
use crate::replication::source::{
    control, current_wal, drop_slot, end_other_sessions, fence_db, fingerprint_scope, names,
    remove_capture, undo_source, unfence_db, OnlinePrep,
};
use crate::replication::stream::{self, StreamShared, StreamTarget};
use crate::replication::{Lsn, FENCE_MESSAGE_PREFIX};
use crate::report::{ApplySummary, CutoverSummary, MigrationReport, OnlineReport};
pub use crate::resume::cutover_request_path as request_path;
use crate::resume::{CutoverRecord, Definition, OnlineState, ResumeToken, Stage};

use crate::context::{ClusterSeat, ClusterTicket};
pub use crate::context::{CutoverHandle, CutoverSignal};

/// An online migration from start (or resume) to the end of the cutover.
pub(crate) async fn run(cfg: &MigrationConfig, run: &RunContext) -> Result<MigrationReport> {
    cfg.validate()?;
    let def = Definition::from_config(cfg)?;
    let (migration_id, dump_path) = crate::resume::work_location(cfg, &def);
    let token_path = ResumeToken::path_for(&dump_path);
    let (slot_name, publication_name) = names(&migration_id);
    if let Some(t) = crate::resume::completed_token(cfg, &def, &token_path)? {
        info!(token = %token_path.display(), "the migration had completed; nothing left to do");
        return Ok(MigrationReport::already_complete(&t, token_path));
    }
    let (existing, resumed) = crate::resume::resolve_token(cfg, &def, &token_path, "migration")?;
    let source_ep = cfg.source.clone().expect("checked by Definition");
    // A killed run's sessions (its walsender holding the slot, a statement
    // still committing) end before this run touches anything.
    around(
        Point::EndEarlierRuns,
        crate::pg::sessions::end_earlier_runs(cfg),
    )
    .await?;

    let mut prep = OnlinePrep {
        state: OnlineState {
            slot_name: slot_name.clone(),
            publication_name: publication_name.clone(),
            ..Default::default()
        },
        ..Default::default()
    };
    let mut copy_cfg = cfg.clone();
    let mut streaming_resume = false;
    if cfg.force_clean {
        // Start over: whatever an earlier attempt left on the source goes first.
        let old = ResumeToken::load(&token_path).ok().flatten();
        let mut state = old
            .and_then(|t| t.online)
            .unwrap_or_else(|| prep.state.clone());
        state.slot_name = slot_name.clone();
        state.publication_name = publication_name.clone();
        state.slot_created = true;
        state.publication_created = true;
        let src = connect::connect(&source_ep, "source").await?;
        undo_source(&src, &mut state, true).await?;
    } else if resumed {
        let t = existing.expect("resumed");
        let state = t.online.clone().unwrap_or_else(|| prep.state.clone());
        // The copy is complete once its last stage is recorded: the slot's
        // consistent point is all streaming needs from then on.
        if t.stages.iter().any(|s| s.stage == Stage::Stream) || t.is_done(Stage::LargeObjects) {
            streaming_resume = true;
            prep.state = state;
        } else {
            // The copy did not finish: its snapshot died with the slot's
            // session. Never pair the old slot with a new snapshot.
            run.warn("the copy had not finished: dropping the old slot, cleaning the target and starting over from a new slot");
            let src = connect::connect(&source_ep, "source").await?;
            let mut state = state;
            drop_slot(&src, &state.slot_name).await?;
            state.slot_created = false;
            state.consistent_point = None;
            prep.state = state;
            copy_cfg.resume = false;
            copy_cfg.force_clean = true;
        }
    }

    // The apply session's privileges, before anything is created. A target
    // database that does not exist yet is created by us (and so ours).
    match connect::connect(cfg.target.as_ref().expect("checked"), "target").await {
        Ok(dst) => {
            preflight::check_target(&dst).await?;
            if cfg.fallback {
                preflight::check_fallback_target(&dst).await?;
            }
        }
        Err(e) if e.sqlstate() == Some("3D000") => {
            if cfg.fallback {
                // The server's settings, through its maintenance database.
                let ep = cfg.target.as_ref().expect("checked");
                let c = crate::pg::connect::connect_server(ep, "target").await?;
                preflight::check_fallback_target(&c).await?;
            }
        }
        Err(e) => return Err(e),
    }

    let (phase, consistent_point) = if streaming_resume {
        let phase = resume_phase(cfg, &migration_id, &dump_path, &token_path, run).await?;
        let cp = prep.state.consistent_point;
        (phase, cp)
    } else {
        let mut r = migrate::copy_phase(&copy_cfg, run, Some(&mut prep)).await;
        if let Err(MigrationError::SnapshotLost {
            copied_any: false,
            message,
            ..
        }) = &r
        {
            if !cfg.strict_snapshot {
                // Nothing was copied on the lost snapshot: a new slot and
                // its snapshot lose nothing (as a resume would do).
                run.warn(format!("the copy's snapshot was lost before anything was copied ({message}): dropping the slot and starting over from a new one"));
                let src = connect::reconnect(&source_ep, "source", &run.cancel).await?;
                drop_slot(&src, &prep.state.slot_name).await?;
                prep.state.slot_created = false;
                prep.state.consistent_point = None;
                copy_cfg.resume = false;
                copy_cfg.force_clean = true;
                r = migrate::copy_phase(&copy_cfg, run, Some(&mut prep)).await;
            }
        }
        match r {
            Ok(p) => {
                let cp = prep.state.consistent_point;
                (p, cp)
            }
            Err(e) => {
                // Refused before the copy began: undo what this run created.
                let copy_began = ResumeToken::load(&token_path)
                    .ok()
                    .flatten()
                    .is_some_and(|t| t.stages.iter().any(|s| s.stage == Stage::CopyData));
                if prep.created_now && !copy_began && !matches!(e, MigrationError::Cancelled) {
                    if let Ok(src) = connect::connect(&source_ep, "source").await {
                        if undo_source(&src, &mut prep.state, true).await.is_ok() {
                            ResumeToken::remove(&token_path);
                        }
                    }
                }
                return Err(e);
            }
        }
    };
    let consistent_point = consistent_point.ok_or_else(|| {
        MigrationError::resume_refused(format!(
            "the resume token {} records no slot position",
            token_path.display()
        ))
        .with_remedy(crate::error::Remedy::ForceClean)
    })?;
    stream_and_cutover(cfg, phase, prep, consistent_point, run).await
}

/// The state of a migration whose copy finished, rebuilt for streaming.
async fn resume_phase(
    cfg: &MigrationConfig,
    migration_id: &str,
    dump_path: &std::path::Path,
    token_path: &std::path::Path,
    run: &RunContext,
) -> Result<CopyPhase> {
    let token = ResumeToken::load(token_path)?.expect("resumed");
    let source = cfg.source.clone().expect("checked");
    let target = cfg.target.clone().expect("checked");
    let src = connect::connect(&source, "source").await?;
    // A run killed after closing the target database at its end.
    crate::target::reopen(&target).await?;
    let dst = connect::connect(&target, "target").await?;
    let filters = cfg.filters.compile()?;
    let seqs = catalog::list_sequences(&src, &filters).await?;
    let database_limits = token.database_limits;
    Ok(CopyPhase {
        started: Instant::now(),
        migration_id: migration_id.to_string(),
        dump_path: dump_path.to_path_buf(),
        token_path: token_path.to_path_buf(),
        resumed: true,
        snapshot_id: token.snapshot_name.clone().unwrap_or_default(),
        source_version: catalog::server_version_num(&src).await?,
        target_version: catalog::server_version_num(&dst).await?,
        schema_notes: Vec::new(),
        results: Vec::new(),
        skipped: token.copied.keys().cloned().collect(),
        sequences: seqs.len(),
        large_objects: 0,
        large_object_bytes: 0,
        schema_steps: 0,
        stages: Vec::new(),
        store: Arc::new(crate::resume::TokenStore::observed(
            crate::resume::TokenStore::new(token_path.to_path_buf(), token),
            run.token_observer(),
        )),
        filters,
        source,
        target,
        database_limits,
        // Online copies are always one point in time (the slot's).
        snapshot_note: None,
        statistics: None,
        pressure: None,
    })
}

async fn stream_and_cutover(
    cfg: &MigrationConfig,
    mut phase: CopyPhase,
    prep: OnlinePrep,
    consistent_point: Lsn,
    run: &RunContext,
) -> Result<MigrationReport> {
    let (cancel, signal) = (run.cancel.clone(), &*run.cutover);
    // The copy is over: a cutover request is taken from now on (the loop
    // below starts it), where before it was refused.
    signal.set_streaming(true);
    let store = phase.store.clone();
    let state = prep.state.clone();
    let dst = connect::connect(&phase.target, "target").await?;
    // A resumed --fallback may have its capture on the new server already:
    // what we run there is never captured.
    no_capture(&dst).await?;
    // The copy is durable: streaming starts at the slot's consistent point.
    if !store.snapshot().is_done(Stage::Stream) {
        faults::before(Point::StreamStart).await;
        copy::prepare_target_state(&dst).await?;
        let start =
            crate::replication::apply::init_progress(&dst, &phase.migration_id, consistent_point)
                .await?;
        faults::after(Point::StreamStart).await;
        store.update(|t| t.stage_started(Stage::Stream))?;
        info!(start = %start, "copy finished; streaming changes from the slot");
    }
    // Resumed after the cutover, during a --fallback: only the reverse
    // stream (or its interrupted rollback) remains.
    let cut_record = store.snapshot().online.and_then(|o| o.cutover);
    // The report of a run whose cutover completed before it was resumed.
    let after_cutover = |c: CutoverRecord, fallback| OnlineReport {
        slot: state.slot_name.clone(),
        publication: state.publication_name.clone(),
        cutover: CutoverSummary {
            fence_lsn: c.fence_lsn.map(|l| l.to_string()),
            downtime_seconds: c.downtime_seconds.unwrap_or_default(),
            fenced: cfg.fence,
        },
        apply: ApplySummary::default(),
        replica_identity_fixes: state.replica_identity_fixes.clone(),
        fallback,
    };
    if cut_record.as_ref().is_some_and(|c| c.completed) && crate::fallback::active(&store) {
        let fallback = Some(crate::fallback::run(cfg, &phase, run).await?);
        let online = after_cutover(cut_record.unwrap_or_default(), fallback);
        return finish_report(cfg, phase, online, &cancel).await;
    }
    // Resumed after the fallback ended (its rollback or finish recorded):
    // verify, the seal and the record are left.
    let ended = store
        .snapshot()
        .online
        .and_then(|o| o.fallback)
        .filter(|f| f.ended);
    if let (Some(c), Some(fb)) = (cut_record.clone().filter(|c| c.completed), ended) {
        let rolled_back = fb.rollback.as_ref().is_some_and(|r| r.completed);
        info!(
            ended_by = if rolled_back { "rollback" } else { "finish" },
            "the fallback had ended; finishing the migration"
        );
        let summary = crate::report::FallbackSummary {
            ended_by: if rolled_back { "rollback" } else { "finish" }.into(),
            rollback_downtime_seconds: fb.rollback.and_then(|r| r.downtime_seconds),
            transactions_streamed_back: 0,
        };
        let online = after_cutover(c, Some(summary));
        return finish_report(cfg, phase, online, &cancel).await;
    }
    // Resumed after the cutover completed (killed before the migration's
    // record): what the handover had not yet removed from the source (the
    // slot, the publication, replica identities), verify, the seal and the
    // record are left. (With --fallback the reverse stream's end decides
    // what verify means: not handled here.)
    if cut_record.as_ref().is_some_and(|c| c.completed) && !cfg.fallback {
        info!("the cutover had completed; finishing the migration");
        // What the handover left to remove from the source, if it was
        // interrupted there.
        after_handover(cfg, &phase, None, &cancel).await?;
        let online = after_cutover(cut_record.unwrap_or_default(), None);
        return finish_report(cfg, phase, online, &cancel).await;
    }
    let cut_record = cut_record.filter(|c| c.started_at.is_some() && !c.completed);
    let cutover_interrupted = cut_record.is_some();

    let mut ctl = control(&phase.source).await?;
    let source_version = catalog::server_version_num(&ctl).await?;
    // The slot must still be there, and usable: otherwise changes since the
    // snapshot are lost.
    let slot_ok: Option<(bool, Option<String>)> = ctl
        .query_opt(
            "SELECT true, wal_status FROM pg_catalog.pg_replication_slots WHERE slot_name = $1",
            &[&state.slot_name],
        )
        .await
        .map_err(|e| MigrationError::db("looking up the replication slot", e))?
        .map(|r| (r.get(0), r.get(1)));
    let slot_gone = !matches!(&slot_ok, Some((_, s)) if s.as_deref() != Some("lost"));
    // An interrupted cutover may have dropped the slot already: that is
    // fine when the token says so, or when it records the drain to the
    // fence (the slot's drop comes after it, and nothing the slot held
    // past the fence exists while the source is fenced). Otherwise the
    // slot vanished while it still held changes: those are lost.
    let dropped_by_cutover = !state.slot_created || cut_record.as_ref().is_some_and(|c| c.drained);
    let dropped_by_cutover = cutover_interrupted && dropped_by_cutover;
    if slot_gone && !dropped_by_cutover {
        return Err(MigrationError::resume_refused(format!(
            "the replication slot {} is missing or lost on the source: the changes made since the copy cannot be recovered",
            quote::ident(&state.slot_name)
        ))
        .with_remedy(crate::error::Remedy::ForceClean));
    }

    let shared = Arc::new(StreamShared::default());
    let target = StreamTarget {
        source: phase.source.clone(),
        target: phase.target.clone(),
        slot: state.slot_name.clone(),
        publication: state.publication_name.clone(),
        migration_id: phase.migration_id.clone(),
        spool_dir: phase.dump_path.join("spool"),
    };
    let stream_started = Instant::now();
    let mut stop = cancel.child_token();
    let mut streamer = if slot_gone {
        None
    } else {
        Some(tokio::spawn(crate::recorded::carried(stream::run(
            target.clone(),
            shared.clone(),
            stop.clone(),
        ))))
    };
    let request_file = request_path(&phase.dump_path);
    let mut mode = cfg.cutover;
    let mut below_since: Option<Instant> = None;
    let mut last_log = Instant::now();
    let mut want_cutover = cutover_interrupted;
    if cutover_interrupted && run.cluster.as_ref().is_some_and(|s| !s.passed()) {
        // A whole cluster's cutover that was killed before every database
        // reached its barrier: nothing irreversible happened anywhere. The
        // fence is lifted; the cluster cuts over again as a whole.
        want_cutover = false;
        let _ = store.update(|t| {
            if let Some(c) = t.online.as_mut().and_then(|o| o.cutover.as_mut()) {
                c.drained = false;
            }
        });
        if cfg.fence {
            unfence_db(&ctl).await?;
            store.update(|t| {
                if let Some(o) = t.online.as_mut() {
                    o.fenced = false;
                }
            })?;
        }
        info!("the cluster's interrupted cutover had not handed over: the fence is lifted and streaming goes on until the cluster cuts over again");
    }
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut ctl_outage = crate::pg::connect::Outage::default();
    let mut ctl_retry_at: Option<Instant> = None;
    // Test hook: stream at least this long before an automatic cutover.
    let min_stream = Duration::from_secs(
        std::env::var("PG_DBMIGRATOR_TEST_MIN_STREAM_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
    );
    // `--source-pressure` while streaming: reported only. The stream
    // holds no table locks on the source, and holding back the apply
    // would only make the slot retain more WAL (and the cutover come
    // later). Stopped before each cutover attempt, whose fence ends every
    // other session of the database (the sampler's too), and started
    // again when an attempt fails and streaming goes on.
    let stream_watch = cfg
        .source_pressure
        .clone()
        .filter(|_| !slot_gone)
        .map(|thresholds| copy::pressure::Watch {
            thresholds,
            source: phase.source.clone(),
            slot: Some(state.slot_name.clone()),
        });
    let start_governor = || {
        stream_watch
            .as_ref()
            .map(|w| copy::pressure::Governor::start(w, false, run.progress.clone(), &cancel))
    };
    let mut governor = start_governor();
    let mut stream_pressure = crate::progress::PressureSummary::default();
    let outcome = loop {
        if want_cutover {
            want_cutover = false;
            let _ = std::fs::remove_file(&request_file);
            if let Some(g) = governor.take() {
                stream_pressure.add(&g.finish(&cancel).await);
            }
            match cutover(
                cfg,
                &phase,
                &prep,
                &mut ctl,
                &shared,
                &mut stop,
                &mut streamer,
                source_version,
                run.cluster.as_deref(),
            )
            .await
            {
                Ok(c) => {
                    signal.set_streaming(false);
                    signal.attempt_ended(Ok(crate::context::CutoverDone {
                        downtime: Duration::from_secs_f64(c.downtime.max(0.0)),
                        fence_lsn: c.fence_lsn.map(|l| l.to_string()),
                    }));
                    break c;
                }
                Err(e) => {
                    if run.cluster.is_some() {
                        run.error(format!("cutover failed; the fence is lifted and streaming goes on (the cluster cuts over again as a whole): {e}"));
                    } else {
                        run.error(format!("cutover failed; the fence is lifted and streaming goes on. Fix the cause, then run `pg_dbmigrator cutover --dump-path {}` again: {e}", phase.dump_path.display()));
                    }
                    let msg = e.to_string();
                    let _ = store.update(|t| {
                        if let Some(o) = t.online.as_mut() {
                            o.cutover.get_or_insert_with(Default::default).error =
                                Some(msg.clone());
                        }
                    });
                    signal.attempt_ended(Err(crate::context::CutoverError::Failed(Arc::new(e))));
                    mode = CutoverMode::Manual;
                    governor = start_governor();
                    if streamer.is_none() {
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
        tokio::select! {
            _ = cancel.cancelled() => {
                stop.cancel();
                if let Some(h) = streamer.take() { let _ = h.await; }
                info!(slot = %state.slot_name, "stopped before cutover; the slot is kept: continue with --resume, or remove everything with `pg_dbmigrator cleanup`");
                return Err(MigrationError::Cancelled);
            }
            r = async { streamer.as_mut().expect("streaming").await }, if streamer.is_some() => {
                return Err(match r {
                    Ok(Err(e)) => e,
                    Ok(Ok(())) => MigrationError::Internal("streaming stopped unexpectedly".into()),
                    Err(e) => MigrationError::Internal(format!("streaming task failed: {e}")),
                });
            }
            _ = signal.notified() => {}
            _ = tick.tick() => {}
        }
        if run.cluster.is_some() && request_file.exists() {
            // A database of a whole cluster is cut over with the others.
            let _ = std::fs::remove_file(&request_file);
            run.warn(format!("a cutover request for {} alone is ignored: the databases of a whole-cluster migration cut over together (`pg_dbmigrator cutover --dump-path <the cluster's dump path>`)", phase.dump_path.display()));
        }
        if signal.take() || request_file.exists() {
            info!("cutover requested");
            want_cutover = true;
            continue;
        }
        // Lag: the source's WAL position minus what is applied. While the
        // source cannot be reached, the control session is opened again
        // with backoff, not at every tick, and said once, not every time.
        if let Some(at) = ctl_retry_at {
            if Instant::now() < at {
                continue;
            }
            ctl_retry_at = None;
            match control(&phase.source).await {
                Ok(c) => ctl = c,
                Err(e) => {
                    ctl_retry_at = Some(Instant::now() + ctl_outage.note(&e, CONTROL_DOWN));
                    continue;
                }
            }
        }
        let wal = match current_wal(&ctl).await {
            Ok(l) => {
                if let Some((down, attempts)) = ctl_outage.recovered() {
                    info!(down_for = ?down, attempts, "the source's WAL position can be read again");
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
        let caught_up = shared.streaming.load(Ordering::Acquire) && lag <= cfg.cutover_lag_bytes;
        signal.set_caught_up(caught_up);
        if let Some(p) = &run.progress {
            let secs = stream_started.elapsed().as_secs_f64().max(0.001);
            let tx = shared.transactions.load(Ordering::Acquire);
            let rows = shared.rows.load(Ordering::Acquire);
            let sample = |o: &mut crate::progress::OnlineSnapshot| {
                o.lag_bytes = lag;
                o.lag_seconds = if lag == 0 {
                    0.0
                } else {
                    stream::seconds_since(shared.last_commit_time.load(Ordering::Acquire))
                };
                o.applied_lsn = applied.to_string();
                o.transactions = tx;
                o.rows = rows;
                o.transactions_per_second = tx as f64 / secs;
                o.rows_per_second = rows as f64 / secs;
                o.ready_to_cut_over = caught_up;
            };
            match &run.cluster {
                // The cluster publishes the sum of its databases.
                Some(seat) => seat.set_online(sample),
                None => p.set_online(sample),
            }
        }
        if last_log.elapsed() >= Duration::from_secs(10) {
            last_log = Instant::now();
            let secs = stream_started.elapsed().as_secs_f64();
            let tx = shared.transactions.load(Ordering::Acquire);
            let rows = shared.rows.load(Ordering::Acquire);
            info!(
                lag = %human_bytes(lag),
                lag_seconds = format!("{:.1}", if lag == 0 { 0.0 } else { stream::seconds_since(shared.last_commit_time.load(Ordering::Acquire)) }),
                applied = %applied,
                transactions = tx,
                tx_per_s = format!("{:.0}", tx as f64 / secs.max(0.001)),
                rows_per_s = format!("{:.0}", rows as f64 / secs.max(0.001)),
                ready = caught_up,
                "streaming"
            );
        }
        if mode == CutoverMode::Auto && stream_started.elapsed() >= min_stream {
            if caught_up {
                if below_since.get_or_insert_with(Instant::now).elapsed() >= Duration::from_secs(1)
                {
                    info!(lag = %human_bytes(lag), "caught up: cutting over");
                    want_cutover = true;
                }
            } else {
                below_since = None;
            }
        }
    };
    let cut = outcome;
    if !cfg.fallback {
        after_handover(cfg, &phase, Some(ctl), &cancel).await?;
    }
    if let Some(g) = governor.take() {
        stream_pressure.add(&g.finish(&cancel).await);
    }
    // What streaming saw over a threshold joins what the copy did.
    if !stream_pressure.signals.is_empty() {
        phase
            .pressure
            .get_or_insert_with(Default::default)
            .add(&stream_pressure);
    }
    let apply_secs = stream_started.elapsed().as_secs_f64();
    // The writes are on the target now; statistics the stream made stale
    // are seen to without keeping anyone waiting.
    if let Some(after) = statistics_after_cutover(cfg, &phase, &dst).await {
        phase
            .statistics
            .get_or_insert_with(Default::default)
            .after_cutover = Some(after);
    }
    phase.stages.push((
        Stage::Stream.as_str().to_string(),
        apply_secs - cut.total_seconds,
    ));
    phase
        .stages
        .push((Stage::Cutover.as_str().to_string(), cut.total_seconds));
    let transactions = shared.transactions.load(Ordering::Acquire);
    let mut online = OnlineReport {
        slot: state.slot_name.clone(),
        publication: state.publication_name.clone(),
        cutover: CutoverSummary {
            fence_lsn: cut.fence_lsn.map(|l| l.to_string()),
            downtime_seconds: cut.downtime,
            fenced: cut.fenced,
        },
        apply: ApplySummary {
            transactions,
            rows: shared.rows.load(Ordering::Acquire),
            seconds: apply_secs,
            transactions_per_second: transactions as f64 / apply_secs.max(0.001),
            reconnects: shared.sessions.load(Ordering::Acquire).saturating_sub(1),
            schema_changes: shared.schema_changes.load(Ordering::Acquire),
        },
        replica_identity_fixes: state.replica_identity_fixes.clone(),
        fallback: None,
    };
    if cfg.fallback {
        online.fallback = Some(crate::fallback::run(cfg, &phase, run).await?);
    }
    finish_report(cfg, phase, online, &cancel).await
}

/// Online, after the handover: tables the stream changed past
/// autovacuum's threshold analyzed, newer source statistics carried (see
/// `copy::statistics::after_stream`). Best effort: the migration is done
/// by now, and autovacuum would get there too, so a failure is a warning.
async fn statistics_after_cutover(
    cfg: &MigrationConfig,
    phase: &CopyPhase,
    dst: &Client,
) -> Option<crate::report::StatisticsAfterCutover> {
    if cfg.statistics == crate::config::Statistics::None {
        return None;
    }
    let copied_at = phase
        .store
        .snapshot()
        .stages
        .iter()
        .find(|s| s.stage == Stage::CopyData)
        .map(|s| s.started_at)?;
    let work = async {
        let src = connect::connect(&phase.source, "source").await?;
        let mut tables = crate::pg::catalog::list_tables(&src, &phase.filters).await?;
        if !cfg.data_only {
            tables.extend(crate::pg::catalog::list_extension_config_tables(&src).await?);
        }
        copy::statistics::after_stream(
            &src,
            dst,
            &tables,
            copied_at,
            phase.source_version,
            cfg.statistics == crate::config::Statistics::Carry
                && copy::statistics::target_can_import(phase.target_version),
        )
        .await
    };
    match work.await {
        Ok(o) => Some(crate::report::StatisticsAfterCutover {
            carried_tables: o.carried.len(),
            analyzed_tables: o.analyzed,
            unchanged_tables: o.unchanged,
            seconds: o.seconds,
        }),
        Err(e) => {
            crate::recorded::warn_recorded!(
                "statistics after the cutover: {e}; autovacuum will analyze the tables the stream changed"
            );
            None
        }
    }
}

/// Verify (after a fallback only when it rolled back: after `finish` the
/// new server has writes the old source never gets), mark the migration
/// complete, and build its report.
async fn finish_report(
    cfg: &MigrationConfig,
    mut phase: CopyPhase,
    online: OnlineReport,
    cancel: &CancellationToken,
) -> Result<MigrationReport> {
    let store = phase.store.clone();
    let verify_report = if online
        .fallback
        .as_ref()
        .is_some_and(|f| f.ended_by != "rollback")
    {
        info!("verify skipped: after `finish` the new server holds writes the old source does not");
        None
    } else {
        migrate::verify_stage(
            cfg,
            &phase.source,
            &phase.target,
            &phase.filters,
            &store,
            &mut phase.stages,
            cancel,
        )
        .await?
    };
    crate::target::seal_database(&phase.target, phase.database_limits).await?;
    faults::before(Point::Complete).await;
    store.update(|t| t.completed = true)?;
    faults::after(Point::Complete).await;
    let rows = phase.results.iter().map(|r| r.rows).sum();
    let bytes = phase.results.iter().map(|r| r.bytes).sum();
    Ok(MigrationReport {
        migration_id: phase.migration_id,
        dump_path: phase.dump_path,
        token_path: phase.token_path,
        resumed: phase.resumed,
        snapshot_id: Some(phase.snapshot_id),
        source_version: phase.source_version,
        target_version: phase.target_version,
        tables: phase.results,
        skipped_tables: phase.skipped,
        sequences: phase.sequences,
        large_objects: phase.large_objects,
        large_object_bytes: phase.large_object_bytes,
        rows,
        bytes,
        schema_steps: phase.schema_steps,
        schema_notes: phase.schema_notes,
        stages: phase.stages,
        seconds: phase.started.elapsed().as_secs_f64(),
        verify: verify_report,
        online: Some(online),
        already_complete: false,
        snapshot_note: phase.snapshot_note,
        databases: Vec::new(),
        globals: None,
        statistics: phase.statistics,
        source_pressure: phase.pressure,
        round_trips: None,
    })
}

/// Our statements on this session are never captured as schema changes
/// (the new server carries a capture during a `--fallback`).
async fn no_capture(c: &Client) -> Result<()> {
    c.batch_execute(ddl::NO_CAPTURE_SETTING)
        .await
        .map_err(|e| MigrationError::db("configuring a target session", e))
}

const CONTROL_DOWN: &str =
    "cannot read the source's WAL position; reconnecting the control session";

struct CutoverOutcome {
    fence_lsn: Option<Lsn>,
    downtime: f64,
    total_seconds: f64,
    fenced: bool,
}

/// The cutover, in order: fence, drain to the fence, sequences, unlogged
/// tables, large objects and materialized views, then remove what we
/// created on the target (and with --fallback on the source; otherwise the
/// source's share comes after the handover, see [`after_handover`]). On
/// failure the fence is lifted (the caller keeps streaming).
#[allow(clippy::too_many_arguments)]
async fn cutover(
    cfg: &MigrationConfig,
    phase: &CopyPhase,
    prep: &OnlinePrep,
    ctl: &mut Client,
    shared: &Arc<StreamShared>,
    stop: &mut CancellationToken,
    streamer: &mut Option<tokio::task::JoinHandle<Result<()>>>,
    source_version: i32,
    seat: Option<&ClusterSeat>,
) -> Result<CutoverOutcome> {
    let store = phase.store.clone();
    let t0 = Instant::now();
    // A database of a whole-cluster migration passes the cluster's barrier
    // once per attempt (dropped unused, the ticket says it failed).
    let mut ticket = seat.map(|s| s.ticket());
    if let Some(t) = &ticket {
        t.joinable()?;
    }
    // Fresh sessions: either server may have restarted while we streamed.
    if ctl.is_closed() {
        *ctl = control(&phase.source).await?;
    }
    let dst = &connect::connect(&phase.target, "target").await?;
    no_capture(dst).await?;
    let streaming = streamer.is_some();
    faults::before(Point::CutoverStart).await;
    store.update(|t| {
        t.stage_started(Stage::Cutover);
        let o = t.online.get_or_insert_with(Default::default);
        let c = o.cutover.get_or_insert_with(CutoverRecord::default);
        c.started_at.get_or_insert_with(chrono::Utc::now);
        c.error = None;
        c.attempts += 1;
        if streaming {
            // This attempt drains again (a resumed one whose slot is gone
            // keeps the earlier drain's record).
            c.drained = false;
        }
    })?;
    faults::after(Point::CutoverStart).await;
    let fence = cfg.fence;
    if fence {
        store.update(|t| {
            if let Some(o) = t.online.as_mut() {
                o.fenced = true;
            }
        })?;
    }
    let r = cutover_steps(
        cfg,
        phase,
        prep,
        ctl,
        dst,
        shared,
        stop,
        streamer,
        source_version,
        t0,
        &mut ticket,
    )
    .await;
    match r {
        Ok(mut out) => {
            out.total_seconds = t0.elapsed().as_secs_f64();
            faults::before(Point::CutoverDone).await;
            store.update(|t| {
                t.stage_done(Stage::Stream);
                t.stage_done(Stage::Cutover);
                if let Some(o) = t.online.as_mut() {
                    let c = o.cutover.get_or_insert_with(Default::default);
                    c.completed = true;
                    c.fence_lsn = out.fence_lsn;
                    c.downtime_seconds = Some(out.downtime);
                }
            })?;
            info!(
                downtime = format!("{:.3}s", out.downtime),
                fence_lsn = %out.fence_lsn.map(|l| l.to_string()).unwrap_or_default(),
                "cutover done"
            );
            faults::after(Point::CutoverDone).await;
            Ok(out)
        }
        Err(e) => {
            if let Some(t) = ticket.take() {
                // The other databases of the cluster stop waiting.
                t.fail(&e);
            }
            // Before the fence is lifted: from then on the drain no longer
            // covers every change.
            let _ = store.update(|t| {
                if let Some(c) = t.online.as_mut().and_then(|o| o.cutover.as_mut()) {
                    c.drained = false;
                }
            });
            if fence {
                if let Err(u) = unfence_db(ctl).await {
                    error!(error = %u, "lifting the fence failed: run `pg_dbmigrator unfence --source ...`");
                } else {
                    let _ = store.update(|t| {
                        if let Some(o) = t.online.as_mut() {
                            o.fenced = false;
                        }
                    });
                }
            }
            shared.eager.store(false, Ordering::Release);
            Err(e)
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn cutover_steps(
    cfg: &MigrationConfig,
    phase: &CopyPhase,
    prep: &OnlinePrep,
    ctl: &Client,
    dst: &Client,
    shared: &Arc<StreamShared>,
    stop: &mut CancellationToken,
    streamer: &mut Option<tokio::task::JoinHandle<Result<()>>>,
    source_version: i32,
    _t0: Instant,
    ticket: &mut Option<ClusterTicket>,
) -> Result<CutoverOutcome> {
    let store = phase.store.clone();
    let state = store
        .snapshot()
        .online
        .clone()
        .unwrap_or_else(|| prep.state.clone());
    // (0) Schema changes that did not reach the target refuse the cutover
    // before the fence (and again under it, below).
    let whole = phase.filters == crate::config::filter::CompiledFilters::default();
    let step = Instant::now();
    let scope = fingerprint_scope(ctl, &phase.filters, whole).await?;
    ddl::cutover_guard(ctl, dst, &state, scope.as_deref(), false).await?;
    // Before the fence, what needs no fence, so that the downtime does
    // not grow with the schema: every sequence set once (under the fence
    // only those that moved since are), the tables listed.
    let seqs = catalog::list_sequences(ctl, &phase.filters).await?;
    let presynced = copy::presync_sequences(ctl, dst, &seqs).await?;
    let tables_before = catalog::list_tables(ctl, &phase.filters).await?;
    let unlogged_before = catalog::unlogged_tables(ctl).await?;
    info!(
        sequences = seqs.len(),
        ms = step.elapsed().as_millis() as u64,
        "cutover: schema checked and sequences set before the fence"
    );
    // (1) The fence.
    let fenced_at = Instant::now();
    let step_ms = |what: &str, since: Instant| {
        info!(
            ms = since.elapsed().as_millis() as u64,
            since_fence_ms = fenced_at.elapsed().as_millis() as u64,
            "cutover: {what}"
        );
    };
    if cfg.fence {
        around(Point::Fence, fence_db(ctl)).await?;
        tokio::time::sleep(Duration::from_millis(50)).await;
        end_other_sessions(ctl).await?;
        info!("source fenced: read-only for every other session");
    }
    if let Some(t) = ticket.as_ref() {
        t.fenced(fenced_at);
    }
    step_ms("fenced", fenced_at);
    let step = Instant::now();
    // (2) Drain up to the fence.
    let mut fence_lsn = None;
    faults::before(Point::Drain).await;
    if let Some(h) = streamer.take() {
        shared.eager.store(true, Ordering::Release);
        shared.wake();
        let target_end: Lsn;
        // Only a marker written now counts (not one of a failed attempt).
        shared.marker_end.store(0, Ordering::Release);
        let before = current_wal(ctl).await?;
        if source_version >= 140000 {
            let id = format!(
                "{} {}",
                phase.migration_id,
                chrono::Utc::now().timestamp_micros()
            );
            ctl.query_one(
                "SELECT pg_catalog.pg_logical_emit_message(true, $1, $2)::text",
                &[&FENCE_MESSAGE_PREFIX, &id],
            )
            .await
            .map_err(|e| MigrationError::db("writing the fence marker on the source", e))?;
            let wal = current_wal(ctl).await?;
            fence_lsn = Some(wal);
            target_end = wal;
        } else {
            // pgoutput before 14 forwards no messages, but the message's
            // WAL record still marks a position after every commit made
            // before the fence. pg_current_wal_lsn() would not: it is the
            // write position, and asynchronous commits inserted before the
            // fence may lie beyond it (the drain stopped short of them).
            let id = format!(
                "{} {}",
                phase.migration_id,
                chrono::Utc::now().timestamp_micros()
            );
            let at: String = ctl
                .query_one(
                    "SELECT pg_catalog.pg_logical_emit_message(false, $1, $2)::text",
                    &[&FENCE_MESSAGE_PREFIX, &id],
                )
                .await
                .map_err(|e| MigrationError::db("writing the fence position on the source", e))?
                .get(0);
            let wal: Lsn = at
                .parse()
                .map_err(|_| MigrationError::Internal(format!("bad LSN {at}")))?;
            fence_lsn = Some(wal);
            target_end = wal;
        }
        let done = || {
            let marker = Lsn(shared.marker_end.load(Ordering::Acquire));
            let durable = Lsn(shared.durable.load(Ordering::Acquire));
            if source_version >= 140000 {
                marker > before && durable >= marker
            } else {
                shared.applied_position() >= target_end
                    && durable >= Lsn(shared.committed.load(Ordering::Acquire))
            }
        };
        if let Some(h) = stream::drain(h, stop, Duration::from_secs(300), done).await? {
            *streamer = Some(h);
            return Err(MigrationError::Internal(format!(
                "the target did not catch up with the fence ({target_end}) within 5 minutes"
            )));
        }
        info!(fence_lsn = %target_end, applied = %Lsn(shared.durable.load(Ordering::Acquire)), "drained to the fence");
    }
    ddl::cutover_guard(ctl, dst, &state, scope.as_deref(), true).await?;
    if fence_lsn.is_some() {
        store.update(|t| {
            if let Some(c) = t.online.as_mut().and_then(|o| o.cutover.as_mut()) {
                c.drained = true;
                c.fence_lsn = fence_lsn;
            }
        })?;
    } else {
        // A resumed attempt without a slot: the earlier attempt's drain.
        fence_lsn = store
            .snapshot()
            .online
            .and_then(|o| o.cutover)
            .filter(|c| c.drained)
            .and_then(|c| c.fence_lsn);
    }
    faults::after(Point::Drain).await;
    step_ms("drained to the fence", step);
    let step = Instant::now();
    // (3) Sequences: those created since the list before the fence are
    // set too, and of the rest those that moved.
    let seqs = catalog::list_sequences(ctl, &phase.filters).await?;
    let moved = around(
        Point::CutoverSequences,
        copy::copy_moved_sequences(ctl, dst, &seqs, &presynced),
    )
    .await?;
    info!(sequences = seqs.len(), moved, "sequences copied");
    step_ms("sequences", step);
    let step = Instant::now();
    // (4) Unlogged tables, large objects, materialized views.
    let unlogged_names = catalog::unlogged_tables(ctl).await?;
    let tables = if unlogged_names.iter().all(|n| unlogged_before.contains(n)) {
        tables_before
    } else {
        // An unlogged table made since: the list again.
        catalog::list_tables(ctl, &phase.filters).await?
    };
    let unlogged: Vec<TableInfo> = tables
        .into_iter()
        .filter(|t| {
            prep.unlogged.contains(&t.qualified()) || unlogged_names.contains(&t.qualified())
        })
        .collect();
    faults::before(Point::CutoverRecopy).await;
    copy::recopy_unlogged(ctl, dst, &unlogged).await?;
    if cfg.large_objects {
        // With the schema migrated, the target's large objects are all ours.
        let n = copy::recopy_large_objects(ctl, dst, !cfg.data_only).await?;
        if n > 0 {
            info!(
                large_objects = n,
                "large objects copied again under the fence"
            );
        }
    }
    copy::refresh_matviews(dst).await?;
    faults::after(Point::CutoverRecopy).await;
    step_ms(
        "unlogged tables, large objects and materialized views",
        step,
    );
    // A whole cluster hands over at once: every database has done the
    // above (fenced, drained, sequences, recopies) before any goes on.
    if let Some(t) = ticket.take() {
        info!("waiting for the cluster's other databases to reach the cutover barrier");
        t.arrive_ok().await?;
        info!("every database of the cluster is drained: handing over");
    }
    // (5) Remove what we created.
    let step = Instant::now();
    let mut st = state.clone();
    around(Point::RemoveCapture, remove_capture(ctl, &mut st)).await?;
    step_ms("schema change capture removed", step);
    store.update(|t| {
        if let Some(o) = t.online.as_mut() {
            o.ddl_capture = false;
        }
    })?;
    // What only the source holds goes after the handover (see
    // `remove_from_source`), except with --fallback: its reverse stream
    // starts from a source already clean.
    if cfg.fallback {
        remove_from_source(cfg, ctl, &store, &mut st).await?;
    } else {
        // The target's here (the application writes there next; the
        // fault point is the source's, after the handover).
        let step = Instant::now();
        preflight::restore_replica_identities(dst, &st.replica_identity_fixes).await?;
        step_ms("replica identities restored on the target", step);
    }
    let step = Instant::now();
    around(Point::Finalize, copy::drop_target_state(dst)).await?;
    step_ms("the target's bookkeeping removed", step);
    if cfg.fallback {
        // The old source is still fenced and nobody writes on the new
        // server yet: the reverse slot starts where both are equal.
        around(
            Point::FallbackStart,
            crate::fallback::start(cfg, phase, dst, ctl, &st.slot_name),
        )
        .await?;
    }
    store.update(|t| t.stage_done(Stage::Finalize))?;
    let downtime = fenced_at.elapsed().as_secs_f64();
    Ok(CutoverOutcome {
        fence_lsn,
        downtime,
        total_seconds: 0.0,
        fenced: cfg.fence,
    })
}

/// The slot, the publication and the replica identities
/// --fix-replica-identity changed, removed from the source, each removal
/// recorded once done. Without --fallback this runs after the handover:
/// the fenced source needs none of them, and their removal grows with the
/// schema (dropping the publication of 5,000 tables took 0.2 s under the
/// fence). A failure then must not lift the fence or resume streaming (the
/// writes are on the target): the run fails, and running it again finishes
/// this (see the resumed path in `stream_and_cutover`).
async fn remove_from_source(
    cfg: &MigrationConfig,
    ctl: &Client,
    store: &crate::resume::TokenStore,
    st: &mut OnlineState,
) -> Result<()> {
    let step = Instant::now();
    if !cfg.keep_slot {
        around(Point::DropSlot, drop_slot(ctl, &st.slot_name)).await?;
        st.slot_created = false;
        store.update(|t| {
            if let Some(o) = t.online.as_mut() {
                o.slot_created = false;
            }
        })?;
    }
    let slot_ms = step.elapsed().as_millis() as u64;
    let step = Instant::now();
    if !cfg.keep_publication {
        around(
            Point::DropPublication,
            ctl.batch_execute(&format!(
                "DROP PUBLICATION IF EXISTS {}",
                quote::ident(&st.publication_name)
            )),
        )
        .await
        .map_err(|e| MigrationError::db("dropping the publication", e))?;
        store.update(|t| {
            if let Some(o) = t.online.as_mut() {
                o.publication_created = false;
            }
        })?;
    }
    let publication_ms = step.elapsed().as_millis() as u64;
    let step = Instant::now();
    faults::before(Point::RestoreIdentities).await;
    preflight::restore_replica_identities(ctl, &st.replica_identity_fixes).await?;
    faults::after(Point::RestoreIdentities).await;
    info!(
        slot_ms,
        publication_ms,
        identities_ms = step.elapsed().as_millis() as u64,
        "cutover: slot, publication and replica identities removed from the source"
    );
    Ok(())
}

/// After the handover (not --fallback): [`remove_from_source`], when the
/// token says something is left, on `ctl` or a new session if it is gone,
/// a transient fault retried. What still fails ends the run with what is
/// left and how to finish it.
async fn after_handover(
    cfg: &MigrationConfig,
    phase: &CopyPhase,
    mut ctl: Option<Client>,
    cancel: &CancellationToken,
) -> Result<()> {
    let store = phase.store.clone();
    let Some(mut st) = store.snapshot().online.clone() else {
        return Ok(());
    };
    let left = (!cfg.keep_slot && st.slot_created)
        || (!cfg.keep_publication && st.publication_created)
        || !st.replica_identity_fixes.is_empty();
    if !left {
        return Ok(());
    }
    let mut retry = connect::Retry::new();
    let what = "removing the slot and publication";
    loop {
        let c = match ctl.take().filter(|c| !c.is_closed()) {
            Some(c) => c,
            None => match control(&phase.source).await {
                Ok(c) => c,
                Err(e) => {
                    retry
                        .wait(e, what, cancel)
                        .await
                        .map_err(|e| left_behind(phase, &st, e))?;
                    continue;
                }
            },
        };
        match remove_from_source(cfg, &c, &store, &mut st).await {
            Ok(()) => return Ok(()),
            Err(e) => {
                retry
                    .wait(e, what, cancel)
                    .await
                    .map_err(|e| left_behind(phase, &st, e))?;
                ctl = Some(c);
            }
        }
    }
}

/// The error of a cleanup that failed after the handover: the migration
/// is done, the source still holds what is named. Said in the log, the
/// error kept as it is (its kind tells what failed).
fn left_behind(phase: &CopyPhase, st: &OnlineState, e: MigrationError) -> MigrationError {
    if !matches!(e, MigrationError::Cancelled) {
        error!(
            error = %e,
            "the cutover completed (writes belong on the target now; the source stays fenced), but removing the replication slot {} and publication {} from the source failed. The slot keeps WAL on the source: run the same `pg_dbmigrator migrate` again (--dump-path {}) to finish",
            quote::ident(&st.slot_name),
            quote::ident(&st.publication_name),
            phase.dump_path.display()
        );
    }
    e
}
