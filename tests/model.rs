//! Property-based state-machine test of the engine and its store (SQLite, and PostgreSQL when
//! `AIRLOCK_TEST_POSTGRES` names a server) against a small in-memory model of the semantics.
//!
//! Random sequences of lock / unlock / renew (with parked waits, timeouts into the wake-token
//! grace, and cancellations), time advances, notes with TTL and compare-and-swap, counters with
//! overflow, and a leased task queue run through `Engine::process` on an in-memory SQLite store
//! with a `ManualClock`. After every step the engine's answers, including the answers that parked
//! callers receive, must equal the model's.
//!
//! `PROPTEST_CASES` sets how many sequences run on SQLite (default 256);
//! `PROPTEST_CASES_POSTGRES` how many run on PostgreSQL (default 48, all in one fresh database,
//! emptied between sequences).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use airlock::clock::{seconds_left, ManualClock};
use airlock::core::engine::{Command, Engine};
use airlock::core::request::*;
use airlock::core::{
    ClaimOutcome, CoreApi, CoreError, CoreResult, GetNoteResult, GetTaskResult, LockOutcome,
    Renewed, WAKE_GRACE_SECONDS,
};
use airlock::store::sqlite::SqliteStore;
use airlock::store::{Store, Values};
use airlock::testkit::postgres::{self as testing, TestDb};
use proptest::prelude::*;
use tokio::sync::oneshot;

mod faulty;
use faulty::{Fault, Faults, FaultyStore};

/// The daemon's expiry of a new hold whose TTL ends at `at`: even, `at` or 1 ms before; a
/// refreshed hold's is odd (README, "Per-holder release"). So an undelivered grant can tell
/// whether its hold was refreshed since.
fn granted_expiry(at: i64) -> i64 {
    at & !1
}

fn refreshed_expiry(at: i64) -> i64 {
    (at - 1) | 1
}

const LOCKS: usize = 2;
const AGENTS: u8 = 3;

#[derive(Debug, Clone)]
enum Step {
    Lock {
        lock: usize,
        agent: u8,
        ttl_s: i64,
        wait_ms: i64,
    },
    Unlock {
        lock: usize,
        which: usize,
    },
    UnlockByAgent {
        lock: usize,
        agent: u8,
    },
    Renew {
        lock: usize,
        which: usize,
        ttl_s: i64,
    },
    Cancel {
        which: usize,
    },
    Advance {
        ms: i64,
    },
    SetNote {
        key: u8,
        value: u8,
        ttl_s: Option<i64>,
    },
    GetNote {
        key: u8,
    },
    DeleteNote {
        key: u8,
    },
    Cas {
        key: u8,
        expected: Option<u8>,
        new: u8,
    },
    Inc {
        name: u8,
        by: i64,
    },
    Push {
        priority: i64,
        /// Seconds before it may be claimed.
        delay_s: i64,
        max_attempts: Option<i64>,
        /// One of two unique keys, or none.
        key: Option<u8>,
    },
    /// `retry_task` on a task (or an id no task has).
    Retry {
        which: usize,
    },
    /// `get_task`: its state and attempts as the model has them.
    GetTask {
        which: usize,
    },
    Claim {
        agent: u8,
        lease_s: i64,
    },
    Complete {
        which: usize,
    },
    Fail {
        which: usize,
        requeue: bool,
    },
    Extend {
        which: usize,
        lease_s: i64,
    },
    Register {
        agent: u8,
        ttl_s: i64,
    },
    Unregister {
        agent: u8,
    },
    ListAgents,
    Signal {
        event: u8,
    },
    ClearEvent {
        event: u8,
    },
    /// `wait_for_event` without parking (`wait_seconds` 0).
    PeekEvent {
        event: u8,
        last_seen: i64,
    },
}

fn step() -> impl Strategy<Value = Step> {
    let lock = 0..LOCKS;
    prop_oneof![
        4 => (lock.clone(), 0..AGENTS, 1..4i64, prop_oneof![Just(0i64), Just(1_000), Just(2_000), Just(7_000)])
            .prop_map(|(lock, agent, ttl_s, wait_ms)| Step::Lock { lock, agent, ttl_s, wait_ms }),
        2 => (lock.clone(), 0..8usize).prop_map(|(lock, which)| Step::Unlock { lock, which }),
        1 => (lock.clone(), 0..AGENTS).prop_map(|(lock, agent)| Step::UnlockByAgent { lock, agent }),
        1 => (lock, 0..8usize, 1..4i64).prop_map(|(lock, which, ttl_s)| Step::Renew { lock, which, ttl_s }),
        1 => (0..8usize).prop_map(|which| Step::Cancel { which }),
        4 => prop_oneof![1..1_200i64, 900..12_000i64].prop_map(|ms| Step::Advance { ms }),
        1 => (0..2u8, 0..3u8, proptest::option::of(1..4i64))
            .prop_map(|(key, value, ttl_s)| Step::SetNote { key, value, ttl_s }),
        1 => (0..2u8).prop_map(|key| Step::GetNote { key }),
        1 => (0..2u8).prop_map(|key| Step::DeleteNote { key }),
        1 => (0..2u8, proptest::option::of(0..3u8), 0..3u8)
            .prop_map(|(key, expected, new)| Step::Cas { key, expected, new }),
        1 => (0..2u8, prop_oneof![-3..4i64, Just(i64::MAX), Just(i64::MIN)])
            .prop_map(|(name, by)| Step::Inc { name, by }),
        1 => (0..3i64, prop_oneof![3 => Just(0i64), 1 => 1..3i64], proptest::option::of(1..3i64), proptest::option::of(0..2u8))
            .prop_map(|(priority, delay_s, max_attempts, key)| Step::Push { priority, delay_s, max_attempts, key }),
        1 => (0..8usize).prop_map(|which| Step::Retry { which }),
        1 => (0..8usize).prop_map(|which| Step::GetTask { which }),
        1 => (0..AGENTS, 1..4i64).prop_map(|(agent, lease_s)| Step::Claim { agent, lease_s }),
        1 => (0..8usize).prop_map(|which| Step::Complete { which }),
        1 => (0..8usize, any::<bool>()).prop_map(|(which, requeue)| Step::Fail { which, requeue }),
        1 => (0..8usize, 1..4i64).prop_map(|(which, lease_s)| Step::Extend { which, lease_s }),
        1 => (0..AGENTS, 1..6i64).prop_map(|(agent, ttl_s)| Step::Register { agent, ttl_s }),
        1 => (0..AGENTS).prop_map(|agent| Step::Unregister { agent }),
        1 => Just(Step::ListAgents),
        1 => (0..2u8).prop_map(|event| Step::Signal { event }),
        1 => (0..2u8).prop_map(|event| Step::ClearEvent { event }),
        1 => (0..2u8, 0..6i64).prop_map(|(event, last_seen)| Step::PeekEvent { event, last_seen }),
    ]
}

// ------------------------------------------------------------------ the model

#[derive(Clone)]
struct MLock {
    agent: u8,
    token: String,
    fence: i64,
    expires: i64,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum TState {
    Parked { call: u64, window_end: i64 },
    Grace { until: i64 },
}

#[derive(Clone)]
struct MTicket {
    id: u64,
    agent: u8,
    ttl_ms: i64,
    state: TState,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum TaskSt {
    Pending,
    Claimed,
    Completed,
    Failed,
    Dead,
}

impl TaskSt {
    fn name(self) -> &'static str {
        match self {
            TaskSt::Pending => "pending",
            TaskSt::Claimed => "claimed",
            TaskSt::Completed => "completed",
            TaskSt::Failed => "failed",
            TaskSt::Dead => "dead",
        }
    }
}

#[derive(Clone)]
struct MTask {
    priority: i64,
    state: TaskSt,
    lease: Option<(String, i64)>,
    lease_agent: Option<u8>,
    attempts: i64,
    ready_at: i64,
    max_attempts: Option<i64>,
    key: Option<u8>,
}

impl MTask {
    /// A failed attempt (a requeueing fail, a lapsed lease, a claimant gone): back to pending,
    /// or dead once its attempts are used up.
    fn attempt_failed(&mut self) {
        self.state = if self.max_attempts.is_some_and(|m| self.attempts >= m) {
            TaskSt::Dead
        } else {
            TaskSt::Pending
        };
        self.lease = None;
        self.lease_agent = None;
    }

