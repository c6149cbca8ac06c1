//! Several daemons, one PostgreSQL database.
//!
//! With `--store postgres://…` every daemon on every machine points at one database, and exactly
//! one of them at a time is the *coordinator*: the daemon holding the advisory lock
//! [`calls::COORDINATOR_LOCK`] on a dedicated connection. The coordinator runs the ordinary
//! engine (group commit, FIFO wait lines, deadlines; `crate::core`) over a
//! [`PgStore`] on that very connection, its clock anchored to the database's clock. The other
//! daemons forward each tool call through the `airlock.calls` table ([`calls`]) and hear the
//! answer by LISTEN/NOTIFY; the coordinator runs it exactly as a local call. So every guarantee
//! of one daemon holds across all of them: one engine decides, in one order.
//!
//! Invariants:
//! - Only the session holding the coordinator lock writes state, and it writes only through the
//!   engine on that same session: when the session ends, its lock is released and nothing more
//!   of its commits. Another daemon's blocked `pg_advisory_lock` returns at that moment and it
//!   takes over, rebuilding its deadlines from the tables.
//! - Notifications are hints. Every answer and every call is re-read from the table, and a
//!   safety net ([`SAFETY_NET`]) re-reads whatever a lost notification would have announced.
//! - An answer carrying a grant is released if its caller went away before reading it: the grant
//!   is kept beside the answer until the receiving daemon deletes the row.
//! - A daemon whose listening connection is gone is treated as dead: its unanswered calls are
//!   cancelled and unread grants released. It refuses new calls until it has reconnected.

mod coordinate;
mod forward;

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::core::{Coordinator, CoreApi, CoreError, CoreResult, ProgressFn, Request, Response};

/// How often unanswered calls and unclaimed answers are re-read, in case a notification was lost.
pub const SAFETY_NET: Duration = Duration::from_secs(1);
/// What a call hears when the engine it ran on stopped because its daemon stopped coordinating.
const STEPPED_DOWN: &str = "the daemon running this call stopped coordinating the shared database \
    (it lost its database session or is stopping); the call may or may not have taken effect: \
    check, then retry";
/// Sets a daemon's own sessions (the coordinator's and the listening one) so that the server,
/// too, notices a daemon that vanished without closing them within seconds, and frees the
/// advisory locks they hold. `tcp_user_timeout` (which also covers data waiting for its
/// acknowledgement) needs PostgreSQL 12; older servers go without it.
async fn keep_alive(client: &tokio_postgres::Client) -> Result<(), tokio_postgres::Error> {
    client
        .batch_execute(
            "SET tcp_keepalives_idle = 5; SET tcp_keepalives_interval = 2; \
             SET tcp_keepalives_count = 3",
        )
        .await?;
    if let Err(e) = client.batch_execute("SET tcp_user_timeout = 11000").await {
        tracing::debug!(error = %e, "the server has no tcp_user_timeout (PostgreSQL < 12)");
    }
    Ok(())
}

/// How long to wait before reconnecting after the database went away.
const RECONNECT_AFTER: Duration = Duration::from_millis(500);

/// The core as the request path sees it on a daemon in a group sharing one PostgreSQL
/// database: its own engine while it coordinates, the coordinating daemon otherwise.
#[derive(Clone)]
pub struct Shared(pub Arc<Node>);

impl CoreApi for Shared {
    fn call(
        &self,
        request: Request,
        progress: Option<ProgressFn>,
    ) -> BoxFuture<'_, CoreResult<Response>> {
        Box::pin(async move {
            match self.0.coordinator() {
                // A local engine that stopped under a call answers `ShuttingDown`; here that
                // happens when this daemon gives up coordinating (its database session was
                // lost) while it keeps running, and the caller must not be told the daemon is
                // shutting down.
                Some(c) => match c.call(request, progress).await {
                    Err(CoreError::ShuttingDown) if !self.0.is_stopping() => {
                        Err(CoreError::Storage(STEPPED_DOWN.into()))
                    }
                    outcome => outcome,
                },
                // Another daemon coordinates the shared database: it runs the call.
                None => self.0.forward(request, progress).await,
            }
        })
    }

    fn drain(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.0.drain())
    }

    /// While this daemon coordinates, its engine's changes; when it steps down the signal ends
    /// (a live view then reconnects and re-reads now and then).
    fn changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        self.0.coordinator().and_then(|c| c.changes())
    }

    fn engine_metrics(&self) -> Option<std::sync::Arc<crate::core::metrics::EngineMetrics>> {
        self.0.coordinator().and_then(|c| c.engine_metrics())
    }
}

