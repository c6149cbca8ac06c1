//! The tool catalogue: every tool's description and arguments, and how its arguments become a
//! typed [`Request`], in one table. Input schemas and the list of accepted arguments are both
//! derived from it, so they agree; names and annotations come from [`Tool`].

use std::sync::Arc;

use rmcp::model::{JsonObject, ToolAnnotations};
use serde_json::{json, Value};

use super::args::Args;
use crate::core::history::{HistoryKind, DEFAULT_HISTORY_ITEMS, MAX_HISTORY_ITEMS};
use crate::core::request::*;
use crate::core::*;

#[derive(Clone, Copy)]
pub enum Kind {
    Str,
    Int,
    Bool,
    StrList,
    /// `lock_resources`' names: strings, or `{name, shared, limit}` objects.
    LockNames,
}

/// A default the schema states (the one `Request::check` fills in).
#[derive(Clone, Copy)]
pub enum DefaultValue {
    None,
    Int(i64),
    Bool(bool),
}

pub struct Param {
    pub name: &'static str,
    pub kind: Kind,
    pub required: bool,
    pub description: &'static str,
    /// Inclusive bounds of an integer, as the checks enforce them (`wait_seconds`' maximum is
    /// its cap).
    pub minimum: Option<i64>,
    pub maximum: Option<i64>,
    pub default: DefaultValue,
    /// The only values a string may take.
    pub choices: &'static [&'static str],
    /// One of the tool's alternatives (the schema's `anyOf`): at least one of them is required.
    pub alternative: bool,
    /// Accepted but not offered in the schema (the deprecated `ttl_minutes`).
    pub hidden: bool,
}

impl Param {
    const fn range(mut self, minimum: i64, maximum: i64) -> Param {
        self.minimum = Some(minimum);
        self.maximum = Some(maximum);
        self
    }

    const fn at_least(mut self, minimum: i64) -> Param {
        self.minimum = Some(minimum);
        self
    }

    const fn default_int(mut self, default: i64) -> Param {
        self.default = DefaultValue::Int(default);
        self
    }

    const fn default_bool(mut self, default: bool) -> Param {
        self.default = DefaultValue::Bool(default);
        self
    }

    const fn one_of(mut self, choices: &'static [&'static str]) -> Param {
        self.choices = choices;
        self
    }

    const fn alternative(mut self) -> Param {
        self.alternative = true;
        self
    }

    const fn hidden(mut self) -> Param {
        self.hidden = true;
        self
    }

    /// The property's JSON schema.
    fn schema(&self) -> Value {
        let mut schema = match self.kind {
            Kind::Str => json!({"type": "string"}),
            Kind::Int => json!({"type": "integer"}),
            Kind::Bool => json!({"type": "boolean"}),
            Kind::StrList => json!({"type": "array", "items": {"type": "string"}}),
            Kind::LockNames => json!({"type": "array", "items": {"anyOf": [
                {"type": "string"},
                {"type": "object", "properties": {
                    "name": {"type": "string"},
                    "shared": {"type": "boolean", "default": false},
                    "limit": {"type": "integer", "minimum": 1, "maximum": MAX_LOCK_LIMIT},
                }, "required": ["name"], "additionalProperties": false},
            ]}}),
        };
        schema["description"] = Value::String(self.description.to_string());
        if let Some(min) = self.minimum {
            schema["minimum"] = json!(min);
        }
        if let Some(max) = self.maximum {
            schema["maximum"] = json!(max);
        }
        match self.default {
            DefaultValue::None => {}
            DefaultValue::Int(d) => schema["default"] = json!(d),
            DefaultValue::Bool(d) => schema["default"] = json!(d),
        }
        if !self.choices.is_empty() {
            schema["enum"] = json!(self.choices);
        }
        schema
    }
}

pub struct ToolSpec {
    pub tool: Tool,
    /// Reads checked arguments into the typed request.
    pub parse: fn(&Args<'_>) -> CoreResult<Request>,
    pub description: &'static str,
    pub params: &'static [Param],
}

impl ToolSpec {
    pub fn name(&self) -> &'static str {
        self.tool.name()
    }

