//! `airlock serve` through the real binary: health check, the private state directory, the token,
//! one daemon per directory, a busy port, graceful shutdown, and a corrupt database.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use common::{airlock_bin, serve_refused, serve_refused_sqlite, tool_call, within, Daemon};
use serde_json::{json, Value};

/// `airlock serve --listen ADDR` on `home` with extra environment, stdout and stderr piped.
fn serve_cmd(home: &Path, listen: &str, env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(airlock_bin());
    cmd.args(["serve", "--listen", listen])
        .args(common::store_args(home))
        .env("AIRLOCK_HOME", home)
        .env_remove("AIRLOCK_TOKEN")
        .env_remove("AIRLOCK_LISTEN")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// A spawned daemon that is SIGKILLed when dropped, so a failing test leaves nothing running.
struct Reaped(Child);

impl std::ops::Deref for Reaped {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Reaped {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Sends SIGTERM and waits up to `secs` for the exit status; a daemon that does not exit in time
/// is killed (so a failing test leaves nothing behind) and the test fails.
async fn stop_within(d: &mut Daemon, secs: u64) -> Option<i32> {
    let mut child = d.process.take_child().expect("running daemon");
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the daemon did not exit within {secs}s of SIGTERM");
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o777
}

async fn post_status(url: &str, token: Option<&str>, body: Value) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .post(url)
        .header("Content-Type", "application/json")
        .body(body.to_string());
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await.expect("send");
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn text_of(body: &Value) -> Value {
    serde_json::from_str(body["result"]["content"][0]["text"].as_str().unwrap()).unwrap()
}

#[tokio::test]
async fn healthz_answers_without_auth_and_reveals_nothing_else() {
    let d = Daemon::start().await;
    let r = reqwest::get(format!("{}/healthz", d.url)).await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        body,
        json!({"ok": true, "version": env!("CARGO_PKG_VERSION")})
    );
    // The same unauthenticated client gets nothing from the MCP endpoint...
    let r = reqwest::Client::new()
        .post(&d.url)
        .header("Content-Type", "application/json")
        .body(tool_call(1, "list_notes", json!({})).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    // ...nor OAuth metadata, nor any other path.
    for path in [
        "/.well-known/oauth-authorization-server",
        "/.well-known/oauth-protected-resource",
        "/status",
        "/healthz/x",
    ] {
        let r = reqwest::get(format!("{}{path}", d.url)).await.unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        assert!(status == 404 || status == 401, "{path}: {status} {text}");
        assert!(!text.contains(&d.token), "{path} leaked the token");
        if path == "/status" {
            continue; // `airlock status` reads it, behind the token.
        }
        // Even with the token there is no OAuth metadata or other document to find.
        let r = reqwest::Client::new()
            .get(format!("{}{path}", d.url))
            .bearer_auth(&d.token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 404, "{path} with the token");
    }
}

#[tokio::test]
async fn state_directory_token_and_database_are_private() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    // A pre-existing directory that is too open is tightened.
    std::fs::create_dir(&home).unwrap();
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o755)).unwrap();
    // About the SQLite files too, so on SQLite whatever the backend under test.
    let mut d = Daemon::start_in_sqlite(&home).await;
    d.call("set_note", json!({"key": "k", "value": "v"})).await;

    assert_eq!(mode(&home), 0o700, "state directory mode");
    assert_eq!(mode(&home.join("token")), 0o600, "token file mode");
    assert_eq!(d.token.len(), 64, "256-bit token as hex");
    assert!(d.token.bytes().all(|b| b.is_ascii_hexdigit()));
    let mut checked = 0;
    for entry in std::fs::read_dir(&home).unwrap() {
        let p = entry.unwrap().path();
        let m = mode(&p);
        assert_eq!(m & 0o077, 0, "{} is readable by others: {m:o}", p.display());
        checked += 1;
    }
    for f in ["state.db", "state.db-wal", "state.db-shm"] {
        assert!(home.join(f).exists(), "{f} exists while serving");
    }
    assert!(checked >= 4);
    assert_eq!(d.stop(), Some(0));
}

