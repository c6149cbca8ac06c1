//! Pipelined commit: the engine commits batch N without waiting for its fsync and goes on with
//! batch N+1, while this module's syncing thread makes N durable and only then answers N's
//! callers.
//!
//! The store's commit writes the batch (on SQLite: its WAL frames, with `synchronous=OFF`) and
//! returns; the engine hands the batch's answers here, tagged with the number of that commit. The
//! syncing thread takes every batch handed over so far, calls [`Syncer::sync`] once if any of them
//! is newer than the last sync (one fsync covers every commit written before it began), and then
//! delivers their answers, in order. So:
//! - no answer leaves before the fsync that made its batch durable, nor before the fsyncs of the
//!   batches before it (a batch is built on their state);
//! - a batch that wrote nothing or failed is tagged with the commit before it, and waits for that.
//!
//! A failed fsync is fatal: later batches were built on state that may never reach the disk, so
//! nothing more may be acknowledged. The thread delivers nothing more and calls the failure hook,
//! which in the daemon logs and exits the process (as PostgreSQL does on a failed fsync).
//!
//! The answers of a durable batch are sent by a task on the runtime (the *deliverer*) when the
//! pipeline was started inside one: the syncing thread (or the engine) hands it the whole batch
//! with one wake, and its sends wake the callers' tasks from inside the runtime, where a wake is
//! a push on a worker's queue, instead of one cross-thread wake (a futex or eventfd write, an IPI
//! in a VM) per answer from outside it. Without a runtime the batch is sent where it became
//! durable. Either way a batch's answers leave in order, after its fsync, and batches in the
//! order of their commits.
//!
//! Grants whose callers went away by the time they were answered come back to the engine as
//! orphans ([`Pipeline::take_orphans`]); while batches are in flight or being delivered the
//! engine polls for them ([`POLL`]).

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::oneshot;

use super::tx::{storage, Outgoing};
use super::{Engine, Orphan};
use crate::core::metrics::EngineMetrics;
use crate::core::types::{CoreError, CoreResult};
use crate::store::Syncer;

/// While answers are in flight, the engine looks for undelivered grants at least this often.
pub(super) const POLL: Duration = Duration::from_millis(2);

/// How long stopping the pipeline waits for the deliverer to send what it was handed.
const FINISH_WAIT: Duration = Duration::from_secs(5);

/// The exit status of a daemon stopped by a failed fsync.
pub const EXIT_SYNC_FAILED: i32 = 75;

/// What the syncing thread calls when an fsync fails; it delivers nothing afterwards.
pub type OnSyncFailure = Box<dyn FnOnce(&std::io::Error) + Send>;

/// The daemon's reaction to a failed fsync: say so loudly and stop at once, answering nobody.
pub fn exit_on_sync_failure() -> OnSyncFailure {
    Box::new(|e| {
        tracing::error!(
            error = %e,
            "FATAL: an fsync of the database failed; commits after the last good fsync may not \
             be on disk, so the daemon stops without answering them. Check the disk, then \
             restart: the database reopens at its last durable state"
        );
        // The log line above is queued: write it out. Then say it on stderr directly, but never
        // wait long on a stderr nobody reads: the daemon must stop.
        crate::logging::flush();
        crate::logging::say_within(
            format!("airlock: fatal: an fsync of the database failed ({e}); stopping"),
            std::time::Duration::from_secs(1),
        );
        std::process::exit(EXIT_SYNC_FAILED);
    })
}

impl Engine {
    /// Pipelines the commits if the store can ([`Store::pipeline`]): the engine goes on with the
    /// next batch while a syncing thread makes the last one durable and then answers it. A
    /// failed fsync calls `on_failure` (the daemon's exits) and nothing more is answered.
    /// True if the commits are now pipelined.
    pub fn pipeline(&mut self, on_failure: OnSyncFailure) -> CoreResult<bool> {
        if self.pipeline.is_some() {
            return Ok(true);
        }
        let Some(syncer) = self.store.pipeline().map_err(storage)? else {
            return Ok(false);
        };
        let pipeline = Pipeline::start(syncer, on_failure, self.metrics.clone())
            .map_err(|e| CoreError::Storage(format!("could not start the syncing thread: {e}")))?;
        self.pipeline = Some(pipeline);
        Ok(true)
    }

