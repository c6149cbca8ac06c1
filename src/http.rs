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
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::Token;
use crate::core::{self as core_api, CoreApi};
use crate::listener::ConnHandle;
use crate::mcp::AirlockMcp;

mod shared_service;

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// A body over [`MAX_BODY_BYTES`] is still read and thrown away up to this many bytes before the
/// 413 goes out, so a client that writes its whole body before reading (most do) reads the answer
/// instead of a reset connection. A larger declared `Content-Length` is answered at once.
pub const DRAIN_BYTES: usize = 8 * MAX_BODY_BYTES;
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
    /// How long a request body may take to arrive once its head is read; 408 after.
    pub body_timeout: std::time::Duration,
    /// The state directory, to name the token file in the 401 answer.
    pub home: std::path::PathBuf,
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
    let sightings = Arc::new(crate::identity::Sightings::default());
    let direct = AirlockMcp::new(core.clone()).with_sightings(sightings.clone());
    let config = StreamableHttpServerConfig::default()
        .with_legacy_session_mode(false)
        .with_json_response(true)
        // The edge already checked Host and the body size, with its own clearer answers.
        .disable_allowed_hosts()
        .with_max_request_body_bytes(MAX_BODY_BYTES + 1);
    let pages = crate::ui::pages(Arc::new(edge.clone()));
    let mcp = shared_service::SharedRmcp::new(StreamableHttpService::new(
        move || Ok(AirlockMcp::new(core.clone()).with_sightings(sightings.clone())),
        Arc::new(NeverSessionManager::default()),
        config,
    ));
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

/// `GET /status[?limit=N&cursor=C]`: a page of every lock (with its waiters), agent, note,
/// event and queue, and the engine's counts (commits, operations; the benchmark reads them), from
/// one snapshot of the engine, as JSON. Each section holds at most `limit` items (default and
/// bounds as the `list_*` tools); `truncated` names the sections that go on and `next_cursor`
/// fetches their next page. For `airlock status`; agents use the `list_*` tools.
async fn status(
    State(core): State<Arc<dyn CoreApi>>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> Response {
    let page = match status_page(query.as_deref().unwrap_or("")) {
        Ok(p) => p,
        Err(e) => return edge_error(StatusCode::BAD_REQUEST, -32602, &e.to_string()),
    };
    match core.call(core_api::Request::Status(page), None).await {
        Ok(core_api::Response::Status(view)) => Json(view).into_response(),
        Ok(other) => edge_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            -32603,
            &format!("the engine answered a status request with {:?}", other),
        ),
        Err(e @ core_api::CoreError::Invalid { .. }) => {
            edge_error(StatusCode::BAD_REQUEST, -32602, &e.to_string())
        }
        Err(e) => edge_error(StatusCode::SERVICE_UNAVAILABLE, -32603, &e.to_string()),
    }
}

/// The `/status` query: `limit` and `cursor`, each at most once; anything else is refused.
fn status_page(query: &str) -> Result<core_api::request::ListPage, core_api::CoreError> {
    use core_api::CoreError;
    let mut page = core_api::request::ListPage::default();
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        match &*key {
            "limit" if page.limit.is_none() => {
                page.limit = Some(value.trim().parse().map_err(|_| {
                    CoreError::invalid(
                        "limit",
                        format!(
                            "must be a whole number, got {:?}",
                            crate::mcp::args::clip(&value)
                        ),
                    )
                })?)
            }
            "cursor" if page.cursor.is_none() => page.cursor = Some(value.into_owned()),
            "limit" | "cursor" => {
                return Err(CoreError::invalid(&key, "is given more than once"));
            }
            other => {
                return Err(CoreError::invalid(
                    &crate::mcp::args::clip(other),
                    "is not a /status parameter (it takes limit and cursor)",
                ))
            }
        }
    }
    Ok(page)
}

/// A refusal with no request id, for [`edge_error_for`].
fn refusal(status: StatusCode, code: i64, message: &str) -> Rejected {
    Rejected {
        id: Value::Null,
        status,
        code,
        message: message.to_string(),
    }
}

impl Rejected {
    fn into_response(self) -> Response {
        edge_error_for(self.id, self.status, self.code, &self.message)
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

/// The one value of header `name`: `Err` when it is sent more than once (two Hosts or two
/// Origins could be read differently by a proxy in front and by airlock).
fn single<'a>(
    headers: &'a HeaderMap,
    name: &header::HeaderName,
) -> Result<Option<&'a HeaderValue>, Rejected> {
    let mut all = headers.get_all(name).iter();
    let first = all.next();
    if all.next().is_some() {
        return Err(refusal(
            StatusCode::BAD_REQUEST,
            -32600,
            &format!("the request carries more than one {name} header; send exactly one"),
        ));
    }
    Ok(first)
}

