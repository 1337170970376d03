//! Exchanges and routing, exercised with the `amqprs` client: fanout,
//! direct, topic and headers exchanges, the predeclared `amq.*` exchanges,
//! exchange-to-exchange bindings, unbinding, exchange.delete if-unused, and
//! mandatory publishing of unroutable messages (basic.return).
//!
//! Routing assertions use a sentinel message (see
//! [`Deliveries::bodies_until`]) rather than timed waits.

mod common;

use amqprs::channel::{
    BasicPublishArguments, Channel, ExchangeBindArguments, ExchangeDeclareArguments, ExchangeDeleteArguments,
    ExchangeUnbindArguments, QueueUnbindArguments,
};
use amqprs::{BasicProperties, FieldTable};
use common::amqprs_client::*;
use common::code::{NOT_FOUND, NO_ROUTE, PRECONDITION_FAILED};
use common::{unique, within, Broker};

const SENTINEL: &str = "sentinel";

async fn declare_exchange(ch: &Channel, kind: &str) -> String {
    let name = unique(&format!("{kind}-exchange"));
    let args = ExchangeDeclareArguments::new(&name, kind);
    within("exchange.declare-ok", ch.exchange_declare(args))
        .await
        .unwrap_or_else(|e| panic!("declare {kind} exchange: {e}"));
    name
}

/// A server-named queue bound to `exchange` with each routing key (plus
/// [`SENTINEL`]), with an auto-ack consumer on it.
async fn subscriber(ch: &Channel, exchange: &str, keys: &[&str]) -> Deliveries {
    let queue = declare_server_named(ch).await;
    for key in keys.iter().chain([&SENTINEL]) {
        bind(ch, &queue, exchange, key).await;
    }
    consume_no_ack(ch, &queue).await
}

async fn exchange_exists(conn: &amqprs::connection::Connection, name: &str) -> bool {
    let mut ch = channel(conn).await;
    let args = ExchangeDeclareArguments::new(name, "direct").passive(true).finish();
    match within("passive exchange.declare", ch.exchange_declare(args)).await {
        Ok(()) => true,
        Err(_) => {
            assert_eq!(ch.closed_code().await, NOT_FOUND);
            false
        }
    }
}

#[tokio::test]
async fn fanout_delivers_to_every_bound_queue_ignoring_the_routing_key() {
    let broker = Broker::start();
    let (conn, ch) = connect_channel(&broker).await;
    let logs = declare_exchange(&ch, "fanout").await;
    let mut first = subscriber(&ch, &logs, &[]).await;
    let mut second = subscriber(&ch, &logs, &[]).await;
    let unbound = declare_server_named(&ch).await;
    assert!(unbound.starts_with("amq.gen-"), "server-named: {unbound}");
    let mut unbound_deliveries = consume_no_ack(&ch, &unbound).await;

    publish(&ch, &logs, "", "log 1").await;
    publish(&ch, &logs, "ignored.key", "log 2").await;
    publish(&ch, &logs, "", SENTINEL).await;
    publish(&ch, "", &unbound, SENTINEL).await;

    for deliveries in [&mut first, &mut second] {
        assert_eq!(deliveries.bodies_until(SENTINEL).await, ["log 1", "log 2"]);
    }
    assert!(unbound_deliveries.bodies_until(SENTINEL).await.is_empty());
    conn.close().await.expect("close");
}

#[tokio::test]
async fn direct_exchange_routes_on_exact_keys_including_several_per_queue() {
    let broker = Broker::start();
    let (conn, ch) = connect_channel(&broker).await;
    let direct = declare_exchange(&ch, "direct").await;
    let mut errors = subscriber(&ch, &direct, &["error"]).await;
    let mut all = subscriber(&ch, &direct, &["info", "warning", "error"]).await;

    for severity in ["info", "warning", "error", "debug", "Error", "error.x"] {
        publish(&ch, &direct, severity, severity).await;
    }
    publish(&ch, &direct, SENTINEL, SENTINEL).await;

    assert_eq!(errors.bodies_until(SENTINEL).await, ["error"]);
    assert_eq!(all.bodies_until(SENTINEL).await, ["info", "warning", "error"]);
    conn.close().await.expect("close");
}

