//! CPU seconds of a tool's process tree and of a PostgreSQL server, from
//! the kernel's own accounting (Linux).
//!
//! * **A tool**: the CPU of every process of its tree that was waited for,
//!   i.e. the `utime + stime` of the tool's process plus the
//!   `cutime + cstime` of the children it reaped (for `pg_dump | psql`, the
//!   shell reaps both ends of the pipe; pg_dump -j, pg_restore -j and
//!   pgcopydb reap their workers). The harness reads it as the growth of
//!   its own `getrusage(RUSAGE_CHILDREN)` across the wait for the tool,
//!   which is the same sum as `/proc/<pid>/stat`'s four fields read at the
//!   tool's exit, without the race of reading a process that is going
//!   away. Nothing else is a child of the harness while a tool runs.
//! * **A server**: `utime + stime + cutime + cstime` of the postmaster
//!   (the first line of `<datadir>/postmaster.pid`; it reaps its backends,
//!   so exited backends are in its `cutime + cstime`), plus `utime + stime`
//!   of its live children (backends, checkpointer, walwriter, autovacuum,
//!   ...), from `/proc`. A run's share is the difference from before it to
//!   after it: a backend alive at both reads counts its growth, one that
//!   ended in between moves its whole total into the postmaster's
//!   `cutime` and its earlier reading is subtracted, one born and gone in
//!   between is in `cutime` only.

use std::path::Path;

/// `struct rusage` of Linux (x86_64 and aarch64): two `timeval`s, then 14
/// longs.
#[repr(C)]
#[derive(Default)]
struct RUsage {
    utime_sec: i64,
    utime_usec: i64,
    stime_sec: i64,
    stime_usec: i64,
    rest: [i64; 14],
}

const RUSAGE_CHILDREN: i32 = -1;
const SC_CLK_TCK: i32 = 2;

extern "C" {
    fn getrusage(who: i32, usage: *mut RUsage) -> i32;
    fn sysconf(name: i32) -> i64;
}

/// User + system seconds of every child of this process waited for so far
/// (and of their own waited-for descendants).
pub fn children_cpu_secs() -> f64 {
    let mut r = RUsage::default();
    // SAFETY: `r` is a valid, writable `struct rusage`.
    let rc = unsafe { getrusage(RUSAGE_CHILDREN, &mut r) };
    if rc != 0 {
        return f64::NAN;
    }
    (r.utime_sec + r.stime_sec) as f64 + (r.utime_usec + r.stime_usec) as f64 / 1e6
}

/// Clock ticks per second of `/proc/<pid>/stat`'s times.
pub fn clock_ticks() -> f64 {
    static T: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    // SAFETY: sysconf has no preconditions.
    *T.get_or_init(|| match unsafe { sysconf(SC_CLK_TCK) } {
        n if n > 0 => n as f64,
        _ => 100.0,
    })
}

/// (ppid, utime + stime, cutime + cstime) in ticks, from `/proc/<pid>/stat`.
fn stat(pid: u32) -> Option<(u32, u64, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After "pid (comm) ": state, ppid, ..., utime is the 12th, stime,
    // cutime, cstime follow.
    let f: Vec<&str> = s[s.rfind(')')? + 1..].split_whitespace().collect();
    let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok());
    Some((n(1)? as u32, n(11)? + n(12)?, n(13)? + n(14)?))
}

/// Live children of `pid` with their utime + stime (ticks).
fn children_of(pid: u32) -> Vec<(u32, u64)> {
    let mut children = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if let Some((ppid, t, _)) = stat(p) {
                if ppid == pid {
                    children.push((p, t));
                }
            }
        }
    }
    children
}

/// The postmaster's pid, from the first line of `<datadir>/postmaster.pid`.
pub fn postmaster_pid(data_dir: &Path) -> Option<u32> {
    std::fs::read_to_string(data_dir.join("postmaster.pid"))
        .ok()?
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()
}

/// A server's CPU so far, as a set of per-process readings (ticks), so
/// that two readings can be subtracted process by process.
#[derive(Debug, Clone, Default)]
pub struct ServerReading {
    /// The postmaster's pid and its four fields.
    postmaster: Option<(u32, u64)>,
    /// Live children: pid and utime + stime.
    children: Vec<(u32, u64)>,
}

impl ServerReading {
    pub fn take(data_dir: &Path) -> ServerReading {
        let Some(pm) = postmaster_pid(data_dir) else {
            return ServerReading::default();
        };
        // A backend reaped between the postmaster's reading and the scan
        // of its children would be in neither (a backend ends just as its
        // tool exits): read the postmaster again after the scan, and scan
        // again if it reaped anything in between.
        let mut last = ServerReading::default();
        for _ in 0..20 {
            let Some((_, own, reaped)) = stat(pm) else {
                return ServerReading::default();
            };
            let children = children_of(pm);
            let Some((_, own2, reaped2)) = stat(pm) else {
                return ServerReading::default();
            };
            last = ServerReading {
                postmaster: Some((pm, own2 + reaped2)),
                children,
            };
            if reaped2 == reaped {
                let _ = own;
                break;
            }
        }
        last
    }

    /// Seconds used from `before` to `self` (`None` if the postmaster was
    /// not the same one at both readings: a restart in between).
    pub fn since(&self, before: &ServerReading) -> Option<f64> {
        let (pm, after_total) = self.postmaster?;
        let (pm0, before_total) = before.postmaster?;
        if pm != pm0 {
            return None;
        }
        let after: u64 = after_total + self.children.iter().map(|c| c.1).sum::<u64>();
        let before: u64 = before_total + before.children.iter().map(|c| c.1).sum::<u64>();
        Some(after.saturating_sub(before) as f64 / clock_ticks())
    }
}
