//! Optimizer statistics carried from the source instead of sampled again.
//!
//! PostgreSQL 18 can import what ANALYZE would compute
//! (`pg_restore_relation_stats`, `pg_restore_attribute_stats`); the source
//! (any major from 13) already knows it, in `pg_class` and `pg_stats`. So
//! on an 18+ target the migration copies every copied table's and its
//! indexes' statistics once their last index is built (a build rewrites
//! `relpages` and `reltuples`), the way pg_upgrade keeps them, and runs
//! ANALYZE only where there is nothing to carry: a table the source never
//! analyzed, and one with extended statistics, which 18 cannot import (so
//! ANALYZE builds them, and says so).
//!
//! A stage piece: reads the source's catalogs, writes statistics on the
//! target; never changes the source.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use tokio_postgres::Client;
use tracing::{debug, info};

use crate::error::{MigrationError, Result};
use crate::pg::catalog::TableInfo;
use crate::pg::quote::literal;

/// Where a table's statistics come from.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Outcome {
    /// Tables whose statistics were carried.
    pub carried: Vec<String>,
    /// Tables analyzed instead, and why.
    pub analyzed: Vec<(String, &'static str)>,
    pub seconds: f64,
}

/// Whether statistics can be imported into a target of this version
/// (`server_version_num`).
pub(crate) fn target_can_import(target_version: i32) -> bool {
    target_version >= 180000
}

/// One relation's `pg_class` statistics, as text (exact float output).
struct RelStats {
    /// An index's row (its table's OID in `table`).
    is_index: bool,
    schema: String,
    name: String,
    table: u32,
    relpages: String,
    reltuples: String,
    relallvisible: String,
    relallfrozen: Option<String>,
    has_extended: bool,
}

/// Carry the statistics of `tables` from `src` (whose
/// `server_version_num` is `version`; statistics are not transactional
/// data: any session will do) to `dst`, then ANALYZE, when
/// they hold [`super::ANALYZE_MIN_ROWS`] rows or more (`copied` by table,
/// as copied in this run; the estimate otherwise), those with nothing to
/// carry: a table the source never analyzed, a filtered or re-shaped one
/// (its source statistics describe other rows); and, whatever their size,
/// those with extended statistics.
pub(crate) async fn carry(
    src: &Client,
    dst: &Client,
    tables: &[TableInfo],
    copied: &BTreeMap<String, u64>,
    version: i32,
) -> Result<Outcome> {
    let t0 = Instant::now();
    let mut out = Outcome::default();
    let rows_of = |t: &TableInfo| {
        copied
            .get(&t.qualified())
            .copied()
            .unwrap_or(t.row_estimate.max(0.0) as u64)
    };
    let big = |t: &TableInfo| rows_of(t) >= super::ANALYZE_MIN_ROWS;
    for t in tables.iter().filter(|t| !eligible(t) && big(t)) {
        out.analyzed.push((
            t.target_name(),
            "it was filtered or re-shaped: the source's statistics describe other rows",
        ));
    }
    let tables: Vec<&TableInfo> = tables.iter().filter(|t| eligible(t)).collect();
    if tables.is_empty() {
        return analyze(dst, out, t0).await;
    }
    let oids: Vec<u32> = tables.iter().map(|t| t.oid).collect();
    let rels = relation_stats(src, &oids, version).await?;
    let attrs = attribute_stats(src, &oids, version).await?;
    let with_columns: BTreeSet<u32> = attrs.iter().filter(|a| !a.1).map(|a| a.0).collect();

    let mut calls: Vec<String> = Vec::new();
    for r in &rels {
        // A table the source never analyzed or vacuumed (-1 since 14) has
        // nothing to carry.
        if r.reltuples.starts_with('-') {
            continue;
        }
        let mut args = vec![
            kv("schemaname", &literal(&r.schema)),
            kv("relname", &literal(&r.name)),
            kv("version", &format!("{version}::integer")),
            kv("relpages", &format!("{}::integer", literal(&r.relpages))),
            kv("reltuples", &format!("{}::real", literal(&r.reltuples))),
            kv(
                "relallvisible",
                &format!("{}::integer", literal(&r.relallvisible)),
            ),
        ];
        if let Some(f) = &r.relallfrozen {
            args.push(kv("relallfrozen", &format!("{}::integer", literal(f))));
        }
        calls.push(format!(
            "SELECT pg_catalog.pg_restore_relation_stats({})",
            args.join(", ")
        ));
    }
    calls.extend(attrs.into_iter().map(|a| a.2));
    for batch in calls.chunks(100) {
        dst.batch_execute(&batch.join(";\n")).await.map_err(|e| {
            MigrationError::db("importing the source's statistics on the target", e)
        })?;
    }
    let by_oid: BTreeMap<u32, &TableInfo> = tables.iter().map(|t| (t.oid, *t)).collect();
    for r in rels.iter().filter(|r| !r.is_index) {
        let Some(t) = by_oid.get(&r.table) else {
            continue;
        };
        let name = t.qualified();
        if r.has_extended {
            out.analyzed.push((
                name,
                "it has extended statistics, which PostgreSQL cannot import",
            ));
        } else if !with_columns.contains(&r.table) {
            if big(t) {
                out.analyzed
                    .push((name, "the source had no statistics for it"));
            }
        } else {
            out.carried.push(name);
        }
    }
    analyze(dst, out, t0).await
}

