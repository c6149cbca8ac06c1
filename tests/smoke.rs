mod common;

use common::Daemon;
use serde_json::json;

#[tokio::test]
async fn a_lock_round_trip_through_the_real_daemon() {
    let d = Daemon::start().await;
    let got = d
        .call("lock_resource", json!({"name": "x", "agent_id": "a"}))
        .await;
    assert_eq!(got["locked"], json!(true));
    let released = d
        .call(
            "unlock_resource",
            json!({"name": "x", "lock_token": got["lock_token"]}),
        )
        .await;
    assert_eq!(released, json!({"released": true}));
}

/// The kit finds the binary Cargo built for this test (it runs the real daemon, never a stale
/// or another build), and a daemon's fresh home goes with it.
#[tokio::test]
async fn the_harness_runs_this_builds_daemon_and_cleans_up_its_home() {
    assert_eq!(
        common::airlock_bin().canonicalize().unwrap(),
        std::path::Path::new(env!("CARGO_BIN_EXE_airlock"))
            .canonicalize()
            .unwrap()
    );
    let d = Daemon::start().await;
    let home = d.home.clone();
    assert!(home.join("token").exists());
    drop(d);
    assert!(!home.exists(), "{} is left behind", home.display());
}

/// The harness's way to put several daemons on one PostgreSQL database (`Daemon::start_on`):
/// what one writes, the other reads.
#[tokio::test]
async fn two_daemons_started_on_one_database_share_it() {
    if common::skip_without_postgres("two_daemons_started_on_one_database_share_it") {
        return;
    }
    let url = common::fresh_database()
        .await
        .expect("a server is configured");
    let a = Daemon::start_on(&url).await;
    let b = Daemon::start_on(&url).await;
    assert_ne!(a.home, b.home);
    a.call("set_note", json!({"key": "k", "value": "from a"}))
        .await;
    assert_eq!(
        b.call("get_note", json!({"key": "k"})).await["value"],
        json!("from a")
    );
    assert_eq!(
        b.call("increment_counter", json!({"name": "c"})).await,
        json!({"value": 1})
    );
    assert_eq!(
        a.call("increment_counter", json!({"name": "c"})).await,
        json!({"value": 2})
    );
}
