//! Waiting longer than one call may park (50 s): re-call with the `wake_token` (locks) or the
//! last seen generation (events) until the caller's own deadline, keeping one's place in line.

use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::client::{Client, ClientError};
use crate::core::request::{
    LeaveLine, LockName, LockResource, LockResources, Request, WaitForEvent,
};
use crate::core::LockMode;
use crate::core::MAX_WAIT_SECONDS;

/// How long to wait: a number of seconds, or forever.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    Seconds(u64),
    Forever,
}

impl std::str::FromStr for Wait {
    type Err = String;
    fn from_str(s: &str) -> Result<Wait, String> {
        if s.eq_ignore_ascii_case("forever") || s.eq_ignore_ascii_case("inf") {
            return Ok(Wait::Forever);
        }
        s.parse::<u64>()
            .map(Wait::Seconds)
            .map_err(|_| format!("expected a number of seconds or 'forever', got {s:?}"))
    }
}

impl Wait {
    fn deadline(self) -> Option<Instant> {
        match self {
            Wait::Seconds(s) => Some(Instant::now() + Duration::from_secs(s)),
            Wait::Forever => None,
        }
    }
}

/// The window for the next call: what is left of the caller's wait, capped at 50 s.
fn window(deadline: Option<Instant>) -> i64 {
    match deadline {
        None => MAX_WAIT_SECONDS,
        Some(d) => {
            let left = d.saturating_duration_since(Instant::now());
            (left.as_secs_f64().ceil() as i64).min(MAX_WAIT_SECONDS)
        }
    }
}

/// A parked call that came back "no" much sooner than its window (the daemon is draining for
/// shutdown, say) is not re-sent at once: a short pause keeps the loop from spinning.
async fn pace(started: Instant, window: i64) {
    if window > 0 && started.elapsed() < Duration::from_secs(1) {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// What a waiter knows about its line, for the live status line.
#[derive(Debug, Default, Clone)]
pub struct LineInfo {
    pub what: String,
    pub detail: String,
}

/// A live "waiting…" line on stderr, redrawn every second while a wait lasts (terminals only).
pub struct StatusLine {
    info: Arc<Mutex<LineInfo>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl StatusLine {
    /// Starts the line if stderr is a terminal; otherwise it stays silent.
    pub fn start(what: &str) -> StatusLine {
        let info = Arc::new(Mutex::new(LineInfo {
            what: what.to_string(),
            detail: String::new(),
        }));
        let task = std::io::stderr().is_terminal().then(|| {
            let info = info.clone();
            let started = Instant::now();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                loop {
                    tick.tick().await;
                    // The mutex is held only to copy two strings; nothing awaits under it.
                    let i = info.lock().map(|g| g.clone()).unwrap_or_default();
                    let detail = if i.detail.is_empty() {
                        String::new()
                    } else {
                        format!(" — {}", i.detail)
                    };
                    let mut err = std::io::stderr();
                    let _ = write!(
                        err,
                        "\r\x1b[Kairlock: waiting for {}{detail} ({}s)",
                        i.what,
                        started.elapsed().as_secs()
                    );
                    let _ = err.flush();
                }
            })
        });
        StatusLine { info, task }
    }

    pub fn set(&self, what: Option<&str>, detail: String) {
        if let Ok(mut g) = self.info.lock() {
            if let Some(w) = what {
                g.what = w.to_string();
            }
            g.detail = detail;
        }
    }

    /// A setter to hand to code that learns about the line.
    pub fn setter(&self) -> impl FnMut(&str) + Send + 'static {
        let info = self.info.clone();
        move |detail: &str| {
            // The daemon says "waiting 5s of 50s, position 2 in line, held by X"; the line
            // already counts the whole wait, so keep only what follows the window.
            let detail = match detail.split_once(", ") {
                Some((head, rest)) if head.starts_with("waiting ") => rest,
                _ if detail.starts_with("waiting ") => "",
                _ => detail,
            };
            if let Ok(mut g) = info.lock() {
                g.detail = detail.to_string();
            }
        }
    }

    /// Stops the line and clears it.
    pub fn finish(mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
            let _ = write!(std::io::stderr(), "\r\x1b[K");
        }
    }
}

impl Drop for StatusLine {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
            let _ = write!(std::io::stderr(), "\r\x1b[K");
        }
    }
}

/// Describes a contended `lock_resource` answer for humans.
pub fn contended_detail(r: &Value) -> String {
    let mut parts = Vec::new();
    if let Some(h) = r["held_by"].as_str() {
        parts.push(format!("held by {h}"));
    }
    if let Some(p) = r["queue_position"].as_i64() {
        parts.push(format!("position {p} in line"));
    }
    parts.join(", ")
}

