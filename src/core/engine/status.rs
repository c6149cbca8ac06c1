//! Read-only views across capabilities: the snapshot behind `airlock status`, and where a
//! parked call stands (for its progress notifications).
//!
//! The snapshot is built on the engine thread, so it reads summaries, not rows: counts grouped
//! by the store (tasks per queue and state, locks and leases per agent) and note values cut
//! short, never every task payload or whole note value.

use super::events::Events;
use super::locks::Locks;
use super::tasks::Tasks;
use super::{notes, presence, ProgressReply, Reply, Tx, WaitProgress};
use crate::core::types::*;

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

fn snapshot(
    tx: &mut Tx,
    locks: &mut Locks,
    events: &Events,
    tasks: &Tasks,
    engine: EngineCounts,
) -> CoreResult<StatusView> {
    // One page of each list (note values cut: status is a glance), and the names of the
    // sections that go on (the `list_*` tools page through the rest).
    let page = Page::default();
    let mut truncated = Vec::new();
    let mut section = |name: &str, more: bool| {
        if more {
            truncated.push(name.to_string());
        }
    };
    let lock_views = locks.lock_page(tx, &page)?;
    section("locks", lock_views.next_cursor.is_some());
    let agents = presence::agent_page(tx, &page)?;
    section("agents", agents.next_cursor.is_some());
    let mut notes = notes::note_page(tx, &page)?;
    section("notes", notes.next_cursor.is_some());
    for n in &mut notes.items {
        notes::clip_for_status(&mut n.value);
    }
    let event_views = events.event_views(tx)?;
    let queues = tasks.queue_views(tx)?;
    Ok(StatusView {
        locks: lock_views.items,
        agents: agents.items,
        notes: notes.items,
        events: event_views,
        queues,
        engine,
        truncated,
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
