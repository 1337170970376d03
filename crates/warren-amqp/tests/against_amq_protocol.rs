//! Checks warren-amqp against an independent implementation of the wire format: `amq-protocol`,
//! the codec lapin uses. Every check runs both ways: warren encodes and amq-protocol parses, and
//! amq-protocol encodes and warren parses.
//!
//! Where the two models differ (amq-protocol keeps a field table as a sorted map, has no
//! basic.qos prefetch-size, has the deprecated access class) the test says so where it adjusts.

use amq_protocol::frame::{gen_frame, parse_frame, AMQPContentHeader, AMQPFrame, WriteContext};
use amq_protocol::protocol::{basic, channel, confirm, connection, exchange, queue, tx, AMQPClass};
use amq_protocol::types::generation::gen_field_table;
use amq_protocol::types::parsing::parse_field_table;
use amq_protocol::types::{
    AMQPValue, ByteArray, DecimalValue, FieldArray, FieldTable as AmqTable, LongString, ShortString,
};
use bytes::{Bytes, BytesMut};
use proptest::collection::vec;
use proptest::prelude::*;
use std::collections::BTreeSet;
use warren_amqp::codec::Reader;
use warren_amqp::frame::{write_content, write_method, Frame, FrameParser, FRAME_OVERHEAD};
use warren_amqp::{Assembled, BasicProperties, ContentAssembler, FieldTable, FieldValue, Method, ReplyCode, ShortStr};

/// Both bytes differ, so a byte-swapped channel number shows.
const CHANNEL: u16 = 0x1A2B;
const FRAME_MAX: u32 = 131072;

// ---------------------------------------------------------------------------------------------
// Running the two codecs
// ---------------------------------------------------------------------------------------------

fn amq_gen(frame: &AMQPFrame) -> Vec<u8> {
    match gen_frame(frame)(WriteContext::from(Vec::new())) {
        Ok(ctx) => ctx.write,
        Err(e) => panic!("amq-protocol could not serialise {frame:?}: {e:?}"),
    }
}

/// The start of a byte string, for failure messages.
fn show(b: &[u8]) -> String {
    let head = &b[..b.len().min(96)];
    format!("({} bytes) {head:02x?}{}", b.len(), if b.len() > head.len() { "..." } else { "" })
}

/// Parses every frame in `input` with amq-protocol; all of it must be consumed.
fn amq_parse_all(input: &[u8]) -> Vec<AMQPFrame> {
    let mut rest = input;
    let mut frames = Vec::new();
    while !rest.is_empty() {
        match parse_frame(rest) {
            Ok((tail, frame)) => {
                frames.push(frame);
                rest = tail;
            }
            Err(e) => panic!("amq-protocol rejected warren's bytes {}: {e:?}", show(rest)),
        }
    }
    frames
}

/// Parses every frame in `input` with warren; all of it must be consumed.
fn warren_parse_all(input: &[u8], frame_max: u32) -> Vec<Frame> {
    let parser = FrameParser::new(frame_max);
    let mut buf = BytesMut::from(input);
    let mut frames = Vec::new();
    loop {
        match parser.parse(&mut buf) {
            Ok(Some(frame)) => frames.push(frame),
            Ok(None) => break,
            Err(e) => panic!("warren rejected amq-protocol's bytes {}: {e}", show(input)),
        }
    }
    assert!(buf.is_empty(), "warren left {} bytes unparsed: {:02x?}", buf.len(), &buf[..]);
    frames
}

fn warren_method_bytes(channel: u16, m: &Method) -> BytesMut {
    let mut out = BytesMut::new();
    write_method(&mut out, channel, m);
    out
}

fn warren_table_bytes(t: &FieldTable) -> Vec<u8> {
    let mut out = BytesMut::new();
    t.encode(&mut out);
    out.to_vec()
}

fn amq_table_bytes(t: &AmqTable) -> Vec<u8> {
    match gen_field_table(t)(WriteContext::from(Vec::new())) {
        Ok(ctx) => ctx.write,
        Err(e) => panic!("amq-protocol could not serialise {t:?}: {e:?}"),
    }
}

fn amq_parse_table(input: &[u8]) -> AmqTable {
    match parse_field_table(input) {
        Ok((rest, t)) => {
            assert!(rest.is_empty(), "amq-protocol left {} bytes of the table", rest.len());
            t
        }
        Err(e) => panic!("amq-protocol rejected warren's table {}: {e:?}", show(input)),
    }
}

fn warren_parse_table(input: &[u8]) -> FieldTable {
    let mut r = Reader::new(Bytes::copy_from_slice(input));
    let t = FieldTable::decode(&mut r).unwrap_or_else(|e| panic!("warren rejected the table {}: {e}", show(input)));
    assert_eq!(r.remaining(), 0, "warren left bytes of the table");
    t
}

// ---------------------------------------------------------------------------------------------
// Translating warren values into amq-protocol values, field by field, by name
// ---------------------------------------------------------------------------------------------

fn ss(s: &str) -> ShortString {
    ShortString::from(s)
}

fn ls(b: &[u8]) -> LongString {
    LongString::from(b.to_vec())
}

/// The type correspondence under test: each warren type maps to the amq-protocol type of the
/// same Rust width and signedness, so a wrong wire tag on either side shows as a mismatch.
fn to_amq_value(v: &FieldValue) -> AMQPValue {
    match v {
        FieldValue::Bool(x) => AMQPValue::Boolean(*x),
        FieldValue::I8(x) => AMQPValue::ShortShortInt(*x),
        FieldValue::U8(x) => AMQPValue::ShortShortUInt(*x),
        FieldValue::I16(x) => AMQPValue::ShortInt(*x),
        FieldValue::U16(x) => AMQPValue::ShortUInt(*x),
        FieldValue::I32(x) => AMQPValue::LongInt(*x),
        FieldValue::U32(x) => AMQPValue::LongUInt(*x),
        FieldValue::I64(x) => AMQPValue::LongLongInt(*x),
        FieldValue::F32(x) => AMQPValue::Float(*x),
        FieldValue::F64(x) => AMQPValue::Double(*x),
        FieldValue::Decimal { scale, value } => AMQPValue::DecimalValue(DecimalValue { scale: *scale, value: *value }),
        FieldValue::LongStr(b) => AMQPValue::LongString(ls(b)),
        FieldValue::Array(items) => {
            AMQPValue::FieldArray(FieldArray::from(items.iter().map(to_amq_value).collect::<Vec<_>>()))
        }
        FieldValue::Timestamp(x) => AMQPValue::Timestamp(*x),
        FieldValue::Table(t) => AMQPValue::FieldTable(to_amq_table(t)),
        FieldValue::Void => AMQPValue::Void,
        FieldValue::ByteArray(b) => AMQPValue::ByteArray(ByteArray::from(b.to_vec())),
    }
}

/// amq-protocol holds a table as a sorted map, so a table with a repeated key has no equivalent.
fn to_amq_table(t: &FieldTable) -> AmqTable {
    let mut out = AmqTable::default();
    for (k, v) in t.iter() {
        assert!(!out.contains_key(k), "test data holds key {k:?} twice; amq-protocol would keep one");
        out.insert(ss(k), to_amq_value(v));
    }
    out
}

/// Equality that compares floats by their bits (NaN payloads included) instead of IEEE rules.
fn same_value(a: &AMQPValue, b: &AMQPValue) -> bool {
    match (a, b) {
        (AMQPValue::Float(x), AMQPValue::Float(y)) => x.to_bits() == y.to_bits(),
        (AMQPValue::Double(x), AMQPValue::Double(y)) => x.to_bits() == y.to_bits(),
        (AMQPValue::FieldArray(x), AMQPValue::FieldArray(y)) => {
            x.as_slice().len() == y.as_slice().len()
                && x.as_slice().iter().zip(y.as_slice()).all(|(x, y)| same_value(x, y))
        }
        (AMQPValue::FieldTable(x), AMQPValue::FieldTable(y)) => same_table(x, y),
        _ => a == b,
    }
}

fn same_table(a: &AmqTable, b: &AmqTable) -> bool {
    a.inner().len() == b.inner().len()
        && a.inner().iter().zip(b.inner()).all(|((ka, va), (kb, vb))| ka == kb && same_value(va, vb))
}

fn assert_same_table(got: &AmqTable, want: &AmqTable) {
    assert!(same_table(got, want), "field tables differ:\n got: {got:?}\nwant: {want:?}");
}

/// The same table with keys in byte order at every level: the order amq-protocol writes.
fn canonical(t: &FieldTable) -> FieldTable {
    let mut entries: Vec<(ShortStr, FieldValue)> = t.iter().map(|(k, v)| (k.clone(), canonical_value(v))).collect();
    entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    FieldTable(entries)
}

fn canonical_value(v: &FieldValue) -> FieldValue {
    match v {
        FieldValue::Array(items) => FieldValue::Array(items.iter().map(canonical_value).collect()),
        FieldValue::Table(t) => FieldValue::Table(canonical(t)),
        other => other.clone(),
    }
}

