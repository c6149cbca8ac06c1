//! The domain core: locks, notes, counters, presence, events and tasks, with the wake-up
//! registry for parked callers and the deadline scheduler for expiries.
//!
//! It knows nothing of HTTP, MCP, JSON-RPC or SQL. [`Coordinator`] is the cheap, cloneable handle
//! the rest of the daemon uses: each method checks its input (a bad argument is refused here and
//! changes nothing), sends one command to the [`engine`] thread, and awaits the answer, which
//! arrives only after the change is committed to disk.

pub mod engine;
pub mod request;
pub mod types;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;

use crate::clock::Clock;
use crate::store::Store;
pub use engine::Orphan;
pub use engine::WaitProgress;
use engine::{Command, Engine, Op, Reply};
pub use request::{Request, Response, Tool};
pub use types::*;

/// What the request path (MCP, `GET /status`) calls: this daemon's own engine ([`Coordinator`]),
/// or, with several daemons on one database, whichever daemon coordinates it (`cluster`). The
/// MCP layer knows only this trait.
pub trait CoreApi: Send + Sync + 'static {
    /// Runs one request. Dropping the future before it finishes takes a parked call out of its
    /// line (and gives back a grant it was answered with but never read).
    fn call(
        &self,
        request: Request,
        progress: Option<ProgressFn>,
    ) -> futures::future::BoxFuture<'_, CoreResult<Response>>;

    /// Answers every parked call and stops taking work: for shutdown.
    fn drain(&self) -> futures::future::BoxFuture<'_, ()>;
}

/// A callback told, every [`PROGRESS_EVERY`], how a parked call is doing.
pub type ProgressFn = Arc<dyn Fn(WaitReport) + Send + Sync>;

/// How often a parked call reports progress (so clients with idle timeouts keep waiting).
pub const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// What a progress callback is told.
#[derive(Debug, Clone)]
pub struct WaitReport {
    pub waited_seconds: u64,
    pub window_seconds: u64,
    pub progress: Option<WaitProgress>,
}

/// The handle to the core. Clone freely.
#[derive(Clone)]
pub struct Coordinator {
    tx: mpsc::Sender<Command>,
    next_call: Arc<AtomicU64>,
}

/// Owns the engine thread; dropping every [`Coordinator`] lets it finish.
pub struct EngineThread {
    handle: std::thread::JoinHandle<()>,
}

impl EngineThread {
    /// Waits for the engine to finish its last batch.
    pub fn join(self) {
        let _ = self.handle.join();
    }
}

/// A parked call in flight. If its caller goes away before reading the answer, it leaves its
/// line at once; and if the answer had already arrived carrying a grant, the grant is released.
struct ParkedCall<T, F: Fn(&T) -> Option<Orphan>> {
    tx: mpsc::Sender<Command>,
    call: u64,
    /// `None` once the answer has been read.
    rx: Option<oneshot::Receiver<CoreResult<T>>>,
    orphan_of: F,
}

impl<T, F: Fn(&T) -> Option<Orphan>> Drop for ParkedCall<T, F> {
    fn drop(&mut self) {
        let Some(mut rx) = self.rx.take() else {
            return;
        };
        if let Ok(Ok(unread)) = rx.try_recv() {
            if let Some(orphan) = (self.orphan_of)(&unread) {
                let _ = self.tx.send(Command::Orphaned(orphan));
            }
        }
        let _ = self.tx.send(Command::Cancel(self.call));
    }
}

/// The grant a lock answer carries, to release if nobody reads it.
pub fn lock_orphan(name: String) -> impl Fn(&LockOutcome) -> Option<Orphan> {
    move |o| match o {
        LockOutcome::Granted {
            lock_token,
            fresh: true,
            ..
        } => Some(Orphan::Locks(vec![(name.clone(), lock_token.clone())])),
        _ => None,
    }
}

/// The fresh grants a `lock_resources` answer carries.
pub fn lock_set_orphan(o: &LockSetOutcome) -> Option<Orphan> {
    match o {
        LockSetOutcome::Granted { tokens, fresh, .. } => Some(Orphan::Locks(
            fresh
                .iter()
                .filter_map(|n| tokens.get(n).map(|t| (n.clone(), t.clone())))
                .collect(),
        )),
        _ => None,
    }
}