    /// Takes back the grants the syncing thread could not deliver, to release them.
    pub(super) fn collect_orphans(&mut self) {
        if let Some(p) = &self.pipeline {
            self.orphans.append(&mut p.take_orphans());
        }
    }

    /// Keeps the batch's answers for [`Engine::settle_batch`]. They depend on the batch's own
    /// commit or, for a batch whose commit wrote nothing (a lock request that parked, a read),
    /// on the last one (the state it answered from): already durable, or in flight, that batch
    /// needs no fsync of its own. A batch that failed is numbered as a commit of its own if the
    /// store cannot say its last COMMIT wrote nothing (a COMMIT that failed part way may have
    /// written frames; the batches after it must not be answered before an fsync covers them),
    /// else it waits for the last commit.
    pub(super) fn hold_answers(
        &mut self,
        failed: Option<CoreError>,
        drained: Vec<oneshot::Sender<()>>,
    ) {
        let Some(p) = &mut self.pipeline else {
            return;
        };
        if let Some(older) = self.settling.take() {
            p.hand_over(older);
        }
        let commit = if self.store.last_commit_wrote() {
            p.committed()
        } else {
            p.last_commit()
        };
        let capacity = self.outbox.answers.capacity();
        self.settling = Some(Settling {
            commit,
            answers: std::mem::replace(&mut self.outbox.answers, Vec::with_capacity(capacity)),
            failed,
            drained,
        });
    }

    /// Sends the last batch's answers after its fsync: from the syncing thread if `more`
    /// commands wait (see [`Pipeline::settle`]).
    pub(super) fn settle_batch(&mut self, more: bool) {
        if let (Some(p), Some(batch)) = (&self.pipeline, self.settling.take()) {
            p.settle(batch, more, &mut self.orphans);
        }
    }

    /// Delivers every answer held or handed to the syncing thread, after its fsync.
    pub fn flush(&mut self) {
        self.settle_batch(true);
        if let Some(mut p) = self.pipeline.take() {
            p.finish();
            self.orphans.append(&mut p.take_orphans());
        }
    }
}

/// One batch's answers, waiting for the fsync that makes their state durable.
pub(super) struct Settling {
    /// The commit they depend on: the batch's own, or the last before it.
    pub(super) commit: u64,
    pub(super) answers: Vec<Outgoing>,
    /// The batch was rolled back: every answer is this error.
    pub(super) failed: Option<CoreError>,
    /// `Drain` callers, told after the answers.
    pub(super) drained: Vec<oneshot::Sender<()>>,
}

#[derive(Default)]
struct Queue {
    waiting: VecDeque<Settling>,
    /// Batches handed over and not yet delivered (the thread's current group included).
    in_flight: usize,
    /// Durable batches handed to the deliverer and not yet sent.
    delivering: usize,
    orphans: Vec<Orphan>,
    /// The last commit an fsync covered.
    synced: u64,
    /// An fsync failed: nothing is delivered any more.
    failed: bool,
    stop: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
    /// Notified when the syncing thread has delivered what it took, or an fsync failed.
    idle: Condvar,
    /// Used by the syncing thread, or by the engine when nothing is in flight.
    syncer: Mutex<Box<dyn Syncer>>,
    on_failure: Mutex<Option<OnSyncFailure>>,
    /// Where each fsync's time goes (`GET /metrics`).
    metrics: Arc<EngineMetrics>,
    /// The deliverer's channel, when the pipeline started inside a runtime.
    deliverer: Option<tokio::sync::mpsc::UnboundedSender<Settling>>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends a durable batch's answers: through the deliverer if there is one, else here
    /// (undelivered grants then go to `orphans`).
    fn dispatch(&self, batch: Settling, orphans: &mut Vec<Orphan>) {
        let batch = match &self.deliverer {
            Some(deliverer) => {
                self.lock().delivering += 1;
                match deliverer.send(batch) {
                    Ok(()) => return,
                    // The runtime is gone (the daemon is stopping): send them here.
                    Err(back) => {
                        self.lock().delivering -= 1;
                        back.0
                    }
                }
            }
            None => batch,
        };
        send(batch, orphans);
    }

