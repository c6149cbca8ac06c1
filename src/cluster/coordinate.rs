//! The coordinating side: win the coordinator lock, run the engine, run forwarded calls.

use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use futures::FutureExt;
use tokio::sync::oneshot;

use super::forward::encode;
use super::{pooled, Node, Running, RECONNECT_AFTER, SAFETY_NET};
use crate::clock::MonotonicClock;
use crate::core::{Coordinator, CoreError, CoreResult, Orphan, Request, Response, Tool};
use crate::store::calls::{self, Answered, CallRow};
use crate::store::postgres::{db_now_ms, PgStore};

/// How long the coordinator keeps trying to write an answer the database would not take.
const ANSWER_RETRIES: Duration = Duration::from_secs(15);

/// How long a daemon giving up the coordinator role waits for forwarded calls to write their
/// answers.
const HANDOVER: Duration = Duration::from_secs(5);

/// What a forwarded call produced: its answer, and the grant to release if nobody reads it.
struct Ran {
    outcome: CoreResult<Response>,
    orphan: Option<Orphan>,
}

impl Ran {
    fn failed(why: CoreError) -> Ran {
        Ran {
            outcome: Err(why),
            orphan: None,
        }
    }
}

/// One coordinator term: its engine, and the database backend of the session holding the
/// coordinator lock. What a term writes to the forwarding table is fenced by that pid, so a term
/// that has ended (its session lost) cannot answer for the next.
#[derive(Clone)]
struct Term {
    core: Coordinator,
    pid: i32,
}

/// Contends for the coordinator role for as long as the daemon runs.
pub(super) async fn contend(node: Arc<Node>) {
    loop {
        if node.is_stopping() {
            return;
        }
        if let Err(e) = coordinate(&node).await {
            tracing::warn!(error = %e, "no longer coordinating; contending again");
        }
        tokio::select! {
            _ = tokio::time::sleep(RECONNECT_AFTER) => {}
            _ = node.stop.cancelled() => return,
        }
    }
}

/// Waits for the coordinator lock, then coordinates until the connection or the daemon stops.
async fn coordinate(node: &Arc<Node>) -> anyhow::Result<()> {
    let (client, conn) = node.pg.connect(node.tls.clone()).await?;
    let (lost_tx, mut lost) = oneshot::channel();
    tokio::spawn(async move {
        let r = conn.await;
        let _ = lost_tx.send(r);
    });
    // So that the server, too, notices a coordinator that vanished without closing its
    // connection, and frees the lock for another daemon within seconds.
    super::keep_alive(&client).await?;
    tokio::select! {
        r = calls::become_coordinator(&client) => r?,
        _ = node.stop.cancelled() => return Ok(()),
        _ = &mut lost => anyhow::bail!("lost the connection while waiting to coordinate"),
    }
    let _held = node.coordinating.lock().await;
    if node.is_stopping() {
        return Ok(());
    }
    // Every daemon's TTLs are measured on the database's clock: a coordinator whose own clock is
    // off still expires rows when the others would.
    let now = db_now_ms(&client).await?;
    // Answers are written only while this session holds the coordinator lock (see
    // `calls::answer`): a daemon that lost it must not answer calls its successor re-runs.
    let pid: i32 = client
        .query_one("SELECT pg_backend_pid()", &[])
        .await?
        .get(0);
    // This connection holds the coordinator lock until it closes: no other engine writes the
    // state meanwhile, so the store may remember lock rows and fences between transactions.
    let store = PgStore::new(client, tokio::runtime::Handle::current())
        .await?
        .with_cancel_tls(node.tls.clone())
        .sole_writer();
    // The engine calls the store synchronously (it reads its deadlines as it starts), so it
    // must start off the runtime's threads.
    let (core, engine) = tokio::task::spawn_blocking(move || {
        Coordinator::start(Box::new(store), Arc::new(MonotonicClock::anchored_at(now)))
    })
    .await?
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    core.set_state_quota(node.state_quota);
    *node.engine.write().expect("engine lock") = Some(core.clone());
    listen_for_calls(node, true).await;
    tracing::info!(daemon = %node.id, "this daemon now coordinates the shared database");

    let term = Term {
        core: core.clone(),
        pid,
    };
    let outcome = serve(node, &term, &mut lost).await;

    // Step down: no new local calls reach the engine.
    *node.engine.write().expect("engine lock") = None;
    listen_for_calls(node, false).await;
    if node.is_stopping() {
        // A graceful stop hands forwarded calls that may run again to the successor instead of
        // answering them early with their timeout answers: stopped unanswered, their rows stay
        // `running` and the next coordinator re-runs them, in their original order.
        let handed: Vec<Running> = {
            let mut running = node.running.lock().expect("running");
            let ids: Vec<i64> = running
                .iter()
                .filter(|(_, r)| r.repeatable)
                .map(|(id, _)| *id)
                .collect();
            ids.iter().filter_map(|id| running.remove(id)).collect()
        };
        for r in handed {
            let _ = r.cancel.send(());
        }
    }
    // Parked local calls (and forwarded ones not handed over) get their timeout answers.
    core.drain().await;
    let deadline = tokio::time::Instant::now() + HANDOVER;
    while !node.running.lock().expect("running").is_empty()
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The engine stops once every handle to it is gone (a task still finishing keeps its own).
    drop(term);
    drop(core);
    let _ = tokio::task::spawn_blocking(move || engine.join()).await;
    tracing::info!(daemon = %node.id, "stopped coordinating");
    outcome
}

