//! # pg_dbmigrator
//!
//! Move a PostgreSQL database from one server to another with a native Rust
//! pipeline: no `pg_dump`, `pg_restore` or `psql` is needed anywhere, so it
//! runs on hosts without PostgreSQL client tools.
//!
//! The copier exports one snapshot on the source and streams every table
//! with `COPY ... TO STDOUT` straight into `COPY ... FROM STDIN` on the
//! target, several tables at once. A resume token records every finished
//! stage and table so an interrupted run continues where it stopped, and
//! `verify` proves with counts and checksums that nothing was lost.
//!
//! ```
//! use pg_dbmigrator::{EndpointConfig, MigrationConfig, Migrator};
//! use tokio_util::sync::CancellationToken;
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # // Two throwaway servers stand in for production ones here.
//! # use pg_dbmigrator::testkit;
//! # let db = testkit::shared_pair().fresh_db("doc").await;
//! # let schema = "CREATE TABLE shop_items (id int PRIMARY KEY, name text)";
//! # testkit::execute(&db.target, schema).await?;
//! # testkit::execute(&db.source, schema).await?;
//! # testkit::execute(&db.source, "INSERT INTO shop_items SELECT g, 'item ' || g FROM generate_series(1, 1000) g").await?;
//! # let (source_conninfo, target_conninfo) = (db.source.clone(), db.target.clone());
//! # let work = tempfile::tempdir()?;
//! // Connection strings as libpq takes them, e.g. "postgresql://app@old-host/shop".
//! let config = MigrationConfig {
//!     source: Some(EndpointConfig::parse(&source_conninfo)?),
//!     target: Some(EndpointConfig::parse(&target_conninfo)?),
//!     data_only: true, // the target's schema exists already
//!     jobs: 4,
//! #   dump_path: Some(work.path().join("m")),
//!     ..Default::default()
//! };
//! let report = Migrator::new(config).run(CancellationToken::new()).await?;
//! println!("{}", report.summary());
//! assert_eq!(report.rows, 1000);
//! assert!(report.verify.as_ref().is_some_and(|v| v.is_clean()));
//! # Ok(())
//! # }
//! ```
//!
//! The README's demo (`cargo run --release --example demo`) runs a complete
//! migration between two throwaway local servers.
#![forbid(unsafe_code)]

// What an embedder uses: the items re-exported below, and these modules'
// public types. Everything else is reachable only so that the binary and
// the test suite can drive the stages directly; it is hidden from the
// documentation and is not part of the API (it may change in any release).
pub mod config;
pub mod error;
pub mod progress;
pub mod report;

#[doc(hidden)]
pub mod archive;
mod cluster;
#[doc(hidden)]
pub mod context;
#[doc(hidden)]
pub mod copy;
#[doc(hidden)]
pub mod dump;
mod fallback;
#[doc(hidden)]
pub mod faults;
#[doc(hidden)]
pub mod globals;
mod migrate;
#[doc(hidden)]
pub mod online;
#[doc(hidden)]
pub mod pg;
#[doc(hidden)]
pub mod plan;
mod recorded;
#[doc(hidden)]
pub mod replication;
#[doc(hidden)]
pub mod restore;
#[doc(hidden)]
pub mod resume;
#[doc(hidden)]
pub mod schema;
#[doc(hidden)]
pub mod target;
/// Throwaway PostgreSQL clusters for tests (feature `testkit`, off by
/// default: it starts servers and may install packages).
#[cfg(feature = "testkit")]
pub mod testkit;
#[doc(hidden)]
pub mod verify;
mod workers;

use tokio_util::sync::CancellationToken;

#[doc(hidden)]
pub use cluster::archive::{ArchivedDatabase, ClusterArchiveReport};
pub use config::{
    CopyFormat, CopyMethod, CutoverMode, EndpointConfig, Filters, IntoEndpoint, LagLimit,
    MigrationConfig, MigrationConfigBuilder, MigrationMode, SourcePressure, Statistics,
    VerifyLevel, WalLimit,
};
#[doc(hidden)]
pub use context::RunContext;
pub use context::{CutoverDone, CutoverError, CutoverHandle, CutoverRequest};
pub use error::{ErrorKind, MigrationError, Remedy, Result};
pub use online::{cleanup, unfence, CleanupReport};
pub use plan::{DatabasePlan, Plan, PlannedTable, SpeedSample};
#[doc(hidden)]
pub use progress::human_bytes;
pub use progress::{
    DatabaseProgress, DatabaseState, Event, OnlineSnapshot, Phase, PressureReason, PressureSignal,
    PressureSnapshot, PressureSummary, Snapshot, WorkerSnapshot,
};
pub use report::{
    MigrationReport, OnlineReport, RoundTrips, StatisticsAfterCutover, StatisticsReport,
};
pub use resume::{discard_files, DiscardedFiles};
#[doc(hidden)]
pub use resume::{ResumeToken, Stage};
pub use verify::{ClusterVerifyReport, DatabaseVerifyReport, VerifyOptions, VerifyReport};

/// Runs one migration described by a [`MigrationConfig`].
///
/// Watch it with [`Migrator::subscribe`] (the latest [`progress::Snapshot`])
/// and [`Migrator::events`] (typed [`progress::Event`]s); drive an online
/// one with [`Migrator::cutover_handle`]. Neither slows the run down,
/// whether read or not.
pub struct Migrator {
    config: MigrationConfig,
    cutover: std::sync::Arc<context::CutoverSignal>,
    progress: std::sync::Arc<progress::Progress>,
}