    pub fn arg_names(&self) -> Vec<&'static str> {
        self.params.iter().map(|p| p.name).collect()
    }

    pub fn to_tool(&self) -> rmcp::model::Tool {
        let mut props = serde_json::Map::new();
        let mut required = Vec::new();
        let mut alternatives = Vec::new();
        for p in self.params.iter().filter(|p| !p.hidden) {
            props.insert(p.name.to_string(), p.schema());
            if p.required {
                required.push(Value::String(p.name.to_string()));
            }
            if p.alternative {
                alternatives.push(json!({"required": [p.name]}));
            }
        }
        let mut schema = JsonObject::new();
        schema.insert("type".into(), json!("object"));
        schema.insert("properties".into(), Value::Object(props));
        if !required.is_empty() {
            schema.insert("required".into(), Value::Array(required));
        }
        if !alternatives.is_empty() {
            schema.insert("anyOf".into(), Value::Array(alternatives));
        }
        let mut ann = ToolAnnotations::new()
            .read_only(self.tool.read_only())
            .open_world(false);
        if self.tool.idempotent() {
            ann = ann.idempotent(true);
        }
        if !self.tool.read_only() {
            ann = ann.destructive(false);
        }
        rmcp::model::Tool::new(self.name(), self.description, Arc::new(schema))
            .with_annotations(ann)
    }
}

const fn req(name: &'static str, kind: Kind, description: &'static str) -> Param {
    Param {
        name,
        kind,
        required: true,
        description,
        minimum: None,
        maximum: None,
        default: DefaultValue::None,
        choices: &[],
        alternative: false,
        hidden: false,
    }
}

const fn opt(name: &'static str, kind: Kind, description: &'static str) -> Param {
    Param {
        required: false,
        ..req(name, kind, description)
    }
}

use Kind::*;

const TTL: (i64, i64) = (MIN_TTL_SECONDS, MAX_TTL_SECONDS);
const WAIT: (i64, i64) = (0, MAX_WAIT_SECONDS);

const TTL_SECONDS_LOCK: Param = opt(
    "ttl_seconds",
    Int,
    "How long the lock lasts unless renewed, in seconds (1 to 2592000). Default 900.",
)
.range(TTL.0, TTL.1)
.default_int(DEFAULT_LOCK_TTL_SECONDS);
const LIMIT: Param = opt(
    "limit",
    Int,
    "Most items to answer (1 to 10000). Given (or with cursor), the answer is {items, next_cursor}.",
)
.range(1, 10_000);
const CURSOR: Param = opt(
    "cursor",
    Str,
    "next_cursor from the previous answer: the page after it.",
);
/// Still accepted (folded into ttl_seconds), no longer offered.
const TTL_MINUTES: Param = opt(
    "ttl_minutes",
    Int,
    "Deprecated alias of ttl_seconds, in minutes. Do not give both.",
)
.hidden();
const AGENT_ID: Param = req(
    "agent_id",
    Str,
    "Your own stable identity, unique to you (e.g. claude:<session id>, as airlock's Claude Code \
     hooks give it); never a name another agent might also use. Locks and leases are held by it.",
);