fn to_amq_props(p: &BasicProperties) -> basic::AMQPProperties {
    let mut a = basic::AMQPProperties::default();
    if let Some(v) = &p.content_type {
        a = a.with_content_type(ss(v));
    }
    if let Some(v) = &p.content_encoding {
        a = a.with_content_encoding(ss(v));
    }
    if let Some(v) = &p.headers {
        a = a.with_headers(to_amq_table(v));
    }
    if let Some(v) = p.delivery_mode {
        a = a.with_delivery_mode(v);
    }
    if let Some(v) = p.priority {
        a = a.with_priority(v);
    }
    if let Some(v) = &p.correlation_id {
        a = a.with_correlation_id(ss(v));
    }
    if let Some(v) = &p.reply_to {
        a = a.with_reply_to(ss(v));
    }
    if let Some(v) = &p.expiration {
        a = a.with_expiration(ss(v));
    }
    if let Some(v) = &p.message_id {
        a = a.with_message_id(ss(v));
    }
    if let Some(v) = p.timestamp {
        a = a.with_timestamp(v);
    }
    if let Some(v) = &p.kind {
        a = a.with_type(ss(v));
    }
    if let Some(v) = &p.user_id {
        a = a.with_user_id(ss(v));
    }
    if let Some(v) = &p.app_id {
        a = a.with_app_id(ss(v));
    }
    if let Some(v) = &p.cluster_id {
        a = a.with_cluster_id(ss(v));
    }
    a
}

/// Property by property; headers with [`same_table`] so that NaN floats compare by bits.
fn assert_same_props(got: &basic::AMQPProperties, want: &basic::AMQPProperties) {
    assert_eq!(got.content_type(), want.content_type(), "content-type");
    assert_eq!(got.content_encoding(), want.content_encoding(), "content-encoding");
    match (got.headers(), want.headers()) {
        (Some(g), Some(w)) => assert_same_table(g, w),
        (g, w) => assert_eq!(g.is_some(), w.is_some(), "headers present"),
    }
    assert_eq!(got.delivery_mode(), want.delivery_mode(), "delivery-mode");
    assert_eq!(got.priority(), want.priority(), "priority");
    assert_eq!(got.correlation_id(), want.correlation_id(), "correlation-id");
    assert_eq!(got.reply_to(), want.reply_to(), "reply-to");
    assert_eq!(got.expiration(), want.expiration(), "expiration");
    assert_eq!(got.message_id(), want.message_id(), "message-id");
    assert_eq!(got.timestamp(), want.timestamp(), "timestamp");
    assert_eq!(got.kind(), want.kind(), "type");
    assert_eq!(got.user_id(), want.user_id(), "user-id");
    assert_eq!(got.app_id(), want.app_id(), "app-id");
    assert_eq!(got.cluster_id(), want.cluster_id(), "cluster-id");
}

fn conn(m: connection::AMQPMethod) -> AMQPClass {
    AMQPClass::Connection(m)
}
fn chan(m: channel::AMQPMethod) -> AMQPClass {
    AMQPClass::Channel(m)
}
fn exch(m: exchange::AMQPMethod) -> AMQPClass {
    AMQPClass::Exchange(m)
}
fn que(m: queue::AMQPMethod) -> AMQPClass {
    AMQPClass::Queue(m)
}
fn bas(m: basic::AMQPMethod) -> AMQPClass {
    AMQPClass::Basic(m)
}

/// Every warren method as the amq-protocol value with the same fields. The match has no
/// wildcard, so a method added to warren fails to compile here until it is mapped.
fn to_amq_method(m: &Method) -> AMQPClass {
    use Method as W;
    match m {
        W::ConnectionStart { version_major, version_minor, server_properties, mechanisms, locales } => {
            conn(connection::AMQPMethod::Start(connection::Start {
                version_major: *version_major,
                version_minor: *version_minor,
                server_properties: to_amq_table(server_properties),
                mechanisms: ls(mechanisms),
                locales: ls(locales),
            }))
        }
        W::ConnectionStartOk { client_properties, mechanism, response, locale } => {
            conn(connection::AMQPMethod::StartOk(connection::StartOk {
                client_properties: to_amq_table(client_properties),
                mechanism: ss(mechanism),
                response: ls(response),
                locale: ss(locale),
            }))
        }
        W::ConnectionSecure { challenge } => {
            conn(connection::AMQPMethod::Secure(connection::Secure { challenge: ls(challenge) }))
        }
        W::ConnectionSecureOk { response } => {
            conn(connection::AMQPMethod::SecureOk(connection::SecureOk { response: ls(response) }))
        }
        W::ConnectionTune { channel_max, frame_max, heartbeat } => {
            conn(connection::AMQPMethod::Tune(connection::Tune {
                channel_max: *channel_max,
                frame_max: *frame_max,
                heartbeat: *heartbeat,
            }))
        }
        W::ConnectionTuneOk { channel_max, frame_max, heartbeat } => {
            conn(connection::AMQPMethod::TuneOk(connection::TuneOk {
                channel_max: *channel_max,
                frame_max: *frame_max,
                heartbeat: *heartbeat,
            }))
        }
        W::ConnectionOpen { virtual_host } => {
            conn(connection::AMQPMethod::Open(connection::Open { virtual_host: ss(virtual_host) }))
        }
        W::ConnectionOpenOk => conn(connection::AMQPMethod::OpenOk(connection::OpenOk {})),
        W::ConnectionClose { reply_code, reply_text, class_id, method_id } => {
            conn(connection::AMQPMethod::Close(connection::Close {
                reply_code: *reply_code,
                reply_text: ss(reply_text),
                class_id: *class_id,
                method_id: *method_id,
            }))
        }
        W::ConnectionCloseOk => conn(connection::AMQPMethod::CloseOk(connection::CloseOk {})),
        W::ConnectionBlocked { reason } => {
            conn(connection::AMQPMethod::Blocked(connection::Blocked { reason: ss(reason) }))
        }
        W::ConnectionUnblocked => conn(connection::AMQPMethod::Unblocked(connection::Unblocked {})),
        W::ConnectionUpdateSecret { new_secret, reason } => {
            conn(connection::AMQPMethod::UpdateSecret(connection::UpdateSecret {
                new_secret: ls(new_secret),
                reason: ss(reason),
            }))
        }
        W::ConnectionUpdateSecretOk => conn(connection::AMQPMethod::UpdateSecretOk(connection::UpdateSecretOk {})),
        W::ChannelOpen => chan(channel::AMQPMethod::Open(channel::Open {})),
        W::ChannelOpenOk => chan(channel::AMQPMethod::OpenOk(channel::OpenOk {})),
        W::ChannelFlow { active } => chan(channel::AMQPMethod::Flow(channel::Flow { active: *active })),
        W::ChannelFlowOk { active } => chan(channel::AMQPMethod::FlowOk(channel::FlowOk { active: *active })),
        W::ChannelClose { reply_code, reply_text, class_id, method_id } => {
            chan(channel::AMQPMethod::Close(channel::Close {
                reply_code: *reply_code,
                reply_text: ss(reply_text),
                class_id: *class_id,
                method_id: *method_id,
            }))
        }
        W::ChannelCloseOk => chan(channel::AMQPMethod::CloseOk(channel::CloseOk {})),
        W::ExchangeDeclare { exchange, kind, passive, durable, auto_delete, internal, nowait, arguments } => {
            exch(exchange::AMQPMethod::Declare(exchange::Declare {
                exchange: ss(exchange),
                kind: ss(kind),
                passive: *passive,
                durable: *durable,
                auto_delete: *auto_delete,
                internal: *internal,
                nowait: *nowait,
                arguments: to_amq_table(arguments),
            }))
        }
        W::ExchangeDeclareOk => exch(exchange::AMQPMethod::DeclareOk(exchange::DeclareOk {})),
        W::ExchangeDelete { exchange, if_unused, nowait } => exch(exchange::AMQPMethod::Delete(exchange::Delete {
            exchange: ss(exchange),
            if_unused: *if_unused,
            nowait: *nowait,
        })),
        W::ExchangeDeleteOk => exch(exchange::AMQPMethod::DeleteOk(exchange::DeleteOk {})),
        W::ExchangeBind { destination, source, routing_key, nowait, arguments } => {
            exch(exchange::AMQPMethod::Bind(exchange::Bind {
                destination: ss(destination),
                source: ss(source),
                routing_key: ss(routing_key),
                nowait: *nowait,
                arguments: to_amq_table(arguments),
            }))
        }
        W::ExchangeBindOk => exch(exchange::AMQPMethod::BindOk(exchange::BindOk {})),
        W::ExchangeUnbind { destination, source, routing_key, nowait, arguments } => {
            exch(exchange::AMQPMethod::Unbind(exchange::Unbind {
                destination: ss(destination),
                source: ss(source),
                routing_key: ss(routing_key),
                nowait: *nowait,
                arguments: to_amq_table(arguments),
            }))
        }
        W::ExchangeUnbindOk => exch(exchange::AMQPMethod::UnbindOk(exchange::UnbindOk {})),
        W::QueueDeclare { queue, passive, durable, exclusive, auto_delete, nowait, arguments } => {
            que(queue::AMQPMethod::Declare(queue::Declare {
                queue: ss(queue),
                passive: *passive,
                durable: *durable,
                exclusive: *exclusive,
                auto_delete: *auto_delete,
                nowait: *nowait,
                arguments: to_amq_table(arguments),
            }))
        }
        W::QueueDeclareOk { queue, message_count, consumer_count } => {
            que(queue::AMQPMethod::DeclareOk(queue::DeclareOk {
                queue: ss(queue),
                message_count: *message_count,
                consumer_count: *consumer_count,
            }))
        }
        W::QueueBind { queue, exchange, routing_key, nowait, arguments } => que(queue::AMQPMethod::Bind(queue::Bind {
            queue: ss(queue),
            exchange: ss(exchange),
            routing_key: ss(routing_key),
            nowait: *nowait,
            arguments: to_amq_table(arguments),
        })),
        W::QueueBindOk => que(queue::AMQPMethod::BindOk(queue::BindOk {})),
        W::QueuePurge { queue, nowait } => {
            que(queue::AMQPMethod::Purge(queue::Purge { queue: ss(queue), nowait: *nowait }))
        }
        W::QueuePurgeOk { message_count } => {
            que(queue::AMQPMethod::PurgeOk(queue::PurgeOk { message_count: *message_count }))
        }
        W::QueueDelete { queue, if_unused, if_empty, nowait } => que(queue::AMQPMethod::Delete(queue::Delete {
            queue: ss(queue),
            if_unused: *if_unused,
            if_empty: *if_empty,
            nowait: *nowait,
        })),
        W::QueueDeleteOk { message_count } => {
            que(queue::AMQPMethod::DeleteOk(queue::DeleteOk { message_count: *message_count }))
        }
        W::QueueUnbind { queue, exchange, routing_key, arguments } => que(queue::AMQPMethod::Unbind(queue::Unbind {
            queue: ss(queue),
            exchange: ss(exchange),
            routing_key: ss(routing_key),
            arguments: to_amq_table(arguments),
        })),
        W::QueueUnbindOk => que(queue::AMQPMethod::UnbindOk(queue::UnbindOk {})),
        // amq-protocol has no prefetch-size field: it writes 0 and skips it when reading. The
        // tests check those four bytes directly.
        W::BasicQos { prefetch_size: _, prefetch_count, global } => {
            bas(basic::AMQPMethod::Qos(basic::Qos { prefetch_count: *prefetch_count, global: *global }))
        }
        W::BasicQosOk => bas(basic::AMQPMethod::QosOk(basic::QosOk {})),
        W::BasicConsume { queue, consumer_tag, no_local, no_ack, exclusive, nowait, arguments } => {
            bas(basic::AMQPMethod::Consume(basic::Consume {
                queue: ss(queue),
                consumer_tag: ss(consumer_tag),
                no_local: *no_local,
                no_ack: *no_ack,
                exclusive: *exclusive,
                nowait: *nowait,
                arguments: to_amq_table(arguments),
            }))
        }
        W::BasicConsumeOk { consumer_tag } => {
            bas(basic::AMQPMethod::ConsumeOk(basic::ConsumeOk { consumer_tag: ss(consumer_tag) }))
        }
        W::BasicCancel { consumer_tag, nowait } => {
            bas(basic::AMQPMethod::Cancel(basic::Cancel { consumer_tag: ss(consumer_tag), nowait: *nowait }))
        }
        W::BasicCancelOk { consumer_tag } => {
            bas(basic::AMQPMethod::CancelOk(basic::CancelOk { consumer_tag: ss(consumer_tag) }))
        }
        W::BasicPublish { exchange, routing_key, mandatory, immediate } => {
            bas(basic::AMQPMethod::Publish(basic::Publish {
                exchange: ss(exchange),
                routing_key: ss(routing_key),
                mandatory: *mandatory,
                immediate: *immediate,
            }))
        }
        W::BasicReturn { reply_code, reply_text, exchange, routing_key } => {
            bas(basic::AMQPMethod::Return(basic::Return {
                reply_code: *reply_code,
                reply_text: ss(reply_text),
                exchange: ss(exchange),
                routing_key: ss(routing_key),
            }))
        }
        W::BasicDeliver { consumer_tag, delivery_tag, redelivered, exchange, routing_key } => {
            bas(basic::AMQPMethod::Deliver(basic::Deliver {
                consumer_tag: ss(consumer_tag),
                delivery_tag: *delivery_tag,
                redelivered: *redelivered,
                exchange: ss(exchange),
                routing_key: ss(routing_key),
            }))
        }
        W::BasicGet { queue, no_ack } => bas(basic::AMQPMethod::Get(basic::Get { queue: ss(queue), no_ack: *no_ack })),
        W::BasicGetOk { delivery_tag, redelivered, exchange, routing_key, message_count } => {
            bas(basic::AMQPMethod::GetOk(basic::GetOk {
                delivery_tag: *delivery_tag,
                redelivered: *redelivered,
                exchange: ss(exchange),
                routing_key: ss(routing_key),
                message_count: *message_count,
            }))
        }
        W::BasicGetEmpty => bas(basic::AMQPMethod::GetEmpty(basic::GetEmpty {})),
        W::BasicAck { delivery_tag, multiple } => {
            bas(basic::AMQPMethod::Ack(basic::Ack { delivery_tag: *delivery_tag, multiple: *multiple }))
        }
        W::BasicReject { delivery_tag, requeue } => {
            bas(basic::AMQPMethod::Reject(basic::Reject { delivery_tag: *delivery_tag, requeue: *requeue }))
        }
        W::BasicRecoverAsync { requeue } => {
            bas(basic::AMQPMethod::RecoverAsync(basic::RecoverAsync { requeue: *requeue }))
        }
        W::BasicRecover { requeue } => bas(basic::AMQPMethod::Recover(basic::Recover { requeue: *requeue })),
        W::BasicRecoverOk => bas(basic::AMQPMethod::RecoverOk(basic::RecoverOk {})),
        W::BasicNack { delivery_tag, multiple, requeue } => bas(basic::AMQPMethod::Nack(basic::Nack {
            delivery_tag: *delivery_tag,
            multiple: *multiple,
            requeue: *requeue,
        })),
        W::ConfirmSelect { nowait } => {
            AMQPClass::Confirm(confirm::AMQPMethod::Select(confirm::Select { nowait: *nowait }))
        }
        W::ConfirmSelectOk => AMQPClass::Confirm(confirm::AMQPMethod::SelectOk(confirm::SelectOk {})),
        W::TxSelect => AMQPClass::Tx(tx::AMQPMethod::Select(tx::Select {})),
        W::TxSelectOk => AMQPClass::Tx(tx::AMQPMethod::SelectOk(tx::SelectOk {})),
        W::TxCommit => AMQPClass::Tx(tx::AMQPMethod::Commit(tx::Commit {})),
        W::TxCommitOk => AMQPClass::Tx(tx::AMQPMethod::CommitOk(tx::CommitOk {})),
        W::TxRollback => AMQPClass::Tx(tx::AMQPMethod::Rollback(tx::Rollback {})),
        W::TxRollbackOk => AMQPClass::Tx(tx::AMQPMethod::RollbackOk(tx::RollbackOk {})),
    }
}

