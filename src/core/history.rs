//! The audit history's vocabulary: what an entry records ([`HistoryKind`]), why a lock or a lease
//! was given back ([`Why`]), how an entry reads ([`HistoryEntry`]), how long entries are kept
//! ([`Retention`]), and the times a caller may give (`since`).
//!
//! The engine writes an entry in the transaction of what it records (see `engine::history`), so
//! the history never shows a grant that was rolled back, nor misses one that committed.

use serde::{Deserialize, Serialize};

use super::types::{CoreError, CoreResult};
use crate::clock::Millis;
use crate::store::HistoryRow;

/// `get_history`'s `limit` when not given, and the most it accepts.
pub const DEFAULT_HISTORY_ITEMS: usize = 100;
pub const MAX_HISTORY_ITEMS: usize = 1000;
/// Characters of a failed task's error kept in its entry.
pub const HISTORY_ERROR_CHARS: usize = 200;

/// Retention unless the environment says otherwise: 7 days, 100,000 entries.
pub const DEFAULT_HISTORY_MAX_AGE_SECONDS: i64 = 7 * 24 * 3600;
pub const DEFAULT_HISTORY_MAX_ENTRIES: u64 = 100_000;
/// The bounds those settings accept: 1 second to 366 days, 1 to 10,000,000 entries.
pub const MAX_HISTORY_AGE_SECONDS: i64 = 366 * 24 * 3600;
pub const MAX_HISTORY_ENTRIES: u64 = 10_000_000;
pub const HISTORY_MAX_AGE_ENV: &str = "AIRLOCK_HISTORY_MAX_AGE_SECONDS";
pub const HISTORY_MAX_ENTRIES_ENV: &str = "AIRLOCK_HISTORY_MAX_ENTRIES";

macro_rules! kinds {
    ($($(#[$doc:meta])* $variant:ident => $name:literal,)*) => {
        /// What one history entry records.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
        pub enum HistoryKind {
            $($(#[$doc])* #[serde(rename = $name)] $variant,)*
        }

        impl HistoryKind {
            pub const ALL: &[HistoryKind] = &[$(HistoryKind::$variant,)*];
            /// Their wire names, in the same order.
            pub const NAMES: &[&str] = &[$($name,)*];

            pub fn as_str(self) -> &'static str {
                match self {
                    $(HistoryKind::$variant => $name,)*
                }
            }
        }
    };
}

kinds! {
    /// A lock was granted (`fence`: the new hold's).
    Grant => "grant",
    /// A holder extended its lock (`renew_lock`, or taking a lock it already held).
    Renew => "renew",
    /// A hold ended (`reason`: see [`Why`]).
    Release => "release",
    /// A task was pushed (`task_id`).
    Push => "push",
    /// A task was leased to `agent_id`.
    Claim => "claim",
    /// A lease was extended.
    Extend => "extend",
    /// A task was completed.
    Complete => "complete",
    /// A task failed for good (`fail_task` with `requeue: false`; `error`).
    Fail => "fail",
    /// A task went back to pending (`reason`: `failed` with its `error`, or why its lease
    /// ended: `ttl`, `presence_lapse`, `shutdown`, `orphan`).
    Requeue => "requeue",
    /// A task used up its `max_attempts` (`reason` and `error` as for a requeue).
    Dead => "dead",
    /// A dead or failed task was put back (`retry_task`).
    Retry => "retry",
    /// An event was signalled (`generation`: the new one).
    Signal => "signal",
    /// An event was cleared.
    Clear => "clear",
}

impl HistoryKind {
    pub fn parse(s: &str) -> Option<HistoryKind> {
        HistoryKind::ALL.iter().copied().find(|k| k.as_str() == s)
    }

    /// What an entry's number is: a lock's fence, a task's id, an event's generation.
    fn number_field(self) -> &'static str {
        use HistoryKind::*;
        match self {
            Grant | Renew | Release => "fence",
            Push | Claim | Extend | Complete | Fail | Requeue | Dead | Retry => "task_id",
            Signal | Clear => "generation",
        }
    }
}

/// Why a hold or a lease ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// Its holder released it (`unlock_resource`).
    Unlock,
    /// Its TTL (a lock's, a lease's) ran out.
    Ttl,
    /// Its agent's presence lapsed (no `register_agent` heartbeat within its TTL).
    PresenceLapse,
    /// Its agent unregistered: an agent's own shutdown (`unregister_agent`, which the hooks and
    /// `airlock run` call when they end).
    Shutdown,
    /// It was granted to a caller that went away before reading the answer.
    Orphan,
    /// The task's last attempt failed (`fail_task`).
    Failed,
}

impl Why {
    pub fn as_str(self) -> &'static str {
        match self {
            Why::Unlock => "unlock",
            Why::Ttl => "ttl",
            Why::PresenceLapse => "presence_lapse",
            Why::Shutdown => "shutdown",
            Why::Orphan => "orphan",
            Why::Failed => "failed",
        }
    }
}

