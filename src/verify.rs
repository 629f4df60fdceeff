//! Verify: prove that the target holds what the source holds.
//!
//! Each side is read in one consistent snapshot (a coordinator exports it,
//! `jobs` workers import it). Per table a row count and an order-independent
//! content checksum: the sum, as numeric, of the first 64 bits of each row's
//! md5. A sum (unlike XOR) counts duplicate rows of tables without a key.
//! Session settings are pinned so text forms are the same on both servers.
//! Sequences, large objects (ids, owners, contents) and the set of tables are
//! compared too.
//!
//! A stage: reads both sides, changes neither.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};

use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::config::filter::CompiledFilters;
use crate::config::{EndpointConfig, VerifyLevel};
use crate::error::{MigrationError, Result};
use crate::pg::catalog::{self, TableInfo};
use crate::pg::{connect, quote, session};
use crate::workers::Workers;

/// What kind of difference was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DiffKind {
    /// A source table is not on the target.
    MissingTable,
    /// A table is on the target only.
    ExtraTable,
    /// A source table with rows was not compared (outside the filters).
    NotCompared,
    /// Row counts differ.
    RowCount,
    /// Same count, different content.
    Checksum,
    /// The comparison of this object failed.
    Error,
    /// A source sequence is not on the target.
    MissingSequence,
    /// A sequence's value differs.
    Sequence,
    /// A source large object is not on the target.
    MissingLargeObject,
    /// A large object is on the target only.
    ExtraLargeObject,
    /// A large object's content differs.
    LargeObjectContent,
    /// A large object's owner differs.
    LargeObjectOwner,
}

impl DiffKind {
    fn label(&self) -> &'static str {
        match self {
            DiffKind::MissingTable => "table missing on target",
            DiffKind::ExtraTable => "table only on target",
            DiffKind::NotCompared => "source table with rows not compared",
            DiffKind::RowCount => "row count",
            DiffKind::Checksum => "content checksum",
            DiffKind::Error => "could not compare",
            DiffKind::MissingSequence => "sequence missing on target",
            DiffKind::Sequence => "sequence value",
            DiffKind::MissingLargeObject => "large object missing on target",
            DiffKind::ExtraLargeObject => "large object only on target",
            DiffKind::LargeObjectContent => "large object content",
            DiffKind::LargeObjectOwner => "large object owner",
        }
    }
}

/// One thing `verify` found different.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Difference {
    /// What differs.
    pub kind: DiffKind,
    /// The table, sequence or large object.
    pub object: String,
    /// What the source has.
    pub source: String,
    /// What the target has.
    pub target: String,
}

/// One table's comparison.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TableCheck {
    /// The table, quoted.
    pub table: String,
    /// Rows on the source.
    pub source_rows: i64,
    /// Rows on the target (`None`: missing there).
    pub target_rows: Option<i64>,
    /// The content checksum on the source (`VerifyLevel::Checksum`).
    pub source_checksum: Option<String>,
    /// The content checksum on the target.
    pub target_checksum: Option<String>,
}

/// What `verify` compared and found: empty `differences` means source and
/// target hold the same data ([`VerifyReport::is_clean`]).
#[derive(Debug, Clone, Default)]
pub struct VerifyReport {
    /// How deep it compared (`None`: not run).
    pub level: Option<VerifyLevel>,
    /// Each table's comparison.
    pub tables: Vec<TableCheck>,
    /// Sequences compared.
    pub sequences: usize,
    /// Large objects compared.
    pub large_objects: usize,
    /// Everything found different.
    pub differences: Vec<Difference>,
    /// Source tables holding rows that the filters (`-n`/`-t`/...) left out
    /// of this comparison: named so nobody mistakes a clean verify of a
    /// part for one of the whole database.
    pub outside_filters: Vec<String>,
    /// How long the comparison took.
    pub seconds: f64,
}

