//! `airlock status --watch`: the status view, kept on screen and redrawn in place.
//!
//! It follows the dashboard's live stream (`GET /events/stream`): a new snapshot arrives when the
//! state changes, and between two snapshots the view is redrawn every second with its countdowns
//! (expiries, windows, graces) moved on locally, so nothing polls the daemon. When the stream
//! ends (the daemon restarts, or the stream's lifetime is up) it reconnects; Ctrl-C stops it.

use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::signal::unix::{signal, Signal, SignalKind};

use super::client::{Client, ClientError, SseEvents};
use super::{exit, status};

/// Clears the screen and puts the cursor at the top left: each frame replaces the last.
const REDRAW: &str = "\x1b[H\x1b[2J";

pub async fn run(client: &Client) -> i32 {
    // One listener for the whole run, made before the first frame: a Ctrl-C that lands while a
    // frame is being drawn (outside any `select!`) is kept by it, not lost between two futures.
    let mut sigint = match signal(SignalKind::interrupt()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("airlock: cannot listen for Ctrl-C: {e}");
            return exit::UNAVAILABLE;
        }
    };
    let mut first = true;
    loop {
        let resp = match client.events_stream().await {
            Ok(r) => r,
            Err(e) => {
                // At the start, say why and stop; later (a restart under way), keep trying.
                if first || matches!(e, ClientError::Unauthorized { .. }) {
                    eprintln!("airlock: {e}");
                    return e.exit_code();
                }
                println!("{REDRAW}airlock: reconnecting ({e})");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(2)) => continue,
                    _ = sigint.recv() => return exit::OK,
                }
            }
        };
        first = false;
        if follow(client, resp, &mut sigint).await {
            return exit::OK;
        }
    }
}

/// What one chunk of the stream asks of the view.
#[derive(Debug, PartialEq)]
enum Step {
    /// A new snapshot to show.
    Show(Value),
    /// The stream is over (reconnect).
    End,
}

/// Reads one chunk of the stream into the snapshots it completed, through the CLI's one SSE
/// reader (a character split across two chunks survives).
fn steps(events: &mut SseEvents, chunk: &[u8]) -> Vec<Step> {
    let mut out = Vec::new();
    for event in events.push(chunk) {
        match event.name.as_str() {
            "status" => {
                if let Ok(v) = serde_json::from_str::<Value>(&event.data) {
                    out.push(Step::Show(v));
                }
            }
            "end" => {
                out.push(Step::End);
                break;
            }
            _ => {}
        }
    }
    out
}

/// Draws from one stream until it ends (false: reconnect) or Ctrl-C (true: stop).
async fn follow(client: &Client, mut resp: reqwest::Response, sigint: &mut Signal) -> bool {
    let mut events = SseEvents::default();
    let mut shown: Option<(Value, Instant)> = None;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            chunk = resp.chunk() => {
                let Ok(Some(bytes)) = chunk else { return false };
                for step in steps(&mut events, &bytes) {
                    match step {
                        Step::Show(v) => {
                            draw(client, &v, 0);
                            shown = Some((v, Instant::now()));
                        }
                        Step::End => return false,
                    }
                }
            }
            _ = tick.tick() => {
                if let Some((v, at)) = &shown {
                    draw(client, v, at.elapsed().as_secs() as i64);
                }
            }
            _ = sigint.recv() => return true,
        }
    }
}

fn draw(client: &Client, v: &Value, elapsed: i64) {
    let mut v = v.clone();
    age(&mut v, elapsed);
    println!(
        "{REDRAW}{}\n(live; Ctrl-C to stop)",
        status::render(&client.authority(), &v)
    );
}

/// Moves a snapshot's clocks `secs` seconds on: what counts down counts down (not below 0),
/// what counts up counts up.
fn age(v: &mut Value, secs: i64) {
    if secs == 0 {
        return;
    }
    let down = |x: &mut Value, key: &str| {
        if let Some(n) = x[key].as_i64() {
            x[key] = Value::from((n - secs).max(0));
        }
    };
    for section in ["locks", "agents", "notes", "tasks"] {
        let Some(items) = v[section].as_array_mut() else {
            continue;
        };
        for item in items {
            for key in [
                "expires_in_seconds",
                "reserved_for_seconds",
                "lease_expires_in_seconds",
            ] {
                down(item, key);
            }
            if let Some(line) = item["line"].as_array_mut() {
                for place in line {
                    down(place, "seconds_left");
                    if let Some(n) = place["waiting_seconds"].as_i64() {
                        place["waiting_seconds"] = Value::from(n + secs);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_snapshot_with_a_character_split_across_chunks_is_shown_whole() {
        let stream = "event: status\ndata: {\"notes\":[{\"value\":\"caf\u{e9} \u{1f512}\"}]}\n\n\
                      event: end\ndata: {}\n\n"
            .as_bytes();
        let want = [
            Step::Show(json!({"notes": [{"value": "caf\u{e9} \u{1f512}"}]})),
            Step::End,
        ];
        for cut in 0..=stream.len() {
            let mut events = SseEvents::default();
            let mut got = steps(&mut events, &stream[..cut]);
            got.extend(steps(&mut events, &stream[cut..]));
            assert_eq!(got, want, "cut at byte {cut}");
        }
    }

    #[test]
    fn clocks_move_on_between_snapshots() {
        let mut v = json!({"locks": [{"expires_in_seconds": 5, "line": [
            {"seconds_left": 2, "waiting_seconds": 1}]}], "notes": [{"key": "k"}]});
        age(&mut v, 3);
        assert_eq!(v["locks"][0]["expires_in_seconds"], 2);
        assert_eq!(v["locks"][0]["line"][0]["seconds_left"], 0);
        assert_eq!(v["locks"][0]["line"][0]["waiting_seconds"], 4);
        assert!(v["notes"][0].get("expires_in_seconds").is_none());
    }
}
