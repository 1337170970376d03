//! The broker state machine driven directly with frames: no sockets, no clock. These pin the
//! delivery rules (round-robin, prefetch, requeue order, confirms, transactions) at the core,
//! where a failure points straight at the logic.

mod common;

use bytes::Bytes;
use common::Harness;
use warren_amqp::{BasicProperties, FieldTable, Frame, Method, ShortStr};
use warren_core::{Config, Out};

fn bodies(d: &[(String, u64, bool, String)]) -> Vec<&str> {
    d.iter().map(|x| x.3.as_str()).collect()
}

#[test]
fn round_robin_between_consumers() {
    let mut h = Harness::new(Config::default());
    h.connect(1, true);
    h.open(1, 1);
    h.declare(1, 1, "work");
    h.consume(1, 1, "work", "a", true);
    h.consume(1, 1, "work", "b", true);
    h.take(1);
    for b in ["1", "2", "3", "4"] {
        h.publish(1, 1, "", "work", b);
    }
    let d = h.deliveries(1);
    let tags: Vec<&str> = d.iter().map(|x| x.0.as_str()).collect();
    assert_eq!(tags, vec!["a", "b", "a", "b"]);
    assert_eq!(bodies(&d), vec!["1", "2", "3", "4"]);
}

#[test]
fn prefetch_one_waits_for_ack() {
    let mut h = Harness::new(Config::default());
    h.connect(1, true);
    h.open(1, 1);
    h.declare(1, 1, "q");
    h.send(1, 1, Method::BasicQos { prefetch_size: 0, prefetch_count: 1, global: false });
    h.consume(1, 1, "q", "c", false);
    h.take(1);
    for b in ["1", "2", "3"] {
        h.publish(1, 1, "", "q", b);
    }
    let d = h.deliveries(1);
    assert_eq!(bodies(&d), vec!["1"], "only one in flight with prefetch 1");
    h.send(1, 1, Method::BasicAck { delivery_tag: d[0].1, multiple: false });
    let d = h.deliveries(1);
    assert_eq!(bodies(&d), vec!["2"]);
}

#[test]
fn global_prefetch_limits_the_channel() {
    let mut h = Harness::new(Config::default());
    h.connect(1, true);
    h.open(1, 1);
    h.declare(1, 1, "q");
    h.send(1, 1, Method::BasicQos { prefetch_size: 0, prefetch_count: 2, global: true });
    h.consume(1, 1, "q", "a", false);
    h.consume(1, 1, "q", "b", false);
    h.take(1);
    for b in ["1", "2", "3", "4"] {
        h.publish(1, 1, "", "q", b);
    }
    assert_eq!(h.deliveries(1).len(), 2, "two consumers share the channel's two");
}

#[test]
fn closing_a_channel_requeues_in_order_and_redelivers_elsewhere() {
    let mut h = Harness::new(Config::default());
    h.connect(1, true);
    h.connect(2, true);
    h.open(1, 1);
    h.open(2, 1);
    h.declare(1, 1, "q");
    for b in ["1", "2", "3"] {
        h.publish(1, 1, "", "q", b);
    }
    h.consume(2, 1, "q", "dying", false);
    assert_eq!(bodies(&h.deliveries(2)), vec!["1", "2", "3"]);
    h.consume(1, 1, "q", "alive", false);
    h.take(1);
    h.send(2, 1, Method::ChannelClose { reply_code: 200, reply_text: "bye".into(), class_id: 0, method_id: 0 });
    let d = h.deliveries(1);
    assert_eq!(bodies(&d), vec!["1", "2", "3"]);
    assert!(d.iter().all(|x| x.2), "requeued messages are marked redelivered");
}

#[test]
fn connection_loss_requeues_and_deletes_exclusive_queues() {
    let mut h = Harness::new(Config::default());
    h.connect(1, true);
    h.connect(2, true);
    h.open(1, 1);
    h.open(2, 1);
    h.declare(1, 1, "q");
    h.publish(1, 1, "", "q", "x");
    h.consume(2, 1, "q", "c", false);
    assert_eq!(h.deliveries(2).len(), 1);
    h.send(
        2,
        1,
        Method::QueueDeclare {
            queue: "mine".into(),
            passive: false,
            durable: false,
            exclusive: true,
            auto_delete: false,
            nowait: false,
            arguments: FieldTable::new(),
        },
    );
    h.take(2);
    let now = h.now_ms;
    h.broker.connection_closed(2, now, &mut h.out);
    let names: Vec<String> = h.broker.queues().into_iter().map(|q| q.name).collect();
    assert_eq!(names, vec!["q".to_string()]);
    assert_eq!(h.broker.queues()[0].messages_ready, 1);
}

