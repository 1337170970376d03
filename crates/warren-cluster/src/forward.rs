//! Classic queues reachable from any node (docs/clustering.md, "Classic queues reachable from
//! any node").
//!
//! A durable classic queue lives on its home, the node its declaration came through. On every
//! other node the broker keeps it as a queue served from elsewhere (`Broker::set_forwarded`):
//! what clients do to it there becomes commands ([`ReplicaWork`], as for a quorum queue), which
//! this module sends to the home, in order, a batch per call over the nodes' connection.
//!
//! At the home, the commands of one node's run (a *session*) act through connections of the
//! home's broker that have no socket: one per connection of the clients' node (its channels
//! mirror the client's channels: consumers, prefetch, gets, acks, rejects, closes) and one per
//! vhost for its publishes (a channel in confirm mode). What the broker sends them
//! (deliveries, get answers, confirms, channel errors) goes back to the clients' node in calls
//! of the other direction, where its broker hands it to the clients as a quorum queue's.
//!
//! A session ends when either side cannot reach the other, when the home hears nothing of it
//! for [`SESSION_IDLE_MAX`] (every node calls every home at least every [`PING_EVERY`]), or
//! when the clients' node starts another: the home then closes its connections, which requeues
//! what they held, as for clients that went away; the clients' node nacks the publishes still
//! waiting for their confirm, fails gets still waiting, and cancels its consumers of the
//! home's queues (basic.cancel, as RabbitMQ does when a queue's node goes down; a consumer
//! its client starts again goes to the home in a new session). Delivery ids carry the
//! session, so that an ack from an earlier one is dropped rather than taken for a later
//! delivery's.

use crate::host::MetaHost;
use crate::meta::{Key, Metadata};
use bytes::{Buf, BufMut, Bytes};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, Notify};
use warren_amqp::{FieldTable, FieldValue, Frame, Method, ShortStr};
use warren_core::broker::ReplicaWork;
use warren_core::message::{decode_from_store, encode_for_store, MessageRef};
use warren_core::quorum::{Command, Delivery, Gone, Owner, Stamped};
use warren_core::{Broker, ConnId, Out};
use warren_raft::{Peer, Service, ServiceAnswer, TcpNode};
use warren_server::Shared;

/// The id the service is reached under (no Raft group has it: theirs are metadata log
/// indexes, and the metadata group is 0).
pub const FORWARD_SERVICE: u64 = u64::MAX;

/// How long a call may take before its session is given up.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// How often a node calls each home when it has nothing to send.
const PING_EVERY: Duration = Duration::from_secs(1);

/// How long a home keeps a session it hears nothing of.
const SESSION_IDLE_MAX: Duration = Duration::from_secs(5);

/// Commands sent in one call at most.
const BATCH_MAX: usize = 1024;

/// Delivery tags of the home's channels fit below this; above are the session's bits.
const TAG_BITS: u32 = 40;

/// A call's kinds.
const CALL_COMMANDS: u8 = 1;
const CALL_OUTPUT: u8 = 2;

/// Answers.
const ANSWER_OK: u8 = 0;
const ANSWER_UNKNOWN_SESSION: u8 = 1;

/// A client's confirm: connection, channel, sequence number.
type Confirm = (ConnId, u16, u64);

/// A queue's counts as its home sends them: vhost, name, ready, unacked.
type Counts = (String, String, u64, u64);

/// The forwarding of classic queues on this node: as the clients' node of other nodes'
/// queues (`links`), and as the home of its own (`guests`).
pub struct Forwarder {
    me: u64,
    node: TcpNode,
    shared: Arc<Shared>,
    meta: Arc<MetaHost>,
    /// Every node of the cluster with its inter-node address (nodes that join are added:
    /// [`Forwarder::add_nodes`]).
    nodes: parking_lot::RwLock<BTreeMap<u64, String>>,
    /// A queue's group: its key and home if it is a classic queue's (filled from the
    /// metadata as commands name them; a group's queue never changes).
    routes: parking_lot::Mutex<HashMap<u64, Option<(Key, u64)>>>,
    /// This node's sessions with each home.
    links: parking_lot::Mutex<HashMap<u64, Link>>,
    wakes: parking_lot::Mutex<HashMap<u64, Arc<Notify>>>,
    /// Other nodes' sessions with this one, as their queues' home.
    guests: parking_lot::Mutex<HashMap<u64, Guest>>,
}

/// A command for a home: the queue it is for and what to do.
struct Work {
    key: Key,
    work: ReplicaWork,
}

/// This node's session with a home.
struct Link {
    session: u64,
    /// The next call opens the session.
    fresh: bool,
    pending: Vec<Work>,
    /// The home's sequence number of the next publish, by vhost (its publishing channel's
    /// confirm numbers).
    next_seq: HashMap<String, u64>,
    /// Publishes waiting for their confirm, by vhost, in order: the home's number and the
    /// client's confirm, if it wants one.
    confirms: HashMap<String, VecDeque<(u64, Option<Confirm>)>>,
    /// basic.gets sent and not answered: who asked, the queue's group, and `no_ack`.
    gets: Vec<(Owner, u64, bool)>,
    /// This node's connections the session's commands named: once one closes, the home is
    /// told (its connection acting for it closes there too).
    conns: HashSet<ConnId>,
}

impl Link {
    fn new() -> Link {
        Link {
            session: session_start(),
            fresh: true,
            pending: Vec::new(),
            next_seq: HashMap::new(),
            confirms: HashMap::new(),
            gets: Vec::new(),
            conns: HashSet::new(),
        }
    }

    /// The bits of the session in a delivery id.
    fn tag_base(&self) -> u64 {
        (self.session & ((1 << (64 - TAG_BITS)) - 1)) << TAG_BITS
    }
}

/// A first session id: the clock in microseconds, so that a later run's sessions come after.
fn session_start() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_micros() as u64)
}

