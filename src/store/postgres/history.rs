//! The audit history on PostgreSQL. Entries are held in memory while the batch runs and written
//! with one `INSERT … SELECT FROM unnest(…)` in the round trip of its COMMIT, so recording costs
//! the coordinator no round trip per entry. A step rolled back to its savepoint drops the
//! entries it made; a transaction rolled back drops them all.

use tokio_postgres::types::ToSql;

use super::PgStore;
use crate::clock::Millis;
use crate::store::{HistoryQuery, HistoryRow, StoreResult};

/// Entries made in the current transaction, not yet written.
#[derive(Debug, Default)]
pub(super) struct Pending {
    rows: Vec<HistoryRow>,
    /// How many of `rows` were made before the current step's savepoint.
    at_savepoint: usize,
}

impl Pending {
    pub(super) fn push(&mut self, row: &HistoryRow) {
        self.rows.push(row.clone());
    }

    /// A step begins: what it records from now on goes if it is rolled back.
    pub(super) fn savepoint(&mut self) {
        self.at_savepoint = self.rows.len();
    }

    pub(super) fn rollback_to_savepoint(&mut self) {
        self.rows.truncate(self.at_savepoint);
    }

    pub(super) fn clear(&mut self) {
        self.rows.clear();
        self.at_savepoint = 0;
    }

    pub(super) fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

pub(super) const INSERT: &str = "INSERT INTO airlock.history \
     (at, kind, name, agent_id, number, reason, error) \
     SELECT at, kind, name, agent_id, number, reason, error FROM unnest($1::bigint[], \
     $2::text[], $3::text[], $4::text[], $5::bigint[], $6::text[], $7::text[]) WITH ORDINALITY \
     AS h(at, kind, name, agent_id, number, reason, error, n) ORDER BY n";

const COLUMNS: &str = "id, at, kind, name, agent_id, number, reason, error";

impl PgStore {
    /// The statement that writes the held entries (it goes out with the COMMIT), if any.
    pub(super) fn history_write<'a>(
        &'a self,
        pending: &'a Pending,
    ) -> Option<impl std::future::Future<Output = Result<u64, tokio_postgres::Error>> + 'a> {
        if pending.rows.is_empty() {
            return None;
        }
        let r = &pending.rows;
        let at: Vec<i64> = r.iter().map(|h| h.at).collect();
        let kind: Vec<&str> = r.iter().map(|h| h.kind.as_str()).collect();
        let name: Vec<&str> = r.iter().map(|h| h.name.as_str()).collect();
        let agent: Vec<Option<&str>> = r.iter().map(|h| h.agent_id.as_deref()).collect();
        let number: Vec<Option<i64>> = r.iter().map(|h| h.number).collect();
        let reason: Vec<Option<&str>> = r.iter().map(|h| h.reason.as_deref()).collect();
        let error: Vec<Option<&str>> = r.iter().map(|h| h.error.as_deref()).collect();
        Some(async move {
            let params: [&(dyn ToSql + Sync); 7] =
                [&at, &kind, &name, &agent, &number, &reason, &error];
            self.client.execute(&self.st.history_insert, &params).await
        })
    }

    pub(super) fn read_history(
        &self,
        q: &HistoryQuery,
    ) -> StoreResult<(Vec<HistoryRow>, Option<i64>)> {
        // Newest first; `since` is a plain filter here (the server stops at the LIMIT).
        let sql = format!(
            "SELECT {COLUMNS} FROM airlock.history \
             WHERE ($1::text IS NULL OR name = $1) AND ($2::text IS NULL OR agent_id = $2) \
               AND ($3::text IS NULL OR kind = $3) AND ($4::bigint IS NULL OR at >= $4) \
               AND ($5::bigint IS NULL OR id < $5) \
             ORDER BY id DESC LIMIT $6"
        );
        let limit = i64::try_from(q.limit).unwrap_or(i64::MAX - 1) + 1;
        let params: [&(dyn ToSql + Sync); 6] =
            [&q.name, &q.agent_id, &q.kind, &q.since, &q.before, &limit];
        let found = self.run(async { Ok(self.client.query(&sql, &params).await?) })?;
        let mut rows = found
            .iter()
            .map(|r| {
                Ok(HistoryRow {
                    id: r.try_get(0)?,
                    at: r.try_get(1)?,
                    kind: r.try_get(2)?,
                    name: r.try_get(3)?,
                    agent_id: r.try_get(4)?,
                    number: r.try_get(5)?,
                    reason: r.try_get(6)?,
                    error: r.try_get(7)?,
                })
            })
            .collect::<StoreResult<Vec<_>>>()?;
        let more = rows.len() > q.limit;
        rows.truncate(q.limit);
        let next = rows.last().map(|h| h.id).filter(|_| more);
        Ok((rows, next))
    }

    pub(super) fn prune_history(&self, before: Millis, keep: u64) -> StoreResult<usize> {
        // The entries held for this COMMIT will be the newest: they count against `keep`.
        let keep = keep.saturating_sub(self.history.rows.len() as u64);
        let keep = i64::try_from(keep).unwrap_or(i64::MAX);
        // Both in one round trip.
        let (count, age): ([&(dyn ToSql + Sync); 1], [&(dyn ToSql + Sync); 1]) =
            ([&keep], [&before]);
        let (by_count, by_age) = self.run(async {
            Ok(futures::try_join!(
                self.client.execute(&self.st.history_prune_count, &count),
                self.client.execute(&self.st.history_prune_age, &age),
            )?)
        })?;
        Ok((by_count + by_age) as usize)
    }
}
