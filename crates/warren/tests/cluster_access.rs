//! Vhosts, users, permissions, policies and the management API's changes in a cluster of real
//! `warren` processes (docs/clustering.md, "The metadata group"): what one node's HTTP API
//! changes holds on every node (a queue PUT, a user who can then log in anywhere and, deleted,
//! nowhere, a vhost and what is declared in it, a policy that applies to a queue on another
//! node, what a node restarting loads at boot), and a node without a majority refuses an HTTP
//! change with a 503 and the reason, and does not keep it.

mod common;

use common::cluster::{get, Cluster};
use common::eventually;
use common::lapin_client::*;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// A request to the management API at `addr` as guest: the status and the JSON answer.
async fn send(method: reqwest::Method, addr: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    common::cluster::send(addr, method.as_str(), path, body).await
}

async fn put(addr: &str, path: &str, body: Value) -> u16 {
    let (status, answer) = send(reqwest::Method::PUT, addr, path, Some(body)).await;
    assert!(status == 201 || status == 204, "PUT {path} on {addr}: {status} {answer}");
    status
}

async fn delete(addr: &str, path: &str) {
    let (status, answer) = send(reqwest::Method::DELETE, addr, path, None).await;
    assert_eq!(status, 204, "DELETE {path} on {addr}: {answer}");
}

async fn status(addr: &str, path: &str) -> u16 {
    get(addr, path).await.0
}