    /// Makes commit `needed` (and every one before it) durable, unless an fsync already did.
    /// False if the fsync failed (the failure hook has run).
    fn sync_through(&self, needed: u64) -> bool {
        {
            let q = self.lock();
            if q.failed {
                return false;
            }
            if q.synced >= needed {
                return true;
            }
        }
        let started = std::time::Instant::now();
        let done = self.syncer.lock().unwrap_or_else(|e| e.into_inner()).sync();
        self.metrics.record_fsync(started.elapsed().as_secs_f64());
        let mut q = self.lock();
        match done {
            Ok(()) => {
                q.synced = q.synced.max(needed);
                true
            }
            Err(e) => {
                q.failed = true;
                drop(q);
                self.idle.notify_all();
                let hook = self
                    .on_failure
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .take();
                if let Some(hook) = hook {
                    hook(&e);
                }
                false
            }
        }
    }
}

/// The engine's side of the pipeline.
pub(super) struct Pipeline {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    /// Commits made since the pipeline started.
    commits: u64,
}

impl Pipeline {
    pub(super) fn start(
        syncer: Box<dyn Syncer>,
        on_failure: OnSyncFailure,
        metrics: Arc<EngineMetrics>,
    ) -> std::io::Result<Self> {
        let runtime = tokio::runtime::Handle::try_current().ok();
        let (deliverer, delivered) = match runtime {
            Some(_) => {
                let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
                (Some(tx), Some(rx))
            }
            None => (None, None),
        };
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
            idle: Condvar::new(),
            syncer: Mutex::new(syncer),
            on_failure: Mutex::new(Some(on_failure)),
            metrics,
            deliverer,
        });
        if let (Some(runtime), Some(rx)) = (runtime, delivered) {
            runtime.spawn(deliver_loop(Arc::downgrade(&shared), rx));
        }
        let thread = std::thread::Builder::new()
            .name("airlock-sync".into())
            .spawn({
                let shared = shared.clone();
                move || sync_loop(&shared)
            })?;
        Ok(Pipeline {
            shared,
            thread: Some(thread),
            commits: 0,
        })
    }

    /// A commit was written: the number the answers that depend on it carry.
    pub(super) fn committed(&mut self) -> u64 {
        self.commits += 1;
        self.commits
    }

    /// The last commit written.
    pub(super) fn last_commit(&self) -> u64 {
        self.commits
    }

    /// Answers a batch once its commit is durable. One batch at most is in flight: while the
    /// syncing thread has one, the engine waits for it (its fsync had to come first anyway, and
    /// the commands arriving meanwhile make the next batch, and the next commit, larger). Then,
    /// with `more` (commands are waiting), the syncing thread takes this one and the engine goes
    /// on; else the engine would only wait: it syncs and answers here, sparing a thread hop,
    /// exactly as without a pipeline. Undelivered grants of an answer sent here go to
    /// `orphans`.
    pub(super) fn settle(&self, batch: Settling, more: bool, orphans: &mut Vec<Orphan>) {
        {
            let mut q = self.shared.lock();
            while q.in_flight > 0 && !q.failed {
                q = self.shared.idle.wait(q).unwrap_or_else(|e| e.into_inner());
            }
            if q.failed {
                return;
            }
            if more {
                drop(q);
                return self.hand_over(batch);
            }
        }
        if self.shared.sync_through(batch.commit) {
            self.shared.dispatch(batch, orphans);
        }
    }

    /// Hands a batch's answers to the syncing thread; they leave once its commit is durable.
    pub(super) fn hand_over(&self, batch: Settling) {
        let mut q = self.shared.lock();
        q.waiting.push_back(batch);
        q.in_flight += 1;
        drop(q);
        self.shared.wake.notify_one();
    }

    /// Grants whose callers were gone when they were answered.
    pub(super) fn take_orphans(&self) -> Vec<Orphan> {
        std::mem::take(&mut self.shared.lock().orphans)
    }

    /// Whether answers are still in flight or being delivered, or orphans wait: the engine
    /// should look again soon.
    pub(super) fn busy(&self) -> bool {
        let q = self.shared.lock();
        q.in_flight > 0 || q.delivering > 0 || !q.orphans.is_empty()
    }

    /// Delivers everything handed over (after its fsync) and stops the thread; then waits
    /// for the deliverer to send it, [`FINISH_WAIT`] at most (a runtime that is gone sends
    /// nothing more).
    pub(super) fn finish(&mut self) {
        if let Some(thread) = self.thread.take() {
            self.shared.lock().stop = true;
            self.shared.wake.notify_one();
            let _ = thread.join();
        }
        let q = self.shared.lock();
        let _ = self
            .shared
            .idle
            .wait_timeout_while(q, FINISH_WAIT, |q| q.delivering > 0);
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        self.finish();
    }
}

