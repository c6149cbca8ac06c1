//! The forwarding table (`airlock.calls`) of the PostgreSQL backend: how a daemon hands a tool
//! call to the coordinating daemon and gets its answer back (see `crate::cluster`).
//!
//! A row's life: `queued` (inserted by the daemon that received the call) → `running` (taken by
//! the coordinator) → `done` (answer written) → deleted by the receiving daemon once its caller
//! has read the answer. A caller who goes away turns `queued`/`running` into `cancelled` and
//! `done` into `orphaned`; the coordinator then releases whatever grant the answer carried.
//!
//! These statements run outside the engine's transactions, on connections with
//! `synchronous_commit = off`: a row only carries a call to the coordinator and its answer back,
//! and every effect of a call is committed (fsynced) by the engine's own transaction, which also
//! makes every earlier row change durable (the write-ahead log is flushed in order).

use std::future::Future;

use tokio_postgres::types::ToSql;
use tokio_postgres::{Error, GenericClient, Row, Statement};

/// A connection the forwarding statements run on: a pooled one prepares each statement once and
/// keeps it (the daemon's case); a plain client prepares it for the call (tests, tools).
pub trait Sql: Sync {
    fn client(&self) -> &tokio_postgres::Client;
    fn statement(&self, sql: &str) -> impl Future<Output = Result<Statement, Error>> + Send;
}

impl Sql for deadpool_postgres::ClientWrapper {
    fn client(&self) -> &tokio_postgres::Client {
        self
    }
    fn statement(&self, sql: &str) -> impl Future<Output = Result<Statement, Error>> + Send {
        self.prepare_cached(sql)
    }
}

impl Sql for tokio_postgres::Client {
    fn client(&self) -> &tokio_postgres::Client {
        self
    }
    fn statement(&self, sql: &str) -> impl Future<Output = Result<Statement, Error>> + Send {
        self.prepare(sql)
    }
}

type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

async fn q(c: &impl Sql, sql: &str, params: Params<'_>) -> Result<Vec<Row>, Error> {
    let st = c.statement(sql).await?;
    c.client().query(&st, params).await
}

async fn q_one(c: &impl Sql, sql: &str, params: Params<'_>) -> Result<Row, Error> {
    let st = c.statement(sql).await?;
    c.client().query_one(&st, params).await
}

async fn q_exec(c: &impl Sql, sql: &str, params: Params<'_>) -> Result<u64, Error> {
    let st = c.statement(sql).await?;
    c.client().execute(&st, params).await
}

/// The channel the coordinating daemon listens on: `q<id>` = a new call, `c<id>` = a caller
/// went away.
pub const COORDINATOR_CHANNEL: &str = "airlock_coordinator";

/// The channel on which daemon `daemon` hears `<id>` = the answer to its call is written.
pub fn answer_channel(daemon: &str) -> String {
    format!("airlock_answer_{daemon}")
}

/// Where a forwarded call is in its life. Stored as its name in `airlock.calls.state`.
///
/// ```text
///  queued ──take──▶ running ──answer──▶ done ──read──▶ (deleted by the receiving daemon)
///    │                 │                  │
///    └──caller left──▶ cancelled          └──caller left──▶ orphaned
///                      │  (answer written over it: orphaned)        │
///                      └──────────── the coordinator deletes it, releasing the grant ──┘
/// ```
/// A `running` row found at take-over was taken by a coordinator that may or may not have run
/// it: the successor runs it again if its tool is
/// [`repeatable_at_takeover`](crate::core::Tool::repeatable_at_takeover), and answers "may or
/// may not have taken effect" otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallState {
    Queued,
    Running,
    Done,
    Cancelled,
    Orphaned,
}

impl CallState {
    pub fn as_str(self) -> &'static str {
        match self {
            CallState::Queued => "queued",
            CallState::Running => "running",
            CallState::Done => "done",
            CallState::Cancelled => "cancelled",
            CallState::Orphaned => "orphaned",
        }
    }

    /// The state stored as `name`; `None` for a name this version does not know.
    pub fn from_name(name: &str) -> Option<CallState> {
        [
            CallState::Queued,
            CallState::Running,
            CallState::Done,
            CallState::Cancelled,
            CallState::Orphaned,
        ]
        .into_iter()
        .find(|s| s.as_str() == name)
    }
}

