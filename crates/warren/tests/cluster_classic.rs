//! Classic queues reachable from any node, with real `warren` processes: a durable classic
//! queue lives on the node its declaration came through (its home); publishes through another
//! node are confirmed once the home holds them, gets and consumers through any node take from
//! the home with the home's semantics (no `x-delivery-count`, requeue when a channel closes,
//! dead-lettering at home), a node killed with deliveries unacked has them requeued at home,
//! a consumer through another node is cancelled when the home goes down (as RabbitMQ does),
//! declaring, consuming, getting, purging, binding and deleting through another node are
//! refused with RabbitMQ's 404 while the home is down, and a publish then is nacked until it
//! is back.

mod common;

use common::cluster::{get, Cluster};
use common::eventually;
use common::lapin_client::*;
use futures_lite::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicGetOptions, BasicPublishOptions, BasicQosOptions,
    BasicRejectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ExchangeKind};
use std::time::Duration;

/// Publishes `body` to queue `queue` with a confirm; true when it is an ack.
async fn publish(ch: &Channel, queue: &str, body: &str) -> bool {
    ch.basic_publish(
        "",
        queue,
        BasicPublishOptions::default(),
        body.as_bytes(),
        BasicProperties::default().with_delivery_mode(2),
    )
    .await
    .expect("publish")
    .await
    .expect("confirm")
    .is_ack()
}

/// The ready count of `queue` as a passive declare through `conn` answers it.
async fn ready(conn: &Connection, queue: &str) -> u32 {
    let ch = channel(conn).await;
    let n = declare_passive(&ch, queue).await.expect("the queue exists").message_count();
    let _ = ch.close(200, "bye").await;
    n
}

/// Waits until `conn`'s node knows `queue` (its declaration replicated there).
async fn until_known(conn: &Connection, queue: &str) {
    eventually("the queue's declaration to reach the node", || async {
        let ch = channel(conn).await;
        let known = declare_passive(&ch, queue).await.is_ok();
        if known {
            let _ = ch.close(200, "bye").await;
        }
        known
    })
    .await;
}

/// Receives `n` deliveries from `consumer` without acking them.
async fn take(consumer: &mut lapin::Consumer, n: usize) -> Vec<lapin::message::Delivery> {
    let mut got = Vec::new();
    while got.len() < n {
        let next = tokio::time::timeout(Duration::from_secs(10), consumer.next()).await;
        let d = next.unwrap_or_else(|_| panic!("only {} of {n} deliveries came", got.len()));
        got.push(d.expect("the consumer ended").expect("a delivery"));
    }
    got
}

fn body(d: &lapin::message::Delivery) -> String {
    String::from_utf8_lossy(&d.data).into_owned()
}

