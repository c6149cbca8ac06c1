//! Durable state behind one trait. All SQL in airlock lives below this module.
//!
//! The core's engine thread is the only caller. It opens one transaction per batch of operations
//! ([`Store::begin`] … [`Store::commit`]), wraps each operation in a savepoint so one failing
//! operation cannot spoil its neighbours, and answers nobody before `commit` returns: an
//! acknowledged write is on disk.
//!
//! The trait speaks in rows, not in rules: *which* lock to grant, when a lease is stale, what an
//! expired note means, all of that is the core's. A backend stores and finds rows.

pub mod calls;
pub mod postgres;
pub mod sqlite;

use crate::clock::Millis;

/// A failure of the backend. The core turns it into `CoreError::Storage`.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("{}", postgres::describe_error(.0))]
    Postgres(#[from] tokio_postgres::Error),
    #[error("{0}")]
    Other(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoteRow {
    pub key: String,
    pub value: String,
    pub author: Option<String>,
    pub expires_at: Option<Millis>,
}

/// One holder of a lock: an exclusive lock has one, a shared lock or a semaphore may have
/// several (one per agent), each with its own token and fence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockRow {
    pub name: String,
    pub agent_id: String,
    pub token: String,
    pub fence: i64,
    pub expires_at: Millis,
    /// Held shared (a reader, or one of a semaphore's holders); false: exclusive.
    pub shared: bool,
    /// The semaphore's limit, the same on every holder of the name; `None`: no limit.
    pub limit: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentRow {
    pub agent_id: String,
    pub expires_at: Millis,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EventRow {
    pub name: String,
    pub generation: i64,
    pub cleared_at: i64,
}

/// A task's life: `pending` → `claimed` → `completed` | `failed` (or back to `pending`), or
/// `dead` once it has used up its `max_attempts`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TaskState {
    Pending,
    Claimed,
    Completed,
    Failed,
    Dead,
}

impl TaskState {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Pending => "pending",
            TaskState::Claimed => "claimed",
            TaskState::Completed => "completed",
            TaskState::Failed => "failed",
            TaskState::Dead => "dead",
        }
    }

    pub fn parse(s: &str) -> Option<TaskState> {
        Some(match s {
            "pending" => TaskState::Pending,
            "claimed" => TaskState::Claimed,
            "completed" => TaskState::Completed,
            "failed" => TaskState::Failed,
            "dead" => TaskState::Dead,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskRow {
    pub id: i64,
    pub queue: String,
    pub payload: String,
    pub author: Option<String>,
    pub priority: i64,
    pub state: TaskState,
    pub attempts: i64,
    pub lease_agent: Option<String>,
    pub lease_token: Option<String>,
    pub lease_expires_at: Option<Millis>,
    pub finished_at: Option<Millis>,
    /// Not claimable before this instant (`delay_seconds`); `None`: at once.
    pub ready_at: Option<Millis>,
    /// Failures or lapsed leases after which the task is `dead`; `None`: no limit.
    pub max_attempts: Option<i64>,
    /// At most one pending or claimed task of the queue has it.
    pub unique_key: Option<String>,
    /// Why the last attempt failed (`fail_task`'s `error`, or a lapsed lease).
    pub last_error: Option<String>,
    /// What `complete_task` returned.
    pub result: Option<String>,
}

/// A task to insert: the columns a push decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTask<'a> {
    pub queue: &'a str,
    pub payload: &'a str,
    pub author: Option<&'a str>,
    pub priority: i64,
    pub now: Millis,
    pub ready_at: Option<Millis>,
    pub max_attempts: Option<i64>,
    pub unique_key: Option<&'a str>,
}

/// A lease to give a task ([`Store::task_claim_next`]).
#[derive(Debug, Clone, Copy)]
pub struct Lease<'a> {
    pub agent_id: &'a str,
    pub token: &'a str,
    pub expires_at: Millis,
}

/// A task [`Store::task_finish`] finished: what the history says of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finished {
    pub queue: String,
    /// The agent whose lease it finished under.
    pub agent_id: Option<String>,
}

/// How [`Store::task_finish`] ends a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    Completed,
    Failed,
}

