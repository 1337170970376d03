//! Field tables and field values, with RabbitMQ's type tags (which differ from the 0-9-1 spec's
//! list for a few integer types: RabbitMQ and every common client use `s` for a signed 16-bit
//! integer, `u` unsigned 16, `I` signed 32, `i` unsigned 32, `l` signed 64, `x` byte array).
//!
//! A table keeps its entries in wire order so that re-encoding yields the same bytes.

use crate::codec::{put_longstr, put_shortstr, Reader};
use crate::reply::ProtocolError;
use crate::shortstr::ShortStr;
use bytes::{BufMut, Bytes, BytesMut};

/// How deeply tables and arrays may nest. Real headers nest two or three levels (x-death holds a
/// table in an array in a table); the bound keeps a hostile frame from exhausting the stack.
pub const TABLE_DEPTH_MAX: usize = 32;

#[derive(Debug, Clone, PartialEq)]
pub enum FieldValue {
    Bool(bool),
    I8(i8),
    U8(u8),
    I16(i16),
    U16(u16),
    I32(i32),
    U32(u32),
    I64(i64),
    F32(f32),
    F64(f64),
    Decimal { scale: u8, value: u32 },
    LongStr(Bytes),
    Array(Vec<FieldValue>),
    Timestamp(u64),
    Table(FieldTable),
    Void,
    ByteArray(Bytes),
}

impl FieldValue {
    /// The value as a string when it is one (long strings carry text in practice).
    pub fn as_str(&self) -> Option<&str> {
        match self {
            FieldValue::LongStr(b) => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }

    /// Any integer type widened to i64 (clients differ in the width they pick).
    pub fn as_i64(&self) -> Option<i64> {
        Some(match *self {
            FieldValue::I8(v) => v.into(),
            FieldValue::U8(v) => v.into(),
            FieldValue::I16(v) => v.into(),
            FieldValue::U16(v) => v.into(),
            FieldValue::I32(v) => v.into(),
            FieldValue::U32(v) => v.into(),
            FieldValue::I64(v) => v,
            FieldValue::Timestamp(v) => i64::try_from(v).ok()?,
            _ => return None,
        })
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            FieldValue::Bool(b) => Some(*b),
            _ => None,
        }
    }

    fn decode(r: &mut Reader, depth: usize) -> Result<Self, ProtocolError> {
        let tag = r.u8()?;
        Ok(match tag {
            b't' => FieldValue::Bool(r.u8()? != 0),
            b'b' => FieldValue::I8(r.i8()?),
            b'B' => FieldValue::U8(r.u8()?),
            b's' => FieldValue::I16(r.i16()?),
            b'u' => FieldValue::U16(r.u16()?),
            b'I' => FieldValue::I32(r.i32()?),
            b'i' => FieldValue::U32(r.u32()?),
            b'l' | b'L' => FieldValue::I64(r.i64()?),
            b'f' => FieldValue::F32(r.f32()?),
            b'd' => FieldValue::F64(r.f64()?),
            b'D' => FieldValue::Decimal { scale: r.u8()?, value: r.u32()? },
            b'S' => FieldValue::LongStr(r.longstr()?),
            b'A' => {
                if depth >= TABLE_DEPTH_MAX {
                    return Err(too_deep());
                }
                let body = r.longstr()?;
                let mut inner = Reader::new(body);
                let mut items = Vec::new();
                while inner.remaining() > 0 {
                    items.push(FieldValue::decode(&mut inner, depth + 1)?);
                }
                FieldValue::Array(items)
            }
            b'T' => FieldValue::Timestamp(r.u64()?),
            b'F' => {
                if depth >= TABLE_DEPTH_MAX {
                    return Err(too_deep());
                }
                FieldValue::Table(FieldTable::decode_at(r, depth + 1)?)
            }
            b'V' => FieldValue::Void,
            b'x' => FieldValue::ByteArray(r.longstr()?),
            other => {
                return Err(ProtocolError::syntax(format_args!(
                    "unknown field type '{}' in a field table",
                    other.escape_ascii()
                )))
            }
        })
    }

    fn encode(&self, out: &mut BytesMut) {
        match self {
            FieldValue::Bool(v) => {
                out.put_u8(b't');
                out.put_u8(*v as u8);
            }
            FieldValue::I8(v) => {
                out.put_u8(b'b');
                out.put_i8(*v);
            }
            FieldValue::U8(v) => {
                out.put_u8(b'B');
                out.put_u8(*v);
            }
            FieldValue::I16(v) => {
                out.put_u8(b's');
                out.put_i16(*v);
            }
            FieldValue::U16(v) => {
                out.put_u8(b'u');
                out.put_u16(*v);
            }
            FieldValue::I32(v) => {
                out.put_u8(b'I');
                out.put_i32(*v);
            }
            FieldValue::U32(v) => {
                out.put_u8(b'i');
                out.put_u32(*v);
            }
            FieldValue::I64(v) => {
                out.put_u8(b'l');
                out.put_i64(*v);
            }
            FieldValue::F32(v) => {
                out.put_u8(b'f');
                out.put_f32(*v);
            }
            FieldValue::F64(v) => {
                out.put_u8(b'd');
                out.put_f64(*v);
            }
            FieldValue::Decimal { scale, value } => {
                out.put_u8(b'D');
                out.put_u8(*scale);
                out.put_u32(*value);
            }
            FieldValue::LongStr(b) => {
                out.put_u8(b'S');
                put_longstr(out, b);
            }
            FieldValue::Array(items) => {
                out.put_u8(b'A');
                let at = out.len();
                out.put_u32(0);
                for item in items {
                    item.encode(out);
                }
                patch_len(out, at);
            }
            FieldValue::Timestamp(v) => {
                out.put_u8(b'T');
                out.put_u64(*v);
            }
            FieldValue::Table(t) => {
                out.put_u8(b'F');
                t.encode(out);
            }
            FieldValue::Void => out.put_u8(b'V'),
            FieldValue::ByteArray(b) => {
                out.put_u8(b'x');
                put_longstr(out, b);
            }
        }
    }
}

