//! The vocabulary of the core: limits, errors, and the typed results of every operation.
//!
//! Result structs derive `Serialize` with the field names of the public contract, so the MCP
//! layer can hand them out unchanged; nothing here knows about MCP, HTTP or SQL.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::clock::Millis;

/// Names, keys, agent ids, queue names, authors: 1..=512 bytes of UTF-8, no control characters.
pub const MAX_NAME_BYTES: usize = 512;
/// Note values and task payloads.
pub const MAX_VALUE_BYTES: usize = 256 * 1024;
/// TTLs, leases and heartbeats: 1 second to 30 days.
pub const MIN_TTL_SECONDS: i64 = 1;
pub const MAX_TTL_SECONDS: i64 = 30 * 24 * 3600;
/// Longest a single call may park. Larger requests are capped, not refused.
pub const MAX_WAIT_SECONDS: i64 = 50;
/// How long a waiter whose window ended keeps its place in line for its `wake_token`.
pub const WAKE_GRACE_SECONDS: i64 = 10;
/// Most names one `lock_resources` call may take.
pub const MAX_LOCK_SET: usize = 64;
/// The most holders a semaphore's `limit` may admit.
pub const MAX_LOCK_LIMIT: i64 = 1000;
/// Items in a `list_*` page when `limit` is not given.
pub const DEFAULT_PAGE_ITEMS: usize = 1000;
/// The most `limit` accepts.
pub const MAX_PAGE_ITEMS: usize = 10_000;
/// Values (note values, task payloads) in one page stop past this many bytes (always at least
/// one item), so one answer holds at most this plus one value.
pub const MAX_PAGE_VALUE_BYTES: usize = 16 * 1024 * 1024;
/// How long completed and failed tasks stay visible before they are deleted.
pub const FINISHED_TASK_RETENTION_SECONDS: i64 = 24 * 3600;

/// `push_task`'s `delay_seconds`: 0 (default) to 30 days.
pub const MAX_DELAY_SECONDS: i64 = 30 * 24 * 3600;
/// `push_task`'s `max_attempts`: 1 to 1000 (absent: no limit).
pub const MAX_ATTEMPTS_LIMIT: i64 = 1000;

pub const DEFAULT_LOCK_TTL_SECONDS: i64 = 900;
pub const DEFAULT_AGENT_TTL_SECONDS: i64 = 60;
/// Most open tasks in a status snapshot (the queue counts are always complete).
pub const STATUS_MAX_TASKS: usize = 200;
/// Characters of a task's payload shown in a status snapshot.
pub const STATUS_PAYLOAD_CHARS: usize = 200;
pub const DEFAULT_LEASE_SECONDS: i64 = 120;
pub const DEFAULT_EVENT_WAIT_SECONDS: i64 = 25;

/// What can go wrong in a core operation. Only the variants a caller acts on.
/// (De)serializable so a daemon that forwards a call to the coordinating daemon gets the same
/// error back. Adjacently tagged: an internally tagged enum cannot carry `Storage`'s bare string
/// (serializing it fails, and the forwarded call's answer was never written).
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "detail", rename_all = "snake_case")]
pub enum CoreError {
    /// The caller's input broke a rule; nothing changed. The message names the field and rule.
    #[error("{field}: {rule}")]
    Invalid { field: String, rule: String },
    /// The state store failed (disk full, unwritable, corrupt). Nothing was acknowledged.
    #[error("storage error: {0}")]
    Storage(String),
    /// The daemon is stopping and takes no new work.
    #[error("the daemon is shutting down")]
    ShuttingDown,
}

impl CoreError {
    pub fn invalid(field: &str, rule: impl Into<String>) -> Self {
        CoreError::Invalid {
            field: field.to_string(),
            rule: rule.into(),
        }
    }
}

pub type CoreResult<T> = Result<T, CoreError>;

