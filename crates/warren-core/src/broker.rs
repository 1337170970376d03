//! The broker state machine.
//!
//! The server calls [`Broker::handle_frame`] with every frame of a channel (channel 0, the
//! connection's own methods, stays in the server), or [`Broker::handle_content`] with a whole
//! publish it assembled ahead from its frames, then [`Broker::end_batch`] once per batch of
//! frames read. Whatever the broker wants written, to this connection or to any other, is
//! appended to the `out` vector as `(connection, Out)` pairs.
//!
//! Errors follow the spec: a handler returns a `ProtocolError`; a soft code closes the channel
//! (its consumers are cancelled and its unacked messages requeued at once, as RabbitMQ does),
//! a hard code closes the connection. Either way no other connection notices.

use crate::args::{QueueArgs, QueueType};
use crate::auth::{Access, Grants, Password, Permission, TopicPermission, User, Users, SHA256, SHA512};
pub use crate::channel::Publish;
use crate::channel::{AckOp, Channel, ChannelState, Consumer, DeferredKind, TxState, Unacked};
use crate::config::Config;
use crate::credit::ConsumerCredit;
pub use crate::credit::Outbound;
use crate::definitions::{
    journal_header, BindingDef, DefOp, Definitions, ExchangeDef, PermissionDef, PolicyDef, QueueDef,
    TopicPermissionDef, UserDef, UserLimits, VhostLimits,
};
use crate::exchange::{Binding, Destination, Exchange, ExchangeKind};
use crate::hash::{HashMap, HashSet};
use crate::message::{Message, MessageRef};
use crate::policy::{ApplyTo, Policy};
use crate::queue::{ConsumerKey, PushOutcome, Queue, QueueStore, Queued};
use crate::ConnId;
use bytes::{Bytes, BytesMut};
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::sync::Arc;
use warren_amqp::{
    Assembled, BasicProperties, FieldTable, FieldValue, Frame, Method, ProtocolError, ReplyCode, ShortStr,
};
use warren_store::{Backend, LogConfig, MemBackend, SegmentLog, SyncHandle};

/// Something to write to a connection.
#[derive(Debug, Clone)]
pub enum Out {
    Method {
        channel: u16,
        method: Method,
    },
    /// A content-bearing method (deliver, get-ok, return) with its message.
    Content {
        channel: u16,
        method: Method,
        msg: MessageRef,
    },
}

/// The pseudo-queue of direct reply-to.
pub const REPLY_TO_QUEUE: &str = "amq.rabbitmq.reply-to";
const REPLY_TO_PREFIX: &str = "amq.rabbitmq.reply-to.";

/// What the server learned about a connection during the handshake.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub user: String,
    pub vhost: String,
    pub peer: String,
    pub client_properties: FieldTable,
    pub channel_max: u16,
    pub session: Session,
}

/// How a client connection came in, for operators (`/api/connections`).
#[derive(Debug, Clone, Default)]
pub struct Session {
    /// The SASL mechanism it logged in with ("PLAIN", "AMQPLAIN", "EXTERNAL").
    pub auth_mechanism: &'static str,
    /// Over TLS (the AMQPS listener).
    pub tls: bool,
    /// When its connection.open was accepted, ms since the Unix epoch.
    pub connected_at_ms: u64,
}

impl ConnInfo {
    /// True when the client announced the capability in its client-properties.
    pub fn has_capability(&self, name: &str) -> bool {
        match self.client_properties.get("capabilities") {
            Some(FieldValue::Table(t)) => t.get(name).and_then(FieldValue::as_bool).unwrap_or(false),
            _ => false,
        }
    }
}

#[derive(Debug)]
struct Conn {
    info: ConnInfo,
    vhost: Arc<str>,
    /// What the user may do in the vhost (replaced when its permissions change).
    grants: Arc<Grants>,
    /// The last exchange a publish was allowed to write to: publishing checks the write
    /// permission only when the exchange changes.
    write_ok: Option<ShortStr>,
    cancel_notify: bool,
    /// Boxed: a channel is large, and the map keeps spare slots.
    channels: HashMap<u16, Box<Channel>>,
    /// After we sent connection.close: drop everything until the socket goes.
    closing: bool,
    /// Bytes of deliveries handed to the server and not yet reported written.
    out_bytes: Arc<Outbound>,
    /// A message it published had to be paged to disk behind a consumer whose connection is
    /// full: the server pauses reading from it for a while (see [`Broker::take_flow_blocked`]).
    flow_blocked: bool,
    /// It published while a resource alarm was in force: the server stops reading from it
    /// until the alarms clear ([`Broker::is_alarm_blocked`]).
    alarm_blocked: bool,
    /// connection.blocked was sent to it (connection.unblocked follows when alarms clear).
    blocked_sent: bool,
    /// It declared an exclusive queue. Only then does closing it search the vhost's queues for
    /// the ones it owns: most connections never declare one, and the management API opens and
    /// closes a connection per operation (100,000 times for a definitions import).
    owns_exclusive: bool,
}

#[derive(Debug)]
pub struct VHost {
    pub name: String,
    pub exchanges: HashMap<ShortStr, Exchange>,
    pub queues: HashMap<ShortStr, Queue>,
    pub limits: VhostLimits,
}

impl VHost {
    fn new(name: &str) -> Self {
        let mut v = VHost {
            name: name.into(),
            exchanges: HashMap::default(),
            queues: HashMap::default(),
            limits: VhostLimits::default(),
        };
        for (n, k) in [
            ("", ExchangeKind::Direct),
            ("amq.direct", ExchangeKind::Direct),
            ("amq.fanout", ExchangeKind::Fanout),
            ("amq.topic", ExchangeKind::Topic),
            ("amq.headers", ExchangeKind::Headers),
            ("amq.match", ExchangeKind::Headers),
        ] {
            v.exchanges.insert(
                ShortStr::from_static(n),
                Exchange::new(ShortStr::from_static(n), k, true, false, false, FieldTable::new()),
            );
        }
        v
    }
}

/// Where a direct reply-to suffix leads.
#[derive(Debug, Clone)]
struct ReplyTarget {
    conn: ConnId,
    channel: u16,
    consumer_tag: ShortStr,
}

/// Counts for the management API.
#[derive(Debug, Clone, Default)]
pub struct Overview {
    pub connections: usize,
    pub channels: usize,
    pub queues: usize,
    pub exchanges: usize,
    pub consumers: usize,
    pub messages_ready: u64,
    pub messages_unacked: u64,
    pub store: StoreStats,
}

/// Counters of the store's work since start, for the management API and benchmarks.
#[derive(Debug, Clone, Copy, Default)]
pub struct StoreStats {
    /// Sync rounds (group commits) completed.
    pub sync_rounds: u64,
    /// Files synced (fsync calls), over all rounds.
    pub fsyncs: u64,
    /// Publishes confirmed to clients (basic.ack in confirm mode).
    pub confirms: u64,
}

#[derive(Debug, Clone)]
pub struct QueueInfo {
    pub vhost: String,
    pub name: String,
    pub durable: bool,
    pub exclusive: bool,
    pub auto_delete: bool,
    pub messages_ready: u32,
    pub messages_unacked: u32,
    pub consumers: u32,
    pub policy: Option<String>,
    pub operator_policy: Option<String>,
    pub arguments: FieldTable,
    /// Why the queue's storage is degraded, if it is (a write or sync failed; it heals by
    /// itself once the disk takes writes again).
    pub storage_trouble: Option<String>,
}

type Res = Result<(), ProtocolError>;

/// A queue's arguments with the policies folded in, and which policies those were.
struct EffectiveArgs {
    args: QueueArgs,
    policy: Option<String>,
    operator_policy: Option<String>,
}

fn not_found(kind: &str, name: &str, vhost: &str) -> ProtocolError {
    ProtocolError::new(ReplyCode::NotFound, format_args!("no {kind} '{name}' in vhost '{vhost}'"))
}

fn precondition(detail: impl std::fmt::Display) -> ProtocolError {
    ProtocolError::new(ReplyCode::PreconditionFailed, detail)
}

fn locked(name: &str, vhost: &str) -> ProtocolError {
    ProtocolError::new(
        ReplyCode::ResourceLocked,
        format_args!(
            "cannot obtain exclusive access to locked queue '{name}' in vhost '{vhost}'. It could be originally declared on another connection or the exclusive property value does not match that of the original declaration."
        ),
    )
}

/// Drops the carriage returns and line feeds of a name (no copy when it has none).
fn strip_cr_lf(name: &mut ShortStr) {
    if name.as_bytes().iter().any(|&b| b == b'\r' || b == b'\n') {
        *name = ShortStr::from(name.replace(['\r', '\n'], "").as_str());
    }
}

/// As RabbitMQ 3.10: the queue and exchange names of declares, deletes, binds and unbinds lose
/// their CR and LF characters ("a\nb" declares "ab"; "\n" is a server-named queue). Routing
/// keys, and the names in purge, consume, get and publish, are taken as they are.
fn strip_cr_lf_names(method: &mut Method) {
    match method {
        Method::QueueDeclare { queue, .. } | Method::QueueDelete { queue, .. } => strip_cr_lf(queue),
        Method::ExchangeDeclare { exchange, .. } | Method::ExchangeDelete { exchange, .. } => strip_cr_lf(exchange),
        Method::QueueBind { queue, exchange, .. } | Method::QueueUnbind { queue, exchange, .. } => {
            strip_cr_lf(queue);
            strip_cr_lf(exchange);
        }
        Method::ExchangeBind { destination, source, .. } | Method::ExchangeUnbind { destination, source, .. } => {
            strip_cr_lf(destination);
            strip_cr_lf(source);
        }
        _ => {}
    }
}

fn default_exchange_refused() -> ProtocolError {
    ProtocolError::new(ReplyCode::AccessRefused, "operation not permitted on the default exchange")
}

fn inequivalent(
    arg: &str,
    kind: &str,
    name: &str,
    vhost: &str,
    received: impl std::fmt::Display,
    current: impl std::fmt::Display,
) -> ProtocolError {
    precondition(format_args!("inequivalent arg '{arg}' for {kind} '{name}' in vhost '{vhost}': received '{received}' but current is '{current}'"))
}

/// The name a resource's permission is checked with: RabbitMQ checks the default exchange as
/// `amq.default`.
fn permission_name<'a>(kind: &str, name: &'a str) -> &'a str {
    if kind == "exchange" && name.is_empty() {
        "amq.default"
    } else {
        name
    }
}

/// RabbitMQ's refusal of an operation on a resource (channel error 403).
fn access_refused(kind: &str, name: &str, vhost: &str, user: &str) -> ProtocolError {
    let name = permission_name(kind, name);
    ProtocolError::new(
        ReplyCode::AccessRefused,
        format_args!("access to {kind} '{name}' in vhost '{vhost}' refused for user '{user}'"),
    )
}

/// RabbitMQ's refusal of a routing key by a topic permission.
fn topic_refused(routing_key: &str, exchange: &str, vhost: &str, user: &str) -> ProtocolError {
    ProtocolError::new(
        ReplyCode::AccessRefused,
        format_args!(
            "access to topic '{routing_key}' in exchange '{exchange}' in vhost '{vhost}' refused for user '{user}'"
        ),
    )
}

/// The exchanges every vhost has from the start; never written to the definitions.
fn is_builtin_exchange(name: &str) -> bool {
    matches!(name, "" | "amq.direct" | "amq.fanout" | "amq.topic" | "amq.headers" | "amq.match")
}

fn internal(detail: impl std::fmt::Display) -> ProtocolError {
    ProtocolError::new(ReplyCode::InternalError, detail)
}

/// A random name in RabbitMQ's style: the prefix and 22 URL-safe base64 characters.
fn generated_name(rng: &mut fastrand::Rng, prefix: &str) -> ShortStr {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut s = String::with_capacity(prefix.len() + 22);
    s.push_str(prefix);
    for _ in 0..22 {
        s.push(ALPHABET[rng.usize(..ALPHABET.len())] as char);
    }
    ShortStr::from(s)
}

/// The queue arguments whose values must match on redeclaration (RabbitMQ's list).
const EQUIVALENT_QUEUE_ARGS: &[&str] = &[
    "x-expires",
    "x-message-ttl",
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-max-length",
    "x-max-length-bytes",
    "x-max-priority",
    "x-overflow",
    "x-queue-mode",
    "x-queue-type",
    "x-single-active-consumer",
];

fn describe(v: Option<&FieldValue>) -> String {
    match v {
        None => "none".into(),
        Some(v) => match (v.as_str(), v.as_i64(), v.as_bool()) {
            (Some(s), _, _) => s.into(),
            (_, Some(i), _) => i.to_string(),
            (_, _, Some(b)) => b.to_string(),
            _ => format!("{v:?}"),
        },
    }
}

fn args_equal(a: Option<&FieldValue>, b: Option<&FieldValue>) -> bool {
    match (a, b) {
        (Some(x), Some(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(i), Some(j)) => i == j,
            _ => x == y,
        },
        (None, None) => true,
        _ => false,
    }
}

pub struct Broker {
    config: Config,
    users: Users,
    vhosts: HashMap<String, VHost>,
    conns: HashMap<ConnId, Conn>,
    reply_targets: HashMap<ShortStr, ReplyTarget>,
    store: Store,
    /// The store sync that will cover writes made now; `synced_epoch` is the last one done.
    write_epoch: u64,
    synced_epoch: u64,
    /// Connections with answers waiting for a sync.
    waiting: HashSet<ConnId>,
    /// Queues (vhost, name) with writes not yet synced.
    dirty: HashSet<(Arc<str>, ShortStr)>,
    /// Durable queues whose ack files were written but not yet synced: settles are made durable
    /// at most every [`ACK_SYNC_INTERVAL_MS`], not in the rounds that confirms wait for.
    ack_dirty: HashSet<(Arc<str>, ShortStr)>,
    /// When a sync round last covered the ack files (ms since the epoch).
    acks_synced_ms: u64,
    /// Delayed-message exchanges (vhost, name) with writes not yet synced.
    dirty_exchanges: HashSet<(Arc<str>, ShortStr)>,
    /// The durable definitions changed: write the snapshot before answering.
    defs_dirty: bool,
    /// Topology changes not yet in the journal.
    def_ops: Vec<DefOp>,
    /// Users' limits (`/api/user-limits`), of the users that have any.
    user_limits: HashMap<String, UserLimits>,
    /// Inside [`Broker::batch_definitions`]: changes are made durable at its end, together.
    defs_batched: bool,
    /// Storage failures to report (the server logs them).
    errors: Vec<String>,
    /// Warnings and notices to log (storage degraded or healed, predicted alarms).
    warnings: Vec<String>,
    notices: Vec<String>,
    /// The next queue's `sync_id`.
    next_sync_id: u32,
    /// Bytes that may still be written before free disk space reaches its limit, as of the last
    /// measurement, and what was written since ([`Broker::set_disk_free`]).
    disk_headroom: Option<u64>,
    disk_written: u64,
    /// The last enqueue paged a message behind a consumer that cannot keep up.
    paged_behind_consumer: bool,
    /// Resource alarms in force (see [`Broker::set_alarms`]).
    alarms: Alarms,
    resource_use: ResourceUse,
    /// The user management requests act as (see `Broker::set_acting_user`).
    acting_user: Option<String>,
    /// Bytes that may still come in before memory reaches the high watermark, as of the last
    /// measurement, and what was published since ([`Broker::set_memory_use`]).
    memory_headroom: Option<u64>,
    ingested: u64,
    /// Some connection became writable again: flow-blocked publishers may go on.
    flow_released: bool,
    stats: StoreStats,
    /// Message and object counters for the metrics endpoint (plain adds under the lock).
    counters: crate::metrics::Counters,
    policies: Vec<Policy>,
    operator_policies: Vec<Policy>,
    /// The broker's randomness, seeded from [`Config::seed`].
    rng: fastrand::Rng,
    /// The definitions journal has appends not yet synced: the next sync round covers it, so
    /// no confirm can go out for a queue whose declaration could still be lost.
    journal_unsynced: bool,
    /// The client connection whose command appended them and whose answers must wait for that
    /// sync ([`Broker::take_definitions_sync`]).
    defs_sync_owed: Option<ConnId>,
    /// The next delivery id a queue keeps a delivered message under ([`Queue::check_out`]):
    /// unique for the broker's life, so a tag of a deleted queue never names a message of a
    /// queue declared again under its name.
    next_delivery_id: u64,
}

/// What a message costs in memory beyond its body, for the memory alarm's headroom.
const MESSAGE_OVERHEAD_BYTES: u64 = 512;

/// The last measurements the resource alarms were decided on, for operators (`/api/nodes`,
/// the web UI). Zero until measured.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResourceUse {
    pub mem_used: u64,
    pub mem_limit: u64,
    pub disk_free: u64,
    pub disk_free_limit: u64,
}

/// Resource alarms: memory use over the high watermark, free disk space under the limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Alarms {
    pub memory: bool,
    pub disk: bool,
}

impl Alarms {
    pub fn any(self) -> bool {
        self.memory || self.disk
    }

    /// The reason connection.blocked carries, in RabbitMQ's words.
    fn reason(self) -> ShortStr {
        ShortStr::from_static(match (self.memory, self.disk) {
            (true, true) => "low on memory & disk",
            (true, false) => "low on memory",
            _ => "low on disk",
        })
    }
}

/// Where queue logs and the definitions snapshot live.
struct Store {
    backend: Arc<dyn Backend>,
    dir: PathBuf,
    log_config: LogConfig,
    next_transient: u64,
    /// The definitions journal, open for appending once a snapshot was written.
    journal: Option<Box<dyn warren_store::AppendFile>>,
    /// The snapshot's generation, and how many topology definitions it holds.
    generation: u64,
    snapshot_topology: usize,
    /// Records in the journal since the snapshot.
    journal_ops: usize,
}

impl Store {
    fn definitions_path(&self) -> PathBuf {
        self.dir.join("definitions")
    }

    fn journal_path(&self) -> PathBuf {
        self.dir.join("definitions.journal")
    }

    /// A directory for a durable object's log, stable across restarts, named by a hash so that
    /// any name makes a valid file name.
    fn hashed_dir(&self, kind: &str, vhost: &str, name: &str) -> PathBuf {
        let mut h = Sha256::new();
        h.update(vhost.as_bytes());
        h.update([0u8]);
        h.update(name.as_bytes());
        let digest = h.finalize();
        let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
        self.dir.join(kind).join(hex)
    }

    fn durable_dir(&self, vhost: &str, name: &str) -> PathBuf {
        self.hashed_dir("queues", vhost, name)
    }

    /// A durable delayed-message exchange's log directory.
    fn delayed_dir(&self, vhost: &str, name: &str) -> PathBuf {
        self.hashed_dir("delayed", vhost, name)
    }

    /// Attaches a durable log to a deduplication exchange that asks for a disk cache.
    fn attach_dedup_log(&mut self, vhost: &str, exchange: &mut Exchange) -> std::io::Result<()> {
        let Some(cache) = exchange.dedup.as_mut() else { return Ok(()) };
        if !exchange.durable || !crate::dedup::DedupCache::wants_disk(&exchange.arguments) {
            return Ok(());
        }
        let dir = self.hashed_dir("dedup", vhost, &exchange.name);
        let (log, _) = SegmentLog::open(self.backend.clone(), &dir, self.log_config.clone())?;
        cache.attach_log(log)
    }

    /// Opens the store of a delayed-message exchange; returns it and its pending count.
    fn open_delayed(
        &mut self,
        vhost: &str,
        name: &str,
        durable: bool,
    ) -> std::io::Result<(crate::delayed::DelayedStore, u64)> {
        let dir = if durable { self.delayed_dir(vhost, name) } else { self.transient_dir() };
        let (log, recovered) = SegmentLog::open(self.backend.clone(), &dir, self.log_config.clone())?;
        Ok((crate::delayed::DelayedStore::new(log, durable, recovered.unsettled), recovered.unsettled))
    }

    fn transient_dir(&mut self) -> PathBuf {
        self.next_transient += 1;
        self.dir.join("transient").join(self.next_transient.to_string())
    }
}

/// A store sync to run outside the broker lock: sync every handle, then call
/// [`Broker::end_sync`] with the epoch.
pub struct SyncJob {
    pub epoch: u64,
    pub handles: Vec<Arc<dyn SyncHandle>>,
    /// Whose each handle is (`owners[i]` for `handles[i]`): a queue's `sync_id`, or
    /// [`SYNC_ANY`]. A failed sync nacks only the publishes that waited on its owner.
    pub owners: Vec<u32>,
}

/// The sync owner of what is not one queue's (several queues, an exchange's store): a failure
/// of it nacks every publish of its round, and a publish waiting on it is nacked by any failure.
pub const SYNC_ANY: u32 = u32::MAX;

