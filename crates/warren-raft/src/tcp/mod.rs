//! The node-to-node network over TCP: one endpoint per node ([`TcpNode`]) carrying the RPCs of
//! every group on the node, whatever machine each replicates.
//!
//! # Layout
//!
//! - this file: [`TcpNode`] (listening, the registry of groups, the connection per peer, dialing,
//!   shutdown), [`TcpConfig`] and its limits, [`TcpStats`].
//! - `handshake`: the opening exchange, mutual proof of the shared cookie.
//! - `frame`: the frames that follow it (requests, responses, pings) and reading them in limits.
//! - `conn`: one connection, its pending requests, its reader and writer tasks.
//! - `transport`: [`TcpTransport`], one group's [`Transport`](crate::Transport) through the
//!   endpoint, and the handler that decodes a peer's requests for a registered group.
//!
//! # Connections
//!
//! A node keeps at most one connection per peer, used both ways: each side sends requests on
//! it, framed with the group id chosen by the host and a request id of the sender's, and answers
//! the other's requests on it; answers are matched to requests by id, so any number may be in
//! flight. A request to a peer without a connection dials it (one dial at a time per peer; other
//! requests wait for it). If two nodes dial each other at once, both keep the connection dialed
//! by the lower node id and close the other; a connection from a peer's new incarnation (it
//! restarted) replaces the old one. A broken connection fails its pending requests as
//! unreachable and is redialled by the next request; a failed dial makes the peer unreachable
//! for a short backoff. Quiet connections carry pings, and one that receives nothing for
//! `dead_after_ms` is closed.
//!
//! # Liveness without groups
//!
//! A host that wants to know which of its cluster's nodes are up before (or without) any group
//! asks the endpoint to [`watch_peers`](TcpNode::watch_peers): a task per listed peer keeps a
//! connection to it, dialing it (and redialing after the backoff) whenever there is none, and
//! the connection's pings keep it alive. [`peer_status`](TcpNode::peer_status) and
//! [`watch_connected`](TcpNode::watch_connected) report which peers have a connection.
//!
//! Lock order: the registry of peers, the registry of groups, the task set and each connection's
//! pending map are separate locks, never held two at a time and never across an `.await`. The
//! set of connected peers (a watch channel) is updated while the registry of peers is held, so it
//! always matches the registry; it is a leaf: nothing else is locked while it is.

mod conn;
mod frame;
mod handshake;
#[cfg(test)]
mod tests;
mod transport;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;

use self::conn::{CloseReason, Conn, Response};
use self::handshake::{HandshakeError, Identity};
use self::transport::{GroupHandler, Handler};
use crate::{AppliedRx, Group, GroupConfig, Machine, Peer, RegisterError, RpcError, StartError};

pub use self::transport::{Forwarded, Service, ServiceAnswer, TcpTransport};

/// Default largest frame, in bytes, a node sends or accepts. A snapshot travels whole in one
/// frame, so this also bounds a group's snapshot; a peer that announces a larger frame is
/// disconnected.
pub const DEFAULT_MAX_FRAME_BYTES: u32 = 64 * 1024 * 1024;

/// Smallest frame limit accepted: room for a heartbeat and a membership with a few nodes.
pub const MIN_MAX_FRAME_BYTES: u32 = 4 * 1024;

/// Default time allowed to open a TCP connection to a peer, in milliseconds.
pub const DEFAULT_DIAL_TIMEOUT_MS: u64 = 1_000;

/// Default time allowed for the handshake, in milliseconds; a peer that takes longer (or a
/// stranger that connects and says nothing) is dropped.
pub const DEFAULT_HANDSHAKE_TIMEOUT_MS: u64 = 2_000;

/// Default time, in milliseconds, during which a peer that could not be dialed is reported
/// unreachable without dialing again: bounds the dials to a dead peer however many groups ask.
pub const DEFAULT_REDIAL_BACKOFF_MS: u64 = 100;

/// Default quiet time, in milliseconds, after which a connection carries a ping.
pub const DEFAULT_KEEPALIVE_MS: u64 = 1_000;

/// Default time, in milliseconds, after which a connection that received nothing (not even a
/// ping), or whose peer took no data, is closed as dead: a peer gone without closing its
/// sockets (power loss, a partition) is noticed within it.
pub const DEFAULT_DEAD_AFTER_MS: u64 = 5_000;

/// Default number of a peer's requests handled at once per connection; more are answered
/// "busy" (openraft retries), so a peer cannot make this node run unbounded tasks.
pub const DEFAULT_MAX_REQUESTS_IN_FLIGHT: usize = 1024;

/// Incoming connections in their handshake at once; more are dropped at once, so strangers
/// cannot tie up the endpoint.
const MAX_HANDSHAKES: usize = 64;

/// Backlog of the listening socket.
const LISTEN_BACKLOG: u32 = 1024;

