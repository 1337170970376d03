//! What the tasks of a run share (counters, latency histograms, the loss tracker), the
//! once-a-second progress line, and the final summary as a table or one JSON object.
//!
//! Counters are relaxed atomics bumped once per batch, not per message. Each consumer records
//! latencies into its own histogram behind its own lock, taken once per read; the reporter
//! empties them every second into the run's total, so a second's percentiles are that second's.

use serde::Serialize;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use crate::histogram::Histogram;
use crate::tracker::Tracker;

/// State shared by the producers, consumers and the coordinator of a run.
#[derive(Debug)]
pub struct Shared {
    pub published: AtomicU64,
    pub confirmed: AtomicU64,
    pub nacked: AtomicU64,
    pub consumed: AtomicU64,
    /// Deliveries the tracker saw for the first time (so never more than are due).
    pub unique: AtomicU64,
    /// One histogram per consumer, emptied by the reporter.
    pub latency: Vec<Mutex<Histogram>>,
    pub tracker: Option<Tracker>,
}

impl Shared {
    pub fn new(consumers: usize, tracker: Option<Tracker>) -> Shared {
        Shared {
            published: AtomicU64::new(0),
            confirmed: AtomicU64::new(0),
            nacked: AtomicU64::new(0),
            consumed: AtomicU64::new(0),
            unique: AtomicU64::new(0),
            latency: (0..consumers).map(|_| Mutex::new(Histogram::new())).collect(),
            tracker,
        }
    }

    /// Moves every consumer's latencies into `into`.
    pub fn drain_latency(&self, into: &mut Histogram) {
        for h in &self.latency {
            let mut h = match h.lock() {
                Ok(g) => g,
                Err(poisoned) => poisoned.into_inner(),
            };
            into.merge(&h);
            h.clear();
        }
    }
}

/// The progress line, once a second.
#[derive(Debug)]
pub struct Progress {
    start: Instant,
    last_at: Instant,
    last: [u64; 3],
    second: Histogram,
    /// Every latency of the run so far.
    pub total: Histogram,
    pub show_published: bool,
    pub show_confirmed: bool,
    pub show_consumed: bool,
}

impl Progress {
    pub fn new(start: Instant, show_published: bool, show_confirmed: bool, show_consumed: bool) -> Progress {
        Progress {
            start,
            last_at: start,
            last: [0; 3],
            second: Histogram::new(),
            total: Histogram::new(),
            show_published,
            show_confirmed,
            show_consumed,
        }
    }

    /// Takes in what happened since the last call and returns the line that says so.
    pub fn tick(&mut self, shared: &Shared, now: Instant) -> String {
        let counts = [
            shared.published.load(Ordering::Relaxed),
            shared.confirmed.load(Ordering::Relaxed),
            shared.consumed.load(Ordering::Relaxed),
        ];
        let secs = now.saturating_duration_since(self.last_at).as_secs_f64().max(1e-3);
        let rate = |i: usize| (counts[i] - self.last[i]) as f64 / secs;
        self.second.clear();
        shared.drain_latency(&mut self.second);
        self.total.merge(&self.second);
        let mut line = format!("{:6.1} s", now.saturating_duration_since(self.start).as_secs_f64());
        if self.show_published {
            let _ = write!(line, "  published {} msg/s", group(rate(0)));
        }
        if self.show_confirmed {
            let _ = write!(line, "  confirmed {} msg/s", group(rate(1)));
        }
        if self.show_consumed {
            let _ = write!(line, "  consumed {} msg/s", group(rate(2)));
            if self.second.count() > 0 {
                let _ = write!(
                    line,
                    "  latency p50 {} p99 {}",
                    format_ns(self.second.percentile(50.0)),
                    format_ns(self.second.percentile(99.0))
                );
            }
        }
        self.last = counts;
        self.last_at = now;
        line
    }

    /// Takes in the latencies recorded since the last tick.
    pub fn finish(&mut self, shared: &Shared) {
        self.second.clear();
        shared.drain_latency(&mut self.second);
        self.total.merge(&self.second);
    }
}

/// A rate with thousands separators, no decimals.
pub fn group(v: f64) -> String {
    let n = v.round().max(0.0) as u64;
    let digits = n.to_string();
    let first = match digits.len() % 3 {
        0 => 3.min(digits.len()),
        r => r,
    };
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    out.push_str(&digits[..first]);
    for chunk in digits.as_bytes()[first..].chunks(3) {
        out.push(',');
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
    }
    out
}

