//! `GET /metrics` through the real binary: behind the token, in Prometheus' text format (parsed
//! here line by line), and its counters and gauges move with what the daemon does.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use common::*;
use serde_json::json;

/// One exposition, parsed: every sample by its series (`name{k="v",…}` with the labels in the
/// order given), checked against the format's rules as it is read.
struct Exposition {
    samples: BTreeMap<String, f64>,
}

impl Exposition {
    fn parse(text: &str) -> Exposition {
        let mut types: HashMap<String, String> = HashMap::new();
        let mut samples = BTreeMap::new();
        for line in text.lines() {
            if line.is_empty() {
                continue;
            }
            if let Some(rest) = line.strip_prefix("# ") {
                let mut parts = rest.splitn(3, ' ');
                let (kw, name, what) = (parts.next(), parts.next(), parts.next());
                assert!(
                    name.is_some() && what.is_some(),
                    "a bad comment line: {line}"
                );
                if kw == Some("TYPE") {
                    let kind = what.unwrap();
                    assert!(
                        ["counter", "gauge", "histogram"].contains(&kind),
                        "unknown type: {line}"
                    );
                    assert!(
                        types.insert(name.unwrap().into(), kind.into()).is_none(),
                        "TYPE given twice: {line}"
                    );
                } else {
                    assert_eq!(kw, Some("HELP"), "{line}");
                }
                continue;
            }
            let (series, value) = line
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("no value: {line}"));
            let value: f64 = value
                .parse()
                .unwrap_or_else(|_| panic!("a bad value: {line}"));
            let name = series.split('{').next().unwrap();
            assert!(
                name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                "a bad metric name: {line}"
            );
            if let Some(labels) = series.strip_prefix(name) {
                if !labels.is_empty() {
                    assert!(labels.starts_with('{') && labels.ends_with('}'), "{line}");
                    for pair in labels[1..labels.len() - 1].split("\",") {
                        let (k, v) = pair.split_once("=\"").unwrap_or_else(|| panic!("{line}"));
                        assert!(
                            k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                            "{line}"
                        );
                        assert!(!v.trim_end_matches('"').contains('\n'), "{line}");
                    }
                }
            }
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| {
                    name.strip_suffix(s)
                        .filter(|f| types.get(*f).map(String::as_str) == Some("histogram"))
                })
                .unwrap_or(name);
            assert!(types.contains_key(family), "no TYPE before {line}");
            assert!(
                samples.insert(series.to_string(), value).is_none(),
                "a series twice: {line}"
            );
        }
        let e = Exposition { samples };
        e.check_histograms();
        e
    }

    /// Buckets never decrease, and `+Inf` is the count.
    fn check_histograms(&self) {
        let mut last: HashMap<String, f64> = HashMap::new();
        for (series, v) in &self.samples {
            if let Some((base, _)) = series.split_once("_bucket{") {
                let labels: String = series
                    .split(['{', '}'])
                    .nth(1)
                    .unwrap()
                    .split(',')
                    .filter(|p| !p.starts_with("le="))
                    .collect::<Vec<_>>()
                    .join(",");
                let key = format!("{base}{{{labels}}}");
                if series.contains("le=\"+Inf\"") {
                    let count_series = if labels.is_empty() {
                        format!("{base}_count")
                    } else {
                        format!("{base}_count{{{labels}}}")
                    };
                    assert_eq!(Some(v), self.samples.get(&count_series), "{series}");
                }
                let _ = last.insert(key, *v);
            }
        }
        // Monotonic within each histogram, in bound order.
        let mut by_hist: HashMap<String, Vec<(f64, f64)>> = HashMap::new();
        for (series, v) in &self.samples {
            if let Some((base, rest)) = series.split_once("_bucket{") {
                let le = rest.split("le=\"").nth(1).unwrap().trim_end_matches("\"}");
                let bound = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().unwrap()
                };
                let others: String = rest.split("le=").next().unwrap().to_string();
                by_hist
                    .entry(format!("{base}{others}"))
                    .or_default()
                    .push((bound, *v));
            }
        }
        for (h, mut points) in by_hist {
            points.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap());
            assert!(
                points.windows(2).all(|w| w[0].1 <= w[1].1),
                "{h} decreases: {points:?}"
            );
        }
    }

    fn get(&self, series: &str) -> f64 {
        self.samples.get(series).copied().unwrap_or(0.0)
    }
}

