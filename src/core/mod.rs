//! The domain core: locks, notes, counters, presence, events and tasks, with the wake-up
//! registry for parked callers and the deadline scheduler for expiries.
//!
//! It knows nothing of HTTP, MCP, JSON-RPC or SQL. [`Coordinator`] is the cheap, cloneable handle
//! the rest of the daemon uses: each method checks its input (a bad argument is refused here and
//! changes nothing), sends one command to the [`engine`] thread, and awaits the answer, which
//! arrives only after the change is committed to disk.

pub mod engine;
pub mod quota;
pub mod types;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;

use crate::clock::Clock;
use crate::store::Store;
pub use engine::Orphan;
pub use engine::WaitProgress;
use engine::{Command, Engine, Op, Reply};
pub use types::*;

/// A callback told, every [`PROGRESS_EVERY`], how a parked call is doing.
pub type ProgressFn = Arc<dyn Fn(WaitReport) + Send + Sync>;

/// How often a parked call reports progress (so clients with idle timeouts keep waiting).
pub const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// What a progress callback is told.
#[derive(Debug, Clone)]
pub struct WaitReport {
    pub waited_seconds: u64,
    pub window_seconds: u64,
    pub progress: Option<WaitProgress>,
}

/// The handle to the core. Clone freely.
#[derive(Clone)]
pub struct Coordinator {
    tx: mpsc::Sender<Command>,
    next_call: Arc<AtomicU64>,
    quota: Arc<quota::Quota>,
}

/// Owns the engine thread; dropping every [`Coordinator`] lets it finish.
pub struct EngineThread {
    handle: std::thread::JoinHandle<()>,
}

impl EngineThread {
    /// Waits for the engine to finish its last batch.
    pub fn join(self) {
        let _ = self.handle.join();
    }
}

/// A parked call in flight. If its caller goes away before reading the answer, it leaves its
/// line at once; and if the answer had already arrived carrying a grant, the grant is released.
struct ParkedCall<T, F: Fn(&T) -> Option<Orphan>> {
    tx: mpsc::Sender<Command>,
    call: u64,
    /// `None` once the answer has been read.
    rx: Option<oneshot::Receiver<CoreResult<T>>>,
    orphan_of: F,
}

impl<T, F: Fn(&T) -> Option<Orphan>> Drop for ParkedCall<T, F> {
    fn drop(&mut self) {
        let Some(mut rx) = self.rx.take() else {
            return;
        };
        if let Ok(Ok(unread)) = rx.try_recv() {
            if let Some(orphan) = (self.orphan_of)(&unread) {
                let _ = self.tx.send(Command::Orphaned(orphan));
            }
        }
        let _ = self.tx.send(Command::Cancel(self.call));
    }
}

/// The grant a lock answer carries, to release if nobody reads it.
pub fn lock_orphan(name: String) -> impl Fn(&LockOutcome) -> Option<Orphan> {
    move |o| match o {
        LockOutcome::Granted {
            lock_token,
            fresh: true,
            ..
        } => Some(Orphan::Locks(vec![(name.clone(), lock_token.clone())])),
        _ => None,
    }
}

/// The fresh grants a `lock_resources` answer carries.
pub fn lock_set_orphan(o: &LockSetOutcome) -> Option<Orphan> {
    match o {
        LockSetOutcome::Granted { tokens, fresh, .. } => Some(Orphan::Locks(
            fresh
                .iter()
                .filter_map(|n| tokens.get(n).map(|t| (n.clone(), t.clone())))
                .collect(),
        )),
        _ => None,
    }
}

/// The lease a claim answer carries.
pub fn claim_orphan(o: &ClaimOutcome) -> Option<Orphan> {
    match o {
        ClaimOutcome::Claimed {
            id, lease_token, ..
        } => Some(Orphan::Lease {
            id: *id,
            lease_token: lease_token.clone(),
        }),
        _ => None,
    }
}

fn no_orphan<T>(_: &T) -> Option<Orphan> {
    None
}

impl Coordinator {
    /// Starts the engine thread over `store`.
    pub fn start(
        store: Box<dyn Store>,
        clock: Arc<dyn Clock>,
    ) -> CoreResult<(Coordinator, EngineThread)> {
        let meter = store.usage_meter();
        let engine = Engine::new(store, clock)?;
        let (tx, rx) = mpsc::channel();
        let handle = std::thread::Builder::new()
            .name("airlock-engine".into())
            .spawn(move || engine.run(rx))
            .map_err(|e| CoreError::Storage(format!("could not start the engine thread: {e}")))?;
        Ok((
            Coordinator {
                tx,
                next_call: Arc::new(AtomicU64::new(1)),
                quota: Arc::new(quota::Quota::new(meter)),
            },
            EngineThread { handle },
        ))
    }

