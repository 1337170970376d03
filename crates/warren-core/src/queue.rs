//! A queue: ready messages in order, the consumers attached, and counters.
//!
//! Messages live in lanes, one per priority level in use (a queue without `x-max-priority` has
//! the single lane 0). Every message a lane accepts is appended to the lane's log
//! (`warren_store::SegmentLog`); the log seq is the message's place in its lane. The newest
//! ready messages are also held in memory up to a budget per queue
//! ([`QUEUE_MEMORY_MESSAGES_MAX`], [`QUEUE_MEMORY_BYTES_MAX`]); past it, ready messages live on
//! disk only and are read back in order, a batch at a time, as the memory window drains. So a
//! backlog costs no memory per message.
//!
//! Invariants, per lane: `ready` holds ready messages with seq < `disk_from`, in seq order; the
//! `disk_count` unsettled records from `disk_from` on are ready and on disk only. A message is
//! in `ready`, on disk only, or unacked on exactly one channel (counted in `unacked`), never two
//! of these. Requeued messages go back to their lane at their place by seq. Higher lanes are
//! delivered first.

use crate::args::{Overflow, QueueArgs, QueueType};
use crate::credit::{ChannelCredit, ConsumerCredit, Outbound, Unacked};
use crate::message::{decode_returned_from_store, encode_returned_for_store, MessageRef};
use crate::ConnId;
use std::collections::VecDeque;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use warren_amqp::{FieldTable, ShortStr};
use warren_store::{Backend, LogConfig, Recovered, SegmentLog, SyncHandle};

/// Ready messages a queue holds in memory before it keeps new ones on disk only. Enough to
/// keep consumers fed between refills; small enough that many queues stay cheap.
pub const QUEUE_MEMORY_MESSAGES_MAX: usize = 4096;
/// Bytes of ready message bodies a queue holds in memory, likewise.
pub const QUEUE_MEMORY_BYTES_MAX: usize = 4 * 1024 * 1024;
/// How much one refill reads back from disk.
const REFILL_RECORDS: usize = 1024;
const REFILL_BYTES: usize = 1024 * 1024;

/// A ready (or delivered and unacked) message and what the queue knows of it.
#[derive(Debug, Clone)]
pub struct Queued {
    /// Priority lane.
    pub lane: u8,
    /// The record's seq in the lane's log, when `stored`.
    pub seq: u64,
    /// False for a transient message kept in memory only (see [`Queue::push`]).
    pub stored: bool,
    /// Its place in the lane: taken when it entered memory (pushed or read back), so it orders
    /// memory-only and stored messages alike.
    pub order: u64,
    pub msg: MessageRef,
    pub redelivered: bool,
    /// Absolute expiry, ms since the Unix epoch.
    pub expires_at: Option<u64>,
    /// Times it was delivered and returned (quorum queues' x-delivery-count).
    pub returns: u32,
}

impl Queued {
    /// A message that never entered a queue (refused or dropped on arrival), for dead-lettering.
    pub fn unqueued(lane: u8, msg: MessageRef, expires_at: Option<u64>) -> Self {
        Queued { lane, seq: 0, stored: false, order: 0, msg, redelivered: false, expires_at, returns: 0 }
    }
}

/// Which consumer (connection, channel and tag), and what the queue reads before it hands the
/// consumer a message, shared with its channel and connection (so the queue looks neither up).
#[derive(Debug, Clone)]
pub struct ConsumerKey {
    pub conn: ConnId,
    pub channel: u16,
    pub tag: ShortStr,
    /// Consumer priority (`x-priority`); higher ones are served first.
    pub priority: i64,
    pub credit: Arc<ConsumerCredit>,
    pub channel_credit: Arc<ChannelCredit>,
    pub outbound: Arc<Outbound>,
}

impl ConsumerKey {
    /// The consumer can take a message now: its connection has room to write, its channel is
    /// open, and neither its own prefetch nor its channel's (prefetch and unacked cap) is used
    /// up. A no-ack consumer is held back only by its channel's prefetch, as by RabbitMQ's
    /// channel limiter.
    pub fn can_take(&self) -> bool {
        self.outbound.writable()
            && self.channel_credit.is_open()
            && if self.credit.no_ack {
                !self.channel_credit.prefetch_reached()
            } else {
                self.credit.has_room() && self.channel_credit.has_room()
            }
    }
}

#[derive(Debug)]
struct Lane {
    log: SegmentLog,
    ready: VecDeque<Queued>,
    disk_from: u64,
    disk_count: u64,
    /// Recovered messages up to this seq were delivered before the restart.
    redelivered_through: Option<u64>,
    /// The `order` the next message entering memory gets.
    next_order: u64,
}

impl Lane {
    fn new(log: SegmentLog, recovered: Option<&Recovered>) -> Self {
        let disk_count = recovered.map_or(0, |r| r.unsettled);
        let disk_from = if disk_count > 0 { 0 } else { log.next_seq() };
        Lane {
            log,
            ready: VecDeque::new(),
            disk_from,
            disk_count,
            redelivered_through: recovered.and_then(|r| r.delivered_through),
            next_order: 0,
        }
    }

    fn is_empty(&self) -> bool {
        self.ready.is_empty() && self.disk_count == 0
    }
}

