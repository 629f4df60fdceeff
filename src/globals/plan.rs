//! From two models (the source's globals and what the target has) to the
//! ordered statements that make the target match, and the report of what
//! they do and what they leave alone. Pure: touches no server, so every
//! decision here is unit-tested.
//!
//! Order, as pg_dumpall's: roles (with comments and labels), memberships
//! (each grantor holding ADMIN before its grant), tablespaces (their owners
//! exist by then), role settings (after the tablespaces a
//! `temp_tablespaces` may name), parameter privileges.

use std::collections::HashSet;

use super::model::*;
use super::{Difference, GlobalsOptions, GlobalsReport};
use crate::error::Result;
use crate::pg::quote::{ident, literal};
use crate::schema::acl::{build_acl_commands, parse_acl, AclItem, AclObjectKind};
use crate::schema::load::set_clause;

/// One statement of the plan. Its text never holds a password hash: a
/// statement that sets one carries it apart, and the stage hands it to the
/// server outside any query text (see `globals::run`), so neither a client
/// log (tokio-postgres logs queries at debug level) nor the server's
/// `log_statement` sees it.
#[derive(Clone, Debug)]
pub struct Statement {
    /// With [`Statement::password`], the text up to `PASSWORD `, which the
    /// server completes with the quoted hash.
    pub sql: String,
    /// The hash the statement ends with (its `Debug` is redacted).
    pub password: Option<Secret>,
    /// What it does, for logs and errors.
    pub what: String,
    /// A `CREATE TABLESPACE`: (name, location), to explain a missing directory.
    pub creates_tablespace: Option<(String, String)>,
}

/// About the target session, besides its globals.
#[derive(Debug, Clone)]
pub struct TargetSession {
    /// The role the migration connects as (never altered: see [`plan`]).
    pub current_user: String,
    pub is_superuser: bool,
    /// `pg_*` predefined roles the target has.
    pub predefined: Vec<String>,
}

struct Planner<'a> {
    src: &'a Globals,
    have: &'a Globals,
    session: &'a TargetSession,
    opts: &'a GlobalsOptions,
    out: Vec<Statement>,
    report: GlobalsReport,
}

impl Planner<'_> {
    /// A source role name as the target knows it: the source's bootstrap
    /// superuser is the target's, whatever either is called.
    fn map(&self, name: &str) -> String {
        if name == self.src.bootstrap {
            self.have.bootstrap.clone()
        } else {
            name.to_string()
        }
    }

    fn push(&mut self, what: String, sql: String) {
        self.out.push(Statement {
            sql,
            password: None,
            what,
            creates_tablespace: None,
        });
    }

    fn differ(&mut self, object: String, detail: String) {
        self.report.differences.push(Difference { object, detail });
    }

    fn warn(&mut self, message: String) {
        self.report.warnings.push(message);
    }

    /// An ACL as the target will spell it (bootstrap superuser mapped).
    fn map_acl(&self, acl: &str) -> Result<Vec<AclItem>> {
        let mut items = parse_acl(acl)?;
        for i in &mut items {
            if let Some(g) = &i.grantee {
                i.grantee = Some(self.map(g));
            }
            i.grantor = self.map(&i.grantor);
        }
        Ok(items)
    }
}

/// The `aclitem[]` text of `items`, quoted as array elements.
fn acl_text(items: &[AclItem]) -> String {
    let parts: Vec<String> = items
        .iter()
        .map(|i| {
            format!(
                "\"{}\"",
                i.to_string().replace('\\', "\\\\").replace('"', "\\\"")
            )
        })
        .collect();
    format!("{{{}}}", parts.join(","))
}

/// `acldefault` of an object owned by `owner` with privileges `letters`.
fn default_acl(owner: &str, letters: &str) -> Vec<AclItem> {
    vec![AclItem {
        grantee: Some(owner.to_string()),
        grantor: owner.to_string(),
        privileges: letters.chars().map(|c| (c, false)).collect(),
    }]
}

fn setting_name(entry: &str) -> &str {
    entry.split_once('=').map_or(entry, |(n, _)| n)
}

