//! `--source-pressure`: a governor that spares a live source. A sampler
//! task reads the source about once a second on a session of its own
//! ([`crate::pg::pressure`]); a [`Gate`] that every copy worker awaits
//! before it passes on each chunk of COPY data (beside `--max-rate`'s
//! clock) holds the copy while a signal that pauses is over its
//! threshold. A worker held at the gate stops reading its COPY stream, so
//! the source's COPY stops too (tokio-postgres stops reading the socket),
//! and starts no new item (no new snapshot transaction, no new table
//! lock): the source does no more work for us until the gate opens.
//!
//! What each signal does, and why ([`crate::SourcePressure`] says it for
//! the user, the README's "Protecting a live source" too):
//!
//! - **standby replay lag: pause.** The copy's reads and its network
//!   traffic compete with the WAL the source ships to its standbys; a
//!   pause gives them back. It lasts until every standby is under the
//!   threshold again.
//! - **WAL retained by our slot (online): report and warn, never pause.**
//!   The slot's position moves only once the copy is over and streaming
//!   begins: pausing the copy would make the slot retain more, and bring
//!   the slot's loss (at `max_slot_wal_keep_size`) closer, not further.
//! - **lock waits behind our sessions: pause, for at most `lock_pause`
//!   per waiter.** A waiter (an `ALTER TABLE`, a `LOCK TABLE`, a
//!   `CREATE INDEX CONCURRENTLY` waiting for our snapshot's transaction)
//!   waits for the copy's snapshot transaction, which holds `ACCESS
//!   SHARE` on every table it copies until the copy ends (as pg_dump's
//!   does); pausing releases none of that, and cancelling our sessions
//!   would throw the copy away. What a pause does do: no worker starts a
//!   new chunk or table, so none takes a new lock and queues up behind
//!   the waiter (joining the line of sessions piling up behind it), and
//!   the source's I/O goes to the sessions waiting while the operator
//!   decides (the warning names the waiter). The waiter gets its lock
//!   only once the copy ends, so pausing longer would only make it wait
//!   longer: after `lock_pause` the copy goes on and the wait is reported
//!   only (a new wait pauses again). A worker that then starts the very
//!   table the waiter wants queues up behind it: stuck both ways until the
//!   waiter gives up, which the server does not see as a deadlock (our
//!   snapshot's session waits for nothing) and which happens without the
//!   governor too. The governor cannot break it without cancelling
//!   someone's session; it names both and the way out.
//!
//! Once the copy is over (an online run's streaming), the same sampler
//! only reports: the stream holds no table locks on the source, and
//! slowing the apply would make the slot retain more.
//!
//! A sampler that cannot read the source (its session lost, a role that
//! may not see the standbys) opens the gate and says so: the governor
//! never stops a copy it cannot justify.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::config::{EndpointConfig, LagLimit, SourcePressure, WalLimit};
use crate::error::Result;
use crate::pg::pressure::{Sample, Standby};
use crate::pg::{catalog, connect, session};
use crate::progress::{
    human_bytes, Event, PressureReason, PressureSignal, PressureSnapshot, PressureSummary, Progress,
};
use crate::recorded::warn_recorded;
use crate::workers::Workers;

/// How often the source is sampled.
const EVERY: Duration = Duration::from_secs(1);

/// A signal's warning comes at most this often.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// What the copy stage needs to start a governor.
#[derive(Debug, Clone)]
pub struct Watch {
    /// The thresholds.
    pub thresholds: SourcePressure,
    /// The source, as the run's sessions connect to it (its
    /// `application_name` tells our sessions from others').
    pub source: EndpointConfig,
    /// Online: our replication slot, whose WAL is watched.
    pub slot: Option<String>,
}

/// What a copy worker awaits before it passes on each chunk.
#[derive(Debug, Clone)]
pub(crate) struct Gate(watch::Receiver<bool>);

impl Gate {
    /// Returns at once while the copy may go on; otherwise when it may.
    pub(crate) async fn wait(&self) {
        if !*self.0.borrow() {
            return;
        }
        let mut rx = self.0.clone();
        // The sender gone (the governor ended): the copy goes on.
        let _ = rx.wait_for(|paused| !paused).await;
    }
}

