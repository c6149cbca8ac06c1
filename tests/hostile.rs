//! An attacker on the same machine, through the real binary: one test per class of issue #14.
//! Slow and silent sockets, symlinked and foreign state files, weak tokens, a loose request edge,
//! hostile values printed by the CLI, and the list tools' bounded pages with the storage quota.
//! Every refused attempt changes nothing.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::{airlock_bin, serve_refused_sqlite, within, Daemon};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn addr(d: &Daemon) -> String {
    d.url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .trim_end_matches("/mcp")
        .to_string()
}

fn tool_call(tool: &str, args: Value) -> String {
    json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
           "params": {"name": tool, "arguments": args}})
    .to_string()
}

/// Reads until the peer closes (or fails); returns what arrived.
async fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// Reads one HTTP/1.1 response with a Content-Length body; returns (status, head, body).
async fn read_response(s: &mut TcpStream) -> (u16, String, String) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..end]).to_string();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            if got.len() >= end + 4 + len {
                let body = String::from_utf8_lossy(&got[end + 4..end + 4 + len]).to_string();
                let status = head[9..12].parse().unwrap();
                return (status, head, body);
            }
        }
        let n = s.read(&mut buf).await.expect("read");
        assert!(
            n > 0,
            "closed mid-response: {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
}

/// Sends `raw` on a fresh connection and reads the whole answer (the request says close).
async fn raw(d: &Daemon, raw: &str) -> (u16, Value) {
    let mut s = TcpStream::connect(addr(d)).await.unwrap();
    s.write_all(raw.as_bytes()).await.unwrap();
    let text = String::from_utf8_lossy(&within(30, read_to_close(&mut s)).await).to_string();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP answer");
    let status = head[9..12].parse().unwrap();
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    (
        status,
        serde_json::from_str(&body).unwrap_or(Value::String(body)),
    )
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        s = &rest[n + 2..];
    }
    out
}

/// A POST of `body` with the given extra header lines (each without CRLF).
fn post(d: &Daemon, headers: &[String], body: &str) -> String {
    let mut r = format!(
        "POST / HTTP/1.1\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n",
        d.token,
        body.len()
    );
    for h in headers {
        r.push_str(h);
        r.push_str("\r\n");
    }
    r.push_str("\r\n");
    r.push_str(body);
    r
}

fn host(d: &Daemon) -> String {
    format!("Host: {}", addr(d))
}

async fn note_absent(d: &Daemon, key: &str) {
    let v = d.call("get_note", json!({"key": key})).await;
    assert_eq!(v["found"], json!(false), "{key} was written: {v}");
}

// ---- 1. Slow, partial and idle connections ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_slow_and_idle_connections_are_closed_by_their_deadlines() {
    let d = Daemon::start_env(&[
        ("AIRLOCK_HEADER_TIMEOUT_MS", "300"),
        ("AIRLOCK_BODY_TIMEOUT_MS", "300"),
        ("AIRLOCK_IDLE_TIMEOUT_MS", "600"),
    ])
    .await;
    // Half a request line, then nothing: closed without an answer.
    let mut s = TcpStream::connect(addr(&d)).await.unwrap();
    s.write_all(b"POST / HT").await.unwrap();
    assert!(within(30, read_to_close(&mut s)).await.is_empty());

    // A silent connection: closed too.
    let mut s = TcpStream::connect(addr(&d)).await.unwrap();
    assert!(within(30, read_to_close(&mut s)).await.is_empty());

    // Slowloris: a header a byte at a time, each well within any per-read timeout. The head as
    // a whole is late, so the connection is closed long before the 600 bytes are sent.
    let mut s = TcpStream::connect(addr(&d)).await.unwrap();
    let slow = format!(
        "GET /healthz HTTP/1.1\r\n{}\r\nX-Pad: {}",
        host(&d),
        "a".repeat(560)
    );
    let sent = within(120, async {
        let mut sent = 0;
        for b in slow.bytes() {
            if s.write_all(&[b]).await.is_err() {
                break;
            }
            sent += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        sent
    })
    .await;
    assert!(
        sent < slow.len(),
        "all {sent} bytes were accepted one by one"
    );

    // A body that stops half-way: 408, as JSON-RPC, and the connection is closed.
    let mut s = TcpStream::connect(addr(&d)).await.unwrap();
    let head = format!(
        "POST / HTTP/1.1\r\n{}\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\n\
         Content-Length: 100\r\n\r\n{{\"jsonrpc\"",
        host(&d),
        d.token
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let (status, _, body) = within(30, read_response(&mut s)).await;
    assert_eq!(status, 408, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["code"], json!(-32600), "{v}");
    assert!(within(30, read_to_close(&mut s)).await.is_empty());

    // A kept-alive connection: a parked call longer than the idle and header deadlines is
    // answered, the connection serves another request, and is closed once idle.
    let mut s = TcpStream::connect(addr(&d)).await.unwrap();
    let body = tool_call("wait_for_event", json!({"name": "e", "wait_seconds": 2}));
    let req = format!(
        "POST / HTTP/1.1\r\n{}\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        host(&d),
        d.token,
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let (status, _, body) = within(30, read_response(&mut s)).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("fired"), "{body}");
    let again = format!("GET /healthz HTTP/1.1\r\n{}\r\n\r\n", host(&d));
    s.write_all(again.as_bytes()).await.unwrap();
    let (status, _, _) = within(30, read_response(&mut s)).await;
    assert_eq!(status, 200);
    assert!(within(30, read_to_close(&mut s)).await.is_empty());
    assert!(d.healthy().await);
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

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|r| r.count())
        .unwrap_or(0)
}

