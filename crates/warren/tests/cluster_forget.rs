//! An operator takes a dead node out of a cluster of three real `warren` processes, as with
//! `rabbitmqctl forget_cluster_node` (through warrenctl and the management API): refused while
//! the node runs, for the node asked and for a node not in the cluster; once the node is
//! killed and forgotten, the two others list only themselves, a quorum queue's members are the
//! two, and keeps its messages and takes new ones; the forgotten node's classic queue is gone
//! with its bindings, the others' stay. Started again with its data, the forgotten node reaches
//! no node; reset (its data directory emptied), it joins again under its name.

mod common;

use common::cluster::{get, nodes, send, warrenctl, Cluster};
use common::eventually;
use common::lapin_client::*;
use lapin::options::{BasicConsumeOptions, BasicPublishOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel};
use serde_json::json;
use std::time::Duration;

async fn publish_confirmed(ch: &Channel, bodies: &[String]) {
    for body in bodies {
        let confirm = ch
            .basic_publish("", "qq", BasicPublishOptions::default(), body.as_bytes(), BasicProperties::default())
            .await
            .expect("publish")
            .await
            .expect("confirm");
        assert!(confirm.is_ack(), "{body} was not confirmed: {confirm:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_node_is_forgotten_and_the_others_go_on_without_it() {
    if common::Broker::is_external() {
        eprintln!("skipped: starts Warren processes");
        return;
    }
    let mut cluster = Cluster::start(3, "warren-forget");
    let [n1, n2, n3] = [cluster.names[0].clone(), cluster.names[1].clone(), cluster.names[2].clone()];
    let [h1, h2] = [cluster.nodes[0].http(), cluster.nodes[1].http()];
    let c1 = connect_url(&cluster.nodes[0].amqp_url()).await;
    let c3 = connect_url(&cluster.nodes[2].amqp_url()).await;
    let ch1 = confirm_channel(&c1).await;
    let ch3 = channel(&c3).await;
    let durable = QueueDeclareOptions { durable: true, ..Default::default() };
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
    ch1.queue_declare("qq", durable, args).await.expect("declare qq");
    ch1.queue_declare("on1", durable, FieldTable::default()).await.expect("declare on1");
    ch3.queue_declare("on3", durable, FieldTable::default()).await.expect("declare on3");
    for q in ["on1", "on3"] {
        ch3.queue_bind(q, "amq.direct", q, QueueBindOptions::default(), FieldTable::default()).await.expect("bind");
    }
    let first: Vec<String> = (0..20).map(|i| format!("m{i}")).collect();
    publish_confirmed(&ch1, &first).await;
    let all3 = json!([n1, n2, n3]);
    eventually("qq with three members online", || async {
        let (_, q) = get(&h1, "/api/queues/%2F/qq").await;
        q["members"] == all3 && q["online"] == all3
    })
    .await;

    // What RabbitMQ refuses, refused with why.
    let err = warrenctl(&h1, &["forget_cluster_node", &n3]).await.expect_err("a running node");
    assert!(err.contains("is running"), "{err}");
    let (status, body) = send(&h1, "DELETE", &format!("/api/nodes/{n1}"), None).await;
    assert_eq!(status, 400, "the node asked: {body}");
    let (status, body) = send(&h1, "DELETE", "/api/nodes/nobody@nowhere", None).await;
    assert_eq!(status, 404, "not in the cluster: {body}");
    assert_eq!(nodes(&h1).await.len(), 3, "nothing forgotten");

    cluster.nodes[2].kill();
    let down = vec![(n1.clone(), true), (n2.clone(), true), (n3.clone(), false)];
    eventually("node 3 seen down by node 2", || async { nodes(&h2).await == down }).await;
    let done = warrenctl(&h2, &["forget_cluster_node", &n3]).await.expect("forget_cluster_node");
    assert!(done.contains(&format!("Removing node {n3}")), "{done}");

    let two = vec![(n1.clone(), true), (n2.clone(), true)];
    let members = json!([n1, n2]);
    for http in [&h1, &h2] {
        eventually(&format!("only nodes 1 and 2 on {http}"), || async { nodes(http).await == two }).await;
        let (status, _) = get(http, &format!("/api/nodes/{n3}")).await;
        assert_eq!(status, 404, "node 3 is not in the cluster");
        eventually(&format!("qq's members nodes 1 and 2 on {http}"), || async {
            let (_, q) = get(http, "/api/queues/%2F/qq").await;
            q["members"] == members && q["online"] == members && q["leader"].is_string()
        })
        .await;
        // Node 3's classic queue went with it (and its binding); node 1's stays.
        let (status, _) = get(http, "/api/queues/%2F/on3").await;
        assert_eq!(status, 404, "on3 on {http}");
        let (status, _) = get(http, "/api/queues/%2F/on1").await;
        assert_eq!(status, 200, "on1 on {http}");
        let (_, bindings) = get(http, "/api/exchanges/%2F/amq.direct/bindings/source").await;
        let to: Vec<&str> =
            bindings.as_array().into_iter().flatten().filter_map(|b| b["destination"].as_str()).collect();
        assert_eq!(to, ["on1"], "bindings on {http}");
    }
    // The metadata group's leader took node 3 out of the group itself.
    eventually("node 3 out of the metadata group", || async {
        cluster.nodes[..2].iter().any(|n| n.log().contains("metadata: the group's members are now"))
    })
    .await;
    let err = warrenctl(&h1, &["forget_cluster_node", &n3]).await.expect_err("forgotten already");
    assert!(err.contains("404"), "{err}");
    let err = warrenctl(&h1, &["add_member", "qq", &n3]).await.expect_err("not a node any more");
    assert!(err.contains("not in the cluster"), "{err}");

    // The two go on: a publish through node 2 is confirmed by both, and every message is there.
    let c2 = connect_url(&cluster.nodes[1].amqp_url()).await;
    let second: Vec<String> = (20..30).map(|i| format!("m{i}")).collect();
    publish_confirmed(&confirm_channel(&c2).await, &second).await;
    let ch = channel(&c1).await;
    let mut consumer =
        ch.basic_consume("qq", "c1", BasicConsumeOptions::default(), FieldTable::default()).await.expect("consume");
    let expected: Vec<String> = first.iter().chain(&second).cloned().collect();
    assert_eq!(next_bodies_acked(&mut consumer, expected.len()).await, expected);
    ch.close(200, "done").await.expect("close the consumer's channel");

    // Node 3 started again with what it held: the others refuse it, and it says so.
    cluster.restart(2);
    let node3 = &cluster.nodes[2];
    eventually("node 3 told it is out of the cluster", || async {
        node3
            .log()
            .contains("the cluster's nodes refuse this node: it was taken out of the cluster (forget_cluster_node)")
    })
    .await;
    let h3 = cluster.nodes[2].http();
    let running: Vec<String> = nodes(&h3).await.into_iter().filter(|(_, up)| *up).map(|(name, _)| name).collect();
    assert_eq!(running, vec![n3.clone()], "node 3 reaches no node");
    for http in [&h1, &h2] {
        assert_eq!(nodes(http).await, two, "node 3 stays out on {http}");
    }

    // Reset (its data directory emptied but its cookie), node 3 joins again under its name.
    cluster.nodes[2].kill();
    let dir3 = cluster.nodes[2].dir.clone();
    for entry in std::fs::read_dir(&dir3).expect("node 3's directory").flatten() {
        let path = entry.path();
        if path.file_name().is_some_and(|n| n == ".cookie") {
            continue;
        }
        if path.is_dir() {
            std::fs::remove_dir_all(&path).expect("empty node 3's directory");
        } else {
            std::fs::remove_file(&path).expect("empty node 3's directory");
        }
    }
    cluster.restart(2);
    let h3 = cluster.nodes[2].http();
    let three = vec![(n1.clone(), true), (n2.clone(), true), (n3.clone(), true)];
    for http in [&h1, &h2, &h3] {
        eventually(&format!("node 3 back in on {http}"), || async { nodes(http).await == three }).await;
    }
    assert!(cluster.nodes[2].log().contains("which this node joined: not forming another"), "node 3 joined again");
    // As for any node that joins, the queue keeps its members until an operator grows it.
    let grown = warrenctl(&h1, &["grow", &n3, "all"]).await.expect("grow");
    assert!(grown.contains("qq") && grown.contains("ok"), "{grown}");
    eventually("qq on three members again", || async {
        let (_, q) = get(&h1, "/api/queues/%2F/qq").await;
        q["members"] == all3 && q["online"] == all3
    })
    .await;
    let c3 = connect_url(&cluster.nodes[2].amqp_url()).await;
    publish_confirmed(&confirm_channel(&c3).await, &["m30".to_owned()]).await;
    let ch3 = channel(&c3).await;
    let got = common::within("m30 through node 3", async {
        loop {
            match ch3.basic_get("qq", lapin::options::BasicGetOptions { no_ack: true }).await.expect("get") {
                Some(m) => return String::from_utf8_lossy(&m.delivery.data).into_owned(),
                None => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    })
    .await;
    assert_eq!(got, "m30");
}
