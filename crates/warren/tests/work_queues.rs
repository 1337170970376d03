//! Work queues: round-robin dispatch, manual acknowledgements, requeueing
//! of unacknowledged messages, prefetch (basic.qos), reject / nack /
//! recover, client-side cancel and the consumer acknowledgement timeout.

mod common;

use common::lapin_client::*;
use common::{unique, within, Broker};
use futures_lite::{future, StreamExt};
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicNackOptions, BasicQosOptions, BasicRecoverOptions, BasicRejectOptions,
};
use lapin::{Channel, Consumer};
use std::time::Duration;

/// How long the consumer-timeout test waits for the broker to act on a
/// 2 s `consumer_timeout`.
const ACK_TIMEOUT_ALLOWANCE: Duration = Duration::from_secs(15);

async fn ack(delivery: &Delivery) {
    within("basic.ack", delivery.acker.ack(BasicAckOptions::default())).await.expect("ack");
}

async fn qos(ch: &Channel, prefetch_count: u16, global: bool) {
    within("basic.qos-ok", ch.basic_qos(prefetch_count, BasicQosOptions { global })).await.expect("qos");
}

fn bodies(deliveries: &[Delivery]) -> Vec<String> {
    deliveries.iter().map(body).collect()
}

async fn next_deliveries(consumer: &mut Consumer, n: usize) -> Vec<Delivery> {
    let mut deliveries = Vec::with_capacity(n);
    for _ in 0..n {
        deliveries.push(next_delivery(consumer).await);
    }
    deliveries
}

/// Receives `n` deliveries from whichever of the two consumers gets them
/// (the split is up to the broker), then shows that neither gets more.
/// Returns the highest delivery tag received.
async fn exactly_n_from_either(a: &mut Consumer, b: &mut Consumer, n: usize) -> u64 {
    let mut last = 0;
    for _ in 0..n {
        let d = within("a delivery", future::or(a.next(), b.next())).await.expect("consumer ended").expect("delivery");
        last = last.max(d.delivery_tag);
    }
    assert_no_delivery(a).await;
    assert_no_delivery(b).await;
    last
}

#[tokio::test]
async fn messages_are_dispatched_round_robin() {
    let broker = Broker::start();
    let conn = connect(&broker).await;
    let (ch_a, ch_b, publisher) = (channel(&conn).await, channel(&conn).await, channel(&conn).await);
    let queue = unique("round-robin");
    declare_plain(&publisher, &queue).await;
    let mut a = consume(&ch_a, &queue, true).await;
    let mut b = consume(&ch_b, &queue, true).await;

    publish_all(&publisher, &queue, &["1", "2", "3", "4", "5", "6"]).await;
    assert_eq!(next_bodies(&mut a, 3).await, ["1", "3", "5"]);
    assert_eq!(next_bodies(&mut b, 3).await, ["2", "4", "6"]);
    close(&conn).await;
}

#[tokio::test]
async fn manual_ack_removes_only_acknowledged_messages() {
    let broker = Broker::start();
    let conn = connect(&broker).await;
    let (consumer_ch, other) = (channel(&conn).await, channel(&conn).await);
    let queue = unique("manual-ack");
    declare_plain(&other, &queue).await;
    publish_all(&other, &queue, &["acked", "not acked"]).await;

    let mut consumer = consume(&consumer_ch, &queue, false).await;
    let delivered = next_deliveries(&mut consumer, 2).await;
    assert_eq!(bodies(&delivered), ["acked", "not acked"]);
    ack(&delivered[0]).await;
    // Delivered but unacknowledged: not ready for anyone else.
    assert!(get(&other, &queue, true).await.is_none());

    close_channel(&consumer_ch).await;
    let back = get(&other, &queue, true).await.expect("the unacked message");
    assert_eq!(body(&back.delivery), "not acked");
    assert!(back.delivery.redelivered);
    assert!(get(&other, &queue, true).await.is_none(), "acked one is gone");
    close(&conn).await;
}