/// A call taken by the coordinator.
#[derive(Debug, Clone)]
pub struct CallRow {
    pub id: i64,
    pub daemon: String,
    pub tool: String,
    pub args: String,
    /// `Running` when a previous coordinator had already taken it (it may have taken effect);
    /// `Queued` otherwise.
    pub state: CallState,
    /// What a previous coordinator granted this call and never delivered (an
    /// [`Orphan`](crate::core::Orphan) as JSON, written in the grant's own transaction).
    pub orphan: Option<String>,
}

/// What became of an answered row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answered {
    /// Written; the receiving daemon has been told.
    Delivered,
    /// The caller had gone away: release the grant.
    Unwanted,
    /// Not written: the answering session's daemon no longer coordinates (its coordinator
    /// session is gone, so another daemon may have taken the call over and run it again). The
    /// row is left to the coordinator of now.
    NotCoordinator,
}

/// Queues a call and tells the coordinator; returns its id.
pub async fn insert(
    c: &impl Sql,
    daemon: &str,
    tool: &str,
    args: &str,
) -> Result<i64, tokio_postgres::Error> {
    let row = q_one(
        c,
        "WITH c AS (INSERT INTO airlock.calls (daemon, tool, args) VALUES ($1, $2, $3) \
             RETURNING id) SELECT id, pg_notify($4, 'q' || id) FROM c",
        &[&daemon, &tool, &args, &COORDINATOR_CHANNEL],
    )
    .await?;
    Ok(row.get(0))
}

/// Which calls the coordinator takes.
#[derive(Debug, Clone, Copy)]
pub enum Take<'a> {
    /// These, if still queued (their notifications arrived).
    Ids(&'a [i64]),
    /// Every queued call (the safety net).
    Queued,
    /// Every queued call and every call a previous coordinator had taken (at take-over).
    All,
}

/// Marks calls taken by the coordinator and returns them, oldest first: none unless the
/// coordinator lock is held by `engine_pid` (the taking daemon's engine backend), so a daemon
/// that lost its coordinator session takes nothing it could no longer answer.
pub async fn take(
    c: &impl Sql,
    which: Take<'_>,
    engine_pid: i32,
) -> Result<Vec<CallRow>, tokio_postgres::Error> {
    let (hi, lo) = coordinator_key_halves();
    let rows = match which {
        Take::Ids(ids) => {
            q(
                c,
                &format!(
                    "UPDATE airlock.calls SET state = 'running' WHERE id = ANY($1) \
                     AND state = 'queued' AND {} RETURNING id, daemon, tool, args, 'queued', orphan",
                    holds_coordinator_lock(2)
                ),
                &[&ids, &engine_pid, &hi, &lo],
            )
            .await?
        }
        Take::Queued => {
            q(
                c,
                &format!(
                    "UPDATE airlock.calls SET state = 'running' WHERE state = 'queued' AND {} \
                     RETURNING id, daemon, tool, args, 'queued', orphan",
                    holds_coordinator_lock(1)
                ),
                &[&engine_pid, &hi, &lo],
            )
            .await?
        }
        Take::All => {
            q(
                c,
                &format!(
                    "WITH t AS (SELECT id, state AS was FROM airlock.calls \
                     WHERE state IN ('queued', 'running') AND {} FOR UPDATE) \
                     UPDATE airlock.calls c SET state = 'running' FROM t WHERE c.id = t.id \
                     RETURNING c.id, c.daemon, c.tool, c.args, t.was, c.orphan",
                    holds_coordinator_lock(1)
                ),
                &[&engine_pid, &hi, &lo],
            )
            .await?
        }
    };
    let mut calls: Vec<CallRow> = rows
        .iter()
        .map(|r| CallRow {
            id: r.get(0),
            daemon: r.get(1),
            tool: r.get(2),
            args: r.get(3),
            state: CallState::from_name(r.get::<_, &str>(4)).unwrap_or(CallState::Running),
            orphan: r.get(5),
        })
        .collect();
    calls.sort_by_key(|c| c.id);
    Ok(calls)
}

