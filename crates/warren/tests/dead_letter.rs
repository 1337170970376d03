//! Dead-lettering, exercised with the `lapin` client: `x-dead-letter-exchange`
//! and `x-dead-letter-routing-key` for messages rejected or nacked without
//! requeue, expired (`x-message-ttl`, `expiration`), dropped or refused by a
//! length limit (`x-overflow` drop-head, reject-publish-dlx) and over a quorum
//! queue's `x-delivery-limit`; the `x-death` header and `x-first-death-*` /
//! `x-last-death-*` headers exactly as RabbitMQ sets them; and dead-letter
//! cycles, broken as RabbitMQ breaks them.
//!
//! The shape RabbitMQ gives `x-death`: an array of tables, most recent death
//! first, one per (queue, reason), each with exactly `count` (signed 64-bit
//! `l`), `reason`, `queue`, `exchange` (long strings), `routing-keys` (array of
//! long strings: the routing key and any CC keys, never BCC), `time` (a
//! timestamp in seconds) and, when the message had an `expiration` property,
//! `original-expiration` (the property itself is removed).

mod common;

use common::lapin_client::*;
use common::{is_external, unique, within, Broker};
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicNackOptions, BasicPublishOptions, BasicRejectOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::publisher_confirm::Confirmation;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Consumer, ExchangeKind};
use std::collections::BTreeSet;
use std::time::{SystemTime, UNIX_EPOCH};

fn int(value: i32) -> AMQPValue {
    AMQPValue::LongInt(value)
}

/// Queue arguments dead-lettering to `exchange` (with `routing_key` if
/// given), plus `extra`.
fn dead_letter_to(exchange: &str, routing_key: Option<&str>, extra: &[(&str, AMQPValue)]) -> FieldTable {
    let mut arguments = field_table(extra);
    arguments.insert("x-dead-letter-exchange".into(), long_string(exchange));
    if let Some(key) = routing_key {
        arguments.insert("x-dead-letter-routing-key".into(), long_string(key));
    }
    arguments
}

async fn declare_queue(ch: &Channel, prefix: &str, arguments: FieldTable) -> String {
    let queue = unique(prefix);
    declare_with(ch, &queue, QueueDeclareOptions::default(), arguments).await;
    queue
}

async fn declare_exchange(ch: &Channel, kind: ExchangeKind) -> String {
    let name = unique("dlx");
    within(
        "exchange.declare-ok",
        ch.exchange_declare(&name, kind, ExchangeDeclareOptions::default(), FieldTable::default()),
    )
    .await
    .unwrap_or_else(|e| panic!("declare exchange {name}: {e}"));
    name
}

async fn bind(ch: &Channel, queue: &str, exchange: &str, key: &str) {
    within("queue.bind-ok", ch.queue_bind(queue, exchange, key, QueueBindOptions::default(), FieldTable::default()))
        .await
        .unwrap_or_else(|e| panic!("bind {queue} to {exchange}: {e}"));
}

async fn reject(delivery: &Delivery, requeue: bool) {
    within("basic.reject", delivery.acker.reject(BasicRejectOptions { requeue })).await.expect("reject");
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_secs()
}

/// One entry of the `x-death` header.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Death {
    count: i64,
    reason: String,
    queue: String,
    exchange: String,
    routing_keys: Vec<String>,
    time: u64,
    original_expiration: Option<String>,
}

impl Death {
    /// The fields that do not depend on the clock.
    fn summary(&self) -> (i64, &str, &str, &str, Vec<&str>) {
        (
            self.count,
            self.reason.as_str(),
            self.queue.as_str(),
            self.exchange.as_str(),
            self.routing_keys.iter().map(String::as_str).collect(),
        )
    }
}

fn long_str(value: &AMQPValue, what: &str) -> String {
    match value {
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        other => panic!("{what} should be a long string, is {other:?}"),
    }
}

