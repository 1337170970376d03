//! Answers where RabbitMQ 3.10 differs from the letter of the spec (or from what a broker might
//! choose), encoded as RabbitMQ gives them: every test here also passes against RabbitMQ
//! (`WARREN_TEST_AMQP_URL`). Clients and their own test suites rely on these (issue 13).

mod common;

use common::code::{ACCESS_REFUSED, PRECONDITION_FAILED, RESOURCE_LOCKED};
use common::lapin_client::*;
use common::{eventually, unique, within, Broker};
use lapin::options::{
    BasicRecoverOptions, ChannelFlowOptions, ExchangeDeclareOptions, ExchangeUnbindOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, ExchangeKind};

const NOT_IMPLEMENTED: u16 = 540;

#[tokio::test]
async fn channel_flow_active_false_is_not_implemented() {
    let broker = Broker::start();
    let (conn, ch) = connect_channel(&broker).await;
    // RabbitMQ never stops deliveries on request: it closes the connection with 540.
    let r = within("channel.flow", ch.channel_flow(ChannelFlowOptions { active: false })).await;
    assert_code(r, NOT_IMPLEMENTED);
    eventually("the connection is closed", || async { !conn.status().connected() }).await;
    // active=true is harmless and answered.
    let (_conn, ch) = connect_channel(&broker).await;
    let active = within("channel.flow", ch.channel_flow(ChannelFlowOptions { active: true })).await;
    assert!(active.expect("flow-ok"));
}

#[tokio::test]
async fn basic_recover_without_requeue_is_not_implemented() {
    let broker = Broker::start();
    let (conn, ch) = connect_channel(&broker).await;
    let r = within("basic.recover", ch.basic_recover(BasicRecoverOptions { requeue: false })).await;
    assert_code(r, NOT_IMPLEMENTED);
    eventually("the connection is closed", || async { !conn.status().connected() }).await;
}

#[tokio::test]
async fn unbinding_what_does_not_exist_is_answered_unbind_ok() {
    let broker = Broker::start();
    let (_conn, ch) = connect_channel(&broker).await;
    let queue = unique("unbind");
    declare_plain(&ch, &queue).await;
    let missing_q = unique("no-such-queue");
    let missing_x = unique("no-such-exchange");
    for (q, x) in
        [(missing_q.as_str(), "amq.direct"), (queue.as_str(), missing_x.as_str()), (queue.as_str(), "amq.direct")]
    {
        within("queue.unbind", ch.queue_unbind(q, x, "k", FieldTable::default()))
            .await
            .unwrap_or_else(|e| panic!("queue.unbind {q} from {x}: {e}"));
    }
    for (dest, src) in [(missing_x.as_str(), "amq.direct"), ("amq.fanout", missing_x.as_str())] {
        within(
            "exchange.unbind",
            ch.exchange_unbind(dest, src, "k", ExchangeUnbindOptions::default(), FieldTable::default()),
        )
        .await
        .unwrap_or_else(|e| panic!("exchange.unbind {dest} from {src}: {e}"));
    }
    // The channel is still open.
    declare_plain(&ch, &unique("after")).await;
}

#[tokio::test]
async fn a_passive_declare_of_the_default_exchange_is_refused() {
    let broker = Broker::start();
    let (conn, ch) = connect_channel(&broker).await;
    let options = ExchangeDeclareOptions { passive: true, ..ExchangeDeclareOptions::default() };
    let r =
        within("exchange.declare", ch.exchange_declare("", ExchangeKind::Direct, options, FieldTable::default())).await;
    assert_code(r, ACCESS_REFUSED);
    assert!(conn.status().connected(), "a soft error");
}

#[tokio::test]
async fn redeclaring_an_exclusive_queue_with_another_exclusive_flag_is_resource_locked() {
    let broker = Broker::start();
    let (conn, ch) = connect_channel(&broker).await;
    let queue = unique("excl");
    declare(&ch, &queue, QueueDeclareOptions { exclusive: true, ..QueueDeclareOptions::default() }).await;
    let r =
        within("queue.declare", ch.queue_declare(&queue, QueueDeclareOptions::default(), FieldTable::default())).await;
    assert_code(r, RESOURCE_LOCKED);
    close(&conn).await;
}

