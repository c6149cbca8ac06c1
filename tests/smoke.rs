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