/// Leaves `queue` with four unacknowledged messages held by a consumer on
/// `holder`, and a second, idle consumer on `standby` ready to take over.
async fn hold_four_messages(holder: &Channel, standby: &Channel, queue: &str) -> Consumer {
    declare_plain(standby, queue).await;
    let mut first = consume(holder, queue, false).await;
    publish_all(standby, queue, &["m1", "m2", "m3", "m4"]).await;
    let held = next_deliveries(&mut first, 4).await;
    assert_eq!(bodies(&held), ["m1", "m2", "m3", "m4"]);
    let mut second = consume(standby, queue, false).await;
    // The queue has nothing ready: the standby consumer gets nothing.
    assert_no_delivery(&mut second).await;
    second
}

async fn assert_redelivered_in_order(consumer: &mut Consumer) {
    let redelivered = next_deliveries(consumer, 4).await;
    assert_eq!(bodies(&redelivered), ["m1", "m2", "m3", "m4"]);
    assert!(redelivered.iter().all(|d| d.redelivered));
    assert!(!redelivered.iter().any(|d| d.acker.used()));
}

#[tokio::test]
async fn unacked_messages_return_in_order_when_the_channel_closes() {
    let broker = Broker::start();
    let conn = connect(&broker).await;
    let (holder, standby) = (channel(&conn).await, channel(&conn).await);
    let queue = unique("requeue-channel");
    let mut second = hold_four_messages(&holder, &standby, &queue).await;

    close_channel(&holder).await;
    assert_redelivered_in_order(&mut second).await;
    close(&conn).await;
}

#[tokio::test]
async fn unacked_messages_return_in_order_when_the_connection_closes() {
    let broker = Broker::start();
    let (holder_conn, holder) = connect_channel(&broker).await;
    let (standby_conn, standby) = connect_channel(&broker).await;
    let queue = unique("requeue-connection");
    let mut second = hold_four_messages(&holder, &standby, &queue).await;

    close(&holder_conn).await;
    assert_redelivered_in_order(&mut second).await;
    close(&standby_conn).await;
}

#[tokio::test]
async fn prefetch_one_gives_fair_dispatch() {
    let broker = Broker::start();
    let conn = connect(&broker).await;
    let (ch_a, ch_b, publisher) = (channel(&conn).await, channel(&conn).await, channel(&conn).await);
    let queue = unique("fair");
    declare_plain(&publisher, &queue).await;
    qos(&ch_a, 1, false).await;
    qos(&ch_b, 1, false).await;
    let mut a = consume(&ch_a, &queue, false).await;
    let mut b = consume(&ch_b, &queue, false).await;
    publish_all(&publisher, &queue, &["1", "2", "3", "4"]).await;

    let a1 = next_delivery(&mut a).await;
    let b1 = next_delivery(&mut b).await;
    assert_eq!((body(&a1).as_str(), body(&b1).as_str()), ("1", "2"));
    // Both are busy: nothing more until one of them acks.
    assert_no_delivery(&mut a).await;
    assert_no_delivery(&mut b).await;

    ack(&a1).await;
    let a2 = next_delivery(&mut a).await;
    assert_eq!(body(&a2), "3");
    assert_no_delivery(&mut b).await;

    ack(&b1).await;
    assert_eq!(body(&next_delivery(&mut b).await), "4");
    close(&conn).await;
}

#[tokio::test]
async fn prefetch_without_global_limits_each_new_consumer() {
    let broker = Broker::start();
    let conn = connect(&broker).await;
    let (ch, publisher) = (channel(&conn).await, channel(&conn).await);
    let (q0, q1, q2) = (unique("pre-qos"), unique("per-1"), unique("per-2"));
    for queue in [&q0, &q1, &q2] {
        declare_plain(&publisher, queue).await;
        publish_all(&publisher, queue, &["a", "b", "c", "d", "e"]).await;
    }

    // A consumer started before basic.qos is not limited by it.
    let mut unlimited = consume(&ch, &q0, false).await;
    qos(&ch, 2, false).await;
    let mut c1 = consume(&ch, &q1, false).await;
    let mut c2 = consume(&ch, &q2, false).await;

    assert_eq!(next_deliveries(&mut unlimited, 5).await.len(), 5);
    let first = next_deliveries(&mut c1, 2).await;
    next_deliveries(&mut c2, 2).await;
    // Each consumer separately has its two unacked messages.
    assert_no_delivery(&mut c1).await;
    assert_no_delivery(&mut c2).await;

    ack(&first[0]).await;
    assert_eq!(body(&next_delivery(&mut c1).await), "c");
    assert_no_delivery(&mut c2).await;
    close(&conn).await;
}

