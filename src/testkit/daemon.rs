//! The process harness: start the real `airlock serve` on port 0 with a temporary
//! `AIRLOCK_HOME`, read its "listening" line (it prints its address only once bound: no sleeping,
//! no polling), read its token, talk to it over HTTP, stop or kill it, restart it on its home.

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::postgres::{forget_home_database, store_for_home};
use super::rpc::{tool_answer, tool_call, Rpc};

/// Why a server did not start.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StartError(String);

/// What becomes of a server's stderr.
#[derive(Debug, Clone, Default)]
pub enum Log {
    /// Inherited: it shows in the test's output.
    #[default]
    Inherit,
    /// Copied to this process's stderr, each line prefixed with `[label]` (past the test
    /// harness's capture: these lines explain a failure among several daemons).
    Labelled(String),
    /// Read, and the lines containing one of these kept for [`Process::logged`]; the rest
    /// dropped.
    Keep(&'static [&'static str]),
    /// A pipe that nobody reads, kept open as long as the process is: once its buffer is full,
    /// a write to it blocks (a stopped pager, a stuck log shipper).
    Unread,
}

/// A server process that prints `… listening on URL` on stdout once bound. Killed (SIGKILL)
/// when dropped, so a failing test leaves nothing running.
pub struct Process {
    child: Option<Child>,
    pid: u32,
    /// The URL it printed.
    pub url: String,
    pub spawned_at: Instant,
    /// From spawning to the "listening" line.
    pub listening_after: Duration,
    /// The lines kept under [`Log::Keep`]. Not held across anything that blocks.
    kept: Arc<Mutex<Vec<String>>>,
    /// The read end of its stderr under [`Log::Unread`], never read.
    _unread: Option<std::process::ChildStderr>,
}

impl Process {
    /// Spawns `cmd` (its stdout and stderr are set here) and waits for its "listening" line.
    pub async fn spawn(cmd: &mut Command, log: &Log) -> Result<Process, StartError> {
        cmd.stdout(Stdio::piped());
        cmd.stderr(match log {
            Log::Inherit => Stdio::inherit(),
            Log::Labelled(_) | Log::Keep(_) | Log::Unread => Stdio::piped(),
        });
        let spawned_at = Instant::now();
        let child = cmd
            .spawn()
            .map_err(|e| StartError(format!("spawn {:?}: {e}", cmd.get_program())))?;
        Self::adopt_at(child, log, spawned_at).await
    }

    /// Wraps a server the caller spawned itself, with its stdout piped.
    pub async fn adopt(child: Child, log: &Log) -> Result<Process, StartError> {
        Self::adopt_at(child, log, Instant::now()).await
    }

    async fn adopt_at(
        mut child: Child,
        log: &Log,
        spawned_at: Instant,
    ) -> Result<Process, StartError> {
        let kept = Arc::new(Mutex::new(Vec::new()));
        let mut unread = None;
        match log {
            // A piped stderr is the caller's to read.
            Log::Inherit => {}
            Log::Unread => unread = child.stderr.take(),
            Log::Labelled(_) | Log::Keep(_) => {
                if let Some(err) = child.stderr.take() {
                    read_stderr(err, log.clone(), kept.clone());
                }
            }
        }
        let Some(stdout) = child.stdout.take() else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(StartError("the server's stdout is not piped".into()));
        };
        let line = tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            BufReader::new(stdout).read_line(&mut line).map(|_| line)
        })
        .await
        .map_err(|e| StartError(format!("read the listening line: {e}")))?
        .map_err(|e| StartError(format!("read the listening line: {e}")));
        let listening_after = spawned_at.elapsed();
        let url = match line {
            Ok(line) => match line.trim().split_once(" listening on ") {
                Some((_, url)) => Ok(url.to_string()),
                None => Err(StartError(format!(
                    "the server did not start (first line {line:?})"
                ))),
            },
            Err(e) => Err(e),
        };
        let url = match url {
            Ok(url) => url,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(e);
            }
        };
        Ok(Process {
            pid: child.id(),
            child: Some(child),
            url,
            spawned_at,
            listening_after,
            kept,
            _unread: unread,
        })
    }

    /// The process id (the process may have exited).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Whether it has not been stopped or killed through this handle.
    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    /// Takes the child, for a test that signals and reaps it itself.
    pub fn take_child(&mut self) -> Option<Child> {
        self.child.take()
    }

    /// Sends SIGTERM and waits for the exit; returns the exit code (None if killed by a signal or
    /// already stopped). Blocking.
    pub fn stop(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        // SAFETY: kill(2) on our own child, not yet reaped.
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

    /// Whether it logged a line containing `needle` (only what [`Log::Keep`] kept).
    pub fn logged(&self, needle: &str) -> bool {
        self.kept
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .any(|l| l.contains(needle))
    }

    /// The kept log lines that contain `needle`.
    pub fn log_lines(&self, needle: &str) -> Vec<String> {
        self.kept
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|l| l.contains(needle))
            .cloned()
            .collect()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Reads a server's stderr on a thread of its own until it closes.
fn read_stderr(err: std::process::ChildStderr, log: Log, kept: Arc<Mutex<Vec<String>>>) {
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            match &log {
                Log::Inherit | Log::Unread => return,
                Log::Labelled(label) => {
                    let _ = std::io::stderr()
                        .lock()
                        .write_all(format!("[{label}] {line}\n").as_bytes());
                }
                Log::Keep(needles) => {
                    let line = strip_ansi(&line);
                    if needles.iter().any(|n| line.contains(n)) {
                        kept.lock().unwrap_or_else(|e| e.into_inner()).push(line);
                    }
                }
            }
        }
    });
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Where a daemon keeps its state.
#[derive(Debug, Clone)]
enum StoreChoice {
    /// `state.db` in its home.
    File,
    /// What `AIRLOCK_TEST_BACKEND` selects (see [`super::postgres::backend`]).
    Selected,
    /// `--store URL`.
    Url(String),
}