/// Checks a name-like field: non-empty, at most [`MAX_NAME_BYTES`], no control characters.
pub fn check_name(field: &str, value: &str) -> CoreResult<()> {
    if value.is_empty() {
        return Err(CoreError::invalid(field, "must not be empty"));
    }
    if value.len() > MAX_NAME_BYTES {
        return Err(CoreError::invalid(
            field,
            format!(
                "must be at most {MAX_NAME_BYTES} bytes of UTF-8, got {} bytes",
                value.len()
            ),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(CoreError::invalid(
            field,
            "must not contain control characters (including NUL, tab and newline)",
        ));
    }
    if let Some(c) = value.chars().find(|c| is_invisible_format(*c)) {
        return Err(CoreError::invalid(
            field,
            format!(
                "must not contain invisible or bidirectional formatting characters (found \
                 U+{:04X}): two names differing only by one would look the same",
                c as u32
            ),
        ));
    }
    Ok(())
}

/// Characters that print as nothing or reorder the text around them: zero-width characters,
/// bidirectional marks, embeddings, overrides and isolates, line and paragraph separators,
/// fillers, variation selectors, tags, the soft hyphen and the byte-order mark.
pub fn is_invisible_format(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{034F}'
            | '\u{061C}'
            | '\u{115F}'
            | '\u{1160}'
            | '\u{17B4}'
            | '\u{17B5}'
            | '\u{180B}'..='\u{180F}'
            | '\u{200B}'..='\u{200F}'
            | '\u{2028}'..='\u{202E}'
            | '\u{2060}'..='\u{206F}'
            | '\u{3164}'
            | '\u{FE00}'..='\u{FE0F}'
            | '\u{FEFF}'
            | '\u{FFA0}'
            | '\u{FFF9}'..='\u{FFFB}'
            | '\u{1D173}'..='\u{1D17A}'
            | '\u{E0000}'..='\u{E007F}'
            | '\u{E0100}'..='\u{E01EF}'
    )
}

/// Which slice of a list to answer: items after `after` (a cursor from the previous page), at
/// most `limit` of them, with or without note values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub after: Option<String>,
    pub limit: usize,
    /// Note values (list_notes `values: false` leaves them out).
    pub values: bool,
}

impl Default for Page {
    fn default() -> Self {
        Page {
            after: None,
            limit: DEFAULT_PAGE_ITEMS,
            values: true,
        }
    }
}

impl Page {
    /// Checks `limit` (1 to [`MAX_PAGE_ITEMS`]) and `cursor` (as a name).
    pub fn new(limit: Option<i64>, cursor: Option<String>, values: bool) -> CoreResult<Page> {
        let limit = match limit {
            None => DEFAULT_PAGE_ITEMS,
            Some(n) if (1..=MAX_PAGE_ITEMS as i64).contains(&n) => n as usize,
            Some(n) => {
                return Err(CoreError::invalid(
                    "limit",
                    format!("must be between 1 and {MAX_PAGE_ITEMS}, got {n}"),
                ))
            }
        };
        if let Some(c) = &cursor {
            check_name("cursor", c)?;
        }
        Ok(Page {
            after: cursor,
            limit,
            values,
        })
    }
}

/// One page of a list, and where the next begins (`None`: this is the last).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paged<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

/// A list answer as the caller sees it: the contract's plain array when no page was asked for and
/// the whole list fitted in one (`as_page: false`); else `{items, next_cursor}` (`null` on the
/// last page). `without` names a field left out of every item (`list_notes` `values: false`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
    pub as_page: bool,
    pub without: Option<&'static str>,
}

impl<T> Listed<T> {
    /// The answer to a request that `asked` for a page (or not).
    pub fn of(p: Paged<T>, asked: bool, without: Option<&'static str>) -> Listed<T> {
        Listed {
            as_page: asked || p.next_cursor.is_some(),
            items: p.items,
            next_cursor: p.next_cursor,
            without,
        }
    }
}