/// The lease a claim answer carries.
pub fn claim_orphan(o: &ClaimOutcome) -> Option<Orphan> {
    match o {
        ClaimOutcome::Claimed {
            id, lease_token, ..
        } => Some(Orphan::Lease {
            id: *id,
            lease_token: lease_token.clone(),
        }),
        _ => None,
    }
}

fn no_orphan<T>(_: &T) -> Option<Orphan> {
    None
}

impl Coordinator {
    /// Starts the engine thread over `store`.
    pub fn start(
        store: Box<dyn Store>,
        clock: Arc<dyn Clock>,
    ) -> CoreResult<(Coordinator, EngineThread)> {
        let engine = Engine::new(store, clock)?;
        let (tx, rx) = mpsc::channel();
        let handle = std::thread::Builder::new()
            .name("airlock-engine".into())
            .spawn(move || engine.run(rx))
            .map_err(|e| CoreError::Storage(format!("could not start the engine thread: {e}")))?;
        Ok((
            Coordinator {
                tx,
                next_call: Arc::new(AtomicU64::new(1)),
            },
            EngineThread { handle },
        ))
    }

    /// A coordinator with no engine behind it: every argument is checked exactly as in the daemon,
    /// and a call that passes the checks answers [`CoreError::ShuttingDown`]. Nothing is stored.
    /// For validating requests without a daemon (the fuzz target, tests).
    pub fn detached() -> Coordinator {
        let (tx, _rx) = mpsc::channel();
        Coordinator {
            tx,
            next_call: Arc::new(AtomicU64::new(1)),
        }
    }

