//! Target preparation and its refusals, for every orchestrator: what a run
//! needs of the target server (roles, extensions, collations, tablespaces,
//! an empty or absent database, no rows in the way) is checked before
//! anything is written, and the target database is created here. The only
//! module that creates or drops the target database; it changes nothing on
//! the source.

use crate::faults::{self, Point};
use tokio_postgres::Client;
use tracing::info;

use crate::config::filter::CompiledFilters;
use crate::config::MigrationConfig;
use crate::copy;
use crate::error::{MigrationError, Result};
use crate::pg::catalog::{self, TableInfo};
use crate::pg::{connect, quote};
use crate::schema;

/// The roles the schema names that the target server lacks, and every
/// role it has.
pub(crate) async fn missing_roles(
    admin: &Client,
    needs: &TargetNeeds,
) -> Result<(Vec<String>, Vec<String>)> {
    let present: Vec<String> = admin
        .query_typed("SELECT rolname::text FROM pg_catalog.pg_roles", &[])
        .await
        .map_err(|e| MigrationError::db("listing roles on the target", e))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let missing = needs
        .roles
        .iter()
        .filter(|r| !present.contains(r))
        .cloned()
        .collect();
    Ok((missing, present))
}

/// The refusal for roles the target lacks (see [`missing_roles`]).
pub(crate) fn missing_roles_refusal(missing: &[String], needs: &TargetNeeds) -> String {
    format!(
        "role(s) the migrated objects name (as owner, grantee or grantor, or in a policy, user mapping or role setting) \
         do not exist on the target: {}. {}",
        missing
            .iter()
            .map(|r| quote::ident(r))
            .collect::<Vec<_>>()
            .join(", "),
        needs.roles_hint
    )
}

