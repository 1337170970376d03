//! A seeded, deterministic simulation of the broker core.
//!
//! From a seed, a few thousand random client actions (connections and channels opened and
//! closed, abruptly too; qos, consumers, publishes with confirms or transactions, gets, acks,
//! nacks and rejects, purges, time passing, store sync rounds, sometimes finished steps later)
//! drive a [`Broker`] on an in-memory disk. A [`Model`] of every client and queue, built only
//! from what the clients sent and what the broker answered, is checked after every step:
//! where each message is, queue counts, delivery tags, prefetch limits, confirms and
//! commit-oks only after the sync round that covered them. At the end a power cut must keep
//! every confirmed message that was not settled, everything is drained, and the broker's
//! counters must agree with the model. The same seed run twice must give the same output.
//!
//! `WARREN_SIM_SEED=<n>` replays one seed (`WARREN_SIM_STEPS=<n>` sets its length;
//! `WARREN_SIM_DUMP=<file>` writes the actions and outputs there when a check fails).

mod common;

use bytes::Bytes;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use warren_amqp::{assemble_ahead, BasicProperties, FieldTable, FieldValue, Frame, Input, Method};
use warren_core::{Broker, Config, ConnInfo, Out, Stage, SyncJob, Tally};
use warren_store::{Backend, MemBackend};

// ---- topology --------------------------------------------------------------------------

/// A queue of the simulation, declared at the start.
struct QSpec {
    name: &'static str,
    durable: bool,
    /// Consumers may attach. Queues whose messages leave on their own (TTL) or whose length
    /// limit drops the head are read with basic.get only, so that every message that leaves
    /// them is accounted for by the model at a known moment.
    consumable: bool,
    max_len: Option<usize>,
    /// x-overflow reject-publish (otherwise drop-head).
    reject_publish: bool,
    ttl_ms: Option<u64>,
    /// Dead-letters to [`DEAD`] through the "dlx" exchange.
    dlx: bool,
    max_priority: Option<u8>,
}

/// A queue with no limits, TTL, dead-lettering or priorities.
const fn spec(name: &'static str, durable: bool, consumable: bool) -> QSpec {
    QSpec {
        name,
        durable,
        consumable,
        max_len: None,
        reject_publish: false,
        ttl_ms: None,
        dlx: false,
        max_priority: None,
    }
}

const QUEUES: &[QSpec] = &[
    spec("plain", false, true),
    spec("durable", true, true),
    QSpec { max_priority: Some(3), ..spec("prio", true, true) },
    spec("dead", true, true),
    QSpec { max_len: Some(4), dlx: true, ..spec("capped", false, false) },
    QSpec { ttl_ms: Some(60), dlx: true, ..spec("ttl", true, false) },
    QSpec { max_len: Some(3), reject_publish: true, ..spec("refusing", false, false) },
];

/// The dead-letter queue ("dead").
const DEAD: usize = 3;
const SETUP_CONN: u64 = 1_000_000;

fn queue_arguments(spec: &QSpec) -> FieldTable {
    let mut t = FieldTable::new();
    if let Some(n) = spec.max_len {
        t.insert("x-max-length", FieldValue::I32(n as i32));
    }
    if spec.reject_publish {
        t.insert("x-overflow", "reject-publish".into());
    }
    if let Some(ms) = spec.ttl_ms {
        t.insert("x-message-ttl", FieldValue::I32(ms as i32));
    }
    if spec.dlx {
        t.insert("x-dead-letter-exchange", "dlx".into());
        t.insert("x-dead-letter-routing-key", "dead".into());
    }
    if let Some(p) = spec.max_priority {
        t.insert("x-max-priority", FieldValue::I32(i32::from(p)));
    }
    t
}

// ---- actions ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Action {
    OpenConnection,
    /// The socket goes away (no close handshake): `Broker::connection_closed`.
    DropConnection {
        conn: u64,
    },
    OpenChannel {
        conn: u64,
        ch: u16,
    },
    CloseChannel {
        conn: u64,
        ch: u16,
    },
    Qos {
        conn: u64,
        ch: u16,
        count: u16,
        global: bool,
    },
    /// `named: false` lets the broker name the consumer (an empty tag).
    Consume {
        conn: u64,
        ch: u16,
        queue: usize,
        no_ack: bool,
        named: bool,
    },
    Cancel {
        conn: u64,
        ch: u16,
        tag: String,
    },
    /// `queue: None` publishes to a routing key no queue has.
    Publish {
        conn: u64,
        ch: u16,
        queue: Option<usize>,
        persistent: bool,
        mandatory: bool,
        priority: u8,
    },
    Get {
        conn: u64,
        ch: u16,
        queue: usize,
        no_ack: bool,
    },
    Ack {
        conn: u64,
        ch: u16,
        tag: u64,
        multiple: bool,
    },
    Nack {
        conn: u64,
        ch: u16,
        tag: u64,
        multiple: bool,
        requeue: bool,
    },
    Reject {
        conn: u64,
        ch: u16,
        tag: u64,
        requeue: bool,
    },
    /// An ack of a tag the client never got: the broker closes the channel (406).
    AckUnknown {
        conn: u64,
        ch: u16,
    },
    Purge {
        conn: u64,
        ch: u16,
        queue: usize,
    },
    ConfirmSelect {
        conn: u64,
        ch: u16,
    },
    TxSelect {
        conn: u64,
        ch: u16,
    },
    TxCommit {
        conn: u64,
        ch: u16,
    },
    TxRollback {
        conn: u64,
        ch: u16,
    },
    Tick {
        ms: u64,
    },
    BeginSync {
        all: bool,
    },
    EndSync,
    /// Checks what a power cut now would leave (the broker goes on undisturbed).
    PowerCut,
}

// ---- the model -------------------------------------------------------------------------

/// Where a message ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Acked,
    AutoAcked,
    Purged,
    /// Rejected, expired or dropped by a queue without a dead-letter exchange.
    Dropped,
    /// Never accepted by a queue: unroutable, refused (reject-publish), rolled back, or
    /// published in a transaction whose channel closed.
    NotAccepted,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Loc {
    /// Published in a transaction, not committed yet.
    InTx,
    Ready(usize),
    Unacked {
        conn: u64,
        ch: u16,
        tag: u64,
    },
    Done(End),
}

/// A message's place in its queue: higher priority lanes first, then arrival order.
type Key = (Reverse<u8>, u64);

#[derive(Debug, Clone)]
struct Msg {
    /// The queue it is (or was last) in.
    queue: usize,
    key: Key,
    expires_at: Option<u64>,
    /// Delivered before: the next delivery is marked redelivered.
    delivered: bool,
    persistent: bool,
    priority: u8,
    loc: Loc,
    dead_lettered: bool,
    /// A confirm or commit-ok promised it is on disk.
    promised: bool,
    /// Queues it was ever appended to (bit per queue).
    pushed_into: u32,
}

#[derive(Debug, Default)]
struct QModel {
    ready: BTreeMap<Key, usize>,
    next_order: [u64; 4],
}

#[derive(Debug, Clone)]
struct Consumer {
    queue: usize,
    no_ack: bool,
    /// The channel's per-consumer prefetch when it was created (0: none).
    prefetch: u16,
    unacked: u32,
    /// Creation order: choices never depend on (broker-generated) tags.
    seq: u64,
}

/// A publish confirm (or a tx.commit-ok) the client waits for.
#[derive(Debug, Clone)]
struct Pending {
    /// It needs a sync round that began after it.
    needs_sync: bool,
    /// Sync rounds begun before it was made: round `after_round` or later covers it.
    after_round: u64,
    /// A queue refused it: a basic.nack is expected.
    nack: bool,
    /// The messages it promises are on disk (persistent, in a durable queue).
    msgs: Vec<usize>,
}

#[derive(Debug, Clone, Copy)]
enum SettleOp {
    Ack { tag: u64, multiple: bool },
    Nack { tag: u64, multiple: bool, requeue: bool },
}

#[derive(Debug, Clone)]
struct TxPublish {
    msg: usize,
    queue: Option<usize>,
    mandatory: bool,
}

#[derive(Debug, Default)]
struct Tx {
    publishes: Vec<TxPublish>,
    ops: Vec<SettleOp>,
    /// Tags an op of this transaction names (a second op naming one is refused).
    held: BTreeSet<u64>,
}

