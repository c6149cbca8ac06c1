//! Issue 4, tasks: the leased queue, through the real daemon.
mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{within, Daemon};
use serde_json::{json, Value};

async fn push(d: &Daemon, queue: &str, payload: &str, priority: i64) -> i64 {
    d.call(
        "push_task",
        json!({"queue": queue, "payload": payload, "priority": priority}),
    )
    .await["id"]
        .as_i64()
        .unwrap()
}

async fn claim(d: &Daemon, queue: &str, agent: &str, extra: Value) -> Value {
    let mut args = json!({"queue": queue, "agent_id": agent});
    for (k, v) in extra.as_object().unwrap() {
        args[k] = v.clone();
    }
    d.call("claim_next_task", args).await
}

async fn task(d: &Daemon, queue: &str, id: i64) -> Value {
    d.call("list_tasks", json!({"queue": queue}))
        .await
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == id)
        .cloned()
        .unwrap_or_else(|| panic!("task {id} not listed"))
}

/// Waits (briefly) until task `id` is in `state`.
async fn until_state(d: &Daemon, queue: &str, id: i64, state: &str) -> Value {
    within(10, async {
        loop {
            let t = task(d, queue, id).await;
            if t["state"] == state {
                break t;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

fn spawn_claim(
    d: &Arc<Daemon>,
    queue: &str,
    agent: &str,
    wait: i64,
) -> tokio::task::JoinHandle<Value> {
    let d = d.clone();
    let (queue, agent) = (queue.to_string(), agent.to_string());
    tokio::spawn(async move { claim(&d, &queue, &agent, json!({"wait_seconds": wait})).await })
}

/// Nothing over MCP shows parked claimers, so a short pause lets a claim reach the daemon
/// before the push that should wake it. The assertions hold either way.
async fn let_it_park() {
    tokio::time::sleep(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn a_claim_is_a_lease_and_list_tasks_shows_every_field() {
    let d = Daemon::start().await;
    let id = d
        .call(
            "push_task",
            json!({"queue": "q", "payload": "{\"n\":1}", "author": "lead", "priority": 3}),
        )
        .await["id"]
        .as_i64()
        .unwrap();
    let t = task(&d, "q", id).await;
    assert_eq!(
        t,
        json!({"id": id, "queue": "q", "payload": "{\"n\":1}", "priority": 3, "state": "pending",
               "author": "lead", "attempts": 0})
    );
    let c = claim(&d, "q", "w", json!({"lease_seconds": 300})).await;
    assert_eq!(c["claimed"], json!(true));
    assert_eq!(c["id"], id);
    assert_eq!(c["payload"], "{\"n\":1}");
    assert_eq!(c["attempts"], 1);
    let tok = c["lease_token"].as_str().unwrap();
    assert!(tok.len() >= 32);
    let t = task(&d, "q", id).await;
    assert_eq!(t["state"], "claimed");
    assert_eq!(t["lease_agent"], "w");
    assert_eq!(t["attempts"], 1);
    assert!((295..=300).contains(&t["lease_expires_in_seconds"].as_i64().unwrap()));
    // Nothing else to claim.
    assert_eq!(
        claim(&d, "q", "w2", json!({})).await,
        json!({"claimed": false})
    );
    let r = d
        .call("complete_task", json!({"id": id, "lease_token": tok}))
        .await;
    assert_eq!(r, json!({"completed": true}));
    let t = task(&d, "q", id).await;
    assert_eq!(t["state"], "completed");
    assert!(t.get("lease_agent").is_none() && t.get("lease_expires_in_seconds").is_none());
    // Completing twice is refused.
    let r = d
        .call("complete_task", json!({"id": id, "lease_token": tok}))
        .await;
    assert_eq!(r["completed"], json!(false));
    assert!(r["error"].is_string());
    // Other queues are separate.
    assert_eq!(
        d.call("list_tasks", json!({"queue": "other"})).await,
        json!([])
    );
}

#[tokio::test]
async fn higher_priority_first_then_oldest() {
    let d = Daemon::start().await;
    let a = push(&d, "q", "a", 0).await;
    let b = push(&d, "q", "b", 5).await;
    let c = push(&d, "q", "c", 0).await;
    let e = push(&d, "q", "e", -2).await;
    let f = push(&d, "q", "f", 5).await;
    let mut order = Vec::new();
    loop {
        let got = claim(&d, "q", "w", json!({})).await;
        if got["claimed"] == json!(false) {
            break;
        }
        order.push(got["id"].as_i64().unwrap());
    }
    assert_eq!(order, vec![b, f, a, c, e]);
}

#[tokio::test]
async fn eight_concurrent_claimers_take_each_of_500_tasks_exactly_once() {
    const TASKS: usize = 500;
    let d = Arc::new(Daemon::start().await);
    let mut pushes = Vec::new();
    for i in 0..TASKS {
        let d = d.clone();
        pushes.push(tokio::spawn(async move {
            push(&d, "q", &format!("t{i}"), 0).await
        }));
    }
    let mut ids = HashSet::new();
    for p in pushes {
        assert!(ids.insert(p.await.unwrap()), "a task id was reused");
    }
    let started = Instant::now();
    let mut claimers = Vec::new();
    for c in 0..8 {
        let d = d.clone();
        claimers.push(tokio::spawn(async move {
            let agent = format!("c{c}");
            let mut mine = Vec::new();
            loop {
                let got = claim(&d, "q", &agent, json!({})).await;
                if got["claimed"] == json!(false) {
                    break mine;
                }
                let id = got["id"].as_i64().unwrap();
                let r = d
                    .call(
                        "complete_task",
                        json!({"id": id, "lease_token": got["lease_token"]}),
                    )
                    .await;
                assert_eq!(r, json!({"completed": true}), "task {id}");
                mine.push(id);
            }
        }));
    }
    let mut claimed = Vec::new();
    let mut per = Vec::new();
    for c in claimers {
        let mine = within(120, c).await.unwrap();
        per.push(mine.len());
        claimed.extend(mine);
    }
    println!(
        "8 claimers took {TASKS} tasks in {:?}, per claimer {per:?}",
        started.elapsed()
    );
    assert_eq!(claimed.len(), TASKS, "some task was claimed twice or never");
    assert_eq!(claimed.iter().copied().collect::<HashSet<_>>(), ids);
    let listed = d.call("list_tasks", json!({"queue": "q"})).await;
    assert!(listed
        .as_array()
        .unwrap()
        .iter()
        .all(|t| t["state"] == "completed" && t["attempts"] == 1));
}

#[tokio::test]
async fn a_blocking_claim_is_woken_by_a_push() {
    let d = Arc::new(Daemon::start().await);
    // An empty queue with a short window: parks, then answers claimed:false.
    let started = Instant::now();
    assert_eq!(
        claim(&d, "q", "w", json!({"wait_seconds": 1})).await,
        json!({"claimed": false})
    );
    assert!(started.elapsed() >= Duration::from_millis(900));

    let waiter = spawn_claim(&d, "q", "w", 40);
    let_it_park().await;
    assert!(!waiter.is_finished());
    // A push to another queue does not wake it.
    push(&d, "other", "nope", 0).await;
    let id = push(&d, "q", "job", 0).await;
    let got = within(5, waiter).await.unwrap();
    assert_eq!(got["claimed"], json!(true), "{got}");
    assert_eq!(got["id"], id);
    assert_eq!(got["payload"], "job");
    assert_eq!(task(&d, "q", id).await["lease_agent"], "w");
}

#[tokio::test]
async fn an_expired_lease_requeues_and_the_stale_token_is_refused() {
    let d = Arc::new(Daemon::start().await);
    let id = push(&d, "q", "job", 0).await;
    let first = claim(&d, "q", "slow", json!({"lease_seconds": 1})).await;
    assert_eq!(first["id"], id);
    // A parked claimer gets the task back when the lease runs out.
    let started = Instant::now();
    let second = spawn_claim(&d, "q", "fast", 20);
    let second = within(10, second).await.unwrap();
    println!(
        "requeued and reclaimed {:?} after the lease",
        started.elapsed()
    );
    assert_eq!(second["claimed"], json!(true));
    assert_eq!(second["id"], id);
    assert_eq!(second["attempts"], 2);
    assert_ne!(second["lease_token"], first["lease_token"]);

    // The stale token answers false and changes nothing.
    let before = task(&d, "q", id).await;
    assert_eq!(before["lease_agent"], "fast");
    for (tool, extra) in [
        ("complete_task", json!({})),
        ("fail_task", json!({"requeue": false})),
        ("fail_task", json!({"requeue": true})),
    ] {
        let mut args = json!({"id": id, "lease_token": first["lease_token"]});
        for (k, v) in extra.as_object().unwrap() {
            args[k] = v.clone();
        }
        let r = d.call(tool, args).await;
        let key = if tool == "complete_task" {
            "completed"
        } else {
            "failed"
        };
        assert_eq!(r[key], json!(false), "{tool}: {r}");
        assert!(r["error"].as_str().is_some_and(|e| !e.is_empty()));
    }
    let r = d
        .call(
            "extend_lease",
            json!({"id": id, "lease_token": first["lease_token"], "lease_seconds": 600}),
        )
        .await;
    assert_eq!(r["extended"], json!(false));
    assert!(r["error"].is_string());
    let after = task(&d, "q", id).await;
    assert_eq!(after["state"], "claimed");
    assert_eq!(after["lease_agent"], "fast");
    assert_eq!(after["attempts"], 2);
    assert!(
        after["lease_expires_in_seconds"].as_i64() <= before["lease_expires_in_seconds"].as_i64()
    );
    // The current holder still completes it.
    let r = d
        .call(
            "complete_task",
            json!({"id": id, "lease_token": second["lease_token"]}),
        )
        .await;
    assert_eq!(r, json!({"completed": true}));
}

#[tokio::test]
async fn an_expired_lease_returns_the_task_to_pending() {
    let d = Daemon::start().await;
    let id = push(&d, "q", "job", 0).await;
    let started = Instant::now();
    claim(&d, "q", "w", json!({"lease_seconds": 1})).await;
    let t = until_state(&d, "q", id, "pending").await;
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert!(t.get("lease_agent").is_none());
    assert_eq!(t["attempts"], 1);
}

#[tokio::test]
async fn a_presence_lapse_requeues_the_claimants_tasks() {
    let d = Arc::new(Daemon::start().await);
    let id = push(&d, "q", "job", 0).await;
    let registered = Instant::now();
    d.call("register_agent", json!({"agent_id": "a", "ttl_seconds": 1}))
        .await;
    // The lease itself is long: only the lapse can end it.
    let c = claim(&d, "q", "a", json!({"lease_seconds": 600})).await;
    assert_eq!(c["id"], id);
    let next = spawn_claim(&d, "q", "b", 20);
    let got = within(10, next).await.unwrap();
    let after = registered.elapsed();
    println!("task handed on {after:?} after a 1 s presence was registered");
    assert!(after >= Duration::from_millis(950));
    assert_eq!(got["id"], id);
    assert_eq!(got["attempts"], 2);
    let r = d
        .call(
            "complete_task",
            json!({"id": id, "lease_token": c["lease_token"]}),
        )
        .await;
    assert_eq!(r["completed"], json!(false));
}

#[tokio::test]
async fn fail_task_requeues_or_gives_up() {
    let d = Daemon::start().await;
    let id = push(&d, "q", "job", 0).await;
    let c = claim(&d, "q", "w", json!({})).await;
    let r = d
        .call(
            "fail_task",
            json!({"id": id, "lease_token": c["lease_token"]}),
        )
        .await;
    assert_eq!(r, json!({"failed": true}));
    let t = task(&d, "q", id).await;
    assert_eq!(t["state"], "pending", "requeue defaults to true");
    assert_eq!(t["attempts"], 1);

    let c = claim(&d, "q", "w", json!({})).await;
    assert_eq!(c["attempts"], 2);
    let r = d
        .call(
            "fail_task",
            json!({"id": id, "lease_token": c["lease_token"], "requeue": true}),
        )
        .await;
    assert_eq!(r, json!({"failed": true}));
    let c = claim(&d, "q", "w", json!({})).await;
    assert_eq!(c["attempts"], 3);
    let r = d
        .call(
            "fail_task",
            json!({"id": id, "lease_token": c["lease_token"], "requeue": false}),
        )
        .await;
    assert_eq!(r, json!({"failed": true}));
    // Failed for good: stays visible, is never claimed again.
    let t = task(&d, "q", id).await;
    assert_eq!(t["state"], "failed");
    assert_eq!(t["attempts"], 3);
    assert_eq!(
        claim(&d, "q", "w", json!({})).await,
        json!({"claimed": false})
    );
}

#[tokio::test]
async fn extend_lease_keeps_the_claim_past_its_first_expiry() {
    let d = Daemon::start().await;
    let id = push(&d, "q", "job", 0).await;
    let c = claim(&d, "q", "w", json!({"lease_seconds": 1})).await;
    let r = d
        .call(
            "extend_lease",
            json!({"id": id, "lease_token": c["lease_token"], "lease_seconds": 60}),
        )
        .await;
    assert_eq!(r["extended"], json!(true), "{r}");
    assert_eq!(r["lease_expires_in_seconds"], 60);
    // Past the original second: still claimed by the same holder.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let t = task(&d, "q", id).await;
    assert_eq!(t["state"], "claimed");
    assert_eq!(t["lease_agent"], "w");
    assert!(t["lease_expires_in_seconds"].as_i64().unwrap() > 50);
    let r = d
        .call(
            "complete_task",
            json!({"id": id, "lease_token": c["lease_token"]}),
        )
        .await;
    assert_eq!(r, json!({"completed": true}));
    let r = d
        .call(
            "extend_lease",
            json!({"id": id, "lease_token": c["lease_token"]}),
        )
        .await;
    assert_eq!(r["extended"], json!(false));
}

#[tokio::test]
async fn state_survives_a_restart() {
    let mut d = Daemon::start().await;
    let tmp = d.take_tmp();
    let done = push(&d, "q", "done", 0).await;
    let leased = push(&d, "q", "leased", 1).await;
    let pending = push(&d, "q", "pending", 0).await;
    let c = claim(&d, "q", "w", json!({"lease_seconds": 600})).await;
    assert_eq!(c["id"], leased);
    let c2 = claim(&d, "q", "w", json!({})).await;
    assert_eq!(c2["id"], done);
    d.call(
        "complete_task",
        json!({"id": done, "lease_token": c2["lease_token"]}),
    )
    .await;
    d.call("signal_event", json!({"name": "e"})).await;
    d.call("signal_event", json!({"name": "e"})).await;
    d.call("clear_event", json!({"name": "e"})).await;
    d.call("signal_event", json!({"name": "f"})).await;
    d.call(
        "register_agent",
        json!({"agent_id": "w", "ttl_seconds": 600}),
    )
    .await;
    d.call("lock_resource", json!({"name": "x", "agent_id": "w"}))
        .await;
    let tasks_before = d.call("list_tasks", json!({"queue": "q"})).await;
    assert_eq!(d.stop(), Some(0));

    let d = Daemon::start_in(&d.home).await;
    let tasks_after = d.call("list_tasks", json!({"queue": "q"})).await;
    assert_eq!(tasks_after.as_array().unwrap().len(), 3);
    for (b, a) in tasks_before
        .as_array()
        .unwrap()
        .iter()
        .zip(tasks_after.as_array().unwrap())
    {
        for k in [
            "id",
            "payload",
            "priority",
            "state",
            "attempts",
            "lease_agent",
        ] {
            assert_eq!(a[k], b[k], "{k} changed across the restart");
        }
    }
    // The lease survived: its token still completes the task.
    let r = d
        .call(
            "complete_task",
            json!({"id": leased, "lease_token": c["lease_token"]}),
        )
        .await;
    assert_eq!(r, json!({"completed": true}));
    assert_eq!(claim(&d, "q", "w", json!({})).await["id"], pending);
    // Events keep their generation and their clear.
    let r = d
        .call("wait_for_event", json!({"name": "e", "wait_seconds": 0}))
        .await;
    assert_eq!(r, json!({"generation": 2, "fired": false}));
    let r = d
        .call("wait_for_event", json!({"name": "f", "wait_seconds": 0}))
        .await;
    assert_eq!(r, json!({"generation": 1, "fired": true}));
    assert_eq!(
        d.call("signal_event", json!({"name": "e"})).await["generation"],
        3
    );
    // Agents and what they hold.
    let agents = d.call("list_agents", json!({})).await;
    assert_eq!(agents[0]["agent_id"], "w");
    assert_eq!(agents[0]["locks_held"], 1);
    assert_eq!(agents[0]["leases_held"], 1);
    assert!(agents[0]["expires_in_seconds"].as_i64().unwrap() > 590);
    drop(d);
    drop(tmp);
}

#[tokio::test]
async fn payload_limit_and_bad_input_are_refused() {
    let d = Daemon::start().await;
    let max = "x".repeat(256 * 1024);
    let id = push(&d, "q", &max, 0).await;
    assert_eq!(
        task(&d, "q", id).await["payload"].as_str().unwrap().len(),
        max.len()
    );
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "push_task",
            json!({"queue": "q", "payload": "x".repeat(256 * 1024 + 1)}),
            "payload",
        ),
        ("push_task", json!({"queue": "", "payload": "p"}), "queue"),
        (
            "push_task",
            json!({"queue": "q", "payload": "p", "priority": "high"}),
            "priority",
        ),
        (
            "claim_next_task",
            json!({"queue": "q", "agent_id": "w", "lease_seconds": 0}),
            "lease_seconds",
        ),
        (
            "claim_next_task",
            json!({"queue": "q", "agent_id": "w", "wait_seconds": -1}),
            "wait_seconds",
        ),
        ("claim_next_task", json!({"queue": "q"}), "agent_id"),
        ("complete_task", json!({"id": id}), "lease_token"),
        (
            "fail_task",
            json!({"id": id, "lease_token": "t", "requeue": "maybe"}),
            "requeue",
        ),
        (
            "extend_lease",
            json!({"id": id, "lease_token": "t", "lease_seconds": 0}),
            "lease_seconds",
        ),
        ("list_tasks", json!({}), "queue"),
    ];
    for (tool, args, field) in cases {
        let e = d.call_err(tool, args.clone()).await;
        let shown: String = args.to_string().chars().take(120).collect();
        assert!(e.starts_with(&format!("{field}:")), "{tool} {shown}: {e}");
    }
    let all = d.call("list_tasks", json!({"queue": "q"})).await;
    assert_eq!(
        all.as_array().unwrap().len(),
        1,
        "a refused call changed the queue"
    );
    assert_eq!(all[0]["state"], "pending");
}

#[tokio::test]
async fn a_lease_due_across_a_restart_still_expires() {
    let mut d = Daemon::start().await;
    let tmp = d.take_tmp();
    let id = push(&d, "q", "job", 0).await;
    let c = claim(&d, "q", "w", json!({"lease_seconds": 1})).await;
    assert_eq!(c["id"], id);
    assert_eq!(d.stop(), Some(0));
    let d = Daemon::start_in(&d.home).await;
    let t = until_state(&d, "q", id, "pending").await;
    assert_eq!(t["attempts"], 1);
    let again = claim(&d, "q", "w2", json!({})).await;
    assert_eq!(again["id"], id);
    assert_eq!(again["attempts"], 2);
    drop(d);
    drop(tmp);
}

#[tokio::test]
async fn a_gone_claimer_is_skipped() {
    let d = Arc::new(Daemon::start().await);
    let gone = spawn_claim(&d, "q", "gone", 40);
    let_it_park().await;
    let next = spawn_claim(&d, "q", "next", 40);
    let_it_park().await;
    gone.abort();
    assert!(gone.await.unwrap_err().is_cancelled());
    // Let the daemon notice the closed connection (nothing over MCP shows parked claimers).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let id = push(&d, "q", "job", 0).await;
    let got = within(5, next).await.unwrap();
    assert_eq!(got["id"], id);
    // Handed straight to the live claimer, never leased to the gone one first.
    assert_eq!(got["attempts"], 1);
    assert_eq!(task(&d, "q", id).await["lease_agent"], "next");
}