/// 2,000 silent sockets against a cap of 200 places (`AIRLOCK_MAX_CONNECTIONS`, so the test
/// needs few descriptors): `/healthz` and an authenticated call are still answered, while the
/// daemon holds no more than the cap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_silent_sockets_do_not_lock_out_clients() {
    raise_own_fd_limit(8_192);
    let d = Daemon::start_env(&[
        ("AIRLOCK_MAX_CONNECTIONS", "200"),
        // Long enough that no silent socket is closed by its deadline during the test.
        ("AIRLOCK_HEADER_TIMEOUT_MS", "120000"),
    ])
    .await;
    let fds_before = fd_count(d.pid());
    let mut silent = Vec::new();
    for _ in 0..2_000 {
        if let Ok(Ok(s)) =
            tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(addr(&d))).await
        {
            silent.push(s);
        }
    }
    assert!(silent.len() >= 1_000, "only {} connected", silent.len());
    // Past the time a new connection gets to send its request, the silent ones give way.
    tokio::time::sleep(airlock::listener::EVICTABLE_AFTER + Duration::from_millis(500)).await;
    assert!(within(30, d.healthy()).await, "/healthz was locked out");
    let v = within(30, d.call("increment_counter", json!({"name": "c"}))).await;
    assert_eq!(v, json!({"value": 1}));
    // Places are bounded: the cap, plus those being turned away.
    let held = fd_count(d.pid()) - fds_before;
    assert!(
        held <= 200 + airlock::listener::MAX_REJECTING + 8,
        "{held} descriptors"
    );
    drop(silent);
}

// ---- 3. State files: links, foreign and loose homes ----

/// A fresh private home inside a temporary directory, and that directory.
fn new_home() -> (tempfile::TempDir, std::path::PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    std::fs::create_dir(&home).unwrap();
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700)).unwrap();
    (tmp, home)
}

fn bystander(dir: &Path, name: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, "someone else's file\n").unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
    p
}

fn untouched(p: &Path) {
    assert_eq!(
        std::fs::read_to_string(p).unwrap(),
        "someone else's file\n",
        "{} was written",
        p.display()
    );
    assert_eq!(
        std::fs::metadata(p).unwrap().mode() & 0o777,
        0o644,
        "{} was chmodded",
        p.display()
    );
}

async fn refused(home: &Path, expect: &[&str]) -> String {
    let out = serve_refused_sqlite(home, "127.0.0.1:0").await;
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success());
    for e in expect {
        assert!(stderr.contains(e), "expected {e:?} in: {stderr}");
    }
    stderr
}

#[tokio::test]
async fn symlinked_and_hard_linked_state_files_are_refused_and_their_targets_untouched() {
    for file in [
        "token",
        "daemon.lock",
        "state.db",
        "state.db-wal",
        "state.db-shm",
    ] {
        let (tmp, home) = new_home();
        let target = bystander(tmp.path(), "target");
        std::os::unix::fs::symlink(&target, home.join(file)).unwrap();
        refused(&home, &[file, "symbolic link"]).await;
        untouched(&target);
    }
    // A link to a missing path: nothing is created at its target.
    let (tmp, home) = new_home();
    let missing = tmp.path().join("elsewhere.db");
    std::os::unix::fs::symlink(&missing, home.join("state.db")).unwrap();
    refused(&home, &["state.db", "symbolic link"]).await;
    assert!(
        !missing.exists(),
        "the database was created at the link's target"
    );
    // A hard link to someone's file under the token's name.
    let (tmp, home) = new_home();
    let target = bystander(tmp.path(), "target");
    std::fs::hard_link(&target, home.join("token")).unwrap();
    refused(&home, &["token", "hard links"]).await;
    untouched(&target);
}