/// The `x-death` header of `delivery`, checking the exact shape RabbitMQ
/// gives it (see the module documentation).
fn deaths(delivery: &Delivery) -> Vec<Death> {
    let headers = headers(delivery);
    let Some(value) = headers.inner().get("x-death") else {
        panic!("no x-death header in {headers:?}");
    };
    let AMQPValue::FieldArray(entries) = value else {
        panic!("x-death should be an array, is {value:?}");
    };
    entries
        .as_slice()
        .iter()
        .map(|entry| {
            let AMQPValue::FieldTable(table) = entry else {
                panic!("an x-death entry should be a table, is {entry:?}");
            };
            let fields = table.inner();
            let keys: BTreeSet<&str> = fields.keys().map(|k| k.as_str()).collect();
            let mut expected = BTreeSet::from(["count", "reason", "queue", "time", "exchange", "routing-keys"]);
            if fields.contains_key("original-expiration") {
                expected.insert("original-expiration");
            }
            assert_eq!(keys, expected, "the keys of an x-death entry");
            let field = |key: &str| &fields[key];
            let count = match field("count") {
                AMQPValue::LongLongInt(n) => *n,
                other => panic!("x-death count should be a signed 64-bit integer ('l'), is {other:?}"),
            };
            let time = match field("time") {
                AMQPValue::Timestamp(t) => *t,
                other => panic!("x-death time should be a timestamp, is {other:?}"),
            };
            let routing_keys = match field("routing-keys") {
                AMQPValue::FieldArray(keys) => {
                    keys.as_slice().iter().map(|key| long_str(key, "a routing key in x-death")).collect()
                }
                other => panic!("x-death routing-keys should be an array, is {other:?}"),
            };
            Death {
                count,
                reason: long_str(field("reason"), "x-death reason"),
                queue: long_str(field("queue"), "x-death queue"),
                exchange: long_str(field("exchange"), "x-death exchange"),
                routing_keys,
                time,
                original_expiration: fields.get("original-expiration").map(|v| long_str(v, "original-expiration")),
            }
        })
        .collect()
}

/// A long-string header of `delivery`.
fn header(delivery: &Delivery, key: &str) -> Option<String> {
    headers(delivery).inner().get(key).map(|value| long_str(value, key))
}

/// Checks `x-first-death-*` and (RabbitMQ 3.13 and later, so Warren only
/// when testing RabbitMQ 3.10) `x-last-death-*`.
fn assert_first_and_last_death(delivery: &Delivery, first: (&str, &str, &str), last: (&str, &str, &str)) {
    let triple = |prefix: &str| {
        (
            header(delivery, &format!("{prefix}-reason")),
            header(delivery, &format!("{prefix}-queue")),
            header(delivery, &format!("{prefix}-exchange")),
        )
    };
    let some = |(reason, queue, exchange): (&str, &str, &str)| {
        (Some(reason.to_string()), Some(queue.to_string()), Some(exchange.to_string()))
    };
    assert_eq!(triple("x-first-death"), some(first), "x-first-death-reason/queue/exchange");
    // RabbitMQ 3.13+ (the x-last-death-* headers do not exist in 3.10).
    if !is_external() {
        assert_eq!(triple("x-last-death"), some(last), "x-last-death-reason/queue/exchange");
    }
}

fn x_delivery_count(delivery: &Delivery) -> Option<AMQPValue> {
    headers(delivery).inner().get("x-delivery-count").cloned()
}

// ------------------------------------------------------ rejected and nacked

