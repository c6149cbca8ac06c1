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
//! Invariants:
//! - Nothing is answered before the commit that made it true. If the commit fails, every answer
//!   of the batch becomes a storage error and nothing is acknowledged.
//! - A lock is granted only to the head ticket of each of its names' queues; a caller who went
//!   away is skipped, and a grant whose answer could not be delivered is released at once.
//! - An expired row is treated as absent by every reader, so correctness never waits on a
//!   deadline firing; the deadlines make releases and wake-ups happen at the instant.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap, VecDeque};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;

use super::types::*;
use crate::clock::{seconds_left, Clock, Millis};
use crate::store::{AgentRow, EventRow, LockRow, NoteRow, Store, StoreError, TaskRow, TaskState};

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
/// How often expired notes and old finished tasks are deleted from disk. Readers already treat
/// them as gone; this only reclaims space.
const HOUSEKEEPING_MS: Millis = 60_000;

pub type Reply<T> = oneshot::Sender<CoreResult<T>>;

/// One operation and the channel its answer goes back on.
pub enum Op {
    SetNote {
        key: String,
        value: String,
        author: Option<String>,
        ttl_ms: Option<Millis>,
        reply: Reply<Saved>,
    },
    GetNote {
        key: String,
        reply: Reply<GetNoteResult>,
    },
    ListNotes {
        page: Page,
        reply: Reply<Paged<NoteView>>,
    },
    DeleteNote {
        key: String,
        reply: Reply<Deleted>,
    },
    SetNoteIf {
        key: String,
        expected: String,
        new_value: String,
        author: Option<String>,
        ttl_ms: Option<Millis>,
        reply: Reply<Swapped>,
    },
    IncrementCounter {
        name: String,
        by: i64,
        reply: Reply<CounterValue>,
    },
    LockResource {
        call: u64,
        name: String,
        agent_id: String,
        ttl_ms: Millis,
        wait_ms: Millis,
        wake_token: Option<String>,
        reply: Reply<LockOutcome>,
    },
    LockResources {
        call: u64,
        names: Vec<String>,
        agent_id: String,
        ttl_ms: Millis,
        wait_ms: Millis,
        reply: Reply<LockSetOutcome>,
    },
    UnlockResource {
        name: String,
        proof: HolderProof,
        reply: Reply<Released>,
    },
    RenewLock {
        name: String,
        proof: HolderProof,
        ttl_ms: Millis,
        reply: Reply<Renewed>,
    },
    ListLocks {
        page: Page,
        reply: Reply<Paged<LockView>>,
    },
    RegisterAgent {
        agent_id: String,
        ttl_ms: Millis,
        reply: Reply<Registered>,
    },
    UnregisterAgent {
        agent_id: String,
        reply: Reply<Unregistered>,
    },
    ListAgents {
        page: Page,
        reply: Reply<Paged<AgentView>>,
    },
    SignalEvent {
        name: String,
        reply: Reply<Signaled>,
    },
    WaitForEvent {
        call: u64,
        name: String,
        last_seen: i64,
        wait_ms: Millis,
        reply: Reply<EventWaitOutcome>,
    },
    ClearEvent {
        name: String,
        reply: Reply<Cleared>,
    },
    PushTask {
        queue: String,
        payload: String,
        author: Option<String>,
        priority: i64,
        reply: Reply<Pushed>,
    },
    ClaimNextTask {
        call: u64,
        queue: String,
        agent_id: String,
        lease_ms: Millis,
        wait_ms: Millis,
        reply: Reply<ClaimOutcome>,
    },
    CompleteTask {
        id: i64,
        lease_token: String,
        reply: Reply<Completed>,
    },
    FailTask {
        id: i64,
        lease_token: String,
        requeue: bool,
        reply: Reply<Failed>,
    },
    ExtendLease {
        id: i64,
        lease_token: String,
        lease_ms: Millis,
        reply: Reply<Extended>,
    },
    ListTasks {
        queue: Option<String>,
        page: Page,
        reply: Reply<Paged<TaskView>>,
    },
    Status {
        reply: Reply<StatusView>,
    },
    /// Where a parked call stands, for progress notifications.
    WaitStatus {
        call: u64,
        reply: Reply<Option<WaitProgress>>,
    },
}

/// How a parked call is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaitProgress {
    /// 1 = next in line. `None` for waits that have no line (events).
    pub queue_position: Option<usize>,
    pub held_by: Option<String>,
}

pub enum Command {
    Op(Op),
    /// The caller of a parked call went away: leave the line now.
    Cancel(u64),
    /// A parked call was answered with a grant but its caller went away before reading it.
    Orphaned(Orphan),
    /// Answer every parked call with its timeout answer, and park nobody from now on.
    Drain(oneshot::Sender<()>),
}

/// Something to run at a moment. Stale entries are harmless: each is re-checked when it fires.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Deadline {
    LockExpiry(String),
    AgentLapse(String),
    LeaseExpiry(i64),
    TicketWindow(u64),
    TicketGrace(u64),
    EventWindow(u64),
    ClaimWindow(u64),
    Housekeeping,
}

/// The reply channel of a parked lock call.
enum LockWaiter {
    Single(Reply<LockOutcome>),
    Set(Reply<LockSetOutcome>),
}

impl LockWaiter {
    fn is_closed(&self) -> bool {
        match self {
            LockWaiter::Single(r) => r.is_closed(),
            LockWaiter::Set(r) => r.is_closed(),
        }
    }
}

enum TicketState {
    /// A call is waiting on it now.
    Parked {
        call: u64,
        waiter: LockWaiter,
        window_end: Millis,
    },
    /// Its call timed out and was given the wake token; the place is kept until `until`.
    Grace { until: Millis },
}

/// A place in line for one lock (or, for `lock_resources`, for a set of locks at once).
struct Ticket {
    wake_token: String,
    agent_id: String,
    /// Sorted, distinct.
    names: Vec<String>,
    ttl_ms: Millis,
    wait_seconds: i64,
    state: TicketState,
}

struct EventWaiter {
    call: u64,
    /// Fires once the generation is above this.
    after: i64,
    reply: Reply<EventWaitOutcome>,
    window_end: Millis,
}

struct ClaimWaiter {
    call: u64,
    agent_id: String,
    lease_ms: Millis,
    reply: Reply<ClaimOutcome>,
    window_end: Millis,
}

/// What to undo if an answer carrying a grant could not be delivered (its caller went away),
/// or was delivered but never read (its caller went away right after). Serializable: a daemon
/// that ran a call for another daemon keeps it beside the answer until the answer is read.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Orphan {
    Locks(Vec<(String, String)>),
    Lease { id: i64, lease_token: String },
}

/// Sends an answer (or, if the batch failed, that failure); false if the caller is gone.
type Deliver = Box<dyn FnOnce(Option<&CoreError>) -> bool + Send>;

/// An answer waiting for its batch's commit.
struct Outgoing {
    deliver: Deliver,
    orphan: Option<Orphan>,
}

impl Outgoing {
    fn new<T: Send + 'static>(reply: Reply<T>, value: CoreResult<T>) -> Self {
        Outgoing {
            deliver: Box::new(move |failed: Option<&CoreError>| {
                let value = match failed {
                    Some(e) => Err(e.clone()),
                    None => value,
                };
                reply.send(value).is_ok()
            }),
            orphan: None,
        }
    }
}

pub struct Engine {
    store: Box<dyn Store>,
    clock: Arc<dyn Clock>,
    deadlines: BinaryHeap<Reverse<(Millis, Deadline)>>,
    /// For row expiries (locks, agents, leases): the instant already in `deadlines`. Keeps the
    /// heap at one entry per row however often it is renewed; a firing entry that finds the row
    /// renewed schedules the new instant then.
    scheduled: HashMap<Deadline, Millis>,
    tickets: HashMap<u64, Ticket>,
    /// Lock name → ticket ids in arrival order.
    lock_queues: HashMap<String, VecDeque<u64>>,
    wake_tokens: HashMap<String, u64>,
    /// Parked call id → its ticket (a ticket outlives the calls that wait on it).
    ticket_calls: HashMap<u64, u64>,
    next_ticket: u64,
    event_waiters: HashMap<String, Vec<EventWaiter>>,
    event_calls: HashMap<u64, String>,
    claim_waiters: HashMap<String, VecDeque<ClaimWaiter>>,
    claim_calls: HashMap<u64, String>,
    /// Lock names whose line may be able to move.
    to_pump: BTreeSet<String>,
    /// Queues that may have a pending task for a parked claimer.
    to_feed: BTreeSet<String>,
    outbox: Vec<Outgoing>,
    orphans: Vec<Orphan>,
    /// Set by the first storage error of a batch: the batch is rolled back.
    batch_error: Option<CoreError>,
    draining: bool,
    /// Most commands per transaction (group commit off when 1).
    max_batch: usize,
    /// Transactions committed and operations applied, logged when the engine stops so the
    /// benchmark can report operations per commit.
    commits: u64,
    operations: u64,
}

/// Most bytes of a note value shown in `/status`.
const STATUS_VALUE_BYTES: usize = 1024;

/// Cuts `s` to at most `max` bytes on a character boundary, marking the cut with `…`.
fn clip_value(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
}

fn storage(e: StoreError) -> CoreError {
    CoreError::Storage(e.to_string())
}

/// A fresh unguessable token: 128 random bits, hex, with a prefix that says what it is.
pub fn new_token(prefix: &str) -> String {
    let bytes: [u8; 16] = rand::random();
    format!("{prefix}_{}", hex::encode(bytes))
}

fn tokens_equal(a: &str, b: &str) -> bool {
    secrets_equal(a.as_bytes(), b.as_bytes())
}

