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

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockRow {
    pub name: String,
    pub agent_id: String,
    pub token: String,
    pub fence: i64,
    pub expires_at: Millis,
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

/// How many tasks of one queue are in one state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueCount {
    pub queue: String,
    pub state: TaskState,
    pub count: i64,
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
    /// Makes the transaction durable (fsynced) before returning.
    fn commit(&mut self) -> StoreResult<()>;
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

    fn lock_get(&mut self, name: &str) -> StoreResult<Option<LockRow>>;
    fn lock_put(&mut self, row: &LockRow) -> StoreResult<()>;
    fn lock_delete(&mut self, name: &str) -> StoreResult<()>;
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

    // Summaries, counted by the backend so the engine thread never loads every row (a task's
    // payload may be hundreds of KiB) just to count it.

    /// Locks held at `now` (unexpired), per holder.
    fn lock_counts(&mut self, now: Millis) -> StoreResult<Vec<(String, i64)>>;
    /// Claimed tasks whose lease is unexpired at `now`, per lease holder.
    fn lease_counts(&mut self, now: Millis) -> StoreResult<Vec<(String, i64)>>;
    /// Notes live at `now`, in key order, each value cut to its first `max_chars` characters;
    /// the flag says the value was longer.
    fn note_previews(&mut self, now: Millis, max_chars: i64) -> StoreResult<Vec<(NoteRow, bool)>>;
}