#[tokio::test]
async fn a_rejected_message_is_dead_lettered_with_its_death_history() {
    let broker = Broker::start();
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let dlx = declare_exchange(&ch, ExchangeKind::Direct).await;
    let dlq = unique("dlq");
    declare_plain(&ch, &dlq).await;
    bind(&ch, &dlq, &dlx, "dead-key").await;
    let source = declare_queue(&ch, "rejecting", dead_letter_to(&dlx, Some("dead-key"), &[])).await;
    let mut dead = consume(&ch, &dlq, true).await;

    let cc_key = unique("cc-key");
    let app_headers = field_table(&[
        ("app-header", long_string("kept")),
        ("CC", AMQPValue::FieldArray(vec![long_string(&cc_key)].into())),
        ("BCC", AMQPValue::FieldArray(vec![long_string(&unique("bcc-key"))].into())),
    ]);
    let properties = BasicProperties::default()
        .with_content_type("text/plain".into())
        .with_correlation_id("corr-1".into())
        .with_delivery_mode(2)
        .with_expiration("60000".into())
        .with_headers(app_headers);
    let before = now_secs();
    publish_with(&ch, "", &source, b"doomed", properties).await;
    let message = get(&ch, &source, false).await.expect("the message");
    reject(&message.delivery, false).await;

    let delivery = next_delivery(&mut dead).await;
    let after = now_secs();
    assert_eq!(body(&delivery), "doomed");
    assert_eq!(delivery.exchange.as_str(), dlx, "republished to the dead-letter exchange");
    assert_eq!(delivery.routing_key.as_str(), "dead-key", "with the dead-letter routing key");
    assert!(!delivery.redelivered, "a dead-lettered message is a new message");
    let props = &delivery.properties;
    assert_eq!(props.content_type().as_ref().map(|s| s.as_str()), Some("text/plain"));
    assert_eq!(props.correlation_id().as_ref().map(|s| s.as_str()), Some("corr-1"));
    assert_eq!(props.delivery_mode(), &Some(2));
    assert_eq!(props.expiration(), &None, "the expiration property is removed");
    assert_eq!(header(&delivery, "app-header").as_deref(), Some("kept"));
    assert!(!headers(&delivery).contains_key("BCC"), "BCC is never delivered");

    let history = deaths(&delivery);
    assert_eq!(history.len(), 1, "{history:?}");
    let death = &history[0];
    // The routing keys the message was published with, CC included, BCC not.
    assert_eq!(death.summary(), (1, "rejected", source.as_str(), "", vec![source.as_str(), cc_key.as_str()]));
    assert_eq!(death.original_expiration.as_deref(), Some("60000"));
    assert!((before..=after).contains(&death.time), "x-death time {} not in {before}..={after}", death.time);
    assert_first_and_last_death(&delivery, ("rejected", &source, ""), ("rejected", &source, ""));
    close(&conn).await;
}

#[tokio::test]
async fn nacked_messages_keep_their_routing_key_without_a_dead_letter_routing_key() {
    let broker = Broker::start();
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let orders = declare_exchange(&ch, ExchangeKind::Topic).await;
    let dlx = declare_exchange(&ch, ExchangeKind::Direct).await;
    let source = declare_queue(&ch, "nacking", dead_letter_to(&dlx, None, &[])).await;
    bind(&ch, &source, &orders, "order.*").await;
    let (created, other) = (unique("dead-created"), unique("dead-other"));
    for (queue, key) in [(&created, "order.created"), (&other, "order.other")] {
        declare_plain(&ch, queue).await;
        bind(&ch, queue, &dlx, key).await;
    }
    let mut dead_created = consume(&ch, &created, true).await;
    let mut dead_other = consume(&ch, &other, true).await;

    publish(&ch, &orders, "order.created", b"a").await;
    publish(&ch, &orders, "order.other", b"b").await;
    publish(&ch, &orders, "order.created", b"c").await;
    let mut last_tag = 0;
    for _ in 0..3 {
        last_tag = get(&ch, &source, false).await.expect("message").delivery.delivery_tag;
    }
    within("basic.nack", ch.basic_nack(last_tag, BasicNackOptions { multiple: true, requeue: false }))
        .await
        .expect("nack all three");

    for expected in ["a", "c"] {
        let delivery = next_delivery(&mut dead_created).await;
        assert_eq!(body(&delivery), expected);
        assert_eq!(delivery.routing_key.as_str(), "order.created");
        let history = deaths(&delivery);
        assert_eq!(history.len(), 1);
        assert_eq!(history[0].summary(), (1, "rejected", source.as_str(), orders.as_str(), vec!["order.created"]));
        assert_eq!(history[0].original_expiration, None);
        assert_first_and_last_death(&delivery, ("rejected", &source, &orders), ("rejected", &source, &orders));
    }
    let delivery = next_delivery(&mut dead_other).await;
    assert_eq!(body(&delivery), "b");
    assert_eq!(delivery.routing_key.as_str(), "order.other");
    assert_eq!(deaths(&delivery)[0].routing_keys, ["order.other"]);
    close(&conn).await;
}

