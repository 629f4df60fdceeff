//! Whole-cluster migrations (`all_databases`): the orchestrator one floor
//! above the database orchestrators. It lists the source's databases, has
//! the globals stage carry roles, memberships, settings and tablespaces,
//! then runs each database's own migration as a single-database run would,
//! in its own work dir and with its own resume token, and records each
//! one's end in the cluster's token ([`crate::resume::cluster`]). Offline,
//! the databases go one after another (`migrate`). Online, every database
//! runs its own `online` migration at once (own slot, stream, token) and
//! the cluster cuts over once: it asks each database to cut over, and
//! each database's cutover waits at the cluster's barrier
//! ([`crate::context::ClusterCutover`], reached through its `RunContext`)
//! between its reversible steps (fence, drain, sequences, recopies) and its
//! irreversible ones (capture, slot, publication removed), so that either
//! every database hands over or none does. It threads no "all databases"
//! flag through the orchestrators below: each of them sees one ordinary
//! migration (and, online, an optional seat at the barrier).
//!
//! Also here: [`run_database`], the one-database run that
//! [`crate::Migrator::run`] and this orchestrator share (run lock, sessions
//! tagged with the migration's id, the summary file).
//!
//! May not touch: the stages directly, except the globals and the
//! catalog reads that list the databases.

pub(crate) mod archive;
mod checks;
mod view;

pub(crate) use checks::{plan, verify};

use std::future::IntoFuture;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::config::{CutoverMode, MigrationConfig, MigrationMode};
use crate::context::{
    ClusterCutover, CutoverDone, CutoverError, CutoverHandle, CutoverSignal, RunContext,
};
use crate::error::{MigrationError, Remedy, Result};
use crate::faults::{self, around, Point};
use crate::globals::{self, GlobalsOptions};
use crate::pg::{connect, sessions};
use crate::report::{DatabaseReport, MigrationReport, OnlineReport};
use crate::resume::cluster::{
    database_dir, ClusterDatabase, ClusterFallback, ClusterToken, CLUSTER_TOKEN_VERSION,
};
use crate::resume::{self, Definition, EndpointIdentity, ResumeToken, RunLock};

/// One database's migration, as [`crate::Migrator::run`] runs it: one run
/// at a time (its lock), its sessions tagged with its id, offline or
/// online, and its report saved beside the token.
use crate::report::RoundTrips;

pub(crate) async fn run_database(
    cfg: &MigrationConfig,
    run: &RunContext,
) -> Result<MigrationReport> {
    let def = Definition::from_config(cfg)?;
    let (id, path) = resume::work_location(cfg, &def);
    let _lock = RunLock::acquire(&ResumeToken::path_for(&path))?;
    let cfg = sessions::tagged(cfg, &id);
    // Each database's run counts its own round trips, a cluster's too.
    let meter = crate::pg::meter::Meter::new();
    let mut report = crate::pg::meter::scope(meter.clone(), async {
        match cfg.mode {
            MigrationMode::Online => crate::online::run(&cfg, run).await,
            MigrationMode::Offline => crate::migrate::run(&cfg, run).await,
        }
    })
    .await?;
    if !report.already_complete {
        report.round_trips = Some(RoundTrips {
            total: meter.total(),
            by_stage: meter.by_stage(),
        });
    }
    if !report.already_complete && !cfg.no_summary {
        // (An already complete migration keeps its finishing run's report.)
        report.save_summary()?;
    }
    Ok(report)
}

/// Where a cluster migration works: `dump_path`, or a directory in the
/// temp dir named after the two servers.
fn cluster_dir(
    cfg: &MigrationConfig,
    source: &EndpointIdentity,
    target: &EndpointIdentity,
) -> PathBuf {
    cfg.dump_path.clone().unwrap_or_else(|| {
        use sha2::Digest;
        let h = sha2::Sha256::digest(format!("{source}|{target}").as_bytes());
        std::env::temp_dir().join(format!("pg_dbmigrator-cluster-{}", &hex::encode(h)[..12]))
    })
}

