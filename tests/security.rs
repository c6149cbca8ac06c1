//! The HTTP edge through the real binary: bearer auth, Origin and Host checks (DNS rebinding),
//! the seed's curl recipe, malformed and oversized bodies. A refused request changes nothing.

mod common;

use common::Daemon;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A tool call's body as the bytes sent (id 7).
fn tool_call(tool: &str, args: Value) -> String {
    common::tool_call(7, tool, args).to_string()
}

/// A response read off the wire.
struct Raw {
    status: u16,
    /// Header lines, names lower-cased.
    headers: Vec<(String, String)>,
    body: String,
}

impl Raw {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("{e}: body is not JSON: {:?}", self.body))
    }
}

/// Sends exactly `head` (request line and headers, CRLF-separated, without the blank line) and
/// `body` over a fresh TCP connection, so the test controls every header byte.
async fn raw_post(d: &Daemon, path: &str, headers: &[String], body: &str) -> Raw {
    raw_post_to(d.url.strip_prefix("http://").unwrap(), path, headers, body).await
}

/// [`raw_post`] to `addr` (`host:port`).
async fn raw_post_to(addr: &str, path: &str, headers: &[String], body: &str) -> Raw {
    let mut req = format!("POST {path} HTTP/1.1\r\n");
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    ));
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    common::within(20, s.read_to_end(&mut out)).await.unwrap();
    let text = String::from_utf8(out).expect("utf-8 response");
    let (head, rest) = text.split_once("\r\n\r\n").expect("response head");
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .map(|l| {
            let (n, v) = l.split_once(':').unwrap();
            (n.trim().to_ascii_lowercase(), v.trim().to_string())
        })
        .collect();
    let body = if headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"))
    {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    Raw {
        status,
        headers,
        body,
    }
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    loop {
        let (size, rest) = s.split_once("\r\n").unwrap();
        let n = usize::from_str_radix(size.trim(), 16).unwrap();
        if n == 0 {
            return out;
        }
        out.push_str(&rest[..n]);
        s = &rest[n + 2..];
    }
}

fn host(d: &Daemon) -> String {
    format!("Host: {}", d.url.strip_prefix("http://").unwrap())
}

fn bearer(t: &str) -> String {
    format!("Authorization: Bearer {t}")
}

const JSON_CT: &str = "Content-Type: application/json";

async fn assert_note_absent(d: &Daemon, key: &str) {
    assert_eq!(
        d.call("get_note", json!({"key": key})).await,
        json!({"found": false}),
        "a refused request changed state"
    );
}

#[tokio::test]
async fn missing_or_wrong_token_gets_401_with_www_authenticate_and_changes_nothing() {
    let d = Daemon::start().await;
    let body = tool_call("set_note", json!({"key": "k", "value": "sneaky"}));
    let almost = {
        let mut t = d.token.clone().into_bytes();
        t[0] = if t[0] == b'a' { b'b' } else { b'a' };
        String::from_utf8(t).unwrap()
    };
    let cases: Vec<Vec<String>> = vec![
        vec![host(&d), JSON_CT.into()],
        vec![host(&d), JSON_CT.into(), bearer("wrong")],
        vec![host(&d), JSON_CT.into(), bearer(&almost)],
        vec![host(&d), JSON_CT.into(), bearer(&format!("{}x", d.token))],
        vec![host(&d), JSON_CT.into(), bearer("")],
        vec![
            host(&d),
            JSON_CT.into(),
            format!("Authorization: {}", d.token),
        ],
        vec![
            host(&d),
            JSON_CT.into(),
            format!("Authorization: Basic {}", d.token),
        ],
    ];
    for headers in cases {
        let r = raw_post(&d, "/", &headers, &body).await;
        assert_eq!(r.status, 401, "{headers:?}: {}", r.body);
        assert_eq!(r.header("www-authenticate"), Some("Bearer"), "{headers:?}");
        assert!(!r.body.contains(&d.token), "the 401 leaked the token");
        assert!(r.json()["error"]["message"].is_string());
    }
    // Same on the /mcp alias.
    let r = raw_post(&d, "/mcp", &[host(&d), JSON_CT.into()], &body).await;
    assert_eq!(r.status, 401);
    assert_note_absent(&d, "k").await;
    // And the right token works for the very same request.
    let r = raw_post(
        &d,
        "/",
        &[host(&d), JSON_CT.into(), bearer(&d.token)],
        &body,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        d.call("get_note", json!({"key": "k"})).await["value"],
        json!("sneaky")
    );
}