/// Another node's session at this home.
struct Guest {
    session: u64,
    last_heard: tokio::time::Instant,
    /// The connection acting here for each connection of the clients' node.
    conns: HashMap<u64, ConnId>,
    /// The connection publishing for the clients' node, by vhost (its channel 1 confirms).
    publishers: HashMap<String, ConnId>,
    /// What each connection here stands for.
    standing: HashMap<ConnId, Standing>,
    /// The channels opened on them.
    channels: HashMap<(ConnId, u16), VChannel>,
    /// Queues the session's commands touched since output last went: their counts go with it.
    touched: HashSet<Key>,
    /// The number of the session's last publish, by vhost (its publishing channel's).
    seqs: HashMap<String, u64>,
    /// Publishes whose confirm is owed without the broker (their vhost could not be opened):
    /// vhost, number, ok.
    owed: Vec<(String, u64, bool)>,
    /// Where the broker's output for the session's connections goes.
    tx: mpsc::UnboundedSender<(ConnId, Vec<Out>)>,
}

#[derive(Clone)]
enum Standing {
    Client(u64),
    Publisher(String),
}

#[derive(Default)]
struct VChannel {
    /// Consumers: tag, the queue's group, no_ack.
    consumers: HashMap<ShortStr, (u64, bool)>,
    /// basic.gets not answered yet: the queue's group and no_ack, in order.
    gets: VecDeque<(u64, bool)>,
    /// Delivery tags handed out and not settled.
    outstanding: HashSet<u64>,
}

/// What a home sends back to the clients' node.
enum Event {
    Deliver { group: u64, conn: u64, channel: u16, tag: ShortStr, id: u64, redelivered: bool, msg: MessageRef },
    Got { group: u64, conn: u64, channel: u16, got: Option<(u64, bool, MessageRef)>, remaining: u64 },
    Confirm { vhost: String, seq: u64, multiple: bool, ok: bool },
    Closed { conn: u64, channel: u16, code: u16, text: String, ids: (u16, u16) },
}

impl Forwarder {
    /// Starts forwarding: serves other nodes' calls, and calls the homes of this node's
    /// clients' queues.
    pub fn start(node: TcpNode, shared: Arc<Shared>, meta: Arc<MetaHost>, nodes: BTreeMap<u64, String>) -> Arc<Self> {
        let me = node.id();
        let f = Arc::new(Forwarder {
            me,
            node: node.clone(),
            shared,
            meta,
            nodes: parking_lot::RwLock::new(BTreeMap::new()),
            routes: parking_lot::Mutex::new(HashMap::new()),
            links: parking_lot::Mutex::new(HashMap::new()),
            wakes: parking_lot::Mutex::new(HashMap::new()),
            guests: parking_lot::Mutex::new(HashMap::new()),
        });
        if let Err(e) = node.serve(FORWARD_SERVICE, Arc::new(Serve(Arc::downgrade(&f)))) {
            tracing::error!("cannot serve classic queues to other nodes: {e}");
        }
        f.add_nodes(&nodes);
        tokio::spawn(f.clone().guard_guests());
        f
    }

    /// Adds the nodes of `nodes` it does not know yet (nodes that joined the cluster): their
    /// queues are reached, and their clients served, from then on.
    pub fn add_nodes(self: &Arc<Self>, nodes: &BTreeMap<u64, String>) {
        let mut known = self.nodes.write();
        for (&id, addr) in nodes {
            if known.insert(id, addr.clone()).is_some() || id == self.me {
                continue;
            }
            self.wakes.lock().insert(id, Arc::new(Notify::new()));
            self.links.lock().insert(id, Link::new());
            tokio::spawn(self.clone().link_loop(id));
        }
    }

    /// Where the queue named by `group` lives, if it is a classic queue of another node.
    fn route(&self, group: u64) -> Option<(Key, u64)> {
        if let Some(r) = self.routes.lock().get(&group) {
            return r.clone();
        }
        let found = self.meta.group().with_machine(|m: &Metadata| m.home_of_group(group));
        self.routes.lock().insert(group, found.clone());
        found
    }

    /// Takes the broker's commands for queues that live elsewhere; gives back the others.
    pub fn take(&self, work: Vec<ReplicaWork>) -> Vec<ReplicaWork> {
        let mut others = Vec::new();
        let mut woken = Vec::new();
        let mut links = self.links.lock();
        for w in work {
            match self.route(w.group).filter(|(_, home)| *home != self.me) {
                Some((key, home)) => match links.get_mut(&home) {
                    Some(link) => {
                        link.pending.push(Work { key, work: w });
                        woken.push(home);
                    }
                    None => others.push(w),
                },
                None => others.push(w),
            }
        }
        drop(links);
        woken.dedup();
        for home in woken {
            if let Some(w) = self.wakes.lock().get(&home) {
                w.notify_one();
            }
        }
        others
    }

    /// Sends this node's commands to `home`, a batch per call, and keeps the session alive.
    async fn link_loop(self: Arc<Self>, home: u64) {
        let Some(wake) = self.wakes.lock().get(&home).cloned() else { return };
        let Some(addr) = self.nodes.read().get(&home).cloned() else { return };
        let peer = Peer { id: home, addr };
        let mut swept = tokio::time::Instant::now();
        loop {
            let _ = tokio::time::timeout(PING_EVERY, wake.notified()).await;
            // Once a second, busy or not: the connections here that closed.
            if swept.elapsed() >= PING_EVERY {
                swept = tokio::time::Instant::now();
                self.closed_conns(home);
            }
            loop {
                let (body, session, sent_queues) = {
                    let mut links = self.links.lock();
                    let Some(link) = links.get_mut(&home) else { return };
                    let n = link.pending.len().min(BATCH_MAX);
                    let batch: Vec<Work> = link.pending.drain(..n).collect();
                    (self.encode_commands(link, batch), link.session, n)
                };
                let answer = self.node.call(&peer, FORWARD_SERVICE, &body, CALL_TIMEOUT).await;
                let ok = match answer {
                    Ok(a) => self.answered(&a),
                    Err(e) => {
                        tracing::debug!("classic queues on node {home:016x}: {e}");
                        false
                    }
                };
                if !ok {
                    self.reset(home, session);
                    break;
                }
                let more = self.links.lock().get(&home).is_some_and(|l| !l.pending.is_empty());
                if !more || sent_queues == 0 {
                    break;
                }
            }
        }
    }