#[tokio::test]
async fn a_headers_binding_with_an_invalid_x_match_is_refused() {
    let broker = Broker::start();
    let (_conn, ch) = connect_channel(&broker).await;
    let queue = unique("xmatch");
    declare_plain(&ch, &queue).await;
    let mut args = FieldTable::default();
    args.insert("x-match".into(), AMQPValue::LongString("some".into()));
    args.insert("h".into(), AMQPValue::LongString("v".into()));
    let r = within("queue.bind", ch.queue_bind(&queue, "amq.headers", "", QueueBindOptions::default(), args)).await;
    assert_code(r, PRECONDITION_FAILED);
}

#[tokio::test]
async fn a_message_with_ttl_0_that_no_consumer_takes_at_once_expires() {
    let broker = Broker::start();
    let (_conn, ch) = connect_channel(&broker).await;
    let queue = unique("ttl0");
    declare_plain(&ch, &queue).await;
    for _ in 0..20 {
        publish_with(&ch, "", &queue, b"gone", BasicProperties::default().with_expiration("0".into())).await;
    }
    publish(&ch, "", &queue, b"kept").await;
    let got = get(&ch, &queue, true).await.expect("a message");
    assert_eq!(body(&got.delivery), "kept", "the TTL-0 message expired");
    assert!(get(&ch, &queue, true).await.is_none());
}

#[tokio::test]
async fn deleting_a_queue_answers_delete_ok_before_cancelling_its_consumer_on_that_channel() {
    use common::raw::{self, short_string, RawConnection};
    let broker = Broker::start();
    let mut conn = RawConnection::open(&broker).await;
    conn.open_channel(1).await;
    let queue = unique("delete-order");
    // queue.declare: reserved, name, no flags, no arguments.
    let mut declare = vec![0, 0];
    declare.extend(short_string(&queue));
    declare.extend([0, 0, 0, 0, 0]);
    conn.send_method(1, raw::QUEUE_DECLARE, &declare).await;
    conn.expect_method(1, raw::QUEUE_DECLARE_OK).await;
    conn.consume(1, &queue, "ctag").await;
    // queue.delete: reserved, name, no flags.
    let mut delete = vec![0, 0];
    delete.extend(short_string(&queue));
    delete.push(0);
    conn.send_method(1, raw::QUEUE_DELETE, &delete).await;
    // py-amqp (and so kombu and Celery) raises inside queue_delete if the cancel comes first.
    let (channel, first, _) = conn.next_method().await;
    assert_eq!((channel, first), (1, raw::QUEUE_DELETE_OK), "delete-ok comes first");
    let (channel, second, args) = conn.next_method().await;
    assert_eq!((channel, second), (1, raw::BASIC_CANCEL), "then the consumer is cancelled");
    assert_eq!(&args[..5], &short_string("ctag")[..]);
}

#[tokio::test]
async fn channel_max_limits_how_many_channels_are_open_not_their_numbers() {
    use common::raw::RawConnection;
    let broker = Broker::start();
    let mut conn = RawConnection::open(&broker).await;
    // The handshake accepted the broker's channel_max (2047 by default); a higher number opens.
    conn.open_channel(4000).await;
}

fn with_cc(keys: &[&str]) -> BasicProperties {
    let mut headers = FieldTable::default();
    let cc: Vec<AMQPValue> = keys.iter().map(|k| AMQPValue::LongString((*k).into())).collect();
    headers.insert("CC".into(), AMQPValue::FieldArray(cc.into()));
    BasicProperties::default().with_headers(headers)
}

async fn bind(ch: &lapin::Channel, queue: &str, exchange: &str, key: &str) {
    within("queue.bind", ch.queue_bind(queue, exchange, key, QueueBindOptions::default(), FieldTable::default()))
        .await
        .expect("queue.bind");
}

async fn exchange(ch: &lapin::Channel, name: &str, kind: ExchangeKind) {
    within(
        "exchange.declare",
        ch.exchange_declare(name, kind, ExchangeDeclareOptions::default(), FieldTable::default()),
    )
    .await
    .expect("exchange.declare");
}

