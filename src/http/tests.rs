//! Unit tests of the edge.

use super::*;

#[test]
fn hosts_and_origins() {
    assert_eq!(host_part("127.0.0.1:27183"), "127.0.0.1");
    assert_eq!(host_part("[::1]:80"), "::1");
    assert_eq!(host_part("localhost"), "localhost");
    assert!(is_loopback_host("127.0.0.1") && is_loopback_host("::1"));
    assert!(!is_loopback_host("evil.example.com"));
    let o = |s: &'static str| origin_allowed(Some(&HeaderValue::from_static(s)));
    assert!(o("http://localhost:3000"));
    assert!(!o("https://evil.example.com"));
    assert!(!o("null"));
    assert!(!o("http://127.0.0.1.evil.com"));
    assert!(origin_allowed(None));
}

#[test]
fn malformed_json_rpc_is_answered_as_json_rpc_errors() {
    let code = |body: &str| {
        decode_body(body.as_bytes())
            .map(|_| 0)
            .unwrap_or_else(|r| r.code)
    };
    assert_eq!(code(r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#), 0);
    assert_eq!(
        code(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#),
        0
    );
    assert_eq!(code(r#"{"jsonrpc":"2.0","id":"a","result":{}}"#), 0);
    assert_eq!(code(r#"{"jsonrpc":"1.0","id":1,"method":"ping"}"#), -32600);
    assert_eq!(code(r#"{"id":1,"method":"ping"}"#), -32600);
    for id in ["null", "{}", "1.5", "[1]", "true"] {
        let body = format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"ping"}}"#);
        assert_eq!(code(&body), -32600, "{body}");
    }
    assert_eq!(code(r#"{"jsonrpc":"2.0","id":1,"method":7}"#), -32600);
    assert_eq!(code(r#"{"jsonrpc":"2.0","id":1}"#), -32600);
    assert_eq!(
        code(r#"{"jsonrpc":"2.0","id":1,"method":"a","method":"b"}"#),
        -32600
    );
    assert_eq!(code(r#"{"jsonrpc":"2.0","id":1,"method":"ping""#), -32700);
    let long = format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"{}"}}"#,
        "m".repeat(100_000)
    );
    let r = decode_body(long.as_bytes()).unwrap_err();
    assert_eq!(r.code, -32601);
    assert!(r.message.len() < 200, "{}", r.message);
    let r = decode_body(r#"{"jsonrpc":"2.0","id":7,"method":"x","jsonrpc":"2.0"}"#.as_bytes())
        .unwrap_err();
    assert!(r.message.contains("duplicate key"), "{}", r.message);
}

#[test]
fn the_edge_takes_the_plain_call_of_the_2025_era_only() {
    let headers = |pairs: &[(&'static str, &[u8])]| {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        for (name, value) in pairs {
            h.append(*name, HeaderValue::from_bytes(value).unwrap());
        }
        h
    };
    assert!(plain_headers(&headers(&[])));
    for v in ["2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"] {
        let v = v.as_bytes();
        assert!(plain_headers(&headers(&[("mcp-protocol-version", v)])));
        assert!(plain_headers(&headers(&[
            ("mcp-protocol-version", v),
            ("mcp-session-id", b"abc"),
        ])));
    }
    assert!(plain_headers(&headers(&[("mcp-session-id", b"abc")])));
    let to_rmcp: &[&[(&'static str, &[u8])]] = &[
        &[("mcp-protocol-version", b"2026-07-28")],
        &[("mcp-protocol-version", b"2099-01-01")],
        &[("mcp-protocol-version", b"1999-01-01")],
        &[("mcp-protocol-version", b"2025-06-18 ")],
        &[("mcp-protocol-version", b"\xff")],
        &[
            ("mcp-protocol-version", b"2025-06-18"),
            ("mcp-protocol-version", b"2025-06-18"),
        ],
        &[("mcp-session-id", b"a"), ("mcp-session-id", b"b")],
        &[
            ("mcp-protocol-version", b"2025-06-18"),
            ("mcp-method", b"tools/call"),
        ],
        &[("mcp-name", b"get_note")],
    ];
    for pairs in to_rmcp {
        assert!(!plain_headers(&headers(pairs)), "{pairs:?}");
    }
}

#[test]
fn quoted_inputs_are_clipped() {
    let m = format!("unknown variant `{}`, expected `a`", "v".repeat(1000));
    let c = clip_quoted(&m);
    assert!(c.len() < 150 && c.ends_with("expected `a`"), "{c}");
    assert_eq!(clip_quoted("no quotes"), "no quotes");
    assert_eq!(clip_quoted("open `end"), "open `end");
}