/// The whole cluster: globals, then every database.
pub(crate) async fn run(cfg: &MigrationConfig, run: &RunContext) -> Result<MigrationReport> {
    let started = std::time::Instant::now();
    cfg.validate()?;
    let source = cfg.source.clone().expect("validated");
    let target = cfg.target.clone().expect("validated");
    let excluded = checks::excluded_patterns(&cfg.exclude_databases)?;
    let (src_id, dst_id) = (EndpointIdentity::of(&source), EndpointIdentity::of(&target));
    if src_id == dst_id {
        return Err(MigrationError::Config(
            "the source and the target are the same server: a cluster cannot be migrated onto itself".into(),
        ));
    }
    let dir = cluster_dir(cfg, &src_id, &dst_id);
    let token_path = ClusterToken::path_for(&dir);
    let _lock = RunLock::acquire(&token_path)?;
    let mut token = open_token(
        cfg,
        &token_path,
        src_id,
        dst_id,
        "cluster migration",
        async { Ok(planned(checks::select_databases(&source, &excluded).await?)) },
    )
    .await?;
    if token.completed {
        info!(token = %token_path.display(), "the cluster migration had completed; nothing left to do");
    }
    if token.fallback.enabled != (cfg.fallback && cfg.mode == MigrationMode::Online) {
        return Err(MigrationError::resume_refused(format!(
            "the cluster migration at {} was started {} --fallback: resume it {} --fallback",
            dir.display(),
            if token.fallback.enabled {
                "with"
            } else {
                "without"
            },
            if token.fallback.enabled {
                "with"
            } else {
                "without"
            },
        )));
    }

    // Each database publishes its own progress; the cluster's shows them
    // all and their sums.
    let view = view::ClusterView::start(run.progress.clone(), &token);
    let r = Box::pin(globals_and_databases(
        cfg,
        run,
        &dir,
        &token_path,
        &mut token,
        &view,
    ))
    .await;
    view.stop().await;
    let (globals_report, reports, online) = r?;
    token.completed = true;
    token.save(&token_path)?;
    let mut report = cluster_report(&dir, &token_path, reports, started);
    report.globals = globals_report;
    report.online = online;
    Ok(report)
}

/// The globals (unless done), then every database, offline or online.
async fn globals_and_databases(
    cfg: &MigrationConfig,
    run: &RunContext,
    dir: &Path,
    token_path: &Path,
    token: &mut ClusterToken,
    view: &view::ClusterView,
) -> Result<(
    Option<crate::globals::GlobalsReport>,
    Vec<DatabaseReport>,
    Option<OnlineReport>,
)> {
    let source = cfg.source.clone().expect("validated");
    let target = cfg.target.clone().expect("validated");
    // The globals first: every database's objects name their roles, and
    // their tablespaces must exist before a database is created in one.
    let mut globals_report = None;
    if !token.globals_done {
        let src = connect::connect(&source, "source").await?;
        let dst = connect::connect(&target, "target").await?;
        let opts = GlobalsOptions {
            no_role_passwords: cfg.no_role_passwords,
            roles_overwrite: cfg.roles_overwrite,
            tablespace_locations: cfg.tablespace_locations.clone(),
        };
        let report = around(Point::Globals, globals::migrate(&src, &dst, &opts)).await?;
        info!("globals: {}", report.summary());
        token.globals_done = true;
        token.save(token_path)?;
        globals_report = Some(report);
    }

    let mut online = None;
    let reports = if cfg.mode == MigrationMode::Online {
        let (reports, summary) =
            Box::pin(online_databases(cfg, run, dir, token_path, token, view)).await?;
        online = Some(summary);
        reports
    } else {
        Box::pin(offline_databases(cfg, run, dir, token_path, token, view)).await?
    };
    Ok((globals_report, reports, online))
}

/// Database `db`'s migration as a single-database run would make it.
fn database_config(cfg: &MigrationConfig, dir: &Path, db: &ClusterDatabase) -> MigrationConfig {
    let (source, target) = (
        cfg.source.as_ref().expect("checked"),
        cfg.target.as_ref().expect("checked"),
    );
    let db_dir = dir.join(&db.dir);
    let mut db_cfg = cfg.clone();
    db_cfg.all_databases = false;
    db_cfg.exclude_databases.clear();
    db_cfg.migration_id = None;
    db_cfg.source = Some(source.with_dbname(&db.name));
    db_cfg.target = Some(target.with_dbname(&db.name));
    // Each database resumes from its own token when it has one; a
    // database not started yet starts (a cluster `--resume` is not a
    // database's `--resume`).
    db_cfg.resume = ResumeToken::path_for(&db_dir).exists();
    db_cfg.dump_path = Some(db_dir);
    db_cfg
}

/// Database `i` of the token, migrated to its end, recorded done.
async fn one_database(
    cfg: &MigrationConfig,
    run: &RunContext,
    dir: &Path,
    token_path: &Path,
    token: &mut ClusterToken,
    i: usize,
    view: &view::ClusterView,
) -> Result<DatabaseReport> {
    let db = token.databases[i].clone();
    let db_cfg = database_config(cfg, dir, &db);
    info!(database = %db.name, done = db.done, "database {} of {}", i + 1, token.databases.len());
    let db_run = RunContext {
        progress: view.begin(i, None),
        ..run.clone()
    };
    let report = Box::pin(run_database(&db_cfg, &db_run)).await;
    view.end(i, report.is_ok());
    let report = report.map_err(|e| in_database(&db.name, e))?;
    database_done(token, token_path, i).await?;
    Ok(DatabaseReport {
        name: db.name.clone(),
        report,
    })
}

/// Record database `i` done in the cluster's token.
async fn database_done(token: &mut ClusterToken, token_path: &Path, i: usize) -> Result<()> {
    if !token.databases[i].done {
        token.databases[i].done = true;
        around(Point::ClusterDatabase, async { token.save(token_path) }).await?;
    }
    Ok(())
}

