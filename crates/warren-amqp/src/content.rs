//! The command assembler: turns the frames of one channel into whole commands.
//!
//! A content-bearing method (basic.publish) is followed by one content header and as many body
//! frames as it takes to carry `body_size` bytes. Anything else arriving in between is an
//! UNEXPECTED_FRAME connection error, as the spec says (4.2.6).
//!
//! Invariant: at most `max_body` bytes are buffered per channel; a header declaring more is
//! refused before any body arrives.

use crate::frame::Frame;
use crate::method::{Method, CLASS_BASIC};
use crate::properties::BasicProperties;
use crate::reply::{ProtocolError, ReplyCode};
use bytes::{Bytes, BytesMut};

/// A whole command.
// Moved once per command; boxing the large variant would cost an allocation per publish.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Assembled {
    Method(Method),
    Content { method: Method, properties: BasicProperties, raw_properties: Bytes, body: Bytes },
}

#[allow(clippy::large_enum_variant)]
#[derive(Debug, Default)]
enum State {
    #[default]
    Idle,
    AwaitHeader(Method),
    AwaitBody {
        method: Method,
        properties: BasicProperties,
        raw_properties: Bytes,
        remaining: u64,
        parts: BodyParts,
    },
}

/// A body that arrived in one frame is kept as that frame's bytes; a longer one is gathered.
#[derive(Debug)]
enum BodyParts {
    Empty,
    One(Bytes),
    Many(BytesMut),
}

impl BodyParts {
    fn push(&mut self, payload: Bytes, total: u64) {
        *self = match std::mem::replace(self, BodyParts::Empty) {
            BodyParts::Empty => BodyParts::One(payload),
            BodyParts::One(first) => {
                // Grow with what arrives rather than reserving the declared size up front: a
                // header may declare the maximum and send a byte, on every channel at once.
                let mut all = BytesMut::with_capacity((total as usize).min(BODY_RESERVE_MAX_BYTES));
                all.extend_from_slice(&first);
                all.extend_from_slice(&payload);
                BodyParts::Many(all)
            }
            BodyParts::Many(mut all) => {
                all.extend_from_slice(&payload);
                BodyParts::Many(all)
            }
        }
    }

    fn finish(self) -> Bytes {
        match self {
            BodyParts::Empty => Bytes::new(),
            BodyParts::One(b) => b,
            BodyParts::Many(all) => all.freeze(),
        }
    }
}

/// At most this much is reserved ahead for a body that spans several frames.
const BODY_RESERVE_MAX_BYTES: usize = 1024 * 1024;

#[derive(Debug, Default)]
pub struct ContentAssembler {
    state: State,
}

fn unexpected(detail: &str) -> ProtocolError {
    ProtocolError::new(ReplyCode::UnexpectedFrame, detail)
}

impl ContentAssembler {
    /// True while a content-bearing method waits for its header or bodies.
    pub fn in_progress(&self) -> bool {
        !matches!(self.state, State::Idle)
    }

    /// Forgets a half-assembled command (used when the channel closes).
    pub fn reset(&mut self) {
        self.state = State::Idle;
    }

    /// Feeds one frame of this channel. `max_body` bounds the declared body size: over it the
    /// result is a channel error 406, as RabbitMQ reports an oversized message.
    pub fn push(&mut self, frame: Frame, max_body: u64) -> Result<Option<Assembled>, ProtocolError> {
        if let (State::AwaitBody { .. }, Frame::Body { payload, .. }) = (&self.state, &frame) {
            // The common case, handled in place: the pending command is moved once, when whole.
            let payload = payload.clone();
            return self.push_body(payload);
        }
        match (std::mem::take(&mut self.state), frame) {
            (State::Idle, Frame::Method { method, .. }) => {
                if method.has_content() {
                    self.state = State::AwaitHeader(method);
                    Ok(None)
                } else {
                    Ok(Some(Assembled::Method(method)))
                }
            }
            (State::Idle, _) => Err(unexpected("expected method frame, got non method frame instead")),
            (State::AwaitHeader(method), Frame::Header { class_id, body_size, properties: raw, .. }) => {
                let ids = method.ids();
                if class_id != CLASS_BASIC {
                    return Err(unexpected("expected content header for class 60, got one for another class").on(ids));
                }
                if body_size > max_body {
                    return Err(ProtocolError::new(
                        ReplyCode::PreconditionFailed,
                        format_args!("message size {body_size} is larger than configured max size {max_body}"),
                    )
                    .on(ids));
                }
                let properties = BasicProperties::decode(raw.clone()).map_err(|e| e.on(ids))?;
                if body_size == 0 {
                    return Ok(Some(Assembled::Content {
                        method,
                        properties,
                        raw_properties: raw,
                        body: Bytes::new(),
                    }));
                }
                self.state = State::AwaitBody {
                    method,
                    properties,
                    raw_properties: raw,
                    remaining: body_size,
                    parts: BodyParts::Empty,
                };
                Ok(None)
            }
            (State::AwaitHeader(_), _) => {
                Err(unexpected("expected content header for class 60, got non content header frame instead"))
            }
            (State::AwaitBody { .. }, _) => {
                Err(unexpected("expected content body, got non content body frame instead"))
            }
        }
    }
}

