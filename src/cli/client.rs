//! The CLI's way to the daemon: plain JSON-RPC `tools/call` POSTs (and `GET /status`) over HTTP,
//! exactly as any agent would. It never opens `state.db`.

use std::time::Duration;

use serde_json::{json, Value};

use super::exit;
use crate::config;

/// The default daemon address.
pub const DEFAULT_URL: &str = "http://127.0.0.1:27183";

/// Why a call did not produce a tool result.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing answered at the address (refused, timed out connecting, reset).
    #[error("no airlock daemon answers at {url} ({detail}); start one with `airlock serve` or `airlock install-service`, or point at the one running with --url or AIRLOCK_URL (when both are unset, clients use AIRLOCK_LISTEN, else 127.0.0.1:27183)")]
    Unreachable { url: String, detail: String },
    /// The daemon refused the token.
    #[error("the daemon at {url} refused the token: set AIRLOCK_TOKEN, or make sure AIRLOCK_HOME points at the daemon's state directory (its token file is read from there)")]
    Unauthorized { url: String },
    /// The daemon refused the arguments (a tool error or a JSON-RPC error).
    #[error("{0}")]
    Refused(String),
    /// Refused here, before anything was sent (too big, unknown tool, bad input).
    #[error("{0}")]
    Usage(String),
    /// The daemon failed (storage, shutting down) or answered something unreadable.
    #[error("{0}")]
    Failed(String),
}

impl ClientError {
    /// The exit code a script sees for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            ClientError::Refused(_) | ClientError::Usage(_) => exit::USAGE,
            _ => exit::UNAVAILABLE,
        }
    }
}

/// A client of one daemon.
#[derive(Clone)]
pub struct Client {
    pub url: String,
    http: reqwest::Client,
    next_id: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Sent as `X-Airlock-Source`, so the daemon can tell this client from another one using
    /// the same agent_id (see `identity`).
    source: Option<String>,
}

impl Client {
    pub fn new(url: &str) -> Client {
        let http = reqwest::Client::builder()
            // Parked calls last up to 50 s; only connecting is bounded.
            .connect_timeout(Duration::from_secs(5))
            .build()
            .unwrap_or_default();
        Client {
            url: url.trim_end_matches('/').to_string(),
            http,
            next_id: Default::default(),
            source: None,
        }
    }

    /// Names this client to the daemon (`X-Airlock-Source`).
    pub fn with_source(mut self, source: String) -> Client {
        self.source = Some(source);
        self
    }

    /// The token, read fresh each time: a daemon started a moment ago may just have written it.
    fn token() -> Option<String> {
        config::client_token().map(|t| t.expose().to_string())
    }

    fn unreachable(&self, e: &reqwest::Error) -> ClientError {
        if e.is_builder() {
            // Never sent: the request could not even be made (a bad URL).
            return ClientError::Usage(format!("cannot send to {}: {e}", self.url));
        }
        if !e.is_connect() {
            // The request may have reached the daemon: say so rather than invite a blind retry.
            return ClientError::Failed(format!(
                "the connection to {} broke during the call ({e}); it may or may not have taken effect",
                self.url
            ));
        }
        let mut detail = e.to_string();
        let mut src = std::error::Error::source(e);
        while let Some(s) = src {
            detail = s.to_string();
            src = s.source();
        }
        ClientError::Unreachable {
            url: self.url.clone(),
            detail,
        }
    }

    fn with_auth(&self, rb: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        let rb = match &self.source {
            Some(s) => rb.header(crate::identity::SOURCE_HEADER, s),
            None => rb,
        };
        match Self::token() {
            Some(t) => rb.bearer_auth(t),
            None => rb,
        }
    }

    /// Posts one JSON-RPC request and returns its `result`.
    pub async fn rpc(&self, method: &str, params: Value) -> Result<Value, ClientError> {
        self.rpc_with_progress(method, params, |_| {}).await
    }

