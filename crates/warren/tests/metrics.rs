//! Prometheus metrics at `GET /metrics` and `GET /metrics/per-object`, on RabbitMQ's names:
//! scraped over HTTP while lapin publishes, consumes, acks and gets, and checked against what
//! must have moved. Every line of the exposition is parsed; a malformed one fails the test.

mod common;

use common::lapin_client::*;
use common::{eventually, unique, within, Broker};
use lapin::options::{BasicAckOptions, BasicRejectOptions, QueueDeclareOptions, QueueDeleteOptions};
use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::net::TcpStream;

/// A parsed scrape: sample values by name and sorted labels, and each family's type.
#[derive(Debug)]
struct Scrape {
    samples: HashMap<(String, BTreeMap<String, String>), f64>,
    types: HashMap<String, String>,
}

impl Scrape {
    /// The value of the sample with exactly these labels; fails when it is missing.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let labels: BTreeMap<String, String> = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        match self.samples.get(&(name.to_string(), labels.clone())) {
            Some(v) => *v,
            None => panic!("no sample {name}{labels:?} in the scrape"),
        }
    }

    fn plain(&self, name: &str) -> f64 {
        self.value(name, &[])
    }

    fn global(&self, name: &str) -> f64 {
        self.value(name, &[("protocol", "amqp091")])
    }

    fn classic(&self, name: &str) -> f64 {
        self.value(name, &[("protocol", "amqp091"), ("queue_type", "rabbit_classic_queue")])
    }
}

fn is_metric_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn is_label_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Parses `{k="v",...}` (the braces included) into labels; returns them and the rest of the line.
fn parse_labels(s: &str, line: &str) -> (BTreeMap<String, String>, String) {
    let mut labels = BTreeMap::new();
    let mut rest = s.strip_prefix('{').expect("labels start with {");
    loop {
        if let Some(after) = rest.strip_prefix('}') {
            return (labels, after.to_string());
        }
        let (name, after) = rest.split_once("=\"").unwrap_or_else(|| panic!("label without =\" in {line:?}"));
        assert!(is_label_name(name), "bad label name {name:?} in {line:?}");
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c @ ('\\' | '"'))) => value.push(c),
                    other => panic!("bad escape {other:?} in {line:?}"),
                },
                Some((i, '"')) => break i,
                Some((_, c)) => value.push(c),
                None => panic!("unterminated label value in {line:?}"),
            }
        };
        assert!(labels.insert(name.to_string(), value).is_none(), "label {name} twice in {line:?}");
        rest = &after[end + 1..];
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
}

/// Parses the text exposition format strictly: every line is a HELP, a TYPE or a sample whose
/// family was typed first, no family is typed twice, no sample repeats.
fn parse(text: &str) -> Scrape {
    let mut scrape = Scrape { samples: HashMap::new(), types: HashMap::new() };
    let mut helped = std::collections::HashSet::new();
    assert!(text.ends_with('\n'), "the exposition ends with a newline");
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or_else(|| panic!("HELP without text: {line:?}"));
            assert!(is_metric_name(name), "bad name in {line:?}");
            assert!(!help.is_empty(), "empty HELP: {line:?}");
            assert!(helped.insert(name.to_string()), "HELP twice for {name}");
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or_else(|| panic!("TYPE without kind: {line:?}"));
            assert!(is_metric_name(name), "bad name in {line:?}");
            assert!(["counter", "gauge", "untyped", "summary", "histogram"].contains(&kind), "bad type: {line:?}");
            assert!(scrape.types.insert(name.to_string(), kind.to_string()).is_none(), "TYPE twice for {name}");
        } else {
            assert!(!line.starts_with('#') && !line.is_empty(), "unexpected line {line:?}");
            let name_end = line.find(['{', ' ']).unwrap_or_else(|| panic!("sample without value: {line:?}"));
            let name = &line[..name_end];
            assert!(is_metric_name(name), "bad metric name in {line:?}");
            // A histogram's samples are its name with _bucket, _sum or _count.
            let histogram = ["_bucket", "_sum", "_count"]
                .iter()
                .filter_map(|suffix| name.strip_suffix(suffix))
                .find(|base| scrape.types.get(*base).is_some_and(|k| k == "histogram"));
            let kind: &str = match scrape.types.get(name) {
                Some(kind) => kind,
                None if histogram.is_some() => "histogram",
                None => panic!("sample before its TYPE: {line:?}"),
            };
            if kind == "counter" {
                assert!(name.ends_with("_total"), "counter {name} is not named *_total");
            }
            let (labels, rest) = if line[name_end..].starts_with('{') {
                parse_labels(&line[name_end..], line)
            } else {
                (BTreeMap::new(), line[name_end..].to_string())
            };
            let value = rest.strip_prefix(' ').unwrap_or_else(|| panic!("no space before the value: {line:?}"));
            let value: f64 = value.parse().unwrap_or_else(|_| panic!("value is not a number: {line:?}"));
            let key = (name.to_string(), labels);
            assert!(scrape.samples.insert(key, value).is_none(), "duplicate sample {line:?}");
        }
    }
    for name in scrape.types.keys() {
        assert!(helped.contains(name), "{name} has a TYPE but no HELP");
    }
    scrape
}