/// One history entry as callers read it. `fence`, `task_id` and `generation` appear for the
/// kinds they belong to; `reason` for releases, requeues and deaths; `error` where an attempt
/// failed with one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub id: i64,
    /// When, as RFC 3339 in UTC with milliseconds.
    pub at: String,
    pub kind: HistoryKind,
    /// The lock's name, the task's queue, or the event's name.
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fence: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_id: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl HistoryEntry {
    /// The entry a stored row reads as; `None` for a kind this binary does not know (a row
    /// written by a newer daemon on the same database).
    pub fn from_row(row: HistoryRow) -> Option<HistoryEntry> {
        let kind = HistoryKind::parse(&row.kind)?;
        let number = |field: &str| row.number.filter(|_| kind.number_field() == field);
        Some(HistoryEntry {
            id: row.id,
            at: format_time(row.at),
            kind,
            fence: number("fence"),
            task_id: number("task_id"),
            generation: number("generation"),
            name: row.name,
            agent_id: row.agent_id,
            reason: row.reason,
            error: row.error,
        })
    }
}

/// `get_history`'s answer: newest first; `next_cursor` fetches the older entries (`null`: none).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryPage {
    pub items: Vec<HistoryEntry>,
    pub next_cursor: Option<String>,
}

/// How long entries are kept: none older than `max_age_ms`, and at most about `max_entries`
/// (pruned each time 1% of it has been written, and every minute).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub max_age_ms: Millis,
    pub max_entries: u64,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            max_age_ms: DEFAULT_HISTORY_MAX_AGE_SECONDS * 1000,
            max_entries: DEFAULT_HISTORY_MAX_ENTRIES,
        }
    }
}

impl Retention {
    /// From `AIRLOCK_HISTORY_MAX_AGE_SECONDS` and `AIRLOCK_HISTORY_MAX_ENTRIES`; an error names
    /// the setting and its rule.
    pub fn from_env() -> Result<Retention, String> {
        let mut r = Retention::default();
        if let Ok(v) = std::env::var(HISTORY_MAX_AGE_ENV) {
            match v.trim().parse::<i64>() {
                Ok(n) if (1..=MAX_HISTORY_AGE_SECONDS).contains(&n) => r.max_age_ms = n * 1000,
                _ => {
                    return Err(format!(
                        "{HISTORY_MAX_AGE_ENV} must be a whole number of seconds from 1 to \
                         {MAX_HISTORY_AGE_SECONDS} (366 days), got {v:?}"
                    ))
                }
            }
        }
        if let Ok(v) = std::env::var(HISTORY_MAX_ENTRIES_ENV) {
            match v.trim().parse::<u64>() {
                Ok(n) if (1..=MAX_HISTORY_ENTRIES).contains(&n) => r.max_entries = n,
                _ => {
                    return Err(format!(
                        "{HISTORY_MAX_ENTRIES_ENV} must be a whole number from 1 to \
                         {MAX_HISTORY_ENTRIES}, got {v:?}"
                    ))
                }
            }
        }
        Ok(r)
    }

