//! Issue 18: shared locks and semaphores, through the real daemon (and, with
//! `AIRLOCK_TEST_BACKEND=postgres`, on PostgreSQL).
//!
//! Waiters are parked in a known order as in `tests/locks.rs`: start one, wait until
//! `list_locks` counts it in the line, then start the next.
mod common;

use std::collections::HashSet;
use std::process::Stdio;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{
    airlock_bin, fence, lock, spawn_lock, token, unlock, until_waiters, waiters, within, Daemon,
};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

const SHARED: fn() -> Value = || json!({"shared": true});

/// Every `list_locks` entry of `name`.
async fn holders(d: &Daemon, name: &str) -> Vec<Value> {
    let locks = d.call("list_locks", json!({})).await;
    locks
        .as_array()
        .expect("list_locks is an array")
        .iter()
        .filter(|l| l["name"] == name)
        .cloned()
        .collect()
}

async fn holder_agents(d: &Daemon, name: &str) -> Vec<String> {
    let mut agents: Vec<String> = holders(d, name)
        .await
        .iter()
        .map(|l| l["agent_id"].as_str().unwrap().to_string())
        .collect();
    agents.sort();
    agents
}

#[tokio::test]
async fn shared_holders_hold_together_each_with_its_own_token_and_fence() {
    let d = Daemon::start().await;
    let mut tokens = HashSet::new();
    let mut fences = Vec::new();
    for agent in ["r1", "r2", "r3"] {
        let got = lock(&d, "db", agent, SHARED()).await;
        tokens.insert(token(&got));
        fences.push(fence(&got));
    }
    assert_eq!(tokens.len(), 3, "each holder has its own token");
    assert!(
        fences.windows(2).all(|w| w[0] < w[1]),
        "fences increase per grant: {fences:?}"
    );
    let rows = holders(&d, "db").await;
    assert_eq!(rows.len(), 3, "one entry per holder: {rows:?}");
    for (row, f) in rows.iter().zip(&fences) {
        assert_eq!(row["mode"], "shared");
        assert_eq!(row["holders"], 3);
        assert_eq!(row["waiters"], 0);
        assert_eq!(row["fence"], *f);
        assert!(row.get("limit").is_none(), "no limit: {row}");
    }
    // An exclusive caller is refused while readers hold (a try-lock is not queued).
    let w = lock(&d, "db", "w", json!({})).await;
    assert_eq!(w["locked"], json!(false));
    assert_eq!(w["held_by"], "r1", "{w}");
    // Asking again is idempotent per holder: the same token and fence.
    let again = lock(&d, "db", "r2", SHARED()).await;
    assert_eq!(fence(&again), fences[1]);
    assert!(tokens.contains(&token(&again)));
    assert_eq!(holders(&d, "db").await.len(), 3);
}

#[tokio::test]
async fn an_exclusive_lock_is_listed_as_before_with_its_mode() {
    let d = Daemon::start().await;
    let got = lock(&d, "x", "a", json!({})).await;
    let rows = holders(&d, "x").await;
    let row = rows[0].as_object().unwrap();
    let mut keys: Vec<&str> = row.keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "agent_id",
            "expires_in_seconds",
            "fence",
            "holders",
            "line",
            "mode",
            "name",
            "waiters"
        ]
    );
    assert_eq!(row["mode"], "exclusive");
    assert_eq!(row["fence"], got["fence"]);
    // A shared caller waits for an exclusive holder too.
    let r = lock(&d, "x", "r", SHARED()).await;
    assert_eq!(
        (r["locked"].clone(), r["held_by"].clone()),
        (json!(false), json!("a"))
    );
}

#[tokio::test]
async fn a_writer_queued_behind_readers_goes_before_later_readers() {
    let d = Arc::new(Daemon::start().await);
    let r1 = token(&lock(&d, "db", "r1", SHARED()).await);
    let r2 = token(&lock(&d, "db", "r2", SHARED()).await);
    let writer = spawn_lock(&d, "db", "w", json!({"wait_seconds": 40}));
    until_waiters(&d, "db", 1).await;
    // A reader arriving now would share with the readers, but the writer was first.
    let late = lock(&d, "db", "r3", SHARED()).await;
    assert_eq!(late["locked"], json!(false));
    assert_eq!(
        late["held_by"], "w",
        "the queued writer stands before it: {late}"
    );
    let reader = spawn_lock(&d, "db", "r3", json!({"shared": true, "wait_seconds": 40}));
    until_waiters(&d, "db", 2).await;

    unlock(&d, "db", &r1).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!writer.is_finished(), "r2 still holds: the writer waits");
    assert!(!reader.is_finished(), "the reader waits behind the writer");
    assert_eq!(holder_agents(&d, "db").await, ["r2"]);

    unlock(&d, "db", &r2).await;
    let w = within(20, writer).await.unwrap();
    let wt = token(&w);
    assert_eq!(holder_agents(&d, "db").await, ["w"]);
    assert_eq!(waiters(&d, "db").await, 1, "the reader still waits");
    assert!(!reader.is_finished());

    unlock(&d, "db", &wt).await;
    let r = within(20, reader).await.unwrap();
    assert!(fence(&r) > fence(&w));
    assert_eq!(holder_agents(&d, "db").await, ["r3"]);
}

