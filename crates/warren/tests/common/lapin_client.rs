//! Helpers for tests written against the `lapin` client.

use super::{within, Broker, QUIET};
use futures_lite::StreamExt;
use lapin::message::{BasicGetMessage, Delivery};
use lapin::options::{
    BasicConsumeOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, Consumer, Queue};
use tokio::sync::mpsc;

pub async fn connect(broker: &Broker) -> Connection {
    connect_url(&broker.amqp_url()).await
}

pub async fn connect_url(url: &str) -> Connection {
    within("connection", Connection::connect(url, ConnectionProperties::default()))
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"))
}

pub async fn channel(conn: &Connection) -> Channel {
    within("channel.open-ok", conn.create_channel()).await.expect("open channel")
}

/// A channel in publisher-confirm mode (confirm.select).
pub async fn confirm_channel(conn: &Connection) -> Channel {
    let ch = channel(conn).await;
    within("confirm.select-ok", ch.confirm_select(ConfirmSelectOptions::default())).await.expect("confirm.select");
    ch
}

/// A connection with one channel, for the common case.
pub async fn connect_channel(broker: &Broker) -> (Connection, Channel) {
    let conn = connect(broker).await;
    let ch = channel(&conn).await;
    (conn, ch)
}

/// Declares a queue with the given flags and no arguments.
pub async fn declare(ch: &Channel, name: &str, options: QueueDeclareOptions) -> Queue {
    within("queue.declare-ok", ch.queue_declare(name, options, FieldTable::default()))
        .await
        .unwrap_or_else(|e| panic!("declare queue {name:?}: {e}"))
}

/// Declares a plain (non-durable, non-exclusive, non-auto-delete) queue.
pub async fn declare_plain(ch: &Channel, name: &str) -> Queue {
    declare(ch, name, QueueDeclareOptions::default()).await
}

/// Passively declares `name`, returning the broker's answer.
pub async fn declare_passive(ch: &Channel, name: &str) -> lapin::Result<Queue> {
    let options = QueueDeclareOptions { passive: true, ..QueueDeclareOptions::default() };
    within("passive queue.declare", ch.queue_declare(name, options, FieldTable::default())).await
}

pub async fn publish(ch: &Channel, exchange: &str, routing_key: &str, body: &[u8]) {
    publish_with(ch, exchange, routing_key, body, BasicProperties::default()).await;
}

/// Publishes a message. On a channel in confirm mode (see
/// [`confirm_channel`]) this also waits for the broker's ack, so the message
/// is known to be in its queues when this returns; that is how tests that
/// publish on one channel and read on another avoid racing the broker.
pub async fn publish_with(ch: &Channel, exchange: &str, routing_key: &str, body: &[u8], properties: BasicProperties) {
    let confirmation = within("basic.publish and its confirmation", async {
        ch.basic_publish(exchange, routing_key, BasicPublishOptions::default(), body, properties).await?.await
    })
    .await
    .unwrap_or_else(|e| panic!("publish to {exchange:?}/{routing_key:?}: {e}"));
    assert!(!confirmation.is_nack(), "publish was nacked");
}

/// Publishes each body to `queue` through the default exchange.
pub async fn publish_all(ch: &Channel, queue: &str, bodies: &[&str]) {
    for body in bodies {
        publish(ch, "", queue, body.as_bytes()).await;
    }
}

pub async fn consume(ch: &Channel, queue: &str, no_ack: bool) -> Consumer {
    let options = BasicConsumeOptions { no_ack, ..BasicConsumeOptions::default() };
    within("basic.consume-ok", ch.basic_consume(queue, "", options, FieldTable::default()))
        .await
        .unwrap_or_else(|e| panic!("consume from {queue:?}: {e}"))
}

/// The next delivery to `consumer`; fails on timeout, error or cancellation.
pub async fn next_delivery(consumer: &mut Consumer) -> Delivery {
    match within("a delivery", consumer.next()).await {
        Some(Ok(delivery)) => delivery,
        Some(Err(e)) => panic!("consumer failed instead of delivering: {e}"),
        None => panic!("consumer was cancelled instead of delivering"),
    }
}

/// The next `n` deliveries' bodies, as strings.
pub async fn next_bodies(consumer: &mut Consumer, n: usize) -> Vec<String> {
    let mut bodies = Vec::with_capacity(n);
    for _ in 0..n {
        bodies.push(body(&next_delivery(consumer).await));
    }
    bodies
}

/// The next `n` deliveries' bodies, as strings, each acked once received.
pub async fn next_bodies_acked(consumer: &mut Consumer, n: usize) -> Vec<String> {
    let mut bodies = Vec::with_capacity(n);
    for _ in 0..n {
        let delivery = next_delivery(consumer).await;
        bodies.push(body(&delivery));
        delivery.ack(lapin::options::BasicAckOptions::default()).await.expect("ack");
    }
    bodies
}

/// Asserts that nothing reaches `consumer` for [`QUIET`].
pub async fn assert_no_delivery(consumer: &mut Consumer) {
    if let Ok(next) = tokio::time::timeout(QUIET, consumer.next()).await {
        match next {
            Some(Ok(delivery)) => panic!("unexpected delivery of {:?}", body(&delivery)),
            Some(Err(e)) => panic!("consumer failed: {e}"),
            None => panic!("consumer was cancelled"),
        }
    }
}

/// Waits for the broker to cancel `consumer` (the stream ends).
pub async fn expect_cancelled(consumer: &mut Consumer) {
    match within("the consumer's cancellation", consumer.next()).await {
        None => {}
        Some(Ok(delivery)) => panic!("expected a cancel, got delivery {:?}", body(&delivery)),
        Some(Err(e)) => panic!("expected a cancel, got error {e}"),
    }
}