/// ANALYZE what `out` lists, and say what was done.
async fn analyze(dst: &Client, mut out: Outcome, t0: Instant) -> Result<Outcome> {
    for (table, why) in &out.analyzed {
        let t1 = Instant::now();
        dst.batch_execute(&format!("ANALYZE {table}"))
            .await
            .map_err(|e| MigrationError::db(format!("analyzing {table} on the target"), e))?;
        debug!(%table, why, seconds = format!("{:.2}", t1.elapsed().as_secs_f64()), "analyzed");
    }
    out.seconds = t0.elapsed().as_secs_f64();
    let extended = out
        .analyzed
        .iter()
        .filter(|(_, w)| w.contains("extended"))
        .count();
    info!(
        carried = out.carried.len(),
        analyzed = out.analyzed.len(),
        seconds = format!("{:.2}", out.seconds),
        "statistics carried from the source{}",
        if extended > 0 {
            format!(" ({extended} table(s) with extended statistics analyzed: PostgreSQL cannot import those)")
        } else {
            String::new()
        }
    );
    Ok(out)
}

/// What became of the statistics once an online migration cut over.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct AfterStream {
    /// Tables the source analyzed again since the copy: its newer
    /// statistics carried (18+ targets).
    pub carried: Vec<String>,
    /// Tables changed past autovacuum's threshold since the statistics the
    /// target holds were taken, analyzed on the target; with why.
    pub analyzed: Vec<(String, String)>,
    /// Tables changed too little for it to matter: their statistics stand.
    pub unchanged: usize,
    pub seconds: f64,
}

