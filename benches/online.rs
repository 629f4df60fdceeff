//! `cargo bench --bench online`: online migration (`migrate --mode online`)
//! on two throwaway PostgreSQL servers. See BENCHMARKS.md, "Online
//! migration". Two measurements in one run:
//!
//! * **catch-up**: a backlog of pgbench transactions is written on the
//!   source while the apply is held back (our process SIGSTOPped; the native
//!   subscription disabled), then released; the time until the target has
//!   applied the backlog gives transactions per second, ours against
//!   PostgreSQL's built-in logical replication (`CREATE SUBSCRIPTION`).
//! * **downtime**: rate-limited pgbench on the source while
//!   `migrate --mode online --cutover auto` runs; the tool's measured write
//!   downtime (fence to done), and what the clients saw.
//!
//! Environment:
//!
//! * `BENCH_ONLINE_TXNS` — backlog size in pgbench transactions (default 100000).
//! * `BENCH_ONLINE_SCALE` — `pgbench -i -s` scale (default 10).
//! * `BENCH_RUNS` — rounds of each measurement (default 3).
//! * `BENCH_ONLINE_RATE` — pgbench `-R` during the downtime runs (default 1000).
//! * `BENCH_ONLINE_LOAD_SECS` — pgbench `-T` during the downtime runs (default 60).
//! * `BENCH_ONLINE_PARTS` — `catchup`, `downtime`, `rollback` (default
//!   `catchup,downtime`). `rollback`: a `--fallback` migration with an
//!   automatic cutover, then pgbench `-R` on the *new* server while
//!   `pg_dbmigrator rollback` returns to the old one; the target then runs
//!   with `wal_level = logical`.
//! * `governor` (also in `BENCH_ONLINE_PARTS`): `pgbench -R` on the
//!   source while our *offline* copy of a bigger pgbench database runs,
//!   once without `--max-rate` and once with it; pgbench's p50/p99
//!   latency over the copy window, from its per-transaction log:
//!   * `BENCH_GOVERNOR_SCALE` — `pgbench -i -s` of the copied database
//!     (default 30: `pgbench_accounts` about 400 MB);
//!   * `BENCH_GOVERNOR_RATE` — pgbench `-R` (default 500);
//!   * `BENCH_GOVERNOR_MAX_RATE` — our `--max-rate` in the governed runs
//!     (default 20MB).
//! * `BENCH_JOBS` — `--jobs` of our migrate (default 2).
//! * `BENCH_BIN` — benchmark this pg_dbmigrator binary instead of the one
//!   cargo builds from this checkout.
//! * `BENCH_WORKDIR` — where the migrations' work directories go (default:
//!   a fresh directory in the temp dir, deleted at the end).

#[allow(dead_code)]
mod common;

use std::fmt::Write as _;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context as _, Result};
use pg_dbmigrator::testkit::{Cluster, ClusterOptions};

use common::util::{block, connect, exec, first_line, machine_facts, median, query_one, tail_of};

/// Extra settings of both servers, on top of the migrate bench's
/// production-like ones ([`common::SERVER_CONF`]).
const ONLINE_CONF: &[(&str, &str)] = &[
    ("max_replication_slots", "10"),
    ("max_wal_senders", "10"),
    ("max_worker_processes", "16"),
];

/// Source only: our apply is SIGSTOPped while the backlog is written, and a
/// walsender whose client does not answer would otherwise end the session
/// after wal_sender_timeout (60 s).
const SOURCE_ONLY_CONF: &[(&str, &str)] = &[("wal_sender_timeout", "0")];

/// Polling interval of every "has it arrived yet" loop.
const POLL: Duration = Duration::from_millis(20);
const PGBENCH_CLIENTS: u32 = 4;
const PGBENCH_THREADS: u32 = 2;

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| default.to_string())
}

#[derive(Debug, Clone)]
struct Config {
    txns: u64,
    scale: u32,
    runs: usize,
    rate: u32,
    load_secs: u32,
    jobs: usize,
    catchup: bool,
    downtime: bool,
    rollback: bool,
    governor: bool,
    gov_scale: u32,
    gov_rate: u32,
    gov_max_rate: String,
}

impl Config {
    fn from_env() -> Result<Config> {
        let txns: u64 = env_or("BENCH_ONLINE_TXNS", "100000")
            .parse()
            .context("BENCH_ONLINE_TXNS")?;
        let scale: u32 = env_or("BENCH_ONLINE_SCALE", "10")
            .parse()
            .context("BENCH_ONLINE_SCALE")?;
        let runs: usize = env_or("BENCH_RUNS", "3").parse().context("BENCH_RUNS")?;
        let rate: u32 = env_or("BENCH_ONLINE_RATE", "1000")
            .parse()
            .context("BENCH_ONLINE_RATE")?;
        let load_secs: u32 = env_or("BENCH_ONLINE_LOAD_SECS", "60")
            .parse()
            .context("BENCH_ONLINE_LOAD_SECS")?;
        let jobs: usize = env_or("BENCH_JOBS", "2").parse().context("BENCH_JOBS")?;
        let parts = env_or("BENCH_ONLINE_PARTS", "catchup,downtime");
        let parts: Vec<&str> = parts.split(',').map(str::trim).collect();
        for p in &parts {
            if !matches!(*p, "catchup" | "downtime" | "rollback" | "governor" | "") {
                bail!("BENCH_ONLINE_PARTS: unknown part {p:?} (catchup, downtime, rollback, governor)");
            }
        }
        if txns < PGBENCH_CLIENTS as u64 || scale == 0 || runs == 0 || rate == 0 || jobs == 0 {
            bail!("BENCH_ONLINE_TXNS must be at least 4; the scale, BENCH_RUNS, the rate and BENCH_JOBS at least 1");
        }
        Ok(Config {
            txns,
            scale,
            runs,
            rate,
            load_secs,
            jobs,
            catchup: parts.contains(&"catchup"),
            downtime: parts.contains(&"downtime"),
            rollback: parts.contains(&"rollback"),
            governor: parts.contains(&"governor"),
            gov_scale: env_or("BENCH_GOVERNOR_SCALE", "30")
                .parse()
                .context("BENCH_GOVERNOR_SCALE")?,
            gov_rate: env_or("BENCH_GOVERNOR_RATE", "500")
                .parse()
                .context("BENCH_GOVERNOR_RATE")?,
            gov_max_rate: env_or("BENCH_GOVERNOR_MAX_RATE", "20MB"),
        })
    }

    /// Transactions per pgbench client for the backlog (`-t`).
    fn per_client(&self) -> u64 {
        self.txns / PGBENCH_CLIENTS as u64
    }

    fn backlog(&self) -> u64 {
        self.per_client() * PGBENCH_CLIENTS as u64
    }
}

struct Ctx {
    cfg: Config,
    src: Cluster,
    tgt: Cluster,
    bin: PathBuf,
    work: PathBuf,
    logs: PathBuf,
    started: Instant,
}

fn uri(c: &Cluster, db: &str) -> String {
    format!(
        "postgres://{}:{}@{}:{}/{}?sslmode=disable",
        c.superuser, c.password, c.host, c.port, db
    )
}

impl Ctx {
    fn say(&self, msg: impl AsRef<str>) {
        eprintln!(
            "[{:>6.0}s] {}",
            self.started.elapsed().as_secs_f64(),
            msg.as_ref()
        );
    }

    fn pgbench(&self, c: &Cluster) -> Command {
        let mut cmd = Command::new(c.bin_dir.join("pgbench"));
        cmd.args(["-h", &c.host, "-p", &c.port.to_string(), "-U", &c.superuser])
            .env("PGPASSWORD", &c.password)
            .stdin(Stdio::null());
        cmd
    }