/// The sync owner of the definitions journal: its failure nacks every publish of the round (a
/// queue they went to may not be durable) and makes the next change rewrite the snapshot.
const SYNC_DEFINITIONS: u32 = u32::MAX - 1;

/// Whose sync a publish waits for, merged over its queues: `None` when it needs no sync.
fn merge_sync_target(a: Option<u32>, b: Option<u32>) -> Option<u32> {
    match (a, b) {
        (None, x) | (x, None) => x,
        (Some(x), Some(y)) if x == y => Some(x),
        _ => Some(SYNC_ANY),
    }
}

/// What routing a publish asked of the store.
#[derive(Debug, Default, Clone, Copy)]
struct PublishSync {
    /// The confirm waits for a sync of this owner.
    target: Option<u32>,
    /// A queue could not take it (its storage failed): the confirm is a nack.
    failed: bool,
}

/// What recovery found, for the log.
#[derive(Debug, Default)]
pub struct RecoveryReport {
    pub queues: usize,
    pub messages: u64,
    pub exchanges: usize,
    pub bindings: usize,
    /// One line per corrupt spot or loss found (definitions files, queue logs): for the log at
    /// ERROR level.
    pub corrupt: Vec<String>,
    /// Log directories no definition names, moved aside (for the log at WARN level).
    pub quarantined: Vec<recovery::Quarantined>,
    /// One line per recovered queue, for the log.
    pub progress: Vec<String>,
}

impl Broker {
    /// A broker whose queues live in memory only (a `MemBackend`): for tests of the core.
    pub fn new(config: Config) -> Self {
        let backend: Arc<dyn Backend> = Arc::new(MemBackend::new());
        match Self::open(config.clone(), backend, PathBuf::from("/warren-mem")) {
            Ok((b, _)) => b,
            // An empty in-memory store cannot fail to open.
            Err(e) => panic!("opening an empty in-memory store failed: {e}"),
        }
    }

    /// Opens the broker on a store: reads the definitions snapshot, reopens every durable
    /// queue's log (recovering its unsettled persistent messages), and discards what does not
    /// survive a restart (non-durable queues' logs).
    pub fn open(config: Config, backend: Arc<dyn Backend>, dir: PathBuf) -> Result<(Self, RecoveryReport), String> {
        let mut users = Users::default();
        for u in &config.loopback_users {
            users.set_loopback_only(u, true);
        }
        let store = Store {
            backend,
            dir,
            log_config: LogConfig::default(),
            next_transient: 0,
            journal: None,
            generation: 0,
            snapshot_topology: 0,
            journal_ops: 0,
        };
        let mut broker = Broker {
            journal_unsynced: false,
            defs_sync_owed: None,
            rng: fastrand::Rng::with_seed(config.seed),
            config,
            users,
            vhosts: HashMap::default(),
            conns: HashMap::default(),
            reply_targets: HashMap::default(),
            store,
            write_epoch: 1,
            synced_epoch: 0,
            waiting: HashSet::default(),
            dirty: HashSet::default(),
            ack_dirty: HashSet::default(),
            acks_synced_ms: 0,
            dirty_exchanges: HashSet::default(),
            defs_dirty: false,
            def_ops: Vec::new(),
            user_limits: HashMap::default(),
            defs_batched: false,
            errors: Vec::new(),
            warnings: Vec::new(),
            notices: Vec::new(),
            next_sync_id: 0,
            next_delivery_id: 1,
            disk_headroom: None,
            disk_written: 0,
            paged_behind_consumer: false,
            flow_released: false,
            alarms: Alarms::default(),
            resource_use: ResourceUse::default(),
            acting_user: None,
            memory_headroom: None,
            ingested: 0,
            stats: StoreStats::default(),
            counters: crate::metrics::Counters::default(),
            policies: Vec::new(),
            operator_policies: Vec::new(),
        };
        let report = broker.recover()?;
        Ok((broker, report))
    }

    fn recover(&mut self) -> Result<RecoveryReport, String> {
        let mut report = RecoveryReport::default();
        let backend = self.store.backend.clone();
        let io = |what: &str, e: std::io::Error| format!("{what}: {e}");
        backend.create_dir_all(&self.store.dir).map_err(|e| io("cannot create the data directory", e))?;
        // Non-durable queues do not survive a restart; neither do their logs.
        let transient = self.store.dir.join("transient");
        if let Err(e) = backend.remove_dir_all(&transient) {
            if e.kind() != std::io::ErrorKind::NotFound {
                return Err(io("cannot clear the transient queue logs", e));
            }
        }
        let loaded = self.load_definitions(&mut report)?;
        let defs = loaded.defs;
        let default_vhost = self.config.default_vhost.clone();
        // A fresh store (or one from before access control) gets the default vhost and the
        // default user, an administrator with every permission on it, as RabbitMQ seeds them.
        let fresh = defs.users.is_none();
        let seeded = fresh.then_some(&default_vhost);
        for v in seeded.into_iter().chain(defs.vhosts.iter()) {
            self.vhosts.entry(v.clone()).or_insert_with(|| VHost::new(v));
        }
        for (u, limits) in &defs.user_limits {
            self.user_limits.insert(u.clone(), *limits);
        }
        for (v, limits) in &defs.vhost_limits {
            if let Some(vh) = self.vhosts.get_mut(v) {
                vh.limits = *limits;
            }
        }
        if fresh {
            let (name, pass) = (self.config.default_user.clone(), self.config.default_pass.clone());
            self.users.put(User {
                name: name.clone(),
                password_hash: crate::auth::hash_password(&mut self.rng, &pass),
                hashing_algorithm: SHA256.into(),
                tags: vec!["administrator".into()],
            });
            let p = Permission::new(&name, &default_vhost, ".*", ".*", ".*").map_err(|e| e.to_string())?;
            self.users.set_permission(p);
            self.defs_dirty = true;
        }
        for u in defs.users.iter().flatten() {
            self.users.put(User {
                name: u.name.clone(),
                password_hash: u.password_hash.clone(),
                hashing_algorithm: u.hashing_algorithm.clone(),
                tags: u.tags.clone(),
            });
        }
        for p in &defs.permissions {
            match Permission::new(&p.user, &p.vhost, &p.configure, &p.write, &p.read) {
                Ok(p) => self.users.set_permission(p),
                Err(e) => {
                    report.corrupt.push(format!("permissions of '{}' in vhost '{}': {e}; skipped", p.user, p.vhost))
                }
            }
        }
        for p in &defs.topic_permissions {
            match TopicPermission::new(&p.user, &p.vhost, &p.exchange, &p.write, &p.read) {
                Ok(p) => self.users.set_topic_permission(p),
                Err(e) => report
                    .corrupt
                    .push(format!("topic permissions of '{}' in vhost '{}': {e}; skipped", p.user, p.vhost)),
            }
        }
        for p in &defs.policies {
            let apply_to = ApplyTo::parse(&p.apply_to).unwrap_or(ApplyTo::All);
            match Policy::new(&p.vhost, &p.name, &p.pattern, apply_to, p.priority, p.definition.clone(), p.operator) {
                Ok(policy) if p.operator => self.operator_policies.push(policy),
                Ok(policy) => self.policies.push(policy),
                Err(e) => {
                    report.corrupt.push(format!("policy '{}' in vhost '{}': {}; skipped", p.name, p.vhost, e.text))
                }
            }
        }
        // Directories of durable logs that definitions name; any other is stale.
        let mut live_dirs = HashSet::default();
        for x in &defs.exchanges {
            let Some(kind) = ExchangeKind::parse(&x.kind) else {
                report.corrupt.push(format!(
                    "exchange '{}' in vhost '{}' has unknown type '{}'; skipped",
                    x.name, x.vhost, x.kind
                ));
                continue;
            };
            let name = ShortStr::from(x.name.as_str());
            let mut exchange = Exchange::new(name.clone(), kind, true, x.auto_delete, x.internal, x.arguments.clone());
            if kind == ExchangeKind::DelayedMessage {
                let (store, pending) = self
                    .store
                    .open_delayed(&x.vhost, &x.name, true)
                    .map_err(|e| format!("cannot open the delayed messages of exchange '{}': {e}", x.name))?;
                report.progress.push(format!(
                    "recovered exchange '{}' in vhost '{}': {pending} delayed messages",
                    x.name, x.vhost
                ));
                exchange.delayed = Some(store);
            }
            self.store
                .attach_dedup_log(&x.vhost, &mut exchange)
                .map_err(|e| format!("cannot open the deduplication cache of exchange '{}': {e}", x.name))?;
            live_dirs.insert(self.store.delayed_dir(&x.vhost, &x.name));
            live_dirs.insert(self.store.hashed_dir("dedup", &x.vhost, &x.name));
            let vh = self.vhosts.entry(x.vhost.clone()).or_insert_with(|| VHost::new(&x.vhost));
            vh.exchanges.insert(name, exchange);
            report.exchanges += 1;
        }
        for q in &defs.queues {
            let dir = self.store.durable_dir(&q.vhost, &q.name);
            let name = ShortStr::from(q.name.as_str());
            // Policy names are set by apply_policies once everything is loaded.
            let args = match self.queue_args(&q.vhost, &q.name, &q.arguments) {
                Ok(effective) => effective.args,
                Err(e) => {
                    report
                        .corrupt
                        .push(format!("queue '{}' in vhost '{}': {}; arguments ignored", q.name, q.vhost, e.text));
                    QueueArgs::default()
                }
            };
            let store =
                QueueStore { backend: backend.clone(), dir: dir.clone(), config: self.store.log_config.clone() };
            let (queue, recovered) =
                // Recovered queues start their x-expires period at the first tick (last used 0).
                Queue::open(name.clone(), true, None, q.auto_delete, q.arguments.clone(), args, store, 0)
                    .map_err(|e| format!("cannot open the log of queue '{}' in vhost '{}': {e}", q.name, q.vhost))?;
            let mut queue = queue;
            queue.sync_id = self.take_sync_id();
            let mut messages = 0;
            for r in &recovered {
                messages += r.unsettled;
                for l in &r.lost {
                    report.corrupt.push(format!(
                        "queue '{}' in vhost '{}': {} holds no message though later segments exist: up to {} \
                         messages (seqs {}..{}) are lost, unless a crash interrupted their sync (then they were \
                         never confirmed)",
                        q.name,
                        q.vhost,
                        l.path.display(),
                        l.end_seq - l.first_seq,
                        l.first_seq,
                        l.end_seq
                    ));
                }
                for c in &r.corrupt {
                    report.corrupt.push(format!(
                        "queue '{}' in vhost '{}': corrupt data in {} at byte {}: {}; the rest of that segment was skipped",
                        q.name,
                        q.vhost,
                        c.path.display(),
                        c.offset,
                        c.reason
                    ));
                }
            }
            live_dirs.insert(dir);
            report.queues += 1;
            report.messages += messages;
            report.progress.push(format!("recovered queue '{}' in vhost '{}': {} messages", q.name, q.vhost, messages));
            let vh = self.vhosts.entry(q.vhost.clone()).or_insert_with(|| VHost::new(&q.vhost));
            vh.queues.insert(name, queue);
        }
        for b in &defs.bindings {
            let Some(vh) = self.vhosts.get_mut(&b.vhost) else { continue };
            let dest = if b.destination_is_queue {
                Destination::Queue(ShortStr::from(b.destination.as_str()))
            } else {
                Destination::Exchange(ShortStr::from(b.destination.as_str()))
            };
            let dest_exists = match &dest {
                Destination::Queue(q) => vh.queues.contains_key(q),
                Destination::Exchange(x) => vh.exchanges.contains_key(x),
            };
            if let (true, Some(x)) = (dest_exists, vh.exchanges.get_mut(b.source.as_str())) {
                x.bind(Binding {
                    destination: dest,
                    routing_key: b.routing_key.as_str().into(),
                    arguments: b.arguments.clone(),
                });
                report.bindings += 1;
            }
        }
        let vhost_names: Vec<String> = self.vhosts.keys().cloned().collect();
        let mut out = Vec::new();
        for v in vhost_names {
            self.apply_policies(&v, 0, &mut out);
        }
        // Logs no definition names: a deletion a crash interrupted, or definitions lost to
        // damage. Either way they are moved aside, never removed.
        self.set_aside_unknown_logs(&live_dirs, &loaded.owners, &mut report)?;
        // Fold the journal into a new snapshot, and start the journal afresh.
        self.defs_dirty = true;
        self.save_definitions().map_err(|e| e.text.to_string())?;
        if loaded.accept_loss {
            // One-shot: later damage is refused again.
            let marker = self.store.dir.join(recovery::ACCEPT_LOSS);
            backend.remove_file(&marker).map_err(|e| io(&format!("cannot remove {}", marker.display()), e))?;
        }
        Ok(report)
    }

    /// The durable definitions as they are now.
    fn definitions(&self) -> Definitions {
        let mut d = Definitions {
            users: Some(
                self.users
                    .list()
                    .map(|u| UserDef {
                        name: u.name.clone(),
                        password_hash: u.password_hash.clone(),
                        hashing_algorithm: u.hashing_algorithm.clone(),
                        tags: u.tags.clone(),
                    })
                    .collect(),
            ),
            permissions: self
                .users
                .permissions()
                .map(|p| PermissionDef {
                    user: p.user.clone(),
                    vhost: p.vhost.clone(),
                    configure: p.configure.as_str().into(),
                    write: p.write.as_str().into(),
                    read: p.read.as_str().into(),
                })
                .collect(),
            topic_permissions: self
                .users
                .topic_permissions()
                .map(|p| TopicPermissionDef {
                    user: p.user.clone(),
                    vhost: p.vhost.clone(),
                    exchange: p.exchange.clone(),
                    write: p.write.as_str().into(),
                    read: p.read.as_str().into(),
                })
                .collect(),
            ..Definitions::default()
        };
        for (p, operator) in
            self.policies.iter().map(|p| (p, false)).chain(self.operator_policies.iter().map(|p| (p, true)))
        {
            d.policies.push(PolicyDef {
                vhost: p.vhost.clone(),
                name: p.name.clone(),
                pattern: p.pattern.clone(),
                apply_to: p.apply_to.as_str().into(),
                priority: p.priority,
                definition: p.definition.clone(),
                operator,
            });
        }
        d.user_limits = self.user_limits.iter().map(|(u, l)| (u.clone(), *l)).collect();
        d.user_limits.sort_by(|a, b| a.0.cmp(&b.0));
        let mut vhosts: Vec<&VHost> = self.vhosts.values().collect();
        vhosts.sort_by(|a, b| a.name.cmp(&b.name));
        for vh in vhosts {
            d.vhosts.push(vh.name.clone());
            if !vh.limits.is_empty() {
                d.vhost_limits.push((vh.name.clone(), vh.limits));
            }
            let durable_exchange = |n: &ShortStr| vh.exchanges.get(n).is_some_and(|x| x.durable);
            let durable_queue =
                |n: &ShortStr| vh.queues.get(n).is_some_and(|q| q.durable && q.exclusive_owner.is_none());
            let mut exchanges: Vec<&Exchange> = vh.exchanges.values().collect();
            exchanges.sort_by(|a, b| a.name.cmp(&b.name));
            for x in exchanges {
                if !x.durable || x.name.is_empty() || is_builtin_exchange(&x.name) {
                    continue;
                }
                d.exchanges.push(exchange_def(&vh.name, x));
            }
            for x in vh.exchanges.values() {
                if !x.durable || x.name.is_empty() {
                    continue;
                }
                for b in x.bindings() {
                    let (dest, is_queue, durable) = match &b.destination {
                        Destination::Queue(q) => (q, true, durable_queue(q)),
                        Destination::Exchange(e) => (e, false, durable_exchange(e)),
                    };
                    if durable {
                        d.bindings.push(binding_def(&vh.name, &x.name, dest, is_queue, b));
                    }
                }
            }
            let mut queues: Vec<&Queue> =
                vh.queues.values().filter(|q| q.durable && q.exclusive_owner.is_none()).collect();
            queues.sort_by(|a, b| a.name.cmp(&b.name));
            for q in queues {
                d.queues.push(queue_def(&vh.name, q));
            }
        }
        d
    }

    /// Makes the definitions that changed durable: topology changes are appended to the journal
    /// (O(1) each); anything else, or a journal grown as large as the snapshot, rewrites the
    /// snapshot and starts a new journal.
    fn save_definitions(&mut self) -> Res {
        self.save_definitions_for(None)
    }

    /// Makes changed definitions durable. For a client connection (`for_conn`), a journal
    /// append is not synced here, under the broker lock: the connection's answers wait until
    /// its host has synced the journal ([`Broker::take_definitions_sync`]), and any sync round
    /// covers it meanwhile. Everyone else (the management API, the broker's own clean-ups) gets
    /// it synced before this returns.
    fn save_definitions_for(&mut self, for_conn: Option<ConnId>) -> Res {
        if self.defs_batched || (!self.defs_dirty && self.def_ops.is_empty()) {
            return Ok(());
        }
        let journal_room = self.store.snapshot_topology + JOURNAL_SLACK;
        let append = !self.defs_dirty
            && self.store.journal.is_some()
            && self.store.journal_ops + self.def_ops.len() <= journal_room;
        let result = if append { self.append_journal(for_conn.is_none()) } else { self.write_snapshot() };
        if append && result.is_ok() {
            if let Some(conn) = for_conn {
                self.journal_unsynced = true;
                self.defs_sync_owed = Some(conn);
            }
        }
        self.defs_dirty = false;
        self.def_ops.clear();
        result.map_err(|e| {
            // The journal's state is unknown after a failed write: the next change rewrites all.
            self.store.journal = None;
            self.errors.push(format!("cannot write the definitions: {e}"));
            ProtocolError::new(ReplyCode::InternalError, format_args!("cannot write the definitions: {e}"))
        })
    }

    /// Runs `f` (many changes, such as a definitions import) and makes what it changed durable
    /// once, at the end, instead of after each change. Nobody must be told of a change before
    /// this returns.
    pub fn batch_definitions<T>(&mut self, f: impl FnOnce(&mut Self) -> Result<T, String>) -> Result<T, String> {
        self.defs_batched = true;
        let result = f(self);
        self.defs_batched = false;
        let saved = self.save_definitions().map_err(|e| e.text.to_string());
        result.and_then(|r| saved.map(|_| r))
    }

    fn append_journal(&mut self, sync: bool) -> std::io::Result<()> {
        let mut records = BytesMut::new();
        for op in &self.def_ops {
            op.encode_record(&mut records);
        }
        let journal = self.store.journal.as_mut().ok_or_else(|| std::io::Error::other("no journal"))?;
        journal.append(&records)?;
        if sync {
            journal.sync_handle().sync()?;
        }
        self.store.journal_ops += self.def_ops.len();
        Ok(())
    }

    /// After a batch of `conn`'s frames: the definitions journal's sync that its answers must
    /// wait for, if its commands appended to the journal. The host syncs it outside the lock and
    /// writes nothing to `conn` until it succeeded; on failure it calls
    /// [`Broker::definitions_sync_failed`].
    pub fn take_definitions_sync(&mut self, conn: ConnId) -> Option<Arc<dyn SyncHandle>> {
        if self.defs_sync_owed != Some(conn) {
            return None;
        }
        self.defs_sync_owed = None;
        self.store.journal.as_ref().map(|j| j.sync_handle())
    }

    /// A sync from [`Broker::take_definitions_sync`] failed: the journal's state is unknown, so
    /// the next change rewrites the whole snapshot (and is synced before it is answered).
    pub fn definitions_sync_failed(&mut self, e: &std::io::Error) {
        self.store.journal = None;
        self.defs_dirty = true;
        self.errors.push(format!("cannot sync the definitions journal: {e}"));
    }

    /// Writes the whole snapshot as the next generation, then a fresh journal for it. A crash
    /// in between leaves the old journal, which the new generation ignores.
    fn write_snapshot(&mut self) -> std::io::Result<()> {
        let mut d = self.definitions();
        d.generation = self.store.generation + 1;
        let backend = self.store.backend.clone();
        self.store.journal = None;
        self.store.keep_previous()?;
        backend.replace_durably(&self.store.definitions_path(), &d.encode())?;
        self.store.generation = d.generation;
        self.store.snapshot_topology = d.topology_len();
        let journal_path = self.store.journal_path();
        backend.replace_durably(&journal_path, &journal_header(d.generation))?;
        self.store.journal = Some(backend.open_append(&journal_path)?);
        self.store.journal_ops = 0;
        Ok(())
    }