/// What warren should decode from amq-protocol's encoding of `to_amq_method(m)`: the same
/// method, except the fields amq-protocol cannot carry (basic.qos prefetch-size is written as 0).
fn as_seen_through_amq(m: &Method) -> Method {
    match m {
        Method::BasicQos { prefetch_count, global, .. } => {
            Method::BasicQos { prefetch_size: 0, prefetch_count: *prefetch_count, global: *global }
        }
        other => other.clone(),
    }
}

// ---------------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------------

fn s(x: &str) -> ShortStr {
    ShortStr::from(x)
}

fn table(entries: Vec<(&str, FieldValue)>) -> FieldTable {
    canonical(&entries.into_iter().map(|(k, v)| (s(k), v)).collect())
}

/// A table holding every field type RabbitMQ uses, at values where a wrong width, signedness or
/// byte order shows (non-UTF-8 long strings too: long strings are bytes).
fn every_type_table() -> FieldTable {
    let inner = table(vec![
        ("count", FieldValue::I64(3)),
        ("reason", FieldValue::from("expired")),
        ("time", FieldValue::Timestamp(0x0000_0001_6553_F100)),
        ("queue", FieldValue::from("q\u{e9}")),
    ]);
    table(vec![
        ("bool-true", FieldValue::Bool(true)),
        ("bool-false", FieldValue::Bool(false)),
        ("i8", FieldValue::I8(i8::MIN)),
        ("u8", FieldValue::U8(0xFE)),
        ("i16", FieldValue::I16(-0x1234)),
        ("u16", FieldValue::U16(0xFEDC)),
        ("i32", FieldValue::I32(-0x1234_5678)),
        ("u32", FieldValue::U32(0xFEDC_BA98)),
        ("i64", FieldValue::I64(-0x0123_4567_89AB_CDEF)),
        ("f32", FieldValue::F32(-1.234_567_9e-7)),
        ("f64", FieldValue::F64(std::f64::consts::PI * 1e100)),
        ("decimal", FieldValue::Decimal { scale: 3, value: 0xDEAD_BEEF }),
        ("longstr", FieldValue::from("\u{65e5}\u{672c} text")),
        ("longstr-bytes", FieldValue::LongStr(Bytes::from_static(b"\x00\xff\xfe not utf-8"))),
        (
            "array",
            FieldValue::Array(vec![
                FieldValue::I32(1),
                FieldValue::from("two"),
                FieldValue::Void,
                FieldValue::Bool(true),
                FieldValue::Table(inner.clone()),
                FieldValue::Array(vec![FieldValue::U16(7), FieldValue::Array(vec![])]),
                FieldValue::ByteArray(Bytes::from_static(b"\x01\x02")),
                FieldValue::Decimal { scale: 0, value: 1 },
                FieldValue::F64(-0.0),
            ]),
        ),
        ("timestamp", FieldValue::Timestamp(0xFEDC_BA98_7654_3210)),
        ("table", FieldValue::Table(inner.clone())),
        ("x-death", FieldValue::Array(vec![FieldValue::Table(inner)])),
        ("void", FieldValue::Void),
        ("bytes", FieldValue::ByteArray(Bytes::from_static(b"\x00\x01\x02\xff"))),
        ("empty-table", FieldValue::Table(FieldTable::new())),
        ("empty-array", FieldValue::Array(vec![])),
        ("empty-bytes", FieldValue::ByteArray(Bytes::new())),
        ("empty-string", FieldValue::from("")),
    ])
}

