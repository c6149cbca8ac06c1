//! Writes held for the next round trip. A write whose answer nobody reads (an upsert, a delete,
//! an update: no rows back) is not sent when the engine makes it: [`PgStore`] holds it and sends
//! it in the round trip of the next statement whose answer is needed, or of the COMMIT, ahead of
//! that statement and in order. A transaction that wrote N rows between two reads costs one round
//! trip instead of N + 1; the server runs the statements in the order they were made, so every
//! read still sees every earlier write.
//!
//! What changes is *when* a failed write is seen: at the next round trip, perhaps in a later
//! operation's call. A failure seen in the operation that made the write is that operation's, as
//! before (rolled back to its savepoint). A failure of a write made by an earlier operation
//! leaves the transaction unable to commit (that operation has been answered "done, at the
//! commit", and its savepoint is released): the store reports the transaction broken and the
//! engine fails the whole batch, answering nobody that anything happened.

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;

use tokio_postgres::types::ToSql;
use tokio_postgres::Statement;

use super::PgStore;
use crate::store::{StoreError, StoreResult};

/// A parameter of a held write: owned, since the write outlives the call that made it.
pub(super) type Param = Box<dyn ToSql + Sync + Send>;

/// A statement waiting for the next round trip.
pub(super) enum Held {
    /// `BEGIN`, `RELEASE SAVEPOINT`, `SAVEPOINT`, as one simple query.
    Simple { sql: String, step: u64 },
    /// A prepared write and its parameters; with `expect`, the rows it must change.
    Write {
        st: Statement,
        params: Vec<Param>,
        expect: Option<u64>,
        step: u64,
    },
}

impl Held {
    /// The operation (savepoint) that made it.
    fn step(&self) -> u64 {
        match self {
            Held::Simple { step, .. } | Held::Write { step, .. } => *step,
        }
    }
}

type Sending<'a> = Pin<Box<dyn Future<Output = StoreResult<()>> + 'a>>;

/// Polls every future of `first`, in order, then `last`, until all are done. tokio-postgres
/// sends a request when its future is first polled, so the requests go out in this order,
/// before any answer is awaited: one round trip for all of them.
async fn in_order<T>(
    mut first: Vec<Sending<'_>>,
    last: impl Future<Output = T>,
) -> (Vec<StoreResult<()>>, T) {
    let mut done: Vec<Option<StoreResult<()>>> = first.iter().map(|_| None).collect();
    let mut last = std::pin::pin!(last);
    let mut answer = None;
    std::future::poll_fn(|cx| {
        for (f, d) in first.iter_mut().zip(done.iter_mut()) {
            if d.is_none() {
                if let Poll::Ready(r) = f.as_mut().poll(cx) {
                    *d = Some(r);
                }
            }
        }
        if answer.is_none() {
            if let Poll::Ready(r) = last.as_mut().poll(cx) {
                answer = Some(r);
            }
        }
        if answer.is_some() && done.iter().all(Option::is_some) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await;
    let done = done.into_iter().map(|d| d.expect("polled to completion"));
    (done.collect(), answer.expect("polled to completion"))
}

impl PgStore {
    /// Holds a write for the next round trip (see the module). The deferred `BEGIN` and
    /// savepoint statements are held before it, so they keep their place. Outside a
    /// transaction the write is sent at once. With `expect`, the write must change exactly that
    /// many rows, or it fails as if the server had refused it.
    pub(super) fn defer(
        &self,
        st: &Statement,
        params: Vec<Param>,
        expect: Option<u64>,
    ) -> StoreResult<()> {
        let step = self.step.get();
        let prefix = self.take_prefix();
        let mut held = self.held.borrow_mut();
        if !prefix.is_empty() {
            held.push(Held::Simple { sql: prefix, step });
        }
        held.push(Held::Write {
            st: st.clone(),
            params,
            expect,
            step,
        });
        drop(held);
        if self.in_tx.get() {
            return Ok(());
        }
        self.run(async { Ok(()) })
    }

    /// Drops the held writes of the current operation (it is being rolled back to its
    /// savepoint: they would be undone at once).
    pub(super) fn drop_held_of_step(&self) {
        let step = self.step.get();
        self.held
            .borrow_mut()
            .retain(|h| matches!(h, Held::Simple { .. }) || h.step() != step);
    }

    /// Runs `query` after everything held, in the same round trip. A held statement's failure
    /// is reported (the first one), and if an earlier operation made it, or no operation's
    /// savepoint is open to undo it, the transaction is marked broken.
    pub(super) async fn after_held<T>(
        &self,
        held: Vec<Held>,
        query: impl Future<Output = StoreResult<T>>,
    ) -> StoreResult<T> {
        let params: Vec<Vec<&(dyn ToSql + Sync)>> = held
            .iter()
            .map(|h| match h {
                Held::Write { params, .. } => {
                    params.iter().map(|p| &**p as &(dyn ToSql + Sync)).collect()
                }
                Held::Simple { .. } => Vec::new(),
            })
            .collect();
        let sending: Vec<Sending<'_>> = held
            .iter()
            .zip(&params)
            .map(|(h, p)| -> Sending<'_> {
                match h {
                    Held::Simple { sql, .. } => Box::pin(async move {
                        self.client.batch_execute(sql).await?;
                        Ok(())
                    }),
                    Held::Write { st, expect, .. } => Box::pin(async move {
                        let changed = self.client.execute(st, p).await?;
                        match expect {
                            Some(n) if *n != changed => Err(StoreError::Other(format!(
                                "a write changed {changed} rows where it had to change {n}: \
                                 the state changed under this daemon (another writer?)"
                            ))),
                            _ => Ok(()),
                        }
                    }),
                }
            })
            .collect();
        let (sent, answer) = in_order(sending, query).await;
        let failed = held
            .iter()
            .zip(sent)
            .find_map(|(h, r)| r.err().map(|e| (h, e)));
        if let Some((h, e)) = failed {
            let own = h.step() == self.step.get() && self.savepoint_open();
            if !own {
                self.broken.set(true);
            }
            return Err(e);
        }
        answer
    }
}