    fn live(&self) -> bool {
        matches!(self.state, TaskSt::Pending | TaskSt::Claimed)
    }
}

/// What a parked caller is told, as the model expects it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum ParkedAnswer {
    Granted { fence: i64, expires_in: i64 },
    TimedOut { position: usize },
}

#[derive(Default, Clone)]
struct Model {
    now: i64,
    locks: [Option<MLock>; LOCKS],
    fences: [i64; LOCKS],
    lines: [VecDeque<MTicket>; LOCKS],
    next_ticket: u64,
    notes: HashMap<u8, (String, Option<i64>)>,
    counters: HashMap<u8, i64>,
    tasks: Vec<MTask>,
    /// Registered agents → presence deadline.
    agents: BTreeMap<u8, i64>,
    /// Events → (generation, generation at the last clear).
    events: HashMap<u8, (i64, i64)>,
    /// Answers parked callers got during the current step: call → (lock, answer).
    answered: BTreeMap<u64, (usize, ParkedAnswer)>,
}

impl Model {
    /// A rolled-back batch: the rows are as in `before`; what lives in memory (the lines of
    /// tickets, popped or in their grace) stays as it is now.
    fn restore_rows(&mut self, before: &Model) {
        self.locks = before.locks.clone();
        self.fences = before.fences;
        self.notes = before.notes.clone();
        self.counters = before.counters.clone();
        self.tasks = before.tasks.clone();
        self.agents = before.agents.clone();
        self.events = before.events.clone();
    }

    fn live(&self, i: usize) -> Option<&MLock> {
        self.locks[i].as_ref().filter(|l| l.expires > self.now)
    }

    fn grant(&mut self, i: usize, agent: u8, ttl_ms: i64) -> i64 {
        self.fences[i] += 1;
        self.locks[i] = Some(MLock {
            agent,
            token: String::new(), // filled in from the engine's answer
            fence: self.fences[i],
            expires: granted_expiry(self.now + ttl_ms),
        });
        self.fences[i]
    }

    /// Grants the head of a line if it is parked and the lock is free (or already its agent's).
    fn pump(&mut self) {
        let before = self.answered.len();
        self.pump_once();
        if self.answered.len() != before {
            self.pump();
        }
    }

    fn pump_once(&mut self) {
        for i in 0..LOCKS {
            let Some(head) = self.lines[i].front() else {
                continue;
            };
            let TState::Parked { call, .. } = head.state else {
                continue;
            };
            let (agent, ttl_ms) = (head.agent, head.ttl_ms);
            match self.live(i) {
                Some(l) if l.agent != agent => continue,
                Some(_) => {
                    let l = self.locks[i].as_mut().unwrap();
                    l.expires = refreshed_expiry(self.now + ttl_ms);
                    let fence = l.fence;
                    self.lines[i].pop_front();
                    self.answered.insert(
                        call,
                        (
                            i,
                            ParkedAnswer::Granted {
                                fence,
                                expires_in: ttl_ms / 1000,
                            },
                        ),
                    );
                }
                None => {
                    self.lines[i].pop_front();
                    let fence = self.grant(i, agent, ttl_ms);
                    self.answered.insert(
                        call,
                        (
                            i,
                            ParkedAnswer::Granted {
                                fence,
                                expires_in: ttl_ms / 1000,
                            },
                        ),
                    );
                }
            }
        }
    }

    /// The agent is gone: its locks are released and its leased tasks requeued.
    fn release_agent(&mut self, agent: u8) {
        self.agents.remove(&agent);
        for l in &mut self.locks {
            if l.as_ref().is_some_and(|l| l.agent == agent) {
                *l = None;
            }
        }
        for t in &mut self.tasks {
            if t.state == TaskSt::Claimed && t.lease_agent == Some(agent) {
                t.attempt_failed();
            }
        }
        // Places it kept between two windows are given up: nobody will come back for them.
        for line in &mut self.lines {
            line.retain(|t| !(t.agent == agent && matches!(t.state, TState::Grace { .. })));
        }
        self.pump();
    }

    /// Fires every deadline due at `now`, in the engine's order: by time, then by kind
    /// (lock expiry, lease expiry, ticket window, ticket grace), then by key.
    fn fire_due(&mut self) {
        loop {
            let mut due: Vec<(i64, u8, u64)> = Vec::new();
            for i in 0..LOCKS {
                if let Some(l) = &self.locks[i] {
                    if l.expires <= self.now {
                        due.push((l.expires, 0, i as u64));
                    }
                }
                for t in &self.lines[i] {
                    match t.state {
                        TState::Parked { window_end, .. } if window_end <= self.now => {
                            due.push((window_end, 3, t.id))
                        }
                        TState::Grace { until } if until <= self.now => due.push((until, 4, t.id)),
                        _ => {}
                    }
                }
            }
            for (a, at) in &self.agents {
                if *at <= self.now {
                    due.push((*at, 1, *a as u64));
                }
            }
            for (idx, t) in self.tasks.iter().enumerate() {
                if let (TaskSt::Claimed, Some((_, at))) = (t.state, &t.lease) {
                    if *at <= self.now {
                        due.push((*at, 2, idx as u64));
                    }
                }
            }
            let Some(&(_, kind, key)) = due.iter().min() else {
                return;
            };
            match kind {
                0 => self.locks[key as usize] = None,
                1 => self.release_agent(key as u8),
                2 => self.tasks[key as usize].attempt_failed(),
                3 => {
                    let now = self.now;
                    for i in 0..LOCKS {
                        if let Some(pos) = self.lines[i].iter().position(|t| t.id == key) {
                            let t = &mut self.lines[i][pos];
                            let TState::Parked { call, .. } = t.state else {
                                unreachable!()
                            };
                            t.state = TState::Grace {
                                until: now + WAKE_GRACE_SECONDS * 1000,
                            };
                            self.answered
                                .insert(call, (i, ParkedAnswer::TimedOut { position: pos + 1 }));
                        }
                    }
                }
                _ => {
                    for line in &mut self.lines {
                        line.retain(|t| t.id != key);
                    }
                }
            }
            self.pump();
        }
    }

    /// The earliest instant something is scheduled to happen.
    fn next_deadline(&self) -> Option<i64> {
        let locks = self.locks.iter().flatten().map(|l| l.expires);
        let tickets = self.lines.iter().flatten().map(|t| match t.state {
            TState::Parked { window_end, .. } => window_end,
            TState::Grace { until } => until,
        });
        let leases = self
            .tasks
            .iter()
            .filter(|t| t.state == TaskSt::Claimed)
            .filter_map(|t| t.lease.as_ref().map(|(_, at)| *at));
        let agents = self.agents.values().copied();
        locks.chain(tickets).chain(leases).chain(agents).min()
    }

    fn note(&self, key: u8) -> Option<&(String, Option<i64>)> {
        self.notes
            .get(&key)
            .filter(|(_, exp)| exp.is_none_or(|e| e > self.now))
    }

    fn leased(&self, id: i64, token: &str) -> bool {
        let Some(t) = usize::try_from(id - 1).ok().and_then(|i| self.tasks.get(i)) else {
            return false;
        };
        t.state == TaskSt::Claimed
            && t.lease
                .as_ref()
                .is_some_and(|(tok, at)| tok == token && *at > self.now)
    }
}

