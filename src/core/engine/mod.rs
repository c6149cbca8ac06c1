//! The engine: one thread that owns the store, the wait queues and the deadline schedule.
//!
//! Every operation arrives as a [`Command`] on a channel. The thread takes whatever is waiting
//! (up to [`MAX_BATCH`]), applies it all inside one transaction, fires every deadline that is due,
//! commits once (one fsync), and only then answers the callers of the batch: group commit. Under
//! load, many callers share one fsync; alone, a caller pays one.
//!
//! Parked callers (a blocked `lock_resource`, `wait_for_event`, `claim_next_task`) are kept here
//! as the sending half of their reply channel. A release hands the lock to the head of the line
//! *in the releasing transaction*, so there is no window in which a newcomer can overtake, and the
//! waiter's answer leaves as soon as that transaction is on disk.
//!
//! The engine is split by capability. Each capability owns its own in-memory state and works
//! through a [`Tx`], the transaction context of one step (the store, the outbox, the deadline
//! schedule, the clock), never through the whole engine:
//! - [`locks`]: lock rows, the lines of waiting tickets, wake tokens;
//! - [`notes`]: notes and counters (no memory of their own: the rows are everything);
//! - [`presence`]: agents, and what a lapse releases (locks, leases, kept places);
//! - [`events`]: generations and parked event waiters;
//! - [`tasks`]: the task queue, leases and parked claimers;
//! - [`status`]: the snapshot behind `airlock status` and the progress of a parked call;
//! - [`deadlines`]: the heap of instants at which something must be re-checked.
//!
//! This file is the loop: batching, the outbox, `process` (one transaction per batch) and the
//! dispatch of each [`Request`] to its capability.
//!
//! Invariants:
//! - Nothing is answered before the commit that made it true is durable: right after the commit,
//!   or, with pipelined commits ([`pipeline`]), from the syncing thread after the fsync that
//!   covers the batch, while the engine goes on with the next one. If the commit fails, every
//!   answer of the batch becomes a storage error and nothing is acknowledged; what the batch
//!   handled (due deadlines, undelivered grants) is handled again by a later one.
//! - Each step of a batch (a command, a grant to release, a due deadline) runs in a savepoint of
//!   its own, opened by the step's first store call: a storage error rolls back that step alone,
//!   and the answers it made become the error. A step that never reaches the store opens none.
//!   A batch that could not begin sends the store nothing at all.
//! - A lock is granted only to the head ticket of each of its names' queues; a caller who went
//!   away is skipped, and a grant whose answer could not be delivered is released at once.
//! - An expired row is treated as absent by every reader, so correctness never waits on a
//!   deadline firing; the deadlines make releases and wake-ups happen at the instant.

mod deadlines;
mod events;
mod history;
mod lock_rows;
mod locks;
mod notes;
mod pipeline;
mod presence;
mod status;
mod tasks;
#[cfg(test)]
mod tests;
mod tx;

use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;

use super::request::{Request, Response};
use super::types::*;
use crate::clock::{Clock, Millis};
use crate::core::history::Retention;
use crate::store::{Store, TaskState};
use deadlines::{Deadline, Deadlines};
use events::Events;
use locks::Locks;
pub use pipeline::{exit_on_sync_failure, OnSyncFailure, EXIT_SYNC_FAILED};
use pipeline::{Pipeline, Settling};
use tasks::Tasks;
use tx::{storage, Outbox, StepSavepoint, Tx};

/// Most commands applied in one transaction.
pub const MAX_BATCH: usize = 1024;
/// Environment knob for benchmarks only (see BENCHMARKS.md): caps the batch, so
/// `AIRLOCK_MAX_BATCH=1` turns group commit off and every operation pays its own fsync.
pub const MAX_BATCH_ENV: &str = "AIRLOCK_MAX_BATCH";