fn capabilities() -> FieldTable {
    table(vec![
        (
            "capabilities",
            FieldValue::Table(table(vec![
                ("publisher_confirms", FieldValue::Bool(true)),
                ("exchange_exchange_bindings", FieldValue::Bool(true)),
                ("basic.nack", FieldValue::Bool(true)),
                ("consumer_cancel_notify", FieldValue::Bool(true)),
                ("connection.blocked", FieldValue::Bool(false)),
                ("authentication_failure_close", FieldValue::Bool(true)),
            ])),
        ),
        ("product", FieldValue::from("Warren")),
        ("version", FieldValue::from("0.1.0")),
        ("cluster_name", FieldValue::from("rabbit@host")),
    ])
}

fn arguments() -> FieldTable {
    table(vec![
        ("x-message-ttl", FieldValue::I32(60_000)),
        ("x-max-length", FieldValue::I64(1 << 40)),
        ("x-dead-letter-exchange", FieldValue::from("dlx")),
        ("x-queue-type", FieldValue::from("classic")),
        ("x-match", FieldValue::from("any")),
        ("x-single-active-consumer", FieldValue::Bool(true)),
        ("x-priority", FieldValue::I16(-5)),
    ])
}

/// Bit patterns for the bit fields: all set, none set, each one alone, and alternating, so that
/// two bits in swapped positions cannot look right.
const BIT_MASKS: [u8; 9] = [0b11111, 0, 0b00001, 0b00010, 0b00100, 0b01000, 0b10000, 0b10101, 0b01010];

/// One instance of each of the 64 methods, every non-bit field at a non-default value whose
/// bytes differ, and the i-th bit field of each method set as bit i of `mask`.
fn every_method(mask: u8) -> Vec<Method> {
    use Method::*;
    let bit = |i: u8| mask & (1 << i) != 0;
    let long_name = "n".repeat(255);
    vec![
        ConnectionStart {
            // Not 0-9: distinct non-zero octets, so a swap or a constant shows.
            version_major: 0x0A,
            version_minor: 0x0B,
            server_properties: capabilities(),
            mechanisms: Bytes::from_static(b"PLAIN AMQPLAIN EXTERNAL"),
            locales: Bytes::from_static(b"en_US"),
        },
        ConnectionStartOk {
            client_properties: every_type_table(),
            mechanism: s("PLAIN"),
            response: Bytes::from_static(b"\0guest\0gu\xffest"),
            locale: s("en_US"),
        },
        ConnectionSecure { challenge: Bytes::from_static(b"challenge\x00\x01") },
        ConnectionSecureOk { response: Bytes::from_static(b"response\xfe") },
        ConnectionTune { channel_max: 0x07FF, frame_max: 0x0002_0000, heartbeat: 0x003C },
        ConnectionTuneOk { channel_max: 0x0102, frame_max: 0x0304_0506, heartbeat: 0x0708 },
        ConnectionOpen { virtual_host: s("/vhost-\u{e9}") },
        ConnectionOpenOk,
        ConnectionClose {
            reply_code: 320,
            reply_text: s("CONNECTION_FORCED - bye"),
            class_id: 0x0A0B,
            method_id: 0x0C0D,
        },
        ConnectionCloseOk,
        ConnectionBlocked { reason: s("low on memory") },
        ConnectionUnblocked,
        ConnectionUpdateSecret { new_secret: Bytes::from_static(b"new.jwt\x00token"), reason: s("refresh") },
        ConnectionUpdateSecretOk,
        ChannelOpen,
        ChannelOpenOk,
        ChannelFlow { active: bit(0) },
        ChannelFlowOk { active: bit(0) },
        ChannelClose {
            reply_code: 406,
            reply_text: s("PRECONDITION_FAILED - inequivalent arg"),
            class_id: 50,
            method_id: 10,
        },
        ChannelCloseOk,
        ExchangeDeclare {
            exchange: s("logs"),
            kind: s("x-consistent-hash"),
            passive: bit(0),
            durable: bit(1),
            auto_delete: bit(2),
            internal: bit(3),
            nowait: bit(4),
            arguments: arguments(),
        },
        ExchangeDeclareOk,
        ExchangeDelete { exchange: s("old-logs"), if_unused: bit(0), nowait: bit(1) },
        ExchangeDeleteOk,
        ExchangeBind {
            destination: s("dest"),
            source: s("src"),
            routing_key: s("a.b.#"),
            nowait: bit(0),
            arguments: arguments(),
        },
        ExchangeBindOk,
        ExchangeUnbind {
            destination: s("dest2"),
            source: s("src2"),
            routing_key: s("c.*"),
            nowait: bit(0),
            arguments: every_type_table(),
        },
        ExchangeUnbindOk,
        QueueDeclare {
            queue: s(&long_name),
            passive: bit(0),
            durable: bit(1),
            exclusive: bit(2),
            auto_delete: bit(3),
            nowait: bit(4),
            arguments: arguments(),
        },
        QueueDeclareOk {
            queue: s("amq.gen-JzTY20BRgKO-HjmUJj0wLg"),
            message_count: 0x0102_0304,
            consumer_count: 0x0506_0708,
        },
        QueueBind {
            queue: s("q1"),
            exchange: s("x1"),
            routing_key: s(&long_name),
            nowait: bit(0),
            arguments: arguments(),
        },
        QueueBindOk,
        QueuePurge { queue: s("q-purge"), nowait: bit(0) },
        QueuePurgeOk { message_count: 0x1122_3344 },
        QueueDelete { queue: s("q-delete"), if_unused: bit(0), if_empty: bit(1), nowait: bit(2) },
        QueueDeleteOk { message_count: 0x5566_7788 },
        QueueUnbind { queue: s("q2"), exchange: s("x2"), routing_key: s("rk2"), arguments: arguments() },
        QueueUnbindOk,
        BasicQos { prefetch_size: 0x0C0D_0E0F, prefetch_count: 0x0A0B, global: bit(0) },
        BasicQosOk,
        BasicConsume {
            queue: s("q-consume"),
            consumer_tag: s("ctag-1"),
            no_local: bit(0),
            no_ack: bit(1),
            exclusive: bit(2),
            nowait: bit(3),
            arguments: arguments(),
        },
        BasicConsumeOk { consumer_tag: s("ctag-ok") },
        BasicCancel { consumer_tag: s("ctag-cancel"), nowait: bit(0) },
        BasicCancelOk { consumer_tag: s("ctag-cancel-ok") },
        BasicPublish {
            exchange: s("amq.topic"),
            routing_key: s("stock.usd.nyse"),
            mandatory: bit(0),
            immediate: bit(1),
        },
        BasicReturn { reply_code: 312, reply_text: s("NO_ROUTE"), exchange: s("x-ret"), routing_key: s("rk-ret") },
        BasicDeliver {
            consumer_tag: s("ctag-deliver"),
            delivery_tag: 0x0102_0304_0506_0708,
            redelivered: bit(0),
            exchange: s("x-deliver"),
            routing_key: s("rk-deliver"),
        },
        BasicGet { queue: s("q-get"), no_ack: bit(0) },
        BasicGetOk {
            delivery_tag: 0x1112_1314_1516_1718,
            redelivered: bit(0),
            exchange: s("x-get"),
            routing_key: s("rk-get"),
            message_count: 0x2122_2324,
        },
        BasicGetEmpty,
        BasicAck { delivery_tag: 0x3132_3334_3536_3738, multiple: bit(0) },
        BasicReject { delivery_tag: 0x4142_4344_4546_4748, requeue: bit(0) },
        BasicRecoverAsync { requeue: bit(0) },
        BasicRecover { requeue: bit(0) },
        BasicRecoverOk,
        BasicNack { delivery_tag: u64::MAX - 1, multiple: bit(0), requeue: bit(1) },
        ConfirmSelect { nowait: bit(0) },
        ConfirmSelectOk,
        TxSelect,
        TxSelectOk,
        TxCommit,
        TxCommitOk,
        TxRollback,
        TxRollbackOk,
    ]
}

/// (class-id, method-id) of every AMQP 0-9-1 method with RabbitMQ's extensions, from the spec.
/// amq-protocol also has the deprecated access class (30: request 10, request-ok 11); warren
/// does not, so it is not in this list.
#[rustfmt::skip]
const SPEC_METHODS: [(u16, u16); 64] = [
    // connection
    (10, 10), (10, 11), (10, 20), (10, 21), (10, 30), (10, 31), (10, 40), (10, 41), (10, 50), (10, 51),
    (10, 60), (10, 61), (10, 70), (10, 71),
    // channel
    (20, 10), (20, 11), (20, 20), (20, 21), (20, 40), (20, 41),
    // exchange (unbind-ok is 51 in RabbitMQ's extended spec, not 41)
    (40, 10), (40, 11), (40, 20), (40, 21), (40, 30), (40, 31), (40, 40), (40, 51),
    // queue
    (50, 10), (50, 11), (50, 20), (50, 21), (50, 30), (50, 31), (50, 40), (50, 41), (50, 50), (50, 51),
    // basic
    (60, 10), (60, 11), (60, 20), (60, 21), (60, 30), (60, 31), (60, 40), (60, 50), (60, 60), (60, 70),
    (60, 71), (60, 72), (60, 80), (60, 90), (60, 100), (60, 110), (60, 111), (60, 120),
    // confirm
    (85, 10), (85, 11),
    // tx
    (90, 10), (90, 11), (90, 20), (90, 21), (90, 30), (90, 31),
];

