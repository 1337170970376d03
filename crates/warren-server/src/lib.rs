//! The network side of Warren: the only crate that does I/O.
//!
//! # Layout
//! - [`Server`]: the shared state (the broker behind one lock, and the registry of connection
//!   outboxes) and the accept loop.
//! - `handshake`: protocol header, connection.start / tune / open, as one straight-line async
//!   function that runs before a connection is registered.
//! - `connection`: the per-connection loop: read a buffer, parse every frame in it, hand the
//!   batch to the broker under one lock, then write every pending frame in one write.
//!
//! # Lock
//! One reader-writer lock, [`Core`]: the broker and the outboxes, never held across an
//! `.await`. A connection takes it once per batch of frames read, and hands every frame the
//! broker produced to the outboxes (its own included) before releasing it, so frames reach each
//! connection in the order the broker made them. Whole publishes are handled with the lock
//! shared (`Broker::publish_shared`: each publisher holds its own session's lock and one
//! queue's at a time), everything else with it held exclusively.

pub mod alarms;
pub mod cluster;
mod connection;
mod handshake;
mod outbuf;
pub mod tls;

use foldhash::{HashMap, HashMapExt};
use parking_lot::{Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch, Notify};
use warren_core::{Broker, ConnId, Out};

/// How long we wait for connection.close-ok after sending connection.close.
pub const CLOSE_OK_TIMEOUT: Duration = Duration::from_secs(3);
/// Initial size of a connection's read buffer; one read takes in up to this much.
pub const READ_BUFFER_BYTES: usize = 64 * 1024;
/// How often writes that nobody waits for (acks, messages published without confirms) are
/// synced anyway; it bounds what a crash can lose of them. Confirms never wait for this: they
/// start a sync at once.
pub const SYNC_INTERVAL: Duration = Duration::from_millis(200);

/// Where a connection's output goes: its task's channel, and the deliveries staged for it while
/// the broker is shared ([`Stager`]).
struct Outbox {
    tx: OutTx,
    /// Deliveries staged by publishers' threads, in the order their channels gave them tags,
    /// encoded as they are staged; handed to `tx` (under this lock, so in that order) before
    /// the stager lets go of the broker.
    staged: Mutex<Staged>,
    /// The connection's negotiated frame size, for encoding what is staged.
    frame_max: u32,
}

/// Where an outbox's output goes: a client connection's task, or, for a connection with no
/// socket (another node's clients, see [`Core::open_virtual`]), whoever carries its output
/// as it is, tagged with the connection.
enum OutTx {
    Socket(mpsc::UnboundedSender<Outgoing>),
    Virtual(mpsc::UnboundedSender<(ConnId, Vec<Out>)>),
}

/// Output of connections with no socket, tagged with the connection
/// ([`Core::open_virtual`]).
pub type VirtualOutput = mpsc::UnboundedReceiver<(ConnId, Vec<Out>)>;

/// What a connection's task receives, in the order it is to be written: output to encode, or
/// deliveries another thread encoded as it made them, with their bytes as counted by the
/// connection's `Outbound`.
pub(crate) enum Outgoing {
    Outs(Vec<Out>),
    Encoded(outbuf::OutBuf, usize),
}

/// The most room a connection's staged buffer keeps ready for the next batch.
const STAGED_ROOM_MAX: usize = 64 * 1024;

/// Deliveries staged for a connection: encoded by the thread that made them, while their
/// message is still in its cache, so neither the message nor the buffer it was read into is
/// touched by the receiving connection's thread.
#[derive(Default)]
struct Staged {
    buf: outbuf::OutBuf,
    /// Bytes of the deliveries in `buf`, as `Message::wire_size` counts them.
    delivered: usize,
}

/// A byte stream a client connection runs on (plain TCP, or TLS over TCP).
pub(crate) trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

/// A connection's stream, split into halves the connection task reads and writes at once.
pub(crate) trait Transport: Io + 'static {
    type Read: tokio::io::AsyncRead + Unpin + Send;
    type Write: tokio::io::AsyncWrite + Unpin + Send;
    /// True for TLS streams.
    const TLS: bool;
    fn split_halves(self) -> (Self::Read, Self::Write);
}

