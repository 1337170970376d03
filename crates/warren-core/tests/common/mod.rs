//! The harness for driving a `Broker` with frames in tests.
#![allow(dead_code)]

use bytes::Bytes;
use warren_amqp::{BasicProperties, FieldTable, Frame, Method};
use warren_core::{Broker, Config, ConnInfo, Out};

pub struct Harness {
    pub broker: Broker,
    pub out: Vec<(u64, Out)>,
    pub now_ms: u64,
}

pub fn caps(cancel_notify: bool) -> FieldTable {
    let mut caps = FieldTable::new();
    caps.insert("consumer_cancel_notify", warren_amqp::FieldValue::Bool(cancel_notify));
    let mut props = FieldTable::new();
    props.insert("capabilities", warren_amqp::FieldValue::Table(caps));
    props
}

impl Harness {
    pub fn new(config: Config) -> Self {
        Harness { broker: Broker::new(config), out: Vec::new(), now_ms: 0 }
    }

    pub fn connect(&mut self, conn: u64, cancel_notify: bool) {
        let info = ConnInfo {
            user: "guest".into(),
            vhost: "/".into(),
            peer: "test".into(),
            client_properties: caps(cancel_notify),
            channel_max: 2047,
            session: Default::default(),
        };
        self.broker.open_connection(conn, info).expect("vhost exists");
    }

    pub fn send(&mut self, conn: u64, channel: u16, method: Method) {
        self.broker.handle_frame(conn, Frame::Method { channel, method }, self.now_ms, &mut self.out);
        self.broker.end_batch(conn, &mut self.out);
    }

    pub fn open(&mut self, conn: u64, channel: u16) {
        self.send(conn, channel, Method::ChannelOpen);
        self.take(conn);
    }

    pub fn publish(&mut self, conn: u64, channel: u16, exchange: &str, key: &str, body: &'static str) {
        self.publish_props(conn, channel, exchange, key, BasicProperties::default(), body);
    }

    pub fn declare(&mut self, conn: u64, channel: u16, queue: &str) {
        self.declare_args(conn, channel, queue, FieldTable::new());
    }

    pub fn consume(&mut self, conn: u64, channel: u16, queue: &str, tag: &str, no_ack: bool) {
        self.consume_args(conn, channel, queue, tag, no_ack, FieldTable::new());
    }

    /// Takes what was produced for `conn` so far.
    pub fn take(&mut self, conn: u64) -> Vec<Out> {
        let (mine, rest): (Vec<_>, Vec<_>) = self.out.drain(..).partition(|(c, _)| *c == conn);
        self.out = rest;
        mine.into_iter().map(|(_, o)| o).collect()
    }

    /// (consumer tag, delivery tag, redelivered, body) of the deliveries produced for `conn`.
    pub fn deliveries(&mut self, conn: u64) -> Vec<(String, u64, bool, String)> {
        self.take(conn)
            .into_iter()
            .filter_map(|o| match o {
                Out::Deliver { consumer_tag, delivery_tag, redelivered, msg, .. } => Some((
                    consumer_tag.to_string(),
                    delivery_tag,
                    redelivered,
                    String::from_utf8_lossy(&msg.body).into(),
                )),
                _ => None,
            })
            .collect()
    }

    pub fn publish_props(
        &mut self,
        conn: u64,
        channel: u16,
        exchange: &str,
        key: &str,
        props: BasicProperties,
        body: &'static str,
    ) {
        let m = Method::BasicPublish {
            exchange: exchange.into(),
            routing_key: key.into(),
            mandatory: false,
            immediate: false,
        };
        self.broker.handle_frame(conn, Frame::Method { channel, method: m }, self.now_ms, &mut self.out);
        let header =
            Frame::Header { channel, class_id: 60, body_size: body.len() as u64, properties: props.to_bytes() };
        self.broker.handle_frame(conn, header, self.now_ms, &mut self.out);
        if !body.is_empty() {
            let b = Frame::Body { channel, payload: Bytes::from_static(body.as_bytes()) };
            self.broker.handle_frame(conn, b, self.now_ms, &mut self.out);
        }
        self.broker.end_batch(conn, &mut self.out);
    }

    pub fn declare_args(&mut self, conn: u64, channel: u16, queue: &str, arguments: FieldTable) -> Vec<Out> {
        self.send(
            conn,
            channel,
            Method::QueueDeclare {
                queue: queue.into(),
                passive: false,
                durable: false,
                exclusive: false,
                auto_delete: false,
                nowait: false,
                arguments,
            },
        );
        self.take(conn)
    }

    pub fn exchange(&mut self, conn: u64, channel: u16, name: &str, kind: &str, arguments: FieldTable) {
        self.send(
            conn,
            channel,
            Method::ExchangeDeclare {
                exchange: name.into(),
                kind: kind.into(),
                passive: false,
                durable: false,
                auto_delete: false,
                internal: false,
                nowait: false,
                arguments,
            },
        );
        self.take(conn);
    }

    pub fn bind(&mut self, conn: u64, channel: u16, queue: &str, exchange: &str, key: &str) {
        self.send(
            conn,
            channel,
            Method::QueueBind {
                queue: queue.into(),
                exchange: exchange.into(),
                routing_key: key.into(),
                nowait: false,
                arguments: FieldTable::new(),
            },
        );
        self.take(conn);
    }

    pub fn consume_args(
        &mut self,
        conn: u64,
        channel: u16,
        queue: &str,
        tag: &str,
        no_ack: bool,
        arguments: FieldTable,
    ) {
        self.send(
            conn,
            channel,
            Method::BasicConsume {
                queue: queue.into(),
                consumer_tag: tag.into(),
                no_local: false,
                no_ack,
                exclusive: false,
                nowait: false,
                arguments,
            },
        );
    }

    /// Bodies of the messages basic.get returns, until the queue is empty.
    pub fn drain(&mut self, conn: u64, channel: u16, queue: &str) -> Vec<(String, warren_core::message::MessageRef)> {
        let mut got = Vec::new();
        loop {
            self.send(conn, channel, Method::BasicGet { queue: queue.into(), no_ack: true });
            let out = self.take(conn);
            let Some(msg) = out.into_iter().find_map(|o| match o {
                Out::Content { msg, .. } => Some(msg),
                _ => None,
            }) else {
                return got;
            };
            got.push((String::from_utf8_lossy(&msg.body).into_owned(), msg));
        }
    }
}

pub fn table(entries: &[(&str, warren_amqp::FieldValue)]) -> FieldTable {
    let mut t = FieldTable::new();
    for (k, v) in entries {
        t.insert(*k, v.clone());
    }
    t
}
