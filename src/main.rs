//! The `airlock` binary: parse the command line, start logging, dispatch, exit with its code.

/// mimalloc rather than the C library's allocator: the daemon allocates and frees many small
/// objects per request on the runtime's workers and per batch on the engine thread, and glibc's
/// malloc spent about 9% of the daemon's time there under load, and gave memory back to the
/// kernel between batches (TLB shootdowns). BENCHMARKS.md, "Issue 16", has the profile.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    keep_c_heap();
    airlock::logging::init();
    let code = match airlock::cli::output::parse_args() {
        Ok(cli) => airlock::cli::run(cli),
        Err(code) => code,
    };
    airlock::logging::flush();
    std::process::exit(code)
}

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