/// The statements that make the target's globals (`have`) match the
/// source's (`src`), and what they will do.
///
/// Existing objects are compared, not recreated. A difference is changed
/// only with `roles_overwrite` (for roles, memberships, settings and
/// tablespaces alike), else reported. Never touched, overwrite or not: the
/// target's bootstrap superuser, and the attributes and password of the
/// role this migration connects as (a NOLOGIN or a new password would lock
/// the run out of its own target; such differences are reported).
pub fn plan(
    src: &Globals,
    have: &Globals,
    session: &TargetSession,
    opts: &GlobalsOptions,
) -> Result<(Vec<Statement>, GlobalsReport)> {
    let mut p = Planner {
        src,
        have,
        session,
        opts,
        out: Vec::new(),
        report: GlobalsReport::default(),
    };
    let roles = plan_roles(&mut p);
    plan_memberships(&mut p);
    plan_tablespaces(&mut p)?;
    plan_role_settings(&mut p, &roles);
    plan_parameter_acls(&mut p)?;
    Ok((p.out, p.report))
}

/// Roles, their comments and labels; returns the roles whose settings to
/// carry (all but the skipped ones).
fn plan_roles(p: &mut Planner<'_>) -> Vec<String> {
    let mut carried = Vec::new();
    let passwords = !p.opts.no_role_passwords;
    for r in &p.src.roles {
        if r.name == p.have.bootstrap {
            p.differ(
                format!("role {}", r.name),
                "is the target's bootstrap superuser; left alone".into(),
            );
            continue;
        }
        carried.push(r.name.clone());
        // The hash itself goes apart (see `Statement`).
        let password_sql = |sql: &mut String, pw: &Password| -> Option<Secret> {
            match pw {
                Password::Hash(h) => {
                    sql.push_str(" PASSWORD ");
                    Some(h.clone())
                }
                Password::None => {
                    sql.push_str(" PASSWORD NULL");
                    None
                }
                Password::Unknown => None,
            }
        };
        let carried_pw = if passwords {
            r.password.clone()
        } else {
            Password::Unknown
        };
        if r.login && carried_pw == Password::Unknown {
            p.report.without_password.push(r.name.clone());
        }
        let target = p.have.role(&r.name);
        match target {
            None => {
                let mut sql = format!(
                    "CREATE ROLE {} WITH {}",
                    ident(&r.name),
                    r.attribute_clause()
                );
                // (No password is no PASSWORD clause: NULL is the default.)
                let password = match &carried_pw {
                    Password::Hash(_) => password_sql(&mut sql, &carried_pw),
                    _ => None,
                };
                p.out.push(Statement {
                    sql,
                    password,
                    what: format!("creating role {}", r.name),
                    creates_tablespace: None,
                });
                p.report.roles_created.push(r.name.clone());
            }
            Some(t) => {
                let mut diffs = Vec::new();
                let words_src = r.attribute_clause();
                let mut want = r.clone();
                // VALID UNTIL cannot be removed, only set to infinity.
                if want.valid_until.is_none() && t.valid_until.as_deref() == Some("infinity") {
                    want.valid_until = t.valid_until.clone();
                }
                if want.attribute_clause() != t.attribute_clause() {
                    diffs.push(format!(
                        "attributes: source {words_src}, target {}",
                        t.attribute_clause()
                    ));
                }
                let pw_differs = match (&carried_pw, &t.password) {
                    (Password::Unknown, _) | (_, Password::Unknown) => false,
                    (a, b) => a != b,
                };
                if pw_differs {
                    diffs.push("password differs".into());
                }
                if diffs.is_empty() {
                    p.report.roles_unchanged.push(r.name.clone());
                } else if !p.opts.roles_overwrite {
                    p.report.roles_unchanged.push(r.name.clone());
                    p.differ(format!("role {}", r.name), diffs.join("; "));
                } else if r.name == p.session.current_user {
                    p.report.roles_unchanged.push(r.name.clone());
                    p.differ(
                        format!("role {}", r.name),
                        format!(
                            "{} (the role this migration connects as is never altered)",
                            diffs.join("; ")
                        ),
                    );
                } else {
                    let mut sql = format!(
                        "ALTER ROLE {} WITH {}",
                        ident(&r.name),
                        want.attribute_clause()
                    );
                    let password = if pw_differs {
                        password_sql(&mut sql, &carried_pw)
                    } else {
                        None
                    };
                    p.out.push(Statement {
                        sql,
                        password,
                        what: format!("altering role {}", r.name),
                        creates_tablespace: None,
                    });
                    p.report.roles_updated.push(r.name.clone());
                }
            }
        }
        // Comment and labels: set when missing; replaced only with overwrite.
        let on = format!("ROLE {}", ident(&r.name));
        let (t_comment, t_labels) =
            target.map_or((None, &[][..]), |t| (t.comment.as_deref(), &t.labels[..]));
        plan_comment_labels(
            p,
            &on,
            &r.name,
            r.comment.as_deref(),
            t_comment,
            &r.labels,
            t_labels,
        );
    }
    if !p.report.without_password.is_empty() {
        let why = if passwords {
            "the source session may not read pg_authid (needs superuser)"
        } else {
            "passwords are not carried (no_role_passwords)"
        };
        let msg = format!(
            "role passwords: {why}; these LOGIN roles get no password and cannot log in with one on the target until it is set: {}",
            p.report.without_password.join(", ")
        );
        p.warn(msg);
    }
    carried
}

