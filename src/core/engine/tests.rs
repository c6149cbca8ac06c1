//! Unit tests of the engine through `process`, on in-memory SQLite with a manual clock.

use super::*;
use crate::clock::ManualClock;
use crate::core::request;
use crate::store::sqlite::SqliteStore;

fn engine() -> (Engine, ManualClock) {
    let clock = ManualClock::new(1_000_000);
    let store = SqliteStore::open_in_memory().unwrap();
    let e = Engine::new(Box::new(store), Arc::new(clock.clone())).unwrap();
    (e, clock)
}

/// The answer of one call, read as what its tool answers.
struct Answer<T> {
    rx: oneshot::Receiver<CoreResult<Response>>,
    take: fn(Response) -> T,
}

impl<T> Answer<T> {
    fn try_recv(&mut self) -> Result<CoreResult<T>, oneshot::error::TryRecvError> {
        let take = self.take;
        self.rx.try_recv().map(|r| r.map(take))
    }
}

/// Sends `request` as call `call` in a batch of its own.
fn send<T>(e: &mut Engine, call: u64, request: Request, take: fn(Response) -> T) -> Answer<T> {
    let (tx, rx) = oneshot::channel();
    e.process(vec![Command::Call {
        call,
        request,
        reply: tx.into(),
    }]);
    Answer { rx, take }
}

macro_rules! answer_of {
    ($tool:ident) => {
        |r| match r {
            Response::$tool(v) => v,
            other => panic!("{} answered {other:?}", stringify!($tool)),
        }
    };
}

/// `lock_resource` of `name` for `agent`, 60 s TTL.
fn lock_request(name: &str, agent: &str, wait_ms: Millis, wake_token: Option<String>) -> Request {
    Request::LockResource(request::LockResource {
        name: name.into(),
        agent_id: agent.into(),
        ttl_seconds: Some(60),
        wait_seconds: Some(wait_ms / 1000),
        wake_token,
        shared: None,
        limit: None,
    })
}

fn lock(
    e: &mut Engine,
    call: u64,
    name: &str,
    agent: &str,
    wait_ms: Millis,
    wake_token: Option<String>,
) -> Answer<LockOutcome> {
    let request = lock_request(name, agent, wait_ms, wake_token);
    send(e, call, request, answer_of!(LockResource))
}

fn unlock(e: &mut Engine, name: &str, token: &str) -> Released {
    let request = Request::UnlockResource(request::UnlockResource {
        name: name.into(),
        holder: request::Holder {
            lock_token: Some(token.into()),
            agent_id: None,
        },
    });
    send(e, 0, request, answer_of!(UnlockResource))
        .try_recv()
        .unwrap()
        .unwrap()
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
    assert_eq!(e.locks.ticket_count(), 0);
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
        let request = Request::SignalEvent(request::EventName { name: "ev".into() });
        send(e, 0, request, answer_of!(SignalEvent))
            .try_recv()
            .unwrap()
            .unwrap()
            .generation
    };
    assert_eq!(signal(&mut e), 1);
    assert_eq!(signal(&mut e), 2);
    let clear = Request::ClearEvent(request::EventName { name: "ev".into() });
    send(&mut e, 0, clear, answer_of!(ClearEvent));
    let wait = |e: &mut Engine, call, last_seen| {
        let request = Request::WaitForEvent(request::WaitForEvent {
            name: "ev".into(),
            last_seen_generation: Some(last_seen),
            wait_seconds: Some(10),
        });
        send(e, call, request, answer_of!(WaitForEvent))
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
    assert_eq!(e.locks.ticket_count(), 2);
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
    let request = Request::LockResources(request::LockResources {
        names: vec!["n1".into(), "n2".into()],
        agent_id: "a".into(),
        ttl_seconds: Some(60),
        wait_seconds: Some(60),
    });
    let mut set = send(&mut e, 4, request, answer_of!(LockResources));
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
    let request = Request::UnregisterAgent(request::AgentId {
        agent_id: "b".into(),
    });
    send(&mut e, 0, request, answer_of!(UnregisterAgent));
    assert_eq!(e.locks.ticket_count(), 1);
    assert!(unlock(&mut e, "x", &t).released);
    token_of(c.try_recv().unwrap().unwrap());
}

