//! Lines of waiters and reservations, visible everywhere (`list_locks`, `GET /status`,
//! `airlock locks`, `airlock status`), and leaving a line at once (`leave_line`; the CLI and
//! `airlock run` do it when they give up), through the real binary.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// `airlock ARGS…` aimed at `d`; (exit code, stdout).
async fn airlock(d: &Daemon, args: &[&str]) -> (i32, String) {
    let out = within(60, d.cli(args).output()).await.expect("run airlock");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// Waits until `name`'s row (held or reserved) satisfies `want`; returns it.
async fn until_row(d: &Daemon, name: &str, want: impl Fn(&Value) -> bool) -> Value {
    within(30, async {
        loop {
            if let Some(row) = lock_row(d, name).await {
                if want(&row) {
                    return row;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

#[tokio::test]
async fn a_line_shows_who_waits_how_and_for_what_is_reserved() {
    let d = Arc::new(Daemon::start().await);
    let held = lock(&d, "build", "alpha", json!({})).await;
    let beta = spawn_lock(&d, "build", "beta", json!({"wait_seconds": 2}));
    until_waiters(&d, "build", 1).await;
    let gamma = spawn_lock(&d, "build", "gamma", json!({"wait_seconds": 40}));
    until_waiters(&d, "build", 2).await;
    let row = lock_row(&d, "build").await.unwrap();
    assert_eq!(row["agent_id"], "alpha");
    assert_eq!(row["fence"], held["fence"]);
    let line = row["line"].as_array().unwrap();
    assert_eq!(line.len(), 2, "{row}");
    assert_eq!(line[0]["agent_id"], "beta");
    assert_eq!(line[0]["position"], 1);
    assert_eq!(line[0]["state"], "parked");
    assert!(line[0]["seconds_left"].as_i64().unwrap() <= 2, "{row}");
    assert!(line[0]["waiting_seconds"].as_i64().unwrap() >= 0, "{row}");
    assert_eq!(line[1]["agent_id"], "gamma");
    assert_eq!(line[1]["position"], 2);

    // beta's window ends: its place is kept (grace) with a wake token.
    let timed_out = within(30, beta).await.unwrap();
    assert_eq!(timed_out["locked"], false);
    let wake = timed_out["wake_token"].as_str().unwrap().to_string();
    let row = until_row(&d, "build", |r| r["line"][0]["state"] == "grace").await;
    assert!(
        row["line"][0]["seconds_left"].as_i64().unwrap() <= 10,
        "{row}"
    );

    // alpha lets go: the lock is free but reserved for beta, everywhere.
    unlock(&d, "build", &token(&held)).await;
    let row = until_row(&d, "build", |r| r["agent_id"].is_null()).await;
    assert_eq!(row["reserved_for"], "beta", "{row}");
    let secs = row["reserved_for_seconds"].as_i64().unwrap();
    assert!((0..=10).contains(&secs), "{row}");
    assert!(
        row.get("fence").is_none(),
        "a free lock has no holder's fence: {row}"
    );
    assert_eq!(row["waiters"], 2, "{row}");
    let status = d.status().await;
    let in_status = status["locks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == "build")
        .unwrap();
    assert_eq!(in_status["reserved_for"], "beta");
    let (code, out) = airlock(&d, &["locks"]).await;
    assert_eq!(code, 0);
    assert!(out.contains("build\tfree, reserved for beta for "), "{out}");
    assert!(out.contains("1. beta  in grace (place kept)"), "{out}");
    assert!(out.contains("2. gamma  parked"), "{out}");
    let (code, out) = airlock(&d, &["status"]).await;
    assert_eq!(code, 0);
    assert!(out.contains("free, reserved for beta"), "{out}");

    // beta will not come back: it leaves, and gamma is granted at once (not after the grace).
    let left = d
        .call("leave_line", json!({"name": "build", "wake_token": wake}))
        .await;
    assert_eq!(left, json!({"left": true}));
    let granted = within(5, gamma).await.unwrap();
    assert_eq!(granted["locked"], true, "{granted}");
    let again = d
        .call("leave_line", json!({"name": "build", "wake_token": wake}))
        .await;
    assert_eq!(again["left"], false, "{again}");
    assert!(
        again["error"]
            .as_str()
            .unwrap()
            .contains("no place is kept"),
        "{again}"
    );
}

#[tokio::test]
async fn leave_line_refuses_what_it_cannot_do() {
    let d = Arc::new(Daemon::start().await);
    let held = lock(&d, "a", "alpha", json!({})).await;
    let r = lock(&d, "a", "beta", json!({"wait_seconds": 1})).await;
    let wake = r["wake_token"].as_str().unwrap().to_string();
    // Another lock's name: nothing changes.
    let other = d
        .call("leave_line", json!({"name": "b", "wake_token": wake}))
        .await;
    assert_eq!(other["left"], false, "{other}");
    assert_eq!(waiters(&d, "a").await, 1);
    // While a call waits on the place, it stays.
    let parked = spawn_lock(
        &d,
        "a",
        "beta",
        json!({"wait_seconds": 30, "wake_token": wake}),
    );
    until_row(&d, "a", |r| r["line"][0]["state"] == "parked").await;
    let busy = d
        .call("leave_line", json!({"name": "a", "wake_token": wake}))
        .await;
    assert_eq!(busy["left"], false, "{busy}");
    assert!(busy["error"]
        .as_str()
        .unwrap()
        .contains("waiting on this place"));
    unlock(&d, "a", &token(&held)).await;
    assert_eq!(within(30, parked).await.unwrap()["locked"], true);
    // Bad arguments name the field.
    let e = d
        .call_err("leave_line", json!({"name": "", "wake_token": "w"}))
        .await;
    assert!(e.contains("name"), "{e}");
    let e = d.call_err("leave_line", json!({"name": "a"})).await;
    assert!(e.contains("wake_token"), "{e}");
}

#[tokio::test]
async fn the_cli_and_run_leave_the_line_when_they_give_up() {
    let d = Daemon::start().await;
    let held = lock(&d, "build", "alpha", json!({})).await;
    let (code, _) = airlock(&d, &["lock", "build", "--agent", "other", "--wait", "1"]).await;
    assert_eq!(code, 1);
    assert_eq!(waiters(&d, "build").await, 0, "the CLI left its place");
    let (code, _) = airlock(
        &d,
        &[
            "run", "--lock", "build", "--agent", "runner", "--wait", "1", "--", "true",
        ],
    )
    .await;
    assert_eq!(code, 1);
    assert_eq!(waiters(&d, "build").await, 0, "airlock run left its place");
    // Freed, the lock is not reserved for anyone who gave up.
    unlock(&d, "build", &token(&held)).await;
    assert_eq!(lock_row(&d, "build").await, None);
    let (code, out) = airlock(&d, &["locks"]).await;
    assert_eq!((code, out.trim()), (0, "(none)"));
}

/// Grants and releases are logged at `info` (agent, lock, fence, and why it was released), and
/// the lock token never is.
#[tokio::test]
async fn grants_and_releases_are_logged_without_tokens() {
    let d = Daemon::serve()
        .selected_backend()
        .rust_log("info")
        .log(Log::Keep(&["granted", "released", "lk_"]))
        .start()
        .await;
    let got = lock(&d, "logged", "alpha", json!({})).await;
    let token = got["lock_token"].as_str().expect("a token").to_string();
    let r = d
        .call(
            "unlock_resource",
            json!({"name": "logged", "lock_token": token}),
        )
        .await;
    assert_eq!(r["released"], true, "{r}");
    within(30, async {
        while !d.process.logged("reason=unlock") {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let granted = d.process.log_lines("granted");
    assert!(
        granted
            .iter()
            .any(|l| l.contains("logged") && l.contains("alpha") && l.contains("fence")),
        "{granted:?}"
    );
    assert!(d
        .process
        .log_lines("reason=unlock")
        .iter()
        .any(|l| l.contains("released") && l.contains("alpha") && l.contains("fence")));
    assert!(!d.process.logged(&token), "a lock token reached the log");
}
