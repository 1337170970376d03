//! A quorum queue's state machine: what every replica of a quorum queue applies, in log order,
//! to hold the same queue (issue 15, docs/clustering.md).
//!
//! It is a plain value with one entry point, [`QuorumQueue::apply`]: a command stamped with
//! the leader's clock goes in, a reply for whoever proposed it and the effects for the leader's
//! host come out. It reads nothing else (no connection, no channel, no clock, no randomness),
//! and it iterates only ordered collections, so three replicas that apply the same log hold the
//! same state and produce the same outputs byte for byte.
//!
//! Unlike a classic queue ([`crate::queue::Queue`]), which asks its consumers' channels for
//! room at the moment it delivers, a quorum queue keeps its consumers' credit in its own state:
//! a consumer attaches with a prefetch, each delivery it has not settled uses one, and a settle
//! or return gives it back. That is how RabbitMQ's quorum queues work too, and why they do not
//! support a channel-wide (global) prefetch.
//!
//! Semantics, as RabbitMQ 3.10's quorum queues (checked against 3.10.8 with pika):
//! - messages go out in order; a returned message (requeued by a nack or reject, or left
//!   unsettled by a channel that went away) goes to the back of the queue, in the order it came
//!   back, and counts one more delivery attempt (`x-delivery-count`);
//! - a message returned more often than `x-delivery-limit` is dead-lettered (`delivery_limit`)
//!   instead;
//! - consumers of a higher priority are served first, round-robin among equals; with a single
//!   active consumer only the first consumer attached and not cancelled is served;
//! - a cancelled consumer keeps what it was given until it settles or returns it;
//! - per-message and per-queue TTL expire messages at the head (`expired`);
//! - a length limit drops from the head (`maxlen`) or refuses the publish (reject-publish).
//!
//! Invariant: every message is in exactly one of `ready` or `checked_out`; each consumer's
//! `holding` count is the number of entries of `checked_out` it holds.

use crate::args::{Overflow, QueueArgs};
use crate::body_store::SharedBodyStore;
use crate::message::{decode_from_store, encode_for_store, MessageRef};
use crate::queue::{QUEUE_MEMORY_BYTES_MAX, QUEUE_MEMORY_MESSAGES_MAX};
use bytes::{Buf, BufMut, Bytes};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io;
use warren_amqp::ShortStr;

/// A message's id in its queue: given in enqueue order, never reused.
pub type MsgId = u64;

/// Where a consumer or a basic.get lives: a channel of a connection of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Owner {
    pub node: u32,
    pub conn: u64,
    pub channel: u16,
}

/// What went away: a channel, a whole connection, or a whole node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gone {
    Channel(Owner),
    Connection { node: u32, conn: u64 },
    Node(u32),
}

impl Gone {
    fn covers(&self, o: &Owner) -> bool {
        match *self {
            Gone::Channel(c) => c == *o,
            Gone::Connection { node, conn } => o.node == node && o.conn == conn,
            Gone::Node(node) => o.node == node,
        }
    }
}

/// What the queue is told, each in a log entry.
#[derive(Debug, Clone)]
pub enum Command {
    /// A message published to the queue.
    Enqueue { msg: MessageRef },
    /// basic.consume: a consumer with room for `prefetch` unsettled deliveries (0: no limit).
    /// A no-ack consumer's deliveries are settled as they go out. `exclusive` is the consume's
    /// flag: a quorum queue's machine takes no notice of it; a classic queue's home, reached
    /// through another node, checks it against every consumer it has.
    Attach { owner: Owner, tag: ShortStr, prefetch: u32, no_ack: bool, priority: i64, exclusive: bool },
    /// basic.cancel: no more deliveries to the consumer; what it holds stays until settled.
    Cancel { owner: Owner, tag: ShortStr },
    /// basic.ack of deliveries the channel holds.
    Settle { owner: Owner, ids: Vec<MsgId> },
    /// basic.nack or basic.reject with requeue: back to their places.
    Return { owner: Owner, ids: Vec<MsgId> },
    /// basic.nack or basic.reject without requeue: dead-lettered (`rejected`).
    Discard { owner: Owner, ids: Vec<MsgId> },
    /// basic.get: the message at the head, held by the channel unless `no_ack`.
    Get { owner: Owner, no_ack: bool },
    /// A channel, connection or node went away: its consumers go, and what they held returns.
    Down(Gone),
    /// queue.purge: every message not delivered goes.
    Purge,
    /// Time passed: expired messages at the head go.
    Tick,
}

/// A command and the leader's clock when it proposed it, ms since the Unix epoch: the only
/// time the queue knows.
#[derive(Debug, Clone)]
pub struct Stamped {
    pub now_ms: u64,
    pub command: Command,
}

impl Stamped {
    /// About how many bytes [`Stamped::encode`] writes (exactly for a publish), to reserve.
    pub fn encoded_len_hint(&self) -> usize {
        match &self.command {
            Command::Enqueue { msg } => 8 + 1 + 8 + crate::message::stored_len(msg),
            _ => 64,
        }
    }