#[derive(Debug, Default)]
struct Chan {
    next_tag: u64,
    /// Delivery tag -> (message, consumer tag; None for basic.get).
    unacked: BTreeMap<u64, (usize, Option<String>)>,
    consumers: BTreeMap<String, Consumer>,
    prefetch_consumer: u16,
    prefetch_channel: u16,
    /// Confirm mode: next publish sequence number and the confirms still owed.
    confirm: Option<(u64, BTreeMap<u64, Pending>)>,
    tx: Option<Tx>,
    commits: VecDeque<Pending>,
}

#[derive(Debug, Default)]
struct ConnModel {
    channels: BTreeMap<u16, Chan>,
}

/// The broker's counters as the model expects them.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Counts {
    received: u64,
    received_confirm: u64,
    routed: u64,
    unroutable_dropped: u64,
    unroutable_returned: u64,
    consume_manual: u64,
    consume_auto: u64,
    get_manual: u64,
    get_auto: u64,
    redelivered: u64,
    acknowledged: u64,
    dead_lettered: [[u64; 2]; 4],
}

#[derive(Debug, Clone, Copy)]
enum Reason {
    Expired = 0,
    MaxLen = 1,
    Rejected = 2,
}

#[derive(Default)]
struct Model {
    msgs: Vec<Msg>,
    queues: Vec<QModel>,
    conns: BTreeMap<u64, ConnModel>,
    /// Sync rounds begun, and the last one that ended.
    rounds_begun: u64,
    covered_through: Option<u64>,
    counts: Counts,
}

type Check = Result<(), String>;

macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(format!($($fmt)+));
        }
    };
}

fn body_of(id: usize) -> String {
    format!("m{id}")
}

fn id_of(body: &[u8]) -> Result<usize, String> {
    let s = std::str::from_utf8(body).map_err(|_| "a body that is not UTF-8".to_string())?;
    s.strip_prefix('m').and_then(|n| n.parse().ok()).ok_or_else(|| format!("a body never published: {s:?}"))
}

impl Model {
    fn new() -> Self {
        Model { queues: QUEUES.iter().map(|_| QModel::default()).collect(), ..Default::default() }
    }

    fn chan(&mut self, conn: u64, ch: u16) -> &mut Chan {
        self.conns.get_mut(&conn).and_then(|c| c.channels.get_mut(&ch)).expect("the model's channel")
    }

    fn covered(&self, p: &Pending) -> bool {
        !p.needs_sync || self.covered_through.is_some_and(|r| r >= p.after_round)
    }

    fn new_msg(&mut self, persistent: bool, priority: u8) -> usize {
        self.msgs.push(Msg {
            queue: 0,
            key: (Reverse(0), 0),
            expires_at: None,
            delivered: false,
            persistent,
            priority,
            loc: Loc::InTx,
            dead_lettered: false,
            promised: false,
            pushed_into: 0,
        });
        self.msgs.len() - 1
    }

    /// Appends a message to a queue (which has room). Returns whether it needs a sync.
    fn append(&mut self, q: usize, id: usize, now: u64) -> bool {
        let spec = &QUEUES[q];
        let lane = spec.max_priority.map_or(0, |max| self.msgs[id].priority.min(max));
        let order = self.queues[q].next_order[usize::from(lane)];
        self.queues[q].next_order[usize::from(lane)] += 1;
        let key = (Reverse(lane), order);
        self.queues[q].ready.insert(key, id);
        let m = &mut self.msgs[id];
        m.queue = q;
        m.key = key;
        m.expires_at = spec.ttl_ms.map(|t| now + t);
        m.loc = Loc::Ready(q);
        m.pushed_into |= 1 << q;
        spec.durable && m.persistent
    }

    fn pop_head(&mut self, q: usize) -> Option<usize> {
        self.queues[q].ready.pop_first().map(|(_, id)| id)
    }

    /// A publish reaches queue `q` (or none). Returns (accepted, needs sync).
    fn route(&mut self, q: Option<usize>, id: usize, now: u64) -> (bool, bool) {
        let Some(q) = q else {
            self.msgs[id].loc = Loc::Done(End::NotAccepted);
            return (false, false);
        };
        self.counts.routed += 1;
        let spec = &QUEUES[q];
        let mut dead = Vec::new();
        if let Some(max) = spec.max_len {
            if self.queues[q].ready.len() + 1 > max {
                if spec.reject_publish {
                    self.msgs[id].loc = Loc::Done(End::NotAccepted);
                    return (false, false);
                }
                while self.queues[q].ready.len() + 1 > max {
                    let Some(head) = self.pop_head(q) else { break };
                    dead.push((q, head, Reason::MaxLen));
                }
            }
        }
        let needs_sync = self.append(q, id, now);
        self.dead_letter(dead, now);
        (true, needs_sync)
    }

    /// Messages that died in their queue (already taken out of it), in order.
    fn dead_letter(&mut self, dead: Vec<(usize, usize, Reason)>, now: u64) {
        for (from, id, reason) in dead {
            let to_exchange = QUEUES[from].dlx;
            self.counts.dead_lettered[reason as usize][usize::from(to_exchange)] += 1;
            if to_exchange {
                self.msgs[id].delivered = false;
                self.msgs[id].dead_lettered = true;
                self.append(DEAD, id, now);
            } else {
                self.msgs[id].loc = Loc::Done(End::Dropped);
            }
        }
    }

    /// Expired messages at the head of a queue leave it.
    fn expire(&mut self, q: usize, now: u64) {
        let mut dead = Vec::new();
        while let Some((_, &id)) = self.queues[q].ready.first_key_value() {
            if self.msgs[id].expires_at.is_none_or(|t| t >= now) {
                break;
            }
            self.pop_head(q);
            dead.push((q, id, Reason::Expired));
        }
        self.dead_letter(dead, now);
    }

    /// Deliveries go back to their queues, in order; then drop-head length limits apply.
    fn requeue(&mut self, ids: Vec<usize>, now: u64) {
        let mut touched: Vec<usize> = Vec::new();
        for id in ids {
            let m = &mut self.msgs[id];
            m.loc = Loc::Ready(m.queue);
            self.queues[m.queue].ready.insert(m.key, id);
            if !touched.contains(&m.queue) {
                touched.push(m.queue);
            }
        }
        let mut dead = Vec::new();
        for q in touched {
            let spec = &QUEUES[q];
            if spec.reject_publish {
                continue;
            }
            while spec.max_len.is_some_and(|max| self.queues[q].ready.len() > max) {
                let Some(head) = self.pop_head(q) else { break };
                dead.push((q, head, Reason::MaxLen));
            }
        }
        self.dead_letter(dead, now);
    }

    /// The deliveries an ack / nack names, taken off the channel (and their consumers).
    fn take_acked(&mut self, conn: u64, ch: u16, tag: u64, multiple: bool) -> Result<Vec<usize>, String> {
        let c = self.chan(conn, ch);
        let tags: Vec<u64> = if multiple {
            c.unacked.range(..=tag).map(|(&t, _)| t).collect()
        } else {
            c.unacked.contains_key(&tag).then_some(tag).into_iter().collect()
        };
        ensure!(!tags.is_empty(), "model: settling unknown tag {tag} on {conn}/{ch}");
        let mut ids = Vec::new();
        for t in tags {
            let (id, consumer) = c.unacked.remove(&t).expect("listed");
            if let Some(co) = consumer.and_then(|t| c.consumers.get_mut(&t)) {
                co.unacked -= 1;
            }
            ids.push(id);
        }
        Ok(ids)
    }

    fn settle(&mut self, conn: u64, ch: u16, op: SettleOp, now: u64) -> Check {
        match op {
            SettleOp::Ack { tag, multiple } => {
                let ids = self.take_acked(conn, ch, tag, multiple)?;
                self.counts.acknowledged += ids.len() as u64;
                for id in ids {
                    self.msgs[id].loc = Loc::Done(End::Acked);
                }
            }
            SettleOp::Nack { tag, multiple, requeue: true } => {
                let ids = self.take_acked(conn, ch, tag, multiple)?;
                self.requeue(ids, now);
            }
            SettleOp::Nack { tag, multiple, requeue: false } => {
                let ids = self.take_acked(conn, ch, tag, multiple)?;
                let dead = ids.into_iter().map(|id| (self.msgs[id].queue, id, Reason::Rejected)).collect();
                self.dead_letter(dead, now);
            }
        }
        Ok(())
    }