#[tokio::test]
async fn the_token_is_reused_across_restarts() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let mut d = Daemon::start_in(&home).await;
    let first = d.token.clone();
    d.call("set_note", json!({"key": "k", "value": "v"})).await;
    assert_eq!(d.stop(), Some(0));

    let d2 = Daemon::start_in(&home).await;
    assert_eq!(
        d2.token, first,
        "the token file is not rewritten on restart"
    );
    let (status, body) = post_status(
        &d2.url,
        Some(&first),
        tool_call(1, "get_note", json!({"key": "k"})),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(text_of(&body)["value"], json!("v"));
}

#[tokio::test]
async fn airlock_token_overrides_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    // First run writes the file token.
    let mut d = Daemon::start_in(&home).await;
    let file_token = d.token.clone();
    assert_eq!(d.stop(), Some(0));

    let env_token = "env-token-0123456789abcdef";
    let mut d = Daemon::serve()
        .home(&home)
        .selected_backend()
        .env("AIRLOCK_TOKEN", env_token)
        .start()
        .await;
    let url = d.url.clone();
    let call = tool_call(1, "increment_counter", json!({"name": "c"}));
    let (status, body) = post_status(&url, Some(env_token), call.clone()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(text_of(&body), json!({"value": 1}));
    let (status, _) = post_status(&url, Some(&file_token), call.clone()).await;
    assert_eq!(
        status, 401,
        "the file token no longer works when AIRLOCK_TOKEN is set"
    );
    let (status, _) = post_status(&url, None, call).await;
    assert_eq!(status, 401);
    // The file is left as it was.
    let on_disk = std::fs::read_to_string(home.join("token")).unwrap();
    assert_eq!(on_disk.trim(), file_token);
    d.kill();
}

#[tokio::test]
async fn a_second_daemon_on_the_same_home_refuses_to_start() {
    let d = Daemon::start().await;
    d.call("set_note", json!({"key": "k", "value": "first"}))
        .await;
    let out = serve_refused(&d.home, "127.0.0.1:0").await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "second daemon exited {:?}",
        out.status
    );
    assert!(
        stderr.contains("already running") && stderr.contains(&d.home.display().to_string()),
        "unclear message: {stderr}"
    );
    let pid = d.pid();
    assert!(
        stderr.contains(&format!("pid {pid}")),
        "the message names the running daemon's pid {pid}: {stderr}"
    );
    assert!(
        out.stdout.is_empty(),
        "the refused daemon announced an address: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    // The first daemon is unaffected.
    assert_eq!(
        d.call("get_note", json!({"key": "k"})).await["value"],
        json!("first")
    );
}

#[tokio::test]
async fn a_port_in_use_gets_a_clear_message() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let tmp = tempfile::tempdir().unwrap();
    let out = serve_refused(&tmp.path().join("home"), &addr).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(&addr) && stderr.contains("already in use"),
        "unclear message: {stderr}"
    );
    assert!(out.stdout.is_empty());
    drop(busy);
}

#[tokio::test]
async fn a_bad_listen_address_gets_a_clear_message() {
    let tmp = tempfile::tempdir().unwrap();
    let out = serve_refused(&tmp.path().join("home"), "localhost-ish").await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("localhost-ish"),
        "unclear message: {stderr}"
    );
}

