//! Property-based state-machine test of shared locks and semaphores (issue 18): random
//! sequences of exclusive, shared and semaphore (`limit` 1 or 2) `lock_resource` calls (tries
//! and parked waits), unlocks and renewals by token or agent id, agents leaving, and time
//! advances (holds expiring at their instant) run through `Engine::process` on an in-memory
//! SQLite store (and PostgreSQL when `AIRLOCK_TEST_POSTGRES` names a server) with a
//! `ManualClock`, against a small model of the rules:
//!
//! - a name's holders are one exclusive holder, or shared holders (at most `limit` with one);
//! - a newcomer is granted at once only when nobody waits and its mode is admitted; otherwise it
//!   parks at the back of the line, and lines move strictly in order: the head is granted as
//!   soon as it is admitted, then the next, so an exclusive waiter blocks later shared ones;
//! - every caller of a held or awaited name gives the same `limit`, and an agent holding a name
//!   asks for it in the mode it holds it in; a mismatch is refused and changes nothing;
//! - every grant takes the next fence of its name.
//!
//! After every step each answer (the direct one and every parked caller's), and `list_locks`
//! (holder, mode, limit, fence, line length), must equal the model's, and the invariants hold:
//! at most one exclusive holder, never beside a shared one, never more than `limit` holders.
//!
//! Waits are 50 s and the sequence's time stays under 45 s, so no wait window ends (the wake
//! token and its grace are `tests/model.rs`'s).
//!
//! `PROPTEST_CASES` sets how many sequences run on SQLite (default 256);
//! `PROPTEST_CASES_POSTGRES` how many run on PostgreSQL (default 32).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use airlock::clock::ManualClock;
use airlock::core::engine::{Command, Engine};
use airlock::core::request::*;
use airlock::core::{CoreError, CoreResult, LockOutcome, Renewed};
use airlock::store::sqlite::SqliteStore;
use airlock::store::Store;
use airlock::testkit::postgres::{self as testing, TestDb};
use proptest::prelude::*;
use tokio::sync::oneshot;

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
const AGENTS: u8 = 4;
/// Time advances stop here, before any 50 s wait window could end.
const MAX_ELAPSED_MS: i64 = 45_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Exclusive,
    Shared,
    Limit(i64),
}

impl Mode {
    fn shared(self) -> bool {
        self != Mode::Exclusive
    }

    fn limit(self) -> Option<i64> {
        match self {
            Mode::Limit(n) => Some(n),
            _ => None,
        }
    }

    fn args(self, args: &mut LockResource) {
        match self {
            Mode::Exclusive => {}
            Mode::Shared => args.shared = Some(true),
            Mode::Limit(n) => args.limit = Some(n),
        }
    }
}

#[derive(Debug, Clone)]
enum Step {
    Lock {
        lock: usize,
        agent: u8,
        mode: Mode,
        wait: bool,
        ttl_s: i64,
    },
    /// By the agent's token when the model knows one, else by agent id.
    Unlock {
        lock: usize,
        agent: u8,
        by_id: bool,
    },
    Renew {
        lock: usize,
        agent: u8,
        ttl_s: i64,
    },
    Unregister {
        agent: u8,
    },
    Advance {
        ms: i64,
    },
}

fn mode() -> impl Strategy<Value = Mode> {
    prop_oneof![
        2 => Just(Mode::Exclusive),
        3 => Just(Mode::Shared),
        2 => (1..3i64).prop_map(Mode::Limit),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (0..LOCKS, 0..AGENTS, mode(), any::<bool>(), 1..6i64).prop_map(
            |(lock, agent, mode, wait, ttl_s)| Step::Lock { lock, agent, mode, wait, ttl_s }
        ),
        3 => (0..LOCKS, 0..AGENTS, any::<bool>())
            .prop_map(|(lock, agent, by_id)| Step::Unlock { lock, agent, by_id }),
        1 => (0..LOCKS, 0..AGENTS, 1..6i64)
            .prop_map(|(lock, agent, ttl_s)| Step::Renew { lock, agent, ttl_s }),
        1 => (0..AGENTS).prop_map(|agent| Step::Unregister { agent }),
        3 => (1..3_000i64).prop_map(|ms| Step::Advance { ms }),
    ]
}

