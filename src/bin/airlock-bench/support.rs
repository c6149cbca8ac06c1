//! What every workload needs: the processes under test (the real daemon and the floor server),
//! a keep-alive JSON-RPC client, closed-loop load generation, and small statistics.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use futures::future::BoxFuture;
use serde_json::{json, Value};

/// Raises this process's soft open-files limit to the hard limit (thousands of sockets).
pub fn raise_fd_limit() -> u64 {
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        if lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max.min(1 << 20);
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
        lim.rlim_cur
    }
}

/// Resident set size of a process in bytes, from `/proc/PID/status` (VmRSS).
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// CPU time (user + system, clock ticks) a process has used, from `/proc/PID/stat`.
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces: skip past it.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of stat (utime, stime) are 12 and 13 after the state field.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// CPU seconds (user + system) a process has used.
pub fn cpu_secs(pid: u32) -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    cpu_ticks(pid).unwrap_or(0) as f64 / hz
}

/// Open file descriptors of a process.
pub fn fd_count(pid: u32) -> Option<usize> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

/// Waits until a process has at least `fds` descriptors open and then stops using CPU for a
/// while: the way to know that many parked requests have been read when the server offers no
/// count of them.
pub async fn wait_quiescent(pid: u32, fds: usize, limit: Duration) -> bool {
    let start = Instant::now();
    while fd_count(pid).unwrap_or(0) < fds {
        if start.elapsed() > limit {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut last = cpu_ticks(pid);
    let mut still = 0;
    while still < 3 {
        if start.elapsed() > limit {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = cpu_ticks(pid);
        if now == last {
            still += 1;
        } else {
            still = 0;
        }
        last = now;
    }
    true
}

/// A private scratch directory, removed on drop.
pub struct ScratchDir(pub PathBuf);

impl ScratchDir {
    pub fn new(base: &Path, tag: &str) -> anyhow::Result<ScratchDir> {
        static N: AtomicU64 = AtomicU64::new(0);
        let p = base.join(format!(
            "airlock-bench-{}-{}-{tag}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p).with_context(|| format!("create {}", p.display()))?;
        Ok(ScratchDir(p))
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A server process under test: the airlock daemon or the floor server.
pub struct ServerProc {
    child: Option<Child>,
    pub pid: u32,
    pub url: String,
    pub token: String,
    /// Spawn to "listening" line.
    pub listening_after: Duration,
    pub spawned_at: Instant,
    stderr: Arc<Mutex<Vec<String>>>,
    _home: Option<ScratchDir>,
}

/// What the engine logged when it stopped: transactions committed and operations applied.
#[derive(Debug, Clone, Copy, Default)]
pub struct EngineCounts {
    pub commits: u64,
    pub operations: u64,
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

fn field(line: &str, name: &str) -> Option<u64> {
    let key = format!("{name}=");
    let at = line.find(&key)? + key.len();
    line[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

impl ServerProc {
    /// Spawns `cmd`, which prints `... listening on http://ADDR` on stdout once bound.
    fn spawn(mut cmd: Command, home: Option<ScratchDir>, token: String) -> anyhow::Result<Self> {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let spawned_at = Instant::now();
        let mut child = cmd.spawn().context("spawn the server")?;
        let stdout = child.stdout.take().expect("piped stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .context("read the listening line")?;
        let listening_after = spawned_at.elapsed();
        let Some((_, url)) = line.trim().split_once(" listening on ") else {
            let _ = child.kill();
            let _ = child.wait();
            bail!("the server did not start (first line {line:?})");
        };
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let sink = stderr.clone();
        let err = child.stderr.take().expect("piped stderr");
        std::thread::spawn(move || {
            for l in BufReader::new(err).lines().map_while(Result::ok) {
                // Only what the bench reads, or what explains a failure.
                let l = strip_ansi(&l);
                if l.contains("engine stopped")
                    || l.contains("coordinat")
                    || l.contains("ERROR")
                    || l.contains("WARN")
                {
                    // Not held across anything that blocks.
                    sink.lock().expect("stderr sink").push(l);
                }
            }
        });
        let mut token = token;
        if let Some(h) = &home {
            token = std::fs::read_to_string(h.0.join("token"))
                .context("read the daemon's token")?
                .trim()
                .to_string();
        }
        Ok(ServerProc {
            pid: child.id(),
            child: Some(child),
            url: url.to_string(),
            token,
            listening_after,
            spawned_at,
            stderr,
            _home: home,
        })
    }

    /// Starts the real daemon with a fresh home under `base`; `max_batch` sets
    /// `AIRLOCK_MAX_BATCH` (1 = group commit off).
    pub fn daemon(bin: &Path, base: &Path, max_batch: Option<usize>) -> anyhow::Result<Self> {
        Self::daemon_on(bin, base, max_batch, None)
    }

    /// Like [`ServerProc::daemon`], with `--store` (a PostgreSQL URL) when `store` is given;
    /// SQLite in the fresh home otherwise.
    pub fn daemon_on(
        bin: &Path,
        base: &Path,
        max_batch: Option<usize>,
        store: Option<&str>,
    ) -> anyhow::Result<Self> {
        let home = ScratchDir::new(base, "home")?;
        let mut cmd = Command::new(bin);
        cmd.args(["serve", "--listen", "127.0.0.1:0"])
            .env("AIRLOCK_HOME", &home.0)
            .env_remove("AIRLOCK_TOKEN")
            .env_remove("AIRLOCK_LISTEN")
            .env_remove("AIRLOCK_STORE")
            .env(
                "RUST_LOG",
                "warn,airlock::core::engine=info,airlock::cluster=info",
            )
            .env("NO_COLOR", "1");
        if let Some(url) = store {
            cmd.args(["--store", url]);
        }
        match max_batch {
            Some(n) => cmd.env("AIRLOCK_MAX_BATCH", n.to_string()),
            None => cmd.env_remove("AIRLOCK_MAX_BATCH"),
        };
        Self::spawn(cmd, Some(home), String::new())
            .with_context(|| format!("start the daemon {}", bin.display()))
    }

    /// Starts the floor server: this same binary's `floor-server` subcommand.
    pub fn floor() -> anyhow::Result<Self> {
        let me = std::env::current_exe().context("find the bench binary")?;
        let mut cmd = Command::new(me);
        cmd.arg("floor-server");
        Self::spawn(cmd, None, "floor".into())
    }

    /// Whether the server has logged a line containing `needle` (only the lines kept: the
    /// engine's counters, the coordinator role, warnings and errors).
    pub fn logged(&self, needle: &str) -> bool {
        self.stderr
            .lock()
            .expect("stderr sink")
            .iter()
            .any(|l| l.contains(needle))
    }

    /// The kept log lines that contain `needle`.
    pub fn log_lines(&self, needle: &str) -> Vec<String> {
        self.stderr
            .lock()
            .expect("stderr sink")
            .iter()
            .filter(|l| l.contains(needle))
            .cloned()
            .collect()
    }

    pub fn rss(&self) -> Option<u64> {
        rss_bytes(self.pid)
    }

    /// SIGTERM, wait, and read the engine's counters from its last log line.
    pub async fn stop(mut self) -> Option<EngineCounts> {
        let mut child = self.child.take()?;
        // SAFETY: signalling our own child by pid.
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        let _ = tokio::task::spawn_blocking(move || child.wait()).await;
        // The reader thread sees EOF right after exit; give it a moment to push the line.
        for _ in 0..50 {
            let lines = self.stderr.lock().expect("stderr sink").clone();
            if let Some(l) = lines.iter().find(|l| l.contains("engine stopped")) {
                return Some(EngineCounts {
                    commits: field(l, "commits")?,
                    operations: field(l, "operations")?,
                });
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        None
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A keep-alive JSON-RPC client: concurrent calls on one `Client` each get their own pooled
/// connection, reused call after call.
#[derive(Clone)]
pub struct Rpc {
    http: reqwest::Client,
    url: Arc<str>,
    auth: Arc<str>,
    next_id: Arc<AtomicU64>,
    /// Sent as `MCP-Protocol-Version`, as MCP clients do (the daemon then answers through rmcp).
    protocol_version: Option<&'static str>,
}

impl Rpc {
    pub fn new(url: &str, token: &str) -> Rpc {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(usize::MAX)
            .pool_idle_timeout(None)
            .tcp_nodelay(true)
            .no_proxy()
            .timeout(Duration::from_secs(70))
            .build()
            .expect("build the HTTP client");
        Rpc {
            http,
            url: url.into(),
            auth: format!("Bearer {token}").into(),
            next_id: Arc::new(AtomicU64::new(1)),
            protocol_version: None,
        }
    }

    /// The same client, sending `MCP-Protocol-Version` like an MCP client.
    pub fn as_mcp_client(&self) -> Rpc {
        Rpc {
            protocol_version: Some("2025-06-18"),
            ..self.clone()
        }
    }

    /// `tools/call` as the seed's curl recipe sends it; returns `content[0].text` parsed.
    pub async fn call(&self, tool: &str, args: Value) -> anyhow::Result<Value> {
        self.call_inner(tool, args, false).await
    }

    /// Like [`Rpc::call`], but a tool error (`isError: true`) is the expected answer.
    pub async fn call_refused(&self, tool: &str, args: Value) -> anyhow::Result<()> {
        self.call_inner(tool, args, true).await.map(|_| ())
    }

    async fn call_inner(&self, tool: &str, args: Value, refusal: bool) -> anyhow::Result<Value> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let body = json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
                          "params": {"name": tool, "arguments": args}});
        let mut req = self
            .http
            .post(&*self.url)
            .header("Content-Type", "application/json")
            .header("Authorization", &*self.auth);
        if let Some(v) = self.protocol_version {
            req = req.header("MCP-Protocol-Version", v);
        }
        let resp = req
            .body(body.to_string())
            .send()
            .await
            .with_context(|| format!("{tool}: send"))?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .with_context(|| format!("{tool}: body"))?;
        if !status.is_success() {
            bail!("{tool}: HTTP {status}: {}", String::from_utf8_lossy(&bytes));
        }
        let v: Value = serde_json::from_slice(&bytes).with_context(|| format!("{tool}: JSON"))?;
        if let Some(e) = v.get("error") {
            bail!("{tool}: JSON-RPC error {e}");
        }
        let text = v["result"]["content"][0]["text"]
            .as_str()
            .ok_or_else(|| anyhow!("{tool}: no text content in {v}"))?;
        if refusal {
            if v["result"]["isError"] != json!(true) {
                bail!("{tool}: expected a refusal, got {text}");
            }
            return Ok(Value::Null);
        }
        if v["result"]["isError"] == json!(true) {
            bail!("{tool}: tool error {text}");
        }
        serde_json::from_str(text).with_context(|| format!("{tool}: result text {text:?}"))
    }
}

/// One step of a closed-loop client: returns how many units (cycles) it completed.
pub type Step = Arc<dyn Fn(usize) -> BoxFuture<'static, anyhow::Result<u64>> + Send + Sync>;

/// What a closed-loop run measured.
#[derive(Debug, Clone, Copy)]
pub struct Rate {
    pub units: u64,
    pub elapsed: Duration,
}

impl Rate {
    pub fn per_sec(&self) -> f64 {
        self.units as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Runs `n` clients, each first doing `warm` once (connects), then all together looping `step`
/// for `dur`. Units are summed over every client, counting only steps that finished within the
/// window, and divided by the window.
pub async fn closed_loop(n: usize, dur: Duration, warm: Step, step: Step) -> anyhow::Result<Rate> {
    let warmed = Arc::new(tokio::sync::Barrier::new(n + 1));
    let (go_tx, go_rx) = tokio::sync::watch::channel(None::<Instant>);
    let mut tasks = Vec::with_capacity(n);
    for k in 0..n {
        let (warm, step, warmed, mut go) =
            (warm.clone(), step.clone(), warmed.clone(), go_rx.clone());
        tasks.push(tokio::spawn(async move {
            let w = warm(k).await;
            warmed.wait().await;
            w?;
            let deadline = loop {
                if let Some(d) = *go.borrow_and_update() {
                    break d;
                }
                go.changed().await.context("start signal")?;
            };
            let mut units = 0;
            while Instant::now() < deadline {
                let u = step(k).await?;
                if Instant::now() <= deadline {
                    units += u;
                }
            }
            anyhow::Ok(units)
        }));
    }
    warmed.wait().await;
    let _ = go_tx.send(Some(Instant::now() + dur));
    let mut units = 0;
    for t in tasks {
        units += t.await.context("client task")??;
    }
    Ok(Rate {
        units,
        elapsed: dur,
    })
}

/// Plain echo calls against the floor server at `n` clients: (requests/s, server CPU
/// microseconds per request).
pub async fn floor_rate(
    floor: &Rpc,
    pid: u32,
    n: usize,
    dur: Duration,
) -> anyhow::Result<(f64, f64)> {
    let f = floor.clone();
    let step: Step = Arc::new(move |k| {
        let f = f.clone();
        Box::pin(async move {
            f.call(
                "echo",
                json!({"name": format!("c{k}"), "agent_id": "bench"}),
            )
            .await?;
            Ok(1)
        })
    });
    let cpu0 = cpu_secs(pid);
    let rate = closed_loop(n, dur, step.clone(), step).await?;
    let cpu = cpu_secs(pid) - cpu0;
    Ok((rate.per_sec(), cpu_us_per(cpu, rate.units)))
}

/// CPU microseconds per unit.
pub fn cpu_us_per(cpu_secs: f64, units: u64) -> f64 {
    cpu_secs * 1e6 / units.max(1) as f64
}

/// The `q`-quantile (0..=1) of sorted values.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

pub fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(|a, b| a.total_cmp(b));
    v
}