    fn migrate_cmd(&self, db: &str, dump: &Path, cutover: &str) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.args([
            "migrate",
            "--mode",
            "online",
            "--cutover",
            cutover,
            "--json",
        ])
        .arg("--source")
        .arg(uri(&self.src, db))
        .arg("--target")
        .arg(uri(&self.tgt, db))
        .args(["--jobs", &self.cfg.jobs.to_string()])
        // pgbench_history has no key; TPC-B only inserts into it, but a
        // preflight may insist on an identity for every table.
        .arg("--fix-replica-identity")
        .arg("--dump-path")
        .arg(dump)
        .stdin(Stdio::null());
        // Its own process group: a group with a stopped member that becomes
        // orphaned (e.g. the shell that started the bench exits) gets
        // SIGCONT from the kernel, which would end our SIGSTOP early.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        cmd
    }

    /// A fresh source database with `pgbench -i -s <scale>`, and an empty
    /// database of the same name on the target.
    fn fresh_pair(&self, db: &str) -> Result<()> {
        self.drop_pair(db);
        exec(
            &self.tgt.conninfo("postgres"),
            &format!("CREATE DATABASE {db}"),
        )?;
        self.pgbench_source(db, self.cfg.scale)?;
        exec(&self.tgt.conninfo("postgres"), "CHECKPOINT")?;
        Ok(())
    }

    /// A new source database `db` with `pgbench -i -s <scale>`,
    /// checkpointed.
    fn pgbench_source(&self, db: &str, scale: u32) -> Result<()> {
        exec(
            &self.src.conninfo("postgres"),
            &format!("CREATE DATABASE {db}"),
        )?;
        let mut init = self.pgbench(&self.src);
        init.args(["-i", "-q", "-s", &scale.to_string(), db]);
        run_ok(&mut init, "pgbench -i")?;
        exec(&self.src.conninfo("postgres"), "CHECKPOINT")
    }

    /// Remove both databases and anything replicating out of or into them.
    fn drop_pair(&self, db: &str) {
        let tgt_db = self.tgt.conninfo(db);
        if let Ok(subs) = common::util::query(&tgt_db, "SELECT subname::text FROM pg_subscription WHERE subdbid = (SELECT oid FROM pg_database WHERE datname = current_database())") {
            for s in subs.into_iter().filter_map(|r| r.into_iter().next().flatten()) {
                let q = common::util::ident(&s);
                let _ = exec(&tgt_db, &format!("ALTER SUBSCRIPTION {q} DISABLE"));
                let _ = exec(&tgt_db, &format!("ALTER SUBSCRIPTION {q} SET (slot_name = NONE)"));
                let _ = exec(&tgt_db, &format!("DROP SUBSCRIPTION {q}"));
            }
        }
        let _ = exec(
            &self.src.conninfo("postgres"),
            &format!(
                "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE database = '{db}' AND active_pid IS NOT NULL"
            ),
        );
        std::thread::sleep(Duration::from_millis(200));
        let _ = exec(
            &self.src.conninfo("postgres"),
            &format!(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = '{db}' AND NOT active"
            ),
        );
        for c in [&self.src, &self.tgt] {
            let _ = exec(
                &c.conninfo("postgres"),
                &format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"),
            );
        }
    }

    fn current_lsn(&self, db: &str) -> Result<String> {
        query_one(&self.src.conninfo(db), "SELECT pg_current_wal_lsn()::text")
    }

    /// The backlog: `pgbench -n -t <txns/4> -c 4 -j 2` (TPC-B) on the
    /// source. Returns pgbench's tps.
    fn backlog(&self, db: &str, log: &Path) -> Result<f64> {
        let mut cmd = self.pgbench(&self.src);
        cmd.args([
            "-n",
            "-t",
            &self.cfg.per_client().to_string(),
            "-c",
            &PGBENCH_CLIENTS.to_string(),
            "-j",
            &PGBENCH_THREADS.to_string(),
            db,
        ]);
        let out = run_ok(&mut cmd, "pgbench (backlog)")?;
        std::fs::write(log, &out)?;
        let processed =
            pgbench_field(&out, "number of transactions actually processed:").and_then(|v| {
                v.split('/')
                    .next()
                    .and_then(|n| n.trim().parse::<u64>().ok())
            });
        if processed != Some(self.cfg.backlog()) {
            bail!(
                "pgbench processed {processed:?} transactions, {} expected:\n{out}",
                self.cfg.backlog()
            );
        }
        pgbench_field(&out, "tps =")
            .and_then(|v| v.split_whitespace().next().and_then(|n| n.parse().ok()))
            .ok_or_else(|| anyhow!("no tps in pgbench's output:\n{out}"))
    }

    /// After the backlog: a one-row transaction committed after `L`, so a
    /// source commit at or beyond `L` exists whatever else (autovacuum,
    /// running-xacts records) wrote WAL after the backlog's last commit.
    fn marker(&self, db: &str) -> Result<()> {
        exec(
            &self.src.conninfo(db),
            "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (0, 0, 0, 0, now())",
        )
    }
}

/// Run a helper to completion; its stdout and stderr together, or an error
/// quoting them.
fn run_ok(cmd: &mut Command, what: &str) -> Result<String> {
    let out = cmd.output().with_context(|| format!("starting {what}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        bail!("{what} failed ({}): {text}", out.status);
    }
    Ok(text)
}

fn pgbench_field<'a>(out: &'a str, key: &str) -> Option<&'a str> {
    out.lines()
        .find_map(|l| l.trim().strip_prefix(key))
        .map(str::trim)
}

fn parse_lsn(s: &str) -> Result<u64> {
    let (hi, lo) = s
        .trim()
        .split_once('/')
        .ok_or_else(|| anyhow!("odd LSN {s:?}"))?;
    Ok((u64::from_str_radix(hi, 16)? << 32) | u64::from_str_radix(lo, 16)?)
}

fn signal(pid: u32, sig: &str) -> Result<()> {
    let st = Command::new("kill")
        .args(["-s", sig, &pid.to_string()])
        .status()
        .context("running kill")?;
    if !st.success() {
        bail!("kill -s {sig} {pid} failed");
    }
    Ok(())
}

/// A child process that is continued and killed if the bench gives up on it.
struct Proc {
    child: Option<Child>,
    what: String,
    log: PathBuf,
}

