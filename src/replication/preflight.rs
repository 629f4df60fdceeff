//! Online-migration preflight: everything that would make the source refuse
//! a publication, a slot or a walsender, or make the target refuse the apply
//! session, is checked before anything is created, and reported in one error
//! that names each problem and the statement that fixes it. Also the
//! `--fix-replica-identity` changes and their undo (source and target).

use std::time::Duration;

use tokio_postgres::Client;
use tracing::{debug, info, warn};

use crate::error::{MigrationError, Result};
use crate::pg::catalog::TableInfo;
use crate::pg::quote::{ident, literal, qualified};

pub use crate::resume::{NewIdentity, ReplicaIdentityFix};

/// What [`check_source`] looks at.
pub struct SourceChecks<'a> {
    /// The tables in scope (partitions as leaves): what gets published.
    pub tables: &'a [TableInfo],
    pub slot_name: &'a str,
    pub publication_name: &'a str,
    /// The slot or publication were created by an earlier run of this migration.
    pub resuming: bool,
    /// Choose replica identities for tables without a usable one (returned, not applied).
    pub fix_replica_identity: bool,
    /// Large objects are migrated (they are counted for a warning).
    pub large_objects: bool,
}

/// What [`check_source`] found (when nothing stops the migration).
#[derive(Debug, Clone, Default)]
pub struct SourceReport {
    /// `server_version_num`.
    pub server_version: i32,
    /// Replica identities to set (with `fix_replica_identity`).
    pub fixes: Vec<ReplicaIdentityFix>,
    /// Unlogged tables, quoted `schema.name`: not published, copied again at cutover.
    pub unlogged: Vec<String>,
    /// Large objects on the source (counted only when they are migrated).
    pub large_objects: i64,
    /// Everything worth a DBA's attention that does not stop the migration.
    pub warnings: Vec<String>,
}

/// Managed-service roles whose members may replicate without the REPLICATION attribute.
const MANAGED_REPLICATION_ROLES: &[&str] = &[
    "rds_replication",
    "rds_superuser",
    "cloudsqlsuperuser",
    "azure_pg_admin",
];

/// Transactions older than this are reported: slot creation waits for them.
const LONG_TRANSACTION: &str = "5 minutes";

/// How long one `ALTER TABLE ... REPLICA IDENTITY` waits for its lock, and
/// how often it tries: a waiting ALTER queues every other query on the
/// table behind it, so it gives way quickly and tries again.
const LOCK_TIMEOUT: &str = "2s";
const LOCK_ATTEMPTS: u32 = 30;

/// Free replication slots and free WAL senders on the source (for a whole
/// cluster's online migration, which needs one of each per database).
pub(crate) async fn free_slots_and_senders(src: &Client) -> Result<(i32, i32)> {
    let row = crate::pg::query_one_once(
        src,
        "SELECT pg_catalog.current_setting('max_replication_slots')::int4
                    - (SELECT pg_catalog.count(*) FROM pg_catalog.pg_replication_slots)::int4,
                    pg_catalog.current_setting('max_wal_senders')::int4
                    - (SELECT pg_catalog.count(*) FROM pg_catalog.pg_stat_activity
                        WHERE backend_type = 'walsender')::int4",
    )
    .await
    .map_err(|e| MigrationError::db("counting the source's free replication slots", e))?;
    Ok((row.get(0), row.get(1)))
}

