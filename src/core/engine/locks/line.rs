//! The lines of waiters: tickets, their places in each name's line, wake tokens, kept places.
//! Nothing here touches the store except [`Locks::check_mode`], which reads the holders a
//! newcomer must agree with.

use super::super::lock_rows::live_holders;
use super::super::{new_token, Deadline, Reply, Tx};
use super::Locks;
use crate::clock::Millis;
use crate::core::types::*;
use crate::store::LockRow;

/// The reply channel of a parked lock call.
pub(super) enum LockWaiter {
    Single(Reply<LockOutcome>),
    Set(Reply<LockSetOutcome>),
}

impl LockWaiter {
    fn is_closed(&self) -> bool {
        match self {
            LockWaiter::Single(r) => r.is_closed(),
            LockWaiter::Set(r) => r.is_closed(),
        }
    }
}

pub(super) enum TicketState {
    /// A call is waiting on it now.
    Parked {
        call: u64,
        waiter: LockWaiter,
        window_end: Millis,
    },
    /// Its call timed out and was given the wake token; the place is kept until `until`.
    Grace { until: Millis },
}

/// A place in line for one lock (or, for `lock_resources`, for a set of locks at once).
pub(super) struct Ticket {
    pub(super) wake_token: String,
    pub(super) agent_id: String,
    /// Sorted, distinct.
    pub(super) names: Vec<String>,
    /// The mode asked for each of `names`, in the same order.
    pub(super) modes: Vec<LockMode>,
    pub(super) ttl_ms: Millis,
    pub(super) wait_seconds: i64,
    /// When it joined the line (for the views).
    pub(super) since: Millis,
    pub(super) state: TicketState,
}

impl Ticket {
    /// The mode this ticket asks for `name` (exclusive if it does not stand in that line).
    pub(super) fn mode_of(&self, name: &str) -> LockMode {
        self.names
            .iter()
            .position(|n| n == name)
            .and_then(|i| self.modes.get(i).copied())
            .unwrap_or(LockMode::EXCLUSIVE)
    }
}

/// What the name's holders and waiters already use, in words, for a mismatch error.
fn described(limit: Option<i64>) -> String {
    match limit {
        Some(n) => format!("a semaphore with limit {n}"),
        None => "a lock without a limit".into(),
    }
}

impl Locks {
    /// Whether ticket `id` still holds a place: a parked call whose caller is there, or a place
    /// kept between two windows.
    pub(super) fn ticket_live(&self, id: u64) -> bool {
        match self.tickets.get(&id).map(|t| &t.state) {
            Some(TicketState::Parked { waiter, .. }) => !waiter.is_closed(),
            Some(TicketState::Grace { .. }) => true,
            None => false,
        }
    }

    /// Removes tickets whose parked caller is gone from the front of `name`'s line.
    pub(super) fn line_head(&mut self, name: &str) -> Option<u64> {
        loop {
            let head = *self.lock_queues.get(name)?.front()?;
            if self.ticket_live(head) {
                return Some(head);
            }
            self.remove_ticket(head);
        }
    }

    /// Takes a ticket out of every line it stands in; those lines may now move.
    pub(super) fn remove_ticket(&mut self, id: u64) -> Option<Ticket> {
        let ticket = self.tickets.remove(&id);
        let names: Vec<String> = match &ticket {
            Some(t) => {
                self.wake_tokens.remove(&t.wake_token);
                if let TicketState::Parked { call, .. } = &t.state {
                    self.ticket_calls.remove(call);
                }
                t.names.clone()
            }
            // Not in the map: find it in the lines by brute force (cannot normally happen).
            None => self
                .lock_queues
                .iter()
                .filter(|(_, q)| q.contains(&id))
                .map(|(n, _)| n.clone())
                .collect(),
        };
        for name in names {
            if let Some(q) = self.lock_queues.get_mut(&name) {
                q.retain(|&t| t != id);
                if q.is_empty() {
                    self.lock_queues.remove(&name);
                }
            }
            self.to_pump.insert(name);
        }
        ticket
    }

    /// Live tickets in `name`'s line.
    pub(super) fn line_len(&self, name: &str) -> usize {
        self.lock_queues
            .get(name)
            .map_or(0, |q| q.iter().filter(|&&id| self.ticket_live(id)).count())
    }

    /// 1-based place of ticket `id` in `name`'s line, counting only live tickets.
    pub(super) fn line_position(&self, name: &str, id: u64) -> Option<usize> {
        let q = self.lock_queues.get(name)?;
        let mut pos = 0;
        for t in q {
            if self.ticket_live(*t) || *t == id {
                pos += 1;
            }
            if *t == id {
                return Some(pos);
            }
        }
        None
    }