impl<T: Serialize> Serialize for Listed<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut items = serde_json::to_value(&self.items).map_err(serde::ser::Error::custom)?;
        if let (Some(field), serde_json::Value::Array(rows)) = (self.without, &mut items) {
            for row in rows {
                if let serde_json::Value::Object(m) = row {
                    m.remove(field);
                }
            }
        }
        if self.as_page {
            serde_json::json!({"items": items, "next_cursor": self.next_cursor}).serialize(s)
        } else {
            items.serialize(s)
        }
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Listed<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Shape<T> {
            All(Vec<T>),
            Page {
                items: Vec<T>,
                next_cursor: Option<String>,
            },
        }
        Ok(match Shape::deserialize(d)? {
            Shape::All(items) => Listed {
                items,
                next_cursor: None,
                as_page: false,
                without: None,
            },
            Shape::Page { items, next_cursor } => Listed {
                items,
                next_cursor,
                as_page: true,
                without: None,
            },
        })
    }
}

/// Checks an optional author: same rules as a name when present.
pub fn check_author(field: &str, value: &Option<String>) -> CoreResult<()> {
    match value {
        Some(v) => check_name(field, v),
        None => Ok(()),
    }
}

/// Checks a value or payload: at most [`MAX_VALUE_BYTES`], and no NUL character (U+0000):
/// PostgreSQL's `TEXT` cannot hold it, and a value must mean the same on either backend.
pub fn check_value(field: &str, value: &str) -> CoreResult<()> {
    if value.contains('\0') {
        return Err(CoreError::invalid(
            field,
            "must not contain the NUL character (U+0000)",
        ));
    }
    if value.len() > MAX_VALUE_BYTES {
        return Err(CoreError::invalid(
            field,
            format!(
                "must be at most {MAX_VALUE_BYTES} bytes (256 KiB), got {} bytes",
                value.len()
            ),
        ));
    }
    Ok(())
}

/// Checks a TTL-like duration in seconds and returns it in milliseconds.
pub fn check_ttl(field: &str, seconds: i64) -> CoreResult<i64> {
    if !(MIN_TTL_SECONDS..=MAX_TTL_SECONDS).contains(&seconds) {
        return Err(CoreError::invalid(
            field,
            format!(
                "must be between {MIN_TTL_SECONDS} and {MAX_TTL_SECONDS} seconds (30 days), got {seconds}"
            ),
        ));
    }
    Ok(seconds * 1000)
}

/// Checks a wait window: negative is an error, above [`MAX_WAIT_SECONDS`] is capped.
pub fn check_wait(field: &str, seconds: i64) -> CoreResult<i64> {
    if seconds < 0 {
        return Err(CoreError::invalid(
            field,
            format!("must be 0 or more (capped at {MAX_WAIT_SECONDS}), got {seconds}"),
        ));
    }
    Ok(seconds.min(MAX_WAIT_SECONDS) * 1000)
}

/// Compares a presented secret (a token) with the real one in constant time, so the time taken
/// says nothing about how much of it matched.
pub fn secrets_equal(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// Who asks to unlock or renew: the capability token, or (weaker, v1) the agent id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HolderProof {
    Token(String),
    Agent(String),
}

