//! Fault injection with a history checker.
//!
//! Several client tasks hammer one real daemon with locks (carrying their fences into a fenced
//! resource), shared locks and a semaphore, compare-and-swap on a note, plain note writes, counter
//! increments, and a leased task queue (delayed pushes, single-attempt tasks that die and are
//! redriven, failed attempts, unique keys), while the suite SIGKILLs the daemon at random moments (some of them right after an
//! acknowledgement) and restarts it on the same `AIRLOCK_HOME` and port. Some lock and lease
//! holders stall past their TTL, as a paused process would. Every call is recorded with its start
//! and answer times; after each restart the acknowledged state is checked, and at the end the whole
//! history is.
//!
//! A call whose answer never arrived is *indeterminate*: it may or may not have happened, and the
//! checker allows both. A call refused at connect time never reached the daemon and did not happen.
//!
//! `AIRLOCK_FAULT_SECONDS` (default 40) sets how long faults are injected; `AIRLOCK_FAULT_SEED`
//! replays a run's random choices (the daemon's timing still varies); `AIRLOCK_FAULT_HISTORY=path`
//! writes every call and answer as JSON lines.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Daemon, StartError};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use tokio::sync::{Notify, RwLock};

const CLIENTS: usize = 6;
const LOCKS: &[&str] = &["fault-lock-a", "fault-lock-b"];
/// A readers-writer lock: each call asks shared or exclusive at random.
const RW_LOCK: &str = "fault-rw";
/// A semaphore of [`SEM_LIMIT`] holders.
const SEM_LOCK: &str = "fault-sem";
const SEM_LIMIT: i64 = 2;
const LOCK_TTL_MS: i64 = 2_000;
const LEASE_MS: i64 = 2_000;
/// A holder stops trusting its lock this long before the TTL it asked for runs out, measured from
/// when it *sent* the request (the grant cannot have happened earlier). Covers millisecond
/// rounding in the daemon's clock; a real client would keep a wider margin.
const SAFETY_MARGIN_MS: i64 = 100;
const QUEUE: &str = "fault-queue";
/// `delay_seconds` of a delayed push.
const DELAY_MS: i64 = 1_000;

const CAS_KEY: &str = "fault-cas";
const COUNTER: &str = "fault-counter";

// ------------------------------------------------------------------ the history

#[derive(Debug, Clone)]
enum Outcome {
    /// The daemon answered; the tool's result.
    Answer(Value),
    /// The tool answered with `isError` (should not happen here; treated as indeterminate).
    ToolError(String),
    /// No answer: the daemon died mid-call, or the connection broke.
    Indeterminate(String),
    /// Refused at connect time: the request never reached a daemon.
    NotSent,
}

#[derive(Debug, Clone)]
struct Call {
    client: String,
    tool: String,
    args: Value,
    /// Milliseconds since the run started.
    start: i64,
    end: i64,
    outcome: Outcome,
}

impl Call {
    fn answer(&self) -> Option<&Value> {
        match &self.outcome {
            Outcome::Answer(v) => Some(v),
            _ => None,
        }
    }

    /// May have taken effect without us knowing.
    fn maybe(&self) -> bool {
        matches!(
            self.outcome,
            Outcome::Indeterminate(_) | Outcome::ToolError(_)
        )
    }
}

/// A write to the fenced resource made inside a critical section.
#[derive(Debug, Clone)]
struct FencedWrite {
    lock: String,
    fence: i64,
    at: i64,
    accepted: bool,
    /// Whether the writer's lock was still valid by its own conservative reckoning.
    within_lease: bool,
}

/// The resource the locks protect: it remembers the highest fence it has seen per lock and refuses
/// anything older, which is how a paused holder's late write is stopped.
#[derive(Default)]
struct FencedResource {
    highest: Mutex<HashMap<String, i64>>,
}

impl FencedResource {
    /// Applies a write; returns whether it was accepted, and when (read under the lock, so the
    /// time is that of the decision even if the writer was descheduled on its way here).
    fn write(&self, lock: &str, fence: i64, clock: impl Fn() -> i64) -> (bool, i64) {
        // Nothing is awaited while this is held.
        let mut h = self.highest.lock().unwrap();
        let at = clock();
        let top = h.entry(lock.to_string()).or_insert(0);
        if fence >= *top {
            *top = fence;
            (true, at)
        } else {
            (false, at)
        }
    }
}

struct World {
    epoch: Instant,
    url: Mutex<String>,
    token: String,
    calls: Mutex<Vec<Call>>,
    writes: Mutex<Vec<FencedWrite>>,
    resource: FencedResource,
    /// Clients hold it shared for each call; the orchestrator takes it to quiesce them.
    gate: RwLock<()>,
    stop: AtomicBool,
    /// Woken on every acknowledged answer (for kills right after an acknowledgement).
    acked: Notify,
    paused_holders: AtomicU64,
    paused_claimers: AtomicU64,
}

impl World {
    fn now(&self) -> i64 {
        self.epoch.elapsed().as_millis() as i64
    }

    /// One recorded tool call, made while the gate is open.
    async fn call(&self, http: &reqwest::Client, client: &str, tool: &str, args: Value) -> Call {
        let _open = self.gate.read().await;
        self.call_ungated(http, client, tool, args).await
    }

    /// One recorded tool call, whatever the gate (the checker calls this while it holds it).
    async fn call_ungated(
        &self,
        http: &reqwest::Client,
        client: &str,
        tool: &str,
        args: Value,
    ) -> Call {
        let url = self.url.lock().unwrap().clone();
        let start = self.now();
        let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                          "params": {"name": tool, "arguments": args}});
        let sent = http
            .post(&url)
            .header("Content-Type", "application/json")
            .bearer_auth(&self.token)
            .body(body.to_string())
            .send()
            .await;
        let outcome = match sent {
            Err(e) if e.is_connect() => Outcome::NotSent,
            Err(e) => Outcome::Indeterminate(e.to_string()),
            Ok(r) => match r.text().await {
                Err(e) => Outcome::Indeterminate(e.to_string()),
                Ok(text) => match serde_json::from_str::<Value>(&text) {
                    Err(_) => Outcome::Indeterminate(format!("not JSON: {text}")),
                    Ok(v) if v["result"]["isError"] == json!(true) => {
                        Outcome::ToolError(v["result"]["content"][0]["text"].to_string())
                    }
                    Ok(v) => match v["result"]["content"][0]["text"]
                        .as_str()
                        .and_then(|t| serde_json::from_str::<Value>(t).ok())
                    {
                        Some(answer) => Outcome::Answer(answer),
                        None => Outcome::Indeterminate(format!("unexpected answer: {v}")),
                    },
                },
            },
        };
        let call = Call {
            client: client.to_string(),
            tool: tool.to_string(),
            args,
            start,
            end: self.now(),
            outcome,
        };
        if call.answer().is_some() {
            self.acked.notify_waiters();
        }
        self.calls.lock().unwrap().push(call.clone());
        call
    }

    fn fenced_write(&self, lock: &str, fence: i64, valid_until: i64) {
        let (accepted, at) = self.resource.write(lock, fence, || self.now());
        self.writes.lock().unwrap().push(FencedWrite {
            lock: lock.to_string(),
            fence,
            at,
            accepted,
            within_lease: at < valid_until,
        });
    }
}

