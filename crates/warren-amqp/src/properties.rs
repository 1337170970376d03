//! The basic class's content header properties.

use crate::codec::{put_shortstr, Reader};
use crate::reply::ProtocolError;
use crate::shortstr::ShortStr;
use crate::table::FieldTable;
use bytes::{BufMut, Bytes, BytesMut};

/// delivery-mode value of a persistent message.
pub const DELIVERY_MODE_PERSISTENT: u8 = 2;

#[derive(Debug, Clone, PartialEq, Default)]
pub struct BasicProperties {
    pub content_type: Option<ShortStr>,
    pub content_encoding: Option<ShortStr>,
    pub headers: Option<FieldTable>,
    pub delivery_mode: Option<u8>,
    pub priority: Option<u8>,
    pub correlation_id: Option<ShortStr>,
    pub reply_to: Option<ShortStr>,
    pub expiration: Option<ShortStr>,
    pub message_id: Option<ShortStr>,
    pub timestamp: Option<u64>,
    pub kind: Option<ShortStr>,
    pub user_id: Option<ShortStr>,
    pub app_id: Option<ShortStr>,
    pub cluster_id: Option<ShortStr>,
}

// Property flag bits, highest first, in the order the properties appear on the wire.
const F_CONTENT_TYPE: u16 = 1 << 15;
const F_CONTENT_ENCODING: u16 = 1 << 14;
const F_HEADERS: u16 = 1 << 13;
const F_DELIVERY_MODE: u16 = 1 << 12;
const F_PRIORITY: u16 = 1 << 11;
const F_CORRELATION_ID: u16 = 1 << 10;
const F_REPLY_TO: u16 = 1 << 9;
const F_EXPIRATION: u16 = 1 << 8;
const F_MESSAGE_ID: u16 = 1 << 7;
const F_TIMESTAMP: u16 = 1 << 6;
const F_TYPE: u16 = 1 << 5;
const F_USER_ID: u16 = 1 << 4;
const F_APP_ID: u16 = 1 << 3;
const F_CLUSTER_ID: u16 = 1 << 2;
/// Bit 0 says another flag word follows; the basic class never needs one.
const F_CONTINUATION: u16 = 1;

/// What a broker needs of a published message's properties; the whole list travels on as its
/// encoded bytes. Decoded once, when the content header arrives, with every property checked
/// as [`BasicProperties::decode`] checks it (so a header either decodes both ways or neither),
/// but the others are not kept: no allocation, no copies of strings nobody reads.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PublishProperties {
    pub headers: Option<FieldTable>,
    pub delivery_mode: Option<u8>,
    pub priority: Option<u8>,
    pub reply_to: Option<ShortStr>,
    pub expiration: Option<ShortStr>,
    pub user_id: Option<ShortStr>,
}

impl PublishProperties {
    pub fn decode(raw: &Bytes) -> Result<Self, ProtocolError> {
        let mut r = Reader::new(raw.clone());
        let flags = r.u16()?;
        if flags & F_CONTINUATION != 0 {
            return Err(ProtocolError::frame("content header has more property flags than the basic class defines"));
        }
        let skip_str = |r: &mut Reader, f: u16| if flags & f != 0 { r.skip_shortstr() } else { Ok(()) };
        let opt_str = |r: &mut Reader, f: u16| if flags & f != 0 { r.shortstr().map(Some) } else { Ok(None) };
        skip_str(&mut r, F_CONTENT_TYPE)?;
        skip_str(&mut r, F_CONTENT_ENCODING)?;
        let headers = if flags & F_HEADERS != 0 { Some(FieldTable::decode(&mut r)?) } else { None };
        let delivery_mode = if flags & F_DELIVERY_MODE != 0 { Some(r.u8()?) } else { None };
        let priority = if flags & F_PRIORITY != 0 { Some(r.u8()?) } else { None };
        skip_str(&mut r, F_CORRELATION_ID)?;
        let reply_to = opt_str(&mut r, F_REPLY_TO)?;
        let expiration = opt_str(&mut r, F_EXPIRATION)?;
        skip_str(&mut r, F_MESSAGE_ID)?;
        if flags & F_TIMESTAMP != 0 {
            r.u64()?;
        }
        skip_str(&mut r, F_TYPE)?;
        let user_id = opt_str(&mut r, F_USER_ID)?;
        skip_str(&mut r, F_APP_ID)?;
        skip_str(&mut r, F_CLUSTER_ID)?;
        Ok(PublishProperties { headers, delivery_mode, priority, reply_to, expiration, user_id })
    }

    pub fn is_persistent(&self) -> bool {
        self.delivery_mode == Some(DELIVERY_MODE_PERSISTENT)
    }
}

impl From<&BasicProperties> for PublishProperties {
    fn from(p: &BasicProperties) -> Self {
        PublishProperties {
            headers: p.headers.clone(),
            delivery_mode: p.delivery_mode,
            priority: p.priority,
            reply_to: p.reply_to.clone(),
            expiration: p.expiration.clone(),
            user_id: p.user_id.clone(),
        }
    }
}

impl BasicProperties {
    pub fn is_persistent(&self) -> bool {
        self.delivery_mode == Some(DELIVERY_MODE_PERSISTENT)
    }

