//! What the views show of locks: every lock held now, every free lock kept for the head of its
//! line, and each line of waiters (for `list_locks`, `status` and the dashboard).

use std::collections::BTreeSet;

use super::{Locks, TicketState};
use crate::clock::{seconds_left, Millis};
use crate::core::engine::{Reply, Tx};
use crate::core::types::*;

impl Locks {
    /// A page of held locks (`held`, names after `page.after`; `more`: the store has more after
    /// the last) with the free locks someone stands in line for merged in by name, each
    /// reserved for the head of its line. When the store has more, only reserved names up to
    /// the last held one join, so the next page (after the last name shown) misses nothing.
    pub(in crate::core::engine) fn with_reserved(
        &self,
        page: &Page,
        mut views: Vec<LockView>,
        more: bool,
        now: Millis,
    ) -> Paged<LockView> {
        let upto = if more {
            views.last().map(|v| v.name.clone())
        } else {
            None
        };
        let in_range = |name: &str| {
            page.after.as_deref().is_none_or(|a| name > a)
                && upto.as_deref().is_none_or(|u| name <= u)
        };
        let held: BTreeSet<String> = views.iter().map(|v| v.name.clone()).collect();
        // Within the range the store answered for, a name it did not answer is free.
        let free_lines = self
            .lock_queues
            .keys()
            .filter(|n| in_range(n) && !held.contains(*n))
            .cloned()
            .collect::<Vec<_>>();
        for name in free_lines {
            let line = self.line_view(&name, now);
            let Some(head) = line.first() else {
                continue;
            };
            views.push(LockView {
                agent_id: None,
                expires_in_seconds: 0,
                fence: None,
                waiters: line.len(),
                // Free: the mode and limit are the holders', and there are none.
                mode: HoldMode::Exclusive,
                limit: None,
                holders: 0,
                reserved_for: Some(head.agent_id.clone()),
                reserved_for_seconds: Some(head.seconds_left),
                name,
                line,
            });
        }
        views.sort_by(|a, b| a.name.cmp(&b.name));
        let more = more || views.len() > page.limit;
        views.truncate(page.limit);
        let next_cursor = more.then(|| views.last().map(|v| v.name.clone())).flatten();
        Paged {
            items: views,
            next_cursor,
        }
    }

    /// `leave_line`: the caller holding `wake_token` gives up its place in `name`'s line now,
    /// instead of keeping it (and, at the head, a reservation of the lock) until its grace ends.
    pub(in crate::core::engine) fn leave_line(
        &mut self,
        tx: &mut Tx,
        name: &str,
        wake_token: &str,
        reply: Reply<LeftLine>,
    ) {
        let refused = |error: &str| LeftLine {
            left: false,
            error: Some(error.to_string()),
        };
        let id = self.wake_tokens.get(wake_token).copied();
        let ticket = id.and_then(|id| self.tickets.get(&id).map(|t| (id, t)));
        let r = match ticket {
            Some((_, t)) if !t.names.iter().any(|n| n == name) => {
                refused("this wake_token holds no place in that lock's line")
            }
            Some((_, t)) if matches!(t.state, TicketState::Parked { .. }) => refused(
                "a call is waiting on this place now; it leaves the line when that call ends",
            ),
            Some((id, t)) => {
                tracing::debug!(lock = %name, agent = %t.agent_id, "left the line");
                self.remove_ticket(id);
                LeftLine {
                    left: true,
                    error: None,
                }
            }
            None => {
                refused("no place is kept for this wake_token (it was used, or its grace ended)")
            }
        };
        tx.respond(reply, Ok(r))
    }

    /// The live places in `name`'s line, first in line first.
    pub(super) fn line_view(&self, name: &str, now: Millis) -> Vec<LineView> {
        let Some(queue) = self.lock_queues.get(name) else {
            return Vec::new();
        };
        queue
            .iter()
            .filter(|&&id| self.ticket_live(id))
            .filter_map(|id| self.tickets.get(id))
            .enumerate()
            .map(|(i, t)| {
                let (state, until) = match t.state {
                    TicketState::Parked { window_end, .. } => ("parked", window_end),
                    TicketState::Grace { until } => ("grace", until),
                };
                LineView {
                    agent_id: t.agent_id.clone(),
                    position: i + 1,
                    waiting_seconds: ((now - t.since).max(0)) / 1000,
                    state: state.to_string(),
                    seconds_left: seconds_left(until, now),
                }
            })
            .collect()
    }
}