#[allow(clippy::too_many_arguments)]
fn plan_comment_labels(
    p: &mut Planner<'_>,
    on: &str,
    name: &str,
    comment: Option<&str>,
    have_comment: Option<&str>,
    labels: &[SecLabel],
    have_labels: &[SecLabel],
) {
    if let Some(c) = comment {
        if have_comment != Some(c) {
            if have_comment.is_none() || p.opts.roles_overwrite {
                p.push(
                    format!("comment on {name}"),
                    format!("COMMENT ON {on} IS {}", literal(c)),
                );
                p.report.comments_and_labels_applied += 1;
            } else {
                p.differ(name.to_string(), "comment differs".into());
            }
        }
    }
    for l in labels {
        let have = have_labels.iter().find(|h| h.provider == l.provider);
        if have == Some(l) {
            continue;
        }
        if have.is_none() || p.opts.roles_overwrite {
            p.push(
                format!("security label on {name}"),
                format!(
                    "SECURITY LABEL FOR {} ON {on} IS {}",
                    ident(&l.provider),
                    literal(&l.label)
                ),
            );
            p.report.comments_and_labels_applied += 1;
        } else {
            p.differ(
                name.to_string(),
                format!("security label of provider {} differs", l.provider),
            );
        }
    }
}

/// One membership as it will be granted on the target.
struct Grant {
    role: String,
    member: String,
    /// `GRANTED BY`, when named.
    grantor: Option<String>,
    admin: bool,
    inherit: Option<bool>,
    set: Option<bool>,
}

