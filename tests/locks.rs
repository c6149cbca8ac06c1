//! Issue 3: locks that block on the server, through the real daemon.
//!
//! Waiters are "parked in order" by starting one, then watching `list_locks` until the daemon
//! counts it in the lock's line, and only then starting the next: the arrival order is then known.
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{fence, lock, spawn_lock, token, unlock, until_waiters, waiters, within, Daemon};
use serde_json::{json, Value};

#[tokio::test]
async fn a_held_lock_is_contended() {
    let d = Daemon::start().await;
    let a = lock(&d, "x", "a", json!({"ttl_seconds": 60})).await;
    let tok = token(&a);
    assert!(tok.len() >= 32, "token too short to carry 128 bits: {tok}");
    assert!(fence(&a) >= 1);
    let b = lock(&d, "x", "b", json!({})).await;
    assert_eq!(b["locked"], json!(false));
    assert_eq!(b["held_by"], json!("a"));
    let left = b["expires_in_seconds"].as_i64().unwrap();
    assert!((55..=60).contains(&left), "expires_in_seconds {left}");
    // A try-lock is not queued: no wake token, no place in line.
    assert!(b.get("wake_token").is_none() && b.get("retry_with").is_none());
    let locks = d.call("list_locks", json!({})).await;
    assert_eq!(locks.as_array().unwrap().len(), 1);
    assert_eq!(locks[0]["name"], "x");
    assert_eq!(locks[0]["agent_id"], "a");
    assert_eq!(locks[0]["fence"], a["fence"]);
    assert_eq!(locks[0]["waiters"], 0);
}

#[tokio::test]
async fn a_blocking_wait_is_woken_by_the_unlock() {
    let d = Arc::new(Daemon::start().await);
    let tok = token(&lock(&d, "x", "a", json!({})).await);
    let waiter = spawn_lock(&d, "x", "b", json!({"wait_seconds": 30}));
    until_waiters(&d, "x", 1).await;
    assert!(
        !waiter.is_finished(),
        "the waiter answered before the unlock"
    );
    let released_at = Instant::now();
    unlock(&d, "x", &tok).await;
    // Well before the 30 s window: the unlock, not the window, ends the wait.
    let got = within(10, waiter).await.unwrap();
    println!(
        "waiter answered {:?} after the unlock was acknowledged",
        released_at.elapsed()
    );
    token(&got);
    let locks = d.call("list_locks", json!({})).await;
    assert_eq!(locks[0]["agent_id"], "b");
}

#[tokio::test]
async fn waiters_are_granted_in_strict_arrival_order() {
    let d = Arc::new(Daemon::start().await);
    let first = lock(&d, "x", "holder", json!({})).await;
    let mut handles = Vec::new();
    for (i, agent) in ["w1", "w2", "w3", "w4"].iter().enumerate() {
        let d2 = d.clone();
        let agent = agent.to_string();
        handles.push(tokio::spawn(async move {
            let got = lock(&d2, "x", &agent, json!({"wait_seconds": 40})).await;
            let f = fence(&got);
            // Hold it a moment so a wrong grant order would show, then pass it on.
            unlock(&d2, "x", &token(&got)).await;
            (agent, f)
        }));
        until_waiters(&d, "x", i as u64 + 1).await;
    }
    // A try-lock never jumps an existing queue.
    let jumper = lock(&d, "x", "jumper", json!({"wait_seconds": 0})).await;
    assert_eq!(jumper["locked"], json!(false));
    unlock(&d, "x", &token(&first)).await;
    let mut got = Vec::new();
    for h in handles {
        got.push(within(30, h).await.unwrap());
    }
    let base = fence(&first);
    for (i, (agent, f)) in got.iter().enumerate() {
        assert_eq!(agent, &format!("w{}", i + 1));
        assert_eq!(
            *f,
            base + 1 + i as i64,
            "grant order is not arrival order: {got:?}"
        );
    }
}

