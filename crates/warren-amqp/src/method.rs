//! Every method of AMQP 0-9-1 with RabbitMQ's extensions (exchange.bind/unbind, basic.nack,
//! confirm, connection.blocked/unblocked, connection.update-secret), as one enum.
//!
//! Field names are the spec's. Reserved fields ("ticket", "reserved-1") are read and dropped on
//! decode and written as zero / empty on encode.

use crate::codec::{put_longstr, put_shortstr, BitWriter, Reader};
use crate::reply::ProtocolError;
use crate::shortstr::ShortStr;
use crate::table::FieldTable;
use bytes::{BufMut, Bytes, BytesMut};

pub const CLASS_CONNECTION: u16 = 10;
pub const CLASS_CHANNEL: u16 = 20;
pub const CLASS_EXCHANGE: u16 = 40;
pub const CLASS_QUEUE: u16 = 50;
pub const CLASS_BASIC: u16 = 60;
pub const CLASS_CONFIRM: u16 = 85;
pub const CLASS_TX: u16 = 90;

#[derive(Debug, Clone, PartialEq)]
pub enum Method {
    ConnectionStart {
        version_major: u8,
        version_minor: u8,
        server_properties: FieldTable,
        mechanisms: Bytes,
        locales: Bytes,
    },
    ConnectionStartOk {
        client_properties: FieldTable,
        mechanism: ShortStr,
        response: Bytes,
        locale: ShortStr,
    },
    ConnectionSecure {
        challenge: Bytes,
    },
    ConnectionSecureOk {
        response: Bytes,
    },
    ConnectionTune {
        channel_max: u16,
        frame_max: u32,
        heartbeat: u16,
    },
    ConnectionTuneOk {
        channel_max: u16,
        frame_max: u32,
        heartbeat: u16,
    },
    ConnectionOpen {
        virtual_host: ShortStr,
    },
    ConnectionOpenOk,
    ConnectionClose {
        reply_code: u16,
        reply_text: ShortStr,
        class_id: u16,
        method_id: u16,
    },
    ConnectionCloseOk,
    ConnectionBlocked {
        reason: ShortStr,
    },
    ConnectionUnblocked,
    ConnectionUpdateSecret {
        new_secret: Bytes,
        reason: ShortStr,
    },
    ConnectionUpdateSecretOk,

    ChannelOpen,
    ChannelOpenOk,
    ChannelFlow {
        active: bool,
    },
    ChannelFlowOk {
        active: bool,
    },
    ChannelClose {
        reply_code: u16,
        reply_text: ShortStr,
        class_id: u16,
        method_id: u16,
    },
    ChannelCloseOk,

    ExchangeDeclare {
        exchange: ShortStr,
        kind: ShortStr,
        passive: bool,
        durable: bool,
        auto_delete: bool,
        internal: bool,
        nowait: bool,
        arguments: FieldTable,
    },
    ExchangeDeclareOk,
    ExchangeDelete {
        exchange: ShortStr,
        if_unused: bool,
        nowait: bool,
    },
    ExchangeDeleteOk,
    ExchangeBind {
        destination: ShortStr,
        source: ShortStr,
        routing_key: ShortStr,
        nowait: bool,
        arguments: FieldTable,
    },
    ExchangeBindOk,
    ExchangeUnbind {
        destination: ShortStr,
        source: ShortStr,
        routing_key: ShortStr,
        nowait: bool,
        arguments: FieldTable,
    },
    ExchangeUnbindOk,

    QueueDeclare {
        queue: ShortStr,
        passive: bool,
        durable: bool,
        exclusive: bool,
        auto_delete: bool,
        nowait: bool,
        arguments: FieldTable,
    },
    QueueDeclareOk {
        queue: ShortStr,
        message_count: u32,
        consumer_count: u32,
    },
    QueueBind {
        queue: ShortStr,
        exchange: ShortStr,
        routing_key: ShortStr,
        nowait: bool,
        arguments: FieldTable,
    },
    QueueBindOk,
    QueuePurge {
        queue: ShortStr,
        nowait: bool,
    },
    QueuePurgeOk {
        message_count: u32,
    },
    QueueDelete {
        queue: ShortStr,
        if_unused: bool,
        if_empty: bool,
        nowait: bool,
    },
    QueueDeleteOk {
        message_count: u32,
    },
    QueueUnbind {
        queue: ShortStr,
        exchange: ShortStr,
        routing_key: ShortStr,
        arguments: FieldTable,
    },
    QueueUnbindOk,

