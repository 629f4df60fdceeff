//! The benchmark harness behind `cargo bench --bench migrate`.

pub mod cpu;
pub mod datasets;
pub mod report;
pub mod tools;
pub mod util;
pub mod verify;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context as _, Result};
use pg_dbmigrator::testkit::proxy::FaultProxy;
use pg_dbmigrator::testkit::{ensure_embedded_major, Cluster, ClusterOptions};

use datasets::Dataset;
use report::{Report, RunRecord};
use tools::{DatasetState, Tool, ALL_TOOLS};
use util::{first_line, free_bytes, machine_facts, query_one, RssProbe};

/// What to run, from the environment.
#[derive(Debug, Clone)]
pub struct Config {
    pub datasets: Vec<Dataset>,
    pub runs: usize,
    pub jobs: usize,
    pub tools: Option<Vec<String>>,
    pub pgbench_scale: u32,
    /// Server settings to measure under, in order; datasets are built under
    /// the first.
    pub configs: Vec<ServerConfig>,
    /// Major of the target server; `None` is the source's.
    pub target_major: Option<u32>,
    /// `max_locks_per_transaction` of both servers, when the datasets need
    /// more than PostgreSQL's default.
    pub max_locks: Option<u32>,
    /// `BENCH_RTT_MS` × `BENCH_NEAR`: where the tools sit, each a full
    /// round of the datasets and tools. Without `BENCH_RTT_MS`, one
    /// straight link (no proxies). When no link of the list is straight,
    /// a straight one running only ours comes first ([`Link::baseline`]),
    /// so that our time at a distance is set against ours without one in
    /// the same run.
    pub links: Vec<Link>,
    /// `BENCH_TIMEOUT_S`: a tool still running after this is killed (its
    /// whole process group) and reported as "> N s".
    pub timeout: Option<std::time::Duration>,
    /// `BENCH_READY` (default on): after each migration, the
    /// `vacuumdb --analyze-only` a DBA runs before letting traffic in.
    pub ready: bool,
}

/// Where the tool sits between the servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Near {
    /// Both links are distant (the round trip on each).
    BothFar,
    /// Next to the source: the round trip is on the target link only.
    Source,
    /// Next to the target: the round trip is on the source link only.
    Target,
}

impl Near {
    fn parse(s: &str) -> Result<Near> {
        match s.trim() {
            "both-far" | "" => Ok(Near::BothFar),
            "source" => Ok(Near::Source),
            "target" => Ok(Near::Target),
            other => bail!("BENCH_NEAR={other:?}: expected source, target or both-far"),
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Near::BothFar => "both-far",
            Near::Source => "source",
            Near::Target => "target",
        }
    }
}

/// The network between the tools and the servers for a round.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Link {
    pub rtt_ms: u64,
    pub near: Near,
    /// A straight link added only for ours' no-delay time (the list had no 0).
    pub baseline: bool,
}

impl Link {
    pub const STRAIGHT: Link = Link {
        rtt_ms: 0,
        near: Near::BothFar,
        baseline: false,
    };
    /// Round trip between the tool and the source.
    pub fn source_rtt_ms(self) -> u64 {
        if self.near == Near::Source {
            0
        } else {
            self.rtt_ms
        }
    }
    /// Round trip between the tool and the target.
    pub fn target_rtt_ms(self) -> u64 {
        if self.near == Near::Target {
            0
        } else {
            self.rtt_ms
        }
    }
    pub fn is_straight(self) -> bool {
        self.rtt_ms == 0
    }
    /// For the report: "no delay", "10 ms RTT, both links", ...
    pub fn label(self) -> String {
        match (self.rtt_ms, self.near) {
            (0, _) => "no delay".into(),
            (ms, Near::BothFar) => format!("{ms} ms RTT on both links"),
            (ms, Near::Source) => format!("{ms} ms RTT, tool next to the source"),
            (ms, Near::Target) => format!("{ms} ms RTT, tool next to the target"),
        }
    }
    /// Short, for log lines and the CSV.
    pub fn tag(self) -> String {
        match (self.rtt_ms, self.near) {
            (0, _) => "rtt0".into(),
            (ms, n) => format!("rtt{ms}-{}", n.name()),
        }
    }
}

