//! The running state of one migration, beside its description: where
//! progress is published, the cancellation tree's root, and the cutover
//! signal a caller can raise. The orchestrator builds it (the binary or
//! [`crate::Migrator`] supplies the progress handle) and hands it down;
//! [`crate::MigrationConfig`] stays a pure description that can be
//! serialized, hashed and compared.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::progress::Progress;
use crate::resume::TokenObserver;

/// Asks a running online migration to cut over (see [`CutoverHandle`]).
#[derive(Debug, Default)]
pub struct CutoverSignal {
    requested: AtomicBool,
    notify: Notify,
}

impl CutoverSignal {
    /// Whether a cutover was asked for since the last call (and forget it).
    pub fn take(&self) -> bool {
        self.requested.swap(false, Ordering::AcqRel)
    }

    /// Wait until a cutover is asked for.
    pub async fn notified(&self) {
        self.notify.notified().await
    }
}

/// A library caller's way to trigger the cutover of a running
/// `--cutover manual` migration (the CLI's `pg_dbmigrator cutover`).
#[derive(Debug, Clone)]
pub struct CutoverHandle(pub(crate) Arc<CutoverSignal>);

impl CutoverHandle {
    /// Request the cutover; the migration starts it within a second.
    pub fn request(&self) {
        self.0.requested.store(true, Ordering::Release);
        self.0.notify.notify_one();
    }
}

/// What a run carries besides its [`crate::MigrationConfig`].
#[derive(Clone, Default)]
pub struct RunContext {
    /// Cancelling it stops every task of the run (they save the token first).
    pub cancel: CancellationToken,
    /// Where progress is published, if anywhere (`--http`, `--json`, the console).
    pub progress: Option<Arc<Progress>>,
    /// Raised by a [`CutoverHandle`].
    pub cutover: Arc<CutoverSignal>,
}

impl RunContext {
    pub fn new(cancel: CancellationToken) -> Self {
        RunContext {
            cancel,
            ..Default::default()
        }
    }

    /// The progress handle as the resume token's observer.
    pub fn token_observer(&self) -> Option<Arc<dyn TokenObserver>> {
        self.progress.clone().map(|p| p as Arc<dyn TokenObserver>)
    }
}

impl std::fmt::Debug for RunContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunContext")
            .field("cancelled", &self.cancel.is_cancelled())
            .field("progress", &self.progress.is_some())
            .field("cutover", &self.cutover)
            .finish()
    }
}
