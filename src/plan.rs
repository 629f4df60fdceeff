//! `pg_dbmigrator plan` (and `migrate --dry-run`): what a migration would
//! do, read from both servers without changing either.
//!
//! Every check the real run makes before writing is run here too, but a
//! refusal is collected instead of returned, so one plan lists everything
//! to fix. The source session is read-only; the only thing written anywhere
//! is the copy-speed sample, into a temporary table on the target inside a
//! transaction that is rolled back (nothing remains, not even the temporary
//! schema).

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use serde::Serialize;
use tokio_postgres::Client;

use crate::config::{MigrationConfig, MigrationMode};
use crate::copy::plan::decide_split;
use crate::error::{MigrationError, Result};
use crate::pg::catalog::{self, TableInfo};
use crate::pg::{connect, quote, session};
use crate::progress::human_bytes;
use crate::replication::{object_name, preflight};
use crate::resume::work_location;
use crate::resume::Definition;
use crate::target::TargetNeeds;

/// A table as the migration would copy it.
#[derive(Debug, Clone, Serialize)]
pub struct PlannedTable {
    /// The table, quoted.
    pub table: String,
    /// Its heap size on the source.
    pub bytes: u64,
    /// `reltuples`: the planner's row estimate.
    pub row_estimate: i64,
    /// Page ranges copied in parallel (1: whole, with COPY FREEZE).
    pub chunks: u64,
}

/// The copy-speed sample.
#[derive(Debug, Clone, Serialize)]
pub struct SpeedSample {
    /// The table sampled.
    pub table: String,
    /// COPY bytes the sample moved.
    pub bytes: u64,
    /// How long it took.
    pub seconds: f64,
    /// `bytes / seconds`.
    pub bytes_per_second: f64,
    /// The sample went into the target (else only the source's read speed
    /// was measured: the target database does not exist yet).
    pub through_target: bool,
}

/// One database of a cluster plan.
#[derive(Debug, Clone, Serialize)]
pub struct DatabasePlan {
    /// The database's name.
    pub name: String,
    /// Its own plan.
    pub plan: Plan,
}

/// What `plan` found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Plan {
    /// `offline` or `online`.
    pub mode: String,
    /// `server_version_num` of the source.
    pub source_version: i32,
    /// `server_version_num` of the target, when it could be reached.
    pub target_version: Option<i32>,
    /// The id the migration would run under.
    pub migration_id: String,
    /// The tables to copy, largest first.
    pub tables: Vec<PlannedTable>,
    /// Their heap size.
    pub total_bytes: u64,
    /// Tables larger than this are copied in page ranges in parallel.
    pub split_bytes: u64,
    /// Why tables are (or are not) cut into page ranges.
    pub split_reason: String,
    /// Sequences whose values would be set.
    pub sequences: usize,
    /// Large objects to copy.
    pub large_objects: usize,
    /// Schema objects the run would create (`None` for data-only runs).
    pub schema_steps: Option<usize>,
    /// What the run would create or change on the source.
    pub source_changes: Vec<String>,
    /// What the run would create or change on the target.
    pub target_changes: Vec<String>,
    /// What would stop the run, each with its fix.
    pub refusals: Vec<String>,
    /// What would not stop the run but deserves a look.
    pub warnings: Vec<String>,
    /// A short copy of one table, to estimate the speed.
    pub sample: Option<SpeedSample>,
    /// The copy alone, from the sample's speed and the parallelism.
    pub estimated_copy_seconds: Option<f64>,
    /// A whole-cluster plan: each database's own (the fields above add
    /// them up; refusals and warnings name their database).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub databases: Vec<DatabasePlan>,
    /// A whole-cluster plan: login roles whose password cannot be carried.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub roles_without_password: Vec<String>,
}

impl Plan {
    /// Whether the migration would start.
    pub fn ready(&self) -> bool {
        self.refusals.is_empty()
    }