/// The links of `BENCH_RTT_MS` (comma list) × `BENCH_NEAR` (comma list).
fn links_from(rtts: &str, nears: &str) -> Result<Vec<Link>> {
    if rtts.trim().is_empty() {
        return Ok(vec![Link::STRAIGHT]);
    }
    let rtts = rtts
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|v| v.trim().parse::<u64>())
        .collect::<std::result::Result<Vec<_>, _>>()
        .context("BENCH_RTT_MS: a comma list of milliseconds")?;
    let nears = nears
        .split(',')
        .map(Near::parse)
        .collect::<Result<Vec<_>>>()?;
    let mut links = Vec::new();
    for ms in rtts {
        for &near in &nears {
            let l = if ms == 0 {
                Link::STRAIGHT
            } else {
                Link {
                    rtt_ms: ms,
                    near,
                    baseline: false,
                }
            };
            if !links.contains(&l) {
                links.push(l);
            }
        }
    }
    if !links.iter().any(|l| l.is_straight()) {
        links.insert(
            0,
            Link {
                baseline: true,
                ..Link::STRAIGHT
            },
        );
    }
    Ok(links)
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| default.to_string())
}

impl Config {
    fn from_env() -> Result<Config> {
        let datasets = env_or("BENCH_DATASETS", "pgbench,many1,many3,many10")
            .split(',')
            .filter(|s| !s.trim().is_empty())
            .map(Dataset::parse)
            .collect::<Result<Vec<_>>>()?;
        let runs: usize = env_or("BENCH_RUNS", "3").parse().context("BENCH_RUNS")?;
        let jobs: usize = env_or("BENCH_JOBS", "2").parse().context("BENCH_JOBS")?;
        if runs == 0 || jobs == 0 {
            bail!("BENCH_RUNS and BENCH_JOBS must be at least 1");
        }
        let tools = std::env::var("BENCH_TOOLS")
            .ok()
            .filter(|v| !v.trim().is_empty())
            .map(|v| v.split(',').map(|s| s.trim().to_string()).collect());
        let pgbench_scale = env_or("BENCH_PGBENCH_SCALE", "30")
            .parse()
            .context("BENCH_PGBENCH_SCALE")?;
        let configs = match env_or("BENCH_CONFIG", "both").trim() {
            "both" => vec![ServerConfig::Production, ServerConfig::Test],
            "production" => vec![ServerConfig::Production],
            "test" => vec![ServerConfig::Test],
            other => bail!("BENCH_CONFIG={other:?}: expected production, test or both"),
        };
        let links = links_from(
            &std::env::var("BENCH_RTT_MS").unwrap_or_default(),
            &env_or("BENCH_NEAR", "both-far"),
        )?;
        let timeout = std::env::var("BENCH_TIMEOUT_S")
            .ok()
            .filter(|v| !v.trim().is_empty())
            .map(|v| v.trim().parse::<u64>())
            .transpose()
            .context("BENCH_TIMEOUT_S")?
            .map(std::time::Duration::from_secs);
        let ready = !matches!(env_or("BENCH_READY", "1").trim(), "0" | "no" | "off");
        let target_major = std::env::var("BENCH_TARGET_MAJOR")
            .ok()
            .filter(|v| !v.trim().is_empty())
            .map(|v| v.trim().parse::<u32>())
            .transpose()
            .context("BENCH_TARGET_MAJOR")?;
        // Only the tenants sets have tables by the thousand; the others keep
        // PostgreSQL's default, as in the reports before them.
        let max_locks = datasets
            .iter()
            .filter_map(|d| match d {
                Dataset::Tenants(n) => Some(*n as u64 * datasets::TENANT_TABLES),
                _ => None,
            })
            .max()
            .map(max_locks_for);
        Ok(Config {
            datasets,
            runs,
            jobs,
            tools,
            pgbench_scale,
            configs,
            target_major,
            max_locks,
            links,
            timeout,
            ready,
        })
    }
}

/// `max_locks_per_transaction` for a database of `tables` tables. pg_dump
/// -j N locks every table in its leader and again in its workers (each
/// keeps what it dumped until it ends): about 2 × tables locks at once, in
/// a lock table shared by all sessions and sized max_locks_per_transaction
/// × max_connections (plus a few background processes). pg_dbmigrator
/// needs less (each table once, while it reads the schema) and refuses to
/// start when even that does not fit. A quarter to spare, and never below
/// 512, so runs fail on what they measure and not on "out of shared memory".
pub fn max_locks_for(tables: u64) -> u32 {
    let need = (2 * tables * 5 / 4).div_ceil(100);
    need.next_power_of_two().max(512) as u32
}

