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
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{MigrationError, Result};

/// A string that must never be shown: `Debug` and `Display` print `***`.
///
/// It also remembers where it came from, so that writing an endpoint out
/// (serde) can say how to find the password again without ever writing it:
/// a password from `PGPASSWORD` or a password file is found again the same
/// way; one written in the connection string or set in code cannot be.
#[derive(Clone, Default)]
pub struct Secret {
    value: String,
    origin: SecretOrigin,
}

/// Where a [`Secret`] came from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) enum SecretOrigin {
    /// The connection string or the caller's code: it exists nowhere else.
    #[default]
    Given,
    /// `PGPASSWORD`: read again from the environment where it is loaded.
    Environment,
    /// A libpq password file (`passfile`, `PGPASSFILE`, `~/.pgpass`).
    PassFile(PathBuf),
    /// A file holding only the password (`password_file` in a config file,
    /// [`EndpointConfig::with_password_file`]).
    PasswordFile(PathBuf),
}

impl Secret {
    /// A secret given in code (or in a connection string). An endpoint
    /// holding one refuses to be serialized: see [`EndpointConfig`].
    pub fn new(s: impl Into<String>) -> Self {
        Secret {
            value: s.into(),
            origin: SecretOrigin::Given,
        }
    }

    pub(crate) fn with_origin(s: impl Into<String>, origin: SecretOrigin) -> Self {
        Secret {
            value: s.into(),
            origin,
        }
    }

    pub(crate) fn origin(&self) -> &SecretOrigin {
        &self.origin
    }

    /// The secret itself; call only where it is handed to the server.
    pub fn expose(&self) -> &str {
        &self.value
    }
}

/// Two secrets are equal when their values are: where each was read from
/// does not make them different passwords.
impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        self.value == other.value
    }
}

impl Eq for Secret {}

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
    /// Plain TCP only.
    Disable,
    /// Plain first, TLS if the server insists.
    Allow,
    /// TLS if the server offers it, plain otherwise (libpq's default).
    #[default]
    Prefer,
    /// TLS, without checking the server's certificate.
    Require,
    /// TLS, with a certificate signed by a trusted authority.
    VerifyCa,
    /// TLS, with a trusted certificate whose name matches the host.
    VerifyFull,
}

impl SslMode {
    /// The keyword as libpq spells it (`verify-full`).
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
///
/// With serde it is written as a connection string holding every setting
/// but the password, and read from a connection string or from a table
/// `{ conninfo = "...", password_file = "/path" }`. A password is never
/// written out, and a round trip must not lose one silently, so:
///
/// * a password from `PGPASSWORD` is found there again when read back;
/// * one from a libpq password file (`passfile=`, `PGPASSFILE`,
///   `~/.pgpass`) is written as `passfile='...'`;
/// * one from a `password_file` is written as that table;
/// * one written in the connection string (or set in code) makes
///   serialization fail, naming the endpoint: give it through one of the
///   three ways above instead.
#[derive(Clone, PartialEq, Eq)]
pub struct EndpointConfig {
    /// One or more hosts, tried in order (libpq's `host=a,b`).
    pub hosts: Vec<Host>,
    /// One port per host, or a single port for all.
    pub ports: Vec<u16>,
    /// The role to log in as (libpq's default: the operating system user).
    pub user: String,
    /// From the string, `PGPASSWORD` or a password file; never shown.
    pub password: Option<Secret>,
    /// The database (libpq's default: the user name).
    pub dbname: String,
    /// Whether and how TLS is used.
    pub sslmode: SslMode,
    /// `sslrootcert`: a PEM file, or `system` for the system's trust store.
    pub sslrootcert: Option<String>,
    /// Client certificate and key for certificate authentication.
    pub sslcert: Option<PathBuf>,
    /// The private key of `sslcert`.
    pub sslkey: Option<PathBuf>,
    /// Shown in `pg_stat_activity`; the run adds its migration id to it.
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

/// Written as [`EndpointConfig::to_conninfo`], or as a table naming its
/// `password_file`; refused when the password exists nowhere but here.
impl serde::Serialize for EndpointConfig {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        self.serialize_named(None, s)
    }
}

impl EndpointConfig {
    /// Serialize, naming the endpoint (`source`, `target`) in the refusal.
    pub(crate) fn serialize_named<S: serde::Serializer>(
        &self,
        which: Option<&str>,
        s: S,
    ) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::{Error, SerializeStruct};
        match self.password.as_ref().map(Secret::origin) {
            None | Some(SecretOrigin::Environment) | Some(SecretOrigin::PassFile(_)) => {
                s.serialize_str(&self.to_conninfo())
            }
            Some(SecretOrigin::PasswordFile(path)) => {
                let mut t = s.serialize_struct("EndpointConfig", 2)?;
                t.serialize_field("conninfo", &self.to_conninfo())?;
                t.serialize_field("password_file", path)?;
                t.end()
            }
            Some(SecretOrigin::Given) => Err(S::Error::custom(format!(
                "the {}endpoint ({}) holds a password, which is never written out: give the password \
                 through a password file instead (a `password_file` beside the conninfo, \
                 {{ conninfo = \"...\", password_file = \"/path\" }}; or libpq's passfile=, \
                 PGPASSFILE or ~/.pgpass) or through PGPASSWORD",
                which.map(|w| format!("{w} ")).unwrap_or_default(),
                self.redacted()
            ))),
        }
    }