fn plan_memberships(p: &mut Planner<'_>) {
    let (sm, tm) = (p.src.server_major, p.have.server_major);
    let tb = p.have.bootstrap.clone();
    // Who a grant without GRANTED BY is recorded as coming from (16+ files
    // a superuser's grants under the bootstrap superuser).
    let default_grantor = if p.session.is_superuser && tm >= 16 {
        tb.clone()
    } else {
        p.session.current_user.clone()
    };
    let known: HashSet<String> = p
        .src
        .roles
        .iter()
        .map(|r| r.name.clone())
        .chain(p.have.roles.iter().map(|r| r.name.clone()))
        .chain(p.session.predefined.iter().cloned())
        .chain([tb.clone()])
        .collect();
    let mut pending: Vec<Grant> = Vec::new();
    let mut memberships = p.src.memberships.clone();
    if tm <= 15 {
        // One grant per role and member there (16+ keeps one per grantor):
        // the first grantor's, with ADMIN if any grant had it.
        let mut merged: Vec<Membership> = Vec::new();
        for m in memberships {
            match merged
                .iter_mut()
                .find(|x| x.role == m.role && x.member == m.member)
            {
                Some(x) => x.admin |= m.admin,
                None => merged.push(m),
            }
        }
        memberships = merged;
    }
    for m in &memberships {
        let (role, member) = (p.map(&m.role), p.map(&m.member));
        let what = format!("membership of {member} in {role}");
        if let Some(missing) = [&role, &member].into_iter().find(|n| !known.contains(*n)) {
            p.differ(what, format!("role {missing} does not exist on the target"));
            continue;
        }
        let grantor = m.grantor.as_deref().map(|g| p.map(g));
        // From a 15- source to a 16+ target, a grantor may hold no ADMIN
        // (old servers did not check): as pg_dumpall does, the grant is
        // replayed without it, unless it is the bootstrap superuser.
        let keep = tm <= 15 || sm >= 16 || grantor.as_deref() == Some(tb.as_str());
        let grantor = grantor.filter(|_| keep);
        let (mut inherit, mut set) = (m.inherit, m.set);
        if tm <= 15 {
            let member_inherits = p.src.role(&m.member).is_none_or(|r| r.inherit);
            let lost_inherit = m.inherit.is_some_and(|i| i != member_inherits);
            let lost_set = m.set == Some(false);
            if lost_inherit || lost_set {
                let detail = format!(
                    "INHERIT {} / SET {} cannot be expressed on PostgreSQL {tm}; granted with the member's defaults",
                    m.inherit.unwrap_or(true),
                    m.set.unwrap_or(true)
                );
                p.warn(format!("{what}: {detail}"));
                p.differ(what.clone(), detail);
            }
            (inherit, set) = (None, None);
        }
        let key_grantor = grantor.clone().unwrap_or_else(|| default_grantor.clone());
        let existing = p.have.memberships.iter().find(|h| {
            h.role == role
                && h.member == member
                && (tm <= 15 || h.grantor.as_deref() == Some(&key_grantor))
        });
        let g = Grant {
            role,
            member,
            grantor,
            admin: m.admin,
            inherit,
            set,
        };
        match existing {
            None => pending.push(g),
            Some(h) => {
                let same = h.admin == g.admin
                    && g.inherit.is_none_or(|i| h.inherit == Some(i))
                    && g.set.is_none_or(|s| h.set == Some(s));
                if same {
                    p.report.memberships_unchanged += 1;
                } else if !p.opts.roles_overwrite {
                    p.report.memberships_unchanged += 1;
                    p.differ(what, "grant options differ".into());
                } else if tm <= 15 && !g.admin {
                    p.push(
                        what,
                        format!(
                            "REVOKE ADMIN OPTION FOR {} FROM {}",
                            ident(&g.role),
                            ident(&g.member)
                        ),
                    );
                    p.report.memberships_granted += 1;
                } else {
                    pending.push(g);
                }
            }
        }
    }
    // Each grantor must hold ADMIN on the role before its grant (16+ checks
    // it): repeated passes per role, as pg_dumpall's dumpRoleMembership.
    let mut admins: HashSet<(String, String)> = p
        .have
        .memberships
        .iter()
        .filter(|h| h.admin)
        .map(|h| (h.role.clone(), h.member.clone()))
        .collect();
    while !pending.is_empty() {
        let before = pending.len();
        let mut rest = Vec::new();
        for g in pending {
            let ready = tm <= 15
                || g.grantor
                    .as_ref()
                    .is_none_or(|gr| *gr == tb || admins.contains(&(g.role.clone(), gr.clone())));
            if ready {
                if g.admin {
                    admins.insert((g.role.clone(), g.member.clone()));
                }
                emit_grant(p, &g, tm);
            } else {
                rest.push(g);
            }
        }
        if rest.len() == before {
            // No grantor can be placed: grant as ourselves rather than fail.
            for mut g in rest {
                p.differ(
                    format!("membership of {} in {}", g.member, g.role),
                    format!(
                        "grantor {} never holds ADMIN on the role; granted without GRANTED BY",
                        g.grantor.as_deref().unwrap_or("?")
                    ),
                );
                g.grantor = None;
                emit_grant(p, &g, tm);
            }
            break;
        }
        pending = rest;
    }
}

fn emit_grant(p: &mut Planner<'_>, g: &Grant, tm: u32) {
    let mut sql = format!("GRANT {} TO {}", ident(&g.role), ident(&g.member));
    if tm >= 16 {
        let mut opts = vec![format!("ADMIN {}", bool_word(g.admin))];
        if let Some(i) = g.inherit {
            opts.push(format!("INHERIT {}", bool_word(i)));
        }
        if let Some(s) = g.set {
            opts.push(format!("SET {}", bool_word(s)));
        }
        sql.push_str(&format!(" WITH {}", opts.join(", ")));
    } else if g.admin {
        sql.push_str(" WITH ADMIN OPTION");
    }
    if let Some(gr) = &g.grantor {
        sql.push_str(&format!(" GRANTED BY {}", ident(gr)));
    }
    p.push(format!("membership of {} in {}", g.member, g.role), sql);
    p.report.memberships_granted += 1;
}

