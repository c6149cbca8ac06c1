//! Bounded page queries for [`PgStore`] (`list_*` and `/status`): one page per query, never a
//! whole table. A page of notes or tasks stops where its values pass the byte budget; the
//! server computes the running size (`octet_length` reads a stored value's size without
//! fetching it), so values past the budget are neither fetched nor sent.

use std::collections::HashMap;

use tokio_postgres::types::ToSql;

use super::{
    agent_from, lock_from, note_from, rows, task_from, PgStore, LOCK_COLUMNS, TASK_COLUMNS,
};
use crate::clock::Millis;
use crate::store::{AgentRow, LockRow, NoteRow, StoreResult, TaskRow, TaskState, Values};

fn sql_limit(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

fn sql_bytes(max_bytes: usize) -> i64 {
    i64::try_from(max_bytes).unwrap_or(i64::MAX)
}

/// [`Values::sql_chars`] as PostgreSQL's `substr` takes it (an `int`).
fn pg_chars(values: Values) -> i32 {
    i32::try_from(values.sql_chars()).unwrap_or(i32::MAX)
}

impl PgStore {
    fn query_rows(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> StoreResult<Vec<tokio_postgres::Row>> {
        self.run(async { Ok(self.client.query(sql, params).await?) })
    }

    fn exists(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> StoreResult<bool> {
        let row = self.run(async { Ok(self.client.query_one(sql, params).await?) })?;
        Ok(row.try_get(0)?)
    }

    pub(super) fn pg_note_page(
        &self,
        now: Millis,
        after: Option<&str>,
        limit: usize,
        values: Values,
        max_bytes: usize,
    ) -> StoreResult<(Vec<NoteRow>, bool)> {
        // `shown`: the value as far as asked (`substr` of a stored value fetches only the slice
        // it needs); `before`: the bytes shown ahead of a row in the page; a row is in the page if
        // it starts within the budget (so the first row always is).
        let sql = "SELECT key, shown, author, expires_at FROM (
                SELECT key, shown, author, expires_at,
                       coalesce(sum(octet_length(shown)) OVER (
                           ORDER BY key ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0)
                           AS before
                FROM (SELECT key, author, expires_at,
                             CASE WHEN $5 < 0 THEN value WHEN $5 = 0 THEN ''
                                  ELSE substr(value, 1, $5::int) END AS shown
                      FROM airlock.notes
                      WHERE (expires_at IS NULL OR expires_at > $1) AND key > $2
                      ORDER BY key LIMIT $3) live) page
            WHERE before < $4 ORDER BY key";
        let after = after.unwrap_or("");
        let r = self.query_rows(
            sql,
            &[
                &now,
                &after,
                &sql_limit(limit),
                &sql_bytes(max_bytes),
                &pg_chars(values),
            ],
        )?;
        let page = rows(r, note_from)?;
        let last = page.last().map_or(after, |n| n.key.as_str());
        let more = self.exists(
            "SELECT EXISTS (SELECT 1 FROM airlock.notes
             WHERE (expires_at IS NULL OR expires_at > $1) AND key > $2)",
            &[&now, &last],
        )?;
        Ok((page, more))
    }

    pub(super) fn pg_lock_page(
        &self,
        now: Millis,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<(Vec<LockRow>, bool)> {
        // The first `limit` + 1 live names, then every live holder of each (the last name only
        // tells whether more follow).
        let r = self.query_rows(
            &format!(
                "SELECT {LOCK_COLUMNS} FROM airlock.locks WHERE expires_at > $1 AND name IN
                 (SELECT DISTINCT name FROM airlock.locks WHERE expires_at > $1 AND name > $2
                  ORDER BY name LIMIT $3)
                 ORDER BY name, fence"
            ),
            &[
                &now,
                &after.unwrap_or(""),
                &sql_limit(limit.saturating_add(1)),
            ],
        )?;
        Ok(crate::store::whole_names(rows(r, lock_from)?, limit))
    }

    pub(super) fn pg_agent_page(
        &self,
        now: Millis,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<(Vec<AgentRow>, bool)> {
        let r = self.query_rows(
            "SELECT agent_id, expires_at FROM airlock.agents
             WHERE expires_at > $1 AND agent_id > $2 ORDER BY agent_id LIMIT $3",
            &[
                &now,
                &after.unwrap_or(""),
                &sql_limit(limit.saturating_add(1)),
            ],
        )?;
        let mut page = rows(r, agent_from)?;
        let more = page.len() > limit;
        page.truncate(limit);
        Ok((page, more))
    }

    pub(super) fn pg_task_page(
        &self,
        queue: Option<&str>,
        state: Option<TaskState>,
        after: Option<i64>,
        limit: usize,
        payloads: Values,
        max_bytes: usize,
    ) -> StoreResult<(Vec<TaskRow>, bool)> {
        // As for notes: `payload` is the payload as far as asked (the inner query renames it,
        // so [`TASK_COLUMNS`] reads the cut one).
        let sql = format!(
            "SELECT {TASK_COLUMNS} FROM (
                SELECT *, coalesce(sum(octet_length(payload)) OVER (
                           ORDER BY id ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0)
                           AS before
                FROM (SELECT id, queue, author, priority, state, attempts, lease_agent,
                             lease_token, lease_expires_at, finished_at, ready_at, max_attempts,
                             unique_key, last_error, result,
                             CASE WHEN $6 < 0 THEN payload WHEN $6 = 0 THEN ''
                                  ELSE substr(payload, 1, $6::int) END AS payload
                      FROM airlock.tasks
                      WHERE ($1::text IS NULL OR queue = $1) AND id > $2
                        AND ($5::text IS NULL OR state = $5)
                      ORDER BY id LIMIT $3) live) page
             WHERE before < $4 ORDER BY id"
        );
        let after = after.unwrap_or(i64::MIN);
        let state = state.map(|s| s.as_str());
        let r = self.query_rows(
            &sql,
            &[
                &queue,
                &after,
                &sql_limit(limit),
                &sql_bytes(max_bytes),
                &state,
                &pg_chars(payloads),
            ],
        )?;
        let page = rows(r, task_from)?;
        let last = page.last().map_or(after, |t| t.id);
        let more = self.exists(
            "SELECT EXISTS (SELECT 1 FROM airlock.tasks
             WHERE ($1::text IS NULL OR queue = $1) AND id > $2
               AND ($3::text IS NULL OR state = $3))",
            &[&queue, &last, &state],
        )?;
        Ok((page, more))
    }

    pub(super) fn pg_holdings(
        &self,
        now: Millis,
        agents: &[String],
    ) -> StoreResult<HashMap<String, (usize, usize)>> {
        let mut out: HashMap<String, (usize, usize)> = HashMap::new();
        let locks = self.query_rows(
            "SELECT agent_id, count(*) FROM airlock.locks
             WHERE expires_at > $1 AND agent_id = ANY($2) GROUP BY agent_id",
            &[&now, &agents],
        )?;
        for row in &locks {
            let n: i64 = row.try_get(1)?;
            out.entry(row.try_get(0)?).or_default().0 = n as usize;
        }
        let leases = self.query_rows(
            "SELECT lease_agent, count(*) FROM airlock.tasks
             WHERE state = 'claimed' AND lease_expires_at > $1 AND lease_agent = ANY($2)
             GROUP BY lease_agent",
            &[&now, &agents],
        )?;
        for row in &leases {
            let n: i64 = row.try_get(1)?;
            out.entry(row.try_get(0)?).or_default().1 = n as usize;
        }
        Ok(out)
    }
}
