//! A queue: ready messages in order, the consumers attached, and counters.
//!
//! Every message a queue accepts is appended to its log (`warren_store::SegmentLog`); the log
//! seq is the message's place in the queue. The newest ready messages are also held in memory
//! up to a budget ([`QUEUE_MEMORY_MESSAGES_MAX`], [`QUEUE_MEMORY_BYTES_MAX`]); past it, ready
//! messages live on disk only and are read back in order, a batch at a time, as the memory
//! window drains. So a backlog costs no memory per message.
//!
//! Invariants: `ready` holds ready messages with seq < `disk_from`, in seq order; the
//! `disk_count` unsettled records from `disk_from` on are ready and on disk only. A message is
//! in `ready`, on disk only, or unacked on exactly one channel (counted in `unacked`), never
//! two of these. Requeued messages go back to their place by seq.

use crate::message::{decode_from_store, encode_for_store, MessageRef};
use crate::ConnId;
use std::collections::VecDeque;
use std::io;
use warren_amqp::{FieldTable, ShortStr};
use warren_store::{Recovered, SegmentLog, SyncHandle};

/// Ready messages a queue holds in memory before it keeps new ones on disk only. Enough to
/// keep consumers fed between refills; small enough that many queues stay cheap.
pub const QUEUE_MEMORY_MESSAGES_MAX: usize = 4096;
/// Bytes of ready message bodies a queue holds in memory, likewise.
pub const QUEUE_MEMORY_BYTES_MAX: usize = 4 * 1024 * 1024;
/// How much one refill reads back from disk.
const REFILL_RECORDS: usize = 1024;
const REFILL_BYTES: usize = 1024 * 1024;

#[derive(Debug, Clone)]
pub struct Queued {
    pub seq: u64,
    pub msg: MessageRef,
    pub redelivered: bool,
}

/// Which consumer: connection, channel and tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerKey {
    pub conn: ConnId,
    pub channel: u16,
    pub tag: ShortStr,
}

#[derive(Debug)]
pub struct Queue {
    pub name: ShortStr,
    pub durable: bool,
    pub exclusive_owner: Option<ConnId>,
    pub auto_delete: bool,
    pub arguments: FieldTable,
    log: SegmentLog,
    ready: VecDeque<Queued>,
    ready_bytes: usize,
    disk_from: u64,
    disk_count: u64,
    /// Recovered messages up to this seq were delivered before the restart.
    redelivered_through: Option<u64>,
    pub unacked: usize,
    pub consumers: Vec<ConsumerKey>,
    /// Index into `consumers` where the next round-robin search starts.
    pub rr: usize,
    /// An auto-delete queue is deleted when its last consumer goes, but only once it had one.
    pub had_consumer: bool,
    /// Set while a consumer holds the queue with basic.consume exclusive=true.
    pub exclusive_consumer: bool,
    /// Whether appends since the last sync need an fsync before confirming.
    pub dirty: bool,
    scratch: Vec<u8>,
}

impl Queue {
    /// A queue over `log`; `recovered` says what the log held when opened (None for a new one).
    pub fn new(
        name: ShortStr,
        durable: bool,
        exclusive_owner: Option<ConnId>,
        auto_delete: bool,
        arguments: FieldTable,
        log: SegmentLog,
        recovered: Option<&Recovered>,
    ) -> Self {
        let disk_count = recovered.map_or(0, |r| r.unsettled);
        let disk_from = if disk_count > 0 { 0 } else { log.next_seq() };
        Queue {
            name,
            durable,
            exclusive_owner,
            auto_delete,
            arguments,
            log,
            ready: VecDeque::new(),
            ready_bytes: 0,
            disk_from,
            disk_count,
            redelivered_through: recovered.and_then(|r| r.delivered_through),
            unacked: 0,
            consumers: Vec::new(),
            rr: 0,
            had_consumer: false,
            exclusive_consumer: false,
            dirty: false,
            scratch: Vec::new(),
        }
    }

    pub fn message_count(&self) -> u32 {
        (self.ready.len() as u64 + self.disk_count).min(u64::from(u32::MAX)) as u32
    }

    pub fn consumer_count(&self) -> u32 {
        self.consumers.len() as u32
    }

    pub fn is_empty(&self) -> bool {
        self.ready.is_empty() && self.disk_count == 0
    }

