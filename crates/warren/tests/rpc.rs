//! Request/reply: message properties pass through the broker untouched,
//! classic RPC over a callback queue, and direct reply-to
//! (`amq.rabbitmq.reply-to`).

mod common;

use common::code::PRECONDITION_FAILED;
use common::lapin_client::*;
use common::{unique, within, Broker};
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicPublishOptions};
use lapin::types::{AMQPValue, ByteArray, DecimalValue, FieldArray, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel};
use std::collections::BTreeMap;

const DIRECT_REPLY_TO: &str = "amq.rabbitmq.reply-to";

fn table(entries: Vec<(&str, AMQPValue)>) -> FieldTable {
    entries.into_iter().map(|(key, value)| (ShortString::from(key), value)).collect::<BTreeMap<_, _>>().into()
}

fn long_string(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

/// Headers with every field type RabbitMQ supports, nested in tables and
/// arrays.
fn rich_headers() -> FieldTable {
    let nested = table(vec![
        ("inner-string", long_string("inner")),
        ("deeper", AMQPValue::FieldTable(table(vec![("flag", AMQPValue::Boolean(false))]))),
    ]);
    let array = FieldArray::from(vec![
        long_string("element"),
        AMQPValue::LongInt(-1),
        AMQPValue::FieldTable(table(vec![("in-array", AMQPValue::ShortInt(7))])),
        AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::Boolean(true)])),
    ]);
    table(vec![
        ("bool", AMQPValue::Boolean(true)),
        ("i8", AMQPValue::ShortShortInt(-7)),
        ("u8", AMQPValue::ShortShortUInt(200)),
        ("i16", AMQPValue::ShortInt(-300)),
        ("u16", AMQPValue::ShortUInt(60_000)),
        ("i32", AMQPValue::LongInt(-70_000)),
        ("u32", AMQPValue::LongUInt(4_000_000_000)),
        ("i64", AMQPValue::LongLongInt(-5_000_000_000)),
        ("f32", AMQPValue::Float(1.5)),
        ("f64", AMQPValue::Double(-2.25)),
        ("decimal", AMQPValue::DecimalValue(DecimalValue { scale: 2, value: 12_345 })),
        ("string", long_string("héllo, wörld")),
        ("empty-string", long_string("")),
        ("timestamp", AMQPValue::Timestamp(1_700_000_000)),
        ("bytes", AMQPValue::ByteArray(ByteArray::from(vec![0, 1, 2, 255]))),
        ("void", AMQPValue::Void),
        ("table", AMQPValue::FieldTable(nested)),
        ("array", AMQPValue::FieldArray(array)),
        ("empty-table", AMQPValue::FieldTable(FieldTable::default())),
    ])
}

/// A responder: consumes `queue` and answers each request with its body
/// reversed, on the default exchange to the request's reply_to, echoing the
/// correlation id. Returns the request it answered.
async fn serve_one(ch: &Channel, consumer: &mut lapin::Consumer) -> lapin::message::Delivery {
    let request = next_delivery(consumer).await;
    let reply_to = request.properties.reply_to().clone().expect("request has reply_to");
    let mut reply_properties = BasicProperties::default();
    if let Some(correlation_id) = request.properties.correlation_id() {
        reply_properties = reply_properties.with_correlation_id(correlation_id.clone());
    }
    let answer: String = body(&request).chars().rev().collect();
    publish_with(ch, "", reply_to.as_str(), answer.as_bytes(), reply_properties).await;
    within("basic.ack", request.acker.ack(BasicAckOptions::default())).await.expect("ack request");
    request
}

