//! libpq connection strings: URIs and key=value strings, the `PG*`
//! environment fallbacks, libpq's defaults and the password file.
//!
//! The rules follow libpq (`fe-connect.c`, PostgreSQL 18) so that a string
//! that works with `psql` works here too. Deliberate differences:
//!
//! - Error messages never repeat the input: it may hold a password. They name
//!   the offending part instead, and where a stray token is probably the tail
//!   of a badly quoted password, they do not even name the token.
//! - In a URI without `user@`, a raw `@` before the query is refused instead
//!   of being taken as part of the database name: it nearly always means a
//!   password holding an unencoded `/`, which libpq would silently spread
//!   over host, port and database name (and so into logs).
//! - `hostaddr` is only used when no host name is given (there is no separate
//!   "address to dial" in [`EndpointConfig`]).
//! - libpq keywords we cannot honour (`service`, `require_auth`, ...) are
//!   refused rather than ignored; `gssencmode=require` and
//!   `channel_binding=require` are refused because ignoring them would
//!   silently weaken the connection's security.
//! - The password file is matched against the first host only.

// MigrationError is large by design (it keeps the server's full error
// report); boxing it is a crate-wide change to error.rs, not one for here.

use std::collections::BTreeMap;
use std::io::Read;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::endpoint::{
    EndpointConfig, Host, Secret, SecretOrigin, SslMode, DEFAULT_CONNECT_TIMEOUT,
};
use crate::error::{MigrationError, Result};

type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The `endpoint` label of errors from [`EndpointConfig::parse`]; callers
/// that know better (source, target) relabel them.
pub(crate) const ENDPOINT_LABEL: &str = "connection string";

const DEFAULT_PORT: u16 = 5432;

/// Where libpq builds put the server socket: Debian's libpq uses the first,
/// upstream's the last. Either one counts as "the default socket directory"
/// for the password file's `localhost`, since we cannot know which libpq the
/// user's `.pgpass` was written for.
const DEFAULT_SOCKET_DIRS: [&str; 3] = ["/var/run/postgresql", "/run/postgresql", "/tmp"];

fn err(reason: impl Into<String>) -> MigrationError {
    MigrationError::ConnInfo {
        endpoint: ENDPOINT_LABEL.to_string(),
        reason: reason.into(),
    }
}

/// What we do with each keyword libpq knows.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    /// Goes into [`EndpointConfig`].
    Used,
    /// Checked for syntax, then dropped: it cannot change what we do.
    Ignored,
    /// A valid libpq keyword whose meaning we cannot provide; refused so a
    /// user does not believe it took effect.
    Unsupported,
}

const KEYWORDS: &[(&str, Kind)] = &[
    ("host", Kind::Used),
    ("hostaddr", Kind::Used),
    ("port", Kind::Used),
    ("user", Kind::Used),
    ("password", Kind::Used),
    ("dbname", Kind::Used),
    ("sslmode", Kind::Used),
    ("sslrootcert", Kind::Used),
    ("sslcert", Kind::Used),
    ("sslkey", Kind::Used),
    ("application_name", Kind::Used),
    ("fallback_application_name", Kind::Used),
    ("connect_timeout", Kind::Used),
    ("options", Kind::Used),
    ("passfile", Kind::Used),
    ("keepalives", Kind::Ignored),
    ("keepalives_idle", Kind::Ignored),
    ("keepalives_interval", Kind::Ignored),
    ("keepalives_count", Kind::Ignored),
    ("target_session_attrs", Kind::Ignored),
    ("gssencmode", Kind::Ignored),
    ("channel_binding", Kind::Ignored),
    ("sslcompression", Kind::Ignored),
    ("sslsni", Kind::Ignored),
    ("client_encoding", Kind::Ignored),
    ("service", Kind::Unsupported),
    ("requiressl", Kind::Unsupported),
    ("tcp_user_timeout", Kind::Unsupported),
    ("sslnegotiation", Kind::Unsupported),
    ("sslcertmode", Kind::Unsupported),
    ("sslpassword", Kind::Unsupported),
    ("sslcrl", Kind::Unsupported),
    ("sslcrldir", Kind::Unsupported),
    ("sslkeylogfile", Kind::Unsupported),
    ("ssl_min_protocol_version", Kind::Unsupported),
    ("ssl_max_protocol_version", Kind::Unsupported),
    ("requirepeer", Kind::Unsupported),
    ("require_auth", Kind::Unsupported),
    ("min_protocol_version", Kind::Unsupported),
    ("max_protocol_version", Kind::Unsupported),
    ("krbsrvname", Kind::Unsupported),
    ("gsslib", Kind::Unsupported),
    ("gssdelegation", Kind::Unsupported),
    ("replication", Kind::Unsupported),
    ("load_balance_hosts", Kind::Unsupported),
    ("scram_client_key", Kind::Unsupported),
    ("scram_server_key", Kind::Unsupported),
    ("oauth_issuer", Kind::Unsupported),
    ("oauth_client_id", Kind::Unsupported),
    ("oauth_client_secret", Kind::Unsupported),
    ("oauth_scope", Kind::Unsupported),
];

fn keyword(name: &str) -> Option<(&'static str, Kind)> {
    KEYWORDS.iter().find(|(k, _)| *k == name).copied()
}

/// Which syntax a parameter came from; the error wording differs as libpq's does.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Syntax {
    KeyValue,
    Uri,
}

/// What the string itself set, before any fallback.
///
/// A key present with an empty value is kept: as in libpq it then hides the
/// environment variable, and the built-in default applies. No `Debug`: it
/// holds the password in clear.
#[derive(Default)]
struct Options {
    values: BTreeMap<&'static str, String>,
}

impl Options {
    fn get(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(String::as_str)
    }

    fn set(&mut self, key: &'static str, value: String) {
        self.values.insert(key, value);
    }

    /// Store `name=value`; later values override earlier ones, as in libpq.
    ///
    /// `after_password` says the previous parameter was `password`: an
    /// unknown keyword there is most likely the rest of a password that was
    /// not quoted (or not percent-encoded), so the message must not show it.
    fn store(
        &mut self,
        name: &str,
        value: String,
        syntax: Syntax,
        after_password: bool,
    ) -> Result<()> {
        match keyword(name) {
            Some((key, Kind::Used | Kind::Ignored)) => {
                self.set(key, value);
                Ok(())
            }
            Some((key, Kind::Unsupported)) => Err(err(format!(
                "connection option \"{key}\" is not supported by pg_dbmigrator"
            ))),
            None if after_password => Err(err(stray_after_password(syntax))),
            None => Err(err(match syntax {
                Syntax::KeyValue => format!("invalid connection option \"{name}\""),
                Syntax::Uri => format!("invalid URI query parameter \"{name}\""),
            })),
        }
    }
}

fn stray_after_password(syntax: Syntax) -> String {
    match syntax {
        Syntax::KeyValue => {
            "unexpected text after the \"password\" value in connection info string \
             (quote a password that contains spaces: password='...')"
                .to_string()
        }
        Syntax::Uri => "invalid URI query parameter after \"password\" \
             (percent-encode \"&\" in a password as %26)"
            .to_string(),
    }
}