fn name_allowed(h: &str, config: &EdgeConfig) -> bool {
    is_loopback_host(h)
        || config.extra_hosts.iter().any(|x| {
            x.eq_ignore_ascii_case(h)
                // Listening on 0.0.0.0 or [::] means on every address of this machine, so any IP
                // literal is a name for it. (DNS rebinding needs a DNS name in Host, never an IP.)
                || (x.parse::<IpAddr>().is_ok_and(|ip| ip.is_unspecified())
                    && h.parse::<IpAddr>().is_ok())
        })
}

/// Checks the request's authority: exactly one `Host` (or, in HTTP/2, the `:authority` alone),
/// naming this machine, and an absolute request target naming it too.
fn check_host(req: &Request, config: &EdgeConfig) -> Result<(), Rejected> {
    let forbidden = || {
        refusal(
            StatusCode::FORBIDDEN,
            -32001,
            "Host is not a loopback name; airlock answers only requests addressed to this machine",
        )
    };
    let host = single(req.headers(), &header::HOST)?;
    let target = req.uri().authority().map(|a| a.as_str());
    if host.is_none() && target.is_none() {
        return Err(refusal(
            StatusCode::BAD_REQUEST,
            -32600,
            "the request has no Host header; send one naming this machine (e.g. Host: 127.0.0.1)",
        ));
    }
    if let Some(host) = host {
        let Ok(host) = host.to_str() else {
            return Err(forbidden());
        };
        if !name_allowed(host_part(host.trim()), config) {
            return Err(forbidden());
        }
    }
    if let Some(target) = target {
        let target = target.rsplit_once('@').map_or(target, |(_, h)| h);
        if !name_allowed(host_part(target), config) {
            return Err(forbidden());
        }
    }
    Ok(())
}

/// Longest value accepted in an `Mcp-*` header (rmcp quotes some of them in its answers).
const MAX_MCP_HEADER_BYTES: usize = 64;

/// `Mcp-*` headers (protocol version, session, SEP-2243 standard headers) are short.
fn check_mcp_headers(headers: &HeaderMap) -> Result<(), Rejected> {
    for (name, value) in headers {
        if name.as_str().starts_with("mcp-") && value.len() > MAX_MCP_HEADER_BYTES {
            return Err(refusal(
                StatusCode::BAD_REQUEST,
                -32600,
                &format!(
                    "the {name} header is {} bytes long; at most {MAX_MCP_HEADER_BYTES} are accepted",
                    value.len()
                ),
            ));
        }
    }
    Ok(())
}

