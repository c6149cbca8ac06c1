//! Locks: the lock row in the store is the truth; the line of waiters is in memory.
//!
//! A waiter holds a [`Ticket`], a place in line for one lock (or, for `lock_resources`, for a
//! set of locks at once, standing in every one of their lines). A ticket is *parked* (a call
//! waits on it) or in *grace* (its call timed out with a `wake_token`; its place is kept for
//! [`WAKE_GRACE_SECONDS`]). [`Locks::pump_lock`] grants the head ticket when it is parked, first
//! in every line it stands in, and each of its names is free — in the same transaction as the
//! release that freed it, so no newcomer can slip in between release and take. A ticket in grace
//! at the head reserves the lock for its caller's return.
//!
//! A caller who went away is skipped (its ticket is dropped when it reaches the head), and a
//! grant whose answer could not be delivered is released in the next batch ([`Locks::release_orphan`]).

mod lines;

use std::collections::{BTreeSet, HashMap, VecDeque};

use super::lock_rows::{grant, grant_set, grant_single, live_lock, proof_matches, refresh, renew};
use super::{new_token, tokens_equal, Deadline, Orphan, Reply, Tx, WaitProgress};
use crate::clock::{seconds_left, Millis};
use crate::core::types::*;
use crate::store::LockRow;

/// The reply channel of a parked lock call.
enum LockWaiter {
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

enum TicketState {
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
struct Ticket {
    wake_token: String,
    agent_id: String,
    /// Sorted, distinct.
    names: Vec<String>,
    ttl_ms: Millis,
    wait_seconds: i64,
    /// When it joined the line (for the views).
    since: Millis,
    state: TicketState,
}

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
    /// Whether ticket `id` still holds a place: a parked call whose caller is there, or a place
    /// kept between two windows.
    fn ticket_live(&self, id: u64) -> bool {
        match self.tickets.get(&id).map(|t| &t.state) {
            Some(TicketState::Parked { waiter, .. }) => !waiter.is_closed(),
            Some(TicketState::Grace { .. }) => true,
            None => false,
        }
    }

    /// Removes tickets whose parked caller is gone from the front of `name`'s line.
    fn line_head(&mut self, name: &str) -> Option<u64> {
        loop {
            let head = *self.lock_queues.get(name)?.front()?;
            if self.ticket_live(head) {
                return Some(head);
            }
            self.remove_ticket(head);
        }
    }

