//! The one vocabulary of the daemon: every tool call as a typed [`Request`], every answer as a
//! typed [`Response`].
//!
//! The MCP tool table (`mcp::tools`), the CLI (`cli::commands`) and the cluster's forwarding
//! (`cluster`) all speak it. Each argument struct serializes with the tool's own argument names,
//! so a request's `args` are exactly the JSON an MCP client sends (less the deprecated
//! `ttl_minutes`, folded into `ttl_seconds` by the MCP layer).
//!
//! What differs from tool to tool is decided in exhaustive `match`es here ([`Tool::read_only`],
//! [`Tool::idempotent`], [`Tool::repeatable_at_takeover`], [`Request::orphan_of`]), so a new
//! variant does not compile until each property is decided for it. ARCHITECTURE.md ("Adding a
//! tool") lists the places.

use serde::{Deserialize, Serialize};

use super::types::*;
use super::Orphan;

/// Declares [`Tool`] (the tools' names, as a plain enum) with [`Tool::ALL`] and
/// [`Tool::name`] from one list, so the three cannot disagree.
macro_rules! tools {
    ($($variant:ident => $name:literal,)*) => {
        /// Which tool a request is for: its name, without arguments.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Tool {
            $($variant,)*
        }

        impl Tool {
            /// Every tool, in the order `tools/list` shows them.
            pub const ALL: &'static [Tool] = &[$(Tool::$variant,)*];

            /// The tool's name on the wire.
            pub fn name(self) -> &'static str {
                match self {
                    $(Tool::$variant => $name,)*
                }
            }
        }
    };
}

tools! {
    LockResource => "lock_resource",
    UnlockResource => "unlock_resource",
    RenewLock => "renew_lock",
    ListLocks => "list_locks",
    LockResources => "lock_resources",
    LeaveLine => "leave_line",
    SetNote => "set_note",
    GetNote => "get_note",
    ListNotes => "list_notes",
    DeleteNote => "delete_note",
    SetNoteIf => "set_note_if",
    IncrementCounter => "increment_counter",
    RegisterAgent => "register_agent",
    UnregisterAgent => "unregister_agent",
    ListAgents => "list_agents",
    SignalEvent => "signal_event",
    WaitForEvent => "wait_for_event",
    ClearEvent => "clear_event",
    PushTask => "push_task",
    ClaimNextTask => "claim_next_task",
    CompleteTask => "complete_task",
    FailTask => "fail_task",
    ExtendLease => "extend_lease",
    ListTasks => "list_tasks",
    Status => "status",
}

impl Tool {
    /// The tool by its wire name.
    pub fn from_name(name: &str) -> Option<Tool> {
        Tool::ALL.iter().copied().find(|t| t.name() == name)
    }

    /// Offered to MCP clients (`tools/list`). The status snapshot is served at `GET /status`.
    pub fn is_mcp_tool(self) -> bool {
        !matches!(self, Tool::Status)
    }

    /// Changes nothing (MCP's `readOnlyHint`).
    pub fn read_only(self) -> bool {
        use Tool::*;
        match self {
            ListLocks | GetNote | ListNotes | ListAgents | WaitForEvent | ListTasks | Status => {
                true
            }
            LockResource | UnlockResource | RenewLock | LockResources | LeaveLine | SetNote
            | DeleteNote | SetNoteIf | IncrementCounter | RegisterAgent | UnregisterAgent
            | SignalEvent | ClearEvent | PushTask | ClaimNextTask | CompleteTask | FailTask
            | ExtendLease => false,
        }
    }

