//! The transaction context of one step ([`Tx`]) and the outbox its answers wait in.
//!
//! Capabilities never see the engine: they see a `Tx`, which lends them the store (inside the
//! batch's transaction), the outbox, the deadline schedule and the clock, and which records the
//! step's first storage error so the engine can roll the step back to its savepoint. What a step
//! does is written to the audit history through it too ([`Tx::record`], in `history`).

use super::history::HistoryLog;
use super::{Deadline, Deadlines, Orphan, Reply};
use crate::clock::{Clock, Millis};
use crate::core::types::*;
use crate::store::{Store, StoreError, StoreResult};

// ------------------------------------------------------------ the outbox

/// Sends an answer (or, if the batch failed, that failure); false if the caller is gone.
type Deliver = Box<dyn FnOnce(Option<&CoreError>) -> bool + Send>;

/// An answer waiting for its batch's commit.
pub(super) struct Outgoing {
    pub(super) deliver: Deliver,
    /// What to release if the answer carries a grant nobody receives.
    pub(super) orphan: Option<Orphan>,
    /// Set when the step that made this answer was rolled back to its savepoint: the caller is
    /// told that failure instead, and nothing is granted.
    pub(super) failed: Option<CoreError>,
}

/// The answers of the batch, in the order they leave after the commit.
#[derive(Default)]
pub(super) struct Outbox {
    pub(super) answers: Vec<Outgoing>,
}

impl Outbox {
    /// Queues `value` for `reply`; a grant carries the `orphan` that undoes it.
    pub(super) fn push<T: Send + 'static, O: Send + 'static>(
        &mut self,
        reply: Reply<T, O>,
        value: CoreResult<T>,
        orphan: Option<Orphan>,
    ) {
        self.insert(self.answers.len(), reply, value, orphan);
    }

    pub(super) fn insert<T: Send + 'static, O: Send + 'static>(
        &mut self,
        at: usize,
        reply: Reply<T, O>,
        value: CoreResult<T>,
        orphan: Option<Orphan>,
    ) {
        let deliver: Deliver = Box::new(move |failed: Option<&CoreError>| {
            let value = match failed {
                Some(e) => Err(e.clone()),
                None => value,
            };
            reply.send(value).is_ok()
        });
        self.answers.insert(
            at,
            Outgoing {
                deliver,
                orphan,
                failed: None,
            },
        );
    }

    pub(super) fn len(&self) -> usize {
        self.answers.len()
    }

    /// The answers made since `mark` were made by a step that was rolled back: each becomes
    /// `error`, and none carries a grant any more.
    pub(super) fn fail_since(&mut self, mark: usize, error: &CoreError) {
        for out in &mut self.answers[mark..] {
            out.orphan = None;
            out.failed.get_or_insert_with(|| error.clone());
        }
    }
}

// ------------------------------------------------------------ the transaction context

/// The savepoint of the current step. It is opened just before the step's first store call,
/// so a step that never reaches the store (a cancel, a progress probe, a window that ends with
/// an answer, a line with nothing to grant) costs no `SAVEPOINT`/`RELEASE`; a step that does is
/// covered from its first statement on, exactly as if it had been opened at the step's start.
#[derive(Debug, Default)]
pub(super) enum StepSavepoint {
    /// None is to be opened: outside a step, or the batch can no longer commit.
    #[default]
    Off,
    /// To be opened before the step's first store call.
    Pending,
    /// Opened: the step's statements are undone by rolling back to it.
    Open,
    /// Opening it failed: the batch's transaction cannot commit.
    Failed(CoreError),
}

/// What one step of a batch works through: the store inside the batch's transaction, the
/// outbox, the deadline schedule and the clock. Capabilities take a `Tx` (and, when one
/// capability's change moves another's state, that capability), never the whole engine.
pub(super) struct Tx<'a> {
    pub(super) store: &'a mut dyn Store,
    pub(super) clock: &'a dyn Clock,
    pub(super) outbox: &'a mut Outbox,
    pub(super) deadlines: &'a mut Deadlines,
    /// The engine is draining: nobody is parked from now on.
    pub(super) draining: bool,
    /// The first storage error of this step: the step is rolled back to its savepoint. Once
    /// set, the step touches the store no more (on SQLite some errors end the whole transaction,
    /// and a statement run after that would commit on its own).
    pub(super) failed: &'a mut Option<CoreError>,
    /// The step's savepoint, opened by the first store call ([`Tx::db`]).
    pub(super) savepoint: &'a mut StepSavepoint,
    /// The audit history's retention and its prune count (see [`Tx::record`]).
    pub(super) history: &'a mut HistoryLog,
}

impl Tx<'_> {
    pub(super) fn now(&self) -> Millis {
        self.clock.now_ms()
    }

    /// Runs a store call; a failure is recorded (the step will roll back) and passed on. After
    /// a failure the step's further calls are refused without reaching the store.
    pub(super) fn db<T>(
        &mut self,
        f: impl FnOnce(&mut dyn Store) -> StoreResult<T>,
    ) -> CoreResult<T> {
        if let Some(e) = self.failed {
            return Err(e.clone());
        }
        if let StepSavepoint::Pending = self.savepoint {
            if let Err(e) = self.store.savepoint() {
                let e = storage(e);
                *self.savepoint = StepSavepoint::Failed(e.clone());
                *self.failed = Some(e.clone());
                return Err(e);
            }
            *self.savepoint = StepSavepoint::Open;
        }
        f(&mut *self.store).map_err(|e| {
            let e = storage(e);
            if self.failed.is_none() {
                *self.failed = Some(e.clone());
            }
            e
        })
    }

    pub(super) fn respond<T: Send + 'static, O: Send + 'static>(
        &mut self,
        reply: Reply<T, O>,
        value: CoreResult<T>,
    ) {
        self.outbox.push(reply, value, None);
    }

    /// Answers with a grant; if nobody receives it, `orphan` is released in the next batch.
    /// The grant of a forwarded call is also written beside the call's row in this transaction
    /// (see [`super::Destination`]); if that fails, so does the step, grant and all.
    pub(super) fn respond_grant<T: Send + 'static>(
        &mut self,
        reply: Reply<T>,
        value: T,
        orphan: Orphan,
    ) {
        if let Some(row) = reply.forwarded {
            let recorded = serde_json::to_string(&orphan)
                .map_err(|e| CoreError::Storage(format!("encoding a grant: {e}")))
                .and_then(|json| self.db(|s| s.record_forwarded_grant(row, &json)));
            if let Err(e) = recorded {
                self.outbox.push(reply, Err(e), None);
                return;
            }
        }
        self.outbox.push(reply, Ok(value), Some(orphan));
    }

    pub(super) fn schedule(&mut self, at: Millis, what: Deadline) {
        self.deadlines.schedule(at, what);
    }
}

pub(super) fn storage(e: StoreError) -> CoreError {
    CoreError::Storage(e.to_string())
}