#[tokio::test]
async fn a_home_of_another_user_or_open_to_others_is_refused() {
    let (_tmp, home) = new_home();
    let token = home.join("token");
    std::fs::write(&token, "0123456789abcdef0123456789abcdef0123456789abcdef").unwrap();
    std::os::unix::fs::chown(&token, Some(65534), Some(65534)).unwrap();
    std::os::unix::fs::chown(&home, Some(65534), Some(65534)).unwrap();
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o777)).unwrap();
    refused(&home, &["belongs to user id 65534", "AIRLOCK_HOME"]).await;
    assert_eq!(std::fs::metadata(&home).unwrap().mode() & 0o777, 0o777);
    assert!(!home.join("daemon.lock").exists());

    let (_tmp, home) = new_home();
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o777)).unwrap();
    refused(&home, &["written by other users", "0777"]).await;
    // A token file of another user in an own home is refused too.
    let (_tmp, home) = new_home();
    std::fs::write(home.join("token"), "0123456789abcdef0123456789abcdef").unwrap();
    std::os::unix::fs::chown(home.join("token"), Some(65534), None).unwrap();
    refused(&home, &["token", "another user"]).await;
}

// ---- 4. Weak tokens ----

#[tokio::test]
async fn weak_tokens_are_refused() {
    let (_tmp, home) = new_home();
    std::fs::write(home.join("token"), "x\n").unwrap();
    refused(&home, &["token", "128 bits"]).await;
    std::fs::write(home.join("token"), "a".repeat(40)).unwrap();
    refused(&home, &["different characters"]).await;

    let (_tmp, home) = new_home();
    let out = within(
        30,
        tokio::process::Command::new(airlock_bin())
            .args(["serve", "--listen", "127.0.0.1:0"])
            .env("AIRLOCK_HOME", &home)
            .env("AIRLOCK_TOKEN", "x")
            .env_remove("AIRLOCK_STORE")
            .stdin(Stdio::null())
            .output(),
    )
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("AIRLOCK_TOKEN") && stderr.contains("128 bits"),
        "{stderr}"
    );
}

// ---- 5. The request edge ----

#[tokio::test]
async fn duplicate_or_missing_host_and_origin_are_refused() {
    let d = Daemon::start().await;
    let body = tool_call("set_note", json!({"key": "k", "value": "v"}));
    let cases: Vec<(Vec<String>, u16)> = vec![
        (vec![host(&d), "Host: evil.example.com".into()], 400),
        (vec!["Host: evil.example.com".into(), host(&d)], 400),
        (
            vec![
                host(&d),
                "Origin: http://localhost".into(),
                "Origin: https://evil.example.com".into(),
            ],
            400,
        ),
        (vec![], 400),
    ];
    for (headers, want) in cases {
        let (status, v) = raw(&d, &post(&d, &headers, &body)).await;
        assert_eq!(status, want, "{headers:?}: {v}");
        assert!(v["error"]["message"].is_string(), "{v}");
    }
    // HTTP/1.0 without Host, too.
    let r = post(&d, &[], &body).replacen("HTTP/1.1", "HTTP/1.0", 1);
    let (status, v) = raw(&d, &r).await;
    assert_eq!(status, 400, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("Host"));
    note_absent(&d, "k").await;
    // The same request with one Host runs.
    let (status, v) = raw(&d, &post(&d, &[host(&d)], &body)).await;
    assert_eq!(status, 200, "{v}");
}

