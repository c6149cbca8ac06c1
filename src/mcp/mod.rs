//! The MCP layer: maps tools to core operations through the official `rmcp` SDK.
//!
//! This is the one place where core results become tool results and core errors become tool
//! errors (`isError: true`, the message naming the field and the rule) or JSON-RPC errors (an
//! unknown tool). `content[0].text` always carries the contract's return shape as JSON text; an
//! object result is also given as `structuredContent`.

pub mod args;
pub mod check;
pub mod tools;

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Instant;

use futures::FutureExt;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    ListToolsResult, PaginatedRequestParams, ProgressNotificationParam, ServerCapabilities,
    ServerConfig, Tool,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer, ServerHandler};
use serde_json::{Map, Value};

use crate::core::{CoreApi, CoreError, CoreResult, ProgressFn, Request, WaitReport};
use args::Args;

pub const INSTRUCTIONS: &str = "airlock coordinates agents working on one repository or machine. \
Take a named lock before touching a shared resource (lock_resource with wait_seconds up to 50 \
blocks in the daemon until it frees; never poll), release it with its lock_token. Share state with \
notes (set_note_if for compare-and-swap) and increment_counter for unique numbers. Hand off with \
signal_event/wait_for_event and share work through push_task/claim_next_task. Use one agent_id of \
your own in every call, never a shared name like \"claude\": airlock's Claude Code hooks give you \
claude:<session id>, and through `airlock mcp` it is filled in when you omit it. Presence (which \
releases your locks if you die) is kept for you by those hooks and by `airlock mcp`; otherwise call \
register_agent once with ttl_seconds longer than your longest pause between calls (e.g. 3600), \
and unregister_agent when you finish, which releases your locks at once.";

/// The MCP server: a thin shell around the core ([`CoreApi`]). Cheap to clone (one per request).
#[derive(Clone)]
pub struct AirlockMcp {
    core: Arc<dyn CoreApi>,
    /// Which clients used which agent_id lately (shared by every request of the daemon).
    sightings: Arc<crate::identity::Sightings>,
}

impl AirlockMcp {
    pub fn new(core: Arc<dyn CoreApi>) -> Self {
        AirlockMcp {
            core,
            sightings: Default::default(),
        }
    }

    /// Shares one record of (agent_id, client) sightings among the daemon's requests.
    pub fn with_sightings(mut self, sightings: Arc<crate::identity::Sightings>) -> Self {
        self.sightings = sightings;
        self
    }

    /// The warning for an agent_id that another client uses too, if any.
    pub fn identity_warning(
        &self,
        headers: &http::HeaderMap,
        arguments: Option<&Map<String, Value>>,
    ) -> Option<String> {
        self.sightings.check(headers, arguments)
    }

    /// Runs one tool and returns its result as JSON, or the error to report.
    pub async fn run_tool(
        &self,
        name: &str,
        arguments: &Map<String, Value>,
        progress: Option<ProgressFn>,
    ) -> Result<CoreResult<Value>, ErrorData> {
        Ok(match parse_tool(name, arguments)? {
            Ok(request) => self
                .core
                .call(request, progress)
                .await
                .and_then(|r| r.to_json()),
            Err(e) => Err(e),
        })
    }
}

/// The request a call of tool `name` makes: an error to report for an unknown tool, the
/// refusal to answer for arguments the tool refuses.
fn parse_tool(
    name: &str,
    arguments: &Map<String, Value>,
) -> Result<CoreResult<Request>, ErrorData> {
    let Some(spec) = tools::find(name) else {
        return Err(ErrorData::invalid_params(
            format!("unknown tool: {}", args::clip(name)),
            None,
        ));
    };
    Ok(Args::new(arguments, &spec.arg_names()).and_then(|a| (spec.parse)(&a)))
}

/// Turns a tool's outcome into the MCP result: the JSON as text, and as structured content
/// when it is an object (the spec allows only objects there).
pub fn tool_result(outcome: CoreResult<Value>) -> CallToolResult {
    match outcome {
        Ok(value) => {
            let text = value.to_string();
            let mut r = CallToolResult::success(vec![ContentBlock::text(text)]);
            if value.is_object() {
                r.structured_content = Some(value);
            }
            r
        }
        Err(e) => CallToolResult::error(vec![ContentBlock::text(e.to_string())]),
    }
}

/// Sends MCP progress notifications for a parked call, if the request asked for them.
fn progress_sender(context: &RequestContext<RoleServer>) -> Option<ProgressFn> {
    let token = context.meta.get_progress_token()?;
    let peer = context.peer.clone();
    Some(Arc::new(move |report: WaitReport| {
        let mut message = format!(
            "waiting {}s of {}s",
            report.waited_seconds, report.window_seconds
        );
        if let Some(p) = &report.progress {
            if let Some(pos) = p.queue_position {
                message.push_str(&format!(", position {pos} in line"));
            }
            if let Some(h) = &p.held_by {
                message.push_str(&format!(", held by {h}"));
            }
        }
        let param = ProgressNotificationParam::new(token.clone(), report.waited_seconds as f64)
            .with_total(report.window_seconds as f64)
            .with_message(message);
        let peer = peer.clone();
        tokio::spawn(async move {
            let _ = peer.notify_progress(param).await;
        });
    }))
}

/// The parts of a plain `tools/call` the edge answers itself.
pub struct PlainToolCall<'a> {
    pub id: &'a Value,
    pub name: &'a str,
    pub arguments: Option<&'a Map<String, Value>>,
}

