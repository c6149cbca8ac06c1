//! Counters the engine keeps about its own work (commit times, operations per commit), read by
//! `GET /metrics` (`crate::metrics`, which renders them). Atomic, fixed-bound histograms: the
//! engine thread records without allocating or locking.

use std::sync::atomic::{AtomicU64, Ordering};

/// Bucket bounds of the commit-time histogram, in seconds.
const COMMIT_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];
/// Bucket bounds of the operations-per-commit histogram.
const BATCH_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

/// A histogram with fixed bounds: one counter per bucket (not cumulative; summed when
/// rendered), the count, and the sum in millionths.
pub struct Histogram {
    bounds: &'static [f64],
    buckets: Vec<AtomicU64>,
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            buckets: (0..bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, value: f64) {
        if let Some(i) = self.bounds.iter().position(|b| value <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add((value * 1e6).round() as u64, Ordering::Relaxed);
    }

    /// (upper bound, how many observations were at most that), then the count and the sum.
    pub fn snapshot(&self) -> (Vec<(f64, u64)>, u64, f64) {
        let mut cumulative = 0;
        let buckets = self
            .bounds
            .iter()
            .zip(&self.buckets)
            .map(|(b, n)| {
                cumulative += n.load(Ordering::Relaxed);
                (*b, cumulative)
            })
            .collect();
        (
            buckets,
            self.count.load(Ordering::Relaxed),
            self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
        )
    }
}

/// What the engine thread records: commit times and operations per commit; and, where the
/// commits are pipelined (SQLite), the syncing thread: each fsync's time.
pub struct EngineMetrics {
    pub commit_seconds: Histogram,
    pub operations_per_commit: Histogram,
    pub fsync_seconds: Histogram,
}

impl Default for EngineMetrics {
    fn default() -> Self {
        EngineMetrics {
            commit_seconds: Histogram::new(COMMIT_BUCKETS),
            operations_per_commit: Histogram::new(BATCH_BUCKETS),
            fsync_seconds: Histogram::new(COMMIT_BUCKETS),
        }
    }
}

impl EngineMetrics {
    /// One commit that took `seconds` (its fsync included) and carried `operations`.
    pub fn record_commit(&self, seconds: f64, operations: u64) {
        self.commit_seconds.observe(seconds);
        self.operations_per_commit.observe(operations as f64);
    }

    /// One fsync of the pipelined store's log that took `seconds`.
    pub fn record_fsync(&self, seconds: f64) {
        self.fsync_seconds.observe(seconds);
    }
}
