//! Notes and counters through the real binary, exactly per the contract: return shapes, CAS,
//! TTLs and the deprecated alias, limits, concurrency, durability across a restart and a SIGKILL;
//! and the MCP protocol surface (tools/list, errors, initialize, the rmcp client).

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{within, Daemon};
use serde_json::{json, Value};

/// A note's value that a contract-breaking answer would not produce by accident.
const V: &str = "v-\u{e9}\u{1F512}";

/// Checks that `expires_in_seconds` lies in `(ttl - 30)..=ttl` (a loaded machine may take a while
/// between the write and the read) and replaces it with `ttl`, so the shape can be compared exactly.
fn settle_ttl(mut v: Value, ttl: i64) -> Value {
    let items: Vec<&mut Value> = match &mut v {
        Value::Array(a) => a.iter_mut().collect(),
        other => vec![other],
    };
    for item in items {
        if let Some(left) = item.get("expires_in_seconds").and_then(Value::as_i64) {
            assert!(
                (ttl - 30..=ttl).contains(&left),
                "expires_in_seconds {left}, ttl {ttl}"
            );
            item["expires_in_seconds"] = json!(ttl);
        }
    }
    v
}

#[tokio::test]
async fn set_get_list_delete_have_the_contract_shapes() {
    let d = Daemon::start().await;
    assert_eq!(
        d.call("get_note", json!({"key": "a"})).await,
        json!({"found": false})
    );
    assert_eq!(d.call("list_notes", json!({})).await, json!([]));
    assert_eq!(
        d.call("set_note", json!({"key": "a", "value": V})).await,
        json!({"saved": true})
    );
    assert_eq!(
        d.call("get_note", json!({"key": "a"})).await,
        json!({"key": "a", "value": V})
    );
    assert_eq!(
        d.call(
            "set_note",
            json!({"key": "b", "value": "", "author": "agent:x", "ttl_seconds": 600})
        )
        .await,
        json!({"saved": true})
    );
    let b = settle_ttl(d.call("get_note", json!({"key": "b"})).await, 600);
    assert_eq!(
        b,
        json!({"key": "b", "value": "", "author": "agent:x", "expires_in_seconds": 600})
    );
    assert_eq!(
        settle_ttl(d.call("list_notes", json!({})).await, 600),
        json!([
            {"key": "a", "value": V},
            {"key": "b", "value": "", "author": "agent:x", "expires_in_seconds": 600}
        ])
    );
    // Overwriting replaces value, author and TTL.
    d.call("set_note", json!({"key": "b", "value": "2"})).await;
    assert_eq!(
        d.call("get_note", json!({"key": "b"})).await,
        json!({"key": "b", "value": "2"})
    );
    assert_eq!(
        d.call("delete_note", json!({"key": "a"})).await,
        json!({"deleted": true})
    );
    assert_eq!(
        d.call("delete_note", json!({"key": "a"})).await,
        json!({"deleted": false})
    );
    assert_eq!(
        d.call("delete_note", json!({"key": "never"})).await,
        json!({"deleted": false})
    );
    assert_eq!(
        d.call("get_note", json!({"key": "a"})).await,
        json!({"found": false})
    );
    assert_eq!(
        d.call("list_notes", json!({})).await,
        json!([{"key": "b", "value": "2"}])
    );
}

#[tokio::test]
async fn set_note_if_compares_and_swaps_with_absent_as_empty() {
    let d = Daemon::start().await;
    let cas = |expected: &str, new: &str| json!({"key": "k", "expected_value": expected, "new_value": new});
    // Absent counts as "".
    assert_eq!(
        d.call("set_note_if", cas("x", "1")).await,
        json!({"swapped": false})
    );
    assert_eq!(
        d.call("get_note", json!({"key": "k"})).await,
        json!({"found": false})
    );
    assert_eq!(
        d.call("set_note_if", cas("", "1")).await,
        json!({"swapped": true})
    );
    assert_eq!(
        d.call("get_note", json!({"key": "k"})).await["value"],
        json!("1")
    );
    assert_eq!(
        d.call("set_note_if", cas("", "2")).await,
        json!({"swapped": false})
    );
    assert_eq!(
        d.call("set_note_if", cas("0", "2")).await,
        json!({"swapped": false})
    );
    assert_eq!(
        d.call("set_note_if", cas("1", "2")).await,
        json!({"swapped": true})
    );
    // Author and TTL are set on a successful swap.
    assert_eq!(
        d.call(
            "set_note_if",
            json!({"key": "k", "expected_value": "2", "new_value": "3",
                   "author": "cas", "ttl_seconds": 100})
        )
        .await,
        json!({"swapped": true})
    );
    assert_eq!(
        settle_ttl(d.call("get_note", json!({"key": "k"})).await, 100),
        json!({"key": "k", "value": "3", "author": "cas", "expires_in_seconds": 100})
    );
    // A note holding "" is indistinguishable from an absent one for CAS.
    d.call("set_note", json!({"key": "e", "value": ""})).await;
    assert_eq!(
        d.call(
            "set_note_if",
            json!({"key": "e", "expected_value": "", "new_value": "won"})
        )
        .await,
        json!({"swapped": true})
    );
}