    /// Tells `home` of this node's connections that closed since their commands went there.
    fn closed_conns(&self, home: u64) {
        let known: Vec<ConnId> = match self.links.lock().get(&home) {
            Some(link) if !link.conns.is_empty() => link.conns.iter().copied().collect(),
            _ => return,
        };
        let closed: Vec<ConnId> = {
            let core = self.shared.broker();
            known.into_iter().filter(|c| !core.has_channel(*c, None)).collect()
        };
        if closed.is_empty() {
            return;
        }
        let node = crate::queues::node32(self.me);
        let mut links = self.links.lock();
        let Some(link) = links.get_mut(&home) else { return };
        for conn in closed {
            link.conns.remove(&conn);
            let command = Command::Down(Gone::Connection { node, conn });
            let work = ReplicaWork { group: 0, command, confirm: None };
            link.pending.push(Work { key: (String::new(), String::new()), work });
        }
    }

    /// A call's body for `batch` in the link's session; records what waits for an answer.
    fn encode_commands(&self, link: &mut Link, batch: Vec<Work>) -> Vec<u8> {
        let mut b = Vec::new();
        b.put_u8(CALL_COMMANDS);
        b.put_u64(self.me);
        b.put_u64(link.session);
        b.put_u8(u8::from(std::mem::take(&mut link.fresh)));
        let base = link.tag_base();
        let mut commands = Vec::with_capacity(batch.len());
        for Work { key, work } in batch {
            let mut command = work.command;
            match &mut command {
                Command::Enqueue { .. } => {
                    let seq = link.next_seq.entry(key.0.clone()).or_insert(1);
                    link.confirms.entry(key.0.clone()).or_default().push_back((*seq, work.confirm));
                    *seq += 1;
                }
                Command::Get { owner, no_ack } => {
                    link.gets.push((*owner, work.group, *no_ack));
                    link.conns.insert(owner.conn);
                }
                Command::Attach { owner, .. } => {
                    link.conns.insert(owner.conn);
                }
                // Deliveries of an earlier session were requeued when it ended.
                Command::Settle { ids, .. } | Command::Return { ids, .. } | Command::Discard { ids, .. } => {
                    ids.retain(|id| id & !((1 << TAG_BITS) - 1) == base);
                    ids.iter_mut().for_each(|id| *id &= (1 << TAG_BITS) - 1);
                    if ids.is_empty() {
                        continue;
                    }
                }
                _ => {}
            }
            commands.push((key, work.group, command));
        }
        b.put_u32(commands.len() as u32);
        let mut scratch = Vec::new();
        for (key, group, command) in commands {
            b.put_u64(group);
            put_str(&mut b, &key.0);
            put_str(&mut b, &key.1);
            scratch.clear();
            Stamped { now_ms: 0, command }.encode(&mut scratch);
            b.put_u32(scratch.len() as u32);
            b.put_slice(&scratch);
        }
        b
    }

    /// Takes a home's answer to a call: the counts it sent. False when the home knows no
    /// such session.
    fn answered(&self, answer: &[u8]) -> bool {
        let mut r = Bytes::copy_from_slice(answer);
        let parsed = (|| -> Option<(u8, Vec<Counts>)> {
            let status = get_u8(&mut r)?;
            Some((status, get_counts(&mut r)?))
        })();
        let Some((status, counts)) = parsed else { return false };
        if status != ANSWER_OK {
            return false;
        }
        self.set_counts(&counts);
        true
    }

    fn set_counts(&self, counts: &[Counts]) {
        if counts.is_empty() {
            return;
        }
        let mut core = self.shared.broker();
        for (vhost, name, ready, unacked) in counts {
            core.set_replica_counts(vhost, name, *ready, *unacked);
        }
    }

    /// Ends session `session` with `home` (if it is still the current one): publishes waiting
    /// for their confirm are nacked, gets waiting are failed, and this node's consumers of the
    /// home's queues are cancelled (basic.cancel to clients that understand it).
    fn reset(&self, home: u64, session: u64) {
        let (confirms, gets) = {
            let mut links = self.links.lock();
            let Some(link) = links.get_mut(&home) else { return };
            if link.session != session {
                return;
            }
            link.session += 1;
            link.fresh = true;
            link.next_seq.clear();
            link.conns.clear();
            // Commands not sent belong to the session too (acks of its deliveries, its
            // consumers); publishes among them are nacked with the others.
            let unsent: Vec<Work> = std::mem::take(&mut link.pending);
            let mut confirms: Vec<Confirm> =
                link.confirms.drain().flat_map(|(_, q)| q.into_iter().filter_map(|(_, c)| c)).collect();
            confirms.extend(unsent.iter().filter_map(|w| w.work.confirm));
            (confirms, std::mem::take(&mut link.gets))
        };
        let now_ms = self.shared.now_ms();
        let mut core = self.shared.broker();
        let mut out: Vec<(ConnId, Out)> = Vec::new();
        for (conn, channel, seq) in confirms {
            core.replica_committed(conn, channel, seq, false, &mut out);
        }
        for (owner, group, no_ack) in gets {
            let queue = self.route(group).map(|(k, _)| ShortStr::from(k.1)).unwrap_or_default();
            core.replica_got(&queue, group, owner, no_ack, None, now_ms, &mut out);
        }
        // The consumers of the home's queues are cancelled, as RabbitMQ cancels those of a
        // queue whose node went down (their clients consume again once it is back).
        let queues: Vec<Key> = self
            .meta
            .group()
            .with_machine(|m: &Metadata| m.homes().filter(|(_, _, h)| *h == home).map(|(k, _, _)| k.clone()).collect());
        for (vhost, name) in &queues {
            core.cancel_forwarded_consumers(vhost, name, &mut out);
        }
        let work = core.take_replica_work();
        core.deliver(&mut out);
        drop(core);
        let others = self.take(work);
        if !others.is_empty() {
            self.shared.submit_work(others);
        }
    }

