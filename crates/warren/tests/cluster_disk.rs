//! A node that cannot write to its disk, with three real `warren` processes: node 3's
//! snapshots of a quorum queue's group fail (its `cluster/queues` directory made immutable with
//! `chattr +i`, which even root cannot write in: the error a full or failing disk gives), so
//! its member of the group stops (openraft stops a group's core on a storage error); the two
//! others go on confirming; node 3 starts its member again from its log every few seconds, and
//! once the directory takes writes again its member catches up and serves the queue:
//! publishes through it are confirmed, and every confirmed message is there.
//!
//! `chattr` needs root and a filesystem with attributes (ext4 here): elsewhere the test says
//! it is skipped.

mod common;

use common::cluster::{get, Cluster};
use common::lapin_client::*;
use common::{chattr, eventually, Immutable};
use futures_lite::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel};
use std::path::Path;
use std::time::Duration;

fn quorum_args() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
    args
}

/// Publishes `n` persistent messages one at a time, each confirmed before the next (one log
/// entry each); returns how many were acked.
async fn publish_one_by_one(ch: &Channel, n: usize) -> usize {
    let mut acked = 0;
    for _ in 0..n {
        let confirm = ch
            .basic_publish(
                "",
                "dq",
                BasicPublishOptions::default(),
                &[7u8; 256],
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
        acked += usize::from(confirm.is_ack());
    }
    acked
}

fn log_says(dir: &Path, what: &str) -> bool {
    std::fs::read_to_string(dir.join("broker.stderr")).unwrap_or_default().contains(what)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_stopped_by_a_write_error_starts_again_and_catches_up() {
    if common::Broker::is_external() {
        eprintln!("skipped: starts Warren processes");
        return;
    }
    let cluster = Cluster::start(3, "warren-disk");
    let c1 = connect_url(&cluster.nodes[0].amqp_url()).await;
    let ch1 = confirm_channel(&c1).await;
    ch1.queue_declare("dq", QueueDeclareOptions { durable: true, ..Default::default() }, quorum_args())
        .await
        .expect("declare");
    assert_eq!(publish_one_by_one(&ch1, 200).await, 200);

    // Node 3 cannot write its snapshots: its member stops at its next one (every 1,000
    // entries), and the two others go on confirming.
    let snapshots = cluster.nodes[2].dir.join("cluster").join("queues");
    if !chattr("+i", &snapshots) {
        eprintln!("skipped: chattr +i did not work here (needs root and ext4)");
        return;
    }
    let immutable = Immutable(snapshots.clone());
    assert_eq!(publish_one_by_one(&ch1, 1200).await, 1200, "nodes 1 and 2 confirm without node 3");
    let data3 = cluster.nodes[2].dir.clone();
    eventually("node 3's member stopped and is started again", || async {
        log_says(&data3, "stopped (see the errors above); starting it again from its log")
    })
    .await;

    // Writable again: node 3 starts its member, catches up and takes publishes (nacked
    // until then, so tried until one is confirmed).
    drop(immutable);
    let c3 = connect_url(&cluster.nodes[2].amqp_url()).await;
    let ch3 = confirm_channel(&c3).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut through_3 = 0;
    while through_3 == 0 {
        assert!(tokio::time::Instant::now() < deadline, "no publish through node 3 confirmed in 30 s");
        through_3 = publish_one_by_one(&ch3, 1).await;
        if through_3 == 0 {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let total = (1400 + through_3) as u64;
    let h3 = cluster.nodes[2].http();
    eventually("node 3 holds every message", || async {
        get(&h3, "/api/queues/%2F/dq").await.1["messages"].as_u64() == Some(total)
    })
    .await;
    let ch = channel(&c3).await;
    let mut consumer =
        ch.basic_consume("dq", "c3", BasicConsumeOptions::default(), FieldTable::default()).await.expect("consume");
    let mut got = 0;
    while got < total {
        let d = tokio::time::timeout(Duration::from_secs(10), consumer.next())
            .await
            .unwrap_or_else(|_| panic!("only {got} of {total} came"))
            .expect("a delivery")
            .expect("a delivery");
        d.ack(BasicAckOptions::default()).await.expect("ack");
        got += 1;
    }
}