/// This daemon's place among the daemons sharing one database.
pub struct Node {
    /// Random, per process: names this daemon's rows and notification channel.
    id: String,
    pg: tokio_postgres::Config,
    /// TLS for every connection `pg` makes, checking what the URL's sslmode asks.
    tls: crate::store::postgres::tls::Connector,
    /// For forwarding, answering and cleaning up (never for state: the engine has its own).
    pool: deadpool_postgres::Pool,
    /// The engine, while this daemon coordinates.
    engine: RwLock<Option<Coordinator>>,
    /// Calls sent to the coordinator and not answered yet.
    waiting: Mutex<Waiting>,
    /// Calls whose callers went away, still to be withdrawn (the database was unreachable).
    to_withdraw: Mutex<Vec<i64>>,
    /// The listening connection's client, while it is up.
    listener: tokio::sync::Mutex<Option<tokio_postgres::Client>>,
    /// Calls are refused while the listening connection is down.
    listening: AtomicBool,
    /// Cancelled by `drain`: no new work; the coordinator role is given up.
    stop: CancellationToken,
    /// Held while this daemon coordinates, until its engine has stopped.
    coordinating: tokio::sync::Mutex<()>,
    /// Notifications for the coordinator role. Bounded ([`HINTS`]): past it a notification is
    /// dropped, and the one-second safety net finds the call instead.
    to_coordinator: mpsc::Sender<String>,
    coordinator_rx: tokio::sync::Mutex<mpsc::Receiver<String>>,
    /// The storage quota the engine enforces while this daemon coordinates.
    state_quota: u64,
    /// Ids of answered calls, for the answer fetcher. Bounded like `to_coordinator`.
    answers_tx: mpsc::Sender<i64>,
    /// Ids of answers read, for deletion. Never dropped (a row left behind holds a read grant);
    /// bounded by the calls this daemon has answered and not yet forgotten.
    forget_tx: mpsc::UnboundedSender<i64>,
    /// Forwarded calls this daemon runs as coordinator: id → cancel.
    running: Mutex<HashMap<i64, Running>>,
}

/// A forwarded call this daemon runs as coordinator.
struct Running {
    /// Stops it (dropping it takes it out of any line).
    cancel: oneshot::Sender<()>,
    /// Whether a successor may run it again ([`crate::core::Tool::repeatable_at_takeover`]).
    repeatable: bool,
    /// The coordinator term (engine session's backend pid) running it.
    pid: i32,
}

/// What a waiting forwarded call is told.
struct Answer {
    outcome: CoreResult<Response>,
    /// Read from its row (which may now be deleted); otherwise made here (the database went
    /// away, or the daemon is stopping) and the row, with any grant, is still to be withdrawn.
    from_row: bool,
}

/// How many notifications (hints: the safety net re-reads what a lost one announced) wait in a
/// channel before more are dropped, so a flood cannot grow a daemon's memory without bound.
const HINTS: usize = 65_536;

#[derive(Default)]
struct Waiting {
    calls: HashMap<i64, oneshot::Sender<Answer>>,
    /// Answers announced before the sender learned its call's id. Ids grow, so past a bound
    /// the oldest go first: an announcement whose caller is still to come is always recent.
    early: BTreeSet<i64>,
}