// ------------------------------------------------------------------ the harness

fn lock_name(i: usize) -> String {
    format!("l{i}")
}

fn agent_name(a: u8) -> String {
    format!("agent-{a}")
}

/// A lock answer out of its response.
fn lock_outcome(r: CoreResult<Response>) -> CoreResult<LockOutcome> {
    r.map(|r| match r {
        Response::LockResource(o) => o,
        other => panic!("lock_resource answered {other:?}"),
    })
}

fn by_token(token: String) -> Holder {
    Holder {
        lock_token: Some(token),
        agent_id: None,
    }
}

fn by_agent(agent_id: String) -> Holder {
    Holder {
        lock_token: None,
        agent_id: Some(agent_id),
    }
}

struct Harness {
    engine: Engine,
    clock: ManualClock,
    model: Model,
    next_call: u64,
    parked: BTreeMap<u64, (usize, oneshot::Receiver<CoreResult<Response>>)>,
    lock_tokens: [Vec<String>; LOCKS],
    leases: Vec<(i64, String)>,
    /// With a [`FaultyStore`]: its plan, and the fault armed for the current step.
    faults: Option<Faults>,
    fault: Option<Fault>,
    /// Parked answers read early (while sorting out a failed step), for `check_parked`.
    early: BTreeMap<u64, CoreResult<LockOutcome>>,
}

/// Runs one op through the harness's engine (with the step's fault armed, if any); on a storage
/// error, the step is sorted out as failed and the calling step returns.
macro_rules! op {
    ($h:expr, $call:expr, $tool:ident $(($args:expr))?) => {
        match $h.run_op($call, Request::$tool$(($args))?)? {
            Some(answer) => answer.map(|r| match r {
                Response::$tool(v) => v,
                other => panic!("{} answered {other:?}", stringify!($tool)),
            }),
            None => return $h.after_failed_op(),
        }
    };
}

impl Harness {
    fn new() -> Harness {
        Harness::with_store(Box::new(SqliteStore::open_in_memory().unwrap()))
    }

    /// A harness over `store`, which must be empty.
    fn with_store(store: Box<dyn Store>) -> Harness {
        let clock = ManualClock::new(1_000_000);
        let engine = Engine::new(store, Arc::new(clock.clone())).unwrap();
        Harness {
            engine,
            clock,
            model: Model {
                now: 1_000_000,
                next_ticket: 1,
                ..Model::default()
            },
            next_call: 1,
            parked: BTreeMap::new(),
            lock_tokens: Default::default(),
            leases: Vec::new(),
            faults: None,
            fault: None,
            early: BTreeMap::new(),
        }
    }

    /// A harness whose store fails when a step arms a fault.
    fn with_faults() -> Harness {
        let (store, faults) = FaultyStore::new(Box::new(SqliteStore::open_in_memory().unwrap()));
        let mut h = Harness::with_store(Box::new(store));
        // The first batch runs the housekeeping due at start; keep it out of the faulted steps.
        h.engine.process(vec![]);
        h.faults = Some(faults);
        h
    }

    /// Runs `op` in a batch of its own, with the step's fault armed. A fault that struck
    /// must show as a storage error, and a storage error must come from a fault; then a
    /// fault-free batch at the same instant does what the failure left to do (re-armed
    /// deadlines, unmoved lines). `None` if the op was answered with a storage error.
    fn run_op(
        &mut self,
        call: u64,
        request: Request,
    ) -> Result<Option<CoreResult<Response>>, TestCaseError> {
        let (tx, mut rx) = oneshot::channel();
        let struck = self.faulted(|e| {
            e.process(vec![Command::Call {
                call,
                request,
                reply: tx.into(),
            }])
        });
        let got = rx.try_recv().expect("answered within its batch");
        let storage = matches!(got, Err(CoreError::Storage(_)));
        prop_assert_eq!(
            storage,
            struck,
            "a storage error if and only if a fault struck"
        );
        Ok((!storage).then_some(got))
    }

    /// Runs `f` with the step's fault armed; true if it struck (then a recovery batch runs).
    fn faulted(&mut self, f: impl FnOnce(&mut Engine)) -> bool {
        let Some(faults) = self.faults.clone() else {
            f(&mut self.engine);
            return false;
        };
        let Some(fault) = self.fault.take() else {
            f(&mut self.engine);
            return false;
        };
        faults.arm(fault);
        f(&mut self.engine);
        let struck = faults.disarm();
        if struck {
            self.engine.process(vec![]);
        }
        struck
    }

    /// The op was refused with a storage error: its step was rolled back, so the model does not
    /// apply it. Parked callers its step answered were told the error and are out of line.
    fn after_failed_op(&mut self) -> Result<(), TestCaseError> {
        self.absorb_failed_parked();
        self.model.pump();
        self.model.fire_due();
        self.check_parked()
    }

    /// Parked callers answered with a storage error leave the model's lines (the engine took
    /// their tickets out before the grant that was rolled back); other answers are kept for
    /// `check_parked`.
    fn absorb_failed_parked(&mut self) {
        let calls: Vec<u64> = self.parked.keys().copied().collect();
        for call in calls {
            let rx = &mut self.parked.get_mut(&call).unwrap().1;
            match rx.try_recv() {
                Ok(Err(CoreError::Storage(_))) => {
                    self.parked.remove(&call);
                    for line in &mut self.model.lines {
                        line.retain(
                            |t| !matches!(t.state, TState::Parked { call: c, .. } if c == call),
                        );
                    }
                }
                Ok(other) => {
                    self.early.insert(call, lock_outcome(other));
                }
                Err(_) => {}
            }
        }
    }

    fn pick_lock_token(&self, lock: usize, which: usize) -> String {
        let seen = &self.lock_tokens[lock];
        seen.get(which % (seen.len() + 1))
            .cloned()
            .unwrap_or_else(|| "lk_not_a_token".into())
    }

    fn pick_lease(&self, which: usize) -> (i64, String) {
        self.leases
            .get(which % (self.leases.len() + 1))
            .cloned()
            .unwrap_or((1, "ls_not_a_token".into()))
    }