/// Of `n` consumers in priority order (highest first), the first of the highest priority that
/// `can_take`, searching each run of equal priority round-robin from `rr` (when `rr` falls in
/// that run; from its start otherwise). Classic and quorum queues choose alike.
pub(crate) fn pick_by_priority(
    n: usize,
    rr: usize,
    priority: impl Fn(usize) -> i64,
    can_take: impl Fn(usize) -> bool,
) -> Option<usize> {
    let mut start = 0;
    while start < n {
        let p = priority(start);
        let end = (start..n).find(|&i| priority(i) != p).unwrap_or(n);
        let len = end - start;
        let from = if (start..end).contains(&rr) { rr - start } else { 0 };
        if let Some(idx) = (0..len).map(|i| start + (from + i) % len).find(|&idx| can_take(idx)) {
            return Some(idx);
        }
        start = end;
    }
    None
}

/// Where a queue's lanes keep their logs.
#[derive(Debug, Clone)]
pub struct QueueStore {
    pub backend: Arc<dyn Backend>,
    pub dir: PathBuf,
    pub config: LogConfig,
}

impl QueueStore {
    /// Lane 0 lives in the queue's directory, lane p in its subdirectory `p<p>`.
    fn lane_dir(&self, lane: u8) -> PathBuf {
        if lane == 0 {
            self.dir.clone()
        } else {
            self.dir.join(format!("p{lane}"))
        }
    }

    fn open(&self, lane: u8) -> io::Result<(SegmentLog, Recovered)> {
        SegmentLog::open(self.backend.clone(), &self.lane_dir(lane), self.config.clone())
    }
}

/// What a publish did to a queue.
#[derive(Debug, Default)]
pub struct PushOutcome {
    /// The message must reach the disk before it is confirmed.
    pub needs_sync: bool,
    /// The queue refused it (reject-publish overflow).
    pub rejected: bool,
    /// Messages that left the queue to make room (drop-head), to dead-letter as `maxlen`.
    pub dropped: Vec<Queued>,
    /// Not enqueued: another message in the queue has its deduplication key.
    pub duplicate: bool,
    /// Enqueued on disk only: the queue's memory window is full.
    pub paged: bool,
    /// Bytes appended to the log (the disk alarm counts them against the free space).
    pub stored_bytes: u64,
}

/// Where [`Queue::place`] put a message.
struct Placed {
    /// Bytes appended to the log.
    stored_bytes: u64,
    /// On disk only: the memory window was full.
    paged: bool,
    /// It must reach the disk before it is confirmed.
    persistent: bool,
}

/// What a dispatch round did besides its deliveries, for the queue's owner to act on.
#[derive(Debug, Default)]
pub struct Dispatched {
    /// Expired messages met at the head, settled here, to dead-letter.
    pub expired: Vec<Queued>,
    /// Something left the log: a durable queue's store has writes to sync.
    pub settled: bool,
    /// Storage failures, to log.
    pub errors: Vec<String>,
    /// Deliveries made: redeliveries among them, and to no-ack and to manual-ack consumers.
    pub redelivered: u64,
    pub auto_ack: u64,
    pub manual_ack: u64,
}

/// How many delivery ids a queue takes from the broker's counter at a time.
const DELIVERY_ID_BLOCK: u64 = 1024;

/// A quorum queue served by its Raft group (see [`Queue::replica`]), as this node's replica
/// last saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Replica {
    /// The group's id.
    pub group: u64,
    /// Ready messages, as of the last entry this node applied.
    pub ready: u64,
    /// Messages delivered and not yet settled.
    pub unacked: u64,
    /// Not a quorum queue's group but a classic queue's home on another node (`group` is the
    /// queue's placement there): its deliveries carry no `x-delivery-count`, and it
    /// dead-letters at home.
    pub forwarded: bool,
}

#[derive(Debug)]
pub struct Queue {
    pub name: ShortStr,
    pub durable: bool,
    pub exclusive_owner: Option<ConnId>,
    pub auto_delete: bool,
    pub arguments: FieldTable,
    pub args: QueueArgs,
    store: QueueStore,
    lanes: Vec<Option<Lane>>,
    /// Ready messages and their body bytes, in memory and on disk.
    ready_count: u64,
    ready_bytes: u64,
    /// Ready messages and bytes held in memory.
    mem_count: usize,
    mem_bytes: usize,
    /// Messages delivered to consumers (or fetched with basic.get) and not yet settled, by
    /// delivery id: an ack settles one, a reject or a closed channel returns it. The channels
    /// keep only which delivery tag names which id (see [`Queue::check_out`]).
    checked_out: crate::hash::HashMap<u64, Queued>,
    /// Delivery ids this queue took from the broker's counter and has not used yet: it takes
    /// them [`DELIVERY_ID_BLOCK`] at a time, since each take writes a cache line that every
    /// delivering thread shares.
    ids: std::ops::Range<u64>,
    /// In priority order (highest first; among equals, in the order they came).
    consumers: Vec<ConsumerKey>,
    /// Index into `consumers` where the next round-robin search starts.
    rr: usize,
    /// An auto-delete queue is deleted when its last consumer goes, but only once it had one.
    had_consumer: bool,
    /// Set while a consumer holds the queue with basic.consume exclusive=true.
    exclusive_consumer: bool,
    /// When the queue was last used (consumer, get, declare), for `x-expires`.
    pub last_used_ms: u64,
    /// Some message here may carry an expiry: the broker checks the head over time.
    pub may_expire: bool,
    /// The policy and operator policy applied, by name.
    pub policy: Option<String>,
    pub operator_policy: Option<String>,
    /// Deduplication keys of the messages held (queues with `x-message-deduplication`). Not
    /// rebuilt after a restart: recovered messages do not block duplicates.
    keys: Option<crate::dedup::QueueKeys>,
    scratch: Vec<u8>,
    /// Under a memory alarm: new messages go to disk, none is kept in memory.
    pub memory_pressure: bool,
    /// Message counts since the queue was opened, for the management API's rates.
    pub counters: QueueCounters,
    /// Names the queue's store writes in a sync round (see `Broker::begin_sync`).
    pub sync_id: u32,
    /// The storage trouble last reported for this queue (logged once, until it clears).
    pub storage_reported: Option<String>,
    /// In a cluster: the quorum queue is its Raft group's, served through it; this node's
    /// local queue holds no messages and only keeps its consumers for the broker's bookkeeping.
    pub replica: Option<Replica>,
}

