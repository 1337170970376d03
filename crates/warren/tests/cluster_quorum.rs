//! Quorum queues served through their Raft groups, with real `warren` processes: a quorum
//! queue declared through one node takes confirmed publishes through another and delivers
//! them, in order, to a consumer on the third; the node that declared it (its first leader)
//! is killed, and the two others go on: every confirmed message is delivered, the ones the
//! lost node's consumer held included.

mod common;

use common::cluster::{get, Cluster};
use common::eventually;
use common::lapin_client::*;
use futures_lite::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel};
use std::time::Duration;

fn quorum_args() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
    args
}

async fn declare(ch: &Channel) {
    ch.queue_declare("qq", QueueDeclareOptions { durable: true, ..Default::default() }, quorum_args())
        .await
        .expect("declare the quorum queue");
}

/// Publishes `bodies` with confirms and waits for each confirm; all must be acks.
async fn publish_confirmed(ch: &Channel, bodies: impl IntoIterator<Item = String>) {
    for body in bodies {
        let confirm = ch
            .basic_publish(
                "",
                "qq",
                BasicPublishOptions::default(),
                body.as_bytes(),
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
        assert!(confirm.is_ack(), "{body} was not confirmed: {confirm:?}");
    }
}

/// Receives `n` deliveries from `consumer`, acking each; returns their bodies.
async fn receive(consumer: &mut lapin::Consumer, n: usize) -> Vec<String> {
    let mut got = Vec::new();
    while got.len() < n {
        let Ok(d) = tokio::time::timeout(Duration::from_secs(10), consumer.next()).await else {
            eprintln!("only {} of {n} deliveries came: {got:?}", got.len());
            return got;
        };
        let d = d.expect("the consumer ended").expect("a delivery");
        got.push(String::from_utf8_lossy(&d.data).into_owned());
        d.ack(BasicAckOptions::default()).await.expect("ack");
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quorum_queue_is_served_by_its_group_through_every_node() {
    if common::Broker::is_external() {
        eprintln!("skipped: starts Warren processes");
        return;
    }
    let mut cluster = Cluster::start(3, "warren-qq");
    let (c1, c2, c3) = (
        connect_url(&cluster.nodes[0].amqp_url()).await,
        connect_url(&cluster.nodes[1].amqp_url()).await,
        connect_url(&cluster.nodes[2].amqp_url()).await,
    );
    declare(&channel(&c1).await).await;

    // A consumer on node 2; a publisher with confirms on node 3.
    let ch2 = channel(&c2).await;
    declare(&ch2).await;
    ch2.basic_qos(10, BasicQosOptions::default()).await.expect("qos");
    let mut consumer =
        ch2.basic_consume("qq", "c2", BasicConsumeOptions::default(), FieldTable::default()).await.expect("consume");
    let ch3 = confirm_channel(&c3).await;
    let first: Vec<String> = (0..50).map(|i| format!("m{i}")).collect();
    publish_confirmed(&ch3, first.clone()).await;
    let got = receive(&mut consumer, 50).await;
    if got != first {
        for n in &cluster.nodes {
            eprintln!(
                "==== {}\n{}",
                n.name,
                n.log().lines().filter(|l| !l.contains("openraft")).collect::<Vec<_>>().join("\n")
            );
        }
    }
    assert_eq!(got, first, "delivered in publish order");
    for node in &cluster.nodes {
        let http = node.http();
        eventually(&format!("qq empty on {http}"), || async {
            let (status, q) = get(&http, "/api/queues/%2F/qq").await;
            status == 200 && q["messages"].as_u64() == Some(0)
        })
        .await;
    }

    // Every node shows the group: three members, all online, a leader among them.
    for node in &cluster.nodes {
        let (_, q) = get(&node.http(), "/api/queues/%2F/qq").await;
        assert_eq!(q["type"], "quorum", "{q}");
        assert_eq!(q["members"], serde_json::json!(cluster.names), "{q}");
        assert_eq!(q["online"], serde_json::json!(cluster.names), "{q}");
        let leader = q["leader"].as_str().unwrap_or_default().to_owned();
        assert!(cluster.names.contains(&leader), "{q}");
    }

    // A consumer on node 1 takes five and holds them; then the declaring node (the group's
    // first leader) dies with them.
    drop(consumer);
    ch2.close(200, "bye").await.expect("close");
    let ch1 = channel(&c1).await;
    ch1.basic_qos(5, BasicQosOptions::default()).await.expect("qos");
    let mut holder =
        ch1.basic_consume("qq", "c1", BasicConsumeOptions::default(), FieldTable::default()).await.expect("consume");
    let second: Vec<String> = (50..70).map(|i| format!("m{i}")).collect();
    publish_confirmed(&ch3, second.clone()).await;
    let mut held = Vec::new();
    while held.len() < 5 {
        let d = tokio::time::timeout(Duration::from_secs(10), holder.next())
            .await
            .expect("node 1's consumer gets its share")
            .expect("a delivery")
            .expect("a delivery");
        held.push(String::from_utf8_lossy(&d.data).into_owned());
    }
    assert_eq!(held, second[..5], "the first five, in order");
    drop((holder, ch1, c1));
    cluster.nodes[0].kill();
    // The two others elect a leader and take more.
    let third: Vec<String> = (70..80).map(|i| format!("m{i}")).collect();
    publish_confirmed(&ch3, third.clone()).await;
    let ch2 = channel(&c2).await;
    let mut consumer =
        ch2.basic_consume("qq", "c2b", BasicConsumeOptions::default(), FieldTable::default()).await.expect("consume");
    // Everything comes: what node 1's consumer held too, redelivered, counted once more.
    let mut expected: Vec<String> = second.iter().chain(&third).cloned().collect();
    let mut got = Vec::new();
    while got.len() < expected.len() {
        let d = tokio::time::timeout(Duration::from_secs(15), consumer.next())
            .await
            .unwrap_or_else(|_| panic!("only {} of {} came: {got:?}", got.len(), expected.len()))
            .expect("a delivery")
            .expect("a delivery");
        let body = String::from_utf8_lossy(&d.data).into_owned();
        let count = d.properties.headers().as_ref().and_then(|h| h.inner().get("x-delivery-count").cloned());
        if held.contains(&body) {
            assert!(d.redelivered, "{body} held on the lost node came back not redelivered");
            assert!(
                matches!(count, Some(AMQPValue::LongLongInt(1)) | Some(AMQPValue::LongInt(1))),
                "{body}: {count:?}"
            );
        } else {
            assert!(!d.redelivered, "{body} redelivered");
        }
        d.ack(BasicAckOptions::default()).await.expect("ack");
        got.push(body);
    }
    got.sort();
    expected.sort();
    assert_eq!(got, expected, "every confirmed message, once");
    let second_http = cluster.nodes[1].http();
    eventually("node 1 shown offline with another leader", || async {
        let (_, q) = get(&second_http, "/api/queues/%2F/qq").await;
        q["online"] == serde_json::json!(cluster.names[1..]) && q["leader"].as_str() != Some(cluster.names[0].as_str())
    })
    .await;
}
