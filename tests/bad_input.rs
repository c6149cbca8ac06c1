//! Hostile and broken input, one test per kind: every one gets a clear error, the daemon stays up
//! (`/healthz` answers after), and nothing changes (the state read before equals the state after).

mod common;

use std::time::Duration;

use common::{within, Daemon};
use serde_json::{json, Value};

/// Everything a bad request could have touched, read without changing anything.
/// Remaining seconds tick down on their own, so they are left out.
async fn snapshot(d: &Daemon) -> Value {
    fn strip(v: &mut Value) {
        match v {
            Value::Object(m) => {
                m.remove("expires_in_seconds");
                m.values_mut().for_each(strip);
            }
            Value::Array(a) => a.iter_mut().for_each(strip),
            _ => {}
        }
    }
    let mut v = json!({
        "locks": d.call("list_locks", json!({})).await,
        "notes": d.call("list_notes", json!({})).await,
        "agents": d.call("list_agents", json!({})).await,
        "tasks": d.call("list_tasks", json!({"queue": "q"})).await,
        "counter": d.call("increment_counter", json!({"name": "c", "by": 0})).await,
    });
    strip(&mut v);
    v
}

/// A daemon with some state in it, and that state.
async fn seeded() -> (Daemon, Value) {
    let d = Daemon::start().await;
    d.call(
        "lock_resource",
        json!({"name": "x", "agent_id": "a", "ttl_seconds": 600}),
    )
    .await;
    d.call("set_note", json!({"key": "k", "value": "v"})).await;
    d.call("increment_counter", json!({"name": "c"})).await;
    d.call("push_task", json!({"queue": "q", "payload": "p"}))
        .await;
    let before = snapshot(&d).await;
    (d, before)
}

/// The daemon is up and its state is what it was.
async fn unharmed(d: &Daemon, before: &Value) {
    assert!(d.healthy().await, "the daemon is down");
    assert_eq!(
        &snapshot(d).await,
        before,
        "a refused request changed state"
    );
}

fn call_body(tool: &str, args: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
           "params": {"name": tool, "arguments": args}})
}

/// A tool call that must be refused with `isError` and a message containing `want`.
async fn refused(d: &Daemon, tool: &str, args: Value, want: &str) {
    let msg = d.call_err(tool, args.clone()).await;
    assert!(
        msg.contains(want),
        "{tool} {args}: expected an error containing {want:?}, got {msg:?}"
    );
    assert!(msg.len() < 1024, "an error message of {} bytes", msg.len());
}

#[tokio::test]
async fn malformed_json_is_a_parse_error() {
    let (d, before) = seeded().await;
    for body in [
        &b"{"[..],
        b"{\"jsonrpc\":\"2.0\",",
        b"not json",
        b"",
        b"{\"a\":1}}",
    ] {
        let (status, r) = d.post_bytes(body.to_vec()).await;
        assert_eq!(status, 400, "{body:?}: {r}");
        assert_eq!(r["error"]["code"], json!(-32700), "{r}");
        assert!(r["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("parse error"));
    }
    // Valid JSON that is not one request object.
    let (status, r) = d.post_bytes(b"[1,2]".to_vec()).await;
    assert_eq!((status, r["error"]["code"].clone()), (400, json!(-32600)));
    let (status, r) = d.post_bytes(b"42".to_vec()).await;
    assert_eq!((status, r["error"]["code"].clone()), (400, json!(-32600)));
    unharmed(&d, &before).await;
}

#[tokio::test]
async fn wrong_types_are_named() {
    let (d, before) = seeded().await;
    refused(
        &d,
        "set_note",
        json!({"key": 5, "value": "v"}),
        "key: must be a string, got a number",
    )
    .await;
    refused(
        &d,
        "lock_resource",
        json!({"name": "x", "agent_id": "b", "ttl_seconds": "soon"}),
        "ttl_seconds: must be an integer",
    )
    .await;
    refused(
        &d,
        "lock_resource",
        json!({"name": "x", "agent_id": "b", "wait_seconds": 2.5}),
        "wait_seconds: must be an integer",
    )
    .await;
    refused(
        &d,
        "lock_resources",
        json!({"names": "x", "agent_id": "b"}),
        "names: must be an array of strings",
    )
    .await;
    refused(
        &d,
        "lock_resources",
        json!({"names": ["y", 1], "agent_id": "b"}),
        "names[1]: must be a string",
    )
    .await;
    refused(
        &d,
        "fail_task",
        json!({"id": 1, "lease_token": "t", "requeue": "maybe"}),
        "requeue: must be true or false",
    )
    .await;
    refused(
        &d,
        "increment_counter",
        json!({"name": "c", "by": {"n": 1}}),
        "by: must be an integer, got an object",
    )
    .await;
    // Arguments that are not an object at all.
    let (status, r) = d
        .rpc(json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
                    "params": {"name": "set_note", "arguments": ["k", "v"]}}))
        .await;
    assert_eq!((status, &r["id"]), (200, &json!(7)));
    assert_eq!(r["error"]["code"], json!(-32602), "{r}");
    assert!(r["error"]["message"]
        .as_str()
        .unwrap()
        .starts_with("params.arguments must be an object"));
    unharmed(&d, &before).await;
}

