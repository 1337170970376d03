//! Error paths: each must close the offending channel or connection with
//! the exact AMQP reply code, and leave the broker serving other clients.

mod common;

use common::code::{ACCESS_REFUSED, CHANNEL_ERROR, NOT_ALLOWED, NOT_FOUND, PRECONDITION_FAILED};
use common::lapin_client::*;
use common::raw;
use common::{unique, within, Broker};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ExchangeKind};

async fn declare_exchange(ch: &Channel, name: &str, kind: ExchangeKind) -> lapin::Result<()> {
    within(
        "exchange.declare",
        ch.exchange_declare(name, kind, ExchangeDeclareOptions::default(), FieldTable::default()),
    )
    .await
}

/// After a channel error: the same connection opens a new working channel,
/// and a new connection works too.
async fn assert_connection_and_broker_alive(broker: &Broker, conn: &Connection) {
    assert!(conn.status().connected());
    let ch = channel(conn).await;
    declare_plain(&ch, &unique("after-error")).await;
    close_channel(&ch).await;
    assert_broker_alive(broker).await;
}

#[tokio::test]
async fn publish_to_a_missing_exchange_closes_the_channel_with_not_found() {
    let broker = Broker::start();
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    let watch = CloseWatch::new(&ch);
    // basic.publish has no reply: the error arrives as a channel.close.
    let _ = ch
        .basic_publish(
            &unique("no-such-exchange"),
            "key",
            BasicPublishOptions::default(),
            b"lost",
            BasicProperties::default(),
        )
        .await;
    assert_eq!(watch.code().await, NOT_FOUND);
    assert_connection_and_broker_alive(&broker, &conn).await;
    close(&conn).await;
}

#[tokio::test]
async fn bind_involving_a_missing_queue_or_exchange_is_not_found() {
    let broker = Broker::start();
    let conn = connect(&broker).await;
    let bind = |ch: Channel, queue: String, exchange: &'static str| async move {
        within("queue.bind", ch.queue_bind(&queue, exchange, "key", QueueBindOptions::default(), FieldTable::default()))
            .await
    };
    let missing_queue = unique("no-such-queue");
    assert_code(bind(channel(&conn).await, missing_queue, "amq.direct").await, NOT_FOUND);

    let existing = unique("bind-source-missing");
    declare_plain(&channel(&conn).await, &existing).await;
    assert_code(bind(channel(&conn).await, existing, "no-such-exchange-for-bind").await, NOT_FOUND);
    assert_connection_and_broker_alive(&broker, &conn).await;
    close(&conn).await;
}

#[tokio::test]
async fn consume_from_a_missing_queue_is_not_found() {
    let broker = Broker::start();
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    assert_code(
        within(
            "basic.consume",
            ch.basic_consume(&unique("no-such-queue"), "", BasicConsumeOptions::default(), FieldTable::default()),
        )
        .await,
        NOT_FOUND,
    );
    assert_connection_and_broker_alive(&broker, &conn).await;
    close(&conn).await;
}

#[tokio::test]
async fn amq_prefix_is_reserved_for_exchanges_and_queues() {
    let broker = Broker::start();
    let conn = connect(&broker).await;
    let exchange = format!("amq.{}", unique("xyz"));
    assert_code(declare_exchange(&channel(&conn).await, &exchange, ExchangeKind::Direct).await, ACCESS_REFUSED);
    // The prefix only guards creation: an equivalent redeclare of a
    // predeclared exchange succeeds.
    within(
        "exchange.declare-ok",
        channel(&conn).await.exchange_declare(
            "amq.direct",
            ExchangeKind::Direct,
            ExchangeDeclareOptions { durable: true, ..ExchangeDeclareOptions::default() },
            FieldTable::default(),
        ),
    )
    .await
    .expect("equivalent redeclare of amq.direct");
    let queue = format!("amq.{}", unique("queue"));
    assert_code(
        within(
            "queue.declare",
            channel(&conn).await.queue_declare(&queue, QueueDeclareOptions::default(), FieldTable::default()),
        )
        .await,
        ACCESS_REFUSED,
    );
    assert_connection_and_broker_alive(&broker, &conn).await;
    close(&conn).await;
}

