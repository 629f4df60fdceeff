//! Sequences: set each target sequence to the source's value.
//!
//! Sequence values are not transactional, so this reads the current value
//! (as pg_dump does) rather than the snapshot's; it runs after the table copy
//! so the target never hands out a number the source already used.

use std::collections::HashMap;

use tokio_postgres::Client;
use tracing::debug;

use crate::error::{MigrationError, Result};
use crate::pg::catalog::{self, SequenceInfo};
use crate::pg::quote;

/// Copy `(last_value, is_called)` of every sequence: one query reads
/// them (see [`catalog::sequence_states`]), one statement per few
/// thousand sets them (this runs inside the cutover's downtime too).
/// Returns how many were set.
pub async fn copy_sequences(src: &Client, dst: &Client, seqs: &[SequenceInfo]) -> Result<usize> {
    let states = catalog::sequence_states(src, seqs).await?;
    set_sequences(dst, seqs, &states).await?;
    Ok(seqs.len())
}

/// The values set on the target, by sequence (quoted `schema.name`).
pub type SequenceValues = HashMap<String, (i64, bool)>;

/// [`copy_sequences`], returning what was set: before an online
/// cutover's fence, so that under it only the sequences that moved since
/// are set ([`copy_moved_sequences`]).
///
/// Best effort: the stream may not have brought a sequence created on the
/// source to the target yet (it is left to the fence), and a failure
/// leaves every sequence to the fence.
pub async fn presync_sequences(
    src: &Client,
    dst: &Client,
    seqs: &[SequenceInfo],
) -> Result<SequenceValues> {
    let names: Vec<String> = seqs.iter().map(|s| s.qualified()).collect();
    let on_target = catalog::relations_exist(dst, &names).await?;
    let seqs: Vec<SequenceInfo> = seqs
        .iter()
        .zip(on_target)
        .filter(|(_, there)| *there)
        .map(|(s, _)| s.clone())
        .collect();
    let set = async {
        let states = catalog::sequence_states(src, &seqs).await?;
        set_sequences(dst, &seqs, &states).await?;
        Ok::<_, MigrationError>(states)
    };
    match set.await {
        Ok(states) => Ok(seqs.iter().map(|s| s.qualified()).zip(states).collect()),
        Err(e) => {
            debug!(error = %e, "sequences not set before the fence: all are set under it");
            Ok(SequenceValues::new())
        }
    }
}

/// Read every sequence again and set on the target only those whose value
/// differs from `known` (or that it does not know: created since).
/// Returns how many were set.
pub async fn copy_moved_sequences(
    src: &Client,
    dst: &Client,
    seqs: &[SequenceInfo],
    known: &SequenceValues,
) -> Result<usize> {
    let states = catalog::sequence_states(src, seqs).await?;
    let (moved, values): (Vec<SequenceInfo>, Vec<(i64, bool)>) = seqs
        .iter()
        .zip(states)
        .filter(|(s, v)| known.get(&s.qualified()) != Some(v))
        .map(|(s, v)| (s.clone(), v))
        .unzip();
    set_sequences(dst, &moved, &values).await?;
    Ok(moved.len())
}

/// `setval` each of `seqs` to its `values`, a few thousand per statement.
async fn set_sequences(dst: &Client, seqs: &[SequenceInfo], values: &[(i64, bool)]) -> Result<()> {
    for (chunk, values) in seqs.chunks(2000).zip(values.chunks(2000)) {
        let rows: Vec<String> = chunk
            .iter()
            .zip(values)
            .map(|(s, (last, called))| {
                format!(
                    "({}, {last}::int8, {called})",
                    quote::literal(&s.qualified())
                )
            })
            .collect();
        let sql = format!(
            "SELECT pg_catalog.setval(x::regclass, v, c) FROM (VALUES {}) AS t(x, v, c)",
            rows.join(", ")
        );
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
    Ok(())
}