    /// A connection string that parses back to this endpoint, without the
    /// password (a password read from a libpq password file is named by
    /// that file's `passfile=`). Every setting is spelled out, so the
    /// environment where it is parsed again changes nothing but the
    /// password's `PGPASSWORD`.
    pub fn to_conninfo(&self) -> String {
        fn quoted(v: &str) -> String {
            format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
        }
        let hosts: Vec<String> = self.hosts.iter().map(|h| h.to_string()).collect();
        let ports: Vec<String> = self.ports.iter().map(|p| p.to_string()).collect();
        let mut parts = vec![
            format!("host={}", quoted(&hosts.join(","))),
            format!("port={}", quoted(&ports.join(","))),
            format!("user={}", quoted(&self.user)),
            format!("dbname={}", quoted(&self.dbname)),
            format!("sslmode={}", self.sslmode.as_str()),
        ];
        let path = |p: &PathBuf| p.to_string_lossy().into_owned();
        for (key, value) in [
            ("sslrootcert", self.sslrootcert.clone()),
            ("sslcert", self.sslcert.as_ref().map(path)),
            ("sslkey", self.sslkey.as_ref().map(path)),
            ("application_name", self.application_name.clone()),
            ("options", self.options.clone()),
        ] {
            if let Some(v) = value {
                parts.push(format!("{key}={}", quoted(&v)));
            }
        }
        parts.push(format!(
            "connect_timeout={}",
            self.connect_timeout.as_secs().max(2)
        ));
        if let Some(SecretOrigin::PassFile(p)) = self.password.as_ref().map(Secret::origin) {
            parts.push(format!("passfile={}", quoted(&path(p))));
        }
        parts.join(" ")
    }

    /// Take the password from a file holding it alone (its first line), as
    /// a Kubernetes or systemd secret is mounted. It replaces a password from
    /// `PGPASSWORD` or a password file; a password already written in the
    /// connection string is an error (two passwords: which one is meant?).
    pub fn with_password_file(mut self, path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        if self
            .password
            .as_ref()
            .is_some_and(|p| *p.origin() == SecretOrigin::Given)
        {
            return Err(MigrationError::Config(format!(
                "the connection string of {} holds a password and a password_file ({}) is given too: keep one",
                self.redacted(),
                path.display()
            )));
        }
        let text = std::fs::read_to_string(path).map_err(|e| {
            MigrationError::Config(format!(
                "cannot read the password_file {}: {e}",
                path.display()
            ))
        })?;
        let password = text.lines().next().unwrap_or_default();
        if password.is_empty() {
            return Err(MigrationError::Config(format!(
                "the password_file {} is empty: its first line must be the password",
                path.display()
            )));
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            if std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o077 != 0) {
                tracing::warn!(
                    "password_file \"{}\" has group or world access; permissions should be u=rw (0600) or less",
                    path.display()
                );
            }
        }
        self.password = Some(Secret::with_origin(
            password,
            SecretOrigin::PasswordFile(path.to_path_buf()),
        ));
        Ok(self)
    }
}