#[tokio::test]
async fn only_messages_discarded_by_the_consumer_are_dead_lettered() {
    let broker = Broker::start();
    let conn = connect(&broker).await;
    let (ch, holder) = (confirm_channel(&conn).await, channel(&conn).await);
    let dlq = unique("dlq-discarded");
    declare_plain(&ch, &dlq).await;
    let source = declare_queue(&ch, "discarding", dead_letter_to("", Some(&dlq), &[])).await;
    let mut dead = consume(&ch, &dlq, true).await;
    publish_all(&ch, &source, &["requeued then acked", "unacked at close", "nacked", "rejected"]).await;

    // Rejected with requeue: back in the queue, then acked.
    let first = get(&ch, &source, false).await.expect("message");
    reject(&first.delivery, true).await;
    let again = get(&ch, &source, false).await.expect("requeued message");
    assert_eq!(body(&again.delivery), "requeued then acked");
    within("basic.ack", again.delivery.acker.ack(BasicAckOptions::default())).await.expect("ack");
    // Unacked when its channel closes: requeued, not dead-lettered.
    let held = get(&holder, &source, false).await.expect("message");
    assert_eq!(body(&held.delivery), "unacked at close");
    close_channel(&holder).await;

    let mut discarded = Vec::new();
    for _ in 0..3 {
        discarded.push(get(&ch, &source, false).await.expect("message").delivery);
    }
    let bodies: Vec<String> = discarded.iter().map(body).collect();
    assert_eq!(bodies, ["unacked at close", "nacked", "rejected"]);
    within("basic.ack", discarded[0].acker.ack(BasicAckOptions::default())).await.expect("ack");
    within("basic.nack", discarded[1].acker.nack(BasicNackOptions { multiple: false, requeue: false }))
        .await
        .expect("nack");
    reject(&discarded[2], false).await;

    assert_eq!(next_bodies(&mut dead, 2).await, ["nacked", "rejected"]);
    assert_no_delivery(&mut dead).await;
    close(&conn).await;
}

#[tokio::test]
async fn a_missing_dead_letter_exchange_drops_the_message() {
    let broker = Broker::start();
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let missing = unique("missing-dlx");
    let source = declare_queue(&ch, "missing-dlx-source", dead_letter_to(&missing, None, &[])).await;
    publish(&ch, "", &source, b"dropped").await;
    let message = get(&ch, &source, false).await.expect("message");
    reject(&message.delivery, false).await;

    assert_eq!(message_count(&ch, &source).await, 0);
    assert!(ch.status().connected(), "no error for the client");
    // The exchange was not created by dead-lettering.
    let probe = channel(&conn).await;
    let passive = ExchangeDeclareOptions { passive: true, ..ExchangeDeclareOptions::default() };
    assert_code(
        within(
            "passive exchange.declare",
            probe.exchange_declare(&missing, ExchangeKind::Direct, passive, FieldTable::default()),
        )
        .await,
        common::code::NOT_FOUND,
    );
    assert_broker_alive(&broker).await;
    close(&conn).await;
}

// ------------------------------------------------------------------ expired