/// The batch cap: [`MAX_BATCH`], or less when [`MAX_BATCH_ENV`] says so.
fn max_batch_from_env() -> usize {
    std::env::var(MAX_BATCH_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .map_or(MAX_BATCH, |n| n.clamp(1, MAX_BATCH))
}

/// Where one call's answer goes, typed by what its handler answers: the answer travels to the
/// caller as its [`Response`] variant (`wrap`). Status probes of parked calls, which are no
/// tool, answer in their own type (`O`).
pub struct Reply<T, O = Response> {
    tx: oneshot::Sender<CoreResult<O>>,
    wrap: Box<dyn FnOnce(T) -> O + Send>,
    /// The row of the forwarded call this answers (see [`Destination`]).
    forwarded: Option<i64>,
}

/// Where an answer goes: its channel, and for a call another daemon forwarded, the id of the
/// call's row in the forwarding table. A grant answered to a forwarded call is written beside
/// that row in the grant's own transaction, so that if this daemon dies before the answer is
/// delivered, the next coordinator knows what to give back (see `cluster::coordinate`).
pub struct Destination<O> {
    pub tx: oneshot::Sender<CoreResult<O>>,
    pub forwarded: Option<i64>,
}

impl<O> From<oneshot::Sender<CoreResult<O>>> for Destination<O> {
    fn from(tx: oneshot::Sender<CoreResult<O>>) -> Self {
        Destination {
            tx,
            forwarded: None,
        }
    }
}

impl<T, O> Reply<T, O> {
    pub fn new(to: impl Into<Destination<O>>, wrap: impl FnOnce(T) -> O + Send + 'static) -> Self {
        let to = to.into();
        Reply {
            tx: to.tx,
            wrap: Box::new(wrap),
            forwarded: to.forwarded,
        }
    }

    /// Sends the answer; an error if the caller is gone.
    fn send(self, value: CoreResult<T>) -> Result<(), ()> {
        self.tx.send(value.map(self.wrap)).map_err(|_| ())
    }

    /// The caller went away.
    fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

/// The answer to a status probe of a parked call.
pub type ProgressReply = Reply<Option<WaitProgress>, Option<WaitProgress>>;

/// How a parked call is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaitProgress {
    /// 1 = next in line. `None` for waits that have no line (events).
    pub queue_position: Option<usize>,
    pub held_by: Option<String>,
}

pub enum Command {
    /// One request, already checked ([`Request::check`]), and where its answer goes. `call`
    /// names a call that may park (for [`Command::Cancel`] and progress probes).
    Call {
        call: u64,
        request: Request,
        reply: Destination<Response>,
    },
    /// Where parked call `call` stands, for progress notifications.
    WaitStatus { call: u64, reply: ProgressReply },
    /// The caller of a parked call went away: leave the line now.
    Cancel(u64),
    /// A parked call was answered with a grant but its caller went away before reading it.
    Orphaned(Orphan),
    /// Answer every parked call with its timeout answer, and park nobody from now on.
    Drain(oneshot::Sender<()>),
}

/// What to undo if an answer carrying a grant could not be delivered (its caller went away),
/// or was delivered but never read (its caller went away right after). Serializable: a daemon
/// that ran a call for another daemon keeps it beside the answer until the answer is read.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Orphan {
    /// New holds, each `(name, lock_token, expires_at)` as its grant wrote it. One is released
    /// only while it still expires then: a hold refreshed since (its agent took the lock again,
    /// or renewed it, and was told it holds it, with this same token) is the agent's again, and
    /// stays.
    Holds(Vec<(String, String, Millis)>),
    /// `(name, lock_token)`, released by token alone: what a daemon of an older version wrote
    /// beside a forwarded call. Never made any more.
    Locks(Vec<(String, String)>),
    Lease {
        id: i64,
        lease_token: String,
    },
}

/// A fresh unguessable token: 128 random bits, hex, with a prefix that says what it is.
pub fn new_token(prefix: &str) -> String {
    let bytes: [u8; 16] = rand::random();
    format!("{prefix}_{}", hex::encode(bytes))
}

fn tokens_equal(a: &str, b: &str) -> bool {
    secrets_equal(a.as_bytes(), b.as_bytes())
}

