//! A published message, shared by every queue it is routed to.

use bytes::Bytes;
use std::sync::Arc;
use warren_amqp::properties::DELIVERY_MODE_PERSISTENT;
use warren_amqp::{BasicProperties, FieldTable, FieldValue, PublishProperties, ShortStr};

/// The properties the broker itself reads (routing, priority, TTL, persistence). The others stay
/// encoded in `Message::raw_properties` until something asks for them
/// ([`Message::decode_properties`]): a message held or moved costs less that way.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Props {
    pub delivery_mode: Option<u8>,
    pub priority: Option<u8>,
    pub expiration: Option<ShortStr>,
    pub headers: Option<FieldTable>,
}

impl Props {
    pub fn is_persistent(&self) -> bool {
        self.delivery_mode == Some(DELIVERY_MODE_PERSISTENT)
    }
}

#[derive(Debug)]
pub struct Message {
    pub exchange: ShortStr,
    pub routing_key: ShortStr,
    pub properties: Props,
    /// The encoded property list, as received or as re-encoded after the broker changed a
    /// property; deliveries send these bytes unchanged.
    pub raw_properties: Bytes,
    pub body: Bytes,
}

impl Message {
    pub fn new(
        exchange: ShortStr,
        routing_key: ShortStr,
        properties: BasicProperties,
        raw_properties: Bytes,
        body: Bytes,
    ) -> Arc<Self> {
        let properties = Props {
            delivery_mode: properties.delivery_mode,
            priority: properties.priority,
            expiration: properties.expiration,
            headers: properties.headers,
        };
        Arc::new(Message { exchange, routing_key, properties, raw_properties, body })
    }

    /// As [`Message::new`], from a publish's decoded properties.
    pub fn published(
        exchange: ShortStr,
        routing_key: ShortStr,
        properties: PublishProperties,
        raw_properties: Bytes,
        body: Bytes,
    ) -> Arc<Self> {
        let PublishProperties { delivery_mode, priority, expiration, headers, .. } = properties;
        let properties = Props { delivery_mode, priority, expiration, headers };
        Arc::new(Message { exchange, routing_key, properties, raw_properties, body })
    }

    /// Every property, decoded from the raw property list.
    pub fn decode_properties(&self) -> BasicProperties {
        // The raw list was decoded once already (when it arrived, or when it was encoded here),
        // so this does not fail; should it, what the broker knows is kept.
        BasicProperties::decode(self.raw_properties.clone()).unwrap_or_else(|_| BasicProperties {
            delivery_mode: self.properties.delivery_mode,
            priority: self.properties.priority,
            expiration: self.properties.expiration.clone(),
            headers: self.properties.headers.clone(),
            ..Default::default()
        })
    }

    /// The message with header `x-delivery-count` set to `count`: how a quorum queue hands out
    /// a message that came back (RabbitMQ's delivery count).
    pub fn with_delivery_count(&self, count: u32) -> Arc<Self> {
        let mut props = self.decode_properties();
        props.headers.get_or_insert_with(FieldTable::new).insert("x-delivery-count", FieldValue::I64(i64::from(count)));
        let raw = props.to_bytes();
        Message::new(self.exchange.clone(), self.routing_key.clone(), props, raw, self.body.clone())
    }

    /// Bytes this message costs to deliver, for flow accounting.
    pub fn wire_size(&self) -> usize {
        self.body.len() + self.raw_properties.len() + self.exchange.len() + self.routing_key.len() + 64
    }
}

pub type MessageRef = Arc<Message>;

/// Version of the stored payload layout below.
const STORE_FORMAT: u8 = 1;
/// The same layout with, after the expiry, how many times the message was returned (a u32: a
/// quorum queue's delivery count, kept for a message requeued to the back of its queue).
const STORE_FORMAT_RETURNED: u8 = 2;

/// The payload a message is stored under in a queue's log: a format byte, the absolute expiry
/// (ms since the Unix epoch, 0 for none), exchange and routing key as short strings, the raw
/// property list as a long string, then the body to the end.
pub fn encode_for_store(msg: &Message, expires_at_ms: Option<u64>, out: &mut Vec<u8>) {
    encode_returned_for_store(msg, expires_at_ms, 0, out);
}

