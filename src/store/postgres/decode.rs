//! Rows of the airlock schema read back into the store's row types.

use tokio_postgres::Row;

use crate::store::{
    AgentRow, EventRow, LockRow, NoteRow, StoreError, StoreResult, TaskRow, TaskState,
};

pub(super) fn note_from(r: &Row) -> StoreResult<NoteRow> {
    Ok(NoteRow {
        key: r.try_get(0)?,
        value: r.try_get(1)?,
        author: r.try_get(2)?,
        expires_at: r.try_get(3)?,
    })
}

pub(super) fn lock_from(r: &Row) -> StoreResult<LockRow> {
    Ok(LockRow {
        name: r.try_get(0)?,
        agent_id: r.try_get(1)?,
        token: r.try_get(2)?,
        fence: r.try_get(3)?,
        expires_at: r.try_get(4)?,
        shared: r.try_get(5)?,
        limit: r.try_get(6)?,
    })
}

pub(super) fn agent_from(r: &Row) -> StoreResult<AgentRow> {
    Ok(AgentRow {
        agent_id: r.try_get(0)?,
        expires_at: r.try_get(1)?,
    })
}

pub(super) fn event_from(r: &Row) -> StoreResult<EventRow> {
    Ok(EventRow {
        name: r.try_get(0)?,
        generation: r.try_get(1)?,
        cleared_at: r.try_get(2)?,
    })
}

pub(super) fn task_from(r: &Row) -> StoreResult<TaskRow> {
    let id: i64 = r.try_get(0)?;
    let state: &str = r.try_get(5)?;
    Ok(TaskRow {
        id,
        queue: r.try_get(1)?,
        payload: r.try_get(2)?,
        author: r.try_get(3)?,
        priority: r.try_get(4)?,
        state: TaskState::parse(state).ok_or_else(|| {
            StoreError::Other(format!(
                "task {id} has an unknown state {state:?} in airlock.tasks"
            ))
        })?,
        attempts: r.try_get(6)?,
        lease_agent: r.try_get(7)?,
        lease_token: r.try_get(8)?,
        lease_expires_at: r.try_get(9)?,
        finished_at: r.try_get(10)?,
        ready_at: r.try_get(11)?,
        max_attempts: r.try_get(12)?,
        unique_key: r.try_get(13)?,
        last_error: r.try_get(14)?,
        result: r.try_get(15)?,
    })
}

pub(super) fn rows<T>(rows: Vec<Row>, from: fn(&Row) -> StoreResult<T>) -> StoreResult<Vec<T>> {
    rows.iter().map(from).collect()
}

/// A query timeout as the error names it: whole seconds, or milliseconds.
pub(super) fn describe_duration(d: std::time::Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{} ms", d.as_millis())
    }
}