#[tokio::test]
async fn expired_messages_are_dead_lettered_with_reason_expired() {
    let broker = Broker::start();
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let dlq = unique("dlq-expired");
    declare_plain(&ch, &dlq).await;
    let queue_ttl =
        declare_queue(&ch, "queue-ttl", dead_letter_to("", Some(&dlq), &[("x-message-ttl", int(100))])).await;
    let message_ttl = declare_queue(&ch, "message-ttl", dead_letter_to("", Some(&dlq), &[])).await;
    let mut dead = consume(&ch, &dlq, true).await;

    publish(&ch, "", &queue_ttl, b"queue ttl").await;
    let expiring = BasicProperties::default().with_expiration("100".into());
    publish_with(&ch, "", &message_ttl, b"message ttl", expiring).await;

    let mut received = vec![next_delivery(&mut dead).await, next_delivery(&mut dead).await];
    received.sort_by_key(body);
    let [by_message, by_queue] = <[Delivery; 2]>::try_from(received).expect("two deliveries");
    assert_eq!((body(&by_message), body(&by_queue)), ("message ttl".to_string(), "queue ttl".to_string()));

    let history = deaths(&by_queue);
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].summary(), (1, "expired", queue_ttl.as_str(), "", vec![queue_ttl.as_str()]));
    assert_eq!(history[0].original_expiration, None, "the message had no expiration property");
    assert_first_and_last_death(&by_queue, ("expired", &queue_ttl, ""), ("expired", &queue_ttl, ""));

    let history = deaths(&by_message);
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].summary(), (1, "expired", message_ttl.as_str(), "", vec![message_ttl.as_str()]));
    assert_eq!(history[0].original_expiration.as_deref(), Some("100"));
    assert_eq!(by_message.properties.expiration(), &None, "the expiration property is removed");
    assert_first_and_last_death(&by_message, ("expired", &message_ttl, ""), ("expired", &message_ttl, ""));
    close(&conn).await;
}

// ------------------------------------------------------------ length limits

#[tokio::test]
async fn messages_dropped_from_the_head_are_dead_lettered_with_reason_maxlen() {
    let broker = Broker::start();
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let dlq = unique("dlq-maxlen");
    declare_plain(&ch, &dlq).await;
    let source = declare_queue(&ch, "maxlen", dead_letter_to("", Some(&dlq), &[("x-max-length", int(2))])).await;
    let mut dead = consume(&ch, &dlq, true).await;
    publish_all(&ch, &source, &["1", "2", "3", "4"]).await;

    for expected in ["1", "2"] {
        let delivery = next_delivery(&mut dead).await;
        assert_eq!(body(&delivery), expected);
        assert_eq!(deaths(&delivery)[0].summary(), (1, "maxlen", source.as_str(), "", vec![source.as_str()]));
        assert_first_and_last_death(&delivery, ("maxlen", &source, ""), ("maxlen", &source, ""));
    }
    assert_eq!(get_all(&ch, &source).await, ["3", "4"]);
    close(&conn).await;
}

async fn publish_outcome(ch: &Channel, queue: &str, body: &str) -> &'static str {
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
        Confirmation::Ack(_) => "ack",
        Confirmation::Nack(_) => "nack",
        Confirmation::NotRequested => panic!("the channel is not in confirm mode"),
    }
}

#[tokio::test]
async fn reject_publish_dlx_dead_letters_the_refused_message() {
    let broker = Broker::start();
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let dlq = unique("dlq-refused");
    declare_plain(&ch, &dlq).await;
    let limit = |overflow: &str| {
        dead_letter_to("", Some(&dlq), &[("x-max-length", int(1)), ("x-overflow", long_string(overflow))])
    };
    let with_dlx = declare_queue(&ch, "reject-publish-dlx", limit("reject-publish-dlx")).await;
    let without_dlx = declare_queue(&ch, "reject-publish", limit("reject-publish")).await;
    let mut dead = consume(&ch, &dlq, true).await;

    assert_eq!(publish_outcome(&ch, &with_dlx, "kept").await, "ack");
    assert_eq!(publish_outcome(&ch, &with_dlx, "refused").await, "nack", "refused, so nacked");
    let delivery = next_delivery(&mut dead).await;
    assert_eq!(body(&delivery), "refused");
    assert_eq!(deaths(&delivery)[0].summary(), (1, "maxlen", with_dlx.as_str(), "", vec![with_dlx.as_str()]));
    assert_first_and_last_death(&delivery, ("maxlen", &with_dlx, ""), ("maxlen", &with_dlx, ""));
    assert_eq!(get_all(&ch, &with_dlx).await, ["kept"]);

    // Plain reject-publish does not dead-letter what it refuses.
    assert_eq!(publish_outcome(&ch, &without_dlx, "kept").await, "ack");
    assert_eq!(publish_outcome(&ch, &without_dlx, "refused").await, "nack");
    publish(&ch, "", &dlq, b"sentinel").await;
    assert_eq!(body(&next_delivery(&mut dead).await), "sentinel");
    assert_no_delivery(&mut dead).await;
    assert_eq!(get_all(&ch, &without_dlx).await, ["kept"]);
    close(&conn).await;
}