#[tokio::test]
async fn duplicate_keys_and_malformed_json_rpc_get_json_rpc_errors() {
    let d = Daemon::start().await;
    let h = [host(&d)];
    let dup = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_note","name":"set_note","arguments":{"key":"k","value":"v"}}}"#;
    let deep = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"set_note","arguments":{"key":"k","value":"v","key":"k2"}}}"#;
    for body in [dup, deep] {
        let (status, v) = raw(&d, &post(&d, &h, body)).await;
        assert_eq!(status, 400, "{v}");
        assert_eq!(v["error"]["code"], json!(-32600), "{v}");
        assert!(v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("duplicate key"));
    }
    note_absent(&d, "k").await;
    note_absent(&d, "k2").await;
    for body in [
        r#"{"jsonrpc":"1.0","id":1,"method":"ping"}"#,
        r#"{"jsonrpc":"2.0","id":null,"method":"ping"}"#,
        r#"{"jsonrpc":"2.0","id":{"a":1},"method":"ping"}"#,
        r#"{"jsonrpc":"2.0","id":1.5,"method":"ping"}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":["ping"]}"#,
        r#"{"jsonrpc":"2.0","id":1}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":7}"#,
    ] {
        let (status, v) = raw(&d, &post(&d, &h, body)).await;
        assert_eq!(status, 400, "{body}: {v}");
        assert_eq!(v["error"]["code"], json!(-32600), "{body}: {v}");
        assert_eq!(v["jsonrpc"], json!("2.0"));
    }
}

#[tokio::test]
async fn huge_inputs_are_never_echoed_whole() {
    let d = Daemon::start().await;
    let h = [host(&d)];
    let method = "m".repeat(1 << 20);
    let body = format!(r#"{{"jsonrpc":"2.0","id":1,"method":"{method}"}}"#);
    // Over the 1 MiB body limit: 413, short.
    let (status, v) = raw(&d, &post(&d, &h, &body)).await;
    assert_eq!(status, 413);
    assert!(v.to_string().len() < 1024);
    let method = "m".repeat(100_000);
    let body = format!(r#"{{"jsonrpc":"2.0","id":1,"method":"{method}"}}"#);
    let (_, v) = raw(&d, &post(&d, &h, &body)).await;
    assert_eq!(
        v["error"]["code"],
        json!(-32601),
        "{}",
        &v.to_string()[..200]
    );
    assert!(v.to_string().len() < 1024, "{} bytes", v.to_string().len());
    let version = "9".repeat(60_000);
    let (status, v) = raw(
        &d,
        &post(
            &d,
            &[host(&d), format!("MCP-Protocol-Version: {version}")],
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#,
        ),
    )
    .await;
    assert_eq!(status, 400);
    assert!(v.to_string().len() < 1024, "{} bytes", v.to_string().len());
    // A long tool name and key are quoted clipped.
    let (_, v) = raw(
        &d,
        &post(
            &d,
            &h,
            &tool_call(&"t".repeat(10_000), json!({"key": "k".repeat(600)})),
        ),
    )
    .await;
    assert!(v.to_string().len() < 1024, "{} bytes", v.to_string().len());
}

// ---- 6. The CLI prints hostile values safely; names cannot hide characters ----

#[tokio::test]
async fn the_cli_prints_one_record_per_line_with_control_characters_escaped() {
    let d = Daemon::start().await;
    let forged = "v1\nk2\tforged\u{1b}]52;c;cHduZWQ=\u{7}\u{1b}[2J";
    d.call("set_note", json!({"key": "k1", "value": forged}))
        .await;
    d.call("set_note", json!({"key": "k3", "value": "plain"}))
        .await;
    let out = within(30, d.cli(["note", "list"]).output()).await.unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success());
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout:?}");
    assert!(
        !stdout.contains('\u{1b}') && !stdout.contains('\u{7}'),
        "{stdout:?}"
    );
    assert_eq!(
        lines[0],
        "k1\tv1\\nk2\\tforged\\e]52;c;cHduZWQ=\\u{7}\\e[2J"
    );
    assert_eq!(lines[1], "k3\tplain");
    // One value alone, into a pipe, is printed byte for byte (scripts read it back exactly).
    let out = d.cli(["note", "get", "k1"]).output().await.unwrap();
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        format!("{forged}\n")
    );
    // Names that differ only by an invisible or bidirectional character are refused.
    for key in ["ad\u{200b}min", "x\u{202e}y", "\u{feff}k"] {
        let e = d
            .call_err("set_note", json!({"key": key, "value": "v"}))
            .await;
        assert!(e.contains("key") && e.contains("invisible"), "{e}");
    }
    let e = d
        .call_err(
            "lock_resource",
            json!({"name": "deploy\u{2066}", "agent_id": "a"}),
        )
        .await;
    assert!(e.contains("name"), "{e}");
}

