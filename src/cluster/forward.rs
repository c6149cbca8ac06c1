//! The receiving side: hand a call to the coordinating daemon, wait for its answer, and listen.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use futures::StreamExt;
use serde_json::{json, Map, Value};
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::AsyncMessage;

use super::{db_error, pooled, Answer, Node, Waiting, RECONNECT_AFTER, SAFETY_NET};
use crate::core::{
    CoreError, CoreResult, ProgressFn, Request, Response, WaitReport, MAX_WAIT_SECONDS,
    PROGRESS_EVERY,
};
use crate::store::calls;

/// The longest a forwarded call waits for its answer: the longest wait a call may ask for, plus
/// time for a coordinator change.
const ANSWER_LIMIT: std::time::Duration =
    std::time::Duration::from_secs(MAX_WAIT_SECONDS as u64 + 60);

/// How an answer travels in `airlock.calls.result`: `{"ok": <Response>}` or `{"err": <CoreError>}`.
pub fn encode(outcome: &CoreResult<Response>) -> String {
    match outcome {
        Ok(v) => json!({ "ok": v }).to_string(),
        Err(e) => json!({ "err": e }).to_string(),
    }
}

fn decode(text: &str) -> CoreResult<Response> {
    let bad = || CoreError::Storage("the coordinating daemon sent an unreadable answer".into());
    let mut v: Map<String, Value> = serde_json::from_str(text).map_err(|_| bad())?;
    if let Some(ok) = v.remove("ok") {
        return serde_json::from_value(ok).map_err(|_| bad());
    }
    match v.remove("err") {
        Some(e) => Err(serde_json::from_value(e).map_err(|_| bad())?),
        None => Err(bad()),
    }
}

/// A forwarded call in flight. Dropped before its answer was read (the caller went away), it
/// tells the coordinator, which cancels the call or releases the grant the answer carried.
struct Pending {
    node: Arc<Node>,
    id: i64,
    rx: Option<oneshot::Receiver<Answer>>,
}

impl Drop for Pending {
    fn drop(&mut self) {
        if self.rx.take().is_none() {
            return;
        }
        self.node
            .waiting
            .lock()
            .expect("waiting")
            .calls
            .remove(&self.id);
        let (node, id) = (self.node.clone(), self.id);
        tokio::spawn(async move { withdraw(&node, vec![id]).await });
    }
}

/// A forwarded call's INSERT under way, in a task of its own so that it is not cut off half
/// way. Dropped before the id is known (the caller went away meanwhile), it withdraws the row
/// once it lands: otherwise the call would run for nobody, its grant held until its TTL.
struct Inserting {
    node: Arc<Node>,
    insert: Option<tokio::task::JoinHandle<CoreResult<i64>>>,
}

impl Inserting {
    fn start(node: &Arc<Node>, tool: &str, args: String) -> Inserting {
        let (n, tool) = (node.clone(), tool.to_string());
        let insert = tokio::spawn(async move {
            let c = pooled(&n).await?;
            calls::insert(&*c, &n.id, &tool, &args).await.map_err(|e| {
                db_error(
                    "could not hand the call to the coordinating daemon (if the connection \
                     broke after sending it, it may still run)",
                    e,
                )
            })
        });
        Inserting {
            node: node.clone(),
            insert: Some(insert),
        }
    }

    /// The call's id, once its row is in the table.
    async fn id(mut self) -> CoreResult<i64> {
        let inserted = self.insert.as_mut().expect("awaited once").await;
        self.insert = None;
        inserted.unwrap_or_else(|_| Err(CoreError::Storage("internal error".into())))
    }
}

impl Drop for Inserting {
    fn drop(&mut self) {
        if let Some(insert) = self.insert.take() {
            let node = self.node.clone();
            tokio::spawn(async move {
                if let Ok(Ok(id)) = insert.await {
                    withdraw(&node, vec![id]).await;
                }
            });
        }
    }
}

