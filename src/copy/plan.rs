//! Cutting the tables into work items: big tables into ranges of heap pages
//! (read with TID range scans, PostgreSQL 14+), so that several workers
//! share one table and the tail of the copy is short.
//!
//! A chunk's rows land on arbitrary target pages and cannot be found again
//! by ctid; so a chunk is only ever undone as a whole, by its transaction
//! rolling back. The plan is stored in the resume token before the first
//! chunk starts and reused by a resumed run, so chunk names keep meaning the
//! same pages. The last chunk of a table is open-ended: rows on pages past
//! the planned size are never missed.

use std::collections::BTreeMap;

use crate::pg::catalog::TableInfo;

/// Tables are never split below this size: a chunk costs a transaction and
/// loses COPY FREEZE.
pub const MIN_SPLIT_BYTES: u64 = 64 * 1024 * 1024;
const MAX_SPLIT_BYTES: u64 = 1024 * 1024 * 1024;

pub use crate::pg::catalog::PageRange;

/// One unit of copy work: a whole table, or one page range of it.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkItem {
    /// Index into the table list.
    pub table: usize,
    /// 0-based chunk number and the table's chunk count.
    pub chunk: u32,
    pub chunks: u32,
    pub pages: Option<PageRange>,
    /// Expected heap bytes, for ordering (largest first).
    pub est_bytes: u64,
    /// Restoring: the archive file holding the item's rows. Boxed: a
    /// migration's items (25,000 at 25,000 tables, held twice while a
    /// copy runs) have none.
    pub file: Option<Box<crate::archive::DataFile>>,
}

impl WorkItem {
    /// The item's name: its marker on the target and in the token. A whole
    /// table is named by its quoted name alone (as markers always were).
    pub fn name(&self, t: &TableInfo) -> String {
        item_name(&t.qualified(), self.chunk, self.chunks)
    }

    pub fn is_whole(&self) -> bool {
        self.pages.is_none()
    }
}

pub fn item_name(qualified: &str, chunk: u32, chunks: u32) -> String {
    if chunks <= 1 {
        qualified.to_string()
    } else {
        format!("{qualified}#{}/{chunks}", chunk + 1)
    }
}

/// The split size when the user does not give one: one worker's fair share
/// of the whole copy, within [64 MB, 1 GB]. Only a table bigger than that
/// would leave the other workers idle at the end; smaller tables are better
/// copied whole, in parallel with each other: several sessions loading one
/// table contend for its relation extension lock (much more before
/// PostgreSQL 16), and only a whole table can be loaded with COPY FREEZE.
/// The 1 GB cap keeps a resumed run from redoing more than that per chunk.
pub fn default_split_bytes(total_bytes: u64, jobs: usize) -> u64 {
    (total_bytes / jobs.max(1) as u64).clamp(MIN_SPLIT_BYTES, MAX_SPLIT_BYTES)
}

/// How big tables are cut into page ranges, and why: logged by a run and
/// shown by `plan`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitDecision {
    /// 0: no table is split.
    pub bytes: u64,
    pub reason: String,
}

/// Decide the split from what the target can absorb. Before PostgreSQL
/// 16 a relation grows one page at a time under its extension lock, so
/// sessions loading one table queue behind each other, and only a whole
/// table can be loaded with COPY FREEZE: measured, two concurrent ranges
/// of pgbench_accounts into 15 lost 11% to one FREEZE stream at test
/// settings (BENCHMARKS.md). From 16 the relation is extended many pages
/// at a time and concurrent loads scale. A dump (`target_version` `None`)
/// splits for parallel reading and compression.
pub fn decide_split(
    given: Option<u64>,
    total_bytes: u64,
    jobs: usize,
    source_version: i32,
    target_version: Option<i32>,
) -> SplitDecision {
    let default = default_split_bytes(total_bytes, jobs);
    let (bytes, reason) = match (given, target_version) {
        (Some(0), _) => (0, "--split-size 0: every table is copied whole".to_string()),
        (Some(b), _) => (b, format!("--split-size {}", crate::progress::human_bytes(b))),
        _ if source_version < 140000 => (
            0,
            format!(
                "the source is PostgreSQL {}: without TID range scans (14+) each page range would read the whole table; every table is copied whole",
                source_version / 10000
            ),
        ),
        (None, Some(t)) if t < 160000 => (
            0,
            format!(
                "the target is PostgreSQL {}: concurrent loads into one table queue on its extension lock (bulk extension came in 16) and lose COPY FREEZE; every table is one FREEZE stream",
                t / 10000
            ),
        ),
        (None, Some(t)) => (
            default,
            format!(
                "the target is PostgreSQL {}: it extends a table in bulk, so concurrent loads into one table scale; a table over {} is cut into page ranges",
                t / 10000,
                crate::progress::human_bytes(default)
            ),
        ),
        (None, None) => (
            default,
            format!(
                "a dump: page ranges of a table over {} are read and compressed in parallel",
                crate::progress::human_bytes(default)
            ),
        ),
    };
    SplitDecision { bytes, reason }
}