/// A duration in nanoseconds, in the unit that reads best.
pub fn format_ns(ns: u64) -> String {
    if ns < 1_000 {
        format!("{ns} ns")
    } else if ns < 1_000_000 {
        format!("{:.0} µs", ns as f64 / 1e3)
    } else if ns < 1_000_000_000 {
        format!("{:.2} ms", ns as f64 / 1e6)
    } else {
        format!("{:.2} s", ns as f64 / 1e9)
    }
}

/// The result of a run, printed as a table or as one JSON object (`--json`).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Summary {
    pub producers: u32,
    pub consumers: u32,
    pub size_bytes: u32,
    pub queues: u32,
    pub persistent: bool,
    pub confirm: Option<u32>,
    pub auto_ack: bool,
    pub prefetch: u16,
    pub duration_s: f64,
    pub published: u64,
    pub confirmed: u64,
    pub nacked: u64,
    pub consumed: u64,
    pub publish_msgs_per_s: f64,
    pub publish_mb_per_s: f64,
    pub confirm_msgs_per_s: f64,
    pub consume_msgs_per_s: f64,
    pub consume_mb_per_s: f64,
    pub latency_samples: u64,
    pub latency_min_us: f64,
    pub latency_mean_us: f64,
    pub latency_p50_us: f64,
    pub latency_p95_us: f64,
    pub latency_p99_us: f64,
    pub latency_max_us: f64,
    /// Due and never consumed (only with -C, producers and consumers).
    pub lost: Option<u64>,
    /// Consumed more than once on the same queue (only with -C).
    pub duplicated: Option<u64>,
    /// Deliveries with no stamp of this run (leftovers in a named queue).
    pub foreign: u64,
    pub redelivered: u64,
    /// Deliveries that arrived with a delivery tag below an earlier one (a broker bug).
    pub reordered: u64,
    /// CPU seconds (user + system) this tool used.
    pub tool_cpu_s: Option<f64>,
    /// CPU seconds the process given by --broker-pid used during the run.
    pub broker_cpu_s: Option<f64>,
    /// Broker CPU per message: per consumed message, or per published one with no consumers.
    pub broker_cpu_us_per_msg: Option<f64>,
    /// Largest broker RSS seen (sampled once a second and at the end).
    pub broker_rss_max_kib: Option<u64>,
    /// Why the run failed, when it did.
    pub error: Option<String>,
}