    BasicQos {
        prefetch_size: u32,
        prefetch_count: u16,
        global: bool,
    },
    BasicQosOk,
    BasicConsume {
        queue: ShortStr,
        consumer_tag: ShortStr,
        no_local: bool,
        no_ack: bool,
        exclusive: bool,
        nowait: bool,
        arguments: FieldTable,
    },
    BasicConsumeOk {
        consumer_tag: ShortStr,
    },
    BasicCancel {
        consumer_tag: ShortStr,
        nowait: bool,
    },
    BasicCancelOk {
        consumer_tag: ShortStr,
    },
    BasicPublish {
        exchange: ShortStr,
        routing_key: ShortStr,
        mandatory: bool,
        immediate: bool,
    },
    BasicReturn {
        reply_code: u16,
        reply_text: ShortStr,
        exchange: ShortStr,
        routing_key: ShortStr,
    },
    BasicDeliver {
        consumer_tag: ShortStr,
        delivery_tag: u64,
        redelivered: bool,
        exchange: ShortStr,
        routing_key: ShortStr,
    },
    BasicGet {
        queue: ShortStr,
        no_ack: bool,
    },
    BasicGetOk {
        delivery_tag: u64,
        redelivered: bool,
        exchange: ShortStr,
        routing_key: ShortStr,
        message_count: u32,
    },
    BasicGetEmpty,
    BasicAck {
        delivery_tag: u64,
        multiple: bool,
    },
    BasicReject {
        delivery_tag: u64,
        requeue: bool,
    },
    BasicRecoverAsync {
        requeue: bool,
    },
    BasicRecover {
        requeue: bool,
    },
    BasicRecoverOk,
    BasicNack {
        delivery_tag: u64,
        multiple: bool,
        requeue: bool,
    },

    ConfirmSelect {
        nowait: bool,
    },
    ConfirmSelectOk,

    TxSelect,
    TxSelectOk,
    TxCommit,
    TxCommitOk,
    TxRollback,
    TxRollbackOk,
}

impl Method {
    /// The (class-id, method-id) pair that names this method on the wire.
    pub fn ids(&self) -> (u16, u16) {
        use Method::*;
        match self {
            ConnectionStart { .. } => (10, 10),
            ConnectionStartOk { .. } => (10, 11),
            ConnectionSecure { .. } => (10, 20),
            ConnectionSecureOk { .. } => (10, 21),
            ConnectionTune { .. } => (10, 30),
            ConnectionTuneOk { .. } => (10, 31),
            ConnectionOpen { .. } => (10, 40),
            ConnectionOpenOk => (10, 41),
            ConnectionClose { .. } => (10, 50),
            ConnectionCloseOk => (10, 51),
            ConnectionBlocked { .. } => (10, 60),
            ConnectionUnblocked => (10, 61),
            ConnectionUpdateSecret { .. } => (10, 70),
            ConnectionUpdateSecretOk => (10, 71),
            ChannelOpen => (20, 10),
            ChannelOpenOk => (20, 11),
            ChannelFlow { .. } => (20, 20),
            ChannelFlowOk { .. } => (20, 21),
            ChannelClose { .. } => (20, 40),
            ChannelCloseOk => (20, 41),
            ExchangeDeclare { .. } => (40, 10),
            ExchangeDeclareOk => (40, 11),
            ExchangeDelete { .. } => (40, 20),
            ExchangeDeleteOk => (40, 21),
            ExchangeBind { .. } => (40, 30),
            ExchangeBindOk => (40, 31),
            ExchangeUnbind { .. } => (40, 40),
            ExchangeUnbindOk => (40, 51),
            QueueDeclare { .. } => (50, 10),
            QueueDeclareOk { .. } => (50, 11),
            QueueBind { .. } => (50, 20),
            QueueBindOk => (50, 21),
            QueuePurge { .. } => (50, 30),
            QueuePurgeOk { .. } => (50, 31),
            QueueDelete { .. } => (50, 40),
            QueueDeleteOk { .. } => (50, 41),
            QueueUnbind { .. } => (50, 50),
            QueueUnbindOk => (50, 51),
            BasicQos { .. } => (60, 10),
            BasicQosOk => (60, 11),
            BasicConsume { .. } => (60, 20),
            BasicConsumeOk { .. } => (60, 21),
            BasicCancel { .. } => (60, 30),
            BasicCancelOk { .. } => (60, 31),
            BasicPublish { .. } => (60, 40),
            BasicReturn { .. } => (60, 50),
            BasicDeliver { .. } => (60, 60),
            BasicGet { .. } => (60, 70),
            BasicGetOk { .. } => (60, 71),
            BasicGetEmpty => (60, 72),
            BasicAck { .. } => (60, 80),
            BasicReject { .. } => (60, 90),
            BasicRecoverAsync { .. } => (60, 100),
            BasicRecover { .. } => (60, 110),
            BasicRecoverOk => (60, 111),
            BasicNack { .. } => (60, 120),
            ConfirmSelect { .. } => (85, 10),
            ConfirmSelectOk => (85, 11),
            TxSelect => (90, 10),
            TxSelectOk => (90, 11),
            TxCommit => (90, 20),
            TxCommitOk => (90, 21),
            TxRollback => (90, 30),
            TxRollbackOk => (90, 31),
        }
    }

