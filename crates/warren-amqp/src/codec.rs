//! Bounded reading and plain writing of the protocol's primitive types.
//!
//! `Reader` never reads past its input: every accessor checks the length first and returns a
//! syntax error (502) when the input ends early, which is how a truncated method is reported.

use crate::reply::ProtocolError;
use crate::shortstr::ShortStr;
use bytes::{BufMut, Bytes, BytesMut};

/// A cursor over a frame payload. Strings and tables are sliced out of the shared buffer.
pub struct Reader {
    buf: Bytes,
    pos: usize,
    /// Consecutive bit fields share an octet; this holds the current one and the next bit.
    bits: Option<(u8, u8)>,
}

fn short() -> ProtocolError {
    ProtocolError::syntax("method frame ends before all its fields")
}

impl Reader {
    pub fn new(buf: Bytes) -> Self {
        Reader { buf, pos: 0, bits: None }
    }

    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize) -> Result<Bytes, ProtocolError> {
        self.bits = None;
        if self.remaining() < n {
            return Err(short());
        }
        let b = self.buf.slice(self.pos..self.pos + n);
        self.pos += n;
        Ok(b)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], ProtocolError> {
        self.bits = None;
        if self.remaining() < N {
            return Err(short());
        }
        let mut a = [0u8; N];
        a.copy_from_slice(&self.buf[self.pos..self.pos + N]);
        self.pos += N;
        Ok(a)
    }

    pub fn u8(&mut self) -> Result<u8, ProtocolError> {
        Ok(self.array::<1>()?[0])
    }
    pub fn u16(&mut self) -> Result<u16, ProtocolError> {
        Ok(u16::from_be_bytes(self.array()?))
    }
    pub fn u32(&mut self) -> Result<u32, ProtocolError> {
        Ok(u32::from_be_bytes(self.array()?))
    }
    pub fn u64(&mut self) -> Result<u64, ProtocolError> {
        Ok(u64::from_be_bytes(self.array()?))
    }
    pub fn i8(&mut self) -> Result<i8, ProtocolError> {
        Ok(i8::from_be_bytes(self.array()?))
    }
    pub fn i16(&mut self) -> Result<i16, ProtocolError> {
        Ok(i16::from_be_bytes(self.array()?))
    }
    pub fn i32(&mut self) -> Result<i32, ProtocolError> {
        Ok(i32::from_be_bytes(self.array()?))
    }
    pub fn i64(&mut self) -> Result<i64, ProtocolError> {
        Ok(i64::from_be_bytes(self.array()?))
    }
    pub fn f32(&mut self) -> Result<f32, ProtocolError> {
        Ok(f32::from_be_bytes(self.array()?))
    }
    pub fn f64(&mut self) -> Result<f64, ProtocolError> {
        Ok(f64::from_be_bytes(self.array()?))
    }

    /// Reads the next bit field; a run of bits is packed low bit first into octets.
    pub fn bit(&mut self) -> Result<bool, ProtocolError> {
        let (octet, next) = match self.bits {
            Some((octet, next)) if next < 8 => (octet, next),
            _ => (self.u8()?, 0),
        };
        self.bits = Some((octet, next + 1));
        Ok(octet & (1 << next) != 0)
    }

    pub fn shortstr(&mut self) -> Result<ShortStr, ProtocolError> {
        let len = self.u8()? as usize;
        let b = self.take(len)?;
        ShortStr::from_bytes(b).ok_or_else(|| ProtocolError::syntax("short string is not valid UTF-8"))
    }

    /// Checks a short string as [`Reader::shortstr`] does, and passes over it.
    pub fn skip_shortstr(&mut self) -> Result<(), ProtocolError> {
        let len = self.u8()? as usize;
        if self.remaining() < len {
            return Err(short());
        }
        std::str::from_utf8(&self.buf[self.pos..self.pos + len])
            .map_err(|_| ProtocolError::syntax("short string is not valid UTF-8"))?;
        self.pos += len;
        Ok(())
    }

    pub fn longstr(&mut self) -> Result<Bytes, ProtocolError> {
        let len = self.u32()? as usize;
        self.take(len)
    }

    pub fn bytes(&mut self, n: usize) -> Result<Bytes, ProtocolError> {
        self.take(n)
    }
}

/// Writes bit fields packed as the spec wants; call `flush` (or any non-bit write via the
/// helpers below) to close a run.
#[derive(Default)]
pub struct BitWriter {
    octet: u8,
    next: u8,
}

impl BitWriter {
    pub fn push(&mut self, out: &mut BytesMut, bit: bool) {
        if self.next == 8 {
            self.flush(out);
        }
        if bit {
            self.octet |= 1 << self.next;
        }
        self.next += 1;
    }

    pub fn flush(&mut self, out: &mut BytesMut) {
        if self.next > 0 {
            out.put_u8(self.octet);
        }
        self.octet = 0;
        self.next = 0;
    }
}

pub fn put_shortstr(out: &mut BytesMut, s: &str) {
    let s = crate::reply::truncate_utf8(s, 255);
    out.put_u8(s.len() as u8);
    out.put_slice(s.as_bytes());
}

pub fn put_longstr(out: &mut BytesMut, b: &[u8]) {
    out.put_u32(b.len() as u32);
    out.put_slice(b);
}
