//! A set of sibling worker tasks that live and fail together.
//!
//! Every parallel stage (copy, index builds, validations, verify) has the
//! same needs: a worker blocked on a lock or a slow server must not hold up
//! Ctrl-C, so each one races against the stage's cancellation token; the
//! first worker to fail stops its siblings; and once all are joined, the
//! root cause is reported rather than the "cancelled" of the workers it
//! stopped.

use std::future::Future;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::error::{MigrationError, Result};

pub(crate) struct Workers {
    set: JoinSet<Result<()>>,
    stop: CancellationToken,
    what: &'static str,
}

impl Workers {
    /// Workers stopped by `cancel` (a child token is used: their failure
    /// does not cancel the caller). `what` names them if one panics.
    pub fn new(cancel: &CancellationToken, what: &'static str) -> Self {
        Workers {
            set: JoinSet::new(),
            stop: cancel.child_token(),
            what,
        }
    }

    /// The token the workers stop on; pass it to code that checks it.
    pub fn stop_token(&self) -> CancellationToken {
        self.stop.clone()
    }

    pub fn spawn(&mut self, work: impl Future<Output = Result<()>> + Send + 'static) {
        let stop = self.stop.clone();
        let work = crate::recorded::carried(work);
        self.set.spawn(async move {
            // Dropping the future closes its sessions, which rolls back any
            // open transaction.
            let r = tokio::select! {
                _ = stop.cancelled() => Err(MigrationError::Cancelled),
                r = work => r,
            };
            if r.is_err() {
                stop.cancel();
            }
            r
        });
    }

    /// Join all workers. The first real error wins over `Cancelled`; if
    /// none failed but `cancel` fired, `Cancelled`.
    pub async fn join(mut self, cancel: &CancellationToken) -> Result<()> {
        let mut first_err: Option<MigrationError> = None;
        while let Some(joined) = self.set.join_next().await {
            let r = joined.unwrap_or_else(|e| {
                Err(MigrationError::Internal(format!(
                    "{} worker panicked: {e}",
                    self.what
                )))
            });
            if let Err(e) = r {
                if first_err.is_none() || matches!(first_err, Some(MigrationError::Cancelled)) {
                    first_err = Some(e);
                }
            }
        }
        match first_err {
            Some(e) => Err(e),
            None if cancel.is_cancelled() => Err(MigrationError::Cancelled),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_root_cause_wins_over_the_siblings_it_stopped() {
        let cancel = CancellationToken::new();
        let mut w = Workers::new(&cancel, "test");
        let stop = w.stop_token();
        w.spawn(async move {
            stop.cancelled().await;
            Err(MigrationError::Cancelled)
        });
        w.spawn(async {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            Err(MigrationError::Internal("boom".into()))
        });
        let e = w.join(&cancel).await.unwrap_err();
        assert!(matches!(e, MigrationError::Internal(m) if m == "boom"));
        assert!(
            !cancel.is_cancelled(),
            "a failing worker must not cancel the caller"
        );
    }

    #[tokio::test]
    async fn a_cancelled_stage_says_so() {
        let cancel = CancellationToken::new();
        let mut w = Workers::new(&cancel, "test");
        w.spawn(futures::future::pending());
        cancel.cancel();
        assert!(matches!(
            w.join(&cancel).await,
            Err(MigrationError::Cancelled)
        ));
    }
}