/// Takes one lock, waiting as long as `wait` says: past 50 s by calling again with the
/// `wake_token`, so the caller keeps its place in line. Returns the last answer: granted
/// (`locked: true`) or, when the wait ran out, contended.
pub async fn acquire(
    client: &Client,
    name: &str,
    mode: LockMode,
    agent: &str,
    ttl: Option<u64>,
    wait: Wait,
    line: Option<&StatusLine>,
) -> Result<Value, ClientError> {
    let deadline = wait.deadline();
    let mut wake: Option<String> = None;
    // A first try without parking learns who holds it (for the live line) or takes it at once.
    let mut first = true;
    loop {
        let this_window = if first { 0 } else { window(deadline) };
        let request = Request::LockResource(LockResource {
            name: name.to_string(),
            agent_id: agent.to_string(),
            ttl_seconds: seconds(ttl),
            wait_seconds: Some(this_window),
            wake_token: wake.clone(),
            shared: mode.shared.then_some(true),
            limit: mode.limit,
        });
        let started = Instant::now();
        let answer = match line {
            Some(l) if this_window > 0 => {
                client.request_with_progress(&request, l.setter()).await?
            }
            _ => client.request(&request).await?,
        };
        if answer["locked"] == json!(true) {
            return Ok(answer);
        }
        if let Some(l) = line {
            l.set(None, contended_detail(&answer));
        }
        if window(deadline) == 0 {
            leave_line(client, name, &answer).await;
            return Ok(answer);
        }
        first = false;
        wake = answer["wake_token"].as_str().map(str::to_string);
        pace(started, this_window).await;
    }
}

/// Gives up the place a contended answer kept in line (its `wake_token`): this caller will not
/// come back, and at the head of the line the place would hold a freed lock for it for the
/// grace. Best effort: if it fails, the place goes when the grace ends.
async fn leave_line(client: &Client, name: &str, answer: &Value) {
    let Some(wake_token) = answer["wake_token"].as_str() else {
        return;
    };
    let request = Request::LeaveLine(LeaveLine {
        name: name.to_string(),
        wake_token: wake_token.to_string(),
    });
    if let Err(e) = client.request(&request).await {
        tracing::debug!(lock = %name, error = %e, "could not leave the line");
    }
}

/// Takes several locks all or nothing (`lock_resources`), waiting as long as `wait` says: past
/// 50 s by calling again (a set has no place in line to keep). Returns the last answer.
pub async fn acquire_set(
    client: &Client,
    names: &[String],
    agent: &str,
    ttl: Option<u64>,
    wait: Wait,
) -> Result<Value, ClientError> {
    let deadline = wait.deadline();
    loop {
        let w = window(deadline);
        let started = Instant::now();
        let answer = client
            .request(&Request::LockResources(LockResources {
                names: names.iter().map(LockName::plain).collect(),
                agent_id: agent.to_string(),
                ttl_seconds: seconds(ttl),
                wait_seconds: Some(w),
            }))
            .await?;
        if answer["locked"] == json!(true) || window(deadline) == 0 {
            return Ok(answer);
        }
        pace(started, w).await;
    }
}

/// Waits for an event to advance past `since`, as long as `wait` says. Returns the last answer.
pub async fn wait_event(
    client: &Client,
    name: &str,
    since: i64,
    wait: Wait,
) -> Result<Value, ClientError> {
    let deadline = wait.deadline();
    loop {
        let w = window(deadline);
        let started = Instant::now();
        let answer = client
            .request(&Request::WaitForEvent(WaitForEvent {
                name: name.to_string(),
                last_seen_generation: Some(since),
                wait_seconds: Some(w),
            }))
            .await?;
        if answer["fired"] == json!(true) || window(deadline) == 0 {
            return Ok(answer);
        }
        pace(started, w).await;
    }
}

/// Seconds from the command line as a request carries them (a value past `i64` is refused by
/// the daemon like any other out-of-range one).
pub fn seconds(v: Option<u64>) -> Option<i64> {
    v.map(|s| i64::try_from(s).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_parse() {
        assert_eq!("forever".parse::<Wait>(), Ok(Wait::Forever));
        assert_eq!("120".parse::<Wait>(), Ok(Wait::Seconds(120)));
        assert!("-1".parse::<Wait>().is_err());
        assert_eq!(window(None), 50);
        assert_eq!(window(Some(Instant::now())), 0);
        assert_eq!(window(Some(Instant::now() + Duration::from_secs(500))), 50);
    }
}
