//! The shared backend: every table in one PostgreSQL schema ([`SCHEMA`]), reached by several
//! daemons on several machines.
//!
//! The engine thread is a plain std thread, so each [`Store`] method runs its query to completion
//! with `Handle::block_on` on the runtime that drives the connection, bounded by a timeout: a
//! database that stops answering turns into a storage error, never a stuck engine (the statement
//! is then cancelled on the server; a COMMIT that timed out has an unknown outcome, like any
//! commit whose answer was lost). Every query is a statement prepared once in [`PgStore::new`];
//! `BEGIN` is sent with a transaction's first statement, in the same round trip, and a write whose
//! answer nobody reads is held and sent in the round trip of the next statement (see `held`).
//!
//! The store owns its connection: anything else sent on it would land inside the engine's
//! transactions.
//!
//! The semantics are the SQLite backend's, row for row; `tests/store.rs` runs one table of checks
//! against both. Two things differ by nature and are handled here:
//! - text: PostgreSQL cannot store U+0000 in `TEXT`, so a value containing it is refused before it
//!   reaches the server (SQLite stores it). Names are already checked by the core.
//! - order: key columns are `COLLATE "C"`, so `ORDER BY name` is byte order, as in SQLite.
//!
//! Durability: `commit` returns when the server reports the commit, which with the server's
//! `synchronous_commit` (left as configured; `on` by default) means flushed to its WAL.

use std::future::Future;
use std::time::Duration;

use tokio_postgres::{Client, NoTls, Row, Statement};

use super::{
    AgentRow, EventRow, Expiries, Finish, Finished, HistoryQuery, HistoryRow, Lease, LockRow,
    NewTask, NoteRow, QueueCount, Store, StoreError, StoreResult, TaskRow, TaskState, Values,
};
use crate::clock::Millis;

mod cache;
mod decode;
mod held;
mod history;
mod locks;
mod pages;
mod statements;
mod tasks;
pub mod tls;
mod usage;

use decode::{agent_from, describe_duration, event_from, lock_from, note_from, rows, task_from};
use statements::{Statements, LOCK_COLUMNS, TASK_COLUMNS};

/// The schema every airlock table lives in. SQL below names it literally (`airlock.notes`), so a
/// `search_path` never decides which table a query touches.
pub const SCHEMA: &str = "airlock";

/// The key of the transaction advisory lock that serializes migrations across daemons ("airlockm"
/// in ASCII). Distinct from any lock the cluster code takes.
pub const MIGRATION_LOCK_KEY: i64 = 0x6169_726c_6f63_6b6d;

/// How long one query may take before the store gives up on it (and asks the server to cancel it).
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(30);

/// How long sending that cancel request may take.
const CANCEL_TIMEOUT: Duration = Duration::from_secs(5);

/// Schema migrations (`src/store/sql/postgres/`), applied in order inside one transaction;
/// `airlock.schema_version` holds one row per migration that ran. Append only: a released
/// migration is never edited.
const MIGRATIONS: &[&str] = &[
    // 1: the tables of the SQLite backend, in the schema `airlock`.
    include_str!("sql/postgres/0001_schema.sql"),
    // 2: the coordinator's call table (made by 1 in databases from before the split).
    include_str!("sql/postgres/0002_forwarding_calls.sql"),
    // 3: push_task's delay, attempt limit and unique key; fail_task's error; complete_task's
    // result.
    include_str!("sql/postgres/0003_task_options.sql"),
    // 4: the bytes the state takes, kept by triggers, for the storage quota.
    include_str!("sql/postgres/0004_state_usage.sql"),
    // 5: one row per lock holder (shared locks and semaphores).
    include_str!("sql/postgres/0005_lock_holders.sql"),
    // 6: the audit history.
    include_str!("sql/postgres/0006_history.sql"),
];

