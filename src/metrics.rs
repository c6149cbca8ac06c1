//! `GET /metrics`: what the daemon has done, in Prometheus' text format (version 0.0.4), behind
//! the token guard.
//!
//! Three sources, none of which costs the request path more than a few atomic adds:
//! - [`Metered`], a [`CoreApi`] in front of the core that counts every tool call the MCP layer
//!   makes, by tool and outcome, and times it into a histogram;
//! - [`EngineMetrics`], kept by the engine thread: how long each commit took (the fsync) and how
//!   many operations it carried;
//! - a status snapshot read when the metrics are asked for: locks held, parked waiters, queue
//!   depths, agents present, and the engine's commit and operation counts.
//!
//! Histograms are arrays of atomic counters with fixed bucket bounds, so recording never
//! allocates or locks.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::future::BoxFuture;

pub use crate::core::metrics::{EngineMetrics, Histogram};
use crate::core::{
    request::ListPage, CoreApi, CoreError, CoreResult, ProgressFn, Request,
    Response as CoreResponse, StatusCursor, StatusView, Tool, MAX_PAGE_ITEMS,
};

/// Bucket bounds of the call-latency histogram, in seconds (parked calls reach the high ones).
const CALL_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

/// The `_bucket`, `_sum` and `_count` lines of histogram `name` with `labels` (`k="v",…` or
/// empty).
fn render_histogram(h: &Histogram, out: &mut String, name: &str, labels: &str) {
    let sep = if labels.is_empty() { "" } else { "," };
    let (buckets, count, sum) = h.snapshot();
    for (b, cumulative) in buckets {
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {cumulative}");
    }
    let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
    let braces = |s: &str| {
        if s.is_empty() {
            String::new()
        } else {
            format!("{{{s}}}")
        }
    };
    let _ = writeln!(out, "{name}_sum{} {sum}", braces(labels));
    let _ = writeln!(out, "{name}_count{} {count}", braces(labels));
}

/// How a call ended, as the `outcome` label says it.
const OUTCOMES: [&str; 4] = ["ok", "invalid", "storage_error", "shutting_down"];

fn outcome_index(r: &CoreResult<CoreResponse>) -> usize {
    match r {
        Ok(_) => 0,
        Err(CoreError::Invalid { .. }) => 1,
        Err(CoreError::Storage(_)) => 2,
        Err(CoreError::ShuttingDown) => 3,
    }
}

/// Per tool: calls by outcome, and their latency.
struct ToolMetrics {
    outcomes: [AtomicU64; 4],
    seconds: Histogram,
}

/// The calls the MCP layer made, by tool.
pub struct CallMetrics {
    tools: Vec<ToolMetrics>,
}

impl Default for CallMetrics {
    fn default() -> Self {
        CallMetrics {
            tools: Tool::ALL
                .iter()
                .map(|_| ToolMetrics {
                    outcomes: Default::default(),
                    seconds: Histogram::new(CALL_BUCKETS),
                })
                .collect(),
        }
    }
}

impl CallMetrics {
    fn of(&self, tool: Tool) -> &ToolMetrics {
        let i = Tool::ALL.iter().position(|t| *t == tool).unwrap_or(0);
        &self.tools[i]
    }
}

/// The core, with every call counted and timed.
pub struct Metered {
    inner: Arc<dyn CoreApi>,
    calls: Arc<CallMetrics>,
}

impl Metered {
    pub fn new(inner: Arc<dyn CoreApi>, calls: Arc<CallMetrics>) -> Metered {
        Metered { inner, calls }
    }
}

impl CoreApi for Metered {
    fn call(
        &self,
        request: Request,
        progress: Option<ProgressFn>,
    ) -> BoxFuture<'_, CoreResult<CoreResponse>> {
        // The inner future is made here, so this one keeps only it (not the request) for as
        // long as a parked call lasts.
        let tool = request.tool();
        let started = Instant::now();
        let call = self.inner.call(request, progress);
        Box::pin(async move {
            let r = call.await;
            let m = self.calls.of(tool);
            m.outcomes[outcome_index(&r)].fetch_add(1, Ordering::Relaxed);
            m.seconds.observe(started.elapsed().as_secs_f64());
            r
        })
    }

    fn drain(&self) -> BoxFuture<'_, ()> {
        self.inner.drain()
    }

    fn changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        self.inner.changes()
    }

    fn engine_metrics(&self) -> Option<Arc<EngineMetrics>> {
        self.inner.engine_metrics()
    }
}

