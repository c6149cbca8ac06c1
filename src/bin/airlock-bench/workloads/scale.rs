//! Workloads 7 and 8: what the daemon costs in memory at scale (RSS per parked waiter and per
//! registered agent) and in time to start (cold starts on fresh homes). `Bench` methods like the
//! others, kept apart so each file stays readable.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use futures::{stream, StreamExt, TryStreamExt};
use serde_json::json;

use super::*;

impl Bench {
    // ------------------------------------------------------------------ 7

    pub async fn w7(&mut self) -> anyhow::Result<()> {
        let n = self.sizes.waiters;
        let Source::Spawn { .. } = &self.source else {
            self.say("7: skipped (needs a spawned daemon to read its RSS)");
            return Ok(());
        };
        self.say(&format!(
            "7: {n} parked waiters, {} agents",
            self.sizes.agents
        ));
        // Floor: n parked requests on the bare HTTP stack.
        let floor_per = {
            let before = rss_bytes(self.floor_proc.pid()).context("floor RSS")?;
            // A client of its own, dropped afterwards: its n idle connections would otherwise
            // hold n descriptors through the daemon's half of the workload.
            let parker = Rpc::new(&self.floor_proc.url, "floor");
            let hs = spawn_ramped(n, |_| {
                let r = parker.clone();
                async move {
                    r.call("park", json!({})).await?;
                    Ok(())
                }
            })
            .await;
            self.floor_parked(n, Duration::from_secs(45), Duration::from_millis(50))
                .await?;
            let after = rss_bytes(self.floor_proc.pid()).context("floor RSS")?;
            self.floor.call("release", json!({})).await?;
            for h in hs {
                h.await??;
            }
            (after as f64 - before as f64) / n as f64
        };

        let u = self.under(None).await?;
        let pid = u.proc.as_ref().map(|p| p.pid()).expect("spawned");
        let locks = (n / 10).max(1);
        let prefix = self.prefix.clone();
        stream::iter(0..locks)
            .map(|i| {
                let (r, name) = (u.rpc.clone(), format!("{prefix}/w7/l{i}"));
                async move {
                    let v = r
                        .call(
                            "lock_resource",
                            json!({"name": name, "agent_id": "holder", "ttl_seconds": 600}),
                        )
                        .await?;
                    ensure!(v["locked"] == json!(true), "holder not granted: {v}");
                    anyhow::Ok(())
                }
            })
            .buffer_unordered(64)
            .try_collect::<Vec<_>>()
            .await?;
        let before = rss_bytes(pid).context("daemon RSS")?;
        let hs = spawn_ramped(n, |i| {
            let r = u.rpc.clone();
            let name = format!("{prefix}/w7/l{}", i % locks);
            async move {
                r.call(
                    "lock_resource",
                    json!({"name": name, "agent_id": format!("w{i}"), "wait_seconds": 50}),
                )
                .await?;
                Ok(())
            }
        })
        .await;
        let start = Instant::now();
        loop {
            let v = u.rpc.call("list_locks", json!({})).await?;
            let parked: u64 = v
                .as_array()
                .map(|a| a.iter().map(|l| l["waiters"].as_u64().unwrap_or(0)).sum())
                .unwrap_or(0);
            if parked >= n as u64 {
                break;
            }
            if start.elapsed() > Duration::from_secs(45) {
                let mut hs = hs;
                let mut why = String::from("none returned");
                if let Some(h) = hs.iter_mut().find(|h| h.is_finished()) {
                    why = format!("{:?}", h.await);
                }
                bail!("only {parked} of {n} waiters parked; a returned call: {why}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let after = rss_bytes(pid).context("daemon RSS")?;
        let per = (after as f64 - before as f64) / n as f64;
        self.push(
            7,
            &format!("daemon RSS before {n} waiters"),
            "MiB",
            before as f64 / 1048576.0,
            None,
            None,
        );
        self.push(
            7,
            &format!("daemon RSS with {n} parked waiters"),
            "MiB",
            after as f64 / 1048576.0,
            None,
            None,
        );
        self.push(
            7,
            "bytes per parked waiter",
            "bytes",
            per,
            Some(floor_per),
            // Issue 16: at most 2 KiB above what the transport itself holds per parked request.
            Some(("<= floor + 2048", per <= floor_per + 2048.0)),
        );

        let na = self.sizes.agents;
        let a0 = rss_bytes(pid).context("daemon RSS")?;
        stream::iter(0..na)
            .map(|i| {
                let r = u.rpc.clone();
                async move {
                    r.call(
                        "register_agent",
                        json!({"agent_id": format!("agent-{i}"), "ttl_seconds": 600}),
                    )
                    .await
                    .map(|_| ())
                }
            })
            .buffer_unordered(64)
            .try_collect::<Vec<_>>()
            .await?;
        let a1 = rss_bytes(pid).context("daemon RSS")?;
        self.push(
            7,
            &format!("daemon RSS with {n} waiters + {na} agents"),
            "MiB",
            a1 as f64 / 1048576.0,
            None,
            None,
        );
        self.push(
            7,
            "bytes per registered agent",
            "bytes",
            (a1 as f64 - a0 as f64) / na.max(1) as f64,
            None,
            None,
        );
        // Stopping answers every parked waiter (drain).
        u.finish().await;
        for h in hs {
            let _ = h.await;
        }
        Ok(())
    }

    // ------------------------------------------------------------------ 8

    pub async fn w8(&mut self) -> anyhow::Result<()> {
        let Source::Spawn { bin, base } = &self.source else {
            self.say("8: skipped (needs to start the daemon itself)");
            return Ok(());
        };
        let (bin, base) = (bin.clone(), base.clone());
        let m = self.sizes.starts.max(1);
        self.say(&format!("8: {m} cold starts"));
        let mut rows: Vec<[f64; 3]> = Vec::new();
        let mut floor_rows: Vec<[f64; 3]> = Vec::new();
        for _ in 0..m {
            for floor in [true, false] {
                if floor {
                    let p = start_floor().await?;
                    let row = cold_start(&p, &Rpc::new(&p.url, "floor"), "echo").await?;
                    floor_rows.push(row);
                } else {
                    let d = start_daemon(&bin, &base, None, None).await?;
                    let row = cold_start(&d.process, &d.rpc_client(), "list_locks").await;
                    stop(d).await;
                    rows.push(row?);
                }
            }
        }
        let med = |rows: &[[f64; 3]], i: usize| {
            quantile(&sorted(rows.iter().map(|r| r[i]).collect()), 0.5)
        };
        let first = med(&rows, 1);
        let rss = med(&rows, 2);
        self.push(
            8,
            "start-up to listening (median)",
            "ms",
            med(&rows, 0),
            Some(med(&floor_rows, 0)),
            None,
        );
        self.push(
            8,
            "start-up to first answered request (median)",
            "ms",
            first,
            Some(med(&floor_rows, 1)),
            Some(("<= 100 ms", first <= 100.0)),
        );
        self.push(
            8,
            "idle RSS after first request (median)",
            "MiB",
            rss,
            Some(med(&floor_rows, 2)),
            Some(("<= 20 MB", rss * 1048576.0 <= 20e6)),
        );
        Ok(())
    }
}