#[tokio::test]
async fn a_wake_token_keeps_its_place_across_windows() {
    let d = Arc::new(Daemon::start().await);
    let a = token(&lock(&d, "x", "a", json!({})).await);

    // Window 1 ends: a place in line and the exact arguments to come back with.
    let w1 = lock(&d, "x", "b", json!({"wait_seconds": 1, "ttl_seconds": 30})).await;
    assert_eq!(w1["locked"], json!(false), "{w1}");
    assert_eq!(w1["held_by"], "a");
    assert_eq!(w1["queue_position"], 1);
    let wt = w1["wake_token"].as_str().expect("wake_token").to_string();
    assert!(wt.len() >= 32);
    let retry = w1["retry_with"].clone();
    assert_eq!(
        retry,
        json!({"name": "x", "agent_id": "b", "ttl_seconds": 30, "wait_seconds": 1, "wake_token": wt})
    );

    // A newcomer arrives while b is between windows: it stands behind b.
    let c = spawn_lock(&d, "x", "c", json!({"wait_seconds": 40}));
    until_waiters(&d, "x", 2).await;

    // Window 2: still first in line.
    let w2 = d.call("lock_resource", retry.clone()).await;
    assert_eq!(w2["locked"], json!(false), "{w2}");
    assert_eq!(w2["queue_position"], 1);
    assert_eq!(w2["wake_token"], json!(wt));

    // The lock frees while b is away: it is kept for b, not given to the parked newcomer.
    unlock(&d, "x", &a).await;
    let probe = lock(&d, "x", "probe", json!({})).await;
    assert_eq!(probe["locked"], json!(false));
    assert_eq!(
        probe["held_by"], "b",
        "the free lock should be reserved for b"
    );
    assert!(!c.is_finished(), "the newcomer overtook the wake token");

    // b comes back within the grace and is granted at once.
    let w3 = d.call("lock_resource", retry).await;
    let tb = token(&w3);
    assert!(!c.is_finished());
    unlock(&d, "x", &tb).await;
    token(&within(10, c).await.unwrap());
}

#[tokio::test]
async fn ttl_expiry_wakes_a_parked_waiter() {
    let d = Arc::new(Daemon::start().await);
    let start = Instant::now();
    let a = lock(&d, "x", "a", json!({"ttl_seconds": 1})).await;
    token(&a);
    let b = spawn_lock(&d, "x", "b", json!({"wait_seconds": 20}));
    let got = within(10, b).await.unwrap();
    let waited = start.elapsed();
    println!("waiter granted {waited:?} after a 1 s lock was taken");
    assert!(
        waited >= Duration::from_millis(900),
        "granted before the TTL ran out"
    );
    assert_eq!(fence(&got), fence(&a) + 1);
    // The expired holder's token no longer works.
    let r = d
        .call(
            "unlock_resource",
            json!({"name": "x", "lock_token": a["lock_token"]}),
        )
        .await;
    assert_eq!(r["released"], json!(false));
}

#[tokio::test]
async fn the_lock_token_is_the_capability() {
    let d = Daemon::start().await;
    let a = lock(&d, "x", "a", json!({"ttl_seconds": 100})).await;
    let tok = token(&a);
    let before = d.call("list_locks", json!({})).await;

    let wrong = "lk_00000000000000000000000000000000";
    let r = d
        .call("unlock_resource", json!({"name": "x", "lock_token": wrong}))
        .await;
    assert_eq!(r["released"], json!(false));
    assert!(r["error"].as_str().is_some_and(|e| !e.is_empty()), "{r}");
    let r = d
        .call(
            "renew_lock",
            json!({"name": "x", "lock_token": wrong, "ttl_seconds": 900}),
        )
        .await;
    assert_eq!(r["renewed"], json!(false));
    assert!(r["error"].as_str().is_some_and(|e| !e.is_empty()), "{r}");
    // Another agent's id is no better.
    let r = d
        .call("unlock_resource", json!({"name": "x", "agent_id": "b"}))
        .await;
    assert_eq!(r["released"], json!(false));
    assert!(r["error"].is_string());
    assert_eq!(
        d.call("list_locks", json!({})).await,
        before,
        "a refusal changed something"
    );

    // The right token renews; the v1 agent_id path still works.
    let r = d
        .call(
            "renew_lock",
            json!({"name": "x", "lock_token": tok, "ttl_seconds": 500}),
        )
        .await;
    assert_eq!(r["renewed"], json!(true));
    assert_eq!(r["fence"], a["fence"]);
    assert!(r["expires_in_seconds"].as_i64().unwrap() > 400);
    let r = d
        .call(
            "renew_lock",
            json!({"name": "x", "agent_id": "a", "ttl_seconds": 600}),
        )
        .await;
    assert_eq!(r["renewed"], json!(true));
    let r = d
        .call("unlock_resource", json!({"name": "x", "agent_id": "a"}))
        .await;
    assert_eq!(r, json!({"released": true}));
    assert_eq!(d.call("list_locks", json!({})).await, json!([]));
    // Once released, the old token is worthless.
    let r = d
        .call("unlock_resource", json!({"name": "x", "lock_token": tok}))
        .await;
    assert_eq!(r["released"], json!(false));
}

