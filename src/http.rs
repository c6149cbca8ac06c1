//! The HTTP edge: axum + tower in front of rmcp's Streamable HTTP service.
//!
//! Every MCP request passes [`guard`] before rmcp sees it: Host and Origin checks (DNS rebinding
//! and cross-site requests from web pages), the bearer token in constant time, a cap on requests
//! in flight, a 1 MiB body limit, a JSON parse that answers -32700 itself, and an `Accept` fix-up
//! so a bare `curl -H 'Content-Type: application/json'` gets plain JSON back. Errors produced here
//! are JSON-RPC-shaped so scripts can read `.error.message`.

use std::net::IpAddr;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use rmcp::transport::streamable_http_server::session::never::NeverSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use serde_json::{json, Value};
use tokio::sync::Semaphore;

use crate::config::Token;
use crate::core::{self as core_api, CoreApi};
use crate::mcp::AirlockMcp;

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// Most MCP requests in flight at once (parked waits included); more get 503. The daemon raises
/// its open-files limit to the hard limit at start, so this many parked callers fit; lower it with
/// `AIRLOCK_MAX_IN_FLIGHT` where the hard limit is small.
pub const MAX_IN_FLIGHT: usize = 16_384;

/// What the edge enforces.
#[derive(Clone)]
pub struct EdgeConfig {
    /// `Some` when every MCP request must carry `Authorization: Bearer <token>`.
    pub token: Option<Token>,
    /// Extra host names or addresses accepted in `Host` besides loopback (the listen address
    /// when it is not loopback).
    pub extra_hosts: Vec<String>,
    /// Most MCP requests in flight at once; more get 503 ([`MAX_IN_FLIGHT`] by default).
    pub max_in_flight: usize,
    /// Cancelled when the daemon starts to stop: long-lived answers (the dashboard's live
    /// stream) end then, so they do not hold the graceful shutdown open.
    pub stopping: tokio_util::sync::CancellationToken,
}

#[derive(Clone)]
struct EdgeState {
    config: Arc<EdgeConfig>,
    in_flight: Arc<Semaphore>,
    /// Answers plain `tools/call` requests directly (see [`plain_call`]).
    mcp: AirlockMcp,
}

/// The whole HTTP application.
pub fn app(core: Arc<dyn CoreApi>, edge: EdgeConfig) -> Router {
    // Tool calls are counted and timed for `GET /metrics`; the edge's own reads are not.
    let calls = Arc::new(crate::metrics::CallMetrics::default());
    let metrics = crate::metrics::MetricsState {
        core: core.clone(),
        calls: calls.clone(),
    };
    let status_core = core.clone();
    let streams = crate::ui::Streams::new(core.clone(), edge.stopping.clone());
    let core: Arc<dyn CoreApi> = Arc::new(crate::metrics::Metered::new(core, calls));
    let direct = AirlockMcp::new(core.clone());
    let config = StreamableHttpServerConfig::default()
        .with_legacy_session_mode(false)
        .with_json_response(true)
        // The edge already checked Host and the body size, with its own clearer answers.
        .disable_allowed_hosts()
        .with_max_request_body_bytes(MAX_BODY_BYTES + 1);
    let pages = crate::ui::pages(Arc::new(edge.clone()));
    let mcp = StreamableHttpService::new(
        move || Ok(AirlockMcp::new(core.clone())),
        Arc::new(NeverSessionManager::default()),
        config,
    );
    let state = EdgeState {
        in_flight: Arc::new(Semaphore::new(edge.max_in_flight)),
        config: Arc::new(edge),
        mcp: direct,
    };
    let mcp_routes = Router::new()
        .route_service("/", mcp.clone())
        .route_service("/mcp", mcp)
        // Not an MCP tool: one consistent snapshot for `airlock status`, behind the same guard.
        .route("/status", get(status).with_state(status_core))
        // The dashboard's live view (src/ui), behind the same guard.
        .route("/events/stream", get(crate::ui::stream).with_state(streams))
        // Prometheus' text format (src/metrics.rs), behind the same guard.
        .route("/metrics", get(crate::metrics::handler).with_state(metrics))
        .layer(middleware::from_fn_with_state(state, guard));
    Router::new()
        .route("/healthz", get(healthz))
        .merge(pages)
        .merge(mcp_routes)
}

async fn healthz() -> Json<Value> {
    Json(json!({"ok": true, "version": env!("CARGO_PKG_VERSION")}))
}

/// `GET /status`: every lock (with its waiters), agent, note, event and queue, and the engine's
/// counts (commits, operations; the benchmark reads them), from one snapshot of the engine, as
/// JSON. For `airlock status`; agents use the `list_*` tools.
async fn status(State(core): State<Arc<dyn CoreApi>>) -> Response {
    match core.call(core_api::Request::Status, None).await {
        Ok(core_api::Response::Status(view)) => Json(view).into_response(),
        Ok(other) => edge_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            -32603,
            &format!("the engine answered a status request with {:?}", other),
        ),
        Err(e) => edge_error(StatusCode::SERVICE_UNAVAILABLE, -32603, &e.to_string()),
    }
}