/// How to start `airlock serve`: [`Daemon::serve`], then the settings, then [`Serve::start`].
#[derive(Debug, Clone)]
pub struct Serve {
    bin: PathBuf,
    home: Option<PathBuf>,
    /// Where a fresh home is made (the system's temporary directory if None).
    home_base: Option<PathBuf>,
    store: StoreChoice,
    listen: String,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    rust_log: String,
    log: Log,
}

impl Serve {
    /// The binary to run (default: [`super::airlock_bin`]).
    pub fn bin(mut self, bin: impl Into<PathBuf>) -> Serve {
        self.bin = bin.into();
        self
    }

    /// Runs on this home (a restart finds its state) instead of a fresh temporary one.
    pub fn home(mut self, home: &Path) -> Serve {
        self.home = Some(home.to_path_buf());
        self
    }

    /// Makes the fresh temporary home under `base`.
    pub fn home_in(mut self, base: &Path) -> Serve {
        self.home_base = Some(base.to_path_buf());
        self
    }

    /// On the store `AIRLOCK_TEST_BACKEND` selects: with PostgreSQL, the home's own database.
    pub fn selected_backend(mut self) -> Serve {
        self.store = StoreChoice::Selected;
        self
    }

    /// `--store URL` (several daemons on one database); the database is the caller's.
    pub fn store(mut self, url: &str) -> Serve {
        self.store = StoreChoice::Url(url.to_string());
        self
    }

    /// `--listen ADDR` (default `127.0.0.1:0`).
    pub fn listen(mut self, addr: &str) -> Serve {
        self.listen = addr.to_string();
        self
    }