// ------------------------------------------------------------ the engine

/// How long the engine waits before it tries again after a storage failure: a batch that could
/// not begin or commit, an undelivered grant it could not release, a line it could not move.
/// Commands that arrive meanwhile are tried at once.
const RETRY_MS: Millis = 1000;

pub struct Engine {
    store: Box<dyn Store>,
    clock: Arc<dyn Clock>,
    deadlines: Deadlines,
    outbox: Outbox,
    locks: Locks,
    events: Events,
    tasks: Tasks,
    /// Grants nobody received, released at the start of the next batch that can commit.
    orphans: Vec<Orphan>,
    /// Set when the batch's transaction cannot commit (its `BEGIN`, a savepoint or the
    /// transaction itself failed): every later step of the batch is refused without reaching
    /// the store, and the batch is rolled back.
    batch_error: Option<CoreError>,
    /// The first storage error of the current step (see [`Tx::failed`]).
    step_error: Option<CoreError>,
    /// The current step's savepoint (opened at its first store call, see [`StepSavepoint`]).
    savepoint: StepSavepoint,
    /// Deadlines handled in this batch, with their instants: armed again if the batch does not
    /// commit, so a rollback never loses an expiry, a lapse or a window's end.
    fired: Vec<(Millis, Deadline)>,
    /// Something failed for a storage reason in the last batch: wake no earlier than this for
    /// orphans, unmoved lines or due deadlines (commands are still taken at once).
    retry_at: Option<Millis>,
    draining: bool,
    /// Most commands per transaction (group commit off when 1).
    max_batch: usize,
    /// Transactions committed and operations applied, logged when the engine stops so the
    /// benchmark can report operations per commit.
    commits: u64,
    operations: u64,
    /// Bumped whenever a step may have changed what `status` shows (a write, a deadline, a
    /// caller leaving a line), so live views (`GET /events/stream`) re-read only then. Bumped
    /// before the commit: a reader's status request is a later command, answered after it.
    changes: tokio::sync::watch::Sender<u64>,
    /// Commit times and operations per commit, for `GET /metrics`.
    metrics: Arc<crate::core::metrics::EngineMetrics>,
    /// `operations` at the last commit, so each commit knows how many it carried.
    operations_at_commit: u64,
    /// The audit history's retention (see [`history`]).
    history: history::HistoryLog,
    /// Pipelined commit ([`Engine::pipeline`]): answers leave from the syncing thread, after
    /// the fsync that covers their batch. `None`: each commit is durable when it returns, and
    /// the engine answers right after it.
    pipeline: Option<Pipeline>,
    /// The last batch's answers, until [`Engine::settle_batch`] sends or hands them over.
    settling: Option<Settling>,
}

/// A [`Tx`] and the capabilities, borrowed apart from one engine.
struct Parts<'a> {
    tx: Tx<'a>,
    locks: &'a mut Locks,
    events: &'a mut Events,
    tasks: &'a mut Tasks,
}

impl Engine {
    /// Builds the engine and rebuilds the deadline schedule from the store.
    pub fn new(mut store: Box<dyn Store>, clock: Arc<dyn Clock>) -> CoreResult<Engine> {
        let expiries = store.expiries().map_err(storage)?;
        let mut deadlines = Deadlines::default();
        for (name, at) in expiries.locks {
            deadlines.schedule(at, Deadline::LockExpiry(name));
        }
        for (agent, at) in expiries.agents {
            deadlines.schedule(at, Deadline::AgentLapse(agent));
        }
        for (id, at) in expiries.leases {
            deadlines.schedule(at, Deadline::LeaseExpiry(id));
        }
        for (id, at) in expiries.delayed {
            deadlines.schedule(at, Deadline::TaskReady(id));
        }
        deadlines.schedule(clock.now_ms(), Deadline::Housekeeping);
        Ok(Engine {
            store,
            clock,
            deadlines,
            outbox: Outbox::default(),
            locks: Locks::default(),
            events: Events::default(),
            tasks: Tasks::default(),
            orphans: Vec::new(),
            batch_error: None,
            step_error: None,
            savepoint: StepSavepoint::Off,
            fired: Vec::new(),
            retry_at: None,
            draining: false,
            max_batch: max_batch_from_env(),
            commits: 0,
            operations: 0,
            changes: tokio::sync::watch::Sender::new(0),
            metrics: Default::default(),
            operations_at_commit: 0,
            // The daemon refuses a bad setting before it starts (see `daemon`).
            history: history::HistoryLog::new(Retention::from_env().unwrap_or_default()),
            pipeline: None,
            settling: None,
        })
    }

