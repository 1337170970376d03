//! Alternate exchanges (the `alternate-exchange` exchange argument),
//! exercised with the `amqprs` client: unroutable messages go to the
//! alternate exchange, which routes them with their original routing key;
//! a mandatory message that the alternate exchange routes is not returned;
//! chains of alternate exchanges are followed and loops end.
//!
//! Routing assertions use a sentinel message (see
//! [`Deliveries::bodies_until`]) rather than timed waits.

mod common;

use amqprs::channel::{BasicPublishArguments, Channel, ConfirmSelectArguments, ExchangeDeclareArguments};
use amqprs::{BasicProperties, FieldTable};
use common::amqprs_client::*;
use common::code::{NO_ROUTE, PRECONDITION_FAILED};
use common::{unique, within, Broker};

const SENTINEL: &str = "sentinel";

fn alternate(exchange: &str) -> FieldTable {
    table(&[("alternate-exchange", text(exchange))])
}

async fn try_declare_exchange(ch: &Channel, name: &str, kind: &str, internal: bool, arguments: FieldTable) -> bool {
    let mut args = ExchangeDeclareArguments::new(name, kind);
    args.internal = internal;
    args.arguments = arguments;
    within("exchange.declare", ch.exchange_declare(args)).await.is_ok()
}

async fn declare_exchange(ch: &Channel, kind: &str, arguments: FieldTable) -> String {
    let name = unique(&format!("ae-{kind}"));
    assert!(try_declare_exchange(ch, &name, kind, false, arguments).await, "declare {kind} exchange {name}");
    name
}

/// A server-named queue bound to `exchange` with each key, with an
/// auto-ack consumer on it.
async fn subscriber(ch: &Channel, exchange: &str, keys: &[&str]) -> Deliveries {
    let queue = declare_server_named(ch).await;
    for key in keys {
        bind(ch, &queue, exchange, key).await;
    }
    consume_no_ack(ch, &queue).await
}

async fn confirm_select(ch: &Channel) {
    within("confirm.select-ok", ch.confirm_select(ConfirmSelectArguments::default())).await.expect("confirm.select");
}

async fn publish_mandatory(ch: &Channel, exchange: &str, routing_key: &str, body: &str) {
    let mut args = BasicPublishArguments::new(exchange, routing_key);
    args.mandatory = true;
    within("basic.publish", ch.basic_publish(BasicProperties::default(), body.as_bytes().to_vec(), args))
        .await
        .expect("publish");
}

/// The events up to and including the ack of `delivery_tag` (a channel in
/// confirm mode acks a returned message after its basic.return).
async fn events_until_ack(ch: &mut EventChannel, delivery_tag: u64) -> Vec<Event> {
    let mut events = Vec::new();
    loop {
        let event = ch.next_event().await;
        let done = matches!(event, Event::Ack { delivery_tag: tag, .. } if tag == delivery_tag);
        events.push(event);
        if done {
            return events;
        }
    }
}

fn returned(exchange: &str, routing_key: &str, body: &str) -> Event {
    Event::Returned(Returned {
        code: NO_ROUTE,
        text: "NO_ROUTE".to_string(),
        exchange: exchange.to_string(),
        routing_key: routing_key.to_string(),
        body: body.to_string(),
    })
}

fn acked(delivery_tag: u64) -> Event {
    Event::Ack { delivery_tag, multiple: false }
}

#[tokio::test]
async fn the_alternate_exchange_receives_only_unroutable_messages() {
    let broker = Broker::start();
    let (conn, ch) = connect_channel(&broker).await;
    // Alternate exchanges are often internal: clients cannot publish to
    // them, but unroutable messages still reach them.
    let ae = unique("ae-internal");
    assert!(try_declare_exchange(&ch, &ae, "fanout", true, FieldTable::new()).await);
    let mut unroutable = subscriber(&ch, &ae, &[""]).await;
    let main = declare_exchange(&ch, "direct", alternate(&ae)).await;
    let mut routed = subscriber(&ch, &main, &["known"]).await;

    publish(&ch, &main, "known", "routed").await;
    publish(&ch, &main, "unknown", "unroutable").await;
    publish(&ch, &main, "known", SENTINEL).await;
    publish(&ch, &main, "other", SENTINEL).await;

    assert_eq!(routed.bodies_until(SENTINEL).await, ["routed"]);
    let message = unroutable.next().await;
    assert_eq!(message.body, "unroutable");
    // Delivered with the exchange and routing key it was published with.
    assert_eq!((message.exchange.as_str(), message.routing_key.as_str()), (main.as_str(), "unknown"));
    assert!(unroutable.bodies_until(SENTINEL).await.is_empty());
    conn.close().await.expect("close");
}

#[tokio::test]
async fn the_alternate_exchange_routes_with_the_original_routing_key() {
    let broker = Broker::start();
    let (conn, ch) = connect_channel(&broker).await;
    let ae = declare_exchange(&ch, "direct", FieldTable::new()).await;
    let mut by_ae = subscriber(&ch, &ae, &["b.key", SENTINEL]).await;
    let main = declare_exchange(&ch, "topic", alternate(&ae)).await;
    let mut by_main = subscriber(&ch, &main, &["a.*", SENTINEL]).await;

    publish(&ch, &main, "a.x", "to main's queue").await;
    publish(&ch, &main, "b.key", "to the alternate's queue").await;
    publish(&ch, &main, "c.key", "routed nowhere").await;
    publish(&ch, &main, SENTINEL, SENTINEL).await;
    publish(&ch, &ae, SENTINEL, SENTINEL).await;

    assert_eq!(by_main.bodies_until(SENTINEL).await, ["to main's queue"]);
    assert_eq!(by_ae.bodies_until(SENTINEL).await, ["to the alternate's queue"]);
    conn.close().await.expect("close");
}