// ------------------------------------------------------------------- cycles

/// A queue dead-lettering rejected messages to itself: each death from the
/// same queue for the same reason increments the count of its entry. A
/// cycle with a rejection in it is never broken.
#[tokio::test]
async fn a_second_death_in_the_same_queue_increments_the_count() {
    let broker = Broker::start();
    let conn = connect(&broker).await;
    let (ch, consumer_ch) = (confirm_channel(&conn).await, channel(&conn).await);
    let queue = unique("self-reject");
    declare_with(&ch, &queue, QueueDeclareOptions::default(), dead_letter_to("", Some(&queue), &[])).await;
    let mut consumer = consume(&consumer_ch, &queue, false).await;
    publish(&ch, "", &queue, b"again and again").await;

    let first = next_delivery(&mut consumer).await;
    assert!(!headers(&first).contains_key("x-death"));
    reject(&first, false).await;
    let mut delivery = next_delivery(&mut consumer).await;
    for round in 1..=3_i64 {
        assert_eq!(body(&delivery), "again and again");
        let history = deaths(&delivery);
        assert_eq!(history.len(), 1, "round {round}: one entry per queue and reason, {history:?}");
        assert_eq!(history[0].summary(), (round, "rejected", queue.as_str(), "", vec![queue.as_str()]));
        assert_first_and_last_death(&delivery, ("rejected", &queue, ""), ("rejected", &queue, ""));
        reject(&delivery, false).await;
        delivery = next_delivery(&mut consumer).await;
    }
    within("basic.ack", delivery.acker.ack(BasicAckOptions::default())).await.expect("ack");
    close(&conn).await;
}

/// The usual retry pattern: a work queue dead-letters rejected messages to a
/// delay queue whose TTL dead-letters them back. The cycle has a rejection
/// in it, so it goes on; entries are ordered most recent first.
#[tokio::test]
async fn a_cycle_with_a_rejection_through_a_delay_queue_keeps_cycling() {
    let broker = Broker::start();
    let conn = connect(&broker).await;
    let (ch, consumer_ch) = (confirm_channel(&conn).await, channel(&conn).await);
    let (work, delay) = (unique("work"), unique("delay"));
    declare_with(&ch, &work, QueueDeclareOptions::default(), dead_letter_to("", Some(&delay), &[])).await;
    let delay_args = dead_letter_to("", Some(&work), &[("x-message-ttl", int(50))]);
    declare_with(&ch, &delay, QueueDeclareOptions::default(), delay_args).await;
    let mut consumer = consume(&consumer_ch, &work, false).await;
    publish(&ch, "", &work, b"retried").await;

    let mut delivery = next_delivery(&mut consumer).await;
    for round in 1..=3_i64 {
        reject(&delivery, false).await;
        delivery = next_delivery(&mut consumer).await;
        assert_eq!(body(&delivery), "retried");
        assert_eq!(delivery.routing_key.as_str(), work, "round {round}");
        let history = deaths(&delivery);
        let summaries: Vec<_> = history.iter().map(Death::summary).collect();
        assert_eq!(
            summaries,
            [
                // Each queue got it with the other's dead-letter routing key.
                (round, "expired", delay.as_str(), "", vec![delay.as_str()]),
                (round, "rejected", work.as_str(), "", vec![work.as_str()]),
            ],
            "round {round}"
        );
        assert_first_and_last_death(&delivery, ("rejected", &work, ""), ("expired", &delay, ""));
    }
    within("basic.ack", delivery.acker.ack(BasicAckOptions::default())).await.expect("ack");
    close(&conn).await;
}

