//! Online migration building blocks: what the source's logical replication
//! sends, decoded.
//!
//! The session that receives the stream lives in [`crate::pg::replication`]
//! (it is wire protocol, like the rest of `pg`); this module turns its
//! payloads into typed changes. [`pgoutput`] is a pure decoder with no I/O,
//! so it can be tested byte by byte and used from any task.

pub mod pgoutput;

pub use crate::pg::replication::{Lsn, PgTimestamp};
