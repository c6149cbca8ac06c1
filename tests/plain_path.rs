//! The edge answers the curl recipe's plain `tools/call` itself (for speed, see BENCHMARKS.md);
//! an MCP client's request (with `MCP-Protocol-Version`) goes through rmcp. Both must give the
//! same answer, and a plain caller that goes away must leave its line like any other.

mod common;

use std::time::Duration;

use common::{within, Daemon};
use serde_json::{json, Value};

/// POSTs `body`, optionally as an MCP client would, and returns (status, raw body).
async fn post(d: &Daemon, body: &Value, as_mcp_client: bool) -> (u16, String) {
    let mut req = d
        .http
        .post(&d.url)
        .header("Content-Type", "application/json")
        .bearer_auth(&d.token);
    if as_mcp_client {
        req = req.header("MCP-Protocol-Version", "2025-06-18");
    }
    let r = req.body(body.to_string()).send().await.expect("send");
    (r.status().as_u16(), r.text().await.expect("body"))
}

#[tokio::test]
async fn plain_calls_answer_exactly_as_rmcp_does() {
    let d = Daemon::start().await;
    let calls = [
        json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
               "params": {"name": "set_note", "arguments": {"key": "k", "value": "v\"é<>"}}}),
        json!({"jsonrpc": "2.0", "id": "s-2", "method": "tools/call",
               "params": {"name": "get_note", "arguments": {"key": "k"}}}),
        json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call",
               "params": {"name": "list_notes"}}),
        json!({"jsonrpc": "2.0", "id": 4, "method": "tools/call",
               "params": {"name": "lock_resource", "arguments": {"name": ""}}}),
        json!({"jsonrpc": "2.0", "id": 5, "method": "tools/call",
               "params": {"name": "increment_counter", "arguments": {"name": "c", "by": 0, "x": 1}}}),
        json!({"jsonrpc": "2.0", "id": 6, "method": "tools/call",
               "params": {"name": "no_such_tool", "arguments": {}}}),
    ];
    for call in &calls {
        let plain = post(&d, call, false).await;
        let mcp = post(&d, call, true).await;
        assert_eq!(plain, mcp, "for {call}");
    }
    // Not read-only, so compare the shape: same counter, consecutive values.
    let inc = json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
                     "params": {"name": "increment_counter", "arguments": {"name": "n"}}});
    let (_, a) = post(&d, &inc, false).await;
    let (_, b) = post(&d, &inc, true).await;
    assert_eq!(a.replace("1", "2"), b, "plain {a} vs rmcp {b}");
}

#[tokio::test]
async fn a_plain_caller_that_goes_away_leaves_the_line() {
    let d = Daemon::start().await;
    d.call("lock_resource", json!({"name": "L", "agent_id": "holder"}))
        .await;
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                      "params": {"name": "lock_resource",
                                 "arguments": {"name": "L", "agent_id": "gone", "wait_seconds": 50}}});
    let waiters = || async {
        let locks = d.call("list_locks", json!({})).await;
        locks[0]["waiters"].as_u64().unwrap_or(0)
    };
    // The waiter parks, then its client gives up and closes the connection.
    let gives_up = tokio::time::timeout(Duration::from_millis(300), post(&d, &body, false));
    let waited = within(10, async {
        let (r, _) = tokio::join!(gives_up, async {
            while waiters().await == 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        r
    })
    .await;
    assert!(waited.is_err(), "the parked call was answered: {waited:?}");
    within(10, async {
        while waiters().await != 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}
