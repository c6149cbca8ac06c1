//! The web dashboard: three static files compiled into the binary (`/ui`, `/ui/app.js`,
//! `/ui/style.css`) and the live stream it reads (`GET /events/stream`).
//!
//! The pages hold no data and need no token, so a browser can open them; they still pass the
//! edge's Host and Origin checks, and their Content-Security-Policy allows nothing but this
//! origin. Every byte of state comes from the stream, which sits behind the edge's token guard:
//! the page asks for the token, keeps it in `sessionStorage`, and sends it in the
//! `Authorization` header of a `fetch()` (an `EventSource` cannot send headers, and a token in a
//! URL would end up in logs and history).
//!
//! The stream is Server-Sent Events. It sends a `status` event (the `GET /status` snapshot) at
//! once, then again whenever the engine says something changed, at most once a second, and a
//! comment every [`HEARTBEAT`] so idle timeouts between the page and the daemon do not cut it.
//! What one stream may hold is bounded: at most [`MAX_STREAMS`] are open at once (more get 503),
//! each lives at most [`STREAM_LIFETIME`] (the page reconnects), produces its next snapshot only
//! once the last one was sent (a slow reader holds one snapshot, never a backlog), and ends when
//! the daemon starts to stop. A caller without the token is refused by the guard before any of
//! this starts.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures::stream::{self, Stream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::core::request::GetHistory;
use crate::core::{CoreApi, Request as CoreRequest, Response as CoreResponse};
use crate::http::{self, EdgeConfig};

const INDEX_HTML: &str = include_str!("index.html");
const APP_JS: &str = include_str!("app.js");
const STYLE_CSS: &str = include_str!("style.css");

/// Most live streams open at once; one more gets 503.
pub const MAX_STREAMS: usize = 16;
/// History entries each snapshot carries for the dashboard's timeline (`history`).
pub const TIMELINE_ENTRIES: i64 = 30;
/// How long one stream lives; the page then opens another (and checks its token again).
pub const STREAM_LIFETIME: Duration = Duration::from_secs(600);
/// How often an idle stream sends a comment.
pub const HEARTBEAT: Duration = Duration::from_secs(15);
/// The least time between two snapshots of one stream.
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// Without a change signal (a daemon forwarding to another in a group), how often a stream
/// re-reads the state.
pub const REREAD_WITHOUT_SIGNAL: Duration = Duration::from_secs(2);