#[tokio::test]
async fn topic_exchange_star_matches_one_word_and_hash_zero_or_more() {
    let broker = Broker::start();
    let (conn, ch) = connect_channel(&broker).await;
    let topic = declare_exchange(&ch, "topic").await;
    let mut orange = subscriber(&ch, &topic, &["*.orange.*"]).await;
    let mut rabbit_lazy = subscriber(&ch, &topic, &["*.*.rabbit", "lazy.#"]).await;
    let mut everything = subscriber(&ch, &topic, &["#"]).await;
    let mut a_to_z = subscriber(&ch, &topic, &["a.#.z"]).await;

    let keys = [
        "quick.orange.rabbit",
        "lazy.orange.elephant",
        "quick.orange.fox",
        "lazy.brown.fox",
        "lazy.pink.rabbit",
        "quick.brown.fox",
        "orange",
        "quick.orange.male.rabbit",
        "lazy.orange.male.rabbit",
        "lazy",
        "a.z",
        "a.b.c.z",
        "a.z.b",
        "x.a.z",
        "",
    ];
    for key in keys {
        publish(&ch, &topic, key, key).await;
    }
    publish(&ch, &topic, SENTINEL, SENTINEL).await;

    assert_eq!(
        orange.bodies_until(SENTINEL).await,
        ["quick.orange.rabbit", "lazy.orange.elephant", "quick.orange.fox"]
    );
    // "lazy.pink.rabbit" matches both bindings but arrives once.
    assert_eq!(
        rabbit_lazy.bodies_until(SENTINEL).await,
        [
            "quick.orange.rabbit",
            "lazy.orange.elephant",
            "lazy.brown.fox",
            "lazy.pink.rabbit",
            "lazy.orange.male.rabbit",
            "lazy",
        ]
    );
    // "#" alone behaves like a fanout, even for the empty routing key.
    assert_eq!(everything.bodies_until(SENTINEL).await, keys);
    assert_eq!(a_to_z.bodies_until(SENTINEL).await, ["a.z", "a.b.c.z"]);
    conn.close().await.expect("close");
}

#[tokio::test]
async fn topic_exchange_accepts_a_255_byte_routing_key() {
    let broker = Broker::start();
    let (conn, ch) = connect_channel(&broker).await;
    let topic = declare_exchange(&ch, "topic").await;
    let key = format!("{}.end", "w".repeat(251));
    assert_eq!(key.len(), 255);
    let mut exact = subscriber(&ch, &topic, &[&key]).await;
    let mut pattern = subscriber(&ch, &topic, &["*.end"]).await;

    publish(&ch, &topic, &key, "long key").await;
    for deliveries in [&mut exact, &mut pattern] {
        let message = deliveries.next().await;
        assert_eq!(message.body, "long key");
        assert_eq!(message.routing_key, key);
        assert_eq!(message.exchange, topic);
    }
    conn.close().await.expect("close");
}

/// A server-named queue bound to the headers exchange with `arguments`
/// (and to [`SENTINEL`] through an `x-match: any` binding on a
/// `sentinel` header).
async fn headers_subscriber(ch: &Channel, exchange: &str, arguments: &[(&str, &str)]) -> Deliveries {
    let queue = declare_server_named(ch).await;
    let arguments: Vec<_> = arguments.iter().map(|(k, v)| (*k, text(v))).collect();
    bind_with(ch, &queue, exchange, "", table(&arguments)).await;
    let sentinel = table(&[("x-match", text("any")), (SENTINEL, text("yes"))]);
    bind_with(ch, &queue, exchange, "", sentinel).await;
    consume_no_ack(ch, &queue).await
}

async fn publish_headers(ch: &Channel, exchange: &str, body: &str, headers: &[(&str, &str)]) {
    let headers: Vec<_> = headers.iter().map(|(k, v)| (*k, text(v))).collect();
    let properties = BasicProperties::default().with_headers(table(&headers)).finish();
    publish_with(ch, exchange, "ignored", body, properties).await;
}

