//! The command line: `airlock serve` runs the daemon; every other command is a client of it,
//! talking to its HTTP API like any agent (it never opens `state.db`).
//!
//! - [`client`]: JSON-RPC over HTTP to the daemon (address, token, errors → exit codes).
//! - [`commands`]: one shell command per tool (`lock`, `note get`, `task claim`, …).
//! - [`waits`]: waiting past the 50 s cap (wake tokens, generations) and the live status line.
//! - [`run`]: `airlock run --lock NAME -- CMD`, flock(1) for agents.
//! - [`status`]: `airlock status`.
//! - [`service`]: `install-service` / `uninstall-service`.
//! - [`bridge`]: `airlock mcp`, the stdio bridge.

pub mod bridge;
pub mod client;
pub mod commands;
pub mod run;
pub mod service;
pub mod status;
pub mod waits;
pub mod watch;

use std::io::IsTerminal;

use clap::{CommandFactory, Parser, Subcommand};

use crate::config;
use crate::daemon::{self, ServeOptions};
use client::{Client, DEFAULT_URL};
use commands::ClientCmd;

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
    about = "Coordination for AI coding agents: blocking locks, shared notes and counters, presence, events and a leased task queue, over MCP",
    after_help = "Exit codes: 0 ok; 1 no (not acquired, not found, timed out, lease lost); 2 usage or \
                  bad arguments; 3 daemon unreachable, unauthorized or failing. `airlock run` exits \
                  with its command's status.\n\nWith no command and a non-terminal stdin, airlock \
                  acts as the stdio MCP bridge (`airlock mcp`)."
)]
pub struct Cli {
    /// The daemon's address.
    #[arg(long, global = true, env = "AIRLOCK_URL", default_value = DEFAULT_URL)]
    pub url: String,
    /// Print the daemon's answer as JSON (for scripts).
    #[arg(long, global = true)]
    pub json: bool,
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
        /// Where state lives: `sqlite` (the default: state.db in the state directory) or a
        /// PostgreSQL URL (`postgres://user:password@host:5432/dbname`) shared by several daemons.
        #[arg(
            long,
            env = "AIRLOCK_STORE",
            hide_env_values = true,
            default_value = "sqlite"
        )]
        store: String,
        /// Connections in the PostgreSQL pool (besides the two each daemon keeps for itself).
        #[arg(long, env = "AIRLOCK_PG_POOL_SIZE", default_value_t = config::DEFAULT_PG_POOL_SIZE)]
        pg_pool_size: usize,
    },
    /// Show locks (with waiters), agents, notes, events and task queues.
    Status {
        /// Keep the view on screen and redraw it in place as things change (Ctrl-C stops).
        #[arg(long)]
        watch: bool,
    },
    /// Install and start the always-on service (systemd user unit / LaunchAgent).
    InstallService {
        /// Show what would be written and run, and change nothing.
        #[arg(long)]
        print: bool,
    },
    /// Stop and remove the service (the state directory is kept).
    UninstallService {
        /// Show what would be removed and run, and change nothing.
        #[arg(long)]
        print: bool,
    },
    /// The stdio MCP bridge: MCP on stdin/stdout, forwarded to the daemon (started if needed).
    Mcp,
    /// Hold locks while a command runs: `airlock run --lock NAME -- CMD ARGS…`.
    Run(run::RunArgs),
    /// A client command for a tool (`lock`, `note get`, `task claim`, …).
    #[command(flatten)]
    Client(ClientCmd),
}

fn runtime() -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Runtime::new() {
        Ok(rt) => Some(rt),
        Err(e) => {
            eprintln!("airlock: cannot start the async runtime: {e}");
            None
        }
    }
}

/// Runs the parsed command line and returns the process exit code.
pub fn run(cli: Cli) -> i32 {
    let Some(rt) = runtime() else {
        return exit::UNAVAILABLE;
    };
    let client = Client::new(&cli.url);
    let json = cli.json;
    let cmd = match cli.command {
        Some(Command::Serve {
            listen,
            require_token,
            store,
            pg_pool_size,
        }) => {
            let store = match config::StoreSpec::parse(&store, pg_pool_size) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("airlock: {e}");
                    return exit::USAGE;
                }
            };
            let opts = ServeOptions {
                listen,
                home: config::home_dir(),
                require_token,
                store,
            };
            return match rt.block_on(daemon::serve(opts)) {
                Ok(()) => exit::OK,
                Err(e) => {
                    eprintln!("airlock: {e:#}");
                    exit::NO
                }
            };
        }
        None if !std::io::stdin().is_terminal() => {
            return rt.block_on(bridge::run(client));
        }
        None => {
            let _ = Cli::command().print_help();
            return exit::USAGE;
        }
        Some(Command::Mcp) => return rt.block_on(bridge::run(client)),
        Some(Command::Status { watch: true }) => return rt.block_on(watch::run(&client)),
        Some(Command::Status { watch: false }) => return rt.block_on(status::run(&client, json)),
        Some(Command::InstallService { print }) => return service::install(print),
        Some(Command::UninstallService { print }) => return service::uninstall(print),
        Some(Command::Run(args)) => return rt.block_on(run::run(&client, args)),
        Some(Command::Client(cmd)) => cmd,
    };
    rt.block_on(commands::run(&client, cmd, json))
}
