//! Issue 6, the multi-daemon stories: several real `airlock serve --store postgres://…` daemons
//! on one fresh database, each with its own AIRLOCK_HOME, talked to over HTTP as agents would.
//!
//! Each test skips (loudly) unless AIRLOCK_TEST_POSTGRES names a PostgreSQL admin URL.
//!
//! Which daemon coordinates is read from the database itself: the holder of the coordinator's
//! advisory lock (`pg_locks`), whose session's `application_name` is `airlock <daemon id>`. A
//! daemon's id is learnt as the one new `airlock …` application name that appears when it starts.
mod common;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use airlock::store::calls::COORDINATOR_LOCK;
use common::{
    admin_url_or_skip, fence, lock, lock_row, spawn_call, spawn_lock, token, unlock, until_waiters,
    within, Daemon, Log, TestDb,
};
use serde_json::{json, Value};

// ---------------------------------------------------------------------------------------------
// The cluster harness
// ---------------------------------------------------------------------------------------------

/// One fresh database, and the homes of the daemons started on it.
struct Cluster {
    /// A plain connection to the test database (no `airlock` application name: never terminated
    /// with the daemons' sessions).
    pg: tokio_postgres::Client,
    tmp: tempfile::TempDir,
    homes: usize,
    /// Daemons started so far (names their log lines, with the test's name).
    started: usize,
    test: String,
    db: TestDb,
}

/// `airlock serve --store URL` on `home`, its log lines (RUST_LOG from AIRLOCK_CLUSTER_LOG,
/// default `warn`) prefixed with `label`, so a failure's log says which daemon said what.
async fn spawn_daemon(home: &Path, url: &str, label: &str) -> Daemon {
    let log = std::env::var("AIRLOCK_CLUSTER_LOG").unwrap_or_else(|_| "warn".into());
    Daemon::serve()
        .home(home)
        .store(url)
        .rust_log(&log)
        .log(Log::Labelled(label.to_string()))
        .start()
        .await
}

/// A daemon of the cluster.
struct Member {
    d: Arc<Daemon>,
    /// `airlock <id>`: the application name of its database sessions.
    app: String,
    home: PathBuf,
}

impl Member {
    /// The daemon itself, for killing or stopping it (no other task may still share it).
    fn take(self) -> Daemon {
        Arc::try_unwrap(self.d)
            .ok()
            .expect("the daemon is still shared by a task")
    }
}

impl Cluster {
    /// A fresh database, or `None` (after a loud SKIPPED line) without a configured server.
    async fn new(test: &str) -> Option<Cluster> {
        let admin = admin_url_or_skip(test)?;
        let db = TestDb::create(&admin)
            .await
            .expect("create the test database");
        let pg = db.connect().await.expect("connect to the test database");
        Some(Cluster {
            pg,
            tmp: tempfile::tempdir().expect("tempdir"),
            homes: 0,
            started: 0,
            test: test
                .trim_start_matches("cluster::")
                .chars()
                .take(24)
                .collect(),
            db,
        })
    }

    fn url(&self) -> &str {
        self.db.url()
    }

    /// The application names of the airlock sessions on this database now.
    async fn apps(&self) -> HashSet<String> {
        self.pg
            .query(
                "SELECT DISTINCT application_name FROM pg_stat_activity \
                 WHERE datname = current_database() AND application_name LIKE 'airlock %'",
                &[],
            )
            .await
            .expect("read pg_stat_activity")
            .iter()
            .map(|r| r.get(0))
            .collect()
    }