    /// The effective arguments of a queue (its declared ones with the policies folded in),
    /// and the names of the policy and operator policy applied.
    fn queue_args(&self, vhost: &str, name: &str, declared: &FieldTable) -> Result<EffectiveArgs, ProtocolError> {
        let (effective, policy, operator_policy) =
            crate::policy::effective_queue_arguments(declared, vhost, name, &self.policies, &self.operator_policies);
        // A policy value that does not parse never makes a queue unusable: the declared
        // arguments (already checked) stand alone then.
        let args = QueueArgs::parse(&effective, name, vhost).or_else(|_| QueueArgs::parse(declared, name, vhost))?;
        Ok(EffectiveArgs { args, policy, operator_policy })
    }

    /// Sets (adds or replaces) a policy or operator policy and applies it to the vhost's
    /// existing queues and exchanges at once.
    #[allow(clippy::too_many_arguments)]
    pub fn set_policy(
        &mut self,
        vhost: &str,
        name: &str,
        pattern: &str,
        apply_to: ApplyTo,
        priority: i64,
        definition: FieldTable,
        operator: bool,
        now_ms: u64,
        out: &mut Vec<(ConnId, Out)>,
    ) -> Result<(), ProtocolError> {
        if !self.vhosts.contains_key(vhost) {
            return Err(not_found("vhost", vhost, vhost));
        }
        let policy = Policy::new(vhost, name, pattern, apply_to, priority, definition, operator)?;
        let list = if operator { &mut self.operator_policies } else { &mut self.policies };
        list.retain(|p| !(p.vhost == vhost && p.name == name));
        list.push(policy);
        self.defs_dirty = true;
        self.apply_policies(vhost, now_ms, out);
        self.save_definitions()
    }

    /// Removes a policy; false when there was none of that name.
    pub fn clear_policy(
        &mut self,
        vhost: &str,
        name: &str,
        operator: bool,
        now_ms: u64,
        out: &mut Vec<(ConnId, Out)>,
    ) -> Result<bool, ProtocolError> {
        let list = if operator { &mut self.operator_policies } else { &mut self.policies };
        let before = list.len();
        list.retain(|p| !(p.vhost == vhost && p.name == name));
        if list.len() == before {
            return Ok(false);
        }
        self.defs_dirty = true;
        self.apply_policies(vhost, now_ms, out);
        self.save_definitions().map(|_| true)
    }

    /// The policies (or operator policies), for the management API.
    pub fn policies(&self, operator: bool) -> &[Policy] {
        if operator {
            &self.operator_policies
        } else {
            &self.policies
        }
    }

    /// Recomputes the effective arguments of every queue and exchange of `vhost`.
    fn apply_policies(&mut self, vhost: &str, now_ms: u64, out: &mut Vec<(ConnId, Out)>) {
        let Some(vh) = self.vhosts.get(vhost) else { return };
        let queues: Vec<(ShortStr, FieldTable)> =
            vh.queues.values().map(|q| (q.name.clone(), q.arguments.clone())).collect();
        let exchanges: Vec<ShortStr> = vh.exchanges.keys().cloned().collect();
        let mut dead = Vec::new();
        for (name, declared) in queues {
            let Ok(effective) = self.queue_args(vhost, &name, &declared) else { continue };
            let Some(q) = self.vhosts.get_mut(vhost).and_then(|v| v.queues.get_mut(&name)) else { continue };
            q.policy = effective.policy;
            q.operator_policy = effective.operator_policy;
            match q.set_args(effective.args) {
                Ok(dropped) => dead.extend(dropped.into_iter().map(|d| (name.clone(), d, "maxlen"))),
                Err(e) => self.errors.push(format!("cannot apply a policy to queue '{name}': {e}")),
            }
        }
        for name in exchanges {
            let ae = crate::policy::policy_alternate_exchange(vhost, &name, &self.policies).map(ShortStr::from);
            if let Some(x) = self.vhosts.get_mut(vhost).and_then(|v| v.exchanges.get_mut(&name)) {
                x.policy_alternate_exchange = ae;
            }
        }
        let vhost: Arc<str> = Arc::from(vhost);
        self.dead_letter(&vhost, dead, now_ms, out);
    }

    /// Storage failures since the last call, for the log.
    pub fn take_errors(&mut self) -> Vec<String> {
        std::mem::take(&mut self.errors)
    }

    /// True when answers wait for a store sync: the server should start one now.
    pub fn sync_wanted(&self) -> bool {
        !self.waiting.is_empty()
    }

    /// True when some log has writes that a sync round should pick up now: appends at once,
    /// settles once [`ACK_SYNC_INTERVAL_MS`] has passed since the acks were last synced.
    pub fn has_unsynced_writes(&self, now_ms: u64) -> bool {
        !self.dirty.is_empty() || !self.dirty_exchanges.is_empty() || self.journal_unsynced || self.acks_due(now_ms)
    }

    fn acks_due(&self, now_ms: u64) -> bool {
        !self.ack_dirty.is_empty() && now_ms >= self.acks_synced_ms.saturating_add(ACK_SYNC_INTERVAL_MS)
    }

    /// Starts a store sync: takes the files written since the last one. Group commit: one
    /// sync covers every write made before this call, from every connection.
    ///
    /// Confirms wait only for appends, so the ack files (settles) are left out of most rounds
    /// and synced together every [`ACK_SYNC_INTERVAL_MS`], or in every round with `all`: an
    /// acknowledged message may come back after a crash within that window (at-least-once), a
    /// confirmed one is never lost.
    pub fn begin_sync(&mut self, now_ms: u64, all: bool) -> SyncJob {
        let epoch = self.write_epoch;
        self.write_epoch += 1;
        let mut handles = Vec::new();
        let acks = all || self.acks_due(now_ms);
        if acks {
            self.acks_synced_ms = now_ms;
            self.dirty.extend(std::mem::take(&mut self.ack_dirty));
        }
        let mut owners = Vec::new();
        for (vhost, name) in std::mem::take(&mut self.dirty) {
            if let Some(q) = self.vhosts.get_mut(&*vhost).and_then(|v| v.queues.get_mut(&name)) {
                handles.extend(q.pending_sync(acks));
                owners.resize(handles.len(), q.sync_id);
                if !acks && q.has_pending_sync() {
                    self.ack_dirty.insert((vhost.clone(), name));
                }
                Self::report_storage(&mut self.warnings, &mut self.notices, &vhost, q);
                if q.storage_trouble().is_some() {
                    // Keep coming back until it is made good: it owes writes.
                    self.ack_dirty.insert((vhost, q.name.clone()));
                }
            }
        }
        for (vhost, name) in std::mem::take(&mut self.dirty_exchanges) {
            let exchange = self.vhosts.get_mut(&*vhost).and_then(|v| v.exchanges.get_mut(&name));
            if let Some(x) = exchange {
                if let Some(d) = x.delayed.as_mut() {
                    handles.extend(d.pending_sync());
                }
                if let Some(c) = x.dedup.as_mut() {
                    handles.extend(c.pending_sync());
                }
            }
        }
        if std::mem::take(&mut self.journal_unsynced) {
            // Topology a confirm may depend on (a queue just declared) is made durable with it.
            if let Some(j) = self.store.journal.as_ref() {
                owners.resize(handles.len(), SYNC_ANY);
                handles.push(j.sync_handle());
                owners.push(SYNC_DEFINITIONS);
            }
        }
        owners.resize(handles.len(), SYNC_ANY);
        self.stats.sync_rounds += 1;
        self.stats.fsyncs += handles.len() as u64;
        SyncJob { epoch, handles, owners }
    }

    /// Logs once when a queue's storage becomes degraded, and once when it is healthy again.
    fn report_storage(warnings: &mut Vec<String>, notices: &mut Vec<String>, vhost: &str, q: &mut Queue) {
        match (q.storage_trouble(), q.storage_reported.is_some()) {
            (Some(why), false) => {
                warnings.push(format!(
                    "queue '{}' in vhost '{vhost}': storage degraded ({why}); publishes that need it are \
                     nacked and its writes retried until they succeed",
                    q.name
                ));
                q.storage_reported = Some(why.to_string());
            }
            (None, true) => {
                notices.push(format!("queue '{}' in vhost '{vhost}': storage healthy again", q.name));
                q.storage_reported = None;
            }
            _ => {}
        }
    }

    fn take_sync_id(&mut self) -> u32 {
        // SYNC_ANY and SYNC_DEFINITIONS are never a queue's; wrapping past them only makes
        // nacks coarser.
        let id = self.next_sync_id;
        self.next_sync_id = self.next_sync_id.wrapping_add(1) % SYNC_DEFINITIONS;
        id
    }

    /// How many queues have degraded storage (see [`QueueInfo::storage_trouble`]).
    pub fn degraded_queues(&self) -> usize {
        self.vhosts.values().flat_map(|v| v.queues.values()).filter(|q| q.storage_trouble().is_some()).count()
    }

    /// Warnings and notices since the last call, for the log.
    pub fn take_warnings(&mut self) -> (Vec<String>, Vec<String>) {
        (std::mem::take(&mut self.warnings), std::mem::take(&mut self.notices))
    }

    /// A sync finished: answers waiting for it go out. On failure the confirms waiting for it
    /// are nacked: those messages may not be on disk.
    ///
    /// `failures` are the owners (from [`SyncJob::owners`]) whose sync failed, with the error:
    /// only the confirms that waited on one of them are nacked.
    pub fn end_sync(
        &mut self,
        epoch: u64,
        failures: Vec<(u32, std::io::Error)>,
        now_ms: u64,
        out: &mut Vec<(ConnId, Out)>,
    ) {
        let mut failed: Vec<u32> = Vec::with_capacity(failures.len());
        for (owner, e) in failures {
            let owner = if owner == SYNC_DEFINITIONS {
                self.definitions_sync_failed(&e);
                SYNC_ANY
            } else {
                owner
            };
            if !failed.contains(&owner) {
                self.errors.push(format!("store sync failed: {e}; confirms waiting for it are nacked"));
                failed.push(owner);
            }
        }
        self.synced_epoch = self.synced_epoch.max(epoch);
        let mut waiting: Vec<ConnId> = self.waiting.iter().copied().collect();
        waiting.sort_unstable();
        let failed = (!failed.is_empty()).then_some((epoch, failed.as_slice()));
        for conn in waiting {
            self.release_deferred(conn, failed, now_ms, out);
        }
    }

