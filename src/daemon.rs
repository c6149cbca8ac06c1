//! `airlock serve`: start-up, the listener, and graceful shutdown.
//!
//! Order matters: the state directory is made private and locked (one daemon per directory)
//! before the database is opened, and the port is bound before anything is announced. On SIGTERM
//! or ctrl-c the listener stops accepting, every parked call is answered with its timeout answer,
//! in-flight calls finish, the engine commits its last batch, and the process exits 0.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use std::time::Duration;

use anyhow::{bail, Context};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::clock::MonotonicClock;
use crate::cluster;
use crate::config::{self, Token};
use crate::conn::{self, Timeouts};
use crate::core::Coordinator;
use crate::core::CoreApi;
use crate::http::{self, EdgeConfig};
use crate::listener::CappedListener;
use crate::store::sqlite::SqliteStore;

/// How the daemon is configured.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub listen: String,
    pub home: PathBuf,
    /// Require the bearer token even where the platform would not (macOS).
    pub require_token: bool,
    /// Where state lives.
    pub store: config::StoreSpec,
}

/// Whether this platform requires the token by default: every OS but macOS, where loopback is
/// not shared across users in the same way.
fn platform_requires_token() -> bool {
    !cfg!(target_os = "macos")
}

/// Raises the soft open-files limit to the hard limit, so thousands of parked callers fit, and
/// returns the limit now in force. (The benchmark tool raises its own with this too.)
pub fn raise_fd_limit() -> usize {
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max.min(1 << 20),
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim = raised;
            }
        }
        lim.rlim_cur as usize
    }
}

/// The daemon's runtime workers, unless `TOKIO_WORKER_THREADS` says (tokio then reads it): one
/// fewer than the cores, at least one. The engine thread, which owns the store and runs every
/// batch, is busy whenever the workers are; a worker on every core as well only makes them
/// preempt each other. On 2 cores, 1 worker instead of 2 took 9% less CPU for the same work and
/// gave more throughput on every path measured (BENCHMARKS.md, "Issue 16, fifth pass").
pub fn worker_threads() -> Option<usize> {
    if std::env::var_os("TOKIO_WORKER_THREADS").is_some() {
        return None;
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    Some(cores.saturating_sub(1).max(1))
}

/// The runtime `airlock serve` runs on (and the benchmark's transport floor): multi-thread, with
/// [`worker_threads`] workers.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if let Some(n) = worker_threads() {
        builder.worker_threads(n);
    }
    builder.build()
}