    /// Calling it twice with the same arguments leaves the state as calling it once (MCP's
    /// `idempotentHint`, for a client deciding whether to retry).
    pub fn idempotent(self) -> bool {
        use Tool::*;
        match self {
            // Reads, and writes whose second call finds the first one's result in place.
            RenewLock | ListLocks | SetNote | GetNote | ListNotes | DeleteNote | RegisterAgent
            | UnregisterAgent | ListAgents | WaitForEvent | ClearEvent | ExtendLease
            | ListTasks | Status => true,
            // A place left is gone; leaving it again finds nothing to leave.
            LeaveLine => true,
            // A second lock call by another agent queues; a second push adds a task; a counter
            // counts twice; a second unlock may release a later grant of the same agent.
            LockResource | UnlockResource | LockResources | SetNoteIf | IncrementCounter
            | SignalEvent | PushTask | ClaimNextTask | CompleteTask | FailTask => false,
        }
    }

    /// Whether a new coordinator may run the call again when it finds it taken by the previous
    /// one, which may or may not have run it (several daemons on PostgreSQL). A call that is not
    /// repeatable is answered "may or may not have taken effect" instead.
    ///
    /// This differs from [`Tool::idempotent`] where the moment matters: `set_note` is idempotent
    /// for its caller, but re-run late it could overwrite a newer value another agent wrote
    /// since; `lock_resource` is not idempotent across agents, but its re-run by the same agent
    /// finds its own grant and answers the same token.
    pub fn repeatable_at_takeover(self) -> bool {
        use Tool::*;
        match self {
            // Reads and waits.
            GetNote | ListNotes | ListLocks | ListAgents | WaitForEvent | ListTasks | Status => {
                true
            }
            // A lock its agent already holds is granted again with the same token.
            LockResource | LockResources | RenewLock | RegisterAgent | ExtendLease => true,
            // A claim the old coordinator committed but never answered stays leased to the agent
            // until its lease ends; the re-run claims the next task (README: "What is not").
            ClaimNextTask => true,
            // Lines live in the coordinator's memory: a new coordinator has none to leave.
            LeaveLine => true,
            SetNote | DeleteNote | SetNoteIf | IncrementCounter | UnlockResource
            | UnregisterAgent | SignalEvent | ClearEvent | PushTask | CompleteTask | FailTask => {
                false
            }
        }
    }

    /// Whether the call may park in the daemon (`wait_seconds`), and so must leave its line when
    /// its caller goes away.
    pub fn may_park(self) -> bool {
        use Tool::*;
        match self {
            LockResource | LockResources | WaitForEvent | ClaimNextTask => true,
            UnlockResource | RenewLock | ListLocks | LeaveLine | SetNote | GetNote | ListNotes
            | DeleteNote | SetNoteIf | IncrementCounter | RegisterAgent | UnregisterAgent
            | ListAgents | SignalEvent | ClearEvent | PushTask | CompleteTask | FailTask
            | ExtendLease | ListTasks | Status => false,
        }
    }
}

// ---------------------------------------------------------------- arguments

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

/// `leave_line`: give up a place kept in a lock's line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaveLine {
    pub name: String,
    pub wake_token: String,
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
    pub names: Vec<String>,
    pub agent_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_seconds: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_seconds: Option<i64>,
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
}

/// `fail_task`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailTask {
    pub id: i64,
    pub lease_token: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requeue: Option<bool>,
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
}

// ---------------------------------------------------------------- requests and responses

/// One call, typed. Serialized as `{"tool": <name>, "args": {…}}` (how the cluster forwards
/// it); `args` is absent for tools that take none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "tool", content = "args", rename_all = "snake_case")]
pub enum Request {
    LockResource(LockResource),
    UnlockResource(UnlockResource),
    RenewLock(RenewLock),
    ListLocks,
    LockResources(LockResources),
    LeaveLine(LeaveLine),
    SetNote(SetNote),
    GetNote(NoteKey),
    ListNotes,
    DeleteNote(NoteKey),
    SetNoteIf(SetNoteIf),
    IncrementCounter(IncrementCounter),
    RegisterAgent(RegisterAgent),
    UnregisterAgent(AgentId),
    ListAgents,
    SignalEvent(EventName),
    WaitForEvent(WaitForEvent),
    ClearEvent(EventName),
    PushTask(PushTask),
    ClaimNextTask(ClaimNextTask),
    CompleteTask(Lease),
    FailTask(FailTask),
    ExtendLease(ExtendLease),
    ListTasks(ListTasks),
    Status,
}