impl serde::Serialize for VerifyReport {
    /// As the fields, with only the largest tables' checks listed (see
    /// [`crate::progress::LISTED_TABLES`]); the differences are all there.
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        #[derive(serde::Serialize)]
        struct Repr<'a> {
            level: Option<VerifyLevel>,
            tables: Vec<&'a TableCheck>,
            #[serde(skip_serializing_if = "Option::is_none")]
            other_tables: Option<crate::progress::OtherTables>,
            sequences: usize,
            large_objects: usize,
            differences: &'a [Difference],
            #[serde(skip_serializing_if = "<[String]>::is_empty")]
            outside_filters: &'a [String],
            seconds: f64,
        }
        let (tables, other_tables) = crate::progress::largest(
            &self.tables,
            |t| t.source_rows.max(0) as u64,
            |o, t| o.rows += t.source_rows.max(0) as u64,
        );
        Repr {
            level: self.level,
            tables,
            other_tables,
            sequences: self.sequences,
            large_objects: self.large_objects,
            differences: &self.differences,
            outside_filters: &self.outside_filters,
            seconds: self.seconds,
        }
        .serialize(s)
    }
}

impl VerifyReport {
    /// Nothing differs.
    pub fn is_clean(&self) -> bool {
        self.differences.is_empty()
    }

    /// One line naming the source tables with rows outside the filters
    /// (empty when there are none); the JSON report has them all.
    pub fn outside_filters_line(&self) -> String {
        const SHOWN: usize = 20;
        let n = self.outside_filters.len();
        if n == 0 {
            return String::new();
        }
        let names = self.outside_filters[..n.min(SHOWN)].join(", ");
        let rest = if n > SHOWN {
            format!(" (the first {SHOWN}; all in the JSON report)")
        } else {
            String::new()
        };
        format!("not compared: {n} source table(s) with rows outside the filters: {names}{rest}\n")
    }

    /// The differences as an aligned text table (empty when clean).
    pub fn differences_table(&self) -> String {
        if self.differences.is_empty() {
            return String::new();
        }
        let headers = ["object", "difference", "source", "target"];
        let rows: Vec<[String; 4]> = self
            .differences
            .iter()
            .map(|d| {
                [
                    d.object.clone(),
                    d.kind.label().to_string(),
                    d.source.clone(),
                    d.target.clone(),
                ]
            })
            .collect();
        let mut w = headers.map(|h| h.len());
        for r in &rows {
            for (i, c) in r.iter().enumerate() {
                w[i] = w[i].max(c.chars().count()).min(60);
            }
        }
        let line = |cells: [&str; 4]| {
            let mut s = String::new();
            for (i, c) in cells.iter().enumerate() {
                let c: String = c.chars().take(60).collect();
                s.push_str(&format!("{:<width$}", c, width = w[i]));
                if i < 3 {
                    s.push_str(" | ");
                }
            }
            s.trim_end().to_string()
        };
        let mut out = line(headers);
        out.push('\n');
        out.push_str(
            &w.iter()
                .map(|n| "-".repeat(*n))
                .collect::<Vec<_>>()
                .join("-+-"),
        );
        out.push('\n');
        for r in &rows {
            out.push_str(&line([&r[0], &r[1], &r[2], &r[3]]));
            out.push('\n');
        }
        out
    }
}

/// One database of a cluster comparison.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DatabaseVerifyReport {
    /// The database's name.
    pub name: String,
    /// What its comparison found.
    pub report: VerifyReport,
}

/// What `verify` of a whole cluster found: each database's comparison,
/// the databases the target lacks, and the globals that differ.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ClusterVerifyReport {
    /// Each database compared.
    pub databases: Vec<DatabaseVerifyReport>,
    /// Databases of the source the target does not have.
    pub missing_databases: Vec<String>,
    /// Roles, memberships, settings, privileges and tablespaces the target
    /// has otherwise than the source (or lacks).
    pub globals: Vec<crate::globals::Difference>,
    /// How long the comparison took.
    pub seconds: f64,
}

impl ClusterVerifyReport {
    /// Nothing differs anywhere.
    pub fn is_clean(&self) -> bool {
        self.missing_databases.is_empty()
            && self.globals.is_empty()
            && self.databases.iter().all(|d| d.report.is_clean())
    }

    /// How many differences, all databases and the globals together.
    pub fn differences(&self) -> usize {
        self.missing_databases.len()
            + self.globals.len()
            + self
                .databases
                .iter()
                .map(|d| d.report.differences.len())
                .sum::<usize>()
    }