/// Page ranges for a table of `bytes` on disk: `None` keeps it whole.
pub fn split_table(bytes: u64, block_size: u64, split_bytes: u64) -> Option<Vec<PageRange>> {
    if split_bytes == 0 || bytes <= split_bytes || block_size == 0 {
        return None;
    }
    let pages = bytes.div_ceil(block_size);
    let n = bytes.div_ceil(split_bytes);
    let per = pages.div_ceil(n).max(1);
    let mut out = Vec::new();
    let mut start = 0;
    while start + per < pages {
        out.push(PageRange {
            start,
            end: Some(start + per),
        });
        start += per;
    }
    out.push(PageRange { start, end: None });
    (out.len() > 1).then_some(out)
}

/// Plan the work for `tables`. `stored` is the plan of an interrupted run
/// (by table name): it wins, so a resumed run means the same chunks.
/// Returns the items, largest first, and the plan to store.
pub fn plan(
    tables: &[TableInfo],
    split_bytes: u64,
    block_size: u64,
    tid_range_scans: bool,
    stored: &BTreeMap<String, Vec<PageRange>>,
) -> (Vec<WorkItem>, BTreeMap<String, Vec<PageRange>>) {
    let mut items = Vec::new();
    let mut out_plan = BTreeMap::new();
    for (i, t) in tables.iter().enumerate() {
        let q = t.qualified();
        let bytes = t.bytes.max(0) as u64;
        let ranges = match stored.get(&q) {
            Some(r) => Some(r.clone()),
            // A filtered table (an extension's configuration rows) is read
            // through one SELECT: page ranges would each read all of it.
            None if tid_range_scans && t.row_filter.is_none() => {
                split_table(bytes, block_size, split_bytes)
            }
            None => None,
        };
        match ranges {
            Some(ranges) if ranges.len() > 1 => {
                let n = ranges.len() as u32;
                for (c, r) in ranges.iter().enumerate() {
                    let pages = match r.end {
                        Some(e) => e - r.start,
                        None => (bytes / block_size.max(1)).saturating_sub(r.start),
                    };
                    items.push(WorkItem {
                        table: i,
                        chunk: c as u32,
                        chunks: n,
                        pages: Some(*r),
                        est_bytes: pages * block_size,
                        file: None,
                    });
                }
                out_plan.insert(q, ranges);
            }
            _ => items.push(WorkItem {
                table: i,
                chunk: 0,
                chunks: 1,
                pages: None,
                est_bytes: bytes,
                file: None,
            }),
        }
    }
    // Largest first; among equals, a table's chunks in order.
    items.sort_by(|a, b| {
        b.est_bytes
            .cmp(&a.est_bytes)
            .then(a.table.cmp(&b.table))
            .then(a.chunk.cmp(&b.chunk))
    });
    (items, out_plan)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_split_follows_the_target() {
        let gb = 1 << 30;
        let d = super::decide_split(None, 4 * gb, 2, 150000, Some(150000));
        assert_eq!(d.bytes, 0);
        assert!(
            d.reason.contains("PostgreSQL 15") && d.reason.contains("FREEZE"),
            "{}",
            d.reason
        );
        let d = super::decide_split(None, 4 * gb, 2, 150000, Some(170000));
        assert_eq!(d.bytes, super::default_split_bytes(4 * gb, 2));
        assert!(d.reason.contains("PostgreSQL 17"), "{}", d.reason);
        // What the user says wins, in both directions.
        assert_eq!(
            super::decide_split(Some(gb), 4 * gb, 2, 150000, Some(150000)).bytes,
            gb
        );
        assert_eq!(
            super::decide_split(Some(0), 4 * gb, 2, 170000, Some(170000)).bytes,
            0
        );
        // No TID range scans before 14; dumps split for parallel reading.
        assert_eq!(
            super::decide_split(None, 4 * gb, 2, 130000, Some(170000)).bytes,
            0
        );
        assert!(super::decide_split(None, 4 * gb, 2, 150000, None).bytes > 0);
    }

    use super::*;

    fn table(name: &str, bytes: i64) -> TableInfo {
        TableInfo {
            oid: 1,
            schema: "public".into(),
            name: name.into(),
            columns: ["a"].into_iter().collect(),
            all_columns: ["a"].into_iter().collect(),
            bytes,
            row_estimate: 0.0,
            binary_safe: true,
            partition_root: None,
            load_into: None,
            column_types: ["integer"].into_iter().collect(),
            row_filter: None,
        }
    }

    #[test]
    fn small_tables_stay_whole() {
        assert_eq!(split_table(10 << 20, 8192, 64 << 20), None);
        assert_eq!(split_table(100 << 20, 8192, 0), None);
    }

    #[test]
    fn ranges_cover_every_page_once_and_end_open() {
        let bytes = 1000 * 8192;
        let r = split_table(bytes, 8192, 300 * 8192).unwrap();
        assert_eq!(r.len(), 4);
        assert_eq!(r[0].start, 0);
        for w in r.windows(2) {
            assert_eq!(w[0].end, Some(w[1].start));
        }
        assert_eq!(r.last().unwrap().end, None);
    }

    #[test]
    fn predicate_is_a_tid_range() {
        let r = PageRange {
            start: 10,
            end: Some(20),
        };
        assert_eq!(
            r.predicate(),
            "ctid >= '(10,0)'::pg_catalog.tid AND ctid < '(20,0)'::pg_catalog.tid"
        );
        assert_eq!(
            PageRange {
                start: 5,
                end: None
            }
            .predicate(),
            "ctid >= '(5,0)'::pg_catalog.tid"
        );
    }

    #[test]
    fn plan_orders_largest_first_and_reuses_a_stored_plan() {
        let tables = vec![table("small", 1 << 20), table("big", 512 << 20)];
        let (items, stored) = plan(&tables, 128 << 20, 8192, true, &BTreeMap::new());
        assert_eq!(items.len(), 5);
        assert!(items[..4].iter().all(|i| i.table == 1));
        assert_eq!(items[4].table, 0);
        assert_eq!(items[0].name(&tables[1]), "public.big#1/4");
        assert_eq!(items[4].name(&tables[0]), "public.small");
        // A resumed run with other sizes keeps the stored chunks.
        let mut grown = tables.clone();
        grown[1].bytes = 2 << 30;
        let (again, _) = plan(&grown, 128 << 20, 8192, true, &stored);
        let names: Vec<String> = again
            .iter()
            .filter(|i| i.table == 1)
            .map(|i| i.name(&grown[1]))
            .collect();
        assert_eq!(names.len(), 4);
        // Without TID range scans nothing is split.
        let (whole, p) = plan(&tables, 128 << 20, 8192, false, &BTreeMap::new());
        assert_eq!(whole.len(), 2);
        assert!(p.is_empty());
    }

    #[test]
    fn default_split_size_is_bounded() {
        assert_eq!(default_split_bytes(0, 4), MIN_SPLIT_BYTES);
        assert_eq!(default_split_bytes(1 << 40, 2), MAX_SPLIT_BYTES);
        assert_eq!(default_split_bytes(1 << 30, 4), 256 << 20);
    }
}