/// Connects to `url`, migrates the schema, and starts this daemon's part in the group: the
/// listening connection and the contest for the coordinator lock. Returns once connected.
/// Joins the daemons on the database at `url`: connects, migrates, and contends for the
/// coordinator role. `state_quota` is the storage quota its engine enforces while it coordinates
/// (`AIRLOCK_MAX_STATE_BYTES`, measured over the whole shared state).
pub async fn join(url: &str, pool_size: usize, state_quota: u64) -> anyhow::Result<Arc<Node>> {
    use anyhow::Context;
    let shown = crate::config::redact_url(url);
    // sslmode / sslrootcert as libpq reads them (store::postgres::tls).
    let target =
        crate::store::postgres::tls::parse(url).map_err(|e| anyhow::anyhow!("--store: {e}"))?;
    let (mut pg, tls, ssl_mode) = (target.config, target.tls, target.mode);
    // A password in the URL shows in `ps` when given as --store; PGPASSWORD keeps it out.
    if pg.get_password().is_none() {
        if let Some(password) = std::env::var_os("PGPASSWORD").filter(|p| !p.is_empty()) {
            pg.password(password.into_encoded_bytes());
        }
    }
    let id = hex::encode(rand::random::<[u8; 8]>());
    pg.application_name(format!("airlock {id}"));
    if pg.get_connect_timeout().is_none() {
        pg.connect_timeout(Duration::from_secs(10));
    }
    // A peer that vanishes (machine off, cable out) is noticed in about 11 s, not hours.
    pg.keepalives(true)
        .keepalives_idle(Duration::from_secs(5))
        .keepalives_interval(Duration::from_secs(2))
        .keepalives_retries(3)
        // Keepalives never fire while sent data waits for its acknowledgement (a busy peer that
        // lost power): this bounds that case too.
        .tcp_user_timeout(Duration::from_secs(11));

    let (mut client, conn) = match pg.connect(tls.clone()).await {
        Ok(c) => c,
        Err(e) => {
            let e = anyhow::Error::new(e);
            let hint = crate::store::postgres::tls::hint(ssl_mode, &format!("{e:#}"))
                .map(|h| format!(" ({h})"))
                .unwrap_or_default();
            return Err(e.context(format!("cannot connect to PostgreSQL at {shown}{hint}")));
        }
    };
    let driver = tokio::spawn(conn);
    crate::store::postgres::migrate(&mut client)
        .await
        .with_context(|| format!("cannot prepare the airlock schema in {shown}"))?;
    drop(client);
    let _ = driver.await;

    // Forwarding traffic needs no fsync of its own (see `store::calls`).
    let mut pool_pg = pg.clone();
    // No forwarding statement may hang a call: 30 s, like the engine's own queries. Appended to
    // whatever `options` the URL gave.
    let options = match pg.get_options() {
        Some(given) => format!("{given} -c synchronous_commit=off -c statement_timeout=30s"),
        None => "-c synchronous_commit=off -c statement_timeout=30s".to_string(),
    };
    pool_pg.options(options);
    let manager = deadpool_postgres::Manager::from_config(
        pool_pg,
        tls.clone(),
        deadpool_postgres::ManagerConfig {
            recycling_method: deadpool_postgres::RecyclingMethod::Fast,
        },
    );
    let pool = deadpool_postgres::Pool::builder(manager)
        .max_size(pool_size)
        .wait_timeout(Some(Duration::from_secs(30)))
        .create_timeout(Some(Duration::from_secs(10)))
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .build()
        .context("cannot build the PostgreSQL connection pool")?;

    let (node, answers_rx, forget_rx) = Node::new(id, pg, tls, pool, state_quota);
    let (up_tx, up_rx) = oneshot::channel();
    tokio::spawn(forward::listen(node.clone(), Some(up_tx)));
    tokio::spawn(forward::fetch_answers(node.clone(), answers_rx));
    tokio::spawn(forward::forget_read(node.clone(), forget_rx));
    tokio::spawn(forward::safety_net(node.clone()));
    tokio::spawn(coordinate::contend(node.clone()));
    let _ = up_rx.await;
    tracing::info!(daemon = %node.id, store = %shown, ?ssl_mode, "joined the shared database");
    Ok(node)
}

impl Node {
    /// A node that has started nothing yet (no connection is made here), and what its
    /// background tasks read: answered ids for `fetch_answers`, read ones for `forget_read`.
    fn new(
        id: String,
        pg: tokio_postgres::Config,
        tls: crate::store::postgres::tls::Connector,
        pool: deadpool_postgres::Pool,
        state_quota: u64,
    ) -> (Arc<Node>, mpsc::Receiver<i64>, mpsc::UnboundedReceiver<i64>) {
        let (to_coordinator, coordinator_rx) = mpsc::channel(HINTS);
        let (answers_tx, answers_rx) = mpsc::channel(HINTS);
        let (forget_tx, forget_rx) = mpsc::unbounded_channel();
        let node = Arc::new(Node {
            id,
            pg,
            tls,
            pool,
            engine: RwLock::new(None),
            waiting: Mutex::new(Waiting::default()),
            to_withdraw: Mutex::new(Vec::new()),
            listener: tokio::sync::Mutex::new(None),
            listening: AtomicBool::new(false),
            stop: CancellationToken::new(),
            coordinating: tokio::sync::Mutex::new(()),
            to_coordinator,
            coordinator_rx: tokio::sync::Mutex::new(coordinator_rx),
            answers_tx,
            forget_tx,
            running: Mutex::new(HashMap::new()),
            state_quota,
        });
        (node, answers_rx, forget_rx)
    }

    fn coordinator(&self) -> Option<Coordinator> {
        self.engine.read().expect("engine lock").clone()
    }

    fn is_stopping(&self) -> bool {
        self.stop.is_cancelled()
    }

    /// This daemon's id (names its rows in `airlock.calls`).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Whether this daemon coordinates now.
    pub fn is_coordinator(&self) -> bool {
        self.coordinator().is_some()
    }

    async fn drain(self: &Arc<Self>) {
        self.stop.cancel();
        forward::drain(self).await;
        coordinate::drain(self).await;
    }
}

/// A connection from the pool, or the error a caller sees.
async fn pooled(node: &Node) -> CoreResult<deadpool_postgres::Object> {
    node.pool.get().await.map_err(|e| {
        CoreError::Storage(format!(
            "the database is unreachable ({}); the call did not run",
            e
        ))
    })
}

fn db_error(what: &str, e: tokio_postgres::Error) -> CoreError {
    let detail = match e.as_db_error() {
        Some(db) => db.message().to_string(),
        None => e.to_string(),
    };
    CoreError::Storage(format!("{what}: {detail}"))
}
