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
//!
//! The broker is still one value under one lock; its concerns live in their own files, each
//! an `impl Broker` over the fields it owns, on the way to separate owners (issue 14,
//! docs/architecture.md): this file holds the state, connections and channels (sessions),
//! and the method dispatch; `access` vhosts, users and permission checks; `policies`
//! policies and the queue arguments they give; `topology` exchanges, bindings and queues;
//! `publish` routing and enqueueing; `delivery` consumers, deliveries and acks; `sync` the
//! store's sync rounds and the answers waiting on them; `persist` the definitions on disk;
//! `alarms` resource alarms and flow control; `limits`, `management` and `recovery` as their
//! names say.

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
use crate::queue::{ConsumerKey, Queue, QueueStore, Queued};
use crate::ConnId;
use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::sync::Arc;
use warren_amqp::{
    Assembled, BasicProperties, FieldTable, FieldValue, Frame, Method, ProtocolError, PublishProperties, ReplyCode,
    ShortStr,
};
use warren_store::{Backend, LogConfig, MemBackend, SegmentLog, SyncHandle};

mod access;
mod alarms;
mod delivery;
mod forward;
pub mod limits;
pub mod management;
mod persist;
mod policies;
mod publish;
pub mod recovery;
mod replication;
pub use replication::{describe_op, ReplicaWork};
mod shared;
mod sync;
mod topology;
use access::Actor;
use management::Caller;

pub use alarms::{Alarms, ResourceUse};
pub use shared::{Sink, Stage, Tally};
pub use sync::{SyncJob, SYNC_ANY};

use persist::{durable_binding_def, exchange_def, queue_def, Store};
use sync::{merge_sync_target, PublishSync, Routed};

/// Something to write to a connection.
#[derive(Debug, Clone)]
pub enum Out {
    Method {
        channel: u16,
        method: Method,
    },
    /// A content-bearing method (get-ok, return) with its message.
    Content {
        channel: u16,
        method: Method,
        msg: MessageRef,
    },
    /// basic.deliver with its message: the exchange and routing key it names are the
    /// message's (not copied for every delivery).
    Deliver {
        channel: u16,
        consumer_tag: ShortStr,
        delivery_tag: u64,
        redelivered: bool,
        msg: MessageRef,
    },
}

impl Out {
    /// The method as it goes on the wire, and its message if it carries one.
    pub fn to_method(&self) -> (u16, Method, Option<&MessageRef>) {
        match self {
            Out::Method { channel, method } => (*channel, method.clone(), None),
            Out::Content { channel, method, msg } => (*channel, method.clone(), Some(msg)),
            Out::Deliver { channel, consumer_tag, delivery_tag, redelivered, msg } => (
                *channel,
                Method::BasicDeliver {
                    consumer_tag: consumer_tag.clone(),
                    delivery_tag: *delivery_tag,
                    redelivered: *redelivered,
                    exchange: msg.exchange.clone(),
                    routing_key: msg.routing_key.clone(),
                },
                Some(msg),
            ),
        }
    }
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
    /// A connection with no socket: another node's clients of a classic queue that lives
    /// here (`Broker::open_virtual_connection`). Not listed, not counted against limits.
    hidden: bool,
}

impl Conn {
    /// A connection just opened (`hidden`: one with no socket, see `hidden`).
    fn new(info: ConnInfo, grants: Arc<Grants>, hidden: bool) -> Conn {
        Conn {
            vhost: info.vhost.as_str().into(),
            cancel_notify: info.has_capability("consumer_cancel_notify"),
            info,
            grants,
            write_ok: None,
            channels: HashMap::default(),
            closing: false,
            out_bytes: Arc::default(),
            flow_blocked: false,
            alarm_blocked: false,
            blocked_sent: false,
            owns_exclusive: false,
            hidden,
        }
    }
}

