//! Access control: which operation needs which permission on which resource, with RabbitMQ's
//! refusals (checked against RabbitMQ 3.10.8), topic permissions, vhost deletion, durability.

mod common;

use common::{caps, table, Harness};
use std::path::PathBuf;
use std::sync::Arc;
use warren_amqp::BasicProperties;
use warren_amqp::{FieldTable, FieldValue, Method, ReplyCode};
use warren_core::auth::{Password, SHA256};
use warren_core::definitions::{Definitions, QueueDef};
use warren_core::{Broker, Caller, Config, ConnInfo, GetAckMode, Out};
use warren_store::{Backend, MemBackend};

fn info(user: &str, vhost: &str) -> ConnInfo {
    ConnInfo {
        user: user.into(),
        vhost: vhost.into(),
        peer: "test".into(),
        client_properties: caps(true),
        channel_max: 2047,
        session: Default::default(),
    }
}

/// A broker with vhost "v1" and user alice there with the given permissions.
fn with_alice(configure: &str, write: &str, read: &str) -> Harness {
    let mut h = Harness::new(Config::default());
    h.broker.add_vhost("v1").expect("vhost");
    h.broker.put_user("alice", Password::Clear("pw".into()), vec!["management".into()]).expect("user");
    h.broker.set_permissions("alice", "v1", configure, write, read).expect("permissions");
    h.broker.open_connection(1, info("alice", "v1")).expect("alice may open v1");
    h
}

/// The channel.close (code, text) produced for the connection, if any.
fn channel_close(h: &mut Harness, conn: u64) -> Option<(u16, String)> {
    h.take(conn).into_iter().find_map(|o| match o {
        Out::Method { method: Method::ChannelClose { reply_code, reply_text, .. }, .. } => {
            Some((reply_code, reply_text.to_string()))
        }
        _ => None,
    })
}

/// Sends a method on a fresh channel; returns the refusal, None when it succeeded.
fn try_method(h: &mut Harness, channel: u16, method: Method) -> Option<(u16, String)> {
    h.open(1, channel);
    h.send(1, channel, method);
    channel_close(h, 1)
}

fn refused(text: &str) -> Option<(u16, String)> {
    Some((403, format!("ACCESS_REFUSED - {text}")))
}

fn declare(queue: &str, passive: bool, arguments: FieldTable) -> Method {
    Method::QueueDeclare {
        queue: queue.into(),
        passive,
        durable: false,
        exclusive: false,
        auto_delete: false,
        nowait: false,
        arguments,
    }
}

fn bind(queue: &str, exchange: &str, key: &str) -> Method {
    Method::QueueBind {
        queue: queue.into(),
        exchange: exchange.into(),
        routing_key: key.into(),
        nowait: false,
        arguments: FieldTable::new(),
    }
}

#[test]
fn connection_open_is_refused_as_rabbitmq_refuses_it() {
    let mut h = with_alice(".*", ".*", ".*");
    let e = h.broker.open_connection(2, info("alice", "/")).expect_err("no permissions in /");
    assert_eq!(e.code, ReplyCode::NotAllowed);
    assert_eq!(e.reply_text(), "NOT_ALLOWED - access to vhost '/' refused for user 'alice'");
    let e = h.broker.open_connection(3, info("alice", "nope")).expect_err("no such vhost");
    assert_eq!(e.reply_text(), "NOT_ALLOWED - vhost nope not found");
    // The default user is an administrator with every permission on the default vhost.
    h.broker.open_connection(4, info("guest", "/")).expect("guest opens /");
    assert!(h.broker.user("guest").expect("guest").is_administrator());
}