impl Summary {
    /// Fills in the latency fields from the run's histogram.
    pub fn set_latency(&mut self, h: &Histogram) {
        let us = |ns: u64| ns as f64 / 1e3;
        self.latency_samples = h.count();
        self.latency_min_us = us(h.min());
        self.latency_mean_us = h.mean() / 1e3;
        self.latency_p50_us = us(h.percentile(50.0));
        self.latency_p95_us = us(h.percentile(95.0));
        self.latency_p99_us = us(h.percentile(99.0));
        self.latency_max_us = us(h.max());
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\":\"cannot encode the summary: {e}\"}}"))
    }

    /// The human-readable table.
    pub fn table(&self) -> String {
        let mut t = String::new();
        let plural = |n: u32, word: &str| format!("{n} {word}{}", if n == 1 { "" } else { "s" });
        let _ = writeln!(
            t,
            "warren-perf: {}, {}, {} B {} messages, {}, {:.2} s",
            plural(self.producers, "producer"),
            plural(self.consumers, "consumer"),
            self.size_bytes,
            if self.persistent { "persistent" } else { "transient" },
            plural(self.queues, "queue"),
            self.duration_s
        );
        let _ = writeln!(t, "{:<12}{:>14}{:>14}{:>10}", "", "messages", "msgs/s", "MB/s");
        if self.producers > 0 {
            let _ = writeln!(
                t,
                "{:<12}{:>14}{:>14}{:>10.2}",
                "published",
                group(self.published as f64),
                group(self.publish_msgs_per_s),
                self.publish_mb_per_s
            );
        }
        if self.confirm.is_some() {
            let _ = writeln!(
                t,
                "{:<12}{:>14}{:>14}{:>10}",
                "confirmed",
                group(self.confirmed as f64),
                group(self.confirm_msgs_per_s),
                ""
            );
            if self.nacked > 0 {
                let _ = writeln!(t, "{:<12}{:>14}", "nacked", group(self.nacked as f64));
            }
        }
        if self.consumers > 0 {
            let _ = writeln!(
                t,
                "{:<12}{:>14}{:>14}{:>10.2}",
                "consumed",
                group(self.consumed as f64),
                group(self.consume_msgs_per_s),
                self.consume_mb_per_s
            );
            if self.latency_samples > 0 {
                let ns = |us: f64| format_ns((us * 1e3) as u64);
                let _ = writeln!(
                    t,
                    "latency     min {}  p50 {}  p95 {}  p99 {}  max {}",
                    ns(self.latency_min_us),
                    ns(self.latency_p50_us),
                    ns(self.latency_p95_us),
                    ns(self.latency_p99_us),
                    ns(self.latency_max_us)
                );
            }
        }
        if let (Some(lost), Some(dup)) = (self.lost, self.duplicated) {
            let _ = writeln!(
                t,
                "lost {lost}  duplicated {dup}  redelivered {}  foreign {}",
                self.redelivered, self.foreign
            );
        }
        if self.reordered > 0 {
            let _ =
                writeln!(t, "warning: {} deliveries arrived out of delivery-tag order", group(self.reordered as f64));
        }
        if let Some(cpu) = self.tool_cpu_s {
            let _ = write!(t, "cpu         warren-perf {cpu:.2} s");
            if let Some(b) = self.broker_cpu_s {
                let _ = write!(t, "  broker {b:.2} s");
            }
            if let Some(per) = self.broker_cpu_us_per_msg {
                let _ = write!(t, " ({per:.2} µs/msg)");
            }
            if let Some(rss) = self.broker_rss_max_kib {
                let _ = write!(t, "  broker RSS max {:.1} MiB", rss as f64 / 1024.0);
            }
            t.push('\n');
        }
        if let Some(e) = &self.error {
            let _ = writeln!(t, "error: {e}");
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grouping_and_units() {
        assert_eq!(group(0.0), "0");
        assert_eq!(group(999.4), "999");
        assert_eq!(group(1000.0), "1,000");
        assert_eq!(group(1234567.0), "1,234,567");
        assert_eq!(format_ns(850), "850 ns");
        assert_eq!(format_ns(120_000), "120 µs");
        assert_eq!(format_ns(1_234_000), "1.23 ms");
        assert_eq!(format_ns(2_500_000_000), "2.50 s");
    }

    #[test]
    fn progress_reports_the_last_second() {
        let shared = Shared::new(1, None);
        let start = Instant::now();
        let mut p = Progress::new(start, true, false, true);
        shared.published.store(1000, Ordering::Relaxed);
        shared.consumed.store(500, Ordering::Relaxed);
        shared.latency[0].lock().expect("lock").record(2_000_000);
        let line = p.tick(&shared, start + std::time::Duration::from_secs(1));
        assert!(line.contains("published 1,000 msg/s"), "{line}");
        assert!(line.contains("consumed 500 msg/s"), "{line}");
        assert!(line.contains("p50 2.00 ms"), "{line}");
        assert!(!line.contains("confirmed"), "{line}");
        shared.published.store(3000, Ordering::Relaxed);
        let line = p.tick(&shared, start + std::time::Duration::from_secs(2));
        assert!(line.contains("published 2,000 msg/s"), "{line}");
        assert!(!line.contains("latency"), "no deliveries this second: {line}");
        assert_eq!(p.total.count(), 1);
    }

    #[test]
    fn summary_json_has_the_documented_keys() {
        let mut s = Summary {
            producers: 1,
            consumers: 1,
            published: 10,
            consumed: 10,
            lost: Some(0),
            duplicated: Some(0),
            ..Default::default()
        };
        let mut h = Histogram::new();
        h.record(1_000);
        h.record(3_000);
        s.set_latency(&h);
        let v: serde_json::Value = serde_json::from_str(&s.to_json()).expect("valid JSON");
        assert_eq!(v["consumed"], 10);
        assert_eq!(v["lost"], 0);
        assert_eq!(v["broker_cpu_s"], serde_json::Value::Null);
        assert_eq!(v["latency_max_us"], 3.0);
        // Percentiles are bucket tops: within 1% above the value.
        let p50 = v["latency_p50_us"].as_f64().expect("number");
        assert!((1.0..1.01).contains(&p50), "{p50}");
        for key in ["publish_msgs_per_s", "consume_mb_per_s", "confirm_msgs_per_s", "latency_p99_us", "duration_s"] {
            assert!(v.get(key).is_some(), "{key}");
        }
        let table = s.table();
        assert!(table.contains("lost 0"), "{table}");
    }
}