impl Engine {
    /// Builds the engine and rebuilds the deadline schedule from the store.
    pub fn new(mut store: Box<dyn Store>, clock: Arc<dyn Clock>) -> CoreResult<Engine> {
        let expiries = store.expiries().map_err(storage)?;
        let mut engine = Engine {
            store,
            clock,
            deadlines: BinaryHeap::new(),
            scheduled: HashMap::new(),
            tickets: HashMap::new(),
            lock_queues: HashMap::new(),
            wake_tokens: HashMap::new(),
            ticket_calls: HashMap::new(),
            next_ticket: 1,
            event_waiters: HashMap::new(),
            event_calls: HashMap::new(),
            claim_waiters: HashMap::new(),
            claim_calls: HashMap::new(),
            to_pump: BTreeSet::new(),
            to_feed: BTreeSet::new(),
            outbox: Vec::new(),
            orphans: Vec::new(),
            batch_error: None,
            draining: false,
            max_batch: max_batch_from_env(),
            commits: 0,
            operations: 0,
        };
        for (name, at) in expiries.locks {
            engine.schedule(at, Deadline::LockExpiry(name));
        }
        for (agent, at) in expiries.agents {
            engine.schedule(at, Deadline::AgentLapse(agent));
        }
        for (id, at) in expiries.leases {
            engine.schedule(at, Deadline::LeaseExpiry(id));
        }
        let now = engine.now();
        engine.schedule(now, Deadline::Housekeeping);
        Ok(engine)
    }

    fn now(&self) -> Millis {
        self.clock.now_ms()
    }

    fn schedule(&mut self, at: Millis, what: Deadline) {
        if matches!(
            what,
            Deadline::LockExpiry(_) | Deadline::AgentLapse(_) | Deadline::LeaseExpiry(_)
        ) {
            match self.scheduled.get(&what) {
                // An earlier check is already due; it will reschedule to the row's expiry.
                Some(&cur) if cur <= at => return,
                _ => {
                    self.scheduled.insert(what.clone(), at);
                }
            }
        }
        self.deadlines.push(Reverse((at, what)));
    }

    /// Runs until every sender of the channel is gone.
    pub fn run(mut self, rx: Receiver<Command>) {
        loop {
            let mut batch = Vec::new();
            if self.orphans.is_empty() {
                let first = match self.next_deadline_in() {
                    Some(d) => match rx.recv_timeout(d) {
                        Ok(c) => Some(c),
                        Err(RecvTimeoutError::Timeout) => None,
                        Err(RecvTimeoutError::Disconnected) => break,
                    },
                    None => match rx.recv() {
                        Ok(c) => Some(c),
                        Err(_) => break,
                    },
                };
                batch.extend(first);
            }
            while batch.len() < self.max_batch {
                match rx.try_recv() {
                    Ok(c) => batch.push(c),
                    Err(_) => break,
                }
            }
            self.process(batch);
        }
        tracing::info!(
            commits = self.commits,
            operations = self.operations,
            max_batch = self.max_batch,
            "engine stopped"
        );
    }

    fn next_deadline_in(&self) -> Option<Duration> {
        self.deadlines.peek().map(|Reverse((at, _))| {
            let ms = (*at - self.now()).max(0) as u64;
            Duration::from_millis(ms)
        })
    }

    /// Applies one batch in one transaction and answers its callers after the commit.
    pub fn process(&mut self, batch: Vec<Command>) {
        if let Err(e) = self.store.begin() {
            self.batch_error = Some(storage(e));
        }
        let mut drained = Vec::new();
        for orphan in std::mem::take(&mut self.orphans) {
            self.release_orphan(orphan);
        }
        for cmd in batch {
            match cmd {
                Command::Op(op) => {
                    self.operations += 1;
                    self.apply(op)
                }
                Command::Cancel(call) => self.cancel(call),
                Command::Orphaned(orphan) => self.release_orphan(orphan),
                Command::Drain(done) => {
                    self.draining = true;
                    self.answer_all_parked();
                    drained.push(done);
                }
            }
            self.settle();
        }
        self.fire_due();
        let failed = match self.batch_error.take() {
            Some(e) => Some(e),
            None => self.store.commit().err().map(storage),
        };
        if failed.is_none() {
            self.commits += 1;
        }
        if let Some(e) = &failed {
            tracing::error!(error = %e, "a batch failed and was rolled back");
            self.store.rollback();
        }
        for out in std::mem::take(&mut self.outbox) {
            let delivered = (out.deliver)(failed.as_ref());
            if !delivered && failed.is_none() {
                if let Some(orphan) = out.orphan {
                    self.orphans.push(orphan);
                }
            }
        }
        for done in drained {
            let _ = done.send(());
        }
    }

    /// Records a storage failure (the batch will roll back) and passes the error on.
    fn st<T>(&mut self, r: Result<T, StoreError>) -> CoreResult<T> {
        r.map_err(|e| {
            let e = storage(e);
            if self.batch_error.is_none() {
                self.batch_error = Some(e.clone());
            }
            e
        })
    }