/// Pause after a failed accept (out of file descriptors, say) before accepting again.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// A connection's read half, over TCP or TLS.
type ReadHalf = Box<dyn AsyncRead + Send + Unpin>;
/// A connection's write half, over TCP or TLS.
type WriteHalf = Box<dyn AsyncWrite + Send + Unpin>;

/// TLS between nodes: how this node accepts (asking the dialer for its certificate) and how it
/// dials (showing its own, checking the peer's against the name in the peer's address). The
/// cookie handshake runs inside it, as without.
#[derive(Clone)]
pub struct TcpTls {
    /// Accepts a dialing node's TLS (and asks for its certificate).
    pub acceptor: tokio_rustls::TlsAcceptor,
    /// Opens TLS to a node this one dials (with its own certificate).
    pub connector: tokio_rustls::TlsConnector,
}

/// Configuration of one node's endpoint.
///
/// Every node of a cluster must share the cookie, and should share the limits: a node refuses
/// frames above its own `max_frame_bytes`, whatever the sender's.
#[derive(Clone)]
pub struct TcpConfig {
    /// This node's id, the one its groups are members under.
    pub node_id: u64,
    /// The cluster's shared secret. Never sent: each side proves it knows it. Must not be empty.
    pub cookie: Vec<u8>,
    /// Largest frame sent or accepted, in bytes (see [`DEFAULT_MAX_FRAME_BYTES`]).
    pub max_frame_bytes: u32,
    /// Time allowed to open a connection, in milliseconds.
    pub dial_timeout_ms: u64,
    /// Time allowed for a handshake, in milliseconds.
    pub handshake_timeout_ms: u64,
    /// How long a peer that could not be dialed stays unreachable, in milliseconds.
    pub redial_backoff_ms: u64,
    /// Quiet time after which a connection carries a ping, in milliseconds.
    pub keepalive_ms: u64,
    /// Silence after which a connection is closed, in milliseconds; must exceed `keepalive_ms`.
    pub dead_after_ms: u64,
    /// A peer's requests handled at once per connection.
    pub max_requests_in_flight: usize,
    /// TLS on every connection to and from other nodes (`None`: plain TCP).
    pub tls: Option<TcpTls>,
}

impl TcpConfig {
    /// The defaults for node `node_id` with the cluster's `cookie`.
    pub fn new(node_id: u64, cookie: impl Into<Vec<u8>>) -> Self {
        TcpConfig {
            node_id,
            cookie: cookie.into(),
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            dial_timeout_ms: DEFAULT_DIAL_TIMEOUT_MS,
            handshake_timeout_ms: DEFAULT_HANDSHAKE_TIMEOUT_MS,
            redial_backoff_ms: DEFAULT_REDIAL_BACKOFF_MS,
            keepalive_ms: DEFAULT_KEEPALIVE_MS,
            dead_after_ms: DEFAULT_DEAD_AFTER_MS,
            max_requests_in_flight: DEFAULT_MAX_REQUESTS_IN_FLIGHT,
            tls: None,
        }
    }

    fn validate(&self) -> io::Result<()> {
        let problem = if self.cookie.is_empty() {
            Some("the cookie must not be empty".to_owned())
        } else if self.max_frame_bytes < MIN_MAX_FRAME_BYTES {
            Some(format!("max_frame_bytes must be at least {MIN_MAX_FRAME_BYTES}"))
        } else if self.dial_timeout_ms == 0 || self.handshake_timeout_ms == 0 || self.keepalive_ms == 0 {
            Some("timeouts must be positive".to_owned())
        } else if self.dead_after_ms <= self.keepalive_ms {
            Some("dead_after_ms must exceed keepalive_ms".to_owned())
        } else if self.max_requests_in_flight == 0 {
            Some("max_requests_in_flight must be at least 1".to_owned())
        } else {
            None
        };
        match problem {
            Some(problem) => Err(io::Error::new(io::ErrorKind::InvalidInput, problem)),
            None => Ok(()),
        }
    }
}

// Written out so that the cookie never reaches a log.
impl fmt::Debug for TcpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpConfig")
            .field("node_id", &self.node_id)
            .field("cookie", &"<redacted>")
            .field("max_frame_bytes", &self.max_frame_bytes)
            .field("dial_timeout_ms", &self.dial_timeout_ms)
            .field("handshake_timeout_ms", &self.handshake_timeout_ms)
            .field("redial_backoff_ms", &self.redial_backoff_ms)
            .field("keepalive_ms", &self.keepalive_ms)
            .field("dead_after_ms", &self.dead_after_ms)
            .field("max_requests_in_flight", &self.max_requests_in_flight)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