/// How many migrations this binary knows: the schema version it writes and expects.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Creates or upgrades the schema. Idempotent, and safe to run from several daemons at once: all
/// of it happens in one transaction that first takes a transaction advisory lock, so a second
/// daemon waits for the first and then finds nothing left to do. A database whose recorded version
/// is newer than this binary's is refused, untouched.
///
/// Privileges: CREATE on the database, or (when an administrator made the schema beforehand) on
/// the schema `airlock`. Once the schema is current, running this again needs only USAGE on the
/// schema and SELECT on `airlock.schema_version`.
pub async fn migrate(client: &mut Client) -> StoreResult<()> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK_KEY])
        .await?;
    // Looked up first rather than CREATE SCHEMA IF NOT EXISTS: that statement checks for CREATE
    // on the database even when the schema exists, which would refuse a pre-made schema.
    let exists = tx
        .query_opt("SELECT 1 FROM pg_namespace WHERE nspname = $1", &[&SCHEMA])
        .await?
        .is_some();
    if !exists {
        tx.batch_execute("CREATE SCHEMA airlock").await?;
    }
    // Likewise looked up first: CREATE TABLE IF NOT EXISTS needs CREATE on the schema even when
    // the table exists, and a daemon given only read/write rights on a migrated schema must start.
    let has_versions = tx
        .query_one(
            "SELECT to_regclass('airlock.schema_version') IS NOT NULL",
            &[],
        )
        .await?
        .try_get::<_, bool>(0)?;
    if !has_versions {
        tx.batch_execute(
            "CREATE TABLE airlock.schema_version (
                version BIGINT PRIMARY KEY,
                applied_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
             )",
        )
        .await?;
    }
    let version: i64 = tx
        .query_one(
            "SELECT COALESCE(max(version), 0) FROM airlock.schema_version",
            &[],
        )
        .await?
        .try_get(0)?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::Other(format!(
            "the database has airlock schema version {version}, newer than this airlock \
             ({SCHEMA_VERSION}); upgrade airlock"
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        tx.batch_execute(sql).await?;
        tx.execute(
            "INSERT INTO airlock.schema_version (version) VALUES ($1)",
            &[&(i as i64 + 1)],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// The database's clock: milliseconds since the Unix epoch, read from `clock_timestamp()` (the
/// time of the call, not of the transaction's start).
pub async fn db_now_ms(client: &Client) -> StoreResult<i64> {
    let row = client
        .query_one(
            "SELECT floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint",
            &[],
        )
        .await?;
    Ok(row.try_get(0)?)
}

/// The message of a PostgreSQL error. `tokio_postgres::Error`'s own `Display` says only "db
/// error" or "connection closed"; this adds the server's message, detail and hint, or the
/// underlying cause.
pub(super) fn describe_error(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut s = format!(
            "PostgreSQL: {} (SQLSTATE {})",
            db.message(),
            db.code().code()
        );
        if let Some(d) = db.detail() {
            s.push_str("; detail: ");
            s.push_str(d);
        }
        if let Some(h) = db.hint() {
            s.push_str("; hint: ");
            s.push_str(h);
        }
        return s;
    }
    let mut s = format!("PostgreSQL: {e}");
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

/// PostgreSQL's `TEXT` cannot hold U+0000; say so plainly instead of letting the server fail the
/// statement (and with it the transaction) with an encoding error.
fn check_text(field: &str, value: &str) -> StoreResult<()> {
    if value.contains('\0') {
        return Err(StoreError::Other(format!(
            "{field} contains a NUL character (U+0000), which PostgreSQL cannot store"
        )));
    }
    Ok(())
}

/// The PostgreSQL store: one connection, owned by the engine thread.
///
/// Its `Store` methods block on the runtime: call them from a plain thread (the engine's), never
/// from inside an async task (tokio panics on a nested `block_on`).
pub struct PgStore {
    /// The connection. Its `Connection` future is driven on `rt` by whoever connected it.
    client: Client,
    /// The runtime every query is run on; the engine thread is not one of its workers.
    rt: tokio::runtime::Handle,
    st: Statements,
    /// Bound on each query; [`QUERY_TIMEOUT`] unless a test shortens it.
    timeout: Duration,
    /// `begin` was called and BEGIN not yet sent: it goes out with the next statement. A `Cell`
    /// because `run` takes `&self` (its query borrows the statements); the store is used from
    /// one thread only.
    begin_pending: std::cell::Cell<bool>,
    /// TLS for the cancel request's own connection, when the store's connection uses it.
    cancel_tls: Option<tls::Connector>,
    /// The operation savepoint, deferred like BEGIN: declared, sent, or none.
    savepoint: std::cell::Cell<Savepoint>,
    /// A RELEASE of the last savepoint, to go out with the next statement (or not at all: the
    /// commit releases it), so a savepoint per operation costs no round trip of its own.
    release_pending: std::cell::Cell<bool>,
    /// A rollback to the savepoint failed: the transaction may be aborted, and its COMMIT would
    /// be answered ROLLBACK without an error. The engine must not commit it.
    broken: std::cell::Cell<bool>,
    /// The bytes the state takes, as of the last commit (see `usage`).
    usage: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// History entries of this transaction, written with its COMMIT (see `history`).
    history: history::Pending,
    /// Writes (and the deferred BEGIN and savepoint statements before them) waiting for the
    /// next round trip, in the order they were made (see `held`).
    held: std::cell::RefCell<Vec<held::Held>>,
    /// Counts the operations' savepoints: which operation made a held write.
    step: std::cell::Cell<u64>,
    /// Lock rows and fences remembered across transactions, when this store is the sole
    /// writer (see `cache`).
    cache: cache::Cache,
    /// Between `begin` and `commit` or `rollback`: writes are held. Outside, a write is sent at
    /// once (it commits by itself), so none is ever left unsent.
    in_tx: std::cell::Cell<bool>,
}

/// Where the operation savepoint stands (see [`PgStore::run`]).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Savepoint {
    None,
    /// `savepoint` was called and SAVEPOINT not yet sent: it goes out with the next statement.
    Declared,
    /// SAVEPOINT was sent.
    Open,
}

impl PgStore {
    /// Takes an already-connected client (its `Connection` future is driven elsewhere, on `rt`)
    /// whose database has been migrated, and prepares every statement once.
    pub async fn new(client: Client, rt: tokio::runtime::Handle) -> StoreResult<PgStore> {
        let st = match Statements::prepare(&client).await {
            Ok(st) => st,
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => {
                return Err(StoreError::Other(format!(
                    "{}; the airlock schema is missing: run migrate first",
                    describe_error(&e)
                )))
            }
            Err(e) => return Err(e.into()),
        };
        let sync: String = client
            .query_one("SHOW synchronous_commit", &[])
            .await?
            .try_get(0)?;
        let usage = usage::gauge(usage::read(&client).await?);
        if sync == "off" {
            tracing::warn!(
                "the database has synchronous_commit=off: a commit airlock acknowledged can be \
                 lost if the database server crashes"
            );
        }
        Ok(PgStore {
            client,
            rt,
            st,
            timeout: QUERY_TIMEOUT,
            begin_pending: std::cell::Cell::new(false),
            cancel_tls: None,
            savepoint: std::cell::Cell::new(Savepoint::None),
            release_pending: std::cell::Cell::new(false),
            broken: std::cell::Cell::new(false),
            history: history::Pending::default(),
            usage,
            held: std::cell::RefCell::new(Vec::new()),
            step: std::cell::Cell::new(0),
            in_tx: std::cell::Cell::new(false),
            cache: cache::Cache::default(),
        })
    }

    /// Declares this store the only writer of the state while its connection lives (the
    /// coordinator's, which holds the coordinator lock): it then remembers lock rows and fences
    /// across transactions (see `cache`). Nothing else may write `airlock.locks` or
    /// `airlock.lock_fences` meanwhile.
    pub fn sole_writer(mut self) -> Self {
        self.cache.enable();
        self
    }

    /// Sends the cancel request of a timed-out query over TLS too (the store's connection does).
    pub fn with_cancel_tls(mut self, tls: tls::Connector) -> Self {
        self.cancel_tls = Some(tls);
        self
    }

    /// Changes the bound on each query (tests use a short one to see it fire).
    pub fn set_query_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// Runs one query to completion on the runtime, within the timeout.
    fn run<T>(&self, query: impl Future<Output = StoreResult<T>>) -> StoreResult<T> {
        // A closed client means the connection task is gone, perhaps with its runtime: do not
        // enter a runtime that may be shutting down (its timers would panic).
        if self.client.is_closed() {
            return Err(StoreError::Other(
                "the database connection is closed".into(),
            ));
        }
        let timeout = self.timeout;
        // The held writes, then BEGIN and the savepoint statements, go out in the same round
        // trip as this statement: all are sent on the first poll, in this order, before any
        // answer is awaited.
        let mut held = self.held.take();
        self.hold_prefix(&mut held);
        // If the timeout cuts the round trip short, a held statement's fate is unknown: unless
        // the current operation's savepoint undoes all of them, the transaction must not commit.
        let unsure = held.iter().any(|h| !self.undone_by_own_savepoint(h));
        let query = async {
            if held.is_empty() {
                return query.await;
            }
            self.after_held(held, query).await
        };
        self.rt.block_on(async {
            let mut query = std::pin::pin!(query);
            match tokio::time::timeout(timeout, query.as_mut()).await {
                Ok(answer) => answer,
                Err(_) => {
                    if unsure {
                        self.broken.set(true);
                    }
                    // The statement may still be running (waiting on a lock, say), and every
                    // later statement on this connection would queue behind it: ask the server to
                    // cancel it. Best effort; a failure only means the wait goes on.
                    let cancel = self.client.cancel_token();
                    let cancelled = tokio::time::timeout(CANCEL_TIMEOUT, async {
                        match &self.cancel_tls {
                            Some(tls) => cancel.cancel_query(tls.clone()).await,
                            None => cancel.cancel_query(NoTls).await,
                        }
                    })
                    .await;
                    if !matches!(cancelled, Ok(Ok(()))) {
                        tracing::warn!("could not cancel a database query that timed out");
                    }
                    // The request only asks: the server signals the backend when it gets to it,
                    // and the signal cancels whatever runs then. Sending the next statement now
                    // would let a late signal cancel that one instead (seen under load: a read
                    // after the rollback failed "canceling statement due to user request"). So
                    // wait, a bounded time, for this round trip's own answer: once it is in,
                    // the signal has landed on it, or the backend is idle and ignores it.
                    if tokio::time::timeout(CANCEL_TIMEOUT, query.as_mut())
                        .await
                        .is_err()
                    {
                        tracing::warn!("a database query went on after it was cancelled");
                    }
                    Err(StoreError::Other(format!(
                        "the database did not answer within {}",
                        describe_duration(timeout)
                    )))
                }
            }
        })
    }

    /// The deferred statements to send before the next one: BEGIN, the RELEASE of the last
    /// operation's savepoint, the SAVEPOINT of this operation.
    fn take_prefix(&self) -> String {
        let mut prefix = Vec::new();
        if self.begin_pending.replace(false) {
            prefix.push("BEGIN");
        }
        if self.release_pending.replace(false) {
            prefix.push("RELEASE SAVEPOINT op");
        }
        if self.savepoint.get() == Savepoint::Declared {
            self.savepoint.set(Savepoint::Open);
            prefix.push("SAVEPOINT op");
        }
        prefix.join("; ")
    }

    fn savepoint_open(&self) -> bool {
        self.savepoint.get() == Savepoint::Open
    }

    fn simple(&self, sql: &str) -> StoreResult<()> {
        self.run(async { Ok(self.client.batch_execute(sql).await?) })
    }

    fn task_rows(
        &self,
        st: &Statement,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> StoreResult<Vec<TaskRow>> {
        let r = self.run(async { Ok(self.client.query(st, params).await?) })?;
        rows(r, task_from)
    }
}

impl Store for PgStore {
    fn begin(&mut self) -> StoreResult<()> {
        // Deferred to the first statement (see `run`), which saves a round trip per transaction
        // and makes a transaction without statements free. READ COMMITTED (the default)
        // suffices: one daemon writes at a time.
        self.begin_pending.set(true);
        self.savepoint.set(Savepoint::None);
        self.release_pending.set(false);
        self.broken.set(false);
        self.history.clear();
        self.held.borrow_mut().clear();
        self.in_tx.set(true);
        Ok(())
    }

    fn commit(&mut self) -> StoreResult<()> {
        self.in_tx.set(false);
        // COMMIT releases every savepoint; one never sent needs nothing.
        self.savepoint.set(Savepoint::None);
        self.release_pending.set(false);
        let history = std::mem::take(&mut self.history);
        if history.is_empty() && self.begin_pending.replace(false) {
            return Ok(()); // nothing was sent: nothing to commit
        }
        if self.broken.get() {
            self.held.borrow_mut().clear();
            self.cache.forget();
            let _ = self.simple("ROLLBACK");
            return Err(StoreError::Other(
                "the transaction could not be rolled back to an operation's savepoint".into(),
            ));
        }
        self.commit_measured(&history)
    }

    fn rollback(&mut self) {
        self.savepoint.set(Savepoint::None);
        self.release_pending.set(false);
        self.history.clear();
        // What was never sent needs no undoing.
        self.held.borrow_mut().clear();
        self.in_tx.set(false);
        self.cache.forget();
        if self.begin_pending.replace(false) {
            return;
        }
        // Never panics: a closed connection is skipped by `run`, and any error is moot (a
        // transaction on a lost connection is rolled back by the server).
        let _ = self.simple("ROLLBACK");
    }

    fn savepoint(&mut self) -> StoreResult<()> {
        // Deferred to the operation's first statement (see `run`): an operation that sends
        // nothing costs nothing.
        self.savepoint.set(Savepoint::Declared);
        self.step.set(self.step.get() + 1);
        self.history.savepoint();
        Ok(())
    }

    fn release_savepoint(&mut self) -> StoreResult<()> {
        if self.savepoint.replace(Savepoint::None) == Savepoint::Open {
            self.release_pending.set(true);
        }
        Ok(())
    }

    fn rollback_to_savepoint(&mut self) {
        self.history.rollback_to_savepoint();
        self.cache.forget();
        if self.savepoint.replace(Savepoint::None) != Savepoint::Open {
            return; // nothing was sent since the savepoint: nothing to undo
        }
        // Its own held writes would be undone at once; earlier operations' still go out (and
        // their failure, seen here, breaks the transaction).
        self.drop_held_of_step();
        if self
            .simple("ROLLBACK TO SAVEPOINT op; RELEASE SAVEPOINT op")
            .is_err()
        {
            self.broken.set(true);
        }
    }

    fn transaction_ok(&mut self) -> bool {
        !self.broken.get()
    }

    fn history_append(&mut self, row: &HistoryRow) -> StoreResult<()> {
        self.history.push(row);
        Ok(())
    }

    fn history_page(&mut self, q: &HistoryQuery) -> StoreResult<(Vec<HistoryRow>, Option<i64>)> {
        self.read_history(q)
    }

    fn history_prune(&mut self, before: Millis, keep: u64) -> StoreResult<usize> {
        self.prune_history(before, keep)
    }

    fn note_get(&mut self, key: &str) -> StoreResult<Option<NoteRow>> {
        let r = self.run(async { Ok(self.client.query_opt(&self.st.note_get, &[&key]).await?) })?;
        r.as_ref().map(note_from).transpose()
    }

    fn note_put(&mut self, n: &NoteRow) -> StoreResult<()> {
        check_text("the note's value", &n.value)?;
        let params: Vec<held::Param> = vec![
            Box::new(n.key.clone()),
            Box::new(n.value.clone()),
            Box::new(n.author.clone()),
            Box::new(n.expires_at),
        ];
        self.defer(&self.st.note_put, params)
    }

    fn note_delete(&mut self, key: &str) -> StoreResult<()> {
        self.defer(&self.st.note_delete, vec![Box::new(key.to_string())])
    }

    fn note_list(&mut self, now: Millis) -> StoreResult<Vec<NoteRow>> {
        let r = self.run(async { Ok(self.client.query(&self.st.note_list, &[&now]).await?) })?;
        rows(r, note_from)
    }

    fn notes_purge_expired(&mut self, now: Millis) -> StoreResult<usize> {
        self.run(async {
            let n = self
                .client
                .execute(&self.st.notes_purge_expired, &[&now])
                .await?;
            Ok(n as usize)
        })
    }

    fn counter_add(&mut self, name: &str, by: i64) -> StoreResult<Option<i64>> {
        let r = self.run(async {
            Ok(self
                .client
                .query_opt(&self.st.counter_add, &[&name, &by])
                .await?)
        })?;
        Ok(r.map(|row| row.try_get(0)).transpose()?)
    }

    fn lock_holders(&mut self, name: &str) -> StoreResult<Vec<LockRow>> {
        self.pg_lock_holders(name)
    }

    fn lock_put(&mut self, l: &LockRow) -> StoreResult<()> {
        self.pg_lock_put(l)
    }

    fn lock_delete_holder(&mut self, name: &str, agent_id: &str) -> StoreResult<()> {
        self.pg_lock_delete_holder(name, agent_id)
    }

    fn lock_delete(&mut self, name: &str) -> StoreResult<()> {
        self.pg_lock_delete(name)
    }

    fn lock_list(&mut self) -> StoreResult<Vec<LockRow>> {
        self.pg_lock_list()
    }

    fn locks_held_by(&mut self, agent_id: &str) -> StoreResult<Vec<LockRow>> {
        self.pg_locks_held_by(agent_id)
    }

    fn fence_next(&mut self, name: &str) -> StoreResult<i64> {
        self.pg_fence_next(name)
    }

    fn agent_get(&mut self, agent_id: &str) -> StoreResult<Option<AgentRow>> {
        let r = self.run(async {
            Ok(self
                .client
                .query_opt(&self.st.agent_get, &[&agent_id])
                .await?)
        })?;
        r.as_ref().map(agent_from).transpose()
    }

    fn agent_put(&mut self, a: &AgentRow) -> StoreResult<()> {
        let params: Vec<held::Param> = vec![Box::new(a.agent_id.clone()), Box::new(a.expires_at)];
        self.defer(&self.st.agent_put, params)
    }

    fn agent_delete(&mut self, agent_id: &str) -> StoreResult<()> {
        self.defer(&self.st.agent_delete, vec![Box::new(agent_id.to_string())])
    }

    fn agent_list(&mut self) -> StoreResult<Vec<AgentRow>> {
        let r = self.run(async { Ok(self.client.query(&self.st.agent_list, &[]).await?) })?;
        rows(r, agent_from)
    }

    fn event_get(&mut self, name: &str) -> StoreResult<Option<EventRow>> {
        let r =
            self.run(async { Ok(self.client.query_opt(&self.st.event_get, &[&name]).await?) })?;
        r.as_ref().map(event_from).transpose()
    }

    fn event_put(&mut self, e: &EventRow) -> StoreResult<()> {
        let params: Vec<held::Param> = vec![
            Box::new(e.name.clone()),
            Box::new(e.generation),
            Box::new(e.cleared_at),
        ];
        self.defer(&self.st.event_put, params)
    }

    fn event_list(&mut self) -> StoreResult<Vec<EventRow>> {
        let r = self.run(async { Ok(self.client.query(&self.st.event_list, &[]).await?) })?;
        rows(r, event_from)
    }

    fn task_insert_new(&mut self, t: &NewTask<'_>) -> StoreResult<i64> {
        check_text("the task's payload", t.payload)?;
        self.run(async {
            let row = self
                .client
                .query_one(
                    &self.st.task_insert,
                    &[
                        &t.queue,
                        &t.payload,
                        &t.author,
                        &t.priority,
                        &t.now,
                        &t.ready_at,
                        &t.max_attempts,
                        &t.unique_key,
                    ],
                )
                .await?;
            Ok(row.try_get(0)?)
        })
    }

    fn task_get(&mut self, id: i64) -> StoreResult<Option<TaskRow>> {
        Ok(self.task_rows(&self.st.task_get, &[&id])?.pop())
    }

    fn task_update(&mut self, t: &TaskRow) -> StoreResult<()> {
        self.pg_task_update(t)
    }

    fn task_claim_next(
        &mut self,
        queue: &str,
        now: Millis,
        lease: &Lease<'_>,
    ) -> StoreResult<Option<TaskRow>> {
        self.pg_task_claim_next(queue, now, lease)
    }

    fn task_finish(
        &mut self,
        id: i64,
        token: &str,
        now: Millis,
        to: Finish,
        note: Option<&str>,
    ) -> StoreResult<Option<Finished>> {
        self.pg_task_finish(id, token, now, to, note)
    }

    fn task_next_ready(&mut self, queue: &str, now: Millis) -> StoreResult<Option<TaskRow>> {
        Ok(self
            .task_rows(&self.st.task_next_pending, &[&queue, &now])?
            .pop())
    }

    fn task_live_with_key(&mut self, queue: &str, key: &str) -> StoreResult<Option<TaskRow>> {
        Ok(self
            .task_rows(&self.st.task_live_with_key, &[&queue, &key])?
            .pop())
    }

    fn task_list_in(
        &mut self,
        queue: Option<&str>,
        state: Option<TaskState>,
    ) -> StoreResult<Vec<TaskRow>> {
        let state = state.map(TaskState::as_str);
        self.task_rows(&self.st.task_list_in, &[&queue, &state])
    }

    fn task_counts(&mut self) -> StoreResult<Vec<QueueCount>> {
        let r = self.run(async { Ok(self.client.query(&self.st.task_counts, &[]).await?) })?;
        r.iter()
            .map(|row| {
                let queue: String = row.try_get(0)?;
                let state: &str = row.try_get(1)?;
                let state = TaskState::parse(state).ok_or_else(|| {
                    StoreError::Other(format!(
                        "unknown task state {state:?} in queue {queue:?} in airlock.tasks"
                    ))
                })?;
                Ok(QueueCount {
                    queue,
                    state,
                    count: row.try_get(2)?,
                })
            })
            .collect()
    }

    fn tasks_leased_by(&mut self, agent_id: &str) -> StoreResult<Vec<TaskRow>> {
        self.task_rows(&self.st.tasks_leased_by, &[&agent_id])
    }

    fn tasks_purge_finished(&mut self, before: Millis) -> StoreResult<usize> {
        self.run(async {
            let n = self
                .client
                .execute(&self.st.tasks_purge_finished, &[&before])
                .await?;
            Ok(n as usize)
        })
    }

    fn note_page(
        &mut self,
        now: Millis,
        after: Option<&str>,
        limit: usize,
        values: Values,
        max_bytes: usize,
    ) -> StoreResult<(Vec<NoteRow>, bool)> {
        self.pg_note_page(now, after, limit, values, max_bytes)
    }

    fn lock_page(
        &mut self,
        now: Millis,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<(Vec<LockRow>, bool)> {
        self.pg_lock_page(now, after, limit)
    }

    fn agent_page(
        &mut self,
        now: Millis,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<(Vec<AgentRow>, bool)> {
        self.pg_agent_page(now, after, limit)
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
        self.pg_task_page(queue, state, after, limit, payloads, max_bytes)
    }

    fn holdings(
        &mut self,
        now: Millis,
        agents: &[String],
    ) -> StoreResult<std::collections::HashMap<String, (usize, usize)>> {
        self.pg_holdings(now, agents)
    }

    fn usage_meter(&self) -> Option<std::sync::Arc<std::sync::atomic::AtomicU64>> {
        Some(self.usage.clone())
    }

    fn record_forwarded_grant(&mut self, call: i64, orphan: &str) -> StoreResult<()> {
        let params: Vec<held::Param> = vec![Box::new(call), Box::new(orphan.to_string())];
        self.defer(&self.st.record_forwarded_grant, params)
    }

    fn expiries(&mut self) -> StoreResult<Expiries> {
        let (locks, agents, leases, delayed) = self.run(async {
            Ok(futures::try_join!(
                self.client.query(&self.st.expiries_locks, &[]),
                self.client.query(&self.st.expiries_agents, &[]),
                self.client.query(&self.st.expiries_leases, &[]),
                self.client.query(&self.st.expiries_delayed, &[]),
            )?)
        })?;
        let ids = |rows: Vec<Row>| -> StoreResult<Vec<(i64, Millis)>> {
            rows.iter()
                .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
                .collect()
        };
        let pairs = |rows: Vec<Row>| -> StoreResult<Vec<(String, Millis)>> {
            rows.iter()
                .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
                .collect()
        };
        Ok(Expiries {
            locks: pairs(locks)?,
            agents: pairs(agents)?,
            leases: ids(leases)?,
            delayed: ids(delayed)?,
        })
    }
}
