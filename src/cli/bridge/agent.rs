//! The stdio bridge is one agent: it gives calls that name no `agent_id` its own unique id, and
//! keeps the presence of every id used through it alive for as long as its stdin is open. So a
//! model behind `airlock mcp` needs no heartbeat: when the bridge exits its locks go at once
//! (`unregister_agent`), and when it dies they go within [`PRESENCE_TTL_SECONDS`].

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rmcp::model::Tool;
use serde_json::{json, Map, Value};

use crate::cli::client::Client;
use crate::cli::commands::default_agent;
use crate::mcp::tools;

/// Presence TTL the bridge registers its agents with: the bound on how long a dead bridge's
/// locks outlive it.
pub const PRESENCE_TTL_SECONDS: u64 = 60;
/// How often presence is renewed (a third of the TTL: two renewals may fail before a lapse).
const HEARTBEAT: Duration = Duration::from_secs(PRESENCE_TTL_SECONDS / 3);
/// Most agent ids one bridge keeps alive.
const MAX_IDS: usize = 64;
/// Tools whose calls make the agent hold something (a lock, a lease, a presence).
const HOLDING_TOOLS: &[&str] = &[
    "lock_resource",
    "lock_resources",
    "claim_next_task",
    "register_agent",
];

/// The bridge's identity and the agent ids whose presence it keeps.
pub struct BridgeAgent {
    /// The id given to calls that name none: `AIRLOCK_AGENT`, else `mcp:USER@HOST:PID`.
    pub default_id: String,
    /// Ids used through this bridge for holding calls. A std mutex: never held across an await.
    ids: Mutex<BTreeSet<String>>,
    client: Client,
}

impl BridgeAgent {
    pub fn new(client: Client) -> Arc<BridgeAgent> {
        let default_id = std::env::var("AIRLOCK_AGENT")
            .ok()
            .filter(|a| !a.is_empty())
            .unwrap_or_else(|| default_agent("mcp"));
        Arc::new(BridgeAgent {
            default_id,
            ids: Mutex::new(BTreeSet::new()),
            client,
        })
    }

    /// Fills in `agent_id` where the tool takes one and the call omits it, and remembers the id
    /// of a holding call for the heartbeat.
    pub fn fill(&self, tool: &str, arguments: &mut Map<String, Value>) {
        let takes_agent = tools::find(tool).is_some_and(|t| t.arg_names().contains(&"agent_id"));
        if !takes_agent {
            return;
        }
        if arguments.get("agent_id").is_none_or(Value::is_null) {
            arguments.insert("agent_id".into(), json!(self.default_id));
        }
        let Some(id) = arguments["agent_id"].as_str() else {
            return;
        };
        let mut ids = self.ids.lock().unwrap_or_else(|e| e.into_inner());
        if tool == "unregister_agent" {
            ids.remove(id);
        } else if HOLDING_TOOLS.contains(&tool) && ids.len() < MAX_IDS {
            ids.insert(id.to_string());
        }
    }

    /// The daemon's tool list as the bridge offers it: `agent_id` optional, defaulting to ours.
    pub fn offer(&self, tool: &mut Tool) {
        let mut schema = (*tool.input_schema).clone();
        let Some(Value::Object(props)) = schema.get_mut("properties") else {
            return;
        };
        let Some(Value::Object(agent)) = props.get_mut("agent_id") else {
            return;
        };
        let text = agent
            .get("description")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        agent.insert(
            "description".into(),
            json!(format!(
                "{text} Optional through this bridge: it defaults to this session's own id, {}.",
                self.default_id
            )),
        );
        if let Some(Value::Array(required)) = schema.get_mut("required") {
            required.retain(|r| r != "agent_id");
        }
        tool.input_schema = Arc::new(schema);
    }

    fn ids(&self) -> Vec<String> {
        let ids = self.ids.lock().unwrap_or_else(|e| e.into_inner());
        let mut all: Vec<String> = ids.iter().cloned().collect();
        if !ids.contains(&self.default_id) {
            all.push(self.default_id.clone());
        }
        all
    }

    /// Renews the presence of every id in use, every [`HEARTBEAT`], until the task is aborted.
    pub async fn heartbeat(self: Arc<Self>) {
        loop {
            for id in self.ids() {
                let args = json!({"agent_id": id, "ttl_seconds": PRESENCE_TTL_SECONDS});
                if let Err(e) = self.client.call("register_agent", args).await {
                    tracing::warn!(agent = %id, "presence heartbeat failed: {e}");
                }
            }
            tokio::time::sleep(HEARTBEAT).await;
        }
    }

    /// The bridge's client went away: its agents leave, releasing their locks now.
    pub async fn leave(&self) {
        for id in self.ids() {
            let r = self
                .client
                .call("unregister_agent", json!({"agent_id": id}))
                .await;
            if let Err(e) = r {
                tracing::warn!(agent = %id, "unregister on exit failed: {e}");
            }
        }
    }
}