/// Writes a call's answer (and the grant it carries, unless the engine already wrote the grant
/// this call was given, which is kept: a re-run that finds its grant again answers it as not
/// fresh) and tells the receiving daemon, provided
/// the coordinator lock is still held by `engine_pid` (the backend of the answering daemon's
/// engine session): a daemon that lost that session must not answer calls its successor may
/// already have run again. `None` if there is no unanswered row (its daemon died and the row
/// was cleaned up, or an earlier attempt of this answer landed): an answer is written once.
pub async fn answer(
    c: &impl Sql,
    id: i64,
    result: &str,
    orphan: Option<&str>,
    engine_pid: i32,
) -> Result<Option<Answered>, tokio_postgres::Error> {
    let (hi, lo) = coordinator_key_halves();
    let row = q_one(
        c,
        &format!(
            "WITH mine AS (SELECT {} AS yes), \
             u AS (UPDATE airlock.calls SET result = $2, orphan = COALESCE($3, orphan), \
               state = CASE state WHEN 'running' THEN 'done' ELSE 'orphaned' END \
               WHERE id = $1 AND state IN ('running', 'cancelled') AND (SELECT yes FROM mine) \
               RETURNING state, daemon) \
             SELECT (SELECT yes FROM mine), u.state, CASE WHEN u.state = 'done' \
             THEN pg_notify('airlock_answer_' || u.daemon, $1::text) END \
             FROM (SELECT 1) AS one LEFT JOIN u ON true",
            holds_coordinator_lock(4)
        ),
        &[&id, &result, &orphan, &engine_pid, &hi, &lo],
    )
    .await?;
    if !row.get::<_, bool>(0) {
        return Ok(Some(Answered::NotCoordinator));
    }
    Ok(row
        .get::<_, Option<&str>>(1)
        .map(|state| match CallState::from_name(state) {
            Some(CallState::Done) => Answered::Delivered,
            _ => Answered::Unwanted,
        }))
}

