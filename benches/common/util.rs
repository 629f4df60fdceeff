//! Small helpers: SQL over tokio-postgres, timed child processes with their
//! peak RSS, disk and machine facts.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fs::File;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use tokio_postgres::{Client, NoTls};

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime")
    })
}

pub fn block<F: Future>(f: F) -> F::Output {
    runtime().block_on(f)
}

pub async fn connect(conninfo: &str) -> Result<Client> {
    let (client, conn) = tokio_postgres::connect(conninfo, NoTls)
        .await
        .context("connecting")?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// Run a batch of SQL statements in one session.
pub fn exec(conninfo: &str, sql: &str) -> Result<()> {
    block(async {
        let c = connect(conninfo).await?;
        c.batch_execute(sql)
            .await
            .with_context(|| format!("executing {}", short(sql)))
    })
}

/// Rows of a query, every column read as text (`::text` casts are the caller's).
pub fn query(conninfo: &str, sql: &str) -> Result<Vec<Vec<Option<String>>>> {
    block(async {
        let c = connect(conninfo).await?;
        let rows = c
            .query(sql, &[])
            .await
            .with_context(|| format!("querying {}", short(sql)))?;
        Ok(rows
            .iter()
            .map(|r| {
                (0..r.len())
                    .map(|i| r.get::<_, Option<String>>(i))
                    .collect()
            })
            .collect())
    })
}

/// First column of the first row.
pub fn query_one(conninfo: &str, sql: &str) -> Result<String> {
    query(conninfo, sql)?
        .into_iter()
        .next()
        .and_then(|r| r.into_iter().next().flatten())
        .ok_or_else(|| anyhow!("no value from {}", short(sql)))
}

fn short(sql: &str) -> String {
    let s: String = sql.chars().take(120).collect();
    s.replace('\n', " ")
}

/// Execute `stmts` (already in the wanted order, e.g. largest table first)
/// over `sessions` connections, each taking the next statement when free.
/// The connections are opened before the clock starts; returns the wall time.
pub fn run_parallel(conninfo: &str, stmts: Vec<String>, sessions: usize) -> Result<Duration> {
    if stmts.is_empty() {
        return Ok(Duration::ZERO);
    }
    block(async {
        let n = sessions.clamp(1, stmts.len());
        let mut clients = Vec::with_capacity(n);
        for _ in 0..n {
            clients.push(connect(conninfo).await?);
        }
        let queue = Arc::new(Mutex::new(VecDeque::from(stmts)));
        let start = Instant::now();
        let mut tasks = Vec::new();
        for c in clients {
            let queue = queue.clone();
            tasks.push(tokio::spawn(async move {
                loop {
                    let next = queue.lock().unwrap().pop_front();
                    let Some(sql) = next else { break };
                    c.batch_execute(&sql)
                        .await
                        .with_context(|| format!("executing {}", short(&sql)))?;
                }
                Ok::<(), anyhow::Error>(())
            }));
        }
        for t in tasks {
            t.await.context("worker panicked")??;
        }
        Ok(start.elapsed())
    })
}

/// A command line to run and time.
#[derive(Debug, Clone)]
pub struct Cmd {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    pub env: Vec<(String, OsString)>,
}

impl Cmd {
    pub fn new(program: impl Into<PathBuf>) -> Cmd {
        Cmd {
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
        }
    }
    pub fn arg(mut self, a: impl Into<OsString>) -> Cmd {
        self.args.push(a.into());
        self
    }
    pub fn args<I: IntoIterator<Item = S>, S: Into<OsString>>(mut self, it: I) -> Cmd {
        self.args.extend(it.into_iter().map(Into::into));
        self
    }
    pub fn env(mut self, k: &str, v: impl Into<OsString>) -> Cmd {
        self.env.push((k.to_string(), v.into()));
        self
    }
    fn command(&self) -> Command {
        let mut c = Command::new(&self.program);
        c.args(&self.args);
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c
    }
}

/// Wall time, peak RSS and CPU of one finished child.
#[derive(Debug, Clone, Copy)]
pub struct Measured {
    pub elapsed: Duration,
    /// Peak resident set size in KiB (see [`RssProbe`]).
    pub max_rss_kib: Option<u64>,
    /// User + system seconds of the child's whole process tree (see
    /// [`super::cpu`]); `None` when it was killed at the time limit.
    pub cpu_secs: Option<f64>,
    /// Killed at the time limit (`BENCH_TIMEOUT_S`): `elapsed` is the limit.
    pub timed_out: bool,
}

/// How the peak RSS of a child is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RssProbe {
    /// `/usr/bin/time -f %M` (GNU time): ru_maxrss from wait4, i.e. the
    /// largest single process of the child's tree.
    GnuTime,
    /// Poll `/proc/<pid>/status` VmHWM every 20 ms (the child itself only).
    ProcPoll,
}