#[test]
fn confirms_are_coalesced_per_batch() {
    let mut h = Harness::new(Config::default());
    h.connect(1, true);
    h.open(1, 1);
    h.declare(1, 1, "q");
    h.send(1, 1, Method::ConfirmSelect { nowait: false });
    h.take(1);
    // Three publishes in one batch: one ack with multiple=true for all three.
    for b in ["1", "2", "3"] {
        let m =
            Method::BasicPublish { exchange: "".into(), routing_key: "q".into(), mandatory: false, immediate: false };
        h.broker.handle_frame(1, Frame::Method { channel: 1, method: m }, 0, &mut h.out);
        let header =
            Frame::Header { channel: 1, class_id: 60, body_size: 1, properties: BasicProperties::default().to_bytes() };
        h.broker.handle_frame(1, header, 0, &mut h.out);
        h.broker.handle_frame(1, Frame::Body { channel: 1, payload: Bytes::from_static(b.as_bytes()) }, 0, &mut h.out);
    }
    h.broker.end_batch(1, &mut h.out);
    let acks: Vec<Method> = h
        .take(1)
        .into_iter()
        .filter_map(|o| match o {
            Out::Method { method: m @ Method::BasicAck { .. }, .. } => Some(m),
            _ => None,
        })
        .collect();
    assert_eq!(acks, vec![Method::BasicAck { delivery_tag: 3, multiple: true }]);
    // A lone publish in its own batch is acked alone.
    h.publish(1, 1, "", "q", "4");
    let acks: Vec<Method> = h
        .take(1)
        .into_iter()
        .filter_map(|o| match o {
            Out::Method { method: m @ Method::BasicAck { .. }, .. } => Some(m),
            _ => None,
        })
        .collect();
    assert_eq!(acks, vec![Method::BasicAck { delivery_tag: 4, multiple: false }]);
}

#[test]
fn transaction_holds_publishes_until_commit() {
    let mut h = Harness::new(Config::default());
    h.connect(1, true);
    h.open(1, 1);
    h.declare(1, 1, "q");
    h.send(1, 1, Method::TxSelect);
    h.publish(1, 1, "", "q", "rolled-back");
    h.send(1, 1, Method::TxRollback);
    h.publish(1, 1, "", "q", "committed");
    assert_eq!(h.broker.queues()[0].messages_ready, 0, "nothing before commit");
    h.send(1, 1, Method::TxCommit);
    assert_eq!(h.broker.queues()[0].messages_ready, 1);
    h.take(1);
    h.send(1, 1, Method::BasicGet { queue: "q".into(), no_ack: true });
    let got: Vec<String> = h
        .take(1)
        .into_iter()
        .filter_map(|o| match o {
            Out::Content { msg, .. } => Some(String::from_utf8_lossy(&msg.body).into_owned()),
            _ => None,
        })
        .collect();
    assert_eq!(got, vec!["committed".to_string()]);
}

#[test]
fn unknown_delivery_tag_closes_the_channel_with_406() {
    let mut h = Harness::new(Config::default());
    h.connect(1, true);
    h.open(1, 1);
    h.send(1, 1, Method::BasicAck { delivery_tag: 42, multiple: false });
    let closes: Vec<u16> = h
        .take(1)
        .into_iter()
        .filter_map(|o| match o {
            Out::Method { channel: 1, method: Method::ChannelClose { reply_code, .. } } => Some(reply_code),
            _ => None,
        })
        .collect();
    assert_eq!(closes, vec![406]);
}

