//! `airlock status`: the daemon's whole state, from one snapshot (`GET /status`), in the seed's
//! layout, or as JSON for scripts.

use serde_json::Value;

use super::client::Client;
use super::exit;

pub async fn run(client: &Client, json: bool, limit: Option<i64>, cursor: Option<&str>) -> i32 {
    match client.status(limit, cursor).await {
        Ok(v) => {
            if json {
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            } else {
                print!("{}", render(&client.authority(), &v));
            }
            exit::OK
        }
        Err(e) => {
            super::output::print_error(json, "airlock", &e.to_string(), e.exit_code());
            e.exit_code()
        }
    }
}

/// One line of a value, shortened for a table by cutting its middle: the start of a name says
/// what kind of thing it is (`file:/home/…`), its end which one (the file name).
fn short(s: &str, max: usize) -> String {
    let one_line: Vec<char> = super::show::escape(s).chars().collect();
    if one_line.len() <= max {
        return one_line.into_iter().collect();
    }
    let keep = max.saturating_sub(1);
    let tail = keep / 2;
    let head = keep - tail;
    let mut out: String = one_line[..head].iter().collect();
    out.push('…');
    out.extend(&one_line[one_line.len() - tail..]);
    out
}

fn items(v: &Value, key: &str) -> Vec<Value> {
    v[key].as_array().cloned().unwrap_or_default()
}

