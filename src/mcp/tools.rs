//! The tool catalogue: every tool's name, description, arguments and annotations, in one table.
//! Input schemas and the list of accepted arguments are both derived from it, so they agree.

use std::sync::Arc;

use rmcp::model::{JsonObject, Tool, ToolAnnotations};
use serde_json::{json, Value};

#[derive(Clone, Copy)]
pub enum Kind {
    Str,
    Int,
    Bool,
    StrList,
}

pub struct Param {
    pub name: &'static str,
    pub kind: Kind,
    pub required: bool,
    pub description: &'static str,
}

pub struct ToolSpec {
    pub name: &'static str,
    pub description: &'static str,
    pub params: &'static [Param],
    pub read_only: bool,
    pub idempotent: bool,
}

impl ToolSpec {
    pub fn arg_names(&self) -> Vec<&'static str> {
        self.params.iter().map(|p| p.name).collect()
    }

    pub fn to_tool(&self) -> Tool {
        let mut props = serde_json::Map::new();
        let mut required = Vec::new();
        for p in self.params {
            let mut schema = match p.kind {
                Kind::Str => json!({"type": "string"}),
                Kind::Int => json!({"type": "integer"}),
                Kind::Bool => json!({"type": "boolean"}),
                Kind::StrList => json!({"type": "array", "items": {"type": "string"}}),
            };
            schema["description"] = Value::String(p.description.to_string());
            props.insert(p.name.to_string(), schema);
            if p.required {
                required.push(Value::String(p.name.to_string()));
            }
        }
        let mut schema = JsonObject::new();
        schema.insert("type".into(), json!("object"));
        schema.insert("properties".into(), Value::Object(props));
        if !required.is_empty() {
            schema.insert("required".into(), Value::Array(required));
        }
        let mut ann = ToolAnnotations::new()
            .read_only(self.read_only)
            .open_world(false);
        if self.idempotent {
            ann = ann.idempotent(true);
        }
        if !self.read_only {
            ann = ann.destructive(false);
        }
        Tool::new(self.name, self.description, Arc::new(schema)).with_annotations(ann)
    }
}

const fn req(name: &'static str, kind: Kind, description: &'static str) -> Param {
    Param {
        name,
        kind,
        required: true,
        description,
    }
}

const fn opt(name: &'static str, kind: Kind, description: &'static str) -> Param {
    Param {
        name,
        kind,
        required: false,
        description,
    }
}

use Kind::*;

const TTL_SECONDS_LOCK: Param = opt(
    "ttl_seconds",
    Int,
    "How long the lock lasts unless renewed, in seconds (1 to 2592000). Default 900.",
);
const LIMIT: Param = opt(
    "limit",
    Int,
    "Most items to answer (1 to 10000). Given (or with cursor), the answer is {items, next_cursor}.",
);
const CURSOR: Param = opt(
    "cursor",
    Str,
    "next_cursor from the previous answer: the page after it.",
);
const TTL_MINUTES: Param = opt(
    "ttl_minutes",
    Int,
    "Deprecated alias of ttl_seconds, in minutes. Do not give both.",
);
const AGENT_ID: Param = req(
    "agent_id",
    Str,
    "Your stable identity, e.g. agent:claude-session-abc. Locks and leases are held by it.",
);