/// One answer, typed, tagged like its [`Request`]: `{"tool": <name>, "result": {…}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "tool", content = "result", rename_all = "snake_case")]
pub enum Response {
    LockResource(LockOutcome),
    UnlockResource(Released),
    RenewLock(Renewed),
    ListLocks(Vec<LockView>),
    LockResources(LockSetOutcome),
    LeaveLine(LeftLine),
    SetNote(Saved),
    GetNote(GetNoteResult),
    ListNotes(Vec<NoteView>),
    DeleteNote(Deleted),
    SetNoteIf(Swapped),
    IncrementCounter(CounterValue),
    RegisterAgent(Registered),
    UnregisterAgent(Unregistered),
    ListAgents(Vec<AgentView>),
    SignalEvent(Signaled),
    WaitForEvent(EventWaitOutcome),
    ClearEvent(Cleared),
    PushTask(Pushed),
    ClaimNextTask(ClaimOutcome),
    CompleteTask(Completed),
    FailTask(Failed),
    ExtendLease(Extended),
    ListTasks(Vec<TaskView>),
    Status(StatusView),
}

impl Request {
    pub fn tool(&self) -> Tool {
        match self {
            Request::LockResource(_) => Tool::LockResource,
            Request::UnlockResource(_) => Tool::UnlockResource,
            Request::RenewLock(_) => Tool::RenewLock,
            Request::ListLocks => Tool::ListLocks,
            Request::LockResources(_) => Tool::LockResources,
            Request::LeaveLine(_) => Tool::LeaveLine,
            Request::SetNote(_) => Tool::SetNote,
            Request::GetNote(_) => Tool::GetNote,
            Request::ListNotes => Tool::ListNotes,
            Request::DeleteNote(_) => Tool::DeleteNote,
            Request::SetNoteIf(_) => Tool::SetNoteIf,
            Request::IncrementCounter(_) => Tool::IncrementCounter,
            Request::RegisterAgent(_) => Tool::RegisterAgent,
            Request::UnregisterAgent(_) => Tool::UnregisterAgent,
            Request::ListAgents => Tool::ListAgents,
            Request::SignalEvent(_) => Tool::SignalEvent,
            Request::WaitForEvent(_) => Tool::WaitForEvent,
            Request::ClearEvent(_) => Tool::ClearEvent,
            Request::PushTask(_) => Tool::PushTask,
            Request::ClaimNextTask(_) => Tool::ClaimNextTask,
            Request::CompleteTask(_) => Tool::CompleteTask,
            Request::FailTask(_) => Tool::FailTask,
            Request::ExtendLease(_) => Tool::ExtendLease,
            Request::ListTasks(_) => Tool::ListTasks,
            Request::Status => Tool::Status,
        }
    }

    /// The request's arguments as the tool's JSON arguments (an MCP client's `arguments`).
    pub fn arguments(&self) -> serde_json::Map<String, serde_json::Value> {
        match serde_json::to_value(self) {
            Ok(serde_json::Value::Object(mut m)) => match m.remove("args") {
                Some(serde_json::Value::Object(args)) => args,
                _ => serde_json::Map::new(),
            },
            _ => serde_json::Map::new(),
        }
    }

    /// The request for `tool` with these JSON arguments (the inverse of [`Request::arguments`]).
    pub fn from_arguments(
        tool: Tool,
        arguments: serde_json::Map<String, serde_json::Value>,
    ) -> Result<Request, serde_json::Error> {
        let mut m = serde_json::Map::new();
        m.insert("tool".into(), tool.name().into());
        if !arguments.is_empty() || Request::unit(tool).is_none() {
            m.insert("args".into(), serde_json::Value::Object(arguments));
        }
        serde_json::from_value(serde_json::Value::Object(m))
    }