/// The online databases of the cluster: `template1` first, offline (a
/// template a walsender holds open cannot be copied from by `CREATE
/// DATABASE`), then every other database's own online run, all at once,
/// each with its own slot and stream, and one cutover for them all: the
/// cluster's [`ClusterCutover`] barrier lets no database remove its slot
/// before every one is fenced and drained. The cutover is requested
/// through the run's own signal (the Migrator's handle), the cluster's
/// request file (`pg_dbmigrator cutover --dump-path <cluster dir>`), or
/// automatically once every database has caught up.
async fn online_databases(
    cfg: &MigrationConfig,
    run: &RunContext,
    dir: &Path,
    token_path: &Path,
    token: &mut ClusterToken,
    view: &view::ClusterView,
) -> Result<(Vec<DatabaseReport>, OnlineReport)> {
    let mut reports: Vec<Option<DatabaseReport>> = vec![None; token.databases.len()];
    if let Some(i) = token.databases.iter().position(|d| d.name == "template1") {
        let mut offline = cfg.clone();
        offline.mode = MigrationMode::Offline;
        info!("template1 is migrated offline, before the online databases");
        reports[i] = Some(one_database(&offline, run, dir, token_path, token, i, view).await?);
    }
    let online: Vec<usize> = (0..token.databases.len())
        .filter(|&i| reports[i].is_none())
        .collect();
    // One slot and one WAL sender per database, all at once: checked
    // before any database starts (a database refused by its own preflight
    // later would stop the others in the middle of their copies).
    let fresh = online
        .iter()
        .all(|&i| !ResumeToken::path_for(&dir.join(&token.databases[i].dir)).exists());
    if fresh && !online.is_empty() {
        let src = connect::connect(cfg.source.as_ref().expect("checked"), "source").await?;
        let (slots, senders) = crate::replication::preflight::free_slots_and_senders(&src).await?;
        let n = online.len() as i32;
        if slots < n || senders < n {
            return Err(MigrationError::Preflight(format!(
                "an online migration of {n} databases streams through {n} replication slots and {n} WAL senders at once; \
                 the source has {slots} free slot(s) and {senders} free WAL sender(s). Fix: raise max_replication_slots \
                 and max_wal_senders (ALTER SYSTEM SET ...; then restart PostgreSQL), or leave databases out with --exclude-database"
            )));
        }
        if cfg.fallback {
            // After the cutover every database streams back through its
            // own slot on the new server.
            let dst = connect::connect(cfg.target.as_ref().expect("checked"), "target").await?;
            let (slots, senders) =
                crate::replication::preflight::free_slots_and_senders(&dst).await?;
            if slots < n || senders < n {
                return Err(MigrationError::Preflight(format!(
                    "--fallback for {n} databases streams back through {n} replication slots and {n} WAL senders on the target at once; \
                     the target has {slots} free slot(s) and {senders} free WAL sender(s). Fix: raise max_replication_slots \
                     and max_wal_senders on the target (then restart it), or leave databases out with --exclude-database"
                )));
            }
        }
    }
    // The sessions' budget: `jobs` for the whole cluster, split between
    // the databases (each copies with at least one worker).
    let jobs = (cfg.jobs / online.len().max(1)).max(1);
    let passed_path = token_path.to_path_buf();
    let children = run.cancel.child_token();
    let barrier = Arc::new(ClusterCutover::new(
        token.cutover_passed,
        children.clone(),
        Box::new(move || {
            // Before any database goes on: a resumed run finishes them all.
            let mut t = ClusterToken::load(&passed_path)?.ok_or_else(|| {
                MigrationError::Internal("the cluster's resume token vanished".into())
            })?;
            t.cutover_passed = true;
            t.save(&passed_path)
        }),
    ));
    // With --fallback, the cluster's one rollback passes a barrier of the
    // same kind.
    let rollback_path = token_path.to_path_buf();
    let rollback = Arc::new(
        ClusterCutover::new(
            token.fallback.rollback_passed,
            children.clone(),
            Box::new(move || {
                let mut t = ClusterToken::load(&rollback_path)?.ok_or_else(|| {
                    MigrationError::Internal("the cluster's resume token vanished".into())
                })?;
                t.fallback.rollback_passed = true;
                t.save(&rollback_path)
            }),
        )
        .for_rollback(),
    );
    struct Member {
        index: usize,
        name: String,
        dir: PathBuf,
        seat: Arc<crate::context::ClusterSeat>,
        signal: Arc<CutoverSignal>,
        task: Option<tokio::task::JoinHandle<Result<MigrationReport>>>,
    }
    let mut members = Vec::new();
    for &i in &online {
        let db = token.databases[i].clone();
        let mut db_cfg = database_config(cfg, dir, &db);
        db_cfg.jobs = jobs;
        // The cluster decides when: no database cuts over on its own.
        db_cfg.cutover = CutoverMode::Manual;
        let signal = Arc::new(CutoverSignal::default());
        let seat = barrier.seat_with(&db.name, cfg.fallback.then(|| rollback.clone()));
        // A request a killed run left for this database is the cluster's
        // to make again.
        for what in ["rollback", "finish"] {
            let _ = std::fs::remove_file(crate::resume::request_path(&dir.join(&db.dir), what));
        }
        let ctx = RunContext {
            cancel: children.clone(),
            progress: view.begin(i, Some(seat.clone())),
            cutover: signal.clone(),
            cluster: Some(seat.clone()),
        };
        signal.run_started();
        info!(database = %db.name, jobs, "online migration of database {} started", db.name);
        let task = tokio::spawn(crate::recorded::carried(async move {
            // Whatever way the run ends (a panic too), the requests
            // waiting on it resolve.
            struct Ended(Arc<CutoverSignal>);
            impl Drop for Ended {
                fn drop(&mut self) {
                    self.0.run_ended();
                }
            }
            let _ended = Ended(ctx.cutover.clone());
            Box::pin(run_database(&db_cfg, &ctx)).await
        }));
        members.push(Member {
            index: i,
            name: db.name.clone(),
            dir: dir.join(&db.dir),
            seat,
            signal,
            task: Some(task),
        });
    }
    // Stop every database's run (each keeps its slot and token) and wait.
    async fn stop_all(children: &CancellationToken, members: &mut [Member]) {
        children.cancel();
        for m in members.iter_mut() {
            if let Some(t) = m.task.take() {
                let _ = t.await;
            }
        }
    }

    let signal = &*run.cutover;
    let request_file = crate::resume::cutover_request_path(dir);
    let mut mode = cfg.cutover;
    let mut below_since: Option<Instant> = None;
    let stream_started = Instant::now();
    let min_stream = Duration::from_secs(
        std::env::var("PG_DBMIGRATOR_TEST_MIN_STREAM_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
    );
    let mut cluster_downtime: Option<f64> = None;
    let mut fallback = FallbackDriver::new(dir);
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            _ = run.cancel.cancelled() => {
                stop_all(&children, &mut members).await;
                return Err(MigrationError::Cancelled);
            }
            _ = signal.notified() => {}
            _ = tick.tick() => {}
        }
        // The databases whose runs ended.
        for k in 0..members.len() {
            if !members[k].task.as_ref().is_some_and(|t| t.is_finished()) {
                continue;
            }
            let t = members[k].task.take().expect("finished");
            let name = members[k].name.clone();
            let r = match t.await {
                Ok(r) => r,
                Err(e) => Err(MigrationError::Internal(format!(
                    "the task of database {name} failed: {e}"
                ))),
            };
            view.end(members[k].index, r.is_ok());
            match r {
                Ok(report) => {
                    token.cutover_passed |= barrier.passed();
                    token.fallback.rollback_passed |= rollback.passed();
                    database_done(token, token_path, members[k].index).await?;
                    reports[members[k].index] = Some(DatabaseReport { name, report });
                }
                Err(e) => {
                    // One database failed: the others stop where they are
                    // (slots kept); `--resume` goes on with all of them.
                    stop_all(&children, &mut members).await;
                    return Err(in_database(&name, e));
                }
            }
        }
        let active: Vec<&Member> = members.iter().filter(|m| m.task.is_some()).collect();
        if active.is_empty() {
            break;
        }
        if cfg.fallback && (cluster_downtime.is_some() || token.cutover_passed) {
            // Cut over: every database streams back until the cluster's
            // rollback or finish.
            token.cutover_passed |= barrier.passed();
            let dirs: Vec<(String, PathBuf)> = active
                .iter()
                .map(|m| (m.name.clone(), m.dir.clone()))
                .collect();
            fallback.step(run, &rollback, token, token_path, &dirs)?;
            if let Some(p) = &run.progress {
                let lag = active
                    .iter()
                    .filter_map(|m| m.seat.online().fallback_lag_bytes)
                    .max();
                p.set_online(|o| o.fallback_lag_bytes = lag);
            }
            continue;
        }
        let states: Vec<(bool, bool)> = active.iter().map(|m| m.signal.streaming_state()).collect();
        let streaming = cluster_downtime.is_none() && states.iter().all(|s| s.0);
        let caught_up = streaming && states.iter().all(|s| s.1);
        signal.set_streaming(streaming);
        signal.set_caught_up(caught_up);
        if let (Some(p), true) = (&run.progress, cluster_downtime.is_none()) {
            // The cluster's lag is its most lagging database's; rates add up.
            let samples: Vec<_> = active.iter().map(|m| m.seat.online()).collect();
            if samples.iter().any(|o| !o.applied_lsn.is_empty()) {
                p.set_online(|o| {
                    o.lag_bytes = samples.iter().map(|s| s.lag_bytes).max().unwrap_or(0);
                    o.lag_seconds = samples.iter().map(|s| s.lag_seconds).fold(0.0, f64::max);
                    // (Applied everywhere up to the least applied one's.)
                    o.applied_lsn = samples
                        .iter()
                        .map(|s| s.applied_lsn.clone())
                        .min_by_key(|l| {
                            l.parse::<crate::replication::Lsn>()
                                .map(|l| l.0)
                                .unwrap_or(0)
                        })
                        .unwrap_or_default();
                    o.transactions = samples.iter().map(|s| s.transactions).sum();
                    o.rows = samples.iter().map(|s| s.rows).sum();
                    o.transactions_per_second =
                        samples.iter().map(|s| s.transactions_per_second).sum();
                    o.rows_per_second = samples.iter().map(|s| s.rows_per_second).sum();
                    o.ready_to_cut_over = caught_up;
                });
            }
        }
        if !streaming {
            below_since = None;
            continue;
        }
        let mut want = signal.take() || request_file.exists();
        if want {
            info!("cutover of the cluster requested");
        } else if mode == CutoverMode::Auto && stream_started.elapsed() >= min_stream {
            if caught_up {
                if below_since.get_or_insert_with(Instant::now).elapsed() >= Duration::from_secs(1)
                {
                    info!("every database caught up: cutting the cluster over");
                    want = true;
                }
            } else {
                below_since = None;
            }
        }
        if !want {
            continue;
        }
        let _ = std::fs::remove_file(&request_file);
        below_since = None;
        let names: Vec<String> = active.iter().map(|m| m.name.clone()).collect();
        barrier.begin(names.clone());
        let requests: Vec<_> = active
            .iter()
            .map(|m| CutoverHandle(m.signal.clone()).request())
            .collect();
        let refused = requests.iter().position(|r| r.is_refused());
        let outcomes = if let Some(k) = refused {
            // Not streaming after all: nobody may wait for it.
            barrier.abort(format!("database {} is not streaming", names[k]));
            let mut v = Vec::new();
            for r in requests {
                v.push(r.await);
            }
            v
        } else {
            let all = futures::future::join_all(requests.into_iter().map(|r| r.into_future()));
            tokio::select! {
                v = all => v,
                _ = run.cancel.cancelled() => {
                    stop_all(&children, &mut members).await;
                    return Err(MigrationError::Cancelled);
                }
            }
        };
        if outcomes.iter().all(|o| o.is_ok()) {
            let downtime = barrier
                .first_fence()
                .map_or(0.0, |f| f.elapsed().as_secs_f64());
            info!(
                downtime = format!("{downtime:.3}s"),
                databases = names.len(),
                "cluster cutover done"
            );
            cluster_downtime = Some(downtime);
            if let Some(p) = &run.progress {
                p.set_online(|o| {
                    o.cutover_downtime_seconds = Some(downtime);
                    o.ready_to_cut_over = false;
                });
            }
            token.cutover_passed |= barrier.passed();
            token.cutover_attempts += 1;
            token.cutover_error = None;
            token.cutover_downtime_seconds = Some(downtime);
            token.save(token_path)?;
            signal.set_streaming(false);
            signal.attempt_ended(Ok(CutoverDone {
                downtime: Duration::from_secs_f64(downtime),
                fence_lsn: None,
            }));
            continue;
        }
        // The database whose own attempt failed (the others failed at the
        // barrier because of it), named.
        let failed = barrier.failed_database();
        let (name, e) = names
            .iter()
            .zip(&outcomes)
            .filter_map(|(n, o)| o.as_ref().err().map(|e| (n, e)))
            .find(|(n, _)| failed.as_deref() == Some(n.as_str()))
            .or_else(|| {
                names
                    .iter()
                    .zip(&outcomes)
                    .find_map(|(n, o)| o.as_ref().err().map(|e| (n, e)))
            })
            .expect("an attempt failed");
        let e = match e {
            CutoverError::Failed(e) => named_error(name, e),
            other => MigrationError::Internal(format!("database {name}: {other}")),
        };
        run.error(format!(
            "the cluster's cutover failed; every database's fence is lifted and streaming goes on. Fix the cause, then request the cutover again: {e}"
        ));
        token.cutover_passed |= barrier.passed();
        token.cutover_attempts += 1;
        token.cutover_error = Some(e.to_string());
        token.save(token_path)?;
        signal.attempt_ended(Err(CutoverError::Failed(Arc::new(e))));
        mode = CutoverMode::Manual;
    }
    // A cutover finished by an earlier (killed) run: its databases' own
    // downtimes are what is known.
    let mut summary = OnlineReport::default();
    let reports: Vec<DatabaseReport> = reports.into_iter().flatten().collect();
    let mut own_downtime = 0f64;
    for o in reports.iter().filter_map(|d| d.report.online.as_ref()) {
        own_downtime = own_downtime.max(o.cutover.downtime_seconds);
        summary.apply.transactions += o.apply.transactions;
        summary.apply.rows += o.apply.rows;
        summary.apply.seconds = summary.apply.seconds.max(o.apply.seconds);
        summary.apply.reconnects += o.apply.reconnects;
        summary.apply.schema_changes += o.apply.schema_changes;
        summary
            .replica_identity_fixes
            .extend(o.replica_identity_fixes.iter().cloned());
    }
    summary.apply.transactions_per_second =
        summary.apply.transactions as f64 / summary.apply.seconds.max(0.001);
    summary.cutover.downtime_seconds = cluster_downtime
        .or(token.cutover_downtime_seconds)
        .unwrap_or(own_downtime);
    summary.cutover.fenced = cfg.fence;
    if cfg.fallback {
        summary.fallback = Some(fallback.ended(&rollback, token, token_path, &reports)?);
    }
    Ok((reports, summary))
}