impl Transport for tokio::net::TcpStream {
    type Read = tokio::net::tcp::OwnedReadHalf;
    type Write = tokio::net::tcp::OwnedWriteHalf;
    const TLS: bool = false;
    fn split_halves(self) -> (Self::Read, Self::Write) {
        self.into_split()
    }
}

impl Transport for tokio_rustls::server::TlsStream<tokio::net::TcpStream> {
    type Read = tokio::io::ReadHalf<Self>;
    type Write = tokio::io::WriteHalf<Self>;
    const TLS: bool = true;
    fn split_halves(self) -> (Self::Read, Self::Write) {
        tokio::io::split(self)
    }
}

/// Everything behind the one lock: the broker, and where each connection's output goes.
///
/// Output is handed to the outboxes while the lock is held ([`Core::deliver`]), including a
/// connection's answers to itself, so every connection receives its frames in the order the
/// broker produced them (delivery tags and confirms must never overtake each other).
pub struct Core {
    pub broker: Broker,
    outboxes: HashMap<ConnId, Outbox>,
    /// Bumped when flow-blocked publishers may read again (see `Broker::take_flow_blocked`).
    flow: watch::Sender<u64>,
}

impl std::ops::Deref for Core {
    type Target = Broker;
    fn deref(&self) -> &Broker {
        &self.broker
    }
}

impl std::ops::DerefMut for Core {
    fn deref_mut(&mut self) -> &mut Broker {
        &mut self.broker
    }
}

/// Hands deliveries made while the broker is shared to their connections' outboxes
/// (`warren_core::Stage`), and then to their tasks, before the broker is let go.
pub(crate) struct Stager<'a> {
    core: &'a Core,
    /// Connections this stager found nothing staged for: it hands theirs on.
    touched: std::cell::RefCell<Vec<ConnId>>,
}

impl<'a> Stager<'a> {
    pub(crate) fn new(core: &'a Core) -> Self {
        Stager { core, touched: std::cell::RefCell::new(Vec::new()) }
    }

    /// Hands what was staged to the connections' tasks. Another stager may hand over what this
    /// one staged, or the other way round; either way each outbox's order is kept.
    pub(crate) fn flush(&self) {
        for conn in self.touched.borrow_mut().drain(..) {
            let Some(o) = self.core.outboxes.get(&conn) else { continue };
            let OutTx::Socket(tx) = &o.tx else { continue };
            let mut staged = o.staged.lock();
            if !staged.buf.is_empty() {
                // The next batch is likely as large: room for it saves growing from nothing
                // (up to a bound, so that a burst leaves no large buffer behind on a connection
                // that then goes quiet).
                let room = staged.buf.len().min(STAGED_ROOM_MAX);
                let next = Staged { buf: outbuf::OutBuf::with_capacity(room), delivered: 0 };
                let Staged { buf, delivered } = std::mem::replace(&mut *staged, next);
                let _ = tx.send(Outgoing::Encoded(buf, delivered));
            }
        }
    }
}

impl warren_core::Stage for Stager<'_> {
    fn stage(&self, conn: ConnId, out: Out) {
        let Some(o) = self.core.outboxes.get(&conn) else { return };
        let mut staged = o.staged.lock();
        if let OutTx::Virtual(tx) = &o.tx {
            // Under the staged lock, so in the order the channels gave the deliveries tags.
            let _ = tx.send((conn, vec![out]));
            return;
        }
        if staged.buf.is_empty() {
            self.touched.borrow_mut().push(conn);
        }
        let staged = &mut *staged;
        staged.delivered += encode(&mut staged.buf, std::slice::from_ref(&out), o.frame_max);
    }
}

impl Core {
    /// Hands the broker's output to the connections it is for, in order.
    pub fn deliver(&mut self, out: &mut Vec<(ConnId, Out)>) {
        if self.broker.take_flow_released() {
            self.flow.send_modify(|v| *v = v.wrapping_add(1));
        }
        self.send_all(out);
    }