/// Withdraws calls whose callers went away; what cannot be withdrawn now (the database is
/// unreachable) is retried by the safety net.
async fn withdraw(node: &Node, mut ids: Vec<i64>) {
    ids.extend(node.to_withdraw.lock().expect("to_withdraw").drain(..));
    if ids.is_empty() {
        return;
    }
    let done = match pooled(node).await {
        Ok(c) => calls::abandon(&*c, &ids).await.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    if let Err(e) = done {
        tracing::warn!(error = %e, calls = ids.len(), "could not withdraw forwarded calls; will retry");
        node.to_withdraw.lock().expect("to_withdraw").extend(ids);
    }
}

impl Node {
    /// The calls waiting for their answers.
    fn waiting_ids(&self) -> Vec<i64> {
        let w = self.waiting.lock().expect("waiting");
        w.calls.keys().copied().collect()
    }

    /// Runs `request` on the coordinating daemon and returns its answer.
    pub(super) async fn forward(
        self: &Arc<Self>,
        request: Request,
        progress: Option<ProgressFn>,
    ) -> CoreResult<Response> {
        if self.is_stopping() {
            return Err(CoreError::ShuttingDown);
        }
        if !self.listening.load(Ordering::SeqCst) {
            return Err(CoreError::Storage(
                "this daemon lost its connection to the database and is reconnecting; the call \
                 did not run"
                    .into(),
            ));
        }
        let args = Value::Object(request.arguments()).to_string();
        let id = Inserting::start(self, request.tool().name(), args)
            .id()
            .await?;
        let (tx, rx) = oneshot::channel();
        let announced = {
            let mut w = self.waiting.lock().expect("waiting");
            w.calls.insert(id, tx);
            w.early.remove(&id)
        };
        if announced {
            let _ = self.answers_tx.try_send(id);
        }
        let mut pending = Pending {
            node: self.clone(),
            id,
            rx: Some(rx),
        };
        let rx = pending.rx.as_mut().expect("just set");
        let waited = async {
            match progress {
                None => rx.await,
                Some(report) => {
                    let window = request.wait_window_seconds();
                    let started = tokio::time::Instant::now();
                    let mut ticker =
                        tokio::time::interval_at(started + PROGRESS_EVERY, PROGRESS_EVERY);
                    loop {
                        tokio::select! {
                            r = &mut *rx => break r,
                            _ = ticker.tick() => report(WaitReport {
                                waited_seconds: started.elapsed().as_secs(),
                                window_seconds: window,
                                progress: None,
                            }),
                        }
                    }
                }
            }
        };
        // The last resort against a coordinator that never answers: no call waits longer than
        // the longest wait plus a coordinator change. `pending` withdraws the call.
        let Ok(answer) = tokio::time::timeout(ANSWER_LIMIT, waited).await else {
            return Err(CoreError::Storage(format!(
                "the coordinating daemon did not answer within {} s; the call may or may not \
                 have taken effect",
                ANSWER_LIMIT.as_secs()
            )));
        };
        let Ok(answer) = answer else {
            return Err(CoreError::ShuttingDown);
        };
        if answer.from_row {
            pending.rx = None;
            let _ = self.forget_tx.send(id);
        }
        // Otherwise `pending` withdraws the row as it goes: an answer written meanwhile, grant and
        // all, is given back rather than deleted unread.
        answer.outcome
    }
}

/// Hands written answers to their waiting callers.
async fn deliver(node: &Node, answers: Vec<(i64, String)>) {
    for (id, text) in answers {
        let tx = node.waiting.lock().expect("waiting").calls.remove(&id);
        if let Some(tx) = tx {
            // A caller gone by now is seen by its `Pending`, which gives the grant back.
            let _ = tx.send(Answer {
                outcome: decode(&text),
                from_row: true,
            });
        }
    }
}

/// Most answer announcements kept for callers still to learn their ids (see `Waiting::early`).
const EARLY_LIMIT: usize = 100_000;

impl Waiting {
    /// Takes a burst of answered ids: returns those whose callers wait, and keeps the others as
    /// early (their callers are still to learn their ids), the oldest dropped past
    /// [`EARLY_LIMIT`].
    fn announced(&mut self, burst: Vec<i64>) -> Vec<i64> {
        let (known, early): (Vec<i64>, Vec<i64>) = burst
            .into_iter()
            .partition(|id| self.calls.contains_key(id));
        self.early.extend(early);
        while self.early.len() > EARLY_LIMIT {
            self.early.pop_first();
        }
        known
    }
}

/// The next id `recv` gives, or `None` once the daemon stops. The task holds the `Node` that
/// owns the sending half, so the channel never closes by itself.
async fn next_id(node: &Node, recv: impl std::future::Future<Output = Option<i64>>) -> Option<i64> {
    tokio::select! {
        id = recv => id,
        _ = node.stop.cancelled() => None,
    }
}

/// Fetches answers as their notifications arrive, a burst at a time.
pub(super) async fn fetch_answers(node: Arc<Node>, mut ids: mpsc::Receiver<i64>) {
    while let Some(first) = next_id(&node, ids.recv()).await {
        let mut burst = vec![first];
        while let Ok(id) = ids.try_recv() {
            burst.push(id);
        }
        let known = node.waiting.lock().expect("waiting").announced(burst);
        if known.is_empty() {
            continue;
        }
        match pooled(&node).await {
            Ok(c) => match calls::answers(&*c, &known).await {
                Ok(rows) => deliver(&node, rows).await,
                // The safety net fetches them again.
                Err(e) => tracing::warn!(error = %e, "could not read answers"),
            },
            Err(e) => tracing::warn!(error = %e, "could not read answers"),
        }
    }
}

/// Deletes answered rows once their callers have read them, a burst at a time.
pub(super) async fn forget_read(node: Arc<Node>, mut ids: mpsc::UnboundedReceiver<i64>) {
    while let Some(first) = next_id(&node, ids.recv()).await {
        let mut burst = vec![first];
        while let Ok(id) = ids.try_recv() {
            burst.push(id);
        }
        // Retried until it lands: a `done` row left behind holds a grant its caller has read.
        loop {
            let done = match pooled(&node).await {
                Ok(c) => calls::forget(&*c, &burst).await.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            match done {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "could not delete answered calls; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(SAFETY_NET) => {}
                        _ = node.stop.cancelled() => return,
                    }
                }
            }
        }
    }
}

