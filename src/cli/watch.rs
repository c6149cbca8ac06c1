//! `airlock status --watch`: the status view, kept on screen and redrawn in place.
//!
//! It follows the dashboard's live stream (`GET /events/stream`): a new snapshot arrives when the
//! state changes, and between two snapshots the view is redrawn every second with its countdowns
//! (expiries, windows, graces) moved on locally, so nothing polls the daemon. When the stream
//! ends (the daemon restarts, or the stream's lifetime is up) it reconnects; Ctrl-C stops it.

use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::signal::unix::{signal, Signal, SignalKind};

use super::client::{Client, ClientError};
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

/// Draws from one stream until it ends (false: reconnect) or Ctrl-C (true: stop).
async fn follow(client: &Client, mut resp: reqwest::Response, sigint: &mut Signal) -> bool {
    let mut buf = String::new();
    let mut shown: Option<(Value, Instant)> = None;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            chunk = resp.chunk() => {
                let Ok(Some(bytes)) = chunk else { return false };
                buf.push_str(&String::from_utf8_lossy(&bytes));
                while let Some((name, data)) = next_event(&mut buf) {
                    match name.as_str() {
                        "status" => {
                            if let Ok(v) = serde_json::from_str::<Value>(&data) {
                                draw(client, &v, 0);
                                shown = Some((v, Instant::now()));
                            }
                        }
                        "end" => return false,
                        _ => {}
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

/// Takes the next whole Server-Sent Event out of `buf`: (event name, data); heartbeat comments
/// are dropped.
fn next_event(buf: &mut String) -> Option<(String, String)> {
    loop {
        let cut = buf.find("\n\n")?;
        let block: String = buf.drain(..cut + 2).collect();
        let mut name = String::from("message");
        let mut data = Vec::new();
        for line in block.lines() {
            if let Some(v) = line.strip_prefix("event:") {
                name = v.trim().to_string();
            } else if let Some(v) = line.strip_prefix("data:") {
                data.push(v.strip_prefix(' ').unwrap_or(v).to_string());
            }
        }
        if !data.is_empty() {
            return Some((name, data.join("\n")));
        }
    }
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
    fn events_are_cut_out_whole_and_heartbeats_dropped() {
        let mut buf = String::from(": heartbeat\n\nevent: status\ndata: {\"a\":1}\n\nevent: st");
        assert_eq!(
            next_event(&mut buf),
            Some(("status".to_string(), "{\"a\":1}".to_string()))
        );
        assert_eq!(next_event(&mut buf), None);
        assert_eq!(buf, "event: st");
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
