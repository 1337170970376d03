//! A node whose write-ahead log cannot be written, with three real `warren` processes: node
//! 3's current WAL segment is made immutable (`chattr +i`: writes to it fail, as on a failing
//! or full disk), so its WAL stops and its members (the metadata group's and a quorum
//! queue's) stop with it, while the two others go on confirming and declaring. Once the file
//! takes writes again, node 3 recovers its WAL in place (no restart of the process) and its
//! members catch up: it counts what was confirmed meanwhile, knows the queue declared
//! meanwhile, and confirms publishes again.
//!
//! `chattr` needs root and a filesystem with attributes (ext4 here): elsewhere the test says
//! it is skipped.

mod common;

use common::cluster::{get, Cluster};
use common::lapin_client::*;
use common::{chattr, eventually, Immutable};
use lapin::options::{BasicPublishOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel};
use std::path::{Path, PathBuf};

/// The segment the node's WAL writes to: the last by name.
fn current_segment(node_dir: &Path) -> PathBuf {
    let wal = node_dir.join("cluster").join("wal");
    let mut segments: Vec<PathBuf> = std::fs::read_dir(&wal)
        .expect("the WAL's directory")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    segments.sort();
    segments.pop().expect("a segment")
}

fn quorum_args() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
    args
}

/// Publishes `n` persistent messages to `wq`, waiting for each confirm: all must be acks.
async fn publish_confirmed(ch: &Channel, n: usize) {
    for _ in 0..n {
        let confirm = ch
            .basic_publish(
                "",
                "wq",
                BasicPublishOptions::default(),
                b"x",
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
        assert!(confirm.is_ack(), "not confirmed: {confirm:?}");
    }
}

async fn count(http: &str, queue: &str) -> Option<u64> {
    let (status, q) = get(http, &format!("/api/queues/%2F/{queue}")).await;
    if status != 200 {
        return None;
    }
    q["messages"].as_u64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_wal_cannot_write_recovers_it_in_place_and_catches_up() {
    if common::Broker::is_external() {
        eprintln!("skipped: starts Warren processes");
        return;
    }
    let cluster = Cluster::start(3, "warren-wal");
    let c1 = connect_url(&cluster.nodes[0].amqp_url()).await;
    let ch1 = confirm_channel(&c1).await;
    ch1.queue_declare("wq", QueueDeclareOptions { durable: true, ..Default::default() }, quorum_args())
        .await
        .expect("declare");
    publish_confirmed(&ch1, 10).await;
    let third = cluster.nodes[2].http();
    eventually("node 3 counts 10", || async { count(&third, "wq").await == Some(10) }).await;

    let segment = current_segment(&cluster.nodes[2].dir);
    if !chattr("+i", &segment) {
        eprintln!("skipped: chattr +i failed (needs root and a filesystem with attributes)");
        return;
    }
    let guard = Immutable(segment);
    // Its member of the queue's group writes what is published: its WAL stops.
    publish_confirmed(&ch1, 10).await;
    eventually("node 3's WAL stopped", || async { cluster.nodes[2].log().contains("write-ahead log stopped") }).await;
    // The two others go on: publishes and a declaration.
    publish_confirmed(&ch1, 5).await;
    ch1.queue_declare("meanwhile", QueueDeclareOptions { durable: true, ..Default::default() }, FieldTable::default())
        .await
        .expect("declared by the two others");

    // The file takes writes again: node 3 recovers in place and catches up.
    drop(guard);
    eventually("node 3's WAL takes writes again", || async {
        cluster.nodes[2].log().contains("write-ahead log takes writes again")
    })
    .await;
    eventually("node 3 counts 25 with every member online", || async {
        let (status, q) = get(&third, "/api/queues/%2F/wq").await;
        status == 200 && q["messages"].as_u64() == Some(25) && q["online"].as_array().is_some_and(|o| o.len() == 3)
    })
    .await;
    eventually("node 3 knows the queue declared meanwhile", || async { count(&third, "meanwhile").await.is_some() })
        .await;
    let c3 = connect_url(&cluster.nodes[2].amqp_url()).await;
    let ch3 = confirm_channel(&c3).await;
    publish_confirmed(&ch3, 3).await;
    let first = cluster.nodes[0].http();
    eventually("node 1 counts 28", || async { count(&first, "wq").await == Some(28) }).await;
}