    /// Starts a daemon on `home` (an existing one for a restart) and learns its id.
    async fn start_in(&mut self, home: &Path) -> Member {
        let before = self.apps().await;
        self.started += 1;
        let d = spawn_daemon(
            home,
            self.url(),
            &format!("{} daemon{}", self.test, self.started),
        )
        .await;
        // Its listening connection is up before it prints its address; the name is there.
        let app = within(15, async {
            loop {
                let new: Vec<String> = self.apps().await.difference(&before).cloned().collect();
                assert!(new.len() <= 1, "more than one new daemon appeared: {new:?}");
                if let Some(app) = new.into_iter().next() {
                    return app;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        Member {
            d: Arc::new(d),
            app,
            home: home.to_path_buf(),
        }
    }

    /// Starts a daemon in a new home.
    async fn start(&mut self) -> Member {
        self.homes += 1;
        let home = self.tmp.path().join(format!("home{}", self.homes));
        self.start_in(&home).await
    }

    /// Starts `n` daemons; the first one coordinates (it is alone when it starts).
    async fn start_n(&mut self, n: usize) -> Vec<Member> {
        let first = self.start().await;
        self.until_coordinator(&first.app, 15).await;
        let mut all = vec![first];
        for _ in 1..n {
            all.push(self.start().await);
        }
        // Still the first: the others only forward.
        assert_eq!(self.coordinator().await.as_deref(), Some(&*all[0].app));
        all
    }

    /// The application name of the session holding the coordinator lock in this database.
    async fn coordinator(&self) -> Option<String> {
        let key = COORDINATOR_LOCK as u64;
        let (hi, lo) = ((key >> 32) as i64, (key & 0xffff_ffff) as i64);
        let rows = self
            .pg
            .query(
                "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
                 WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 \
                 AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
                 AND l.classid::text::bigint = $1 AND l.objid::text::bigint = $2",
                &[&hi, &lo],
            )
            .await
            .expect("read pg_locks");
        assert!(rows.len() <= 1, "two sessions hold the coordinator lock");
        rows.first().map(|r| r.get(0))
    }

    /// Waits until the daemon named `app` coordinates.
    async fn until_coordinator(&self, app: &str, secs: u64) {
        within(secs, async {
            while self.coordinator().await.as_deref() != Some(app) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
    }

    /// Ends every airlock session on this database (every daemon's); returns how many.
    async fn terminate_all(&self) -> i64 {
        let rows = self
            .pg
            .query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE datname = current_database() AND application_name LIKE 'airlock %'",
                &[],
            )
            .await
            .expect("pg_terminate_backend");
        rows.len() as i64
    }

    /// Ends every database session of the daemon named `app` (as an admin would, or a network
    /// cut would); returns how many were ended.
    async fn terminate(&self, app: &str) -> i64 {
        let rows = self
            .pg
            .query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE datname = current_database() AND application_name = $1",
                &[&app],
            )
            .await
            .expect("pg_terminate_backend");
        rows.len() as i64
    }
}

// ---------------------------------------------------------------------------------------------
// Tool helpers
// ---------------------------------------------------------------------------------------------

async fn holder(d: &Daemon, name: &str) -> Option<String> {
    lock_row(d, name)
        .await
        .map(|l| l["agent_id"].as_str().expect("agent_id").to_string())
}

// ---------------------------------------------------------------------------------------------
// 1. Cross-daemon wake-ups
// ---------------------------------------------------------------------------------------------

/// A lock held through `holder_d`, a waiter parked on `waiter_d`: the unlock wakes it.
async fn handoff(holder_d: &Arc<Daemon>, waiter_d: &Arc<Daemon>, name: &str) {
    let held = lock(holder_d, name, "h", json!({"ttl_seconds": 60})).await;
    let tok = token(&held);
    let waiter = spawn_lock(waiter_d, name, "w", json!({"wait_seconds": 30}));
    // Parked, as both daemons see it.
    until_waiters(holder_d, name, 1).await;
    until_waiters(waiter_d, name, 1).await;
    assert!(
        !waiter.is_finished(),
        "the waiter answered before the unlock"
    );
    let released = Instant::now();
    unlock(holder_d, name, &tok).await;
    let got = within(10, waiter).await.unwrap();
    println!(
        "{name}: waiter answered {:?} after the unlock was acknowledged",
        released.elapsed()
    );
    token(&got);
    assert_eq!(fence(&got), fence(&held) + 1);
    assert_eq!(holder(holder_d, name).await.as_deref(), Some("w"));
    assert_eq!(holder(waiter_d, name).await.as_deref(), Some("w"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unlock_on_one_daemon_wakes_a_waiter_parked_on_the_other() {
    let Some(mut c) =
        Cluster::new("cluster::an_unlock_on_one_daemon_wakes_a_waiter_parked_on_the_other").await
    else {
        return;
    };
    let m = c.start_n(2).await;
    let (a, b) = (&m[0].d, &m[1].d);
    // Held through the coordinator, waiter forwarding; then the mirror.
    handoff(a, b, "x").await;
    handoff(b, a, "y").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wake_token_keeps_its_place_across_daemons() {
    let Some(mut c) = Cluster::new("cluster::a_wake_token_keeps_its_place_across_daemons").await
    else {
        return;
    };
    let m = c.start_n(2).await;
    let (a, b) = (&m[0].d, &m[1].d);
    let ta = token(&lock(a, "x", "a", json!({})).await);

    // A window ends on the forwarding daemon: a place in line, and the exact retry arguments.
    let w1 = lock(b, "x", "b", json!({"wait_seconds": 1, "ttl_seconds": 30})).await;
    assert_eq!(w1["locked"], json!(false), "{w1}");
    assert_eq!(w1["held_by"], "a");
    assert_eq!(w1["queue_position"], 1, "{w1}");
    let wt = w1["wake_token"].as_str().expect("wake_token").to_string();
    assert!(wt.len() >= 32);
    let retry = w1["retry_with"].clone();
    assert_eq!(
        retry,
        json!({"name": "x", "agent_id": "b", "ttl_seconds": 30, "wait_seconds": 1, "wake_token": wt})
    );

    // A newcomer parks on the coordinator while b is between windows: it stands behind b.
    let cw = spawn_lock(a, "x", "c", json!({"wait_seconds": 40}));
    until_waiters(b, "x", 2).await;
    let w2 = b.call("lock_resource", retry.clone()).await;
    assert_eq!(w2["locked"], json!(false), "{w2}");
    assert_eq!(w2["queue_position"], 1, "{w2}");
    assert_eq!(w2["wake_token"], json!(wt));
    // Seen from the other daemon too: c is second.
    let w3 = lock(a, "x", "d", json!({"wait_seconds": 1})).await;
    assert_eq!(w3["locked"], json!(false), "{w3}");
    assert_eq!(w3["queue_position"], 3, "{w3}");

    // The lock frees while b is away: kept for b, not given to the parked newcomer.
    unlock(a, "x", &ta).await;
    let probe = lock(a, "x", "probe", json!({})).await;
    assert_eq!(probe["locked"], json!(false));
    assert_eq!(
        probe["held_by"], "b",
        "the free lock should be reserved for b"
    );
    assert!(!cw.is_finished(), "the newcomer overtook the wake token");
    let tb = token(&b.call("lock_resource", retry).await);
    assert!(!cw.is_finished());
    unlock(b, "x", &tb).await;
    token(&within(10, cw).await.unwrap());
}

// ---------------------------------------------------------------------------------------------
// 2. FIFO across daemons
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn waiters_arriving_through_both_daemons_are_granted_in_arrival_order() {
    let Some(mut c) =
        Cluster::new("cluster::waiters_arriving_through_both_daemons_are_granted_in_arrival_order")
            .await
    else {
        return;
    };
    let m = c.start_n(2).await;
    let ds = [m[0].d.clone(), m[1].d.clone()];
    let first = lock(&ds[0], "x", "holder", json!({})).await;
    let mut handles = Vec::new();
    for i in 0..8usize {
        // Alternately through the coordinator and the forwarding daemon.
        let d = ds[i % 2].clone();
        let agent = format!("w{i}");
        handles.push(tokio::spawn(async move {
            let got = lock(&d, "x", &agent, json!({"wait_seconds": 45})).await;
            let f = fence(&got);
            unlock(&d, "x", &token(&got)).await;
            (agent, f)
        }));
        until_waiters(&ds[(i + 1) % 2], "x", i as u64 + 1).await;
    }
    // A try-lock through either daemon never jumps the line.
    for d in &ds {
        let j = lock(d, "x", "jumper", json!({})).await;
        assert_eq!(j["locked"], json!(false), "{j}");
    }
    unlock(&ds[1], "x", &token(&first)).await;
    let mut got = Vec::new();
    for h in handles {
        got.push(within(30, h).await.unwrap());
    }
    let base = fence(&first);
    for (i, (agent, f)) in got.iter().enumerate() {
        assert_eq!(agent, &format!("w{i}"));
        assert_eq!(
            *f,
            base + 1 + i as i64,
            "grant order is not arrival order: {got:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 3. A presence lapse on one daemon releases for the other
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_presence_lapse_on_one_daemon_releases_for_the_other() {
    let Some(mut c) =
        Cluster::new("cluster::a_presence_lapse_on_one_daemon_releases_for_the_other").await
    else {
        return;
    };
    let m = c.start_n(2).await;
    let (a, b) = (&m[0].d, &m[1].d);

    // A lock: held (long TTL) by an agent registered through A for 1 s.
    let registered = Instant::now();
    let r = a
        .call("register_agent", json!({"agent_id": "p", "ttl_seconds": 1}))
        .await;
    assert_eq!(r["registered"], json!(true));
    let held = lock(a, "x", "p", json!({"ttl_seconds": 900})).await;
    token(&held);
    let waiter = spawn_lock(b, "x", "w", json!({"wait_seconds": 30}));
    until_waiters(b, "x", 1).await;
    let got = within(15, waiter).await.unwrap();
    let after = registered.elapsed();
    println!("lock: waiter on B granted {after:?} after a 1 s presence was registered on A");
    assert_eq!(fence(&got), fence(&held) + 1, "{got}");
    assert!(
        after >= Duration::from_millis(900),
        "granted before the lapse: {after:?}"
    );
    assert!(
        after < Duration::from_secs(5),
        "the grant waited far past the lapse: {after:?}"
    );
    let agents = b.call("list_agents", json!({})).await;
    assert!(
        !agents
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["agent_id"] == "p"),
        "the lapsed agent is still listed: {agents}"
    );
    assert_eq!(holder(a, "x").await.as_deref(), Some("w"));

    // A lease: claimed through A by an agent registered for 1 s, handed on to a claimer on B.
    let id = b
        .call("push_task", json!({"queue": "q", "payload": "job"}))
        .await["id"]
        .clone();
    let registered = Instant::now();
    a.call(
        "register_agent",
        json!({"agent_id": "q1", "ttl_seconds": 1}),
    )
    .await;
    let c1 = a
        .call(
            "claim_next_task",
            json!({"queue": "q", "agent_id": "q1", "lease_seconds": 600}),
        )
        .await;
    assert_eq!(c1["claimed"], json!(true), "{c1}");
    assert_eq!(c1["id"], id);
    let next = spawn_call(
        b,
        "claim_next_task",
        json!({"queue": "q", "agent_id": "q2", "wait_seconds": 30}),
    );
    let got = within(15, next).await.unwrap();
    let after = registered.elapsed();
    println!("lease: claimer on B handed the task {after:?} after a 1 s presence on A");
    assert_eq!(got["claimed"], json!(true), "{got}");
    assert_eq!(got["id"], id);
    assert_eq!(got["attempts"], 2);
    assert!(after >= Duration::from_millis(900));
    assert!(
        after < Duration::from_secs(5),
        "handed on far past the lapse: {after:?}"
    );
    // The lapsed claimant's lease is void on either daemon.
    let r = a
        .call(
            "complete_task",
            json!({"id": id, "lease_token": c1["lease_token"]}),
        )
        .await;
    assert_eq!(r["completed"], json!(false));
    let r = b
        .call(
            "complete_task",
            json!({"id": id, "lease_token": got["lease_token"]}),
        )
        .await;
    assert_eq!(r["completed"], json!(true));
}

// ---------------------------------------------------------------------------------------------
// 4. 2 daemons × 8 claimers over 500 tasks
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixteen_claimers_on_two_daemons_claim_each_of_500_tasks_once() {
    let Some(mut c) =
        Cluster::new("cluster::sixteen_claimers_on_two_daemons_claim_each_of_500_tasks_once").await
    else {
        return;
    };
    let m = c.start_n(2).await;
    let ds = [m[0].d.clone(), m[1].d.clone()];
    const TASKS: usize = 500;
    let started = Instant::now();

    // Pushed through both daemons (4 pushers on each).
    let mut pushers = Vec::new();
    for p in 0..8usize {
        let d = ds[p % 2].clone();
        pushers.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in (p..TASKS).step_by(8) {
                let r = d
                    .call(
                        "push_task",
                        json!({"queue": "work", "payload": format!("t{i}")}),
                    )
                    .await;
                ids.push((r["id"].as_i64().expect("id"), format!("t{i}")));
            }
            ids
        }));
    }
    let mut pushed = HashMap::new();
    for p in pushers {
        for (id, payload) in within(120, p).await.unwrap() {
            assert!(
                pushed.insert(id, payload).is_none(),
                "task id {id} given twice"
            );
        }
    }
    assert_eq!(pushed.len(), TASKS);
    let pushed_at = started.elapsed();

    let claimed: Arc<Mutex<HashMap<i64, String>>> = Arc::default();
    let mut claimers = Vec::new();
    for k in 0..16usize {
        let d = ds[k % 2].clone();
        let claimed = claimed.clone();
        claimers.push(tokio::spawn(async move {
            let me = format!("claimer{k}");
            let mut n = 0;
            loop {
                let c = d
                    .call("claim_next_task", json!({"queue": "work", "agent_id": me}))
                    .await;
                if c["claimed"] != json!(true) {
                    return n;
                }
                let id = c["id"].as_i64().expect("id");
                assert_eq!(c["attempts"], 1, "claimed again: {c}");
                if let Some(other) = claimed.lock().unwrap().insert(id, me.clone()) {
                    panic!("task {id} claimed by {other} and by {me}");
                }
                let r = d
                    .call(
                        "complete_task",
                        json!({"id": id, "lease_token": c["lease_token"]}),
                    )
                    .await;
                assert_eq!(r["completed"], json!(true), "{r}");
                n += 1;
            }
        }));
    }
    let mut per = Vec::new();
    for h in claimers {
        per.push(within(180, h).await.unwrap());
    }
    println!(
        "500 tasks pushed through 2 daemons in {pushed_at:?}; claimed and completed by 16 \
         claimers in {:?} (per claimer: {per:?})",
        started.elapsed() - pushed_at
    );
    let claimed = claimed.lock().unwrap().clone();
    assert_eq!(claimed.len(), TASKS);
    assert_eq!(
        claimed.keys().collect::<HashSet<_>>(),
        pushed.keys().collect::<HashSet<_>>()
    );
    // Both daemons' claimers took part.
    assert!(
        per.iter().step_by(2).sum::<usize>() > 0
            && per.iter().skip(1).step_by(2).sum::<usize>() > 0
    );
    let list = ds[1].call("list_tasks", json!({"queue": "work"})).await;
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), TASKS);
    for t in list {
        assert_eq!(t["state"], "completed", "{t}");
        assert_eq!(t["attempts"], 1, "{t}");
        assert_eq!(
            t["payload"].as_str(),
            pushed.get(&t["id"].as_i64().unwrap()).map(|s| s.as_str())
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 5. Mixed load, with a checker
// ---------------------------------------------------------------------------------------------

/// What the load's clients saw, checked as they go.
#[derive(Default)]
struct Checker {
    /// lock → who holds it as the clients know it: entered on reading a grant, left before
    /// sending the unlock, so inside the server's own holding interval. Two at once is a bug,
    /// unless the first one's TTL, counted from when it sent the granted call, had run out.
    held: Mutex<HashMap<String, Hold>>,
    /// lock → the fence and token of its latest grant.
    fences: Mutex<HashMap<String, (i64, String)>>,
    counter_values: Mutex<HashSet<i64>>,
    violations: Mutex<Vec<String>>,
    errors: Mutex<Vec<String>>,
    /// When each error was seen.
    error_times: Mutex<Vec<Instant>>,
    grants: AtomicU64,
    /// Grants of a lock its agent still held (its unlock had failed): same token, same fence.
    regrants: AtomicU64,
    /// Holds that outlived their TTL (a slow call while holding) and were taken over.
    expired: AtomicU64,
    window_ends: AtomicU64,
    increments: AtomicU64,
}

struct Hold {
    who: String,
    /// When the call that was granted was sent: the server granted no earlier.
    sent: Instant,
    ttl: Duration,
}

/// How long one call may take before the load counts it as hung.
const HUNG: Duration = Duration::from_secs(20);

impl Checker {
    fn violation(&self, v: String) {
        eprintln!("VIOLATION: {v}");
        self.violations.lock().unwrap().push(v);
    }

    fn enter(&self, name: &str, hold: Hold, token: &str, fence: i64) {
        let who = hold.who.clone();
        if let Some(other) = self.held.lock().unwrap().insert(name.into(), hold) {
            if other.sent.elapsed() >= other.ttl {
                self.expired.fetch_add(1, Ordering::Relaxed);
            } else {
                self.violation(format!(
                    "{who} was granted {name} while {} held it (granted at most {:?} before, \
                     TTL {:?})",
                    other.who,
                    other.sent.elapsed(),
                    other.ttl
                ));
            }
        }
        let mut fences = self.fences.lock().unwrap();
        let last = fences.insert(name.into(), (fence, token.to_string()));
        match last {
            Some((f, _)) if fence > f => {}
            None => {}
            Some((f, t)) if f == fence && t == token => {
                self.regrants.fetch_add(1, Ordering::Relaxed);
            }
            Some((f, _)) => self.violation(format!(
                "{who} was granted {name} with fence {fence}, not above the last {f}"
            )),
        }
        self.grants.fetch_add(1, Ordering::Relaxed);
    }

    fn leave(&self, name: &str, who: &str) {
        let mut held = self.held.lock().unwrap();
        // Taken over past its TTL: no longer this client's to leave.
        if held.get(name).is_some_and(|h| h.who == who) {
            held.remove(name);
        }
    }

    fn counted(&self, v: i64) {
        if !self.counter_values.lock().unwrap().insert(v) {
            self.violation(format!("counter value {v} given twice"));
        }
        self.increments.fetch_add(1, Ordering::Relaxed);
    }

    fn error(&self, who: &str, tool: &str, e: String) {
        self.error_times.lock().unwrap().push(Instant::now());
        self.errors
            .lock()
            .unwrap()
            .push(format!("{who} {tool}: {e}"));
    }

    /// A call of the load: an error is recorded (and returned), a hang is a violation.
    async fn call(&self, d: &Daemon, who: &str, tool: &str, args: Value) -> Option<Value> {
        let sent = Instant::now();
        match tokio::time::timeout(HUNG, d.try_call(tool, args.clone())).await {
            Ok(Ok(v)) => Some(v),
            Ok(Err(e)) => {
                self.error(who, tool, e);
                None
            }
            Err(_) => {
                self.violation(format!(
                    "{who}: {tool} {args} got no answer in {:?}",
                    sent.elapsed()
                ));
                None
            }
        }
    }
}

const LOCKS: [&str; 3] = ["hot0", "hot1", "hot2"];

/// One load client: take a contended lock (waiting, coming back with its wake token), hold it
/// briefly while bumping the shared counter, unlock; until `until`.
async fn load_client(d: Arc<Daemon>, who: String, check: Arc<Checker>, until: Instant, ttl: i64) {
    let mut seed = rand::random::<u64>() | 1;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let ttl_d = Duration::from_secs(ttl as u64);
    while Instant::now() < until {
        let name = LOCKS[(next() % LOCKS.len() as u64) as usize];
        let mut args =
            json!({"name": name, "agent_id": who, "ttl_seconds": ttl, "wait_seconds": 3});
        let granted = loop {
            let sent = Instant::now();
            match check.call(&d, &who, "lock_resource", args.clone()).await {
                Some(r) if r["locked"] == json!(true) => break Some((r, sent)),
                Some(r) => {
                    check.window_ends.fetch_add(1, Ordering::Relaxed);
                    if Instant::now() >= until {
                        break None;
                    }
                    match r.get("retry_with") {
                        Some(retry) => args = retry.clone(),
                        None => {
                            check.error(&who, "lock_resource", format!("no retry_with: {r}"));
                            break None;
                        }
                    }
                }
                None => break None,
            }
        };
        let Some((g, sent)) = granted else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let (Some(tok), Some(f)) = (g["lock_token"].as_str(), g["fence"].as_i64()) else {
            check.violation(format!("a grant without token or fence: {g}"));
            continue;
        };
        let hold = Hold {
            who: who.clone(),
            sent,
            ttl: ttl_d,
        };
        check.enter(name, hold, tok, f);
        tokio::time::sleep(Duration::from_millis(next() % 10)).await;
        let v = check
            .call(&d, &who, "increment_counter", json!({"name": "shared"}))
            .await;
        if let Some(v) = v {
            match v["value"].as_i64() {
                Some(v) => check.counted(v),
                None => check.violation(format!("increment_counter answered {v}")),
            }
        }
        check.leave(name, &who);
        let args = json!({"name": name, "lock_token": tok});
        if let Some(r) = check.call(&d, &who, "unlock_resource", args).await {
            if r["released"] != json!(true) {
                if sent.elapsed() < ttl_d {
                    // Nobody may take a lock from its holder before its TTL: this client was
                    // told it held a lock it did not hold (or lost it silently).
                    check.violation(format!(
                        "{who}: the unlock of {name} (fence {f}, granted at most {:?} before, \
                         TTL {ttl_d:?}) found it not held: {r}",
                        sent.elapsed()
                    ));
                } else {
                    check.error(&who, "unlock_resource", format!("not released: {r}"));
                }
            }
        }
    }
}

fn load_seconds() -> u64 {
    std::env::var("AIRLOCK_CLUSTER_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30)
}

/// Starts `per_daemon` load clients on each daemon, until `until`.
fn start_load(
    ds: &[Arc<Daemon>],
    per_daemon: usize,
    check: &Arc<Checker>,
    until: Instant,
    ttl: i64,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut clients = Vec::new();
    for (n, d) in ds.iter().enumerate() {
        for k in 0..per_daemon {
            clients.push(tokio::spawn(load_client(
                d.clone(),
                format!("d{n}c{k}"),
                check.clone(),
                until,
                ttl,
            )));
        }
    }
    clients
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mixed_load_across_two_daemons_never_has_two_holders() {
    let Some(mut c) =
        Cluster::new("cluster::mixed_load_across_two_daemons_never_has_two_holders").await
    else {
        return;
    };
    let m = c.start_n(2).await;
    let ds = vec![m[0].d.clone(), m[1].d.clone()];
    let secs = load_seconds();
    let check = Arc::new(Checker::default());
    let until = Instant::now() + Duration::from_secs(secs);
    let clients = start_load(&ds, 4, &check, until, 30);
    for h in clients {
        within(secs + 60, h).await.unwrap();
    }
    let grants = check.grants.load(Ordering::Relaxed);
    let increments = check.increments.load(Ordering::Relaxed);
    println!(
        "{secs} s of mixed load, 2 daemons x 4 clients on {} locks: {grants} grants, {} ended \
         windows, {increments} increments",
        LOCKS.len(),
        check.window_ends.load(Ordering::Relaxed)
    );
    let errors = check.errors.lock().unwrap().clone();
    assert!(
        errors.is_empty(),
        "{} calls failed: {errors:#?}",
        errors.len()
    );
    let violations = check.violations.lock().unwrap().clone();
    assert!(violations.is_empty(), "{violations:#?}");
    assert!(
        grants >= 20,
        "too little happened to check anything: {grants} grants"
    );
    // Every increment was seen once, and the next one follows the last.
    let last = ds[1]
        .call("increment_counter", json!({"name": "shared"}))
        .await;
    assert_eq!(last["value"].as_u64(), Some(increments + 1));
    for d in &ds {
        for l in LOCKS {
            assert_eq!(
                lock_row(d, l).await,
                None,
                "{l} is still held after the load"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 6. Events
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_signal_on_one_daemon_wakes_a_wait_on_the_other() {
    let Some(mut c) =
        Cluster::new("cluster::a_signal_on_one_daemon_wakes_a_wait_on_the_other").await
    else {
        return;
    };
    let m = c.start_n(2).await;
    let (a, b) = (&m[0].d, &m[1].d);
    for (signaller, waiter_d, name) in [(a, b, "e1"), (b, a, "e2")] {
        let waiter = spawn_call(
            waiter_d,
            "wait_for_event",
            json!({"name": name, "last_seen_generation": 0, "wait_seconds": 30}),
        );
        // Nothing to see yet: still waiting a moment later (and if the signal below came first,
        // the wait would still end at once: only a missed wake-up can fail this).
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            !waiter.is_finished(),
            "the wait ended with nothing signalled"
        );
        let signalled = Instant::now();
        let s = signaller.call("signal_event", json!({"name": name})).await;
        assert_eq!(s["generation"], 1);
        let got = within(10, waiter).await.unwrap();
        println!(
            "{name}: woken {:?} after the signal was acknowledged",
            signalled.elapsed()
        );
        assert_eq!(got, json!({"generation": 1, "fired": true}));
    }
    // Generations count across daemons.
    assert_eq!(
        b.call("signal_event", json!({"name": "e1"})).await["generation"],
        2
    );
    assert_eq!(
        a.call("signal_event", json!({"name": "e1"})).await["generation"],
        3
    );
    let r = a
        .call(
            "wait_for_event",
            json!({"name": "e1", "last_seen_generation": 3, "wait_seconds": 1}),
        )
        .await;
    assert_eq!(r, json!({"generation": 3, "fired": false}));
    let r = b
        .call(
            "wait_for_event",
            json!({"name": "e1", "last_seen_generation": 1, "wait_seconds": 10}),
        )
        .await;
    assert_eq!(r, json!({"generation": 3, "fired": true}));
}

// ---------------------------------------------------------------------------------------------
// 7. The coordinator dies
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn when_the_coordinator_dies_the_other_daemon_takes_over_with_all_state() {
    let Some(mut c) = Cluster::new(
        "cluster::when_the_coordinator_dies_the_other_daemon_takes_over_with_all_state",
    )
    .await
    else {
        return;
    };
    let mut m = c.start_n(2).await;
    let b = m.pop().unwrap();
    let a = m.pop().unwrap();

    // State written through the coordinator.
    a.d.call("set_note", json!({"key": "k", "value": "v"}))
        .await;
    for want in 1..=3 {
        let v = a.d.call("increment_counter", json!({"name": "n"})).await;
        assert_eq!(v["value"], want);
    }
    let kept = lock(&a.d, "kept", "y", json!({"ttl_seconds": 120})).await;
    let kept_tok = token(&kept);
    // A lock that only its TTL will free, and a waiter for it parked on the survivor.
    let dying = lock(&a.d, "dying", "x", json!({"ttl_seconds": 6})).await;
    let dying_at = Instant::now();
    token(&dying);
    let waiter = spawn_lock(&b.d, "dying", "w", json!({"wait_seconds": 45}));
    until_waiters(&b.d, "dying", 1).await;

    // SIGKILL the coordinator.
    let home_a = a.home.clone();
    let mut dead = a.take();
    let killed = Instant::now();
    dead.kill();

    // The survivor answers (its call waits for the take-over, then runs).
    let note = within(20, b.d.call("get_note", json!({"key": "k"}))).await;
    let took_over = killed.elapsed();
    println!("the survivor answered {took_over:?} after the coordinator was killed");
    assert_eq!(note["value"], "v");
    c.until_coordinator(&b.app, 5).await;
    let v = b.d.call("increment_counter", json!({"name": "n"})).await;
    assert_eq!(v["value"], 4, "the counter did not continue: {v}");
    // The lock held through the dead daemon is still held, by its agent, with its token.
    let z = lock(&b.d, "kept", "z", json!({})).await;
    assert_eq!(z["locked"], json!(false), "{z}");
    assert_eq!(z["held_by"], "y");

    // Until the dead side's lock expires, the waiter is not told it holds it.
    if dying_at.elapsed() < Duration::from_secs(5) {
        assert!(
            !waiter.is_finished(),
            "the waiter was answered before the lock expired"
        );
        let probe = lock(&b.d, "dying", "probe", json!({})).await;
        assert_eq!(probe["held_by"], "x", "{probe}");
    }
    let got = within(30, waiter).await.unwrap();
    println!(
        "the waiter parked on the survivor was granted {:?} after the 6 s lock was taken",
        dying_at.elapsed()
    );
    assert!(
        dying_at.elapsed() >= Duration::from_millis(5500),
        "granted before the TTL"
    );
    let wtok = token(&got);
    assert!(fence(&got) > fence(&dying), "{got}");
    assert_eq!(holder(&b.d, "dying").await.as_deref(), Some("w"));
    let probe = lock(&b.d, "dying", "probe", json!({})).await;
    assert_eq!(probe["locked"], json!(false));
    assert_eq!(probe["held_by"], "w");
    // The history outlived its coordinator: the grant the dead one recorded, the expiry and the
    // handoff the survivor made (refused probes record nothing).
    let h = b.d.call("get_history", json!({"name": "dying"})).await;
    let said: Vec<(&str, &str, &str)> = h["items"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .map(|e| {
            (
                e["kind"].as_str().unwrap(),
                e["agent_id"].as_str().unwrap(),
                e["reason"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        said,
        [
            ("grant", "x", ""),
            ("release", "x", "ttl"),
            ("grant", "w", "")
        ]
    );

    // The killed daemon comes back on its home: it forwards, and everything works through it.
    let a2 = c.start_in(&home_a).await;
    assert_eq!(c.coordinator().await.as_deref(), Some(&*b.app));
    let v = a2.d.call("increment_counter", json!({"name": "n"})).await;
    assert_eq!(v["value"], 5);
    assert_eq!(
        a2.d.call("get_note", json!({"key": "k"})).await["value"],
        "v"
    );
    unlock(&a2.d, "kept", &kept_tok).await;
    unlock(&a2.d, "dying", &wtok).await;
    handoff(&a2.d, &b.d, "after").await;
    handoff(&b.d, &a2.d, "after2").await;
}

// ---------------------------------------------------------------------------------------------
// 8. A lost database connection
// ---------------------------------------------------------------------------------------------

/// Retries `tool` through `d` until it succeeds (the daemon reconnected).
async fn until_ok(d: &Daemon, tool: &str, args: Value) -> Value {
    within(30, async {
        loop {
            match d.try_call(tool, args.clone()).await {
                Ok(v) => return v,
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_database_connection_fails_calls_clearly_and_recovers() {
    let Some(mut c) =
        Cluster::new("cluster::a_lost_database_connection_fails_calls_clearly_and_recovers").await
    else {
        return;
    };
    let m = c.start_n(2).await;
    let ds = vec![m[0].d.clone(), m[1].d.clone()];
    let kept = token(&lock(&ds[0], "kept", "k", json!({"ttl_seconds": 300})).await);

    // Load across both daemons. In its middle the coordinator's sessions are ended; later
    // every daemon's.
    let check = Arc::new(Checker::default());
    let started = Instant::now();
    let until = started + Duration::from_secs(12);
    let clients = start_load(&ds, 3, &check, until, 5);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cut = Instant::now();
    let ended = c.terminate(&m[0].app).await;
    println!("cut 1: ended {ended} database sessions of the coordinator");
    assert!(
        ended >= 2,
        "the coordinator should have had a listening and an engine session"
    );
    // Both daemons work again (the load goes on meanwhile).
    for d in &ds {
        until_ok(d, "list_locks", json!({})).await;
    }
    println!(
        "cut 1: both daemons answer again {:?} after it",
        cut.elapsed()
    );
    let first = c.coordinator().await;
    assert!(first.is_some(), "nobody coordinates");
    println!(
        "cut 1: now coordinating: {}",
        if first.as_deref() == Some(&*m[0].app) {
            "the same daemon (reconnected)"
        } else {
            "the other daemon"
        }
    );
    tokio::time::sleep_until((started + Duration::from_secs(7)).into()).await;
    let cut2 = Instant::now();
    let ended = c.terminate_all().await;
    println!("cut 2: ended all {ended} airlock database sessions");
    for d in &ds {
        until_ok(d, "list_locks", json!({})).await;
    }
    println!(
        "cut 2: both daemons answer again {:?} after it",
        cut2.elapsed()
    );
    assert!(c.coordinator().await.is_some(), "nobody coordinates");
    for h in clients {
        within(60, h).await.unwrap();
    }
    // Calls failed only after a cut, and not for long after the second.
    let times = check.error_times.lock().unwrap().clone();
    if let Some(early) = times.iter().find(|t| **t < cut) {
        panic!("a call failed {:?} before the first cut", cut - *early);
    }
    if let Some(last) = times.iter().max() {
        println!(
            "the last failed call came {:?} after the second cut",
            last.saturating_duration_since(cut2)
        );
    }

    let errors = check.errors.lock().unwrap().clone();
    let distinct: HashSet<String> = errors
        .iter()
        .map(|e| e.split_once(": ").map_or(e.clone(), |(_, m)| m.to_string()))
        .collect();
    println!(
        "{} grants ({} of a lock still held after a failed unlock, {} past a TTL), {} \
         increments, {} failed calls; distinct messages: {distinct:#?}",
        check.grants.load(Ordering::Relaxed),
        check.regrants.load(Ordering::Relaxed),
        check.expired.load(Ordering::Relaxed),
        check.increments.load(Ordering::Relaxed),
        errors.len()
    );
    for e in &distinct {
        let l = e.to_lowercase();
        assert!(
            l.contains("database") || l.contains("coordinat") || l.contains("connection"),
            "not a clear error: {e}"
        );
    }
    let violations = check.violations.lock().unwrap().clone();
    assert!(violations.is_empty(), "{violations:#?}");

    // State survived, and works from both sides.
    assert_eq!(holder(&ds[1], "kept").await.as_deref(), Some("k"));
    unlock(&ds[1], "kept", &kept).await;
    let v1 = ds[0]
        .call("increment_counter", json!({"name": "shared"}))
        .await["value"]
        .as_i64()
        .unwrap();
    let v2 = ds[1]
        .call("increment_counter", json!({"name": "shared"}))
        .await["value"]
        .as_i64()
        .unwrap();
    let seen = check.counter_values.lock().unwrap().clone();
    assert!(
        !seen.contains(&v1) && !seen.contains(&v2) && v2 == v1 + 1,
        "{v1} {v2}"
    );
    // Once the short TTLs of grants nobody heard about have run out, every lock is free.
    within(15, async {
        loop {
            let locks = ds[0].call("list_locks", json!({})).await;
            if locks.as_array().unwrap().is_empty() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    handoff(&ds[0], &ds[1], "after").await;
    handoff(&ds[1], &ds[0], "after2").await;
}

// ---------------------------------------------------------------------------------------------
// 9. A graceful stop hands over at once
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stopping_coordinator_hands_over_at_once() {
    let Some(mut c) = Cluster::new("cluster::a_stopping_coordinator_hands_over_at_once").await
    else {
        return;
    };
    let mut m = c.start_n(2).await;
    let b = m.pop().unwrap();
    let a = m.pop().unwrap();
    a.d.call("set_note", json!({"key": "k", "value": "v"}))
        .await;
    let held = token(&lock(&a.d, "x", "h", json!({"ttl_seconds": 60})).await);

    let mut stopping = a.take();
    let sent = Instant::now();
    let exited = tokio::task::spawn_blocking(move || stopping.stop());
    // The other daemon answers within a couple of seconds of the SIGTERM.
    let note = within(3, b.d.call("get_note", json!({"key": "k"}))).await;
    println!(
        "the other daemon answered {:?} after the coordinator was told to stop",
        sent.elapsed()
    );
    assert_eq!(note["value"], "v");
    let code = within(15, exited).await.unwrap();
    assert_eq!(code, Some(0), "the stopped daemon's exit code");
    c.until_coordinator(&b.app, 5).await;
    assert_eq!(holder(&b.d, "x").await.as_deref(), Some("h"));
    unlock(&b.d, "x", &held).await;
}

/// A graceful stop of the coordinator hands a waiter parked through another daemon over to the
/// next coordinator: it keeps waiting and is granted when the lock frees, instead of getting an
/// early `locked:false` at the stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stopping_coordinator_hands_its_forwarded_waiters_over() {
    let Some(mut c) =
        Cluster::new("cluster::a_stopping_coordinator_hands_its_forwarded_waiters_over").await
    else {
        return;
    };
    let mut m = c.start_n(2).await;
    let b = m.pop().unwrap();
    let a = m.pop().unwrap();
    // Held for 4 s by an agent; the waiter parks through the forwarding daemon B, so its call
    // runs on the coordinator A.
    lock(&b.d, "x", "h", json!({"ttl_seconds": 4})).await;
    let held_at = Instant::now();
    let waiter = spawn_lock(&b.d, "x", "w", json!({"wait_seconds": 30}));
    until_waiters(&b.d, "x", 1).await;

    let mut stopping = a.take();
    let exited = tokio::task::spawn_blocking(move || stopping.stop());
    assert_eq!(within(15, exited).await.unwrap(), Some(0));
    c.until_coordinator(&b.app, 5).await;
    let got = within(30, waiter).await.unwrap();
    assert_eq!(
        got["locked"],
        json!(true),
        "handed over, then granted: {got}"
    );
    assert!(
        held_at.elapsed() >= Duration::from_millis(3_500),
        "granted before the holder's TTL ran out: {:?}",
        held_at.elapsed()
    );
}

// ---------------------------------------------------------------------------------------------
// The forwarding table: only the coordinator of now answers
// ---------------------------------------------------------------------------------------------

async fn backend_pid(client: &tokio_postgres::Client) -> i32 {
    client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0)
}

/// A daemon that lost its coordinator session (a terminated backend, a cut cable) may still run
/// for a moment with its old engine and a pool that reconnects. Its answers must not land: its
/// successor may already have taken the call over and run it again, and two answers to one call
/// can hand a caller a grant the other answer's orphan handling gives away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_session_holding_the_coordinator_lock_can_answer_a_call() {
    use airlock::store::calls::{self, Answered, Take};
    let Some(c) =
        Cluster::new("cluster::only_the_session_holding_the_coordinator_lock_can_answer_a_call")
            .await
    else {
        return;
    };
    let mut admin = c.db.connect().await.unwrap();
    airlock::store::postgres::migrate(&mut admin).await.unwrap();
    let first = c.db.connect().await.unwrap();
    let second = c.db.connect().await.unwrap();
    let (first_pid, second_pid) = (backend_pid(&first).await, backend_pid(&second).await);

    calls::become_coordinator(&first).await.unwrap();
    let id = calls::insert(&c.pg, "d", "get_note", "{}").await.unwrap();
    // Only the holder takes calls.
    assert!(calls::take(&c.pg, Take::All, second_pid)
        .await
        .unwrap()
        .is_empty());
    let taken = calls::take(&c.pg, Take::All, first_pid).await.unwrap();
    assert_eq!(taken.len(), 1);
    // The holder's answer lands.
    let r = calls::answer(&c.pg, id, r#"{"ok":1}"#, None, first_pid)
        .await
        .unwrap();
    assert_eq!(r, Some(Answered::Delivered));

    // The first coordinator's session ends; the second takes over and the first must not answer.
    let id2 = calls::insert(&c.pg, "d", "get_note", "{}").await.unwrap();
    calls::take(&c.pg, Take::All, first_pid).await.unwrap();
    drop(first);
    within(10, calls::become_coordinator(&second))
        .await
        .unwrap();
    let r = calls::answer(&c.pg, id2, r#"{"ok":"stale"}"#, None, first_pid)
        .await
        .unwrap();
    assert_eq!(r, Some(Answered::NotCoordinator));
    assert!(
        calls::answers(&c.pg, &[id2]).await.unwrap().is_empty(),
        "a stale answer landed"
    );
    // The row is still there for the new coordinator, who answers it.
    assert!(calls::take(&c.pg, Take::All, first_pid)
        .await
        .unwrap()
        .is_empty());
    let again = calls::take(&c.pg, Take::All, second_pid).await.unwrap();
    assert_eq!(again.iter().map(|r| r.id).collect::<Vec<_>>(), vec![id2]);
    assert_eq!(again[0].state, calls::CallState::Running);
    let r = calls::answer(&c.pg, id2, r#"{"ok":2}"#, None, second_pid)
        .await
        .unwrap();
    assert_eq!(r, Some(Answered::Delivered));
    assert_eq!(
        calls::answers(&c.pg, &[id2]).await.unwrap(),
        vec![(id2, r#"{"ok":2}"#.to_string())]
    );
}

/// A caller that goes away while its forwarded call's INSERT is under way (held up here by a
/// table lock) leaves no call behind: the row is withdrawn once it lands, so the call never runs
/// for nobody with its grant held until its TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_caller_gone_during_the_forwarding_insert_leaves_nothing_behind() {
    let Some(mut c) = Cluster::new("cluster::a_caller_gone_during_the_forwarding_insert").await
    else {
        return;
    };
    let m = c.start_n(2).await;
    let (a, b) = (&m[0].d, &m[1].d);
    // A call first, so the INSERT is prepared on the forwarding connection: the table lock then
    // holds up the INSERT itself, not its preparation (a prepare cut off leaves nothing).
    b.call("list_locks", json!({})).await;
    let blocker = c.db.connect().await.expect("connect");
    blocker
        .batch_execute("BEGIN; LOCK TABLE airlock.calls IN EXCLUSIVE MODE")
        .await
        .expect("lock airlock.calls");
    let args = json!({"name": "x", "agent_id": "gone", "ttl_seconds": 3600});
    let call = b.call_raw("lock_resource", args);
    assert!(
        tokio::time::timeout(Duration::from_secs(2), call)
            .await
            .is_err(),
        "the INSERT was held up"
    );
    // The caller is gone (its connection closed); now the INSERT lands.
    tokio::time::sleep(Duration::from_millis(500)).await;
    blocker.batch_execute("ROLLBACK").await.expect("unlock");
    within(60, async {
        loop {
            let left: i64 =
                c.pg.query_one("SELECT count(*) FROM airlock.calls", &[])
                    .await
                    .expect("count calls")
                    .get(0);
            if left == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    // The grant is given back by an engine transaction that commits after the row's DELETE is
    // visible, whichever of the two the coordinator sends first, so the lock may still show held
    // for a moment after the table is empty (seen on a loaded machine). It must go soon, not at
    // its TTL (an hour).
    within(30, async {
        while let Some(h) = holder(a, "x").await {
            assert_eq!(h, "gone", "only the call that went away could hold it");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
}

/// Installs a trigger that refuses to mark answered the forwarded calls of `agent` (while
/// `public.hold` has a row; deleting it lets them through), so a test can kill the coordinator
/// with such an answer unwritten. With `retake_too`, a new coordinator's re-take of the running
/// row is refused as well, leaving the row exactly as the dead coordinator left it.
async fn hold_answers(c: &Cluster, agent: &str, retake_too: bool) {
    let retake = if retake_too {
        "OR (NEW.state = 'running' AND NEW.orphan IS NOT DISTINCT FROM OLD.orphan)"
    } else {
        ""
    };
    c.pg.batch_execute(&format!(
        "CREATE TABLE public.hold (on_ BOOLEAN);
         INSERT INTO public.hold VALUES (true);
         CREATE FUNCTION public.hold_answers() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
           IF OLD.state = 'running' AND OLD.args LIKE '%\"{agent}\"%'
              AND (NEW.state = 'done' {retake}) AND EXISTS (SELECT 1 FROM public.hold) THEN
             RAISE EXCEPTION 'answers held back by the test';
           END IF;
           RETURN NEW;
         END $$;
         CREATE TRIGGER hold_answers BEFORE UPDATE ON airlock.calls
           FOR EACH ROW EXECUTE FUNCTION public.hold_answers();"
    ))
    .await
    .expect("install the trigger");
}

/// Once coordinator `a` has granted `name` to agent `gone` (whose answer a trigger holds back),
/// kills it, lets the caller leave, and checks that the survivor `b` gives the grant back: the
/// next caller gets the lock.
async fn die_with_the_grant_unanswered(
    a: Member,
    b: &Member,
    name: &str,
    caller: tokio::task::JoinHandle<Value>,
) {
    within(20, async {
        while holder(&a.d, name).await.as_deref() != Some("gone") {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(!caller.is_finished(), "the answer was held back");

    // The coordinator dies with the answer unwritten; then the caller leaves.
    let mut dead = a.take();
    dead.kill();
    caller.abort();
    let _ = caller.await;

    // The survivor coordinates and gives the grant back: the next caller gets the lock.
    let next = lock(&b.d, name, "next", json!({"wait_seconds": 30})).await;
    assert_eq!(
        next["locked"],
        json!(true),
        "the grant nobody read was held: {next}"
    );
}

/// Issue 13, item 7: the coordinator grants a forwarded call, then dies before its answer is
/// written, and the caller leaves. The grant was written beside the call's row in the grant's
/// own transaction, so the next coordinator gives it back at once; without that record the lock
/// stayed held for nobody until its TTL (ten minutes here).
///
/// A trigger holds the answer back (it refuses to mark this call's row answered, and refuses the
/// new coordinator's re-take of it, so the row stays exactly as the dead coordinator left it).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_grant_left_by_a_coordinator_that_died_unanswered_is_given_back() {
    let Some(mut c) = Cluster::new("cluster::a_grant_left_by_a_dead_coordinator").await else {
        return;
    };
    let mut m = c.start_n(2).await;
    let b = m.pop().unwrap();
    let a = m.pop().unwrap();
    b.d.call("list_locks", json!({})).await;
    hold_answers(&c, "gone", true).await;

    // The caller, through the forwarding daemon: the coordinator grants, cannot answer.
    let caller = {
        let d = b.d.clone();
        tokio::spawn(async move {
            d.call_raw(
                "lock_resource",
                json!({"name": "held-answer", "agent_id": "gone", "ttl_seconds": 600}),
            )
            .await
        })
    };
    die_with_the_grant_unanswered(a, &b, "held-answer", caller).await;
    let left: i64 =
        c.pg.query_one(
            "SELECT count(*) FROM airlock.calls WHERE args LIKE '%\"gone\"%'",
            &[],
        )
        .await
        .expect("count calls")
        .get(0);
    assert_eq!(left, 0, "the abandoned call's row is cleared");
}

/// The same for a grant made by a handoff: the caller, through the forwarding daemon, was parked
/// behind a holder, and the holder's unlock granted it the lock. That grant, made when the line
/// moved rather than when the call arrived, is written beside the call's row too, so the next
/// coordinator gives it back when the caller leaves.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_handoff_grant_left_by_a_coordinator_that_died_unanswered_is_given_back() {
    let Some(mut c) = Cluster::new("cluster::a_handoff_grant_left_by_a_dead_coordinator").await
    else {
        return;
    };
    let mut m = c.start_n(2).await;
    let b = m.pop().unwrap();
    let a = m.pop().unwrap();
    b.d.call("list_locks", json!({})).await;
    let held = lock(&a.d, "handed", "holder", json!({"ttl_seconds": 600})).await;
    hold_answers(&c, "gone", true).await;

    // The caller, through the forwarding daemon, parks behind the holder.
    let caller = {
        let d = b.d.clone();
        tokio::spawn(async move {
            d.call_raw(
                "lock_resource",
                json!({"name": "handed", "agent_id": "gone", "ttl_seconds": 600,
                       "wait_seconds": 60}),
            )
            .await
        })
    };
    until_waiters(&a.d, "handed", 1).await;
    // The unlock hands the lock to the caller; the coordinator cannot answer it.
    unlock(&a.d, "handed", &token(&held)).await;
    die_with_the_grant_unanswered(a, &b, "handed", caller).await;
}

/// The same, for a claim whose caller is still waiting: the new coordinator re-runs
/// `claim_next_task`, and gives back the lease the dead coordinator granted first, so the caller
/// gets that task rather than the next one while the first stays leased to nobody.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lease_left_by_a_coordinator_that_died_unanswered_is_given_back_before_the_rerun() {
    let Some(mut c) = Cluster::new("cluster::a_lease_left_by_a_dead_coordinator").await else {
        return;
    };
    let mut m = c.start_n(2).await;
    let b = m.pop().unwrap();
    let a = m.pop().unwrap();
    let first =
        b.d.call("push_task", json!({"queue": "q", "payload": "1"}))
            .await["id"]
            .clone();
    b.d.call("push_task", json!({"queue": "q", "payload": "2"}))
        .await;
    hold_answers(&c, "claimer", false).await;
    let caller = {
        let d = b.d.clone();
        tokio::spawn(async move {
            d.call_raw(
                "claim_next_task",
                json!({"queue": "q", "agent_id": "claimer", "lease_seconds": 600}),
            )
            .await
        })
    };
    // Claimed, answer held back.
    within(20, async {
        loop {
            let tasks = a.d.call("list_tasks", json!({"queue": "q"})).await;
            if tasks.to_string().contains("claimed") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(!caller.is_finished(), "the answer was held back");
    let mut dead = a.take();
    dead.kill();
    c.pg.batch_execute("DELETE FROM public.hold")
        .await
        .expect("let the answers through");
    let got = within(30, caller).await.expect("the caller's task");
    let text = got["result"]["content"][0]["text"].as_str().unwrap_or("");
    let claim: Value = serde_json::from_str(text).unwrap_or(Value::Null);
    assert_eq!(
        claim["id"], first,
        "the re-run claimed the next task: {got}"
    );
    let tasks = b.d.call("list_tasks", json!({"queue": "q"})).await;
    let claimed = tasks
        .as_array()
        .expect("a list")
        .iter()
        .filter(|t| t["state"] == "claimed")
        .count();
    assert_eq!(claimed, 1, "one task leased, to the caller: {tasks}");
}

/// Forwarded arguments that do not read back are refused with an error; they never run as an
/// empty argument list (a `list_notes` with none would have answered every note).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forwarded_arguments_that_do_not_parse_are_refused() {
    let Some(mut c) = Cluster::new("cluster::forwarded_arguments_that_do_not_parse").await else {
        return;
    };
    let m = c.start_n(2).await;
    let daemon = m[1].app.trim_start_matches("airlock ").to_string();
    let id: i64 =
        c.pg.query_one(
            "WITH c AS (INSERT INTO airlock.calls (daemon, tool, args) \
             VALUES ($1, 'list_notes', '{not json') RETURNING id) \
             SELECT id, pg_notify('airlock_coordinator', 'q' || id) FROM c",
            &[&daemon],
        )
        .await
        .expect("insert a call")
        .get(0);
    let result: String = within(30, async {
        loop {
            let row =
                c.pg.query_opt(
                    "SELECT result FROM airlock.calls WHERE id = $1 AND result IS NOT NULL",
                    &[&id],
                )
                .await
                .expect("read the call");
            if let Some(row) = row {
                break row.get(0);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(
        result.contains("\"err\"") && result.contains("could not be read"),
        "{result}"
    );
}