/// Per-queue message counters (plain increments on the hot path; the management API turns
/// them into rates by sampling).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueCounters {
    /// Messages routed to the queue.
    pub publish: u64,
    /// Messages delivered to consumers or fetched with basic.get.
    pub deliver_get: u64,
    /// Deliveries that were redeliveries.
    pub redeliver: u64,
    /// Deliveries acknowledged by a client.
    pub ack: u64,
}

impl Queue {
    /// Opens (or recovers) a queue's lanes in `store`.
    #[allow(clippy::too_many_arguments)]
    pub fn open(
        name: ShortStr,
        durable: bool,
        exclusive_owner: Option<ConnId>,
        auto_delete: bool,
        arguments: FieldTable,
        args: QueueArgs,
        store: QueueStore,
        now_ms: u64,
    ) -> io::Result<(Self, Vec<Recovered>)> {
        let lane_count = usize::from(args.max_priority.unwrap_or(0)) + 1;
        let args_have_ttl = args.message_ttl_ms.is_some();
        let args_dedup = args.deduplication;
        let mut lanes: Vec<Option<Lane>> = (0..lane_count).map(|_| None).collect();
        let mut recovered_all = Vec::new();
        let mut ready_count = 0;
        for (i, slot) in lanes.iter_mut().enumerate() {
            let lane = i as u8;
            // Lane 0 always exists; higher lanes only where a log was left.
            if lane > 0 && store.backend.list(&store.lane_dir(lane))?.is_empty() {
                continue;
            }
            let (log, recovered) = store.open(lane)?;
            ready_count += recovered.unsettled;
            *slot = Some(Lane::new(log, Some(&recovered)));
            recovered_all.push(recovered);
        }
        let q = Queue {
            name,
            durable,
            exclusive_owner,
            auto_delete,
            arguments,
            args,
            store,
            lanes,
            ready_count,
            // Body bytes of recovered messages are learnt as they are read back.
            ready_bytes: 0,
            mem_count: 0,
            mem_bytes: 0,
            checked_out: Default::default(),
            ids: 0..0,
            consumers: Vec::new(),
            rr: 0,
            had_consumer: false,
            exclusive_consumer: false,
            last_used_ms: now_ms,
            may_expire: args_have_ttl || ready_count > 0,
            keys: args_dedup.then(Default::default),
            policy: None,
            operator_policy: None,
            scratch: Vec::new(),
            memory_pressure: false,
            counters: QueueCounters::default(),
            sync_id: 0,
            storage_reported: None,
            replica: None,
        };
        Ok((q, recovered_all))
    }

    pub fn message_count(&self) -> u32 {
        let ready = self.replica.map_or(self.ready_count, |r| r.ready);
        ready.min(u64::from(u32::MAX)) as u32
    }

    /// Messages delivered and not yet settled.
    pub fn unacked(&self) -> usize {
        self.replica.map_or(self.checked_out.len(), |r| usize::try_from(r.unacked).unwrap_or(usize::MAX))
    }

    /// A message taken with [`Queue::pop`] was delivered and waits for an ack: the queue keeps
    /// it under `id` (unique for the life of the broker) until [`Queue::take_checked_out`].
    pub fn check_out(&mut self, id: u64, m: Queued) {
        let before = self.checked_out.insert(id, m);
        debug_assert!(before.is_none(), "delivery id {id} checked out twice");
    }

    /// The delivered message `id` names, now settled or to be returned; None when the queue
    /// does not hold it (it was deleted and declared again, or the id was taken before).
    pub fn take_checked_out(&mut self, id: u64) -> Option<Queued> {
        self.checked_out.remove(&id)
    }

    /// The consumer the next message goes to: the first in priority order (then round-robin
    /// from `rr` among equals) whose connection, channel and prefetch allow another delivery.
    /// With a single active consumer only the first consumer is considered.
    pub fn choose_consumer(&self) -> Option<usize> {
        let can_take = |idx: usize| self.consumers[idx].can_take();
        if self.args.single_active_consumer {
            return (!self.consumers.is_empty() && can_take(0)).then_some(0);
        }
        pick_by_priority(self.consumers.len(), self.rr, |i| self.consumers[i].priority, can_take)
    }

    /// The message as delivered: quorum queues tell how often it came back
    /// (`x-delivery-count`).
    pub fn delivered_message(&self, m: &Queued) -> MessageRef {
        self.with_delivery_count(m, false)
    }

