//! Everything that talks to PostgreSQL: connections (TLS), session settings,
//! quoting and catalog queries. All SQL of the crate lives under this module
//! or next to the stage that owns it, built with [`quote`].

pub mod catalog;
pub mod connect;
pub(crate) mod meter;
pub mod pressure;
pub mod quote;
pub mod replication;
pub mod session;
pub mod sessions;
pub mod tls;