#[tokio::test]
async fn cc_keys_are_routed_at_every_exchange_to_exchange_hop() {
    let broker = Broker::start();
    let (_conn, ch) = connect_channel(&broker).await;
    let (x, y, queue) = (unique("cc-x"), unique("cc-y"), unique("cc-q"));
    exchange(&ch, &x, ExchangeKind::Direct).await;
    exchange(&ch, &y, ExchangeKind::Direct).await;
    // The routing key takes the message from x to y; only its CC key matches at y.
    within("exchange.bind", ch.exchange_bind(&y, &x, "main", Default::default(), FieldTable::default()))
        .await
        .expect("exchange.bind");
    declare_plain(&ch, &queue).await;
    bind(&ch, &queue, &y, "copy").await;
    publish_with(&ch, &x, "main", b"m", with_cc(&["copy"])).await;
    let got = get(&ch, &queue, true).await.expect("routed by the CC key at the second hop");
    assert_eq!(body(&got.delivery), "m");
    assert!(get(&ch, &queue, true).await.is_none(), "once");
}

#[tokio::test]
async fn a_queue_reached_several_ways_in_one_publish_gets_one_copy() {
    let broker = Broker::start();
    let (_conn, ch) = connect_channel(&broker).await;
    let (x, y, z, queue) = (unique("dup-x"), unique("dup-y"), unique("dup-z"), unique("dup-q"));
    exchange(&ch, &x, ExchangeKind::Direct).await;
    exchange(&ch, &y, ExchangeKind::Fanout).await;
    exchange(&ch, &z, ExchangeKind::Fanout).await;
    declare_plain(&ch, &queue).await;
    // Two bindings of the queue itself, and two exchange paths to it.
    bind(&ch, &queue, &x, "a").await;
    bind(&ch, &queue, &x, "b").await;
    for (dest, key) in [(&y, "a"), (&z, "b")] {
        within("exchange.bind", ch.exchange_bind(dest, &x, key, Default::default(), FieldTable::default()))
            .await
            .expect("exchange.bind");
        bind(&ch, &queue, dest, "").await;
    }
    publish_with(&ch, &x, "a", b"once", with_cc(&["b", "a"])).await;
    assert_eq!(body(&get(&ch, &queue, true).await.expect("a copy").delivery), "once");
    assert!(get(&ch, &queue, true).await.is_none(), "exactly one copy");
}

#[tokio::test]
async fn a_dead_letter_routing_key_replaces_the_cc_keys_and_removes_the_header() {
    let broker = Broker::start();
    let (_conn, ch) = connect_channel(&broker).await;
    let (source, target, by_cc) = (unique("dl-src"), unique("dl-target"), unique("dl-cc"));
    let mut args = FieldTable::default();
    args.insert("x-dead-letter-exchange".into(), AMQPValue::LongString("amq.direct".into()));
    args.insert("x-dead-letter-routing-key".into(), AMQPValue::LongString(target.as_str().into()));
    within("queue.declare", ch.queue_declare(&source, QueueDeclareOptions::default(), args)).await.expect("declare");
    declare_plain(&ch, &target).await;
    declare_plain(&ch, &by_cc).await;
    bind(&ch, &target, "amq.direct", &target).await;
    bind(&ch, &by_cc, "amq.direct", &by_cc).await;
    publish_with(&ch, "", &source, b"dead", with_cc(&[&by_cc])).await;
    // The publish itself reached the CC queue too (the default exchange routes CC keys).
    assert!(get(&ch, &by_cc, true).await.is_some(), "the published copy");
    let m = get(&ch, &source, false).await.expect("the message");
    within("basic.reject", m.delivery.reject(lapin::options::BasicRejectOptions { requeue: false }))
        .await
        .expect("reject");
    let dead = get(&ch, &target, true).await.expect("dead-lettered with the queue's routing key");
    let headers = dead.delivery.properties.headers().clone().unwrap_or_default();
    assert!(!headers.inner().contains_key("CC"), "CC removed: {headers:?}");
    assert!(get(&ch, &by_cc, true).await.is_none(), "the CC key is not used when dead-lettering");
}

#[tokio::test]
async fn a_passive_declare_of_the_direct_reply_to_queue_answers_like_rabbitmq() {
    let broker = Broker::start();
    let (_conn, ch) = connect_channel(&broker).await;
    let q = declare_passive(&ch, "amq.rabbitmq.reply-to").await.expect("declare-ok");
    assert_eq!((q.name().as_str(), q.message_count(), q.consumer_count()), ("amq.rabbitmq.reply-to", 0, 1));
}