    /// Hands output to the connections it is for, in order (the broker held or shared).
    fn send_all(&self, out: &mut Vec<(ConnId, Out)>) {
        if out.is_empty() {
            return;
        }
        // Most batches are for one or two connections: group runs rather than hash.
        let mut batch: Vec<Out> = Vec::new();
        let mut current: Option<ConnId> = None;
        for (conn, o) in out.drain(..) {
            if current != Some(conn) {
                if let Some(c) = current {
                    self.send(c, std::mem::take(&mut batch));
                }
                current = Some(conn);
            }
            batch.push(o);
        }
        if let Some(c) = current {
            self.send(c, batch);
        }
    }

    fn send(&self, conn: ConnId, outs: Vec<Out>) {
        // A connection that is going away has dropped its receiver; the broker requeues
        // whatever it had unacked when it learns of the close.
        match self.outboxes.get(&conn).map(|o| &o.tx) {
            Some(OutTx::Socket(tx)) => {
                let _ = tx.send(Outgoing::Outs(outs));
            }
            Some(OutTx::Virtual(tx)) => {
                let _ = tx.send((conn, outs));
            }
            None => {}
        }
    }

    /// Ends work done with the broker shared: logs what it reported, keeps its tally for the
    /// broker, hands the staged deliveries and then `out` to the connections, and wakes
    /// flow-blocked publishers when a consumer caught up. True when a sync round is wanted.
    pub(crate) fn finish_shared(
        &self,
        mut tally: warren_core::Tally,
        stager: &Stager,
        out: &mut Vec<(ConnId, Out)>,
    ) -> bool {
        let (errors, warnings, notices) = tally.take_log();
        errors.iter().for_each(|e| tracing::error!("{e}"));
        warnings.iter().for_each(|w| tracing::warn!("{w}"));
        notices.iter().for_each(|n| tracing::info!("{n}"));
        let sync_wanted = tally.sync_wanted();
        self.broker.finish_shared(tally);
        stager.flush();
        if self.broker.take_flow_released() {
            self.flow.send_modify(|v| *v = v.wrapping_add(1));
        }
        self.send_all(out);
        sync_wanted
    }

    fn register(&mut self, conn: ConnId, tx: mpsc::UnboundedSender<Outgoing>, frame_max: u32) {
        self.outboxes.insert(conn, Outbox { tx: OutTx::Socket(tx), staged: Mutex::new(Staged::default()), frame_max });
    }

    /// Where a connection learns that flow-blocked publishers may go on.
    fn flow_watch(&self) -> watch::Receiver<u64> {
        self.flow.subscribe()
    }

    fn unregister(&mut self, conn: ConnId) {
        self.outboxes.remove(&conn);
    }

    /// Opens a connection with no socket in `vhost` for another node's clients (`peer` names
    /// them): its output goes to `tx`, tagged with its id, as the broker makes it.
    pub fn open_virtual(
        &mut self,
        conn: ConnId,
        vhost: &str,
        peer: String,
        tx: mpsc::UnboundedSender<(ConnId, Vec<Out>)>,
    ) -> Result<(), warren_amqp::ProtocolError> {
        self.broker.open_virtual_connection(conn, vhost, peer)?;
        self.outboxes
            .insert(conn, Outbox { tx: OutTx::Virtual(tx), staged: Mutex::new(Staged::default()), frame_max: 0 });
        Ok(())
    }

    /// Closes a connection [`Core::open_virtual`] opened, as a client's connection closing:
    /// its consumers go and what it held unacked is requeued.
    pub fn close_virtual(&mut self, conn: ConnId, now_ms: u64) {
        let mut out = Vec::new();
        self.broker.connection_closed(conn, now_ms, &mut out);
        self.outboxes.remove(&conn);
        self.deliver(&mut out);
    }

    /// Logs storage failures the broker reported.
    fn log_errors(&mut self) {
        for e in self.broker.take_errors() {
            tracing::error!("{e}");
        }
        let (warnings, notices) = self.broker.take_warnings();
        for w in warnings {
            tracing::warn!("{w}");
        }
        for n in notices {
            tracing::info!("{n}");
        }
    }
}

