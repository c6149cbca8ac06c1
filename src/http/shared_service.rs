//! rmcp's service behind an `Arc`, for the router.
//!
//! axum clones a route's service for every request that reaches it, and the edge's middleware
//! clones it once more whether or not it calls it. `StreamableHttpService` is not cheap to clone
//! (its configuration holds a cancellation token, whose clone and drop each lock a mutex), and
//! most requests never reach it: the edge answers plain `tools/call`s itself. Behind an `Arc`
//! those clones are a reference count; rmcp's own clone happens only when a request is handed
//! to it (its `call` clones itself into the future it returns).

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::http::Request;
use rmcp::transport::streamable_http_server::session::never::NeverSessionManager;
use rmcp::transport::StreamableHttpService;
use tower::Service;

use crate::mcp::AirlockMcp;

type Inner = StreamableHttpService<AirlockMcp, NeverSessionManager>;

/// rmcp's Streamable HTTP service, shared.
#[derive(Clone)]
pub(super) struct SharedRmcp(Arc<Inner>);

impl SharedRmcp {
    pub(super) fn new(inner: Inner) -> Self {
        SharedRmcp(Arc::new(inner))
    }
}

impl Service<Request<Body>> for SharedRmcp {
    type Response = <Inner as Service<Request<Body>>>::Response;
    type Error = Infallible;
    type Future = <Inner as Service<Request<Body>>>::Future;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // rmcp's service is always ready.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        Inner::clone(&self.0).call(req)
    }
}