/// Read from a connection string, resolved like [`EndpointConfig::parse`],
/// or from a table `{ conninfo = "...", password_file = "/path" }`.
impl<'de> serde::Deserialize<'de> for EndpointConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Table {
            conninfo: String,
            password_file: Option<PathBuf>,
        }
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = EndpointConfig;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(
                    "a connection string, or a table { conninfo = \"...\", password_file = \"/path\" }",
                )
            }
            fn visit_str<E: serde::de::Error>(
                self,
                v: &str,
            ) -> std::result::Result<Self::Value, E> {
                EndpointConfig::parse(v).map_err(E::custom)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> std::result::Result<Self::Value, A::Error> {
                use serde::de::Error;
                let t = <Table as serde::Deserialize>::deserialize(
                    serde::de::value::MapAccessDeserializer::new(map),
                )?;
                let ep = EndpointConfig::parse(&t.conninfo).map_err(A::Error::custom)?;
                match t.password_file {
                    Some(p) => ep.with_password_file(p).map_err(A::Error::custom),
                    None => Ok(ep),
                }
            }
        }
        d.deserialize_any(Visitor)
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

    /// An environment without passwords: no PGPASSWORD, no ~/.pgpass.
    fn clean(k: &str) -> Option<String> {
        (k == "USER").then(|| "alice".to_string())
    }

    #[test]
    fn a_password_given_in_the_string_refuses_to_be_serialized() {
        let c: crate::config::MigrationConfig = crate::config::MigrationConfig {
            source: Some(EndpointConfig::parse("host=a dbname=d user=u password=Sekr1t").unwrap()),
            ..Default::default()
        };
        let e = serde_json::to_string(&c).unwrap_err().to_string();
        assert!(e.contains("the source endpoint (host=a"), "{e}");
        assert!(
            e.contains("password_file") && e.contains("PGPASSWORD"),
            "{e}"
        );
        assert!(!e.contains("Sekr1t"), "{e}");
        // So does one set in code.
        let mut ep = EndpointConfig::parse_with_env("host=a", &clean).unwrap();
        ep.password = Some(Secret::new("Sekr1t"));
        let e = serde_json::to_string(&ep).unwrap_err().to_string();
        assert!(e.contains("endpoint (host=a"), "{e}");
    }

    // (TOML comes with the `cli` feature.)
    #[cfg(feature = "cli")]
    #[test]
    fn a_round_trip_keeps_every_setting() {
        let s = "host=/run/pg,db2 port=5433,5434 user=o\\'k dbname='my db' sslmode=verify-full \
                 sslrootcert=/etc/ca.pem sslcert=/c.pem sslkey=/k.pem application_name=app \
                 connect_timeout=7 options='-c work_mem=64MB'";
        let ep = EndpointConfig::parse_with_env(s, &clean).unwrap();
        assert_eq!(ep.password, None);
        let json = serde_json::to_string(&ep).unwrap();
        let back: EndpointConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(back, ep, "{json}");
        // Within a MigrationConfig, through TOML.
        let c = crate::config::MigrationConfig {
            source: Some(ep.clone()),
            target: Some(ep.with_dbname("other")),
            jobs: 3,
            ..Default::default()
        };
        let text = toml::to_string(&c).unwrap();
        let back: crate::config::MigrationConfig = toml::from_str(&text).unwrap();
        assert_eq!(back.source.as_ref(), Some(&ep));
        assert_eq!(back.target.unwrap().dbname, "other");
        assert_eq!(back.jobs, 3);
    }

    #[test]
    fn a_password_from_the_environment_or_a_passfile_is_found_again() {
        let env = |k: &str| match k {
            "PGPASSWORD" => Some("fromenv".to_string()),
            _ => clean(k),
        };
        let ep = EndpointConfig::parse_with_env("host=h dbname=d", &env).unwrap();
        assert_eq!(ep.password.as_ref().map(Secret::expose), Some("fromenv"));
        let json = serde_json::to_string(&ep).unwrap();
        assert!(!json.contains("fromenv"), "{json}");

        let dir = tempfile::tempdir().unwrap();
        let pass = dir.path().join("pgpass");
        std::fs::write(&pass, "h:5432:d:alice:frompassfile\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&pass, std::fs::Permissions::from_mode(0o600)).unwrap();
        let s = format!("host=h dbname=d passfile='{}'", pass.display());
        let ep = EndpointConfig::parse_with_env(&s, &clean).unwrap();
        assert_eq!(
            ep.password.as_ref().map(Secret::expose),
            Some("frompassfile")
        );
        let json = serde_json::to_string(&ep).unwrap();
        assert!(
            !json.contains("frompassfile") && json.contains("passfile="),
            "{json}"
        );
        let back: EndpointConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(
            back.password.as_ref().map(Secret::expose),
            Some("frompassfile")
        );
    }

    #[cfg(feature = "cli")]
    #[test]
    fn a_password_file_is_read_and_named_not_written() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "s3cret\n").unwrap();
        let toml_text = format!(
            "jobs = 2\n[source]\nconninfo = \"host=h dbname=d user=u\"\npassword_file = \"{}\"\n",
            file.display()
        );
        let c: crate::config::MigrationConfig = toml::from_str(&toml_text).unwrap();
        let ep = c.source.clone().unwrap();
        assert_eq!(ep.password.as_ref().map(Secret::expose), Some("s3cret"));
        // Written back as the same table, never with the password.
        let out = toml::to_string(&c).unwrap();
        assert!(
            out.contains("password_file") && !out.contains("s3cret"),
            "{out}"
        );
        let back: crate::config::MigrationConfig = toml::from_str(&out).unwrap();
        assert_eq!(back.source, c.source);

        // Two passwords, an empty file, a missing file, an unknown key: refused.
        let with_pw = EndpointConfig::parse("host=h password=x").unwrap();
        let e = with_pw.with_password_file(&file).unwrap_err().to_string();
        assert!(e.contains("keep one"), "{e}");
        std::fs::write(&file, "\n").unwrap();
        let e = ep
            .clone()
            .with_password_file(&file)
            .unwrap_err()
            .to_string();
        assert!(e.contains("is empty"), "{e}");
        let e = ep.with_password_file(dir.path().join("none")).unwrap_err();
        assert_eq!(e.kind(), crate::error::ErrorKind::Configuration);
        let e =
            serde_json::from_str::<EndpointConfig>(r#"{"conninfo": "host=h", "password": "x"}"#)
                .unwrap_err()
                .to_string();
        assert!(e.contains("unknown field `password`"), "{e}");
    }
}