    /// A human summary for the terminal: a line per database, then the globals.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        for d in &self.databases {
            let r = &d.report;
            if r.is_clean() {
                s.push_str(&format!(
                    "  {}: 0 differences ({} tables, {} sequences, {} large objects)\n",
                    d.name,
                    r.tables.len(),
                    r.sequences,
                    r.large_objects
                ));
            } else {
                s.push_str(&format!(
                    "  {}: {} difference(s)\n{}",
                    d.name,
                    r.differences.len(),
                    r.differences_table()
                ));
            }
        }
        for m in &self.missing_databases {
            s.push_str(&format!("  {m}: missing on the target\n"));
        }
        if self.globals.is_empty() {
            s.push_str("  globals: 0 differences\n");
        } else {
            s.push_str(&format!(
                "  globals: {} difference(s)\n",
                self.globals.len()
            ));
            for g in &self.globals {
                s.push_str(&format!("    {}: {}\n", g.object, g.detail));
            }
        }
        s
    }
}

/// What to verify.
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// How deep to compare.
    pub level: VerifyLevel,
    /// Tables compared at once.
    pub jobs: usize,
    /// Compare large objects too.
    pub large_objects: bool,
    /// Compare extensions' configuration tables even under filters: a full
    /// migration creates every extension and copies their user rows.
    pub extension_data: bool,
}

/// Compare source and target. Differences are in the report; an `Err` means
/// the comparison itself could not run. Verify reads and writes nothing,
/// so a transient fault (a session lost, a server restarting, a
/// serialization failure) starts the whole comparison again on new
/// sessions, with [`connect::Retry`]'s backoff, until it gives up.
pub async fn verify(
    source: &EndpointConfig,
    target: &EndpointConfig,
    filters: &CompiledFilters,
    opts: &VerifyOptions,
    cancel: &CancellationToken,
) -> Result<VerifyReport> {
    let mut retry = connect::Retry::new();
    loop {
        match verify_once(source, target, filters, opts, cancel).await {
            Ok(r) => return Ok(r),
            Err(e) => retry.wait(e, "verify", cancel).await?,
        }
    }
}

