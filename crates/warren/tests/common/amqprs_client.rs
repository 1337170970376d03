//! Helpers for tests written against the `amqprs` client.
//!
//! amqprs reports broker-initiated events (channel.close, basic.cancel,
//! confirms, returns) through callbacks; [`EventForwarder`] turns them into a
//! stream of [`Event`]s that tests can await.

use super::{within, Broker, QUIET};
use amqprs::callbacks::{ChannelCallback, DefaultConnectionCallback};
use amqprs::channel::{
    BasicConsumeArguments, BasicPublishArguments, Channel, ConsumerMessage, QueueBindArguments, QueueDeclareArguments,
};
use amqprs::connection::{Connection, OpenConnectionArguments};
use amqprs::{Ack, BasicProperties, Cancel, CloseChannel, FieldTable, Nack, Return};
use async_trait::async_trait;
use tokio::sync::mpsc::{self, UnboundedReceiver, UnboundedSender};

/// Something the broker told a channel on its own initiative.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Closed { code: u16, text: String },
    Cancelled { consumer_tag: String },
    Ack { delivery_tag: u64, multiple: bool },
    Nack { delivery_tag: u64, multiple: bool },
    Returned(Returned),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Returned {
    pub code: u16,
    pub text: String,
    pub exchange: String,
    pub routing_key: String,
    pub body: String,
}

pub struct EventForwarder(UnboundedSender<Event>);

impl EventForwarder {
    fn forward(&self, event: Event) {
        // The test may have stopped listening; that is fine.
        let _ = self.0.send(event);
    }
}

#[async_trait]
impl ChannelCallback for EventForwarder {
    async fn close(&mut self, _channel: &Channel, close: CloseChannel) -> Result<(), amqprs::error::Error> {
        self.forward(Event::Closed { code: close.reply_code(), text: close.reply_text().clone() });
        Ok(())
    }

    async fn cancel(&mut self, _channel: &Channel, cancel: Cancel) -> Result<(), amqprs::error::Error> {
        self.forward(Event::Cancelled { consumer_tag: cancel.consumer_tag().clone() });
        Ok(())
    }

    async fn flow(&mut self, _channel: &Channel, active: bool) -> Result<bool, amqprs::error::Error> {
        Ok(active)
    }

    async fn publish_ack(&mut self, _channel: &Channel, ack: Ack) {
        self.forward(Event::Ack { delivery_tag: ack.delivery_tag(), multiple: ack.mutiple() });
    }

    async fn publish_nack(&mut self, _channel: &Channel, nack: Nack) {
        self.forward(Event::Nack { delivery_tag: nack.delivery_tag(), multiple: nack.multiple() });
    }

    async fn publish_return(
        &mut self,
        _channel: &Channel,
        ret: Return,
        _properties: BasicProperties,
        content: Vec<u8>,
    ) {
        self.forward(Event::Returned(Returned {
            code: ret.reply_code(),
            text: ret.reply_text().clone(),
            exchange: ret.exchange().clone(),
            routing_key: ret.routing_key().clone(),
            body: String::from_utf8_lossy(&content).into_owned(),
        }));
    }
}

/// A channel together with the events the broker sends it.
pub struct EventChannel {
    pub channel: Channel,
    pub events: UnboundedReceiver<Event>,
}

impl std::ops::Deref for EventChannel {
    type Target = Channel;
    fn deref(&self) -> &Channel {
        &self.channel
    }
}

impl EventChannel {
    pub async fn next_event(&mut self) -> Event {
        within("an event from the broker", self.events.recv()).await.expect("channel callback dropped")
    }

    /// Waits for the broker to close the channel and returns the reply code.
    pub async fn closed_code(&mut self) -> u16 {
        loop {
            if let Event::Closed { code, .. } = self.next_event().await {
                return code;
            }
        }
    }
}

pub async fn connect(broker: &Broker) -> Connection {
    let args = OpenConnectionArguments::new(broker.host(), broker.port(), broker.user(), broker.password())
        .virtual_host(broker.vhost())
        .finish();
    let conn = within("connection", Connection::open(&args)).await.expect("connect");
    conn.register_callback(DefaultConnectionCallback).await.expect("register connection callback");
    conn
}

pub async fn channel(conn: &Connection) -> EventChannel {
    let channel = within("channel.open-ok", conn.open_channel(None)).await.expect("open channel");
    let (tx, events) = mpsc::unbounded_channel();
    channel.register_callback(EventForwarder(tx)).await.expect("register channel callback");
    EventChannel { channel, events }
}

/// Connection arguments for `broker`'s default user and vhost, for clients
/// that connect from a spawned task with [`try_connect`].
pub fn connection_args(broker: &Broker) -> OpenConnectionArguments {
    OpenConnectionArguments::new(broker.host(), broker.port(), broker.user(), broker.password())
        .virtual_host(broker.vhost())
        .finish()
}

/// Like [`connect`], but an error (or a hang past [`super::TIMEOUT`]) is
/// returned instead of failing the test: for clients that may see the broker
/// die under them.
pub async fn try_connect(args: &OpenConnectionArguments) -> Result<Connection, String> {
    let conn = tokio::time::timeout(super::TIMEOUT, Connection::open(args))
        .await
        .map_err(|_| "timed out connecting".to_string())?
        .map_err(|e| format!("connect: {e}"))?;
    conn.register_callback(DefaultConnectionCallback)
        .await
        .map_err(|e| format!("register connection callback: {e}"))?;
    Ok(conn)
}

