//! Prometheus metrics on RabbitMQ's names: `GET /metrics` (aggregated, as rabbitmq_prometheus
//! serves by default) and `GET /metrics/per-object` (queue gauges labelled by vhost and queue).
//!
//! The text exposition format is written here directly rather than through the
//! `prometheus-client` crate: the counters already live in the broker as plain integers updated
//! under its one lock (so the publish path pays one add, no atomics, no registry), and a scrape
//! only has to copy them out and print a few dozen lines. A metrics library would want to own
//! the counters (as atomics in its registry) or be fed a copy per scrape, which buys nothing
//! over formatting the lines ourselves, and the format is small and stable.
//!
//! Like RabbitMQ's endpoint, this one needs no authentication.

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use std::fmt::Write;
use std::sync::Arc;
use warren_server::Shared;

/// The content type of the text exposition format, version 0.0.4.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// `GET /metrics`: every family aggregated over the node.
pub async fn aggregated(State(shared): State<Arc<Shared>>) -> Response {
    text(render(&shared, false))
}

/// `GET /metrics/per-object`: queue families with one sample per queue.
pub async fn per_object(State(shared): State<Arc<Shared>>) -> Response {
    text(render(&shared, true))
}

fn text(body: String) -> Response {
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], body).into_response()
}

/// Writes metric families: `# HELP` and `# TYPE` once per family, then its samples.
struct Exposition {
    out: String,
}

#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
    Untyped,
    Histogram,
}

impl Exposition {
    fn family(&mut self, name: &str, kind: Kind, help: &str) {
        let kind = match kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Untyped => "untyped",
            Kind::Histogram => "histogram",
        };
        // HELP text escapes backslash and newline; ours has neither, but stay correct.
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.out, "# TYPE {name} {kind}\n# HELP {name} {help}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                self.out.push_str(k);
                self.out.push_str("=\"");
                for ch in v.chars() {
                    match ch {
                        '\\' => self.out.push_str("\\\\"),
                        '"' => self.out.push_str("\\\""),
                        '\n' => self.out.push_str("\\n"),
                        c => self.out.push(c),
                    }
                }
                self.out.push('"');
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }

    /// A family with one unlabelled sample.
    fn single(&mut self, name: &str, kind: Kind, help: &str, value: u64) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }
}

/// One queue's value of a per-queue gauge.
type QueueValue = fn(&warren_core::QueueInfo) -> u64;

const AMQP091: (&str, &str) = ("protocol", "amqp091");
const CLASSIC: (&str, &str) = ("queue_type", "rabbit_classic_queue");