/// Counters of an endpoint since it started, for operators and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpStats {
    /// Connections this node dialed that completed the handshake.
    pub dialed: u64,
    /// Connections this node accepted that completed the handshake.
    pub accepted: u64,
    /// Dials that did not connect (refused, unreachable, timed out).
    pub dial_failures: u64,
    /// Handshakes in which the peer's proof was wrong: it does not share this node's cookie.
    pub auth_failures: u64,
    /// Other failed handshakes: the peer hung up or stalled, is not a Warren node, speaks another
    /// version, or is not the node expected at the address.
    pub handshake_failures: u64,
    /// Connections closed because the peer announced a frame above the limit.
    pub oversized_frames: u64,
    /// Connections that broke (closed by the peer, failed, went quiet, broke the protocol).
    pub lost: u64,
    /// Authenticated connections closed because their node is refused ([`TcpNode::refuse`]).
    pub refused: u64,
    /// Dials another node refused: this node was taken out of the cluster.
    pub refused_by_peers: u64,
}

/// What the endpoint knows of one peer.
enum Slot {
    /// An authenticated connection.
    Up(Arc<Conn>),
    /// A dial is under way; `done` ends when it does.
    Dialing { dial: u64, done: watch::Receiver<()> },
    /// The last dial failed; requests fail at once until `until`.
    Down { until: Instant, reason: String },
}

struct Peers {
    stopped: bool,
    slots: HashMap<u64, Slot>,
}

/// The endpoint's shared state, behind every [`TcpNode`] and [`TcpTransport`] handle and every
/// task of the endpoint.
struct Node {
    config: TcpConfig,
    me: Identity,
    local_addr: SocketAddr,
    groups: Mutex<HashMap<u64, Arc<dyn Handler>>>,
    peers: Mutex<Peers>,
    /// Every task of the endpoint, so that shutdown can end them all; `None` once stopped.
    tasks: Mutex<Option<JoinSet<()>>>,
    stats: watch::Sender<TcpStats>,
    next_id: AtomicU64,
    /// The peers with an open connection: the ids of the `Up` slots of `peers`, updated under
    /// that lock.
    connected: watch::Sender<BTreeSet<u64>>,
    /// The peers [`TcpNode::watch_peers`] keeps connected, and that call's generation: a
    /// watcher of an older generation ends.
    watched: watch::Sender<Watched>,
    /// Why the latest connection that failed to authenticate did.
    last_auth_failure: Mutex<Option<String>>,
    /// Nodes whose connections are closed as soon as they authenticate ([`TcpNode::refuse`]).
    refused: Mutex<BTreeSet<u64>>,
    /// This node holds no cluster state yet ([`TcpNode::set_fresh`]).
    fresh: std::sync::atomic::AtomicBool,
    /// `refused` is not empty (read on every frame, without the lock).
    any_refused: std::sync::atomic::AtomicBool,
    /// Why the latest dial another node refused was.
    last_refusal: Mutex<Option<String>>,
}

/// The peers kept connected, by id, with their addresses.
#[derive(Default)]
struct Watched {
    generation: u64,
    peers: BTreeMap<u64, String>,
}

/// One node's endpoint: listens for peers, holds a connection per peer, and carries the RPCs of
/// every group registered on it. Clones are handles on the same endpoint.
///
/// A host binds one per node, then for each group takes a [`transport`](Self::transport) to
/// start the group with and [`register`](Self::register)s the group to receive its peers'
/// requests (or does both with [`start_group`](Self::start_group)). The endpoint runs until
/// [`shutdown`](Self::shutdown); dropping the handles does not stop it.
#[derive(Clone)]
pub struct TcpNode {
    node: Arc<Node>,
}

impl fmt::Debug for TcpNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpNode").field("id", &self.node.me.node_id).field("addr", &self.node.local_addr).finish()
    }
}

impl TcpNode {
    /// Listens on `addr` (port 0 picks a free port: see [`local_addr`](Self::local_addr)) as
    /// the node `config` names. Must be called within a tokio runtime.
    ///
    /// The listening socket reuses the address, so a node restarted at once can bind the port
    /// its previous run used.
    pub async fn bind(addr: SocketAddr, config: TcpConfig) -> io::Result<TcpNode> {
        config.validate()?;
        let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        let listener = socket.listen(LISTEN_BACKLOG)?;
        let local_addr = listener.local_addr()?;
        let incarnation =
            getrandom::u64().map_err(|e| io::Error::other(format!("no random incarnation for the endpoint: {e}")))?;
        let node = Arc::new(Node {
            me: Identity { node_id: config.node_id, incarnation: incarnation & !handshake::FRESH_BIT, fresh: false },
            config,
            local_addr,
            groups: Mutex::new(HashMap::new()),
            peers: Mutex::new(Peers { stopped: false, slots: HashMap::new() }),
            tasks: Mutex::new(Some(JoinSet::new())),
            stats: watch::Sender::new(TcpStats::default()),
            next_id: AtomicU64::new(1),
            connected: watch::Sender::new(BTreeSet::new()),
            watched: watch::Sender::new(Watched::default()),
            last_auth_failure: Mutex::new(None),
            refused: Mutex::new(BTreeSet::new()),
            fresh: std::sync::atomic::AtomicBool::new(false),
            any_refused: std::sync::atomic::AtomicBool::new(false),
            last_refusal: Mutex::new(None),
        });
        node.spawn(accept_loop(Arc::clone(&node), listener));
        Ok(TcpNode { node })
    }