/// One unauthenticated HTTP/1.1 GET; returns the content type and body, asserting 200.
fn get_text(addr: &str, path: &str) -> (String, String) {
    let mut stream = TcpStream::connect(addr).expect("connect to the HTTP listener");
    stream.set_read_timeout(Some(std::time::Duration::from_secs(10))).expect("timeout");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).expect("send request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read response");
    let (head, body) = response.split_once("\r\n\r\n").expect("a complete response");
    assert!(head.starts_with("HTTP/1.1 200"), "GET {path}: {head}");
    let content_type = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-type:").map(|v| v.trim().to_string()))
        .expect("a content type");
    (content_type, body.to_string())
}

fn scrape(addr: &str) -> Scrape {
    let (content_type, body) = get_text(addr, "/metrics");
    assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
    parse(&body)
}

#[tokio::test]
async fn counters_and_gauges_follow_publishing_and_consuming() {
    if Broker::is_external() {
        eprintln!("skipped: scrapes Warren's HTTP listener");
        return;
    }
    let broker = Broker::start();
    let http = broker.http_addr().expect("HTTP listener");

    let before = scrape(&http);
    assert_eq!(before.plain("rabbitmq_connections"), 0.0);
    assert_eq!(before.global("rabbitmq_global_messages_received_total"), 0.0);
    assert_eq!(before.types["rabbitmq_global_messages_received_total"], "counter");
    assert_eq!(before.types["rabbitmq_queue_messages_ready"], "gauge");
    assert!(before.plain("rabbitmq_process_resident_memory_bytes") > 1e6, "RSS is reported");
    assert!(before.plain("rabbitmq_disk_space_available_bytes") > 0.0, "free disk is reported");
    assert_eq!(
        before.value(
            "rabbitmq_identity_info",
            &[("rabbitmq_node", "warren@localhost"), ("rabbitmq_cluster", "warren@localhost")]
        ),
        1.0
    );
    assert!(before.types.contains_key("rabbitmq_build_info"));

    // Publish three routable messages and one that no queue takes, all confirmed.
    let queue = unique("metrics");
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    declare_plain(&ch, &queue).await;
    publish_all(&ch, &queue, &["1", "2", "3"]).await;
    publish(&ch, "amq.direct", &unique("nowhere"), b"lost").await;

    let s = scrape(&http);
    assert_eq!(s.plain("rabbitmq_connections"), 1.0);
    assert_eq!(s.plain("rabbitmq_channels"), 1.0);
    assert_eq!(s.plain("rabbitmq_queues"), 1.0);
    assert_eq!(s.plain("rabbitmq_connections_opened_total"), 1.0);
    assert_eq!(s.plain("rabbitmq_channels_opened_total"), 1.0);
    assert_eq!(s.plain("rabbitmq_queues_declared_total"), 1.0);
    assert_eq!(s.plain("rabbitmq_queues_created_total"), 1.0);
    assert_eq!(s.plain("rabbitmq_queues_deleted_total"), 0.0);
    assert_eq!(s.global("rabbitmq_global_messages_received_total"), 4.0);
    assert_eq!(s.global("rabbitmq_global_messages_received_confirm_total"), 4.0);
    assert_eq!(s.global("rabbitmq_global_messages_routed_total"), 3.0);
    assert_eq!(s.global("rabbitmq_global_messages_unroutable_dropped_total"), 1.0);
    assert_eq!(s.global("rabbitmq_global_messages_unroutable_returned_total"), 0.0);
    assert_eq!(s.global("rabbitmq_global_messages_confirmed_total"), 4.0);
    assert_eq!(s.plain("rabbitmq_queue_messages_ready"), 3.0);
    assert_eq!(s.plain("rabbitmq_queue_messages"), 3.0);
    assert_eq!(s.classic("rabbitmq_global_messages_delivered_total"), 0.0);

    // The per-object endpoint labels queue gauges by vhost and queue.
    let (_, body) = get_text(&http, "/metrics/per-object");
    let per = parse(&body);
    let labels = [("vhost", "/"), ("queue", queue.as_str())];
    assert_eq!(per.value("rabbitmq_queue_messages_ready", &labels), 3.0);
    assert_eq!(per.value("rabbitmq_queue_messages_unacked", &labels), 0.0);
    assert_eq!(per.value("rabbitmq_queue_consumers", &labels), 0.0);
    assert_eq!(per.global("rabbitmq_global_messages_received_total"), 4.0);

    // A manual-ack consumer takes all three and acks two (one ack with `multiple`).
    let mut consumer = consume(&ch, &queue, false).await;
    let deliveries =
        [next_delivery(&mut consumer).await, next_delivery(&mut consumer).await, next_delivery(&mut consumer).await];
    deliveries[1].ack(BasicAckOptions { multiple: true }).await.expect("ack");
    // The broker handles a channel's frames in order: once this answers, the ack is counted.
    declare_passive(&ch, &queue).await.expect("passive declare");

    let s = scrape(&http);
    assert_eq!(s.classic("rabbitmq_global_messages_delivered_total"), 3.0);
    assert_eq!(s.classic("rabbitmq_global_messages_delivered_consume_manual_ack_total"), 3.0);
    assert_eq!(s.classic("rabbitmq_global_messages_delivered_consume_auto_ack_total"), 0.0);
    assert_eq!(s.classic("rabbitmq_global_messages_acknowledged_total"), 2.0);
    assert_eq!(s.plain("rabbitmq_queues_declared_total"), 1.0, "a passive declare is not counted");
    assert_eq!(s.classic("rabbitmq_global_messages_redelivered_total"), 0.0);
    assert_eq!(s.plain("rabbitmq_queue_messages_ready"), 0.0);
    assert_eq!(s.plain("rabbitmq_queue_messages_unacked"), 1.0);
    assert_eq!(s.plain("rabbitmq_queue_messages"), 1.0);
    assert_eq!(s.plain("rabbitmq_consumers"), 1.0);

    // Closing the connection requeues the unacked one; a no-ack get takes it again.
    close(&conn).await;
    eventually("the closed connection to leave the metrics", || {
        let http = http.clone();
        async move { scrape(&http).plain("rabbitmq_connections") == 0.0 }
    })
    .await;
    let s = scrape(&http);
    assert_eq!(s.plain("rabbitmq_connections_closed_total"), 1.0);
    assert_eq!(s.plain("rabbitmq_channels_closed_total"), 1.0);
    assert_eq!(s.plain("rabbitmq_queue_messages_ready"), 1.0);
    assert_eq!(s.plain("rabbitmq_consumers"), 0.0);

    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    let got = get(&ch, &queue, true).await.expect("the requeued message");
    assert!(got.delivery.redelivered);
    let s = scrape(&http);
    assert_eq!(s.classic("rabbitmq_global_messages_delivered_get_auto_ack_total"), 1.0);
    assert_eq!(s.classic("rabbitmq_global_messages_delivered_total"), 4.0);
    assert_eq!(s.classic("rabbitmq_global_messages_redelivered_total"), 1.0);
    assert_eq!(s.plain("rabbitmq_queue_messages"), 0.0);
    assert_eq!(s.plain("rabbitmq_connections_opened_total"), 2.0);
    assert!(s.plain("rabbitmq_process_max_fds") >= s.plain("rabbitmq_process_open_fds"));
    assert_eq!(s.types["warren_store_sync_rounds_total"], "counter");
    assert_eq!(s.types["warren_store_fsyncs_total"], "counter");
    // The core's health: busy time only grows with work, and nothing waits for it when idle.
    let busy = s.value("warren_core_busy_seconds_total", &[("shard", "0")]);
    assert!(busy > 0.0, "the core did work: {busy}");
    assert_eq!(s.value("warren_core_inbox_depth", &[("shard", "0")]), 0.0);
    // Work done with the core shared (publishes, with more than one core: the default
    // data_plane_parallelism is the number of cores) is counted apart.
    assert_eq!(s.types["warren_core_shared_busy_seconds_total"], "counter");
    let shared_busy = s.value("warren_core_shared_busy_seconds_total", &[("shard", "0")]);
    if std::thread::available_parallelism().map_or(1, |n| n.get()) > 1 {
        assert!(shared_busy > 0.0, "the publishes were handled with the core shared");
    } else {
        assert_eq!(shared_busy, 0.0, "one core: every publish holds the core");
    }
    // Every hold of its lock is in the histogram: cumulative buckets, the last one all of them,
    // and their sum the busy time.
    assert_eq!(s.types["warren_core_hold_seconds"], "histogram");
    let bucket = |s: &Scrape, le: &str| s.value("warren_core_hold_seconds_bucket", &[("shard", "0"), ("le", le)]);
    let les = ["0.0001", "0.001", "0.01", "0.1", "1", "+Inf"];
    let holds: Vec<f64> = les.iter().map(|le| bucket(&s, le)).collect();
    assert!(holds.windows(2).all(|w| w[0] <= w[1]), "buckets are cumulative: {holds:?}");
    assert!(holds[0] > 0.0, "short holds are counted: {holds:?}");
    assert_eq!(s.value("warren_core_hold_seconds_count", &[("shard", "0")]), holds[5]);
    assert_eq!(s.value("warren_core_hold_seconds_sum", &[("shard", "0")]), busy);
    within("queue.delete", ch.queue_delete(&queue, QueueDeleteOptions::default())).await.expect("delete");
    let s = scrape(&http);
    assert!(s.value("warren_core_busy_seconds_total", &[("shard", "0")]) > busy, "a delete is work");
    assert!(bucket(&s, "+Inf") > holds[5], "the delete held the lock");
    assert_eq!(s.plain("rabbitmq_queues_deleted_total"), 1.0);
    assert_eq!(s.plain("rabbitmq_queues"), 0.0);
    close(&conn).await;
}