    /// Keeps the audit history within `retention` (the default unless the daemon says otherwise).
    pub fn set_history_retention(&mut self, retention: Retention) {
        self.history.retention = retention;
    }

    /// Hears of every step that may have changed what `status` shows (see `changes`).
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// What this engine records for `GET /metrics`.
    pub fn metrics(&self) -> Arc<crate::core::metrics::EngineMetrics> {
        self.metrics.clone()
    }

    /// Commits the batch's transaction, timing it (its fsync included) for the metrics.
    fn timed_commit(&mut self) -> crate::store::StoreResult<()> {
        let started = std::time::Instant::now();
        let r = self.store.commit();
        let carried = self.operations - self.operations_at_commit;
        self.operations_at_commit = self.operations;
        self.metrics
            .record_commit(started.elapsed().as_secs_f64(), carried);
        r
    }

    /// Tells live views that the state may have changed.
    fn note_change(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    fn now(&self) -> Millis {
        self.clock.now_ms()
    }

    fn parts(&mut self) -> Parts<'_> {
        Parts {
            tx: Tx {
                store: &mut *self.store,
                clock: &*self.clock,
                outbox: &mut self.outbox,
                deadlines: &mut self.deadlines,
                draining: self.draining,
                failed: &mut self.step_error,
                savepoint: &mut self.savepoint,
                history: &mut self.history,
            },
            locks: &mut self.locks,
            events: &mut self.events,
            tasks: &mut self.tasks,
        }
    }

    /// Runs until every sender of the channel is gone.
    pub fn run(mut self, rx: Receiver<Command>) {
        // One buffer for every batch: allocated once, at the size of the largest batch seen, so
        // the engine thread does not ask the allocator for (and give back) up to
        // `max_batch` commands' worth of memory per batch.
        let mut batch = Vec::new();
        // A command taken to see whether one was waiting (pipelined commits only).
        let mut carried = None;
        loop {
            self.collect_orphans();
            // While answers are in flight on the syncing thread, look again within `POLL`: they
            // may come back as grants to release. A wake for that alone is no batch.
            let mut wake = self.next_wake_in();
            let polling = self.pipeline.as_ref().is_some_and(Pipeline::busy)
                && wake.is_none_or(|d| d > pipeline::POLL);
            if polling {
                wake = Some(pipeline::POLL);
            }
            let first = match wake {
                _ if carried.is_some() => carried.take(),
                Some(d) => match rx.recv_timeout(d) {
                    Ok(c) => Some(c),
                    Err(RecvTimeoutError::Timeout) if polling && !self.work_due() => continue,
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => break,
                },
                None => match rx.recv() {
                    Ok(c) => Some(c),
                    Err(_) => break,
                },
            };
            batch.extend(first);
            while batch.len() < self.max_batch {
                match rx.try_recv() {
                    Ok(c) => batch.push(c),
                    Err(_) => break,
                }
            }
            self.process(batch.drain(..));
            if self.pipeline.is_some() {
                // With a command waiting, the syncing thread answers this batch after its fsync
                // while the engine takes the next; without, the engine syncs and answers it.
                let next = rx.try_recv();
                self.settle_batch(next.is_ok());
                carried = next.ok();
            }
        }
        self.flush();
        tracing::info!(
            commits = self.commits,
            operations = self.operations,
            max_batch = self.max_batch,
            "engine stopped"
        );
    }

