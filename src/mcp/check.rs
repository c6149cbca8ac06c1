//! The request path without a daemon: decode a body the way the edge and rmcp do, and check a
//! `tools/call`'s arguments exactly as the core does, with nothing stored. The fuzz target
//! (`fuzz/`) drives this; so can tests.

use rmcp::model::{ClientJsonRpcMessage, ClientRequest, JsonRpcMessage};
use serde_json::Value;

use super::AirlockMcp;
use crate::core::{Coordinator, CoreError};
use crate::http::decode_body;

/// What the daemon would do with one request body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestCheck {
    /// Refused at the HTTP edge with this status and JSON-RPC code (a body that is not one JSON
    /// object, or a `tools/call` whose params have the wrong shape).
    Edge { status: u16, code: i64 },
    /// One JSON object, but not a JSON-RPC message rmcp accepts.
    NotJsonRpc,
    /// A JSON-RPC message other than `tools/call`; rmcp answers it.
    Other,
    /// `tools/call` naming no tool of airlock.
    UnknownTool(String),
    /// The arguments broke a rule; the message names the field and the rule.
    Invalid(String),
    /// Every check passed: the daemon would run the operation.
    Valid,
    /// Anything else: a bug.
    Unexpected(String),
}

/// Decodes `body` and, for a `tools/call`, validates its arguments without an engine.
pub fn check_request(body: &[u8]) -> RequestCheck {
    let map = match decode_body(body) {
        Ok(m) => m,
        Err(r) => {
            return RequestCheck::Edge {
                status: r.status.as_u16(),
                code: r.code,
            }
        }
    };
    let message: ClientJsonRpcMessage = match serde_json::from_value(Value::Object(map)) {
        Ok(m) => m,
        Err(_) => return RequestCheck::NotJsonRpc,
    };
    let JsonRpcMessage::Request(request) = message else {
        return RequestCheck::Other;
    };
    let ClientRequest::CallToolRequest(call) = request.request else {
        return RequestCheck::Other;
    };
    let empty = serde_json::Map::new();
    let arguments = call.params.arguments.as_ref().unwrap_or(&empty);
    let mcp = AirlockMcp::new(std::sync::Arc::new(Coordinator::detached()));
    match futures::executor::block_on(mcp.run_tool(&call.params.name, arguments, None)) {
        Err(e) => RequestCheck::UnknownTool(e.message.to_string()),
        Ok(Err(CoreError::Invalid { field, rule })) => {
            RequestCheck::Invalid(format!("{field}: {rule}"))
        }
        Ok(Err(CoreError::ShuttingDown)) => RequestCheck::Valid,
        Ok(other) => RequestCheck::Unexpected(format!("{other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_path_is_checked_without_a_daemon() {
        assert_eq!(
            check_request(b"{nope"),
            RequestCheck::Edge {
                status: 400,
                code: -32700
            }
        );
        let call = |args: &str| {
            check_request(
                format!(
                    r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"lock_resource","arguments":{args}}}}}"#
                )
                .as_bytes(),
            )
        };
        assert_eq!(call(r#"{"name":"x","agent_id":"a"}"#), RequestCheck::Valid);
        assert_eq!(
            call(r#"{"name":"x","agent_id":"a","ttl_seconds":0}"#),
            RequestCheck::Invalid(
                "ttl_seconds: must be between 1 and 2592000 seconds (30 days), got 0".into()
            )
        );
        assert!(matches!(
            check_request(
                br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"nope"}}"#
            ),
            RequestCheck::UnknownTool(_)
        ));
    }
}