#[tokio::test]
async fn fences_strictly_increase_across_grants_and_a_restart() {
    let mut d = Daemon::start().await;
    let tmp = d.take_tmp();
    let mut last = 0;
    for agent in ["a", "b", "c"] {
        let got = lock(&d, "x", agent, json!({})).await;
        assert!(fence(&got) > last, "fence did not grow: {got}");
        last = fence(&got);
        unlock(&d, "x", &token(&got)).await;
    }
    // Still held across the restart: the fence of the held lock survives too.
    let held = lock(&d, "x", "d", json!({})).await;
    assert!(fence(&held) > last);
    last = fence(&held);
    assert_eq!(d.stop(), Some(0));

    let d = Daemon::start_in(&d.home).await;
    let locks = d.call("list_locks", json!({})).await;
    assert_eq!(locks[0]["fence"], json!(last));
    assert_eq!(locks[0]["agent_id"], "d");
    unlock(&d, "x", &token(&held)).await;
    let after = lock(&d, "x", "e", json!({})).await;
    assert!(
        fence(&after) > last,
        "a fence was reused after a restart: {after}"
    );
    drop(d);
    drop(tmp);
}

#[tokio::test]
async fn re_acquiring_a_held_lock_is_idempotent() {
    let d = Daemon::start().await;
    let first = lock(&d, "x", "a", json!({"ttl_seconds": 60})).await;
    let again = lock(&d, "x", "a", json!({"ttl_seconds": 600, "wait_seconds": 5})).await;
    assert_eq!(again["locked"], json!(true));
    assert_eq!(again["lock_token"], first["lock_token"]);
    assert_eq!(again["fence"], first["fence"]);
    // ...and the TTL was refreshed to the new one.
    let left = again["expires_in_seconds"].as_i64().unwrap();
    assert!(left > 500, "TTL not refreshed: {again}");
    let locks = d.call("list_locks", json!({})).await;
    assert!(locks[0]["expires_in_seconds"].as_i64().unwrap() > 500);
}