    /// A channel goes (closed by either side, or with its connection): its consumers go, its
    /// transaction and owed confirms are dropped, its deliveries requeued.
    fn release_channel(&mut self, conn: u64, ch: u16, now: u64) {
        let Some(c) = self.conns.get_mut(&conn).and_then(|c| c.channels.remove(&ch)) else { return };
        if let Some(tx) = c.tx {
            for p in tx.publishes {
                self.msgs[p.msg].loc = Loc::Done(End::NotAccepted);
            }
        }
        let ids: Vec<usize> = c.unacked.values().map(|(id, _)| *id).collect();
        self.requeue(ids, now);
    }

    fn unacked_in(&self, q: usize) -> usize {
        self.conns
            .values()
            .flat_map(|c| c.channels.values())
            .flat_map(|ch| ch.unacked.values())
            .filter(|(id, _)| self.msgs[*id].queue == q)
            .count()
    }

    fn consumers_on(&self, q: usize) -> usize {
        self.conns
            .values()
            .flat_map(|c| c.channels.values())
            .flat_map(|ch| ch.consumers.values())
            .filter(|co| co.queue == q)
            .count()
    }

    /// The model agrees with itself: every queue and channel holds what its messages say.
    fn check_structure(&self) -> Check {
        let mut seen = 0;
        for (q, qm) in self.queues.iter().enumerate() {
            for (key, &id) in &qm.ready {
                let m = &self.msgs[id];
                ensure!(m.loc == Loc::Ready(q) && m.key == *key, "model: m{id} listed ready in {q} but {:?}", m.loc);
                seen += 1;
            }
        }
        for (&conn, c) in &self.conns {
            for (&ch, chan) in &c.channels {
                for (&tag, &(id, _)) in &chan.unacked {
                    let loc = self.msgs[id].loc;
                    ensure!(
                        loc == Loc::Unacked { conn, ch, tag },
                        "model: m{id} unacked at {conn}/{ch}/{tag} but {loc:?}"
                    );
                    seen += 1;
                }
            }
        }
        let live = self.msgs.iter().filter(|m| matches!(m.loc, Loc::Ready(_) | Loc::Unacked { .. })).count();
        ensure!(live == seen, "model: {live} messages are live, {seen} are held");
        Ok(())
    }
}

// ---- the simulation --------------------------------------------------------------------

/// A closing connection's consumers: (channel, tag) -> (queue, no_ack).
struct Sim {
    seed: u64,
    rng: fastrand::Rng,
    broker: Broker,
    mem: MemBackend,
    now: u64,
    model: Model,
    /// A sync round begun and not finished, with its index.
    job: Option<(SyncJob, u64)>,
    max_conns: usize,
    next_conn: u64,
    next_ctag: u64,
    /// What the current step expects.
    strict_order: bool,
    expect_get: Option<(u64, u16, usize, bool)>,
    expect_returns: VecDeque<(u64, u16, usize)>,
    expect_channel_close: Option<(u64, u16)>,
    replies: Vec<(u64, u16, Method)>,
    /// A consumer the broker is to name: it joins the model at consume-ok.
    unnamed_consumer: Option<(u64, u16, Consumer)>,
    /// The connection `connection_closed` is taking down: nothing may be sent to it.
    dying: Option<u64>,
    /// Messages power cuts had to keep.
    cut_required: u64,
    /// What the last purge removed, by the model.
    purged: u32,
    /// Every (connection, output) in order, as `{:?}`.
    stream: Vec<String>,
    history: VecDeque<String>,
    /// Publishes sent so far: one in three goes as frames, one assembled ahead, as the server
    /// does outside the lock (`Broker::handle_content`), and one assembled ahead and handed to
    /// the broker shared (`Broker::publish_shared`, as the server does when connections
    /// publish in parallel).
    publishes_sent: u64,
    /// Acks, nacks and rejects sent so far: every other one is offered to the broker shared
    /// (`Broker::settle_shared`).
    settles_sent: u64,
    /// Publishes and settles the broker took while shared, and publishes it handed back to be
    /// handled held.
    shared_taken: u64,
    shared_handed_back: u64,
}

fn persistent_props(persistent: bool, priority: u8) -> BasicProperties {
    BasicProperties {
        delivery_mode: Some(if persistent { 2 } else { 1 }),
        priority: (priority > 0).then_some(priority),
        ..Default::default()
    }
}

/// Deliveries staged while the broker is shared, in order.
#[derive(Default)]
struct Staged(std::cell::RefCell<Vec<(u64, Out)>>);

impl Stage for Staged {
    fn stage(&self, conn: u64, out: Out) {
        self.0.borrow_mut().push((conn, out));
    }
}

impl Sim {
    fn new(seed: u64) -> Self {
        let mem = MemBackend::new();
        let backend: Arc<dyn Backend> = Arc::new(mem.clone());
        let config = Config { consumer_timeout_ms: None, seed, ..Config::default() };
        let (broker, _) = Broker::open(config, backend, PathBuf::from("/data")).expect("opens");
        let mut rng = fastrand::Rng::with_seed(seed);
        let max_conns = rng.usize(3..=8);
        let mut sim = Sim {
            seed,
            rng,
            broker,
            mem,
            now: 1_000_000,
            model: Model::new(),
            job: None,
            max_conns,
            next_conn: 1,
            next_ctag: 1,
            publishes_sent: 0,
            settles_sent: 0,
            shared_taken: 0,
            shared_handed_back: 0,
            strict_order: true,
            expect_get: None,
            expect_returns: VecDeque::new(),
            expect_channel_close: None,
            replies: Vec::new(),
            unnamed_consumer: None,
            dying: None,
            cut_required: 0,
            purged: 0,
            stream: Vec::new(),
            history: VecDeque::new(),
        };
        sim.setup();
        sim
    }

    fn conn_info() -> ConnInfo {
        ConnInfo {
            user: "guest".into(),
            vhost: "/".into(),
            peer: "sim".into(),
            client_properties: common::caps(true),
            channel_max: 2047,
            session: Default::default(),
        }
    }

    /// Declares the topology on a connection of its own, then closes it.
    fn setup(&mut self) {
        let mut out = Vec::new();
        self.broker.open_connection(SETUP_CONN, Self::conn_info()).expect("opens");
        let send = |b: &mut Broker, method: Method, out: &mut Vec<(u64, Out)>| {
            b.handle_frame(SETUP_CONN, Frame::Method { channel: 1, method }, 0, out);
            b.end_batch(SETUP_CONN, out);
        };
        send(&mut self.broker, Method::ChannelOpen, &mut out);
        let dlx = Method::ExchangeDeclare {
            exchange: "dlx".into(),
            kind: "direct".into(),
            passive: false,
            durable: true,
            auto_delete: false,
            internal: false,
            nowait: false,
            arguments: FieldTable::new(),
        };
        send(&mut self.broker, dlx, &mut out);
        for spec in QUEUES {
            let declare = Method::QueueDeclare {
                queue: spec.name.into(),
                passive: false,
                durable: spec.durable,
                exclusive: false,
                auto_delete: false,
                nowait: false,
                arguments: queue_arguments(spec),
            };
            send(&mut self.broker, declare, &mut out);
        }
        let bind = Method::QueueBind {
            queue: QUEUES[DEAD].name.into(),
            exchange: "dlx".into(),
            routing_key: "dead".into(),
            nowait: false,
            arguments: FieldTable::new(),
        };
        send(&mut self.broker, bind, &mut out);
        self.broker.connection_closed(SETUP_CONN, 0, &mut out);
        let closes = out.iter().filter(|(_, o)| matches!(o, Out::Method { method: Method::ChannelClose { .. }, .. }));
        assert_eq!(closes.count(), 0, "the setup failed: {out:?}");
        self.stream.extend(out.iter().map(|o| format!("{o:?}")));
    }

    fn fail(&self, step: usize, why: &str) -> ! {
        if let Ok(path) = std::env::var("WARREN_SIM_DUMP") {
            let _ = std::fs::write(path, self.stream.join("\n"));
        }
        let actions: Vec<&str> = self.history.iter().map(String::as_str).collect();
        panic!(
            "simulation seed {} failed at step {step}: {why}\nlast actions (oldest first):\n  {}\nreplay: WARREN_SIM_SEED={} cargo test -p warren-core --test simulation",
            self.seed,
            actions.join("\n  "),
            self.seed
        );
    }