async fn scrape(d: &Daemon) -> Exposition {
    let r = d
        .http
        .get(format!("{}/metrics", d.url))
        .bearer_auth(&d.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(
        r.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    Exposition::parse(&r.text().await.unwrap())
}

#[tokio::test]
async fn metrics_need_the_token() {
    let d = Daemon::start().await;
    let r = d
        .http
        .get(format!("{}/metrics", d.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let r = d
        .http
        .get(format!("{}/metrics", d.url))
        .bearer_auth(&d.token)
        .header("Origin", "https://evil.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
}

#[tokio::test]
async fn the_counters_and_gauges_move_with_the_work() {
    let d = Arc::new(Daemon::start().await);
    let before = scrape(&d).await;
    let lock_ok = "airlock_calls_total{tool=\"lock_resource\",outcome=\"ok\"}";
    let lock_invalid = "airlock_calls_total{tool=\"lock_resource\",outcome=\"invalid\"}";
    assert_eq!(before.get(lock_ok), 0.0);
    assert_eq!(before.get("airlock_locks_held"), 0.0);

    let held = lock(&d, "db", "alpha", json!({})).await;
    let e = d
        .call_err(
            "lock_resource",
            json!({"name": "db", "agent_id": "a", "ttl_seconds": 0}),
        )
        .await;
    assert!(e.contains("ttl_seconds"), "{e}");
    let waiter = spawn_lock(&d, "db", "beta", json!({"wait_seconds": 30}));
    until_waiters(&d, "db", 1).await;
    d.call("push_task", json!({"queue": "q\"1", "payload": "p"}))
        .await;
    d.call("push_task", json!({"queue": "q\"1", "payload": "p"}))
        .await;
    d.call("register_agent", json!({"agent_id": "alpha"})).await;

    let during = scrape(&d).await;
    assert_eq!(
        during.get(lock_ok),
        1.0,
        "the parked call has not answered yet"
    );
    assert_eq!(during.get(lock_invalid), 1.0);
    assert_eq!(during.get("airlock_locks_held"), 1.0);
    assert_eq!(during.get("airlock_parked_waiters{kind=\"lock\"}"), 1.0);
    assert_eq!(during.get("airlock_agents_present"), 1.0);
    assert_eq!(
        during.get("airlock_queue_tasks{queue=\"q\\\"1\",state=\"pending\"}"),
        2.0,
        "queue names are escaped"
    );
    assert_eq!(
        during.get("airlock_call_duration_seconds_count{tool=\"push_task\"}"),
        2.0
    );
    assert!(
        during.get("airlock_engine_commits_total") > before.get("airlock_engine_commits_total")
    );
    assert!(
        during.get("airlock_engine_operations_total")
            >= before.get("airlock_engine_operations_total") + 5.0
    );
    assert!(during.get("airlock_commit_duration_seconds_count") > 0.0);
    assert!(during.get("airlock_operations_per_commit_sum") >= 5.0);
    // On SQLite each fsync of the log is timed (one may cover several commits); PostgreSQL's
    // commit includes its own.
    let fsyncs = during.get("airlock_fsync_duration_seconds_count");
    match common::postgres::backend() {
        common::postgres::Backend::Sqlite => assert!(
            fsyncs > 0.0 && fsyncs <= during.get("airlock_commit_duration_seconds_count"),
            "{fsyncs} fsyncs"
        ),
        common::postgres::Backend::Postgres => assert_eq!(fsyncs, 0.0),
    }

    unlock(&d, "db", &token(&held)).await;
    within(30, waiter).await.unwrap();
    let after = scrape(&d).await;
    assert_eq!(after.get(lock_ok), 2.0);
    assert_eq!(after.get("airlock_parked_waiters{kind=\"lock\"}"), 0.0);
    assert_eq!(after.get("airlock_locks_held"), 1.0, "beta holds it now");
    assert_eq!(
        after.get("airlock_call_duration_seconds_count{tool=\"lock_resource\"}"),
        3.0,
        "every call is timed, refused ones too"
    );
    assert_eq!(
        after.get("airlock_calls_total{tool=\"unlock_resource\",outcome=\"ok\"}"),
        1.0
    );
}

/// On SQLite a batch that wrote nothing is answered without an fsync of its own: reads, a lock
/// request refused because the lock is held, one that parks. Each of those is still a commit
/// (an engine transaction); only the fsync goes. (The hot lock: a parked request per grant,
/// which cost an fsync of nothing each, BENCHMARKS.md, "Issue 16, fifth pass".)
#[tokio::test]
async fn requests_that_write_nothing_cost_no_fsync() {
    if common::postgres::backend() == common::postgres::Backend::Postgres {
        eprintln!("SKIP: PostgreSQL's commits are fsynced by the server, not counted here");
        return;
    }
    let d = Arc::new(Daemon::start().await);
    let held = lock(&d, "db", "alpha", json!({})).await;
    let fsyncs = "airlock_fsync_duration_seconds_count";
    let commits = "airlock_engine_commits_total";
    let before = scrape(&d).await;
    for _ in 0..10 {
        d.call("get_note", json!({"key": "k"})).await;
        let refused = lock(&d, "db", "beta", json!({})).await;
        assert_eq!(refused["locked"], false, "{refused}");
        d.call("list_locks", json!({})).await;
    }
    let waiter = spawn_lock(&d, "db", "gamma", json!({"wait_seconds": 30}));
    until_waiters(&d, "db", 1).await;
    let during = scrape(&d).await;
    assert!(
        during.get(commits) >= before.get(commits) + 31.0,
        "every request was a transaction: {} → {}",
        before.get(commits),
        during.get(commits)
    );
    assert_eq!(
        during.get(fsyncs),
        before.get(fsyncs),
        "none of them wrote anything"
    );
    // A write is fsynced before its answer, and the grant it makes with it.
    unlock(&d, "db", &token(&held)).await;
    assert_eq!(within(30, waiter).await.unwrap()["locked"], true);
    let after = scrape(&d).await;
    assert!(after.get(fsyncs) > during.get(fsyncs));
}

/// The daemon leaves a core to its engine thread: one runtime worker fewer than the cores, at
/// least one, unless `TOKIO_WORKER_THREADS` says (BENCHMARKS.md, "Issue 16, fifth pass").
#[tokio::test]
async fn the_runtime_leaves_a_core_to_the_engine_thread() {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let expected = match std::env::var("TOKIO_WORKER_THREADS") {
        Ok(n) => n.parse().expect("TOKIO_WORKER_THREADS is a number"),
        Err(_) => cores.saturating_sub(1).max(1),
    };
    let d = Daemon::start().await;
    assert_eq!(
        scrape(&d).await.get("airlock_runtime_workers"),
        expected as f64,
        "{cores} cores"
    );
    let three = Daemon::serve()
        .env("TOKIO_WORKER_THREADS", "3")
        .start()
        .await;
    assert_eq!(scrape(&three).await.get("airlock_runtime_workers"), 3.0);
}