    /// A coordinator with no engine behind it: every argument is checked exactly as in the daemon,
    /// and a call that passes the checks answers [`CoreError::ShuttingDown`]. Nothing is stored.
    /// For validating requests without a daemon (the fuzz target, tests).
    pub fn detached() -> Coordinator {
        let (tx, _rx) = mpsc::channel();
        Coordinator {
            tx,
            next_call: Arc::new(AtomicU64::new(1)),
            quota: Arc::new(quota::Quota::new(None)),
        }
    }

    /// Limits the state to `bytes` (`AIRLOCK_MAX_STATE_BYTES`): notes and tasks that would
    /// take it past are refused (see [`quota`]).
    pub fn set_state_quota(&self, bytes: u64) {
        self.quota.set_limit(bytes);
    }

    async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Op) -> CoreResult<T> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Op(make(reply)))
            .map_err(|_| CoreError::ShuttingDown)?;
        rx.await.map_err(|_| CoreError::ShuttingDown)?
    }

    /// Runs an operation that may park. If this future is dropped before the answer arrives the
    /// call leaves its line at once. While parked, `progress` (if any) hears how it is doing.
    async fn call_parked<T>(
        &self,
        window_seconds: u64,
        progress: Option<ProgressFn>,
        orphan_of: impl Fn(&T) -> Option<Orphan>,
        make: impl FnOnce(u64, Reply<T>) -> Op,
    ) -> CoreResult<T> {
        let call = self.next_call.fetch_add(1, Ordering::Relaxed);
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Op(make(call, reply)))
            .map_err(|_| CoreError::ShuttingDown)?;
        let mut guard = ParkedCall {
            tx: self.tx.clone(),
            call,
            rx: Some(rx),
            orphan_of,
        };
        let rx = guard.rx.as_mut().expect("just set");
        let started = tokio::time::Instant::now();
        let result = match progress {
            None => rx.await,
            Some(report) => {
                let mut ticker = tokio::time::interval_at(started + PROGRESS_EVERY, PROGRESS_EVERY);
                loop {
                    tokio::select! {
                        r = &mut *rx => break r,
                        _ = ticker.tick() => {
                            let status = self.call(|reply| Op::WaitStatus { call, reply }).await.ok().flatten();
                            report(WaitReport {
                                waited_seconds: started.elapsed().as_secs(),
                                window_seconds,
                                progress: status,
                            });
                        }
                    }
                }
            }
        };
        guard.rx = None;
        result.map_err(|_| CoreError::ShuttingDown)?
    }

    /// Releases a grant whose answer was never read (see [`Orphan`]); a grant that has since
    /// changed hands is left alone.
    pub fn release_orphan(&self, orphan: Orphan) {
        let _ = self.tx.send(Command::Orphaned(orphan));
    }

    /// Answers every parked call with its timeout answer; later waits do not park. For shutdown.
    pub async fn drain(&self) {
        let (done, rx) = oneshot::channel();
        if self.tx.send(Command::Drain(done)).is_ok() {
            let _ = rx.await;
        }
    }

    // ------------------------------------------------------------ notes and counters

    pub async fn set_note(
        &self,
        key: String,
        value: String,
        author: Option<String>,
        ttl_seconds: Option<i64>,
    ) -> CoreResult<Saved> {
        check_name("key", &key)?;
        check_value("value", &value)?;
        check_author("author", &author)?;
        let ttl_ms = ttl_seconds
            .map(|s| check_ttl("ttl_seconds", s))
            .transpose()?;
        let _room = self
            .quota
            .reserve("value", row_bytes(&key, &value, &author))?;
        self.call(|reply| Op::SetNote {
            key,
            value,
            author,
            ttl_ms,
            reply,
        })
        .await
    }

    pub async fn get_note(&self, key: String) -> CoreResult<GetNoteResult> {
        check_name("key", &key)?;
        self.call(|reply| Op::GetNote { key, reply }).await
    }

    /// The first page of notes (see [`Coordinator::list_notes_page`]).
    pub async fn list_notes(&self) -> CoreResult<Vec<NoteView>> {
        Ok(self.list_notes_page(Page::default()).await?.items)
    }

    pub async fn list_notes_page(&self, page: Page) -> CoreResult<Paged<NoteView>> {
        self.call(|reply| Op::ListNotes { page, reply }).await
    }

    pub async fn delete_note(&self, key: String) -> CoreResult<Deleted> {
        check_name("key", &key)?;
        self.call(|reply| Op::DeleteNote { key, reply }).await
    }

    pub async fn set_note_if(
        &self,
        key: String,
        expected: String,
        new_value: String,
        author: Option<String>,
        ttl_seconds: Option<i64>,
    ) -> CoreResult<Swapped> {
        check_name("key", &key)?;
        check_value("expected_value", &expected)?;
        check_value("new_value", &new_value)?;
        check_author("author", &author)?;
        let ttl_ms = ttl_seconds
            .map(|s| check_ttl("ttl_seconds", s))
            .transpose()?;
        let _room = self
            .quota
            .reserve("new_value", row_bytes(&key, &new_value, &author))?;
        self.call(|reply| Op::SetNoteIf {
            key,
            expected,
            new_value,
            author,
            ttl_ms,
            reply,
        })
        .await
    }

    pub async fn increment_counter(
        &self,
        name: String,
        by: Option<i64>,
    ) -> CoreResult<CounterValue> {
        check_name("name", &name)?;
        let by = by.unwrap_or(1);
        self.call(|reply| Op::IncrementCounter { name, by, reply })
            .await
    }

    // ------------------------------------------------------------ locks

    pub async fn lock_resource(
        &self,
        name: String,
        agent_id: String,
        ttl_seconds: Option<i64>,
        wait_seconds: Option<i64>,
        wake_token: Option<String>,
        progress: Option<ProgressFn>,
    ) -> CoreResult<LockOutcome> {
        check_name("name", &name)?;
        check_name("agent_id", &agent_id)?;
        let ttl_ms = check_ttl(
            "ttl_seconds",
            ttl_seconds.unwrap_or(DEFAULT_LOCK_TTL_SECONDS),
        )?;
        let wait_ms = check_wait("wait_seconds", wait_seconds.unwrap_or(0))?;
        if let Some(t) = &wake_token {
            check_name("wake_token", t)?;
        }
        self.call_parked(
            (wait_ms / 1000) as u64,
            progress,
            lock_orphan(name.clone()),
            |call, reply| Op::LockResource {
                call,
                name,
                agent_id,
                ttl_ms,
                wait_ms,
                wake_token,
                reply,
            },
        )
        .await
    }

    pub async fn lock_resources(
        &self,
        names: Vec<String>,
        agent_id: String,
        ttl_seconds: Option<i64>,
        wait_seconds: Option<i64>,
        progress: Option<ProgressFn>,
    ) -> CoreResult<LockSetOutcome> {
        if names.is_empty() || names.len() > MAX_LOCK_SET {
            return Err(CoreError::invalid(
                "names",
                format!(
                    "must list 1 to {MAX_LOCK_SET} lock names, got {}",
                    names.len()
                ),
            ));
        }
        for (i, n) in names.iter().enumerate() {
            check_name(&format!("names[{i}]"), n)?;
        }
        let mut sorted = names.clone();
        sorted.sort();
        if let Some(w) = sorted.windows(2).find(|w| w[0] == w[1]) {
            return Err(CoreError::invalid(
                "names",
                format!("must not repeat a name, got {:?} twice", w[0]),
            ));
        }
        check_name("agent_id", &agent_id)?;
        let ttl_ms = check_ttl(
            "ttl_seconds",
            ttl_seconds.unwrap_or(DEFAULT_LOCK_TTL_SECONDS),
        )?;
        let wait_ms = check_wait("wait_seconds", wait_seconds.unwrap_or(0))?;
        self.call_parked(
            (wait_ms / 1000) as u64,
            progress,
            lock_set_orphan,
            |call, reply| Op::LockResources {
                call,
                names: sorted,
                agent_id,
                ttl_ms,
                wait_ms,
                reply,
            },
        )
        .await
    }

    pub async fn unlock_resource(&self, name: String, proof: HolderProof) -> CoreResult<Released> {
        check_name("name", &name)?;
        check_proof(&proof)?;
        self.call(|reply| Op::UnlockResource { name, proof, reply })
            .await
    }

    pub async fn renew_lock(
        &self,
        name: String,
        proof: HolderProof,
        ttl_seconds: Option<i64>,
    ) -> CoreResult<Renewed> {
        check_name("name", &name)?;
        check_proof(&proof)?;
        let ttl_ms = check_ttl(
            "ttl_seconds",
            ttl_seconds.unwrap_or(DEFAULT_LOCK_TTL_SECONDS),
        )?;
        self.call(|reply| Op::RenewLock {
            name,
            proof,
            ttl_ms,
            reply,
        })
        .await
    }

    /// The first page of locks (see [`Coordinator::list_locks_page`]).
    pub async fn list_locks(&self) -> CoreResult<Vec<LockView>> {
        Ok(self.list_locks_page(Page::default()).await?.items)
    }

    pub async fn list_locks_page(&self, page: Page) -> CoreResult<Paged<LockView>> {
        self.call(|reply| Op::ListLocks { page, reply }).await
    }

    // ------------------------------------------------------------ presence

    pub async fn register_agent(
        &self,
        agent_id: String,
        ttl_seconds: Option<i64>,
    ) -> CoreResult<Registered> {
        check_name("agent_id", &agent_id)?;
        let ttl_ms = check_ttl(
            "ttl_seconds",
            ttl_seconds.unwrap_or(DEFAULT_AGENT_TTL_SECONDS),
        )?;
        self.call(|reply| Op::RegisterAgent {
            agent_id,
            ttl_ms,
            reply,
        })
        .await
    }

    pub async fn unregister_agent(&self, agent_id: String) -> CoreResult<Unregistered> {
        check_name("agent_id", &agent_id)?;
        self.call(|reply| Op::UnregisterAgent { agent_id, reply })
            .await
    }

    /// The first page of agents (see [`Coordinator::list_agents_page`]).
    pub async fn list_agents(&self) -> CoreResult<Vec<AgentView>> {
        Ok(self.list_agents_page(Page::default()).await?.items)
    }

    pub async fn list_agents_page(&self, page: Page) -> CoreResult<Paged<AgentView>> {
        self.call(|reply| Op::ListAgents { page, reply }).await
    }

    // ------------------------------------------------------------ events

    pub async fn signal_event(&self, name: String) -> CoreResult<Signaled> {
        check_name("name", &name)?;
        self.call(|reply| Op::SignalEvent { name, reply }).await
    }

    pub async fn wait_for_event(
        &self,
        name: String,
        last_seen_generation: Option<i64>,
        wait_seconds: Option<i64>,
        progress: Option<ProgressFn>,
    ) -> CoreResult<EventWaitOutcome> {
        check_name("name", &name)?;
        let last_seen = last_seen_generation.unwrap_or(0);
        if last_seen < 0 {
            return Err(CoreError::invalid(
                "last_seen_generation",
                format!("must be 0 or more, got {last_seen}"),
            ));
        }
        let wait_ms = check_wait(
            "wait_seconds",
            wait_seconds.unwrap_or(DEFAULT_EVENT_WAIT_SECONDS),
        )?;
        self.call_parked(
            (wait_ms / 1000) as u64,
            progress,
            no_orphan,
            |call, reply| Op::WaitForEvent {
                call,
                name,
                last_seen,
                wait_ms,
                reply,
            },
        )
        .await
    }

    pub async fn clear_event(&self, name: String) -> CoreResult<Cleared> {
        check_name("name", &name)?;
        self.call(|reply| Op::ClearEvent { name, reply }).await
    }

    // ------------------------------------------------------------ tasks

    pub async fn push_task(
        &self,
        queue: String,
        payload: String,
        author: Option<String>,
        priority: Option<i64>,
    ) -> CoreResult<Pushed> {
        check_name("queue", &queue)?;
        check_value("payload", &payload)?;
        check_author("author", &author)?;
        let priority = priority.unwrap_or(0);
        let _room = self
            .quota
            .reserve("payload", row_bytes(&queue, &payload, &author))?;
        self.call(|reply| Op::PushTask {
            queue,
            payload,
            author,
            priority,
            reply,
        })
        .await
    }

    pub async fn claim_next_task(
        &self,
        queue: String,
        agent_id: String,
        lease_seconds: Option<i64>,
        wait_seconds: Option<i64>,
        progress: Option<ProgressFn>,
    ) -> CoreResult<ClaimOutcome> {
        check_name("queue", &queue)?;
        check_name("agent_id", &agent_id)?;
        let lease_ms = check_ttl(
            "lease_seconds",
            lease_seconds.unwrap_or(DEFAULT_LEASE_SECONDS),
        )?;
        let wait_ms = check_wait("wait_seconds", wait_seconds.unwrap_or(0))?;
        self.call_parked(
            (wait_ms / 1000) as u64,
            progress,
            claim_orphan,
            |call, reply| Op::ClaimNextTask {
                call,
                queue,
                agent_id,
                lease_ms,
                wait_ms,
                reply,
            },
        )
        .await
    }

    pub async fn complete_task(&self, id: i64, lease_token: String) -> CoreResult<Completed> {
        check_name("lease_token", &lease_token)?;
        self.call(|reply| Op::CompleteTask {
            id,
            lease_token,
            reply,
        })
        .await
    }

    pub async fn fail_task(
        &self,
        id: i64,
        lease_token: String,
        requeue: Option<bool>,
    ) -> CoreResult<Failed> {
        check_name("lease_token", &lease_token)?;
        let requeue = requeue.unwrap_or(true);
        self.call(|reply| Op::FailTask {
            id,
            lease_token,
            requeue,
            reply,
        })
        .await
    }

    pub async fn extend_lease(
        &self,
        id: i64,
        lease_token: String,
        lease_seconds: Option<i64>,
    ) -> CoreResult<Extended> {
        check_name("lease_token", &lease_token)?;
        let lease_ms = check_ttl(
            "lease_seconds",
            lease_seconds.unwrap_or(DEFAULT_LEASE_SECONDS),
        )?;
        self.call(|reply| Op::ExtendLease {
            id,
            lease_token,
            lease_ms,
            reply,
        })
        .await
    }

    /// The first page of tasks (see [`Coordinator::list_tasks_page`]).
    pub async fn list_tasks(&self, queue: Option<String>) -> CoreResult<Vec<TaskView>> {
        Ok(self.list_tasks_page(queue, Page::default()).await?.items)
    }

    pub async fn list_tasks_page(
        &self,
        queue: Option<String>,
        page: Page,
    ) -> CoreResult<Paged<TaskView>> {
        if let Some(q) = &queue {
            check_name("queue", q)?;
        }
        if page
            .after
            .as_deref()
            .is_some_and(|c| c.parse::<i64>().is_err())
        {
            return Err(CoreError::invalid(
                "cursor",
                "must be the next_cursor of a previous list_tasks answer (a task id)",
            ));
        }
        self.call(|reply| Op::ListTasks { queue, page, reply })
            .await
    }

    pub async fn status(&self) -> CoreResult<StatusView> {
        self.call(|reply| Op::Status { reply }).await
    }
}

