//! One `agent_id`, two clients: noticed, and said in the answer.
//!
//! A lock's holder is its `agent_id`. Two sessions that both call themselves `"claude"` are one
//! holder to the daemon: both get `locked:true`, with the same token. The daemon cannot tell them
//! apart by the id, so it looks at where calls come from: a client may name itself in the
//! `X-Airlock-Source` header (the stdio bridge does), and an MCP session id
//! (`Mcp-Session-Id`) names one too. When one `agent_id` arrives from two different sources
//! within [`WINDOW`], the answer gets a `warning` field saying so. Calls that name no source are
//! not tracked (nothing tells two of them apart); see the README, "One agent, one id".
//!
//! The MCP layer and the HTTP edge call [`Sightings::check`] with a call's headers and
//! arguments and, when it returns a warning, [`annotate`] the tool result with it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::HeaderMap;
use rmcp::model::{CallToolResult, ContentBlock};
use serde_json::{Map, Value};

/// The header a client names itself with.
pub const SOURCE_HEADER: &str = "x-airlock-source";
/// How long a source keeps its claim on an `agent_id` after its last call.
pub const WINDOW: Duration = Duration::from_secs(120);
/// Most agent ids remembered; past this, stale ones are dropped, and new ones are not recorded
/// until there is room (a flood of ids must not grow memory without bound).
const MAX_AGENTS: usize = 10_000;
/// The longest source label kept (a header is client-controlled).
const MAX_SOURCE_CHARS: usize = 200;

/// Recently seen (agent_id → sources) pairs. Shared by every request of one daemon.
#[derive(Default)]
pub struct Sightings {
    /// agent_id → (source, last seen). A std mutex: nothing is awaited while it is held.
    seen: Mutex<HashMap<String, Vec<(String, Instant)>>>,
}

impl Sightings {
    /// Records a call by `agent_id` from `source` at `now`; returns the warning to add to its
    /// answer when another source used the same id within [`WINDOW`].
    pub fn note(&self, agent_id: &str, source: &str, now: Instant) -> Option<String> {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let fresh = |t: &Instant| now.saturating_duration_since(*t) < WINDOW;
        if seen.len() >= MAX_AGENTS && !seen.contains_key(agent_id) {
            seen.retain(|_, sources| {
                sources.retain(|(_, t)| fresh(t));
                !sources.is_empty()
            });
            if seen.len() >= MAX_AGENTS {
                return None;
            }
        }
        let sources = seen.entry(agent_id.to_string()).or_default();
        sources.retain(|(_, t)| fresh(t));
        let others: Vec<String> = sources
            .iter()
            .filter(|(s, _)| s != source)
            .map(|(s, _)| s.clone())
            .collect();
        match sources.iter_mut().find(|(s, _)| s == source) {
            Some(entry) => entry.1 = now,
            None => sources.push((source.to_string(), now)),
        }
        if others.is_empty() {
            return None;
        }
        Some(format!(
            "agent_id \"{agent_id}\" is also being used by another client ({}) in the last {} s; \
             to the daemon you are one agent, so you share each other's locks (both get \
             locked:true, with the same lock_token) and neither is protected from the other. \
             Use an agent_id of your own: in Claude Code, the `claude:<session id>` airlock's \
             hooks give you; otherwise call increment_counter with name \"agent-ids\" once and \
             use \"agent-<value>\".",
            others.join(", "),
            WINDOW.as_secs()
        ))
    }

    /// The warning for a tool call with these headers and arguments, if any.
    pub fn check(
        &self,
        headers: &HeaderMap,
        arguments: Option<&Map<String, Value>>,
    ) -> Option<String> {
        let (agent_id, source) = sighting_of(headers, arguments)?;
        self.note(&agent_id, &source, Instant::now())
    }
}

/// The agent a tool call names and the client it comes from, for [`Sightings::note`]: `None`
/// when it names no agent or the client says nothing of itself.
pub fn sighting_of(
    headers: &HeaderMap,
    arguments: Option<&Map<String, Value>>,
) -> Option<(String, String)> {
    let agent_id = arguments?.get("agent_id")?.as_str()?;
    Some((agent_id.to_string(), source_of(headers)?))
}

/// Where a call comes from, as the client says: `X-Airlock-Source`, else its MCP session.
pub fn source_of(headers: &HeaderMap) -> Option<String> {
    let label = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(|v| v.chars().take(MAX_SOURCE_CHARS).collect::<String>())
    };
    label(SOURCE_HEADER).or_else(|| label("mcp-session-id").map(|s| format!("mcp-session:{s}")))
}

/// Adds `warning` to a successful tool result that is a JSON object: to its text and to its
/// structured content.
pub fn annotate(result: &mut CallToolResult, warning: &str) {
    if result.is_error == Some(true) {
        return;
    }
    if let Some(Value::Object(m)) = result.structured_content.as_mut() {
        m.insert("warning".into(), Value::String(warning.to_string()));
    }
    if let Some(ContentBlock::Text(t)) = result.content.first_mut() {
        if let Ok(Value::Object(mut m)) = serde_json::from_str::<Value>(&t.text) {
            m.insert("warning".into(), Value::String(warning.to_string()));
            t.text = Value::Object(m).to_string();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_id_from_two_sources_at_once_is_flagged() {
        let s = Sightings::default();
        let t0 = Instant::now();
        assert_eq!(s.note("claude", "bridge:1", t0), None);
        assert_eq!(
            s.note("claude", "bridge:1", t0 + Duration::from_secs(5)),
            None
        );
        let w = s
            .note("claude", "bridge:2", t0 + Duration::from_secs(10))
            .unwrap();
        assert!(w.contains("\"claude\"") && w.contains("bridge:1"), "{w}");
        // The first source hears about it too on its next call.
        assert!(s
            .note("claude", "bridge:1", t0 + Duration::from_secs(11))
            .is_some());
        // Other ids are theirs alone.
        assert_eq!(s.note("other", "bridge:2", t0), None);
        // Long after the other source's last call, the id is one source's again.
        let later = t0 + Duration::from_secs(11) + WINDOW + Duration::from_secs(1);
        assert_eq!(s.note("claude", "bridge:2", later), None);
    }

    #[test]
    fn only_named_sources_count() {
        let mut h = HeaderMap::new();
        assert_eq!(source_of(&h), None);
        h.insert("mcp-session-id", "abc".parse().unwrap());
        assert_eq!(source_of(&h).as_deref(), Some("mcp-session:abc"));
        h.insert(SOURCE_HEADER, "mcp-bridge:me@host:42".parse().unwrap());
        assert_eq!(source_of(&h).as_deref(), Some("mcp-bridge:me@host:42"));
    }

    #[test]
    fn the_warning_lands_in_text_and_structured_content() {
        let mut r = crate::mcp::tool_result(Ok(serde_json::json!({"locked": true})));
        annotate(&mut r, "careful");
        assert_eq!(r.structured_content.as_ref().unwrap()["warning"], "careful");
        let ContentBlock::Text(t) = &r.content[0] else {
            panic!("text content")
        };
        let v: Value = serde_json::from_str(&t.text).unwrap();
        assert_eq!(v["warning"], "careful");
        assert_eq!(v["locked"], true);
    }
}
