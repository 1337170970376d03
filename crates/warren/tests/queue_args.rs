//! Queue arguments, exercised with the `lapin` client: message TTL
//! (`x-message-ttl` and the per-message `expiration` property), queue TTL
//! (`x-expires`), length limits (`x-max-length`, `x-max-length-bytes`,
//! `x-overflow`), priority queues (`x-max-priority`), queue types
//! (`x-queue-type`), the validation of all of these, and (Warren only) TTL
//! deadlines and priority order surviving a restart.
//!
//! Dead-lettering of expired and overflowed messages is in `dead_letter.rs`.
//!
//! Expiry has no event a client can await: the tests poll the message count
//! (passive queue.declare) with [`eventually`], and check that the expiry did
//! not come before the TTL.

mod common;

use common::code::PRECONDITION_FAILED;
use common::lapin_client::*;
use common::{eventually, unique, within, Broker};
use lapin::options::{BasicAckOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions, QueueDeclareOptions};
use lapin::publisher_confirm::Confirmation;
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel};
use std::time::{Duration, Instant};

fn int(value: i32) -> AMQPValue {
    AMQPValue::LongInt(value)
}

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() }
}

fn expiring(ms: &str) -> BasicProperties {
    BasicProperties::default().with_expiration(ms.into())
}

fn with_priority(priority: u8) -> BasicProperties {
    BasicProperties::default().with_priority(priority)
}

/// Declares a plain queue with `arguments` under a unique name.
async fn queue_with(ch: &Channel, prefix: &str, arguments: &[(&str, AMQPValue)]) -> String {
    let queue = unique(prefix);
    declare_with(ch, &queue, QueueDeclareOptions::default(), field_table(arguments)).await;
    queue
}

/// Waits until `queue` holds `n` ready messages.
async fn await_count(ch: &Channel, queue: &str, n: u32) {
    eventually(&format!("{queue} to hold {n} messages"), || async { message_count(ch, queue).await == n }).await;
}

/// Waits until `queue` is empty and returns how long that took from `since`.
async fn await_empty_since(ch: &Channel, queue: &str, since: Instant) -> Duration {
    await_count(ch, queue, 0).await;
    since.elapsed()
}

/// Whether `queue` exists, found out without "using" it: a mandatory
/// publish through the default exchange is returned if there is no such
/// queue. (A passive declare, a basic.get or a consume would reset an
/// `x-expires` timer.) `ch` must be in confirm mode.
async fn queue_exists_untouched(ch: &Channel, queue: &str) -> bool {
    let options = BasicPublishOptions { mandatory: true, ..BasicPublishOptions::default() };
    match publish_confirmation(ch, "", queue, b"probe", options, BasicProperties::default()).await {
        Confirmation::Ack(None) => true,
        Confirmation::Ack(Some(_)) => false,
        other => panic!("unexpected confirmation of a probe: {other:?}"),
    }
}

/// Publishes `body` and returns whether the broker acked (true) or nacked it.
async fn publish_acked(ch: &Channel, queue: &str, body: &str) -> bool {
    match publish_confirmation(
        ch,
        "",
        queue,
        body.as_bytes(),
        BasicPublishOptions::default(),
        BasicProperties::default(),
    )
    .await
    {
        Confirmation::Ack(_) => true,
        Confirmation::Nack(_) => false,
        Confirmation::NotRequested => panic!("the channel is not in confirm mode"),
    }
}

// ---------------------------------------------------------------- message TTL

#[tokio::test]
async fn queue_message_ttl_expires_messages_not_consumed_in_time() {
    const TTL: Duration = Duration::from_millis(300);
    let broker = Broker::start();
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let queue = queue_with(&ch, "queue-ttl", &[("x-message-ttl", int(300))]).await;

    // Taken within the TTL: delivered.
    publish(&ch, "", &queue, b"fresh").await;
    let fresh = get(&ch, &queue, true).await.expect("a message consumed within its TTL");
    assert_eq!(body(&fresh.delivery), "fresh");

    let before = Instant::now();
    publish(&ch, "", &queue, b"stale").await;
    let gone_after = await_empty_since(&ch, &queue, before).await;
    assert!(gone_after >= TTL, "the message expired after {gone_after:?}, before its TTL of {TTL:?}");
    assert!(get(&ch, &queue, true).await.is_none(), "an expired message is never delivered");
    // A consumer started now gets nothing either.
    let mut consumer = consume(&ch, &queue, true).await;
    assert_no_delivery(&mut consumer).await;
    close(&conn).await;
}