fn full_properties() -> BasicProperties {
    BasicProperties {
        content_type: Some(s("application/json")),
        content_encoding: Some(s("gzip")),
        headers: Some(every_type_table()),
        delivery_mode: Some(2),
        priority: Some(9),
        correlation_id: Some(s("corr-\u{e9}")),
        reply_to: Some(s("amq.rabbitmq.reply-to.g1h2AA5yZXBseUAxMjM0NTY3OAAAAAAAAAAB")),
        expiration: Some(s("60000")),
        message_id: Some(s("msg-0001")),
        timestamp: Some(0x0000_0000_6553_F100),
        kind: Some(s("order.created")),
        user_id: Some(s("guest")),
        app_id: Some(s("billing")),
        cluster_id: Some(s("cluster-a")),
    }
}

// ---------------------------------------------------------------------------------------------
// Methods
// ---------------------------------------------------------------------------------------------

#[test]
fn fixtures_cover_every_method() {
    let ids: Vec<(u16, u16)> = every_method(0).iter().map(Method::ids).collect();
    let unique: BTreeSet<(u16, u16)> = ids.iter().copied().collect();
    assert_eq!(ids.len(), unique.len(), "a method appears twice in the fixtures");
    assert_eq!(unique, SPEC_METHODS.iter().copied().collect::<BTreeSet<_>>());
    for m in every_method(0) {
        let a = to_amq_method(&m);
        assert_eq!((a.get_amqp_class_id(), a.get_amqp_method_id()), m.ids(), "ids of {m:?}");
    }
}

#[test]
fn every_method_warren_to_amq_protocol() {
    for mask in BIT_MASKS {
        for m in every_method(mask) {
            let bytes = warren_method_bytes(CHANNEL, &m);
            let frames = amq_parse_all(&bytes);
            assert_eq!(frames.len(), 1, "{m:?}");
            match &frames[0] {
                AMQPFrame::Method(channel, class) => {
                    assert_eq!(*channel, CHANNEL, "{m:?}");
                    assert_eq!(*class, to_amq_method(&m), "warren wrote {m:?} as {bytes:02x?}");
                }
                other => panic!("{m:?} parsed as {other:?}"),
            }
            // Byte for byte what amq-protocol writes (its tables are sorted, as the fixtures'
            // are), except basic.qos prefetch-size, which amq-protocol always writes as 0.
            if !matches!(m, Method::BasicQos { .. }) {
                assert_eq!(amq_gen(&frames[0]), &bytes[..], "{m:?}");
            }
        }
    }
}

#[test]
fn every_method_amq_protocol_to_warren() {
    for mask in BIT_MASKS {
        for m in every_method(mask) {
            let bytes = amq_gen(&AMQPFrame::Method(CHANNEL, to_amq_method(&m)));
            let frames = warren_parse_all(&bytes, FRAME_MAX);
            assert_eq!(frames.len(), 1, "{m:?}");
            let want = as_seen_through_amq(&m);
            match &frames[0] {
                Frame::Method { channel, method } => {
                    assert_eq!(*channel, CHANNEL, "{m:?}");
                    assert_eq!(*method, want, "amq-protocol wrote {bytes:02x?}");
                }
                other => panic!("{m:?} parsed as {other:?}"),
            }
            // Reserved fields are zero / empty on both sides and tables are in amq-protocol's
            // order, so warren writes back exactly what amq-protocol wrote.
            assert_eq!(&warren_method_bytes(CHANNEL, &want)[..], &bytes[..], "{m:?}");
        }
    }
}

/// amq-protocol cannot show basic.qos prefetch-size, so check those bytes directly.
#[test]
fn basic_qos_prefetch_size_is_in_the_right_place() {
    let m = Method::BasicQos { prefetch_size: 0x0102_0304, prefetch_count: 0x0506, global: true };
    let bytes = warren_method_bytes(CHANNEL, &m);
    // type, channel, size, class 60, method 10, then prefetch-size, prefetch-count, bits.
    assert_eq!(&bytes[7..18], &[0, 60, 0, 10, 1, 2, 3, 4, 5, 6, 1]);
    match &amq_parse_all(&bytes)[..] {
        [AMQPFrame::Method(_, AMQPClass::Basic(basic::AMQPMethod::Qos(q)))] => {
            assert_eq!((q.prefetch_count, q.global), (0x0506, true));
        }
        other => panic!("{other:?}"),
    }
    let mut buf = bytes.clone();
    let f = FrameParser::new(FRAME_MAX).parse(&mut buf).expect("valid").expect("complete");
    assert_eq!(f, Frame::Method { channel: CHANNEL, method: m });
}

// ---------------------------------------------------------------------------------------------
// Field tables
// ---------------------------------------------------------------------------------------------

fn table_warren_to_amq(t: &FieldTable) {
    let bytes = warren_table_bytes(t);
    assert_same_table(&amq_parse_table(&bytes), &to_amq_table(t));
}

fn table_amq_to_warren(t: &FieldTable) {
    let bytes = amq_table_bytes(&to_amq_table(t));
    let back = warren_parse_table(&bytes);
    assert_same_table(&to_amq_table(&back), &to_amq_table(t));
    // Warren keeps wire order, which is amq-protocol's sorted order, so it writes the same bytes.
    assert_eq!(warren_table_bytes(&back), bytes);
    assert_eq!(warren_table_bytes(&canonical(t)), bytes);
}

#[test]
fn field_table_with_every_type_both_ways() {
    for t in [every_type_table(), capabilities(), arguments(), FieldTable::new()] {
        table_warren_to_amq(&t);
        table_amq_to_warren(&t);
        // No NaN in these, so plain equality holds too.
        let back = warren_parse_table(&amq_table_bytes(&to_amq_table(&t)));
        assert_eq!(back, t);
    }
}

/// A table in non-sorted order: amq-protocol reads it into its map whatever the order.
#[test]
fn field_table_order_does_not_matter_to_amq_protocol() {
    let mut t = every_type_table();
    t.0.reverse();
    table_warren_to_amq(&t);
}

/// One entry `k` of each tag in RabbitMQ's list, written by hand, read by both.
#[test]
fn type_tags_agree_with_rabbitmq_list() {
    let cases: Vec<(u8, Vec<u8>, FieldValue, AMQPValue)> = vec![
        (b't', vec![1], FieldValue::Bool(true), AMQPValue::Boolean(true)),
        // Any non-zero octet is true (RabbitMQ: Value /= 0); both write it back as 1.
        (b't', vec![2], FieldValue::Bool(true), AMQPValue::Boolean(true)),
        (b'b', vec![0x80], FieldValue::I8(-128), AMQPValue::ShortShortInt(-128)),
        (b'B', vec![0x80], FieldValue::U8(128), AMQPValue::ShortShortUInt(128)),
        (b's', vec![0x80, 1], FieldValue::I16(-32767), AMQPValue::ShortInt(-32767)),
        (b'u', vec![0x80, 1], FieldValue::U16(32769), AMQPValue::ShortUInt(32769)),
        (b'I', vec![0x80, 0, 0, 1], FieldValue::I32(-0x7FFF_FFFF), AMQPValue::LongInt(-0x7FFF_FFFF)),
        (b'i', vec![0x80, 0, 0, 1], FieldValue::U32(0x8000_0001), AMQPValue::LongUInt(0x8000_0001)),
        (b'l', vec![0x80, 0, 0, 0, 0, 0, 0, 1], FieldValue::I64(i64::MIN + 1), AMQPValue::LongLongInt(i64::MIN + 1)),
        // 'L' is the spec's unsigned 64; RabbitMQ, amq-protocol and warren all read it as signed.
        (b'L', vec![0x80, 0, 0, 0, 0, 0, 0, 1], FieldValue::I64(i64::MIN + 1), AMQPValue::LongLongInt(i64::MIN + 1)),
        (b'f', 1.5f32.to_be_bytes().to_vec(), FieldValue::F32(1.5), AMQPValue::Float(1.5)),
        (b'd', (-2.5f64).to_be_bytes().to_vec(), FieldValue::F64(-2.5), AMQPValue::Double(-2.5)),
        (
            b'D',
            vec![2, 0, 0, 0x30, 0x39],
            FieldValue::Decimal { scale: 2, value: 12345 },
            AMQPValue::DecimalValue(DecimalValue { scale: 2, value: 12345 }),
        ),
        (
            b'S',
            vec![0, 0, 0, 2, b'h', 0xFF],
            FieldValue::LongStr(Bytes::from_static(b"h\xff")),
            AMQPValue::LongString(ls(b"h\xff")),
        ),
        (
            b'A',
            vec![0, 0, 0, 3, b'b', 0xFF, b'V'],
            FieldValue::Array(vec![FieldValue::I8(-1), FieldValue::Void]),
            AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::ShortShortInt(-1), AMQPValue::Void])),
        ),
        (
            b'T',
            vec![0x80, 0, 0, 0, 0, 0, 0, 1],
            FieldValue::Timestamp(0x8000_0000_0000_0001),
            AMQPValue::Timestamp(0x8000_0000_0000_0001),
        ),
        (
            b'F',
            vec![0, 0, 0, 4, 1, b'n', b't', 0],
            FieldValue::Table(table(vec![("n", FieldValue::Bool(false))])),
            AMQPValue::FieldTable(to_amq_table(&table(vec![("n", FieldValue::Bool(false))]))),
        ),
        (b'V', vec![], FieldValue::Void, AMQPValue::Void),
        (
            b'x',
            vec![0, 0, 0, 2, 0, 0xFF],
            FieldValue::ByteArray(Bytes::from_static(b"\x00\xff")),
            AMQPValue::ByteArray(ByteArray::from(vec![0, 0xFF])),
        ),
    ];
    for (tag, payload, warren_value, amq_value) in cases {
        let mut entry = vec![1, b'k', tag];
        entry.extend_from_slice(&payload);
        let mut raw = (entry.len() as u32).to_be_bytes().to_vec();
        raw.extend_from_slice(&entry);
        let w = warren_parse_table(&raw);
        assert_eq!(w.0, vec![(s("k"), warren_value)], "warren, tag '{}'", tag as char);
        let a = amq_parse_table(&raw);
        assert_eq!(a.inner().get("k"), Some(&amq_value), "amq-protocol, tag '{}'", tag as char);
        // Each side writes the tag RabbitMQ uses ('l' for both 64-bit tags).
        let written_tag = if tag == b'L' { b'l' } else { tag };
        // Table length (4 bytes), key length (1), key "k" (1), then the tag.
        assert_eq!(warren_table_bytes(&w)[6], written_tag, "warren writes tag '{}'", tag as char);
        assert_eq!(amq_table_bytes(&a)[6], written_tag, "amq-protocol writes tag '{}'", tag as char);
    }
}

