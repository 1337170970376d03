//! A node new to a running cluster of three real `warren` processes joins it at its first
//! start, as with RabbitMQ's classic_config peer discovery: configured with the cluster's nodes
//! and itself, it joins rather than forming a cluster of its own. Every node then lists four
//! running nodes; the metadata group takes it as a voter; a quorum queue declared before keeps
//! its three members (as in RabbitMQ, a queue stays on its nodes) and is served through the
//! new node; one declared after, through the new node, has all four; a classic queue declared
//! through the new node lives there and is reached from the others.

mod common;

use common::cluster::{free_port, get, nodes, temp_dir, Cluster, Dirs, Node};
use common::eventually;
use common::lapin_client::*;
use lapin::options::{BasicGetOptions, BasicPublishOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel};
use serde_json::json;

async fn publish_confirmed(ch: &Channel, queue: &str, body: &str) {
    let confirm = ch
        .basic_publish("", queue, BasicPublishOptions::default(), body.as_bytes(), BasicProperties::default())
        .await
        .expect("publish")
        .await
        .expect("confirm");
    assert!(confirm.is_ack(), "{body} to {queue} was not confirmed: {confirm:?}");
}

async fn get_one(ch: &Channel, queue: &str) -> String {
    common::within(&format!("a message in {queue}"), async {
        loop {
            if let Some(m) = ch.basic_get(queue, BasicGetOptions { no_ack: true }).await.expect("get") {
                return String::from_utf8_lossy(&m.delivery.data).into_owned();
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_node_joins_a_running_cluster_at_its_first_start() {
    if common::Broker::is_external() {
        eprintln!("skipped: starts Warren processes");
        return;
    }
    let mut cluster = Cluster::start(3, "warren-join");
    let h1 = cluster.nodes[0].http();
    let c1 = connect_url(&cluster.nodes[0].amqp_url()).await;
    let ch1 = confirm_channel(&c1).await;
    let durable = QueueDeclareOptions { durable: true, ..Default::default() };
    let mut quorum = FieldTable::default();
    quorum.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
    ch1.queue_declare("before", durable, quorum.clone()).await.expect("declare before");
    publish_confirmed(&ch1, "before", "b1").await;

    // Node 4: the cluster's nodes and itself, the cluster's cookie, an empty data directory.
    let name4 = "warren4@127.0.0.1".to_owned();
    let conf4 = format!("{}cluster_formation.classic_config.nodes.4 = {name4}:{}\n", cluster.conf, free_port());
    let dir4 = temp_dir("warren-join");
    let cookie = std::fs::read_to_string(cluster.nodes[0].dir.join(".cookie")).expect("node 1's cookie");
    common::cluster::write_cookie(&dir4, &cookie);
    let _dir4 = Dirs(vec![dir4.clone()]);
    let mut shown = Shown(Node { name: name4.clone(), dir: dir4.clone(), broker: None });
    shown.0.start(&conf4);
    let node4 = &shown.0;
    let h4 = node4.http();

    let mut all: Vec<(String, bool)> =
        cluster.names.iter().chain([&name4]).map(|n| (n.clone(), true)).collect::<Vec<_>>();
    all.sort();
    for http in [&h1, &cluster.nodes[1].http(), &cluster.nodes[2].http(), &h4] {
        eventually(&format!("four nodes running on {http}"), || async { nodes(http).await == all }).await;
    }
    eventually("node 4 a voter of the metadata group", || async {
        cluster.nodes.iter().any(|n| n.log().contains("joined the group as a voter"))
    })
    .await;
    assert!(node4.log().contains("which this node joined: not forming another"), "node 4 did not join");

    // The queue declared before keeps its three members, and node 4 serves it.
    let three = json!(cluster.names);
    eventually("node 4 shows before's three members", || async {
        get(&h4, "/api/queues/%2F/before").await.1["members"] == three
    })
    .await;
    let c4 = connect_url(&node4.amqp_url()).await;
    let ch4 = confirm_channel(&c4).await;
    publish_confirmed(&ch4, "before", "b2").await;
    assert_eq!(get_one(&ch4, "before").await, "b1");
    assert_eq!(get_one(&ch1, "before").await, "b2");

    // Declared through node 4 after: on all four, led from node 4, used through node 1.
    ch4.queue_declare("after", durable, quorum).await.expect("declare after");
    let mut four: Vec<String> = cluster.names.iter().chain([&name4]).cloned().collect();
    four.sort();
    let four = json!(four);
    eventually("after on four members, online", || async {
        let (_, q) = get(&h1, "/api/queues/%2F/after").await;
        q["members"] == four && q["online"] == four
    })
    .await;
    publish_confirmed(&ch1, "after", "a1").await;
    assert_eq!(get_one(&ch4, "after").await, "a1");

    // A classic queue declared through node 4 lives there, reached through node 1.
    ch4.queue_declare("on4", durable, FieldTable::default()).await.expect("declare on4");
    eventually("on4 known on node 1", || async { get(&h1, "/api/queues/%2F/on4").await.0 == 200 }).await;
    let (_, q) = get(&h1, "/api/queues/%2F/on4").await;
    assert_eq!(q["node"], json!(name4), "{q}");
    publish_confirmed(&ch1, "on4", "c1").await;
    assert_eq!(get_one(&ch1, "on4").await, "c1");

    // Restarts: node 1 (whose configuration does not list node 4) and node 4 come back into
    // the same cluster of four.
    drop((ch1, c1, ch4, c4));
    cluster.nodes[0].kill();
    cluster.restart(0);
    shown.0.kill();
    shown.0.start(&conf4);
    let h1 = cluster.nodes[0].http();
    let h4 = shown.0.http();
    for http in [&h1, &h4] {
        eventually(&format!("four nodes running on {http} after the restarts"), || async { nodes(http).await == all })
            .await;
    }
    let c1 = connect_url(&cluster.nodes[0].amqp_url()).await;
    let ch1 = confirm_channel(&c1).await;
    publish_confirmed(&ch1, "on4", "c2").await;
    publish_confirmed(&ch1, "after", "a2").await;
    let c4 = connect_url(&shown.0.amqp_url()).await;
    let ch4 = confirm_channel(&c4).await;
    assert_eq!(get_one(&ch4, "on4").await, "c2");
    assert_eq!(get_one(&ch4, "after").await, "a2");
}

/// A node whose log is shown when the test fails.
struct Shown(Node);

impl Drop for Shown {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.0.log();
            let lines: Vec<&str> = log.lines().filter(|l| !l.contains("openraft")).collect();
            eprintln!("==== {}\n{}", self.0.name, lines[lines.len().saturating_sub(200)..].join("\n"));
        }
    }
}