fn bool_word(b: bool) -> &'static str {
    if b {
        "TRUE"
    } else {
        "FALSE"
    }
}

/// The location a source tablespace gets on the target.
pub fn mapped_location(opts: &GlobalsOptions, location: &str) -> String {
    opts.tablespace_locations
        .iter()
        .find(|(old, _)| old.trim_end_matches('/') == location.trim_end_matches('/'))
        .map_or_else(|| location.to_string(), |(_, new)| new.clone())
}

/// The ACL statements turning the target's `have` ACL into the source's.
/// REVOKEs of what only the target grants need overwrite on an existing
/// object; reported otherwise.
#[allow(clippy::too_many_arguments)]
fn plan_acl(
    p: &mut Planner<'_>,
    kind: AclObjectKind,
    on: &str,
    what: &str,
    src_acl: Option<&str>,
    have_acl: Option<&str>,
    default: Vec<AclItem>,
    owner: &str,
    is_new: bool,
) -> Result<bool> {
    let want = match src_acl {
        Some(a) => p.map_acl(a)?,
        None => default.clone(),
    };
    let have = match have_acl {
        Some(a) => parse_acl(a)?,
        None => default,
    };
    if want == have {
        return Ok(false);
    }
    let cmds = build_acl_commands(
        kind,
        on,
        None,
        Some(&acl_text(&want)),
        &acl_text(&have),
        owner,
        p.have.server_major,
    )?;
    let mut withheld = false;
    for c in cmds {
        if c.starts_with("REVOKE") && !is_new && !p.opts.roles_overwrite {
            withheld = true;
            continue;
        }
        p.push(format!("privileges on {what}"), c);
    }
    if withheld {
        p.differ(
            what.to_string(),
            "the target grants privileges the source does not".into(),
        );
    }
    Ok(true)
}

fn plan_tablespaces(p: &mut Planner<'_>) -> Result<()> {
    let tablespaces = p.src.tablespaces.clone();
    for t in &tablespaces {
        let what = format!("tablespace {}", t.name);
        let on = format!("TABLESPACE {}", ident(&t.name));
        let owner = p.map(&t.owner);
        let location = mapped_location(p.opts, &t.location);
        let existing = p
            .have
            .tablespaces
            .iter()
            .find(|h| h.name == t.name)
            .cloned();
        let mut changed = false;
        match &existing {
            None => {
                p.out.push(Statement {
                    sql: format!(
                        "CREATE TABLESPACE {} OWNER {} LOCATION {}",
                        ident(&t.name),
                        ident(&owner),
                        literal(&location)
                    ),
                    password: None,
                    what: format!("creating {what}"),
                    creates_tablespace: Some((t.name.clone(), location.clone())),
                });
                if !t.options.is_empty() {
                    p.push(format!("options of {what}"), set_options(&on, &t.options));
                }
                p.report.tablespaces_created.push(t.name.clone());
            }
            Some(h) => {
                if h.location != location {
                    p.differ(
                        what.clone(),
                        format!(
                            "location on the target is {} (expected {}); a location cannot be changed",
                            h.location, location
                        ),
                    );
                }
                if h.owner != owner {
                    if p.opts.roles_overwrite {
                        p.push(
                            format!("owner of {what}"),
                            format!("ALTER {on} OWNER TO {}", ident(&owner)),
                        );
                        changed = true;
                    } else {
                        p.differ(
                            what.clone(),
                            format!("owner is {} on the target, {owner} on the source", h.owner),
                        );
                    }
                }
                if h.options != t.options {
                    if p.opts.roles_overwrite {
                        let gone: Vec<&str> = h
                            .options
                            .iter()
                            .map(|o| setting_name(o))
                            .filter(|n| !t.options.iter().any(|o| setting_name(o) == *n))
                            .collect();
                        if !gone.is_empty() {
                            p.push(
                                format!("options of {what}"),
                                format!(
                                    "ALTER {on} RESET ({})",
                                    gone.iter().map(|n| ident(n)).collect::<Vec<_>>().join(", ")
                                ),
                            );
                        }
                        if !t.options.is_empty() {
                            p.push(format!("options of {what}"), set_options(&on, &t.options));
                        }
                        changed = true;
                    } else {
                        p.differ(what.clone(), "options differ".into());
                    }
                }
            }
        }
        let is_new = existing.is_none();
        let have_owner = existing.as_ref().map_or(owner.clone(), |h| h.owner.clone());
        changed |= plan_acl(
            p,
            AclObjectKind::Tablespace,
            &on,
            &what,
            t.acl.as_deref(),
            existing.as_ref().and_then(|h| h.acl.as_deref()),
            default_acl(&owner, "C"),
            &have_owner,
            is_new,
        )?;
        let before = p.report.comments_and_labels_applied;
        let (hc, hl) = existing.as_ref().map_or((None, Vec::new()), |h| {
            (h.comment.clone(), h.labels.clone())
        });
        plan_comment_labels(
            p,
            &on,
            &what,
            t.comment.as_deref(),
            hc.as_deref(),
            &t.labels,
            &hl,
        );
        changed |= p.report.comments_and_labels_applied != before;
        if !is_new {
            if changed {
                p.report.tablespaces_updated.push(t.name.clone());
            } else {
                p.report.tablespaces_unchanged.push(t.name.clone());
            }
        }
    }
    Ok(())
}