#[tokio::test]
async fn set_note_if_races_have_exactly_one_winner() {
    let d = std::sync::Arc::new(Daemon::start().await);
    let mut handles = Vec::new();
    for i in 0..16 {
        let d = d.clone();
        handles.push(tokio::spawn(async move {
            d.call(
                "set_note_if",
                json!({"key": "race", "expected_value": "", "new_value": format!("w{i}")}),
            )
            .await["swapped"]
                == json!(true)
        }));
    }
    let mut winners = 0;
    for h in handles {
        if within(30, h).await.unwrap() {
            winners += 1;
        }
    }
    assert_eq!(winners, 1);
}

#[tokio::test]
async fn a_note_expires_at_its_ttl_for_every_reader() {
    let d = Daemon::start().await;
    d.call("set_note", json!({"key": "long", "value": "y"}))
        .await;
    let sent = std::time::Instant::now();
    d.call(
        "set_note",
        json!({"key": "short", "value": "x", "ttl_seconds": 1}),
    )
    .await;
    let live = d.call("get_note", json!({"key": "short"})).await;
    // The note was set no earlier than `sent`, so it must still be live if the read was answered
    // within its second (on a machine too loaded for that, the check proves nothing and is skipped).
    if sent.elapsed() < Duration::from_millis(900) {
        assert_eq!(
            live,
            json!({"key": "short", "value": "x", "expires_in_seconds": 1})
        );
    }
    // Generous margin past the 1 s TTL.
    tokio::time::sleep(Duration::from_millis(1600)).await;
    assert_eq!(
        d.call("get_note", json!({"key": "short"})).await,
        json!({"found": false})
    );
    assert_eq!(
        d.call("list_notes", json!({})).await,
        json!([{"key": "long", "value": "y"}])
    );
    assert_eq!(
        d.call("delete_note", json!({"key": "short"})).await,
        json!({"deleted": false})
    );
    // CAS sees the expired note as "".
    let sent = std::time::Instant::now();
    d.call(
        "set_note",
        json!({"key": "short2", "value": "x", "ttl_seconds": 1}),
    )
    .await;
    let early = d.call("get_note", json!({"key": "short2"})).await;
    if sent.elapsed() < Duration::from_millis(900) {
        assert_eq!(early["value"], json!("x"), "live right after it was set");
    }
    tokio::time::sleep(Duration::from_millis(1600)).await;
    assert_eq!(
        d.call(
            "set_note_if",
            json!({"key": "short2", "expected_value": "x", "new_value": "z"})
        )
        .await,
        json!({"swapped": false})
    );
    assert_eq!(
        d.call(
            "set_note_if",
            json!({"key": "short2", "expected_value": "", "new_value": "z"})
        )
        .await,
        json!({"swapped": true})
    );
    assert_eq!(
        d.call("get_note", json!({"key": "short2"})).await,
        json!({"key": "short2", "value": "z"}),
        "the swapped note has no TTL"
    );
}