/// Whether `user` can open a connection to `vhost` on the node at `base` (an AMQP URL of it).
async fn logs_in(base: &str, user: &str, password: &str, vhost: &str) -> bool {
    let (_, address) = base.strip_prefix("amqp://").and_then(|r| r.split_once('@')).expect("an amqp URL");
    let host_port = address.split_once('/').map_or(address, |(h, _)| h);
    let vhost = if vhost == "/" { "%2f".to_string() } else { vhost.to_string() };
    let url = format!("amqp://{user}:{password}@{host_port}/{vhost}");
    match tokio::time::timeout(Duration::from_secs(5), Connection::connect(&url, ConnectionProperties::default())).await
    {
        Ok(Ok(conn)) => {
            let _ = conn.close(200, "bye").await;
            true
        }
        _ => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_management_apis_changes_hold_on_every_node_and_need_a_majority() {
    if common::Broker::is_external() {
        eprintln!("skipped: starts Warren processes");
        return;
    }
    let mut cluster = Cluster::start(3, "warren-access");
    let https: Vec<String> = cluster.nodes.iter().map(|n| n.http()).collect();
    let amqp: Vec<String> = cluster.nodes.iter().map(|n| n.amqp_url()).collect();

    // A queue declared with an HTTP PUT on node 1 exists on node 2 (and 3).
    put(&https[0], "/api/queues/%2F/from-http", json!({"durable": true})).await;
    for http in &https[1..] {
        eventually(&format!("the queue PUT through node 1 on {http}"), || async {
            status(http, "/api/queues/%2F/from-http").await == 200
        })
        .await;
    }

    // A user and its permissions made through node 1 log in on nodes 2 and 3; deleted, not.
    put(&https[0], "/api/users/alice", json!({"password": "wonderland", "tags": "management"})).await;
    put(&https[0], "/api/permissions/%2F/alice", json!({"configure": ".*", "write": ".*", "read": ".*"})).await;
    for url in &amqp[1..] {
        eventually(&format!("alice logging in through {url}"), || async {
            logs_in(url, "alice", "wonderland", "/").await
        })
        .await;
        assert!(!logs_in(url, "alice", "wrong", "/").await, "a wrong password let alice in");
    }
    // Her password travels hashed: node 3 lists the hash node 1 made.
    let (_, one) = get(&https[0], "/api/users/alice").await;
    let (_, three) = get(&https[2], "/api/users/alice").await;
    assert_eq!(one["password_hash"], three["password_hash"]);
    assert!(one["password_hash"].as_str().is_some_and(|h| !h.is_empty() && !h.contains("wonderland")));
    delete(&https[0], "/api/users/alice").await;
    for url in &amqp[1..] {
        eventually(&format!("alice refused through {url}"), || async {
            !logs_in(url, "alice", "wonderland", "/").await
        })
        .await;
    }

    // A vhost created through node 2 exists on all; a queue declared in it through node 3
    // exists on all; a policy set through node 1 applies to it on node 3.
    put(&https[1], "/api/vhosts/prod", json!({})).await;
    put(&https[1], "/api/permissions/prod/guest", json!({"configure": ".*", "write": ".*", "read": ".*"})).await;
    for http in &https {
        eventually(&format!("vhost prod on {http}"), || async { status(http, "/api/vhosts/prod").await == 200 }).await;
    }
    let prod = amqp[2].replace("%2f", "prod");
    eventually("guest logging in to prod through node 3", || async { logs_in(&prod, "guest", "guest", "prod").await })
        .await;
    let conn = connect_url(&prod).await;
    let ch = channel(&conn).await;
    ch.queue_declare("jobs", QueueDeclareOptions { durable: true, ..Default::default() }, FieldTable::default())
        .await
        .expect("queue.declare in prod on node 3");
    for http in &https {
        eventually(&format!("queue jobs in prod on {http}"), || async {
            status(http, "/api/queues/prod/jobs").await == 200
        })
        .await;
    }
    put(
        &https[0],
        "/api/policies/prod/ttl",
        json!({"pattern": "^jobs$", "definition": {"message-ttl": 60000}, "apply-to": "queues"}),
    )
    .await;
    eventually("the policy applying on node 3", || async {
        let (_, q) = get(&https[2], "/api/queues/prod/jobs").await;
        q["policy"] == "ttl"
    })
    .await;
    drop((ch, conn));

    // The vhost deleted through node 3: gone everywhere, with its queue.
    delete(&https[2], "/api/vhosts/prod").await;
    for http in &https {
        eventually(&format!("vhost prod gone from {http}"), || async {
            status(http, "/api/vhosts/prod").await == 404 && status(http, "/api/queues/prod/jobs").await == 404
        })
        .await;
    }

    // Definitions loaded at boot by a node restarting (after it caught up) hold on all.
    cluster.nodes[2].kill();
    let file = cluster.nodes[2].dir.join("boot-definitions.json");
    let boot = json!({
        "vhosts": [{"name": "booted"}],
        "users": [{"name": "carol", "password": "c4rol", "tags": ""}],
        "permissions": [{"user": "carol", "vhost": "booted", "configure": ".*", "write": ".*", "read": ".*"}],
        "queues": [{"name": "boot-q", "vhost": "booted", "durable": true, "auto_delete": false, "arguments": {}}],
    });
    std::fs::write(&file, boot.to_string()).expect("write the definitions");
    let conf = format!("{}load_definitions = {}\n", cluster.conf, file.display());
    cluster.nodes[2].start(&conf);
    for http in &https[..2] {
        eventually(&format!("the definitions node 3 loaded at boot on {http}"), || async {
            status(http, "/api/queues/booted/boot-q").await == 200
        })
        .await;
    }
    let booted = amqp[0].replace("%2f", "booted");
    eventually("carol logging in through node 1", || async { logs_in(&booted, "carol", "c4rol", "booted").await })
        .await;

    // Nodes 2 and 3 down: node 1 refuses HTTP changes within seconds, with the reason, and
    // does not keep them.
    cluster.nodes[1].kill();
    cluster.nodes[2].kill();
    let first = &https[0];
    let started = Instant::now();
    let ((code, answer), (deleted, deleted_answer)) = tokio::join!(
        send(reqwest::Method::PUT, first, "/api/vhosts/lonely", Some(json!({}))),
        send(reqwest::Method::DELETE, first, "/api/queues/%2F/from-http", None),
    );
    assert_eq!(code, 503, "{answer}");
    let reason = answer["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("did not commit") && reason.contains("majority"), "{answer}");
    assert!(answer["error"].is_string(), "{answer}");
    assert_eq!(deleted, 503, "{deleted_answer}");
    assert!(started.elapsed() < Duration::from_secs(15), "refused only after {:?}", started.elapsed());
    assert_eq!(status(first, "/api/vhosts/lonely").await, 404, "node 1 kept the refused vhost");
    assert_eq!(status(first, "/api/queues/%2F/from-http").await, 200, "node 1 kept the refused deletion");
}
