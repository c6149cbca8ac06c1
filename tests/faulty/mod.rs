//! A [`Store`] that fails on purpose: the next `begin`, savepoint, release or `commit`, or the
//! Nth statement (before or after running it), as a [`Plan`] says. For the model test's
//! storage-fault property: no answer may be contradicted by the state afterwards.

use std::sync::{Arc, Mutex};

use airlock::clock::Millis;
use airlock::store::{
    AgentRow, EventRow, Expiries, Finish, Finished, HistoryQuery, HistoryRow, Lease, LockRow,
    NewTask, NoteRow, QueueCount, Store, StoreError, StoreResult, TaskRow, TaskState, Values,
};

/// Where the next fault strikes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Begin,
    Savepoint,
    Release,
    Commit,
    /// The statement with this index (0 = the first after arming). With `after`, the statement
    /// runs and then reports failure (a write that happened but whose success was lost).
    Statement {
        nth: u32,
        after: bool,
    },
}

/// The armed fault and whether it struck. Shared between the store and the test.
#[derive(Debug, Default)]
pub struct Plan {
    fault: Option<Fault>,
    statements: u32,
    struck: bool,
    /// The store methods called (the transaction's own included), by name, since the last
    /// `take_log`.
    log: Vec<&'static str>,
    /// What each `note_page` and `task_page` call asked to read of the values, since the last
    /// `take_page_reads`.
    page_reads: Vec<(&'static str, Values)>,
}

/// The test's handle on a [`FaultyStore`]'s plan.
#[derive(Clone, Default)]
pub struct Faults(Arc<Mutex<Plan>>);

impl Faults {
    /// Arms `fault` for the calls that follow.
    pub fn arm(&self, fault: Fault) {
        let mut p = self.0.lock().unwrap();
        p.fault = Some(fault);
        p.statements = 0;
        p.struck = false;
    }

    /// The store methods called since the last call, by name.
    pub fn take_log(&self) -> Vec<&'static str> {
        std::mem::take(&mut self.0.lock().unwrap().log)
    }

    /// What each `note_page` and `task_page` call since the last call asked to read of the
    /// values (whole, a preview, none).
    pub fn take_page_reads(&self) -> Vec<(&'static str, Values)> {
        std::mem::take(&mut self.0.lock().unwrap().page_reads)
    }

    /// Disarms; true if the fault struck.
    pub fn disarm(&self) -> bool {
        let mut p = self.0.lock().unwrap();
        p.fault = None;
        std::mem::take(&mut p.struck)
    }
}

pub struct FaultyStore {
    inner: Box<dyn Store>,
    faults: Faults,
}

impl FaultyStore {
    pub fn new(inner: Box<dyn Store>) -> (FaultyStore, Faults) {
        let faults = Faults::default();
        (
            FaultyStore {
                inner,
                faults: faults.clone(),
            },
            faults,
        )
    }

    fn read_values(&self, page: &'static str, values: Values) {
        let mut p = self.faults.0.lock().unwrap();
        p.page_reads.push((page, values));
    }

    fn injected() -> StoreError {
        StoreError::Other("injected fault".into())
    }

    /// True (and the fault spent) if `kind` is the armed fault.
    fn strikes(&self, kind: Fault) -> bool {
        let mut p = self.faults.0.lock().unwrap();
        if p.fault == Some(kind) {
            p.fault = None;
            p.struck = true;
            return true;
        }
        false
    }

    fn control(
        &mut self,
        kind: Fault,
        f: impl FnOnce(&mut dyn Store) -> StoreResult<()>,
    ) -> StoreResult<()> {
        let name = match kind {
            Fault::Begin => "begin",
            Fault::Savepoint => "savepoint",
            Fault::Release => "release_savepoint",
            Fault::Commit => "commit",
            Fault::Statement { .. } => "statement",
        };
        self.faults.0.lock().unwrap().log.push(name);
        if self.strikes(kind) {
            return Err(Self::injected());
        }
        f(&mut *self.inner)
    }

    fn stmt<T>(
        &mut self,
        name: &'static str,
        f: impl FnOnce(&mut dyn Store) -> StoreResult<T>,
    ) -> StoreResult<T> {
        let strike = {
            let mut p = self.faults.0.lock().unwrap();
            p.log.push(name);
            match p.fault {
                Some(Fault::Statement { nth, after }) if p.statements == nth => {
                    p.fault = None;
                    p.struck = true;
                    Some(after)
                }
                Some(Fault::Statement { .. }) => {
                    p.statements += 1;
                    None
                }
                _ => None,
            }
        };
        match strike {
            None => f(&mut *self.inner),
            Some(after) => {
                if after {
                    let _ = f(&mut *self.inner);
                }
                Err(Self::injected())
            }
        }
    }
}

