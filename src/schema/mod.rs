//! Schema reproduction from the catalogs (pg_dump's design, not its code):
//! load every object once, build a dependency graph, sort it by type
//! priority and name with a stable topological sort, repair the known
//! dependency loops, and emit pre-data and post-data DDL.
//!
//! Being built (issue 3). Pieces that stand on their own land first:
//! [`sort`] (ordering and loop detection) and [`acl`] (GRANT/REVOKE
//! commands from aclitem arrays).

pub mod acl;
pub mod sort;