    async fn send<T>(&self, make: impl FnOnce(Reply<T>) -> Op) -> CoreResult<T> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Op(make(reply)))
            .map_err(|_| CoreError::ShuttingDown)?;
        rx.await.map_err(|_| CoreError::ShuttingDown)?
    }

    /// Runs an operation that may park. If this future is dropped before the answer arrives the
    /// call leaves its line at once. While parked, `progress` (if any) hears how it is doing.
    async fn call_parked<T>(
        &self,
        window_seconds: u64,
        progress: Option<ProgressFn>,
        orphan_of: impl Fn(&T) -> Option<Orphan>,
        make: impl FnOnce(u64, Reply<T>) -> Op,
    ) -> CoreResult<T> {
        let call = self.next_call.fetch_add(1, Ordering::Relaxed);
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Op(make(call, reply)))
            .map_err(|_| CoreError::ShuttingDown)?;
        let mut guard = ParkedCall {
            tx: self.tx.clone(),
            call,
            rx: Some(rx),
            orphan_of,
        };
        let rx = guard.rx.as_mut().expect("just set");
        let started = tokio::time::Instant::now();
        let result = match progress {
            None => rx.await,
            Some(report) => {
                let mut ticker = tokio::time::interval_at(started + PROGRESS_EVERY, PROGRESS_EVERY);
                loop {
                    tokio::select! {
                        r = &mut *rx => break r,
                        _ = ticker.tick() => {
                            let status = self.send(|reply| Op::WaitStatus { call, reply }).await.ok().flatten();
                            report(WaitReport {
                                waited_seconds: started.elapsed().as_secs(),
                                window_seconds,
                                progress: status,
                            });
                        }
                    }
                }
            }
        };
        guard.rx = None;
        result.map_err(|_| CoreError::ShuttingDown)?
    }

    /// Releases a grant whose answer was never read (see [`Orphan`]); a grant that has since
    /// changed hands is left alone.
    pub fn release_orphan(&self, orphan: Orphan) {
        let _ = self.tx.send(Command::Orphaned(orphan));
    }

    /// Answers every parked call with its timeout answer; later waits do not park. For shutdown.
    pub async fn drain(&self) {
        let (done, rx) = oneshot::channel();
        if self.tx.send(Command::Drain(done)).is_ok() {
            let _ = rx.await;
        }
    }

    /// Runs one request: its checks here (a bad argument is refused and changes nothing), its
    /// operation on the engine thread, answered after the commit that made it true.
    pub async fn call(
        &self,
        request: Request,
        progress: Option<ProgressFn>,
    ) -> CoreResult<Response> {
        let ms = |seconds: Option<i64>| seconds.unwrap_or_default() * 1000;
        let window = request.wait_window_seconds();
        Ok(match request.check()? {
            Request::LockResource(r) => {
                let orphan_of = lock_orphan(r.name.clone());
                Response::LockResource(
                    self.call_parked(window, progress, orphan_of, |call, reply| {
                        Op::LockResource {
                            call,
                            name: r.name,
                            agent_id: r.agent_id,
                            ttl_ms: ms(r.ttl_seconds),
                            wait_ms: ms(r.wait_seconds),
                            wake_token: r.wake_token,
                            reply,
                        }
                    })
                    .await?,
                )
            }
            Request::UnlockResource(r) => {
                let proof = r.holder.proof()?;
                Response::UnlockResource(
                    self.send(|reply| Op::UnlockResource {
                        name: r.name,
                        proof,
                        reply,
                    })
                    .await?,
                )
            }
            Request::RenewLock(r) => {
                let proof = r.holder.proof()?;
                Response::RenewLock(
                    self.send(|reply| Op::RenewLock {
                        name: r.name,
                        proof,
                        ttl_ms: ms(r.ttl_seconds),
                        reply,
                    })
                    .await?,
                )
            }
            Request::ListLocks => {
                Response::ListLocks(self.send(|reply| Op::ListLocks { reply }).await?)
            }
            Request::LockResources(r) => Response::LockResources(
                self.call_parked(window, progress, lock_set_orphan, |call, reply| {
                    Op::LockResources {
                        call,
                        names: r.names,
                        agent_id: r.agent_id,
                        ttl_ms: ms(r.ttl_seconds),
                        wait_ms: ms(r.wait_seconds),
                        reply,
                    }
                })
                .await?,
            ),
            Request::SetNote(r) => Response::SetNote(
                self.send(|reply| Op::SetNote {
                    key: r.key,
                    value: r.value,
                    author: r.author,
                    ttl_ms: r.ttl_seconds.map(|s| s * 1000),
                    reply,
                })
                .await?,
            ),
            Request::GetNote(r) => {
                Response::GetNote(self.send(|reply| Op::GetNote { key: r.key, reply }).await?)
            }
            Request::ListNotes => {
                Response::ListNotes(self.send(|reply| Op::ListNotes { reply }).await?)
            }
            Request::DeleteNote(r) => Response::DeleteNote(
                self.send(|reply| Op::DeleteNote { key: r.key, reply })
                    .await?,
            ),
            Request::SetNoteIf(r) => Response::SetNoteIf(
                self.send(|reply| Op::SetNoteIf {
                    key: r.key,
                    expected: r.expected_value,
                    new_value: r.new_value,
                    author: r.author,
                    ttl_ms: r.ttl_seconds.map(|s| s * 1000),
                    reply,
                })
                .await?,
            ),
            Request::IncrementCounter(r) => Response::IncrementCounter(
                self.send(|reply| Op::IncrementCounter {
                    name: r.name,
                    by: r.by.unwrap_or(1),
                    reply,
                })
                .await?,
            ),
            Request::RegisterAgent(r) => Response::RegisterAgent(
                self.send(|reply| Op::RegisterAgent {
                    agent_id: r.agent_id,
                    ttl_ms: ms(r.ttl_seconds),
                    reply,
                })
                .await?,
            ),
            Request::UnregisterAgent(r) => Response::UnregisterAgent(
                self.send(|reply| Op::UnregisterAgent {
                    agent_id: r.agent_id,
                    reply,
                })
                .await?,
            ),
            Request::ListAgents => {
                Response::ListAgents(self.send(|reply| Op::ListAgents { reply }).await?)
            }
            Request::SignalEvent(r) => Response::SignalEvent(
                self.send(|reply| Op::SignalEvent {
                    name: r.name,
                    reply,
                })
                .await?,
            ),
            Request::WaitForEvent(r) => Response::WaitForEvent(
                self.call_parked(window, progress, no_orphan, |call, reply| {
                    Op::WaitForEvent {
                        call,
                        name: r.name,
                        last_seen: r.last_seen_generation.unwrap_or(0),
                        wait_ms: ms(r.wait_seconds),
                        reply,
                    }
                })
                .await?,
            ),
            Request::ClearEvent(r) => Response::ClearEvent(
                self.send(|reply| Op::ClearEvent {
                    name: r.name,
                    reply,
                })
                .await?,
            ),
            Request::PushTask(r) => Response::PushTask(
                self.send(|reply| Op::PushTask {
                    queue: r.queue,
                    payload: r.payload,
                    author: r.author,
                    priority: r.priority.unwrap_or(0),
                    reply,
                })
                .await?,
            ),
            Request::ClaimNextTask(r) => Response::ClaimNextTask(
                self.call_parked(window, progress, claim_orphan, |call, reply| {
                    Op::ClaimNextTask {
                        call,
                        queue: r.queue,
                        agent_id: r.agent_id,
                        lease_ms: ms(r.lease_seconds),
                        wait_ms: ms(r.wait_seconds),
                        reply,
                    }
                })
                .await?,
            ),
            Request::CompleteTask(r) => Response::CompleteTask(
                self.send(|reply| Op::CompleteTask {
                    id: r.id,
                    lease_token: r.lease_token,
                    reply,
                })
                .await?,
            ),
            Request::FailTask(r) => Response::FailTask(
                self.send(|reply| Op::FailTask {
                    id: r.id,
                    lease_token: r.lease_token,
                    requeue: r.requeue.unwrap_or(true),
                    reply,
                })
                .await?,
            ),
            Request::ExtendLease(r) => Response::ExtendLease(
                self.send(|reply| Op::ExtendLease {
                    id: r.id,
                    lease_token: r.lease_token,
                    lease_ms: ms(r.lease_seconds),
                    reply,
                })
                .await?,
            ),
            Request::ListTasks(r) => Response::ListTasks(
                self.send(|reply| Op::ListTasks {
                    queue: r.queue,
                    reply,
                })
                .await?,
            ),
            Request::Status => Response::Status(self.send(|reply| Op::Status { reply }).await?),
        })
    }
}

