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

use super::history::HistoryPage;
use super::types::*;
use super::Orphan;
use crate::store::TaskState;

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
    GetTask => "get_task",
    RetryTask => "retry_task",
    ListQueues => "list_queues",
    ListEvents => "list_events",
    GetHistory => "get_history",
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
            ListLocks | GetNote | ListNotes | ListAgents | WaitForEvent | ListTasks | GetTask
            | ListQueues | ListEvents | GetHistory | Status => true,
            LockResource | UnlockResource | RenewLock | LockResources | LeaveLine | SetNote
            | DeleteNote | SetNoteIf | IncrementCounter | RegisterAgent | UnregisterAgent
            | SignalEvent | ClearEvent | PushTask | ClaimNextTask | CompleteTask | FailTask
            | ExtendLease | RetryTask => false,
        }
    }

    /// Calling it twice with the same arguments leaves the state as calling it once (MCP's
    /// `idempotentHint`, for a client deciding whether to retry).
    pub fn idempotent(self) -> bool {
        use Tool::*;
        match self {
            // Reads, and writes whose second call finds the first one's result in place.
            // A second retry_task finds the task pending already and changes nothing.
            RenewLock | ListLocks | SetNote | GetNote | ListNotes | DeleteNote | RegisterAgent
            | UnregisterAgent | ListAgents | WaitForEvent | ClearEvent | ExtendLease
            | ListTasks | GetTask | RetryTask | ListQueues | ListEvents | GetHistory | Status => {
                true
            }
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
            GetNote | ListNotes | ListLocks | ListAgents | WaitForEvent | ListTasks | GetTask
            | ListQueues | ListEvents | GetHistory | Status => true,
            // A lock its agent already holds is granted again with the same token.
            LockResource | LockResources | RenewLock | RegisterAgent | ExtendLease => true,
            // A claim the old coordinator committed but never answered stays leased to the agent
            // until its lease ends; the re-run claims the next task (README: "What is not").
            ClaimNextTask => true,
            // Lines live in the coordinator's memory: a new coordinator has none to leave.
            LeaveLine => true,
            // A late retry could put back a task that died again since.
            SetNote | DeleteNote | SetNoteIf | IncrementCounter | UnlockResource
            | UnregisterAgent | SignalEvent | ClearEvent | PushTask | CompleteTask | FailTask
            | RetryTask => false,
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
            | ExtendLease | ListTasks | GetTask | RetryTask | ListQueues | ListEvents
            | GetHistory | Status => false,
        }
    }
}

mod args;
mod check;

pub use args::*;

// ---------------------------------------------------------------- requests and responses

/// One call, typed. Serialized as `{"tool": <name>, "args": {…}}` (how the cluster forwards
/// it); `args` is absent for tools that take none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "tool", content = "args", rename_all = "snake_case")]
pub enum Request {
    LockResource(LockResource),
    UnlockResource(UnlockResource),
    RenewLock(RenewLock),
    ListLocks(ListPage),
    LockResources(LockResources),
    LeaveLine(LeaveLine),
    SetNote(SetNote),
    GetNote(NoteKey),
    ListNotes(ListNotes),
    DeleteNote(NoteKey),
    SetNoteIf(SetNoteIf),
    IncrementCounter(IncrementCounter),
    RegisterAgent(RegisterAgent),
    UnregisterAgent(AgentId),
    ListAgents(ListPage),
    SignalEvent(EventName),
    WaitForEvent(WaitForEvent),
    ClearEvent(EventName),
    PushTask(PushTask),
    ClaimNextTask(ClaimNextTask),
    CompleteTask(Lease),
    FailTask(FailTask),
    ExtendLease(ExtendLease),
    ListTasks(ListTasks),
    GetTask(TaskId),
    RetryTask(TaskId),
    ListQueues,
    ListEvents,
    GetHistory(GetHistory),
    /// `GET /status`: a page of every section (its cursor is a [`StatusCursor`]).
    Status(ListPage),
}

/// One answer, typed, tagged like its [`Request`]: `{"tool": <name>, "result": {…}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "tool", content = "result", rename_all = "snake_case")]
pub enum Response {
    LockResource(LockOutcome),
    UnlockResource(Released),
    RenewLock(Renewed),
    ListLocks(Listed<LockView>),
    LockResources(LockSetOutcome),
    LeaveLine(LeftLine),
    SetNote(Saved),
    GetNote(GetNoteResult),
    ListNotes(Listed<NoteView>),
    DeleteNote(Deleted),
    SetNoteIf(Swapped),
    IncrementCounter(CounterValue),
    RegisterAgent(Registered),
    UnregisterAgent(Unregistered),
    ListAgents(Listed<AgentView>),
    SignalEvent(Signaled),
    WaitForEvent(EventWaitOutcome),
    ClearEvent(Cleared),
    PushTask(Pushed),
    ClaimNextTask(ClaimOutcome),
    CompleteTask(Completed),
    FailTask(Failed),
    ExtendLease(Extended),
    ListTasks(Listed<TaskView>),
    GetTask(GetTaskResult),
    RetryTask(Retried),
    ListQueues(Vec<QueueView>),
    ListEvents(Vec<EventView>),
    GetHistory(HistoryPage),
    Status(StatusView),
}