impl Proc {
    fn spawn(mut cmd: Command, what: &str, stdout: &Path, log: &Path) -> Result<Proc> {
        cmd.stdout(Stdio::from(File::create(stdout)?))
            .stderr(Stdio::from(File::create(log)?));
        let child = cmd.spawn().with_context(|| format!("starting {what}"))?;
        Ok(Proc {
            child: Some(child),
            what: what.to_string(),
            log: log.to_path_buf(),
        })
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Exit status if it has ended (then it is reaped).
    fn poll(&mut self) -> Result<Option<ExitStatus>> {
        let Some(c) = self.child.as_mut() else {
            bail!("{} already reaped", self.what);
        };
        let s = c.try_wait()?;
        if s.is_some() {
            self.child = None;
        }
        Ok(s)
    }

    /// An error if it ended already (with its log's tail).
    fn still_running(&mut self) -> Result<()> {
        if let Some(s) = self.poll()? {
            bail!(
                "{} exited early with {s}; log {}:\n{}",
                self.what,
                self.log.display(),
                tail_of(&self.log, 3000)
            );
        }
        Ok(())
    }

    fn wait(&mut self, limit: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(s) = self.poll()? {
                return Ok(s);
            }
            if Instant::now() > deadline {
                bail!(
                    "{} still running after {}s; log {}:\n{}",
                    self.what,
                    limit.as_secs(),
                    self.log.display(),
                    tail_of(&self.log, 3000)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = signal(c.id(), "CONT");
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn token_path(dump: &Path) -> PathBuf {
    let mut s = dump.as_os_str().to_owned();
    s.push(".resume.json");
    PathBuf::from(s)
}

/// The resume token, if it is there and readable right now (it is being
/// rewritten while we read).
fn read_token(dump: &Path) -> Option<serde_json::Value> {
    let text = std::fs::read_to_string(token_path(dump)).ok()?;
    serde_json::from_str(&text).ok()
}

fn token_has_stage(t: &serde_json::Value, stage: &str) -> bool {
    t["stages"]
        .as_array()
        .is_some_and(|a| a.iter().any(|s| s["stage"] == stage))
}

fn unix_secs(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

// ---------------------------------------------------------------- catch-up

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Applier {
    Ours,
    Native,
}

impl Applier {
    fn name(self) -> &'static str {
        match self {
            Applier::Ours => "pg_dbmigrator (online)",
            Applier::Native => "native subscription",
        }
    }
}

#[derive(Debug, Clone)]
struct CatchUp {
    applier: Applier,
    round: usize,
    /// Initial copy: ours from spawn to the "stream" stage; native from
    /// CREATE SUBSCRIPTION to every table 'r'.
    copy_secs: f64,
    source_tps: f64,
    backlog_bytes: u64,
    secs: f64,
    /// From the release to the first applied commit seen on the target.
    first_commit_secs: Option<f64>,
    /// CPU used from the release to done.
    cpu: CpuUse,
    /// Ours: the report's online.apply.transactions; native: none.
    applied_txns: Option<u64>,
    note: String,
}

impl CatchUp {
    fn tps(&self, backlog: u64) -> f64 {
        backlog as f64 / self.secs
    }
}

/// CPU seconds (user + system) a process has used so far, from
/// `/proc/<pid>/stat`.
fn cpu_secs(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after "pid (comm) ": state is the 1st, utime the 12th, stime the 13th.
    let f: Vec<&str> = s[s.rfind(')')? + 1..].split_whitespace().collect();
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / clock_ticks())
}

fn clock_ticks() -> f64 {
    static T: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *T.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// The processes whose CPU a catch-up is charged with: the source's
/// walsenders, the target's sessions and workers in the database (not the
/// bench's own), and our migrate process.
#[derive(Debug, Clone, Copy, Default)]
struct CpuUse {
    walsender: f64,
    target: f64,
    tool: Option<f64>,
}

type CpuSnapshot = Vec<(&'static str, u32, f64)>;

fn cpu_snapshot(ctx: &Ctx, db: &str, tool: Option<u32>) -> Result<CpuSnapshot> {
    let mut v = Vec::new();
    let pids = |ci: &str, sql: &str| -> Result<Vec<u32>> {
        Ok(common::util::query(ci, sql)?
            .into_iter()
            .filter_map(|r| r.into_iter().next().flatten())
            .filter_map(|p| p.parse().ok())
            .collect())
    };
    for pid in pids(
        &ctx.src.conninfo("postgres"),
        "SELECT pid::text FROM pg_stat_activity WHERE backend_type = 'walsender'",
    )? {
        v.push(("walsender", pid, cpu_secs(pid).unwrap_or(0.0)));
    }
    for pid in pids(
        &ctx.tgt.conninfo(db),
        "SELECT pid::text FROM pg_stat_activity WHERE datname = current_database() \
           AND pid <> pg_backend_pid() AND application_name <> 'bench_probe' \
           AND backend_type IN ('client backend', 'logical replication worker')",
    )? {
        v.push(("target", pid, cpu_secs(pid).unwrap_or(0.0)));
    }
    if let Some(pid) = tool {
        v.push(("tool", pid, cpu_secs(pid).unwrap_or(0.0)));
    }
    Ok(v)
}

/// CPU used between two snapshots (a process only in `after` counts from its start).
fn cpu_between(before: &CpuSnapshot, after: &CpuSnapshot) -> CpuUse {
    let mut u = CpuUse::default();
    for (kind, pid, t) in after {
        let t0 = before
            .iter()
            .find(|(k, p, _)| k == kind && p == pid)
            .map_or(0.0, |x| x.2);
        let d = (t - t0).max(0.0);
        match *kind {
            "walsender" => u.walsender += d,
            "target" => u.target += d,
            _ => *u.tool.get_or_insert(0.0) += d,
        }
    }
    u
}

/// The process is in the stopped state (`T` in `/proc/<pid>/stat`); a
/// SIGSTOP just sent may take a moment to stop every thread.
fn is_stopped(pid: u32) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        let state = stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().next())
            .unwrap_or("?")
            .to_string();
        if state == "T" {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("migrate (pid {pid}) should be stopped (SIGSTOP) but its state is {state}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Before the release: none of the backlog is on the target yet (pgbench
/// starts with an empty pgbench_history and the backlog inserts into it).
fn held_back(tgt_db: &str) -> Result<()> {
    let n = query_one(tgt_db, "SELECT count(*)::text FROM pgbench_history")?;
    if n != "0" {
        bail!("the apply was not held back: the target already has {n} pgbench_history rows of the backlog");
    }
    Ok(())
}

/// Release the apply (`release`), then poll `probe` (`done bool, position
/// text`) every 20 ms until it says done. Returns the seconds from the
/// release to done, and to the first change of the position (the first
/// commit applied on the target).
async fn timed_catch_up(
    c: &tokio_postgres::Client,
    probe: &str,
    release: impl std::future::Future<Output = Result<()>>,
) -> Result<(f64, Option<f64>)> {
    let stmt = c.prepare(probe).await?;
    let before: Option<String> = c.query_one(&stmt, &[]).await?.get(1);
    let t0 = Instant::now();
    release.await?;
    let mut first = None;
    loop {
        let row = c.query_one(&stmt, &[]).await?;
        let done: bool = row.get(0);
        let pos: Option<String> = row.get(1);
        if first.is_none() && pos != before {
            first = Some(t0.elapsed().as_secs_f64());
        }
        if done {
            return Ok((t0.elapsed().as_secs_f64(), first));
        }
        if t0.elapsed() > Duration::from_secs(1800) {
            bail!("the backlog was not applied within 30 min");
        }
        tokio::time::sleep(POLL).await;
    }
}

fn catchup_ours(ctx: &Ctx, round: usize, db: &str) -> Result<CatchUp> {
    ctx.fresh_pair(db)?;
    let dump = ctx.work.join(format!("ours-{round}"));
    let log = ctx.logs.join(format!("catchup-ours-{round}.log"));
    let json = ctx.logs.join(format!("catchup-ours-{round}.json"));
    let t_spawn = Instant::now();
    let mut m = Proc::spawn(
        ctx.migrate_cmd(db, &dump, "manual"),
        "pg_dbmigrator migrate --mode online",
        &json,
        &log,
    )?;
    // Streaming begins once the copy is done.
    let deadline = Instant::now() + Duration::from_secs(900);
    while !read_token(&dump).is_some_and(|t| token_has_stage(&t, "stream")) {
        m.still_running()?;
        if Instant::now() > deadline {
            bail!("no \"stream\" stage after 900 s:\n{}", tail_of(&log, 3000));
        }
        std::thread::sleep(POLL);
    }
    let copy_secs = t_spawn.elapsed().as_secs_f64();
    // The walsender is attached and the progress row is there.
    let src_db = ctx.src.conninfo(db);
    let tgt_db = ctx.tgt.conninfo(db);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        m.still_running()?;
        let active: i64 = query_one(
            &src_db,
            "SELECT count(*)::text FROM pg_replication_slots WHERE database = current_database() AND active",
        )?
        .parse()?;
        let progress = query_one(
            &tgt_db,
            "SELECT (to_regclass('_pg_dbmigrator.progress') IS NOT NULL)::text",
        )?;
        if active > 0 && progress == "true" {
            break;
        }
        if Instant::now() > deadline {
            bail!("the slot never became active:\n{}", tail_of(&log, 3000));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(1));
    m.still_running()?;
    signal(m.pid(), "STOP")?;
    is_stopped(m.pid())?;
    let l0 = ctx.current_lsn(db)?;
    let source_tps = ctx.backlog(db, &ctx.logs.join(format!("catchup-ours-{round}.pgbench")))?;
    let l = ctx.current_lsn(db)?;
    ctx.marker(db)?;
    exec(&ctx.tgt.conninfo("postgres"), "CHECKPOINT")?;
    held_back(&tgt_db)?;
    let pid = m.pid();
    is_stopped(pid)?;
    let probe = format!(
        "SELECT coalesce(bool_or(end_lsn >= '{l}'::pg_lsn), false), max(end_lsn)::text FROM _pg_dbmigrator.progress"
    );
    let probe_ci = format!("{tgt_db} application_name=bench_probe");
    let cpu0 = cpu_snapshot(ctx, db, Some(pid))?;
    let (secs, first_commit_secs) = block(async {
        let c = connect(&probe_ci).await?;
        timed_catch_up(&c, &probe, async { signal(pid, "CONT") }).await
    })
    .with_context(|| format!("waiting for our apply; log:\n{}", tail_of(&log, 3000)))?;
    let cpu = cpu_between(&cpu0, &cpu_snapshot(ctx, db, Some(pid))?);
    m.still_running()?;
    // Finish: manual cutover from another process, then the migration's
    // verify; both must be clean.
    let mut cut = Command::new(&ctx.bin);
    cut.arg("cutover").arg("--dump-path").arg(&dump);
    let cut_out = run_ok(&mut cut, "pg_dbmigrator cutover")
        .with_context(|| format!("migrate log:\n{}", tail_of(&log, 3000)))?;
    let status = m.wait(Duration::from_secs(900))?;
    let report = std::fs::read_to_string(&json).unwrap_or_default();
    if !status.success() {
        bail!(
            "migrate exited with {status}; log {}:\n{}",
            log.display(),
            tail_of(&log, 3000)
        );
    }
    let report: serde_json::Value =
        report_of(&report).with_context(|| format!("the report {}", json.display()))?;
    let diffs = report["verify"]["differences"]
        .as_array()
        .map_or(usize::MAX, Vec::len);
    if diffs != 0 {
        bail!("verify found {diffs} difference(s): {}", report["verify"]);
    }
    let applied_txns = report["online"]["apply"]["transactions"].as_u64();
    let note = format!(
        "verify clean; {}",
        cut_out
            .lines()
            .find(|l| l.starts_with("cutover:"))
            .unwrap_or("cutover done")
    );
    let _ = std::fs::remove_dir_all(&dump);
    Ok(CatchUp {
        applier: Applier::Ours,
        round,
        copy_secs,
        source_tps,
        backlog_bytes: parse_lsn(&l)?.saturating_sub(parse_lsn(&l0)?),
        secs,
        first_commit_secs,
        cpu,
        applied_txns,
        note,
    })
}

fn catchup_native(ctx: &Ctx, round: usize, db: &str) -> Result<CatchUp> {
    ctx.fresh_pair(db)?;
    let src_db = ctx.src.conninfo(db);
    let tgt_db = ctx.tgt.conninfo(db);
    let sub = format!("bench_sub_{round}");
    // The schema only on the target: drop, tables, primary keys; no data.
    let mut schema = ctx.pgbench(&ctx.tgt);
    schema.args([
        "-i",
        "-q",
        "-I",
        "dtp",
        "-s",
        &ctx.cfg.scale.to_string(),
        db,
    ]);
    run_ok(&mut schema, "pgbench -i -I dtp (target)")?;
    exec(&src_db, "CREATE PUBLICATION bench_pub FOR ALL TABLES")?;
    let t_create = Instant::now();
    exec(
        &tgt_db,
        &format!(
            "CREATE SUBSCRIPTION {sub} CONNECTION '{}' PUBLICATION bench_pub WITH (copy_data = true)",
            ctx.src.conninfo(db).replace('\'', "''")
        ),
    )?;
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        let pending = query_one(
            &tgt_db,
            "SELECT (count(*) FILTER (WHERE srsubstate <> 'r') + CASE WHEN count(*) = 0 THEN 1 ELSE 0 END)::text FROM pg_subscription_rel",
        )?;
        if pending == "0" {
            break;
        }
        if Instant::now() > deadline {
            bail!("the subscription's tables were not all ready after 900 s");
        }
        std::thread::sleep(POLL);
    }
    let copy_secs = t_create.elapsed().as_secs_f64();
    exec(&tgt_db, &format!("ALTER SUBSCRIPTION {sub} DISABLE"))?;
    // The apply worker and its walsender are gone.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let active = query_one(
            &src_db,
            &format!("SELECT count(*)::text FROM pg_replication_slots WHERE slot_name = '{sub}' AND active"),
        )?;
        let workers = query_one(
            &tgt_db,
            &format!("SELECT count(pid)::text FROM pg_stat_subscription WHERE subname = '{sub}'"),
        )?;
        if active == "0" && workers == "0" {
            break;
        }
        if Instant::now() > deadline {
            bail!("the subscription's worker did not stop after DISABLE");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let disabled_at = Instant::now();
    let l0 = ctx.current_lsn(db)?;
    let source_tps = ctx.backlog(
        db,
        &ctx.logs.join(format!("catchup-native-{round}.pgbench")),
    )?;
    let l = ctx.current_lsn(db)?;
    ctx.marker(db)?;
    exec(&ctx.tgt.conninfo("postgres"), "CHECKPOINT")?;
    held_back(&tgt_db)?;
    let oid = query_one(
        &tgt_db,
        &format!("SELECT oid::text FROM pg_subscription WHERE subname = '{sub}'"),
    )?;
    let probe = format!(
        "SELECT coalesce(bool_or(remote_lsn >= '{l}'::pg_lsn), false), max(remote_lsn)::text FROM pg_replication_origin_status WHERE external_id = 'pg_{oid}'"
    );
    let enable = format!("ALTER SUBSCRIPTION {sub} ENABLE");
    // The launcher starts a subscription's worker at most once per
    // wal_retrieve_retry_interval (5 s) and ignores a wake-up that comes
    // sooner; after a short backlog, wait that out so the release is not
    // delayed by it.
    std::thread::sleep(Duration::from_secs(6).saturating_sub(disabled_at.elapsed()));
    let probe_ci = format!("{tgt_db} application_name=bench_probe");
    let cpu0 = cpu_snapshot(ctx, db, None)?;
    let (secs, first_commit_secs) = block(async {
        let c = connect(&probe_ci).await?;
        timed_catch_up(&c, &probe, async {
            c.batch_execute(&enable).await.map_err(anyhow::Error::from)
        })
        .await
    })?;
    let cpu = cpu_between(&cpu0, &cpu_snapshot(ctx, db, None)?);
    // A loose check that the backlog really arrived.
    let check = "SELECT (SELECT sum(abalance) FROM pgbench_accounts)::text || ' ' || (SELECT count(*) FROM pgbench_history)::text";
    let (a, b) = (query_one(&src_db, check)?, query_one(&tgt_db, check)?);
    if a != b {
        bail!(
            "after the catch-up the target has sum(abalance), count(history) = {b}, the source {a}"
        );
    }
    exec(&tgt_db, &format!("DROP SUBSCRIPTION {sub}"))?;
    Ok(CatchUp {
        applier: Applier::Native,
        round,
        copy_secs,
        source_tps,
        backlog_bytes: parse_lsn(&l)?.saturating_sub(parse_lsn(&l0)?),
        secs,
        first_commit_secs,
        cpu,
        applied_txns: None,
        note: format!("sum(abalance), count(pgbench_history) equal: {a}"),
    })
}

// ---------------------------------------------------------------- downtime

#[derive(Debug, Clone)]
struct Downtime {
    round: usize,
    /// online.cutover.downtime_seconds: fence to done, measured by the tool.
    tool_secs: f64,
    /// From the last transaction pgbench completed on the source to the
    /// moment the bench saw the cutover completed in the token.
    client_gap_secs: Option<f64>,
    fence_lsn: String,
    /// From spawning migrate to the cutover's start (copy, catch-up).
    to_cutover_secs: Option<f64>,
    apply_txns: Option<u64>,
    pgbench_processed: Option<u64>,
    pgbench_failed: Option<u64>,
    aborted_clients: usize,
    pgbench_exit: String,
    /// pgbench was still writing when the fence came (it was cut off, not
    /// finished by -T).
    load_at_fence: bool,
}

fn downtime_run(ctx: &Ctx, round: usize, db: &str) -> Result<Downtime> {
    ctx.fresh_pair(db)?;
    let dump = ctx.work.join(format!("cut-{round}"));
    let log = ctx.logs.join(format!("downtime-{round}.log"));
    let json = ctx.logs.join(format!("downtime-{round}.json"));
    let pgb_dir = ctx.work.join(format!("pgbench-log-{round}"));
    std::fs::create_dir_all(&pgb_dir)?;
    let mut load = ctx.pgbench(&ctx.src);
    load.args([
        "-n",
        "-c",
        &PGBENCH_CLIENTS.to_string(),
        "-j",
        &PGBENCH_THREADS.to_string(),
        "-T",
        &ctx.cfg.load_secs.to_string(),
        "-R",
        &ctx.cfg.rate.to_string(),
        "-l",
    ])
    .arg(format!("--log-prefix={}", pgb_dir.join("tx").display()))
    .arg(db);
    let pgb_out = ctx.logs.join(format!("downtime-{round}.pgbench"));
    let pgb_err = ctx.logs.join(format!("downtime-{round}.pgbench.err"));
    let t_load = Instant::now();
    let mut pgb = Proc::spawn(load, "pgbench -R", &pgb_out, &pgb_err)?;
    std::thread::sleep(Duration::from_secs(2));
    pgb.still_running()?;
    let t_spawn = Instant::now();
    let mut m = Proc::spawn(
        ctx.migrate_cmd(db, &dump, "auto"),
        "pg_dbmigrator migrate --mode online --cutover auto",
        &json,
        &log,
    )?;
    let mut started_seen: Option<Instant> = None;
    let mut done_at: Option<SystemTime> = None;
    let deadline = Instant::now() + Duration::from_secs(900);
    let status = loop {
        if let Some(s) = m.poll()? {
            break s;
        }
        if started_seen.is_none() || done_at.is_none() {
            if let Some(t) = read_token(&dump) {
                let c = &t["online"]["cutover"];
                if started_seen.is_none() && c["started_at"].is_string() {
                    started_seen = Some(Instant::now());
                }
                if done_at.is_none() && c["completed"] == true {
                    done_at = Some(SystemTime::now());
                }
            }
        }
        if Instant::now() > deadline {
            bail!(
                "migrate still running after 900 s:\n{}",
                tail_of(&log, 3000)
            );
        }
        std::thread::sleep(POLL);
    };
    let load_limit = Duration::from_secs(ctx.cfg.load_secs as u64 + 60)
        .saturating_sub(t_load.elapsed())
        .max(Duration::from_secs(5));
    let pgb_status = pgb.wait(load_limit)?;
    let report = std::fs::read_to_string(&json).unwrap_or_default();
    if !status.success() {
        bail!(
            "migrate exited with {status}; log {}:\n{}",
            log.display(),
            tail_of(&log, 3000)
        );
    }
    let report: serde_json::Value =
        report_of(&report).with_context(|| format!("the report {}", json.display()))?;
    let diffs = report["verify"]["differences"]
        .as_array()
        .map_or(usize::MAX, Vec::len);
    if diffs != 0 {
        bail!("verify found {diffs} difference(s): {}", report["verify"]);
    }
    let tool_secs = report["online"]["cutover"]["downtime_seconds"]
        .as_f64()
        .ok_or_else(|| anyhow!("no online.cutover.downtime_seconds in {report}"))?;
    let fence_lsn = report["online"]["cutover"]["fence_lsn"]
        .as_str()
        .unwrap_or("–")
        .to_string();

    let out = format!(
        "{}{}",
        std::fs::read_to_string(&pgb_out).unwrap_or_default(),
        std::fs::read_to_string(&pgb_err).unwrap_or_default()
    );
    let num = |key: &str| {
        pgbench_field(&out, key)
            .and_then(|v| v.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|v| v.parse::<u64>().ok())
    };
    let aborted_clients = out
        .lines()
        .filter(|l| l.contains("client") && l.contains("aborted"))
        .count();
    let last_ok = last_ok_transaction(&pgb_dir)?;
    let client_gap_secs = match (done_at, last_ok) {
        (Some(d), Some(l)) => Some(unix_secs(d) - l),
        _ => None,
    };
    let load_at_fence = !pgb_status.success() && aborted_clients > 0;
    let _ = std::fs::remove_dir_all(&dump);
    let _ = std::fs::remove_dir_all(&pgb_dir);
    Ok(Downtime {
        round,
        tool_secs,
        client_gap_secs,
        fence_lsn,
        to_cutover_secs: started_seen.map(|s| (s - t_spawn).as_secs_f64()),
        apply_txns: report["online"]["apply"]["transactions"].as_u64(),
        pgbench_processed: num("number of transactions actually processed:"),
        pgbench_failed: num("number of failed transactions:"),
        aborted_clients,
        pgbench_exit: pgb_status
            .code()
            .map_or_else(|| pgb_status.to_string(), |c| c.to_string()),
        load_at_fence,
    })
}

/// One rollback run.
#[derive(Debug, Clone)]
struct Rollback {
    round: usize,
    /// Writes blocked on the new server until the old source was writable.
    tool_secs: f64,
    streamed_back: Option<u64>,
    pgbench_processed: Option<u64>,
    pgbench_failed: Option<u64>,
    aborted_clients: usize,
}

/// `--fallback`: an automatic cutover, then rate-limited pgbench on the new
/// server, and `rollback` while it runs.
fn rollback_run(ctx: &Ctx, round: usize, db: &str) -> Result<Rollback> {
    ctx.fresh_pair(db)?;
    let dump = ctx.work.join(format!("rollback-{round}"));
    let log = ctx.logs.join(format!("rollback-{round}.log"));
    let json = ctx.logs.join(format!("rollback-{round}.json"));
    let mut cmd = ctx.migrate_cmd(db, &dump, "auto");
    cmd.arg("--fallback");
    let mut m = Proc::spawn(
        cmd,
        "pg_dbmigrator migrate --mode online --fallback",
        &json,
        &log,
    )?;
    let deadline = Instant::now() + Duration::from_secs(900);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("fallback: streaming the new server's changes back")
    {
        m.still_running()?;
        if Instant::now() > deadline {
            bail!("no fallback stream after 900 s:\n{}", tail_of(&log, 3000));
        }
        std::thread::sleep(POLL);
    }
    let mut load = ctx.pgbench(&ctx.tgt);
    load.args([
        "-n",
        "-c",
        &PGBENCH_CLIENTS.to_string(),
        "-j",
        &PGBENCH_THREADS.to_string(),
        "-T",
        &ctx.cfg.load_secs.to_string(),
        "-R",
        &ctx.cfg.rate.to_string(),
    ])
    .arg(db);
    let pgb_out = ctx.logs.join(format!("rollback-{round}.pgbench"));
    let pgb_err = ctx.logs.join(format!("rollback-{round}.pgbench.err"));
    let t_load = Instant::now();
    let mut pgb = Proc::spawn(load, "pgbench -R (new server)", &pgb_out, &pgb_err)?;
    std::thread::sleep(Duration::from_secs(
        (ctx.cfg.load_secs as u64 / 2).clamp(2, 10),
    ));
    pgb.still_running()?;
    let out = Command::new(&ctx.bin)
        .args(["rollback", "--json", "--dump-path"])
        .arg(&dump)
        .output()
        .context("running pg_dbmigrator rollback")?;
    if !out.status.success() {
        bail!(
            "rollback exited with {}: {}\nmigrate log:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            tail_of(&log, 3000)
        );
    }
    let status = m.wait(Duration::from_secs(600))?;
    let load_limit = Duration::from_secs(ctx.cfg.load_secs as u64 + 60)
        .saturating_sub(t_load.elapsed())
        .max(Duration::from_secs(5));
    let _ = pgb.wait(load_limit)?;
    if !status.success() {
        bail!(
            "migrate exited with {status}; log {}:\n{}",
            log.display(),
            tail_of(&log, 3000)
        );
    }
    let report: serde_json::Value = report_of(&std::fs::read_to_string(&json).unwrap_or_default())
        .with_context(|| format!("the report {}", json.display()))?;
    let diffs = report["verify"]["differences"]
        .as_array()
        .map_or(usize::MAX, Vec::len);
    if diffs != 0 {
        bail!(
            "verify after the rollback found {diffs} difference(s): {}",
            report["verify"]
        );
    }
    let fb = &report["online"]["fallback"];
    let tool_secs = fb["rollback_downtime_seconds"]
        .as_f64()
        .ok_or_else(|| anyhow!("no online.fallback.rollback_downtime_seconds in {report}"))?;
    let text = format!(
        "{}{}",
        std::fs::read_to_string(&pgb_out).unwrap_or_default(),
        std::fs::read_to_string(&pgb_err).unwrap_or_default()
    );
    let num = |key: &str| {
        pgbench_field(&text, key)
            .and_then(|v| v.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|v| v.parse::<u64>().ok())
    };
    let _ = std::fs::remove_dir_all(&dump);
    Ok(Rollback {
        round,
        tool_secs,
        streamed_back: fb["transactions_streamed_back"].as_u64(),
        pgbench_processed: num("number of transactions actually processed:"),
        pgbench_failed: num("number of failed transactions:"),
        aborted_clients: text
            .lines()
            .filter(|l| l.contains("client") && l.contains("aborted"))
            .count(),
    })
}

/// The rollback runs as a Markdown section.
fn rollback_report(cfg: &Config, runs: &[Result<Rollback, (usize, String)>]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\n### Rollback (`--fallback`): pgbench -R {} on the new server, `pg_dbmigrator rollback` while it runs\n",
        cfg.rate
    );
    let _ = writeln!(s, "| round | rollback downtime s | transactions streamed back | pgbench processed | failed | aborted clients |");
    let _ = writeln!(s, "|--:|--:|--:|--:|--:|--:|");
    for r in runs {
        match r {
            Ok(r) => {
                let _ = writeln!(
                    s,
                    "| {} | {:.3} | {} | {} | {} | {} |",
                    r.round,
                    r.tool_secs,
                    r.streamed_back.map_or("–".into(), |v| v.to_string()),
                    r.pgbench_processed.map_or("–".into(), |v| v.to_string()),
                    r.pgbench_failed.map_or("–".into(), |v| v.to_string()),
                    r.aborted_clients
                );
            }
            Err((round, e)) => {
                let _ = writeln!(s, "| {round} | FAILED: {} | | | | |", first_line(e));
            }
        }
    }
    let ok: Vec<f64> = runs
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .map(|r| r.tool_secs)
        .collect();
    if let Some(m) = median(&ok) {
        let _ = writeln!(s, "\nmedian rollback downtime: {m:.3} s");
    }
    s
}

/// Completion time (Unix seconds) of the last successful transaction in the
/// pgbench per-transaction logs of `dir` (`client tx time script epoch us
/// [lag]`; `time` is "failed" or "skipped" for the others).
fn last_ok_transaction(dir: &Path) -> Result<Option<f64>> {
    let mut last: Option<f64> = None;
    for e in std::fs::read_dir(dir)? {
        let text = std::fs::read_to_string(e?.path())?;
        for line in text.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 6 || f[2].parse::<u64>().is_err() {
                continue;
            }
            let (Ok(s), Ok(us)) = (f[4].parse::<u64>(), f[5].parse::<u64>()) else {
                continue;
            };
            let t = s as f64 + us as f64 / 1e6;
            last = Some(last.map_or(t, |l: f64| l.max(t)));
        }
    }
    Ok(last)
}

// ---------------------------------------------------------------- governor

/// Seconds of pgbench before the copy starts; the latencies of its last
/// [`GOV_BASELINE`] seconds are the "before" column.
const GOV_WARMUP: Duration = Duration::from_secs(12);
const GOV_BASELINE: f64 = 10.0;
/// pgbench goes on this long after the copy before it is stopped, so its
/// per-transaction log has been written out past the copy window.
const GOV_AFTER: Duration = Duration::from_secs(4);

/// Latencies (ms) of the pgbench transactions completed in a window.
#[derive(Debug, Clone, Copy, Default)]
struct Latencies {
    n: usize,
    p50: f64,
    p99: f64,
    max: f64,
    /// p99 of the schedule lag (`-R`: how late the transaction started).
    lag_p99: f64,
    /// Transactions logged as failed or skipped in the window.
    failed: usize,
}

/// The nearest-rank percentile `p` (0..1) of sorted `v`.
fn percentile(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let k = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[k - 1]
}

/// One transaction of a pgbench per-transaction log: completion time
/// (Unix seconds), latency and schedule lag in ms (`None`: failed or
/// skipped). Lines are `client tx time script epoch us [lag]`; under -R
/// `time` runs from the transaction's scheduled start, so it includes the
/// lag.
type Txn = (f64, Option<(f64, f64)>);

fn pgbench_log(dir: &Path) -> Result<Vec<Txn>> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let text = std::fs::read_to_string(e?.path())?;
        for line in text.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 6 {
                continue;
            }
            let (Ok(s), Ok(us)) = (f[4].parse::<u64>(), f[5].parse::<u64>()) else {
                continue;
            };
            let t = s as f64 + us as f64 / 1e6;
            let lat = f[2].parse::<u64>().ok().map(|lat| {
                let lag = f.get(6).and_then(|l| l.parse::<u64>().ok()).unwrap_or(0);
                (lat as f64 / 1e3, lag as f64 / 1e3)
            });
            v.push((t, lat));
        }
    }
    Ok(v)
}

fn latencies(txns: &[Txn], from: f64, to: f64) -> Latencies {
    let inside: Vec<&Txn> = txns
        .iter()
        .filter(|(t, _)| *t >= from && *t <= to)
        .collect();
    let mut lat: Vec<f64> = inside.iter().filter_map(|(_, l)| l.map(|l| l.0)).collect();
    let mut lag: Vec<f64> = inside.iter().filter_map(|(_, l)| l.map(|l| l.1)).collect();
    lat.sort_by(f64::total_cmp);
    lag.sort_by(f64::total_cmp);
    Latencies {
        n: lat.len(),
        p50: percentile(&lat, 0.50),
        p99: percentile(&lat, 0.99),
        max: lat.last().copied().unwrap_or(f64::NAN),
        lag_p99: percentile(&lag, 0.99),
        failed: inside.len() - lat.len(),
    }
}

#[derive(Debug, Clone)]
struct Governed {
    round: usize,
    max_rate: Option<String>,
    copy_secs: f64,
    during: Latencies,
    /// The same, split at the end of the last table's rows (from our
    /// log's last `copied item=` line): while rows are read (what
    /// `--max-rate` paces), then the rest (index builds, ANALYZE, keys,
    /// sequences), which it does not.
    rows: Latencies,
    rest: Latencies,
    /// Seconds from the migrate's start to the last table's rows in.
    rows_secs: Option<f64>,
    before: Latencies,
    /// pgbench's log reaches past the end of the copy.
    covered: bool,
}

/// The copied database on the source: `pgbench -i -s <gov_scale>`,
/// checkpointed. Returns its size in bytes.
fn governor_source(ctx: &Ctx, db: &str) -> Result<u64> {
    for c in [&ctx.src, &ctx.tgt] {
        exec(
            &c.conninfo("postgres"),
            &format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"),
        )?;
    }
    ctx.pgbench_source(db, ctx.cfg.gov_scale)?;
    query_one(
        &ctx.src.conninfo(db),
        "SELECT pg_database_size(current_database())::text",
    )?
    .parse()
    .context("database size")
}

/// `pgbench -R` on the source, then (after [`GOV_WARMUP`]) our offline
/// `migrate` of the same database into an empty one on the target, with
/// `--max-rate max_rate` if given; pgbench stopped [`GOV_AFTER`] after the
/// copy, and its latencies read from its per-transaction log.
fn governor_run(ctx: &Ctx, round: usize, db: &str, max_rate: Option<&str>) -> Result<Governed> {
    let tag = format!(
        "governor-{round}-{}",
        max_rate.map_or("free".to_string(), |r| r.replace(['/', ' '], "_"))
    );
    let admin = ctx.tgt.conninfo("postgres");
    exec(
        &admin,
        &format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"),
    )?;
    exec(&admin, &format!("CREATE DATABASE {db}"))?;
    exec(&admin, "CHECKPOINT")?;
    exec(&ctx.src.conninfo("postgres"), "CHECKPOINT")?;
    let pgb_dir = ctx.work.join(format!("{tag}-pgbench"));
    let _ = std::fs::remove_dir_all(&pgb_dir);
    std::fs::create_dir_all(&pgb_dir)?;
    let mut load = ctx.pgbench(&ctx.src);
    // -T far beyond any copy: pgbench is stopped once the copy is over.
    load.args([
        "-n",
        "-c",
        &PGBENCH_CLIENTS.to_string(),
        "-j",
        &PGBENCH_THREADS.to_string(),
        "-T",
        "3600",
        "-R",
        &ctx.cfg.gov_rate.to_string(),
        "-l",
    ])
    .arg(format!("--log-prefix={}", pgb_dir.join("tx").display()))
    .arg(db);
    let mut pgb = Proc::spawn(
        load,
        "pgbench -R",
        &ctx.logs.join(format!("{tag}.pgbench")),
        &ctx.logs.join(format!("{tag}.pgbench.err")),
    )?;
    std::thread::sleep(GOV_WARMUP);
    pgb.still_running()?;
    let dump = ctx.work.join(&tag);
    let log = ctx.logs.join(format!("{tag}.log"));
    let mut cmd = Command::new(&ctx.bin);
    cmd.arg("migrate")
        .arg("--source")
        .arg(uri(&ctx.src, db))
        .arg("--target")
        .arg(uri(&ctx.tgt, db))
        .args(["--jobs", &ctx.cfg.jobs.to_string(), "--verify", "none"])
        .arg("--dump-path")
        .arg(&dump)
        .stdin(Stdio::null());
    if let Some(r) = max_rate {
        cmd.args(["--max-rate", r]);
    }
    let t0 = SystemTime::now();
    let started = Instant::now();
    let mut m = Proc::spawn(cmd, "pg_dbmigrator migrate (offline)", &log, &log)?;
    let status = m.wait(Duration::from_secs(1800))?;
    let copy_secs = started.elapsed().as_secs_f64();
    let t1 = SystemTime::now();
    std::thread::sleep(GOV_AFTER);
    pgb.still_running()?;
    // pgbench has no graceful stop: SIGINT ends it. What it logged up to a
    // few hundred ms before is on disk (each thread's log is flushed every
    // few KB, about 0.3 s at this rate).
    signal(pgb.pid(), "INT")?;
    let _ = pgb.wait(Duration::from_secs(20));
    let _ = std::fs::remove_dir_all(&dump);
    let _ = std::fs::remove_file(token_path(&dump));
    if !status.success() {
        bail!(
            "migrate exited with {status}; log {}:\n{}",
            log.display(),
            tail_of(&log, 3000)
        );
    }
    let txns = pgbench_log(&pgb_dir)?;
    let _ = std::fs::remove_dir_all(&pgb_dir);
    let (t0, t1) = (unix_secs(t0), unix_secs(t1));
    let last = txns.iter().map(|t| t.0).fold(0.0, f64::max);
    // Our log's lines start with an RFC 3339 UTC timestamp.
    let rows_end = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("copied item="))
        .filter_map(|l| l.split_whitespace().next())
        .filter_map(|ts| chrono::DateTime::parse_from_rfc3339(ts).ok())
        .map(|t| t.timestamp_micros() as f64 / 1e6)
        .fold(None, |m: Option<f64>, t| Some(m.map_or(t, |m| m.max(t))));
    let split = rows_end.unwrap_or(t1).clamp(t0, t1);
    Ok(Governed {
        round,
        max_rate: max_rate.map(str::to_string),
        copy_secs,
        during: latencies(&txns, t0, t1),
        rows: latencies(&txns, t0, split),
        rest: latencies(&txns, split, t1),
        rows_secs: rows_end.map(|_| split - t0),
        before: latencies(&txns, t0 - GOV_BASELINE, t0),
        covered: last >= t1,
    })
}

