//! Queue and consumer features of RabbitMQ beyond the base protocol (issue 4), at the core:
//! TTL, length limits, dead-lettering, priorities, consumer priorities, single active
//! consumer, alternate exchanges, quorum delivery limits.

mod common;

use common::{table, Harness};
use warren_amqp::{BasicProperties, FieldTable, FieldValue, Method};
use warren_core::{Config, Out};

fn harness() -> Harness {
    let mut h = Harness::new(Config::default());
    h.connect(1, true);
    h.open(1, 1);
    h
}

fn bodies(got: &[(String, warren_core::message::MessageRef)]) -> Vec<&str> {
    got.iter().map(|g| g.0.as_str()).collect()
}

fn death(msg: &warren_core::message::Message) -> FieldTable {
    match msg.properties.headers.as_ref().and_then(|h| h.get("x-death")) {
        Some(FieldValue::Array(a)) => match &a[0] {
            FieldValue::Table(t) => t.clone(),
            other => panic!("x-death entry {other:?}"),
        },
        other => panic!("no x-death: {other:?}"),
    }
}

/// A dead-letter exchange `dlx` (fanout) into queue `dead`.
fn with_dlx(h: &mut Harness) {
    h.exchange(1, 1, "dlx", "fanout", FieldTable::new());
    h.declare(1, 1, "dead");
    h.bind(1, 1, "dead", "dlx", "");
}

#[test]
fn queue_ttl_expires_and_dead_letters() {
    let mut h = harness();
    with_dlx(&mut h);
    h.now_ms = 1_000;
    h.declare_args(
        1,
        1,
        "q",
        table(&[("x-message-ttl", FieldValue::I32(100)), ("x-dead-letter-exchange", "dlx".into())]),
    );
    h.publish(1, 1, "", "q", "old");
    h.now_ms = 1_050;
    h.publish(1, 1, "", "q", "young");
    // Expired once the deadline (1_100) is in the past.
    h.broker.tick(1_101, &mut h.out);
    h.now_ms = 1_101;
    assert_eq!(bodies(&h.drain(1, 1, "q")), vec!["young"]);
    let dead = h.drain(1, 1, "dead");
    assert_eq!(bodies(&dead), vec!["old"]);
    let d = death(&dead[0].1);
    assert_eq!(d.get("reason").and_then(FieldValue::as_str), Some("expired"));
    assert_eq!(d.get("queue").and_then(FieldValue::as_str), Some("q"));
}

#[test]
fn per_message_ttl_and_the_lower_one_wins() {
    let mut h = harness();
    h.now_ms = 0;
    h.declare_args(1, 1, "q", table(&[("x-message-ttl", FieldValue::I32(1_000))]));
    let short = BasicProperties { expiration: Some("10".into()), ..Default::default() };
    h.publish_props(1, 1, "", "q", short, "short");
    h.publish(1, 1, "", "q", "long");
    h.now_ms = 20;
    assert_eq!(bodies(&h.drain(1, 1, "q")), vec!["long"]);
}

#[test]
fn invalid_expiration_is_406() {
    let mut h = harness();
    h.declare(1, 1, "q");
    let bad = BasicProperties { expiration: Some("soon".into()), ..Default::default() };
    h.publish_props(1, 1, "", "q", bad, "x");
    assert!(h
        .take(1)
        .iter()
        .any(|o| matches!(o, Out::Method { method: Method::ChannelClose { reply_code: 406, .. }, .. })));
}

#[test]
fn max_length_drops_the_head_into_the_dlx() {
    let mut h = harness();
    with_dlx(&mut h);
    h.declare_args(1, 1, "q", table(&[("x-max-length", FieldValue::I32(2)), ("x-dead-letter-exchange", "dlx".into())]));
    for b in ["1", "2", "3"] {
        h.publish(1, 1, "", "q", b);
    }
    assert_eq!(bodies(&h.drain(1, 1, "q")), vec!["2", "3"]);
    let dead = h.drain(1, 1, "dead");
    assert_eq!(bodies(&dead), vec!["1"]);
    assert_eq!(death(&dead[0].1).get("reason").and_then(FieldValue::as_str), Some("maxlen"));
}

