//! Message deduplication, as the community plugin defines it (`rabbitmq-message-deduplication`):
//! the `x-message-deduplication` exchange drops a message whose `x-deduplication-header` value
//! it has seen within the cache TTL (then routes like a fanout), and a queue declared with
//! `x-message-deduplication = true` refuses a message whose header value another message in the
//! queue already carries.
//!
//! Invariant: a cache holds at most `size` entries; when full, the oldest entry goes first.

use crate::hash::HashMap;
use std::collections::VecDeque;
use std::io;
use warren_amqp::{FieldTable, FieldValue, ProtocolError, ReplyCode};
use warren_store::{SegmentLog, SyncHandle};

/// The header that names a message for deduplication.
pub const DEDUP_HEADER: &str = "x-deduplication-header";

/// The key a message is deduplicated on, if it carries the header.
pub fn key_of(headers: Option<&FieldTable>) -> Option<Vec<u8>> {
    let v = headers?.get(DEDUP_HEADER)?;
    Some(match v {
        FieldValue::LongStr(b) | FieldValue::ByteArray(b) => b.to_vec(),
        other => match other.as_i64() {
            Some(n) => n.to_string().into_bytes(),
            None => format!("{other:?}").into_bytes(),
        },
    })
}

/// A non-negative integer argument, given as a number or as a numeric string (clients differ).
fn int_arg(args: &FieldTable, key: &str) -> Option<Result<u64, ()>> {
    let v = args.get(key)?;
    Some(match v.as_i64() {
        Some(n) if n >= 0 => Ok(n as u64),
        Some(_) => Err(()),
        None => v.as_str().and_then(|s| s.trim().parse::<u64>().ok()).ok_or(()),
    })
}

/// The exchange's cache of recently seen keys.
#[derive(Debug)]
pub struct DedupCache {
    size: usize,
    ttl_ms: Option<u64>,
    /// Key to its expiry (None: kept until evicted) and its record in `log`.
    entries: HashMap<Vec<u8>, (Option<u64>, Option<u64>)>,
    /// Keys in insertion order, for eviction when full.
    order: VecDeque<Vec<u8>>,
    /// `x-cache-persistence: disk` on a durable exchange: every entry is a record here, settled
    /// when the entry goes, so the cache comes back after a restart.
    log: Option<SegmentLog>,
    pub dirty: bool,
}

impl DedupCache {
    pub fn new(size: usize, ttl_ms: Option<u64>) -> Self {
        DedupCache {
            size: size.max(1),
            ttl_ms,
            entries: HashMap::default(),
            order: VecDeque::new(),
            log: None,
            dirty: false,
        }
    }

    /// Reads `x-cache-size` (required) and `x-cache-ttl` from the exchange arguments.
    pub fn from_arguments(args: &FieldTable, exchange: &str) -> Result<Self, ProtocolError> {
        let size = match int_arg(args, "x-cache-size") {
            Some(Ok(n)) if n > 0 => n as usize,
            _ => {
                return Err(ProtocolError::new(
                    ReplyCode::PreconditionFailed,
                    format_args!(
                        "Missing or invalid argument, 'x-cache-size' must be an integer greater than 0 (exchange '{exchange}')"
                    ),
                ))
            }
        };
        let ttl_ms = match int_arg(args, "x-cache-ttl") {
            None => None,
            Some(Ok(n)) => Some(n),
            Some(Err(())) => {
                return Err(ProtocolError::new(
                    ReplyCode::PreconditionFailed,
                    format_args!("Invalid argument, 'x-cache-ttl' must be an integer (exchange '{exchange}')"),
                ))
            }
        };
        match args.get("x-cache-persistence").map(|v| v.as_str()) {
            None | Some(Some("memory")) | Some(Some("disk")) => {}
            _ => {
                return Err(ProtocolError::new(
                    ReplyCode::PreconditionFailed,
                    format_args!(
                        "Invalid argument, 'x-cache-persistence' must be 'memory' or 'disk' (exchange '{exchange}')"
                    ),
                ))
            }
        }
        Ok(DedupCache::new(size, ttl_ms))
    }