type GovResult = Result<Governed, (usize, Option<String>, String)>;

fn governor_report(cfg: &Config, size: u64, runs: &[GovResult]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\n#### pgbench -R {} on the source during an offline copy, with and without `--max-rate {}`\n",
        cfg.gov_rate, cfg.gov_max_rate
    );
    let _ = writeln!(
        s,
        "`pgbench -n -c {PGBENCH_CLIENTS} -j {PGBENCH_THREADS} -R {} -l` (TPC-B) on the source database, a `pgbench -i -s {}` \
         database of {:.0} MB; {} s later `pg_dbmigrator migrate --jobs {} --verify none` (offline) copies that same \
         database into an empty one on the target, once without and once with `--max-rate {}` (alternating which \
         goes first); pgbench is stopped {} s after the copy. Latency = pgbench's per-transaction time (under -R, \
         from the transaction's scheduled start, so schedule lag included) of the transactions that completed inside \
         the copy window (from the migrate's start to its exit); \"before\" = the {} s before the copy; \
         \"while rows\" / \"after the rows\" split the copy window at our log's last `copied item=` line: \
         the rows' read (what `--max-rate` paces), then the index builds, ANALYZE and the rest, which it does \
         not pace. Percentiles are nearest-rank over those transactions.\n",
        cfg.gov_rate,
        cfg.gov_scale,
        size as f64 / 1e6,
        GOV_WARMUP.as_secs(),
        cfg.jobs,
        cfg.gov_max_rate,
        GOV_AFTER.as_secs(),
        GOV_BASELINE
    );
    let _ = writeln!(
        s,
        "| round | our copy | copy s | MB/s (db size / copy s) | txns in the copy | p50 ms | p99 ms | max ms | lag p99 ms | failed | before: p50 ms | before: p99 ms | rows in after s | while rows: p50 / p99 ms | after the rows: p50 / p99 ms |"
    );
    let _ = writeln!(
        s,
        "|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"
    );
    let name = |r: &Option<String>| {
        r.as_ref().map_or("no `--max-rate`".to_string(), |r| {
            format!("`--max-rate {r}`")
        })
    };
    for r in runs {
        match r {
            Ok(g) => {
                let _ = writeln!(
                    s,
                    "| {} | {} | {:.2} | {:.1} | {}{} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {:.2} | {:.2} | {} | {:.2} / {:.2} | {:.2} / {:.2} |",
                    g.round,
                    name(&g.max_rate),
                    g.copy_secs,
                    size as f64 / 1e6 / g.copy_secs,
                    g.during.n,
                    if g.covered { "" } else { " (log ends before the copy did)" },
                    g.during.p50,
                    g.during.p99,
                    g.during.max,
                    g.during.lag_p99,
                    g.during.failed,
                    g.before.p50,
                    g.before.p99,
                    fmt_opt(g.rows_secs, 2),
                    g.rows.p50,
                    g.rows.p99,
                    g.rest.p50,
                    g.rest.p99
                );
            }
            Err((round, rate, e)) => {
                let _ = writeln!(
                    s,
                    "| {round} | {} | failed: {} | | | | | | | | | | | | |",
                    name(rate),
                    one_line(e)
                );
            }
        }
    }
    let _ = writeln!(
        s,
        "\n| our copy | runs | median copy s | median p50 ms | median p99 ms | median p99 before the copy | median p99 while rows | median p99 after the rows |\n|---|--:|--:|--:|--:|--:|--:|--:|"
    );
    for rate in [None, Some(cfg.gov_max_rate.clone())] {
        let ok: Vec<&Governed> = runs
            .iter()
            .filter_map(|r| r.as_ref().ok())
            .filter(|g| g.max_rate == rate)
            .collect();
        let med =
            |f: &dyn Fn(&Governed) -> f64| median(&ok.iter().map(|g| f(g)).collect::<Vec<_>>());
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            name(&rate),
            ok.len(),
            fmt_opt(med(&|g| g.copy_secs), 2),
            fmt_opt(med(&|g| g.during.p50), 2),
            fmt_opt(med(&|g| g.during.p99), 2),
            fmt_opt(med(&|g| g.before.p99), 2),
            fmt_opt(med(&|g| g.rows.p99), 2),
            fmt_opt(med(&|g| g.rest.p99), 2)
        );
    }
    s
}

