//! The plugins RabbitMQ users install that Warren has built in: the delayed-message exchange,
//! message deduplication and the consistent-hash exchange. Run against Warren only (a stock
//! RabbitMQ has none of these plugins).

mod common;

use common::lapin_client::*;
use common::{unique, within, Broker};
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, ExchangeKind};
use std::time::{Duration, Instant};

async fn exchange(ch: &Channel, name: &str, kind: &str, durable: bool, arguments: FieldTable) {
    let options = ExchangeDeclareOptions { durable, ..Default::default() };
    within("exchange.declare-ok", ch.exchange_declare(name, ExchangeKind::Custom(kind.into()), options, arguments))
        .await
        .expect("declare exchange");
}

async fn bind(ch: &Channel, queue: &str, exchange: &str, key: &str) {
    within("queue.bind-ok", ch.queue_bind(queue, exchange, key, QueueBindOptions::default(), FieldTable::default()))
        .await
        .expect("bind");
}

fn with_header(name: &str, value: AMQPValue, persistent: bool) -> BasicProperties {
    let props = BasicProperties::default().with_headers(field_table(&[(name, value)]));
    if persistent {
        props.with_delivery_mode(2)
    } else {
        props
    }
}

#[tokio::test]
async fn delayed_message_arrives_after_its_delay_and_survives_a_kill() {
    if Broker::is_external() {
        eprintln!("skipped: needs the delayed-message exchange and a restartable Warren");
        return;
    }
    let dir = std::env::temp_dir().join(unique("warren-delayed"));
    let broker = Broker::start_in(&dir);
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let (x, q) = (unique("delayed"), unique("delayed-q"));
    exchange(&ch, &x, "x-delayed-message", true, field_table(&[("x-delayed-type", long_string("direct"))])).await;
    declare(&ch, &q, QueueDeclareOptions { durable: true, ..Default::default() }).await;
    bind(&ch, &q, &x, "k").await;
    let sent = Instant::now();
    // Confirmed: on disk before the kill.
    publish_with(&ch, &x, "k", b"later", with_header("x-delay", AMQPValue::LongInt(1500), true)).await;
    publish_with(&ch, &x, "k", b"now", BasicProperties::default().with_delivery_mode(2)).await;
    assert_eq!(get_all(&ch, &q).await, vec!["now".to_string()]);
    broker.kill9();

    let broker = Broker::start_in(&dir);
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    let mut consumer = consume(&ch, &q, true).await;
    // "now" may come back first: its auto-ack was not synced before the kill (the
    // documented at-least-once bound).
    let mut delivery = within("the delayed message", next_delivery(&mut consumer)).await;
    if body(&delivery) == "now" {
        delivery = within("the delayed message", next_delivery(&mut consumer)).await;
    }
    assert_eq!(body(&delivery), "later");
    assert!(sent.elapsed() >= Duration::from_millis(1500), "delivered before its delay: {:?}", sent.elapsed());
    close(&conn).await;
    drop(broker);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn deduplication_exchange_routes_a_repeated_message_once() {
    if Broker::is_external() {
        eprintln!("skipped: needs the message deduplication exchange");
        return;
    }
    let broker = Broker::start();
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let (x, q) = (unique("dedup"), unique("dedup-q"));
    exchange(&ch, &x, "x-message-deduplication", false, field_table(&[("x-cache-size", AMQPValue::LongInt(100))]))
        .await;
    declare_plain(&ch, &q).await;
    bind(&ch, &q, &x, "").await;
    for body in ["a", "b", "c"] {
        let props = with_header("x-deduplication-header", long_string("same"), false);
        publish_with(&ch, &x, "", body.as_bytes(), props).await;
    }
    publish_with(&ch, &x, "", b"other", with_header("x-deduplication-header", long_string("other"), false)).await;
    assert_eq!(get_all(&ch, &q).await, vec!["a".to_string(), "other".to_string()]);
    close(&conn).await;
}

#[tokio::test]
async fn a_disk_deduplication_cache_survives_a_kill() {
    if Broker::is_external() {
        eprintln!("skipped: needs the message deduplication exchange and a restartable Warren");
        return;
    }
    let dir = std::env::temp_dir().join(unique("warren-dedup"));
    let (x, q) = (unique("dedup-disk"), unique("dedup-disk-q"));
    let broker = Broker::start_in(&dir);
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let args = field_table(&[("x-cache-size", AMQPValue::LongInt(100)), ("x-cache-persistence", long_string("disk"))]);
    exchange(&ch, &x, "x-message-deduplication", true, args).await;
    declare(&ch, &q, QueueDeclareOptions { durable: true, ..Default::default() }).await;
    bind(&ch, &q, &x, "").await;
    // Confirmed: the cache entry is on disk.
    publish_with(&ch, &x, "", b"first", with_header("x-deduplication-header", long_string("k"), true)).await;
    broker.kill9();

    let broker = Broker::start_in(&dir);
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    publish_with(&ch, &x, "", b"again", with_header("x-deduplication-header", long_string("k"), true)).await;
    let bodies = get_all(&ch, &q).await;
    assert_eq!(bodies, vec!["first".to_string()], "the repeat after the restart was dropped");
    close(&conn).await;
    drop(broker);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Publishes one message per key through `x`, then reports which queue each key reached.
async fn placement(ch: &Channel, x: &str, queues: &[String], keys: &[String]) -> Vec<usize> {
    for key in keys {
        publish_with(ch, x, key, key.as_bytes(), BasicProperties::default().with_delivery_mode(2)).await;
    }
    let mut place = vec![usize::MAX; keys.len()];
    for (qi, q) in queues.iter().enumerate() {
        for body in get_all(ch, q).await {
            let k = keys.iter().position(|k| *k == body).expect("a key we sent");
            place[k] = qi;
        }
    }
    place
}

#[tokio::test]
async fn consistent_hash_exchange_keeps_keys_on_their_queue_across_a_restart() {
    if Broker::is_external() {
        eprintln!("skipped: needs the consistent-hash exchange and a restartable Warren");
        return;
    }
    let dir = std::env::temp_dir().join(unique("warren-chash"));
    let x = unique("chash");
    let queues: Vec<String> = (0..2).map(|i| unique(&format!("chash-{i}"))).collect();
    let keys: Vec<String> = (0..200).map(|i| format!("key-{i}")).collect();
    let broker = Broker::start_in(&dir);
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    exchange(&ch, &x, "x-consistent-hash", true, FieldTable::default()).await;
    for q in &queues {
        declare(&ch, q, QueueDeclareOptions { durable: true, ..Default::default() }).await;
        // The binding key is the weight.
        bind(&ch, q, &x, "10").await;
    }
    let before = placement(&ch, &x, &queues, &keys).await;
    assert!(before.iter().all(|p| *p < queues.len()), "every message reached exactly one queue");
    let on_first = before.iter().filter(|p| **p == 0).count();
    assert!((40..=160).contains(&on_first), "equal weights share the keys: {on_first} of 200 on the first queue");
    broker.kill9();

    let broker = Broker::start_in(&dir);
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let after = placement(&ch, &x, &queues, &keys).await;
    assert_eq!(after, before, "the same keys reach the same queues after a restart");
    close(&conn).await;
    drop(broker);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn consistent_hash_exchange_can_hash_the_message_id() {
    if Broker::is_external() {
        eprintln!("skipped: needs the consistent-hash exchange");
        return;
    }
    let broker = Broker::start();
    let (conn, ch) = connect_channel(&broker).await;
    let x = unique("chash-prop");
    let queues: Vec<String> = (0..2).map(|i| unique(&format!("chash-prop-{i}"))).collect();
    let mut args = FieldTable::default();
    args.insert("hash-property".into(), AMQPValue::LongString("message_id".into()));
    exchange(&ch, &x, "x-consistent-hash", false, args).await;
    // Weight 20 each: with a single point on the ring, a queue whose (random) name hashes
    // close to the other's could get no id at all.
    for q in &queues {
        declare_plain(&ch, q).await;
        bind(&ch, q, &x, "20").await;
    }
    // Each message id twice, under two different routing keys; the body says which id.
    for i in 0..100 {
        let id = format!("m-{i}");
        for key in ["one", "two"] {
            let props = BasicProperties::default().with_message_id(id.as_str().into());
            publish_with(&ch, &x, key, id.as_bytes(), props).await;
        }
    }
    // No message id: unroutable (nothing reaches either queue).
    publish_with(&ch, &x, "one", b"no id", BasicProperties::default()).await;
    let mut got: Vec<Vec<String>> = Vec::new();
    for q in &queues {
        got.push(get_all(&ch, q).await);
    }
    assert_eq!(got.iter().map(Vec::len).sum::<usize>(), 200, "every message with an id routed once");
    for (qi, bodies) in got.iter().enumerate() {
        assert!(!bodies.is_empty(), "queue {qi} gets some ids");
        for b in bodies {
            assert_eq!(bodies.iter().filter(|o| *o == b).count(), 2, "both copies of {b} on one queue");
        }
    }
    close(&conn).await;
}
