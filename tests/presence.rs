//! Issue 4, presence: heartbeats, lapses at the instant, unregistering, list_agents.
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{spawn_call, until_waiters, within, Daemon};
use serde_json::{json, Value};

fn agent<'a>(agents: &'a Value, id: &str) -> Option<&'a Value> {
    agents
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["agent_id"] == id)
}

#[tokio::test]
async fn a_lapse_releases_the_lock_and_grants_the_parked_waiter() {
    let d = Arc::new(Daemon::start().await);
    let registered = Instant::now();
    let r = d
        .call("register_agent", json!({"agent_id": "a", "ttl_seconds": 1}))
        .await;
    assert_eq!(r["registered"], json!(true));
    // The lock's own TTL is long: only the lapse can free it.
    let held = d
        .call(
            "lock_resource",
            json!({"name": "x", "agent_id": "a", "ttl_seconds": 900}),
        )
        .await;
    assert_eq!(held["locked"], json!(true));
    let waiter = spawn_call(
        &d,
        "lock_resource",
        json!({"name": "x", "agent_id": "b", "wait_seconds": 30}),
    );
    until_waiters(&d, "x", 1).await;
    let got = within(10, waiter).await.unwrap();
    let after = registered.elapsed();
    assert_eq!(got["locked"], json!(true), "{got}");
    assert_eq!(got["fence"].as_i64(), held["fence"].as_i64().map(|f| f + 1));
    println!(
        "waiter granted {:?} after a 1 s presence was registered ({:?} past the lapse)",
        after,
        after.saturating_sub(Duration::from_secs(1))
    );
    assert!(
        after >= Duration::from_millis(950),
        "granted before the lapse"
    );
    assert!(
        after < Duration::from_secs(3),
        "the grant waited far past the lapse: {after:?}"
    );
    assert!(agent(&d.call("list_agents", json!({})).await, "a").is_none());
    let locks = d.call("list_locks", json!({})).await;
    assert_eq!(locks[0]["agent_id"], "b");
}

#[tokio::test]
async fn unregistering_releases_locks_and_leases_at_once() {
    let d = Arc::new(Daemon::start().await);
    d.call(
        "register_agent",
        json!({"agent_id": "a", "ttl_seconds": 600}),
    )
    .await;
    let held = d
        .call("lock_resource", json!({"name": "x", "agent_id": "a"}))
        .await;
    assert_eq!(held["locked"], json!(true));
    d.call("push_task", json!({"queue": "q", "payload": "p"}))
        .await;
    let claim = d
        .call("claim_next_task", json!({"queue": "q", "agent_id": "a"}))
        .await;
    assert_eq!(claim["claimed"], json!(true));
    let waiter = spawn_call(
        &d,
        "lock_resource",
        json!({"name": "x", "agent_id": "b", "wait_seconds": 40}),
    );
    until_waiters(&d, "x", 1).await;

    let r = d.call("unregister_agent", json!({"agent_id": "a"})).await;
    assert_eq!(r, json!({"unregistered": true}));
    // At once: well before the 40 s window or any TTL.
    let got = within(5, waiter).await.unwrap();
    assert_eq!(got["locked"], json!(true));
    let tasks = d.call("list_tasks", json!({"queue": "q"})).await;
    assert_eq!(tasks[0]["state"], "pending");
    assert!(tasks[0].get("lease_agent").is_none());
    assert!(agent(&d.call("list_agents", json!({})).await, "a").is_none());
    // The claimant's lease token is now worthless.
    let r = d
        .call(
            "complete_task",
            json!({"id": claim["id"], "lease_token": claim["lease_token"]}),
        )
        .await;
    assert_eq!(r["completed"], json!(false));
}

#[tokio::test]
async fn list_agents_shows_expiry_locks_and_leases_held() {
    let d = Daemon::start().await;
    let r = d.call("register_agent", json!({"agent_id": "a"})).await;
    // Default heartbeat: 60 s.
    assert_eq!(r["expires_in_seconds"], 60);
    d.call(
        "register_agent",
        json!({"agent_id": "idle", "ttl_seconds": 300}),
    )
    .await;
    for name in ["x", "y"] {
        let l = d
            .call("lock_resource", json!({"name": name, "agent_id": "a"}))
            .await;
        assert_eq!(l["locked"], json!(true));
    }
    d.call("push_task", json!({"queue": "q", "payload": "p"}))
        .await;
    let c = d
        .call("claim_next_task", json!({"queue": "q", "agent_id": "a"}))
        .await;
    assert_eq!(c["claimed"], json!(true));

    let agents = d.call("list_agents", json!({})).await;
    let a = agent(&agents, "a").expect("a listed");
    assert_eq!(a["locks_held"], 2);
    assert_eq!(a["leases_held"], 1);
    assert!((55..=60).contains(&a["expires_in_seconds"].as_i64().unwrap()));
    let idle = agent(&agents, "idle").expect("idle listed");
    assert_eq!(idle["locks_held"], 0);
    assert_eq!(idle["leases_held"], 0);

    // A heartbeat extends the presence.
    let r = d
        .call(
            "register_agent",
            json!({"agent_id": "a", "ttl_seconds": 3000}),
        )
        .await;
    assert_eq!(r["expires_in_seconds"], 3000);
    let agents = d.call("list_agents", json!({})).await;
    assert!(
        agent(&agents, "a").unwrap()["expires_in_seconds"]
            .as_i64()
            .unwrap()
            > 2990
    );
}