/// Check the source for an online migration. Reads only: changes nothing.
/// Every problem found goes into one [`MigrationError::Preflight`] with its fix.
pub async fn check_source(src: &Client, c: &SourceChecks<'_>) -> Result<SourceReport> {
    let db = |e| MigrationError::db("checking the source for an online migration", e);
    let mut problems: Vec<String> = Vec::new();
    let mut report = SourceReport::default();

    // Server settings: logical decoding, a free slot and a free walsender.
    let row = src
        .query_one(
            "SELECT pg_catalog.current_setting('server_version_num')::int4,
                    pg_catalog.current_setting('wal_level'),
                    pg_catalog.current_setting('max_replication_slots')::int4,
                    (SELECT pg_catalog.count(*) FROM pg_catalog.pg_replication_slots
                      WHERE NOT ($1 AND slot_name = $2))::int4,
                    pg_catalog.current_setting('max_wal_senders')::int4,
                    (SELECT pg_catalog.count(*) FROM pg_catalog.pg_stat_activity
                      WHERE backend_type = 'walsender')::int4,
                    (SELECT pg_catalog.count(*) FROM pg_catalog.pg_stat_activity
                      WHERE backend_type IS NULL)::int4",
            &[&c.resuming, &c.slot_name],
        )
        .await
        .map_err(db)?;
    report.server_version = row.get(0);
    let wal_level: String = row.get(1);
    let (max_slots, used_slots): (i32, i32) = (row.get(2), row.get(3));
    let (max_senders, used_senders, unseen): (i32, i32, i32) = (row.get(4), row.get(5), row.get(6));
    if wal_level != "logical" {
        problems.push(format!(
            "wal_level is `{wal_level}`; logical decoding needs `logical`. Fix: \
             ALTER SYSTEM SET wal_level = logical; then restart PostgreSQL \
             (RDS/Aurora: rds.logical_replication = 1 in the parameter group; \
             Cloud SQL: the cloudsql.logical_decoding flag; Azure: the wal_level server parameter)"
        ));
    }
    if used_slots >= max_slots {
        problems.push(format!(
            "no free replication slot: {used_slots} in use, max_replication_slots = {max_slots}; \
             the migration needs one. Fix: drop a slot nothing uses any more (they are listed by \
             SELECT slot_name, database, active FROM pg_replication_slots; then \
             SELECT pg_drop_replication_slot('<name>');) or ALTER SYSTEM SET max_replication_slots = {}; and restart PostgreSQL",
            used_slots + 1
        ));
    }
    if used_senders >= max_senders {
        problems.push(format!(
            "no free WAL sender: {used_senders} running, max_wal_senders = {max_senders}; \
             the migration streams through one. Fix: ALTER SYSTEM SET max_wal_senders = {}; \
             and restart PostgreSQL",
            used_senders + 1
        ));
    } else if unseen > 0 && used_senders + unseen >= max_senders {
        report.warnings.push(format!(
            "{used_senders} of max_wal_senders = {max_senders} WAL senders are busy, and this role cannot \
             see the kind of {unseen} other session(s): if they are WAL senders, none is free \
             (grant pg_read_all_stats to see them)"
        ));
    }

    // The role: may it replicate and create the publication?
    let row = src
        .query_one(
            "SELECT current_user::text, r.rolsuper, r.rolreplication,
                    (SELECT pg_catalog.array_agg(m.rolname::text ORDER BY m.rolname)
                       FROM pg_catalog.pg_roles m
                      WHERE m.rolname = ANY ($1)
                        AND pg_catalog.pg_has_role(r.oid, m.oid, 'MEMBER')),
                    pg_catalog.has_database_privilege(pg_catalog.current_database(), 'CREATE'),
                    pg_catalog.current_database()::text
               FROM pg_catalog.pg_roles r
              WHERE r.rolname = current_user",
            &[&MANAGED_REPLICATION_ROLES],
        )
        .await
        .map_err(db)?;
    let role: String = row.get(0);
    let superuser: bool = row.get(1);
    let rolreplication: bool = row.get(2);
    let managed: Vec<String> = row.get::<_, Option<Vec<String>>>(3).unwrap_or_default();
    let db_create: bool = row.get(4);
    let database: String = row.get(5);
    if !(superuser || rolreplication || !managed.is_empty()) {
        problems.push(format!(
            "the role {r} may not replicate (neither superuser nor REPLICATION). Fix, as a superuser: \
             ALTER ROLE {r} REPLICATION; (RDS/Aurora: GRANT rds_replication TO {r};)",
            r = ident(&role)
        ));
    }
    if !db_create && !superuser {
        problems.push(format!(
            "the role {r} may not create a publication: it lacks CREATE on database {d}. \
             Fix: GRANT CREATE ON DATABASE {d} TO {r};",
            r = ident(&role),
            d = ident(&database)
        ));
    }

    // Our names must be free, unless an earlier run of this migration took them.
    if !c.resuming {
        let row = src
            .query_one(
                "SELECT (SELECT pg_catalog.format('database %s, %s', coalesce(database::text, 'none'),
                                CASE WHEN active THEN 'in use' ELSE 'not in use' END)
                           FROM pg_catalog.pg_replication_slots WHERE slot_name = $1),
                        EXISTS (SELECT 1 FROM pg_catalog.pg_publication WHERE pubname = $2)",
                &[&c.slot_name, &c.publication_name],
            )
            .await
            .map_err(db)?;
        if let Some(state) = row.get::<_, Option<String>>(0) {
            problems.push(format!(
                "a replication slot named {} already exists ({state}): an earlier run of this \
                 migration left it. Fix: `pg_dbmigrator cleanup` with the same arguments, or run \
                 again with --force-clean (drops it)",
                c.slot_name
            ));
        }
        if row.get::<_, bool>(1) {
            problems.push(format!(
                "a publication named {} already exists in database {}: an earlier run of this \
                 migration left it. Fix: `pg_dbmigrator cleanup` with the same arguments, or run \
                 again with --force-clean (drops it)",
                c.publication_name,
                ident(&database)
            ));
        }
    }

    // Tables: unlogged ones are not published; the others need a replica
    // identity (else UPDATE and DELETE on them fail once published) and,
    // for CREATE PUBLICATION ... FOR TABLE, an owner we are.
    let oids: Vec<u32> = c.tables.iter().map(|t| t.oid).collect();
    let rows = src
        .query(
            "SELECT c.oid, c.relpersistence::text, c.relreplident::text,
                    pg_catalog.pg_has_role(c.relowner, 'USAGE'),
                    pg_catalog.pg_get_userbyid(c.relowner)::text,
                    EXISTS (SELECT 1 FROM pg_catalog.pg_index i
                             WHERE i.indrelid = c.oid AND i.indisprimary
                               AND i.indisvalid AND i.indimmediate) AS usable_pk,
                    EXISTS (SELECT 1 FROM pg_catalog.pg_index i
                             WHERE i.indrelid = c.oid AND i.indisprimary) AS has_pk,
                    (SELECT o.rolsuper FROM pg_catalog.pg_roles o WHERE o.oid = c.relowner),
                    (SELECT ic.relname::text FROM pg_catalog.pg_index i
                       JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid
                      WHERE i.indrelid = c.oid AND i.indisreplident) AS ident_index,
                    EXISTS (SELECT 1 FROM pg_catalog.pg_index i
                             WHERE i.indrelid = c.oid AND i.indisreplident
                               AND i.indisvalid AND i.indimmediate) AS usable_ident,
                    (SELECT ic.relname::text FROM pg_catalog.pg_index i
                       JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid
                      WHERE i.indrelid = c.oid AND i.indisunique AND i.indimmediate
                        AND i.indisvalid AND i.indisready AND i.indislive
                        AND i.indpred IS NULL AND i.indexprs IS NULL
                        AND NOT EXISTS (
                            SELECT 1 FROM pg_catalog.generate_series(0, i.indnkeyatts - 1) k
                              LEFT JOIN pg_catalog.pg_attribute a
                                ON a.attrelid = c.oid AND a.attnum = i.indkey[k]
                             WHERE i.indkey[k] <= 0 OR a.attnotnull IS NOT TRUE)
                      ORDER BY i.indnkeyatts, ic.relname
                      LIMIT 1) AS candidate
               FROM pg_catalog.pg_class c
              WHERE c.oid = ANY ($1)",
            &[&oids],
        )
        .await
        .map_err(db)?;
    let by_oid: std::collections::HashMap<u32, &tokio_postgres::Row> =
        rows.iter().map(|r| (r.get::<_, u32>(0), r)).collect();
    let mut missing_identity: Vec<String> = Vec::new();
    // (owner, owner is superuser, table)
    let mut not_owned: Vec<(String, bool, String)> = Vec::new();
    for t in c.tables {
        // Dropped since it was listed: nothing to check (the copy will say).
        let Some(r) = by_oid.get(&t.oid) else {
            continue;
        };
        let persistence: String = r.get(1);
        if persistence == "u" {
            report.unlogged.push(t.qualified());
            continue;
        }
        let replident: String = r.get(2);
        let owned: bool = r.get(3);
        let owner: String = r.get(4);
        let usable_pk: bool = r.get(5);
        let has_pk: bool = r.get(6);
        let owner_super: bool = r.get::<_, Option<bool>>(7).unwrap_or(false);
        let ident_index: Option<String> = r.get(8);
        let usable_ident: bool = r.get(9);
        let candidate: Option<String> = r.get(10);
        if !owned && !superuser {
            not_owned.push((owner, owner_super, t.qualified()));
        }
        let why = match replident.as_str() {
            "f" => None,
            "d" if usable_pk => None,
            "d" if has_pk => Some(
                "REPLICA IDENTITY DEFAULT, but the primary key is deferrable or not valid"
                    .to_string(),
            ),
            "d" => Some("no primary key, REPLICA IDENTITY DEFAULT".to_string()),
            "n" => Some("REPLICA IDENTITY NOTHING".to_string()),
            "i" if usable_ident => None,
            "i" => Some(match &ident_index {
                Some(i) => format!("its replica identity index {} is not usable", ident(i)),
                None => "REPLICA IDENTITY USING INDEX, but the index is gone".to_string(),
            }),
            other => Some(format!("unknown relreplident {other:?}")),
        };
        let Some(why) = why else {
            continue;
        };
        let new = match &candidate {
            Some(i) => NewIdentity::UsingIndex(i.clone()),
            None => NewIdentity::Full,
        };
        if c.fix_replica_identity {
            report.fixes.push(ReplicaIdentityFix {
                schema: t.schema.clone(),
                name: t.name.clone(),
                original: replident.clone(),
                original_index: if replident == "i" { ident_index } else { None },
                new,
            });
        } else {
            // What --fix-replica-identity would do; DEFAULT when the primary key serves.
            let clause = if usable_pk {
                "DEFAULT".to_string()
            } else {
                identity_clause(&new)
            };
            missing_identity.push(format!(
                "{} ({why}): ALTER TABLE {} REPLICA IDENTITY {clause};",
                t.qualified(),
                t.qualified(),
            ));
        }
    }
    if !missing_identity.is_empty() {
        problems.push(format!(
            "{} table(s) have no usable replica identity: once published, UPDATE and DELETE on them \
             would fail on the source. Fix each (a unique index on NOT NULL columns, else FULL), \
             or run again with --fix-replica-identity, which sets these for the migration and \
             restores the originals at cleanup:\n      {}",
            missing_identity.len(),
            missing_identity.join("\n      ")
        ));
    }
    if !not_owned.is_empty() {
        not_owned.sort();
        let r = ident(&role);
        let mut fixes: Vec<String> = Vec::new();
        let mut owners: Vec<String> = not_owned
            .iter()
            .filter(|(_, sup, _)| !sup)
            .map(|(o, _, _)| ident(o))
            .collect();
        owners.dedup();
        if !owners.is_empty() {
            fixes.push(format!("GRANT {} TO {r};", owners.join(", ")));
        }
        // Membership in a superuser role gives nothing here (and too much elsewhere).
        for (_, _, t) in not_owned.iter().filter(|(_, sup, _)| *sup) {
            fixes.push(format!("ALTER TABLE {t} OWNER TO {r};"));
        }
        problems.push(format!(
            "the role {r} does not own {} table(s) it must publish (CREATE PUBLICATION ... FOR TABLE \
             needs ownership unless superuser): {}. Fix: run as a superuser, or {}",
            not_owned.len(),
            not_owned
                .iter()
                .map(|(o, _, t)| format!("{t} (owner {})", ident(o)))
                .collect::<Vec<_>>()
                .join(", "),
            fixes.join(" ")
        ));
    }

    if !problems.is_empty() {
        let mut msg = format!(
            "{} problem(s) on the source; nothing was changed. Fix them and run again:",
            problems.len()
        );
        for p in &problems {
            msg.push_str("\n  - ");
            msg.push_str(p);
        }
        return Err(MigrationError::Preflight(msg));
    }

    // Warnings: nothing here stops the migration.
    if !report.unlogged.is_empty() {
        report.warnings.push(format!(
            "unlogged tables are not replicated; they are copied again under the fence at cutover: {}",
            report.unlogged.join(", ")
        ));
    }
    for f in &report.fixes {
        if f.new == NewIdentity::Full {
            report.warnings.push(format!(
                "{} gets REPLICA IDENTITY FULL for the migration (no unique index on NOT NULL columns): \
                 every UPDATE and DELETE on it writes the whole old row to WAL",
                qualified(&f.schema, &f.name)
            ));
        }
    }
    if c.large_objects {
        report.large_objects = crate::pg::query_one_once(
            src,
            "SELECT pg_catalog.count(*) FROM pg_catalog.pg_largeobject_metadata",
        )
        .await
        .map_err(db)?
        .get(0);
        if report.large_objects > 0 {
            report.warnings.push(format!(
                "{} large object(s): large objects are not replicated; they are copied again under the fence at cutover",
                report.large_objects
            ));
        }
    }
    let long = src
        .query(
            &format!(
                "SELECT pg_catalog.format('pid %s (user %s, database %s, %s, %s%s)',
                        a.pid, coalesce(a.usename::text, '?'), coalesce(a.datname::text, '?'),
                        pg_catalog.date_trunc('second', pg_catalog.now() - a.xact_start),
                        coalesce(a.state, '?'),
                        CASE WHEN a.backend_xid IS NOT NULL THEN ', holds a transaction id' ELSE '' END)
                   FROM pg_catalog.pg_stat_activity a
                  WHERE a.pid <> pg_catalog.pg_backend_pid()
                    AND a.xact_start < pg_catalog.now() - interval {}
                  ORDER BY a.xact_start",
                literal(LONG_TRANSACTION)
            ),
            &[],
        )
        .await
        .map_err(db)?;
    if !long.is_empty() {
        report.warnings.push(format!(
            "transactions running for more than {LONG_TRANSACTION}: slot creation waits for them \
             (for every transaction holding a transaction id, in any database): {}",
            long.iter()
                .map(|r| r.get::<_, String>(0))
                .collect::<Vec<_>>()
                .join("; ")
        ));
    }
    let prepared = src
        .query_typed(
            "SELECT pg_catalog.format('%L (database %s, prepared %s ago by %s)', gid, database,
                    pg_catalog.date_trunc('second', pg_catalog.now() - prepared), owner)
               FROM pg_catalog.pg_prepared_xacts ORDER BY prepared",
            &[],
        )
        .await
        .map_err(db)?;
    if !prepared.is_empty() {
        report.warnings.push(format!(
            "prepared transactions: slot creation waits for them (COMMIT PREPARED or ROLLBACK PREPARED each): {}",
            prepared
                .iter()
                .map(|r| r.get::<_, String>(0))
                .collect::<Vec<_>>()
                .join("; ")
        ));
    }
    wal_headroom(src, report.server_version, &mut report.warnings).await?;

    for w in &report.warnings {
        crate::recorded::warn_recorded!("source: {w}");
    }
    Ok(report)
}