/// The cluster's side of a `--fallback` after its cutover: it takes the
/// cluster's `rollback` and `finish` requests (`<cluster dir>.rollback`,
/// `.finish`) and hands them to every database. A rollback is one round
/// of the rollback barrier: every database fences its new server, drains
/// back, copies its sequences back, and waits; when all arrive, each
/// removes its reverse objects and unfences its old source; when one
/// fails, every one lifts its new server's fence and streams on. Each
/// step is recorded in the cluster's token first, so a resumed run asks
/// again for a rollback that had not passed, and lets the databases
/// finish one that had.
struct FallbackDriver {
    rollback_file: PathBuf,
    finish_file: PathBuf,
    /// The open rollback round.
    round: Option<u64>,
    /// When the open round was found failed (its databases are lifting
    /// their fences).
    failed_at: Option<Instant>,
    /// When the databases were last asked (after the barrier passed, a
    /// database whose last steps failed is asked again now and then).
    asked_at: Option<Instant>,
    finish_sent: bool,
}

impl FallbackDriver {
    fn new(dir: &Path) -> Self {
        FallbackDriver {
            rollback_file: crate::resume::request_path(dir, "rollback"),
            finish_file: crate::resume::request_path(dir, "finish"),
            round: None,
            failed_at: None,
            asked_at: None,
            finish_sent: false,
        }
    }

