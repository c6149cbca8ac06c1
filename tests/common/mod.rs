//! Shared test harness: starts the real `airlock` binary on port 0 with a temporary
//! `AIRLOCK_HOME`, and talks to it over HTTP as an agent would.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

/// The path of the built binary under test.
pub fn airlock_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_airlock"))
}

/// A running daemon. Killed (SIGKILL) when dropped unless stopped first.
pub struct Daemon {
    pub child: Option<Child>,
    pub home: PathBuf,
    pub url: String,
    pub token: String,
    _tmp: Option<tempfile::TempDir>,
    pub http: reqwest::Client,
    next_id: std::sync::atomic::AtomicU64,
}

impl Daemon {
    /// Starts a daemon in a fresh temporary home.
    pub async fn start() -> Daemon {
        let tmp = tempfile::tempdir().expect("tempdir");
        let home = tmp.path().join("home");
        let mut d = Daemon::start_in(&home).await;
        d._tmp = Some(tmp);
        d
    }

    /// Starts a daemon on an existing home (for restart tests).
    pub async fn start_in(home: &Path) -> Daemon {
        Self::start_with(home, &[]).await
    }

    /// Starts a daemon with extra `serve` arguments.
    pub async fn start_with(home: &Path, extra: &[&str]) -> Daemon {
        let child = Command::new(airlock_bin())
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(extra)
            .env("AIRLOCK_HOME", home)
            .env_remove("AIRLOCK_TOKEN")
            .env_remove("AIRLOCK_LISTEN")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn airlock serve");
        Daemon::adopt(child, home).await
    }

    /// Sends SIGTERM and waits for a clean exit; returns the exit status code.
    pub fn stop(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        child.wait().ok().and_then(|s| s.code())
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Takes ownership of the temporary directory so a restarted daemon can reuse it.
    pub fn take_tmp(&mut self) -> Option<tempfile::TempDir> {
        self._tmp.take()
    }

    /// POSTs a raw JSON-RPC body with the token and returns (status, body as JSON).
    pub async fn rpc(&self, body: Value) -> (u16, Value) {
        let r = self
            .http
            .post(&self.url)
            .header("Content-Type", "application/json")
            .bearer_auth(&self.token)
            .body(body.to_string())
            .send()
            .await
            .expect("send");
        let status = r.status().as_u16();
        let text = r.text().await.expect("body");
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// Calls a tool the way the seed's curl recipe does and returns the full JSON-RPC response.
    pub async fn call_raw(&self, tool: &str, args: Value) -> Value {
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (status, body) = self
            .rpc(json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
                        "params": {"name": tool, "arguments": args}}))
            .await;
        assert_eq!(status, 200, "HTTP status for {tool}: {body}");
        body
    }

    /// Calls a tool and returns `content[0].text` parsed as JSON; panics on a tool error.
    pub async fn call(&self, tool: &str, args: Value) -> Value {
        let body = self.call_raw(tool, args).await;
        let result = &body["result"];
        assert_ne!(result["isError"], json!(true), "{tool} failed: {body}");
        let text = result["content"][0]["text"]
            .as_str()
            .unwrap_or_else(|| panic!("no text content: {body}"));
        serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
    }

    /// Calls a tool expecting `isError: true`; returns the error message.
    pub async fn call_err(&self, tool: &str, args: Value) -> String {
        let body = self.call_raw(tool, args).await;
        assert_eq!(
            body["result"]["isError"],
            json!(true),
            "expected an error: {body}"
        );
        body["result"]["content"][0]["text"]
            .as_str()
            .unwrap()
            .to_string()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs `f` with a deadline so a broken test fails instead of hanging CI.
pub async fn within<T>(secs: u64, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), f)
        .await
        .expect("timed out")
}

impl Daemon {
    /// Starts a daemon in a fresh temporary home with extra environment variables.
    pub async fn start_env(envs: &[(&str, &str)]) -> Daemon {
        let tmp = tempfile::tempdir().expect("tempdir");
        let home = tmp.path().join("home");
        let child = Command::new(airlock_bin())
            .args(["serve", "--listen", "127.0.0.1:0"])
            .env("AIRLOCK_HOME", &home)
            .env_remove("AIRLOCK_TOKEN")
            .env_remove("AIRLOCK_LISTEN")
            .env("RUST_LOG", "warn")
            .envs(envs.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn airlock serve");
        let mut d = Daemon::adopt(child, &home).await;
        d._tmp = Some(tmp);
        d
    }

    /// POSTs raw bytes with the token and returns (status, body as JSON or text).
    pub async fn post_bytes(&self, body: Vec<u8>) -> (u16, Value) {
        let r = self
            .http
            .post(&self.url)
            .header("Content-Type", "application/json")
            .bearer_auth(&self.token)
            .body(body)
            .send()
            .await
            .expect("send");
        let status = r.status().as_u16();
        let text = r.text().await.expect("body");
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// Whether `/healthz` answers ok.
    pub async fn healthy(&self) -> bool {
        let url = format!("{}/healthz", self.url.trim_end_matches("/mcp"));
        match self.http.get(url).send().await {
            Ok(r) => r.status().is_success(),
            Err(_) => false,
        }
    }

    /// The pid of the daemon process.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }
}

impl Daemon {
    /// Wraps a daemon the caller spawned itself (with piped stdout) on `home`.
    pub async fn adopt(mut child: Child, home: &Path) -> Daemon {
        let stdout = child.stdout.take().expect("stdout");
        // The daemon prints its address only after binding: no sleeping, no polling.
        let url = tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            BufReader::new(stdout).read_line(&mut line).expect("read");
            line.trim()
                .strip_prefix("airlock listening on ")
                .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
                .to_string()
        })
        .await
        .unwrap();
        let token = std::fs::read_to_string(home.join("token"))
            .expect("token file")
            .trim()
            .to_string();
        Daemon {
            child: Some(child),
            home: home.to_path_buf(),
            url,
            token,
            _tmp: None,
            http: reqwest::Client::new(),
            next_id: std::sync::atomic::AtomicU64::new(1),
        }
    }
}

/// Runs `airlock serve --listen LISTEN` on `home` expecting it to refuse to start, and returns
/// its output. Bounded: a daemon that starts anyway fails the test instead of hanging it.
pub async fn serve_refused(home: &Path, listen: &str) -> std::process::Output {
    let child = Command::new(airlock_bin())
        .args(["serve", "--listen", listen])
        .env("AIRLOCK_HOME", home)
        .env_remove("AIRLOCK_TOKEN")
        .env_remove("AIRLOCK_LISTEN")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn airlock serve");
    let pid = child.id() as i32;
    let waited = tokio::time::timeout(
        Duration::from_secs(20),
        tokio::task::spawn_blocking(move || child.wait_with_output().expect("wait")),
    )
    .await;
    let out = match waited {
        Ok(out) => out.unwrap(),
        Err(_) => {
            // SAFETY: kill(2) on the child we spawned.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
            panic!("serve was expected to refuse to start, but it kept running");
        }
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !stdout.contains("listening"),
        "it started and listened: {stdout}"
    );
    out
}