    /// Sends the deferred answers of `conn` whose sync is done, in order, acks coalesced into
    /// `multiple` runs. `failed`: the epoch whose sync failed and the owners it failed for;
    /// answers waiting on this epoch or before, on one of those owners, become nacks (and a
    /// commit fails: its channel is closed).
    fn release_deferred(
        &mut self,
        conn: ConnId,
        failed: Option<(u64, &[u32])>,
        now_ms: u64,
        out: &mut Vec<(ConnId, Out)>,
    ) {
        let synced = self.synced_epoch;
        let Some(c) = self.conns.get_mut(&conn) else {
            self.waiting.remove(&conn);
            return;
        };
        let mut still_waiting = false;
        let mut failed_commits: Vec<u16> = Vec::new();
        let mut channels: Vec<u16> = c.channels.keys().copied().collect();
        channels.sort_unstable();
        for channel in channels {
            let Some(ch) = c.channels.get_mut(&channel) else { continue };
            let open = ch.state() == ChannelState::Open;
            // A run of acks: (first, last) publish sequence numbers.
            let mut run: Option<(u64, u64)> = None;
            let flush = |run: &mut Option<(u64, u64)>, out: &mut Vec<(ConnId, Out)>| {
                if let Some((first, last)) = run.take() {
                    if open {
                        let method = Method::BasicAck { delivery_tag: last, multiple: last > first };
                        out.push((conn, Out::Method { channel, method }));
                    }
                }
            };
            while let Some(d) = ch.deferred.front().copied() {
                if d.epoch > synced {
                    still_waiting = true;
                    break;
                }
                ch.deferred.pop_front();
                let hit = failed.is_some_and(|(f, owners)| {
                    d.epoch > 0
                        && d.epoch <= f
                        && (d.target == SYNC_ANY || owners.iter().any(|&o| o == d.target || o == SYNC_ANY))
                });
                let kind = match d.kind {
                    DeferredKind::Ack(seq) if hit => DeferredKind::Nack(seq),
                    DeferredKind::CommitOk if hit => {
                        failed_commits.push(channel);
                        continue;
                    }
                    k => k,
                };
                match kind {
                    DeferredKind::Ack(seq) => {
                        self.stats.confirms += 1;
                        run = Some(match run {
                            Some((first, last)) if last + 1 == seq => (first, seq),
                            other => {
                                let mut prev = other;
                                flush(&mut prev, out);
                                (seq, seq)
                            }
                        });
                    }
                    DeferredKind::Nack(seq) => {
                        flush(&mut run, out);
                        if open {
                            let method = Method::BasicNack { delivery_tag: seq, multiple: false, requeue: false };
                            out.push((conn, Out::Method { channel, method }));
                        }
                    }
                    DeferredKind::CommitOk => {
                        flush(&mut run, out);
                        if open {
                            out.push((conn, Out::Method { channel, method: Method::TxCommitOk }));
                        }
                    }
                }
            }
            flush(&mut run, out);
        }
        if still_waiting {
            self.waiting.insert(conn);
        } else {
            self.waiting.remove(&conn);
        }
        for channel in failed_commits {
            let e = ProtocolError::new(
                ReplyCode::PreconditionFailed,
                "tx.commit failed: the store could not make the transaction's messages durable",
            )
            .on((90, 20));
            self.channel_error(conn, channel, e, now_ms, out);
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The users, permissions and topic permissions, for listing: [`Users::list`],
    /// [`Users::permissions`], [`Users::topic_permissions`], [`Users::permission`] (one user
    /// in one vhost). Changes go through the broker's methods below, which persist them.
    pub fn users(&self) -> &Users {
        &self.users
    }

    // ---- vhosts, users and permissions (the management API's) --------------------------------
    //
    // Every change is durable (in the definitions snapshot) before these return. Errors carry
    // the AMQP reply code that fits (404 NOT_FOUND for a missing user or vhost, 406
    // PRECONDITION_FAILED for an invalid argument) and a message for the HTTP layer.

    /// The vhosts' names, sorted.
    pub fn vhost_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.vhosts.keys().cloned().collect();
        v.sort();
        v
    }

    /// True when the vhost exists.
    pub fn has_vhost(&self, name: &str) -> bool {
        self.vhosts.contains_key(name)
    }

    /// Closes a connection from the broker's side (320 CONNECTION_FORCED): its consumers are
    /// cancelled and its unacked messages requeued at once.
    fn force_close(&mut self, conn: ConnId, why: &str, now_ms: u64, out: &mut Vec<(ConnId, Out)>) {
        let channels: Vec<u16> =
            self.conns.get(&conn).map(|c| c.channels.keys().copied().collect()).unwrap_or_default();
        for ch in channels {
            self.release_channel(conn, ch, now_ms, out);
        }
        self.connection_error(conn, ProtocolError::new(ReplyCode::ConnectionForced, why), out);
    }

    /// Creates a vhost with its built-in exchanges; false when it already existed.
    pub fn add_vhost(&mut self, name: &str) -> Result<bool, ProtocolError> {
        if name.is_empty() {
            return Err(precondition("a vhost name cannot be empty"));
        }
        if self.vhosts.contains_key(name) {
            return Ok(false);
        }
        self.vhosts.insert(name.into(), VHost::new(name));
        self.defs_dirty = true;
        self.save_definitions().map(|_| true)
    }

    /// Deletes a vhost as RabbitMQ does: its connections are closed (320 CONNECTION_FORCED),
    /// its queues (with their messages), exchanges, policies and permissions go. False when
    /// there was no such vhost.
    pub fn delete_vhost(
        &mut self,
        name: &str,
        now_ms: u64,
        out: &mut Vec<(ConnId, Out)>,
    ) -> Result<bool, ProtocolError> {
        if !self.vhosts.contains_key(name) {
            return Ok(false);
        }
        let conns: Vec<ConnId> = self.conns.iter().filter(|(_, c)| &*c.vhost == name).map(|(id, _)| *id).collect();
        for id in conns {
            self.force_close(id, &format!("vhost '{name}' is deleted"), now_ms, out);
        }
        let queues: Vec<ShortStr> =
            self.vhosts.get(name).map(|v| v.queues.keys().cloned().collect()).unwrap_or_default();
        for q in queues {
            self.delete_queue(name, &q, now_ms, out);
        }
        if let Some(vh) = self.vhosts.remove(name) {
            for x in vh.exchanges.values() {
                if x.durable && x.delayed.is_some() {
                    let dir = self.store.delayed_dir(name, &x.name);
                    if let Err(e) = self.store.backend.remove_dir_all(&dir) {
                        if e.kind() != std::io::ErrorKind::NotFound {
                            self.errors
                                .push(format!("cannot remove the log of exchange '{}' in vhost '{name}': {e}", x.name));
                        }
                    }
                }
            }
        }
        self.dirty.retain(|(v, _)| &**v != name);
        self.dirty_exchanges.retain(|(v, _)| &**v != name);
        self.policies.retain(|p| p.vhost != name);
        self.operator_policies.retain(|p| p.vhost != name);
        self.users.forget_vhost(name);
        self.defs_dirty = true;
        self.save_definitions().map(|_| true)
    }

    /// Adds or replaces a user. Tags are kept as given (RabbitMQ's are listed in
    /// [`crate::auth::KNOWN_TAGS`]). The user's connections are not affected.
    pub fn put_user(&mut self, name: &str, password: Password, tags: Vec<String>) -> Result<(), ProtocolError> {
        if name.is_empty() {
            return Err(precondition("a user name cannot be empty"));
        }
        let (password_hash, hashing_algorithm) = match password {
            Password::Clear(p) => (crate::auth::hash_password(&mut self.rng, &p), SHA256.to_string()),
            Password::Hash { password_hash, hashing_algorithm } => {
                let algorithm = if hashing_algorithm.is_empty() { SHA256.to_string() } else { hashing_algorithm };
                if algorithm != SHA256 && algorithm != SHA512 {
                    return Err(precondition(format_args!("unsupported hashing algorithm '{algorithm}'")));
                }
                (password_hash, algorithm)
            }
            Password::None => (String::new(), SHA256.to_string()),
        };
        self.users.put(User { name: name.into(), password_hash, hashing_algorithm, tags });
        self.access_changed(name)
    }

    /// Deletes a user and its permissions; false when there was none. Its open connections are
    /// closed with 320 CONNECTION_FORCED, as RabbitMQ does.
    pub fn delete_user(
        &mut self,
        name: &str,
        now_ms: u64,
        out: &mut Vec<(ConnId, Out)>,
    ) -> Result<bool, ProtocolError> {
        if !self.users.remove(name) {
            return Ok(false);
        }
        self.user_limits.remove(name);
        self.refresh_grants(Some(name));
        let conns: Vec<ConnId> = self.conns.iter().filter(|(_, c)| c.info.user == name).map(|(id, _)| *id).collect();
        for id in conns {
            self.force_close(id, &format!("user '{name}' is deleted"), now_ms, out);
        }
        self.defs_dirty = true;
        self.save_definitions().map(|_| true)
    }

    /// A user by name (whoami).
    pub fn user(&self, name: &str) -> Option<&User> {
        self.users.get(name)
    }

    /// Checks a user name and password (HTTP basic auth); returns the user with its tags.
    /// Loopback-only users (config `loopback_users`) are refused unless `peer_is_loopback`.
    pub fn authenticate_basic(
        &self,
        name: &str,
        password: &str,
        peer_is_loopback: bool,
    ) -> Result<&User, ProtocolError> {
        self.users.check(name, password, peer_is_loopback)
    }

    fn user_and_vhost_exist(&self, user: &str, vhost: &str) -> Res {
        if self.users.get(user).is_none() {
            return Err(ProtocolError::new(ReplyCode::NotFound, format_args!("no user '{user}'")));
        }
        if !self.vhosts.contains_key(vhost) {
            return Err(not_found("vhost", vhost, vhost));
        }
        Ok(())
    }

    /// Sets a user's configure / write / read patterns in a vhost. Open connections of the
    /// user see the change at their next operation.
    /// A user's access changed: its open connections follow at once, and the change is saved
    /// before the caller answers.
    fn access_changed(&mut self, user: &str) -> Res {
        self.refresh_grants(Some(user));
        self.defs_dirty = true;
        self.save_definitions()
    }

    pub fn set_permissions(&mut self, user: &str, vhost: &str, configure: &str, write: &str, read: &str) -> Res {
        self.user_and_vhost_exist(user, vhost)?;
        let p = Permission::new(user, vhost, configure, write, read).map_err(precondition)?;
        self.users.set_permission(p);
        self.access_changed(user)
    }

    /// Clears a user's permissions in a vhost; false when it had none.
    pub fn clear_permissions(&mut self, user: &str, vhost: &str) -> Result<bool, ProtocolError> {
        if !self.users.clear_permission(user, vhost) {
            return Ok(false);
        }
        self.access_changed(user).map(|_| true)
    }

    /// Sets a user's topic permission on an exchange of a vhost (patterns may use `{username}`
    /// and `{vhost}`).
    pub fn set_topic_permissions(&mut self, user: &str, vhost: &str, exchange: &str, write: &str, read: &str) -> Res {
        self.user_and_vhost_exist(user, vhost)?;
        let p = TopicPermission::new(user, vhost, exchange, write, read).map_err(precondition)?;
        self.users.set_topic_permission(p);
        self.access_changed(user)
    }

    /// Clears a user's topic permission on one exchange, or on all when `exchange` is None;
    /// false when there was none.
    pub fn clear_topic_permissions(
        &mut self,
        user: &str,
        vhost: &str,
        exchange: Option<&str>,
    ) -> Result<bool, ProtocolError> {
        if !self.users.clear_topic_permission(user, vhost, exchange) {
            return Ok(false);
        }
        self.access_changed(user).map(|_| true)
    }

    /// Registers a connection after connection.open; refuses a vhost that does not exist, or
    /// that the user has no permissions in, with RabbitMQ's words.
    pub fn open_connection(&mut self, conn: ConnId, info: ConnInfo) -> Res {
        if !self.vhosts.contains_key(&info.vhost) {
            return Err(ProtocolError::new(ReplyCode::NotAllowed, format_args!("vhost {} not found", info.vhost)));
        }
        if let Some(max) = self.config.connection_max {
            let clients = self.conns.keys().filter(|&&c| c != crate::broker::management::MANAGEMENT_CONN).count();
            if clients >= max as usize {
                return Err(ProtocolError::new(
                    ReplyCode::NotAllowed,
                    format_args!("connection refused: node connection limit ({max}) is reached"),
                ));
            }
        }
        self.check_vhost_connection_limit(&info)?;
        self.check_user_connection_limit(&info)?;
        let Some(grants) = self.users.grants(&info.user, &info.vhost) else {
            return Err(ProtocolError::new(
                ReplyCode::NotAllowed,
                format_args!("access to vhost '{}' refused for user '{}'", info.vhost, info.user),
            ));
        };
        let cancel_notify = info.has_capability("consumer_cancel_notify");
        let vhost: Arc<str> = info.vhost.as_str().into();
        self.conns.insert(
            conn,
            Conn {
                info,
                vhost,
                grants,
                write_ok: None,
                cancel_notify,
                channels: HashMap::default(),
                closing: false,
                out_bytes: Arc::default(),
                flow_blocked: false,
                alarm_blocked: false,
                blocked_sent: false,
                owns_exclusive: false,
            },
        );
        self.counters.connections_opened += 1;
        Ok(())
    }

    /// Handles one frame of channel 1 or above.
    pub fn handle_frame(&mut self, conn: ConnId, frame: Frame, now_ms: u64, out: &mut Vec<(ConnId, Out)>) {
        if self.alarms.any() && matches!(frame, Frame::Method { method: Method::BasicPublish { .. }, .. }) {
            self.block_publisher(conn, out);
        }
        let over_user_channels = match frame {
            Frame::Method { method: Method::ChannelOpen, .. } => self.check_user_channel_limit(conn).err(),
            _ => None,
        };
        let Some(c) = self.conns.get_mut(&conn) else { return };
        if c.closing {
            return;
        }
        let channel = frame.channel();
        let max_body = self.config.max_message_size;
        let channel_max = c.info.channel_max;
        let assembled = match c.channels.get_mut(&channel) {
            None => match frame {
                Frame::Method { method: Method::ChannelOpen, .. } => {
                    // As RabbitMQ: channel_max bounds how many channels are open, not their
                    // numbers. Channels being closed still count until their close-ok.
                    let open = c.channels.len();
                    if channel == 0 {
                        let e = ProtocolError::new(ReplyCode::NotAllowed, "channel 0 is the connection's").on((20, 10));
                        self.connection_error(conn, e, out);
                    } else if channel_max != 0 && open >= usize::from(channel_max) {
                        let e = ProtocolError::new(
                            ReplyCode::NotAllowed,
                            format_args!(
                                "number of channels opened ({open}) has reached the negotiated channel_max ({channel_max})"
                            ),
                        )
                        .on((20, 10));
                        self.connection_error(conn, e, out);
                    } else if let Some(e) = over_user_channels {
                        self.connection_error(conn, e.on((20, 10)), out);
                    } else {
                        let ch = Channel::new(self.config.unacked_max_per_channel.map_or(usize::MAX, |n| n as usize));
                        c.channels.insert(channel, Box::new(ch));
                        self.counters.channels_opened += 1;
                        out.push((conn, Out::Method { channel, method: Method::ChannelOpenOk }));
                    }
                    return;
                }
                Frame::Method { method, .. } => {
                    let e = ProtocolError::new(ReplyCode::ChannelError, "expected 'channel.open'").on(method.ids());
                    self.connection_error(conn, e, out);
                    return;
                }
                _ => {
                    // RabbitMQ 3.10 answers content on a channel that is not open as an
                    // unexpected frame (505), not as a channel error.
                    let e = ProtocolError::new(
                        ReplyCode::UnexpectedFrame,
                        format_args!("content frame on channel {channel}, which is not open"),
                    );
                    self.connection_error(conn, e, out);
                    return;
                }
            },
            Some(ch) if ch.state() == ChannelState::Closing => {
                match frame {
                    Frame::Method { method: Method::ChannelCloseOk, .. } => {
                        c.channels.remove(&channel);
                    }
                    Frame::Method { method: Method::ChannelClose { .. }, .. } => {
                        out.push((conn, Out::Method { channel, method: Method::ChannelCloseOk }));
                    }
                    _ => {}
                }
                return;
            }
            Some(ch) => ch.assembler.push(frame, max_body),
        };
        let result = match assembled {
            Ok(None) => Ok(()),
            Ok(Some(cmd)) => self.command(conn, channel, cmd, now_ms, out),
            Err(e) => Err(e),
        };
        self.command_result(conn, channel, result, now_ms, out);
    }

    /// A whole content-bearing command (basic.publish with its header and body) that the
    /// connection's task assembled ahead, outside the lock ([`warren_amqp::assemble_ahead`]).
    /// It is taken exactly as its frames would be through [`Broker::handle_frame`]: where the
    /// channel is open and between commands, as the command its assembler would have made;
    /// anywhere else as its method frame alone, which is then an error or dropped, and so are
    /// the header and body after it.
    pub fn handle_content(
        &mut self,
        conn: ConnId,
        channel: u16,
        content: Assembled,
        now_ms: u64,
        out: &mut Vec<(ConnId, Out)>,
    ) {
        let between_commands = self.conns.get(&conn).is_some_and(|c| {
            !c.closing
                && c.channels
                    .get(&channel)
                    .is_some_and(|ch| ch.state() == ChannelState::Open && !ch.assembler.in_progress())
        });
        if !between_commands {
            let (Assembled::Content { method, .. } | Assembled::Method(method)) = content;
            self.handle_frame(conn, Frame::Method { channel, method }, now_ms, out);
            return;
        }
        if self.alarms.any() && matches!(content, Assembled::Content { method: Method::BasicPublish { .. }, .. }) {
            self.block_publisher(conn, out);
        }
        let result = self.command(conn, channel, content, now_ms, out);
        self.command_result(conn, channel, result, now_ms, out);
    }

    /// A command's error closes its channel (a soft error) or its connection (a hard one).
    fn command_result(&mut self, conn: ConnId, channel: u16, result: Res, now_ms: u64, out: &mut Vec<(ConnId, Out)>) {
        if let Err(e) = result {
            if e.code.is_hard() {
                self.connection_error(conn, e, out);
            } else {
                self.channel_error(conn, channel, e, now_ms, out);
            }
        }
    }

    /// Ends a batch of frames from `conn`: answers that need no sync (or whose sync is done)
    /// go out, confirms coalesced with `multiple` where they form a run.
    pub fn end_batch(&mut self, conn: ConnId, out: &mut Vec<(ConnId, Out)>) {
        // Nothing failed here, so no commit is failed and `now_ms` is not needed.
        self.release_deferred(conn, None, 0, out);
    }

    /// The connection is gone (socket closed, or closed by protocol): requeue its unacked
    /// messages, cancel its consumers, delete its exclusive queues.
    pub fn connection_closed(&mut self, conn: ConnId, now_ms: u64, out: &mut Vec<(ConnId, Out)>) {
        let Some(c) = self.conns.get(&conn) else { return };
        let mut channels: Vec<u16> = c.channels.keys().copied().collect();
        channels.sort_unstable();
        self.release_channels(conn, &channels, now_ms, out);
        let Some(c) = self.conns.remove(&conn) else { return };
        self.counters.connections_closed += 1;
        if let Some(vh) = self.vhosts.get(&*c.vhost).filter(|_| c.owns_exclusive) {
            let exclusive: Vec<ShortStr> =
                vh.queues.values().filter(|q| q.exclusive_owner == Some(conn)).map(|q| q.name.clone()).collect();
            for q in exclusive {
                self.delete_queue(&c.vhost, &q, now_ms, out);
            }
        }
        self.waiting.remove(&conn);
        // Auto-delete queues and exchanges may have gone with the connection's consumers.
        let _ = self.save_definitions();
    }

    /// True once the broker closed the connection (connection.close sent); the server then
    /// waits for close-ok.
    pub fn is_closing(&self, conn: ConnId) -> bool {
        self.conns.get(&conn).is_some_and(|c| c.closing)
    }

    /// Flow control, like RabbitMQ's credit flow: true (once) when the connection published
    /// into a queue faster than that queue's consumers take messages, so that messages started
    /// going to disk while a consumer's connection is full. The server then stops reading from
    /// the publisher until [`Broker::take_flow_released`] says a consumer caught up (or a short
    /// time passes), so the queue stays in memory and the publisher goes at the consumers'
    /// pace. Queues without consumers, or whose consumers are held back by their prefetch, do
    /// not block publishers: their backlog is paged to disk as usual.
    pub fn take_flow_blocked(&mut self, conn: ConnId) -> bool {
        self.conns.get_mut(&conn).is_some_and(|c| std::mem::take(&mut c.flow_blocked))
    }

    /// True (once) when a consumer's connection drained, or the resource alarms cleared, since
    /// the last call.
    pub fn take_flow_released(&mut self) -> bool {
        std::mem::take(&mut self.flow_released)
    }

    /// The resource alarms in force.
    pub fn alarms(&self) -> Alarms {
        self.alarms
    }

    /// Sets the resource alarms, as RabbitMQ's memory and disk alarms work. While one is in
    /// force, a connection that publishes is blocked: it gets connection.blocked (when its
    /// client announced the capability) and the server stops reading from it; connections that
    /// only consume go on, so queues drain. Queues keep no new messages in memory meanwhile
    /// (they go to disk). When every alarm clears, blocked connections get
    /// connection.unblocked and are read again.
    pub fn set_alarms(&mut self, alarms: Alarms, out: &mut Vec<(ConnId, Out)>) {
        let was = self.alarms;
        self.alarms = alarms;
        if was.any() && !alarms.any() {
            for (&id, c) in self.conns.iter_mut() {
                c.alarm_blocked = false;
                if std::mem::take(&mut c.blocked_sent) && !c.closing {
                    out.push((id, Out::Method { channel: 0, method: Method::ConnectionUnblocked }));
                }
            }
            self.flow_released = true;
        }
    }

    /// A memory measurement: `used` bytes against the `watermark`. Sets or clears the memory
    /// alarm, and keeps the headroom left: publishes until the next measurement count against
    /// it, and the alarm is raised as soon as they exceed it, so a flood cannot overshoot the
    /// watermark by what arrives between two measurements.
    pub fn set_memory_use(&mut self, used: u64, watermark: u64, out: &mut Vec<(ConnId, Out)>) {
        (self.resource_use.mem_used, self.resource_use.mem_limit) = (used, watermark);
        self.memory_headroom = Some(watermark.saturating_sub(used));
        self.ingested = 0;
        let alarms = Alarms { memory: used >= watermark, ..self.alarms };
        self.set_alarms(alarms, out);
    }

    /// A disk measurement: `free` bytes against the `limit`. Sets or clears the disk alarm.
    ///
    /// Like the memory alarm, it keeps the headroom (`free - limit`): bytes the queues write
    /// until the next measurement count against it, and the alarm is raised as soon as they
    /// exceed it, so a flood is blocked before the disk fills, not a measurement later.
    pub fn set_disk_free(&mut self, free: u64, limit: u64, out: &mut Vec<(ConnId, Out)>) {
        (self.resource_use.disk_free, self.resource_use.disk_free_limit) = (free, limit);
        self.disk_headroom = Some(free.saturating_sub(limit));
        self.disk_written = 0;
        let alarms = Alarms { disk: free < limit, ..self.alarms };
        self.set_alarms(alarms, out);
    }

    /// The last memory and disk measurements.
    pub fn resource_use(&self) -> ResourceUse {
        self.resource_use
    }

    /// Counts a published message against the memory headroom.
    fn count_ingest(&mut self, bytes: usize) {
        if let Some(headroom) = self.memory_headroom {
            // What a message costs beyond its body: its header, bookkeeping and buffers.
            self.ingested += bytes as u64 + MESSAGE_OVERHEAD_BYTES;
            if self.ingested > headroom && !self.alarms.memory {
                self.alarms.memory = true;
            }
        }
    }

    /// True while the connection is blocked by a resource alarm: do not read from it.
    pub fn is_alarm_blocked(&self, conn: ConnId) -> bool {
        self.alarms.any() && self.conns.get(&conn).is_some_and(|c| c.alarm_blocked)
    }

    /// Opens a connection for the broker's own use on `vhost`, allowed everything.
    pub(crate) fn open_internal_connection(&mut self, conn: ConnId, vhost: &str) -> Res {
        let everything = crate::auth::Permission::new("", vhost, ".*", ".*", ".*")
            .map_err(|e| ProtocolError::new(ReplyCode::InternalError, e))?;
        let grants = Arc::new(crate::auth::Grants { permission: everything, topic: Vec::new(), impersonator: true });
        let info = ConnInfo {
            user: String::new(),
            vhost: vhost.to_string(),
            peer: "internal".into(),
            client_properties: FieldTable::new(),
            channel_max: 1,
            session: Session::default(),
        };
        self.conns.insert(
            conn,
            Conn {
                info,
                vhost: vhost.into(),
                grants,
                write_ok: None,
                cancel_notify: false,
                channels: HashMap::default(),
                closing: false,
                out_bytes: Arc::default(),
                flow_blocked: false,
                alarm_blocked: false,
                blocked_sent: false,
                owns_exclusive: false,
            },
        );
        Ok(())
    }

    /// A connection publishes under an alarm: it is blocked from now on (and told once).
    fn block_publisher(&mut self, conn: ConnId, out: &mut Vec<(ConnId, Out)>) {
        let reason = self.alarms.reason();
        let Some(c) = self.conns.get_mut(&conn) else { return };
        c.alarm_blocked = true;
        if !c.blocked_sent && c.info.has_capability("connection.blocked") {
            c.blocked_sent = true;
            out.push((conn, Out::Method { channel: 0, method: Method::ConnectionBlocked { reason } }));
        }
    }

    /// The server wrote `bytes` of deliveries to the connection's socket. (The server itself
    /// takes them off the connection's [`Outbound`] count and calls [`Broker::on_writable`]
    /// only when that makes it writable again.)
    pub fn on_written(&mut self, conn: ConnId, bytes: usize, now_ms: u64, out: &mut Vec<(ConnId, Out)>) {
        let Some(c) = self.conns.get(&conn) else { return };
        if c.out_bytes.written(bytes) {
            self.on_writable(conn, now_ms, out);
        }
    }

    /// The count of bytes handed to the connection and not yet written (shared with its task).
    pub fn outbound(&self, conn: ConnId) -> Option<Arc<Outbound>> {
        self.conns.get(&conn).map(|c| c.out_bytes.clone())
    }

    /// A full connection can take deliveries again ([`Outbound::written`] said so): its
    /// consumers' queues deliver what they held back, and flow-blocked publishers may go on.
    pub fn on_writable(&mut self, conn: ConnId, now_ms: u64, out: &mut Vec<(ConnId, Out)>) {
        let Some(c) = self.conns.get(&conn) else { return };
        self.flow_released = true;
        let queues: Vec<ShortStr> =
            c.channels.values().flat_map(|ch| ch.consumers.values().map(|co| co.queue.clone())).collect();
        let vhost = c.vhost.clone();
        for q in queues {
            self.dispatch(&vhost, &q, now_ms, out);
        }
    }

    /// Periodic work: the consumer acknowledgement timeout.
    /// Periodic work: message TTL at queue heads, queue expiry (`x-expires`), and the consumer
    /// acknowledgement timeout.
    pub fn tick(&mut self, now_ms: u64, out: &mut Vec<(ConnId, Out)>) {
        self.tick_delayed(now_ms, out);
        self.tick_queues(now_ms, out);
        self.tick_consumer_timeouts(now_ms, out);
        let _ = self.save_definitions();
    }

    /// Routes the delayed messages that are due.
    fn tick_delayed(&mut self, now_ms: u64, out: &mut Vec<(ConnId, Out)>) {
        let mut due = Vec::new();
        for vh in self.vhosts.values_mut() {
            for x in vh.exchanges.values_mut() {
                let Some(store) = x.delayed.as_mut() else { continue };
                match store.take_due(now_ms) {
                    Ok(msgs) => {
                        if !msgs.is_empty() {
                            if x.durable {
                                self.dirty_exchanges.insert((Arc::from(vh.name.as_str()), x.name.clone()));
                            }
                            due.push((Arc::<str>::from(vh.name.as_str()), x.name.clone(), msgs));
                        }
                    }
                    Err(e) => self.errors.push(format!("delayed exchange '{}': {e}", x.name)),
                }
            }
        }
        for (vhost, exchange, msgs) in due {
            for msg in msgs {
                let cc = crate::dead_letter::cc_keys(&msg);
                let mut keys: Vec<&str> = vec![&msg.routing_key];
                keys.extend(cc.iter().map(String::as_str));
                let queues = self.route(&vhost, &exchange, &keys, msg.properties.headers.as_ref(), &msg.raw_properties);
                let (sync, _) = self.enqueue(&vhost, &queues, &msg, now_ms, out);
                if sync.failed {
                    self.errors.push(format!(
                        "a delayed message of exchange '{exchange}' came due but a queue's storage could not take it"
                    ));
                }
            }
        }
    }

    fn tick_queues(&mut self, now_ms: u64, out: &mut Vec<(ConnId, Out)>) {
        let mut to_expire = Vec::new();
        let mut unused = Vec::new();
        for vh in self.vhosts.values_mut() {
            for q in vh.queues.values_mut() {
                if q.last_used_ms == 0 {
                    // Recovered at start: the x-expires period starts now.
                    q.last_used_ms = now_ms;
                }
                if q.may_expire && !q.is_empty() {
                    to_expire.push((vh.name.clone(), q.name.clone()));
                }
                if q.args
                    .expires_ms
                    .is_some_and(|e| q.consumers.is_empty() && now_ms.saturating_sub(q.last_used_ms) >= e)
                {
                    unused.push((vh.name.clone(), q.name.clone()));
                }
            }
        }
        for (vhost, queue) in to_expire {
            self.expire(&vhost, &queue, now_ms, out);
        }
        for (vhost, queue) in unused {
            self.delete_queue(&vhost, &queue, now_ms, out);
        }
    }

    fn tick_consumer_timeouts(&mut self, now_ms: u64, out: &mut Vec<(ConnId, Out)>) {
        let Some(timeout) = self.config.consumer_timeout_ms else { return };
        let mut expired = Vec::new();
        for (&conn, c) in &self.conns {
            if c.closing {
                continue;
            }
            for (&channel, ch) in &c.channels {
                if ch.state() != ChannelState::Open {
                    continue;
                }
                if let Some(consumer) = ch.overdue(now_ms.saturating_sub(timeout)) {
                    let consumer = consumer.filter(|t| ch.consumers.contains_key(t));
                    expired.push((conn, channel, consumer, c.cancel_notify));
                }
            }
        }
        for (conn, channel, consumer, cancel_notify) in expired {
            match consumer {
                Some(tag) if cancel_notify => self.expire_consumer(conn, channel, tag, now_ms, out),
                _ => {
                    let e = precondition(format_args!(
                        "delivery acknowledgement on channel {channel} timed out. Timeout value used: {timeout} ms. This timeout value can be configured, see consumers doc guide to learn more"
                    ));
                    self.channel_error(conn, channel, e, now_ms, out);
                }
            }
        }
    }

    /// A consumer that held a message past the timeout and understands basic.cancel: cancel
    /// it and put all its unacked messages back.
    fn expire_consumer(
        &mut self,
        conn: ConnId,
        channel: u16,
        tag: ShortStr,
        now_ms: u64,
        out: &mut Vec<(ConnId, Out)>,
    ) {
        let Some(c) = self.conns.get_mut(&conn) else { return };
        let vhost = c.vhost.clone();
        let Some(ch) = c.channels.get_mut(&channel) else { return };
        let mine = ch.take_unacked_of(&tag);
        ch.reclaimed.extend(mine.iter().map(|u| u.delivery_tag));
        out.push((
            conn,
            Out::Method { channel, method: Method::BasicCancel { consumer_tag: tag.clone(), nowait: true } },
        ));
        let queue = self.detach_consumer(conn, channel, &tag, now_ms);
        self.requeue(&vhost, mine, now_ms, out);
        if let Some(queue) = queue {
            self.after_consumer_left(&vhost, &queue, now_ms, out);
        }
    }

    pub fn overview(&self) -> Overview {
        let mut o = Overview { connections: self.conns.len(), store: self.stats, ..Default::default() };
        for c in self.conns.values() {
            o.channels += c.channels.len();
        }
        for vh in self.vhosts.values() {
            o.exchanges += vh.exchanges.len();
            o.queues += vh.queues.len();
            for q in vh.queues.values() {
                o.consumers += q.consumers.len();
                o.messages_ready += u64::from(q.message_count());
                o.messages_unacked += q.unacked() as u64;
            }
        }
        o
    }

    /// The message and object counters since start. Channels closed is derived: a channel
    /// leaves the broker only once, so it is those opened less those open now.
    pub fn counters(&self) -> crate::metrics::Counters {
        let open: usize = self.conns.values().map(|c| c.channels.len()).sum();
        let mut c = self.counters;
        c.channels_closed = c.channels_opened.saturating_sub(open as u64);
        c
    }

    /// Where the broker keeps its data (the metrics endpoint reports the free space there).
    pub fn data_dir(&self) -> &std::path::Path {
        &self.store.dir
    }

    pub fn queues(&self) -> Vec<QueueInfo> {
        let mut v: Vec<QueueInfo> =
            self.vhosts.values().flat_map(|vh| vh.queues.values().map(move |q| Self::queue_info(vh, q))).collect();
        v.sort_by(|a, b| (&a.vhost, &a.name).cmp(&(&b.vhost, &b.name)));
        v
    }

    fn queue_info(vh: &VHost, q: &Queue) -> QueueInfo {
        QueueInfo {
            vhost: vh.name.clone(),
            name: q.name.to_string(),
            durable: q.durable,
            exclusive: q.exclusive_owner.is_some(),
            auto_delete: q.auto_delete,
            messages_ready: q.message_count(),
            messages_unacked: q.unacked() as u32,
            consumers: q.consumer_count(),
            policy: q.policy.clone(),
            operator_policy: q.operator_policy.clone(),
            arguments: q.arguments.clone(),
            storage_trouble: q.storage_trouble().map(str::to_string),
        }
    }

    /// The (vhost, name) of every queue, unsorted: cheap to take under the lock, so that a
    /// long listing can then fetch the details a chunk at a time ([`Broker::queue_details`])
    /// instead of holding the lock for all of them.
    pub fn queue_keys(&self) -> Vec<(String, String)> {
        self.vhosts.values().flat_map(|vh| vh.queues.keys().map(move |q| (vh.name.clone(), q.to_string()))).collect()
    }

    /// Whether the queue exists.
    pub fn has_queue(&self, vhost: &str, name: &str) -> bool {
        self.vhosts.get(vhost).is_some_and(|vh| vh.queues.contains_key(name))
    }

    /// The details and message counters of these queues, in this order; a queue deleted since
    /// its key was taken is left out.
    pub fn queue_details(&self, keys: &[(String, String)]) -> Vec<(QueueInfo, crate::broker::management::QueueStats)> {
        keys.iter()
            .filter_map(|(v, n)| {
                let vh = self.vhosts.get(v.as_str())?;
                let q = vh.queues.get(n.as_str())?;
                let stats =
                    crate::broker::management::QueueStats { vhost: v.clone(), name: n.clone(), counters: q.counters };
                Some((Self::queue_info(vh, q), stats))
            })
            .collect()
    }

    // ---- errors ----------------------------------------------------------------------------

    fn connection_error(&mut self, conn: ConnId, e: ProtocolError, out: &mut Vec<(ConnId, Out)>) {
        let Some(c) = self.conns.get_mut(&conn) else { return };
        c.closing = true;
        out.push((
            conn,
            Out::Method {
                channel: 0,
                method: Method::ConnectionClose {
                    reply_code: e.code.code(),
                    reply_text: ShortStr::from(e.reply_text()),
                    class_id: e.class_id,
                    method_id: e.method_id,
                },
            },
        ));
    }

    fn channel_error(
        &mut self,
        conn: ConnId,
        channel: u16,
        e: ProtocolError,
        now_ms: u64,
        out: &mut Vec<(ConnId, Out)>,
    ) {
        self.release_channel(conn, channel, now_ms, out);
        let Some(ch) = self.conns.get_mut(&conn).and_then(|c| c.channels.get_mut(&channel)) else { return };
        ch.start_closing();
        ch.assembler.reset();
        out.push((
            conn,
            Out::Method {
                channel,
                method: Method::ChannelClose {
                    reply_code: e.code.code(),
                    reply_text: ShortStr::from(e.reply_text()),
                    class_id: e.class_id,
                    method_id: e.method_id,
                },
            },
        ));
    }

    /// Cancels the channel's consumers and requeues its unacked messages; the channel entry
    /// stays (the caller removes it or marks it closing).
    fn release_channel(&mut self, conn: ConnId, channel: u16, now_ms: u64, out: &mut Vec<(ConnId, Out)>) {
        self.release_channels(conn, &[channel], now_ms, out);
    }

    /// Cancels the consumers of these channels of `conn` and requeues their unacked messages.
    /// Every consumer goes first, so that requeued messages cannot be handed straight back to
    /// them (nor to another channel of the same, closing connection); the queues deliver again
    /// only once the messages are back in place.
    fn release_channels(&mut self, conn: ConnId, channels: &[u16], now_ms: u64, out: &mut Vec<(ConnId, Out)>) {
        let Some(vhost) = self.conns.get(&conn).map(|c| c.vhost.clone()) else { return };
        let mut unacked: Vec<Unacked> = Vec::new();
        let mut queues = Vec::new();
        for &channel in channels {
            let Some(ch) = self.conns.get_mut(&conn).and_then(|c| c.channels.get_mut(&channel)) else { continue };
            unacked.extend(ch.take_all_unacked());
            let tags: Vec<ShortStr> = ch.consumers.keys().cloned().collect();
            ch.tx = None;
            ch.deferred.clear();
            if let Some((_, suffix)) = ch.reply_to.take() {
                self.reply_targets.remove(&suffix);
            }
            for tag in tags {
                if let Some(q) = self.detach_consumer(conn, channel, &tag, now_ms) {
                    if !queues.contains(&q) {
                        queues.push(q);
                    }
                }
            }
        }
        self.requeue(&vhost, unacked, now_ms, out);
        for q in queues {
            self.after_consumer_left(&vhost, &q, now_ms, out);
        }
    }

    // ---- commands --------------------------------------------------------------------------

    fn command(
        &mut self,
        conn: ConnId,
        channel: u16,
        cmd: Assembled,
        now_ms: u64,
        out: &mut Vec<(ConnId, Out)>,
    ) -> Res {
        let (method, content) = match cmd {
            Assembled::Method(m) => (m, None),
            Assembled::Content { method, properties, raw_properties, body } => {
                (method, Some((properties, raw_properties, body)))
            }
        };
        let ids = method.ids();
        let result = self.method(conn, channel, method, content, now_ms, out);
        // A durable definition that changed is on disk before the client hears of it: the
        // answer is in `out`, written only after this returns, and for a client only after its
        // host synced the journal (`take_definitions_sync`).
        let saved = self.save_definitions_for((conn != crate::broker::management::MANAGEMENT_CONN).then_some(conn));
        result.and(saved).map_err(|e| if e.class_id == 0 { e.on(ids) } else { e })
    }

    fn reply(out: &mut Vec<(ConnId, Out)>, conn: ConnId, channel: u16, method: Method) {
        out.push((conn, Out::Method { channel, method }));
    }

    fn method(
        &mut self,
        conn: ConnId,
        channel: u16,
        method: Method,
        content: Option<(Box<BasicProperties>, Bytes, Bytes)>,
        now_ms: u64,
        out: &mut Vec<(ConnId, Out)>,
    ) -> Res {
        let mut method = method;
        strip_cr_lf_names(&mut method);
        match method {
            Method::ChannelOpen => Err(ProtocolError::new(ReplyCode::ChannelError, "second 'channel.open' seen")),
            Method::ChannelClose { .. } => {
                self.release_channel(conn, channel, now_ms, out);
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.channels.remove(&channel);
                }
                Self::reply(out, conn, channel, Method::ChannelCloseOk);
                Ok(())
            }
            Method::ChannelCloseOk => Ok(()),
            Method::ChannelFlow { active } => {
                // RabbitMQ never pauses deliveries on a client's request: active=false closes
                // the connection with 540, and clients' test suites rely on it.
                if !active {
                    return Err(ProtocolError::new(ReplyCode::NotImplemented, "active=false"));
                }
                Self::reply(out, conn, channel, Method::ChannelFlowOk { active });
                Ok(())
            }
            Method::ChannelFlowOk { .. } => Ok(()),
            Method::ExchangeDeclare { exchange, kind, passive, durable, auto_delete, internal, nowait, arguments } => {
                self.exchange_declare(conn, &exchange, &kind, passive, durable, auto_delete, internal, arguments)?;
                if !nowait {
                    Self::reply(out, conn, channel, Method::ExchangeDeclareOk);
                }
                Ok(())
            }
            Method::ExchangeDelete { exchange, if_unused, nowait } => {
                self.check(conn, Access::Configure, "exchange", &exchange)?;
                self.exchange_delete(conn, &exchange, if_unused)?;
                if !nowait {
                    Self::reply(out, conn, channel, Method::ExchangeDeleteOk);
                }
                Ok(())
            }
            Method::ExchangeBind { destination, source, routing_key, nowait, arguments } => {
                self.check(conn, Access::Write, "exchange", &destination)?;
                self.check(conn, Access::Read, "exchange", &source)?;
                self.bind(conn, Destination::Exchange(destination), &source, routing_key, arguments)?;
                if !nowait {
                    Self::reply(out, conn, channel, Method::ExchangeBindOk);
                }
                Ok(())
            }
            Method::ExchangeUnbind { destination, source, routing_key, nowait, arguments } => {
                self.check(conn, Access::Write, "exchange", &destination)?;
                self.check(conn, Access::Read, "exchange", &source)?;
                self.unbind(conn, Destination::Exchange(destination), &source, routing_key, arguments)?;
                if !nowait {
                    Self::reply(out, conn, channel, Method::ExchangeUnbindOk);
                }
                Ok(())
            }
            Method::QueueDeclare { queue, passive, durable, exclusive, auto_delete, nowait, arguments } => {
                let (name, messages, consumers) = self.queue_declare(
                    conn,
                    channel,
                    queue,
                    passive,
                    durable,
                    exclusive,
                    auto_delete,
                    arguments,
                    now_ms,
                )?;
                // As RabbitMQ counts them: every declare but a passive one.
                self.counters.queues_declared += u64::from(!passive);
                if !nowait {
                    Self::reply(
                        out,
                        conn,
                        channel,
                        Method::QueueDeclareOk { queue: name, message_count: messages, consumer_count: consumers },
                    );
                }
                Ok(())
            }
            Method::QueueBind { queue, exchange, routing_key, nowait, arguments } => {
                let queue = self.resolve_queue_name(conn, channel, queue)?;
                self.check(conn, Access::Write, "queue", &queue)?;
                self.check(conn, Access::Read, "exchange", &exchange)?;
                self.bind(conn, Destination::Queue(queue), &exchange, routing_key, arguments)?;
                if !nowait {
                    Self::reply(out, conn, channel, Method::QueueBindOk);
                }
                Ok(())
            }
            Method::QueueUnbind { queue, exchange, routing_key, arguments } => {
                let queue = self.resolve_queue_name(conn, channel, queue)?;
                self.check(conn, Access::Write, "queue", &queue)?;
                self.check(conn, Access::Read, "exchange", &exchange)?;
                self.unbind(conn, Destination::Queue(queue), &exchange, routing_key, arguments)?;
                Self::reply(out, conn, channel, Method::QueueUnbindOk);
                Ok(())
            }
            Method::QueuePurge { queue, nowait } => {
                let queue = self.resolve_queue_name(conn, channel, queue)?;
                self.check(conn, Access::Read, "queue", &queue)?;
                let (vhost, q) = self.queue_for_use(conn, &queue)?;
                let n = q.purge().map_err(|e| internal(format_args!("cannot purge queue '{queue}': {e}")))?;
                if q.durable {
                    let key = (vhost, q.name.clone());
                    self.dirty.insert(key);
                }
                if !nowait {
                    Self::reply(out, conn, channel, Method::QueuePurgeOk { message_count: n });
                }
                Ok(())
            }
            Method::QueueDelete { queue, if_unused, if_empty, nowait } => {
                let queue = self.resolve_queue_name(conn, channel, queue)?;
                self.check(conn, Access::Configure, "queue", &queue)?;
                let vhost = self.vhost_of(conn)?;
                // delete-ok goes before the basic.cancel of consumers on this channel, as in
                // RabbitMQ: py-amqp (kombu, Celery) fails a queue_delete that sees the cancel first.
                let at = out.len();
                let n = match self.vhosts.get(&*vhost).and_then(|v| v.queues.get(&queue)) {
                    // Deleting a queue that does not exist succeeds, as in RabbitMQ.
                    None => 0,
                    Some(q) => {
                        if q.exclusive_owner.is_some_and(|o| o != conn) {
                            return Err(locked(&queue, &vhost));
                        }
                        if if_unused && !q.consumers.is_empty() {
                            return Err(precondition(format_args!("queue '{queue}' in vhost '{vhost}' in use")));
                        }
                        if if_empty && !q.is_empty() {
                            return Err(precondition(format_args!("queue '{queue}' in vhost '{vhost}' not empty")));
                        }
                        self.delete_queue(&vhost, &queue, now_ms, out)
                    }
                };
                if !nowait {
                    let ok = Method::QueueDeleteOk { message_count: n };
                    out.insert(at, (conn, Out::Method { channel, method: ok }));
                }
                Ok(())
            }
            Method::BasicQos { prefetch_size, prefetch_count, global } => {
                if prefetch_size != 0 {
                    return Err(ProtocolError::new(
                        ReplyCode::NotImplemented,
                        format_args!("prefetch_size!=0 ({prefetch_size})"),
                    ));
                }
                let ch = self.channel_mut(conn, channel)?;
                if global {
                    ch.set_prefetch_channel(prefetch_count);
                } else {
                    ch.prefetch_consumer = prefetch_count;
                }
                Self::reply(out, conn, channel, Method::BasicQosOk);
                self.dispatch_channel_queues(conn, channel, now_ms, out);
                Ok(())
            }
            Method::BasicConsume { queue, consumer_tag, no_local: _, no_ack, exclusive, nowait, arguments } => {
                if let Some(max) = self.config.consumer_max_per_channel {
                    if self.channel_mut(conn, channel)?.consumers.len() >= max as usize {
                        return Err(ProtocolError::new(
                            ReplyCode::NotAllowed,
                            format_args!("reached maximum ({max}) of consumers per channel"),
                        ));
                    }
                }
                self.consume(conn, channel, queue, consumer_tag, no_ack, exclusive, nowait, &arguments, now_ms, out)
            }
            Method::BasicCancel { consumer_tag, nowait } => {
                self.remove_consumer(conn, channel, &consumer_tag, now_ms, out);
                if !nowait {
                    Self::reply(out, conn, channel, Method::BasicCancelOk { consumer_tag });
                }
                Ok(())
            }
            Method::BasicPublish { exchange, routing_key, mandatory, immediate } => {
                if immediate {
                    return Err(ProtocolError::new(ReplyCode::NotImplemented, "immediate=true"));
                }
                let Some((properties, raw, body)) = content else {
                    return Err(ProtocolError::new(ReplyCode::InternalError, "publish without content"));
                };
                self.publish(conn, channel, exchange, routing_key, mandatory, properties, raw, body, now_ms, out)
            }
            Method::BasicGet { queue, no_ack } => self.get(conn, channel, queue, no_ack, now_ms, out),
            Method::BasicAck { delivery_tag, multiple } => {
                self.settle(conn, channel, AckOp::Ack { delivery_tag, multiple }, now_ms, out)
            }
            Method::BasicReject { delivery_tag, requeue } => {
                self.settle(conn, channel, AckOp::Nack { delivery_tag, multiple: false, requeue }, now_ms, out)
            }
            Method::BasicNack { delivery_tag, multiple, requeue } => {
                self.settle(conn, channel, AckOp::Nack { delivery_tag, multiple, requeue }, now_ms, out)
            }
            Method::BasicRecover { requeue: false } | Method::BasicRecoverAsync { requeue: false } => {
                // As RabbitMQ: redelivering to the same consumer is not implemented (540).
                Err(ProtocolError::new(ReplyCode::NotImplemented, "requeue=false"))
            }
            Method::BasicRecover { requeue: true } | Method::BasicRecoverAsync { requeue: true } => {
                // Both forms put every unacked delivery back in its queue, marked redelivered.
                let sync = matches!(method, Method::BasicRecover { .. });
                let vhost = self.vhost_of(conn)?;
                let ch = self.channel_mut(conn, channel)?;
                let unacked: Vec<Unacked> = ch.take_all_unacked();
                self.forget_consumer_unacked(conn, channel, &unacked);
                if sync {
                    Self::reply(out, conn, channel, Method::BasicRecoverOk);
                }
                self.requeue(&vhost, unacked, now_ms, out);
                Ok(())
            }
            Method::ConfirmSelect { nowait } => {
                let ch = self.channel_mut(conn, channel)?;
                if ch.tx.is_some() {
                    return Err(precondition("cannot switch from tx to confirm mode"));
                }
                ch.confirm_next.get_or_insert(1);
                if !nowait {
                    Self::reply(out, conn, channel, Method::ConfirmSelectOk);
                }
                Ok(())
            }
            Method::TxSelect => {
                let ch = self.channel_mut(conn, channel)?;
                if ch.confirm_next.is_some() {
                    return Err(precondition("cannot switch from confirm to tx mode"));
                }
                ch.tx.get_or_insert_with(TxState::default);
                Self::reply(out, conn, channel, Method::TxSelectOk);
                Ok(())
            }
            Method::TxCommit => {
                let ch = self.channel_mut(conn, channel)?;
                let Some(tx) = ch.tx.as_mut() else { return Err(precondition("channel is not transactional")) };
                let TxState { publishes, acks, .. } = std::mem::take(tx);
                let mut sync = PublishSync::default();
                for p in publishes {
                    let s = self.route_publish(conn, channel, p, now_ms, out)?;
                    sync.target = merge_sync_target(sync.target, s.target);
                    sync.failed |= s.failed;
                }
                for op in acks {
                    self.apply_settle(conn, channel, op, now_ms, out)?;
                }
                if sync.failed {
                    return Err(precondition(
                        "tx.commit failed: a queue could not store the transaction's messages (storage degraded)",
                    ));
                }
                // commit-ok promises the persistent messages are on disk: it waits for a sync.
                let epoch = if sync.target.is_some() { self.write_epoch } else { 0 };
                self.channel_mut(conn, channel)?.defer(epoch, DeferredKind::CommitOk, sync.target.unwrap_or(SYNC_ANY));
                if sync.target.is_some() {
                    self.waiting.insert(conn);
                }
                Ok(())
            }
            Method::TxRollback => {
                let ch = self.channel_mut(conn, channel)?;
                let Some(tx) = ch.tx.as_mut() else { return Err(precondition("channel is not transactional")) };
                *tx = TxState::default();
                Self::reply(out, conn, channel, Method::TxRollbackOk);
                Ok(())
            }
            other => {
                let (c, m) = other.ids();
                Err(ProtocolError::new(
                    ReplyCode::CommandInvalid,
                    format_args!("method {c}/{m} is not valid on a channel from a client"),
                ))
            }
        }
    }