// ---- 7. Messages name the real paths ----

#[tokio::test]
async fn the_401_names_the_token_file_of_this_home() {
    let d = Daemon::start().await;
    let r = reqwest::Client::new()
        .post(&d.url)
        .header("Content-Type", "application/json")
        .body(tool_call("list_locks", json!({})))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let v: Value = r.json().await.unwrap();
    let m = v["error"]["message"].as_str().unwrap();
    assert!(
        m.contains(&d.home.join("token").display().to_string()),
        "{m}"
    );
}

// ---- 2. Bounded list answers and the storage quota ----

/// Follows `next_cursor` from `first` until the last page; returns every item.
async fn all_pages(d: &Daemon, tool: &str, mut args: Value) -> Vec<Value> {
    let mut out = Vec::new();
    loop {
        let page = d.call(tool, args.clone()).await;
        let items = page["items"].as_array().unwrap_or_else(|| panic!("{page}"));
        assert!(items.len() <= args["limit"].as_u64().unwrap_or(1000) as usize);
        out.extend(items.iter().cloned());
        match &page["next_cursor"] {
            Value::Null => return out,
            Value::String(c) => args["cursor"] = json!(c),
            other => panic!("next_cursor {other}"),
        }
    }
}

#[tokio::test]
async fn the_list_tools_answer_bounded_pages() {
    let d = Daemon::start().await;
    for i in 0..25 {
        let k = format!("k{i:02}");
        d.call("set_note", json!({"key": k, "value": "v"})).await;
        d.call(
            "lock_resource",
            json!({"name": k, "agent_id": format!("a{i:02}")}),
        )
        .await;
        d.call("push_task", json!({"queue": "q", "payload": k}))
            .await;
        d.call("register_agent", json!({"agent_id": format!("a{i:02}")}))
            .await;
    }
    // No limit and it fits: the contract's plain array.
    let all = d.call("list_notes", json!({})).await;
    assert_eq!(all.as_array().unwrap().len(), 25);
    for (tool, key, extra) in [
        ("list_notes", "key", json!({})),
        ("list_locks", "name", json!({})),
        ("list_agents", "agent_id", json!({})),
        ("list_tasks", "id", json!({"queue": "q"})),
    ] {
        let mut args = extra.clone();
        args["limit"] = json!(10);
        let items = all_pages(&d, tool, args).await;
        assert_eq!(items.len(), 25, "{tool}");
        let keys: Vec<String> = items.iter().map(|i| i[key].to_string()).collect();
        let mut sorted = keys.clone();
        sorted.dedup();
        assert_eq!(sorted.len(), 25, "{tool}: no item twice");
    }
    // values:false leaves the values out.
    let page = d
        .call("list_notes", json!({"limit": 3, "values": false}))
        .await;
    assert_eq!(page["items"].as_array().unwrap().len(), 3);
    assert!(page["items"][0].get("value").is_none(), "{page}");
    assert_eq!(page["items"][0]["key"], json!("k00"));
    // A limit given but everything fits: a page whose next_cursor is null.
    let page = d.call("list_locks", json!({"limit": 100})).await;
    assert_eq!(page["items"].as_array().unwrap().len(), 25);
    assert_eq!(page["next_cursor"], Value::Null);
    // Bad pages are refused with the field and the rule.
    for (tool, args, field) in [
        ("list_notes", json!({"limit": 0}), "limit"),
        ("list_notes", json!({"limit": 10_001}), "limit"),
        (
            "list_tasks",
            json!({"queue": "q", "cursor": "abc"}),
            "cursor",
        ),
        ("list_locks", json!({"cursor": "a\nb"}), "cursor"),
    ] {
        let e = d.call_err(tool, args).await;
        assert!(e.contains(field), "{tool}: {e}");
    }
}

