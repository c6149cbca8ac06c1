//! The web dashboard (`/ui`) and its live stream (`GET /events/stream`), through the real
//! binary: the edge's checks on both, the stream's bounds, and the page itself in headless
//! Chromium (skipped, loudly, where Chromium is not installed).

#[path = "browser/cdp.rs"]
mod cdp;
mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// An open `GET /events/stream`, read event by event.
struct Stream {
    resp: reqwest::Response,
    buf: String,
}

impl Stream {
    async fn open(d: &Daemon) -> Stream {
        let resp = d
            .http
            .get(format!("{}/events/stream", d.url))
            .bearer_auth(&d.token)
            .send()
            .await
            .expect("send");
        assert_eq!(resp.status().as_u16(), 200, "GET /events/stream");
        assert_eq!(
            resp.headers()["content-type"].to_str().unwrap(),
            "text/event-stream"
        );
        Stream {
            resp,
            buf: String::new(),
        }
    }

    /// The next event as (name, data); `None` when the stream ended. Heartbeats are skipped.
    async fn next(&mut self) -> Option<(String, String)> {
        loop {
            if let Some(cut) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..cut + 2).collect();
                let mut name = String::from("message");
                let mut data = Vec::new();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        name = v.trim().to_string();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push(v.strip_prefix(' ').unwrap_or(v).to_string());
                    }
                }
                if data.is_empty() {
                    continue; // a heartbeat comment
                }
                return Some((name, data.join("\n")));
            }
            let chunk = self.resp.chunk().await.expect("read the stream")?;
            self.buf
                .push_str(std::str::from_utf8(&chunk).expect("UTF-8"));
        }
    }

    /// Reads `status` snapshots until one satisfies `want`.
    async fn until(&mut self, want: impl Fn(&Value) -> bool) -> Value {
        within(30, async {
            loop {
                let (name, data) = self.next().await.expect("the stream ended early");
                assert_eq!(name, "status", "unexpected event: {data}");
                let v: Value = serde_json::from_str(&data).expect("status is JSON");
                if want(&v) {
                    return v;
                }
            }
        })
        .await
    }
}

fn lock_in<'a>(v: &'a Value, name: &str) -> Option<&'a Value> {
    v["locks"].as_array()?.iter().find(|l| l["name"] == name)
}

#[tokio::test]
async fn the_pages_need_no_token_and_hold_no_data() {
    let d = Daemon::start().await;
    for (path, kind) in [
        ("/ui", "text/html"),
        ("/ui/app.js", "text/javascript"),
        ("/ui/style.css", "text/css"),
    ] {
        let r = d.http.get(format!("{}{path}", d.url)).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200, "{path}");
        let h = r.headers();
        assert!(h["content-type"].to_str().unwrap().starts_with(kind));
        let csp = h["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("default-src 'none'") && csp.contains("connect-src 'self'"));
        assert_eq!(h["x-frame-options"], "DENY");
        let body = r.text().await.unwrap();
        assert!(!body.contains(&d.token), "{path} must not carry the token");
        assert!(
            !body.contains("http://") && !body.contains("https://"),
            "{path} loads nothing from elsewhere"
        );
    }
    let r = d
        .http
        .get(format!("{}/ui", d.url))
        .header("Origin", "https://evil.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403, "a cross-origin page is refused");
    let r = d
        .http
        .get(format!("{}/ui", d.url))
        .header("Host", "evil.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403, "a rebound DNS name is refused");
}

#[tokio::test]
async fn the_stream_needs_the_token_and_a_same_machine_origin() {
    let d = Daemon::start().await;
    let url = format!("{}/events/stream", d.url);
    let r = d.http.get(&url).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401, "no token");
    let r = d.http.get(&url).bearer_auth("wrong").send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401, "a wrong token");
    let r = d
        .http
        .get(&url)
        .bearer_auth(&d.token)
        .header("Origin", "https://evil.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status().as_u16(),
        403,
        "a cross-origin request with the token"
    );
    // The page's own origin (what a browser sends on its requests) passes.
    let r = d
        .http
        .get(&url)
        .bearer_auth(&d.token)
        .header("Origin", d.url.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200, "the dashboard's own origin");
}