    // ---- access control --------------------------------------------------------------------

    /// Checks that the connection's user may `access` the resource (`kind` is "queue" or
    /// "exchange"), with RabbitMQ's refusal.
    fn check(&self, conn: ConnId, access: Access, kind: &str, name: &str) -> Res {
        let c = self.conns.get(&conn).ok_or_else(|| internal("unknown connection"))?;
        if c.grants.permission.allows(access, permission_name(kind, name)) {
            Ok(())
        } else {
            Err(access_refused(kind, name, &c.vhost, &c.info.user))
        }
    }

    /// Checks a routing key against the topic permissions, when `exchange` is a topic exchange.
    fn check_topic(&self, conn: ConnId, exchange: &str, access: Access, routing_key: &str) -> Res {
        let c = self.conns.get(&conn).ok_or_else(|| internal("unknown connection"))?;
        if c.grants.topic.is_empty() {
            return Ok(());
        }
        let is_topic = self
            .vhosts
            .get(&*c.vhost)
            .and_then(|v| v.exchanges.get(exchange))
            .is_some_and(|x| x.kind == ExchangeKind::Topic);
        if !is_topic || c.grants.topic_allows(exchange, access, routing_key) {
            Ok(())
        } else {
            Err(topic_refused(routing_key, exchange, &c.vhost, &c.info.user))
        }
    }