    /// The command as it goes in a log entry or over the network: the clock, a tag byte, then
    /// the command's fields (integers big-endian, names as short strings, a message in its
    /// store encoding behind a length).
    pub fn encode(&self, b: &mut Vec<u8>) {
        b.put_u64(self.now_ms);
        let ids = |b: &mut Vec<u8>, tag: u8, owner: &Owner, ids: &[MsgId]| {
            b.put_u8(tag);
            put_owner(b, owner);
            b.put_u64(ids.len() as u64);
            ids.iter().for_each(|id| b.put_u64(*id));
        };
        match &self.command {
            Command::Enqueue { msg } => {
                b.put_u8(1);
                // The length is patched once the message is written in place.
                let at = b.len();
                b.put_u64(0);
                crate::message::append_returned_for_store(msg, None, 0, b);
                let len = (b.len() - at - 8) as u64;
                b[at..at + 8].copy_from_slice(&len.to_be_bytes());
            }
            Command::Attach { owner, tag, prefetch, no_ack, priority, exclusive } => {
                // An exclusive consume has a tag of its own, so that logs written before the
                // flag existed read as they were written.
                b.put_u8(if *exclusive { 11 } else { 2 });
                put_owner(b, owner);
                put_str(b, tag);
                b.put_u32(*prefetch);
                b.put_u8(u8::from(*no_ack));
                b.put_i64(*priority);
            }
            Command::Cancel { owner, tag } => {
                b.put_u8(3);
                put_owner(b, owner);
                put_str(b, tag);
            }
            Command::Settle { owner, ids: i } => ids(b, 4, owner, i),
            Command::Return { owner, ids: i } => ids(b, 5, owner, i),
            Command::Discard { owner, ids: i } => ids(b, 6, owner, i),
            Command::Get { owner, no_ack } => {
                b.put_u8(7);
                put_owner(b, owner);
                b.put_u8(u8::from(*no_ack));
            }
            Command::Down(gone) => {
                b.put_u8(8);
                match *gone {
                    Gone::Channel(o) => {
                        b.put_u8(0);
                        put_owner(b, &o);
                    }
                    Gone::Connection { node, conn } => {
                        b.put_u8(1);
                        b.put_u32(node);
                        b.put_u64(conn);
                    }
                    Gone::Node(node) => {
                        b.put_u8(2);
                        b.put_u32(node);
                    }
                }
            }
            Command::Purge => b.put_u8(9),
            Command::Tick => b.put_u8(10),
        }
    }

    /// A command [`Stamped::encode`] wrote; an error says what is wrong with bytes that are not
    /// one.
    pub fn decode(bytes: &[u8]) -> io::Result<Stamped> {
        let mut r = Bytes::copy_from_slice(bytes);
        let now_ms = get_u64(&mut r)?;
        let ids = |r: &mut Bytes| -> io::Result<(Owner, Vec<MsgId>)> {
            let owner = get_owner(r)?;
            let n = get_u64(r)?;
            need(r, usize::try_from(n.saturating_mul(8)).map_err(|_| bad("too many ids"))?)?;
            Ok((owner, (0..n).map(|_| r.get_u64()).collect()))
        };
        let command = match get_u8(&mut r)? {
            1 => {
                let n = usize::try_from(get_u64(&mut r)?).map_err(|_| bad("a message too long"))?;
                need(&r, n)?;
                let (msg, _) = decode_from_store(r.split_to(n)).ok_or_else(|| bad("a message it cannot decode"))?;
                Command::Enqueue { msg }
            }
            kind @ (2 | 11) => Command::Attach {
                owner: get_owner(&mut r)?,
                tag: get_str(&mut r)?,
                prefetch: get_u32(&mut r)?,
                no_ack: get_u8(&mut r)? != 0,
                priority: get_u64(&mut r)? as i64,
                exclusive: kind == 11,
            },
            3 => Command::Cancel { owner: get_owner(&mut r)?, tag: get_str(&mut r)? },
            4 => {
                let (owner, ids) = ids(&mut r)?;
                Command::Settle { owner, ids }
            }
            5 => {
                let (owner, ids) = ids(&mut r)?;
                Command::Return { owner, ids }
            }
            6 => {
                let (owner, ids) = ids(&mut r)?;
                Command::Discard { owner, ids }
            }
            7 => Command::Get { owner: get_owner(&mut r)?, no_ack: get_u8(&mut r)? != 0 },
            8 => Command::Down(match get_u8(&mut r)? {
                0 => Gone::Channel(get_owner(&mut r)?),
                1 => Gone::Connection { node: get_u32(&mut r)?, conn: get_u64(&mut r)? },
                2 => Gone::Node(get_u32(&mut r)?),
                _ => return Err(bad("an unknown kind of going")),
            }),
            9 => Command::Purge,
            10 => Command::Tick,
            _ => return Err(bad("an unknown command")),
        };
        if r.has_remaining() {
            return Err(bad("bytes after the end"));
        }
        Ok(Stamped { now_ms, command })
    }
}

/// A message handed to a consumer or a basic.get.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub id: MsgId,
    pub msg: MessageRef,
    /// It was delivered before.
    pub redelivered: bool,
    /// Times it was returned (`x-delivery-count`).
    pub delivery_count: u32,
}

