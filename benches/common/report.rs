//! Medians and tables: printed, and written as a markdown section.

use std::fmt::Write as _;

use super::tools::{RunOk, Tool, ALL_TOOLS};
use super::util::median;
use super::ServerConfig;

pub struct Header {
    pub started: chrono::DateTime<chrono::Local>,
    pub machine: Vec<(String, String)>,
    pub pg_version: String,
    pub tgt_pg_version: String,
    pub src_major: u32,
    pub tgt_major: u32,
    pub pg_dump_version: String,
    pub pgcopydb_version: String,
    pub bin_path: String,
    pub bin_version: String,
    pub commit: String,
    pub jobs: usize,
    pub runs: usize,
    pub rss_probe: String,
    pub configs: Vec<ServerConfig>,
    pub max_locks: Option<u32>,
    /// `BENCH_RTT_MS`.
    pub rtt_ms: Option<u64>,
}

pub struct DatasetInfo {
    pub name: String,
    pub description: String,
    pub size_bytes: u64,
    pub tables: usize,
    pub build_secs: f64,
}

pub struct RunRecord {
    pub dataset: String,
    pub size_bytes: u64,
    pub config: ServerConfig,
    pub tool: Tool,
    pub round: usize,
    pub result: Result<RunOk, String>,
}

pub struct Report {
    pub header: Header,
    pub datasets: Vec<DatasetInfo>,
    pub runs: Vec<RunRecord>,
    pub unavailable: Vec<(Tool, String)>,
    pub skipped: Vec<(String, String)>,
    pub elapsed_secs: f64,
}

/// Medians of one (dataset, tool).
struct Summary {
    ok: usize,
    total: usize,
    median: Option<f64>,
    min: Option<f64>,
    max: Option<f64>,
    rss_mib: Option<f64>,
    parts: Vec<(&'static str, f64)>,
    archive_mib: Option<f64>,
}

fn fmt_opt(v: Option<f64>, prec: usize) -> String {
    v.map(|v| format!("{v:.prec$}"))
        .unwrap_or_else(|| "–".into())
}

impl Report {
    pub fn new(header: Header) -> Report {
        Report {
            header,
            datasets: Vec::new(),
            runs: Vec::new(),
            unavailable: Vec::new(),
            skipped: Vec::new(),
            elapsed_secs: 0.0,
        }
    }

    fn summary(&self, dataset: &str, sc: ServerConfig, tool: Tool) -> Option<Summary> {
        let runs: Vec<&RunRecord> = self
            .runs
            .iter()
            .filter(|r| r.dataset == dataset && r.config == sc && r.tool == tool)
            .collect();
        if runs.is_empty() {
            return None;
        }
        let ok: Vec<&RunOk> = runs.iter().filter_map(|r| r.result.as_ref().ok()).collect();
        let secs: Vec<f64> = ok.iter().map(|r| r.secs).collect();
        let mut parts = Vec::new();
        if let Some(first) = ok.first() {
            for (k, (name, _)) in first.parts.iter().enumerate() {
                let v: Vec<f64> = ok
                    .iter()
                    .filter_map(|r| r.parts.get(k).map(|p| p.1))
                    .collect();
                if let Some(m) = median(&v) {
                    parts.push((*name, m));
                }
            }
        }
        let archive: Vec<f64> = ok
            .iter()
            .filter_map(|r| r.archive_bytes.map(|b| b as f64 / 1048576.0))
            .collect();
        Some(Summary {
            ok: ok.len(),
            total: runs.len(),
            median: median(&secs),
            min: secs.iter().copied().reduce(f64::min),
            max: secs.iter().copied().reduce(f64::max),
            rss_mib: ok
                .iter()
                .filter_map(|r| r.rss_kib)
                .max()
                .map(|k| k as f64 / 1024.0),
            parts,
            archive_mib: median(&archive),
        })
    }

    fn unavailable_reason(&self, tool: Tool) -> Option<&str> {
        self.unavailable
            .iter()
            .find(|(t, _)| *t == tool)
            .map(|(_, w)| w.as_str())
    }

