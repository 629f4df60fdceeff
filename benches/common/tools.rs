//! The contenders and how one timed run of each goes.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result};

use super::cpu::ServerReading;
use super::util::{
    du_bytes, exec, literal, make_server_dir, query, run_measured, run_parallel, run_quiet, Cmd,
    Measured,
};
use super::verify::{compare, snapshot, Snapshot, Table};
use super::Ctx;

/// Target database every run writes into (dropped and created before each).
pub const TARGET_DB: &str = "bench_target";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Tool {
    Stream,
    DumpMethod,
    PgDumpRestore,
    PgDumpPsql,
    Pgcopydb,
    Archive,
    PgDumpZstd,
    Floor,
}

pub const ALL_TOOLS: [Tool; 8] = [
    Tool::Stream,
    Tool::DumpMethod,
    Tool::PgDumpRestore,
    Tool::PgDumpPsql,
    Tool::Pgcopydb,
    Tool::Archive,
    Tool::PgDumpZstd,
    Tool::Floor,
];

impl Tool {
    /// Short name (BENCH_TOOLS, CSV).
    pub fn name(self) -> &'static str {
        match self {
            Tool::Stream => "stream",
            Tool::DumpMethod => "dump-method",
            Tool::PgDumpRestore => "pg_dump+pg_restore",
            Tool::PgDumpPsql => "pg_dump|psql",
            Tool::Pgcopydb => "pgcopydb",
            Tool::Archive => "archive",
            Tool::PgDumpZstd => "pg_dump-zstd",
            Tool::Floor => "floor",
        }
    }

    /// What the report calls it.
    pub fn label(self) -> &'static str {
        match self {
            Tool::Stream => "pg_dbmigrator migrate (stream)",
            Tool::DumpMethod => "pg_dbmigrator migrate --copy-method dump",
            Tool::PgDumpRestore => "pg_dump -Fd -j N + pg_restore -j N",
            Tool::PgDumpPsql => "pg_dump \\| psql",
            Tool::Pgcopydb => "pgcopydb clone",
            Tool::Archive => "pg_dbmigrator dump + restore",
            Tool::PgDumpZstd => "pg_dump -Fd --compress=zstd + pg_restore",
            Tool::Floor => "lower bound (COPY out + COPY in + indexes)",
        }
    }

    /// Whether the tool is one of the migrations compared in the main table
    /// (the archive tools go to their own table).
    pub fn is_archive(self) -> bool {
        matches!(self, Tool::Archive | Tool::PgDumpZstd)
    }

    /// A migration whose result could serve traffic (not the floor, not
    /// an archive).
    pub fn is_migration(self) -> bool {
        matches!(
            self,
            Tool::Stream
                | Tool::DumpMethod
                | Tool::PgDumpRestore
                | Tool::PgDumpPsql
                | Tool::Pgcopydb
        )
    }

    /// Whether the tool leaves the target with optimizer statistics:
    /// pg_dbmigrator carries them (PostgreSQL 18+) or ANALYZEs the loaded
    /// tables of 1000 rows or more; pgcopydb runs VACUUM ANALYZE on every
    /// table it copied. pg_dump and pg_restore leave none: a DBA runs
    /// `vacuumdb --analyze-only` before letting traffic in.
    pub fn leaves_statistics(self) -> bool {
        matches!(self, Tool::Stream | Tool::DumpMethod | Tool::Pgcopydb)
    }
}

/// CPU seconds of one run (or one of its phases).
#[derive(Debug, Clone, Copy, Default)]
pub struct Cpu {
    /// The tool's process tree (`None`: not measurable, e.g. killed).
    pub tool: Option<f64>,
    pub source: Option<f64>,
    pub target: Option<f64>,
}

impl Cpu {
    fn add(a: Option<f64>, b: Option<f64>) -> Option<f64> {
        Some(a? + b?)
    }
    fn plus(self, o: Cpu) -> Cpu {
        Cpu {
            tool: Cpu::add(self.tool, o.tool),
            source: Cpu::add(self.source, o.source),
            target: Cpu::add(self.target, o.target),
        }
    }
}

