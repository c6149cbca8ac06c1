//! The TCP listener, with a cap on open connections that unauthenticated sockets cannot fill.
//!
//! Every connection holds a file descriptor, whether or not it ever sends a request, and no token
//! is needed to open one. Without a cap, a local process could open connections until the daemon
//! runs out of descriptors, and then accepting stalls for everyone. With a plain cap, the same
//! process could hold every place and lock real clients out. So a connection is *untrusted* until
//! it has sent a request with the right token ([`ConnHandle::trust`]); when the cap is reached, a
//! new connection takes the place of the oldest untrusted one, which is closed. Only when every
//! place is held by a trusted connection is a newcomer answered with a JSON-RPC-shaped `503` and
//! closed; the descriptors kept in reserve (below the open-files limit) leave room for that
//! answer, the database and the logs.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::conn::ConnInfo;

/// Descriptors kept free below the open-files limit.
pub const FD_RESERVE: usize = 256;
/// Most connections being turned away at once (fewer where the open-files limit leaves less room;
/// see [`CappedListener::rejecting_for`]). Only connections that arrive when no untrusted one can
/// be evicted are turned away: every place held by an authenticated client, or all taken in the
/// last [`EVICTABLE_AFTER`] (a burst). Past this many, the oldest that has waited
/// [`EVICTABLE_AFTER`] without sending its request is closed to make room; if none has, accepting
/// waits for a place (real clients are answered within milliseconds; a burst of silent sockets
/// ages within [`EVICTABLE_AFTER`], or the 2 s of an answer's drain), so silent sockets can stall
/// it for about that long at most.
pub const MAX_REJECTING: usize = 1024;
/// How old an untrusted connection must be before a newcomer may take its place.
pub const EVICTABLE_AFTER: Duration = Duration::from_secs(3);

/// The places under the cap, and the untrusted connections in order of arrival.
#[derive(Debug)]
struct Places {
    cap: usize,
    open: usize,
    next_id: u64,
    untrusted: BTreeMap<u64, Arc<ConnInfo>>,
}

/// A listener that keeps at most `cap` connections open at a time.
pub struct CappedListener {
    inner: TcpListener,
    places: Arc<Mutex<Places>>,
    rejecting: Arc<Mutex<Rejecting>>,
    max_rejecting: usize,
    cap: usize,
    /// When the last "cap reached" warning was logged, and how many were turned away or evicted
    /// since: under a flood, one line a second rather than one per connection.
    last_warning: Option<std::time::Instant>,
    turned_away: u64,
    evicted: u64,
}

impl CappedListener {
    /// A listener keeping at most `cap` connections open, and turning away at most
    /// `max_rejecting` at once.
    pub fn new(inner: TcpListener, cap: usize, max_rejecting: usize) -> Self {
        CappedListener {
            inner,
            places: Arc::new(Mutex::new(Places {
                cap,
                open: 0,
                next_id: 0,
                untrusted: BTreeMap::new(),
            })),
            rejecting: Arc::new(Mutex::new(Rejecting::default())),
            max_rejecting: max_rejecting.max(1),
            cap,
            last_warning: None,
            turned_away: 0,
            evicted: 0,
        }
    }

    /// A place for a new connection: a free one, else the oldest untrusted connection's (that
    /// connection is told to close). `None` when every place is held by a trusted connection.
    fn admit(&mut self) -> Option<Place> {
        let mut p = lock(&self.places);
        if p.open >= p.cap {
            // The oldest untrusted connection that is not being answered and has had time to
            // send its request: a real client sends it at once, so a connection evicted only
            // after [`EVICTABLE_AFTER`] is one that is holding a place without using it.
            let now = tokio::time::Instant::now();
            let id = p
                .untrusted
                .values()
                .take_while(|c| now.duration_since(c.opened) >= EVICTABLE_AFTER)
                .find(|c| !c.is_busy())?
                .id;
            let victim = p.untrusted.remove(&id)?;
            victim.handed_over.store(true, Ordering::SeqCst);
            victim.close.cancel();
            self.evicted += 1;
        } else {
            p.open += 1;
        }
        let id = p.next_id;
        p.next_id += 1;
        let info = Arc::new(ConnInfo::new(id));
        p.untrusted.insert(id, info.clone());
        Some(Place {
            places: self.places.clone(),
            info,
        })
    }

