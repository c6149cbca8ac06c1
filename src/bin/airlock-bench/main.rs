//! `airlock-bench`: measures the airlock daemon over real HTTP, next to a transport floor
//! measured in the same run (see BENCHMARKS.md for the method).
//!
//! It starts the real `airlock` binary with a temporary `AIRLOCK_HOME` on port 0 for each
//! workload (or drives a running daemon given by `--url` and `--token`), and the floor server
//! (`airlock-bench floor-server`, a trivial JSON-RPC echo on the same HTTP stack) once.

mod floor;
mod support;
mod workloads;

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use serde_json::json;

use airlock::daemon::raise_fd_limit;
use support::{start_floor, Rpc};
use workloads::{Bench, Metric, Sizes, Source};

#[derive(Parser, Debug)]
#[command(
    name = "airlock-bench",
    about = "Benchmark the airlock daemon against a transport floor"
)]
struct Args {
    #[command(subcommand)]
    command: Option<Cmd>,
    /// The airlock binary to start (default: `airlock` next to this binary).
    #[arg(long)]
    airlock_bin: Option<PathBuf>,
    /// Drive a running daemon instead of starting one (workloads 7 and 8 and the group-commit
    /// comparison need a daemon of their own and are skipped).
    #[arg(long, requires = "token")]
    url: Option<String>,
    /// Bearer token for --url.
    #[arg(long, env = "AIRLOCK_TOKEN")]
    token: Option<String>,
    /// Directory for the temporary daemon homes (must be on the disk you want fsync measured on).
    #[arg(long)]
    home_base: Option<PathBuf>,
    /// Workloads to run, e.g. `1,2,8` (default: all).
    #[arg(long, value_delimiter = ',')]
    only: Vec<u8>,
    /// Seconds per throughput run.
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
    #[arg(long, default_value_t = 1000)]
    handoffs: usize,
    /// A PostgreSQL admin URL (a role that may CREATE DATABASE): workload 2 then also measures
    /// the cross-daemon handoff, two daemons on a throwaway database it creates and drops.
    #[arg(long, env = "AIRLOCK_BENCH_POSTGRES")]
    postgres: Option<String>,
    /// Cross-daemon handoffs each way (and per baseline) with --postgres.
    #[arg(long, default_value_t = 500)]
    pg_handoffs: usize,
    #[arg(long, default_value_t = 1000)]
    fanout: usize,
    #[arg(long, default_value_t = 10_000)]
    waiters: usize,
    #[arg(long, default_value_t = 10_000)]
    agents: usize,
    /// Interleaved floor/airlock slices per throughput figure (medians are reported).
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Cold starts for workload 8 (the median is reported).
    #[arg(long, default_value_t = 5)]
    starts: usize,
    /// Tiny counts for a quick check that every workload runs (speed is meaningless).
    #[arg(long)]
    smoke: bool,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Also write the JSON report to this file.
    #[arg(long)]
    json_file: Option<PathBuf>,
    /// No progress lines on stderr.
    #[arg(long)]
    quiet: bool,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// (internal) The transport floor: a trivial JSON-RPC echo on the daemon's HTTP stack.
    #[command(hide = true)]
    FloorServer,
}

fn machine() -> serde_json::Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_default();
    let mem_kb = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .unwrap_or(0);
    json!({
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu_model": cpu,
        "memory_gib": (mem_kb as f64 / 1048576.0 * 10.0).round() / 10.0,
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
    })
}