/// LISTENs (or stops listening) for forwarded calls on the listening connection. If that
/// connection is down, it LISTENs when it is back.
async fn listen_for_calls(node: &Node, on: bool) {
    let listener = node.listener.lock().await;
    if let Some(client) = listener.as_ref() {
        let sql = if on { "LISTEN" } else { "UNLISTEN" };
        if let Err(e) = client
            .batch_execute(&format!("{sql} {}", calls::COORDINATOR_CHANNEL))
            .await
        {
            tracing::warn!(error = %e, "could not {sql} for forwarded calls");
        }
    }
}

/// Runs forwarded calls until the coordinator connection is lost or the daemon stops.
async fn serve(
    node: &Arc<Node>,
    term: &Term,
    lost: &mut oneshot::Receiver<Result<(), tokio_postgres::Error>>,
) -> anyhow::Result<()> {
    let mut notes = node.coordinator_rx.lock().await;
    while notes.try_recv().is_ok() {}
    // Calls the previous coordinator left: queued ones are new; running ones it may have run.
    take_and_start(node, term, calls::Take::All).await;
    sweep(node, term).await;
    let mut tick = tokio::time::interval(SAFETY_NET);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = node.stop.cancelled() => return Ok(()),
            r = &mut *lost => {
                let why = match r {
                    Ok(Err(e)) => e.to_string(),
                    _ => "closed".to_string(),
                };
                anyhow::bail!("lost the coordinator connection to the database: {why}");
            }
            n = notes.recv() => {
                let Some(first) = n else { return Ok(()) };
                let mut new = Vec::new();
                let mut gone = Vec::new();
                let mut note = Some(first);
                while let Some(payload) = note {
                    if let Some(id) = payload.strip_prefix('q').and_then(|s| s.parse().ok()) {
                        new.push(id);
                    } else if let Some(id) = payload.strip_prefix('c').and_then(|s| s.parse().ok()) {
                        gone.push(id);
                    }
                    note = notes.try_recv().ok();
                }
                if !new.is_empty() {
                    new.sort_unstable();
                    take_and_start(node, term, calls::Take::Ids(&new)).await;
                }
                if !gone.is_empty() {
                    withdraw(node, term, Some(&gone)).await;
                }
            }
            _ = tick.tick() => {
                take_and_start(node, term, calls::Take::Queued).await;
                sweep(node, term).await;
            }
        }
    }
}

/// Takes calls from the table and starts each, oldest first.
async fn take_and_start(node: &Arc<Node>, term: &Term, which: calls::Take<'_>) {
    let rows = match pooled(node).await {
        Ok(c) => calls::take(&*c, which, term.pid).await,
        Err(e) => {
            tracing::warn!(error = %e, "could not take forwarded calls");
            return;
        }
    };
    match rows {
        Ok(rows) => {
            for row in rows {
                start(node, term, row).await;
            }
        }
        Err(e) => tracing::warn!(error = %e, "could not take forwarded calls"),
    }
}