/// What a note or task row adds to the state: its name, value and author.
fn row_bytes(name: &str, value: &str, author: &Option<String>) -> u64 {
    (name.len() + value.len() + author.as_ref().map_or(0, String::len)) as u64
}

fn check_proof(proof: &HolderProof) -> CoreResult<()> {
    match proof {
        HolderProof::Token(t) => check_name("lock_token", t),
        HolderProof::Agent(a) => check_name("agent_id", a),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::MonotonicClock;
    use crate::store::sqlite::SqliteStore;

    fn start() -> (Coordinator, EngineThread) {
        let store = SqliteStore::open_in_memory().unwrap();
        Coordinator::start(Box::new(store), Arc::new(MonotonicClock::new())).unwrap()
    }

    /// A grant that reached a parked call whose caller left before reading it is released,
    /// and the lock goes on to the next in line.
    #[tokio::test]
    async fn an_unread_grant_is_released() {
        let (core, _engine) = start();
        let held = core
            .lock_resource("x".into(), "a".into(), None, None, None, None)
            .await
            .unwrap();
        let LockOutcome::Granted { lock_token, .. } = held else {
            panic!("expected a grant")
        };
        let mut b =
            Box::pin(core.lock_resource("x".into(), "b".into(), None, Some(30), None, None));
        assert!(futures::poll!(b.as_mut()).is_pending(), "b parks");
        let c = tokio::spawn({
            let core = core.clone();
            async move {
                core.lock_resource("x".into(), "c".into(), None, Some(30), None, None)
                    .await
            }
        });
        // Wait until c stands in line behind b.
        while core.list_locks().await.unwrap()[0].waiters < 2 {
            tokio::task::yield_now().await;
        }
        let released = core
            .unlock_resource("x".into(), HolderProof::Token(lock_token))
            .await
            .unwrap();
        assert!(released.released);
        // b has been answered with the grant but never reads it: it goes away.
        drop(b);
        let granted_c = c.await.unwrap().unwrap();
        assert!(matches!(granted_c, LockOutcome::Granted { fence: 3, .. }));
        let locks = core.list_locks().await.unwrap();
        assert_eq!(locks[0].agent_id, "c");
    }
}