    /// The message as basic.get hands it out: from a quorum queue it always carries
    /// `x-delivery-count`, 0 on a first delivery, as RabbitMQ 3.10 does (a consumer's delivery
    /// carries it only once the message came back).
    pub fn got_message(&self, m: &Queued) -> MessageRef {
        self.with_delivery_count(m, true)
    }

    fn with_delivery_count(&self, m: &Queued, even_zero: bool) -> MessageRef {
        if self.args.queue_type != QueueType::Quorum || (m.returns == 0 && !even_zero) {
            return m.msg.clone();
        }
        m.msg.with_delivery_count(m.returns)
    }

    /// Hands ready messages to the consumers: to the highest-priority consumers that can take
    /// more (round-robin among equals), within their prefetch limits and while their
    /// connections can take more; with a single active consumer, only to the first. Expired
    /// messages met at the head are settled and handed back for dead-lettering instead.
    ///
    /// The queue reads nothing but its own state and its consumers' shared credit: the
    /// consumer's channel hands out the delivery tag and records the delivery
    /// ([`ChannelCredit::deliver_reserved`], which hands it to `deliver` under the channel's lock); a delivery that waits for an ack stays here, checked out
    /// under an id taken from `next_id` (a block at a time). Each delivery goes to `deliver` as (connection, channel,
    /// basic.deliver, message).
    pub fn dispatch(
        &mut self,
        now_ms: u64,
        next_id: &std::sync::atomic::AtomicU64,
        mut deliver: impl FnMut(ConnId, u16, crate::broker::Out),
    ) -> Dispatched {
        let mut done = Dispatched::default();
        while !self.is_empty() && !self.consumers.is_empty() {
            let Some(idx) = self.choose_consumer() else { break };
            let no_ack = self.consumers[idx].credit.no_ack;
            // The channel's room is taken before the message: another queue may be delivering
            // to the same channel at this moment (its prefetch is shared).
            if !no_ack && !self.consumers[idx].channel_credit.try_reserve() {
                continue;
            }
            let unreserve = |q: &Self| {
                if !no_ack {
                    q.consumers[idx].channel_credit.unreserve();
                }
            };
            let m = match self.pop() {
                Ok(Some(m)) => m,
                Ok(None) => {
                    unreserve(self);
                    break;
                }
                Err(e) => {
                    unreserve(self);
                    done.errors.push(format!("cannot read queue '{}' from disk: {e}", self.name));
                    break;
                }
            };
            // Expired once its deadline is in the past: a TTL of 0 still reaches a consumer
            // that is there at once, as in RabbitMQ.
            if m.expires_at.is_some_and(|t| t < now_ms) {
                unreserve(self);
                if let Err(e) = self.settle(&m) {
                    done.errors.push(format!("cannot settle an expired message of queue '{}': {e}", self.name));
                }
                done.settled = true;
                done.expired.push(m);
                continue;
            }
            self.rr = idx + 1;
            self.mark_delivered(&m);
            let msg = self.delivered_message(&m);
            let redelivered = m.redelivered;
            done.redelivered += u64::from(redelivered);
            let unacked = if no_ack {
                done.auto_ack += 1;
                // Acknowledged on delivery: it leaves the log now.
                if let Err(e) = self.settle(&m) {
                    done.errors.push(format!("cannot settle a message of queue '{}': {e}", self.name));
                }
                done.settled = true;
                None
            } else {
                done.manual_ack += 1;
                let id = match self.ids.next() {
                    Some(id) => id,
                    None => {
                        let start = next_id.fetch_add(DELIVERY_ID_BLOCK, std::sync::atomic::Ordering::Relaxed);
                        self.ids = start + 1..start + DELIVERY_ID_BLOCK;
                        start
                    }
                };
                let key = &self.consumers[idx];
                key.credit.delivered();
                let consumer = Some(key.tag.clone());
                self.check_out(id, m);
                Some(Unacked { delivery_tag: 0, queue: self.name.clone(), id, consumer, delivered_at_ms: now_ms })
            };
            let key = &self.consumers[idx];
            key.outbound.add(msg.wire_size());
            key.channel_credit.deliver_reserved(unacked, |delivery_tag| {
                let o = crate::broker::Out::Deliver {
                    channel: key.channel,
                    consumer_tag: key.tag.clone(),
                    delivery_tag,
                    redelivered,
                    msg,
                };
                deliver(key.conn, key.channel, o);
            });
        }
        done
    }

    pub fn consumer_count(&self) -> u32 {
        self.consumers.len() as u32
    }

    pub fn is_empty(&self) -> bool {
        self.ready_count == 0
    }

    fn lane_of(&self, msg: &MessageRef) -> u8 {
        match self.args.max_priority {
            None => 0,
            Some(max) => msg.properties.priority.unwrap_or(0).min(max),
        }
    }

    fn lane_mut(&mut self, lane: u8) -> io::Result<&mut Lane> {
        let slot = &mut self.lanes[usize::from(lane)];
        if slot.is_none() {
            let (log, _) = self.store.open(lane)?;
            *slot = Some(Lane::new(log, None));
        }
        // Just filled when it was empty.
        slot.as_mut().ok_or_else(|| io::Error::other("lane vanished"))
    }