    /// True when the exchange arguments ask for the cache to persist.
    pub fn wants_disk(args: &FieldTable) -> bool {
        args.get("x-cache-persistence").and_then(FieldValue::as_str) == Some("disk")
    }

    /// Keeps the cache in `log` from now on, first loading the entries it holds.
    pub fn attach_log(&mut self, mut log: SegmentLog) -> io::Result<()> {
        let mut from = 0;
        loop {
            let records = log.read(from, 4096, 1 << 20)?;
            let Some(last) = records.last() else { break };
            from = last.seq + 1;
            for r in records {
                if r.payload.len() < 8 {
                    log.settle(r.seq)?;
                    continue;
                }
                let mut expiry = [0u8; 8];
                expiry.copy_from_slice(&r.payload[..8]);
                let expiry = Some(u64::from_be_bytes(expiry)).filter(|t| *t != 0);
                let key = r.payload[8..].to_vec();
                if let Some((_, Some(old))) = self.entries.insert(key.clone(), (expiry, Some(r.seq))) {
                    log.settle(old)?;
                } else {
                    self.order.push_back(key);
                }
            }
        }
        self.log = Some(log);
        self.evict()?;
        Ok(())
    }

    /// True when the message is a duplicate (seen and not expired); otherwise remembers it.
    /// A message's own `x-cache-ttl` header overrides the exchange's.
    pub fn check_and_insert(&mut self, headers: Option<&FieldTable>, now_ms: u64) -> io::Result<bool> {
        let Some(key) = key_of(headers) else { return Ok(false) };
        if let Some((expiry, _)) = self.entries.get(&key) {
            if expiry.is_none_or(|t| now_ms < t) {
                return Ok(true);
            }
        }
        let ttl = headers.and_then(|h| h.get("x-cache-ttl")).and_then(FieldValue::as_i64).map(|t| t.max(0) as u64);
        let expiry = ttl.or(self.ttl_ms).map(|t| now_ms.saturating_add(t));
        let seq = match self.log.as_mut() {
            Some(log) => {
                let mut payload = expiry.unwrap_or(0).to_be_bytes().to_vec();
                payload.extend_from_slice(&key);
                self.dirty = true;
                Some(log.append(&payload, true)?)
            }
            None => None,
        };
        match self.entries.insert(key.clone(), (expiry, seq)) {
            None => self.order.push_back(key),
            Some((_, Some(old))) => {
                if let Some(log) = self.log.as_mut() {
                    log.settle(old)?;
                }
            }
            Some(_) => {}
        }
        self.evict()?;
        Ok(false)
    }

    fn evict(&mut self) -> io::Result<()> {
        while self.entries.len() > self.size {
            let Some(old) = self.order.pop_front() else { break };
            if let Some((_, Some(seq))) = self.entries.remove(&old) {
                if let Some(log) = self.log.as_mut() {
                    log.settle(seq)?;
                    self.dirty = true;
                }
            }
        }
        Ok(())
    }

    /// Deletes the cache's log (its exchange was deleted).
    pub fn destroy(&mut self) -> io::Result<()> {
        match self.log.take() {
            Some(log) => log.destroy(),
            None => Ok(()),
        }
    }