fn render(shared: &Shared, per_object: bool) -> String {
    // Copy what is needed under the lock, format after releasing it.
    let (overview, counters, queues, data_dir, alarms, degraded) = {
        let core = shared.broker();
        let queues = if per_object { core.queues() } else { Vec::new() };
        let degraded = core.degraded_queues() as u64;
        (core.overview(), core.counters(), queues, core.data_dir().to_path_buf(), core.alarms(), degraded)
    };
    let mut e = Exposition { out: String::with_capacity(8 * 1024) };
    use Kind::{Counter, Gauge, Histogram, Untyped};

    // Object counts.
    e.single("rabbitmq_connections", Gauge, "Connections currently open", overview.connections as u64);
    e.single("rabbitmq_channels", Gauge, "Channels currently open", overview.channels as u64);
    e.single("rabbitmq_consumers", Gauge, "Consumers currently connected", overview.consumers as u64);
    e.single("rabbitmq_queues", Gauge, "Queues available", overview.queues as u64);
    e.single(
        "rabbitmq_connections_opened_total",
        Counter,
        "Total number of connections opened",
        counters.connections_opened,
    );
    e.single(
        "rabbitmq_connections_closed_total",
        Counter,
        "Total number of connections closed or terminated",
        counters.connections_closed,
    );
    e.single("rabbitmq_channels_opened_total", Counter, "Total number of channels opened", counters.channels_opened);
    e.single("rabbitmq_channels_closed_total", Counter, "Total number of channels closed", counters.channels_closed);
    e.single("rabbitmq_queues_declared_total", Counter, "Total number of queues declared", counters.queues_declared);
    e.single("rabbitmq_queues_created_total", Counter, "Total number of queues created", counters.queues_created);
    e.single("rabbitmq_queues_deleted_total", Counter, "Total number of queues deleted", counters.queues_deleted);

    // Queue depths: one sample per queue (per-object) or their sums.
    let ready = overview.messages_ready;
    let unacked = overview.messages_unacked;
    let queue_families: [(&str, &str, QueueValue, u64); 4] = [
        (
            "rabbitmq_queue_messages_ready",
            "Messages ready to be delivered to consumers",
            |q| q.messages_ready.into(),
            ready,
        ),
        (
            "rabbitmq_queue_messages_unacked",
            "Messages delivered to consumers but not yet acknowledged",
            |q| q.messages_unacked.into(),
            unacked,
        ),
        (
            "rabbitmq_queue_messages",
            "Sum of ready and unacknowledged messages - total queue depth",
            |q| u64::from(q.messages_ready) + u64::from(q.messages_unacked),
            ready + unacked,
        ),
        ("rabbitmq_queue_consumers", "Consumers on a queue", |q| q.consumers.into(), overview.consumers as u64),
    ];
    for (name, help, value, total) in queue_families {
        e.family(name, Gauge, help);
        if per_object {
            for q in &queues {
                e.sample(name, &[("vhost", &q.vhost), ("queue", &q.name)], value(q));
            }
        } else {
            e.sample(name, &[], total);
        }
    }
    // Quorum queues' Raft state on this node, as RabbitMQ's ra_metrics: one sample per queue
    // this node holds a member of (per-object), or their sum (aggregated, as RabbitMQ sums
    // them); none on a node without quorum queues.
    let raft = shared.cluster_view().raft_metrics();
    type RaftValue = fn(&warren_server::cluster::RaftMetrics) -> f64;
    let raft_families: [(&str, Kind, &str, RaftValue); 6] = [
        ("rabbitmq_raft_term_total", Counter, "Current Raft term number", |m| m.term as f64),
        ("rabbitmq_raft_log_snapshot_index", Gauge, "Raft log snapshot index", |m| m.snapshot_index as f64),
        ("rabbitmq_raft_log_last_applied_index", Gauge, "Raft log last applied index", |m| m.last_applied_index as f64),
        ("rabbitmq_raft_log_commit_index", Gauge, "Raft log commit index", |m| m.commit_index as f64),
        ("rabbitmq_raft_log_last_written_index", Gauge, "Raft log last written index", |m| m.last_written_index as f64),
        ("rabbitmq_raft_entry_commit_latency_seconds", Gauge, "Time taken for a log entry to be committed", |m| {
            m.commit_latency_seconds
        }),
    ];
    if !raft.is_empty() {
        for (name, kind, help, value) in raft_families {
            e.family(name, kind, help);
            if per_object {
                for m in &raft {
                    e.sample(name, &[("vhost", &m.vhost), ("queue", &m.queue)], value(m));
                }
            } else {
                e.sample(name, &[], raft.iter().map(value).sum::<f64>());
            }
        }
    }

    // Warren's own: queues whose storage failed and has not healed yet (RabbitMQ has none).
    let name = "warren_queue_storage_degraded";
    e.family(name, Gauge, "Queues whose storage is degraded: a write or sync failed and is being retried");
    if per_object {
        for q in &queues {
            e.sample(name, &[("vhost", &q.vhost), ("queue", &q.name)], u64::from(q.storage_trouble.is_some()));
        }
    } else {
        e.sample(name, &[], degraded);
    }

    // Message flow, as RabbitMQ's global counters (labelled by protocol, and by queue type
    // where RabbitMQ labels them so; every Warren queue is a classic queue).
    let received: [(&str, &str, u64); 6] = [
        (
            "rabbitmq_global_messages_received_total",
            "Total number of messages received from publishers",
            counters.messages_received,
        ),
        (
            "rabbitmq_global_messages_received_confirm_total",
            "Total number of messages received from publishers expecting confirmations",
            counters.messages_received_confirm,
        ),
        (
            "rabbitmq_global_messages_routed_total",
            "Total number of messages routed to queues or streams",
            counters.messages_routed,
        ),
        (
            "rabbitmq_global_messages_unroutable_dropped_total",
            "Total number of messages published as non-mandatory into an exchange and dropped as unroutable",
            counters.messages_unroutable_dropped,
        ),
        (
            "rabbitmq_global_messages_unroutable_returned_total",
            "Total number of messages published as mandatory into an exchange and returned to the publisher \
             as unroutable",
            counters.messages_unroutable_returned,
        ),
        (
            "rabbitmq_global_messages_confirmed_total",
            "Total number of messages confirmed to publishers",
            overview.store.confirms,
        ),
    ];
    for (name, help, value) in received {
        e.family(name, Counter, help);
        e.sample(name, &[AMQP091], value);
    }
    let delivered: [(&str, &str, u64); 7] = [
        (
            "rabbitmq_global_messages_delivered_total",
            "Total number of messages delivered to consumers",
            counters.messages_delivered(),
        ),
        (
            "rabbitmq_global_messages_delivered_consume_manual_ack_total",
            "Total number of messages delivered to consumers using basic.consume with manual acknowledgment",
            counters.delivered_consume_manual_ack,
        ),
        (
            "rabbitmq_global_messages_delivered_consume_auto_ack_total",
            "Total number of messages delivered to consumers using basic.consume with automatic acknowledgment",
            counters.delivered_consume_auto_ack,
        ),
        (
            "rabbitmq_global_messages_delivered_get_manual_ack_total",
            "Total number of messages delivered to consumers using basic.get with manual acknowledgment",
            counters.delivered_get_manual_ack,
        ),
        (
            "rabbitmq_global_messages_delivered_get_auto_ack_total",
            "Total number of messages delivered to consumers using basic.get with automatic acknowledgment",
            counters.delivered_get_auto_ack,
        ),
        (
            "rabbitmq_global_messages_redelivered_total",
            "Total number of messages redelivered to consumers",
            counters.redelivered,
        ),
        (
            "rabbitmq_global_messages_acknowledged_total",
            "Total number of messages acknowledged by consumers",
            counters.acknowledged,
        ),
    ];
    for (name, help, value) in delivered {
        e.family(name, Counter, help);
        e.sample(name, &[AMQP091, CLASSIC], value);
    }

    // Dead-lettering, labelled as RabbitMQ labels it for classic queues.
    for (i, reason) in warren_core::metrics::DEAD_LETTER_REASONS.iter().enumerate() {
        let name = format!("rabbitmq_global_messages_dead_lettered_{reason}_total");
        let help = match *reason {
            "expired" => "Total number of messages dead-lettered due to message TTL exceeded",
            "maxlen" => "Total number of messages dead-lettered due to overflow drop-head or reject-publish-dlx",
            "rejected" => "Total number of messages dead-lettered due to basic.reject or basic.nack",
            _ => "Total number of messages dead-lettered due to delivery-limit exceeded",
        };
        e.family(&name, Counter, help);
        for (j, strategy) in ["disabled", "at_most_once"].into_iter().enumerate() {
            e.sample(&name, &[CLASSIC, ("dead_letter_strategy", strategy)], counters.dead_lettered[i][j]);
        }
    }

    // The process and its disk.
    if let Some(rss) = resident_memory_bytes() {
        e.single("rabbitmq_process_resident_memory_bytes", Gauge, "Memory used in bytes", rss);
    }
    if let Some(fds) = open_fds() {
        e.single("rabbitmq_process_open_fds", Gauge, "Open file descriptors", fds);
    }
    if let Some(max) = max_fds() {
        e.single("rabbitmq_process_max_fds", Gauge, "Open file descriptors limit", max);
    }
    if let Ok(st) = rustix::fs::statvfs(&data_dir) {
        let available = st.f_bavail.saturating_mul(st.f_frsize);
        e.single("rabbitmq_disk_space_available_bytes", Gauge, "Disk space available in bytes", available);
    }

    // Resource alarms in force (1) or not (0).
    e.single(
        "rabbitmq_alarms_memory_used_watermark",
        Gauge,
        "is 1 if VM memory watermark alarm is in effect",
        u64::from(alarms.memory),
    );
    e.single(
        "rabbitmq_alarms_free_disk_space_watermark",
        Gauge,
        "is 1 if free disk space watermark alarm is in effect",
        u64::from(alarms.disk),
    );

    // Identity, for dashboards that join on these labels.
    let version = env!("CARGO_PKG_VERSION");
    e.family("rabbitmq_build_info", Untyped, "RabbitMQ & Erlang/OTP version info");
    e.sample(
        "rabbitmq_build_info",
        &[("rabbitmq_version", version), ("prometheus_plugin_version", version), ("product", "Warren")],
        1,
    );
    e.family("rabbitmq_identity_info", Untyped, "RabbitMQ node & cluster identity info");
    let cluster = shared.cluster_view();
    let (node, cluster_name) = (cluster.node_name(), cluster.cluster_name());
    e.sample("rabbitmq_identity_info", &[("rabbitmq_node", &node), ("rabbitmq_cluster", &cluster_name)], 1);

    // Warren's own.
    e.single(
        "warren_store_sync_rounds_total",
        Counter,
        "Store sync rounds (group commits) completed",
        overview.store.sync_rounds,
    );
    e.single("warren_store_fsyncs_total", Counter, "Files synced to disk, over all sync rounds", overview.store.fsyncs);
    e.single("warren_uptime_seconds", Gauge, "Seconds since the broker started", shared.uptime().as_secs());
    // The core's owners: today one, the whole broker behind one lock ("shard 0").
    let health = shared.core_health();
    e.family(
        "warren_core_busy_seconds_total",
        Counter,
        "Seconds the core shard was busy with its lock held exclusively (every other connection waited)",
    );
    e.sample("warren_core_busy_seconds_total", &[("shard", "0")], format_args!("{:.6}", health.busy_seconds));
    e.family(
        "warren_core_shared_busy_seconds_total",
        Counter,
        "Seconds of work done with the core shard shared (publishes in parallel), added over connections",
    );
    e.sample(
        "warren_core_shared_busy_seconds_total",
        &[("shard", "0")],
        format_args!("{:.6}", health.shared_busy_seconds),
    );
    e.family(
        "warren_core_inbox_depth",
        Gauge,
        "Work waiting for the core shard: threads waiting for its lock and connections waiting for a turn",
    );
    e.sample("warren_core_inbox_depth", &[("shard", "0")], health.inbox_depth);
    e.family(
        "warren_core_hold_seconds",
        Histogram,
        "How long each hold of the core shard's lock lasted (every other connection waited meanwhile)",
    );
    let mut cumulative = 0;
    for (i, n) in health.holds.iter().enumerate() {
        cumulative += n;
        let le = warren_server::HOLD_BUCKETS_NS.get(i).map_or("+Inf".to_string(), |&ns| format!("{}", ns as f64 / 1e9));
        e.sample("warren_core_hold_seconds_bucket", &[("shard", "0"), ("le", &le)], cumulative);
    }
    e.sample("warren_core_hold_seconds_sum", &[("shard", "0")], format_args!("{:.6}", health.busy_seconds));
    e.sample("warren_core_hold_seconds_count", &[("shard", "0")], cumulative);
    e.out
}

/// The resident set size from /proc (Linux); `None` elsewhere.
fn resident_memory_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.trim_start_matches("VmRSS:").trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kib * 1024)
}

/// How many file descriptors the process holds (Linux); `None` elsewhere.
fn open_fds() -> Option<u64> {
    Some(std::fs::read_dir("/proc/self/fd").ok()?.count() as u64)
}

/// The soft limit on open files, from /proc (Linux); `None` elsewhere or when unlimited.
fn max_fds() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.trim_start_matches("Max open files").split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        let mut e = Exposition { out: String::new() };
        e.sample("m", &[("queue", "a\"b\\c\nd")], 3);
        assert_eq!(e.out, "m{queue=\"a\\\"b\\\\c\\nd\"} 3\n");
    }
}
