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
    /// The `--store` URL this daemon was given (PostgreSQL), or None for the SQLite file.
    pub store: Option<String>,
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

    /// Starts a daemon with extra `serve` arguments, on the selected backend (see
    /// [`backend`]): with PostgreSQL, on the database that belongs to `home`.
    pub async fn start_with(home: &Path, extra: &[&str]) -> Daemon {
        let store = store_for_home(home).await;
        Self::spawn_on_store(home, store, extra, &[]).await
    }

    /// Spawns `airlock serve` on `home` with `--store STORE` when given (the SQLite file
    /// otherwise), extra arguments and environment.
    async fn spawn_on_store(
        home: &Path,
        store: Option<String>,
        extra: &[&str],
        envs: &[(&str, &str)],
    ) -> Daemon {
        let child = Command::new(airlock_bin())
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(store.iter().flat_map(|url| ["--store", url.as_str()]))
            .args(extra)
            .env("AIRLOCK_HOME", home)
            .env_remove("AIRLOCK_STORE")
            .envs(envs.iter().copied())
            .env_remove("AIRLOCK_TOKEN")
            .env_remove("AIRLOCK_LISTEN")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn airlock serve");
        let mut d = Daemon::adopt(child, home).await;
        d.store = store;
        d
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
        // The home goes with the temporary directory, and so does the database that belongs to
        // it. A home the test owns (or took back with `take_tmp`) keeps its database for a
        // restart; those are dropped when the test process exits.
        if self._tmp.is_some() {
            forget_home_database(&self.home);
        }
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
        let store = store_for_home(&home).await;
        let mut d = Self::spawn_on_store(&home, store, &[], envs).await;
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
            store: None,
        }
    }
}

/// Runs `airlock serve --listen LISTEN` on `home` expecting it to refuse to start, and returns
/// its output. Bounded: a daemon that starts anyway fails the test instead of hanging it.
/// On the selected backend, like [`Daemon::start_in`].
pub async fn serve_refused(home: &Path, listen: &str) -> std::process::Output {
    let store = store_for_home(home).await;
    serve_refused_on(home, listen, store).await
}

/// [`serve_refused`] on the SQLite file whatever the selected backend: for tests about
/// `state.db` itself.
pub async fn serve_refused_sqlite(home: &Path, listen: &str) -> std::process::Output {
    serve_refused_on(home, listen, None).await
}

async fn serve_refused_on(
    home: &Path,
    listen: &str,
    store: Option<String>,
) -> std::process::Output {
    let child = Command::new(airlock_bin())
        .args(["serve", "--listen", listen])
        .args(store.iter().flat_map(|url| ["--store", url.as_str()]))
        .env("AIRLOCK_HOME", home)
        .env_remove("AIRLOCK_STORE")
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

// ------------------------------------------------------------------ backends
//
// The whole suite runs on either store. `AIRLOCK_TEST_BACKEND` picks it: `sqlite` (the default)
// or `postgres`, which needs `AIRLOCK_TEST_POSTGRES`, the admin URL of a server the tests may
// create databases on (`postgres://postgres@127.0.0.1:55432/postgres`; `.ci/pg-start` prints
// one). On PostgreSQL every home gets its own fresh database, reused when a daemon restarts on
// that home, so tests stay as independent as they are on SQLite.

/// Where the daemons under test keep their state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The backend selected by `AIRLOCK_TEST_BACKEND`. Panics on a misconfigured run: asking for
/// PostgreSQL without a server must not quietly test SQLite instead.
pub fn backend() -> Backend {
    let chosen = std::env::var("AIRLOCK_TEST_BACKEND").unwrap_or_default();
    match chosen.trim() {
        "" | "sqlite" => Backend::Sqlite,
        "postgres" | "postgresql" => {
            assert!(
                postgres_admin_url().is_some(),
                "AIRLOCK_TEST_BACKEND=postgres but AIRLOCK_TEST_POSTGRES is not set: set it to \
                 the admin URL of a PostgreSQL server (e.g. the one `.ci/pg-start` prints)"
            );
            Backend::Postgres
        }
        other => panic!("AIRLOCK_TEST_BACKEND must be `sqlite` or `postgres`, got {other:?}"),
    }
}

/// `AIRLOCK_TEST_POSTGRES`: the admin URL of the test server, if one is configured.
pub fn postgres_admin_url() -> Option<String> {
    std::env::var("AIRLOCK_TEST_POSTGRES")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// For tests that need PostgreSQL whatever the backend: true (after saying so, loudly) when no
/// server is configured, and the test should return.
pub fn skip_without_postgres(test: &str) -> bool {
    if postgres_admin_url().is_some() {
        return false;
    }
    // Straight to the process's stderr, past the test harness's output capture: a skip must
    // show in a plain `cargo test` run.
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED: {test}: AIRLOCK_TEST_POSTGRES is not set (CI always sets it)"
    );
    true
}

/// `url` with its database name replaced by `database` (the query string is kept).
pub fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    let after_scheme = base.find("://").map_or(0, |i| i + 3);
    let server = match base[after_scheme..].find('/') {
        Some(i) => &base[..after_scheme + i],
        None => base,
    };
    format!("{server}/{database}{query}")
}

