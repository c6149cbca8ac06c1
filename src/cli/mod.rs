//! The command line: `airlock serve` runs the daemon; every other command is a client of it.

use clap::{Parser, Subcommand};

use crate::config;
use crate::daemon::{self, ServeOptions};

/// Exit codes a script can branch on.
pub mod exit {
    /// Success.
    pub const OK: i32 = 0;
    /// Not acquired, not found, timed out, or refused (the daemon answered "no").
    pub const NO: i32 = 1;
    /// Bad usage or bad arguments.
    pub const USAGE: i32 = 2;
    /// The daemon is unreachable, refused the token, or failed.
    pub const UNAVAILABLE: i32 = 3;
}

#[derive(Parser, Debug)]
#[command(
    name = "airlock",
    version,
    about = "Coordination for AI coding agents: blocking locks, shared notes and counters, presence, events and a leased task queue, over MCP"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the daemon in the foreground (what a service manager runs).
    Serve {
        /// Address to listen on.
        #[arg(long, env = "AIRLOCK_LISTEN", default_value = config::DEFAULT_LISTEN)]
        listen: String,
        /// Require the bearer token even on macOS (always required elsewhere).
        #[arg(long)]
        require_token: bool,
    },
}

/// Runs the parsed command line and returns the process exit code.
pub fn run(cli: Cli) -> i32 {
    match cli.command {
        Some(Command::Serve {
            listen,
            require_token,
        }) => {
            let opts = ServeOptions {
                listen,
                home: config::home_dir(),
                require_token,
            };
            let rt = match tokio::runtime::Runtime::new() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("airlock: cannot start the async runtime: {e}");
                    return exit::UNAVAILABLE;
                }
            };
            match rt.block_on(daemon::serve(opts)) {
                Ok(()) => exit::OK,
                Err(e) => {
                    eprintln!("airlock: {e:#}");
                    1
                }
            }
        }
        None => {
            use clap::CommandFactory;
            let _ = Cli::command().print_help();
            exit::USAGE
        }
    }
}