#[test]
fn queue_operations_need_configure_write_read_on_the_queue() {
    let mut h = with_alice("^(alice|amq\\.gen.*)", "^alice", "^alice");
    assert_eq!(try_method(&mut h, 1, declare("alice.q", false, FieldTable::new())), None);
    assert_eq!(
        try_method(&mut h, 2, declare("other", false, FieldTable::new())),
        refused("access to queue 'other' in vhost 'v1' refused for user 'alice'")
    );
    // The connection goes on after a refusal; a passive declare needs no permission.
    assert_eq!(
        try_method(&mut h, 3, declare("other", true, FieldTable::new())),
        Some((404, "NOT_FOUND - no queue 'other' in vhost 'v1'".into()))
    );
    assert_eq!(try_method(&mut h, 4, declare("alice.q", true, FieldTable::new())), None);
    // Server-named queues are checked under their generated name.
    assert_eq!(try_method(&mut h, 5, declare("", false, FieldTable::new())), None);
    // A dead-letter exchange needs write on it.
    let dlx = table(&[("x-dead-letter-exchange", FieldValue::from("amq.fanout"))]);
    assert_eq!(
        try_method(&mut h, 6, declare("alice.q2", false, dlx)),
        refused("access to exchange 'amq.fanout' in vhost 'v1' refused for user 'alice'")
    );
    // Permissions are checked before existence, as in RabbitMQ.
    assert_eq!(
        try_method(&mut h, 7, bind("nosuch", "amq.direct", "k")),
        refused("access to queue 'nosuch' in vhost 'v1' refused for user 'alice'")
    );
    assert_eq!(
        try_method(&mut h, 8, bind("alice.q", "amq.direct", "k")),
        refused("access to exchange 'amq.direct' in vhost 'v1' refused for user 'alice'")
    );
    assert_eq!(
        try_method(
            &mut h,
            9,
            Method::QueueDelete { queue: "other".into(), if_unused: false, if_empty: false, nowait: false }
        ),
        refused("access to queue 'other' in vhost 'v1' refused for user 'alice'")
    );
    assert_eq!(try_method(&mut h, 10, Method::QueuePurge { queue: "alice.q".into(), nowait: false }), None);
    assert_eq!(try_method(&mut h, 11, Method::BasicGet { queue: "alice.q".into(), no_ack: true }), None);
}

#[test]
fn reads_need_read_on_the_queue() {
    let mut h = with_alice(".*", ".*", "^c");
    assert_eq!(try_method(&mut h, 1, declare("xq", false, FieldTable::new())), None);
    let xq_refused = refused("access to queue 'xq' in vhost 'v1' refused for user 'alice'");
    assert_eq!(try_method(&mut h, 2, Method::QueuePurge { queue: "xq".into(), nowait: false }), xq_refused);
    assert_eq!(try_method(&mut h, 3, Method::BasicGet { queue: "xq".into(), no_ack: true }), xq_refused);
    let consume = Method::BasicConsume {
        queue: "xq".into(),
        consumer_tag: "".into(),
        no_local: false,
        no_ack: true,
        exclusive: false,
        nowait: false,
        arguments: FieldTable::new(),
    };
    assert_eq!(try_method(&mut h, 4, consume), xq_refused);
    assert_eq!(
        try_method(
            &mut h,
            5,
            Method::ExchangeBind {
                destination: "cx".into(),
                source: "amq.direct".into(),
                routing_key: "k".into(),
                nowait: false,
                arguments: FieldTable::new()
            }
        ),
        refused("access to exchange 'amq.direct' in vhost 'v1' refused for user 'alice'")
    );
    assert_eq!(
        try_method(
            &mut h,
            6,
            Method::QueueDelete { queue: "xq".into(), if_unused: false, if_empty: false, nowait: false }
        ),
        None
    );
}

#[test]
fn exchange_declare_and_delete_need_configure() {
    let mut h = with_alice("^alice", ".*", ".*");
    let x = |name: &str, arguments: FieldTable| Method::ExchangeDeclare {
        exchange: name.into(),
        kind: "fanout".into(),
        passive: false,
        durable: false,
        auto_delete: false,
        internal: false,
        nowait: false,
        arguments,
    };
    assert_eq!(try_method(&mut h, 1, x("alice.x", FieldTable::new())), None);
    assert_eq!(
        try_method(&mut h, 2, x("bad.x", FieldTable::new())),
        refused("access to exchange 'bad.x' in vhost 'v1' refused for user 'alice'")
    );
    let passive = Method::ExchangeDeclare {
        exchange: "amq.direct".into(),
        kind: "direct".into(),
        passive: true,
        durable: false,
        auto_delete: false,
        internal: false,
        nowait: false,
        arguments: FieldTable::new(),
    };
    assert_eq!(try_method(&mut h, 3, passive), None);
    assert_eq!(
        try_method(
            &mut h,
            4,
            Method::ExchangeDelete { exchange: "amq.fanout".into(), if_unused: false, nowait: false }
        ),
        refused("access to exchange 'amq.fanout' in vhost 'v1' refused for user 'alice'")
    );
    assert_eq!(
        try_method(&mut h, 5, Method::ExchangeDelete { exchange: "alice.x".into(), if_unused: false, nowait: false }),
        None
    );
}