async fn one_unacked(ch: &lapin::Channel, prefix: &str) -> (String, u64) {
    let queue = unique(prefix);
    declare_plain(ch, &queue).await;
    publish(ch, "", &queue, b"m").await;
    let m = get(ch, &queue, false).await.expect("a message");
    (queue, m.delivery.delivery_tag)
}

#[tokio::test]
async fn inside_a_transaction_an_unknown_or_repeated_delivery_tag_is_precondition_failed() {
    use lapin::options::BasicAckOptions;
    let broker = Broker::start();
    let (conn, ch) = connect_channel(&broker).await;
    within("tx.select", ch.tx_select()).await.expect("tx.select");
    let watch = CloseWatch::new(&ch);
    within("basic.ack", ch.basic_ack(99, BasicAckOptions::default())).await.expect("sent");
    assert_eq!(watch.code().await, PRECONDITION_FAILED, "an unknown tag, even before the commit");

    let ch = channel(&conn).await;
    let (_queue, tag) = one_unacked(&ch, "tx-twice").await;
    within("tx.select", ch.tx_select()).await.expect("tx.select");
    let watch = CloseWatch::new(&ch);
    within("basic.ack", ch.basic_ack(tag, BasicAckOptions::default())).await.expect("sent");
    within("basic.ack", ch.basic_ack(tag, BasicAckOptions::default())).await.expect("sent");
    assert_eq!(watch.code().await, PRECONDITION_FAILED, "the same tag twice in one transaction");
}

#[tokio::test]
async fn an_ack_in_a_transaction_never_committed_leaves_the_message_unacked() {
    use lapin::options::BasicAckOptions;
    let broker = Broker::start();
    let (conn, ch) = connect_channel(&broker).await;
    let (queue, tag) = one_unacked(&ch, "tx-open").await;
    within("tx.select", ch.tx_select()).await.expect("tx.select");
    within("basic.ack", ch.basic_ack(tag, BasicAckOptions::default())).await.expect("sent");
    // A rollback drops the ack: the message is still unacked (not back in the queue)...
    within("tx.rollback", ch.tx_rollback()).await.expect("tx.rollback");
    let other = channel(&conn).await;
    assert!(get(&other, &queue, true).await.is_none(), "still unacked after the rollback");
    // ...and the same tag can be acked again and committed.
    within("basic.ack", ch.basic_ack(tag, BasicAckOptions::default())).await.expect("sent");
    within("tx.commit", ch.tx_commit()).await.expect("tx.commit");
    // An ack never committed: closing the channel requeues the message, redelivered.
    publish(&other, "", &queue, b"again").await;
    let m = get(&ch, &queue, false).await.expect("a message");
    within("basic.ack", ch.basic_ack(m.delivery.delivery_tag, BasicAckOptions::default())).await.expect("sent");
    close_channel(&ch).await;
    let back = get(&other, &queue, true).await.expect("requeued at the close");
    assert!(back.delivery.redelivered);
    assert_eq!(body(&back.delivery), "again");
}

#[tokio::test]
async fn a_requeue_at_the_length_limit_drops_the_requeued_head() {
    use lapin::options::BasicNackOptions;
    let broker = Broker::start();
    let (_conn, ch) = connect_channel(&broker).await;
    let queue = unique("maxlen-requeue");
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongInt(2));
    within("queue.declare", ch.queue_declare(&queue, QueueDeclareOptions::default(), args)).await.expect("declare");
    publish(&ch, "", &queue, b"m1").await;
    publish(&ch, "", &queue, b"m2").await;
    let m1 = get(&ch, &queue, false).await.expect("m1");
    publish(&ch, "", &queue, b"m3").await;
    within("basic.nack", m1.delivery.nack(BasicNackOptions { requeue: true, multiple: false })).await.expect("nack");
    // m1 goes back to the head, the queue is over its limit, and the head goes.
    assert_eq!(get_all(&ch, &queue).await, ["m2", "m3"]);
}