    /// The expiry a message gets here: the lower of the queue's and its own TTL.
    pub fn expiry_for(&self, msg: &MessageRef, now_ms: u64) -> Option<u64> {
        let own = msg.properties.expiration.as_ref().and_then(|e| e.parse::<u64>().ok());
        let ttl = match (self.args.message_ttl_ms, own) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        ttl.map(|t| now_ms.saturating_add(t))
    }

    /// True when one more message of `len` body bytes would exceed a length limit.
    fn over_limit_with(&self, len: u64) -> bool {
        self.args.max_length.is_some_and(|m| self.ready_count + 1 > m)
            || self.args.max_length_bytes.is_some_and(|m| self.ready_bytes + len > m)
    }

    /// Appends a message, applying the queue's length limit.
    pub fn push(&mut self, msg: MessageRef, now_ms: u64) -> io::Result<PushOutcome> {
        let mut outcome = PushOutcome::default();
        let key = match &self.keys {
            Some(keys) => match crate::dedup::key_of(msg.properties.headers.as_ref()) {
                Some(k) if keys.contains(&k) => {
                    outcome.duplicate = true;
                    return Ok(outcome);
                }
                k => k,
            },
            None => None,
        };
        self.counters.publish += 1;
        let len = msg.body.len() as u64;
        if self.over_limit_with(len) {
            match self.args.overflow {
                Overflow::RejectPublish | Overflow::RejectPublishDlx => {
                    outcome.rejected = true;
                    return Ok(outcome);
                }
                Overflow::DropHead => {
                    while self.over_limit_with(len) {
                        match self.pop()? {
                            Some(q) => {
                                self.settle(&q)?;
                                outcome.dropped.push(q);
                            }
                            None => break,
                        }
                    }
                    // A limit of 0 (or a body over the byte limit) leaves no room at all: the
                    // new message itself is the head that goes.
                    if self.over_limit_with(len) {
                        let expires_at = self.expiry_for(&msg, now_ms);
                        let lane = self.lane_of(&msg);
                        outcome.dropped.push(Queued::unqueued(lane, msg, expires_at));
                        return Ok(outcome);
                    }
                }
            }
        }
        let expires_at = self.expiry_for(&msg, now_ms);
        self.may_expire |= expires_at.is_some();
        let placed = self.place(msg, expires_at, 0, key)?;
        outcome.stored_bytes = placed.stored_bytes;
        outcome.paged = placed.paged;
        outcome.needs_sync = placed.persistent;
        Ok(outcome)
    }

    /// Puts a message at the tail of its lane: in memory while the window has room and
    /// nothing of the lane is on disk only, else on disk only; in the lane's log when it is
    /// persistent, paged or keyed for deduplication.
    fn place(
        &mut self,
        msg: MessageRef,
        expires_at: Option<u64>,
        returns: u32,
        key: Option<Vec<u8>>,
    ) -> io::Result<Placed> {
        let persistent = self.durable && msg.properties.is_persistent();
        let len = msg.body.len() as u64;
        let lane_no = self.lane_of(&msg);
        let fits_memory = !self.memory_pressure
            && self.mem_count < QUEUE_MEMORY_MESSAGES_MAX
            && self.mem_bytes + msg.body.len() <= QUEUE_MEMORY_BYTES_MAX;
        let keyed = self.keys.is_some();
        let lane = self.lane_mut(lane_no)?;
        let in_memory = fits_memory && lane.disk_count == 0;
        // A transient message that fits in memory never touches the disk: it could not survive
        // a restart anyway. Deduplicating queues store everything (their keys name log seqs).
        let stored = persistent || !in_memory || keyed;
        let mut stored_bytes = 0;
        let seq = if stored {
            let mut scratch = std::mem::take(&mut self.scratch);
            encode_returned_for_store(&msg, expires_at, returns, &mut scratch);
            let lane = self.lane_mut(lane_no)?;
            let appended = lane.log.append(&scratch, persistent);
            stored_bytes = (scratch.len() + warren_store::format::REC_HEADER_LEN) as u64;
            self.scratch = scratch;
            appended?
        } else {
            lane.log.next_seq()
        };
        if let (Some(keys), Some(key)) = (self.keys.as_mut(), key) {
            keys.insert(lane_no, seq, key);
        }
        let lane = self.lane_mut(lane_no)?;
        if in_memory {
            let order = lane.next_order;
            lane.next_order += 1;
            let body_len = msg.body.len();
            lane.ready.push_back(Queued {
                lane: lane_no,
                seq,
                stored,
                order,
                msg,
                redelivered: returns > 0,
                expires_at,
                returns,
            });
            lane.disk_from = lane.log.next_seq();
            self.mem_count += 1;
            self.mem_bytes += body_len;
        } else {
            if lane.disk_count == 0 {
                lane.disk_from = seq;
            }
            lane.disk_count += 1;
        }
        self.ready_count += 1;
        self.ready_bytes += len;
        Ok(Placed { stored_bytes, paged: !in_memory, persistent })
    }

    /// Puts a message taken back from a consumer at the back of the queue, as a quorum queue
    /// does (RabbitMQ 3.10): appended again at the tail with its delivery count, then its old
    /// record settled. Should the append fail, it goes back to its place instead
    /// ([`Queue::requeue`]) and the error is returned.
    pub fn requeue_to_back(&mut self, mut q: Queued) -> io::Result<()> {
        q.redelivered = true;
        let key = match &self.keys {
            Some(_) => crate::dedup::key_of(q.msg.properties.headers.as_ref()),
            None => None,
        };
        if let Err(e) = self.place(q.msg.clone(), q.expires_at, q.returns.max(1), key) {
            self.requeue(q);
            return Err(e);
        }
        self.settle(&q)
    }

