//! Quorum queues served through their Raft groups (docs/clustering.md, "Quorum queues over
//! AMQP").
//!
//! Each quorum queue the metadata group places ([`crate::meta::Placement`]) is a group of its
//! own over its members (every node, up to `x-quorum-initial-group-size`), its log in the
//! node's WAL. The broker of every node keeps the queue's name and consumers but no messages:
//! what its clients do to the queue becomes commands ([`warren_core::broker::ReplicaWork`]),
//! which this host proposes to the group, in order, a batch at a time; every member applies
//! the batch, and each acts on the effects that are its own: a delivery to a consumer on this
//! node goes to it here, a publish made here is confirmed here once committed.

use crate::host::MetaHost;
use crate::meta::{Metadata, Placement};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Notify};
use warren_amqp::ShortStr;
use warren_core::body_store::{BodyStore, SharedBodyStore};
use warren_core::broker::ReplicaWork;
use warren_core::quorum::{Command, Delivery, Effect, Output, QuorumConfig, QuorumQueue, Reply, Stamped};
use warren_core::{ConnId, Out};
use warren_raft::{
    Applied, AppliedRx, Forwarded, Group, GroupConfig, Machine, Peer, ProposeError, TcpNode, TcpTransport, Wal,
};
use warren_server::{ReplicaSink, Shared};

/// How long a batch may take to commit before the publishes in it are nacked.
pub const COMMIT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the leader waits after proposing a tick for expired messages before it looks at
/// the head of the queue again.
mod upkeep;
use upkeep::{
    activity_key, campaign_if_leader_gone, quiet_or_wake, restart_stuck_members, snapshot_when_worth_it, supervise,
    ActivityKey,
};

const EXPIRY_RECHECK: Duration = Duration::from_millis(50);

/// Commands proposed as one log entry at most.
const BATCH_MAX: usize = 512;

/// A quorum queue as its group replicates it: each log entry is a batch of commands, applied
/// in order.
#[derive(Debug, Clone, Default)]
pub struct QueueMachine {
    queue: QuorumQueue,
    /// Where this member pages a backlog (none: everything in memory).
    bodies: Option<SharedBodyStore>,
    /// A memory window other than the default, kept across restores (tests).
    window: Option<(usize, u64)>,
    /// Body bytes of the messages this member applied since it started or restored a
    /// snapshot: how much log a snapshot would let go (`snapshot_when_worth_it`). Not part of
    /// the replicated state (a snapshot does not carry it).
    enqueued_bytes: u64,
}

impl QueueMachine {
    pub fn new(config: QuorumConfig) -> Self {
        QueueMachine { queue: QuorumQueue::new(config), bodies: None, window: None, enqueued_bytes: 0 }
    }

    /// A member that keeps the ready messages past its memory window in `bodies` (its snapshots
    /// name them there).
    pub fn with_store(config: QuorumConfig, bodies: SharedBodyStore) -> Self {
        let queue = QuorumQueue::with_store(config, bodies.clone());
        QueueMachine { queue, bodies: Some(bodies), window: None, enqueued_bytes: 0 }
    }

    /// Sets the memory window of a member with a store ([`QuorumQueue::set_window`]), from now
    /// on and after every restore. For tests: it changes where messages are kept, never what
    /// the queue does.
    pub fn set_window(&mut self, messages: usize, bytes: u64) {
        self.window = Some((messages, bytes));
        self.queue.set_window(messages, bytes);
    }

    /// Body bytes of the messages applied since this member started or restored a snapshot.
    pub fn enqueued_bytes(&self) -> u64 {
        self.enqueued_bytes
    }

    pub fn queue(&self) -> &QuorumQueue {
        &self.queue
    }
}

fn invalid(why: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why.to_owned())
}

impl Machine for QueueMachine {
    /// Shared: openraft clones entries as it keeps and sends them.
    type Command = Arc<Vec<Stamped>>;
    type Output = Vec<Output>;

    fn apply(&mut self, index: u64, batch: &Arc<Vec<Stamped>>) -> Vec<Output> {
        for c in batch.iter() {
            if let Command::Enqueue { msg } = &c.command {
                self.enqueued_bytes += msg.body.len() as u64;
            }
        }
        batch.iter().map(|c| self.queue.apply(index, c)).collect()
    }

    fn snapshot(&self) -> Vec<u8> {
        self.queue.snapshot()
    }

    fn restore(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.queue = QuorumQueue::restore_with(bytes, self.bodies.clone())?;
        if let Some((messages, bytes)) = self.window {
            self.queue.set_window(messages, bytes);
        }
        self.enqueued_bytes = 0;
        Ok(())
    }

    fn prepare_snapshot(&mut self) -> io::Result<()> {
        match &self.bodies {
            Some(bodies) => bodies.lock().sync(),
            None => Ok(()),
        }
    }

    fn snapshot_written(&mut self) {
        if let Some(bodies) = &self.bodies {
            bodies.lock().settle_released();
        }
    }

    fn snapshot_to_send(&self, snapshot: &[u8]) -> io::Result<Vec<u8>> {
        match &self.bodies {
            Some(bodies) => QuorumQueue::resolve_snapshot(snapshot, bodies),
            None => Ok(snapshot.to_vec()),
        }
    }

    /// A count (u32), then each command: its length (u32) and its bytes, big-endian.
    fn encode_command(batch: &Arc<Vec<Stamped>>, out: &mut Vec<u8>) {
        out.reserve(Self::encoded_len_hint(batch));
        out.extend_from_slice(&(batch.len() as u32).to_be_bytes());
        for c in batch.iter() {
            // Written in place, its length patched after.
            let at = out.len();
            out.extend_from_slice(&[0; 4]);
            c.encode(out);
            let len = (out.len() - at - 4) as u32;
            out[at..at + 4].copy_from_slice(&len.to_be_bytes());
        }
    }

    fn encoded_len_hint(batch: &Arc<Vec<Stamped>>) -> usize {
        4 + batch.iter().map(|c| 4 + c.encoded_len_hint()).sum::<usize>()
    }

    /// One byte per command: 0 done, 1 a publish refused (reject-publish), 2 an answer only
    /// the proposer's own apply has (a get's message, a purge's count, a consumer tag in use).
    fn receipt(outputs: &Vec<Output>, out: &mut Vec<u8>) {
        out.extend(outputs.iter().map(|o| match o.reply {
            Reply::Ok => 0,
            Reply::Rejected => 1,
            _ => 2,
        }));
    }

    fn decode_command(bytes: &[u8]) -> io::Result<Arc<Vec<Stamped>>> {
        let cut = || invalid("a batch of queue commands cut short");
        let count = u32::from_be_bytes(bytes.get(..4).ok_or_else(cut)?.try_into().expect("4 bytes")) as usize;
        let mut at = &bytes[4..];
        let mut batch = Vec::with_capacity(count.min(at.len() / 4));
        for _ in 0..count {
            let len = u32::from_be_bytes(at.get(..4).ok_or_else(cut)?.try_into().expect("4 bytes")) as usize;
            let one = at.get(4..4 + len).ok_or_else(cut)?;
            batch.push(Stamped::decode(one)?);
            at = &at[4 + len..];
        }
        if !at.is_empty() {
            return Err(invalid("bytes after a batch of queue commands"));
        }
        Ok(Arc::new(batch))
    }
}

/// The members of a quorum queue's group: its first leader (the declaring node) and the
/// nodes after it in an order drawn from the queue's name, `size` in all (RabbitMQ's
/// `x-quorum-initial-group-size`, default: every node).
pub fn members_of(placement: &Placement, vhost: &str, name: &str, nodes: &[u64], size: usize) -> Vec<u64> {
    let spread = |node: u64| {
        // A fixed hash (64-bit FNV-1a): the same order on every node, run and version.
        let bytes = vhost.bytes().chain([0xff]).chain(name.bytes()).chain([0xff]).chain(node.to_le_bytes());
        bytes.fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3))
    };
    let mut others: Vec<u64> = nodes.iter().copied().filter(|&n| n != placement.origin).collect();
    others.sort_by_key(|&n| (spread(n), n));
    let mut members = Vec::with_capacity(size);
    if nodes.contains(&placement.origin) {
        members.push(placement.origin);
    }
    members.extend(others);
    members.truncate(size.max(1));
    members.sort_unstable();
    members
}

