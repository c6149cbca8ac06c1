//! A failed fsync of the SQLite WAL stops the daemon. Commits are pipelined (the engine goes on
//! with the next batch while the last one is synced), so later batches may be built on state
//! that never reached the disk: the daemon answers nothing more and exits with its own status,
//! and what it acknowledged before is there after a restart.
//!
//! The failure is injected through `AIRLOCK_TEST_FSYNC_FAIL_IF` (every WAL sync fails once the
//! file it names exists), which only debug builds, those the tests run, accept. SQLite's file
//! whatever the backend under test.

mod common;

use common::Daemon;
use serde_json::json;

#[tokio::test]
async fn a_failed_fsync_stops_the_daemon_and_answers_nothing_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let marker = dir.path().join("fail-the-next-fsync");
    let mut d = Daemon::serve()
        .home(&home)
        .env("AIRLOCK_TEST_FSYNC_FAIL_IF", &marker)
        .start()
        .await;
    let rpc = d.rpc_client();
    rpc.call("set_note", json!({"key": "before", "value": "kept"}))
        .await
        .expect("answered while the fsyncs succeed");

    std::fs::write(&marker, "").unwrap();
    let lost = rpc
        .call("set_note", json!({"key": "after", "value": "not durable"}))
        .await;
    assert!(
        lost.is_err(),
        "answered although its fsync failed: {lost:?}"
    );
    let status = d
        .process
        .take_child()
        .expect("still ours")
        .wait()
        .expect("wait for the daemon");
    assert_eq!(
        status.code(),
        Some(airlock::core::engine::EXIT_SYNC_FAILED),
        "the daemon should stop with its fsync-failure status: {status:?}"
    );
    drop(d);

    // Without the fault, on the same file: the acknowledged write survived.
    let d = Daemon::serve().home(&home).start().await;
    let got = d.call("get_note", json!({"key": "before"})).await;
    assert_eq!(got["value"], json!("kept"), "{got}");
}