#[test]
fn consumer_timeout_cancels_notifying_consumers_and_requeues() {
    let config = Config { consumer_timeout_ms: Some(1_000), ..Config::default() };
    let mut h = Harness::new(config);
    h.connect(1, true);
    h.open(1, 1);
    h.declare(1, 1, "q");
    h.publish(1, 1, "", "q", "slow");
    h.consume(1, 1, "q", "c", false);
    assert_eq!(h.deliveries(1).len(), 1);
    h.broker.tick(1_000, &mut h.out);
    assert!(h.take(1).is_empty(), "not yet past the timeout");
    h.broker.tick(1_001, &mut h.out);
    let out = h.take(1);
    assert!(out.iter().any(
        |o| matches!(o, Out::Method { method: Method::BasicCancel { consumer_tag, .. }, .. } if consumer_tag == "c")
    ));
    assert_eq!(h.broker.queues()[0].messages_ready, 1);
    // A late ack of the reclaimed delivery is ignored; a second one is an unknown tag.
    h.send(1, 1, Method::BasicAck { delivery_tag: 1, multiple: false });
    assert!(h.take(1).is_empty());
    h.send(1, 1, Method::BasicAck { delivery_tag: 1, multiple: false });
    let closed = h
        .take(1)
        .into_iter()
        .any(|o| matches!(o, Out::Method { method: Method::ChannelClose { reply_code: 406, .. }, .. }));
    assert!(closed);
}

#[test]
fn consumer_timeout_closes_channel_without_cancel_notify() {
    let config = Config { consumer_timeout_ms: Some(1_000), ..Config::default() };
    let mut h = Harness::new(config);
    h.connect(1, false);
    h.open(1, 1);
    h.declare(1, 1, "q");
    h.publish(1, 1, "", "q", "slow");
    h.consume(1, 1, "q", "c", false);
    h.take(1);
    h.broker.tick(2_000, &mut h.out);
    let closed = h
        .take(1)
        .into_iter()
        .any(|o| matches!(o, Out::Method { method: Method::ChannelClose { reply_code: 406, .. }, .. }));
    assert!(closed);
    assert_eq!(h.broker.queues()[0].messages_ready, 1);
}

#[test]
fn frames_on_a_closing_channel_are_dropped_until_close_ok() {
    let mut h = Harness::new(Config::default());
    h.connect(1, true);
    h.open(1, 1);
    h.publish(1, 1, "missing-exchange", "k", "x");
    let out = h.take(1);
    assert!(out.iter().any(|o| matches!(o, Out::Method { method: Method::ChannelClose { reply_code: 404, .. }, .. })));
    // The client's next publish crosses our close: it is dropped, not an error.
    h.publish(1, 1, "", "q", "y");
    assert!(h.take(1).is_empty());
    h.send(1, 1, Method::ChannelCloseOk);
    h.open(1, 1);
    h.declare(1, 1, "q");
}

#[test]
fn method_on_unopened_channel_is_a_connection_error() {
    let mut h = Harness::new(Config::default());
    h.connect(1, true);
    h.send(1, 5, Method::BasicQos { prefetch_size: 0, prefetch_count: 1, global: false });
    let out = h.take(1);
    assert!(matches!(
        out.as_slice(),
        [Out::Method { channel: 0, method: Method::ConnectionClose { reply_code: 504, .. } }]
    ));
}

#[test]
fn direct_reply_to_routes_to_the_requesting_channel() {
    let mut h = Harness::new(Config::default());
    h.connect(1, true);
    h.connect(2, true);
    h.open(1, 1);
    h.open(2, 1);
    h.declare(2, 1, "rpc");
    h.consume(1, 1, "amq.rabbitmq.reply-to", "replies", true);
    h.take(1);
    let props = BasicProperties { reply_to: Some(ShortStr::from("amq.rabbitmq.reply-to")), ..Default::default() };
    let m = Method::BasicPublish { exchange: "".into(), routing_key: "rpc".into(), mandatory: false, immediate: false };
    h.broker.handle_frame(1, Frame::Method { channel: 1, method: m }, 0, &mut h.out);
    let header = Frame::Header { channel: 1, class_id: 60, body_size: 0, properties: props.to_bytes() };
    h.broker.handle_frame(1, header, 0, &mut h.out);
    h.send(2, 1, Method::BasicGet { queue: "rpc".into(), no_ack: true });
    let reply_to = h
        .take(2)
        .into_iter()
        .find_map(|o| match o {
            Out::Content { msg, .. } => msg.decode_properties().reply_to.clone(),
            _ => None,
        })
        .expect("request delivered with a reply_to");
    assert!(reply_to.starts_with("amq.rabbitmq.reply-to."), "{reply_to}");
    let m =
        Method::BasicPublish { exchange: "".into(), routing_key: reply_to.clone(), mandatory: false, immediate: false };
    h.broker.handle_frame(2, Frame::Method { channel: 1, method: m }, 0, &mut h.out);
    let header =
        Frame::Header { channel: 1, class_id: 60, body_size: 0, properties: BasicProperties::default().to_bytes() };
    h.broker.handle_frame(2, header, 0, &mut h.out);
    let d = h.deliveries(1);
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].0, "replies");
}

