//! Queue lifecycle and basic.get: declare (idempotent, inequivalent,
//! server-named, exclusive, auto-delete), delete, purge, passive declares,
//! get-ok / get-empty, and server-side consumer cancellation.

mod common;

use common::code::{NOT_FOUND, PRECONDITION_FAILED, RESOURCE_LOCKED};
use common::lapin_client::*;
use common::{eventually, unique, within, Broker};
use lapin::options::{BasicCancelOptions, QueueDeleteOptions, QueuePurgeOptions};
use lapin::options::{BasicConsumeOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::Channel;

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() }
}

fn exclusive() -> QueueDeclareOptions {
    QueueDeclareOptions { exclusive: true, ..QueueDeclareOptions::default() }
}

fn auto_delete() -> QueueDeclareOptions {
    QueueDeclareOptions { auto_delete: true, ..QueueDeclareOptions::default() }
}

async fn delete(ch: &Channel, queue: &str, options: QueueDeleteOptions) -> lapin::Result<u32> {
    within("queue.delete-ok", ch.queue_delete(queue, options)).await
}

/// Passive declares `queue` on a fresh channel of `conn` (a 404 closes the
/// channel) and reports whether the queue exists.
async fn queue_exists(conn: &lapin::Connection, queue: &str) -> bool {
    let ch = channel(conn).await;
    match declare_passive(&ch, queue).await {
        Ok(_) => {
            close_channel(&ch).await;
            true
        }
        Err(e) => {
            assert_eq!(reply_code(&e), NOT_FOUND, "passive declare of {queue}: {e}");
            false
        }
    }
}

#[tokio::test]
async fn hello_world_declare_publish_consume_with_auto_ack() {
    let broker = Broker::start();
    let conn = connect(&broker).await;
    // Confirms make the publish below complete only once the message is
    // queued, so the message count that follows is deterministic.
    let ch = confirm_channel(&conn).await;
    let queue = unique("hello");

    let first = declare_plain(&ch, &queue).await;
    assert_eq!(first.name().as_str(), queue);
    assert_eq!(first.message_count(), 0);
    assert_eq!(first.consumer_count(), 0);
    // Declaring again with the same flags is a no-op.
    let again = declare_plain(&ch, &queue).await;
    assert_eq!(again.name().as_str(), queue);

    publish(&ch, "", &queue, b"Hello World!").await;
    let counted = declare_passive(&ch, &queue).await.expect("queue exists");
    assert_eq!(counted.message_count(), 1);

    let mut consumer = consume(&ch, &queue, true).await;
    let delivery = next_delivery(&mut consumer).await;
    assert_eq!(body(&delivery), "Hello World!");
    assert_eq!(delivery.exchange.as_str(), "");
    assert_eq!(delivery.routing_key.as_str(), queue);
    assert!(!delivery.redelivered);

    // Auto-ack removed the message on delivery.
    let after = declare_passive(&ch, &queue).await.expect("queue exists");
    assert_eq!(after.message_count(), 0);
    assert_eq!(after.consumer_count(), 1);
    close(&conn).await;
}

#[tokio::test]
async fn redeclare_with_different_flags_or_arguments_is_precondition_failed() {
    let broker = Broker::start();
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    let queue = unique("inequivalent");
    let mut arguments = FieldTable::default();
    arguments.insert("x-max-length".into(), AMQPValue::LongInt(10));
    within("queue.declare-ok", ch.queue_declare(&queue, QueueDeclareOptions::default(), arguments))
        .await
        .expect("declare with x-max-length");

    // Each inequivalent redeclare closes its channel with 406.
    for options in [durable(), auto_delete()] {
        let other = channel(&conn).await;
        let mut same_args = FieldTable::default();
        same_args.insert("x-max-length".into(), AMQPValue::LongInt(10));
        assert_code(
            within("queue.declare", other.queue_declare(&queue, options, same_args)).await,
            PRECONDITION_FAILED,
        );
        assert!(!other.status().connected());
    }
    let other = channel(&conn).await;
    let mut other_args = FieldTable::default();
    other_args.insert("x-max-length".into(), AMQPValue::LongInt(20));
    assert_code(
        within("queue.declare", other.queue_declare(&queue, QueueDeclareOptions::default(), other_args)).await,
        PRECONDITION_FAILED,
    );

    // The connection and its other channels are unaffected.
    assert!(ch.status().connected());
    publish(&ch, "", &queue, b"still fine").await;
    let message = get(&ch, &queue, true).await.expect("message");
    assert_eq!(body(&message.delivery), "still fine");
    let fresh = channel(&conn).await;
    declare_passive(&fresh, &queue).await.expect("queue exists");
    close(&conn).await;
}