#[tokio::test]
async fn ttl_minutes_is_an_alias_and_both_is_an_error() {
    let d = Daemon::start().await;
    d.call(
        "set_note",
        json!({"key": "m", "value": "x", "ttl_minutes": 2}),
    )
    .await;
    let got = d.call("get_note", json!({"key": "m"})).await;
    let left = got["expires_in_seconds"].as_i64().unwrap();
    assert!((115..=120).contains(&left), "{got}");
    assert_eq!(
        d.call(
            "set_note_if",
            json!({"key": "m", "expected_value": "x", "new_value": "y", "ttl_minutes": 1})
        )
        .await,
        json!({"swapped": true})
    );
    let left = d.call("get_note", json!({"key": "m"})).await["expires_in_seconds"]
        .as_i64()
        .unwrap();
    assert!((55..=60).contains(&left), "{left}");

    let err = d
        .call_err(
            "set_note",
            json!({"key": "both", "value": "x", "ttl_minutes": 2, "ttl_seconds": 5}),
        )
        .await;
    assert!(
        err.contains("ttl_minutes") && err.contains("ttl_seconds") && err.contains("not both"),
        "{err}"
    );
    let err = d
        .call_err(
            "set_note_if",
            json!({"key": "both", "expected_value": "", "new_value": "x",
                   "ttl_minutes": 2, "ttl_seconds": 5}),
        )
        .await;
    assert!(err.contains("not both"), "{err}");
    assert_eq!(
        d.call("get_note", json!({"key": "both"})).await,
        json!({"found": false})
    );
}

#[tokio::test]
async fn limits_are_enforced_with_errors_naming_field_and_rule_and_change_nothing() {
    let d = Daemon::start().await;
    d.call("set_note", json!({"key": "keep", "value": "old"}))
        .await;
    d.call("increment_counter", json!({"name": "keep"})).await;

    let k512 = "k".repeat(512);
    let k513 = "k".repeat(513);
    // 171 three-byte characters: 171 chars, 513 bytes.
    let euro513 = "\u{20ac}".repeat(171);
    let big = "x".repeat(256 * 1024 + 1);
    let max = "x".repeat(256 * 1024);

    // (tool, args, expected substrings of the error)
    let cases: Vec<(&str, Value, Vec<&str>)> = vec![
        (
            "set_note",
            json!({"key": k513, "value": "x"}),
            vec!["key", "512 bytes"],
        ),
        (
            "set_note",
            json!({"key": euro513, "value": "x"}),
            vec!["key", "512 bytes"],
        ),
        (
            "set_note",
            json!({"key": "", "value": "x"}),
            vec!["key", "empty"],
        ),
        (
            "set_note",
            json!({"key": "a\nb", "value": "x"}),
            vec!["key", "control"],
        ),
        (
            "set_note",
            json!({"key": "a\u{0}b", "value": "x"}),
            vec!["key", "control"],
        ),
        (
            "set_note",
            json!({"key": "a\tb", "value": "x"}),
            vec!["key", "control"],
        ),
        (
            "set_note",
            json!({"key": "a\u{7f}", "value": "x"}),
            vec!["key", "control"],
        ),
        (
            "set_note",
            json!({"key": "keep", "value": big}),
            vec!["value", "256 KiB"],
        ),
        (
            "set_note",
            json!({"key": "keep", "value": "x", "ttl_seconds": 0}),
            vec!["ttl_seconds", "between 1 and 2592000"],
        ),
        (
            "set_note",
            json!({"key": "keep", "value": "x", "ttl_seconds": -5}),
            vec!["ttl_seconds", "between 1 and 2592000"],
        ),
        (
            "set_note",
            json!({"key": "keep", "value": "x", "ttl_seconds": 2_592_001}),
            vec!["ttl_seconds", "between 1 and 2592000"],
        ),
        (
            "set_note",
            json!({"key": "keep", "value": "x", "ttl_minutes": 43_201}),
            vec!["ttl_minutes", "between 1 and 43200 minutes"],
        ),
        (
            "set_note",
            json!({"key": "keep", "value": "x", "ttl_minutes": 0}),
            vec!["ttl_minutes", "between 1 and 43200 minutes"],
        ),
        (
            "set_note_if",
            json!({"key": "keep", "expected_value": "old", "new_value": "x", "ttl_minutes": -1}),
            vec!["ttl_minutes", "between"],
        ),
        (
            "set_note",
            json!({"key": "keep", "value": "x", "author": "a\nb"}),
            vec!["author", "control"],
        ),
        (
            "set_note",
            json!({"key": "keep", "value": "x", "author": k513}),
            vec!["author", "512 bytes"],
        ),
        (
            "set_note",
            json!({"key": "keep"}),
            vec!["value", "required"],
        ),
        ("set_note", json!({"value": "x"}), vec!["key", "required"]),
        (
            "set_note",
            json!({"key": 5, "value": "x"}),
            vec!["key", "string"],
        ),
        (
            "set_note",
            json!({"key": "keep", "value": "x", "ttl_seconds": "soon"}),
            vec!["ttl_seconds", "integer"],
        ),
        (
            "set_note",
            json!({"key": "keep", "value": "x", "ttl_seconds": 1.5}),
            vec!["ttl_seconds", "integer"],
        ),
        (
            "set_note",
            json!({"key": "keep", "value": "x", "colour": "red"}),
            vec!["colour", "not an argument"],
        ),
        (
            "set_note_if",
            json!({"key": "keep", "expected_value": "old", "new_value": big}),
            vec!["new_value", "256 KiB"],
        ),
        (
            "set_note_if",
            json!({"key": "keep", "expected_value": big, "new_value": "x"}),
            vec!["expected_value", "256 KiB"],
        ),
        (
            "set_note_if",
            json!({"key": k513, "expected_value": "", "new_value": "x"}),
            vec!["key", "512 bytes"],
        ),
        (
            "set_note_if",
            json!({"key": "keep", "expected_value": "old", "new_value": "x", "ttl_seconds": 0}),
            vec!["ttl_seconds", "between"],
        ),
        (
            "set_note_if",
            json!({"key": "keep", "new_value": "x"}),
            vec!["expected_value", "required"],
        ),
        ("get_note", json!({"key": k513}), vec!["key", "512 bytes"]),
        ("get_note", json!({}), vec!["key", "required"]),
        (
            "delete_note",
            json!({"key": "keep\r"}),
            vec!["key", "control"],
        ),
        (
            "increment_counter",
            json!({"name": k513}),
            vec!["name", "512 bytes"],
        ),
        (
            "increment_counter",
            json!({"name": "keep", "by": "two"}),
            vec!["by", "integer"],
        ),
        (
            "increment_counter",
            json!({"name": "keep", "by": i64::MAX}),
            vec!["by", "overflow"],
        ),
        ("increment_counter", json!({}), vec!["name", "required"]),
    ];
    for (tool, args, needles) in cases {
        let shown = {
            let s = args.to_string();
            s.chars().take(120).collect::<String>()
        };
        let err = d.call_err(tool, args).await;
        for n in needles {
            assert!(err.contains(n), "{tool} {shown}: error {err:?} lacks {n:?}");
        }
    }
    // Nothing changed.
    assert_eq!(
        d.call("list_notes", json!({})).await,
        json!([{"key": "keep", "value": "old"}])
    );
    assert_eq!(
        d.call("increment_counter", json!({"name": "keep", "by": 0}))
            .await,
        json!({"value": 1})
    );
    // The boundaries themselves are accepted.
    for args in [
        json!({"key": k512, "value": max}),
        json!({"key": "\u{20ac}".repeat(170), "value": "x"}),
        json!({"key": "t1", "value": "x", "ttl_seconds": 1}),
        json!({"key": "t30d", "value": "x", "ttl_seconds": 2_592_000}),
        json!({"key": "tmin", "value": "x", "ttl_minutes": 43_200}),
        json!({"key": "spaces and / : * ok", "value": "x"}),
    ] {
        assert_eq!(d.call("set_note", args).await, json!({"saved": true}));
    }
    let got = d.call("get_note", json!({"key": k512})).await;
    assert_eq!(got["value"].as_str().unwrap().len(), 256 * 1024);
    let t30d = d.call("get_note", json!({"key": "t30d"})).await;
    assert_eq!(
        settle_ttl(t30d, 2_592_000)["expires_in_seconds"],
        json!(2_592_000)
    );
}