    /// The request of a tool that takes no arguments.
    fn unit(tool: Tool) -> Option<Request> {
        match tool {
            Tool::ListLocks => Some(Request::ListLocks),
            Tool::ListNotes => Some(Request::ListNotes),
            Tool::ListAgents => Some(Request::ListAgents),
            Tool::Status => Some(Request::Status),
            _ => None,
        }
    }

    /// Checks every argument (a bad one is refused with the field and the rule, and nothing
    /// runs) and fills in the defaults, so that every optional field the engine reads is `Some`
    /// afterwards; waits are capped at [`MAX_WAIT_SECONDS`] and `lock_resources` names sorted.
    pub fn check(self) -> CoreResult<Request> {
        fn ttl(field: &str, v: Option<i64>, default: i64) -> CoreResult<Option<i64>> {
            Ok(Some(check_ttl(field, v.unwrap_or(default))? / 1000))
        }
        fn ttl_if_given(v: Option<i64>) -> CoreResult<Option<i64>> {
            v.map(|s| check_ttl("ttl_seconds", s).map(|ms| ms / 1000))
                .transpose()
        }
        fn wait(v: Option<i64>, default: i64) -> CoreResult<Option<i64>> {
            Ok(Some(
                check_wait("wait_seconds", v.unwrap_or(default))? / 1000,
            ))
        }
        fn holder(name: &str, h: &Holder) -> CoreResult<()> {
            let proof = h.proof()?;
            check_name("name", name)?;
            match &proof {
                HolderProof::Token(t) => check_name("lock_token", t),
                HolderProof::Agent(a) => check_name("agent_id", a),
            }
        }
        Ok(match self {
            Request::LockResource(mut r) => {
                check_name("name", &r.name)?;
                check_name("agent_id", &r.agent_id)?;
                r.ttl_seconds = ttl("ttl_seconds", r.ttl_seconds, DEFAULT_LOCK_TTL_SECONDS)?;
                r.wait_seconds = wait(r.wait_seconds, 0)?;
                if let Some(t) = &r.wake_token {
                    check_name("wake_token", t)?;
                }
                Request::LockResource(r)
            }
            Request::UnlockResource(r) => {
                holder(&r.name, &r.holder)?;
                Request::UnlockResource(r)
            }
            Request::RenewLock(mut r) => {
                holder(&r.name, &r.holder)?;
                r.ttl_seconds = ttl("ttl_seconds", r.ttl_seconds, DEFAULT_LOCK_TTL_SECONDS)?;
                Request::RenewLock(r)
            }
            Request::ListLocks => Request::ListLocks,
            Request::LeaveLine(r) => {
                check_name("name", &r.name)?;
                check_name("wake_token", &r.wake_token)?;
                Request::LeaveLine(r)
            }
            Request::LockResources(mut r) => {
                if r.names.is_empty() || r.names.len() > MAX_LOCK_SET {
                    return Err(CoreError::invalid(
                        "names",
                        format!(
                            "must list 1 to {MAX_LOCK_SET} lock names, got {}",
                            r.names.len()
                        ),
                    ));
                }
                for (i, n) in r.names.iter().enumerate() {
                    check_name(&format!("names[{i}]"), n)?;
                }
                r.names.sort();
                if let Some(w) = r.names.windows(2).find(|w| w[0] == w[1]) {
                    return Err(CoreError::invalid(
                        "names",
                        format!("must not repeat a name, got {:?} twice", w[0]),
                    ));
                }
                check_name("agent_id", &r.agent_id)?;
                r.ttl_seconds = ttl("ttl_seconds", r.ttl_seconds, DEFAULT_LOCK_TTL_SECONDS)?;
                r.wait_seconds = wait(r.wait_seconds, 0)?;
                Request::LockResources(r)
            }
            Request::SetNote(mut r) => {
                check_name("key", &r.key)?;
                check_value("value", &r.value)?;
                check_author("author", &r.author)?;
                r.ttl_seconds = ttl_if_given(r.ttl_seconds)?;
                Request::SetNote(r)
            }
            Request::GetNote(r) => {
                check_name("key", &r.key)?;
                Request::GetNote(r)
            }
            Request::ListNotes => Request::ListNotes,
            Request::DeleteNote(r) => {
                check_name("key", &r.key)?;
                Request::DeleteNote(r)
            }
            Request::SetNoteIf(mut r) => {
                check_name("key", &r.key)?;
                check_value("expected_value", &r.expected_value)?;
                check_value("new_value", &r.new_value)?;
                check_author("author", &r.author)?;
                r.ttl_seconds = ttl_if_given(r.ttl_seconds)?;
                Request::SetNoteIf(r)
            }
            Request::IncrementCounter(mut r) => {
                check_name("name", &r.name)?;
                r.by = Some(r.by.unwrap_or(1));
                Request::IncrementCounter(r)
            }
            Request::RegisterAgent(mut r) => {
                check_name("agent_id", &r.agent_id)?;
                r.ttl_seconds = ttl("ttl_seconds", r.ttl_seconds, DEFAULT_AGENT_TTL_SECONDS)?;
                Request::RegisterAgent(r)
            }
            Request::UnregisterAgent(r) => {
                check_name("agent_id", &r.agent_id)?;
                Request::UnregisterAgent(r)
            }
            Request::ListAgents => Request::ListAgents,
            Request::SignalEvent(r) => {
                check_name("name", &r.name)?;
                Request::SignalEvent(r)
            }
            Request::WaitForEvent(mut r) => {
                check_name("name", &r.name)?;
                let last_seen = r.last_seen_generation.unwrap_or(0);
                if last_seen < 0 {
                    return Err(CoreError::invalid(
                        "last_seen_generation",
                        format!("must be 0 or more, got {last_seen}"),
                    ));
                }
                r.last_seen_generation = Some(last_seen);
                r.wait_seconds = wait(r.wait_seconds, DEFAULT_EVENT_WAIT_SECONDS)?;
                Request::WaitForEvent(r)
            }
            Request::ClearEvent(r) => {
                check_name("name", &r.name)?;
                Request::ClearEvent(r)
            }
            Request::PushTask(mut r) => {
                check_name("queue", &r.queue)?;
                check_value("payload", &r.payload)?;
                check_author("author", &r.author)?;
                r.priority = Some(r.priority.unwrap_or(0));
                Request::PushTask(r)
            }
            Request::ClaimNextTask(mut r) => {
                check_name("queue", &r.queue)?;
                check_name("agent_id", &r.agent_id)?;
                r.lease_seconds = ttl("lease_seconds", r.lease_seconds, DEFAULT_LEASE_SECONDS)?;
                r.wait_seconds = wait(r.wait_seconds, 0)?;
                Request::ClaimNextTask(r)
            }
            Request::CompleteTask(r) => {
                check_name("lease_token", &r.lease_token)?;
                Request::CompleteTask(r)
            }
            Request::FailTask(mut r) => {
                check_name("lease_token", &r.lease_token)?;
                r.requeue = Some(r.requeue.unwrap_or(true));
                Request::FailTask(r)
            }
            Request::ExtendLease(mut r) => {
                check_name("lease_token", &r.lease_token)?;
                r.lease_seconds = ttl("lease_seconds", r.lease_seconds, DEFAULT_LEASE_SECONDS)?;
                Request::ExtendLease(r)
            }
            Request::ListTasks(r) => {
                if let Some(q) = &r.queue {
                    check_name("queue", q)?;
                }
                Request::ListTasks(r)
            }
            Request::Status => Request::Status,
        })
    }

