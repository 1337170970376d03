//! An operator changes a quorum queue's members on a cluster of three real `warren` processes,
//! as with `rabbitmq-queues add_member`, `delete_member`, `grow` and `shrink` (through warrenctl
//! and the management API's paths): a queue declared with one member grows to three, loses
//! its first member (its leader), shrinks and grows again, and its messages stay, in order,
//! through every change. Nodes that are not members serve it all along: publishes through
//! them are confirmed, consumers on them receive.

mod common;

use common::cluster::{get, send, warrenctl, Cluster};
use common::eventually;
use common::lapin_client::*;
use lapin::options::{BasicConsumeOptions, BasicPublishOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel};
use serde_json::{json, Value};

async fn publish_confirmed(ch: &Channel, bodies: &[String]) {
    for body in bodies {
        let confirm = ch
            .basic_publish("", "grown", BasicPublishOptions::default(), body.as_bytes(), BasicProperties::default())
            .await
            .expect("publish")
            .await
            .expect("confirm");
        assert!(confirm.is_ack(), "{body} was not confirmed: {confirm:?}");
    }
}

/// Waits until node `http` shows `grown` with these members (by node name, sorted), all
/// online, and a leader among them.
async fn members_become(http: &str, members: &[&String]) {
    let expected = json!(members);
    eventually(&format!("members {expected} on {http}"), || async {
        let (_, q) = get(http, "/api/queues/%2F/grown").await;
        q["members"] == expected
            && q["online"] == expected
            && q["leader"].as_str().is_some_and(|l| members.iter().any(|m| m.as_str() == l))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_grows_and_shrinks_a_quorum_queue_and_its_messages_stay() {
    if common::Broker::is_external() {
        eprintln!("skipped: starts Warren processes");
        return;
    }
    let cluster = Cluster::start(3, "warren-members");
    let c1 = connect_url(&cluster.nodes[0].amqp_url()).await;
    let c3 = connect_url(&cluster.nodes[2].amqp_url()).await;
    let [n1, n2, n3] = [&cluster.names[0], &cluster.names[1], &cluster.names[2]];
    let [h1, h2, h3] = [cluster.nodes[0].http(), cluster.nodes[1].http(), cluster.nodes[2].http()];
    let ch1 = confirm_channel(&c1).await;
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
    args.insert("x-quorum-initial-group-size".into(), AMQPValue::LongInt(1));
    let durable = QueueDeclareOptions { durable: true, ..Default::default() };
    ch1.queue_declare("grown", durable, args).await.expect("declare grown");
    ch1.queue_declare("classic", durable, FieldTable::default()).await.expect("declare classic");
    members_become(&h1, &[n1]).await;
    // Published through node 3, which is not a member.
    let first: Vec<String> = (0..20).map(|i| format!("m{i}")).collect();
    publish_confirmed(&confirm_channel(&c3).await, &first).await;

    // Added through a node that is not a member, then through the API's own path.
    let added = warrenctl(&h3, &["add_member", "grown", n2]).await.expect("add_member");
    assert!(added.contains("member added"), "{added}");
    members_become(&h1, &[n1, n2]).await;
    let (status, body) =
        send(&h2, "POST", "/api/queues/quorum/%2F/grown/replicas/add", Some(json!({ "node": n3 }))).await;
    assert_eq!(status, 204, "{body}");
    for http in [&h1, &h2, &h3] {
        members_become(http, &[n1, n2, n3]).await;
    }

    // What RabbitMQ refuses, refused with why.
    let refused = |what: &'static str, path: &'static str, body: Value, status: u16| {
        let h1 = h1.clone();
        async move {
            let (got, answer) = send(&h1, "POST", path, Some(body)).await;
            assert_eq!(got, status, "{what}: {answer}");
            answer["reason"].as_str().unwrap_or_default().to_owned()
        }
    };
    let why = refused("twice", "/api/queues/quorum/%2F/grown/replicas/add", json!({ "node": n2 }), 400).await;
    assert!(why.contains("already a member"), "{why}");
    let why = refused("unknown node", "/api/queues/quorum/%2F/grown/replicas/add", json!({"node": "x@y"}), 400).await;
    assert!(why.contains("not in the cluster"), "{why}");
    let why = refused("classic", "/api/queues/quorum/%2F/classic/replicas/add", json!({ "node": n2 }), 400).await;
    assert!(why.contains("not a quorum queue"), "{why}");
    refused("no queue", "/api/queues/quorum/%2F/nowhere/replicas/add", json!({ "node": n2 }), 404).await;
    refused("no node", "/api/queues/quorum/%2F/grown/replicas/add", json!({}), 400).await;
    let err = warrenctl(&h1, &["delete_member", "grown", "x@y"]).await.expect_err("an unknown node");
    assert!(err.contains("not in the cluster"), "{err}");

    // The declaring node, its first leader, taken out: the two others go on with everything.
    let deleted = warrenctl(&h2, &["delete_member", "grown", n1]).await.expect("delete_member");
    assert!(deleted.contains("member deleted"), "{deleted}");
    members_become(&h2, &[n2, n3]).await;
    members_become(&h3, &[n2, n3]).await;
    members_become(&h1, &[n2, n3]).await;
    // Through node 1, a member no more.
    let second: Vec<String> = (20..30).map(|i| format!("m{i}")).collect();
    publish_confirmed(&ch1, &second).await;

    // Shrink node 3 away (node 2 is then the last member, which shrink keeps), grow node 1 back.
    let (status, shrunk) = send(&h1, "DELETE", &format!("/api/queues/quorum/replicas/on/{n3}/shrink"), None).await;
    assert_eq!(status, 200, "{shrunk}");
    assert_eq!(shrunk, json!([{"vhost": "/", "name": "grown", "size": 1, "result": "ok"}]));
    members_become(&h2, &[n2]).await;
    let last = warrenctl(&h1, &["shrink", n2]).await.expect("shrink");
    assert!(last.contains("grown") && last.contains("last member"), "{last}");
    let (status, none) =
        send(&h1, "POST", &format!("/api/queues/quorum/replicas/on/{n3}/grow"), Some(json!({"strategy": "even"})))
            .await;
    assert_eq!((status, none), (200, json!([])), "grown has one member: not grown by 'even'");
    let grown = warrenctl(&h3, &["grow", n1, "all", "--queue-pattern", "^grown$"]).await.expect("grow");
    assert!(grown.contains("grown") && grown.contains("ok"), "{grown}");
    members_become(&h1, &[n1, n2]).await;
    members_become(&h2, &[n1, n2]).await;

    // Every confirmed message is there, in order, for a consumer on node 3 (not a member).
    let ch = channel(&c3).await;
    let mut consumer =
        ch.basic_consume("grown", "c3", BasicConsumeOptions::default(), FieldTable::default()).await.expect("consume");
    let expected: Vec<String> = first.iter().chain(&second).cloned().collect();
    assert_eq!(next_bodies_acked(&mut consumer, expected.len()).await, expected);
}
