//! Medians and tables: printed, and written as a markdown section.

use std::fmt::Write as _;

use super::tools::{RunOk, Tool, ALL_TOOLS};
use super::util::median;
use super::{Link, ServerConfig};

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
    /// `BENCH_RTT_MS` × `BENCH_NEAR`.
    pub links: Vec<Link>,
    /// `BENCH_TIMEOUT_S`.
    pub timeout: Option<std::time::Duration>,
    /// `BENCH_READY`.
    pub ready: bool,
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
    pub link: Link,
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
    /// Runs killed at the time limit, and the longest such limit.
    timed_out: usize,
    limit: f64,
    cpu_tool: Option<f64>,
    cpu_source: Option<f64>,
    cpu_target: Option<f64>,
    /// Median of `vacuumdb --analyze-only` after the runs.
    analyze: Option<f64>,
    /// Median of what it takes until the target can serve: the run, plus
    /// the vacuumdb for a tool that leaves no statistics.
    ready: Option<f64>,
    /// Lowest and highest 1-minute load average before the runs.
    load: Option<(f64, f64)>,
}

impl Summary {
    /// The median, or "> N" when a run was killed at the time limit.
    fn time(&self) -> String {
        if self.timed_out > 0 {
            format!("> {:.0}", self.limit)
        } else if self.ok == 0 {
            "failed".into()
        } else {
            fmt_opt(self.median, 2)
        }
    }
    /// The time to set against another's: the limit when one timed out.
    fn comparable(&self) -> Option<f64> {
        if self.timed_out > 0 {
            Some(self.limit)
        } else {
            self.median
        }
    }
    /// "a ÷ b", with ">" when this one was cut off at the time limit.
    fn ratio_to(&self, ours: Option<f64>) -> String {
        match (self.comparable(), ours) {
            (Some(m), Some(o)) if o > 0.0 => {
                let gt = if self.timed_out > 0 { "> " } else { "" };
                format!("{gt}{:.2}", m / o)
            }
            _ => "–".into(),
        }
    }
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