/// The page's Content-Security-Policy: its own scripts, styles and requests only.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                   img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The dashboard's pages: no token (they hold no data), but the edge's Host and Origin checks.
pub fn pages(edge: Arc<EdgeConfig>) -> Router {
    Router::new()
        .route(
            "/ui",
            get(|| async { page(INDEX_HTML, "text/html; charset=utf-8") }),
        )
        .route(
            "/ui/",
            get(|| async { page(INDEX_HTML, "text/html; charset=utf-8") }),
        )
        .route(
            "/ui/app.js",
            get(|| async { page(APP_JS, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/ui/style.css",
            get(|| async { page(STYLE_CSS, "text/css; charset=utf-8") }),
        )
        .layer(middleware::from_fn_with_state(edge, same_machine))
}

fn page(body: &'static str, content_type: &'static str) -> Response {
    let mut r = body.into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// The edge's Host and Origin checks, without the token.
async fn same_machine(State(edge): State<Arc<EdgeConfig>>, req: Request, next: Next) -> Response {
    if let Some(refused) = http::refuse_foreign(&req, &edge) {
        return refused;
    }
    next.run(req).await
}

/// What the stream handler shares.
#[derive(Clone)]
pub struct Streams {
    core: Arc<dyn CoreApi>,
    open: Arc<Semaphore>,
    /// Cancelled when the daemon starts to stop: every stream ends.
    stopping: CancellationToken,
}

impl Streams {
    pub fn new(core: Arc<dyn CoreApi>, stopping: CancellationToken) -> Streams {
        Streams {
            core,
            open: Arc::new(Semaphore::new(MAX_STREAMS)),
            stopping,
        }
    }
}

/// `GET /events/stream` (behind the token guard): the live snapshots, as Server-Sent Events.
pub async fn stream(State(streams): State<Streams>) -> Response {
    let Ok(permit) = streams.open.clone().try_acquire_owned() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("too many live streams open (the cap is {MAX_STREAMS}); close a dashboard"),
        )
            .into_response();
    };
    let live = Live {
        changes: streams.core.changes(),
        core: streams.core,
        stopping: streams.stopping,
        ends_at: Instant::now() + STREAM_LIFETIME,
        last_read: None,
        last_sent: None,
        _permit: permit,
    };
    let mut r = Sse::new(snapshots(live))
        .keep_alive(KeepAlive::new().interval(HEARTBEAT).text("heartbeat"))
        .into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// One open stream.
struct Live {
    core: Arc<dyn CoreApi>,
    changes: Option<watch::Receiver<u64>>,
    stopping: CancellationToken,
    ends_at: Instant,
    /// When the state was last read, for [`MIN_INTERVAL`].
    last_read: Option<Instant>,
    /// The last snapshot sent, so an unchanged one is not sent again.
    last_sent: Option<String>,
    /// Holds this stream's place under [`MAX_STREAMS`] until it ends.
    _permit: OwnedSemaphorePermit,
}

/// Why a stream stops waiting.
enum Wake {
    Changed,
    End,
}

impl Live {
    /// Waits until there may be something new to show (at once for the first snapshot).
    async fn wait(&mut self) -> Wake {
        if let Some(last) = self.last_read {
            let Live {
                changes,
                stopping,
                ends_at,
                ..
            } = self;
            let changed = async {
                match changes {
                    Some(rx) => rx.changed().await.is_ok(),
                    None => {
                        tokio::time::sleep(REREAD_WITHOUT_SIGNAL).await;
                        true
                    }
                }
            };
            let alive = tokio::select! {
                alive = changed => alive,
                _ = stopping.cancelled() => return Wake::End,
                _ = tokio::time::sleep_until(*ends_at) => return Wake::End,
            };
            if !alive {
                // The engine stopped.
                return Wake::End;
            }
            tokio::select! {
                _ = tokio::time::sleep_until(last + MIN_INTERVAL) => {}
                _ = self.stopping.cancelled() => return Wake::End,
            }
        }
        Wake::Changed
    }

    /// The state now, as the JSON of a `status` event; `None` if it is what was last sent.
    async fn read(&mut self) -> Result<Option<String>, String> {
        self.last_read = Some(Instant::now());
        if let Some(rx) = &mut self.changes {
            // Everything up to now is in the snapshot about to be read.
            rx.borrow_and_update();
        }
        let view = match self
            .core
            .call(CoreRequest::Status(Default::default()), None)
            .await
        {
            Ok(CoreResponse::Status(mut view)) => {
                // The engine's own counts move with every read; they are no change of state.
                view.engine = Default::default();
                view
            }
            Ok(other) => return Err(format!("the engine answered status with {other:?}")),
            Err(e) => return Err(e.to_string()),
        };
        // The timeline: the newest entries of the audit history, beside the snapshot.
        let recent = GetHistory {
            limit: Some(TIMELINE_ENTRIES),
            ..GetHistory::default()
        };
        let history = match self.core.call(CoreRequest::GetHistory(recent), None).await {
            Ok(CoreResponse::GetHistory(page)) => page.items,
            Ok(other) => return Err(format!("the engine answered get_history with {other:?}")),
            Err(e) => return Err(e.to_string()),
        };
        let mut snapshot = serde_json::to_value(&view).map_err(|e| e.to_string())?;
        snapshot["history"] = serde_json::to_value(history).map_err(|e| e.to_string())?;
        let json = snapshot.to_string();
        if self.last_sent.as_deref() == Some(json.as_str()) {
            return Ok(None);
        }
        self.last_sent = Some(json.clone());
        Ok(Some(json))
    }
}

fn snapshots(live: Live) -> impl Stream<Item = Result<Event, std::convert::Infallible>> {
    stream::unfold(Some(live), |live| async move {
        let mut live = live?;
        loop {
            if let Wake::End = live.wait().await {
                return Some((Ok(Event::default().event("end").data("reconnect")), None));
            }
            match live.read().await {
                Ok(Some(json)) => {
                    return Some((Ok(Event::default().event("status").data(json)), Some(live)))
                }
                Ok(None) => continue,
                Err(e) => {
                    return Some((Ok(Event::default().event("failure").data(e)), None));
                }
            }
        }
    })
}