    /// The plan for a terminal.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "plan: {} migration {}, PostgreSQL {} -> {}\n",
            self.mode,
            self.migration_id,
            self.source_version / 10000,
            self.target_version
                .map_or("?".to_string(), |v| (v / 10000).to_string())
        );
        s.push_str(&format!(
            "  {} tables, {} ({} sequences, {} large objects{})\n",
            self.tables.len(),
            human_bytes(self.total_bytes),
            self.sequences,
            self.large_objects,
            self.schema_steps
                .map(|n| format!(", {n} schema steps"))
                .unwrap_or_default()
        ));
        for d in &self.databases {
            s.push_str(&format!(
                "  database {}: {} tables, {}{}{}\n",
                d.name,
                d.plan.tables.len(),
                human_bytes(d.plan.total_bytes),
                d.plan
                    .estimated_copy_seconds
                    .map(|e| format!(", copy about {e:.0}s"))
                    .unwrap_or_default(),
                if d.plan.ready() { "" } else { " (refused)" }
            ));
        }
        let split: Vec<&PlannedTable> = self.tables.iter().filter(|t| t.chunks > 1).collect();
        s.push_str(&format!(
            "  split: {} table(s) cut into page ranges ({})\n",
            split.len(),
            self.split_reason
        ));
        for t in self.tables.iter().take(20) {
            s.push_str(&format!(
                "    {:<40} {:>10} {:>12} rows (est.){}\n",
                t.table,
                human_bytes(t.bytes),
                if t.row_estimate < 0 {
                    "?".to_string()
                } else {
                    t.row_estimate.to_string()
                },
                if t.chunks > 1 {
                    format!(", {} chunks", t.chunks)
                } else {
                    String::new()
                }
            ));
        }
        if self.tables.len() > 20 {
            s.push_str(&format!("    ... and {} smaller\n", self.tables.len() - 20));
        }
        for (title, items) in [
            ("on the source it would", &self.source_changes),
            ("on the target it would", &self.target_changes),
        ] {
            if !items.is_empty() {
                s.push_str(&format!("  {title}:\n"));
                for i in items {
                    s.push_str(&format!("    - {i}\n"));
                }
            }
        }
        for w in &self.warnings {
            s.push_str(&format!("  warning: {w}\n"));
        }
        match &self.sample {
            Some(x) => s.push_str(&format!(
                "  copy speed sample: {} of {} in {:.2}s = {}/s per worker{}\n",
                human_bytes(x.bytes),
                x.table,
                x.seconds,
                human_bytes(x.bytes_per_second as u64),
                if x.through_target {
                    " (source to target)"
                } else {
                    " (reading the source only: the target database does not exist yet)"
                }
            )),
            None => s.push_str("  copy speed sample: none (no rows to sample)\n"),
        }
        if let Some(e) = self.estimated_copy_seconds {
            s.push_str(&format!(
                "  estimated copy time: {:.0}s (indexes, ANALYZE and verify come on top)\n",
                e
            ));
        }
        if self.refusals.is_empty() {
            s.push_str("  ready: nothing stops this migration\n");
        } else {
            s.push_str(&format!(
                "  NOT READY: {} problem(s) would stop it:\n",
                self.refusals.len()
            ));
            for r in &self.refusals {
                for (i, line) in r.lines().enumerate() {
                    s.push_str(if i == 0 { "    - " } else { "      " });
                    s.push_str(line);
                    s.push('\n');
                }
            }
        }
        s
    }
}