/// The server settings a round runs under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ServerConfig {
    /// [`SERVER_CONF`]: durable, sized like a small production server.
    Production,
    /// [`TEST_CONF`]: the testkit's throwaway settings, no durability.
    Test,
}

impl ServerConfig {
    pub fn name(self) -> &'static str {
        match self {
            ServerConfig::Production => "production",
            ServerConfig::Test => "test",
        }
    }

    pub fn settings(self) -> &'static [(&'static str, &'static str)] {
        match self {
            ServerConfig::Production => SERVER_CONF,
            ServerConfig::Test => TEST_CONF,
        }
    }

    /// `name=value, ...` for the report.
    pub fn describe(self) -> String {
        let conf = self
            .settings()
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(", ");
        match self {
            ServerConfig::Production => conf,
            ServerConfig::Test => {
                format!("{conf} (the testkit's defaults; everything else PostgreSQL's defaults)")
            }
        }
    }
}

/// Settings both servers get (on top of the testkit's, which turn
/// durability off: fsync, synchronous_commit and full_page_writes are put
/// back to their defaults here).
pub const SERVER_CONF: &[(&str, &str)] = &[
    ("fsync", "on"),
    ("synchronous_commit", "on"),
    ("full_page_writes", "on"),
    ("shared_buffers", "1GB"),
    ("max_wal_size", "8GB"),
    ("checkpoint_timeout", "30min"),
    ("maintenance_work_mem", "512MB"),
    ("max_parallel_maintenance_workers", "2"),
    ("max_connections", "100"),
];

/// The testkit's own settings (what the test suite runs with), written out
/// rather than left to the testkit so that what the report names is what
/// the servers ran with even if the testkit's defaults move.
pub const TEST_CONF: &[(&str, &str)] = &[
    ("fsync", "off"),
    ("synchronous_commit", "off"),
    ("full_page_writes", "off"),
    ("shared_buffers", "128MB"),
    ("max_connections", "100"),
];

/// Put `sc`'s settings on both servers and restart them, then check they
/// took. ALTER SYSTEM RESET ALL first, so nothing of the other
/// configuration lingers; what the clusters were started with
/// (postgresql.conf: the testkit's settings, wal_level, the lock table)
/// stays underneath. Always a restart, also when nothing changes, so every
/// configuration's rounds start alike: cold shared_buffers, warm OS cache.
pub fn apply_server_config(ctx: &Ctx, sc: ServerConfig) -> Result<()> {
    for (side, c) in [("source", &ctx.src), ("target", &ctx.tgt)] {
        let admin = c.conninfo("postgres");
        // ALTER SYSTEM refuses to run in a transaction block, which a
        // multi-statement batch is: one statement per call.
        util::exec(&admin, "ALTER SYSTEM RESET ALL")
            .with_context(|| format!("ALTER SYSTEM on the {side}"))?;
        for (k, v) in sc.settings() {
            util::exec(
                &admin,
                &format!("ALTER SYSTEM SET {k} = {}", util::literal(v)),
            )
            .with_context(|| format!("ALTER SYSTEM SET {k} on the {side}"))?;
        }
        c.restart(false).with_context(|| {
            format!(
                "restarting the {side} with the {} settings; server log:\n{}",
                sc.name(),
                c.log_tail(2000)
            )
        })?;
        let mut want: Vec<(&str, String)> = sc
            .settings()
            .iter()
            .map(|(k, v)| (*k, v.to_string()))
            .collect();
        if let Some(n) = ctx.cfg.max_locks {
            want.push(("max_locks_per_transaction", n.to_string()));
        }
        for (k, v) in want {
            let got = query_one(&admin, &format!("SELECT current_setting('{k}')"))?;
            if got != v {
                bail!(
                    "the {side} runs with {k}={got} after the restart, not {v} ({} settings)",
                    sc.name()
                );
            }
        }
    }
    Ok(())
}