#[tokio::test]
async fn per_message_expiration_expires_only_that_message() {
    let broker = Broker::start();
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let queue = unique("message-ttl");
    declare_plain(&ch, &queue).await;

    let before = Instant::now();
    publish_with(&ch, "", &queue, b"expiring", expiring("200")).await;
    publish_with(&ch, "", &queue, b"lasting", BasicProperties::default()).await;
    await_count(&ch, &queue, 1).await;
    assert!(before.elapsed() >= Duration::from_millis(200), "expired before its 200 ms");

    let left = get(&ch, &queue, true).await.expect("the message without expiration");
    assert_eq!(body(&left.delivery), "lasting");
    assert_eq!(left.delivery.properties.expiration(), &None);
    assert!(get(&ch, &queue, true).await.is_none());
    close(&conn).await;
}

#[tokio::test]
async fn a_message_still_within_its_expiration_keeps_the_property() {
    let broker = Broker::start();
    let (conn, ch) = connect_channel(&broker).await;
    let queue = unique("expiration-kept");
    declare_plain(&ch, &queue).await;
    publish_with(&ch, "", &queue, b"m", expiring("60000")).await;
    let message = get(&ch, &queue, true).await.expect("message");
    assert_eq!(message.delivery.properties.expiration().as_ref().map(|e| e.as_str()), Some("60000"));
    close(&conn).await;
}

#[tokio::test]
async fn the_lower_of_queue_ttl_and_message_expiration_wins() {
    let broker = Broker::start();
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let short_queue_ttl = queue_with(&ch, "short-queue-ttl", &[("x-message-ttl", int(200))]).await;
    let long_queue_ttl = queue_with(&ch, "long-queue-ttl", &[("x-message-ttl", int(60_000))]).await;

    let before = Instant::now();
    // The queue's 200 ms beats the message's 60 s ...
    publish_with(&ch, "", &short_queue_ttl, b"long expiration", expiring("60000")).await;
    // ... and the message's 200 ms beats the queue's 60 s.
    publish_with(&ch, "", &long_queue_ttl, b"short expiration", expiring("200")).await;
    publish_with(&ch, "", &long_queue_ttl, b"queue ttl only", BasicProperties::default()).await;

    await_count(&ch, &short_queue_ttl, 0).await;
    await_count(&ch, &long_queue_ttl, 1).await;
    assert!(before.elapsed() >= Duration::from_millis(200), "expired before 200 ms");
    assert!(get(&ch, &short_queue_ttl, true).await.is_none());
    assert_eq!(get_all(&ch, &long_queue_ttl).await, ["queue ttl only"]);
    close(&conn).await;
}

/// RabbitMQ drops expired messages only from the head of a queue, but never
/// delivers one: a message that expired behind a live one is skipped when
/// its turn comes.
#[tokio::test]
async fn an_expired_message_behind_a_live_one_is_never_delivered() {
    let broker = Broker::start();
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let queue = unique("expired-behind");
    declare_plain(&ch, &queue).await;
    // A queue whose message expires no earlier than "short" below: once it
    // is empty, "short" has expired too.
    let clock = queue_with(&ch, "clock", &[("x-message-ttl", int(100))]).await;

    publish_with(&ch, "", &queue, b"head", BasicProperties::default()).await;
    publish_with(&ch, "", &queue, b"short", expiring("100")).await;
    publish_with(&ch, "", &queue, b"tail", BasicProperties::default()).await;
    publish(&ch, "", &clock, b"tick").await;
    await_count(&ch, &clock, 0).await;

    let mut consumer = consume(&ch, &queue, true).await;
    assert_eq!(next_bodies(&mut consumer, 2).await, ["head", "tail"]);
    assert_no_delivery(&mut consumer).await;
    close(&conn).await;
}

#[tokio::test]
async fn zero_ttl_delivers_only_to_a_consumer_ready_at_once() {
    let broker = Broker::start();
    let conn = connect(&broker).await;
    let (ch, consumer_ch) = (confirm_channel(&conn).await, channel(&conn).await);
    let queue = queue_with(&ch, "zero-ttl", &[("x-message-ttl", int(0))]).await;

    // No consumer: dropped at once.
    publish(&ch, "", &queue, b"nobody there").await;
    await_count(&ch, &queue, 0).await;
    assert!(get(&ch, &queue, true).await.is_none());

    // A consumer with capacity takes the message at once.
    within("basic.qos-ok", consumer_ch.basic_qos(1, BasicQosOptions::default())).await.expect("qos");
    let mut consumer = consume(&consumer_ch, &queue, false).await;
    publish(&ch, "", &queue, b"taken").await;
    let taken = next_delivery(&mut consumer).await;
    assert_eq!(body(&taken), "taken");

    // The consumer is at its prefetch limit: the next message cannot be
    // delivered at once and is dropped, not kept for later.
    publish(&ch, "", &queue, b"consumer busy").await;
    await_count(&ch, &queue, 0).await;
    within("basic.ack", taken.acker.ack(BasicAckOptions::default())).await.expect("ack");
    publish(&ch, "", &queue, b"after ack").await;
    assert_eq!(body(&next_delivery(&mut consumer).await), "after ack");
    close(&conn).await;
}