/// Databases this test process created, dropped when it exits (or earlier, when their home is
/// deleted): a long CI run does not pile up thousands of them.
static CREATED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// The database each home uses on PostgreSQL, so a restart on the same home finds its state.
static HOME_DATABASES: std::sync::Mutex<Option<std::collections::HashMap<PathBuf, String>>> =
    std::sync::Mutex::new(None);

async fn admin_client(admin: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(admin, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to AIRLOCK_TEST_POSTGRES ({admin}): {e}"));
    tokio::spawn(connection);
    client
}

/// Creates an empty database `airlock_t_<random hex>` on the `AIRLOCK_TEST_POSTGRES` server
/// and returns its URL; None when no server is configured. Dropped when the test process exits.
pub async fn fresh_database() -> Option<String> {
    let admin = postgres_admin_url()?;
    let name = format!("airlock_t_{:016x}", rand::random::<u64>());
    let client = admin_client(&admin).await;
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));
    remember_created(&name);
    Some(with_database(&admin, &name))
}

fn remember_created(name: &str) {
    static AT_EXIT: std::sync::Once = std::sync::Once::new();
    CREATED.lock().unwrap().push(name.to_string());
    AT_EXIT.call_once(|| {
        extern "C" fn drop_created_databases() {
            let names = std::mem::take(&mut *CREATED.lock().unwrap_or_else(|e| e.into_inner()));
            drop_databases(names);
        }
        // SAFETY: registers a plain function with no captured state.
        unsafe {
            libc::atexit(drop_created_databases);
        }
    });
}

/// Drops the named databases (terminating any session still on them), on a thread of its own
/// so it can run from `Drop` and at exit. Errors are ignored: this is tidying up.
fn drop_databases(names: Vec<String>) {
    let Some(admin) = postgres_admin_url() else {
        return;
    };
    if names.is_empty() {
        return;
    }
    let _ = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let Ok((client, connection)) =
                tokio_postgres::connect(&admin, tokio_postgres::NoTls).await
            else {
                return;
            };
            tokio::spawn(connection);
            for name in names {
                let _ = client
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await;
            }
        })
    })
    .join();
}

/// The `--store` URL a daemon on `home` uses: None on SQLite; on PostgreSQL the home's own
/// database, created on first use.
pub async fn store_for_home(home: &Path) -> Option<String> {
    if backend() == Backend::Sqlite {
        return None;
    }
    let known = |home: &Path| {
        HOME_DATABASES
            .lock()
            .unwrap()
            .as_ref()
            .and_then(|m| m.get(home).cloned())
    };
    if let Some(url) = known(home) {
        return Some(url);
    }
    let url = fresh_database().await.expect("checked by backend()");
    let mut map = HOME_DATABASES.lock().unwrap();
    Some(
        map.get_or_insert_with(Default::default)
            .entry(home.to_path_buf())
            .or_insert(url)
            .clone(),
    )
}

