//! The delayed-message exchange (`x-delayed-message`, as the popular plugin defines it): a
//! message published with an `x-delay` header (milliseconds) is held and routed, by the type
//! named in the `x-delayed-type` argument, once the delay has passed.
//!
//! Pending messages live in a segment log (durable when the exchange is), so they survive a
//! restart and cost no memory while far from due. Only messages due before the *horizon* are
//! held in memory, in a heap by due time; the horizon moves forward by [`WINDOW_MS`] at a time,
//! by a scan of the log done in slices of [`SCAN_RECORDS_PER_TICK`] records per tick, so that
//! millions of pending messages cost neither memory nor a long pause.
//!
//! Invariant: every unsettled record due before `horizon` is in `near` (or was just fired);
//! records due later are on disk only. A fired message is settled in the log at once.

use crate::message::{decode_from_store, encode_for_store, MessageRef};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io;
use warren_amqp::{FieldTable, FieldValue};
use warren_store::{SegmentLog, SyncHandle};

/// How far ahead of now the horizon reaches after a scan.
pub const WINDOW_MS: u64 = 60_000;
/// Records examined per tick while the horizon moves: bounds the pause a scan causes.
pub const SCAN_RECORDS_PER_TICK: usize = 20_000;
const SCAN_BYTES_PER_TICK: usize = 16 * 1024 * 1024;

/// The delay a message asks for, in ms; none (route at once) when absent or not positive.
pub fn delay_of(headers: Option<&FieldTable>) -> Option<u64> {
    let v = headers?.get("x-delay")?;
    let ms = match v {
        FieldValue::LongStr(_) => v.as_str()?.trim().parse::<i64>().ok()?,
        other => other.as_i64()?,
    };
    (ms > 0).then_some(ms as u64)
}

#[derive(Debug)]
struct Near {
    due_ms: u64,
    seq: u64,
    msg: MessageRef,
}

impl PartialEq for Near {
    fn eq(&self, other: &Self) -> bool {
        (self.due_ms, self.seq) == (other.due_ms, other.seq)
    }
}
impl Eq for Near {}
impl PartialOrd for Near {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Near {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.due_ms, self.seq).cmp(&(other.due_ms, other.seq))
    }
}

/// A scan moving the horizon to `target`; `cursor` is the next seq to examine.
#[derive(Debug)]
struct Scan {
    target: u64,
    cursor: u64,
}

#[derive(Debug)]
pub struct DelayedStore {
    log: SegmentLog,
    durable: bool,
    near: BinaryHeap<Reverse<Near>>,
    horizon: u64,
    scan: Option<Scan>,
    pending: u64,
    pub dirty: bool,
    scratch: Vec<u8>,
}

impl DelayedStore {
    /// A store over `log`, which held `recovered` pending messages.
    pub fn new(log: SegmentLog, durable: bool, recovered: u64) -> Self {
        DelayedStore {
            log,
            durable,
            near: BinaryHeap::new(),
            // Nothing is in memory yet: the first tick scans everything due in the window.
            horizon: 0,
            scan: None,
            pending: recovered,
            dirty: false,
            scratch: Vec::new(),
        }
    }

    /// Messages waiting for their delay.
    pub fn pending(&self) -> u64 {
        self.pending
    }

    /// Messages held in memory (those due before the horizon).
    pub fn in_memory(&self) -> usize {
        self.near.len()
    }

    /// Holds a message until `due_ms`. Returns true when it must be synced before a confirm.
    pub fn hold(&mut self, msg: MessageRef, due_ms: u64) -> io::Result<bool> {
        encode_for_store(&msg, Some(due_ms), &mut self.scratch);
        let seq = self.log.append(&self.scratch, self.durable)?;
        self.pending += 1;
        if due_ms < self.horizon {
            self.near.push(Reverse(Near { due_ms, seq, msg }));
        }
        self.dirty |= self.durable;
        Ok(self.durable)
    }

    /// Messages due by `now_ms`, in due order; each is settled in the log. Also moves the
    /// horizon forward a slice at a time.
    pub fn take_due(&mut self, now_ms: u64) -> io::Result<Vec<MessageRef>> {
        self.advance_horizon(now_ms)?;
        let mut due = Vec::new();
        while let Some(Reverse(top)) = self.near.peek() {
            if top.due_ms > now_ms {
                break;
            }
            let Some(Reverse(n)) = self.near.pop() else { break };
            self.log.settle(n.seq)?;
            self.pending = self.pending.saturating_sub(1);
            self.dirty |= self.durable;
            due.push(n.msg);
        }
        Ok(due)
    }