// ------------------------------------------------------------------ the clients

async fn client(world: Arc<World>, id: usize, seed: u64) {
    let me = format!("c{id}");
    let mut rng = StdRng::seed_from_u64(seed);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let mut seq = 0u64;
    // Tasks this client pushed with `max_attempts: 1`: what it redrives.
    let mut single_attempt: Vec<i64> = Vec::new();
    while !world.stop.load(Ordering::Relaxed) {
        seq += 1;
        let roll: u32 = rng.random_range(0..100);
        if roll < 12 {
            // A shared lock or a semaphore: held briefly (or past its TTL, paused), released.
            let (lock, mode) = if rng.random_range(0..2) == 0 {
                let shared = rng.random_range(0..100) < 60;
                (RW_LOCK, json!({"shared": shared}))
            } else {
                (SEM_LOCK, json!({"limit": SEM_LIMIT}))
            };
            let mut args = json!({"name": lock, "agent_id": format!("{me}-{seq}"),
                                  "ttl_seconds": LOCK_TTL_MS / 1000, "wait_seconds": 3});
            for (k, v) in mode.as_object().unwrap() {
                args[k] = v.clone();
            }
            let c = world.call(&http, &me, "lock_resource", args).await;
            let Some(a) = c.answer().filter(|a| a["locked"] == json!(true)) else {
                continue;
            };
            let token = a["lock_token"].as_str().unwrap().to_string();
            let pause = if rng.random_range(0..100) < 12 {
                LOCK_TTL_MS + 600
            } else {
                rng.random_range(0..30)
            };
            tokio::time::sleep(Duration::from_millis(pause as u64)).await;
            world
                .call(
                    &http,
                    &me,
                    "unlock_resource",
                    json!({"name": lock, "lock_token": token}),
                )
                .await;
        } else if roll < 40 {
            let lock = LOCKS[rng.random_range(0..LOCKS.len())];
            let agent = format!("{me}-{seq}");
            let c = world
                .call(
                    &http,
                    &me,
                    "lock_resource",
                    json!({"name": lock, "agent_id": agent,
                           "ttl_seconds": LOCK_TTL_MS / 1000, "wait_seconds": 3}),
                )
                .await;
            let Some(a) = c.answer().filter(|a| a["locked"] == json!(true)) else {
                continue;
            };
            let fence = a["fence"].as_i64().expect("a grant carries a fence");
            let token = a["lock_token"].as_str().unwrap().to_string();
            let valid_until = c.start + LOCK_TTL_MS - SAFETY_MARGIN_MS;
            world.fenced_write(lock, fence, valid_until);
            if rng.random_range(0..100) < 12 {
                // A paused holder: it wakes up after its lock has expired and carries on.
                world.paused_holders.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis((LOCK_TTL_MS + 600) as u64)).await;
            } else {
                tokio::time::sleep(Duration::from_millis(rng.random_range(0..30))).await;
            }
            world.fenced_write(lock, fence, valid_until);
            world
                .call(
                    &http,
                    &me,
                    "unlock_resource",
                    json!({"name": lock, "lock_token": token}),
                )
                .await;
        } else if roll < 55 {
            let got = world
                .call(&http, &me, "get_note", json!({"key": CAS_KEY}))
                .await;
            let Some(a) = got.answer() else { continue };
            let current = a["value"].as_str().unwrap_or("").to_string();
            let n = cas_n(&current).unwrap_or(0);
            let new = format!("{}:{me}:{seq}", n + 1);
            world
                .call(
                    &http,
                    &me,
                    "set_note_if",
                    json!({"key": CAS_KEY, "expected_value": current, "new_value": new}),
                )
                .await;
        } else if roll < 70 {
            world
                .call(&http, &me, "increment_counter", json!({"name": COUNTER}))
                .await;
        } else if roll < 80 {
            world
                .call(
                    &http,
                    &me,
                    "set_note",
                    json!({"key": format!("fault-own-{me}"), "value": seq.to_string()}),
                )
                .await;
        } else if roll < 90 {
            let mut args = json!({"queue": QUEUE, "payload": format!("{me}-{seq}")});
            // One push in three carries one of a few unique keys: at most one live task each.
            if rng.random_range(0..3) == 0 {
                args["unique_key"] = json!(format!("fault-key-{}", rng.random_range(0..3)));
            }
            // One in four is delayed (never claimed before then, kills or not); one in five has
            // a single attempt (a lapsed lease makes it dead, never claimed again unless retried).
            if rng.random_range(0..4) == 0 {
                args["delay_seconds"] = json!(DELAY_MS / 1000);
            }
            let single = rng.random_range(0..5) == 0;
            if single {
                args["max_attempts"] = json!(1);
            }
            let c = world.call(&http, &me, "push_task", args).await;
            if let (true, Some(id)) = (single, c.answer().and_then(|a| a["id"].as_i64())) {
                single_attempt.push(id);
            }
        } else if roll < 92 {
            // Redrive one of its single-attempt tasks: back to pending if it died, else refused.
            if single_attempt.is_empty() {
                continue;
            }
            let id = single_attempt[rng.random_range(0..single_attempt.len())];
            world
                .call(&http, &me, "retry_task", json!({"id": id}))
                .await;
        } else {
            let c = world
                .call(
                    &http,
                    &me,
                    "claim_next_task",
                    json!({"queue": QUEUE, "agent_id": format!("{me}-{seq}"),
                           "lease_seconds": LEASE_MS / 1000}),
                )
                .await;
            let Some(a) = c.answer().filter(|a| a["claimed"] == json!(true)) else {
                continue;
            };
            let id = a["id"].as_i64().unwrap();
            let lease = a["lease_token"].as_str().unwrap().to_string();
            if rng.random_range(0..100) < 10 {
                world.paused_claimers.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis((LEASE_MS + 600) as u64)).await;
            } else {
                tokio::time::sleep(Duration::from_millis(rng.random_range(0..20))).await;
            }
            // One attempt in five fails (back to pending, or dead at its limit).
            let (tool, args) = if rng.random_range(0..5) == 0 {
                let args = json!({"id": id, "lease_token": lease, "error": "fault"});
                ("fail_task", args)
            } else {
                ("complete_task", json!({"id": id, "lease_token": lease}))
            };
            world.call(&http, &me, tool, args).await;
        }
    }
}

fn cas_n(value: &str) -> Option<i64> {
    value.split(':').next()?.parse().ok()
}

// ------------------------------------------------------------------ the daemon

/// Starts `airlock serve` on `listen` (on the selected backend, `RUST_LOG=error`).
async fn spawn_daemon(home: &Path, listen: &str) -> Result<Daemon, StartError> {
    Daemon::serve()
        .home(home)
        .listen(listen)
        .selected_backend()
        .rust_log("error")
        .try_start()
        .await
}