    /// True for the methods followed by a content header and bodies.
    pub fn has_content(&self) -> bool {
        matches!(
            self,
            Method::BasicPublish { .. }
                | Method::BasicReturn { .. }
                | Method::BasicDeliver { .. }
                | Method::BasicGetOk { .. }
        )
    }

    /// Decodes a method frame's payload. Extra bytes after the last field are tolerated, as
    /// RabbitMQ does.
    pub fn decode(payload: Bytes) -> Result<Method, ProtocolError> {
        let mut r = Reader::new(payload);
        let class_id = r.u16()?;
        let method_id = r.u16()?;
        Self::decode_args(class_id, method_id, &mut r).map_err(|e| e.on((class_id, method_id)))
    }

    fn decode_args(class_id: u16, method_id: u16, r: &mut Reader) -> Result<Method, ProtocolError> {
        use Method::*;
        Ok(match (class_id, method_id) {
            (10, 10) => ConnectionStart {
                version_major: r.u8()?,
                version_minor: r.u8()?,
                server_properties: FieldTable::decode(r)?,
                mechanisms: r.longstr()?,
                locales: r.longstr()?,
            },
            (10, 11) => ConnectionStartOk {
                client_properties: FieldTable::decode(r)?,
                mechanism: r.shortstr()?,
                response: r.longstr()?,
                locale: r.shortstr()?,
            },
            (10, 20) => ConnectionSecure { challenge: r.longstr()? },
            (10, 21) => ConnectionSecureOk { response: r.longstr()? },
            (10, 30) => ConnectionTune { channel_max: r.u16()?, frame_max: r.u32()?, heartbeat: r.u16()? },
            (10, 31) => ConnectionTuneOk { channel_max: r.u16()?, frame_max: r.u32()?, heartbeat: r.u16()? },
            (10, 40) => {
                let virtual_host = r.shortstr()?;
                // capabilities (reserved) and insist (reserved) may be absent in old clients.
                if r.remaining() > 0 {
                    r.shortstr()?;
                }
                ConnectionOpen { virtual_host }
            }
            (10, 41) => {
                if r.remaining() > 0 {
                    r.shortstr()?;
                }
                ConnectionOpenOk
            }
            (10, 50) => ConnectionClose {
                reply_code: r.u16()?,
                reply_text: r.shortstr()?,
                class_id: r.u16()?,
                method_id: r.u16()?,
            },
            (10, 51) => ConnectionCloseOk,
            (10, 60) => ConnectionBlocked { reason: r.shortstr()? },
            (10, 61) => ConnectionUnblocked,
            (10, 70) => ConnectionUpdateSecret { new_secret: r.longstr()?, reason: r.shortstr()? },
            (10, 71) => ConnectionUpdateSecretOk,
            (20, 10) => {
                if r.remaining() > 0 {
                    r.shortstr()?;
                }
                ChannelOpen
            }
            (20, 11) => {
                if r.remaining() > 0 {
                    r.longstr()?;
                }
                ChannelOpenOk
            }
            (20, 20) => ChannelFlow { active: r.bit()? },
            (20, 21) => ChannelFlowOk { active: r.bit()? },
            (20, 40) => ChannelClose {
                reply_code: r.u16()?,
                reply_text: r.shortstr()?,
                class_id: r.u16()?,
                method_id: r.u16()?,
            },
            (20, 41) => ChannelCloseOk,
            (40, 10) => {
                r.u16()?;
                ExchangeDeclare {
                    exchange: r.shortstr()?,
                    kind: r.shortstr()?,
                    passive: r.bit()?,
                    durable: r.bit()?,
                    auto_delete: r.bit()?,
                    internal: r.bit()?,
                    nowait: r.bit()?,
                    arguments: FieldTable::decode(r)?,
                }
            }
            (40, 11) => ExchangeDeclareOk,
            (40, 20) => {
                r.u16()?;
                ExchangeDelete { exchange: r.shortstr()?, if_unused: r.bit()?, nowait: r.bit()? }
            }
            (40, 21) => ExchangeDeleteOk,
            (40, 30) => {
                r.u16()?;
                ExchangeBind {
                    destination: r.shortstr()?,
                    source: r.shortstr()?,
                    routing_key: r.shortstr()?,
                    nowait: r.bit()?,
                    arguments: FieldTable::decode(r)?,
                }
            }
            (40, 31) => ExchangeBindOk,
            (40, 40) => {
                r.u16()?;
                ExchangeUnbind {
                    destination: r.shortstr()?,
                    source: r.shortstr()?,
                    routing_key: r.shortstr()?,
                    nowait: r.bit()?,
                    arguments: FieldTable::decode(r)?,
                }
            }
            (40, 51) => ExchangeUnbindOk,
            (50, 10) => {
                r.u16()?;
                QueueDeclare {
                    queue: r.shortstr()?,
                    passive: r.bit()?,
                    durable: r.bit()?,
                    exclusive: r.bit()?,
                    auto_delete: r.bit()?,
                    nowait: r.bit()?,
                    arguments: FieldTable::decode(r)?,
                }
            }
            (50, 11) => QueueDeclareOk { queue: r.shortstr()?, message_count: r.u32()?, consumer_count: r.u32()? },
            (50, 20) => {
                r.u16()?;
                QueueBind {
                    queue: r.shortstr()?,
                    exchange: r.shortstr()?,
                    routing_key: r.shortstr()?,
                    nowait: r.bit()?,
                    arguments: FieldTable::decode(r)?,
                }
            }
            (50, 21) => QueueBindOk,
            (50, 30) => {
                r.u16()?;
                QueuePurge { queue: r.shortstr()?, nowait: r.bit()? }
            }
            (50, 31) => QueuePurgeOk { message_count: r.u32()? },
            (50, 40) => {
                r.u16()?;
                QueueDelete { queue: r.shortstr()?, if_unused: r.bit()?, if_empty: r.bit()?, nowait: r.bit()? }
            }
            (50, 41) => QueueDeleteOk { message_count: r.u32()? },
            (50, 50) => {
                r.u16()?;
                QueueUnbind {
                    queue: r.shortstr()?,
                    exchange: r.shortstr()?,
                    routing_key: r.shortstr()?,
                    arguments: FieldTable::decode(r)?,
                }
            }
            (50, 51) => QueueUnbindOk,
            (60, 10) => BasicQos { prefetch_size: r.u32()?, prefetch_count: r.u16()?, global: r.bit()? },
            (60, 11) => BasicQosOk,
            (60, 20) => {
                r.u16()?;
                BasicConsume {
                    queue: r.shortstr()?,
                    consumer_tag: r.shortstr()?,
                    no_local: r.bit()?,
                    no_ack: r.bit()?,
                    exclusive: r.bit()?,
                    nowait: r.bit()?,
                    arguments: FieldTable::decode(r)?,
                }
            }
            (60, 21) => BasicConsumeOk { consumer_tag: r.shortstr()? },
            (60, 30) => BasicCancel { consumer_tag: r.shortstr()?, nowait: r.bit()? },
            (60, 31) => BasicCancelOk { consumer_tag: r.shortstr()? },
            (60, 40) => {
                r.u16()?;
                BasicPublish {
                    exchange: r.shortstr()?,
                    routing_key: r.shortstr()?,
                    mandatory: r.bit()?,
                    immediate: r.bit()?,
                }
            }
            (60, 50) => BasicReturn {
                reply_code: r.u16()?,
                reply_text: r.shortstr()?,
                exchange: r.shortstr()?,
                routing_key: r.shortstr()?,
            },
            (60, 60) => BasicDeliver {
                consumer_tag: r.shortstr()?,
                delivery_tag: r.u64()?,
                redelivered: r.bit()?,
                exchange: r.shortstr()?,
                routing_key: r.shortstr()?,
            },
            (60, 70) => {
                r.u16()?;
                BasicGet { queue: r.shortstr()?, no_ack: r.bit()? }
            }
            (60, 71) => BasicGetOk {
                delivery_tag: r.u64()?,
                redelivered: r.bit()?,
                exchange: r.shortstr()?,
                routing_key: r.shortstr()?,
                message_count: r.u32()?,
            },
            (60, 72) => {
                if r.remaining() > 0 {
                    r.shortstr()?;
                }
                BasicGetEmpty
            }
            (60, 80) => BasicAck { delivery_tag: r.u64()?, multiple: r.bit()? },
            (60, 90) => BasicReject { delivery_tag: r.u64()?, requeue: r.bit()? },
            (60, 100) => BasicRecoverAsync { requeue: r.bit()? },
            (60, 110) => BasicRecover { requeue: r.bit()? },
            (60, 111) => BasicRecoverOk,
            (60, 120) => BasicNack { delivery_tag: r.u64()?, multiple: r.bit()?, requeue: r.bit()? },
            (85, 10) => ConfirmSelect { nowait: r.bit()? },
            (85, 11) => ConfirmSelectOk,
            (90, 10) => TxSelect,
            (90, 11) => TxSelectOk,
            (90, 20) => TxCommit,
            (90, 21) => TxCommitOk,
            (90, 30) => TxRollback,
            (90, 31) => TxRollbackOk,
            (c, m) => {
                // RabbitMQ answers an unknown method with a connection error 540 naming it.
                return Err(ProtocolError::new(
                    crate::ReplyCode::NotImplemented,
                    format_args!("unknown method {c}/{m}"),
                ));
            }
        })
    }