impl ContentAssembler {
    fn push_body(&mut self, payload: Bytes) -> Result<Option<Assembled>, ProtocolError> {
        let State::AwaitBody { method, remaining, parts, .. } = &mut self.state else {
            return Err(unexpected("expected content body, got non content body frame instead"));
        };
        let len = payload.len() as u64;
        if len > *remaining {
            let e = ProtocolError::frame("content body is longer than the size its header declared").on(method.ids());
            self.state = State::Idle;
            return Err(e);
        }
        let total = match &*parts {
            BodyParts::Many(all) => all.len() as u64 + *remaining,
            BodyParts::One(b) => b.len() as u64 + *remaining,
            BodyParts::Empty => *remaining,
        };
        parts.push(payload, total);
        *remaining -= len;
        if *remaining > 0 {
            return Ok(None);
        }
        match std::mem::take(&mut self.state) {
            State::AwaitBody { method, properties, raw_properties, parts, .. } => {
                Ok(Some(Assembled::Content { method, properties, raw_properties, body: parts.finish() }))
            }
            _ => Err(unexpected("expected content body, got non content body frame instead")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ShortStr;

    fn publish() -> Frame {
        Frame::Method {
            channel: 1,
            method: Method::BasicPublish {
                exchange: ShortStr::from(""),
                routing_key: ShortStr::from("q"),
                mandatory: false,
                immediate: false,
            },
        }
    }
    fn header(size: u64) -> Frame {
        Frame::Header { channel: 1, class_id: 60, body_size: size, properties: Bytes::from_static(&[0, 0]) }
    }
    fn body(b: &'static [u8]) -> Frame {
        Frame::Body { channel: 1, payload: Bytes::from_static(b) }
    }

    #[test]
    fn assembles_multi_frame_body() {
        let mut a = ContentAssembler::default();
        assert_eq!(a.push(publish(), 100).expect("ok"), None);
        assert_eq!(a.push(header(5), 100).expect("ok"), None);
        assert_eq!(a.push(body(b"he"), 100).expect("ok"), None);
        match a.push(body(b"llo"), 100).expect("ok") {
            Some(Assembled::Content { body, .. }) => assert_eq!(&body[..], b"hello"),
            other => panic!("{other:?}"),
        }
        assert!(!a.in_progress());
    }

    #[test]
    fn empty_body_completes_at_header() {
        let mut a = ContentAssembler::default();
        a.push(publish(), 100).expect("ok");
        assert!(matches!(a.push(header(0), 100).expect("ok"), Some(Assembled::Content { .. })));
    }

    #[test]
    fn out_of_order_frames_are_unexpected() {
        let mut a = ContentAssembler::default();
        assert_eq!(a.push(body(b"x"), 100).expect_err("body first").code, ReplyCode::UnexpectedFrame);
        let mut a = ContentAssembler::default();
        a.push(publish(), 100).expect("ok");
        assert_eq!(a.push(publish(), 100).expect_err("method instead of header").code, ReplyCode::UnexpectedFrame);
    }

    #[test]
    fn body_longer_than_declared_is_a_frame_error() {
        let mut a = ContentAssembler::default();
        a.push(publish(), 100).expect("ok");
        a.push(header(1), 100).expect("ok");
        assert_eq!(a.push(body(b"xy"), 100).expect_err("too long").code, ReplyCode::FrameError);
    }

    #[test]
    fn size_limit_at_and_past() {
        let mut a = ContentAssembler::default();
        a.push(publish(), 3).expect("ok");
        assert_eq!(a.push(header(3), 3).expect("at the limit"), None);
        let mut a = ContentAssembler::default();
        a.push(publish(), 3).expect("ok");
        assert_eq!(a.push(header(4), 3).expect_err("past the limit").code, ReplyCode::PreconditionFailed);
    }
}