/// State shared by every connection task.
pub struct Shared {
    core: RwLock<Core>,
    next_conn: AtomicU64,
    started: Instant,
    shutdown: watch::Receiver<bool>,
    /// Wakes the sync task when answers wait for the disk.
    sync_wanted: Notify,
    /// The turn to go on with a backlog: a connection that used up a work slice with frames
    /// still to hand over waits here, in line (the semaphore is FIFO), not in the runtime's run
    /// queue. Heavy publishers then take turns (as many at once as the data plane's
    /// parallelism less one, `Config::data_plane_parallelism`, and at least one) while a
    /// handshake, a light client or an HTTP request is scheduled at once and waits for the lock
    /// one turn at most. One worker is left to them: with a turn for every core, the publishers
    /// woken one after another kept every worker, and new connections waited seconds
    /// (`bench/flood`).
    pub(crate) backlog_turn: Arc<tokio::sync::Semaphore>,
    /// Whole publishes may be handled with the broker shared (parallelism above 1).
    pub(crate) publish_shared: bool,
    /// How the core is doing, for operators (`/metrics`).
    pub(crate) health: CoreHealth,
    /// In a cluster: the metadata group, through which topology changes are committed before
    /// they are answered.
    replicator: std::sync::OnceLock<Arc<dyn Replicator>>,
    /// In a cluster: where commands for replicated queues' groups go.
    replica_sink: std::sync::OnceLock<Arc<dyn ReplicaSink>>,
    /// The cluster as the management side shows it (set once by the binary).
    cluster_view: std::sync::OnceLock<Arc<dyn cluster::ClusterView>>,
}

/// Where the commands the broker makes for replicated (quorum) queues go, in the order it
/// made them (`Broker::take_replica_work`); the host proposes them to their groups. Must not
/// block: it is called with the broker locked.
pub trait ReplicaSink: Send + Sync {
    fn submit(&self, work: Vec<warren_core::broker::ReplicaWork>);
}

/// The metadata group as connections see it (issue 15, docs/clustering.md): the durable
/// topology changes a client's commands made (kept by the broker, `Broker::take_replication`)
/// are handed to it, and the client hears nothing more until it answers. On an error the
/// change is not the cluster's (no majority, or it clashed with one made meanwhile on another
/// node): the replicator has undone it here, and the connection is closed with the reason.
pub trait Replicator: Send + Sync {
    fn replicate(
        &self,
        ops: Vec<warren_core::definitions::DefOp>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send + 'static>>;
}

/// Counters of the core's lock and its line of waiting connections. Today the whole core is
/// one owner ("shard 0" in the metrics); with queue shards each will have its own.
#[derive(Debug, Default)]
pub struct CoreHealth {
    /// Nanoseconds the core's lock was held exclusively, in total.
    busy_ns: AtomicU64,
    /// Nanoseconds connections held it shared (publishing in parallel), added over
    /// connections: it may grow faster than the clock.
    shared_busy_ns: AtomicU64,
    /// How many holds of the lock took up to each of [`HOLD_BUCKETS_NS`] (and longer, last):
    /// a long hold is a stall of every connection waiting for it.
    holds: [AtomicU64; HOLD_BUCKETS_NS.len() + 1],
    /// Threads waiting for the lock now.
    lock_waiters: AtomicUsize,
    /// Connections waiting for a turn to go on with their backlog now.
    pub(crate) turn_waiters: AtomicUsize,
}

/// The upper bounds of the lock-hold histogram's buckets, in nanoseconds: 100 µs, 1 ms, 10 ms,
/// 100 ms and 1 s (and above).
pub const HOLD_BUCKETS_NS: [u64; 5] = [100_000, 1_000_000, 10_000_000, 100_000_000, 1_000_000_000];

/// What [`Shared::core_health`] reports.
#[derive(Debug, Clone, Copy, Default)]
pub struct CoreHealthSnapshot {
    /// Seconds the core has been busy (its lock held exclusively) since the start.
    pub busy_seconds: f64,
    /// Seconds of work done with the lock shared (publishes in parallel), added over
    /// connections.
    pub shared_busy_seconds: f64,
    /// Work waiting for the core now: threads waiting for its lock and connections waiting
    /// for a turn with frames already read.
    pub inbox_depth: usize,
    /// Holds of the lock by duration: how many took up to each of [`HOLD_BUCKETS_NS`] and
    /// more than the last (not cumulative).
    pub holds: [u64; HOLD_BUCKETS_NS.len() + 1],
}

/// The locked core; records how long it was held when dropped.
pub struct CoreGuard<'a> {
    guard: RwLockWriteGuard<'a, Core>,
    since: std::time::Instant,
    health: &'a CoreHealth,
}