#[test]
fn reject_publish_nacks_the_publisher() {
    let mut h = harness();
    h.declare_args(1, 1, "q", table(&[("x-max-length", FieldValue::I32(1)), ("x-overflow", "reject-publish".into())]));
    h.send(1, 1, Method::ConfirmSelect { nowait: false });
    h.take(1);
    h.publish(1, 1, "", "q", "kept");
    h.publish(1, 1, "", "q", "refused");
    let confirms: Vec<Method> = h
        .take(1)
        .into_iter()
        .filter_map(|o| match o {
            Out::Method { method: m @ (Method::BasicAck { .. } | Method::BasicNack { .. }), .. } => Some(m),
            _ => None,
        })
        .collect();
    assert_eq!(
        confirms,
        vec![
            Method::BasicAck { delivery_tag: 1, multiple: false },
            Method::BasicNack { delivery_tag: 2, multiple: false, requeue: false }
        ]
    );
    assert_eq!(bodies(&h.drain(1, 1, "q")), vec!["kept"]);
}

#[test]
fn max_length_bytes_counts_bodies() {
    let mut h = harness();
    h.declare_args(1, 1, "q", table(&[("x-max-length-bytes", FieldValue::I32(6))]));
    for b in ["aaa", "bbb", "ccc"] {
        h.publish(1, 1, "", "q", b);
    }
    assert_eq!(bodies(&h.drain(1, 1, "q")), vec!["bbb", "ccc"]);
}

#[test]
fn rejected_messages_are_dead_lettered_with_the_routing_key_given() {
    let mut h = harness();
    h.exchange(1, 1, "dlx", "direct", FieldTable::new());
    h.declare(1, 1, "dead");
    h.bind(1, 1, "dead", "dlx", "failed");
    h.declare_args(
        1,
        1,
        "q",
        table(&[("x-dead-letter-exchange", "dlx".into()), ("x-dead-letter-routing-key", "failed".into())]),
    );
    h.publish(1, 1, "", "q", "bad");
    h.send(1, 1, Method::BasicGet { queue: "q".into(), no_ack: false });
    h.take(1);
    h.send(1, 1, Method::BasicReject { delivery_tag: 1, requeue: false });
    let dead = h.drain(1, 1, "dead");
    assert_eq!(bodies(&dead), vec!["bad"]);
    let d = death(&dead[0].1);
    assert_eq!(d.get("reason").and_then(FieldValue::as_str), Some("rejected"));
    assert_eq!(d.get("count"), Some(&FieldValue::I64(1)));
    assert_eq!(dead[0].1.routing_key, "failed");
}

#[test]
fn automatic_dead_letter_cycle_is_broken() {
    let mut h = harness();
    // q dead-letters into itself on expiry: reaching q a second time with no rejection in the
    // cycle, the message is dropped (RabbitMQ's rule).
    h.now_ms = 0;
    h.declare_args(
        1,
        1,
        "q",
        table(&[
            ("x-message-ttl", FieldValue::I32(10)),
            ("x-dead-letter-exchange", "amq.direct".into()),
            ("x-dead-letter-routing-key", "q".into()),
        ]),
    );
    h.bind(1, 1, "q", "amq.direct", "q");
    h.publish(1, 1, "", "q", "loop");
    h.broker.tick(20, &mut h.out);
    assert_eq!(h.broker.queues()[0].messages_ready, 0);
}

#[test]
fn rejection_cycles_go_on() {
    let mut h = harness();
    h.declare_args(
        1,
        1,
        "q",
        table(&[("x-dead-letter-exchange", "amq.direct".into()), ("x-dead-letter-routing-key", "q".into())]),
    );
    h.bind(1, 1, "q", "amq.direct", "q");
    h.publish(1, 1, "", "q", "again");
    for round in 1..=3i64 {
        h.send(1, 1, Method::BasicGet { queue: "q".into(), no_ack: false });
        let msg = h
            .take(1)
            .into_iter()
            .find_map(|o| match o {
                Out::Content { msg, .. } => Some(msg),
                _ => None,
            })
            .expect("the message came back");
        if round > 1 {
            assert_eq!(death(&msg).get("count"), Some(&FieldValue::I64(round - 1)));
        }
        h.send(1, 1, Method::BasicReject { delivery_tag: round as u64, requeue: false });
    }
}

