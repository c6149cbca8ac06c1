//! Tasks: rows in the store (`pending` → `claimed` → `completed` | `failed`, or back to
//! `pending`); parked claimers in a FIFO per queue, fed by `push_task` and by requeues in the
//! same transaction, so a claimer waiting on an empty queue gets the task the moment it exists.
//!
//! A lease is checked against the store on every use (an expired lease is no lease), and its
//! expiry deadline only makes the requeue happen at the instant.

use std::collections::{BTreeSet, HashMap, VecDeque};

use super::{new_token, tokens_equal, Deadline, Orphan, Reply, Tx};
use crate::clock::{seconds_left, Millis};
use crate::core::types::*;
use crate::store::{TaskRow, TaskState};

struct ClaimWaiter {
    call: u64,
    agent_id: String,
    lease_ms: Millis,
    reply: Reply<ClaimOutcome>,
    window_end: Millis,
}

/// Parked `claim_next_task` calls, and which queues may feed them.
#[derive(Default)]
pub(super) struct Tasks {
    /// Queue → its parked claimers, first come first served.
    claim_waiters: HashMap<String, VecDeque<ClaimWaiter>>,
    /// Parked call id → the queue it waits on.
    claim_calls: HashMap<u64, String>,
    /// Queues that may have a pending task for a parked claimer.
    to_feed: BTreeSet<String>,
}

/// Leases `task` to `agent_id` and returns the claim answer.
fn lease(
    tx: &mut Tx,
    mut task: TaskRow,
    agent_id: &str,
    lease_ms: Millis,
) -> CoreResult<(ClaimOutcome, Orphan)> {
    let now = tx.now();
    let token = new_token("ls");
    let expires_at = now + lease_ms;
    task.state = TaskState::Claimed;
    task.attempts += 1;
    task.lease_agent = Some(agent_id.to_string());
    task.lease_token = Some(token.clone());
    task.lease_expires_at = Some(expires_at);
    tx.db(|s| s.task_update(&task))?;
    tx.schedule(expires_at, Deadline::LeaseExpiry(task.id));
    Ok((
        ClaimOutcome::Claimed {
            claimed: true,
            id: task.id,
            payload: task.payload,
            lease_token: token.clone(),
            lease_expires_in_seconds: seconds_left(expires_at, now),
            attempts: task.attempts,
        },
        Orphan::Lease {
            id: task.id,
            lease_token: token,
        },
    ))
}

/// The task, if `lease_token` is its current, unexpired lease; else why not.
fn leased_task(tx: &mut Tx, id: i64, lease_token: &str) -> CoreResult<Result<TaskRow, String>> {
    let now = tx.now();
    let Some(t) = tx.db(|s| s.task_get(id))? else {
        return Ok(Err(format!("no task with id {id}")));
    };
    if t.state != TaskState::Claimed {
        return Ok(Err(format!(
            "task {id} is not claimed (it is {})",
            t.state.as_str()
        )));
    }
    if !t
        .lease_token
        .as_deref()
        .is_some_and(|cur| tokens_equal(cur, lease_token))
    {
        return Ok(Err(
            "lease_token is not the current lease of this task (the lease \
                       expired and the task was claimed again?)"
                .into(),
        ));
    }
    if t.lease_expires_at.is_none_or(|at| at <= now) {
        return Ok(Err("the lease has expired".into()));
    }
    Ok(Ok(t))
}

fn extend(tx: &mut Tx, id: i64, lease_token: &str, lease_ms: Millis) -> CoreResult<Extended> {
    let mut t = match leased_task(tx, id, lease_token)? {
        Ok(t) => t,
        Err(reason) => {
            return Ok(Extended {
                extended: false,
                lease_expires_in_seconds: None,
                error: Some(reason),
            })
        }
    };
    let now = tx.now();
    let at = now + lease_ms;
    t.lease_expires_at = Some(at);
    tx.db(|s| s.task_update(&t))?;
    tx.schedule(at, Deadline::LeaseExpiry(id));
    Ok(Extended {
        extended: true,
        lease_expires_in_seconds: Some(seconds_left(at, now)),
        error: None,
    })
}

pub(super) fn task_view(t: TaskRow, now: Millis) -> TaskView {
    let leased = t.state == TaskState::Claimed;
    TaskView {
        id: t.id,
        queue: t.queue,
        payload: t.payload,
        priority: t.priority,
        state: t.state.as_str().to_string(),
        author: t.author,
        attempts: t.attempts,
        lease_agent: if leased { t.lease_agent } else { None },
        lease_expires_in_seconds: if leased {
            t.lease_expires_at.map(|at| seconds_left(at, now))
        } else {
            None
        },
    }
}

pub(super) fn list_tasks(tx: &mut Tx, queue: Option<&str>, reply: Reply<Vec<TaskView>>) {
    let now = tx.now();
    let r = tx
        .db(|s| s.task_list(queue))
        .map(|rows| rows.into_iter().map(|t| task_view(t, now)).collect());
    tx.respond(reply, r)
}