/// The core, shared with other publishers; records how long it was held when dropped.
pub struct SharedCoreGuard<'a> {
    guard: RwLockReadGuard<'a, Core>,
    since: std::time::Instant,
    health: &'a CoreHealth,
}

impl std::ops::Deref for SharedCoreGuard<'_> {
    type Target = Core;
    fn deref(&self) -> &Core {
        &self.guard
    }
}

impl Drop for SharedCoreGuard<'_> {
    fn drop(&mut self) {
        let ns = self.since.elapsed().as_nanos() as u64;
        self.health.shared_busy_ns.fetch_add(ns, Ordering::Relaxed);
    }
}

impl std::ops::Deref for CoreGuard<'_> {
    type Target = Core;
    fn deref(&self) -> &Core {
        &self.guard
    }
}

impl std::ops::DerefMut for CoreGuard<'_> {
    fn deref_mut(&mut self) -> &mut Core {
        &mut self.guard
    }
}

impl Drop for CoreGuard<'_> {
    fn drop(&mut self) {
        let ns = self.since.elapsed().as_nanos() as u64;
        self.health.busy_ns.fetch_add(ns, Ordering::Relaxed);
        let bucket = HOLD_BUCKETS_NS.iter().position(|&b| ns <= b).unwrap_or(HOLD_BUCKETS_NS.len());
        self.health.holds[bucket].fetch_add(1, Ordering::Relaxed);
    }
}

impl Shared {
    /// How long the server has been running.
    /// Makes this node replicate its topology through `replicator` (once; later calls are
    /// ignored), and turns on the broker's keeping of changes for it.
    pub fn set_replicator(&self, replicator: Arc<dyn Replicator>) {
        if self.replicator.set(replicator).is_ok() {
            self.broker().set_replicating(true);
        }
    }

    /// The metadata group, in a cluster.
    pub fn replicator(&self) -> Option<&Arc<dyn Replicator>> {
        self.replicator.get()
    }

    /// An id no connection has or will have (from the connections' sequence): for changes that
    /// must be told apart from every connection's, a management API request's
    /// (`Broker::set_change_owner`).
    pub fn new_id(&self) -> ConnId {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    /// Sends commands for replicated queues to `sink` (once; later calls are ignored).
    ///
    /// Replicated queues name a consumer by node, connection id and channel, in logs that
    /// outlive the process: connection ids then start from this start's clock (microseconds),
    /// so that no connection of this run has the id of one of an earlier run.
    /// Returns the first connection id of this run: owners below it are an earlier run's.
    pub fn set_replica_sink(&self, sink: Arc<dyn ReplicaSink>) -> u64 {
        if self.replica_sink.set(sink).is_ok() {
            let base = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros());
            self.next_conn.fetch_max(base as u64, Ordering::Relaxed);
        }
        self.next_conn.load(Ordering::Relaxed)
    }

    /// Hands what the broker made for replicated queues to the sink; call with the broker
    /// locked, after anything that may have made some.
    pub fn submit_replica_work(&self, core: &mut Core) {
        if !core.is_replicating() {
            return;
        }
        let work = core.take_replica_work();
        if work.is_empty() {
            return;
        }
        match self.replica_sink.get() {
            Some(sink) => sink.submit(work),
            None => tracing::error!("{} commands for replicated queues and no host to take them", work.len()),
        }
    }