/// The one tag the two read differently. amq-protocol also accepts the 0-9-1 spec's 'U' as a
/// signed 16-bit integer; RabbitMQ's parser (rabbit_binary_parser) has no 'U' clause, and warren
/// follows RabbitMQ and refuses it. Neither writes 'U'.
#[test]
fn tag_capital_u_is_read_by_amq_protocol_only() {
    let raw = [0, 0, 0, 5, 1, b'k', b'U', 0xFF, 0xFE];
    assert_eq!(amq_parse_table(&raw[..]).inner().get("k"), Some(&AMQPValue::ShortInt(-2)));
    let err = FieldTable::decode(&mut Reader::new(Bytes::copy_from_slice(&raw))).expect_err("warren refuses 'U'");
    assert_eq!(err.code, ReplyCode::SyntaxError);
}

// ---------------------------------------------------------------------------------------------
// Content: header and body frames
// ---------------------------------------------------------------------------------------------

fn content_warren_to_amq(channel: u16, props: &BasicProperties, body: &[u8], frame_max: u32) {
    let mut out = BytesMut::new();
    write_content(&mut out, channel, &props.to_bytes(), body, frame_max);
    let frames = amq_parse_all(&out);
    let (header, bodies) = frames.split_first().expect("a header frame");
    match header {
        AMQPFrame::Header(ch, class_id, h) => {
            assert_eq!((*ch, *class_id, h.class_id), (channel, 60, 60));
            assert_eq!(h.body_size, body.len() as u64);
            assert_same_props(&h.properties, &to_amq_props(props));
        }
        other => panic!("expected a header frame, got {other:?}"),
    }
    let mut got = Vec::new();
    for f in bodies {
        match f {
            AMQPFrame::Body(ch, payload) => {
                assert_eq!(*ch, channel);
                assert!(!payload.is_empty(), "empty body frame");
                assert!(payload.len() <= frame_max as usize - FRAME_OVERHEAD, "body frame over frame_max");
                got.extend_from_slice(payload);
            }
            other => panic!("expected a body frame, got {other:?}"),
        }
    }
    assert_eq!(got, body);
}

fn content_amq_to_warren(channel: u16, props: &BasicProperties, body: &[u8], frame_max: u32) {
    let amq_props = to_amq_props(props);
    let mut bytes = amq_gen(&AMQPFrame::Header(
        channel,
        60,
        Box::new(AMQPContentHeader { class_id: 60, body_size: body.len() as u64, properties: amq_props }),
    ));
    // A header frame is never split, so a large property list needs a larger frame_max.
    let frame_max = frame_max.max(bytes.len() as u32);
    let chunk = frame_max as usize - FRAME_OVERHEAD;
    for part in body.chunks(chunk) {
        bytes.extend(amq_gen(&AMQPFrame::Body(channel, part.to_vec())));
    }
    let frames = warren_parse_all(&bytes, frame_max);
    let (header, bodies) = frames.split_first().expect("a header frame");
    let raw = match header {
        Frame::Header { channel: ch, class_id, body_size, properties } => {
            assert_eq!((*ch, *class_id, *body_size), (channel, 60, body.len() as u64));
            properties.clone()
        }
        other => panic!("expected a header frame, got {other:?}"),
    };
    let decoded = BasicProperties::decode(raw.clone()).expect("warren decodes amq-protocol's properties");
    assert_same_props(&to_amq_props(&decoded), &to_amq_props(props));
    assert_eq!(decoded.to_bytes(), raw, "warren writes the property list back unchanged");
    let mut got = Vec::new();
    for f in bodies {
        match f {
            Frame::Body { channel: ch, payload } => {
                assert_eq!(*ch, channel);
                got.extend_from_slice(payload);
            }
            other => panic!("expected a body frame, got {other:?}"),
        }
    }
    assert_eq!(got, body);

    // The same frames, after a basic.publish, make one command in warren's assembler.
    let mut a = ContentAssembler::default();
    let publish = Method::BasicPublish { exchange: s("x"), routing_key: s("k"), mandatory: false, immediate: false };
    assert_eq!(a.push(Frame::Method { channel, method: publish.clone() }, u64::MAX).expect("method"), None);
    let mut done = None;
    for f in frames {
        assert!(done.is_none(), "frames after the command completed");
        done = a.push(f, body.len() as u64).expect("assembles");
    }
    match done {
        Some(Assembled::Content { method, raw_properties, body: b, .. }) => {
            assert_eq!(method, publish);
            assert_eq!(raw_properties, raw);
            assert_eq!(&b[..], body);
        }
        other => panic!("expected a whole command, got {other:?}"),
    }
}