#[test]
fn logs_no_definition_names_are_moved_aside_at_start() {
    use std::path::Path;
    use std::sync::Arc;
    use warren_store::{Backend, MemBackend};
    let mem = MemBackend::new();
    let backend: Arc<dyn Backend> = Arc::new(mem.clone());
    drop(warren_core::Broker::open(Config::default(), backend.clone(), "/data".into()).expect("opens"));
    let stale = ["/data/queues/stale/00000000000000000000.seg", "/data/delayed/old/00000000000000000000.seg"];
    for stale in stale {
        let path = Path::new(stale);
        backend.create_dir_all(path.parent().expect("parent")).expect("dir");
        backend.open_append(path).expect("file").append(b"x").expect("write");
    }
    let (_broker, report) =
        warren_core::Broker::open(Config::default(), backend.clone(), "/data".into()).expect("opens");
    assert_eq!(report.quarantined.len(), 2, "{report:?}");
    assert!(backend.list_dirs(Path::new("/data/queues")).expect("list").is_empty());
    assert!(backend.list_dirs(Path::new("/data/delayed")).expect("list").is_empty());
    for stale in stale {
        let aside = stale.replacen("/data/", "/data/quarantine/", 1);
        assert_eq!(backend.read(Path::new(&aside)).expect("kept"), b"x");
    }
}

/// Publishes into "q" until the broker asks to stop reading from the publisher (flow control),
/// or `limit` messages; returns how many went in before that and how many were delivered.
fn publish_until_blocked(h: &mut Harness, limit: usize) -> (Option<usize>, usize) {
    let mut delivered = 0;
    for i in 0..limit {
        h.publish(1, 1, "", "q", "x");
        delivered += h.out.iter().filter(|(c, o)| *c == 2 && matches!(o, Out::Deliver { .. })).count();
        h.out.clear();
        if h.broker.take_flow_blocked(1) {
            return (Some(i + 1), delivered);
        }
    }
    (None, delivered)
}

#[test]
fn a_publisher_outrunning_a_full_consumer_connection_is_flow_blocked_until_it_drains() {
    use warren_core::queue::QUEUE_MEMORY_MESSAGES_MAX;
    let mut h = Harness::new(Config::default());
    h.connect(1, false);
    h.open(1, 1);
    h.declare(1, 1, "q");
    h.take(1);
    h.connect(2, false);
    h.open(2, 1);
    h.consume(2, 1, "q", "c", true);
    // Connection 2 never reports its deliveries written: once its outbound limit is reached,
    // deliveries stop, the queue fills its memory window and starts paging to disk.
    let (n, delivered) = publish_until_blocked(&mut h, 200_000);
    let n = n.expect("the publisher was flow-blocked");
    assert!(delivered > 0, "deliveries went out until the connection was full");
    assert_eq!(n, delivered + QUEUE_MEMORY_MESSAGES_MAX + 1, "blocked when paging began");
    assert!(!h.broker.take_flow_blocked(1), "reported once");
    assert!(!h.broker.take_flow_released(), "nothing drained yet");
    // The consumer's socket drains: flow-blocked publishers may go on.
    let mut out = Vec::new();
    h.broker.on_written(2, usize::MAX / 2, 0, &mut out);
    assert!(h.broker.take_flow_released());
    assert!(!out.is_empty(), "deliveries resumed");
}