pub async fn get(ch: &Channel, queue: &str, no_ack: bool) -> Option<BasicGetMessage> {
    within("basic.get", ch.basic_get(queue, BasicGetOptions { no_ack }))
        .await
        .unwrap_or_else(|e| panic!("basic.get from {queue:?}: {e}"))
}

/// Drains `queue` with basic.get (auto-ack) and returns the bodies in order.
pub async fn get_all(ch: &Channel, queue: &str) -> Vec<String> {
    let mut bodies = Vec::new();
    while let Some(message) = get(ch, queue, true).await {
        bodies.push(body(&message.delivery));
    }
    bodies
}

pub fn body(delivery: &Delivery) -> String {
    String::from_utf8_lossy(&delivery.data).into_owned()
}

/// The AMQP reply code carried by a lapin error (from a channel.close or
/// connection.close sent by the broker).
pub fn reply_code(error: &lapin::Error) -> u16 {
    match error {
        lapin::Error::ProtocolError(e) => e.get_id(),
        other => panic!("expected an AMQP error with a reply code, got: {other}"),
    }
}

/// Asserts that `result` is an AMQP error with the given reply code.
pub fn assert_code<T: std::fmt::Debug>(result: lapin::Result<T>, expected: u16) {
    match result {
        Ok(value) => panic!("expected reply code {expected}, the broker answered Ok({value:?})"),
        Err(e) => assert_eq!(reply_code(&e), expected, "wrong reply code: {e}"),
    }
}

/// Captures the error with which the broker closes a channel, for failures
/// that are reported asynchronously (e.g. a publish to a missing exchange).
pub struct CloseWatch(mpsc::UnboundedReceiver<lapin::Error>);

impl CloseWatch {
    /// Must be called before the operation that provokes the close.
    pub fn new(ch: &Channel) -> CloseWatch {
        let (tx, rx) = mpsc::unbounded_channel();
        ch.on_error(move |e| {
            let _ = tx.send(e);
        });
        CloseWatch(rx)
    }

    /// The reply code of the channel.close the broker sent.
    pub async fn code(mut self) -> u16 {
        let error = within("channel.close from the broker", self.0.recv()).await.expect("error handler dropped");
        reply_code(&error)
    }
}

/// Proves the broker still serves clients: a fresh connection declares a
/// queue, publishes to it and gets the message back.
pub async fn assert_broker_alive(broker: &Broker) {
    let (conn, ch) = connect_channel(broker).await;
    let queue = super::unique("alive");
    let options = QueueDeclareOptions { exclusive: true, ..QueueDeclareOptions::default() };
    declare(&ch, &queue, options).await;
    publish(&ch, "", &queue, b"ping").await;
    let message = get(&ch, &queue, true).await.expect("the ping message");
    assert_eq!(body(&message.delivery), "ping");
    close(&conn).await;
}

pub async fn close(conn: &Connection) {
    match within("connection.close-ok", conn.close(200, "bye")).await {
        Ok(()) => {}
        // lapin fails the close when a channel it closes on drop is still
        // waiting for its channel.close-ok: a client-side race, not
        // something the broker did.
        Err(lapin::Error::InvalidChannelState(_)) => {}
        Err(e) => panic!("close connection: {e}"),
    }
}

pub async fn close_channel(ch: &Channel) {
    within("channel.close-ok", ch.close(200, "bye")).await.expect("close channel");
}

/// A field table (queue, consumer or exchange arguments, message headers)
/// from names and values.
pub fn field_table(entries: &[(&str, lapin::types::AMQPValue)]) -> FieldTable {
    let mut table = FieldTable::default();
    for (key, value) in entries {
        table.insert((*key).into(), value.clone());
    }
    table
}

/// A long-string field value.
pub fn long_string(value: &str) -> lapin::types::AMQPValue {
    lapin::types::AMQPValue::LongString(value.into())
}

/// Declares a queue with arguments, returning the broker's answer.
pub async fn try_declare_with(
    ch: &Channel,
    name: &str,
    options: QueueDeclareOptions,
    arguments: FieldTable,
) -> lapin::Result<Queue> {
    within("queue.declare", ch.queue_declare(name, options, arguments)).await
}

/// Declares a queue with arguments; fails the test if the broker refuses.
pub async fn declare_with(ch: &Channel, name: &str, options: QueueDeclareOptions, arguments: FieldTable) -> Queue {
    try_declare_with(ch, name, options, arguments).await.unwrap_or_else(|e| panic!("declare queue {name:?}: {e}"))
}

/// The number of ready messages in `queue`, from a passive declare.
pub async fn message_count(ch: &Channel, queue: &str) -> u32 {
    declare_passive(ch, queue).await.unwrap_or_else(|e| panic!("passive declare of {queue:?}: {e}")).message_count()
}

/// Publishes a message on a channel in confirm mode and returns the broker's
/// answer (ack or nack, with the message if it was returned) instead of
/// requiring an ack.
pub async fn publish_confirmation(
    ch: &Channel,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    options: BasicPublishOptions,
    properties: BasicProperties,
) -> lapin::publisher_confirm::Confirmation {
    within("basic.publish and its confirmation", async {
        ch.basic_publish(exchange, routing_key, options, body, properties).await?.await
    })
    .await
    .unwrap_or_else(|e| panic!("publish to {exchange:?}/{routing_key:?}: {e}"))
}

/// A delivery's headers (empty if it has none).
pub fn headers(delivery: &Delivery) -> FieldTable {
    delivery.properties.headers().clone().unwrap_or_default()
}