#[test]
fn publish_needs_write_on_the_exchange_and_the_default_one_is_amq_default() {
    let mut h = with_alice(".*", "^(alice|amq\\.default)$", ".*");
    h.open(1, 1);
    h.declare(1, 1, "alice");
    h.publish(1, 1, "", "alice", "one");
    assert_eq!(channel_close(&mut h, 1), None);
    h.publish(1, 1, "amq.direct", "alice", "two");
    assert_eq!(
        channel_close(&mut h, 1),
        refused("access to exchange 'amq.direct' in vhost 'v1' refused for user 'alice'")
    );
    // The cached check goes when the permissions change.
    h.open(1, 2);
    h.publish(1, 2, "", "alice", "three");
    assert_eq!(channel_close(&mut h, 1), None);
    h.broker.set_permissions("alice", "v1", ".*", "^alice$", ".*").expect("permissions");
    h.publish(1, 2, "", "alice", "four");
    assert_eq!(
        channel_close(&mut h, 1),
        refused("access to exchange 'amq.default' in vhost 'v1' refused for user 'alice'")
    );
    h.open(1, 3);
    let bodies: Vec<String> = h.drain(1, 3, "alice").into_iter().map(|(b, _)| b).collect();
    assert_eq!(bodies, ["one", "three"]);
}

#[test]
fn topic_permissions_check_routing_keys_on_publish_and_bind() {
    let mut h = with_alice(".*", ".*", ".*");
    h.broker.set_topic_permissions("alice", "v1", "amq.topic", "^{username}\\.", "^{vhost}\\.").expect("topic");
    h.open(1, 1);
    h.declare(1, 1, "q");
    h.publish(1, 1, "amq.topic", "alice.x", "ok");
    assert_eq!(channel_close(&mut h, 1), None);
    h.publish(1, 1, "amq.topic", "bob.x", "no");
    assert_eq!(
        channel_close(&mut h, 1),
        refused("access to topic 'bob.x' in exchange 'amq.topic' in vhost 'v1' refused for user 'alice'")
    );
    assert_eq!(try_method(&mut h, 2, bind("q", "amq.topic", "v1.x")), None);
    assert_eq!(
        try_method(&mut h, 3, bind("q", "amq.topic", "z.x")),
        refused("access to topic 'z.x' in exchange 'amq.topic' in vhost 'v1' refused for user 'alice'")
    );
    // Other exchanges, and topic exchanges without a topic permission, are not checked.
    assert_eq!(try_method(&mut h, 4, bind("q", "amq.direct", "z.x")), None);
    h.open(1, 5);
    h.publish(1, 5, "amq.direct", "bob.x", "fine");
    assert_eq!(channel_close(&mut h, 1), None);
}

#[test]
fn empty_patterns_match_nothing() {
    let mut h = with_alice("", "", "");
    assert_eq!(
        try_method(&mut h, 1, declare("", false, FieldTable::new()))
            .map(|(c, t)| (c, t.starts_with("ACCESS_REFUSED - access to queue 'amq.gen-"))),
        Some((403, true))
    );
    h.open(1, 2);
    h.publish(1, 2, "", "q", "x");
    assert_eq!(
        channel_close(&mut h, 1),
        refused("access to exchange 'amq.default' in vhost 'v1' refused for user 'alice'")
    );
}