/// Online, after the cutover: the statistics the copy gave the target
/// describe the snapshot, and the stream changed some tables since. A
/// table changed less than autovacuum's own threshold on the source
/// (`autovacuum_analyze_threshold` + `autovacuum_analyze_scale_factor` x
/// rows, counted by `n_mod_since_analyze` since the statistics were taken:
/// the source's last ANALYZE, before the copy) keeps them, as autovacuum
/// would; one the source analyzed again since `copied_at` has its newer
/// statistics carried (with `import`, an 18+ target); the others are
/// analyzed on the target. Runs after the handover, never under the fence:
/// ANALYZE takes time the writes must not wait for.
pub(crate) async fn after_stream(
    src: &Client,
    dst: &Client,
    tables: &[TableInfo],
    copied_at: chrono::DateTime<chrono::Utc>,
    version: i32,
    import: bool,
) -> Result<AfterStream> {
    let t0 = Instant::now();
    let mut out = AfterStream::default();
    let oids: Vec<u32> = tables.iter().map(|t| t.oid).collect();
    if oids.is_empty() {
        return Ok(out);
    }
    let rows = src
        .query_typed(
            "SELECT s.relid, s.n_mod_since_analyze::int8, GREATEST(c.reltuples, 0)::float8,
                    COALESCE(GREATEST(s.last_analyze, s.last_autoanalyze) > $1, false),
                    pg_catalog.current_setting('autovacuum_analyze_threshold')::float8,
                    pg_catalog.current_setting('autovacuum_analyze_scale_factor')::float8
               FROM pg_catalog.pg_stat_user_tables s JOIN pg_catalog.pg_class c ON c.oid = s.relid
              WHERE s.relid = ANY($2)",
            &[
                (&copied_at, tokio_postgres::types::Type::TIMESTAMPTZ),
                (&oids, tokio_postgres::types::Type::OID_ARRAY),
            ],
        )
        .await
        .map_err(|e| MigrationError::db("reading the source's table activity", e))?;
    let by_oid: BTreeMap<u32, &TableInfo> = tables.iter().map(|t| (t.oid, t)).collect();
    let mut again: Vec<TableInfo> = Vec::new();
    for r in &rows {
        let Some(t) = by_oid.get(&r.get::<_, u32>(0)) else {
            continue;
        };
        let (changed, tuples, reanalyzed): (i64, f64, bool) = (r.get(1), r.get(2), r.get(3));
        let threshold = r.get::<_, f64>(4) + r.get::<_, f64>(5) * tuples;
        if reanalyzed && import && eligible(t) {
            again.push((*t).clone());
        } else if changed as f64 > threshold {
            out.analyzed.push((
                t.target_name(),
                format!(
                    "{changed} row(s) changed since its statistics were taken, past autovacuum's threshold of {threshold:.0}"
                ),
            ));
        } else {
            out.unchanged += 1;
        }
    }
    for (table, why) in &out.analyzed {
        dst.batch_execute(&format!("ANALYZE {table}"))
            .await
            .map_err(|e| MigrationError::db(format!("analyzing {table} on the target"), e))?;
        debug!(%table, why, "analyzed after the cutover");
    }
    if !again.is_empty() {
        // (carry() analyzes what it cannot carry itself.)
        let o = carry(src, dst, &again, &BTreeMap::new(), version).await?;
        out.carried = o.carried;
        out.analyzed
            .extend(o.analyzed.into_iter().map(|(t, w)| (t, w.to_string())));
    }
    out.seconds = t0.elapsed().as_secs_f64();
    info!(
        carried = out.carried.len(),
        analyzed = out.analyzed.len(),
        unchanged = out.unchanged,
        seconds = format!("{:.2}", out.seconds),
        "statistics after the cutover: tables changed past autovacuum's threshold since the copy analyzed, the others kept"
    );
    Ok(out)
}

fn kv(key: &str, value: &str) -> String {
    format!("'{key}', {value}")
}

/// The tables whose statistics describe what was copied: whole tables
/// loaded into themselves (a filtered or re-shaped one is analyzed).
pub(crate) fn eligible(t: &TableInfo) -> bool {
    t.row_filter.is_none() && t.load_into.is_none()
}

/// `pg_class` statistics of the tables `oids` and of their indexes.
async fn relation_stats(src: &Client, oids: &[u32], version: i32) -> Result<Vec<RelStats>> {
    let frozen = if version >= 180000 {
        "c.relallfrozen::text"
    } else {
        "NULL::text"
    };
    let sql = format!(
        "SELECT COALESCE(i.indrelid, c.oid), i.indexrelid IS NOT NULL, n.nspname::text, c.relname::text, c.relpages::text,
                c.reltuples::text, c.relallvisible::text, {frozen},
                EXISTS (SELECT 1 FROM pg_catalog.pg_statistic_ext x WHERE x.stxrelid = c.oid)
           FROM pg_catalog.pg_class c
           JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
           LEFT JOIN pg_catalog.pg_index i ON i.indexrelid = c.oid
          WHERE c.oid = ANY($1) OR i.indrelid = ANY($1)"
    );
    let rows = src
        .query(&sql, &[&oids])
        .await
        .map_err(|e| MigrationError::db("reading the source's table statistics", e))?;
    Ok(rows
        .into_iter()
        .map(|r| RelStats {
            table: r.get(0),
            is_index: r.get(1),
            schema: r.get(2),
            name: r.get(3),
            relpages: r.get(4),
            reltuples: r.get(5),
            relallvisible: r.get(6),
            relallfrozen: r.get(7),
            has_extended: r.get(8),
        })
        .collect())
}