    /// Ask each of `dirs`' databases for `what`.
    fn ask(dirs: &[(String, PathBuf)], what: &str) -> Result<()> {
        for (_, d) in dirs {
            let f = crate::resume::request_path(d, what);
            std::fs::write(&f, chrono::Utc::now().to_rfc3339())
                .map_err(|e| MigrationError::io(format!("writing {}", f.display()), e))?;
        }
        Ok(())
    }

    /// One tick: take a request, follow the open round.
    fn step(
        &mut self,
        run: &RunContext,
        barrier: &ClusterCutover,
        token: &mut ClusterToken,
        token_path: &Path,
        dirs: &[(String, PathBuf)],
    ) -> Result<()> {
        token.fallback.rollback_passed |= barrier.passed();
        let fb = &mut token.fallback;
        let busy = self.round.is_some() || fb.rollback_passed;
        if !busy && !fb.finish_requested && self.finish_file.exists() {
            info!("finish of the cluster's fallback requested");
            fb.finish_requested = true;
            token.save(token_path)?;
        }
        let fb = &mut token.fallback;
        if fb.finish_requested {
            let _ = std::fs::remove_file(&self.finish_file);
            if !self.finish_sent {
                Self::ask(dirs, "finish")?;
                self.finish_sent = true;
            }
            return Ok(());
        }
        if !busy && (fb.rollback_requested || self.rollback_file.exists()) {
            let _ = std::fs::remove_file(&self.rollback_file);
            fb.rollback_requested = true;
            fb.rollback_error = None;
            token.save(token_path)?;
            let names: Vec<String> = dirs.iter().map(|(n, _)| n.clone()).collect();
            info!(databases = names.len(), "rollback of the cluster requested");
            self.round = Some(barrier.begin(names));
            self.failed_at = None;
            Self::ask(dirs, "rollback")?;
            self.asked_at = Some(Instant::now());
            return Ok(());
        }
        if let Some(round) = self.round {
            match barrier.outcome(round) {
                None => {}
                Some(Ok(())) => {
                    self.round = None;
                    token.fallback.rollback_passed = true;
                    info!("every database of the cluster is drained back: each returns to its old server");
                }
                // Said only once every database has lifted its new
                // server's fence (or after half a minute): whoever is
                // told it failed finds every new server writable.
                Some(Err(_))
                    if !barrier.all_settled()
                        && self.failed_at.get_or_insert_with(Instant::now).elapsed()
                            < Duration::from_secs(30) => {}
                Some(Err(why)) => {
                    self.round = None;
                    self.failed_at = None;
                    let fb = &mut token.fallback;
                    fb.rollback_requested = false;
                    fb.rollback_attempts += 1;
                    fb.rollback_error = Some(why.clone());
                    token.save(token_path)?;
                    run.error(format!(
                        "the cluster's rollback failed; every new server's fence is lifted and the fallback streams go on. Fix the cause, then request the rollback again: {why}"
                    ));
                }
            }
        } else if token.fallback.rollback_passed
            && self
                .asked_at
                .is_none_or(|a| a.elapsed() >= Duration::from_secs(10))
        {
            // Passed: the databases still running finish alone (asked
            // again when their last steps failed, or after a resume).
            let waiting: Vec<(String, PathBuf)> = dirs
                .iter()
                .filter(|(_, d)| !crate::resume::request_path(d, "rollback").exists())
                .cloned()
                .collect();
            Self::ask(&waiting, "rollback")?;
            self.asked_at = Some(Instant::now());
        }
        Ok(())
    }