#[test]
fn deleting_a_vhost_closes_its_connections_and_deletes_its_queues() {
    let mut h = with_alice(".*", ".*", ".*");
    h.open(1, 1);
    h.declare(1, 1, "q");
    h.connect(2, true);
    let mut out = Vec::new();
    assert!(h.broker.delete_vhost("v1", 0, &mut out).expect("deleted"));
    let closes: Vec<_> = out
        .iter()
        .filter_map(|(c, o)| match o {
            Out::Method { method: Method::ConnectionClose { reply_code, reply_text, .. }, .. } => {
                Some((*c, *reply_code, reply_text.to_string()))
            }
            _ => None,
        })
        .collect();
    assert_eq!(closes, [(1, 320, "CONNECTION_FORCED - vhost 'v1' is deleted".to_string())]);
    assert!(!h.broker.has_vhost("v1"));
    assert!(h.broker.queues().iter().all(|q| q.vhost != "v1"));
    assert!(h.broker.users().permission("alice", "v1").is_none());
    let e = h.broker.open_connection(3, info("alice", "v1")).expect_err("gone");
    assert_eq!(e.reply_text(), "NOT_ALLOWED - vhost v1 not found");
    // The default vhost's connection was not touched.
    h.open(2, 1);
    h.declare(2, 1, "still-here");
}

#[test]
fn users_vhosts_and_permissions_survive_a_restart() {
    let backend: Arc<dyn Backend> = Arc::new(MemBackend::new());
    let dir = PathBuf::from("/data");
    let (mut b, _) = Broker::open(Config::default(), backend.clone(), dir.clone()).expect("open");
    b.add_vhost("v1").expect("vhost");
    // The hash RabbitMQ 3.10.8 exported for password "pw".
    let hash = Password::Hash {
        password_hash: "UTIkULXG9baDsj/YUf/sdMnz1QDOltSY5foDoCyZhBbY7RiT".into(),
        hashing_algorithm: SHA256.into(),
    };
    b.put_user("bob", hash, vec!["monitoring".into()]).expect("user");
    b.set_permissions("bob", "v1", "^b", "^b", "^b").expect("permissions");
    b.set_topic_permissions("bob", "v1", "amq.topic", "^{username}", ".*").expect("topic");
    b.open_connection(7, info("guest", "/")).expect("guest opens /");
    let mut out = Vec::new();
    assert!(b.delete_user("guest", 0, &mut out).expect("deleted"));
    let closed = out.iter().any(|(c, o)| {
        *c == 7
            && matches!(o, Out::Method { method: Method::ConnectionClose { reply_code: 320, reply_text, .. }, .. }
                if reply_text.as_str() == "CONNECTION_FORCED - user 'guest' is deleted")
    });
    assert!(closed, "the deleted user's connection is closed: {out:?}");
    drop(b);

    let (b, _) = Broker::open(Config::default(), backend, dir).expect("reopen");
    assert_eq!(b.vhost_names(), ["/", "v1"]);
    // The default user is seeded on a fresh store only.
    assert!(b.user("guest").is_none());
    let bob = b.authenticate_basic("bob", "pw", false).expect("bob logs in");
    assert_eq!(bob.tags, ["monitoring"]);
    assert!(b.authenticate_basic("bob", "nope", false).is_err());
    let p = b.users().permission("bob", "v1").expect("kept");
    assert_eq!((p.configure.as_str(), p.write.as_str(), p.read.as_str()), ("^b", "^b", "^b"));
    let t: Vec<_> = b.users().topic_permissions().map(|t| (t.exchange.as_str(), t.write.as_str())).collect();
    assert_eq!(t, [("amq.topic", "^{username}")]);
}

#[test]
fn permission_changes_check_user_and_vhost() {
    let mut h = with_alice(".*", ".*", ".*");
    assert_eq!(
        h.broker.set_permissions("nobody", "v1", ".*", ".*", ".*").expect_err("no user").code,
        ReplyCode::NotFound
    );
    assert_eq!(
        h.broker.set_permissions("alice", "nope", ".*", ".*", ".*").expect_err("no vhost").code,
        ReplyCode::NotFound
    );
    assert!(h.broker.set_permissions("alice", "v1", "(", ".*", ".*").is_err());
    assert!(h.broker.clear_permissions("alice", "v1").expect("cleared"));
    assert!(!h.broker.clear_permissions("alice", "v1").expect("nothing left"));
    // The open connection lost its permissions.
    assert_eq!(
        try_method(&mut h, 1, declare("q", false, FieldTable::new())),
        refused("access to queue 'q' in vhost 'v1' refused for user 'alice'")
    );
}