#[tokio::test]
async fn readers_waiting_behind_a_writer_are_granted_together() {
    let d = Arc::new(Daemon::start().await);
    let w = token(&lock(&d, "db", "w", json!({})).await);
    let mut readers = Vec::new();
    for (i, agent) in ["r1", "r2", "r3"].iter().enumerate() {
        readers.push(spawn_lock(
            &d,
            "db",
            agent,
            json!({"shared": true, "wait_seconds": 40}),
        ));
        until_waiters(&d, "db", i as u64 + 1).await;
    }
    // A second writer behind the readers waits for all of them.
    let w2 = spawn_lock(&d, "db", "w2", json!({"wait_seconds": 40}));
    until_waiters(&d, "db", 4).await;
    unlock(&d, "db", &w).await;
    let mut tokens = Vec::new();
    for r in readers {
        tokens.push(token(&within(20, r).await.unwrap()));
    }
    assert_eq!(holder_agents(&d, "db").await, ["r1", "r2", "r3"]);
    assert!(!w2.is_finished());
    for t in &tokens {
        unlock(&d, "db", t).await;
    }
    token(&within(20, w2).await.unwrap());
}

/// 32 callers at once on a semaphore of 3: every one is granted in the end, and never more than
/// 3 hold it at any instant — counted by the callers themselves (one more after each grant, one
/// less before each unlock) and by the daemon (`holders` in `list_locks`).
#[tokio::test]
async fn a_semaphore_admits_at_most_n_of_32_concurrent_callers() {
    const N: i64 = 3;
    let d = Arc::new(Daemon::start().await);
    let inside = Arc::new(AtomicI64::new(0));
    let most = Arc::new(AtomicI64::new(0));
    let mut callers = Vec::new();
    for i in 0..32 {
        let (d, inside, most) = (d.clone(), inside.clone(), most.clone());
        callers.push(tokio::spawn(async move {
            let agent = format!("c{i}");
            let args = json!({"limit": N, "wait_seconds": 50, "ttl_seconds": 120});
            let mut got = lock(&d, "pool", &agent, args.clone()).await;
            // A window may end on a loaded machine: call again (with the wake token).
            while got["locked"] != json!(true) {
                let mut again = args.clone();
                again["wake_token"] = got["wake_token"].clone();
                got = lock(&d, "pool", &agent, again).await;
            }
            let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
            most.fetch_max(now, Ordering::SeqCst);
            let listed = holders(&d, "pool").await;
            assert!(
                listed.len() as i64 <= N,
                "{} holders: {listed:?}",
                listed.len()
            );
            for l in &listed {
                assert_eq!(
                    (l["mode"].clone(), l["limit"].clone()),
                    (json!("shared"), json!(N))
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            inside.fetch_sub(1, Ordering::SeqCst);
            unlock(&d, "pool", &token(&got)).await;
            fence(&got)
        }));
    }
    let mut fences = HashSet::new();
    for c in callers {
        fences.insert(within(300, c).await.unwrap());
    }
    assert_eq!(
        fences.len(),
        32,
        "every caller was granted, each with its own fence"
    );
    let most = most.load(Ordering::SeqCst);
    assert!((1..=N).contains(&most), "at most {N} at once, saw {most}");
    assert!(holders(&d, "pool").await.is_empty());
}

#[tokio::test]
async fn a_limit_mismatch_is_refused_and_changes_nothing() {
    let d = Arc::new(Daemon::start().await);
    let a = lock(&d, "pool", "a", json!({"limit": 2})).await;
    token(&a);
    let e = d
        .call_err(
            "lock_resource",
            json!({"name": "pool", "agent_id": "b", "limit": 3}),
        )
        .await;
    assert!(
        e.contains("limit: must be the same for every caller") && e.contains("limit 2"),
        "{e}"
    );
    let e = d
        .call_err("lock_resource", json!({"name": "pool", "agent_id": "b"}))
        .await;
    assert!(
        e.contains("limit: must be the same") && e.contains("got none"),
        "{e}"
    );
    let e = d
        .call_err(
            "lock_resources",
            json!({"names": [{"name": "pool", "limit": 5}, "other"], "agent_id": "b"}),
        )
        .await;
    assert!(e.contains("limit: must be the same"), "{e}");
    let rows = holders(&d, "pool").await;
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (rows[0]["agent_id"].clone(), rows[0]["limit"].clone()),
        (json!("a"), json!(2))
    );
    assert!(
        holders(&d, "other").await.is_empty(),
        "the set took nothing"
    );
    // Free again: any limit may start it.
    unlock(&d, "pool", &token(&a)).await;
    token(&lock(&d, "pool", "s", json!({"limit": 4})).await);

    // Bad values are refused by the check, naming the field.
    for (args, field) in [
        (
            json!({"limit": 0}),
            "limit: must be between 1 and 1000, got 0",
        ),
        (json!({"limit": 1001}), "limit: must be between 1 and 1000"),
        (
            json!({"limit": 2, "shared": false}),
            "shared: must not be false with a limit",
        ),
    ] {
        let mut a = json!({"name": "y", "agent_id": "a"});
        for (k, v) in args.as_object().unwrap() {
            a[k] = v.clone();
        }
        let e = d.call_err("lock_resource", a).await;
        assert!(e.contains(field), "{e}");
    }
    // One agent holds a name in one mode at a time.
    token(&lock(&d, "m", "a", SHARED()).await);
    let e = d
        .call_err("lock_resource", json!({"name": "m", "agent_id": "a"}))
        .await;
    assert!(
        e.contains("shared: must match how you hold the lock"),
        "{e}"
    );
}

#[tokio::test]
async fn unlock_and_renew_act_on_one_holder() {
    let d = Daemon::start().await;
    let r1 = lock(&d, "db", "r1", json!({"shared": true, "ttl_seconds": 60})).await;
    let r2 = lock(&d, "db", "r2", json!({"shared": true, "ttl_seconds": 60})).await;
    let renewed = d
        .call(
            "renew_lock",
            json!({"name": "db", "lock_token": token(&r2), "ttl_seconds": 600}),
        )
        .await;
    assert_eq!(renewed["renewed"], json!(true));
    assert_eq!(renewed["fence"], r2["fence"], "r2's own fence");
    let rows = holders(&d, "db").await;
    let left = |agent: &str| {
        rows.iter().find(|l| l["agent_id"] == agent).unwrap()["expires_in_seconds"]
            .as_i64()
            .unwrap()
    };
    assert!(left("r1") <= 60 && left("r2") > 500, "{rows:?}");

    unlock(&d, "db", &token(&r1)).await;
    assert_eq!(holder_agents(&d, "db").await, ["r2"]);
    let again = d
        .call(
            "unlock_resource",
            json!({"name": "db", "lock_token": token(&r1)}),
        )
        .await;
    assert_eq!(again["released"], json!(false));
    // The v1 agent_id path names the agent's one hold of the name.
    let by_agent = d
        .call("renew_lock", json!({"name": "db", "agent_id": "r2"}))
        .await;
    assert_eq!(by_agent["fence"], r2["fence"]);
    let wrong = d
        .call("unlock_resource", json!({"name": "db", "agent_id": "r1"}))
        .await;
    assert_eq!(wrong["released"], json!(false));
    let released = d
        .call("unlock_resource", json!({"name": "db", "agent_id": "r2"}))
        .await;
    assert_eq!(released, json!({"released": true}));
    assert!(holders(&d, "db").await.is_empty());
}

/// One holder's TTL ends at its instant: the semaphore's freed place goes to the waiter then,
/// and the other holder keeps its own.
#[tokio::test]
async fn a_holders_ttl_frees_its_place_only() {
    let d = Arc::new(Daemon::start().await);
    token(&lock(&d, "pool", "short", json!({"limit": 2, "ttl_seconds": 1})).await);
    let long = lock(&d, "pool", "long", json!({"limit": 2, "ttl_seconds": 120})).await;
    let waiting = spawn_lock(&d, "pool", "next", json!({"limit": 2, "wait_seconds": 40}));
    let got = within(20, waiting).await.unwrap();
    assert!(fence(&got) > fence(&long));
    assert_eq!(holder_agents(&d, "pool").await, ["long", "next"]);
}

/// A holder whose presence lapses loses its hold, and only its own: a writer waiting behind two
/// readers still waits for the other.
#[tokio::test]
async fn a_lapsed_holder_releases_its_hold_only() {
    let d = Arc::new(Daemon::start().await);
    d.call(
        "register_agent",
        json!({"agent_id": "gone", "ttl_seconds": 1}),
    )
    .await;
    token(&lock(&d, "db", "gone", SHARED()).await);
    token(&lock(&d, "db", "stays", SHARED()).await);
    let writer = spawn_lock(&d, "db", "w", json!({"wait_seconds": 40}));
    within(20, async {
        while holder_agents(&d, "db").await != ["stays"] {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(!writer.is_finished(), "the other reader still holds");
    d.call("unregister_agent", json!({"agent_id": "stays"}))
        .await;
    token(&within(20, writer).await.unwrap());
    assert_eq!(holder_agents(&d, "db").await, ["w"]);
}

#[tokio::test]
async fn lock_resources_takes_each_name_in_its_own_mode() {
    let d = Arc::new(Daemon::start().await);
    let a = d
        .call(
            "lock_resources",
            json!({"names": [{"name": "cfg", "shared": true}, "out-a"], "agent_id": "a"}),
        )
        .await;
    assert_eq!(a["locked"], json!(true), "{a}");
    let b = d
        .call(
            "lock_resources",
            json!({"names": ["out-b", {"name": "cfg", "shared": true}], "agent_id": "b"}),
        )
        .await;
    assert_eq!(b["locked"], json!(true), "{b}");
    assert_ne!(a["fences"]["cfg"], b["fences"]["cfg"]);
    assert_eq!(holder_agents(&d, "cfg").await, ["a", "b"]);
    assert_eq!(holders(&d, "out-a").await[0]["mode"], "exclusive");
    // An exclusive claim on cfg waits for both readers.
    let c = d
        .call(
            "lock_resources",
            json!({"names": ["cfg", "out-c"], "agent_id": "c"}),
        )
        .await;
    assert_eq!(
        (c["locked"].clone(), c["contended"].clone()),
        (json!(false), json!("cfg"))
    );
    // Bad items name their place.
    let e = d
        .call_err(
            "lock_resources",
            json!({"names": [{"name": "q", "shared": "maybe"}], "agent_id": "a"}),
        )
        .await;
    assert!(e.contains("names[0].shared: must be true or false"), "{e}");
    let e = d
        .call_err(
            "lock_resources",
            json!({"names": ["p", {"name": "q", "limit": 0}], "agent_id": "a"}),
        )
        .await;
    assert!(
        e.contains("names[1].limit: must be between 1 and 1000"),
        "{e}"
    );
    let e = d
        .call_err("lock_resources", json!({"names": [7], "agent_id": "a"}))
        .await;
    assert!(
        e.contains("names[0]: must be a string or a {name, shared, limit} object"),
        "{e}"
    );
}

/// `airlock run --shared` runs two commands together on one lock; `--limit 1` runs them one
/// after the other.
#[tokio::test]
async fn airlock_run_shared_and_limit() {
    let d = Daemon::start().await;
    let run = |args: &[&str]| {
        d.cli(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let script = "echo started; read _";
    let mut first = run(&["run", "--lock", "db", "--shared", "--", "sh", "-c", script]);
    let mut second = run(&["run", "--lock", "db", "--shared", "--", "sh", "-c", script]);
    for child in [&mut first, &mut second] {
        let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
        let line = within(30, out.next_line()).await.unwrap();
        assert_eq!(line.as_deref(), Some("started"), "both run at once");
    }
    let rows = holders(&d, "db").await;
    assert_eq!(rows.len(), 2);
    assert!(rows.iter().all(|l| l["mode"] == "shared"));
    for mut child in [first, second] {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(b"go\n")
            .await
            .unwrap();
        assert_eq!(within(30, child.wait()).await.unwrap().code(), Some(0));
    }
    assert!(holders(&d, "db").await.is_empty());

    let mut first = run(&[
        "run", "--lock", "one", "--limit", "1", "--", "sh", "-c", script,
    ]);
    let mut out = BufReader::new(first.stdout.take().unwrap()).lines();
    assert_eq!(
        within(30, out.next_line()).await.unwrap().as_deref(),
        Some("started")
    );
    let mut second = run(&[
        "run",
        "--lock",
        "one",
        "--limit",
        "1",
        "--",
        "sh",
        "-c",
        "echo second",
    ]);
    until_waiters(&d, "one", 1).await;
    assert_eq!(holders(&d, "one").await[0]["limit"], 1);
    first
        .stdin
        .take()
        .unwrap()
        .write_all(b"go\n")
        .await
        .unwrap();
    assert_eq!(within(30, first.wait()).await.unwrap().code(), Some(0));
    let mut out2 = BufReader::new(second.stdout.take().unwrap()).lines();
    assert_eq!(
        within(30, out2.next_line()).await.unwrap().as_deref(),
        Some("second")
    );
    assert_eq!(within(30, second.wait()).await.unwrap().code(), Some(0));

    // A bad limit is a usage error before anything is sent.
    let bad = within(
        30,
        tokio::process::Command::new(airlock_bin())
            .args(["run", "--lock", "z", "--limit", "0", "--", "true"])
            .env("AIRLOCK_URL", &d.url)
            .env("AIRLOCK_HOME", &d.home)
            .output(),
    )
    .await
    .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("--limit: must be between 1 and 1000"),
        "{bad:?}"
    );
}
