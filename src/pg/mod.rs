//! Everything that talks to PostgreSQL: connections (TLS), quoting, catalog queries.

pub mod connect;
pub mod quote;
pub mod tls;