#[tokio::test]
async fn declares_deletes_and_binds_drop_cr_and_lf_from_names() {
    use lapin::options::{BasicConsumeOptions, QueueDeleteOptions};
    let broker = Broker::start();
    let (_conn, ch) = connect_channel(&broker).await;
    let (q, x) = (unique("lf-q"), unique("lf-x"));
    // "q\n" declares "q"; "\r\n" alone is a server-named queue.
    let declared = declare(&ch, &format!("{q}\n"), QueueDeclareOptions::default()).await;
    assert_eq!(declared.name().as_str(), q);
    let generated = declare(&ch, "\r\n", QueueDeclareOptions::default()).await;
    assert!(generated.name().as_str().starts_with("amq.gen-"), "{}", generated.name());
    exchange(&ch, &format!("\r{x}"), ExchangeKind::Direct).await;
    // A bind names both without CR and LF; its routing key is kept as given.
    bind(&ch, &format!("{q}\r"), &format!("{x}\n"), "k").await;
    publish(&ch, &x, "k", b"routed").await;
    assert_eq!(body(&get(&ch, &q, true).await.expect("routed through the binding").delivery), "routed");
    // consume takes the name as it is: "q\n" does not exist.
    let r = within(
        "basic.consume",
        ch.basic_consume(&format!("{q}\n"), "c", BasicConsumeOptions::default(), FieldTable::default()),
    )
    .await;
    assert_code(r.map(|_| ()), common::code::NOT_FOUND);
    // delete drops them again.
    let (_conn, ch) = connect_channel(&broker).await;
    within("queue.delete", ch.queue_delete(&format!("\n{q}"), QueueDeleteOptions::default())).await.expect("delete");
    assert_code(declare_passive(&ch, &q).await.map(|_| ()), common::code::NOT_FOUND);
}

#[tokio::test]
async fn a_used_up_global_prefetch_holds_back_the_channels_no_ack_consumers_too() {
    use lapin::options::{BasicConsumeOptions, BasicQosOptions};
    use std::time::Duration;
    let broker = Broker::start();
    let (_conn, ch) = connect_channel(&broker).await;
    let (publisher_conn, publisher) = connect_channel(&broker).await;
    let queue = unique("global-noack");
    declare_plain(&publisher, &queue).await;
    within("basic.qos", ch.basic_qos(1, BasicQosOptions { global: true })).await.expect("qos");
    let no_ack = BasicConsumeOptions { no_ack: true, ..BasicConsumeOptions::default() };
    let mut free =
        within("consume", ch.basic_consume(&queue, "free", no_ack, FieldTable::default())).await.expect("consume");
    let mut manual =
        within("consume", ch.basic_consume(&queue, "manual", BasicConsumeOptions::default(), FieldTable::default()))
            .await
            .expect("consume");
    publish_all(&publisher, &queue, &["0", "1", "2", "3", "4", "5"]).await;
    // Round robin: "0" to the no-ack consumer, "1" to the manual one, which uses up the
    // channel's prefetch of 1; from then on neither gets anything until "1" is acked.
    use futures_lite::StreamExt;
    let first = within("delivery", free.next()).await.expect("stream").expect("delivery");
    let second = within("delivery", manual.next()).await.expect("stream").expect("delivery");
    assert_eq!((body(&first), body(&second)), ("0".to_string(), "1".to_string()));
    let more = tokio::time::timeout(Duration::from_millis(300), free.next()).await;
    assert!(more.is_err(), "the no-ack consumer is held back: {more:?}");
    assert_eq!(declare_passive(&publisher, &queue).await.expect("passive").message_count(), 4);
    close(&publisher_conn).await;
}