#[tokio::test]
async fn server_named_queue_gets_an_amq_gen_name() {
    let broker = Broker::start();
    let (conn, ch) = connect_channel(&broker).await;
    let queue = declare(&ch, "", exclusive()).await;
    let name = queue.name().as_str().to_string();
    assert!(name.starts_with("amq.gen-"), "server-named queue {name:?}");
    let second = declare(&ch, "", exclusive()).await;
    assert_ne!(second.name().as_str(), name, "each server name is unique");

    publish(&ch, "", &name, b"to a generated name").await;
    let message = get(&ch, &name, true).await.expect("message");
    assert_eq!(body(&message.delivery), "to a generated name");
    close(&conn).await;
}

#[tokio::test]
async fn exclusive_queue_is_locked_to_its_connection_and_deleted_with_it() {
    let broker = Broker::start();
    let (owner, owner_ch) = connect_channel(&broker).await;
    let queue = unique("exclusive");
    declare(&owner_ch, &queue, exclusive()).await;

    let other = connect(&broker).await;
    // Declaring, passively declaring or consuming from another connection:
    // 405 RESOURCE_LOCKED, each closing the channel that tried.
    assert_code(
        within("queue.declare", channel(&other).await.queue_declare(&queue, exclusive(), FieldTable::default())).await,
        RESOURCE_LOCKED,
    );
    assert_code(declare_passive(&channel(&other).await, &queue).await, RESOURCE_LOCKED);
    assert_code(
        within(
            "basic.consume",
            channel(&other).await.basic_consume(&queue, "", BasicConsumeOptions::default(), FieldTable::default()),
        )
        .await,
        RESOURCE_LOCKED,
    );

    // The owner uses it freely.
    publish(&owner_ch, "", &queue, b"mine").await;
    let mut consumer = consume(&owner_ch, &queue, true).await;
    assert_eq!(body(&next_delivery(&mut consumer).await), "mine");

    close(&owner).await;
    // Deletion happens as the broker cleans up the closed connection; there
    // is no event to await, so poll.
    eventually("the exclusive queue to be deleted", || async { !queue_exists(&other, &queue).await }).await;
    close(&other).await;
}

#[tokio::test]
async fn auto_delete_queue_is_deleted_when_its_last_consumer_cancels() {
    let broker = Broker::start();
    let (conn, ch) = connect_channel(&broker).await;
    let queue = unique("auto-delete");
    declare(&ch, &queue, auto_delete()).await;

    let first = consume(&ch, &queue, true).await;
    let second = consume(&ch, &queue, true).await;
    within("basic.cancel-ok", ch.basic_cancel(first.tag().as_str(), BasicCancelOptions::default()))
        .await
        .expect("cancel first consumer");
    let remaining = declare_passive(&ch, &queue).await.expect("queue survives while a consumer remains");
    assert_eq!(remaining.consumer_count(), 1);

    within("basic.cancel-ok", ch.basic_cancel(second.tag().as_str(), BasicCancelOptions::default()))
        .await
        .expect("cancel second consumer");
    eventually("the auto-delete queue to be deleted", || async { !queue_exists(&conn, &queue).await }).await;
    close(&conn).await;
}

#[tokio::test]
async fn auto_delete_queue_without_consumers_is_kept() {
    let broker = Broker::start();
    let (conn, ch) = connect_channel(&broker).await;
    let queue = unique("auto-delete-unused");
    declare(&ch, &queue, auto_delete()).await;
    publish(&ch, "", &queue, b"waiting").await;
    let message = get(&ch, &queue, true).await.expect("message");
    assert_eq!(body(&message.delivery), "waiting");
    assert!(queue_exists(&conn, &queue).await);
    delete(&ch, &queue, QueueDeleteOptions::default()).await.expect("delete");
    close(&conn).await;
}

#[tokio::test]
async fn queue_delete_if_unused_and_if_empty_are_preconditions() {
    let broker = Broker::start();
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let queue = unique("delete-conditions");
    declare_plain(&ch, &queue).await;

    // A consumer makes the queue "used".
    let consumer_ch = channel(&conn).await;
    let consumer = consume(&consumer_ch, &queue, false).await;
    let deleter = channel(&conn).await;
    let if_unused = QueueDeleteOptions { if_unused: true, ..QueueDeleteOptions::default() };
    assert_code(delete(&deleter, &queue, if_unused).await, PRECONDITION_FAILED);
    within("basic.cancel-ok", consumer_ch.basic_cancel(consumer.tag().as_str(), BasicCancelOptions::default()))
        .await
        .expect("cancel");

    // Messages make the queue non-empty.
    publish_all(&ch, &queue, &["a", "b", "c"]).await;
    let deleter = channel(&conn).await;
    let if_empty = QueueDeleteOptions { if_empty: true, ..QueueDeleteOptions::default() };
    assert_code(delete(&deleter, &queue, if_empty).await, PRECONDITION_FAILED);
    assert!(queue_exists(&conn, &queue).await, "failed deletes keep the queue");

    // Now unused: if-unused succeeds and reports the messages it dropped.
    let deleted = delete(&ch, &queue, if_unused).await.expect("delete");
    assert_eq!(deleted, 3);
    assert!(!queue_exists(&conn, &queue).await);
    close(&conn).await;
}