    /// How long to wait for a command before the engine has work of its own: the next
    /// deadline, or at once for grants to release and lines to move; never before `retry_at`.
    fn next_wake_in(&self) -> Option<Duration> {
        let now = self.now();
        let mut wake = self.work_due_at();
        if let Some(retry) = self.retry_at {
            wake = wake.map(|w| w.max(retry));
        }
        wake.map(|at| Duration::from_millis((at - now).max(0) as u64))
    }

    /// When the engine has work of its own, `retry_at` aside.
    fn work_due_at(&self) -> Option<Millis> {
        let pending = !self.orphans.is_empty() || self.locks.has_work() || self.tasks.has_work();
        if pending {
            return Some(self.now());
        }
        self.deadlines.next_at()
    }

    /// Whether a wake without a command has work to do now.
    fn work_due(&mut self) -> bool {
        self.collect_orphans();
        self.next_wake_in() == Some(Duration::ZERO)
    }

    /// Applies one batch in one transaction and answers its callers after the commit.
    ///
    /// Each command (and each undelivered grant to release, and each due deadline) is one
    /// *step* inside its own savepoint: a step that meets a storage error is rolled back to its
    /// savepoint and its answers become that error, and the rest of the batch goes on. A
    /// failure of the transaction itself (`BEGIN`, a savepoint, the commit) fails the whole
    /// batch: nothing of it is acknowledged, the deadlines it handled are armed again, and its
    /// undelivered grants are kept to release later.
    pub fn process(&mut self, batch: impl IntoIterator<Item = Command>) {
        self.batch_error = None;
        let mut retry = false;
        if let Err(e) = self.store.begin() {
            // No transaction: nothing may reach the store (on SQLite every statement would
            // commit on its own). Operations are answered with the error; the rest waits.
            self.batch_error = Some(storage(e));
        }
        let mut drained = Vec::new();
        self.collect_orphans();
        let orphans = if self.batch_error.is_none() {
            std::mem::take(&mut self.orphans)
        } else {
            Vec::new()
        };
        // Undelivered grants released in this batch, and those whose release failed.
        let mut taken = Vec::new();
        let mut kept = Vec::new();
        for orphan in orphans {
            if !self.step(|e| e.release_orphan(orphan.clone())) {
                kept.push(orphan.clone());
            }
            taken.push(orphan);
        }
        // Lines and queues a failed step could not move.
        if self.locks.has_work() || self.tasks.has_work() {
            retry |= !self.step(|_| {});
        }
        for cmd in batch {
            match cmd {
                Command::Call {
                    call,
                    request,
                    reply,
                } => {
                    self.operations += 1;
                    self.step(|e| e.apply(call, request, reply));
                }
                Command::WaitStatus { call, reply } => {
                    self.step(|e| e.wait_status(call, reply));
                }
                Command::Cancel(call) => {
                    self.step(|e| e.cancel(call));
                }
                Command::Orphaned(orphan) => {
                    if !self.step(|e| e.release_orphan(orphan.clone())) {
                        kept.push(orphan.clone());
                    }
                    taken.push(orphan);
                }
                Command::Drain(done) => {
                    self.draining = true;
                    self.step(|e| e.answer_all_parked());
                    drained.push(done);
                }
            }
        }
        if self.batch_error.is_none() {
            retry |= !self.fire_due();
        }
        let failed = match self.batch_error.take() {
            Some(e) => Some(e),
            None => self.timed_commit().err().map(storage),
        };
        if let Some(e) = &failed {
            tracing::error!(error = %e, "a batch failed and was rolled back");
            self.store.rollback();
            // Nothing of the batch happened: what it handled must happen again.
            for (at, what) in std::mem::take(&mut self.fired) {
                self.deadlines.schedule(at, what);
            }
            // Undelivered grants it released are held again: release them later. Grants it
            // made are undone: their lines and queues must be looked at again.
            kept = std::mem::take(&mut taken);
            self.locks.mark_all();
            self.tasks.mark_all();
            retry = true;
        } else {
            self.commits += 1;
            self.fired.clear();
        }
        retry |= !kept.is_empty() || self.locks.has_work() || self.tasks.has_work();
        self.orphans.append(&mut kept);
        self.retry_at = retry.then(|| self.now() + RETRY_MS);
        if self.pipeline.is_some() {
            return self.hold_answers(failed, drained);
        }
        // The outbox keeps its buffer for the next batch (delivering adds nothing to it).
        let mut answers = std::mem::take(&mut self.outbox.answers);
        pipeline::deliver(answers.drain(..), failed.as_ref(), &mut self.orphans);
        self.outbox.answers = answers;
        for done in drained {
            let _ = done.send(());
        }
    }