    // ---- choosing actions --------------------------------------------------------------

    fn channels(&self) -> Vec<(u64, u16)> {
        self.model.conns.iter().flat_map(|(&c, cm)| cm.channels.keys().map(move |&ch| (c, ch))).collect()
    }

    fn chan_ref(&self, conn: u64, ch: u16) -> Option<&Chan> {
        self.model.conns.get(&conn).and_then(|c| c.channels.get(&ch))
    }

    fn pick<T: Clone>(&mut self, v: &[T]) -> Option<T> {
        (!v.is_empty()).then(|| v[self.rng.usize(..v.len())].clone())
    }

    fn choose(&mut self) -> Action {
        loop {
            if let Some(a) = self.try_choose() {
                return a;
            }
        }
    }

    fn try_choose(&mut self) -> Option<Action> {
        let chans = self.channels();
        let (conn, ch) = self.pick(&chans).unwrap_or((0, 0));
        let has_ch = !chans.is_empty();
        let roll = self.rng.u32(..100);
        Some(match roll {
            0..=2 if self.model.conns.len() < self.max_conns => Action::OpenConnection,
            3..=4 if !self.model.conns.is_empty() => {
                let conns: Vec<u64> = self.model.conns.keys().copied().collect();
                Action::DropConnection { conn: self.pick(&conns)? }
            }
            5..=8 if !self.model.conns.is_empty() => {
                let conns: Vec<u64> = self.model.conns.keys().copied().collect();
                let conn = self.pick(&conns)?;
                let ch = self.rng.u16(1..=3);
                if self.model.conns[&conn].channels.contains_key(&ch) {
                    return None;
                }
                Action::OpenChannel { conn, ch }
            }
            9..=10 if has_ch => Action::CloseChannel { conn, ch },
            11..=13 if has_ch => Action::Qos { conn, ch, count: self.rng.u16(0..=4), global: self.rng.bool() },
            14..=19 if has_ch => {
                let consumable: Vec<usize> = (0..QUEUES.len()).filter(|&q| QUEUES[q].consumable).collect();
                let queue = self.pick(&consumable)?;
                Action::Consume { conn, ch, queue, no_ack: self.rng.u8(..4) == 0, named: self.rng.u8(..4) != 0 }
            }
            20..=22 if has_ch => {
                let mut tags: Vec<(u64, String)> =
                    self.chan_ref(conn, ch)?.consumers.iter().map(|(t, co)| (co.seq, t.clone())).collect();
                tags.sort();
                let tags: Vec<String> = tags.into_iter().map(|(_, t)| t).collect();
                Action::Cancel { conn, ch, tag: self.pick(&tags)? }
            }
            23..=44 if has_ch => {
                let queue = if self.rng.u8(..12) == 0 { None } else { Some(self.rng.usize(..QUEUES.len())) };
                Action::Publish {
                    conn,
                    ch,
                    queue,
                    persistent: self.rng.bool(),
                    mandatory: self.rng.u8(..3) == 0,
                    priority: self.rng.u8(..6),
                }
            }
            45..=51 if has_ch => {
                Action::Get { conn, ch, queue: self.rng.usize(..QUEUES.len()), no_ack: self.rng.u8(..3) == 0 }
            }
            52..=66 if has_ch => {
                let c = self.chan_ref(conn, ch)?;
                let tags: Vec<u64> =
                    c.unacked.keys().copied().filter(|t| c.tx.as_ref().is_none_or(|tx| !tx.held.contains(t))).collect();
                let tag = self.pick(&tags)?;
                let (multiple, requeue) = (self.rng.u8(..3) == 0, self.rng.bool());
                match self.rng.u8(..4) {
                    0 | 1 => Action::Ack { conn, ch, tag, multiple },
                    2 => Action::Nack { conn, ch, tag, multiple, requeue },
                    _ => Action::Reject { conn, ch, tag, requeue },
                }
            }
            67 if has_ch => Action::AckUnknown { conn, ch },
            68..=69 if has_ch => Action::Purge { conn, ch, queue: self.rng.usize(..QUEUES.len()) },
            70..=71 if has_ch => {
                let c = self.chan_ref(conn, ch)?;
                if c.tx.is_some() || c.confirm.is_some() {
                    return None;
                }
                Action::ConfirmSelect { conn, ch }
            }
            72 if has_ch => {
                let c = self.chan_ref(conn, ch)?;
                if c.tx.is_some() || c.confirm.is_some() {
                    return None;
                }
                Action::TxSelect { conn, ch }
            }
            73..=76 if has_ch => {
                self.chan_ref(conn, ch)?.tx.as_ref()?;
                if self.rng.u8(..4) == 0 {
                    Action::TxRollback { conn, ch }
                } else {
                    Action::TxCommit { conn, ch }
                }
            }
            77..=84 => Action::Tick { ms: self.rng.u64(0..=40) },
            85..=90 if self.job.is_none() => Action::BeginSync { all: self.rng.u8(..4) == 0 },
            91..=98 if self.job.is_some() => Action::EndSync,
            99 => Action::PowerCut,
            _ => return None,
        })
    }

    // ---- doing actions -----------------------------------------------------------------

    fn send(&mut self, conn: u64, ch: u16, method: Method, out: &mut Vec<(u64, Out)>) {
        if matches!(method, Method::BasicAck { .. } | Method::BasicNack { .. } | Method::BasicReject { .. }) {
            self.settles_sent += 1;
            // Every other settle is first offered to the broker shared, as the server does.
            if self.settles_sent.is_multiple_of(2) {
                let stage = Staged::default();
                let mut tally = Tally::default();
                let taken = self.broker.settle_shared(conn, ch, &method, self.now, out, &mut tally, &stage);
                out.extend(stage.0.into_inner());
                if taken {
                    self.shared_taken += 1;
                    self.broker.end_batch_shared(conn, out, &mut tally);
                }
                self.broker.finish_shared(tally);
                self.broker.fold_shared();
                if taken {
                    return;
                }
            }
        }
        self.broker.handle_frame(conn, Frame::Method { channel: ch, method }, self.now, out);
        self.broker.end_batch(conn, out);
    }

    fn send_publish(
        &mut self,
        conn: u64,
        ch: u16,
        key: &str,
        mandatory: bool,
        props: BasicProperties,
        body: String,
    ) -> Vec<(u64, Out)> {
        let mut out = Vec::new();
        let m = Method::BasicPublish { exchange: "".into(), routing_key: key.into(), mandatory, immediate: false };
        let header =
            Frame::Header { channel: ch, class_id: 60, body_size: body.len() as u64, properties: props.to_bytes() };
        let b = Frame::Body { channel: ch, payload: Bytes::from(body.into_bytes()) };
        let frames = vec![Frame::Method { channel: ch, method: m }, header, b];
        self.publishes_sent += 1;
        if self.publishes_sent.is_multiple_of(3) {
            for f in frames {
                self.broker.handle_frame(conn, f, self.now, &mut out);
            }
        } else if self.publishes_sent % 3 == 2 {
            let mut inputs = Vec::new();
            assemble_ahead(frames, self.broker.config().max_message_size, &mut inputs);
            let Some(Input::Content { channel, content }) = inputs.pop() else { panic!("a whole publish") };
            let stage = Staged::default();
            let mut tally = Tally::default();
            let handed_back =
                self.broker.publish_shared(conn, channel, content, self.now, &mut out, &mut tally, &stage);
            // Staged deliveries reach their connections before the publisher's own answers.
            let mut staged = stage.0.into_inner();
            staged.append(&mut out);
            out = staged;
            self.broker.end_batch_shared(conn, &mut out, &mut tally);
            self.broker.finish_shared(tally);
            // The server folds the tally in when it next holds the broker.
            self.broker.fold_shared();
            if let Some(content) = handed_back {
                self.shared_handed_back += 1;
                // It needs the broker held: handed over as the server then does.
                self.broker.handle_content(conn, channel, content, self.now, &mut out);
            } else {
                self.shared_taken += 1;
                return out;
            }
        } else {
            let mut inputs = Vec::new();
            assemble_ahead(frames, self.broker.config().max_message_size, &mut inputs);
            assert!(matches!(inputs[..], [Input::Content { .. }]), "a whole publish is assembled ahead");
            for input in inputs {
                match input {
                    Input::Frame(f) => self.broker.handle_frame(conn, f, self.now, &mut out),
                    Input::Content { channel, content } => {
                        self.broker.handle_content(conn, channel, content, self.now, &mut out)
                    }
                }
            }
        }
        self.broker.end_batch(conn, &mut out);
        out
    }