pub static TOOLS: &[ToolSpec] = &[
    // ---------------------------------------------------------------- locks
    ToolSpec {
        name: "lock_resource",
        description: "Take a named lock (e.g. file:/abs/path or npm-install). With wait_seconds > 0 \
            (up to 50) the call BLOCKS in the daemon until the lock frees, then returns \
            {locked:true, lock_token, expires_in_seconds, fence}; do not write retry loops. If the \
            wait ends first you get {locked:false, held_by, wake_token, queue_position, retry_with}: \
            call again with exactly retry_with (within 10 s) to keep your place in line. Keep the \
            lock_token to unlock or renew. Re-calling while you hold the lock returns the same token.",
        params: &[
            req("name", Str, "The lock's name, 1-512 bytes, no control characters."),
            AGENT_ID,
            TTL_SECONDS_LOCK,
            TTL_MINUTES,
            opt("wait_seconds", Int, "Seconds to block waiting for the lock (0 = try once). Capped at 50. Default 0."),
            opt("wake_token", Str, "The wake_token from an earlier locked:false answer, to keep your place in line."),
        ],
        read_only: false,
        idempotent: false,
    },
    ToolSpec {
        name: "unlock_resource",
        description: "Release a lock you hold. Pass the lock_token from lock_resource (preferred); \
            agent_id is accepted for v1 compatibility but is weaker (anyone who knows your agent id \
            can release). Returns {released:true}, or {released:false, error} if you do not hold it. \
            The next waiter is granted at once.",
        params: &[
            req("name", Str, "The lock's name."),
            opt("lock_token", Str, "The lock_token from lock_resource."),
            opt("agent_id", Str, "v1 compatibility: release by holder identity instead of token."),
        ],
        read_only: false,
        idempotent: false,
    },
    ToolSpec {
        name: "renew_lock",
        description: "Extend a lock you hold so it does not expire during long work. Returns \
            {renewed:true, expires_in_seconds, fence} or {renewed:false, error}.",
        params: &[
            req("name", Str, "The lock's name."),
            opt("lock_token", Str, "The lock_token from lock_resource (preferred)."),
            opt("agent_id", Str, "v1 compatibility: renew by holder identity instead of token."),
            TTL_SECONDS_LOCK,
            TTL_MINUTES,
        ],
        read_only: false,
        idempotent: true,
    },
    ToolSpec {
        name: "list_locks",
        description: "List held locks: [{name, agent_id, expires_in_seconds, fence, waiters}]. \
            Pages: with limit or cursor, {items, next_cursor}.",
        params: &[LIMIT, CURSOR],
        read_only: true,
        idempotent: true,
    },
    ToolSpec {
        name: "lock_resources",
        description: "Take several locks all-or-nothing (acquired in lexicographic order, so two \
            callers cannot deadlock). Returns {locked:true, tokens:{name:token}, fences, \
            expires_in_seconds} or {locked:false, held_by, contended}. With wait_seconds > 0 \
            (up to 50) it blocks until the whole set can be granted at once.",
        params: &[
            req("names", StrList, "The lock names (1 to 64, distinct)."),
            AGENT_ID,
            TTL_SECONDS_LOCK,
            TTL_MINUTES,
            opt("wait_seconds", Int, "Seconds to block waiting for the whole set. Capped at 50. Default 0."),
        ],
        read_only: false,
        idempotent: false,
    },
    // ---------------------------------------------------------------- notes and counters
    ToolSpec {
        name: "set_note",
        description: "Store a shared note (key → value) that every agent can read. Optional \
            ttl_seconds makes it expire. Returns {saved:true}.",
        params: &[
            req("key", Str, "The note's key, 1-512 bytes."),
            req("value", Str, "The value, up to 256 KiB."),
            opt("author", Str, "Who wrote it."),
            opt("ttl_seconds", Int, "Seconds until the note expires (1 to 2592000). Default: never."),
            TTL_MINUTES,
        ],
        read_only: false,
        idempotent: true,
    },
    ToolSpec {
        name: "get_note",
        description: "Read a shared note. Returns {key, value, author?, expires_in_seconds?} or {found:false}.",
        params: &[req("key", Str, "The note's key.")],
        read_only: true,
        idempotent: true,
    },
    ToolSpec {
        name: "list_notes",
        description: "List every live note: [{key, value, author?, expires_in_seconds?}]. \
            Pages: with limit or cursor, {items, next_cursor}; values:false leaves values out.",
        params: &[
            LIMIT,
            CURSOR,
            opt("values", Bool, "Include each note's value (default true)."),
        ],
        read_only: true,
        idempotent: true,
    },
    ToolSpec {
        name: "delete_note",
        description: "Delete a note. Returns {deleted:true} if it existed.",
        params: &[req("key", Str, "The note's key.")],
        read_only: false,
        idempotent: true,
    },
    ToolSpec {
        name: "set_note_if",
        description: "Compare-and-swap a note: sets new_value only if the current value equals \
            expected_value (an absent or expired note counts as \"\"). Returns {swapped:bool}. \
            Use it for race-free read-modify-write.",
        params: &[
            req("key", Str, "The note's key."),
            req("expected_value", Str, "The value you expect it to hold now (\"\" for absent)."),
            req("new_value", Str, "The value to store if it does."),
            opt("author", Str, "Who wrote it."),
            opt("ttl_seconds", Int, "Seconds until the note expires. Default: never."),
            TTL_MINUTES,
        ],
        read_only: false,
        idempotent: false,
    },
    ToolSpec {
        name: "increment_counter",
        description: "Atomically add to a named counter and return the new value {value}; no two \
            callers ever get the same value. Use it for unique numbers (migration ids, ports).",
        params: &[
            req("name", Str, "The counter's name."),
            opt("by", Int, "How much to add (may be negative). Default 1."),
        ],
        read_only: false,
        idempotent: false,
    },
    // ---------------------------------------------------------------- presence
    ToolSpec {
        name: "register_agent",
        description: "Announce you are alive (a heartbeat); call again before ttl_seconds passes. \
            If you stop, your presence lapses and every lock you hold is released and every task \
            lease you hold is requeued. Returns {registered:true, expires_in_seconds}.",
        params: &[
            AGENT_ID,
            opt("ttl_seconds", Int, "Seconds until your presence lapses (1 to 2592000). Default 60."),
            TTL_MINUTES,
        ],
        read_only: false,
        idempotent: true,
    },
    ToolSpec {
        name: "unregister_agent",
        description: "Leave now: releases every lock you hold and requeues your task leases. \
            Returns {unregistered:true}.",
        params: &[AGENT_ID],
        read_only: false,
        idempotent: true,
    },
    ToolSpec {
        name: "list_agents",
        description: "List live agents: [{agent_id, expires_in_seconds, locks_held, leases_held}]. \
            Pages: with limit or cursor, {items, next_cursor}.",
        params: &[LIMIT, CURSOR],
        read_only: true,
        idempotent: true,
    },
    // ---------------------------------------------------------------- events
    ToolSpec {
        name: "signal_event",
        description: "Signal a named event: bumps its generation and wakes every waiter. Returns {generation}.",
        params: &[req("name", Str, "The event's name.")],
        read_only: false,
        idempotent: false,
    },
    ToolSpec {
        name: "wait_for_event",
        description: "Block until the event's generation passes last_seen_generation, or the wait \
            ends. Returns {generation, fired}. Pass back the generation you last saw and no signal \
            is ever missed, even one made between your calls.",
        params: &[
            req("name", Str, "The event's name."),
            opt("last_seen_generation", Int, "The generation you last saw. Default 0."),
            opt("wait_seconds", Int, "Seconds to block. Capped at 50. Default 25."),
        ],
        read_only: true,
        idempotent: true,
    },
    ToolSpec {
        name: "clear_event",
        description: "Clear an event: later waits fire only on signals after this. The generation \
            number is kept (never reset), so older waiters still wake on the next signal. \
            Returns {cleared:true}.",
        params: &[req("name", Str, "The event's name.")],
        read_only: false,
        idempotent: true,
    },
    // ---------------------------------------------------------------- tasks
    ToolSpec {
        name: "push_task",
        description: "Add a task to a queue. Higher priority is claimed first, then older. Returns {id}.",
        params: &[
            req("queue", Str, "The queue's name."),
            req("payload", Str, "The task, up to 256 KiB (JSON text is fine)."),
            opt("author", Str, "Who pushed it."),
            opt("priority", Int, "Higher first. Default 0."),
        ],
        read_only: false,
        idempotent: false,
    },
    ToolSpec {
        name: "claim_next_task",
        description: "Claim the next task of a queue under a lease. Returns {claimed:true, id, \
            payload, lease_token, lease_expires_in_seconds, attempts} or {claimed:false}. Finish \
            with complete_task or fail_task using the lease_token before the lease ends, or the \
            task returns to the queue. With wait_seconds > 0 (up to 50) it blocks until a task arrives.",
        params: &[
            req("queue", Str, "The queue's name."),
            AGENT_ID,
            opt("lease_seconds", Int, "Seconds you have to finish (1 to 2592000). Default 120."),
            opt("wait_seconds", Int, "Seconds to block for a task if none is pending. Capped at 50. Default 0."),
        ],
        read_only: false,
        idempotent: false,
    },
    ToolSpec {
        name: "complete_task",
        description: "Mark a claimed task done. Requires the lease_token of the current claim. \
            Returns {completed:true} or {completed:false, error}.",
        params: &[
            req("id", Int, "The task id."),
            req("lease_token", Str, "The lease_token from claim_next_task."),
        ],
        read_only: false,
        idempotent: false,
    },
    ToolSpec {
        name: "fail_task",
        description: "Give up on a claimed task: requeue=true (default) returns it to pending for \
            another try; requeue=false fails it for good. Returns {failed:true} or {failed:false, error}.",
        params: &[
            req("id", Int, "The task id."),
            req("lease_token", Str, "The lease_token from claim_next_task."),
            opt("requeue", Bool, "Return it to the queue (true, default) or fail it for good (false)."),
        ],
        read_only: false,
        idempotent: false,
    },
    ToolSpec {
        name: "extend_lease",
        description: "Extend the lease on a task you claimed, for long work. Returns \
            {extended:true, lease_expires_in_seconds} or {extended:false, error}.",
        params: &[
            req("id", Int, "The task id."),
            req("lease_token", Str, "The lease_token from claim_next_task."),
            opt("lease_seconds", Int, "New lease length from now, in seconds. Default 120."),
        ],
        read_only: false,
        idempotent: true,
    },
    ToolSpec {
        name: "list_tasks",
        description: "List a queue's tasks: [{id, queue, payload, priority, state, author?, \
            attempts, lease_agent?, lease_expires_in_seconds?}]. States: pending, claimed, \
            completed, failed. Finished tasks are kept 24 hours.",
        params: &[req("queue", Str, "The queue's name."), LIMIT, CURSOR],
        read_only: true,
        idempotent: true,
    },
];

pub fn find(name: &str) -> Option<&'static ToolSpec> {
    TOOLS.iter().find(|t| t.name == name)
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
            assert_eq!(TOOLS.iter().filter(|t| t.name == name).count(), 1, "{name}");
        }
        assert_eq!(
            TOOLS.len(),
            contract.len() + 1,
            "22 contract tools + extend_lease"
        );
    }
}