    fn step(&mut self, s: &Step) -> Result<(), TestCaseError> {
        let m = &mut self.model;
        m.answered.clear();
        match *s {
            Step::Lock {
                lock,
                agent,
                ttl_s,
                wait_ms,
            } => {
                let call = self.next_call;
                self.next_call += 1;
                let ttl_ms = ttl_s * 1000;
                let (tx, mut rx) = oneshot::channel();
                self.engine.process(vec![Command::Call {
                    call,
                    request: Request::LockResource(LockResource {
                        name: lock_name(lock),
                        agent_id: agent_name(agent),
                        ttl_seconds: Some(ttl_ms / 1000),
                        wait_seconds: Some(wait_ms / 1000),
                        wake_token: None,
                        shared: None,
                        limit: None,
                    }),
                    reply: tx.into(),
                }]);
                let m = &mut self.model;
                // An agent calling again while it keeps a place between two windows (even
                // without its wake token) stands in that place again: its answer comes from the
                // line, like a parked call's.
                let holds = matches!(m.live(lock), Some(l) if l.agent == agent);
                let kept = m.lines[lock]
                    .iter()
                    .position(|t| t.agent == agent && matches!(t.state, TState::Grace { .. }));
                if let (false, Some(pos)) = (holds, kept) {
                    let t = &mut m.lines[lock][pos];
                    t.state = TState::Parked {
                        call,
                        window_end: m.now + wait_ms,
                    };
                    t.ttl_ms = ttl_ms;
                    self.parked.insert(call, (lock, rx));
                    m.pump();
                    m.fire_due();
                    return self.check_parked();
                }
                let expect: Option<(i64, i64)> = match m.live(lock) {
                    Some(l) if l.agent == agent => {
                        let fence = l.fence;
                        m.locks[lock].as_mut().unwrap().expires = refreshed_expiry(m.now + ttl_ms);
                        Some((fence, ttl_s))
                    }
                    None if m.lines[lock].is_empty() => Some((m.grant(lock, agent, ttl_ms), ttl_s)),
                    _ if wait_ms == 0 => None,
                    _ => {
                        let id = m.next_ticket;
                        m.next_ticket += 1;
                        m.lines[lock].push_back(MTicket {
                            id,
                            agent,
                            ttl_ms,
                            state: TState::Parked {
                                call,
                                window_end: m.now + wait_ms,
                            },
                        });
                        self.parked.insert(call, (lock, rx));
                        m.pump();
                        m.fire_due();
                        return self.check_parked();
                    }
                };
                let got = lock_outcome(rx.try_recv().expect("answered at once")).unwrap();
                match (expect, got) {
                    (
                        Some((fence, expires_in)),
                        LockOutcome::Granted {
                            lock_token,
                            fence: f,
                            expires_in_seconds,
                            ..
                        },
                    ) => {
                        prop_assert_eq!((f, expires_in_seconds), (fence, expires_in));
                        self.model.locks[lock].as_mut().unwrap().token = lock_token.clone();
                        if !self.lock_tokens[lock].contains(&lock_token) {
                            self.lock_tokens[lock].push(lock_token);
                        }
                    }
                    (
                        None,
                        LockOutcome::Contended {
                            locked, wake_token, ..
                        },
                    ) => {
                        prop_assert!(!locked && wake_token.is_none());
                    }
                    (e, g) => prop_assert!(false, "lock: expected {:?}, got {:?}", e, g),
                }
            }
            Step::Unlock { lock, which } => {
                let token = self.pick_lock_token(lock, which);
                let got = op!(
                    self,
                    0,
                    UnlockResource(UnlockResource {
                        name: lock_name(lock),
                        holder: by_token(token.clone())
                    })
                )
                .unwrap();
                let m = &mut self.model;
                let ok = m.live(lock).is_some_and(|l| l.token == token);
                if ok {
                    m.locks[lock] = None;
                }
                prop_assert_eq!(got.released, ok);
            }
            Step::UnlockByAgent { lock, agent } => {
                let got = op!(
                    self,
                    0,
                    UnlockResource(UnlockResource {
                        name: lock_name(lock),
                        holder: by_agent(agent_name(agent))
                    })
                )
                .unwrap();
                let m = &mut self.model;
                let ok = m.live(lock).is_some_and(|l| l.agent == agent);
                if ok {
                    m.locks[lock] = None;
                }
                prop_assert_eq!(got.released, ok);
            }
            Step::Renew { lock, which, ttl_s } => {
                let token = self.pick_lock_token(lock, which);
                let got = op!(
                    self,
                    0,
                    RenewLock(RenewLock {
                        name: lock_name(lock),
                        holder: by_token(token.clone()),
                        ttl_seconds: Some(ttl_s)
                    })
                )
                .unwrap();
                let m = &mut self.model;
                let now = m.now;
                match m.locks[lock]
                    .as_mut()
                    .filter(|l| l.expires > now && l.token == token)
                {
                    Some(l) => {
                        l.expires = refreshed_expiry(now + ttl_s * 1000);
                        let expect = Renewed::Yes {
                            renewed: true,
                            expires_in_seconds: ttl_s,
                            fence: l.fence,
                        };
                        prop_assert_eq!(got, expect);
                    }
                    None => prop_assert!(
                        matches!(got, Renewed::No { renewed: false, .. }),
                        "renew: expected a refusal, got {:?}",
                        got
                    ),
                }
            }
            Step::Cancel { which } => {
                let calls: Vec<u64> = self.parked.keys().copied().collect();
                if calls.is_empty() {
                    return Ok(());
                }
                let call = calls[which % calls.len()];
                self.parked.remove(&call);
                self.engine.process(vec![Command::Cancel(call)]);
                let m = &mut self.model;
                for line in &mut m.lines {
                    line.retain(
                        |t| !matches!(t.state, TState::Parked { call: c, .. } if c == call),
                    );
                }
                m.pump();
            }
            Step::Advance { ms } => {
                // A punctual engine: the clock stops at every deadline on the way, so each fires
                // at its own instant (a late engine may legitimately pick another valid order).
                let target = self.model.now + ms;
                loop {
                    let next = self.model.next_deadline().filter(|&at| at <= target);
                    let to = next.unwrap_or(target);
                    self.clock.advance_ms(to - self.model.now);
                    self.model.now = to;
                    let before = self.faults.is_some().then(|| self.model.clone());
                    let fault = self.fault;
                    let struck = self.faulted(|e| e.process(vec![]));
                    if let (true, Some(Fault::Commit), Some(before)) = (struck, fault, before) {
                        // The batch handled what was due, then its commit failed: the rows are
                        // as before, what it did in memory stands, and everyone it answered was
                        // told the error. The batch after it handled the due deadlines again.
                        self.model.fire_due();
                        let failed = std::mem::take(&mut self.model.answered);
                        self.model.restore_rows(&before);
                        for call in failed.keys() {
                            let (_, rx) = self.parked.get_mut(call).unwrap();
                            let got = rx.try_recv();
                            prop_assert!(
                                matches!(got, Ok(Err(CoreError::Storage(_)))),
                                "call {} answered in a failed batch: {:?}",
                                call,
                                got
                            );
                            self.parked.remove(call);
                        }
                    }
                    self.model.fire_due();
                    if next.is_none() {
                        break;
                    }
                }
            }
            Step::SetNote { key, value, ttl_s } => {
                let got = op!(
                    self,
                    0,
                    SetNote(SetNote {
                        key: format!("k{key}"),
                        value: format!("v{value}"),
                        author: None,
                        ttl_seconds: ttl_s
                    })
                )
                .unwrap();
                prop_assert!(got.saved);
                let m = &mut self.model;
                let exp = ttl_s.map(|s| m.now + s * 1000);
                m.notes.insert(key, (format!("v{value}"), exp));
            }
            Step::GetNote { key } => {
                let got = op!(
                    self,
                    0,
                    GetNote(NoteKey {
                        key: format!("k{key}")
                    })
                )
                .unwrap();
                let m = &self.model;
                match (m.note(key), got) {
                    (None, GetNoteResult::Missing { found: false }) => {}
                    (Some((v, exp)), GetNoteResult::Found(n)) => {
                        prop_assert_eq!(&n.value, v);
                        prop_assert_eq!(n.expires_in_seconds, exp.map(|e| seconds_left(e, m.now)));
                    }
                    (e, g) => prop_assert!(false, "get_note: expected {:?}, got {:?}", e, g),
                }
            }
            Step::DeleteNote { key } => {
                let got = op!(
                    self,
                    0,
                    DeleteNote(NoteKey {
                        key: format!("k{key}")
                    })
                )
                .unwrap();
                let existed = self.model.note(key).is_some();
                self.model.notes.remove(&key);
                prop_assert_eq!(got.deleted, existed);
            }
            Step::Cas { key, expected, new } => {
                let expected = expected.map(|v| format!("v{v}")).unwrap_or_default();
                let got = op!(
                    self,
                    0,
                    SetNoteIf(SetNoteIf {
                        key: format!("k{key}"),
                        expected_value: expected.clone(),
                        new_value: format!("v{new}"),
                        author: None,
                        ttl_seconds: None
                    })
                )
                .unwrap();
                let m = &mut self.model;
                let current = m.note(key).map(|(v, _)| v.clone()).unwrap_or_default();
                let swap = current == expected;
                if swap {
                    m.notes.insert(key, (format!("v{new}"), None));
                }
                prop_assert_eq!(got.swapped, swap);
            }
            Step::Inc { name, by } => {
                let got = op!(
                    self,
                    0,
                    IncrementCounter(IncrementCounter {
                        name: format!("c{name}"),
                        by: Some(by)
                    })
                );
                let m = &mut self.model;
                let cur = m.counters.get(&name).copied().unwrap_or(0);
                match (cur.checked_add(by), got) {
                    (Some(next), Ok(v)) => {
                        prop_assert_eq!(v.value, next);
                        m.counters.insert(name, next);
                    }
                    (None, Err(CoreError::Invalid { field, .. })) => prop_assert_eq!(field, "by"),
                    (e, g) => prop_assert!(false, "increment: expected {:?}, got {:?}", e, g),
                }
            }
            Step::Push {
                priority,
                delay_s,
                max_attempts,
                key,
            } => {
                let id = self.model.tasks.len() as i64 + 1;
                let got = op!(
                    self,
                    0,
                    PushTask(PushTask {
                        queue: "q".into(),
                        payload: format!("p{id}"),
                        author: None,
                        priority: Some(priority),
                        delay_seconds: Some(delay_s),
                        max_attempts,
                        unique_key: key.map(|k| format!("k{k}")),
                    })
                )
                .unwrap();
                let live_with_key = key.and_then(|k| {
                    self.model
                        .tasks
                        .iter()
                        .position(|t| t.live() && t.key == Some(k))
                        .map(|i| i as i64 + 1)
                });
                match live_with_key {
                    Some(existing) => {
                        prop_assert_eq!((got.id, got.duplicate), (existing, true));
                    }
                    None => {
                        prop_assert_eq!((got.id, got.duplicate), (id, false));
                        let now = self.model.now;
                        self.model.tasks.push(MTask {
                            priority,
                            state: TaskSt::Pending,
                            lease: None,
                            lease_agent: None,
                            attempts: 0,
                            ready_at: now + delay_s * 1000,
                            max_attempts,
                            key,
                        });
                    }
                }
            }
            Step::Retry { which } => {
                let n = self.model.tasks.len();
                let id = (which % (n + 1)) as i64 + 1;
                let got = op!(self, 0, RetryTask(TaskId { id })).unwrap();
                let m = &mut self.model;
                let ok = m.tasks.get(id as usize - 1).is_some_and(|t| {
                    matches!(t.state, TaskSt::Dead | TaskSt::Failed)
                        && !t
                            .key
                            .is_some_and(|k| m.tasks.iter().any(|o| o.live() && o.key == Some(k)))
                });
                if ok {
                    let now = m.now;
                    let t = &mut m.tasks[id as usize - 1];
                    t.state = TaskSt::Pending;
                    t.attempts = 0;
                    t.ready_at = now;
                }
                prop_assert_eq!(got.retried, ok, "{:?}", got.error);
            }
            Step::GetTask { which } => {
                let n = self.model.tasks.len();
                let id = (which % (n + 1)) as i64 + 1;
                let got = op!(self, 0, GetTask(TaskId { id })).unwrap();
                match (self.model.tasks.get(id as usize - 1), got) {
                    (None, GetTaskResult::Missing { found: false }) => {}
                    (Some(t), GetTaskResult::Found { found: true, task }) => {
                        prop_assert_eq!(
                            (task.state.as_str(), task.attempts),
                            (t.state.name(), t.attempts)
                        );
                    }
                    (e, g) => prop_assert!(
                        false,
                        "get_task {}: expected {:?}, got {:?}",
                        id,
                        e.map(|t| t.state),
                        g
                    ),
                }
            }
            Step::Claim { agent, lease_s } => {
                let call = self.next_call;
                self.next_call += 1;
                let got = op!(
                    self,
                    call,
                    ClaimNextTask(ClaimNextTask {
                        queue: "q".into(),
                        agent_id: agent_name(agent),
                        lease_seconds: Some(lease_s),
                        wait_seconds: Some(0)
                    })
                )
                .unwrap();
                let m = &mut self.model;
                let next = m
                    .tasks
                    .iter()
                    .enumerate()
                    .filter(|(_, t)| t.state == TaskSt::Pending && t.ready_at <= m.now)
                    .min_by_key(|(i, t)| (-t.priority, *i))
                    .map(|(i, _)| i);
                match (next, got) {
                    (None, ClaimOutcome::Empty { claimed: false }) => {}
                    (
                        Some(i),
                        ClaimOutcome::Claimed {
                            id,
                            payload,
                            lease_token,
                            lease_expires_in_seconds,
                            attempts,
                            ..
                        },
                    ) => {
                        let t = &mut m.tasks[i];
                        t.state = TaskSt::Claimed;
                        t.attempts += 1;
                        t.lease = Some((lease_token.clone(), m.now + lease_s * 1000));
                        t.lease_agent = Some(agent);
                        prop_assert_eq!(id, i as i64 + 1);
                        prop_assert_eq!(payload, format!("p{id}"));
                        prop_assert_eq!(lease_expires_in_seconds, lease_s);
                        prop_assert_eq!(attempts, t.attempts);
                        self.leases.push((id, lease_token));
                    }
                    (e, g) => prop_assert!(false, "claim: expected task {:?}, got {:?}", e, g),
                }
            }
            Step::Complete { which } => {
                let (id, token) = self.pick_lease(which);
                let got = op!(
                    self,
                    0,
                    CompleteTask(Lease {
                        id,
                        lease_token: token.clone(),
                        result: None,
                    })
                )
                .unwrap();
                let ok = self.model.leased(id, &token);
                if ok {
                    let t = &mut self.model.tasks[id as usize - 1];
                    t.state = TaskSt::Completed;
                    t.lease = None;
                    t.lease_agent = None;
                }
                prop_assert_eq!(got.completed, ok);
            }
            Step::Fail { which, requeue } => {
                let (id, token) = self.pick_lease(which);
                let got = op!(
                    self,
                    0,
                    FailTask(FailTask {
                        id,
                        lease_token: token.clone(),
                        requeue: Some(requeue),
                        error: None,
                    })
                )
                .unwrap();
                let ok = self.model.leased(id, &token);
                if ok {
                    let t = &mut self.model.tasks[id as usize - 1];
                    if requeue {
                        t.attempt_failed();
                    } else {
                        t.state = TaskSt::Failed;
                        t.lease = None;
                        t.lease_agent = None;
                    }
                }
                prop_assert_eq!(got.failed, ok);
            }
            Step::Extend { which, lease_s } => {
                let (id, token) = self.pick_lease(which);
                let got = op!(
                    self,
                    0,
                    ExtendLease(ExtendLease {
                        id,
                        lease_token: token.clone(),
                        lease_seconds: Some(lease_s)
                    })
                )
                .unwrap();
                let ok = self.model.leased(id, &token);
                if ok {
                    let now = self.model.now;
                    self.model.tasks[id as usize - 1].lease = Some((token, now + lease_s * 1000));
                    prop_assert_eq!(got.lease_expires_in_seconds, Some(lease_s));
                }
                prop_assert_eq!(got.extended, ok);
            }
            Step::Register { agent, ttl_s } => {
                let got = op!(
                    self,
                    0,
                    RegisterAgent(RegisterAgent {
                        agent_id: agent_name(agent),
                        ttl_seconds: Some(ttl_s)
                    })
                )
                .unwrap();
                prop_assert_eq!((got.registered, got.expires_in_seconds), (true, ttl_s));
                let now = self.model.now;
                self.model.agents.insert(agent, now + ttl_s * 1000);
            }
            Step::Unregister { agent } => {
                let got = op!(
                    self,
                    0,
                    UnregisterAgent(AgentId {
                        agent_id: agent_name(agent)
                    })
                )
                .unwrap();
                prop_assert!(got.unregistered);
                self.model.release_agent(agent);
            }
            Step::Signal { event } => {
                let got = op!(
                    self,
                    0,
                    SignalEvent(EventName {
                        name: format!("e{event}")
                    })
                )
                .unwrap();
                let e = self.model.events.entry(event).or_default();
                e.0 += 1;
                prop_assert_eq!(got.generation, e.0);
            }
            Step::ClearEvent { event } => {
                let got = op!(
                    self,
                    0,
                    ClearEvent(EventName {
                        name: format!("e{event}")
                    })
                )
                .unwrap();
                prop_assert!(got.cleared);
                let e = self.model.events.entry(event).or_default();
                e.1 = e.0;
            }
            Step::PeekEvent { event, last_seen } => {
                let call = self.next_call;
                self.next_call += 1;
                let got = op!(
                    self,
                    call,
                    WaitForEvent(WaitForEvent {
                        name: format!("e{event}"),
                        last_seen_generation: Some(last_seen),
                        wait_seconds: Some(0)
                    })
                )
                .unwrap();
                let (generation, cleared) =
                    self.model.events.get(&event).copied().unwrap_or_default();
                prop_assert_eq!(
                    (got.generation, got.fired),
                    (generation, generation > last_seen.max(cleared))
                );
            }
            Step::ListAgents => {
                let got = op!(self, 0, ListAgents(ListPage::default())).unwrap();
                assert_eq!(
                    got.next_cursor, None,
                    "the model has fewer agents than a page"
                );
                let m = &self.model;
                let expect: Vec<(String, i64, usize, usize)> = m
                    .agents
                    .iter()
                    .filter(|(_, at)| **at > m.now)
                    .map(|(a, at)| {
                        let locks = (0..LOCKS)
                            .filter(|i| m.live(*i).is_some_and(|l| l.agent == *a))
                            .count();
                        let leases = m
                            .tasks
                            .iter()
                            .filter(|t| t.state == TaskSt::Claimed && t.lease_agent == Some(*a))
                            .filter(|t| t.lease.as_ref().is_some_and(|(_, e)| *e > m.now))
                            .count();
                        (agent_name(*a), seconds_left(*at, m.now), locks, leases)
                    })
                    .collect();
                let got: Vec<(String, i64, usize, usize)> = got
                    .items
                    .into_iter()
                    .map(|a| {
                        (
                            a.agent_id,
                            a.expires_in_seconds,
                            a.locks_held,
                            a.leases_held,
                        )
                    })
                    .collect();
                prop_assert_eq!(got, expect);
            }
        }
        self.model.pump();
        self.check_parked()
    }

