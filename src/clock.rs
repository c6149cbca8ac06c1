//! The one clock every TTL, lease, presence lapse and wait window is measured on.
//!
//! Timestamps are milliseconds since the Unix epoch, so that they can be stored and survive a
//! restart. Within one daemon's life they advance on the *monotonic* clock: the wall clock is read
//! once, at start, as an anchor, and everything after is `anchor + elapsed`. A wall-clock step
//! (NTP, a user changing the date) therefore neither expires nor extends a TTL early. Across a
//! restart the anchor is re-read, so remaining time is computed against the wall clock then.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, as seen by [`Clock::now_ms`].
pub type Millis = i64;

/// A source of time for the core. Injectable so tests can drive expiry without sleeping.
pub trait Clock: Send + Sync + 'static {
    fn now_ms(&self) -> Millis;
}

/// The production clock: wall-clock anchor at construction, monotonic afterwards.
#[derive(Debug, Clone)]
pub struct MonotonicClock {
    anchor_wall_ms: Millis,
    anchor: Instant,
}

impl MonotonicClock {
    pub fn new() -> Self {
        let anchor_wall_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as Millis)
            .unwrap_or(0);
        Self::anchored_at(anchor_wall_ms)
    }

    /// A clock that reads `anchor_wall_ms` now and advances on the monotonic clock from here.
    /// The wall clock is never consulted again: that is what makes a wall-clock step harmless.
    pub fn anchored_at(anchor_wall_ms: Millis) -> Self {
        MonotonicClock {
            anchor_wall_ms,
            anchor: Instant::now(),
        }
    }
}

impl Default for MonotonicClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for MonotonicClock {
    fn now_ms(&self) -> Millis {
        self.anchor_wall_ms + self.anchor.elapsed().as_millis() as Millis
    }
}

/// A clock that only moves when told to; for unit tests of the core.
#[derive(Debug, Clone, Default)]
pub struct ManualClock {
    now: Arc<AtomicI64>,
}

impl ManualClock {
    pub fn new(start_ms: Millis) -> Self {
        ManualClock {
            now: Arc::new(AtomicI64::new(start_ms)),
        }
    }

    pub fn advance_ms(&self, by: Millis) {
        self.now.fetch_add(by, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> Millis {
        self.now.load(Ordering::SeqCst)
    }
}

/// Whole seconds left until `deadline`, rounded up, never negative.
pub fn seconds_left(deadline: Millis, now: Millis) -> i64 {
    let ms = (deadline - now).max(0);
    (ms + 999) / 1000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_left_rounds_up_and_clamps() {
        assert_eq!(seconds_left(1_000, 0), 1);
        assert_eq!(seconds_left(1_001, 0), 2);
        assert_eq!(seconds_left(999, 0), 1);
        assert_eq!(seconds_left(0, 10), 0);
    }

    #[test]
    fn a_wall_clock_step_neither_expires_nor_extends_anything() {
        // Anchor at a wall time an hour away from the real one, as if the wall clock stepped by
        // an hour right after start. The clock must keep counting from its anchor at the
        // monotonic rate: a deadline 100 ms ahead is neither already past (a forward step would
        // expire it early) nor an hour away (a backward step would extend it).
        for step_ms in [3_600_000, -3_600_000] {
            let real_wall = MonotonicClock::new().now_ms();
            let anchor = real_wall + step_ms;
            let c = MonotonicClock::anchored_at(anchor);
            let deadline = c.now_ms() + 100;
            assert!(
                c.now_ms() < deadline,
                "expired at once after a {step_ms} ms step"
            );
            std::thread::sleep(std::time::Duration::from_millis(150));
            let now = c.now_ms();
            assert!(
                now >= deadline,
                "not expired after its TTL ({step_ms} ms step)"
            );
            assert!(
                (0..60_000).contains(&(now - anchor)),
                "the clock followed the wall clock ({step_ms} ms step)"
            );
        }
    }

    #[test]
    fn monotonic_clock_does_not_go_backwards() {
        let c = MonotonicClock::new();
        let a = c.now_ms();
        let b = c.now_ms();
        assert!(b >= a);
    }
}