#[tokio::test]
async fn the_stream_sends_each_change_without_being_asked() {
    let d = Arc::new(Daemon::start().await);
    let mut s = Stream::open(&d).await;
    let first = s.until(|_| true).await;
    assert_eq!(first["locks"], json!([]), "{first}");
    let held = lock(&d, "db", "alpha", json!({})).await;
    let v = s.until(|v| lock_in(v, "db").is_some()).await;
    let row = lock_in(&v, "db").unwrap();
    assert_eq!(row["agent_id"], "alpha");
    assert_eq!(row["fence"], held["fence"]);
    // A waiter appears in the lock's line, parked.
    let waiter = spawn_lock(&d, "db", "beta", json!({"wait_seconds": 30}));
    let v = s
        .until(|v| {
            lock_in(v, "db").is_some_and(|l| l["line"].as_array().is_some_and(|a| a.len() == 1))
        })
        .await;
    let line = &lock_in(&v, "db").unwrap()["line"][0];
    assert_eq!(line["agent_id"], "beta");
    assert_eq!(line["position"], 1);
    assert_eq!(line["state"], "parked");
    // Tasks, notes and events show up too.
    d.call(
        "push_task",
        json!({"queue": "builds", "payload": "make all"}),
    )
    .await;
    d.call("set_note", json!({"key": "k", "value": "v"})).await;
    d.call("signal_event", json!({"name": "deployed"})).await;
    let v = s
        .until(|v| {
            v["tasks"].as_array().is_some_and(|t| t.len() == 1)
                && v["notes"].as_array().is_some_and(|n| n.len() == 1)
                && v["events"].as_array().is_some_and(|e| e.len() == 1)
        })
        .await;
    assert_eq!(v["tasks"][0]["payload"], "make all");
    assert_eq!(v["queues"][0]["pending"], 1);
    assert_eq!(v["events"][0]["generation"], 1);
    // The release hands the lock over; the stream shows the new holder.
    unlock(&d, "db", &token(&held)).await;
    within(30, waiter).await.unwrap();
    let v = s
        .until(|v| lock_in(v, "db").is_some_and(|l| l["agent_id"] == "beta"))
        .await;
    assert_eq!(lock_in(&v, "db").unwrap()["line"], json!([]));
}