#[tokio::test]
async fn an_invalid_expiration_property_is_precondition_failed() {
    let broker = Broker::start();
    let conn = connect(&broker).await;
    for expiration in ["soon", "-1"] {
        let ch = channel(&conn).await;
        let watch = CloseWatch::new(&ch);
        let _ = ch.basic_publish("", "anywhere", BasicPublishOptions::default(), b"m", expiring(expiration)).await;
        assert_eq!(watch.code().await, PRECONDITION_FAILED, "expiration {expiration:?}");
    }
    assert_broker_alive(&broker).await;
    close(&conn).await;
}

// ------------------------------------------------------------------ queue TTL

#[tokio::test]
async fn expires_deletes_an_unused_queue() {
    let broker = Broker::start();
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let before = Instant::now();
    // Messages in it do not make a queue "used".
    let queue = queue_with(&ch, "expires", &[("x-expires", int(300))]).await;
    publish(&ch, "", &queue, b"left behind").await;

    eventually("the unused queue to be deleted", || async { !queue_exists_untouched(&ch, &queue).await }).await;
    assert!(before.elapsed() >= Duration::from_millis(300), "deleted before its 300 ms");
    assert_code(declare_passive(&channel(&conn).await, &queue).await, common::code::NOT_FOUND);
    close(&conn).await;
}

#[tokio::test]
async fn expires_spares_a_queue_with_a_consumer() {
    let broker = Broker::start();
    let conn = connect(&broker).await;
    let (ch, consumer_ch) = (confirm_channel(&conn).await, channel(&conn).await);
    let watched = queue_with(&ch, "expires-consumed", &[("x-expires", int(300))]).await;
    let consumer = consume(&consumer_ch, &watched, true).await;
    // Declared after `watched`, unused: once it is gone, `watched` has
    // outlived its x-expires.
    let clock = queue_with(&ch, "expires-clock", &[("x-expires", int(300))]).await;
    eventually("the unused queue to be deleted", || async { !queue_exists_untouched(&ch, &clock).await }).await;
    assert!(queue_exists_untouched(&ch, &watched).await, "a queue with a consumer is not expired");

    // Without its consumer, it expires too.
    within("basic.cancel-ok", consumer_ch.basic_cancel(consumer.tag().as_str(), Default::default()))
        .await
        .expect("cancel");
    eventually("the queue to expire once unused", || async { !queue_exists_untouched(&ch, &watched).await }).await;
    close(&conn).await;
}

// -------------------------------------------------------------- length limits

#[tokio::test]
async fn max_length_drops_the_oldest_messages() {
    let broker = Broker::start();
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let queue = queue_with(&ch, "max-length", &[("x-max-length", int(2))]).await;
    for body in ["1", "2", "3", "4"] {
        // drop-head accepts every new message.
        assert!(publish_acked(&ch, &queue, body).await, "message {body} was nacked");
    }
    assert_eq!(message_count(&ch, &queue).await, 2);
    assert_eq!(get_all(&ch, &queue).await, ["3", "4"]);
    close(&conn).await;
}

#[tokio::test]
async fn max_length_counts_only_ready_messages() {
    let broker = Broker::start();
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let queue = queue_with(&ch, "max-length-unacked", &[("x-max-length", int(1))]).await;
    publish(&ch, "", &queue, b"unacked").await;
    let held = get(&ch, &queue, false).await.expect("message");
    publish(&ch, "", &queue, b"ready").await;
    assert_eq!(message_count(&ch, &queue).await, 1, "the unacked message does not count");

    // Requeued, the unacked message goes back to the head and the limit
    // applies again: the oldest goes.
    within("basic.nack", held.delivery.acker.nack(BasicNackOptions { requeue: true, multiple: false }))
        .await
        .expect("nack");
    publish(&ch, "", &queue, b"newest").await;
    assert_eq!(get_all(&ch, &queue).await, ["newest"]);
    close(&conn).await;
}

#[tokio::test]
async fn max_length_bytes_counts_body_bytes() {
    let broker = Broker::start();
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let queue = queue_with(&ch, "max-length-bytes", &[("x-max-length-bytes", int(10))]).await;
    // Headers and properties do not count, only bodies.
    let big_headers = field_table(&[("padding", long_string(&"x".repeat(500)))]);
    publish_with(&ch, "", &queue, b"aaaaa", BasicProperties::default().with_headers(big_headers)).await;
    publish(&ch, "", &queue, b"bbbbb").await;
    assert_eq!(message_count(&ch, &queue).await, 2, "10 bytes fit");
    publish(&ch, "", &queue, b"ccc").await;
    assert_eq!(get_all(&ch, &queue).await, ["bbbbb", "ccc"]);
    close(&conn).await;
}