    /// Routes a publish in the model, and records its confirm or return.
    fn model_route(&mut self, conn: u64, ch: u16, p: &TxPublish) -> (bool, bool) {
        let (accepted, needs_sync) = self.model.route(p.queue, p.msg, self.now);
        if p.queue.is_none() {
            if p.mandatory {
                self.model.counts.unroutable_returned += 1;
                self.expect_returns.push_back((conn, ch, p.msg));
            } else {
                self.model.counts.unroutable_dropped += 1;
            }
        }
        (accepted, needs_sync)
    }

    /// Does an action: updates the model with what must happen, drives the broker, and
    /// checks what came out.
    fn act(&mut self, action: &Action) -> Check {
        let mut out = Vec::new();
        self.strict_order = true;
        let now = self.now;
        match *action {
            Action::OpenConnection => {
                let conn = self.next_conn;
                self.next_conn += 1;
                self.broker.open_connection(conn, Self::conn_info()).map_err(|e| format!("open_connection: {e:?}"))?;
                self.model.conns.insert(conn, ConnModel::default());
            }
            Action::DropConnection { conn } => {
                // The channels go in order, and a later one's requeues may follow deliveries
                // of an earlier one's: deliveries need only come from the ready messages.
                self.strict_order = false;
                let chans: Vec<u16> = self.model.conns[&conn].channels.keys().copied().collect();
                self.dying = Some(conn);
                for ch in chans {
                    self.model.release_channel(conn, ch, now);
                }
                self.model.conns.remove(&conn);
                self.broker.connection_closed(conn, now, &mut out);
            }
            Action::OpenChannel { conn, ch } => {
                self.model
                    .conns
                    .get_mut(&conn)
                    .expect("open")
                    .channels
                    .insert(ch, Chan { next_tag: 1, ..Default::default() });
                self.send(conn, ch, Method::ChannelOpen, &mut out);
            }
            Action::CloseChannel { conn, ch } => {
                self.model.release_channel(conn, ch, now);
                let close =
                    Method::ChannelClose { reply_code: 200, reply_text: "bye".into(), class_id: 0, method_id: 0 };
                self.send(conn, ch, close, &mut out);
            }
            Action::Qos { conn, ch, count, global } => {
                let c = self.model.chan(conn, ch);
                if global {
                    c.prefetch_channel = count;
                } else {
                    c.prefetch_consumer = count;
                }
                self.send(conn, ch, Method::BasicQos { prefetch_size: 0, prefetch_count: count, global }, &mut out);
            }
            Action::Consume { conn, ch, queue, no_ack, named } => {
                let c = self.model.chan(conn, ch);
                let seq = self.next_ctag;
                self.next_ctag += 1;
                let consumer = Consumer { queue, no_ack, prefetch: c.prefetch_consumer, unacked: 0, seq };
                let tag = if named {
                    let tag = format!("c{seq}");
                    c.consumers.insert(tag.clone(), consumer);
                    tag
                } else {
                    // Known from consume-ok, which comes before any delivery.
                    self.unnamed_consumer = Some((conn, ch, consumer));
                    String::new()
                };
                let consume = Method::BasicConsume {
                    queue: QUEUES[queue].name.into(),
                    consumer_tag: tag.as_str().into(),
                    no_local: false,
                    no_ack,
                    exclusive: false,
                    nowait: false,
                    arguments: FieldTable::new(),
                };
                self.send(conn, ch, consume, &mut out);
            }
            Action::Cancel { conn, ch, ref tag } => {
                self.model.chan(conn, ch).consumers.remove(tag);
                self.send(conn, ch, Method::BasicCancel { consumer_tag: tag.as_str().into(), nowait: false }, &mut out);
            }
            Action::Publish { conn, ch, queue, persistent, mandatory, priority } => {
                let id = self.model.new_msg(persistent, priority);
                self.model.counts.received += 1;
                let p = TxPublish { msg: id, queue, mandatory };
                let c = self.model.chan(conn, ch);
                if let Some(tx) = c.tx.as_mut() {
                    tx.publishes.push(p);
                } else {
                    let seq = c.confirm.as_ref().map(|(next, _)| *next);
                    let (accepted, needs_sync) = self.model_route(conn, ch, &p);
                    if let Some(seq) = seq {
                        self.model.counts.received_confirm += 1;
                        let pending = Pending {
                            needs_sync,
                            after_round: self.model.rounds_begun,
                            nack: queue.is_some() && !accepted,
                            msgs: if needs_sync { vec![id] } else { Vec::new() },
                        };
                        let (next, owed) = self.model.chan(conn, ch).confirm.as_mut().expect("confirm mode");
                        *next += 1;
                        owed.insert(seq, pending);
                    }
                }
                let key = queue.map_or("nowhere", |q| QUEUES[q].name);
                out = self.send_publish(conn, ch, key, mandatory, persistent_props(persistent, priority), body_of(id));
            }
            Action::Get { conn, ch, queue, no_ack } => {
                self.model.expire(queue, now);
                self.expect_get = Some((conn, ch, queue, no_ack));
                self.send(conn, ch, Method::BasicGet { queue: QUEUES[queue].name.into(), no_ack }, &mut out);
            }
            Action::Ack { conn, ch, tag, multiple } => {
                self.settle(conn, ch, SettleOp::Ack { tag, multiple })?;
                self.send(conn, ch, Method::BasicAck { delivery_tag: tag, multiple }, &mut out);
            }
            Action::Nack { conn, ch, tag, multiple, requeue } => {
                self.settle(conn, ch, SettleOp::Nack { tag, multiple, requeue })?;
                self.send(conn, ch, Method::BasicNack { delivery_tag: tag, multiple, requeue }, &mut out);
            }
            Action::Reject { conn, ch, tag, requeue } => {
                self.settle(conn, ch, SettleOp::Nack { tag, multiple: false, requeue })?;
                self.send(conn, ch, Method::BasicReject { delivery_tag: tag, requeue }, &mut out);
            }
            Action::AckUnknown { conn, ch } => {
                let tag = self.model.chan(conn, ch).next_tag + 1000;
                self.model.release_channel(conn, ch, now);
                self.expect_channel_close = Some((conn, ch));
                self.send(conn, ch, Method::BasicAck { delivery_tag: tag, multiple: false }, &mut out);
            }
            Action::Purge { conn, ch, queue } => {
                let purged: Vec<usize> = std::mem::take(&mut self.model.queues[queue].ready).into_values().collect();
                for &id in &purged {
                    self.model.msgs[id].loc = Loc::Done(End::Purged);
                }
                self.purged = purged.len() as u32;
                self.send(conn, ch, Method::QueuePurge { queue: QUEUES[queue].name.into(), nowait: false }, &mut out);
            }
            Action::ConfirmSelect { conn, ch } => {
                self.model.chan(conn, ch).confirm = Some((1, BTreeMap::new()));
                self.send(conn, ch, Method::ConfirmSelect { nowait: false }, &mut out);
            }
            Action::TxSelect { conn, ch } => {
                self.model.chan(conn, ch).tx = Some(Tx::default());
                self.send(conn, ch, Method::TxSelect, &mut out);
            }
            Action::TxCommit { conn, ch } => {
                // Publishes are routed (and delivered) before the acks apply, which may requeue.
                self.strict_order = false;
                let tx = std::mem::take(self.model.chan(conn, ch).tx.as_mut().expect("tx"));
                let mut needs_sync = false;
                let mut msgs = Vec::new();
                for p in &tx.publishes {
                    if self.model_route(conn, ch, p).1 {
                        needs_sync = true;
                        msgs.push(p.msg);
                    }
                }
                for op in tx.ops {
                    self.model.settle(conn, ch, op, now)?;
                }
                let pending = Pending { needs_sync, after_round: self.model.rounds_begun, nack: false, msgs };
                self.model.chan(conn, ch).commits.push_back(pending);
                self.send(conn, ch, Method::TxCommit, &mut out);
            }
            Action::TxRollback { conn, ch } => {
                let tx = std::mem::take(self.model.chan(conn, ch).tx.as_mut().expect("tx"));
                for p in tx.publishes {
                    self.model.msgs[p.msg].loc = Loc::Done(End::NotAccepted);
                }
                self.send(conn, ch, Method::TxRollback, &mut out);
            }
            Action::Tick { ms } => {
                self.now += ms;
                for q in 0..QUEUES.len() {
                    self.model.expire(q, self.now);
                }
                self.broker.tick(self.now, &mut out);
            }
            Action::BeginSync { all } => {
                let job = self.broker.begin_sync(now, all);
                self.job = Some((job, self.model.rounds_begun));
                self.model.rounds_begun += 1;
            }
            Action::EndSync => {
                let (job, round) = self.job.take().expect("a round in flight");
                for h in &job.handles {
                    h.sync().map_err(|e| format!("sync: {e}"))?;
                }
                self.model.covered_through = Some(round);
                self.broker.end_sync(job.epoch, Vec::new(), now, &mut out);
            }
            Action::PowerCut => self.check_power_cut()?,
        }
        self.observe(out)?;
        self.expect_replies(action)
    }