async fn verify_once(
    source: &EndpointConfig,
    target: &EndpointConfig,
    filters: &CompiledFilters,
    opts: &VerifyOptions,
    cancel: &CancellationToken,
) -> Result<VerifyReport> {
    let started = std::time::Instant::now();
    let mut report = VerifyReport {
        level: Some(opts.level),
        ..Default::default()
    };
    if opts.level == VerifyLevel::None {
        return Ok(report);
    }
    let src = connect::connect(source, "source").await?;
    session::setup_source(&src).await?;
    let (src_snap, _) = session::begin_exported_snapshot(&src).await?;
    let dst = connect::connect(target, "target").await?;
    session::setup_source(&dst).await?;
    let (dst_snap, _) = session::begin_exported_snapshot(&dst).await?;
    crate::faults::test_pause_at("verify").await;

    // The set of tables.
    let src_rels: BTreeSet<String> = catalog::list_relation_names(&src, filters)
        .await?
        .into_iter()
        .collect();
    let dst_rels: BTreeSet<String> = catalog::list_relation_names(&dst, filters)
        .await?
        .into_iter()
        .collect();
    // Where each source table's rows are on the target: the same table,
    // or, re-shaped by a data-only run, a partitioned one of the same name
    // or the root of its partition tree. The rows that went into one
    // target relation are compared as one.
    let listed = catalog::list_tables(&src, filters).await?;
    let shapes = catalog::target_shapes(&dst, &listed).await?;
    let mut tables: Vec<Unit> = Vec::new();
    let mut reshaped: BTreeMap<String, usize> = BTreeMap::new();
    for (t, shape) in listed.into_iter().zip(shapes) {
        match shape {
            catalog::TargetShape::Plain { .. } if dst_rels.contains(&t.qualified()) => {
                tables.push(Unit::same(t))
            }
            catalog::TargetShape::Into { into, .. } => match reshaped.get(&into.relation) {
                Some(&u) => tables[u].add_source(t),
                None => {
                    reshaped.insert(into.relation.clone(), tables.len());
                    tables.push(Unit::into(t, into));
                }
            },
            _ => {}
        }
    }
    // A partition on one side only, under a re-shaped table, is compared
    // through it: neither missing nor extra.
    let (src_roots, dst_roots) = if reshaped.is_empty() {
        Default::default()
    } else {
        (
            catalog::partition_roots(&src).await?,
            catalog::partition_roots(&dst).await?,
        )
    };
    let under_reshaped = |roots: &std::collections::HashMap<String, String>, name: &String| {
        roots.get(name).is_some_and(|r| reshaped.contains_key(r))
    };
    for missing in src_rels.difference(&dst_rels) {
        if under_reshaped(&src_roots, missing) {
            continue;
        }
        report.differences.push(Difference {
            kind: DiffKind::MissingTable,
            object: missing.clone(),
            source: "present".into(),
            target: "absent".into(),
        });
    }
    for extra in dst_rels.difference(&src_rels) {
        if under_reshaped(&dst_roots, extra) {
            continue;
        }
        report.differences.push(Difference {
            kind: DiffKind::ExtraTable,
            object: extra.clone(),
            source: "absent".into(),
            target: "present".into(),
        });
    }

    // Extensions' configuration tables: the user's rows (those matching
    // extcondition) must be on the target too; the extension's own rows
    // are not compared.
    let whole_database = filters == &crate::config::filter::CompiledFilters::default();
    let mut ext_seqs = Vec::new();
    if whole_database || opts.extension_data {
        for t in catalog::list_extension_config_tables(&src).await? {
            if relation_exists(&dst, &t.qualified()).await? {
                tables.push(Unit::same(t));
            } else {
                report.differences.push(Difference {
                    kind: DiffKind::MissingTable,
                    object: t.qualified(),
                    source: "extension configuration table".into(),
                    target: "absent".into(),
                });
            }
        }
        ext_seqs = catalog::list_extension_config_sequences(&src).await?;
    }
    // Every other source table with rows: outside the filters it is named;
    // with no filters nothing may be left out (a table missing on the
    // target is already a difference).
    let mut accounted: Vec<String> = tables.iter().flat_map(|u| u.sources.clone()).collect();
    accounted.extend(
        report
            .differences
            .iter()
            .filter(|d| d.kind == DiffKind::MissingTable)
            .map(|d| d.object.clone()),
    );
    for name in catalog::tables_with_rows_outside(&src, &accounted).await? {
        if whole_database {
            report.differences.push(Difference {
                kind: DiffKind::NotCompared,
                object: name,
                source: "has rows".into(),
                target: "not compared".into(),
            });
        } else {
            report.outside_filters.push(name);
        }
    }
    // Rows, in parallel.
    let checks = check_tables(source, target, &src_snap, &dst_snap, tables, opts, cancel).await?;
    for c in &checks {
        match c.target_rows {
            None => report.differences.push(Difference {
                kind: DiffKind::Error,
                object: c.table.clone(),
                source: c.source_rows.to_string(),
                target: c.target_checksum.clone().unwrap_or_default(),
            }),
            Some(n) if n != c.source_rows => report.differences.push(Difference {
                kind: DiffKind::RowCount,
                object: c.table.clone(),
                source: c.source_rows.to_string(),
                target: n.to_string(),
            }),
            Some(_) if c.source_checksum != c.target_checksum => {
                report.differences.push(Difference {
                    kind: DiffKind::Checksum,
                    object: c.table.clone(),
                    source: c.source_checksum.clone().unwrap_or_default(),
                    target: c.target_checksum.clone().unwrap_or_default(),
                })
            }
            _ => {}
        }
    }
    report.tables = checks;

    // Sequences.
    let mut seqs = catalog::list_sequences(&src, filters).await?;
    seqs.extend(ext_seqs);
    let source_states = catalog::sequence_states(&src, &seqs).await?;
    let names: Vec<String> = seqs.iter().map(|s| s.qualified()).collect();
    let on_target = catalog::relations_exist(&dst, &names).await?;
    let present: Vec<catalog::SequenceInfo> = seqs
        .iter()
        .zip(&on_target)
        .filter(|(_, e)| **e)
        .map(|(s, _)| s.clone())
        .collect();
    let mut target_states = catalog::sequence_states(&dst, &present).await?.into_iter();
    for ((s, sv), exists) in seqs.iter().zip(source_states).zip(on_target) {
        if !exists {
            report.differences.push(Difference {
                kind: DiffKind::MissingSequence,
                object: s.qualified(),
                source: fmt_seq(sv),
                target: "absent".into(),
            });
            continue;
        }
        let tv = target_states
            .next()
            .expect("one state per sequence present");
        if sv != tv {
            let behind = if tv.0 < sv.0 { " (behind)" } else { "" };
            report.differences.push(Difference {
                kind: DiffKind::Sequence,
                object: s.qualified(),
                source: fmt_seq(sv),
                target: format!("{}{behind}", fmt_seq(tv)),
            });
        }
    }
    report.sequences = seqs.len();

    // Large objects.
    if opts.large_objects {
        let s = large_object_digests(&src).await?;
        let t = large_object_digests(&dst).await?;
        for (oid, (owner, digest)) in &s {
            match t.get(oid) {
                None => report.differences.push(Difference {
                    kind: DiffKind::MissingLargeObject,
                    object: format!("large object {oid}"),
                    source: "present".into(),
                    target: "absent".into(),
                }),
                Some((towner, tdigest)) => {
                    if tdigest != digest {
                        report.differences.push(Difference {
                            kind: DiffKind::LargeObjectContent,
                            object: format!("large object {oid}"),
                            source: digest.clone(),
                            target: tdigest.clone(),
                        });
                    }
                    if towner != owner {
                        report.differences.push(Difference {
                            kind: DiffKind::LargeObjectOwner,
                            object: format!("large object {oid}"),
                            source: owner.clone(),
                            target: towner.clone(),
                        });
                    }
                }
            }
        }
        for oid in t.keys().filter(|o| !s.contains_key(o)) {
            report.differences.push(Difference {
                kind: DiffKind::ExtraLargeObject,
                object: format!("large object {oid}"),
                source: "absent".into(),
                target: "present".into(),
            });
        }
        report.large_objects = s.len();
    }
    let _ = src.batch_execute("COMMIT").await;
    let _ = dst.batch_execute("COMMIT").await;
    report.seconds = started.elapsed().as_secs_f64();
    info!(
        tables = report.tables.len(),
        sequences = report.sequences,
        large_objects = report.large_objects,
        differences = report.differences.len(),
        "verify finished"
    );
    Ok(report)
}