/// [`store_for_home`] as `serve` arguments (`--store URL`, or none), for tests that spawn
/// `airlock serve` themselves. Blocking: call it before spawning, from sync or async code.
pub fn store_args(home: &Path) -> Vec<String> {
    let home = home.to_path_buf();
    let store = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(store_for_home(&home))
    })
    .join()
    .expect("store_for_home");
    match store {
        Some(url) => vec!["--store".to_string(), url],
        None => Vec::new(),
    }
}

/// Forgets (and drops) the database of a home that is being deleted.
fn forget_home_database(home: &Path) {
    let url = HOME_DATABASES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_mut()
        .and_then(|m| m.remove(home));
    let Some(url) = url else {
        return;
    };
    let name = url
        .split('?')
        .next()
        .and_then(|u| u.rsplit('/').next())
        .unwrap_or_default()
        .to_string();
    CREATED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|n| *n != name);
    drop_databases(vec![name]);
}

impl Daemon {
    /// [`Daemon::start`] on the SQLite file whatever the selected backend: for tests about
    /// `state.db` itself (its permissions, corruption, a full disk, …).
    pub async fn start_sqlite() -> Daemon {
        let tmp = tempfile::tempdir().expect("tempdir");
        let home = tmp.path().join("home");
        let mut d = Daemon::start_in_sqlite(&home).await;
        d._tmp = Some(tmp);
        d
    }

    /// [`Daemon::start_in`] on the SQLite file whatever the selected backend.
    pub async fn start_in_sqlite(home: &Path) -> Daemon {
        Self::spawn_on_store(home, None, &[], &[]).await
    }

    /// Starts a daemon in a fresh temporary home on `store_url` (`--store`): several daemons on
    /// one database. The database is the caller's (e.g. from [`fresh_database`]).
    pub async fn start_on(store_url: &str) -> Daemon {
        let tmp = tempfile::tempdir().expect("tempdir");
        let home = tmp.path().join("home");
        let mut d = Self::spawn_on_store(&home, Some(store_url.to_string()), &[], &[]).await;
        d._tmp = Some(tmp);
        d
    }
}

/// The `lock_token` of a `lock_resource` answer that must be a grant.
pub fn token(v: &Value) -> String {
    assert_eq!(v["locked"], json!(true), "expected a grant: {v}");
    v["lock_token"].as_str().expect("lock_token").to_string()
}

/// The `fence` of a grant.
pub fn fence(v: &Value) -> i64 {
    v["fence"]
        .as_i64()
        .unwrap_or_else(|| panic!("no fence: {v}"))
}

/// Unlocks `name` with `tok`, which must release it.
pub async fn unlock(d: &Daemon, name: &str, tok: &str) {
    let r = d
        .call("unlock_resource", json!({"name": name, "lock_token": tok}))
        .await;
    assert_eq!(r, json!({"released": true}), "unlock of {name}");
}

/// `lock_resource(name, agent_id)` with the arguments in `extra` added.
pub async fn lock(d: &Daemon, name: &str, agent: &str, extra: Value) -> Value {
    let mut args = json!({"name": name, "agent_id": agent});
    for (k, v) in extra.as_object().unwrap() {
        args[k] = v.clone();
    }
    d.call("lock_resource", args).await
}

/// Starts a (possibly parked) `lock_resource` in the background.
pub fn spawn_lock(
    d: &std::sync::Arc<Daemon>,
    name: &str,
    agent: &str,
    extra: Value,
) -> tokio::task::JoinHandle<Value> {
    let d = d.clone();
    let (name, agent) = (name.to_string(), agent.to_string());
    tokio::spawn(async move { lock(&d, &name, &agent, extra).await })
}