    /// Calls a tool asking for progress reports; `on_progress` hears each report's message
    /// (e.g. "waiting 5s of 50s, position 2 in line, held by agent:a") while the call is parked.
    pub async fn request_with_progress(
        &self,
        request: &crate::core::Request,
        mut on_progress: impl FnMut(&str),
    ) -> Result<Value, ClientError> {
        let tool = request.tool().name();
        let params = json!({
            "name": tool,
            "arguments": request.arguments(),
            "_meta": {"progressToken": 1}
        });
        let result = self
            .rpc_with_progress("tools/call", params, |p| {
                if let Some(m) = p["message"].as_str() {
                    on_progress(m)
                }
            })
            .await?;
        tool_text(tool, result)
    }

    /// Posts one JSON-RPC request and returns its `result`; if the daemon streams progress
    /// notifications first (it does when `params._meta.progressToken` is set and the call parks),
    /// `on_progress` hears each one's `params`.
    pub async fn rpc_with_progress(
        &self,
        method: &str,
        params: Value,
        mut on_progress: impl FnMut(&Value),
    ) -> Result<Value, ClientError> {
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        let body = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        let body = body.to_string();
        // The daemon closes a connection whose body is over its limit, maybe mid-send; checked
        // here, the call is refused as what it is, and nothing is sent.
        if body.len() > crate::http::MAX_BODY_BYTES {
            return Err(ClientError::Usage(format!(
                "the request is {} bytes; the daemon takes at most {} bytes (1 MiB) per request",
                body.len(),
                crate::http::MAX_BODY_BYTES
            )));
        }
        let rb = self
            .http
            .post(&self.url)
            .header("Content-Type", "application/json")
            .header("Accept", "application/json, text/event-stream")
            .body(body);
        let mut resp = self
            .with_auth(rb)
            .send()
            .await
            .map_err(|e| self.unreachable(&e))?;
        let status = resp.status();
        if status == reqwest::StatusCode::UNAUTHORIZED {
            return Err(ClientError::Unauthorized {
                url: self.url.clone(),
            });
        }
        let sse = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        if !sse {
            let text = resp.text().await.map_err(|e| self.unreachable(&e))?;
            return envelope_result(&self.url, status, &text);
        }
        // Server-sent events: `data:` lines, events separated by a blank line.
        let mut events = SseEvents::default();
        loop {
            let chunk = resp.chunk().await.map_err(|e| self.unreachable(&e))?;
            let Some(chunk) = chunk else {
                return Err(ClientError::Failed(format!(
                    "{} closed the stream before answering {method}",
                    self.url
                )));
            };
            for event in events.push(&chunk) {
                let data = event.data;
                let Ok(msg) = serde_json::from_str::<Value>(&data) else {
                    continue;
                };
                if msg["method"] == "notifications/progress" {
                    on_progress(&msg["params"]);
                } else if msg.get("result").is_some() || msg.get("error").is_some() {
                    return envelope_result(&self.url, status, &data);
                }
            }
        }
    }

    /// Calls a tool; returns `content[0].text` parsed as JSON.
    pub async fn call(&self, tool: &str, args: Value) -> Result<Value, ClientError> {
        let result = self
            .rpc("tools/call", json!({"name": tool, "arguments": args}))
            .await?;
        tool_text(tool, result)
    }

    /// Calls the tool a typed request is for, with its arguments.
    pub async fn request(&self, request: &crate::core::Request) -> Result<Value, ClientError> {
        self.call(request.tool().name(), Value::Object(request.arguments()))
            .await
    }

    /// Whether a daemon answers `/healthz` at the address.
    pub async fn healthy(&self) -> bool {
        let base = self
            .url
            .strip_suffix("/mcp")
            .unwrap_or(&self.url)
            .to_string();
        match self
            .http
            .get(format!("{base}/healthz"))
            .timeout(Duration::from_secs(2))
            .send()
            .await
        {
            Ok(r) => r.status().is_success(),
            Err(_) => false,
        }
    }

