//! The edge answers the curl recipe's plain `tools/call` itself (for speed, see BENCHMARKS.md),
//! and so it does for MCP clients of the 2025 protocol era, which only add `MCP-Protocol-Version`
//! and `Mcp-Session-Id`. Anything else goes through rmcp. Every path must give the same answer,
//! headers the edge does not take are judged by rmcp exactly as before, and a plain caller that
//! goes away must leave its line like any other.

mod common;

use std::time::Duration;

use common::{within, Daemon};
use serde_json::{json, Value};

/// How a request is sent.
#[derive(Clone, Copy, Debug)]
enum Via {
    /// The curl recipe: no `Mcp-*` header.
    Plain,
    /// As an MCP client of the 2025 era: `MCP-Protocol-Version` and `Mcp-Session-Id`.
    Mcp2025(&'static str),
    /// With `params._meta` (empty), which only rmcp reads: the reference answer.
    Rmcp,
}

/// POSTs `body` as `via` says, with `extra` headers, and returns (status, raw body).
async fn send(d: &Daemon, body: &Value, via: Via, extra: &[(&str, &str)]) -> (u16, String) {
    let mut body = body.clone();
    let mut req = d
        .http
        .post(&d.url)
        .header("Content-Type", "application/json")
        .bearer_auth(&d.token);
    match via {
        Via::Plain => {}
        Via::Mcp2025(version) => {
            req = req
                .header("MCP-Protocol-Version", version)
                .header("Mcp-Session-Id", "a-session-the-daemon-never-issued");
        }
        Via::Rmcp => {
            body["params"]["_meta"] = json!({});
        }
    }
    for (name, value) in extra {
        req = req.header(*name, *value);
    }
    let r = req.body(body.to_string()).send().await.expect("send");
    (r.status().as_u16(), r.text().await.expect("body"))
}

async fn post(d: &Daemon, body: &Value, via: Via) -> (u16, String) {
    send(d, body, via, &[]).await
}

/// Every MCP protocol version of the 2025 era (and the one before it) rmcp knows.
const VERSIONS_2025: [&str; 4] = ["2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"];

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
        json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
               "params": {"name": "list_locks", "arguments": {"limit": 1}}}),
    ];
    for call in &calls {
        let reference = post(&d, call, Via::Rmcp).await;
        assert_eq!(
            post(&d, call, Via::Plain).await,
            reference,
            "plain, for {call}"
        );
        for version in VERSIONS_2025 {
            let mcp = post(&d, call, Via::Mcp2025(version)).await;
            assert_eq!(mcp, reference, "MCP {version}, for {call}");
        }
    }
    // Not read-only, so compare the shape: same counter, consecutive values.
    let inc = json!({"jsonrpc": "2.0", "id": 8, "method": "tools/call",
                     "params": {"name": "increment_counter", "arguments": {"name": "n"}}});
    let mut seen = Vec::new();
    for via in [Via::Rmcp, Via::Plain, Via::Mcp2025("2025-06-18")] {
        let (status, body) = post(&d, &inc, via).await;
        assert_eq!(status, 200);
        seen.push(body);
    }
    for (i, body) in seen.iter().enumerate() {
        assert_eq!(
            body,
            &seen[0].replace(":1", &format!(":{}", i + 1)),
            "{seen:?}"
        );
    }
}

/// Headers the fast path does not take are judged by rmcp, as before it was widened.
#[tokio::test]
async fn headers_the_edge_does_not_take_are_judged_as_before() {
    let d = Daemon::start().await;
    let call = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                      "params": {"name": "get_note", "arguments": {"key": "k"}}});
    // An unknown version: rmcp's 400.
    let (status, body) = send(
        &d,
        &call,
        Via::Plain,
        &[("MCP-Protocol-Version", "1999-01-01")],
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("Unsupported MCP-Protocol-Version"), "{body}");
    // Nor is one spelled differently.
    let (status, _) = send(
        &d,
        &call,
        Via::Plain,
        &[("MCP-Protocol-Version", "2025-6-18")],
    )
    .await;
    assert_eq!(status, 400);
    // The 2026-07-28 era: rmcp requires its standard headers and the request's `_meta`.
    let (status, body) = send(
        &d,
        &call,
        Via::Plain,
        &[("MCP-Protocol-Version", "2026-07-28")],
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("Mcp-Method") && !body.contains("\"result\""),
        "{body}"
    );
    // Two versions: not taken by the edge; rmcp reads the first, as before.
    let twice = [
        ("MCP-Protocol-Version", "1999-01-01"),
        ("MCP-Protocol-Version", "2025-06-18"),
    ];
    let (status, body) = send(&d, &call, Via::Plain, &twice).await;
    assert_eq!(status, 400, "{body}");
    // A long Mcp-* header is refused by the edge, whatever the path.
    let long = "x".repeat(65);
    let (status, body) = send(
        &d,
        &call,
        Via::Mcp2025("2025-06-18"),
        &[("Mcp-Session-Id", &long)],
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("at most 64"), "{body}");
    // Another Mcp-* header (a SEP-2243 standard header) goes to rmcp, which ignores it for a
    // 2025 version: the answer is the reference one.
    let reference = post(&d, &call, Via::Rmcp).await;
    let with_method = send(
        &d,
        &call,
        Via::Mcp2025("2025-06-18"),
        &[("Mcp-Method", "tools/call")],
    )
    .await;
    assert_eq!(with_method, reference);
}

/// The official rmcp client (which negotiates a 2025-era version and sends it on every call)
/// gets the answers a plain caller gets.
#[tokio::test]
async fn an_rmcp_client_gets_the_plain_answers() {
    use rmcp::model::CallToolRequestParams;
    use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
    use rmcp::transport::StreamableHttpClientTransport;
    use rmcp::ServiceExt;

    let d = Daemon::start().await;
    let cfg =
        StreamableHttpClientTransportConfig::with_uri(d.url.clone()).auth_header(d.token.clone());
    let client = within(
        30,
        ().serve(StreamableHttpClientTransport::from_config(cfg)),
    )
    .await
    .expect("initialize");
    let call = |name: &'static str, args: Value| {
        CallToolRequestParams::new(name).with_arguments(args.as_object().unwrap().clone())
    };
    let r = within(
        30,
        client.call_tool(call("set_note", json!({"key": "k", "value": "v"}))),
    )
    .await
    .unwrap();
    assert_eq!(r.is_error, Some(false));
    let r = within(
        30,
        client.call_tool(call("lock_resource", json!({"name": "L", "agent_id": "a"}))),
    )
    .await
    .unwrap();
    let grant = r.structured_content.clone().expect("structured");
    assert_eq!(grant["locked"], json!(true), "{grant}");
    // The lock the rmcp client took is the one a plain caller sees.
    let locks = d.call("list_locks", json!({})).await;
    assert_eq!(locks[0]["name"], json!("L"));
    assert_eq!(locks[0]["fence"], grant["fence"]);
    // A tool error reads the same both ways.
    let r = within(30, client.call_tool(call("get_note", json!({"key": ""}))))
        .await
        .unwrap();
    assert_eq!(r.is_error, Some(true));
    let plain = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                       "params": {"name": "get_note", "arguments": {"key": ""}}});
    let (_, body) = post(&d, &plain, Via::Plain).await;
    let plain: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        serde_json::to_value(&r).unwrap(),
        plain["result"],
        "rmcp client {r:?} vs plain {plain}"
    );
    let _ = client.cancel().await;
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
    let gives_up = tokio::time::timeout(Duration::from_millis(300), post(&d, &body, Via::Plain));
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
