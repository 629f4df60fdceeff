//! Sequences: set each target sequence to the source's value.
//!
//! Sequence values are not transactional, so this reads the current value
//! (as pg_dump does) rather than the snapshot's; it runs after the table copy
//! so the target never hands out a number the source already used.

use tokio_postgres::Client;
use tracing::debug;

use crate::error::{MigrationError, Result};
use crate::pg::catalog::{self, SequenceInfo};
use crate::pg::quote;

/// Copy `(last_value, is_called)` of every sequence, a few hundred per
/// round trip each way (this runs inside the cutover's downtime too).
/// Returns how many were set.
pub async fn copy_sequences(src: &Client, dst: &Client, seqs: &[SequenceInfo]) -> Result<usize> {
    let states = catalog::sequence_states(src, seqs).await?;
    for (chunk, values) in seqs.chunks(500).zip(states.chunks(500)) {
        let sql: String = chunk
            .iter()
            .zip(values)
            .map(|(s, (last, called))| {
                format!(
                    "SELECT pg_catalog.setval({}::regclass, {last}, {called});\n",
                    quote::literal(&s.qualified())
                )
            })
            .collect();
        if dst.batch_execute(&sql).await.is_err() {
            // One at a time, so the error names the sequence.
            for (s, (last, called)) in chunk.iter().zip(values) {
                dst.query_one(
                    "SELECT pg_catalog.setval($1::text::regclass, $2, $3)",
                    &[&s.qualified(), last, called],
                )
                .await
                .map_err(|e| {
                    MigrationError::db(
                        format!("setting sequence {} on the target", s.qualified()),
                        e,
                    )
                })?;
            }
        }
        debug!(sequences = chunk.len(), "sequences set");
    }
    Ok(seqs.len())
}