// ---------------------------------------------------------------- report

fn fmt_opt(v: Option<f64>, prec: usize) -> String {
    v.map_or_else(|| "–".into(), |v| format!("{v:.prec$}"))
}

struct Header {
    started: chrono::DateTime<chrono::Local>,
    machine: Vec<(String, String)>,
    pg_version: String,
    pgbench_version: String,
    bin: String,
    bin_version: String,
    commit: String,
}

fn report(
    cfg: &Config,
    h: &Header,
    catch: &[Result<CatchUp, (Applier, usize, String)>],
    down: &[Result<Downtime, (usize, String)>],
    elapsed: f64,
) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "### Online run of {} ({} rounds)\n",
        h.started.format("%Y-%m-%d %H:%M %:z"),
        cfg.runs
    );
    let _ = writeln!(s, "Machine and versions:\n");
    for (k, v) in &h.machine {
        let _ = writeln!(s, "- {k}: {v}");
    }
    let _ = writeln!(s, "- PostgreSQL (source and target): {}", h.pg_version);
    let _ = writeln!(s, "- pgbench: {}", h.pgbench_version);
    let _ = writeln!(
        s,
        "- pg_dbmigrator: {} (checkout at commit {}; binary {})",
        h.bin_version, h.commit, h.bin
    );
    let conf: Vec<String> = common::SERVER_CONF
        .iter()
        .chain(ONLINE_CONF)
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let _ = writeln!(
        s,
        "- server settings (both): {}; source also wal_level=logical, {}",
        conf.join(", "),
        SOURCE_ONLY_CONF
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let _ = writeln!(
        s,
        "- dataset of the catch-up, downtime and rollback parts: `pgbench -i -s {}` ({} accounts), fresh per run; our migrate with `--jobs {} --fix-replica-identity`, default `--verify checksum`",
        cfg.scale,
        cfg.scale as u64 * 100_000,
        cfg.jobs
    );
    let _ = writeln!(s, "- whole benchmark: {:.1} min\n", elapsed / 60.0);

    if cfg.catchup {
        let backlog = cfg.backlog();
        let _ = writeln!(
            s,
            "#### Catch-up: a backlog of {backlog} pgbench (TPC-B) transactions\n"
        );
        let _ = writeln!(
            s,
            "The apply is held back while `pgbench -n -t {} -c {PGBENCH_CLIENTS} -j {PGBENCH_THREADS}` writes the backlog on the source, then released (ours: `kill -CONT` of the SIGSTOPped migrate; native: `ALTER SUBSCRIPTION ... ENABLE`, at least 6 s after the DISABLE so the launcher's wal_retrieve_retry_interval does not delay the worker); catch-up = time from the release until the target has applied a source commit at or past the source's WAL position after the backlog (ours: `_pg_dbmigrator.progress.end_lsn`; native: `pg_replication_origin_status.remote_lsn`; polled every 20 ms); \"first commit\" = time from the release until that position first moves; CPU = user+system seconds from the release to done of the source's walsenders, the target's sessions and workers in the database, and our migrate process (`/proc/<pid>/stat`).\n",
            cfg.per_client()
        );
        let _ = writeln!(
            s,
            "| applier | ok runs | median tx/s | min tx/s | max tx/s | median catch-up s | ours ÷ native (tx/s) |"
        );
        let _ = writeln!(s, "|---|--:|--:|--:|--:|--:|--:|");
        let tps_of = |a: Applier| -> Vec<f64> {
            catch
                .iter()
                .filter_map(|r| r.as_ref().ok())
                .filter(|c| c.applier == a)
                .map(|c| c.tps(backlog))
                .collect()
        };
        let secs_of = |a: Applier| -> Vec<f64> {
            catch
                .iter()
                .filter_map(|r| r.as_ref().ok())
                .filter(|c| c.applier == a)
                .map(|c| c.secs)
                .collect()
        };
        let native_med = median(&tps_of(Applier::Native));
        for a in [Applier::Ours, Applier::Native] {
            let v = tps_of(a);
            let total = catch
                .iter()
                .filter(|r| match r {
                    Ok(c) => c.applier == a,
                    Err((x, _, _)) => *x == a,
                })
                .count();
            let med = median(&v);
            let ratio = match (med, native_med) {
                (Some(m), Some(n)) if n > 0.0 => format!("{:.2}", m / n),
                _ => "–".into(),
            };
            let _ = writeln!(
                s,
                "| {} | {}/{} | {} | {} | {} | {} | {} |",
                a.name(),
                v.len(),
                total,
                fmt_opt(med, 0),
                fmt_opt(v.iter().copied().reduce(f64::min), 0),
                fmt_opt(v.iter().copied().reduce(f64::max), 0),
                fmt_opt(median(&secs_of(a)), 2),
                ratio
            );
        }
        let _ = writeln!(s, "\nEvery run:\n");
        let _ = writeln!(
            s,
            "| round | applier | catch-up s | tx/s | first commit s | CPU s: walsender / target / tool | backlog WAL MB | source pgbench tps | initial copy s | applied txns (report) | check |"
        );
        let _ = writeln!(s, "|--:|---|--:|--:|--:|---|--:|--:|--:|--:|---|");
        for r in catch {
            match r {
                Ok(c) => {
                    let _ = writeln!(
                        s,
                        "| {} | {} | {:.2} | {:.0} | {} | {:.2} / {:.2} / {} | {:.1} | {:.0} | {:.1} | {} | {} |",
                        c.round,
                        c.applier.name(),
                        c.secs,
                        c.tps(backlog),
                        fmt_opt(c.first_commit_secs, 2),
                        c.cpu.walsender,
                        c.cpu.target,
                        fmt_opt(c.cpu.tool, 2),
                        c.backlog_bytes as f64 / 1e6,
                        c.source_tps,
                        c.copy_secs,
                        c.applied_txns.map_or_else(|| "–".into(), |t| t.to_string()),
                        c.note.replace('|', "\\|")
                    );
                }
                Err((a, round, e)) => {
                    let _ = writeln!(
                        s,
                        "| {round} | {} | FAILED | | | | | | | | {} |",
                        a.name(),
                        one_line(e)
                    );
                }
            }
        }
        let _ = writeln!(s);
    }

    if cfg.downtime {
        let _ = writeln!(
            s,
            "#### Write downtime at cutover under load\n\n`pgbench -n -c {PGBENCH_CLIENTS} -j {PGBENCH_THREADS} -T {} -R {} -l` on the source, `migrate --mode online --cutover auto` started 2 s later. \"tool\" is the report's `online.cutover.downtime_seconds` (fence to done); \"client gap\" is from the last transaction pgbench completed on the source (its per-transaction log) to the moment the bench saw the cutover completed in the resume token (polled every 20 ms), i.e. how long no write could go anywhere.\n",
            cfg.load_secs, cfg.rate
        );
        let ok: Vec<&Downtime> = down.iter().filter_map(|r| r.as_ref().ok()).collect();
        let tool: Vec<f64> = ok.iter().map(|d| d.tool_secs).collect();
        let gap: Vec<f64> = ok.iter().filter_map(|d| d.client_gap_secs).collect();
        let _ = writeln!(
            s,
            "| measure | ok runs | median s | max s |\n|---|--:|--:|--:|"
        );
        let _ = writeln!(
            s,
            "| downtime (tool: fence → done) | {}/{} | {} | {} |",
            tool.len(),
            down.len(),
            fmt_opt(median(&tool), 3),
            fmt_opt(tool.iter().copied().reduce(f64::max), 3)
        );
        let _ = writeln!(
            s,
            "| client gap (last source commit → cutover done) | {}/{} | {} | {} |",
            gap.len(),
            down.len(),
            fmt_opt(median(&gap), 3),
            fmt_opt(gap.iter().copied().reduce(f64::max), 3)
        );
        let _ = writeln!(s, "\nEvery run:\n");
        let _ = writeln!(
            s,
            "| round | tool downtime s | client gap s | spawn → cutover s | fence LSN | applied txns | pgbench processed | pgbench failed | aborted clients | pgbench exit | load running at fence |"
        );
        let _ = writeln!(s, "|--:|--:|--:|--:|---|--:|--:|--:|--:|--:|---|");
        for r in down {
            match r {
                Ok(d) => {
                    let n = |v: Option<u64>| v.map_or_else(|| "–".into(), |v| v.to_string());
                    let _ = writeln!(
                        s,
                        "| {} | {:.3} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                        d.round,
                        d.tool_secs,
                        fmt_opt(d.client_gap_secs, 3),
                        fmt_opt(d.to_cutover_secs, 1),
                        d.fence_lsn,
                        n(d.apply_txns),
                        n(d.pgbench_processed),
                        n(d.pgbench_failed),
                        d.aborted_clients,
                        d.pgbench_exit,
                        if d.load_at_fence { "yes" } else { "no" }
                    );
                }
                Err((round, e)) => {
                    let _ = writeln!(s, "| {round} | FAILED | | | | | | | | | {} |", one_line(e));
                }
            }
        }
        let _ = writeln!(s);
    }
    s
}

