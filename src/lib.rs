//! airlock: a coordination daemon for AI coding agents.
//!
//! Map of the crate (see ARCHITECTURE.md for the invariants):
//! - [`core`]: the domain. Locks, notes, counters, presence, events, tasks; the engine thread that
//!   batches operations into group commits, parks blocked callers and fires deadlines. Knows
//!   nothing of HTTP, MCP or SQL.
//! - [`store`]: durable state behind the [`store::Store`] trait; all SQL lives here.
//! - [`clock`]: the one injectable, monotonic-within-a-run clock.
//! - [`cluster`]: several daemons on one PostgreSQL database: one coordinates (runs the engine),
//!   the others forward calls to it through a table, woken by LISTEN/NOTIFY.

pub mod cli;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod conn;
pub mod core;
pub mod daemon;
pub mod http;
pub mod listener;
pub mod mcp;
pub mod store;
pub mod strict_json;