fn fmt_seq((last, called): (i64, bool)) -> String {
    format!("last_value={last} is_called={called}")
}

async fn large_object_digests(c: &Client) -> Result<BTreeMap<u32, (String, String)>> {
    let rows = c
        .query_typed(
            "SELECT l.oid, pg_catalog.pg_get_userbyid(l.lomowner)::text, pg_catalog.md5(pg_catalog.lo_get(l.oid))
               FROM pg_catalog.pg_largeobject_metadata l",
            &[],
        )
        .await
        .map_err(|e| MigrationError::db("reading large objects", e))?;
    Ok(rows
        .iter()
        .map(|r| (r.get::<_, u32>(0), (r.get(1), r.get(2))))
        .collect())
}

async fn check_tables(
    source: &EndpointConfig,
    target: &EndpointConfig,
    src_snap: &str,
    dst_snap: &str,
    tables: Vec<Unit>,
    opts: &VerifyOptions,
    cancel: &CancellationToken,
) -> Result<Vec<TableCheck>> {
    if tables.is_empty() {
        return Ok(Vec::new());
    }
    let groups = verify_groups(tables);
    let n = opts.jobs.max(1).min(groups.len());
    let queue = Arc::new(Mutex::new(VecDeque::from(groups)));
    let out = Arc::new(Mutex::new(Vec::new()));
    let mut workers = Workers::new(cancel, "verify");
    let stop = workers.stop_token();
    for _ in 0..n {
        let (source, target) = (source.clone(), target.clone());
        let (src_snap, dst_snap) = (src_snap.to_string(), dst_snap.to_string());
        let (queue, out, stop, level) = (queue.clone(), out.clone(), stop.clone(), opts.level);
        workers.spawn(async move {
            let s = connect::connect(&source, "source").await?;
            session::setup_source(&s).await?;
            session::import_snapshot(&s, &src_snap).await?;
            let t = connect::connect(&target, "target").await?;
            session::setup_source(&t).await?;
            session::import_snapshot(&t, &dst_snap).await?;
            let mut first = true;
            loop {
                if stop.is_cancelled() {
                    return Err(MigrationError::Cancelled);
                }
                let Some(group) = queue.lock().unwrap().pop_front() else {
                    return Ok(());
                };
                // A new transaction on the same snapshots for every group:
                // locks of the tables already compared are let go, so ten
                // thousand tables fit a default lock table.
                // Sent ahead of the group's checksums, in one round trip
                // with them.
                let renew = async {
                    if first {
                        return Ok(());
                    }
                    futures::try_join!(
                        session::reimport_snapshot(&s, &src_snap),
                        session::reimport_snapshot(&t, &dst_snap)
                    )
                    .map(|_| ())
                };
                let (renewed, checks) =
                    futures::join!(renew, check_group(&s, &t, &dst_snap, &group, level));
                first = false;
                renewed?;
                let checks = checks?;
                out.lock().unwrap().extend(checks);
            }
        });
    }
    workers.join(cancel).await?;
    let mut v = std::mem::take(&mut *out.lock().unwrap());
    v.sort_by(|a: &TableCheck, b| a.table.cmp(&b.table));
    Ok(v)
}