    /// Output of a home for this node's clients (a call of `home`, in session `session`).
    fn on_output(&self, home: u64, session: u64, mut r: Bytes) -> Result<u8, String> {
        let n = get_u32(&mut r).ok_or("a short call")?;
        let mut events = Vec::with_capacity(n as usize);
        for _ in 0..n {
            events.push(get_event(&mut r).ok_or("an event it cannot read")?);
        }
        let counts = get_counts(&mut r).ok_or("counts it cannot read")?;
        let me32 = crate::queues::node32(self.me);
        // What the session knows of the events (the link is let go before the broker is
        // taken: the broker's commands come to `take` with the broker held).
        let mut confirmed: Vec<(Confirm, bool)> = Vec::new();
        let mut gets: Vec<bool> = Vec::new();
        let base = {
            let mut links = self.links.lock();
            let Some(link) = links.get_mut(&home) else { return Ok(ANSWER_UNKNOWN_SESSION) };
            if link.session != session || link.fresh {
                return Ok(ANSWER_UNKNOWN_SESSION);
            }
            for event in &events {
                match event {
                    Event::Got { group, conn, channel, .. } => {
                        let owner = Owner { node: me32, conn: *conn, channel: *channel };
                        let at = link.gets.iter().position(|(o, g, _)| *o == owner && g == group);
                        gets.push(at.is_some_and(|at| link.gets.remove(at).2));
                    }
                    Event::Confirm { vhost, seq, multiple, ok } => {
                        let Some(q) = link.confirms.get_mut(vhost) else { continue };
                        let mut settled = Vec::new();
                        if *multiple {
                            while q.front().is_some_and(|(s, _)| s <= seq) {
                                settled.extend(q.pop_front().and_then(|(_, c)| c));
                            }
                        } else if let Some(at) = q.iter().position(|(s, _)| s == seq) {
                            settled.extend(q.remove(at).and_then(|(_, c)| c));
                        }
                        confirmed.extend(settled.into_iter().map(|c| (c, *ok)));
                    }
                    _ => {}
                }
            }
            link.tag_base()
        };
        let now_ms = self.shared.now_ms();
        let mut returns = Vec::new();
        let mut core = self.shared.broker();
        for (vhost, name, ready, unacked) in &counts {
            core.set_replica_counts(vhost, name, *ready, *unacked);
        }
        let mut out: Vec<(ConnId, Out)> = Vec::new();
        for ((conn, channel, seq), ok) in confirmed {
            core.replica_committed(conn, channel, seq, ok, &mut out);
        }
        let mut gets = gets.into_iter();
        for event in events {
            match event {
                Event::Deliver { group, conn, channel, tag, id, redelivered, msg } => {
                    let owner = Owner { node: me32, conn, channel };
                    let Some(((vhost, name), _)) = self.route(group) else { continue };
                    let id = base | id;
                    let delivery = Delivery { id, msg, redelivered, delivery_count: 0 };
                    let name = ShortStr::from(name);
                    if !core.replica_deliver(&vhost, &name, group, owner, &tag, &delivery, now_ms, &mut out) {
                        returns.push(ReplicaWork {
                            group,
                            command: Command::Return { owner, ids: vec![id] },
                            confirm: None,
                        });
                    }
                }
                Event::Got { group, conn, channel, got, remaining } => {
                    let no_ack = gets.next().unwrap_or(false);
                    let owner = Owner { node: me32, conn, channel };
                    let name = self.route(group).map(|(k, _)| ShortStr::from(k.1)).unwrap_or_default();
                    let delivery = got.map(|(id, redelivered, msg)| Delivery {
                        id: base | id,
                        msg,
                        redelivered,
                        delivery_count: 0,
                    });
                    let taken = delivery.as_ref().map(|d| d.id);
                    let answer = Some((delivery.as_ref(), remaining));
                    if !core.replica_got(&name, group, owner, no_ack, answer, now_ms, &mut out) {
                        if let Some(id) = taken {
                            returns.push(ReplicaWork {
                                group,
                                command: Command::Return { owner, ids: vec![id] },
                                confirm: None,
                            });
                        }
                    }
                }
                Event::Confirm { .. } => {}
                Event::Closed { conn, channel, code, text, ids } => {
                    core.close_channel_with(conn, channel, code, &text, ids, now_ms, &mut out);
                }
            }
        }
        let work = core.take_replica_work();
        core.deliver(&mut out);
        drop(core);
        let mut all = returns;
        all.extend(work);
        let others = self.take(all);
        if !others.is_empty() {
            self.shared.submit_work(others);
        }
        Ok(ANSWER_OK)
    }

    // ---- the home's side ------------------------------------------------------------------