#[derive(Debug, Clone)]
struct MHolder {
    agent: u8,
    mode: Mode,
    fence: i64,
    expires_at: i64,
    token: String,
}

#[derive(Debug, Clone)]
struct MTicket {
    call: u64,
    agent: u8,
    mode: Mode,
    ttl_ms: i64,
}

#[derive(Debug, Default, Clone)]
struct MName {
    holders: Vec<MHolder>,
    line: VecDeque<MTicket>,
    last_fence: i64,
}

fn admits(holders: &[MHolder], mode: Mode) -> bool {
    match mode {
        Mode::Exclusive => holders.is_empty(),
        _ => {
            holders.iter().all(|h| h.mode.shared())
                && mode.limit().is_none_or(|n| (holders.len() as i64) < n)
        }
    }
}

fn lock_name(i: usize) -> String {
    format!("lock-{i}")
}

fn agent_name(a: u8) -> String {
    format!("agent-{a}")
}

/// A row of `list_locks`: name, agent, fence, mode, limit, waiters, holders.
type Listed = (String, String, i64, String, Option<i64>, u64, u64);

struct Harness {
    engine: Engine,
    clock: ManualClock,
    now: i64,
    start: i64,
    names: [MName; LOCKS],
    next_call: u64,
    /// Parked call → its lock and the model's pending answer (`Some(fence)` once granted).
    parked: BTreeMap<u64, (usize, oneshot::Receiver<CoreResult<Response>>)>,
    /// Calls the model granted this step: call → (lock, agent, fence).
    granted: BTreeMap<u64, (usize, u8, i64)>,
    /// Tokens agents were given that no longer hold (for stale unlocks).
    stale: Vec<(usize, String)>,
}

impl Harness {
    fn new(store: Box<dyn Store>) -> Harness {
        let now = 1_000_000;
        let clock = ManualClock::new(now);
        let engine = Engine::new(store, Arc::new(clock.clone())).unwrap();
        Harness {
            engine,
            clock,
            now,
            start: now,
            names: Default::default(),
            next_call: 1,
            parked: BTreeMap::new(),
            granted: BTreeMap::new(),
            stale: Vec::new(),
        }
    }

    fn call(&mut self, request: Request) -> (u64, oneshot::Receiver<CoreResult<Response>>) {
        let call = self.next_call;
        self.next_call += 1;
        let (tx, rx) = oneshot::channel();
        self.engine.process(vec![Command::Call {
            call,
            request,
            reply: tx.into(),
        }]);
        (call, rx)
    }

    fn answer(&mut self, request: Request) -> CoreResult<Response> {
        let (_, mut rx) = self.call(request);
        rx.try_recv().expect("answered within its batch")
    }

    /// Moves every line as far as it goes, in order: a head whose agent already holds the name
    /// is a refresh; a head admitted beside the holders is a grant; any other head stops it.
    fn pump(&mut self) {
        for i in 0..LOCKS {
            let n = &mut self.names[i];
            while let Some(head) = n.line.front().cloned() {
                if let Some(h) = n.holders.iter_mut().find(|h| h.agent == head.agent) {
                    h.expires_at = refreshed_expiry(self.now + head.ttl_ms);
                    self.granted.insert(head.call, (i, head.agent, h.fence));
                } else if admits(&n.holders, head.mode) {
                    n.last_fence += 1;
                    n.holders.push(MHolder {
                        agent: head.agent,
                        mode: head.mode,
                        fence: n.last_fence,
                        expires_at: granted_expiry(self.now + head.ttl_ms),
                        token: String::new(),
                    });
                    self.granted
                        .insert(head.call, (i, head.agent, n.last_fence));
                } else {
                    break;
                }
                n.line.pop_front();
            }
        }
    }