/// Why a message left for the dead-letter exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadReason {
    Expired,
    MaxLen,
    Rejected,
    DeliveryLimit,
}

impl DeadReason {
    /// The reason as RabbitMQ writes it in `x-death`.
    pub fn as_str(self) -> &'static str {
        match self {
            DeadReason::Expired => "expired",
            DeadReason::MaxLen => "maxlen",
            DeadReason::Rejected => "rejected",
            DeadReason::DeliveryLimit => "delivery_limit",
        }
    }
}

/// What the leader's host does after a command: deliver, dead-letter.
#[derive(Debug, Clone)]
pub enum Effect {
    Deliver { owner: Owner, tag: ShortStr, delivery: Delivery },
    DeadLetter { msg: MessageRef, reason: DeadReason, delivery_count: u32 },
}

/// The answer to whoever proposed the command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Ok,
    /// The publish was refused: the queue is full and its overflow is reject-publish.
    Rejected,
    /// basic.get: the message, if any, and how many are left ready.
    Got {
        delivery: Option<GotMessage>,
        remaining: u64,
    },
    /// queue.purge: how many messages went.
    Purged(u64),
    /// basic.consume with a tag the channel already uses on this queue.
    TagInUse,
}

/// A message taken by basic.get (a [`Delivery`] without its body, for comparing replies).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GotMessage {
    pub id: MsgId,
    pub redelivered: bool,
    pub delivery_count: u32,
}

/// What applying one command produced.
#[derive(Debug, Clone)]
pub struct Output {
    pub reply: Reply,
    pub effects: Vec<Effect>,
    /// basic.get's message (its id, flags and count are in `reply`).
    pub got: Option<Delivery>,
}

/// What a quorum queue was declared with, as far as its state machine cares.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QuorumConfig {
    pub message_ttl_ms: Option<u64>,
    pub max_length: Option<u64>,
    pub max_length_bytes: Option<u64>,
    pub reject_publish: bool,
    pub delivery_limit: Option<u64>,
    pub single_active_consumer: bool,
}

impl From<&QueueArgs> for QuorumConfig {
    fn from(a: &QueueArgs) -> Self {
        QuorumConfig {
            message_ttl_ms: a.message_ttl_ms,
            max_length: a.max_length,
            max_length_bytes: a.max_length_bytes,
            reject_publish: a.overflow != Overflow::DropHead,
            delivery_limit: a.delivery_limit,
            single_active_consumer: a.single_active_consumer,
        }
    }
}

#[derive(Debug, Clone)]
struct Entry {
    id: MsgId,
    content: Content,
    expires_at: Option<u64>,
    delivered: bool,
    returns: u32,
}

/// Where a message's content is: in memory, or only in the member's [`BodyStore`].
#[derive(Debug, Clone)]
enum Content {
    Held(MessageRef),
    Paged { seq: u64, len: u64 },
}

impl Entry {
    /// Body bytes.
    fn len(&self) -> u64 {
        match &self.content {
            Content::Held(msg) => msg.body.len() as u64,
            Content::Paged { len, .. } => *len,
        }
    }

    fn held_len(&self) -> u64 {
        match &self.content {
            Content::Held(msg) => msg.body.len() as u64,
            Content::Paged { .. } => 0,
        }
    }
}

#[derive(Debug, Clone)]
struct Consumer {
    owner: Owner,
    tag: ShortStr,
    prefetch: u32,
    no_ack: bool,
    priority: i64,
    cancelled: bool,
    /// Deliveries it holds, unsettled.
    holding: u32,
}

impl Consumer {
    fn has_credit(&self) -> bool {
        !self.cancelled && (self.no_ack || self.prefetch == 0 || self.holding < self.prefetch)
    }
}

/// Who holds a delivered message: a consumer (by tag) or a basic.get (no tag) of a channel.
#[derive(Debug, Clone)]
struct Held {
    owner: Owner,
    tag: Option<ShortStr>,
    entry: Entry,
}

/// A quorum queue's replicated state (see the module's documentation).
///
/// With a [`BodyStore`] (a member on a node, [`QuorumQueue::with_store`]), ready messages
/// past the memory window ([`QUEUE_MEMORY_MESSAGES_MAX`], [`QUEUE_MEMORY_BYTES_MAX`]) are
/// written there and read back as they are delivered or dead-lettered; which ones is the
/// member's own choice and changes no output.
#[derive(Debug, Clone, Default)]
pub struct QuorumQueue {
    config: QuorumConfig,
    next_id: MsgId,
    /// Messages to deliver, in order (returned ones at the back, as they came back).
    ready: VecDeque<Entry>,
    /// Body bytes of `ready`.
    ready_bytes: u64,
    /// Messages of `ready` held in memory, and their body bytes (this member's, not replicated).
    held_count: usize,
    held_bytes: u64,
    bodies: Option<SharedBodyStore>,
    /// The memory window, with a store: ready messages held in memory at most, and their bytes.
    window: (usize, u64),
    checked_out: BTreeMap<MsgId, Held>,
    /// In priority order (highest first), then in the order they attached.
    consumers: Vec<Consumer>,
    /// Where the next round-robin search starts.
    rr: usize,
    /// The index of the last command applied.
    applied: u64,
}