/// Re-reads the answers of every waiting call, in case a notification was lost.
pub(super) async fn safety_net(node: Arc<Node>) {
    let mut tick = tokio::time::interval(SAFETY_NET);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = node.stop.cancelled() => return,
        }
        recheck(&node).await;
    }
}

async fn recheck(node: &Node) {
    withdraw(node, Vec::new()).await;
    let ids = node.waiting_ids();
    if ids.is_empty() {
        return;
    }
    let Ok(c) = pooled(node).await else {
        return;
    };
    if let Ok(rows) = calls::answers(&*c, &ids).await {
        deliver(node, rows).await;
    }
    // A row that vanished belongs to a call the coordinator gave up on (it took this daemon
    // for gone): its caller must not wait for ever.
    if let Ok(gone) = calls::missing(&*c, &ids).await {
        fail(
            node,
            &gone,
            "the coordinating daemon dropped this call (it lost sight of this daemon); it may or \
             may not have taken effect",
        );
    }
}

/// Answers `ids` with a storage error.
fn fail(node: &Node, ids: &[i64], why: &str) {
    let mut w = node.waiting.lock().expect("waiting");
    for id in ids {
        if let Some(tx) = w.calls.remove(id) {
            let _ = tx.send(Answer {
                outcome: Err(CoreError::Storage(why.to_string())),
                from_row: false,
            });
        }
    }
}