    /// A settle: applied now, or held by the channel's transaction.
    fn settle(&mut self, conn: u64, ch: u16, op: SettleOp) -> Check {
        let c = self.model.chan(conn, ch);
        if let Some(tx) = c.tx.as_mut() {
            let (tag, multiple) = match op {
                SettleOp::Ack { tag, multiple } | SettleOp::Nack { tag, multiple, .. } => (tag, multiple),
            };
            for (&t, _) in c.unacked.range(..=tag) {
                if multiple || t == tag {
                    tx.held.insert(t);
                }
            }
            tx.ops.push(op);
            return Ok(());
        }
        self.model.settle(conn, ch, op, self.now)
    }

    /// The answer each action must have had.
    fn expect_replies(&mut self, action: &Action) -> Check {
        match *action {
            Action::OpenChannel { conn, ch } => self.take_reply(conn, ch, |m| matches!(m, Method::ChannelOpenOk))?,
            Action::CloseChannel { conn, ch } => self.take_reply(conn, ch, |m| matches!(m, Method::ChannelCloseOk))?,
            Action::Qos { conn, ch, .. } => self.take_reply(conn, ch, |m| matches!(m, Method::BasicQosOk))?,
            Action::Consume { conn, ch, .. } => {
                self.take_reply(conn, ch, |m| matches!(m, Method::BasicConsumeOk { .. }))?
            }
            Action::Cancel { conn, ch, ref tag } => self.take_reply(
                conn,
                ch,
                |m| matches!(m, Method::BasicCancelOk { consumer_tag } if consumer_tag.as_str() == tag),
            )?,
            Action::ConfirmSelect { conn, ch } => {
                self.take_reply(conn, ch, |m| matches!(m, Method::ConfirmSelectOk))?
            }
            Action::TxSelect { conn, ch } => self.take_reply(conn, ch, |m| matches!(m, Method::TxSelectOk))?,
            Action::Purge { conn, ch, .. } => {
                let n = self.purged;
                self.take_reply(
                    conn,
                    ch,
                    |m| matches!(m, Method::QueuePurgeOk { message_count } if *message_count == n),
                )?
            }
            Action::TxRollback { conn, ch } => self.take_reply(conn, ch, |m| matches!(m, Method::TxRollbackOk))?,
            Action::AckUnknown { conn, ch } => {
                ensure!(
                    self.expect_channel_close.is_none(),
                    "an ack of an unknown tag did not close channel {conn}/{ch}"
                );
                // The client answers the close; the broker forgets the channel.
                let mut out = Vec::new();
                self.send(conn, ch, Method::ChannelCloseOk, &mut out);
                ensure!(out.is_empty(), "channel.close-ok was answered: {out:?}");
            }
            _ => {}
        }
        ensure!(self.expect_get.is_none(), "basic.get was not answered");
        ensure!(self.unnamed_consumer.is_none(), "basic.consume was not answered");
        ensure!(self.expect_returns.is_empty(), "basic.return missing for {:?}", self.expect_returns);
        ensure!(self.replies.is_empty(), "unexpected answers: {:?}", self.replies);
        Ok(())
    }

    fn take_reply(&mut self, conn: u64, ch: u16, pred: impl Fn(&Method) -> bool) -> Check {
        let at = self.replies.iter().position(|(c, h, m)| *c == conn && *h == ch && pred(m));
        ensure!(at.is_some(), "no expected answer on {conn}/{ch}; got {:?}", self.replies);
        self.replies.remove(at.expect("found"));
        Ok(())
    }

    // ---- what the clients receive -------------------------------------------------------

    fn observe(&mut self, out: Vec<(u64, Out)>) -> Check {
        let mut written: BTreeMap<u64, usize> = BTreeMap::new();
        for (conn, o) in out {
            self.stream.push(format!("{conn} {o:?}"));
            // Its consumers are all detached before any message is requeued (seed 7 once saw a
            // message requeued from one channel delivered to a no-ack consumer on another
            // channel of the same closing connection, and lost).
            ensure!(
                self.dying != Some(conn),
                "output for connection {conn} while connection_closed takes it down: {o:?}"
            );
            ensure!(self.model.conns.contains_key(&conn), "output for a closed connection {conn}: {o:?}");
            match o.to_method() {
                (channel, method, Some(msg)) => {
                    *written.entry(conn).or_default() += msg.wire_size();
                    let id = id_of(&msg.body)?;
                    ensure!(id < self.model.msgs.len(), "m{id} was never published");
                    self.content(conn, channel, method, id)?;
                }
                (channel, method, None) => self.method(conn, channel, method)?,
            }
        }
        self.dying = None;
        for (conn, bytes) in written {
            let mut more = Vec::new();
            self.broker.on_written(conn, bytes, self.now, &mut more);
            ensure!(more.is_empty(), "on_written produced output: {more:?}");
        }
        Ok(())
    }

    fn content(&mut self, conn: u64, ch: u16, method: Method, id: usize) -> Check {
        let strict = self.strict_order;
        let Some(chan) = self.model.conns.get(&conn).and_then(|c| c.channels.get(&ch)) else {
            return Err(format!("content for channel {conn}/{ch}, which is not open: {method:?}"));
        };
        let m = self.model.msgs[id].clone();
        match method {
            Method::BasicDeliver { consumer_tag, delivery_tag, redelivered, .. } => {
                let tag = consumer_tag.to_string();
                let Some(co) = chan.consumers.get(&tag).cloned() else {
                    return Err(format!("m{id} delivered to {conn}/{ch} for consumer {tag}, which it does not have"));
                };
                let q = co.queue;
                ensure!(m.loc == Loc::Ready(q), "m{id} delivered from queue {} but it is {:?}", QUEUES[q].name, m.loc);
                if strict {
                    let head = self.model.queues[q].ready.first_key_value().map(|(_, &h)| h);
                    ensure!(head == Some(id), "m{id} delivered from {} ahead of {head:?}", QUEUES[q].name);
                }
                ensure!(
                    delivery_tag == chan.next_tag,
                    "delivery tag {delivery_tag} on {conn}/{ch}, expected {}",
                    chan.next_tag
                );
                ensure!(redelivered == m.delivered, "m{id} delivered with redelivered={redelivered}");
                let global = chan.prefetch_channel;
                let held = chan.unacked.len();
                ensure!(
                    global == 0 || held < usize::from(global),
                    "m{id} delivered to {conn}/{ch} ({tag}) holding {held} unacked over its global prefetch {global}"
                );
                if !co.no_ack {
                    ensure!(
                        co.prefetch == 0 || co.unacked < u32::from(co.prefetch),
                        "m{id} delivered to consumer {tag} holding {} unacked, its prefetch is {}",
                        co.unacked,
                        co.prefetch
                    );
                }
                self.model.queues[q].ready.remove(&m.key);
                self.model.msgs[id].delivered = true;
                self.model.counts.redelivered += u64::from(redelivered);
                let chan = self.model.conns.get_mut(&conn).and_then(|c| c.channels.get_mut(&ch)).expect("open");
                chan.next_tag += 1;
                if co.no_ack {
                    self.model.counts.consume_auto += 1;
                    self.model.msgs[id].loc = Loc::Done(End::AutoAcked);
                } else {
                    self.model.counts.consume_manual += 1;
                    chan.unacked.insert(delivery_tag, (id, Some(tag.clone())));
                    chan.consumers.get_mut(&tag).expect("consumer").unacked += 1;
                    self.model.msgs[id].loc = Loc::Unacked { conn, ch, tag: delivery_tag };
                }
            }
            Method::BasicGetOk { delivery_tag, redelivered, message_count, .. } => {
                let Some((gc, gch, q, no_ack)) = self.expect_get.take() else {
                    return Err(format!("get-ok of m{id} on {conn}/{ch} without basic.get"));
                };
                ensure!((gc, gch) == (conn, ch), "get-ok on {conn}/{ch} for a get on {gc}/{gch}");
                let head = self.model.queues[q].ready.first_key_value().map(|(_, &h)| h);
                ensure!(head == Some(id), "basic.get of {} gave m{id}, expected {head:?}", QUEUES[q].name);
                ensure!(delivery_tag == chan.next_tag, "get-ok tag {delivery_tag}, expected {}", chan.next_tag);
                ensure!(redelivered == m.delivered, "m{id} got with redelivered={redelivered}");
                self.model.queues[q].ready.remove(&m.key);
                let left = self.model.queues[q].ready.len() as u32;
                ensure!(message_count == left, "get-ok says {message_count} left in {}, model {left}", QUEUES[q].name);
                self.model.msgs[id].delivered = true;
                self.model.counts.redelivered += u64::from(redelivered);
                let chan = self.model.conns.get_mut(&conn).and_then(|c| c.channels.get_mut(&ch)).expect("open");
                chan.next_tag += 1;
                if no_ack {
                    self.model.counts.get_auto += 1;
                    self.model.msgs[id].loc = Loc::Done(End::AutoAcked);
                } else {
                    self.model.counts.get_manual += 1;
                    chan.unacked.insert(delivery_tag, (id, None));
                    self.model.msgs[id].loc = Loc::Unacked { conn, ch, tag: delivery_tag };
                }
            }
            Method::BasicReturn { reply_code, .. } => {
                let expected = self.expect_returns.pop_front();
                ensure!(
                    expected == Some((conn, ch, id)),
                    "basic.return of m{id} on {conn}/{ch}, expected {expected:?}"
                );
                ensure!(reply_code == 312, "basic.return with code {reply_code}");
            }
            other => return Err(format!("unexpected content method {other:?}")),
        }
        Ok(())
    }