#[test]
fn the_parser_rejects_malformed_lines() {
    let good = "# TYPE a_total counter\n# HELP a_total A.\na_total{x=\"q\\\"\"} 1\n";
    assert_eq!(parse(good).value("a_total", &[("x", "q\"")]), 1.0);
    for bad in [
        "a_total 1\n",                               // sample before TYPE
        "# TYPE a gauge\n# HELP a A.\na{x=\"1} 1\n", // unterminated label
        "# TYPE a gauge\n# HELP a A.\na one\n",      // not a number
        "# TYPE a counter\n# HELP a A.\na 1\n",      // counter not *_total
        "# TYPE a gauge\n# HELP a A.\na 1\na 2\n",   // duplicate sample
        "# TYPE a gauge\na 1\n",                     // no HELP
    ] {
        assert!(std::panic::catch_unwind(|| parse(bad)).is_err(), "accepted {bad:?}");
    }
}

#[tokio::test]
async fn dead_lettering_is_counted_by_reason_and_strategy() {
    if Broker::is_external() {
        eprintln!("skipped: scrapes Warren's HTTP listener");
        return;
    }
    let broker = Broker::start();
    let http = broker.http_addr().expect("HTTP listener");
    let (sink, capped, plain) = (unique("dl-sink"), unique("dl-capped"), unique("dl-plain"));
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    declare_plain(&ch, &sink).await;
    declare_plain(&ch, &plain).await;
    let arguments = field_table(&[
        ("x-max-length", lapin::types::AMQPValue::LongInt(1)),
        ("x-dead-letter-exchange", long_string("")),
        ("x-dead-letter-routing-key", long_string(&sink)),
    ]);
    declare_with(&ch, &capped, QueueDeclareOptions::default(), arguments).await;
    publish_all(&ch, &capped, &["1", "2", "3"]).await;
    publish_all(&ch, &plain, &["x"]).await;
    let got = get(&ch, &plain, false).await.expect("a message");
    got.reject(BasicRejectOptions { requeue: false }).await.expect("reject");
    declare_passive(&ch, &plain).await.expect("passive declare");

    let s = scrape(&http);
    let dead = |reason: &str, strategy: &str| {
        let name = format!("rabbitmq_global_messages_dead_lettered_{reason}_total");
        s.value(&name, &[("queue_type", "rabbit_classic_queue"), ("dead_letter_strategy", strategy)])
    };
    assert_eq!(dead("maxlen", "at_most_once"), 2.0, "two heads dropped into the dead-letter exchange");
    assert_eq!(dead("maxlen", "disabled"), 0.0);
    assert_eq!(dead("rejected", "disabled"), 1.0, "a rejected message with nowhere to go");
    assert_eq!(dead("expired", "disabled"), 0.0);
    assert_eq!(s.plain("rabbitmq_queue_messages_ready"), 3.0, "the sink holds two, the capped queue one");
    close(&conn).await;
}