#[test]
fn content_header_with_all_properties_both_ways() {
    let props = full_properties();
    for body in [&b""[..], b"hello", &[0xA5; 10_000][..]] {
        content_warren_to_amq(CHANNEL, &props, body, 4096);
        content_amq_to_warren(CHANNEL, &props, body, 4096);
    }
    // Warren's decode of amq-protocol's bytes equals the original (no NaN here).
    let bytes = amq_gen(&AMQPFrame::Header(
        1,
        60,
        Box::new(AMQPContentHeader { class_id: 60, body_size: 0, properties: to_amq_props(&props) }),
    ));
    match &warren_parse_all(&bytes, FRAME_MAX)[..] {
        [Frame::Header { properties, .. }] => {
            assert_eq!(BasicProperties::decode(properties.clone()).expect("decodes"), props);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn each_property_alone_both_ways() {
    let full = full_properties();
    let one_each: Vec<BasicProperties> = vec![
        BasicProperties { content_type: full.content_type.clone(), ..Default::default() },
        BasicProperties { content_encoding: full.content_encoding.clone(), ..Default::default() },
        BasicProperties { headers: full.headers.clone(), ..Default::default() },
        BasicProperties { delivery_mode: full.delivery_mode, ..Default::default() },
        BasicProperties { priority: full.priority, ..Default::default() },
        BasicProperties { correlation_id: full.correlation_id.clone(), ..Default::default() },
        BasicProperties { reply_to: full.reply_to.clone(), ..Default::default() },
        BasicProperties { expiration: full.expiration.clone(), ..Default::default() },
        BasicProperties { message_id: full.message_id.clone(), ..Default::default() },
        BasicProperties { timestamp: full.timestamp, ..Default::default() },
        BasicProperties { kind: full.kind.clone(), ..Default::default() },
        BasicProperties { user_id: full.user_id.clone(), ..Default::default() },
        BasicProperties { app_id: full.app_id.clone(), ..Default::default() },
        BasicProperties { cluster_id: full.cluster_id.clone(), ..Default::default() },
        BasicProperties::default(),
    ];
    for p in one_each {
        content_warren_to_amq(3, &p, b"x", FRAME_MAX);
        content_amq_to_warren(3, &p, b"x", FRAME_MAX);
        // The flag word is the same on both sides.
        let amq = amq_gen(&AMQPFrame::Header(
            3,
            60,
            Box::new(AMQPContentHeader { class_id: 60, body_size: 1, properties: to_amq_props(&p) }),
        ));
        assert_eq!(&amq[7 + 12..amq.len() - 1], &p.to_bytes()[..], "{p:?}");
    }
}

#[test]
fn body_frames_both_ways() {
    // Sizes around the frame_max boundary: one byte under, at, and over a frame's payload.
    let frame_max = 4096u32;
    let chunk = frame_max as usize - FRAME_OVERHEAD;
    for len in [1, chunk - 1, chunk, chunk + 1, 2 * chunk, 3 * chunk + 7] {
        let body: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
        let p = BasicProperties::default();
        content_warren_to_amq(7, &p, &body, frame_max);
        content_amq_to_warren(7, &p, &body, frame_max);
        let mut out = BytesMut::new();
        write_content(&mut out, 7, &p.to_bytes(), &body, frame_max);
        let bodies = amq_parse_all(&out).len() - 1;
        assert_eq!(bodies, len.div_ceil(chunk), "body of {len} bytes");
    }
    // A single body frame, generated by each side alone, is the same bytes.
    let payload = b"\x00\x01body\xce".to_vec();
    let amq = amq_gen(&AMQPFrame::Body(9, payload.clone()));
    let mut warren = BytesMut::new();
    write_content(&mut warren, 9, &BasicProperties::default().to_bytes(), &payload, FRAME_MAX);
    assert_eq!(&warren[warren.len() - amq.len()..], &amq[..]);
    match &warren_parse_all(&amq, FRAME_MAX)[..] {
        [Frame::Body { channel: 9, payload: p }] => assert_eq!(&p[..], &payload[..]),
        other => panic!("{other:?}"),
    }
}

#[test]
fn heartbeat_both_ways() {
    let amq = amq_gen(&AMQPFrame::Heartbeat(0));
    let mut warren = BytesMut::new();
    warren_amqp::frame::write_heartbeat(&mut warren);
    assert_eq!(&warren[..], &amq[..]);
    assert_eq!(warren_parse_all(&amq, FRAME_MAX), vec![Frame::Heartbeat]);
    assert_eq!(amq_parse_all(&warren), vec![AMQPFrame::Heartbeat(0)]);
}

// ---------------------------------------------------------------------------------------------
// Property tests
// ---------------------------------------------------------------------------------------------

/// Any text, cut to a short string's 255 bytes on a character boundary.
fn short_str() -> impl Strategy<Value = ShortStr> {
    prop_oneof![
        4 => "(?s).{0,24}",
        1 => "[a-z.]{250,255}",
        1 => "\\PC{60,90}",
    ]
    .prop_map(|x: String| ShortStr::from(x.as_str()))
}

fn leaf_value() -> impl Strategy<Value = FieldValue> {
    prop_oneof![
        any::<bool>().prop_map(FieldValue::Bool),
        any::<i8>().prop_map(FieldValue::I8),
        any::<u8>().prop_map(FieldValue::U8),
        any::<i16>().prop_map(FieldValue::I16),
        any::<u16>().prop_map(FieldValue::U16),
        any::<i32>().prop_map(FieldValue::I32),
        any::<u32>().prop_map(FieldValue::U32),
        any::<i64>().prop_map(FieldValue::I64),
        // From raw bits, so NaNs with payloads, infinities and -0.0 come up too.
        any::<u32>().prop_map(|b| FieldValue::F32(f32::from_bits(b))),
        any::<u64>().prop_map(|b| FieldValue::F64(f64::from_bits(b))),
        (any::<u8>(), any::<u32>()).prop_map(|(scale, value)| FieldValue::Decimal { scale, value }),
        vec(any::<u8>(), 0..48).prop_map(|b| FieldValue::LongStr(Bytes::from(b))),
        any::<u64>().prop_map(FieldValue::Timestamp),
        Just(FieldValue::Void),
        vec(any::<u8>(), 0..48).prop_map(|b| FieldValue::ByteArray(Bytes::from(b))),
    ]
}

/// Entries in random order with distinct keys (amq-protocol's map cannot hold a repeated key).
fn table_of(value: impl Strategy<Value = FieldValue>) -> impl Strategy<Value = FieldTable> {
    vec((short_str(), value), 0..8).prop_map(|entries| {
        let mut seen = BTreeSet::new();
        FieldTable(entries.into_iter().filter(|(k, _)| seen.insert(k.clone())).collect())
    })
}

fn field_value() -> impl Strategy<Value = FieldValue> {
    leaf_value().prop_recursive(4, 64, 8, |inner| {
        prop_oneof![vec(inner.clone(), 0..8).prop_map(FieldValue::Array), table_of(inner).prop_map(FieldValue::Table),]
    })
}

fn field_table() -> impl Strategy<Value = FieldTable> {
    table_of(field_value())
}

fn properties() -> impl Strategy<Value = BasicProperties> {
    let strs = (
        proptest::option::of(short_str()),
        proptest::option::of(short_str()),
        proptest::option::of(short_str()),
        proptest::option::of(short_str()),
        proptest::option::of(short_str()),
        proptest::option::of(short_str()),
        proptest::option::of(short_str()),
        proptest::option::of(short_str()),
        proptest::option::of(short_str()),
        proptest::option::of(short_str()),
    );
    let rest = (
        proptest::option::of(field_table()),
        proptest::option::of(any::<u8>()),
        proptest::option::of(any::<u8>()),
        proptest::option::of(any::<u64>()),
    );
    (strs, rest).prop_map(
        |(
            (
                content_type,
                content_encoding,
                correlation_id,
                reply_to,
                expiration,
                message_id,
                kind,
                user_id,
                app_id,
                cluster_id,
            ),
            (headers, delivery_mode, priority, timestamp),
        )| BasicProperties {
            content_type,
            content_encoding,
            headers,
            delivery_mode,
            priority,
            correlation_id,
            reply_to,
            expiration,
            message_id,
            timestamp,
            kind,
            user_id,
            app_id,
            cluster_id,
        },
    )
}

fn publish() -> impl Strategy<Value = Method> {
    (short_str(), short_str(), any::<bool>(), any::<bool>()).prop_map(
        |(exchange, routing_key, mandatory, immediate)| Method::BasicPublish {
            exchange,
            routing_key,
            mandatory,
            immediate,
        },
    )
}

fn deliver() -> impl Strategy<Value = Method> {
    (short_str(), any::<u64>(), any::<bool>(), short_str(), short_str()).prop_map(
        |(consumer_tag, delivery_tag, redelivered, exchange, routing_key)| Method::BasicDeliver {
            consumer_tag,
            delivery_tag,
            redelivered,
            exchange,
            routing_key,
        },
    )
}

/// Publish and deliver, and other methods with strings, bits and tables in the same frame.
fn method() -> impl Strategy<Value = Method> {
    prop_oneof![
        3 => publish(),
        3 => deliver(),
        1 => (any::<u64>(), any::<bool>(), short_str(), short_str(), any::<u32>()).prop_map(
            |(delivery_tag, redelivered, exchange, routing_key, message_count)| Method::BasicGetOk {
                delivery_tag,
                redelivered,
                exchange,
                routing_key,
                message_count,
            }
        ),
        1 => (any::<u16>(), short_str(), short_str(), short_str()).prop_map(
            |(reply_code, reply_text, exchange, routing_key)| Method::BasicReturn {
                reply_code,
                reply_text,
                exchange,
                routing_key,
            }
        ),
        1 => (any::<u64>(), any::<bool>(), any::<bool>()).prop_map(|(delivery_tag, multiple, requeue)| {
            Method::BasicNack { delivery_tag, multiple, requeue }
        }),
        1 => (short_str(), any::<[bool; 5]>(), field_table()).prop_map(|(queue, b, arguments)| Method::QueueDeclare {
            queue,
            passive: b[0],
            durable: b[1],
            exclusive: b[2],
            auto_delete: b[3],
            nowait: b[4],
            arguments,
        }),
        1 => (short_str(), short_str(), any::<[bool; 4]>(), field_table()).prop_map(
            |(queue, consumer_tag, b, arguments)| Method::BasicConsume {
                queue,
                consumer_tag,
                no_local: b[0],
                no_ack: b[1],
                exclusive: b[2],
                nowait: b[3],
                arguments,
            }
        ),
    ]
}

/// Whether two warren methods are equal, with tables compared through [`same_table`].
fn assert_same_method(got: &Method, want: &Method) {
    let strip = |m: &Method| match m {
        Method::QueueDeclare { queue, passive, durable, exclusive, auto_delete, nowait, .. } => Method::QueueDeclare {
            queue: queue.clone(),
            passive: *passive,
            durable: *durable,
            exclusive: *exclusive,
            auto_delete: *auto_delete,
            nowait: *nowait,
            arguments: FieldTable::new(),
        },
        Method::BasicConsume { queue, consumer_tag, no_local, no_ack, exclusive, nowait, .. } => Method::BasicConsume {
            queue: queue.clone(),
            consumer_tag: consumer_tag.clone(),
            no_local: *no_local,
            no_ack: *no_ack,
            exclusive: *exclusive,
            nowait: *nowait,
            arguments: FieldTable::new(),
        },
        other => other.clone(),
    };
    let args = |m: &Method| match m {
        Method::QueueDeclare { arguments, .. } | Method::BasicConsume { arguments, .. } => {
            Some(to_amq_table(arguments))
        }
        _ => None,
    };
    assert_eq!(strip(got), strip(want));
    match (args(got), args(want)) {
        (Some(g), Some(w)) => assert_same_table(&g, &w),
        (None, None) => {}
        other => panic!("arguments differ: {other:?}"),
    }
}

/// Tables compare through [`same_table`] in amq-protocol's model, so the variant equality of
/// `AMQPClass` cannot be used for the two table-carrying methods.
fn assert_same_amq_method(got: &AMQPClass, want: &AMQPClass) {
    match (got, want) {
        (AMQPClass::Queue(queue::AMQPMethod::Declare(g)), AMQPClass::Queue(queue::AMQPMethod::Declare(w))) => {
            assert_same_table(&g.arguments, &w.arguments);
            let strip = |d: &queue::Declare| queue::Declare { arguments: AmqTable::default(), ..d.clone() };
            assert_eq!(strip(g), strip(w));
        }
        (AMQPClass::Basic(basic::AMQPMethod::Consume(g)), AMQPClass::Basic(basic::AMQPMethod::Consume(w))) => {
            assert_same_table(&g.arguments, &w.arguments);
            let strip = |c: &basic::Consume| basic::Consume { arguments: AmqTable::default(), ..c.clone() };
            assert_eq!(strip(g), strip(w));
        }
        _ => assert_eq!(got, want),
    }
}

fn canonical_method(m: &Method) -> Method {
    let mut m = m.clone();
    if let Method::QueueDeclare { arguments, .. } | Method::BasicConsume { arguments, .. } = &mut m {
        *arguments = canonical(arguments);
    }
    m
}

/// `default` cases, or PROPTEST_CASES when set (for a longer run).
fn cases(default: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(default);
    ProptestConfig { cases, ..ProptestConfig::default() }
}

proptest! {
    #![proptest_config(cases(256))]

    #[test]
    fn field_table_round_trips_prop(t in field_table()) {
        // warren -> amq-protocol -> warren
        let w_bytes = warren_table_bytes(&t);
        let a = amq_parse_table(&w_bytes);
        assert_same_table(&a, &to_amq_table(&t));
        let a_bytes = amq_table_bytes(&a);
        let back = warren_parse_table(&a_bytes);
        assert_same_table(&to_amq_table(&back), &to_amq_table(&t));
        // amq-protocol's bytes are the sorted table's, and warren writes them back unchanged.
        prop_assert_eq!(&warren_table_bytes(&canonical(&t)), &a_bytes);
        prop_assert_eq!(warren_table_bytes(&back), a_bytes);
        table_amq_to_warren(&t);
    }
}

proptest! {
    #![proptest_config(cases(512))]

    #[test]
    fn methods_round_trip_prop(m in method(), channel in any::<u16>()) {
        // warren -> amq-protocol
        let w_bytes = warren_method_bytes(channel, &m);
        let frames = amq_parse_all(&w_bytes);
        let [AMQPFrame::Method(ch, a)] = &frames[..] else { panic!("{frames:?}") };
        prop_assert_eq!(*ch, channel);
        assert_same_amq_method(a, &to_amq_method(&m));
        // amq-protocol -> warren
        let a_bytes = amq_gen(&AMQPFrame::Method(channel, a.clone()));
        let back = warren_parse_all(&a_bytes, FRAME_MAX);
        let [Frame::Method { channel: ch, method }] = &back[..] else { panic!("{back:?}") };
        prop_assert_eq!(*ch, channel);
        assert_same_method(method, &m);
        prop_assert_eq!(&warren_method_bytes(channel, &canonical_method(&m))[..], &a_bytes[..]);
        prop_assert_eq!(&warren_method_bytes(channel, method)[..], &a_bytes[..]);
    }
}

proptest! {
    #![proptest_config(cases(128))]

    #[test]
    fn content_round_trips_prop(
        p in properties(),
        body in vec(any::<u8>(), 0..20_000),
        channel in any::<u16>(),
        frame_max in prop_oneof![Just(4096u32), Just(5000), Just(131072)],
    ) {
        content_warren_to_amq(channel, &p, &body, frame_max);
        content_amq_to_warren(channel, &p, &body, frame_max);
    }

    /// A publish (or deliver) command as a client (or broker) sends it: method, header, bodies
    /// in one buffer, written by warren and read by amq-protocol, then written by amq-protocol
    /// and read and assembled by warren.
    #[test]
    fn publish_and_deliver_commands_prop(
        m in prop_oneof![publish(), deliver()],
        p in properties(),
        body in vec(any::<u8>(), 0..10_000),
        channel in 1..=u16::MAX,
    ) {
        let frame_max = 4096;
        // Sorted headers, so that amq-protocol's re-encoding can be compared byte for byte.
        let p = BasicProperties { headers: p.headers.as_ref().map(canonical), ..p };
        let mut w = warren_method_bytes(channel, &m);
        write_content(&mut w, channel, &p.to_bytes(), &body, frame_max);
        let frames = amq_parse_all(&w);
        let [AMQPFrame::Method(_, a), AMQPFrame::Header(_, _, h), rest @ ..] = &frames[..] else { panic!("{frames:?}") };
        prop_assert_eq!(a, &to_amq_method(&m));
        assert_same_props(&h.properties, &to_amq_props(&p));
        let mut a_bytes = Vec::new();
        for f in &frames {
            a_bytes.extend(amq_gen(f));
        }
        prop_assert_eq!(&a_bytes[..], &w[..], "amq-protocol writes back warren's bytes ({} body frames)", rest.len());
        let mut asm = ContentAssembler::default();
        let mut done = None;
        // The header frame may exceed 4096 with large random headers; it is never split.
        for f in warren_parse_all(&a_bytes, u32::MAX) {
            prop_assert!(done.is_none());
            done = asm.push(f, body.len() as u64).expect("assembles");
        }
        let Some(Assembled::Content { method, properties, raw_properties, body: b }) = done else { panic!("incomplete") };
        prop_assert_eq!(method, m);
        let all = BasicProperties::decode(raw_properties).expect("decodes");
        assert_same_props(&to_amq_props(&all), &to_amq_props(&p));
        // Compared as text: a NaN in a header table is not equal to itself.
        let kept = warren_amqp::PublishProperties::from(&p);
        prop_assert_eq!(format!("{properties:?}"), format!("{kept:?}"), "what the broker keeps of them");
        prop_assert_eq!(&b[..], &body[..]);
    }
}

// ---------------------------------------------------------------------------------------------
// Differential decoding of damaged frames
// ---------------------------------------------------------------------------------------------

fn method_tables(m: &Method) -> Vec<&FieldTable> {
    match m {
        Method::ConnectionStart { server_properties: t, .. }
        | Method::ConnectionStartOk { client_properties: t, .. }
        | Method::ExchangeDeclare { arguments: t, .. }
        | Method::ExchangeBind { arguments: t, .. }
        | Method::ExchangeUnbind { arguments: t, .. }
        | Method::QueueDeclare { arguments: t, .. }
        | Method::QueueBind { arguments: t, .. }
        | Method::QueueUnbind { arguments: t, .. }
        | Method::BasicConsume { arguments: t, .. } => vec![t],
        _ => vec![],
    }
}

/// A table amq-protocol's map cannot represent: a key twice at some level.
fn has_repeated_key(t: &FieldTable) -> bool {
    fn value(v: &FieldValue) -> bool {
        match v {
            FieldValue::Table(t) => has_repeated_key(t),
            FieldValue::Array(items) => items.iter().any(value),
            _ => false,
        }
    }
    let keys: BTreeSet<&ShortStr> = t.iter().map(|(k, _)| k).collect();
    keys.len() != t.0.len() || t.iter().any(|(_, v)| value(v))
}

/// The fixtures' method frames, built once for all cases.
fn fixture_frames() -> &'static [Vec<u8>] {
    static FRAMES: std::sync::OnceLock<Vec<Vec<u8>>> = std::sync::OnceLock::new();
    FRAMES.get_or_init(|| {
        BIT_MASKS.iter().flat_map(|&mask| every_method(mask)).map(|m| warren_method_bytes(3, &m).to_vec()).collect()
    })
}

proptest! {
    #![proptest_config(cases(8192))]

    /// A fixture's method frame with a few payload bytes changed (the frame header and end are
    /// kept, so the frame stays whole). Whenever both decoders accept it, they must read the same
    /// method. Where only one accepts it:
    /// - only warren: warren is deliberately lenient (bytes after the last field, absent reserved
    ///   trailing fields of connection.open / channel.open / basic.get-empty, unused bits set);
    /// - only amq-protocol: must be the 'U' tag (see `tag_capital_u_is_read_by_amq_protocol_only`).
    #[test]
    fn damaged_method_frames_decode_alike_prop(
        pick in any::<prop::sample::Index>(),
        edits in vec((any::<prop::sample::Index>(), any::<u8>(), 0..3u8), 1..4),
    ) {
        let mut v = pick.get(fixture_frames()).clone();
        let payload = 7..v.len() - 1;
        for (at, byte, how) in edits {
            let i = payload.start + at.index(payload.len());
            v[i] = match how {
                0 => byte,
                1 => v[i] ^ (1 << (byte % 8)),
                _ => v[i].wrapping_add(if byte % 2 == 0 { 1 } else { 255 }),
            };
        }
        let w = FrameParser::new(FRAME_MAX).parse(&mut BytesMut::from(&v[..]));
        let a = parse_frame(&v[..]);
        match (w, a) {
            (Ok(Some(Frame::Method { method, .. })), Ok((rest, AMQPFrame::Method(_, class)))) => {
                prop_assert!(rest.is_empty());
                if !method_tables(&method).into_iter().any(has_repeated_key) {
                    // Debug text, so that NaN floats compare equal.
                    prop_assert_eq!(format!("{:?}", to_amq_method(&method)), format!("{class:?}"), "{}", show(&v));
                }
            }
            (Err(e), Ok(_)) => {
                prop_assert!(e.text.contains("'U'"), "only amq-protocol reads {}: warren says {}", show(&v), e);
            }
            (Ok(Some(_)), Err(_)) | (Err(_), Err(_)) => {}
            (w, a) => prop_assert!(false, "{}: warren {:?}, amq-protocol {:?}", show(&v), w, a),
        }
    }
}
