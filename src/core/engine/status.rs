//! Read-only views across capabilities: the snapshot behind `airlock status`, and where a
//! parked call stands (for its progress notifications).
//!
//! The snapshot is built on the engine thread, so it reads summaries, not rows: counts grouped
//! by the store (tasks per queue and state, locks and leases per agent), and note values and
//! open tasks' payloads cut short by the store's query, never a whole value or payload.

use super::events::Events;
use super::locks::Locks;
use super::tasks::{task_view, Tasks};
use super::{notes, presence, ProgressReply, Reply, Tx, WaitProgress};
use crate::core::request::ListPage;
use crate::core::types::*;
use crate::store::{TaskState, Values};

pub(super) fn status(
    tx: &mut Tx,
    locks: &mut Locks,
    events: &Events,
    tasks: &Tasks,
    engine: EngineCounts,
    page: &ListPage,
    reply: Reply<StatusView>,
) {
    let r = StatusCursor::page(page)
        .and_then(|(limit, at)| snapshot(tx, locks, events, tasks, engine, limit, at));
    tx.respond(reply, r)
}

/// One section's page: its items, and where the section stands for the next page.
fn section<T>(
    at: &SectionAt,
    limit: usize,
    list: impl FnOnce(&Page) -> CoreResult<Paged<T>>,
) -> CoreResult<(Vec<T>, SectionAt)> {
    let after = match at {
        SectionAt::Done => return Ok((Vec::new(), SectionAt::Done)),
        SectionAt::Start => None,
        SectionAt::After(a) => Some(a.clone()),
    };
    let page = list(&Page {
        after,
        limit,
        values: true,
    })?;
    let next = page.next_cursor.map_or(SectionAt::Done, SectionAt::After);
    Ok((page.items, next))
}

/// A page of a section held whole in memory (events, queues: a name and a few counts each),
/// sorted by `name`.
fn in_memory<T>(all: Vec<T>, page: &Page, name: impl Fn(&T) -> &str) -> CoreResult<Paged<T>> {
    let mut rest = all
        .into_iter()
        .filter(|t| page.after.as_deref().is_none_or(|a| name(t) > a));
    let items: Vec<T> = rest.by_ref().take(page.limit).collect();
    let more = rest.next().is_some();
    let next_cursor = more
        .then(|| items.last().map(|t| name(t).to_string()))
        .flatten();
    Ok(Paged { items, next_cursor })
}

fn snapshot(
    tx: &mut Tx,
    locks: &mut Locks,
    events: &Events,
    tasks: &Tasks,
    engine: EngineCounts,
    limit: usize,
    at: StatusCursor,
) -> CoreResult<StatusView> {
    // A page of each list (note values cut: status is a glance); the sections that go on are
    // named in `truncated`, and `next_cursor` carries where each one stands.
    let (lock_views, locks_at) = section(&at.locks, limit, |p| locks.lock_page(tx, p))?;
    let (agents, agents_at) = section(&at.agents, limit, |p| presence::agent_page(tx, p))?;
    let (notes, notes_at) = section(&at.notes, limit, |p| notes::status_page(tx, p))?;
    let (event_views, events_at) = section(&at.events, limit, |p| {
        in_memory(events.event_views(tx)?, p, |e| &e.name)
    })?;
    // The open tasks come with the first page (the dashboard's glance).
    let open = match at.tasks {
        SectionAt::Start => open_tasks(tx)?,
        _ => Vec::new(),
    };
    let (queues, queues_at) = section(&at.queues, limit, |p| {
        in_memory(tasks.queue_views(tx)?, p, |q| &q.queue)
    })?;
    let next = StatusCursor {
        locks: locks_at,
        agents: agents_at,
        notes: notes_at,
        events: events_at,
        queues: queues_at,
        tasks: SectionAt::Done,
    };
    let truncated: Vec<String> = [
        ("locks", &next.locks),
        ("agents", &next.agents),
        ("notes", &next.notes),
        ("events", &next.events),
        ("queues", &next.queues),
    ]
    .into_iter()
    .filter(|(_, at)| matches!(at, SectionAt::After(_)))
    .map(|(name, _)| name.to_string())
    .collect();
    let next_cursor = (!truncated.is_empty()).then(|| next.encode());
    Ok(StatusView {
        locks: lock_views,
        agents,
        notes,
        events: event_views,
        queues,
        tasks: open,
        engine,
        truncated,
        next_cursor,
    })
}

/// Open tasks, claimed ones first, then pending, oldest first in each: at most
/// [`STATUS_MAX_TASKS`] in all, payloads read by the store only as far as
/// [`STATUS_PAYLOAD_CHARS`] characters and one more, then cut to [`STATUS_PAYLOAD_CHARS`].
fn open_tasks(tx: &mut Tx) -> CoreResult<Vec<TaskView>> {
    let now = tx.now();
    let preview = Values::Preview(STATUS_PAYLOAD_CHARS + 1);
    let mut rows = Vec::new();
    for state in [TaskState::Claimed, TaskState::Pending] {
        let room = STATUS_MAX_TASKS - rows.len();
        if room == 0 {
            break;
        }
        let (page, _) =
            tx.db(|s| s.task_page(None, Some(state), None, room, preview, MAX_PAGE_VALUE_BYTES))?;
        rows.extend(page);
    }
    Ok(rows
        .into_iter()
        .map(|t| {
            let mut v = task_view(t, now);
            notes::clip(&mut v.payload, STATUS_PAYLOAD_CHARS);
            v
        })
        .collect())
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
