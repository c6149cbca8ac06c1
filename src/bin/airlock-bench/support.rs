//! What every workload needs: the processes under test (the real daemon and the floor server,
//! started by the test kit, `airlock::testkit`, which the integration tests use too), its
//! keep-alive JSON-RPC client, closed-loop load generation, and small statistics.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use airlock::testkit::Log;
use anyhow::Context;
use futures::future::BoxFuture;
use serde_json::json;

pub use airlock::core::EngineCounts;
pub use airlock::testkit::{Daemon, Process, Rpc};

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

/// The daemon's log lines the bench keeps: its coordinator role (PostgreSQL), and what explains
/// a failure.
const KEPT_LOG: &[&str] = &["coordinat", "ERROR", "WARN"];

/// Starts the real daemon with a fresh home under `base`: SQLite in that home, or `--store`
/// (a PostgreSQL URL) when `store` is given; `max_batch` sets `AIRLOCK_MAX_BATCH` (1 = group
/// commit off).
pub async fn start_daemon(
    bin: &Path,
    base: &Path,
    max_batch: Option<usize>,
    store: Option<&str>,
) -> anyhow::Result<Daemon> {
    let mut serve = Daemon::serve()
        .bin(bin)
        .home_in(base)
        .rust_log("warn,airlock::cluster=info")
        .env("NO_COLOR", "1")
        .log(Log::Keep(KEPT_LOG));
    if let Some(url) = store {
        serve = serve.store(url);
    }
    if let Some(n) = max_batch {
        serve = serve.env("AIRLOCK_MAX_BATCH", n.to_string());
    }
    serve
        .try_start()
        .await
        .with_context(|| format!("start the daemon {}", bin.display()))
}

/// Starts the floor server: this same binary's `floor-server` subcommand (token `floor`).
pub async fn start_floor() -> anyhow::Result<Process> {
    let me = std::env::current_exe().context("find the bench binary")?;
    let mut cmd = Command::new(me);
    cmd.arg("floor-server");
    Process::spawn(&mut cmd, &Log::Keep(KEPT_LOG))
        .await
        .context("start the floor server")
}

/// Reads the engine's counts from the daemon's `/status`, then stops it (SIGTERM, wait).
pub async fn stop_counting(d: Daemon) -> Option<EngineCounts> {
    let status = d.rpc_client().status().await;
    stop(d).await;
    let status = status.ok()?;
    let count = |k: &str| status["engine"][k].as_u64();
    Some(EngineCounts {
        commits: count("commits")?,
        operations: count("operations")?,
    })
}

/// SIGTERM and wait, off the async threads.
pub async fn stop(mut d: Daemon) {
    let _ = tokio::task::spawn_blocking(move || d.stop()).await;
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