    /// Hands commands for replicated queues to the sink directly (made without the broker's
    /// list: by the cluster's own hosts).
    pub fn submit_work(&self, work: Vec<warren_core::broker::ReplicaWork>) {
        if let Some(sink) = self.replica_sink.get() {
            sink.submit(work);
        }
    }

    /// Wakes the sync loop: the broker wants a sync round (`Broker::sync_wanted`).
    pub fn wake_sync(&self) {
        self.sync_wanted.notify_one();
    }

    /// Sets what the management side shows of the cluster (once; later calls are ignored).
    pub fn set_cluster_view(&self, view: Arc<dyn cluster::ClusterView>) {
        let _ = self.cluster_view.set(view);
    }

    /// The cluster's name, this node's name and the nodes; a node on its own, named
    /// `warren@localhost`, until set.
    pub fn cluster_view(&self) -> Arc<dyn cluster::ClusterView> {
        self.cluster_view.get().cloned().unwrap_or_else(cluster::default_view)
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// The broker's clock: milliseconds since the Unix epoch (message expiry and x-death times
    /// outlive a restart, so they need the wall clock).
    pub fn now_ms(&self) -> u64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
    }

    /// The broker (and the outboxes), locked. parking_lot's lock is eventually fair: a thread
    /// that has waited about half a millisecond is handed the lock at the next unlock, so
    /// connections that take it again and again cannot starve a handshake or an HTTP request.
    /// It is not poisoned by a panic inside the broker: the state is served as it is rather
    /// than taking every connection down.
    ///
    /// What publishes left while the broker was shared is folded in first.
    pub fn broker(&self) -> CoreGuard<'_> {
        let mut guard = self.counting_waiters(self.core.try_write(), || self.core.write());
        guard.broker.fold_shared();
        CoreGuard { guard, since: std::time::Instant::now(), health: &self.health }
    }

    /// A lock taken at once (`taken`), or else waited for (`wait`), counted meanwhile among the
    /// core's waiters (its inbox depth).
    fn counting_waiters<G>(&self, taken: Option<G>, wait: impl FnOnce() -> G) -> G {
        taken.unwrap_or_else(|| {
            self.health.lock_waiters.fetch_add(1, Ordering::Relaxed);
            let guard = wait();
            self.health.lock_waiters.fetch_sub(1, Ordering::Relaxed);
            guard
        })
    }

    /// The broker shared with other connections' publishes (see `Broker::publish_shared`).
    pub(crate) fn broker_shared(&self) -> SharedCoreGuard<'_> {
        let guard = self.counting_waiters(self.core.try_read(), || self.core.read());
        SharedCoreGuard { guard, since: std::time::Instant::now(), health: &self.health }
    }

    /// The core's busy time and the work waiting for it.
    pub fn core_health(&self) -> CoreHealthSnapshot {
        CoreHealthSnapshot {
            busy_seconds: self.health.busy_ns.load(Ordering::Relaxed) as f64 / 1e9,
            shared_busy_seconds: self.health.shared_busy_ns.load(Ordering::Relaxed) as f64 / 1e9,
            inbox_depth: self.health.lock_waiters.load(Ordering::Relaxed)
                + self.health.turn_waiters.load(Ordering::Relaxed),
            holds: std::array::from_fn(|i| self.health.holds[i].load(Ordering::Relaxed)),
        }
    }
}

/// A running AMQP server.
pub struct Server {
    shared: Arc<Shared>,
    shutdown_tx: watch::Sender<bool>,
    limits: Option<alarms::ResourceLimits>,
}