#[tokio::test]
async fn lock_resources_is_all_or_nothing_and_can_wait_for_the_whole_set() {
    let d = Arc::new(Daemon::start().await);
    let n2 = token(&lock(&d, "n2", "b", json!({})).await);

    let r = d
        .call(
            "lock_resources",
            json!({"names": ["n3", "n1", "n2"], "agent_id": "a"}),
        )
        .await;
    assert_eq!(r["locked"], json!(false), "{r}");
    assert_eq!(r["held_by"], "b");
    assert_eq!(r["contended"], "n2");
    let locks = d.call("list_locks", json!({})).await;
    assert_eq!(
        locks.as_array().unwrap().len(),
        1,
        "something was granted: {locks}"
    );

    // With a wait, the set is granted in one piece once its last name frees.
    let d2 = d.clone();
    let set = tokio::spawn(async move {
        d2.call(
            "lock_resources",
            json!({"names": ["n3", "n1", "n2"], "agent_id": "a", "wait_seconds": 30}),
        )
        .await
    });
    until_waiters(&d, "n2", 1).await;
    // Nothing of the set is held while it waits (its free names are listed as reserved for it).
    let locks = d.call("list_locks", json!({})).await;
    let locks = locks.as_array().unwrap();
    assert_eq!(locks.iter().filter(|l| !l["agent_id"].is_null()).count(), 1);
    assert!(locks
        .iter()
        .filter(|l| l["agent_id"].is_null())
        .all(|l| l["reserved_for"] == "a"));
    assert!(!set.is_finished());
    unlock(&d, "n2", &n2).await;
    let got = within(10, set).await.unwrap();
    assert_eq!(got["locked"], json!(true), "{got}");
    let tokens = got["tokens"].as_object().unwrap();
    assert_eq!(tokens.len(), 3);
    let locks = d.call("list_locks", json!({})).await;
    let mut held: Vec<(String, String)> = locks
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["name"].as_str().unwrap().to_string(),
                l["agent_id"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    held.sort();
    assert_eq!(
        held,
        vec![
            ("n1".into(), "a".into()),
            ("n2".into(), "a".into()),
            ("n3".into(), "a".into())
        ]
    );
    for (name, tok) in tokens {
        unlock(&d, name, tok.as_str().unwrap()).await;
    }
}

#[tokio::test]
async fn eight_callers_with_overlapping_sets_never_deadlock() {
    use rand::seq::SliceRandom;
    use rand::Rng;
    let d = Arc::new(Daemon::start().await);
    let pool = ["r0", "r1", "r2", "r3", "r4", "r5"];
    let mut handles = Vec::new();
    for c in 0..8 {
        let d = d.clone();
        handles.push(tokio::spawn(async move {
            let agent = format!("c{c}");
            for _ in 0..5 {
                let mut names: Vec<&str> = pool.to_vec();
                let (k, names) = {
                    let mut rng = rand::rng();
                    names.shuffle(&mut rng);
                    (rng.random_range(2..=4), names)
                };
                // Random order on purpose: the daemon sorts.
                let names = &names[..k];
                let got = d
                    .call(
                        "lock_resources",
                        json!({"names": names, "agent_id": agent, "wait_seconds": 50, "ttl_seconds": 60}),
                    )
                    .await;
                assert_eq!(got["locked"], json!(true), "{agent}: {got}");
                for (name, tok) in got["tokens"].as_object().unwrap() {
                    unlock(&d, name, tok.as_str().unwrap()).await;
                }
            }
        }));
    }
    within(120, async {
        for h in handles {
            h.await.unwrap();
        }
    })
    .await;
    assert_eq!(d.call("list_locks", json!({})).await, json!([]));
}

#[tokio::test]
async fn a_thousand_parked_waiters_are_all_served_in_order() {
    const N: usize = 1000;
    let d = Arc::new(Daemon::start().await);
    let first = lock(&d, "hot", "holder", json!({})).await;
    let base = fence(&first);
    let start = Instant::now();
    let mut handles = Vec::with_capacity(N);
    for i in 0..N {
        let d2 = d.clone();
        handles.push(tokio::spawn(async move {
            // As a patient client does: if a 50 s window ends first (a slow machine), come back
            // with retry_with, which keeps the place in line.
            let mut got = lock(&d2, "hot", &format!("w{i}"), json!({"wait_seconds": 50})).await;
            while got["locked"] == json!(false) {
                got = d2.call("lock_resource", got["retry_with"].clone()).await;
            }
            let f = fence(&got);
            unlock(&d2, "hot", &token(&got)).await;
            f
        }));
        until_waiters(&d, "hot", i as u64 + 1).await;
    }
    println!("{N} waiters parked in {:?}", start.elapsed());
    let start = Instant::now();
    unlock(&d, "hot", &token(&first)).await;
    let mut fences = Vec::with_capacity(N);
    within(120, async {
        for h in handles {
            fences.push(h.await.unwrap());
        }
    })
    .await;
    println!("{N} grants handed down the line in {:?}", start.elapsed());
    for (i, f) in fences.iter().enumerate() {
        assert_eq!(
            *f,
            base + 1 + i as i64,
            "waiter {i} was not served in arrival order"
        );
    }
    assert_eq!(d.call("list_locks", json!({})).await, json!([]));
}

#[tokio::test]
async fn a_disconnected_waiter_is_skipped() {
    let d = Arc::new(Daemon::start().await);
    let first = lock(&d, "x", "a", json!({})).await;
    let a = token(&first);
    let gone = spawn_lock(&d, "x", "gone", json!({"wait_seconds": 40}));
    until_waiters(&d, "x", 1).await;
    let next = spawn_lock(&d, "x", "next", json!({"wait_seconds": 40}));
    until_waiters(&d, "x", 2).await;
    // The caller goes away: its request future is dropped and the connection closed.
    gone.abort();
    assert!(gone.await.unwrap_err().is_cancelled());
    // The daemon notices and takes it out of the line.
    until_waiters(&d, "x", 1).await;
    unlock(&d, "x", &a).await;
    let got = within(10, next).await.unwrap();
    token(&got);
    // The very next grant: the gone caller was never granted in between.
    assert_eq!(fence(&got), fence(&first) + 1);
    let locks = d.call("list_locks", json!({})).await;
    assert_eq!(locks.as_array().unwrap().len(), 1);
    assert_eq!(locks[0]["agent_id"], "next");
    unlock(&d, "x", &token(&got)).await;
    for l in d.call("list_locks", json!({})).await.as_array().unwrap() {
        assert_ne!(l["agent_id"], "gone");
    }
}

#[tokio::test]
async fn bad_input_is_refused_naming_the_field_and_changes_nothing() {
    let d = Daemon::start().await;
    let held = lock(&d, "held", "a", json!({"ttl_seconds": 100})).await;
    let tok = token(&held);
    let before = d.call("list_locks", json!({})).await;
    let long = "x".repeat(513);
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "lock_resource",
            json!({"name": "", "agent_id": "a"}),
            "name",
        ),
        (
            "lock_resource",
            json!({"name": long, "agent_id": "a"}),
            "name",
        ),
        (
            "lock_resource",
            json!({"name": "y", "agent_id": ""}),
            "agent_id",
        ),
        (
            "lock_resource",
            json!({"name": "y", "agent_id": "a", "ttl_seconds": 0}),
            "ttl_seconds",
        ),
        (
            "lock_resource",
            json!({"name": "y", "agent_id": "a", "ttl_seconds": 31 * 24 * 3600}),
            "ttl_seconds",
        ),
        (
            "lock_resource",
            json!({"name": "y", "agent_id": "a", "wait_seconds": -1}),
            "wait_seconds",
        ),
        (
            "lock_resource",
            json!({"name": "y", "agent_id": "a", "ttl_seconds": 60, "ttl_minutes": 1}),
            "ttl_minutes",
        ),
        (
            "lock_resources",
            json!({"names": ["y", "z", "y"], "agent_id": "a"}),
            "names",
        ),
        (
            "lock_resources",
            json!({"names": [], "agent_id": "a"}),
            "names",
        ),
        (
            "lock_resources",
            json!({"names": ["y", ""], "agent_id": "a"}),
            "names[1]",
        ),
        (
            "lock_resources",
            json!({"names": ["y"], "agent_id": "a", "wait_seconds": -5}),
            "wait_seconds",
        ),
        (
            "renew_lock",
            json!({"name": "held", "lock_token": tok, "ttl_seconds": 0}),
            "ttl_seconds",
        ),
        (
            "unlock_resource",
            json!({"name": "", "lock_token": tok}),
            "name",
        ),
        ("unlock_resource", json!({"name": "held"}), "lock_token"),
    ];
    for (tool, args, field) in cases {
        let err = d.call_err(tool, args.clone()).await;
        assert!(
            err.starts_with(&format!("{field}:")),
            "{tool} {args}: error does not name {field}: {err}"
        );
        assert_eq!(
            d.call("list_locks", json!({})).await,
            before,
            "{tool} {args} changed something"
        );
    }
}