/// What `GET /metrics` reads.
#[derive(Clone)]
pub struct MetricsState {
    pub core: Arc<dyn CoreApi>,
    pub calls: Arc<CallMetrics>,
}

/// `GET /metrics`.
pub async fn handler(State(state): State<MetricsState>) -> Response {
    let view = match whole_status(state.core.as_ref()).await {
        Ok(v) => v,
        Err(e) => return (StatusCode::SERVICE_UNAVAILABLE, e).into_response(),
    };
    let body = render(&state.calls, state.core.engine_metrics().as_deref(), &view);
    let mut r = body.into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    r
}

/// Every page of the status snapshot, one after another, as one view (the gauges count all
/// locks, agents and queues, not only the first page's); without notes or open tasks, which no
/// gauge counts (each scrape would read every note value).
pub async fn whole_status(core: &dyn CoreApi) -> Result<StatusView, String> {
    let mut whole: Option<StatusView> = None;
    let mut cursor = Some(StatusCursor::counts_only().encode());
    loop {
        let page = ListPage {
            limit: Some(MAX_PAGE_ITEMS as i64),
            cursor: cursor.take(),
        };
        let v = match core.call(Request::Status(page), None).await {
            Ok(CoreResponse::Status(v)) => v,
            Ok(other) => return Err(format!("the engine answered status with {other:?}")),
            Err(e) => return Err(e.to_string()),
        };
        cursor = v.next_cursor.clone();
        match &mut whole {
            None => whole = Some(v),
            Some(w) => {
                w.locks.extend(v.locks);
                w.agents.extend(v.agents);
                w.events.extend(v.events);
                w.queues.extend(v.queues);
            }
        }
        if cursor.is_none() {
            return whole.ok_or_else(|| "no status page".to_string());
        }
    }
}