impl RssProbe {
    pub fn detect() -> RssProbe {
        let gnu = Command::new("/usr/bin/time")
            .args(["-f", "%M", "true"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .is_ok_and(|o| {
                o.status.success()
                    && String::from_utf8_lossy(&o.stderr)
                        .trim()
                        .parse::<u64>()
                        .is_ok()
            });
        if gnu {
            RssProbe::GnuTime
        } else {
            RssProbe::ProcPoll
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            RssProbe::GnuTime => {
                "GNU `/usr/bin/time -f %M` (ru_maxrss from wait4: the largest single process of the tool's process tree)"
            }
            RssProbe::ProcPoll => "VmHWM of the tool's main process, polled from /proc every 20 ms",
        }
    }
}

extern "C" {
    fn kill(pid: i32, sig: i32) -> i32;
}

/// SIGKILL to the process group `pgid` (one the harness made for a tool).
fn kill_group(pgid: u32) {
    // SAFETY: plain system call; a negative pid names a process group.
    unsafe {
        kill(-(pgid as i32), 9);
    }
}

/// Run `cmd` with stdout and stderr appended to `log`, timing it from spawn
/// to exit. A non-zero exit is an error that quotes the log's tail. The
/// tool runs in a process group of its own; past `limit` the whole group
/// is killed and the run is returned as timed out.
pub fn run_measured(
    cmd: &Cmd,
    log: &Path,
    probe: RssProbe,
    limit: Option<Duration>,
) -> Result<Measured> {
    let out = File::options().create(true).append(true).open(log)?;
    let err = out.try_clone()?;
    let rss_file = log.with_extension("rss");
    let mut command = match probe {
        RssProbe::GnuTime => {
            let mut c = Command::new("/usr/bin/time");
            c.arg("-o").arg(&rss_file).args(["-f", "%M"]);
            c.arg(&cmd.program).args(&cmd.args);
            for (k, v) in &cmd.env {
                c.env(k, v);
            }
            c
        }
        RssProbe::ProcPoll => cmd.command(),
    };
    command
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err));
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    let cpu0 = super::cpu::children_cpu_secs();
    let start = Instant::now();
    let mut child = command
        .spawn()
        .with_context(|| format!("starting {}", cmd.program.display()))?;
    let mut hwm = None;
    let mut timed_out = false;
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if probe == RssProbe::ProcPoll {
            if let Some(v) = vm_hwm_kib(child.id()) {
                hwm = Some(v);
            }
        }
        if limit.is_some_and(|l| start.elapsed() >= l) {
            timed_out = true;
            kill_group(child.id());
            break child.wait()?;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let elapsed = start.elapsed();
    let cpu = super::cpu::children_cpu_secs() - cpu0;
    if probe == RssProbe::GnuTime {
        hwm = std::fs::read_to_string(&rss_file)
            .ok()
            .and_then(|s| s.lines().last().and_then(|l| l.trim().parse().ok()));
        let _ = std::fs::remove_file(&rss_file);
    }
    if timed_out {
        return Ok(Measured {
            elapsed: limit.unwrap_or(elapsed),
            max_rss_kib: hwm,
            cpu_secs: None,
            timed_out,
        });
    }
    if !status.success() {
        bail!(
            "{} exited with {status}; log {}:\n{}",
            cmd.program.display(),
            log.display(),
            tail_of(log, 1500)
        );
    }
    Ok(Measured {
        elapsed,
        max_rss_kib: hwm,
        cpu_secs: cpu.is_finite().then_some(cpu),
        timed_out,
    })
}

fn vm_hwm_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Run a helper command (not timed), failing with its output.
pub fn run_quiet(cmd: &mut Command, what: &str) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("starting {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn tail_of(path: &Path, bytes: usize) -> String {
    let s = std::fs::read(path).unwrap_or_default();
    let from = s.len().saturating_sub(bytes);
    String::from_utf8_lossy(&s[from..]).into_owned()
}

/// Bytes under `path` (`du -sb`), 0 when it cannot be measured.
pub fn du_bytes(path: &Path) -> u64 {
    Command::new("du")
        .arg("-sb")
        .arg(path)
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .next()
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Free bytes on the file system of `path` (`df -Pk`).
pub fn free_bytes(path: &Path) -> Option<u64> {
    let out = Command::new("df").arg("-Pk").arg(path).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().nth(1)?;
    let avail: u64 = line.split_whitespace().nth(3)?.parse().ok()?;
    Some(avail * 1024)
}

/// `postgres` OS user's uid and gid (the servers run as it when we are root).
pub fn postgres_ids() -> Option<(u32, u32)> {
    let out = Command::new("id").args(["-u", "postgres"]).output().ok()?;
    let uid = String::from_utf8_lossy(&out.stdout).trim().parse().ok()?;
    let out = Command::new("id").args(["-g", "postgres"]).output().ok()?;
    let gid = String::from_utf8_lossy(&out.stdout).trim().parse().ok()?;
    Some((uid, gid))
}

/// A directory the server processes can write (owned by `postgres` when
/// that user exists and we are root).
pub fn make_server_dir(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::create_dir_all(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))?;
    if let Some((uid, gid)) = postgres_ids() {
        // Only root may chown; as another user the servers run as us anyway.
        let _ = std::os::unix::fs::chown(path, Some(uid), Some(gid));
    }
    Ok(())
}

pub fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").trim().to_string()
}

/// Facts about the machine for the report header.
pub fn machine_facts() -> Vec<(String, String)> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kib| format!("{:.1} GiB", kib / 1024.0 / 1024.0))
        .unwrap_or_else(|| "unknown".into());
    let nproc = Command::new("nproc")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|_| "?".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    vec![
        ("CPUs (nproc)".into(), nproc),
        ("CPU model".into(), model),
        ("memory".into(), mem),
        ("kernel".into(), kernel),
    ]
}

pub fn median(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    Some(if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    })
}

/// Quote an SQL identifier.
pub fn ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Quote an SQL string literal.
pub fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}