    /// Resolves again what the connections of `user` (or of everyone when None) may do, after
    /// a permission changed. Connections whose user lost its permissions can do nothing more.
    fn refresh_grants(&mut self, user: Option<&str>) {
        for c in self.conns.values_mut() {
            if user.is_some_and(|u| u != c.info.user) {
                continue;
            }
            c.grants = self.users.grants(&c.info.user, &c.vhost).unwrap_or_else(|| {
                let nothing = Permission::new(&c.info.user, &c.vhost, "", "", "");
                Arc::new(Grants {
                    permission: nothing.unwrap_or_else(|_| c.grants.permission.clone()),
                    topic: Vec::new(),
                    impersonator: false,
                })
            });
            c.write_ok = None;
        }
    }

    // ---- lookups ---------------------------------------------------------------------------

    fn vhost_of(&self, conn: ConnId) -> Result<Arc<str>, ProtocolError> {
        self.conns
            .get(&conn)
            .map(|c| c.vhost.clone())
            .ok_or_else(|| ProtocolError::new(ReplyCode::InternalError, "unknown connection"))
    }

    fn channel_mut(&mut self, conn: ConnId, channel: u16) -> Result<&mut Channel, ProtocolError> {
        self.conns
            .get_mut(&conn)
            .and_then(|c| c.channels.get_mut(&channel))
            .map(|ch| &mut **ch)
            .ok_or_else(|| ProtocolError::new(ReplyCode::ChannelError, format_args!("channel {channel} is not open")))
    }

    /// An empty queue name means the queue last declared on this channel.
    fn resolve_queue_name(&mut self, conn: ConnId, channel: u16, queue: ShortStr) -> Result<ShortStr, ProtocolError> {
        if !queue.is_empty() {
            return Ok(queue);
        }
        self.channel_mut(conn, channel)?
            .last_queue
            .clone()
            .ok_or_else(|| ProtocolError::new(ReplyCode::NotFound, "no previously declared queue"))
    }

    /// The queue, checked to exist and not to be another connection's exclusive queue.
    fn queue_for_use(&mut self, conn: ConnId, name: &str) -> Result<(Arc<str>, &mut Queue), ProtocolError> {
        let vhost = self.vhost_of(conn)?;
        let q = self
            .vhosts
            .get_mut(&*vhost)
            .and_then(|v| v.queues.get_mut(name))
            .ok_or_else(|| not_found("queue", name, &vhost))?;
        if q.exclusive_owner.is_some_and(|o| o != conn) {
            return Err(locked(name, &vhost));
        }
        Ok((vhost, q))
    }

    // ---- exchanges and bindings ------------------------------------------------------------

    #[allow(clippy::too_many_arguments)]
    fn exchange_declare(
        &mut self,
        conn: ConnId,
        name: &ShortStr,
        kind: &str,
        passive: bool,
        durable: bool,
        auto_delete: bool,
        internal: bool,
        arguments: FieldTable,
    ) -> Res {
        let vhost = self.vhost_of(conn)?;
        let vh = self.vhosts.get_mut(&*vhost).ok_or_else(|| not_found("vhost", &vhost, &vhost))?;
        if passive {
            // As RabbitMQ: even a passive declare of the default exchange is refused.
            if name.is_empty() {
                return Err(default_exchange_refused());
            }
            return if vh.exchanges.contains_key(name) { Ok(()) } else { Err(not_found("exchange", name, &vhost)) };
        }
        self.check(conn, Access::Configure, "exchange", name)?;
        if let Some(ae) = arguments.get("alternate-exchange").and_then(FieldValue::as_str) {
            self.check(conn, Access::Write, "exchange", ae)?;
            self.check(conn, Access::Read, "exchange", name)?;
        }
        let vh = self.vhosts.get_mut(&*vhost).ok_or_else(|| not_found("vhost", &vhost, &vhost))?;
        let Some(kind) = ExchangeKind::parse(kind) else {
            return Err(ProtocolError::new(ReplyCode::CommandInvalid, format_args!("unknown exchange type '{kind}'")));
        };
        if kind == ExchangeKind::Deduplication {
            crate::dedup::DedupCache::from_arguments(&arguments, name)?;
        }
        if kind == ExchangeKind::DelayedMessage && crate::exchange::delayed_type(&arguments).is_none() {
            return Err(precondition("Invalid argument, 'x-delayed-type' must be an existing exchange type"));
        }
        if name.is_empty() {
            return Err(default_exchange_refused());
        }
        match vh.exchanges.get(name) {
            Some(x) => {
                if x.kind != kind {
                    return Err(inequivalent("type", "exchange", name, &vhost, kind.as_str(), x.kind.as_str()));
                }
                if x.durable != durable {
                    return Err(inequivalent("durable", "exchange", name, &vhost, durable, x.durable));
                }
                if x.auto_delete != auto_delete {
                    return Err(inequivalent("auto_delete", "exchange", name, &vhost, auto_delete, x.auto_delete));
                }
                if x.internal != internal {
                    return Err(inequivalent("internal", "exchange", name, &vhost, internal, x.internal));
                }
                let (new_ae, cur_ae) = (arguments.get("alternate-exchange"), x.arguments.get("alternate-exchange"));
                if !args_equal(new_ae, cur_ae) {
                    let shown = |v: Option<&FieldValue>| match v {
                        None => "none".to_string(),
                        Some(v) => format!("'{}'", describe(Some(v))),
                    };
                    let current = match cur_ae {
                        None => "none".to_string(),
                        Some(v) => format!("the value '{}' of type 'longstr'", describe(Some(v))),
                    };
                    return Err(precondition(format_args!(
                        "inequivalent arg 'alternate-exchange' for exchange '{name}' in vhost '{vhost}': received {} but current is {current}",
                        shown(new_ae)
                    )));
                }
                Ok(())
            }
            None => {
                if name.starts_with("amq.") {
                    return Err(ProtocolError::new(
                        ReplyCode::AccessRefused,
                        format_args!("exchange name '{name}' contains reserved prefix 'amq.*'"),
                    ));
                }
                let mut exchange = Exchange::new(name.clone(), kind, durable, auto_delete, internal, arguments);
                exchange.policy_alternate_exchange =
                    crate::policy::policy_alternate_exchange(&vhost, name, &self.policies).map(ShortStr::from);
                if kind == ExchangeKind::DelayedMessage {
                    let (store, _) = self.store.open_delayed(&vhost, name, durable).map_err(|e| {
                        self::internal(format_args!("cannot create the delayed store of '{name}': {e}"))
                    })?;
                    exchange.delayed = Some(store);
                }
                self.store.attach_dedup_log(&vhost, &mut exchange).map_err(|e| {
                    self::internal(format_args!("cannot create the deduplication cache of '{name}': {e}"))
                })?;
                let vh = self.vhosts.get_mut(&*vhost).ok_or_else(|| not_found("vhost", &vhost, &vhost))?;
                if durable {
                    self.def_ops.push(DefOp::PutExchange(exchange_def(&vhost, &exchange)));
                }
                vh.exchanges.insert(name.clone(), exchange);
                Ok(())
            }
        }
    }

    fn exchange_delete(&mut self, conn: ConnId, name: &ShortStr, if_unused: bool) -> Res {
        let vhost = self.vhost_of(conn)?;
        if name.is_empty() {
            return Err(default_exchange_refused());
        }
        if name.starts_with("amq.") {
            return Err(ProtocolError::new(
                ReplyCode::AccessRefused,
                format_args!("deletion of system exchange '{name}' in vhost '{vhost}' refused"),
            ));
        }
        let Some(vh) = self.vhosts.get_mut(&*vhost) else { return Ok(()) };
        let Some(x) = vh.exchanges.get(name) else { return Ok(()) };
        if if_unused && x.has_bindings() {
            return Err(precondition(format_args!("exchange '{name}' in vhost '{vhost}' in use")));
        }
        Self::remove_exchange(vh, name, &mut self.def_ops);
        Ok(())
    }

    /// Removes an exchange, the bindings to it, and auto-delete exchanges left without bindings;
    /// records the durable ones that went in `ops`.
    fn remove_exchange(vh: &mut VHost, name: &ShortStr, ops: &mut Vec<DefOp>) {
        let removed = vh.exchanges.remove(name);
        if removed.as_ref().is_some_and(|x| x.durable) {
            // Its bindings, from and to it, go with it in the journal too.
            ops.push(DefOp::DelExchange { vhost: vh.name.clone(), name: name.to_string() });
        }
        if let Some(x) = removed {
            // Held messages go with their exchange. A failure leaves files that the next
            // start does not read (no definition names them).
            if let Some(delayed) = x.delayed {
                let _ = delayed.destroy();
            }
            if let Some(mut cache) = x.dedup {
                let _ = cache.destroy();
            }
        }
        Self::remove_bindings_to(vh, &Destination::Exchange(name.clone()), ops);
    }

    /// Removes every binding to `dest`, which is going away (its own removal, recorded by the
    /// caller, takes the durable bindings to it out of the definitions); auto-delete exchanges
    /// left without bindings go too.
    fn remove_bindings_to(vh: &mut VHost, dest: &Destination, ops: &mut Vec<DefOp>) {
        let mut emptied = Vec::new();
        for x in vh.exchanges.values_mut() {
            if x.unbind_all_to(dest) > 0 && x.auto_delete && !x.has_bindings() {
                emptied.push(x.name.clone());
            }
        }
        for name in emptied {
            Self::remove_exchange(vh, &name, ops);
        }
    }

    fn bind(
        &mut self,
        conn: ConnId,
        dest: Destination,
        source: &ShortStr,
        routing_key: ShortStr,
        arguments: FieldTable,
    ) -> Res {
        let vhost = self.vhost_of(conn)?;
        self.check_binding_ends(conn, &vhost, &dest, source)?;
        self.check_topic(conn, source, Access::Read, &routing_key)?;
        let Some(vh) = self.vhosts.get_mut(&*vhost) else { return Ok(()) };
        if vh.exchanges.get(source).is_some_and(|x| x.kind == ExchangeKind::Headers) {
            crate::exchange::headers::validate_binding(&arguments).map_err(precondition)?;
        }
        let durable_dest = match &dest {
            Destination::Queue(q) => vh.queues.get(q).is_some_and(|q| q.durable && q.exclusive_owner.is_none()),
            Destination::Exchange(x) => vh.exchanges.get(x).is_some_and(|x| x.durable),
        };
        if let Some(x) = vh.exchanges.get_mut(source) {
            let binding = Binding { destination: dest, routing_key, arguments };
            let def = (x.durable && durable_dest).then(|| durable_binding_def(&vh.name, source, &binding));
            if x.bind(binding) {
                self.def_ops.extend(def.map(DefOp::PutBinding));
            }
        }
        Ok(())
    }

    fn unbind(
        &mut self,
        conn: ConnId,
        dest: Destination,
        source: &ShortStr,
        routing_key: ShortStr,
        arguments: FieldTable,
    ) -> Res {
        let vhost = self.vhost_of(conn)?;
        // RabbitMQ answers unbind-ok when an end does not exist (aio-pika unbinds a reply
        // queue that is already gone); the default exchange is still refused.
        let ends_exist = self.vhosts.get(&*vhost).is_some_and(|vh| {
            vh.exchanges.contains_key(source)
                && match &dest {
                    Destination::Queue(q) => vh.queues.contains_key(q),
                    Destination::Exchange(x) => vh.exchanges.contains_key(x),
                }
        });
        let default_exchange = source.is_empty() || matches!(&dest, Destination::Exchange(d) if d.is_empty());
        if !ends_exist && !default_exchange {
            return Ok(());
        }
        self.check_binding_ends(conn, &vhost, &dest, source)?;
        self.check_topic(conn, source, Access::Read, &routing_key)?;
        let Some(vh) = self.vhosts.get_mut(&*vhost) else { return Ok(()) };
        let mut emptied = false;
        if let Some(x) = vh.exchanges.get_mut(source) {
            let binding = Binding { destination: dest, routing_key, arguments };
            let removed = x.unbind(&binding);
            if removed && x.durable {
                self.def_ops.push(DefOp::DelBinding(durable_binding_def(&vh.name, source, &binding)));
            }
            emptied = removed && x.auto_delete && !x.has_bindings();
        }
        if emptied {
            Self::remove_exchange(vh, source, &mut self.def_ops);
        }
        Ok(())
    }

    fn check_binding_ends(&self, conn: ConnId, vhost: &str, dest: &Destination, source: &ShortStr) -> Res {
        let vh = self.vhosts.get(vhost).ok_or_else(|| not_found("vhost", vhost, vhost))?;
        if source.is_empty() || matches!(dest, Destination::Exchange(d) if d.is_empty()) {
            return Err(default_exchange_refused());
        }
        match dest {
            Destination::Queue(q) => {
                let queue = vh.queues.get(q).ok_or_else(|| not_found("queue", q, vhost))?;
                if queue.exclusive_owner.is_some_and(|o| o != conn) {
                    return Err(locked(q, vhost));
                }
            }
            Destination::Exchange(x) => {
                if !vh.exchanges.contains_key(x) {
                    return Err(not_found("exchange", x, vhost));
                }
            }
        }
        if !vh.exchanges.contains_key(source) {
            return Err(not_found("exchange", source, vhost));
        }
        Ok(())
    }

    // ---- queues ----------------------------------------------------------------------------

    #[allow(clippy::too_many_arguments)]
    fn queue_declare(
        &mut self,
        conn: ConnId,
        channel: u16,
        name: ShortStr,
        passive: bool,
        durable: bool,
        exclusive: bool,
        auto_delete: bool,
        arguments: FieldTable,
        now_ms: u64,
    ) -> Result<(ShortStr, u32, u32), ProtocolError> {
        let vhost = self.vhost_of(conn)?;
        if name.as_str() == REPLY_TO_QUEUE {
            // As RabbitMQ: the pseudo-queue always answers with one consumer.
            return Ok((name, 0, 1));
        }
        let name = if name.is_empty() {
            if passive {
                self.resolve_queue_name(conn, channel, name)?
            } else {
                generated_name(&mut self.rng, "amq.gen-")
            }
        } else {
            name
        };
        if !passive {
            self.check(conn, Access::Configure, "queue", &name)?;
            if let Some(dlx) = arguments.get("x-dead-letter-exchange").and_then(FieldValue::as_str) {
                self.check(conn, Access::Write, "exchange", dlx)?;
                self.check(conn, Access::Read, "queue", &name)?;
            }
        }
        let vh = self.vhosts.get_mut(&*vhost).ok_or_else(|| not_found("vhost", &vhost, &vhost))?;
        let result = match vh.queues.get(&name) {
            Some(q) => {
                if q.exclusive_owner.is_some_and(|o| o != conn) {
                    return Err(locked(&name, &vhost));
                }
                if !passive {
                    // As RabbitMQ: another exclusive flag is a lock conflict (405), checked
                    // before the other properties.
                    if q.exclusive_owner.is_some() != exclusive {
                        return Err(locked(&name, &vhost));
                    }
                    if q.durable != durable {
                        return Err(inequivalent("durable", "queue", &name, &vhost, durable, q.durable));
                    }
                    if q.auto_delete != auto_delete {
                        return Err(inequivalent("auto_delete", "queue", &name, &vhost, auto_delete, q.auto_delete));
                    }
                    for key in EQUIVALENT_QUEUE_ARGS {
                        let (new, cur) = (arguments.get(key), q.arguments.get(key));
                        if !args_equal(new, cur) {
                            return Err(inequivalent(key, "queue", &name, &vhost, describe(new), describe(cur)));
                        }
                    }
                }
                let r = (name.clone(), q.message_count(), q.consumer_count());
                if let Some(q) = vh.queues.get_mut(&name) {
                    q.last_used_ms = now_ms;
                }
                r
            }
            None => {
                if passive {
                    return Err(not_found("queue", &name, &vhost));
                }
                if name.starts_with("amq.") && !name.starts_with("amq.gen-") {
                    return Err(ProtocolError::new(
                        ReplyCode::AccessRefused,
                        format_args!("queue name '{name}' contains reserved prefix 'amq.*'"),
                    ));
                }
                if let Some(max) = vh.limits.queues() {
                    if vh.queues.len() as u64 >= max {
                        return Err(precondition(format_args!(
                            "cannot declare queue '{name}': queue limit in vhost '{vhost}' ({max}) is reached"
                        )));
                    }
                }
                QueueArgs::parse(&arguments, &name, &vhost)?;
                let EffectiveArgs { args, policy, operator_policy } = self.queue_args(&vhost, &name, &arguments)?;
                if args.queue_type == QueueType::Quorum {
                    // Quorum queues are replicated logs: always durable, never exclusive or
                    // auto-delete (RabbitMQ's checks and texts).
                    if !durable {
                        return Err(precondition(format_args!(
                            "invalid property 'non-durable' for queue '{name}' in vhost '{vhost}'"
                        )));
                    }
                    if exclusive {
                        return Err(precondition(format_args!(
                            "invalid property 'exclusive-owner' for queue '{name}' in vhost '{vhost}'"
                        )));
                    }
                    if auto_delete {
                        return Err(precondition(format_args!(
                            "invalid property 'auto-delete' for queue '{name}' in vhost '{vhost}'"
                        )));
                    }
                }
                let owner = exclusive.then_some(conn);
                // Exclusive queues die with their connection, so never outlive a restart.
                let survives = durable && !exclusive;
                let dir = if survives { self.store.durable_dir(&vhost, &name) } else { self.store.transient_dir() };
                let store =
                    QueueStore { backend: self.store.backend.clone(), dir, config: self.store.log_config.clone() };
                let (queue, _) = Queue::open(name.clone(), durable, owner, auto_delete, arguments, args, store, now_ms)
                    .map_err(|e| internal(format_args!("cannot create the log of queue '{name}': {e}")))?;
                let mut queue = queue;
                queue.sync_id = self.take_sync_id();
                queue.policy = policy;
                queue.operator_policy = operator_policy;
                let vh = self.vhosts.get_mut(&*vhost).ok_or_else(|| not_found("vhost", &vhost, &vhost))?;
                if survives {
                    self.def_ops.push(DefOp::PutQueue(queue_def(&vhost, &queue)));
                }
                vh.queues.insert(name.clone(), queue);
                self.counters.queues_created += 1;
                if let Some(c) = self.conns.get_mut(&conn).filter(|_| exclusive) {
                    c.owns_exclusive = true;
                }
                (name.clone(), 0, 0)
            }
        };
        self.channel_mut(conn, channel)?.last_queue = Some(name);
        Ok(result)
    }

    /// Deletes a queue: its consumers are cancelled (told so when they understand it), its
    /// bindings removed, its messages dropped. Returns the number of ready messages dropped.
    fn delete_queue(&mut self, vhost: &str, name: &str, _now_ms: u64, out: &mut Vec<(ConnId, Out)>) -> u32 {
        let Some(vh) = self.vhosts.get_mut(vhost) else { return 0 };
        let Some(q) = vh.queues.remove(name) else { return 0 };
        self.counters.queues_deleted += 1;
        if q.durable && q.exclusive_owner.is_none() {
            self.def_ops.push(DefOp::DelQueue { vhost: vhost.to_owned(), name: name.to_owned() });
        }
        Self::remove_bindings_to(vh, &Destination::Queue(q.name.clone()), &mut self.def_ops);
        for key in &q.consumers {
            let Some(c) = self.conns.get_mut(&key.conn) else { continue };
            if let Some(ch) = c.channels.get_mut(&key.channel) {
                ch.consumers.remove(&key.tag);
                if c.cancel_notify && ch.state() == ChannelState::Open {
                    out.push((
                        key.conn,
                        Out::Method {
                            channel: key.channel,
                            method: Method::BasicCancel { consumer_tag: key.tag.clone(), nowait: true },
                        },
                    ));
                }
            }
        }
        let n = q.message_count();
        let qname = q.name.clone();
        if let Err(e) = q.destroy() {
            self.errors.push(format!("cannot remove the log of deleted queue '{qname}' in vhost '{vhost}': {e}"));
        }
        n
    }

