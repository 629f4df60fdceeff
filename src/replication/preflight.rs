//! Online preflight (placeholder; being written on a branch).

use serde::{Deserialize, Serialize};

/// What --fix-replica-identity changed on one table, recorded in the resume token so cleanup can undo it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaIdentityFix {
    pub schema: String,
    pub name: String,
    /// pg_class.relreplident before: 'd', 'n', 'f' or 'i' (as a String of one char).
    pub original: String,
    /// For original 'i': the index that was the identity.
    pub original_index: Option<String>,
    /// What we set.
    pub new: NewIdentity,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum NewIdentity {
    UsingIndex(String),
    Full,
}

// ---- TEMPORARY stubs until the preflight branch lands (replaced whole) ----
use crate::error::Result;
use tokio_postgres::Client;

pub struct SourceChecks<'a> {
    pub tables: &'a [crate::pg::catalog::TableInfo],
    pub slot_name: &'a str,
    pub publication_name: &'a str,
    pub resuming: bool,
    pub fix_replica_identity: bool,
    pub large_objects: bool,
}

#[derive(Debug, Clone, Default)]
pub struct SourceReport {
    pub server_version: i32,
    pub fixes: Vec<ReplicaIdentityFix>,
    pub unlogged: Vec<String>,
    pub large_objects: i64,
    pub warnings: Vec<String>,
}

pub async fn check_source(_src: &Client, _c: &SourceChecks<'_>) -> Result<SourceReport> {
    Ok(SourceReport::default())
}
pub async fn apply_replica_identity_fixes(_src: &Client, _f: &[ReplicaIdentityFix]) -> Result<()> {
    Ok(())
}
pub async fn restore_replica_identities(_c: &Client, _f: &[ReplicaIdentityFix]) -> Result<()> {
    Ok(())
}
pub async fn check_target(_dst: &Client) -> Result<()> {
    Ok(())
}