/// Log how much WAL the slot may hold back before the server gives up on
/// it (`max_slot_wal_keep_size`, PG13+), and what pg_wal holds now. A limit
/// is a warning: a migration that falls that far behind loses its slot.
async fn wal_headroom(src: &Client, version: i32, warnings: &mut Vec<String>) -> Result<()> {
    let db = |e| MigrationError::db("reading the WAL settings of the source", e);
    let row = crate::pg::query_one_once(src, "SELECT pg_catalog.pg_size_bytes(pg_catalog.current_setting('max_slot_wal_keep_size', true)),
                    pg_catalog.has_function_privilege('pg_catalog.pg_ls_waldir()', 'EXECUTE'),
                    (SELECT pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_lsn(), pg_catalog.min(restart_lsn))
                       FROM pg_catalog.pg_replication_slots)::int8")
        .await
        .map_err(db)?;
    let keep: Option<i64> = row.get(0);
    let can_list: bool = row.get(1);
    let retained: Option<i64> = row.get(2);
    let wal_now: Option<i64> = if can_list {
        crate::pg::query_one_once(
            src,
            "SELECT coalesce(pg_catalog.sum(size), 0)::int8 FROM pg_catalog.pg_ls_waldir()",
        )
        .await
        .map_err(db)?
        .get(0)
    } else {
        None
    };
    let bytes = |b: Option<i64>| match b {
        Some(b) => crate::progress::human_bytes(b.max(0) as u64),
        None => "unknown (needs pg_monitor)".into(),
    };
    let held = format!(
        "pg_wal now holds {}; existing slots hold back {}",
        bytes(wal_now),
        retained.map_or("nothing".into(), |r| bytes(Some(r)))
    );
    match keep {
        Some(k) if k >= 0 => warnings.push(format!(
            "max_slot_wal_keep_size = {}: the server invalidates the migration's slot (and the \
             migration must start over) when it falls that far behind; {held}",
            crate::progress::human_bytes(k as u64)
        )),
        Some(_) => info!(
            "max_slot_wal_keep_size = -1 (unlimited): the slot holds WAL until the migration \
             confirms it, so pg_wal grows while the migration lags; {held}"
        ),
        None => info!(
            server_version = version,
            "no max_slot_wal_keep_size before PostgreSQL 13: the slot holds WAL until the \
             migration confirms it, so pg_wal grows while the migration lags; {held}"
        ),
    }
    Ok(())
}