/// Restarts on the same port; a few tries in case the old socket is still being torn down.
async fn respawn(home: &Path, listen: &str) -> Daemon {
    let mut last = String::new();
    for _ in 0..50 {
        match spawn_daemon(home, listen).await {
            Ok(d) => return d,
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("could not restart the daemon on {listen}: {last}");
}

// ------------------------------------------------------------------ the checker

#[derive(Default)]
struct Report {
    checks: u64,
    violations: Vec<String>,
}

impl Report {
    fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        self.checks += 1;
        if !ok {
            let w = what();
            eprintln!("VIOLATION: {w}");
            self.violations.push(w);
        }
    }
}

/// An acknowledged lock grant and how long its holder relied on it.
struct Grant {
    lock: String,
    /// Asked shared (or as a semaphore's holder).
    shared: bool,
    fence: i64,
    start: i64,
    answered: i64,
    /// Until when the holder may act on it: unlock sent, or the conservative expiry.
    until: i64,
}

fn grants(calls: &[Call]) -> Vec<Grant> {
    let mut unlock_start: HashMap<String, i64> = HashMap::new();
    for c in calls.iter().filter(|c| c.tool == "unlock_resource") {
        let t = c.args["lock_token"].as_str().unwrap_or("").to_string();
        let e = unlock_start.entry(t).or_insert(c.start);
        *e = (*e).min(c.start);
    }
    calls
        .iter()
        .filter(|c| c.tool == "lock_resource")
        .filter_map(|c| {
            let a = c.answer()?;
            if a["locked"] != json!(true) {
                return None;
            }
            let token = a["lock_token"].as_str()?.to_string();
            let expiry = c.start + c.args["ttl_seconds"].as_i64()? * 1000 - SAFETY_MARGIN_MS;
            let until = unlock_start.get(&token).copied().unwrap_or(i64::MAX);
            Some(Grant {
                lock: c.args["name"].as_str()?.to_string(),
                shared: c.args["shared"] == json!(true) || c.args["limit"].is_i64(),
                fence: a["fence"].as_i64()?,
                start: c.start,
                answered: c.end,
                until: until.min(expiry),
            })
        })
        .collect()
}

fn check_locks(calls: &[Call], writes: &[FencedWrite], r: &mut Report) {
    let all = grants(calls);
    for lock in LOCKS {
        let mut gs: Vec<&Grant> = all.iter().filter(|g| g.lock == *lock).collect();
        gs.sort_by_key(|g| g.answered);
        // No two acknowledged grants are relied on at the same time.
        for w in gs.windows(2) {
            let (a, b) = (w[0], w[1]);
            r.check(b.answered >= a.until || a.answered >= a.until, || {
                format!(
                    "{lock}: grant fence {} (held {}..{}) overlaps grant fence {} (answered at {})",
                    a.fence, a.answered, a.until, b.fence, b.answered
                )
            });
        }
        // Fences are unique and grow: a grant answered before another was asked for has a
        // smaller fence.
        let mut seen = HashSet::new();
        for g in &gs {
            r.check(seen.insert(g.fence), || {
                format!("{lock}: fence {} granted twice", g.fence)
            });
        }
        let mut by_answer = gs.clone();
        by_answer.sort_by_key(|g| g.answered);
        let mut max_answered: Vec<(i64, i64)> = Vec::new(); // (answered, fence) prefix
        for g in &by_answer {
            max_answered.push((g.answered, g.fence));
        }
        for b in &gs {
            for (answered, fence) in &max_answered {
                if *answered < b.start {
                    r.check(*fence < b.fence, || {
                        format!(
                            "{lock}: fence {} was answered before a later request got fence {}",
                            fence, b.fence
                        )
                    });
                }
            }
        }
    }
    // Every write made while its holder's lock was valid was accepted by the fenced resource:
    // a refusal would mean a newer fence had been handed to someone else meanwhile.
    for w in writes.iter().filter(|w| w.within_lease) {
        r.check(w.accepted, || {
            format!(
                "{}: a write with fence {} at {} inside its lease was refused (someone got a newer fence early)",
                w.lock, w.fence, w.at
            )
        });
    }
}

/// The shared lock and the semaphore: at every instant some grant starts being relied on, the
/// grants relied on then are compatible — at most one exclusive, never beside a shared one, and
/// at most [`SEM_LIMIT`] holders of the semaphore. Fences are unique per name.
fn check_modes(calls: &[Call], r: &mut Report) {
    let all = grants(calls);
    for lock in [RW_LOCK, SEM_LOCK] {
        let gs: Vec<&Grant> = all
            .iter()
            .filter(|g| g.lock == lock && g.answered < g.until)
            .collect();
        for g in &gs {
            let at = g.answered;
            let together: Vec<&&Grant> = gs
                .iter()
                .filter(|o| o.answered <= at && at < o.until)
                .collect();
            let exclusive = together.iter().filter(|o| !o.shared).count();
            r.check(exclusive == 0 || together.len() == 1, || {
                let fences: Vec<(i64, bool)> = together.iter().map(|o| (o.fence, o.shared)).collect();
                format!("{lock}: at {at} an exclusive grant was relied on beside others: (fence, shared) {fences:?}")
            });
            if lock == SEM_LOCK {
                r.check(together.len() as i64 <= SEM_LIMIT, || {
                    let fences: Vec<i64> = together.iter().map(|o| o.fence).collect();
                    format!(
                        "{lock}: {} holders at {at}, over its limit {SEM_LIMIT}: fences {fences:?}",
                        together.len()
                    )
                });
            }
        }
        let mut seen = HashSet::new();
        for g in all.iter().filter(|g| g.lock == lock) {
            r.check(seen.insert(g.fence), || {
                format!("{lock}: fence {} granted twice", g.fence)
            });
        }
    }
}

fn check_counter(calls: &[Call], r: &mut Report) {
    let incs: Vec<&Call> = calls
        .iter()
        .filter(|c| c.tool == "increment_counter" && c.args.get("by").is_none())
        .collect();
    let mut seen = HashSet::new();
    let attempted = incs
        .iter()
        .filter(|c| !matches!(c.outcome, Outcome::NotSent))
        .count() as i64;
    for c in &incs {
        if let Some(v) = c.answer().and_then(|a| a["value"].as_i64()) {
            r.check(seen.insert(v), || {
                format!("counter value {v} returned twice")
            });
            r.check(v >= 1 && v <= attempted, || {
                format!("counter value {v} is outside 1..={attempted} (the increments sent)")
            });
        }
    }
}

fn check_cas(calls: &[Call], r: &mut Report) {
    let mut written: HashSet<String> = HashSet::new();
    written.insert(String::new());
    let mut expected_used: HashMap<String, usize> = HashMap::new();
    let mut n_used: HashMap<i64, usize> = HashMap::new();
    for c in calls.iter().filter(|c| c.tool == "set_note_if") {
        let new = c.args["new_value"].as_str().unwrap_or("").to_string();
        if c.maybe() || c.answer().is_some_and(|a| a["swapped"] == json!(true)) {
            written.insert(new.clone());
        }
        if c.answer().is_some_and(|a| a["swapped"] == json!(true)) {
            let exp = c.args["expected_value"].as_str().unwrap_or("").to_string();
            *expected_used.entry(exp).or_default() += 1;
            *n_used.entry(cas_n(&new).unwrap_or(-1)).or_default() += 1;
        }
    }
    for (exp, k) in &expected_used {
        r.check(*k == 1, || {
            format!("CAS: value {exp:?} was swapped out {k} times")
        });
    }
    for (n, k) in &n_used {
        r.check(*k == 1, || {
            format!("CAS: chain position {n} was written {k} times")
        });
    }
    // Every value a reader saw was written by some CAS that succeeded or may have.
    for c in calls
        .iter()
        .filter(|c| c.tool == "get_note" && c.args["key"] == json!(CAS_KEY))
    {
        if let Some(v) = c.answer().and_then(|a| a["value"].as_str()) {
            r.check(written.contains(v), || {
                format!("CAS: read {v:?}, which no CAS wrote")
            });
        }
    }
}

fn check_tasks(calls: &[Call], final_tasks: &[Value], r: &mut Report) {
    let mut pushed: BTreeMap<i64, String> = BTreeMap::new();
    // Acknowledged pushes' options: id → (push started, delay, max_attempts).
    let mut options: HashMap<i64, (i64, i64, Option<i64>)> = HashMap::new();
    let mut maybe_payloads: HashSet<String> = HashSet::new();
    // Pushes answered `duplicate: true`: (the id they were given, the key they asked for).
    let mut duplicates: Vec<(i64, String)> = Vec::new();
    for c in calls.iter().filter(|c| c.tool == "push_task") {
        let payload = c.args["payload"].as_str().unwrap().to_string();
        let duplicate = c.answer().is_some_and(|a| a["duplicate"] == json!(true));
        if let Some(id) = c.answer().and_then(|a| a["id"].as_i64()) {
            if duplicate {
                let key = c.args["unique_key"].as_str().unwrap_or("").to_string();
                r.check(!key.is_empty(), || {
                    format!("a push without a unique_key was answered duplicate (task {id})")
                });
                duplicates.push((id, key));
                continue;
            }
            r.check(pushed.insert(id, payload.clone()).is_none(), || {
                format!("task id {id} returned by two pushes")
            });
            let delay = c.args["delay_seconds"].as_i64().unwrap_or(0) * 1000;
            options.insert(id, (c.start, delay, c.args["max_attempts"].as_i64()));
        }
        if !matches!(c.outcome, Outcome::NotSent) {
            maybe_payloads.insert(payload);
        }
    }
    // Claims: (task id) → [(lease, call start, answered, valid until)].
    let mut claims: HashMap<i64, Vec<(String, i64, i64, i64)>> = HashMap::new();
    for c in calls.iter().filter(|c| c.tool == "claim_next_task") {
        if let Some(a) = c.answer().filter(|a| a["claimed"] == json!(true)) {
            let id = a["id"].as_i64().unwrap();
            let lease = a["lease_token"].as_str().unwrap().to_string();
            let until =
                c.start + c.args["lease_seconds"].as_i64().unwrap() * 1000 - SAFETY_MARGIN_MS;
            claims
                .entry(id)
                .or_default()
                .push((lease, c.start, c.end, until));
        }
    }
    let mut completed: HashMap<i64, Vec<(String, i64)>> = HashMap::new();
    for c in calls.iter().filter(|c| c.tool == "complete_task") {
        if c.answer().is_some_and(|a| a["completed"] == json!(true)) {
            let id = c.args["id"].as_i64().unwrap();
            let lease = c.args["lease_token"].as_str().unwrap().to_string();
            completed.entry(id).or_default().push((lease, c.start));
        }
    }
    for (id, done) in &completed {
        r.check(done.len() == 1, || {
            format!("task {id} was completed {} times", done.len())
        });
        // Completed under the current lease: no newer claim was answered before it was asked.
        let (lease, asked) = &done[0];
        let mine = claims
            .get(id)
            .and_then(|cs| cs.iter().find(|c| &c.0 == lease));
        r.check(mine.is_some(), || {
            format!("task {id} completed with a lease no claim answered")
        });
        if let (Some(mine), Some(cs)) = (mine, claims.get(id)) {
            for other in cs.iter().filter(|c| &c.0 != lease) {
                r.check(!(other.1 > mine.2 && other.2 < *asked), || {
                    format!("task {id} completed under a stale lease after a newer claim")
                });
            }
        }
    }
    // Redrives that may have happened, per task.
    let mut retries: HashMap<i64, i64> = HashMap::new();
    for c in calls.iter().filter(|c| c.tool == "retry_task") {
        if c.maybe() || c.answer().is_some_and(|a| a["retried"] == json!(true)) {
            *retries.entry(c.args["id"].as_i64().unwrap()).or_default() += 1;
        }
    }
    for (id, cs) in &claims {
        let Some(&(pushed_at, delay, max_attempts)) = options.get(id) else {
            continue;
        };
        // A delayed task is never claimed before its delay (the push began no later than the
        // daemon's clock read it; 5 ms for the clocks' rounding).
        for c in cs {
            r.check(c.2 >= pushed_at + delay - 5, || {
                format!(
                    "task {id}, delayed {delay} ms, was claimed {} ms after its push began",
                    c.2 - pushed_at
                )
            });
        }
        // A task of `max_attempts` is claimed at most that often per life (a redrive starts
        // another): a dead task is never claimed.
        if let Some(max) = max_attempts {
            let lives = 1 + retries.get(id).copied().unwrap_or(0);
            r.check(cs.len() as i64 <= max * lives, || {
                format!(
                    "task {id} (max_attempts {max}, {} redrives) was claimed {} times",
                    lives - 1,
                    cs.len()
                )
            });
        }
    }
    // A lease given back by `fail_task` ends when that call began at the earliest.
    let mut given_back: HashMap<String, i64> = HashMap::new();
    for c in calls.iter().filter(|c| c.tool == "fail_task") {
        if c.maybe() || c.answer().is_some_and(|a| a["failed"] == json!(true)) {
            let lease = c.args["lease_token"].as_str().unwrap().to_string();
            let at = given_back.entry(lease).or_insert(c.start);
            *at = (*at).min(c.start);
        }
    }
    for (id, cs) in &claims {
        let mut cs = cs.clone();
        cs.sort_by_key(|c| c.2);
        for c in &mut cs {
            if let Some(&at) = given_back.get(&c.0) {
                c.3 = c.3.min(at);
            }
        }
        for w in cs.windows(2) {
            r.check(w[1].2 >= w[0].3 || w[0].2 >= w[0].3, || {
                format!("task {id} was leased to two claimants at once")
            });
        }
    }
    // The final state: nothing acknowledged is lost, nothing appears from nowhere.
    let by_id: HashMap<i64, &Value> = final_tasks
        .iter()
        .map(|t| (t["id"].as_i64().unwrap(), t))
        .collect();
    for (id, payload) in &pushed {
        let t = by_id.get(id);
        r.check(t.is_some(), || format!("task {id} ({payload}) was lost"));
        if let Some(t) = t {
            let state = t["state"].as_str().unwrap_or("");
            r.check(
                ["pending", "claimed", "completed", "failed", "dead"].contains(&state),
                || format!("task {id} is in an unknown state {state}"),
            );
            r.check(state != "dead" || t["max_attempts"].is_i64(), || {
                format!("task {id} is dead without an attempt limit")
            });
            if completed.contains_key(id) {
                r.check(state == "completed", || {
                    format!("task {id} was acknowledged completed but is {state}")
                });
            }
        }
    }
    for t in final_tasks {
        let p = t["payload"].as_str().unwrap_or("");
        r.check(maybe_payloads.contains(p), || {
            format!("task {p:?} appeared without a push")
        });
    }
    // Unique keys: a duplicate answer names a task pushed with that key, and no two tasks with
    // one key are live (pending or claimed) at the end.
    for (id, key) in &duplicates {
        if let Some(t) = by_id.get(id) {
            r.check(t["unique_key"] == json!(key), || {
                format!("a push with key {key} was answered duplicate of task {id}, which has another key")
            });
        }
    }
    let mut live_keys: HashMap<&str, i64> = HashMap::new();
    for t in final_tasks {
        let live = ["pending", "claimed"].contains(&t["state"].as_str().unwrap_or(""));
        if let (true, Some(key)) = (live, t["unique_key"].as_str()) {
            let id = t["id"].as_i64().unwrap_or(0);
            if let Some(other) = live_keys.insert(key, id) {
                r.check(false, || {
                    format!("tasks {other} and {id} are both live with unique_key {key}")
                });
            }
        }
    }
}

/// After a restart (clients quiet): every acknowledged write is there.
async fn check_after_restart(world: &World, http: &reqwest::Client, r: &mut Report) -> Vec<Value> {
    let calls = world.calls.lock().unwrap().clone();
    // Counter: at least the highest value handed out.
    let top = calls
        .iter()
        .filter(|c| c.tool == "increment_counter")
        .filter_map(|c| c.answer().and_then(|a| a["value"].as_i64()))
        .max()
        .unwrap_or(0);
    let c = world
        .call_ungated(
            http,
            "checker",
            "increment_counter",
            json!({"name": COUNTER, "by": 0}),
        )
        .await;
    let now = c.answer().and_then(|a| a["value"].as_i64());
    r.check(now.is_some_and(|v| v >= top), || {
        format!("counter lost acknowledged increments: {now:?} < {top}")
    });
    // Own notes: at least the last acknowledged value of each client.
    for i in 0..CLIENTS {
        let key = format!("fault-own-c{i}");
        let acked = calls
            .iter()
            .filter(|c| c.tool == "set_note" && c.args["key"] == json!(key))
            .filter(|c| c.answer().is_some())
            .filter_map(|c| c.args["value"].as_str()?.parse::<i64>().ok())
            .max();
        if let Some(acked) = acked {
            let g = world
                .call_ungated(http, "checker", "get_note", json!({"key": key}))
                .await;
            let v = g
                .answer()
                .and_then(|a| a["value"].as_str().and_then(|s| s.parse::<i64>().ok()));
            r.check(v.is_some_and(|v| v >= acked), || {
                format!("{key}: acknowledged {acked} but read {v:?} after restart")
            });
        }
    }
    // CAS: at least as far along the chain as the last acknowledged swap.
    let top_n = calls
        .iter()
        .filter(|c| c.tool == "set_note_if")
        .filter(|c| c.answer().is_some_and(|a| a["swapped"] == json!(true)))
        .filter_map(|c| cas_n(c.args["new_value"].as_str()?))
        .max();
    if let Some(top_n) = top_n {
        let g = world
            .call_ungated(http, "checker", "get_note", json!({"key": CAS_KEY}))
            .await;
        let n = g.answer().and_then(|a| a["value"].as_str().and_then(cas_n));
        r.check(n.is_some_and(|n| n >= top_n), || {
            format!("CAS note is at {n:?}, behind the acknowledged {top_n}")
        });
    }
    // Locks: every acknowledged grant still relied on is still held, with its fence.
    let l = world
        .call_ungated(http, "checker", "list_locks", json!({}))
        .await;
    // One entry per holder: a shared lock or a semaphore has several.
    let held: HashSet<(String, i64)> = l
        .answer()
        .and_then(|a| a.as_array().cloned())
        .unwrap_or_default()
        .into_iter()
        .map(|v| {
            (
                v["name"].as_str().unwrap().to_string(),
                v["fence"].as_i64().unwrap(),
            )
        })
        .collect();
    for g in grants(&calls) {
        if g.until == g.start + LOCK_TTL_MS - SAFETY_MARGIN_MS && g.until > l.end + 100 {
            r.check(held.contains(&(g.lock.clone(), g.fence)), || {
                let now: Vec<i64> = held
                    .iter()
                    .filter(|(n, _)| *n == g.lock)
                    .map(|(_, f)| *f)
                    .collect();
                format!(
                    "{}: acknowledged grant fence {} vanished in a restart (held: {now:?})",
                    g.lock, g.fence
                )
            });
        }
    }
    // Tasks: every acknowledged push is there; every acknowledged completion is completed.
    let t = world
        .call_ungated(http, "checker", "list_tasks", json!({"queue": QUEUE}))
        .await;
    let tasks = t
        .answer()
        .and_then(|a| a.as_array().cloned())
        .unwrap_or_default();
    r.check(t.answer().is_some(), || "list_tasks had no answer".into());
    let states: HashMap<i64, String> = tasks
        .iter()
        .map(|t| {
            (
                t["id"].as_i64().unwrap(),
                t["state"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for c in calls.iter().filter(|c| c.tool == "push_task") {
        if let Some(id) = c.answer().and_then(|a| a["id"].as_i64()) {
            r.check(states.contains_key(&id), || {
                format!("pushed task {id} vanished in a restart")
            });
        }
    }
    for c in calls.iter().filter(|c| c.tool == "complete_task") {
        if c.answer().is_some_and(|a| a["completed"] == json!(true)) {
            let id = c.args["id"].as_i64().unwrap();
            r.check(states.get(&id).is_some_and(|s| s == "completed"), || {
                format!(
                    "task {id} was acknowledged completed but is {:?} after a restart",
                    states.get(&id)
                )
            });
        }
    }
    tasks
}

// ------------------------------------------------------------------ the run

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_and_pauses_lose_nothing_and_break_no_promise() {
    let seconds: u64 = std::env::var("AIRLOCK_FAULT_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(40);
    let seed: u64 = std::env::var("AIRLOCK_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("fault run: {seconds}s of faults, seed {seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let tmp = tempfile::tempdir().unwrap();
    let home: PathBuf = tmp.path().join("home");
    let mut daemon = spawn_daemon(&home, "127.0.0.1:0").await.unwrap();
    let listen = daemon.url.trim_start_matches("http://").to_string();
    let world = Arc::new(World {
        epoch: Instant::now(),
        url: Mutex::new(daemon.url.clone()),
        token: daemon.token.clone(),
        calls: Mutex::new(Vec::new()),
        writes: Mutex::new(Vec::new()),
        resource: FencedResource::default(),
        gate: RwLock::new(()),
        stop: AtomicBool::new(false),
        acked: Notify::new(),
        paused_holders: AtomicU64::new(0),
        paused_claimers: AtomicU64::new(0),
    });
    let mut clients = Vec::new();
    for i in 0..CLIENTS {
        clients.push(tokio::spawn(client(
            world.clone(),
            i,
            seed.wrapping_add(i as u64 + 1),
        )));
    }
    let checker_http = reqwest::Client::new();
    let mut report = Report::default();
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut cycles = 0u64;
    let mut kills_after_ack = 0u64;
    while Instant::now() < deadline {
        // Let the clients run, then kill the daemon: at a random moment, or (one cycle in three)
        // the instant after some call is acknowledged.
        let run_ms = rng.random_range(300..2_500);
        if rng.random_range(0..3) == 0 {
            tokio::time::sleep(Duration::from_millis(run_ms / 2)).await;
            let _ = tokio::time::timeout(Duration::from_secs(5), world.acked.notified()).await;
            kills_after_ack += 1;
        } else {
            tokio::time::sleep(Duration::from_millis(run_ms)).await;
        }
        daemon.kill();
        cycles += 1;
        // Quiesce the clients (their in-flight calls fail now), restart, check, resume.
        let quiet = common::within(60, world.gate.write()).await;
        daemon = respawn(&home, &listen).await;
        *world.url.lock().unwrap() = daemon.url.clone();
        check_after_restart(&world, &checker_http, &mut report).await;
        drop(quiet);
    }
    world.stop.store(true, Ordering::Relaxed);
    for c in clients {
        common::within(60, c).await.unwrap();
    }
    // One last crash and restart, then the whole history.
    daemon.kill();
    daemon = respawn(&home, &listen).await;
    *world.url.lock().unwrap() = daemon.url.clone();
    let final_tasks = check_after_restart(&world, &checker_http, &mut report).await;
    let calls = world.calls.lock().unwrap().clone();
    let writes = world.writes.lock().unwrap().clone();
    check_locks(&calls, &writes, &mut report);
    check_modes(&calls, &mut report);
    check_counter(&calls, &mut report);
    check_cas(&calls, &mut report);
    check_tasks(&calls, &final_tasks, &mut report);

    if let Ok(path) = std::env::var("AIRLOCK_FAULT_HISTORY") {
        let mut f = std::fs::File::create(&path).unwrap();
        for c in &calls {
            let outcome = match &c.outcome {
                Outcome::Answer(v) => json!({"answer": v}),
                Outcome::ToolError(e) => json!({"tool_error": e}),
                Outcome::Indeterminate(e) => json!({"indeterminate": e}),
                Outcome::NotSent => json!({"not_sent": true}),
            };
            writeln!(
                f,
                "{}",
                json!({"client": c.client, "tool": c.tool, "args": c.args,
                       "start_ms": c.start, "end_ms": c.end, "outcome": outcome})
            )
            .unwrap();
        }
    }

    let count = |f: &dyn Fn(&Call) -> bool| calls.iter().filter(|c| f(c)).count();
    let acked = count(&|c| c.answer().is_some());
    let indeterminate = count(&|c| matches!(c.outcome, Outcome::Indeterminate(_)));
    let tool_errors = count(&|c| matches!(c.outcome, Outcome::ToolError(_)));
    let not_sent = count(&|c| matches!(c.outcome, Outcome::NotSent));
    let granted = grants(&calls).len();
    let stale_refused = writes
        .iter()
        .filter(|w| !w.within_lease && !w.accepted)
        .count();
    let stale_accepted = writes
        .iter()
        .filter(|w| !w.within_lease && w.accepted)
        .count();
    let completed = count(&|c| {
        c.tool == "complete_task" && c.answer().is_some_and(|a| a["completed"] == json!(true))
    });
    let retried = count(&|c| {
        c.tool == "retry_task" && c.answer().is_some_and(|a| a["retried"] == json!(true))
    });
    let delayed = count(&|c| c.tool == "push_task" && c.args.get("delay_seconds").is_some());
    let dead = final_tasks.iter().filter(|t| t["state"] == "dead").count();
    eprintln!(
        "fault run summary: seed={seed} seconds={seconds} cycles={cycles} \
         kills_right_after_an_ack={kills_after_ack} calls={} acknowledged={acked} \
         indeterminate={indeterminate} tool_errors={tool_errors} not_sent={not_sent} \
         lock_grants={granted} fenced_writes={} paused_holders={} stale_writes_refused={stale_refused} \
         stale_writes_accepted_no_newer_holder={stale_accepted} paused_claimers={} \
         tasks_completed={completed} tasks_final={} delayed_pushes={delayed} \
         redrives={retried} dead_at_end={dead} checks={} violations={}",
        calls.len(),
        writes.len(),
        world.paused_holders.load(Ordering::Relaxed),
        world.paused_claimers.load(Ordering::Relaxed),
        final_tasks.len(),
        report.checks,
        report.violations.len()
    );
    drop(daemon);
    assert!(
        report.violations.is_empty(),
        "{} violations, first: {}",
        report.violations.len(),
        report.violations[0]
    );
    // The run must have exercised what it claims to check.
    assert!(cycles >= 3, "only {cycles} crash cycles");
    assert!(
        acked > 100 && granted > 10,
        "too little work: {acked} answers, {granted} grants"
    );
    assert!(indeterminate > 0, "no call was ever cut off by a kill");
    assert!(
        stale_refused > 0 || world.paused_holders.load(Ordering::Relaxed) < 3,
        "paused holders never had a stale write refused"
    );
}

// ------------------------------------------------------------------ the checker checks

fn rec(tool: &str, args: Value, start: i64, end: i64, answer: Option<Value>) -> Call {
    Call {
        client: "t".into(),
        tool: tool.into(),
        args,
        start,
        end,
        outcome: match answer {
            Some(a) => Outcome::Answer(a),
            None => Outcome::Indeterminate("killed".into()),
        },
    }
}

fn lock_call(start: i64, end: i64, fence: i64, token: &str) -> Call {
    rec(
        "lock_resource",
        json!({"name": LOCKS[0], "agent_id": token, "ttl_seconds": 2}),
        start,
        end,
        Some(json!({"locked": true, "fence": fence, "lock_token": token})),
    )
}

/// A grant of `lock` in a mode (`{"shared": true}`, `{"limit": 2}` or `{}`).
fn mode_call(lock: &str, mode: Value, start: i64, fence: i64, token: &str) -> Call {
    let mut args = json!({"name": lock, "agent_id": token, "ttl_seconds": 2});
    for (k, v) in mode.as_object().unwrap() {
        args[k] = v.clone();
    }
    rec(
        "lock_resource",
        args,
        start,
        start + 10,
        Some(json!({"locked": true, "fence": fence, "lock_token": token})),
    )
}

#[test]
fn the_checker_catches_shared_beside_exclusive_and_a_semaphore_over_its_limit() {
    let shared = || json!({"shared": true});
    let sem = || json!({"limit": SEM_LIMIT});
    // Fine: two readers together, then a writer after both unlocked; two semaphore holders.
    let mut r = Report::default();
    let unlock = |lock: &str, token: &str, at: i64| {
        rec(
            "unlock_resource",
            json!({"name": lock, "lock_token": token}),
            at,
            at + 5,
            Some(json!({"released": true})),
        )
    };
    check_modes(
        &[
            mode_call(RW_LOCK, shared(), 0, 1, "r1"),
            mode_call(RW_LOCK, shared(), 5, 2, "r2"),
            unlock(RW_LOCK, "r1", 100),
            unlock(RW_LOCK, "r2", 110),
            mode_call(RW_LOCK, json!({}), 105, 3, "w"),
            mode_call(SEM_LOCK, sem(), 0, 1, "s1"),
            mode_call(SEM_LOCK, sem(), 5, 2, "s2"),
        ],
        &mut r,
    );
    assert!(r.violations.is_empty(), "{:?}", r.violations);
    // A writer relied on while a reader still holds.
    let mut r = Report::default();
    check_modes(
        &[
            mode_call(RW_LOCK, shared(), 0, 1, "r1"),
            mode_call(RW_LOCK, json!({}), 50, 2, "w"),
        ],
        &mut r,
    );
    assert!(
        r.violations
            .iter()
            .any(|v| v.contains("exclusive grant was relied on beside")),
        "{:?}",
        r.violations
    );
    // Three holders of a semaphore of two; a fence handed out twice.
    let mut r = Report::default();
    check_modes(
        &[
            mode_call(SEM_LOCK, sem(), 0, 1, "s1"),
            mode_call(SEM_LOCK, sem(), 5, 2, "s2"),
            mode_call(SEM_LOCK, sem(), 8, 2, "s3"),
        ],
        &mut r,
    );
    assert!(
        r.violations.iter().any(|v| v.contains("over its limit")),
        "{:?}",
        r.violations
    );
    assert!(r.violations.iter().any(|v| v.contains("granted twice")));
}

#[test]
fn the_checker_catches_overlapping_grants_and_backward_fences() {
    let mut r = Report::default();
    check_locks(
        &[lock_call(0, 10, 1, "a"), lock_call(20, 30, 2, "b")],
        &[],
        &mut r,
    );
    assert!(!r.violations.is_empty(), "overlap not caught");
    let mut r = Report::default();
    let unlock = rec(
        "unlock_resource",
        json!({"name": LOCKS[0], "lock_token": "a"}),
        15,
        16,
        Some(json!({"released": true})),
    );
    check_locks(
        &[lock_call(0, 10, 2, "a"), unlock, lock_call(20, 30, 1, "b")],
        &[],
        &mut r,
    );
    assert_eq!(r.violations.len(), 1, "{:?}", r.violations);
    assert!(r.violations[0].contains("fence 2 was answered before"));
    // An indeterminate grant constrains nothing.
    let mut r = Report::default();
    let mut lost = lock_call(0, 10, 1, "a");
    lost.outcome = Outcome::Indeterminate("killed".into());
    check_locks(&[lost, lock_call(20, 30, 2, "b")], &[], &mut r);
    assert!(r.violations.is_empty());
}

#[test]
fn the_checker_catches_repeated_counters_lost_tasks_and_double_completion() {
    let inc = |v| {
        rec(
            "increment_counter",
            json!({"name": COUNTER}),
            0,
            1,
            Some(json!({"value": v})),
        )
    };
    let mut r = Report::default();
    check_counter(&[inc(1), inc(1)], &mut r);
    assert!(!r.violations.is_empty());

    let push = rec(
        "push_task",
        json!({"queue": QUEUE, "payload": "p"}),
        0,
        1,
        Some(json!({"id": 7})),
    );
    let mut r = Report::default();
    check_tasks(std::slice::from_ref(&push), &[], &mut r);
    assert!(r.violations.iter().any(|v| v.contains("lost")));

    let claim = |lease: &str, s, e| {
        rec(
            "claim_next_task",
            json!({"queue": QUEUE, "agent_id": "x", "lease_seconds": 2}),
            s,
            e,
            Some(json!({"claimed": true, "id": 7, "lease_token": lease})),
        )
    };
    let done = |lease: &str, s| {
        rec(
            "complete_task",
            json!({"id": 7, "lease_token": lease}),
            s,
            s + 1,
            Some(json!({"completed": true})),
        )
    };
    let final_state = [json!({"id": 7, "payload": "p", "state": "completed"})];
    let mut r = Report::default();
    check_tasks(
        &[
            push.clone(),
            claim("l1", 10, 11),
            claim("l2", 3000, 3001),
            done("l1", 3100),
            done("l2", 3200),
        ],
        &final_state,
        &mut r,
    );
    assert!(r.violations.iter().any(|v| v.contains("completed 2 times")));
    assert!(r.violations.iter().any(|v| v.contains("stale lease")));
    let mut r = Report::default();
    check_tasks(
        &[push, claim("l1", 10, 11), done("l1", 100)],
        &final_state,
        &mut r,
    );
    assert!(r.violations.is_empty(), "{:?}", r.violations);
}

#[test]
fn the_checker_catches_an_early_claim_and_a_dead_task_claimed_again() {
    let push = |args: Value| rec("push_task", args, 100, 110, Some(json!({"id": 1})));
    let claim = |start: i64, end: i64, lease: &str| {
        rec(
            "claim_next_task",
            json!({"queue": QUEUE, "agent_id": "w", "lease_seconds": 2}),
            start,
            end,
            Some(json!({"claimed": true, "id": 1, "lease_token": lease})),
        )
    };
    let task = |state: &str| json!({"id": 1, "payload": "p", "state": state, "max_attempts": 1});
    // Delayed 1 s, claimed 500 ms after its push.
    let mut r = Report::default();
    check_tasks(
        &[
            push(json!({"queue": QUEUE, "payload": "p", "delay_seconds": 1})),
            claim(550, 600, "l1"),
        ],
        &[task("claimed")],
        &mut r,
    );
    assert!(
        r.violations.iter().any(|v| v.contains("delayed")),
        "{:?}",
        r.violations
    );
    // One attempt, claimed twice (the second after its lease lapsed: it was dead).
    let pushed = push(json!({"queue": QUEUE, "payload": "p", "max_attempts": 1}));
    let mut r = Report::default();
    check_tasks(
        &[
            pushed.clone(),
            claim(200, 210, "l1"),
            claim(5000, 5010, "l2"),
        ],
        &[task("claimed")],
        &mut r,
    );
    assert!(
        r.violations.iter().any(|v| v.contains("claimed 2 times")),
        "{:?}",
        r.violations
    );
    // The same with a redrive between the two claims: fine.
    let retried = rec(
        "retry_task",
        json!({"id": 1}),
        3000,
        3010,
        Some(json!({"retried": true})),
    );
    let mut r = Report::default();
    check_tasks(
        &[
            pushed,
            claim(200, 210, "l1"),
            retried,
            claim(5000, 5010, "l2"),
        ],
        &[task("claimed")],
        &mut r,
    );
    assert!(r.violations.is_empty(), "{:?}", r.violations);
}

#[test]
fn the_checker_catches_two_live_tasks_with_one_unique_key() {
    let push = |payload: &str, answer: Value| {
        rec(
            "push_task",
            json!({"queue": QUEUE, "payload": payload, "unique_key": "k"}),
            0,
            1,
            Some(answer),
        )
    };
    let task = |id: i64, payload: &str, state: &str, key: &str| json!({"id": id, "payload": payload, "state": state, "unique_key": key});
    let mut r = Report::default();
    check_tasks(
        &[push("a", json!({"id": 1})), push("b", json!({"id": 2}))],
        &[task(1, "a", "pending", "k"), task(2, "b", "claimed", "k")],
        &mut r,
    );
    assert!(
        r.violations.iter().any(|v| v.contains("both live")),
        "{:?}",
        r.violations
    );
    let mut r = Report::default();
    check_tasks(
        &[
            push("a", json!({"id": 1})),
            push("b", json!({"id": 1, "duplicate": true})),
        ],
        &[task(1, "a", "pending", "other")],
        &mut r,
    );
    assert!(
        r.violations.iter().any(|v| v.contains("another key")),
        "{:?}",
        r.violations
    );
    // One live, one finished, and a duplicate pointing at the live one: fine.
    let mut r = Report::default();
    check_tasks(
        &[
            push("a", json!({"id": 1})),
            push("b", json!({"id": 2})),
            push("c", json!({"id": 2, "duplicate": true})),
        ],
        &[task(1, "a", "completed", "k"), task(2, "b", "pending", "k")],
        &mut r,
    );
    assert!(r.violations.is_empty(), "{:?}", r.violations);
}

#[test]
fn the_checker_catches_a_double_swap() {
    let cas = |exp: &str, new: &str| {
        rec(
            "set_note_if",
            json!({"key": CAS_KEY, "expected_value": exp, "new_value": new}),
            0,
            1,
            Some(json!({"swapped": true})),
        )
    };
    let mut r = Report::default();
    check_cas(&[cas("", "1:a:1"), cas("", "1:b:1")], &mut r);
    assert!(!r.violations.is_empty());
    let mut r = Report::default();
    check_cas(&[cas("", "1:a:1"), cas("1:a:1", "2:b:1")], &mut r);
    assert!(r.violations.is_empty());
}

/// A real paused process: `airlock run` holding a lock for a command that writes, with the lock's
/// fence, to a fenced resource. The whole process group is stopped with SIGSTOP past the TTL,
/// another agent takes the lock (a higher fence) and writes, then the group is continued: every
/// write the paused holder makes after that is refused by the resource, and its exit does not
/// release the new holder's lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigstopped_holder_process_is_fenced_off() {
    use common::{within, Daemon};
    use std::os::unix::process::CommandExt;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

    let d = Daemon::start().await;
    // The resource: accepts a write only with a fence at least the highest it has seen.
    let resource = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = resource.local_addr().unwrap().port();
    let log: Arc<Mutex<Vec<(i64, bool)>>> = Arc::default();
    let server_log = log.clone();
    tokio::spawn(async move {
        let highest = Arc::new(Mutex::new(0i64));
        loop {
            let Ok((conn, _)) = resource.accept().await else {
                return;
            };
            let (log, highest) = (server_log.clone(), highest.clone());
            tokio::spawn(async move {
                let (r, mut w) = conn.into_split();
                let mut line = String::new();
                let mut r = tokio::io::BufReader::new(r);
                if r.read_line(&mut line).await.is_err() {
                    return;
                }
                let Some(fence) = line
                    .trim()
                    .strip_prefix("WRITE ")
                    .and_then(|f| f.parse::<i64>().ok())
                else {
                    return;
                };
                let accepted = {
                    let mut h = highest.lock().unwrap();
                    let ok = fence >= *h;
                    if ok {
                        *h = fence;
                    }
                    log.lock().unwrap().push((fence, ok));
                    ok
                };
                let _ = w
                    .write_all(if accepted { b"OK\n" } else { b"REFUSED\n" })
                    .await;
            });
        }
    });
    let script = "import os, socket, time\n\
                  port = int(os.environ['RES_PORT']); fence = os.environ['AIRLOCK_FENCE']\n\
                  for i in range(80):\n    \
                      s = socket.create_connection(('127.0.0.1', port))\n    \
                      s.sendall(('WRITE %s\\n' % fence).encode()); s.recv(16); s.close()\n    \
                      time.sleep(0.1)\n";
    let mut holder = std::process::Command::new(common::airlock_bin())
        .args([
            "run", "--lock", "res", "--ttl", "2", "--agent", "paused", "--", "python3", "-c",
            script,
        ])
        .env("AIRLOCK_URL", &d.url)
        .env("AIRLOCK_TOKEN", &d.token)
        .env("RES_PORT", port.to_string())
        .process_group(0)
        .spawn()
        .expect("spawn airlock run");
    let pgid = holder.id() as i32;
    let first_fence = within(30, async {
        loop {
            if let Some(&(f, true)) = log.lock().unwrap().first() {
                break f;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    // SAFETY: signals to the process group we spawned.
    unsafe {
        libc::kill(-pgid, libc::SIGSTOP);
    }
    let got = within(
        30,
        d.call(
            "lock_resource",
            json!({"name": "res", "agent_id": "next", "wait_seconds": 20}),
        ),
    )
    .await;
    assert_eq!(got["locked"], json!(true), "{got}");
    let new_fence = got["fence"].as_i64().unwrap();
    assert!(new_fence > first_fence);
    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    conn.write_all(format!("WRITE {new_fence}\n").as_bytes())
        .await
        .unwrap();
    let mut answer = String::new();
    tokio::io::BufReader::new(conn)
        .read_line(&mut answer)
        .await
        .unwrap();
    assert_eq!(answer.trim(), "OK");
    let writes_before_continue = log.lock().unwrap().len();
    unsafe {
        libc::kill(-pgid, libc::SIGCONT);
    }
    let status = tokio::task::spawn_blocking(move || holder.wait())
        .await
        .unwrap()
        .unwrap();
    eprintln!("paused holder exited with {status:?}");
    let log = log.lock().unwrap().clone();
    let late: Vec<_> = log[writes_before_continue..]
        .iter()
        .filter(|(f, _)| *f == first_fence)
        .collect();
    assert!(
        !late.is_empty(),
        "the paused holder made no write after it was continued"
    );
    assert!(
        late.iter().all(|(_, accepted)| !accepted),
        "a stale write was accepted: {late:?}"
    );
    eprintln!(
        "fence {first_fence} paused, fence {new_fence} took over, {} stale writes refused",
        late.len()
    );
    // The paused holder's exit released nothing of the new holder's.
    let locks = d.call("list_locks", json!({})).await;
    assert_eq!(locks[0]["agent_id"], json!("next"), "{locks}");
    assert_eq!(locks[0]["fence"], json!(new_fence));
}