    // ---- consumers -------------------------------------------------------------------------

    #[allow(clippy::too_many_arguments)]
    fn consume(
        &mut self,
        conn: ConnId,
        channel: u16,
        queue: ShortStr,
        tag: ShortStr,
        no_ack: bool,
        exclusive: bool,
        nowait: bool,
        arguments: &FieldTable,
        now_ms: u64,
        out: &mut Vec<(ConnId, Out)>,
    ) -> Res {
        let tag = if tag.is_empty() { generated_name(&mut self.rng, "amq.ctag-") } else { tag };
        let priority = match arguments.get("x-priority") {
            None => 0,
            Some(v) => v.as_i64().ok_or_else(|| {
                precondition(format_args!("invalid arg 'x-priority' for consumer '{tag}': not an integer"))
            })?,
        };
        if self.channel_mut(conn, channel)?.consumers.contains_key(&tag) {
            return Err(ProtocolError::new(
                ReplyCode::NotAllowed,
                format_args!("attempt to reuse consumer tag '{tag}'"),
            ));
        }
        if queue.as_str() == REPLY_TO_QUEUE {
            return self.consume_reply_to(conn, channel, tag, no_ack, nowait, out);
        }
        let queue = self.resolve_queue_name(conn, channel, queue)?;
        self.check(conn, Access::Read, "queue", &queue)?;
        let ch = self.channel_mut(conn, channel)?;
        let credit = ConsumerCredit::new(no_ack, ch.prefetch_consumer);
        let channel_credit = ch.credit().clone();
        let outbound = self.conns.get(&conn).ok_or_else(|| internal("unknown connection"))?.out_bytes.clone();
        let (vhost, q) = self.queue_for_use(conn, &queue)?;
        if q.exclusive_consumer || (exclusive && !q.consumers.is_empty()) {
            return Err(ProtocolError::new(
                ReplyCode::AccessRefused,
                format_args!("queue '{queue}' in vhost '{vhost}' in exclusive use"),
            ));
        }
        q.add_consumer(ConsumerKey {
            conn,
            channel,
            tag: tag.clone(),
            priority,
            credit: credit.clone(),
            channel_credit,
            outbound,
        });
        q.had_consumer = true;
        q.exclusive_consumer = exclusive;
        q.last_used_ms = now_ms;
        let ch = self.channel_mut(conn, channel)?;
        ch.consumers.insert(tag.clone(), Consumer { queue: queue.clone(), credit });
        if !nowait {
            Self::reply(out, conn, channel, Method::BasicConsumeOk { consumer_tag: tag });
        }
        self.dispatch(&vhost, &queue, now_ms, out);
        Ok(())
    }

    fn consume_reply_to(
        &mut self,
        conn: ConnId,
        channel: u16,
        tag: ShortStr,
        no_ack: bool,
        nowait: bool,
        out: &mut Vec<(ConnId, Out)>,
    ) -> Res {
        if !no_ack {
            return Err(precondition("reply consumer cannot acknowledge"));
        }
        let suffix = generated_name(&mut self.rng, "");
        let ch = self.channel_mut(conn, channel)?;
        if ch.reply_to.is_some() {
            return Err(precondition("reply consumer already set"));
        }

        ch.reply_to = Some((tag.clone(), suffix.clone()));
        self.reply_targets.insert(suffix, ReplyTarget { conn, channel, consumer_tag: tag.clone() });
        if !nowait {
            Self::reply(out, conn, channel, Method::BasicConsumeOk { consumer_tag: tag });
        }
        Ok(())
    }

    /// Removes a consumer (basic.cancel, channel close, timeout). Its unacked messages stay
    /// unacked on the channel. An auto-delete queue losing its last consumer is deleted.
    fn remove_consumer(
        &mut self,
        conn: ConnId,
        channel: u16,
        tag: &ShortStr,
        now_ms: u64,
        out: &mut Vec<(ConnId, Out)>,
    ) {
        let Some(c) = self.conns.get_mut(&conn) else { return };
        let vhost = c.vhost.clone();
        let Some(ch) = c.channels.get_mut(&channel) else { return };
        if ch.reply_to.as_ref().is_some_and(|(t, _)| t == tag) {
            if let Some((_, suffix)) = ch.reply_to.take() {
                self.reply_targets.remove(&suffix);
            }
            return;
        }
        if let Some(queue) = self.detach_consumer(conn, channel, tag, now_ms) {
            self.after_consumer_left(&vhost, &queue, now_ms, out);
        }
    }

    /// Takes a consumer off its channel and queue; returns the queue.
    fn detach_consumer(&mut self, conn: ConnId, channel: u16, tag: &ShortStr, now_ms: u64) -> Option<ShortStr> {
        let c = self.conns.get_mut(&conn)?;
        let consumer = c.channels.get_mut(&channel)?.consumers.remove(tag)?;
        let q = self.vhosts.get_mut(&*c.vhost).and_then(|v| v.queues.get_mut(&consumer.queue))?;
        q.remove_consumer(conn, channel, tag);
        q.last_used_ms = now_ms;
        Some(consumer.queue)
    }

    /// A consumer left `queue`: an auto-delete queue left without consumers goes; otherwise
    /// the queue delivers again (with a single active consumer, the next one takes over).
    fn after_consumer_left(&mut self, vhost: &str, queue: &ShortStr, now_ms: u64, out: &mut Vec<(ConnId, Out)>) {
        let Some(q) = self.vhosts.get(vhost).and_then(|v| v.queues.get(queue)) else { return };
        if q.auto_delete && q.had_consumer && q.consumers.is_empty() {
            self.delete_queue(vhost, queue, now_ms, out);
        } else {
            self.dispatch(vhost, queue, now_ms, out);
        }
    }

    // ---- publishing ------------------------------------------------------------------------

    #[allow(clippy::too_many_arguments)]
    fn publish(
        &mut self,
        conn: ConnId,
        channel: u16,
        exchange: ShortStr,
        routing_key: ShortStr,
        mandatory: bool,
        mut properties: Box<BasicProperties>,
        mut raw: Bytes,
        body: Bytes,
        now_ms: u64,
        out: &mut Vec<(ConnId, Out)>,
    ) -> Res {
        let c = self.conns.get_mut(&conn).ok_or_else(|| internal("unknown connection"))?;
        // The write permission is checked when the exchange differs from the last one allowed:
        // a publisher sending to one exchange pays one comparison per message.
        if c.write_ok.as_ref() != Some(&exchange) {
            if !c.grants.permission.allows(Access::Write, permission_name("exchange", &exchange)) {
                return Err(access_refused("exchange", &exchange, &c.vhost, &c.info.user));
            }
            c.write_ok = Some(exchange.clone());
        }
        let vhost = c.vhost.clone();
        let c = self.conns.get(&conn).ok_or_else(|| internal("unknown connection"))?;
        {
            let vh = self.vhosts.get(&*vhost).ok_or_else(|| not_found("vhost", &vhost, &vhost))?;
            let x = vh.exchanges.get(&exchange).ok_or_else(|| not_found("exchange", &exchange, &vhost))?;
            if x.internal {
                return Err(ProtocolError::new(
                    ReplyCode::AccessRefused,
                    format_args!("cannot publish to internal exchange '{exchange}' in vhost '{vhost}'"),
                ));
            }
            if x.kind == ExchangeKind::Topic
                && !c.grants.topic.is_empty()
                && !c.grants.topic_allows(&exchange, Access::Write, &routing_key)
            {
                return Err(topic_refused(&routing_key, &exchange, &vhost, &c.info.user));
            }
        }
        if let Some(expiration) = &properties.expiration {
            crate::args::message_ttl_ms(expiration)?;
        }
        if let Some(uid) = &properties.user_id {
            let user = &c.info.user;
            if uid.as_str() != user && !c.grants.impersonator {
                return Err(precondition(format_args!(
                    "user_id property set to '{uid}' but authenticated user was '{user}'"
                )));
            }
        }
        self.count_ingest(body.len());
        self.counters.messages_received += 1;
        let ch = self.channel_mut(conn, channel)?;
        if properties.reply_to.as_ref().is_some_and(|r| r.as_str() == REPLY_TO_QUEUE) {
            let Some((_, suffix)) = &ch.reply_to else {
                return Err(precondition("fast reply consumer does not exist"));
            };
            properties.reply_to = Some(ShortStr::from(format!("{REPLY_TO_PREFIX}{suffix}")));
            raw = properties.to_bytes();
        }
        let confirm_seq = ch.confirm_next;
        if let Some(n) = confirm_seq {
            ch.confirm_next = Some(n + 1);
        }
        let msg = Message::new(exchange.clone(), routing_key.clone(), *properties, raw, body);
        let p = Publish { exchange, routing_key, mandatory, msg, confirm_seq };
        if let Some(tx) = ch.tx.as_mut() {
            tx.publishes.push(p);
            return Ok(());
        }
        self.route_publish(conn, channel, p, now_ms, out).map(|_| ())
    }

