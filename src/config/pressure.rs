//! `--source-pressure`: the thresholds of the governor that spares a live
//! source, and their one-string form (`standby-lag=30s,slot-wal=80%,
//! lock-wait=1s,lock-pause=60s`) that the command line, the environment
//! and a config file give.
//!
//! What each signal does once it crosses its threshold is the copy
//! stage's business (`copy::pressure`); here is only what the user asked
//! for, checked. Pure: no I/O.

use std::fmt;

use crate::error::{MigrationError, Result};

/// When the copy pauses to spare a live source, and what it reports
/// (`--source-pressure`; `None` in [`crate::MigrationConfig`]: off).
///
/// The source is sampled about once a second on a session of its own.
/// What each signal does, and why:
///
/// - `standby_lag`: a physical standby replays further behind than this
///   (time or bytes). The copy **pauses** until every standby is back
///   under it: the copy's reads and its network traffic are what compete
///   with the WAL the source ships to its standbys.
/// - `slot_wal` (online): our replication slot retains more WAL than this
///   (a share of `max_slot_wal_keep_size`, or bytes). **Reported and
///   warned, never paused**: the slot advances only once the copy is over
///   and streaming begins, so a pause would only retain more. With a
///   share and `max_slot_wal_keep_size = -1` (unlimited, the default)
///   there is nothing to take a share of: the check is off (give bytes).
/// - `lock_wait_seconds`: a session has waited this long for a lock one
///   of our sessions holds. The copy **pauses** (no worker reads its next
///   chunk, so none takes a new table's lock and queues up behind the
///   waiter), but for at most `lock_pause_seconds` per waiter: the copy's
///   snapshot transaction holds `ACCESS SHARE` on every table it copies
///   until the copy ends (as pg_dump does), so the waiter gets its lock
///   only once the copy is over, and a longer pause would only make it
///   wait longer. Then the copy goes on (the wait is still reported). A
///   worker that then starts the very table the waiter wants queues up
///   behind it, and neither moves until the waiter gives up or is
///   cancelled (with or without the governor; it names both sessions
///   and the way out).
///
/// Pausing never ends a session: nothing of ours is cancelled, and a
/// paused copy keeps its snapshot (and its locks) open, which also holds
/// back the source's vacuum horizon for as long as the pause lasts.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct SourcePressure {
    /// Pause the copy while a physical standby replays further behind
    /// than this (`None`: standbys are not watched).
    pub standby_lag: Option<LagLimit>,
    /// Online: warn while our replication slot retains more WAL than
    /// this (`None`: not watched). Never pauses (see above).
    pub slot_wal: Option<WalLimit>,
    /// Pause the copy once a session has waited this many seconds for a
    /// lock one of our sessions holds (`None`: lock waits are not
    /// watched).
    pub lock_wait_seconds: Option<f64>,
    /// The longest one lock waiter keeps the copy paused, in seconds; 0:
    /// lock waits are reported, never paused for.
    pub lock_pause_seconds: f64,
}

/// How far behind a standby may be.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LagLimit {
    /// Its replay lag (`pg_stat_replication.replay_lag`), in seconds.
    Seconds(f64),
    /// WAL bytes between the source's position and its replay position.
    Bytes(u64),
}

/// How much WAL our slot may retain.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WalLimit {
    /// A share of the source's `max_slot_wal_keep_size`, 0 to 100: beyond
    /// that setting the server invalidates the slot and the migration
    /// must start over. Off when the setting is -1 (unlimited).
    Percent(f64),
    /// Bytes of WAL, whatever `max_slot_wal_keep_size` is.
    Bytes(u64),
}

impl Default for SourcePressure {
    fn default() -> Self {
        SourcePressure {
            standby_lag: Some(LagLimit::Seconds(30.0)),
            slot_wal: Some(WalLimit::Percent(80.0)),
            lock_wait_seconds: Some(1.0),
            lock_pause_seconds: 60.0,
        }
    }
}

/// The keys of the one-string form.
const KEYS: &str = "standby-lag, slot-wal, lock-wait, lock-pause";