    fn summary(&self, dataset: &str, sc: ServerConfig, link: Link, tool: Tool) -> Option<Summary> {
        let runs: Vec<&RunRecord> = self
            .runs
            .iter()
            .filter(|r| r.dataset == dataset && r.config == sc && r.link == link && r.tool == tool)
            .collect();
        if runs.is_empty() {
            return None;
        }
        let all_ok: Vec<&RunOk> = runs.iter().filter_map(|r| r.result.as_ref().ok()).collect();
        let killed: Vec<&RunOk> = all_ok.iter().copied().filter(|r| r.timed_out).collect();
        let ok: Vec<&RunOk> = all_ok.iter().copied().filter(|r| !r.timed_out).collect();
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
        let med = |f: &dyn Fn(&RunOk) -> Option<f64>| {
            median(&ok.iter().filter_map(|r| f(r)).collect::<Vec<_>>())
        };
        let loads: Vec<f64> = all_ok.iter().filter_map(|r| r.load_before).collect();
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
            timed_out: killed.len(),
            limit: killed.iter().map(|r| r.secs).fold(0.0, f64::max),
            cpu_tool: med(&|r| r.cpu.tool),
            cpu_source: med(&|r| r.cpu.source),
            cpu_target: med(&|r| r.cpu.target),
            analyze: med(&|r| r.ready.map(|a| a.secs)),
            ready: if tool.leaves_statistics() {
                median(&secs)
            } else {
                med(&|r| r.ready.map(|a| r.secs + a.secs))
            },
            load: loads
                .iter()
                .copied()
                .reduce(f64::min)
                .zip(loads.iter().copied().reduce(f64::max)),
        })
    }

    fn unavailable_reason(&self, tool: Tool) -> Option<&str> {
        self.unavailable
            .iter()
            .find(|(t, _)| *t == tool)
            .map(|(_, w)| w.as_str())
    }

    /// The main table: every migration tool on every dataset, under `sc`
    /// over `link`.
    pub fn migrations_table(&self, sc: ServerConfig, link: Link) -> String {
        let mut s = String::from(
            "| dataset | size MB | tool | ok runs | median s | min s | max s | peer ÷ ours | peak RSS MiB | MB/s | phases (median s) |\n\
             |---|--:|---|--:|--:|--:|--:|--:|--:|--:|---|\n",
        );
        for d in &self.datasets {
            let ours = self
                .summary(&d.name, sc, link, Tool::Stream)
                .and_then(|s| s.median);
            let mb = d.size_bytes as f64 / 1e6;
            for tool in ALL_TOOLS.into_iter().filter(|t| !t.is_archive()) {
                if let Some(why) = self.unavailable_reason(tool) {
                    if !link.baseline {
                        let _ = writeln!(
                            s,
                            "| {} | {mb:.0} | {} | – | n/a | | | | | | {why} |",
                            d.name,
                            tool.label()
                        );
                    }
                    continue;
                }
                let Some(sm) = self.summary(&d.name, sc, link, tool) else {
                    continue;
                };
                let phases = sm
                    .parts
                    .iter()
                    .filter(|_| sm.parts.len() > 1)
                    .map(|(n, v)| format!("{n} {v:.2}"))
                    .collect::<Vec<_>>()
                    .join(" + ");
                let killed = if sm.timed_out > 0 {
                    format!(" ({} killed at the time limit)", sm.timed_out)
                } else {
                    String::new()
                };
                let _ = writeln!(
                    s,
                    "| {} | {mb:.0} | {} | {}/{}{killed} | {} | {} | {} | {} | {} | {} | {phases} |",
                    d.name,
                    tool.label(),
                    sm.ok,
                    sm.total,
                    sm.time(),
                    fmt_opt(sm.min, 2),
                    fmt_opt(sm.max, 2),
                    sm.ratio_to(ours),
                    fmt_opt(sm.rss_mib, 0),
                    fmt_opt(sm.median.map(|m| mb / m), 1),
                );
            }
        }
        s
    }

    /// CPU seconds of each run and the time until the target can serve.
    pub fn cpu_ready_table(&self, sc: ServerConfig, link: Link) -> String {
        let mut s = String::from(
            "| dataset | tool | median s | tool CPU s | source CPU s | target CPU s | all CPU s | vacuumdb --analyze-only s | ready to serve s | ready ÷ ours | load before |\n\
             |---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n",
        );
        for d in &self.datasets {
            let ours = self
                .summary(&d.name, sc, link, Tool::Stream)
                .and_then(|s| s.ready);
            for tool in ALL_TOOLS.into_iter().filter(|t| t.is_migration()) {
                let Some(sm) = self.summary(&d.name, sc, link, tool) else {
                    continue;
                };
                let all = match (sm.cpu_tool, sm.cpu_source, sm.cpu_target) {
                    (Some(a), Some(b), Some(c)) => Some(a + b + c),
                    _ => None,
                };
                let analyze = match (sm.analyze, tool.leaves_statistics()) {
                    (Some(a), true) => format!("({a:.2}, not needed)"),
                    (a, _) => fmt_opt(a, 2),
                };
                let (ready, ratio) = if sm.timed_out > 0 {
                    (format!("> {:.0}", sm.limit), sm.ratio_to(ours))
                } else {
                    let r = match (sm.ready, ours) {
                        (Some(m), Some(o)) if o > 0.0 => format!("{:.2}", m / o),
                        _ => "–".into(),
                    };
                    (fmt_opt(sm.ready, 2), r)
                };
                let load = sm
                    .load
                    .map(|(a, b)| {
                        if (a - b).abs() < 0.05 {
                            format!("{a:.1}")
                        } else {
                            format!("{a:.1}–{b:.1}")
                        }
                    })
                    .unwrap_or_else(|| "–".into());
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} | {} | {} | {} | {analyze} | {ready} | {ratio} | {load} |",
                    d.name,
                    tool.label(),
                    sm.time(),
                    fmt_opt(sm.cpu_tool, 2),
                    fmt_opt(sm.cpu_source, 2),
                    fmt_opt(sm.cpu_target, 2),
                    fmt_opt(all, 2),
                );
            }
        }
        s
    }

    /// Every link side by side, under `sc` (when there is more than one).
    pub fn sweep_table(&self, sc: ServerConfig) -> String {
        let links = &self.header.links;
        let mut s = format!(
            "| dataset | tool | {} |\n|---|---|{}\n",
            links
                .iter()
                .map(|l| if l.baseline {
                    "no delay (ours only)".to_string()
                } else {
                    l.label()
                })
                .collect::<Vec<_>>()
                .join(" | "),
            "--:|".repeat(links.len())
        );
        for d in &self.datasets {
            let ours: Vec<Option<f64>> = links
                .iter()
                .map(|&l| {
                    self.summary(&d.name, sc, l, Tool::Stream)
                        .and_then(|s| s.median)
                })
                .collect();
            for tool in ALL_TOOLS.into_iter().filter(|t| t.is_migration()) {
                let cells: Vec<String> = links
                    .iter()
                    .zip(&ours)
                    .map(|(&l, &o)| match self.summary(&d.name, sc, l, tool) {
                        None => "".into(),
                        Some(sm) if tool == Tool::Stream => sm.time(),
                        Some(sm) => format!("{} ({}×)", sm.time(), sm.ratio_to(o)),
                    })
                    .collect();
                if cells.iter().all(String::is_empty) {
                    continue;
                }
                let _ = writeln!(
                    s,
                    "| {} | {} | {} |",
                    d.name,
                    tool.label(),
                    cells.join(" | ")
                );
            }
            let base = links.iter().zip(&ours).find(|(l, _)| l.is_straight());
            if let Some((_, Some(b))) = base {
                let cells: Vec<String> = ours
                    .iter()
                    .map(|o| o.map_or("–".into(), |o| format!("{:.2}×", o / b)))
                    .collect();
                let _ = writeln!(
                    s,
                    "| {} | ours ÷ ours with no delay | {} |",
                    d.name,
                    cells.join(" | ")
                );
            }
        }
        s
    }

    /// Dump alone and restore alone, with the archive's size, under `sc`.
    pub fn archives_table(&self, sc: ServerConfig, link: Link) -> String {
        let mut s = String::from(
            "| dataset | size MB | archive tool | ok runs | dump s | restore s | archive MiB | peak RSS MiB |\n\
             |---|--:|---|--:|--:|--:|--:|--:|\n",
        );
        let mut any = false;
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
                let Some(sm) = self.summary(&d.name, sc, link, tool) else {
                    continue;
                };
                any = true;
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
        if any {
            s
        } else {
            String::new()
        }
    }

    /// The links with a table of their own: all but an ours-only baseline.
    fn shown_links(&self) -> Vec<Link> {
        self.header
            .links
            .iter()
            .copied()
            .filter(|l| !l.baseline)
            .collect()
    }

    pub fn text_table(&self) -> String {
        let mut out = Vec::new();
        for &sc in &self.header.configs {
            for link in self.shown_links() {
                let mut t = format!(
                    "Migrations, {} settings, {} (median of {} rounds, --jobs {}):\n\n{}\nCPU and ready to serve:\n\n{}",
                    sc.name(),
                    link.label(),
                    self.header.runs,
                    self.header.jobs,
                    self.migrations_table(sc, link),
                    self.cpu_ready_table(sc, link),
                );
                let a = self.archives_table(sc, link);
                if !a.is_empty() {
                    t += &format!("\nArchives:\n\n{a}");
                }
                out.push(t);
            }
            if self.header.links.len() > 1 {
                out.push(format!(
                    "Links side by side, {} settings (median s; peer ÷ ours at the same link):\n\n{}",
                    sc.name(),
                    self.sweep_table(sc)
                ));
            }
        }
        out.join("\n")
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
        if h.links.iter().any(|l| !l.is_straight()) {
            let _ = writeln!(
                s,
                "- links (each a full round of every dataset and tool, all links in every round): {}; \
                 a distant side goes through the testkit's `FaultProxy` (in the harness's process), \
                 which adds half the round trip each way; a side with no delay goes straight to its server{}",
                h.links
                    .iter()
                    .map(|l| if l.baseline {
                        "no delay (ours only, for its ratio)".to_string()
                    } else {
                        l.label()
                    })
                    .collect::<Vec<_>>()
                    .join("; "),
                if h.links.iter().any(|l| l.baseline) {
                    ""
                } else {
                    " (\"no delay\" too)"
                }
            );
        }
        if let Some(t) = h.timeout {
            let _ = writeln!(
                s,
                "- time limit per tool run: {} s (a run still going is killed, its whole process group, \
                 and shown as \"> {} s\"; its target is not checked)",
                t.as_secs(),
                t.as_secs()
            );
        }
        let _ = writeln!(s, "- peak RSS: {}", h.rss_probe);
        let _ = writeln!(
            s,
            "- CPU: tool = user+system seconds of the tool's process tree (its own and its reaped \
             children's, from the kernel's wait accounting); source/target = the server's postmaster \
             utime+stime+cutime+cstime plus its live children's utime+stime (`/proc`), after the run \
             minus before it. The harness's proxies (RTT runs) are not in any of them."
        );
        if h.ready {
            let _ = writeln!(
                s,
                "- ready to serve: after each migration, `vacuumdb --analyze-only -j {}` of the target \
                 (PostgreSQL {}'s client, over the tools' link to the target), timed. For pg_dump | psql \
                 and pg_dump + pg_restore, ready = run + vacuumdb (they leave no statistics); \
                 pg_dbmigrator (statistics carried on 18+, ANALYZE of its loaded tables of 1000 rows or \
                 more otherwise) and pgcopydb (VACUUM ANALYZE of every table) count their own time, and \
                 the vacuumdb after them is shown in parentheses only",
                h.jobs, h.src_major
            );
        }
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
        let links = self.shown_links();
        for &sc in &h.configs {
            if h.configs.len() > 1 {
                let _ = writeln!(s, "\n### `{}` settings: {}", sc.name(), sc.describe());
            }
            if h.links.len() > 1 {
                let _ = writeln!(
                    s,
                    "\nLinks side by side (median s; in parentheses that tool's median over ours at \
                     the same link; the last row is our median over ours with no delay):\n"
                );
                s += &self.sweep_table(sc);
            }
            for &link in &links {
                if links.len() > 1 {
                    let _ = writeln!(s, "\n#### {}", link.label());
                }
                let _ = writeln!(
                    s,
                    "\nMigrations, source database → freshly created empty target database \
                     (median of the successful runs; \"peer ÷ ours\" = that tool's median over \
                     `pg_dbmigrator migrate`'s; MB/s = source size / median):\n"
                );
                s += &self.migrations_table(sc, link);
                let _ = writeln!(
                    s,
                    "\nCPU (median seconds over the timed run) and ready to serve (median of run + \
                     vacuumdb where needed):\n"
                );
                s += &self.cpu_ready_table(sc, link);
                let a = self.archives_table(sc, link);
                if !a.is_empty() {
                    let _ = writeln!(
                        s,
                        "\nArchives (dump alone, then restore alone into an empty database):\n"
                    );
                    s += &a;
                }
            }
        }
        let failures: Vec<&RunRecord> = self.runs.iter().filter(|r| r.result.is_err()).collect();
        if !failures.is_empty() {
            let _ = writeln!(s, "\nFailed runs (not timed):\n");
            for r in failures {
                let e = r.result.as_ref().err().map(|e| e.as_str()).unwrap_or("");
                let e: String = e.chars().take(400).collect();
                let _ = writeln!(
                    s,
                    "- {} {} {} {} round {}: {}",
                    r.dataset,
                    r.config.name(),
                    r.link.tag(),
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
            "dataset,config,link,size_bytes,tool,round,ok,timed_out,secs,phases,max_rss_kib,archive_bytes,\
             tool_cpu_s,source_cpu_s,target_cpu_s,analyze_s,analyze_target_cpu_s,load_before,error\n",
        );
        let f = |v: Option<f64>| v.map(|v| format!("{v:.3}")).unwrap_or_default();
        for r in &self.runs {
            let row = match &r.result {
                Ok(o) => [
                    "1".to_string(),
                    u8::from(o.timed_out).to_string(),
                    format!("{:.3}", o.secs),
                    o.parts
                        .iter()
                        .map(|(n, v)| format!("{n}={v:.3}"))
                        .collect::<Vec<_>>()
                        .join(" "),
                    o.rss_kib.map(|v| v.to_string()).unwrap_or_default(),
                    o.archive_bytes.map(|v| v.to_string()).unwrap_or_default(),
                    f(o.cpu.tool),
                    f(o.cpu.source),
                    f(o.cpu.target),
                    f(o.ready.map(|a| a.secs)),
                    f(o.ready.and_then(|a| a.cpu.target)),
                    f(o.load_before),
                    String::new(),
                ],
                Err(e) => {
                    let mut row: [String; 13] = Default::default();
                    row[0] = "0".into();
                    row[12] = e.chars().take(300).collect::<String>();
                    row
                }
            };
            let err = row[12].replace(['"', '\n', ','], " ");
            let _ = writeln!(
                s,
                "{},{},{},{},{},{},{},\"{err}\"",
                r.dataset,
                r.config.name(),
                r.link.tag(),
                r.size_bytes,
                r.tool.name(),
                r.round,
                row[..12].join(","),
            );
        }
        s
    }
}