#[derive(Debug)]
pub struct VHost {
    pub name: String,
    pub exchanges: HashMap<ShortStr, Exchange>,
    /// Each queue behind its own lock: under the broker's exclusive lock it is reached with
    /// `get_mut` (no locking); work that shares the broker (a publish routed by its connection
    /// while others publish) locks the queues it reaches one at a time.
    pub queues: HashMap<ShortStr, Mutex<Queue>>,
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
    /// Each connection's session behind its own lock, as the queues are (see [`VHost::queues`]).
    conns: HashMap<ConnId, Mutex<Conn>>,
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
    disk_written: std::sync::atomic::AtomicU64,
    /// Resource alarms in force (see [`Broker::set_alarms`]).
    alarms: Alarms,
    resource_use: ResourceUse,
    /// Bytes that may still come in before memory reaches the high watermark, as of the last
    /// measurement, and what was published since ([`Broker::set_memory_use`]).
    memory_headroom: Option<u64>,
    ingested: std::sync::atomic::AtomicU64,
    /// Some connection became writable again: flow-blocked publishers may go on.
    flow_released: std::sync::atomic::AtomicBool,
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
    next_delivery_id: std::sync::atomic::AtomicU64,
    /// What shared work left that is not yet folded into the fields above
    /// ([`Broker::fold_shared`]).
    pending: Mutex<Tally>,
    /// In a cluster: topology changes made here are kept for the metadata group
    /// ([`Broker::take_replication`]).
    replication: replication::Replication,
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
            next_delivery_id: std::sync::atomic::AtomicU64::new(1),
            pending: Mutex::new(Tally::default()),
            replication: replication::Replication::default(),
            disk_headroom: None,
            disk_written: std::sync::atomic::AtomicU64::new(0),
            flow_released: std::sync::atomic::AtomicBool::new(false),
            alarms: Alarms::default(),
            resource_use: ResourceUse::default(),
            memory_headroom: None,
            ingested: std::sync::atomic::AtomicU64::new(0),
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
            vh.queues.insert(name, Mutex::new(queue));
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