#[test]
fn only_impersonators_publish_with_another_user_id() {
    let mut h = with_alice(".*", ".*", ".*");
    h.open(1, 1);
    h.declare(1, 1, "q");
    let props = BasicProperties { user_id: Some("bob".into()), ..BasicProperties::default() };
    h.publish_props(1, 1, "", "q", props.clone(), "as bob");
    assert_eq!(
        channel_close(&mut h, 1),
        Some((406, "PRECONDITION_FAILED - user_id property set to 'bob' but authenticated user was 'alice'".into()))
    );
    h.broker.put_user("alice", Password::Clear("pw".into()), vec!["impersonator".into()]).expect("tags");
    h.open(1, 2);
    h.publish_props(1, 2, "", "q", props, "as bob");
    assert_eq!(channel_close(&mut h, 1), None);
}

#[test]
fn a_snapshot_from_before_access_control_gets_the_default_user() {
    let backend: Arc<dyn Backend> = Arc::new(MemBackend::new());
    let dir = PathBuf::from("/old");
    backend.create_dir_all(&dir).expect("dir");
    let old = Definitions {
        vhosts: vec!["/".into(), "legacy".into()],
        queues: vec![QueueDef {
            vhost: "legacy".into(),
            name: "kept".into(),
            auto_delete: false,
            arguments: FieldTable::new(),
        }],
        ..Definitions::default()
    };
    assert_eq!(old.users, None);
    backend.replace_durably(&dir.join("definitions"), &old.encode()).expect("write the old snapshot");
    let (mut b, report) = Broker::open(Config::default(), backend, dir).expect("opens");
    assert_eq!(report.queues, 1);
    assert_eq!(b.vhost_names(), ["/", "legacy"]);
    assert!(b.authenticate_basic("guest", "guest", true).expect("guest").is_administrator());
    b.open_connection(1, info("guest", "/")).expect("guest has every permission on /");
    // Other vhosts need permissions, as they do in RabbitMQ.
    assert!(b.open_connection(2, info("guest", "legacy")).is_err());
}

/// The management API acts as its request's user with a client's checks and refusals, but
/// opens no connection to do it: an exclusive queue of a client stays locked to it, and no
/// connection is counted.
#[test]
fn management_operations_act_as_their_user_without_a_connection() {
    let mut h = with_alice("^alice", "^alice", "^alice");
    let mut out = Vec::new();
    let opened = h.broker.counters().connections_opened;
    let alice = Caller::User("alice");
    let b = &mut h.broker;
    b.declare_queue(alice, "v1", "alice.q", true, false, FieldTable::new(), 0, &mut out).expect("allowed");
    let e = b.declare_queue(alice, "v1", "other", true, false, FieldTable::new(), 0, &mut out).expect_err("configure");
    assert_eq!(e.text.as_str(), "ACCESS_REFUSED - access to queue 'other' in vhost 'v1' refused for user 'alice'");
    let e = b
        .set_binding(alice, true, "v1", "amq.direct", "alice.q", true, "k", FieldTable::new(), 0, &mut out)
        .expect_err("read on amq.direct");
    assert_eq!(
        e.text.as_str(),
        "ACCESS_REFUSED - access to exchange 'amq.direct' in vhost 'v1' refused for user 'alice'"
    );
    let e = b.declare_queue(alice, "/", "alice.q", true, false, FieldTable::new(), 0, &mut out).expect_err("no vhost");
    assert_eq!(e.code, ReplyCode::NotAllowed);
    // Names lose CR and LF as a client's do.
    b.declare_exchange(alice, "v1", "alice\r\n.x", "fanout", false, false, false, FieldTable::new(), 0, &mut out)
        .expect("x");
    b.set_binding(alice, true, "v1", "alice.x", "alice.q", true, "", FieldTable::new(), 0, &mut out).expect("bind");
    assert!(b.bindings().iter().any(|b| b.source == "alice.x" && b.destination == "alice.q"));

    // A client's exclusive queue is locked to its connection, for the management API too.
    let exclusive = Method::QueueDeclare {
        queue: "alice.mine".into(),
        passive: false,
        durable: false,
        exclusive: true,
        auto_delete: false,
        nowait: false,
        arguments: FieldTable::new(),
    };
    assert_eq!(try_method(&mut h, 1, exclusive), None);
    let b = &mut h.broker;
    let e = b.purge_queue(Caller::Broker, "v1", "alice.mine", 0, &mut out).expect_err("locked");
    assert_eq!(e.code, ReplyCode::ResourceLocked);
    let e = b.delete_queue_checked(Caller::Broker, "v1", "alice.mine", false, false, 0, &mut out).expect_err("locked");
    assert_eq!(e.code, ReplyCode::ResourceLocked);
    b.delete_queue_checked(Caller::Broker, "v1", "alice.q", false, false, 0, &mut out).expect("the broker itself may");
    assert!(!b.queues().iter().any(|q| q.name == "alice.q"));
    assert_eq!(b.counters().connections_opened, opened, "no connection was opened");
}