#[tokio::test]
async fn prefetch_with_global_limits_the_channel_as_a_whole() {
    let broker = Broker::start();
    let conn = connect(&broker).await;
    let (ch, publisher) = (channel(&conn).await, channel(&conn).await);
    let (q1, q2) = (unique("global-1"), unique("global-2"));
    for queue in [&q1, &q2] {
        declare_plain(&publisher, queue).await;
        publish_all(&publisher, queue, &["a", "b", "c", "d", "e"]).await;
    }

    qos(&ch, 2, true).await;
    let mut c1 = consume(&ch, &q1, false).await;
    let mut c2 = consume(&ch, &q2, false).await;
    // Two unacked messages in total across both consumers.
    let last = exactly_n_from_either(&mut c1, &mut c2, 2).await;

    // Acking everything frees the whole window again. (By the last tag, not tag 0: lapin drops
    // the deliveries it has buffered when it sends a multiple ack of tag 0, and the broker's
    // next deliveries can arrive before it does.)
    within("basic.ack", ch.basic_ack(last, BasicAckOptions { multiple: true })).await.expect("ack all");
    exactly_n_from_either(&mut c1, &mut c2, 2).await;
    close(&conn).await;
}

#[tokio::test]
async fn reject_requeues_or_discards_a_single_message() {
    let broker = Broker::start();
    let (conn, ch) = connect_channel(&broker).await;
    let queue = unique("reject");
    declare_plain(&ch, &queue).await;
    publish_all(&ch, &queue, &["m"]).await;

    let first = get(&ch, &queue, false).await.expect("message");
    assert!(!first.delivery.redelivered);
    within("basic.reject", first.delivery.acker.reject(BasicRejectOptions { requeue: true }))
        .await
        .expect("reject with requeue");

    let again = get(&ch, &queue, false).await.expect("requeued message");
    assert_eq!(body(&again.delivery), "m");
    assert!(again.delivery.redelivered);
    within("basic.reject", again.delivery.acker.reject(BasicRejectOptions { requeue: false }))
        .await
        .expect("reject without requeue");
    assert!(get(&ch, &queue, true).await.is_none(), "discarded");
    close(&conn).await;
}

#[tokio::test]
async fn nack_multiple_requeues_in_order_or_discards() {
    let broker = Broker::start();
    let (conn, ch) = connect_channel(&broker).await;
    let queue = unique("nack");
    declare_plain(&ch, &queue).await;
    publish_all(&ch, &queue, &["1", "2", "3", "4"]).await;

    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(get(&ch, &queue, false).await.expect("message").delivery);
    }
    // nack(multiple) of the third tag covers the first three; "4" was never
    // delivered and stays behind them.
    within("basic.nack", ch.basic_nack(got[2].delivery_tag, BasicNackOptions { multiple: true, requeue: true }))
        .await
        .expect("nack multiple with requeue");

    let mut again = Vec::new();
    for _ in 0..4 {
        again.push(get(&ch, &queue, false).await.expect("message").delivery);
    }
    assert_eq!(bodies(&again), ["1", "2", "3", "4"]);
    assert_eq!(again.iter().map(|d| d.redelivered).collect::<Vec<_>>(), [true, true, true, false]);

    within("basic.nack", ch.basic_nack(again[3].delivery_tag, BasicNackOptions { multiple: true, requeue: false }))
        .await
        .expect("nack multiple without requeue");
    assert!(get(&ch, &queue, true).await.is_none(), "all discarded");
    close(&conn).await;
}