#[tokio::test]
async fn a_wait_over_fifty_seconds_is_capped_not_refused() {
    let d = Daemon::start().await;
    let got = within(10, lock(&d, "free", "a", json!({"wait_seconds": 500}))).await;
    token(&got);
    // On a held lock, the window is capped at 50 s: the answer's retry_with says so.
    let d = Arc::new(d);
    let tail = spawn_lock(&d, "free", "b", json!({"wait_seconds": 500}));
    until_waiters(&d, "free", 1).await;
    unlock(&d, "free", &token(&got)).await;
    token(&within(10, tail).await.unwrap());
}

#[tokio::test]
async fn a_parked_call_sends_progress_notifications() {
    let d = Daemon::start().await;
    let a = token(&lock(&d, "x", "a", json!({})).await);
    let body = json!({
        "jsonrpc": "2.0", "id": 7, "method": "tools/call",
        "params": {
            "name": "lock_resource",
            "arguments": {"name": "x", "agent_id": "b", "wait_seconds": 500},
            "_meta": {"progressToken": 1}
        }
    });
    let started = Instant::now();
    let mut resp = d
        .http
        .post(&d.url)
        .header("Content-Type", "application/json")
        .header("Accept", "application/json, text/event-stream")
        .bearer_auth(&d.token)
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut seen = String::new();
    let progress = within(8, async {
        loop {
            let chunk = resp.chunk().await.unwrap().expect("stream ended early");
            seen.push_str(&String::from_utf8_lossy(&chunk));
            if let Some(line) = seen
                .lines()
                .find(|l| l.starts_with("data:") && l.contains("notifications/progress"))
            {
                let v: Value = serde_json::from_str(line.trim_start_matches("data:").trim())
                    .expect("progress event is JSON");
                break v;
            }
        }
    })
    .await;
    let after = started.elapsed();
    println!("first progress notification after {after:?}: {progress}");
    assert!(after < Duration::from_secs(10));
    assert_eq!(progress["params"]["progressToken"], 1);
    // A 500 s wait was capped to the 50 s window, not refused.
    assert_eq!(progress["params"]["total"], json!(50.0));
    let message = progress["params"]["message"].as_str().unwrap();
    assert!(
        message.contains("position 1"),
        "no queue position: {message}"
    );
    // The final answer still arrives on the same stream once the lock frees.
    unlock(&d, "x", &a).await;
    let result = within(5, async {
        loop {
            if let Some(line) = seen
                .lines()
                .find(|l| l.starts_with("data:") && l.contains("\"result\""))
            {
                break serde_json::from_str::<Value>(line.trim_start_matches("data:").trim())
                    .unwrap();
            }
            let chunk = resp.chunk().await.unwrap().expect("stream ended early");
            seen.push_str(&String::from_utf8_lossy(&chunk));
        }
    })
    .await;
    assert_eq!(result["id"], 7);
    let text = result["result"]["content"][0]["text"].as_str().unwrap();
    let got: Value = serde_json::from_str(text).unwrap();
    token(&got);
}