    /// Appends a message. Returns true when it must reach the disk before it is confirmed
    /// (a persistent message in a durable queue).
    pub fn push(&mut self, msg: MessageRef) -> io::Result<bool> {
        let persistent = self.durable && msg.properties.is_persistent();
        encode_for_store(&msg, &mut self.scratch);
        let seq = self.log.append(&self.scratch, persistent)?;
        if persistent {
            self.dirty = true;
        }
        let fits = self.disk_count == 0
            && self.ready.len() < QUEUE_MEMORY_MESSAGES_MAX
            && self.ready_bytes + msg.body.len() <= QUEUE_MEMORY_BYTES_MAX;
        if fits {
            self.ready_bytes += msg.body.len();
            self.ready.push_back(Queued { seq, msg, redelivered: false });
            self.disk_from = seq + 1;
        } else {
            if self.disk_count == 0 {
                self.disk_from = seq;
            }
            self.disk_count += 1;
        }
        Ok(persistent)
    }

    /// Takes the next ready message, reading back from disk when the memory window is empty.
    pub fn pop(&mut self) -> io::Result<Option<Queued>> {
        if self.ready.is_empty() && self.disk_count > 0 {
            self.refill()?;
        }
        let Some(q) = self.ready.pop_front() else { return Ok(None) };
        self.ready_bytes -= q.msg.body.len();
        Ok(Some(q))
    }

    fn refill(&mut self) -> io::Result<()> {
        let records = self.log.read(self.disk_from, REFILL_RECORDS, REFILL_BYTES)?;
        if records.is_empty() {
            // The log holds fewer unsettled records than we counted (a corrupt segment was
            // skipped at recovery): nothing more to read.
            self.disk_count = 0;
            self.disk_from = self.log.next_seq();
            return Ok(());
        }
        for r in records {
            self.disk_count = self.disk_count.saturating_sub(1);
            self.disk_from = r.seq + 1;
            match decode_from_store(r.payload) {
                Some(msg) => {
                    let redelivered = self.redelivered_through.is_some_and(|t| r.seq <= t);
                    self.ready_bytes += msg.body.len();
                    self.ready.push_back(Queued { seq: r.seq, msg, redelivered });
                }
                // Checksummed, so this is a record another version wrote: drop it, loudly in
                // the counters (settled so that its segment can go).
                None => self.log.settle(r.seq)?,
            }
        }
        if self.disk_count == 0 {
            self.disk_from = self.log.next_seq();
        }
        Ok(())
    }

    /// Puts a message taken by a consumer back at its place, marked redelivered.
    pub fn requeue(&mut self, seq: u64, msg: MessageRef) {
        debug_assert!(self.unacked > 0, "requeue of a message the queue does not count as unacked");
        debug_assert!(seq < self.disk_from, "a requeued message was read into memory before");
        self.unacked = self.unacked.saturating_sub(1);
        self.ready_bytes += msg.body.len();
        let at = self.ready.partition_point(|q| q.seq < seq);
        self.ready.insert(at, Queued { seq, msg, redelivered: true });
    }

    /// A delivered message was acked or dropped: it leaves the log.
    pub fn settle(&mut self, seq: u64) -> io::Result<()> {
        self.log.settle(seq)
    }

    /// Notes a delivery, so a restart marks the message redelivered.
    pub fn mark_delivered(&mut self, seq: u64) {
        if self.durable {
            self.log.mark_delivered(seq);
        }
    }

    /// Drops every ready message; returns how many there were.
    pub fn purge(&mut self) -> io::Result<u32> {
        let n = self.message_count();
        for q in self.ready.drain(..) {
            self.log.settle(q.seq)?;
        }
        if self.disk_count > 0 {
            self.log.settle_range(self.disk_from, self.log.next_seq())?;
        }
        self.ready_bytes = 0;
        self.disk_count = 0;
        self.disk_from = self.log.next_seq();
        Ok(n)
    }

    pub fn remove_consumer(&mut self, key: &ConsumerKey) -> bool {
        let Some(pos) = self.consumers.iter().position(|c| c == key) else { return false };
        self.consumers.remove(pos);
        if self.rr > pos {
            self.rr -= 1;
        }
        self.exclusive_consumer = false;
        true
    }

    /// Files written since the last call, to be synced (see `Broker::begin_sync`).
    pub fn pending_sync(&mut self) -> Vec<std::sync::Arc<dyn SyncHandle>> {
        self.dirty = false;
        self.log.pending_sync()
    }

    /// Deletes the queue's log from disk.
    pub fn destroy(self) -> io::Result<()> {
        self.log.destroy()
    }
}