#[tokio::test]
async fn a_foreign_origin_gets_403_even_with_the_token() {
    let d = Daemon::start().await;
    let body = tool_call("set_note", json!({"key": "o", "value": "from a web page"}));
    for origin in [
        "https://evil.example",
        "http://evil.example:27183",
        "http://127.0.0.1.evil.example",
        "http://localhost.evil.example",
        "null",
        "file://",
    ] {
        let headers = [
            host(&d),
            JSON_CT.into(),
            bearer(&d.token),
            format!("Origin: {origin}"),
        ];
        let r = raw_post(&d, "/", &headers, &body).await;
        assert_eq!(r.status, 403, "Origin {origin}: {}", r.body);
        assert!(r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Origin"));
    }
    assert_note_absent(&d, "o").await;
}

#[tokio::test]
async fn loopback_origins_are_allowed() {
    let d = Daemon::start().await;
    let port = d.url.rsplit(':').next().unwrap().to_string();
    for (i, origin) in [
        format!("http://127.0.0.1:{port}"),
        "http://localhost:3000".to_string(),
        "https://localhost".to_string(),
        "http://[::1]:8080".to_string(),
    ]
    .iter()
    .enumerate()
    {
        let body = tool_call("set_note", json!({"key": format!("o{i}"), "value": origin}));
        let headers = [
            host(&d),
            JSON_CT.into(),
            bearer(&d.token),
            format!("Origin: {origin}"),
        ];
        let r = raw_post(&d, "/", &headers, &body).await;
        assert_eq!(r.status, 200, "Origin {origin}: {}", r.body);
        assert_eq!(
            d.call("get_note", json!({"key": format!("o{i}")})).await["value"],
            json!(origin)
        );
    }
}

#[tokio::test]
async fn a_non_loopback_host_gets_403() {
    let d = Daemon::start().await;
    let port = d.url.rsplit(':').next().unwrap().to_string();
    let body = tool_call("set_note", json!({"key": "h", "value": "rebound"}));
    for h in [
        format!("evil.example:{port}"),
        "evil.example".to_string(),
        format!("127.0.0.1.nip.io:{port}"),
        format!("192.168.1.10:{port}"),
        format!("localhost.evil.example:{port}"),
    ] {
        let headers = [format!("Host: {h}"), JSON_CT.into(), bearer(&d.token)];
        let r = raw_post(&d, "/", &headers, &body).await;
        assert_eq!(r.status, 403, "Host {h}: {}", r.body);
        assert!(r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Host"));
    }
    assert_note_absent(&d, "h").await;
    // Loopback names are fine.
    for h in [
        format!("localhost:{port}"),
        format!("127.0.0.1:{port}"),
        format!("LOCALHOST:{port}"),
    ] {
        let headers = [format!("Host: {h}"), JSON_CT.into(), bearer(&d.token)];
        let r = raw_post(&d, "/", &headers, &tool_call("list_notes", json!({}))).await;
        assert_eq!(r.status, 200, "Host {h}: {}", r.body);
    }
}

#[tokio::test]
async fn the_seed_curl_recipe_gets_plain_json() {
    let d = Daemon::start().await;
    // Exactly what `curl -s -X POST URL -H 'Content-Type: application/json' -H 'Authorization:
    // Bearer …' -d '…'` sends: no Accept beyond */*, no MCP headers, no initialize first.
    let curl = |extra: Option<&str>| {
        let mut h = vec![
            host(&d),
            "User-Agent: curl/8.5.0".to_string(),
            JSON_CT.to_string(),
            bearer(&d.token),
        ];
        if let Some(e) = extra {
            h.push(e.to_string());
        }
        h
    };
    let r = raw_post(
        &d,
        "/",
        &curl(Some("Accept: */*")),
        &tool_call(
            "set_note",
            json!({"key": "curl", "value": "hello", "author": "sh"}),
        ),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.header("content-type")
            .unwrap()
            .starts_with("application/json"),
        "content-type {:?}",
        r.header("content-type")
    );
    let body = r.json();
    assert_eq!(body["jsonrpc"], json!("2.0"));
    assert_eq!(body["id"], json!(7));
    let text = body["result"]["content"][0]["text"].as_str().unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(text).unwrap(),
        json!({"saved": true})
    );

    // No Accept header at all, and the /mcp alias.
    for path in ["/", "/mcp"] {
        let r = raw_post(
            &d,
            path,
            &curl(None),
            &tool_call("get_note", json!({"key": "curl"})),
        )
        .await;
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        assert!(r
            .header("content-type")
            .unwrap()
            .starts_with("application/json"));
        let text = r.json()["result"]["content"][0]["text"]
            .as_str()
            .unwrap()
            .to_string();
        assert_eq!(
            serde_json::from_str::<Value>(&text).unwrap(),
            json!({"key": "curl", "value": "hello", "author": "sh"})
        );
    }
    // A list tool's text is a JSON array.
    let r = raw_post(
        &d,
        "/",
        &curl(Some("Accept: */*")),
        &tool_call("list_notes", json!({})),
    )
    .await;
    let text = r.json()["result"]["content"][0]["text"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        serde_json::from_str::<Value>(&text).unwrap(),
        json!([{"key": "curl", "value": "hello", "author": "sh"}])
    );
}

#[tokio::test]
async fn malformed_json_gets_parse_error_and_a_huge_body_gets_413() {
    let d = Daemon::start().await;
    let h = [host(&d), JSON_CT.into(), bearer(&d.token)];
    let r = raw_post(
        &d,
        "/",
        &h,
        "{\"jsonrpc\": \"2.0\", \"id\": 1, \"method\": ",
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["code"], json!(-32700));
    for bad in ["[]", "42", "\"x\""] {
        let r = raw_post(&d, "/", &h, bad).await;
        assert_eq!(r.status, 400, "{bad}");
        assert_eq!(r.json()["error"]["code"], json!(-32600), "{bad}");
    }
    let huge = tool_call(
        "set_note",
        json!({"key": "big", "value": "x".repeat(1024 * 1024)}),
    );
    let r = raw_post(&d, "/", &h, &huge).await;
    assert_eq!(r.status, 413, "{}", r.body);
    assert_note_absent(&d, "big").await;
    // The daemon is still healthy.
    assert_eq!(
        d.call("increment_counter", json!({"name": "c"})).await,
        json!({"value": 1})
    );
}

#[tokio::test]
async fn listening_on_every_address_accepts_ip_hosts_but_requires_the_token() {
    let d = Daemon::serve()
        .listen("0.0.0.0:0")
        .selected_backend()
        .rust_log("error")
        .start()
        .await;
    let port = d.url.rsplit(':').next().unwrap().to_string();
    let token = d.token.clone();
    let addr = format!("127.0.0.1:{port}");
    let body = tool_call("increment_counter", json!({"name": "c"}));
    // A remote client addresses the machine by one of its IPs.
    for h in [format!("192.0.2.7:{port}"), format!("[2001:db8::1]:{port}")] {
        let with = [format!("Host: {h}"), JSON_CT.into(), bearer(&token)];
        let r = raw_post_to(&addr, "/", &with, &body).await;
        assert_eq!(r.status, 200, "Host {h}: {}", r.body);
        let without = [format!("Host: {h}"), JSON_CT.into()];
        let r = raw_post_to(&addr, "/", &without, &body).await;
        assert_eq!(r.status, 401, "Host {h} without the token");
    }
    // A DNS name that is not loopback is still a rebinding risk.
    let evil = [
        format!("Host: evil.example:{port}"),
        JSON_CT.into(),
        bearer(&token),
    ];
    let r = raw_post_to(&addr, "/", &evil, &body).await;
    assert_eq!(r.status, 403);
    let r = raw_post_to(
        &addr,
        "/",
        &[
            format!("Host: 127.0.0.1:{port}"),
            JSON_CT.into(),
            bearer(&token),
        ],
        &body,
    )
    .await;
    let text = r.json()["result"]["content"][0]["text"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        serde_json::from_str::<Value>(&text).unwrap(),
        json!({"value": 3})
    );
}