pub(crate) fn parse(
    conninfo: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<EndpointConfig> {
    let opts = parse_options(conninfo, true)?;
    resolve(&opts, env)
}

fn uri_prefix_len(s: &str) -> Option<usize> {
    ["postgresql://", "postgres://"]
        .iter()
        .find(|p| s.starts_with(*p))
        .map(|p| p.len())
}

/// libpq's test for "this dbname is really a whole connection string".
fn is_connection_string(s: &str) -> bool {
    uri_prefix_len(s).is_some() || s.contains('=')
}

/// `expand_dbname`: whether the first `dbname` may itself be a connection
/// string. psql passes its argument as an expandable dbname, so strings
/// written for psql rely on this; nested strings are not expanded again.
fn parse_options(s: &str, expand_dbname: bool) -> Result<Options> {
    match uri_prefix_len(s) {
        Some(n) => parse_uri(&s[n..]),
        None => parse_key_value(s, expand_dbname),
    }
}

/// C's `isspace` in the "C" locale, which is what libpq splits on (Rust's
/// `is_ascii_whitespace` leaves out vertical tab).
fn is_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0b' | '\x0c')
}

fn parse_key_value(s: &str, expand_dbname: bool) -> Result<Options> {
    let chars: Vec<char> = s.chars().collect();
    let n = chars.len();
    let mut opts = Options::default();
    let mut expand = expand_dbname;
    let mut after_password = false;
    let mut i = 0;
    while i < n {
        if is_space(chars[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < n && chars[i] != '=' && !is_space(chars[i]) {
            i += 1;
        }
        let name: String = chars[start..i].iter().collect();
        while i < n && is_space(chars[i]) {
            i += 1;
        }
        if i >= n || chars[i] != '=' {
            return Err(err(if after_password {
                stray_after_password(Syntax::KeyValue)
            } else {
                format!("missing \"=\" after \"{name}\" in connection info string")
            }));
        }
        i += 1;
        while i < n && is_space(chars[i]) {
            i += 1;
        }
        let mut value = String::new();
        if i < n && chars[i] == '\'' {
            i += 1;
            loop {
                if i >= n {
                    return Err(err("unterminated quoted string in connection info string"));
                }
                match chars[i] {
                    '\\' => {
                        i += 1;
                        if i < n {
                            value.push(chars[i]);
                            i += 1;
                        }
                    }
                    '\'' => {
                        i += 1;
                        break;
                    }
                    c => {
                        value.push(c);
                        i += 1;
                    }
                }
            }
        } else {
            while i < n {
                let c = chars[i];
                i += 1;
                if is_space(c) {
                    break;
                }
                if c == '\\' {
                    if i < n {
                        value.push(chars[i]);
                        i += 1;
                    }
                } else {
                    value.push(c);
                }
            }
        }

        if name == "dbname" && expand {
            expand = false;
            if is_connection_string(&value) {
                // Its values override what came before; later keywords override it.
                let nested = parse_options(&value, false)?;
                opts.values.extend(nested.values);
                after_password = false;
                continue;
            }
        }
        opts.store(&name, value, Syntax::KeyValue, after_password)?;
        after_password = name == "password";
    }
    Ok(opts)
}

/// Parses what follows `postgresql://`:
/// `[user[:password]@][host][:port][,host[:port]...][/dbname][?key=value&...]`.
fn parse_uri(uri: &str) -> Result<Options> {
    let mut opts = Options::default();
    let mut p = uri;

    // Like libpq, credentials end at the first "@" before any "/".
    let has_credentials = matches!(p.find(['@', '/']), Some(i) if p.as_bytes()[i] == b'@');
    if has_credentials {
        let at = p.find('@').unwrap_or(p.len());
        let cred = &p[..at];
        let (user, password) = match cred.split_once(':') {
            Some((u, pw)) => (u, Some(pw)),
            None => (cred, None),
        };
        if !user.is_empty() {
            opts.set("user", uri_decode(user, "user name")?);
        }
        if let Some(pw) = password.filter(|pw| !pw.is_empty()) {
            opts.set("password", uri_decode(pw, "password")?);
        }
        p = &p[at + 1..];
    } else {
        let before_query = p.split('?').next().unwrap_or("");
        if before_query.contains('@') {
            return Err(err(
                "unexpected \"@\" in URI after the host part (percent-encode \"/\" in a password \
                 as %2F, and \"@\" in a database name as %40)",
            ));
        }
    }

    // Host list. Hosts and ports are collected raw with their commas and
    // decoded at the end, as libpq does.
    let mut hosts = String::new();
    let mut ports = String::new();
    loop {
        if let Some(rest) = p.strip_prefix('[') {
            let Some(close) = rest.find(']') else {
                return Err(err("missing \"]\" after IPv6 host address in URI"));
            };
            if close == 0 {
                return Err(err("IPv6 host address may not be empty in URI"));
            }
            hosts.push_str(&rest[..close]);
            p = &rest[close + 1..];
            if let Some(c) = p.chars().next().filter(|c| !":/?,".contains(*c)) {
                return Err(err(format!(
                    "unexpected character \"{c}\" after IPv6 host address in URI (expected \":\", \"/\", \"?\" or \",\")"
                )));
            }
        } else {
            let end = p.find([':', '/', '?', ',']).unwrap_or(p.len());
            hosts.push_str(&p[..end]);
            p = &p[end..];
        }
        if let Some(rest) = p.strip_prefix(':') {
            let end = rest.find(['/', '?', ',']).unwrap_or(rest.len());
            ports.push_str(&rest[..end]);
            p = &rest[end..];
        }
        match p.strip_prefix(',') {
            Some(rest) => {
                p = rest;
                hosts.push(',');
                ports.push(',');
            }
            None => break,
        }
    }
    if !hosts.is_empty() {
        opts.set("host", uri_decode(&hosts, "host")?);
    }
    if !ports.is_empty() {
        let ports = uri_decode(&ports, "port")?;
        // Without credentials, a "?" in a password makes libpq read the
        // password's head as a port; do not echo it.
        let all_valid = ports
            .split(',')
            .all(|x| x.is_empty() || parse_port(x).is_some());
        if !all_valid && !has_credentials && uri.contains('@') {
            return Err(err(
                "invalid port number in URI (percent-encode \"/\", \"?\" and \"@\" in user names \
                 and passwords)",
            ));
        }
        opts.set("port", ports);
    }

    if let Some(rest) = p.strip_prefix('/') {
        let end = rest.find('?').unwrap_or(rest.len());
        // An empty path leaves dbname unset so PGDATABASE still applies.
        if end > 0 {
            opts.set("dbname", uri_decode(&rest[..end], "database name")?);
        }
        p = &rest[end..];
    }
    if let Some(query) = p.strip_prefix('?') {
        parse_uri_query(query, &mut opts)?;
    }
    Ok(opts)
}

fn parse_uri_query(query: &str, opts: &mut Options) -> Result<()> {
    let mut rest = query;
    let mut after_password = false;
    while !rest.is_empty() {
        let (param, next) = match rest.split_once('&') {
            Some((param, next)) => (param, next),
            None => (rest, ""),
        };
        let Some((raw_key, raw_value)) = param.split_once('=') else {
            return Err(err(if after_password {
                stray_after_password(Syntax::Uri)
            } else {
                format!("missing key/value separator \"=\" in URI query parameter \"{param}\"")
            }));
        };
        if raw_value.contains('=') {
            return Err(err(if after_password {
                stray_after_password(Syntax::Uri)
            } else {
                format!("extra key/value separator \"=\" in URI query parameter \"{raw_key}\"")
            }));
        }
        let key = uri_decode(raw_key, "query parameter name")?;
        let what = if after_password || keyword(&key).is_none() {
            "query parameter value".to_string()
        } else {
            format!("value of query parameter \"{key}\"")
        };
        let value = uri_decode(raw_value, &what)?;
        let (key, value) = if key == "ssl" && value == "true" {
            // JDBC's spelling, accepted by libpq.
            ("sslmode".to_string(), "require".to_string())
        } else {
            (key, value)
        };
        opts.store(&key, value, Syntax::Uri, after_password)?;
        after_password = key == "password";
        rest = next;
    }
    Ok(())
}

/// Percent-decodes one URI component. `what` names the component in errors,
/// which never include the component itself.
///
/// As libpq 18: surrounding spaces are dropped and inner raw spaces refused,
/// since a raw space in a URI is a typo far more often than intended.
fn uri_decode(s: &str, what: &str) -> Result<String> {
    let s = s.trim_matches(' ');
    if s.contains(' ') {
        return Err(err(format!(
            "unexpected spaces in URI {what}; use percent-encoded spaces (%20) instead"
        )));
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'%' {
            out.push(bytes[i]);
            i += 1;
            continue;
        }
        let hex = |b: Option<&u8>| b.and_then(|b| (*b as char).to_digit(16));
        let (Some(hi), Some(lo)) = (hex(bytes.get(i + 1)), hex(bytes.get(i + 2))) else {
            return Err(err(format!("invalid percent-encoded token in URI {what}")));
        };
        let b = (hi * 16 + lo) as u8;
        if b == 0 {
            return Err(err(format!("forbidden value %00 in URI {what}")));
        }
        out.push(b);
        i += 3;
    }
    String::from_utf8(out)
        .map_err(|_| err(format!("percent-decoded URI {what} is not valid UTF-8")))
}

/// A value and where it came from, so an error can point at the right place.
struct Val {
    text: String,
    env_var: Option<&'static str>,
}

impl Val {
    fn origin(&self) -> String {
        match self.env_var {
            Some(var) => format!(" (from environment variable {var})"),
            None => String::new(),
        }
    }
}

/// The string's value, else the environment variable's (libpq's order).
fn pick(opts: &Options, env: Env, key: &str, var: &'static str) -> Option<Val> {
    match opts.get(key) {
        Some(v) => Some(Val {
            text: v.to_string(),
            env_var: None,
        }),
        None => env(var).map(|text| Val {
            text,
            env_var: Some(var),
        }),
    }
}

fn non_empty(v: Option<Val>) -> Option<String> {
    v.map(|v| v.text).filter(|s| !s.is_empty())
}

/// libpq's integer syntax: optional surrounding whitespace, optional sign, i32.
fn parse_int(s: &str) -> Option<i32> {
    s.trim_matches(is_space).parse().ok()
}

fn parse_port(s: &str) -> Option<u16> {
    parse_int(s)
        .filter(|p| (1..=65535).contains(p))
        .map(|p| p as u16)
}

fn parse_sslmode(s: &str) -> Option<SslMode> {
    Some(match s {
        "disable" => SslMode::Disable,
        "allow" => SslMode::Allow,
        "prefer" => SslMode::Prefer,
        "require" => SslMode::Require,
        "verify-ca" => SslMode::VerifyCa,
        "verify-full" => SslMode::VerifyFull,
        _ => return None,
    })
}

/// Where to look for the server socket when no host is given.
pub(crate) fn default_socket_dir() -> PathBuf {
    let debian = Path::new(DEFAULT_SOCKET_DIRS[0]);
    if debian.is_dir() {
        debian.to_path_buf()
    } else {
        PathBuf::from("/tmp")
    }
}

fn is_default_socket_dir(dir: &Path) -> bool {
    let s = dir.to_string_lossy();
    let s = s.trim_end_matches('/');
    DEFAULT_SOCKET_DIRS.contains(&s)
}

fn to_host(entry: &str) -> Host {
    if entry.is_empty() {
        Host::Unix(default_socket_dir())
    } else if entry.starts_with('/') {
        Host::Unix(PathBuf::from(entry))
    } else {
        Host::Tcp(entry.to_string())
    }
}

fn check_hostaddrs(v: &Val) -> Result<()> {
    for addr in v.text.split(',').filter(|a| !a.is_empty()) {
        if addr.parse::<IpAddr>().is_err() {
            return Err(err(format!(
                "invalid hostaddr \"{addr}\"{}: not a numeric IP address",
                v.origin()
            )));
        }
    }
    Ok(())
}

fn resolve_hosts(opts: &Options, env: Env) -> Result<Vec<Host>> {
    let from_string = |key: &str| {
        opts.get(key).map(|t| Val {
            text: t.to_string(),
            env_var: None,
        })
    };
    let host = from_string("host");
    let hostaddr = from_string("hostaddr");
    if let Some(addrs) = &hostaddr {
        check_hostaddrs(addrs)?;
        if let Some(host) = &host {
            let (nh, na) = (host.text.split(',').count(), addrs.text.split(',').count());
            if nh != na {
                return Err(err(format!(
                    "could not match {nh} host names to {na} hostaddr values"
                )));
            }
        }
    }
    let chosen = match (host, hostaddr) {
        (Some(h), _) => Some(h),
        (None, Some(a)) => Some(a),
        (None, None) => match env("PGHOST") {
            Some(text) => Some(Val {
                text,
                env_var: Some("PGHOST"),
            }),
            None => match env("PGHOSTADDR") {
                Some(text) => {
                    let v = Val {
                        text,
                        env_var: Some("PGHOSTADDR"),
                    };
                    check_hostaddrs(&v)?;
                    Some(v)
                }
                None => None,
            },
        },
    };
    Ok(match chosen {
        Some(v) => v.text.split(',').map(to_host).collect(),
        None => vec![Host::Unix(default_socket_dir())],
    })
}

fn resolve_ports(opts: &Options, env: Env, nhosts: usize) -> Result<Vec<u16>> {
    let Some(v) = pick(opts, env, "port", "PGPORT") else {
        return Ok(vec![DEFAULT_PORT]);
    };
    let ports = v
        .text
        .split(',')
        .map(|p| {
            if p.is_empty() {
                Ok(DEFAULT_PORT)
            } else {
                parse_port(p)
                    .ok_or_else(|| err(format!("invalid port number \"{p}\"{}", v.origin())))
            }
        })
        .collect::<Result<Vec<u16>>>()?;
    if ports.len() != 1 && ports.len() != nhosts {
        return Err(err(format!(
            "could not match {} port numbers to {} hosts",
            ports.len(),
            nhosts
        )));
    }
    Ok(ports)
}

/// libpq's `connect_timeout`: 0, negative or absent means "wait forever",
/// which we replace with [`DEFAULT_CONNECT_TIMEOUT`] so a dead host cannot
/// hang a migration; 1 becomes 2 because libpq's timer has 1 s granularity
/// and 1 could expire almost at once.
fn resolve_connect_timeout(opts: &Options, env: Env) -> Result<Duration> {
    let Some(v) = pick(opts, env, "connect_timeout", "PGCONNECT_TIMEOUT") else {
        return Ok(DEFAULT_CONNECT_TIMEOUT);
    };
    if v.text.trim_matches(is_space).is_empty() {
        return Ok(DEFAULT_CONNECT_TIMEOUT);
    }
    let secs = parse_int(&v.text).ok_or_else(|| {
        err(format!(
            "invalid integer value \"{}\" for connection option \"connect_timeout\"{}",
            v.text,
            v.origin()
        ))
    })?;
    Ok(match secs {
        i32::MIN..=0 => DEFAULT_CONNECT_TIMEOUT,
        1 => Duration::from_secs(2),
        n => Duration::from_secs(n as u64),
    })
}

/// Keywords we drop must still be well-formed, as libpq would reject them;
/// and values that ask for more security than we can give are refused.
fn check_ignored(opts: &Options) -> Result<()> {
    for key in [
        "keepalives",
        "keepalives_idle",
        "keepalives_interval",
        "keepalives_count",
    ] {
        if let Some(v) = opts.get(key) {
            if parse_int(v).is_none() {
                return Err(err(format!(
                    "invalid integer value \"{v}\" for connection option \"{key}\""
                )));
            }
        }
    }
    let one_of = |key: &str, allowed: &[&str]| -> Result<()> {
        match opts.get(key) {
            Some(v) if !allowed.contains(&v) => Err(err(format!("invalid {key} value \"{v}\""))),
            _ => Ok(()),
        }
    };
    one_of(
        "target_session_attrs",
        &[
            "any",
            "read-write",
            "read-only",
            "primary",
            "standby",
            "prefer-standby",
        ],
    )?;
    one_of("gssencmode", &["disable", "prefer", "require"])?;
    one_of("channel_binding", &["disable", "prefer", "require"])?;
    one_of("sslcompression", &["0", "1"])?;
    one_of("sslsni", &["0", "1"])?;
    if opts.get("gssencmode") == Some("require") {
        return Err(err(
            "gssencmode=require is not supported by pg_dbmigrator (no GSSAPI encryption)",
        ));
    }
    if opts.get("channel_binding") == Some("require") {
        return Err(err(
            "channel_binding=require is not supported by pg_dbmigrator",
        ));
    }
    if let Some(attrs) = opts.get("target_session_attrs").filter(|a| *a != "any") {
        crate::recorded::warn_recorded!(
            "target_session_attrs={attrs} is ignored: hosts are tried in order and the first that accepts is used"
        );
    }
    if let Some(enc) = opts.get("client_encoding") {
        let norm: String = enc
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .map(|c| c.to_ascii_lowercase())
            .collect();
        if norm != "utf8" && norm != "unicode" {
            return Err(err(format!(
                "unsupported client_encoding \"{enc}\": pg_dbmigrator always uses UTF8"
            )));
        }
    }
    Ok(())
}

fn os_user(env: Env) -> String {
    ["USER", "LOGNAME"]
        .iter()
        .find_map(|v| env(v).filter(|s| !s.is_empty()))
        .unwrap_or_else(|| "postgres".to_string())
}

fn resolve(opts: &Options, env: Env) -> Result<EndpointConfig> {
    check_ignored(opts)?;
    let hosts = resolve_hosts(opts, env)?;
    let ports = resolve_ports(opts, env, hosts.len())?;

    let user = non_empty(pick(opts, env, "user", "PGUSER")).unwrap_or_else(|| os_user(env));
    let dbname = non_empty(pick(opts, env, "dbname", "PGDATABASE")).unwrap_or_else(|| user.clone());

    let sslrootcert = non_empty(pick(opts, env, "sslrootcert", "PGSSLROOTCERT"));
    let sslmode = match pick(opts, env, "sslmode", "PGSSLMODE") {
        Some(v) => parse_sslmode(&v.text).ok_or_else(|| {
            err(format!(
                "invalid sslmode value \"{}\"{}",
                v.text,
                v.origin()
            ))
        })?,
        // libpq 16+: trusting the system store only makes sense with host name checks.
        None if sslrootcert.as_deref() == Some("system") => SslMode::VerifyFull,
        None => SslMode::Prefer,
    };
    if sslrootcert.as_deref() == Some("system") && sslmode != SslMode::VerifyFull {
        return Err(err(format!(
            "weak sslmode \"{}\" may not be used with sslrootcert=system (use \"verify-full\")",
            sslmode.as_str()
        )));
    }
    let sslcert = non_empty(pick(opts, env, "sslcert", "PGSSLCERT")).map(PathBuf::from);
    let sslkey = non_empty(pick(opts, env, "sslkey", "PGSSLKEY")).map(PathBuf::from);

    let application_name =
        non_empty(pick(opts, env, "application_name", "PGAPPNAME")).or_else(|| {
            opts.get("fallback_application_name")
                .filter(|s| !s.is_empty())
                .map(str::to_string)
        });
    let connect_timeout = resolve_connect_timeout(opts, env)?;
    let options = non_empty(pick(opts, env, "options", "PGOPTIONS"));

    let mut config = EndpointConfig {
        hosts,
        ports,
        user,
        password: None,
        dbname,
        sslmode,
        sslrootcert,
        sslcert,
        sslkey,
        application_name,
        connect_timeout,
        options,
    };

    let password = pick(opts, env, "password", "PGPASSWORD").filter(|v| !v.text.is_empty());
    config.password = match password {
        Some(Val {
            text,
            env_var: Some(_),
        }) => Some(Secret::with_origin(text, SecretOrigin::Environment)),
        Some(Val {
            text,
            env_var: None,
        }) => Some(Secret::new(text)),
        None => passfile_path(opts, env).and_then(|path| password_from_file(&path, &config)),
    };
    Ok(config)
}

fn passfile_path(opts: &Options, env: Env) -> Option<PathBuf> {
    if let Some(path) = non_empty(pick(opts, env, "passfile", "PGPASSFILE")) {
        return Some(PathBuf::from(path));
    }
    env("HOME")
        .filter(|h| !h.is_empty())
        .map(|home| Path::new(&home).join(".pgpass"))
}

/// The password for `config`'s first host from a libpq password file, or
/// `None` when the file is missing, unsafe or has no matching line.
///
/// Only the first host is matched: the password is resolved once, before we
/// know which host will answer.
fn password_from_file(path: &Path, config: &EndpointConfig) -> Option<Secret> {
    let hostname = match config.hosts.first() {
        Some(Host::Tcp(h)) => h.clone(),
        Some(Host::Unix(dir)) if !is_default_socket_dir(dir) => dir.to_string_lossy().into_owned(),
        // libpq: "localhost" also stands for the default socket directory.
        _ => "localhost".to_string(),
    };
    let port = config.port_for(0).to_string();

    let mut file = std::fs::File::open(path).ok()?;
    let meta = file.metadata().ok()?;
    if !meta.is_file() {
        crate::recorded::warn_recorded!("password file \"{}\" is not a plain file", path.display());
        return None;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if meta.permissions().mode() & 0o077 != 0 {
            crate::recorded::warn_recorded!(
                "password file \"{}\" has group or world access; permissions should be u=rw (0600) or less",
                path.display()
            );
            return None;
        }
    }
    let mut content = Vec::new();
    file.read_to_end(&mut content).ok()?;

    let wanted = [
        hostname.as_bytes(),
        port.as_bytes(),
        config.dbname.as_bytes(),
        config.user.as_bytes(),
    ];
    for line in content.split(|&b| b == b'\n') {
        let mut line = line;
        while let [rest @ .., b'\r' | b'\n'] = line {
            line = rest;
        }
        if line.is_empty() || line[0] == b'#' {
            continue;
        }
        let mut rest = Some(line);
        for want in wanted {
            rest = rest.and_then(|r| match_passfile_field(r, want));
        }
        if let Some(rest) = rest {
            return match String::from_utf8(unescape_passfile_password(rest)) {
                Ok(pw) if !pw.is_empty() => Some(Secret::with_origin(
                    pw,
                    SecretOrigin::PassFile(path.to_path_buf()),
                )),
                Ok(_) => None,
                Err(_) => {
                    crate::recorded::warn_recorded!(
                        "password file \"{}\": the matching password is not valid UTF-8; ignoring it",
                        path.display()
                    );
                    None
                }
            };
        }
    }
    None
}

/// If the line's next field matches `want` (`*` matches anything; `\`
/// escapes `:` and `\`), the rest of the line after that field.
fn match_passfile_field<'a>(line: &'a [u8], want: &[u8]) -> Option<&'a [u8]> {
    if let Some(rest) = line.strip_prefix(b"*:") {
        return Some(rest);
    }
    let mut i = 0;
    let mut w = 0;
    while i < line.len() {
        let mut c = line[i];
        let mut escaped = false;
        if c == b'\\' {
            i += 1;
            c = *line.get(i)?;
            escaped = true;
        }
        if c == b':' && !escaped {
            return (w == want.len()).then(|| &line[i + 1..]);
        }
        if want.get(w) != Some(&c) {
            return None;
        }
        i += 1;
        w += 1;
    }
    None
}

