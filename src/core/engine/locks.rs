//! Locks: the holder rows in the store are the truth; the line of waiters is in memory
//! ([`line`]: tickets, places, wake tokens; this file: granting and releasing).
//!
//! A lock name has holders: one exclusive holder, or any number of shared ones, or at most
//! `limit` (a semaphore, whose holders are shared); each holder has its own token and fence.
//! A waiter holds a [`Ticket`], a place in line for one lock (or, for `lock_resources`, for a
//! set of locks at once, standing in every one of their lines), with the mode it asks for each.
//! A ticket is *parked* (a call waits on it) or in *grace* (its call timed out with a
//! `wake_token`; its place is kept for [`WAKE_GRACE_SECONDS`]). [`Locks::pump_lock`] grants the
//! head ticket when it is parked, first in every line it stands in, and each of its names
//! admits it beside the holders there — in the same transaction as the release that freed it,
//! so no newcomer can slip in between release and take. The grant marks the line again, so the
//! next head is granted too when it can share (readers behind a reader); an exclusive head
//! stops the line for everyone behind it (strict FIFO: writers never starve). A newcomer is
//! granted at once only when nobody is in line. A ticket in grace at the head reserves the lock
//! for its caller's return.
//!
//! A caller who went away is skipped (its ticket is dropped when it reaches the head), and a
//! grant whose answer could not be delivered is released in the next batch ([`Locks::release_orphan`]).

mod line;
mod lines;

use std::collections::{BTreeSet, HashMap, VecDeque};

use super::history::Said;
use super::lock_rows::{
    admits, find_holder, first_to_expire, grant, grant_set, grant_single, live_holders, refresh,
    renew,
};
use super::{Deadline, Orphan, Reply, Tx, WaitProgress};
use crate::clock::{seconds_left, Millis};
use crate::core::history::{HistoryKind, Why};
use crate::core::types::*;
use crate::store::LockRow;
use line::{set_name_contended, LockWaiter, Ticket, TicketState};

/// The lines of waiters for every lock, and what may move them.
pub(super) struct Locks {
    tickets: HashMap<u64, Ticket>,
    /// Lock name → ticket ids in arrival order.
    lock_queues: HashMap<String, VecDeque<u64>>,
    wake_tokens: HashMap<String, u64>,
    /// Parked call id → its ticket (a ticket outlives the calls that wait on it).
    ticket_calls: HashMap<u64, u64>,
    next_ticket: u64,
    /// Lock names whose line may be able to move.
    to_pump: BTreeSet<String>,
}

impl Default for Locks {
    fn default() -> Self {
        Locks {
            tickets: HashMap::new(),
            lock_queues: HashMap::new(),
            wake_tokens: HashMap::new(),
            ticket_calls: HashMap::new(),
            next_ticket: 1,
            to_pump: BTreeSet::new(),
        }
    }
}