/// A queue whose expired messages are dead-lettered (through a fanout
/// exchange) back to itself: there is no rejection in the cycle, so the
/// message is not put back in the queue it died in; other queues bound to
/// the exchange still get their copy.
#[tokio::test]
async fn an_automatic_cycle_back_to_the_same_queue_is_dropped() {
    let broker = Broker::start();
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let fanout = declare_exchange(&ch, ExchangeKind::Fanout).await;
    let queue = declare_queue(&ch, "self-expire", dead_letter_to(&fanout, None, &[("x-message-ttl", int(100))])).await;
    let monitor = unique("monitor");
    declare_plain(&ch, &monitor).await;
    bind(&ch, &queue, &fanout, "").await;
    bind(&ch, &monitor, &fanout, "").await;
    let mut monitored = consume(&ch, &monitor, true).await;
    publish(&ch, "", &queue, b"looping?").await;

    let copy = next_delivery(&mut monitored).await;
    assert_eq!(
        deaths(&copy).iter().map(Death::summary).collect::<Vec<_>>(),
        [(1, "expired", queue.as_str(), "", vec![queue.as_str()])]
    );
    assert_eq!(message_count(&ch, &queue).await, 0, "not dead-lettered back into the queue it expired from");
    let mut consumer = consume(&ch, &queue, true).await;
    assert_no_delivery(&mut consumer).await;
    assert_no_delivery(&mut monitored).await;
    close(&conn).await;
}

/// Two queues expiring into each other: the message goes from the first to
/// the second, and is dropped when it would reach the first again.
#[tokio::test]
async fn an_automatic_cycle_through_two_queues_is_dropped_when_it_comes_back() {
    let broker = Broker::start();
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let (to_a, to_b) =
        (declare_exchange(&ch, ExchangeKind::Fanout).await, declare_exchange(&ch, ExchangeKind::Fanout).await);
    let ttl = [("x-message-ttl", int(100))];
    let a = declare_queue(&ch, "cycle-a", dead_letter_to(&to_b, None, &ttl)).await;
    let b = declare_queue(&ch, "cycle-b", dead_letter_to(&to_a, None, &ttl)).await;
    let monitor = unique("cycle-monitor");
    declare_plain(&ch, &monitor).await;
    bind(&ch, &a, &to_a, "").await;
    bind(&ch, &b, &to_b, "").await;
    bind(&ch, &monitor, &to_a, "").await;
    bind(&ch, &monitor, &to_b, "").await;
    let mut monitored = consume(&ch, &monitor, true).await;
    publish(&ch, "", &a, b"looping?").await;

    // Died in a, went to b (and the monitor).
    let first = next_delivery(&mut monitored).await;
    assert_eq!(first.exchange.as_str(), to_b);
    assert_eq!(
        deaths(&first).iter().map(Death::summary).collect::<Vec<_>>(),
        [(1, "expired", a.as_str(), "", vec![a.as_str()])]
    );
    // Died in b: the copy for a is dropped, the monitor's is not.
    let second = next_delivery(&mut monitored).await;
    assert_eq!(second.exchange.as_str(), to_a);
    assert_eq!(
        deaths(&second).iter().map(Death::summary).collect::<Vec<_>>(),
        [(1, "expired", b.as_str(), to_b.as_str(), vec![a.as_str()]), (1, "expired", a.as_str(), "", vec![a.as_str()]),]
    );
    assert_first_and_last_death(&second, ("expired", &a, ""), ("expired", &b, &to_b));
    assert_eq!(message_count(&ch, &a).await, 0, "not back in a");
    assert_eq!(message_count(&ch, &b).await, 0);
    let mut consumer_a = consume(&ch, &a, true).await;
    assert_no_delivery(&mut consumer_a).await;
    assert_no_delivery(&mut monitored).await;
    close(&conn).await;
}

// ------------------------------------------------------ quorum delivery limit

