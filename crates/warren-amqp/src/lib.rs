//! AMQP 0-9-1 wire format, with RabbitMQ's extensions, as a pure codec.
//!
//! # Layout
//! - [`frame`]: splitting a byte stream into frames and writing frames back.
//! - [`method`]: every method of the protocol as one enum, decoded from and encoded to a method
//!   frame's payload.
//! - [`table`]: field tables and field values (RabbitMQ's type tags).
//! - [`properties`]: the basic content header properties.
//! - [`content`]: the command assembler (method, header, bodies) for content-bearing methods.
//! - [`reply`]: reply codes, soft (channel) or hard (connection) as the spec classifies them.
//! - [`codec`]: the bounded byte reader and the writer helpers shared by the others.
//!
//! # Invariants
//! No I/O and no broker types live here. No input makes the decoder panic: incomplete input is
//! "need more bytes" (`Ok(None)`), malformed input is a [`ProtocolError`] carrying the reply code
//! the spec asks for.

pub mod codec;
pub mod content;
pub mod frame;
pub mod method;
pub mod properties;
pub mod reply;
pub mod shortstr;
pub mod table;

pub use content::{assemble_ahead, Assembled, ContentAssembler, Input};
pub use frame::{Frame, FrameParser};
pub use method::Method;
pub use properties::{BasicProperties, PublishProperties};
pub use reply::{ProtocolError, ReplyCode};
pub use shortstr::ShortStr;
pub use table::{FieldTable, FieldValue};

/// The protocol header a client sends first: "AMQP" 0 0 9 1.
pub const PROTOCOL_HEADER: &[u8; 8] = b"AMQP\x00\x00\x09\x01";
