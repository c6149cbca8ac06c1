//! The space the SQLite file uses: measured for the storage quota (`core::quota`) after every
//! commit that wrote, and free pages given back to the file system a bounded amount at a time.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::SqliteStore;
use crate::store::StoreResult;

/// Free pages given back per incremental vacuum (64 MiB of 4 KiB pages).
const VACUUM_PAGES: i64 = 16_384;
/// Free pages worth a vacuum, and the least time between two.
pub(super) const VACUUM_THRESHOLD_PAGES: i64 = 256;
pub(super) const VACUUM_EVERY: Duration = Duration::from_secs(2);

impl SqliteStore {
    /// Bytes in pages that are not free.
    pub(super) fn measure(&self) -> StoreResult<u64> {
        // After every commit that wrote. SQLite prepares a pragma anew at every run, cached or
        // not (its statements run once), and the parser shows in the engine thread's profile:
        // two per measure, the page size being read once at open.
        let pragma = |sql: &str| -> rusqlite::Result<i64> {
            self.conn.prepare_cached(sql)?.query_row([], |r| r.get(0))
        };
        let pages = pragma("PRAGMA page_count")?;
        let free = pragma("PRAGMA freelist_count")?;
        Ok(((pages - free).max(0) * self.page_size) as u64)
    }

    pub(super) fn refresh_usage(&mut self) -> StoreResult<()> {
        let used = self.measure()?;
        self.usage.store(used, Ordering::Relaxed);
        Ok(())
    }

    /// Gives free pages back to the file system, a bounded amount at a time, at most every
    /// [`VACUUM_EVERY`]. Outside any transaction; a failure is only logged. True if it ran one.
    pub(super) fn vacuum_some(&mut self) -> bool {
        if self.last_vacuum.elapsed() < VACUUM_EVERY {
            return false;
        }
        self.last_vacuum = Instant::now();
        let free: i64 = match self
            .conn
            .query_row("PRAGMA freelist_count", [], |r| r.get(0))
        {
            Ok(n) => n,
            Err(_) => return false,
        };
        if free < VACUUM_THRESHOLD_PAGES {
            return false;
        }
        // It frees a page per step: step it to the end.
        let run = || -> rusqlite::Result<()> {
            let mut st = self
                .conn
                .prepare(&format!("PRAGMA incremental_vacuum({VACUUM_PAGES})"))?;
            let mut rows = st.query([])?;
            while rows.next()?.is_some() {}
            Ok(())
        };
        if let Err(e) = run() {
            tracing::warn!(error = %e, "incremental vacuum failed");
        }
        true
    }
}
