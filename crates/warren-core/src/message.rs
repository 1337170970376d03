//! A published message, shared by every queue it is routed to.

use bytes::Bytes;
use std::sync::Arc;
use warren_amqp::{BasicProperties, ShortStr};

#[derive(Debug)]
pub struct Message {
    pub exchange: ShortStr,
    pub routing_key: ShortStr,
    pub properties: BasicProperties,
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
        Arc::new(Message { exchange, routing_key, properties, raw_properties, body })
    }

    /// Bytes this message costs to deliver, for flow accounting.
    pub fn wire_size(&self) -> usize {
        self.body.len() + self.raw_properties.len() + self.exchange.len() + self.routing_key.len() + 64
    }
}

pub type MessageRef = Arc<Message>;
