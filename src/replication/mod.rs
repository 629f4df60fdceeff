//! Online migration: what the source's logical replication sends, decoded,
//! and everything built on it (preflight, apply, cutover).
//!
//! The session that receives the stream lives in [`crate::pg::replication`]
//! (it is wire protocol, like the rest of `pg`); [`pgoutput`] turns its
//! payloads into typed changes. [`pgoutput`] is a pure decoder with no I/O,
//! so it can be tested byte by byte and used from any task.
//!
//! Stages of the online mode: preflight (reads), [`source`] (the only module
//! that changes the source), [`stream`] and [`apply`] (the target). The
//! `online` orchestrator drives them.

pub mod apply;
pub mod batch;
pub mod ddl;
pub mod pgoutput;
pub mod preflight;
pub mod reverse;
pub mod source;
pub mod stream;

/// The prefix of the logical message our cutover writes on the source
/// after the fence: when the applier has committed the transaction holding
/// it, everything before the fence is on the target.
pub const FENCE_MESSAGE_PREFIX: &str = "pg_dbmigrator.fence";

pub use crate::pg::replication::{Lsn, PgTimestamp};

/// The replication slot and the publication of a migration share one name,
/// derived from the migration id, so a rerun (or `cleanup`) finds them.
/// Slot names allow only lower-case letters, digits and underscores, at
/// most 63 bytes.
pub fn object_name(migration_id: &str) -> String {
    let mut s: String = format!("pg_dbmigrator_{migration_id}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    s.truncate(63);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_names_are_valid_slot_names() {
        assert_eq!(object_name("m0123abc"), "pg_dbmigrator_m0123abc");
        assert_eq!(object_name("My-Run.1"), "pg_dbmigrator_my_run_1");
        assert_eq!(object_name(&"x".repeat(80)).len(), 63);
    }
}