#[tokio::test]
async fn counters_count_from_one_by_any_step() {
    let d = Daemon::start().await;
    let inc = |by: Option<i64>| match by {
        Some(b) => json!({"name": "c", "by": b}),
        None => json!({"name": "c"}),
    };
    assert_eq!(
        d.call("increment_counter", inc(None)).await,
        json!({"value": 1})
    );
    assert_eq!(
        d.call("increment_counter", inc(None)).await,
        json!({"value": 2})
    );
    assert_eq!(
        d.call("increment_counter", inc(Some(10))).await,
        json!({"value": 12})
    );
    assert_eq!(
        d.call("increment_counter", inc(Some(-20))).await,
        json!({"value": -8})
    );
    assert_eq!(
        d.call("increment_counter", json!({"name": "other", "by": 5}))
            .await,
        json!({"value": 5})
    );
    assert_eq!(
        d.call("increment_counter", inc(Some(0))).await,
        json!({"value": -8})
    );
}

#[tokio::test]
async fn counters_never_repeat_under_concurrency() {
    let d = std::sync::Arc::new(Daemon::start().await);
    let mut handles = Vec::new();
    for _ in 0..8 {
        let d = d.clone();
        handles.push(tokio::spawn(async move {
            let mut seen = Vec::with_capacity(200);
            for _ in 0..200 {
                let v = d.call("increment_counter", json!({"name": "ids"})).await;
                seen.push(v["value"].as_i64().unwrap());
            }
            seen
        }));
    }
    let mut all = HashSet::new();
    for h in handles {
        for v in within(120, h).await.unwrap() {
            assert!(all.insert(v), "value {v} was handed out twice");
        }
    }
    assert_eq!(all.len(), 1600);
    assert_eq!(all.iter().copied().min(), Some(1));
    assert_eq!(all.iter().copied().max(), Some(1600));
    assert_eq!(
        d.call("increment_counter", json!({"name": "ids", "by": 0}))
            .await,
        json!({"value": 1600})
    );
}