    /// Runs one step of the batch in its own savepoint, then moves the lines and queues it
    /// unblocked. On a storage error the step is rolled back and its answers become the error.
    /// True if the step's changes stand (for now: the batch may still fail to commit).
    ///
    /// The savepoint is opened by the step's first store call ([`StepSavepoint`]): a step that
    /// never reaches the store has nothing to undo there and opens none.
    fn step(&mut self, f: impl FnOnce(&mut Engine)) -> bool {
        self.step_error = self.batch_error.clone();
        self.savepoint = if self.step_error.is_none() {
            StepSavepoint::Pending
        } else {
            StepSavepoint::Off
        };
        let mark = self.outbox.len();
        f(self);
        if self.step_error.is_none() {
            self.settle();
        }
        let savepoint = std::mem::take(&mut self.savepoint);
        if let StepSavepoint::Failed(e) = &savepoint {
            self.fail_batch(e.clone());
        }
        let in_savepoint = matches!(savepoint, StepSavepoint::Open);
        let Some(error) = self.step_error.take() else {
            if in_savepoint {
                if let Err(e) = self.store.release_savepoint() {
                    self.fail_batch(storage(e));
                    return false;
                }
            }
            return true;
        };
        self.outbox.fail_since(mark, &error);
        self.locks.mark_all();
        self.tasks.mark_all();
        if in_savepoint {
            tracing::warn!(error = %error, "an operation failed and was rolled back");
            self.store.rollback_to_savepoint();
            if !self.store.transaction_ok() {
                self.fail_batch(error);
            }
        }
        false
    }

    /// The batch's transaction cannot commit: refuse the rest of the batch.
    fn fail_batch(&mut self, error: CoreError) {
        if self.batch_error.is_none() {
            self.batch_error = Some(error.clone());
        }
        self.step_error.get_or_insert(error);
    }