/// The source's extensions (`name version`) the target server cannot
/// install at the same version.
pub(crate) async fn unavailable_extensions(
    admin: &Client,
    needs: &TargetNeeds,
) -> Result<Vec<String>> {
    let ext_names: Vec<&str> = needs.extensions.iter().map(|e| e.0.as_str()).collect();
    let ext_versions: Vec<&str> = needs.extensions.iter().map(|e| e.1.as_str()).collect();
    Ok(admin
        .query(
            "SELECT u.n || ' ' || u.v
               FROM ROWS FROM (pg_catalog.unnest($1::text[]), pg_catalog.unnest($2::text[])) AS u(n, v)
              WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_available_extension_versions a
                                 WHERE a.name = u.n AND a.version = u.v)
              ORDER BY 1",
            &[&ext_names, &ext_versions],
        )
        .await
        .map_err(|e| MigrationError::db("checking extensions on the target", e))?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// Why the target cannot hold the tablespaces the schema places objects in
/// (after `--tablespace-mapping` / `--no-tablespaces`), or `None` when it can.
pub(crate) async fn tablespace_refusal(
    admin: &Client,
    needs: &TargetNeeds,
    script: &schema::SchemaScript,
) -> Result<Option<String>> {
    let mut names = schema::tablespace::used(script);
    names.extend(needs.tablespace.clone());
    if names.is_empty() {
        return Ok(None);
    }
    let names: Vec<String> = names.into_iter().collect();
    // pg_default needs no CREATE privilege; any other tablespace does.
    let rows = admin
        .query(
            "SELECT u.n, t.oid IS NOT NULL
               FROM pg_catalog.unnest($1::text[]) AS u(n)
               LEFT JOIN pg_catalog.pg_tablespace t ON t.spcname = u.n
              WHERE t.oid IS NULL
                 OR (t.spcname <> 'pg_default' AND NOT pg_catalog.has_tablespace_privilege(t.oid, 'CREATE'))
              ORDER BY 1",
            &[&names],
        )
        .await
        .map_err(|e| MigrationError::db("checking tablespaces on the target", e))?;
    let (mut missing, mut denied) = (Vec::new(), Vec::new());
    for r in rows {
        let name = quote::ident(&r.get::<_, String>(0));
        if r.get::<_, bool>(1) {
            denied.push(name);
        } else {
            missing.push(name);
        }
    }
    let mut why = Vec::new();
    if !missing.is_empty() {
        why.push(format!(
            "tablespace(s) the source places objects in do not exist on the target server: {}",
            missing.join(", ")
        ));
    }
    if !denied.is_empty() {
        why.push(format!(
            "the target role may not create objects in tablespace(s) {} (GRANT CREATE ON TABLESPACE)",
            denied.join(", ")
        ));
    }
    Ok((!why.is_empty()).then(|| {
        format!(
            "{}. Create them on the target first, map them with --tablespace-mapping OLD=NEW, or pass --no-tablespaces",
            why.join("; ")
        )
    }))
}

/// Why a PostgreSQL 16+ target cannot hold the source's generated columns
/// of child tables under plain parent columns, or `None`.
pub(crate) fn generated_columns_refusal(
    target_version: i32,
    needs: &TargetNeeds,
) -> Option<String> {
    let cols = &needs.generated_under_plain_parents;
    (target_version >= 160000 && !cols.is_empty()).then(|| {
        format!(
            "PostgreSQL {} does not allow a generated column in a child table whose parent's \
             column is not generated, and the source (PostgreSQL {}) has {}: {}. On the source, \
             detach the child from that parent (ALTER TABLE child NO INHERIT parent) or drop \
             the column, then run again",
            target_version / 10000,
            needs.source_version / 10000,
            if cols.len() == 1 { "one" } else { "these" },
            crate::progress::summarize(cols)
        )
    })
}

/// Why the target cannot create the schema's lz4-compressed columns (a
/// server built without lz4), or `None` when it can or none are asked for.
pub(crate) async fn compression_refusal(
    admin: &Client,
    script: &schema::SchemaScript,
) -> Result<Option<String>> {
    let lz4 = schema::lz4_columns(script);
    if lz4.is_empty() {
        return Ok(None);
    }
    let supported: bool = crate::pg::query_one_once(admin, "SELECT 'lz4' = ANY (enumvals) FROM pg_catalog.pg_settings WHERE name = 'default_toast_compression'")
        .await
        .map_err(|e| MigrationError::db("checking the target's compression methods", e))?
        .get(0);
    if supported {
        return Ok(None);
    }
    Ok(Some(format!(
        "the target server was built without lz4, which {} on the source use{}: {}. \
         Pass --no-toast-compression to give every column the target's default compression, \
         or migrate to a server built with lz4",
        if lz4.len() == 1 {
            "this column"
        } else {
            "these columns"
        },
        if lz4.len() == 1 { "s" } else { "" },
        crate::progress::summarize(&lz4)
    )))
}

/// The target must have every table with every column we copy, every
/// sequence, and (unless resuming) no rows or large objects in the way.
pub(crate) async fn preflight_target(
    dst: &Client,
    tables: &mut [TableInfo],
    seqs: &[catalog::SequenceInfo],
    los: &[catalog::LargeObjectInfo],
    resumed: bool,
) -> Result<()> {
    let shapes = catalog::target_shapes(dst, tables).await?;
    let mut problems = Vec::new();
    for (t, shape) in tables.iter_mut().zip(shapes) {
        let (cols, types) = match shape {
            catalog::TargetShape::Missing => {
                problems.push(format!("table {} does not exist", t.qualified()));
                continue;
            }
            catalog::TargetShape::Other(k) => {
                problems.push(format!(
                    "{} is neither a plain nor a partitioned table on the target (relkind {k})",
                    t.qualified()
                ));
                continue;
            }
            catalog::TargetShape::Plain { columns, types } => (columns, types),
            catalog::TargetShape::Into {
                into,
                columns,
                types,
            } => {
                t.load_into = Some(into);
                (columns, types)
            }
        };
        // Binary COPY needs identical column types; text converts.
        let same_types = t.columns.iter().zip(&t.column_types).all(|(c, ty)| {
            cols.iter()
                .zip(types.iter())
                .find_map(|(x, t)| (x == c).then_some(t))
                == Some(ty)
        });
        if !same_types && t.binary_safe {
            info!(table = %t.qualified(), "column types differ on the target; copying as text");
            t.binary_safe = false;
        }
        if let Some(into) = &t.load_into {
            info!(
                table = %t.qualified(),
                into = %into.relation,
                "re-shaping: rows load into {} ({}), in binary COPY format when the run copies in binary and the column types match, else text{}",
                into.relation,
                if into.partitioned {
                    "partitioned on the target: COPY routes each row to its partition"
                } else {
                    "a plain table on the target, holding the rows of the source's partitions"
                },
                if into.partitioned { "; never with FREEZE" } else { "" }
            );
        }
        let missing: Vec<&str> = t
            .columns
            .iter()
            .filter(|c| !cols.iter().any(|x| x == *c))
            .collect();
        if !missing.is_empty() {
            problems.push(format!(
                "table {} lacks column(s) {}",
                t.target_name(),
                missing
                    .iter()
                    .map(|c| quote::ident(c))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    }
    // One query for all sequences: those the target lacks (each found by
    // its qualified name, see `catalog::target_shapes`).
    let seq_schemas: Vec<&str> = seqs.iter().map(|s| s.schema.as_str()).collect();
    let seq_names: Vec<&str> = seqs.iter().map(|s| s.name.as_str()).collect();
    for r in dst
        .query(
            "SELECT pg_catalog.format('%I.%I', u.s, u.r)
               FROM ROWS FROM (pg_catalog.unnest($1::text[]), pg_catalog.unnest($2::text[])) AS u(s, r)
              WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_class c
                                 WHERE c.oid = pg_catalog.to_regclass(pg_catalog.format('%I.%I', u.s, u.r)) AND c.relkind = 'S')",
            &[&seq_schemas, &seq_names],
        )
        .await
        .map_err(|e| MigrationError::db("checking sequences on the target", e))?
    {
        problems.push(format!("sequence {} does not exist", r.get::<_, String>(0)));
    }
    if !problems.is_empty() {
        return Err(MigrationError::target_not_ready(format!(
            "the target schema does not match the source: {}. A data-only migration needs the schema created on the target first",
            problems.join("; ")
        )));
    }
    if resumed {
        return Ok(());
    }
    // Rows already there would be duplicated: refuse.
    let mut non_empty = Vec::new();
    for chunk in tables.chunks(200) {
        let sql = chunk
            .iter()
            .map(|t| {
                // A partitioned target holds its rows in its partitions.
                let only = match &t.load_into {
                    Some(l) if l.partitioned => "",
                    _ => "ONLY ",
                };
                format!(
                    "SELECT {} WHERE EXISTS (SELECT 1 FROM {only}{} {})",
                    quote::literal(&t.target_name()),
                    t.target_name(),
                    t.row_filter.as_deref().unwrap_or_default()
                )
            })
            .collect::<Vec<_>>()
            .join(" UNION ALL ");
        for r in dst
            .query_typed(&sql, &[])
            .await
            .map_err(|e| MigrationError::db("checking that target tables are empty", e))?
        {
            non_empty.push(r.get::<_, String>(0));
        }
    }
    non_empty.sort();
    non_empty.dedup();
    if !non_empty.is_empty() {
        return Err(MigrationError::target_not_ready(format!(
            "target table(s) already contain rows: {}. Empty them, or erase them by starting over",
            non_empty.join(", ")
        ))
        .with_remedy(crate::error::Remedy::ForceClean));
    }
    if !los.is_empty() {
        let oids: Vec<u32> = los.iter().map(|l| l.oid).collect();
        let clash: i64 = dst
            .query_one(
                "SELECT pg_catalog.count(*) FROM pg_catalog.pg_largeobject_metadata WHERE oid = ANY($1)",
                &[&oids],
            )
            .await
            .map_err(|e| MigrationError::db("checking large objects on the target", e))?
            .get(0);
        if clash > 0 {
            return Err(MigrationError::target_not_ready(format!(
                "{clash} large object(s) with the source's ids already exist on the target; remove them, or erase them by starting over"
            ))
            .with_remedy(crate::error::Remedy::ForceClean));
        }
    }
    Ok(())
}

/// `--force-clean`: erase what a previous attempt (or anyone) left in the
/// target tables in scope, the large objects with the source's ids, and our
/// bookkeeping.
pub(crate) async fn force_clean(
    src: &Client,
    dst: &Client,
    filters: &CompiledFilters,
    large_objects: bool,
) -> Result<()> {
    let tables = catalog::list_tables(src, filters).await?;
    crate::recorded::warn_recorded!(
        "force_clean: erasing target rows of every table in scope ({} tables)",
        tables.len()
    );
    // Where each table's rows went: itself, or the relation a re-shaped
    // load fills (emptied once, with its partitions when partitioned).
    let mut emptied = std::collections::HashSet::new();
    for (t, shape) in tables
        .iter()
        .zip(catalog::target_shapes(dst, &tables).await?)
    {
        let (name, tree) = match shape {
            catalog::TargetShape::Plain { .. } => (t.qualified(), false),
            catalog::TargetShape::Into { into, .. } => (into.relation, into.partitioned),
            catalog::TargetShape::Missing | catalog::TargetShape::Other(_) => continue,
        };
        if !emptied.insert(name.clone()) {
            continue;
        }
        dst.batch_execute("BEGIN")
            .await
            .map_err(|e| MigrationError::db("erasing target data", e))?;
        if tree {
            copy::empty_partitioned(dst, &name).await?;
        } else {
            copy::empty_table(dst, &name).await?;
        }
        dst.batch_execute("COMMIT")
            .await
            .map_err(|e| MigrationError::db("erasing target data", e))?;
    }
    if large_objects {
        let oids: Vec<u32> = catalog::list_large_objects(src)
            .await?
            .iter()
            .map(|l| l.oid)
            .collect();
        copy::erase_large_objects(dst, &oids).await?;
    }
    copy::drop_target_state(dst).await
}

/// Checks that need only the source and a look at the target, before
/// anything is created anywhere: every `--schema` / `--table` pattern must
/// match something (as in pg_dump), and the target must not be the source
/// itself under another spelling (socket and TCP, two host names), which
/// `--force-clean` would otherwise try to drop.
pub(crate) async fn refuse_bad_scope(
    src: &Client,
    cfg: &MigrationConfig,
    target_ep: &crate::config::EndpointConfig,
) -> Result<()> {
    let unmatched = catalog::unmatched_patterns(src, &cfg.filters).await?;
    if !unmatched.is_empty() {
        return Err(MigrationError::Config(format!(
            "no matching {} found on the source for {}; check the spelling (patterns fold to lower case unless quoted)",
            if cfg.filters.tables.is_empty() { "schemas were" } else { "tables were" },
            unmatched.join(", ")
        )));
    }
    refuse_small_lock_table(src, &cfg.filters.compile()?, cfg.jobs).await?;
    // A target database that cannot be reached yet (absent, to be created)
    // cannot be the source; other connection problems surface later with
    // their own message.
    if let Ok(dst) = connect::connect(target_ep, "target").await {
        let (a, b) = (
            catalog::database_identity(src).await?,
            catalog::database_identity(&dst).await?,
        );
        if a == b {
            return Err(MigrationError::Config(format!(
                "the source and the target are the same database ({target_ep}); nothing was changed. \
                 Point --target at another database or server"
            )));
        }
    }
    Ok(())
}

/// A run locks every table in scope once on the source, in the
/// coordinator's snapshot transaction (as pg_dump does, so nobody drops or
/// alters one mid-copy); each copy worker takes one table at a time in its
/// own transaction (the table, its TOAST table and index: a few locks).
/// Reading the schema holds every table and the catalogs at once.
/// PostgreSQL fails with "out of shared memory" when its lock table fills,
/// minutes into the copy; say so before anything starts, with the setting
/// that fixes it.
pub(crate) async fn refuse_small_lock_table(
    src: &Client,
    filters: &CompiledFilters,
    jobs: usize,
) -> Result<()> {
    let tables = catalog::list_relation_names(src, filters).await?.len() as i64;
    let (slots, per, procs) = catalog::lock_table_size(src).await?;
    // Reading the schema also locks the system catalogs it reads (and their
    // indexes) beside every table: count them all, an upper bound.
    let catalogs: i64 = crate::pg::query_one_once(
        src,
        "SELECT count(*) FROM pg_catalog.pg_class
              WHERE relnamespace = 'pg_catalog'::pg_catalog.regnamespace AND relkind IN ('r', 'i')",
    )
    .await
    .map_err(|e| MigrationError::db("counting the system catalogs", e))?
    .get(0);
    let need = tables + catalogs + 4 * jobs as i64;
    // A tenth of the table stays for everyone else's sessions.
    let usable = slots - slots / 10;
    if need <= usable {
        return Ok(());
    }
    let enough = (need * 10 / 9 + procs) / procs;
    Err(MigrationError::Preflight(format!(
        "the source's lock table is too small for {tables} tables: a migration holds about {need} locks at once \
         (each table and the system catalogs while the schema is read, a few per copy worker), and the server has room for {slots} \
         (max_locks_per_transaction = {per} for each of {procs} server processes). \
         Set max_locks_per_transaction to at least {enough} on the source and restart it, \
         or migrate fewer tables per run (--schema / --table)"
    )))
}

/// Drop the placement of statements naming the target database's own
/// default tablespace (see [`schema::tablespace::database_default`]); run
/// once the target database exists.
pub(crate) async fn fit_to_database_default(
    dst: &Client,
    script: Option<&mut schema::SchemaScript>,
) -> Result<()> {
    if let Some(script) = script {
        let default = catalog::database_tablespace(dst).await?;
        schema::tablespace::database_default(script, &default);
    }
    Ok(())
}

/// What a full migration needs of the target server, read from the source
/// (or from an archive's manifest).
pub(crate) struct TargetNeeds {
    pub source_version: i32,
    /// Roles owning or granted objects.
    pub roles: Vec<String>,
    pub encoding: String,
    pub lc_collate: String,
    pub lc_ctype: String,
    /// The locale provider when not libc (ICU, 17's builtin).
    pub locale_provider: Option<crate::pg::catalog::DatabaseLocale>,
    /// Extensions (name, version), plpgsql left out.
    pub extensions: Vec<(String, String)>,
    /// What to do about missing roles, for the refusal.
    pub roles_hint: &'static str,
    /// The database's default tablespace when not `pg_default`, placed as
    /// the user asked (`None` also under `--no-tablespaces`).
    pub tablespace: Option<String>,
    /// Generated columns of child tables under a parent column that is not
    /// generated (possible before PostgreSQL 16, refused from 16 on).
    pub generated_under_plain_parents: Vec<String>,
}

impl TargetNeeds {
    pub async fn read(src: &Client, source_version: i32, cfg: &MigrationConfig) -> Result<Self> {
        let roles = schema::load::owner_roles(src, &schema::ReadOptions::of(cfg)).await?;
        let row = crate::pg::query_one_once(src, "SELECT pg_catalog.pg_encoding_to_char(d.encoding), d.datcollate::text, d.datctype::text,
                        NULLIF(t.spcname::text, 'pg_default')
                   FROM pg_catalog.pg_database d JOIN pg_catalog.pg_tablespace t ON t.oid = d.dattablespace
                  WHERE d.datname = pg_catalog.current_database()")
            .await
            .map_err(|e| MigrationError::db("reading the source database's encoding", e))?;
        let extensions = src
            .query_typed(
                "SELECT extname::text, extversion FROM pg_catalog.pg_extension WHERE extname <> 'plpgsql' ORDER BY 1",
                &[],
            )
            .await
            .map_err(|e| MigrationError::db("listing the source's extensions", e))?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        Ok(TargetNeeds {
            source_version,
            roles,
            encoding: row.get(0),
            lc_collate: row.get(1),
            lc_ctype: row.get(2),
            locale_provider: catalog::database_locale_provider(src, source_version).await?,
            extensions,
            roles_hint: "Pass --roles to create them as the source defines them, or create them on the target first \
                 (--no-owner and --no-acl leave out ownership and privileges)",
            tablespace: row
                .get::<_, Option<String>>(3)
                .and_then(|t| schema::tablespace::Placement::of(cfg).map(&t)),
            generated_under_plain_parents: if source_version < 160000 && !cfg.data_only {
                catalog::generated_columns_under_plain_parents(src).await?
            } else {
                Vec::new()
            },
        })
    }
}

/// For a full migration: the target database must be absent (it is
/// created like the source's: encoding and locale) or empty; the roles
/// owning the source's objects must exist on the target server; the target
/// major must not be older than the source's. `--force-clean` drops and
/// recreates a non-empty target database.
pub(crate) async fn prepare_target_database(
    src: Option<&Client>,
    target: &crate::config::EndpointConfig,
    needs: &TargetNeeds,
    resumed: bool,
    cfg: &MigrationConfig,
    script: &schema::SchemaScript,
) -> Result<()> {
    let source_version = needs.source_version;
    let force_clean = cfg.force_clean;
    let dbname = target.dbname.clone();
    let admin = connect_admin(target).await?;
    let target_version = catalog::server_version_num(&admin).await?;
    if target_version / 10000 < source_version / 10000 {
        return Err(MigrationError::Config(format!(
            "the target runs PostgreSQL {} and the source {}: migrating to an older major is not supported",
            target_version / 10000,
            source_version / 10000
        )));
    }
    if let Some(why) = generated_columns_refusal(target_version, needs) {
        return Err(MigrationError::Preflight(why));
    }
    let (missing, present) = missing_roles(&admin, needs).await?;
    if let (false, true, Some(src)) = (missing.is_empty(), cfg.roles, src) {
        // Roles are cluster-wide: created once, before the database, and
        // left in place (a resumed run needs them too).
        let stmts =
            schema::load::role_definitions(src, &missing, &present, cfg.role_passwords).await?;
        for (i, stmt) in stmts.iter().enumerate() {
            admin.batch_execute(stmt).await.map_err(|e| {
                let what = missing
                    .get(i)
                    .map(|r| format!("role {}", quote::ident(r)))
                    .unwrap_or_else(|| "a role membership".into());
                MigrationError::db(format!("creating {what} on the target (--roles)"), e)
            })?;
        }
        info!(roles = ?missing, "created the roles the schema needs on the target");
    } else if !missing.is_empty() {
        return Err(MigrationError::target_not_ready(missing_roles_refusal(
            &missing, needs,
        )));
    }
    // Every collation must be creatable there (ICU support, OS locales): try
    // each one as a temporary object in a transaction that is rolled back.
    let mut bad_collations = Vec::new();
    for step in script
        .pre_data
        .iter()
        .filter(|s| s.describe.starts_with("COLLATION "))
    {
        let name = step.describe.trim_start_matches("COLLATION ");
        let Some(create) = step.sql.first() else {
            continue;
        };
        let probe = create.replacen(name, "pg_temp.dbm_collation_probe", 1);
        let r = admin
            .batch_execute(&format!("BEGIN; {probe} ROLLBACK;"))
            .await;
        if let Err(e) = r {
            let _ = admin.batch_execute("ROLLBACK").await;
            let msg = crate::error::db_info(&e)
                .map(|i| i.message)
                .unwrap_or_else(|| e.to_string());
            bad_collations.push(format!("{name} ({msg})"));
        }
    }
    if !bad_collations.is_empty() {
        return Err(MigrationError::target_not_ready(format!(
            "collation(s) cannot be created on the target server: {}. Install the locales or an ICU-enabled build on the target first",
            bad_collations.join(", ")
        )));
    }
    // Every extension must be installable on the target at the source's version.
    let unavailable = unavailable_extensions(&admin, needs).await?;
    if !unavailable.is_empty() {
        return Err(MigrationError::target_not_ready(format!(
            "extension(s) not available on the target server at the source's version: {}. Install the extension packages on the target first",
            unavailable.join(", ")
        )));
    }
    if let Some(why) = tablespace_refusal(&admin, needs, script).await? {
        return Err(MigrationError::target_not_ready(why));
    }
    if let Some(why) = compression_refusal(&admin, script).await? {
        return Err(MigrationError::target_not_ready(why));
    }
    let exists: bool = admin
        .query_typed(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_database WHERE datname = $1)",
            &[(&dbname, tokio_postgres::types::Type::TEXT)],
        )
        .await
        .map_err(|e| MigrationError::db("looking up the target database", e))?
        .first()
        .is_some_and(|r| r.get(0));
    if exists && (resumed || force_clean) {
        // An earlier run of this migration may have ended by closing the
        // database (see [`seal_database`]): open it again, to resume into
        // or to drop; this run closes it again at its end.
        reopen_database(&admin, &dbname).await?;
    }
    if exists && !resumed {
        let objects = {
            let t = connect::connect(target, "target").await?;
            schema::load::user_object_count(&t).await?
        };
        if objects > 0 && !force_clean {
            return Err(MigrationError::target_not_ready(format!(
                "target database {} is not empty ({objects} objects): migrate into a new or empty database, or have it dropped and recreated",
                quote::ident(&dbname)
            ))
            .with_remedy(crate::error::Remedy::ForceClean));
        }
        if objects > 0 {
            crate::recorded::warn_recorded!(
                "force_clean: dropping and recreating the target database {dbname}"
            );
            // Our own inspection session may still be closing: retry briefly,
            // but never terminate anyone else's session.
            let mut tries = 0;
            loop {
                let r = admin
                    .batch_execute(&format!("DROP DATABASE {}", quote::ident(&dbname)))
                    .await;
                match r {
                    Ok(()) => break,
                    Err(e)
                        if e.code() == Some(&tokio_postgres::error::SqlState::OBJECT_IN_USE)
                            && tries < 20 =>
                    {
                        tries += 1;
                        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
                    }
                    Err(e) => {
                        return Err(MigrationError::db(
                            "dropping the target database (--force-clean; disconnect other sessions from it first)",
                            e,
                        ))
                    }
                }
            }
        } else {
            return Ok(());
        }
    } else if exists {
        return Ok(());
    }
    let (enc, collate, ctype) = (&needs.encoding, &needs.lc_collate, &needs.lc_ctype);
    let mut sql = format!(
        "CREATE DATABASE {} WITH TEMPLATE = template0 ENCODING = {} LC_COLLATE = {} LC_CTYPE = {}",
        quote::ident(&dbname),
        quote::literal(enc),
        quote::literal(collate),
        quote::literal(ctype)
    );
    if let Some(l) = &needs.locale_provider {
        sql.push_str(&locale_provider_clause(l, target_version)?);
    }
    if let Some(ts) = &needs.tablespace {
        sql.push_str(&format!(" TABLESPACE = {}", quote::ident(ts)));
    }
    admin.batch_execute(&sql).await.map_err(|e| {
        MigrationError::db(
            format!("creating the target database {}", quote::ident(&dbname)),
            e,
        )
    })?;
    info!(database = %dbname, encoding = %enc, "created the target database");
    Ok(())
}

/// The `CREATE DATABASE` options of a locale provider other than libc, as
/// the target's major spells them; refused when it has no such provider.
fn locale_provider_clause(
    l: &crate::pg::catalog::DatabaseLocale,
    target_version: i32,
) -> Result<String> {
    let needs = match l.provider.as_str() {
        "icu" => 150000,
        "builtin" => 170000,
        _ => i32::MAX,
    };
    if target_version < needs {
        return Err(MigrationError::target_not_ready(format!(
            "the source database uses the {} locale provider, which PostgreSQL {} cannot create a database with: migrate to PostgreSQL {} or later",
            l.provider,
            target_version / 10000,
            needs / 10000
        )));
    }
    let mut s = format!(" LOCALE_PROVIDER = {}", l.provider);
    if let Some(loc) = &l.locale {
        let key = if l.provider == "builtin" {
            "BUILTIN_LOCALE"
        } else {
            "ICU_LOCALE"
        };
        s.push_str(&format!(" {key} = {}", quote::literal(loc)));
    }
    if let Some(rules) = l.rules.as_ref().filter(|r| !r.is_empty()) {
        s.push_str(&format!(" ICU_RULES = {}", quote::literal(rules)));
    }
    Ok(s)
}

/// A session on the target server outside the target database.
async fn connect_admin(target: &crate::config::EndpointConfig) -> Result<Client> {
    match connect::connect(&target.with_dbname("postgres"), "target").await {
        Ok(c) => Ok(c),
        Err(_) => connect::connect(&target.with_dbname("template1"), "target").await,
    }
}

/// [`reopen_database`] for a resumed run that skips
/// [`prepare_target_database`].
pub(crate) async fn reopen(target: &crate::config::EndpointConfig) -> Result<()> {
    reopen_database(&connect_admin(target).await?, &target.dbname).await
}

/// Undo [`seal_database`] on `dbname` when any of its limits is set.
async fn reopen_database(admin: &Client, dbname: &str) -> Result<()> {
    let limited: bool = admin
        .query_one(schema::load::LIMITED_DATABASE_SQL, &[&dbname])
        .await
        .map_err(|e| MigrationError::db("reading the target database's limits", e))?
        .get(0);
    if !limited {
        return Ok(());
    }
    for stmt in schema::load::reopen_statements(dbname) {
        admin.batch_execute(&stmt).await.map_err(|e| {
            MigrationError::db(
                format!("opening the target database {} again", quote::ident(dbname)),
                e,
            )
        })?;
    }
    info!(database = %dbname, "lifted the connection limit, template and no-connection flags an earlier run set; they are set again at the end");
    Ok(())
}

/// The very last write of a full migration, after verify: the source
/// database's connection limit, `IS_TEMPLATE` and `ALLOW_CONNECTIONS =
/// false` (see [`schema::model::DatabaseLimits`]), set on the target
/// database from another database of its server. Nothing when the script
/// has none (data-only runs have no script).
pub(crate) async fn seal_database(
    target: &crate::config::EndpointConfig,
    limits: Option<schema::model::DatabaseLimits>,
) -> Result<()> {
    let Some(limits) = limits else {
        return Ok(());
    };
    let admin = connect_admin(target).await?;
    faults::before(Point::Seal).await;
    for stmt in schema::load::limit_statements(&limits, &target.dbname) {
        admin.batch_execute(&stmt).await.map_err(|e| {
            MigrationError::db(
                format!(
                    "setting the source's database properties on the target ({})",
                    stmt.trim_end_matches(';')
                ),
                e,
            )
        })?;
    }
    info!(
        database = %target.dbname,
        connection_limit = limits.connection_limit,
        is_template = limits.is_template,
        allow_connections = limits.allow_connections,
        "set the source database's connection limit and flags on the target"
    );
    faults::after(Point::Seal).await;
    Ok(())
}

/// The server version of an endpoint whose database may not exist yet.
pub(crate) async fn server_version_of(ep: &crate::config::EndpointConfig) -> Result<i32> {
    let c = connect::connect_server(ep, "target").await?;
    catalog::server_version_num(&c).await
}