impl Request {
    pub fn tool(&self) -> Tool {
        match self {
            Request::LockResource(_) => Tool::LockResource,
            Request::UnlockResource(_) => Tool::UnlockResource,
            Request::RenewLock(_) => Tool::RenewLock,
            Request::ListLocks(_) => Tool::ListLocks,
            Request::LockResources(_) => Tool::LockResources,
            Request::LeaveLine(_) => Tool::LeaveLine,
            Request::SetNote(_) => Tool::SetNote,
            Request::GetNote(_) => Tool::GetNote,
            Request::ListNotes(_) => Tool::ListNotes,
            Request::DeleteNote(_) => Tool::DeleteNote,
            Request::SetNoteIf(_) => Tool::SetNoteIf,
            Request::IncrementCounter(_) => Tool::IncrementCounter,
            Request::RegisterAgent(_) => Tool::RegisterAgent,
            Request::UnregisterAgent(_) => Tool::UnregisterAgent,
            Request::ListAgents(_) => Tool::ListAgents,
            Request::SignalEvent(_) => Tool::SignalEvent,
            Request::WaitForEvent(_) => Tool::WaitForEvent,
            Request::ClearEvent(_) => Tool::ClearEvent,
            Request::PushTask(_) => Tool::PushTask,
            Request::ClaimNextTask(_) => Tool::ClaimNextTask,
            Request::CompleteTask(_) => Tool::CompleteTask,
            Request::FailTask(_) => Tool::FailTask,
            Request::ExtendLease(_) => Tool::ExtendLease,
            Request::ListTasks(_) => Tool::ListTasks,
            Request::GetTask(_) => Tool::GetTask,
            Request::RetryTask(_) => Tool::RetryTask,
            Request::ListQueues => Tool::ListQueues,
            Request::ListEvents => Tool::ListEvents,
            Request::GetHistory(_) => Tool::GetHistory,
            Request::Status(_) => Tool::Status,
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
            Tool::ListQueues => Some(Request::ListQueues),
            Tool::ListEvents => Some(Request::ListEvents),
            _ => None,
        }
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
                    expires_at,
                    ..
                } => Some(Orphan::Holds(vec![(
                    r.name.clone(),
                    lock_token.clone(),
                    *expires_at,
                )])),
                _ => None,
            },
            (Request::LockResources(_), Response::LockResources(o)) => match o {
                LockSetOutcome::Granted {
                    tokens,
                    fresh,
                    expires_at,
                    ..
                } => Some(Orphan::Holds(
                    fresh
                        .iter()
                        .filter_map(|n| tokens.get(n).map(|t| (n.clone(), t.clone(), *expires_at)))
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
                | Request::ListLocks(_)
                | Request::LeaveLine(_)
                | Request::SetNote(_)
                | Request::GetNote(_)
                | Request::ListNotes(_)
                | Request::DeleteNote(_)
                | Request::SetNoteIf(_)
                | Request::IncrementCounter(_)
                | Request::RegisterAgent(_)
                | Request::UnregisterAgent(_)
                | Request::ListAgents(_)
                | Request::SignalEvent(_)
                | Request::WaitForEvent(_)
                | Request::ClearEvent(_)
                | Request::PushTask(_)
                | Request::CompleteTask(_)
                | Request::FailTask(_)
                | Request::ExtendLease(_)
                | Request::ListTasks(_)
                | Request::GetTask(_)
                | Request::RetryTask(_)
                | Request::ListQueues
                | Request::ListEvents
                | Request::GetHistory(_)
                | Request::Status(_),
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
            Response::GetTask(v) => serde_json::to_value(v),
            Response::RetryTask(v) => serde_json::to_value(v),
            Response::ListQueues(v) => serde_json::to_value(v),
            Response::ListEvents(v) => serde_json::to_value(v),
            Response::GetHistory(v) => serde_json::to_value(v),
            Response::Status(v) => serde_json::to_value(v),
        };
        encoded.map_err(|e| CoreError::Storage(format!("encoding the result: {e}")))
    }
}

#[cfg(test)]
mod tests;
