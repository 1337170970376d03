//! Message rates from the broker's per-queue counters: each listing samples the counters, and
//! a rate is the change over the samples of the last few seconds.

use serde_json::Value;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use warren_core::queue::QueueCounters;
use warren_core::QueueStats;

/// How far back a rate looks.
const WINDOW: Duration = Duration::from_secs(5);

type Samples = VecDeque<(Instant, QueueCounters)>;

/// Samples of counters, per queue and for the whole broker.
#[derive(Default)]
pub(crate) struct Rates {
    queues: Mutex<HashMap<(String, String), Samples>>,
    total: Mutex<Samples>,
}

/// Counters per second over the window, from the oldest sample kept to `now`.
fn sample(samples: &mut Samples, now: Instant, counters: QueueCounters) -> [f64; 4] {
    samples.push_back((now, counters));
    while samples.len() > 2 && samples.get(1).is_some_and(|(t, _)| now.duration_since(*t) >= WINDOW) {
        samples.pop_front();
    }
    let Some((t0, c0)) = samples.front() else { return [0.0; 4] };
    let dt = now.duration_since(*t0).as_secs_f64();
    if dt <= 0.0 {
        return [0.0; 4];
    }
    let rate = |a: u64, b: u64| (a.saturating_sub(b)) as f64 / dt;
    [
        rate(counters.publish, c0.publish),
        rate(counters.deliver_get, c0.deliver_get),
        rate(counters.ack, c0.ack),
        rate(counters.redeliver, c0.redeliver),
    ]
}

/// A rate, as RabbitMQ gives it (`{"rate": 1.5}`).
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub(crate) struct Rate {
    rate: f64,
}

/// RabbitMQ's `message_stats` object: each count with its `_details.rate`, typed (a listing of
/// many queues serializes these directly). Fields in alphabetical order, as the untyped JSON
/// objects come out.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub(crate) struct MessageStats {
    ack: u64,
    ack_details: Rate,
    deliver_get: u64,
    deliver_get_details: Rate,
    publish: u64,
    publish_details: Rate,
    redeliver: u64,
    redeliver_details: Rate,
}

impl MessageStats {
    fn new(c: QueueCounters, r: [f64; 4]) -> Self {
        MessageStats {
            ack: c.ack,
            ack_details: Rate { rate: r[2] },
            deliver_get: c.deliver_get,
            deliver_get_details: Rate { rate: r[1] },
            publish: c.publish,
            publish_details: Rate { rate: r[0] },
            redeliver: c.redeliver,
            redeliver_details: Rate { rate: r[3] },
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Rates {
    /// The `message_stats` of each queue (by vhost and name); forgets queues that are gone.
    /// `complete`: `stats` covers every queue, so the samples of queues not in it (deleted) are
    /// forgotten.
    pub(crate) fn queues(&self, stats: &[QueueStats], complete: bool) -> Vec<MessageStats> {
        let now = Instant::now();
        let mut samples = lock(&self.queues);
        let mut result = Vec::with_capacity(stats.len());
        let mut seen = std::collections::HashSet::with_capacity(if complete { stats.len() } else { 0 });
        for s in stats {
            let key = (s.vhost.clone(), s.name.clone());
            let r = sample(samples.entry(key.clone()).or_default(), now, s.counters);
            if complete {
                seen.insert(key);
            }
            result.push(MessageStats::new(s.counters, r));
        }
        if complete {
            samples.retain(|k, _| seen.contains(k));
        }
        result
    }

    /// The broker-wide `message_stats` (the sum over queues).
    pub(crate) fn totals(&self, stats: &[QueueStats]) -> Value {
        let mut sum = QueueCounters::default();
        for s in stats {
            sum.publish += s.counters.publish;
            sum.deliver_get += s.counters.deliver_get;
            sum.ack += s.counters.ack;
            sum.redeliver += s.counters.redeliver;
        }
        let r = sample(&mut lock(&self.total), Instant::now(), sum);
        serde_json::to_value(MessageStats::new(sum, r)).unwrap_or(Value::Null)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counters(publish: u64, deliver_get: u64) -> QueueCounters {
        QueueCounters { publish, deliver_get, ..Default::default() }
    }

    #[test]
    fn rate_is_the_change_over_the_window() {
        let mut samples = Samples::new();
        let t0 = Instant::now();
        assert_eq!(sample(&mut samples, t0, counters(10, 0)), [0.0; 4], "one sample has no rate");
        let r = sample(&mut samples, t0 + Duration::from_secs(2), counters(30, 4));
        assert_eq!(r, [10.0, 2.0, 0.0, 0.0]);
        // Samples older than the window are dropped: the rate follows recent traffic only.
        let r = sample(&mut samples, t0 + Duration::from_secs(12), counters(30, 4));
        assert_eq!(r, [0.0; 4]);
        assert!(samples.len() <= 2);
    }
}
