//! Issue 17, the audit history: every grant, renewal, release (and why), task change and signal
//! is recorded, read back through `get_history` and `airlock history` with filters and pages, and
//! kept within its retention. Through the real binary, on the backend the run selects.
mod common;

use std::time::Duration;

use common::Daemon;
use serde_json::{json, Value};

/// The whole history, newest first (every page).
async fn all(d: &Daemon, filter: Value) -> Vec<Value> {
    let mut out = Vec::new();
    let mut args = filter;
    args["limit"] = json!(1000);
    loop {
        let page = d.call("get_history", args.clone()).await;
        out.extend(page["items"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            Some(c) => args["cursor"] = json!(c),
            None => return out,
        }
    }
}

/// (kind, name, agent, reason) of each entry, oldest first: the story as it happened.
fn story(entries: &[Value]) -> Vec<(String, String, String, String)> {
    let text = |e: &Value, k: &str| e[k].as_str().unwrap_or("").to_string();
    entries
        .iter()
        .rev()
        .map(|e| {
            (
                text(e, "kind"),
                text(e, "name"),
                text(e, "agent_id"),
                text(e, "reason"),
            )
        })
        .collect()
}

fn s(kind: &str, name: &str, agent: &str, reason: &str) -> (String, String, String, String) {
    (kind.into(), name.into(), agent.into(), reason.into())
}

/// Waits until the history has `n` entries matching `filter` (deadlines fire in the daemon).
async fn until_entries(d: &Daemon, filter: Value, n: usize) -> Vec<Value> {
    common::within(30, async {
        loop {
            let got = all(d, filter.clone()).await;
            if got.len() >= n {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
}

#[tokio::test]
async fn every_grant_renewal_and_release_is_recorded_with_its_reason() {
    let d = Daemon::start().await;
    let lock = |name: &str, agent: &str, ttl: i64| json!({"name": name, "agent_id": agent, "ttl_seconds": ttl});
    // unlock
    let a = d.call("lock_resource", lock("l1", "alpha", 60)).await;
    d.call("lock_resource", lock("l1", "alpha", 60)).await; // taken again: a renewal
    d.call(
        "renew_lock",
        json!({"name": "l1", "lock_token": a["lock_token"]}),
    )
    .await;
    d.call(
        "unlock_resource",
        json!({"name": "l1", "lock_token": a["lock_token"]}),
    )
    .await;
    // ttl
    d.call("lock_resource", lock("l2", "beta", 1)).await;
    until_entries(&d, json!({"name": "l2", "kind": "release"}), 1).await;
    // presence lapse
    d.call(
        "register_agent",
        json!({"agent_id": "gamma", "ttl_seconds": 1}),
    )
    .await;
    d.call("lock_resource", lock("l3", "gamma", 600)).await;
    until_entries(&d, json!({"name": "l3", "kind": "release"}), 1).await;
    // shutdown: the agent unregisters
    d.call(
        "register_agent",
        json!({"agent_id": "delta", "ttl_seconds": 600}),
    )
    .await;
    d.call("lock_resource", lock("l4", "delta", 600)).await;
    d.call("unregister_agent", json!({"agent_id": "delta"}))
        .await;

    let entries = all(&d, json!({})).await;
    assert_eq!(
        story(&entries),
        [
            s("grant", "l1", "alpha", ""),
            s("renew", "l1", "alpha", ""),
            s("renew", "l1", "alpha", ""),
            s("release", "l1", "alpha", "unlock"),
            s("grant", "l2", "beta", ""),
            s("release", "l2", "beta", "ttl"),
            s("grant", "l3", "gamma", ""),
            s("release", "l3", "gamma", "presence_lapse"),
            s("grant", "l4", "delta", ""),
            s("release", "l4", "delta", "shutdown"),
        ]
    );
    // Each lock entry carries the hold's fence; each has an id and an RFC 3339 time.
    for e in &entries {
        assert_eq!(e["fence"], json!(1), "{e}");
        assert!(e["id"].as_i64().unwrap() > 0);
        let at = e["at"].as_str().unwrap();
        assert!(at.ends_with('Z') && at.len() == 24, "{at}");
    }
    // Newest first, ids decreasing.
    let ids: Vec<i64> = entries.iter().map(|e| e["id"].as_i64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "{ids:?}");
}

#[tokio::test]
async fn a_handoff_records_the_release_and_the_waiters_grant() {
    let d = std::sync::Arc::new(Daemon::start().await);
    let a = d
        .call("lock_resource", json!({"name": "x", "agent_id": "a"}))
        .await;
    let waiter = common::spawn_lock(&d, "x", "b", json!({"wait_seconds": 30}));
    common::until_waiters(&d, "x", 1).await;
    d.call(
        "unlock_resource",
        json!({"name": "x", "lock_token": a["lock_token"]}),
    )
    .await;
    let got = common::within(30, waiter).await.unwrap();
    let entries = all(&d, json!({"name": "x"})).await;
    assert_eq!(
        story(&entries),
        [
            s("grant", "x", "a", ""),
            s("release", "x", "a", "unlock"),
            s("grant", "x", "b", ""),
        ]
    );
    // The waiter's grant carries the fence it was answered with.
    assert_eq!(entries[0]["fence"], got["fence"]);
}

#[tokio::test]
async fn task_changes_and_signals_are_recorded() {
    let d = Daemon::start().await;
    let push = |payload: &str, extra: Value| {
        let mut a = json!({"queue": "q", "payload": payload, "author": "boss"});
        a.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        a
    };
    let claim = json!({"queue": "q", "agent_id": "w", "lease_seconds": 60});
    // complete, with an extension
    let t1 = d.call("push_task", push("one", json!({}))).await["id"].clone();
    let c = d.call("claim_next_task", claim.clone()).await;
    d.call(
        "extend_lease",
        json!({"id": t1, "lease_token": c["lease_token"]}),
    )
    .await;
    d.call(
        "complete_task",
        json!({"id": t1, "lease_token": c["lease_token"]}),
    )
    .await;
    // fail and requeue, then fail for good
    let t2 = d.call("push_task", push("two", json!({}))).await["id"].clone();
    let c = d.call("claim_next_task", claim.clone()).await;
    d.call(
        "fail_task",
        json!({"id": t2, "lease_token": c["lease_token"], "error": "flaky"}),
    )
    .await;
    let c = d.call("claim_next_task", claim.clone()).await;
    d.call(
        "fail_task",
        json!({"id": t2, "lease_token": c["lease_token"], "requeue": false, "error": "broken"}),
    )
    .await;
    // one attempt only: dead, then retried
    let t3 = d
        .call("push_task", push("three", json!({"max_attempts": 1})))
        .await["id"]
        .clone();
    let c = d.call("claim_next_task", claim.clone()).await;
    d.call(
        "fail_task",
        json!({"id": t3, "lease_token": c["lease_token"]}),
    )
    .await;
    d.call("retry_task", json!({"id": t3})).await;
    // a lease that runs out: its one attempt used, the task is dead again
    let c = d
        .call(
            "claim_next_task",
            json!({"queue": "q", "agent_id": "slow", "lease_seconds": 1}),
        )
        .await;
    assert_eq!(c["id"], t3);
    until_entries(&d, json!({"kind": "dead", "agent_id": "slow"}), 1).await;
    // events
    d.call("signal_event", json!({"name": "go"})).await;
    d.call("signal_event", json!({"name": "go"})).await;
    d.call("clear_event", json!({"name": "go"})).await;

    let entries = all(&d, json!({})).await;
    assert_eq!(
        story(&entries),
        [
            s("push", "q", "boss", ""),
            s("claim", "q", "w", ""),
            s("extend", "q", "w", ""),
            s("complete", "q", "w", ""),
            s("push", "q", "boss", ""),
            s("claim", "q", "w", ""),
            s("requeue", "q", "w", "failed"),
            s("claim", "q", "w", ""),
            s("fail", "q", "w", ""),
            s("push", "q", "boss", ""),
            s("claim", "q", "w", ""),
            s("dead", "q", "w", "failed"),
            s("retry", "q", "", ""),
            s("claim", "q", "slow", ""),
            s("dead", "q", "slow", "ttl"),
            s("signal", "go", "", ""),
            s("signal", "go", "", ""),
            s("clear", "go", "", ""),
        ]
    );
    let oldest_first: Vec<&Value> = entries.iter().rev().collect();
    // Task entries carry the task's id; errors where an attempt said one.
    assert_eq!(oldest_first[0]["task_id"], t1);
    assert_eq!(oldest_first[6]["task_id"], t2);
    assert_eq!(oldest_first[6]["error"], json!("flaky"));
    assert_eq!(oldest_first[8]["error"], json!("broken"));
    assert_eq!(oldest_first[11]["task_id"], t3);
    assert!(
        oldest_first[14].get("error").is_none(),
        "a lapse says only its reason"
    );
    // Events carry their generation.
    let gens: Vec<&Value> = oldest_first[15..]
        .iter()
        .map(|e| &e["generation"])
        .collect();
    assert_eq!(gens, [&json!(1), &json!(2), &json!(2)]);
}

#[tokio::test]
async fn filters_pages_and_bad_arguments() {
    let d = Daemon::start().await;
    for i in 0..5 {
        for (name, agent) in [("a", "x"), ("b", "y")] {
            let l = d
                .call("lock_resource", json!({"name": name, "agent_id": agent}))
                .await;
            d.call(
                "unlock_resource",
                json!({"name": name, "lock_token": l["lock_token"]}),
            )
            .await;
        }
        assert!(i < 5);
    }
    assert_eq!(all(&d, json!({})).await.len(), 20);
    assert_eq!(all(&d, json!({"name": "a"})).await.len(), 10);
    assert_eq!(all(&d, json!({"agent_id": "y"})).await.len(), 10);
    assert_eq!(
        all(&d, json!({"agent_id": "y", "kind": "grant"}))
            .await
            .len(),
        5
    );
    assert_eq!(all(&d, json!({"since": "1h"})).await.len(), 20);
    assert!(all(&d, json!({"since": "2999-01-01T00:00:00Z"}))
        .await
        .is_empty());
    assert_eq!(
        all(&d, json!({"since": "2000-01-01T00:00:00Z"}))
            .await
            .len(),
        20
    );
    // `since` an entry's own time includes it.
    let newest = all(&d, json!({})).await[0].clone();
    let from = all(&d, json!({"since": newest["at"]})).await;
    assert!(from.iter().any(|e| e["id"] == newest["id"]));

    // Pages of 3: every entry once, newest first, the last page without a cursor.
    let mut seen = Vec::new();
    let mut args = json!({"limit": 3});
    loop {
        let page = d.call("get_history", args.clone()).await;
        let items = page["items"].as_array().unwrap();
        assert!(items.len() <= 3);
        seen.extend(items.iter().map(|e| e["id"].as_i64().unwrap()));
        match page["next_cursor"].as_str() {
            Some(c) => args["cursor"] = json!(c),
            None => break,
        }
    }
    assert_eq!(seen.len(), 20);
    assert!(seen.windows(2).all(|w| w[0] > w[1]), "{seen:?}");
    // The default page is 100 entries.
    assert_eq!(
        d.call("get_history", json!({})).await["items"]
            .as_array()
            .unwrap()
            .len(),
        20
    );

    for (args, field) in [
        (json!({"kind": "stolen"}), "kind"),
        (json!({"since": "last tuesday"}), "since"),
        (json!({"since": "400d"}), "since"),
        (json!({"limit": 0}), "limit"),
        (json!({"limit": 1001}), "limit"),
        (json!({"cursor": "abc"}), "cursor"),
        (json!({"cursor": "-4"}), "cursor"),
        (json!({"name": ""}), "name"),
        (json!({"agent_id": "a\u{7}b"}), "agent_id"),
    ] {
        let e = d.call_err("get_history", args.clone()).await;
        assert!(e.contains(field), "{args}: {e}");
    }
}

#[tokio::test]
async fn retention_keeps_the_newest_entries_and_drops_old_ones() {
    // By count: at most 10 kept, the newest.
    let d = Daemon::serve()
        .selected_backend()
        .env("AIRLOCK_HISTORY_MAX_ENTRIES", "10")
        .start()
        .await;
    for i in 0..15 {
        let l = d
            .call(
                "lock_resource",
                json!({"name": format!("n{i}"), "agent_id": "a"}),
            )
            .await;
        d.call(
            "unlock_resource",
            json!({"name": format!("n{i}"), "lock_token": l["lock_token"]}),
        )
        .await;
    }
    let kept = all(&d, json!({})).await;
    assert_eq!(kept.len(), 10, "{kept:?}");
    assert_eq!(kept[0]["name"], "n14");
    assert_eq!(kept[0]["kind"], "release");
    assert_eq!(kept[9]["name"], "n10");
    assert_eq!(kept[9]["kind"], "grant");

    // By age: entries older than 1 s go (pruned as new ones are written).
    let d = Daemon::serve()
        .selected_backend()
        .env("AIRLOCK_HISTORY_MAX_AGE_SECONDS", "1")
        .env("AIRLOCK_HISTORY_MAX_ENTRIES", "50")
        .start()
        .await;
    d.call("signal_event", json!({"name": "old"})).await;
    d.call("signal_event", json!({"name": "old"})).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    d.call("signal_event", json!({"name": "new"})).await;
    let kept = all(&d, json!({})).await;
    assert_eq!(story(&kept), [s("signal", "new", "", "")]);
}

#[tokio::test]
async fn bad_retention_settings_stop_the_start() {
    for (key, value) in [
        ("AIRLOCK_HISTORY_MAX_ENTRIES", "0"),
        ("AIRLOCK_HISTORY_MAX_ENTRIES", "lots"),
        ("AIRLOCK_HISTORY_MAX_AGE_SECONDS", "0"),
        ("AIRLOCK_HISTORY_MAX_AGE_SECONDS", "99999999999"),
    ] {
        let out = Daemon::serve().env(key, value).refused().await;
        let err = String::from_utf8_lossy(&out.stderr);
        assert_ne!(out.status.code(), Some(0));
        assert!(err.contains(key), "{key}={value}: {err}");
    }
}

#[tokio::test]
async fn airlock_history_prints_one_line_per_entry() {
    let d = Daemon::start().await;
    let l = d
        .call(
            "lock_resource",
            json!({"name": "build", "agent_id": "alpha"}),
        )
        .await;
    d.call(
        "unlock_resource",
        json!({"name": "build", "lock_token": l["lock_token"]}),
    )
    .await;
    d.call("signal_event", json!({"name": "go"})).await;
    let run = |args: &[&str]| {
        let mut c = d.cli(["history"]);
        c.args(args);
        async move {
            let out = c.output().await.unwrap();
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stdout).to_string(),
                String::from_utf8_lossy(&out.stderr).to_string(),
            )
        }
    };
    let (code, out, _) = run(&["--name", "build"]).await;
    assert_eq!(code, Some(0));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(lines[0].contains("release") && lines[0].contains("alpha"));
    assert!(lines[0].ends_with("fence 1  reason unlock"), "{out}");
    assert!(lines[1].contains("grant"), "{out}");
    let (_, out, _) = run(&["--limit", "1"]).await;
    assert!(out.contains("signal") && out.contains("--cursor"), "{out}");
    let (code, out, _) = run(&[
        "--agent", "alpha", "--kind", "grant", "--since", "5m", "--json",
    ])
    .await;
    assert_eq!(code, Some(0));
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["items"].as_array().unwrap().len(), 1);
    let (code, _, err) = run(&["--since", "soon"]).await;
    assert_eq!(code, Some(2), "a bad argument is a usage error");
    assert!(err.contains("since"), "{err}");
}