#[test]
fn priorities_deliver_highest_first_fifo_within() {
    let mut h = harness();
    h.declare_args(1, 1, "q", table(&[("x-max-priority", FieldValue::U8(10))]));
    for (p, b) in
        [(Some(1), "p1"), (Some(9), "p9a"), (None, "none"), (Some(5), "p5"), (Some(9), "p9b"), (Some(200), "p200")]
    {
        let props = BasicProperties { priority: p, ..Default::default() };
        h.publish_props(1, 1, "", "q", props, b);
    }
    // Priorities above x-max-priority count as the maximum.
    assert_eq!(bodies(&h.drain(1, 1, "q")), vec!["p200", "p9a", "p9b", "p5", "p1", "none"]);
}

#[test]
fn consumer_priority_serves_the_highest_with_capacity() {
    let mut h = harness();
    h.declare(1, 1, "q");
    h.send(1, 1, Method::BasicQos { prefetch_size: 0, prefetch_count: 1, global: false });
    h.consume_args(1, 1, "q", "low", false, table(&[("x-priority", FieldValue::I32(1))]));
    h.consume_args(1, 1, "q", "high", false, table(&[("x-priority", FieldValue::I32(10))]));
    h.take(1);
    for b in ["1", "2"] {
        h.publish(1, 1, "", "q", b);
    }
    let tags: Vec<String> = h.deliveries(1).into_iter().map(|d| d.0).collect();
    assert_eq!(tags, vec!["high".to_string(), "low".to_string()]);
}

#[test]
fn single_active_consumer_fails_over() {
    let mut h = harness();
    h.declare_args(1, 1, "q", table(&[("x-single-active-consumer", FieldValue::Bool(true))]));
    h.consume(1, 1, "q", "first", false);
    h.consume(1, 1, "q", "second", false);
    h.take(1);
    for b in ["1", "2"] {
        h.publish(1, 1, "", "q", b);
    }
    let d = h.deliveries(1);
    assert!(d.iter().all(|x| x.0 == "first"), "{d:?}");
    h.send(1, 1, Method::BasicCancel { consumer_tag: "first".into(), nowait: false });
    h.send(1, 1, Method::BasicRecover { requeue: true });
    let d = h.deliveries(1);
    assert_eq!(d.len(), 2);
    assert!(d.iter().all(|x| x.0 == "second"), "{d:?}");
}

#[test]
fn alternate_exchange_takes_the_unroutable() {
    let mut h = harness();
    h.exchange(1, 1, "ae", "fanout", FieldTable::new());
    h.declare(1, 1, "unrouted");
    h.bind(1, 1, "unrouted", "ae", "");
    h.exchange(1, 1, "main", "direct", table(&[("alternate-exchange", "ae".into())]));
    h.declare(1, 1, "routed");
    h.bind(1, 1, "routed", "main", "k");
    h.publish(1, 1, "main", "k", "a");
    h.publish(1, 1, "main", "other", "b");
    assert_eq!(bodies(&h.drain(1, 1, "routed")), vec!["a"]);
    assert_eq!(bodies(&h.drain(1, 1, "unrouted")), vec!["b"]);
}

#[test]
fn quorum_delivery_limit_dead_letters_and_counts_deliveries() {
    let mut h = harness();
    with_dlx(&mut h);
    let args = table(&[
        ("x-queue-type", "quorum".into()),
        ("x-delivery-limit", FieldValue::I32(2)),
        ("x-dead-letter-exchange", "dlx".into()),
    ]);
    h.send(
        1,
        1,
        Method::QueueDeclare {
            queue: "qq".into(),
            passive: false,
            durable: true,
            exclusive: false,
            auto_delete: false,
            nowait: false,
            arguments: args,
        },
    );
    h.take(1);
    h.publish(1, 1, "", "qq", "poison");
    let mut counts = Vec::new();
    for tag in 1..=3u64 {
        h.send(1, 1, Method::BasicGet { queue: "qq".into(), no_ack: false });
        let got = h.take(1).into_iter().find_map(|o| match o {
            Out::Content { msg, .. } => Some(msg),
            _ => None,
        });
        let Some(msg) = got else { break };
        counts
            .push(msg.properties.headers.as_ref().and_then(|h| h.get("x-delivery-count")).and_then(FieldValue::as_i64));
        h.send(1, 1, Method::BasicNack { delivery_tag: tag, multiple: false, requeue: true });
    }
    // basic.get from a quorum queue counts from 0, as RabbitMQ 3.10 does.
    assert_eq!(counts, vec![Some(0), Some(1), Some(2)]);
    let dead = h.drain(1, 1, "dead");
    assert_eq!(bodies(&dead), vec!["poison"]);
    assert_eq!(death(&dead[0].1).get("reason").and_then(FieldValue::as_str), Some("delivery_limit"));
}