#[tokio::test]
async fn headers_exchange_matches_all_any_and_their_with_x_variants() {
    let broker = Broker::start();
    let (conn, ch) = connect_channel(&broker).await;
    let headers = declare_exchange(&ch, "headers").await;
    let report = [("format", "pdf"), ("type", "report")];
    let mut all = headers_subscriber(&ch, &headers, &[&[("x-match", "all")][..], &report].concat()).await;
    let mut any = headers_subscriber(&ch, &headers, &[&[("x-match", "any")][..], &report].concat()).await;
    // Plain all/any ignore binding arguments starting with "x-"...
    let mut all_ignoring_x =
        headers_subscriber(&ch, &headers, &[("x-match", "all"), ("x-tag", "a"), ("format", "pdf")]).await;
    // ...while all-with-x / any-with-x (RabbitMQ 3.10+) match on them too.
    let mut all_with_x =
        headers_subscriber(&ch, &headers, &[("x-match", "all-with-x"), ("x-tag", "a"), ("format", "pdf")]).await;
    let mut any_with_x = headers_subscriber(&ch, &headers, &[("x-match", "any-with-x"), ("x-tag", "a")]).await;

    publish_headers(&ch, &headers, "pdf report", &report).await;
    publish_headers(&ch, &headers, "pdf", &[("format", "pdf")]).await;
    publish_headers(&ch, &headers, "log", &[("type", "log")]).await;
    publish_headers(&ch, &headers, "tagged pdf", &[("format", "pdf"), ("x-tag", "a")]).await;
    publish_headers(&ch, &headers, "tag only", &[("x-tag", "a")]).await;
    publish_headers(&ch, &headers, "zip report", &[("format", "zip"), ("type", "report")]).await;
    publish_headers(&ch, &headers, "no headers", &[]).await;
    publish_headers(&ch, &headers, SENTINEL, &[(SENTINEL, "yes")]).await;

    assert_eq!(all.bodies_until(SENTINEL).await, ["pdf report"]);
    assert_eq!(any.bodies_until(SENTINEL).await, ["pdf report", "pdf", "tagged pdf", "zip report"]);
    assert_eq!(all_ignoring_x.bodies_until(SENTINEL).await, ["pdf report", "pdf", "tagged pdf"]);
    assert_eq!(all_with_x.bodies_until(SENTINEL).await, ["tagged pdf"]);
    assert_eq!(any_with_x.bodies_until(SENTINEL).await, ["tagged pdf", "tag only"]);
    conn.close().await.expect("close");
}

#[tokio::test]
async fn predeclared_amq_exchanges_exist_and_route() {
    let broker = Broker::start();
    let (conn, ch) = connect_channel(&broker).await;
    for name in ["amq.direct", "amq.fanout", "amq.topic", "amq.headers", "amq.match"] {
        assert!(exchange_exists(&conn, name).await, "{name} must exist");
    }

    let key = unique("amq-direct-key");
    let mut deliveries = subscriber(&ch, "amq.direct", &[&key]).await;
    publish(&ch, "amq.direct", &key, "via amq.direct").await;
    let message = deliveries.next().await;
    assert_eq!(message.body, "via amq.direct");
    assert_eq!(message.exchange, "amq.direct");
    conn.close().await.expect("close");
}

#[tokio::test]
async fn exchange_to_exchange_bindings_route_and_unbind() {
    let broker = Broker::start();
    let (conn, ch) = connect_channel(&broker).await;
    let source = declare_exchange(&ch, "direct").await;
    let destination = declare_exchange(&ch, "fanout").await;
    let bind_args = ExchangeBindArguments::new(&destination, &source, "forwarded");
    within("exchange.bind-ok", ch.exchange_bind(bind_args)).await.expect("exchange.bind");
    let queue = declare_server_named(&ch).await;
    bind(&ch, &queue, &destination, "").await;
    bind(&ch, &queue, &source, SENTINEL).await;
    let mut deliveries = consume_no_ack(&ch, &queue).await;

    publish(&ch, &source, "forwarded", "through two exchanges").await;
    publish(&ch, &source, "other", "not forwarded").await;
    publish(&ch, &source, SENTINEL, SENTINEL).await;
    let first = deliveries.next().await;
    assert_eq!(first.body, "through two exchanges");
    assert_eq!(first.exchange, source, "the exchange published to is reported");
    assert!(deliveries.bodies_until(SENTINEL).await.is_empty());

    let unbind_args = ExchangeUnbindArguments::new(&destination, &source, "forwarded");
    within("exchange.unbind-ok", ch.exchange_unbind(unbind_args)).await.expect("exchange.unbind");
    publish(&ch, &source, "forwarded", "after unbind").await;
    publish(&ch, &source, SENTINEL, SENTINEL).await;
    assert!(deliveries.bodies_until(SENTINEL).await.is_empty());
    conn.close().await.expect("close");
}