    /// `GET /events/stream`: the live status snapshots (Server-Sent Events), open.
    pub async fn events_stream(&self) -> Result<reqwest::Response, ClientError> {
        let base = self.url.strip_suffix("/mcp").unwrap_or(&self.url);
        let rb = self.http.get(format!("{base}/events/stream"));
        let resp = self
            .with_auth(rb)
            .send()
            .await
            .map_err(|e| self.unreachable(&e))?;
        match resp.status() {
            reqwest::StatusCode::UNAUTHORIZED => Err(ClientError::Unauthorized {
                url: self.url.clone(),
            }),
            s if s.is_success() => Ok(resp),
            s => Err(ClientError::Failed(format!(
                "{base}/events/stream answered HTTP {s}: {}",
                resp.text().await.unwrap_or_default()
            ))),
        }
    }

    /// `GET /status`: a page of the daemon's state (every section, from one snapshot).
    pub async fn status(
        &self,
        limit: Option<i64>,
        cursor: Option<&str>,
    ) -> Result<Value, ClientError> {
        let base = self.url.strip_suffix("/mcp").unwrap_or(&self.url);
        let mut query = form_urlencoded::Serializer::new(String::new());
        if let Some(n) = limit {
            query.append_pair("limit", &n.to_string());
        }
        if let Some(c) = cursor {
            query.append_pair("cursor", c);
        }
        let query = query.finish();
        let rb = match query.is_empty() {
            true => self.http.get(format!("{base}/status")),
            false => self.http.get(format!("{base}/status?{query}")),
        };
        let resp = self
            .with_auth(rb)
            .send()
            .await
            .map_err(|e| self.unreachable(&e))?;
        let status = resp.status();
        if status == reqwest::StatusCode::UNAUTHORIZED {
            return Err(ClientError::Unauthorized {
                url: self.url.clone(),
            });
        }
        let text = resp.text().await.map_err(|e| self.unreachable(&e))?;
        let v: Value = serde_json::from_str(&text).map_err(|_| {
            ClientError::Failed(format!(
                "{base}/status answered HTTP {status}: {}",
                text.chars().take(200).collect::<String>()
            ))
        })?;
        if !status.is_success() {
            let msg = v["error"]["message"].as_str().unwrap_or("unknown error");
            return Err(ClientError::Failed(msg.to_string()));
        }
        Ok(v)
    }

    /// `host:port` of the URL, for display and for starting a daemon that listens there.
    pub fn authority(&self) -> String {
        authority_of(&self.url)
    }
}

/// A JSON-RPC response body → its `result`, or the error it carries.
fn envelope_result(
    url: &str,
    status: reqwest::StatusCode,
    text: &str,
) -> Result<Value, ClientError> {
    let v: Value = serde_json::from_str(text).map_err(|_| {
        ClientError::Failed(format!(
            "{url} answered HTTP {status} with something that is not JSON-RPC: {}",
            text.chars().take(200).collect::<String>()
        ))
    })?;
    if let Some(err) = v.get("error") {
        let msg = err["message"]
            .as_str()
            .unwrap_or("unknown error")
            .to_string();
        return Err(if status.is_server_error() {
            ClientError::Failed(msg)
        } else {
            ClientError::Refused(msg)
        });
    }
    Ok(v.get("result").cloned().unwrap_or(Value::Null))
}

/// A `tools/call` result → `content[0].text` parsed as JSON. A tool error becomes `Refused`
/// (bad arguments) or `Failed` (the daemon's storage failed or it is shutting down).
fn tool_text(tool: &str, result: Value) -> Result<Value, ClientError> {
    let text = result["content"][0]["text"].as_str().unwrap_or_default();
    if result["isError"] == json!(true) {
        let failed = text.starts_with("storage error") || text.contains("shutting down");
        return Err(if failed {
            ClientError::Failed(text.to_string())
        } else {
            ClientError::Refused(text.to_string())
        });
    }
    serde_json::from_str(text)
        .map_err(|e| ClientError::Failed(format!("{tool} answered unreadable text ({e}): {text}")))
}