    /// More `serve` arguments.
    pub fn args<S: Into<OsString>>(mut self, args: impl IntoIterator<Item = S>) -> Serve {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// An environment variable for the daemon (the `AIRLOCK_*` of the caller's environment are
    /// not passed on, so a test run is not steered by its shell).
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Serve {
        self.envs.push((key.into(), value.into()));
        self
    }

    /// `RUST_LOG` (default `warn`).
    pub fn rust_log(mut self, filter: &str) -> Serve {
        self.rust_log = filter.to_string();
        self
    }

    /// What becomes of its stderr (default: inherited).
    pub fn log(mut self, log: Log) -> Serve {
        self.log = log;
        self
    }

    /// Starts it and waits until it listens. Panics (with the reason) if it does not.
    pub async fn start(self) -> Daemon {
        self.try_start().await.unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts it and waits until it listens.
    pub async fn try_start(self) -> Result<Daemon, StartError> {
        let tmp = match &self.home {
            Some(_) => None,
            None => Some(self.fresh_home()?),
        };
        let home = match (&self.home, &tmp) {
            (Some(home), _) => home.clone(),
            (None, Some(tmp)) => tmp.path().join("home"),
            (None, None) => unreachable!("a fresh home was made"),
        };
        let store = self.store_url(&home).await;
        let mut cmd = self.command(&home, store.as_deref());
        let process = Process::spawn(&mut cmd, &self.log).await?;
        let mut d = Daemon::on(process, &home)?;
        d.store = store;
        d.tmp = tmp;
        Ok(d)
    }

    /// Runs it expecting it to refuse to start, and returns its output. Bounded: a daemon that
    /// starts anyway fails the test instead of hanging it.
    pub async fn refused(self) -> std::process::Output {
        let tmp = match &self.home {
            Some(_) => None,
            None => Some(self.fresh_home().expect("a temporary home")),
        };
        let home = self
            .home
            .clone()
            .unwrap_or_else(|| tmp.as_ref().expect("made above").path().join("home"));
        let store = self.store_url(&home).await;
        let child = self
            .command(&home, store.as_deref())
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
            Ok(out) => out.expect("wait for airlock serve"),
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

    fn fresh_home(&self) -> Result<tempfile::TempDir, StartError> {
        let b = tempfile::Builder::new()
            .prefix("airlock-")
            .tempdir_in(self.home_base.clone().unwrap_or_else(std::env::temp_dir));
        b.map_err(|e| StartError(format!("make a temporary home: {e}")))
    }

    async fn store_url(&self, home: &Path) -> Option<String> {
        match &self.store {
            StoreChoice::File => None,
            StoreChoice::Selected => store_for_home(home).await,
            StoreChoice::Url(url) => Some(url.clone()),
        }
    }

    fn command(&self, home: &Path, store: Option<&str>) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.args(["serve", "--listen", self.listen.as_str()])
            .args(store.iter().flat_map(|url| ["--store", url]))
            .args(&self.args)
            .env("AIRLOCK_HOME", home)
            .env_remove("AIRLOCK_STORE")
            .env_remove("AIRLOCK_TOKEN")
            .env_remove("AIRLOCK_LISTEN")
            .env_remove("AIRLOCK_MAX_BATCH")
            .env_remove("AIRLOCK_MAX_IN_FLIGHT")
            .env("RUST_LOG", &self.rust_log)
            .envs(self.envs.iter().map(|(k, v)| (k, v)));
        cmd
    }
}

/// A running daemon, and a test's way of talking to it. Killed (SIGKILL) when dropped unless
/// stopped first; a fresh home goes with it, and so does that home's database.
pub struct Daemon {
    pub process: Process,
    pub home: PathBuf,
    /// `http://ADDR`: where tool calls are POSTed, and the base of `/status` and `/healthz`.
    pub url: String,
    pub token: String,
    /// The `--store` URL this daemon was given (PostgreSQL), or None for the SQLite file.
    pub store: Option<String>,
    pub http: reqwest::Client,
    next_id: AtomicU64,
    tmp: Option<tempfile::TempDir>,
}

impl Daemon {
    /// How to start one: on the SQLite file of a fresh temporary home, port 0, `RUST_LOG=warn`.
    pub fn serve() -> Serve {
        Serve {
            bin: super::airlock_bin(),
            home: None,
            home_base: None,
            store: StoreChoice::File,
            listen: "127.0.0.1:0".into(),
            args: Vec::new(),
            envs: Vec::new(),
            rust_log: "warn".into(),
            log: Log::Inherit,
        }
    }

    /// Starts a daemon in a fresh temporary home, on the selected backend.
    pub async fn start() -> Daemon {
        Self::serve().selected_backend().start().await
    }

    /// Starts a daemon on an existing home (for restart tests), on the selected backend: with
    /// PostgreSQL, on the database that belongs to `home`.
    pub async fn start_in(home: &Path) -> Daemon {
        Self::serve().home(home).selected_backend().start().await
    }

    /// [`Daemon::start_in`] with extra `serve` arguments.
    pub async fn start_with(home: &Path, extra: &[&str]) -> Daemon {
        Self::serve()
            .home(home)
            .args(extra)
            .selected_backend()
            .start()
            .await
    }

    /// Starts a daemon in a fresh temporary home with extra environment variables.
    pub async fn start_env(envs: &[(&str, &str)]) -> Daemon {
        let mut serve = Self::serve().selected_backend();
        for (k, v) in envs {
            serve = serve.env(k, v);
        }
        serve.start().await
    }

    /// [`Daemon::start`] on the SQLite file whatever the selected backend: for tests about
    /// `state.db` itself (its permissions, corruption, a full disk, …).
    pub async fn start_sqlite() -> Daemon {
        Self::serve().start().await
    }

    /// [`Daemon::start_in`] on the SQLite file whatever the selected backend.
    pub async fn start_in_sqlite(home: &Path) -> Daemon {
        Self::serve().home(home).start().await
    }

    /// Starts a daemon in a fresh temporary home on `store_url` (`--store`): several daemons on
    /// one database. The database is the caller's (e.g. from [`super::fresh_database`]).
    pub async fn start_on(store_url: &str) -> Daemon {
        Self::serve().store(store_url).start().await
    }

    /// Wraps a daemon the caller spawned itself (with stdout piped) on `home`.
    pub async fn adopt(child: Child, home: &Path) -> Daemon {
        let process = Process::adopt(child, &Log::Inherit)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        Daemon::on(process, home).unwrap_or_else(|e| panic!("{e}"))
    }

    fn on(process: Process, home: &Path) -> Result<Daemon, StartError> {
        let token = std::fs::read_to_string(home.join("token"))
            .map_err(|e| StartError(format!("read the daemon's token: {e}")))?
            .trim()
            .to_string();
        Ok(Daemon {
            url: process.url.clone(),
            process,
            home: home.to_path_buf(),
            token,
            store: None,
            http: reqwest::Client::new(),
            next_id: AtomicU64::new(1),
            tmp: None,
        })
    }

    /// The pid of the daemon process.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Sends SIGTERM and waits for a clean exit; returns the exit status code. Blocking.
    pub fn stop(&mut self) -> Option<i32> {
        self.process.stop()
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill(&mut self) {
        self.process.kill()
    }

    /// Takes ownership of the temporary directory so a restarted daemon can reuse its home
    /// (and, on PostgreSQL, the home's database).
    pub fn take_tmp(&mut self) -> Option<tempfile::TempDir> {
        self.tmp.take()
    }

    /// `airlock ARGS…` aimed at this daemon as a user's shell would aim it: its address and home
    /// through the environment (the token read from the home), no `AIRLOCK_TOKEN` or
    /// `AIRLOCK_AGENT` from the test's own environment, stdin empty, killed if dropped.
    pub fn cli<S: AsRef<std::ffi::OsStr>>(
        &self,
        args: impl IntoIterator<Item = S>,
    ) -> tokio::process::Command {
        let mut c = tokio::process::Command::new(super::airlock_bin());
        c.args(args)
            .env("AIRLOCK_URL", &self.url)
            .env("AIRLOCK_HOME", &self.home)
            .env_remove("AIRLOCK_TOKEN")
            .env_remove("AIRLOCK_AGENT")
            .env("RUST_LOG", "warn")
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        c
    }

    /// A keep-alive client for many concurrent calls.
    pub fn rpc_client(&self) -> Rpc {
        Rpc::new(&self.url, &self.token)
    }

    /// POSTs a raw JSON-RPC body with the token and returns (status, body as JSON or text).
    pub async fn rpc(&self, body: Value) -> (u16, Value) {
        self.post_bytes(body.to_string().into_bytes()).await
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

    /// Calls a tool the way the README's curl recipe does and returns the full JSON-RPC response.
    pub async fn call_raw(&self, tool: &str, args: Value) -> Value {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (status, body) = self.rpc(tool_call(id, tool, args)).await;
        assert_eq!(status, 200, "HTTP status for {tool}: {body}");
        body
    }

    /// Calls a tool and returns `content[0].text` parsed as JSON; panics on a tool error.
    pub async fn call(&self, tool: &str, args: Value) -> Value {
        let body = self.call_raw(tool, args).await;
        tool_answer(&body).unwrap_or_else(|e| panic!("{tool} failed: {e}: {body}"))
    }

    /// A tool call that may fail: `Err(message)` for a tool error or a JSON-RPC error.
    pub async fn try_call(&self, tool: &str, args: Value) -> Result<Value, String> {
        let body = self.call_raw(tool, args).await;
        tool_answer(&body).map_err(|e| e.to_string())
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
            .unwrap_or_else(|| panic!("no text content: {body}"))
            .to_string()
    }

    /// `GET /status` as JSON; panics unless it answers 200.
    pub async fn status(&self) -> Value {
        let r = self
            .http
            .get(format!("{}/status", self.url))
            .bearer_auth(&self.token)
            .send()
            .await
            .expect("send");
        assert_eq!(r.status().as_u16(), 200, "GET /status");
        r.json().await.expect("/status is JSON")
    }

    /// Whether `/healthz` answers ok.
    pub async fn healthy(&self) -> bool {
        let url = format!("{}/healthz", self.url);
        match self.http.get(url).send().await {
            Ok(r) => r.status().is_success(),
            Err(_) => false,
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.process.kill();
        // The home goes with the temporary directory, and so does the database that belongs to
        // it. A home the test owns (or took back with `take_tmp`) keeps its database for a
        // restart; those are dropped when the test process exits.
        if self.tmp.is_some() {
            forget_home_database(&self.home);
        }
    }
}

/// Runs `airlock serve --listen LISTEN` on `home` expecting it to refuse to start, and returns
/// its output. On the selected backend, like [`Daemon::start_in`].
pub async fn serve_refused(home: &Path, listen: &str) -> std::process::Output {
    Daemon::serve()
        .home(home)
        .listen(listen)
        .selected_backend()
        .refused()
        .await
}

/// [`serve_refused`] on the SQLite file whatever the selected backend: for tests about
/// `state.db` itself.
pub async fn serve_refused_sqlite(home: &Path, listen: &str) -> std::process::Output {
    Daemon::serve().home(home).listen(listen).refused().await
}