    /// Every parked caller the model says was answered this step got exactly that answer; the
    /// others are still waiting.
    fn check_parked(&mut self) -> Result<(), TestCaseError> {
        let calls: Vec<u64> = self.parked.keys().copied().collect();
        for call in calls {
            let (lock, rx) = self.parked.get_mut(&call).unwrap();
            let lock = *lock;
            let got = match self.early.remove(&call) {
                Some(answer) => Ok(answer),
                None => rx.try_recv().map(lock_outcome),
            };
            match (self.model.answered.remove(&call), got) {
                (None, Err(oneshot::error::TryRecvError::Empty)) => {}
                (Some((_, ParkedAnswer::Granted { fence, expires_in })), Ok(Ok(o))) => {
                    let LockOutcome::Granted {
                        lock_token,
                        fence: f,
                        expires_in_seconds,
                        ..
                    } = o
                    else {
                        prop_assert!(false, "call {}: expected a grant, got {:?}", call, o);
                        unreachable!()
                    };
                    prop_assert_eq!((f, expires_in_seconds), (fence, expires_in));
                    // The grant may already have expired (and moved on) later in the same advance.
                    if let Some(l) = self.model.locks[lock].as_mut().filter(|l| l.fence == f) {
                        l.token = lock_token.clone();
                    }
                    self.lock_tokens[lock].push(lock_token);
                    self.parked.remove(&call);
                }
                (Some((_, ParkedAnswer::TimedOut { position })), Ok(Ok(o))) => {
                    let LockOutcome::Contended {
                        locked: false,
                        wake_token: Some(_),
                        queue_position,
                        ..
                    } = o
                    else {
                        prop_assert!(false, "call {}: expected a timeout, got {:?}", call, o);
                        unreachable!()
                    };
                    prop_assert_eq!(queue_position, Some(position));
                    self.parked.remove(&call);
                }
                (e, g) => {
                    prop_assert!(false, "parked call {}: expected {:?}, got {:?}", call, e, g)
                }
            }
        }
        prop_assert!(
            self.model.answered.is_empty(),
            "the model answered calls the engine did not: {:?}",
            self.model.answered
        );
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(256),
        max_shrink_iters: 4096,
        ..ProptestConfig::default()
    })]

    #[test]
    fn the_engine_matches_the_model(steps in proptest::collection::vec(step(), 1..80)) {
        let mut h = Harness::new();
        for s in &steps {
            h.step(s)?;
        }
    }
}