/// The cluster's nodes with their inter-node addresses: `configured` and those that joined,
/// but the forgotten ones.
pub fn cluster_nodes(configured: &BTreeMap<u64, String>, m: &Metadata) -> BTreeMap<u64, String> {
    let joined = m.joined().iter().map(|(id, j)| (*id, j.addr.clone()));
    let mut nodes: BTreeMap<u64, String> = configured.clone();
    nodes.extend(joined);
    nodes.retain(|id, _| !m.forgotten().contains(id));
    nodes
}

/// A quorum queue's group as the metadata wants it.
#[derive(Debug, Clone)]
struct Wanted {
    /// Its queue: vhost and name.
    key: (String, String),
    placement: Placement,
    /// Its voters, sorted.
    members: Vec<u64>,
    /// Whether an operator chose the members (the group exists then: no member founds it
    /// again).
    chosen: bool,
    /// The member that founds the group, and so leads it first: the declaring node
    /// (`client-local`), or under the `balanced` leader locator the member that founds the
    /// fewest of the queues declared before it.
    founder: u64,
}

/// How often at most a member that stopped on its own is started again.
const RESTART_DEAD_EVERY: Duration = Duration::from_secs(5);

/// How long a declaring node waits for the member it picked to found a `balanced` queue's
/// group before it founds the group itself (members may, in rare cases, pick differently).
const FOUNDING_FALLBACK_AFTER: Duration = Duration::from_secs(3);

/// One quorum queue's member on this node.
struct Replica {
    vhost: String,
    name: ShortStr,
    group_id: u64,
    group: Group<QueueMachine>,
    transport: TcpTransport<QueueMachine>,
    /// Commands waiting to be proposed, in the order the broker made them.
    pending: parking_lot::Mutex<Vec<ReplicaWork>>,
    wake: Notify,
    /// Replies of the entries applied here (by log index), for the proposer to collect.
    replies: parking_lot::Mutex<BTreeMap<u64, Vec<Answer>>>,
    handled: watch::Sender<u64>,
    stop: watch::Sender<bool>,
    /// The group's log, for its commit index.
    log: warren_raft::WalLog<QueueMachine>,
    /// How long the latest batch this node proposed took to commit (µs).
    commit_latency_us: std::sync::atomic::AtomicU64,
    /// The group's state when it last changed, and when (see `quiet_or_wake`).
    activity: parking_lot::Mutex<(ActivityKey, tokio::time::Instant)>,
    /// Whether this node's proposer has commands on hand (a member whose node has work for
    /// the group never goes quiet: its leader may be gone without a word).
    busy: std::sync::atomic::AtomicBool,
    /// Whether this node, leading, is changing the group's members to the metadata's.
    changing: std::sync::atomic::AtomicBool,
    /// The term in which this member last saw its leader taken out of the voters (and called
    /// for an election).
    deposed: std::sync::atomic::AtomicU64,
    /// When this node last started this member again after it stopped on its own.
    restart_tried: parking_lot::Mutex<Option<tokio::time::Instant>>,
    /// The highest index this node's forwarded commands were committed at by another node's
    /// leader: this member must come to apply it.
    known_committed: std::sync::atomic::AtomicU64,
    /// The member's progress as last seen (openraft's applied index, the host's handled one),
    /// and since when it has been behind without moving (`restart_stuck_members`).
    progress: parking_lot::Mutex<(Option<u64>, u64, Option<tokio::time::Instant>)>,
    /// When this host last asked for a snapshot, and how long the member has been idle
    /// (`snapshot_when_worth_it`).
    snapshot_mark: parking_lot::Mutex<upkeep::SnapshotMark>,
    /// A batch of this member's commands was committed and applied here: it holds what its
    /// group had committed before (true from the start for a member started again in the same
    /// run, which has no first command to wait for).
    in_step: watch::Sender<bool>,
}

/// The quorum queues' groups on this node.
pub struct QueueHost {
    me: u64,
    me32: u32,
    node: TcpNode,
    wal: Wal,
    dir: PathBuf,
    shared: Arc<Shared>,
    meta: Arc<MetaHost>,
    /// Every configured node with its inter-node address (the cluster is those but the
    /// forgotten: [`QueueHost::nodes`]).
    configured: BTreeMap<u64, String>,
    /// The configured nodes' names (`name@host`), by id.
    names: BTreeMap<u64, String>,
    replicas: parking_lot::Mutex<HashMap<u64, Arc<Replica>>>,
    changed: Notify,
    /// Passes `follow_metadata` made with the metadata caught up, each having started every
    /// group the metadata then wanted here.
    passes: watch::Sender<u64>,
    config: GroupConfig,
    /// This run's first connection id: a consumer named with a lower one was an earlier
    /// run's (its deliveries, replayed from the log at start, are no one's here).
    first_conn: std::sync::atomic::AtomicU64,
    /// `queue_leader_locator = balanced`: quorum queues without `x-queue-leader-locator` are
    /// placed balanced.
    balanced_by_default: bool,
    /// Classic queues that live on other nodes, reached through them.
    forward: Arc<crate::forward::Forwarder>,
    /// Each member's store of paged messages, opened once per run (a member started again
    /// takes the same one).
    bodies: parking_lot::Mutex<HashMap<u64, SharedBodyStore>>,
    /// The node's write-ahead log stopped and is not recovered yet: stopped members are not
    /// started again meanwhile ([`QueueHost::stop_for_storage`]).
    storage_down: std::sync::atomic::AtomicBool,
    /// Held (shared) while a member starts, and (exclusive) while the members stop for the
    /// WAL: no member starts on a WAL being recovered.
    starting: tokio::sync::RwLock<()>,
}

/// A quorum queue's group: snapshots every 1,000 entries with 100 kept behind (rather than
/// every 5,000 with 1,000 kept): an entry is a batch of up to `BATCH_MAX` commands, published
/// messages included, and the log's entries stay in memory until a snapshot lets them go,
/// while a snapshot holds only the messages still in the queue.
fn queue_group_config() -> GroupConfig {
    // Snapshots are the host's to call (`snapshot_when_worth_it`), not openraft's every N.
    GroupConfig { snapshot_every_entries: 0, kept_after_snapshot_entries: 100, ..GroupConfig::default() }
}

/// What a command's proposer is told: the reply, and basic.get's message.
type Answer = (Reply, Option<Delivery>);

/// This node's number in quorum queues' commands (their owners are u32).
pub fn node32(id: u64) -> u32 {
    id as u32
}

