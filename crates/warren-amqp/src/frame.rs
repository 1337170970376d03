//! Frames: splitting the byte stream, and writing frames back.
//!
//! A frame is `type:u8 channel:u16 size:u32 payload[size] 0xCE`. The parser works on a
//! `BytesMut` that the connection reads into; a complete frame is split off the front and its
//! payload frozen, so method arguments and bodies share that buffer instead of being copied.

use crate::method::Method;
use crate::reply::ProtocolError;
use bytes::{Buf, BufMut, Bytes, BytesMut};

pub const FRAME_METHOD: u8 = 1;
pub const FRAME_HEADER: u8 = 2;
pub const FRAME_BODY: u8 = 3;
pub const FRAME_HEARTBEAT: u8 = 8;
pub const FRAME_END: u8 = 0xCE;
/// Type, channel and size before the payload, plus the end octet after it.
pub const FRAME_OVERHEAD: usize = 8;
const FRAME_HEADER_LEN: usize = 7;
/// Frames of room reserved beyond an incomplete one (see `FrameParser::parse`).
const LARGE_FRAME_READ_AHEAD: usize = 2;
/// The smallest frame_max a peer may negotiate (spec 4.2.3).
pub const FRAME_MIN_SIZE: u32 = 4096;

#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    Method {
        channel: u16,
        method: Method,
    },
    /// A content header; `properties` is the raw property list (flags and values), kept as
    /// received so that delivering the message needs no re-encoding.
    Header {
        channel: u16,
        class_id: u16,
        body_size: u64,
        properties: Bytes,
    },
    Body {
        channel: u16,
        payload: Bytes,
    },
    Heartbeat,
}

impl Frame {
    pub fn channel(&self) -> u16 {
        match self {
            Frame::Method { channel, .. } | Frame::Header { channel, .. } | Frame::Body { channel, .. } => *channel,
            Frame::Heartbeat => 0,
        }
    }
}

/// Splits frames off a read buffer, enforcing the negotiated frame_max.
#[derive(Debug, Clone)]
pub struct FrameParser {
    /// Largest whole frame accepted, overhead included (the negotiated frame_max).
    pub frame_max: u32,
}

impl FrameParser {
    pub fn new(frame_max: u32) -> Self {
        FrameParser { frame_max }
    }

    /// Takes one frame off the front of `buf`. `Ok(None)`: not enough bytes yet.
    /// Errors are connection errors (501 FRAME_ERROR, 502 SYNTAX_ERROR, 505 UNEXPECTED_FRAME).
    pub fn parse(&self, buf: &mut BytesMut) -> Result<Option<Frame>, ProtocolError> {
        if buf.len() < FRAME_HEADER_LEN {
            return Ok(None);
        }
        let kind = buf[0];
        let channel = u16::from_be_bytes([buf[1], buf[2]]);
        let size = u32::from_be_bytes([buf[3], buf[4], buf[5], buf[6]]);
        // Check the size before waiting for the bytes, so a hostile size never makes us buffer.
        if size as u64 + FRAME_OVERHEAD as u64 > self.frame_max as u64 {
            return Err(ProtocolError::frame(format_args!(
                "frame of {} bytes is larger than the negotiated frame_max {}",
                size as u64 + FRAME_OVERHEAD as u64,
                self.frame_max
            )));
        }
        let total = FRAME_HEADER_LEN + size as usize + 1;
        if buf.len() < total {
            // Room for this frame and a few more like it: a large frame straddling the end of
            // the buffer has its start copied into the new one, so fewer straddles (a buffer
            // several frames long) mean fewer copies.
            buf.reserve(total - buf.len() + LARGE_FRAME_READ_AHEAD * total);
            return Ok(None);
        }
        if buf[total - 1] != FRAME_END {
            return Err(ProtocolError::frame(format_args!(
                "frame end octet is 0x{:02x}, expected 0xce",
                buf[total - 1]
            )));
        }
        let mut frame = buf.split_to(total);
        frame.advance(FRAME_HEADER_LEN);
        frame.truncate(size as usize);
        let payload = frame.freeze();
        let frame = match kind {
            FRAME_METHOD => Frame::Method { channel, method: Method::decode(payload)? },
            FRAME_HEADER => {
                if payload.len() < 14 {
                    return Err(ProtocolError::frame("content header frame is shorter than its fixed fields"));
                }
                let class_id = u16::from_be_bytes([payload[0], payload[1]]);
                let body_size = u64::from_be_bytes([
                    payload[4],
                    payload[5],
                    payload[6],
                    payload[7],
                    payload[8],
                    payload[9],
                    payload[10],
                    payload[11],
                ]);
                Frame::Header { channel, class_id, body_size, properties: payload.slice(12..) }
            }
            FRAME_BODY => Frame::Body { channel, payload },
            FRAME_HEARTBEAT => {
                if channel != 0 {
                    return Err(ProtocolError::frame("heartbeat frame on a channel other than 0"));
                }
                Frame::Heartbeat
            }
            other => return Err(ProtocolError::frame(format_args!("unknown frame type {other}"))),
        };
        Ok(Some(frame))
    }
}