    /// Takes new effective arguments (a policy changed). The priority lanes stay as declared.
    /// Returns the messages a lower length limit pushes out (to dead-letter as `maxlen`).
    pub fn set_args(&mut self, mut args: QueueArgs) -> io::Result<Vec<Queued>> {
        args.max_priority = self.args.max_priority;
        args.queue_type = self.args.queue_type;
        args.deduplication = self.args.deduplication;
        self.may_expire |= args.message_ttl_ms.is_some();
        self.args = args;
        self.trim_to_limit()
    }

    /// Drops messages from the head while the queue is over its length limit; returns them (to
    /// dead-letter as `maxlen`). Used when the limit changes and after requeues: RabbitMQ
    /// applies the limit to requeued messages too, and they are at the head.
    pub fn trim_to_limit(&mut self) -> io::Result<Vec<Queued>> {
        let mut dropped = Vec::new();
        while self.args.max_length.is_some_and(|m| self.ready_count > m)
            || self.args.max_length_bytes.is_some_and(|m| self.ready_bytes > m)
        {
            match self.pop()? {
                Some(q) => {
                    self.settle(&q)?;
                    dropped.push(q);
                }
                None => break,
            }
        }
        Ok(dropped)
    }

    /// The highest lane with ready messages.
    fn top_lane(&self) -> Option<u8> {
        self.lanes
            .iter()
            .enumerate()
            .rev()
            .find(|(_, l)| l.as_ref().is_some_and(|l| !l.is_empty()))
            .map(|(i, _)| i as u8)
    }

    /// Makes sure the head of `lane` is in memory (reading back from disk if needed).
    fn load_head(&mut self, lane_no: u8) -> io::Result<()> {
        let Some(lane) = self.lanes[usize::from(lane_no)].as_mut() else { return Ok(()) };
        if !lane.ready.is_empty() || lane.disk_count == 0 {
            return Ok(());
        }
        let records = lane.log.read(lane.disk_from, REFILL_RECORDS, REFILL_BYTES)?;
        if records.is_empty() {
            // The log holds fewer unsettled records than counted (a corrupt segment was
            // skipped at recovery): nothing more to read.
            self.ready_count = self.ready_count.saturating_sub(lane.disk_count);
            lane.disk_count = 0;
            lane.disk_from = lane.log.next_seq();
            return Ok(());
        }
        for r in records {
            lane.disk_count = lane.disk_count.saturating_sub(1);
            lane.disk_from = r.seq + 1;
            match decode_returned_from_store(r.payload) {
                Some((msg, expires_at, returns)) => {
                    let redelivered = returns > 0 || lane.redelivered_through.is_some_and(|t| r.seq <= t);
                    self.mem_count += 1;
                    self.mem_bytes += msg.body.len();
                    let order = lane.next_order;
                    lane.next_order += 1;
                    lane.ready.push_back(Queued {
                        lane: lane_no,
                        seq: r.seq,
                        stored: true,
                        order,
                        msg,
                        redelivered,
                        expires_at,
                        returns,
                    });
                }
                // Checksummed, so this is a record another version wrote: drop it (settled
                // so that its segment can go).
                None => {
                    self.ready_count = self.ready_count.saturating_sub(1);
                    lane.log.settle(r.seq)?;
                }
            }
        }
        if lane.disk_count == 0 {
            lane.disk_from = lane.log.next_seq();
        }
        Ok(())
    }

    /// Takes the next ready message: highest priority first, FIFO within a priority.
    pub fn pop(&mut self) -> io::Result<Option<Queued>> {
        loop {
            let Some(lane_no) = self.top_lane() else { return Ok(None) };
            self.load_head(lane_no)?;
            let Some(lane) = self.lanes[usize::from(lane_no)].as_mut() else { return Ok(None) };
            let Some(q) = lane.ready.pop_front() else {
                // load_head found nothing readable; the counts were corrected, look again.
                continue;
            };
            self.mem_count -= 1;
            self.mem_bytes -= q.msg.body.len();
            self.ready_count = self.ready_count.saturating_sub(1);
            self.ready_bytes = self.ready_bytes.saturating_sub(q.msg.body.len() as u64);
            return Ok(Some(q));
        }
    }

    /// Takes the head if it has expired by `now_ms` (expiry is applied at the head, as in
    /// RabbitMQ's classic queues).
    pub fn pop_expired(&mut self, now_ms: u64) -> io::Result<Option<Queued>> {
        let Some(lane_no) = self.top_lane() else { return Ok(None) };
        self.load_head(lane_no)?;
        let expired = self.lanes[usize::from(lane_no)]
            .as_ref()
            .and_then(|l| l.ready.front())
            .is_some_and(|q| q.expires_at.is_some_and(|t| t < now_ms));
        if expired {
            self.pop()
        } else {
            Ok(None)
        }
    }