impl Finish {
    pub fn state(self) -> TaskState {
        match self {
            Finish::Completed => TaskState::Completed,
            Finish::Failed => TaskState::Failed,
        }
    }
}

/// Makes durable, from a thread of its own, every commit a pipelined store wrote before the
/// call ([`Store::pipeline`]). An error means some of them may never reach the disk.
pub trait Syncer: Send {
    fn sync(&mut self) -> std::io::Result<()>;
}

/// How many tasks of one queue are in one state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueCount {
    pub queue: String,
    pub state: TaskState,
    pub count: i64,
}

/// One entry of the audit history (`get_history`, `airlock history`): something that happened
/// to a lock, a task or an event, written in the transaction that made it happen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryRow {
    /// Assigned by the store, increasing; 0 in a row to append.
    pub id: i64,
    pub at: Millis,
    /// What happened (`grant`, `release`, `claim`, `signal`, …: see `core::history`).
    pub kind: String,
    /// The lock's name, the task's queue, or the event's name.
    pub name: String,
    pub agent_id: Option<String>,
    /// The lock's fence, the task's id, or the event's generation.
    pub number: Option<i64>,
    /// Why a hold or a lease ended (`unlock`, `ttl`, …).
    pub reason: Option<String>,
    /// What a failed attempt said (`fail_task`'s error, cut short).
    pub error: Option<String>,
}

/// Which history entries to read: newest first, older than `before` (a cursor), at most `limit`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HistoryQuery {
    pub name: Option<String>,
    pub agent_id: Option<String>,
    pub kind: Option<String>,
    /// Only entries at or after this instant.
    pub since: Option<Millis>,
    /// Only entries with a smaller id.
    pub before: Option<i64>,
    pub limit: usize,
}

impl HistoryQuery {
    /// Whether an entry of this kind, name and agent passes the query's filters (`since` and
    /// `before` are the page's bounds, not filters: a store applies them as it walks).
    pub fn wants(&self, kind: &str, name: &str, agent_id: Option<&str>) -> bool {
        let passes = |filter: &Option<String>, got: Option<&str>| {
            filter.as_deref().is_none_or(|f| Some(f) == got)
        };
        passes(&self.kind, Some(kind))
            && passes(&self.name, Some(name))
            && passes(&self.agent_id, agent_id)
    }
}

/// Every timed row the deadline scheduler must know about after a restart.
#[derive(Debug, Default)]
pub struct Expiries {
    pub locks: Vec<(String, Millis)>,
    pub agents: Vec<(String, Millis)>,
    pub leases: Vec<(i64, Millis)>,
    /// Pending tasks with a `ready_at`: a parked claimer must wake when one becomes ready.
    pub delayed: Vec<(i64, Millis)>,
}

/// The storage backend. Called only from the engine thread, inside `begin`/`commit`.
pub trait Store: Send {
    fn begin(&mut self) -> StoreResult<()>;
    /// Makes the transaction durable (fsynced) before returning, unless [`Store::pipeline`]
    /// switched the store to pipelined commits: then it only writes it, and the [`Syncer`]
    /// makes it durable.
    fn commit(&mut self) -> StoreResult<()>;
    /// Whether the last [`Store::commit`] wrote anything, so that answers given from its state
    /// must wait for a [`Syncer`] call after it. A pipelined store that knows its commit wrote
    /// nothing says false, and those answers wait only for the commits before it. Default: true.
    fn last_commit_wrote(&self) -> bool {
        true
    }
    /// Switches to pipelined commits, if this store can: from now on [`Store::commit`] writes
    /// the transaction without waiting for the disk, and the returned [`Syncer`], called from
    /// another thread, makes every commit written before the call durable. `None` (the default):
    /// every commit stays durable when it returns.
    fn pipeline(&mut self) -> StoreResult<Option<Box<dyn Syncer>>> {
        Ok(None)
    }
    fn rollback(&mut self);
    fn savepoint(&mut self) -> StoreResult<()>;
    fn release_savepoint(&mut self) -> StoreResult<()>;
    fn rollback_to_savepoint(&mut self);
    /// Whether the transaction `begin` opened is still there to commit. False when the backend
    /// ended it on its own (SQLite rolls the whole transaction back on some errors, after which
    /// every statement would commit by itself) or a rollback to a savepoint failed. The engine
    /// then fails the batch instead of going on.
    fn transaction_ok(&mut self) -> bool {
        true
    }