/// Answers of `ids` that are written, as `(id, result)`.
pub async fn answers(
    c: &impl Sql,
    ids: &[i64],
) -> Result<Vec<(i64, String)>, tokio_postgres::Error> {
    let rows = q(
        c,
        "SELECT id, result FROM airlock.calls WHERE id = ANY($1) AND state = 'done'",
        &[&ids],
    )
    .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Of `ids`, those with no row any more.
pub async fn missing(c: &impl Sql, ids: &[i64]) -> Result<Vec<i64>, tokio_postgres::Error> {
    let rows = q(
        c,
        "SELECT i FROM unnest($1::bigint[]) AS i \
             WHERE NOT EXISTS (SELECT 1 FROM airlock.calls WHERE id = i)",
        &[&ids],
    )
    .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Deletes rows whose answers were read.
pub async fn forget(c: &impl Sql, ids: &[i64]) -> Result<(), tokio_postgres::Error> {
    q_exec(
        c,
        "DELETE FROM airlock.calls WHERE id = ANY($1) AND state = 'done'",
        &[&ids],
    )
    .await?;
    Ok(())
}

/// The caller of `ids` went away: cancel what is not answered yet, mark what is as unwanted,
/// and tell the coordinator.
pub async fn abandon(c: &impl Sql, ids: &[i64]) -> Result<(), tokio_postgres::Error> {
    q(
        c,
        "WITH u AS (UPDATE airlock.calls SET state = CASE state \
         WHEN 'done' THEN 'orphaned' WHEN 'orphaned' THEN 'orphaned' ELSE 'cancelled' END \
         WHERE id = ANY($1) RETURNING id) \
         SELECT pg_notify($2, 'c' || id) FROM u",
        &[&ids, &COORDINATOR_CHANNEL],
    )
    .await?;
    Ok(())
}

/// Every unanswered call of `daemon`'s (after it lost its connection, its callers are gone):
/// cancelled, and the coordinator told. Answered rows are left alone: their answers may have been
/// read, and a grant read is its holder's (the receiving daemon withdraws an unread one itself).
pub async fn abandon_all_of(
    c: &impl GenericClient,
    daemon: &str,
) -> Result<(), tokio_postgres::Error> {
    c.query(
        "WITH u AS (UPDATE airlock.calls SET state = 'cancelled' \
         WHERE daemon = $1 AND state IN ('queued', 'running') RETURNING id) \
         SELECT pg_notify($2, 'c' || id) FROM u",
        &[&daemon, &COORDINATOR_CHANNEL],
    )
    .await?;
    Ok(())
}

/// Deletes the answered rows of a daemon that is gone: nobody will read them. A grant they carry
/// stays with its agent until its TTL (the agent may have read it before its daemon died).
pub async fn forget_all_of(c: &impl Sql, daemon: &str) -> Result<(), tokio_postgres::Error> {
    q_exec(
        c,
        "DELETE FROM airlock.calls WHERE daemon = $1 AND state = 'done'",
        &[&daemon],
    )
    .await?;
    Ok(())
}

/// Rows whose callers went away, with the grant to release, for the coordinator; deleted.
pub async fn take_unwanted(
    c: &impl Sql,
    ids: Option<&[i64]>,
    engine_pid: i32,
) -> Result<Vec<(i64, String, Option<String>)>, tokio_postgres::Error> {
    // Like `take` and `answer`: only the coordinator's engine can release what these rows carry,
    // so a daemon that lost its coordinator session leaves them to its successor.
    let (hi, lo) = coordinator_key_halves();
    let rows = match ids {
        Some(ids) => {
            q(
                c,
                &format!(
                    "DELETE FROM airlock.calls WHERE id = ANY($1) \
                     AND state IN ('cancelled', 'orphaned') AND {} RETURNING id, state, orphan",
                    holds_coordinator_lock(2)
                ),
                &[&ids, &engine_pid, &hi, &lo],
            )
            .await?
        }
        None => {
            q(
                c,
                &format!(
                    "DELETE FROM airlock.calls WHERE state IN ('cancelled', 'orphaned') AND {} \
                     RETURNING id, state, orphan",
                    holds_coordinator_lock(1)
                ),
                &[&engine_pid, &hi, &lo],
            )
            .await?
        }
    };
    Ok(rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect())
}

/// Daemons other than `me` with rows in the table.
pub async fn daemons(c: &impl Sql, me: &str) -> Result<Vec<String>, tokio_postgres::Error> {
    let rows = q(
        c,
        "SELECT DISTINCT daemon FROM airlock.calls WHERE daemon <> $1",
        &[&me],
    )
    .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// The advisory-lock key space of daemon liveness: a daemon holds `(LIVENESS, hashtext(id))`
/// on its listening connection for as long as that connection lives.
pub const LIVENESS: i32 = 0x6169_726c;

/// Takes this daemon's liveness lock (on its listening connection).
pub async fn hold_liveness(c: &impl GenericClient, me: &str) -> Result<(), tokio_postgres::Error> {
    c.execute(
        "SELECT pg_advisory_lock($1, hashtext($2))",
        &[&LIVENESS, &me],
    )
    .await?;
    Ok(())
}

/// Whether `daemon`'s listening connection is gone (its liveness lock is free). One autocommit
/// statement with a transaction-level try-lock: nothing can stay locked on the pooled session.
pub async fn is_gone(c: &impl Sql, daemon: &str) -> Result<bool, tokio_postgres::Error> {
    let row = q_one(
        c,
        "SELECT pg_try_advisory_xact_lock($1, hashtext($2))",
        &[&LIVENESS, &daemon],
    )
    .await?;
    Ok(row.get(0))
}

/// `COORDINATOR_LOCK` as `pg_locks` shows it: `(classid, objid)`, with `objsubid = 1`.
fn coordinator_key_halves() -> (i64, i64) {
    let key = COORDINATOR_LOCK as u64;
    ((key >> 32) as i64, (key & 0xffff_ffff) as i64)
}

/// SQL: whether backend `$n` holds the coordinator lock in this database, with the key's halves
/// in `$n+1` and `$n+2`.
fn holds_coordinator_lock(n: usize) -> String {
    format!(
        "EXISTS (SELECT 1 FROM pg_locks l WHERE l.locktype = 'advisory' AND l.granted \
         AND l.objsubid = 1 AND l.pid = ${n} AND l.classid::text::bigint = ${} \
         AND l.objid::text::bigint = ${} AND l.database = (SELECT d.oid FROM pg_database d \
         WHERE d.datname = current_database()))",
        n + 1,
        n + 2
    )
}

/// The key of the coordinator's advisory lock: the daemon holding it runs the engine.
pub const COORDINATOR_LOCK: i64 = 0x6169_726c_6f63_6b31;

/// Blocks until this connection holds the coordinator lock.
pub async fn become_coordinator(c: &impl GenericClient) -> Result<(), tokio_postgres::Error> {
    c.execute("SELECT pg_advisory_lock($1)", &[&COORDINATOR_LOCK])
        .await?;
    Ok(())
}