#[tokio::test]
async fn sigterm_answers_parked_waits_and_exits_zero() {
    let mut d = Daemon::start().await;
    let holder = d
        .call("lock_resource", json!({"name": "L", "agent_id": "holder"}))
        .await;
    assert_eq!(holder["locked"], json!(true));

    let (url, token) = (d.url.clone(), d.token.clone());
    let event_wait = tokio::spawn({
        let (url, token) = (url.clone(), token.clone());
        async move {
            post_status(
                &url,
                Some(&token),
                tool_call(
                    1,
                    "wait_for_event",
                    json!({"name": "never", "wait_seconds": 30}),
                ),
            )
            .await
        }
    });
    let lock_wait = tokio::spawn(async move {
        post_status(
            &url,
            Some(&token),
            tool_call(
                1,
                "lock_resource",
                json!({"name": "L", "agent_id": "waiter", "wait_seconds": 30}),
            ),
        )
        .await
    });
    // The lock waiter is visible in list_locks once it is parked in the daemon.
    within(10, async {
        loop {
            let locks = d.call("list_locks", json!({})).await;
            if locks[0]["waiters"].as_u64() == Some(1) {
                break;
            }
            tokio::task::yield_now().await;
        }
    })
    .await;

    let stopper = tokio::spawn(async move { stop_within(&mut d, 20).await });
    // Both parked calls are answered with their timeout answers long before their 30 s windows.
    let (status, body) = within(15, event_wait).await.unwrap();
    assert_eq!(status, 200, "{body}");
    let got = text_of(&body);
    assert_eq!(got["fired"], json!(false), "{got}");
    let (status, body) = within(15, lock_wait).await.unwrap();
    assert_eq!(status, 200, "{body}");
    let got = text_of(&body);
    assert_eq!(got["locked"], json!(false), "{got}");
    assert_eq!(got["held_by"], json!("holder"));
    let code = stopper.await.unwrap();
    assert_eq!(code, Some(0), "exit status after SIGTERM");
}

#[tokio::test]
async fn a_clean_stop_after_sigterm_keeps_state() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let mut d = Daemon::start_in(&home).await;
    d.call("set_note", json!({"key": "k", "value": "v"})).await;
    assert_eq!(d.stop(), Some(0));
    let d = Daemon::start_in(&home).await;
    assert_eq!(
        d.call("get_note", json!({"key": "k"})).await["value"],
        json!("v")
    );
}

#[tokio::test]
async fn a_garbage_state_db_is_refused_and_left_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    std::fs::create_dir(&home).unwrap();
    let garbage: Vec<u8> = (0..16384u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(home.join("state.db"), &garbage).unwrap();

    let out = serve_refused_sqlite(&home, "127.0.0.1:0").await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("state.db") && stderr.contains("corrupt"),
        "unclear message: {stderr}"
    );
    assert!(out.stdout.is_empty());
    let mut after = Vec::new();
    std::fs::File::open(home.join("state.db"))
        .unwrap()
        .read_to_end(&mut after)
        .unwrap();
    assert_eq!(after, garbage, "the corrupt file was modified");
}

#[tokio::test]
async fn a_damaged_database_is_refused_and_left_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let mut d = Daemon::start_in_sqlite(&home).await;
    // Enough rows to span several pages.
    for i in 0..50 {
        d.call(
            "set_note",
            json!({"key": format!("k{i}"), "value": "x".repeat(2000)}),
        )
        .await;
    }
    assert_eq!(d.stop(), Some(0));
    let db = home.join("state.db");
    let mut bytes = std::fs::read(&db).unwrap();
    assert!(bytes.len() > 8 * 4096, "database is {} bytes", bytes.len());
    // Keep the header page, scribble over every b-tree page after it.
    let page = u16::from_be_bytes([bytes[16], bytes[17]]) as usize;
    for b in bytes[page..].iter_mut() {
        *b = 0xA5;
    }
    std::fs::write(&db, &bytes).unwrap();

    let out = serve_refused_sqlite(&home, "127.0.0.1:0").await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "served a damaged database");
    assert!(stderr.contains("state.db"), "unclear message: {stderr}");
    assert_eq!(
        std::fs::read(&db).unwrap(),
        bytes,
        "the damaged file was modified"
    );
}