    /// Refuses a caller whose mode cannot share `name` with its holders and waiters: while the
    /// name is held or awaited every caller must give the same `limit` (or none), and an agent
    /// that holds the name asks for it in the mode it holds it in. Changes nothing.
    pub(super) fn check_mode(
        &self,
        name: &str,
        mode: LockMode,
        holders: &[LockRow],
        agent_id: &str,
    ) -> CoreResult<()> {
        let waiting = self.lock_queues.get(name).into_iter().flatten();
        let others = holders.iter().map(|h| h.limit).chain(
            waiting
                .filter(|id| self.ticket_live(**id))
                .filter_map(|id| self.tickets.get(id))
                .map(|t| t.mode_of(name).limit),
        );
        for limit in others {
            if limit != mode.limit {
                let got = mode.limit.map_or("none".to_string(), |n| n.to_string());
                return Err(CoreError::invalid(
                    "limit",
                    format!(
                        "must be the same for every caller of a lock while it is held or \
                         awaited: {name:?} is {} now, got {got}",
                        described(limit)
                    ),
                ));
            }
        }
        if let Some(own) = holders.iter().find(|h| h.agent_id == agent_id) {
            if own.shared != mode.shared {
                let held = if own.shared { "shared" } else { "exclusive" };
                return Err(CoreError::invalid(
                    "shared",
                    format!(
                        "must match how you hold the lock: {agent_id:?} holds {name:?} {held}; \
                         an agent holds a name in one mode at a time (unlock it, then ask again)"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Stands a new ticket at the back of every line of `names` and schedules its window.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn enqueue(
        &mut self,
        tx: &mut Tx,
        call: u64,
        names: Vec<String>,
        modes: Vec<LockMode>,
        agent_id: String,
        ttl_ms: Millis,
        wait_ms: Millis,
        waiter: LockWaiter,
        now: Millis,
    ) {
        let id = self.next_ticket;
        self.next_ticket += 1;
        let wake_token = new_token("wt");
        self.wake_tokens.insert(wake_token.clone(), id);
        self.ticket_calls.insert(call, id);
        for n in &names {
            self.lock_queues.entry(n.clone()).or_default().push_back(id);
            self.to_pump.insert(n.clone());
        }
        self.tickets.insert(
            id,
            Ticket {
                wake_token,
                agent_id,
                names,
                modes,
                ttl_ms,
                wait_seconds: wait_ms / 1000,
                since: now,
                state: TicketState::Parked {
                    call,
                    waiter,
                    window_end: now + wait_ms,
                },
            },
        );
        tx.schedule(now + wait_ms, Deadline::TicketWindow(id));
    }

    /// The place `agent_id` keeps in `name`'s line between two windows (a single-name ticket
    /// in its grace), if any.
    pub(super) fn kept_place(&self, name: &str, agent_id: &str) -> Option<u64> {
        self.lock_queues.get(name)?.iter().copied().find(|id| {
            self.tickets.get(id).is_some_and(|t| {
                matches!(t.state, TicketState::Grace { .. })
                    && t.agent_id == agent_id
                    && t.names.len() == 1
            })
        })
    }

    /// Places `agent_id` kept in line between two windows: nobody will come back for them, and
    /// a freed lock must not sit reserved for them until their grace runs out.
    pub(in crate::core::engine) fn drop_kept_places(&mut self, agent_id: &str) {
        let kept: Vec<u64> = self
            .tickets
            .iter()
            .filter(|(_, t)| t.agent_id == agent_id && matches!(t.state, TicketState::Grace { .. }))
            .map(|(id, _)| *id)
            .collect();
        for id in kept {
            self.remove_ticket(id);
        }
    }

    /// A ticket's grace ended: its place is given up.
    pub(in crate::core::engine) fn end_grace(&mut self, id: u64, now: Millis) {
        let due = matches!(
            self.tickets.get(&id).map(|t| &t.state),
            Some(TicketState::Grace { until }) if *until <= now
        );
        if due {
            self.remove_ticket(id);
        }
    }

    /// The caller of parked call `call` went away; true if it was a lock call.
    pub(in crate::core::engine) fn cancel(&mut self, call: u64) -> bool {
        let Some(id) = self.ticket_calls.get(&call).copied() else {
            return false;
        };
        let parked_here = matches!(
            self.tickets.get(&id).map(|t| &t.state),
            Some(TicketState::Parked { call: c, .. }) if *c == call
        );
        if parked_here {
            self.remove_ticket(id);
        }
        true
    }

    /// Whether some line may be able to move.
    pub(in crate::core::engine) fn has_work(&self) -> bool {
        !self.to_pump.is_empty()
    }

    /// After a rollback: a grant that was undone left its line unmoved, so every line is
    /// looked at again.
    pub(in crate::core::engine) fn mark_all(&mut self) {
        self.to_pump.extend(self.lock_queues.keys().cloned());
    }

    /// For tests: how many lock tickets are held in memory.
    #[cfg(test)]
    pub(in crate::core::engine) fn ticket_count(&self) -> usize {
        self.tickets.len()
    }
}

/// Whether `name` stands in the way of a set waiter whose window ended: some holder it cannot
/// share with, or a line.
pub(super) fn set_name_contended(
    locks: &Locks,
    tx: &mut Tx,
    name: &str,
    mode: LockMode,
    agent_id: &str,
) -> bool {
    let holders = live_holders(tx, name).unwrap_or_default();
    let others: Vec<LockRow> = holders
        .into_iter()
        .filter(|h| h.agent_id != agent_id)
        .collect();
    !super::super::lock_rows::admits(&others, mode) || locks.line_len(name) > 0
}
