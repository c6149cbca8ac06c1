//! Issue 18, tasks: delayed tasks, attempt limits and the dead state, unique keys, results and
//! errors, and the discovery tools (get_task, list_queues, list_events, list_tasks by state),
//! through the real daemon.
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{within, Daemon};
use serde_json::{json, Value};

async fn claim(d: &Daemon, queue: &str, extra: Value) -> Value {
    let mut args = json!({"queue": queue, "agent_id": "w"});
    for (k, v) in extra.as_object().unwrap() {
        args[k] = v.clone();
    }
    d.call("claim_next_task", args).await
}

async fn get(d: &Daemon, id: i64) -> Value {
    d.call("get_task", json!({"id": id})).await
}

#[tokio::test]
async fn a_delayed_task_is_claimed_no_earlier_than_its_delay_and_wakes_a_parked_claimer() {
    let d = Arc::new(Daemon::start().await);
    let before_push = Instant::now();
    let id = d
        .call(
            "push_task",
            json!({"queue": "q", "payload": "later", "delay_seconds": 2}),
        )
        .await["id"]
        .as_i64()
        .unwrap();
    // Not claimable yet, and listed as delayed.
    assert_eq!(claim(&d, "q", json!({})).await, json!({"claimed": false}));
    let t = get(&d, id).await;
    assert_eq!(t["found"], json!(true));
    assert_eq!(t["state"], "pending");
    assert!(
        (1..=2).contains(&t["ready_in_seconds"].as_i64().unwrap()),
        "{t}"
    );
    // A claimer parked with a window far longer than the delay gets the task when it is ready:
    // had nothing woken it, it would have answered claimed:false at the end of its window.
    let parked = {
        let d = d.clone();
        tokio::spawn(async move { claim(&d, "q", json!({"wait_seconds": 30})).await })
    };
    let got = within(40, parked).await.unwrap();
    let waited = before_push.elapsed();
    assert_eq!(got["claimed"], json!(true), "{got}");
    assert_eq!(got["id"], id);
    assert!(
        waited >= Duration::from_millis(1_900),
        "claimed after {waited:?}, before its 2 s delay"
    );
    // Once claimed it is no longer delayed.
    assert!(get(&d, id).await.get("ready_in_seconds").is_none());
}

#[tokio::test]
async fn failures_up_to_max_attempts_dead_letter_a_task_and_retry_task_redrives_it() {
    let d = Daemon::start().await;
    let id = d
        .call(
            "push_task",
            json!({"queue": "q", "payload": "flaky", "max_attempts": 2}),
        )
        .await["id"]
        .as_i64()
        .unwrap();
    for attempt in 1..=2 {
        let c = claim(&d, "q", json!({})).await;
        assert_eq!(c["id"], id);
        assert_eq!(c["attempts"], attempt);
        let r = d
            .call(
                "fail_task",
                json!({"id": id, "lease_token": c["lease_token"], "error": format!("boom {attempt}")}),
            )
            .await;
        assert_eq!(r, json!({"failed": true}));
    }
    // Dead: kept, listed, with its last error, and not claimed again.
    let t = get(&d, id).await;
    assert_eq!(t["state"], "dead");
    assert_eq!(t["attempts"], 2);
    assert_eq!(t["max_attempts"], 2);
    assert_eq!(t["last_error"], "boom 2");
    assert_eq!(claim(&d, "q", json!({})).await, json!({"claimed": false}));
    let dead = d
        .call("list_tasks", json!({"queue": "q", "state": "dead"}))
        .await;
    assert_eq!(dead.as_array().unwrap().len(), 1);
    assert_eq!(dead[0]["id"], id);
    assert_eq!(
        d.call("list_tasks", json!({"queue": "q", "state": "pending"}))
            .await,
        json!([])
    );
    let queues = d.call("list_queues", json!({})).await;
    assert_eq!(
        queues,
        json!([{"queue": "q", "pending": 0, "claimed": 0, "completed": 0, "failed": 0,
                "dead": 1, "waiting_claimers": 0}])
    );
    // A pending task cannot be retried; the dead one can, with its attempts back at zero.
    let other = d
        .call("push_task", json!({"queue": "q", "payload": "x"}))
        .await["id"]
        .as_i64()
        .unwrap();
    let r = d.call("retry_task", json!({"id": other})).await;
    assert_eq!(r["retried"], json!(false));
    assert!(r["error"].as_str().unwrap().contains("pending"), "{r}");
    assert_eq!(
        d.call("retry_task", json!({"id": id})).await,
        json!({"retried": true})
    );
    let t = get(&d, id).await;
    assert_eq!(
        (t["state"].clone(), t["attempts"].clone()),
        (json!("pending"), json!(0))
    );
    assert_eq!(
        t["last_error"], "boom 2",
        "the last error is kept for the record"
    );
    let c = claim(&d, "q", json!({})).await;
    assert_eq!(
        (c["id"].as_i64(), c["attempts"].clone()),
        (Some(id), json!(1))
    );
    let missing = d.call("retry_task", json!({"id": 999_999})).await;
    assert_eq!(missing["retried"], json!(false));
}