    fn note_get(&mut self, key: &str) -> StoreResult<Option<NoteRow>>;
    fn note_put(&mut self, note: &NoteRow) -> StoreResult<()>;
    fn note_delete(&mut self, key: &str) -> StoreResult<()>;
    fn note_list(&mut self, now: Millis) -> StoreResult<Vec<NoteRow>>;
    fn notes_purge_expired(&mut self, now: Millis) -> StoreResult<usize>;

    /// Adds `by` to the counter (absent = 0) and returns the new value; `None` on overflow.
    fn counter_add(&mut self, name: &str, by: i64) -> StoreResult<Option<i64>>;

    /// Every holder row of `name`, expired ones too, oldest grant (lowest fence) first.
    fn lock_holders(&mut self, name: &str) -> StoreResult<Vec<LockRow>>;
    /// Inserts the holder (`name`, `agent_id`), or replaces its row.
    fn lock_put(&mut self, row: &LockRow) -> StoreResult<()>;
    /// Deletes one holder of `name`; absent, nothing happens.
    fn lock_delete_holder(&mut self, name: &str, agent_id: &str) -> StoreResult<()>;
    /// Deletes every holder of `name`.
    fn lock_delete(&mut self, name: &str) -> StoreResult<()>;
    /// Every holder row, in name order (then fence).
    fn lock_list(&mut self) -> StoreResult<Vec<LockRow>>;
    fn locks_held_by(&mut self, agent_id: &str) -> StoreResult<Vec<LockRow>>;
    /// The next fence for `name`: strictly greater than every fence ever issued for it.
    fn fence_next(&mut self, name: &str) -> StoreResult<i64>;

    fn agent_get(&mut self, agent_id: &str) -> StoreResult<Option<AgentRow>>;
    fn agent_put(&mut self, row: &AgentRow) -> StoreResult<()>;
    fn agent_delete(&mut self, agent_id: &str) -> StoreResult<()>;
    fn agent_list(&mut self) -> StoreResult<Vec<AgentRow>>;

    fn event_get(&mut self, name: &str) -> StoreResult<Option<EventRow>>;
    fn event_put(&mut self, row: &EventRow) -> StoreResult<()>;
    fn event_list(&mut self) -> StoreResult<Vec<EventRow>>;