#[test]
fn quorum_queues_must_be_durable() {
    let mut h = harness();
    let out = h.declare_args(1, 1, "qq", table(&[("x-queue-type", "quorum".into())]));
    assert!(out.iter().any(|o| matches!(o, Out::Method { method: Method::ChannelClose { reply_code: 406, .. }, .. })));
}

#[test]
fn unused_queue_expires() {
    let mut h = harness();
    h.now_ms = 1_000;
    h.declare_args(1, 1, "q", table(&[("x-expires", FieldValue::I32(500))]));
    h.broker.tick(1_400, &mut h.out);
    assert_eq!(h.broker.queues().len(), 1);
    h.broker.tick(1_500, &mut h.out);
    assert!(h.broker.queues().is_empty());
}

fn dedup_props(key: &str) -> BasicProperties {
    BasicProperties { headers: Some(table(&[("x-deduplication-header", key.into())])), ..Default::default() }
}

#[test]
fn deduplication_exchange_drops_repeats_and_routes_like_fanout() {
    let mut h = harness();
    h.exchange(1, 1, "dedup", "x-message-deduplication", table(&[("x-cache-size", FieldValue::I32(10))]));
    h.declare(1, 1, "a");
    h.declare(1, 1, "b");
    h.bind(1, 1, "a", "dedup", "ignored");
    h.bind(1, 1, "b", "dedup", "");
    h.publish_props(1, 1, "dedup", "any", dedup_props("k1"), "first");
    h.publish_props(1, 1, "dedup", "any", dedup_props("k1"), "repeat");
    h.publish_props(1, 1, "dedup", "any", dedup_props("k2"), "second");
    h.publish(1, 1, "dedup", "any", "no-header");
    assert_eq!(bodies(&h.drain(1, 1, "a")), vec!["first", "second", "no-header"]);
    assert_eq!(bodies(&h.drain(1, 1, "b")), vec!["first", "second", "no-header"]);
}

#[test]
fn deduplication_exchange_needs_a_cache_size() {
    let mut h = harness();
    h.send(
        1,
        1,
        Method::ExchangeDeclare {
            exchange: "dedup".into(),
            kind: "x-message-deduplication".into(),
            passive: false,
            durable: false,
            auto_delete: false,
            internal: false,
            nowait: false,
            arguments: FieldTable::new(),
        },
    );
    assert!(h
        .take(1)
        .iter()
        .any(|o| matches!(o, Out::Method { method: Method::ChannelClose { reply_code: 406, .. }, .. })));
}

#[test]
fn deduplication_queue_refuses_a_key_it_holds_until_it_leaves() {
    let mut h = harness();
    h.declare_args(1, 1, "q", table(&[("x-message-deduplication", FieldValue::Bool(true))]));
    h.publish_props(1, 1, "", "q", dedup_props("k"), "one");
    h.publish_props(1, 1, "", "q", dedup_props("k"), "two");
    assert_eq!(bodies(&h.drain(1, 1, "q")), vec!["one"]);
    h.publish_props(1, 1, "", "q", dedup_props("k"), "three");
    assert_eq!(bodies(&h.drain(1, 1, "q")), vec!["three"], "the key left with the message");
}