    /// Entries written between two prunes: 1% of the count kept (at least 1).
    pub fn prune_every(&self) -> u64 {
        (self.max_entries / 100).max(1)
    }
}

/// An instant as RFC 3339 in UTC with milliseconds (`2026-12-07T02:31:05.123Z`).
pub fn format_time(ms: Millis) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_else(|| ms.to_string())
}

/// `since` as an instant: an RFC 3339 time (`2026-12-07T02:00:00Z`), or a span back from `now`
/// (`90s`, `10m`, `2h`, `7d`).
pub fn parse_since(field: &str, s: &str, now: Millis) -> CoreResult<Millis> {
    let s = s.trim();
    let unit = |c: char| match c {
        's' => Some(1_000),
        'm' => Some(60_000),
        'h' => Some(3_600_000),
        'd' => Some(86_400_000),
        _ => None,
    };
    if let Some((n, per)) = s
        .char_indices()
        .last()
        .and_then(|(i, c)| Some((&s[..i], unit(c)?)))
    {
        if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) {
            let span = n
                .parse::<i64>()
                .ok()
                .and_then(|n| n.checked_mul(per))
                .filter(|&ms| ms <= MAX_HISTORY_AGE_SECONDS * 1000)
                .ok_or_else(|| {
                    CoreError::invalid(field, format!("{s:?} reaches back more than 366 days"))
                })?;
            return Ok(now - span);
        }
    }
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.timestamp_millis())
        .map_err(|_| {
            CoreError::invalid(
                field,
                format!(
                    "must be an RFC 3339 time such as 2026-12-07T02:00:00Z, or a span back from \
                     now such as 90s, 10m, 2h or 7d; got {s:?}"
                ),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_read_both_ways() {
        let now = 1_800_000_000_000;
        assert_eq!(parse_since("since", "10m", now).unwrap(), now - 600_000);
        assert_eq!(
            parse_since("since", "7d", now).unwrap(),
            now - 7 * 86_400_000
        );
        let t = parse_since("since", "2026-12-07T02:00:00Z", now).unwrap();
        assert_eq!(format_time(t), "2026-12-07T02:00:00.000Z");
        assert_eq!(
            parse_since("since", "2026-12-07T03:00:00+01:00", now).unwrap(),
            t
        );
        for bad in ["", "m", "10", "10w", "-5m", "yesterday", "400d"] {
            let e = parse_since("since", bad, now).unwrap_err().to_string();
            assert!(e.contains("since"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn each_kind_reads_its_number_and_detail() {
        let row = |kind: &str, reason: Option<&str>, error: Option<&str>| HistoryRow {
            id: 7,
            at: 0,
            kind: kind.into(),
            name: "n".into(),
            agent_id: Some("a".into()),
            number: Some(3),
            reason: reason.map(Into::into),
            error: error.map(Into::into),
        };
        let e = HistoryEntry::from_row(row("release", Some("ttl"), None)).unwrap();
        assert_eq!(
            (e.fence, e.task_id, e.reason.as_deref()),
            (Some(3), None, Some("ttl"))
        );
        let e = HistoryEntry::from_row(row("requeue", Some("failed"), Some("boom"))).unwrap();
        assert_eq!(
            (e.task_id, e.error.as_deref(), e.reason.as_deref()),
            (Some(3), Some("boom"), Some("failed"))
        );
        let e = HistoryEntry::from_row(row("signal", None, None)).unwrap();
        assert_eq!((e.generation, e.fence), (Some(3), None));
        assert_eq!(e.at, "1970-01-01T00:00:00.000Z");
        assert!(HistoryEntry::from_row(row("from_the_future", None, None)).is_none());
    }
}