    /// Commands of node `origin`'s session `session` for queues that live here.
    fn on_commands(self: &Arc<Self>, origin: u64, session: u64, fresh: bool, mut r: Bytes) -> Result<Vec<u8>, String> {
        let n = get_u32(&mut r).ok_or("a short call")?;
        let mut commands = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let group = get_u64(&mut r).ok_or("a short command")?;
            let vhost = get_str(&mut r).ok_or("a short command")?;
            let name = get_str(&mut r).ok_or("a short command")?;
            let len = get_u32(&mut r).ok_or("a short command")? as usize;
            if r.remaining() < len {
                return Err("a short command".into());
            }
            let stamped = Stamped::decode(&r.split_to(len)).map_err(|e| e.to_string())?;
            commands.push((group, (vhost, name), stamped.command));
        }
        let mut guests = self.guests.lock();
        let known = guests.get(&origin).map(|g| g.session);
        if fresh && known.is_none_or(|s| s < session) {
            if let Some(old) = guests.remove(&origin) {
                self.end_guest(old);
            }
            let (tx, rx) = mpsc::unbounded_channel();
            guests.insert(
                origin,
                Guest {
                    session,
                    last_heard: tokio::time::Instant::now(),
                    conns: HashMap::new(),
                    publishers: HashMap::new(),
                    standing: HashMap::new(),
                    channels: HashMap::new(),
                    touched: HashSet::new(),
                    seqs: HashMap::new(),
                    owed: Vec::new(),
                    tx,
                },
            );
            tokio::spawn(self.clone().output_loop(origin, session, rx));
        } else if known != Some(session) {
            let mut b = vec![ANSWER_UNKNOWN_SESSION];
            b.put_u32(0);
            return Ok(b);
        }
        let Some(guest) = guests.get_mut(&origin) else { return Err("no session".into()) };
        guest.last_heard = tokio::time::Instant::now();
        let now_ms = self.shared.now_ms();
        let mut core = self.shared.broker();
        let mut out: Vec<(ConnId, Out)> = Vec::new();
        let mut publishers = Vec::new();
        let batch_keys: HashSet<Key> = commands.iter().map(|(_, k, _)| k.clone()).collect();
        for (group, key, command) in commands {
            self.execute(&mut core, guest, origin, group, &key, command, now_ms, &mut out);
            if let Some(&p) = guest.publishers.get(&key.0) {
                publishers.push(p);
            }
            guest.touched.insert(key);
        }
        publishers.dedup();
        for p in publishers {
            core.end_batch(p, &mut out);
        }
        if core.sync_wanted() {
            self.shared.wake_sync();
        }
        let counts: Vec<Counts> = if batch_keys.is_empty() {
            core.all_home_queue_counts().into_iter().map(|(v, n, r, u)| (v, n.to_string(), r, u)).collect()
        } else {
            batch_keys
                .iter()
                .filter_map(|(v, n)| core.home_queue_counts(v, n).map(|(r, u)| (v.clone(), n.clone(), r, u)))
                .collect()
        };
        // What the commands made for other queues (dead-lettering to a queue elsewhere, say).
        self.shared.submit_replica_work(&mut core);
        core.deliver(&mut out);
        let owed = !guest.owed.is_empty();
        drop(core);
        if owed {
            // Confirms owed without the broker go out with the session's output.
            let _ = guest.tx.send((0, Vec::new()));
        }
        let mut b = vec![ANSWER_OK];
        put_counts(&mut b, &counts);
        Ok(b)
    }

    /// The connection acting here for `origin`'s connection `conn` in `vhost`, opened if new.
    fn client_conn(
        &self,
        core: &mut warren_server::Core,
        guest: &mut Guest,
        origin: u64,
        conn: u64,
        vhost: &str,
    ) -> Option<ConnId> {
        if let Some(&c) = guest.conns.get(&conn) {
            return Some(c);
        }
        let id = self.shared.new_id();
        let peer = format!("node {origin:016x}, connection {conn}");
        if let Err(e) = core.open_virtual(id, vhost, peer, guest.tx.clone()) {
            tracing::warn!("classic queues: cannot act for node {origin:016x}'s connection in vhost '{vhost}': {e}");
            return None;
        }
        guest.conns.insert(conn, id);
        guest.standing.insert(id, Standing::Client(conn));
        Some(id)
    }

    /// Opens channel `channel` on `vc` unless it is open.
    fn open_channel(
        core: &mut warren_server::Core,
        guest: &mut Guest,
        vc: ConnId,
        channel: u16,
        now_ms: u64,
        out: &mut Vec<(ConnId, Out)>,
    ) {
        if guest.channels.contains_key(&(vc, channel)) {
            return;
        }
        core.handle_frame(vc, Frame::Method { channel, method: Method::ChannelOpen }, now_ms, out);
        guest.channels.insert((vc, channel), VChannel::default());
    }

    /// The connection publishing `origin`'s messages in `vhost`, opened (with its channel 1
    /// in confirm mode) if new.
    fn publisher(
        &self,
        core: &mut warren_server::Core,
        guest: &mut Guest,
        origin: u64,
        vhost: &str,
        now_ms: u64,
        out: &mut Vec<(ConnId, Out)>,
    ) -> Option<ConnId> {
        if let Some(&c) = guest.publishers.get(vhost) {
            return Some(c);
        }
        let id = self.shared.new_id();
        let peer = format!("node {origin:016x}, publishing");
        if let Err(e) = core.open_virtual(id, vhost, peer, guest.tx.clone()) {
            tracing::warn!("classic queues: cannot take node {origin:016x}'s publishes in vhost '{vhost}': {e}");
            return None;
        }
        core.handle_frame(id, Frame::Method { channel: 1, method: Method::ChannelOpen }, now_ms, out);
        core.handle_frame(
            id,
            Frame::Method { channel: 1, method: Method::ConfirmSelect { nowait: true } },
            now_ms,
            out,
        );
        guest.publishers.insert(vhost.to_owned(), id);
        guest.standing.insert(id, Standing::Publisher(vhost.to_owned()));
        Some(id)
    }

    #[allow(clippy::too_many_arguments)]
    fn execute(
        &self,
        core: &mut warren_server::Core,
        guest: &mut Guest,
        origin: u64,
        group: u64,
        key: &Key,
        command: Command,
        now_ms: u64,
        out: &mut Vec<(ConnId, Out)>,
    ) {
        let (vhost, name) = (key.0.as_str(), ShortStr::from(key.1.as_str()));
        let frame = |channel: u16, method: Method| Frame::Method { channel, method };
        match command {
            Command::Enqueue { msg } => {
                let seq = guest.seqs.entry(vhost.to_owned()).or_insert(0);
                *seq += 1;
                let seq = *seq;
                match self.publisher(core, guest, origin, vhost, now_ms, out) {
                    Some(p) => {
                        if let Err(e) = core.forwarded_publish(p, 1, &name, msg, now_ms, out) {
                            tracing::error!(
                                "classic queue '{name}': a publish forwarded by node {origin:016x} failed: {e}"
                            );
                        }
                    }
                    None => guest.owed.push((vhost.to_owned(), seq, false)),
                }
            }
            Command::Attach { owner, tag, prefetch, no_ack, priority, exclusive } => {
                let Some(vc) = self.client_conn(core, guest, origin, owner.conn, vhost) else {
                    return;
                };
                Self::open_channel(core, guest, vc, owner.channel, now_ms, out);
                let Some(ch) = guest.channels.get_mut(&(vc, owner.channel)) else { return };
                if ch.consumers.contains_key(&tag) {
                    return;
                }
                ch.consumers.insert(tag.clone(), (group, no_ack));
                let prefetch_count = u16::try_from(prefetch).unwrap_or(u16::MAX);
                core.handle_frame(
                    vc,
                    frame(owner.channel, Method::BasicQos { prefetch_size: 0, prefetch_count, global: false }),
                    now_ms,
                    out,
                );
                let mut arguments = FieldTable::default();
                if priority != 0 {
                    arguments.insert("x-priority", FieldValue::I64(priority));
                }
                let consume = Method::BasicConsume {
                    queue: name,
                    consumer_tag: tag,
                    no_local: false,
                    no_ack,
                    exclusive,
                    nowait: true,
                    arguments,
                };
                core.handle_frame(vc, frame(owner.channel, consume), now_ms, out);
            }
            Command::Cancel { owner, tag } => {
                let Some(&vc) = guest.conns.get(&owner.conn) else { return };
                let Some(ch) = guest.channels.get_mut(&(vc, owner.channel)) else { return };
                if ch.consumers.remove(&tag).is_some() {
                    core.handle_frame(
                        vc,
                        frame(owner.channel, Method::BasicCancel { consumer_tag: tag, nowait: true }),
                        now_ms,
                        out,
                    );
                }
            }
            Command::Settle { owner, ids } => settle(core, guest, owner, ids, None, now_ms, out),
            Command::Return { owner, ids } => settle(core, guest, owner, ids, Some(true), now_ms, out),
            Command::Discard { owner, ids } => settle(core, guest, owner, ids, Some(false), now_ms, out),
            Command::Get { owner, no_ack } => {
                let Some(vc) = self.client_conn(core, guest, origin, owner.conn, vhost) else {
                    return;
                };
                Self::open_channel(core, guest, vc, owner.channel, now_ms, out);
                if let Some(ch) = guest.channels.get_mut(&(vc, owner.channel)) {
                    ch.gets.push_back((group, no_ack));
                }
                core.handle_frame(vc, frame(owner.channel, Method::BasicGet { queue: name, no_ack }), now_ms, out);
            }
            Command::Down(gone) => match gone {
                Gone::Channel(owner) => {
                    let Some(&vc) = guest.conns.get(&owner.conn) else { return };
                    if guest.channels.remove(&(vc, owner.channel)).is_some() {
                        let close = Method::ChannelClose {
                            reply_code: 200,
                            reply_text: ShortStr::from_static("closed on its node"),
                            class_id: 0,
                            method_id: 0,
                        };
                        core.handle_frame(vc, frame(owner.channel, close), now_ms, out);
                    }
                }
                Gone::Connection { conn, .. } => {
                    if let Some(vc) = guest.conns.remove(&conn) {
                        guest.channels.retain(|(c, _), _| *c != vc);
                        guest.standing.remove(&vc);
                        core.close_virtual(vc, now_ms);
                    }
                }
                Gone::Node(_) => {}
            },
            Command::Purge => {
                if let Some(p) = self.publisher(core, guest, origin, vhost, now_ms, out) {
                    core.handle_frame(p, frame(1, Method::QueuePurge { queue: name, nowait: true }), now_ms, out);
                }
            }
            Command::Tick => {}
        }
    }

    /// Closes everything a session opened here: what its connections held is requeued.
    fn end_guest(&self, guest: Guest) {
        let now_ms = self.shared.now_ms();
        let mut core = self.shared.broker();
        for vc in guest.standing.keys() {
            core.close_virtual(*vc, now_ms);
        }
        self.shared.submit_replica_work(&mut core);
    }

    /// Carries the output of `origin`'s session here back to it, a call at a time.
    async fn output_loop(
        self: Arc<Self>,
        origin: u64,
        session: u64,
        mut rx: mpsc::UnboundedReceiver<(ConnId, Vec<Out>)>,
    ) {
        let Some(addr) = self.nodes.read().get(&origin).cloned() else { return };
        let peer = Peer { id: origin, addr };
        let mut batch: Vec<(ConnId, Vec<Out>)> = Vec::new();
        loop {
            match rx.recv().await {
                Some(item) => batch.push(item),
                None => return,
            }
            while batch.len() < 256 {
                match rx.try_recv() {
                    Ok(item) => batch.push(item),
                    Err(_) => break,
                }
            }
            let Some((body, written, closed)) = self.encode_output(origin, session, std::mem::take(&mut batch)) else {
                return;
            };
            if !closed.is_empty() {
                // Channels the broker closed: their close-ok, as a client would send.
                let now_ms = self.shared.now_ms();
                let mut core = self.shared.broker();
                let mut out = Vec::new();
                for (vc, channel) in closed {
                    core.handle_frame(vc, Frame::Method { channel, method: Method::ChannelCloseOk }, now_ms, &mut out);
                }
                self.shared.submit_replica_work(&mut core);
                core.deliver(&mut out);
            }
            let answer = self.node.call(&peer, FORWARD_SERVICE, &body, CALL_TIMEOUT).await;
            let ok = matches!(answer.as_deref(), Ok([ANSWER_OK, ..]));
            if !ok {
                if let Err(e) = &answer {
                    tracing::info!("classic queues: node {origin:016x} cannot be reached ({e}): its session here ends");
                }
                let gone = {
                    let mut guests = self.guests.lock();
                    match guests.get(&origin) {
                        Some(g) if g.session == session => guests.remove(&origin),
                        _ => None,
                    }
                };
                if let Some(g) = gone {
                    self.end_guest(g);
                }
                return;
            }
            // What went out is written, as a socket's bytes would be.
            let now_ms = self.shared.now_ms();
            let mut core = self.shared.broker();
            let mut out = Vec::new();
            for (vc, bytes) in written {
                core.on_written(vc, bytes, now_ms, &mut out);
            }
            self.shared.submit_replica_work(&mut core);
            core.deliver(&mut out);
        }
    }

    /// The call carrying `batch` to `origin`: the events, the counts of the queues the session
    /// touched; with the bytes of deliveries per connection, and channels the broker closed.
    /// None once the session is gone.
    #[allow(clippy::type_complexity)]
    fn encode_output(
        &self,
        origin: u64,
        session: u64,
        batch: Vec<(ConnId, Vec<Out>)>,
    ) -> Option<(Vec<u8>, HashMap<ConnId, usize>, Vec<(ConnId, u16)>)> {
        let mut guests = self.guests.lock();
        let guest = guests.get_mut(&origin).filter(|g| g.session == session)?;
        let mut events = Vec::new();
        let mut written: HashMap<ConnId, usize> = HashMap::new();
        let mut closed = Vec::new();
        for (vhost, seq, ok) in guest.owed.drain(..) {
            events.push(Event::Confirm { vhost, seq, multiple: false, ok });
        }
        for (vc, outs) in batch {
            let Some(standing) = guest.standing.get(&vc).cloned() else { continue };
            for o in outs {
                match (&standing, o) {
                    (
                        Standing::Client(conn),
                        Out::Deliver { channel, consumer_tag, delivery_tag, redelivered, msg },
                    ) => {
                        *written.entry(vc).or_default() += msg.wire_size();
                        let Some(ch) = guest.channels.get_mut(&(vc, channel)) else { continue };
                        let Some(&(group, no_ack)) = ch.consumers.get(&consumer_tag) else { continue };
                        if !no_ack {
                            ch.outstanding.insert(delivery_tag);
                        }
                        events.push(Event::Deliver {
                            group,
                            conn: *conn,
                            channel,
                            tag: consumer_tag,
                            id: delivery_tag,
                            redelivered,
                            msg,
                        });
                    }
                    (
                        Standing::Client(conn),
                        Out::Content {
                            channel,
                            method: Method::BasicGetOk { delivery_tag, redelivered, message_count, .. },
                            msg,
                        },
                    ) => {
                        let Some(ch) = guest.channels.get_mut(&(vc, channel)) else { continue };
                        let Some((group, no_ack)) = ch.gets.pop_front() else { continue };
                        if !no_ack {
                            ch.outstanding.insert(delivery_tag);
                        }
                        let got = Some((delivery_tag, redelivered, msg));
                        events.push(Event::Got {
                            group,
                            conn: *conn,
                            channel,
                            got,
                            remaining: u64::from(message_count),
                        });
                    }
                    (Standing::Client(conn), Out::Method { channel, method: Method::BasicGetEmpty }) => {
                        let Some(ch) = guest.channels.get_mut(&(vc, channel)) else { continue };
                        let Some((group, _)) = ch.gets.pop_front() else { continue };
                        events.push(Event::Got { group, conn: *conn, channel, got: None, remaining: 0 });
                    }
                    (
                        Standing::Client(conn),
                        Out::Method {
                            channel,
                            method: Method::ChannelClose { reply_code, reply_text, class_id, method_id },
                        },
                    ) => {
                        guest.channels.remove(&(vc, channel));
                        closed.push((vc, channel));
                        events.push(Event::Closed {
                            conn: *conn,
                            channel,
                            code: reply_code,
                            text: reply_text.to_string(),
                            ids: (class_id, method_id),
                        });
                    }
                    (
                        Standing::Publisher(vhost),
                        Out::Method { method: Method::BasicAck { delivery_tag, multiple }, .. },
                    ) => {
                        events.push(Event::Confirm { vhost: vhost.clone(), seq: delivery_tag, multiple, ok: true });
                    }
                    (
                        Standing::Publisher(vhost),
                        Out::Method { method: Method::BasicNack { delivery_tag, multiple, .. }, .. },
                    ) => {
                        events.push(Event::Confirm { vhost: vhost.clone(), seq: delivery_tag, multiple, ok: false });
                    }
                    (_, Out::Method { method: Method::ConnectionClose { reply_code, reply_text, .. }, .. }) => {
                        tracing::warn!("classic queues: the connection acting for node {origin:016x} was closed: {reply_code} {reply_text}");
                    }
                    _ => {}
                }
            }
        }
        // Settled deliveries leave the outstanding sets as their commands are executed.
        let touched: Vec<Key> = guest.touched.drain().collect();
        drop(guests);
        let counts: Vec<Counts> = {
            let core = self.shared.broker();
            touched.into_iter().filter_map(|(v, n)| core.home_queue_counts(&v, &n).map(|(r, u)| (v, n, r, u))).collect()
        };
        let mut b = Vec::new();
        b.put_u8(CALL_OUTPUT);
        b.put_u64(self.me);
        b.put_u64(session);
        b.put_u32(events.len() as u32);
        let mut scratch = Vec::new();
        for e in &events {
            put_event(&mut b, e, &mut scratch);
        }
        put_counts(&mut b, &counts);
        Some((b, written, closed))
    }

    /// Ends sessions the home heard nothing of for [`SESSION_IDLE_MAX`], or whose node's
    /// connection closed.
    async fn guard_guests(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        let mut connected = self.node.watch_connected();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                changed = connected.changed() => if changed.is_err() { return },
            }
            let up = connected.borrow_and_update().clone();
            let now = tokio::time::Instant::now();
            let gone: Vec<Guest> = {
                let mut guests = self.guests.lock();
                let ended: Vec<u64> = guests
                    .iter()
                    .filter(|(origin, g)| now.duration_since(g.last_heard) > SESSION_IDLE_MAX || !up.contains(origin))
                    .map(|(origin, _)| *origin)
                    .collect();
                ended.into_iter().filter_map(|o| guests.remove(&o)).collect()
            };
            for g in gone {
                tracing::info!(
                    "classic queues: a node's session ended (not heard from): what its clients held is requeued"
                );
                self.end_guest(g);
            }
        }
    }
}