    /// Inserts a new pending task and returns its id (ids strictly increase).
    fn task_insert_new(&mut self, task: &NewTask<'_>) -> StoreResult<i64>;
    /// [`Store::task_insert_new`] without delay, attempt limit or unique key.
    fn task_insert(
        &mut self,
        queue: &str,
        payload: &str,
        author: Option<&str>,
        priority: i64,
        now: Millis,
    ) -> StoreResult<i64> {
        self.task_insert_new(&NewTask {
            queue,
            payload,
            author,
            priority,
            now,
            ready_at: None,
            max_attempts: None,
            unique_key: None,
        })
    }
    fn task_get(&mut self, id: i64) -> StoreResult<Option<TaskRow>>;
    /// Updates what a task's life changes: state, attempts, lease, finish, readiness, error,
    /// result.
    fn task_update(&mut self, row: &TaskRow) -> StoreResult<()>;
    /// The pending task of `queue` to claim next at `now`: ready (no `ready_at`, or one at or
    /// before `now`), highest priority, then oldest.
    fn task_next_ready(&mut self, queue: &str, now: Millis) -> StoreResult<Option<TaskRow>>;
    /// Leases the task [`Store::task_next_ready`] would pick: `claimed`, one more attempt, the
    /// lease's agent, token and end. Returns the task as it now is; `None` if none is ready.
    /// One statement on both backends.
    fn task_claim_next(
        &mut self,
        queue: &str,
        now: Millis,
        lease: &Lease<'_>,
    ) -> StoreResult<Option<TaskRow>> {
        let Some(mut t) = self.task_next_ready(queue, now)? else {
            return Ok(None);
        };
        t.state = TaskState::Claimed;
        t.attempts += 1;
        t.lease_agent = Some(lease.agent_id.to_string());
        t.lease_token = Some(lease.token.to_string());
        t.lease_expires_at = Some(lease.expires_at);
        self.task_update(&t)?;
        Ok(Some(t))
    }
    /// Finishes task `id` if it is `claimed` under `lease_token` with the lease unexpired at
    /// `now`: to `completed` (keeping `note` as its result) or `failed` (as its last error),
    /// without lease token or end, finished at `now`: its queue and lessee. `None`, and nothing
    /// changed, otherwise.
    /// One statement on both backends.
    fn task_finish(
        &mut self,
        id: i64,
        lease_token: &str,
        now: Millis,
        to: Finish,
        note: Option<&str>,
    ) -> StoreResult<Option<Finished>> {
        let Some(mut t) = self.task_get(id)? else {
            return Ok(None);
        };
        let leased = t.state == TaskState::Claimed
            && t.lease_token.as_deref() == Some(lease_token)
            && t.lease_expires_at.is_some_and(|at| at > now);
        if !leased {
            return Ok(None);
        }
        match to {
            Finish::Completed => t.result = note.map(str::to_string),
            Finish::Failed => t.last_error = note.map(str::to_string),
        }
        t.state = to.state();
        t.lease_token = None;
        t.lease_expires_at = None;
        t.finished_at = Some(now);
        self.task_update(&t)?;
        Ok(Some(Finished {
            queue: t.queue,
            agent_id: t.lease_agent,
        }))
    }

    /// [`Store::task_next_ready`], whatever the tasks' `ready_at`.
    fn task_next_pending(&mut self, queue: &str) -> StoreResult<Option<TaskRow>> {
        self.task_next_ready(queue, Millis::MAX)
    }
    /// The pending or claimed task of `queue` with this unique key, if any.
    fn task_live_with_key(&mut self, queue: &str, key: &str) -> StoreResult<Option<TaskRow>>;
    /// Tasks of one queue, or of every queue, in one state or all, in id order.
    fn task_list_in(
        &mut self,
        queue: Option<&str>,
        state: Option<TaskState>,
    ) -> StoreResult<Vec<TaskRow>>;
    /// Tasks of one queue, or of every queue, in id order.
    fn task_list(&mut self, queue: Option<&str>) -> StoreResult<Vec<TaskRow>> {
        self.task_list_in(queue, None)
    }
    /// How many tasks each queue has in each state (states with none are left out).
    fn task_counts(&mut self) -> StoreResult<Vec<QueueCount>>;
    fn tasks_leased_by(&mut self, agent_id: &str) -> StoreResult<Vec<TaskRow>>;
    fn tasks_purge_finished(&mut self, before: Millis) -> StoreResult<usize>;

    /// Timed rows, read once at start to rebuild the deadline schedule.
    fn expiries(&mut self) -> StoreResult<Expiries>;

    // The audit history. Appended in the transaction of what it records (a backend may hold
    // the rows until `commit` and write them there; a savepoint rolled back drops its rows).

    fn history_append(&mut self, row: &HistoryRow) -> StoreResult<()>;
    /// Entries `q` asks for, newest first, and the `before` of the next page: `None` when no
    /// older entry matches. A backend that looks through a bounded number of entries per page
    /// may return fewer than `limit` (even none) with a next page.
    fn history_page(&mut self, q: &HistoryQuery) -> StoreResult<(Vec<HistoryRow>, Option<i64>)>;
    /// Deletes entries older than `before`, and all but the newest `keep` (ids are dense enough
    /// that "the last `keep` ids" is that); returns how many went.
    fn history_prune(&mut self, before: Millis, keep: u64) -> StoreResult<usize>;

    // Summaries, counted by the backend so the engine thread never loads every row (a task's
    // payload may be hundreds of KiB) just to count it.

    // Pages (`list_*`, `/status`). Each answers rows in the order of the full list after the
    // cursor, at most `limit`, and whether more follow. These defaults cut the full list (so
    // memory is not bounded by the page); SQLite overrides them with bounded queries.

    /// Live notes with keys after `after`, each value read as `values` says; the page stops
    /// once the values read pass `max_bytes` (always at least one row).
    fn note_page(
        &mut self,
        now: Millis,
        after: Option<&str>,
        limit: usize,
        values: Values,
        max_bytes: usize,
    ) -> StoreResult<(Vec<NoteRow>, bool)> {
        let rows = self
            .note_list(now)?
            .into_iter()
            .filter(|n| after.is_none_or(|a| n.key.as_str() > a))
            .map(|mut n| {
                values.cut(&mut n.value);
                Ok::<_, StoreError>(n)
            });
        take_page(rows, limit, max_bytes, |n| n.value.len())
    }

    /// Live holders (expiring after `now`) of the first `limit` lock names after `after`: a page
    /// counts names and holds every live holder of each, in name order, then fence.
    fn lock_page(
        &mut self,
        now: Millis,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<(Vec<LockRow>, bool)> {
        let rows = self
            .lock_list()?
            .into_iter()
            .filter(|l| l.expires_at > now && after.is_none_or(|a| l.name.as_str() > a))
            .collect();
        Ok(whole_names(rows, limit))
    }

    /// Live agents (expiring after `now`) with ids after `after`.
    fn agent_page(
        &mut self,
        now: Millis,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<(Vec<AgentRow>, bool)> {
        let rows = self
            .agent_list()?
            .into_iter()
            .filter(|a| a.expires_at > now && after.is_none_or(|x| a.agent_id.as_str() > x));
        take_page(rows.map(Ok::<_, StoreError>), limit, usize::MAX, |_| 0)
    }

    /// Tasks of one queue (or all), in one state (or all), with ids after `after`, each payload
    /// read as `payloads` says; stops once the payloads read pass `max_bytes`.
    fn task_page(
        &mut self,
        queue: Option<&str>,
        state: Option<TaskState>,
        after: Option<i64>,
        limit: usize,
        payloads: Values,
        max_bytes: usize,
    ) -> StoreResult<(Vec<TaskRow>, bool)> {
        let rows = self
            .task_list_in(queue, state)?
            .into_iter()
            .filter(|t| after.is_none_or(|a| t.id > a))
            .map(|mut t| {
                payloads.cut(&mut t.payload);
                Ok::<_, StoreError>(t)
            });
        take_page(rows, limit, max_bytes, |t| t.payload.len())
    }

    /// For each of `agents`: how many live locks it holds and how many live leases
    /// (claimed tasks whose lease ends after `now`). Agents holding nothing may be left out.
    fn holdings(
        &mut self,
        now: Millis,
        agents: &[String],
    ) -> StoreResult<std::collections::HashMap<String, (usize, usize)>> {
        let mut out = std::collections::HashMap::new();
        for a in agents {
            let locks = self
                .locks_held_by(a)?
                .iter()
                .filter(|l| l.expires_at > now)
                .count();
            let leases = self
                .tasks_leased_by(a)?
                .iter()
                .filter(|t| {
                    t.state == TaskState::Claimed && t.lease_expires_at.is_some_and(|at| at > now)
                })
                .count();
            out.insert(a.clone(), (locks, leases));
        }
        Ok(out)
    }

    /// Writes `orphan` (what an answer grants, as JSON) beside the row of forwarded call `call`,
    /// inside the open transaction: if the coordinating daemon dies before the answer is
    /// delivered and the caller then leaves, the next coordinator releases it at once instead of
    /// leaving it held until its TTL. Only a store other daemons forward calls to has the table.
    fn record_forwarded_grant(&mut self, call: i64, orphan: &str) -> StoreResult<()> {
        let _ = (call, orphan);
        Err(StoreError::Other(
            "this store does not run calls forwarded by other daemons".into(),
        ))
    }

    /// Bytes the state takes, when the backend can tell cheaply.
    fn used_bytes(&mut self) -> StoreResult<Option<u64>> {
        Ok(None)
    }

    /// A gauge of [`Store::used_bytes`] kept current at every commit that wrote, read by the
    /// storage quota from outside the engine thread; `None` where the backend has none
    /// (PostgreSQL).
    fn usage_meter(&self) -> Option<std::sync::Arc<std::sync::atomic::AtomicU64>> {
        None
    }
}

/// How much of each value (a note's value, a task's payload) a page reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Values {
    /// None: each is left empty.
    Omit,
    /// The first this many characters of each, cut by the backend's query so that no more of a
    /// value is fetched (the `/status` glance: a value may be hundreds of KiB).
    Preview(usize),
    /// Every value whole.
    Whole,
}

impl Values {
    /// Cuts `value` as asked, in memory (for stores without a bounded query).
    pub fn cut(self, value: &mut String) {
        match self {
            Values::Omit => value.clear(),
            Values::Preview(chars) => {
                if let Some((at, _)) = value.char_indices().nth(chars) {
                    value.truncate(at);
                }
            }
            Values::Whole => {}
        }
    }

    /// As one SQL parameter: -1 whole, 0 none, else the characters to keep (both backends'
    /// page queries read it with `CASE`, so a value is fetched only as far as asked).
    pub fn sql_chars(self) -> i64 {
        match self {
            Values::Omit => 0,
            Values::Preview(chars) => i64::try_from(chars).unwrap_or(i64::MAX),
            Values::Whole => -1,
        }
    }
}

/// Cuts lock holder rows (in name order, all after the cursor) to the first `limit` names, each
/// with all its rows; and whether another name follows.
pub fn whole_names(mut rows: Vec<LockRow>, limit: usize) -> (Vec<LockRow>, bool) {
    let mut names = 0;
    let mut cut = rows.len();
    for (i, r) in rows.iter().enumerate() {
        if i == 0 || rows[i - 1].name != r.name {
            names += 1;
            if names > limit {
                cut = i;
                break;
            }
        }
    }
    let more = cut < rows.len();
    rows.truncate(cut);
    (rows, more)
}

/// The first rows of `rows`: at most `limit`, and no more once their `size` passes `max_bytes`
/// (but always the first); and whether any row is left.
pub fn take_page<T, E>(
    mut rows: impl Iterator<Item = Result<T, E>>,
    limit: usize,
    max_bytes: usize,
    size: impl Fn(&T) -> usize,
) -> Result<(Vec<T>, bool), E> {
    let mut out = Vec::new();
    let mut bytes = 0usize;
    for row in rows.by_ref() {
        let row = row?;
        bytes = bytes.saturating_add(size(&row));
        out.push(row);
        if out.len() >= limit || bytes >= max_bytes {
            break;
        }
    }
    let more = rows.next().transpose()?.is_some();
    Ok((out, more))
}