fn quorum(dlq: &str, extra: &[(&str, AMQPValue)]) -> FieldTable {
    let mut arguments = dead_letter_to("", Some(dlq), extra);
    arguments.insert("x-queue-type".into(), long_string("quorum"));
    arguments
}

async fn declare_quorum(ch: &Channel, prefix: &str, arguments: FieldTable) -> String {
    let queue = unique(prefix);
    let options = QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() };
    declare_with(ch, &queue, options, arguments).await;
    queue
}

async fn delete_queue(ch: &Channel, queue: &str) {
    within("queue.delete-ok", ch.queue_delete(queue, Default::default())).await.expect("delete queue");
}

/// Rejects (with requeue) the message `consumer` receives `returns` times,
/// checking `x-delivery-count` on each redelivery, and returns the last
/// delivery (not yet settled).
async fn reject_repeatedly(consumer: &mut Consumer, returns: i64) -> Delivery {
    let mut delivery = next_delivery(consumer).await;
    assert!(matches!(x_delivery_count(&delivery), None | Some(AMQPValue::LongLongInt(0))));
    for count in 1..=returns {
        reject(&delivery, true).await;
        delivery = next_delivery(consumer).await;
        assert!(delivery.redelivered);
        assert_eq!(x_delivery_count(&delivery), Some(AMQPValue::LongLongInt(count)), "redelivery {count}");
    }
    delivery
}

#[tokio::test]
async fn a_quorum_queue_dead_letters_a_message_returned_more_than_its_delivery_limit() {
    let broker = Broker::start();
    let conn = connect(&broker).await;
    let (ch, consumer_ch) = (confirm_channel(&conn).await, channel(&conn).await);
    let dlq = unique("dlq-delivery-limit");
    declare_plain(&ch, &dlq).await;
    let queue = declare_quorum(&ch, "delivery-limit", quorum(&dlq, &[("x-delivery-limit", int(2))])).await;
    let mut dead = consume(&ch, &dlq, true).await;
    let mut consumer = consume(&consumer_ch, &queue, false).await;
    publish(&ch, "", &queue, b"poison").await;

    // Two returns are within the limit; the third is one too many.
    let last = reject_repeatedly(&mut consumer, 2).await;
    reject(&last, true).await;
    let delivery = next_delivery(&mut dead).await;
    assert_eq!(body(&delivery), "poison");
    let history = deaths(&delivery);
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].summary(), (1, "delivery_limit", queue.as_str(), "", vec![queue.as_str()]));
    assert_first_and_last_death(&delivery, ("delivery_limit", &queue, ""), ("delivery_limit", &queue, ""));
    assert_no_delivery(&mut consumer).await;
    assert_eq!(message_count(&ch, &queue).await, 0);
    delete_queue(&ch, &queue).await;
    close(&conn).await;
}

/// RabbitMQ 4 gives quorum queues a delivery limit of 20 by default (3.10
/// had none).
#[tokio::test]
async fn a_quorum_queue_has_a_default_delivery_limit_of_twenty() {
    let broker = Broker::start();
    let conn = connect(&broker).await;
    let (ch, consumer_ch) = (confirm_channel(&conn).await, channel(&conn).await);
    let dlq = unique("dlq-default-limit");
    declare_plain(&ch, &dlq).await;
    let queue = declare_quorum(&ch, "default-limit", quorum(&dlq, &[])).await;
    let mut dead = consume(&ch, &dlq, true).await;
    let mut consumer = consume(&consumer_ch, &queue, false).await;
    publish(&ch, "", &queue, b"poison").await;

    let last = reject_repeatedly(&mut consumer, 20).await;
    reject(&last, true).await;
    // RabbitMQ 4.x behaviour: no default limit in 3.10, where the message
    // simply comes back.
    if !is_external() {
        let delivery = next_delivery(&mut dead).await;
        assert_eq!(body(&delivery), "poison");
        assert_eq!(deaths(&delivery)[0].summary(), (1, "delivery_limit", queue.as_str(), "", vec![queue.as_str()]));
    }
    delete_queue(&ch, &queue).await;
    close(&conn).await;
}
