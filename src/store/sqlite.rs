//! The embedded backend: one SQLite file in WAL mode with `synchronous=FULL`, so every commit is
//! fsynced before [`Store::commit`] returns; pipelined (the daemon), a commit only writes and
//! the syncing thread fsyncs (`wal`). Statements are prepared once and cached. The file's used
//! bytes and its vacuum: `space`; the history: `history`.

use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Instant;

use rusqlite::config::DbConfig;
use rusqlite::{params, Connection, OptionalExtension, Row};

use super::{
    AgentRow, EventRow, Expiries, Finish, Finished, HistoryQuery, HistoryRow, Lease, LockRow,
    NewTask, NoteRow, QueueCount, Store, StoreError, StoreResult, Syncer, TaskRow, TaskState,
    Values,
};
use crate::clock::Millis;

mod wal;

/// Schema migrations (`src/store/sql/sqlite/`), applied in order; `PRAGMA user_version` records
/// how many ran. Append only: a released migration is never edited.
const MIGRATIONS: &[&str] = &[
    include_str!("sql/sqlite/0001_schema.sql"),
    include_str!("sql/sqlite/0002_task_options.sql"),
    include_str!("sql/sqlite/0003_lock_holders.sql"),
    include_str!("sql/sqlite/0004_history.sql"),
    include_str!("sql/sqlite/0005_history_unindexed.sql"),
];