/// Housekeeping: deletes tasks finished longer ago than the retention.
pub(super) fn purge_finished(tx: &mut Tx, now: Millis) -> CoreResult<()> {
    tx.db(|s| s.tasks_purge_finished(now - FINISHED_TASK_RETENTION_SECONDS * 1000))?;
    Ok(())
}

impl Tasks {
    pub(super) fn push_task(
        &mut self,
        tx: &mut Tx,
        queue: String,
        payload: String,
        author: Option<String>,
        priority: i64,
        reply: Reply<Pushed>,
    ) {
        let now = tx.now();
        let r = tx.db(|s| s.task_insert(&queue, &payload, author.as_deref(), priority, now));
        let r = r.map(|id| {
            self.to_feed.insert(queue);
            Pushed { id }
        });
        tx.respond(reply, r)
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn claim_next_task(
        &mut self,
        tx: &mut Tx,
        call: u64,
        queue: String,
        agent_id: String,
        lease_ms: Millis,
        wait_ms: Millis,
        reply: Reply<ClaimOutcome>,
    ) {
        let next = match tx.db(|s| s.task_next_pending(&queue)) {
            Ok(n) => n,
            Err(e) => return tx.respond(reply, Err(e)),
        };
        match next {
            Some(task) => match lease(tx, task, &agent_id, lease_ms) {
                Ok((out, orphan)) => tx.respond_grant(reply, out, orphan),
                Err(e) => tx.respond(reply, Err(e)),
            },
            None if wait_ms == 0 || tx.draining => {
                tx.respond(reply, Ok(ClaimOutcome::Empty { claimed: false }))
            }
            None => {
                let window_end = tx.now() + wait_ms;
                self.claim_calls.insert(call, queue.clone());
                self.claim_waiters
                    .entry(queue)
                    .or_default()
                    .push_back(ClaimWaiter {
                        call,
                        agent_id,
                        lease_ms,
                        reply,
                        window_end,
                    });
                tx.schedule(window_end, Deadline::ClaimWindow(call));
            }
        }
    }

    /// Hands pending tasks of `queue` to parked claimers, first come first served.
    fn feed_claimers(&mut self, tx: &mut Tx, queue: &str) -> CoreResult<()> {
        loop {
            let Some(waiters) = self.claim_waiters.get_mut(queue) else {
                return Ok(());
            };
            while waiters.front().is_some_and(|w| w.reply.is_closed()) {
                let w = waiters.pop_front().expect("front exists");
                self.claim_calls.remove(&w.call);
            }
            if waiters.is_empty() {
                self.claim_waiters.remove(queue);
                return Ok(());
            }
            let Some(task) = tx.db(|s| s.task_next_pending(queue))? else {
                return Ok(());
            };
            let w = self
                .claim_waiters
                .get_mut(queue)
                .and_then(|q| q.pop_front())
                .expect("checked non-empty");
            self.claim_calls.remove(&w.call);
            let (out, orphan) = lease(tx, task, &w.agent_id, w.lease_ms)?;
            tx.respond_grant(w.reply, out, orphan);
        }
    }

    /// Feeds every queue an operation may have given a task.
    pub(super) fn feed_all(&mut self, tx: &mut Tx) {
        while let Some(queue) = self.to_feed.pop_first() {
            if let Err(e) = self.feed_claimers(tx, &queue) {
                tracing::error!(queue = %queue, error = %e, "could not hand a task to a waiting claimer");
            }
        }
    }

    /// Puts `task` back to pending; its queue may now feed a parked claimer.
    fn requeue(&mut self, tx: &mut Tx, mut task: TaskRow) -> CoreResult<()> {
        task.state = TaskState::Pending;
        task.lease_agent = None;
        task.lease_token = None;
        task.lease_expires_at = None;
        tx.db(|s| s.task_update(&task))?;
        self.to_feed.insert(task.queue);
        Ok(())
    }

    /// Requeues task `id` if `lease_token` is still its lease (an undelivered claim).
    pub(super) fn requeue_if_leased(
        &mut self,
        tx: &mut Tx,
        id: i64,
        lease_token: &str,
    ) -> CoreResult<()> {
        if let Some(t) = tx.db(|s| s.task_get(id))? {
            if t.state == TaskState::Claimed && t.lease_token.as_deref() == Some(lease_token) {
                self.requeue(tx, t)?;
            }
        }
        Ok(())
    }

    /// `agent_id` is gone: every task it leased goes back to pending.
    pub(super) fn requeue_leased_by(&mut self, tx: &mut Tx, agent_id: &str) -> CoreResult<()> {
        for t in tx.db(|s| s.tasks_leased_by(agent_id))? {
            tracing::info!(task = t.id, agent = %agent_id, "requeued: its claimant is gone");
            self.requeue(tx, t)?;
        }
        Ok(())
    }

    /// The lease's expiry deadline: requeues the task if the lease is due, else re-arms.
    pub(super) fn expire_lease(&mut self, tx: &mut Tx, id: i64, now: Millis) -> CoreResult<()> {
        if let Some(t) = tx.db(|s| s.task_get(id))? {
            match (t.state, t.lease_expires_at) {
                (TaskState::Claimed, Some(at)) if at <= now => {
                    tracing::info!(task = id, "lease expired; requeued");
                    self.requeue(tx, t)?;
                }
                (TaskState::Claimed, Some(at)) => {
                    tx.schedule(at, Deadline::LeaseExpiry(id));
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Completes, fails for good, or requeues a leased task. `Ok(Some(reason))` if refused.
    fn finish_task(
        &mut self,
        tx: &mut Tx,
        id: i64,
        lease_token: &str,
        to: TaskState,
    ) -> CoreResult<Option<String>> {
        let mut t = match leased_task(tx, id, lease_token)? {
            Ok(t) => t,
            Err(reason) => return Ok(Some(reason)),
        };
        if to == TaskState::Pending {
            self.requeue(tx, t)?;
            return Ok(None);
        }
        t.state = to;
        t.lease_token = None;
        t.lease_expires_at = None;
        t.finished_at = Some(tx.now());
        tx.db(|s| s.task_update(&t))?;
        Ok(None)
    }

    pub(super) fn complete_task(
        &mut self,
        tx: &mut Tx,
        id: i64,
        lease_token: &str,
        reply: Reply<Completed>,
    ) {
        let r = self
            .finish_task(tx, id, lease_token, TaskState::Completed)
            .map(|error| Completed {
                completed: error.is_none(),
                error,
            });
        tx.respond(reply, r)
    }

    pub(super) fn fail_task(
        &mut self,
        tx: &mut Tx,
        id: i64,
        lease_token: &str,
        requeue: bool,
        reply: Reply<Failed>,
    ) {
        let to = if requeue {
            TaskState::Pending
        } else {
            TaskState::Failed
        };
        let r = self
            .finish_task(tx, id, lease_token, to)
            .map(|error| Failed {
                failed: error.is_none(),
                error,
            });
        tx.respond(reply, r)
    }

    pub(super) fn extend_lease(
        &mut self,
        tx: &mut Tx,
        id: i64,
        lease_token: &str,
        lease_ms: Millis,
        reply: Reply<Extended>,
    ) {
        let r = extend(tx, id, lease_token, lease_ms);
        tx.respond(reply, r)
    }

    /// The caller of parked call `call` went away; true if it was a claim.
    pub(super) fn cancel(&mut self, call: u64) -> bool {
        let Some(queue) = self.claim_calls.remove(&call) else {
            return false;
        };
        if let Some(q) = self.claim_waiters.get_mut(&queue) {
            q.retain(|w| w.call != call);
            if q.is_empty() {
                self.claim_waiters.remove(&queue);
            }
        }
        true
    }

    /// The window of parked claim `call` ended (or, with `force`, the engine drains): it is
    /// answered `claimed:false`.
    pub(super) fn end_claim_window(&mut self, tx: &mut Tx, call: u64, force: bool) {
        let now = tx.now();
        let Some(queue) = self.claim_calls.get(&call).cloned() else {
            return;
        };
        let Some(q) = self.claim_waiters.get_mut(&queue) else {
            return;
        };
        let Some(idx) = q
            .iter()
            .position(|w| w.call == call && (force || w.window_end <= now))
        else {
            return;
        };
        let w = q.remove(idx).expect("index in range");
        if q.is_empty() {
            self.claim_waiters.remove(&queue);
        }
        self.claim_calls.remove(&call);
        tx.respond(w.reply, Ok(ClaimOutcome::Empty { claimed: false }));
    }

    /// On drain: every parked claim gets its timeout answer now.
    pub(super) fn end_all_windows(&mut self, tx: &mut Tx) {
        let calls: Vec<u64> = self.claim_calls.keys().copied().collect();
        for call in calls {
            self.end_claim_window(tx, call, true);
        }
    }

    /// 1-based place of parked claim `call` in its queue; `None` if it is not a claim.
    pub(super) fn wait_position(&self, call: u64) -> Option<Option<usize>> {
        let queue = self.claim_calls.get(&call)?;
        Some(
            self.claim_waiters
                .get(queue)
                .and_then(|q| q.iter().position(|w| w.call == call))
                .map(|p| p + 1),
        )
    }

    /// Parked claimers per queue.
    pub(super) fn waiting_claimers(&self) -> impl Iterator<Item = (&String, usize)> {
        self.claim_waiters.iter().map(|(q, w)| (q, w.len()))
    }
}