    fn advance_horizon(&mut self, now_ms: u64) -> io::Result<()> {
        if self.scan.is_none() {
            if self.pending as usize == self.near.len() {
                // Everything pending is in memory: no need to look at the disk.
                self.horizon = self.horizon.max(now_ms + WINDOW_MS);
                return Ok(());
            }
            if now_ms + WINDOW_MS / 2 < self.horizon {
                return Ok(());
            }
            self.scan = Some(Scan { target: now_ms + WINDOW_MS, cursor: 0 });
        }
        let Some(scan) = self.scan.as_mut() else { return Ok(()) };
        let records = self.log.read(scan.cursor, SCAN_RECORDS_PER_TICK, SCAN_BYTES_PER_TICK)?;
        if records.is_empty() {
            self.horizon = scan.target;
            self.scan = None;
            return Ok(());
        }
        for r in records {
            scan.cursor = r.seq + 1;
            match decode_from_store(r.payload) {
                Some((msg, Some(due_ms))) => {
                    if due_ms >= self.horizon && due_ms < scan.target {
                        self.near.push(Reverse(Near { due_ms, seq: r.seq, msg }));
                    }
                }
                // A record this version cannot read: drop it rather than hold it forever.
                _ => {
                    self.log.settle(r.seq)?;
                    self.pending = self.pending.saturating_sub(1);
                }
            }
        }
        Ok(())
    }

    pub fn pending_sync(&mut self) -> Vec<std::sync::Arc<dyn SyncHandle>> {
        self.dirty = false;
        self.log.pending_sync()
    }

    pub fn destroy(self) -> io::Result<()> {
        self.log.destroy()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Message;
    use bytes::Bytes;
    use std::path::Path;
    use std::sync::Arc;
    use warren_store::{LogConfig, MemBackend};

    fn msg(body: &'static str) -> MessageRef {
        Message::new(
            "d".into(),
            "k".into(),
            Default::default(),
            Bytes::from_static(&[0, 0]),
            Bytes::from_static(body.as_bytes()),
        )
    }

    fn bodies(v: Vec<MessageRef>) -> Vec<String> {
        v.into_iter().map(|m| String::from_utf8_lossy(&m.body).into_owned()).collect()
    }

    #[test]
    fn fires_in_due_order_and_survives_reopen() {
        let backend = Arc::new(MemBackend::new());
        let dir = Path::new("/d");
        let (log, _) = SegmentLog::open(backend.clone(), dir, LogConfig::default()).expect("open");
        let mut d = DelayedStore::new(log, true, 0);
        d.take_due(0).expect("tick");
        d.hold(msg("late"), 300).expect("hold");
        d.hold(msg("early"), 100).expect("hold");
        d.hold(msg("far"), 10 * WINDOW_MS).expect("hold");
        assert!(d.take_due(50).expect("tick").is_empty());
        assert_eq!(bodies(d.take_due(300).expect("tick")), vec!["early", "late"]);
        for h in d.pending_sync() {
            h.sync().expect("sync");
        }
        drop(d);
        let (log, rec) = SegmentLog::open(backend, dir, LogConfig::default()).expect("reopen");
        assert_eq!(rec.unsettled, 1);
        let mut d = DelayedStore::new(log, true, rec.unsettled);
        let mut fired = Vec::new();
        // The horizon moves in scans; keep ticking through time until the far one fires.
        let mut now = 0;
        while fired.is_empty() && now <= 11 * WINDOW_MS {
            fired = bodies(d.take_due(now).expect("tick"));
            now += 1_000;
        }
        assert_eq!(fired, vec!["far"]);
        assert!(now > 10 * WINDOW_MS, "not before it is due");
        assert_eq!(d.pending(), 0);
    }

    #[test]
    fn only_the_near_window_is_held_in_memory() {
        let backend = Arc::new(MemBackend::new());
        let (log, _) = SegmentLog::open(backend, Path::new("/d"), LogConfig::default()).expect("open");
        let mut d = DelayedStore::new(log, false, 0);
        d.take_due(0).expect("tick");
        // 20,000 messages spread over 20 windows: about 5% of them are near at a time.
        for i in 0..20_000u64 {
            d.hold(msg("m"), (i * 97 % 20_000) * WINDOW_MS / 1_000).expect("hold");
        }
        assert!(d.in_memory() <= 1_100, "{} held in memory", d.in_memory());
        let mut fired = 0;
        let mut now = 0;
        while now <= 21 * WINDOW_MS {
            fired += d.take_due(now).expect("tick").len();
            assert!(d.in_memory() <= 2_100, "{} held in memory at {now}", d.in_memory());
            now += 1_000;
        }
        assert_eq!(fired, 20_000);
        assert_eq!(d.pending(), 0);
    }

    #[test]
    fn delay_header_forms() {
        let mut h = FieldTable::new();
        h.insert("x-delay", FieldValue::I32(500));
        assert_eq!(delay_of(Some(&h)), Some(500));
        h.insert("x-delay", FieldValue::from("250"));
        assert_eq!(delay_of(Some(&h)), Some(250));
        h.insert("x-delay", FieldValue::I32(-5));
        assert_eq!(delay_of(Some(&h)), None);
        assert_eq!(delay_of(None), None);
    }
}