    fn respond<T: Send + 'static>(&mut self, reply: Reply<T>, value: CoreResult<T>) {
        self.outbox.push(Outgoing::new(reply, value));
    }

    fn apply(&mut self, op: Op) {
        match op {
            Op::SetNote {
                key,
                value,
                author,
                ttl_ms,
                reply,
            } => {
                let r = self.set_note(key, value, author, ttl_ms);
                self.respond(reply, r)
            }
            Op::GetNote { key, reply } => {
                let r = self.get_note(&key);
                self.respond(reply, r)
            }
            Op::ListNotes { page, reply } => {
                let r = self.list_notes(&page);
                self.respond(reply, r)
            }
            Op::DeleteNote { key, reply } => {
                let r = self.delete_note(&key);
                self.respond(reply, r)
            }
            Op::SetNoteIf {
                key,
                expected,
                new_value,
                author,
                ttl_ms,
                reply,
            } => {
                let r = self.set_note_if(key, expected, new_value, author, ttl_ms);
                self.respond(reply, r)
            }
            Op::IncrementCounter { name, by, reply } => {
                let r = self.increment_counter(&name, by);
                self.respond(reply, r)
            }
            Op::LockResource {
                call,
                name,
                agent_id,
                ttl_ms,
                wait_ms,
                wake_token,
                reply,
            } => self.lock_resource(call, name, agent_id, ttl_ms, wait_ms, wake_token, reply),
            Op::LockResources {
                call,
                names,
                agent_id,
                ttl_ms,
                wait_ms,
                reply,
            } => self.lock_resources(call, names, agent_id, ttl_ms, wait_ms, reply),
            Op::UnlockResource { name, proof, reply } => {
                let r = self.unlock_resource(&name, &proof);
                self.respond(reply, r)
            }
            Op::RenewLock {
                name,
                proof,
                ttl_ms,
                reply,
            } => {
                let r = self.renew_lock(&name, &proof, ttl_ms);
                self.respond(reply, r)
            }
            Op::ListLocks { page, reply } => {
                let r = self.list_locks(&page);
                self.respond(reply, r)
            }
            Op::RegisterAgent {
                agent_id,
                ttl_ms,
                reply,
            } => {
                let r = self.register_agent(agent_id, ttl_ms);
                self.respond(reply, r)
            }
            Op::UnregisterAgent { agent_id, reply } => {
                let r = self
                    .release_agent(&agent_id)
                    .map(|_| Unregistered { unregistered: true });
                self.respond(reply, r)
            }
            Op::ListAgents { page, reply } => {
                let r = self.list_agents(&page);
                self.respond(reply, r)
            }
            Op::SignalEvent { name, reply } => {
                // Answered ahead of the waiters it wakes (all after the same commit), so the
                // signaller does not queue behind a thousand deliveries.
                let at = self.outbox.len();
                let r = self.signal_event(name);
                self.outbox.insert(at, Outgoing::new(reply, r));
            }
            Op::WaitForEvent {
                call,
                name,
                last_seen,
                wait_ms,
                reply,
            } => self.wait_for_event(call, name, last_seen, wait_ms, reply),
            Op::ClearEvent { name, reply } => {
                let r = self.clear_event(name);
                self.respond(reply, r)
            }
            Op::PushTask {
                queue,
                payload,
                author,
                priority,
                reply,
            } => {
                let r = self.push_task(queue, payload, author, priority);
                self.respond(reply, r)
            }
            Op::ClaimNextTask {
                call,
                queue,
                agent_id,
                lease_ms,
                wait_ms,
                reply,
            } => self.claim_next_task(call, queue, agent_id, lease_ms, wait_ms, reply),
            Op::CompleteTask {
                id,
                lease_token,
                reply,
            } => {
                let r = self
                    .finish_task(id, &lease_token, TaskState::Completed)
                    .map(|error| Completed {
                        completed: error.is_none(),
                        error,
                    });
                self.respond(reply, r)
            }
            Op::FailTask {
                id,
                lease_token,
                requeue,
                reply,
            } => {
                let to = if requeue {
                    TaskState::Pending
                } else {
                    TaskState::Failed
                };
                let r = self.finish_task(id, &lease_token, to).map(|error| Failed {
                    failed: error.is_none(),
                    error,
                });
                self.respond(reply, r)
            }
            Op::ExtendLease {
                id,
                lease_token,
                lease_ms,
                reply,
            } => {
                let r = self.extend_lease(id, &lease_token, lease_ms);
                self.respond(reply, r)
            }
            Op::ListTasks { queue, page, reply } => {
                let r = self.list_tasks(queue.as_deref(), &page);
                self.respond(reply, r)
            }
            Op::Status { reply } => {
                let r = self.status();
                self.respond(reply, r)
            }
            Op::WaitStatus { call, reply } => {
                let r = self.wait_status(call);
                // Read-only and about memory: no need to wait for a commit, but harmless to.
                self.respond(reply, r)
            }
        }
    }

    // ------------------------------------------------------------ notes and counters

    fn live_note(&mut self, key: &str) -> CoreResult<Option<NoteRow>> {
        let now = self.now();
        let row = self.store.note_get(key);
        Ok(self
            .st(row)?
            .filter(|n| n.expires_at.is_none_or(|at| at > now)))
    }

    fn note_view(n: NoteRow, now: Millis) -> NoteView {
        NoteView {
            key: n.key,
            value: n.value,
            author: n.author,
            expires_in_seconds: n.expires_at.map(|at| seconds_left(at, now)),
        }
    }

    fn set_note(
        &mut self,
        key: String,
        value: String,
        author: Option<String>,
        ttl_ms: Option<Millis>,
    ) -> CoreResult<Saved> {
        let expires_at = ttl_ms.map(|t| self.now() + t);
        let r = self.store.note_put(&NoteRow {
            key,
            value,
            author,
            expires_at,
        });
        self.st(r)?;
        Ok(Saved { saved: true })
    }

    fn get_note(&mut self, key: &str) -> CoreResult<GetNoteResult> {
        let now = self.now();
        Ok(match self.live_note(key)? {
            Some(n) => GetNoteResult::Found(Self::note_view(n, now)),
            None => GetNoteResult::Missing { found: false },
        })
    }

    fn list_notes(&mut self, page: &Page) -> CoreResult<Paged<NoteView>> {
        let now = self.now();
        let r = self.store.note_page(
            now,
            page.after.as_deref(),
            page.limit,
            page.values,
            MAX_PAGE_VALUE_BYTES,
        );
        let (rows, more) = self.st(r)?;
        let next_cursor = more.then(|| rows.last().map(|n| n.key.clone())).flatten();
        Ok(Paged {
            items: rows.into_iter().map(|n| Self::note_view(n, now)).collect(),
            next_cursor,
        })
    }

    fn delete_note(&mut self, key: &str) -> CoreResult<Deleted> {
        let existed = self.live_note(key)?.is_some();
        let r = self.store.note_delete(key);
        self.st(r)?;
        Ok(Deleted { deleted: existed })
    }

    fn set_note_if(
        &mut self,
        key: String,
        expected: String,
        new_value: String,
        author: Option<String>,
        ttl_ms: Option<Millis>,
    ) -> CoreResult<Swapped> {
        let current = self.live_note(&key)?.map(|n| n.value).unwrap_or_default();
        if current != expected {
            return Ok(Swapped { swapped: false });
        }
        self.set_note(key, new_value, author, ttl_ms)?;
        Ok(Swapped { swapped: true })
    }

    fn increment_counter(&mut self, name: &str, by: i64) -> CoreResult<CounterValue> {
        let r = self.store.counter_add(name, by);
        match self.st(r)? {
            Some(value) => Ok(CounterValue { value }),
            None => Err(CoreError::invalid(
                "by",
                "would overflow the counter's 64-bit signed range",
            )),
        }
    }

    // ------------------------------------------------------------ locks

    /// The lock row if it is held now; an expired row counts as absent.
    fn live_lock(&mut self, name: &str) -> CoreResult<Option<LockRow>> {
        let now = self.now();
        let row = self.store.lock_get(name);
        Ok(self.st(row)?.filter(|l| l.expires_at > now))
    }

    /// Whether ticket `id` still holds a place: a parked call whose caller is there, or a place
    /// kept between two windows.
    fn ticket_live(&self, id: u64) -> bool {
        match self.tickets.get(&id).map(|t| &t.state) {
            Some(TicketState::Parked { waiter, .. }) => !waiter.is_closed(),
            Some(TicketState::Grace { .. }) => true,
            None => false,
        }
    }

    /// Removes tickets whose parked caller is gone from the front of `name`'s line.
    fn line_head(&mut self, name: &str) -> Option<u64> {
        loop {
            let head = *self.lock_queues.get(name)?.front()?;
            if self.ticket_live(head) {
                return Some(head);
            }
            self.remove_ticket(head);
        }
    }

    /// Takes a ticket out of every line it stands in; those lines may now move.
    fn remove_ticket(&mut self, id: u64) -> Option<Ticket> {
        let ticket = self.tickets.remove(&id);
        let names: Vec<String> = match &ticket {
            Some(t) => {
                self.wake_tokens.remove(&t.wake_token);
                if let TicketState::Parked { call, .. } = &t.state {
                    self.ticket_calls.remove(call);
                }
                t.names.clone()
            }
            // Not in the map: find it in the lines by brute force (cannot normally happen).
            None => self
                .lock_queues
                .iter()
                .filter(|(_, q)| q.contains(&id))
                .map(|(n, _)| n.clone())
                .collect(),
        };
        for name in names {
            if let Some(q) = self.lock_queues.get_mut(&name) {
                q.retain(|&t| t != id);
                if q.is_empty() {
                    self.lock_queues.remove(&name);
                }
            }
            self.to_pump.insert(name);
        }
        ticket
    }

    /// Live tickets in `name`'s line.
    fn line_len(&self, name: &str) -> usize {
        self.lock_queues
            .get(name)
            .map_or(0, |q| q.iter().filter(|&&id| self.ticket_live(id)).count())
    }

    /// 1-based place of ticket `id` in `name`'s line, counting only live tickets.
    fn line_position(&self, name: &str, id: u64) -> Option<usize> {
        let q = self.lock_queues.get(name)?;
        let mut pos = 0;
        for t in q {
            if self.ticket_live(*t) || *t == id {
                pos += 1;
            }
            if *t == id {
                return Some(pos);
            }
        }
        None
    }

    /// Who stands between a caller and `name`: the holder, or the queued agent it is
    /// reserved for; with the seconds until that changes.
    fn blocker(&mut self, name: &str) -> CoreResult<(Option<String>, i64)> {
        let now = self.now();
        if let Some(l) = self.live_lock(name)? {
            return Ok((Some(l.agent_id), seconds_left(l.expires_at, now)));
        }
        if let Some(head) = self.line_head(name) {
            if let Some(t) = self.tickets.get(&head) {
                let until = match t.state {
                    TicketState::Grace { until } => until,
                    TicketState::Parked { window_end, .. } => window_end,
                };
                return Ok((Some(t.agent_id.clone()), seconds_left(until, now)));
            }
        }
        Ok((None, 0))
    }

    /// Writes new grants of `names` to `agent_id`, one token and fence per name.
    fn grant(
        &mut self,
        agent_id: &str,
        names: &[String],
        ttl_ms: Millis,
    ) -> CoreResult<Vec<(String, String, i64)>> {
        let expires_at = self.now() + ttl_ms;
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            let fence = self.store.fence_next(name);
            let fence = self.st(fence)?;
            let row = LockRow {
                name: name.clone(),
                agent_id: agent_id.to_string(),
                token: new_token("lk"),
                fence,
                expires_at,
            };
            let r = self.store.lock_put(&row);
            self.st(r)?;
            self.schedule(expires_at, Deadline::LockExpiry(name.clone()));
            out.push((row.name, row.token, fence));
        }
        Ok(out)
    }

    /// Extends a lock its agent already holds: same token, same fence.
    fn refresh(&mut self, mut row: LockRow, ttl_ms: Millis) -> CoreResult<LockRow> {
        row.expires_at = self.now() + ttl_ms;
        let r = self.store.lock_put(&row);
        self.st(r)?;
        self.schedule(row.expires_at, Deadline::LockExpiry(row.name.clone()));
        Ok(row)
    }

    #[allow(clippy::too_many_arguments)]
    fn lock_resource(
        &mut self,
        call: u64,
        name: String,
        agent_id: String,
        ttl_ms: Millis,
        wait_ms: Millis,
        wake_token: Option<String>,
        reply: Reply<LockOutcome>,
    ) {
        let r = self.lock_resource_inner(call, name, agent_id, ttl_ms, wait_ms, wake_token, reply);
        if let Err((reply, e)) = r {
            self.respond(reply, Err(e));
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn lock_resource_inner(
        &mut self,
        call: u64,
        name: String,
        agent_id: String,
        ttl_ms: Millis,
        wait_ms: Millis,
        wake_token: Option<String>,
        reply: Reply<LockOutcome>,
    ) -> Result<(), (Reply<LockOutcome>, CoreError)> {
        let now = self.now();
        let wait_ms = if self.draining { 0 } else { wait_ms };
        macro_rules! tr {
            ($e:expr) => {
                match $e {
                    Ok(v) => v,
                    Err(e) => return Err((reply, e)),
                }
            };
        }
        let held = tr!(self.live_lock(&name));
        if let Some(row) = held.clone().filter(|l| l.agent_id == agent_id) {
            // Idempotent re-acquire: a caller that lost its answer may ask again safely.
            let row = tr!(self.refresh(row, ttl_ms));
            if let Some(id) = wake_token
                .as_ref()
                .and_then(|t| self.wake_tokens.get(t))
                .copied()
            {
                self.remove_ticket(id);
            }
            let out = LockOutcome::Granted {
                locked: true,
                lock_token: row.token,
                expires_in_seconds: seconds_left(row.expires_at, now),
                fence: row.fence,
                fresh: false,
            };
            self.respond(reply, Ok(out));
            return Ok(());
        }

        // Coming back with a wake token: stand in the old place again.
        let returning = wake_token
            .as_ref()
            .and_then(|t| self.wake_tokens.get(t).copied())
            .filter(|id| {
                self.tickets.get(id).is_some_and(|t| {
                    t.agent_id == agent_id && t.names.len() == 1 && t.names[0] == name
                })
            })
            // Coming back without it (a client that simply repeats its call): the agent's own
            // place kept for the grace is still its place. Otherwise it would stand in line
            // twice and the free lock would sit reserved for a place nobody comes back to.
            .or_else(|| self.kept_place(&name, &agent_id));
        if let Some(id) = returning {
            if let Some(t) = self.tickets.get_mut(&id) {
                let old = std::mem::replace(
                    &mut t.state,
                    TicketState::Parked {
                        call,
                        waiter: LockWaiter::Single(reply),
                        window_end: now + wait_ms,
                    },
                );
                t.ttl_ms = ttl_ms;
                t.wait_seconds = wait_ms / 1000;
                if let TicketState::Parked {
                    call: old_call,
                    waiter,
                    ..
                } = old
                {
                    // A second call on the same token replaces the first, which is answered now.
                    self.ticket_calls.remove(&old_call);
                    if let LockWaiter::Single(old_reply) = waiter {
                        let out = self.contended_answer(&name, Some(id));
                        self.respond(old_reply, out);
                    }
                }
            }
            self.ticket_calls.insert(call, id);
            self.schedule(now + wait_ms, Deadline::TicketWindow(id));
            self.to_pump.insert(name);
            return Ok(());
        }

        if held.is_none() && self.line_head(&name).is_none() {
            let granted = tr!(self.grant(&agent_id, std::slice::from_ref(&name), ttl_ms));
            let (name, token, fence) = granted.into_iter().next().expect("one name granted");
            let out = LockOutcome::Granted {
                locked: true,
                lock_token: token.clone(),
                expires_in_seconds: seconds_left(now + ttl_ms, now),
                fence,
                fresh: true,
            };
            let mut o = Outgoing::new(reply, Ok(out));
            o.orphan = Some(Orphan::Locks(vec![(name, token)]));
            self.outbox.push(o);
            return Ok(());
        }

        if wait_ms == 0 {
            let (held_by, expires_in_seconds) = tr!(self.blocker(&name));
            let out = LockOutcome::Contended {
                locked: false,
                held_by,
                expires_in_seconds,
                wake_token: None,
                queue_position: None,
                retry_with: None,
            };
            self.respond(reply, Ok(out));
            return Ok(());
        }

        let id = self.next_ticket;
        self.next_ticket += 1;
        let wake_token = new_token("wt");
        self.wake_tokens.insert(wake_token.clone(), id);
        self.ticket_calls.insert(call, id);
        self.tickets.insert(
            id,
            Ticket {
                wake_token,
                agent_id,
                names: vec![name.clone()],
                ttl_ms,
                wait_seconds: wait_ms / 1000,
                state: TicketState::Parked {
                    call,
                    waiter: LockWaiter::Single(reply),
                    window_end: now + wait_ms,
                },
            },
        );
        self.lock_queues
            .entry(name.clone())
            .or_default()
            .push_back(id);
        self.schedule(now + wait_ms, Deadline::TicketWindow(id));
        self.to_pump.insert(name);
        Ok(())
    }

    /// The place `agent_id` keeps in `name`'s line between two windows (a single-name ticket
    /// in its grace), if any.
    fn kept_place(&self, name: &str, agent_id: &str) -> Option<u64> {
        self.lock_queues.get(name)?.iter().copied().find(|id| {
            self.tickets.get(id).is_some_and(|t| {
                matches!(t.state, TicketState::Grace { .. })
                    && t.agent_id == agent_id
                    && t.names.len() == 1
            })
        })
    }

    /// The `locked:false` answer for a caller standing in line with ticket `id` (if any).
    fn contended_answer(&mut self, name: &str, id: Option<u64>) -> CoreResult<LockOutcome> {
        let (held_by, expires_in_seconds) = self.blocker(name)?;
        let ticket = id.and_then(|id| self.tickets.get(&id).map(|t| (id, t)));
        Ok(match ticket {
            Some((id, t)) => LockOutcome::Contended {
                locked: false,
                held_by,
                expires_in_seconds,
                wake_token: Some(t.wake_token.clone()),
                queue_position: self.line_position(name, id),
                retry_with: Some(RetryWith {
                    name: name.to_string(),
                    agent_id: t.agent_id.clone(),
                    ttl_seconds: t.ttl_ms / 1000,
                    wait_seconds: t.wait_seconds.max(1),
                    wake_token: t.wake_token.clone(),
                }),
            },
            None => LockOutcome::Contended {
                locked: false,
                held_by,
                expires_in_seconds,
                wake_token: None,
                queue_position: None,
                retry_with: None,
            },
        })
    }

    fn lock_resources(
        &mut self,
        call: u64,
        names: Vec<String>,
        agent_id: String,
        ttl_ms: Millis,
        wait_ms: Millis,
        reply: Reply<LockSetOutcome>,
    ) {
        let wait_ms = if self.draining { 0 } else { wait_ms };
        match self.set_grantable_now(&names, &agent_id) {
            Err(e) => self.respond(reply, Err(e)),
            Ok(Ok(())) => match self.grant_set(&agent_id, &names, ttl_ms) {
                Ok((out, orphan)) => {
                    let mut o = Outgoing::new(reply, Ok(out));
                    o.orphan = Some(orphan);
                    self.outbox.push(o);
                }
                Err(e) => self.respond(reply, Err(e)),
            },
            Ok(Err(contended)) if wait_ms == 0 => {
                let r = self.set_contended_answer(contended);
                self.respond(reply, r);
            }
            Ok(Err(_)) => {
                let now = self.now();
                let id = self.next_ticket;
                self.next_ticket += 1;
                let wake_token = new_token("wt");
                self.wake_tokens.insert(wake_token.clone(), id);
                self.ticket_calls.insert(call, id);
                for n in &names {
                    self.lock_queues.entry(n.clone()).or_default().push_back(id);
                    self.to_pump.insert(n.clone());
                }
                self.tickets.insert(
                    id,
                    Ticket {
                        wake_token,
                        agent_id,
                        names,
                        ttl_ms,
                        wait_seconds: wait_ms / 1000,
                        state: TicketState::Parked {
                            call,
                            waiter: LockWaiter::Set(reply),
                            window_end: now + wait_ms,
                        },
                    },
                );
                self.schedule(now + wait_ms, Deadline::TicketWindow(id));
            }
        }
    }

    /// Whether a caller with no place in line may take every name now: each free (or already
    /// the caller's) with nobody waiting. `Err(name)` names the first that is not.
    fn set_grantable_now(
        &mut self,
        names: &[String],
        agent_id: &str,
    ) -> CoreResult<Result<(), String>> {
        for n in names {
            match self.live_lock(n)? {
                Some(l) if l.agent_id == agent_id => continue,
                Some(_) => return Ok(Err(n.clone())),
                None => {
                    if self.line_head(n).is_some() {
                        return Ok(Err(n.clone()));
                    }
                }
            }
        }
        Ok(Ok(()))
    }

    fn set_contended_answer(&mut self, contended: String) -> CoreResult<LockSetOutcome> {
        let (held_by, expires_in_seconds) = self.blocker(&contended)?;
        Ok(LockSetOutcome::Contended {
            locked: false,
            held_by,
            contended,
            expires_in_seconds,
        })
    }

    /// Grants a whole set (names already the agent's are refreshed, keeping their tokens).
    fn grant_set(
        &mut self,
        agent_id: &str,
        names: &[String],
        ttl_ms: Millis,
    ) -> CoreResult<(LockSetOutcome, Orphan)> {
        let now = self.now();
        let mut tokens = std::collections::BTreeMap::new();
        let mut fences = std::collections::BTreeMap::new();
        let mut fresh = Vec::new();
        for n in names {
            match self.live_lock(n)? {
                Some(l) if l.agent_id == agent_id => {
                    let l = self.refresh(l, ttl_ms)?;
                    tokens.insert(l.name.clone(), l.token);
                    fences.insert(l.name, l.fence);
                }
                _ => fresh.push(n.clone()),
            }
        }
        let mut orphan = Vec::new();
        for (name, token, fence) in self.grant(agent_id, &fresh, ttl_ms)? {
            orphan.push((name.clone(), token.clone()));
            tokens.insert(name.clone(), token);
            fences.insert(name, fence);
        }
        Ok((
            LockSetOutcome::Granted {
                locked: true,
                tokens,
                fences,
                expires_in_seconds: seconds_left(now + ttl_ms, now),
                fresh,
            },
            Orphan::Locks(orphan),
        ))
    }

    /// Moves `name`'s line: grants the head ticket if it is parked and every one of its names
    /// is either already its agent's or free with the ticket first in that name's line.
    fn pump_lock(&mut self, name: &str) -> CoreResult<()> {
        let Some(head) = self.line_head(name) else {
            return Ok(());
        };
        let (names, agent_id, ttl_ms) = match self.tickets.get(&head) {
            Some(Ticket {
                state: TicketState::Parked { .. },
                names,
                agent_id,
                ttl_ms,
                ..
            }) => (names.clone(), agent_id.clone(), *ttl_ms),
            // Reserved for a waiter between two windows, or gone.
            _ => return Ok(()),
        };
        for n in &names {
            match self.live_lock(n)? {
                // Already its own: keeping it needs no place in that name's line (waiting there
                // behind callers who wait for it would never end).
                Some(l) if l.agent_id == agent_id => {}
                Some(_) => return Ok(()),
                None => {
                    if self.line_head(n) != Some(head) {
                        return Ok(());
                    }
                }
            }
        }
        let ticket = self.remove_ticket(head).expect("head ticket exists");
        let TicketState::Parked { waiter, .. } = ticket.state else {
            unreachable!("checked parked above")
        };
        match waiter {
            LockWaiter::Single(reply) => {
                let now = self.now();
                let (out, fresh) = match self.live_lock(name)? {
                    Some(l) => {
                        let l = self.refresh(l, ttl_ms)?;
                        ((l.name, l.token, l.fence), false)
                    }
                    None => (
                        self.grant(&agent_id, &names, ttl_ms)?
                            .into_iter()
                            .next()
                            .expect("one name granted"),
                        true,
                    ),
                };
                let (n, token, fence) = out;
                let mut o = Outgoing::new(
                    reply,
                    Ok(LockOutcome::Granted {
                        locked: true,
                        lock_token: token.clone(),
                        expires_in_seconds: seconds_left(now + ttl_ms, now),
                        fence,
                        fresh,
                    }),
                );
                // A refresh of a lock the agent already held is never undone.
                o.orphan = fresh.then(|| Orphan::Locks(vec![(n, token)]));
                self.outbox.push(o);
            }
            LockWaiter::Set(reply) => {
                let (out, orphan) = self.grant_set(&agent_id, &names, ttl_ms)?;
                let mut o = Outgoing::new(reply, Ok(out));
                o.orphan = Some(orphan);
                self.outbox.push(o);
            }
        }
        Ok(())
    }

    /// Moves every line and queue that an operation may have unblocked.
    fn settle(&mut self) {
        while let Some(name) = self.to_pump.pop_first() {
            if let Err(e) = self.pump_lock(&name) {
                tracing::error!(lock = %name, error = %e, "could not hand a lock to its next waiter");
            }
        }
        while let Some(queue) = self.to_feed.pop_first() {
            if let Err(e) = self.feed_claimers(&queue) {
                tracing::error!(queue = %queue, error = %e, "could not hand a task to a waiting claimer");
            }
        }
    }

    fn proof_matches(row: &LockRow, proof: &HolderProof) -> Result<(), String> {
        match proof {
            HolderProof::Token(t) if tokens_equal(t, &row.token) => Ok(()),
            HolderProof::Token(_) => Err("lock_token does not match the current holder's token \
                                          (the lock may have expired and been granted again)"
                .into()),
            HolderProof::Agent(a) if *a == row.agent_id => Ok(()),
            HolderProof::Agent(_) => Err("the lock is held by another agent".into()),
        }
    }

    fn unlock_resource(&mut self, name: &str, proof: &HolderProof) -> CoreResult<Released> {
        let Some(row) = self.live_lock(name)? else {
            return Ok(Released {
                released: false,
                error: Some("the lock is not held (it may have expired)".into()),
            });
        };
        if let Err(error) = Self::proof_matches(&row, proof) {
            return Ok(Released {
                released: false,
                error: Some(error),
            });
        }
        let r = self.store.lock_delete(name);
        self.st(r)?;
        self.to_pump.insert(name.to_string());
        Ok(Released {
            released: true,
            error: None,
        })
    }

    fn renew_lock(
        &mut self,
        name: &str,
        proof: &HolderProof,
        ttl_ms: Millis,
    ) -> CoreResult<Renewed> {
        let Some(row) = self.live_lock(name)? else {
            return Ok(Renewed::No {
                renewed: false,
                error: "the lock is not held (it may have expired)".into(),
            });
        };
        if let Err(error) = Self::proof_matches(&row, proof) {
            return Ok(Renewed::No {
                renewed: false,
                error,
            });
        }
        let now = self.now();
        let row = self.refresh(row, ttl_ms)?;
        Ok(Renewed::Yes {
            renewed: true,
            expires_in_seconds: seconds_left(row.expires_at, now),
            fence: row.fence,
        })
    }

    fn list_locks(&mut self, page: &Page) -> CoreResult<Paged<LockView>> {
        let now = self.now();
        let r = self.store.lock_page(now, page.after.as_deref(), page.limit);
        let (rows, more) = self.st(r)?;
        let next_cursor = more.then(|| rows.last().map(|l| l.name.clone())).flatten();
        let items = rows
            .into_iter()
            .map(|l| LockView {
                waiters: self.line_len(&l.name),
                expires_in_seconds: seconds_left(l.expires_at, now),
                name: l.name,
                agent_id: l.agent_id,
                fence: l.fence,
            })
            .collect();
        Ok(Paged { items, next_cursor })
    }

    fn release_orphan(&mut self, orphan: Orphan) {
        let r = match orphan {
            Orphan::Locks(grants) => grants.into_iter().try_for_each(|(name, token)| {
                if let Some(row) = self.live_lock(&name)? {
                    if tokens_equal(&row.token, &token) {
                        tracing::debug!(lock = %name, "released a grant whose caller went away");
                        let r = self.store.lock_delete(&name);
                        self.st(r)?;
                        self.to_pump.insert(name);
                    }
                }
                Ok(())
            }),
            Orphan::Lease { id, lease_token } => self.requeue_if_leased(id, &lease_token),
        };
        if let Err(e) = r {
            tracing::error!(error = %e, "could not release an undelivered grant");
        }
        self.settle();
    }

    // ------------------------------------------------------------ presence

    fn register_agent(&mut self, agent_id: String, ttl_ms: Millis) -> CoreResult<Registered> {
        let now = self.now();
        let expires_at = now + ttl_ms;
        let r = self.store.agent_put(&AgentRow {
            agent_id: agent_id.clone(),
            expires_at,
        });
        self.st(r)?;
        self.schedule(expires_at, Deadline::AgentLapse(agent_id));
        Ok(Registered {
            registered: true,
            expires_in_seconds: seconds_left(expires_at, now),
        })
    }

    /// The agent is gone: forget it, release its locks, return its leased tasks to pending.
    fn release_agent(&mut self, agent_id: &str) -> CoreResult<()> {
        let r = self.store.agent_delete(agent_id);
        self.st(r)?;
        let locks = self.store.locks_held_by(agent_id);
        for l in self.st(locks)? {
            let r = self.store.lock_delete(&l.name);
            self.st(r)?;
            tracing::info!(lock = %l.name, agent = %agent_id, "released: its holder is gone");
            self.to_pump.insert(l.name);
        }
        let leased = self.store.tasks_leased_by(agent_id);
        for t in self.st(leased)? {
            tracing::info!(task = t.id, agent = %agent_id, "requeued: its claimant is gone");
            self.requeue(t)?;
        }
        // Places it kept in line between two windows: nobody will come back for them, and a
        // freed lock must not sit reserved for them until their grace runs out.
        let kept: Vec<u64> = self
            .tickets
            .iter()
            .filter(|(_, t)| t.agent_id == agent_id && matches!(t.state, TicketState::Grace { .. }))
            .map(|(id, _)| *id)
            .collect();
        for id in kept {
            self.remove_ticket(id);
        }
        Ok(())
    }

    fn list_agents(&mut self, page: &Page) -> CoreResult<Paged<AgentView>> {
        let now = self.now();
        let r = self
            .store
            .agent_page(now, page.after.as_deref(), page.limit);
        let (agents, more) = self.st(r)?;
        let next_cursor = more
            .then(|| agents.last().map(|a| a.agent_id.clone()))
            .flatten();
        let ids: Vec<String> = agents.iter().map(|a| a.agent_id.clone()).collect();
        // What these agents hold, in one query per table on any backend (never whole tables).
        let held = self.store.holdings(now, &ids);
        let held = self.st(held)?;
        let items = agents
            .into_iter()
            .map(|a| {
                let (locks_held, leases_held) = held.get(&a.agent_id).copied().unwrap_or((0, 0));
                AgentView {
                    locks_held,
                    leases_held,
                    expires_in_seconds: seconds_left(a.expires_at, now),
                    agent_id: a.agent_id,
                }
            })
            .collect();
        Ok(Paged { items, next_cursor })
    }

    // ------------------------------------------------------------ events

    fn event_row(&mut self, name: &str) -> CoreResult<EventRow> {
        let r = self.store.event_get(name);
        Ok(self.st(r)?.unwrap_or_else(|| EventRow {
            name: name.to_string(),
            ..EventRow::default()
        }))
    }

    fn signal_event(&mut self, name: String) -> CoreResult<Signaled> {
        let mut row = self.event_row(&name)?;
        row.generation += 1;
        let r = self.store.event_put(&row);
        self.st(r)?;
        let generation = row.generation;
        if let Some(waiters) = self.event_waiters.remove(&name) {
            let (fire, keep): (Vec<_>, Vec<_>) =
                waiters.into_iter().partition(|w| generation > w.after);
            for w in fire {
                self.event_calls.remove(&w.call);
                self.respond(
                    w.reply,
                    Ok(EventWaitOutcome {
                        generation,
                        fired: true,
                    }),
                );
            }
            if !keep.is_empty() {
                self.event_waiters.insert(name, keep);
            }
        }
        Ok(Signaled { generation })
    }

    fn wait_for_event(
        &mut self,
        call: u64,
        name: String,
        last_seen: i64,
        wait_ms: Millis,
        reply: Reply<EventWaitOutcome>,
    ) {
        let row = match self.event_row(&name) {
            Ok(r) => r,
            Err(e) => return self.respond(reply, Err(e)),
        };
        // A clear moves the floor up: signals before it do not fire, later ones always do.
        let after = last_seen.max(row.cleared_at);
        if row.generation > after || wait_ms == 0 || self.draining {
            let fired = row.generation > after;
            return self.respond(
                reply,
                Ok(EventWaitOutcome {
                    generation: row.generation,
                    fired,
                }),
            );
        }
        let window_end = self.now() + wait_ms;
        self.event_calls.insert(call, name.clone());
        self.event_waiters
            .entry(name)
            .or_default()
            .push(EventWaiter {
                call,
                after,
                reply,
                window_end,
            });
        self.schedule(window_end, Deadline::EventWindow(call));
    }

    fn clear_event(&mut self, name: String) -> CoreResult<Cleared> {
        let mut row = self.event_row(&name)?;
        row.cleared_at = row.generation;
        let r = self.store.event_put(&row);
        self.st(r)?;
        Ok(Cleared { cleared: true })
    }

    fn take_event_waiter(&mut self, call: u64) -> Option<EventWaiter> {
        let name = self.event_calls.remove(&call)?;
        let list = self.event_waiters.get_mut(&name)?;
        let idx = list.iter().position(|w| w.call == call)?;
        let w = list.swap_remove(idx);
        if list.is_empty() {
            self.event_waiters.remove(&name);
        }
        Some(w)
    }

    fn event_generation(&mut self, call_name: &str) -> i64 {
        self.event_row(call_name).map(|r| r.generation).unwrap_or(0)
    }

    // ------------------------------------------------------------ tasks

    fn push_task(
        &mut self,
        queue: String,
        payload: String,
        author: Option<String>,
        priority: i64,
    ) -> CoreResult<Pushed> {
        let now = self.now();
        let r = self
            .store
            .task_insert(&queue, &payload, author.as_deref(), priority, now);
        let id = self.st(r)?;
        self.to_feed.insert(queue);
        Ok(Pushed { id })
    }

    /// Leases `task` to `agent_id` and returns the claim answer.
    fn lease(
        &mut self,
        mut task: TaskRow,
        agent_id: &str,
        lease_ms: Millis,
    ) -> CoreResult<(ClaimOutcome, Orphan)> {
        let now = self.now();
        let token = new_token("ls");
        let expires_at = now + lease_ms;
        task.state = TaskState::Claimed;
        task.attempts += 1;
        task.lease_agent = Some(agent_id.to_string());
        task.lease_token = Some(token.clone());
        task.lease_expires_at = Some(expires_at);
        let r = self.store.task_update(&task);
        self.st(r)?;
        self.schedule(expires_at, Deadline::LeaseExpiry(task.id));
        Ok((
            ClaimOutcome::Claimed {
                claimed: true,
                id: task.id,
                payload: task.payload,
                lease_token: token.clone(),
                lease_expires_in_seconds: seconds_left(expires_at, now),
                attempts: task.attempts,
            },
            Orphan::Lease {
                id: task.id,
                lease_token: token,
            },
        ))
    }

    fn claim_next_task(
        &mut self,
        call: u64,
        queue: String,
        agent_id: String,
        lease_ms: Millis,
        wait_ms: Millis,
        reply: Reply<ClaimOutcome>,
    ) {
        let next = self.store.task_next_pending(&queue);
        let next = match self.st(next) {
            Ok(n) => n,
            Err(e) => return self.respond(reply, Err(e)),
        };
        match next {
            Some(task) => match self.lease(task, &agent_id, lease_ms) {
                Ok((out, orphan)) => {
                    let mut o = Outgoing::new(reply, Ok(out));
                    o.orphan = Some(orphan);
                    self.outbox.push(o);
                }
                Err(e) => self.respond(reply, Err(e)),
            },
            None if wait_ms == 0 || self.draining => {
                self.respond(reply, Ok(ClaimOutcome::Empty { claimed: false }))
            }
            None => {
                let window_end = self.now() + wait_ms;
                self.claim_calls.insert(call, queue.clone());
                self.claim_waiters
                    .entry(queue)
                    .or_default()
                    .push_back(ClaimWaiter {
                        call,
                        agent_id,
                        lease_ms,
                        reply,
                        window_end,
                    });
                self.schedule(window_end, Deadline::ClaimWindow(call));
            }
        }
    }

    /// Hands pending tasks of `queue` to parked claimers, first come first served.
    fn feed_claimers(&mut self, queue: &str) -> CoreResult<()> {
        loop {
            let Some(waiters) = self.claim_waiters.get_mut(queue) else {
                return Ok(());
            };
            while waiters.front().is_some_and(|w| w.reply.is_closed()) {
                let w = waiters.pop_front().expect("front exists");
                self.claim_calls.remove(&w.call);
            }
            if waiters.is_empty() {
                self.claim_waiters.remove(queue);
                return Ok(());
            }
            let next = self.store.task_next_pending(queue);
            let Some(task) = self.st(next)? else {
                return Ok(());
            };
            let w = self
                .claim_waiters
                .get_mut(queue)
                .and_then(|q| q.pop_front())
                .expect("checked non-empty");
            self.claim_calls.remove(&w.call);
            let (out, orphan) = self.lease(task, &w.agent_id, w.lease_ms)?;
            let mut o = Outgoing::new(w.reply, Ok(out));
            o.orphan = Some(orphan);
            self.outbox.push(o);
        }
    }

    fn requeue(&mut self, mut task: TaskRow) -> CoreResult<()> {
        task.state = TaskState::Pending;
        task.lease_agent = None;
        task.lease_token = None;
        task.lease_expires_at = None;
        let r = self.store.task_update(&task);
        self.st(r)?;
        self.to_feed.insert(task.queue);
        Ok(())
    }

    fn requeue_if_leased(&mut self, id: i64, lease_token: &str) -> CoreResult<()> {
        let t = self.store.task_get(id);
        if let Some(t) = self.st(t)? {
            if t.state == TaskState::Claimed && t.lease_token.as_deref() == Some(lease_token) {
                self.requeue(t)?;
            }
        }
        Ok(())
    }

    /// The task, if `lease_token` is its current, unexpired lease; else why not.
    fn leased_task(&mut self, id: i64, lease_token: &str) -> CoreResult<Result<TaskRow, String>> {
        let now = self.now();
        let t = self.store.task_get(id);
        let Some(t) = self.st(t)? else {
            return Ok(Err(format!("no task with id {id}")));
        };
        if t.state != TaskState::Claimed {
            return Ok(Err(format!(
                "task {id} is not claimed (it is {})",
                t.state.as_str()
            )));
        }
        if !t
            .lease_token
            .as_deref()
            .is_some_and(|cur| tokens_equal(cur, lease_token))
        {
            return Ok(Err(
                "lease_token is not the current lease of this task (the lease \
                           expired and the task was claimed again?)"
                    .into(),
            ));
        }
        if t.lease_expires_at.is_none_or(|at| at <= now) {
            return Ok(Err("the lease has expired".into()));
        }
        Ok(Ok(t))
    }

    /// Completes, fails for good, or requeues a leased task. `Ok(Some(reason))` if refused.
    fn finish_task(
        &mut self,
        id: i64,
        lease_token: &str,
        to: TaskState,
    ) -> CoreResult<Option<String>> {
        let mut t = match self.leased_task(id, lease_token)? {
            Ok(t) => t,
            Err(reason) => return Ok(Some(reason)),
        };
        if to == TaskState::Pending {
            self.requeue(t)?;
            return Ok(None);
        }
        t.state = to;
        t.lease_token = None;
        t.lease_expires_at = None;
        t.finished_at = Some(self.now());
        let r = self.store.task_update(&t);
        self.st(r)?;
        Ok(None)
    }

    fn extend_lease(
        &mut self,
        id: i64,
        lease_token: &str,
        lease_ms: Millis,
    ) -> CoreResult<Extended> {
        let mut t = match self.leased_task(id, lease_token)? {
            Ok(t) => t,
            Err(reason) => {
                return Ok(Extended {
                    extended: false,
                    lease_expires_in_seconds: None,
                    error: Some(reason),
                })
            }
        };
        let now = self.now();
        let at = now + lease_ms;
        t.lease_expires_at = Some(at);
        let r = self.store.task_update(&t);
        self.st(r)?;
        self.schedule(at, Deadline::LeaseExpiry(id));
        Ok(Extended {
            extended: true,
            lease_expires_in_seconds: Some(seconds_left(at, now)),
            error: None,
        })
    }

    fn task_view(t: TaskRow, now: Millis) -> TaskView {
        let leased = t.state == TaskState::Claimed;
        TaskView {
            id: t.id,
            queue: t.queue,
            payload: t.payload,
            priority: t.priority,
            state: t.state.as_str().to_string(),
            author: t.author,
            attempts: t.attempts,
            lease_agent: if leased { t.lease_agent } else { None },
            lease_expires_in_seconds: if leased {
                t.lease_expires_at.map(|at| seconds_left(at, now))
            } else {
                None
            },
        }
    }

    fn list_tasks(&mut self, queue: Option<&str>, page: &Page) -> CoreResult<Paged<TaskView>> {
        let now = self.now();
        // The coordinator checked that a task cursor is an id.
        let after = page.after.as_deref().and_then(|c| c.parse::<i64>().ok());
        let r = self
            .store
            .task_page(queue, after, page.limit, MAX_PAGE_VALUE_BYTES);
        let (rows, more) = self.st(r)?;
        let next_cursor = more
            .then(|| rows.last().map(|t| t.id.to_string()))
            .flatten();
        Ok(Paged {
            items: rows.into_iter().map(|t| Self::task_view(t, now)).collect(),
            next_cursor,
        })
    }

    // ------------------------------------------------------------ status

    fn status(&mut self) -> CoreResult<StatusView> {
        // One page of each list (values clipped: status is a summary), and the names of the
        // sections that go on.
        let page = Page::default();
        let mut truncated = Vec::new();
        let locks = self.list_locks(&page)?;
        let agents = self.list_agents(&page)?;
        let mut notes = self.list_notes(&page)?;
        for (name, more) in [
            ("locks", locks.next_cursor.is_some()),
            ("agents", agents.next_cursor.is_some()),
            ("notes", notes.next_cursor.is_some()),
        ] {
            if more {
                truncated.push(name.to_string());
            }
        }
        for n in &mut notes.items {
            clip_value(&mut n.value, STATUS_VALUE_BYTES);
        }
        let (locks, agents, notes) = (locks.items, agents.items, notes.items);
        let rows = self.store.event_list();
        let events = self
            .st(rows)?
            .into_iter()
            .map(|e| EventView {
                waiters: self.event_waiters.get(&e.name).map_or(0, Vec::len),
                name: e.name,
                generation: e.generation,
                cleared_at_generation: e.cleared_at,
            })
            .collect();
        let counts = self.store.task_counts();
        let mut queues: std::collections::BTreeMap<String, QueueView> = Default::default();
        for (queue, state, n) in self.st(counts)? {
            let q = queues.entry(queue.clone()).or_insert_with(|| QueueView {
                queue,
                pending: 0,
                claimed: 0,
                completed: 0,
                failed: 0,
                waiting_claimers: 0,
            });
            match state {
                TaskState::Pending => q.pending += n,
                TaskState::Claimed => q.claimed += n,
                TaskState::Completed => q.completed += n,
                TaskState::Failed => q.failed += n,
            }
        }
        for (name, w) in &self.claim_waiters {
            let q = queues.entry(name.clone()).or_insert_with(|| QueueView {
                queue: name.clone(),
                pending: 0,
                claimed: 0,
                completed: 0,
                failed: 0,
                waiting_claimers: 0,
            });
            q.waiting_claimers = w.len();
        }
        Ok(StatusView {
            locks,
            agents,
            notes,
            events,
            queues: queues.into_values().collect(),
            truncated,
        })
    }

    fn wait_status(&mut self, call: u64) -> CoreResult<Option<WaitProgress>> {
        if let Some(&id) = self.ticket_calls.get(&call) {
            let Some(name) = self.tickets.get(&id).map(|t| t.names[0].clone()) else {
                return Ok(None);
            };
            let (held_by, _) = self.blocker(&name)?;
            return Ok(Some(WaitProgress {
                queue_position: self.line_position(&name, id),
                held_by,
            }));
        }
        if self.event_calls.contains_key(&call) {
            return Ok(Some(WaitProgress {
                queue_position: None,
                held_by: None,
            }));
        }
        if let Some(queue) = self.claim_calls.get(&call) {
            let pos = self
                .claim_waiters
                .get(queue)
                .and_then(|q| q.iter().position(|w| w.call == call))
                .map(|p| p + 1);
            return Ok(Some(WaitProgress {
                queue_position: pos,
                held_by: None,
            }));
        }
        Ok(None)
    }

    // ------------------------------------------------------------ waits ending

    /// The caller of a parked call went away.
    fn cancel(&mut self, call: u64) {
        if let Some(id) = self.ticket_calls.get(&call).copied() {
            let parked_here = matches!(
                self.tickets.get(&id).map(|t| &t.state),
                Some(TicketState::Parked { call: c, .. }) if *c == call
            );
            if parked_here {
                self.remove_ticket(id);
            }
            return;
        }
        if self.take_event_waiter(call).is_some() {
            return;
        }
        if let Some(queue) = self.claim_calls.remove(&call) {
            if let Some(q) = self.claim_waiters.get_mut(&queue) {
                q.retain(|w| w.call != call);
                if q.is_empty() {
                    self.claim_waiters.remove(&queue);
                }
            }
        }
    }

    /// A lock ticket's window ended: answer `locked:false` and keep its place for the grace.
    fn end_ticket_window(&mut self, id: u64, now: Millis) {
        let due = matches!(
            self.tickets.get(&id).map(|t| &t.state),
            Some(TicketState::Parked { window_end, .. }) if *window_end <= now
        ) || (self.draining
            && matches!(
                self.tickets.get(&id).map(|t| &t.state),
                Some(TicketState::Parked { .. })
            ));
        if !due {
            return;
        }
        let until = now + WAKE_GRACE_SECONDS * 1000;
        let Some(t) = self.tickets.get_mut(&id) else {
            return;
        };
        let old = std::mem::replace(&mut t.state, TicketState::Grace { until });
        let name = t.names[0].clone();
        let TicketState::Parked { call, waiter, .. } = old else {
            return;
        };
        self.ticket_calls.remove(&call);
        match waiter {
            LockWaiter::Single(reply) => {
                self.schedule(until, Deadline::TicketGrace(id));
                let r = self.contended_answer(&name, Some(id));
                self.respond(reply, r);
            }
            LockWaiter::Set(reply) => {
                // A set waiter has no wake token to come back with: it leaves the line.
                let names = t.names.clone();
                self.remove_ticket(id);
                let contended = names
                    .iter()
                    .find(|n| self.live_lock(n).ok().flatten().is_some() || self.line_len(n) > 0)
                    .cloned()
                    .unwrap_or_else(|| names[0].clone());
                let r = self.set_contended_answer(contended);
                self.respond(reply, r);
            }
        }
    }

    /// On drain: every parked call gets its timeout answer now.
    fn answer_all_parked(&mut self) {
        let now = self.now();
        let parked: Vec<u64> = self
            .tickets
            .iter()
            .filter(|(_, t)| matches!(t.state, TicketState::Parked { .. }))
            .map(|(id, _)| *id)
            .collect();
        for id in parked {
            self.end_ticket_window(id, now);
        }
        let calls: Vec<u64> = self.event_calls.keys().copied().collect();
        for call in calls {
            self.end_event_window(call, true);
        }
        let calls: Vec<u64> = self.claim_calls.keys().copied().collect();
        for call in calls {
            self.end_claim_window(call, true);
        }
    }

    fn end_event_window(&mut self, call: u64, force: bool) {
        let now = self.now();
        let due = self
            .event_calls
            .get(&call)
            .and_then(|name| self.event_waiters.get(name))
            .and_then(|l| l.iter().find(|w| w.call == call))
            .is_some_and(|w| force || w.window_end <= now);
        if !due {
            return;
        }
        let name = self.event_calls.get(&call).cloned().unwrap_or_default();
        if let Some(w) = self.take_event_waiter(call) {
            let generation = self.event_generation(&name);
            self.respond(
                w.reply,
                Ok(EventWaitOutcome {
                    generation,
                    fired: false,
                }),
            );
        }
    }

    fn end_claim_window(&mut self, call: u64, force: bool) {
        let now = self.now();
        let Some(queue) = self.claim_calls.get(&call).cloned() else {
            return;
        };
        let Some(q) = self.claim_waiters.get_mut(&queue) else {
            return;
        };
        let Some(idx) = q
            .iter()
            .position(|w| w.call == call && (force || w.window_end <= now))
        else {
            return;
        };
        let w = q.remove(idx).expect("index in range");
        if q.is_empty() {
            self.claim_waiters.remove(&queue);
        }
        self.claim_calls.remove(&call);
        self.respond(w.reply, Ok(ClaimOutcome::Empty { claimed: false }));
    }

    /// Handles every deadline that is due.
    fn fire_due(&mut self) {
        loop {
            let now = self.now();
            match self.deadlines.peek() {
                Some(Reverse((at, _))) if *at <= now => {}
                _ => break,
            }
            let Some(Reverse((at, what))) = self.deadlines.pop() else {
                break;
            };
            if self.scheduled.get(&what) == Some(&at) {
                self.scheduled.remove(&what);
            }
            let r = self.fire(what.clone(), now);
            if let Err(e) = r {
                tracing::error!(error = %e, "a deadline could not be handled; retrying in 1 s");
                self.schedule(now + 1000, what);
            }
            self.settle();
        }
    }

    fn fire(&mut self, what: Deadline, now: Millis) -> CoreResult<()> {
        match what {
            Deadline::LockExpiry(name) => {
                let row = self.store.lock_get(&name);
                if let Some(l) = self.st(row)? {
                    if l.expires_at <= now {
                        let r = self.store.lock_delete(&name);
                        self.st(r)?;
                        tracing::info!(lock = %name, agent = %l.agent_id, "expired");
                        self.to_pump.insert(name);
                    } else {
                        self.schedule(l.expires_at, Deadline::LockExpiry(name));
                    }
                }
            }
            Deadline::AgentLapse(agent) => {
                let row = self.store.agent_get(&agent);
                if let Some(a) = self.st(row)? {
                    if a.expires_at <= now {
                        tracing::info!(agent = %agent, "presence lapsed");
                        self.release_agent(&agent)?;
                    } else {
                        self.schedule(a.expires_at, Deadline::AgentLapse(agent));
                    }
                }
            }
            Deadline::LeaseExpiry(id) => {
                let t = self.store.task_get(id);
                if let Some(t) = self.st(t)? {
                    match (t.state, t.lease_expires_at) {
                        (TaskState::Claimed, Some(at)) if at <= now => {
                            tracing::info!(task = id, "lease expired; requeued");
                            self.requeue(t)?;
                        }
                        (TaskState::Claimed, Some(at)) => {
                            self.schedule(at, Deadline::LeaseExpiry(id));
                        }
                        _ => {}
                    }
                }
            }
            Deadline::TicketWindow(id) => self.end_ticket_window(id, now),
            Deadline::TicketGrace(id) => {
                let due = matches!(
                    self.tickets.get(&id).map(|t| &t.state),
                    Some(TicketState::Grace { until }) if *until <= now
                );
                if due {
                    self.remove_ticket(id);
                }
            }
            Deadline::EventWindow(call) => self.end_event_window(call, false),
            Deadline::ClaimWindow(call) => self.end_claim_window(call, false),
            Deadline::Housekeeping => {
                let r = self.store.notes_purge_expired(now);
                self.st(r)?;
                let r = self
                    .store
                    .tasks_purge_finished(now - FINISHED_TASK_RETENTION_SECONDS * 1000);
                self.st(r)?;
                self.schedule(now + HOUSEKEEPING_MS, Deadline::Housekeeping);
            }
        }
        Ok(())
    }

    /// For tests: how many lock tickets are held in memory.
    #[cfg(test)]
    fn ticket_count(&self) -> usize {
        self.tickets.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::store::sqlite::SqliteStore;

    fn engine() -> (Engine, ManualClock) {
        let clock = ManualClock::new(1_000_000);
        let store = SqliteStore::open_in_memory().unwrap();
        let e = Engine::new(Box::new(store), Arc::new(clock.clone())).unwrap();
        (e, clock)
    }

    fn lock(
        e: &mut Engine,
        call: u64,
        name: &str,
        agent: &str,
        wait_ms: Millis,
        wake_token: Option<String>,
    ) -> oneshot::Receiver<CoreResult<LockOutcome>> {
        let (tx, rx) = oneshot::channel();
        e.process(vec![Command::Op(Op::LockResource {
            call,
            name: name.into(),
            agent_id: agent.into(),
            ttl_ms: 60_000,
            wait_ms,
            wake_token,
            reply: tx,
        })]);
        rx
    }

    fn unlock(e: &mut Engine, name: &str, token: &str) -> Released {
        let (tx, mut rx) = oneshot::channel();
        e.process(vec![Command::Op(Op::UnlockResource {
            name: name.into(),
            proof: HolderProof::Token(token.into()),
            reply: tx,
        })]);
        rx.try_recv().unwrap().unwrap()
    }

    /// Takes a free lock at once and returns its token.
    fn take(e: &mut Engine, call: u64, name: &str, agent: &str) -> String {
        token_of(
            lock(e, call, name, agent, 0, None)
                .try_recv()
                .unwrap()
                .unwrap(),
        )
    }

    fn token_of(o: LockOutcome) -> String {
        match o {
            LockOutcome::Granted { lock_token, .. } => lock_token,
            other => panic!("expected a grant, got {other:?}"),
        }
    }

    #[test]
    fn waiters_are_served_in_arrival_order() {
        let (mut e, _clock) = engine();
        let t = take(&mut e, 1, "x", "a");
        let mut b = lock(&mut e, 2, "x", "b", 10_000, None);
        let mut c = lock(&mut e, 3, "x", "c", 10_000, None);
        assert!(b.try_recv().is_err() && c.try_recv().is_err());
        // A try-lock never jumps the line.
        let d = lock(&mut e, 4, "x", "d", 0, None)
            .try_recv()
            .unwrap()
            .unwrap();
        assert!(matches!(d, LockOutcome::Contended { .. }));
        assert!(unlock(&mut e, "x", &t).released);
        let tb = token_of(b.try_recv().unwrap().unwrap());
        assert!(c.try_recv().is_err());
        assert!(unlock(&mut e, "x", &tb).released);
        token_of(c.try_recv().unwrap().unwrap());
    }

    #[test]
    fn a_gone_waiter_is_never_granted() {
        let (mut e, _clock) = engine();
        let t = take(&mut e, 1, "x", "a");
        let b = lock(&mut e, 2, "x", "b", 10_000, None);
        let mut c = lock(&mut e, 3, "x", "c", 10_000, None);
        drop(b);
        e.process(vec![Command::Cancel(2)]);
        assert!(unlock(&mut e, "x", &t).released);
        token_of(c.try_recv().unwrap().unwrap());
        assert_eq!(e.ticket_count(), 0);
    }

    #[test]
    fn a_wake_token_keeps_the_place_in_line() {
        let (mut e, clock) = engine();
        let t = take(&mut e, 1, "x", "a");
        let mut b = lock(&mut e, 2, "x", "b", 1_000, None);
        clock.advance_ms(1_000);
        e.process(vec![]);
        let LockOutcome::Contended {
            wake_token: Some(wt),
            queue_position: Some(1),
            ..
        } = b.try_recv().unwrap().unwrap()
        else {
            panic!("expected a timeout answer with a wake token")
        };
        // A newcomer arrives while b is between windows.
        let mut c = lock(&mut e, 3, "x", "c", 10_000, None);
        // The lock frees while b is away: it is reserved for b, not given to c.
        assert!(unlock(&mut e, "x", &t).released);
        assert!(c.try_recv().is_err());
        let mut b2 = lock(&mut e, 4, "x", "b", 10_000, Some(wt));
        let tb = token_of(b2.try_recv().unwrap().unwrap());
        assert!(c.try_recv().is_err());
        assert!(unlock(&mut e, "x", &tb).released);
        token_of(c.try_recv().unwrap().unwrap());
    }

    #[test]
    fn a_reservation_lapses_after_the_grace() {
        let (mut e, clock) = engine();
        let t = take(&mut e, 1, "x", "a");
        let mut b = lock(&mut e, 2, "x", "b", 1_000, None);
        let mut c = lock(&mut e, 3, "x", "c", 60_000, None);
        clock.advance_ms(1_000);
        e.process(vec![]);
        assert!(b.try_recv().is_ok());
        assert!(unlock(&mut e, "x", &t).released);
        assert!(c.try_recv().is_err());
        clock.advance_ms(WAKE_GRACE_SECONDS * 1000);
        e.process(vec![]);
        token_of(c.try_recv().unwrap().unwrap());
    }

    #[test]
    fn expiry_hands_the_lock_to_the_next_waiter() {
        let (mut e, clock) = engine();
        lock(&mut e, 1, "x", "a", 0, None)
            .try_recv()
            .unwrap()
            .unwrap();
        let mut b = lock(&mut e, 2, "x", "b", 120_000, None);
        clock.advance_ms(60_000);
        e.process(vec![]);
        let LockOutcome::Granted { fence, .. } = b.try_recv().unwrap().unwrap() else {
            panic!("expected a grant")
        };
        assert_eq!(fence, 2);
    }

    #[test]
    fn renewals_keep_one_deadline_per_lock_and_still_expire() {
        let (mut e, clock) = engine();
        for i in 0..100 {
            lock(&mut e, i, "x", "a", 0, None)
                .try_recv()
                .unwrap()
                .unwrap();
            clock.advance_ms(100);
        }
        // One lock expiry entry (plus housekeeping), however often the holder re-acquired.
        assert!(e.deadlines.len() <= 2, "{} deadlines", e.deadlines.len());
        let mut b = lock(&mut e, 1000, "x", "b", 120_000, None);
        clock.advance_ms(30_000);
        e.process(vec![]);
        assert!(
            b.try_recv().is_err(),
            "not expired yet: the last renewal counts"
        );
        clock.advance_ms(30_000);
        e.process(vec![]);
        token_of(b.try_recv().unwrap().unwrap());
    }

    #[test]
    fn re_acquire_by_the_holder_is_idempotent() {
        let (mut e, _clock) = engine();
        let a1 = lock(&mut e, 1, "x", "a", 0, None)
            .try_recv()
            .unwrap()
            .unwrap();
        let a2 = lock(&mut e, 2, "x", "a", 5_000, None)
            .try_recv()
            .unwrap()
            .unwrap();
        // Same token and fence; only the first was a new grant.
        let as_json = |o: &LockOutcome| serde_json::to_value(o).unwrap();
        assert_eq!(as_json(&a1), as_json(&a2));
        assert!(matches!(a1, LockOutcome::Granted { fresh: true, .. }));
        assert!(matches!(a2, LockOutcome::Granted { fresh: false, .. }));
    }

    #[test]
    fn events_survive_a_clear_for_old_waiters() {
        let (mut e, _clock) = engine();
        let signal = |e: &mut Engine| {
            let (tx, mut rx) = oneshot::channel();
            e.process(vec![Command::Op(Op::SignalEvent {
                name: "ev".into(),
                reply: tx,
            })]);
            rx.try_recv().unwrap().unwrap().generation
        };
        assert_eq!(signal(&mut e), 1);
        assert_eq!(signal(&mut e), 2);
        let (tx, _rx) = oneshot::channel();
        e.process(vec![Command::Op(Op::ClearEvent {
            name: "ev".into(),
            reply: tx,
        })]);
        let wait = |e: &mut Engine, call, last_seen| {
            let (tx, rx) = oneshot::channel();
            e.process(vec![Command::Op(Op::WaitForEvent {
                call,
                name: "ev".into(),
                last_seen,
                wait_ms: 10_000,
                reply: tx,
            })]);
            rx
        };
        let mut fresh = wait(&mut e, 10, 0);
        let mut old = wait(&mut e, 11, 1);
        assert!(fresh.try_recv().is_err() && old.try_recv().is_err());
        assert_eq!(signal(&mut e), 3);
        assert!(fresh.try_recv().unwrap().unwrap().fired);
        assert!(old.try_recv().unwrap().unwrap().fired);
    }

    #[test]
    fn a_caller_back_without_its_wake_token_keeps_its_place() {
        let (mut e, clock) = engine();
        let t = take(&mut e, 1, "x", "a");
        let mut b = lock(&mut e, 2, "x", "b", 1_000, None);
        clock.advance_ms(1_000);
        e.process(vec![]);
        assert!(b.try_recv().is_ok());
        let mut c = lock(&mut e, 3, "x", "c", 60_000, None);
        // b repeats its call without the token: the same place, not a second one.
        let mut b2 = lock(&mut e, 4, "x", "b", 60_000, None);
        assert_eq!(e.ticket_count(), 2);
        assert!(unlock(&mut e, "x", &t).released);
        token_of(b2.try_recv().unwrap().unwrap());
        assert!(c.try_recv().is_err());
    }

    #[test]
    fn a_set_waiter_needs_no_place_in_line_for_a_name_it_holds() {
        let (mut e, _clock) = engine();
        let a1 = take(&mut e, 1, "n1", "a");
        let c2 = take(&mut e, 2, "n2", "c");
        let mut b = lock(&mut e, 3, "n1", "b", 60_000, None);
        let (tx, mut set) = oneshot::channel();
        e.process(vec![Command::Op(Op::LockResources {
            call: 4,
            names: vec!["n1".into(), "n2".into()],
            agent_id: "a".into(),
            ttl_ms: 60_000,
            wait_ms: 60_000,
            reply: tx,
        })]);
        assert!(set.try_recv().is_err());
        assert!(unlock(&mut e, "n2", &c2).released);
        let LockSetOutcome::Granted { tokens, .. } = set.try_recv().unwrap().unwrap() else {
            panic!("expected the set to be granted")
        };
        assert_eq!(tokens["n1"], a1);
        assert!(b.try_recv().is_err());
    }

    #[test]
    fn unregistering_drops_the_places_an_agent_kept() {
        let (mut e, clock) = engine();
        let t = take(&mut e, 1, "x", "a");
        let mut b = lock(&mut e, 2, "x", "b", 1_000, None);
        clock.advance_ms(1_000);
        e.process(vec![]);
        assert!(b.try_recv().is_ok());
        let mut c = lock(&mut e, 3, "x", "c", 60_000, None);
        let (tx, _rx) = oneshot::channel();
        e.process(vec![Command::Op(Op::UnregisterAgent {
            agent_id: "b".into(),
            reply: tx,
        })]);
        assert_eq!(e.ticket_count(), 1);
        assert!(unlock(&mut e, "x", &t).released);
        token_of(c.try_recv().unwrap().unwrap());
    }
}
