//! `airlock mcp`: the stdio bridge, for MCP clients that only launch stdio servers. It speaks
//! MCP over stdin/stdout (rmcp's `transport::stdio()`) and forwards `tools/list` and
//! `tools/call` to the daemon over HTTP, progress reports included. If no daemon answers, it
//! starts one in the background (`airlock serve`, detached, logging to `$AIRLOCK_HOME/daemon.log`)
//! listening where the URL points, and connects.

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
                if let Err(why) = ensure_daemon(&self.client).await {
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
        serde_json::from_value(r).map_err(|e| {
            ErrorData::internal_error(format!("the daemon's tool list is unreadable: {e}"), None)
        })
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let token = context.meta.get_progress_token();
        let mut params = json!({"name": request.name, "arguments": request.arguments});
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

/// Serves MCP on stdin/stdout until stdin closes.
pub async fn run(client: Client) -> i32 {
    if let Err(why) = ensure_daemon(&client).await {
        // Keep serving: each call tries again, and the agent sees this sentence as a tool error.
        eprintln!("airlock mcp: {why}");
    }
    let bridge = Bridge { client };
    match bridge.serve(rmcp::transport::stdio()).await {
        Ok(running) => match running.waiting().await {
            Ok(_) => exit::OK,
            Err(e) => {
                eprintln!("airlock mcp: {e}");
                exit::UNAVAILABLE
            }
        },
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
