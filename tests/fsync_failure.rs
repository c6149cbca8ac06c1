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

/// Makes every fsync fail from now on, and checks that a write is not answered.
async fn fail_the_next_fsync(rpc: &common::Rpc, marker: &std::path::Path) {
    std::fs::write(marker, "").unwrap();
    let lost = rpc
        .call("set_note", json!({"key": "after", "value": "not durable"}))
        .await;
    assert!(
        lost.is_err(),
        "answered although its fsync failed: {lost:?}"
    );
}

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

    fail_the_next_fsync(&rpc, &marker).await;
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

/// The same with a stderr that nobody reads and that is already full: the daemon still stops
/// with its status (its last words are queued or dropped, never waited on forever).
#[tokio::test]
async fn a_failed_fsync_stops_the_daemon_even_when_nobody_reads_its_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("fail-the-next-fsync");
    let mut d = Daemon::serve()
        .home(&dir.path().join("home"))
        .env("AIRLOCK_TEST_FSYNC_FAIL_IF", &marker)
        .log(common::Log::Unread)
        // Every grant and release logged.
        .rust_log("info")
        .start()
        .await;
    let rpc = d.rpc_client();
    // Lines of about 600 bytes: enough to fill the pipe's 64 KiB several times.
    let name = format!("log/{}", "x".repeat(480));
    for _ in 0..300 {
        rpc.call("lock_resource", json!({"name": name, "agent_id": "a"}))
            .await
            .expect("lock");
        rpc.call("unlock_resource", json!({"name": name, "agent_id": "a"}))
            .await
            .expect("unlock");
    }
    fail_the_next_fsync(&rpc, &marker).await;
    let mut child = d.process.take_child().expect("still ours");
    let waited = tokio::task::spawn_blocking(move || {
        for _ in 0..600 {
            if let Some(status) = child.try_wait().expect("wait") {
                return Some(status);
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let _ = child.kill();
        None
    })
    .await
    .unwrap();
    let status = waited.expect("the daemon did not stop within 30 s of the failed fsync");
    assert_eq!(
        status.code(),
        Some(airlock::core::engine::EXIT_SYNC_FAILED),
        "{status:?}"
    );
}