/// The `REPLICA IDENTITY` clause for what we set.
fn identity_clause(n: &NewIdentity) -> String {
    match n {
        NewIdentity::UsingIndex(i) => format!("USING INDEX {}", ident(i)),
        NewIdentity::Full => "FULL".into(),
    }
}

/// A table's replica identity as the catalogs say: relreplident and, for
/// 'i', the index (when it still exists).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Identity {
    kind: String,
    index: Option<String>,
}

impl Identity {
    fn of(n: &NewIdentity) -> Identity {
        match n {
            NewIdentity::UsingIndex(i) => Identity {
                kind: "i".into(),
                index: Some(i.clone()),
            },
            NewIdentity::Full => Identity {
                kind: "f".into(),
                index: None,
            },
        }
    }

    fn clause(&self) -> Result<String> {
        Ok(match (self.kind.as_str(), &self.index) {
            ("d", _) => "DEFAULT".into(),
            ("n", _) => "NOTHING".into(),
            ("f", _) => "FULL".into(),
            ("i", Some(i)) => format!("USING INDEX {}", ident(i)),
            (k, _) => {
                return Err(MigrationError::Internal(format!(
                    "unknown replica identity {k:?} recorded in the resume token"
                )))
            }
        })
    }
}

/// The current identity of a table, `None` when it does not exist here.
async fn current_identity(c: &Client, table: &str) -> Result<Option<(u32, Identity)>> {
    let row = c
        .query_opt(
            "SELECT c.oid, c.relreplident::text,
                    (SELECT ic.relname::text FROM pg_catalog.pg_index i
                       JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid
                      WHERE i.indrelid = c.oid AND i.indisreplident)
               FROM pg_catalog.pg_class c
              WHERE c.oid = pg_catalog.to_regclass($1)",
            &[&table],
        )
        .await
        .map_err(|e| MigrationError::db(format!("reading the replica identity of {table}"), e))?;
    Ok(row.map(|r| {
        let kind: String = r.get(1);
        let index = if kind == "i" { r.get(2) } else { None };
        (r.get(0), Identity { kind, index })
    }))
}

