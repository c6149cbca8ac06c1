//! The TCP listener, with a cap on open connections.
//!
//! Every connection holds a file descriptor, whether or not it ever sends a request, and no token
//! is needed to open one. Without a cap, a local process could open connections until the daemon
//! runs out of descriptors, and then accepting stalls for everyone. Above the cap a connection is
//! answered at once with a JSON-RPC-shaped `503` and closed; the descriptors kept in reserve
//! (below the open-files limit) leave room for that answer, the database and the logs.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Descriptors kept free below the open-files limit.
pub const FD_RESERVE: usize = 256;
/// Connections being turned away at once. Past this, accepting waits for one to finish (the
/// kernel's backlog holds the rest), so a flood cannot spend the descriptor reserve.
const MAX_REJECTING: usize = 64;

/// A listener that admits at most `cap` connections at a time.
pub struct CappedListener {
    inner: TcpListener,
    open: Arc<Semaphore>,
    rejecting: Arc<Semaphore>,
    cap: usize,
    /// When the last "cap reached" warning was logged, and how many were turned away since:
    /// under a flood, one line a second rather than one per connection.
    last_warning: Option<std::time::Instant>,
    turned_away: u64,
}

impl CappedListener {
    pub fn new(inner: TcpListener, cap: usize) -> Self {
        CappedListener {
            inner,
            open: Arc::new(Semaphore::new(cap)),
            rejecting: Arc::new(Semaphore::new(MAX_REJECTING)),
            cap,
            last_warning: None,
            turned_away: 0,
        }
    }

    /// The connection cap to use: room for every request in flight plus idle keep-alive
    /// connections, but never closer than [`FD_RESERVE`] to the open-files limit.
    pub fn cap_for(max_in_flight: usize, open_files_limit: usize) -> usize {
        (max_in_flight + FD_RESERVE)
            .min(open_files_limit.saturating_sub(FD_RESERVE))
            .max(1)
    }
}

/// A connection admitted under the cap; its place is given back when it closes.
pub struct CappedStream {
    stream: TcpStream,
    _place: OwnedSemaphorePermit,
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
async fn turn_away(mut stream: TcpStream, cap: usize) {
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
    if let Ok(false) = tokio::time::timeout(Duration::from_secs(2), head).await {
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

impl axum::serve::Listener for CappedListener {
    type Io = CappedStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (stream, addr) = match self.inner.accept().await {
                Ok(pair) => pair,
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
            match self.open.clone().try_acquire_owned() {
                Ok(place) => {
                    return (
                        CappedStream {
                            stream,
                            _place: place,
                        },
                        addr,
                    )
                }
                Err(_) => {
                    self.turned_away += 1;
                    if self
                        .last_warning
                        .is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
                    {
                        tracing::warn!(
                            cap = self.cap,
                            turned_away = self.turned_away,
                            "connection cap reached; answering 503"
                        );
                        self.last_warning = Some(std::time::Instant::now());
                        self.turned_away = 0;
                    }
                    if let Ok(slot) = self.rejecting.clone().acquire_owned().await {
                        let cap = self.cap;
                        tokio::spawn(async move {
                            turn_away(stream, cap).await;
                            drop(slot);
                        });
                    }
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
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

impl AsyncWrite for CappedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

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