async fn write_state(d: &Daemon) {
    d.call("set_note", json!({"key": "plain", "value": V}))
        .await;
    d.call(
        "set_note",
        json!({"key": "ttl", "value": "t", "author": "me", "ttl_seconds": 3600}),
    )
    .await;
    d.call("set_note", json!({"key": "gone", "value": "x"}))
        .await;
    d.call("delete_note", json!({"key": "gone"})).await;
    d.call(
        "set_note_if",
        json!({"key": "cas", "expected_value": "", "new_value": "swapped"}),
    )
    .await;
    for _ in 0..5 {
        d.call("increment_counter", json!({"name": "n"})).await;
    }
}

async fn check_state(d: &Daemon) {
    assert_eq!(
        d.call("get_note", json!({"key": "plain"})).await,
        json!({"key": "plain", "value": V})
    );
    let ttl = d.call("get_note", json!({"key": "ttl"})).await;
    assert_eq!(ttl["value"], json!("t"));
    assert_eq!(ttl["author"], json!("me"));
    let left = ttl["expires_in_seconds"].as_i64().unwrap();
    assert!((3500..=3600).contains(&left), "the TTL survived: {ttl}");
    assert_eq!(
        d.call("get_note", json!({"key": "gone"})).await,
        json!({"found": false})
    );
    assert_eq!(
        d.call("get_note", json!({"key": "cas"})).await["value"],
        json!("swapped")
    );
    assert_eq!(
        d.call("increment_counter", json!({"name": "n"})).await,
        json!({"value": 6}),
        "the counter continues after the restart, never repeating"
    );
}

#[tokio::test]
async fn notes_and_counters_survive_a_clean_restart() {
    let mut d = Daemon::start().await;
    let tmp = d.take_tmp();
    let home = d.home.clone();
    write_state(&d).await;
    assert_eq!(d.stop(), Some(0));
    let d = Daemon::start_in(&home).await;
    check_state(&d).await;
    drop(tmp);
}

#[tokio::test]
async fn acknowledged_writes_survive_sigkill() {
    let mut d = Daemon::start().await;
    let tmp = d.take_tmp();
    let home = d.home.clone();
    write_state(&d).await;
    // Many concurrent writers, every answer awaited, then SIGKILL at once.
    let d = std::sync::Arc::new(d);
    let mut handles = Vec::new();
    for t in 0..8 {
        let d = d.clone();
        handles.push(tokio::spawn(async move {
            let mut got = Vec::new();
            for i in 0..25 {
                d.call(
                    "set_note",
                    json!({"key": format!("w{t}-{i}"), "value": format!("{t}:{i}")}),
                )
                .await;
                got.push(
                    d.call("increment_counter", json!({"name": "k"})).await["value"]
                        .as_i64()
                        .unwrap(),
                );
            }
            got
        }));
    }
    let mut max = 0;
    for h in handles {
        max = max.max(*within(120, h).await.unwrap().iter().max().unwrap());
    }
    assert_eq!(max, 200);
    let mut d = std::sync::Arc::try_unwrap(d).ok().expect("sole owner");
    d.kill();

    let d = Daemon::start_in(&home).await;
    check_state(&d).await;
    let notes = d.call("list_notes", json!({})).await;
    for t in 0..8 {
        for i in 0..25 {
            let key = format!("w{t}-{i}");
            assert!(
                notes
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|n| n["key"] == json!(key) && n["value"] == json!(format!("{t}:{i}"))),
                "acknowledged note {key} was lost"
            );
        }
    }
    assert_eq!(
        d.call("increment_counter", json!({"name": "k"})).await,
        json!({"value": 201})
    );
    drop(tmp);
}