    /// Hands one request to its capability. Each handler answers through the outbox.
    fn apply(&mut self, call: u64, request: Request, reply: Destination<Response>) {
        if !request.tool().read_only() {
            self.note_change();
        }
        let counts = EngineCounts {
            commits: self.commits,
            operations: self.operations,
        };
        let Parts {
            mut tx,
            locks,
            events,
            tasks,
        } = self.parts();
        let tx = &mut tx;
        // Checked requests carry every default (see `Request::check`).
        let ms = |seconds: Option<i64>| seconds.unwrap_or_default() * 1000;
        match request {
            Request::SetNote(r) => notes::set_note(
                tx,
                r.key,
                r.value,
                r.author,
                r.ttl_seconds.map(|s| s * 1000),
                Reply::new(reply, Response::SetNote),
            ),
            Request::GetNote(r) => {
                notes::get_note(tx, &r.key, Reply::new(reply, Response::GetNote))
            }
            Request::ListNotes(r) => {
                let values = r.values.unwrap_or(true);
                let (asked, without) = (r.page.asked(), (!values).then_some("value"));
                let reply = Reply::new(reply, move |p| {
                    Response::ListNotes(Listed::of(p, asked, without))
                });
                match r.page.page(values) {
                    Ok(page) => notes::list_notes(tx, &page, reply),
                    Err(e) => tx.respond(reply, Err(e)),
                }
            }
            Request::DeleteNote(r) => {
                notes::delete_note(tx, &r.key, Reply::new(reply, Response::DeleteNote))
            }
            Request::SetNoteIf(r) => notes::set_note_if(
                tx,
                r.key,
                r.expected_value,
                r.new_value,
                r.author,
                r.ttl_seconds.map(|s| s * 1000),
                Reply::new(reply, Response::SetNoteIf),
            ),
            Request::IncrementCounter(r) => notes::increment_counter(
                tx,
                &r.name,
                r.by.unwrap_or(1),
                Reply::new(reply, Response::IncrementCounter),
            ),
            Request::LockResource(r) => locks.lock_resource(
                tx,
                call,
                r.name.clone(),
                r.mode(),
                r.agent_id,
                ms(r.ttl_seconds),
                ms(r.wait_seconds),
                r.wake_token,
                Reply::new(reply, Response::LockResource),
            ),
            Request::LockResources(r) => locks.lock_resources(
                tx,
                call,
                r.names.iter().map(|n| n.name.clone()).collect(),
                r.names.iter().map(|n| n.mode()).collect(),
                r.agent_id,
                ms(r.ttl_seconds),
                ms(r.wait_seconds),
                Reply::new(reply, Response::LockResources),
            ),
            Request::UnlockResource(r) => {
                let reply = Reply::new(reply, Response::UnlockResource);
                match r.holder.proof() {
                    Ok(proof) => locks.unlock_resource(tx, &r.name, &proof, reply),
                    Err(e) => tx.respond(reply, Err(e)),
                }
            }
            Request::RenewLock(r) => {
                let reply = Reply::new(reply, Response::RenewLock);
                match r.holder.proof() {
                    Ok(proof) => locks.renew_lock(tx, &r.name, &proof, ms(r.ttl_seconds), reply),
                    Err(e) => tx.respond(reply, Err(e)),
                }
            }
            Request::ListLocks(r) => {
                let asked = r.asked();
                let reply = Reply::new(reply, move |p| {
                    Response::ListLocks(Listed::of(p, asked, None))
                });
                match r.page(true) {
                    Ok(page) => locks.list_locks(tx, &page, reply),
                    Err(e) => tx.respond(reply, Err(e)),
                }
            }
            Request::LeaveLine(r) => locks.leave_line(
                tx,
                &r.name,
                &r.wake_token,
                Reply::new(reply, Response::LeaveLine),
            ),
            Request::RegisterAgent(r) => presence::register_agent(
                tx,
                r.agent_id,
                ms(r.ttl_seconds),
                Reply::new(reply, Response::RegisterAgent),
            ),
            Request::UnregisterAgent(r) => presence::unregister_agent(
                tx,
                locks,
                tasks,
                &r.agent_id,
                Reply::new(reply, Response::UnregisterAgent),
            ),
            Request::ListAgents(r) => {
                let asked = r.asked();
                let reply = Reply::new(reply, move |p| {
                    Response::ListAgents(Listed::of(p, asked, None))
                });
                match r.page(true) {
                    Ok(page) => presence::list_agents(tx, &page, reply),
                    Err(e) => tx.respond(reply, Err(e)),
                }
            }
            Request::SignalEvent(r) => {
                events.signal_event(tx, r.name, Reply::new(reply, Response::SignalEvent))
            }
            Request::WaitForEvent(r) => events.wait_for_event(
                tx,
                call,
                r.name,
                r.last_seen_generation.unwrap_or(0),
                ms(r.wait_seconds),
                Reply::new(reply, Response::WaitForEvent),
            ),
            Request::ClearEvent(r) => {
                events.clear_event(tx, r.name, Reply::new(reply, Response::ClearEvent))
            }
            Request::PushTask(r) => tasks.push_task(tx, r, Reply::new(reply, Response::PushTask)),
            Request::ClaimNextTask(r) => tasks.claim_next_task(
                tx,
                call,
                r.queue,
                r.agent_id,
                ms(r.lease_seconds),
                ms(r.wait_seconds),
                Reply::new(reply, Response::ClaimNextTask),
            ),
            Request::CompleteTask(r) => tasks.complete_task(
                tx,
                r.id,
                &r.lease_token,
                r.result,
                Reply::new(reply, Response::CompleteTask),
            ),
            Request::FailTask(r) => tasks.fail_task(
                tx,
                r.id,
                &r.lease_token,
                r.requeue.unwrap_or(true),
                r.error,
                Reply::new(reply, Response::FailTask),
            ),
            Request::ExtendLease(r) => tasks.extend_lease(
                tx,
                r.id,
                &r.lease_token,
                ms(r.lease_seconds),
                Reply::new(reply, Response::ExtendLease),
            ),
            Request::ListTasks(r) => {
                let asked = r.page.asked();
                let reply = Reply::new(reply, move |p| {
                    Response::ListTasks(Listed::of(p, asked, None))
                });
                match r.page.page(true) {
                    Ok(page) => tasks::list_tasks(
                        tx,
                        r.queue.as_deref(),
                        r.state.as_deref().and_then(TaskState::parse),
                        &page,
                        reply,
                    ),
                    Err(e) => tx.respond(reply, Err(e)),
                }
            }
            Request::GetTask(r) => tasks::get_task(tx, r.id, Reply::new(reply, Response::GetTask)),
            Request::RetryTask(r) => {
                tasks.retry_task(tx, r.id, Reply::new(reply, Response::RetryTask))
            }
            Request::ListQueues => tasks.list_queues(tx, Reply::new(reply, Response::ListQueues)),
            Request::ListEvents => events.list_events(tx, Reply::new(reply, Response::ListEvents)),
            Request::GetHistory(r) => {
                history::get_history(tx, r, Reply::new(reply, Response::GetHistory))
            }
            Request::Status(page) => status::status(
                tx,
                locks,
                events,
                tasks,
                counts,
                &page,
                Reply::new(reply, Response::Status),
            ),
        }
    }