impl Store for FaultyStore {
    fn begin(&mut self) -> StoreResult<()> {
        self.control(Fault::Begin, |s| s.begin())
    }
    fn commit(&mut self) -> StoreResult<()> {
        self.control(Fault::Commit, |s| s.commit())
    }
    fn last_commit_wrote(&self) -> bool {
        self.inner.last_commit_wrote()
    }
    fn rollback(&mut self) {
        self.inner.rollback()
    }
    fn savepoint(&mut self) -> StoreResult<()> {
        self.control(Fault::Savepoint, |s| s.savepoint())
    }
    fn release_savepoint(&mut self) -> StoreResult<()> {
        self.control(Fault::Release, |s| s.release_savepoint())
    }
    fn rollback_to_savepoint(&mut self) {
        self.faults
            .0
            .lock()
            .unwrap()
            .log
            .push("rollback_to_savepoint");
        self.inner.rollback_to_savepoint()
    }
    fn transaction_ok(&mut self) -> bool {
        self.inner.transaction_ok()
    }

    fn history_append(&mut self, row: &HistoryRow) -> StoreResult<()> {
        self.stmt("history_append", |s| s.history_append(row))
    }
    fn history_page(&mut self, q: &HistoryQuery) -> StoreResult<(Vec<HistoryRow>, Option<i64>)> {
        self.stmt("history_page", |s| s.history_page(q))
    }
    fn history_prune(&mut self, before: Millis, keep: u64) -> StoreResult<usize> {
        self.stmt("history_prune", |s| s.history_prune(before, keep))
    }

