//! `airlock run --lock NAME… -- CMD ARGS…`: flock(1) for agents. Takes the locks (waiting as
//! long as `--wait` says, past 50 s with the `wake_token`), runs CMD, renews the locks in the
//! background, releases them when CMD exits, forwards SIGINT/SIGTERM to CMD, and exits with
//! CMD's status. If `airlock run` itself is killed, the TTL bounds how long the locks outlive it.

use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use clap::Args;
use serde_json::json;
use tokio::signal::unix::{signal, SignalKind};

use super::client::Client;
use super::commands::default_agent;
use super::exit;
use super::waits::{self, StatusLine, Wait};
use crate::core::request::{Holder, RenewLock, Request, UnlockResource};

/// Default lock TTL for `airlock run`: short, because it is renewed while CMD runs and bounds
/// the damage if `airlock run` is killed without a chance to release. The same as `airlock lock`.
pub const DEFAULT_RUN_TTL: u64 = super::commands::DEFAULT_LOCK_TTL;

#[derive(Args, Debug)]
pub struct RunArgs {
    /// A lock to hold while CMD runs (repeat for several; taken in name order, so two runs
    /// cannot deadlock).
    #[arg(long = "lock", value_name = "NAME", required = true)]
    pub locks: Vec<String>,
    /// How long to wait for the locks: seconds, or `forever`.
    #[arg(long, default_value = "forever")]
    pub wait: Wait,
    /// Lock TTL in seconds; renewed every third of it while CMD runs.
    #[arg(long, default_value_t = DEFAULT_RUN_TTL)]
    pub ttl: u64,
    /// The agent id to hold the locks as (default run:USER@HOST:PID).
    #[arg(long, env = "AIRLOCK_AGENT")]
    pub agent: Option<String>,
    /// The command and its arguments (after `--`).
    #[arg(last = true, required = true, value_name = "CMD")]
    pub cmd: Vec<String>,
}

/// Locks held: (name, lock_token).
type Held = Vec<(String, String)>;

async fn release(c: &Client, held: &Held) {
    for (name, token) in held {
        let request = Request::UnlockResource(UnlockResource {
            name: name.clone(),
            holder: Holder {
                lock_token: Some(token.clone()),
                agent_id: None,
            },
        });
        match c.request(&request).await {
            Ok(r) if r["released"] == json!(true) => {}
            Ok(r) => eprintln!("airlock run: {name} was no longer held when releasing: {r}"),
            Err(e) => eprintln!("airlock run: could not release {name}: {e}"),
        }
    }
}

/// Renews every held lock each third of the TTL until aborted; warns when a lock is lost.
async fn renew_forever(c: Client, held: Held, ttl: u64) {
    let every = Duration::from_millis((ttl * 1000 / 3).max(500));
    let mut live = held;
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        tick.tick().await;
        let mut still = Vec::new();
        for (name, token) in live {
            let r = c
                .request(&Request::RenewLock(RenewLock {
                    name: name.clone(),
                    holder: Holder {
                        lock_token: Some(token.clone()),
                        agent_id: None,
                    },
                    ttl_seconds: waits::seconds(Some(ttl)),
                }))
                .await;
            match r {
                Ok(v) if v["renewed"] == json!(true) => still.push((name, token)),
                Ok(v) => eprintln!(
                    "airlock run: LOST the lock {name}: {}; the command keeps running unprotected",
                    v["error"].as_str().unwrap_or("renewal refused")
                ),
                Err(e) => {
                    eprintln!("airlock run: could not renew {name} (will retry): {e}");
                    still.push((name, token));
                }
            }
        }
        live = still;
    }
}

pub async fn run(c: &Client, args: RunArgs) -> i32 {
    if args.ttl == 0 {
        eprintln!("airlock run: --ttl must be at least 1 second");
        return exit::USAGE;
    }
    let mut names = args.locks.clone();
    names.sort();
    names.dedup();
    let agent = args.agent.unwrap_or_else(|| default_agent("run"));
    let (Ok(mut sigint), Ok(mut sigterm)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        eprintln!("airlock run: cannot install signal handlers");
        return exit::UNAVAILABLE;
    };

    let mut held: Held = Vec::new();
    // Fences of the grants, in name order, for CMD's environment.
    let mut fences: Vec<String> = Vec::new();
    for name in &names {
        let line = StatusLine::start(name);
        let outcome = tokio::select! {
            r = waits::acquire(c, name, &agent, Some(args.ttl), args.wait, Some(&line)) => r,
            _ = sigint.recv() => { line.finish(); release(c, &held).await; return 128 + libc::SIGINT; }
            _ = sigterm.recv() => { line.finish(); release(c, &held).await; return 128 + libc::SIGTERM; }
        };
        line.finish();
        match outcome {
            Ok(r) if r["locked"] == json!(true) => {
                let token = r["lock_token"].as_str().unwrap_or_default().to_string();
                fences.push(r["fence"].to_string());
                held.push((name.clone(), token));
            }
            Ok(r) => {
                eprintln!(
                    "airlock run: timed out waiting for {name} ({}); not running {}",
                    waits::contended_detail(&r),
                    args.cmd[0]
                );
                release(c, &held).await;
                return exit::NO;
            }
            Err(e) => {
                eprintln!("airlock run: {e}");
                release(c, &held).await;
                return e.exit_code();
            }
        }
    }

    // CMD gets the fences so it can hand them to the resource it writes (README: fencing).
    let mut child = match tokio::process::Command::new(&args.cmd[0])
        .args(&args.cmd[1..])
        .env("AIRLOCK_FENCE", fences.first().cloned().unwrap_or_default())
        .env("AIRLOCK_FENCES", fences.join(" "))
        .spawn()
    {
        Ok(ch) => ch,
        Err(e) => {
            eprintln!("airlock run: cannot run {}: {e}", args.cmd[0]);
            release(c, &held).await;
            // What shells answer for "not found" and "not executable".
            return if e.kind() == std::io::ErrorKind::NotFound {
                127
            } else {
                126
            };
        }
    };
    let pid = child.id().map(|p| p as i32);
    let renewer = tokio::spawn(renew_forever(c.clone(), held.clone(), args.ttl));
    let forward = |sig: i32| {
        if let Some(p) = pid {
            // SAFETY: kill(2) on our own child's pid; no memory involved.
            unsafe {
                libc::kill(p, sig);
            }
        }
    };
    let status = loop {
        tokio::select! {
            s = child.wait() => break s,
            _ = sigint.recv() => forward(libc::SIGINT),
            _ = sigterm.recv() => forward(libc::SIGTERM),
        }
    };
    renewer.abort();
    release(c, &held).await;
    match status {
        Ok(s) => s
            .code()
            .or_else(|| s.signal().map(|sig| 128 + sig))
            .unwrap_or(exit::NO),
        Err(e) => {
            eprintln!("airlock run: lost track of {}: {e}", args.cmd[0]);
            exit::UNAVAILABLE
        }
    }
}