fn fault() -> impl Strategy<Value = Fault> {
    prop_oneof![
        1 => Just(Fault::Begin),
        1 => Just(Fault::Savepoint),
        1 => Just(Fault::Release),
        3 => Just(Fault::Commit),
        3 => (0..6u32, any::<bool>()).prop_map(|(nth, after)| Fault::Statement { nth, after }),
    ]
}

/// Whether the harness can tell what `fault` during `step` must leave behind. Not for steps
/// whose op changes the lines in memory before its rows (a parked lock call, a cancel, an
/// unregister): their failed step leaves that change standing, which the model does not
/// follow. Time advances only get faults of the whole batch (its begin or its commit): a
/// failed deadline alone is retried after the others, an order the punctual model does not
/// follow either.
fn faultable(step: &Step, fault: Fault) -> bool {
    match step {
        Step::Lock { .. } | Step::Cancel { .. } | Step::Unregister { .. } => false,
        Step::Advance { .. } => matches!(fault, Fault::Begin | Fault::Commit),
        _ => true,
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(256),
        max_shrink_iters: 4096,
        ..ProptestConfig::default()
    })]

    /// Storage faults (a failed begin, savepoint, release, statement or commit) injected into
    /// the store under random sequences: every answer still equals the model's, where a step
    /// that failed is one that did not happen (its caller told the error), and a batch whose
    /// commit failed is redone by the next. No answer is ever contradicted by the state after.
    #[test]
    fn storage_faults_never_contradict_an_answer(
        steps in proptest::collection::vec(
            (step(), proptest::option::weighted(0.4, fault())),
            1..80,
        )
    ) {
        let mut h = Harness::with_faults();
        for (s, fault) in &steps {
            h.fault = fault.filter(|f| faultable(s, *f));
            h.step(s)?;
        }
    }
}

/// Sequences that once failed (each a bug in the model, kept because they pin engine behaviour:
/// a late deadline, a grant that expires within one advance, two parked calls of one agent).
#[test]
fn regressions() {
    for steps in regression_cases() {
        let mut h = Harness::new();
        for s in &steps {
            h.step(s).unwrap_or_else(|e| panic!("{e} in {steps:?}"));
        }
    }
}

