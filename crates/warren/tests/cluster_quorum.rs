//! Quorum queues served through their Raft groups, with real `warren` processes: a quorum
//! queue declared through one node takes confirmed publishes through another and delivers
//! them, in order, to a consumer on the third; the node that declared it (its first leader)
//! is killed, and the two others go on: every confirmed message is delivered, the ones the
//! lost node's consumer held included.

mod common;

use common::cluster::{get, send, Cluster};
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

/// Cancels `consumer` and then closes its channel. (Dropping a lapin consumer cancels it in
/// the background: a close right after races that cancel, and lapin fails the whole
/// connection when the cancel loses.)
async fn cancel_and_close(ch: &Channel, consumer: lapin::Consumer) {
    ch.basic_cancel(consumer.tag().as_str(), lapin::options::BasicCancelOptions::default()).await.expect("cancel");
    drop(consumer);
    ch.close(200, "bye").await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quorum_queue_is_served_by_its_group_through_every_node() {
    if common::Broker::is_external() {
        eprintln!("skipped: starts Warren processes");
        return;
    }
    let mut cluster = Cluster::start(3, "warren-qq");
    let (c1, c2, c3) = connect_all(&cluster).await;
    for (name, c) in [("c1", &c1), ("c2", &c2), ("c3", &c3)] {
        c.on_error(move |e| eprintln!("connection {name} failed: {e:?}"));
    }
    declare(&channel(&c1).await).await;

    // A consumer on node 2; a publisher with confirms on node 3.
    let ch2 = channel(&c2).await;
    declare(&ch2).await;
    ch2.basic_qos(10, BasicQosOptions::default()).await.expect("qos");
    let mut consumer =
        ch2.basic_consume("qq", "c2", BasicConsumeOptions::default(), FieldTable::default()).await.expect("consume");
    let ch3 = confirm_channel(&c3).await;
    // As clients do: the publisher declares the queue too (a node takes publishes to a
    // quorum queue once its group has started there, which the declaration waits for).
    declare(&ch3).await;
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
    cancel_and_close(&ch2, consumer).await;
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

    // Node 1 back: it catches up and serves the queue again (to its consumer alone).
    cancel_and_close(&ch2, consumer).await;
    cluster.restart(0);
    let first_http = cluster.nodes[0].http();
    eventually("node 1 back online in the group", || async {
        let (_, q) = get(&first_http, "/api/queues/%2F/qq").await;
        q["online"] == serde_json::json!(cluster.names)
    })
    .await;
    let c1 = connect_url(&cluster.nodes[0].amqp_url()).await;
    let ch1 = confirm_channel(&c1).await;
    let fourth: Vec<String> = (80..90).map(|i| format!("m{i}")).collect();
    publish_confirmed(&ch1, fourth.clone()).await;
    let ch1b = channel(&c1).await;
    let mut consumer =
        ch1b.basic_consume("qq", "c1b", BasicConsumeOptions::default(), FieldTable::default()).await.expect("consume");
    assert_eq!(receive(&mut consumer, 10).await, fourth);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_its_delivery_limit_a_message_is_dead_lettered_once() {
    if common::Broker::is_external() {
        eprintln!("skipped: starts Warren processes");
        return;
    }
    let cluster = Cluster::start(3, "warren-qq-dlx");
    let (c1, c2, c3) = connect_all(&cluster).await;
    let ch1 = channel(&c1).await;
    let durable = QueueDeclareOptions { durable: true, ..Default::default() };
    ch1.queue_declare("dlq", durable, quorum_args()).await.expect("declare dlq");
    let mut args = quorum_args();
    args.insert("x-delivery-limit".into(), AMQPValue::LongLongInt(1));
    args.insert("x-dead-letter-exchange".into(), AMQPValue::LongString("".into()));
    args.insert("x-dead-letter-routing-key".into(), AMQPValue::LongString("dlq".into()));
    ch1.queue_declare("limited", durable, args).await.expect("declare limited");

    // Published through node 1, nacked with requeue twice through node 3: past the limit.
    let confirms = confirm_channel(&c1).await;
    let confirm = confirms
        .basic_publish("", "limited", BasicPublishOptions::default(), b"poison", BasicProperties::default())
        .await
        .expect("publish")
        .await
        .expect("confirm");
    assert!(confirm.is_ack());
    let ch3 = channel(&c3).await;
    let mut consumer = ch3
        .basic_consume("limited", "c3", BasicConsumeOptions::default(), FieldTable::default())
        .await
        .expect("consume");
    for attempt in 0..2 {
        let d = tokio::time::timeout(Duration::from_secs(10), consumer.next())
            .await
            .unwrap_or_else(|_| panic!("delivery {attempt} did not come"))
            .expect("a delivery")
            .expect("a delivery");
        assert_eq!(d.redelivered, attempt > 0);
        d.nack(lapin::options::BasicNackOptions { requeue: true, ..Default::default() }).await.expect("nack");
    }

    // It is in the dead-letter queue, once, with its death told.
    let ch2 = channel(&c2).await;
    let mut dead =
        ch2.basic_consume("dlq", "c2", BasicConsumeOptions::default(), FieldTable::default()).await.expect("consume");
    let d = tokio::time::timeout(Duration::from_secs(10), dead.next())
        .await
        .expect("the dead-lettered message")
        .expect("a delivery")
        .expect("a delivery");
    assert_eq!(&d.data[..], b"poison");
    let field = |name: &str| first_death(&d, name);
    assert_eq!(field("reason").as_deref(), Some("delivery_limit"), "{:?}", d.properties.headers());
    assert_eq!(field("queue").as_deref(), Some("limited"), "{:?}", d.properties.headers());
    d.ack(BasicAckOptions::default()).await.expect("ack");
    assert!(
        tokio::time::timeout(Duration::from_millis(500), dead.next()).await.is_err(),
        "dead-lettered more than once"
    );
    assert!(tokio::time::timeout(Duration::from_millis(200), consumer.next()).await.is_err(), "came back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_messages_are_dead_lettered_with_nothing_else_happening() {
    if common::Broker::is_external() {
        eprintln!("skipped: starts Warren processes");
        return;
    }
    let cluster = Cluster::start(3, "warren-qq-ttl");
    let (c1, c2, c3) = connect_all(&cluster).await;
    let ch1 = channel(&c1).await;
    let durable = QueueDeclareOptions { durable: true, ..Default::default() };
    ch1.queue_declare("dlq", durable, quorum_args()).await.expect("declare dlq");
    let dead_letter_to_dlq = |mut args: FieldTable| {
        args.insert("x-dead-letter-exchange".into(), AMQPValue::LongString("".into()));
        args.insert("x-dead-letter-routing-key".into(), AMQPValue::LongString("dlq".into()));
        args
    };
    let mut queue_ttl = quorum_args();
    queue_ttl.insert("x-message-ttl".into(), AMQPValue::LongInt(300));
    ch1.queue_declare("ttl", durable, dead_letter_to_dlq(queue_ttl)).await.expect("declare ttl");
    ch1.queue_declare("own-ttl", durable, dead_letter_to_dlq(quorum_args())).await.expect("declare own-ttl");

    // Three messages under the queue's TTL through node 2, one with its own expiration through
    // node 3; then nothing is done to either queue.
    let confirms2 = confirm_channel(&c2).await;
    for n in 0..3 {
        let body = format!("queue-ttl-{n}");
        let confirm = confirms2
            .basic_publish("", "ttl", BasicPublishOptions::default(), body.as_bytes(), BasicProperties::default())
            .await
            .expect("publish")
            .await
            .expect("confirm");
        assert!(confirm.is_ack(), "{body}: {confirm:?}");
    }
    let confirms3 = confirm_channel(&c3).await;
    let confirm = confirms3
        .basic_publish(
            "",
            "own-ttl",
            BasicPublishOptions::default(),
            b"own-expiration",
            BasicProperties::default().with_expiration("200".into()),
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
    assert!(confirm.is_ack());

    // All four come to the dead-letter queue, through node 3, each told why and whence.
    let ch3 = channel(&c3).await;
    let mut dead =
        ch3.basic_consume("dlq", "dead", BasicConsumeOptions::default(), FieldTable::default()).await.expect("consume");
    let mut got = Vec::new();
    while got.len() < 4 {
        let d = tokio::time::timeout(Duration::from_secs(10), dead.next())
            .await
            .unwrap_or_else(|_| panic!("only {got:?} were dead-lettered"))
            .expect("a delivery")
            .expect("a delivery");
        let text = |name: &str| first_death(&d, name).unwrap_or_else(|| panic!("no x-death {name}: {d:?}"));
        got.push((String::from_utf8_lossy(&d.data).into_owned(), text("reason"), text("queue")));
        d.ack(BasicAckOptions::default()).await.expect("ack");
    }
    got.sort();
    let expired = |body: &str, queue: &str| (body.to_owned(), "expired".to_owned(), queue.to_owned());
    assert_eq!(
        got,
        vec![
            expired("own-expiration", "own-ttl"),
            expired("queue-ttl-0", "ttl"),
            expired("queue-ttl-1", "ttl"),
            expired("queue-ttl-2", "ttl"),
        ]
    );
    // And they left their queues.
    for queue in ["ttl", "own-ttl"] {
        let left = ch1.basic_get(queue, lapin::options::BasicGetOptions { no_ack: true }).await.expect("basic.get");
        assert!(left.is_none(), "{queue} still holds a message");
    }
}

/// A quorum queue left idle turns its members' timers off (no heartbeats); its leader's node
/// killed, the others elect a leader as soon as they see the node go and take confirmed
/// publishes; the node restarted takes its place back in the group and serves the queue,
/// and every message is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_quorum_queue_fails_over_and_takes_its_member_back() {
    if common::Broker::is_external() {
        eprintln!("skipped: starts Warren processes");
        return;
    }
    let mut cluster = Cluster::start(3, "warren-qq-idle");
    let c1 = connect_url(&cluster.nodes[0].amqp_url()).await;
    declare(&channel(&c1).await).await;
    let c2 = connect_url(&cluster.nodes[1].amqp_url()).await;
    let ch2 = confirm_channel(&c2).await;
    publish_confirmed(&ch2, ["before".to_owned()]).await;
    let first_http = cluster.nodes[0].http();
    let leader = {
        let (_, q) = get(&first_http, "/api/queues/%2F/qq").await;
        q["leader"].as_str().unwrap_or_default().to_owned()
    };
    let lost = cluster.names.iter().position(|n| *n == leader).unwrap_or_else(|| panic!("no leader: {leader}"));
    // Idle for longer than the members wait before turning their timers off (followers after
    // 2 s, the leader after 4 s, checked every 500 ms): there is no event to wait for.
    tokio::time::sleep(Duration::from_secs(5)).await;
    drop((ch2, c2, c1));
    cluster.nodes[lost].kill();

    // Through another node: confirmed (the publish waits for the election).
    let via = (lost + 1) % 3;
    let cv = connect_url(&cluster.nodes[via].amqp_url()).await;
    let chv = confirm_channel(&cv).await;
    publish_confirmed(&chv, ["after".to_owned()]).await;
    let via_http = cluster.nodes[via].http();
    let lost_name = cluster.names[lost].clone();
    eventually("another leader shown", || async {
        let (_, q) = get(&via_http, "/api/queues/%2F/qq").await;
        q["leader"].as_str().is_some_and(|l| !l.is_empty() && l != lost_name)
    })
    .await;

    // The lost node back: online in the group again, and both messages come out through it.
    cluster.restart(lost);
    let lost_http = cluster.nodes[lost].http();
    let all = cluster.names.clone();
    eventually("the restarted node online in the group", || async {
        let (_, q) = get(&lost_http, "/api/queues/%2F/qq").await;
        q["online"] == serde_json::json!(all)
    })
    .await;
    let cl = connect_url(&cluster.nodes[lost].amqp_url()).await;
    let chl = channel(&cl).await;
    let mut consumer =
        chl.basic_consume("qq", "back", BasicConsumeOptions::default(), FieldTable::default()).await.expect("consume");
    assert_eq!(receive(&mut consumer, 2).await, ["before", "after"]);
}

/// Connections to the three nodes of `cluster`, in order.
async fn connect_all(cluster: &Cluster) -> (lapin::Connection, lapin::Connection, lapin::Connection) {
    (
        connect_url(&cluster.nodes[0].amqp_url()).await,
        connect_url(&cluster.nodes[1].amqp_url()).await,
        connect_url(&cluster.nodes[2].amqp_url()).await,
    )
}

/// Field `name` (a string) of the first entry of a delivery's `x-death` header.
fn first_death(d: &lapin::message::Delivery, name: &str) -> Option<String> {
    let headers = d.properties.headers().as_ref()?;
    let Some(AMQPValue::FieldArray(deaths)) = headers.inner().get("x-death") else { return None };
    let Some(AMQPValue::FieldTable(first)) = deaths.as_slice().first() else { return None };
    match first.inner().get(name) {
        Some(AMQPValue::LongString(s)) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        _ => None,
    }
}

/// The `x-delivery-count` header of a message, if it has one.
fn delivery_count(d: &lapin::message::Delivery) -> Option<i64> {
    match d.properties.headers().as_ref()?.inner().get("x-delivery-count")? {
        AMQPValue::LongLongInt(n) => Some(*n),
        AMQPValue::LongInt(n) => Some(i64::from(*n)),
        other => panic!("x-delivery-count is {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_get_takes_from_the_group_through_any_node() {
    if common::Broker::is_external() {
        eprintln!("skipped: starts Warren processes");
        return;
    }
    let cluster = Cluster::start(3, "warren-qq-get");
    let (c1, c2, c3) = connect_all(&cluster).await;
    let ch1 = confirm_channel(&c1).await;
    declare(&ch1).await;
    publish_confirmed(&ch1, (0..3).map(|i| format!("m{i}"))).await;

    // Through node 2, acked: the head, with the count of those left and x-delivery-count 0.
    let ch2 = channel(&c2).await;
    let got = ch2.basic_get("qq", Default::default()).await.expect("get").expect("a message");
    assert_eq!(&got.delivery.data[..], b"m0");
    assert_eq!(got.message_count, 2);
    assert!(!got.delivery.redelivered);
    assert_eq!(delivery_count(&got.delivery), Some(0));
    got.delivery.ack(BasicAckOptions::default()).await.expect("ack");

    // Through node 3 without ack: the next one, gone for good.
    let ch3 = channel(&c3).await;
    let got = ch3.basic_get("qq", lapin::options::BasicGetOptions { no_ack: true }).await.expect("get").expect("m1");
    assert_eq!(&got.delivery.data[..], b"m1");
    assert_eq!(got.message_count, 1);

    // Through node 2 again, and the channel closed before acking: the message comes back.
    let ch2b = channel(&c2).await;
    let got = ch2b.basic_get("qq", Default::default()).await.expect("get").expect("m2");
    assert_eq!(&got.delivery.data[..], b"m2");
    assert_eq!(got.message_count, 0);
    assert!(ch3.basic_get("qq", Default::default()).await.expect("get while m2 is held").is_none());
    ch2b.close(200, "bye").await.expect("close");
    let again = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Some(g) = ch3.basic_get("qq", Default::default()).await.expect("get") {
                return g.delivery;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("m2 came back within 10 s");
    assert_eq!(&again.data[..], b"m2");
    assert!(again.redelivered);
    assert_eq!(delivery_count(&again), Some(1));
    again.ack(BasicAckOptions::default()).await.expect("ack");

    // Empty everywhere, and the API agrees.
    for ch in [&ch1, &ch2, &ch3] {
        assert!(ch.basic_get("qq", Default::default()).await.expect("get").is_none());
    }
    let (status, q) = get(&cluster.nodes[0].http(), "/api/queues/%2F/qq").await;
    assert_eq!(status, 200);
    assert_eq!(q["messages_ready"], 0, "{q}");

    // Every node's /metrics/per-object shows its member's Raft state, on RabbitMQ's names: a
    // term, and a log through which everything above went (the publishes, gets, acks and the
    // return: more than ten entries), applied and committed up to what it holds.
    for node in &cluster.nodes {
        let text = reqwest::get(format!("http://{}/metrics/per-object", node.http()))
            .await
            .expect("scrape")
            .text()
            .await
            .expect("metrics text");
        let sample = |family: &str| -> f64 {
            let prefix = format!("{family}{{vhost=\"/\",queue=\"qq\"}} ");
            let line = text.lines().find(|l| l.starts_with(&prefix)).unwrap_or_else(|| panic!("no {prefix}in\n{text}"));
            line[prefix.len()..].parse().expect("a number")
        };
        assert!(sample("rabbitmq_raft_term_total") >= 1.0);
        let written = sample("rabbitmq_raft_log_last_written_index");
        let committed = sample("rabbitmq_raft_log_commit_index");
        let applied = sample("rabbitmq_raft_log_last_applied_index");
        assert!(written > 10.0, "{written}");
        assert!(
            applied <= committed && committed <= written,
            "applied {applied}, committed {committed}, written {written}"
        );
        assert!(sample("rabbitmq_raft_log_snapshot_index") <= applied);
        assert!(sample("rabbitmq_raft_entry_commit_latency_seconds") >= 0.0);
        assert!(text.contains("# TYPE rabbitmq_raft_term_total counter"), "{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn balanced_queues_spread_their_leaders_and_client_local_ones_lead_where_declared() {
    if common::Broker::is_external() {
        eprintln!("skipped: starts Warren processes");
        return;
    }
    let cluster = Cluster::start(3, "warren-qq-balanced");
    let (c1, _c2, _c3) = connect_all(&cluster).await;
    let ch = channel(&c1).await;
    let durable = QueueDeclareOptions { durable: true, ..Default::default() };
    // All declared through node 1: three balanced, then two client-local (by argument and by
    // default).
    for (name, locator) in [("b0", "balanced"), ("b1", "balanced"), ("b2", "balanced"), ("c0", "client-local")] {
        let mut args = quorum_args();
        args.insert("x-queue-leader-locator".into(), AMQPValue::LongString(locator.into()));
        ch.queue_declare(name, durable, args).await.expect("declare");
    }
    ch.queue_declare("c1", durable, quorum_args()).await.expect("declare");
    let http = cluster.nodes[1].http();
    let leader_of = |name: &'static str| {
        let http = http.clone();
        async move {
            let path = format!("/api/queues/%2F/{name}");
            eventually(&format!("a leader for {name}"), || async { get(&http, &path).await.1["leader"].is_string() })
                .await;
            get(&http, &path).await.1["leader"].as_str().expect("a leader").to_owned()
        }
    };
    let mut balanced = Vec::new();
    for name in ["b0", "b1", "b2"] {
        balanced.push(leader_of(name).await);
    }
    balanced.sort();
    assert_eq!(balanced, cluster.names, "one balanced queue led by each node");
    assert_eq!(leader_of("c0").await, cluster.names[0]);
    assert_eq!(leader_of("c1").await, cluster.names[0]);

    // A policy's `queue-leader-locator` places queues declared with no locator of their own,
    // and beats the queue's argument (as RabbitMQ reads it).
    let policy = serde_json::json!({"pattern": "^p", "apply-to": "queues",
        "definition": {"queue-leader-locator": "balanced"}});
    let (status, body) = send(&http, "PUT", "/api/policies/%2F/spread", Some(policy)).await;
    assert!(status < 300, "{status} {body}");
    for name in ["p0", "p1", "p2"] {
        let mut args = quorum_args();
        if name == "p2" {
            args.insert("x-queue-leader-locator".into(), AMQPValue::LongString("client-local".into()));
        }
        ch.queue_declare(name, durable, args).await.expect("declare");
    }
    // Node 1 leads three queues and the others one each: balanced places none of these on
    // node 1, where client-local (the default, and p2's own argument) would put all three.
    for name in ["p0", "p1", "p2"] {
        assert_ne!(leader_of(name).await, cluster.names[0], "{name} placed by the policy");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_takes_clients_once_its_quorum_queues_are_served_by_their_groups() {
    if common::Broker::is_external() {
        eprintln!("skipped: starts Warren processes");
        return;
    }
    // Before the fix, a restarted node took AMQP clients as soon as it had read its own
    // definitions: for a few hundred milliseconds its quorum queues were plain queues of its
    // broker (a passive declare said 0 messages, a basic.get found none) until the metadata had
    // caught up and their members ran.
    let mut cluster = Cluster::start(3, "warren-qq-restart");
    let c1 = connect_url(&cluster.nodes[0].amqp_url()).await;
    let ch1 = confirm_channel(&c1).await;
    declare(&ch1).await;
    publish_confirmed(&ch1, (0..5).map(|i| format!("m{i}"))).await;
    cluster.nodes[2].kill();
    cluster.restart(2);

    // At once through the restarted node: the group's state, not an empty local queue.
    let c3 = connect_url(&cluster.nodes[2].amqp_url()).await;
    let ch3 = confirm_channel(&c3).await;
    let q = ch3
        .queue_declare("qq", QueueDeclareOptions { passive: true, ..Default::default() }, FieldTable::default())
        .await
        .expect("passive declare through the restarted node");
    assert_eq!(q.message_count(), 5, "the restarted node's first answer counts the group's messages");
    let got = ch3.basic_get("qq", Default::default()).await.expect("get").expect("a message through node 3");
    assert_eq!(&got.delivery.data[..], b"m0");
    assert_eq!(got.message_count, 4);
    got.delivery.ack(BasicAckOptions::default()).await.expect("ack");
    publish_confirmed(&ch3, ["after".to_owned()]).await;
    let ch1b = channel(&c1).await;
    let mut consumer =
        ch1b.basic_consume("qq", "all", BasicConsumeOptions::default(), FieldTable::default()).await.expect("consume");
    assert_eq!(receive(&mut consumer, 5).await, ["m1", "m2", "m3", "m4", "after"]);
    let log = cluster.nodes[2].log();
    assert!(log.contains("taking AMQP clients"), "the restarted node says when it takes clients:\n{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quorum_queue_without_a_running_majority_does_not_hold_a_restarted_node_back() {
    if common::Broker::is_external() {
        eprintln!("skipped: starts Warren processes");
        return;
    }
    // A queue whose only member is node 1: with node 1 down, node 2 restarted cannot bring that
    // member in step with its group (there is none running), and takes its clients anyway after
    // a short wait (3 s) rather than the 30 s it allows for catching up with the cluster.
    let mut cluster = Cluster::start(3, "warren-qq-solo");
    let c1 = connect_url(&cluster.nodes[0].amqp_url()).await;
    let ch1 = confirm_channel(&c1).await;
    declare(&ch1).await;
    let mut solo = quorum_args();
    solo.insert("x-quorum-initial-group-size".into(), AMQPValue::LongInt(1));
    ch1.queue_declare("solo", QueueDeclareOptions { durable: true, ..Default::default() }, solo)
        .await
        .expect("declare solo");
    publish_confirmed(&ch1, ["kept".to_owned()]).await;
    drop((ch1, c1));
    cluster.nodes[0].kill();
    cluster.nodes[1].kill();
    cluster.restart(1);
    let c2 = tokio::time::timeout(Duration::from_secs(15), connect_url(&cluster.nodes[1].amqp_url()))
        .await
        .expect("node 2 takes clients while solo's only member is down");
    let q = channel(&c2)
        .await
        .queue_declare("qq", QueueDeclareOptions { passive: true, ..Default::default() }, FieldTable::default())
        .await
        .expect("passive declare of qq through node 2");
    assert_eq!(q.message_count(), 1, "qq's group (nodes 2 and 3) serves through node 2");
    let log = cluster.nodes[1].log();
    assert!(log.contains("did not hear from their groups"), "the wait is reported:\n{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_is_quorum_critical_once_stopping_it_would_cost_a_queue_its_majority() {
    if common::Broker::is_external() {
        eprintln!("skipped: starts Warren processes");
        return;
    }
    let mut cluster = Cluster::start(3, "warren-qq-critical");
    let c1 = connect_url(&cluster.nodes[0].amqp_url()).await;
    declare(&channel(&c1).await).await;
    let http = cluster.nodes[0].http();
    let all = cluster.names.clone();
    eventually("qq's three members online", || async {
        let (_, q) = get(&http, "/api/queues/%2F/qq").await;
        q["online"] == serde_json::json!(all)
    })
    .await;
    // Every node shows the leader as the queue's `node`, as RabbitMQ does for quorum queues.
    for node in &cluster.nodes {
        let addr = node.http();
        eventually("the leader known", || async { get(&addr, "/api/queues/%2F/qq").await.1["leader"].is_string() })
            .await;
        let (_, q) = get(&addr, "/api/queues/%2F/qq").await;
        assert_eq!(q["node"], q["leader"], "{q}");
    }
    // Three members running: one can stop.
    let (status, body) = get(&http, "/api/health/checks/node-is-quorum-critical").await;
    assert_eq!((status, body["status"].as_str()), (200, Some("ok")), "{body}");

    // Two running: stopping either of them would leave qq without a majority.
    drop(c1);
    cluster.nodes[2].kill();
    eventually("node 1 sees qq critical", || async {
        get(&http, "/api/health/checks/node-is-quorum-critical").await.0 == 503
    })
    .await;
    let (_, body) = get(&http, "/api/health/checks/node-is-quorum-critical").await;
    assert_eq!(body["status"], "failed");
    assert_eq!(body["reason"], "There are quorum queues that would lose their quorum if the target node is shut down");
    assert_eq!(
        body["queues"],
        serde_json::json!([{"readable_name": "queue 'qq' in vhost '/'", "name": "qq", "virtual_host": "/", "type": "quorum"}])
    );
    // warrenctl, as rabbitmq-queues check_if_node_is_quorum_critical: an error naming the queue.
    let said = common::cluster::warrenctl(&http, &["check_if_node_is_quorum_critical"]).await;
    let expected = format!("queue 'qq' in vhost '/' would lose quorum if node {} is stopped", cluster.names[0]);
    assert!(said.as_ref().is_err_and(|e| e.contains(&expected)), "{said:?}");
    // rabbitmq-upgrade await_online_quorum_plus_one: gives up after its timeout.
    let said = common::cluster::warrenctl(&http, &["await_online_quorum_plus_one", "--timeout", "1"]).await;
    assert!(said.as_ref().is_err_and(|e| e.contains("time is up")), "{said:?}");
    // Back to three: fine again.
    cluster.restart(2);
    eventually("node 1 sees qq safe again", || async {
        get(&http, "/api/health/checks/node-is-quorum-critical").await.0 == 200
    })
    .await;
    let said = common::cluster::warrenctl(&http, &["check_if_node_is_quorum_critical"]).await;
    assert_eq!(said, Ok(format!("no quorum queue would lose its quorum if node {} is stopped\n", cluster.names[0])));
    let said = common::cluster::warrenctl(&http, &["await_online_quorum_plus_one", "--timeout", "10"]).await;
    assert_eq!(said, Ok("every quorum queue has a majority plus one of its members online\n".to_owned()));
}