#[tokio::test]
async fn queue_unbind_stops_delivery() {
    let broker = Broker::start();
    let (conn, ch) = connect_channel(&broker).await;
    let direct = declare_exchange(&ch, "direct").await;
    let queue = declare_server_named(&ch).await;
    bind(&ch, &queue, &direct, "key").await;
    bind(&ch, &queue, &direct, SENTINEL).await;
    let mut deliveries = consume_no_ack(&ch, &queue).await;

    publish(&ch, &direct, "key", "before").await;
    let unbind_args = QueueUnbindArguments::new(&queue, &direct, "key");
    within("queue.unbind-ok", ch.queue_unbind(unbind_args)).await.expect("queue.unbind");
    publish(&ch, &direct, "key", "after").await;
    publish(&ch, &direct, SENTINEL, SENTINEL).await;
    assert_eq!(deliveries.bodies_until(SENTINEL).await, ["before"]);
    conn.close().await.expect("close");
}

#[tokio::test]
async fn exchange_delete_if_unused_refuses_an_exchange_with_bindings() {
    let broker = Broker::start();
    let (conn, ch) = connect_channel(&broker).await;
    let direct = declare_exchange(&ch, "direct").await;
    let queue = declare_server_named(&ch).await;
    bind(&ch, &queue, &direct, "key").await;

    let mut deleter = channel(&conn).await;
    let if_unused = ExchangeDeleteArguments::new(&direct).if_unused(true).finish();
    let refused = within("exchange.delete", deleter.exchange_delete(if_unused.clone())).await;
    assert!(refused.is_err(), "delete if-unused of a bound exchange");
    assert_eq!(deleter.closed_code().await, PRECONDITION_FAILED);
    assert!(exchange_exists(&conn, &direct).await);

    let unbind_args = QueueUnbindArguments::new(&queue, &direct, "key");
    within("queue.unbind-ok", ch.queue_unbind(unbind_args)).await.expect("queue.unbind");
    within("exchange.delete-ok", ch.exchange_delete(if_unused)).await.expect("delete if-unused of an unbound exchange");
    assert!(!exchange_exists(&conn, &direct).await);
    conn.close().await.expect("close");
}

#[tokio::test]
async fn passive_declare_of_a_missing_exchange_is_not_found() {
    let broker = Broker::start();
    let conn = connect(&broker).await;
    assert!(!exchange_exists(&conn, &unique("missing-exchange")).await);
    // The connection is still usable.
    let ch = channel(&conn).await;
    declare_exchange(&ch, "fanout").await;
    conn.close().await.expect("close");
}

#[tokio::test]
async fn mandatory_unroutable_messages_are_returned_with_no_route() {
    let broker = Broker::start();
    let (conn, mut ch) = connect_channel(&broker).await;
    let direct = declare_exchange(&ch, "direct").await;
    let mandatory = |exchange: &str, key: &str| {
        let mut args = BasicPublishArguments::new(exchange, key);
        args.mandatory = true;
        args
    };
    let missing_queue = unique("no-such-queue");

    // Not mandatory: silently dropped, so the first return seen is the
    // mandatory message published after it.
    publish(&ch, &direct, "nowhere", "dropped").await;
    for (exchange, key, body) in
        [(direct.as_str(), "nowhere", "returned"), ("", missing_queue.as_str(), "returned from default")]
    {
        within(
            "basic.publish",
            ch.basic_publish(BasicProperties::default(), body.as_bytes().to_vec(), mandatory(exchange, key)),
        )
        .await
        .expect("publish");
        let expected = Event::Returned(Returned {
            code: NO_ROUTE,
            text: "NO_ROUTE".to_string(),
            exchange: exchange.to_string(),
            routing_key: key.to_string(),
            body: body.to_string(),
        });
        assert_eq!(ch.next_event().await, expected);
    }

    // Returns do not close the channel.
    assert!(ch.is_open());
    declare_server_named(&ch).await;
    conn.close().await.expect("close");
}

/// A headers binding with no arguments at all (so `x-match` defaults to
/// `all` over zero headers) matches every message.
#[tokio::test]
async fn headers_binding_without_keys_matches_everything() {
    let broker = Broker::start();
    let (conn, ch) = connect_channel(&broker).await;
    let headers = declare_exchange(&ch, "headers").await;
    let queue = declare_server_named(&ch).await;
    bind_with(&ch, &queue, &headers, "", FieldTable::new()).await;
    let mut deliveries = consume_no_ack(&ch, &queue).await;
    publish_headers(&ch, &headers, "anything", &[("k", "v")]).await;
    publish_headers(&ch, &headers, "nothing", &[]).await;
    assert_eq!(deliveries.next().await.body, "anything");
    assert_eq!(deliveries.next().await.body, "nothing");
    conn.close().await.expect("close");
}
