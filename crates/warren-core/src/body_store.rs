//! [`BodyStore`]: where a quorum queue's member keeps the messages beyond its memory window, so
//! that a backlog costs no memory per message (docs/clustering.md, "A backlog").
//!
//! It is the member's own, not replicated: every member of a group applies the same log, and
//! each decides for itself which ready messages it keeps in memory and which it writes here
//! (the outputs do not depend on it). A snapshot of the queue names a paged message by its seq
//! here instead of carrying its body, so the store and the snapshot file together are the
//! member's state; a snapshot sent to another member carries the bodies
//! ([`crate::quorum::QuorumQueue::resolve_snapshot`]).
//!
//! Invariant: a record that the latest snapshot on disk names is never settled. A message that
//! leaves the queue is only *released*; released records are settled once a later snapshot,
//! which no longer names them, is on disk ([`BodyStore::settle_released`]). After the queue is
//! restored from a snapshot, every record it does not name is settled
//! ([`BodyStore::keep_only`]): those were written after that snapshot (the log applied after it
//! writes them again) or left the queue before it.

use crate::message::{decode_from_store, encode_for_store, MessageRef};
use std::collections::BTreeSet;
use std::io;
use std::path::Path;
use std::sync::Arc;
use warren_store::{Backend, LogConfig, SegmentLog};

/// A member's store of paged message bodies; see the module's documentation.
#[derive(Debug)]
pub struct BodyStore {
    log: SegmentLog,
    /// Records of messages that left the queue, to settle once a snapshot without them is on
    /// disk.
    released: Vec<u64>,
    scratch: Vec<u8>,
}

/// A store shared by the instances of one member's machine (a member started again in the same
/// process takes the same store, never a second writer on its files).
pub type SharedBodyStore = Arc<parking_lot::Mutex<BodyStore>>;

impl BodyStore {
    /// Opens (creating if need be) the store in `dir`. What it held is kept until the queue is
    /// restored ([`BodyStore::keep_only`]).
    pub fn open(backend: Arc<dyn Backend>, dir: &Path) -> io::Result<BodyStore> {
        let (log, _) = SegmentLog::open(backend, dir, LogConfig::default())?;
        Ok(BodyStore { log, released: Vec::new(), scratch: Vec::new() })
    }

    /// As [`BodyStore::open`], shared.
    pub fn open_shared(backend: Arc<dyn Backend>, dir: &Path) -> io::Result<SharedBodyStore> {
        Ok(Arc::new(parking_lot::Mutex::new(BodyStore::open(backend, dir)?)))
    }

    /// Writes a message (not synced: [`BodyStore::sync`] before a snapshot names it); returns
    /// its seq.
    pub fn put(&mut self, msg: &MessageRef) -> io::Result<u64> {
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        encode_for_store(msg, None, &mut scratch);
        let seq = self.log.append(&scratch, true);
        self.scratch = scratch;
        seq
    }

    /// Reads back the message written under `seq`.
    pub fn get(&mut self, seq: u64) -> io::Result<MessageRef> {
        let records = self.log.read(seq, 1, 1)?;
        let missing = || io::Error::new(io::ErrorKind::NotFound, format!("message record {seq} is not in the store"));
        let record = records.into_iter().next().filter(|r| r.seq == seq).ok_or_else(missing)?;
        let (msg, _) = decode_from_store(record.payload).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidData, format!("message record {seq} does not decode"))
        })?;
        Ok(msg)
    }

    /// The message under `seq` left the queue: its record goes once a snapshot without it is on
    /// disk.
    pub fn release(&mut self, seq: u64) {
        self.released.push(seq);
    }

    /// Makes every record written so far durable (before a snapshot naming them is written).
    pub fn sync(&mut self) -> io::Result<()> {
        for handle in self.log.pending_sync() {
            handle.sync()?;
        }
        Ok(())
    }

    /// A snapshot taken after every release so far is on disk: their records go.
    pub fn settle_released(&mut self) {
        for seq in std::mem::take(&mut self.released) {
            // A settle that cannot be written now is written again later by the log.
            let _ = self.log.settle(seq);
        }
    }

    /// The queue was restored from a snapshot naming `live`: every other record goes, and
    /// nothing is waiting to be released any more.
    pub fn keep_only(&mut self, live: &BTreeSet<u64>) {
        self.released.clear();
        let mut from = 0;
        for &seq in live {
            let _ = self.log.settle_range(from, seq);
            from = seq + 1;
        }
        let _ = self.log.settle_range(from, self.log.next_seq());
    }

    /// Records of messages that left the queue, waiting for a snapshot to go.
    pub fn releasing(&self) -> usize {
        self.released.len()
    }

    /// Records held (written and not settled).
    pub fn records(&self) -> u64 {
        self.log.unsettled()
    }

    /// Bytes the store takes on disk.
    pub fn disk_bytes(&self) -> u64 {
        self.log.disk_bytes()
    }

    /// Deletes the store and its files (the queue was deleted).
    pub fn destroy(self) -> io::Result<()> {
        self.log.destroy()
    }
}