#[tokio::test]
async fn queue_purge_returns_the_count_of_ready_messages() {
    let broker = Broker::start();
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let queue = unique("purge");
    declare_plain(&ch, &queue).await;
    publish_all(&ch, &queue, &["1", "2", "3", "4"]).await;

    // One message is delivered but unacknowledged: purge leaves it alone.
    let holder = channel(&conn).await;
    let held = get(&holder, &queue, false).await.expect("message");
    assert_eq!(body(&held.delivery), "1");

    let purged = within("queue.purge-ok", ch.queue_purge(&queue, QueuePurgeOptions::default())).await.expect("purge");
    assert_eq!(purged, 3);
    assert!(get(&ch, &queue, true).await.is_none());

    // The unacknowledged message survives the purge and comes back when its
    // channel closes.
    close_channel(&holder).await;
    let back = get(&ch, &queue, true).await.expect("requeued message");
    assert_eq!(body(&back.delivery), "1");
    assert!(back.delivery.redelivered);
    close(&conn).await;
}

#[tokio::test]
async fn passive_declare_of_a_missing_queue_is_not_found() {
    let broker = Broker::start();
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    assert_code(declare_passive(&ch, &unique("missing")).await, NOT_FOUND);
    assert!(!ch.status().connected());
    // The connection is still usable.
    let fresh = channel(&conn).await;
    declare_plain(&fresh, &unique("after-404")).await;
    close(&conn).await;
}

#[tokio::test]
async fn basic_get_returns_messages_with_remaining_count_then_empty() {
    let broker = Broker::start();
    let (conn, ch) = connect_channel(&broker).await;
    let queue = unique("get");
    declare_plain(&ch, &queue).await;
    assert!(get(&ch, &queue, true).await.is_none(), "get-empty");

    publish_all(&ch, &queue, &["first", "second", "third"]).await;
    for (expected_body, remaining) in [("first", 2), ("second", 1), ("third", 0)] {
        let message = get(&ch, &queue, true).await.expect("get-ok");
        assert_eq!(body(&message.delivery), expected_body);
        assert_eq!(message.message_count, remaining);
        assert_eq!(message.delivery.exchange.as_str(), "");
        assert_eq!(message.delivery.routing_key.as_str(), queue);
        assert!(!message.delivery.redelivered);
    }
    assert!(get(&ch, &queue, true).await.is_none(), "get-empty");

    // Delivery tags count up per channel, shared by gets and deliveries.
    publish_all(&ch, &queue, &["x", "y"]).await;
    let x = get(&ch, &queue, false).await.expect("x");
    let y = get(&ch, &queue, false).await.expect("y");
    assert_eq!(y.delivery.delivery_tag, x.delivery.delivery_tag + 1);
    let other = channel(&conn).await;
    publish(&other, "", &queue, b"z").await;
    let z = get(&other, &queue, false).await.expect("z");
    assert_eq!(z.delivery.delivery_tag, 1, "tags start at 1 on each channel");
    close(&conn).await;
}

#[tokio::test]
async fn deleting_a_queue_cancels_its_consumers() {
    let broker = Broker::start();
    let (consumer_conn, consumer_ch) = connect_channel(&broker).await;
    let queue = unique("deleted-under-consumer");
    declare_plain(&consumer_ch, &queue).await;
    let mut consumer = consume(&consumer_ch, &queue, false).await;

    let (other_conn, other_ch) = connect_channel(&broker).await;
    delete(&other_ch, &queue, QueueDeleteOptions::default()).await.expect("delete from another connection");

    // The broker sends basic.cancel (the client announced
    // consumer_cancel_notify); the consumer's channel stays open.
    expect_cancelled(&mut consumer).await;
    assert!(consumer_ch.status().connected());
    declare_plain(&consumer_ch, &unique("still-open")).await;
    close(&other_conn).await;
    close(&consumer_conn).await;
}
