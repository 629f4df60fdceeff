//! ACL commands (being written).