    /// Every database's fallback ended: the cluster's summary, recorded.
    fn ended(
        &self,
        barrier: &ClusterCutover,
        token: &mut ClusterToken,
        token_path: &Path,
        reports: &[DatabaseReport],
    ) -> Result<crate::report::FallbackSummary> {
        let ends: Vec<&crate::report::FallbackSummary> = reports
            .iter()
            .filter_map(|d| d.report.online.as_ref()?.fallback.as_ref())
            .collect();
        let rolled_back = !ends.is_empty() && ends.iter().all(|f| f.ended_by == "rollback");
        let fb = &mut token.fallback;
        if rolled_back && fb.rollback_downtime_seconds.is_none() {
            // The cluster's write downtime: first fence to last unfence
            // (from the databases' own, after a resume).
            fb.rollback_downtime_seconds = barrier.span().map(|d| d.as_secs_f64()).or_else(|| {
                ends.iter()
                    .filter_map(|f| f.rollback_downtime_seconds)
                    .reduce(f64::max)
            });
            fb.rollback_attempts += 1;
            fb.rollback_error = None;
        }
        let ended_by = if rolled_back { "rollback" } else { "finish" };
        fb.ended_by = Some(ended_by.into());
        fb.rollback_passed |= barrier.passed();
        token.save(token_path)?;
        Ok(crate::report::FallbackSummary {
            ended_by: ended_by.into(),
            rollback_downtime_seconds: token.fallback.rollback_downtime_seconds,
            transactions_streamed_back: ends.iter().map(|f| f.transactions_streamed_back).sum(),
        })
    }
}

