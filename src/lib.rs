//! airlock: a coordination daemon for AI coding agents.
//!
//! Map of the crate (see ARCHITECTURE.md for the invariants), in the order a request meets it:
//! - [`listener`]: the TCP listener, with a cap on open connections.
//! - [`conn`]: serving each accepted connection (hyper), with a deadline per phase (request
//!   head, idle keep-alive) so a slow or silent socket is closed.
//! - [`http`]: the HTTP edge (axum): Host/Origin checks, bearer token, body limit, `/healthz`,
//!   `/status`, the fast path for a plain `tools/call`.
//! - [`strict_json`]: the JSON parser the edge reads every body with, which refuses an object
//!   naming a key twice.
//! - [`ui`]: the web dashboard at `/ui` (static files compiled in) and its live stream
//!   (`/events/stream`, Server-Sent Events behind the token).
//! - [`metrics`]: `GET /metrics` in Prometheus' text format (calls by tool and outcome, latency,
//!   commits, waiters, queue depths).
//! - [`mcp`]: the MCP layer (rmcp): the one table of tools, argument reading, results and errors.
//! - [`cluster`]: several daemons on one PostgreSQL database: one coordinates (runs the engine),
//!   the others forward calls to it through a table, woken by LISTEN/NOTIFY.
//! - [`core`]: the domain. Locks, notes, counters, presence, events, tasks; the engine thread that
//!   batches operations into group commits, parks blocked callers and fires deadlines. Knows
//!   nothing of HTTP, MCP or SQL.
//! - [`store`]: durable state behind the [`store::Store`] trait (SQLite, PostgreSQL); the SQL of
//!   every table, and the schemas as migration files (`src/store/sql/`).
//! - [`clock`]: the one injectable, monotonic-within-a-run clock.
//! - [`config`]: the state directory, the token, the one-daemon lock.
//! - [`daemon`]: start-up and graceful shutdown of `airlock serve`.
//! - [`logging`]: the log, written to stderr by a thread of its own so no thread serving calls
//!   waits on it.
//! - [`cli`]: the command line; every command but `serve` is an HTTP client of the daemon.
//! - `testkit` (hidden, **not part of the API**): the harness the integration tests and the
//!   benchmark tool share (real daemon processes, tool calls, throwaway PostgreSQL databases).
//! - [`identity`]: one `agent_id` used from two clients at once, noticed and said in the answer.

pub mod cli;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod conn;
pub mod core;
pub mod daemon;
pub mod http;
pub mod identity;
pub mod listener;
pub mod logging;
pub mod mcp;
pub mod metrics;
pub mod store;
pub mod strict_json;
#[doc(hidden)]
pub mod testkit;
pub mod ui;

#[cfg(test)]
mod tests {
    /// The `//!` map above names every module this file declares.
    #[test]
    fn the_module_map_names_every_module() {
        let src = include_str!("lib.rs");
        let map: String = src
            .lines()
            .filter_map(|l| l.strip_prefix("//!"))
            .collect::<Vec<_>>()
            .join("\n");
        let modules: Vec<&str> = src
            .lines()
            .filter_map(|l| l.strip_prefix("pub mod ")?.strip_suffix(';'))
            .collect();
        assert!(modules.len() > 10, "{modules:?}");
        for m in modules {
            assert!(
                map.contains(&format!("[`{m}`]")) || map.contains(&format!("`{m}`")),
                "the module map in lib.rs does not name `{m}`"
            );
        }
    }
}
