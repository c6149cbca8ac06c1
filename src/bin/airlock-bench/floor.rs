//! The transport floor: a trivial JSON-RPC server on the daemon's HTTP stack (axum + hyper on a
//! multi-thread tokio runtime with the daemon's worker count: [`airlock::daemon::runtime`], the
//! one `airlock serve` runs on), run as its own process.
//!
//! Every POST is parsed as JSON and answered with a `tools/call`-shaped result whose text is
//! `{}`. Three tool names do a little more, so the latency and memory workloads have a floor
//! too: `park` holds the request until the next `release`; `release` answers every parked
//! request; `parked` says how many are parked.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::sync::watch;

#[derive(Clone)]
struct Floor {
    parked: Arc<AtomicUsize>,
    releases: Arc<watch::Sender<u64>>,
}

async fn handle(State(f): State<Floor>, body: Bytes) -> Response {
    let Ok(v) = serde_json::from_slice::<Value>(&body) else {
        return (StatusCode::BAD_REQUEST, "not JSON").into_response();
    };
    let text = match v["params"]["name"].as_str().unwrap_or("") {
        "park" => {
            // Subscribe before counting ourselves parked, so a release seen after the count
            // always wakes us.
            let mut rx = f.releases.subscribe();
            rx.borrow_and_update();
            f.parked.fetch_add(1, Ordering::SeqCst);
            let _ = rx.changed().await;
            f.parked.fetch_sub(1, Ordering::SeqCst);
            r#"{"fired":true}"#.to_string()
        }
        "release" => {
            f.releases.send_modify(|g| *g += 1);
            "{}".to_string()
        }
        "parked" => format!(r#"{{"parked":{}}}"#, f.parked.load(Ordering::SeqCst)),
        _ => "{}".to_string(),
    };
    Json(json!({"jsonrpc": "2.0", "id": v["id"],
                "result": {"content": [{"type": "text", "text": text}], "isError": false}}))
    .into_response()
}

/// `airlock-bench floor-server`: binds 127.0.0.1:0, prints its address, serves until killed.
pub fn serve() -> anyhow::Result<()> {
    airlock::daemon::raise_fd_limit();
    // The daemon's runtime: with a worker per core the floor spent more CPU per request than the
    // daemon's own edge (BENCHMARKS.md, "Issue 16, fifth pass").
    let rt = airlock::daemon::runtime()?;
    rt.block_on(async {
        let (tx, _) = watch::channel(0u64);
        let state = Floor {
            parked: Arc::new(AtomicUsize::new(0)),
            releases: Arc::new(tx),
        };
        let app = Router::new()
            .route("/", post(handle))
            .route("/mcp", post(handle))
            .with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        println!("floor listening on http://{}", listener.local_addr()?);
        axum::serve(listener, app).await?;
        anyhow::Ok(())
    })
}
