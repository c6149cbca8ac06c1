//! Events: the generation and the clear-floor live in the store; parked waiters in memory, all
//! answered in the step that bumps the generation (so they leave with its commit).
//!
//! A clear moves the floor up to the current generation: signals before it do not fire for a
//! waiter, later ones always do, so an old waiter never misses a signal that came after it.

use std::collections::HashMap;

use super::history::Said;
use super::{Deadline, Reply, Tx};
use crate::clock::Millis;
use crate::core::history::HistoryKind;
use crate::core::types::*;
use crate::store::EventRow;

struct EventWaiter {
    call: u64,
    /// Fires once the generation is above this.
    after: i64,
    reply: Reply<EventWaitOutcome>,
    window_end: Millis,
}

/// Parked `wait_for_event` calls.
#[derive(Default)]
pub(super) struct Events {
    /// Event name → its parked waiters.
    waiters: HashMap<String, Vec<EventWaiter>>,
    /// Parked call id → the event it waits on.
    calls: HashMap<u64, String>,
}

/// The event's row; an event never signalled is at generation 0.
fn event_row(tx: &mut Tx, name: &str) -> CoreResult<EventRow> {
    Ok(tx.db(|s| s.event_get(name))?.unwrap_or_else(|| EventRow {
        name: name.to_string(),
        ..EventRow::default()
    }))
}

impl Events {
    /// Every event ever signalled or cleared, with how many callers wait on it.
    pub(super) fn event_views(&self, tx: &mut Tx) -> CoreResult<Vec<EventView>> {
        Ok(tx
            .db(|s| s.event_list())?
            .into_iter()
            .map(|e| EventView {
                waiters: self.waiting_on(&e.name),
                name: e.name,
                generation: e.generation,
                cleared_at_generation: e.cleared_at,
            })
            .collect())
    }

    pub(super) fn list_events(&self, tx: &mut Tx, reply: Reply<Vec<EventView>>) {
        let r = self.event_views(tx);
        tx.respond(reply, r)
    }

    pub(super) fn signal_event(&mut self, tx: &mut Tx, name: String, reply: Reply<Signaled>) {
        // Answered ahead of the waiters it wakes (all after the same commit), so the
        // signaller does not queue behind a thousand deliveries.
        let at = tx.outbox.len();
        let r = self.signal(tx, name);
        tx.outbox.insert(at, reply, r, None);
    }

    fn signal(&mut self, tx: &mut Tx, name: String) -> CoreResult<Signaled> {
        let mut row = event_row(tx, &name)?;
        row.generation += 1;
        tx.db(|s| s.event_put(&row))?;
        let generation = row.generation;
        tx.record(HistoryKind::Signal, &name, generation_of(generation))?;
        if let Some(waiters) = self.waiters.remove(&name) {
            let (fire, keep): (Vec<_>, Vec<_>) =
                waiters.into_iter().partition(|w| generation > w.after);
            for w in fire {
                self.calls.remove(&w.call);
                tx.respond(
                    w.reply,
                    Ok(EventWaitOutcome {
                        generation,
                        fired: true,
                    }),
                );
            }
            if !keep.is_empty() {
                self.waiters.insert(name, keep);
            }
        }
        Ok(Signaled { generation })
    }

    pub(super) fn wait_for_event(
        &mut self,
        tx: &mut Tx,
        call: u64,
        name: String,
        last_seen: i64,
        wait_ms: Millis,
        reply: Reply<EventWaitOutcome>,
    ) {
        let row = match event_row(tx, &name) {
            Ok(r) => r,
            Err(e) => return tx.respond(reply, Err(e)),
        };
        // A clear moves the floor up: signals before it do not fire, later ones always do.
        let after = last_seen.max(row.cleared_at);
        if row.generation > after || wait_ms == 0 || tx.draining {
            let fired = row.generation > after;
            return tx.respond(
                reply,
                Ok(EventWaitOutcome {
                    generation: row.generation,
                    fired,
                }),
            );
        }
        let window_end = tx.now() + wait_ms;
        self.calls.insert(call, name.clone());
        self.waiters.entry(name).or_default().push(EventWaiter {
            call,
            after,
            reply,
            window_end,
        });
        tx.schedule(window_end, Deadline::EventWindow(call));
    }

    pub(super) fn clear_event(&mut self, tx: &mut Tx, name: String, reply: Reply<Cleared>) {
        let r = (|| {
            let mut row = event_row(tx, &name)?;
            row.cleared_at = row.generation;
            tx.db(|s| s.event_put(&row))?;
            tx.record(HistoryKind::Clear, &name, generation_of(row.generation))?;
            Ok(Cleared { cleared: true })
        })();
        tx.respond(reply, r)
    }

    fn take_waiter(&mut self, call: u64) -> Option<EventWaiter> {
        let name = self.calls.remove(&call)?;
        let list = self.waiters.get_mut(&name)?;
        let idx = list.iter().position(|w| w.call == call)?;
        let w = list.swap_remove(idx);
        if list.is_empty() {
            self.waiters.remove(&name);
        }
        Some(w)
    }

    /// The caller of parked call `call` went away; true if it was an event wait.
    pub(super) fn cancel(&mut self, call: u64) -> bool {
        self.take_waiter(call).is_some()
    }

    /// The window of parked call `call` ended (or, with `force`, the engine drains): it is
    /// answered `fired:false` with the current generation.
    pub(super) fn end_event_window(&mut self, tx: &mut Tx, call: u64, force: bool) {
        let now = tx.now();
        let due = self
            .calls
            .get(&call)
            .and_then(|name| self.waiters.get(name))
            .and_then(|l| l.iter().find(|w| w.call == call))
            .is_some_and(|w| force || w.window_end <= now);
        if !due {
            return;
        }
        let name = self.calls.get(&call).cloned().unwrap_or_default();
        if let Some(w) = self.take_waiter(call) {
            let generation = event_row(tx, &name).map(|r| r.generation).unwrap_or(0);
            tx.respond(
                w.reply,
                Ok(EventWaitOutcome {
                    generation,
                    fired: false,
                }),
            );
        }
    }

    /// On drain: every parked event wait gets its timeout answer now.
    pub(super) fn end_all_windows(&mut self, tx: &mut Tx) {
        let calls: Vec<u64> = self.calls.keys().copied().collect();
        for call in calls {
            self.end_event_window(tx, call, true);
        }
    }

    /// Whether `call` is a parked event wait.
    pub(super) fn is_waiting(&self, call: u64) -> bool {
        self.calls.contains_key(&call)
    }

    /// How many calls wait on `name`.
    pub(super) fn waiting_on(&self, name: &str) -> usize {
        self.waiters.get(name).map_or(0, Vec::len)
    }
}

/// What an event's entry says: its generation (events name no agent).
fn generation_of(generation: i64) -> Said<'static> {
    Said {
        number: Some(generation),
        ..Said::default()
    }
}
