//! [`Request::check`]: every argument rule and default, in one place.

use super::*;
use crate::core::history::{parse_since, HistoryKind, DEFAULT_HISTORY_ITEMS, MAX_HISTORY_ITEMS};

impl Request {
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
                let mode = LockMode::new("", r.shared, r.limit)?;
                r.shared = Some(mode.shared);
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
            Request::ListLocks(r) => {
                r.page(true)?;
                Request::ListLocks(r)
            }
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
                for (i, n) in r.names.iter_mut().enumerate() {
                    let plain = n.shared.is_none() && n.limit.is_none();
                    let field = if plain {
                        format!("names[{i}]")
                    } else {
                        format!("names[{i}].name")
                    };
                    check_name(&field, &n.name)?;
                    let mode = LockMode::new(&format!("names[{i}]."), n.shared, n.limit)?;
                    if !plain {
                        n.shared = Some(mode.shared);
                    }
                }
                r.names.sort_by(|a, b| a.name.cmp(&b.name));
                if let Some(w) = r.names.windows(2).find(|w| w[0].name == w[1].name) {
                    return Err(CoreError::invalid(
                        "names",
                        format!("must not repeat a name, got {:?} twice", w[0].name),
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
            Request::ListNotes(r) => {
                r.page.page(true)?;
                Request::ListNotes(r)
            }
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
            Request::ListAgents(r) => {
                r.page(true)?;
                Request::ListAgents(r)
            }
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
                let delay = r.delay_seconds.unwrap_or(0);
                if !(0..=MAX_DELAY_SECONDS).contains(&delay) {
                    return Err(CoreError::invalid(
                        "delay_seconds",
                        format!("must be between 0 and {MAX_DELAY_SECONDS}, got {delay}"),
                    ));
                }
                r.delay_seconds = Some(delay);
                if let Some(n) = r.max_attempts {
                    if !(1..=MAX_ATTEMPTS_LIMIT).contains(&n) {
                        return Err(CoreError::invalid(
                            "max_attempts",
                            format!("must be between 1 and {MAX_ATTEMPTS_LIMIT}, got {n}"),
                        ));
                    }
                }
                if let Some(k) = &r.unique_key {
                    check_name("unique_key", k)?;
                }
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
                if let Some(v) = &r.result {
                    check_value("result", v)?;
                }
                Request::CompleteTask(r)
            }
            Request::FailTask(mut r) => {
                check_name("lease_token", &r.lease_token)?;
                if let Some(v) = &r.error {
                    check_value("error", v)?;
                }
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
                r.page.page(true)?;
                if r.page
                    .cursor
                    .as_deref()
                    .is_some_and(|c| c.parse::<i64>().is_err())
                {
                    return Err(CoreError::invalid(
                        "cursor",
                        "must be the next_cursor of a previous list_tasks answer (a task id)",
                    ));
                }
                if let Some(st) = &r.state {
                    if TaskState::parse(st).is_none() {
                        return Err(CoreError::invalid(
                            "state",
                            format!(
                                "must be one of pending, claimed, completed, failed, dead; got {st:?}"
                            ),
                        ));
                    }
                }
                Request::ListTasks(r)
            }
            Request::GetTask(r) => Request::GetTask(r),
            Request::RetryTask(r) => Request::RetryTask(r),
            Request::ListQueues => Request::ListQueues,
            Request::ListEvents => Request::ListEvents,
            Request::GetHistory(mut r) => {
                for (field, v) in [("name", &r.name), ("agent_id", &r.agent_id)] {
                    if let Some(v) = v {
                        check_name(field, v)?;
                    }
                }
                if let Some(k) = &r.kind {
                    if HistoryKind::parse(k).is_none() {
                        return Err(CoreError::invalid(
                            "kind",
                            format!(
                                "must be one of {}; got {k:?}",
                                HistoryKind::NAMES.join(", ")
                            ),
                        ));
                    }
                }
                if let Some(s) = &r.since {
                    // Checked here; read against the engine's clock when it runs.
                    parse_since("since", s, 0)?;
                }
                let limit = r.limit.unwrap_or(DEFAULT_HISTORY_ITEMS as i64);
                if !(1..=MAX_HISTORY_ITEMS as i64).contains(&limit) {
                    return Err(CoreError::invalid(
                        "limit",
                        format!("must be between 1 and {MAX_HISTORY_ITEMS}, got {limit}"),
                    ));
                }
                r.limit = Some(limit);
                if r.cursor
                    .as_deref()
                    .is_some_and(|c| !c.parse::<i64>().is_ok_and(|id| id > 0))
                {
                    return Err(CoreError::invalid(
                        "cursor",
                        "must be the next_cursor of a previous get_history answer",
                    ));
                }
                Request::GetHistory(r)
            }
            Request::Status(r) => {
                StatusCursor::page(&r)?;
                Request::Status(r)
            }
        })
    }
}
