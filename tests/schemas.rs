//! Issue 18, tool schemas: every bound and default the checks apply is in `tools/list`, and the
//! daemon refuses what the schema rules out (through the real binary).
mod common;

use common::Daemon;
use serde_json::{json, Map, Value};

async fn tools(d: &Daemon) -> Vec<Value> {
    let (status, body) = d
        .rpc(json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}))
        .await;
    assert_eq!(status, 200, "{body}");
    body["result"]["tools"].as_array().expect("tools").clone()
}

fn schema<'a>(tools: &'a [Value], name: &str) -> &'a Value {
    &tools
        .iter()
        .find(|t| t["name"] == json!(name))
        .unwrap_or_else(|| panic!("{name} not listed"))["inputSchema"]
}

#[tokio::test]
async fn schemas_state_bounds_defaults_and_alternatives() {
    let d = Daemon::start().await;
    let tools = tools(&d).await;
    let lock = &schema(&tools, "lock_resource")["properties"];
    assert_eq!(
        lock["ttl_seconds"],
        json!({"type": "integer", "minimum": 1, "maximum": 2_592_000, "default": 900,
               "description": lock["ttl_seconds"]["description"]})
    );
    assert_eq!(
        (
            &lock["wait_seconds"]["minimum"],
            &lock["wait_seconds"]["maximum"],
            &lock["wait_seconds"]["default"]
        ),
        (&json!(0), &json!(50), &json!(0))
    );
    let wait = &schema(&tools, "wait_for_event")["properties"];
    assert_eq!(wait["wait_seconds"]["default"], json!(25));
    assert_eq!(wait["last_seen_generation"]["minimum"], json!(0));
    let claim = &schema(&tools, "claim_next_task")["properties"];
    assert_eq!(claim["lease_seconds"]["default"], json!(120));
    let push = &schema(&tools, "push_task")["properties"];
    assert_eq!(push["max_attempts"]["maximum"], json!(1000));
    assert_eq!(push["delay_seconds"]["default"], json!(0));
    assert_eq!(
        schema(&tools, "fail_task")["properties"]["requeue"]["default"],
        json!(true)
    );
    assert_eq!(
        schema(&tools, "list_tasks")["properties"]["state"]["enum"],
        json!(["pending", "claimed", "completed", "failed", "dead"])
    );
    // "lock_token or agent_id" is in the schema, not only in a description.
    for tool in ["unlock_resource", "renew_lock"] {
        let s = schema(&tools, tool);
        assert_eq!(s["required"], json!(["name"]), "{tool}");
        assert_eq!(
            s["anyOf"],
            json!([{"required": ["lock_token"]}, {"required": ["agent_id"]}]),
            "{tool}"
        );
    }
    // The deprecated ttl_minutes is offered nowhere, and still accepted.
    for t in &tools {
        assert!(
            t["inputSchema"]["properties"].get("ttl_minutes").is_none(),
            "{} offers ttl_minutes",
            t["name"]
        );
    }
    let saved = d
        .call(
            "set_note",
            json!({"key": "k", "value": "v", "ttl_minutes": 2}),
        )
        .await;
    assert_eq!(saved, json!({"saved": true}));
    let note = d.call("get_note", json!({"key": "k"})).await;
    assert!((110..=120).contains(&note["expires_in_seconds"].as_i64().unwrap()));
}

/// Valid arguments for `schema`'s required fields (and one of its alternatives).
fn base_args(schema: &Value) -> Map<String, Value> {
    let mut args = Map::new();
    let props = &schema["properties"];
    let mut needed: Vec<String> = schema["required"]
        .as_array()
        .map(|r| r.iter().map(|v| v.as_str().unwrap().to_string()).collect())
        .unwrap_or_default();
    if let Some(first) = schema["anyOf"][0]["required"][0].as_str() {
        needed.push(first.to_string());
    }
    for name in needed {
        let v = match props[&name]["type"].as_str().unwrap() {
            "string" => json!("x"),
            "integer" => json!(1),
            "boolean" => json!(true),
            _ => json!(["x"]),
        };
        args.insert(name, v);
    }
    args
}

#[tokio::test]
async fn every_bounded_integer_is_refused_outside_its_schema() {
    let d = Daemon::start().await;
    let mut checked = 0;
    for t in tools(&d).await {
        let tool = t["name"].as_str().unwrap();
        let schema = &t["inputSchema"];
        for (prop, p) in schema["properties"].as_object().unwrap() {
            let mut outside = Vec::new();
            if let Some(min) = p["minimum"].as_i64() {
                outside.push(min - 1);
            }
            // wait_seconds above 50 is capped, not refused (README, Limits).
            if let (Some(max), false) = (p["maximum"].as_i64(), prop == "wait_seconds") {
                outside.push(max + 1);
            }
            for v in outside {
                let mut args = base_args(schema);
                args.insert(prop.clone(), json!(v));
                let e = d.call_err(tool, Value::Object(args.clone())).await;
                assert!(
                    e.starts_with(prop.as_str()),
                    "{tool} {prop}={v}: refused for another reason: {e}"
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= 15, "only {checked} bounds checked");
}
