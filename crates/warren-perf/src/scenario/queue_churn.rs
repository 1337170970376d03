//! Queue churn: on one channel, declare a server-named queue and delete it, again, as fast as the
//! broker allows. With `--durable` every declare and delete goes through the broker's definitions
//! store. Reports queues per second and the time one declare-and-delete takes. `--rate` paces
//! the cycles; `--keep N` first declares N queues that stay until the end (many queues for an
//! HTTP client to list meanwhile).

use serde::Serialize;
use std::time::{Duration, Instant};

use crate::args::QueueChurnArgs;
use crate::client::{Connection, Error};
use crate::histogram::Histogram;
use crate::report::{format_ns, group};

#[derive(Debug, Clone, Default, Serialize)]
pub struct QueueChurnSummary {
    pub queues: u64,
    pub duration_s: f64,
    pub queues_per_s: f64,
    pub cycle_p50_us: f64,
    pub cycle_p99_us: f64,
    pub cycle_max_us: f64,
    pub error: Option<String>,
}

impl QueueChurnSummary {
    pub fn table(&self) -> String {
        let mut t = format!(
            "queue-churn: {} queues declared and deleted in {:.2} s, {} queues/s; cycle p50 {} p99 {} max {}\n",
            group(self.queues as f64),
            self.duration_s,
            group(self.queues_per_s),
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

pub async fn run(args: &QueueChurnArgs) -> QueueChurnSummary {
    let mut start = Instant::now();
    let mut cycles = Histogram::new();
    let mut count = 0u64;
    let churn = async {
        let mut c = Connection::open(&args.uri, "warren-perf queue-churn").await?;
        c.channel_open(1).await?;
        let mut kept = Vec::with_capacity(args.keep as usize);
        for _ in 0..args.keep {
            kept.push(c.queue_declare(1, "", false, false, false).await?);
        }
        if args.announce {
            println!("ready");
        }
        start = Instant::now();
        let deadline = start + Duration::from_secs_f64(args.duration);
        let mut last = (0u64, start);
        let interval = (args.rate > 0).then(|| Duration::from_secs_f64(1.0 / f64::from(args.rate)));
        while Instant::now() < deadline {
            if let Some(interval) = interval {
                // Paced from the start, so a slow cycle is caught up rather than lost.
                tokio::time::sleep_until((start + interval * count as u32).into()).await;
            }
            let t0 = Instant::now();
            let name = c.queue_declare(1, "", args.durable, false, false).await?;
            c.queue_delete(1, &name).await?;
            cycles.record(t0.elapsed().as_nanos() as u64);
            count += 1;
            let now = Instant::now();
            if now.duration_since(last.1) >= Duration::from_secs(1) {
                if !args.quiet {
                    eprintln!(
                        "{:6.1} s  {} queues/s",
                        now.duration_since(start).as_secs_f64(),
                        group((count - last.0) as f64 / now.duration_since(last.1).as_secs_f64())
                    );
                }
                last = (count, now);
            }
        }
        for name in &kept {
            c.queue_delete(1, name).await?;
        }
        c.close().await?;
        Ok::<_, Error>(())
    };
    let error = tokio::select! {
        r = churn => r.err().map(|e| e.to_string()),
        _ = super::terminated() => None,
    };
    let secs = start.elapsed().as_secs_f64();
    QueueChurnSummary {
        queues: count,
        duration_s: secs,
        queues_per_s: count as f64 / secs.max(1e-9),
        cycle_p50_us: cycles.percentile(50.0) as f64 / 1e3,
        cycle_p99_us: cycles.percentile(99.0) as f64 / 1e3,
        cycle_max_us: cycles.max() as f64 / 1e3,
        error,
    }
}
