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
use crate::store::StoreResult;

/// A parameter of a held write: owned, since the write outlives the call that made it.
pub(super) type Param = Box<dyn ToSql + Sync + Send>;

/// A statement waiting for the next round trip.
pub(super) enum Held {
    /// `BEGIN`, `RELEASE SAVEPOINT`, `SAVEPOINT`, as one simple query.
    Simple { sql: String, step: u64 },
    /// A prepared write and its parameters.
    Write {
        st: Statement,
        params: Vec<Param>,
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

pub(super) type Sending<'a> = Pin<Box<dyn Future<Output = StoreResult<()>> + 'a>>;

/// Polls every future of `first`, in order, then `last`, until all are done. tokio-postgres
/// sends a request when its future is first polled, so the requests go out in this order,
/// before any answer is awaited: one round trip for all of them.
///
/// A future that fails at its first poll failed in the client, before sending (a parameter
/// that does not encode, a closed connection): the server never saw it, so nothing after it is
/// sent either (`None`), least of all a COMMIT that would make the rest durable without it.
/// Anything refused by the server aborts the transaction, so what follows it fails there.
pub(super) async fn in_order<T>(
    mut first: Vec<Sending<'_>>,
    last: impl Future<Output = T>,
) -> (Vec<Option<StoreResult<()>>>, Option<T>) {
    let mut done: Vec<Option<StoreResult<()>>> = first.iter().map(|_| None).collect();
    let mut last = std::pin::pin!(last);
    let mut answer = None;
    // How many of `first` have been polled (sent), in order.
    let mut started = 0;
    let mut stopped = false;
    std::future::poll_fn(|cx| {
        for (i, (f, d)) in first.iter_mut().zip(done.iter_mut()).enumerate() {
            let fresh = i == started;
            // Done, or not to be sent (after one that could not be).
            if d.is_some() || i > started || (fresh && stopped) {
                continue;
            }
            if let Poll::Ready(r) = f.as_mut().poll(cx) {
                stopped |= fresh && r.is_err();
                *d = Some(r);
            }
            if fresh {
                started += 1;
            }
        }
        if !stopped && started == first.len() && answer.is_none() {
            if let Poll::Ready(r) = last.as_mut().poll(cx) {
                answer = Some(r);
            }
        }
        let sent_done = done.iter().take(started).all(Option::is_some);
        if sent_done && (stopped || answer.is_some()) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await;
    (done, answer)
}

impl PgStore {
    /// Holds a write for the next round trip (see the module). The deferred `BEGIN` and
    /// savepoint statements are held before it, so they keep their place. Outside a
    /// transaction the write is sent at once. A write that must not go unnoticed when it changes
    /// nothing has to fail on the server (see `fence_advance`): its answer is read after the
    /// statements sent behind it, the COMMIT among them.
    pub(super) fn defer(&self, st: &Statement, params: Vec<Param>) -> StoreResult<()> {
        let mut held = self.held.borrow_mut();
        self.hold_prefix(&mut held);
        held.push(Held::Write {
            st: st.clone(),
            params,
            step: self.step.get(),
        });
        drop(held);
        if self.in_tx.get() {
            return Ok(());
        }
        self.run(async { Ok(()) })
    }

    /// Holds the deferred `BEGIN` and savepoint statements (`take_prefix`), if any, after
    /// `held`. A `RELEASE` among them ends the previous operation's savepoint, so the item is
    /// that operation's: its failure, or a round trip cut short with it in flight, is never
    /// taken for the current operation's (rolling back to the current savepoint would then land
    /// on the previous one and undo it).
    pub(super) fn hold_prefix(&self, held: &mut Vec<Held>) {
        let releases = self.release_pending.get();
        let sql = self.take_prefix();
        if sql.is_empty() {
            return;
        }
        let step = self.step.get() - u64::from(releases);
        held.push(Held::Simple { sql, step });
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
                    Held::Write { st, .. } => Box::pin(async move {
                        self.client.execute(st, p).await?;
                        Ok(())
                    }),
                }
            })
            .collect();
        let (sent, answer) = in_order(sending, query).await;
        let failed = held
            .iter()
            .zip(sent)
            .find_map(|(h, r)| r.and_then(Result::err).map(|e| (h, e)));
        if let Some((h, e)) = failed {
            if !self.undone_by_own_savepoint(h) {
                self.broken.set(true);
            }
            return Err(e);
        }
        answer.expect("a query not sent only after a held statement failed")
    }

    /// Whether rolling the current operation back to its savepoint undoes `h`: it is the
    /// current operation's, and that operation's savepoint is open. Otherwise a failure of `h`
    /// (or a lost answer to it) leaves a transaction that must not commit.
    pub(super) fn undone_by_own_savepoint(&self, h: &Held) -> bool {
        h.step() == self.step.get() && self.savepoint_open()
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::future::Future;
    use std::rc::Rc;

    use super::{in_order, Sending};
    use crate::store::{StoreError, StoreResult};

    /// A future that notes its first poll and then answers `answer` at once, or (`None`) stays
    /// pending for one more poll before answering `Ok`, as a request in flight does.
    fn tracked(polled: &Rc<Cell<bool>>, answer: Option<StoreResult<()>>) -> Sending<'static> {
        let polled = polled.clone();
        let mut pending = answer.is_none();
        let mut answer = answer;
        Box::pin(std::future::poll_fn(move |cx| {
            polled.set(true);
            if std::mem::take(&mut pending) {
                cx.waker().wake_by_ref();
                return std::task::Poll::Pending;
            }
            std::task::Poll::Ready(answer.take().unwrap_or(Ok(())))
        }))
    }

    fn block_on<T>(f: impl Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    /// A held statement that fails before it is sent (in the client) stops everything behind
    /// it: above all the COMMIT, which would make the rest durable without it.
    #[test]
    fn nothing_is_sent_after_a_statement_the_client_could_not_send() {
        let flags: Vec<Rc<Cell<bool>>> = (0..4).map(|_| Rc::new(Cell::new(false))).collect();
        let first = vec![
            tracked(&flags[0], None),
            tracked(
                &flags[1],
                Some(Err(StoreError::Other("does not encode".into()))),
            ),
            tracked(&flags[2], None),
        ];
        let commit = flags[3].clone();
        let (done, answer) = block_on(in_order(first, async move {
            commit.set(true);
            1
        }));
        assert!(flags[0].get() && flags[1].get());
        assert!(!flags[2].get(), "a statement after the failed one was sent");
        assert!(!flags[3].get(), "the COMMIT was sent");
        assert!(answer.is_none());
        assert!(matches!(done[0], Some(Ok(()))));
        assert!(matches!(done[1], Some(Err(_))));
        assert!(done[2].is_none());
    }

    /// Otherwise every statement is sent, in order, before any answer is awaited, then the
    /// query; and all are awaited.
    #[test]
    fn every_statement_is_sent_in_order_and_awaited() {
        let order = Rc::new(std::cell::RefCell::new(Vec::new()));
        let mut first: Vec<Sending<'static>> = Vec::new();
        for i in 0..3 {
            let order = order.clone();
            let mut sent = false;
            first.push(Box::pin(std::future::poll_fn(move |cx| {
                if !std::mem::replace(&mut sent, true) {
                    order.borrow_mut().push(i);
                    cx.waker().wake_by_ref();
                    return std::task::Poll::Pending;
                }
                std::task::Poll::Ready(Ok(()))
            })));
        }
        let last = {
            let order = order.clone();
            async move {
                order.borrow_mut().push(3);
                "answer"
            }
        };
        let (done, answer) = block_on(in_order(first, last));
        assert_eq!(*order.borrow(), [0, 1, 2, 3]);
        assert_eq!(answer, Some("answer"));
        assert!(done.iter().all(|d| matches!(d, Some(Ok(())))));
    }
}
