//! `airlock mcp`: the stdio bridge, for MCP clients that only launch stdio servers. It speaks
//! MCP over stdin/stdout (rmcp's `transport::stdio()`) and forwards `tools/list` and
//! `tools/call` to the daemon over HTTP, progress reports included. If no daemon answers, it
//! starts one in the background (`airlock serve`, detached, logging to `$AIRLOCK_HOME/daemon.log`)
//! listening where the URL points, and connects.
//!
//! The bridge is one agent ([`agent`]): it fills in its own unique `agent_id` where a call
//! omits it, and heartbeats presence while its stdin is open.

mod agent;

use std::io::{BufRead, BufReader};
use std::net::IpAddr;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    ListToolsResult, PaginatedRequestParams, ProgressNotificationParam, ServerCapabilities,
    ServerConfig,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer, ServerHandler, ServiceExt};
use serde_json::{json, Value};

use super::client::{Client, ClientError};
use super::exit;
use crate::config;

/// How long a freshly started daemon may take to announce its address.
const START_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone)]
struct Bridge {
    client: Client,
    /// Held while making sure a daemon answers, so the start after the handshake and a call
    /// that found no daemon do not both start one.
    starting: std::sync::Arc<tokio::sync::Mutex<()>>,
    /// The one agent this bridge is: fills in `agent_id`, keeps presence.
    agent: std::sync::Arc<agent::BridgeAgent>,
}

/// Whether `host` (brackets stripped) is this machine.
fn is_local(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The `--listen` address for a daemon reachable at `authority` (`host:port`), if local.
fn listen_for(authority: &str) -> Option<String> {
    let (host, port) = authority.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if !is_local(host) {
        return None;
    }
    if host.eq_ignore_ascii_case("localhost") {
        return Some(format!("127.0.0.1:{port}"));
    }
    Some(authority.to_string())
}

/// Makes sure a daemon answers at the client's URL, starting one in the background if the URL
/// is local and nothing answers. Returns a sentence for the user when it cannot.
pub async fn ensure_daemon(client: &Client) -> Result<(), String> {
    if client.healthy().await {
        return Ok(());
    }
    let Some(listen) = listen_for(&client.authority()) else {
        return Err(format!(
            "no airlock daemon answers at {} and it is not a local address, so none was started",
            client.url
        ));
    };
    let home = config::home_dir();
    config::prepare_home(&home).map_err(|e| e.to_string())?;
    let log_path = home.join("daemon.log");
    let log = config::open_private_log(&log_path)
        .map_err(|e| format!("cannot open {}: {e}", log_path.display()))?;
    let err_log = log
        .try_clone()
        .map_err(|e| format!("cannot open {}: {e}", log_path.display()))?;
    let exe = std::env::current_exe().map_err(|e| format!("cannot find my own binary: {e}"))?;
    let mut cmd = Command::new(exe);
    cmd.args(["serve", "--listen", &listen])
        .env("AIRLOCK_HOME", &home)
        .stdin(Stdio::null())
        // The daemon prints its address on stdout once bound: we read that line instead of
        // polling, then let go of the pipe.
        .stdout(Stdio::piped())
        .stderr(err_log);
    // SAFETY: setsid() is async-signal-safe; it detaches the daemon from our session and
    // terminal so it outlives the bridge and its client.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start `airlock serve`: {e}"))?;
    let stdout = child.stdout.take();
    let announced = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        if let Some(out) = stdout {
            let _ = BufReader::new(out).read_line(&mut line);
        }
        line
    });
    let line = tokio::time::timeout(START_TIMEOUT, announced)
        .await
        .ok()
        .and_then(|r| r.ok())
        .unwrap_or_default();
    use std::io::Write;
    let mut log = log;
    let _ = log.write_all(line.as_bytes());
    if line.starts_with("airlock listening on") {
        tracing::info!(listen = %listen, log = %log_path.display(), "started an airlock daemon in the background");
        // Reap it if it ever exits while we run; it was started to outlive us.
        std::thread::spawn(move || {
            let _ = child.wait();
        });
        return Ok(());
    }
    // It did not start: perhaps another bridge's daemon won the race for the port.
    let _ = child.wait();
    if client.healthy().await {
        return Ok(());
    }
    Err(format!(
        "no airlock daemon answers at {} and starting one failed; see {}",
        client.url,
        log_path.display()
    ))
}

fn to_error(e: ClientError) -> ErrorData {
    match e {
        ClientError::Refused(m) => ErrorData::invalid_params(m, None),
        other => ErrorData::internal_error(other.to_string(), None),
    }
}

impl Bridge {
    /// [`ensure_daemon`], one at a time.
    async fn ensure_daemon(&self) -> Result<(), String> {
        let _one = self.starting.lock().await;
        ensure_daemon(&self.client).await
    }

