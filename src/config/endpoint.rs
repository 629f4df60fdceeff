//! One server endpoint, described the way libpq describes it.
//!
//! `EndpointConfig::parse` accepts everything `psql` accepts as a connection
//! string: URIs (`postgresql://user:p%40ss@host:5432/db?sslmode=require`) and
//! key=value strings (`host=/run/pg port=5433 password='a b\'c'`). Parts left
//! out fall back to the `PG*` environment variables and the password file,
//! with libpq's rules, so a DBA's existing setup works unchanged.
//!
//! The password is held in a [`Secret`]: it never appears in `Debug`,
//! `Display`, errors, logs or the resume token.

// MigrationError is large by design (it keeps the server's full error
// report); boxing it is a crate-wide change to error.rs, not one for here.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::error::{MigrationError, Result};

/// A string that must never be shown: `Debug` and `Display` print `***`.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    /// The secret itself; call only where it is handed to the server.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Where a server listens.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Host {
    /// A host name or IP address, reached over TCP.
    Tcp(String),
    /// A directory holding the server's Unix-domain socket (`.s.PGSQL.<port>`).
    Unix(PathBuf),
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Tcp(h) => f.write_str(h),
            Host::Unix(p) => write!(f, "{}", p.display()),
        }
    }
}

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    Disable,
    Allow,
    #[default]
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    pub fn as_str(&self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// A fully resolved endpoint: every field has its final value after the
/// connection string, the environment, the defaults and the password file.
#[derive(Clone, PartialEq, Eq)]
pub struct EndpointConfig {
    /// One or more hosts, tried in order (libpq's `host=a,b`).
    pub hosts: Vec<Host>,
    /// One port per host, or a single port for all.
    pub ports: Vec<u16>,
    pub user: String,
    pub password: Option<Secret>,
    pub dbname: String,
    pub sslmode: SslMode,
    /// `sslrootcert`: a PEM file, or `system` for the system's trust store.
    pub sslrootcert: Option<String>,
    /// Client certificate and key for certificate authentication.
    pub sslcert: Option<PathBuf>,
    pub sslkey: Option<PathBuf>,
    pub application_name: Option<String>,
    /// Bound on connect + TLS + authentication. libpq's default is none; ours is 10 s.
    pub connect_timeout: Duration,
    /// Server options (`-c name=value ...`), as libpq's `options`.
    pub options: Option<String>,
}

/// The default for `connect_timeout` when neither the string nor
/// `PGCONNECT_TIMEOUT` sets one.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

impl EndpointConfig {
    /// Parse a libpq connection string (URI or key=value), then fill what it
    /// leaves out from the process environment, defaults and password file.
    pub fn parse(conninfo: &str) -> Result<Self> {
        Self::parse_with_env(conninfo, &|k| std::env::var(k).ok())
    }

    /// As [`parse`](Self::parse), with the environment given as a lookup
    /// function (tests use this instead of mutating the process environment).
    pub fn parse_with_env(conninfo: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Self> {
        crate::config::conninfo::parse(conninfo, env)
    }

    /// As [`parse`](Self::parse), with errors naming `endpoint` (say "source"
    /// or "target") rather than the generic "connection string", so a user
    /// with two strings knows which one is wrong.
    pub fn parse_for(endpoint: &str, conninfo: &str) -> Result<Self> {
        Self::parse(conninfo).map_err(|e| match e {
            MigrationError::ConnInfo { reason, .. } => MigrationError::ConnInfo {
                endpoint: endpoint.to_string(),
                reason,
            },
            other => other,
        })
    }

    /// A description safe to print: host, port, user, dbname. Never the password.
    pub fn redacted(&self) -> String {
        let hosts: Vec<String> = self.hosts.iter().map(|h| h.to_string()).collect();
        let ports: Vec<String> = self.ports.iter().map(|p| p.to_string()).collect();
        format!(
            "host={} port={} user={} dbname={}",
            hosts.join(","),
            ports.join(","),
            self.user,
            self.dbname
        )
    }

    /// The port that goes with host number `i` (libpq: one port for all, or one per host).
    pub fn port_for(&self, i: usize) -> u16 {
        if self.ports.len() == 1 {
            self.ports[0]
        } else {
            self.ports.get(i).copied().unwrap_or(5432)
        }
    }

    /// A copy pointing at another database on the same server.
    pub fn with_dbname(&self, dbname: &str) -> Self {
        let mut c = self.clone();
        c.dbname = dbname.to_string();
        c
    }
}

impl fmt::Debug for EndpointConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EndpointConfig")
            .field("hosts", &self.hosts)
            .field("ports", &self.ports)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("dbname", &self.dbname)
            .field("sslmode", &self.sslmode)
            .field("sslrootcert", &self.sslrootcert)
            .field("application_name", &self.application_name)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

impl fmt::Display for EndpointConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// Serialized as the redacted description; a password is never written out.
impl serde::Serialize for EndpointConfig {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.redacted())
    }
}

/// Deserialized from a connection string, resolved like [`EndpointConfig::parse`].
impl<'de> serde::Deserialize<'de> for EndpointConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        EndpointConfig::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_for_names_the_endpoint() {
        match EndpointConfig::parse_for("source", "port=abc password=Sekr1t") {
            Err(MigrationError::ConnInfo { endpoint, reason }) => {
                assert_eq!(endpoint, "source");
                assert!(!reason.contains("Sekr1t"));
            }
            other => panic!("{other:?}"),
        }
    }
}