/// A label value, escaped as the text format wants (backslash, double quote, newline).
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn head(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// The whole exposition.
pub fn render(calls: &CallMetrics, engine: Option<&EngineMetrics>, view: &StatusView) -> String {
    let mut out = String::new();
    head(
        &mut out,
        "airlock_calls_total",
        "counter",
        "Tool calls answered by the core, by tool and outcome (ok includes 'no' answers such as locked:false).",
    );
    for (tool, m) in Tool::ALL.iter().zip(&calls.tools) {
        for (o, n) in OUTCOMES.iter().zip(&m.outcomes) {
            let n = n.load(Ordering::Relaxed);
            if n > 0 {
                let _ = writeln!(
                    out,
                    "airlock_calls_total{{tool=\"{}\",outcome=\"{o}\"}} {n}",
                    tool.name()
                );
            }
        }
    }
    head(
        &mut out,
        "airlock_call_duration_seconds",
        "histogram",
        "Time from a call reaching the core to its answer, parked time included.",
    );
    for (tool, m) in Tool::ALL.iter().zip(&calls.tools) {
        if m.seconds.snapshot().1 > 0 {
            let labels = format!("tool=\"{}\"", tool.name());
            render_histogram(
                &m.seconds,
                &mut out,
                "airlock_call_duration_seconds",
                &labels,
            );
        }
    }

    let held = view.locks.iter().filter(|l| l.agent_id.is_some()).count();
    let reserved = view.locks.len() - held;
    head(&mut out, "airlock_locks_held", "gauge", "Locks held now.");
    let _ = writeln!(out, "airlock_locks_held {held}");
    head(
        &mut out,
        "airlock_locks_reserved",
        "gauge",
        "Free locks kept for the head of their line.",
    );
    let _ = writeln!(out, "airlock_locks_reserved {reserved}");
    let places = |state: &str| -> usize {
        view.locks
            .iter()
            .flat_map(|l| &l.line)
            .filter(|p| p.state == state)
            .count()
    };
    head(
        &mut out,
        "airlock_parked_waiters",
        "gauge",
        "Calls parked in the daemon now, by what they wait for.",
    );
    let events: usize = view.events.iter().map(|e| e.waiters).sum();
    let claims: usize = view.queues.iter().map(|q| q.waiting_claimers).sum();
    let _ = writeln!(
        out,
        "airlock_parked_waiters{{kind=\"lock\"}} {}",
        places("parked")
    );
    let _ = writeln!(out, "airlock_parked_waiters{{kind=\"event\"}} {events}");
    let _ = writeln!(out, "airlock_parked_waiters{{kind=\"claim\"}} {claims}");
    head(
        &mut out,
        "airlock_kept_places",
        "gauge",
        "Places kept in lock lines for callers between two windows (grace).",
    );
    let _ = writeln!(out, "airlock_kept_places {}", places("grace"));
    head(
        &mut out,
        "airlock_agents_present",
        "gauge",
        "Agents present now.",
    );
    let _ = writeln!(out, "airlock_agents_present {}", view.agents.len());
    head(
        &mut out,
        "airlock_queue_tasks",
        "gauge",
        "Tasks per queue and state (finished tasks are kept 24 hours).",
    );
    for q in &view.queues {
        let name = label(&q.queue);
        for (state, n) in [
            ("pending", q.pending),
            ("claimed", q.claimed),
            ("completed", q.completed),
            ("failed", q.failed),
            ("dead", q.dead),
        ] {
            let _ = writeln!(
                out,
                "airlock_queue_tasks{{queue=\"{name}\",state=\"{state}\"}} {n}"
            );
        }
    }
    head(
        &mut out,
        "airlock_engine_commits_total",
        "counter",
        "Transactions the engine that answered has committed since it started.",
    );
    let _ = writeln!(out, "airlock_engine_commits_total {}", view.engine.commits);
    head(
        &mut out,
        "airlock_engine_operations_total",
        "counter",
        "Operations the engine that answered has applied since it started.",
    );
    let _ = writeln!(
        out,
        "airlock_engine_operations_total {}",
        view.engine.operations
    );
    if let Some(e) = engine {
        head(
            &mut out,
            "airlock_commit_duration_seconds",
            "histogram",
            "Time of each commit of this daemon's engine: on PostgreSQL the whole commit; on \
             SQLite writing it (its fsync is airlock_fsync_duration_seconds).",
        );
        render_histogram(
            &e.commit_seconds,
            &mut out,
            "airlock_commit_duration_seconds",
            "",
        );
        head(
            &mut out,
            "airlock_operations_per_commit",
            "histogram",
            "Operations carried by each commit of this daemon's engine (group commit).",
        );
        render_histogram(
            &e.operations_per_commit,
            &mut out,
            "airlock_operations_per_commit",
            "",
        );
        head(
            &mut out,
            "airlock_fsync_duration_seconds",
            "histogram",
            "Time of each fsync of the SQLite log by this daemon's syncing thread (one covers \
             every commit written before it began); none on PostgreSQL, whose commit includes it.",
        );
        render_histogram(
            &e.fsync_seconds,
            &mut out,
            "airlock_fsync_duration_seconds",
            "",
        );
    }
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        head(
            &mut out,
            "airlock_runtime_workers",
            "gauge",
            "Worker threads of this daemon's async runtime (one fewer than the cores unless \
             TOKIO_WORKER_THREADS says).",
        );
        let workers = runtime.metrics().num_workers();
        let _ = writeln!(out, "airlock_runtime_workers {workers}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_and_count_everything() {
        let h = Histogram::new(&[1.0, 2.0]);
        for v in [0.5, 1.5, 1.5, 7.0] {
            h.observe(v);
        }
        let mut out = String::new();
        render_histogram(&h, &mut out, "x", "a=\"b\"");
        assert_eq!(
            out,
            "x_bucket{a=\"b\",le=\"1\"} 1\nx_bucket{a=\"b\",le=\"2\"} 3\n\
             x_bucket{a=\"b\",le=\"+Inf\"} 4\nx_sum{a=\"b\"} 10.5\nx_count{a=\"b\"} 4\n"
        );
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