/// Tables under this size are compared many per query: at ten thousand
/// small tables the round trips, not the reading, are the cost.
const BULK_TABLE_BYTES: i64 = 1 << 20;
/// Tables per bulk query: 16 measured fastest at 10,000 tiny tables (8:
/// 1.2 s, 16: 1.05 s, 64: 2.8 s, one table per query: 1.8 s for 5000 on
/// one session): past that the union's planning and locking cost more
/// than the round trips it saves.
const BULK_TABLES: usize = 16;

/// One comparison: the rows of `sources` on the source (each read
/// `ONLY`, with `table`'s columns and row filter) against those of
/// `target` on the target.
#[derive(Debug, Clone)]
struct Unit {
    /// The first source table: columns, row filter.
    table: TableInfo,
    /// The source tables read, quoted.
    sources: Vec<String>,
    /// The target relation, quoted; the name in the report.
    target: String,
    /// Read with its partitions (partitioned on the target).
    target_tree: bool,
    bytes: i64,
}

impl Unit {
    /// A table compared with the same one on the target.
    fn same(t: TableInfo) -> Unit {
        Unit {
            sources: vec![t.qualified()],
            target: t.qualified(),
            target_tree: false,
            bytes: t.bytes,
            table: t,
        }
    }

    /// A table whose rows went into `into` on the target.
    fn into(t: TableInfo, into: catalog::LoadInto) -> Unit {
        Unit {
            sources: vec![t.qualified()],
            target: into.relation,
            target_tree: into.partitioned,
            bytes: t.bytes,
            table: t,
        }
    }

    /// Another source table (a partition) loaded into the same relation.
    fn add_source(&mut self, t: TableInfo) {
        self.sources.push(t.qualified());
        self.bytes += t.bytes;
    }
}

/// Small tables in groups of [`BULK_TABLES`], every other table alone.
fn verify_groups(tables: Vec<Unit>) -> Vec<Vec<Unit>> {
    let (small, big): (Vec<_>, Vec<_>) =
        tables.into_iter().partition(|t| t.bytes < BULK_TABLE_BYTES);
    let mut groups: Vec<Vec<Unit>> = big.into_iter().map(|t| vec![t]).collect();
    let mut small = small.into_iter().peekable();
    while small.peek().is_some() {
        groups.push(small.by_ref().take(BULK_TABLES).collect());
    }
    groups
}

/// Compare a group of tables in one query per side. When the target
/// cannot answer the group (a table lacks a column, say), every table is
/// asked alone, so the error lands on the table it belongs to.
async fn check_group(
    s: &Client,
    t: &Client,
    dst_snap: &str,
    group: &[Unit],
    level: VerifyLevel,
) -> Result<Vec<TableCheck>> {
    if group.len() > 1 {
        let (ssql, tsql) = (
            group_digest_sql(group, level, Side::Source),
            group_digest_sql(group, level, Side::Target),
        );
        // (Unnamed statements: one round trip each, not a prepare first.)
        let (sr, tr) = tokio::join!(s.query_typed(&ssql, &[]), t.query_typed(&tsql, &[]));
        let sr = sr.map_err(|e| {
            MigrationError::db(
                format!(
                    "checksumming {} tables ({} ...) on the source",
                    group.len(),
                    group[0].target
                ),
                e,
            )
        })?;
        match tr {
            Ok(tr) => {
                let by_index = |rows: &[tokio_postgres::Row]| {
                    rows.iter()
                        .map(|r| (r.get::<_, i32>(0) as usize, (r.get(1), r.get(2))))
                        .collect::<BTreeMap<usize, (i64, Option<String>)>>()
                };
                let (sm, tm) = (by_index(&sr), by_index(&tr));
                return Ok(group
                    .iter()
                    .enumerate()
                    .map(|(i, unit)| {
                        let (source_rows, source_checksum) = sm[&i].clone();
                        let (target_rows, target_checksum) = tm[&i].clone();
                        TableCheck {
                            table: unit.target.clone(),
                            source_rows,
                            target_rows: Some(target_rows),
                            source_checksum,
                            target_checksum,
                        }
                    })
                    .collect());
            }
            Err(_) => {
                let _ = t.batch_execute("ROLLBACK").await;
                session::import_snapshot(t, dst_snap).await?;
            }
        }
    }
    let mut checks = Vec::with_capacity(group.len());
    for unit in group {
        checks.push(check_one(s, t, dst_snap, unit, level).await?);
    }
    Ok(checks)
}