    /// Storage failures since the last call, for the log.
    pub fn take_errors(&mut self) -> Vec<String> {
        self.fold_shared();
        std::mem::take(&mut self.errors)
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    // ---- vhosts, users and permissions (the management API's) --------------------------------
    //
    // Every change is durable (in the definitions snapshot) before these return. Errors carry
    // the AMQP reply code that fits (404 NOT_FOUND for a missing user or vhost, 406
    // PRECONDITION_FAILED for an invalid argument) and a message for the HTTP layer.

    /// Closes a connection from the broker's side (320 CONNECTION_FORCED): its consumers are
    /// cancelled and its unacked messages requeued at once.
    fn force_close(&mut self, conn: ConnId, why: &str, now_ms: u64, out: &mut Vec<(ConnId, Out)>) {
        let channels: Vec<u16> =
            self.conns.get(&conn).map(|c| c.lock()).map(|c| c.channels.keys().copied().collect()).unwrap_or_default();
        for ch in channels {
            self.release_channel(conn, ch, now_ms, out);
        }
        self.connection_error(conn, ProtocolError::new(ReplyCode::ConnectionForced, why), out);
    }

    /// Registers a connection after connection.open; refuses a vhost that does not exist, or
    /// that the user has no permissions in, with RabbitMQ's words.
    pub fn open_connection(&mut self, conn: ConnId, info: ConnInfo) -> Res {
        if !self.vhosts.contains_key(&info.vhost) {
            return Err(ProtocolError::new(ReplyCode::NotAllowed, format_args!("vhost {} not found", info.vhost)));
        }
        if let Some(max) = self.config.connection_max {
            if self.conns.values().filter(|c| !c.lock().hidden).count() >= max as usize {
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
        self.conns.insert(conn, Mutex::new(Conn::new(info, grants, false)));
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
        let Some(c) = self.conns.get_mut(&conn).map(Mutex::get_mut) else { return };
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
        let between_commands = self.conns.get(&conn).map(|c| c.lock()).is_some_and(|c| {
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
        let Some(mut channels) = self.conns.get(&conn).map(|c| c.lock().channels.keys().copied().collect::<Vec<u16>>())
        else {
            return;
        };
        channels.sort_unstable();
        self.release_channels(conn, &channels, now_ms, out);
        let Some(c) = self.conns.remove(&conn).map(Mutex::into_inner) else { return };
        self.counters.connections_closed += 1;
        if let Some(vh) = self.vhosts.get(&*c.vhost).filter(|_| c.owns_exclusive) {
            let exclusive: Vec<ShortStr> = vh
                .queues
                .values()
                .map(|q| q.lock())
                .filter(|q| q.exclusive_owner == Some(conn))
                .map(|q| q.name.clone())
                .collect();
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
        self.conns.get(&conn).map(|c| c.lock()).is_some_and(|c| c.closing)
    }

    /// Periodic work: the consumer acknowledgement timeout.
    /// Periodic work: message TTL at queue heads, queue expiry (`x-expires`), and the consumer
    /// acknowledgement timeout.
    pub fn tick(&mut self, now_ms: u64, out: &mut Vec<(ConnId, Out)>) {
        self.fold_shared();
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
                let mut tally = Tally::default();
                let (sync, _, _) = self.enqueue(&vhost, &queues, &msg, now_ms, out, &mut tally, Sink::Out);
                self.fold(tally);
                self.predict_disk_alarm();
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
            for q in vh.queues.values_mut().map(Mutex::get_mut) {
                if q.last_used_ms == 0 {
                    // Recovered at start: the x-expires period starts now.
                    q.last_used_ms = now_ms;
                }
                if q.may_expire && !q.is_empty() {
                    to_expire.push((vh.name.clone(), q.name.clone()));
                }
                if q.args
                    .expires_ms
                    .is_some_and(|e| q.consumers().is_empty() && now_ms.saturating_sub(q.last_used_ms) >= e)
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

    pub fn overview(&self) -> Overview {
        let connections = self.conns.values().filter(|c| !c.lock().hidden).count();
        let mut o = Overview { connections, store: self.stats, ..Default::default() };
        o.store.confirms += self.pending_counters().1;
        for c in self.conns.values().map(|c| c.lock()) {
            o.channels += c.channels.len();
        }
        for vh in self.vhosts.values() {
            o.exchanges += vh.exchanges.len();
            o.queues += vh.queues.len();
            for q in vh.queues.values().map(|q| q.lock()) {
                o.consumers += q.consumers().len();
                o.messages_ready += u64::from(q.message_count());
                o.messages_unacked += q.unacked() as u64;
            }
        }
        o
    }

    /// The message and object counters since start. Channels closed is derived: a channel
    /// leaves the broker only once, so it is those opened less those open now.
    pub fn counters(&self) -> crate::metrics::Counters {
        let open: usize = self.conns.values().map(|c| c.lock()).map(|c| c.channels.len()).sum();
        let mut c = self.counters;
        c.add(&self.pending_counters().0);
        c.channels_closed = c.channels_opened.saturating_sub(open as u64);
        c
    }

    /// Where the broker keeps its data (the metrics endpoint reports the free space there).
    pub fn data_dir(&self) -> &std::path::Path {
        &self.store.dir
    }

    pub fn queues(&self) -> Vec<QueueInfo> {
        let mut v: Vec<QueueInfo> = self
            .vhosts
            .values()
            .flat_map(|vh| vh.queues.values().map(|q| q.lock()).map(move |q| Self::queue_info(vh, &q)))
            .collect();
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
    pub fn queue_keys(&self) -> Vec<(Arc<str>, ShortStr)> {
        // Under the lock for every queue of the node: clones of shared names (no allocation per
        // queue), sorted by the caller after the lock is released.
        let mut keys = Vec::with_capacity(self.vhosts.values().map(|vh| vh.queues.len()).sum());
        for vh in self.vhosts.values() {
            let vhost: Arc<str> = Arc::from(vh.name.as_str());
            keys.extend(vh.queues.keys().map(|q| (vhost.clone(), q.clone())));
        }
        keys
    }

    /// Whether the queue exists.
    pub fn has_queue(&self, vhost: &str, name: &str) -> bool {
        self.vhosts.get(vhost).is_some_and(|vh| vh.queues.contains_key(name))
    }

    /// The details and message counters of these queues, in this order; a queue deleted since
    /// its key was taken is left out.
    pub fn queue_details(
        &self,
        keys: &[(Arc<str>, ShortStr)],
    ) -> Vec<(QueueInfo, crate::broker::management::QueueStats)> {
        keys.iter()
            .filter_map(|(v, n)| {
                let vh = self.vhosts.get(&**v)?;
                let q = vh.queues.get(n).map(|q| q.lock())?;
                let stats = crate::broker::management::QueueStats {
                    vhost: v.to_string(),
                    name: n.to_string(),
                    counters: q.counters,
                };
                Some((Self::queue_info(vh, &q), stats))
            })
            .collect()
    }

    // ---- errors ----------------------------------------------------------------------------

    fn connection_error(&mut self, conn: ConnId, e: ProtocolError, out: &mut Vec<(ConnId, Out)>) {
        let Some(c) = self.conns.get_mut(&conn).map(Mutex::get_mut) else { return };
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
        let Some(ch) = self.conns.get_mut(&conn).map(Mutex::get_mut).and_then(|c| c.channels.get_mut(&channel)) else {
            return;
        };
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
        let Some(vhost) = self.conns.get(&conn).map(|c| c.lock()).map(|c| c.vhost.clone()) else { return };
        let mut unacked: Vec<Unacked> = Vec::new();
        let mut queues = Vec::new();
        for &channel in channels {
            let Some(ch) = self.conns.get_mut(&conn).map(Mutex::get_mut).and_then(|c| c.channels.get_mut(&channel))
            else {
                continue;
            };
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
        let saved = self.save_definitions_for(Some(conn));
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
        content: Option<(PublishProperties, Bytes, Bytes)>,
        now_ms: u64,
        out: &mut Vec<(ConnId, Out)>,
    ) -> Res {
        let mut method = method;
        strip_cr_lf_names(&mut method);
        match method {
            Method::ChannelOpen => Err(ProtocolError::new(ReplyCode::ChannelError, "second 'channel.open' seen")),
            Method::ChannelClose { .. } => {
                self.release_channel(conn, channel, now_ms, out);
                if let Some(c) = self.conns.get_mut(&conn).map(Mutex::get_mut) {
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
                let who = self.actor_of(conn)?;
                self.exchange_declare(&who, &exchange, &kind, passive, durable, auto_delete, internal, arguments)?;
                if !nowait {
                    Self::reply(out, conn, channel, Method::ExchangeDeclareOk);
                }
                Ok(())
            }
            Method::ExchangeDelete { exchange, if_unused, nowait } => {
                let who = self.actor_of(conn)?;
                self.exchange_delete(&who, &exchange, if_unused)?;
                if !nowait {
                    Self::reply(out, conn, channel, Method::ExchangeDeleteOk);
                }
                Ok(())
            }
            Method::ExchangeBind { destination, source, routing_key, nowait, arguments } => {
                let who = self.actor_of(conn)?;
                self.bind(&who, Destination::Exchange(destination), &source, routing_key, arguments)?;
                if !nowait {
                    Self::reply(out, conn, channel, Method::ExchangeBindOk);
                }
                Ok(())
            }
            Method::ExchangeUnbind { destination, source, routing_key, nowait, arguments } => {
                let who = self.actor_of(conn)?;
                self.unbind(&who, Destination::Exchange(destination), &source, routing_key, arguments)?;
                if !nowait {
                    Self::reply(out, conn, channel, Method::ExchangeUnbindOk);
                }
                Ok(())
            }
            Method::QueueDeclare { queue, passive, durable, exclusive, auto_delete, nowait, arguments } => {
                let who = self.actor_of(conn)?;
                // A passive declare of no name means the channel's last declared queue.
                let queue = if passive { self.resolve_queue_name(conn, channel, queue)? } else { queue };
                let (name, messages, consumers) =
                    self.queue_declare(&who, queue, passive, durable, exclusive, auto_delete, arguments, now_ms)?;
                if name.as_str() != REPLY_TO_QUEUE {
                    self.channel_mut(conn, channel)?.last_queue = Some(name.clone());
                }
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
                let who = self.actor_of(conn)?;
                self.bind(&who, Destination::Queue(queue), &exchange, routing_key, arguments)?;
                if !nowait {
                    Self::reply(out, conn, channel, Method::QueueBindOk);
                }
                Ok(())
            }
            Method::QueueUnbind { queue, exchange, routing_key, arguments } => {
                let queue = self.resolve_queue_name(conn, channel, queue)?;
                let who = self.actor_of(conn)?;
                self.unbind(&who, Destination::Queue(queue), &exchange, routing_key, arguments)?;
                Self::reply(out, conn, channel, Method::QueueUnbindOk);
                Ok(())
            }
            Method::QueuePurge { queue, nowait } => {
                let queue = self.resolve_queue_name(conn, channel, queue)?;
                let who = self.actor_of(conn)?;
                let n = self.queue_purge(&who, &queue)?;
                if !nowait {
                    Self::reply(out, conn, channel, Method::QueuePurgeOk { message_count: n });
                }
                Ok(())
            }
            Method::QueueDelete { queue, if_unused, if_empty, nowait } => {
                let queue = self.resolve_queue_name(conn, channel, queue)?;
                let who = self.actor_of(conn)?;
                // delete-ok goes before the basic.cancel of consumers on this channel, as in
                // RabbitMQ: py-amqp (kombu, Celery) fails a queue_delete that sees the cancel first.
                let at = out.len();
                let n = self.queue_delete(&who, &queue, if_unused, if_empty, now_ms, out)?;
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

    // ---- lookups ---------------------------------------------------------------------------

    /// The connections (with the broker held) that `pred` picks.
    fn conns_where(&mut self, pred: impl Fn(&Conn) -> bool) -> Vec<ConnId> {
        self.conns.iter_mut().filter_map(|(id, c)| pred(c.get_mut()).then_some(*id)).collect()
    }

    fn vhost_of(&self, conn: ConnId) -> Result<Arc<str>, ProtocolError> {
        self.conns
            .get(&conn)
            .map(|c| c.lock().vhost.clone())
            .ok_or_else(|| ProtocolError::new(ReplyCode::InternalError, "unknown connection"))
    }

    fn channel_mut(&mut self, conn: ConnId, channel: u16) -> Result<&mut Channel, ProtocolError> {
        self.conns
            .get_mut(&conn)
            .and_then(|c| c.get_mut().channels.get_mut(&channel))
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
            .and_then(|v| v.queues.get_mut(name).map(Mutex::get_mut))
            .ok_or_else(|| not_found("queue", name, &vhost))?;
        forward::home_down(&self.replication.homes_down, q, &vhost)?;
        if q.exclusive_owner.is_some_and(|o| o != conn) {
            return Err(locked(name, &vhost));
        }
        Ok((vhost, q))
    }

    // ---- exchanges and bindings ------------------------------------------------------------

    // ---- queues ----------------------------------------------------------------------------

    // ---- consumers -------------------------------------------------------------------------

    // ---- publishing ------------------------------------------------------------------------

    // ---- delivery --------------------------------------------------------------------------

    // ---- acknowledgements ------------------------------------------------------------------
}

/// How long a settle (ack, reject, expiry) may wait before its ack file is synced; what a
/// crash can bring back of acknowledged messages.
pub const ACK_SYNC_INTERVAL_MS: u64 = 100;

/// How many journal records beyond the snapshot's size are allowed before it is folded in.
const JOURNAL_SLACK: usize = 1024;