fn one_line(e: &str) -> String {
    let s: String = e.replace('\n', " ⏎ ").replace('|', "\\|");
    s.chars().take(600).collect()
}

// ---------------------------------------------------------------- main

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `$BENCH_BIN`, else the binary cargo built for this bench (release
/// profile), else `cargo build --release`.
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
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
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
    Ok(common::target_dir().join("release").join("pg_dbmigrator"))
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
    if git(&["status", "--porcelain", "--", "src", "Cargo.lock"]).is_some_and(|s| !s.is_empty()) {
        format!("{head} (+ uncommitted changes in src/)")
    } else {
        head
    }
}

fn run() -> Result<()> {
    let started = Instant::now();
    let cfg = Config::from_env()?;
    let bin = locate_binary()?;
    let bin_version = Command::new(&bin)
        .arg("--version")
        .output()
        .map(|o| first_line(&String::from_utf8_lossy(&o.stdout)))
        .with_context(|| format!("running {}", bin.display()))?;
    let target = common::target_dir();
    let logs = target.join("bench-online-logs");
    let _ = std::fs::remove_dir_all(&logs);
    std::fs::create_dir_all(&logs)?;
    let work_root = match std::env::var_os("BENCH_WORKDIR").filter(|d| !d.is_empty()) {
        Some(d) => {
            std::fs::create_dir_all(&d)?;
            tempfile::Builder::new()
                .prefix("pg_dbmigrator-bench-online-")
                .tempdir_in(d)?
        }
        None => tempfile::Builder::new()
            .prefix("pg_dbmigrator-bench-online-")
            .tempdir()?,
    };

    eprintln!("starting source and target PostgreSQL servers ...");
    let both: Vec<(String, String)> = common::SERVER_CONF
        .iter()
        .chain(ONLINE_CONF)
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let mut src_conf = both.clone();
    src_conf.extend(
        SOURCE_ONLY_CONF
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    let src = Cluster::start(&ClusterOptions {
        logical: true,
        extra_conf: src_conf,
        ..Default::default()
    })
    .context("starting the source server")?;
    let tgt = Cluster::start(&ClusterOptions {
        extra_conf: both,
        // The new server streams back for the rollback part.
        logical: cfg.rollback,
        ..Default::default()
    })
    .context("starting the target server")?;
    let pg_version = query_one(&src.conninfo("postgres"), "SELECT version()")?;
    let pgbench_version = Command::new(src.bin_dir.join("pgbench"))
        .arg("--version")
        .output()
        .map(|o| first_line(&String::from_utf8_lossy(&o.stdout)))
        .unwrap_or_default();
    let header = Header {
        started: chrono::Local::now(),
        machine: machine_facts(),
        pg_version,
        pgbench_version,
        bin: bin.display().to_string(),
        bin_version,
        commit: git_commit(),
    };
    let ctx = Ctx {
        cfg: cfg.clone(),
        src,
        tgt,
        bin,
        work: work_root.path().to_path_buf(),
        logs,
        started,
    };
    let results_md = target.join("bench-online-results.md");
    let mut catch = Vec::new();
    let mut down = Vec::new();

    if cfg.catchup {
        for round in 1..=cfg.runs {
            // Alternate which applier goes first.
            let order = if round % 2 == 1 {
                [Applier::Ours, Applier::Native]
            } else {
                [Applier::Native, Applier::Ours]
            };
            for a in order {
                ctx.say(format!("catch-up round {round}: {} ...", a.name()));
                let db = match a {
                    Applier::Ours => format!("bench_online_ours_{round}"),
                    Applier::Native => format!("bench_online_native_{round}"),
                };
                let r = match a {
                    Applier::Ours => catchup_ours(&ctx, round, &db),
                    Applier::Native => catchup_native(&ctx, round, &db),
                };
                ctx.drop_pair(&db);
                match &r {
                    Ok(c) => ctx.say(format!(
                        "catch-up round {round}: {:<24} {:>7.2}s  {:>6.0} tx/s  (first commit after {}s; CPU s walsender {:.2}, target {:.2}, tool {}; backlog {:.1} MB WAL, source pgbench {:.0} tps, initial copy {:.1}s)",
                        a.name(),
                        c.secs,
                        c.tps(cfg.backlog()),
                        fmt_opt(c.first_commit_secs, 2),
                        c.cpu.walsender,
                        c.cpu.target,
                        fmt_opt(c.cpu.tool, 2),
                        c.backlog_bytes as f64 / 1e6,
                        c.source_tps,
                        c.copy_secs
                    )),
                    Err(e) => ctx.say(format!("catch-up round {round}: {} FAILED: {e:#}", a.name())),
                }
                catch.push(r.map_err(|e| (a, round, format!("{e:#}"))));
                std::fs::write(
                    &results_md,
                    report(
                        &cfg,
                        &header,
                        &catch,
                        &down,
                        started.elapsed().as_secs_f64(),
                    ),
                )?;
            }
        }
    }
    if cfg.downtime {
        for round in 1..=cfg.runs {
            ctx.say(format!("downtime round {round} ..."));
            let db = format!("bench_online_cut_{round}");
            let r = downtime_run(&ctx, round, &db);
            ctx.drop_pair(&db);
            match &r {
                Ok(d) => ctx.say(format!(
                    "downtime round {round}: tool {:.3}s, client gap {}s, pgbench processed {:?}, failed {:?}, aborted clients {}, exit {}",
                    d.tool_secs,
                    fmt_opt(d.client_gap_secs, 3),
                    d.pgbench_processed,
                    d.pgbench_failed,
                    d.aborted_clients,
                    d.pgbench_exit
                )),
                Err(e) => ctx.say(format!("downtime round {round} FAILED: {e:#}")),
            }
            down.push(r.map_err(|e| (round, format!("{e:#}"))));
            std::fs::write(
                &results_md,
                report(
                    &cfg,
                    &header,
                    &catch,
                    &down,
                    started.elapsed().as_secs_f64(),
                ),
            )?;
        }
    }
    let mut back = Vec::new();
    if cfg.rollback {
        for round in 1..=cfg.runs {
            ctx.say(format!("rollback round {round} ..."));
            let db = format!("bench_online_back_{round}");
            let r = rollback_run(&ctx, round, &db);
            ctx.drop_pair(&db);
            match &r {
                Ok(b) => ctx.say(format!(
                    "rollback round {round}: downtime {:.3}s, streamed back {:?}, pgbench processed {:?}, failed {:?}, aborted clients {}",
                    b.tool_secs, b.streamed_back, b.pgbench_processed, b.pgbench_failed, b.aborted_clients
                )),
                Err(e) => ctx.say(format!("rollback round {round} FAILED: {e:#}")),
            }
            back.push(r.map_err(|e| (round, format!("{e:#}"))));
        }
    }
    let mut gov = Vec::new();
    let mut gov_size = 0;
    if cfg.governor {
        let db = "bench_governor";
        ctx.say(format!(
            "governor: building pgbench -i -s {} on the source ...",
            cfg.gov_scale
        ));
        gov_size = governor_source(&ctx, db)?;
        for round in 1..=cfg.runs {
            // Alternate which goes first.
            let order = if round % 2 == 1 {
                [None, Some(cfg.gov_max_rate.as_str())]
            } else {
                [Some(cfg.gov_max_rate.as_str()), None]
            };
            for max_rate in order {
                let what =
                    max_rate.map_or("no --max-rate".to_string(), |r| format!("--max-rate {r}"));
                ctx.say(format!("governor round {round}: {what} ..."));
                let r = governor_run(&ctx, round, db, max_rate);
                match &r {
                    Ok(g) => ctx.say(format!(
                        "governor round {round}: {what}: copy {:.2}s; pgbench during the copy: {} txns, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; before: p50 {:.2} ms, p99 {:.2} ms",
                        g.copy_secs, g.during.n, g.during.p50, g.during.p99, g.during.max, g.before.p50, g.before.p99
                    )),
                    Err(e) => ctx.say(format!("governor round {round}: {what} FAILED: {e:#}")),
                }
                gov.push(r.map_err(|e| (round, max_rate.map(str::to_string), format!("{e:#}"))));
            }
        }
        let _ = exec(
            &ctx.src.conninfo("postgres"),
            &format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"),
        );
        let _ = exec(
            &ctx.tgt.conninfo("postgres"),
            &format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"),
        );
    }
    let mut md = report(
        &cfg,
        &header,
        &catch,
        &down,
        started.elapsed().as_secs_f64(),
    );
    if cfg.rollback {
        md.push_str(&rollback_report(&cfg, &back));
    }
    if cfg.governor {
        md.push_str(&governor_report(&cfg, gov_size, &gov));
    }
    std::fs::write(&results_md, &md)?;
    println!("{md}");
    println!(
        "results: {}\nlogs: {}\ntotal time: {:.0}s",
        results_md.display(),
        ctx.logs.display(),
        started.elapsed().as_secs_f64()
    );
    let failed = catch.iter().filter(|r| r.is_err()).count()
        + down.iter().filter(|r| r.is_err()).count()
        + back.iter().filter(|r| r.is_err()).count()
        + gov.iter().filter(|r| r.is_err()).count();
    // Servers stop (testkit) and the work dir goes away on drop.
    drop(ctx);
    drop(work_root);
    if failed > 0 {
        bail!(
            "{failed} run(s) failed (see the table and {})",
            results_md.display()
        );
    }
    Ok(())
}

fn main() {
    if let Err(e) = run() {
        eprintln!("bench failed: {e:#}");
        std::process::exit(1);
    }
}

/// The report in `migrate --json`'s output: NDJSON events, the last one
/// `summary` holding it.
fn report_of(stdout: &str) -> Result<serde_json::Value> {
    let last = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .context("no output")?;
    let e: serde_json::Value = serde_json::from_str(last)?;
    if e["event"] != "summary" {
        bail!("the last event is not the summary: {last}");
    }
    Ok(e["report"].clone())
}
