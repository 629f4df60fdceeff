//! Sequences: set each target sequence to the source's value.
//!
//! Sequence values are not transactional, so this reads the current value
//! (as pg_dump does) rather than the snapshot's; it runs after the table copy
//! so the target never hands out a number the source already used.

use tokio_postgres::Client;
use tracing::debug;

use crate::error::{MigrationError, Result};
use crate::pg::catalog::{self, SequenceInfo};

/// Copy `(last_value, is_called)` of every sequence. Returns how many were set.
pub async fn copy_sequences(src: &Client, dst: &Client, seqs: &[SequenceInfo]) -> Result<usize> {
    for s in seqs {
        let (last, called) = catalog::sequence_state(src, s).await?;
        dst.query_one(
            "SELECT pg_catalog.setval($1::text::regclass, $2, $3)",
            &[&s.qualified(), &last, &called],
        )
        .await
        .map_err(|e| {
            MigrationError::db(
                format!("setting sequence {} on the target", s.qualified()),
                e,
            )
        })?;
        debug!(sequence = %s.qualified(), last, called, "sequence set");
    }
    Ok(seqs.len())
}