fn sync_loop(shared: &Shared) {
    let mut group = VecDeque::new();
    let mut orphans = Vec::new();
    loop {
        {
            let mut q = shared.lock();
            while q.waiting.is_empty() && !q.stop {
                q = shared.wake.wait(q).unwrap_or_else(|e| e.into_inner());
            }
            if q.waiting.is_empty() || q.failed {
                return;
            }
            std::mem::swap(&mut group, &mut q.waiting);
        }
        // Every commit in the group was written before it was handed over, so before this fsync.
        let needed = group.iter().map(|b| b.commit).max().unwrap_or(0);
        if !shared.sync_through(needed) {
            // Nothing more is delivered: the group's answers are dropped unsent (in the daemon
            // the process has ended in the failure hook).
            return;
        }
        let delivered = group.len();
        for batch in group.drain(..) {
            shared.dispatch(batch, &mut orphans);
        }
        let mut q = shared.lock();
        q.orphans.append(&mut orphans);
        q.in_flight -= delivered;
        drop(q);
        shared.idle.notify_all();
    }
}

/// The deliverer: sends the answers of the durable batches it is handed, in order, from a task
/// on the runtime; undelivered grants go back to the engine's orphans. Ends when the pipeline
/// is gone (its channel closes).
async fn deliver_loop(
    shared: std::sync::Weak<Shared>,
    mut batches: tokio::sync::mpsc::UnboundedReceiver<Settling>,
) {
    let mut taken = Vec::new();
    let mut orphans = Vec::new();
    while batches.recv_many(&mut taken, 64).await > 0 {
        let sent = taken.len();
        for batch in taken.drain(..) {
            send(batch, &mut orphans);
        }
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let mut q = shared.lock();
        q.orphans.append(&mut orphans);
        q.delivering -= sent;
        drop(q);
        shared.idle.notify_all();
    }
}

/// Sends a durable batch's answers, then tells its `Drain` callers.
fn send(batch: Settling, orphans: &mut Vec<Orphan>) {
    deliver(batch.answers, batch.failed.as_ref(), orphans);
    for done in batch.drained {
        let _ = done.send(());
    }
}