    pub fn pending_sync(&mut self) -> Vec<std::sync::Arc<dyn SyncHandle>> {
        self.dirty = false;
        self.log.as_mut().map(|l| l.pending_sync()).unwrap_or_default()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// A queue's record of the keys of the messages it holds.
#[derive(Debug, Default)]
pub struct QueueKeys {
    /// Key to how many messages in the queue carry it (normally one).
    counts: HashMap<Vec<u8>, u32>,
    /// (lane, seq) of a message to its key, to forget the key when the message leaves.
    by_message: HashMap<(u8, u64), Vec<u8>>,
}

impl QueueKeys {
    pub fn contains(&self, key: &[u8]) -> bool {
        self.counts.contains_key(key)
    }

    pub fn insert(&mut self, lane: u8, seq: u64, key: Vec<u8>) {
        *self.counts.entry(key.clone()).or_insert(0) += 1;
        self.by_message.insert((lane, seq), key);
    }

    pub fn remove(&mut self, lane: u8, seq: u64) {
        let Some(key) = self.by_message.remove(&(lane, seq)) else { return };
        if let Some(n) = self.counts.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                self.counts.remove(&key);
            }
        }
    }

    pub fn clear(&mut self) {
        self.counts.clear();
        self.by_message.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(key: &str) -> FieldTable {
        let mut t = FieldTable::new();
        t.insert(DEDUP_HEADER, FieldValue::from(key));
        t
    }

    fn cache(size: i64, ttl: Option<i64>) -> DedupCache {
        let mut a = FieldTable::new();
        a.insert("x-cache-size", FieldValue::I64(size));
        if let Some(t) = ttl {
            a.insert("x-cache-ttl", FieldValue::I64(t));
        }
        DedupCache::from_arguments(&a, "x").expect("valid")
    }

    #[test]
    fn duplicates_within_ttl_are_caught() {
        let mut c = cache(10, Some(100));
        assert!(!c.check_and_insert(Some(&headers("a")), 0).expect("cache"));
        assert!(c.check_and_insert(Some(&headers("a")), 50).expect("cache"));
        assert!(!c.check_and_insert(Some(&headers("a")), 100).expect("cache"), "expired: routed again");
        assert!(!c.check_and_insert(None, 0).expect("cache"), "no header: never a duplicate");
    }

    #[test]
    fn a_full_cache_forgets_the_oldest() {
        let mut c = cache(2, None);
        for k in ["a", "b", "c"] {
            assert!(!c.check_and_insert(Some(&headers(k)), 0).expect("cache"));
        }
        assert_eq!(c.len(), 2);
        assert!(!c.check_and_insert(Some(&headers("a")), 0).expect("cache"), "a was evicted");
        assert!(c.check_and_insert(Some(&headers("c")), 0).expect("cache"));
    }

    #[test]
    fn size_is_required_and_may_be_a_string() {
        assert!(DedupCache::from_arguments(&FieldTable::new(), "x").is_err());
        let mut a = FieldTable::new();
        a.insert("x-cache-size", FieldValue::from("5"));
        assert!(DedupCache::from_arguments(&a, "x").is_ok());
    }

    #[test]
    fn a_disk_cache_comes_back_after_reopening() {
        use std::path::Path;
        use std::sync::Arc;
        use warren_store::{LogConfig, MemBackend};
        let backend = Arc::new(MemBackend::new());
        let open = || SegmentLog::open(backend.clone(), Path::new("/dedup"), LogConfig::default()).expect("open").0;
        let mut c = cache(2, None);
        c.attach_log(open()).expect("attach");
        for k in ["a", "b", "c"] {
            assert!(!c.check_and_insert(Some(&headers(k)), 0).expect("cache"));
        }
        for h in c.pending_sync() {
            h.sync().expect("sync");
        }
        drop(c);
        let mut c = cache(2, None);
        c.attach_log(open()).expect("attach");
        assert_eq!(c.len(), 2);
        assert!(c.check_and_insert(Some(&headers("c")), 0).expect("cache"), "remembered across reopening");
        assert!(!c.check_and_insert(Some(&headers("a")), 0).expect("cache"), "a was evicted before");
    }

    #[test]
    fn queue_keys_follow_messages() {
        let mut k = QueueKeys::default();
        k.insert(0, 1, b"a".to_vec());
        assert!(k.contains(b"a"));
        k.remove(0, 1);
        assert!(!k.contains(b"a"));
    }
}
