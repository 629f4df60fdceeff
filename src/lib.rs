//! pg_dbmigrator: move a PostgreSQL database between servers.
#![forbid(unsafe_code)]

pub mod config;
pub mod error;
pub mod pg;
pub mod testkit;

pub use config::{CopyFormat, EndpointConfig, Filters, MigrationConfig, MigrationMode, VerifyLevel};
pub use error::{MigrationError, Result};