/// The kinds, agents and reasons of the whole history, oldest first.
fn history(e: &mut Engine) -> Vec<(String, Option<String>, Option<String>)> {
    let all = Request::GetHistory(request::GetHistory {
        limit: Some(1000),
        ..Default::default()
    });
    let page = send(e, 0, all, answer_of!(GetHistory))
        .try_recv()
        .unwrap()
        .unwrap();
    page.items
        .into_iter()
        .rev()
        .map(|h| (h.kind.as_str().to_string(), h.agent_id, h.reason))
        .collect()
}

#[test]
fn a_grant_nobody_read_is_released_as_an_orphan() {
    let (mut e, _clock) = engine();
    let t = take(&mut e, 1, "x", "a");
    let mut b = lock(&mut e, 2, "x", "b", 10_000, None);
    assert!(unlock(&mut e, "x", &t).released);
    // The answer reached b's channel, but its caller went away before reading it.
    let tb = token_of(b.try_recv().unwrap().unwrap());
    e.process(vec![Command::Orphaned(Orphan::Locks(vec![(
        "x".into(),
        tb,
    )]))]);
    let s = |k: &str, a: &str, r: Option<&str>| {
        (k.to_string(), Some(a.to_string()), r.map(String::from))
    };
    assert_eq!(
        history(&mut e),
        [
            s("grant", "a", None),
            s("release", "a", Some("unlock")),
            s("grant", "b", None),
            s("release", "b", Some("orphan")),
        ]
    );
}

/// An undelivered grant is given back only while nothing refreshed its hold since: if its agent
/// took the lock again (and was told it holds it, with the same token) before the orphan was
/// handled, the hold is the agent's again and stays, even within the same millisecond. Without
/// a refresh, the orphan is released.
#[test]
fn an_orphaned_grant_is_released_unless_its_agent_took_the_lock_again() {
    let asked = lock_request("x", "a", 0, None);
    for (again_after_ms, released) in [(None, true), (Some(0), false), (Some(5), false)] {
        let (mut e, clock) = engine();
        let first = lock(&mut e, 1, "x", "a", 0, None)
            .try_recv()
            .unwrap()
            .unwrap();
        let orphan = asked
            .orphan_of(&Response::LockResource(first.clone()))
            .expect("a new grant carries what undoes it");
        if let Some(ms) = again_after_ms {
            clock.advance_ms(ms);
            let again = lock(&mut e, 2, "x", "a", 0, None)
                .try_recv()
                .unwrap()
                .unwrap();
            assert_eq!(token_of(again), token_of(first.clone()), "not idempotent");
        }
        e.process(vec![Command::Orphaned(orphan)]);
        let b = lock(&mut e, 3, "x", "b", 0, None)
            .try_recv()
            .unwrap()
            .unwrap();
        assert_eq!(
            matches!(b, LockOutcome::Granted { .. }),
            released,
            "taken again after {again_after_ms:?} ms: {b:?}"
        );
    }
}

#[test]
fn history_older_than_its_retention_is_pruned_at_housekeeping() {
    let (mut e, clock) = engine();
    e.set_history_retention(crate::core::history::Retention {
        max_age_ms: 5_000,
        max_entries: 1_000,
    });
    take(&mut e, 1, "x", "a");
    assert_eq!(history(&mut e).len(), 1);
    // Housekeeping runs every minute; by then the grant is older than 5 s (and the lock's own
    // 60 s TTL has run out: its release is new, and stays).
    clock.advance_ms(deadlines::HOUSEKEEPING_MS + 1);
    e.process(vec![]);
    assert_eq!(
        history(&mut e),
        [(
            "release".to_string(),
            Some("a".to_string()),
            Some("ttl".to_string())
        )]
    );
}