/// Shared state of a benchmark session.
pub struct Ctx {
    pub cfg: Config,
    pub src: Cluster,
    pub tgt: Cluster,
    /// The pg_dbmigrator binary under test.
    pub bin: PathBuf,
    pub rss_probe: RssProbe,
    /// Scratch space: dumps, staging files.
    pub work: PathBuf,
    /// Per-run logs of the tools.
    pub logs: PathBuf,
    /// `BENCH_RTT_MS`: the proxies in front of the source and the target
    /// that every tool goes through (the harness's own reads do not) when
    /// its side of the current link has a delay.
    pub proxies: Option<(FaultProxy, FaultProxy)>,
    /// The link the runs go over now ([`Ctx::set_link`]).
    pub link: std::cell::Cell<Link>,
}

impl Ctx {
    fn uri(c: &Cluster, port: u16, db: &str) -> String {
        format!(
            "postgres://{}:{}@{}:{}/{}?sslmode=disable",
            c.superuser, c.password, c.host, port, db
        )
    }
    /// Put the tools behind `link` from now on: each side with a delay goes
    /// through its proxy, which adds half the round trip each way; a side
    /// without one goes straight to its server.
    pub fn set_link(&self, link: Link) {
        if let Some((s, t)) = &self.proxies {
            s.set_delay(std::time::Duration::from_micros(link.source_rtt_ms() * 500));
            t.set_delay(std::time::Duration::from_micros(link.target_rtt_ms() * 500));
        }
        self.link.set(link);
    }
    fn source_proxy(&self) -> Option<&FaultProxy> {
        let l = self.link.get();
        self.proxies
            .as_ref()
            .filter(|_| l.source_rtt_ms() > 0)
            .map(|p| &p.0)
    }
    fn target_proxy(&self) -> Option<&FaultProxy> {
        let l = self.link.get();
        self.proxies
            .as_ref()
            .filter(|_| l.target_rtt_ms() > 0)
            .map(|p| &p.1)
    }
    /// The ports the tools reach the servers at.
    fn tool_ports(&self) -> (u16, u16) {
        (
            self.source_proxy().map_or(self.src.port, |p| p.port),
            self.target_proxy().map_or(self.tgt.port, |p| p.port),
        )
    }
    pub fn src_uri(&self, db: &str) -> String {
        Ctx::uri(&self.src, self.tool_ports().0, db)
    }
    pub fn tgt_uri(&self, db: &str) -> String {
        Ctx::uri(&self.tgt, self.tool_ports().1, db)
    }
    /// The source's key=value conninfo as the tools get it.
    pub fn src_tool(&self, db: &str) -> String {
        match self.source_proxy() {
            Some(p) => p.route(&self.src.conninfo(db)),
            None => self.src.conninfo(db),
        }
    }
    /// The target's key=value conninfo as the tools get it.
    pub fn tgt_tool(&self, db: &str) -> String {
        match self.target_proxy() {
            Some(p) => p.route(&self.tgt.conninfo(db)),
            None => self.tgt.conninfo(db),
        }
    }
}

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `$CARGO_TARGET_DIR` (relative to the package) or the package's `target/`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR").filter(|d| !d.is_empty()) {
        Some(t) => manifest_dir().join(t),
        None => manifest_dir().join("target"),
    }
}

/// The binary under test: `$BENCH_BIN`, else the one cargo built for this
/// bench (`CARGO_BIN_EXE_*`, release profile), else `cargo build --release`.
fn locate_binary() -> Result<PathBuf> {
    if let Some(b) = std::env::var_os("BENCH_BIN").filter(|b| !b.is_empty()) {
        return Ok(PathBuf::from(b));
    }
    if let Some(b) = option_env!("CARGO_BIN_EXE_pg_dbmigrator") {
        if Path::new(b).is_file() {
            return Ok(PathBuf::from(b));
        }
    }
    eprintln!("building the release binary ...");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args([
            "build",
            "--release",
            "--bin",
            "pg_dbmigrator",
            "--manifest-path",
        ])
        .arg(manifest_dir().join("Cargo.toml"))
        .status()?;
    if !status.success() {
        bail!("cargo build --release failed");
    }
    Ok(target_dir().join("release").join("pg_dbmigrator"))
}

fn help_has(bin: &Path, args: &[&str], needle: &str) -> bool {
    Command::new(bin)
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains(needle))
}

/// `pgcopydb`, installed from Debian's package when missing.
fn ensure_pgcopydb() -> std::result::Result<String, String> {
    let version = || {
        Command::new("pgcopydb")
            .arg("--version")
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| first_line(&String::from_utf8_lossy(&o.stdout)))
    };
    if let Some(v) = version() {
        return Ok(v);
    }
    eprintln!("pgcopydb missing: apt-get install -y pgcopydb ...");
    for args in [&["update"][..], &["install", "-y", "pgcopydb"][..]] {
        let _ = Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .output();
    }
    version().ok_or_else(|| "pgcopydb not installed and apt-get install pgcopydb failed".into())
}