    /// Puts a message taken back from a consumer ([`Queue::take_checked_out`]) at its place,
    /// marked redelivered.
    pub fn requeue(&mut self, mut q: Queued) {
        q.redelivered = true;
        let len = q.msg.body.len();
        let Some(lane) = self.lanes.get_mut(usize::from(q.lane)).and_then(Option::as_mut) else { return };
        debug_assert!(q.order < lane.next_order, "a requeued message was in memory before");
        let at = lane.ready.partition_point(|r| r.order < q.order);
        lane.ready.insert(at, q);
        self.mem_count += 1;
        self.mem_bytes += len;
        self.ready_count += 1;
        self.ready_bytes += len as u64;
    }

    /// A delivered message was acked or dropped: it leaves its lane's log.
    pub fn settle(&mut self, m: &Queued) -> io::Result<()> {
        if !m.stored {
            return Ok(());
        }
        if let Some(keys) = self.keys.as_mut() {
            keys.remove(m.lane, m.seq);
        }
        match self.lanes.get_mut(usize::from(m.lane)).and_then(Option::as_mut) {
            Some(l) => l.log.settle(m.seq),
            None => Ok(()),
        }
    }

    /// Notes a delivery, so a restart marks the message redelivered.
    pub fn mark_delivered(&mut self, m: &Queued) {
        self.counters.deliver_get += 1;
        self.counters.redeliver += u64::from(m.redelivered);
        if self.durable && m.stored {
            if let Some(l) = self.lanes.get_mut(usize::from(m.lane)).and_then(Option::as_mut) {
                l.log.mark_delivered(m.seq);
            }
        }
    }

    /// Drops every ready message; returns how many there were.
    pub fn purge(&mut self) -> io::Result<u32> {
        let n = self.message_count();
        if let Some(keys) = self.keys.as_mut() {
            keys.clear();
        }
        for lane in self.lanes.iter_mut().flatten() {
            for q in lane.ready.drain(..) {
                if q.stored {
                    lane.log.settle(q.seq)?;
                }
            }
            if lane.disk_count > 0 {
                lane.log.settle_range(lane.disk_from, lane.log.next_seq())?;
            }
            lane.disk_count = 0;
            lane.disk_from = lane.log.next_seq();
        }
        self.ready_count = 0;
        self.ready_bytes = 0;
        self.mem_count = 0;
        self.mem_bytes = 0;
        Ok(n)
    }

    pub fn remove_consumer(&mut self, conn: ConnId, channel: u16, tag: &ShortStr) -> bool {
        let Some(pos) = self.consumers.iter().position(|c| c.conn == conn && c.channel == channel && &c.tag == tag)
        else {
            return false;
        };
        self.consumers.remove(pos);
        if self.rr > pos {
            self.rr -= 1;
        }
        self.exclusive_consumer = false;
        true
    }

    /// Adds a consumer, keeping consumers ordered by priority (highest first; among equals, in
    /// the order they came). An exclusive one holds the queue alone until it goes.
    pub fn add_consumer(&mut self, key: ConsumerKey, exclusive: bool) {
        debug_assert!(!self.exclusive_consumer, "a queue held by an exclusive consumer takes no other");
        debug_assert!(!exclusive || self.consumers.is_empty(), "an exclusive consumer comes alone");
        let at = self.consumers.partition_point(|c| c.priority >= key.priority);
        self.consumers.insert(at, key);
        if self.rr > at {
            self.rr += 1;
        }
        self.had_consumer = true;
        self.exclusive_consumer = exclusive;
    }

    /// The consumers, in the order deliveries consider them.
    pub fn consumers(&self) -> &[ConsumerKey] {
        &self.consumers
    }

    /// A consumer holds the queue with basic.consume exclusive=true.
    pub fn has_exclusive_consumer(&self) -> bool {
        self.exclusive_consumer
    }

    /// An auto-delete queue whose last consumer went (it had one): it is deleted now.
    pub fn auto_delete_due(&self) -> bool {
        self.auto_delete && self.had_consumer && self.consumers.is_empty()
    }

    /// Files written since the last call, to be synced (see `Broker::begin_sync`); with
    /// `acks` false, only what makes appends durable (ack files wait for a later call).
    pub fn pending_sync(&mut self, acks: bool) -> Vec<Arc<dyn SyncHandle>> {
        let lanes = self.lanes.iter_mut().flatten();
        if acks {
            lanes.flat_map(|l| l.log.pending_sync()).collect()
        } else {
            lanes.flat_map(|l| l.log.pending_sync_appends()).collect()
        }
    }

    /// Why the queue's storage is degraded (a write or sync failed and was not yet made good),
    /// if it is: publishes that need it are nacked meanwhile, and it heals by itself.
    pub fn storage_trouble(&self) -> Option<&str> {
        self.lanes.iter().flatten().find_map(|l| l.log.trouble())
    }

    /// True when some log has writes not yet handed out for a sync.
    pub fn has_pending_sync(&self) -> bool {
        self.lanes.iter().flatten().any(|l| l.log.has_pending())
    }