    /// Routes a publish to its queues, returns it when unroutable and mandatory, and records
    /// its confirm.
    fn route_publish(
        &mut self,
        conn: ConnId,
        channel: u16,
        p: Publish,
        now_ms: u64,
        out: &mut Vec<(ConnId, Out)>,
    ) -> Result<PublishSync, ProtocolError> {
        let vhost = self.vhost_of(conn)?;
        let mut sync = PublishSync::default();
        let mut rejected = false;
        let direct_reply = p.exchange.is_empty() && p.routing_key.starts_with(REPLY_TO_PREFIX);
        let routed = if direct_reply {
            self.deliver_reply(&p, out)
        } else {
            // Sender-selected distribution: the CC and BCC headers add routing keys; BCC is
            // taken off the message that queues see.
            let (extra_keys, msg) = crate::dead_letter::sender_selected(&p.msg);
            let headers = msg.properties.headers.as_ref();
            // A deduplication exchange drops a message it has seen, before any routing; a
            // delayed-message exchange holds a message with x-delay until it is due. One lookup
            // serves both (and ordinary exchanges skip both).
            let mut duplicate = false;
            let mut held = None;
            let exchange = self.vhosts.get_mut(&*vhost).and_then(|vh| vh.exchanges.get_mut(&p.exchange));
            if let Some(x) = exchange.filter(|x| x.dedup.is_some() || x.delayed.is_some()) {
                if let Some(cache) = x.dedup.as_mut() {
                    match cache.check_and_insert(headers, now_ms) {
                        Ok(dup) => {
                            if cache.dirty {
                                // A confirm promises the cache entry is on disk too.
                                self.dirty_exchanges.insert((vhost.clone(), p.exchange.clone()));
                                sync.target = Some(SYNC_ANY);
                            }
                            duplicate = dup;
                        }
                        // The cache could not be written: let the message through rather than
                        // drop one that may be new.
                        Err(e) => self.errors.push(format!("deduplication cache of exchange '{}': {e}", p.exchange)),
                    }
                }
                if let (Some(delay_ms), Some(store)) = (crate::delayed::delay_of(headers), x.delayed.as_mut()) {
                    let durable = store
                        .hold(msg.clone(), now_ms.saturating_add(delay_ms))
                        .map_err(|e| internal(format_args!("cannot hold a delayed message: {e}")))?;
                    if durable {
                        self.dirty_exchanges.insert((vhost.clone(), p.exchange.clone()));
                    }
                    held = Some(durable);
                }
            }
            if held == Some(true) {
                // Accepted: confirmed once on disk (durable exchange), routed when due.
                sync.target = Some(SYNC_ANY);
            }
            let queues = if duplicate || held.is_some() {
                Vec::new()
            } else if extra_keys.is_empty() {
                self.route(&vhost, &p.exchange, &[&p.routing_key], headers, &msg.raw_properties)
            } else {
                let mut keys: Vec<&str> = vec![&p.routing_key];
                keys.extend(extra_keys.iter().map(String::as_str));
                self.route(&vhost, &p.exchange, &keys, headers, &msg.raw_properties)
            };
            let (queued, rejected_by) = self.enqueue(&vhost, &queues, &msg, now_ms, out);
            if std::mem::take(&mut self.paged_behind_consumer) {
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.flow_blocked = true;
                }
            }
            sync.target = merge_sync_target(sync.target, queued.target);
            sync.failed = queued.failed;
            rejected = rejected_by;
            !queues.is_empty() || held.is_some()
        };
        // Confirm mode and transactions exclude each other, so this is the publish as received.
        self.counters.messages_received_confirm += u64::from(p.confirm_seq.is_some());
        // RabbitMQ 3.10 counts a direct reply-to answer as unroutable and dropped (no queue took
        // it) and its hand-over as no delivery: the metrics follow.
        if routed && !direct_reply {
            self.counters.messages_routed += 1;
        } else if p.mandatory && !routed {
            self.counters.messages_unroutable_returned += 1;
        } else {
            self.counters.messages_unroutable_dropped += 1;
        }
        if !routed && p.mandatory {
            out.push((
                conn,
                Out::Content {
                    channel,
                    method: Method::BasicReturn {
                        reply_code: ReplyCode::NoRoute.code(),
                        reply_text: ShortStr::from_static("NO_ROUTE"),
                        exchange: p.exchange.clone(),
                        routing_key: p.routing_key.clone(),
                    },
                    msg: p.msg.clone(),
                },
            ));
        }
        if let Some(seq) = p.confirm_seq {
            // A persistent message in a durable queue is confirmed once it is on disk.
            let epoch = if sync.target.is_some() { self.write_epoch } else { 0 };
            // A queue that refused it (reject-publish) or could not store it makes it a nack.
            let kind = if rejected || sync.failed { DeferredKind::Nack(seq) } else { DeferredKind::Ack(seq) };
            self.channel_mut(conn, channel)?.defer(epoch, kind, sync.target.unwrap_or(SYNC_ANY));
            if sync.target.is_some() {
                self.waiting.insert(conn);
            }
        }
        Ok(sync)
    }

    /// Appends a message to each queue (routing result) and hands it to consumers. Messages
    /// the queues drop to make room are dead-lettered. Returns whose sync must precede the
    /// confirm (or that a queue's storage could not take it: the confirm is a nack, and nothing
    /// else is affected), and whether a queue refused the message (reject-publish).
    fn enqueue(
        &mut self,
        vhost: &Arc<str>,
        queues: &[ShortStr],
        msg: &MessageRef,
        now_ms: u64,
        out: &mut Vec<(ConnId, Out)>,
    ) -> (PublishSync, bool) {
        let mut sync = PublishSync::default();
        let mut rejected = false;
        self.paged_behind_consumer = false;
        let mut dead: Vec<(ShortStr, Queued, &'static str)> = Vec::new();
        if let Some(vh) = self.vhosts.get_mut(&**vhost) {
            for q in queues {
                let Some(queue) = vh.queues.get_mut(q) else { continue };
                queue.memory_pressure = self.alarms.memory;
                // A TTL of 0 lets a message through only to a consumer that takes it at once
                // (nothing ahead of it, a consumer with room); otherwise it expires on arrival,
                // as in RabbitMQ.
                let may_have_ttl = msg.properties.expiration.is_some() || queue.args.message_ttl_ms.is_some();
                if may_have_ttl
                    && queue.expiry_for(msg, now_ms) == Some(now_ms)
                    && !(queue.is_empty() && choose_consumer(queue).is_some())
                {
                    dead.push((q.clone(), Queued::unqueued(0, msg.clone(), Some(now_ms)), "expired"));
                    continue;
                }
                let outcome = match queue.push(msg.clone(), now_ms) {
                    Ok(outcome) => outcome,
                    Err(_) => {
                        // The log says why once (report_storage); it is retried at every round.
                        sync.failed = true;
                        Self::report_storage(&mut self.warnings, &mut self.notices, vhost, queue);
                        self.dirty.insert((vhost.clone(), q.clone()));
                        continue;
                    }
                };
                Self::note_push(&mut self.dirty, vhost, q, &outcome);
                if outcome.needs_sync {
                    sync.target = merge_sync_target(sync.target, Some(queue.sync_id));
                }
                self.disk_written += outcome.stored_bytes;
                if outcome.paged && !self.paged_behind_consumer {
                    self.paged_behind_consumer = queue.consumers.iter().any(|k| !k.outbound.writable());
                }
                if outcome.rejected {
                    rejected = true;
                    if queue.args.overflow == crate::args::Overflow::RejectPublishDlx {
                        let expires_at = queue.expiry_for(msg, now_ms);
                        let item = Queued::unqueued(0, msg.clone(), expires_at);
                        dead.push((q.clone(), item, "maxlen"));
                    }
                }
                dead.extend(outcome.dropped.into_iter().map(|d| (q.clone(), d, "maxlen")));
            }
        }
        self.dead_letter(vhost, dead, now_ms, out);
        for q in queues {
            self.dispatch(vhost, q, now_ms, out);
        }
        if self.disk_headroom.is_some_and(|h| self.disk_written > h) && !self.alarms.disk {
            // The flood would fill the disk past its limit before the next measurement.
            self.alarms.disk = true;
            self.warnings.push(format!(
                "disk resource limit alarm set: {} bytes written since free space was measured, \
                 more than the {} bytes left above the limit. Publishers will be blocked until \
                 this alarm clears",
                self.disk_written,
                self.disk_headroom.unwrap_or(0)
            ));
        }
        (sync, rejected)
    }

    fn note_push(dirty: &mut HashSet<(Arc<str>, ShortStr)>, vhost: &Arc<str>, q: &ShortStr, outcome: &PushOutcome) {
        if outcome.needs_sync || !outcome.dropped.is_empty() {
            dirty.insert((vhost.clone(), q.clone()));
        }
    }

    /// Dead-letters messages that left `queue`s (already settled there): each goes to its
    /// queue's dead-letter exchange with an updated `x-death` header, or is dropped when the
    /// queue has none. Messages that the target queues drop in turn are dead-lettered too,
    /// from a work list (bounded), so chains of queues cannot recurse without end.
    fn dead_letter(
        &mut self,
        vhost: &Arc<str>,
        work: Vec<(ShortStr, Queued, &'static str)>,
        now_ms: u64,
        out: &mut Vec<(ConnId, Out)>,
    ) {
        // First in, first out: messages reach the dead-letter queues in the order they died.
        let mut work: std::collections::VecDeque<_> = work.into();
        /// A bound on dead-lettering caused by one event (each step moves one message).
        const DEAD_LETTER_STEPS_MAX: usize = 100_000;
        let mut touched: Vec<ShortStr> = Vec::new();
        let mut steps = 0;
        while let Some((from, item, reason)) = work.pop_front() {
            steps += 1;
            if steps > DEAD_LETTER_STEPS_MAX {
                self.errors
                    .push(format!("dead-lettering from queue '{from}' stopped after {DEAD_LETTER_STEPS_MAX} steps"));
                break;
            }
            let Some(vh) = self.vhosts.get(&**vhost) else { return };
            let Some(q) = vh.queues.get(&from) else { continue };
            let dlx = q.args.dead_letter_exchange.clone();
            self.counters.count_dead_lettered(reason, dlx.is_some());
            let Some(dlx) = dlx else { continue };
            // As RabbitMQ: the queue's dead-letter routing key replaces every key of the message
            // (and its CC and BCC headers go); without one, the message's own keys, CC included.
            let dlrk = q.args.dead_letter_routing_key.clone();
            let routing_key = dlrk.clone().unwrap_or_else(|| item.msg.routing_key.clone());
            let msg =
                crate::dead_letter::dead_lettered(&item.msg, &dlx, &routing_key, &from, reason, now_ms, dlrk.is_some());
            let cc = if dlrk.is_some() { Vec::new() } else { crate::dead_letter::cc_keys(&msg) };
            let mut keys: Vec<&str> = vec![&routing_key];
            keys.extend(cc.iter().map(String::as_str));
            let mut targets = self.route(vhost, &dlx, &keys, msg.properties.headers.as_ref(), &msg.raw_properties);
            targets.retain(|t| !crate::dead_letter::is_cycle(&msg, t));
            let Some(vh) = self.vhosts.get_mut(&**vhost) else { return };
            for t in &targets {
                let Some(queue) = vh.queues.get_mut(t) else { continue };
                queue.memory_pressure = self.alarms.memory;
                match queue.push(msg.clone(), now_ms) {
                    Ok(outcome) => {
                        Self::note_push(&mut self.dirty, vhost, t, &outcome);
                        work.extend(outcome.dropped.into_iter().map(|d| (t.clone(), d, "maxlen")));
                    }
                    Err(e) => self.errors.push(format!("cannot dead-letter a message into queue '{t}': {e}")),
                }
                if !touched.contains(t) {
                    touched.push(t.clone());
                }
            }
        }
        for t in touched {
            self.dispatch(vhost, &t, now_ms, out);
        }
    }

    /// The queues a message reaches from `exchange`, following exchange-to-exchange bindings
    /// (each exchange visited once, so cycles end), without duplicates.
    ///
    /// `keys` are the routing key and the `CC`/`BCC` keys: as RabbitMQ, every hop routes the
    /// whole set. A queue reached several ways is listed once; the check is a hash set once the
    /// list is long, so a fanout to thousands of queues stays linear.
    fn route(
        &self,
        vhost: &str,
        exchange: &ShortStr,
        keys: &[&str],
        headers: Option<&FieldTable>,
        raw_properties: &Bytes,
    ) -> Vec<ShortStr> {
        let Some(vh) = self.vhosts.get(vhost) else { return Vec::new() };
        let mut queues: Vec<ShortStr> = Vec::new();
        let mut seen: Option<HashSet<ShortStr>> = None;
        let mut add = |queues: &mut Vec<ShortStr>, q: ShortStr| {
            /// Past this many queues, duplicates are found with a hash set, not a scan.
            const SCAN_MAX: usize = 16;
            if queues.len() < SCAN_MAX && seen.is_none() {
                if !queues.contains(&q) {
                    queues.push(q);
                }
                return;
            }
            let set = seen.get_or_insert_with(|| queues.iter().cloned().collect());
            if set.insert(q.clone()) {
                queues.push(q);
            }
        };
        if exchange.is_empty() {
            for key in keys {
                // The queue's own name, shared rather than copied.
                if let Some((name, _)) = vh.queues.get_key_value(*key) {
                    add(&mut queues, name.clone());
                }
            }
            return queues;
        }
        let mut visited: Vec<ShortStr> = vec![exchange.clone()];
        let mut pending: Vec<ShortStr> = vec![exchange.clone()];
        let mut dests = Vec::new();
        while let Some(x) = pending.pop() {
            let Some(ex) = vh.exchanges.get(&x) else { continue };
            dests.clear();
            for key in keys {
                ex.route(key, headers, raw_properties, &mut dests);
            }
            if dests.is_empty() {
                // Unroutable here: the alternate exchange, if any, gets it.
                let own = ex.arguments.get("alternate-exchange").and_then(FieldValue::as_str).map(ShortStr::from);
                if let Some(ae) = own.or_else(|| ex.policy_alternate_exchange.clone()) {
                    if !visited.contains(&ae) {
                        visited.push(ae.clone());
                        pending.push(ae);
                    }
                }
            }
            for d in dests.drain(..) {
                match d {
                    Destination::Queue(q) => add(&mut queues, q),
                    Destination::Exchange(e) => {
                        if !visited.contains(&e) {
                            visited.push(e.clone());
                            pending.push(e);
                        }
                    }
                }
            }
        }
        queues
    }

    /// Direct reply-to: hand the message straight to the requester's reply consumer.
    fn deliver_reply(&mut self, p: &Publish, out: &mut Vec<(ConnId, Out)>) -> bool {
        let suffix = &p.routing_key[REPLY_TO_PREFIX.len()..];
        let Some(target) = self.reply_targets.get(suffix).cloned() else { return false };
        let Some(ch) = self.conns.get_mut(&target.conn).and_then(|c| c.channels.get_mut(&target.channel)) else {
            return false;
        };
        let delivery_tag = ch.take_delivery_tag();
        if let Some(c) = self.conns.get_mut(&target.conn) {
            c.out_bytes.add(p.msg.wire_size());
        }
        out.push((
            target.conn,
            Out::Content {
                channel: target.channel,
                method: Method::BasicDeliver {
                    consumer_tag: target.consumer_tag,
                    delivery_tag,
                    redelivered: false,
                    exchange: p.exchange.clone(),
                    routing_key: p.routing_key.clone(),
                },
                msg: p.msg.clone(),
            },
        ));
        true
    }

    // ---- delivery --------------------------------------------------------------------------

    /// Hands ready messages of a queue to its consumers: to the highest-priority consumers
    /// that can take more (round-robin among equals), within their prefetch limits and while
    /// their connections can take more; with a single active consumer, only to the first.
    /// Expired messages met at the head are dead-lettered instead.
    fn dispatch(&mut self, vhost: &str, queue: &str, now_ms: u64, out: &mut Vec<(ConnId, Out)>) {
        let mut expired: Vec<(ShortStr, Queued, &'static str)> = Vec::new();
        {
            let Broker { vhosts, errors, dirty, counters, next_delivery_id, .. } = self;
            let Some(q) = vhosts.get_mut(vhost).and_then(|v| v.queues.get_mut(queue)) else { return };
            let mut settled_any = false;
            while !q.is_empty() && !q.consumers.is_empty() {
                let Some(idx) = choose_consumer(q) else { break };
                let key = &q.consumers[idx];
                let (key_conn, key_channel, tag, no_ack) = (key.conn, key.channel, key.tag.clone(), key.credit.no_ack);
                let m = match q.pop() {
                    Ok(Some(m)) => m,
                    Ok(None) => break,
                    Err(e) => {
                        errors.push(format!("cannot read queue '{queue}' in vhost '{vhost}' from disk: {e}"));
                        break;
                    }
                };
                // Expired once its deadline is in the past: a TTL of 0 still reaches a consumer
                // that is there at once, as in RabbitMQ.
                if m.expires_at.is_some_and(|t| t < now_ms) {
                    if let Err(e) = q.settle(&m) {
                        errors.push(format!("cannot settle an expired message of queue '{queue}': {e}"));
                    }
                    settled_any = true;
                    expired.push((q.name.clone(), m, "expired"));
                    continue;
                }
                q.rr = idx + 1;
                q.mark_delivered(&m);
                let msg = delivered_message(q, &m);
                counters.redelivered += u64::from(m.redelivered);
                if no_ack {
                    counters.delivered_consume_auto_ack += 1;
                } else {
                    counters.delivered_consume_manual_ack += 1;
                }
                let redelivered = m.redelivered;
                // The consumer's channel hands out the tag and keeps the delivery's place; the
                // queue keeps the message (nothing of the connection is looked up).
                let delivery_tag = if no_ack {
                    // Acknowledged on delivery: it leaves the log now.
                    if let Err(e) = q.settle(&m) {
                        errors.push(format!("cannot settle a message of queue '{queue}' in vhost '{vhost}': {e}"));
                    }
                    settled_any = true;
                    q.consumers[idx].channel_credit.deliver(None)
                } else {
                    let key = &q.consumers[idx];
                    key.credit.delivered();
                    let id = *next_delivery_id;
                    *next_delivery_id += 1;
                    let tag = key.channel_credit.deliver(Some(Unacked {
                        delivery_tag: 0,
                        queue: q.name.clone(),
                        id,
                        consumer: Some(tag.clone()),
                        delivered_at_ms: now_ms,
                    }));
                    q.check_out(id, m);
                    tag
                };
                q.consumers[idx].outbound.add(msg.wire_size());
                out.push((
                    key_conn,
                    Out::Content {
                        channel: key_channel,
                        method: Method::BasicDeliver {
                            consumer_tag: tag,
                            delivery_tag,
                            redelivered,
                            exchange: msg.exchange.clone(),
                            routing_key: msg.routing_key.clone(),
                        },
                        msg,
                    },
                ));
            }
            if settled_any && q.durable {
                dirty.insert((Arc::from(vhost), q.name.clone()));
            }
        }
        if !expired.is_empty() {
            self.dead_letter(&Arc::from(vhost), expired, now_ms, out);
        }
    }

    /// Drops (dead-letters) the expired messages at the head of a queue.
    fn expire(&mut self, vhost: &str, queue: &str, now_ms: u64, out: &mut Vec<(ConnId, Out)>) {
        let mut expired = Vec::new();
        let Some(q) = self.vhosts.get_mut(vhost).and_then(|v| v.queues.get_mut(queue)) else { return };
        loop {
            match q.pop_expired(now_ms) {
                Ok(Some(m)) => {
                    if let Err(e) = q.settle(&m) {
                        self.errors.push(format!("cannot settle an expired message of queue '{queue}': {e}"));
                    }
                    expired.push((q.name.clone(), m, "expired"));
                }
                Ok(None) => break,
                Err(e) => {
                    self.errors.push(format!("cannot read queue '{queue}' in vhost '{vhost}' from disk: {e}"));
                    break;
                }
            }
        }
        if !expired.is_empty() {
            if q.durable {
                self.dirty.insert((Arc::from(vhost), q.name.clone()));
            }
            self.dead_letter(&Arc::from(vhost), expired, now_ms, out);
        }
    }

    fn dispatch_channel_queues(&mut self, conn: ConnId, channel: u16, now_ms: u64, out: &mut Vec<(ConnId, Out)>) {
        let Some(c) = self.conns.get(&conn) else { return };
        let vhost = c.vhost.clone();
        let Some(ch) = c.channels.get(&channel) else { return };
        let mut queues: Vec<ShortStr> = ch.consumers.values().map(|co| co.queue.clone()).collect();
        queues.sort();
        queues.dedup();
        for q in queues {
            self.dispatch(&vhost, &q, now_ms, out);
        }
    }

    fn get(
        &mut self,
        conn: ConnId,
        channel: u16,
        queue: ShortStr,
        no_ack: bool,
        now_ms: u64,
        out: &mut Vec<(ConnId, Out)>,
    ) -> Res {
        let queue = self.resolve_queue_name(conn, channel, queue)?;
        self.check(conn, Access::Read, "queue", &queue)?;
        let (vhost, _) = self.queue_for_use(conn, &queue)?;
        let ch = self.channel_mut(conn, channel)?;
        if !no_ack && ch.unacked_count() >= ch.unacked_max() {
            return Err(precondition(format_args!(
                "unacked message limit of the channel ({}) is reached: acknowledge deliveries before getting more",
                ch.unacked_max()
            )));
        }
        self.expire(&vhost, &queue, now_ms, out);
        let id = self.next_delivery_id;
        let (vhost, q) = self.queue_for_use(conn, &queue)?;
        q.last_used_ms = now_ms;
        let popped = q.pop().map_err(|e| internal(format_args!("cannot read queue '{queue}' from disk: {e}")))?;
        let Some(m) = popped else {
            Self::reply(out, conn, channel, Method::BasicGetEmpty);
            return Ok(());
        };
        q.mark_delivered(&m);
        let redelivered = m.redelivered;
        let msg = delivered_message(q, &m);
        let mut checked_out = None;
        if no_ack {
            q.settle(&m).map_err(|e| internal(format_args!("cannot settle a message of queue '{queue}': {e}")))?;
        } else {
            q.check_out(id, m);
            checked_out = Some(id);
        }
        let message_count = q.message_count();
        let qname = q.name.clone();
        if q.durable {
            self.dirty.insert((vhost, qname.clone()));
        }
        if no_ack {
            self.counters.delivered_get_auto_ack += 1;
        } else {
            self.counters.delivered_get_manual_ack += 1;
        }
        self.counters.redelivered += u64::from(redelivered);
        if checked_out.is_some() {
            self.next_delivery_id += 1;
        }
        let ch = self.channel_mut(conn, channel)?;
        let delivery_tag = match checked_out {
            Some(id) => ch.push_unacked(Unacked { delivery_tag: 0, queue: qname, id, consumer: None, delivered_at_ms: now_ms }),
            None => ch.take_delivery_tag(),
        };
        out.push((
            conn,
            Out::Content {
                channel,
                method: Method::BasicGetOk {
                    delivery_tag,
                    redelivered,
                    exchange: msg.exchange.clone(),
                    routing_key: msg.routing_key.clone(),
                    message_count,
                },
                msg,
            },
        ));
        Ok(())
    }

    // ---- acknowledgements ------------------------------------------------------------------

    fn settle(&mut self, conn: ConnId, channel: u16, op: AckOp, now_ms: u64, out: &mut Vec<(ConnId, Out)>) -> Res {
        let ch = self.channel_mut(conn, channel)?;
        if ch.tx.is_some() {
            let (tag, multiple) = match op {
                AckOp::Ack { delivery_tag, multiple } | AckOp::Nack { delivery_tag, multiple, .. } => {
                    (delivery_tag, multiple)
                }
            };
            if !ch.hold_for_tx(tag, multiple) {
                return Err(precondition(format_args!("unknown delivery tag {tag}")));
            }
            if let Some(tx) = ch.tx.as_mut() {
                tx.acks.push(op);
            }
            return Ok(());
        }
        self.apply_settle(conn, channel, op, now_ms, out)
    }

    fn apply_settle(
        &mut self,
        conn: ConnId,
        channel: u16,
        op: AckOp,
        now_ms: u64,
        out: &mut Vec<(ConnId, Out)>,
    ) -> Res {
        let vhost = self.vhost_of(conn)?;
        let (tag, multiple, requeue) = match op {
            AckOp::Ack { delivery_tag, multiple } => (delivery_tag, multiple, None),
            AckOp::Nack { delivery_tag, multiple, requeue } => (delivery_tag, multiple, Some(requeue)),
        };
        let ch = self.channel_mut(conn, channel)?;
        let Some(settled) = ch.take_acked(tag, multiple) else {
            if ch.forget_reclaimed(tag, multiple) {
                return Ok(());
            }
            return Err(precondition(format_args!("unknown delivery tag {tag}")));
        };
        self.forget_consumer_unacked(conn, channel, &settled);
        if requeue.is_none() {
            self.counters.acknowledged += settled.len() as u64;
        }
        if requeue == Some(true) {
            self.requeue(&vhost, settled, now_ms, out);
        } else {
            let mut rejected = Vec::new();
            if let Some(vh) = self.vhosts.get_mut(&*vhost) {
                for u in settled {
                    let Some(q) = vh.queues.get_mut(&u.queue) else { continue };
                    let Some(item) = q.take_checked_out(u.id) else { continue };
                    q.counters.ack += u64::from(requeue.is_none());
                    if let Err(e) = q.settle(&item) {
                        self.errors.push(format!("cannot settle a message of queue '{}': {e}", u.queue));
                    }
                    if q.durable {
                        self.dirty.insert((vhost.clone(), u.queue.clone()));
                    }
                    if requeue == Some(false) {
                        rejected.push((u.queue, item, "rejected"));
                    }
                }
            }
            self.dead_letter(&vhost, rejected, now_ms, out);
        }
        self.dispatch_channel_queues(conn, channel, now_ms, out);
        Ok(())
    }

    /// Lowers the per-consumer unacked counts for deliveries leaving the channel's unacked set.
    fn forget_consumer_unacked(&mut self, conn: ConnId, channel: u16, settled: &[Unacked]) {
        let Some(ch) = self.conns.get_mut(&conn).and_then(|c| c.channels.get_mut(&channel)) else { return };
        for u in settled {
            if let Some(co) = u.consumer.as_ref().and_then(|t| ch.consumers.get(t)) {
                co.credit.settled();
            }
        }
    }

    /// Puts deliveries back in their queues (in their original order) and delivers again. A
    /// message returned more often than its queue's delivery limit is dead-lettered instead.
    fn requeue(&mut self, vhost: &str, unacked: Vec<Unacked>, now_ms: u64, out: &mut Vec<(ConnId, Out)>) {
        if unacked.is_empty() {
            return;
        }
        let mut touched: Vec<ShortStr> = Vec::new();
        let mut over_limit = Vec::new();
        if let Some(vh) = self.vhosts.get_mut(vhost) {
            for u in unacked {
                let Some(q) = vh.queues.get_mut(&u.queue) else { continue };
                let Some(mut item) = q.take_checked_out(u.id) else { continue };
                item.returns = item.returns.saturating_add(1);
                if q.args.delivery_limit.is_some_and(|limit| u64::from(item.returns) > limit) {
                    if let Err(e) = q.settle(&item) {
                        self.errors.push(format!("cannot settle a message of queue '{}': {e}", u.queue));
                    }
                    if q.durable {
                        self.dirty.insert((Arc::from(vhost), u.queue.clone()));
                    }
                    over_limit.push((u.queue.clone(), item, "delivery_limit"));
                } else {
                    q.requeue(item);
                }
                if !touched.contains(&u.queue) {
                    touched.push(u.queue);
                }
            }
        }
        // As RabbitMQ: requeued messages count against a drop-head length limit, and being at
        // the head they are the ones dropped.
        if let Some(vh) = self.vhosts.get_mut(vhost) {
            for name in &touched {
                let Some(q) = vh.queues.get_mut(name) else { continue };
                if q.args.overflow != crate::args::Overflow::DropHead {
                    continue;
                }
                match q.trim_to_limit() {
                    Ok(dropped) => {
                        if !dropped.is_empty() && q.durable {
                            self.dirty.insert((Arc::from(vhost), name.clone()));
                        }
                        over_limit.extend(dropped.into_iter().map(|d| (name.clone(), d, "maxlen")));
                    }
                    Err(e) => self.errors.push(format!("cannot apply the length limit of queue '{name}': {e}")),
                }
            }
        }
        self.dead_letter(&Arc::from(vhost), over_limit, now_ms, out);
        for q in touched {
            self.dispatch(vhost, &q, now_ms, out);
        }
    }
}

/// The consumer the next message goes to: the first in priority order (then round-robin from
/// `rr` among equals) whose connection, channel and prefetch allow another delivery. With a
/// single active consumer only the first consumer is considered.
fn choose_consumer(q: &Queue) -> Option<usize> {
    let can_take = |idx: usize| q.consumers[idx].can_take();
    if q.args.single_active_consumer {
        return (!q.consumers.is_empty() && can_take(0)).then_some(0);
    }
    let n = q.consumers.len();
    let mut start = 0;
    while start < n {
        let priority = q.consumers[start].priority;
        let end = start + q.consumers[start..].iter().take_while(|c| c.priority == priority).count();
        let len = end - start;
        let from = if (start..end).contains(&q.rr) { q.rr - start } else { 0 };
        if let Some(idx) = (0..len).map(|i| start + (from + i) % len).find(|&idx| can_take(idx)) {
            return Some(idx);
        }
        start = end;
    }
    None
}

/// The message as delivered: quorum queues tell how often it came back (`x-delivery-count`).
fn delivered_message(q: &Queue, m: &Queued) -> MessageRef {
    if q.args.queue_type != QueueType::Quorum || m.returns == 0 {
        return m.msg.clone();
    }
    let mut props = m.msg.decode_properties();
    props.headers.get_or_insert_with(FieldTable::new).insert("x-delivery-count", FieldValue::I64(i64::from(m.returns)));
    let raw = props.to_bytes();
    Message::new(m.msg.exchange.clone(), m.msg.routing_key.clone(), props, raw, m.msg.body.clone())
}

/// The durable definition of an exchange.
fn exchange_def(vhost: &str, x: &Exchange) -> ExchangeDef {
    ExchangeDef {
        vhost: vhost.to_owned(),
        name: x.name.to_string(),
        kind: x.kind.as_str().into(),
        auto_delete: x.auto_delete,
        internal: x.internal,
        arguments: x.arguments.clone(),
    }
}

/// The durable definition of a queue.
fn queue_def(vhost: &str, q: &Queue) -> QueueDef {
    QueueDef {
        vhost: vhost.to_owned(),
        name: q.name.to_string(),
        auto_delete: q.auto_delete,
        arguments: q.arguments.clone(),
    }
}

/// The durable definition of a binding from `source`.
fn binding_def(vhost: &str, source: &str, dest: &str, to_queue: bool, b: &Binding) -> BindingDef {
    BindingDef {
        vhost: vhost.to_owned(),
        source: source.to_owned(),
        destination: dest.to_owned(),
        destination_is_queue: to_queue,
        routing_key: b.routing_key.to_string(),
        arguments: b.arguments.clone(),
    }
}

/// A binding's definition, as the journal records it.
fn durable_binding_def(vhost: &str, source: &str, b: &Binding) -> BindingDef {
    let (dest, to_queue) = match &b.destination {
        Destination::Queue(q) => (q.as_str(), true),
        Destination::Exchange(x) => (x.as_str(), false),
    };
    binding_def(vhost, source, dest, to_queue, b)
}

/// How long a settle (ack, reject, expiry) may wait before its ack file is synced; what a
/// crash can bring back of acknowledged messages.
pub const ACK_SYNC_INTERVAL_MS: u64 = 100;

/// How many journal records beyond the snapshot's size are allowed before it is folded in.
const JOURNAL_SLACK: usize = 1024;

pub mod limits;
pub mod management;
pub mod recovery;