    /// Takes a ticket out of every line it stands in; those lines may now move.
    fn remove_ticket(&mut self, id: u64) -> Option<Ticket> {
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
    fn line_len(&self, name: &str) -> usize {
        self.lock_queues
            .get(name)
            .map_or(0, |q| q.iter().filter(|&&id| self.ticket_live(id)).count())
    }

    /// 1-based place of ticket `id` in `name`'s line, counting only live tickets.
    fn line_position(&self, name: &str, id: u64) -> Option<usize> {
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

    /// Who stands between a caller and `name`: the holder, or the queued agent it is
    /// reserved for; with the seconds until that changes.
    fn blocker(&mut self, tx: &mut Tx, name: &str) -> CoreResult<(Option<String>, i64)> {
        let now = tx.now();
        if let Some(l) = live_lock(tx, name)? {
            return Ok((Some(l.agent_id), seconds_left(l.expires_at, now)));
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
        Ok((None, 0))
    }

    /// Stands a new ticket at the back of every line of `names` and schedules its window.
    #[allow(clippy::too_many_arguments)]
    fn enqueue(
        &mut self,
        tx: &mut Tx,
        call: u64,
        names: Vec<String>,
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

    #[allow(clippy::too_many_arguments)]
    pub(super) fn lock_resource(
        &mut self,
        tx: &mut Tx,
        call: u64,
        name: String,
        agent_id: String,
        ttl_ms: Millis,
        wait_ms: Millis,
        wake_token: Option<String>,
        reply: Reply<LockOutcome>,
    ) {
        let r =
            self.lock_resource_inner(tx, call, name, agent_id, ttl_ms, wait_ms, wake_token, reply);
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
        let held = tr!(live_lock(tx, &name));
        if let Some(row) = held.clone().filter(|l| l.agent_id == agent_id) {
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

        if held.is_none() && self.line_head(&name).is_none() {
            let granted = tr!(grant(tx, &agent_id, std::slice::from_ref(&name), ttl_ms));
            let (name, token, fence) = granted.into_iter().next().expect("one name granted");
            let out = LockOutcome::Granted {
                locked: true,
                lock_token: token.clone(),
                expires_in_seconds: seconds_left(now + ttl_ms, now),
                fence,
                fresh: true,
            };
            tx.respond_grant(reply, out, Orphan::Locks(vec![(name, token)]));
            return Ok(());
        }

        if wait_ms == 0 {
            let (held_by, expires_in_seconds) = tr!(self.blocker(tx, &name));
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
        self.enqueue(tx, call, vec![name], agent_id, ttl_ms, wait_ms, waiter, now);
        Ok(())
    }

    /// The place `agent_id` keeps in `name`'s line between two windows (a single-name ticket
    /// in its grace), if any.
    fn kept_place(&self, name: &str, agent_id: &str) -> Option<u64> {
        self.lock_queues.get(name)?.iter().copied().find(|id| {
            self.tickets.get(id).is_some_and(|t| {
                matches!(t.state, TicketState::Grace { .. })
                    && t.agent_id == agent_id
                    && t.names.len() == 1
            })
        })
    }

    /// The `locked:false` answer for a caller standing in line with ticket `id` (if any).
    fn contended_answer(
        &mut self,
        tx: &mut Tx,
        name: &str,
        id: Option<u64>,
    ) -> CoreResult<LockOutcome> {
        let (held_by, expires_in_seconds) = self.blocker(tx, name)?;
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
        agent_id: String,
        ttl_ms: Millis,
        wait_ms: Millis,
        reply: Reply<LockSetOutcome>,
    ) {
        let wait_ms = if tx.draining { 0 } else { wait_ms };
        match self.set_grantable_now(tx, &names, &agent_id) {
            Err(e) => tx.respond(reply, Err(e)),
            Ok(Ok(())) => match grant_set(tx, &agent_id, &names, ttl_ms) {
                Ok((out, orphan)) => tx.respond_grant(reply, out, orphan),
                Err(e) => tx.respond(reply, Err(e)),
            },
            Ok(Err(contended)) if wait_ms == 0 => {
                let r = self.set_contended_answer(tx, contended);
                tx.respond(reply, r);
            }
            Ok(Err(_)) => {
                let now = tx.now();
                let waiter = LockWaiter::Set(reply);
                self.enqueue(tx, call, names, agent_id, ttl_ms, wait_ms, waiter, now);
            }
        }
    }

    /// Whether a caller with no place in line may take every name now: each free (or already
    /// the caller's) with nobody waiting. `Err(name)` names the first that is not.
    fn set_grantable_now(
        &mut self,
        tx: &mut Tx,
        names: &[String],
        agent_id: &str,
    ) -> CoreResult<Result<(), String>> {
        for n in names {
            match live_lock(tx, n)? {
                Some(l) if l.agent_id == agent_id => continue,
                Some(_) => return Ok(Err(n.clone())),
                None => {
                    if self.line_head(n).is_some() {
                        return Ok(Err(n.clone()));
                    }
                }
            }
        }
        Ok(Ok(()))
    }

    fn set_contended_answer(
        &mut self,
        tx: &mut Tx,
        contended: String,
    ) -> CoreResult<LockSetOutcome> {
        let (held_by, expires_in_seconds) = self.blocker(tx, &contended)?;
        Ok(LockSetOutcome::Contended {
            locked: false,
            held_by,
            contended,
            expires_in_seconds,
        })
    }

    /// Moves `name`'s line: grants the head ticket if it is parked and every one of its names
    /// is either already its agent's or free with the ticket first in that name's line.
    fn pump_lock(&mut self, tx: &mut Tx, name: &str) -> CoreResult<()> {
        let Some(head) = self.line_head(name) else {
            return Ok(());
        };
        let (names, agent_id, ttl_ms) = match self.tickets.get(&head) {
            Some(Ticket {
                state: TicketState::Parked { .. },
                names,
                agent_id,
                ttl_ms,
                ..
            }) => (names.clone(), agent_id.clone(), *ttl_ms),
            // Reserved for a waiter between two windows, or gone.
            _ => return Ok(()),
        };
        for n in &names {
            match live_lock(tx, n)? {
                // Already its own: keeping it needs no place in that name's line (waiting there
                // behind callers who wait for it would never end).
                Some(l) if l.agent_id == agent_id => {}
                Some(_) => return Ok(()),
                None => {
                    if self.line_head(n) != Some(head) {
                        return Ok(());
                    }
                }
            }
        }
        let ticket = self.remove_ticket(head).expect("head ticket exists");
        let TicketState::Parked { waiter, .. } = ticket.state else {
            unreachable!("checked parked above")
        };
        // The ticket is out of line now: its caller is answered whatever happens, with the
        // storage error if the grant cannot be written (the step is then rolled back).
        match waiter {
            LockWaiter::Single(reply) => match grant_single(tx, name, &names, &agent_id, ttl_ms) {
                Ok((out, orphan)) => tx.outbox.push(reply, Ok(out), orphan),
                Err(e) => {
                    tx.respond(reply, Err(e.clone()));
                    return Err(e);
                }
            },
            LockWaiter::Set(reply) => match grant_set(tx, &agent_id, &names, ttl_ms) {
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

    /// Whether some line may be able to move.
    pub(super) fn has_work(&self) -> bool {
        !self.to_pump.is_empty()
    }

    /// After a rollback: a grant that was undone left its line unmoved, so every line is
    /// looked at again.
    pub(super) fn mark_all(&mut self) {
        self.to_pump.extend(self.lock_queues.keys().cloned());
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

    fn unlock(&mut self, tx: &mut Tx, name: &str, proof: &HolderProof) -> CoreResult<Released> {
        let Some(row) = live_lock(tx, name)? else {
            return Ok(Released {
                released: false,
                error: Some("the lock is not held (it may have expired)".into()),
            });
        };
        if let Err(error) = proof_matches(&row, proof) {
            return Ok(Released {
                released: false,
                error: Some(error),
            });
        }
        tx.db(|s| s.lock_delete(name))?;
        tracing::info!(lock = %name, agent = %row.agent_id, fence = row.fence, "released: unlocked");
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

    /// One page of the locks held now, in name order, with the length of each line.
    pub(super) fn list_locks(&mut self, tx: &mut Tx, page: &Page, reply: Reply<Paged<LockView>>) {
        let r = self.lock_page(tx, page);
        tx.respond(reply, r)
    }

    pub(super) fn lock_page(&mut self, tx: &mut Tx, page: &Page) -> CoreResult<Paged<LockView>> {
        let now = tx.now();
        let (rows, more) = tx.db(|s| s.lock_page(now, page.after.as_deref(), page.limit))?;
        let items = rows.into_iter().map(|l| self.view(l, now)).collect();
        // Free locks kept for the head of their line join the page in name order.
        Ok(self.with_reserved(page, items, more, now))
    }

    fn view(&self, l: LockRow, now: Millis) -> LockView {
        LockView {
            waiters: self.line_len(&l.name),
            line: self.line_view(&l.name, now),
            expires_in_seconds: seconds_left(l.expires_at, now),
            name: l.name,
            agent_id: Some(l.agent_id),
            fence: Some(l.fence),
            reserved_for: None,
            reserved_for_seconds: None,
        }
    }

    /// Releases undelivered grants that are still held with the token they were granted with.
    pub(super) fn release_orphan(
        &mut self,
        tx: &mut Tx,
        grants: Vec<(String, String)>,
    ) -> CoreResult<()> {
        grants.into_iter().try_for_each(|(name, token)| {
            if let Some(row) = live_lock(tx, &name)? {
                if tokens_equal(&row.token, &token) {
                    tracing::info!(lock = %name, "released: its caller went away (orphan)");
                    tx.db(|s| s.lock_delete(&name))?;
                    self.to_pump.insert(name);
                }
            }
            Ok(())
        })
    }

    /// `agent_id` is gone: releases the locks it holds and drops the places it kept in line.
    pub(super) fn release_agent(&mut self, tx: &mut Tx, agent_id: &str) -> CoreResult<()> {
        for l in tx.db(|s| s.locks_held_by(agent_id))? {
            tx.db(|s| s.lock_delete(&l.name))?;
            tracing::info!(lock = %l.name, agent = %agent_id, "released: its holder is gone");
            self.to_pump.insert(l.name);
        }
        Ok(())
    }

    /// Places `agent_id` kept in line between two windows: nobody will come back for them, and
    /// a freed lock must not sit reserved for them until their grace runs out.
    pub(super) fn drop_kept_places(&mut self, agent_id: &str) {
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

    /// The lock's expiry deadline: deletes the row if it is due, else re-arms at its expiry.
    pub(super) fn expire(&mut self, tx: &mut Tx, name: String, now: Millis) -> CoreResult<()> {
        if let Some(l) = tx.db(|s| s.lock_get(&name))? {
            if l.expires_at <= now {
                tx.db(|s| s.lock_delete(&name))?;
                tracing::info!(lock = %name, agent = %l.agent_id, "expired");
                self.to_pump.insert(name);
            } else {
                tx.schedule(l.expires_at, Deadline::LockExpiry(name));
            }
        }
        Ok(())
    }

    /// The caller of parked call `call` went away; true if it was a lock call.
    pub(super) fn cancel(&mut self, call: u64) -> bool {
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
                self.remove_ticket(id);
                let contended = names
                    .iter()
                    .find(|n| live_lock(tx, n).ok().flatten().is_some() || self.line_len(n) > 0)
                    .cloned()
                    .unwrap_or_else(|| names[0].clone());
                let r = self.set_contended_answer(tx, contended);
                tx.respond(reply, r);
            }
        }
    }

    /// A ticket's grace ended: its place is given up.
    pub(super) fn end_grace(&mut self, id: u64, now: Millis) {
        let due = matches!(
            self.tickets.get(&id).map(|t| &t.state),
            Some(TicketState::Grace { until }) if *until <= now
        );
        if due {
            self.remove_ticket(id);
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
        let Some(name) = self.tickets.get(&id).map(|t| t.names[0].clone()) else {
            return Some(Ok(None));
        };
        Some(self.blocker(tx, &name).map(|(held_by, _)| {
            Some(WaitProgress {
                queue_position: self.line_position(&name, id),
                held_by,
            })
        }))
    }

    /// For tests: how many lock tickets are held in memory.
    #[cfg(test)]
    pub(super) fn ticket_count(&self) -> usize {
        self.tickets.len()
    }
}