    /// Deletes the queue's logs from disk.
    pub fn destroy(self) -> io::Result<()> {
        let dir = self.store.dir.clone();
        let backend = self.store.backend.clone();
        drop(self.lanes);
        backend.remove_dir_all(&dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Message;
    use bytes::Bytes;
    use std::path::Path;
    use warren_amqp::BasicProperties;
    use warren_store::MemBackend;

    fn message(body: &str, persistent: bool) -> MessageRef {
        let properties = BasicProperties { delivery_mode: Some(if persistent { 2 } else { 1 }), ..Default::default() };
        let raw = properties.to_bytes();
        Message::new(
            ShortStr::from_static(""),
            ShortStr::from_static("q"),
            properties,
            raw,
            Bytes::from(body.to_owned()),
        )
    }

    fn durable_queue(backend: &Arc<MemBackend>) -> Queue {
        let store = QueueStore { backend: backend.clone(), dir: PathBuf::from("/q"), config: LogConfig::default() };
        let q = Queue::open(
            ShortStr::from_static("q"),
            true,
            None,
            false,
            FieldTable::new(),
            QueueArgs::default(),
            store,
            0,
        );
        q.expect("open").0
    }

    fn body(m: &Queued) -> String {
        String::from_utf8_lossy(&m.msg.body).into_owned()
    }

    #[test]
    fn transient_messages_in_memory_skip_the_log_and_keep_their_order_on_requeue() {
        let backend = Arc::new(MemBackend::new());
        let mut q = durable_queue(&backend);
        for (i, persistent) in [false, true, false, false, true, false].into_iter().enumerate() {
            q.push(message(&i.to_string(), persistent), 0).expect("push");
        }
        let mut taken = Vec::new();
        while let Some(m) = q.pop().expect("pop") {
            taken.push(m.clone());
            q.check_out(taken.len() as u64, m);
        }
        assert_eq!(q.unacked(), 6);
        assert_eq!(taken.iter().map(body).collect::<Vec<_>>(), ["0", "1", "2", "3", "4", "5"]);
        assert_eq!(taken.iter().filter(|m| m.stored).count(), 2, "only the persistent ones were stored");
        // Requeued in reverse, they come back in their original order.
        for id in (1..=taken.len() as u64).rev() {
            let m = q.take_checked_out(id).expect("checked out");
            q.requeue(m);
        }
        assert_eq!(q.unacked(), 0);
        assert!(q.take_checked_out(1).is_none(), "a delivery id is taken once");
        let again: Vec<String> = std::iter::from_fn(|| q.pop().expect("pop")).map(|m| body(&m)).collect();
        assert_eq!(again, ["0", "1", "2", "3", "4", "5"]);
        // The log holds the two persistent records and nothing else.
        drop(q);
        let (log, recovered) =
            SegmentLog::open(backend.clone(), Path::new("/q"), LogConfig::default()).expect("reopen");
        assert_eq!(recovered.unsettled, 2);
        assert_eq!(log.next_seq(), 2);
    }

    #[test]
    fn requeued_to_the_back_behind_memory_and_disk_with_its_count_kept() {
        let backend = Arc::new(MemBackend::new());
        let mut q = durable_queue(&backend);
        for i in 0..3 {
            q.push(message(&i.to_string(), true), 0).expect("push");
        }
        let mut zero = q.pop().expect("pop").expect("a message");
        // The rest of the queue is on disk only (as behind a full memory window).
        q.memory_pressure = true;
        q.push(message("3", true), 0).expect("push");
        zero.returns = 2;
        q.requeue_to_back(zero).expect("requeue");
        q.push(message("4", true), 0).expect("push");
        let order: Vec<(String, bool, u32)> =
            std::iter::from_fn(|| q.pop().expect("pop")).map(|m| (body(&m), m.redelivered, m.returns)).collect();
        assert_eq!(
            order,
            [
                ("1".to_string(), false, 0),
                ("2".to_string(), false, 0),
                ("3".to_string(), false, 0),
                ("0".to_string(), true, 2),
                ("4".to_string(), false, 0)
            ],
            "behind what was ready, before what came after, its count read back from disk"
        );
        // Its old record is settled: after a restart the queue holds the five, the returned one
        // once, at the back, still counted.
        drop(q);
        let mut q = durable_queue(&backend);
        let order: Vec<(String, u32)> =
            std::iter::from_fn(|| q.pop().expect("pop")).map(|m| (body(&m), m.returns)).collect();
        assert_eq!(order.iter().map(|m| m.0.as_str()).collect::<Vec<_>>(), ["1", "2", "3", "0", "4"]);
        assert_eq!(order[3].1, 2);
    }

    #[test]
    fn a_full_memory_window_sends_transient_messages_to_disk_and_order_holds() {
        let backend = Arc::new(MemBackend::new());
        let mut q = durable_queue(&backend);
        let total = QUEUE_MEMORY_MESSAGES_MAX + 10;
        for i in 0..total {
            q.push(message(&i.to_string(), false), 0).expect("push");
        }
        // Take the first in-memory message, let the rest drain from memory and disk, then put
        // it back: it is delivered again before the messages read back from disk.
        let first = q.pop().expect("pop").expect("a message");
        assert!(!first.stored);
        q.check_out(7, first);
        let mut seen = Vec::new();
        for _ in 0..QUEUE_MEMORY_MESSAGES_MAX - 1 {
            seen.push(body(&q.pop().expect("pop").expect("a message")));
        }
        let first = q.take_checked_out(7).expect("checked out");
        q.requeue(first);
        let next = q.pop().expect("pop").expect("a message");
        assert_eq!(body(&next), "0");
        let rest: Vec<Queued> = std::iter::from_fn(|| q.pop().expect("pop")).collect();
        assert!(rest.iter().all(|m| m.stored), "past the window, messages were stored");
        seen.extend(rest.iter().map(body));
        let expected: Vec<String> = (1..total).map(|i| i.to_string()).collect();
        assert_eq!(seen, expected);
    }
}