    /// Answers a progress probe of parked call `call`.
    fn wait_status(&mut self, call: u64, reply: ProgressReply) {
        let Parts {
            mut tx,
            locks,
            events,
            tasks,
        } = self.parts();
        status::wait_status(&mut tx, locks, events, tasks, call, reply)
    }

    /// Moves every line and queue that the step may have unblocked.
    fn settle(&mut self) {
        let Parts {
            mut tx,
            locks,
            tasks,
            ..
        } = self.parts();
        locks.pump_all(&mut tx);
        tasks.feed_all(&mut tx);
    }

    /// Releases a grant nobody received (or read): its locks, or its lease.
    fn release_orphan(&mut self, orphan: Orphan) {
        self.note_change();
        let Parts {
            mut tx,
            locks,
            tasks,
            ..
        } = self.parts();
        let r = match orphan {
            Orphan::Holds(grants) => locks.release_orphan(
                &mut tx,
                grants
                    .into_iter()
                    .map(|(n, t, e)| (n, t, Some(e)))
                    .collect(),
            ),
            Orphan::Locks(grants) => locks.release_orphan(
                &mut tx,
                grants.into_iter().map(|(n, t)| (n, t, None)).collect(),
            ),
            Orphan::Lease { id, lease_token } => tasks.requeue_if_leased(&mut tx, id, &lease_token),
        };
        if let Err(e) = r {
            tracing::error!(error = %e, "could not release an undelivered grant; will retry");
        }
    }

    /// The caller of a parked call went away.
    fn cancel(&mut self, call: u64) {
        self.note_change();
        if self.locks.cancel(call) || self.events.cancel(call) {
            return;
        }
        self.tasks.cancel(call);
    }

    /// On drain: every parked call gets its timeout answer now.
    fn answer_all_parked(&mut self) {
        let Parts {
            mut tx,
            locks,
            events,
            tasks,
        } = self.parts();
        locks.end_all_windows(&mut tx);
        events.end_all_windows(&mut tx);
        tasks.end_all_windows(&mut tx);
    }
}