    fn expire(&mut self) {
        let now = self.now;
        for n in &mut self.names {
            for h in n.holders.iter().filter(|h| h.expires_at <= now) {
                self.stale.push((0, h.token.clone()));
            }
            n.holders.retain(|h| h.expires_at > now);
        }
    }

    /// The model's answer to a lock call: `Err(field)` for a refusal, `Ok(Some(fence))` for a
    /// grant, `Ok(None)` contended (a try) or parked (a wait).
    fn model_lock(
        &mut self,
        i: usize,
        agent: u8,
        mode: Mode,
        ttl_ms: i64,
    ) -> Result<Option<i64>, &'static str> {
        let n = &self.names[i];
        let others = n
            .holders
            .iter()
            .map(|h| h.mode.limit())
            .chain(n.line.iter().map(|t| t.mode.limit()));
        for limit in others {
            if limit != mode.limit() {
                return Err("limit");
            }
        }
        if let Some(h) = n.holders.iter().find(|h| h.agent == agent) {
            if h.mode.shared() != mode.shared() {
                return Err("shared");
            }
        }
        let now = self.now;
        let n = &mut self.names[i];
        if let Some(h) = n.holders.iter_mut().find(|h| h.agent == agent) {
            h.expires_at = refreshed_expiry(now + ttl_ms);
            return Ok(Some(h.fence));
        }
        if n.line.is_empty() && admits(&n.holders, mode) {
            n.last_fence += 1;
            n.holders.push(MHolder {
                agent,
                mode,
                fence: n.last_fence,
                expires_at: granted_expiry(now + ttl_ms),
                token: String::new(),
            });
            return Ok(Some(n.last_fence));
        }
        Ok(None)
    }

    fn step(&mut self, s: &Step) -> Result<(), TestCaseError> {
        self.granted.clear();
        match *s {
            Step::Lock {
                lock,
                agent,
                mode,
                wait,
                ttl_s,
            } => {
                let mut args = LockResource {
                    name: lock_name(lock),
                    agent_id: agent_name(agent),
                    ttl_seconds: Some(ttl_s),
                    wait_seconds: Some(if wait { 50 } else { 0 }),
                    wake_token: None,
                    shared: None,
                    limit: None,
                };
                mode.args(&mut args);
                let (call, mut rx) = self.call(Request::LockResource(args));
                let expected = self.model_lock(lock, agent, mode, ttl_s * 1000);
                let got = rx.try_recv();
                match (expected, got) {
                    (Err(field), Ok(Err(CoreError::Invalid { field: f, .. }))) => {
                        prop_assert_eq!(field, f.as_str());
                    }
                    (Ok(Some(fence)), Ok(Ok(Response::LockResource(o)))) => {
                        let LockOutcome::Granted {
                            lock_token,
                            fence: f,
                            ..
                        } = o
                        else {
                            prop_assert!(false, "expected a grant of fence {}, got {:?}", fence, o);
                            unreachable!()
                        };
                        prop_assert_eq!(f, fence);
                        self.set_token(lock, agent, lock_token);
                    }
                    (Ok(None), Ok(Ok(Response::LockResource(o)))) if !wait => {
                        prop_assert!(
                            matches!(o, LockOutcome::Contended { locked: false, .. }),
                            "expected contended, got {:?}",
                            o
                        );
                    }
                    (Ok(None), Err(oneshot::error::TryRecvError::Empty)) if wait => {
                        self.names[lock].line.push_back(MTicket {
                            call,
                            agent,
                            mode,
                            ttl_ms: ttl_s * 1000,
                        });
                        self.parked.insert(call, (lock, rx));
                    }
                    (e, g) => prop_assert!(false, "lock: expected {:?}, got {:?}", e, g),
                }
            }
            Step::Unlock { lock, agent, by_id } => {
                let held = self.names[lock]
                    .holders
                    .iter()
                    .find(|h| h.agent == agent)
                    .cloned();
                let stale = self.stale.iter().rev().find(|(l, _)| *l == lock).cloned();
                let holder = match (&held, by_id, stale) {
                    (Some(h), false, _) => by_token(h.token.clone()),
                    (None, false, Some((_, t))) => by_token(t),
                    _ => by_agent(agent_name(agent)),
                };
                let r = self.answer(Request::UnlockResource(UnlockResource {
                    name: lock_name(lock),
                    holder,
                }));
                let Ok(Response::UnlockResource(r)) = r else {
                    prop_assert!(false, "unlock answered {:?}", r);
                    unreachable!()
                };
                prop_assert_eq!(r.released, held.is_some(), "unlock: {:?}", r);
                if let Some(h) = held {
                    self.names[lock].holders.retain(|x| x.agent != agent);
                    self.stale.push((lock, h.token));
                    self.pump();
                }
            }
            Step::Renew { lock, agent, ttl_s } => {
                let held = self.names[lock]
                    .holders
                    .iter()
                    .find(|h| h.agent == agent)
                    .cloned();
                let holder = match &held {
                    Some(h) => by_token(h.token.clone()),
                    None => by_agent(agent_name(agent)),
                };
                let r = self.answer(Request::RenewLock(RenewLock {
                    name: lock_name(lock),
                    holder,
                    ttl_seconds: Some(ttl_s),
                }));
                match (held, r) {
                    (Some(h), Ok(Response::RenewLock(Renewed::Yes { fence, .. }))) => {
                        prop_assert_eq!(fence, h.fence);
                        let now = self.now;
                        let m = self.names[lock]
                            .holders
                            .iter_mut()
                            .find(|x| x.agent == agent)
                            .unwrap();
                        m.expires_at = refreshed_expiry(now + ttl_s * 1000);
                    }
                    (None, Ok(Response::RenewLock(Renewed::No { .. }))) => {}
                    (h, r) => prop_assert!(false, "renew: held {:?}, got {:?}", h, r),
                }
            }
            Step::Unregister { agent } => {
                let r = self.answer(Request::UnregisterAgent(AgentId {
                    agent_id: agent_name(agent),
                }));
                prop_assert!(r.is_ok(), "unregister: {:?}", r);
                for (i, n) in self.names.iter_mut().enumerate() {
                    for h in n.holders.iter().filter(|h| h.agent == agent) {
                        self.stale.push((i, h.token.clone()));
                    }
                    n.holders.retain(|h| h.agent != agent);
                }
                self.pump();
            }
            Step::Advance { ms } => {
                let target = (self.now + ms).min(self.start + MAX_ELAPSED_MS);
                // A punctual engine: the clock stops at every expiry on the way.
                while self.now < target {
                    let next = self
                        .names
                        .iter()
                        .flat_map(|n| n.holders.iter().map(|h| h.expires_at))
                        .filter(|&at| at > self.now && at <= target)
                        .min();
                    let to = next.unwrap_or(target);
                    self.clock.advance_ms(to - self.now);
                    self.now = to;
                    self.engine.process(vec![]);
                    self.expire();
                    self.pump();
                    self.check_parked()?;
                }
            }
        }
        self.check_parked()?;
        self.check_listed()
    }

    fn set_token(&mut self, lock: usize, agent: u8, token: String) {
        if let Some(h) = self.names[lock]
            .holders
            .iter_mut()
            .find(|h| h.agent == agent)
        {
            h.token = token;
        }
    }

    /// Every parked call the model granted got exactly that grant; the others still wait.
    fn check_parked(&mut self) -> Result<(), TestCaseError> {
        let calls: Vec<u64> = self.parked.keys().copied().collect();
        for call in calls {
            let (lock, rx) = self.parked.get_mut(&call).unwrap();
            let lock = *lock;
            let got = rx.try_recv();
            match (self.granted.remove(&call), got) {
                (None, Err(oneshot::error::TryRecvError::Empty)) => {}
                (Some((l, agent, fence)), Ok(Ok(Response::LockResource(o)))) => {
                    prop_assert_eq!(l, lock);
                    let LockOutcome::Granted {
                        lock_token,
                        fence: f,
                        ..
                    } = o
                    else {
                        prop_assert!(false, "call {}: expected a grant, got {:?}", call, o);
                        unreachable!()
                    };
                    prop_assert_eq!(f, fence, "call {}", call);
                    self.set_token(lock, agent, lock_token);
                    self.parked.remove(&call);
                }
                (e, g) => {
                    prop_assert!(false, "parked call {}: expected {:?}, got {:?}", call, e, g)
                }
            }
        }
        prop_assert!(
            self.granted.is_empty(),
            "the model granted calls the engine did not: {:?}",
            self.granted
        );
        Ok(())
    }

    /// `list_locks` shows exactly the model's holders and lines, and the invariants hold.
    fn check_listed(&mut self) -> Result<(), TestCaseError> {
        let r = self.answer(Request::ListLocks(ListPage::default()));
        let Ok(Response::ListLocks(listed)) = r else {
            prop_assert!(false, "list_locks answered {:?}", r);
            unreachable!()
        };
        let listed = serde_json::to_value(&listed).unwrap();
        let mut got: Vec<Listed> = listed
            .as_array()
            .unwrap()
            .iter()
            .map(|l| {
                (
                    l["name"].as_str().unwrap().to_string(),
                    l["agent_id"].as_str().unwrap().to_string(),
                    l["fence"].as_i64().unwrap(),
                    l["mode"].as_str().unwrap().to_string(),
                    l["limit"].as_i64(),
                    l["waiters"].as_u64().unwrap(),
                    l["holders"].as_u64().unwrap(),
                )
            })
            .collect();
        got.sort();
        let mut want = Vec::new();
        for (i, n) in self.names.iter().enumerate() {
            for h in &n.holders {
                let mode = if h.mode.shared() {
                    "shared"
                } else {
                    "exclusive"
                };
                want.push((
                    lock_name(i),
                    agent_name(h.agent),
                    h.fence,
                    mode.to_string(),
                    h.mode.limit(),
                    n.line.len() as u64,
                    n.holders.len() as u64,
                ));
            }
        }
        want.sort();
        prop_assert_eq!(&got, &want);
        // The invariants, on what the engine shows.
        for i in 0..LOCKS {
            let name = lock_name(i);
            let held: Vec<_> = got.iter().filter(|g| g.0 == name).collect();
            let exclusive = held.iter().filter(|g| g.3 == "exclusive").count();
            prop_assert!(exclusive <= 1, "two exclusive holders: {:?}", held);
            prop_assert!(
                exclusive == 0 || held.len() == 1,
                "shared beside exclusive: {:?}",
                held
            );
            for g in &held {
                if let Some(n) = g.4 {
                    prop_assert!(held.len() as i64 <= n, "over the limit: {:?}", held);
                }
            }
        }
        Ok(())
    }
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

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(256),
        max_shrink_iters: 4096,
        ..ProptestConfig::default()
    })]

    #[test]
    fn shared_locks_match_the_model(steps in proptest::collection::vec(step(), 1..60)) {
        let mut h = Harness::new(Box::new(SqliteStore::open_in_memory().unwrap()));
        for s in &steps {
            h.step(s)?;
        }
    }
}

/// The same sequences on PostgreSQL, all in one database emptied between sequences.
#[test]
fn shared_locks_match_the_model_on_postgres() {
    let Some(url) = testing::admin_url_or_skip("shared_locks_match_the_model_on_postgres") else {
        return;
    };
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
    let cases = std::env::var("PROPTEST_CASES_POSTGRES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(32);
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases,
        max_shrink_iters: 1024,
        ..ProptestConfig::default()
    });
    let result = runner.run(&proptest::collection::vec(step(), 1..60), |steps| {
        rt.block_on(testing::reset(&admin)).unwrap();
        let mut h = Harness::new(Box::new(db.store(&rt).unwrap()));
        for s in &steps {
            h.step(s)?;
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}
