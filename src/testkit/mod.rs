//! The test kit: what the integration tests (`tests/common`) and the benchmark tool
//! (`src/bin/airlock-bench`) share, so each is written once.
//!
//! **Not part of airlock's API.** Hidden from the docs, changed whenever the tests need it, and
//! written for tests: most of it panics where a test should fail.
//!
//! - [`daemon`]: the process harness. [`Daemon::serve`] starts the real binary on port 0 with a
//!   temporary `AIRLOCK_HOME`, reads its "listening" line and its token; stop (SIGTERM), kill,
//!   restart on the same home; tool calls over HTTP as an agent makes them.
//! - [`rpc`]: the JSON-RPC body of a tool call, the reading of its answer, and [`Rpc`], the
//!   benchmark's keep-alive client.
//! - [`postgres`]: throwaway PostgreSQL databases ([`TestDb`]), and which store the daemons under
//!   test use (`AIRLOCK_TEST_BACKEND`).
//! - here: the helpers the capability tests share (locks, waiting lines, calls in the
//!   background, deadlines).

pub mod daemon;
pub mod postgres;
pub mod rpc;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

pub use daemon::{serve_refused, serve_refused_sqlite, Daemon, Log, Process, Serve, StartError};
pub use postgres::{
    admin_url_or_skip, backend, fresh_database, skip_without_postgres, store_args, store_for_home,
    Backend, TestDb,
};
pub use rpc::{tool_answer, tool_call, CallError, Rpc, RpcError};

/// The `airlock` binary under test: `CARGO_BIN_EXE_airlock` when Cargo sets it at run time
/// (`cargo test`, Cargo 1.94 and later), else the `airlock` next to the running executable (an
/// integration test runs from `target/<profile>/deps/`, the benchmark tool from
/// `target/<profile>/`).
pub fn airlock_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("CARGO_BIN_EXE_airlock") {
        return bin.into();
    }
    let exe = std::env::current_exe().expect("the path of the running executable");
    let mut dir = exe
        .parent()
        .expect("the running executable's directory")
        .to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir.join(format!("airlock{}", std::env::consts::EXE_SUFFIX))
}

/// Runs `f` with a deadline so a broken test fails instead of hanging CI.
pub async fn within<T>(secs: u64, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), f)
        .await
        .expect("timed out")
}

/// Starts a (possibly parked) tool call in the background.
pub fn spawn_call(
    d: &Arc<Daemon>,
    tool: &'static str,
    args: Value,
) -> tokio::task::JoinHandle<Value> {
    let d = d.clone();
    tokio::spawn(async move { d.call(tool, args).await })
}

// ------------------------------------------------------------------ locks

/// The `lock_token` of a `lock_resource` answer that must be a grant.
pub fn token(v: &Value) -> String {
    assert_eq!(v["locked"], json!(true), "expected a grant: {v}");
    v["lock_token"].as_str().expect("lock_token").to_string()
}

/// The `fence` of a grant.
pub fn fence(v: &Value) -> i64 {
    v["fence"]
        .as_i64()
        .unwrap_or_else(|| panic!("no fence: {v}"))
}

/// Unlocks `name` with `tok`, which must release it.
pub async fn unlock(d: &Daemon, name: &str, tok: &str) {
    let r = d
        .call("unlock_resource", json!({"name": name, "lock_token": tok}))
        .await;
    assert_eq!(r, json!({"released": true}), "unlock of {name}");
}

/// `lock_resource(name, agent_id)` with the arguments in `extra` added.
pub async fn lock(d: &Daemon, name: &str, agent: &str, extra: Value) -> Value {
    let mut args = json!({"name": name, "agent_id": agent});
    for (k, v) in extra.as_object().expect("extra arguments are an object") {
        args[k] = v.clone();
    }
    d.call("lock_resource", args).await
}

/// Starts a (possibly parked) `lock_resource` in the background.
pub fn spawn_lock(
    d: &Arc<Daemon>,
    name: &str,
    agent: &str,
    extra: Value,
) -> tokio::task::JoinHandle<Value> {
    let d = d.clone();
    let (name, agent) = (name.to_string(), agent.to_string());
    tokio::spawn(async move { lock(&d, &name, &agent, extra).await })
}

/// `name`'s row in `list_locks` as seen through `d`.
pub async fn lock_row(d: &Daemon, name: &str) -> Option<Value> {
    let locks = d.call("list_locks", json!({})).await;
    locks
        .as_array()
        .expect("list_locks is an array")
        .iter()
        .find(|l| l["name"] == name)
        .cloned()
}

/// How many callers stand in `name`'s line as seen through `d` (0 if the lock is not held).
pub async fn waiters(d: &Daemon, name: &str) -> u64 {
    lock_row(d, name)
        .await
        .map_or(0, |l| l["waiters"].as_u64().expect("waiters"))
}

/// Waits until `name`'s line, as seen through `d`, has exactly `n` callers in it: the way a test
/// knows a caller is parked, so the arrival order is known.
pub async fn until_waiters(d: &Daemon, name: &str, n: u64) {
    within(30, async {
        while waiters(d, name).await != n {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
}