#[tokio::test]
async fn basic_recover_redelivers_unacked_messages() {
    let broker = Broker::start();
    let (conn, ch) = connect_channel(&broker).await;
    let queue = unique("recover");
    declare_plain(&ch, &queue).await;
    publish_all(&ch, &queue, &["1", "2"]).await;
    let mut consumer = consume(&ch, &queue, false).await;
    let first = next_deliveries(&mut consumer, 2).await;
    assert!(first.iter().all(|d| !d.redelivered));

    within("basic.recover-ok", ch.basic_recover(BasicRecoverOptions { requeue: true })).await.expect("recover");
    let again = next_deliveries(&mut consumer, 2).await;
    assert_eq!(bodies(&again), ["1", "2"]);
    assert!(again.iter().all(|d| d.redelivered));
    assert!(again[0].delivery_tag > first[1].delivery_tag, "fresh tags");

    for delivery in &again {
        ack(delivery).await;
    }
    close_channel(&ch).await;
    let check = channel(&conn).await;
    assert!(get(&check, &queue, true).await.is_none(), "all acked");
    close(&conn).await;
}

#[tokio::test]
async fn client_cancel_stops_deliveries_but_keeps_unacked_messages() {
    let broker = Broker::start();
    let conn = connect(&broker).await;
    let (ch, other) = (channel(&conn).await, channel(&conn).await);
    let queue = unique("cancel");
    declare_plain(&other, &queue).await;
    let mut consumer = consume(&ch, &queue, false).await;
    publish(&other, "", &queue, b"before").await;
    let held = next_delivery(&mut consumer).await;

    within("basic.cancel-ok", ch.basic_cancel(consumer.tag().as_str(), BasicCancelOptions::default()))
        .await
        .expect("cancel");
    expect_cancelled(&mut consumer).await;

    publish(&other, "", &queue, b"after").await;
    let after = get(&other, &queue, true).await.expect("undelivered message");
    assert_eq!(body(&after.delivery), "after");
    assert_eq!(after.message_count, 0, "the held message is still unacked");

    // The cancelled consumer's delivery can still be acknowledged.
    ack(&held).await;
    close_channel(&ch).await;
    assert!(get(&other, &queue, true).await.is_none(), "nothing requeued");
    close(&conn).await;
}

/// Consumer acknowledgement timeout, as RabbitMQ 4 does it by default
/// (`consumer_timeout_response = notify_consumer`): a consumer whose client
/// announced consumer_cancel_notify (lapin does) is cancelled with
/// basic.cancel, its unacked messages go back to the queue, and the channel
/// stays open; a late ack of a reclaimed delivery is ignored, not an error.
/// (RabbitMQ 3.10 closed the channel with 406 instead; Warren does that only
/// for clients without consumer_cancel_notify, see warren-core's tests.)
#[tokio::test]
async fn consumer_ack_timeout_cancels_the_consumer_and_requeues() {
    let Some(broker) = Broker::start_with_config("consumer_timeout = 2000\n") else {
        return;
    };
    let conn = connect(&broker).await;
    let (ch, other) = (channel(&conn).await, channel(&conn).await);
    let queue = unique("ack-timeout");
    declare_plain(&other, &queue).await;
    let mut consumer = consume(&ch, &queue, false).await;
    publish(&other, "", &queue, b"slow").await;
    let held = next_delivery(&mut consumer).await;
    assert_eq!(body(&held), "slow");

    // The broker checks the timeout periodically, not at the exact
    // deadline: allow several times the 2 s timeout.
    let outcome = tokio::time::timeout(ACK_TIMEOUT_ALLOWANCE, consumer.next())
        .await
        .unwrap_or_else(|_| panic!("no ack timeout within {ACK_TIMEOUT_ALLOWANCE:?}"));
    match outcome {
        None => {}
        Some(Err(error)) => panic!("expected basic.cancel, the channel was closed: {error}"),
        Some(Ok(delivery)) => panic!("unexpected delivery of {:?}", body(&delivery)),
    }
    assert!(ch.status().connected(), "the channel stays open");

    // The message is back in the queue, marked redelivered.
    let mut next = consume(&other, &queue, true).await;
    let back = next_delivery(&mut next).await;
    assert_eq!(body(&back), "slow");
    assert!(back.redelivered);

    // A late ack of the reclaimed delivery is ignored: the channel still works.
    ack(&held).await;
    declare_plain(&ch, &unique("after-late-ack")).await;
    assert!(ch.status().connected());
    close(&conn).await;
}