#[tokio::test]
async fn big_lists_are_cut_into_pages_even_unasked_and_status_shows_previews() {
    let d = Daemon::start().await;
    let value = "x".repeat(256 * 1024);
    // 70 values of 256 KiB: more than one page's 16 MiB.
    for i in 0..70 {
        d.call(
            "set_note",
            json!({"key": format!("n{i:02}"), "value": value}),
        )
        .await;
    }
    let first = d.call("list_notes", json!({})).await;
    let items = first["items"]
        .as_array()
        .expect("a page, not the whole list");
    assert!(items.len() < 70 && !items.is_empty());
    assert!(first["next_cursor"].is_string());
    let mut args = json!({"limit": 1000});
    let all = all_pages(&d, "list_notes", args.take()).await;
    assert_eq!(all.len(), 70);
    let keys = d
        .call("list_notes", json!({"values": false, "limit": 100}))
        .await;
    assert_eq!(keys["items"].as_array().unwrap().len(), 70);
    // The CLI pages through the whole list.
    let out = within(60, d.cli(["note", "list"]).output()).await.unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8(out.stdout).unwrap().lines().count(), 70);
    let status: Value = d
        .http
        .get(format!("{}/status", d.url.trim_end_matches('/')))
        .bearer_auth(&d.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // Status reads each value's first 121 characters only (the store cuts them), so all 70
    // fit one page, each shown as 120 characters and `…`.
    assert!(status.get("truncated").is_none(), "{}", status["truncated"]);
    let shown = status["notes"].as_array().unwrap();
    assert_eq!(shown.len(), 70);
    assert!(shown.iter().all(|n| {
        let v = n["value"].as_str().unwrap();
        v.chars().count() == 121 && v.ends_with('…')
    }));
}

#[tokio::test]
async fn the_storage_quota_refuses_writes_whole_and_deletes_give_room_back() {
    // On both backends (AIRLOCK_TEST_BACKEND=postgres: measured by airlock.usage's triggers).
    let d = Daemon::start_env(&[("AIRLOCK_MAX_STATE_BYTES", "2097152")]).await;
    let value = "q".repeat(200 * 1024);
    let mut stored = 0;
    let refusal = loop {
        let r = d
            .call_raw(
                "set_note",
                json!({"key": format!("big{stored}"), "value": value}),
            )
            .await;
        if r["result"]["isError"] == json!(true) {
            break r["result"]["content"][0]["text"]
                .as_str()
                .unwrap()
                .to_string();
        }
        stored += 1;
        assert!(stored < 20, "2 MiB held {stored} values of 200 KiB");
    };
    assert!(
        refusal.contains("value")
            && refusal.contains("quota")
            && refusal.contains("AIRLOCK_MAX_STATE_BYTES"),
        "{refusal}"
    );
    assert!(stored >= 5, "only {stored} values of 200 KiB fit in 2 MiB");
    // Nothing of the refused write is there; tasks and swaps are refused the same way.
    note_absent(&d, &format!("big{stored}")).await;
    let e = d
        .call_err("push_task", json!({"queue": "q", "payload": value}))
        .await;
    assert!(e.contains("payload") && e.contains("quota"), "{e}");
    let e = d
        .call_err(
            "set_note_if",
            json!({"key": "big0", "expected_value": value, "new_value": format!("{value}!")}),
        )
        .await;
    assert!(e.contains("new_value") && e.contains("quota"), "{e}");
    assert_eq!(
        d.call("get_note", json!({"key": "big0"})).await["value"],
        json!(value)
    );
    let listed = d.call("list_tasks", json!({"queue": "q"})).await;
    assert_eq!(listed, json!([]));
    // Small writes unrelated to values still work, and deleting gives the room back.
    d.call("increment_counter", json!({"name": "c"})).await;
    for i in 0..stored {
        d.call("delete_note", json!({"key": format!("big{i}")}))
            .await;
    }
    d.call("set_note", json!({"key": "again", "value": value}))
        .await;
}