    /// How long the call may park, in seconds (for progress reports).
    pub fn wait_window_seconds(&self) -> u64 {
        let asked = match self {
            Request::LockResource(r) => r.wait_seconds.unwrap_or(0),
            Request::LockResources(r) => r.wait_seconds.unwrap_or(0),
            Request::ClaimNextTask(r) => r.wait_seconds.unwrap_or(0),
            Request::WaitForEvent(r) => r.wait_seconds.unwrap_or(DEFAULT_EVENT_WAIT_SECONDS),
            _ => 0,
        };
        asked.clamp(0, MAX_WAIT_SECONDS) as u64
    }

    /// The grant an answer to this request carries: what to release if nobody reads it.
    pub fn orphan_of(&self, response: &Response) -> Option<Orphan> {
        match (self, response) {
            (Request::LockResource(r), Response::LockResource(o)) => match o {
                // A re-grant of a lock the agent already held (`fresh: false`) is not released:
                // the agent still holds it from before.
                LockOutcome::Granted {
                    lock_token,
                    fresh: true,
                    ..
                } => Some(Orphan::Locks(vec![(r.name.clone(), lock_token.clone())])),
                _ => None,
            },
            (Request::LockResources(_), Response::LockResources(o)) => match o {
                LockSetOutcome::Granted { tokens, fresh, .. } => Some(Orphan::Locks(
                    fresh
                        .iter()
                        .filter_map(|n| tokens.get(n).map(|t| (n.clone(), t.clone())))
                        .collect(),
                )),
                _ => None,
            },
            (Request::ClaimNextTask(_), Response::ClaimNextTask(o)) => match o {
                ClaimOutcome::Claimed {
                    id, lease_token, ..
                } => Some(Orphan::Lease {
                    id: *id,
                    lease_token: lease_token.clone(),
                }),
                _ => None,
            },
            // Everything else grants nothing a caller could leave behind. Listed, so that a new
            // tool must be decided here.
            (
                Request::LockResource(_)
                | Request::LockResources(_)
                | Request::ClaimNextTask(_)
                | Request::UnlockResource(_)
                | Request::RenewLock(_)
                | Request::ListLocks
                | Request::LeaveLine(_)
                | Request::SetNote(_)
                | Request::GetNote(_)
                | Request::ListNotes
                | Request::DeleteNote(_)
                | Request::SetNoteIf(_)
                | Request::IncrementCounter(_)
                | Request::RegisterAgent(_)
                | Request::UnregisterAgent(_)
                | Request::ListAgents
                | Request::SignalEvent(_)
                | Request::WaitForEvent(_)
                | Request::ClearEvent(_)
                | Request::PushTask(_)
                | Request::CompleteTask(_)
                | Request::FailTask(_)
                | Request::ExtendLease(_)
                | Request::ListTasks(_)
                | Request::Status,
                _,
            ) => None,
        }
    }
}