impl QuorumQueue {
    pub fn new(config: QuorumConfig) -> Self {
        QuorumQueue { config, ..Default::default() }
    }

    /// As [`QuorumQueue::new`], paging ready messages past the memory window to `bodies`.
    pub fn with_store(config: QuorumConfig, bodies: SharedBodyStore) -> Self {
        QuorumQueue { config, bodies: Some(bodies), window: DEFAULT_WINDOW, ..Default::default() }
    }

    /// Sets the memory window: at most `messages` ready messages and `bytes` of their bodies
    /// in memory (with a store; a classic queue's by default). For tests and tuning: it changes
    /// where messages are kept, never what the queue does.
    pub fn set_window(&mut self, messages: usize, bytes: u64) {
        self.window = (messages, bytes);
    }

    /// The store this member pages to, if it has one.
    pub fn store(&self) -> Option<&SharedBodyStore> {
        self.bodies.as_ref()
    }

    /// Body bytes this member holds in memory: what a snapshot of it writes out.
    pub fn held_bytes(&self) -> u64 {
        self.held_bytes + self.checked_out.values().map(|h| h.entry.held_len()).sum::<u64>()
    }

    /// Ready messages this member keeps in its store only.
    pub fn paged_count(&self) -> u64 {
        (self.ready.len() - self.held_count) as u64
    }

    /// When the message at the head of the queue expires (ms since the Unix epoch), if it has
    /// a TTL: the leader proposes a `Tick` once that time has passed.
    pub fn head_expires_at(&self) -> Option<u64> {
        self.peek().and_then(|e| e.expires_at)
    }

    /// Messages ready to deliver (returned or never delivered).
    pub fn ready_count(&self) -> u64 {
        self.ready.len() as u64
    }

    /// Body bytes of the messages ready to deliver.
    pub fn ready_bytes(&self) -> u64 {
        self.ready_bytes
    }

    /// Messages delivered and not yet settled.
    pub fn unsettled_count(&self) -> u64 {
        self.checked_out.len() as u64
    }

    /// The messages checked out to channels of node `node`, with who holds each.
    pub fn held_on(&self, node: u32) -> Vec<(Owner, MsgId)> {
        self.checked_out.iter().filter(|(_, h)| h.owner.node == node).map(|(id, h)| (h.owner, *id)).collect()
    }

    pub fn consumer_count(&self) -> usize {
        self.consumers.len()
    }

    /// The index of the last command applied.
    pub fn applied_index(&self) -> u64 {
        self.applied
    }

    /// Applies the command at log `index` (an entry may hold a batch of commands: they share
    /// its index).
    pub fn apply(&mut self, index: u64, stamped: &Stamped) -> Output {
        debug_assert!(index >= self.applied, "commands are applied in log order");
        self.applied = index;
        let now = stamped.now_ms;
        let mut out = Output { reply: Reply::Ok, effects: Vec::new(), got: None };
        match &stamped.command {
            Command::Enqueue { msg } => self.enqueue(msg, now, &mut out),
            Command::Attach { owner, tag, prefetch, no_ack, priority, .. } => {
                if self.consumers.iter().any(|c| c.owner == *owner && c.tag == *tag) {
                    out.reply = Reply::TagInUse;
                } else {
                    let c = Consumer {
                        owner: *owner,
                        tag: tag.clone(),
                        prefetch: *prefetch,
                        no_ack: *no_ack,
                        priority: *priority,
                        cancelled: false,
                        holding: 0,
                    };
                    let at =
                        self.consumers.iter().position(|e| e.priority < c.priority).unwrap_or(self.consumers.len());
                    if at <= self.rr && at < self.consumers.len() {
                        self.rr += 1;
                    }
                    self.consumers.insert(at, c);
                }
            }
            Command::Cancel { owner, tag } => {
                if let Some(i) = self.consumers.iter().position(|c| c.owner == *owner && c.tag == *tag) {
                    self.consumers[i].cancelled = true;
                    if self.consumers[i].holding == 0 {
                        self.remove_consumer(i);
                    }
                }
            }
            Command::Settle { owner, ids } => {
                for id in ids {
                    if let Some(e) = self.take_held(*owner, *id) {
                        self.release(&e);
                    }
                }
            }
            Command::Return { owner, ids } => {
                for id in ids {
                    if let Some(entry) = self.take_held(*owner, *id) {
                        self.give_back(entry, &mut out);
                    }
                }
                self.trim(&mut out);
            }
            Command::Discard { owner, ids } => {
                for id in ids {
                    if let Some(e) = self.take_held(*owner, *id) {
                        self.dead_letter(e, DeadReason::Rejected, &mut out.effects);
                    }
                }
            }
            Command::Get { owner, no_ack } => {
                self.expire_head(now, &mut out);
                let got = self.pop();
                let remaining = self.ready_count();
                out.reply = Reply::Got {
                    delivery: got.as_ref().map(|e| GotMessage {
                        id: e.id,
                        redelivered: e.delivered,
                        delivery_count: e.returns,
                    }),
                    remaining,
                };
                if let Some(mut e) = got {
                    out.got = Some(self.delivery(&e));
                    if *no_ack {
                        self.release(&e);
                    } else {
                        e.delivered = true;
                        self.checked_out.insert(e.id, Held { owner: *owner, tag: None, entry: e });
                    }
                }
            }
            Command::Down(gone) => {
                let held: Vec<MsgId> =
                    self.checked_out.iter().filter(|(_, h)| gone.covers(&h.owner)).map(|(id, _)| *id).collect();
                for id in held {
                    if let Some(h) = self.checked_out.remove(&id) {
                        self.give_back(h.entry, &mut out);
                    }
                }
                let mut i = 0;
                while i < self.consumers.len() {
                    if gone.covers(&self.consumers[i].owner) {
                        self.remove_consumer(i);
                    } else {
                        i += 1;
                    }
                }
                self.trim(&mut out);
            }
            Command::Purge => {
                let n = self.ready_count();
                for e in std::mem::take(&mut self.ready) {
                    self.release(&e);
                }
                self.ready_bytes = 0;
                self.held_count = 0;
                self.held_bytes = 0;
                out.reply = Reply::Purged(n);
            }
            Command::Tick => self.expire_head(now, &mut out),
        }
        self.deliver(now, &mut out);
        out
    }