/// Settles deliveries of `owner`'s channel (acked: `requeue` None; rejected otherwise) on
/// the connection acting for it; ids it does not hold (an earlier session's) are dropped.
#[allow(clippy::too_many_arguments)]
fn settle(
    core: &mut warren_server::Core,
    guest: &mut Guest,
    owner: Owner,
    ids: Vec<u64>,
    requeue: Option<bool>,
    now_ms: u64,
    out: &mut Vec<(ConnId, Out)>,
) {
    let Some(&vc) = guest.conns.get(&owner.conn) else { return };
    let Some(ch) = guest.channels.get_mut(&(vc, owner.channel)) else { return };
    for id in ids {
        if !ch.outstanding.remove(&id) {
            continue;
        }
        let method = match requeue {
            None => Method::BasicAck { delivery_tag: id, multiple: false },
            Some(requeue) => Method::BasicReject { delivery_tag: id, requeue },
        };
        core.handle_frame(vc, Frame::Method { channel: owner.channel, method }, now_ms, out);
    }
}

/// The service other nodes call.
struct Serve(std::sync::Weak<Forwarder>);

impl Service for Serve {
    fn call(&self, body: &[u8]) -> ServiceAnswer {
        let answer = (|| -> Result<Vec<u8>, String> {
            let f = self.0.upgrade().ok_or("shutting down")?;
            let mut r = Bytes::copy_from_slice(body);
            let kind = get_u8(&mut r).ok_or("an empty call")?;
            let from = get_u64(&mut r).ok_or("a short call")?;
            let session = get_u64(&mut r).ok_or("a short call")?;
            match kind {
                CALL_COMMANDS => {
                    let fresh = get_u8(&mut r).ok_or("a short call")? != 0;
                    f.on_commands(from, session, fresh, r)
                }
                CALL_OUTPUT => f.on_output(from, session, r).map(|status| vec![status]),
                _ => Err(format!("an unknown call {kind}")),
            }
        })();
        Box::pin(async move { answer })
    }
}