/// Starts one forwarded call. Its first step runs here, so the engine hears calls in the order
/// they were queued (a lock's line is first come, first served across daemons too).
async fn start(node: &Arc<Node>, term: &Term, row: CallRow) {
    let id = row.id;
    // Already running in this term (a stale entry of an earlier term does not count: that task's
    // answers are fenced off, and this term runs the call again).
    if node
        .running
        .lock()
        .expect("running")
        .get(&id)
        .is_some_and(|r| r.pid == term.pid)
    {
        return;
    }
    // The typed request the forwarding daemon sent. One that does not read (a daemon of another
    // version?) is answered with why, never run with other arguments.
    let request = Tool::from_name(&row.tool)
        .ok_or_else(|| format!("unknown tool {:?}", row.tool))
        .and_then(|tool| {
            let args = serde_json::from_str(&row.args).map_err(|e| e.to_string())?;
            Request::from_arguments(tool, args).map_err(|e| e.to_string())
        });
    let request = match request {
        Ok(r) => r,
        Err(e) => {
            let why = CoreError::Storage(format!(
                "the forwarded call could not be read by the coordinating daemon ({e}); it did not run"
            ));
            tokio::spawn(finish(node.clone(), term.clone(), id, Ran::failed(why)));
            return;
        }
    };
    let repeatable = request.tool().repeatable_at_takeover();
    if row.state == calls::CallState::Running {
        // The previous coordinator granted this call something and never delivered it (the row
        // is not answered): give it back, unless the re-run finds it again — a lock its agent
        // holds is granted again with the same token, keeping its turn (and, refreshed, is the
        // agent's from then on: a later withdrawal of this call does not give it back). A lease
        // is given back first, so the re-run can claim that task again instead of leaving it
        // leased to nobody until the lease ends.
        let recorded = row
            .orphan
            .as_deref()
            .and_then(|o| serde_json::from_str::<Orphan>(o).ok());
        match recorded {
            Some(Orphan::Holds(_) | Orphan::Locks(_)) if repeatable => {}
            Some(o) => term.core.release_orphan(o),
            None => {}
        }
    }
    if row.state == calls::CallState::Running && !repeatable {
        let why = CoreError::Storage(
            "the coordinating daemon went away while running this call; it may or may not have \
             taken effect: check, then retry"
                .into(),
        );
        tokio::spawn(finish(node.clone(), term.clone(), id, Ran::failed(why)));
        return;
    }
    let run = {
        let core = term.core.clone();
        async move {
            let outcome = core.call_forwarded(request.clone(), id).await;
            let orphan = outcome.as_ref().ok().and_then(|r| request.orphan_of(r));
            Ran { outcome, orphan }
        }
    };
    // A panic becomes an error answer, as on the local path, not a caller waiting for ever.
    let run = std::panic::AssertUnwindSafe(run).catch_unwind().map(|r| {
        r.unwrap_or_else(|_| {
            tracing::error!("a forwarded call panicked; answered with an internal error");
            Ran::failed(CoreError::Storage("internal error".into()))
        })
    });
    let mut run = Box::pin(run);
    if let Poll::Ready(ran) = futures::poll!(run.as_mut()) {
        tokio::spawn(finish(node.clone(), term.clone(), id, ran));
        return;
    }
    let (cancel_tx, cancel_rx) = oneshot::channel::<()>();
    node.running.lock().expect("running").insert(
        id,
        Running {
            cancel: cancel_tx,
            repeatable,
            pid: term.pid,
        },
    );
    let (node, term) = (node.clone(), term.clone());
    tokio::spawn(async move {
        tokio::select! {
            // A stop wins over an answer that is ready at the same moment: a graceful hand-over
            // stops calls just before the engine drains them.
            biased;
            // The caller went away (or the call is handed over): dropping `run` takes the call
            // out of any line (and gives back a grant it was answered with but never read).
            _ = cancel_rx => withdraw_rows(&node, &term, &[id]).await,
            ran = run => finish(node.clone(), term.clone(), id, ran).await,
        }
        unregister(&node, id, term.pid);
    });
}