    /// The main table: every migration tool on every dataset, under `sc`.
    pub fn migrations_table(&self, sc: ServerConfig) -> String {
        let mut s = String::from(
            "| dataset | size MB | tool | ok runs | median s | min s | max s | peer ÷ ours | peak RSS MiB | MB/s | phases (median s) |\n\
             |---|--:|---|--:|--:|--:|--:|--:|--:|--:|---|\n",
        );
        for d in &self.datasets {
            let ours = self
                .summary(&d.name, sc, Tool::Stream)
                .and_then(|s| s.median);
            let mb = d.size_bytes as f64 / 1e6;
            for tool in ALL_TOOLS.into_iter().filter(|t| !t.is_archive()) {
                if let Some(why) = self.unavailable_reason(tool) {
                    let _ = writeln!(
                        s,
                        "| {} | {mb:.0} | {} | – | n/a | | | | | | {why} |",
                        d.name,
                        tool.label()
                    );
                    continue;
                }
                let Some(sm) = self.summary(&d.name, sc, tool) else {
                    continue;
                };
                let ratio = match (sm.median, ours) {
                    (Some(m), Some(o)) if o > 0.0 => format!("{:.2}", m / o),
                    _ => "–".into(),
                };
                let median = if sm.ok == 0 {
                    "failed".to_string()
                } else {
                    fmt_opt(sm.median, 2)
                };
                let phases = sm
                    .parts
                    .iter()
                    .filter(|_| sm.parts.len() > 1)
                    .map(|(n, v)| format!("{n} {v:.2}"))
                    .collect::<Vec<_>>()
                    .join(" + ");
                let _ = writeln!(
                    s,
                    "| {} | {mb:.0} | {} | {}/{} | {median} | {} | {} | {ratio} | {} | {} | {phases} |",
                    d.name,
                    tool.label(),
                    sm.ok,
                    sm.total,
                    fmt_opt(sm.min, 2),
                    fmt_opt(sm.max, 2),
                    fmt_opt(sm.rss_mib, 0),
                    fmt_opt(sm.median.map(|m| mb / m), 1),
                );
            }
        }
        s
    }

    /// Dump alone and restore alone, with the archive's size, under `sc`.
    pub fn archives_table(&self, sc: ServerConfig) -> String {
        let mut s = String::from(
            "| dataset | size MB | archive tool | ok runs | dump s | restore s | archive MiB | peak RSS MiB |\n\
             |---|--:|---|--:|--:|--:|--:|--:|\n",
        );
        for d in &self.datasets {
            let mb = d.size_bytes as f64 / 1e6;
            for (tool, label) in [
                (Tool::Archive, "pg_dbmigrator dump / restore"),
                (Tool::PgDumpZstd, "pg_dump -Fd --compress=zstd / pg_restore"),
                (
                    Tool::PgDumpRestore,
                    "pg_dump -Fd (default gzip) / pg_restore (the pg_dump+pg_restore runs above)",
                ),
            ] {
                if let Some(why) = self.unavailable_reason(tool) {
                    let _ = writeln!(
                        s,
                        "| {} | {mb:.0} | {label} | – | n/a | | | {why} |",
                        d.name
                    );
                    continue;
                }
                let Some(sm) = self.summary(&d.name, sc, tool) else {
                    continue;
                };
                let part = |n: &str| sm.parts.iter().find(|(p, _)| *p == n).map(|(_, v)| *v);
                let (dump, restore) = if sm.ok == 0 {
                    ("failed".to_string(), "failed".to_string())
                } else {
                    (fmt_opt(part("dump"), 2), fmt_opt(part("restore"), 2))
                };
                let _ = writeln!(
                    s,
                    "| {} | {mb:.0} | {label} | {}/{} | {dump} | {restore} | {} | {} |",
                    d.name,
                    sm.ok,
                    sm.total,
                    fmt_opt(sm.archive_mib, 1),
                    fmt_opt(sm.rss_mib, 0),
                );
            }
        }
        s
    }