// ---- encoding ----------------------------------------------------------------------------

fn put_str(b: &mut Vec<u8>, s: &str) {
    b.put_u32(s.len() as u32);
    b.put_slice(s.as_bytes());
}

fn get_u8(r: &mut Bytes) -> Option<u8> {
    (r.remaining() >= 1).then(|| r.get_u8())
}

fn get_u16(r: &mut Bytes) -> Option<u16> {
    (r.remaining() >= 2).then(|| r.get_u16())
}

fn get_u32(r: &mut Bytes) -> Option<u32> {
    (r.remaining() >= 4).then(|| r.get_u32())
}

fn get_u64(r: &mut Bytes) -> Option<u64> {
    (r.remaining() >= 8).then(|| r.get_u64())
}

fn get_str(r: &mut Bytes) -> Option<String> {
    let n = get_u32(r)? as usize;
    if r.remaining() < n {
        return None;
    }
    String::from_utf8(r.split_to(n).to_vec()).ok()
}

fn put_msg(b: &mut Vec<u8>, msg: &MessageRef, scratch: &mut Vec<u8>) {
    scratch.clear();
    encode_for_store(msg, None, scratch);
    b.put_u32(scratch.len() as u32);
    b.put_slice(scratch);
}

fn get_msg(r: &mut Bytes) -> Option<MessageRef> {
    let n = get_u32(r)? as usize;
    if r.remaining() < n {
        return None;
    }
    decode_from_store(r.split_to(n)).map(|(m, _)| m)
}