    fn enqueue(&mut self, msg: &MessageRef, now: u64, out: &mut Output) {
        let len = msg.body.len() as u64;
        let over = |q: &Self, extra_len: u64, extra_bytes: u64| {
            q.config.max_length.is_some_and(|m| q.ready_count() + extra_len > m)
                || q.config.max_length_bytes.is_some_and(|m| q.ready_bytes + extra_bytes > m)
        };
        if self.config.reject_publish && over(self, 1, len) {
            out.reply = Reply::Rejected;
            return;
        }
        let own = msg.properties.expiration.as_ref().and_then(|e| e.parse::<u64>().ok());
        let ttl = match (self.config.message_ttl_ms, own) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let id = self.next_id;
        self.next_id += 1;
        self.push_ready(Entry {
            id,
            content: Content::Held(msg.clone()),
            expires_at: ttl.map(|t| now.saturating_add(t)),
            delivered: false,
            returns: 0,
        });
        self.trim(out);
    }

    /// Puts a message at the back of the ready queue: in memory while the window has room,
    /// else in the store (in memory after all should the store refuse it).
    fn push_ready(&mut self, mut e: Entry) {
        if let (Content::Held(msg), Some(bodies)) = (&e.content, &self.bodies) {
            let len = msg.body.len() as u64;
            let fits = self.held_count < self.window.0 && self.held_bytes + len <= self.window.1;
            if !fits {
                if let Ok(seq) = bodies.lock().put(msg) {
                    e.content = Content::Paged { seq, len };
                }
            }
        }
        self.ready_bytes += e.len();
        if let Content::Held(msg) = &e.content {
            self.held_count += 1;
            self.held_bytes += msg.body.len() as u64;
        }
        self.ready.push_back(e);
    }

    /// The message's content, read back from the store if it is paged.
    ///
    /// A paged message that cannot be read back (the store's files damaged or unreadable) stops
    /// the member: its outputs would differ from the other members'. It starts again from its
    /// snapshot, and the other members serve meanwhile.
    fn body(&self, e: &Entry) -> MessageRef {
        match (&e.content, &self.bodies) {
            (Content::Held(msg), _) => msg.clone(),
            (Content::Paged { seq, .. }, Some(bodies)) => match bodies.lock().get(*seq) {
                Ok(msg) => msg,
                Err(err) => panic!("quorum queue: a paged message cannot be read back: {err}"),
            },
            (Content::Paged { seq, .. }, None) => panic!("quorum queue: message record {seq} paged with no store"),
        }
    }

    fn delivery(&self, e: &Entry) -> Delivery {
        Delivery { id: e.id, msg: self.body(e), redelivered: e.delivered, delivery_count: e.returns }
    }

    /// A message left the queue: its record in the store goes (after the next snapshot).
    fn release(&self, e: &Entry) {
        if let (Content::Paged { seq, .. }, Some(bodies)) = (&e.content, &self.bodies) {
            bodies.lock().release(*seq);
        }
    }

    /// A message leaves for the dead-letter exchange.
    fn dead_letter(&self, e: Entry, reason: DeadReason, effects: &mut Vec<Effect>) {
        let msg = self.body(&e);
        self.release(&e);
        effects.push(Effect::DeadLetter { msg, reason, delivery_count: e.returns });
    }

    /// Drops from the head while over a length limit (drop-head overflow).
    fn trim(&mut self, out: &mut Output) {
        if self.config.reject_publish {
            return;
        }
        while self.config.max_length.is_some_and(|m| self.ready_count() > m)
            || self.config.max_length_bytes.is_some_and(|m| self.ready_bytes > m)
        {
            let Some(e) = self.pop() else { break };
            self.dead_letter(e, DeadReason::MaxLen, &mut out.effects);
        }
    }

    /// The next message to deliver, taken out of the ready set.
    fn pop(&mut self) -> Option<Entry> {
        let e = self.ready.pop_front()?;
        self.ready_bytes -= e.len();
        if let Content::Held(msg) = &e.content {
            self.held_count -= 1;
            self.held_bytes -= msg.body.len() as u64;
        }
        Some(e)
    }

