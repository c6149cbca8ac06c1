//! `airlock history`: the audit history (`get_history`), one entry per line, newest first.

use clap::Args;
use serde_json::{json, Value};

use super::client::{Client, ClientError};
use super::show::escape;
use crate::clock::{Clock, MonotonicClock};
use crate::core::history::{format_time, parse_since};
use crate::core::request::{GetHistory, Request};

#[derive(Args, Debug)]
pub struct HistoryArgs {
    /// Only entries of this lock, queue or event.
    #[arg(long)]
    name: Option<String>,
    /// Only entries of this agent.
    #[arg(long)]
    agent: Option<String>,
    /// Only entries of this kind: grant, renew, release, push, claim, extend, complete, fail,
    /// requeue, dead, retry, signal, clear.
    #[arg(long)]
    kind: Option<String>,
    /// Only entries from this time on: RFC 3339 (2026-12-07T02:00:00Z) or a span back from now
    /// (90s, 10m, 2h, 7d).
    #[arg(long)]
    since: Option<String>,
    /// Most entries to print (1 to 1000).
    #[arg(long, default_value_t = 100)]
    limit: i64,
    /// Where the previous page ended (printed after it): older entries.
    #[arg(long)]
    cursor: Option<String>,
}

/// The answer as JSON, and its lines for a human. A page of the daemon may hold fewer entries
/// than asked (it looks through a bounded number per page), so this follows its cursor until
/// `--limit` entries are in or none older match.
pub async fn answer(c: &Client, a: HistoryArgs) -> Result<(Value, String), ClientError> {
    let mut items: Vec<Value> = Vec::new();
    let mut cursor = a.cursor;
    // A span back from now (`10m`) is fixed once, so every page has the same cutoff; one that
    // does not parse goes as given, for the daemon to refuse naming the field.
    let now = MonotonicClock::new().now_ms();
    let since = a.since.map(|s| match parse_since("since", &s, now) {
        Ok(at) => format_time(at),
        Err(_) => s,
    });
    loop {
        let r = c
            .request(&Request::GetHistory(GetHistory {
                name: a.name.clone(),
                agent_id: a.agent.clone(),
                kind: a.kind.clone(),
                since: since.clone(),
                limit: Some(a.limit - items.len() as i64),
                cursor: cursor.take(),
            }))
            .await?;
        items.extend(r["items"].as_array().cloned().unwrap_or_default());
        cursor = r["next_cursor"].as_str().map(str::to_string);
        if cursor.is_none() || items.len() as i64 >= a.limit {
            break;
        }
    }
    let mut lines: Vec<String> = items.iter().map(line).collect();
    if lines.is_empty() {
        lines.push("(none)".into());
    }
    if let Some(next) = &cursor {
        lines.push(format!(
            "(older entries: airlock history --cursor {next} …)"
        ));
    }
    Ok((
        json!({"items": items, "next_cursor": cursor}),
        lines.join("\n"),
    ))
}

/// `2026-12-07T02:31:05.123Z  release  build  alpha  fence 7  reason ttl`
fn line(e: &Value) -> String {
    let text = |k: &str| e[k].as_str().map(escape);
    let mut out = vec![
        text("at").unwrap_or_default(),
        format!("{:<8}", text("kind").unwrap_or_default()),
        text("name").unwrap_or_default(),
    ];
    out.extend(text("agent_id"));
    for k in ["fence", "task_id", "generation"] {
        if let Some(n) = e[k].as_i64() {
            out.push(format!("{} {n}", k.replace('_', " ")));
        }
    }
    for k in ["reason", "error"] {
        if let Some(v) = text(k) {
            out.push(format!("{k} {v}"));
        }
    }
    out.join("  ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn one_line_per_entry_with_what_it_has() {
        let e = json!({"id": 3, "at": "2026-12-07T02:31:05.123Z", "kind": "release",
                       "name": "build", "agent_id": "alpha", "fence": 7, "reason": "ttl"});
        assert_eq!(
            line(&e),
            "2026-12-07T02:31:05.123Z  release   build  alpha  fence 7  reason ttl"
        );
        let e = json!({"id": 4, "at": "t", "kind": "requeue", "name": "q", "task_id": 9,
                       "reason": "failed", "error": "line one\nline two"});
        assert_eq!(
            line(&e),
            "t  requeue   q  task id 9  reason failed  error line one\\nline two"
        );
    }
}