// ---------------------------------------------------------------- the MCP protocol surface

const NOTE_TOOLS: &[&str] = &[
    "set_note",
    "get_note",
    "list_notes",
    "delete_note",
    "set_note_if",
    "increment_counter",
];

/// Every tool the seed README names.
const SEED_TOOLS: &[&str] = &[
    "lock_resource",
    "unlock_resource",
    "renew_lock",
    "list_locks",
    "lock_resources",
    "set_note",
    "get_note",
    "list_notes",
    "delete_note",
    "set_note_if",
    "increment_counter",
    "register_agent",
    "unregister_agent",
    "list_agents",
    "signal_event",
    "wait_for_event",
    "clear_event",
    "push_task",
    "claim_next_task",
    "complete_task",
    "fail_task",
    "list_tasks",
];

#[tokio::test]
async fn tools_list_describes_every_tool_with_schema_and_annotations() {
    let d = Daemon::start().await;
    let (status, body) = d
        .rpc(json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}))
        .await;
    assert_eq!(status, 200, "{body}");
    let tools = body["result"]["tools"].as_array().expect("tools array");
    let names: HashSet<&str> = tools.iter().map(|t| t["name"].as_str().unwrap()).collect();
    for t in SEED_TOOLS {
        assert!(names.contains(t), "tools/list lacks {t}");
    }
    for t in tools {
        let name = t["name"].as_str().unwrap();
        let desc = t["description"].as_str().unwrap_or("");
        assert!(desc.len() >= 20, "{name} has no useful description");
        assert_eq!(t["inputSchema"]["type"], json!("object"), "{name}");
        assert!(t["inputSchema"]["properties"].is_object(), "{name}");
        if name.starts_with("get_") || name.starts_with("list_") {
            assert_eq!(t["annotations"]["readOnlyHint"], json!(true), "{name}");
        } else if NOTE_TOOLS.contains(&name) || name.contains("lock") {
            assert_eq!(t["annotations"]["readOnlyHint"], json!(false), "{name}");
        }
    }
    let schema = |name: &str| {
        tools.iter().find(|t| t["name"] == json!(name)).unwrap()["inputSchema"].clone()
    };
    let required = |name: &str| -> Vec<String> {
        let mut r: Vec<String> = schema(name)["required"]
            .as_array()
            .map(|a| a.iter().map(|v| v.as_str().unwrap().to_string()).collect())
            .unwrap_or_default();
        r.sort();
        r
    };
    assert_eq!(required("set_note"), ["key", "value"]);
    assert_eq!(required("get_note"), ["key"]);
    assert_eq!(required("delete_note"), ["key"]);
    assert_eq!(
        required("set_note_if"),
        ["expected_value", "key", "new_value"]
    );
    assert_eq!(required("increment_counter"), ["name"]);
    assert!(required("list_notes").is_empty());
    for (tool, props) in [
        ("set_note", &["key", "value", "author", "ttl_seconds"][..]),
        (
            "set_note_if",
            &[
                "key",
                "expected_value",
                "new_value",
                "author",
                "ttl_seconds",
            ][..],
        ),
        ("increment_counter", &["name", "by"][..]),
    ] {
        for p in props {
            assert!(
                schema(tool)["properties"][p].is_object(),
                "{tool} schema lacks {p}"
            );
        }
    }
    assert_eq!(
        schema("set_note")["properties"]["ttl_seconds"]["type"],
        json!("integer")
    );
    assert_eq!(
        schema("increment_counter")["properties"]["by"]["type"],
        json!("integer")
    );
    // Repeating these with the same arguments has no further effect; repeating an increment does.
    // (set_note_if is left either way: with expected == new and a TTL, a repeat renews the TTL.)
    for (name, idempotent) in [
        ("set_note", true),
        ("get_note", true),
        ("list_notes", true),
        ("delete_note", true),
        ("increment_counter", false),
    ] {
        let t = tools.iter().find(|t| t["name"] == json!(name)).unwrap();
        let hint = t["annotations"]["idempotentHint"] == json!(true);
        assert_eq!(hint, idempotent, "{name} idempotentHint");
    }
}

