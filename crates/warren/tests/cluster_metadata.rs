//! The metadata group with real `warren` processes: a durable exchange, queue and binding
//! declared through one node's AMQP port hold on every node; a deletion through another node
//! holds on all; with one node down the other two go on, and the node back catches up; with
//! two down, the last refuses a declaration with a clear error within seconds, not a hang,
//! and does not keep it.

mod common;

use common::cluster::{get, Cluster};
use common::eventually;
use common::lapin_client::*;
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use lapin::ExchangeKind;
use std::time::{Duration, Instant};

/// The durable queues, exchanges (not built in) and bindings a node's management API lists.
async fn topology(http: &str) -> (Vec<String>, Vec<String>, Vec<String>) {
    let names = |v: serde_json::Value, f: &dyn Fn(&serde_json::Value) -> Option<String>| -> Vec<String> {
        let mut out: Vec<String> = v.as_array().map(|a| a.iter().filter_map(f).collect()).unwrap_or_default();
        out.sort();
        out
    };
    let (_, queues) = get(http, "/api/queues").await;
    let (_, exchanges) = get(http, "/api/exchanges").await;
    let (_, bindings) = get(http, "/api/bindings").await;
    (
        names(queues, &|q| q["durable"].as_bool().filter(|d| *d).and(q["name"].as_str().map(str::to_owned))),
        names(exchanges, &|x| {
            let name = x["name"].as_str()?;
            (!name.is_empty() && !name.starts_with("amq.")).then(|| name.to_owned())
        }),
        names(bindings, &|b| {
            let source = b["source"].as_str()?;
            let destination = b["destination"].as_str()?;
            (!source.is_empty()).then(|| format!("{source}->{destination}"))
        }),
    )
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declarations_hold_on_every_node_and_need_a_majority() {
    if common::Broker::is_external() {
        eprintln!("skipped: starts Warren processes");
        return;
    }
    let mut cluster = Cluster::start(3, "warren-meta");
    let https: Vec<String> = cluster.nodes.iter().map(|n| n.http()).collect();

    // Declared through node 1.
    let conn = connect_url(&cluster.nodes[0].amqp_url()).await;
    let ch = channel(&conn).await;
    let durable = |passive| QueueDeclareOptions { durable: true, passive, ..Default::default() };
    ch.exchange_declare(
        "logs",
        ExchangeKind::Fanout,
        ExchangeDeclareOptions { durable: true, ..Default::default() },
        FieldTable::default(),
    )
    .await
    .expect("exchange.declare");
    ch.queue_declare("jobs", durable(false), FieldTable::default()).await.expect("queue.declare");
    ch.queue_bind("jobs", "logs", "", QueueBindOptions::default(), FieldTable::default()).await.expect("bind");
    let expected = (strings(&["jobs"]), strings(&["logs"]), strings(&["logs->jobs"]));
    for http in &https {
        eventually(&format!("the declarations on {http}"), || async { topology(http).await == expected }).await;
    }
    // A passive declare through node 3 finds the queue.
    let conn3 = connect_url(&cluster.nodes[2].amqp_url()).await;
    let ch3 = channel(&conn3).await;
    ch3.queue_declare("jobs", durable(true), FieldTable::default()).await.expect("passive declare on node 3");

    // Deleted through node 3: gone everywhere.
    ch3.queue_delete("jobs", QueueDeleteOptions::default()).await.expect("queue.delete");
    let expected = (vec![], strings(&["logs"]), vec![]);
    for http in &https {
        eventually(&format!("the deletion on {http}"), || async { topology(http).await == expected }).await;
    }
    drop((ch3, conn3));

    // Declared, deleted, declared again and filled through node 1, which is then killed and
    // restarted: replaying its log must not replay the deletion over the messages.
    ch.queue_declare("again", durable(false), FieldTable::default()).await.expect("declare");
    ch.queue_delete("again", QueueDeleteOptions::default()).await.expect("delete");
    ch.queue_declare("again", durable(false), FieldTable::default()).await.expect("declare again");
    let confirms = confirm_channel(&conn).await;
    for i in 0..5 {
        confirms
            .basic_publish(
                "",
                "again",
                lapin::options::BasicPublishOptions::default(),
                format!("m{i}").as_bytes(),
                lapin::BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
    }
    drop((confirms, ch, conn));
    cluster.nodes[0].kill();
    cluster.restart(0);
    let first = cluster.nodes[0].http();
    eventually("node 1 back with its messages", || async {
        let (status, q) = get(&first, "/api/queues/%2F/again").await;
        status == 200 && q["messages"].as_u64() == Some(5)
    })
    .await;
    // Its barrier went through: it catches up and stays with the messages.
    let conn = connect_url(&cluster.nodes[0].amqp_url()).await;
    let ch = channel(&conn).await;
    ch.queue_delete("again", QueueDeleteOptions::default()).await.expect("delete after the restart");
    let (status, _) = get(&first, "/api/queues/%2F/again").await;
    assert_eq!(status, 404);

    // Node 3 down: the two others still commit; node 3 back catches up.
    cluster.nodes[2].kill();
    ch.queue_declare("while-3-was-down", durable(false), FieldTable::default()).await.expect("declare with a majority");
    cluster.restart(2);
    let third = cluster.nodes[2].http();
    let deadline = Instant::now() + Duration::from_secs(10);
    while topology(&third).await.0 != strings(&["while-3-was-down"]) {
        if Instant::now() > deadline {
            panic!("node 3 did not catch up: {:?}\n{}", topology(&third).await, cluster.nodes[2].log());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Nodes 2 and 3 down: node 1 alone refuses, with a reason, within seconds.
    cluster.nodes[1].kill();
    cluster.nodes[2].kill();
    let started = Instant::now();
    let refused = ch
        .queue_declare("lonely", durable(false), FieldTable::default())
        .await
        .expect_err("a declaration committed without a majority");
    let waited = started.elapsed();
    let text = refused.to_string();
    assert!(text.contains("did not commit") && text.contains("majority"), "{text}");
    assert!(waited < Duration::from_secs(15), "refused only after {waited:?}");
    assert_eq!(topology(&first).await.0, strings(&["while-3-was-down"]), "node 1 kept the refused queue");

    // A majority again: node 1 commits again (each refused attempt closed its connection).
    cluster.restart(1);
    let url = cluster.nodes[0].amqp_url();
    eventually("node 1 to commit again", || async {
        let conn = connect_url(&url).await;
        let ch = channel(&conn).await;
        ch.queue_declare("back", durable(false), FieldTable::default()).await.is_ok()
    })
    .await;
    let second = cluster.nodes[1].http();
    eventually("node 2 to hold it", || async { topology(&second).await.0.contains(&"back".to_string()) }).await;
}