#[test]
fn queues_without_consumers_or_held_back_by_prefetch_do_not_block_publishers() {
    use warren_core::queue::QUEUE_MEMORY_MESSAGES_MAX;
    let mut h = Harness::new(Config::default());
    h.connect(1, false);
    h.open(1, 1);
    h.declare(1, 1, "q");
    h.take(1);
    // No consumer: the backlog pages to disk and the publisher goes on.
    assert_eq!(publish_until_blocked(&mut h, QUEUE_MEMORY_MESSAGES_MAX + 1000).0, None);
    // A consumer with prefetch 1 that does not ack holds nothing back on its connection.
    h.connect(2, false);
    h.open(2, 1);
    h.send(2, 1, Method::BasicQos { prefetch_size: 0, prefetch_count: 1, global: false });
    h.consume(2, 1, "q", "c", false);
    assert_eq!(h.deliveries(2).len(), 1);
    assert_eq!(publish_until_blocked(&mut h, 1000).0, None);
}

fn blocked_caps() -> FieldTable {
    let mut caps = FieldTable::new();
    caps.insert("connection.blocked", warren_amqp::FieldValue::Bool(true));
    let mut props = FieldTable::new();
    props.insert("capabilities", warren_amqp::FieldValue::Table(caps));
    props
}

#[test]
fn a_resource_alarm_blocks_publishers_not_consumers_until_it_clears() {
    use warren_core::Alarms;
    let mut h = Harness::new(Config::default());
    let info = |props| warren_core::ConnInfo {
        user: "guest".into(),
        vhost: "/".into(),
        peer: "test".into(),
        client_properties: props,
        channel_max: 2047,
        session: Default::default(),
    };
    h.broker.open_connection(1, info(blocked_caps())).expect("open");
    h.open(1, 1);
    h.declare(1, 1, "q");
    h.take(1);
    h.connect(2, false);
    h.open(2, 1);
    h.consume(2, 1, "q", "c", true);
    let mut out = Vec::new();
    h.broker.set_alarms(Alarms { memory: true, disk: false }, &mut out);
    assert!(out.is_empty(), "nobody is told before publishing");
    assert!(!h.broker.is_alarm_blocked(1));
    // Publishing under the alarm: the publisher is blocked (and told why); what it sent is
    // still routed, and the consumer, which never published, keeps receiving.
    h.publish(1, 1, "", "q", "during");
    let told: Vec<Out> = h.take(1);
    assert!(
        told.iter().any(|o| matches!(o, Out::Method { channel: 0, method: Method::ConnectionBlocked { reason } } if reason.as_str() == "low on memory")),
        "{told:?}"
    );
    assert!(h.broker.is_alarm_blocked(1));
    assert!(!h.broker.is_alarm_blocked(2));
    assert_eq!(bodies(&h.deliveries(2)), ["during"]);
    // A second publish does not repeat connection.blocked.
    h.publish(1, 1, "", "q", "again");
    assert!(!h.take(1).iter().any(|o| matches!(o, Out::Method { method: Method::ConnectionBlocked { .. }, .. })));
    // Clearing: connection.unblocked for the one that was told, reading may resume.
    h.broker.set_alarms(Alarms::default(), &mut out);
    assert!(out.iter().any(|(c, o)| *c == 1 && matches!(o, Out::Method { method: Method::ConnectionUnblocked, .. })));
    assert!(!out.iter().any(|(c, _)| *c == 2));
    assert!(!h.broker.is_alarm_blocked(1));
    assert!(h.broker.take_flow_released());
}

#[test]
fn publishes_past_the_memory_headroom_raise_the_alarm_before_the_next_measurement() {
    let mut h = Harness::new(Config::default());
    h.connect(1, false);
    h.open(1, 1);
    h.declare(1, 1, "q");
    let mut out = Vec::new();
    // 10,000 bytes left below the watermark; each small message counts its overhead too.
    h.broker.set_memory_use(90_000, 100_000, &mut out);
    assert!(!h.broker.alarms().memory);
    let mut published = 0;
    while !h.broker.alarms().memory && published < 1000 {
        h.publish(1, 1, "", "q", "x");
        published += 1;
    }
    assert!(h.broker.alarms().memory, "raised by the publishes themselves");
    assert!(published > 1 && published < 100, "after about 10,000 bytes: {published} messages");
    // The next publish blocks the publisher.
    h.publish(1, 1, "", "q", "x");
    assert!(h.broker.is_alarm_blocked(1));
    // A measurement below the watermark clears it.
    h.broker.set_memory_use(50_000, 100_000, &mut out);
    assert!(!h.broker.alarms().memory);
    assert!(!h.broker.is_alarm_blocked(1));
}