#[tokio::test]
async fn a_database_from_a_newer_airlock_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    std::fs::create_dir(&home).unwrap();
    {
        let conn = rusqlite::Connection::open(home.join("state.db")).unwrap();
        conn.execute_batch("CREATE TABLE future (x); PRAGMA user_version = 999;")
            .unwrap();
    }
    let out = serve_refused_sqlite(&home, "127.0.0.1:0").await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("999") && stderr.contains("upgrade"),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_client_stalled_mid_request_does_not_block_sigterm() {
    use tokio::io::AsyncWriteExt;
    let mut d = Daemon::start().await;
    let addr = d.url.strip_prefix("http://").unwrap().to_string();
    // Half a request head, then silence: hyper keeps waiting for the rest.
    let mut stalled = tokio::net::TcpStream::connect(&addr).await.unwrap();
    stalled
        .write_all(b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .await
        .unwrap();
    // And a request whose body never fully arrives.
    let mut slow = tokio::net::TcpStream::connect(&addr).await.unwrap();
    slow.write_all(
        format!(
            "POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {}\r\n\
             Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"jsonrpc\"",
            d.token
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    // A complete call afterwards proves both connections were accepted before the signal.
    d.call("set_note", json!({"key": "k", "value": "v"})).await;
    let code = stop_within(&mut d, 30).await;
    assert_eq!(
        code,
        Some(0),
        "exit status after SIGTERM with stalled clients"
    );
    drop((stalled, slow));
}

#[tokio::test]
async fn sigterm_right_after_the_announcement_is_a_clean_stop() {
    // A service manager may stop the daemon the moment it has started; the signal handlers must
    // already be in place when the address is announced.
    for _ in 0..5 {
        let mut d = Daemon::start().await;
        assert_eq!(
            d.stop(),
            Some(0),
            "killed by SIGTERM instead of stopping cleanly"
        );
    }
}

#[tokio::test]
async fn a_connected_rmcp_client_survives_a_daemon_restart() {
    use rmcp::model::CallToolRequestParams;
    use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
    use rmcp::transport::StreamableHttpClientTransport;
    use rmcp::ServiceExt;

    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let mut first = Daemon::start_in(&home).await;
    let url = first.url.clone();
    let token = std::fs::read_to_string(home.join("token")).unwrap();
    let cfg = StreamableHttpClientTransportConfig::with_uri(url.clone()).auth_header(token);
    let client = within(
        30,
        ().serve(StreamableHttpClientTransport::from_config(cfg)),
    )
    .await
    .expect("initialize");
    let inc = || {
        CallToolRequestParams::new("increment_counter")
            .with_arguments(json!({"name": "c"}).as_object().unwrap().clone())
    };
    let r = within(30, client.call_tool(inc())).await.unwrap();
    assert_eq!(r.structured_content, Some(json!({"value": 1})));

    // Restart on the same address; the client keeps its (stateless) connection settings.
    assert_eq!(first.stop(), Some(0));
    let listen = url.strip_prefix("http://").unwrap().to_string();
    let mut second = Daemon::serve()
        .home(&home)
        .listen(&listen)
        .selected_backend()
        .start()
        .await;
    assert_eq!(second.url, url);
    let r = within(30, client.call_tool(inc()))
        .await
        .expect("the same client works against the restarted daemon");
    assert_eq!(r.structured_content, Some(json!({"value": 2})));
    let _ = client.cancel().await;
    second.kill();
}

#[tokio::test]
async fn a_loosened_token_file_is_made_private_again_and_an_empty_one_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let mut d = Daemon::start_in(&home).await;
    let token = d.token.clone();
    assert_eq!(d.stop(), Some(0));
    std::fs::set_permissions(home.join("token"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut d = Daemon::start_in(&home).await;
    assert_eq!(d.token, token);
    assert_eq!(mode(&home.join("token")), 0o600);
    assert_eq!(d.stop(), Some(0));

    std::fs::write(home.join("token"), "  \n").unwrap();
    let out = serve_refused(&home, "127.0.0.1:0").await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "served with an empty token");
    assert!(
        stderr.contains("token") && stderr.contains("empty"),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_state_path_that_is_a_file_is_refused_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("not-a-dir");
    std::fs::write(&home, "x").unwrap();
    let out = serve_refused(&home, "127.0.0.1:0").await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("state directory") && stderr.contains("not-a-dir"),
        "{stderr}"
    );
}

#[tokio::test]
async fn sigint_stops_cleanly_and_airlock_listen_sets_the_address() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let mut cmd = Command::new(airlock_bin());
    cmd.arg("serve")
        .args(common::store_args(&home))
        .env("AIRLOCK_HOME", &home)
        .env("AIRLOCK_LISTEN", "127.0.0.1:0")
        .env_remove("AIRLOCK_TOKEN")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped());
    let mut child = Reaped(cmd.spawn().unwrap());
    let stdout = child.stdout.take().unwrap();
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        line
    })
    .await
    .unwrap();
    let url = line
        .trim()
        .strip_prefix("airlock listening on ")
        .unwrap()
        .to_string();
    assert!(
        url.starts_with("http://127.0.0.1:") && !url.ends_with(":27183"),
        "{url}"
    );
    let token = std::fs::read_to_string(home.join("token")).unwrap();
    let (status, _) = post_status(
        &url,
        Some(token.trim()),
        tool_call(1, "list_notes", json!({})),
    )
    .await;
    assert_eq!(status, 200);
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let code = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s.code();
        }
        assert!(std::time::Instant::now() < deadline, "no exit after SIGINT");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(code, Some(0));
}