fn str_of(v: &Value, key: &str) -> String {
    match &v[key] {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn int(v: &Value, key: &str) -> i64 {
    v[key].as_i64().unwrap_or(0)
}

/// Who a lock of `list_locks` is for: `held by A`, or `free, reserved for A for Ns`.
pub fn holder_text(l: &Value) -> String {
    match l["agent_id"].as_str() {
        Some(a) => format!("held by {a}"),
        None => format!(
            "free, reserved for {} for {}s",
            str_of(l, "reserved_for"),
            int(l, "reserved_for_seconds")
        ),
    }
}

/// A lock's line, one place a row: `1. beta  parked, 47s left, waiting 3s`.
pub fn line_rows(l: &Value) -> Vec<String> {
    items(l, "line")
        .iter()
        .map(|p| {
            let state = match p["state"].as_str() {
                Some("grace") => "in grace (place kept)",
                Some(other) => other,
                None => "",
            };
            format!(
                "{}. {}  {state}, {}s left, waiting {}s",
                int(p, "position"),
                short(&str_of(p, "agent_id"), 40),
                int(p, "seconds_left"),
                int(p, "waiting_seconds"),
            )
        })
        .collect()
}

/// Renders a `StatusView` (as JSON) in the seed's layout.
pub fn render(authority: &str, v: &Value) -> String {
    let mut out = format!("Airlock — {authority}\n");
    let mut section = |title: &str, rows: Vec<String>| {
        out.push_str(&format!("\n{title} ({})\n", rows.len()));
        if rows.is_empty() {
            out.push_str("  (none)\n");
        }
        for r in rows {
            out.push_str(&format!("  {r}\n"));
        }
    };

    let locks = items(v, "locks")
        .iter()
        .map(|l| {
            let mut row = if l["agent_id"].is_null() {
                format!("{:<28} {}", short(&str_of(l, "name"), 28), holder_text(l))
            } else {
                format!(
                    "{:<28} held by {:<24} expires in {}s  fence {}",
                    short(&str_of(l, "name"), 28),
                    short(&str_of(l, "agent_id"), 24),
                    int(l, "expires_in_seconds"),
                    int(l, "fence"),
                ) + &super::commands::hold_mode(l).replace('\t', "  ")
            };
            let w = int(l, "waiters");
            if w > 0 {
                row.push_str(&format!("  {w} waiting"));
            }
            for place in line_rows(l) {
                row.push_str(&format!("\n      {place}"));
            }
            row
        })
        .collect();
    section("LOCKS", locks);

    let agents = items(v, "agents")
        .iter()
        .map(|a| {
            format!(
                "{:<28} expires in {}s  locks {}  leases {}",
                short(&str_of(a, "agent_id"), 28),
                int(a, "expires_in_seconds"),
                int(a, "locks_held"),
                int(a, "leases_held"),
            )
        })
        .collect();
    section("AGENTS", agents);

    let notes = items(v, "notes")
        .iter()
        .map(|n| {
            let mut row = format!(
                "{:<28} = {}",
                short(&str_of(n, "key"), 28),
                short(&str_of(n, "value"), 48)
            );
            let mut extra = Vec::new();
            if let Some(a) = n["author"].as_str() {
                extra.push(format!("by {}", short(a, 24)));
            }
            if let Some(e) = n["expires_in_seconds"].as_i64() {
                extra.push(format!("expires in {e}s"));
            }
            if !extra.is_empty() {
                row.push_str(&format!("  ({})", extra.join(", ")));
            }
            row
        })
        .collect();
    section("NOTES", notes);

    let events = items(v, "events")
        .iter()
        .map(|e| {
            let mut row = format!(
                "{:<28} generation {}",
                short(&str_of(e, "name"), 28),
                int(e, "generation")
            );
            let cleared = int(e, "cleared_at_generation");
            if cleared > 0 {
                row.push_str(&format!("  (cleared at {cleared})"));
            }
            let w = int(e, "waiters");
            if w > 0 {
                row.push_str(&format!("  {w} waiting"));
            }
            row
        })
        .collect();
    section("EVENTS", events);

    let queues = items(v, "queues")
        .iter()
        .map(|q| {
            let mut row = format!(
                "{:<28} pending {}  claimed {}  completed {}  failed {}",
                short(&str_of(q, "queue"), 28),
                int(q, "pending"),
                int(q, "claimed"),
                int(q, "completed"),
                int(q, "failed"),
            );
            let dead = int(q, "dead");
            if dead > 0 {
                row.push_str(&format!("  dead {dead}"));
            }
            let w = int(q, "waiting_claimers");
            if w > 0 {
                row.push_str(&format!("  {w} waiting to claim"));
            }
            row
        })
        .collect();
    section("TASKS", queues);
    let cut: Vec<String> = items(v, "truncated")
        .iter()
        .filter_map(|s| s.as_str().map(String::from))
        .collect();
    if !cut.is_empty() {
        out.push_str(&format!("\n(more {} than shown", cut.join(", ")));
        match v["next_cursor"].as_str() {
            Some(c) => out.push_str(&format!(
                "; the next page: airlock status --cursor {}",
                super::show::escape(c)
            )),
            None => out.push_str("; `airlock call list_…` pages through them"),
        }
        out.push_str(")\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn empty_sections_say_none() {
        let v = json!({"locks": [], "agents": [], "notes": [], "events": [], "queues": []});
        let out = render("127.0.0.1:27183", &v);
        assert!(out.starts_with("Airlock — 127.0.0.1:27183\n\nLOCKS (0)\n  (none)\n"));
        for s in ["AGENTS (0)", "NOTES (0)", "EVENTS (0)", "TASKS (0)"] {
            assert!(out.contains(&format!("\n{s}\n  (none)\n")), "{out}");
        }
    }

    #[test]
    fn lines_and_reservations_are_shown() {
        let v = json!({"locks": [
            {"name": "build", "agent_id": "alpha", "expires_in_seconds": 60, "fence": 3, "waiters": 1,
             "line": [{"agent_id": "beta", "position": 1, "waiting_seconds": 4, "state": "parked", "seconds_left": 46}]},
            {"name": "deploy", "agent_id": null, "expires_in_seconds": 0, "waiters": 1,
             "reserved_for": "gamma", "reserved_for_seconds": 7,
             "line": [{"agent_id": "gamma", "position": 1, "waiting_seconds": 50, "state": "grace", "seconds_left": 7}]}
        ]});
        let out = render("h", &v);
        assert!(
            out.contains("\n      1. beta  parked, 46s left, waiting 4s\n"),
            "{out}"
        );
        assert!(
            out.contains(
                "deploy                       free, reserved for gamma for 7s  1 waiting\n"
            ),
            "{out}"
        );
        assert!(
            out.contains("1. gamma  in grace (place kept), 7s left, waiting 50s"),
            "{out}"
        );
    }

    #[test]
    fn a_queue_shows_dead_tasks_only_when_it_has_some() {
        let queue = |dead| {
            json!({"locks": [], "agents": [], "notes": [], "events": [], "queues": [
                {"queue": "q", "pending": 1, "claimed": 0, "completed": 2, "failed": 0,
                 "dead": dead, "waiting_claimers": 0}]})
        };
        let out = render("a", &queue(3));
        assert!(
            out.contains("pending 1  claimed 0  completed 2  failed 0  dead 3\n"),
            "{out}"
        );
        assert!(!render("a", &queue(0)).contains("dead"));
    }

    #[test]
    fn values_are_one_line_and_short() {
        assert_eq!(short("a\nb", 10), "a\\nb");
        assert_eq!(short("ad\u{200b}min", 20), "ad\\u{200b}min");
        assert_eq!(short("abcdef", 4), "ab…f");
        assert_eq!(
            short("file:/home/user/projects/some-project/src/main.rs", 28),
            "file:/home/use…t/src/main.rs"
        );
        assert_eq!(short("abc", 3), "abc");
    }
}