#[tokio::test]
async fn streams_are_capped() {
    let d = Daemon::start().await;
    let mut open = Vec::new();
    for _ in 0..16 {
        open.push(Stream::open(&d).await);
    }
    let r = d
        .http
        .get(format!("{}/events/stream", d.url))
        .bearer_auth(&d.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 503, "the 17th stream");
    drop(open.pop());
    // The closed stream's place is given back once the daemon notices the connection went.
    within(30, async {
        loop {
            let r = d
                .http
                .get(format!("{}/events/stream", d.url))
                .bearer_auth(&d.token)
                .send()
                .await
                .unwrap();
            if r.status().as_u16() == 200 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn a_stop_ends_the_streams_at_once() {
    let mut d = Daemon::start().await;
    let mut s = Stream::open(&d).await;
    s.until(|_| true).await;
    let stopped = tokio::task::spawn_blocking(move || {
        let code = d.stop();
        (code, d)
    });
    let end = within(30, s.next()).await;
    assert_eq!(end.map(|(name, _)| name), Some("end".to_string()));
    let (code, d) = stopped.await.unwrap();
    assert_eq!(code, Some(0));
    assert!(
        !d.process.logged("connections still open"),
        "the stream held the shutdown open"
    );
}

/// Reads `out` into `seen` until `seen` shows `want`.
async fn read_until(out: &mut tokio::process::ChildStdout, seen: &mut String, want: &str) {
    use tokio::io::AsyncReadExt;
    within(30, async {
        let mut buf = [0u8; 4096];
        while !seen.contains(want) {
            let n = out.read(&mut buf).await.unwrap();
            assert!(n > 0, "the watch ended: {seen}");
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    })
    .await
}

/// `airlock status --watch` redraws the view in place as things change, and Ctrl-C stops it.
#[tokio::test]
async fn status_watch_redraws_in_place() {
    let d = Daemon::start().await;
    let mut child = d
        .cli(["status", "--watch"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut seen = String::new();
    read_until(&mut out, &mut seen, "LOCKS (0)").await;
    lock(&d, "build", "alpha", json!({})).await;
    read_until(&mut out, &mut seen, "held by alpha").await;
    let frames = seen.matches("\x1b[H\x1b[2J").count();
    assert!(frames >= 2, "each frame replaces the last: {frames} frames");
    // SIGINT, as Ctrl-C sends it: a clean stop.
    let pid = child.id().unwrap() as i32;
    unsafe { libc::kill(pid, libc::SIGINT) };
    let status = within(30, child.wait()).await.unwrap();
    assert_eq!(status.code(), Some(0));
}

/// The page in a real browser: sign in, then watch a lock, its waiter, its reservation and its
/// release arrive without a reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_in_a_browser() {
    let Some(chromium) = cdp::find_chromium() else {
        eprintln!(
            "\n**********************************************************************\n\
             SKIPPED: the_dashboard_in_a_browser — Chromium is not installed\n\
             (apt-get install -y chromium, or set AIRLOCK_TEST_CHROMIUM)\n\
             **********************************************************************\n"
        );
        return;
    };
    let d = Arc::new(Daemon::start().await);
    let mut b = tokio::task::block_in_place(|| cdp::Browser::launch(&chromium));
    let page = |b: &mut cdp::Browser, f: &dyn Fn(&mut cdp::Browser) -> Value| {
        tokio::task::block_in_place(|| f(b))
    };
    let ui = format!("{}/ui", d.url);
    page(&mut b, &|b| {
        b.navigate(&ui);
        Value::Null
    });

    // Without the token the page shows nothing but the sign-in form.
    let before = page(&mut b, &|b| {
        b.wait_for("!document.getElementById('login').hidden", 30);
        b.eval(
            "({dashboard: document.getElementById('dashboard').hidden, \
              rows: document.querySelectorAll('#locks tbody tr').length})",
        )
    });
    assert_eq!(before, json!({"dashboard": true, "rows": 0}));
    let held = lock(&d, "build", "alpha", json!({})).await;
    let status = page(&mut b, &|b| {
        b.eval("fetch('/events/stream').then(r => r.status)")
    });
    assert_eq!(status, json!(401), "the page's stream without the token");

    // A wrong token is refused and nothing is shown.
    let shown = page(&mut b, &|b| {
        b.eval(
            "document.getElementById('token').value = 'wrong'; \
             document.getElementById('login-form').requestSubmit(); true",
        );
        b.wait_for("document.getElementById('login-error').textContent", 30)
    });
    assert_eq!(shown, json!("Wrong token."));

    // Sign in: the lock taken before shows, with its holder and fence.
    let sign_in = format!(
        "document.getElementById('token').value = {}; \
         document.getElementById('login-form').requestSubmit(); window.notReloaded = true; true",
        json!(d.token)
    );
    page(&mut b, &|b| {
        b.eval(&sign_in);
        b.wait_for(
            "document.getElementById('connection').textContent === 'live'",
            30,
        );
        b.wait_for(
            "document.querySelector('#locks tr[data-lock=\"build\"]')?.dataset.holder === 'alpha'",
            30,
        )
    });
    let kept = page(&mut b, &|b| {
        b.eval("({stored: sessionStorage.getItem('airlock-token'), url: location.href})")
    });
    assert_eq!(kept["stored"], json!(d.token));
    assert!(
        !kept["url"].as_str().unwrap().contains(&d.token),
        "the token stays out of the URL"
    );
    let fence_shown = page(&mut b, &|b| {
        b.eval("document.querySelector('#locks tr[data-lock=\"build\"]').cells[2].textContent")
    });
    assert_eq!(fence_shown, json!(fence(&held).to_string()));

    // A waiter appears in the line, parked; more state for the picture.
    let waiter = spawn_lock(&d, "build", "beta", json!({"wait_seconds": 4}));
    d.call(
        "register_agent",
        json!({"agent_id": "alpha", "ttl_seconds": 600}),
    )
    .await;
    d.call(
        "register_agent",
        json!({"agent_id": "beta", "ttl_seconds": 600}),
    )
    .await;
    d.call(
        "push_task",
        json!({"queue": "tests", "payload": "cargo test --test locks"}),
    )
    .await;
    d.call(
        "push_task",
        json!({"queue": "tests", "payload": "cargo test --test tasks", "priority": 5}),
    )
    .await;
    d.call(
        "set_note",
        json!({"key": "release", "value": "v0.4 freeze at 18:00", "author": "alpha"}),
    )
    .await;
    d.call("signal_event", json!({"name": "schema-migrated"}))
        .await;
    page(&mut b, &|b| {
        b.wait_for(
            "document.querySelector('#locks li[data-agent=\"beta\"].parked')",
            30,
        );
        b.wait_for(
            "document.querySelectorAll('#tasks tbody tr[data-task]').length === 2",
            30,
        );
        b.wait_for(
            "document.querySelector('#notes tr[data-note=\"release\"]')",
            30,
        );
        b.wait_for(
            "document.querySelector('#events tr[data-event=\"schema-migrated\"]')",
            30,
        );
        b.wait_for(
            "document.querySelector('#agents tr[data-agent=\"beta\"]')",
            30,
        );
        // The timeline shows the history: the grant, the pushes, the signal.
        b.wait_for(
            "document.querySelector('#history tr[data-kind=\"signal\"][data-name=\"schema-migrated\"]')",
            30,
        );
        b.wait_for(
            "document.querySelector('#history tr[data-kind=\"grant\"][data-name=\"build\"]')?.dataset.agent === 'alpha'",
            30,
        )
    });
    let png = tokio::task::block_in_place(|| b.screenshot());
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    std::fs::write(&out, &png).unwrap();
    if std::env::var_os("AIRLOCK_UPDATE_SCREENSHOT").is_some() {
        let docs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/dashboard.png");
        std::fs::write(&docs, &png).unwrap();
    }
    eprintln!("dashboard screenshot: {}", out.display());

    // Its window ends: the place is kept (grace); the holder lets go: the lock is free but
    // reserved for the waiter, on the page and in list_locks.
    let timed_out = within(30, waiter).await.unwrap();
    assert_eq!(timed_out["locked"], json!(false));
    page(&mut b, &|b| {
        b.wait_for(
            "document.querySelector('#locks li[data-agent=\"beta\"].grace')",
            30,
        )
    });
    unlock(&d, "build", &token(&held)).await;
    page(&mut b, &|b| {
        b.wait_for(
            "document.querySelector('#locks tr[data-lock=\"build\"]')?.dataset.reservedFor === 'beta'",
            30,
        )
    });
    let row = lock_row(&d, "build")
        .await
        .expect("the reserved lock is listed");
    assert_eq!(row["agent_id"], Value::Null, "{row}");
    assert_eq!(row["reserved_for"], "beta", "{row}");

    // The waiter comes back with its wake token and takes the lock; then releases it.
    let again = lock(
        &d,
        "build",
        "beta",
        json!({"wake_token": timed_out["wake_token"]}),
    )
    .await;
    page(&mut b, &|b| {
        b.wait_for(
            "document.querySelector('#locks tr[data-lock=\"build\"]')?.dataset.holder === 'beta'",
            30,
        )
    });
    unlock(&d, "build", &token(&again)).await;
    page(&mut b, &|b| {
        b.wait_for(
            "!document.querySelector('#locks tr[data-lock=\"build\"]')",
            30,
        );
        // The release arrives on the timeline, newest first, with its reason.
        b.wait_for(
            "document.querySelector('#history tbody tr')?.dataset.kind === 'release'",
            30,
        )
    });
    let newest = page(&mut b, &|b| {
        b.eval(
            "(() => { const r = document.querySelector('#history tbody tr'); \
              return {agent: r.dataset.agent, details: r.cells[4].textContent}; })()",
        )
    });
    assert_eq!(
        newest,
        json!({"agent": "beta", "details": format!("fence {}, reason: unlock", fence(&again))})
    );
    let same_page = page(&mut b, &|b| b.eval("window.notReloaded === true"));
    assert_eq!(
        same_page,
        json!(true),
        "everything arrived without a reload"
    );

    // Signing out forgets the token and shows nothing.
    let after = page(&mut b, &|b| {
        b.eval("document.getElementById('signout').click(); true");
        b.wait_for("!document.getElementById('login').hidden", 30);
        b.eval(
            "({stored: sessionStorage.getItem('airlock-token'), \
              rows: document.querySelectorAll('#locks tbody tr, #notes tbody tr').length})",
        )
    });
    assert_eq!(after, json!({"stored": null, "rows": 0}));
}