    /// Decodes the property list (flags then values) of a content header.
    pub fn decode(raw: Bytes) -> Result<Self, ProtocolError> {
        let mut r = Reader::new(raw);
        let flags = r.u16()?;
        if flags & F_CONTINUATION != 0 {
            return Err(ProtocolError::frame("content header has more property flags than the basic class defines"));
        }
        let opt_str = |r: &mut Reader, f: u16| if flags & f != 0 { r.shortstr().map(Some) } else { Ok(None) };
        let p = BasicProperties {
            content_type: opt_str(&mut r, F_CONTENT_TYPE)?,
            content_encoding: opt_str(&mut r, F_CONTENT_ENCODING)?,
            headers: if flags & F_HEADERS != 0 { Some(FieldTable::decode(&mut r)?) } else { None },
            delivery_mode: if flags & F_DELIVERY_MODE != 0 { Some(r.u8()?) } else { None },
            priority: if flags & F_PRIORITY != 0 { Some(r.u8()?) } else { None },
            correlation_id: opt_str(&mut r, F_CORRELATION_ID)?,
            reply_to: opt_str(&mut r, F_REPLY_TO)?,
            expiration: opt_str(&mut r, F_EXPIRATION)?,
            message_id: opt_str(&mut r, F_MESSAGE_ID)?,
            timestamp: if flags & F_TIMESTAMP != 0 { Some(r.u64()?) } else { None },
            kind: opt_str(&mut r, F_TYPE)?,
            user_id: opt_str(&mut r, F_USER_ID)?,
            app_id: opt_str(&mut r, F_APP_ID)?,
            cluster_id: opt_str(&mut r, F_CLUSTER_ID)?,
        };
        Ok(p)
    }

    /// Encodes the property list (flags then values).
    pub fn encode(&self, out: &mut BytesMut) {
        let mut flags = 0u16;
        let mut set = |present: bool, f: u16| {
            if present {
                flags |= f
            }
        };
        set(self.content_type.is_some(), F_CONTENT_TYPE);
        set(self.content_encoding.is_some(), F_CONTENT_ENCODING);
        set(self.headers.is_some(), F_HEADERS);
        set(self.delivery_mode.is_some(), F_DELIVERY_MODE);
        set(self.priority.is_some(), F_PRIORITY);
        set(self.correlation_id.is_some(), F_CORRELATION_ID);
        set(self.reply_to.is_some(), F_REPLY_TO);
        set(self.expiration.is_some(), F_EXPIRATION);
        set(self.message_id.is_some(), F_MESSAGE_ID);
        set(self.timestamp.is_some(), F_TIMESTAMP);
        set(self.kind.is_some(), F_TYPE);
        set(self.user_id.is_some(), F_USER_ID);
        set(self.app_id.is_some(), F_APP_ID);
        set(self.cluster_id.is_some(), F_CLUSTER_ID);
        out.put_u16(flags);
        let put = |out: &mut BytesMut, s: &Option<ShortStr>| {
            if let Some(s) = s {
                put_shortstr(out, s)
            }
        };
        put(out, &self.content_type);
        put(out, &self.content_encoding);
        if let Some(h) = &self.headers {
            h.encode(out);
        }
        if let Some(v) = self.delivery_mode {
            out.put_u8(v);
        }
        if let Some(v) = self.priority {
            out.put_u8(v);
        }
        put(out, &self.correlation_id);
        put(out, &self.reply_to);
        put(out, &self.expiration);
        put(out, &self.message_id);
        if let Some(v) = self.timestamp {
            out.put_u64(v);
        }
        put(out, &self.kind);
        put(out, &self.user_id);
        put(out, &self.app_id);
        put(out, &self.cluster_id);
    }

    pub fn to_bytes(&self) -> Bytes {
        let mut out = BytesMut::new();
        self.encode(&mut out);
        out.freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::FieldValue;

    #[test]
    fn all_properties_round_trip() {
        let mut headers = FieldTable::new();
        headers.insert("k", FieldValue::from("v"));
        let p = BasicProperties {
            content_type: Some("text/plain".into()),
            content_encoding: Some("gzip".into()),
            headers: Some(headers),
            delivery_mode: Some(2),
            priority: Some(7),
            correlation_id: Some("c1".into()),
            reply_to: Some("amq.rabbitmq.reply-to".into()),
            expiration: Some("60000".into()),
            message_id: Some("m1".into()),
            timestamp: Some(1_700_000_000),
            kind: Some("t".into()),
            user_id: Some("guest".into()),
            app_id: Some("app".into()),
            cluster_id: Some("cl".into()),
        };
        assert_eq!(BasicProperties::decode(p.to_bytes()).expect("decodes"), p);
        // What a publish keeps of them, read past the others.
        let kept = PublishProperties::decode(&p.to_bytes()).expect("decodes");
        assert_eq!(kept, PublishProperties::from(&p));
        assert_eq!(kept.user_id.as_deref(), Some("guest"));
        assert_eq!(kept.expiration.as_deref(), Some("60000"));
        let empty = BasicProperties::default();
        assert_eq!(empty.to_bytes().as_ref(), &[0, 0]);
        assert_eq!(BasicProperties::decode(empty.to_bytes()).expect("decodes"), empty);
    }

    #[test]
    fn truncated_properties_are_an_error() {
        let raw = Bytes::from_static(&[0x80, 0x00, 5, b'a']);
        assert!(BasicProperties::decode(raw.clone()).is_err());
        assert!(PublishProperties::decode(&raw).is_err());
    }

    #[test]
    fn a_property_a_publish_does_not_keep_is_still_checked() {
        // content-type (not kept) with a byte that is not UTF-8, then a delivery mode.
        let raw = Bytes::from_static(&[0x90, 0x00, 2, b'a', 0xff, 2]);
        let (all, kept) = (BasicProperties::decode(raw.clone()), PublishProperties::decode(&raw));
        assert_eq!(all.expect_err("not UTF-8").text, kept.expect_err("not UTF-8").text);
        let raw = Bytes::from_static(&[0x90, 0x00, 2, b'a', b'b', 2]);
        assert_eq!(PublishProperties::decode(&raw).expect("decodes").delivery_mode, Some(2));
    }
}
