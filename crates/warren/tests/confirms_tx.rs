//! Publisher confirms and transactions, exercised with the `amqprs` client
//! (its callbacks expose the delivery tags of basic.ack / basic.nack).

mod common;

use amqprs::channel::{BasicAckArguments, BasicGetArguments, BasicPublishArguments, Channel};
use amqprs::channel::{ConfirmSelectArguments, QueueDeclareArguments};
use amqprs::BasicProperties;
use common::amqprs_client::*;
use common::code::NO_ROUTE;
use common::{unique, within, Broker};
use std::collections::BTreeSet;

async fn confirm_select(ch: &Channel) {
    within("confirm.select-ok", ch.confirm_select(ConfirmSelectArguments::default())).await.expect("confirm.select");
}

async fn declare_queue(ch: &Channel) -> String {
    let queue = unique("confirms");
    within("queue.declare-ok", ch.queue_declare(QueueDeclareArguments::new(&queue))).await.expect("declare queue");
    queue
}

/// Message count of `queue`, from a passive declare.
async fn message_count(ch: &Channel, queue: &str) -> u32 {
    let args = QueueDeclareArguments::new(queue).passive(true).finish();
    let (_, messages, _) =
        within("queue.declare-ok", ch.queue_declare(args)).await.expect("passive declare").expect("declare-ok");
    messages
}

/// Body of the next message in `queue` (basic.get), if any.
async fn get(ch: &Channel, queue: &str, no_ack: bool) -> Option<(u64, bool, String)> {
    let args = BasicGetArguments::new(queue).no_ack(no_ack).finish();
    within("basic.get", ch.basic_get(args)).await.expect("basic.get").map(|(get_ok, _, content)| {
        (get_ok.delivery_tag(), get_ok.redelivered(), String::from_utf8_lossy(&content).into_owned())
    })
}

async fn ack(ch: &Channel, delivery_tag: u64) {
    within("basic.ack", ch.basic_ack(BasicAckArguments::new(delivery_tag, false))).await.expect("basic.ack");
}