/// Why a tool cannot run here, if it cannot.
fn availability(
    tool: Tool,
    bin: &Path,
    pgcopydb: &std::result::Result<String, String>,
    pg_dump_major: u32,
) -> Option<String> {
    match tool {
        Tool::DumpMethod if !help_has(bin, &["migrate", "--help"], "--copy-method") => {
            Some("n/a: `migrate --copy-method` not in this build".into())
        }
        Tool::Archive
            if !(help_has(bin, &["dump", "--help"], "--dump-path")
                && help_has(bin, &["restore", "--help"], "--dump-path")) =>
        {
            Some("n/a: `dump`/`restore` commands not in this build".into())
        }
        Tool::Pgcopydb => pgcopydb.as_ref().err().map(|e| format!("n/a: {e}")),
        Tool::PgDumpZstd if pg_dump_major < 16 => Some(format!(
            "n/a: pg_dump {pg_dump_major} has no zstd (16+); the gzip archive of pg_dump+pg_restore is shown instead"
        )),
        _ => None,
    }
}

pub fn run() -> Result<()> {
    let started = Instant::now();
    let cfg = Config::from_env()?;
    let bin = locate_binary()?;
    let bin_version = Command::new(&bin)
        .arg("--version")
        .output()
        .map(|o| first_line(&String::from_utf8_lossy(&o.stdout)))
        .with_context(|| format!("running {}", bin.display()))?;
    let rss_probe = RssProbe::detect();
    let wanted = |t: Tool| {
        cfg.tools
            .as_ref()
            .is_none_or(|list| list.iter().any(|n| n == t.name()))
    };
    // No apt-get for a tool nobody asked for.
    let pgcopydb = if wanted(Tool::Pgcopydb) {
        ensure_pgcopydb()
    } else {
        Err("not selected (BENCH_TOOLS)".into())
    };

    let target = target_dir();
    let logs = target.join("bench-logs");
    let _ = std::fs::remove_dir_all(&logs);
    std::fs::create_dir_all(&logs)?;
    let work_root = match std::env::var_os("BENCH_WORKDIR").filter(|d| !d.is_empty()) {
        Some(d) => {
            std::fs::create_dir_all(&d)?;
            tempfile::Builder::new()
                .prefix("pg_dbmigrator-bench-")
                .tempdir_in(d)?
        }
        None => tempfile::Builder::new()
            .prefix("pg_dbmigrator-bench-")
            .tempdir()?,
    };
    // The servers (running as `postgres`) read and write staging files here.
    util::make_server_dir(work_root.path())?;

    eprintln!("starting source and target PostgreSQL servers ...");
    // Only what needs the clusters' own postgresql.conf goes in at start
    // (max_locks_per_transaction survives ALTER SYSTEM RESET ALL); the
    // configuration's settings come with apply_server_config.
    let extra_conf: Vec<(String, String)> = cfg
        .max_locks
        .map(|n| ("max_locks_per_transaction".to_string(), n.to_string()))
        .into_iter()
        .collect();
    let src = Cluster::start(&ClusterOptions {
        logical: true,
        extra_conf: extra_conf.clone(),
        ..Default::default()
    })
    .context("starting the source server")?;
    let target_major = cfg.target_major.unwrap_or(src.major);
    // Another major comes from the testkit's embedded builds (server
    // binaries only): every client tool stays the source's.
    let tgt_bin =
        if target_major == src.major {
            None
        } else {
            eprintln!("fetching PostgreSQL {target_major} server binaries for the target ...");
            Some(ensure_embedded_major(target_major).with_context(|| {
                format!("PostgreSQL {target_major} binaries (BENCH_TARGET_MAJOR)")
            })?)
        };
    let tgt = Cluster::start(&ClusterOptions {
        bin_dir: tgt_bin,
        extra_conf,
        ..Default::default()
    })
    .context("starting the target server")?;
    if tgt.major != target_major {
        bail!(
            "the target server is PostgreSQL {}, not the {target_major} asked for",
            tgt.major
        );
    }
    let pg_version = query_one(&src.conninfo("postgres"), "SELECT version()")?;
    let tgt_pg_version = query_one(&tgt.conninfo("postgres"), "SELECT version()")?;
    let pg_dump_version = Command::new(src.bin_dir.join("pg_dump"))
        .arg("--version")
        .output()
        .map(|o| first_line(&String::from_utf8_lossy(&o.stdout)))
        .unwrap_or_default();
    let pg_dump_major: u32 = pg_dump_version
        .split_whitespace()
        .last()
        .and_then(|v| v.split('.').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);

    let proxies = if cfg.links.iter().any(|l| !l.is_straight()) {
        let proxy = |c: &Cluster| -> Result<FaultProxy> {
            Ok(FaultProxy::start(format!("127.0.0.1:{}", c.port).parse()?)?)
        };
        eprintln!(
            "links: {}",
            cfg.links
                .iter()
                .map(|l| l.label())
                .collect::<Vec<_>>()
                .join("; ")
        );
        Some((proxy(&src)?, proxy(&tgt)?))
    } else {
        None
    };
    let ctx = Ctx {
        cfg: cfg.clone(),
        src,
        tgt,
        bin: bin.clone(),
        rss_probe,
        work: work_root.path().to_path_buf(),
        logs,
        proxies,
        link: std::cell::Cell::new(Link::STRAIGHT),
    };

    let mut tools = Vec::new();
    let mut unavailable = Vec::new();
    for t in ALL_TOOLS.into_iter().filter(|t| wanted(*t)) {
        let mut why = availability(t, &bin, &pgcopydb, pg_dump_major);
        if why.is_none() && t == Tool::Pgcopydb && ctx.tgt.major != ctx.src.major {
            eprintln!(
                "trying pgcopydb against the PostgreSQL {} target ...",
                ctx.tgt.major
            );
            why = tools::pgcopydb_cross_major_probe(&ctx).err();
        }
        match why {
            None => tools.push(t),
            Some(why) => {
                eprintln!("{}: {why}", t.name());
                unavailable.push((t, why));
            }
        }
    }

    let mut report = Report::new(report::Header {
        started: chrono::Local::now(),
        machine: machine_facts(),
        pg_version,
        tgt_pg_version,
        src_major: ctx.src.major,
        tgt_major: ctx.tgt.major,
        pg_dump_version,
        pgcopydb_version: pgcopydb.clone().unwrap_or_else(|e| e.clone()),
        bin_path: bin.display().to_string(),
        bin_version,
        commit: git_commit(),
        jobs: cfg.jobs,
        runs: cfg.runs,
        rss_probe: rss_probe.describe().to_string(),
        configs: cfg.configs.clone(),
        max_locks: cfg.max_locks,
        links: cfg.links.clone(),
        timeout: cfg.timeout,
        ready: cfg.ready,
    });
    report.unavailable = unavailable;

    let results_md = target.join("bench-results.md");
    let results_csv = target.join("bench-runs.csv");

    for ds in cfg.datasets.iter().copied() {
        let need = ds.estimated_bytes(cfg.pgbench_scale) * 4 + (12 << 30);
        if let Some(free) = free_bytes(&ctx.work) {
            if free < need {
                eprintln!(
                    "skipping {}: {} GiB free, about {} GiB needed (source, target, dumps, WAL)",
                    ds.name(),
                    free >> 30,
                    need >> 30
                );
                report
                    .skipped
                    .push((ds.name(), "not enough free disk".into()));
                continue;
            }
        }
        // Every dataset is built under the first configuration, so build
        // times compare across reports whatever else was selected.
        apply_server_config(&ctx, cfg.configs[0])?;
        eprintln!(
            "[{:>6.0}s] building dataset {} ({} settings) ...",
            started.elapsed().as_secs_f64(),
            ds.name(),
            cfg.configs[0].name()
        );
        let t0 = Instant::now();
        datasets::build(&ctx, ds).with_context(|| format!("building {}", ds.name()))?;
        let build_secs = t0.elapsed().as_secs_f64();
        let src_ci = ctx.src.conninfo(&ds.db());
        let size_bytes: u64 =
            query_one(&src_ci, "SELECT pg_database_size(current_database())::text")?.parse()?;
        let tables = verify::table_list(&src_ci)?;
        let want = verify::snapshot(&src_ci, &tables)?;
        eprintln!(
            "  {} built in {build_secs:.0}s: {} tables, {:.0} MB",
            ds.name(),
            tables.len(),
            size_bytes as f64 / 1e6
        );
        report.datasets.push(report::DatasetInfo {
            name: ds.name(),
            description: ds.describe(cfg.pgbench_scale),
            size_bytes,
            tables: tables.len(),
            build_secs,
        });
        let mut state = DatasetState {
            name: ds.name(),
            db: ds.db(),
            size_bytes,
            tables,
            want,
            floor: None,
        };
        for &sc in &cfg.configs {
            apply_server_config(&ctx, sc)?;
            for round in 1..=cfg.runs {
                // Every link in each round, so drift over the rounds hits
                // every link alike; within a link, the tools alternate and
                // the starting tool rotates between rounds.
                for &link in &cfg.links {
                    ctx.set_link(link);
                    let here: Vec<Tool> = tools
                        .iter()
                        .copied()
                        .filter(|t| !link.baseline || *t == Tool::Stream)
                        .collect();
                    let k = here.len();
                    for j in 0..k {
                        let tool = here[(j + round - 1) % k];
                        let t0 = Instant::now();
                        let result = tools::run_one(&ctx, &mut state, tool, round);
                        match &result {
                            Ok(ok) => eprintln!(
                                "[{:>6.0}s] {} {} {} round {round}: {:<20} {}{}{}",
                                started.elapsed().as_secs_f64(),
                                state.name,
                                sc.name(),
                                link.tag(),
                                tool.name(),
                                if ok.timed_out {
                                    format!("> {:.0}s (killed at the time limit)", ok.secs)
                                } else {
                                    format!("{:>8.2}s", ok.secs)
                                },
                                ok.parts
                                    .iter()
                                    .map(|(n, s)| format!(" {n}={s:.2}"))
                                    .collect::<String>(),
                                ok.describe_cpu()
                            ),
                            Err(e) => eprintln!(
                                "[{:>6.0}s] {} {} {} round {round}: {:<20} FAILED after {:.1}s: {e:#}",
                                started.elapsed().as_secs_f64(),
                                state.name,
                                sc.name(),
                                link.tag(),
                                tool.name(),
                                t0.elapsed().as_secs_f64()
                            ),
                        }
                        report.runs.push(RunRecord {
                            dataset: state.name.clone(),
                            size_bytes: state.size_bytes,
                            config: sc,
                            link,
                            tool,
                            round,
                            result: result.map_err(|e| format!("{e:#}")),
                        });
                    }
                    report.elapsed_secs = started.elapsed().as_secs_f64();
                    std::fs::write(&results_md, report.markdown())?;
                    std::fs::write(&results_csv, report.csv())?;
                }
            }
            report.elapsed_secs = started.elapsed().as_secs_f64();
            std::fs::write(&results_md, report.markdown())?;
            std::fs::write(&results_csv, report.csv())?;
        }
        tools::drop_floor(&mut state);
        let _ = util::exec(
            &ctx.src.conninfo("postgres"),
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", state.db),
        );
    }
    let _ = util::exec(
        &ctx.tgt.conninfo("postgres"),
        &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", tools::TARGET_DB),
    );
    report.elapsed_secs = started.elapsed().as_secs_f64();
    let md = report.markdown();
    std::fs::write(&results_md, &md)?;
    std::fs::write(&results_csv, report.csv())?;
    println!("{}", report.text_table());
    println!(
        "full results: {}\nper-run CSV: {}\ntool logs: {}\ntotal time: {:.0}s",
        results_md.display(),
        results_csv.display(),
        ctx.logs.display(),
        report.elapsed_secs
    );
    // Servers stop (testkit) and the work dir goes away on drop.
    drop(ctx);
    drop(work_root);
    Ok(())
}

fn git_commit() -> String {
    let git = |args: &[&str]| {
        Command::new("git")
            .arg("-C")
            .arg(manifest_dir())
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let Some(head) = git(&["rev-parse", "--short=12", "HEAD"]) else {
        return "unknown (not a git checkout)".into();
    };
    let dirty = git(&[
        "status",
        "--porcelain",
        "--",
        "src",
        "Cargo.toml",
        "Cargo.lock",
    ])
    .is_some_and(|s| !s.is_empty());
    if dirty {
        format!("{head} (+ uncommitted changes in src/)")
    } else {
        head
    }
}
