//! The request path: the edge's body decoding, rmcp's JSON-RPC decoding, and every tool's
//! argument validation, as `airlock::mcp::check::check_request` runs them without a daemon.
//!
//! Besides "no panic", it checks that every refusal is short (an error never echoes a huge input
//! back) and that nothing but a validation verdict comes out.

#![no_main]

use airlock::mcp::check::{check_request, RequestCheck};
use libfuzzer_sys::fuzz_target;

/// Longest error message the request path may produce, whatever the input.
const MAX_MESSAGE: usize = 2048;

fuzz_target!(|data: &[u8]| {
    match check_request(data) {
        RequestCheck::Edge { status, code } => {
            assert!(
                (status == 400 && (code == -32700 || code == -32600))
                    || (status == 200 && code == -32602),
                "edge answer {status} / {code}"
            );
        }
        RequestCheck::UnknownTool(m) | RequestCheck::Invalid(m) => {
            assert!(m.len() <= MAX_MESSAGE, "a {}-byte error message", m.len());
        }
        RequestCheck::Unexpected(m) => panic!("unexpected outcome: {m}"),
        RequestCheck::NotJsonRpc | RequestCheck::Other | RequestCheck::Valid => {}
    }
});