#[tokio::test]
async fn reject_publish_nacks_new_messages_and_keeps_the_old_ones() {
    let broker = Broker::start();
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let queue =
        queue_with(&ch, "reject-publish", &[("x-max-length", int(2)), ("x-overflow", long_string("reject-publish"))])
            .await;
    let outcomes = [
        publish_acked(&ch, &queue, "1").await,
        publish_acked(&ch, &queue, "2").await,
        publish_acked(&ch, &queue, "3").await,
        publish_acked(&ch, &queue, "4").await,
    ];
    assert_eq!(outcomes, [true, true, false, false], "acked (true) or nacked (false)");

    // Room again once a message is consumed.
    let first = get(&ch, &queue, true).await.expect("message");
    assert_eq!(body(&first.delivery), "1");
    assert!(publish_acked(&ch, &queue, "5").await);
    assert!(!publish_acked(&ch, &queue, "6").await);
    assert_eq!(get_all(&ch, &queue).await, ["2", "5"]);
    close(&conn).await;
}

#[tokio::test]
async fn reject_publish_without_confirms_drops_the_new_message_silently() {
    let broker = Broker::start();
    let conn = connect(&broker).await;
    let (ch, confirmed) = (channel(&conn).await, confirm_channel(&conn).await);
    let queue = queue_with(
        &confirmed,
        "reject-publish-plain",
        &[("x-max-length-bytes", int(3)), ("x-overflow", long_string("reject-publish"))],
    )
    .await;
    publish_all(&ch, &queue, &["abc", "d"]).await;
    // The passive declare on the same channel follows both publishes.
    assert_eq!(message_count(&ch, &queue).await, 1);
    assert!(ch.status().connected(), "the channel stays open");
    assert!(!publish_acked(&confirmed, &queue, "e").await);
    assert_eq!(get_all(&ch, &queue).await, ["abc"]);
    close(&conn).await;
}

#[tokio::test]
async fn integer_arguments_accept_every_integer_type() {
    let broker = Broker::start();
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let values = [
        AMQPValue::ShortShortInt(1),
        AMQPValue::ShortShortUInt(1),
        AMQPValue::ShortInt(1),
        AMQPValue::ShortUInt(1),
        AMQPValue::LongInt(1),
        AMQPValue::LongUInt(1),
        AMQPValue::LongLongInt(1),
    ];
    for value in values {
        let queue = queue_with(&ch, "int-types", &[("x-max-length", value.clone())]).await;
        publish_all(&ch, &queue, &["old", "new"]).await;
        assert_eq!(get_all(&ch, &queue).await, ["new"], "x-max-length given as {value:?}");
    }
    close(&conn).await;
}

#[tokio::test]
async fn invalid_queue_arguments_are_precondition_failed() {
    let broker = Broker::start();
    let conn = connect(&broker).await;
    let text = |s: &str| AMQPValue::LongString(LongString::from(s));
    let cases: Vec<(&str, Vec<(&str, AMQPValue)>)> = vec![
        ("negative x-message-ttl", vec![("x-message-ttl", int(-1))]),
        ("string x-message-ttl", vec![("x-message-ttl", text("1000"))]),
        ("zero x-expires", vec![("x-expires", int(0))]),
        ("negative x-expires", vec![("x-expires", int(-5))]),
        ("negative x-max-length", vec![("x-max-length", int(-1))]),
        ("string x-max-length", vec![("x-max-length", text("10"))]),
        ("double x-max-length", vec![("x-max-length", AMQPValue::Double(10.0))]),
        ("negative x-max-length-bytes", vec![("x-max-length-bytes", int(-1))]),
        ("unknown x-overflow", vec![("x-overflow", text("drop-tail"))]),
        ("integer x-overflow", vec![("x-overflow", int(1))]),
        ("negative x-max-priority", vec![("x-max-priority", int(-1))]),
        ("x-max-priority above 255", vec![("x-max-priority", int(256))]),
        ("integer x-dead-letter-exchange", vec![("x-dead-letter-exchange", int(1))]),
        ("x-dead-letter-routing-key without exchange", vec![("x-dead-letter-routing-key", text("rk"))]),
        ("string x-single-active-consumer", vec![("x-single-active-consumer", text("true"))]),
        ("unknown x-queue-type", vec![("x-queue-type", text("fancy"))]),
    ];
    for (what, arguments) in cases {
        let ch = channel(&conn).await;
        let result =
            try_declare_with(&ch, &unique("invalid-args"), QueueDeclareOptions::default(), field_table(&arguments))
                .await;
        match result {
            Ok(_) => panic!("{what}: declare-ok instead of 406"),
            Err(e) => assert_eq!(reply_code(&e), PRECONDITION_FAILED, "{what}: {e}"),
        }
    }
    // The bounds themselves are valid.
    let ch = channel(&conn).await;
    queue_with(&ch, "valid-args", &[("x-max-priority", int(255)), ("x-max-length", int(0)), ("x-message-ttl", int(0))])
        .await;
    assert_broker_alive(&broker).await;
    close(&conn).await;
}