impl Locks {
    /// Who stands between a caller asking `mode` and `name`: a holder it cannot share with (the
    /// first to expire), else the agent at the head of the line (waiting, or the one the lock is
    /// reserved for), else a holder; with the seconds until that changes.
    fn blocker(
        &mut self,
        tx: &mut Tx,
        name: &str,
        mode: LockMode,
    ) -> CoreResult<(Option<String>, i64)> {
        let now = tx.now();
        let holders = live_holders(tx, name)?;
        let first = first_to_expire(&holders).map(|h| (h.agent_id.clone(), h.expires_at));
        if !admits(&holders, mode) {
            if let Some((agent, at)) = first {
                return Ok((Some(agent), seconds_left(at, now)));
            }
        }
        if let Some(head) = self.line_head(name) {
            if let Some(t) = self.tickets.get(&head) {
                let until = match t.state {
                    TicketState::Grace { until } => until,
                    TicketState::Parked { window_end, .. } => window_end,
                };
                return Ok((Some(t.agent_id.clone()), seconds_left(until, now)));
            }
        }
        Ok(match first {
            Some((agent, at)) => (Some(agent), seconds_left(at, now)),
            None => (None, 0),
        })
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn lock_resource(
        &mut self,
        tx: &mut Tx,
        call: u64,
        name: String,
        mode: LockMode,
        agent_id: String,
        ttl_ms: Millis,
        wait_ms: Millis,
        wake_token: Option<String>,
        reply: Reply<LockOutcome>,
    ) {
        let r = self.lock_resource_inner(
            tx, call, name, mode, agent_id, ttl_ms, wait_ms, wake_token, reply,
        );
        if let Err((reply, e)) = r {
            tx.respond(reply, Err(e));
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn lock_resource_inner(
        &mut self,
        tx: &mut Tx,
        call: u64,
        name: String,
        mode: LockMode,
        agent_id: String,
        ttl_ms: Millis,
        wait_ms: Millis,
        wake_token: Option<String>,
        reply: Reply<LockOutcome>,
    ) -> Result<(), (Reply<LockOutcome>, CoreError)> {
        let now = tx.now();
        let wait_ms = if tx.draining { 0 } else { wait_ms };
        macro_rules! tr {
            ($e:expr) => {
                match $e {
                    Ok(v) => v,
                    Err(e) => return Err((reply, e)),
                }
            };
        }
        let holders = tr!(live_holders(tx, &name));
        tr!(self.check_mode(&name, mode, &holders, &agent_id));
        if let Some(row) = holders.iter().find(|l| l.agent_id == agent_id).cloned() {
            // Idempotent re-acquire: a caller that lost its answer may ask again safely.
            let row = tr!(refresh(tx, row, ttl_ms));
            if let Some(id) = wake_token
                .as_ref()
                .and_then(|t| self.wake_tokens.get(t))
                .copied()
            {
                self.remove_ticket(id);
            }
            let out = LockOutcome::Granted {
                locked: true,
                lock_token: row.token,
                expires_in_seconds: seconds_left(row.expires_at, now),
                fence: row.fence,
                fresh: false,
                expires_at: row.expires_at,
            };
            tx.respond(reply, Ok(out));
            return Ok(());
        }

        // Coming back with a wake token: stand in the old place again.
        let returning = wake_token
            .as_ref()
            .and_then(|t| self.wake_tokens.get(t).copied())
            .filter(|id| {
                self.tickets.get(id).is_some_and(|t| {
                    t.agent_id == agent_id && t.names.len() == 1 && t.names[0] == name
                })
            })
            // Coming back without it (a client that simply repeats its call): the agent's own
            // place kept for the grace is still its place. Otherwise it would stand in line
            // twice and the free lock would sit reserved for a place nobody comes back to.
            .or_else(|| self.kept_place(&name, &agent_id));
        if let Some(id) = returning {
            if let Some(t) = self.tickets.get_mut(&id) {
                let old = std::mem::replace(
                    &mut t.state,
                    TicketState::Parked {
                        call,
                        waiter: LockWaiter::Single(reply),
                        window_end: now + wait_ms,
                    },
                );
                t.ttl_ms = ttl_ms;
                t.wait_seconds = wait_ms / 1000;
                t.modes = vec![mode];
                if let TicketState::Parked {
                    call: old_call,
                    waiter,
                    ..
                } = old
                {
                    // A second call on the same token replaces the first, which is answered now.
                    self.ticket_calls.remove(&old_call);
                    if let LockWaiter::Single(old_reply) = waiter {
                        let out = self.contended_answer(tx, &name, Some(id));
                        tx.respond(old_reply, out);
                    }
                }
            }
            self.ticket_calls.insert(call, id);
            tx.schedule(now + wait_ms, Deadline::TicketWindow(id));
            self.to_pump.insert(name);
            return Ok(());
        }

        if self.line_head(&name).is_none() && admits(&holders, mode) {
            let (expires_at, granted) = tr!(grant(tx, &agent_id, &[(name.clone(), mode)], ttl_ms));
            let (name, token, fence) = granted.into_iter().next().expect("one name granted");
            let out = LockOutcome::Granted {
                locked: true,
                lock_token: token.clone(),
                expires_in_seconds: seconds_left(now + ttl_ms, now),
                fence,
                fresh: true,
                expires_at,
            };
            tx.respond_grant(reply, out, Orphan::Holds(vec![(name, token, expires_at)]));
            return Ok(());
        }

        if wait_ms == 0 {
            let (held_by, expires_in_seconds) = tr!(self.blocker(tx, &name, mode));
            let out = LockOutcome::Contended {
                locked: false,
                held_by,
                expires_in_seconds,
                wake_token: None,
                queue_position: None,
                retry_with: None,
            };
            tx.respond(reply, Ok(out));
            return Ok(());
        }

        let waiter = LockWaiter::Single(reply);
        self.enqueue(
            tx,
            call,
            vec![name],
            vec![mode],
            agent_id,
            ttl_ms,
            wait_ms,
            waiter,
            now,
        );
        Ok(())
    }

    /// The `locked:false` answer for a caller standing in line with ticket `id` (if any).
    fn contended_answer(
        &mut self,
        tx: &mut Tx,
        name: &str,
        id: Option<u64>,
    ) -> CoreResult<LockOutcome> {
        let mode = id
            .and_then(|id| self.tickets.get(&id))
            .map_or(LockMode::EXCLUSIVE, |t| t.mode_of(name));
        let (held_by, expires_in_seconds) = self.blocker(tx, name, mode)?;
        let ticket = id.and_then(|id| self.tickets.get(&id).map(|t| (id, t)));
        Ok(match ticket {
            Some((id, t)) => LockOutcome::Contended {
                locked: false,
                held_by,
                expires_in_seconds,
                wake_token: Some(t.wake_token.clone()),
                queue_position: self.line_position(name, id),
                retry_with: Some(RetryWith {
                    name: name.to_string(),
                    agent_id: t.agent_id.clone(),
                    ttl_seconds: t.ttl_ms / 1000,
                    wait_seconds: t.wait_seconds.max(1),
                    wake_token: t.wake_token.clone(),
                    shared: mode.shared,
                    limit: mode.limit,
                }),
            },
            None => LockOutcome::Contended {
                locked: false,
                held_by,
                expires_in_seconds,
                wake_token: None,
                queue_position: None,
                retry_with: None,
            },
        })
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn lock_resources(
        &mut self,
        tx: &mut Tx,
        call: u64,
        names: Vec<String>,
        modes: Vec<LockMode>,
        agent_id: String,
        ttl_ms: Millis,
        wait_ms: Millis,
        reply: Reply<LockSetOutcome>,
    ) {
        let wait_ms = if tx.draining { 0 } else { wait_ms };
        match self.set_grantable_now(tx, &names, &modes, &agent_id) {
            Err(e) => tx.respond(reply, Err(e)),
            Ok(Ok(())) => match grant_set(tx, &agent_id, &names, &modes, ttl_ms) {
                Ok((out, orphan)) => tx.respond_grant(reply, out, orphan),
                Err(e) => tx.respond(reply, Err(e)),
            },
            Ok(Err((contended, mode))) if wait_ms == 0 => {
                let r = self.set_contended_answer(tx, contended, mode);
                tx.respond(reply, r);
            }
            Ok(Err(_)) => {
                let now = tx.now();
                let waiter = LockWaiter::Set(reply);
                self.enqueue(
                    tx, call, names, modes, agent_id, ttl_ms, wait_ms, waiter, now,
                );
            }
        }
    }

    /// Whether a caller with no place in line may take every name now: each already the
    /// caller's, or with nobody waiting and holders it can share with. `Err(name)` names the
    /// first that is not. Every name's mode is checked first (a mismatch refuses the call).
    fn set_grantable_now(
        &mut self,
        tx: &mut Tx,
        names: &[String],
        modes: &[LockMode],
        agent_id: &str,
    ) -> CoreResult<Result<(), (String, LockMode)>> {
        let mut held = Vec::with_capacity(names.len());
        for (n, mode) in names.iter().zip(modes) {
            let holders = live_holders(tx, n)?;
            self.check_mode(n, *mode, &holders, agent_id)?;
            held.push(holders);
        }
        for ((n, mode), holders) in names.iter().zip(modes).zip(held) {
            if holders.iter().any(|l| l.agent_id == agent_id) {
                continue;
            }
            if self.line_head(n).is_some() || !admits(&holders, *mode) {
                return Ok(Err((n.clone(), *mode)));
            }
        }
        Ok(Ok(()))
    }

    fn set_contended_answer(
        &mut self,
        tx: &mut Tx,
        contended: String,
        mode: LockMode,
    ) -> CoreResult<LockSetOutcome> {
        let (held_by, expires_in_seconds) = self.blocker(tx, &contended, mode)?;
        Ok(LockSetOutcome::Contended {
            locked: false,
            held_by,
            contended,
            expires_in_seconds,
        })
    }

    /// Moves `name`'s line: grants the head ticket if it is parked and every one of its names
    /// is either already its agent's or admits it beside its holders with the ticket first in
    /// that name's line. A grant takes the ticket out of line, which marks the line again: the
    /// next head is looked at in turn (readers behind a granted reader join it).
    fn pump_lock(&mut self, tx: &mut Tx, name: &str) -> CoreResult<()> {
        let Some(head) = self.line_head(name) else {
            return Ok(());
        };
        let (names, modes, agent_id, ttl_ms) = match self.tickets.get(&head) {
            Some(Ticket {
                state: TicketState::Parked { .. },
                names,
                modes,
                agent_id,
                ttl_ms,
                ..
            }) => (names.clone(), modes.clone(), agent_id.clone(), *ttl_ms),
            // Reserved for a waiter between two windows, or gone.
            _ => return Ok(()),
        };
        for (n, mode) in names.iter().zip(&modes) {
            let holders = live_holders(tx, n)?;
            // Already its own: keeping it needs no place in that name's line (waiting there
            // behind callers who wait for it would never end).
            if holders.iter().any(|l| l.agent_id == agent_id) {
                continue;
            }
            if self.line_head(n) != Some(head) || !admits(&holders, *mode) {
                return Ok(());
            }
        }
        let ticket = self.remove_ticket(head).expect("head ticket exists");
        let TicketState::Parked { waiter, .. } = ticket.state else {
            unreachable!("checked parked above")
        };
        // The ticket is out of line now: its caller is answered whatever happens, with the
        // storage error if the grant cannot be written (the step is then rolled back).
        match waiter {
            LockWaiter::Single(reply) => {
                match grant_single(tx, name, modes[0], &agent_id, ttl_ms) {
                    // A new hold is written beside a forwarded call's row, like any grant.
                    Ok((out, Some(orphan))) => tx.respond_grant(reply, out, orphan),
                    Ok((out, None)) => tx.outbox.push(reply, Ok(out), None),
                    Err(e) => {
                        tx.respond(reply, Err(e.clone()));
                        return Err(e);
                    }
                }
            }
            LockWaiter::Set(reply) => match grant_set(tx, &agent_id, &names, &modes, ttl_ms) {
                Ok((out, orphan)) => tx.respond_grant(reply, out, orphan),
                Err(e) => {
                    tx.respond(reply, Err(e.clone()));
                    return Err(e);
                }
            },
        }
        Ok(())
    }

    /// Moves every line an operation may have unblocked. On a storage error the step is
    /// rolled back, so the line keeps its mark and moves in a later step.
    pub(super) fn pump_all(&mut self, tx: &mut Tx) {
        while let Some(name) = self.to_pump.pop_first() {
            if let Err(e) = self.pump_lock(tx, &name) {
                tracing::error!(lock = %name, error = %e, "could not hand a lock to its next waiter");
                self.to_pump.insert(name);
                return;
            }
        }
    }

    pub(super) fn unlock_resource(
        &mut self,
        tx: &mut Tx,
        name: &str,
        proof: &HolderProof,
        reply: Reply<Released>,
    ) {
        let r = self.unlock(tx, name, proof);
        tx.respond(reply, r)
    }

    /// Releases the one holder `proof` names (by token; by v1 agent id, the agent's hold, of
    /// which it has at most one per name); the other holders keep theirs.
    fn unlock(&mut self, tx: &mut Tx, name: &str, proof: &HolderProof) -> CoreResult<Released> {
        let holders = live_holders(tx, name)?;
        if holders.is_empty() {
            return Ok(Released {
                released: false,
                error: Some("the lock is not held (it may have expired)".into()),
            });
        }
        let row = match find_holder(holders, proof) {
            Ok(row) => row,
            Err(error) => {
                return Ok(Released {
                    released: false,
                    error: Some(error),
                })
            }
        };
        tx.db(|s| s.lock_delete_holder(name, &row.agent_id))?;
        released(tx, &row, Why::Unlock)?;
        self.to_pump.insert(name.to_string());
        Ok(Released {
            released: true,
            error: None,
        })
    }

    pub(super) fn renew_lock(
        &mut self,
        tx: &mut Tx,
        name: &str,
        proof: &HolderProof,
        ttl_ms: Millis,
        reply: Reply<Renewed>,
    ) {
        let r = renew(tx, name, proof, ttl_ms);
        tx.respond(reply, r)
    }

    /// One page of the locks held now, in name order, every holder of each, with the length of
    /// each line.
    pub(super) fn list_locks(&mut self, tx: &mut Tx, page: &Page, reply: Reply<Paged<LockView>>) {
        let r = self.lock_page(tx, page);
        tx.respond(reply, r)
    }

    pub(super) fn lock_page(&mut self, tx: &mut Tx, page: &Page) -> CoreResult<Paged<LockView>> {
        let now = tx.now();
        let (rows, more) = tx.db(|s| s.lock_page(now, page.after.as_deref(), page.limit))?;
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for l in &rows {
            *counts.entry(l.name.as_str()).or_default() += 1;
        }
        let items = rows
            .iter()
            .map(|l| self.view(l, counts[l.name.as_str()], now))
            .collect();
        // Free locks kept for the head of their line join the page in name order.
        Ok(self.with_reserved(page, items, more, now))
    }

    fn view(&self, l: &LockRow, holders: usize, now: Millis) -> LockView {
        LockView {
            waiters: self.line_len(&l.name),
            line: self.line_view(&l.name, now),
            expires_in_seconds: seconds_left(l.expires_at, now),
            name: l.name.clone(),
            agent_id: Some(l.agent_id.clone()),
            fence: Some(l.fence),
            mode: LockMode {
                shared: l.shared,
                limit: l.limit,
            }
            .hold_mode(),
            limit: l.limit,
            holders,
            reserved_for: None,
            reserved_for_seconds: None,
        }
    }

    /// Releases undelivered grants that are still held with the token, and the expiry, they were
    /// granted with.
    pub(super) fn release_orphan(
        &mut self,
        tx: &mut Tx,
        grants: Vec<(String, String, Option<Millis>)>,
    ) -> CoreResult<()> {
        grants
            .into_iter()
            .try_for_each(|(name, token, expires_at)| {
                let proof = HolderProof::Token(token);
                if let Ok(row) = find_holder(live_holders(tx, &name)?, &proof) {
                    // Refreshed since this grant (every refresh moves the expiry, see `refresh`):
                    // its agent was told again that it holds it, so it is not undelivered any more.
                    if expires_at.is_some_and(|at| at != row.expires_at) {
                        return Ok(());
                    }
                    tx.db(|s| s.lock_delete_holder(&name, &row.agent_id))?;
                    released(tx, &row, Why::Orphan)?;
                    self.to_pump.insert(name);
                }
                Ok(())
            })
    }

    /// `agent_id` is gone (`why`: its presence lapsed, or it unregistered): releases every
    /// hold it has (other holders of the same names keep theirs).
    pub(super) fn release_agent(
        &mut self,
        tx: &mut Tx,
        agent_id: &str,
        why: Why,
    ) -> CoreResult<()> {
        for l in tx.db(|s| s.locks_held_by(agent_id))? {
            tx.db(|s| s.lock_delete_holder(&l.name, agent_id))?;
            released(tx, &l, why)?;
            self.to_pump.insert(l.name);
        }
        Ok(())
    }

    /// The lock's expiry deadline: deletes every hold that is due, and re-arms at the next
    /// holder's expiry.
    pub(super) fn expire(&mut self, tx: &mut Tx, name: String, now: Millis) -> CoreResult<()> {
        let mut next: Option<Millis> = None;
        for l in tx.db(|s| s.lock_holders(&name))? {
            if l.expires_at <= now {
                tx.db(|s| s.lock_delete_holder(&name, &l.agent_id))?;
                released(tx, &l, Why::Ttl)?;
                self.to_pump.insert(name.clone());
            } else {
                next = Some(next.map_or(l.expires_at, |n| n.min(l.expires_at)));
            }
        }
        if let Some(at) = next {
            tx.schedule(at, Deadline::LockExpiry(name));
        }
        Ok(())
    }

    /// A lock ticket's window ended: answer `locked:false` and keep its place for the grace.
    pub(super) fn end_ticket_window(&mut self, tx: &mut Tx, id: u64, now: Millis) {
        let due = matches!(
            self.tickets.get(&id).map(|t| &t.state),
            Some(TicketState::Parked { window_end, .. }) if *window_end <= now
        ) || (tx.draining
            && matches!(
                self.tickets.get(&id).map(|t| &t.state),
                Some(TicketState::Parked { .. })
            ));
        if !due {
            return;
        }
        let until = now + WAKE_GRACE_SECONDS * 1000;
        let Some(t) = self.tickets.get_mut(&id) else {
            return;
        };
        let old = std::mem::replace(&mut t.state, TicketState::Grace { until });
        let name = t.names[0].clone();
        let TicketState::Parked { call, waiter, .. } = old else {
            return;
        };
        self.ticket_calls.remove(&call);
        match waiter {
            LockWaiter::Single(reply) => {
                tx.schedule(until, Deadline::TicketGrace(id));
                let r = self.contended_answer(tx, &name, Some(id));
                tx.respond(reply, r);
            }
            LockWaiter::Set(reply) => {
                // A set waiter has no wake token to come back with: it leaves the line.
                let names = t.names.clone();
                let modes = t.modes.clone();
                let agent_id = t.agent_id.clone();
                self.remove_ticket(id);
                let (contended, mode) = names
                    .iter()
                    .zip(&modes)
                    .find(|(n, m)| set_name_contended(self, tx, n, **m, &agent_id))
                    .map(|(n, m)| (n.clone(), *m))
                    .unwrap_or_else(|| (names[0].clone(), modes[0]));
                let r = self.set_contended_answer(tx, contended, mode);
                tx.respond(reply, r);
            }
        }
    }

    /// On drain: every parked lock call gets its timeout answer now.
    pub(super) fn end_all_windows(&mut self, tx: &mut Tx) {
        let now = tx.now();
        let parked: Vec<u64> = self
            .tickets
            .iter()
            .filter(|(_, t)| matches!(t.state, TicketState::Parked { .. }))
            .map(|(id, _)| *id)
            .collect();
        for id in parked {
            self.end_ticket_window(tx, id, now);
        }
    }

    /// Where parked call `call` stands in its line; `None` if it is not a lock call.
    pub(super) fn wait_status(
        &mut self,
        tx: &mut Tx,
        call: u64,
    ) -> Option<CoreResult<Option<WaitProgress>>> {
        let &id = self.ticket_calls.get(&call)?;
        let Some((name, mode)) = self
            .tickets
            .get(&id)
            .map(|t| (t.names[0].clone(), t.modes[0]))
        else {
            return Some(Ok(None));
        };
        Some(self.blocker(tx, &name, mode).map(|(held_by, _)| {
            Some(WaitProgress {
                queue_position: self.line_position(&name, id),
                held_by,
            })
        }))
    }
}

/// Records (and logs at `info`) the end of `row`'s hold, `why`.
fn released(tx: &mut Tx, row: &LockRow, why: Why) -> CoreResult<()> {
    tracing::info!(lock = %row.name, agent = %row.agent_id, fence = row.fence, reason = %why.as_str(), "released");
    tx.record(
        HistoryKind::Release,
        &row.name,
        Said::by(&row.agent_id, row.fence).because(why),
    )
}