    fn peek(&self) -> Option<&Entry> {
        self.ready.front()
    }

    /// Dead-letters expired messages at the head. A message expires once its deadline is in
    /// the past.
    fn expire_head(&mut self, now: u64, out: &mut Output) {
        while self.peek().is_some_and(|e| e.expires_at.is_some_and(|t| t < now)) {
            if let Some(e) = self.pop() {
                self.dead_letter(e, DeadReason::Expired, &mut out.effects);
            }
        }
    }

    /// Takes a delivery `owner` holds; a consumer that was cancelled goes with its last one.
    fn take_held(&mut self, owner: Owner, id: MsgId) -> Option<Entry> {
        if self.checked_out.get(&id).is_none_or(|h| h.owner != owner) {
            return None;
        }
        let h = self.checked_out.remove(&id)?;
        if let Some(tag) = &h.tag {
            if let Some(i) = self.consumers.iter().position(|c| c.owner == owner && c.tag == *tag) {
                let c = &mut self.consumers[i];
                c.holding -= 1;
                if c.cancelled && c.holding == 0 {
                    self.remove_consumer(i);
                }
            }
        }
        Some(h.entry)
    }

    /// A message returned: to the back of the queue, or dead-lettered past the delivery limit.
    fn give_back(&mut self, mut e: Entry, out: &mut Output) {
        e.returns = e.returns.saturating_add(1);
        if self.config.delivery_limit.is_some_and(|limit| u64::from(e.returns) > limit) {
            self.dead_letter(e, DeadReason::DeliveryLimit, &mut out.effects);
            return;
        }
        self.push_ready(e);
    }

    fn remove_consumer(&mut self, i: usize) {
        self.consumers.remove(i);
        if i < self.rr {
            self.rr -= 1;
        }
        // Whatever it still held (a consumer removed by `Down` held nothing by now) stays
        // checked out under its channel until settled.
    }

    /// The consumer the next message goes to: the first in priority order with credit,
    /// round-robin from `rr` among equals; with a single active consumer, only the first
    /// consumer not cancelled.
    fn choose(&self) -> Option<usize> {
        if self.config.single_active_consumer {
            let active = self.consumers.iter().position(|c| !c.cancelled)?;
            return self.consumers[active].has_credit().then_some(active);
        }
        let c = &self.consumers;
        crate::queue::pick_by_priority(c.len(), self.rr, |i| c[i].priority, |i| c[i].has_credit())
    }

    /// Hands ready messages to consumers with credit; expired ones met at the head go.
    fn deliver(&mut self, now: u64, out: &mut Output) {
        while self.peek().is_some() {
            let Some(i) = self.choose() else { return };
            self.expire_head(now, out);
            let Some(mut e) = self.pop() else { return };
            self.rr = i + 1;
            let delivery = self.delivery(&e);
            let (owner, tag, no_ack) =
                (self.consumers[i].owner, self.consumers[i].tag.clone(), self.consumers[i].no_ack);
            out.effects.push(Effect::Deliver { owner, tag: tag.clone(), delivery });
            if no_ack {
                self.release(&e);
            } else {
                self.consumers[i].holding += 1;
                e.delivered = true;
                self.checked_out.insert(e.id, Held { owner, tag: Some(tag), entry: e });
            }
        }
    }

    /// The whole state as bytes, for a Raft snapshot: what a replica that restores it
    /// ([`QuorumQueue::restore`]) needs to apply the log from the next index on with the same
    /// results. Layout: a format byte, then the fields in declaration order, integers
    /// big-endian, each message either in its store encoding (`encode_for_store`) behind a
    /// length or, paged, as its seq in this member's store, its length and its expiry (so a
    /// snapshot holds no more bodies than the member holds in memory; the store must be synced
    /// before the snapshot is written).
    pub fn snapshot(&self) -> Vec<u8> {
        let mut b = Vec::new();
        b.put_u8(SNAPSHOT_FORMAT);
        let c = &self.config;
        for v in [c.message_ttl_ms, c.max_length, c.max_length_bytes, c.delivery_limit] {
            put_opt(&mut b, v);
        }
        b.put_u8(u8::from(c.reject_publish) | u8::from(c.single_active_consumer) << 1);
        b.put_u64(self.next_id);
        b.put_u64(self.rr as u64);
        b.put_u64(self.applied);
        let mut scratch = Vec::new();
        b.put_u64(self.ready.len() as u64);
        for e in &self.ready {
            put_entry(&mut b, e, &mut scratch);
        }
        b.put_u64(self.checked_out.len() as u64);
        for h in self.checked_out.values() {
            put_owner(&mut b, &h.owner);
            match &h.tag {
                Some(t) => {
                    b.put_u8(1);
                    put_str(&mut b, t);
                }
                None => b.put_u8(0),
            }
            put_entry(&mut b, &h.entry, &mut scratch);
        }
        b.put_u64(self.consumers.len() as u64);
        for c in &self.consumers {
            put_owner(&mut b, &c.owner);
            put_str(&mut b, &c.tag);
            b.put_u32(c.prefetch);
            b.put_i64(c.priority);
            b.put_u8(u8::from(c.no_ack) | u8::from(c.cancelled) << 1);
            b.put_u32(c.holding);
        }
        b
    }