/// Arguments RabbitMQ 3.10 knows but a queue type does not take are refused, naming the type
/// (`x-delivery-limit` on a classic queue, `x-max-priority` on a quorum queue, ...), as are
/// leader locators it does not know; what each type takes is accepted.
#[tokio::test]
async fn arguments_of_another_queue_type_are_refused_naming_the_type() {
    let broker = Broker::start();
    let conn = connect(&broker).await;
    let text = |s: &str| AMQPValue::LongString(LongString::from(s));
    let quorum = || ("x-queue-type", text("quorum"));
    let refused: Vec<(Vec<(&str, AMQPValue)>, &str)> = vec![
        (vec![("x-delivery-limit", int(5))], "of queue type rabbit_classic_queue"),
        (vec![("x-quorum-initial-group-size", int(3))], "of queue type rabbit_classic_queue"),
        (vec![("x-queue-leader-locator", text("balanced"))], "of queue type rabbit_classic_queue"),
        (
            vec![("x-queue-type", text("classic")), ("x-max-in-memory-length", int(1))],
            "of queue type rabbit_classic_queue",
        ),
        (vec![quorum(), ("x-max-priority", int(5))], "of queue type rabbit_quorum_queue"),
        (vec![quorum(), ("x-queue-mode", text("lazy"))], "of queue type rabbit_quorum_queue"),
        (vec![quorum(), ("x-queue-master-locator", text("min-masters"))], "of queue type rabbit_quorum_queue"),
        (vec![quorum(), ("x-queue-leader-locator", text("min-masters"))], "invalid_queue_locator_arg"),
        (vec![quorum(), ("x-queue-leader-locator", int(5))], "{unacceptable_type,signedint}"),
    ];
    for (arguments, why) in refused {
        let ch = channel(&conn).await;
        let name = unique("type-args");
        let options = QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() };
        match try_declare_with(&ch, &name, options, field_table(&arguments)).await {
            Ok(_) => panic!("{arguments:?}: declare-ok instead of 406"),
            Err(e) => {
                assert_eq!(reply_code(&e), PRECONDITION_FAILED, "{arguments:?}: {e}");
                let text = e.to_string();
                assert!(text.contains(why) && text.contains(&name), "{arguments:?}: {text}");
            }
        }
    }
    let accepted: Vec<Vec<(&str, AMQPValue)>> = vec![
        vec![("x-max-priority", int(5)), ("x-queue-master-locator", text("min-masters"))],
        vec![quorum(), ("x-delivery-limit", int(5)), ("x-quorum-initial-group-size", int(1))],
        vec![quorum(), ("x-queue-leader-locator", text("balanced")), ("x-max-in-memory-length", int(10))],
        vec![quorum(), ("x-queue-leader-locator", text("least-leaders"))],
        vec![quorum(), ("x-queue-leader-locator", text("client-local")), ("x-unknown-thing", int(1))],
    ];
    let ch = channel(&conn).await;
    for arguments in accepted {
        let name = unique("type-args-ok");
        let options = QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() };
        try_declare_with(&ch, &name, options, field_table(&arguments))
            .await
            .unwrap_or_else(|e| panic!("{arguments:?}: {e}"));
        ch.queue_delete(&name, Default::default()).await.expect("delete");
    }
    assert_broker_alive(&broker).await;
    close(&conn).await;
}

// ------------------------------------------------------------ priority queues

#[tokio::test]
async fn priority_queue_delivers_highest_priority_first_and_fifo_within_a_priority() {
    let broker = Broker::start();
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let queue = queue_with(&ch, "priorities", &[("x-max-priority", int(10))]).await;
    let messages: [(&str, Option<u8>); 8] = [
        ("p1", Some(1)),
        ("p5 first", Some(5)),
        ("p9", Some(9)),
        ("p0", Some(0)),
        ("none", None),
        ("p5 second", Some(5)),
        ("p10", Some(10)),
        ("p1 second", Some(1)),
    ];
    for (body, priority) in messages {
        let properties = priority.map(with_priority).unwrap_or_default();
        publish_with(&ch, "", &queue, body.as_bytes(), properties).await;
    }
    let mut consumer = consume(&ch, &queue, true).await;
    assert_eq!(
        next_bodies(&mut consumer, 8).await,
        ["p10", "p9", "p5 first", "p5 second", "p1", "p1 second", "p0", "none"]
    );
    close(&conn).await;
}