/// The sampler task and the gate it holds; [`Governor::finish`] stops and
/// joins it (dropped unfinished, the task is aborted).
pub(crate) struct Governor {
    gate: Gate,
    done: CancellationToken,
    task: Option<Workers>,
    summary: Arc<Mutex<PressureSummary>>,
}

impl Governor {
    /// Start sampling the source for `watch`. `copying`: the gate holds
    /// the copy while a signal that pauses is over its threshold; without
    /// it every signal is only reported. The task stops with `cancel`
    /// (the run's tree) or at [`Governor::finish`].
    pub(crate) fn start(
        watch: &Watch,
        copying: bool,
        progress: Option<Arc<Progress>>,
        cancel: &CancellationToken,
    ) -> Governor {
        let (tx, rx) = watch::channel(false);
        let done = CancellationToken::new();
        let summary = Arc::new(Mutex::new(PressureSummary::default()));
        let mut task = Workers::new(cancel, "source pressure");
        info!(thresholds = %watch.thresholds, copying, "--source-pressure: watching the source");
        let sampler = Sampler {
            watch: watch.clone(),
            copying,
            gate: tx,
            progress,
            summary: summary.clone(),
            memory: Memory::default(),
            paused_since: None,
            pausing: BTreeSet::new(),
            over: BTreeSet::new(),
            warned: HashMap::new(),
            noted: BTreeSet::new(),
        };
        let stop = done.clone();
        task.spawn(async move {
            sampler.run(stop).await;
            Ok(())
        });
        Governor {
            gate: Gate(rx),
            done,
            task: Some(task),
            summary,
        }
    }

    /// What the copy workers await.
    pub(crate) fn gate(&self) -> Gate {
        self.gate.clone()
    }

    /// Stop sampling (the gate opens) and join the task: what the
    /// governor did.
    pub(crate) async fn finish(mut self, cancel: &CancellationToken) -> PressureSummary {
        self.done.cancel();
        if let Some(t) = self.task.take() {
            // The sampler ends by itself; only a cancelled run ends it
            // otherwise, and the copy reports that.
            let _ = t.join(cancel).await;
        }
        let s = lock(&self.summary).clone();
        s
    }
}