    /// The state a [`QuorumQueue::snapshot`] holds; an error names what is wrong with bytes
    /// that are not one, or that name paged messages (those need the store: see
    /// [`QuorumQueue::restore_with`]).
    pub fn restore(bytes: &[u8]) -> io::Result<Self> {
        QuorumQueue::restore_with(bytes, None)
    }

    /// As [`QuorumQueue::restore`], for a member paging to `bodies`: the paged messages the
    /// snapshot names are in it (a snapshot this member wrote), every other record of it goes,
    /// and the messages the snapshot carries go to memory or the store as the window allows.
    pub fn restore_with(bytes: &[u8], bodies: Option<SharedBodyStore>) -> io::Result<Self> {
        let (mut q, live) = QuorumQueue::decode(bytes)?;
        match bodies {
            Some(bodies) => {
                bodies.lock().keep_only(&live);
                q.bodies = Some(bodies);
                q.window = DEFAULT_WINDOW;
            }
            None if !live.is_empty() => return Err(bad("paged messages and no store to read them from")),
            None => {}
        }
        for e in std::mem::take(&mut q.ready) {
            q.push_ready(e);
        }
        q.check_invariants().map_err(|e| bad(&e))?;
        Ok(q)
    }

    /// The snapshot `bytes` (one this member wrote) with every paged message's content read
    /// back from `bodies` and carried inline: what another member, which has not this one's
    /// store, restores from.
    pub fn resolve_snapshot(bytes: &[u8], bodies: &SharedBodyStore) -> io::Result<Vec<u8>> {
        let (mut q, live) = QuorumQueue::decode(bytes)?;
        if live.is_empty() {
            return Ok(bytes.to_vec());
        }
        let mut store = bodies.lock();
        let entries = q.ready.iter_mut().chain(q.checked_out.values_mut().map(|h| &mut h.entry));
        for e in entries {
            if let Content::Paged { seq, .. } = e.content {
                e.content = Content::Held(store.get(seq)?);
            }
        }
        Ok(q.snapshot())
    }

    /// Decodes a snapshot (ready messages in `ready`, uncounted); returns it and the seqs of
    /// the paged messages it names.
    fn decode(bytes: &[u8]) -> io::Result<(Self, BTreeSet<u64>)> {
        let mut r = Bytes::copy_from_slice(bytes);
        let format = get_u8(&mut r)?;
        if format != SNAPSHOT_FORMAT && format != SNAPSHOT_FORMAT_INLINE {
            return Err(bad("an unknown snapshot format"));
        }
        let mut live = BTreeSet::new();
        let mut opts = [None; 4];
        for o in &mut opts {
            *o = get_opt(&mut r)?;
        }
        let flags = get_u8(&mut r)?;
        let config = QuorumConfig {
            message_ttl_ms: opts[0],
            max_length: opts[1],
            max_length_bytes: opts[2],
            delivery_limit: opts[3],
            reject_publish: flags & 1 != 0,
            single_active_consumer: flags & 2 != 0,
        };
        let mut q = QuorumQueue::new(config);
        q.next_id = get_u64(&mut r)?;
        q.rr = get_u64(&mut r)? as usize;
        q.applied = get_u64(&mut r)?;
        for _ in 0..get_u64(&mut r)? {
            let e = get_entry(&mut r, format, &mut live)?;
            q.ready.push_back(e);
        }
        for _ in 0..get_u64(&mut r)? {
            let owner = get_owner(&mut r)?;
            let tag = if get_u8(&mut r)? == 1 { Some(get_str(&mut r)?) } else { None };
            let entry = get_entry(&mut r, format, &mut live)?;
            q.checked_out.insert(entry.id, Held { owner, tag, entry });
        }
        for _ in 0..get_u64(&mut r)? {
            let owner = get_owner(&mut r)?;
            let tag = get_str(&mut r)?;
            let prefetch = get_u32(&mut r)?;
            let priority = get_u64(&mut r)? as i64;
            let flags = get_u8(&mut r)?;
            let holding = get_u32(&mut r)?;
            let (no_ack, cancelled) = (flags & 1 != 0, flags & 2 != 0);
            q.consumers.push(Consumer { owner, tag, prefetch, no_ack, priority, cancelled, holding });
        }
        if r.has_remaining() {
            return Err(bad("bytes after the end"));
        }
        Ok((q, live))
    }

