//! One agent, one id: the stdio bridge gives each client its own id and keeps its presence, and
//! the daemon says so in its answer when one agent_id is used from two sources at once.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::{airlock_bin, within, Daemon};
use rmcp::model::CallToolRequestParams;
use rmcp::service::RunningService;
use rmcp::transport::{ConfigureCommandExt, TokioChildProcess};
use rmcp::{RoleClient, ServiceExt};
use serde_json::{json, Value};

/// A plain `tools/call` POST naming its source (or none); returns the tool's JSON answer.
async fn call_from(d: &Daemon, source: Option<&str>, tool: &str, args: Value, meta: bool) -> Value {
    let mut params = json!({"name": tool, "arguments": args});
    if meta {
        // With `_meta` the call goes through rmcp rather than the edge's plain path.
        params["_meta"] = json!({"progressToken": 7});
    }
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": params});
    let mut rb = d
        .http
        .post(&d.url)
        .header("Content-Type", "application/json")
        .header("Accept", "application/json, text/event-stream")
        .bearer_auth(&d.token)
        .body(body.to_string());
    if let Some(s) = source {
        rb = rb.header("X-Airlock-Source", s);
    }
    let text = rb.send().await.unwrap().text().await.unwrap();
    // A JSON body, or server-sent events whose last `data:` line is the answer.
    let answer = text
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .rfind(|l| l.contains("\"result\""))
        .map(str::trim)
        .unwrap_or(text.as_str())
        .to_string();
    let v: Value = serde_json::from_str(&answer).unwrap_or_else(|e| panic!("{e}: {text}"));
    let inner: Value =
        serde_json::from_str(v["result"]["content"][0]["text"].as_str().unwrap()).unwrap();
    if let Some(structured) = v["result"].get("structuredContent") {
        assert_eq!(structured, &inner, "text and structured content agree");
    }
    inner
}

#[tokio::test]
async fn one_agent_id_from_two_sources_at_once_is_flagged_in_the_answer() {
    let d = Daemon::start().await;
    for meta in [false, true] {
        let id = if meta { "claude-rmcp" } else { "claude" };
        let args = |name: &str| json!({"name": format!("{id}/{name}"), "agent_id": id});
        let a = call_from(&d, Some("session-one"), "lock_resource", args("x"), meta).await;
        assert_eq!(a["locked"], true);
        assert!(a.get("warning").is_none(), "{a}");
        let again = call_from(&d, Some("session-one"), "lock_resource", args("y"), meta).await;
        assert!(
            again.get("warning").is_none(),
            "one source is fine: {again}"
        );
        // A second client calling itself the same: it gets the lock (same holder!), and a warning.
        let b = call_from(&d, Some("session-two"), "lock_resource", args("x"), meta).await;
        assert_eq!(b["locked"], true, "{b}");
        assert_eq!(b["lock_token"], a["lock_token"]);
        let w = b["warning"]
            .as_str()
            .unwrap_or_else(|| panic!("no warning: {b}"));
        assert!(
            w.contains(&format!("\"{id}\"")) && w.contains("session-one"),
            "{w}"
        );
        // The first source hears it on its next call too.
        let a2 = call_from(&d, Some("session-one"), "renew_lock", args("x"), meta).await;
        assert!(
            a2["warning"]
                .as_str()
                .is_some_and(|w| w.contains("session-two")),
            "{a2}"
        );
    }
    // Calls that name no source are not tracked.
    let plain = call_from(
        &d,
        None,
        "lock_resource",
        json!({"name": "z", "agent_id": "claude"}),
        false,
    )
    .await;
    assert!(plain.get("warning").is_none(), "{plain}");
}

fn bridge(d: &Daemon) -> tokio::process::Command {
    let (url, home) = (d.url.clone(), d.home.clone());
    tokio::process::Command::new(airlock_bin()).configure(move |c| {
        c.arg("mcp")
            .env("AIRLOCK_URL", &url)
            .env("AIRLOCK_HOME", Path::new(&home))
            .env_remove("AIRLOCK_TOKEN")
            .env_remove("AIRLOCK_AGENT")
            .env("RUST_LOG", "warn");
    })
}

async fn start_bridge(d: &Daemon) -> RunningService<RoleClient, ()> {
    let child = TokioChildProcess::builder(bridge(d))
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
        .0;
    within(30, ().serve(child)).await.unwrap()
}

async fn tool(c: &RunningService<RoleClient, ()>, name: &'static str, args: Value) -> Value {
    let p = CallToolRequestParams::new(name).with_arguments(args.as_object().unwrap().clone());
    let r = within(60, c.peer().call_tool(p)).await.unwrap();
    assert_ne!(r.is_error, Some(true), "{r:?}");
    let v = serde_json::to_value(&r).unwrap();
    serde_json::from_str(v["content"][0]["text"].as_str().unwrap()).unwrap()
}