impl Response {
    /// The answer as the contract's JSON (what `content[0].text` carries).
    pub fn to_json(&self) -> CoreResult<serde_json::Value> {
        let encoded = match self {
            Response::LockResource(v) => serde_json::to_value(v),
            Response::UnlockResource(v) => serde_json::to_value(v),
            Response::RenewLock(v) => serde_json::to_value(v),
            Response::ListLocks(v) => serde_json::to_value(v),
            Response::LockResources(v) => serde_json::to_value(v),
            Response::LeaveLine(v) => serde_json::to_value(v),
            Response::SetNote(v) => serde_json::to_value(v),
            Response::GetNote(v) => serde_json::to_value(v),
            Response::ListNotes(v) => serde_json::to_value(v),
            Response::DeleteNote(v) => serde_json::to_value(v),
            Response::SetNoteIf(v) => serde_json::to_value(v),
            Response::IncrementCounter(v) => serde_json::to_value(v),
            Response::RegisterAgent(v) => serde_json::to_value(v),
            Response::UnregisterAgent(v) => serde_json::to_value(v),
            Response::ListAgents(v) => serde_json::to_value(v),
            Response::SignalEvent(v) => serde_json::to_value(v),
            Response::WaitForEvent(v) => serde_json::to_value(v),
            Response::ClearEvent(v) => serde_json::to_value(v),
            Response::PushTask(v) => serde_json::to_value(v),
            Response::ClaimNextTask(v) => serde_json::to_value(v),
            Response::CompleteTask(v) => serde_json::to_value(v),
            Response::FailTask(v) => serde_json::to_value(v),
            Response::ExtendLease(v) => serde_json::to_value(v),
            Response::ListTasks(v) => serde_json::to_value(v),
            Response::Status(v) => serde_json::to_value(v),
        };
        encoded.map_err(|e| CoreError::Storage(format!("encoding the result: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn tool_names_are_distinct_and_found() {
        for t in Tool::ALL {
            assert_eq!(Tool::from_name(t.name()), Some(*t));
        }
        let mut names: Vec<_> = Tool::ALL.iter().map(|t| t.name()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), Tool::ALL.len());
    }

    #[test]
    fn requests_round_trip_through_their_arguments() {
        let cases = [
            Request::LockResource(LockResource {
                name: "x".into(),
                agent_id: "a".into(),
                ttl_seconds: Some(5),
                wait_seconds: None,
                wake_token: Some("w".into()),
            }),
            Request::UnlockResource(UnlockResource {
                name: "x".into(),
                holder: Holder {
                    lock_token: Some("t".into()),
                    agent_id: None,
                },
            }),
            Request::ListLocks,
            Request::LeaveLine(LeaveLine {
                name: "x".into(),
                wake_token: "w".into(),
            }),
            Request::ListTasks(ListTasks { queue: None }),
            Request::Status,
        ];
        for r in cases {
            let back = Request::from_arguments(r.tool(), r.arguments()).unwrap();
            assert_eq!(back, r);
            let text = serde_json::to_string(&r).unwrap();
            assert_eq!(serde_json::from_str::<Request>(&text).unwrap(), r);
        }
    }

    /// Every answer survives the trip through JSON (how a forwarded answer travels), the
    /// untagged result shapes included.
    #[test]
    fn responses_round_trip() {
        let cases = [
            Response::LockResource(LockOutcome::Granted {
                locked: true,
                lock_token: "t".into(),
                expires_in_seconds: 9,
                fence: 3,
                fresh: false,
            }),
            Response::LockResource(LockOutcome::Contended {
                locked: false,
                held_by: Some("a".into()),
                expires_in_seconds: 9,
                wake_token: Some("w".into()),
                queue_position: Some(1),
                retry_with: Some(RetryWith {
                    name: "x".into(),
                    agent_id: "b".into(),
                    ttl_seconds: 9,
                    wait_seconds: 5,
                    wake_token: "w".into(),
                }),
            }),
            Response::LockResources(LockSetOutcome::Granted {
                locked: true,
                tokens: BTreeMap::from([("x".to_string(), "t".to_string())]),
                fences: BTreeMap::from([("x".to_string(), 1)]),
                expires_in_seconds: 9,
                fresh: vec![],
            }),
            Response::LockResources(LockSetOutcome::Contended {
                locked: false,
                held_by: None,
                contended: "x".into(),
                expires_in_seconds: 0,
            }),
            Response::GetNote(GetNoteResult::Missing { found: false }),
            Response::GetNote(GetNoteResult::Found(NoteView {
                key: "k".into(),
                value: "v".into(),
                author: None,
                expires_in_seconds: Some(3),
            })),
            Response::RenewLock(Renewed::Yes {
                renewed: true,
                expires_in_seconds: 3,
                fence: 2,
            }),
            Response::RenewLock(Renewed::No {
                renewed: false,
                error: "no".into(),
            }),
            Response::ClaimNextTask(ClaimOutcome::Empty { claimed: false }),
            Response::ClaimNextTask(ClaimOutcome::Claimed {
                claimed: true,
                id: 4,
                payload: "p".into(),
                lease_token: "l".into(),
                lease_expires_in_seconds: 3,
                attempts: 1,
            }),
            Response::ListLocks(vec![]),
        ];
        for r in cases {
            let text = serde_json::to_string(&r).unwrap();
            assert_eq!(
                serde_json::from_str::<Response>(&text).unwrap(),
                r,
                "{text}"
            );
        }
    }
}
