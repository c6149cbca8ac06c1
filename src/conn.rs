//! Serving accepted connections: hyper over each [`CappedStream`], with the deadlines a shared
//! machine needs.
//!
//! Every connection is in one of three phases, and each has its own deadline:
//! - **head**: from accept (or the first byte of the next request on a kept-alive connection)
//!   until hyper has read a whole request head: [`Timeouts::header`] (10 s by default), so a
//!   silent or slowloris socket is closed whatever its pace;
//! - **busy**: at least one request is being answered; no deadline here (a parked call waits up
//!   to 50 s, its answer follows), the edge bounds the body read itself ([`Timeouts::body`]);
//! - **idle**: kept alive between requests: [`Timeouts::idle`] (60 s by default).
//!
//! A watchdog task per connection closes it when its phase's deadline passes. Slots under the
//! connection cap are handed over by [`crate::listener`]: an evicted connection is closed at once.

use std::convert::Infallible;
use std::io;
use std::pin::{pin, Pin};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::Service;

use crate::listener::{CappedListener, CappedStream, ConnHandle};

/// Default for [`Timeouts::header`].
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Default for [`Timeouts::body`].
pub const BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// Default for [`Timeouts::idle`]: longer than a parked call's 50 s window plus its answer.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// How long each phase of a connection may last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// A whole request head, from its first byte (from accept for a new connection).
    pub header: Duration,
    /// A whole request body, once its head is read (enforced by the HTTP edge).
    pub body: Duration,
    /// A kept-alive connection with no request under way.
    pub idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            header: HEADER_TIMEOUT,
            body: BODY_TIMEOUT,
            idle: IDLE_TIMEOUT,
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Phase {
    /// Reading a request head since the instant given.
    Head(Instant),
    /// This many requests are being answered.
    Busy(u32),
    /// Nothing under way since the instant given.
    Idle(Instant),
}

/// What is known about one open connection: its phase, whether it has shown the token, and the
/// switch that closes it.
#[derive(Debug)]
pub struct ConnInfo {
    /// Order of arrival, for the eviction order.
    pub id: u64,
    /// When it was accepted.
    pub opened: Instant,
    phase: Mutex<Phase>,
    /// Wakes the watchdog when the deadline moves earlier or reappears.
    changed: Notify,
    /// Closes the connection (evicted, or the daemon stops for good).
    pub close: CancellationToken,
    /// Its slot was handed to a newer connection: closing it must not free one.
    pub handed_over: AtomicBool,
}

impl ConnInfo {
    pub fn new(id: u64) -> Self {
        ConnInfo {
            id,
            opened: Instant::now(),
            phase: Mutex::new(Phase::Head(Instant::now())),
            changed: Notify::new(),
            close: CancellationToken::new(),
            handed_over: AtomicBool::new(false),
        }
    }

    fn phase(&self) -> std::sync::MutexGuard<'_, Phase> {
        self.phase.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a request of this connection is being answered.
    pub fn is_busy(&self) -> bool {
        matches!(*self.phase(), Phase::Busy(_))
    }

    /// Bytes arrived: an idle connection starts reading a head.
    fn on_read(&self) {
        let mut p = self.phase();
        if let Phase::Idle(_) = *p {
            *p = Phase::Head(Instant::now());
            drop(p);
            self.changed.notify_one();
        }
    }

    /// A request head was read; its answer is under way.
    fn begin(&self) {
        let mut p = self.phase();
        *p = match *p {
            Phase::Busy(n) => Phase::Busy(n + 1),
            _ => Phase::Busy(1),
        };
    }

    /// A request was answered.
    fn end(&self) {
        let mut p = self.phase();
        *p = match *p {
            Phase::Busy(n) if n > 1 => Phase::Busy(n - 1),
            _ => Phase::Idle(Instant::now()),
        };
        drop(p);
        self.changed.notify_one();
    }

    fn deadline(&self, t: &Timeouts) -> Option<Instant> {
        match *self.phase() {
            Phase::Head(since) => Some(since + t.header),
            Phase::Busy(_) => None,
            Phase::Idle(since) => Some(since + t.idle),
        }
    }

    /// Returns when the connection has outlived its phase's deadline.
    async fn expired(&self, t: &Timeouts) {
        loop {
            let changed = self.changed.notified();
            match self.deadline(t) {
                None => changed.await,
                Some(at) if at <= Instant::now() => return,
                Some(at) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(at) => {}
                        _ = changed => {}
                    }
                }
            }
        }
    }
}

/// Marks a request as under way until dropped (when its answer is ready, or it is abandoned).
struct Busy(Arc<ConnInfo>);

impl Busy {
    fn new(info: Arc<ConnInfo>) -> Self {
        info.begin();
        Busy(info)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.end();
    }
}

/// The stream as hyper sees it: reads tell the connection's phase that bytes arrived.
struct Watched {
    stream: CappedStream,
    info: Arc<ConnInfo>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.stream).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.info.on_read();
        }
        r
    }
}

crate::listener::write_through!(Watched);

/// Serves connections from `listener` with `app` until `stop` is cancelled, then lets open
/// connections finish their requests (hyper's graceful shutdown) and returns the tracker of
/// their tasks, for the caller to wait on with a grace period.
pub async fn serve(
    mut listener: CappedListener,
    app: Router,
    timeouts: Timeouts,
    stop: CancellationToken,
) -> TaskTracker {
    let tracker = TaskTracker::new();
    loop {
        let stream = tokio::select! {
            s = listener.accept() => s,
            _ = stop.cancelled() => break,
        };
        let app = app.clone();
        let stop = stop.clone();
        tracker.spawn(serve_one(stream, app, timeouts, stop));
    }
    tracker.close();
    tracker
}

async fn serve_one(stream: CappedStream, app: Router, timeouts: Timeouts, stop: CancellationToken) {
    let handle: ConnHandle = stream.handle();
    let info = handle.info().clone();
    let io = TokioIo::new(Watched {
        stream,
        info: info.clone(),
    });
    let service_info = info.clone();
    let service = hyper::service::service_fn(move |mut req: http::Request<Incoming>| {
        let busy = Busy::new(service_info.clone());
        req.extensions_mut().insert(handle.clone());
        let mut app = app.clone();
        async move {
            let r = app.call(req.map(Body::new)).await;
            drop(busy);
            Ok::<_, Infallible>(r.unwrap_or_else(|e| match e {}))
        }
    });
    let builder = Builder::new(TokioExecutor::new());
    let mut conn = pin!(builder.serve_connection(io, service));
    let mut stopping = false;
    loop {
        tokio::select! {
            _ = conn.as_mut() => return,
            _ = info.expired(&timeouts) => {
                tracing::debug!(conn = info.id, "connection past its deadline; closing it");
                return;
            }
            _ = info.close.cancelled() => return,
            _ = stop.cancelled(), if !stopping => {
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}