/// `ALTER TABLE ... REPLICA IDENTITY`, in a READ WRITE transaction of its
/// own (a fenced source defaults to read-only) with a short lock timeout,
/// retried while the table is busy. `c` must not be inside a transaction.
async fn alter_identity(c: &Client, table: &str, clause: &str) -> Result<()> {
    let sql = format!(
        "BEGIN READ WRITE; SET LOCAL lock_timeout = {}; ALTER TABLE {table} REPLICA IDENTITY {clause}; COMMIT",
        literal(LOCK_TIMEOUT)
    );
    let mut attempt = 1;
    loop {
        match c.batch_execute(&sql).await {
            Ok(()) => return Ok(()),
            Err(e) => {
                let _ = c.batch_execute("ROLLBACK").await;
                let busy = e.code() == Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE);
                if busy && attempt < LOCK_ATTEMPTS {
                    warn!(
                        table,
                        attempt, "table busy: setting its replica identity again in a second"
                    );
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    attempt += 1;
                    continue;
                }
                return Err(MigrationError::db(
                    format!("ALTER TABLE {table} REPLICA IDENTITY {clause}"),
                    e,
                ));
            }
        }
    }
}

/// Set the replica identities [`check_source`] chose. Tables that already
/// have them are left alone; tables dropped meanwhile are skipped.
pub async fn apply_replica_identity_fixes(src: &Client, f: &[ReplicaIdentityFix]) -> Result<()> {
    for fix in f {
        let table = qualified(&fix.schema, &fix.name);
        let want = Identity::of(&fix.new);
        match current_identity(src, &table).await? {
            None => {
                crate::recorded::warn_recorded!(
                    "{table}: table dropped since the preflight: replica identity not set"
                )
            }
            Some((_, cur)) if cur == want => debug!(table = %table, "replica identity already set"),
            Some(_) => alter_identity(src, &table, &want.clause()?).await?,
        }
    }
    Ok(())
}