pub static TOOLS: &[ToolSpec] = &[
    // ---------------------------------------------------------------- locks
    ToolSpec {
        tool: Tool::LockResource,
        parse: |a| Ok(Request::LockResource(LockResource {
            name: a.str("name")?,
            agent_id: a.str("agent_id")?,
            ttl_seconds: a.ttl_seconds()?,
            wait_seconds: a.opt_i64("wait_seconds")?,
            wake_token: a.opt_str("wake_token")?,
            shared: a.opt_bool("shared")?,
            limit: a.opt_i64("limit")?,
        })),
        description: "Take a named lock (e.g. file:/abs/path or npm-install). With wait_seconds > 0 \
            (up to 50) the call BLOCKS in the daemon until the lock frees, then returns \
            {locked:true, lock_token, expires_in_seconds, fence}; do not write retry loops. If the \
            wait ends first you get {locked:false, held_by, wake_token, queue_position, retry_with}: \
            call again with exactly retry_with (within 10 s) to keep your place in line. Keep the \
            lock_token to unlock or renew. Re-calling while you hold the lock returns the same token. \
            shared:true holds it together with other shared holders (never with an exclusive one; \
            a waiting exclusive caller goes first); limit:N makes it a semaphore of at most N holders, \
            and every caller of the name must give the same limit.",
        params: &[
            req("name", Str, "The lock's name, 1-512 bytes, no control characters."),
            AGENT_ID,
            TTL_SECONDS_LOCK,
            TTL_MINUTES,
            opt("wait_seconds", Int, "Seconds to block waiting for the lock (0 = try once). Capped at 50. Default 0.").range(WAIT.0, WAIT.1).default_int(0),
            opt("wake_token", Str, "The wake_token from an earlier locked:false answer, to keep your place in line."),
            opt("shared", Bool, "Hold it shared (a reader): together with other shared holders, never with an exclusive one. Default false.").default_bool(false),
            opt("limit", Int, "A counting semaphore: at most this many holders at once (1 to 1000; shared implied). Every caller must give the same limit while the name is held or awaited.").range(1, MAX_LOCK_LIMIT),
        ],
    },
    ToolSpec {
        tool: Tool::UnlockResource,
        parse: |a| Ok(Request::UnlockResource(UnlockResource {
            name: a.str("name")?,
            holder: holder(a)?,
        })),
        description: "Release a lock you hold. Pass the lock_token from lock_resource (preferred); \
            agent_id is accepted for v1 compatibility but is weaker (anyone who knows your agent id \
            can release). Returns {released:true}, or {released:false, error} if you do not hold it. \
            The next waiter is granted at once.",
        params: &[
            req("name", Str, "The lock's name."),
            opt("lock_token", Str, "The lock_token from lock_resource.").alternative(),
            opt("agent_id", Str, "v1 compatibility: release by holder identity instead of token.").alternative(),
        ],
    },
    ToolSpec {
        tool: Tool::RenewLock,
        parse: |a| Ok(Request::RenewLock(RenewLock {
            name: a.str("name")?,
            holder: holder(a)?,
            ttl_seconds: a.ttl_seconds()?,
        })),
        description: "Extend a lock you hold so it does not expire during long work. Returns \
            {renewed:true, expires_in_seconds, fence} or {renewed:false, error}.",
        params: &[
            req("name", Str, "The lock's name."),
            opt("lock_token", Str, "The lock_token from lock_resource (preferred).").alternative(),
            opt("agent_id", Str, "v1 compatibility: renew by holder identity instead of token.").alternative(),
            TTL_SECONDS_LOCK,
            TTL_MINUTES,
        ],
    },
    ToolSpec {
        tool: Tool::ListLocks,
        parse: |a| Ok(Request::ListLocks(list_page(a)?)),
        description: "List held locks, one entry per holder, and free locks reserved for the \
            head of their line: [{name, agent_id, expires_in_seconds, fence, waiters, mode, \
            limit?, holders, line:[{agent_id, position, waiting_seconds, state, seconds_left}]}] \
            (mode exclusive or shared; limit for a semaphore). A reserved free lock has agent_id \
            null, holders 0, reserved_for and reserved_for_seconds. state is parked (a call waits \
            now) or grace (a place kept for a caller coming back with its wake_token). Pages: \
            with limit or cursor, {items, next_cursor}; a page counts lock names and holds every \
            holder of each.",
        params: &[LIMIT, CURSOR],
    },
    ToolSpec {
        tool: Tool::LeaveLine,
        parse: |a| Ok(Request::LeaveLine(LeaveLine {
            name: a.str("name")?,
            wake_token: a.str("wake_token")?,
        })),
        description: "Give up your place in a lock's line when you will not call lock_resource \
            again: pass the wake_token of your locked:false answer. Without it the place (and, at \
            the head of the line, a reservation of the freed lock) is kept for 10 s, making the \
            next waiter wait. Returns {left:true}, or {left:false, error} if no place is kept \
            for that token.",
        params: &[
            req("name", Str, "The lock's name."),
            req("wake_token", Str, "The wake_token from your locked:false answer."),
        ],
    },
    ToolSpec {
        tool: Tool::LockResources,
        parse: |a| Ok(Request::LockResources(LockResources {
            names: a.lock_names("names")?,
            agent_id: a.str("agent_id")?,
            ttl_seconds: a.ttl_seconds()?,
            wait_seconds: a.opt_i64("wait_seconds")?,
        })),
        description: "Take several locks all-or-nothing (acquired in lexicographic order, so two \
            callers cannot deadlock). Returns {locked:true, tokens:{name:token}, fences, \
            expires_in_seconds} or {locked:false, held_by, contended}. With wait_seconds > 0 \
            (up to 50) it blocks until the whole set can be granted at once.",
        params: &[
            req("names", LockNames, "The lock names (1 to 64, distinct): each a string (exclusive) or {name, shared?, limit?} to take that name shared or as a semaphore."),
            AGENT_ID,
            TTL_SECONDS_LOCK,
            TTL_MINUTES,
            opt("wait_seconds", Int, "Seconds to block waiting for the whole set. Capped at 50. Default 0.").range(WAIT.0, WAIT.1).default_int(0),
        ],
    },
    // ---------------------------------------------------------------- notes and counters
    ToolSpec {
        tool: Tool::SetNote,
        parse: |a| Ok(Request::SetNote(SetNote {
            key: a.str("key")?,
            value: a.str("value")?,
            author: a.opt_str("author")?,
            ttl_seconds: a.ttl_seconds()?,
        })),
        description: "Store a shared note (key → value) that every agent can read. Optional \
            ttl_seconds makes it expire. Returns {saved:true}.",
        params: &[
            req("key", Str, "The note's key, 1-512 bytes."),
            req("value", Str, "The value, up to 256 KiB."),
            opt("author", Str, "Who wrote it."),
            opt("ttl_seconds", Int, "Seconds until the note expires (1 to 2592000). Default: never.").range(TTL.0, TTL.1),
            TTL_MINUTES,
        ],
    },
    ToolSpec {
        tool: Tool::GetNote,
        parse: |a| Ok(Request::GetNote(NoteKey { key: a.str("key")? })),
        description: "Read a shared note. Returns {key, value, author?, expires_in_seconds?} or {found:false}.",
        params: &[req("key", Str, "The note's key.")],
    },
    ToolSpec {
        tool: Tool::ListNotes,
        parse: |a| {
            Ok(Request::ListNotes(ListNotes {
                page: list_page(a)?,
                values: a.opt_bool("values")?,
            }))
        },
        description: "List every live note: [{key, value, author?, expires_in_seconds?}]. \
            Pages: with limit or cursor, {items, next_cursor}; values:false leaves values out.",
        params: &[
            LIMIT,
            CURSOR,
            opt("values", Bool, "Include each note's value (default true)."),
        ],
    },
    ToolSpec {
        tool: Tool::DeleteNote,
        parse: |a| Ok(Request::DeleteNote(NoteKey { key: a.str("key")? })),
        description: "Delete a note. Returns {deleted:true} if it existed.",
        params: &[req("key", Str, "The note's key.")],
    },
    ToolSpec {
        tool: Tool::SetNoteIf,
        parse: |a| Ok(Request::SetNoteIf(SetNoteIf {
            key: a.str("key")?,
            expected_value: a.str("expected_value")?,
            new_value: a.str("new_value")?,
            author: a.opt_str("author")?,
            ttl_seconds: a.ttl_seconds()?,
        })),
        description: "Compare-and-swap a note: sets new_value only if the current value equals \
            expected_value (an absent or expired note counts as \"\"). Returns {swapped:bool}. \
            Use it for race-free read-modify-write.",
        params: &[
            req("key", Str, "The note's key."),
            req("expected_value", Str, "The value you expect it to hold now (\"\" for absent)."),
            req("new_value", Str, "The value to store if it does."),
            opt("author", Str, "Who wrote it."),
            opt("ttl_seconds", Int, "Seconds until the note expires. Default: never.").range(TTL.0, TTL.1),
            TTL_MINUTES,
        ],
    },
    ToolSpec {
        tool: Tool::IncrementCounter,
        parse: |a| Ok(Request::IncrementCounter(IncrementCounter {
            name: a.str("name")?,
            by: a.opt_i64("by")?,
        })),
        description: "Atomically add to a named counter and return the new value {value}; no two \
            callers ever get the same value. Use it for unique numbers (migration ids, ports).",
        params: &[
            req("name", Str, "The counter's name."),
            opt("by", Int, "How much to add (may be negative). Default 1.").default_int(1),
        ],
    },
    // ---------------------------------------------------------------- presence
    ToolSpec {
        tool: Tool::RegisterAgent,
        parse: |a| Ok(Request::RegisterAgent(RegisterAgent {
            agent_id: a.str("agent_id")?,
            ttl_seconds: a.ttl_seconds()?,
        })),
        description: "Announce you are present for ttl_seconds; calling again extends it. Do not \
            try to heartbeat every minute (one long turn outlives that): register once with \
            ttl_seconds longer than your longest pause (e.g. 3600) and call unregister_agent when \
            you finish. airlock's Claude Code hooks and `airlock mcp` keep presence for you. \
            When it lapses, every lock you hold is released and every task \
            lease you hold is requeued. Returns {registered:true, expires_in_seconds}.",
        params: &[
            AGENT_ID,
            opt("ttl_seconds", Int, "Seconds until your presence lapses (1 to 2592000). Default 60.").range(TTL.0, TTL.1).default_int(DEFAULT_AGENT_TTL_SECONDS),
            TTL_MINUTES,
        ],
    },
    ToolSpec {
        tool: Tool::UnregisterAgent,
        parse: |a| Ok(Request::UnregisterAgent(AgentId { agent_id: a.str("agent_id")? })),
        description: "Leave now: releases every lock you hold and requeues your task leases. \
            Returns {unregistered:true}.",
        params: &[AGENT_ID],
    },
    ToolSpec {
        tool: Tool::ListAgents,
        parse: |a| Ok(Request::ListAgents(list_page(a)?)),
        description: "List live agents: [{agent_id, expires_in_seconds, locks_held, leases_held}]. \
            Pages: with limit or cursor, {items, next_cursor}.",
        params: &[LIMIT, CURSOR],
    },
    // ---------------------------------------------------------------- events
    ToolSpec {
        tool: Tool::SignalEvent,
        parse: |a| Ok(Request::SignalEvent(EventName { name: a.str("name")? })),
        description: "Signal a named event: bumps its generation and wakes every waiter. Returns {generation}.",
        params: &[req("name", Str, "The event's name.")],
    },
    ToolSpec {
        tool: Tool::WaitForEvent,
        parse: |a| Ok(Request::WaitForEvent(WaitForEvent {
            name: a.str("name")?,
            last_seen_generation: a.opt_i64("last_seen_generation")?,
            wait_seconds: a.opt_i64("wait_seconds")?,
        })),
        description: "Block until the event's generation passes last_seen_generation, or the wait \
            ends. Returns {generation, fired}. Pass back the generation you last saw and no signal \
            is ever missed, even one made between your calls.",
        params: &[
            req("name", Str, "The event's name."),
            opt("last_seen_generation", Int, "The generation you last saw. Default 0.").at_least(0).default_int(0),
            opt("wait_seconds", Int, "Seconds to block. Capped at 50. Default 25.").range(WAIT.0, WAIT.1).default_int(DEFAULT_EVENT_WAIT_SECONDS),
        ],
    },
    ToolSpec {
        tool: Tool::ClearEvent,
        parse: |a| Ok(Request::ClearEvent(EventName { name: a.str("name")? })),
        description: "Clear an event: later waits fire only on signals after this. The generation \
            number is kept (never reset), so older waiters still wake on the next signal. \
            Returns {cleared:true}.",
        params: &[req("name", Str, "The event's name.")],
    },
    ToolSpec {
        tool: Tool::ListEvents,
        parse: |_| Ok(Request::ListEvents),
        description: "Every event signalled or cleared so far: [{name, generation, \
            cleared_at_generation, waiters}].",
        params: &[],
    },
    // ---------------------------------------------------------------- tasks
    ToolSpec {
        tool: Tool::PushTask,
        parse: |a| Ok(Request::PushTask(PushTask {
            queue: a.str("queue")?,
            payload: a.str("payload")?,
            author: a.opt_str("author")?,
            priority: a.opt_i64("priority")?,
            delay_seconds: a.opt_i64("delay_seconds")?,
            max_attempts: a.opt_i64("max_attempts")?,
            unique_key: a.opt_str("unique_key")?,
        })),
        description: "Add a task to a queue. Higher priority is claimed first, then older. Returns {id}. \
            delay_seconds holds it back (claimers parked on the queue get it the moment it is ready). \
            max_attempts: after that many failures or lapsed leases it goes to state dead (kept, not \
            retried; retry_task puts it back). unique_key: while a task with that key is pending or \
            claimed in the queue, pushing again adds nothing and returns {id: <that task>, duplicate:true}.",
        params: &[
            req("queue", Str, "The queue's name."),
            req("payload", Str, "The task, up to 256 KiB (JSON text is fine)."),
            opt("author", Str, "Who pushed it."),
            opt("priority", Int, "Higher first. Default 0.").default_int(0),
            opt("delay_seconds", Int, "Not claimable until this many seconds from now (0 to 2592000). Default 0.").range(0, MAX_DELAY_SECONDS).default_int(0),
            opt("max_attempts", Int, "Failures or lapsed leases before the task is dead (1 to 1000). Default: no limit.").range(1, MAX_ATTEMPTS_LIMIT),
            opt("unique_key", Str, "At most one pending or claimed task of the queue has this key (1-512 bytes)."),
        ],
    },
    ToolSpec {
        tool: Tool::ClaimNextTask,
        parse: |a| Ok(Request::ClaimNextTask(ClaimNextTask {
            queue: a.str("queue")?,
            agent_id: a.str("agent_id")?,
            lease_seconds: a.opt_i64("lease_seconds")?,
            wait_seconds: a.opt_i64("wait_seconds")?,
        })),
        description: "Claim the next task of a queue under a lease. Returns {claimed:true, id, \
            payload, lease_token, lease_expires_in_seconds, attempts} or {claimed:false}. Finish \
            with complete_task or fail_task using the lease_token before the lease ends, or the \
            task returns to the queue. With wait_seconds > 0 (up to 50) it blocks until a task arrives.",
        params: &[
            req("queue", Str, "The queue's name."),
            AGENT_ID,
            opt("lease_seconds", Int, "Seconds you have to finish (1 to 2592000). Default 120.").range(TTL.0, TTL.1).default_int(DEFAULT_LEASE_SECONDS),
            opt("wait_seconds", Int, "Seconds to block for a task if none is pending. Capped at 50. Default 0.").range(WAIT.0, WAIT.1).default_int(0),
        ],
    },
    ToolSpec {
        tool: Tool::CompleteTask,
        parse: |a| Ok(Request::CompleteTask(Lease {
            id: a.i64("id")?,
            lease_token: a.str("lease_token")?,
            result: a.opt_str("result")?,
        })),
        description: "Mark a claimed task done. Requires the lease_token of the current claim. \
            Returns {completed:true} or {completed:false, error}. get_task shows the result.",
        params: &[
            req("id", Int, "The task id."),
            req("lease_token", Str, "The lease_token from claim_next_task."),
            opt("result", Str, "What the task produced, up to 256 KiB."),
        ],
    },
    ToolSpec {
        tool: Tool::FailTask,
        parse: |a| Ok(Request::FailTask(FailTask {
            id: a.i64("id")?,
            lease_token: a.str("lease_token")?,
            requeue: a.opt_bool("requeue")?,
            error: a.opt_str("error")?,
        })),
        description: "Give up on a claimed task: requeue=true (default) returns it to pending for \
            another try (or to dead, if it has used up its max_attempts); requeue=false fails it for \
            good. Returns {failed:true} or {failed:false, error}.",
        params: &[
            req("id", Int, "The task id."),
            req("lease_token", Str, "The lease_token from claim_next_task."),
            opt("requeue", Bool, "Return it to the queue (true, default) or fail it for good (false).").default_bool(true),
            opt("error", Str, "Why it failed, up to 256 KiB; get_task and list_tasks show it as last_error."),
        ],
    },
    ToolSpec {
        tool: Tool::ExtendLease,
        parse: |a| Ok(Request::ExtendLease(ExtendLease {
            id: a.i64("id")?,
            lease_token: a.str("lease_token")?,
            lease_seconds: a.opt_i64("lease_seconds")?,
        })),
        description: "Extend the lease on a task you claimed, for long work. Returns \
            {extended:true, lease_expires_in_seconds} or {extended:false, error}.",
        params: &[
            req("id", Int, "The task id."),
            req("lease_token", Str, "The lease_token from claim_next_task."),
            opt("lease_seconds", Int, "New lease length from now, in seconds. Default 120.").range(TTL.0, TTL.1).default_int(DEFAULT_LEASE_SECONDS),
        ],
    },
    ToolSpec {
        tool: Tool::ListTasks,
        parse: |a| Ok(Request::ListTasks(ListTasks {
            queue: Some(a.str("queue")?),
            state: a.opt_str("state")?,
            page: list_page(a)?,
        })),
        description: "List a queue's tasks: [{id, queue, payload, priority, state, author?, \
            attempts, lease_agent?, lease_expires_in_seconds?, ready_in_seconds?, max_attempts?, \
            unique_key?, last_error?, result?}]. States: pending, claimed, completed, failed, dead. \
            Completed and failed tasks are kept 24 hours; dead ones until retried. Pages: with \
            limit or cursor, {items, next_cursor}.",
        params: &[
            req("queue", Str, "The queue's name."),
            opt("state", Str, "Only tasks in this state: pending, claimed, completed, failed or dead.").one_of(&["pending", "claimed", "completed", "failed", "dead"]),
            LIMIT,
            CURSOR,
        ],
    },
    ToolSpec {
        tool: Tool::GetTask,
        parse: |a| Ok(Request::GetTask(TaskId { id: a.i64("id")? })),
        description: "One task by id: {found:true, id, queue, payload, priority, state, attempts, \
            last_error?, result?, ...} (the fields of list_tasks) or {found:false}.",
        params: &[req("id", Int, "The task id.")],
    },
    ToolSpec {
        tool: Tool::RetryTask,
        parse: |a| Ok(Request::RetryTask(TaskId { id: a.i64("id")? })),
        description: "Put a dead (or failed) task back to pending with its attempts at 0; its \
            last_error is kept. Returns {retried:true} or {retried:false, error}.",
        params: &[req("id", Int, "The task id.")],
    },
    ToolSpec {
        tool: Tool::ListQueues,
        parse: |_| Ok(Request::ListQueues),
        description: "Every queue with tasks or parked claimers: [{queue, pending, claimed, \
            completed, failed, dead, waiting_claimers}].",
        params: &[],
    },
    ToolSpec {
        tool: Tool::GetHistory,
        parse: |a| Ok(Request::GetHistory(GetHistory {
            name: a.opt_str("name")?,
            agent_id: a.opt_str("agent_id")?,
            kind: a.opt_str("kind")?,
            since: a.opt_str("since")?,
            limit: a.opt_i64("limit")?,
            cursor: a.opt_str("cursor")?,
        })),
        description: "Who took, held and gave back what, and when: the audit history, newest \
            first, as {items:[{id, at, kind, name, agent_id?, fence?, task_id?, generation?, \
            reason?, error?}], next_cursor}. Kinds: grant, renew, release (reason: unlock, ttl, \
            presence_lapse, shutdown, orphan) for locks; push, claim, extend, complete, fail, \
            requeue, dead, retry for tasks (name is the queue); signal, clear for events. \
            Kept 7 days, at most 100,000 entries, unless the daemon is set otherwise. A \
            filtered page may hold fewer than limit entries, even none, with a next_cursor: \
            follow next_cursor until it is null.",
        params: &[
            opt("name", Str, "Only entries of this lock, queue or event."),
            opt("agent_id", Str, "Only entries of this agent."),
            opt("kind", Str, "Only entries of this kind.").one_of(HistoryKind::NAMES),
            opt("since", Str, "Only entries from this time on: RFC 3339 (2026-12-07T02:00:00Z) or a span back from now (90s, 10m, 2h, 7d)."),
            opt("limit", Int, "Most entries to answer.").range(1, MAX_HISTORY_ITEMS as i64).default_int(DEFAULT_HISTORY_ITEMS as i64),
            CURSOR,
        ],
    },
];