#[tokio::test]
async fn a_lapsed_lease_counts_as_an_attempt() {
    let d = Daemon::start().await;
    let id = d
        .call(
            "push_task",
            json!({"queue": "q", "payload": "slow", "max_attempts": 1}),
        )
        .await["id"]
        .as_i64()
        .unwrap();
    let c = claim(&d, "q", json!({"lease_seconds": 1})).await;
    assert_eq!(c["id"], id);
    let t = within(15, async {
        loop {
            let t = get(&d, id).await;
            if t["state"] != "claimed" {
                break t;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert_eq!(t["state"], "dead", "{t}");
    assert_eq!(t["last_error"], "the lease expired");
    // The expired lease finishes nothing.
    let r = d
        .call(
            "complete_task",
            json!({"id": id, "lease_token": c["lease_token"]}),
        )
        .await;
    assert_eq!(r["completed"], json!(false));
}

#[tokio::test]
async fn concurrent_pushes_with_one_unique_key_make_exactly_one_task() {
    let d = Arc::new(Daemon::start().await);
    let pushes: Vec<_> = (0..32)
        .map(|i| {
            let d = d.clone();
            tokio::spawn(async move {
                d.call(
                    "push_task",
                    json!({"queue": "q", "payload": format!("p{i}"), "unique_key": "build:main"}),
                )
                .await
            })
        })
        .collect();
    let mut answers = Vec::new();
    for p in pushes {
        answers.push(within(60, p).await.unwrap());
    }
    let id = answers[0]["id"].as_i64().unwrap();
    assert!(answers.iter().all(|a| a["id"] == id), "{answers:?}");
    let fresh = answers
        .iter()
        .filter(|a| a.get("duplicate").is_none())
        .count();
    let dups = answers
        .iter()
        .filter(|a| a["duplicate"] == json!(true))
        .count();
    assert_eq!((fresh, dups), (1, 31), "{answers:?}");
    let tasks = d.call("list_tasks", json!({"queue": "q"})).await;
    assert_eq!(tasks.as_array().unwrap().len(), 1);
    assert_eq!(tasks[0]["unique_key"], "build:main");
    // Claimed, it still holds the key; other queues do not share it.
    let c = claim(&d, "q", json!({})).await;
    let again = d
        .call(
            "push_task",
            json!({"queue": "q", "payload": "again", "unique_key": "build:main"}),
        )
        .await;
    assert_eq!(again, json!({"id": id, "duplicate": true}));
    let elsewhere = d
        .call(
            "push_task",
            json!({"queue": "r", "payload": "x", "unique_key": "build:main"}),
        )
        .await;
    assert_ne!(elsewhere["id"], id);
    assert!(elsewhere.get("duplicate").is_none());
    // Finished, the key is free again.
    d.call(
        "complete_task",
        json!({"id": id, "lease_token": c["lease_token"]}),
    )
    .await;
    let next = d
        .call(
            "push_task",
            json!({"queue": "q", "payload": "next", "unique_key": "build:main"}),
        )
        .await;
    assert!(next.get("duplicate").is_none());
    assert_ne!(next["id"], id);
}

#[tokio::test]
async fn results_errors_and_the_discovery_tools() {
    let d = Daemon::start().await;
    let push = |payload: &'static str| {
        let d = &d;
        async move {
            d.call("push_task", json!({"queue": "jobs", "payload": payload}))
                .await["id"]
                .as_i64()
                .unwrap()
        }
    };
    let a = push("a").await;
    let b = push("b").await;
    let ca = claim(&d, "jobs", json!({})).await;
    let r = d
        .call(
            "complete_task",
            json!({"id": a, "lease_token": ca["lease_token"], "result": "{\"ok\":true}"}),
        )
        .await;
    assert_eq!(r, json!({"completed": true}));
    let cb = claim(&d, "jobs", json!({})).await;
    d.call(
        "fail_task",
        json!({"id": b, "lease_token": cb["lease_token"], "requeue": false, "error": "no disk"}),
    )
    .await;
    let ta = get(&d, a).await;
    assert_eq!(ta["state"], "completed");
    assert_eq!(ta["result"], "{\"ok\":true}");
    let tb = get(&d, b).await;
    assert_eq!(tb["state"], "failed");
    assert_eq!(tb["last_error"], "no disk");
    assert_eq!(
        d.call("get_task", json!({"id": 987_654})).await,
        json!({"found": false})
    );
    let done = d
        .call("list_tasks", json!({"queue": "jobs", "state": "completed"}))
        .await;
    assert_eq!(done.as_array().unwrap().len(), 1);
    assert_eq!(done[0]["id"], a);
    // A failed task can be retried too.
    assert_eq!(
        d.call("retry_task", json!({"id": b})).await,
        json!({"retried": true})
    );
    let queues = d.call("list_queues", json!({})).await;
    assert_eq!(queues[0]["queue"], "jobs");
    assert_eq!(
        (queues[0]["completed"].clone(), queues[0]["pending"].clone()),
        (json!(1), json!(1))
    );
    // list_events: every event signalled or cleared.
    assert_eq!(d.call("list_events", json!({})).await, json!([]));
    d.call("signal_event", json!({"name": "built"})).await;
    d.call("signal_event", json!({"name": "built"})).await;
    d.call("clear_event", json!({"name": "tested"})).await;
    let events = d.call("list_events", json!({})).await;
    assert_eq!(
        events,
        json!([
            {"name": "built", "generation": 2, "cleared_at_generation": 0, "waiters": 0},
            {"name": "tested", "generation": 0, "cleared_at_generation": 0, "waiters": 0},
        ])
    );
}

#[tokio::test]
async fn bad_task_options_are_refused_naming_the_field() {
    let d = Daemon::start().await;
    let cases = [
        (
            "push_task",
            json!({"queue": "q", "payload": "p", "delay_seconds": -1}),
            "delay_seconds",
        ),
        (
            "push_task",
            json!({"queue": "q", "payload": "p", "delay_seconds": 2_592_001}),
            "delay_seconds",
        ),
        (
            "push_task",
            json!({"queue": "q", "payload": "p", "max_attempts": 0}),
            "max_attempts",
        ),
        (
            "push_task",
            json!({"queue": "q", "payload": "p", "max_attempts": 1001}),
            "max_attempts",
        ),
        (
            "push_task",
            json!({"queue": "q", "payload": "p", "unique_key": ""}),
            "unique_key",
        ),
        (
            "list_tasks",
            json!({"queue": "q", "state": "done"}),
            "state",
        ),
        (
            "complete_task",
            json!({"id": 1, "lease_token": "x", "result": "a\u{0}b"}),
            "result",
        ),
        (
            "fail_task",
            json!({"id": 1, "lease_token": "x", "error": "a".repeat(256 * 1024 + 1)}),
            "error",
        ),
        ("get_task", json!({}), "id"),
    ];
    for (tool, args, field) in cases {
        let e = d.call_err(tool, args.clone()).await;
        assert!(e.starts_with(field), "{tool} {args}: {e}");
    }
    // Nothing was pushed.
    assert_eq!(d.call("list_queues", json!({})).await, json!([]));
}

/// The wake-up of a delayed task is rebuilt from the store at start: a claimer parked after a
/// restart still gets the task at its instant (and not at the end of its window).
#[tokio::test]
async fn a_delayed_task_still_wakes_a_claimer_after_a_restart() {
    let mut d = Daemon::start().await;
    let tmp = d.take_tmp();
    let id = d
        .call(
            "push_task",
            json!({"queue": "q", "payload": "later", "delay_seconds": 8}),
        )
        .await["id"]
        .as_i64()
        .unwrap();
    assert_eq!(d.stop(), Some(0));
    let d = Daemon::start_in(&d.home).await;
    let got = within(45, claim(&d, "q", json!({"wait_seconds": 40}))).await;
    assert_eq!(got["claimed"], json!(true), "{got}");
    assert_eq!(got["id"], id);
    drop(d);
    drop(tmp);
}