#[tokio::test]
async fn structured_content_accompanies_object_results() {
    let d = Daemon::start().await;
    let body = d
        .call_raw("set_note", json!({"key": "s", "value": "x"}))
        .await;
    assert_eq!(body["result"]["structuredContent"], json!({"saved": true}));
    assert_eq!(body["result"]["content"][0]["type"], json!("text"));
    let body = d.call_raw("get_note", json!({"key": "s"})).await;
    assert_eq!(
        body["result"]["structuredContent"],
        json!({"key": "s", "value": "x"})
    );
    let body = d.call_raw("increment_counter", json!({"name": "c"})).await;
    assert_eq!(body["result"]["structuredContent"], json!({"value": 1}));
    // An array result is only in text (structuredContent must be an object).
    let body = d.call_raw("list_notes", json!({})).await;
    assert!(body["result"].get("structuredContent").is_none(), "{body}");
    let text = body["result"]["content"][0]["text"].as_str().unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(text).unwrap(),
        json!([{"key": "s", "value": "x"}])
    );
    // A tool error is a result with isError, not a JSON-RPC error.
    let body = d.call_raw("get_note", json!({})).await;
    assert!(body.get("error").is_none(), "{body}");
    assert_eq!(body["result"]["isError"], json!(true));
}

#[tokio::test]
async fn unknown_tools_and_methods_get_json_rpc_errors() {
    let d = Daemon::start().await;
    let (status, body) = d
        .rpc(json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call",
                    "params": {"name": "no_such_tool", "arguments": {}}}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["id"], json!(3));
    assert!(body.get("result").is_none(), "{body}");
    assert!(body["error"]["code"].is_i64(), "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no_such_tool"),
        "{body}"
    );

    let (_, body) = d
        .rpc(json!({"jsonrpc": "2.0", "id": 4, "method": "notes/frobnicate", "params": {}}))
        .await;
    assert_eq!(body["id"], json!(4), "{body}");
    assert_eq!(body["error"]["code"], json!(-32601), "{body}");
    assert!(body.get("result").is_none());
}

#[tokio::test]
async fn initialize_negotiates_2025_11_25() {
    let d = Daemon::start().await;
    let (status, body) = d
        .rpc(
            json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                "protocolVersion": "2025-11-25",
                "capabilities": {},
                "clientInfo": {"name": "test", "version": "0"}
            }}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let r = &body["result"];
    assert_eq!(r["protocolVersion"], json!("2025-11-25"), "{body}");
    assert_eq!(r["serverInfo"]["name"], json!("airlock"));
    assert_eq!(r["serverInfo"]["version"], json!(env!("CARGO_PKG_VERSION")));
    assert!(r["capabilities"]["tools"].is_object(), "{body}");
    assert!(r["instructions"].as_str().unwrap_or("").contains("lock"));
}

mod rmcp_client {
    use super::*;
    use rmcp::model::{CallToolRequestParams, ProtocolVersion};
    use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
    use rmcp::transport::StreamableHttpClientTransport;
    use rmcp::{ClientLifecycleMode, ClientServiceExt, ServiceExt};

    fn args(v: Value) -> rmcp::model::JsonObject {
        v.as_object().unwrap().clone()
    }

    fn text(r: &rmcp::model::CallToolResult) -> Value {
        let t = &r.content[0].as_text().expect("text content").text;
        serde_json::from_str(t).unwrap()
    }

    async fn exercise<S>(client: &rmcp::service::RunningService<rmcp::RoleClient, S>, key: &str)
    where
        S: rmcp::Service<rmcp::RoleClient>,
    {
        let tools = client.list_all_tools().await.expect("tools/list");
        for t in SEED_TOOLS {
            assert!(tools.iter().any(|x| x.name == *t), "rmcp client lacks {t}");
        }
        let get = tools.iter().find(|t| t.name == "get_note").unwrap();
        assert_eq!(
            get.annotations.as_ref().and_then(|a| a.read_only_hint),
            Some(true)
        );
        let r = client
            .call_tool(
                CallToolRequestParams::new("set_note")
                    .with_arguments(args(json!({"key": key, "value": "via rmcp"}))),
            )
            .await
            .expect("set_note");
        assert_ne!(r.is_error, Some(true));
        assert_eq!(text(&r), json!({"saved": true}));
        assert_eq!(r.structured_content, Some(json!({"saved": true})));
        let r = client
            .call_tool(
                CallToolRequestParams::new("get_note").with_arguments(args(json!({"key": key}))),
            )
            .await
            .unwrap();
        assert_eq!(text(&r), json!({"key": key, "value": "via rmcp"}));
        let r = client
            .call_tool(
                CallToolRequestParams::new("increment_counter")
                    .with_arguments(args(json!({"name": key}))),
            )
            .await
            .unwrap();
        assert_eq!(text(&r), json!({"value": 1}));
        // A tool error arrives as isError; an unknown tool as a protocol error.
        let r = client
            .call_tool(CallToolRequestParams::new("get_note").with_arguments(args(json!({}))))
            .await
            .unwrap();
        assert_eq!(r.is_error, Some(true));
        let e = client
            .call_tool(CallToolRequestParams::new("no_such_tool"))
            .await;
        assert!(e.is_err(), "unknown tool gave {e:?}");
    }