/// One `pg_restore_attribute_stats` call for every `pg_stats` row of the
/// tables `oids` and their expression indexes: (table OID, an index's,
/// the call). Index columns are named by number (their names are
/// generated), table columns by name.
async fn attribute_stats(
    src: &Client,
    oids: &[u32],
    version: i32,
) -> Result<Vec<(u32, bool, String)>> {
    let range = if version >= 170000 {
        "s.range_length_histogram::text, s.range_empty_frac::text, s.range_bounds_histogram::text"
    } else {
        "NULL::text, NULL::text, NULL::text"
    };
    let sql = format!(
        "SELECT COALESCE(i.indrelid, c.oid), s.schemaname::text, s.tablename::text, s.attname::text,
                a.attnum::int4, i.indexrelid IS NOT NULL, s.inherited,
                s.null_frac::text, s.avg_width::text, s.n_distinct::text,
                s.most_common_vals::text, s.most_common_freqs::text, s.histogram_bounds::text,
                s.correlation::text, s.most_common_elems::text, s.most_common_elem_freqs::text,
                s.elem_count_histogram::text, {range}
           FROM pg_catalog.pg_stats s
           JOIN pg_catalog.pg_namespace n ON n.nspname = s.schemaname
           JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = s.tablename
           JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attname = s.attname
           LEFT JOIN pg_catalog.pg_index i ON i.indexrelid = c.oid
          WHERE c.oid = ANY($1) OR i.indrelid = ANY($1)"
    );
    let rows = src
        .query(&sql, &[&oids])
        .await
        .map_err(|e| MigrationError::db("reading the source's column statistics", e))?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let table: u32 = r.get(0);
        let (schema, rel, att): (String, String, String) = (r.get(1), r.get(2), r.get(3));
        let (attnum, is_index, inherited): (i32, bool, bool) = (r.get(4), r.get(5), r.get(6));
        let mut args = vec![
            kv("schemaname", &literal(&schema)),
            kv("relname", &literal(&rel)),
        ];
        if is_index {
            args.push(kv("attnum", &format!("{attnum}::smallint")));
        } else {
            args.push(kv("attname", &literal(&att)));
        }
        args.push(kv("inherited", &format!("{inherited}::boolean")));
        args.push(kv("version", &format!("{version}::integer")));
        let typed = [
            ("null_frac", 7, "real"),
            ("avg_width", 8, "integer"),
            ("n_distinct", 9, "real"),
            ("most_common_vals", 10, "text"),
            ("most_common_freqs", 11, "real[]"),
            ("histogram_bounds", 12, "text"),
            ("correlation", 13, "real"),
            ("most_common_elems", 14, "text"),
            ("most_common_elem_freqs", 15, "real[]"),
            ("elem_count_histogram", 16, "real[]"),
            ("range_length_histogram", 17, "text"),
            ("range_empty_frac", 18, "real"),
            ("range_bounds_histogram", 19, "text"),
        ];
        for (key, col, ty) in typed {
            if let Some(v) = r.get::<_, Option<String>>(col) {
                args.push(kv(key, &format!("{}::{ty}", literal(&v))));
            }
        }
        out.push((
            table,
            is_index,
            format!(
                "SELECT pg_catalog.pg_restore_attribute_stats({})",
                args.join(", ")
            ),
        ));
    }
    Ok(out)
}