/// Writes a call's answer; if its caller is gone, gives back the grant it carried.
async fn finish(node: Arc<Node>, term: Term, id: i64, ran: Ran) {
    // The caller's own daemon is not shutting down, whatever this one is doing.
    let outcome = match ran.outcome {
        Err(CoreError::ShuttingDown) => Err(CoreError::Storage(super::STEPPED_DOWN.into())),
        outcome => outcome,
    };
    let result = encode(&outcome);
    let orphan = ran
        .orphan
        .as_ref()
        .and_then(|o| serde_json::to_string(o).ok());
    // An answer is written at most once (only over a `running` or `cancelled` row), so a failed
    // write is retried for a while. A write that failed in transit (no answer from the server)
    // may still have landed and been read: after one, finding no unanswered row must not give
    // the grant back. A write the server refused, or that never left, did not land.
    let mut maybe_landed = false;
    let mut pause = Duration::from_millis(100);
    let give_up = tokio::time::Instant::now() + ANSWER_RETRIES;
    let written = loop {
        let attempt = match pooled(&node).await {
            Ok(c) => calls::answer(&*c, id, &result, orphan.as_deref(), term.pid)
                .await
                .map_err(|e| (e.as_db_error().is_none(), e.to_string())),
            Err(e) => Err((false, e.to_string())),
        };
        match attempt {
            Ok(answered) => break Ok(answered),
            Err((in_transit, e)) => {
                maybe_landed |= in_transit;
                if tokio::time::Instant::now() >= give_up {
                    break Err(e);
                }
                tracing::warn!(error = %e, call = id, "could not write an answer; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(2));
            }
        }
    };
    match written {
        Ok(Some(Answered::Delivered)) => {}
        // The coordinator of now takes the call over (its row is still `running`). A grant this
        // engine committed stays in the tables: re-run, the call finds it (a lock its agent holds
        // is granted again); if the caller leaves first, it is held until its TTL.
        Ok(Some(Answered::NotCoordinator)) => {}
        Ok(Some(Answered::Unwanted)) => {
            if let Some(o) = ran.orphan {
                term.core.release_orphan(o);
            }
            withdraw_rows(&node, &term, &[id]).await;
        }
        // No unanswered row: its daemon was withdrawn (give the grant back), unless an earlier
        // attempt may have landed and been read.
        Ok(None) if !maybe_landed => {
            if let Some(o) = ran.orphan {
                term.core.release_orphan(o);
            }
            withdraw_rows(&node, &term, &[id]).await;
        }
        Ok(None) => {}
        Err(e) => {
            // Never give a grant back on a write whose fate is unknown: its caller may hold the
            // answer. The caller's daemon gives up after its time limit and withdraws the call;
            // the grant is held until its TTL.
            tracing::warn!(error = %e, call = id, "could not write a forwarded call's answer");
        }
    }
    unregister(&node, id, term.pid);
}

/// Forgets running call `id` of the term `pid` (not a later term's run of the same call).
fn unregister(node: &Node, id: i64, pid: i32) {
    let mut running = node.running.lock().expect("running");
    if running.get(&id).is_some_and(|r| r.pid == pid) {
        running.remove(&id);
    }
}

/// Callers of `ids` went away: stop their running calls and clear their rows.
async fn withdraw(node: &Arc<Node>, term: &Term, ids: Option<&[i64]>) {
    if let Some(ids) = ids {
        let mut running = node.running.lock().expect("running");
        for id in ids {
            if let Some(r) = running.remove(id) {
                let _ = r.cancel.send(());
            }
        }
    }
    match ids {
        Some(ids) => withdraw_rows(node, term, ids).await,
        None => {
            if let Ok(c) = pooled(node).await {
                if let Ok(rows) = calls::take_unwanted(&*c, None, term.pid).await {
                    let mut running = node.running.lock().expect("running");
                    for (id, _, orphan) in rows {
                        if let Some(r) = running.remove(&id) {
                            let _ = r.cancel.send(());
                        }
                        release(&term.core, orphan.as_deref());
                    }
                }
            }
        }
    }
}

/// Deletes the rows of calls whose callers are gone, releasing the grants they carried.
async fn withdraw_rows(node: &Node, term: &Term, ids: &[i64]) {
    if let Ok(c) = pooled(node).await {
        match calls::take_unwanted(&*c, Some(ids), term.pid).await {
            Ok(rows) => {
                for (_, _, orphan) in rows {
                    release(&term.core, orphan.as_deref());
                }
            }
            Err(e) => tracing::warn!(error = %e, "could not clear withdrawn calls"),
        }
    }
}

fn release(core: &Coordinator, orphan: Option<&str>) {
    if let Some(o) = orphan.and_then(|o| serde_json::from_str::<Orphan>(o).ok()) {
        core.release_orphan(o);
    }
}

/// The safety net: withdrawn calls whose notification was lost, and daemons that are gone.
async fn sweep(node: &Arc<Node>, term: &Term) {
    if let Ok(c) = pooled(node).await {
        if let Ok(daemons) = calls::daemons(&*c, &node.id).await {
            for d in daemons {
                if let Ok(true) = calls::is_gone(&*c, &d).await {
                    tracing::info!(daemon = %d, "a daemon is gone: withdrawing its calls");
                    let _ = calls::abandon_all_of(&**c, &d).await;
                    let _ = calls::forget_all_of(&*c, &d).await;
                }
            }
        }
    }
    withdraw(node, term, None).await;
}

/// For shutdown: waits until this daemon has stopped coordinating (if it was).
pub(super) async fn drain(node: &Arc<Node>) {
    let _ = node.coordinating.lock().await;
}