#[tokio::test]
async fn missing_fields_are_named() {
    let (d, before) = seeded().await;
    refused(
        &d,
        "lock_resource",
        json!({"name": "x"}),
        "agent_id: is required",
    )
    .await;
    refused(&d, "set_note", json!({"key": "k"}), "value: is required").await;
    refused(
        &d,
        "unlock_resource",
        json!({"name": "x"}),
        "lock_token: is required",
    )
    .await;
    refused(
        &d,
        "complete_task",
        json!({"lease_token": "t"}),
        "id: is required",
    )
    .await;
    // A tools/call without a tool name, or without params at all.
    for params in [json!({}), json!({"name": 5}), json!(null)] {
        let (_, r) = d
            .rpc(json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": params}))
            .await;
        assert_eq!(r["error"]["code"], json!(-32602), "{r}");
        assert!(
            r["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with("tools/call needs params"),
            "{r}"
        );
    }
    unharmed(&d, &before).await;
}

#[tokio::test]
async fn huge_bodies_get_413() {
    let (d, before) = seeded().await;
    // Declared too large.
    let big = call_body(
        "set_note",
        json!({"key": "k", "value": "x".repeat(2 * 1024 * 1024)}),
    );
    let (status, r) = d.post_bytes(big.to_string().into_bytes()).await;
    assert_eq!(status, 413, "{r}");
    assert!(r["error"]["message"]
        .as_str()
        .unwrap()
        .contains("1048576-byte limit"));
    // Streamed without a length (chunked): refused once it passes the limit.
    let status = chunked_upload(&d, 2 * 1024 * 1024).await;
    assert_eq!(status, Some(413));
    unharmed(&d, &before).await;
}

/// Sends a chunked POST of `total` bytes over a raw socket and returns the status line's code
/// (the daemon may answer before the upload ends).
async fn chunked_upload(d: &Daemon, total: usize) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = d.url.trim_start_matches("http://").to_string();
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST / HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
        d.token
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let chunk = vec![b' '; 64 * 1024];
    let mut sent = 0;
    while sent < total {
        let frame = [
            format!("{:x}\r\n", chunk.len()).into_bytes(),
            chunk.clone(),
            b"\r\n".to_vec(),
        ]
        .concat();
        if s.write_all(&frame).await.is_err() {
            break;
        }
        sent += chunk.len();
    }
    let _ = s.write_all(b"0\r\n\r\n").await;
    let mut buf = vec![0u8; 4096];
    let n = within(10, s.read(&mut buf)).await.unwrap_or(0);
    let text = String::from_utf8_lossy(&buf[..n]);
    text.split_whitespace().nth(1).and_then(|c| c.parse().ok())
}

#[tokio::test]
async fn deeply_nested_json_is_refused() {
    let (d, before) = seeded().await;
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let (status, r) = d.post_bytes(deep.into_bytes()).await;
    assert_eq!((status, r["error"]["code"].clone()), (400, json!(-32700)));
    // Nested inside the arguments, just under the parser's depth limit: a type error.
    let mut v = json!("leaf");
    for _ in 0..100 {
        v = json!({ "n": v });
    }
    refused(
        &d,
        "set_note",
        json!({"key": "k", "value": v}),
        "value: must be a string, got an object",
    )
    .await;
    unharmed(&d, &before).await;
}

#[tokio::test]
async fn invalid_utf8_is_a_parse_error() {
    let (d, before) = seeded().await;
    let mut body = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"set_note","arguments":{"key":"k","value":""#.to_vec();
    body.extend_from_slice(&[0xff, 0xfe, 0xc3]);
    body.extend_from_slice(br#""}}}"#);
    let (status, r) = d.post_bytes(body).await;
    assert_eq!((status, r["error"]["code"].clone()), (400, json!(-32700)));
    unharmed(&d, &before).await;
}

#[tokio::test]
async fn nul_and_control_characters_in_names_are_refused() {
    let (d, before) = seeded().await;
    for bad in [
        "a\u{0}b",
        "line\nbreak",
        "tab\there",
        "\u{1b}[31m",
        "del\u{7f}",
    ] {
        refused(
            &d,
            "lock_resource",
            json!({"name": bad, "agent_id": "a"}),
            "name: must not contain control characters",
        )
        .await;
        refused(
            &d,
            "set_note",
            json!({"key": bad, "value": "v"}),
            "key: must not contain control characters",
        )
        .await;
        refused(
            &d,
            "register_agent",
            json!({"agent_id": bad}),
            "agent_id: must not contain control characters",
        )
        .await;
    }
    refused(
        &d,
        "set_note",
        json!({"key": "", "value": "v"}),
        "key: must not be empty",
    )
    .await;
    unharmed(&d, &before).await;
}

#[tokio::test]
async fn over_long_names_and_values_are_refused() {
    let (d, before) = seeded().await;
    let long = "n".repeat(513);
    refused(
        &d,
        "lock_resource",
        json!({"name": long, "agent_id": "a"}),
        "name: must be at most 512 bytes",
    )
    .await;
    refused(
        &d,
        "push_task",
        json!({"queue": "q", "payload": "p".repeat(256 * 1024 + 1)}),
        "payload: must be at most 262144 bytes",
    )
    .await;
    refused(
        &d,
        "set_note",
        json!({"key": "k", "value": "v".repeat(256 * 1024 + 1)}),
        "value: must be at most 262144 bytes",
    )
    .await;
    // NUL is refused on both backends alike (PostgreSQL's TEXT cannot hold it).
    refused(
        &d,
        "set_note",
        json!({"key": "k", "value": "a\u{0}b"}),
        "value: must not contain the NUL character",
    )
    .await;
    refused(
        &d,
        "push_task",
        json!({"queue": "q", "payload": "\u{0}"}),
        "payload: must not contain the NUL character",
    )
    .await;
    // A huge unknown argument name or tool name is not echoed back whole.
    refused(
        &d,
        "set_note",
        json!({"key": "k", "value": "v", "z".repeat(100_000): 1}),
        "is not an argument of this tool",
    )
    .await;
    let (_, r) = d.rpc(call_body(&"t".repeat(100_000), json!({}))).await;
    let msg = r["error"]["message"].as_str().unwrap_or("");
    assert!(
        msg.contains("unknown tool") && msg.len() < 1024,
        "{} bytes",
        msg.len()
    );
    unharmed(&d, &before).await;
}

#[tokio::test]
async fn negative_and_huge_ttls_and_waits_are_refused_or_capped() {
    let (d, before) = seeded().await;
    for ttl in [
        json!(-1),
        json!(0),
        json!(2_592_001),
        json!(1e300),
        json!(i64::MIN),
    ] {
        refused(
            &d,
            "lock_resource",
            json!({"name": "y", "agent_id": "a", "ttl_seconds": ttl}),
            "ttl_seconds",
        )
        .await;
    }
    refused(
        &d,
        "set_note",
        json!({"key": "k", "value": "w", "ttl_minutes": i64::MAX}),
        "ttl_minutes: is far too large",
    )
    .await;
    refused(
        &d,
        "register_agent",
        json!({"agent_id": "a", "ttl_seconds": -5}),
        "ttl_seconds: must be between 1 and 2592000",
    )
    .await;
    refused(
        &d,
        "claim_next_task",
        json!({"queue": "q", "agent_id": "a", "lease_seconds": 0}),
        "lease_seconds",
    )
    .await;
    refused(
        &d,
        "lock_resource",
        json!({"name": "y", "agent_id": "a", "wait_seconds": -1}),
        "wait_seconds: must be 0 or more",
    )
    .await;
    refused(
        &d,
        "wait_for_event",
        json!({"name": "e", "wait_seconds": -100}),
        "wait_seconds: must be 0 or more",
    )
    .await;
    refused(
        &d,
        "wait_for_event",
        json!({"name": "e", "last_seen_generation": -1}),
        "last_seen_generation: must be 0 or more",
    )
    .await;
    unharmed(&d, &before).await;
    // A huge wait is capped at 50 s, not refused: on a lock held by someone else it parks, and the
    // caller that gives up leaves the line (checked through list_locks' waiter count).
    let parked = tokio::time::timeout(
        Duration::from_millis(500),
        d.call(
            "lock_resource",
            json!({"name": "x", "agent_id": "b", "wait_seconds": 1_000_000_000_i64}),
        ),
    )
    .await;
    assert!(
        parked.is_err(),
        "a capped wait should park, not answer: {parked:?}"
    );
    within(10, async {
        loop {
            let locks = d.call("list_locks", json!({})).await;
            if locks[0]["waiters"] == json!(0) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    unharmed(&d, &before).await;
}

#[tokio::test]
async fn unknown_tools_and_methods_are_refused() {
    let (d, before) = seeded().await;
    let (status, r) = d.rpc(call_body("drop_database", json!({}))).await;
    assert_eq!(status, 200);
    assert_eq!(r["error"]["code"], json!(-32602), "{r}");
    assert!(r["error"]["message"]
        .as_str()
        .unwrap()
        .contains("unknown tool: drop_database"));
    let (_, r) = d
        .rpc(json!({"jsonrpc": "2.0", "id": 1, "method": "tools/destroy", "params": {}}))
        .await;
    assert_eq!(r["error"]["code"], json!(-32601), "{r}");
    refused(
        &d,
        "lock_resource",
        json!({"name": "x", "agent_id": "a", "wait_second": 5}),
        "wait_second: is not an argument of this tool",
    )
    .await;
    unharmed(&d, &before).await;
}

#[tokio::test]
async fn missing_or_wrong_token_gets_401() {
    let (d, before) = seeded().await;
    let body = call_body("set_note", json!({"key": "k", "value": "stolen"})).to_string();
    for auth in [
        None,
        Some("Bearer wrong"),
        Some("Bearer "),
        Some("Basic Zm9vOmJhcg=="),
    ] {
        let mut req = d
            .http
            .post(&d.url)
            .header("Content-Type", "application/json")
            .body(body.clone());
        if let Some(a) = auth {
            req = req.header("Authorization", a);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status().as_u16(), 401, "{auth:?}");
        assert_eq!(r.headers()["www-authenticate"], "Bearer");
        let v: Value = r.json().await.unwrap();
        assert!(v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("bearer token"));
    }
    // Almost the right token: one character off.
    let mut almost = d.token.clone();
    let last = almost.pop().unwrap();
    almost.push(if last == 'a' { 'b' } else { 'a' });
    let r = d
        .http
        .post(&d.url)
        .bearer_auth(almost)
        .header("Content-Type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    unharmed(&d, &before).await;
}

#[tokio::test]
async fn foreign_origin_or_host_gets_403() {
    let (d, before) = seeded().await;
    let body = call_body("set_note", json!({"key": "k", "value": "stolen"})).to_string();
    let send = |name: &'static str, value: &'static str| {
        d.http
            .post(&d.url)
            .bearer_auth(&d.token)
            .header("Content-Type", "application/json")
            .header(name, value)
            .body(body.clone())
            .send()
    };
    for (name, value) in [
        ("Origin", "https://evil.example.com"),
        ("Origin", "http://127.0.0.1.evil.com"),
        ("Origin", "null"),
        ("Host", "evil.example.com"),
        ("Host", "attacker.test:27183"),
    ] {
        let r = send(name, value).await.unwrap();
        assert_eq!(r.status().as_u16(), 403, "{name}: {value}");
        let v: Value = r.json().await.unwrap();
        assert!(v["error"]["message"].as_str().unwrap().contains("loopback"));
    }
    // A loopback page is allowed.
    let r = send("Origin", "http://localhost:3000").await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let v: Value = r.json().await.unwrap();
    assert_ne!(v["result"]["isError"], json!(true));
    // ... and it did write; put the note back the way it was.
    d.call("set_note", json!({"key": "k", "value": "v"})).await;
    unharmed(&d, &before).await;
}

/// Open file descriptors of a process.
fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|r| r.count())
        .unwrap_or(0)
}

/// Lets this test process open a few thousand sockets.
fn raise_own_fd_limit(want: u64) {
    // SAFETY: getrlimit/setrlimit on a local struct.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < want {
            lim.rlim_cur = want.min(lim.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_connections_are_bounded_with_a_clear_503() {
    const CAP: usize = 64;
    const CONNECTIONS: usize = 2_000;
    raise_own_fd_limit(8_192);
    let d = Daemon::start_env(&[("AIRLOCK_MAX_IN_FLIGHT", "64")]).await;
    d.call(
        "lock_resource",
        json!({"name": "x", "agent_id": "holder", "ttl_seconds": 600}),
    )
    .await;
    let before = snapshot(&d).await;
    let fds_before = fd_count(d.pid());
    // Every request parks on an event for 3 s, each on its own connection (an event wait leaves
    // no place in line behind, so the state after can be compared with the state before).
    let mut tasks = Vec::new();
    for i in 0..CONNECTIONS {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .unwrap();
        let url = d.url.clone();
        let token = d.token.clone();
        tasks.push(tokio::spawn(async move {
            let body = call_body(
                "wait_for_event",
                json!({"name": format!("e{}", i % 7), "wait_seconds": 3}),
            );
            let r = client
                .post(&url)
                .bearer_auth(token)
                .header("Content-Type", "application/json")
                .body(body.to_string())
                .send()
                .await;
            match r {
                Ok(r) => {
                    let status = r.status().as_u16();
                    let v: Value = r.json().await.unwrap_or(Value::Null);
                    (status, v)
                }
                Err(e) => (0, json!(e.to_string())),
            }
        }));
    }
    let pid = d.pid();
    let sampler = tokio::spawn(async move {
        let mut peak = 0;
        for _ in 0..400 {
            peak = peak.max(fd_count(pid));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        peak
    });
    let mut by_status: std::collections::BTreeMap<u16, usize> = Default::default();
    for t in tasks {
        let (status, v) = within(60, t).await.unwrap();
        *by_status.entry(status).or_default() += 1;
        if status == 503 {
            assert_eq!(v["error"]["code"], json!(-32003), "{v}");
            // Turned away by the request cap (64) or, past it, by the connection cap.
            let message = v["error"]["message"].as_str().unwrap();
            assert!(
                message.contains("the cap is 64") || message.contains("too many open connections"),
                "{message}"
            );
        }
    }
    let fds_peak = sampler.await.unwrap();
    eprintln!("statuses: {by_status:?}; daemon fds: {fds_before} before, {fds_peak} peak");
    // At most CAP parked (and timed out with 200); the rest were turned away at once.
    let ok = by_status.get(&200).copied().unwrap_or(0);
    let busy = by_status.get(&503).copied().unwrap_or(0);
    assert!(ok <= CAP, "{ok} requests were let in past a cap of {CAP}");
    assert!(busy >= CONNECTIONS - CAP - 50, "{by_status:?}");
    assert_eq!(ok + busy, CONNECTIONS, "{by_status:?}");
    assert!(d.healthy().await);
    // The connections are gone again: no descriptor leak.
    within(30, async {
        while fd_count(d.pid()) > fds_before + 8 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    unharmed(&d, &before).await;
}

/// Connections that never send a request still hold a descriptor each, and opening one needs no
/// token, but they cannot lock a client out: once the cap (the request cap + 256) is full, a new
/// connection takes the place of the oldest that has not authenticated (after it has had a
/// few seconds to send its request: `EVICTABLE_AFTER`), and the authenticated call is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_cannot_take_the_place_of_a_client() {
    raise_own_fd_limit(8_192);
    let d = Daemon::start_env(&[("AIRLOCK_MAX_IN_FLIGHT", "64")]).await;
    let cap = 64 + airlock::listener::FD_RESERVE;
    let addr = d
        .url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let fds_before = fd_count(d.pid());
    let mut idle = Vec::new();
    for _ in 0..cap {
        idle.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
    }
    // Let the daemon accept them all, and let them age past the grace a new connection gets.
    within(30, async {
        while fd_count(d.pid()) < fds_before + cap {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    tokio::time::sleep(airlock::listener::EVICTABLE_AFTER + Duration::from_millis(500)).await;
    let r = reqwest::Client::new()
        .post(&d.url)
        .bearer_auth(&d.token)
        .header("Content-Type", "application/json")
        .body(call_body("list_locks", json!({})).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert!(d.healthy().await);
    // The descriptors stay bounded by the cap: one idle connection was closed per newcomer (a few
    // may be closing still).
    let held = fd_count(d.pid()) - fds_before;
    assert!(held <= cap + 8, "{held} descriptors for a cap of {cap}");
    drop(idle);
    d.call("list_locks", json!({})).await;
}