    /// Forwards one request, starting the daemon again if it has gone away.
    async fn forward(
        &self,
        method: &str,
        params: Value,
        mut on_progress: impl FnMut(&Value),
    ) -> Result<Value, ClientError> {
        match self
            .client
            .rpc_with_progress(method, params.clone(), &mut on_progress)
            .await
        {
            Err(ClientError::Unreachable { .. }) => {
                if let Err(why) = self.ensure_daemon().await {
                    tracing::warn!("{why}");
                }
                self.client
                    .rpc_with_progress(method, params, &mut on_progress)
                    .await
            }
            other => other,
        }
    }
}

impl ServerHandler for Bridge {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("airlock", env!("CARGO_PKG_VERSION")))
            .with_instructions(crate::mcp::INSTRUCTIONS)
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let r = self
            .forward("tools/list", json!({}), |_| {})
            .await
            .map_err(to_error)?;
        let mut list: ListToolsResult = serde_json::from_value(r).map_err(|e| {
            ErrorData::internal_error(format!("the daemon's tool list is unreadable: {e}"), None)
        })?;
        list.tools.iter_mut().for_each(|t| self.agent.offer(t));
        Ok(list)
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let token = context.meta.get_progress_token();
        let mut arguments = request.arguments.clone().unwrap_or_default();
        self.agent.fill(&request.name, &mut arguments);
        let mut params = json!({"name": request.name, "arguments": arguments});
        if token.is_some() {
            params["_meta"] = json!({"progressToken": 1});
        }
        let peer = context.peer.clone();
        let relay = move |p: &Value| {
            let Some(token) = token.clone() else { return };
            let mut param =
                ProgressNotificationParam::new(token, p["progress"].as_f64().unwrap_or(0.0));
            if let Some(t) = p["total"].as_f64() {
                param = param.with_total(t);
            }
            if let Some(m) = p["message"].as_str() {
                param = param.with_message(m.to_string());
            }
            let peer = peer.clone();
            tokio::spawn(async move {
                let _ = peer.notify_progress(param).await;
            });
        };
        // If the stdio client cancels, dropping the HTTP request makes the daemon leave the line.
        let outcome = tokio::select! {
            r = self.forward("tools/call", params, relay) => r,
            _ = context.ct.cancelled() => {
                return Err(ErrorData::internal_error("cancelled by the client", None));
            }
        };
        match outcome {
            Ok(r) => {
                let result: CallToolResult = serde_json::from_value(r).map_err(|e| {
                    ErrorData::internal_error(
                        format!("the daemon's answer is unreadable: {e}"),
                        None,
                    )
                })?;
                Ok(result.into())
            }
            Err(ClientError::Refused(m)) => Err(ErrorData::invalid_params(m, None)),
            // The agent reads tool errors; tell it what is wrong and how to fix it.
            Err(e) => Ok(CallToolResult::error(vec![ContentBlock::text(e.to_string())]).into()),
        }
    }
}

/// Serves MCP on stdin/stdout until stdin closes. Nothing is started before a client has sent a
/// valid `initialize`: bare `airlock` with a non-terminal stdin (a script, cron, an agent's shell
/// tool) must not leave a daemon behind. `bare` says the bridge was chosen for want of a
/// command, which changes what a failed handshake is told. The bridge is one agent: it fills in
/// a unique `agent_id` where a call omits it and keeps the presence of the ids used through it
/// while stdin is open.
pub async fn run(client: Client, bare: bool) -> i32 {
    let client = client.with_source(super::commands::default_agent("airlock-mcp"));
    let agent = agent::BridgeAgent::new(client.clone());
    let bridge = Bridge {
        client,
        starting: Default::default(),
        agent: agent.clone(),
    };
    match bridge.clone().serve(rmcp::transport::stdio()).await {
        Ok(running) => {
            // The handshake is done: now make sure a daemon answers (started if need be), so the
            // first call does not wait for it. Each call tries again if this fails, and the
            // agent sees the sentence as a tool error.
            if let Err(why) = bridge.ensure_daemon().await {
                eprintln!("airlock mcp: {why}");
            }
            let heartbeat = tokio::spawn(agent.clone().heartbeat());
            let code = match running.waiting().await {
                Ok(_) => exit::OK,
                Err(e) => {
                    eprintln!("airlock mcp: {e}");
                    exit::UNAVAILABLE
                }
            };
            // Stdin closed: the client is gone, and so is this agent.
            heartbeat.abort();
            agent.leave().await;
            code
        }
        Err(e) if bare => {
            eprintln!(
                "airlock: with no command and stdin not a terminal, airlock acts as the stdio MCP \
                 bridge, but stdin did not open an MCP session ({e}); nothing was started. Give a \
                 command (`airlock --help` lists them)."
            );
            exit::USAGE
        }
        Err(e) => {
            eprintln!("airlock mcp: the MCP handshake on stdin/stdout failed: {e}");
            exit::UNAVAILABLE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_matches_the_url() {
        assert_eq!(
            listen_for("127.0.0.1:4000").as_deref(),
            Some("127.0.0.1:4000")
        );
        assert_eq!(
            listen_for("localhost:4000").as_deref(),
            Some("127.0.0.1:4000")
        );
        assert_eq!(listen_for("[::1]:4000").as_deref(), Some("[::1]:4000"));
        assert_eq!(listen_for("example.com:4000"), None);
    }
}