/// The SQLite store. Owned by the engine thread.
pub struct SqliteStore {
    conn: Connection,
    /// Bytes in use (pages not free), measured after every commit that wrote (or vacuumed):
    /// read by the storage quota.
    usage: Arc<AtomicU64>,
    /// When free pages were last given back to the file system.
    last_vacuum: Instant,
    /// The file's page size, read once: a database in WAL mode cannot change it.
    page_size: i64,
    /// Set once commits are pipelined ([`Store::pipeline`]): the WAL's frames, and whether a
    /// checkpoint failed (then no later sync may report success).
    wal: Option<wal::Pipelined>,
    /// Whether the last commit wrote to the WAL ([`Store::last_commit_wrote`]).
    wrote: bool,
    /// The connection's count of rows changed, when the transaction began.
    changes_at_begin: u64,
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`, checks its integrity and migrates it.
    /// A file that is not a healthy airlock database is refused, never replaced.
    pub fn open(path: &Path) -> StoreResult<Self> {
        let conn = Connection::open(path)?;
        Self::init(conn)
    }

    /// An in-memory store, for unit tests of the core.
    pub fn open_in_memory() -> StoreResult<Self> {
        Self::init(Connection::open_in_memory()?)
    }

    fn init(conn: Connection) -> StoreResult<Self> {
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        // quick_check answers one row "ok", or one row per problem found (the first is often
        // only a header): report the first few.
        let problems: Vec<String> = {
            let mut st = conn.prepare("PRAGMA quick_check(5)")?;
            let rows = st.query_map([], |r| r.get::<_, String>(0))?;
            rows.collect::<Result<_, _>>()?
        };
        if problems != ["ok"] {
            return Err(StoreError::Other(format!(
                "the database failed its integrity check: {}",
                problems.join("; ")
            )));
        }
        let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
        if mode != "wal" && mode != "memory" {
            return Err(StoreError::Other(format!(
                "could not switch the database to WAL mode (got {mode})"
            )));
        }
        // FULL: the WAL is fsynced at every commit, so a commit that returned survives power loss.
        // fullfsync: on macOS plain fsync leaves data in the drive's cache; F_FULLFSYNC flushes
        // it (a no-op elsewhere).
        conn.execute_batch(
            "PRAGMA synchronous=FULL; PRAGMA fullfsync=ON; PRAGMA checkpoint_fullfsync=ON; \
             PRAGMA foreign_keys=OFF;",
        )?;
        conn.set_prepared_statement_cache_capacity(64);
        // The query planner stability guarantee: a plan never depends on a bound value. Without
        // it SQLite marks a statement for re-preparing whenever a parameter is bound anew if the
        // planner compared that parameter with a literal of a partial index's WHERE (`id = ?1`
        // against `tasks_pending`'s `state = 'pending'`): every task statement was parsed and
        // planned again at every run. Our statements spell the partial indexes' conditions as
        // literals, so every partial index stays usable.
        conn.set_db_config(
            rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
            true,
        )?;
        // Space freed by deletes goes back to the file system (incremental_vacuum after commits).
        // A database made before this setting is rebuilt once to take it.
        let auto_vacuum = |c: &Connection| -> rusqlite::Result<i64> {
            c.query_row("PRAGMA auto_vacuum", [], |r| r.get(0))
        };
        if auto_vacuum(&conn)? != 2 {
            conn.execute_batch("PRAGMA auto_vacuum=INCREMENTAL")?;
            // Takes effect at once only on a file without pages yet; otherwise (an older
            // database, or one WAL mode has already initialised) a VACUUM applies it.
            if auto_vacuum(&conn)? != 2 {
                let tables: i64 =
                    conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))?;
                if tables > 0 {
                    tracing::info!("rebuilding the database once for incremental auto-vacuum");
                }
                conn.execute_batch("VACUUM")?;
            }
        }
        let page_size = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
        let mut store = SqliteStore {
            conn,
            usage: Arc::new(AtomicU64::new(0)),
            last_vacuum: Instant::now(),
            page_size,
            wal: None,
            wrote: true,
            changes_at_begin: 0,
        };
        store.migrate()?;
        store.refresh_usage()?;
        Ok(store)
    }

    fn migrate(&mut self) -> StoreResult<()> {
        let version: i64 = self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if version as usize > MIGRATIONS.len() {
            return Err(StoreError::Other(format!(
                "the database has schema version {version}, newer than this airlock ({}); upgrade airlock",
                MIGRATIONS.len()
            )));
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            let tx = self.conn.transaction()?;
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", (i + 1) as i64)?;
            tx.commit()?;
        }
        Ok(())
    }
}

/// `limit` + 1 rows (so the page can tell whether more follow), as SQLite's LIMIT takes it.
fn page_limit(limit: usize) -> i64 {
    i64::try_from(limit.saturating_add(1)).unwrap_or(i64::MAX)
}

fn note_from(r: &Row) -> rusqlite::Result<NoteRow> {
    Ok(NoteRow {
        key: r.get(0)?,
        value: r.get(1)?,
        author: r.get(2)?,
        expires_at: r.get(3)?,
    })
}

fn lock_from(r: &Row) -> rusqlite::Result<LockRow> {
    Ok(LockRow {
        name: r.get(0)?,
        agent_id: r.get(1)?,
        token: r.get(2)?,
        fence: r.get(3)?,
        expires_at: r.get(4)?,
        shared: r.get(5)?,
        limit: r.get(6)?,
    })
}

const LOCK_COLUMNS: &str = "name, agent_id, token, fence, expires_at, shared, max_holders";

/// The task columns `task_from` reads, as a literal so the hot statements are `concat!`ed at
/// compile time (no `format!` per call).
macro_rules! task_columns {
    () => {
        "id, queue, payload, author, priority, state, attempts, lease_agent, \
         lease_token, lease_expires_at, finished_at, ready_at, max_attempts, \
         unique_key, last_error, result"
    };
}

const TASK_COLUMNS: &str = task_columns!();
const TASK_GET: &str = concat!("SELECT ", task_columns!(), " FROM tasks WHERE id = ?1");
const TASK_NEXT_READY: &str = concat!(
    "SELECT ",
    task_columns!(),
    " FROM tasks WHERE queue = ?1 AND state = 'pending'
     AND (ready_at IS NULL OR ready_at <= ?2)
     ORDER BY priority DESC, id LIMIT 1"
);
/// `TASK_NEXT_READY`'s task, leased, in one statement.
const TASK_CLAIM_NEXT: &str = concat!(
    "UPDATE tasks SET state = 'claimed', attempts = attempts + 1, lease_agent = ?3,
     lease_token = ?4, lease_expires_at = ?5
     WHERE id = (SELECT id FROM tasks WHERE queue = ?1 AND state = 'pending'
     AND (ready_at IS NULL OR ready_at <= ?2) ORDER BY priority DESC, id LIMIT 1)
     RETURNING ",
    task_columns!()
);
/// Ends a live lease (?2 its token, unexpired at ?3): completed with ?4 as the result, or failed
/// with it as the last error.
const TASK_COMPLETE: &str = "UPDATE tasks SET state = 'completed', result = ?4, lease_token = NULL,
     lease_expires_at = NULL, finished_at = ?3
     WHERE id = ?1 AND state = 'claimed' AND lease_token = ?2 AND lease_expires_at > ?3
     RETURNING queue, lease_agent";
const TASK_FAIL: &str = "UPDATE tasks SET state = 'failed', last_error = ?4, lease_token = NULL,
     lease_expires_at = NULL, finished_at = ?3
     WHERE id = ?1 AND state = 'claimed' AND lease_token = ?2 AND lease_expires_at > ?3
     RETURNING queue, lease_agent";

fn task_from(r: &Row) -> rusqlite::Result<TaskRow> {
    let state: String = r.get(5)?;
    Ok(TaskRow {
        id: r.get(0)?,
        queue: r.get(1)?,
        payload: r.get(2)?,
        author: r.get(3)?,
        priority: r.get(4)?,
        state: TaskState::parse(&state).ok_or_else(|| {
            rusqlite::Error::FromSqlConversionFailure(
                5,
                rusqlite::types::Type::Text,
                format!("unknown task state {state:?}").into(),
            )
        })?,
        attempts: r.get(6)?,
        lease_agent: r.get(7)?,
        lease_token: r.get(8)?,
        lease_expires_at: r.get(9)?,
        finished_at: r.get(10)?,
        ready_at: r.get(11)?,
        max_attempts: r.get(12)?,
        unique_key: r.get(13)?,
        last_error: r.get(14)?,
        result: r.get(15)?,
    })
}

impl SqliteStore {
    fn query_tasks(&mut self, sql: &str, args: impl rusqlite::Params) -> StoreResult<Vec<TaskRow>> {
        let mut st = self.conn.prepare_cached(sql)?;
        let rows = st.query_map(args, task_from)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

impl Store for SqliteStore {
    fn begin(&mut self) -> StoreResult<()> {
        // Once per batch: prepared once, like the statements of the operations.
        self.conn.prepare_cached("BEGIN IMMEDIATE")?.execute([])?;
        self.changes_at_begin = self.conn.total_changes();
        Ok(())
    }

    fn commit(&mut self) -> StoreResult<()> {
        let writes = self.wal.as_ref().map(wal::Pipelined::writes);
        // Until the COMMIT is known to have written nothing, it may have: a COMMIT that fails
        // part way may have written frames that later become visible, and the answers built on
        // them must wait for an fsync (a review finding).
        self.wrote = true;
        self.conn.prepare_cached("COMMIT")?.execute([])?;
        // Known only when pipelined; otherwise assumed, which costs nothing there: the commit
        // has synced what it wrote. Written if the WAL hook reported frames, or if any row
        // changed since BEGIN (rows undone by a savepoint included): either alone would do, both
        // together keep the answer "wrote" should one of them miss (an fsync too many is safe,
        // one too few is not).
        self.wrote = match (&self.wal, writes) {
            (Some(wal), Some(before)) => {
                wal.writes() != before || self.conn.total_changes() != self.changes_at_begin
            }
            _ => true,
        };
        if let Some(wal) = &self.wal {
            wal.checkpoint_if_due(&self.conn);
        }
        // A transaction that wrote nothing changed no page: the usage stands, unless the vacuum
        // gave pages back.
        if self.vacuum_some() || self.wrote {
            if let Err(e) = self.refresh_usage() {
                tracing::warn!(error = %e, "could not measure the database");
            }
        }
        Ok(())
    }

    fn last_commit_wrote(&self) -> bool {
        self.wrote
    }

    fn pipeline(&mut self) -> StoreResult<Option<Box<dyn Syncer>>> {
        if self.wal.is_some() {
            return Err(StoreError::Other("commits are already pipelined".into()));
        }
        let Some((pipelined, syncer)) = wal::Pipelined::start(&mut self.conn)? else {
            return Ok(None);
        };
        self.wal = Some(pipelined);
        Ok(Some(syncer))
    }

    fn rollback(&mut self) {
        if !self.conn.is_autocommit() {
            let _ = self.conn.execute_batch("ROLLBACK");
        }
    }

    fn savepoint(&mut self) -> StoreResult<()> {
        // Outside a transaction SAVEPOINT would open one, and its RELEASE would commit it.
        if self.conn.is_autocommit() {
            return Err(StoreError::Other(
                "no transaction is open (it could not begin, or was rolled back)".into(),
            ));
        }
        self.conn.prepare_cached("SAVEPOINT op")?.execute([])?;
        Ok(())
    }

    fn release_savepoint(&mut self) -> StoreResult<()> {
        self.conn.prepare_cached("RELEASE op")?.execute([])?;
        Ok(())
    }

    fn rollback_to_savepoint(&mut self) {
        let _ = self.conn.execute_batch("ROLLBACK TO op; RELEASE op");
    }

    fn transaction_ok(&mut self) -> bool {
        !self.conn.is_autocommit()
    }

    fn history_append(&mut self, row: &HistoryRow) -> StoreResult<()> {
        self.append_history(row)
    }

    fn history_page(&mut self, q: &HistoryQuery) -> StoreResult<(Vec<HistoryRow>, Option<i64>)> {
        self.read_history(q)
    }

    fn history_prune(&mut self, before: Millis, keep: u64) -> StoreResult<usize> {
        self.prune_history(before, keep)
    }

    fn note_get(&mut self, key: &str) -> StoreResult<Option<NoteRow>> {
        let mut st = self
            .conn
            .prepare_cached("SELECT key, value, author, expires_at FROM notes WHERE key = ?1")?;
        Ok(st.query_row([key], note_from).optional()?)
    }

    fn note_put(&mut self, n: &NoteRow) -> StoreResult<()> {
        let mut st = self.conn.prepare_cached(
            "INSERT INTO notes (key, value, author, expires_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(key) DO UPDATE SET value = excluded.value, author = excluded.author,
             expires_at = excluded.expires_at",
        )?;
        st.execute(params![n.key, n.value, n.author, n.expires_at])?;
        Ok(())
    }

    fn note_delete(&mut self, key: &str) -> StoreResult<()> {
        let mut st = self
            .conn
            .prepare_cached("DELETE FROM notes WHERE key = ?1")?;
        st.execute([key])?;
        Ok(())
    }

    fn note_list(&mut self, now: Millis) -> StoreResult<Vec<NoteRow>> {
        let mut st = self.conn.prepare_cached(
            "SELECT key, value, author, expires_at FROM notes
             WHERE expires_at IS NULL OR expires_at > ?1 ORDER BY key",
        )?;
        let rows = st.query_map([now], note_from)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn notes_purge_expired(&mut self, now: Millis) -> StoreResult<usize> {
        let mut st = self.conn.prepare_cached(
            "DELETE FROM notes WHERE expires_at IS NOT NULL AND expires_at <= ?1",
        )?;
        Ok(st.execute([now])?)
    }

    fn counter_add(&mut self, name: &str, by: i64) -> StoreResult<Option<i64>> {
        let current: Option<i64> = {
            let mut st = self
                .conn
                .prepare_cached("SELECT value FROM counters WHERE name = ?1")?;
            st.query_row([name], |r| r.get(0)).optional()?
        };
        let Some(next) = current.unwrap_or(0).checked_add(by) else {
            return Ok(None);
        };
        let mut st = self.conn.prepare_cached(
            "INSERT INTO counters (name, value) VALUES (?1, ?2)
             ON CONFLICT(name) DO UPDATE SET value = excluded.value",
        )?;
        st.execute(params![name, next])?;
        Ok(Some(next))
    }

    fn lock_holders(&mut self, name: &str) -> StoreResult<Vec<LockRow>> {
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT {LOCK_COLUMNS} FROM locks WHERE name = ?1 ORDER BY fence"
        ))?;
        let rows = st.query_map([name], lock_from)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn lock_put(&mut self, l: &LockRow) -> StoreResult<()> {
        let mut st = self.conn.prepare_cached(&format!(
            "INSERT INTO locks ({LOCK_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT(name, agent_id) DO UPDATE SET token = excluded.token,
             fence = excluded.fence, expires_at = excluded.expires_at, shared = excluded.shared,
             max_holders = excluded.max_holders"
        ))?;
        st.execute(params![
            l.name,
            l.agent_id,
            l.token,
            l.fence,
            l.expires_at,
            l.shared,
            l.limit
        ])?;
        Ok(())
    }

    fn lock_delete_holder(&mut self, name: &str, agent_id: &str) -> StoreResult<()> {
        let mut st = self
            .conn
            .prepare_cached("DELETE FROM locks WHERE name = ?1 AND agent_id = ?2")?;
        st.execute([name, agent_id])?;
        Ok(())
    }

    fn lock_delete(&mut self, name: &str) -> StoreResult<()> {
        let mut st = self
            .conn
            .prepare_cached("DELETE FROM locks WHERE name = ?1")?;
        st.execute([name])?;
        Ok(())
    }

    fn lock_list(&mut self) -> StoreResult<Vec<LockRow>> {
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT {LOCK_COLUMNS} FROM locks ORDER BY name, fence"
        ))?;
        let rows = st.query_map([], lock_from)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn locks_held_by(&mut self, agent_id: &str) -> StoreResult<Vec<LockRow>> {
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT {LOCK_COLUMNS} FROM locks WHERE agent_id = ?1 ORDER BY name"
        ))?;
        let rows = st.query_map([agent_id], lock_from)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn fence_next(&mut self, name: &str) -> StoreResult<i64> {
        let mut st = self.conn.prepare_cached(
            "INSERT INTO lock_fences (name, last_fence) VALUES (?1, 1)
             ON CONFLICT(name) DO UPDATE SET last_fence = last_fence + 1
             RETURNING last_fence",
        )?;
        Ok(st.query_row([name], |r| r.get(0))?)
    }

    fn agent_get(&mut self, agent_id: &str) -> StoreResult<Option<AgentRow>> {
        let mut st = self
            .conn
            .prepare_cached("SELECT agent_id, expires_at FROM agents WHERE agent_id = ?1")?;
        Ok(st
            .query_row([agent_id], |r| {
                Ok(AgentRow {
                    agent_id: r.get(0)?,
                    expires_at: r.get(1)?,
                })
            })
            .optional()?)
    }

    fn agent_put(&mut self, a: &AgentRow) -> StoreResult<()> {
        let mut st = self.conn.prepare_cached(
            "INSERT INTO agents (agent_id, expires_at) VALUES (?1, ?2)
             ON CONFLICT(agent_id) DO UPDATE SET expires_at = excluded.expires_at",
        )?;
        st.execute(params![a.agent_id, a.expires_at])?;
        Ok(())
    }

    fn agent_delete(&mut self, agent_id: &str) -> StoreResult<()> {
        let mut st = self
            .conn
            .prepare_cached("DELETE FROM agents WHERE agent_id = ?1")?;
        st.execute([agent_id])?;
        Ok(())
    }

    fn agent_list(&mut self) -> StoreResult<Vec<AgentRow>> {
        let mut st = self
            .conn
            .prepare_cached("SELECT agent_id, expires_at FROM agents ORDER BY agent_id")?;
        let rows = st.query_map([], |r| {
            Ok(AgentRow {
                agent_id: r.get(0)?,
                expires_at: r.get(1)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn event_get(&mut self, name: &str) -> StoreResult<Option<EventRow>> {
        let mut st = self
            .conn
            .prepare_cached("SELECT name, generation, cleared_at FROM events WHERE name = ?1")?;
        Ok(st
            .query_row([name], |r| {
                Ok(EventRow {
                    name: r.get(0)?,
                    generation: r.get(1)?,
                    cleared_at: r.get(2)?,
                })
            })
            .optional()?)
    }

    fn event_put(&mut self, e: &EventRow) -> StoreResult<()> {
        let mut st = self.conn.prepare_cached(
            "INSERT INTO events (name, generation, cleared_at) VALUES (?1, ?2, ?3)
             ON CONFLICT(name) DO UPDATE SET generation = excluded.generation,
             cleared_at = excluded.cleared_at",
        )?;
        st.execute(params![e.name, e.generation, e.cleared_at])?;
        Ok(())
    }

    fn event_list(&mut self) -> StoreResult<Vec<EventRow>> {
        let mut st = self
            .conn
            .prepare_cached("SELECT name, generation, cleared_at FROM events ORDER BY name")?;
        let rows = st.query_map([], |r| {
            Ok(EventRow {
                name: r.get(0)?,
                generation: r.get(1)?,
                cleared_at: r.get(2)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn task_insert_new(&mut self, t: &NewTask<'_>) -> StoreResult<i64> {
        let mut st = self.conn.prepare_cached(
            "INSERT INTO tasks (queue, payload, author, priority, state, attempts, created_at,
             ready_at, max_attempts, unique_key)
             VALUES (?1, ?2, ?3, ?4, 'pending', 0, ?5, ?6, ?7, ?8) RETURNING id",
        )?;
        Ok(st.query_row(
            params![
                t.queue,
                t.payload,
                t.author,
                t.priority,
                t.now,
                t.ready_at,
                t.max_attempts,
                t.unique_key
            ],
            |r| r.get(0),
        )?)
    }

    fn task_get(&mut self, id: i64) -> StoreResult<Option<TaskRow>> {
        Ok(self.query_tasks(TASK_GET, [id])?.pop())
    }

    fn task_update(&mut self, t: &TaskRow) -> StoreResult<()> {
        let mut st = self.conn.prepare_cached(
            "UPDATE tasks SET state = ?2, attempts = ?3, lease_agent = ?4, lease_token = ?5,
             lease_expires_at = ?6, finished_at = ?7, ready_at = ?8, last_error = ?9,
             result = ?10 WHERE id = ?1",
        )?;
        st.execute(params![
            t.id,
            t.state.as_str(),
            t.attempts,
            t.lease_agent,
            t.lease_token,
            t.lease_expires_at,
            t.finished_at,
            t.ready_at,
            t.last_error,
            t.result
        ])?;
        Ok(())
    }

    fn task_next_ready(&mut self, queue: &str, now: Millis) -> StoreResult<Option<TaskRow>> {
        Ok(self
            .query_tasks(TASK_NEXT_READY, params![queue, now])?
            .pop())
    }

    fn task_claim_next(
        &mut self,
        queue: &str,
        now: Millis,
        lease: &Lease<'_>,
    ) -> StoreResult<Option<TaskRow>> {
        let args = params![queue, now, lease.agent_id, lease.token, lease.expires_at];
        Ok(self.query_tasks(TASK_CLAIM_NEXT, args)?.pop())
    }

    fn task_finish(
        &mut self,
        id: i64,
        lease_token: &str,
        now: Millis,
        to: Finish,
        note: Option<&str>,
    ) -> StoreResult<Option<Finished>> {
        let sql = match to {
            Finish::Completed => TASK_COMPLETE,
            Finish::Failed => TASK_FAIL,
        };
        let mut st = self.conn.prepare_cached(sql)?;
        Ok(st
            .query_row(params![id, lease_token, now, note], |r| {
                Ok(Finished {
                    queue: r.get(0)?,
                    agent_id: r.get(1)?,
                })
            })
            .optional()?)
    }

    fn task_live_with_key(&mut self, queue: &str, key: &str) -> StoreResult<Option<TaskRow>> {
        let sql = concat!(
            "SELECT ",
            task_columns!(),
            " FROM tasks WHERE queue = ?1 AND unique_key = ?2
             AND state IN ('pending', 'claimed')"
        );
        Ok(self.query_tasks(sql, [queue, key])?.pop())
    }

    fn task_list_in(
        &mut self,
        queue: Option<&str>,
        state: Option<TaskState>,
    ) -> StoreResult<Vec<TaskRow>> {
        let sql = format!(
            "SELECT {TASK_COLUMNS} FROM tasks WHERE (?1 IS NULL OR queue = ?1)
             AND (?2 IS NULL OR state = ?2) ORDER BY id"
        );
        self.query_tasks(&sql, params![queue, state.map(TaskState::as_str)])
    }

    fn task_counts(&mut self) -> StoreResult<Vec<QueueCount>> {
        let mut st = self.conn.prepare_cached(
            "SELECT queue, state, count(*) FROM tasks GROUP BY queue, state ORDER BY queue",
        )?;
        let rows = st.query_map([], |r| {
            let state: String = r.get(1)?;
            Ok((r.get::<_, String>(0)?, state, r.get::<_, i64>(2)?))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (queue, state, count) = row?;
            let state = TaskState::parse(&state).ok_or_else(|| {
                StoreError::Other(format!("unknown task state {state:?} in queue {queue:?}"))
            })?;
            out.push(QueueCount {
                queue,
                state,
                count,
            });
        }
        Ok(out)
    }

    fn tasks_leased_by(&mut self, agent_id: &str) -> StoreResult<Vec<TaskRow>> {
        let sql = format!(
            "SELECT {TASK_COLUMNS} FROM tasks WHERE lease_agent = ?1 AND state = 'claimed'
             ORDER BY id"
        );
        self.query_tasks(&sql, [agent_id])
    }

    fn tasks_purge_finished(&mut self, before: Millis) -> StoreResult<usize> {
        let mut st = self.conn.prepare_cached(
            "DELETE FROM tasks WHERE finished_at IS NOT NULL AND finished_at <= ?1",
        )?;
        Ok(st.execute([before])?)
    }

    fn note_page(
        &mut self,
        now: Millis,
        after: Option<&str>,
        limit: usize,
        values: Values,
        max_bytes: usize,
    ) -> StoreResult<(Vec<NoteRow>, bool)> {
        // SQLite reads a column only when the `CASE` arm that names it runs.
        let mut st = self.conn.prepare_cached(
            "SELECT key, CASE WHEN ?4 < 0 THEN value WHEN ?4 = 0 THEN ''
                              ELSE substr(value, 1, ?4) END,
                    author, expires_at FROM notes
             WHERE (expires_at IS NULL OR expires_at > ?1) AND key > ?2 ORDER BY key LIMIT ?3",
        )?;
        let rows = st.query_map(
            params![
                now,
                after.unwrap_or(""),
                page_limit(limit),
                values.sql_chars()
            ],
            note_from,
        )?;
        Ok(super::take_page(rows, limit, max_bytes, |n| n.value.len())?)
    }

    fn lock_page(
        &mut self,
        now: Millis,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<(Vec<LockRow>, bool)> {
        // The first `limit` + 1 live names, then every live holder of each (the last name only
        // tells whether more follow).
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT {LOCK_COLUMNS} FROM locks WHERE expires_at > ?1 AND name IN
             (SELECT DISTINCT name FROM locks WHERE expires_at > ?1 AND name > ?2
              ORDER BY name LIMIT ?3)
             ORDER BY name, fence"
        ))?;
        let rows = st.query_map(
            params![now, after.unwrap_or(""), page_limit(limit)],
            lock_from,
        )?;
        let rows = rows.collect::<Result<Vec<_>, _>>()?;
        Ok(super::whole_names(rows, limit))
    }

    fn agent_page(
        &mut self,
        now: Millis,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<(Vec<AgentRow>, bool)> {
        let mut st = self.conn.prepare_cached(
            "SELECT agent_id, expires_at FROM agents
             WHERE expires_at > ?1 AND agent_id > ?2 ORDER BY agent_id LIMIT ?3",
        )?;
        let rows = st.query_map(params![now, after.unwrap_or(""), page_limit(limit)], |r| {
            Ok(AgentRow {
                agent_id: r.get(0)?,
                expires_at: r.get(1)?,
            })
        })?;
        Ok(super::take_page(rows, limit, usize::MAX, |_| 0)?)
    }

    fn task_page(
        &mut self,
        queue: Option<&str>,
        state: Option<TaskState>,
        after: Option<i64>,
        limit: usize,
        payloads: Values,
        max_bytes: usize,
    ) -> StoreResult<(Vec<TaskRow>, bool)> {
        // [`TASK_COLUMNS`] with the payload read only as far as asked.
        let mut st = self.conn.prepare_cached(
            "SELECT id, queue, CASE WHEN ?5 < 0 THEN payload WHEN ?5 = 0 THEN ''
                                    ELSE substr(payload, 1, ?5) END,
                    author, priority, state, attempts, lease_agent, lease_token,
                    lease_expires_at, finished_at, ready_at, max_attempts, unique_key,
                    last_error, result
             FROM tasks WHERE (?1 IS NULL OR queue = ?1) AND id > ?2
             AND (?4 IS NULL OR state = ?4) ORDER BY id LIMIT ?3",
        )?;
        let rows = st.query_map(
            params![
                queue,
                after.unwrap_or(i64::MIN),
                page_limit(limit),
                state.map(|s| s.as_str()),
                payloads.sql_chars()
            ],
            task_from,
        )?;
        Ok(super::take_page(rows, limit, max_bytes, |t| {
            t.payload.len()
        })?)
    }

    fn used_bytes(&mut self) -> StoreResult<Option<u64>> {
        Ok(Some(self.measure()?))
    }

    fn usage_meter(&self) -> Option<Arc<AtomicU64>> {
        Some(self.usage.clone())
    }

    fn expiries(&mut self) -> StoreResult<Expiries> {
        let mut out = Expiries::default();
        {
            let mut st = self.conn.prepare("SELECT name, expires_at FROM locks")?;
            let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            out.locks = rows.collect::<Result<_, _>>()?;
        }
        {
            let mut st = self
                .conn
                .prepare("SELECT agent_id, expires_at FROM agents")?;
            let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            out.agents = rows.collect::<Result<_, _>>()?;
        }
        {
            let mut st = self
                .conn
                .prepare("SELECT id, lease_expires_at FROM tasks WHERE state = 'claimed'")?;
            let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            out.leases = rows.collect::<Result<_, _>>()?;
        }
        {
            let mut st = self.conn.prepare(
                "SELECT id, ready_at FROM tasks WHERE state = 'pending' AND ready_at IS NOT NULL",
            )?;
            let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            out.delayed = rows.collect::<Result<_, _>>()?;
        }
        Ok(out)
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        // Closing checkpoints the WAL into the database and deletes it: with `synchronous=OFF`
        // that checkpoint would sync nothing, and a crash right after could lose what the
        // deleted WAL held. FULL makes it sync the WAL first and the database before the delete.
        // SQLite refuses to change it inside a transaction (an engine unwinding from a panic
        // mid-batch drops the store with one open), so that one is rolled back first; and if
        // FULL still cannot be set, the close does not checkpoint at all: the WAL stays on disk
        // and the next open recovers from it.
        if self.wal.is_some() {
            if !self.conn.is_autocommit() {
                let _ = self.conn.execute_batch("ROLLBACK");
            }
            if self.conn.execute_batch("PRAGMA synchronous=FULL").is_err() {
                let _ = self
                    .conn
                    .set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true);
            }
        }
    }
}

mod history;
mod space;
#[cfg(test)]
mod tests;