    fn warn_at_cap(&mut self) {
        if self
            .last_warning
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
        {
            tracing::warn!(
                cap = self.cap,
                turned_away = self.turned_away,
                evicted_untrusted = self.evicted,
                "connection cap reached"
            );
            self.last_warning = Some(std::time::Instant::now());
            self.turned_away = 0;
            self.evicted = 0;
        }
    }

    /// How many connections may be turned away at once: what the open-files limit leaves above
    /// the cap and half the reserve, between 16 and [`MAX_REJECTING`].
    pub fn rejecting_for(cap: usize, open_files_limit: usize) -> usize {
        open_files_limit
            .saturating_sub(cap + FD_RESERVE / 2)
            .clamp(16, MAX_REJECTING)
    }

    /// A place among the connections being turned away, or `None` (close the newcomer).
    fn start_rejecting(&self) -> Option<(u64, Arc<Rejection>)> {
        let mut r = self.rejecting.lock().unwrap_or_else(|p| p.into_inner());
        if r.open.len() >= self.max_rejecting {
            let id = *r
                .open
                .iter()
                .take_while(|(_, x)| x.since.elapsed() >= EVICTABLE_AFTER)
                .find(|(_, x)| !x.answered.load(Ordering::SeqCst))?
                .0;
            if let Some(oldest) = r.open.remove(&id) {
                oldest.stop.cancel();
            }
        }
        let id = r.next_id;
        r.next_id += 1;
        let x = Arc::new(Rejection {
            since: std::time::Instant::now(),
            stop: CancellationToken::new(),
            answered: AtomicBool::new(false),
        });
        r.open.insert(id, x.clone());
        Some((id, x))
    }

    /// The connection cap to use: room for every request in flight plus idle keep-alive
    /// connections, but never closer than [`FD_RESERVE`] to the open-files limit.
    pub fn cap_for(max_in_flight: usize, open_files_limit: usize) -> usize {
        (max_in_flight + FD_RESERVE)
            .min(open_files_limit.saturating_sub(FD_RESERVE))
            .max(1)
    }
}

/// The connections being turned away, oldest first.
#[derive(Default)]
struct Rejecting {
    next_id: u64,
    open: BTreeMap<u64, Arc<Rejection>>,
}

/// One connection being turned away.
struct Rejection {
    since: std::time::Instant,
    /// Closes it unanswered (to make room).
    stop: CancellationToken,
    /// Its request has come (or it was given up on); it is being answered.
    answered: AtomicBool,
}

fn lock(places: &Mutex<Places>) -> std::sync::MutexGuard<'_, Places> {
    places.lock().unwrap_or_else(|p| p.into_inner())
}

/// One place under the cap, given back when the connection holding it closes (unless it was
/// handed to a newer connection).
#[derive(Debug)]
struct Place {
    places: Arc<Mutex<Places>>,
    info: Arc<ConnInfo>,
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut p = lock(&self.places);
        p.untrusted.remove(&self.info.id);
        if !self.info.handed_over.load(Ordering::SeqCst) {
            p.open -= 1;
        }
    }
}

/// What a request knows of its connection (a request extension): the HTTP edge calls
/// [`ConnHandle::trust`] once the request has shown the token.
#[derive(Debug, Clone)]
pub struct ConnHandle(Arc<Place>);

impl ConnHandle {
    pub fn info(&self) -> &Arc<ConnInfo> {
        &self.0.info
    }

    /// This connection has authenticated: it is no longer evicted to make room.
    pub fn trust(&self) {
        lock(&self.0.places).untrusted.remove(&self.0.info.id);
    }
}

/// A connection admitted under the cap; its place is given back when it closes.
pub struct CappedStream {
    stream: TcpStream,
    place: ConnHandle,
}

impl CappedStream {
    pub fn handle(&self) -> ConnHandle {
        self.place.clone()
    }
}

