//! The audit history on SQLite: appended row by row inside the engine's transaction (so a
//! savepoint rolled back takes its rows with it), read newest first through the indexes on
//! `(name, id)` and `(agent_id, id)`.

use rusqlite::{params, Row};

use super::SqliteStore;
use crate::store::{HistoryQuery, HistoryRow, StoreResult};

const COLUMNS: &str = "id, at, kind, name, agent_id, number, reason, error";

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
    ) -> StoreResult<(Vec<HistoryRow>, bool)> {
        // One statement for every combination of filters: an absent filter is NULL and passes.
        // `since` is applied while reading: rows come newest first, and ids grow with time, so
        // the first row older than `since` ends the page instead of a scan to the oldest row.
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM history \
             WHERE (?1 IS NULL OR name = ?1) AND (?2 IS NULL OR agent_id = ?2) \
               AND (?3 IS NULL OR kind = ?3) AND (?4 IS NULL OR id < ?4) \
             ORDER BY id DESC"
        ))?;
        let mut found =
            st.query_map(params![q.name, q.agent_id, q.kind, q.before], history_from)?;
        let mut rows = Vec::with_capacity(q.limit.min(1024));
        let mut more = false;
        for row in &mut found {
            let row = row?;
            if q.since.is_some_and(|t| row.at < t) {
                break;
            }
            if rows.len() == q.limit {
                more = true;
                break;
            }
            rows.push(row);
        }
        Ok((rows, more))
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