fn set_options(on: &str, options: &[String]) -> String {
    let parts: Vec<String> = options
        .iter()
        .map(|o| match o.split_once('=') {
            Some((n, v)) => format!("{}={}", ident(n), literal(v)),
            None => ident(o),
        })
        .collect();
    format!("ALTER {on} SET ({})", parts.join(", "))
}

/// `ALTER ROLE role [IN DATABASE db] SET/RESET` turning `have` into `want`.
fn plan_settings(p: &mut Planner<'_>, prefix: &str, what: &str, want: &[String], have: &[String]) {
    for e in want {
        if have.contains(e) {
            p.report.settings_unchanged += 1;
            continue;
        }
        let name = setting_name(e);
        let conflicting = have.iter().any(|h| setting_name(h) == name);
        if conflicting && !p.opts.roles_overwrite {
            p.differ(what.to_string(), format!("setting {name} differs"));
            continue;
        }
        let Some(clause) = set_clause(e) else {
            continue;
        };
        p.push(
            format!("setting {name} of {what}"),
            format!("{prefix} SET {clause}"),
        );
        p.report.settings_applied += 1;
    }
    for h in have {
        let name = setting_name(h);
        if want.iter().any(|e| setting_name(e) == name) {
            continue;
        }
        if p.opts.roles_overwrite {
            p.push(
                format!("setting {name} of {what}"),
                format!("{prefix} RESET {}", ident(name)),
            );
            p.report.settings_applied += 1;
        } else {
            p.differ(
                what.to_string(),
                format!("setting {name} is set on the target only"),
            );
        }
    }
}

fn plan_role_settings(p: &mut Planner<'_>, roles: &[String]) {
    let src = p.src;
    for r in src.roles.iter().filter(|r| roles.contains(&r.name)) {
        let have = p
            .have
            .role(&r.name)
            .map(|t| t.settings.clone())
            .unwrap_or_default();
        // A setting such as default_transaction_read_only on the role the
        // migration connects as would change the rest of the run's sessions.
        if r.name == p.session.current_user {
            if r.settings != have {
                p.differ(
                    format!("role {}", r.name),
                    "settings differ (the role this migration connects as is never altered)".into(),
                );
            }
            continue;
        }
        plan_settings(
            p,
            &format!("ALTER ROLE {}", ident(&r.name)),
            &format!("role {}", r.name),
            &r.settings,
            &have,
        );
    }
}

fn plan_parameter_acls(p: &mut Planner<'_>) -> Result<()> {
    if p.src.parameter_acls.is_empty() {
        return Ok(());
    }
    if p.have.server_major < 15 {
        let names: Vec<String> = p
            .src
            .parameter_acls
            .iter()
            .map(|a| a.name.clone())
            .collect();
        let detail = format!(
            "privileges on parameters ({}) need PostgreSQL 15 or later on the target",
            names.join(", ")
        );
        p.warn(detail.clone());
        p.differ("parameter privileges".into(), detail);
        return Ok(());
    }
    let tb = p.have.bootstrap.clone();
    let acls = p.src.parameter_acls.clone();
    for a in &acls {
        let have = p.have.parameter_acls.iter().find(|h| h.name == a.name);
        let what = format!("parameter {}", a.name);
        let changed = plan_acl(
            p,
            AclObjectKind::Parameter,
            &format!("PARAMETER {}", ident(&a.name)),
            &what,
            a.acl.as_deref(),
            have.and_then(|h| h.acl.as_deref()),
            default_acl(&tb, "sA"),
            &tb,
            have.is_none(),
        )?;
        if changed {
            p.report.parameter_privileges_applied += 1;
        } else {
            p.report.parameter_privileges_unchanged += 1;
        }
    }
    Ok(())
}