#[test]
fn delayed_messages_wait_for_their_delay_then_route_by_the_delayed_type() {
    let mut h = harness();
    h.now_ms = 1_000;
    h.broker.tick(1_000, &mut h.out);
    h.exchange(1, 1, "delayed", "x-delayed-message", table(&[("x-delayed-type", "direct".into())]));
    h.declare(1, 1, "q");
    h.declare(1, 1, "other");
    h.bind(1, 1, "q", "delayed", "k");
    h.bind(1, 1, "other", "delayed", "nope");
    let later =
        |ms: i32| BasicProperties { headers: Some(table(&[("x-delay", FieldValue::I32(ms))])), ..Default::default() };
    h.publish_props(1, 1, "delayed", "k", later(500), "half-second");
    h.publish_props(1, 1, "delayed", "k", later(100), "tenth");
    h.publish(1, 1, "delayed", "k", "now");
    assert_eq!(bodies(&h.drain(1, 1, "q")), vec!["now"]);
    h.broker.tick(1_099, &mut h.out);
    assert!(h.drain(1, 1, "q").is_empty(), "not yet due");
    h.broker.tick(1_100, &mut h.out);
    assert_eq!(bodies(&h.drain(1, 1, "q")), vec!["tenth"]);
    h.broker.tick(1_500, &mut h.out);
    assert_eq!(bodies(&h.drain(1, 1, "q")), vec!["half-second"]);
    assert!(h.drain(1, 1, "other").is_empty(), "routed as direct by key");
}

#[test]
fn delayed_exchange_needs_a_delayed_type() {
    let mut h = harness();
    h.send(
        1,
        1,
        Method::ExchangeDeclare {
            exchange: "delayed".into(),
            kind: "x-delayed-message".into(),
            passive: false,
            durable: false,
            auto_delete: false,
            internal: false,
            nowait: false,
            arguments: FieldTable::new(),
        },
    );
    assert!(h
        .take(1)
        .iter()
        .any(|o| matches!(o, Out::Method { method: Method::ChannelClose { reply_code: 406, .. }, .. })));
}

#[test]
fn a_policy_applies_to_existing_and_new_queues_with_the_lower_limit_winning() {
    let mut h = harness();
    h.declare(1, 1, "orders.a");
    for b in ["1", "2", "3"] {
        h.publish(1, 1, "", "orders.a", b);
    }
    let mut out = Vec::new();
    h.broker
        .set_policy(
            "/",
            "cap",
            "^orders\\.",
            warren_core::policy::ApplyTo::Queues,
            0,
            table(&[("max-length", FieldValue::I64(2))]),
            false,
            0,
            &mut out,
        )
        .expect("valid policy");
    // The existing queue is trimmed to the new limit at once.
    assert_eq!(bodies(&h.drain(1, 1, "orders.a")), vec!["2", "3"]);
    // A client argument above the policy's limit loses; one below wins.
    h.declare_args(1, 1, "orders.b", table(&[("x-max-length", FieldValue::I64(10))]));
    h.declare_args(1, 1, "orders.c", table(&[("x-max-length", FieldValue::I64(1))]));
    for b in ["1", "2", "3"] {
        h.publish(1, 1, "", "orders.b", b);
        h.publish(1, 1, "", "orders.c", b);
    }
    assert_eq!(bodies(&h.drain(1, 1, "orders.b")), vec!["2", "3"]);
    assert_eq!(bodies(&h.drain(1, 1, "orders.c")), vec!["3"]);
    let q = h.broker.queues().into_iter().find(|q| q.name == "orders.b").expect("queue");
    assert_eq!(q.policy.as_deref(), Some("cap"));
    // Cleared: the limit goes with it.
    assert!(h.broker.clear_policy("/", "cap", false, 0, &mut out).expect("cleared"));
    for b in ["1", "2", "3"] {
        h.publish(1, 1, "", "orders.a", b);
    }
    assert_eq!(bodies(&h.drain(1, 1, "orders.a")), vec!["1", "2", "3"]);
}

#[test]
fn a_policy_gives_exchanges_an_alternate_exchange() {
    let mut h = harness();
    h.exchange(1, 1, "ae", "fanout", FieldTable::new());
    h.declare(1, 1, "unrouted");
    h.bind(1, 1, "unrouted", "ae", "");
    h.exchange(1, 1, "main", "direct", FieldTable::new());
    let mut out = Vec::new();
    h.broker
        .set_policy(
            "/",
            "ae",
            "^main$",
            warren_core::policy::ApplyTo::Exchanges,
            0,
            table(&[("alternate-exchange", "ae".into())]),
            false,
            0,
            &mut out,
        )
        .expect("valid policy");
    h.publish(1, 1, "main", "nowhere", "x");
    assert_eq!(bodies(&h.drain(1, 1, "unrouted")), vec!["x"]);
}
