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

use futures::FutureExt;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    ListToolsResult, PaginatedRequestParams, ProgressNotificationParam, ServerCapabilities,
    ServerConfig, Tool,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer, ServerHandler};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::cluster::Core;
use crate::core::{
    claim_orphan, lock_orphan, lock_set_orphan, Coordinator, CoreError, CoreResult, HolderProof,
    Orphan, Page, Paged, ProgressFn, WaitReport,
};
use args::Args;

pub const INSTRUCTIONS: &str = "airlock coordinates agents working on one repository or machine. \
Take a named lock before touching a shared resource (lock_resource with wait_seconds up to 50 \
blocks in the daemon until it frees; never poll), release it with its lock_token. Share state with \
notes (set_note_if for compare-and-swap) and increment_counter for unique numbers. Heartbeat with \
register_agent so your locks release if you die. Hand off with signal_event/wait_for_event and \
share work through push_task/claim_next_task.";

/// The MCP server: a thin shell around the [`Core`]. Cheap to clone (one per request).
#[derive(Clone)]
pub struct AirlockMcp {
    core: Core,
}

/// What a tool run produced: its answer, and the grant to release if nobody reads it.
pub struct Ran {
    pub outcome: CoreResult<Value>,
    pub orphan: Option<Orphan>,
}

impl AirlockMcp {
    pub fn new(core: Core) -> Self {
        AirlockMcp { core }
    }

    /// Runs one tool and returns its result as JSON, or the error to report.
    pub async fn run_tool(
        &self,
        name: &str,
        arguments: &Map<String, Value>,
        progress: Option<ProgressFn>,
    ) -> Result<CoreResult<Value>, ErrorData> {
        let Some(spec) = tools::find(name) else {
            return Err(ErrorData::invalid_params(
                format!("unknown tool: {}", args::clip(name)),
                None,
            ));
        };
        let a = match Args::new(arguments, &spec.arg_names()) {
            Ok(a) => a,
            Err(e) => return Ok(Err(e)),
        };
        Ok(match self.core.local() {
            Some(c) => self
                .core
                .explain(dispatch(&c, name, &a, progress).await.outcome),
            // Another daemon coordinates the shared database: it runs the call.
            None => self.core.forward(name, arguments, progress).await,
        })
    }
}

/// Runs a tool that another daemon forwarded to this one (the coordinator): the same checks and
/// operations as a local call, plus the grant to release should its answer never be read.
pub async fn run_forwarded(core: &Coordinator, name: &str, arguments: &Map<String, Value>) -> Ran {
    let unread = |outcome| Ran {
        outcome,
        orphan: None,
    };
    let Some(spec) = tools::find(name) else {
        return unread(Err(CoreError::invalid(
            "name",
            format!("unknown tool: {}", args::clip(name)),
        )));
    };
    match Args::new(arguments, &spec.arg_names()) {
        Ok(a) => dispatch(core, name, &a, None).await,
        Err(e) => unread(Err(e)),
    }
}

/// Runs one checked tool call on `c`.
async fn dispatch(c: &Coordinator, name: &str, a: &Args<'_>, progress: Option<ProgressFn>) -> Ran {
    let mut orphan = None;
    let outcome = dispatch_inner(c, name, a, progress, &mut orphan).await;
    Ran { outcome, orphan }
}

/// Notes the grant an answer carries in `orphan`, and passes the answer on.
fn granting<T>(
    r: CoreResult<T>,
    orphan: &mut Option<Orphan>,
    of: impl Fn(&T) -> Option<Orphan>,
) -> CoreResult<T> {
    if let Ok(v) = &r {
        *orphan = of(v);
    }
    r
}