/// `ALTER ROLE ... IN DATABASE` statements for database `dbname` (named so
/// on the target), from the source's per-database role settings for it and
/// what the target has (`have`, for the same database).
pub fn plan_database_settings(
    src: &Globals,
    have: &Globals,
    dbname: &str,
    target_dbname: &str,
    session: &TargetSession,
    opts: &GlobalsOptions,
) -> (Vec<Statement>, GlobalsReport) {
    let mut p = Planner {
        src,
        have,
        session,
        opts,
        out: Vec::new(),
        report: GlobalsReport::default(),
    };
    for s in src
        .database_role_settings
        .iter()
        .filter(|s| s.database == dbname)
    {
        let role = p.map(&s.role);
        let have_entries = have
            .database_role_settings
            .iter()
            .find(|h| h.database == target_dbname && h.role == role)
            .map(|h| h.settings.clone())
            .unwrap_or_default();
        plan_settings(
            &mut p,
            &format!(
                "ALTER ROLE {} IN DATABASE {}",
                ident(&role),
                ident(target_dbname)
            ),
            &format!("role {role} in database {target_dbname}"),
            &s.settings,
            &have_entries,
        );
    }
    (p.out, p.report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn role(name: &str) -> Role {
        Role {
            name: name.into(),
            superuser: false,
            inherit: true,
            createrole: false,
            createdb: false,
            login: true,
            replication: false,
            bypassrls: false,
            connection_limit: -1,
            valid_until: None,
            password: Password::Hash(Secret("SCRAM-SHA-256$4096:abc".into())),
            comment: None,
            labels: vec![],
            settings: vec![],
        }
    }

    fn globals(major: u32, bootstrap: &str) -> Globals {
        Globals {
            server_major: major,
            bootstrap: bootstrap.into(),
            passwords_read: true,
            roles: vec![],
            memberships: vec![],
            database_role_settings: vec![],
            parameter_acls: vec![],
            tablespaces: vec![],
        }
    }

    fn session() -> TargetSession {
        TargetSession {
            current_user: "admin".into(),
            is_superuser: true,
            predefined: vec![],
        }
    }

    fn grant(role: &str, member: &str, grantor: &str, admin: bool) -> Membership {
        Membership {
            role: role.into(),
            member: member.into(),
            grantor: Some(grantor.into()),
            admin,
            inherit: Some(true),
            set: Some(true),
        }
    }

    #[test]
    fn grantors_hold_admin_before_their_grants() {
        let mut src = globals(16, "postgres");
        for n in ["g", "a", "b"] {
            src.roles.push(role(n));
        }
        // b's grant by a sorts first but needs a's ADMIN, granted by the
        // bootstrap superuser (named differently on the target).
        src.memberships = vec![
            grant("g", "b", "a", false),
            grant("g", "a", "postgres", true),
        ];
        let have = globals(17, "admin");
        let (stmts, report) = plan(&src, &have, &session(), &GlobalsOptions::default()).unwrap();
        let grants: Vec<&str> = stmts
            .iter()
            .filter(|s| s.sql.starts_with("GRANT"))
            .map(|s| s.sql.as_str())
            .collect();
        assert_eq!(
            grants,
            [
                "GRANT g TO a WITH ADMIN TRUE, INHERIT TRUE, SET TRUE GRANTED BY admin",
                "GRANT g TO b WITH ADMIN FALSE, INHERIT TRUE, SET TRUE GRANTED BY a",
            ]
        );
        assert_eq!(report.memberships_granted, 2);
    }

    #[test]
    fn a_password_never_shows_in_debug_and_equal_roles_are_left() {
        let mut src = globals(15, "postgres");
        src.roles.push(role("app"));
        let (stmts, report) = plan(
            &src,
            &globals(15, "postgres"),
            &session(),
            &GlobalsOptions::default(),
        )
        .unwrap();
        assert!(stmts[0].password.is_some());
        assert!(stmts[0].sql.ends_with(" PASSWORD "), "{}", stmts[0].sql);
        assert!(!format!("{stmts:?}").contains("abc"));
        assert!(!format!("{src:?}").contains("abc"));
        assert_eq!(report.roles_created, ["app"]);
        let mut have = globals(15, "postgres");
        have.roles.push(role("app"));
        let (stmts, report) = plan(&src, &have, &session(), &GlobalsOptions::default()).unwrap();
        assert!(stmts.is_empty(), "{stmts:?}");
        assert_eq!(report.roles_unchanged, ["app"]);
        assert!(!report.changed());
    }

    #[test]
    fn differences_need_overwrite_and_spare_the_current_user() {
        let mut src = globals(15, "postgres");
        src.roles.push(role("app"));
        src.roles.push(role("admin"));
        let mut have = globals(15, "postgres");
        let mut t = role("app");
        t.createdb = true;
        have.roles.push(t.clone());
        t.name = "admin".into();
        have.roles.push(t);
        let (stmts, report) = plan(&src, &have, &session(), &GlobalsOptions::default()).unwrap();
        assert!(stmts.is_empty());
        assert_eq!(report.differences.len(), 2);
        let opts = GlobalsOptions {
            roles_overwrite: true,
            ..Default::default()
        };
        let (stmts, report) = plan(&src, &have, &session(), &opts).unwrap();
        assert_eq!(stmts.len(), 1);
        assert!(stmts[0].sql.starts_with("ALTER ROLE app WITH"));
        assert_eq!(report.roles_updated, ["app"]);
        assert_eq!(report.differences.len(), 1, "{:?}", report.differences);
    }

    #[test]
    fn inherit_and_set_options_are_reported_for_an_older_target() {
        let mut src = globals(16, "postgres");
        src.roles.push(role("g"));
        src.roles.push(role("m"));
        let mut m = grant("g", "m", "postgres", false);
        m.set = Some(false);
        src.memberships.push(m);
        let (stmts, report) = plan(
            &src,
            &globals(15, "postgres"),
            &session(),
            &GlobalsOptions::default(),
        )
        .unwrap();
        assert!(stmts
            .iter()
            .any(|s| s.sql == "GRANT g TO m GRANTED BY postgres"));
        assert_eq!(report.warnings.len(), 1);
    }

    #[test]
    fn an_old_sources_grantor_is_dropped_for_a_new_target_unless_bootstrap() {
        let mut src = globals(15, "postgres");
        for n in ["g", "a", "b"] {
            src.roles.push(role(n));
        }
        let mut by_a = grant("g", "b", "a", false);
        (by_a.inherit, by_a.set) = (None, None);
        let mut by_boot = grant("g", "a", "postgres", true);
        (by_boot.inherit, by_boot.set) = (None, None);
        src.memberships = vec![by_a, by_boot];
        let (stmts, _) = plan(
            &src,
            &globals(16, "root"),
            &session(),
            &GlobalsOptions::default(),
        )
        .unwrap();
        let grants: Vec<&str> = stmts
            .iter()
            .filter(|s| s.sql.starts_with("GRANT"))
            .map(|s| s.sql.as_str())
            .collect();
        assert_eq!(
            grants,
            [
                "GRANT g TO b WITH ADMIN FALSE",
                "GRANT g TO a WITH ADMIN TRUE GRANTED BY root",
            ]
        );
    }

    #[test]
    fn tablespace_locations_map_whole_directories() {
        let opts = GlobalsOptions {
            tablespace_locations: vec![("/old/ts/".into(), "/new/ts".into())],
            ..Default::default()
        };
        assert_eq!(mapped_location(&opts, "/old/ts"), "/new/ts");
        assert_eq!(mapped_location(&opts, "/old/ts2"), "/old/ts2");
        assert_eq!(
            set_options("TABLESPACE t", &["seq_page_cost=2".into()]),
            "ALTER TABLESPACE t SET (seq_page_cost='2')"
        );
    }

    #[test]
    fn acl_text_round_trips_odd_names() {
        let mut items = default_acl("x", "sA");
        items.push(AclItem {
            grantee: Some("we\"ird, name".into()),
            grantor: "postgres".into(),
            privileges: vec![('s', true)],
        });
        assert_eq!(parse_acl(&acl_text(&items)).unwrap(), items);
    }
}