impl Migrator {
    /// A migration of `config`; nothing happens until [`Migrator::run`].
    pub fn new(config: MigrationConfig) -> Self {
        Migrator {
            config,
            cutover: Default::default(),
            progress: progress::Progress::new(),
        }
    }

    #[doc(hidden)]
    /// Publish the run's progress there instead of in a progress of its
    /// own (the CLI shares one with its status page, metrics and events).
    pub fn with_progress(mut self, progress: std::sync::Arc<progress::Progress>) -> Self {
        self.progress = progress;
        self
    }

    #[doc(hidden)]
    /// The run's progress handle.
    pub fn progress(&self) -> &std::sync::Arc<progress::Progress> {
        &self.progress
    }

    /// The latest snapshot of the run, refreshed every 100 ms while it goes:
    /// phase, [`progress::Snapshot::percent`], [`progress::Snapshot::rate`],
    /// [`progress::Snapshot::eta`], the online lag. A receiver that is not
    /// read misses intermediate snapshots and nothing else.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<progress::Snapshot> {
        self.progress.subscribe()
    }

    /// The run's events from now on (stages, items copied, copy progress,
    /// lag, cutover, warnings, errors); see [`progress::Progress::events`].
    pub fn events(&self) -> tokio::sync::broadcast::Receiver<progress::Event> {
        self.progress.events()
    }

    /// A handle that asks this migration (online, `CutoverMode::Manual`)
    /// to cut over while [`Migrator::run`] is streaming, and waits for it
    /// to catch up or for the cutover's outcome.
    pub fn cutover_handle(&self) -> CutoverHandle {
        CutoverHandle(self.cutover.clone())
    }

    /// Run the migration to the end, or until `cancel` fires (then the resume
    /// token is saved and [`MigrationError::Cancelled`] returned).
    pub async fn run(&self, cancel: CancellationToken) -> Result<MigrationReport> {
        let run = context::RunContext {
            cancel,
            progress: Some(self.progress.clone()),
            cutover: self.cutover.clone(),
            cluster: None,
        };
        let _publishing = self.progress.start_run();
        self.cutover.run_started();
        let inner = self.run_inner(&run);
        let r = run.outcome(context::recording(Some(self.progress.clone()), inner).await);
        self.cutover.run_ended();
        r
    }

    async fn run_inner(&self, run: &context::RunContext) -> Result<MigrationReport> {
        // Boxed: a migration's state machine is large, and the caller's
        // stack (a test's current-thread runtime, say) need not hold it.
        if self.config.all_databases {
            Box::pin(cluster::run(&self.config, run)).await
        } else {
            Box::pin(cluster::run_database(&self.config, run)).await
        }
    }

    /// Where this migration's resume token is (or will be).
    pub fn token_path(&self) -> Result<std::path::PathBuf> {
        let def = resume::Definition::from_config(&self.config)?;
        let (_, path) = resume::work_location(&self.config, &def);
        Ok(ResumeToken::path_for(&path))
    }
}

/// Compare source and target without migrating anything.
pub async fn verify(
    source: &EndpointConfig,
    target: &EndpointConfig,
    filters: &Filters,
    options: &VerifyOptions,
    cancel: &CancellationToken,
) -> Result<VerifyReport> {
    verify::verify(source, target, &filters.compile()?, options, cancel).await
}

/// Compare every database a whole-cluster migration takes (see
/// [`MigrationConfig::all_databases`]; `exclude_databases` are pg_dumpall
/// patterns), each as [`verify`] does, and the globals: roles,
/// memberships, settings, parameter privileges, tablespaces. `source` and
/// `target` name each server's maintenance database.
pub async fn verify_all_databases(
    source: &EndpointConfig,
    target: &EndpointConfig,
    exclude_databases: &[String],
    filters: &Filters,
    options: &VerifyOptions,
    cancel: &CancellationToken,
) -> Result<ClusterVerifyReport> {
    cluster::verify(
        source,
        target,
        exclude_databases,
        &filters.compile()?,
        options,
        cancel,
    )
    .await
}

/// What a migration would do, without changing anything: its tables,
/// sizes, an estimate, what it would create on either server, and what
/// would refuse it. With [`MigrationConfig::all_databases`], each
/// database's plan, added up, and the login roles whose passwords cannot
/// be carried.
pub async fn plan(config: &MigrationConfig) -> Result<Plan> {
    if config.all_databases {
        Box::pin(cluster::plan(config)).await
    } else {
        Box::pin(plan::plan(config)).await
    }
}

/// `dump --all-databases`: the globals and every database a cluster
/// migration would take, each into its own archive under
/// `config.dump_path` (for the binary; see the README).
#[doc(hidden)]
pub async fn dump_all_databases(
    config: &MigrationConfig,
    run: &RunContext,
) -> Result<ClusterArchiveReport> {
    let _publishing = run.progress.as_ref().map(|p| p.start_run());
    let r = context::recording(
        run.progress.clone(),
        Box::pin(cluster::archive::dump_all(config, run)),
    )
    .await;
    run.outcome(r)
}

/// `restore --all-databases`: the globals and every database of a cluster
/// archive written by [`dump_all_databases`].
#[doc(hidden)]
pub async fn restore_all_databases(
    config: &MigrationConfig,
    run: &RunContext,
) -> Result<ClusterArchiveReport> {
    let _publishing = run.progress.as_ref().map(|p| p.start_run());
    let r = context::recording(
        run.progress.clone(),
        Box::pin(cluster::archive::restore_all(config, run)),
    )
    .await;
    run.outcome(r)
}