impl Server {
    pub fn new(broker: Broker) -> Self {
        let (shutdown_tx, shutdown) = watch::channel(false);
        let parallelism = match broker.config().data_plane_parallelism {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let shared = Arc::new(Shared {
            core: RwLock::new(Core { broker, outboxes: HashMap::new(), flow: watch::channel(0).0 }),
            next_conn: AtomicU64::new(1),
            started: Instant::now(),
            shutdown,
            sync_wanted: Notify::new(),
            backlog_turn: Arc::new(tokio::sync::Semaphore::new(parallelism.saturating_sub(1).max(1))),
            publish_shared: parallelism > 1,
            health: CoreHealth::default(),
            replicator: std::sync::OnceLock::new(),
            replica_sink: std::sync::OnceLock::new(),
            cluster_view: std::sync::OnceLock::new(),
        });
        Server { shared, shutdown_tx, limits: None }
    }

    /// Watches memory and disk against these limits (resource alarms) while serving.
    pub fn set_resource_limits(&mut self, limits: alarms::ResourceLimits) {
        self.limits = Some(limits);
    }

    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    /// Accepts AMQP connections until shutdown, and runs the broker's periodic work.
    pub async fn serve(&self, listener: TcpListener) {
        let ticker = tokio::spawn(tick_loop(self.shared.clone()));
        let syncer = tokio::spawn(sync_loop(self.shared.clone()));
        let alarmer = self.limits.clone().map(|l| tokio::spawn(alarms::alarm_loop(self.shared.clone(), l)));
        self.accept(listener, None).await;
        ticker.abort();
        syncer.abort();
        if let Some(a) = alarmer {
            a.abort();
        }
    }

    /// Syncs everything written so far, settles included, so that a clean stop brings back no
    /// acknowledged message.
    pub async fn sync_all(&self) {
        let job = self.shared.broker().begin_sync(self.shared.now_ms(), true);
        let (epoch, owners, handles) = (job.epoch, job.owners, job.handles);
        let results = tokio::task::spawn_blocking(move || handles.iter().map(|h| h.sync()).collect())
            .await
            .unwrap_or_else(|e| vec![Err(std::io::Error::other(e))]);
        let mut out = Vec::new();
        let mut core = self.shared.broker();
        core.end_sync(epoch, sync_failures(&owners, results), self.shared.now_ms(), &mut out);
        core.log_errors();
        core.deliver(&mut out);
    }

    /// Accepts AMQPS connections (TLS, then AMQP) until shutdown. Run beside [`Server::serve`],
    /// which also runs the broker's periodic work.
    pub async fn serve_tls(&self, listener: TcpListener, acceptor: tokio_rustls::TlsAcceptor) {
        self.accept(listener, Some(acceptor)).await;
    }

    /// Accepts connections until shutdown, each served by its own task (after a TLS handshake,
    /// bounded by the handshake timeout, when `tls` is given).
    async fn accept(&self, listener: TcpListener, tls: Option<tokio_rustls::TlsAcceptor>) {
        let mut shutdown = self.shared.shutdown.clone();
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((socket, peer)) => {
                        let shared = self.shared.clone();
                        let local = socket.local_addr().map(|a| a.to_string()).unwrap_or_default();
                        let _ = socket.set_nodelay(true);
                        let Some(acceptor) = tls.clone() else {
                            let id = shared.next_conn.fetch_add(1, Ordering::Relaxed);
                            tokio::spawn(async move { connection::run(shared, id, socket, peer, local, None).await });
                            continue;
                        };
                        tokio::spawn(async move {
                            let limit = Duration::from_millis(shared.broker().config().handshake_timeout_ms);
                            match tokio::time::timeout(limit, acceptor.accept(socket)).await {
                                Ok(Ok(stream)) => {
                                    // Present only when the CA verified it (verify_peer): with
                                    // verify_none no certificate is asked for.
                                    let client_cert = stream
                                        .get_ref()
                                        .1
                                        .peer_certificates()
                                        .and_then(|chain| chain.first())
                                        .map(|c| c.as_ref().to_vec());
                                    let id = shared.next_conn.fetch_add(1, Ordering::Relaxed);
                                    connection::run(shared, id, stream, peer, local, client_cert).await;
                                }
                                Ok(Err(e)) => tracing::info!("TLS handshake with {peer} failed: {e}"),
                                Err(_) => tracing::info!("TLS handshake with {peer} timed out"),
                            }
                        });
                    }
                    Err(e) => {
                        // Out of file descriptors and the like: wait a little rather than spin.
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                _ = shutdown.changed() => break,
            }
        }
    }

    /// Asks every connection to close (320 CONNECTION_FORCED) and stops accepting.
    pub fn shutdown(&self) {
        let _ = self.shutdown_tx.send(true);
    }
}