/// Like [`channel`], but returning an error instead of failing the test.
pub async fn try_channel(conn: &Connection) -> Result<EventChannel, String> {
    let channel = tokio::time::timeout(super::TIMEOUT, conn.open_channel(None))
        .await
        .map_err(|_| "timed out opening a channel".to_string())?
        .map_err(|e| format!("open channel: {e}"))?;
    let (tx, events) = mpsc::unbounded_channel();
    channel.register_callback(EventForwarder(tx)).await.map_err(|e| format!("register channel callback: {e}"))?;
    Ok(EventChannel { channel, events })
}

pub async fn connect_channel(broker: &Broker) -> (Connection, EventChannel) {
    let conn = connect(broker).await;
    let ch = channel(&conn).await;
    (conn, ch)
}

/// Declares a server-named exclusive queue and returns its name.
pub async fn declare_server_named(ch: &Channel) -> String {
    let (name, _, _) = within("queue.declare-ok", ch.queue_declare(QueueDeclareArguments::exclusive_server_named()))
        .await
        .expect("declare server-named queue")
        .expect("declare-ok (no-wait was not requested)");
    name
}

pub async fn bind(ch: &Channel, queue: &str, exchange: &str, routing_key: &str) {
    bind_with(ch, queue, exchange, routing_key, FieldTable::new()).await;
}

pub async fn bind_with(ch: &Channel, queue: &str, exchange: &str, routing_key: &str, arguments: FieldTable) {
    let mut args = QueueBindArguments::new(queue, exchange, routing_key);
    args.arguments = arguments;
    within("queue.bind-ok", ch.queue_bind(args))
        .await
        .unwrap_or_else(|e| panic!("bind {queue} to {exchange} with {routing_key:?}: {e}"));
}

pub async fn publish(ch: &Channel, exchange: &str, routing_key: &str, body: &str) {
    publish_with(ch, exchange, routing_key, body, BasicProperties::default()).await;
}

pub async fn publish_with(ch: &Channel, exchange: &str, routing_key: &str, body: &str, properties: BasicProperties) {
    within(
        "basic.publish",
        ch.basic_publish(properties, body.as_bytes().to_vec(), BasicPublishArguments::new(exchange, routing_key)),
    )
    .await
    .unwrap_or_else(|e| panic!("publish to {exchange:?}/{routing_key:?}: {e}"));
}

/// An auto-ack consumer's deliveries.
pub struct Deliveries(UnboundedReceiver<ConsumerMessage>);

pub async fn consume_no_ack(ch: &Channel, queue: &str) -> Deliveries {
    let mut args = BasicConsumeArguments::new(queue, "");
    args.no_ack = true;
    let (_tag, rx) = within("basic.consume-ok", ch.basic_consume_rx(args))
        .await
        .unwrap_or_else(|e| panic!("consume from {queue}: {e}"));
    Deliveries(rx)
}

/// A delivered message: routing information, properties and body.
#[derive(Debug)]
pub struct Message {
    pub exchange: String,
    pub routing_key: String,
    pub redelivered: bool,
    pub properties: BasicProperties,
    pub body: String,
}

impl Deliveries {
    pub async fn next(&mut self) -> Message {
        let message = within("a delivery", self.0.recv()).await.expect("consumer ended instead of delivering");
        let deliver = message.deliver.expect("deliver method");
        Message {
            exchange: deliver.exchange().clone(),
            routing_key: deliver.routing_key().clone(),
            redelivered: deliver.redelivered(),
            properties: message.basic_properties.unwrap_or_default(),
            body: String::from_utf8_lossy(&message.content.unwrap_or_default()).into_owned(),
        }
    }

    /// Bodies received up to and excluding the first one equal to `last`.
    ///
    /// Tests publish a final "sentinel" message that every queue under test
    /// receives. Messages published on one channel reach a queue in
    /// publication order, so anything routed to the queue before the sentinel
    /// has arrived by the time the sentinel does: checking the bodies up to
    /// the sentinel shows what was and was not routed, with no timed wait.
    pub async fn bodies_until(&mut self, last: &str) -> Vec<String> {
        let mut bodies = Vec::new();
        loop {
            let body = self.next().await.body;
            if body == last {
                return bodies;
            }
            bodies.push(body);
        }
    }

    /// Asserts that nothing is delivered for [`QUIET`].
    pub async fn assert_none(&mut self) {
        if let Ok(Some(message)) = tokio::time::timeout(QUIET, self.0.recv()).await {
            let body = String::from_utf8_lossy(&message.content.unwrap_or_default()).into_owned();
            panic!("unexpected delivery of {body:?}");
        }
    }
}

/// A field table from string keys and values.
pub fn table(entries: &[(&str, amqprs::FieldValue)]) -> FieldTable {
    let mut table = FieldTable::new();
    for (key, value) in entries {
        table.insert((*key).try_into().expect("valid field name"), value.clone());
    }
    table
}

/// A long-string field value.
pub fn text(value: &str) -> amqprs::FieldValue {
    amqprs::FieldValue::S(value.try_into().expect("valid long string"))
}