impl SourcePressure {
    /// The one-string form: empty, `on` or `defaults` for the defaults;
    /// otherwise `key=value` pairs separated by commas, each replacing
    /// one default: `standby-lag=30s` (or bytes: `64MB`), `slot-wal=80%`
    /// (or bytes: `10GB`), `lock-wait=1s`, `lock-pause=60s`; `off` turns
    /// a signal off (`lock-pause=0`: lock waits are only reported).
    /// Durations take `ms`, `s`, `min` or `h` (a bare number is seconds),
    /// sizes `B`, `kB`, `MB`, `GB` or `TB`.
    pub fn parse(s: &str) -> Result<SourcePressure> {
        let mut p = SourcePressure::default();
        let t = s.trim();
        if matches!(
            t.to_ascii_lowercase().as_str(),
            "" | "on" | "true" | "default" | "defaults"
        ) {
            return Ok(p);
        }
        let bad = |m: String| MigrationError::Config(format!("--source-pressure {s:?}: {m}"));
        for part in t.split(',').map(str::trim).filter(|x| !x.is_empty()) {
            let Some((key, value)) = part.split_once('=') else {
                return Err(bad(format!(
                    "{part:?} is not key=value (keys: {KEYS}; e.g. standby-lag=30s,slot-wal=80%,lock-wait=1s)"
                )));
            };
            let (key, value) = (
                key.trim().replace('_', "-").to_ascii_lowercase(),
                value.trim(),
            );
            let off = value.eq_ignore_ascii_case("off");
            match key.as_str() {
                "standby-lag" => {
                    p.standby_lag = if off {
                        None
                    } else {
                        Some(match size(value) {
                            Some(Ok(b)) => LagLimit::Bytes(b),
                            Some(Err(e)) => return Err(bad(format!("standby-lag: {e}"))),
                            None => LagLimit::Seconds(
                                seconds(value).map_err(|e| bad(format!("standby-lag: {e}")))?,
                            ),
                        })
                    }
                }
                "slot-wal" => {
                    p.slot_wal = if off {
                        None
                    } else if let Some(pct) = value.strip_suffix('%') {
                        let n: f64 = pct.trim().parse().map_err(|_| {
                            bad(format!(
                                "slot-wal: {value:?} is not a percentage (e.g. 80%)"
                            ))
                        })?;
                        Some(WalLimit::Percent(n))
                    } else {
                        match size(value) {
                            Some(Ok(b)) => Some(WalLimit::Bytes(b)),
                            Some(Err(e)) => return Err(bad(format!("slot-wal: {e}"))),
                            None => {
                                return Err(bad(format!(
                                    "slot-wal: {value:?} is neither a share of max_slot_wal_keep_size (80%) nor a size (10GB)"
                                )))
                            }
                        }
                    }
                }
                "lock-wait" => {
                    p.lock_wait_seconds = if off {
                        None
                    } else {
                        Some(seconds(value).map_err(|e| bad(format!("lock-wait: {e}")))?)
                    }
                }
                "lock-pause" => {
                    p.lock_pause_seconds = if off {
                        0.0
                    } else {
                        seconds(value).map_err(|e| bad(format!("lock-pause: {e}")))?
                    }
                }
                other => {
                    return Err(bad(format!("unknown key {other:?} (keys: {KEYS})")));
                }
            }
        }
        p.validate()?;
        Ok(p)
    }

    /// The checks of [`crate::MigrationConfig::validate`]: every threshold
    /// is a finite number above 0, a share is at most 100%.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(MigrationError::Config(format!("--source-pressure: {m}")));
        let positive = |x: f64| x.is_finite() && x > 0.0;
        match self.standby_lag {
            Some(LagLimit::Seconds(s)) if !positive(s) => {
                return bad(format!("standby-lag must be more than 0 seconds (got {s})"))
            }
            Some(LagLimit::Bytes(0)) => return bad("standby-lag must be more than 0 bytes".into()),
            _ => {}
        }
        match self.slot_wal {
            Some(WalLimit::Percent(p)) if !positive(p) || p > 100.0 => {
                return bad(format!(
                    "slot-wal must be a share of max_slot_wal_keep_size above 0% and at most 100% (got {p}%)"
                ))
            }
            Some(WalLimit::Bytes(0)) => return bad("slot-wal must be more than 0 bytes".into()),
            _ => {}
        }
        if let Some(s) = self.lock_wait_seconds {
            if !positive(s) {
                return bad(format!("lock-wait must be more than 0 seconds (got {s})"));
            }
        }
        if !self.lock_pause_seconds.is_finite() || self.lock_pause_seconds < 0.0 {
            return bad(format!(
                "lock-pause must be 0 (report only) or more seconds (got {})",
                self.lock_pause_seconds
            ));
        }
        Ok(())
    }
}

impl std::str::FromStr for SourcePressure {
    type Err = MigrationError;
    fn from_str(s: &str) -> Result<Self> {
        SourcePressure::parse(s)
    }
}