impl QueueHost {
    /// Starts hosting the quorum queues the metadata group places on this node.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        node: TcpNode,
        wal: Wal,
        dir: PathBuf,
        shared: Arc<Shared>,
        meta: Arc<MetaHost>,
        nodes: BTreeMap<u64, String>,
        names: BTreeMap<u64, String>,
        balanced_by_default: bool,
    ) -> Arc<QueueHost> {
        let me = node.id();
        let forward = crate::forward::Forwarder::start(node.clone(), shared.clone(), meta.clone(), nodes.clone());
        let host = Arc::new(QueueHost {
            me,
            me32: node32(me),
            node,
            wal,
            dir,
            shared: shared.clone(),
            meta: meta.clone(),
            configured: nodes,
            names,
            replicas: parking_lot::Mutex::new(HashMap::new()),
            changed: Notify::new(),
            passes: watch::Sender::new(0),
            config: queue_group_config(),
            first_conn: std::sync::atomic::AtomicU64::new(u64::MAX),
            balanced_by_default,
            forward,
            bodies: parking_lot::Mutex::new(HashMap::new()),
            storage_down: std::sync::atomic::AtomicBool::new(false),
            starting: tokio::sync::RwLock::new(()),
        });
        shared.broker().set_replica_node(host.me32);
        let first_conn = shared.set_replica_sink(Arc::new(Sink(Arc::downgrade(&host))));
        host.first_conn.store(first_conn, std::sync::atomic::Ordering::Relaxed);
        tokio::spawn(host.clone().follow_metadata());
        tokio::spawn(host.clone().watch_nodes());
        let weak = Arc::downgrade(&host);
        meta.on_queues_changed(Arc::new(move || {
            if let Some(host) = weak.upgrade() {
                host.changed.notify_one();
            }
        }));
        host
    }

    /// Starts and stops groups as the metadata places and removes quorum queues.
    async fn follow_metadata(self: Arc<Self>) {
        loop {
            self.changed.notified().await;
            if self.meta.is_catching_up() {
                continue;
            }
            // Nodes that joined: their classic queues are reached, their clients served.
            self.forward.add_nodes(&self.nodes());
            // Every node holds every quorum queue: its voters as members, the other nodes as
            // learners (they take no part in elections or commits, but receive and apply the
            // log, so that they serve the queue's clients as members do).
            let wanted: HashMap<u64, Wanted> = self.placed().into_iter().map(|w| (w.placement.group, w)).collect();
            let running: Vec<u64> = self.replicas.lock().keys().copied().collect();
            for group in running {
                if !wanted.contains_key(&group) {
                    self.stop_replica(group).await;
                }
            }
            for (group, w) in wanted {
                if self.replicas.lock().contains_key(&group) {
                    continue;
                }
                if let Err(e) = self.start_replica(group, &w).await {
                    tracing::error!("quorum queue '{}' in vhost '{}': cannot start its group: {e}", w.key.1, w.key.0);
                }
            }
            self.passes.send_modify(|n| *n += 1);
        }
    }

    /// Returns once this node has caught up with the cluster's metadata and started its member
    /// of every quorum queue's group: from then on each quorum queue here is served by its
    /// group (before, a recovered one is a plain queue of this node's broker, which refuses
    /// publishes to it). Never returns while no majority of the nodes answers.
    pub async fn until_members_run(&self) {
        self.meta.until_caught_up().await;
        let mut passes = self.passes.subscribe();
        let seen = *passes.borrow_and_update();
        self.changed.notify_one();
        let _ = passes.wait_for(|n| *n > seen).await;
    }

    /// Returns once each of this node's members has had a command committed (a new run's first
    /// is its `Down`) and applied here: it holds what its group committed before this node came
    /// back, and counts its messages as its leader does. A group with no majority running never
    /// gets there.
    pub async fn until_members_in_step(&self) {
        let members: Vec<watch::Receiver<bool>> =
            self.replicas.lock().values().map(|r| r.in_step.subscribe()).collect();
        for mut member in members {
            let _ = member.wait_for(|done| *done).await;
        }
    }

    /// The nodes of the cluster with their inter-node addresses: the configured ones and those
    /// that joined since, but those an operator made the cluster forget.
    pub fn nodes(&self) -> BTreeMap<u64, String> {
        self.meta.group().with_machine(|m: &Metadata| cluster_nodes(&self.configured, m))
    }

    /// The names of the nodes that joined the cluster after it formed (forgotten ones left
    /// out), by id.
    pub fn joined_names(&self) -> BTreeMap<u64, String> {
        self.meta.group().with_machine(|m: &Metadata| {
            m.joined()
                .iter()
                .filter(|(id, _)| !m.forgotten().contains(id))
                .map(|(id, j)| (*id, j.name.clone()))
                .collect()
        })
    }

    /// Takes node `node` (stopped) out of the cluster: see [`MetaHost::forget`].
    pub async fn forget(&self, node: u64) -> Result<(), String> {
        self.meta.forget(node).await
    }

    /// Every quorum queue's group as the metadata wants it, in the order of their groups'
    /// creation.
    fn placed(&self) -> Vec<Wanted> {
        let nodes: Vec<u64> = self.nodes().keys().copied().collect();
        let joined_at: HashMap<u64, u64> =
            self.meta.group().with_machine(|m: &Metadata| m.joined().iter().map(|(id, j)| (*id, j.at)).collect());
        let balanced_by_default = self.balanced_by_default;
        let locators = self.shared.broker().leader_locator_policies();
        let mut placed: Vec<(Wanted, bool)> = self.meta.group().with_machine(|m: &Metadata| {
            m.placements()
                .map(|(key, p)| {
                    let args = m.queue(&key.0, &key.1).map(|q| &q.arguments);
                    let policy = warren_core::policy::policy_leader_locator(&key.0, &key.1, &locators);
                    let balanced =
                        args.is_some_and(|a| warren_core::args::balanced_leader(policy, a, balanced_by_default));
                    let (members, chosen) = match m.members(&key.0, &key.1) {
                        Some(members) => (members.to_vec(), true),
                        None => {
                            let size = args
                                .and_then(|a| a.get("x-quorum-initial-group-size"))
                                .and_then(|v| v.as_i64())
                                .filter(|&n| n > 0)
                                .map_or(usize::MAX, |n| n as usize);
                            // Nodes that joined after the queue was placed are not counted.
                            let nodes: Vec<u64> = nodes
                                .iter()
                                .copied()
                                .filter(|n| joined_at.get(n).is_none_or(|&at| at < p.group))
                                .collect();
                            (members_of(p, &key.0, &key.1, &nodes, size.min(nodes.len())), false)
                        }
                    };
                    (Wanted { key: key.clone(), placement: *p, members, chosen, founder: p.origin }, balanced)
                })
                .collect()
        });
        // Founders in the order the groups were made, each balanced one on the member that
        // founds the fewest so far (ties to the lowest id): the same on every node that sees
        // the same queues.
        placed.sort_by_key(|(w, _)| w.placement.group);
        let mut founded: HashMap<u64, usize> = HashMap::new();
        for (w, balanced) in &mut placed {
            if *balanced {
                if let Some(&least) = w.members.iter().min_by_key(|n| (founded.get(n).copied().unwrap_or(0), **n)) {
                    w.founder = least;
                }
            }
            *founded.entry(w.founder).or_default() += 1;
        }
        placed.into_iter().map(|(w, _)| w).collect()
    }

    /// The node classic queue `name` in `vhost` lives on (its declaration's).
    pub fn home(&self, vhost: &str, name: &str) -> Option<u64> {
        self.meta.group().with_machine(|m: &Metadata| m.home(vhost, name))
    }

    /// The group and members the metadata wants quorum queue `name` in `vhost` to have.
    pub fn wanted_members(&self, vhost: &str, name: &str) -> Option<(u64, Vec<u64>)> {
        self.placed().into_iter().find(|w| w.key.0 == vhost && w.key.1 == name).map(|w| (w.placement.group, w.members))
    }

    /// Every quorum queue (vhost, name) with its group and the members the metadata wants.
    pub fn all_wanted_members(&self) -> Vec<(String, String, u64, Vec<u64>)> {
        self.placed().into_iter().map(|w| (w.key.0, w.key.1, w.placement.group, w.members)).collect()
    }

    /// Records `members` as quorum queue `name` in `vhost`'s (group `group`) in the metadata;
    /// the group's leader then changes the group to match (`change_members`).
    pub async fn set_members(&self, vhost: &str, name: &str, group: u64, members: Vec<u64>) -> Result<(), String> {
        let nodes = self.nodes();
        if let Some(unknown) = members.iter().find(|m| !nodes.contains_key(m)) {
            return Err(format!("node {unknown:016x} is not in the cluster"));
        }
        self.meta.set_members(vhost, name, group, members).await
    }

    /// On the leader of `replica`'s group: makes `target` its voters and every other node a
    /// learner, a step at a time (RabbitMQ's add_member and delete_member, which Ra does the
    /// same way): a node not in the group joins as a learner, and becomes a voter once it holds
    /// the log up to its joining; voters taken out become learners through a joint
    /// configuration (they go on serving the queue's clients on their node).
    async fn change_members(self: Arc<Self>, replica: Arc<Replica>, target: BTreeSet<u64>) {
        let step = Duration::from_secs(10);
        let result: Result<(), String> = async {
            let status = replica.group.status();
            let mut joined_at = 0;
            let nodes = self.nodes();
            let missing = nodes.keys().filter(|n| !status.voters.contains(n) && !status.learners.contains(n));
            for &node in missing {
                let addr = nodes.get(&node).cloned().ok_or_else(|| format!("node {node:016x} unknown"))?;
                let index = tokio::time::timeout(step, replica.group.add_learner(node, addr))
                    .await
                    .map_err(|_| "adding a learner timed out".to_owned())?
                    .map_err(|e| format!("adding a learner: {e:?}"))?;
                joined_at = joined_at.max(index);
                tracing::info!("quorum queue '{}': node {node:016x} joins as a learner", replica.name);
            }
            if status.voters != target {
                let new: Vec<u64> = target.iter().copied().filter(|n| !status.voters.contains(n)).collect();
                let joined_at =
                    joined_at.max(status.last_log_index.unwrap_or(0).min(status.applied_index.unwrap_or(0)));
                replica
                    .group
                    .wait_until(step, "new members caught up", move |s| {
                        new.iter().all(|n| s.matched.get(n).copied().flatten().is_some_and(|m| m >= joined_at))
                    })
                    .await
                    .map_err(|e| format!("new members did not catch up: {e:?}"))?;
                tokio::time::timeout(step, replica.group.change_membership_retaining(target.clone()))
                    .await
                    .map_err(|_| "changing the voters timed out".to_owned())?
                    .map_err(|e| format!("changing the voters: {e:?}"))?;
                tracing::info!("quorum queue '{}': voters now {target:x?}", replica.name);
            }
            // Learners of nodes no longer in the cluster (forgotten) are dropped.
            let status = replica.group.status();
            let gone: BTreeSet<u64> = status.learners.iter().copied().filter(|n| !nodes.contains_key(n)).collect();
            if !gone.is_empty() && status.leader == Some(self.me) {
                tokio::time::timeout(step, replica.group.remove_learners(gone.clone()))
                    .await
                    .map_err(|_| "dropping learners timed out".to_owned())?
                    .map_err(|e| format!("dropping learners: {e:?}"))?;
                tracing::info!("quorum queue '{}': learners {gone:x?} dropped", replica.name);
            }
            Ok(())
        }
        .await;
        if let Err(e) = result {
            tracing::warn!("quorum queue '{}': changing its members to {target:x?}: {e} (tried again)", replica.name);
        }
        replica.changing.store(false, std::sync::atomic::Ordering::Release);
    }

    async fn start_replica(self: &Arc<Self>, group_id: u64, wanted: &Wanted) -> Result<(), String> {
        self.start_replica_as(group_id, wanted, true).await
    }

    /// Starts this node's member of `group_id`; `new_run`: this process never ran it before
    /// (so what an earlier run's consumers held goes back first).
    async fn start_replica_as(self: &Arc<Self>, group_id: u64, wanted: &Wanted, new_run: bool) -> Result<(), String> {
        let _starting = self.starting.read().await;
        if self.storage_down.load(std::sync::atomic::Ordering::Acquire) {
            return Err("the node's write-ahead log stopped (see the errors above)".into());
        }
        let (vhost, name) = (wanted.key.0.as_str(), wanted.key.1.as_str());
        let config = self.shared.broker().replica_config(vhost, name).unwrap_or_default();
        let log = self.wal.log::<QueueMachine>(group_id).map_err(|e| format!("its log: {e}"))?;
        let pristine = log.is_pristine();
        std::fs::create_dir_all(&self.dir).map_err(|e| format!("{}: {e}", self.dir.display()))?;
        let transport = self.node.transport::<QueueMachine>(group_id);
        let log_view = log.clone();
        let bodies = self.bodies_of(group_id)?;
        let (group, applied) = Group::start_durable(
            self.me,
            &self.config,
            QueueMachine::with_store(config, bodies),
            transport.clone(),
            log,
            self.dir.join(format!("{group_id:016x}.snapshot")),
        )
        .await
        .map_err(|e| format!("{e:?}"))?;
        // This node joined the cluster after the group was made (a new node, or one reset and
        // joined again under its name, whose id the group may still count as a voter): its
        // member neither founds the group nor votes until the leader has sent it the log.
        let joined_after = self.meta.group().with_machine(|m: &Metadata| m.joined().get(&self.me).map(|j| j.at));
        let joined_after = joined_after.is_some_and(|at| at > wanted.placement.group);
        if joined_after {
            group.set_votes_need_log(true);
        }
        self.node.register(group_id, group.clone()).map_err(|e| e.to_string())?;
        // The founder founds the group (and so leads it first); a member an operator added
        // joins it (the group's leader sends it the log). Should the founder a declaring node
        // picked not found it (a member that saw other queues, in rare cases), the declaring
        // node does after a while: founding twice with the same members is one founding.
        let founders: BTreeMap<u64, String> =
            wanted.members.iter().filter_map(|m| self.nodes().get(m).map(|a| (*m, a.clone()))).collect();
        let founding = pristine && !wanted.chosen && !joined_after;
        if founding && wanted.founder == self.me {
            if let Err(e) = group.initialize(founders).await {
                tracing::info!("quorum queue '{name}': its group was founded already ({e:?})");
            }
        } else if founding && wanted.placement.origin == self.me {
            let group = group.clone();
            let name = name.to_owned();
            tokio::spawn(async move {
                tokio::time::sleep(FOUNDING_FALLBACK_AFTER).await;
                let status = group.status();
                if status.leader.is_none()
                    && status.last_log_index.is_none()
                    && status.role != warren_raft::Role::Shutdown
                {
                    tracing::info!("quorum queue '{name}': no member founded its group: this node does");
                    let _ = group.initialize(founders).await;
                }
            });
        }
        // What this node's earlier run held (its consumers are gone with it) goes back first,
        // ahead of this run's consumers: a node restarted before a leader saw it go would
        // otherwise leave those messages checked out to no one for good.
        let first = ReplicaWork {
            group: group_id,
            command: Command::Down(warren_core::quorum::Gone::Node(self.me32)),
            confirm: None,
        };
        let (stop, stopped) = watch::channel(false);
        let replica = Arc::new(Replica {
            vhost: vhost.to_owned(),
            name: ShortStr::from(name.to_owned()),
            group_id,
            group,
            transport,
            pending: parking_lot::Mutex::new(if new_run { vec![first] } else { Vec::new() }),
            wake: Notify::new(),
            replies: parking_lot::Mutex::new(BTreeMap::new()),
            handled: watch::Sender::new(0),
            stop,
            log: log_view,
            commit_latency_us: std::sync::atomic::AtomicU64::new(0),
            activity: parking_lot::Mutex::new(((0, None, None), tokio::time::Instant::now())),
            busy: std::sync::atomic::AtomicBool::new(false),
            changing: std::sync::atomic::AtomicBool::new(false),
            deposed: std::sync::atomic::AtomicU64::new(u64::MAX),
            restart_tried: parking_lot::Mutex::new(None),
            known_committed: std::sync::atomic::AtomicU64::new(0),
            progress: parking_lot::Mutex::new((None, 0, None)),
            snapshot_mark: parking_lot::Mutex::new(upkeep::SnapshotMark::default()),
            in_step: watch::Sender::new(!new_run),
        });
        self.replicas.lock().insert(group_id, replica.clone());
        {
            // Consumers that came before attach now.
            let mut core = self.shared.broker();
            core.set_replica(vhost, name, Some(group_id));
            self.shared.submit_replica_work(&mut core);
        }
        tokio::spawn(Self::log_leaders(replica.clone(), stopped.clone()));
        let applying = tokio::spawn(self.clone().apply_loop(replica.clone(), applied));
        tokio::spawn(supervise(replica.clone(), "applying the group's log", applying));
        tokio::spawn(self.clone().expire_loop(replica.clone(), stopped.clone()));
        let proposing = tokio::spawn(self.clone().propose_loop(replica.clone(), stopped));
        tokio::spawn(supervise(replica, "proposing this node's commands", proposing));
        tracing::info!("quorum queue '{name}' in vhost '{vhost}': member of group {group_id:016x}");
        Ok(())
    }

    /// On the leader: proposes a `Tick` once the message at the head of the queue is past its
    /// TTL, so that an expired message goes (dead-lettered as `expired` where the queue says)
    /// even when nothing else happens to the queue. Between ticks it sleeps until the head's
    /// deadline, waking when an entry is applied (the head may have changed); a follower waits
    /// until it leads.
    async fn expire_loop(self: Arc<Self>, replica: Arc<Replica>, mut stopped: watch::Receiver<bool>) {
        let mut handled = replica.handled.subscribe();
        let me = self.me;
        let a_while = Duration::from_secs(3600);
        loop {
            if !replica.group.is_leader() {
                // Nothing to do until this node leads (no timer meanwhile: an idle follower
                // costs nothing here).
                let leads = replica.group.wait_until(a_while, "leading", move |s| s.leader == Some(me));
                tokio::select! {
                    led = leads => match led {
                        Ok(_) | Err(warren_raft::WaitError::Timeout { .. }) => continue,
                        // The group stopped.
                        Err(_) => return,
                    },
                    _ = stopped.changed() => return,
                }
            }
            let head = replica.group.with_machine(|m| m.queue().head_expires_at());
            let now = self.shared.now_ms();
            if head.is_some_and(|deadline| deadline < now) {
                replica.pending.lock().push(ReplicaWork {
                    group: replica.group_id,
                    command: Command::Tick,
                    confirm: None,
                });
                replica.wake.notify_one();
                // Not again before that tick had time to apply.
                tokio::select! {
                    _ = tokio::time::sleep(EXPIRY_RECHECK) => continue,
                    _ = stopped.changed() => return,
                }
            }
            // The head's deadline or an entry applied (the head may have changed), whichever
            // comes first; a leadership lost is seen then (a new leader's first entry is applied
            // here too).
            let deadline = async move {
                match head {
                    Some(deadline) => tokio::time::sleep(Duration::from_millis(deadline + 1 - now)).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = deadline => {}
                changed = handled.changed() => if changed.is_err() { return },
                _ = stopped.changed() => return,
            }
        }
    }

    /// Logs each change of a group's leader as this node sees it (for operators, and for
    /// reading a fault run's logs).
    async fn log_leaders(replica: Arc<Replica>, mut stopped: watch::Receiver<bool>) {
        let mut seen = (None, 0);
        loop {
            let changed = replica
                .group
                .wait_until(Duration::from_secs(3600), "a new leader", move |s| (s.leader, s.term) != seen);
            let status = tokio::select! {
                status = changed => status,
                _ = stopped.changed() => return,
            };
            let status = match status {
                Ok(status) => status,
                Err(warren_raft::WaitError::Timeout { .. }) => continue,
                // The group stopped: nothing more to wait for (waiting again would return at
                // once, for ever).
                Err(_) => return,
            };
            if status.leader != seen.0 {
                match status.leader {
                    Some(leader) => {
                        tracing::info!("quorum queue '{}': leader {leader:016x} in term {}", replica.name, status.term)
                    }
                    None => tracing::info!("quorum queue '{}': no leader in term {}", replica.name, status.term),
                }
            }
            seen = (status.leader, status.term);
        }
    }

    fn bodies_dir(&self, group_id: u64) -> PathBuf {
        self.dir.join(format!("{group_id:016x}.bodies"))
    }

    /// Group `group_id`'s store of paged messages, opened if this run has not yet.
    fn bodies_of(&self, group_id: u64) -> Result<SharedBodyStore, String> {
        let mut open = self.bodies.lock();
        if let Some(bodies) = open.get(&group_id) {
            return Ok(bodies.clone());
        }
        let dir = self.bodies_dir(group_id);
        let bodies = BodyStore::open_shared(Arc::new(warren_store::FsBackend), &dir)
            .map_err(|e| format!("its store of paged messages in {}: {e}", dir.display()))?;
        open.insert(group_id, bodies.clone());
        Ok(bodies)
    }

    async fn stop_replica(&self, group_id: u64) {
        let Some(replica) = self.replicas.lock().remove(&group_id) else { return };
        replica.stop.send_replace(true);
        self.node.unregister(group_id);
        let _ = replica.group.shutdown().await;
        if let Err(e) = self.wal.forget(group_id).await {
            tracing::error!("cannot forget the log of group {group_id:016x}: {e}");
        }
        let _ = std::fs::remove_file(self.dir.join(format!("{group_id:016x}.snapshot")));
        self.bodies.lock().remove(&group_id);
        if let Err(e) = std::fs::remove_dir_all(self.bodies_dir(group_id)) {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::error!("cannot delete the paged messages of group {group_id:016x}: {e}");
            }
        }
        tracing::info!("quorum queue '{}' in vhost '{}': group {group_id:016x} stopped", replica.name, replica.vhost);
    }

    /// Tells the broker which classic queues of other nodes have their home down (not
    /// connected to this node), as `last` had it before.
    fn follow_homes(&self, up: &BTreeSet<u64>, last: &mut HashMap<u64, String>) {
        let down: HashMap<u64, String> = self.meta.group().with_machine(|m: &Metadata| {
            m.homes()
                .filter(|(_, _, home)| *home != self.me && !up.contains(home))
                .map(|(_, group, home)| {
                    let joined = || m.joined().get(&home).map(|j| j.name.clone());
                    let name = self.names.get(&home).cloned().or_else(joined);
                    (group, name.unwrap_or_else(|| format!("{home:016x}")))
                })
                .collect()
        });
        if down != *last {
            self.shared.broker().set_homes_down(down.clone());
            *last = down;
        }
    }

    /// Follows the other nodes coming and going. A member lost to a group this node leads is
    /// told to the group (`Down`): what its consumers held goes back to the queue, counted
    /// as a delivery attempt, as RabbitMQ does when a node goes. A node back in touch attaches
    /// its consumers again (the leader may have taken them off meanwhile).
    async fn watch_nodes(self: Arc<Self>) {
        let mut connected = self.node.watch_connected();
        let mut up: std::collections::BTreeSet<u64> = connected.borrow_and_update().clone();
        // (group, node) told down, until the node is back: a leader elected after a node went
        // tells it too (the node's loss may have been the old leader's).
        let mut told: std::collections::HashSet<(u64, u64)> = std::collections::HashSet::new();
        let mut homes_down: HashMap<u64, String> = HashMap::new();
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                changed = connected.changed() => if changed.is_err() { return },
                _ = tick.tick() => {}
            }
            let now = connected.borrow_and_update().clone();
            let back = now.difference(&up).next().is_some();
            let gone: Vec<u64> = up.difference(&now).copied().collect();
            told.retain(|(_, node)| !now.contains(node));
            up = now;
            self.follow_homes(&up, &mut homes_down);
            let replicas: Vec<Arc<Replica>> = self.replicas.lock().values().cloned().collect();
            if !gone.is_empty() {
                // A leader's node whose connection closed (killed, say) is replaced as soon as
                // the other members' leases allow, rather than after the election timeout.
                let lease = Duration::from_millis(self.config.election_timeout_max_ms);
                for replica in &replicas {
                    if replica.group.status().leader.is_some_and(|l| gone.contains(&l)) && replica.group.is_quiet() {
                        // A quiet group's members wake: the elections below may need their
                        // timers (a split vote is settled by the election timeout).
                        replica.group.set_quiet(false);
                        *replica.activity.lock() = (activity_key(&replica.group.status()), tokio::time::Instant::now());
                    }
                    campaign_if_leader_gone(&replica.group, self.me, &up, &gone, lease);
                }
                campaign_if_leader_gone(&self.meta.group(), self.me, &up, &gone, lease);
            }
            for replica in &replicas {
                let status = replica.group.status();
                if status.leader != Some(self.me) {
                    continue;
                }
                // Learners too: their nodes' consumers hold messages as members' do.
                let all = status.voters.iter().chain(&status.learners);
                for &node in all.filter(|&&n| n != self.me && !up.contains(&n)) {
                    if !told.insert((replica.group_id, node)) {
                        continue;
                    }
                    let command = Command::Down(warren_core::quorum::Gone::Node(node32(node)));
                    replica.pending.lock().push(ReplicaWork { group: replica.group_id, command, confirm: None });
                    replica.wake.notify_one();
                }
            }
            if back {
                // A node back may be a restarted member: the groups this node leads wake, so
                // that it hears their heartbeats before its own election timer runs out.
                for replica in &replicas {
                    if replica.group.is_quiet() && replica.group.is_leader() {
                        replica.group.set_quiet(false);
                        *replica.activity.lock() = (activity_key(&replica.group.status()), tokio::time::Instant::now());
                    }
                }
                let mut core = self.shared.broker();
                for replica in &replicas {
                    core.reattach_replica(&replica.vhost, &replica.name);
                }
                self.shared.submit_replica_work(&mut core);
            }
            self.restart_dead_members(&replicas).await;
            restart_stuck_members(&replicas);
            snapshot_when_worth_it(&replicas);
            quiet_or_wake(&replicas);
            // A leader an operator took out of its group stops leading once the change is
            // committed, without a word (its node stays up): the voters elect another at once
            // rather than after their timers (which quiet groups do not run).
            let lease = Duration::from_millis(self.config.election_timeout_max_ms);
            for replica in &replicas {
                let status = replica.group.status();
                let Some(leader) = status.leader.filter(|l| !status.voters.contains(l)) else { continue };
                if !status.voters.contains(&self.me)
                    || replica.deposed.swap(status.term, std::sync::atomic::Ordering::Relaxed) == status.term
                {
                    continue;
                }
                tracing::info!("quorum queue '{}': its leader {leader:016x} is a voter no more", replica.name);
                if replica.group.is_quiet() {
                    replica.group.set_quiet(false);
                    *replica.activity.lock() = (activity_key(&status), tokio::time::Instant::now());
                }
                campaign_if_leader_gone(&replica.group, self.me, &up, &[leader], lease);
            }
            // Groups this node leads are changed to the members the metadata wants.
            self.reconcile_members(&replicas);
        }
    }

    /// Starts again, from its log, each member of this node that stopped on its own (openraft
    /// stops a group's core on a storage error: a snapshot that could not be written on a full
    /// disk, say), at most once every [`RESTART_DEAD_EVERY`]: the failure is logged, and once
    /// the disk takes writes again the member catches up and serves as before. Its pending
    /// commands go over to the new member; this node's consumers stay attached (the group
    /// never heard they went), and what the group checked out to them that the old member
    /// never delivered goes back when the new one replays its log (`Applied::Restored`).
    async fn restart_dead_members(self: &Arc<Self>, replicas: &[Arc<Replica>]) {
        if self.storage_down.load(std::sync::atomic::Ordering::Acquire) {
            return;
        }
        for replica in replicas {
            if *replica.stop.borrow() || replica.group.status().role != warren_raft::Role::Shutdown {
                continue;
            }
            {
                let mut last = replica.restart_tried.lock();
                if last.is_some_and(|at| at.elapsed() < RESTART_DEAD_EVERY) {
                    continue;
                }
                *last = Some(tokio::time::Instant::now());
            }
            let Some(wanted) = self.placed().into_iter().find(|w| w.placement.group == replica.group_id) else {
                continue;
            };
            tracing::error!(
                "quorum queue '{}' in vhost '{}': this node's member of group {:016x} stopped (see the errors above); starting it again from its log",
                replica.name,
                replica.vhost,
                replica.group_id
            );
            self.node.unregister(replica.group_id);
            self.replicas.lock().remove(&replica.group_id);
            match self.start_replica_as(replica.group_id, &wanted, false).await {
                Ok(()) => {
                    if let Some(new) = self.replicas.lock().get(&replica.group_id) {
                        *new.restart_tried.lock() = *replica.restart_tried.lock();
                    }
                    // What the old member had on hand goes to the new one (and what its
                    // proposer hands back later, once it sees the stop: `propose_loop`).
                    self.carry_over(replica);
                }
                Err(e) => {
                    tracing::error!("quorum queue '{}': cannot start its member again: {e}", replica.name);
                    // What waited for it is answered now (publishes nacked), not left hanging.
                    self.fail(std::mem::take(&mut *replica.pending.lock()));
                    // Tried again at the next look, from the metadata (the queue is not
                    // running here now).
                    self.changed.notify_one();
                }
            }
            replica.stop.send_replace(true);
        }
    }

    /// The node's write-ahead log stopped (a failed write or sync): stops every member of this
    /// node (each would stop at its next write anyway, and the WAL can only recover once none
    /// runs on it), and starts none again until [`QueueHost::storage_back`].
    pub async fn stop_for_storage(&self) {
        self.storage_down.store(true, std::sync::atomic::Ordering::Release);
        // Members starting now finish first (and are stopped with the others).
        let _none_starting = self.starting.write().await;
        let replicas: Vec<Arc<Replica>> = self.replicas.lock().values().cloned().collect();
        for replica in replicas {
            let _ = replica.group.shutdown().await;
        }
    }

    /// The node's write-ahead log recovered: every member stopped is started again from its
    /// log at the next look (within half a second).
    pub fn storage_back(&self) {
        for replica in self.replicas.lock().values() {
            *replica.restart_tried.lock() = None;
        }
        self.storage_down.store(false, std::sync::atomic::Ordering::Release);
    }

    /// Moves the commands `old` (a member replaced by `restart_dead_members`) has on hand to
    /// the member now running for its group, if one is.
    fn carry_over(&self, old: &Arc<Replica>) {
        let Some(new) = self.replicas.lock().get(&old.group_id).filter(|r| !Arc::ptr_eq(r, old)).cloned() else {
            // No new member (it could not be started): nothing will take them.
            self.fail(std::mem::take(&mut *old.pending.lock()));
            return;
        };
        let carried: Vec<ReplicaWork> = std::mem::take(&mut *old.pending.lock());
        if !carried.is_empty() {
            new.pending.lock().extend(carried);
            new.wake.notify_one();
        }
    }

    /// Starts changing the members of each group this node leads whose voters (or learners
    /// left over) differ from what the metadata wants, one change at a time per group.
    fn reconcile_members(self: &Arc<Self>, replicas: &[Arc<Replica>]) {
        let led: Vec<&Arc<Replica>> = replicas.iter().filter(|r| r.group.is_leader()).collect();
        if led.is_empty() {
            return;
        }
        let placed = self.placed();
        let nodes = self.nodes();
        for replica in led {
            let Some(w) = placed.iter().find(|w| w.placement.group == replica.group_id) else { continue };
            let target: BTreeSet<u64> = w.members.iter().copied().collect();
            let learners: BTreeSet<u64> = nodes.keys().copied().filter(|n| !target.contains(n)).collect();
            let status = replica.group.status();
            if status.voters == target && status.learners == learners {
                continue;
            }
            if replica.changing.swap(true, std::sync::atomic::Ordering::AcqRel) {
                continue;
            }
            if replica.group.is_quiet() {
                replica.group.set_quiet(false);
                *replica.activity.lock() = (activity_key(&status), tokio::time::Instant::now());
            }
            tokio::spawn(self.clone().change_members(replica.clone(), target));
        }
    }

    /// The group of quorum queue `name` in `vhost` as this node sees it, if it is a member:
    /// its leader, its voters, and those of them running as far as this node knows.
    pub fn replica_status(&self, vhost: &str, name: &str) -> Option<(Option<u64>, Vec<u64>, Vec<u64>)> {
        let replica = self.replicas.lock().values().find(|r| r.vhost == vhost && r.name.as_str() == name)?.clone();
        let status = replica.group.status();
        let members: Vec<u64> = status.voters.iter().copied().collect();
        let connected: std::collections::BTreeSet<u64> =
            self.node.peer_status().into_iter().filter(|(_, up)| *up).map(|(id, _)| id).collect();
        let online = members.iter().copied().filter(|m| *m == self.me || connected.contains(m)).collect();
        Some((status.leader, members, online))
    }

    /// The Raft state of every group this node is a member of, sorted by vhost and queue.
    pub fn raft_metrics(&self) -> Vec<warren_server::cluster::RaftMetrics> {
        let replicas: Vec<Arc<Replica>> = self.replicas.lock().values().cloned().collect();
        let mut metrics: Vec<_> = replicas
            .iter()
            .map(|r| {
                let status = r.group.status();
                let latency = r.commit_latency_us.load(std::sync::atomic::Ordering::Relaxed);
                warren_server::cluster::RaftMetrics {
                    vhost: r.vhost.clone(),
                    queue: r.name.to_string(),
                    term: status.term,
                    snapshot_index: status.snapshot_index.unwrap_or(0),
                    last_applied_index: status.applied_index.unwrap_or(0),
                    commit_index: r.log.committed_index().unwrap_or(0).max(status.applied_index.unwrap_or(0)),
                    last_written_index: status.last_log_index.unwrap_or(0),
                    commit_latency_seconds: latency as f64 / 1e6,
                }
            })
            .collect();
        metrics.sort_by(|a, b| (&a.vhost, &a.queue).cmp(&(&b.vhost, &b.queue)));
        metrics
    }

    /// Takes the broker's commands for the groups, in order.
    fn submit(&self, work: Vec<ReplicaWork>) {
        // Commands for classic queues that live on other nodes go there.
        let work = self.forward.take(work);
        if work.is_empty() {
            return;
        }
        let replicas = self.replicas.lock();
        let mut lost = Vec::new();
        for w in work {
            match replicas.get(&w.group) {
                Some(r) => {
                    r.pending.lock().push(w);
                    r.wake.notify_one();
                }
                None => lost.push(w),
            }
        }
        drop(replicas);
        self.fail(lost);
    }

    /// Answers commands no member here will take (the group stopped, an operator took this
    /// node out, or its member could not be started again): the publishes among them are
    /// nacked, a basic.get's channel is closed (as for a get its group did not commit) rather
    /// than left waiting.
    fn fail(&self, lost: Vec<ReplicaWork>) {
        if !lost.is_empty() {
            let shared = self.shared.clone();
            tokio::spawn(async move {
                let mut core = shared.broker();
                let mut out: Vec<(ConnId, Out)> = Vec::new();
                let now_ms = shared.now_ms();
                for w in lost {
                    if let Some((conn, channel, seq)) = w.confirm {
                        core.replica_committed(conn, channel, seq, false, &mut out);
                    }
                    if let Command::Get { owner, no_ack } = w.command {
                        let queue = core.replica_queue_name(w.group).unwrap_or_default();
                        core.replica_got(&queue, w.group, owner, no_ack, None, now_ms, &mut out);
                    }
                }
                core.deliver(&mut out);
            });
        }
    }

    /// Proposes a replica's commands a batch at a time, in order, following the leader.
    ///
    /// One batch is in flight at a time: measured on one machine (3 nodes, 3 publishers with
    /// 100 unconfirmed each), up to 4 or 16 batches in flight gave no more throughput (within
    /// the runs' spread) and a higher latency, since smaller batches mean more log entries,
    /// each with its own cost in openraft.
    async fn propose_loop(self: Arc<Self>, replica: Arc<Replica>, mut stopped: watch::Receiver<bool>) {
        loop {
            let batch: Vec<ReplicaWork> = {
                let mut pending = replica.pending.lock();
                let n = pending.len().min(BATCH_MAX);
                pending.drain(..n).collect()
            };
            if batch.is_empty() {
                replica.busy.store(false, std::sync::atomic::Ordering::Relaxed);
                tokio::select! {
                    _ = replica.wake.notified() => continue,
                    _ = stopped.changed() => return,
                }
            }
            replica.busy.store(true, std::sync::atomic::Ordering::Relaxed);
            let now_ms = self.shared.now_ms();
            let commands: Vec<Stamped> = batch.iter().map(|w| Stamped { now_ms, command: w.command.clone() }).collect();
            self.confirm_before_commit(&batch);
            let result = self.commit(&replica, commands).await;
            if result.is_ok() {
                replica.in_step.send_if_modified(|done| !std::mem::replace(done, true));
            }
            self.finish(&replica, batch, result);
            if replica.group.status().role == warren_raft::Role::Shutdown {
                // The member stopped on its own (an I/O error, say): what is left waits for its
                // restart, which takes the pending commands over; no retrying meanwhile.
                let _ = stopped.changed().await;
                self.carry_over(&replica);
                return;
            }
        }
    }

    /// With the `confirm-before-commit` feature only (a build broken on purpose, to prove the
    /// fault harness catches it): the batch's publishes are confirmed as they are handed to the
    /// leader, before any majority holds them. Without the feature, nothing.
    fn confirm_before_commit(&self, batch: &[ReplicaWork]) {
        if cfg!(feature = "confirm-before-commit") {
            let mut core = self.shared.broker();
            let mut out: Vec<(ConnId, Out)> = Vec::new();
            for (conn, channel, seq) in batch.iter().filter_map(|w| w.confirm) {
                core.replica_committed(conn, channel, seq, true, &mut out);
            }
            core.deliver(&mut out);
        }
    }

    /// Answers a batch: its publishes confirmed (or nacked, when `result` is an error, or the
    /// queue refused them), its gets delivered here. A batch that failed: publishes are nacked
    /// (their publishers may send them again); everything else (acks, returns, consumers coming
    /// and going, a node told down) goes back to the head of the pending commands: dropping an
    /// ack or a return would leave a message checked out for good, and each of them changes
    /// nothing when applied twice (had it been committed after all). A get is not tried again
    /// (a second try could take a second message): its channel is closed, and the group told
    /// the channel is gone, which returns the message had the get been committed after all.
    fn finish(&self, replica: &Replica, batch: Vec<ReplicaWork>, result: Result<Vec<Answer>, String>) {
        let replies = match result {
            Ok(replies) => Some(replies),
            Err(e) => {
                let again: Vec<ReplicaWork> = batch
                    .iter()
                    .filter_map(|w| match w.command {
                        Command::Enqueue { .. } => None,
                        Command::Get { owner, .. } => Some(ReplicaWork {
                            group: w.group,
                            command: Command::Down(warren_core::quorum::Gone::Channel(owner)),
                            confirm: None,
                        }),
                        _ => Some(w.clone()),
                    })
                    .collect();
                tracing::warn!(
                    "quorum queue '{}': {} commands not committed ({} to be tried again): {e}",
                    replica.name,
                    batch.len(),
                    again.len()
                );
                if !again.is_empty() {
                    replica.pending.lock().splice(0..0, again);
                    replica.wake.notify_one();
                }
                None
            }
        };
        let now_ms = self.shared.now_ms();
        let mut returns = Vec::new();
        let mut core = self.shared.broker();
        let mut out: Vec<(ConnId, Out)> = Vec::new();
        for (i, w) in batch.iter().enumerate() {
            let reply = replies.as_ref().and_then(|r| r.get(i));
            if let Some((conn, channel, seq)) = w.confirm {
                let ok = reply.is_some_and(|(r, _)| !matches!(r, Reply::Rejected));
                core.replica_committed(conn, channel, seq, ok, &mut out);
            }
            if let Command::Get { owner, no_ack } = w.command {
                let got = match reply {
                    Some((Reply::Got { remaining, .. }, got)) => Some((got.as_ref(), *remaining)),
                    _ => None,
                };
                let taken = got.and_then(|(g, _)| g.map(|d| d.id));
                if !core.replica_got(&replica.name, replica.group_id, owner, no_ack, got, now_ms, &mut out) {
                    returns.extend(taken.map(|id| ReplicaWork {
                        group: replica.group_id,
                        command: Command::Return { owner, ids: vec![id] },
                        confirm: None,
                    }));
                }
            }
        }
        core.deliver(&mut out);
        drop(core);
        if !returns.is_empty() {
            replica.pending.lock().extend(returns);
            replica.wake.notify_one();
        }
    }

    /// Proposes one batch (through the leader, wherever it is) and returns its replies once
    /// this node applied it.
    async fn commit(&self, replica: &Replica, batch: Vec<Stamped>) -> Result<Vec<Answer>, String> {
        let batch = Arc::new(batch);
        let deadline = tokio::time::Instant::now() + COMMIT_TIMEOUT;
        let has_get = batch.iter().any(|c| matches!(c.command, Command::Get { .. }));
        let len = batch.len();
        let mut why = String::from("no leader");
        let started = tokio::time::Instant::now();
        let (index, receipt) = loop {
            // An attempt's error: what went wrong, and whether trying again is allowed.
            let attempt = async {
                match replica.group.propose(batch.clone()).await {
                    Ok((index, _)) => Ok((index, Vec::new())),
                    Err(ProposeError::NotLeader { leader: Some(leader) }) if leader != self.me => {
                        let addr = self
                            .configured
                            .get(&leader)
                            .cloned()
                            .or_else(|| self.nodes().remove(&leader))
                            .ok_or(("the leader is not a known node".to_owned(), true))?;
                        // A leader paused or cut off does not answer: once this node's replica
                        // moved to a later term (an election), the batch goes to whoever leads
                        // now rather than waiting out the timeout. Should the old leader's copy
                        // be committed after all, the new leader had it, and it comes first:
                        // its commands are applied twice in a row, which changes nothing but a
                        // publish's count (at least once, as a publisher retrying would) and a
                        // get's (so a batch with a get is not sent twice: it fails instead).
                        let term = replica.group.status().term;
                        let peer = Peer { id: leader, addr };
                        let forward = replica.transport.propose(&peer, &batch, COMMIT_TIMEOUT);
                        let moved = replica.group.wait_until(COMMIT_TIMEOUT, "a later term", move |s| s.term > term);
                        tokio::select! {
                            forwarded = forward => match forwarded {
                                Ok(Forwarded::Committed { index, receipt }) => Ok((index, receipt)),
                                Ok(Forwarded::NotLeader(_)) => Err(("the leader moved".to_owned(), true)),
                                Err(e) => Err((format!("forwarding to the leader: {e}"), true)),
                            },
                            Ok(_) = moved => Err(("the leader changed while the batch was forwarded".to_owned(), !has_get)),
                        }
                    }
                    Err(ProposeError::NotLeader { .. }) => Err(("no leader".to_owned(), true)),
                    // Not worth waiting for: the host restarts a member that stopped on its own
                    // (`restart_dead_members`), and the commands go on in the new one.
                    Err(ProposeError::Stopped(_)) => Err(("this node's member of the group stopped".to_owned(), false)),
                }
            };
            match tokio::time::timeout_at(deadline, attempt).await {
                Ok(Ok(done)) => break done,
                Ok(Err((e, again))) => {
                    if !again {
                        return Err(e);
                    }
                    why = e;
                }
                Err(_) => return Err(format!("not committed within {COMMIT_TIMEOUT:?} ({why})")),
            }
            if tokio::time::Instant::now() + Duration::from_millis(50) >= deadline {
                return Err(format!("not committed within {COMMIT_TIMEOUT:?} ({why})"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let took = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        replica.commit_latency_us.store(took, std::sync::atomic::Ordering::Relaxed);
        self.replies(replica, index, receipt, len, deadline).await
    }

    /// The replies to the batch of `len` commands committed at `index` with `receipt` (see
    /// [`Forwarded::Committed`]), once this node applied it, by `deadline`.
    async fn replies(
        &self,
        replica: &Replica,
        index: u64,
        receipt: Vec<u8>,
        len: usize,
        deadline: tokio::time::Instant,
    ) -> Result<Vec<Answer>, String> {
        replica.known_committed.fetch_max(index, std::sync::atomic::Ordering::Relaxed);
        // Committed through another node: its receipt answers publishes and the like at once,
        // without waiting for this node to hear of the commit and apply the entry (the
        // deliveries to this node's consumers come as it applies, all the same).
        if receipt.len() == len && receipt.iter().all(|r| *r < 2) {
            return Ok(receipt.iter().map(|r| (if *r == 1 { Reply::Rejected } else { Reply::Ok }, None)).collect());
        }
        let mut handled = replica.handled.subscribe();
        if tokio::time::timeout_at(deadline, handled.wait_for(|h| *h >= index)).await.is_err() {
            return Err(format!("entry {index} committed but not applied here in time"));
        }
        replica.replies.lock().remove(&index).ok_or_else(|| format!("no replies for entry {index}"))
    }

    /// Applies what the group committed: this node's deliveries, its replica's counts, the
    /// replies its proposers wait for.
    async fn apply_loop(self: Arc<Self>, replica: Arc<Replica>, mut applied: AppliedRx<Vec<Output>>) {
        while let Some(event) = applied.recv().await {
            let index = event.index();
            if let Applied::Restored { .. } = event {
                // The log replayed at start, or a snapshot installed after this node fell
                // behind: the deliveries in between were not seen here. A message the group
                // checked out to a channel of this run that this broker never delivered would
                // stay checked out for good: it goes back (an earlier run's go back with the
                // Down this run proposed first).
                let first_conn = self.first_conn.load(std::sync::atomic::Ordering::Relaxed);
                let (ready, unacked, held) = replica.group.with_machine(|m| {
                    (m.queue().ready_count(), m.queue().unsettled_count(), m.queue().held_on(self.me32))
                });
                let mut core = self.shared.broker();
                core.set_replica_counts(&replica.vhost, &replica.name, ready, unacked);
                let delivered = core.replica_unacked(replica.group_id);
                drop(core);
                let returns: Vec<ReplicaWork> = held
                    .into_iter()
                    .filter(|(owner, id)| owner.conn >= first_conn && !delivered.contains(id))
                    .map(|(owner, id)| ReplicaWork {
                        group: replica.group_id,
                        command: Command::Return { owner, ids: vec![id] },
                        confirm: None,
                    })
                    .collect();
                if !returns.is_empty() {
                    tracing::info!(
                        "quorum queue '{}': {} messages checked out here while this node was behind go back",
                        replica.name,
                        returns.len()
                    );
                    replica.pending.lock().extend(returns);
                    replica.wake.notify_one();
                }
            }
            if let Applied::Command { output, .. } = event {
                let mut returns = Vec::new();
                {
                    let now_ms = self.shared.now_ms();
                    // Dead-lettering is the leader's, as it applies (at most once).
                    let leads = replica.group.status().leader == Some(self.me);
                    let mut core = self.shared.broker();
                    let mut out: Vec<(ConnId, Out)> = Vec::new();
                    for o in &output {
                        for effect in &o.effects {
                            let (owner, tag, delivery) = match effect {
                                Effect::Deliver { owner, tag, delivery } => (owner, tag, delivery),
                                Effect::DeadLetter { msg, reason, delivery_count } => {
                                    if leads {
                                        core.replica_dead_letter(
                                            &replica.vhost,
                                            &replica.name,
                                            msg.clone(),
                                            reason.as_str(),
                                            *delivery_count,
                                            now_ms,
                                            &mut out,
                                        );
                                    }
                                    continue;
                                }
                            };
                            let earlier_run = owner.conn < self.first_conn.load(std::sync::atomic::Ordering::Relaxed);
                            if owner.node != self.me32 || earlier_run {
                                continue;
                            }
                            let delivered = core.replica_deliver(
                                &replica.vhost,
                                &replica.name,
                                replica.group_id,
                                *owner,
                                tag,
                                delivery,
                                now_ms,
                                &mut out,
                            );
                            if !delivered {
                                returns.push(ReplicaWork {
                                    group: replica.group_id,
                                    command: Command::Return { owner: *owner, ids: vec![delivery.id] },
                                    confirm: None,
                                });
                            }
                        }
                    }
                    let (ready, unacked) =
                        replica.group.with_machine(|m| (m.queue().ready_count(), m.queue().unsettled_count()));
                    core.set_replica_counts(&replica.vhost, &replica.name, ready, unacked);
                    // Dead-lettered messages routed to quorum queues make commands too.
                    self.shared.submit_replica_work(&mut core);
                    core.deliver(&mut out);
                }
                if !returns.is_empty() {
                    replica.pending.lock().extend(returns);
                    replica.wake.notify_one();
                }
                let mut replies = replica.replies.lock();
                replies.insert(index, output.into_iter().map(|o| (o.reply, o.got)).collect());
                while replies.len() > 4096 {
                    replies.pop_first();
                }
            }
            replica.handled.send_replace(index);
        }
    }
}

/// The host as the server's sink; weak, so that the server does not keep the host alive.
struct Sink(std::sync::Weak<QueueHost>);

impl ReplicaSink for Sink {
    fn submit(&self, work: Vec<ReplicaWork>) {
        if let Some(host) = self.0.upgrade() {
            host.submit(work);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_start_with_the_declaring_node_and_agree_everywhere() {
        let nodes = [11, 22, 33, 44, 55];
        let p = Placement { group: 9, origin: 33 };
        let three = members_of(&p, "/", "q", &nodes, 3);
        assert_eq!(three.len(), 3);
        assert!(three.contains(&33));
        assert_eq!(members_of(&p, "/", "q", &nodes, 3), three, "the same on every call");
        assert_eq!(members_of(&p, "/", "q", &nodes, 99).len(), 5);
        // Names spread queues over the nodes.
        let spread: std::collections::BTreeSet<Vec<u64>> =
            (0..20).map(|i| members_of(&p, "/", &format!("q{i}"), &nodes, 2)).collect();
        assert!(spread.len() > 1);
    }

    #[test]
    fn batches_read_back_and_damage_is_refused() {
        let msg = warren_core::message::Message::published(
            ShortStr::from("x"),
            ShortStr::from("k"),
            Default::default(),
            warren_amqp::BasicProperties::default().to_bytes(),
            bytes::Bytes::from_static(b"a body"),
        );
        let batch = Arc::new(vec![
            Stamped { now_ms: 5, command: Command::Purge },
            Stamped { now_ms: 6, command: Command::Enqueue { msg } },
            Stamped { now_ms: 7, command: Command::Tick },
        ]);
        let mut bytes = Vec::new();
        QueueMachine::encode_command(&batch, &mut bytes);
        assert!(bytes.len() <= QueueMachine::encoded_len_hint(&batch), "the hint covers the encoding");
        let back = QueueMachine::decode_command(&bytes).expect("decode");
        assert_eq!(format!("{back:?}"), format!("{batch:?}"));
        for cut in 0..bytes.len() {
            assert!(QueueMachine::decode_command(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        bytes.push(0);
        assert!(QueueMachine::decode_command(&bytes).is_err());
    }
}