    /// This node's id.
    pub fn id(&self) -> u64 {
        self.node.me.node_id
    }

    /// The address the endpoint listens on: what peers are told to dial (the `addr` of
    /// [`Group::initialize`] and [`Group::add_learner`]).
    pub fn local_addr(&self) -> SocketAddr {
        self.node.local_addr
    }

    /// The transport through which the group `group` on this node reaches its peers. Every node
    /// must use the same group id for the same group.
    pub fn transport<M: Machine>(&self, group: u64) -> TcpTransport<M> {
        TcpTransport::new(Arc::clone(&self.node), group)
    }

    /// Hands the peers' requests for group `group` to `handle`, which must be this node's
    /// member of it.
    pub fn register<M: Machine>(&self, group: u64, handle: Group<M>) -> Result<(), RegisterError> {
        if handle.id() != self.id() {
            return Err(RegisterError::WrongNode { group, member: handle.id(), endpoint: self.id() });
        }
        if self.node.peers.lock().stopped {
            return Err(RegisterError::Stopped);
        }
        let mut groups = self.node.groups.lock();
        if groups.contains_key(&group) {
            return Err(RegisterError::Taken { group });
        }
        groups.insert(group, Arc::new(GroupHandler::new(handle)));
        Ok(())
    }

    /// Serves `service` to the peers under `id` (in the same space as the groups' ids: choose
    /// one no group uses, the same on every node).
    pub fn serve(&self, id: u64, service: Arc<dyn Service>) -> Result<(), RegisterError> {
        if self.node.peers.lock().stopped {
            return Err(RegisterError::Stopped);
        }
        let mut groups = self.node.groups.lock();
        if groups.contains_key(&id) {
            return Err(RegisterError::Taken { group: id });
        }
        groups.insert(id, Arc::new(transport::ServiceHandler(service)));
        Ok(())
    }

    /// Calls the service `peer` serves under `service` with `body`; its answer's body, within
    /// `timeout`. A peer that cannot be reached or serves no such service is
    /// [`RpcError::Unreachable`]; a call the service refused is [`RpcError::Network`] with its
    /// reason; no answer in time is [`RpcError::Timeout`] (the call may have been made).
    pub async fn call(&self, peer: &Peer, service: u64, body: &[u8], timeout: Duration) -> Result<Vec<u8>, RpcError> {
        let request = frame::request(service, frame::Kind::Call, |out| out.extend_from_slice(body));
        let response = self.node.call(peer, request, timeout).await?;
        let answer = frame::response_body(&response.frame);
        match response.status {
            frame::status::OK => Ok(answer.to_vec()),
            frame::status::NO_GROUP | frame::status::STOPPED => {
                Err(RpcError::Unreachable { reason: format!("node {}: {}", peer.id, String::from_utf8_lossy(answer)) })
            }
            other => Err(RpcError::Network {
                reason: format!(
                    "node {} refused a call to service {service} (status {other}): {}",
                    peer.id,
                    String::from_utf8_lossy(answer)
                ),
            }),
        }
    }

    /// Stops handing requests to group `group` (they are answered "no such group", which peers
    /// take as unreachable); returns whether it was registered.
    pub fn unregister(&self, group: u64) -> bool {
        self.node.groups.lock().remove(&group).is_some()
    }

    /// Starts this node's member of group `group` on this endpoint and registers it: the group
    /// starts with an in-memory log, `machine` as its state, and node id [`id`](Self::id).
    pub async fn start_group<M: Machine>(
        &self,
        group: u64,
        config: &GroupConfig,
        machine: M,
    ) -> Result<(Group<M>, AppliedRx<M::Output>), StartError> {
        let (handle, applied) = Group::start(self.id(), config, machine, self.transport::<M>(group)).await?;
        if let Err(e) = self.register(group, handle.clone()) {
            // The group never served a request; how its shutdown went changes nothing.
            let _ = handle.shutdown().await;
            return Err(StartError::Config { reason: e.to_string() });
        }
        Ok((handle, applied))
    }

    /// The peers this node holds an open connection to, ascending.
    pub fn peers(&self) -> Vec<u64> {
        let peers = self.node.peers.lock();
        let mut ids: Vec<u64> = peers
            .slots
            .iter()
            .filter(|(_, slot)| matches!(slot, Slot::Up(conn) if !conn.is_closed()))
            .map(|(id, _)| *id)
            .collect();
        ids.sort_unstable();
        ids
    }