/// The one-string form, every key spelled out (what the log shows).
impl fmt::Display for SourcePressure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = |s: f64| format!("{s}s");
        let standby = match self.standby_lag {
            None => "off".into(),
            Some(LagLimit::Seconds(s)) => secs(s),
            Some(LagLimit::Bytes(b)) => format!("{b}B"),
        };
        let slot = match self.slot_wal {
            None => "off".into(),
            Some(WalLimit::Percent(p)) => format!("{p}%"),
            Some(WalLimit::Bytes(b)) => format!("{b}B"),
        };
        let wait = self.lock_wait_seconds.map_or("off".into(), secs);
        write!(
            f,
            "standby-lag={standby},slot-wal={slot},lock-wait={wait},lock-pause={}",
            secs(self.lock_pause_seconds)
        )
    }
}

/// A size as PostgreSQL writes them (`512kB`, `64MB`, `1GB`), or `None`
/// when `s` has no size unit (a bare number is not a size here).
fn size(s: &str) -> Option<std::result::Result<u64, String>> {
    let lower = s.trim().to_ascii_lowercase();
    let (num, mult) = [
        ("kb", 1u64 << 10),
        ("mb", 1 << 20),
        ("gb", 1 << 30),
        ("tb", 1 << 40),
        ("b", 1),
    ]
    .iter()
    .find_map(|(unit, mult)| {
        lower
            .strip_suffix(unit)
            .map(|n| (n.trim().to_string(), *mult))
    })?;
    Some(
        num.parse::<u64>()
            .map_err(|_| format!("{s:?} is not a size (e.g. 64MB)"))
            .and_then(|n| {
                n.checked_mul(mult)
                    .ok_or_else(|| format!("{s:?} is too large"))
            }),
    )
}

/// A duration in seconds: `500ms`, `30s`, `2min`, `1h`, or a bare number
/// of seconds.
fn seconds(s: &str) -> std::result::Result<f64, String> {
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    if num.is_empty() {
        return Err(format!("{s:?} is not a duration (e.g. 30s)"));
    }
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "s" | "sec" => 1.0,
        "ms" => 0.001,
        "min" => 60.0,
        "h" => 3600.0,
        "m" => return Err(format!("{s:?}: write min for minutes (or MB for a size)")),
        u => return Err(format!("{s:?}: unknown unit {u:?} (use ms, s, min or h)")),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (e.g. 30s)"))?;
    Ok(n * mult)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_one_string_form_reads_every_key_and_keeps_the_defaults_it_does_not_name() {
        assert_eq!(
            SourcePressure::parse("").unwrap(),
            SourcePressure::default()
        );
        assert_eq!(
            SourcePressure::parse("on").unwrap(),
            SourcePressure::default()
        );
        let p = SourcePressure::parse("standby-lag=64MB, lock_wait=500ms").unwrap();
        assert_eq!(p.standby_lag, Some(LagLimit::Bytes(64 << 20)));
        assert_eq!(p.lock_wait_seconds, Some(0.5));
        assert_eq!(p.slot_wal, Some(WalLimit::Percent(80.0)), "default kept");
        let p = SourcePressure::parse("standby-lag=2min,slot-wal=10GB,lock-pause=0").unwrap();
        assert_eq!(p.standby_lag, Some(LagLimit::Seconds(120.0)));
        assert_eq!(p.slot_wal, Some(WalLimit::Bytes(10 << 30)));
        assert_eq!(p.lock_pause_seconds, 0.0);
        let p = SourcePressure::parse("standby-lag=off,slot-wal=off,lock-wait=off").unwrap();
        assert_eq!(
            (p.standby_lag, p.slot_wal, p.lock_wait_seconds),
            (None, None, None)
        );
        // The printed form reads back as the same thresholds.
        let p = SourcePressure::parse("standby-lag=1kB,slot-wal=50%,lock-wait=2s").unwrap();
        assert_eq!(SourcePressure::parse(&p.to_string()).unwrap(), p);
    }

    #[test]
    fn bad_values_name_the_key_and_what_to_write() {
        for (s, needle) in [
            ("standby-lag", "key=value"),
            ("bogus=1s", "unknown key \"bogus\""),
            ("lock-wait=soon", "not a duration"),
            ("lock-wait=0s", "more than 0 seconds"),
            ("standby-lag=5m", "min for minutes"),
            ("slot-wal=120%", "at most 100%"),
            ("slot-wal=lots", "neither a share"),
            ("lock-pause=-1", "lock-pause"),
            ("standby-lag=xMB", "not a size"),
        ] {
            let e = SourcePressure::parse(s).unwrap_err().to_string();
            assert!(e.contains("--source-pressure"), "{s}: {e}");
            assert!(e.contains(needle), "{s}: {e}");
        }
    }
}