#[tokio::test]
async fn priorities_above_the_maximum_count_as_the_maximum() {
    let broker = Broker::start();
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let queue = queue_with(&ch, "priority-cap", &[("x-max-priority", int(5))]).await;
    for (body, priority) in [("p3", 3), ("p5", 5), ("p200", 200), ("p9", 9), ("p4", 4)] {
        publish_with(&ch, "", &queue, body.as_bytes(), with_priority(priority)).await;
    }
    assert_eq!(get_all(&ch, &queue).await, ["p5", "p200", "p9", "p4", "p3"]);
    close(&conn).await;
}

#[tokio::test]
async fn priority_255_is_the_highest_allowed() {
    let broker = Broker::start();
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let queue = queue_with(&ch, "priority-255", &[("x-max-priority", AMQPValue::ShortShortUInt(255))]).await;
    for (body, priority) in [("p0", 0), ("p254", 254), ("p255", 255), ("p128", 128)] {
        publish_with(&ch, "", &queue, body.as_bytes(), with_priority(priority)).await;
    }
    assert_eq!(get_all(&ch, &queue).await, ["p255", "p254", "p128", "p0"]);
    close(&conn).await;
}

#[tokio::test]
async fn requeued_messages_keep_their_priority_order() {
    let broker = Broker::start();
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let queue = queue_with(&ch, "priority-requeue", &[("x-max-priority", int(10))]).await;
    for (body, priority) in [("low", 1), ("high", 9), ("mid", 5)] {
        publish_with(&ch, "", &queue, body.as_bytes(), with_priority(priority)).await;
    }
    let high = get(&ch, &queue, false).await.expect("high");
    let mid = get(&ch, &queue, false).await.expect("mid");
    assert_eq!((body(&high.delivery).as_str(), body(&mid.delivery).as_str()), ("high", "mid"));
    publish_with(&ch, "", &queue, b"high later", with_priority(9)).await;

    within("basic.nack", ch.basic_nack(mid.delivery.delivery_tag, BasicNackOptions { multiple: true, requeue: true }))
        .await
        .expect("nack both with requeue");
    let mut again = Vec::new();
    while let Some(message) = get(&ch, &queue, true).await {
        again.push((body(&message.delivery), message.delivery.redelivered));
    }
    let expected = [("high", true), ("high later", false), ("mid", true), ("low", false)];
    assert_eq!(again, expected.map(|(b, r)| (b.to_string(), r)));
    close(&conn).await;
}

// ---------------------------------------------------------------- queue types

#[tokio::test]
async fn classic_queue_type_is_a_plain_queue() {
    let broker = Broker::start();
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let queue = queue_with(&ch, "classic", &[("x-queue-type", long_string("classic"))]).await;
    publish_all(&ch, &queue, &["1", "2"]).await;
    assert_eq!(get_all(&ch, &queue).await, ["1", "2"]);
    // Exclusive and auto-delete are fine for classic queues.
    let options = QueueDeclareOptions { exclusive: true, auto_delete: true, ..QueueDeclareOptions::default() };
    declare_with(&ch, &unique("classic-exclusive"), options, field_table(&[("x-queue-type", long_string("classic"))]))
        .await;
    close(&conn).await;
}

#[tokio::test]
async fn quorum_queues_are_durable_and_never_exclusive_or_auto_delete() {
    let broker = Broker::start();
    let conn = connect(&broker).await;
    let quorum = || field_table(&[("x-queue-type", long_string("quorum"))]);
    let refused = [
        ("non-durable", QueueDeclareOptions::default()),
        ("exclusive", QueueDeclareOptions { durable: true, exclusive: true, ..QueueDeclareOptions::default() }),
        ("auto-delete", QueueDeclareOptions { durable: true, auto_delete: true, ..QueueDeclareOptions::default() }),
    ];
    for (what, options) in refused {
        let ch = channel(&conn).await;
        match try_declare_with(&ch, &unique("quorum-refused"), options, quorum()).await {
            Ok(_) => panic!("{what} quorum queue: declare-ok instead of 406"),
            Err(e) => assert_eq!(reply_code(&e), PRECONDITION_FAILED, "{what} quorum queue: {e}"),
        }
    }

    let ch = confirm_channel(&conn).await;
    let queue = unique("quorum");
    declare_with(&ch, &queue, durable(), quorum()).await;
    // Redeclaring it without x-queue-type is inequivalent.
    let other = channel(&conn).await;
    assert_code(try_declare_with(&other, &queue, durable(), FieldTable::default()).await, PRECONDITION_FAILED);
    delete_queue(&ch, &queue).await;
    close(&conn).await;
}