    fn method(&mut self, conn: u64, ch: u16, method: Method) -> Check {
        match method {
            Method::BasicAck { delivery_tag, multiple } => self.confirm(conn, ch, delivery_tag, multiple, false),
            Method::BasicNack { delivery_tag, multiple, .. } => self.confirm(conn, ch, delivery_tag, multiple, true),
            Method::BasicGetEmpty => {
                let Some((gc, gch, q, _)) = self.expect_get.take() else {
                    return Err(format!("get-empty on {conn}/{ch} without basic.get"));
                };
                ensure!((gc, gch) == (conn, ch), "get-empty on {conn}/{ch} for a get on {gc}/{gch}");
                let n = self.model.queues[q].ready.len();
                ensure!(n == 0, "basic.get of {} was empty but {n} are ready", QUEUES[q].name);
                Ok(())
            }
            Method::BasicConsumeOk { ref consumer_tag } if self.unnamed_consumer.is_some() => {
                let (c, h, consumer) = self.unnamed_consumer.take().expect("some");
                ensure!((c, h) == (conn, ch), "consume-ok on {conn}/{ch} for a consume on {c}/{h}");
                ensure!(consumer_tag.starts_with("amq.ctag-"), "the broker named a consumer {consumer_tag}");
                let chan = self.model.chan(conn, ch);
                ensure!(!chan.consumers.contains_key(consumer_tag.as_str()), "consumer tag {consumer_tag} given twice");
                chan.consumers.insert(consumer_tag.to_string(), consumer);
                self.replies.push((conn, ch, method));
                Ok(())
            }
            Method::TxCommitOk => {
                let model = &self.model;
                let c = model.conns.get(&conn).and_then(|c| c.channels.get(&ch));
                let Some(p) = c.and_then(|c| c.commits.front()) else {
                    return Err(format!("tx.commit-ok on {conn}/{ch} without a commit"));
                };
                ensure!(model.covered(p), "tx.commit-ok on {conn}/{ch} before the sync round that covers it ended");
                let p = self.model.chan(conn, ch).commits.pop_front().expect("front");
                if p.needs_sync {
                    for id in p.msgs {
                        self.model.msgs[id].promised = true;
                    }
                }
                Ok(())
            }
            Method::ChannelClose { reply_code, ref reply_text, .. } => {
                let expected = self.expect_channel_close.take();
                ensure!(
                    expected == Some((conn, ch)) && reply_code == 406,
                    "the broker closed channel {conn}/{ch}: {reply_code} {reply_text}"
                );
                Ok(())
            }
            Method::ConnectionClose { reply_code, reply_text, .. } => {
                Err(format!("the broker closed connection {conn}: {reply_code} {reply_text}"))
            }
            Method::BasicCancel { consumer_tag, .. } => Err(format!("the broker cancelled consumer {consumer_tag}")),
            other => {
                self.replies.push((conn, ch, other));
                Ok(())
            }
        }
    }

    /// A publisher confirm: it must settle the oldest owed ones, in order, and only once the
    /// sync round that covers a persistent message in a durable queue has ended.
    fn confirm(&mut self, conn: u64, ch: u16, tag: u64, multiple: bool, nack: bool) -> Check {
        let model = &self.model;
        let c = model.conns.get(&conn).and_then(|c| c.channels.get(&ch));
        let Some((_, owed)) = c.and_then(|c| c.confirm.as_ref()) else {
            return Err(format!("a confirm on {conn}/{ch}, which is not in confirm mode"));
        };
        let first = owed.keys().next().copied();
        ensure!(owed.contains_key(&tag), "confirm of {tag} on {conn}/{ch}, which is not owed (owed from {first:?})");
        ensure!(multiple || first == Some(tag), "confirm of {tag} on {conn}/{ch} while {first:?} is owed before it");
        let seqs: Vec<u64> = owed.range(..=tag).map(|(&s, _)| s).collect();
        for s in &seqs {
            let p = &owed[s];
            ensure!(p.nack == nack, "publish {s} on {conn}/{ch} confirmed with nack={nack}");
            ensure!(
                model.covered(p),
                "publish {s} on {conn}/{ch} confirmed before the sync round that covers it ended"
            );
        }
        let (_, owed) = self.model.chan(conn, ch).confirm.as_mut().expect("confirm mode");
        let done: Vec<Pending> = seqs.iter().filter_map(|s| owed.remove(s)).collect();
        for p in done {
            if p.needs_sync && !nack {
                for id in p.msgs {
                    self.model.msgs[id].promised = true;
                }
            }
        }
        Ok(())
    }

    // ---- invariants ----------------------------------------------------------------------

    fn check(&self) -> Check {
        self.model.check_structure()?;
        let infos = self.broker.queues();
        ensure!(infos.len() == QUEUES.len(), "the broker has {} queues", infos.len());
        for (q, spec) in QUEUES.iter().enumerate() {
            let Some(info) = infos.iter().find(|i| i.name == spec.name) else {
                return Err(format!("queue {} is gone", spec.name));
            };
            let ready = self.model.queues[q].ready.len() as u32;
            ensure!(
                info.messages_ready == ready,
                "{}: broker has {} ready, model {ready}",
                spec.name,
                info.messages_ready
            );
            let unacked = self.model.unacked_in(q) as u32;
            ensure!(
                info.messages_unacked == unacked,
                "{}: broker has {} unacked, model {unacked}",
                spec.name,
                info.messages_unacked
            );
            let consumers = self.model.consumers_on(q) as u32;
            ensure!(
                info.consumers == consumers,
                "{}: broker has {} consumers, model {consumers}",
                spec.name,
                info.consumers
            );
        }
        // Confirms and commit-oks are owed only while a sync round they need has not ended.
        for (&conn, c) in &self.model.conns {
            for (&ch, chan) in &c.channels {
                let owed = chan.confirm.iter().flat_map(|(_, o)| o.iter());
                if let Some((seq, p)) = owed.into_iter().next() {
                    ensure!(!self.model.covered(p), "confirm of publish {seq} on {conn}/{ch} is overdue");
                }
                if let Some(p) = chan.commits.front() {
                    ensure!(!self.model.covered(p), "tx.commit-ok on {conn}/{ch} is overdue");
                }
            }
        }
        Ok(())
    }