fn header<'a>(props: &'a BasicProperties, name: &str) -> Option<&'a AMQPValue> {
    props.headers().as_ref()?.inner().get(name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_classic_queue_is_reachable_through_every_node() {
    if common::Broker::is_external() {
        eprintln!("skipped: starts Warren processes");
        return;
    }
    let cluster = Cluster::start(3, "warren-cq");
    let c1 = connect_url(&cluster.nodes[0].amqp_url()).await;
    let c2 = connect_url(&cluster.nodes[1].amqp_url()).await;
    let c3 = connect_url(&cluster.nodes[2].amqp_url()).await;
    // Declared through node 1: it lives there, and dead-letters there, to a queue that lives
    // on node 2.
    let ch1 = channel(&c1).await;
    let durable = QueueDeclareOptions { durable: true, ..Default::default() };
    let ch2d = channel(&c2).await;
    ch2d.exchange_declare(
        "dlx",
        ExchangeKind::Fanout,
        ExchangeDeclareOptions { durable: true, ..Default::default() },
        FieldTable::default(),
    )
    .await
    .expect("declare dlx");
    ch2d.queue_declare("dead", durable, FieldTable::default()).await.expect("declare dead");
    ch2d.queue_bind("dead", "dlx", "", QueueBindOptions::default(), FieldTable::default()).await.expect("bind");
    until_known(&c1, "dead").await;
    let mut args = FieldTable::default();
    args.insert("x-dead-letter-exchange".into(), AMQPValue::LongString("dlx".into()));
    ch1.queue_declare("cq", durable, args).await.expect("declare cq");
    until_known(&c2, "cq").await;
    until_known(&c3, "cq").await;
    for node in &cluster.nodes {
        let (status, q) = get(&node.http(), "/api/queues/%2f/cq").await;
        assert_eq!(status, 200);
        assert_eq!(q["node"], cluster.names[0], "{} shows the queue's home as its node", node.name);
    }

    // Published through node 2: confirmed once node 1 holds them.
    let ch2 = confirm_channel(&c2).await;
    for i in 0..10 {
        assert!(publish(&ch2, "cq", &format!("m{i}")).await, "m{i} was nacked");
    }
    assert_eq!(ready(&c1, "cq").await, 10, "node 1 holds what node 2 confirmed");

    // basic.get through node 3: the head, as a classic queue gives it (no delivery count).
    let ch3 = channel(&c3).await;
    let got = ch3.basic_get("cq", BasicGetOptions::default()).await.expect("get").expect("a message");
    assert_eq!(String::from_utf8_lossy(&got.delivery.data), "m0");
    assert!(!got.delivery.redelivered);
    assert_eq!(got.message_count, 9, "the get's count of what is left");
    assert!(header(&got.delivery.properties, "x-delivery-count").is_none());
    got.delivery.ack(BasicAckOptions::default()).await.expect("ack");

    // A consumer through node 3 holds three; its channel closes and they go back, in place.
    ch3.basic_qos(3, BasicQosOptions::default()).await.expect("qos");
    let mut consumer =
        ch3.basic_consume("cq", "c3", BasicConsumeOptions::default(), FieldTable::default()).await.expect("consume");
    let held: Vec<String> = take(&mut consumer, 3).await.iter().map(body).collect();
    assert_eq!(held, ["m1", "m2", "m3"]);
    assert_eq!(ready(&c1, "cq").await, 6, "three are out with node 3's consumer");
    ch3.close(200, "bye").await.expect("close");
    eventually("node 3's deliveries to be requeued at home", || async { ready(&c1, "cq").await == 9 }).await;

    // Through node 2: the first comes back redelivered; rejected, it is dead-lettered by its
    // home, node 1, into `dead`, which lives on node 2 and is read here through node 1.
    let ch2g = channel(&c2).await;
    let got = ch2g.basic_get("cq", BasicGetOptions::default()).await.expect("get").expect("a message");
    assert_eq!(String::from_utf8_lossy(&got.delivery.data), "m1");
    assert!(got.delivery.redelivered, "a requeued message is redelivered");
    got.delivery.reject(BasicRejectOptions { requeue: false }).await.expect("reject");
    let dead = within_get(&ch1, "dead").await;
    assert_eq!(String::from_utf8_lossy(&dead.delivery.data), "m1");
    let Some(AMQPValue::FieldArray(deaths)) = header(&dead.delivery.properties, "x-death") else {
        panic!("no x-death: {:?}", dead.delivery.properties.headers());
    };
    let Some(AMQPValue::FieldTable(first)) = deaths.as_slice().first() else { panic!("empty x-death") };
    assert_eq!(first.inner().get("reason"), Some(&AMQPValue::LongString("rejected".into())));
    assert_eq!(first.inner().get("queue"), Some(&AMQPValue::LongString("cq".into())));

    // The rest, consumed through node 2, in order.
    let mut consumer =
        ch2g.basic_consume("cq", "c2", BasicConsumeOptions::default(), FieldTable::default()).await.expect("consume");
    let rest = take(&mut consumer, 8).await;
    assert_eq!(rest.iter().map(body).collect::<Vec<_>>(), (2..10).map(|i| format!("m{i}")).collect::<Vec<_>>());
    assert!(rest[..2].iter().all(|d| d.redelivered) && rest[2..].iter().all(|d| !d.redelivered));
    for d in rest {
        d.ack(BasicAckOptions::default()).await.expect("ack");
    }
    for (i, c) in [&c1, &c2, &c3].into_iter().enumerate() {
        eventually(&format!("node {} to count cq empty", i + 1), || async { ready(c, "cq").await == 0 }).await;
    }
}

/// basic.get of `queue` until a message comes (dead-lettering at home is asynchronous).
async fn within_get(ch: &Channel, queue: &str) -> lapin::message::BasicGetMessage {
    common::within("a message in the queue", async {
        loop {
            if let Some(m) = ch.basic_get(queue, BasicGetOptions { no_ack: true }).await.expect("get") {
                return m;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_classic_queue_outlives_the_loss_of_a_clients_node_and_of_its_home() {
    if common::Broker::is_external() {
        eprintln!("skipped: starts Warren processes");
        return;
    }
    let mut cluster = Cluster::start(3, "warren-cq-loss");
    let c1 = connect_url(&cluster.nodes[0].amqp_url()).await;
    let c2 = connect_url(&cluster.nodes[1].amqp_url()).await;
    let c3 = connect_url(&cluster.nodes[2].amqp_url()).await;
    let ch1 = channel(&c1).await;
    ch1.queue_declare("cq", QueueDeclareOptions { durable: true, ..Default::default() }, FieldTable::default())
        .await
        .expect("declare");
    until_known(&c2, "cq").await;
    until_known(&c3, "cq").await;
    let ch2 = confirm_channel(&c2).await;
    for i in 0..5 {
        assert!(publish(&ch2, "cq", &format!("m{i}")).await);
    }

    // Node 3's consumer holds all five when node 3 is killed: they are ready again at home.
    let ch3 = channel(&c3).await;
    let mut consumer =
        ch3.basic_consume("cq", "c3", BasicConsumeOptions::default(), FieldTable::default()).await.expect("consume");
    take(&mut consumer, 5).await;
    assert_eq!(ready(&c1, "cq").await, 0);
    drop(consumer);
    drop(ch3);
    drop(c3);
    cluster.nodes[2].kill();
    eventually("node 3's deliveries to be requeued at home", || async { ready(&c1, "cq").await == 5 }).await;

    // A consumer through node 2 takes them; then the home is killed.
    let ch2c = channel(&c2).await;
    let mut consumer =
        ch2c.basic_consume("cq", "c2", BasicConsumeOptions::default(), FieldTable::default()).await.expect("consume");
    for d in take(&mut consumer, 5).await {
        assert!(d.redelivered, "{} was delivered to node 3 before", body(&d));
        d.ack(BasicAckOptions::default()).await.expect("ack");
    }
    drop(ch1);
    drop(c1);
    cluster.nodes[0].kill();
    assert!(!publish(&ch2, "cq", "lost").await, "a publish to a queue whose home is down is nacked");

    // Node 2's consumer is cancelled (basic.cancel: the stream ends), as RabbitMQ cancels the
    // consumers of a queue whose node went down.
    let ended = tokio::time::timeout(Duration::from_secs(15), consumer.next()).await;
    assert!(matches!(ended, Ok(None)), "the consumer is cancelled when the home goes: {ended:?}");

    // While the home is down, node 2 refuses what RabbitMQ refuses, with its code and text
    // (and the queue is not deleted through it).
    let why = format!(
        "NOT_FOUND - home node '{}' of durable queue 'cq' in vhost '/' is down or inaccessible",
        cluster.names[0]
    );
    let refusal = |e: lapin::Error| match e {
        lapin::Error::ProtocolError(e) => (e.get_id(), e.get_message().to_string()),
        other => panic!("expected an AMQP error, got {other}"),
    };
    eventually("node 2 to see the home down", || async {
        let ch = channel(&c2).await;
        declare_passive(&ch, "cq").await.err().map(refusal) == Some((404, why.clone()))
    })
    .await;
    let durable = QueueDeclareOptions { durable: true, ..Default::default() };
    let ch = channel(&c2).await;
    let e = ch.queue_declare("cq", durable, FieldTable::default()).await.expect_err("declare");
    assert_eq!(refusal(e), (404, why.clone()), "declare");
    let ch = channel(&c2).await;
    let e =
        ch.basic_consume("cq", "c", BasicConsumeOptions::default(), FieldTable::default()).await.expect_err("consume");
    assert_eq!(refusal(e), (404, why.clone()), "consume");
    let ch = channel(&c2).await;
    let e = ch.basic_get("cq", BasicGetOptions::default()).await.expect_err("get");
    assert_eq!(refusal(e), (404, why.clone()), "get");
    let ch = channel(&c2).await;
    let e = ch.queue_purge("cq", Default::default()).await.expect_err("purge");
    assert_eq!(refusal(e), (404, why.clone()), "purge");
    let ch = channel(&c2).await;
    let e = ch.queue_bind("cq", "amq.direct", "k", QueueBindOptions::default(), FieldTable::default()).await;
    assert_eq!(refusal(e.expect_err("bind")), (404, why.clone()), "bind");
    let ch = channel(&c2).await;
    let e = ch.queue_delete("cq", Default::default()).await.expect_err("delete");
    assert_eq!(refusal(e), (404, why.clone()), "delete");

    // The home back, a consumer started again through node 2 takes what is published there.
    cluster.restart(0);
    let mut n = 0;
    eventually("a publish through node 2 to be confirmed again", || {
        n += 1;
        let body = format!("after-{n}");
        let ch2 = ch2.clone();
        async move { publish(&ch2, "cq", &body).await }
    })
    .await;
    let mut consumer = ch2c
        .basic_consume("cq", "c2-again", BasicConsumeOptions::default(), FieldTable::default())
        .await
        .expect("consume");
    // Acks sent just before the home was killed may not have reached it (or its disk): those
    // messages come again, as from a single node killed so. The nacked publish never does.
    loop {
        let d = take(&mut consumer, 1).await.remove(0);
        d.ack(BasicAckOptions::default()).await.expect("ack");
        let b = body(&d);
        if b == format!("after-{n}") {
            break;
        }
        assert!(["m0", "m1", "m2", "m3", "m4"].contains(&b.as_str()), "only acked messages come again: {b}");
    }
}

/// basic.consume on `queue` through `ch`, which the broker must refuse; the reply code it closes
/// the channel with.
async fn consume_refused(ch: &Channel, queue: &str, tag: &str, exclusive: bool) -> u16 {
    let watch = CloseWatch::new(ch);
    let options = BasicConsumeOptions { exclusive, ..Default::default() };
    match ch.basic_consume(queue, tag, options, FieldTable::default()).await {
        // Answered at once through another node: the home's refusal closes the channel after.
        Ok(_) => watch.code().await,
        Err(e) => reply_code(&e),
    }
}

#[tokio::test]
async fn an_exclusive_consumer_through_one_node_holds_the_queue_for_every_node() {
    if common::Broker::is_external() {
        eprintln!("skipped: starts Warren processes");
        return;
    }
    let cluster = Cluster::start(3, "warren-cq-excl");
    let c1 = connect_url(&cluster.nodes[0].amqp_url()).await;
    let c2 = connect_url(&cluster.nodes[1].amqp_url()).await;
    let c3 = connect_url(&cluster.nodes[2].amqp_url()).await;
    let ch1 = confirm_channel(&c1).await;
    ch1.queue_declare("xq", QueueDeclareOptions { durable: true, ..Default::default() }, FieldTable::default())
        .await
        .expect("declare");
    until_known(&c2, "xq").await;
    until_known(&c3, "xq").await;

    // An exclusive consumer through node 2, at the home once a publish reaches it.
    let ch2 = channel(&c2).await;
    let options = BasicConsumeOptions { exclusive: true, ..Default::default() };
    let mut exclusive = ch2.basic_consume("xq", "x2", options, FieldTable::default()).await.expect("consume");
    assert!(publish(&ch1, "xq", "one").await);
    let d = take(&mut exclusive, 1).await.remove(0);
    d.ack(BasicAckOptions::default()).await.expect("ack");

    // Another consumer, through node 3 or at the home itself, is refused as RabbitMQ refuses
    // it: 403, the queue is in exclusive use.
    assert_eq!(consume_refused(&channel(&c3).await, "xq", "c3", false).await, 403);
    assert_eq!(consume_refused(&channel(&c1).await, "xq", "c1", false).await, 403);
    // The exclusive consumer still has the queue.
    assert!(publish(&ch1, "xq", "two").await);
    assert_eq!(body(&take(&mut exclusive, 1).await.remove(0)), "two");

    // Once it is cancelled, a plain consumer through node 3 takes the queue, and an exclusive
    // one through node 2 is refused in turn.
    ch2.basic_cancel("x2", BasicCancelOptions::default()).await.expect("cancel");
    let ch3 = channel(&c3).await;
    let mut plain =
        ch3.basic_consume("xq", "c3", BasicConsumeOptions::default(), FieldTable::default()).await.expect("consume");
    assert!(publish(&ch1, "xq", "three").await);
    let got = take(&mut plain, 1).await.remove(0);
    assert!(["two", "three"].contains(&body(&got).as_str()), "{}", body(&got));
    assert_eq!(consume_refused(&channel(&c2).await, "xq", "x2-again", true).await, 403);
}
