//! `ShortStr`: an AMQP short string, shared rather than copied.
//!
//! Invariant: the bytes are valid UTF-8 and at most 255 long. Holding a `Bytes` lets a routing key
//! or exchange name decoded from a frame point into that frame's buffer with no allocation.

use bytes::Bytes;
use bytestring::ByteString;
use std::borrow::Borrow;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Deref;

/// The longest short string the wire format can carry.
pub const SHORT_STR_MAX: usize = 255;

#[derive(Clone, Default)]
pub struct ShortStr(ByteString);

impl ShortStr {
    pub const fn from_static(s: &'static str) -> Self {
        assert!(s.len() <= SHORT_STR_MAX);
        ShortStr(ByteString::from_static(s))
    }

    /// Wraps bytes that are valid UTF-8 of at most 255 bytes; `None` otherwise.
    pub fn from_bytes(b: Bytes) -> Option<Self> {
        if b.len() > SHORT_STR_MAX {
            return None;
        }
        ByteString::try_from(b).ok().map(ShortStr)
    }

    /// Builds a short string from any text, cutting it to 255 bytes on a character boundary.
    pub fn truncating(s: &str) -> Self {
        ShortStr(ByteString::from(crate::reply::truncate_utf8(s, SHORT_STR_MAX)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl Deref for ShortStr {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl Borrow<str> for ShortStr {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl PartialEq for ShortStr {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}
impl Eq for ShortStr {}

impl PartialEq<str> for ShortStr {
    fn eq(&self, other: &str) -> bool {
        self.0.as_bytes() == other.as_bytes()
    }
}
impl PartialEq<&str> for ShortStr {
    fn eq(&self, other: &&str) -> bool {
        self.0.as_bytes() == other.as_bytes()
    }
}

impl Hash for ShortStr {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state)
    }
}

impl PartialOrd for ShortStr {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for ShortStr {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_bytes().cmp(other.as_bytes())
    }
}

impl fmt::Debug for ShortStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for ShortStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<&str> for ShortStr {
    /// Cuts text longer than a short string can carry.
    fn from(s: &str) -> Self {
        ShortStr::truncating(s)
    }
}

impl From<String> for ShortStr {
    fn from(s: String) -> Self {
        if s.len() <= SHORT_STR_MAX {
            ShortStr(ByteString::from(s))
        } else {
            ShortStr::truncating(&s)
        }
    }
}