/// How often time-based broker work runs: message TTL at queue heads, queue expiry, the
/// consumer acknowledgement timeout. TTLs are also applied whenever a queue delivers, so this
/// only bounds how late an expired message is dead-lettered from an idle queue.
pub const TICK_INTERVAL: Duration = Duration::from_millis(100);

/// Drives time-based broker work.
async fn tick_loop(shared: Arc<Shared>) {
    let mut interval = tokio::time::interval(TICK_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut out = Vec::new();
    loop {
        interval.tick().await;
        let mut core = shared.broker();
        core.tick(shared.now_ms(), &mut out);
        core.log_errors();
        shared.submit_replica_work(&mut core);
        core.deliver(&mut out);
    }
}

/// Group commit: syncs the store when answers wait for it (at once) or when writes are
/// unsynced (every [`SYNC_INTERVAL`]). Each round syncs every file written before it began, for
/// all connections, outside the broker lock; writes made meanwhile go into the next round.
async fn sync_loop(shared: Arc<Shared>) {
    let mut out = Vec::new();
    loop {
        tokio::select! {
            _ = shared.sync_wanted.notified() => {}
            _ = tokio::time::sleep(SYNC_INTERVAL) => {}
        }
        loop {
            let job = {
                let mut b = shared.broker();
                if !b.sync_wanted() && !b.has_unsynced_writes(shared.now_ms()) {
                    break;
                }
                b.begin_sync(shared.now_ms(), false)
            };
            // The files sync side by side: a file system commits its journal once for syncs
            // that overlap, so a round costs about one fsync however many files it covers.
            let tasks: Vec<_> =
                job.handles.into_iter().map(|h| tokio::task::spawn_blocking(move || h.sync())).collect();
            let mut results = Vec::with_capacity(tasks.len());
            for t in tasks {
                results.push(t.await.unwrap_or_else(|e| Err(std::io::Error::other(e))));
            }
            let mut core = shared.broker();
            core.end_sync(job.epoch, sync_failures(&job.owners, results), shared.now_ms(), &mut out);
            core.log_errors();
            core.deliver(&mut out);
        }
    }
}

/// The owners whose sync failed, with the error, from a round's results (one per handle, in
/// the job's order; a missing result counts as a failure of every owner).
fn sync_failures(owners: &[u32], results: Vec<std::io::Result<()>>) -> Vec<(u32, std::io::Error)> {
    if results.len() != owners.len() {
        let e = results.into_iter().find_map(Result::err).unwrap_or_else(|| std::io::Error::other("sync lost"));
        return vec![(warren_core::SYNC_ANY, e)];
    }
    owners.iter().zip(results).filter_map(|(&o, r)| r.err().map(|e| (o, e))).collect()
}

/// Encodes broker output for one connection.
pub(crate) fn encode(buf: &mut outbuf::OutBuf, outs: &[Out], frame_max: u32) -> usize {
    let mut delivered = 0;
    for o in outs {
        match o {
            Out::Method { channel, method } => warren_amqp::frame::write_method(buf.small(), *channel, method),
            Out::Content { channel, method, msg } => {
                warren_amqp::frame::write_method(buf.small(), *channel, method);
                outbuf::put_content(buf, *channel, &msg.raw_properties, &msg.body, frame_max);
            }
            Out::Deliver { channel, consumer_tag, delivery_tag, redelivered, msg } => {
                warren_amqp::frame::write_deliver(
                    buf.small(),
                    *channel,
                    consumer_tag,
                    *delivery_tag,
                    *redelivered,
                    &msg.exchange,
                    &msg.routing_key,
                );
                outbuf::put_content(buf, *channel, &msg.raw_properties, &msg.body, frame_max);
                delivered += msg.wire_size();
            }
        }
    }
    delivered
}

pub fn is_loopback(addr: &SocketAddr) -> bool {
    match addr.ip() {
        std::net::IpAddr::V4(v4) => v4.is_loopback(),
        std::net::IpAddr::V6(v6) => v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
    }
}