fn holder(locks: &Value, name: &str) -> Option<String> {
    locks
        .as_array()?
        .iter()
        .find(|l| l["name"] == json!(name))
        .and_then(|l| l["agent_id"].as_str().map(str::to_string))
}

#[tokio::test]
async fn each_stdio_bridge_is_its_own_agent_with_presence_while_it_runs() {
    let d = Daemon::start().await;
    let one = start_bridge(&d).await;
    let two = start_bridge(&d).await;

    // agent_id is optional through the bridge.
    let tools = within(30, one.list_tools(None)).await.unwrap();
    let lock = tools
        .tools
        .iter()
        .find(|t| t.name == "lock_resource")
        .unwrap();
    let required = lock
        .input_schema
        .get("required")
        .cloned()
        .unwrap_or(json!([]));
    assert!(!required.to_string().contains("agent_id"), "{required}");
    assert!(required.to_string().contains("name"), "{required}");

    // Two clients that name no agent: two agents, so only one gets the lock.
    let a = tool(&one, "lock_resource", json!({"name": "x"})).await;
    assert_eq!(a["locked"], true, "{a}");
    let b = tool(&two, "lock_resource", json!({"name": "x"})).await;
    assert_eq!(b["locked"], false, "a second bridge is another agent: {b}");
    let id_one = holder(&d.call("list_locks", json!({})).await, "x").unwrap();
    assert!(id_one.starts_with("mcp:"), "{id_one}");
    assert_eq!(b["held_by"], json!(id_one));

    // Both bridges are present while they run (the heartbeat registers them).
    let agents = within(60, async {
        loop {
            let agents = d.call("list_agents", json!({})).await;
            let mcp = agents
                .as_array()
                .unwrap()
                .iter()
                .filter(|a| {
                    a["agent_id"]
                        .as_str()
                        .is_some_and(|i| i.starts_with("mcp:"))
                })
                .count();
            if mcp == 2 {
                break agents;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(agents.to_string().contains(&id_one), "{agents}");

    // Both calling themselves "claude": the daemon says so.
    let c1 = tool(
        &one,
        "lock_resource",
        json!({"name": "y", "agent_id": "claude"}),
    )
    .await;
    assert!(c1.get("warning").is_none(), "{c1}");
    let c2 = tool(
        &two,
        "lock_resource",
        json!({"name": "y", "agent_id": "claude"}),
    )
    .await;
    assert!(
        c2["warning"]
            .as_str()
            .is_some_and(|w| w.contains("\"claude\"")),
        "{c2}"
    );

    // Bridge one's client goes away: its agent leaves and its lock frees at once.
    within(30, one.cancel()).await.unwrap();
    within(60, async {
        loop {
            if holder(&d.call("list_locks", json!({})).await, "x").is_none() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    let b = tool(&two, "lock_resource", json!({"name": "x"})).await;
    assert_eq!(b["locked"], true, "{b}");
    within(30, two.cancel()).await.unwrap();
}

/// The README's recipe for an HTTP client with no hooks and no bridge: an id from
/// `increment_counter("agent-ids")`, registered once with a long TTL, unregistered at the end.
#[tokio::test]
async fn the_recipe_for_http_clients_gives_each_its_own_id() {
    let d = Daemon::start().await;
    let mut ids = Vec::new();
    for _ in 0..2 {
        let n = d
            .call("increment_counter", json!({"name": "agent-ids"}))
            .await;
        let id = format!("agent-{}", n["value"]);
        let r = d
            .call(
                "register_agent",
                json!({"agent_id": id, "ttl_seconds": 3600}),
            )
            .await;
        assert_eq!(r["registered"], true);
        ids.push(id);
    }
    assert_ne!(ids[0], ids[1]);
    let a = d
        .call("lock_resource", json!({"name": "x", "agent_id": ids[0]}))
        .await;
    assert_eq!(a["locked"], true);
    let b = d
        .call("lock_resource", json!({"name": "x", "agent_id": ids[1]}))
        .await;
    assert_eq!(b["locked"], false, "two clients, two holders: {b}");
    assert_eq!(b["held_by"], json!(ids[0]));
    // Done: unregistering releases the lock at once.
    d.call("unregister_agent", json!({"agent_id": ids[0]}))
        .await;
    let b = d
        .call("lock_resource", json!({"name": "x", "agent_id": ids[1]}))
        .await;
    assert_eq!(b["locked"], true, "{b}");
}