pub fn find(name: &str) -> Option<&'static ToolSpec> {
    TOOLS.iter().find(|t| t.name() == name)
}

/// The page a list call asks for (`limit`, `cursor`).
fn list_page(a: &Args<'_>) -> CoreResult<ListPage> {
    Ok(ListPage {
        limit: a.opt_i64("limit")?,
        cursor: a.opt_str("cursor")?,
    })
}

/// `lock_token` (preferred) or `agent_id` (v1): exactly one of them.
fn holder(a: &Args<'_>) -> CoreResult<Holder> {
    let holder = Holder {
        lock_token: a.opt_str("lock_token")?,
        agent_id: a.opt_str("agent_id")?,
    };
    holder.proof()?;
    Ok(holder)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_contract_tool_is_listed_once() {
        let contract = [
            "lock_resource",
            "unlock_resource",
            "renew_lock",
            "list_locks",
            "lock_resources",
            "set_note",
            "get_note",
            "list_notes",
            "delete_note",
            "set_note_if",
            "increment_counter",
            "register_agent",
            "unregister_agent",
            "list_agents",
            "signal_event",
            "wait_for_event",
            "clear_event",
            "push_task",
            "claim_next_task",
            "complete_task",
            "fail_task",
            "list_tasks",
        ];
        for name in contract {
            assert_eq!(
                TOOLS.iter().filter(|t| t.name() == name).count(),
                1,
                "{name}"
            );
        }
        assert_eq!(
            TOOLS.len(),
            contract.len() + 7,
            "22 contract tools + extend_lease, get_task, retry_task, list_queues, list_events, \
             leave_line, get_history"
        );
        // Every tool offered over MCP has exactly one entry, and each entry parses into its tool.
        for t in Tool::ALL.iter().filter(|t| t.is_mcp_tool()) {
            assert_eq!(TOOLS.iter().filter(|s| s.tool == *t).count(), 1, "{t:?}");
        }
        for spec in TOOLS {
            let mut args = serde_json::Map::new();
            for p in spec.params.iter().filter(|p| p.name != "ttl_minutes") {
                let v = match p.kind {
                    Kind::Str => json!("x"),
                    Kind::Int => json!(1),
                    Kind::Bool => json!(true),
                    Kind::StrList => json!(["x"]),
                    Kind::LockNames => json!(["x"]),
                };
                args.insert(p.name.to_string(), v);
            }
            let a = Args::new(&args, &spec.arg_names()).unwrap();
            // Every param is in the schema except the hidden (deprecated) ones.
            let schema = spec.to_tool().input_schema;
            for p in spec.params {
                assert_eq!(
                    schema["properties"].get(p.name).is_some(),
                    !p.hidden,
                    "{} {}",
                    spec.name(),
                    p.name
                );
            }
            let request = (spec.parse)(&a).unwrap();
            assert_eq!(request.tool(), spec.tool, "{}", spec.name());
            // What the MCP client sent is what the typed request carries (and forwards).
            assert_eq!(request.arguments(), args, "{}", spec.name());
        }
    }
}
