//! The `airlock` binary: parse the command line, start logging, dispatch, exit with its code.

fn main() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // Colours only on a terminal: journald, launchd logs and CI get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new("info,rmcp=warn,rmcp::service=off")
            }),
        )
        .init();
    match airlock::cli::output::parse_args() {
        Ok(cli) => std::process::exit(airlock::cli::run(cli)),
        Err(code) => std::process::exit(code),
    }
}