#[tokio::test]
async fn quorum_queue_delivers_acks_and_counts_redeliveries() {
    let broker = Broker::start();
    let conn = connect(&broker).await;
    let (ch, consumer_ch) = (confirm_channel(&conn).await, channel(&conn).await);
    let queue = unique("quorum-flow");
    declare_with(&ch, &queue, durable(), field_table(&[("x-queue-type", long_string("quorum"))])).await;
    publish_all(&ch, &queue, &["1", "2"]).await;

    let mut consumer = consume(&consumer_ch, &queue, false).await;
    let first = next_delivery(&mut consumer).await;
    let second = next_delivery(&mut consumer).await;
    assert_eq!((body(&first).as_str(), body(&second).as_str()), ("1", "2"));
    assert!(!first.redelivered);
    // No x-delivery-count before any redelivery (RabbitMQ 3.10 sends 0 on basic.get).
    let count = headers(&first).inner().get("x-delivery-count").cloned();
    assert!(matches!(count, None | Some(AMQPValue::LongLongInt(0))), "first delivery: {count:?}");
    within("basic.ack", second.acker.ack(BasicAckOptions::default())).await.expect("ack");

    // Each return (reject with requeue) counts as a failed delivery.
    let mut delivery = first;
    for expected in 1..=3 {
        within("basic.reject", delivery.acker.reject(lapin::options::BasicRejectOptions { requeue: true }))
            .await
            .expect("reject");
        delivery = next_delivery(&mut consumer).await;
        assert_eq!(body(&delivery), "1");
        assert!(delivery.redelivered);
        assert_eq!(
            headers(&delivery).inner().get("x-delivery-count"),
            Some(&AMQPValue::LongLongInt(expected)),
            "x-delivery-count of redelivery {expected}"
        );
    }
    within("basic.ack", delivery.acker.ack(BasicAckOptions::default())).await.expect("ack");
    close_channel(&consumer_ch).await;
    assert_eq!(message_count(&ch, &queue).await, 0, "both acked");
    delete_queue(&ch, &queue).await;
    close(&conn).await;
}

/// RabbitMQ 3.10's quorum queues put a requeued message at the back of the queue, in the order
/// messages came back (classic queues put it back at its place), and basic.get hands out
/// `x-delivery-count` from 0.
#[tokio::test]
async fn quorum_queue_requeues_to_the_back_and_basic_get_counts_from_zero() {
    let broker = Broker::start();
    let conn = connect(&broker).await;
    let (ch, consumer_ch) = (confirm_channel(&conn).await, channel(&conn).await);
    let queue = unique("quorum-back");
    declare_with(&ch, &queue, durable(), field_table(&[("x-queue-type", long_string("quorum"))])).await;
    publish_all(&ch, &queue, &["m0", "m1", "m2", "m3", "m4", "m5"]).await;
    within("basic.qos", consumer_ch.basic_qos(3, BasicQosOptions::default())).await.expect("qos");
    let mut consumer = consume(&consumer_ch, &queue, false).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(next_delivery(&mut consumer).await);
    }
    assert_eq!(held.iter().map(body).collect::<Vec<_>>(), ["m0", "m1", "m2"]);
    let nack = BasicNackOptions { multiple: false, requeue: true };
    within("basic.nack", held[2].acker.nack(nack)).await.expect("nack m2");
    within("basic.nack", held[0].acker.nack(nack)).await.expect("nack m0");
    // The two places freed go to the messages not yet delivered.
    let mut next = Vec::new();
    for _ in 0..2 {
        next.push(next_delivery(&mut consumer).await);
    }
    assert_eq!(next.iter().map(body).collect::<Vec<_>>(), ["m3", "m4"]);
    for d in next.iter().chain([&held[1]]) {
        within("basic.ack", d.acker.ack(BasicAckOptions::default())).await.expect("ack");
    }
    let mut rest = Vec::new();
    for _ in 0..3 {
        rest.push(next_delivery(&mut consumer).await);
    }
    let seen: Vec<(String, bool, Option<AMQPValue>)> =
        rest.iter().map(|d| (body(d), d.redelivered, headers(d).inner().get("x-delivery-count").cloned())).collect();
    assert_eq!(
        seen,
        [
            ("m5".to_string(), false, None),
            ("m2".to_string(), true, Some(AMQPValue::LongLongInt(1))),
            ("m0".to_string(), true, Some(AMQPValue::LongLongInt(1))),
        ]
    );
    for d in &rest {
        within("basic.ack", d.acker.ack(BasicAckOptions::default())).await.expect("ack");
    }
    close_channel(&consumer_ch).await;
    publish_all(&ch, &queue, &["g"]).await;
    let got = get(&ch, &queue, true).await.expect("a message");
    let count = got.delivery.properties.headers().as_ref().and_then(|h| h.inner().get("x-delivery-count").cloned());
    assert_eq!(count, Some(AMQPValue::LongLongInt(0)), "basic.get counts from 0");
    delete_queue(&ch, &queue).await;
    close(&conn).await;
}

