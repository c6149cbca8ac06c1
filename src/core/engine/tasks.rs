//! Tasks: rows in the store (`pending` → `claimed` → `completed` | `failed`, or back to
//! `pending`, or `dead` once `max_attempts` failures or lapsed leases are used up); parked
//! claimers in a FIFO per queue, fed by `push_task` and by requeues in the same transaction, so a
//! claimer waiting on an empty queue gets the task the moment it exists. A delayed task
//! (`delay_seconds`) is fed the same way at its `ready_at`, by a deadline, not by polling.
//!
//! A lease is checked against the store on every use (an expired lease is no lease), and its
//! expiry deadline only makes the requeue happen at the instant.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use super::history::Said;
use super::{new_token, tokens_equal, Deadline, Orphan, Reply, Tx};
use crate::clock::{seconds_left, Millis};
use crate::core::history::{HistoryKind, Why};
use crate::core::request::PushTask;
use crate::core::types::*;
use crate::store::{Finish, Lease, NewTask, TaskRow, TaskState, Values};

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

/// Leases the next ready task of `queue` to `agent_id` (one statement) and returns the claim
/// answer; `None` if no task is ready.
fn claim(
    tx: &mut Tx,
    queue: &str,
    agent_id: &str,
    lease_ms: Millis,
) -> CoreResult<Option<(ClaimOutcome, Orphan)>> {
    let now = tx.now();
    let token = new_token("ls");
    let expires_at = now + lease_ms;
    let lease = Lease {
        agent_id,
        token: &token,
        expires_at,
    };
    let Some(task) = tx.db(|s| s.task_claim_next(queue, now, &lease))? else {
        return Ok(None);
    };
    tx.record(HistoryKind::Claim, &task.queue, Said::by(agent_id, task.id))?;
    tx.schedule(expires_at, Deadline::LeaseExpiry(task.id));
    Ok(Some((
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
    )))
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
    record_task(tx, HistoryKind::Extend, &t, Said::default())?;
    tx.schedule(at, Deadline::LeaseExpiry(id));
    Ok(Extended {
        extended: true,
        lease_expires_in_seconds: Some(seconds_left(at, now)),
        error: None,
    })
}