#[tokio::test]
async fn a_caller_back_without_its_wake_token_is_not_stuck_behind_its_own_place() {
    let d = Arc::new(Daemon::start().await);
    let a = token(&lock(&d, "x", "a", json!({})).await);
    // b's window ends; it keeps a place in line for the grace...
    let w1 = lock(&d, "x", "b", json!({"wait_seconds": 1})).await;
    assert_eq!(w1["queue_position"], 1);
    // ...and a newcomer stands behind it.
    let c = spawn_lock(&d, "x", "c", json!({"wait_seconds": 40}));
    until_waiters(&d, "x", 2).await;
    // b calls again the naive way, same arguments, no wake token: it is still first in line.
    let b = spawn_lock(&d, "x", "b", json!({"wait_seconds": 40}));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(waiters(&d, "x").await, 2, "b now stands in line twice");
    let released = Instant::now();
    unlock(&d, "x", &a).await;
    // Granted at once, not after its own reservation's 10 s grace ran out.
    let got = within(5, b).await.unwrap();
    println!("b granted {:?} after the unlock", released.elapsed());
    assert!(released.elapsed() < Duration::from_secs(5));
    assert!(!c.is_finished());
    unlock(&d, "x", &token(&got)).await;
    token(&within(10, c).await.unwrap());
}

#[tokio::test]
async fn a_set_including_a_lock_already_held_is_not_stuck_behind_its_own_waiters() {
    let d = Arc::new(Daemon::start().await);
    let n1 = token(&lock(&d, "n1", "a", json!({})).await);
    let n2 = token(&lock(&d, "n2", "c", json!({})).await);
    // b waits for a's n1.
    let b = spawn_lock(&d, "n1", "b", json!({"wait_seconds": 40}));
    until_waiters(&d, "n1", 1).await;
    // a, still holding n1, asks for {n1, n2} and waits for n2.
    let d2 = d.clone();
    let set = tokio::spawn(async move {
        d2.call(
            "lock_resources",
            json!({"names": ["n2", "n1"], "agent_id": "a", "wait_seconds": 40}),
        )
        .await
    });
    until_waiters(&d, "n2", 1).await;
    unlock(&d, "n2", &n2).await;
    // a needs no place in n1's line to keep what it holds: the set is granted now, not when
    // its window runs out.
    let got = within(10, set).await.unwrap();
    assert_eq!(got["locked"], json!(true), "{got}");
    assert_eq!(
        got["tokens"]["n1"],
        json!(n1),
        "the held lock keeps its token"
    );
    assert!(!b.is_finished());
    unlock(&d, "n1", &n1).await;
    token(&within(10, b).await.unwrap());
}
