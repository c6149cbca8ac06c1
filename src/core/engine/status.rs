//! Read-only views across capabilities: the snapshot behind `airlock status`, and where a
//! parked call stands (for its progress notifications).
//!
//! The snapshot is built on the engine thread, so it reads summaries, not rows: counts grouped
//! by the store (tasks per queue and state, locks and leases per agent) and note values cut
//! short, never every task payload or whole note value.

use std::collections::BTreeMap;

use super::events::Events;
use super::locks::Locks;
use super::tasks::Tasks;
use super::{notes, presence, Reply, Tx, WaitProgress};
use crate::core::types::*;
use crate::store::TaskState;

pub(super) fn status(
    tx: &mut Tx,
    locks: &mut Locks,
    events: &Events,
    tasks: &Tasks,
    reply: Reply<StatusView>,
) {
    let r = snapshot(tx, locks, events, tasks);
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
) -> CoreResult<StatusView> {
    let lock_views = locks.lock_views(tx)?;
    let agents = presence::agent_views(tx)?;
    let notes = notes::note_previews(tx)?;
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
    for (queue, state, n) in tx.db(|s| s.task_counts())? {
        let n = usize::try_from(n).unwrap_or(0);
        let q = queues
            .entry(queue.clone())
            .or_insert_with(|| empty_queue(&queue));
        match state {
            TaskState::Pending => q.pending = n,
            TaskState::Claimed => q.claimed = n,
            TaskState::Completed => q.completed = n,
            TaskState::Failed => q.failed = n,
        }
    }
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
    })
}

pub(super) fn wait_status(
    tx: &mut Tx,
    locks: &mut Locks,
    events: &Events,
    tasks: &Tasks,
    call: u64,
    reply: Reply<Option<WaitProgress>>,
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
