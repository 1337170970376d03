//! Connection churn: open a connection (handshake to open-ok, optionally a channel), close it
//! (close / close-ok), again, as fast as the broker allows, from `--parallel` tasks at once.
//! Reports connections per second and the time one open-and-close takes.

use serde::Serialize;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

use crate::args::ChurnArgs;
use crate::client::Connection;
use crate::histogram::Histogram;
use crate::report::{format_ns, group};

#[derive(Debug, Clone, Default, Serialize)]
pub struct ChurnSummary {
    pub connections: u64,
    pub duration_s: f64,
    pub connections_per_s: f64,
    pub cycle_p50_us: f64,
    pub cycle_p99_us: f64,
    pub cycle_max_us: f64,
    pub error: Option<String>,
}

impl ChurnSummary {
    pub fn table(&self) -> String {
        let mut t = format!(
            "connection-churn: {} connections in {:.2} s, {} connections/s; open+close p50 {} p99 {} max {}\n",
            group(self.connections as f64),
            self.duration_s,
            group(self.connections_per_s),
            format_ns((self.cycle_p50_us * 1e3) as u64),
            format_ns((self.cycle_p99_us * 1e3) as u64),
            format_ns((self.cycle_max_us * 1e3) as u64),
        );
        if let Some(e) = &self.error {
            t.push_str(&format!("error: {e}\n"));
        }
        t
    }
}

pub async fn run(args: &ChurnArgs) -> ChurnSummary {
    let count = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(args.duration);
    let mut workers = JoinSet::new();
    for w in 0..args.parallel {
        let (uri, with_channel, abrupt, count, stop) =
            (args.uri.clone(), args.channel, args.abrupt, count.clone(), stop.clone());
        workers.spawn(async move {
            let mut cycle = Histogram::new();
            let name = format!("warren-perf churn {w}");
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let t0 = Instant::now();
                let mut c = Connection::open(&uri, &name).await?;
                if with_channel || abrupt {
                    c.channel_open(1).await?;
                }
                if abrupt {
                    let queue = c.queue_declare(1, "", false, true, false).await?;
                    c.basic_consume(1, &queue, false).await?;
                    // Gone without a word: the broker must clean up after it on its own.
                    drop(c);
                } else {
                    c.close().await?;
                }
                cycle.record(t0.elapsed().as_nanos() as u64);
                count.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<_, crate::client::Error>(cycle)
        });
    }
    let mut last = 0;
    let mut ticker = tokio::time::interval_at((start + Duration::from_secs(1)).into(), Duration::from_secs(1));
    let mut cycles = Histogram::new();
    let mut error = None;
    let interrupted = super::terminated();
    tokio::pin!(interrupted);
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                let n = count.load(Ordering::Relaxed);
                if !args.quiet {
                    eprintln!("{:6.1} s  {} connections/s", start.elapsed().as_secs_f64(), group((n - last) as f64));
                }
                last = n;
            }
            joined = workers.join_next() => match joined {
                None => break,
                Some(Ok(Ok(h))) => cycles.merge(&h),
                Some(Ok(Err(e))) => {
                    error.get_or_insert(e.to_string());
                    stop.store(true, Ordering::Relaxed);
                }
                Some(Err(e)) => {
                    error.get_or_insert(format!("task failed: {e}"));
                    stop.store(true, Ordering::Relaxed);
                }
            },
            _ = &mut interrupted => stop.store(true, Ordering::Relaxed),
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let n = count.load(Ordering::Relaxed);
    ChurnSummary {
        connections: n,
        duration_s: secs,
        connections_per_s: n as f64 / secs.max(1e-9),
        cycle_p50_us: cycles.percentile(50.0) as f64 / 1e3,
        cycle_p99_us: cycles.percentile(99.0) as f64 / 1e3,
        cycle_max_us: cycles.max() as f64 / 1e3,
        error,
    }
}