/// A plain JSON-RPC `tools/call`, as the curl recipe sends it, that the edge may answer
/// without rmcp's per-request machinery (a spawned service, its transport and channels): the
/// id, the tool and its arguments. `None` for anything rmcp must judge: another method, an
/// unknown tool, `_meta` (progress tokens) or any other parameter, non-object arguments.
/// The answer is the same `CallToolResult` rmcp would send (BENCHMARKS.md has what it saves).
pub fn plain_tool_call(body: &Map<String, Value>) -> Option<PlainToolCall<'_>> {
    if body.get("jsonrpc")?.as_str()? != "2.0" || body.get("method")?.as_str()? != "tools/call" {
        return None;
    }
    let id = body.get("id").filter(|id| id.is_string() || id.is_i64())?;
    let params = body.get("params")?.as_object()?;
    if params.keys().any(|k| k != "name" && k != "arguments") {
        return None;
    }
    let name = params.get("name")?.as_str()?;
    tools::find(name)?;
    let arguments = match params.get("arguments") {
        None => None,
        Some(Value::Object(m)) => Some(m),
        Some(_) => return None,
    };
    Some(PlainToolCall {
        id,
        name,
        arguments,
    })
}

/// A plain `tools/call` ([`plain_tool_call`]), read and checked, owning what it needs: the
/// request it came in (its bytes, headers and parsed body) can be dropped while it runs, which
/// may park it for 50 s.
pub struct PlainCall {
    pub id: Value,
    request: CoreResult<Request>,
    /// The agent and the client it came from, noted once it has run (see `identity`).
    sighting: Option<(String, String)>,
}

impl AirlockMcp {
    /// A [`PlainCall`] of `body`, if [`plain_tool_call`] accepts it.
    pub fn plain_call(
        &self,
        headers: &http::HeaderMap,
        body: &Map<String, Value>,
    ) -> Option<PlainCall> {
        let call = plain_tool_call(body)?;
        let empty = Map::new();
        let arguments = call.arguments.unwrap_or(&empty);
        let request = match std::panic::catch_unwind(|| parse_tool(call.name, arguments)) {
            Ok(Ok(request)) => request,
            // Only an unknown tool, which `plain_tool_call` sends to rmcp.
            Ok(Err(_)) => return None,
            Err(_) => Err(panicked()),
        };
        Some(PlainCall {
            id: call.id.clone(),
            request,
            sighting: crate::identity::sighting_of(headers, call.arguments),
        })
    }

    /// Runs a [`PlainCall`]: what `call_tool` does, minus progress reports. Its id and result.
    ///
    /// The call's future is made here and the request goes into it at once, so what waits
    /// keeps one copy of the request (in the call's own future), not one per layer.
    pub fn answer_plain(
        &self,
        call: PlainCall,
    ) -> impl Future<Output = (Value, CallToolResult)> + Send + '_ {
        let PlainCall {
            id,
            request,
            sighting,
        } = call;
        let running = request.map(|request| self.core.call(request, None));
        async move {
            let outcome = match running {
                Ok(running) => {
                    let run = async move { running.await.and_then(|r| r.to_json()) };
                    shielded(run, || Err(panicked())).await
                }
                Err(e) => Err(e),
            };
            let mut result = tool_result(outcome);
            if let Some((agent_id, source)) = sighting {
                if let Some(w) = self.sightings.note(&agent_id, &source, Instant::now()) {
                    crate::identity::annotate(&mut result, &w);
                }
            }
            (id, result)
        }
    }
}

/// Logs that a tool call panicked; the error it is answered with.
fn panicked() -> CoreError {
    tracing::error!("a tool call panicked; answered with an internal error");
    CoreError::Storage("internal error".into())
}

/// Runs `fut` so that a panic becomes an error answer instead of a hung request.
async fn shielded<T>(fut: impl Future<Output = T>, on_panic: impl FnOnce() -> T) -> T {
    match AssertUnwindSafe(fut).catch_unwind().await {
        Ok(v) => v,
        Err(_) => on_panic(),
    }
}

impl ServerHandler for AirlockMcp {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("airlock", env!("CARGO_PKG_VERSION")))
            .with_instructions(INSTRUCTIONS)
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items(
            tools::TOOLS.iter().map(|t| t.to_tool()).collect(),
        ))
    }

    fn get_tool(&self, name: &str) -> Option<Tool> {
        tools::find(name).map(|t| t.to_tool())
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let empty = Map::new();
        let arguments = request.arguments.as_ref().unwrap_or(&empty);
        let progress = progress_sender(&context);
        let name = request.name.to_string();
        let run = self.run_tool(&name, arguments, progress);
        // A caller that disconnects cancels `ct`; dropping `run` then takes it out of any line.
        let outcome = tokio::select! {
            r = shielded(run, || Ok(Err(panicked()))) => r,
            _ = context.ct.cancelled() => {
                tracing::debug!(tool = %name, "caller went away");
                Ok(Err(CoreError::ShuttingDown))
            }
        }?;
        let mut result = tool_result(outcome);
        let parts = context.extensions.get::<http::request::Parts>();
        if let Some(w) = parts.and_then(|p| self.identity_warning(&p.headers, Some(arguments))) {
            crate::identity::annotate(&mut result, &w);
        }
        Ok(result.into())
    }
}
