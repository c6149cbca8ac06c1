//! Tool calls as an agent sends them: the JSON-RPC body of the README's curl recipe, the reading
//! of its answer, and [`Rpc`], a keep-alive client for many concurrent calls (the benchmark's).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

/// The body of a `tools/call` request, as the README's curl recipe sends it.
pub fn tool_call(id: u64, tool: &str, args: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
           "params": {"name": tool, "arguments": args}})
}

/// Why a tool call has no result.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CallError {
    /// A JSON-RPC error (the request itself was refused).
    #[error("JSON-RPC error: {0}")]
    Rpc(Value),
    /// A tool error (`isError: true`): its message.
    #[error("{0}")]
    Tool(String),
    /// An answer that is neither.
    #[error("{0}")]
    Malformed(String),
}

/// The result of a `tools/call` answer: `content[0].text` parsed as JSON.
pub fn tool_answer(body: &Value) -> Result<Value, CallError> {
    if let Some(e) = body.get("error") {
        return Err(CallError::Rpc(e.clone()));
    }
    let result = &body["result"];
    let text = result["content"][0]["text"]
        .as_str()
        .ok_or_else(|| CallError::Malformed(format!("no text content: {body}")))?;
    if result["isError"] == json!(true) {
        return Err(CallError::Tool(text.to_string()));
    }
    serde_json::from_str(text).map_err(|e| CallError::Malformed(format!("{e}: {text}")))
}

/// What went wrong with a call through [`Rpc`].
#[derive(Debug, thiserror::Error)]
#[error("{tool}: {what}")]
pub struct RpcError {
    pub tool: String,
    pub what: String,
}

/// A keep-alive JSON-RPC client: concurrent calls on one `Rpc` each get their own pooled
/// connection, reused call after call.
#[derive(Clone)]
pub struct Rpc {
    http: reqwest::Client,
    url: Arc<str>,
    auth: Arc<str>,
    next_id: Arc<AtomicU64>,
    /// Sent as `MCP-Protocol-Version`, as MCP clients do (the daemon then answers through rmcp).
    protocol_version: Option<&'static str>,
}

impl Rpc {
    pub fn new(url: &str, token: &str) -> Rpc {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(usize::MAX)
            .pool_idle_timeout(None)
            .tcp_nodelay(true)
            .no_proxy()
            .timeout(Duration::from_secs(70))
            .build()
            .expect("build the HTTP client");
        Rpc {
            http,
            url: url.into(),
            auth: format!("Bearer {token}").into(),
            next_id: Arc::new(AtomicU64::new(1)),
            protocol_version: None,
        }
    }

    /// The same client, sending `MCP-Protocol-Version` like an MCP client.
    pub fn as_mcp_client(&self) -> Rpc {
        Rpc {
            protocol_version: Some("2025-06-18"),
            ..self.clone()
        }
    }

    /// `tools/call` as the README's curl recipe sends it; returns `content[0].text` parsed.
    pub async fn call(&self, tool: &str, args: Value) -> Result<Value, RpcError> {
        let body = self.send(tool, args).await?;
        tool_answer(&body).map_err(|e| fail(tool, e))
    }

    /// Like [`Rpc::call`], but a tool error (`isError: true`) is the expected answer.
    pub async fn call_refused(&self, tool: &str, args: Value) -> Result<(), RpcError> {
        let body = self.send(tool, args).await?;
        match tool_answer(&body) {
            Err(CallError::Tool(_)) => Ok(()),
            Ok(v) => Err(fail(tool, format!("expected a refusal, got {v}"))),
            Err(e) => Err(fail(tool, e)),
        }
    }

    /// `GET /status`: the daemon's snapshot, with the engine's counts.
    pub async fn status(&self) -> Result<Value, RpcError> {
        let url = format!("{}/status", self.url.trim_end_matches('/'));
        let resp = self
            .http
            .get(url)
            .header("Authorization", &*self.auth)
            .send()
            .await
            .map_err(|e| fail("/status", format!("send: {e}")))?;
        read_json("/status", resp).await
    }

    async fn send(&self, tool: &str, args: Value) -> Result<Value, RpcError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut req = self
            .http
            .post(&*self.url)
            .header("Content-Type", "application/json")
            .header("Authorization", &*self.auth);
        if let Some(v) = self.protocol_version {
            req = req.header("MCP-Protocol-Version", v);
        }
        let resp = req
            .body(tool_call(id, tool, args).to_string())
            .send()
            .await
            .map_err(|e| fail(tool, format!("send: {e}")))?;
        read_json(tool, resp).await
    }
}

fn fail(tool: &str, what: impl ToString) -> RpcError {
    RpcError {
        tool: tool.to_string(),
        what: what.to_string(),
    }
}

async fn read_json(what: &str, resp: reqwest::Response) -> Result<Value, RpcError> {
    let status = resp.status();
    let bytes = resp
        .bytes()
        .await
        .map_err(|e| fail(what, format!("body: {e}")))?;
    if !status.is_success() {
        let text = String::from_utf8_lossy(&bytes);
        return Err(fail(what, format!("HTTP {status}: {text}")));
    }
    serde_json::from_slice(&bytes).map_err(|e| fail(what, format!("JSON: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_read_as_results_tool_errors_or_refusals() {
        let ok = json!({"result": {"content": [{"type": "text", "text": "{\"value\":1}"}]}});
        assert_eq!(tool_answer(&ok), Ok(json!({"value": 1})));
        let tool = json!({"result": {"isError": true, "content": [{"text": "ttl_seconds ..."}]}});
        assert_eq!(
            tool_answer(&tool),
            Err(CallError::Tool("ttl_seconds ...".into()))
        );
        let rpc = json!({"error": {"code": -32601}});
        assert_eq!(
            tool_answer(&rpc),
            Err(CallError::Rpc(json!({"code": -32601})))
        );
        assert!(matches!(
            tool_answer(&json!({"result": {}})),
            Err(CallError::Malformed(_))
        ));
    }
}