/// `GET /status` pages too: `limit` items per section, `truncated` naming the sections that go
/// on, `next_cursor` fetching their next page; every item is seen exactly once. Bad paging input
/// is a 400 naming the parameter. The CLI prints how to get the next page and takes it.
#[tokio::test]
async fn status_pages_through_every_section() {
    let d = Daemon::start().await;
    for i in 0..5 {
        d.call(
            "lock_resource",
            json!({"name": format!("lock{i}"), "agent_id": format!("agent{i}")}),
        )
        .await;
    }
    for i in 0..4 {
        d.call("set_note", json!({"key": format!("note{i}"), "value": "v"}))
            .await;
    }
    for i in 0..3 {
        d.call("signal_event", json!({"name": format!("event{i}")}))
            .await;
        d.call(
            "push_task",
            json!({"queue": format!("queue{i}"), "payload": "p"}),
        )
        .await;
    }
    let get = |query: String| {
        let d = &d;
        async move {
            let r = d
                .http
                .get(format!("{}/status{query}", d.url.trim_end_matches('/')))
                .bearer_auth(&d.token)
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let sections = [
        ("locks", "name"),
        ("notes", "key"),
        ("events", "name"),
        ("queues", "queue"),
    ];
    let mut seen: std::collections::BTreeMap<&str, Vec<String>> = Default::default();
    let (status, mut page) = get("?limit=2".into()).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(
        page["truncated"],
        json!(["locks", "notes", "events", "queues"]),
        "{page}"
    );
    let mut pages = 1;
    loop {
        for (section, key) in sections {
            let items = page[section].as_array().unwrap();
            assert!(items.len() <= 2, "{section}: {page}");
            for it in items {
                seen.entry(section)
                    .or_default()
                    .push(it[key].as_str().unwrap().to_string());
            }
        }
        let Some(cursor) = page["next_cursor"].as_str().map(String::from) else {
            break;
        };
        let (status, next) = get(format!("?limit=2&cursor={cursor}")).await;
        assert_eq!(status, 200, "{next}");
        page = next;
        pages += 1;
        assert!(pages <= 3, "more pages than the longest section needs");
    }
    assert_eq!(pages, 3);
    let want = |prefix: &str, n: usize| (0..n).map(|i| format!("{prefix}{i}")).collect::<Vec<_>>();
    assert_eq!(seen["locks"], want("lock", 5));
    assert_eq!(seen["notes"], want("note", 4));
    assert_eq!(seen["events"], want("event", 3));
    assert_eq!(seen["queues"], want("queue", 3));
    assert!(page.get("truncated").is_none(), "{page}");

    // Bad paging input: 400, naming the parameter.
    for (query, field) in [
        ("?limit=0", "limit"),
        ("?limit=abc", "limit"),
        ("?limit=10001", "limit"),
        ("?cursor=zz", "cursor"),
        ("?cursor=00", "cursor"),
        ("?limit=1&limit=2", "limit"),
        ("?page=2", "page"),
    ] {
        let (status, r) = get(query.into()).await;
        assert_eq!(status, 400, "{query}: {r}");
        let msg = r["error"]["message"].as_str().unwrap();
        assert!(msg.starts_with(field), "{query}: {msg}");
    }

    // The CLI says how to get the next page, and gets it.
    let cli = |args: &[&str]| {
        let mut c = d.cli(["status"]);
        c.args(args);
        async move {
            let out = c.output().await.unwrap();
            assert!(out.status.success(), "{out:?}");
            String::from_utf8(out.stdout).unwrap()
        }
    };
    let first = cli(&["--limit", "2"]).await;
    let hint = "the next page: airlock status --cursor ";
    let at = first.find(hint).unwrap_or_else(|| panic!("{first}"));
    let cursor = first[at + hint.len()..]
        .split(')')
        .next()
        .unwrap()
        .to_string();
    assert!(
        first.contains("lock1") && !first.contains("lock2"),
        "{first}"
    );
    let second = cli(&["--limit", "2", "--cursor", &cursor]).await;
    assert!(
        second.contains("lock2") && second.contains("lock3"),
        "{second}"
    );
    assert!(!second.contains("lock1"), "{second}");
}

// ---- 8. A log that nobody reads ----

/// The daemon logs every grant and release. With stderr a pipe nobody reads (a stopped pager,
/// a stuck log shipper) the pipe's buffer (64 KiB) fills after about a hundred of these lines;
/// the daemon must go on answering, dropping lines rather than stopping on a blocked write.
#[tokio::test]
async fn a_stderr_that_nobody_reads_does_not_stop_the_daemon() {
    // At `info` every grant and release is logged.
    let d = Daemon::serve()
        .log(common::Log::Unread)
        .rust_log("info")
        .start()
        .await;
    // Lines of about 600 bytes: 400 lock+unlock cycles log about 480 KB, several times the
    // pipe's buffer.
    let name = format!("log/{}", "x".repeat(480));
    for i in 0..400 {
        let cycle = async {
            let got = d
                .call("lock_resource", json!({"name": name, "agent_id": "a"}))
                .await;
            assert_eq!(got["locked"], true, "{got}");
            let freed = d
                .call("unlock_resource", json!({"name": name, "agent_id": "a"}))
                .await;
            assert_eq!(freed["released"], true, "{freed}");
        };
        if tokio::time::timeout(Duration::from_secs(20), cycle)
            .await
            .is_err()
        {
            panic!("cycle {i} got no answer: the daemon stopped on its full stderr pipe");
        }
    }
}