pub async fn serve(opts: ServeOptions) -> anyhow::Result<()> {
    // Every file the daemon creates is private to its user.
    // SAFETY: umask only changes this process's file-creation mask.
    unsafe {
        libc::umask(0o077);
    }
    let open_files = raise_fd_limit();
    config::prepare_home(&opts.home)?;
    let _lock = config::lock_home(&opts.home)?;
    let addr: SocketAddr = config::parse_listen(&opts.listen).map_err(anyhow::Error::msg)?;
    let loopback = addr.ip().is_loopback();
    let token: Token = config::load_or_create_token(&opts.home)?;
    let require = opts.require_token || platform_requires_token() || !loopback;
    if !loopback {
        tracing::warn!(listen = %addr, "listening on a non-loopback address: every request must carry the token");
    }

    let max_in_flight = env_count("AIRLOCK_MAX_IN_FLIGHT", http::MAX_IN_FLIGHT)?;
    let state_quota = match std::env::var("AIRLOCK_MAX_STATE_BYTES") {
        Err(_) => DEFAULT_MAX_STATE_BYTES,
        Ok(v) => match v.trim().parse::<u64>() {
            Ok(n) if n >= 1 << 20 => n,
            _ => bail!(
                "AIRLOCK_MAX_STATE_BYTES must be a whole number of bytes, at least 1048576 \
                 (1 MiB), got {v:?}"
            ),
        },
    };
    // Read again by the engine; checked here so a bad value stops the start with its rule.
    crate::core::history::Retention::from_env().map_err(|e| anyhow::anyhow!(e))?;
    let timeouts = Timeouts {
        header: env_millis("AIRLOCK_HEADER_TIMEOUT_MS", conn::HEADER_TIMEOUT)?,
        body: env_millis("AIRLOCK_BODY_TIMEOUT_MS", conn::BODY_TIMEOUT)?,
        idle: env_millis("AIRLOCK_IDLE_TIMEOUT_MS", conn::IDLE_TIMEOUT)?,
    };

    let (core, engine) = match &opts.store {
        config::StoreSpec::Sqlite => {
            let db_path = opts.home.join("state.db");
            // SQLite opens these itself, following links: refuse links before it does.
            config::check_database_files(&db_path)?;
            let store = SqliteStore::open(&db_path).map_err(|e| {
                anyhow::anyhow!(
                    "cannot open the state database {}: {e}. If it is corrupt, stop here: move it \
                     aside (and its -wal/-shm files) to start empty, or restore a backup",
                    db_path.display()
                )
            })?;
            let (core, engine) =
                Coordinator::start(Box::new(store), Arc::new(MonotonicClock::new()))
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
            core.set_state_quota(state_quota);
            (Arc::new(core) as Arc<dyn CoreApi>, Some(engine))
        }
        config::StoreSpec::Postgres { url, pool_size } => {
            let node = cluster::join(url, *pool_size, state_quota).await?;
            (Arc::new(cluster::Shared(node)) as Arc<dyn CoreApi>, None)
        }
    };

    let listener = match TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => bail!(
            "{addr} is already in use (another airlock daemon, or another program); stop it or \
             choose another address with --listen or AIRLOCK_LISTEN"
        ),
        Err(e) => bail!("cannot listen on {addr}: {e}"),
    };
    let local = listener.local_addr()?;
    let connection_cap = env_count(
        "AIRLOCK_MAX_CONNECTIONS",
        CappedListener::cap_for(max_in_flight, open_files),
    )?;
    let max_rejecting = CappedListener::rejecting_for(connection_cap, open_files);
    let listener = CappedListener::new(listener, connection_cap, max_rejecting);
    let extra_hosts = if loopback {
        Vec::new()
    } else {
        vec![addr.ip().to_string()]
    };
    let stopping = tokio_util::sync::CancellationToken::new();
    let app = http::app(
        core.clone(),
        EdgeConfig {
            token: require.then_some(token),
            extra_hosts,
            max_in_flight,
            body_timeout: timeouts.body,
            home: opts.home.clone(),
            stopping: stopping.clone(),
        },
    );
    tracing::info!(listen = %local, home = %opts.home.display(), token_required = require, connection_cap, "airlock is serving");
    let stop_signal = shutdown_signal()?;
    // Scripts and tests read this line to learn the port when listening on port 0.
    println!("airlock listening on http://{local}");

    let stop = CancellationToken::new();
    let server = tokio::spawn(conn::serve(listener, app, timeouts, stop.clone()));
    stop_signal.await;
    // The dashboard's streams end first, so they hold no connection open through the drain.
    stopping.cancel();
    tracing::info!("shutting down: answering parked calls");
    core.drain().await;
    // Stop accepting; open connections finish what they are answering and close.
    stop.cancel();
    let tracker = server.await.context("the HTTP server failed")?;
    // A client that stalls half-way through sending a request would hold the shutdown open for
    // ever; after a grace period such connections are abandoned (nothing of theirs was
    // acknowledged, so nothing durable is lost).
    if tokio::time::timeout(SHUTDOWN_GRACE, tracker.wait())
        .await
        .is_ok()
    {
        drop(core);
        if let Some(engine) = engine {
            engine.join();
        }
    } else {
        tracing::warn!(
            "connections still open {}s after the stop signal (stalled clients); closing them",
            SHUTDOWN_GRACE.as_secs()
        );
        // A barrier: everything sent to the engine before it is committed and answered. The
        // abandoned connections still hold handles to the core, so the engine thread is not
        // joined; the process exits next.
        core.drain().await;
    }
    tracing::info!("stopped");
    Ok(())
}

/// The storage quota unless `AIRLOCK_MAX_STATE_BYTES` says otherwise: 4 GiB.
pub const DEFAULT_MAX_STATE_BYTES: u64 = 4 << 30;

/// A positive whole number from the environment variable `name`, else `default`.
fn env_count(name: &str, default: usize) -> anyhow::Result<usize> {
    match std::env::var(name) {
        Err(_) => Ok(default),
        Ok(v) => match v.trim().parse::<usize>() {
            Ok(n) if n >= 1 => Ok(n),
            _ => bail!("{name} must be a whole number of 1 or more, got {v:?}"),
        },
    }
}

/// A duration in milliseconds (1 to 3,600,000) from the environment variable `name`, else
/// `default`.
fn env_millis(name: &str, default: Duration) -> anyhow::Result<Duration> {
    match std::env::var(name) {
        Err(_) => Ok(default),
        Ok(v) => match v.trim().parse::<u64>() {
            Ok(n) if (1..=3_600_000).contains(&n) => Ok(Duration::from_millis(n)),
            _ => {
                bail!("{name} must be a whole number of milliseconds from 1 to 3600000, got {v:?}")
            }
        },
    }
}

/// How long after SIGTERM or ctrl-c open connections may take to finish before they are closed.
/// Parked calls are answered at once, so only a client stalled mid-request needs it.
pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Installs the SIGTERM and SIGINT (ctrl-c) handlers now, so a signal that arrives as soon as
/// the address is announced already means "shut down cleanly" rather than the default death,
/// and returns a future that completes on the first of them.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
    })
}
