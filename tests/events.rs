//! Issue 4, events: generation-counted signals, waits that never miss one, clear_event.
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{within, Daemon};
use serde_json::{json, Value};

async fn signal(d: &Daemon, name: &str) -> i64 {
    d.call("signal_event", json!({"name": name})).await["generation"]
        .as_i64()
        .unwrap()
}

fn spawn_wait(
    d: &Arc<Daemon>,
    name: &str,
    last_seen: i64,
    wait: i64,
) -> tokio::task::JoinHandle<Value> {
    let d = d.clone();
    let name = name.to_string();
    tokio::spawn(async move {
        d.call(
            "wait_for_event",
            json!({"name": name, "last_seen_generation": last_seen, "wait_seconds": wait}),
        )
        .await
    })
}

/// The waits below are parked before the signal that should wake them. Nothing over MCP shows
/// event waiters, so a short pause lets the requests reach the daemon; the assertions hold
/// whether or not they had, the pause only makes sure the parked path is what is tested.
async fn let_them_park() {
    tokio::time::sleep(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn signals_count_generations_and_a_past_signal_answers_at_once() {
    let d = Daemon::start().await;
    assert_eq!(signal(&d, "e").await, 1);
    assert_eq!(signal(&d, "e").await, 2);
    let r = within(
        5,
        d.call("wait_for_event", json!({"name": "e", "wait_seconds": 50})),
    )
    .await;
    assert_eq!(r, json!({"generation": 2, "fired": true}));
    let r = within(
        5,
        d.call(
            "wait_for_event",
            json!({"name": "e", "last_seen_generation": 1, "wait_seconds": 50}),
        ),
    )
    .await;
    assert_eq!(r, json!({"generation": 2, "fired": true}));
    // Nothing new: the window ends with fired:false and the current generation.
    let started = Instant::now();
    let r = d
        .call(
            "wait_for_event",
            json!({"name": "e", "last_seen_generation": 2, "wait_seconds": 1}),
        )
        .await;
    assert_eq!(r, json!({"generation": 2, "fired": false}));
    assert!(started.elapsed() >= Duration::from_millis(900));
    // An event never signalled is at generation 0.
    let r = d
        .call(
            "wait_for_event",
            json!({"name": "other", "wait_seconds": 0}),
        )
        .await;
    assert_eq!(r, json!({"generation": 0, "fired": false}));
}

#[tokio::test]
async fn a_parked_wait_is_woken_by_a_signal() {
    let d = Arc::new(Daemon::start().await);
    let w = spawn_wait(&d, "e", 0, 40);
    let_them_park().await;
    assert!(!w.is_finished());
    assert_eq!(signal(&d, "e").await, 1);
    let r = within(5, w).await.unwrap();
    assert_eq!(r, json!({"generation": 1, "fired": true}));
}

#[tokio::test]
async fn a_signal_right_before_a_wait_is_never_missed() {
    let d = Arc::new(Daemon::start().await);
    // The simple race: read the generation, a signal slips in, then wait.
    let g = d
        .call("wait_for_event", json!({"name": "e", "wait_seconds": 0}))
        .await["generation"]
        .as_i64()
        .unwrap();
    signal(&d, "e").await;
    let r = within(
        5,
        d.call(
            "wait_for_event",
            json!({"name": "e", "last_seen_generation": g, "wait_seconds": 50}),
        ),
    )
    .await;
    assert_eq!(r, json!({"generation": g + 1, "fired": true}));

    // Under fire: a consumer chasing a producer sees every generation move and never times out.
    const SIGNALS: i64 = 200;
    let d2 = d.clone();
    let consumer = tokio::spawn(async move {
        let mut seen = g + 1;
        let mut wakes = 0;
        while seen < g + 1 + SIGNALS {
            let r = d2
                .call(
                    "wait_for_event",
                    json!({"name": "e", "last_seen_generation": seen, "wait_seconds": 20}),
                )
                .await;
            assert_eq!(r["fired"], json!(true), "a signal was missed: {r}");
            let now = r["generation"].as_i64().unwrap();
            assert!(now > seen);
            seen = now;
            wakes += 1;
        }
        wakes
    });
    for _ in 0..SIGNALS {
        signal(&d, "e").await;
    }
    let wakes = within(30, consumer).await.unwrap();
    println!("{SIGNALS} signals, consumer woke {wakes} times, missed none");
}

#[tokio::test]
async fn a_thousand_waiters_are_woken_by_one_signal() {
    const N: usize = 1000;
    let d = Arc::new(Daemon::start().await);
    let g = signal(&d, "e").await;
    let waits: Vec<_> = (0..N).map(|_| spawn_wait(&d, "e", g, 50)).collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(waits.iter().all(|w| !w.is_finished()));
    let at = Instant::now();
    assert_eq!(signal(&d, "e").await, g + 1);
    let answers = within(30, futures::future::join_all(waits)).await;
    println!(
        "{N} waiters answered within {:?} of one signal",
        at.elapsed()
    );
    for a in answers {
        assert_eq!(a.unwrap(), json!({"generation": g + 1, "fired": true}));
    }
}

#[tokio::test]
async fn clear_event_keeps_the_promise_to_old_and_fresh_waiters() {
    let d = Arc::new(Daemon::start().await);
    signal(&d, "e").await;
    assert_eq!(signal(&d, "e").await, 2);
    let r = d.call("clear_event", json!({"name": "e"})).await;
    assert_eq!(r, json!({"cleared": true}));
    // The generation is kept (it never goes back); the clear only means signals up to it
    // no longer count, so a fresh waiter with 0 waits for the next signal.
    let r = d
        .call("wait_for_event", json!({"name": "e", "wait_seconds": 1}))
        .await;
    assert_eq!(r, json!({"generation": 2, "fired": false}));
    let fresh = spawn_wait(&d, "e", 0, 40);
    // A waiter holding a generation from before the clear still wakes on the next signal.
    let old = spawn_wait(&d, "e", 1, 40);
    let current = spawn_wait(&d, "e", 2, 40);
    let_them_park().await;
    assert!(!fresh.is_finished() && !old.is_finished() && !current.is_finished());
    assert_eq!(signal(&d, "e").await, 3);
    for w in [fresh, old, current] {
        assert_eq!(
            within(5, w).await.unwrap(),
            json!({"generation": 3, "fired": true})
        );
    }
    // After the signal, a fresh waiter sees it at once.
    let r = within(
        5,
        d.call("wait_for_event", json!({"name": "e", "wait_seconds": 50})),
    )
    .await;
    assert_eq!(r, json!({"generation": 3, "fired": true}));
}

#[tokio::test]
async fn events_bad_input_is_refused() {
    let d = Daemon::start().await;
    for (tool, args, field) in [
        ("signal_event", json!({"name": ""}), "name"),
        (
            "wait_for_event",
            json!({"name": "e", "wait_seconds": -1}),
            "wait_seconds",
        ),
        (
            "wait_for_event",
            json!({"name": "e", "last_seen_generation": -1}),
            "last_seen_generation",
        ),
        ("clear_event", json!({"name": "x".repeat(513)}), "name"),
    ] {
        let e = d.call_err(tool, args.clone()).await;
        assert!(e.starts_with(&format!("{field}:")), "{tool} {args}: {e}");
    }
    let r = d
        .call("wait_for_event", json!({"name": "e", "wait_seconds": 0}))
        .await;
    assert_eq!(r["generation"], 0, "a refused call changed the event");
}
