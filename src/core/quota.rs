//! The storage quota (`AIRLOCK_MAX_STATE_BYTES`): a write that would take the state past it is
//! refused before it reaches the engine, so it changes nothing and the group commit it would
//! have joined is unaffected.
//!
//! The store reports the bytes in use after every commit that wrote
//! ([`crate::store::Store::usage_meter`]); writes on their way to the engine are counted as
//! pending until answered, so many writes at once cannot all pass on the same reading. Both
//! backends have a meter: SQLite measures its file's used pages, PostgreSQL the `airlock.usage`
//! row its triggers keep (`store::postgres::usage`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::types::{CoreError, CoreResult};

/// Room assumed per row beyond its key and value (row header, index entry).
pub const ROW_OVERHEAD_BYTES: u64 = 64;

/// The limit, the store's gauge, and what is on its way.
#[derive(Debug)]
pub struct Quota {
    limit: AtomicU64,
    used: Option<Arc<AtomicU64>>,
    pending: AtomicU64,
}

impl Quota {
    /// No limit until [`Quota::set_limit`].
    pub fn new(used: Option<Arc<AtomicU64>>) -> Self {
        Quota {
            limit: AtomicU64::new(u64::MAX),
            used,
            pending: AtomicU64::new(0),
        }
    }

    pub fn set_limit(&self, bytes: u64) {
        self.limit.store(bytes, Ordering::Relaxed);
    }

    /// Room for a write of `bytes` (its field named in the refusal), held until dropped.
    pub fn reserve(self: &Arc<Self>, field: &str, bytes: u64) -> CoreResult<Reservation> {
        let Some(used) = &self.used else {
            return Ok(Reservation(None));
        };
        let limit = self.limit.load(Ordering::Relaxed);
        let bytes = bytes + ROW_OVERHEAD_BYTES;
        let pending = self.pending.fetch_add(bytes, Ordering::SeqCst);
        let reservation = Reservation(Some((self.clone(), bytes)));
        let used = used.load(Ordering::Relaxed);
        if used.saturating_add(pending).saturating_add(bytes) > limit {
            return Err(CoreError::invalid(
                field,
                format!(
                    "cannot be stored: the daemon's state is at its storage quota ({used} of \
                     {limit} bytes in use, AIRLOCK_MAX_STATE_BYTES); delete notes or tasks, or \
                     raise the quota"
                ),
            ));
        }
        Ok(reservation)
    }
}

/// Room taken by a write until it is answered.
#[derive(Debug)]
pub struct Reservation(Option<(Arc<Quota>, u64)>);

impl Reservation {
    /// No room taken (a call that writes nothing the quota counts).
    pub fn none() -> Reservation {
        Reservation(None)
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Some((q, bytes)) = self.0.take() {
            q.pending.fetch_sub(bytes, Ordering::SeqCst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_past_the_limit_are_refused_and_pending_ones_count() {
        let used = Arc::new(AtomicU64::new(1000));
        let q = Arc::new(Quota::new(Some(used.clone())));
        q.set_limit(1000 + 2 * (100 + ROW_OVERHEAD_BYTES));
        let a = q.reserve("value", 100).unwrap();
        let b = q.reserve("value", 100).unwrap();
        let e = q.reserve("value", 1).unwrap_err().to_string();
        assert!(e.contains("value") && e.contains("quota"), "{e}");
        drop(a);
        drop(b);
        assert!(q.reserve("value", 100).is_ok());
        used.store(10_000, Ordering::Relaxed);
        assert!(q.reserve("value", 0).is_err());
        // Without a meter nothing is limited.
        let free = Arc::new(Quota::new(None));
        free.set_limit(0);
        assert!(free.reserve("value", 1 << 30).is_ok());
    }
}