/// Keeps the listening connection: LISTEN for answers (and, while coordinating, for calls),
/// and hold this daemon's liveness lock. Reconnects when it drops.
pub(super) async fn listen(node: Arc<Node>, mut up: Option<oneshot::Sender<()>>) {
    loop {
        if node.is_stopping() {
            return;
        }
        match node.pg.connect(node.tls.clone()).await {
            Ok((client, mut conn)) => {
                // Bounded: notifications are hints, and one dropped in a flood is found by
                // the safety net.
                let (ntx, mut nrx) = mpsc::channel(super::HINTS);
                tokio::spawn(async move {
                    let mut messages = futures::stream::poll_fn(move |cx| conn.poll_message(cx));
                    while let Some(m) = messages.next().await {
                        match m {
                            Ok(AsyncMessage::Notification(n)) => {
                                if let Err(mpsc::error::TrySendError::Closed(_)) = ntx.try_send(n) {
                                    return;
                                }
                            }
                            Ok(_) => {}
                            Err(e) => {
                                tracing::warn!(error = %e, "the listening connection failed");
                                return;
                            }
                        }
                    }
                });
                match setup(&node, &client).await {
                    Ok(()) => {
                        {
                            // Stored and the role re-checked under one lock: `contend` LISTENs
                            // (or UNLISTENs) under it too, so neither misses the other.
                            let mut listener = node.listener.lock().await;
                            if node.is_coordinator() {
                                if let Err(e) = client
                                    .batch_execute(&format!(
                                        "LISTEN {}",
                                        calls::COORDINATOR_CHANNEL
                                    ))
                                    .await
                                {
                                    tracing::warn!(error = %e, "could not LISTEN for calls");
                                }
                            }
                            *listener = Some(client);
                        }
                        node.listening.store(true, Ordering::SeqCst);
                        if let Some(up) = up.take() {
                            let _ = up.send(());
                        }
                        loop {
                            let n = tokio::select! {
                                n = nrx.recv() => n,
                                _ = node.stop.cancelled() => None,
                            };
                            let Some(n) = n else { break };
                            route(&node, n.channel(), n.payload());
                        }
                        node.listening.store(false, Ordering::SeqCst);
                        node.listener.lock().await.take();
                        if node.is_stopping() {
                            return;
                        }
                        tracing::warn!(
                            "lost the listening connection to the database; reconnecting"
                        );
                        let ids = node.waiting_ids();
                        fail(
                            &node,
                            &ids,
                            "lost the connection to the database while waiting for the answer; \
                             the call may or may not have taken effect",
                        );
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "could not listen on the database; retrying")
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot reach the database; retrying"),
        }
        tokio::select! {
            _ = tokio::time::sleep(RECONNECT_AFTER) => {}
            _ = node.stop.cancelled() => return,
        }
    }
}

async fn setup(node: &Node, client: &tokio_postgres::Client) -> Result<(), tokio_postgres::Error> {
    // The server notices a daemon that vanished without closing this connection within seconds,
    // which frees its liveness lock, so the coordinator withdraws its calls.
    super::keep_alive(client).await?;
    // Whatever this daemon sent before it lost its connection has no caller any more.
    calls::abandon_all_of(client, &node.id).await?;
    client
        .batch_execute(&format!("LISTEN \"{}\"", calls::answer_channel(&node.id)))
        .await?;
    calls::hold_liveness(client, &node.id).await?;
    Ok(())
}

fn route(node: &Node, channel: &str, payload: &str) {
    if channel == calls::COORDINATOR_CHANNEL {
        // A LISTEN left over from a term that ended: nobody would read these.
        if node.is_coordinator() {
            let _ = node.to_coordinator.try_send(payload.to_string());
        }
    } else if let Ok(id) = payload.parse::<i64>() {
        let _ = node.answers_tx.try_send(id);
    }
}

/// For shutdown: every waiting caller is told, and its call withdrawn.
pub(super) async fn drain(node: &Arc<Node>) {
    let ids: Vec<i64> = {
        let mut w = node.waiting.lock().expect("waiting");
        let ids: Vec<i64> = w.calls.keys().copied().collect();
        for (_, tx) in w.calls.drain() {
            let _ = tx.send(Answer {
                outcome: Err(CoreError::ShuttingDown),
                from_row: false,
            });
        }
        ids
    };
    if ids.is_empty() {
        return;
    }
    if let Ok(c) = pooled(node).await {
        let _ = calls::abandon(&*c, &ids).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::HINTS;

    /// A node that never connects (its pool is lazy, and nothing here asks it for a
    /// connection), with the receivers its answer tasks would read.
    fn idle_node() -> (Arc<Node>, mpsc::Receiver<i64>, mpsc::UnboundedReceiver<i64>) {
        let target = crate::store::postgres::tls::parse("postgres://airlock@127.0.0.1:1/none")
            .expect("a plain URL");
        let manager = deadpool_postgres::Manager::from_config(
            target.config.clone(),
            target.tls.clone(),
            deadpool_postgres::ManagerConfig {
                recycling_method: deadpool_postgres::RecyclingMethod::Fast,
            },
        );
        let pool = deadpool_postgres::Pool::builder(manager)
            .max_size(1)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .expect("a pool");
        Node::new("test".into(), target.config, target.tls, pool, u64::MAX)
    }

    /// Answer notifications wait in a bounded channel: past [`HINTS`] a flood is dropped (the
    /// safety net finds those answers), not queued without bound.
    #[tokio::test]
    async fn a_flood_of_answer_notifications_is_bounded() {
        let (node, mut answers, _read) = idle_node();
        let channel = calls::answer_channel(&node.id);
        for id in 0..HINTS as i64 + 10 {
            route(&node, &channel, &id.to_string());
        }
        let mut queued = 0;
        while answers.try_recv().is_ok() {
            queued += 1;
        }
        assert_eq!(queued, HINTS);
        // Room again once read.
        route(&node, &channel, "1");
        assert_eq!(answers.try_recv().ok(), Some(1));
    }

    /// Answers announced before their callers know their ids are kept up to [`EARLY_LIMIT`],
    /// the oldest dropped first: the newest (whose callers may still come) always stay.
    #[test]
    fn early_announcements_drop_their_oldest_past_the_bound() {
        let mut w = Waiting::default();
        let (tx, _rx) = oneshot::channel();
        w.calls.insert(3, tx);
        let last = EARLY_LIMIT as i64 + 5;
        assert_eq!(w.announced((1..=last).collect()), [3]);
        assert_eq!(w.early.len(), EARLY_LIMIT);
        // 1, 2, 4 and 5 went (3 had its caller).
        assert_eq!(w.early.first(), Some(&6));
        assert_eq!(w.early.last(), Some(&last));
        assert!(w.announced(vec![last + 1]).is_empty());
        assert_eq!(w.early.len(), EARLY_LIMIT);
        assert_eq!(
            (w.early.first(), w.early.last()),
            (Some(&7), Some(&(last + 1)))
        );
    }

    /// The answer fetcher and the answer forgetter hold the node that owns their channels'
    /// senders, so their channels never close: they stop with the daemon, and let go of it.
    #[tokio::test]
    async fn the_answer_tasks_stop_with_the_daemon() {
        let (node, answers, read) = idle_node();
        let fetch = tokio::spawn(fetch_answers(node.clone(), answers));
        let forget = tokio::spawn(forget_read(node.clone(), read));
        // An answer nobody waits for yet is kept as early (no database needed).
        node.answers_tx.send(7).await.unwrap();
        for _ in 0..1_000 {
            if node.waiting.lock().unwrap().early.contains(&7) {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert!(node.waiting.lock().unwrap().early.contains(&7));
        assert!(!fetch.is_finished() && !forget.is_finished());
        node.stop.cancel();
        for _ in 0..1_000 {
            if fetch.is_finished() && forget.is_finished() {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert!(
            fetch.is_finished(),
            "the answer fetcher outlived the daemon"
        );
        assert!(
            forget.is_finished(),
            "the answer forgetter outlived the daemon"
        );
        fetch.await.unwrap();
        forget.await.unwrap();
        assert_eq!(Arc::strong_count(&node), 1, "a task still holds the node");
    }

    #[test]
    fn answers_survive_the_trip_through_the_table() {
        use crate::core::LockOutcome;
        let cases: Vec<CoreResult<Response>> = vec![
            Ok(Response::LockResource(LockOutcome::Granted {
                locked: true,
                lock_token: "lk_1".into(),
                expires_in_seconds: 9,
                fence: 3,
                fresh: false,
                expires_at: 0,
            })),
            Ok(Response::ListLocks(crate::core::Listed {
                items: vec![],
                next_cursor: None,
                as_page: false,
                without: None,
            })),
            Err(CoreError::invalid(
                "ttl_seconds",
                "must be between 1 and 2592000 seconds",
            )),
            Err(CoreError::Storage("disk full".into())),
            Err(CoreError::ShuttingDown),
        ];
        for case in cases {
            assert_eq!(decode(&encode(&case)), case);
        }
        assert!(matches!(decode("not json"), Err(CoreError::Storage(_))));
        assert!(matches!(decode("{}"), Err(CoreError::Storage(_))));
    }
}