async fn delete_queue(ch: &Channel, queue: &str) {
    within("queue.delete-ok", ch.queue_delete(queue, Default::default())).await.expect("delete queue");
}

// -------------------------------------------------------------------- restart

/// A data directory for a restart test, removed when dropped.
struct DataDir(std::path::PathBuf);

impl DataDir {
    fn new() -> DataDir {
        DataDir(std::env::temp_dir().join(unique("warren-queue-args")))
    }
}

impl Drop for DataDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// TTLs run from publication, not from recovery: a message recovered after
/// a restart expires at the deadline it had before.
#[tokio::test]
async fn ttl_deadlines_survive_a_restart() {
    if common::is_external() {
        eprintln!("note: skipped, restarting needs a spawned broker");
        return;
    }
    const TTL: Duration = Duration::from_millis(4000);
    let dir = DataDir::new();
    let queue_ttl = unique("restart-queue-ttl");
    let message_ttl = unique("restart-message-ttl");

    let broker = Broker::start_in(&dir.0);
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    declare_with(&ch, &queue_ttl, durable(), field_table(&[("x-message-ttl", int(4000))])).await;
    declare_with(&ch, &message_ttl, durable(), FieldTable::default()).await;
    let clock = queue_with(&ch, "restart-clock", &[("x-message-ttl", int(2000))]).await;
    let persistent = BasicProperties::default().with_delivery_mode(2);
    let published = Instant::now();
    publish_with(&ch, "", &queue_ttl, b"queue ttl", persistent.clone()).await;
    publish_with(&ch, "", &message_ttl, b"message ttl", persistent.with_expiration("4000".into())).await;
    publish_with(&ch, "", &message_ttl, b"no ttl", BasicProperties::default().with_delivery_mode(2)).await;
    // Half of the TTL passes before the restart.
    publish(&ch, "", &clock, b"tick").await;
    await_count(&ch, &clock, 0).await;
    broker.kill9();

    let broker = Broker::start_in(&dir.0);
    let restarted = Instant::now();
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    assert!(published.elapsed() < TTL, "the restart took too long for this test");
    assert_eq!(message_count(&ch, &queue_ttl).await, 1, "recovered, not yet expired");
    assert_eq!(message_count(&ch, &message_ttl).await, 2, "recovered, not yet expired");

    await_count(&ch, &queue_ttl, 0).await;
    await_count(&ch, &message_ttl, 1).await;
    let (since_publish, since_restart) = (published.elapsed(), restarted.elapsed());
    assert!(since_publish >= TTL, "expired {since_publish:?} after publication, before the TTL");
    // Had the TTL restarted at recovery, the messages would have lived a
    // whole TTL after the restart.
    assert!(since_restart < TTL - Duration::from_millis(500), "expired {since_restart:?} after the restart");
    assert_eq!(get_all(&ch, &message_ttl).await, ["no ttl"]);
    close(&conn).await;
}

#[tokio::test]
async fn priority_order_survives_a_restart() {
    if common::is_external() {
        eprintln!("note: skipped, restarting needs a spawned broker");
        return;
    }
    let dir = DataDir::new();
    let queue = unique("restart-priorities");

    let broker = Broker::start_in(&dir.0);
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    declare_with(&ch, &queue, durable(), field_table(&[("x-max-priority", int(10))])).await;
    for (body, priority) in [("p1", 1), ("p9", 9), ("p0", 0), ("p5", 5), ("p9 second", 9)] {
        publish_with(&ch, "", &queue, body.as_bytes(), with_priority(priority).with_delivery_mode(2)).await;
    }
    // One of them delivered and requeued before the crash.
    let taken = get(&ch, &queue, false).await.expect("p9");
    assert_eq!(body(&taken.delivery), "p9");
    within("basic.nack", taken.delivery.acker.nack(BasicNackOptions { requeue: true, multiple: false }))
        .await
        .expect("nack");
    broker.kill9();

    let broker = Broker::start_in(&dir.0);
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    assert_eq!(get_all(&ch, &queue).await, ["p9", "p9 second", "p5", "p1", "p0"]);
    close(&conn).await;
}