/// A JSON-RPC-shaped error response from the edge.
fn edge_error(status: StatusCode, code: i64, message: &str) -> Response {
    edge_error_for(Value::Null, status, code, message)
}

/// A JSON-RPC-shaped error response answering the request with `id`.
fn edge_error_for(id: Value, status: StatusCode, code: i64, message: &str) -> Response {
    let body = json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}});
    let mut r = (status, Json(body)).into_response();
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    r
}

/// Whether `host` (no port, brackets stripped) names this machine's loopback.
fn is_loopback_host(host: &str) -> bool {
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Splits `host[:port]` / `[v6]:port` and returns the host part.
fn host_part(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or("");
    }
    match authority.rsplit_once(':') {
        Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) && !h.contains(':') => h,
        _ => authority,
    }
}

fn host_allowed(headers: &HeaderMap, config: &EdgeConfig) -> bool {
    let Some(host) = headers.get(header::HOST) else {
        // HTTP/1.0 without Host: no browser sends this, so no rebinding risk.
        return true;
    };
    let Ok(host) = host.to_str() else {
        return false;
    };
    let h = host_part(host.trim());
    is_loopback_host(h)
        || config.extra_hosts.iter().any(|x| {
            x.eq_ignore_ascii_case(h)
                // Listening on 0.0.0.0 or [::] means on every address of this machine, so any IP
                // literal is a name for it. (DNS rebinding needs a DNS name in Host, never an IP.)
                || (x.parse::<IpAddr>().is_ok_and(|ip| ip.is_unspecified())
                    && h.parse::<IpAddr>().is_ok())
        })
}

/// A request from a web page carries its page's Origin; only loopback pages may call.
fn origin_allowed(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    let Some((scheme, rest)) = origin.split_once("://") else {
        return false;
    };
    if scheme != "http" && scheme != "https" {
        return false;
    }
    let authority = rest.split('/').next().unwrap_or("");
    is_loopback_host(host_part(authority))
}

fn token_ok(headers: &HeaderMap, token: &Token) -> bool {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return false;
    };
    let bytes = value.as_bytes();
    let Some(presented) = bytes
        .strip_prefix(b"Bearer ")
        .or_else(|| bytes.strip_prefix(b"bearer "))
    else {
        return false;
    };
    token.matches(presented)
}

fn accepts_both(headers: &HeaderMap) -> bool {
    let all: Vec<&str> = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let joined = all.join(",").to_ascii_lowercase();
    joined.contains("application/json") && joined.contains("text/event-stream")
}

/// Why the edge refused a request body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// The request's id when it could be read, else null.
    pub id: Value,
    pub status: StatusCode,
    /// The JSON-RPC error code answered.
    pub code: i64,
    pub message: String,
}

/// What the edge makes of a POST body (already within [`MAX_BODY_BYTES`]): one JSON object, or
/// the error to answer. Pure, so it can be fuzzed.
pub fn decode_body(bytes: &[u8]) -> Result<serde_json::Map<String, Value>, Rejected> {
    let reject = |status, code, message: String| Rejected {
        id: Value::Null,
        status,
        code,
        message,
    };
    let map = match serde_json::from_slice::<Value>(bytes) {
        Err(e) => {
            return Err(reject(
                StatusCode::BAD_REQUEST,
                -32700,
                format!("parse error: the body is not valid JSON ({e})"),
            ))
        }
        Ok(Value::Array(_)) => {
            return Err(reject(
                StatusCode::BAD_REQUEST,
                -32600,
                "JSON-RPC batches are not supported; send one request per POST".into(),
            ))
        }
        Ok(Value::Object(map)) => map,
        Ok(_) => {
            return Err(reject(
                StatusCode::BAD_REQUEST,
                -32600,
                "the body must be one JSON-RPC request object".into(),
            ))
        }
    };
    check_tool_call(&map)?;
    Ok(map)
}

/// rmcp answers a `tools/call` whose params do not decode with a bare "method not found"; say
/// what is wrong instead.
fn check_tool_call(map: &serde_json::Map<String, Value>) -> Result<(), Rejected> {
    if map.get("method").and_then(Value::as_str) != Some("tools/call") {
        return Ok(());
    }
    let invalid = |message: &str| Rejected {
        id: map.get("id").cloned().unwrap_or(Value::Null),
        status: StatusCode::OK,
        code: -32602,
        message: message.to_string(),
    };
    let Some(params) = map.get("params").and_then(Value::as_object) else {
        return Err(invalid(
            "tools/call needs params: an object with the tool's name and its arguments",
        ));
    };
    if !params.get("name").is_some_and(Value::is_string) {
        return Err(invalid(
            "tools/call needs params.name: the name of the tool to call (a string)",
        ));
    }
    match params.get("arguments") {
        None | Some(Value::Null) | Some(Value::Object(_)) => Ok(()),
        Some(_) => Err(invalid(
            "params.arguments must be an object of named arguments, like {\"name\": \"x\"}",
        )),
    }
}

/// The JSON-RPC response to a plain call, fields in rmcp's order.
#[derive(serde::Serialize)]
struct PlainResponse<'a> {
    jsonrpc: &'static str,
    id: &'a Value,
    result: rmcp::model::CallToolResult,
}