/// The management API publishes and gets as its user, with a client's refusals, and settles
/// what it got as asked: requeued (redelivered next time) or rejected (dead-lettered).
#[test]
fn management_publish_and_get_check_permissions_and_settle_as_asked() {
    let mut h = with_alice(".*", "^alice", "^alice");
    let mut out = Vec::new();
    let alice = Caller::User("alice");
    let b = &mut h.broker;
    let dlx = table(&[("x-dead-letter-exchange", FieldValue::from("alice.dlx"))]);
    b.declare_queue(alice, "v1", "alice.q", false, false, dlx, 0, &mut out).expect("q");
    b.declare_queue(alice, "v1", "alice.dead", false, false, FieldTable::new(), 0, &mut out).expect("dead");
    for x in ["alice.x", "alice.dlx", "alice.lonely"] {
        b.declare_exchange(alice, "v1", x, "fanout", false, false, false, FieldTable::new(), 0, &mut out).expect("x");
    }
    b.set_binding(alice, true, "v1", "alice.x", "alice.q", true, "", FieldTable::new(), 0, &mut out).expect("bind");
    b.set_binding(alice, true, "v1", "alice.dlx", "alice.dead", true, "", FieldTable::new(), 0, &mut out)
        .expect("bind");

    let body = bytes::Bytes::from_static(b"m");
    let publish = |b: &mut Broker, x: &str, out: &mut Vec<_>| {
        b.publish_message(alice, "v1", x, "k", BasicProperties::default(), body.clone(), 0, out)
    };
    let e = publish(b, "amq.direct", &mut out).expect_err("write on amq.direct");
    assert_eq!(
        e.text.as_str(),
        "ACCESS_REFUSED - access to exchange 'amq.direct' in vhost 'v1' refused for user 'alice'"
    );
    let e = publish(b, "alice.none", &mut out).expect_err("no such exchange");
    assert_eq!(e.code, ReplyCode::NotFound);
    assert!(publish(b, "alice.x", &mut out).expect("routed"));
    assert!(publish(b, "alice.dlx", &mut out).expect("routed to alice.dead"));
    assert!(!publish(b, "alice.lonely", &mut out).expect("published"), "no binding: not routed");

    let ready = |b: &Broker, q: &str| b.queues().into_iter().find(|s| s.name == q).map(|s| s.messages_ready);
    let got = b.get_messages(alice, "v1", "alice.q", 5, GetAckMode::Requeue, 0, &mut out).expect("get");
    assert_eq!(got.len(), 1);
    assert!(!got[0].redelivered);
    let got = b.get_messages(alice, "v1", "alice.q", 5, GetAckMode::Reject, 0, &mut out).expect("get");
    assert!(got[0].redelivered, "requeued by the first get");
    assert_eq!(ready(b, "alice.q"), Some(0));
    assert_eq!(ready(b, "alice.dead"), Some(2), "rejected: dead-lettered beside the one published there");
    let e = b.get_messages(alice, "v1", "other", 1, GetAckMode::Ack, 0, &mut out).expect_err("no such queue");
    assert_eq!(e.code, ReplyCode::NotFound);
    let guest = Caller::User("guest");
    let e = b.get_messages(guest, "v1", "alice.dead", 1, GetAckMode::Ack, 0, &mut out).expect_err("guest has no v1");
    assert_eq!(e.code, ReplyCode::NotAllowed);
    assert_eq!(b.counters().connections_opened, 1, "alice's own connection only");
}