fn put_counts(b: &mut Vec<u8>, counts: &[Counts]) {
    b.put_u32(counts.len() as u32);
    for (vhost, name, ready, unacked) in counts {
        put_str(b, vhost);
        put_str(b, name);
        b.put_u64(*ready);
        b.put_u64(*unacked);
    }
}

fn get_counts(r: &mut Bytes) -> Option<Vec<Counts>> {
    let n = get_u32(r)?;
    (0..n).map(|_| Some((get_str(r)?, get_str(r)?, get_u64(r)?, get_u64(r)?))).collect()
}

fn put_event(b: &mut Vec<u8>, e: &Event, scratch: &mut Vec<u8>) {
    match e {
        Event::Deliver { group, conn, channel, tag, id, redelivered, msg } => {
            b.put_u8(1);
            b.put_u64(*group);
            b.put_u64(*conn);
            b.put_u16(*channel);
            put_str(b, tag);
            b.put_u64(*id);
            b.put_u8(u8::from(*redelivered));
            put_msg(b, msg, scratch);
        }
        Event::Got { group, conn, channel, got, remaining } => {
            b.put_u8(2);
            b.put_u64(*group);
            b.put_u64(*conn);
            b.put_u16(*channel);
            match got {
                Some((id, redelivered, msg)) => {
                    b.put_u8(1);
                    b.put_u64(*id);
                    b.put_u8(u8::from(*redelivered));
                    put_msg(b, msg, scratch);
                }
                None => b.put_u8(0),
            }
            b.put_u64(*remaining);
        }
        Event::Confirm { vhost, seq, multiple, ok } => {
            b.put_u8(3);
            put_str(b, vhost);
            b.put_u64(*seq);
            b.put_u8(u8::from(*multiple));
            b.put_u8(u8::from(*ok));
        }
        Event::Closed { conn, channel, code, text, ids } => {
            b.put_u8(4);
            b.put_u64(*conn);
            b.put_u16(*channel);
            b.put_u16(*code);
            put_str(b, text);
            b.put_u16(ids.0);
            b.put_u16(ids.1);
        }
    }
}

fn get_event(r: &mut Bytes) -> Option<Event> {
    Some(match get_u8(r)? {
        1 => Event::Deliver {
            group: get_u64(r)?,
            conn: get_u64(r)?,
            channel: get_u16(r)?,
            tag: ShortStr::from(get_str(r)?),
            id: get_u64(r)?,
            redelivered: get_u8(r)? != 0,
            msg: get_msg(r)?,
        },
        2 => {
            let (group, conn, channel) = (get_u64(r)?, get_u64(r)?, get_u16(r)?);
            let got = match get_u8(r)? {
                0 => None,
                _ => Some((get_u64(r)?, get_u8(r)? != 0, get_msg(r)?)),
            };
            Event::Got { group, conn, channel, got, remaining: get_u64(r)? }
        }
        3 => Event::Confirm { vhost: get_str(r)?, seq: get_u64(r)?, multiple: get_u8(r)? != 0, ok: get_u8(r)? != 0 },
        4 => Event::Closed {
            conn: get_u64(r)?,
            channel: get_u16(r)?,
            code: get_u16(r)?,
            text: get_str(r)?,
            ids: (get_u16(r)?, get_u16(r)?),
        },
        _ => return None,
    })
}

/// Marks the broker's classic queues that live on another node as reached through it (and
/// those that live here as its own): every one, or only `only`'s.
pub fn mark_homes(core: &mut Broker, m: &Metadata, me: u64, only: Option<&[Key]>) {
    let mark = |core: &mut Broker, key: &Key, group: u64, home: u64| {
        core.set_forwarded(&key.0, &key.1, (home != me).then_some(group));
    };
    match only {
        None => {
            for (key, group, home) in m.homes() {
                mark(core, key, group, home);
            }
        }
        Some(keys) => {
            for key in keys {
                if let (Some(home), Some(p)) = (m.home(&key.0, &key.1), m.placement(&key.0, &key.1)) {
                    mark(core, key, p.group, home);
                }
            }
        }
    }
}