/// The password field: up to the next unescaped `:`, backslashes removed.
fn unescape_passfile_password(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() && field[i] != b':' {
        if field[i] == b'\\' && i + 1 < field.len() {
            i += 1;
        }
        out.push(field[i]);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::io::Write;

    /// An environment holding only `pairs` (no HOME: the real ~/.pgpass stays out).
    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    fn p(s: &str) -> EndpointConfig {
        parse(s, &env_of(&[("USER", "alice")])).unwrap_or_else(|e| panic!("{s:?}: {e}"))
    }

    fn p_env(s: &str, pairs: &[(&str, &str)]) -> EndpointConfig {
        parse(s, &env_of(pairs)).unwrap_or_else(|e| panic!("{s:?}: {e}"))
    }

    fn reason(s: &str) -> String {
        match parse(s, &env_of(&[("USER", "alice")])) {
            Err(MigrationError::ConnInfo { endpoint, reason }) => {
                assert_eq!(endpoint, ENDPOINT_LABEL);
                reason
            }
            Err(e) => panic!("{s:?}: wrong error kind {e:?}"),
            Ok(c) => panic!("{s:?}: parsed as {c:?}"),
        }
    }

    fn tcp(h: &str) -> Host {
        Host::Tcp(h.to_string())
    }

    fn pw(c: &EndpointConfig) -> Option<&str> {
        c.password.as_ref().map(Secret::expose)
    }

    // ---- defaults and environment ----

    #[test]
    fn empty_string_gives_libpq_defaults() {
        let c = p("");
        assert_eq!(c.hosts, vec![Host::Unix(default_socket_dir())]);
        assert_eq!(c.ports, vec![5432]);
        assert_eq!(c.user, "alice");
        assert_eq!(c.dbname, "alice");
        assert_eq!(c.password, None);
        assert_eq!(c.sslmode, SslMode::Prefer);
        assert_eq!(c.connect_timeout, DEFAULT_CONNECT_TIMEOUT);
        assert_eq!(c.application_name, None);
        assert_eq!(c.options, None);
        assert!(["/var/run/postgresql", "/tmp"].contains(&default_socket_dir().to_str().unwrap()));
    }

    #[test]
    fn user_falls_back_to_logname_then_postgres() {
        assert_eq!(p_env("", &[("LOGNAME", "bob")]).user, "bob");
        let c = p_env("", &[]);
        assert_eq!(
            (c.user.as_str(), c.dbname.as_str()),
            ("postgres", "postgres")
        );
    }

    #[test]
    fn environment_fills_what_the_string_leaves_out() {
        let env = [
            ("PGHOST", "envhost"),
            ("PGPORT", "6000"),
            ("PGUSER", "envuser"),
            ("PGDATABASE", "envdb"),
            ("PGPASSWORD", "envpw"),
            ("PGSSLMODE", "require"),
            ("PGSSLROOTCERT", "/ca.pem"),
            ("PGSSLCERT", "/c.pem"),
            ("PGSSLKEY", "/k.pem"),
            ("PGAPPNAME", "envapp"),
            ("PGCONNECT_TIMEOUT", "30"),
            ("PGOPTIONS", "-c work_mem=64MB"),
        ];
        let c = p_env("", &env);
        assert_eq!(c.hosts, vec![tcp("envhost")]);
        assert_eq!(c.ports, vec![6000]);
        assert_eq!(c.user, "envuser");
        assert_eq!(c.dbname, "envdb");
        assert_eq!(pw(&c), Some("envpw"));
        assert_eq!(c.sslmode, SslMode::Require);
        assert_eq!(c.sslrootcert.as_deref(), Some("/ca.pem"));
        assert_eq!(c.sslcert, Some(PathBuf::from("/c.pem")));
        assert_eq!(c.sslkey, Some(PathBuf::from("/k.pem")));
        assert_eq!(c.application_name.as_deref(), Some("envapp"));
        assert_eq!(c.connect_timeout, Duration::from_secs(30));
        assert_eq!(c.options.as_deref(), Some("-c work_mem=64MB"));

        // The string wins over the environment.
        let c = p_env(
            "host=h port=7 user=u dbname=d password=x sslmode=disable",
            &env,
        );
        assert_eq!((c.hosts[0].clone(), c.ports[0]), (tcp("h"), 7));
        assert_eq!(
            (c.user.as_str(), c.dbname.as_str(), pw(&c)),
            ("u", "d", Some("x"))
        );
        assert_eq!(c.sslmode, SslMode::Disable);
    }

    #[test]
    fn explicit_empty_value_hides_the_environment() {
        let c = p_env(
            "host='' user=''",
            &[("PGHOST", "envhost"), ("PGUSER", "envuser"), ("USER", "os")],
        );
        assert_eq!(c.hosts, vec![Host::Unix(default_socket_dir())]);
        assert_eq!(c.user, "os");
    }

    #[test]
    fn hostaddr_is_the_host_when_no_host_is_given() {
        assert_eq!(p("hostaddr=10.0.0.1").hosts, vec![tcp("10.0.0.1")]);
        assert_eq!(p("host=db hostaddr=10.0.0.1").hosts, vec![tcp("db")]);
        assert_eq!(p_env("", &[("PGHOSTADDR", "::1")]).hosts, vec![tcp("::1")]);
        assert_eq!(
            p_env("hostaddr=10.0.0.2", &[("PGHOST", "envhost")]).hosts,
            vec![tcp("10.0.0.2")]
        );
        assert!(reason("hostaddr=db.example.com").contains("invalid hostaddr \"db.example.com\""));
        assert!(reason("host=a,b hostaddr=10.0.0.1")
            .contains("could not match 2 host names to 1 hostaddr"));
    }

    #[test]
    fn fallback_application_name_only_when_no_application_name() {
        assert_eq!(
            p("fallback_application_name=fb")
                .application_name
                .as_deref(),
            Some("fb")
        );
        let c = p("application_name=app fallback_application_name=fb");
        assert_eq!(c.application_name.as_deref(), Some("app"));
        let c = p_env("fallback_application_name=fb", &[("PGAPPNAME", "envapp")]);
        assert_eq!(c.application_name.as_deref(), Some("envapp"));
    }

    #[test]
    fn connect_timeout_rules() {
        assert_eq!(
            p("connect_timeout=5").connect_timeout,
            Duration::from_secs(5)
        );
        assert_eq!(
            p("connect_timeout=1").connect_timeout,
            Duration::from_secs(2)
        );
        assert_eq!(
            p("connect_timeout=0").connect_timeout,
            DEFAULT_CONNECT_TIMEOUT
        );
        assert_eq!(
            p("connect_timeout=-3").connect_timeout,
            DEFAULT_CONNECT_TIMEOUT
        );
        assert_eq!(
            p("connect_timeout=' 7 '").connect_timeout,
            Duration::from_secs(7)
        );
        assert!(reason("connect_timeout=ten").contains("invalid integer value \"ten\""));
        let e = parse("", &env_of(&[("PGCONNECT_TIMEOUT", "x")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("PGCONNECT_TIMEOUT"), "{e}");
    }

    #[test]
    fn sslmode_values() {
        for (s, m) in [
            ("disable", SslMode::Disable),
            ("allow", SslMode::Allow),
            ("prefer", SslMode::Prefer),
            ("require", SslMode::Require),
            ("verify-ca", SslMode::VerifyCa),
            ("verify-full", SslMode::VerifyFull),
        ] {
            assert_eq!(p(&format!("sslmode={s}")).sslmode, m);
            assert_eq!(p(&format!("postgresql:///?sslmode={s}")).sslmode, m);
        }
        assert_eq!(reason("sslmode=verify"), "invalid sslmode value \"verify\"");
        assert!(reason("sslmode=REQUIRE").contains("invalid sslmode"));
        let e = parse("", &env_of(&[("PGSSLMODE", "bogus")]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("invalid sslmode value \"bogus\"") && e.contains("PGSSLMODE"),
            "{e}"
        );
    }

    #[test]
    fn sslrootcert_system_means_verify_full() {
        assert_eq!(p("sslrootcert=system").sslmode, SslMode::VerifyFull);
        assert!(reason("sslrootcert=system sslmode=require").contains("weak sslmode"));
    }

    #[test]
    fn ports() {
        assert_eq!(p("port=' 6543 '").ports, vec![6543]);
        assert_eq!(reason("port=abc"), "invalid port number \"abc\"");
        assert!(reason("port=0").contains("invalid port number \"0\""));
        assert!(reason("port=65536").contains("invalid port number"));
        assert!(reason("port=-1").contains("invalid port number"));
        assert!(reason("postgresql://h:99999/db").contains("invalid port number \"99999\""));
        let e = parse("", &env_of(&[("PGPORT", "x")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("PGPORT"), "{e}");
    }

    // ---- key=value syntax ----

    #[test]
    fn key_value_basics() {
        let c = p("host=db.example.com port=5433 user=bob dbname=sales password=secret");
        assert_eq!(c.hosts, vec![tcp("db.example.com")]);
        assert_eq!(c.ports, vec![5433]);
        assert_eq!((c.user.as_str(), c.dbname.as_str()), ("bob", "sales"));
        assert_eq!(pw(&c), Some("secret"));
    }

    #[test]
    fn key_value_whitespace_around_equals() {
        let c = p("  host = h\tport=\n5433   user =bob  ");
        assert_eq!(
            (c.hosts[0].clone(), c.ports[0], c.user.as_str()),
            (tcp("h"), 5433, "bob")
        );
    }

    #[test]
    fn key_value_quoting_and_escapes() {
        let c = p(r"password='a b\'c\\d' application_name='' user=x\ y options='-c a=b -c c=d'");
        assert_eq!(pw(&c), Some(r"a b'c\d"));
        assert_eq!(c.user, "x y");
        assert_eq!(c.application_name, None);
        assert_eq!(c.options.as_deref(), Some("-c a=b -c c=d"));
        // A quoted value may be followed directly by the next keyword.
        let c = p("user='u1'dbname='d1'");
        assert_eq!((c.user.as_str(), c.dbname.as_str()), ("u1", "d1"));
        // Unquoted backslash escapes.
        assert_eq!(pw(&p(r"password=a\'b\\c")), Some(r"a'b\c"));
        // Later values override earlier ones.
        assert_eq!(p("port=1 port=2").ports, vec![2]);
    }

    #[test]
    fn key_value_password_with_special_characters() {
        let c = p(r"host=h password='p@ss %:w ord'");
        assert_eq!(pw(&c), Some("p@ss %:w ord"));
        let c = p(r"host=h password=p@ss%:w\ ord");
        assert_eq!(pw(&c), Some("p@ss%:w ord"));
    }

    #[test]
    fn key_value_errors() {
        assert_eq!(
            reason("host=h foo"),
            "missing \"=\" after \"foo\" in connection info string"
        );
        assert_eq!(reason("hostx=h"), "invalid connection option \"hostx\"");
        assert_eq!(reason("Host=h"), "invalid connection option \"Host\"");
        assert_eq!(
            reason("password='abc"),
            "unterminated quoted string in connection info string"
        );
        assert_eq!(
            reason(r"password='abc\'"),
            "unterminated quoted string in connection info string"
        );
        assert!(reason("service=prod").contains("\"service\" is not supported"));
        assert!(reason("=x").contains("invalid connection option \"\""));
    }

    #[test]
    fn dbname_holding_a_connection_string_is_expanded() {
        let c = p("dbname='host=h2 port=6000 dbname=real'");
        assert_eq!(
            (c.hosts[0].clone(), c.ports[0], c.dbname.as_str()),
            (tcp("h2"), 6000, "real")
        );
        // Values before it are overridden, values after it override it.
        let c = p("host=h1 dbname='host=h2 user=u2' user=u3");
        assert_eq!((c.hosts[0].clone(), c.user.as_str()), (tcp("h2"), "u3"));
        let c = p("dbname=postgresql://u:p%40ss@h3:7000/db3 port=7001");
        assert_eq!(
            (c.hosts[0].clone(), c.ports[0], c.dbname.as_str()),
            (tcp("h3"), 7001, "db3")
        );
        assert_eq!(pw(&c), Some("p@ss"));
        // Only the first dbname is expanded; a nested dbname stays literal.
        assert_eq!(p("dbname=a dbname='x=y'").dbname, "x=y");
        assert_eq!(p(r"dbname='dbname=\'k=v\''").dbname, "k=v");
        assert_eq!(p("dbname=plain").dbname, "plain");
    }

    #[test]
    fn ignored_keywords_are_validated() {
        let c = p(
            "host=h keepalives=1 keepalives_idle=30 keepalives_interval=5 keepalives_count=3 \
                   target_session_attrs=any gssencmode=disable channel_binding=prefer \
                   sslcompression=0 sslsni=1 client_encoding=UTF8",
        );
        assert_eq!(c.hosts, vec![tcp("h")]);
        p("client_encoding=utf8");
        p("client_encoding=utf-8");
        assert!(reason("keepalives=yes")
            .contains("invalid integer value \"yes\" for connection option \"keepalives\""));
        assert!(reason("target_session_attrs=primaryish")
            .contains("invalid target_session_attrs value"));
        assert!(reason("gssencmode=maybe").contains("invalid gssencmode value"));
        assert!(reason("gssencmode=require").contains("not supported"));
        assert!(reason("channel_binding=require").contains("not supported"));
        assert!(reason("sslsni=2").contains("invalid sslsni value"));
        assert!(reason("client_encoding=LATIN1").contains("unsupported client_encoding \"LATIN1\""));
    }

    // ---- URIs ----

    #[test]
    fn uri_full() {
        let c = p("postgresql://bob:secret@db.example.com:5433/sales?sslmode=require&application_name=mig");
        assert_eq!(c.hosts, vec![tcp("db.example.com")]);
        assert_eq!(c.ports, vec![5433]);
        assert_eq!((c.user.as_str(), c.dbname.as_str()), ("bob", "sales"));
        assert_eq!(pw(&c), Some("secret"));
        assert_eq!(c.sslmode, SslMode::Require);
        assert_eq!(c.application_name.as_deref(), Some("mig"));
        assert_eq!(p("postgres://h/d").hosts, vec![tcp("h")]);
    }

    #[test]
    fn uri_minimal_forms() {
        let c = p("postgresql://");
        assert_eq!(
            (c.hosts.clone(), c.dbname.as_str()),
            (vec![Host::Unix(default_socket_dir())], "alice")
        );
        assert_eq!(p("postgresql://localhost").hosts, vec![tcp("localhost")]);
        assert_eq!(p("postgresql://localhost:5433").ports, vec![5433]);
        let c = p("postgresql:///mydb");
        assert_eq!(
            (c.hosts.clone(), c.dbname.as_str()),
            (vec![Host::Unix(default_socket_dir())], "mydb")
        );
        assert_eq!(p("postgresql://u@h").user, "u");
        assert_eq!(p("postgresql://h/").dbname, "alice");
        assert_eq!(
            p_env("postgresql://h/", &[("PGDATABASE", "envdb")]).dbname,
            "envdb"
        );
        assert_eq!(p("postgresql://h?").hosts, vec![tcp("h")]);
        assert_eq!(
            p("postgresql://h/d?sslmode=disable&").sslmode,
            SslMode::Disable
        );
    }

    #[test]
    fn uri_percent_decoding() {
        let c = p("postgresql://us%65r:p%40ss%3Aw%25rd%20x@h/my%20db");
        assert_eq!(c.user, "user");
        assert_eq!(pw(&c), Some("p@ss:w%rd x"));
        assert_eq!(c.dbname, "my db");
        let c = p("postgresql://u:p%40ss@h");
        assert_eq!(pw(&c), Some("p@ss"));
        // A password may hold a raw ":" after the first one.
        assert_eq!(pw(&p("postgresql://u:a:b@h")), Some("a:b"));
        // As in libpq, only "/" ends the credentials early; "?" may appear raw.
        assert_eq!(pw(&p("postgresql://u:a?b@h/db")), Some("a?b"));
        assert_eq!(
            p("postgresql://h/d?application_name=caf%C3%A9")
                .application_name
                .as_deref(),
            Some("café")
        );
    }

    #[test]
    fn uri_socket_directory_host() {
        let c = p("postgresql://%2Fvar%2Frun%2Fpostgresql/db");
        assert_eq!(
            c.hosts,
            vec![Host::Unix(PathBuf::from("/var/run/postgresql"))]
        );
        assert_eq!(c.dbname, "db");
        let c = p("postgresql:///db?host=/socket/dir&port=5433");
        assert_eq!(c.hosts, vec![Host::Unix(PathBuf::from("/socket/dir"))]);
        assert_eq!(c.ports, vec![5433]);
        let c = p("postgresql://u@h/db?host=%2Fother");
        assert_eq!(c.hosts, vec![Host::Unix(PathBuf::from("/other"))]);
        assert_eq!(
            p("host=/run/pg").hosts,
            vec![Host::Unix(PathBuf::from("/run/pg"))]
        );
    }

    #[test]
    fn uri_ipv6() {
        let c = p("postgresql://[::1]:5433/db");
        assert_eq!(
            (c.hosts.clone(), c.ports.clone()),
            (vec![tcp("::1")], vec![5433])
        );
        assert_eq!(
            p("postgresql://[2001:db8::1234]/db").hosts,
            vec![tcp("2001:db8::1234")]
        );
        assert_eq!(
            p("postgresql://u:pw@[fe80::1%25eth0]").hosts,
            vec![tcp("fe80::1%eth0")]
        );
        assert_eq!(p("postgresql://[::1]").hosts, vec![tcp("::1")]);
        assert!(reason("postgresql://[::1/db").contains("missing \"]\""));
        assert!(reason("postgresql://[]/db").contains("may not be empty"));
        assert!(reason("postgresql://[::1]x/db").contains("unexpected character \"x\""));
    }

    #[test]
    fn multiple_hosts() {
        let c = p("postgresql://h1:5433,h2:5434,[::1]:5435/db");
        assert_eq!(c.hosts, vec![tcp("h1"), tcp("h2"), tcp("::1")]);
        assert_eq!(c.ports, vec![5433, 5434, 5435]);
        // A missing port means the default for that host.
        let c = p("postgresql://h1:6000,h2/db");
        assert_eq!((c.ports.clone(), c.port_for(1)), (vec![6000, 5432], 5432));
        let c = p("host=a,b,/sock port=7000");
        assert_eq!(
            c.hosts,
            vec![tcp("a"), tcp("b"), Host::Unix(PathBuf::from("/sock"))]
        );
        assert_eq!((c.port_for(0), c.port_for(2)), (7000, 7000));
        let c = p("host=a,b port=1,2");
        assert_eq!(c.ports, vec![1, 2]);
        let c = p("host=a, port=1,");
        assert_eq!(c.hosts, vec![tcp("a"), Host::Unix(default_socket_dir())]);
        assert_eq!(c.ports, vec![1, 5432]);
        assert_eq!(
            reason("host=a,b,c port=1,2"),
            "could not match 2 port numbers to 3 hosts"
        );
        let c = p_env("", &[("PGHOST", "x,y"), ("PGPORT", "1,2")]);
        assert_eq!((c.hosts.len(), c.ports.clone()), (2, vec![1, 2]));
    }

    #[test]
    fn uri_ssl_true_is_sslmode_require() {
        assert_eq!(p("postgresql://h/d?ssl=true").sslmode, SslMode::Require);
        assert!(
            reason("postgresql://h/d?ssl=false").contains("invalid URI query parameter \"ssl\"")
        );
    }

    #[test]
    fn uri_query_accepts_any_keyword() {
        let c = p("postgresql://h/d?user=q&password=p%26w&connect_timeout=3&options=-c%20a%3Db&dbname=qd&port=9");
        assert_eq!(
            (c.user.as_str(), pw(&c), c.dbname.as_str()),
            ("q", Some("p&w"), "qd")
        );
        assert_eq!(c.connect_timeout, Duration::from_secs(3));
        assert_eq!(c.options.as_deref(), Some("-c a=b"));
        assert_eq!(c.ports, vec![9]);
    }

    #[test]
    fn uri_errors() {
        assert_eq!(
            reason("postgresql://h/d?foo=1"),
            "invalid URI query parameter \"foo\""
        );
        assert!(reason("postgresql://h/d?sslmode").contains("missing key/value separator"));
        assert!(reason("postgresql://h/d?sslmode=a=b").contains("extra key/value separator"));
        assert!(reason("postgresql://h/d?&sslmode=require").contains("missing key/value separator"));
        assert!(reason("postgresql://h/d%zz")
            .contains("invalid percent-encoded token in URI database name"));
        assert!(reason("postgresql://h/d%2").contains("invalid percent-encoded token"));
        assert!(reason("postgresql://h/d%00").contains("forbidden value %00"));
        assert!(reason("postgresql://h/d%FF").contains("not valid UTF-8"));
        assert!(reason("postgresql://h/my db").contains("unexpected spaces"));
        assert!(reason("postgresql://h/d?service=x").contains("not supported"));
        assert!(reason("postgresql://h:abc/d").contains("invalid port number \"abc\""));
    }

    // ---- secrets stay secret ----

    /// Every failing string holds the password "Sekr1t" (or a fragment of it);
    /// no message may show it.
    #[test]
    fn errors_never_contain_the_password() {
        let cases = [
            "host=h password=Sekr1t port=abc",
            "host=h password='Sekr1t",
            "host=h password=Sek r1t",
            "host=h password=Sek r1t=x",
            "host=h password=Sekr1t bogus=1",
            "postgresql://u:Sekr1t@h:abc/db",
            "postgresql://u:Sekr1t@h/db?bogus=1",
            "postgresql://u:Sek%zzr1t@h/db",
            "postgresql://u:Sek r1t@h/db",
            "postgresql://u:Sek%00r1t@h/db",
            "postgresql://u:Sek/r1t@h/db",
            "postgresql://u:Sek?r1t@h:abc/db",
            "postgresql://u:Sek/r?1t@h/db",
            "postgresql://h/db?password=Sek&r1t",
            "postgresql://h/db?password=Sek&r1t=x",
            "postgresql://h/db?password=Sek=r1t",
            "postgresql://h/db?password=Sek%zzr1t",
            "dbname='password=Sekr1t port=abc'",
            "dbname='host=h password=Sek r1t'",
        ];
        for s in cases {
            let e = parse(s, &env_of(&[])).expect_err(s);
            let (shown, dbg) = (e.to_string(), format!("{e:?}"));
            for secret in ["Sekr1t", "Sek", "r1t"] {
                assert!(
                    !shown.contains(secret) && !dbg.contains(secret),
                    "{s:?} leaked: {shown} / {dbg}"
                );
            }
        }
    }

    #[test]
    fn debug_and_display_hide_the_password() {
        let c = p("postgresql://bob:Sekr1t@h:5433/db");
        assert_eq!(pw(&c), Some("Sekr1t"));
        // Serializing refuses (the password exists nowhere else); the
        // refusal does not show it either.
        let refusal = serde_json::to_string(&c).unwrap_err().to_string();
        assert!(refusal.contains("never written out"), "{refusal}");
        for shown in [
            format!("{c:?}"),
            format!("{c}"),
            c.redacted(),
            c.to_conninfo(),
            refusal,
        ] {
            assert!(!shown.contains("Sekr1t"), "{shown}");
        }
        assert!(format!("{c:?}").contains("***"));
        assert_eq!(c.to_string(), "host=h port=5433 user=bob dbname=db");
    }

    // ---- password file ----

    fn passfile(content: &str, mode: u32) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(content.as_bytes()).unwrap();
        f.flush().unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(f.path(), std::fs::Permissions::from_mode(mode)).unwrap();
        }
        #[cfg(not(unix))]
        let _ = mode;
        f
    }

    fn pw_from_file(conninfo: &str, content: &str) -> Option<String> {
        let f = passfile(content, 0o600);
        let path = f.path().to_str().unwrap().to_string();
        let c = p_env(conninfo, &[("USER", "alice"), ("PGPASSFILE", &path)]);
        c.password.map(|s| s.expose().to_string())
    }

    #[test]
    fn passfile_exact_and_wildcard_matches() {
        let file = "\
# comment line: h:5432:db:u:nope
other:5432:db:u:wrong
h:5432:db:u:exact
h:*:*:u:wild
*:*:*:*:any
";
        assert_eq!(
            pw_from_file("host=h dbname=db user=u", file).as_deref(),
            Some("exact")
        );
        assert_eq!(
            pw_from_file("host=h port=6000 dbname=x user=u", file).as_deref(),
            Some("wild")
        );
        assert_eq!(pw_from_file("host=z user=v", file).as_deref(), Some("any"));
        assert_eq!(pw_from_file("host=h user=u", "h:5432:db:u:only-db\n"), None);
    }

    #[test]
    fn passfile_first_match_wins() {
        let file = "*:*:*:u:first\nh:5432:db:u:second\n";
        assert_eq!(
            pw_from_file("host=h dbname=db user=u", file).as_deref(),
            Some("first")
        );
    }

    #[test]
    fn passfile_escapes() {
        let file = "h:5432:d\\:b:u\\\\x:p\\:a\\\\ss:ignored\n";
        assert_eq!(
            pw_from_file(r"host=h dbname=d:b user=u\\x", file).as_deref(),
            Some(r"p:a\ss")
        );
        // An unescaped ":" in the database field does not match "d:b".
        assert_eq!(
            pw_from_file("host=h dbname=d:b user=u", "h:5432:d:b:u:pw\n"),
            None
        );
        // "*" is a wildcard only as the whole field.
        assert_eq!(
            pw_from_file("host=h dbname=db user=u", "h:5432:d*:u:pw\n"),
            None
        );
    }

    #[test]
    fn passfile_crlf_comments_and_short_lines() {
        let file = "#h:5432:db:u:commented\r\nh:5432\r\n\r\nh:5432:db:u:crlf\r\n";
        assert_eq!(
            pw_from_file("host=h dbname=db user=u", file).as_deref(),
            Some("crlf")
        );
        assert_eq!(
            pw_from_file("host=h dbname=db user=u", "h:5432:db:u:last-no-newline").as_deref(),
            Some("last-no-newline")
        );
    }

    #[test]
    fn passfile_localhost_matches_the_default_socket() {
        let file = "localhost:5432:db:u:local\n/custom/dir:5432:db:u:custom\n";
        assert_eq!(
            pw_from_file("dbname=db user=u", file).as_deref(),
            Some("local")
        );
        assert_eq!(
            pw_from_file("host=/tmp dbname=db user=u", file).as_deref(),
            Some("local")
        );
        assert_eq!(
            pw_from_file("host=localhost dbname=db user=u", file).as_deref(),
            Some("local")
        );
        assert_eq!(
            pw_from_file("host=/custom/dir dbname=db user=u", file).as_deref(),
            Some("custom")
        );
    }

    #[test]
    fn passfile_uses_the_first_host_and_its_port() {
        let file = "b:2:db:u:for-b\na:1:db:u:for-a\n";
        assert_eq!(
            pw_from_file("host=a,b port=1,2 dbname=db user=u", file).as_deref(),
            Some("for-a")
        );
        assert_eq!(
            pw_from_file("postgresql://u@b:2,a:1/db", file).as_deref(),
            Some("for-b")
        );
    }

    #[test]
    fn passfile_only_when_no_password_given() {
        let file = "*:*:*:*:fromfile\n";
        assert_eq!(
            pw_from_file("password=given", file).as_deref(),
            Some("given")
        );
        assert_eq!(
            pw_from_file("password=''", file).as_deref(),
            Some("fromfile")
        );
        let f = passfile(file, 0o600);
        let path = f.path().to_str().unwrap();
        let c = p_env("", &[("PGPASSFILE", path), ("PGPASSWORD", "envpw")]);
        assert_eq!(pw(&c), Some("envpw"));
        // The passfile keyword beats PGPASSFILE.
        let c = p_env(
            &format!("passfile='{path}'"),
            &[("PGPASSFILE", "/nonexistent")],
        );
        assert_eq!(pw(&c), Some("fromfile"));
    }

    #[test]
    fn passfile_default_is_home_pgpass() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".pgpass");
        std::fs::write(&path, "*:*:*:*:homepw\n").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        let c = p_env("host=h", &[("HOME", dir.path().to_str().unwrap())]);
        assert_eq!(pw(&c), Some("homepw"));
    }

    #[test]
    fn passfile_missing_is_fine() {
        let c = p_env("host=h", &[("PGPASSFILE", "/nonexistent/pgpass")]);
        assert_eq!(c.password, None);
        let dir = tempfile::tempdir().unwrap();
        let c = p_env("host=h", &[("HOME", dir.path().to_str().unwrap())]);
        assert_eq!(c.password, None);
        // A directory is not a password file.
        let c = p_env("host=h", &[("PGPASSFILE", dir.path().to_str().unwrap())]);
        assert_eq!(c.password, None);
    }

    #[cfg(unix)]
    #[test]
    fn passfile_with_group_or_world_access_is_ignored() {
        for mode in [0o640, 0o604, 0o660, 0o610, 0o601] {
            let f = passfile("*:*:*:*:pw\n", mode);
            let c = p_env("host=h", &[("PGPASSFILE", f.path().to_str().unwrap())]);
            assert_eq!(c.password, None, "mode {mode:o}");
        }
        let f = passfile("*:*:*:*:pw\n", 0o400);
        let c = p_env("host=h", &[("PGPASSFILE", f.path().to_str().unwrap())]);
        assert_eq!(pw(&c), Some("pw"));
    }
}
