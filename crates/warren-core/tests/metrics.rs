//! The broker's counters (`Broker::counters`) in the cases a black-box scrape does not reach
//! easily: transactions and direct reply-to, counted as RabbitMQ 3.10 counts them (checked
//! side by side against it with pika).

mod common;

use common::Harness;
use warren_amqp::{BasicProperties, Method, ShortStr};
use warren_core::{Config, Out};

#[test]
fn a_transaction_counts_publishes_when_received_and_routes_when_committed() {
    let mut h = Harness::new(Config::default());
    h.connect(1, true);
    h.open(1, 1);
    h.declare(1, 1, "q");
    h.send(1, 1, Method::TxSelect);
    h.publish(1, 1, "", "q", "a");
    h.publish(1, 1, "", "q", "b");
    let c = h.broker.counters();
    assert_eq!((c.messages_received, c.messages_routed), (2, 0), "received on publish, routed on commit");
    h.send(1, 1, Method::TxRollback);
    h.publish(1, 1, "", "q", "c");
    h.send(1, 1, Method::TxCommit);
    let c = h.broker.counters();
    assert_eq!((c.messages_received, c.messages_routed, c.messages_unroutable_dropped), (3, 1, 0));
    assert_eq!(c.messages_received_confirm, 0);
    assert_eq!((c.connections_opened, c.channels_opened, c.channels_closed), (1, 1, 0));
}

#[test]
fn a_direct_reply_counts_as_dropped_and_undelivered_as_in_rabbitmq() {
    let mut h = Harness::new(Config::default());
    h.connect(1, true);
    h.connect(2, true);
    h.open(1, 1);
    h.open(2, 1);
    h.declare(2, 1, "rpc");
    h.consume(1, 1, "amq.rabbitmq.reply-to", "replies", true);
    let props = BasicProperties { reply_to: Some(ShortStr::from("amq.rabbitmq.reply-to")), ..Default::default() };
    h.publish_props(1, 1, "", "rpc", props, "request");
    h.send(2, 1, Method::BasicGet { queue: "rpc".into(), no_ack: true });
    let reply_to = h
        .take(2)
        .into_iter()
        .find_map(|o| match o {
            Out::Content { msg, .. } => msg.decode_properties().reply_to.clone(),
            _ => None,
        })
        .expect("request delivered with a reply_to");
    h.publish(2, 1, "", &reply_to, "answer");
    assert_eq!(h.deliveries(1).len(), 1, "the answer reached the requester");
    let c = h.broker.counters();
    assert_eq!(c.messages_received, 2);
    assert_eq!(c.messages_routed, 1, "only the request went through a queue");
    assert_eq!(c.messages_unroutable_dropped, 1, "the answer counts as dropped, as in RabbitMQ 3.10");
    assert_eq!(c.delivered_get_auto_ack, 1);
    assert_eq!(c.messages_delivered(), 1, "the hand-over to the reply consumer is no delivery");
    // Closing a connection closes its channel too.
    h.broker.connection_closed(2, 0, &mut h.out);
    let c = h.broker.counters();
    assert_eq!((c.connections_opened, c.connections_closed), (2, 1));
    assert_eq!((c.channels_opened, c.channels_closed), (2, 1));
}