/// Appends a method frame.
pub fn write_method(out: &mut BytesMut, channel: u16, method: &Method) {
    out.put_u8(FRAME_METHOD);
    out.put_u16(channel);
    let at = out.len();
    out.put_u32(0);
    method.encode(out);
    let size = (out.len() - at - 4) as u32;
    out[at..at + 4].copy_from_slice(&size.to_be_bytes());
    out.put_u8(FRAME_END);
}

/// Appends a basic.deliver method frame, as [`write_method`] would of `Method::BasicDeliver`
/// with these fields, without building the method (a delivery need not copy its message's
/// exchange and routing key).
pub fn write_deliver(
    out: &mut BytesMut,
    channel: u16,
    consumer_tag: &str,
    delivery_tag: u64,
    redelivered: bool,
    exchange: &str,
    routing_key: &str,
) {
    out.put_u8(FRAME_METHOD);
    out.put_u16(channel);
    let at = out.len();
    out.put_u32(0);
    out.put_u16(60);
    out.put_u16(60);
    crate::codec::put_shortstr(out, consumer_tag);
    out.put_u64(delivery_tag);
    out.put_u8(u8::from(redelivered));
    crate::codec::put_shortstr(out, exchange);
    crate::codec::put_shortstr(out, routing_key);
    let size = (out.len() - at - 4) as u32;
    out[at..at + 4].copy_from_slice(&size.to_be_bytes());
    out.put_u8(FRAME_END);
}

/// Appends a content header and the body frames, each body frame at most `frame_max` long.
/// `properties` is an encoded property list (as in [`Frame::Header`]).
pub fn write_content(out: &mut BytesMut, channel: u16, properties: &[u8], body: &[u8], frame_max: u32) {
    write_content_header(out, channel, properties, body.len() as u64);
    for part in body.chunks(body_frame_payload_max(frame_max)) {
        write_body_frame_start(out, channel, part.len());
        out.put_slice(part);
        out.put_u8(FRAME_END);
    }
}

/// Appends a content header frame for a body of `body_size` bytes.
pub fn write_content_header(out: &mut BytesMut, channel: u16, properties: &[u8], body_size: u64) {
    out.put_u8(FRAME_HEADER);
    out.put_u16(channel);
    out.put_u32(12 + properties.len() as u32);
    out.put_u16(crate::method::CLASS_BASIC);
    out.put_u16(0);
    out.put_u64(body_size);
    out.put_slice(properties);
    out.put_u8(FRAME_END);
}

/// The most body bytes one body frame carries under `frame_max`.
pub fn body_frame_payload_max(frame_max: u32) -> usize {
    (frame_max as usize).saturating_sub(FRAME_OVERHEAD).max(1)
}

/// Appends the first 7 bytes of a body frame of `len` payload bytes; the payload and
/// [`FRAME_END`] follow.
pub fn write_body_frame_start(out: &mut BytesMut, channel: u16, len: usize) {
    out.put_u8(FRAME_BODY);
    out.put_u16(channel);
    out.put_u32(len as u32);
}