    /// Appends the method payload (class-id, method-id, arguments) to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        use Method::*;
        let (c, m) = self.ids();
        out.put_u16(c);
        out.put_u16(m);
        let mut bits = BitWriter::default();
        match self {
            ConnectionStart { version_major, version_minor, server_properties, mechanisms, locales } => {
                out.put_u8(*version_major);
                out.put_u8(*version_minor);
                server_properties.encode(out);
                put_longstr(out, mechanisms);
                put_longstr(out, locales);
            }
            ConnectionStartOk { client_properties, mechanism, response, locale } => {
                client_properties.encode(out);
                put_shortstr(out, mechanism);
                put_longstr(out, response);
                put_shortstr(out, locale);
            }
            ConnectionSecure { challenge } => put_longstr(out, challenge),
            ConnectionSecureOk { response } => put_longstr(out, response),
            ConnectionTune { channel_max, frame_max, heartbeat }
            | ConnectionTuneOk { channel_max, frame_max, heartbeat } => {
                out.put_u16(*channel_max);
                out.put_u32(*frame_max);
                out.put_u16(*heartbeat);
            }
            ConnectionOpen { virtual_host } => {
                put_shortstr(out, virtual_host);
                put_shortstr(out, "");
                out.put_u8(0);
            }
            ConnectionOpenOk => put_shortstr(out, ""),
            ConnectionClose { reply_code, reply_text, class_id, method_id }
            | ChannelClose { reply_code, reply_text, class_id, method_id } => {
                out.put_u16(*reply_code);
                put_shortstr(out, reply_text);
                out.put_u16(*class_id);
                out.put_u16(*method_id);
            }
            ConnectionBlocked { reason } => put_shortstr(out, reason),
            ConnectionUpdateSecret { new_secret, reason } => {
                put_longstr(out, new_secret);
                put_shortstr(out, reason);
            }
            ChannelOpen => put_shortstr(out, ""),
            ChannelOpenOk => put_longstr(out, b""),
            ChannelFlow { active } | ChannelFlowOk { active } => bits.push(out, *active),
            ExchangeDeclare { exchange, kind, passive, durable, auto_delete, internal, nowait, arguments } => {
                out.put_u16(0);
                put_shortstr(out, exchange);
                put_shortstr(out, kind);
                for b in [passive, durable, auto_delete, internal, nowait] {
                    bits.push(out, *b);
                }
                bits.flush(out);
                arguments.encode(out);
            }
            ExchangeDelete { exchange, if_unused, nowait } => {
                out.put_u16(0);
                put_shortstr(out, exchange);
                bits.push(out, *if_unused);
                bits.push(out, *nowait);
            }
            ExchangeBind { destination, source, routing_key, nowait, arguments }
            | ExchangeUnbind { destination, source, routing_key, nowait, arguments } => {
                out.put_u16(0);
                put_shortstr(out, destination);
                put_shortstr(out, source);
                put_shortstr(out, routing_key);
                bits.push(out, *nowait);
                bits.flush(out);
                arguments.encode(out);
            }
            QueueDeclare { queue, passive, durable, exclusive, auto_delete, nowait, arguments } => {
                out.put_u16(0);
                put_shortstr(out, queue);
                for b in [passive, durable, exclusive, auto_delete, nowait] {
                    bits.push(out, *b);
                }
                bits.flush(out);
                arguments.encode(out);
            }
            QueueDeclareOk { queue, message_count, consumer_count } => {
                put_shortstr(out, queue);
                out.put_u32(*message_count);
                out.put_u32(*consumer_count);
            }
            QueueBind { queue, exchange, routing_key, nowait, arguments } => {
                out.put_u16(0);
                put_shortstr(out, queue);
                put_shortstr(out, exchange);
                put_shortstr(out, routing_key);
                bits.push(out, *nowait);
                bits.flush(out);
                arguments.encode(out);
            }
            QueuePurge { queue, nowait } => {
                out.put_u16(0);
                put_shortstr(out, queue);
                bits.push(out, *nowait);
            }
            QueuePurgeOk { message_count } | QueueDeleteOk { message_count } => out.put_u32(*message_count),
            QueueDelete { queue, if_unused, if_empty, nowait } => {
                out.put_u16(0);
                put_shortstr(out, queue);
                bits.push(out, *if_unused);
                bits.push(out, *if_empty);
                bits.push(out, *nowait);
            }
            QueueUnbind { queue, exchange, routing_key, arguments } => {
                out.put_u16(0);
                put_shortstr(out, queue);
                put_shortstr(out, exchange);
                put_shortstr(out, routing_key);
                arguments.encode(out);
            }
            BasicQos { prefetch_size, prefetch_count, global } => {
                out.put_u32(*prefetch_size);
                out.put_u16(*prefetch_count);
                bits.push(out, *global);
            }
            BasicConsume { queue, consumer_tag, no_local, no_ack, exclusive, nowait, arguments } => {
                out.put_u16(0);
                put_shortstr(out, queue);
                put_shortstr(out, consumer_tag);
                for b in [no_local, no_ack, exclusive, nowait] {
                    bits.push(out, *b);
                }
                bits.flush(out);
                arguments.encode(out);
            }
            BasicConsumeOk { consumer_tag } | BasicCancelOk { consumer_tag } => put_shortstr(out, consumer_tag),
            BasicCancel { consumer_tag, nowait } => {
                put_shortstr(out, consumer_tag);
                bits.push(out, *nowait);
            }
            BasicPublish { exchange, routing_key, mandatory, immediate } => {
                out.put_u16(0);
                put_shortstr(out, exchange);
                put_shortstr(out, routing_key);
                bits.push(out, *mandatory);
                bits.push(out, *immediate);
            }
            BasicReturn { reply_code, reply_text, exchange, routing_key } => {
                out.put_u16(*reply_code);
                put_shortstr(out, reply_text);
                put_shortstr(out, exchange);
                put_shortstr(out, routing_key);
            }
            BasicDeliver { consumer_tag, delivery_tag, redelivered, exchange, routing_key } => {
                put_shortstr(out, consumer_tag);
                out.put_u64(*delivery_tag);
                bits.push(out, *redelivered);
                bits.flush(out);
                put_shortstr(out, exchange);
                put_shortstr(out, routing_key);
            }
            BasicGet { queue, no_ack } => {
                out.put_u16(0);
                put_shortstr(out, queue);
                bits.push(out, *no_ack);
            }
            BasicGetOk { delivery_tag, redelivered, exchange, routing_key, message_count } => {
                out.put_u64(*delivery_tag);
                bits.push(out, *redelivered);
                bits.flush(out);
                put_shortstr(out, exchange);
                put_shortstr(out, routing_key);
                out.put_u32(*message_count);
            }
            BasicGetEmpty => put_shortstr(out, ""),
            BasicAck { delivery_tag, multiple } => {
                out.put_u64(*delivery_tag);
                bits.push(out, *multiple);
            }
            BasicReject { delivery_tag, requeue } => {
                out.put_u64(*delivery_tag);
                bits.push(out, *requeue);
            }
            BasicRecoverAsync { requeue } | BasicRecover { requeue } => bits.push(out, *requeue),
            BasicNack { delivery_tag, multiple, requeue } => {
                out.put_u64(*delivery_tag);
                bits.push(out, *multiple);
                bits.push(out, *requeue);
            }
            ConfirmSelect { nowait } => bits.push(out, *nowait),
            ConnectionCloseOk
            | ConnectionUnblocked
            | ConnectionUpdateSecretOk
            | ChannelCloseOk
            | ExchangeDeclareOk
            | ExchangeDeleteOk
            | ExchangeBindOk
            | ExchangeUnbindOk
            | QueueBindOk
            | QueueUnbindOk
            | BasicQosOk
            | BasicRecoverOk
            | ConfirmSelectOk
            | TxSelect
            | TxSelectOk
            | TxCommit
            | TxCommitOk
            | TxRollback
            | TxRollbackOk => {}
        }
        bits.flush(out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::FieldValue;

    fn s(x: &str) -> ShortStr {
        ShortStr::from(x)
    }

    /// One instance of every method, with non-default values where a field has them.
    pub(crate) fn every_method() -> Vec<Method> {
        use Method::*;
        let mut args = FieldTable::new();
        args.insert("x-match", FieldValue::from("all"));
        vec![
            ConnectionStart {
                version_major: 0,
                version_minor: 9,
                server_properties: args.clone(),
                mechanisms: Bytes::from_static(b"PLAIN AMQPLAIN"),
                locales: Bytes::from_static(b"en_US"),
            },
            ConnectionStartOk {
                client_properties: args.clone(),
                mechanism: s("PLAIN"),
                response: Bytes::from_static(b"\0guest\0guest"),
                locale: s("en_US"),
            },
            ConnectionSecure { challenge: Bytes::from_static(b"c") },
            ConnectionSecureOk { response: Bytes::from_static(b"r") },
            ConnectionTune { channel_max: 2047, frame_max: 131072, heartbeat: 60 },
            ConnectionTuneOk { channel_max: 10, frame_max: 4096, heartbeat: 0 },
            ConnectionOpen { virtual_host: s("/") },
            ConnectionOpenOk,
            ConnectionClose { reply_code: 320, reply_text: s("CONNECTION_FORCED"), class_id: 0, method_id: 0 },
            ConnectionCloseOk,
            ConnectionBlocked { reason: s("low on memory") },
            ConnectionUnblocked,
            ConnectionUpdateSecret { new_secret: Bytes::from_static(b"tok"), reason: s("refresh") },
            ConnectionUpdateSecretOk,
            ChannelOpen,
            ChannelOpenOk,
            ChannelFlow { active: true },
            ChannelFlowOk { active: false },
            ChannelClose { reply_code: 406, reply_text: s("PRECONDITION_FAILED - x"), class_id: 50, method_id: 10 },
            ChannelCloseOk,
            ExchangeDeclare {
                exchange: s("logs"),
                kind: s("fanout"),
                passive: false,
                durable: true,
                auto_delete: false,
                internal: true,
                nowait: false,
                arguments: args.clone(),
            },
            ExchangeDeclareOk,
            ExchangeDelete { exchange: s("logs"), if_unused: true, nowait: false },
            ExchangeDeleteOk,
            ExchangeBind {
                destination: s("d"),
                source: s("s"),
                routing_key: s("k"),
                nowait: true,
                arguments: args.clone(),
            },
            ExchangeBindOk,
            ExchangeUnbind {
                destination: s("d"),
                source: s("s"),
                routing_key: s("k"),
                nowait: false,
                arguments: FieldTable::new(),
            },
            ExchangeUnbindOk,
            QueueDeclare {
                queue: s("hello"),
                passive: false,
                durable: true,
                exclusive: false,
                auto_delete: true,
                nowait: false,
                arguments: args.clone(),
            },
            QueueDeclareOk { queue: s("hello"), message_count: 5, consumer_count: 2 },
            QueueBind {
                queue: s("q"),
                exchange: s("x"),
                routing_key: s("a.*"),
                nowait: false,
                arguments: args.clone(),
            },
            QueueBindOk,
            QueuePurge { queue: s("q"), nowait: true },
            QueuePurgeOk { message_count: 7 },
            QueueDelete { queue: s("q"), if_unused: false, if_empty: true, nowait: false },
            QueueDeleteOk { message_count: 3 },
            QueueUnbind { queue: s("q"), exchange: s("x"), routing_key: s("k"), arguments: FieldTable::new() },
            QueueUnbindOk,
            BasicQos { prefetch_size: 0, prefetch_count: 1, global: true },
            BasicQosOk,
            BasicConsume {
                queue: s("q"),
                consumer_tag: s("ctag"),
                no_local: false,
                no_ack: true,
                exclusive: true,
                nowait: false,
                arguments: args,
            },
            BasicConsumeOk { consumer_tag: s("ctag") },
            BasicCancel { consumer_tag: s("ctag"), nowait: true },
            BasicCancelOk { consumer_tag: s("ctag") },
            BasicPublish { exchange: s(""), routing_key: s("hello"), mandatory: true, immediate: false },
            BasicReturn { reply_code: 312, reply_text: s("NO_ROUTE"), exchange: s("x"), routing_key: s("k") },
            BasicDeliver {
                consumer_tag: s("ctag"),
                delivery_tag: u64::MAX,
                redelivered: true,
                exchange: s("x"),
                routing_key: s("k"),
            },
            BasicGet { queue: s("q"), no_ack: true },
            BasicGetOk { delivery_tag: 9, redelivered: false, exchange: s(""), routing_key: s("q"), message_count: 4 },
            BasicGetEmpty,
            BasicAck { delivery_tag: 3, multiple: true },
            BasicReject { delivery_tag: 4, requeue: false },
            BasicRecoverAsync { requeue: true },
            BasicRecover { requeue: true },
            BasicRecoverOk,
            BasicNack { delivery_tag: 5, multiple: false, requeue: true },
            ConfirmSelect { nowait: false },
            ConfirmSelectOk,
            TxSelect,
            TxSelectOk,
            TxCommit,
            TxCommitOk,
            TxRollback,
            TxRollbackOk,
        ]
    }

    #[test]
    fn every_method_round_trips() {
        for m in every_method() {
            let mut out = BytesMut::new();
            m.encode(&mut out);
            let back = Method::decode(out.freeze()).unwrap_or_else(|e| panic!("{m:?}: {e}"));
            assert_eq!(back, m);
        }
    }

    #[test]
    fn every_truncation_is_an_error() {
        for m in every_method() {
            let mut out = BytesMut::new();
            m.encode(&mut out);
            let full = out.freeze();
            for cut in 0..full.len() {
                // Reserved trailing fields may be absent; anything else must be reported.
                if let Ok(back) = Method::decode(full.slice(..cut)) {
                    assert_eq!(back, m, "cut at {cut} decoded to something else");
                }
            }
        }
    }

    #[test]
    fn unknown_method_is_not_implemented() {
        let err = Method::decode(Bytes::from_static(&[0, 99, 0, 1])).expect_err("unknown");
        assert_eq!(err.code, crate::ReplyCode::NotImplemented);
        assert_eq!((err.class_id, err.method_id), (99, 1));
    }
}