    fn step(&mut self, i: usize, action: Action) {
        self.history.push_back(format!("{i}: {action:?}"));
        if self.history.len() > 16 {
            self.history.pop_front();
        }
        self.stream.push(format!("-- {action:?}"));
        if let Err(e) = self.act(&action).and_then(|()| self.check()) {
            self.fail(i, &e);
        }
    }

    // ---- the end ---------------------------------------------------------------------------

    /// A power cut now: a broker opened on what the disk keeps must have every message a
    /// confirm or commit-ok promised and that was not settled, and nothing never published.
    fn check_power_cut(&mut self) -> Check {
        let cut = self.mem.snapshot();
        cut.crash(&mut |_, durable, _| durable);
        let backend: Arc<dyn Backend> = Arc::new(cut);
        let (mut b, _) =
            Broker::open(Config::default(), backend, PathBuf::from("/data")).map_err(|e| format!("reopen: {e}"))?;
        b.open_connection(1, Self::conn_info()).map_err(|e| format!("{e:?}"))?;
        let mut out = Vec::new();
        b.handle_frame(1, Frame::Method { channel: 1, method: Method::ChannelOpen }, 0, &mut out);
        for (q, spec) in QUEUES.iter().enumerate().filter(|(_, s)| s.durable) {
            let mut got = BTreeSet::new();
            loop {
                out.clear();
                let get = Method::BasicGet { queue: spec.name.into(), no_ack: true };
                // At time 0 nothing has expired yet.
                b.handle_frame(1, Frame::Method { channel: 1, method: get }, 0, &mut out);
                let Some(id) = out.iter().find_map(|(_, o)| match o {
                    Out::Content { msg, .. } => Some(id_of(&msg.body)),
                    _ => None,
                }) else {
                    break;
                };
                let id = id?;
                ensure!(got.insert(id), "after a power cut {} holds m{id} twice", spec.name);
            }
            for (id, m) in self.model.msgs.iter().enumerate() {
                let here =
                    matches!(m.loc, Loc::Ready(x) if x == q) || matches!(m.loc, Loc::Unacked { .. } if m.queue == q);
                if here && m.promised && !m.dead_lettered {
                    self.cut_required += 1;
                    ensure!(got.contains(&id), "a power cut lost m{id} of {}, confirmed and not settled", spec.name);
                }
            }
            for &id in &got {
                let m =
                    self.model.msgs.get(id).ok_or_else(|| format!("m{id} after a power cut was never published"))?;
                ensure!(
                    m.persistent && m.pushed_into & (1 << q) != 0,
                    "after a power cut {} holds m{id}, never stored there",
                    spec.name
                );
            }
        }
        Ok(())
    }

    /// Settles everything: transactions rolled back, every delivery acked, every connection
    /// closed, every queue emptied with basic.get.
    fn drain(&mut self, mut i: usize) {
        let mut actions = Vec::new();
        if self.job.is_some() {
            actions.push(Action::EndSync);
        }
        for (conn, ch) in self.channels() {
            let c = &self.model.conns[&conn].channels[&ch];
            if c.tx.is_some() {
                actions.push(Action::TxRollback { conn, ch });
            }
            if let Some(&tag) = c.unacked.keys().next_back() {
                actions.push(Action::Ack { conn, ch, tag, multiple: true });
                if c.tx.is_some() {
                    actions.push(Action::TxCommit { conn, ch });
                }
            }
        }
        actions.push(Action::BeginSync { all: true });
        actions.push(Action::EndSync);
        for &conn in self.model.conns.keys() {
            actions.push(Action::DropConnection { conn });
        }
        for a in actions {
            self.step(i, a);
            i += 1;
        }
        let conn = self.next_conn;
        self.step(i, Action::OpenConnection);
        self.step(i + 1, Action::OpenChannel { conn, ch: 1 });
        i += 2;
        // "dead" last: the others dead-letter into it.
        let order = (0..QUEUES.len()).filter(|&q| q != DEAD).chain([DEAD]);
        for q in order {
            // Until get-empty, which the model must expect too.
            loop {
                self.step(i, Action::Get { conn, ch: 1, queue: q, no_ack: true });
                i += 1;
                if self.model.queues[q].ready.is_empty() {
                    self.step(i, Action::Get { conn, ch: 1, queue: q, no_ack: true });
                    i += 1;
                    break;
                }
            }
        }
        let result = self.check_drained();
        if let Err(e) = result {
            self.fail(i, &e);
        }
    }

    fn check_drained(&self) -> Check {
        for (id, m) in self.model.msgs.iter().enumerate() {
            ensure!(matches!(m.loc, Loc::Done(_)), "m{id} was not settled: {:?}", m.loc);
        }
        for info in self.broker.queues() {
            ensure!(info.messages_ready == 0 && info.messages_unacked == 0, "{} is not empty: {info:?}", info.name);
        }
        let c = self.broker.counters();
        let got = Counts {
            received: c.messages_received,
            received_confirm: c.messages_received_confirm,
            routed: c.messages_routed,
            unroutable_dropped: c.messages_unroutable_dropped,
            unroutable_returned: c.messages_unroutable_returned,
            consume_manual: c.delivered_consume_manual_ack,
            consume_auto: c.delivered_consume_auto_ack,
            get_manual: c.delivered_get_manual_ack,
            get_auto: c.delivered_get_auto_ack,
            redelivered: c.redelivered,
            acknowledged: c.acknowledged,
            dead_lettered: c.dead_lettered,
        };
        ensure!(got == self.model.counts, "counters differ:\n broker {got:?}\n model  {:?}", self.model.counts);
        Ok(())
    }
}

/// Runs one seed for `steps` random steps, then drains; returns the output stream.
fn run(seed: u64, steps: usize) -> Vec<String> {
    let mut sim = Sim::new(seed);
    for i in 0..steps {
        let action = sim.choose();
        sim.step(i, action);
    }
    if let Err(e) = sim.check_power_cut() {
        sim.fail(steps, &e);
    }
    sim.drain(steps);
    let promised = sim.model.msgs.iter().filter(|m| m.promised).count();
    eprintln!(
        "seed {seed}: {} messages, {promised} promised durable, {} kept by power cuts, {} sync rounds, \
         {} publishes and settles taken shared, {} publishes handed back, {:?}",
        sim.model.msgs.len(),
        sim.cut_required,
        sim.model.rounds_begun,
        sim.shared_taken,
        sim.shared_handed_back,
        sim.model.counts
    );
    assert!(sim.shared_taken > 0, "seed {seed}: no publish was handled with the broker shared");
    sim.stream
}

/// Runs a seed twice: the outputs must be the same, byte for byte (the broker's randomness,
/// generated names included, is seeded from the simulation's seed).
fn run_twice(seed: u64, steps: usize) {
    let (first, second) = (run(seed, steps), run(seed, steps));
    if let Some(at) = (0..first.len().max(second.len())).find(|&i| first.get(i) != second.get(i)) {
        panic!(
            "simulation seed {seed} is not deterministic: output {at} differs\n first:  {:?}\n second: {:?}",
            first.get(at),
            second.get(at)
        );
    }
}

fn env(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| v.parse().unwrap_or_else(|_| panic!("{name}={v} is not a number")))
}

const STEPS: usize = 3000;

#[test]
fn simulation_seeds() {
    let steps = env("WARREN_SIM_STEPS").map_or(STEPS, |s| s as usize);
    match env("WARREN_SIM_SEED") {
        Some(seed) => run_twice(seed, steps),
        None => {
            for seed in 0..16 {
                run_twice(seed, steps);
            }
        }
    }
}

/// Seed 7 found `Broker::connection_closed` releasing a connection's channels one at a time, so
/// a message requeued from channel 1 was delivered to a consumer on channel 3 of the same,
/// closing connection (step 2553: m734, unacked on 61/1, went to the no-ack consumer "c194" on
/// 61/3 and was lost). With an acking consumer the copy came back when channel 3 went: a
/// wasted delivery, counted in the metrics. Seeds 0, 1, 2, 12 and 13 hit that acking case.
#[test]
fn no_deliveries_to_a_dying_connection() {
    run_twice(7, STEPS);
}