    #[tokio::test]
    async fn the_rmcp_client_lists_and_calls_tools_with_initialize() {
        let d = Daemon::start().await;
        within(60, async {
            let cfg = StreamableHttpClientTransportConfig::with_uri(d.url.clone())
                .auth_header(d.token.clone());
            let client =
                ().serve(StreamableHttpClientTransport::from_config(cfg))
                    .await
                    .expect("initialize");
            let info = client.peer_info().expect("server info");
            assert_eq!(
                info.server_info.as_ref().map(|s| s.name.as_str()),
                Some("airlock")
            );
            exercise(&client, "legacy").await;
            client.cancel().await.unwrap();
        })
        .await;
    }

    #[tokio::test]
    async fn the_rmcp_client_works_with_server_discover_on_the_mcp_alias() {
        let d = Daemon::start().await;
        within(60, async {
            let cfg = StreamableHttpClientTransportConfig::with_uri(format!("{}/mcp", d.url))
                .auth_header(d.token.clone());
            let client = ()
                .serve_with_lifecycle(
                    StreamableHttpClientTransport::from_config(cfg),
                    ClientLifecycleMode::Discover {
                        preferred_versions: vec![ProtocolVersion::V_2026_07_28],
                    },
                )
                .await
                .expect("server/discover");
            exercise(&client, "modern").await;
            client.cancel().await.unwrap();
        })
        .await;
    }

    #[tokio::test]
    async fn the_rmcp_client_without_the_token_is_refused() {
        let d = Daemon::start().await;
        within(60, async {
            let cfg = StreamableHttpClientTransportConfig::with_uri(d.url.clone())
                .auth_header("not-the-token".to_string());
            let r = ().serve(StreamableHttpClientTransport::from_config(cfg)).await;
            assert!(r.is_err(), "connected with a wrong token");
        })
        .await;
    }
}

#[tokio::test]
async fn expired_notes_are_removed_from_disk_and_stay_gone_after_a_restart() {
    let mut d = Daemon::start().await;
    let tmp = d.take_tmp();
    let home = d.home.clone();
    d.call(
        "set_note",
        json!({"key": "short", "value": "x", "ttl_seconds": 1}),
    )
    .await;
    d.call("set_note", json!({"key": "long", "value": "y"}))
        .await;
    assert_eq!(d.stop(), Some(0));
    // Past the expiry while the daemon is down (generous margin).
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let d = Daemon::start_in(&home).await;
    assert_eq!(
        d.call("get_note", json!({"key": "short"})).await,
        json!({"found": false})
    );
    assert_eq!(
        d.call("list_notes", json!({})).await,
        json!([{"key": "long", "value": "y"}])
    );
    // Housekeeping runs at start: the expired row is gone from the store, the live one is not.
    let rows = |key: &'static str| stored_note_rows(&home, d.store.as_deref(), key);
    assert_eq!(rows("long").await, 1);
    assert_eq!(rows("short").await, 0, "the expired note is still stored");
    drop(d);
    drop(tmp);
}

/// How many rows the store holds for note `key`, read behind the daemon's back: from
/// `state.db` on SQLite, from the database at `store` on PostgreSQL.
async fn stored_note_rows(home: &std::path::Path, store: Option<&str>, key: &str) -> i64 {
    match store {
        None => {
            let conn = rusqlite::Connection::open(home.join("state.db")).unwrap();
            conn.query_row("SELECT count(*) FROM notes WHERE key = ?1", [key], |r| {
                r.get(0)
            })
            .unwrap()
        }
        Some(url) => {
            let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(connection);
            client
                .query_one("SELECT count(*) FROM airlock.notes WHERE key = $1", &[&key])
                .await
                .unwrap()
                .get(0)
        }
    }
}
