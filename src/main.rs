//! The `airlock` binary: parse the command line, start logging, dispatch, exit with its code.

/// mimalloc rather than the C library's allocator: the daemon allocates and frees many small
/// objects per request on the runtime's workers and per batch on the engine thread, and glibc's
/// malloc spent about 9% of the daemon's time there under load, and gave memory back to the
/// kernel between batches (TLB shootdowns). BENCHMARKS.md, "Issue 16", has the profile.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    keep_c_heap();
    let (log, flush_log) = log_writer();
    tracing_subscriber::fmt()
        .with_writer(log)
        // Colours only on a terminal: journald, launchd logs and CI get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new("info,rmcp=warn,rmcp::service=off")
            }),
        )
        .init();
    let code = match airlock::cli::output::parse_args() {
        Ok(cli) => airlock::cli::run(cli),
        Err(code) => code,
    };
    // Writes out what is still queued before the process ends.
    drop(flush_log);
    std::process::exit(code)
}

/// The log goes to stderr from a thread of its own, which writes what is queued at once (one
/// `write` per burst, flushed when the queue is empty), so a line
/// costs the thread that logs it (the engine logs every grant and release) a format and a
/// queue push instead of a `write` each; and a stderr that nobody reads (a full pipe, a stopped
/// pager) drops lines past [`LOG_QUEUE_LINES`] instead of stopping the daemon.
fn log_writer() -> (
    tracing_appender::non_blocking::NonBlocking,
    tracing_appender::non_blocking::WorkerGuard,
) {
    tracing_appender::non_blocking::NonBlockingBuilder::default()
        .buffered_lines_limit(LOG_QUEUE_LINES)
        .lossy(true)
        .thread_name("airlock-log")
        .finish(std::io::BufWriter::with_capacity(
            64 << 10,
            std::io::stderr(),
        ))
}

/// Log lines queued for stderr at most; more are dropped while stderr does not take them.
const LOG_QUEUE_LINES: usize = 65_536;

/// What still allocates through the C library (SQLite, on the engine thread) keeps up to a few
/// MiB of freed memory instead of handing it back to the kernel after every batch: glibc trims
/// its per-thread heap with `madvise` as soon as 128 KiB at its top are free, and each trim (and
/// the page faults that follow) cost a TLB shootdown across the runtime's threads.
fn keep_c_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets glibc allocator parameters; it is called before any thread
    // exists.
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, 8 << 20);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
    }
}