/// A database's error, naming the database.
fn named_error(name: &str, e: &MigrationError) -> MigrationError {
    let at = |m: &str| format!("database {name}: {m}");
    match e {
        MigrationError::Config(m) => MigrationError::Config(at(m)),
        MigrationError::Preflight(m) => MigrationError::Preflight(at(m)),
        MigrationError::Unsupported(m) => MigrationError::Unsupported(at(m)),
        MigrationError::Db { context, info } => MigrationError::Db {
            context: at(context),
            info: info.clone(),
        },
        MigrationError::Client { context, message } => MigrationError::Client {
            context: at(context),
            message: message.clone(),
        },
        e => MigrationError::Internal(at(&e.to_string())),
    }
}

/// The databases of a new cluster run, each with its work dir.
pub(crate) fn planned(databases: Vec<(String, u64)>) -> Vec<ClusterDatabase> {
    databases
        .into_iter()
        .enumerate()
        .map(|(i, (name, bytes))| ClusterDatabase {
            dir: database_dir(i, &name),
            name,
            bytes,
            done: false,
        })
        .collect()
}

/// The cluster token at `path`: the recorded one (between the same
/// servers; refused without `resume`, since its run may be unfinished), or,
/// first or under `force_clean`, a new one listing the databases `plan`
/// gives (awaited only then), recorded before any work.
pub(crate) async fn open_token(
    cfg: &MigrationConfig,
    path: &Path,
    source: EndpointIdentity,
    target: EndpointIdentity,
    what: &str,
    plan: impl std::future::Future<Output = Result<Vec<ClusterDatabase>>>,
) -> Result<ClusterToken> {
    if !cfg.force_clean {
        if let Some(t) = ClusterToken::load(path)? {
            t.check_matches(cfg.mode, &source, &target, path)?;
            if !cfg.resume {
                return Err(MigrationError::resume_refused(format!(
                    "a resume token for this {what} exists at {}{}",
                    path.display(),
                    if t.completed { " (completed)" } else { "" }
                ))
                .with_remedy(Remedy::Resume)
                .with_remedy(Remedy::ForceClean));
            }
            return Ok(t);
        }
    }
    let mut t = ClusterToken {
        schema_version: CLUSTER_TOKEN_VERSION,
        mode: cfg.mode,
        source,
        target,
        globals_done: false,
        databases: plan.await?,
        cutover_passed: false,
        cutover_attempts: 0,
        cutover_error: None,
        cutover_downtime_seconds: None,
        fallback: ClusterFallback {
            enabled: cfg.fallback && cfg.mode == MigrationMode::Online,
            ..Default::default()
        },
        completed: false,
        updated_at: chrono::Utc::now(),
    };
    around(Point::ClusterPlan, async { t.save(path) }).await?;
    info!(databases = t.databases.len(), token = %path.display(), "{what} planned");
    Ok(t)
}