fn fmt_num(v: f64) -> String {
    if v.is_nan() {
        "-".into()
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn table(metrics: &[Metric]) -> String {
    let mut rows = vec![[
        "#".to_string(),
        "measure".into(),
        "airlock".into(),
        "floor".into(),
        "ratio".into(),
        "unit".into(),
        "target".into(),
    ]];
    for m in metrics {
        rows.push([
            m.workload.to_string(),
            m.name.clone(),
            fmt_num(m.value),
            m.floor.map_or("".into(), fmt_num),
            m.ratio.map_or("".into(), |r| format!("{r:.2}x")),
            m.unit.clone(),
            match (&m.target, m.met) {
                (Some(t), Some(true)) => format!("{t}: met"),
                (Some(t), Some(false)) => format!("{t}: MISSED"),
                _ => String::new(),
            },
        ]);
    }
    let mut width = [0usize; 7];
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            width[i] = width[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    for (n, r) in rows.iter().enumerate() {
        let cells: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if (2..=4).contains(&i) {
                    format!("{c:>w$}", w = width[i])
                } else {
                    format!("{c:<w$}", w = width[i])
                }
            })
            .collect();
        out.push_str(&format!("| {} |\n", cells.join(" | ")));
        if n == 0 {
            let dashes: Vec<String> = width.iter().map(|w| "-".repeat(*w)).collect();
            out.push_str(&format!("|-{}-|\n", dashes.join("-|-")));
        }
    }
    out
}

async fn run(args: Args) -> anyhow::Result<()> {
    let nofile = raise_fd_limit();
    let mut sizes = Sizes {
        seconds: args.seconds,
        handoffs: args.handoffs,
        handoffs_pg: args.pg_handoffs,
        fanout: args.fanout,
        waiters: args.waiters,
        agents: args.agents,
        starts: args.starts,
        hot_clients: 64,
        reps: args.reps,
    };
    if args.smoke {
        sizes = Sizes {
            seconds: 0.2,
            handoffs: 20,
            handoffs_pg: 20,
            fanout: 20,
            waiters: 50,
            agents: 50,
            starts: 1,
            hot_clients: 8,
            reps: 1,
        };
    }
    let needed = sizes.waiters.max(sizes.fanout) + 200;
    if nofile < needed {
        bail!("the open-files limit is {nofile}, and this run needs about {needed}: raise `ulimit -n`");
    }
    let source = match (&args.url, &args.token) {
        (Some(url), Some(token)) => Source::Url {
            url: url.clone(),
            token: token.clone(),
        },
        _ => {
            let bin = match &args.airlock_bin {
                Some(b) => b.clone(),
                None => airlock::testkit::airlock_bin(),
            };
            if !bin.exists() {
                bail!(
                    "{} not found: build it first (`cargo build --release --bins`) or pass --airlock-bin",
                    bin.display()
                );
            }
            Source::Spawn {
                bin,
                base: args.home_base.clone().unwrap_or_else(std::env::temp_dir),
            }
        }
    };
    let floor_proc = start_floor().await?;
    let floor = Rpc::new(&floor_proc.url, "floor");
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let mut bench = Bench {
        source,
        sizes: sizes.clone(),
        floor_proc,
        floor,
        metrics: Vec::new(),
        prefix: format!("bench-{stamp}"),
        log: !args.quiet,
        skipped: Vec::new(),
    };
    let want = |w: u8| args.only.is_empty() || args.only.contains(&w);
    if want(1) {
        bench.w1().await.context("workload 1")?;
    }
    if want(2) {
        bench.w2().await.context("workload 2")?;
        let pg = args.postgres.as_deref().filter(|u| !u.trim().is_empty());
        bench
            .w2_postgres(pg)
            .await
            .context("workload 2, cross-daemon on PostgreSQL")?;
    }
    if want(3) {
        bench.w3().await.context("workload 3")?;
    }
    if want(4) {
        bench.w4().await.context("workload 4")?;
    }
    if want(5) {
        bench.w5().await.context("workload 5")?;
    }
    if want(6) {
        bench.w6().await.context("workload 6")?;
    }
    if want(7) {
        bench.w7().await.context("workload 7")?;
    }
    if want(8) {
        bench.w8().await.context("workload 8")?;
    }
    let report = json!({
        "machine": machine(),
        "sizes": sizes,
        "metrics": bench.metrics,
        "skipped": bench.skipped,
    });
    if let Some(path) = &args.json_file {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("write {}", path.display()))?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        let m = machine();
        println!(
            "machine: {} CPUs ({}), {} GiB RAM, Linux {}",
            m["cpus"],
            m["cpu_model"].as_str().unwrap_or(""),
            m["memory_gib"],
            m["kernel"].as_str().unwrap_or("")
        );
        print!("{}", table(&bench.metrics));
        for s in &bench.skipped {
            println!("skipped: {s}");
        }
    }
    Ok(())
}

fn main() {
    let args = Args::parse();
    if let Some(Cmd::FloorServer) = args.command {
        if let Err(e) = floor::serve() {
            eprintln!("airlock-bench floor-server: {e:#}");
            std::process::exit(1);
        }
        return;
    }
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    if let Err(e) = rt.block_on(run(args)) {
        eprintln!("airlock-bench: {e:#}");
        std::process::exit(1);
    }
}