/// Consumers on one channel of a fresh connection, set up by `setup`; 8 messages are then
/// published to their queue. Returns who got what, once `expected` deliveries have arrived and
/// the queue holds the rest, and after making sure nothing more comes.
async fn prefetch_scenario(
    setup: &[(u16, bool)],
    consumers: &[(&str, bool)],
    expected: usize,
) -> Vec<(String, String)> {
    use futures_lite::StreamExt;
    use lapin::options::{BasicConsumeOptions, BasicQosOptions};
    let broker = Broker::start();
    let (conn, ch) = connect_channel(&broker).await;
    let (publisher_conn, publisher) = connect_channel(&broker).await;
    let queue = unique("prefetch-mix");
    declare_plain(&publisher, &queue).await;
    for &(count, global) in setup {
        within("basic.qos", ch.basic_qos(count, BasicQosOptions { global })).await.expect("qos");
    }
    let mut streams = Vec::new();
    for &(tag, no_ack) in consumers {
        let options = BasicConsumeOptions { no_ack, ..BasicConsumeOptions::default() };
        let consumer =
            within("consume", ch.basic_consume(&queue, tag, options, FieldTable::default())).await.expect("consume");
        streams.push(consumer.map(move |d| (tag.to_string(), body(&d.expect("delivery")))));
    }
    let mut all = streams.pop().expect("a consumer").boxed();
    for stream in streams {
        all = all.or(stream).boxed();
    }
    let bodies: Vec<String> = (0..8).map(|i| i.to_string()).collect();
    publish_all(&publisher, &queue, &bodies.iter().map(String::as_str).collect::<Vec<_>>()).await;
    let mut got = Vec::new();
    for _ in 0..expected {
        got.push(within("a delivery", all.next()).await.expect("stream"));
    }
    let rest = 8 - expected as u32;
    eventually("the rest stays queued", || async {
        declare_passive(&publisher, &queue).await.expect("passive").message_count() == rest
    })
    .await;
    let more = tokio::time::timeout(common::QUIET, all.next()).await;
    assert!(more.is_err(), "after {got:?}, unexpected {more:?}");
    got.sort();
    close(&publisher_conn).await;
    close(&conn).await;
    got
}

fn pairs(expected: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut pairs: Vec<_> = expected.iter().map(|(t, b)| (t.to_string(), b.to_string())).collect();
    pairs.sort();
    pairs
}

#[tokio::test]
async fn per_consumer_and_global_prefetch_on_one_channel_both_hold() {
    // Per-consumer 1 under a channel-wide 3: each of three consumers gets one message.
    let got = prefetch_scenario(&[(1, false), (3, true)], &[("a", false), ("b", false), ("c", false)], 3).await;
    assert_eq!(got, pairs(&[("a", "0"), ("b", "1"), ("c", "2")]));
    // Per-consumer 2 under a channel-wide 1: the channel's limit wins.
    let got = prefetch_scenario(&[(2, false), (1, true)], &[("a", false), ("b", false)], 1).await;
    assert_eq!(got, pairs(&[("a", "0")]));
}

#[tokio::test]
async fn a_per_consumer_prefetch_does_not_limit_a_no_ack_consumer() {
    // The manual-ack consumer takes one and stops; its no-ack neighbour takes all the rest.
    let got = prefetch_scenario(&[(1, false)], &[("noack", true), ("ack", false)], 8).await;
    let mut expected = vec![("noack", "0"), ("ack", "1")];
    let rest: Vec<String> = (2..8).map(|i| i.to_string()).collect();
    expected.extend(rest.iter().map(|b| ("noack", b.as_str())));
    assert_eq!(got, pairs(&expected));
}

#[tokio::test]
async fn unbinding_one_of_two_bindings_differing_in_arguments_keeps_the_queue_routed() {
    let broker = Broker::start();
    let (_conn, ch) = connect_channel(&broker).await;
    for kind in [ExchangeKind::Direct, ExchangeKind::Topic, ExchangeKind::Fanout] {
        let (x, queue) = (unique("unbind-args-x"), unique("unbind-args-q"));
        exchange(&ch, &x, kind.clone()).await;
        declare_plain(&ch, &queue).await;
        let args = |n: i32| {
            let mut table = FieldTable::default();
            table.insert("n".into(), AMQPValue::LongInt(n));
            table
        };
        for n in [1, 2] {
            within("queue.bind", ch.queue_bind(&queue, &x, "k", QueueBindOptions::default(), args(n)))
                .await
                .expect("queue.bind");
        }
        publish(&ch, &x, "k", b"both").await;
        within("queue.unbind", ch.queue_unbind(&queue, &x, "k", args(1))).await.expect("queue.unbind");
        publish(&ch, &x, "k", b"one left").await;
        within("queue.unbind", ch.queue_unbind(&queue, &x, "k", args(2))).await.expect("queue.unbind");
        publish(&ch, &x, "k", b"none left").await;
        assert_eq!(get_all(&ch, &queue).await, ["both", "one left"], "{kind:?}");
    }
}
