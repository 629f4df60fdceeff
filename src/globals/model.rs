//! The typed picture of a cluster's globals, read the same way from the
//! source and the target so that applying is a comparison of two models.

use std::fmt;

/// A password hash (`SCRAM-SHA-256$...` or `md5...`). Its `Debug` never
/// shows it, so a model or a report can be logged whole.
/// Serialized as the hash itself: only the cluster archive's
/// `globals.json` holds one (as `pg_dumpall`'s output does), written with
/// owner-only permissions.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Secret(pub(crate) String);

impl Secret {
    /// The hash, for a statement that will not be logged.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// `SCRAM-SHA-256`, `MD5` or `plain` (a pre-10 cleartext password),
    /// enough for an operator to know what kind it was without seeing it.
    pub fn kind(&self) -> &'static str {
        if self.0.starts_with("SCRAM-SHA-256$") {
            "SCRAM-SHA-256"
        } else if self.0.len() == 35 && self.0.starts_with("md5") {
            "MD5"
        } else {
            "plain"
        }
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({}, redacted)", self.kind())
    }
}

/// What a role's password is known to be on a server.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Password {
    /// The session could not read `pg_authid` (or was told not to): unknown.
    Unknown,
    /// No password is set.
    None,
    /// The stored hash.
    Hash(Secret),
}

/// A security label on a shared object (`pg_shseclabel`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SecLabel {
    pub provider: String,
    pub label: String,
}

/// One role (never the bootstrap superuser nor a `pg_*` predefined role).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Role {
    pub name: String,
    pub superuser: bool,
    pub inherit: bool,
    pub createrole: bool,
    pub createdb: bool,
    pub login: bool,
    pub replication: bool,
    pub bypassrls: bool,
    /// -1: no limit.
    pub connection_limit: i32,
    /// In UTC (`YYYY-MM-DD HH:MI:SS.US+00`) or `infinity`, so values read
    /// from sessions in different time zones compare.
    pub valid_until: Option<String>,
    pub password: Password,
    pub comment: Option<String>,
    pub labels: Vec<SecLabel>,
    /// `pg_db_role_setting.setconfig` for all databases (`name=value`).
    pub settings: Vec<String>,
}

impl Role {
    /// The attribute words of `CREATE/ALTER ROLE ... WITH`, without the
    /// password (compared and emitted apart, since it is a secret).
    pub fn attribute_clause(&self) -> String {
        let flag = |on: bool, word: &str| {
            if on {
                word.to_string()
            } else {
                format!("NO{word}")
            }
        };
        let mut s = [
            flag(self.superuser, "SUPERUSER"),
            flag(self.inherit, "INHERIT"),
            flag(self.createrole, "CREATEROLE"),
            flag(self.createdb, "CREATEDB"),
            flag(self.login, "LOGIN"),
            flag(self.replication, "REPLICATION"),
            flag(self.bypassrls, "BYPASSRLS"),
        ]
        .join(" ");
        s.push_str(&format!(" CONNECTION LIMIT {}", self.connection_limit));
        if let Some(v) = &self.valid_until {
            s.push_str(&format!(" VALID UNTIL {}", crate::pg::quote::literal(v)));
        }
        s
    }
}

/// One row of `pg_auth_members`: `member` is a member of `role`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Membership {
    pub role: String,
    pub member: String,
    /// `None` when the grantor no longer exists (old servers allowed it).
    pub grantor: Option<String>,
    pub admin: bool,
    /// 16+: whether the member inherits the role's privileges through this
    /// grant; `None` on older servers (the member's INHERIT decides).
    pub inherit: Option<bool>,
    /// 16+: whether the member may `SET ROLE` to it; `None` (always) before.
    pub set: Option<bool>,
}

/// `ALTER ROLE role IN DATABASE database SET ...` entries.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DatabaseRoleSetting {
    pub role: String,
    pub database: String,
    pub settings: Vec<String>,
}

/// Privileges on a configuration parameter (`pg_parameter_acl`, 15+).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ParameterAcl {
    pub name: String,
    /// `paracl` as text; `None` is the default.
    pub acl: Option<String>,
}

/// A tablespace other than `pg_default` and `pg_global`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Tablespace {
    pub name: String,
    pub owner: String,
    /// Empty for an in-place tablespace (a relative path under `pg_tblspc`).
    pub location: String,
    /// `spcoptions` entries (`seq_page_cost=2`).
    pub options: Vec<String>,
    pub acl: Option<String>,
    pub comment: Option<String>,
    pub labels: Vec<SecLabel>,
}

/// Everything `pg_dumpall --globals-only` carries, from one server.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Globals {
    /// The server's major version (13 to 18).
    pub server_major: u32,
    /// The bootstrap superuser's name (oid 10): every mention of it maps to
    /// the other server's bootstrap superuser, whatever its name.
    pub bootstrap: String,
    /// Whether password hashes were read (else every role's password is
    /// [`Password::Unknown`]).
    pub passwords_read: bool,
    pub roles: Vec<Role>,
    pub memberships: Vec<Membership>,
    pub database_role_settings: Vec<DatabaseRoleSetting>,
    pub parameter_acls: Vec<ParameterAcl>,
    pub tablespaces: Vec<Tablespace>,
}

impl Globals {
    pub fn role(&self, name: &str) -> Option<&Role> {
        self.roles.iter().find(|r| r.name == name)
    }

    /// LOGIN roles whose password hash was not read: a migration creates
    /// them without one.
    pub fn login_roles_without_password(&self) -> Vec<String> {
        self.roles
            .iter()
            .filter(|r| r.login && r.password == Password::Unknown)
            .map(|r| r.name.clone())
            .collect()
    }
}