/// Put back the replica identities `f` records. Idempotent, and safe on the
/// source and on the target (whose schema copy may carry what we set):
/// tables missing on this server are skipped, tables already back to their
/// original are left alone, and an original index that no longer exists
/// becomes DEFAULT (with a warning). `c` must not be inside a transaction.
pub async fn restore_replica_identities(c: &Client, f: &[ReplicaIdentityFix]) -> Result<()> {
    for fix in f {
        let table = qualified(&fix.schema, &fix.name);
        let Some((oid, cur)) = current_identity(c, &table).await? else {
            debug!(table = %table, "not on this server: no replica identity to restore");
            continue;
        };
        let mut want = Identity {
            kind: fix.original.clone(),
            index: if fix.original == "i" {
                fix.original_index.clone()
            } else {
                None
            },
        };
        if want.kind == "i" {
            let exists = match &want.index {
                Some(i) => c
                    .query_one(
                        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_index x
                                          JOIN pg_catalog.pg_class ic ON ic.oid = x.indexrelid
                                         WHERE x.indrelid = $1 AND ic.relname = $2)",
                        &[&oid, i],
                    )
                    .await
                    .map_err(|e| MigrationError::db(format!("looking up index {i} of {table}"), e))?
                    .get(0),
                None => false,
            };
            if !exists {
                crate::recorded::warn_recorded!(
                    "{table}: the original replica identity index {} is gone: restoring REPLICA IDENTITY DEFAULT",
                    want.index.as_deref().unwrap_or("(none)")
                );
                want = Identity {
                    kind: "d".into(),
                    index: None,
                };
            }
        }
        if cur == want {
            debug!(table = %table, "replica identity already restored");
            continue;
        }
        if cur != Identity::of(&fix.new) {
            crate::recorded::warn_recorded!("{table}: replica identity changed since the migration set it ({cur:?}): restoring the original anyway");
        }
        let clause = want.clause()?;
        alter_identity(c, &table, &clause).await?;
        info!(table = %table, identity = %clause, "replica identity restored");
    }
    Ok(())
}