    /// The endpoint's counters now.
    pub fn stats(&self) -> TcpStats {
        *self.node.stats.borrow()
    }

    /// A receiver that sees every change of the counters, to wait for one.
    pub fn watch_stats(&self) -> watch::Receiver<TcpStats> {
        self.node.stats.subscribe()
    }

    /// Keeps a connection to each of `peers` (node id to address, `host:port`; a host name is
    /// looked up at each dial), without any group: a peer without a connection is dialed, and
    /// dialed again after [`redial_backoff_ms`](TcpConfig::redial_backoff_ms) while it cannot
    /// be reached; an open connection is kept alive by its pings, and a lost one is redialed.
    /// This node's own id, if listed, is left out.
    ///
    /// Each call replaces the list of the previous one. Connections already open stay open
    /// whatever the list (a peer may still dial this node, and groups may still need it).
    pub fn watch_peers(&self, peers: BTreeMap<u64, String>) {
        let me = self.id();
        let peers: BTreeMap<u64, String> = peers.into_iter().filter(|(id, _)| *id != me).collect();
        let mut generation = 0;
        self.node.watched.send_modify(|watched| {
            watched.generation += 1;
            watched.peers = peers.clone();
            generation = watched.generation;
        });
        for (id, addr) in peers {
            self.node.spawn(keep_connected(Arc::clone(&self.node), Peer { id, addr }, generation));
        }
    }

    /// The peers listed by [`watch_peers`](Self::watch_peers), ascending, each with whether
    /// this node holds an open connection to it now.
    pub fn peer_status(&self) -> Vec<(u64, bool)> {
        let watched: Vec<u64> = self.node.watched.borrow().peers.keys().copied().collect();
        let connected = self.node.connected.borrow().clone();
        watched.into_iter().map(|id| (id, connected.contains(&id))).collect()
    }

    /// From now on, closes every connection with the nodes `ids` (nodes taken out of the
    /// cluster) once it authenticates, either way, and closes those open now: such a node,
    /// started again, finds every node unreachable. Replaces the set given before.
    pub fn refuse(&self, ids: BTreeSet<u64>) {
        self.node.any_refused.store(!ids.is_empty(), Ordering::Relaxed);
        *self.node.refused.lock() = ids.clone();
        let open: Vec<Arc<Conn>> = {
            let peers = self.node.peers.lock();
            ids.iter()
                .filter_map(|id| match peers.slots.get(id) {
                    Some(Slot::Up(conn)) => Some(Arc::clone(conn)),
                    _ => None,
                })
                .collect()
        };
        for conn in open {
            self.node.lost(&conn, CloseReason::Broken("the node was taken out of the cluster".to_owned()));
        }
    }

    /// Says, in the handshakes from now on, whether this node holds no cluster state yet (a
    /// first start, or a node reset): a node taken out of the cluster that says so is let in
    /// (to join again), one that does not is refused.
    pub fn set_fresh(&self, fresh: bool) {
        self.node.fresh.store(fresh, Ordering::Relaxed);
    }

    /// Why the latest dial another node refused was refused, if one was: this node was taken
    /// out of the cluster.
    pub fn last_refusal(&self) -> Option<String> {
        self.node.last_refusal.lock().clone()
    }

    /// Why the latest connection that failed to authenticate (either way) did, if one did.
    pub fn last_auth_failure(&self) -> Option<String> {
        self.node.last_auth_failure.lock().clone()
    }

    /// A receiver of the set of peers this node holds an open connection to (whether watched,
    /// dialed for a group or dialing this node), to wait for a change.
    pub fn watch_connected(&self) -> watch::Receiver<BTreeSet<u64>> {
        self.node.connected.subscribe()
    }

    /// Stops the endpoint: it stops listening, closes every connection (failing the requests in
    /// flight on them), forgets its groups and ends its tasks; later requests through its
    /// transports fail as unreachable. Returns once the sockets are closed, so the address can
    /// be bound again. The groups themselves keep running: shutting them down is the host's.
    pub async fn shutdown(&self) {
        let conns: Vec<Arc<Conn>> = {
            let mut peers = self.node.peers.lock();
            peers.stopped = true;
            let conns = peers
                .slots
                .drain()
                .filter_map(|(_, slot)| match slot {
                    Slot::Up(conn) => Some(conn),
                    Slot::Dialing { .. } | Slot::Down { .. } => None,
                })
                .collect();
            self.node.publish_connected(&peers);
            conns
        };
        for conn in conns {
            conn.close(&CloseReason::Stopped);
        }
        self.node.groups.lock().clear();
        let tasks = self.node.tasks.lock().take();
        if let Some(mut tasks) = tasks {
            tasks.abort_all();
            while tasks.join_next().await.is_some() {}
        }
    }
}