#[tokio::test]
async fn logs_go_to_stderr_as_plain_text_when_not_a_terminal() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let mut cmd = serve_cmd(&home, "127.0.0.1:0", &[("RUST_LOG", "info")]);
    let mut child = Reaped(cmd.spawn().unwrap());
    let stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        line
    })
    .await
    .unwrap();
    assert!(
        line.starts_with("airlock listening on http://127.0.0.1:"),
        "{line:?}"
    );
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let logs = within(
        20,
        tokio::task::spawn_blocking(move || {
            let mut s = String::new();
            stderr.read_to_string(&mut s).unwrap();
            s
        }),
    )
    .await
    .unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(0));
    assert!(
        logs.contains("airlock is serving") && logs.contains("stopped"),
        "{logs}"
    );
    assert!(
        !logs.contains('\u{1b}'),
        "terminal colour codes in piped logs: {logs:?}"
    );
    assert!(
        !logs.contains(&std::fs::read_to_string(home.join("token")).unwrap()),
        "token logged"
    );
}

/// `--store` and `--pg-pool-size` are checked before anything starts; a PostgreSQL URL that
/// cannot be served is refused with a message that names the problem and never the password.
#[tokio::test]
async fn store_settings_are_checked_and_passwords_never_printed() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let serve = |store: &str, pool: &str| {
        Command::new(airlock_bin())
            .args(["serve", "--listen", "127.0.0.1:0", "--store", store])
            .args(["--pg-pool-size", pool])
            .env("AIRLOCK_HOME", &home)
            .env_remove("AIRLOCK_STORE")
            .env_remove("PGPASSWORD")
            .output()
            .expect("run airlock serve")
    };
    let cases = [
        ("mysql://u:hunter2@h/db", "8", "--store", Some(2)),
        ("postgres://u:hunter2@h/db", "0", "--pg-pool-size", Some(2)),
        (
            "postgres://u:hunter2@127.0.0.1:9/db?sslmode=require",
            "8",
            "sslmode=require",
            Some(1),
        ),
        // Port 9 (discard) refuses at once on loopback.
        (
            "postgres://u:hunter2@127.0.0.1:9/db",
            "8",
            "cannot connect to PostgreSQL at postgres://u:***@127.0.0.1:9/db",
            Some(1),
        ),
    ];
    for (store, pool, says, code) in cases {
        let out = within(30, async { serve(store, pool) }).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), code, "{store}: {stderr}");
        assert!(stderr.contains(says), "{store}: {stderr}");
        assert!(!stderr.contains("hunter2"), "password printed: {stderr}");
        assert!(out.stdout.is_empty(), "announced a listener: {store}");
    }
}