/// The `vacuumdb --analyze-only` after a migration: what a DBA runs before
/// production traffic when the tool left no statistics.
#[derive(Debug, Clone, Copy)]
pub struct Ready {
    pub secs: f64,
    pub cpu: Cpu,
}

/// Everything a run of one dataset needs, gathered once.
pub struct DatasetState {
    pub name: String,
    pub db: String,
    pub size_bytes: u64,
    pub tables: Vec<Table>,
    pub want: Snapshot,
    pub floor: Option<FloorStage>,
}

/// The floor's inputs, prepared (untimed) before its first run.
pub struct FloorStage {
    dir: PathBuf,
    pre_data: PathBuf,
    /// (table, staged binary COPY file), largest first.
    files: Vec<(Table, PathBuf)>,
    indexes: Vec<String>,
    fks: Vec<String>,
}

/// A successful run.
#[derive(Debug, Clone)]
pub struct RunOk {
    pub secs: f64,
    /// Named phases, e.g. dump and restore.
    pub parts: Vec<(&'static str, f64)>,
    pub rss_kib: Option<u64>,
    pub archive_bytes: Option<u64>,
    /// CPU of the tool and of each server over the timed run.
    pub cpu: Cpu,
    /// Killed at `BENCH_TIMEOUT_S`: `secs` is a lower bound, the target was
    /// not checked.
    pub timed_out: bool,
    /// `vacuumdb --analyze-only` after the run (`BENCH_READY`).
    pub ready: Option<Ready>,
    /// 1-minute load average (`/proc/loadavg`) just before the run.
    pub load_before: Option<f64>,
}

impl RunOk {
    fn from_phases(phases: Vec<(&'static str, Timed)>, archive_bytes: Option<u64>) -> RunOk {
        RunOk {
            secs: phases.iter().map(|(_, m)| m.m.elapsed.as_secs_f64()).sum(),
            parts: phases
                .iter()
                .map(|(n, m)| (*n, m.m.elapsed.as_secs_f64()))
                .collect(),
            rss_kib: phases.iter().filter_map(|(_, m)| m.m.max_rss_kib).max(),
            archive_bytes,
            cpu: phases
                .iter()
                .map(|(_, m)| m.cpu)
                .reduce(Cpu::plus)
                .unwrap_or_default(),
            timed_out: phases.iter().any(|(_, m)| m.m.timed_out),
            ready: None,
            load_before: None,
        }
    }

    /// " cpu tool=… src=… tgt=…" for the progress lines.
    pub fn describe_cpu(&self) -> String {
        let f = |v: Option<f64>| v.map_or("–".into(), |v| format!("{v:.2}"));
        let mut s = format!(
            "  cpu tool={} src={} tgt={}",
            f(self.cpu.tool),
            f(self.cpu.source),
            f(self.cpu.target)
        );
        if let Some(r) = &self.ready {
            s += &format!("  vacuumdb --analyze-only {:.2}s", r.secs);
        }
        s
    }
}

/// A measured child with both servers' CPU over it.
pub struct Timed {
    m: Measured,
    cpu: Cpu,
}

/// Run `cmd` timed (see [`run_measured`]), reading both servers' CPU before
/// and after.
fn timed(ctx: &Ctx, cmd: &Cmd, log: &Path, limit: Option<std::time::Duration>) -> Result<Timed> {
    let s0 = ServerReading::take(&ctx.src.data_dir);
    let t0 = ServerReading::take(&ctx.tgt.data_dir);
    let m = run_measured(cmd, log, ctx.rss_probe, limit)?;
    let s1 = ServerReading::take(&ctx.src.data_dir);
    let t1 = ServerReading::take(&ctx.tgt.data_dir);
    Ok(Timed {
        m,
        cpu: Cpu {
            tool: m.cpu_secs,
            source: s1.since(&s0),
            target: t1.since(&t0),
        },
    })
}

/// 1-minute load average.
pub fn load_avg() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// `vacuumdb --analyze-only -j N` of the target database, with the
/// source's client tools (as every peer's) over the tools' link to the
/// target, timed with the servers' CPU.
fn analyze_after(ctx: &Ctx, log: &Path) -> Result<Ready> {
    let cmd = Cmd::new(ctx.src.bin_dir.join("vacuumdb"))
        .args(["--analyze-only", "-j", &ctx.cfg.jobs.to_string()])
        .args(["-d", &ctx.tgt_tool(TARGET_DB)]);
    let t = timed(ctx, &cmd, log, None)?;
    Ok(Ready {
        secs: t.m.elapsed.as_secs_f64(),
        cpu: t.cpu,
    })
}

/// Drop and recreate the target database, then CHECKPOINT both servers so a
/// run does not pay for the previous one's dirty buffers. Not timed.
pub fn fresh_target(ctx: &Ctx) -> Result<()> {
    let admin = ctx.tgt.conninfo("postgres");
    exec(
        &admin,
        &format!("DROP DATABASE IF EXISTS {TARGET_DB} WITH (FORCE)"),
    )?;
    exec(&admin, &format!("CREATE DATABASE {TARGET_DB}"))?;
    exec(&admin, "CHECKPOINT")?;
    exec(&ctx.src.conninfo("postgres"), "CHECKPOINT")?;
    Ok(())
}

/// One timed run of `tool` on `ds` into a fresh target, verified after.
pub fn run_one(ctx: &Ctx, ds: &mut DatasetState, tool: Tool, round: usize) -> Result<RunOk> {
    let tag = format!(
        "{}-{}-{}-r{}",
        ds.name,
        ctx.link.get().tag(),
        tool.name().replace(['|', '+'], "_"),
        round
    );
    let log = ctx.logs.join(format!("{tag}.log"));
    let _ = std::fs::remove_file(&log);
    let scratch = ctx.work.join(&tag);
    let _ = std::fs::remove_dir_all(&scratch);
    if tool == Tool::Floor && ds.floor.is_none() {
        ds.floor = Some(prepare_floor(ctx, ds)?);
    }
    fresh_target(ctx)?;
    let load_before = load_avg();
    let result = run_tool(ctx, ds, tool, &scratch, &log);
    let _ = std::fs::remove_dir_all(&scratch);
    let _ = std::fs::remove_file(scratch.with_extension("resume.json"));
    let mut ok = result?;
    ok.load_before = load_before;
    if ok.timed_out {
        return Ok(ok);
    }
    if ctx.cfg.ready && tool.is_migration() {
        let alog = ctx.logs.join(format!("{tag}-vacuumdb.log"));
        ok.ready = Some(analyze_after(ctx, &alog).context("vacuumdb --analyze-only")?);
    }
    let got =
        snapshot(&ctx.tgt.conninfo(TARGET_DB), &ds.tables).context("reading the target back")?;
    compare(&ds.want, &got)?;
    Ok(ok)
}

fn run_tool(ctx: &Ctx, ds: &DatasetState, tool: Tool, scratch: &Path, log: &Path) -> Result<RunOk> {
    let jobs = ctx.cfg.jobs.to_string();
    let src = ctx.src_tool(&ds.db);
    let tgt = ctx.tgt_tool(TARGET_DB);
    let pgbin = &ctx.src.bin_dir;
    let measure = |cmd: &Cmd| timed(ctx, cmd, log, ctx.cfg.timeout);
    match tool {
        Tool::Stream | Tool::DumpMethod => {
            let mut cmd = Cmd::new(&ctx.bin)
                .args(["migrate", "--source", &src, "--target", &tgt])
                .args(["--jobs", &jobs, "--verify", "none", "--dump-path"])
                .arg(scratch);
            if tool == Tool::DumpMethod {
                cmd = cmd.args(["--copy-method", "dump"]);
            }
            // BENCH_MIGRATE_ARGS: more flags for our migrate (e.g. --skip-analyze).
            if let Ok(extra) = std::env::var("BENCH_MIGRATE_ARGS") {
                cmd = cmd.args(extra.split_whitespace());
            }
            Ok(RunOk::from_phases(vec![("migrate", measure(&cmd)?)], None))
        }
        Tool::PgDumpRestore | Tool::PgDumpZstd => {
            let mut dump = Cmd::new(pgbin.join("pg_dump")).args(["-Fd", "-j", &jobs]);
            if tool == Tool::PgDumpZstd {
                dump = dump.arg("--compress=zstd");
            }
            let dump = dump.arg("-f").arg(scratch).args(["-d", &src]);
            let d = measure(&dump)?;
            if d.m.timed_out {
                return Ok(RunOk::from_phases(vec![("dump", d)], None));
            }
            let bytes = du_bytes(scratch);
            let restore = Cmd::new(pgbin.join("pg_restore"))
                .args(["-j", &jobs, "-d", &tgt])
                .arg(scratch);
            let r = measure(&restore)?;
            Ok(RunOk::from_phases(
                vec![("dump", d), ("restore", r)],
                Some(bytes),
            ))
        }
        Tool::PgDumpPsql => {
            let script = r#"set -o pipefail; "$0/pg_dump" -d "$1" | "$0/psql" -X -q -v ON_ERROR_STOP=1 -d "$2" >/dev/null"#;
            let cmd = Cmd::new("bash")
                .args(["-c", script])
                .arg(pgbin)
                .args([&src, &tgt]);
            Ok(RunOk::from_phases(vec![("pipe", measure(&cmd)?)], None))
        }
        Tool::Pgcopydb => {
            let cmd = pgcopydb_clone(ctx, &ds.db, scratch);
            Ok(RunOk::from_phases(vec![("clone", measure(&cmd)?)], None))
        }
        Tool::Archive => {
            let dump = Cmd::new(&ctx.bin)
                .args(["dump", "--source", &src, "--jobs", &jobs, "--dump-path"])
                .arg(scratch);
            let d = measure(&dump)?;
            if d.m.timed_out {
                return Ok(RunOk::from_phases(vec![("dump", d)], None));
            }
            let bytes = du_bytes(scratch);
            let restore = Cmd::new(&ctx.bin)
                .args(["restore", "--target", &tgt, "--jobs", &jobs, "--dump-path"])
                .arg(scratch);
            let r = measure(&restore)?;
            Ok(RunOk::from_phases(
                vec![("dump", d), ("restore", r)],
                Some(bytes),
            ))
        }
        Tool::Floor => run_floor(ctx, ds, &src, &tgt),
    }
}

/// Extra `pgcopydb clone` flags (see BENCHMARKS.md for why).
pub const PGCOPYDB_FLAGS: &[&str] = &[];

/// `pgcopydb clone` of source database `db` into [`TARGET_DB`]. pgcopydb
/// runs the pg_dump and pg_restore it finds on PATH: the source's, like
/// every other peer's client tools.
fn pgcopydb_clone(ctx: &Ctx, db: &str, scratch: &Path) -> Cmd {
    let jobs = ctx.cfg.jobs.to_string();
    let path = format!(
        "{}:{}",
        ctx.src.bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    Cmd::new("pgcopydb")
        .args(["clone", "--source", &ctx.src_uri(db)])
        .args(["--target", &ctx.tgt_uri(TARGET_DB)])
        .args(["--table-jobs", &jobs, "--index-jobs", &jobs])
        .args(PGCOPYDB_FLAGS.iter().copied())
        .arg("--dir")
        .arg(scratch)
        .env("PATH", path)
}

/// Whether pgcopydb copes with a target of another major than its client
/// tools: whether it does depends on its version's checks, not on the
/// data, so one clone of a one-table database settles it before the
/// rounds, and a refusal makes the tool n/a (with pgcopydb's reason)
/// instead of a column of failed runs.
pub fn pgcopydb_cross_major_probe(ctx: &Ctx) -> std::result::Result<(), String> {
    const PROBE_DB: &str = "bench_pgcopydb_probe";
    let admin = ctx.src.conninfo("postgres");
    let setup = || -> Result<()> {
        exec(
            &admin,
            &format!("DROP DATABASE IF EXISTS {PROBE_DB} WITH (FORCE)"),
        )?;
        exec(&admin, &format!("CREATE DATABASE {PROBE_DB}"))?;
        exec(
            &ctx.src.conninfo(PROBE_DB),
            "CREATE TABLE probe (id integer PRIMARY KEY, v text); \
             INSERT INTO probe SELECT g, 'v' || g FROM generate_series(1, 3) g",
        )?;
        fresh_target(ctx)
    };
    let log = ctx.logs.join("pgcopydb-probe.log");
    let scratch = ctx.work.join("pgcopydb-probe");
    let result = setup()
        .map_err(|e| format!("n/a: setting up the pgcopydb probe failed: {e:#}"))
        .and_then(|()| {
            run_measured(
                &pgcopydb_clone(ctx, PROBE_DB, &scratch),
                &log,
                ctx.rss_probe,
                None,
            )
                .map_err(|_| {
                    let text = std::fs::read_to_string(&log).unwrap_or_default();
                    let reason = text
                        .lines()
                        .find(|l| l.contains("ERROR") || l.contains("FATAL"))
                        .or_else(|| text.lines().rev().find(|l| !l.trim().is_empty()))
                        .unwrap_or("no output")
                        .trim()
                        .chars()
                        .take(300)
                        .collect::<String>();
                    format!(
                        "n/a: pgcopydb clone into the PostgreSQL {} target (with pg_dump/pg_restore {}) \
                         failed on a one-table probe database: {reason} (log {})",
                        ctx.tgt.major,
                        ctx.src.major,
                        log.display()
                    )
                })
        })
        .map(|_| ());
    let _ = std::fs::remove_dir_all(&scratch);
    let _ = exec(
        &admin,
        &format!("DROP DATABASE IF EXISTS {PROBE_DB} WITH (FORCE)"),
    );
    result
}

fn prepare_floor(ctx: &Ctx, ds: &DatasetState) -> Result<FloorStage> {
    let dir = ctx.work.join(format!("stage-{}", ds.name));
    let _ = std::fs::remove_dir_all(&dir);
    make_server_dir(&dir)?;
    let src = ctx.src.conninfo(&ds.db);
    let files: Vec<(Table, PathBuf)> = ds
        .tables
        .iter()
        .enumerate()
        .map(|(k, t)| (t.clone(), dir.join(format!("{k}.bin"))))
        .collect();
    let outs = files
        .iter()
        .map(|(t, f)| {
            format!(
                "COPY {} TO {} (FORMAT binary)",
                t.qualified(),
                literal(&f.display().to_string())
            )
        })
        .collect();
    run_parallel(&src, outs, ctx.cfg.jobs)?;
    let pre_data = ctx.work.join(format!("stage-{}-pre.sql", ds.name));
    run_quiet(
        Command::new(ctx.src.bin_dir.join("pg_dump"))
            .args(["-s", "--section=pre-data", "-d", &src, "-f"])
            .arg(&pre_data),
        "pg_dump --section=pre-data",
    )?;
    const USER: &str = "n.nspname NOT IN ('pg_catalog', 'information_schema') \
                        AND n.nspname NOT LIKE 'pg\\_toast%'";
    // Indexes that back no constraint, then primary/unique/exclusion
    // constraints, then foreign keys: the post-data a restore builds.
    let indexes = query(
        &src,
        &format!(
            "SELECT stmt FROM ( \
               SELECT pg_get_indexdef(i.indexrelid) AS stmt, pg_relation_size(i.indrelid) AS sz \
               FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid \
               JOIN pg_namespace n ON n.oid = c.relnamespace \
               WHERE {USER} AND NOT EXISTS (SELECT 1 FROM pg_constraint k \
                 WHERE k.conindid = i.indexrelid AND k.contype IN ('p', 'u', 'x')) \
               UNION ALL \
               SELECT format('ALTER TABLE ONLY %s ADD CONSTRAINT %I %s', \
                        k.conrelid::regclass, k.conname, pg_get_constraintdef(k.oid)), \
                      pg_relation_size(k.conrelid) \
               FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid \
               JOIN pg_namespace n ON n.oid = c.relnamespace \
               WHERE {USER} AND k.contype IN ('p', 'u', 'x')) s \
             ORDER BY sz DESC, stmt"
        ),
    )?;
    let fks = query(
        &src,
        &format!(
            "SELECT format('ALTER TABLE ONLY %s ADD CONSTRAINT %I %s', \
                      k.conrelid::regclass, k.conname, pg_get_constraintdef(k.oid)) \
             FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE {USER} AND k.contype = 'f' \
             ORDER BY pg_relation_size(k.conrelid) DESC, 1"
        ),
    )?;
    let col = |rows: Vec<Vec<Option<String>>>| -> Vec<String> {
        rows.into_iter()
            .filter_map(|r| r.into_iter().next().flatten())
            .collect()
    };
    Ok(FloorStage {
        dir,
        pre_data,
        files,
        indexes: col(indexes),
        fks: col(fks),
    })
}

/// The rough floor: parallel `COPY … TO '/dev/null'` on the source, then
/// parallel `COPY … FROM` the staged files on the target (tables created
/// from pre-data beforehand, untimed), then the index and constraint builds,
/// then the foreign keys. The phases run one after the other; the sum is the
/// floor.
fn run_floor(ctx: &Ctx, ds: &DatasetState, src: &str, tgt: &str) -> Result<RunOk> {
    let stage = ds.floor.as_ref().expect("prepared");
    // The source's psql: a target of another major may come without one.
    run_quiet(
        Command::new(ctx.src.bin_dir.join("psql"))
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", tgt, "-f"])
            .arg(&stage.pre_data),
        "psql -f pre-data",
    )?;
    exec(&ctx.tgt.conninfo("postgres"), "CHECKPOINT")?;
    let n = ctx.cfg.jobs;
    let read = run_parallel(
        src,
        stage
            .files
            .iter()
            .map(|(t, _)| format!("COPY {} TO '/dev/null' (FORMAT binary)", t.qualified()))
            .collect(),
        n,
    )?;
    let ingest = run_parallel(
        tgt,
        stage
            .files
            .iter()
            .map(|(t, f)| {
                format!(
                    "COPY {} FROM {} (FORMAT binary)",
                    t.qualified(),
                    literal(&f.display().to_string())
                )
            })
            .collect(),
        n,
    )?;
    let indexes = run_parallel(tgt, stage.indexes.clone(), n)?;
    let fks = run_parallel(tgt, stage.fks.clone(), n)?;
    let parts = vec![
        ("read", read.as_secs_f64()),
        ("ingest", ingest.as_secs_f64()),
        ("indexes", indexes.as_secs_f64()),
        ("fks", fks.as_secs_f64()),
    ];
    Ok(RunOk {
        secs: parts.iter().map(|(_, s)| s).sum(),
        parts,
        rss_kib: None,
        archive_bytes: None,
        cpu: Cpu::default(),
        timed_out: false,
        ready: None,
        load_before: None,
    })
}

/// Delete the floor's staged files.
pub fn drop_floor(ds: &mut DatasetState) {
    if let Some(stage) = ds.floor.take() {
        let _ = std::fs::remove_dir_all(&stage.dir);
        let _ = std::fs::remove_file(&stage.pre_data);
    }
}