impl Node {
    /// Runs `task` as one of the endpoint's; `false` (and `task` dropped) once stopped.
    fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) -> bool {
        let mut tasks = self.tasks.lock();
        match tasks.as_mut() {
            None => false,
            Some(set) => {
                // Reap finished tasks so the set holds only live ones.
                while set.try_join_next().is_some() {}
                set.spawn(task);
                true
            }
        }
    }

    /// Counts an authentication failure, keeping why.
    fn auth_failed(&self, reason: &str) {
        *self.last_auth_failure.lock() = Some(reason.to_owned());
        self.count(|s| s.auth_failures += 1);
    }

    fn count(&self, update: impl FnOnce(&mut TcpStats)) {
        self.stats.send_modify(update);
    }

    /// Whether connections with `peer` are refused ([`TcpNode::refuse`]), given what it said
    /// of itself at the handshake.
    fn is_refused(&self, peer: &Identity) -> bool {
        self.any_refused.load(Ordering::Relaxed) && !peer.fresh && self.refused.lock().contains(&peer.node_id)
    }

    /// Makes the set of connected peers that of `peers`' `Up` slots; called with the registry of
    /// peers locked after each change of a slot to or from `Up`.
    fn publish_connected(&self, peers: &Peers) {
        let up: BTreeSet<u64> =
            peers.slots.iter().filter(|(_, slot)| matches!(slot, Slot::Up(_))).map(|(id, _)| *id).collect();
        self.connected.send_if_modified(|connected| {
            let changed = *connected != up;
            *connected = up;
            changed
        });
    }

    /// Keeps a connection to `peer` until the endpoint stops: waits while one is open, dials
    /// when there is none, and waits out the backoff after a failed dial.
    async fn keep_dialing(self: &Arc<Self>, peer: &Peer) {
        let backoff = Duration::from_millis(self.config.redial_backoff_ms.max(1));
        let patience = Duration::from_millis(self.config.dial_timeout_ms + self.config.handshake_timeout_ms);
        loop {
            match self.connection(peer, Instant::now() + patience, patience).await {
                Ok(conn) => conn.wait_closed().await,
                Err(_) if self.peers.lock().stopped => return,
                // Unreachable (the backoff of a failed dial is running) or the dial overran.
                Err(_) => tokio::time::sleep(backoff).await,
            }
        }
    }

    /// This node's identity in a handshake now.
    fn identity(&self) -> Identity {
        Identity { fresh: self.fresh.load(Ordering::Relaxed), ..self.me }
    }

    fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    fn handler(&self, group: u64) -> Option<Arc<dyn Handler>> {
        self.groups.lock().get(&group).cloned()
    }

    /// Sends request `frame` to `target` and waits for its answer, within `timeout`.
    async fn call(self: &Arc<Self>, target: &Peer, frame: Vec<u8>, timeout: Duration) -> Result<Response, RpcError> {
        let deadline = Instant::now() + timeout;
        let len = frame::outgoing_len(&frame);
        if len > self.config.max_frame_bytes as usize {
            return Err(RpcError::Network {
                reason: format!("a request of {len} bytes exceeds the frame limit of {}", self.config.max_frame_bytes),
            });
        }
        let conn = self.connection(target, deadline, timeout).await?;
        conn.call(frame, deadline, timeout).await
    }

    /// The open connection to `target`, dialing it if there is none.
    async fn connection(
        self: &Arc<Self>,
        target: &Peer,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<Arc<Conn>, RpcError> {
        loop {
            let mut dial = None;
            let mut done = {
                if self.refused.lock().contains(&target.id) {
                    // Not dialed at all: its end would see a connection come and go.
                    return Err(RpcError::Unreachable {
                        reason: format!("node {} was taken out of the cluster", target.id),
                    });
                }
                let mut peers = self.peers.lock();
                if peers.stopped {
                    return Err(RpcError::Unreachable { reason: "this node's endpoint stopped".to_owned() });
                }
                match peers.slots.get(&target.id) {
                    Some(Slot::Up(conn)) if !conn.is_closed() => return Ok(Arc::clone(conn)),
                    // A dial whose task is gone (its sender dropped without a verdict) is over.
                    Some(Slot::Dialing { done, .. }) if done.has_changed().is_ok() => done.clone(),
                    Some(Slot::Down { until, reason }) if Instant::now() < *until => {
                        return Err(RpcError::Unreachable { reason: reason.clone() });
                    }
                    _ => {
                        let id = self.next_id();
                        let (sender, done) = watch::channel(());
                        peers.slots.insert(target.id, Slot::Dialing { dial: id, done: done.clone() });
                        // The slot may have held a connection closed a moment ago.
                        self.publish_connected(&peers);
                        dial = Some((id, sender));
                        done
                    }
                }
            };
            if let Some((id, sender)) = dial {
                // If the endpoint stopped meanwhile, the task is dropped with its sender, which
                // wakes us to find the endpoint stopped.
                self.spawn(Arc::clone(self).dial(target.clone(), id, sender));
            }
            // Wakes when the dial ends, whichever way; then the slot says how.
            if tokio::time::timeout_at(deadline, done.changed()).await.is_err() {
                return Err(RpcError::Timeout { after: timeout });
            }
        }
    }

    /// Dials `peer` as dial `id`; `done` is dropped when it is over.
    async fn dial(self: Arc<Self>, peer: Peer, id: u64, done: watch::Sender<()>) {
        if let Err(reason) = self.try_dial(&peer).await {
            let until = Instant::now() + Duration::from_millis(self.config.redial_backoff_ms);
            let mut peers = self.peers.lock();
            // Only if no connection arrived from the peer meanwhile.
            if matches!(peers.slots.get(&peer.id), Some(Slot::Dialing { dial, .. }) if *dial == id) {
                peers.slots.insert(peer.id, Slot::Down { until, reason });
            }
        }
        drop(done);
    }

    async fn try_dial(self: &Arc<Self>, peer: &Peer) -> Result<(), String> {
        let dial_timeout = Duration::from_millis(self.config.dial_timeout_ms);
        let mut stream = match tokio::time::timeout(dial_timeout, TcpStream::connect(peer.addr.as_str())).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                self.count(|s| s.dial_failures += 1);
                return Err(format!("cannot connect to node {} at {}: {e}", peer.id, peer.addr));
            }
            Err(_) => {
                self.count(|s| s.dial_failures += 1);
                return Err(format!("connecting to node {} at {} took over {dial_timeout:?}", peer.id, peer.addr));
            }
        };
        // Raft's messages are small and latency-bound; without this, Nagle holds them back.
        let _ = stream.set_nodelay(true);
        let handshake_timeout = Duration::from_millis(self.config.handshake_timeout_ms);
        let handshake = async {
            match &self.config.tls {
                None => {
                    let identity = handshake::dial(&mut stream, self.identity(), &self.config.cookie, peer.id).await?;
                    let (reader, writer) = stream.into_split();
                    Ok::<_, HandshakeError>((identity, Box::new(reader) as ReadHalf, Box::new(writer) as WriteHalf))
                }
                Some(tls) => {
                    let host = peer.addr.rsplit_once(':').map_or(peer.addr.as_str(), |(host, _)| host);
                    let host = host.trim_start_matches('[').trim_end_matches(']');
                    let name = tokio_rustls::rustls::pki_types::ServerName::try_from(host.to_owned())
                        .map_err(|e| HandshakeError::Failed(format!("TLS: '{host}' is not a server name: {e}")))?;
                    let mut stream = tls.connector.connect(name, stream).await.map_err(|e| {
                        HandshakeError::Auth(format!("TLS with node {} at {}: {e}", peer.id, peer.addr))
                    })?;
                    let identity = handshake::dial(&mut stream, self.identity(), &self.config.cookie, peer.id).await?;
                    let (reader, writer) = tokio::io::split(stream);
                    Ok((identity, Box::new(reader) as ReadHalf, Box::new(writer) as WriteHalf))
                }
            }
        };
        match tokio::time::timeout(handshake_timeout, handshake).await {
            Ok(Ok((identity, _, _))) if !identity.fresh && self.refused.lock().contains(&identity.node_id) => {
                self.count(|s| s.refused += 1);
                Err(format!("node {} was taken out of the cluster", peer.id))
            }
            Ok(Ok((identity, reader, writer))) => {
                self.count(|s| s.dialed += 1);
                self.start(reader, writer, identity, self.me.node_id);
                Ok(())
            }
            Ok(Err(HandshakeError::Auth(reason))) => {
                self.auth_failed(&reason);
                Err(reason)
            }
            Ok(Err(HandshakeError::Refused(reason))) => {
                self.count(|s| s.refused_by_peers += 1);
                *self.last_refusal.lock() = Some(reason.clone());
                Err(reason)
            }
            Ok(Err(HandshakeError::Failed(reason))) => {
                self.count(|s| s.handshake_failures += 1);
                Err(format!("node {} at {}: {reason}", peer.id, peer.addr))
            }
            Err(_) => {
                self.count(|s| s.handshake_failures += 1);
                Err(format!("the handshake with node {} at {} took over {handshake_timeout:?}", peer.id, peer.addr))
            }
        }
    }

    /// Runs the acceptor's handshake on an incoming connection and starts it if it passes.
    async fn accept(self: Arc<Self>, mut stream: TcpStream) {
        let _ = stream.set_nodelay(true);
        let handshake_timeout = Duration::from_millis(self.config.handshake_timeout_ms);
        let handshake = async {
            match &self.config.tls {
                None => {
                    let identity =
                        handshake::accept_unless(&mut stream, self.identity(), &self.config.cookie, |id, fresh| {
                            !fresh && self.refused.lock().contains(&id)
                        })
                        .await?;
                    let (reader, writer) = stream.into_split();
                    Ok::<_, HandshakeError>((identity, Box::new(reader) as ReadHalf, Box::new(writer) as WriteHalf))
                }
                Some(tls) => {
                    let mut stream =
                        tls.acceptor.accept(stream).await.map_err(|e| HandshakeError::Auth(format!("TLS: {e}")))?;
                    let identity =
                        handshake::accept_unless(&mut stream, self.identity(), &self.config.cookie, |id, fresh| {
                            !fresh && self.refused.lock().contains(&id)
                        })
                        .await?;
                    let (reader, writer) = tokio::io::split(stream);
                    Ok((identity, Box::new(reader) as ReadHalf, Box::new(writer) as WriteHalf))
                }
            }
        };
        match tokio::time::timeout(handshake_timeout, handshake).await {
            Ok(Ok((identity, reader, writer))) => {
                self.count(|s| s.accepted += 1);
                self.start(reader, writer, identity, identity.node_id);
            }
            // The stream is dropped, which closes it; the counters are the only report.
            Ok(Err(HandshakeError::Auth(reason))) => self.auth_failed(&reason),
            Ok(Err(HandshakeError::Refused(_))) => self.count(|s| s.refused += 1),
            Ok(Err(HandshakeError::Failed(_))) | Err(_) => self.count(|s| s.handshake_failures += 1),
        }
    }

    /// Makes an authenticated stream a connection to `peer`, if the registry keeps it.
    fn start(self: &Arc<Self>, reader: ReadHalf, writer: WriteHalf, peer: Identity, dialed_by: u64) {
        let (conn, outbox) = Conn::new(self.next_id(), peer, dialed_by);
        if !self.install(&conn) {
            // Dropping the halves closes the socket; the peer keeps the other connection too.
            return;
        }
        let started = self.spawn(conn::read_loop(Arc::clone(self), Arc::clone(&conn), reader))
            && self.spawn(conn::write_loop(Arc::clone(self), Arc::clone(&conn), outbox, writer));
        if !started {
            self.lost(&conn, CloseReason::Stopped);
        }
    }

    /// Puts `conn` in its peer's slot unless a preferred open connection is there; returns
    /// whether it did. Both ends of two crossing connections decide alike, so they keep the same.
    fn install(&self, conn: &Arc<Conn>) -> bool {
        if !conn.peer.fresh && self.refused.lock().contains(&conn.peer.node_id) {
            self.count(|s| s.refused += 1);
            return false;
        }
        let displaced = {
            let mut peers = self.peers.lock();
            if peers.stopped {
                return false;
            }
            let displaced = match peers.slots.get(&conn.peer.node_id) {
                Some(Slot::Up(old)) if !old.is_closed() => {
                    let replace = old.peer.incarnation != conn.peer.incarnation || conn.dialed_by <= old.dialed_by;
                    if !replace {
                        return false;
                    }
                    Some(Arc::clone(old))
                }
                _ => None,
            };
            peers.slots.insert(conn.peer.node_id, Slot::Up(Arc::clone(conn)));
            self.publish_connected(&peers);
            displaced
        };
        if let Some(old) = displaced {
            old.close(&CloseReason::Replaced);
        }
        true
    }

    /// Closes `conn` for `reason` and forgets it, unless another has taken its slot.
    fn lost(&self, conn: &Conn, reason: CloseReason) {
        conn.close(&reason);
        {
            let mut peers = self.peers.lock();
            if matches!(peers.slots.get(&conn.peer.node_id), Some(Slot::Up(c)) if c.id == conn.id) {
                peers.slots.remove(&conn.peer.node_id);
                self.publish_connected(&peers);
            }
        }
        if matches!(reason, CloseReason::Broken(_)) {
            self.count(|s| s.lost += 1);
        }
    }
}

/// The task that [`TcpNode::watch_peers`] runs for `peer`: keeps it connected until a later
/// call replaces the list of `generation`, or the endpoint stops.
async fn keep_connected(node: Arc<Node>, peer: Peer, generation: u64) {
    let mut watched = node.watched.subscribe();
    tokio::select! {
        // An error means the endpoint is gone, which ends the watch as well.
        _ = watched.wait_for(|w| w.generation != generation) => {}
        () = node.keep_dialing(&peer) => {}
    }
}

/// Accepts connections until the endpoint stops, each handshake in a task of its own.
async fn accept_loop(node: Arc<Node>, listener: TcpListener) {
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _addr)) => stream,
            Err(_) => {
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&handshakes).try_acquire_owned() else {
            node.count(|s| s.handshake_failures += 1);
            continue;
        };
        let accepting = Arc::clone(&node);
        node.spawn(async move {
            accepting.accept(stream).await;
            drop(permit);
        });
    }
}
