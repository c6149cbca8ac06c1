//! The argument struct of each tool: fields named as the tool's wire arguments.

use serde::{Deserialize, Serialize};

use super::super::types::*;

/// `lock_resource`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockResource {
    pub name: String,
    pub agent_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_seconds: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_seconds: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wake_token: Option<String>,
    /// Take it shared (readers); `Some(true)` after the check when `limit` is given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared: Option<bool>,
    /// A counting semaphore: at most this many holders.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<i64>,
}

impl LockResource {
    /// The mode asked for (checked by [`Request::check`](super::Request::check)).
    pub fn mode(&self) -> LockMode {
        LockMode {
            shared: self.shared.unwrap_or(false) || self.limit.is_some(),
            limit: self.limit,
        }
    }
}

/// One name of `lock_resources`: on the wire a plain string (exclusive), or
/// `{"name": .., "shared": true, "limit": N}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "LockNameWire", into = "LockNameWire")]
pub struct LockName {
    pub name: String,
    pub shared: Option<bool>,
    pub limit: Option<i64>,
}

impl LockName {
    pub fn plain(name: impl Into<String>) -> LockName {
        LockName {
            name: name.into(),
            shared: None,
            limit: None,
        }
    }

    pub fn mode(&self) -> LockMode {
        LockMode {
            shared: self.shared.unwrap_or(false) || self.limit.is_some(),
            limit: self.limit,
        }
    }
}

impl From<&str> for LockName {
    fn from(name: &str) -> Self {
        LockName::plain(name)
    }
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum LockNameWire {
    Plain(String),
    Item {
        name: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        shared: Option<bool>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<i64>,
    },
}

impl From<LockNameWire> for LockName {
    fn from(w: LockNameWire) -> Self {
        match w {
            LockNameWire::Plain(name) => LockName::plain(name),
            LockNameWire::Item {
                name,
                shared,
                limit,
            } => LockName {
                name,
                shared,
                limit,
            },
        }
    }
}

impl From<LockName> for LockNameWire {
    fn from(n: LockName) -> Self {
        if n.shared.is_none() && n.limit.is_none() {
            LockNameWire::Plain(n.name)
        } else {
            LockNameWire::Item {
                name: n.name,
                shared: n.shared,
                limit: n.limit,
            }
        }
    }
}

/// How a holder proves it holds a lock: `lock_token` (preferred) or, for v1 clients, `agent_id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock_token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
}

impl Holder {
    /// The proof to check: the token when both are given.
    pub fn proof(&self) -> CoreResult<HolderProof> {
        match (&self.lock_token, &self.agent_id) {
            (Some(t), _) => Ok(HolderProof::Token(t.clone())),
            (None, Some(agent)) => Ok(HolderProof::Agent(agent.clone())),
            (None, None) => Err(CoreError::invalid(
                "lock_token",
                "is required (or, weaker and for v1 clients, agent_id)",
            )),
        }
    }
}

/// `unlock_resource`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnlockResource {
    pub name: String,
    #[serde(flatten)]
    pub holder: Holder,
}

/// `renew_lock`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RenewLock {
    pub name: String,
    #[serde(flatten)]
    pub holder: Holder,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_seconds: Option<i64>,
}

/// `lock_resources`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockResources {
    pub names: Vec<LockName>,
    pub agent_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_seconds: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_seconds: Option<i64>,
}

/// `leave_line`: give up a place kept in a lock's line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaveLine {
    pub name: String,
    pub wake_token: String,
}

/// `set_note`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetNote {
    pub key: String,
    pub value: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_seconds: Option<i64>,
}

/// `get_note` and `delete_note`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NoteKey {
    pub key: String,
}

/// `set_note_if`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetNoteIf {
    pub key: String,
    pub expected_value: String,
    pub new_value: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_seconds: Option<i64>,
}

/// `increment_counter`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IncrementCounter {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<i64>,
}

/// `register_agent`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterAgent {
    pub agent_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_seconds: Option<i64>,
}

/// `unregister_agent`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentId {
    pub agent_id: String,
}

/// `signal_event` and `clear_event`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventName {
    pub name: String,
}

/// `wait_for_event`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaitForEvent {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_seconds: Option<i64>,
}

/// `push_task`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushTask {
    pub queue: String,
    pub payload: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_seconds: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unique_key: Option<String>,
}

/// `claim_next_task`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimNextTask {
    pub queue: String,
    pub agent_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_seconds: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_seconds: Option<i64>,
}

/// `complete_task`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub id: i64,
    pub lease_token: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<String>,
}

/// `fail_task`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailTask {
    pub id: i64,
    pub lease_token: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requeue: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `extend_lease`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExtendLease {
    pub id: i64,
    pub lease_token: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_seconds: Option<i64>,
}

/// `list_tasks` (the CLI may list every queue).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListTasks {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    /// `pending`, `claimed`, `completed`, `failed` or `dead`; absent: every state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    #[serde(flatten)]
    pub page: ListPage,
}

/// Which page of a list: at most `limit` items after `cursor` (the previous page's
/// `next_cursor`). Either given, the answer is a page, `{items, next_cursor}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListPage {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
}

impl ListPage {
    /// Whether the caller asked for a page (else the contract's plain array when all fits).
    pub fn asked(&self) -> bool {
        self.limit.is_some() || self.cursor.is_some()
    }

    /// The checked page (`values`: with note values).
    pub fn page(&self, values: bool) -> CoreResult<Page> {
        Page::new(self.limit, self.cursor.clone(), values)
    }
}

/// `list_notes`: a page, with or without values.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListNotes {
    #[serde(flatten)]
    pub page: ListPage,
    /// `false` leaves each note's value out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub values: Option<bool>,
}

/// `get_history`: entries newest first, filtered by what is given, a page at a time.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetHistory {
    /// A lock's name, a queue, or an event's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    /// One kind of entry (`grant`, `release`, `claim`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// An RFC 3339 time, or a span back from now (`10m`, `2h`, `7d`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<i64>,
    /// The `next_cursor` of the previous page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
}

/// `get_task` and `retry_task`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskId {
    pub id: i64,
}