fn over_cap_answer(cap: usize) -> Vec<u8> {
    let body = format!(
        "{{\"jsonrpc\":\"2.0\",\"id\":null,\"error\":{{\"code\":-32003,\"message\":\"too many open \
         connections (the cap is {cap}); retry shortly\"}}}}"
    );
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: \
         {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Answers 503 and closes. The request head is read first (an HTTP client treats an answer
/// that comes before its request as a protocol error), and what follows is drained after, so the
/// close is not a reset that could destroy the answer before the client reads it.
async fn turn_away(mut stream: TcpStream, cap: usize, me: Arc<Rejection>) {
    let mut buf = vec![0u8; 16 * 1024];
    let mut seen = 0;
    let head = async {
        while seen < buf.len() {
            match stream.read(&mut buf[seen..]).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => seen += n,
            }
            if buf[..seen].windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
        true
    };
    // A whole head, an over-long one, or a client that sent nothing in time is answered; one
    // that closed or failed is not.
    let answer = tokio::select! {
        r = tokio::time::timeout(Duration::from_secs(2), head) => !matches!(r, Ok(false)),
        _ = me.stop.cancelled() => false,
    };
    me.answered.store(true, Ordering::SeqCst);
    if !answer {
        return;
    }
    let _ = stream.write_all(&over_cap_answer(cap)).await;
    let _ = stream.shutdown().await;
    let drain = async {
        while let Ok(n) = stream.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), drain).await;
}

impl CappedListener {
    /// The next connection admitted under the cap. Connections over it are answered `503` and
    /// closed in the background.
    pub async fn accept(&mut self) -> CappedStream {
        loop {
            let stream = match self.inner.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    if !matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionRefused
                            | io::ErrorKind::ConnectionAborted
                            | io::ErrorKind::ConnectionReset
                    ) {
                        tracing::error!(error = %e, "accept failed; retrying in 1 s");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    continue;
                }
            };
            // Answers are single small writes; do not let Nagle hold them back.
            let _ = stream.set_nodelay(true);
            let evicted_before = self.evicted;
            let admitted = self.admit();
            if admitted.is_none() {
                self.turned_away += 1;
            }
            if admitted.is_none() || self.evicted != evicted_before {
                self.warn_at_cap();
            }
            match admitted {
                Some(place) => {
                    return CappedStream {
                        stream,
                        place: ConnHandle(Arc::new(place)),
                    }
                }
                None => {
                    // Every place to answer from is taken by a recent arrival: wait for one
                    // (they are answered within milliseconds, or age past EVICTABLE_AFTER).
                    let (id, me) = loop {
                        if let Some(place) = self.start_rejecting() {
                            break place;
                        }
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    };
                    let cap = self.cap;
                    let rejecting = self.rejecting.clone();
                    tokio::spawn(async move {
                        turn_away(stream, cap, me).await;
                        let mut r = rejecting.lock().unwrap_or_else(|p| p.into_inner());
                        r.open.remove(&id);
                    });
                }
            }
        }
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

impl AsyncRead for CappedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

/// `AsyncWrite` for a stream wrapper that passes every write to its `stream` field unchanged
/// (the wrappers here only watch or count reads and connections).
macro_rules! write_through {
    ($wrapper:ty) => {
        impl tokio::io::AsyncWrite for $wrapper {
            fn poll_write(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &[u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.stream).poll_write(cx, buf)
            }

            fn poll_flush(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.stream).poll_flush(cx)
            }

            fn poll_shutdown(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.stream).poll_shutdown(cx)
            }

            fn poll_write_vectored(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                bufs: &[std::io::IoSlice<'_>],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
            }

            fn is_write_vectored(&self) -> bool {
                self.stream.is_write_vectored()
            }
        }
    };
}
pub(crate) use write_through;

write_through!(CappedStream);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_leaves_a_reserve_below_the_open_files_limit() {
        assert_eq!(
            CappedListener::cap_for(16_384, 1 << 20),
            16_384 + FD_RESERVE
        );
        assert_eq!(CappedListener::cap_for(16_384, 20_000), 16_384 + FD_RESERVE);
        assert_eq!(CappedListener::cap_for(16_384, 4_096), 4_096 - FD_RESERVE);
        assert_eq!(CappedListener::cap_for(64, 100), 1);
        assert_eq!(CappedListener::rejecting_for(16_640, 20_000), MAX_REJECTING);
        assert_eq!(CappedListener::rejecting_for(3_840, 4_096), 128);
        assert_eq!(CappedListener::rejecting_for(64, 100), 16);
    }

    #[test]
    fn the_over_cap_answer_is_well_formed_http_with_a_json_rpc_body() {
        let a = String::from_utf8(over_cap_answer(10)).unwrap();
        let (head, body) = a.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 503 "));
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"]["code"], -32003);
    }
}