pub(super) fn task_view(t: TaskRow, now: Millis) -> TaskView {
    let leased = t.state == TaskState::Claimed;
    let ready_in_seconds = match (t.state, t.ready_at) {
        (TaskState::Pending, Some(at)) if at > now => Some(seconds_left(at, now)),
        _ => None,
    };
    TaskView {
        ready_in_seconds,
        max_attempts: t.max_attempts,
        unique_key: t.unique_key,
        last_error: t.last_error,
        result: t.result,
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

/// One page of a queue's (or every queue's) tasks, in id order, in one state or all; the page
/// stops once its payloads pass [`MAX_PAGE_VALUE_BYTES`].
pub(super) fn list_tasks(
    tx: &mut Tx,
    queue: Option<&str>,
    state: Option<TaskState>,
    page: &Page,
    reply: Reply<Paged<TaskView>>,
) {
    let now = tx.now();
    // `Request::check` made sure a task cursor is an id.
    let after = page.after.as_deref().and_then(|c| c.parse::<i64>().ok());
    let r = tx
        .db(|s| {
            s.task_page(
                queue,
                state,
                after,
                page.limit,
                Values::Whole,
                MAX_PAGE_VALUE_BYTES,
            )
        })
        .map(|(rows, more)| {
            let next_cursor = more
                .then(|| rows.last().map(|t| t.id.to_string()))
                .flatten();
            Paged {
                items: rows.into_iter().map(|t| task_view(t, now)).collect(),
                next_cursor,
            }
        });
    tx.respond(reply, r)
}

pub(super) fn get_task(tx: &mut Tx, id: i64, reply: Reply<GetTaskResult>) {
    let now = tx.now();
    let r = tx.db(|s| s.task_get(id)).map(|row| match row {
        Some(t) => GetTaskResult::Found {
            found: true,
            task: Box::new(task_view(t, now)),
        },
        None => GetTaskResult::Missing { found: false },
    });
    tx.respond(reply, r)
}

fn empty_queue(queue: &str) -> QueueView {
    QueueView {
        queue: queue.to_string(),
        pending: 0,
        claimed: 0,
        completed: 0,
        failed: 0,
        dead: 0,
        waiting_claimers: 0,
    }
}

/// Housekeeping: deletes tasks finished longer ago than the retention.
pub(super) fn purge_finished(tx: &mut Tx, now: Millis) -> CoreResult<()> {
    tx.db(|s| s.tasks_purge_finished(now - FINISHED_TASK_RETENTION_SECONDS * 1000))?;
    Ok(())
}

impl Tasks {
    /// Every queue with a task or a parked claimer, by name, with its tasks counted by state.
    pub(super) fn queue_views(&self, tx: &mut Tx) -> CoreResult<Vec<QueueView>> {
        let mut queues: BTreeMap<String, QueueView> = BTreeMap::new();
        for c in tx.db(|s| s.task_counts())? {
            let q = queues
                .entry(c.queue.clone())
                .or_insert_with(|| empty_queue(&c.queue));
            let n = usize::try_from(c.count).unwrap_or(0);
            match c.state {
                TaskState::Pending => q.pending += n,
                TaskState::Claimed => q.claimed += n,
                TaskState::Completed => q.completed += n,
                TaskState::Failed => q.failed += n,
                TaskState::Dead => q.dead += n,
            }
        }
        for (name, waiting) in self.waiting_claimers() {
            let q = queues
                .entry(name.clone())
                .or_insert_with(|| empty_queue(name));
            q.waiting_claimers = waiting;
        }
        Ok(queues.into_values().collect())
    }

    pub(super) fn list_queues(&self, tx: &mut Tx, reply: Reply<Vec<QueueView>>) {
        let r = self.queue_views(tx);
        tx.respond(reply, r)
    }

    pub(super) fn push_task(&mut self, tx: &mut Tx, r: PushTask, reply: Reply<Pushed>) {
        let out = self.push(tx, r);
        tx.respond(reply, out)
    }

    fn push(&mut self, tx: &mut Tx, r: PushTask) -> CoreResult<Pushed> {
        if let Some(key) = &r.unique_key {
            if let Some(t) = tx.db(|s| s.task_live_with_key(&r.queue, key))? {
                return Ok(Pushed {
                    id: t.id,
                    duplicate: true,
                });
            }
        }
        let now = tx.now();
        // Checked requests carry every default (see `Request::check`).
        let delay_ms = r.delay_seconds.unwrap_or(0) * 1000;
        let ready_at = (delay_ms > 0).then_some(now + delay_ms);
        let id = tx.db(|s| {
            s.task_insert_new(&NewTask {
                queue: &r.queue,
                payload: &r.payload,
                author: r.author.as_deref(),
                priority: r.priority.unwrap_or(0),
                now,
                ready_at,
                max_attempts: r.max_attempts,
                unique_key: r.unique_key.as_deref(),
            })
        })?;
        let by = Said {
            agent: r.author.as_deref(),
            number: Some(id),
            ..Said::default()
        };
        tx.record(HistoryKind::Push, &r.queue, by)?;
        match ready_at {
            Some(at) => tx.schedule(at, Deadline::TaskReady(id)),
            None => {
                self.to_feed.insert(r.queue);
            }
        }
        Ok(Pushed {
            id,
            duplicate: false,
        })
    }

    /// A delayed task's `ready_at` came: its queue may feed a parked claimer.
    pub(super) fn task_ready(&mut self, tx: &mut Tx, id: i64, now: Millis) -> CoreResult<()> {
        if let Some(t) = tx.db(|s| s.task_get(id))? {
            match (t.state, t.ready_at) {
                (TaskState::Pending, Some(at)) if at > now => {
                    tx.schedule(at, Deadline::TaskReady(id));
                }
                (TaskState::Pending, _) => {
                    self.to_feed.insert(t.queue);
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// `retry_task`: a dead (or failed) task goes back to pending with its attempts at zero.
    pub(super) fn retry_task(&mut self, tx: &mut Tx, id: i64, reply: Reply<Retried>) {
        let out = self.retry(tx, id).map(|error| Retried {
            retried: error.is_none(),
            error,
        });
        tx.respond(reply, out)
    }

    fn retry(&mut self, tx: &mut Tx, id: i64) -> CoreResult<Option<String>> {
        let Some(mut t) = tx.db(|s| s.task_get(id))? else {
            return Ok(Some(format!("no task with id {id}")));
        };
        if !matches!(t.state, TaskState::Dead | TaskState::Failed) {
            return Ok(Some(format!(
                "task {id} is {}; only a dead or failed task can be retried",
                t.state.as_str()
            )));
        }
        if let Some(key) = &t.unique_key {
            if let Some(live) = tx.db(|s| s.task_live_with_key(&t.queue, key))? {
                return Ok(Some(format!(
                    "task {} of the same queue has unique_key {key:?} and is {}; retry this one \
                     after it finishes",
                    live.id,
                    live.state.as_str()
                )));
            }
        }
        t.attempts = 0;
        t.finished_at = None;
        t.ready_at = None;
        tracing::info!(task = id, queue = %t.queue, "retried");
        record_task(tx, HistoryKind::Retry, &t, Said::default())?;
        self.requeue(tx, t)?;
        Ok(None)
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
        match claim(tx, &queue, &agent_id, lease_ms) {
            Err(e) => tx.respond(reply, Err(e)),
            Ok(Some((out, orphan))) => tx.respond_grant(reply, out, orphan),
            Ok(None) if wait_ms == 0 || tx.draining => {
                tx.respond(reply, Ok(ClaimOutcome::Empty { claimed: false }))
            }
            Ok(None) => {
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
            let head = waiters.front().expect("checked non-empty");
            let claimed = claim(tx, queue, &head.agent_id, head.lease_ms);
            if let Ok(None) = claimed {
                return Ok(());
            }
            let w = self
                .claim_waiters
                .get_mut(queue)
                .and_then(|q| q.pop_front())
                .expect("checked non-empty");
            self.claim_calls.remove(&w.call);
            // Out of its queue now: answered whatever happens (the error rolls the step back).
            match claimed {
                Ok(Some((out, orphan))) => tx.respond_grant(w.reply, out, orphan),
                Ok(None) => unreachable!("returned above"),
                Err(e) => {
                    tx.respond(w.reply, Err(e.clone()));
                    return Err(e);
                }
            }
        }
    }

    /// Feeds every queue an operation may have given a task. On a storage error the step is
    /// rolled back, so the queue keeps its mark and is fed in a later step.
    pub(super) fn feed_all(&mut self, tx: &mut Tx) {
        while let Some(queue) = self.to_feed.pop_first() {
            if let Err(e) = self.feed_claimers(tx, &queue) {
                tracing::error!(queue = %queue, error = %e, "could not hand a task to a waiting claimer");
                self.to_feed.insert(queue);
                return;
            }
        }
    }

    /// Whether some queue may have a task for a parked claimer.
    pub(super) fn has_work(&self) -> bool {
        !self.to_feed.is_empty()
    }

    /// After a rollback: a lease that was undone left its task pending, so every queue with
    /// parked claimers is looked at again.
    pub(super) fn mark_all(&mut self) {
        self.to_feed.extend(self.claim_waiters.keys().cloned());
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

    /// An attempt at `task` failed (`why`: `fail_task` with requeue, a lapsed lease, a claimant
    /// gone): `error` is kept as its last error, and it goes back to pending, or to `dead` if it
    /// has used up its `max_attempts`.
    fn attempt_failed(
        &mut self,
        tx: &mut Tx,
        mut task: TaskRow,
        why: Why,
        error: String,
    ) -> CoreResult<()> {
        // Only a failure says something of its own: a lapse's error repeats its reason.
        let said = Said::default()
            .because(why)
            .saying((why == Why::Failed).then_some(error.as_str()));
        let dead = task.max_attempts.is_some_and(|max| task.attempts >= max);
        let kind = if dead {
            HistoryKind::Dead
        } else {
            HistoryKind::Requeue
        };
        record_task(tx, kind, &task, said)?;
        task.last_error = Some(error);
        if dead {
            tracing::info!(task = task.id, queue = %task.queue, attempts = task.attempts, "dead: attempts used up");
            task.state = TaskState::Dead;
            task.lease_agent = None;
            task.lease_token = None;
            task.lease_expires_at = None;
            tx.db(|s| s.task_update(&task))?;
            return Ok(());
        }
        self.requeue(tx, task)
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
                record_task(
                    tx,
                    HistoryKind::Requeue,
                    &t,
                    Said::default().because(Why::Orphan),
                )?;
                self.requeue(tx, t)?;
            }
        }
        Ok(())
    }

    /// `agent_id` is gone (`why`): every task it leased goes back to pending.
    pub(super) fn requeue_leased_by(
        &mut self,
        tx: &mut Tx,
        agent_id: &str,
        why: Why,
    ) -> CoreResult<()> {
        for t in tx.db(|s| s.tasks_leased_by(agent_id))? {
            tracing::info!(task = t.id, agent = %agent_id, "requeued: its claimant is gone");
            self.attempt_failed(tx, t, why, format!("its claimant {agent_id} went away"))?;
        }
        Ok(())
    }

    /// The lease's expiry deadline: requeues the task if the lease is due, else re-arms.
    pub(super) fn expire_lease(&mut self, tx: &mut Tx, id: i64, now: Millis) -> CoreResult<()> {
        if let Some(t) = tx.db(|s| s.task_get(id))? {
            match (t.state, t.lease_expires_at) {
                (TaskState::Claimed, Some(at)) if at <= now => {
                    tracing::info!(task = id, "lease expired; requeued");
                    self.attempt_failed(tx, t, Why::Ttl, "the lease expired".into())?;
                }
                (TaskState::Claimed, Some(at)) => {
                    tx.schedule(at, Deadline::LeaseExpiry(id));
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Completes (keeping `note` as the result), fails for good, or requeues a leased task
    /// (keeping `note` as the last error). `Ok(Some(reason))` if refused.
    fn finish_task(
        &mut self,
        tx: &mut Tx,
        id: i64,
        lease_token: &str,
        to: TaskState,
        note: Option<String>,
    ) -> CoreResult<Option<String>> {
        let finish = match to {
            TaskState::Pending => {
                let t = match leased_task(tx, id, lease_token)? {
                    Ok(t) => t,
                    Err(reason) => return Ok(Some(reason)),
                };
                let error = note.unwrap_or_else(|| "failed (no error given)".into());
                self.attempt_failed(tx, t, Why::Failed, error)?;
                return Ok(None);
            }
            TaskState::Completed => Finish::Completed,
            _ => Finish::Failed,
        };
        // One statement when the lease is good; when it is not, nothing changed and the task
        // is read to say why.
        let now = tx.now();
        if let Some(done) =
            tx.db(|s| s.task_finish(id, lease_token, now, finish, note.as_deref()))?
        {
            let said = Said {
                agent: done.agent_id.as_deref(),
                number: Some(id),
                ..Said::default()
            };
            match finish {
                Finish::Completed => tx.record(HistoryKind::Complete, &done.queue, said)?,
                Finish::Failed => {
                    let said = said.saying(note.as_deref());
                    tx.record(HistoryKind::Fail, &done.queue, said)?
                }
            }
            return Ok(None);
        }
        Ok(Some(match leased_task(tx, id, lease_token)? {
            Err(reason) => reason,
            Ok(_) => "lease_token is not the current lease of this task".into(),
        }))
    }

    pub(super) fn complete_task(
        &mut self,
        tx: &mut Tx,
        id: i64,
        lease_token: &str,
        result: Option<String>,
        reply: Reply<Completed>,
    ) {
        let r = self
            .finish_task(tx, id, lease_token, TaskState::Completed, result)
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
        error: Option<String>,
        reply: Reply<Failed>,
    ) {
        let to = if requeue {
            TaskState::Pending
        } else {
            TaskState::Failed
        };
        let r = self
            .finish_task(tx, id, lease_token, to, error)
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

/// Records what happened to `task`, by the agent that leases it (if any).
fn record_task(tx: &mut Tx, kind: HistoryKind, task: &TaskRow, said: Said) -> CoreResult<()> {
    let said = Said {
        agent: task.lease_agent.as_deref(),
        number: Some(task.id),
        ..said
    };
    tx.record(kind, &task.queue, said)
}
