//! The process's log: `tracing` lines, formatted where they are logged and written to stderr by a
//! thread of their own (`tracing-appender`), which writes what is queued at once and flushes when
//! the queue is empty. A line costs the thread that logs it (the engine logs every grant and
//! release) a format and a queue push, never a `write`; and a stderr that does not take lines (a
//! full pipe nobody reads, a stopped pager) drops them past [`LOG_QUEUE_LINES`] instead of
//! stopping the daemon.

use std::sync::Mutex;
use std::time::Duration;

use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};

/// Log lines queued for stderr at most; more are dropped while stderr does not take them.
pub const LOG_QUEUE_LINES: usize = 8_192;

/// The log thread's guard: dropping it writes out what is queued and stops the thread.
static GUARD: Mutex<Option<WorkerGuard>> = Mutex::new(None);

/// Starts the log: the filter from `RUST_LOG` (else `info`, rmcp quieter), colours only on a
/// terminal (journald, launchd logs and CI get plain text).
pub fn init() {
    let (writer, guard) = NonBlockingBuilder::default()
        .buffered_lines_limit(LOG_QUEUE_LINES)
        .lossy(true)
        .thread_name("airlock-log")
        .finish(std::io::BufWriter::with_capacity(
            64 << 10,
            std::io::stderr(),
        ));
    *GUARD.lock().unwrap_or_else(|e| e.into_inner()) = Some(guard);
    tracing_subscriber::fmt()
        .with_writer(writer)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new("info,rmcp=warn,rmcp::service=off")
            }),
        )
        .init();
}

/// Writes out what is queued and stops the log thread; call it before the process exits
/// (`std::process::exit` runs no destructor). Waits about a second at most if stderr does not
/// take the lines. Lines logged afterwards are dropped.
pub fn flush() {
    let guard = GUARD.lock().unwrap_or_else(|e| e.into_inner()).take();
    drop(guard);
}

/// Writes `message` and a newline to stderr, waiting `within` at most: a stderr that nobody
/// reads must not keep the process from going on (or exiting).
pub fn say_within(message: String, within: Duration) {
    let (said, heard) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new().spawn(move || {
        eprintln!("{message}");
        let _ = said.send(());
    });
    if spawned.is_ok() {
        let _ = heard.recv_timeout(within);
    }
}