#[tokio::test]
async fn a_heartbeat_keeps_the_locks_of_a_live_agent() {
    let d = Daemon::start().await;
    d.call("register_agent", json!({"agent_id": "a", "ttl_seconds": 2}))
        .await;
    let l = d
        .call("lock_resource", json!({"name": "x", "agent_id": "a"}))
        .await;
    assert_eq!(l["locked"], json!(true));
    // Re-register well before each lapse, past the first TTL.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        d.call("register_agent", json!({"agent_id": "a", "ttl_seconds": 2}))
            .await;
    }
    let locks = d.call("list_locks", json!({})).await;
    assert_eq!(locks[0]["agent_id"], "a", "a live agent lost its lock");
    // An agent that never registered is governed by its locks' TTLs alone.
    let l = d
        .call(
            "lock_resource",
            json!({"name": "y", "agent_id": "never-registered", "ttl_seconds": 600}),
        )
        .await;
    assert_eq!(l["locked"], json!(true));
    let r = d.call("unregister_agent", json!({"agent_id": "a"})).await;
    assert_eq!(r["unregistered"], json!(true));
    let locks = d.call("list_locks", json!({})).await;
    assert_eq!(locks.as_array().unwrap().len(), 1);
    assert_eq!(locks[0]["agent_id"], "never-registered");
}

#[tokio::test]
async fn presence_bad_input_is_refused() {
    let d = Daemon::start().await;
    for (args, field) in [
        (json!({"agent_id": ""}), "agent_id"),
        (json!({"agent_id": "a", "ttl_seconds": 0}), "ttl_seconds"),
        (json!({"agent_id": "a", "ttl_seconds": -3}), "ttl_seconds"),
        (
            json!({"agent_id": "a", "ttl_seconds": 5, "ttl_minutes": 1}),
            "ttl_minutes",
        ),
    ] {
        let e = d.call_err("register_agent", args.clone()).await;
        assert!(e.starts_with(&format!("{field}:")), "{args}: {e}");
    }
    assert_eq!(d.call("list_agents", json!({})).await, json!([]));
}

#[tokio::test]
async fn a_lapse_due_across_a_restart_still_releases() {
    let mut d = Daemon::start().await;
    let tmp = d.take_tmp();
    d.call("register_agent", json!({"agent_id": "a", "ttl_seconds": 1}))
        .await;
    d.call(
        "register_agent",
        json!({"agent_id": "stays", "ttl_seconds": 600}),
    )
    .await;
    let l = d
        .call("lock_resource", json!({"name": "x", "agent_id": "a"}))
        .await;
    assert_eq!(l["locked"], json!(true));
    assert_eq!(d.stop(), Some(0));
    // The new daemon rebuilds its deadlines from disk: the lapse still happens on time.
    let d = Daemon::start_in(&d.home).await;
    within(10, async {
        while d.call("list_locks", json!({})).await != json!([]) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let agents = d.call("list_agents", json!({})).await;
    assert!(agent(&agents, "a").is_none());
    assert!(agent(&agents, "stays").is_some());
    drop(d);
    drop(tmp);
}

#[tokio::test]
async fn unregistering_gives_up_a_place_kept_in_line() {
    let d = Arc::new(Daemon::start().await);
    let a = d
        .call("lock_resource", json!({"name": "x", "agent_id": "a"}))
        .await;
    d.call(
        "register_agent",
        json!({"agent_id": "b", "ttl_seconds": 600}),
    )
    .await;
    // b's window ends: its place is kept for the wake-token grace...
    let w = d
        .call(
            "lock_resource",
            json!({"name": "x", "agent_id": "b", "wait_seconds": 1}),
        )
        .await;
    assert_eq!(w["queue_position"], 1);
    let c = spawn_call(
        &d,
        "lock_resource",
        json!({"name": "x", "agent_id": "c", "wait_seconds": 40}),
    );
    until_waiters(&d, "x", 2).await;
    // ...but b leaves for good: nobody will come back for that place.
    d.call("unregister_agent", json!({"agent_id": "b"})).await;
    // At once, not when the 10 s grace runs out.
    within(5, until_waiters(&d, "x", 1)).await;
    d.call(
        "unlock_resource",
        json!({"name": "x", "lock_token": a["lock_token"]}),
    )
    .await;
    let got = within(5, c).await.unwrap();
    assert_eq!(got["locked"], json!(true));
}
