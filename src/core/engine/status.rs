//! Read-only views across capabilities: the snapshot behind `airlock status`, and where a
//! parked call stands (for its progress notifications).

use std::collections::BTreeMap;

use super::events::Events;
use super::locks::Locks;
use super::tasks::{task_view, Tasks};
use super::{notes, presence, ProgressReply, Reply, Tx, WaitProgress};
use crate::core::types::*;
use crate::store::TaskState;

pub(super) fn status(
    tx: &mut Tx,
    locks: &mut Locks,
    events: &Events,
    tasks: &Tasks,
    engine: EngineCounts,
    reply: Reply<StatusView>,
) {
    let r = snapshot(tx, locks, events, tasks, engine);
    tx.respond(reply, r)
}

fn empty_queue(queue: &str) -> QueueView {
    QueueView {
        queue: queue.to_string(),
        pending: 0,
        claimed: 0,
        completed: 0,
        failed: 0,
        waiting_claimers: 0,
    }
}

fn snapshot(
    tx: &mut Tx,
    locks: &mut Locks,
    events: &Events,
    tasks: &Tasks,
    engine: EngineCounts,
) -> CoreResult<StatusView> {
    let lock_views = locks.lock_views(tx)?;
    let agents = presence::agent_views(tx)?;
    let notes = notes::note_views(tx)?;
    let event_views = tx
        .db(|s| s.event_list())?
        .into_iter()
        .map(|e| EventView {
            waiters: events.waiting_on(&e.name),
            name: e.name,
            generation: e.generation,
            cleared_at_generation: e.cleared_at,
        })
        .collect();
    let mut queues: BTreeMap<String, QueueView> = BTreeMap::new();
    let now = tx.now();
    let mut open = Vec::new();
    for t in tx.db(|s| s.task_list(None))? {
        let q = queues
            .entry(t.queue.clone())
            .or_insert_with(|| empty_queue(&t.queue));
        match t.state {
            TaskState::Pending => q.pending += 1,
            TaskState::Claimed => q.claimed += 1,
            TaskState::Completed => q.completed += 1,
            TaskState::Failed => q.failed += 1,
        }
        if matches!(t.state, TaskState::Pending | TaskState::Claimed) {
            open.push(t);
        }
    }
    // As claims take them: highest priority first, then oldest.
    open.sort_by(|a, b| b.priority.cmp(&a.priority).then(a.id.cmp(&b.id)));
    let open_tasks = open
        .into_iter()
        .take(STATUS_MAX_TASKS)
        .map(|t| {
            let mut v = task_view(t, now);
            if v.payload.chars().count() > STATUS_PAYLOAD_CHARS {
                v.payload = v
                    .payload
                    .chars()
                    .take(STATUS_PAYLOAD_CHARS)
                    .collect::<String>()
                    + "…";
            }
            v
        })
        .collect();
    for (name, waiting) in tasks.waiting_claimers() {
        let q = queues
            .entry(name.clone())
            .or_insert_with(|| empty_queue(name));
        q.waiting_claimers = waiting;
    }
    Ok(StatusView {
        locks: lock_views,
        agents,
        notes,
        events: event_views,
        queues: queues.into_values().collect(),
        tasks: open_tasks,
        engine,
    })
}

pub(super) fn wait_status(
    tx: &mut Tx,
    locks: &mut Locks,
    events: &Events,
    tasks: &Tasks,
    call: u64,
    reply: ProgressReply,
) {
    let r = progress(tx, locks, events, tasks, call);
    // Read-only and about memory: no need to wait for a commit, but harmless to.
    tx.respond(reply, r)
}

fn progress(
    tx: &mut Tx,
    locks: &mut Locks,
    events: &Events,
    tasks: &Tasks,
    call: u64,
) -> CoreResult<Option<WaitProgress>> {
    if let Some(r) = locks.wait_status(tx, call) {
        return r;
    }
    if events.is_waiting(call) {
        return Ok(Some(WaitProgress {
            queue_position: None,
            held_by: None,
        }));
    }
    if let Some(queue_position) = tasks.wait_position(call) {
        return Ok(Some(WaitProgress {
            queue_position,
            held_by: None,
        }));
    }
    Ok(None)
}