/// A request from a web page carries its page's Origin; only loopback pages may call.
fn origin_allowed(origin: Option<&HeaderValue>) -> bool {
    let Some(origin) = origin else {
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

/// What the edge makes of a POST body (already within [`MAX_BODY_BYTES`]): one JSON-RPC
/// message as a JSON object, or the error to answer. Pure, so it can be fuzzed.
///
/// Refused, each with a JSON-RPC error: a body that is not JSON (-32700); duplicate keys at any
/// depth, a batch, a non-object, a `jsonrpc` other than `"2.0"`, an `id` that is not a string or
/// an integer, a missing or non-string `method` (unless the message is a response), and a body
/// rmcp could not read as an MCP message (-32600); a `method` longer than 64 bytes (-32601).
/// Inputs are quoted at most 64 bytes long.
pub fn decode_body(bytes: &[u8]) -> Result<serde_json::Map<String, Value>, Rejected> {
    let reject = |status, code, message: String| Rejected {
        id: Value::Null,
        status,
        code,
        message,
    };
    let map = match crate::strict_json::from_slice(bytes) {
        Err(e) if e.is_data() => {
            return Err(reject(
                StatusCode::BAD_REQUEST,
                -32600,
                format!("invalid request: {e}"),
            ))
        }
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
    check_shape(&map)?;
    check_tool_call(&map)?;
    Ok(map)
}

/// The JSON-RPC 2.0 envelope, as MCP narrows it.
fn check_shape(map: &serde_json::Map<String, Value>) -> Result<(), Rejected> {
    let id = match map.get("id") {
        None => None,
        Some(id) if id.is_string() || id.is_i64() || id.is_u64() => Some(id.clone()),
        Some(other) => {
            return Err(Rejected {
                id: Value::Null,
                status: StatusCode::BAD_REQUEST,
                code: -32600,
                message: format!(
                    "invalid request: id must be a string or an integer, got {}",
                    json_kind(other)
                ),
            })
        }
    };
    let invalid = |code: i64, message: String| Rejected {
        id: id.clone().unwrap_or(Value::Null),
        status: StatusCode::BAD_REQUEST,
        code,
        message,
    };
    match map.get("jsonrpc") {
        Some(Value::String(v)) if v == "2.0" => {}
        Some(other) => {
            return Err(invalid(
                -32600,
                format!(
                    "invalid request: jsonrpc must be \"2.0\", got {}",
                    match other {
                        Value::String(s) => format!("{:?}", crate::mcp::args::clip(s)),
                        v => json_kind(v).to_string(),
                    }
                ),
            ))
        }
        None => {
            return Err(invalid(
                -32600,
                "invalid request: jsonrpc must be \"2.0\" and is missing".into(),
            ))
        }
    }
    match map.get("method") {
        Some(Value::String(m)) if m.len() > 64 => Err(invalid(
            -32601,
            format!("method not found: {}", crate::mcp::args::clip(m)),
        )),
        Some(Value::String(_)) => Ok(()),
        Some(other) => Err(invalid(
            -32600,
            format!(
                "invalid request: method must be a string, got {}",
                json_kind(other)
            ),
        )),
        // A response to a server request: an id, and a result or an error.
        None if id.is_some() && (map.contains_key("result") || map.contains_key("error")) => Ok(()),
        None => Err(invalid(
            -32600,
            "invalid request: method (a string) is missing".into(),
        )),
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_f64() => "a fractional number",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// What rmcp itself would refuse with a plain-text 415 (a shape its types do not read), as a
/// JSON-RPC -32600 with any quoted input clipped to 64 bytes.
fn check_mcp_message(map: &serde_json::Map<String, Value>) -> Result<(), Rejected> {
    let value = Value::Object(map.clone());
    match serde_json::from_value::<rmcp::model::ClientJsonRpcMessage>(value) {
        Ok(_) => Ok(()),
        Err(e) => Err(Rejected {
            id: map.get("id").cloned().unwrap_or(Value::Null),
            status: StatusCode::BAD_REQUEST,
            code: -32600,
            message: format!(
                "invalid request: not an MCP message ({})",
                clip_quoted(&e.to_string())
            ),
        }),
    }
}

/// `message` with every quoted part (between backticks or double quotes) clipped to 64 bytes,
/// and the whole to 512.
fn clip_quoted(message: &str) -> String {
    let mut out = String::new();
    let mut rest = message;
    while let Some(start) = rest.find(['`', '"']) {
        let quote = rest.as_bytes()[start] as char;
        out.push_str(&rest[..=start]);
        let after = &rest[start + 1..];
        let end = after.find(quote).unwrap_or(after.len());
        out.push_str(&crate::mcp::args::clip(&after[..end]));
        rest = &after[end..];
        if let Some(r) = rest.strip_prefix(quote) {
            out.push(quote);
            rest = r;
        }
    }
    out.push_str(rest);
    if out.len() <= 512 {
        return out;
    }
    let mut end = 512;
    while !out.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &out[..end])
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

/// Whether a request's `Mcp-*` headers leave rmcp nothing to check or act on for a plain
/// `tools/call`, so the edge may answer it itself: none at all (the curl recipe), or only what
/// an MCP client of the 2025 protocol era adds — one `MCP-Protocol-Version` naming a version rmcp
/// knows from before 2026-07-28, and one `Mcp-Session-Id`. Stateless serving ignores the session
/// id, and for those versions rmcp answers a `tools/call` exactly as it answers one without the
/// header (no `resultType`, object-only structured content). An unknown, unreadable or repeated
/// version, a 2026-07-28-era version (rmcp validates its `_meta` and SEP-2243 standard headers),
/// and any other `Mcp-*` header go to rmcp, which answers (or refuses) them as before.
fn plain_headers(headers: &HeaderMap) -> bool {
    use rmcp::model::ProtocolVersion;
    let mut version = None;
    let mut session = false;
    for (name, value) in headers {
        match name.as_str() {
            "mcp-protocol-version" if version.is_none() => version = Some(value),
            "mcp-session-id" if !session => session = true,
            n if n.starts_with("mcp-") => return false,
            _ => {}
        }
    }
    let Some(version) = version else {
        return true;
    };
    let Ok(version) = version.to_str() else {
        return false;
    };
    ProtocolVersion::KNOWN_VERSIONS
        .iter()
        .any(|v| v.as_str() == version)
        && version < ProtocolVersion::V_2026_07_28.as_str()
}

/// A plain `tools/call` the edge answers without rmcp's per-request machinery, which costs
/// more CPU and memory than the HTTP stack itself (BENCHMARKS.md). Only a request with nothing
/// for rmcp to check takes this path: the curl recipe's, or a 2025-era MCP client's
/// ([`plain_headers`]), with a JSON content type, and a body `mcp::plain_tool_call` accepts.
/// Everything else goes to rmcp.
fn plain_call(
    mcp: &AirlockMcp,
    headers: &HeaderMap,
    body: &serde_json::Map<String, Value>,
) -> Option<crate::mcp::PlainCall> {
    if !plain_headers(headers) {
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
    mcp.plain_call(headers, body)
}

/// Runs a [`plain_call`] and answers it. (A combinator, not an `async fn`, which would keep
/// `call` beside the future it goes into while the call waits.)
fn answer_plain(
    mcp: &AirlockMcp,
    call: crate::mcp::PlainCall,
) -> impl std::future::Future<Output = Response> + Send + '_ {
    use futures::FutureExt;
    mcp.answer_plain(call).map(plain_response)
}

/// A plain call's id and result as the HTTP answer rmcp would give.
fn plain_response((id, mut result): (Value, rmcp::model::CallToolResult)) -> Response {
    // As rmcp answers a request that negotiated no version: without the 2026-07-28 field.
    result.result_type = None;
    let response = PlainResponse {
        jsonrpc: "2.0",
        id: &id,
        result,
    };
    match serde_json::to_vec(&response) {
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
    }
}

/// Why [`read_body`] gave up.
enum BodyFailure {
    /// Over [`MAX_BODY_BYTES`] (what arrived was read on and dropped, up to [`DRAIN_BYTES`]).
    TooLarge,
    /// Not all there within the body timeout.
    Late,
    /// The connection broke mid-body.
    Broken,
}

/// Reads a request body of at most [`MAX_BODY_BYTES`] within `timeout`. Past the limit it keeps
/// reading and dropping frames up to [`DRAIN_BYTES`] in all, still within `timeout`, so the client
/// finishes writing and reads the 413.
async fn read_body(body: Body, timeout: std::time::Duration) -> Result<Bytes, BodyFailure> {
    use http_body_util::BodyExt;
    let read = async move {
        let mut body = body;
        let mut kept = bytes::BytesMut::new();
        let mut seen = 0usize;
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else {
                return Err(BodyFailure::Broken);
            };
            let Ok(data) = frame.into_data() else {
                continue; // trailers
            };
            seen += data.len();
            if seen > DRAIN_BYTES {
                return Err(BodyFailure::TooLarge);
            }
            if seen <= MAX_BODY_BYTES {
                kept.extend_from_slice(&data);
            }
        }
        if seen > MAX_BODY_BYTES {
            Err(BodyFailure::TooLarge)
        } else {
            Ok(kept.freeze())
        }
    };
    tokio::time::timeout(timeout, read)
        .await
        .unwrap_or(Err(BodyFailure::Late))
}

/// `r` with `Connection: close`: the connection ends after it.
fn closing(mut r: Response) -> Response {
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

/// The Host and Origin checks: the refusal to answer, if the request is not addressed to this
/// machine or comes from a page that is not served by it (the guard's, and the dashboard's pages).
pub(crate) fn refuse_foreign(req: &Request, config: &EdgeConfig) -> Option<Response> {
    if let Err(r) = check_host(req, config) {
        return Some(r.into_response());
    }
    // A missing Origin is normal (every non-browser client); two are refused.
    let origin = match single(req.headers(), &header::ORIGIN) {
        Ok(o) => o,
        Err(r) => return Some(r.into_response()),
    };
    if !origin_allowed(origin) {
        return Some(edge_error(
            StatusCode::FORBIDDEN,
            -32001,
            "Origin is not a loopback origin; requests from web pages are refused",
        ));
    }
    None
}

/// The edge, in front of every route: refuses what may not pass (origin, token, caps, headers, the
/// body's size and time), answers a plain `tools/call` itself and hands the rest on.
///
/// A parked caller keeps this future for as long as it waits (axum boxes it), so it is kept
/// small: not an `async fn`, which keeps its arguments apart from the locals they move into (a
/// second copy of the request, rust-lang/rust#62958); the checks and the routing in plain
/// functions that take what they need by value; the body's read and the next layer each in a
/// box of its own, held only while they run.
#[allow(clippy::manual_async_fn)]
fn guard(
    State(state): State<EdgeState>,
    req: Request,
    next: Next,
) -> impl std::future::Future<Output = Response> + Send {
    async move {
        let _permit = match admit(&state, &req) {
            Ok(permit) => permit,
            Err(refused) => return *refused,
        };
        if req.method() != axum::http::Method::POST {
            return Box::pin(next.run(req)).await;
        }
        let config = &state.config;
        let too_large = || {
            edge_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                -32600,
                &format!("request body is larger than the {MAX_BODY_BYTES}-byte limit"),
            )
        };
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        if declared.is_some_and(|n| n > DRAIN_BYTES) {
            // Too large to be worth reading on: answer now and close.
            return closing(too_large());
        }
        let (parts, body) = req.into_parts();
        let bytes: Bytes = match Box::pin(read_body(body, config.body_timeout)).await {
            Ok(b) => b,
            Err(BodyFailure::TooLarge) => return closing(too_large()),
            Err(BodyFailure::Broken) => {
                return closing(edge_error(
                    StatusCode::BAD_REQUEST,
                    -32600,
                    "the request body could not be read",
                ))
            }
            Err(BodyFailure::Late) => {
                return closing(edge_error(
                    StatusCode::REQUEST_TIMEOUT,
                    -32600,
                    &format!(
                        "the request body did not arrive within {} ms",
                        config.body_timeout.as_millis()
                    ),
                ));
            }
        };
        let call = match route(&state.mcp, parts, bytes) {
            Routed::Answered(response) => return response,
            Routed::Next(req) => return Box::pin(next.run(req)).await,
            Routed::Plain(call) => call,
        };
        // The call owns what it needs; nothing else of the request is kept while it runs,
        // which may park it for 50 s: not its parsed body, its bytes or its headers (`route`
        // dropped them), nor the rmcp route it will not take (about 3 KiB per parked caller,
        // BENCHMARKS.md, "Issue 16, fifth pass").
        drop(next);
        answer_plain(&state.mcp, call).await
    }
}

/// The checks before a request's body is read: origin, token, the cap on requests in flight (its
/// permit is held until the answer), MCP headers. A refusal is boxed: it is the rare path.
fn admit(state: &EdgeState, req: &Request) -> Result<OwnedSemaphorePermit, Box<Response>> {
    let config = &state.config;
    if let Some(refused) = refuse_foreign(req, config) {
        return Err(Box::new(refused));
    }
    if let Some(token) = &config.token {
        if !token_ok(req.headers(), token) {
            return Err(Box::new(edge_error(
                StatusCode::UNAUTHORIZED,
                -32001,
                &format!(
                    "missing or wrong bearer token: send 'Authorization: Bearer <contents of {}>'",
                    config.home.join("token").display()
                ),
            )));
        }
    }
    // Authenticated (or no token is required here): this connection keeps its place under the
    // connection cap when unauthenticated ones arrive.
    if let Some(conn) = req.extensions().get::<ConnHandle>() {
        conn.trust();
    }
    let Ok(permit) = state.in_flight.clone().try_acquire_owned() else {
        return Err(Box::new(edge_error(
            StatusCode::SERVICE_UNAVAILABLE,
            -32003,
            &format!(
                "too many requests in flight (the cap is {}); retry shortly",
                config.max_in_flight
            ),
        )));
    };
    check_mcp_headers(req.headers()).map_err(|r| Box::new(r.into_response()))?;
    Ok(permit)
}

/// Where a POST goes once its body is read ([`route`]).
enum Routed {
    /// Refused at the edge.
    Answered(Response),
    /// A plain `tools/call`, answered at the edge.
    Plain(crate::mcp::PlainCall),
    /// Everything else: to rmcp.
    Next(Request),
}

/// Decodes a POST's body and decides who answers it.
fn route(mcp: &AirlockMcp, mut parts: axum::http::request::Parts, bytes: Bytes) -> Routed {
    let body = match decode_body(&bytes) {
        Ok(body) => body,
        Err(r) => return Routed::Answered(edge_error_for(r.id, r.status, r.code, &r.message)),
    };
    if let Some(call) = plain_call(mcp, &parts.headers, &body) {
        return Routed::Plain(call);
    }
    if let Err(r) = check_mcp_message(&body) {
        return Routed::Answered(edge_error_for(r.id, r.status, r.code, &r.message));
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
    Routed::Next(Request::from_parts(parts, Body::from(bytes)))
}

#[cfg(test)]
mod tests;