#[tokio::test]
async fn rpc_over_a_callback_queue_passes_every_property_through() {
    let broker = Broker::start();
    let (server_conn, server_ch) = connect_channel(&broker).await;
    let rpc_queue = unique("rpc");
    declare_plain(&server_ch, &rpc_queue).await;
    let mut requests = consume(&server_ch, &rpc_queue, false).await;

    let (client_conn, client_ch) = connect_channel(&broker).await;
    let callback =
        declare(&client_ch, "", lapin::options::QueueDeclareOptions { exclusive: true, ..Default::default() }).await;
    let callback = callback.name().as_str().to_string();
    let mut replies = consume(&client_ch, &callback, true).await;

    let correlation_id = unique("correlation");
    let sent = BasicProperties::default()
        .with_content_type("application/x-test".into())
        .with_content_encoding("identity".into())
        .with_headers(rich_headers())
        .with_delivery_mode(2)
        .with_priority(5)
        .with_correlation_id(correlation_id.as_str().into())
        .with_reply_to(callback.as_str().into())
        .with_message_id("message-1".into())
        .with_timestamp(1_700_000_123)
        .with_type("fib.request".into())
        .with_user_id(broker.user().into())
        .with_app_id("warren-tests".into());
    publish_with(&client_ch, "", &rpc_queue, b"request body", sent.clone()).await;

    let request = serve_one(&server_ch, &mut requests).await;
    assert_eq!(body(&request), "request body");
    assert_eq!(request.properties, sent, "properties changed in transit");
    assert_eq!(request.properties.expiration(), &None);

    let reply = next_delivery(&mut replies).await;
    assert_eq!(body(&reply), "ydob tseuqer");
    assert_eq!(reply.properties.correlation_id(), &Some(correlation_id.as_str().into()));
    assert_eq!(reply.routing_key.as_str(), callback);
    close(&client_conn).await;
    close(&server_conn).await;
}

#[tokio::test]
async fn direct_reply_to_delivers_the_reply_to_the_requesting_channel() {
    let broker = Broker::start();
    let (server_conn, server_ch) = connect_channel(&broker).await;
    let rpc_queue = unique("rpc-direct");
    declare_plain(&server_ch, &rpc_queue).await;
    let mut requests = consume(&server_ch, &rpc_queue, false).await;

    let (client_conn, client_ch) = connect_channel(&broker).await;
    // Consume the pseudo-queue (no-ack) before publishing the request.
    let mut replies = consume(&client_ch, DIRECT_REPLY_TO, true).await;
    let properties =
        BasicProperties::default().with_reply_to(DIRECT_REPLY_TO.into()).with_correlation_id("direct-1".into());
    publish_with(&client_ch, "", &rpc_queue, b"ping", properties).await;

    let request = serve_one(&server_ch, &mut requests).await;
    let reply_to = request.properties.reply_to().clone().expect("reply_to");
    assert!(
        reply_to.as_str().starts_with(&format!("{DIRECT_REPLY_TO}.")),
        "the broker rewrites reply_to to a per-channel address, got {reply_to}"
    );

    let reply = next_delivery(&mut replies).await;
    assert_eq!(body(&reply), "gnip");
    assert_eq!(reply.properties.correlation_id(), &Some("direct-1".into()));
    assert_eq!(reply.exchange.as_str(), "");
    close(&client_conn).await;
    close(&server_conn).await;
}

#[tokio::test]
async fn direct_reply_to_requires_a_no_ack_consumer_first() {
    let broker = Broker::start();
    let conn = connect(&broker).await;
    let target = unique("rpc-target");
    declare_plain(&channel(&conn).await, &target).await;

    // Publishing with reply_to = amq.rabbitmq.reply-to without consuming it
    // first closes the channel with 406.
    let ch = channel(&conn).await;
    let watch = CloseWatch::new(&ch);
    let properties = BasicProperties::default().with_reply_to(DIRECT_REPLY_TO.into());
    let _ = ch.basic_publish("", &target, BasicPublishOptions::default(), b"orphan", properties).await;
    assert_eq!(watch.code().await, PRECONDITION_FAILED);

    // Consuming the pseudo-queue in manual-ack mode is refused with 406.
    let ch = channel(&conn).await;
    assert_code(
        within(
            "basic.consume",
            ch.basic_consume(DIRECT_REPLY_TO, "", BasicConsumeOptions::default(), FieldTable::default()),
        )
        .await,
        PRECONDITION_FAILED,
    );
    close(&conn).await;
}

#[tokio::test]
async fn user_id_must_match_the_authenticated_user() {
    let broker = Broker::start();
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    let queue = unique("user-id");
    declare_plain(&ch, &queue).await;

    let watch = CloseWatch::new(&ch);
    let properties = BasicProperties::default().with_user_id("someone-else".into());
    let _ = ch.basic_publish("", &queue, BasicPublishOptions::default(), b"forged", properties).await;
    assert_eq!(watch.code().await, PRECONDITION_FAILED);

    let ch = channel(&conn).await;
    assert!(get(&ch, &queue, true).await.is_none(), "forged message dropped");
    close(&conn).await;
}