async fn check_one(
    s: &Client,
    t: &Client,
    dst_snap: &str,
    unit: &Unit,
    level: VerifyLevel,
) -> Result<TableCheck> {
    let (ssql, tsql) = (
        table_digest_sql(unit, level, Side::Source),
        table_digest_sql(unit, level, Side::Target),
    );
    let (sr, tr) = tokio::join!(
        crate::pg::query_one_once(s, &ssql),
        crate::pg::query_one_once(t, &tsql)
    );
    let sr = sr.map_err(|e| {
        MigrationError::db(format!("checksumming {} on the source", unit.target), e)
    })?;
    Ok(match tr {
        Ok(tr) => TableCheck {
            table: unit.target.clone(),
            source_rows: sr.get(0),
            target_rows: Some(tr.get(0)),
            source_checksum: sr.get(1),
            target_checksum: tr.get(1),
        },
        Err(e) => {
            let err = MigrationError::db(format!("checksumming {} on the target", unit.target), e);
            // A fault of the moment is not a difference: verify starts again.
            if err.is_transient() {
                return Err(err);
            }
            let msg = match err {
                MigrationError::Db { info, .. } => info.message,
                other => other.to_string(),
            };
            // The transaction is aborted: report and restart it on the snapshot.
            let _ = t.batch_execute("ROLLBACK").await;
            session::import_snapshot(t, dst_snap).await?;
            TableCheck {
                table: unit.target.clone(),
                source_rows: sr.get(0),
                target_rows: None,
                source_checksum: sr.get(1),
                target_checksum: Some(msg),
            }
        }
    })
}

/// Which server a digest query is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Source,
    Target,
}

/// One query answering a row count and digest per table, each row led by
/// the table's position in `group`.
fn group_digest_sql(group: &[Unit], level: VerifyLevel, side: Side) -> String {
    group
        .iter()
        .enumerate()
        .map(|(i, u)| {
            format!(
                "SELECT {i}::int4, d.* FROM ({}) d",
                table_digest_sql(u, level, side)
            )
        })
        .collect::<Vec<_>>()
        .join(" UNION ALL ")
}

/// Row count and, for `Checksum`, the order-independent content digest.
/// Every column counts, generated ones included (they must agree too),
/// by name, so a partition whose columns lie in another order than the
/// target relation's reads the same. Several source tables read as one.
fn table_digest_sql(u: &Unit, level: VerifyLevel, side: Side) -> String {
    let filter = u.table.row_filter.as_deref().unwrap_or_default();
    let cols = quote::ident_list(&u.table.all_columns);
    let from = match side {
        Side::Source if u.sources.len() == 1 => format!("ONLY {} {filter}", u.sources[0]),
        Side::Source => format!(
            "({}) u",
            u.sources
                .iter()
                .map(|s| format!("SELECT {cols} FROM ONLY {s} {filter}"))
                .collect::<Vec<_>>()
                .join(" UNION ALL ")
        ),
        Side::Target if u.target_tree => format!("{} {filter}", u.target),
        Side::Target => format!("ONLY {} {filter}", u.target),
    };
    match level {
        VerifyLevel::Checksum => format!(
            "SELECT pg_catalog.count(*)::int8, \
             COALESCE(pg_catalog.sum(('x' || pg_catalog.substr(pg_catalog.md5(ROW({cols})::text), 1, 16))::bit(64)::int8::numeric), 0)::text \
             FROM {from}"
        ),
        _ => format!("SELECT pg_catalog.count(*)::int8, NULL::text FROM {from}"),
    }
}

async fn relation_exists(c: &Client, qualified: &str) -> Result<bool> {
    crate::pg::relation_exists(c, qualified)
        .await
        .map_err(|e| MigrationError::db("looking up a table on the target", e))
}