/// Waits until every tag in `expected` has been acked exactly once, failing
/// on a nack, a duplicate or an unexpected tag. `multiple` acks cover all
/// outstanding tags up to theirs.
async fn await_acks(ch: &mut EventChannel, expected: std::ops::RangeInclusive<u64>) {
    let mut outstanding: BTreeSet<u64> = expected.clone().collect();
    while !outstanding.is_empty() {
        match ch.next_event().await {
            Event::Ack { delivery_tag, multiple: false } => assert!(
                outstanding.remove(&delivery_tag),
                "unexpected or repeated ack of tag {delivery_tag} (expecting {expected:?})"
            ),
            Event::Ack { delivery_tag, multiple: true } => {
                assert!(
                    outstanding.contains(&delivery_tag),
                    "multiple ack of unexpected tag {delivery_tag} (expecting {expected:?})"
                );
                outstanding.retain(|tag| *tag > delivery_tag);
            }
            other => panic!("expected acks for {expected:?}, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn every_publish_is_acked_with_per_channel_tags_starting_at_one() {
    let broker = Broker::start();
    let conn = connect(&broker).await;
    let mut first = channel(&conn).await;
    let mut second = channel(&conn).await;
    let queue = declare_queue(&first).await;
    confirm_select(&first).await;
    confirm_select(&second).await;

    for i in 1..=10 {
        publish(&first, "", &queue, &format!("first {i}")).await;
    }
    await_acks(&mut first, 1..=10).await;

    // Tags are per channel: the second channel starts at 1 as well...
    for i in 1..=3 {
        publish(&second, "", &queue, &format!("second {i}")).await;
    }
    await_acks(&mut second, 1..=3).await;
    // ...and the first one carries on from where it was.
    publish(&first, "", &queue, "first 11").await;
    await_acks(&mut first, 11..=11).await;

    assert_eq!(message_count(&first, &queue).await, 14);
    conn.close().await.expect("close");
}

#[tokio::test]
async fn unroutable_messages_are_acked_and_mandatory_ones_returned_first() {
    let broker = Broker::start();
    let (conn, mut ch) = connect_channel(&broker).await;
    confirm_select(&ch).await;
    let missing_queue = unique("unroutable");

    // Unroutable and not mandatory: simply acked (not nacked).
    publish(&ch, "", &missing_queue, "dropped").await;
    await_acks(&mut ch, 1..=1).await;

    // Unroutable and mandatory: basic.return, then basic.ack.
    let mut args = BasicPublishArguments::new("", &missing_queue);
    args.mandatory = true;
    within("basic.publish", ch.basic_publish(BasicProperties::default(), b"returned".to_vec(), args))
        .await
        .expect("publish");
    match ch.next_event().await {
        Event::Returned(returned) => {
            assert_eq!(returned.code, NO_ROUTE);
            assert_eq!(returned.body, "returned");
        }
        other => panic!("expected basic.return before the ack, got {other:?}"),
    }
    await_acks(&mut ch, 2..=2).await;
    conn.close().await.expect("close");
}

#[tokio::test]
async fn transactional_publishes_appear_only_on_commit() {
    let broker = Broker::start();
    let conn = connect(&broker).await;
    let tx = channel(&conn).await;
    let observer = channel(&conn).await;
    let queue = declare_queue(&observer).await;
    within("tx.select-ok", tx.tx_select()).await.expect("tx.select");

    publish(&tx, "", &queue, "rolled back").await;
    within("tx.rollback-ok", tx.tx_rollback()).await.expect("tx.rollback");
    publish(&tx, "", &queue, "committed 1").await;
    publish(&tx, "", &queue, "committed 2").await;
    assert!(get(&observer, &queue, true).await.is_none(), "nothing is visible before the commit");

    within("tx.commit-ok", tx.tx_commit()).await.expect("tx.commit");
    let mut bodies = Vec::new();
    while let Some((_, _, body)) = get(&observer, &queue, true).await {
        bodies.push(body);
    }
    assert_eq!(bodies, ["committed 1", "committed 2"]);

    // The channel stays transactional: a further rollback discards again.
    publish(&tx, "", &queue, "rolled back too").await;
    within("tx.rollback-ok", tx.tx_rollback()).await.expect("tx.rollback");
    within("tx.commit-ok", tx.tx_commit()).await.expect("empty commit");
    assert!(get(&observer, &queue, true).await.is_none());
    conn.close().await.expect("close");
}

#[tokio::test]
async fn transactional_acks_take_effect_only_on_commit() {
    let broker = Broker::start();
    let conn = connect(&broker).await;
    let tx = channel(&conn).await;
    let observer = channel(&conn).await;
    let queue = declare_queue(&observer).await;
    // Published on the channel that gets them, so they are there in time.
    publish(&tx, "", &queue, "ack rolled back").await;
    publish(&tx, "", &queue, "ack committed").await;

    within("tx.select-ok", tx.tx_select()).await.expect("tx.select");
    let (tag, _, body) = get(&tx, &queue, false).await.expect("first message");
    assert_eq!(body, "ack rolled back");
    ack(&tx, tag).await;
    within("tx.rollback-ok", tx.tx_rollback()).await.expect("tx.rollback");

    let (tag, _, body) = get(&tx, &queue, false).await.expect("second message");
    assert_eq!(body, "ack committed");
    ack(&tx, tag).await;
    within("tx.commit-ok", tx.tx_commit()).await.expect("tx.commit");

    // The first message is still unacknowledged (not ready), the second is
    // gone; closing the channel gives the first one back.
    assert!(get(&observer, &queue, true).await.is_none());
    within("channel.close-ok", tx.channel.close()).await.expect("close tx channel");
    let (_, redelivered, body) = get(&observer, &queue, true).await.expect("requeued message");
    assert_eq!(body, "ack rolled back");
    assert!(redelivered);
    assert!(get(&observer, &queue, true).await.is_none());
    conn.close().await.expect("close");
}