/// Sends a batch's answers (each its own failure, or the batch's); a grant nobody received
/// becomes an orphan to release.
pub(super) fn deliver(
    answers: impl IntoIterator<Item = Outgoing>,
    failed: Option<&CoreError>,
    orphans: &mut Vec<Orphan>,
) {
    for out in answers {
        let error = failed.or(out.failed.as_ref());
        let delivered = (out.deliver)(error);
        if !delivered && error.is_none() {
            if let Some(orphan) = out.orphan {
                orphans.push(orphan);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use super::*;
    use crate::core::engine::tx::Outbox;
    use crate::core::engine::Reply;

    /// A syncer that says when a sync begins and returns what the test tells it to.
    struct Gate {
        began: mpsc::Sender<()>,
        outcome: mpsc::Receiver<std::io::Result<()>>,
    }

    impl Syncer for Gate {
        fn sync(&mut self) -> std::io::Result<()> {
            let _ = self.began.send(());
            self.outcome
                .recv()
                .unwrap_or_else(|_| Err(std::io::Error::other("the test went away")))
        }
    }

    struct Harness {
        pipeline: Pipeline,
        began: mpsc::Receiver<()>,
        outcome: mpsc::Sender<std::io::Result<()>>,
        failed: mpsc::Receiver<String>,
    }

    fn harness() -> Harness {
        let (began_tx, began) = mpsc::channel();
        let (outcome, outcome_rx) = mpsc::channel();
        let (failed_tx, failed) = mpsc::channel();
        let gate = Gate {
            began: began_tx,
            outcome: outcome_rx,
        };
        let pipeline = Pipeline::start(
            Box::new(gate),
            Box::new(move |e| {
                let _ = failed_tx.send(e.to_string());
            }),
            Default::default(),
        )
        .unwrap();
        Harness {
            pipeline,
            began,
            outcome,
            failed,
        }
    }

    /// Hands over one batch of one answer (`value`) and returns its receiver.
    fn batch(p: &mut Pipeline, commits: bool, value: u32) -> oneshot::Receiver<CoreResult<u32>> {
        let mut outbox = Outbox::default();
        let (tx, rx) = oneshot::channel();
        outbox.push(Reply::<u32, u32>::new(tx, |v| v), Ok(value), None);
        let commit = if commits {
            p.committed()
        } else {
            p.last_commit()
        };
        p.hand_over(Settling {
            commit,
            answers: outbox.answers,
            failed: None,
            drained: Vec::new(),
        });
        rx
    }

    #[test]
    fn an_answer_leaves_only_after_the_fsync_that_covers_it() {
        let mut h = harness();
        let mut first = batch(&mut h.pipeline, true, 1);
        h.began.recv().unwrap();
        // Batch 2 is written while batch 1's fsync runs: that fsync began before it.
        let mut second = batch(&mut h.pipeline, true, 2);
        assert!(first.try_recv().is_err() && second.try_recv().is_err());
        h.outcome.send(Ok(())).unwrap();
        assert_eq!(first.blocking_recv().unwrap().unwrap(), 1);
        // Batch 2 waits for an fsync of its own.
        h.began.recv().unwrap();
        assert!(second.try_recv().is_err());
        h.outcome.send(Ok(())).unwrap();
        assert_eq!(second.blocking_recv().unwrap().unwrap(), 2);
        // A batch that wrote nothing depends on the last commit, already durable: no fsync.
        let third = batch(&mut h.pipeline, false, 3);
        assert_eq!(third.blocking_recv().unwrap().unwrap(), 3);
        h.pipeline.finish();
        assert!(h.began.try_recv().is_err(), "an fsync nothing needed");
    }

    /// One answer (`value`) in a batch that committed.
    fn settling(p: &mut Pipeline, value: u32) -> (Settling, oneshot::Receiver<CoreResult<u32>>) {
        let mut outbox = Outbox::default();
        let (tx, rx) = oneshot::channel();
        outbox.push(Reply::<u32, u32>::new(tx, |v| v), Ok(value), None);
        let batch = Settling {
            commit: p.committed(),
            answers: outbox.answers,
            failed: None,
            drained: Vec::new(),
        };
        (batch, rx)
    }

    #[test]
    fn with_nothing_waiting_the_engine_syncs_and_answers_itself() {
        let mut h = harness();
        let (b, mut rx) = settling(&mut h.pipeline, 1);
        h.outcome.send(Ok(())).unwrap();
        let mut orphans = Vec::new();
        h.pipeline.settle(b, false, &mut orphans);
        // Synced (the gate was passed) and answered before `settle` returned.
        h.began.try_recv().unwrap();
        assert_eq!(rx.try_recv().unwrap().unwrap(), 1);
        // With a command waiting, the syncing thread does it.
        let (b, mut rx) = settling(&mut h.pipeline, 2);
        h.pipeline.settle(b, true, &mut orphans);
        h.began.recv().unwrap();
        assert!(rx.try_recv().is_err());
        // While it is in flight, the next batch waits for it, then goes on its own.
        let (b, mut later) = settling(&mut h.pipeline, 3);
        h.outcome.send(Ok(())).unwrap();
        h.outcome.send(Ok(())).unwrap();
        h.pipeline.settle(b, false, &mut orphans);
        assert_eq!(rx.try_recv().unwrap().unwrap(), 2, "batch 2 first");
        assert_eq!(later.try_recv().unwrap().unwrap(), 3);
        h.began.recv().unwrap();
        // A failed fsync on the engine's side: the hook runs, the answer is dropped unsent.
        let (b, rx) = settling(&mut h.pipeline, 4);
        h.outcome
            .send(Err(std::io::Error::other("disk gone")))
            .unwrap();
        h.pipeline.settle(b, false, &mut orphans);
        assert!(h.failed.recv().unwrap().contains("disk gone"));
        assert!(rx.blocking_recv().is_err());
        let (b, rx) = settling(&mut h.pipeline, 5);
        h.pipeline.settle(b, false, &mut orphans);
        drop(h.pipeline);
        assert!(rx.blocking_recv().is_err(), "nothing after a failed fsync");
    }

    #[test]
    fn a_failed_fsync_answers_nothing_more() {
        let mut h = harness();
        let first = batch(&mut h.pipeline, true, 1);
        h.began.recv().unwrap();
        let second = batch(&mut h.pipeline, true, 2);
        h.outcome
            .send(Err(std::io::Error::other("disk gone")))
            .unwrap();
        assert!(h.failed.recv().unwrap().contains("disk gone"));
        // The batch of the failed fsync is dropped unanswered...
        assert!(first.blocking_recv().is_err());
        // ...and so is every later one, even one that needs no new fsync.
        let third = batch(&mut h.pipeline, false, 3);
        drop(h.pipeline);
        assert!(second.blocking_recv().is_err());
        assert!(third.blocking_recv().is_err());
        assert!(h.began.try_recv().is_err(), "no fsync after the failure");
    }

    /// Inside a runtime the deliverer sends the answers: after the fsync, in order, from a
    /// task; a grant whose caller is gone comes back as an orphan, and the engine is told to
    /// keep looking (`busy`) until it has.
    #[test]
    fn inside_a_runtime_a_task_delivers_after_the_fsync_and_returns_orphans() {
        use crate::core::engine::Orphan;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .build()
            .unwrap();
        let _inside = runtime.enter();
        let mut h = harness();
        assert!(
            h.pipeline.shared.deliverer.is_some(),
            "started with a deliverer"
        );
        let mut outbox = Outbox::default();
        let (tx, mut first) = oneshot::channel();
        outbox.push(Reply::<u32, u32>::new(tx, |v| v), Ok(1), None);
        let (tx, gone) = oneshot::channel();
        drop(gone);
        let grant = Orphan::Locks(vec![("l".into(), "a".into())]);
        outbox.push(
            Reply::<u32, u32>::new(tx, |v| v),
            Ok(2),
            Some(grant.clone()),
        );
        let (tx, third) = oneshot::channel();
        outbox.push(Reply::<u32, u32>::new(tx, |v| v), Ok(3), None);
        let commit = h.pipeline.committed();
        h.pipeline.hand_over(Settling {
            commit,
            answers: outbox.answers,
            failed: None,
            drained: Vec::new(),
        });
        h.began.recv().unwrap();
        assert!(h.pipeline.busy());
        assert!(first.try_recv().is_err(), "nothing before the fsync");
        h.outcome.send(Ok(())).unwrap();
        assert_eq!(first.blocking_recv().unwrap().unwrap(), 1);
        assert_eq!(third.blocking_recv().unwrap().unwrap(), 3);
        // The orphan is back once the deliverer is done; until then the engine keeps looking.
        let mut orphans = Vec::new();
        while orphans.is_empty() {
            assert!(h.pipeline.busy(), "busy until the orphan is back");
            orphans = h.pipeline.take_orphans();
            std::thread::yield_now();
        }
        assert_eq!(orphans, [grant]);
        // The syncing thread counts its group out after handing it over.
        h.pipeline.finish();
        assert!(!h.pipeline.busy());
        // Stopping waits for the deliverer: what was handed over before is sent.
        let (b, rx) = settling(&mut h.pipeline, 4);
        h.outcome.send(Ok(())).unwrap();
        h.pipeline.settle(b, false, &mut orphans);
        h.pipeline.finish();
        let mut rx = rx;
        assert_eq!(
            rx.try_recv().unwrap().unwrap(),
            4,
            "sent before finish returned"
        );
    }
}