fn regression_cases() -> Vec<Vec<Step>> {
    use Step::*;
    vec![
        vec![
            Lock {
                lock: 1,
                agent: 0,
                ttl_s: 1,
                wait_ms: 0,
            },
            Advance { ms: 1000 },
            Lock {
                lock: 1,
                agent: 0,
                ttl_s: 1,
                wait_ms: 0,
            },
            Lock {
                lock: 1,
                agent: 2,
                ttl_s: 2,
                wait_ms: 2000,
            },
            Unlock { lock: 1, which: 1 },
            Lock {
                lock: 1,
                agent: 0,
                ttl_s: 1,
                wait_ms: 2000,
            },
            Advance { ms: 2000 },
        ],
        vec![
            Lock {
                lock: 0,
                agent: 0,
                ttl_s: 1,
                wait_ms: 0,
            },
            Lock {
                lock: 0,
                agent: 1,
                ttl_s: 1,
                wait_ms: 0,
            },
            Lock {
                lock: 0,
                agent: 1,
                ttl_s: 1,
                wait_ms: 2000,
            },
            Advance { ms: 2000 },
        ],
        vec![
            Lock {
                lock: 0,
                agent: 0,
                ttl_s: 1,
                wait_ms: 0,
            },
            Lock {
                lock: 0,
                agent: 2,
                ttl_s: 1,
                wait_ms: 2000,
            },
            Lock {
                lock: 0,
                agent: 2,
                ttl_s: 1,
                wait_ms: 2000,
            },
            Advance { ms: 2000 },
        ],
    ]
}

// ------------------------------------------------------------------ on PostgreSQL

/// One database for a whole property: the engine calls the store from its own (non-runtime)
/// thread, so queries run on a multi-thread runtime of the test's; each sequence gets a fresh
/// connection and store on emptied tables.
struct PgCases {
    rt: tokio::runtime::Runtime,
    db: TestDb,
    admin: tokio_postgres::Client,
}

impl PgCases {
    fn start(test: &str) -> Option<PgCases> {
        let url = testing::admin_url_or_skip(test)?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let (db, admin) = rt.block_on(async {
            let db = TestDb::create(&url).await.unwrap();
            let mut admin = db.connect().await.unwrap();
            airlock::store::postgres::migrate(&mut admin).await.unwrap();
            (db, admin)
        });
        Some(PgCases { rt, db, admin })
    }

    fn harness(&self) -> Harness {
        self.rt.block_on(testing::reset(&self.admin)).unwrap();
        Harness::with_store(Box::new(self.db.store(&self.rt).unwrap()))
    }
}

#[test]
fn the_engine_matches_the_model_on_postgres() {
    let Some(pg) = PgCases::start("the_engine_matches_the_model_on_postgres") else {
        return;
    };
    let config = ProptestConfig {
        cases: std::env::var("PROPTEST_CASES_POSTGRES")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(48),
        max_shrink_iters: 1024,
        ..ProptestConfig::default()
    };
    let mut runner = proptest::test_runner::TestRunner::new(config);
    let outcome = runner.run(&proptest::collection::vec(step(), 1..80), |steps| {
        let mut h = pg.harness();
        for s in &steps {
            h.step(s)?;
        }
        Ok(())
    });
    if let Err(e) = outcome {
        panic!("{e}");
    }
}

#[test]
fn regressions_on_postgres() {
    let Some(pg) = PgCases::start("regressions_on_postgres") else {
        return;
    };
    for steps in regression_cases() {
        let mut h = pg.harness();
        for s in &steps {
            h.step(s).unwrap_or_else(|e| panic!("{e} in {steps:?}"));
        }
    }
}

/// One storage error fails its own caller only: the operations batched with it (one
/// transaction, one savepoint each) are committed and answered as if it had not happened.
#[test]
fn a_failed_operation_does_not_fail_its_batch() {
    let (mut e, faults) = faulty_engine(Box::new(SqliteStore::open_in_memory().unwrap()));
    let set = |key: &str| {
        let (tx, rx) = oneshot::channel();
        let request = Request::SetNote(SetNote {
            key: key.into(),
            value: "v".into(),
            author: None,
            ttl_seconds: None,
        });
        let call = Command::Call {
            call: 0,
            request,
            reply: tx.into(),
        };
        (call, rx)
    };
    let saved = |r: CoreResult<Response>| matches!(r, Ok(Response::SetNote(s)) if s.saved);
    let (a, mut ra) = set("a");
    let (b, mut rb) = set("b");
    let (c, mut rc) = set("c");
    // The second statement of the batch is `b`'s write: it runs, then reports a failure.
    faults.arm(Fault::Statement {
        nth: 1,
        after: true,
    });
    e.process(vec![a, b, c]);
    assert!(faults.disarm());
    assert!(saved(ra.try_recv().unwrap()));
    assert!(matches!(rb.try_recv().unwrap(), Err(CoreError::Storage(_))));
    assert!(saved(rc.try_recv().unwrap()));
    let found = |e: &mut Engine, key: &str| {
        let (tx, mut rx) = oneshot::channel();
        e.process(vec![Command::Call {
            call: 0,
            request: Request::GetNote(NoteKey { key: key.into() }),
            reply: tx.into(),
        }]);
        matches!(
            rx.try_recv().unwrap(),
            Ok(Response::GetNote(GetNoteResult::Found(_)))
        )
    };
    assert!(found(&mut e, "a"));
    assert!(!found(&mut e, "b"), "the failed write was rolled back");
    assert!(found(&mut e, "c"));
}

/// A step's savepoint is opened by its first statement: a step that never reaches the store (a
/// cancel of a call that is parked nowhere, a batch with nothing to do) sends no `SAVEPOINT` or
/// `RELEASE`, and a step that does is covered from its first statement to its last.
#[test]
fn a_savepoint_only_around_a_step_that_reaches_the_store() {
    let (mut e, faults) = faulty_engine(Box::new(SqliteStore::open_in_memory().unwrap()));
    faults.take_log();
    e.process(vec![Command::Cancel(42), Command::Cancel(43)]);
    assert_eq!(faults.take_log(), ["begin", "commit"]);
    let (tx, mut rx) = oneshot::channel();
    let set = Request::SetNote(SetNote {
        key: "k".into(),
        value: "v".into(),
        author: None,
        ttl_seconds: None,
    });
    e.process(vec![
        Command::Cancel(44),
        Command::Call {
            call: 0,
            request: set,
            reply: tx.into(),
        },
        Command::Cancel(45),
    ]);
    assert!(matches!(rx.try_recv().unwrap(), Ok(Response::SetNote(s)) if s.saved));
    let log = faults.take_log();
    assert_eq!(log.first(), Some(&"begin"), "{log:?}");
    assert_eq!(log.get(1), Some(&"savepoint"), "{log:?}");
    assert!(log.len() > 4, "the write's statements: {log:?}");
    assert_eq!(
        &log[log.len() - 2..],
        ["release_savepoint", "commit"],
        "{log:?}"
    );
    assert_eq!(
        log.iter().filter(|m| m.contains("savepoint")).count(),
        2,
        "one savepoint, for the one step that wrote: {log:?}"
    );
}

/// A savepoint opened at a step's first statement that cannot be opened fails the batch, as one
/// opened at the step's start did (nothing of it is acknowledged), and the next batch commits.
/// (A failed statement failing its own step alone: `a_failed_operation_does_not_fail_its_batch`.)
#[test]
fn a_lazy_savepoint_keeps_failures_to_their_step() {
    let (mut e, faults) = faulty_engine(Box::new(SqliteStore::open_in_memory().unwrap()));
    let set = |key: &str| {
        let (tx, rx) = oneshot::channel();
        let request = Request::SetNote(SetNote {
            key: key.into(),
            value: "v".into(),
            author: None,
            ttl_seconds: None,
        });
        let call = Command::Call {
            call: 0,
            request,
            reply: tx.into(),
        };
        (call, rx)
    };
    let saved = |r: CoreResult<Response>| matches!(r, Ok(Response::SetNote(s)) if s.saved);
    // The first savepoint asked for (`a`'s; the cancel before it needed none) cannot be opened:
    // the batch cannot commit, so nobody is told it saved anything.
    let (a, mut ra) = set("a");
    let (b, mut rb) = set("b");
    faults.arm(Fault::Savepoint);
    faults.take_log();
    e.process(vec![Command::Cancel(7), a, b]);
    assert!(faults.disarm(), "the first write's savepoint was the fault");
    assert!(matches!(ra.try_recv().unwrap(), Err(CoreError::Storage(_))));
    assert!(matches!(rb.try_recv().unwrap(), Err(CoreError::Storage(_))));
    let log = faults.take_log();
    assert_eq!(
        log,
        ["begin", "savepoint"],
        "nothing more reached the store"
    );
    // The next batch commits both, each in its own savepoint.
    let (a, mut ra) = set("a");
    let (b, mut rb) = set("b");
    e.process(vec![a, b]);
    assert!(saved(ra.try_recv().unwrap()));
    assert!(saved(rb.try_recv().unwrap()));
}