async fn dispatch_inner(
    c: &Coordinator,
    name: &str,
    a: &Args<'_>,
    progress: Option<ProgressFn>,
    orphan: &mut Option<Orphan>,
) -> CoreResult<Value> {
    {
        match name {
            "lock_resource" => {
                let lock = a.str("name")?;
                let r = c
                    .lock_resource(
                        lock.clone(),
                        a.str("agent_id")?,
                        a.ttl_seconds()?,
                        a.opt_i64("wait_seconds")?,
                        a.opt_str("wake_token")?,
                        progress,
                    )
                    .await;
                json(granting(r, orphan, lock_orphan(lock)))
            }
            "unlock_resource" => json(c.unlock_resource(a.str("name")?, holder_proof(a)?).await),
            "renew_lock" => json(
                c.renew_lock(a.str("name")?, holder_proof(a)?, a.ttl_seconds()?)
                    .await,
            ),
            "list_locks" => {
                let (page, asked) = page_of(a, true)?;
                paged(c.list_locks_page(page).await, asked, true)
            }
            "lock_resources" => {
                let r = c
                    .lock_resources(
                        a.str_list("names")?,
                        a.str("agent_id")?,
                        a.ttl_seconds()?,
                        a.opt_i64("wait_seconds")?,
                        progress,
                    )
                    .await;
                json(granting(r, orphan, lock_set_orphan))
            }
            "set_note" => json(
                c.set_note(
                    a.str("key")?,
                    a.str("value")?,
                    a.opt_str("author")?,
                    a.ttl_seconds()?,
                )
                .await,
            ),
            "get_note" => json(c.get_note(a.str("key")?).await),
            "list_notes" => {
                let values = a.opt_bool("values")?.unwrap_or(true);
                let (page, asked) = page_of(a, values)?;
                paged(c.list_notes_page(page).await, asked, values)
            }
            "delete_note" => json(c.delete_note(a.str("key")?).await),
            "set_note_if" => json(
                c.set_note_if(
                    a.str("key")?,
                    a.str("expected_value")?,
                    a.str("new_value")?,
                    a.opt_str("author")?,
                    a.ttl_seconds()?,
                )
                .await,
            ),
            "increment_counter" => {
                json(c.increment_counter(a.str("name")?, a.opt_i64("by")?).await)
            }
            "register_agent" => json(c.register_agent(a.str("agent_id")?, a.ttl_seconds()?).await),
            "unregister_agent" => json(c.unregister_agent(a.str("agent_id")?).await),
            "list_agents" => {
                let (page, asked) = page_of(a, true)?;
                paged(c.list_agents_page(page).await, asked, true)
            }
            "signal_event" => json(c.signal_event(a.str("name")?).await),
            "wait_for_event" => json(
                c.wait_for_event(
                    a.str("name")?,
                    a.opt_i64("last_seen_generation")?,
                    a.opt_i64("wait_seconds")?,
                    progress,
                )
                .await,
            ),
            "clear_event" => json(c.clear_event(a.str("name")?).await),
            "push_task" => json(
                c.push_task(
                    a.str("queue")?,
                    a.str("payload")?,
                    a.opt_str("author")?,
                    a.opt_i64("priority")?,
                )
                .await,
            ),
            "claim_next_task" => {
                let r = c
                    .claim_next_task(
                        a.str("queue")?,
                        a.str("agent_id")?,
                        a.opt_i64("lease_seconds")?,
                        a.opt_i64("wait_seconds")?,
                        progress,
                    )
                    .await;
                json(granting(r, orphan, claim_orphan))
            }
            "complete_task" => json(c.complete_task(a.i64("id")?, a.str("lease_token")?).await),
            "fail_task" => json(
                c.fail_task(a.i64("id")?, a.str("lease_token")?, a.opt_bool("requeue")?)
                    .await,
            ),
            "extend_lease" => json(
                c.extend_lease(
                    a.i64("id")?,
                    a.str("lease_token")?,
                    a.opt_i64("lease_seconds")?,
                )
                .await,
            ),
            "list_tasks" => {
                let queue = a.str("queue")?;
                let (page, asked) = page_of(a, true)?;
                paged(c.list_tasks_page(Some(queue), page).await, asked, true)
            }
            other => Err(CoreError::invalid("name", format!("unknown tool {other}"))),
        }
    }
}

/// A list tool's `limit` and `cursor` (and whether either was given).
fn page_of(a: &Args<'_>, values: bool) -> CoreResult<(Page, bool)> {
    let limit = a.opt_i64("limit")?;
    let cursor = a.opt_str("cursor")?;
    let asked = limit.is_some() || cursor.is_some();
    Ok((Page::new(limit, cursor, values)?, asked))
}

/// A list answer: the plain array (the contract's shape) when no page was asked for and the list
/// fits in one; else `{items, next_cursor}` (`null` on the last page). Without `values`, each
/// item's `value` is left out.
fn paged<T: Serialize>(r: CoreResult<Paged<T>>, asked: bool, values: bool) -> CoreResult<Value> {
    let p = r?;
    let mut items = json(Ok(p.items))?;
    if !values {
        if let Value::Array(rows) = &mut items {
            for row in rows {
                if let Value::Object(m) = row {
                    m.remove("value");
                }
            }
        }
    }
    if !asked && p.next_cursor.is_none() {
        return Ok(items);
    }
    Ok(serde_json::json!({"items": items, "next_cursor": p.next_cursor}))
}

fn json<T: Serialize>(r: CoreResult<T>) -> CoreResult<Value> {
    r.and_then(|v| {
        serde_json::to_value(v).map_err(|e| CoreError::Storage(format!("encoding the result: {e}")))
    })
}

/// `lock_token` (preferred) or `agent_id` (v1): exactly one of them.
fn holder_proof(a: &Args<'_>) -> CoreResult<HolderProof> {
    match (a.opt_str("lock_token")?, a.opt_str("agent_id")?) {
        (Some(t), _) => Ok(HolderProof::Token(t)),
        (None, Some(agent)) => Ok(HolderProof::Agent(agent)),
        (None, None) => Err(CoreError::invalid(
            "lock_token",
            "is required (or, weaker and for v1 clients, agent_id)",
        )),
    }
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
    Some(std::sync::Arc::new(move |report: WaitReport| {
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

impl AirlockMcp {
    /// Runs a tool for [`plain_tool_call`]: what `call_tool` does, minus progress reports.
    pub async fn call_plain(
        &self,
        name: &str,
        arguments: Option<&Map<String, Value>>,
    ) -> CallToolResult {
        let empty = Map::new();
        let run = self.run_tool(name, arguments.unwrap_or(&empty), None);
        match shielded(run, || Ok(Err(CoreError::Storage("internal error".into())))).await {
            Ok(outcome) => tool_result(outcome),
            // Only an unknown tool, which `plain_tool_call` already sent to rmcp.
            Err(e) => CallToolResult::error(vec![ContentBlock::text(e.message.to_string())]),
        }
    }
}

/// Runs `fut` so that a panic becomes an error answer instead of a hung request.
async fn shielded<T>(fut: impl Future<Output = T>, on_panic: impl FnOnce() -> T) -> T {
    match AssertUnwindSafe(fut).catch_unwind().await {
        Ok(v) => v,
        Err(_) => {
            tracing::error!("a tool call panicked; answered with an internal error");
            on_panic()
        }
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
            r = shielded(run, || Ok(Err(CoreError::Storage("internal error".into())))) => r,
            _ = context.ct.cancelled() => {
                tracing::debug!(tool = %name, "caller went away");
                Ok(Err(CoreError::ShuttingDown))
            }
        }?;
        Ok(tool_result(outcome).into())
    }
}