    fn note_get(&mut self, key: &str) -> StoreResult<Option<NoteRow>> {
        self.stmt("note_get", |s| s.note_get(key))
    }
    fn note_put(&mut self, note: &NoteRow) -> StoreResult<()> {
        self.stmt("note_put", |s| s.note_put(note))
    }
    fn note_delete(&mut self, key: &str) -> StoreResult<()> {
        self.stmt("note_delete", |s| s.note_delete(key))
    }
    fn note_list(&mut self, now: Millis) -> StoreResult<Vec<NoteRow>> {
        self.stmt("note_list", |s| s.note_list(now))
    }
    fn notes_purge_expired(&mut self, now: Millis) -> StoreResult<usize> {
        self.stmt("notes_purge_expired", |s| s.notes_purge_expired(now))
    }
    fn counter_add(&mut self, name: &str, by: i64) -> StoreResult<Option<i64>> {
        self.stmt("counter_add", |s| s.counter_add(name, by))
    }
    fn lock_holders(&mut self, name: &str) -> StoreResult<Vec<LockRow>> {
        self.stmt("lock_holders", |s| s.lock_holders(name))
    }
    fn lock_put(&mut self, row: &LockRow) -> StoreResult<()> {
        self.stmt("lock_put", |s| s.lock_put(row))
    }
    fn lock_delete_holder(&mut self, name: &str, agent_id: &str) -> StoreResult<()> {
        self.stmt("lock_delete_holder", |s| {
            s.lock_delete_holder(name, agent_id)
        })
    }
    fn lock_delete(&mut self, name: &str) -> StoreResult<()> {
        self.stmt("lock_delete", |s| s.lock_delete(name))
    }
    fn lock_list(&mut self) -> StoreResult<Vec<LockRow>> {
        self.stmt("lock_list", |s| s.lock_list())
    }
    fn locks_held_by(&mut self, agent_id: &str) -> StoreResult<Vec<LockRow>> {
        self.stmt("locks_held_by", |s| s.locks_held_by(agent_id))
    }
    fn fence_next(&mut self, name: &str) -> StoreResult<i64> {
        self.stmt("fence_next", |s| s.fence_next(name))
    }
    fn agent_get(&mut self, agent_id: &str) -> StoreResult<Option<AgentRow>> {
        self.stmt("agent_get", |s| s.agent_get(agent_id))
    }
    fn agent_put(&mut self, row: &AgentRow) -> StoreResult<()> {
        self.stmt("agent_put", |s| s.agent_put(row))
    }
    fn agent_delete(&mut self, agent_id: &str) -> StoreResult<()> {
        self.stmt("agent_delete", |s| s.agent_delete(agent_id))
    }
    fn agent_list(&mut self) -> StoreResult<Vec<AgentRow>> {
        self.stmt("agent_list", |s| s.agent_list())
    }
    fn event_get(&mut self, name: &str) -> StoreResult<Option<EventRow>> {
        self.stmt("event_get", |s| s.event_get(name))
    }
    fn event_put(&mut self, row: &EventRow) -> StoreResult<()> {
        self.stmt("event_put", |s| s.event_put(row))
    }
    fn event_list(&mut self) -> StoreResult<Vec<EventRow>> {
        self.stmt("event_list", |s| s.event_list())
    }
    fn task_insert_new(&mut self, task: &NewTask<'_>) -> StoreResult<i64> {
        self.stmt("task_insert", |s| s.task_insert_new(task))
    }
    fn task_get(&mut self, id: i64) -> StoreResult<Option<TaskRow>> {
        self.stmt("task_get", |s| s.task_get(id))
    }
    fn task_update(&mut self, row: &TaskRow) -> StoreResult<()> {
        self.stmt("task_update", |s| s.task_update(row))
    }
    fn task_next_ready(&mut self, queue: &str, now: Millis) -> StoreResult<Option<TaskRow>> {
        self.stmt("task_next_pending", |s| s.task_next_ready(queue, now))
    }
    // The one-statement claim and finish of the real stores, faulted as one statement each
    // (the trait's defaults, two statements, are not what the daemon runs).
    fn task_claim_next(
        &mut self,
        queue: &str,
        now: Millis,
        lease: &Lease<'_>,
    ) -> StoreResult<Option<TaskRow>> {
        self.stmt("task_claim_next", |s| s.task_claim_next(queue, now, lease))
    }
    fn task_finish(
        &mut self,
        id: i64,
        lease_token: &str,
        now: Millis,
        to: Finish,
        note: Option<&str>,
    ) -> StoreResult<Option<Finished>> {
        self.stmt("task_finish", |s| {
            s.task_finish(id, lease_token, now, to, note)
        })
    }
    fn task_live_with_key(&mut self, queue: &str, key: &str) -> StoreResult<Option<TaskRow>> {
        self.stmt("task_live_with_key", |s| s.task_live_with_key(queue, key))
    }
    fn task_list_in(
        &mut self,
        queue: Option<&str>,
        state: Option<TaskState>,
    ) -> StoreResult<Vec<TaskRow>> {
        self.stmt("task_list", |s| s.task_list_in(queue, state))
    }
    fn note_page(
        &mut self,
        now: Millis,
        after: Option<&str>,
        limit: usize,
        values: Values,
        max_bytes: usize,
    ) -> StoreResult<(Vec<NoteRow>, bool)> {
        self.read_values("note_page", values);
        self.stmt("note_page", |s| {
            s.note_page(now, after, limit, values, max_bytes)
        })
    }
    fn lock_page(
        &mut self,
        now: Millis,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<(Vec<LockRow>, bool)> {
        self.stmt("lock_page", |s| s.lock_page(now, after, limit))
    }
    fn agent_page(
        &mut self,
        now: Millis,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<(Vec<AgentRow>, bool)> {
        self.stmt("agent_page", |s| s.agent_page(now, after, limit))
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
        self.read_values("task_page", payloads);
        self.stmt("task_page", |s| {
            s.task_page(queue, state, after, limit, payloads, max_bytes)
        })
    }
    fn holdings(
        &mut self,
        now: Millis,
        agents: &[String],
    ) -> StoreResult<std::collections::HashMap<String, (usize, usize)>> {
        self.stmt("holdings", |s| s.holdings(now, agents))
    }
    fn task_counts(&mut self) -> StoreResult<Vec<QueueCount>> {
        self.stmt("task_counts", |s| s.task_counts())
    }
    fn tasks_leased_by(&mut self, agent_id: &str) -> StoreResult<Vec<TaskRow>> {
        self.stmt("tasks_leased_by", |s| s.tasks_leased_by(agent_id))
    }
    fn tasks_purge_finished(&mut self, before: Millis) -> StoreResult<usize> {
        self.stmt("tasks_purge_finished", |s| s.tasks_purge_finished(before))
    }
    fn record_forwarded_grant(&mut self, call: i64, orphan: &str) -> StoreResult<()> {
        self.stmt("record_forwarded_grant", |s| {
            s.record_forwarded_grant(call, orphan)
        })
    }
    fn used_bytes(&mut self) -> StoreResult<Option<u64>> {
        self.inner.used_bytes()
    }
    fn usage_meter(&self) -> Option<std::sync::Arc<std::sync::atomic::AtomicU64>> {
        self.inner.usage_meter()
    }
    fn expiries(&mut self) -> StoreResult<Expiries> {
        self.inner.expiries()
    }
}