// ---------------------------------------------------------------- notes and counters

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Saved {
    pub saved: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NoteView {
    pub key: String,
    /// Left out of `list_notes` with `values: false` (read back as empty).
    #[serde(default)]
    pub value: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_in_seconds: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum GetNoteResult {
    Found(NoteView),
    Missing { found: bool },
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Deleted {
    pub deleted: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Swapped {
    pub swapped: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CounterValue {
    pub value: i64,
}

// ---------------------------------------------------------------- locks

/// The exact arguments to call `lock_resource` again and keep one's place in line.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RetryWith {
    pub name: String,
    pub agent_id: String,
    pub ttl_seconds: i64,
    pub wait_seconds: i64,
    pub wake_token: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shared: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<i64>,
}

/// How a caller takes one lock name: exclusive (alone; the default), shared (together with other
/// shared holders, never with an exclusive one), or as one of a semaphore's `limit` holders (a
/// semaphore is shared with a limit: every holder of it is shared).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct LockMode {
    pub shared: bool,
    pub limit: Option<i64>,
}

impl LockMode {
    pub const EXCLUSIVE: LockMode = LockMode {
        shared: false,
        limit: None,
    };

    /// Checks `shared` and `limit` as given (`field` prefixes their names in errors, e.g.
    /// `names[2].`): `limit` 1 to [`MAX_LOCK_LIMIT`], and never with `shared: false`.
    pub fn new(field: &str, shared: Option<bool>, limit: Option<i64>) -> CoreResult<LockMode> {
        if let Some(n) = limit {
            if !(1..=MAX_LOCK_LIMIT).contains(&n) {
                return Err(CoreError::invalid(
                    &format!("{field}limit"),
                    format!("must be between 1 and {MAX_LOCK_LIMIT}, got {n}"),
                ));
            }
            if shared == Some(false) {
                return Err(CoreError::invalid(
                    &format!("{field}shared"),
                    "must not be false with a limit: a semaphore's holders all share it \
                     (leave shared out, or give true)",
                ));
            }
        }
        Ok(LockMode {
            shared: shared.unwrap_or(false) || limit.is_some(),
            limit,
        })
    }

    pub fn hold_mode(self) -> HoldMode {
        if self.shared {
            HoldMode::Shared
        } else {
            HoldMode::Exclusive
        }
    }
}

/// How a holder holds its lock, as `list_locks` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HoldMode {
    Exclusive,
    Shared,
}

/// The answer of `lock_resource`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum LockOutcome {
    Granted {
        locked: bool,
        lock_token: String,
        expires_in_seconds: i64,
        fence: i64,
        /// A new grant (not a refresh of a lock the agent already held): if its caller is gone
        /// before reading it, it must be released.
        #[serde(skip)]
        fresh: bool,
        /// When the hold expires, as this answer wrote it (internal): an undelivered new grant
        /// is released only while its hold still expires then (see `Orphan::Holds`).
        #[serde(skip)]
        expires_at: Millis,
    },
    Contended {
        locked: bool,
        /// The current holder, or the queued agent the free lock is reserved for.
        held_by: Option<String>,
        expires_in_seconds: i64,
        #[serde(skip_serializing_if = "Option::is_none")]
        wake_token: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        queue_position: Option<usize>,
        #[serde(skip_serializing_if = "Option::is_none")]
        retry_with: Option<RetryWith>,
    },
}

/// The answer of `lock_resources`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum LockSetOutcome {
    Granted {
        locked: bool,
        tokens: BTreeMap<String, String>,
        fences: BTreeMap<String, i64>,
        expires_in_seconds: i64,
        /// The names newly granted by this call (the others were already the agent's).
        #[serde(skip)]
        fresh: Vec<String>,
        /// When the new holds expire, as this answer wrote them (internal, see
        /// `Orphan::Holds`).
        #[serde(skip)]
        expires_at: Millis,
    },
    Contended {
        locked: bool,
        held_by: Option<String>,
        /// The first name (in lock order) that could not be granted.
        contended: String,
        expires_in_seconds: i64,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Released {
    pub released: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum Renewed {
    Yes {
        renewed: bool,
        expires_in_seconds: i64,
        fence: i64,
    },
    No {
        renewed: bool,
        error: String,
    },
}

/// A lock held now, or free but reserved for the caller at the head of its line.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LockView {
    pub name: String,
    /// The holder; `null` when the lock is free but reserved (see `reserved_for`).
    pub agent_id: Option<String>,
    /// Seconds until the holder's grant expires; 0 when free.
    pub expires_in_seconds: i64,
    /// The holder's fence; absent when free.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fence: Option<i64>,
    /// Callers parked or holding a place in line for this lock.
    pub waiters: usize,
    /// `exclusive` or `shared` (a semaphore's holders are shared).
    pub mode: HoldMode,
    /// A semaphore's limit; absent for a lock without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<i64>,
    /// How many holders the lock has now (one entry each).
    pub holders: usize,
    /// A free lock is kept for the head of its line while it comes back with its `wake_token`:
    /// that agent, and the seconds it has left to do so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reserved_for: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reserved_for_seconds: Option<i64>,
    /// The line of waiters, first in line first.
    #[serde(default)]
    pub line: Vec<LineView>,
}

/// The answer to `leave_line`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LeftLine {
    /// Whether a place was given up (false: no such place, or a call is waiting on it now).
    pub left: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One place in a lock's line.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LineView {
    pub agent_id: String,
    /// 1 = next in line.
    pub position: usize,
    /// Seconds since it joined the line.
    pub waiting_seconds: i64,
    /// `parked` (a call waits on it now) or `grace` (its call timed out with a `wake_token`;
    /// the place is kept until it calls again).
    pub state: String,
    /// Seconds until its parked call times out, or until its kept place is given up.
    pub seconds_left: i64,
}

// ---------------------------------------------------------------- presence

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Registered {
    pub registered: bool,
    pub expires_in_seconds: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Unregistered {
    pub unregistered: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AgentView {
    pub agent_id: String,
    pub expires_in_seconds: i64,
    pub locks_held: usize,
    pub leases_held: usize,
}

// ---------------------------------------------------------------- events

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Signaled {
    pub generation: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct EventWaitOutcome {
    pub generation: i64,
    pub fired: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Cleared {
    pub cleared: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct EventView {
    pub name: String,
    pub generation: i64,
    /// Signals at or below this generation were cleared; waits fire only after it.
    pub cleared_at_generation: i64,
    pub waiters: usize,
}

// ---------------------------------------------------------------- tasks

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Pushed {
    pub id: i64,
    /// The push found a pending or claimed task with its `unique_key`: `id` is that task's, and
    /// nothing was added. Absent when false, so a plain push still answers `{id}`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub duplicate: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum ClaimOutcome {
    Claimed {
        claimed: bool,
        id: i64,
        payload: String,
        lease_token: String,
        lease_expires_in_seconds: i64,
        attempts: i64,
    },
    Empty {
        claimed: bool,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Completed {
    pub completed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Failed {
    pub failed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Extended {
    pub extended: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease_expires_in_seconds: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TaskView {
    pub id: i64,
    pub queue: String,
    pub payload: String,
    pub priority: i64,
    pub state: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    pub attempts: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease_agent: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease_expires_in_seconds: Option<i64>,
    /// A delayed task: seconds until it may be claimed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_in_seconds: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unique_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<String>,
}

/// `get_task`: the task, or `{found:false}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum GetTaskResult {
    Found {
        found: bool,
        #[serde(flatten)]
        task: Box<TaskView>,
    },
    Missing {
        found: bool,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Retried {
    pub retried: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Everything `airlock status` shows, in one consistent snapshot.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StatusView {
    pub locks: Vec<LockView>,
    pub agents: Vec<AgentView>,
    pub notes: Vec<NoteView>,
    pub events: Vec<EventView>,
    pub queues: Vec<QueueView>,
    /// Open tasks (on the first page): claimed, then pending, oldest first in each, at most
    /// [`STATUS_MAX_TASKS`], payloads shortened to [`STATUS_PAYLOAD_CHARS`].
    #[serde(default)]
    pub tasks: Vec<TaskView>,
    /// What the engine that answered has done since it started.
    pub engine: EngineCounts,
    /// Sections cut at the page's `limit` (or the page byte budget): `next_cursor` (or the
    /// `list_*` tools) page through the rest.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub truncated: Vec<String>,
    /// Where the next page of every truncated section starts (`GET /status?cursor=…`); absent
    /// on the last page.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub next_cursor: Option<String>,
}

/// Where each section of a paged `/status` goes on from, carried between pages as an opaque
/// `cursor` (hex of its JSON). A section that ended on an earlier page comes back empty.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusCursor {
    #[serde(default)]
    pub locks: SectionAt,
    #[serde(default)]
    pub agents: SectionAt,
    #[serde(default)]
    pub notes: SectionAt,
    #[serde(default)]
    pub events: SectionAt,
    #[serde(default)]
    pub queues: SectionAt,
    /// The open tasks, shown whole on the first page: `Start` to show them, else `Done` (a
    /// cursor that does not name them comes after the first page).
    #[serde(default = "SectionAt::done")]
    pub tasks: SectionAt,
}

/// Where one section of `/status` stands between pages.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SectionAt {
    /// From its first item.
    #[default]
    Start,
    /// After this item (a name, or the section's own list cursor).
    After(String),
    /// Ended on an earlier page.
    Done,
}

impl SectionAt {
    fn done() -> SectionAt {
        SectionAt::Done
    }
}

/// The longest `/status` cursor accepted: five positions, each at most a name long, in hex.
pub const MAX_STATUS_CURSOR_BYTES: usize = 16 * 1024;

impl StatusCursor {
    pub fn encode(&self) -> String {
        hex::encode(serde_json::to_vec(self).unwrap_or_default())
    }

    /// Where a snapshot of what can be counted starts (`GET /metrics`): every section but the
    /// notes and the open tasks, so that no note value or task payload is read.
    pub fn counts_only() -> StatusCursor {
        StatusCursor {
            notes: SectionAt::Done,
            tasks: SectionAt::Done,
            ..StatusCursor::default()
        }
    }

    /// Checks a `/status` page: `limit` as for the list tools, `cursor` one this daemon made.
    pub fn page(page: &crate::core::request::ListPage) -> CoreResult<(usize, StatusCursor)> {
        let limit = Page::new(page.limit, None, true)?.limit;
        let Some(text) = &page.cursor else {
            return Ok((limit, StatusCursor::default()));
        };
        let bad = || {
            CoreError::invalid(
                "cursor",
                "is not a cursor from /status (pass the next_cursor of the previous page as it is)",
            )
        };
        if text.len() > MAX_STATUS_CURSOR_BYTES {
            return Err(bad());
        }
        let bytes = hex::decode(text).map_err(|_| bad())?;
        let cursor: StatusCursor = serde_json::from_slice(&bytes).map_err(|_| bad())?;
        Ok((limit, cursor))
    }
}

/// An engine's work since it started: transactions committed and operations applied. Their ratio
/// is how many operations share a commit (an fsync); the benchmark reports it from `/status`.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct EngineCounts {
    pub commits: u64,
    pub operations: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct QueueView {
    pub queue: String,
    pub pending: usize,
    pub claimed: usize,
    pub completed: usize,
    pub failed: usize,
    /// Tasks that used up their `max_attempts` (kept until `retry_task`).
    #[serde(default)]
    pub dead: usize,
    /// Callers parked in `claim_next_task` on this queue.
    pub waiting_claimers: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_round_trips_through_json() {
        for e in [
            CoreError::invalid("name", "must not be empty"),
            CoreError::Storage("the database connection is closed".into()),
            CoreError::ShuttingDown,
        ] {
            let v = serde_json::to_value(&e).expect("serializes");
            assert_eq!(serde_json::from_value::<CoreError>(v).unwrap(), e);
        }
    }

    #[test]
    fn names_are_checked() {
        assert!(check_name("name", "ok").is_ok());
        assert!(check_name("name", "").is_err());
        assert!(check_name("name", "a\0b").is_err());
        assert!(check_value("value", "a\0b").is_err());
        assert!(check_value("value", "a\tb\nc").is_ok());
        assert!(check_name("name", "a\nb").is_err());
        assert!(check_name("name", &"x".repeat(512)).is_ok());
        let e = check_name("name", &"x".repeat(513)).unwrap_err();
        assert!(e.to_string().starts_with("name: must be at most 512 bytes"));
    }

    #[test]
    fn invisible_and_bidi_characters_are_refused_in_names() {
        for bad in [
            "ad\u{200b}min",
            "x\u{202e}y",
            "\u{feff}bom",
            "a\u{2066}b",
            "l\u{2028}s",
        ] {
            let e = check_name("key", bad).unwrap_err().to_string();
            assert!(e.contains("key") && e.contains("invisible"), "{bad:?}: {e}");
        }
        assert!(check_name("key", "ünïcödé-名前-✓").is_ok());
    }

    #[test]
    fn ttls_and_waits_are_checked() {
        assert_eq!(check_ttl("ttl_seconds", 1).unwrap(), 1000);
        assert!(check_ttl("ttl_seconds", 0).is_err());
        assert!(check_ttl("ttl_seconds", MAX_TTL_SECONDS + 1).is_err());
        assert_eq!(check_wait("wait_seconds", 500).unwrap(), 50_000);
        assert!(check_wait("wait_seconds", -1).is_err());
    }
}