pub fn write_heartbeat(out: &mut BytesMut) {
    out.put_slice(&[FRAME_HEARTBEAT, 0, 0, 0, 0, 0, 0, FRAME_END]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ShortStr;

    #[test]
    fn write_deliver_writes_what_write_method_writes() {
        for (redelivered, tag, exchange) in [(false, 1, ""), (true, u64::MAX, "amq.topic")] {
            let m = Method::BasicDeliver {
                consumer_tag: ShortStr::from("ctag-1"),
                delivery_tag: tag,
                redelivered,
                exchange: ShortStr::from(exchange),
                routing_key: ShortStr::from("a.b"),
            };
            let (mut want, mut got) = (BytesMut::new(), BytesMut::new());
            write_method(&mut want, 7, &m);
            write_deliver(&mut got, 7, "ctag-1", tag, redelivered, exchange, "a.b");
            assert_eq!(got, want);
        }
    }

    #[test]
    fn method_frame_round_trips_and_waits_for_bytes() {
        let m = Method::QueueDeclare {
            queue: ShortStr::from("q"),
            passive: false,
            durable: true,
            exclusive: false,
            auto_delete: false,
            nowait: false,
            arguments: Default::default(),
        };
        let mut out = BytesMut::new();
        write_method(&mut out, 3, &m);
        let full = out.clone();
        let p = FrameParser::new(131072);
        for cut in 0..full.len() {
            let mut part = BytesMut::from(&full[..cut]);
            assert_eq!(p.parse(&mut part).expect("partial is fine"), None);
        }
        let f = p.parse(&mut out).expect("ok").expect("complete");
        assert_eq!(f, Frame::Method { channel: 3, method: m });
        assert!(out.is_empty());
    }

    #[test]
    fn content_is_split_at_frame_max() {
        let body = vec![7u8; 10_000];
        let mut out = BytesMut::new();
        write_content(&mut out, 1, &[0, 0], &body, 4096);
        let p = FrameParser::new(4096);
        let mut got = Vec::new();
        let mut frames = 0;
        while let Some(f) = p.parse(&mut out).expect("ok") {
            frames += 1;
            match f {
                Frame::Header { body_size, .. } => assert_eq!(body_size, 10_000),
                Frame::Body { payload, .. } => {
                    assert!(payload.len() <= 4096 - FRAME_OVERHEAD);
                    got.extend_from_slice(&payload);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(frames, 4);
        assert_eq!(got, body);
    }

    #[test]
    fn oversized_frame_is_refused_before_buffering() {
        let mut buf = BytesMut::from(&[1u8, 0, 1, 0, 0x10, 0, 0][..]);
        let err = FrameParser::new(131072).parse(&mut buf).expect_err("too big");
        assert_eq!(err.code, crate::ReplyCode::FrameError);
    }

    #[test]
    fn frame_at_frame_max_is_accepted_and_one_past_is_not() {
        let p = FrameParser::new(4096);
        let mut ok = BytesMut::new();
        write_content(&mut ok, 1, &[0, 0], &vec![1u8; 4096 - FRAME_OVERHEAD], 4096);
        assert!(p.parse(&mut ok).expect("header").is_some());
        assert!(p.parse(&mut ok).expect("body at the limit").is_some());
        let mut big = BytesMut::new();
        write_content(&mut big, 1, &[0, 0], &vec![1u8; 4096 - FRAME_OVERHEAD + 1], 8192);
        assert!(p.parse(&mut big).expect("header").is_some());
        assert!(p.parse(&mut big).is_err());
    }

    #[test]
    fn bad_frame_end_is_a_frame_error() {
        let mut buf = BytesMut::new();
        write_heartbeat(&mut buf);
        let last = buf.len() - 1;
        buf[last] = 0;
        let err = FrameParser::new(131072).parse(&mut buf).expect_err("bad end");
        assert_eq!(err.code, crate::ReplyCode::FrameError);
    }

    #[test]
    fn unknown_frame_type_is_a_frame_error() {
        let mut buf = BytesMut::from(&[9u8, 0, 0, 0, 0, 0, 0, 0xCE][..]);
        assert_eq!(FrameParser::new(131072).parse(&mut buf).expect_err("unknown").code, crate::ReplyCode::FrameError);
    }
}
