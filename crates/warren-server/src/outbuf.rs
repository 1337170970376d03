//! The bytes a connection has to write: small frames encoded into one buffer, and large message
//! bodies kept as the shared `Bytes` they arrived in, so a write sends them straight from there
//! (a vectored write) instead of copying each body into the write buffer.
//!
//! Invariant: `chunks` then `small` is the byte stream to send, in order.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use std::collections::VecDeque;
use std::io::IoSlice;

/// Bodies at least this long are sent from their own buffer rather than copied; below it a
/// copy costs less than another slice in the vectored write.
pub const ZERO_COPY_BODY_MIN_BYTES: usize = 16 * 1024;

#[derive(Debug, Default)]
pub struct OutBuf {
    chunks: VecDeque<Bytes>,
    small: BytesMut,
    remaining: usize,
}

impl OutBuf {
    /// An empty buffer with room for `bytes` of small frames.
    pub fn with_capacity(bytes: usize) -> Self {
        OutBuf { small: BytesMut::with_capacity(bytes), ..Default::default() }
    }

    /// Bytes queued so far.
    pub fn len(&self) -> usize {
        self.remaining + self.small.len()
    }

    /// Queues everything `other` holds after everything so far, without copying it.
    pub fn append(&mut self, mut other: OutBuf) {
        other.seal();
        if other.chunks.is_empty() {
            return;
        }
        self.seal();
        self.remaining += other.remaining;
        self.chunks.extend(other.chunks);
    }

    /// Where small frames are encoded (appended after everything queued so far).
    pub fn small(&mut self) -> &mut BytesMut {
        &mut self.small
    }

    /// Queues shared bytes after everything so far.
    pub fn push_shared(&mut self, bytes: Bytes) {
        self.seal();
        self.remaining += bytes.len();
        self.chunks.push_back(bytes);
    }

    /// Moves the small frames encoded so far into the chunk queue.
    fn seal(&mut self) {
        if !self.small.is_empty() {
            let b = self.small.split().freeze();
            self.remaining += b.len();
            self.chunks.push_back(b);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty() && self.small.is_empty()
    }

    /// Makes everything encoded writable through [`Buf`].
    pub fn prepare(&mut self) {
        self.seal();
    }
}

impl Buf for OutBuf {
    fn remaining(&self) -> usize {
        self.remaining
    }

    fn chunk(&self) -> &[u8] {
        self.chunks.front().map_or(&[], |b| b.as_ref())
    }

    fn advance(&mut self, mut cnt: usize) {
        debug_assert!(cnt <= self.remaining, "advance past the end of the output");
        self.remaining -= cnt.min(self.remaining);
        while cnt > 0 {
            let Some(front) = self.chunks.front_mut() else { return };
            if cnt < front.len() {
                front.advance(cnt);
                return;
            }
            cnt -= front.len();
            self.chunks.pop_front();
        }
    }

    fn chunks_vectored<'a>(&'a self, dst: &mut [IoSlice<'a>]) -> usize {
        let mut n = 0;
        for (slot, chunk) in dst.iter_mut().zip(self.chunks.iter()) {
            *slot = IoSlice::new(chunk);
            n += 1;
        }
        n
    }
}

/// Appends a content-bearing method's content: header frame, then body frames, the large
/// bodies as shared slices.
pub fn put_content(out: &mut OutBuf, channel: u16, properties: &[u8], body: &Bytes, frame_max: u32) {
    if body.len() < ZERO_COPY_BODY_MIN_BYTES {
        warren_amqp::frame::write_content(out.small(), channel, properties, body, frame_max);
        return;
    }
    warren_amqp::frame::write_content_header(out.small(), channel, properties, body.len() as u64);
    let max = warren_amqp::frame::body_frame_payload_max(frame_max);
    let mut at = 0;
    while at < body.len() {
        let end = (at + max).min(body.len());
        warren_amqp::frame::write_body_frame_start(out.small(), channel, end - at);
        out.push_shared(body.slice(at..end));
        out.small().put_u8(warren_amqp::frame::FRAME_END);
        at = end;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use warren_amqp::{Frame, FrameParser};

    fn drain(out: &mut OutBuf) -> Vec<u8> {
        out.prepare();
        let mut all = Vec::new();
        while out.has_remaining() {
            let c = out.chunk().to_vec();
            // Advance in odd steps to exercise partial writes.
            let step = c.len().min(7);
            all.extend_from_slice(&c[..step]);
            out.advance(step);
        }
        all
    }

    #[test]
    fn large_bodies_are_framed_as_if_copied() {
        for size in [0usize, 10, ZERO_COPY_BODY_MIN_BYTES, 300_000] {
            let body = Bytes::from((0..size).map(|i| i as u8).collect::<Vec<_>>());
            let mut out = OutBuf::default();
            out.small().extend_from_slice(b"before");
            put_content(&mut out, 3, &[0, 0], &body, 131_072);
            out.small().extend_from_slice(b"after");
            let mut expected = BytesMut::from(&b"before"[..]);
            warren_amqp::frame::write_content(&mut expected, 3, &[0, 0], &body, 131_072);
            expected.extend_from_slice(b"after");
            assert_eq!(drain(&mut out), expected.to_vec(), "body of {size} bytes");
        }
    }

    #[test]
    fn appended_buffers_follow_in_order() {
        let big = Bytes::from(vec![7u8; ZERO_COPY_BODY_MIN_BYTES]);
        let mut first = OutBuf::default();
        first.small().extend_from_slice(b"one");
        let mut second = OutBuf::with_capacity(64);
        second.small().extend_from_slice(b"two");
        put_content(&mut second, 1, &[0, 0], &big, 131_072);
        second.small().extend_from_slice(b"three");
        let second_len = second.len();
        first.append(second);
        first.append(OutBuf::default());
        first.small().extend_from_slice(b"four");
        assert_eq!(first.len(), 3 + second_len + 4);
        let mut expected = BytesMut::from(&b"onetwo"[..]);
        warren_amqp::frame::write_content(&mut expected, 1, &[0, 0], &big, 131_072);
        expected.extend_from_slice(b"threefour");
        assert_eq!(drain(&mut first), expected.to_vec());
    }

    #[test]
    fn frames_parse_back() {
        let body = Bytes::from(vec![9u8; 200_000]);
        let mut out = OutBuf::default();
        put_content(&mut out, 1, &[0, 0], &body, 131_072);
        let mut buf = BytesMut::from(&drain(&mut out)[..]);
        let p = FrameParser::new(131_072);
        let mut got = 0;
        while let Some(f) = p.parse(&mut buf).expect("valid") {
            if let Frame::Body { payload, .. } = f {
                got += payload.len();
            }
        }
        assert_eq!(got, 200_000);
    }
}