/// `http://HOST:PORT/path` → `HOST:PORT` (port 80 when absent).
pub fn authority_of(url: &str) -> String {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let auth = rest.split('/').next().unwrap_or(rest);
    let has_port = if let Some(v6) = auth.strip_prefix('[') {
        v6.contains("]:")
    } else {
        auth.contains(':')
    };
    if has_port {
        auth.to_string()
    } else {
        format!("{auth}:80")
    }
}

/// One server-sent event: its name (`message` when it names none) and its data lines, joined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct SseEvent {
    pub name: String,
    pub data: String,
}

/// Splits a server-sent event stream into events; the one reader of both SSE streams the CLI
/// follows (an MCP answer's, and `status --watch`'s). Bytes are kept until an event is complete
/// (a blank line) and only then decoded: a chunk may end inside a UTF-8 character, and decoding
/// chunk by chunk would turn its halves into U+FFFD. Events without data (heartbeat comments)
/// are dropped.
#[derive(Default)]
pub(super) struct SseEvents {
    buf: Vec<u8>,
    /// How far `buf` is known to hold no blank line (a big event arriving in many chunks is
    /// not searched again from its start at each one).
    searched: usize,
}

impl SseEvents {
    /// Adds `chunk`; returns every event it completed.
    pub(super) fn push(&mut self, chunk: &[u8]) -> Vec<SseEvent> {
        self.buf.extend_from_slice(chunk);
        let mut out = Vec::new();
        loop {
            let from = self.searched.saturating_sub(1);
            let Some(at) = self.buf[from..].windows(2).position(|w| w == b"\n\n") else {
                self.searched = self.buf.len();
                return out;
            };
            let event: Vec<u8> = self.buf.drain(..from + at + 2).collect();
            self.searched = 0;
            let event = String::from_utf8_lossy(&event);
            let mut name = String::from("message");
            let mut data = Vec::new();
            for line in event.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    name = v.trim().to_string();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push(v.strip_prefix(' ').unwrap_or(v));
                }
            }
            if !data.is_empty() {
                out.push(SseEvent {
                    name,
                    data: data.join("\n"),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_character_split_across_chunks_survives() {
        let stream =
            "data: {\"note\":\"caf\u{e9} \u{1f512}\"}\n\nevent: status\ndata: {\"n\":2}\n\n"
                .as_bytes();
        for cut in 0..=stream.len() {
            let mut events = SseEvents::default();
            let mut got = events.push(&stream[..cut]);
            got.extend(events.push(&stream[cut..]));
            let got: Vec<(&str, &str)> = got
                .iter()
                .map(|e| (e.name.as_str(), e.data.as_str()))
                .collect();
            assert_eq!(
                got,
                [
                    ("message", "{\"note\":\"caf\u{e9} \u{1f512}\"}"),
                    ("status", "{\"n\":2}")
                ],
                "cut at byte {cut}"
            );
        }
    }

    #[test]
    fn events_are_cut_out_whole_and_heartbeats_dropped() {
        let mut events = SseEvents::default();
        let got = events.push(b": heartbeat\n\nevent: status\ndata: {\"a\":1}\n\nevent: st");
        let want = SseEvent {
            name: "status".into(),
            data: "{\"a\":1}".into(),
        };
        assert_eq!(got, [want]);
        // The rest of an event cut in the middle, one byte at a time.
        let mut got = Vec::new();
        for b in b"atus\ndata: x\ndata:  y\n\n" {
            got.extend(events.push(&[*b]));
        }
        let want = SseEvent {
            name: "status".into(),
            data: "x\n y".into(),
        };
        assert_eq!(got, [want]);
    }

    #[test]
    fn authorities() {
        assert_eq!(authority_of("http://127.0.0.1:27183"), "127.0.0.1:27183");
        assert_eq!(authority_of("http://localhost:9/mcp"), "localhost:9");
        assert_eq!(authority_of("http://[::1]:5/"), "[::1]:5");
        assert_eq!(authority_of("http://example"), "example:80");
    }
}