impl Drop for Governor {
    fn drop(&mut self) {
        self.done.cancel();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What the assessment remembers from one sample to the next.
#[derive(Debug, Default)]
struct Memory {
    /// Lock waiters seen at the last sample, by pid and wait start.
    waiters: HashMap<(i32, String), Waiter>,
    /// Sessions of ours queued behind a waiter, already warned about
    /// (ours, the waiter).
    stuck: BTreeSet<(i32, i32)>,
}

#[derive(Debug)]
struct Waiter {
    /// When the sampler first saw this wait.
    first_seen: Instant,
    /// When it went over the threshold (and began to hold the copy).
    over_since: Option<Instant>,
    /// Its `lock_pause` ran out: it no longer holds the copy.
    released: bool,
}

/// The signals over their thresholds in `s`, and one-time notes (a lock
/// waiter that stops holding the copy). `copying`: whether a signal that
/// pauses may hold the copy now.
fn assess(
    t: &SourcePressure,
    s: &Sample,
    slot: Option<&str>,
    mem: &mut Memory,
    now: Instant,
    copying: bool,
) -> (Vec<PressureReason>, Vec<String>) {
    let mut reasons = Vec::new();
    let mut notes = Vec::new();
    if let Some(limit) = t.standby_lag {
        if let Some(r) = standby_reason(limit, &s.standbys, copying) {
            reasons.push(r);
        }
    }
    if let (Some(limit), Some(slot_state), Some(name)) = (t.slot_wal, &s.slot, slot) {
        let (value, threshold, unit) = match (limit, slot_state.max_keep_bytes) {
            (WalLimit::Percent(p), Some(max)) if max > 0 => (
                slot_state.retained_bytes as f64 / max as f64 * 100.0,
                p,
                "percent",
            ),
            // Unlimited: nothing to take a share of (the check is off).
            (WalLimit::Percent(_), _) => (0.0, f64::INFINITY, "percent"),
            (WalLimit::Bytes(b), _) => (slot_state.retained_bytes as f64, b as f64, "bytes"),
        };
        if value > threshold {
            let of_max = slot_state
                .max_keep_bytes
                .map(|m| format!(" of max_slot_wal_keep_size {}", human_bytes(m)))
                .unwrap_or_default();
            reasons.push(PressureReason {
                signal: PressureSignal::SlotWal,
                value,
                threshold,
                unit: unit.into(),
                pauses: false,
                detail: format!(
                    "slot {name} retains {}{} (wal_status {}); past max_slot_wal_keep_size the source drops that WAL and the migration must start over. The copy goes on: the slot moves only once streaming begins, so pausing would retain more",
                    human_bytes(slot_state.retained_bytes),
                    match unit {
                        "percent" => format!(", {value:.0}%{of_max}"),
                        _ => of_max,
                    },
                    slot_state.wal_status
                ),
            });
        }
    }
    // Lock waits: every wait is remembered from its first sample, so its
    // length is known on servers without `pg_locks.waitstart` too.
    let seen: BTreeSet<(i32, String)> = s
        .lock_waiters
        .iter()
        .map(|w| (w.pid, w.wait_started.clone()))
        .collect();
    mem.waiters.retain(|k, _| seen.contains(k));
    // A session of ours queued behind a waiter that waits for our
    // snapshot: neither can move until the waiter gets its lock (when the
    // copy ends, which that session holds up) or gives up. The server
    // sees no deadlock (our snapshot's session waits for nothing), so
    // only the waiter's end breaks it: say so, once.
    let mut stuck = Vec::new();
    if t.lock_wait_seconds.is_some() {
        for ours in &s.ours_waiting {
            for w in s
                .lock_waiters
                .iter()
                .filter(|w| ours.behind.contains(&w.pid))
            {
                stuck.push(format!(
                    "our session pid {} is queued behind pid {} for {} on {}",
                    ours.pid, w.pid, w.mode, w.object
                ));
                if mem.stuck.insert((ours.pid, w.pid)) {
                    notes.push(format!(
                        "source pressure: our session pid {} ({}) is queued behind pid {}, which waits for {} on {} \
                         behind our copy's snapshot: neither can go on until pid {} gives up or is cancelled \
                         (SELECT pg_cancel_backend({})); the server sees no deadlock, since our snapshot's session waits \
                         for nothing",
                        ours.pid,
                        ours.query.split_whitespace().collect::<Vec<_>>().join(" "),
                        w.pid,
                        w.mode,
                        w.object,
                        w.pid,
                        w.pid
                    ));
                }
            }
        }
    }
    mem.stuck.retain(|(o, w)| {
        s.ours_waiting
            .iter()
            .any(|x| x.pid == *o && x.behind.contains(w))
    });
    if let Some(limit) = t.lock_wait_seconds {
        let pause = Duration::from_secs_f64(t.lock_pause_seconds);
        let mut over = Vec::new();
        for w in &s.lock_waiters {
            let m = mem
                .waiters
                .entry((w.pid, w.wait_started.clone()))
                .or_insert(Waiter {
                    first_seen: now,
                    over_since: None,
                    released: false,
                });
            let waited = w
                .waited_seconds
                .unwrap_or_else(|| now.duration_since(m.first_seen).as_secs_f64());
            if waited < limit {
                continue;
            }
            let since = *m.over_since.get_or_insert(now);
            let holds = copying && !m.released && now.duration_since(since) < pause;
            if copying && !holds && !m.released {
                m.released = true;
                if !pause.is_zero() {
                    notes.push(format!(
                        "source pressure: pid {} has waited {waited:.0}s for {} on {}; the copy paused {:.0}s for it and goes on now: \
                         the copy's snapshot holds ACCESS SHARE on every table it copies until the copy ends, so the wait ends \
                         then (or when the waiter gives up: cancelling it frees the sessions queued behind it)",
                        w.pid, w.mode, w.object, t.lock_pause_seconds
                    ));
                }
            }
            over.push((waited, holds, w));
        }
        if let Some((waited, _, w)) = over
            .iter()
            .max_by(|a, b| a.0.total_cmp(&b.0))
            .map(|(s, h, w)| (*s, *h, *w))
        {
            let holds = over.iter().any(|o| o.1);
            let query = if w.query.is_empty() {
                String::new()
            } else {
                format!(
                    " ({})",
                    w.query.split_whitespace().collect::<Vec<_>>().join(" ")
                )
            };
            let more = match over.len() {
                1 => String::new(),
                n => format!(", and {} more", n - 1),
            };
            let action = if holds {
                format!(
                    "no worker reads on until it clears (at most {:.0}s a waiter: our snapshot's locks are released only when the copy ends)",
                    t.lock_pause_seconds
                )
            } else if copying {
                "reported only: the wait ends when the copy's snapshot does".into()
            } else {
                "reported only".into()
            };
            let stuck = if stuck.is_empty() {
                String::new()
            } else {
                format!(
                    ". Stuck: {}; it cannot go on until that waiter gives up or is cancelled",
                    stuck.join(", ")
                )
            };
            reasons.push(PressureReason {
                signal: PressureSignal::LockWait,
                value: waited,
                threshold: limit,
                unit: "seconds".into(),
                pauses: holds,
                detail: format!(
                    "pid {} has waited {waited:.1}s for {} on {}{query}{more}; {action}{stuck}",
                    w.pid, w.mode, w.object
                ),
            });
        }
    }
    (reasons, notes)
}

/// The standby furthest behind, when it is over `limit`.
fn standby_reason(limit: LagLimit, standbys: &[Standby], copying: bool) -> Option<PressureReason> {
    let (value, threshold, unit, worst) = match limit {
        LagLimit::Seconds(th) => {
            let w = standbys
                .iter()
                .max_by(|a, b| a.lag_seconds.total_cmp(&b.lag_seconds))?;
            (w.lag_seconds, th, "seconds", w)
        }
        LagLimit::Bytes(th) => {
            let w = standbys.iter().max_by_key(|s| s.lag_bytes)?;
            (w.lag_bytes as f64, th as f64, "bytes", w)
        }
    };
    if value <= threshold {
        return None;
    }
    let behind: usize = standbys
        .iter()
        .filter(|s| match limit {
            LagLimit::Seconds(th) => s.lag_seconds > th,
            LagLimit::Bytes(th) => s.lag_bytes > th,
        })
        .count();
    Some(PressureReason {
        signal: PressureSignal::StandbyLag,
        value,
        threshold,
        unit: unit.into(),
        pauses: copying,
        detail: format!(
            "standby {} replays {} behind the source ({:.1}s){}; {}",
            if worst.name.is_empty() {
                "(unnamed)"
            } else {
                &worst.name
            },
            human_bytes(worst.lag_bytes),
            worst.lag_seconds,
            match behind {
                0 | 1 => String::new(),
                n => format!(", {} standbys over the limit", n),
            },
            if copying {
                "the copy pauses until every standby is back under the limit"
            } else {
                "reported only"
            }
        ),
    })
}

/// The sampler task's state.
struct Sampler {
    watch: Watch,
    copying: bool,
    gate: watch::Sender<bool>,
    progress: Option<Arc<Progress>>,
    summary: Arc<Mutex<PressureSummary>>,
    memory: Memory,
    /// The current pause began then.
    paused_since: Option<Instant>,
    /// The signals holding the current pause.
    pausing: BTreeSet<PressureSignal>,
    /// The signals over their threshold at the last sample.
    over: BTreeSet<PressureSignal>,
    /// When each signal last warned.
    warned: HashMap<PressureSignal, Instant>,
    /// Notes given once (a check that is off, standbys it cannot see).
    noted: BTreeSet<&'static str>,
}

impl Sampler {
    async fn run(mut self, done: CancellationToken) {
        let app = self
            .watch
            .source
            .application_name
            .clone()
            .unwrap_or_default();
        let mut session: Option<(Client, i32)> = None;
        let mut outage = connect::Outage::default();
        let mut tick = tokio::time::interval(EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = done.cancelled() => break,
                _ = tick.tick() => {}
            }
            if session.is_none() {
                match open(&self.watch.source).await {
                    Ok(s) => {
                        if let Some((down, n)) = outage.recovered() {
                            info!(down_for = ?down, failures = n, "--source-pressure: sampling the source again");
                        }
                        session = Some(s);
                    }
                    Err(e) => {
                        self.blind(&mut outage, &e, &done).await;
                        continue;
                    }
                }
            }
            let (c, version) = session.as_ref().expect("opened above");
            let sample = tokio::select! {
                _ = done.cancelled() => break,
                r = crate::pg::pressure::sample(c, *version, &app, self.watch.slot.as_deref()) => r,
            };
            match sample {
                Ok(s) => {
                    let _ = outage.recovered();
                    self.observe(&s, Instant::now());
                }
                Err(e) => {
                    session = None;
                    self.blind(&mut outage, &e, &done).await;
                }
            }
        }
        self.apply(Vec::new(), Instant::now());
    }

    /// The source cannot be read: the gate opens (a governor that cannot
    /// see does not hold the copy), the outage is logged as it lasts.
    async fn blind(
        &mut self,
        outage: &mut connect::Outage,
        e: &crate::error::MigrationError,
        done: &CancellationToken,
    ) {
        self.apply(Vec::new(), Instant::now());
        let delay = outage.note(
            e,
            "--source-pressure cannot read the source; the copy is not held meanwhile",
        );
        tokio::select! {
            _ = done.cancelled() => {}
            _ = tokio::time::sleep(delay.saturating_sub(EVERY)) => {}
        }
    }

    fn observe(&mut self, s: &Sample, now: Instant) {
        if s.hidden_standbys > 0 && self.noted.insert("hidden standbys") {
            warn_recorded!(
                "--source-pressure: the source role may not read the positions of {} standby(s) (it needs pg_read_all_stats, or superuser): their lag is not watched",
                s.hidden_standbys
            );
        }
        if let (Some(WalLimit::Percent(p)), Some(slot)) = (self.watch.thresholds.slot_wal, &s.slot)
        {
            if slot.max_keep_bytes.is_none() && self.noted.insert("unlimited slot") {
                info!(
                    "--source-pressure: max_slot_wal_keep_size is -1 (unlimited) on the source, so slot-wal={p}% has nothing to take a share of and is off (slot-wal=SIZE sets a limit in bytes)"
                );
            }
        }
        let (reasons, notes) = assess(
            &self.watch.thresholds,
            s,
            self.watch.slot.as_deref(),
            &mut self.memory,
            now,
            self.copying,
        );
        for n in notes {
            warn_recorded!("{n}");
        }
        self.apply(reasons, now);
    }

    /// Act on the signals over their threshold now: the gate, the
    /// events, the warnings, the snapshot, the totals.
    fn apply(&mut self, reasons: Vec<PressureReason>, now: Instant) {
        let pausing: BTreeSet<PressureSignal> = reasons
            .iter()
            .filter(|r| r.pauses)
            .map(|r| r.signal)
            .collect();
        let over: BTreeSet<PressureSignal> = reasons.iter().map(|r| r.signal).collect();
        // A warning when a signal goes over, at most once a minute each.
        for r in &reasons {
            if self.over.contains(&r.signal) {
                continue;
            }
            let due = self
                .warned
                .get(&r.signal)
                .is_none_or(|t| now.duration_since(*t) >= WARN_EVERY);
            if due {
                self.warned.insert(r.signal, now);
                warn_recorded!(
                    "source pressure: {} over its threshold ({}): {}",
                    r.signal.describe(),
                    r.measured(),
                    r.detail
                );
            }
        }
        let mut summary = lock(&self.summary);
        for s in &over {
            if !summary.signals.contains(s) {
                summary.signals.push(*s);
                summary.signals.sort();
            }
        }
        match (self.paused_since, pausing.is_empty()) {
            (None, false) => {
                self.paused_since = Some(now);
                summary.pauses += 1;
                self.gate.send_replace(true);
                info!(
                    reasons = %pausing.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(","),
                    "--source-pressure: the copy pauses"
                );
                self.publish(Event::Throttled {
                    reasons: reasons.clone(),
                });
            }
            (Some(_), false) if pausing != self.pausing => {
                self.publish(Event::Throttled {
                    reasons: reasons.clone(),
                });
            }
            (Some(since), true) => {
                let seconds = now.duration_since(since).as_secs_f64();
                summary.paused_seconds += seconds;
                self.paused_since = None;
                self.gate.send_replace(false);
                info!(
                    seconds = format!("{seconds:.1}"),
                    "--source-pressure: the copy goes on"
                );
                self.publish(Event::Unthrottled {
                    seconds,
                    paused_seconds: summary.paused_seconds,
                });
            }
            _ => {}
        }
        let current = self
            .paused_since
            .map(|t| now.duration_since(t).as_secs_f64())
            .unwrap_or(0.0);
        let snapshot = PressureSnapshot {
            paused: self.paused_since.is_some(),
            reasons,
            paused_seconds: summary.paused_seconds + current,
            pauses: summary.pauses,
        };
        drop(summary);
        debug!(
            paused = snapshot.paused,
            reasons = snapshot.reasons.len(),
            "source pressure sampled"
        );
        if let Some(p) = &self.progress {
            p.set_pressure(snapshot);
        }
        self.pausing = pausing;
        self.over = over;
    }

    fn publish(&self, e: Event) {
        if let Some(p) = &self.progress {
            p.publish(e);
        }
    }
}

/// The sampler's session on the source, and the server's version. Its
/// round trips stay out of the run's count (the report's `round_trips`
/// is the migration's own work).
async fn open(ep: &EndpointConfig) -> Result<(Client, i32)> {
    let c = crate::pg::meter::apart(connect::connect(ep, "source")).await?;
    session::setup_source(&c).await?;
    let version = catalog::server_version_num(&c).await?;
    Ok((c, version))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::pressure::{LockWaiter, SlotRetention};

    fn waiter(pid: i32, waited: Option<f64>) -> LockWaiter {
        LockWaiter {
            pid,
            waited_seconds: waited,
            wait_started: if waited.is_some() {
                format!("t{pid}")
            } else {
                String::new()
            },
            mode: "AccessExclusiveLock".into(),
            object: "public.t".into(),
            query: "LOCK TABLE t IN ACCESS EXCLUSIVE MODE".into(),
        }
    }

    #[test]
    fn a_standby_behind_pauses_only_while_copying() {
        let t = SourcePressure::default();
        let s = Sample {
            standbys: vec![
                Standby {
                    name: "a".into(),
                    lag_bytes: 10,
                    lag_seconds: 5.0,
                },
                Standby {
                    name: "b".into(),
                    lag_bytes: 99,
                    lag_seconds: 45.0,
                },
            ],
            ..Default::default()
        };
        let now = Instant::now();
        let (r, _) = assess(&t, &s, None, &mut Memory::default(), now, true);
        assert_eq!(r.len(), 1);
        assert_eq!(
            (r[0].signal, r[0].value, r[0].pauses),
            (PressureSignal::StandbyLag, 45.0, true)
        );
        assert!(r[0].detail.contains("standby b"), "{}", r[0].detail);
        let (r, _) = assess(&t, &s, None, &mut Memory::default(), now, false);
        assert!(!r[0].pauses, "after the copy: reported only");
        let bytes = SourcePressure {
            standby_lag: Some(LagLimit::Bytes(100)),
            ..t
        };
        assert!(assess(&bytes, &s, None, &mut Memory::default(), now, true)
            .0
            .is_empty());
    }

    #[test]
    fn slot_wal_is_reported_never_paused_and_off_when_unlimited() {
        let t = SourcePressure::default();
        let mut s = Sample {
            slot: Some(SlotRetention {
                retained_bytes: 90 << 20,
                max_keep_bytes: Some(100 << 20),
                wal_status: "extended".into(),
            }),
            ..Default::default()
        };
        let now = Instant::now();
        let (r, _) = assess(&t, &s, Some("slot"), &mut Memory::default(), now, true);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].signal, PressureSignal::SlotWal);
        assert!(
            (r[0].value - 90.0).abs() < 1e-9 && !r[0].pauses,
            "{:?}",
            r[0]
        );
        s.slot.as_mut().unwrap().max_keep_bytes = None;
        assert!(
            assess(&t, &s, Some("slot"), &mut Memory::default(), now, true)
                .0
                .is_empty()
        );
        let bytes = SourcePressure {
            slot_wal: Some(WalLimit::Bytes(1 << 20)),
            ..t
        };
        assert_eq!(
            assess(&bytes, &s, Some("slot"), &mut Memory::default(), now, true)
                .0
                .len(),
            1
        );
    }

    #[test]
    fn a_lock_waiter_holds_the_copy_for_at_most_lock_pause() {
        let t = SourcePressure {
            lock_pause_seconds: 10.0,
            ..SourcePressure::default()
        };
        let mut mem = Memory::default();
        let t0 = Instant::now();
        // Without waitstart (PostgreSQL 13): counted from the first sample.
        let s = Sample {
            lock_waiters: vec![waiter(7, None)],
            ..Default::default()
        };
        assert!(
            assess(&t, &s, None, &mut mem, t0, true).0.is_empty(),
            "not waited 1s yet"
        );
        let (r, _) = assess(&t, &s, None, &mut mem, t0 + Duration::from_secs(2), true);
        assert_eq!((r[0].signal, r[0].pauses), (PressureSignal::LockWait, true));
        assert!((r[0].value - 2.0).abs() < 1e-9);
        let (r, notes) = assess(&t, &s, None, &mut mem, t0 + Duration::from_secs(13), true);
        assert!(!r[0].pauses, "its pause ran out");
        assert_eq!(notes.len(), 1, "said once");
        let (_, notes) = assess(&t, &s, None, &mut mem, t0 + Duration::from_secs(14), true);
        assert!(notes.is_empty());
        // A new wait (another statement of the same pid) pauses again.
        let s = Sample {
            lock_waiters: vec![waiter(7, Some(3.0))],
            ..Default::default()
        };
        let (r, _) = assess(&t, &s, None, &mut mem, t0 + Duration::from_secs(15), true);
        assert!(r[0].pauses);
        // A session of ours queued behind that waiter: said once, and in
        // the reason.
        let s = Sample {
            lock_waiters: vec![waiter(7, Some(3.0))],
            ours_waiting: vec![crate::pg::pressure::OursWaiting {
                pid: 9,
                behind: vec![7],
                query: "COPY public.t TO STDOUT".into(),
            }],
            ..Default::default()
        };
        let (r, notes) = assess(&t, &s, None, &mut mem, t0 + Duration::from_secs(16), true);
        assert!(
            r[0].detail
                .contains("Stuck: our session pid 9 is queued behind pid 7"),
            "{}",
            r[0].detail
        );
        assert_eq!(notes.len(), 1);
        assert!(notes[0].contains("pg_cancel_backend(7)"), "{}", notes[0]);
        let (_, notes) = assess(&t, &s, None, &mut mem, t0 + Duration::from_secs(17), true);
        assert!(notes.is_empty(), "said once");
        // lock-pause=0: reported only.
        let s = Sample {
            lock_waiters: vec![waiter(7, Some(3.0))],
            ..Default::default()
        };
        let only = SourcePressure {
            lock_pause_seconds: 0.0,
            ..t
        };
        let (r, notes) = assess(&only, &s, None, &mut Memory::default(), t0, true);
        assert!(!r[0].pauses && notes.is_empty());
    }
}