/// Answers the curl recipe's plain `tools/call` without rmcp's per-request machinery, which
/// costs more CPU and memory than the HTTP stack itself (BENCHMARKS.md). Only a request with
/// nothing for rmcp to check takes this path: no `Mcp-*` headers (session, protocol version,
/// SEP-2243 standard headers), a JSON content type, and a body `mcp::plain_tool_call` accepts.
/// Everything else goes to rmcp as before.
async fn plain_call(
    mcp: &AirlockMcp,
    headers: &HeaderMap,
    body: &serde_json::Map<String, Value>,
) -> Option<Response> {
    if headers.keys().any(|k| k.as_str().starts_with("mcp-")) {
        return None;
    }
    let json_type = headers.get(header::CONTENT_TYPE).is_none_or(|v| {
        v.to_str().is_ok_and(|v| {
            v.trim()
                .to_ascii_lowercase()
                .starts_with("application/json")
        })
    });
    if !json_type {
        return None;
    }
    let call = crate::mcp::plain_tool_call(body)?;
    let mut result = mcp.call_plain(call.name, call.arguments).await;
    // As rmcp answers a request that negotiated no version: without the 2026-07-28 field.
    result.result_type = None;
    let response = PlainResponse {
        jsonrpc: "2.0",
        id: call.id,
        result,
    };
    // The tool has run: whatever happens now, this path answers.
    Some(match serde_json::to_vec(&response) {
        Ok(bytes) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            bytes,
        )
            .into_response(),
        Err(e) => edge_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            -32603,
            &format!("could not encode the answer: {e}"),
        ),
    })
}

/// The Host and Origin checks: the refusal to answer, if the request is not addressed to this
/// machine or comes from a page that is not served by it.
pub(crate) fn refuse_foreign(headers: &HeaderMap, config: &EdgeConfig) -> Option<Response> {
    if !host_allowed(headers, config) {
        return Some(edge_error(
            StatusCode::FORBIDDEN,
            -32001,
            "Host is not a loopback name; airlock answers only requests addressed to this machine",
        ));
    }
    if !origin_allowed(headers) {
        return Some(edge_error(
            StatusCode::FORBIDDEN,
            -32001,
            "Origin is not a loopback origin; requests from web pages are refused",
        ));
    }
    None
}

async fn guard(State(state): State<EdgeState>, req: Request, next: Next) -> Response {
    let config = &state.config;
    if let Some(refused) = refuse_foreign(req.headers(), config) {
        return refused;
    }
    if let Some(token) = &config.token {
        if !token_ok(req.headers(), token) {
            return edge_error(
                StatusCode::UNAUTHORIZED,
                -32001,
                "missing or wrong bearer token: send 'Authorization: Bearer <contents of ~/.airlock/token>'",
            );
        }
    }
    let Ok(_permit) = state.in_flight.clone().try_acquire_owned() else {
        return edge_error(
            StatusCode::SERVICE_UNAVAILABLE,
            -32003,
            &format!(
                "too many requests in flight (the cap is {}); retry shortly",
                config.max_in_flight
            ),
        );
    };
    if req.method() != axum::http::Method::POST {
        return next.run(req).await;
    }
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let too_large = || {
        edge_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            -32600,
            &format!("request body is larger than the {MAX_BODY_BYTES}-byte limit"),
        )
    };
    if declared.is_some_and(|n| n > MAX_BODY_BYTES) {
        return too_large();
    }
    let (mut parts, body) = req.into_parts();
    let bytes: Bytes = match axum::body::to_bytes(body, MAX_BODY_BYTES).await {
        Ok(b) => b,
        Err(_) => return too_large(),
    };
    let body = match decode_body(&bytes) {
        Ok(body) => body,
        Err(r) => return edge_error_for(r.id, r.status, r.code, &r.message),
    };
    if let Some(r) = plain_call(&state.mcp, &parts.headers, &body).await {
        return r;
    }
    // curl sends `Accept: */*`; rmcp wants both types listed. We answer plain JSON either way.
    if !accepts_both(&parts.headers) {
        parts.headers.insert(
            header::ACCEPT,
            HeaderValue::from_static("application/json, text/event-stream"),
        );
    }
    if !parts.headers.contains_key(header::CONTENT_TYPE) {
        parts.headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
    }
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_and_origins() {
        assert_eq!(host_part("127.0.0.1:27183"), "127.0.0.1");
        assert_eq!(host_part("[::1]:80"), "::1");
        assert_eq!(host_part("localhost"), "localhost");
        assert!(is_loopback_host("127.0.0.1") && is_loopback_host("::1"));
        assert!(!is_loopback_host("evil.example.com"));
        let mut h = HeaderMap::new();
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://localhost:3000"),
        );
        assert!(origin_allowed(&h));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://evil.example.com"),
        );
        assert!(!origin_allowed(&h));
        h.insert(header::ORIGIN, HeaderValue::from_static("null"));
        assert!(!origin_allowed(&h));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://127.0.0.1.evil.com"),
        );
        assert!(!origin_allowed(&h));
    }
}