impl CoreApi for Coordinator {
    fn call(
        &self,
        request: Request,
        progress: Option<ProgressFn>,
    ) -> futures::future::BoxFuture<'_, CoreResult<Response>> {
        Box::pin(Coordinator::call(self, request, progress))
    }

    fn drain(&self) -> futures::future::BoxFuture<'_, ()> {
        Box::pin(Coordinator::drain(self))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::MonotonicClock;
    use crate::store::sqlite::SqliteStore;

    fn start() -> (Coordinator, EngineThread) {
        let store = SqliteStore::open_in_memory().unwrap();
        Coordinator::start(Box::new(store), Arc::new(MonotonicClock::new())).unwrap()
    }

    fn lock(agent: &str, wait_seconds: Option<i64>) -> Request {
        Request::LockResource(request::LockResource {
            name: "x".into(),
            agent_id: agent.into(),
            ttl_seconds: None,
            wait_seconds,
            wake_token: None,
        })
    }

    async fn locks(core: &Coordinator) -> Vec<LockView> {
        match core.call(Request::ListLocks, None).await.unwrap() {
            Response::ListLocks(l) => l,
            other => panic!("{other:?}"),
        }
    }

    /// A grant that reached a parked call whose caller left before reading it is released,
    /// and the lock goes on to the next in line.
    #[tokio::test]
    async fn an_unread_grant_is_released() {
        let (core, _engine) = start();
        let held = core.call(lock("a", None), None).await.unwrap();
        let Response::LockResource(LockOutcome::Granted { lock_token, .. }) = held else {
            panic!("expected a grant")
        };
        let mut b = Box::pin(core.call(lock("b", Some(30)), None));
        assert!(futures::poll!(b.as_mut()).is_pending(), "b parks");
        let c = tokio::spawn({
            let core = core.clone();
            async move { core.call(lock("c", Some(30)), None).await }
        });
        // Wait until c stands in line behind b.
        while locks(&core).await[0].waiters < 2 {
            tokio::task::yield_now().await;
        }
        let unlock = Request::UnlockResource(request::UnlockResource {
            name: "x".into(),
            holder: request::Holder {
                lock_token: Some(lock_token),
                agent_id: None,
            },
        });
        let released = core.call(unlock, None).await.unwrap();
        assert_eq!(
            released,
            Response::UnlockResource(Released {
                released: true,
                error: None
            })
        );
        // b has been answered with the grant but never reads it: it goes away.
        drop(b);
        let granted_c = c.await.unwrap().unwrap();
        assert!(matches!(
            granted_c,
            Response::LockResource(LockOutcome::Granted { fence: 3, .. })
        ));
        assert_eq!(locks(&core).await[0].agent_id, "c");
    }
}
