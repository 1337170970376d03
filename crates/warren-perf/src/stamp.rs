//! The stamp at the front of every message body: what a consumer needs to measure latency and to
//! account for loss and duplicates, in [`STAMP_LEN`] bytes so that the smallest body PerfTest
//! users ask for (16 B) carries it.
//!
//! Layout, big-endian: `sent_ns:u64` (nanoseconds since the Unix epoch when the producer wrote
//! the batch holding the message), `producer:u32` (the producer's index in the run),
//! `seq:u32` (the message's index among that producer's messages, from 0). The rest of the
//! body is zeros.

use std::time::{SystemTime, UNIX_EPOCH};

/// Bytes of the stamp, and so the smallest body size.
pub const STAMP_LEN: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub sent_ns: u64,
    pub producer: u32,
    pub seq: u32,
}

impl Stamp {
    /// Writes the stamp over the first [`STAMP_LEN`] bytes of `body`.
    pub fn write(&self, body: &mut [u8]) {
        debug_assert!(body.len() >= STAMP_LEN, "bodies are at least a stamp long");
        body[0..8].copy_from_slice(&self.sent_ns.to_be_bytes());
        body[8..12].copy_from_slice(&self.producer.to_be_bytes());
        body[12..16].copy_from_slice(&self.seq.to_be_bytes());
    }

    /// Reads a stamp from the front of `bytes`; `None` when they are too short to hold one.
    pub fn read(bytes: &[u8]) -> Option<Stamp> {
        let b: &[u8; STAMP_LEN] = bytes.get(..STAMP_LEN)?.try_into().ok()?;
        let [t0, t1, t2, t3, t4, t5, t6, t7, p0, p1, p2, p3, s0, s1, s2, s3] = *b;
        Some(Stamp {
            sent_ns: u64::from_be_bytes([t0, t1, t2, t3, t4, t5, t6, t7]),
            producer: u32::from_be_bytes([p0, p1, p2, p3]),
            seq: u32::from_be_bytes([s0, s1, s2, s3]),
        })
    }
}

/// The wall clock in nanoseconds since the Unix epoch (0 if the clock is before 1970).
pub fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamp_round_trips_and_leaves_the_rest_alone() {
        let mut body = vec![0xAAu8; 20];
        let s = Stamp { sent_ns: 1_700_000_000_123_456_789, producer: 7, seq: u32::MAX };
        s.write(&mut body);
        assert_eq!(Stamp::read(&body), Some(s));
        assert_eq!(&body[16..], &[0xAA; 4]);
    }

    #[test]
    fn short_bodies_have_no_stamp() {
        assert_eq!(Stamp::read(&[0u8; STAMP_LEN - 1]), None);
        assert!(Stamp::read(&[0u8; STAMP_LEN]).is_some());
    }
}