impl From<&str> for FieldValue {
    fn from(s: &str) -> Self {
        FieldValue::LongStr(Bytes::copy_from_slice(s.as_bytes()))
    }
}

fn too_deep() -> ProtocolError {
    ProtocolError::syntax(format_args!("field tables nest deeper than {TABLE_DEPTH_MAX} levels"))
}

/// Writes the length of what follows the 4-byte placeholder at `at`.
fn patch_len(out: &mut BytesMut, at: usize) {
    let len = (out.len() - at - 4) as u32;
    out[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

/// A field table: named values in wire order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FieldTable(pub Vec<(ShortStr, FieldValue)>);

impl FieldTable {
    pub fn new() -> Self {
        FieldTable(Vec::new())
    }

    pub fn get(&self, key: &str) -> Option<&FieldValue> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// Sets `key`, replacing an existing entry in place.
    pub fn insert(&mut self, key: impl Into<ShortStr>, value: FieldValue) {
        let key = key.into();
        match self.0.iter_mut().find(|(k, _)| *k == key) {
            Some(entry) => entry.1 = value,
            None => self.0.push((key, value)),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&ShortStr, &FieldValue)> {
        self.0.iter().map(|(k, v)| (k, v))
    }

    pub fn decode(r: &mut Reader) -> Result<Self, ProtocolError> {
        Self::decode_at(r, 0)
    }

    fn decode_at(r: &mut Reader, depth: usize) -> Result<Self, ProtocolError> {
        let body = r.longstr()?;
        let mut inner = Reader::new(body);
        let mut entries = Vec::new();
        while inner.remaining() > 0 {
            let key = inner.shortstr()?;
            let value = FieldValue::decode(&mut inner, depth)?;
            entries.push((key, value));
        }
        Ok(FieldTable(entries))
    }

    pub fn encode(&self, out: &mut BytesMut) {
        let at = out.len();
        out.put_u32(0);
        for (k, v) in &self.0 {
            put_shortstr(out, k);
            v.encode(out);
        }
        patch_len(out, at);
    }
}

impl FromIterator<(ShortStr, FieldValue)> for FieldTable {
    fn from_iter<I: IntoIterator<Item = (ShortStr, FieldValue)>>(iter: I) -> Self {
        FieldTable(iter.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(t: &FieldTable) -> FieldTable {
        let mut out = BytesMut::new();
        t.encode(&mut out);
        let mut r = Reader::new(out.freeze());
        let back = FieldTable::decode(&mut r).expect("decodes");
        assert_eq!(r.remaining(), 0);
        back
    }

    #[test]
    fn every_type_round_trips() {
        let mut inner = FieldTable::new();
        inner.insert("n", FieldValue::I64(-5));
        let t: FieldTable = [
            ("bool", FieldValue::Bool(true)),
            ("i8", FieldValue::I8(-1)),
            ("u8", FieldValue::U8(200)),
            ("i16", FieldValue::I16(-300)),
            ("u16", FieldValue::U16(60000)),
            ("i32", FieldValue::I32(-70000)),
            ("u32", FieldValue::U32(4_000_000_000)),
            ("i64", FieldValue::I64(i64::MIN)),
            ("f32", FieldValue::F32(1.5)),
            ("f64", FieldValue::F64(-2.25)),
            ("dec", FieldValue::Decimal { scale: 2, value: 12345 }),
            ("s", FieldValue::from("text")),
            ("arr", FieldValue::Array(vec![FieldValue::I32(1), FieldValue::from("x")])),
            ("ts", FieldValue::Timestamp(1_700_000_000)),
            ("tbl", FieldValue::Table(inner)),
            ("void", FieldValue::Void),
            ("bytes", FieldValue::ByteArray(Bytes::from_static(b"\x00\x01"))),
        ]
        .into_iter()
        .map(|(k, v)| (ShortStr::from(k), v))
        .collect();
        assert_eq!(roundtrip(&t), t);
    }

    #[test]
    fn nesting_is_bounded() {
        let mut v = FieldValue::Void;
        for _ in 0..TABLE_DEPTH_MAX + 2 {
            v = FieldValue::Array(vec![v]);
        }
        let mut t = FieldTable::new();
        t.insert("deep", v);
        let mut out = BytesMut::new();
        t.encode(&mut out);
        let err = FieldTable::decode(&mut Reader::new(out.freeze())).expect_err("too deep");
        assert_eq!(err.code, crate::ReplyCode::SyntaxError);
    }

    #[test]
    fn nesting_at_the_limit_decodes() {
        let mut v = FieldValue::Void;
        for _ in 0..TABLE_DEPTH_MAX - 1 {
            v = FieldValue::Array(vec![v]);
        }
        let mut t = FieldTable::new();
        t.insert("deep", v);
        assert_eq!(roundtrip(&t), t);
    }

    #[test]
    fn unknown_tag_is_a_syntax_error() {
        let raw = Bytes::from_static(b"\x00\x00\x00\x03\x01kZ");
        let err = FieldTable::decode(&mut Reader::new(raw)).expect_err("unknown tag");
        assert_eq!(err.code, crate::ReplyCode::SyntaxError);
    }

    #[test]
    fn truncated_table_is_an_error_not_a_panic() {
        let raw = Bytes::from_static(b"\x00\x00\x00\x09\x01kS\x00\x00\x00\x09ab");
        assert!(FieldTable::decode(&mut Reader::new(raw)).is_err());
    }
}