/// `list_agents` and the status snapshot run on the engine thread: they read counts grouped by
/// the store and previews of note values and task payloads cut by the store's query, never
/// every task (payloads included) or a whole value; `GET /metrics` reads no value at all.
#[test]
fn summaries_read_counts_not_rows() {
    summaries_read(Box::new(SqliteStore::open_in_memory().unwrap()));
}

#[test]
fn summaries_read_counts_not_rows_on_postgres() {
    let Some(pg) = PgCases::start("summaries_read_counts_not_rows_on_postgres") else {
        return;
    };
    summaries_read(Box::new(pg.db.store(&pg.rt).unwrap()));
}

fn summaries_read(store: Box<dyn Store>) {
    let (mut e, faults) = faulty_engine(store);
    let send = one_call;
    send(
        &mut e,
        Request::SetNote(SetNote {
            key: "big".into(),
            value: "é".repeat(10_000),
            author: None,
            ttl_seconds: None,
        }),
    )
    .unwrap();
    send(
        &mut e,
        Request::PushTask(PushTask {
            queue: "q".into(),
            payload: "ü".repeat(10_000),
            author: None,
            priority: None,
            delay_seconds: None,
            max_attempts: None,
            unique_key: None,
        }),
    )
    .unwrap();
    faults.take_log();
    faults.take_page_reads();
    assert!(send(&mut e, Request::ListAgents(ListPage::default())).is_ok());
    let Ok(Response::Status(status)) = send(&mut e, Request::Status(Default::default())) else {
        panic!("status answered otherwise")
    };
    let log = faults.take_log();
    for rows in ["task_list", "note_list"] {
        assert!(!log.contains(&rows), "{rows} was read: {log:?}");
    }
    // Each page asked the store for a preview, not the whole values.
    let reads = faults.take_page_reads();
    for page in ["note_page", "task_page"] {
        assert!(reads.iter().any(|(p, _)| *p == page), "{reads:?}");
    }
    for (page, values) in &reads {
        assert!(
            matches!(values, Values::Preview(n) if *n <= 1_000),
            "{page} read {values:?}"
        );
    }
    let value = &status.notes[0].value;
    assert!(
        value.chars().count() < 200 && value.ends_with('…'),
        "{value}"
    );
    let payload = &status.tasks[0].payload;
    assert!(
        payload.chars().count() < 300 && payload.ends_with('…'),
        "{payload}"
    );
    // The metrics scrape pages through the snapshot without the notes and the open tasks.
    let core = EngineCore(std::sync::Mutex::new(e));
    let view = futures::executor::block_on(airlock::metrics::whole_status(&core)).unwrap();
    assert_eq!(view.queues.len(), 1);
    let reads = faults.take_page_reads();
    assert!(reads.is_empty(), "the metrics read values: {reads:?}");
    for rows in ["task_list", "note_list"] {
        assert!(!faults.take_log().contains(&rows), "{rows} was read");
    }
}

/// The engine as a [`CoreApi`], one call per batch (for code that takes a core, such as the
/// metrics scrape).
struct EngineCore(std::sync::Mutex<Engine>);

impl CoreApi for EngineCore {
    fn call(
        &self,
        request: Request,
        _progress: Option<airlock::core::ProgressFn>,
    ) -> futures::future::BoxFuture<'_, CoreResult<Response>> {
        let (tx, mut rx) = oneshot::channel();
        self.0.lock().unwrap().process(vec![Command::Call {
            call: 0,
            request,
            reply: tx.into(),
        }]);
        let answer = rx.try_recv().unwrap();
        Box::pin(async move { answer })
    }

    fn drain(&self) -> futures::future::BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

/// The audit history holds what committed and nothing else: a step rolled back to its savepoint
/// (its release and its entry with it) and a batch whose commit failed leave no entry, and the
/// lock is still held by the one the history says holds it.
#[test]
fn the_history_records_only_what_committed() {
    let (mut e, faults) = faulty_engine(Box::new(SqliteStore::open_in_memory().unwrap()));
    let call = one_call;
    let lock = Request::LockResource(LockResource {
        name: "x".into(),
        agent_id: "a".into(),
        ttl_seconds: Some(60),
        wait_seconds: Some(0),
        wake_token: None,
        shared: None,
        limit: None,
    });
    let Ok(Response::LockResource(LockOutcome::Granted { lock_token, .. })) = call(&mut e, lock)
    else {
        panic!("not granted")
    };
    let unlock = Request::UnlockResource(UnlockResource {
        name: "x".into(),
        holder: Holder {
            lock_token: Some(lock_token),
            agent_id: None,
        },
    });
    let kinds = |e: &mut Engine| {
        let all = Request::GetHistory(GetHistory {
            limit: Some(1000),
            ..GetHistory::default()
        });
        match call(e, all) {
            Ok(Response::GetHistory(page)) => page
                .items
                .iter()
                .map(|h| h.kind.as_str())
                .collect::<Vec<_>>(),
            other => panic!("{other:?}"),
        }
    };
    // The unlock's statements: read the holders, delete the holder, append the entry. The append
    // runs and reports a failure: the step is rolled back, release and entry alike.
    faults.take_log();
    faults.arm(Fault::Statement {
        nth: 2,
        after: true,
    });
    assert!(matches!(
        call(&mut e, unlock.clone()),
        Err(CoreError::Storage(_))
    ));
    assert!(faults.disarm());
    assert!(faults.take_log().contains(&"history_append"));
    assert_eq!(kinds(&mut e), ["grant"]);
    // The commit fails: nothing of the batch stands.
    faults.arm(Fault::Commit);
    assert!(matches!(
        call(&mut e, unlock.clone()),
        Err(CoreError::Storage(_))
    ));
    assert!(faults.disarm());
    assert_eq!(kinds(&mut e), ["grant"]);
    // Then it goes through, and the history says so.
    assert!(matches!(
        call(&mut e, unlock),
        Ok(Response::UnlockResource(airlock::core::Released {
            released: true,
            ..
        }))
    ));
    assert_eq!(kinds(&mut e), ["release", "grant"]);
}

/// An engine over `store` behind the fault store, past its first (empty) batch.
fn faulty_engine(store: Box<dyn Store>) -> (Engine, Faults) {
    let (store, faults) = FaultyStore::new(store);
    let clock = ManualClock::new(1_000_000);
    let mut e = Engine::new(Box::new(store), Arc::new(clock)).unwrap();
    e.process(vec![]);
    (e, faults)
}

/// `request` as one call in a batch of its own, and its answer.
fn one_call(e: &mut Engine, request: Request) -> CoreResult<Response> {
    let (tx, mut rx) = oneshot::channel();
    e.process(vec![Command::Call {
        call: 0,
        request,
        reply: tx.into(),
    }]);
    rx.try_recv().unwrap()
}