    pub fn text_table(&self) -> String {
        self.header
            .configs
            .iter()
            .map(|&sc| {
                format!(
                    "Migrations, {} settings (median of {} rounds, --jobs {}):\n\n{}\nArchives, {} settings:\n\n{}",
                    sc.name(),
                    self.header.runs,
                    self.header.jobs,
                    self.migrations_table(sc),
                    sc.name(),
                    self.archives_table(sc)
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    pub fn markdown(&self) -> String {
        let h = &self.header;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "## Results of {} ({} rounds, --jobs {})\n",
            h.started.format("%Y-%m-%d %H:%M %Z"),
            h.runs,
            h.jobs
        );
        let _ = writeln!(s, "Machine and versions:\n");
        for (k, v) in &h.machine {
            let _ = writeln!(s, "- {k}: {v}");
        }
        if h.src_major == h.tgt_major {
            let _ = writeln!(s, "- PostgreSQL (source and target): {}", h.pg_version);
            let _ = writeln!(s, "- pg_dump / pg_restore / psql: {}", h.pg_dump_version);
        } else {
            let _ = writeln!(s, "- PostgreSQL source ({}): {}", h.src_major, h.pg_version);
            let _ = writeln!(
                s,
                "- PostgreSQL target ({}): {}",
                h.tgt_major, h.tgt_pg_version
            );
            let _ = writeln!(
                s,
                "- pg_dump / pg_restore / psql: {} (the source's, writing into the {} target)",
                h.pg_dump_version, h.tgt_major
            );
        }
        let _ = writeln!(s, "- pgcopydb: {}", h.pgcopydb_version);
        let _ = writeln!(
            s,
            "- pg_dbmigrator: {} (checkout at commit {}; binary {})",
            h.bin_version, h.commit, h.bin_path
        );
        for sc in &h.configs {
            let _ = writeln!(
                s,
                "- server settings `{}` (both servers): {}; source also wal_level=logical",
                sc.name(),
                sc.describe()
            );
        }
        if h.configs.len() > 1 {
            let _ = writeln!(
                s,
                "- every dataset is built under the `{}` settings, then measured under each \
                 configuration in turn (ALTER SYSTEM and a restart of both servers before each)",
                h.configs[0].name()
            );
        }
        if let Some(n) = h.max_locks {
            let _ = writeln!(
                s,
                "- max_locks_per_transaction={n} on both servers (PostgreSQL's default is 64): \
                 pg_dump -j holds a lock on every table twice at once (leader and workers)"
            );
        }
        if let Some(ms) = h.rtt_ms {
            let _ = writeln!(
                s,
                "- every tool reaches both servers through a proxy adding {ms} ms of round trip \
                 (half each way; the testkit's `FaultProxy`), the tool near neither end"
            );
        }
        let _ = writeln!(s, "- peak RSS: {}", h.rss_probe);
        let _ = writeln!(
            s,
            "- whole benchmark (dataset builds included): {:.0} min\n",
            self.elapsed_secs / 60.0
        );
        let _ = writeln!(s, "Datasets (size = `pg_database_size` of the source):\n");
        let _ = writeln!(
            s,
            "| dataset | size MB | tables | build s | what |\n|---|--:|--:|--:|---|"
        );
        for d in &self.datasets {
            let _ = writeln!(
                s,
                "| {} | {:.0} | {} | {:.0} | {} |",
                d.name,
                d.size_bytes as f64 / 1e6,
                d.tables,
                d.build_secs,
                d.description
            );
        }
        for (d, why) in &self.skipped {
            let _ = writeln!(s, "| {d} | – | – | – | skipped: {why} |");
        }
        for &sc in &h.configs {
            if h.configs.len() > 1 {
                let _ = writeln!(s, "\n### `{}` settings: {}", sc.name(), sc.describe());
            }
            let _ = writeln!(
                s,
                "\nMigrations, source database → freshly created empty target database \
                 (median of the successful runs; \"peer ÷ ours\" = that tool's median over \
                 `pg_dbmigrator migrate`'s; MB/s = source size / median):\n"
            );
            s += &self.migrations_table(sc);
            let _ = writeln!(
                s,
                "\nArchives (dump alone, then restore alone into an empty database):\n"
            );
            s += &self.archives_table(sc);
        }
        let failures: Vec<&RunRecord> = self.runs.iter().filter(|r| r.result.is_err()).collect();
        if !failures.is_empty() {
            let _ = writeln!(s, "\nFailed runs (not timed):\n");
            for r in failures {
                let e = r.result.as_ref().err().map(|e| e.as_str()).unwrap_or("");
                let e: String = e.chars().take(400).collect();
                let _ = writeln!(
                    s,
                    "- {} {} {} round {}: {}",
                    r.dataset,
                    r.config.name(),
                    r.tool.name(),
                    r.round,
                    e.replace('\n', " ")
                );
            }
        }
        s
    }

    pub fn csv(&self) -> String {
        let mut s = String::from(
            "dataset,config,size_bytes,tool,round,ok,secs,phases,max_rss_kib,archive_bytes,error\n",
        );
        for r in &self.runs {
            let (ok, secs, parts, rss, arch, err) = match &r.result {
                Ok(o) => (
                    "1",
                    format!("{:.3}", o.secs),
                    o.parts
                        .iter()
                        .map(|(n, v)| format!("{n}={v:.3}"))
                        .collect::<Vec<_>>()
                        .join(" "),
                    o.rss_kib.map(|v| v.to_string()).unwrap_or_default(),
                    o.archive_bytes.map(|v| v.to_string()).unwrap_or_default(),
                    String::new(),
                ),
                Err(e) => (
                    "0",
                    String::new(),
                    String::new(),
                    String::new(),
                    String::new(),
                    e.chars().take(300).collect::<String>(),
                ),
            };
            let err = err.replace(['"', '\n', ','], " ");
            let _ = writeln!(
                s,
                "{},{},{},{},{},{ok},{secs},{parts},{rss},{arch},\"{err}\"",
                r.dataset,
                r.config.name(),
                r.size_bytes,
                r.tool.name(),
                r.round
            );
        }
        s
    }
}
