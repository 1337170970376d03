//! A quorum queue's backlog past its members' memory window, with real `warren` processes:
//! every member keeps the messages past the window in its own store (files under
//! `cluster/queues/<group>.bodies`) and names them in its snapshots; members killed and started
//! again come back from snapshot and store, and every confirmed message comes out once, in
//! order, with its own body, through a node that was killed.

mod common;

use common::cluster::{get, Cluster};
use common::eventually;
use common::lapin_client::*;
use futures_lite::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel};
use std::path::Path;
use std::time::Duration;

/// 24 MB: past the memory window of 4 MiB (and 4,096 messages), and over several of the
/// store's 8 MiB segments.
const MESSAGES: usize = 6000;

fn body(i: usize) -> Vec<u8> {
    let mut b = format!("m{i:05}-").into_bytes();
    b.resize(4096, b'a' + (i % 26) as u8);
    b
}

async fn declare(ch: &Channel) {
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
    ch.queue_declare("backlog", QueueDeclareOptions { durable: true, ..Default::default() }, args)
        .await
        .expect("declare the quorum queue");
}

/// Files of the member's store of paged messages, and whether a snapshot file is there.
fn store_files(node_dir: &Path) -> (usize, bool) {
    let dir = node_dir.join("cluster").join("queues");
    let Ok(entries) = std::fs::read_dir(&dir) else { return (0, false) };
    let mut segments = 0;
    let mut snapshot = false;
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "bodies") {
            segments += std::fs::read_dir(&path)
                .map(|d| d.flatten().filter(|f| f.path().extension().is_some_and(|e| e == "seg")).count())
                .unwrap_or(0);
        }
        snapshot |= path.extension().is_some_and(|e| e == "snapshot");
    }
    (segments, snapshot)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_past_the_window_is_paged_by_every_member_and_survives_their_restarts() {
    if common::Broker::is_external() {
        eprintln!("skipped: starts Warren processes");
        return;
    }
    let mut cluster = Cluster::start(3, "warren-backlog");
    let c2 = connect_url(&cluster.nodes[1].amqp_url()).await;
    let ch = confirm_channel(&c2).await;
    declare(&ch).await;
    // A few in flight at a time: many log entries, so that members snapshot on the way.
    for start in (0..MESSAGES).step_by(4) {
        let mut confirms = Vec::new();
        for i in start..(start + 4).min(MESSAGES) {
            let props = BasicProperties::default().with_delivery_mode(2);
            let confirm = ch.basic_publish("", "backlog", BasicPublishOptions::default(), &body(i), props).await;
            confirms.push(confirm.expect("publish"));
        }
        for confirm in confirms {
            assert!(confirm.await.expect("confirm").is_ack(), "a publish was not confirmed");
        }
    }
    for node in &cluster.nodes {
        let http = node.http();
        eventually(&format!("{MESSAGES} counted on {http}"), || async {
            let (status, q) = get(&http, "/api/queues/%2F/backlog").await;
            status == 200 && q["messages"].as_u64() == Some(MESSAGES as u64)
        })
        .await;
    }
    // Every member paged (over several segments), and snapshotted.
    for node in &cluster.nodes {
        let dir = node.dir.clone();
        eventually(&format!("{} paged and snapshotted", node.name), || {
            let dir = dir.clone();
            async move {
                let (segments, snapshot) = store_files(&dir);
                segments > 1 && snapshot
            }
        })
        .await;
    }
    drop((ch, c2));

    // Each node killed and started again in turn: from its snapshot, its store and its log.
    for i in [2, 0] {
        cluster.nodes[i].kill();
        cluster.restart(i);
        let http = cluster.nodes[i].http();
        eventually(&format!("{} back, counting {MESSAGES}", cluster.names[i]), || async {
            let (status, q) = get(&http, "/api/queues/%2F/backlog").await;
            status == 200
                && q["messages"].as_u64() == Some(MESSAGES as u64)
                && q["online"].as_array().is_some_and(|o| o.len() == 3)
        })
        .await;
    }

    // Drained through node 3 (killed and restarted): every message once, in order, intact.
    let c3 = connect_url(&cluster.nodes[2].amqp_url()).await;
    let ch3 = channel(&c3).await;
    ch3.basic_qos(200, BasicQosOptions::default()).await.expect("qos");
    let mut consumer = ch3
        .basic_consume("backlog", "drain", BasicConsumeOptions::default(), FieldTable::default())
        .await
        .expect("consume");
    for i in 0..MESSAGES {
        let d = tokio::time::timeout(Duration::from_secs(20), consumer.next())
            .await
            .unwrap_or_else(|_| panic!("only {i} of {MESSAGES} came"))
            .expect("the consumer ended")
            .expect("a delivery");
        assert!(d.data == body(i), "delivery {i}: {:?}", String::from_utf8_lossy(&d.data[..8.min(d.data.len())]));
        assert!(!d.redelivered, "delivery {i} redelivered");
        d.ack(BasicAckOptions::default()).await.expect("ack");
    }
    for node in &cluster.nodes {
        let http = node.http();
        eventually(&format!("empty on {http}"), || async {
            let (_, q) = get(&http, "/api/queues/%2F/backlog").await;
            q["messages"].as_u64() == Some(0)
        })
        .await;
    }
    // Drained and idle for a few seconds, every member snapshots and its store lets go of
    // everything but the segment it writes to.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    for node in &cluster.nodes {
        loop {
            let (segments, _) = store_files(&node.dir);
            if segments <= 1 {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "{}: {segments} store segments kept", node.name);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
