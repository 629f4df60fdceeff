//! `--max-rate`: a cap on how fast the copy reads the source, shared by
//! every worker, so a migration from a live server leaves it the I/O and
//! the network it needs.
//!
//! Each chunk of COPY data reserves its share of time on one clock (a
//! generic cell rate algorithm): it may leave at the reserved instant, and
//! the next one after it by its size over the rate. A short burst (a tenth
//! of a second's worth) is let through at once, so a worker that waited
//! does not lose the time it spent waiting. A stage helper: no I/O.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The shared cap (bytes a second over all workers).
#[derive(Debug)]
pub struct RateLimit {
    bytes_per_second: u64,
    /// When the next byte may leave.
    next: Mutex<Instant>,
}

/// How much earlier than its slot a chunk may leave after a quiet spell.
const BURST: Duration = Duration::from_millis(100);

impl RateLimit {
    /// A cap of `bytes_per_second` (more than 0).
    pub fn new(bytes_per_second: u64) -> Self {
        RateLimit {
            bytes_per_second: bytes_per_second.max(1),
            next: Mutex::new(Instant::now()),
        }
    }

    /// The cap.
    pub fn bytes_per_second(&self) -> u64 {
        self.bytes_per_second
    }

    /// Wait until `bytes` more may be read.
    pub async fn take(&self, bytes: usize) {
        let at = self.reserve(bytes, Instant::now());
        if at > Instant::now() {
            tokio::time::sleep_until(at.into()).await;
        }
    }

    /// Reserve the time `bytes` take, asked at `now`: when they may leave.
    fn reserve(&self, bytes: usize, now: Instant) -> Instant {
        let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
        let at = (*next).max(now.checked_sub(BURST).unwrap_or(now));
        *next = at + Duration::from_secs_f64(bytes as f64 / self.bytes_per_second as f64);
        at
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_follow_the_rate_after_a_short_burst() {
        let limit = RateLimit::new(1_000_000);
        let t0 = Instant::now() + Duration::from_secs(1);
        // Four takers asking at once, 50 chunks of 10 kB each: 2 MB.
        let mut last = t0;
        for _ in 0..200 {
            last = limit.reserve(10_000, t0);
        }
        // The first slot is a burst's worth early; the last leaves 2 s of
        // data later, less its own 10 ms.
        let first_free = t0 - BURST;
        let span = last.duration_since(first_free).as_secs_f64();
        assert!((span - 1.99).abs() < 1e-6, "{span}");
        // After a quiet spell, the bytes may go at once (within the burst).
        let later = last + Duration::from_secs(5);
        assert_eq!(limit.reserve(10_000, later), later - BURST);
    }
}