/// An error of one database's migration, saying which.
fn in_database(name: &str, e: MigrationError) -> MigrationError {
    match e {
        MigrationError::Cancelled => MigrationError::Cancelled,
        e => {
            tracing::error!(database = %name, "the migration of database {name} failed: {e}");
            e
        }
    }
}

/// The cluster's report: the databases' added up, each kept in `databases`.
fn cluster_report(
    dir: &Path,
    token_path: &Path,
    reports: Vec<DatabaseReport>,
    started: std::time::Instant,
) -> MigrationReport {
    let mut total = MigrationReport::empty(
        "cluster".into(),
        dir.to_path_buf(),
        token_path.to_path_buf(),
    );
    for r in reports.iter().map(|d| &d.report) {
        total.resumed |= r.resumed;
        total.source_version = r.source_version;
        total.target_version = r.target_version;
        total.tables.extend(r.tables.iter().cloned());
        total
            .skipped_tables
            .extend(r.skipped_tables.iter().cloned());
        total.sequences += r.sequences;
        total.large_objects += r.large_objects;
        total.large_object_bytes += r.large_object_bytes;
        total.rows += r.rows;
        total.bytes += r.bytes;
        total.schema_steps += r.schema_steps;
        if let Some(p) = &r.source_pressure {
            total
                .source_pressure
                .get_or_insert_with(Default::default)
                .add(p);
        }
        if let Some(rt) = &r.round_trips {
            total
                .round_trips
                .get_or_insert_with(Default::default)
                .add(rt);
        }
    }
    total.already_complete =
        !reports.is_empty() && reports.iter().all(|d| d.report.already_complete);
    total.seconds = started.elapsed().as_secs_f64();
    total.databases = reports;
    total
}

/// Every database of the token, offline, several at once: up to `jobs`
/// databases run side by side, started largest first, and their copy
/// workers share one budget of `jobs` permits, so the cluster never copies
/// more than `jobs` items at a time and a small database does not wait for
/// a big one to end. A database that fails does not stop the others: each
/// finishes what it can (and is recorded done), then the first failure is
/// the run's.
async fn offline_databases(
    cfg: &MigrationConfig,
    run: &RunContext,
    dir: &Path,
    token_path: &Path,
    token: &mut ClusterToken,
    view: &view::ClusterView,
) -> Result<Vec<DatabaseReport>> {
    use futures::stream::{self, StreamExt};
    let total = token.databases.len();
    let side_by_side = cfg.jobs.clamp(1, total.max(1));
    let budget = std::sync::Arc::new(tokio::sync::Semaphore::new(cfg.jobs.max(1)));
    let shared = std::sync::Mutex::new(token.clone());
    let one = |i: usize| {
        let db = token.databases[i].clone();
        let (budget, shared) = (budget.clone(), &shared);
        async move {
            if run.cancel.is_cancelled() {
                return (i, Err(MigrationError::Cancelled));
            }
            let db_cfg = database_config(cfg, dir, &db);
            info!(database = %db.name, done = db.done, "database {} of {total}", i + 1);
            // Its own progress (side by side, one database's counts would
            // overwrite another's), which the cluster's adds up.
            let db_run = RunContext {
                cancel: run.cancel.clone(),
                progress: view.begin(i, None),
                cutover: Default::default(),
                cluster: None,
            };
            if let Some(p) = &run.progress {
                p.begin_database(&db.name, i as u64 + 1, total as u64, false);
            }
            let r = crate::recorded::with_budget(
                Some(budget),
                Box::pin(run_database(&db_cfg, &db_run)),
            )
            .await
            .map_err(|e| in_database(&db.name, e));
            let r = match r {
                Ok(report) => {
                    faults::before(Point::ClusterDatabase).await;
                    let saved = {
                        let mut t = shared.lock().unwrap_or_else(|p| p.into_inner());
                        t.databases[i].done = true;
                        t.save(token_path)
                    };
                    faults::after(Point::ClusterDatabase).await;
                    saved.map(|()| report)
                }
                Err(e) => Err(e),
            };
            view.end(i, r.is_ok());
            if let (Some(p), Ok(_)) = (&run.progress, &r) {
                p.end_database(&db.name);
            }
            (
                i,
                r.map(|report| DatabaseReport {
                    name: db.name.clone(),
                    report,
                }),
            )
        }
    };
    let mut results: Vec<(usize, Result<DatabaseReport>)> = stream::iter(0..total)
        .map(one)
        .buffer_unordered(side_by_side)
        .collect()
        .await;
    *token = shared.into_inner().unwrap_or_else(|p| p.into_inner());
    results.sort_by_key(|(i, _)| *i);
    let mut reports = Vec::new();
    let mut first_error = None;
    for (_, r) in results {
        match r {
            Ok(d) => reports.push(d),
            Err(MigrationError::Cancelled) if first_error.is_some() => {}
            Err(e) => {
                if first_error
                    .as_ref()
                    .is_none_or(|f| matches!(f, MigrationError::Cancelled))
                {
                    first_error = Some(e);
                }
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(reports),
    }
}