/// A refusal to collect, anything else to return.
fn collect(refusals: &mut Vec<String>, r: Result<()>) -> Result<()> {
    match r {
        Ok(()) => Ok(()),
        Err(
            e @ (MigrationError::Preflight(_)
            | MigrationError::TargetNotReady { .. }
            | MigrationError::Unsupported(_)
            | MigrationError::Config(_)),
        ) => {
            refusals.push(e.to_string());
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// Read both servers and say what `migrate` with `cfg` would do.
pub async fn plan(cfg: &MigrationConfig) -> Result<Plan> {
    // What migrate would refuse before connecting, plan refuses the same way.
    cfg.validate()?;
    let def = Definition::from_config(cfg)?;
    let (migration_id, _) = work_location(cfg, &def);
    let filters = cfg.filters.compile()?;
    let source_ep = cfg.source.clone().expect("checked by Definition");
    let target_ep = cfg.target.clone().expect("checked by Definition");
    let online = cfg.mode == MigrationMode::Online;
    let full = !cfg.data_only;
    let mut p = Plan {
        mode: format!(
            "{} {}",
            if online { "online" } else { "offline" },
            if full { "full" } else { "data-only" }
        ),
        migration_id: migration_id.clone(),
        ..Default::default()
    };

    let src = connect::connect(&source_ep, "source").await?;
    session::setup_source(&src).await?;
    src.batch_execute("SET default_transaction_read_only = on")
        .await
        .map_err(|e| MigrationError::db("making the plan's source session read-only", e))?;
    p.source_version = catalog::server_version_num(&src).await?;
    let r = crate::target::refuse_small_lock_table(&src, &filters, cfg.jobs).await;
    collect(&mut p.refusals, r)?;
    let mut tables = catalog::list_tables(&src, &filters).await?;
    let seqs = catalog::list_sequences(&src, &filters).await?;
    let los = if cfg.large_objects {
        catalog::list_large_objects(&src).await?
    } else {
        Vec::new()
    };
    p.sequences = seqs.len();
    p.large_objects = los.len();
    p.total_bytes = tables.iter().map(|t| t.bytes.max(0) as u64).sum();
    tables.sort_by_key(|t| std::cmp::Reverse(t.bytes));

    // The target: reachable? database present? its version.
    let dst = match connect::connect(&target_ep, "target").await {
        Ok(c) => Some(c),
        Err(e) if e.sqlstate() == Some("3D000") && full => None,
        Err(e) => return Err(e),
    };
    let admin = match &dst {
        Some(_) => None,
        None => Some(
            match connect::connect(&target_ep.with_dbname("postgres"), "target").await {
                Ok(c) => c,
                Err(_) => connect::connect(&target_ep.with_dbname("template1"), "target").await?,
            },
        ),
    };
    let tc = dst.as_ref().or(admin.as_ref()).expect("one of them");
    let target_version = catalog::server_version_num(tc).await?;
    p.target_version = Some(target_version);
    let split = decide_split(
        cfg.split_bytes,
        p.total_bytes,
        cfg.jobs,
        p.source_version,
        Some(target_version),
    );
    p.split_bytes = split.bytes;
    p.split_reason = split.reason;
    p.tables = tables
        .iter()
        .map(|t| PlannedTable {
            table: t.qualified(),
            bytes: t.bytes.max(0) as u64,
            row_estimate: t.row_estimate as i64,
            chunks: if p.split_bytes > 0 && t.bytes.max(0) as u64 > p.split_bytes {
                (t.bytes as u64).div_ceil(p.split_bytes)
            } else {
                1
            },
        })
        .collect();
    if target_version / 10000 < p.source_version / 10000 && full {
        p.refusals.push(format!(
            "the target runs PostgreSQL {} and the source {}: migrating to an older major is not supported",
            target_version / 10000,
            p.source_version / 10000
        ));
    }

    if full {
        let script =
            crate::schema::read_with(&source_ep, None, &crate::schema::ReadOptions::of(cfg))
                .await?;
        let steps =
            script.pre_data.len() + script.post_data.len() + script.acl.len() + script.last.len();
        p.schema_steps = Some(steps);
        if let Some(l) = script.database_limits {
            let stmts = crate::schema::load::limit_statements(&l, &target_ep.dbname);
            p.target_changes.push(format!(
                "at the very end, after verify: {}",
                stmts.join(" ")
            ));
        }
        if !script.unsupported.is_empty() {
            p.refusals.push(format!(
                "objects schema reproduction does not cover yet: {}. Create the schema on the target yourself and run with --data-only",
                script.unsupported.join(", ")
            ));
        }
        match &dst {
            None => p.target_changes.push(format!(
                "create the database {} (encoding and locale as the source's)",
                quote::ident(&target_ep.dbname)
            )),
            Some(d) => {
                let objects: i64 = crate::pg::query_one_once(d, "SELECT count(*) FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                          WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', '_pg_dbmigrator')
                            AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'")
                    .await
                    .map_err(|e| MigrationError::db("looking into the target database", e))?
                    .get(0);
                if objects > 0 && !cfg.force_clean {
                    p.refusals.push(format!(
                        "the target database {} is not empty ({objects} relations): give an empty or absent database, or --force-clean to drop and recreate it",
                        quote::ident(&target_ep.dbname)
                    ));
                } else if objects > 0 {
                    p.target_changes.push(format!(
                        "DROP and recreate the non-empty database {} (--force-clean)",
                        quote::ident(&target_ep.dbname)
                    ));
                }
            }
        }
        p.target_changes.push(format!(
            "create {steps} schema objects (pre-data {}, post-data {}, privileges {}, last {})",
            script.pre_data.len(),
            script.post_data.len(),
            script.acl.len(),
            script.last.len()
        ));
        let needs = TargetNeeds::read(&src, p.source_version, cfg).await?;
        let unavailable = crate::target::unavailable_extensions(tc, &needs).await?;
        if !unavailable.is_empty() {
            p.refusals.push(format!(
                "extension(s) not available on the target server at the source's version: {}. Install the extension packages on the target first",
                unavailable.join(", ")
            ));
        }
        if let Some(why) = crate::target::tablespace_refusal(tc, &needs, &script).await? {
            p.refusals.push(why);
        }
        if let Some(why) = crate::target::compression_refusal(tc, &script).await? {
            p.refusals.push(why);
        }
        if let Some(why) = crate::target::generated_columns_refusal(
            crate::pg::catalog::server_version_num(tc).await?,
            &needs,
        ) {
            p.refusals.push(why);
        }
        let (missing, _) = crate::target::missing_roles(tc, &needs).await?;
        if !missing.is_empty() {
            if cfg.roles {
                p.target_changes
                    .push(format!("create the roles {}", missing.join(", ")));
            } else {
                p.refusals
                    .push(crate::target::missing_roles_refusal(&missing, &needs));
            }
        }
    } else if let Some(d) = &dst {
        let r = crate::target::preflight_target(d, &mut tables, &seqs, &los, false).await;
        collect(&mut p.refusals, r)?;
    }
    p.target_changes.push(
        "create the bookkeeping schema _pg_dbmigrator (progress markers; dropped at the end)"
            .into(),
    );

    if online {
        let name = object_name(&migration_id);
        let checks = |fix| preflight::SourceChecks {
            tables: &tables,
            slot_name: &name,
            publication_name: &name,
            resuming: false,
            fix_replica_identity: fix,
            large_objects: cfg.large_objects,
        };
        let report = match preflight::check_source(&src, &checks(cfg.fix_replica_identity)).await {
            Ok(r) => Some(r),
            Err(e @ MigrationError::Preflight(_)) => {
                p.refusals.push(e.to_string());
                // What --fix-replica-identity would do, and the warnings.
                preflight::check_source(&src, &checks(true)).await.ok()
            }
            Err(e) => return Err(e),
        };
        if let Some(r) = report {
            p.warnings.extend(r.warnings.iter().cloned());
            let published = tables.len() - r.unlogged.len();
            p.source_changes.push(format!(
                "create the publication {} for {published} table(s)",
                quote::ident(&name)
            ));
            p.source_changes.push(format!(
                "create the logical replication slot {} (it holds WAL until the cutover)",
                quote::ident(&name)
            ));
            let whole = filters == crate::config::filter::CompiledFilters::default();
            match crate::replication::ddl::capture_possible(&src, whole, cfg.data_only).await? {
                Ok(()) => p.source_changes.push(format!(
                    "create the schema _pg_dbmigrator and the event triggers {t} and {t}_drop: schema changes made while streaming are captured and replayed on the target (removed at the cutover)",
                    t = crate::replication::ddl::trigger_name(&name)
                )),
                Err(why) => p.warnings.push(format!(
                    "schema changes on the source cannot be captured ({why}): keep the schema frozen until the cutover; a fingerprint taken at the snapshot refuses the cutover if it changed"
                )),
            }
            for f in &r.fixes {
                let what = match &f.new {
                    preflight::NewIdentity::UsingIndex(i) => {
                        format!("REPLICA IDENTITY USING INDEX {}", quote::ident(i))
                    }
                    preflight::NewIdentity::Full => "REPLICA IDENTITY FULL".to_string(),
                };
                p.source_changes.push(format!(
                    "{}ALTER TABLE {} {what} (restored at the end)",
                    if cfg.fix_replica_identity {
                        ""
                    } else {
                        "with --fix-replica-identity: "
                    },
                    quote::qualified(&f.schema, &f.name)
                ));
            }
        }
        if cfg.fence {
            p.source_changes.push(format!(
                "at the cutover: ALTER DATABASE {} SET default_transaction_read_only = on and end its other sessions (the write fence; `pg_dbmigrator unfence` lifts it)",
                quote::ident(&source_ep.dbname)
            ));
        }
        if let Some(d) = &dst {
            let r = preflight::check_target(d).await;
            collect(&mut p.refusals, r)?;
            if cfg.fallback {
                let r = preflight::check_fallback_target(d).await;
                collect(&mut p.refusals, r)?;
            }
        }
        if cfg.fallback {
            let back = crate::replication::reverse::object_name(&name);
            p.target_changes.push(format!(
                "--fallback, at the cutover: create the publication and the logical slot {back} (the new server's changes stream back to the old source until `rollback` or `finish`)"
            ));
        }
        p.target_changes.push(
            "create the apply progress table _pg_dbmigrator.progress (dropped at the cutover)"
                .into(),
        );
    }

    // The copy-speed sample.
    if let Some(t) = tables.iter().find(|t| t.bytes > 0) {
        p.sample = Some(sample(&src, dst.as_ref(), t).await?);
    }
    if let Some(x) = &p.sample {
        let parallel = cfg.jobs.max(1).min(
            p.tables
                .iter()
                .map(|t| t.chunks as usize)
                .sum::<usize>()
                .max(1),
        );
        if x.bytes_per_second > 0.0 {
            p.estimated_copy_seconds =
                Some(p.total_bytes as f64 / (x.bytes_per_second * parallel as f64));
        }
    }
    Ok(p)
}

/// Up to 32 MB (or 3 s) of `t`'s rows, each as one text value, from the
/// source into a temporary table on the target in a transaction rolled
/// back; without a target database, only read.
async fn sample(src: &Client, dst: Option<&Client>, t: &TableInfo) -> Result<SpeedSample> {
    const LIMIT_BYTES: f64 = 32.0 * 1024.0 * 1024.0;
    // Never analyzed (no estimate): assume rows of 100 bytes.
    let per_row = if t.row_estimate > 0.0 {
        (t.bytes as f64 / t.row_estimate).max(1.0)
    } else {
        100.0
    };
    let rows = ((LIMIT_BYTES / per_row) as i64).max(1000);
    let sql = format!(
        "COPY (SELECT x::text FROM ONLY {} x LIMIT {rows}) TO STDOUT",
        t.qualified()
    );
    let ctx = |e| MigrationError::db(format!("sampling the copy speed on {}", t.qualified()), e);
    let started = Instant::now();
    let out = src.copy_out(&sql).await.map_err(ctx)?;
    futures::pin_mut!(out);
    let mut bytes = 0u64;
    let deadline = Duration::from_secs(3);
    match dst {
        Some(d) => {
            d.batch_execute(
                "BEGIN; CREATE TEMPORARY TABLE pg_dbmigrator_speed_sample (v text) ON COMMIT DROP",
            )
            .await
            .map_err(ctx)?;
            let sink = d
                .copy_in::<_, Bytes>("COPY pg_dbmigrator_speed_sample (v) FROM STDIN")
                .await
                .map_err(ctx)?;
            futures::pin_mut!(sink);
            while let Some(chunk) = out.next().await {
                let chunk = chunk.map_err(ctx)?;
                bytes += chunk.len() as u64;
                sink.send(chunk).await.map_err(ctx)?;
                if started.elapsed() > deadline {
                    break;
                }
            }
            sink.as_mut().finish().await.map_err(ctx)?;
            d.batch_execute("ROLLBACK").await.map_err(ctx)?;
        }
        None => {
            while let Some(chunk) = out.next().await {
                bytes += chunk.map_err(ctx)?.len() as u64;
                if started.elapsed() > deadline {
                    break;
                }
            }
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(SpeedSample {
        table: t.qualified(),
        bytes,
        seconds,
        bytes_per_second: if seconds > 0.0 {
            bytes as f64 / seconds
        } else {
            0.0
        },
        through_target: dst.is_some(),
    })
}