/// Check the target for the apply session: it runs with
/// `session_replication_role = replica` (so replicated rows fire no
/// triggers and no foreign-key checks), and keeps its progress in our
/// bookkeeping schema, which needs CREATE on the database. Changes nothing
/// (the SET is tried in a transaction rolled back); `dst` must not be
/// inside a transaction.
/// `--fallback`: the target must be able to stream back (checked before
/// the forward migration starts, so a cutover never finds out too late).
pub async fn check_fallback_target(dst: &Client) -> Result<()> {
    let row = crate::pg::query_one_once(dst, "SELECT pg_catalog.current_setting('wal_level'),
                    (SELECT rolsuper OR rolreplication FROM pg_catalog.pg_roles WHERE rolname = current_user),
                    pg_catalog.current_setting('max_replication_slots')::int
                      - (SELECT pg_catalog.count(*) FROM pg_catalog.pg_replication_slots)::int,
                    pg_catalog.current_setting('max_wal_senders')::int")
        .await
        .map_err(|e| MigrationError::db("checking the target for --fallback", e))?;
    let (wal_level, replication, free_slots, senders): (String, bool, i32, i32) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    let mut problems = Vec::new();
    if wal_level != "logical" {
        problems.push(format!(
            "the target's wal_level is {wal_level}: set wal_level = logical (ALTER SYSTEM SET wal_level = logical; then restart the target)"
        ));
    }
    if !replication {
        problems.push(
            "the target role may not replicate: ALTER ROLE ... REPLICATION (or use a superuser)"
                .into(),
        );
    }
    if free_slots < 1 {
        problems.push(
            "the target has no free replication slot: raise max_replication_slots (restart needed)"
                .into(),
        );
    }
    if senders < 1 {
        problems
            .push("the target allows no WAL sender: raise max_wal_senders (restart needed)".into());
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(MigrationError::Preflight(format!(
            "--fallback needs the target to stream its changes back after the cutover: {}",
            problems.join("; ")
        )))
    }
}

pub async fn check_target(dst: &Client) -> Result<()> {
    let db = |e| MigrationError::db("checking the target for an online migration", e);
    let row = dst
        .query_one(
            "SELECT pg_catalog.current_setting('server_version_num')::int4,
                    current_user::text, pg_catalog.current_database()::text,
                    r.rolsuper,
                    pg_catalog.has_database_privilege(pg_catalog.current_database(), 'CREATE')
                      OR EXISTS (SELECT 1 FROM pg_catalog.pg_namespace n
                                  WHERE n.nspname = $1 AND pg_catalog.pg_has_role(n.nspowner, 'USAGE'))
               FROM pg_catalog.pg_roles r WHERE r.rolname = current_user",
            &[&crate::copy::STATE_SCHEMA],
        )
        .await
        .map_err(db)?;
    let version: i32 = row.get(0);
    let role: String = row.get(1);
    let database: String = row.get(2);
    let superuser: bool = row.get(3);
    let create: bool = row.get(4);
    let mut problems = Vec::new();

    let mut may_set = superuser;
    if !may_set && version >= 150000 {
        may_set = crate::pg::query_one_once(
            dst,
            "SELECT pg_catalog.has_parameter_privilege('session_replication_role', 'SET')",
        )
        .await
        .map_err(db)?
        .get(0);
    }
    if !may_set {
        // The ground truth (managed services grant it their own way).
        let r = dst
            .batch_execute("BEGIN; SET LOCAL session_replication_role = replica; ROLLBACK")
            .await;
        if r.is_err() {
            let _ = dst.batch_execute("ROLLBACK").await;
        }
        may_set = r.is_ok();
    }
    if !may_set {
        problems.push(if version >= 150000 {
            format!(
                "the role {r} may not SET session_replication_role, which the apply session needs \
                 (replicated rows must not fire triggers or foreign-key checks). Fix, as a superuser: \
                 GRANT SET ON PARAMETER session_replication_role TO {r};",
                r = ident(&role)
            )
        } else {
            format!(
                "the role {} may not SET session_replication_role, which the apply session needs \
                 (replicated rows must not fire triggers or foreign-key checks); before PostgreSQL 15 \
                 only superusers may. Fix: connect to the target as a superuser (or your service's \
                 admin role), or upgrade the target to 15+ and GRANT SET ON PARAMETER session_replication_role",
                ident(&role)
            )
        });
    }
    if !create {
        problems.push(format!(
            "the role {r} lacks CREATE on database {d}, needed for the migration's bookkeeping \
             schema {s}. Fix: GRANT CREATE ON DATABASE {d} TO {r};",
            r = ident(&role),
            d = ident(&database),
            s = ident(crate::copy::STATE_SCHEMA)
        ));
    }
    if problems.is_empty() {
        return Ok(());
    }
    let mut msg = format!(
        "{} problem(s) on the target; nothing was changed. Fix them and run again:",
        problems.len()
    );
    for p in &problems {
        msg.push_str("\n  - ");
        msg.push_str(p);
    }
    Err(MigrationError::Preflight(msg))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clauses_quote_index_names() {
        assert_eq!(
            identity_clause(&NewIdentity::UsingIndex("T_key".into())),
            "USING INDEX \"T_key\""
        );
        assert_eq!(identity_clause(&NewIdentity::Full), "FULL");
        let id = |k: &str, i: Option<&str>| Identity {
            kind: k.into(),
            index: i.map(str::to_string),
        };
        assert_eq!(id("d", None).clause().unwrap(), "DEFAULT");
        assert_eq!(id("n", None).clause().unwrap(), "NOTHING");
        assert_eq!(id("f", None).clause().unwrap(), "FULL");
        assert_eq!(
            id("i", Some("a b")).clause().unwrap(),
            "USING INDEX \"a b\""
        );
        assert!(id("i", None).clause().is_err());
        assert!(id("x", None).clause().is_err());
        assert_eq!(Identity::of(&NewIdentity::Full), id("f", None));
        assert_eq!(
            Identity::of(&NewIdentity::UsingIndex("k".into())),
            id("i", Some("k"))
        );
    }

    #[test]
    fn fix_serde_shape_is_stable() {
        let f = ReplicaIdentityFix {
            schema: "public".into(),
            name: "t".into(),
            original: "d".into(),
            original_index: None,
            new: NewIdentity::UsingIndex("t_u".into()),
        };
        let j = serde_json::to_value(&f).unwrap();
        assert_eq!(
            j,
            serde_json::json!({"schema": "public", "name": "t", "original": "d",
                               "original_index": null, "new": {"UsingIndex": "t_u"}})
        );
        assert_eq!(serde_json::to_value(NewIdentity::Full).unwrap(), "Full");
    }
}
