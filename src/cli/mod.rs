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
//! - [`hook`]: `airlock hook …`, Claude Code and git hooks that take locks for agents.

pub mod bridge;
pub mod client;
pub mod commands;
pub mod completions;
pub mod history;
pub mod hook;
pub mod output;
pub mod run;
pub mod service;
pub mod show;
pub mod status;
pub mod waits;
pub mod watch;

use std::io::IsTerminal;

use clap::{CommandFactory, Parser, Subcommand};

use crate::config;
use crate::daemon::{self, ServeOptions};
use client::Client;
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

/// `airlock --version`: the crate version, and the git commit when built from a checkout.
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), env!("AIRLOCK_VERSION_SUFFIX"));

#[derive(Parser, Debug)]
#[command(
    name = "airlock",
    version = VERSION,
    about = "Coordination for AI coding agents: blocking locks, shared notes and counters, presence, events and a leased task queue, over MCP",
    after_help = "Exit codes: 0 ok; 1 no (not acquired, not found, timed out, lease lost); 2 usage or \
                  bad arguments; 3 daemon unreachable, unauthorized or failing. `airlock run` exits \
                  with its command's status.\n\nWith no command and a non-terminal stdin, airlock \
                  acts as the stdio MCP bridge (`airlock mcp`)."
)]
pub struct Cli {
    /// The daemon's URL [env: AIRLOCK_URL] [default: http://$AIRLOCK_LISTEN when that is set,
    /// else http://127.0.0.1:27183].
    // AIRLOCK_URL is read by `output::resolve_url`, not by clap: an env value clap reads counts
    // as given, and then shows in every usage line (`airlock run --lock NAME --url URL …`).
    #[arg(long, global = true)]
    pub url: Option<String>,
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
        #[arg(long, conflicts_with_all = ["limit", "cursor"])]
        watch: bool,
        /// At most this many items per section (1 to 10000; default 1000).
        #[arg(long)]
        limit: Option<i64>,
        /// The next page: the cursor the previous page printed.
        #[arg(long)]
        cursor: Option<String>,
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
    /// Print a shell completion script: `airlock completions bash > ~/.local/share/bash-completion/completions/airlock`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff): `airlock man > ~/.local/share/man/man1/airlock.1`.
    Man,
    /// Editor and git hooks that take locks whether or not the model asks: `hook claude`,
    /// `hook git pre-commit`, `hook install claude|git`, `hook uninstall claude|git`.
    #[command(subcommand)]
    Hook(hook::HookCmd),
}

fn runtime(serving: bool) -> Option<tokio::runtime::Runtime> {
    let built = if serving {
        daemon::runtime()
    } else {
        tokio::runtime::Runtime::new()
    };
    match built {
        Ok(rt) => Some(rt),
        Err(e) => {
            eprintln!("airlock: cannot start the async runtime: {e}");
            None
        }
    }
}

/// Runs the parsed command line and returns the process exit code.
pub fn run(cli: Cli) -> i32 {
    let Some(rt) = runtime(matches!(cli.command, Some(Command::Serve { .. }))) else {
        return exit::UNAVAILABLE;
    };
    let json = cli.json;
    // Commands that talk to no daemon come first: a bad AIRLOCK_URL must not stop them.
    match &cli.command {
        Some(Command::Completions { shell }) => return completions::completions(*shell),
        Some(Command::Man) => return completions::man(),
        Some(Command::InstallService { print }) => return service::install(*print),
        Some(Command::UninstallService { print }) => return service::uninstall(*print),
        None if std::io::stdin().is_terminal() => {
            let _ = Cli::command().print_help();
            return exit::USAGE;
        }
        _ => {}
    }
    // `serve` needs no client (it makes the daemon the others reach).
    let client = match &cli.command {
        Some(Command::Serve { .. }) => None,
        _ => match output::resolve_url(cli.url.as_deref()) {
            Ok(url) => Some(Client::new(&url)),
            Err(e) => {
                output::print_error(json, "airlock", &e, exit::USAGE);
                return exit::USAGE;
            }
        },
    };
    let client = client.unwrap_or_else(|| Client::new(client::DEFAULT_URL));
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
        None => return rt.block_on(bridge::run(client, true)),
        Some(Command::Mcp) => return rt.block_on(bridge::run(client, false)),
        Some(Command::Status { watch: true, .. }) => return rt.block_on(watch::run(&client)),
        Some(Command::Status {
            watch: false,
            limit,
            cursor,
        }) => return rt.block_on(status::run(&client, json, limit, cursor.as_deref())),
        // Answered above, before the URL was read; repeated so the match stays whole.
        Some(Command::Completions { shell }) => return completions::completions(shell),
        Some(Command::Man) => return completions::man(),
        Some(Command::InstallService { print }) => return service::install(print),
        Some(Command::UninstallService { print }) => return service::uninstall(print),
        Some(Command::Run(args)) => return rt.block_on(run::run(&client, args)),
        Some(Command::Hook(h)) => return rt.block_on(hook::run(&client, h)),
        Some(Command::Client(cmd)) => cmd,
    };
    rt.block_on(commands::run(&client, cmd, json))
}