    /// Checks the module's invariant (for tests and debug builds).
    pub fn check_invariants(&self) -> Result<(), String> {
        let bytes: u64 = self.ready.iter().map(Entry::len).sum();
        if bytes != self.ready_bytes {
            return Err(format!("ready bytes {} but messages hold {bytes}", self.ready_bytes));
        }
        let held = self.ready.iter().filter(|e| matches!(e.content, Content::Held(_)));
        let (count, bytes) = held.fold((0, 0), |(n, b), e| (n + 1, b + e.len()));
        if (count, bytes) != (self.held_count, self.held_bytes) {
            return Err(format!(
                "{} held in memory ({} bytes) but counted {} ({} bytes)",
                count, bytes, self.held_count, self.held_bytes
            ));
        }
        for c in &self.consumers {
            let holding =
                self.checked_out.values().filter(|h| h.owner == c.owner && h.tag.as_ref() == Some(&c.tag)).count();
            if holding != c.holding as usize {
                return Err(format!("consumer {:?} counts {} held but holds {holding}", c.tag, c.holding));
            }
            if !c.no_ack && c.prefetch > 0 && c.holding > c.prefetch {
                return Err(format!("consumer {:?} holds {} past its prefetch {}", c.tag, c.holding, c.prefetch));
            }
        }
        let mut ids: Vec<MsgId> = self.ready.iter().map(|e| e.id).collect();
        ids.extend(self.checked_out.keys().copied());
        let n = ids.len();
        ids.sort_unstable();
        ids.dedup();
        if ids.len() != n {
            return Err("a message is in two places".into());
        }
        Ok(())
    }
}

/// A member's memory window for ready messages: a classic queue's.
const DEFAULT_WINDOW: (usize, u64) = (QUEUE_MEMORY_MESSAGES_MAX, QUEUE_MEMORY_BYTES_MAX as u64);

/// Version of [`QuorumQueue::snapshot`]'s layout: each message inline or paged.
const SNAPSHOT_FORMAT: u8 = 2;
/// The first layout, every message inline (still read).
const SNAPSHOT_FORMAT_INLINE: u8 = 1;

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("not a quorum queue snapshot or command: {what}"))
}

fn need(r: &Bytes, n: usize) -> io::Result<()> {
    if r.remaining() < n {
        return Err(bad("it ends early"));
    }
    Ok(())
}

fn get_u8(r: &mut Bytes) -> io::Result<u8> {
    need(r, 1)?;
    Ok(r.get_u8())
}

fn get_u16(r: &mut Bytes) -> io::Result<u16> {
    need(r, 2)?;
    Ok(r.get_u16())
}

fn get_u32(r: &mut Bytes) -> io::Result<u32> {
    need(r, 4)?;
    Ok(r.get_u32())
}

fn get_u64(r: &mut Bytes) -> io::Result<u64> {
    need(r, 8)?;
    Ok(r.get_u64())
}

fn put_opt(b: &mut Vec<u8>, v: Option<u64>) {
    match v {
        Some(v) => {
            b.put_u8(1);
            b.put_u64(v);
        }
        None => b.put_u8(0),
    }
}

fn get_opt(r: &mut Bytes) -> io::Result<Option<u64>> {
    Ok(if get_u8(r)? == 1 { Some(get_u64(r)?) } else { None })
}

fn put_owner(b: &mut Vec<u8>, o: &Owner) {
    b.put_u32(o.node);
    b.put_u64(o.conn);
    b.put_u16(o.channel);
}

fn get_owner(r: &mut Bytes) -> io::Result<Owner> {
    Ok(Owner { node: get_u32(r)?, conn: get_u64(r)?, channel: get_u16(r)? })
}

fn put_str(b: &mut Vec<u8>, s: &ShortStr) {
    b.put_u8(s.len() as u8);
    b.put_slice(s.as_bytes());
}

fn get_str(r: &mut Bytes) -> io::Result<ShortStr> {
    let n = usize::from(get_u8(r)?);
    need(r, n)?;
    ShortStr::from_bytes(r.split_to(n)).ok_or_else(|| bad("a name that is not UTF-8"))
}

fn put_entry(b: &mut Vec<u8>, e: &Entry, scratch: &mut Vec<u8>) {
    b.put_u64(e.id);
    b.put_u8(u8::from(e.delivered));
    b.put_u32(e.returns);
    match &e.content {
        Content::Held(msg) => {
            b.put_u8(0);
            scratch.clear();
            encode_for_store(msg, e.expires_at, scratch);
            b.put_u64(scratch.len() as u64);
            b.put_slice(scratch);
        }
        Content::Paged { seq, len } => {
            b.put_u8(1);
            b.put_u64(*seq);
            b.put_u64(*len);
            put_opt(b, e.expires_at);
        }
    }
}

/// An entry of a snapshot of layout `format`; the seq of a paged one is added to `live`.
fn get_entry(r: &mut Bytes, format: u8, live: &mut BTreeSet<u64>) -> io::Result<Entry> {
    let id = get_u64(r)?;
    let delivered = get_u8(r)? != 0;
    let returns = get_u32(r)?;
    let paged = format != SNAPSHOT_FORMAT_INLINE && get_u8(r)? == 1;
    if paged {
        let (seq, len, expires_at) = (get_u64(r)?, get_u64(r)?, get_opt(r)?);
        if !live.insert(seq) {
            return Err(bad("a paged message named twice"));
        }
        return Ok(Entry { id, content: Content::Paged { seq, len }, expires_at, delivered, returns });
    }
    let n = usize::try_from(get_u64(r)?).map_err(|_| bad("a message too long"))?;
    need(r, n)?;
    let (msg, expires_at) = decode_from_store(r.split_to(n)).ok_or_else(|| bad("a message it cannot decode"))?;
    Ok(Entry { id, content: Content::Held(msg), expires_at, delivered, returns })
}