#[tokio::test]
async fn redeclaring_an_exchange_with_another_type_is_precondition_failed() {
    let broker = Broker::start();
    let conn = connect(&broker).await;
    let name = unique("typed");
    declare_exchange(&channel(&conn).await, &name, ExchangeKind::Direct).await.expect("declare direct");
    declare_exchange(&channel(&conn).await, &name, ExchangeKind::Direct).await.expect("equivalent redeclare");
    assert_code(declare_exchange(&channel(&conn).await, &name, ExchangeKind::Fanout).await, PRECONDITION_FAILED);
    assert_connection_and_broker_alive(&broker, &conn).await;
    close(&conn).await;
}

#[tokio::test]
async fn acking_an_unknown_delivery_tag_is_precondition_failed() {
    let broker = Broker::start();
    let conn = connect(&broker).await;

    // A tag that was never delivered.
    let ch = channel(&conn).await;
    let watch = CloseWatch::new(&ch);
    let _ = ch.basic_ack(42, BasicAckOptions::default()).await;
    assert_eq!(watch.code().await, PRECONDITION_FAILED);

    // A tag acknowledged twice.
    let ch = channel(&conn).await;
    let queue = unique("double-ack");
    declare_plain(&ch, &queue).await;
    publish(&ch, "", &queue, b"once").await;
    let message = get(&ch, &queue, false).await.expect("message");
    let tag = message.delivery.delivery_tag;
    let watch = CloseWatch::new(&ch);
    within("basic.ack", ch.basic_ack(tag, BasicAckOptions::default())).await.expect("first ack");
    let _ = ch.basic_ack(tag, BasicAckOptions::default()).await;
    assert_eq!(watch.code().await, PRECONDITION_FAILED);
    assert_connection_and_broker_alive(&broker, &conn).await;
    close(&conn).await;
}

#[tokio::test]
async fn wrong_password_is_refused_with_access_refused() {
    let broker = Broker::start();
    let url = broker.amqp_url_with(broker.user(), "definitely-wrong", broker.vhost());
    let result = within("connection attempt", Connection::connect(&url, lapin::ConnectionProperties::default())).await;
    // lapin announces authentication_failure_close, so the broker explains
    // the refusal with connection.close 403 before closing the socket.
    assert_code(result.map(|_| ()), ACCESS_REFUSED);
    assert_broker_alive(&broker).await;
}

#[tokio::test]
async fn opening_a_missing_vhost_is_not_allowed() {
    let broker = Broker::start();
    let url = broker.amqp_url_with(broker.user(), broker.password(), &unique("no-such-vhost"));
    let result = within("connection attempt", Connection::connect(&url, lapin::ConnectionProperties::default())).await;
    assert_code(result.map(|_| ()), NOT_ALLOWED);
    assert_broker_alive(&broker).await;
}

#[tokio::test]
async fn reopening_an_open_channel_is_a_connection_error() {
    let broker = Broker::start();
    // Client libraries manage channel ids themselves and will not send a
    // second channel.open for an open channel, so speak the protocol
    // directly.
    let mut raw = raw::RawConnection::open(&broker).await;
    raw.send_method(1, raw::CHANNEL_OPEN, &raw::short_string("")).await;
    raw.expect_method(1, raw::CHANNEL_OPEN_OK).await;
    raw.send_method(1, raw::CHANNEL_OPEN, &raw::short_string("")).await;
    let close = raw.expect_method(0, raw::CONNECTION_CLOSE).await;
    let (code, failing_method) = raw::parse_close(&close);
    assert_eq!(code, CHANNEL_ERROR);
    assert_eq!(failing_method, raw::CHANNEL_OPEN, "close names channel.open");
    raw.send_method(0, raw::CONNECTION_CLOSE_OK, &[]).await;
    assert_broker_alive(&broker).await;
}