/// As [`encode_for_store`], with the times the message was returned (the second layout, used
/// only when `returns` is not 0).
pub fn encode_returned_for_store(msg: &Message, expires_at_ms: Option<u64>, returns: u32, out: &mut Vec<u8>) {
    out.clear();
    append_returned_for_store(msg, expires_at_ms, returns, out);
}

/// The length of [`encode_returned_for_store`]'s payload for `msg`, at most (exactly, with
/// `returns` not 0).
pub fn stored_len(msg: &Message) -> usize {
    1 + 8 + 4 + 1 + msg.exchange.len() + 1 + msg.routing_key.len() + 4 + msg.raw_properties.len() + msg.body.len()
}

/// As [`encode_returned_for_store`], appended to what `out` holds (in one reservation).
pub fn append_returned_for_store(msg: &Message, expires_at_ms: Option<u64>, returns: u32, out: &mut Vec<u8>) {
    out.reserve(stored_len(msg));
    out.push(if returns == 0 { STORE_FORMAT } else { STORE_FORMAT_RETURNED });
    out.extend_from_slice(&expires_at_ms.unwrap_or(0).to_be_bytes());
    if returns != 0 {
        out.extend_from_slice(&returns.to_be_bytes());
    }
    out.push(msg.exchange.len() as u8);
    out.extend_from_slice(msg.exchange.as_bytes());
    out.push(msg.routing_key.len() as u8);
    out.extend_from_slice(msg.routing_key.as_bytes());
    out.extend_from_slice(&(msg.raw_properties.len() as u32).to_be_bytes());
    out.extend_from_slice(&msg.raw_properties);
    out.extend_from_slice(&msg.body);
}

/// Decodes a stored payload into the message and its expiry; `None` if it is not one (a store
/// checksum makes that unlikely: it means another version wrote it).
pub fn decode_from_store(payload: Bytes) -> Option<(MessageRef, Option<u64>)> {
    decode_returned_from_store(payload).map(|(msg, expires_at, _)| (msg, expires_at))
}

/// As [`decode_from_store`], with the times the message was returned (0 for the first layout).
pub fn decode_returned_from_store(payload: Bytes) -> Option<(MessageRef, Option<u64>, u32)> {
    let mut r = warren_amqp::codec::Reader::new(payload.clone());
    let format = r.u8().ok()?;
    if format != STORE_FORMAT && format != STORE_FORMAT_RETURNED {
        return None;
    }
    let expires_at = Some(r.u64().ok()?).filter(|t| *t != 0);
    let returns = if format == STORE_FORMAT_RETURNED { r.u32().ok()? } else { 0 };
    let exchange = r.shortstr().ok()?;
    let routing_key = r.shortstr().ok()?;
    let raw_properties = r.longstr().ok()?;
    let body = payload.slice(payload.len() - r.remaining()..);
    let properties = BasicProperties::decode(raw_properties.clone()).ok()?;
    Some((Message::new(exchange, routing_key, properties, raw_properties, body), expires_at, returns))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_encoding_round_trips() {
        let props = BasicProperties { delivery_mode: Some(2), message_id: Some("m".into()), ..Default::default() };
        let msg = Message::new("ex".into(), "rk".into(), props.clone(), props.to_bytes(), Bytes::from_static(b"body"));
        let mut out = Vec::new();
        encode_for_store(&msg, Some(1234), &mut out);
        let (back, expires) = decode_from_store(Bytes::from(out.clone())).expect("decodes");
        assert_eq!(expires, Some(1234));
        assert_eq!(back.exchange, "ex");
        assert_eq!(back.routing_key, "rk");
        assert_eq!(back.decode_properties(), props);
        assert!(back.properties.is_persistent());
        assert_eq!(&back.body[..], b"body");
        assert!(decode_from_store(Bytes::from_static(b"\x05ab")).is_none());
        assert_eq!(decode_returned_from_store(Bytes::from(out)).map(|m| m.2), Some(0));
        let mut with_returns = Vec::new();
        encode_returned_for_store(&msg, None, 3, &mut with_returns);
        let (back, expires, returns) = decode_returned_from_store(Bytes::from(with_returns)).expect("decodes");
        assert_eq!((expires, returns, &back.body[..]), (None, 3, &b"body"[..]));
        assert_eq!(back.decode_properties(), props);
    }
}
