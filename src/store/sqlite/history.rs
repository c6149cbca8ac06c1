//! The audit history on SQLite: appended row by row inside the engine's transaction (so a
//! savepoint rolled back takes its rows with it), read newest first by its rowid.
//!
//! The table has no index besides its rowid (migration 5 dropped the ones on `(name, id)` and
//! `(agent_id, id)`): every entry is appended at the end of the table's B-tree, one page per
//! commit, where each index put the entries of a batch's different names and agents on as many
//! different pages, each written to the WAL at every commit (BENCHMARKS.md, "What the audit
//! history costs"). A filtered read looks through the entries instead, newest first, at most
//! [`HISTORY_SCAN_ROWS`] of them per page (about 2 ms), so a read of a rare name over a long
//! history is several short pages, never one long stall of the engine.

use rusqlite::{params, Row};

use super::SqliteStore;
use crate::store::{HistoryQuery, HistoryRow, StoreResult};

/// Entries a page of `get_history` looks through at most before it ends, short, with a cursor.
pub const HISTORY_SCAN_ROWS: usize = 20_000;

/// Entries older than the cursor, newest first. A plain `id < ?1` (not `?1 IS NULL OR id <
/// ?1`): SQLite then seeks to the cursor in the rowid B-tree instead of walking every newer
/// entry to reach it.
pub(super) const READ_PAGE: &str = "SELECT id, at, kind, name, agent_id, number, reason, error \
     FROM history WHERE id < ?1 ORDER BY id DESC";

fn history_from(r: &Row) -> rusqlite::Result<HistoryRow> {
    Ok(HistoryRow {
        id: r.get(0)?,
        at: r.get(1)?,
        kind: r.get(2)?,
        name: r.get(3)?,
        agent_id: r.get(4)?,
        number: r.get(5)?,
        reason: r.get(6)?,
        error: r.get(7)?,
    })
}

impl SqliteStore {
    pub(super) fn append_history(&mut self, h: &HistoryRow) -> StoreResult<()> {
        self.conn
            .prepare_cached(
                "INSERT INTO history (at, kind, name, agent_id, number, reason, error) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?
            .execute(params![
                h.at, h.kind, h.name, h.agent_id, h.number, h.reason, h.error
            ])?;
        Ok(())
    }

    pub(super) fn read_history(
        &mut self,
        q: &HistoryQuery,
    ) -> StoreResult<(Vec<HistoryRow>, Option<i64>)> {
        // Newest first by the rowid, filtered here: the table has no other index (see the
        // module's doc), and a page looks through at most `HISTORY_SCAN_ROWS` entries, ending
        // short with a cursor where it stopped. `since` ends the read: ids grow with time, so
        // the first entry older than `since` has no matching one after it.
        let mut st = self.conn.prepare_cached(READ_PAGE)?;
        let mut found = st.query([q.before.unwrap_or(i64::MAX)])?;
        let mut rows = Vec::with_capacity(q.limit.min(1024));
        let mut looked = 0;
        while let Some(r) = found.next()? {
            let id: i64 = r.get(0)?;
            let at: i64 = r.get(1)?;
            if q.since.is_some_and(|t| at < t) {
                return Ok((rows, None));
            }
            let text = |i| r.get_ref(i).map(|v| v.as_str_or_null().ok().flatten());
            let (kind, name) = (text(2)?.unwrap_or_default(), text(3)?.unwrap_or_default());
            if q.wants(kind, name, text(4)?) {
                if rows.len() == q.limit {
                    return Ok((rows, Some(id + 1)));
                }
                rows.push(history_from(r)?);
            }
            looked += 1;
            if looked == HISTORY_SCAN_ROWS {
                return Ok((rows, Some(id)));
            }
        }
        Ok((rows, None))
    }

    pub(super) fn prune_history(&mut self, before: i64, keep: u64) -> StoreResult<usize> {
        let keep = i64::try_from(keep).unwrap_or(i64::MAX);
        let by_count = self
            .conn
            .prepare_cached("DELETE FROM history WHERE id <= (SELECT max(id) FROM history) - ?1")?
            .execute([keep])?;
        // Oldest first, stopping at the first entry young enough: ids grow with time.
        let by_age = self
            .conn
            .prepare_cached(
                "DELETE FROM history WHERE id < coalesce( \
                   (SELECT id FROM history WHERE at >= ?1 ORDER BY id LIMIT 1), \
                   (SELECT max(id) + 1 FROM history))",
            )?
            .execute([before])?;
        Ok(by_count + by_age)
    }
}