#[tokio::test]
async fn a_mandatory_message_routed_by_the_alternate_exchange_is_not_returned() {
    let broker = Broker::start();
    let (conn, mut ch) = connect_channel(&broker).await;
    confirm_select(&ch).await;
    let ae = declare_exchange(&ch, "fanout", FieldTable::new()).await;
    let mut unroutable = subscriber(&ch, &ae, &[""]).await;
    let main = declare_exchange(&ch, "direct", alternate(&ae)).await;
    // An alternate exchange that routes nowhere itself.
    let empty_ae = declare_exchange(&ch, "fanout", FieldTable::new()).await;
    let dead_end = declare_exchange(&ch, "direct", alternate(&empty_ae)).await;

    publish_mandatory(&ch, &main, "unknown", "caught").await;
    assert_eq!(events_until_ack(&mut ch, 1).await, [acked(1)], "not returned");
    assert_eq!(unroutable.next().await.body, "caught");

    publish_mandatory(&ch, &dead_end, "unknown", "lost").await;
    // Returned as published, to the exchange the client used.
    assert_eq!(events_until_ack(&mut ch, 2).await, [returned(&dead_end, "unknown", "lost"), acked(2)]);
    conn.close().await.expect("close");
}

#[tokio::test]
async fn a_missing_alternate_exchange_leaves_the_message_unroutable() {
    let broker = Broker::start();
    let (conn, mut ch) = connect_channel(&broker).await;
    confirm_select(&ch).await;
    let main = declare_exchange(&ch, "direct", alternate(&unique("no-such-ae"))).await;

    publish_mandatory(&ch, &main, "key", "lost").await;
    assert_eq!(events_until_ack(&mut ch, 1).await, [returned(&main, "key", "lost"), acked(1)]);
    assert!(ch.is_open(), "no error for the client");
    declare_server_named(&ch).await;
    conn.close().await.expect("close");
}

#[tokio::test]
async fn alternate_exchange_chains_are_followed_and_loops_end() {
    let broker = Broker::start();
    let (conn, mut ch) = connect_channel(&broker).await;
    confirm_select(&ch).await;

    // first -> second -> third, which routes to a queue.
    let third = declare_exchange(&ch, "fanout", FieldTable::new()).await;
    let mut end_of_chain = subscriber(&ch, &third, &[""]).await;
    let second = declare_exchange(&ch, "direct", alternate(&third)).await;
    let first = declare_exchange(&ch, "direct", alternate(&second)).await;
    publish_mandatory(&ch, &first, "key", "through the chain").await;
    assert_eq!(events_until_ack(&mut ch, 1).await, [acked(1)]);
    let message = end_of_chain.next().await;
    assert_eq!(message.body, "through the chain");
    assert_eq!(message.exchange, first);

    // loop_a -> loop_b -> loop_a, neither routing anywhere: the message is
    // unroutable, not passed around forever.
    let (loop_a, loop_b) = (unique("ae-loop-a"), unique("ae-loop-b"));
    assert!(try_declare_exchange(&ch, &loop_a, "direct", false, alternate(&loop_b)).await);
    assert!(try_declare_exchange(&ch, &loop_b, "direct", false, alternate(&loop_a)).await);
    publish_mandatory(&ch, &loop_a, "key", "looping").await;
    assert_eq!(events_until_ack(&mut ch, 2).await, [returned(&loop_a, "key", "looping"), acked(2)]);
    assert_broker_alive_amqprs(&broker).await;
    conn.close().await.expect("close");
}

#[tokio::test]
async fn redeclaring_with_a_different_alternate_exchange_is_precondition_failed() {
    let broker = Broker::start();
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    let ae = declare_exchange(&ch, "fanout", FieldTable::new()).await;
    let main = declare_exchange(&ch, "direct", alternate(&ae)).await;
    assert!(try_declare_exchange(&ch, &main, "direct", false, alternate(&ae)).await, "an equivalent redeclare");

    for (what, arguments) in [("another", alternate(&unique("other-ae"))), ("no", FieldTable::new())] {
        let mut other = channel(&conn).await;
        let accepted = try_declare_exchange(&other, &main, "direct", false, arguments).await;
        assert!(!accepted, "a redeclare with {what} alternate-exchange was accepted instead of 406");
        assert_eq!(other.closed_code().await, PRECONDITION_FAILED, "redeclare with {what} alternate-exchange");
    }
    conn.close().await.expect("close");
}

/// A fresh connection can still route a message through a new exchange.
async fn assert_broker_alive_amqprs(broker: &Broker) {
    let (conn, ch) = connect_channel(broker).await;
    let exchange = declare_exchange(&ch, "fanout", FieldTable::new()).await;
    let mut deliveries = subscriber(&ch, &exchange, &[""]).await;
    publish(&ch, &exchange, "", "ping").await;
    assert_eq!(deliveries.next().await.body, "ping");
    conn.close().await.expect("close");
}
