//! Resource alarms (issue 7): a publisher is blocked (connection.blocked, and no longer read)
//! while memory is over the high watermark or free disk space under the limit; consumers keep
//! draining; memory stays bounded under a flood of publishers.

mod common;

use common::lapin_client::*;
use common::{eventually, unique, within, Broker};
use lapin::options::BasicPublishOptions;
use lapin::BasicProperties;

/// A peak resident set in bytes (`VmHWM`) of process `pid`.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM");
    kib * 1024
}

#[tokio::test]
async fn under_a_disk_alarm_publishers_are_blocked_and_consumers_still_drain() {
    // More free space than any disk has: the disk alarm is in force from the start.
    let Some(broker) = Broker::start_with_config("disk_free_limit.absolute = 1000000GB\n") else { return };
    let queue = unique("alarm");
    let (publisher, pch) = connect_channel(&broker).await;
    declare_plain(&pch, &queue).await;
    let (_consumer_conn, cch) = connect_channel(&broker).await;
    let mut consumer = consume(&cch, &queue, true).await;
    assert!(!publisher.status().blocked());
    publish(&pch, "", &queue, b"first").await;
    // lapin announces the connection.blocked capability and records the notification.
    eventually("connection.blocked", || async { publisher.status().blocked() }).await;
    // What was published before the broker stopped reading reaches the consumer: deliveries
    // to connections that do not publish go on.
    assert_eq!(body(&next_delivery(&mut consumer).await), "first");
    // The consumer's own connection was never blocked.
    assert!(!_consumer_conn.status().blocked());
    // Operators see it: the health check fails naming the resource, the node shows it, and
    // the metric is 1.
    let Some(http) = broker.http_addr() else { return };
    let client = reqwest::Client::new();
    let get = |path: &str| client.get(format!("http://{http}{path}")).basic_auth("guest", Some("guest")).send();
    let health = within("the alarms health check", get("/api/health/checks/alarms")).await.expect("http");
    assert_eq!(health.status().as_u16(), 503);
    let body: serde_json::Value = health.json().await.expect("json");
    assert_eq!(body["alarms"][0]["resource"], "disk", "{body}");
    let nodes: serde_json::Value = within("nodes", get("/api/nodes")).await.expect("http").json().await.expect("json");
    assert_eq!(nodes[0]["disk_free_alarm"], true, "{nodes}");
    // The measurements behind it, with RabbitMQ's field names.
    assert_eq!(nodes[0]["disk_free_limit"], 1_000_000_000_000_000u64, "{nodes}");
    let disk_free = nodes[0]["disk_free"].as_u64().expect("disk_free");
    assert!(disk_free > 0 && disk_free < 1_000_000_000_000_000, "{nodes}");
    let (used, limit) =
        (nodes[0]["mem_used"].as_u64().expect("mem_used"), nodes[0]["mem_limit"].as_u64().expect("mem"));
    assert!(used > 0 && used < limit, "{nodes}");
    assert_eq!(nodes[0]["mem_alarm"], false, "{nodes}");
    let metrics = within("metrics", get("/metrics")).await.expect("http").text().await.expect("text");
    assert!(metrics.lines().any(|l| l == "rabbitmq_alarms_free_disk_space_watermark 1"), "{metrics}");
}

#[tokio::test]
async fn a_publisher_flood_stops_near_the_memory_high_watermark() {
    const WATERMARK_MIB: u64 = 64;
    let conf = format!("vm_memory_high_watermark.absolute = {WATERMARK_MIB}MiB\n");
    let Some(broker) = Broker::start_with_config(&conf) else { return };
    let Some(pid) = broker.pid() else { return };
    // 4 publishers, 10 queues each, 64 KiB messages: room for 160 MiB in the queues' memory
    // windows, more than twice the watermark, were nothing blocking them.
    let body = vec![7u8; 64 * 1024];
    let mut publishers = Vec::new();
    let mut tasks = Vec::new();
    let mut queues = Vec::new();
    for p in 0..4 {
        let (conn, ch) = connect_channel(&broker).await;
        let names: Vec<String> = (0..10).map(|q| unique(&format!("flood-{p}-{q}"))).collect();
        for q in &names {
            declare_plain(&ch, q).await;
        }
        queues.extend(names.iter().cloned());
        let body = body.clone();
        tasks.push(tokio::spawn(async move {
            // Publishes until the broker stops reading (the publish then waits on a full
            // socket) or 2,000 messages (125 MiB) went out.
            for i in 0..2000 {
                let q = &names[i % names.len()];
                let sent = ch.basic_publish("", q, BasicPublishOptions::default(), &body, BasicProperties::default());
                if sent.await.is_err() {
                    break;
                }
            }
        }));
        publishers.push(conn);
    }
    eventually("every publisher blocked", || async { publishers.iter().all(|c| c.status().blocked()) }).await;
    let peak = peak_rss(pid);
    eprintln!("peak RSS under the flood: {} MiB (watermark {WATERMARK_MIB} MiB)", peak / (1024 * 1024));
    // What arrives between two measurements counts against the headroom left, so the
    // overshoot stays small (a few MiB in practice).
    let limit = (WATERMARK_MIB + 24) * 1024 * 1024;
    assert!(peak < limit, "peak RSS {} MiB, watermark {WATERMARK_MIB} MiB", peak / (1024 * 1024));
    // Consumers still drain while the alarm is in force.
    let (_c, cch) = connect_channel(&broker).await;
    let mut consumer = consume(&cch, &queues[0], true).await;
    within("a delivery under the alarm", next_delivery(&mut consumer)).await;
    for t in tasks {
        t.abort();
    }
}
