//! The durable definitions (vhosts, users, permissions, topic permissions, policies, durable
//! exchanges, durable queues, bindings between durable ends) as one snapshot, encoded as an AMQP field table.
//!
//! Topology changes (durable exchanges, queues and bindings) are appended to a journal, O(1)
//! each; other changes rewrite the snapshot whole, atomically and durably
//! (`Backend::replace_durably`), and so does a journal grown past the snapshot's size. Either is
//! durable before the client is answered. See "the journal" below and docs/store-format.md.

use bytes::{Bytes, BytesMut};
use warren_amqp::codec::Reader;
use warren_amqp::{FieldTable, FieldValue, ShortStr};

/// Bumped when the layout changes incompatibly.
const VERSION: i64 = 1;

/// The snapshot file: this magic, the length (u32 LE) and CRC-32 (u32 LE) of the body, then the
/// body (the field table). Why a checksum: a damaged snapshot must be told from a valid one, or
/// recovery would trust a table that decodes but lost a queue. Files without the magic are read
/// as the older format (the table alone).
const SNAPSHOT_MAGIC: &[u8; 8] = b"WRNDEF02";
pub const SNAPSHOT_HEADER_LEN: usize = 16;

#[derive(Debug, Clone, PartialEq)]
pub struct ExchangeDef {
    pub vhost: String,
    pub name: String,
    pub kind: String,
    pub auto_delete: bool,
    pub internal: bool,
    pub arguments: FieldTable,
}

#[derive(Debug, Clone, PartialEq)]
pub struct QueueDef {
    pub vhost: String,
    pub name: String,
    pub auto_delete: bool,
    pub arguments: FieldTable,
}

#[derive(Debug, Clone, PartialEq)]
pub struct BindingDef {
    pub vhost: String,
    pub source: String,
    pub destination: String,
    pub destination_is_queue: bool,
    pub routing_key: String,
    pub arguments: FieldTable,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PolicyDef {
    pub vhost: String,
    pub name: String,
    pub pattern: String,
    pub apply_to: String,
    pub priority: i64,
    pub definition: FieldTable,
    /// An operator policy (limits that cap what users and policies set).
    pub operator: bool,
}

/// A user: name, password hash (RabbitMQ's format), hashing algorithm, tags.
#[derive(Debug, Clone, PartialEq)]
pub struct UserDef {
    pub name: String,
    pub password_hash: String,
    pub hashing_algorithm: String,
    pub tags: Vec<String>,
}

/// A user's configure / write / read patterns in a vhost.
#[derive(Debug, Clone, PartialEq)]
pub struct PermissionDef {
    pub user: String,
    pub vhost: String,
    pub configure: String,
    pub write: String,
    pub read: String,
}

/// A user's topic permission on an exchange of a vhost.
#[derive(Debug, Clone, PartialEq)]
pub struct TopicPermissionDef {
    pub user: String,
    pub vhost: String,
    pub exchange: String,
    pub write: String,
    pub read: String,
}

impl ExchangeDef {
    fn to_field(&self) -> FieldValue {
        table(vec![
            ("vhost", s(&self.vhost)),
            ("name", s(&self.name)),
            ("type", s(&self.kind)),
            ("auto_delete", FieldValue::Bool(self.auto_delete)),
            ("internal", FieldValue::Bool(self.internal)),
            ("arguments", FieldValue::Table(self.arguments.clone())),
        ])
    }

    fn from_table(t: &FieldTable) -> Result<Self, String> {
        Ok(ExchangeDef {
            vhost: get_str(t, "vhost")?,
            name: get_str(t, "name")?,
            kind: get_str(t, "type")?,
            auto_delete: get_bool(t, "auto_delete")?,
            internal: get_bool(t, "internal")?,
            arguments: get_table(t, "arguments")?,
        })
    }
}

impl QueueDef {
    fn to_field(&self) -> FieldValue {
        table(vec![
            ("vhost", s(&self.vhost)),
            ("name", s(&self.name)),
            ("auto_delete", FieldValue::Bool(self.auto_delete)),
            ("arguments", FieldValue::Table(self.arguments.clone())),
        ])
    }

    fn from_table(t: &FieldTable) -> Result<Self, String> {
        Ok(QueueDef {
            vhost: get_str(t, "vhost")?,
            name: get_str(t, "name")?,
            auto_delete: get_bool(t, "auto_delete")?,
            arguments: get_table(t, "arguments")?,
        })
    }
}

impl BindingDef {
    fn to_field(&self) -> FieldValue {
        table(vec![
            ("vhost", s(&self.vhost)),
            ("source", s(&self.source)),
            ("destination", s(&self.destination)),
            ("destination_type", s(if self.destination_is_queue { "queue" } else { "exchange" })),
            ("routing_key", s(&self.routing_key)),
            ("arguments", FieldValue::Table(self.arguments.clone())),
        ])
    }

    fn from_table(t: &FieldTable) -> Result<Self, String> {
        Ok(BindingDef {
            vhost: get_str(t, "vhost")?,
            source: get_str(t, "source")?,
            destination: get_str(t, "destination")?,
            destination_is_queue: get_str(t, "destination_type")? == "queue",
            routing_key: get_str(t, "routing_key")?,
            arguments: get_table(t, "arguments")?,
        })
    }

    /// Bindings are the same binding when all their fields are; the encoding says so.
    pub fn key(&self) -> Vec<u8> {
        let mut b = BytesMut::new();
        if let FieldValue::Table(t) = self.to_field() {
            t.encode(&mut b);
        }
        b.to_vec()
    }
}

impl UserDef {
    fn to_field(&self) -> FieldValue {
        table(vec![
            ("name", s(&self.name)),
            ("password_hash", s(&self.password_hash)),
            ("hashing_algorithm", s(&self.hashing_algorithm)),
            ("tags", FieldValue::Array(self.tags.iter().map(|t| s(t)).collect())),
        ])
    }

    fn from_table(t: &FieldTable) -> Result<Self, String> {
        let mut tags = Vec::new();
        for v in get_array(t, "tags")? {
            tags.push(v.as_str().ok_or("user tag is not a string")?.to_owned());
        }
        Ok(UserDef {
            name: get_str(t, "name")?,
            password_hash: get_str(t, "password_hash")?,
            hashing_algorithm: get_str(t, "hashing_algorithm")?,
            tags,
        })
    }
}

impl PermissionDef {
    fn to_field(&self) -> FieldValue {
        table(vec![
            ("user", s(&self.user)),
            ("vhost", s(&self.vhost)),
            ("configure", s(&self.configure)),
            ("write", s(&self.write)),
            ("read", s(&self.read)),
        ])
    }

    fn from_table(t: &FieldTable) -> Result<Self, String> {
        Ok(PermissionDef {
            user: get_str(t, "user")?,
            vhost: get_str(t, "vhost")?,
            configure: get_str(t, "configure")?,
            write: get_str(t, "write")?,
            read: get_str(t, "read")?,
        })
    }
}

impl TopicPermissionDef {
    fn to_field(&self) -> FieldValue {
        table(vec![
            ("user", s(&self.user)),
            ("vhost", s(&self.vhost)),
            ("exchange", s(&self.exchange)),
            ("write", s(&self.write)),
            ("read", s(&self.read)),
        ])
    }

    fn from_table(t: &FieldTable) -> Result<Self, String> {
        Ok(TopicPermissionDef {
            user: get_str(t, "user")?,
            vhost: get_str(t, "vhost")?,
            exchange: get_str(t, "exchange")?,
            write: get_str(t, "write")?,
            read: get_str(t, "read")?,
        })
    }
}

impl PolicyDef {
    fn to_field(&self) -> FieldValue {
        table(vec![
            ("vhost", s(&self.vhost)),
            ("name", s(&self.name)),
            ("pattern", s(&self.pattern)),
            ("apply-to", s(&self.apply_to)),
            ("priority", FieldValue::I64(self.priority)),
            ("definition", FieldValue::Table(self.definition.clone())),
            ("operator", FieldValue::Bool(self.operator)),
        ])
    }

    fn from_table(t: &FieldTable) -> Result<Self, String> {
        Ok(PolicyDef {
            vhost: get_str(t, "vhost")?,
            name: get_str(t, "name")?,
            pattern: get_str(t, "pattern")?,
            apply_to: get_str(t, "apply-to")?,
            priority: t.get("priority").and_then(FieldValue::as_i64).unwrap_or(0),
            definition: get_table(t, "definition")?,
            operator: get_bool(t, "operator")?,
        })
    }
}

/// A vhost's limits as a table: `key` (its name), then the limits that are set.
fn vhost_limits_field(key: (&'static str, &str), l: &VhostLimits) -> FieldValue {
    let mut t = vec![(key.0, s(key.1))];
    t.extend(l.max_connections.map(|n| ("max-connections", FieldValue::I64(n))));
    t.extend(l.max_queues.map(|n| ("max-queues", FieldValue::I64(n))));
    table(t)
}

fn vhost_limits_of(t: &FieldTable) -> VhostLimits {
    VhostLimits {
        max_connections: t.get("max-connections").and_then(FieldValue::as_i64),
        max_queues: t.get("max-queues").and_then(FieldValue::as_i64),
    }
}

/// A user's limits as a table: `key` (its name), then the limits that are set.
fn user_limits_field(key: (&'static str, &str), l: &UserLimits) -> FieldValue {
    let mut t = vec![(key.0, s(key.1))];
    t.extend(l.max_connections.map(|n| ("max-connections", FieldValue::I64(n))));
    t.extend(l.max_channels.map(|n| ("max-channels", FieldValue::I64(n))));
    table(t)
}

fn user_limits_of(t: &FieldTable) -> UserLimits {
    UserLimits {
        max_connections: t.get("max-connections").and_then(FieldValue::as_i64),
        max_channels: t.get("max-channels").and_then(FieldValue::as_i64),
    }
}

/// A vhost's limits (RabbitMQ's `max-connections` and `max-queues`), as set: a negative value
/// means no limit, as in RabbitMQ.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VhostLimits {
    pub max_connections: Option<i64>,
    pub max_queues: Option<i64>,
}

impl VhostLimits {
    pub fn is_empty(&self) -> bool {
        self.max_connections.is_none() && self.max_queues.is_none()
    }

    /// The limits in force: set and not negative.
    pub fn connections(&self) -> Option<u64> {
        self.max_connections.and_then(|n| u64::try_from(n).ok())
    }

    pub fn queues(&self) -> Option<u64> {
        self.max_queues.and_then(|n| u64::try_from(n).ok())
    }
}

/// A user's limits (RabbitMQ's `max-connections` and `max-channels` user limits), as set: a
/// negative value means no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct UserLimits {
    pub max_connections: Option<i64>,
    pub max_channels: Option<i64>,
}

impl UserLimits {
    pub fn is_empty(&self) -> bool {
        self.max_connections.is_none() && self.max_channels.is_none()
    }

    /// The limits in force: set and not negative.
    pub fn connections(&self) -> Option<u64> {
        self.max_connections.and_then(|n| u64::try_from(n).ok())
    }

    pub fn channels(&self) -> Option<u64> {
        self.max_channels.and_then(|n| u64::try_from(n).ok())
    }
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Definitions {
    /// Which journal continues this snapshot: only one of the same generation is replayed.
    pub generation: u64,
    pub vhosts: Vec<String>,
    /// The limits of the vhosts that have any.
    pub vhost_limits: Vec<(String, VhostLimits)>,
    /// The limits of the users that have any.
    pub user_limits: Vec<(String, UserLimits)>,
    /// None in snapshots written before users were stored: the broker then seeds the default
    /// user from its configuration, as on a fresh store.
    pub users: Option<Vec<UserDef>>,
    pub permissions: Vec<PermissionDef>,
    pub topic_permissions: Vec<TopicPermissionDef>,
    pub policies: Vec<PolicyDef>,
    pub exchanges: Vec<ExchangeDef>,
    pub queues: Vec<QueueDef>,
    pub bindings: Vec<BindingDef>,
}

fn s(v: &str) -> FieldValue {
    FieldValue::from(v)
}

fn table(entries: Vec<(&'static str, FieldValue)>) -> FieldValue {
    FieldValue::Table(entries.into_iter().map(|(k, v)| (ShortStr::from_static(k), v)).collect())
}

fn get_str(t: &FieldTable, k: &str) -> Result<String, String> {
    t.get(k)
        .and_then(FieldValue::as_str)
        .map(str::to_owned)
        .ok_or_else(|| format!("field '{k}' missing or not a string"))
}

fn get_bool(t: &FieldTable, k: &str) -> Result<bool, String> {
    t.get(k).and_then(FieldValue::as_bool).ok_or_else(|| format!("field '{k}' missing or not a boolean"))
}

fn get_table(t: &FieldTable, k: &str) -> Result<FieldTable, String> {
    match t.get(k) {
        Some(FieldValue::Table(t)) => Ok(t.clone()),
        _ => Err(format!("field '{k}' missing or not a table")),
    }
}

fn get_array<'a>(t: &'a FieldTable, k: &str) -> Result<&'a [FieldValue], String> {
    match t.get(k) {
        Some(FieldValue::Array(a)) => Ok(a),
        _ => Err(format!("field '{k}' missing or not an array")),
    }
}

fn tables(items: &[FieldValue]) -> impl Iterator<Item = Result<&FieldTable, String>> {
    items.iter().map(|v| match v {
        FieldValue::Table(t) => Ok(t),
        _ => Err("array entry is not a table".to_string()),
    })
}

impl Definitions {
    pub fn encode(&self) -> Bytes {
        let mut root = FieldTable::new();
        root.insert("version", FieldValue::I64(VERSION));
        root.insert("generation", FieldValue::I64(self.generation as i64));
        root.insert("vhosts", FieldValue::Array(self.vhosts.iter().map(|v| s(v)).collect()));
        root.insert(
            "vhost_limits",
            FieldValue::Array(
                self.vhost_limits.iter().map(|(vhost, l)| vhost_limits_field(("vhost", vhost), l)).collect(),
            ),
        );
        root.insert(
            "user_limits",
            FieldValue::Array(self.user_limits.iter().map(|(user, l)| user_limits_field(("user", user), l)).collect()),
        );
        root.insert("exchanges", FieldValue::Array(self.exchanges.iter().map(ExchangeDef::to_field).collect()));
        root.insert("queues", FieldValue::Array(self.queues.iter().map(QueueDef::to_field).collect()));
        root.insert("bindings", FieldValue::Array(self.bindings.iter().map(BindingDef::to_field).collect()));
        root.insert("policies", FieldValue::Array(self.policies.iter().map(PolicyDef::to_field).collect()));
        if let Some(users) = &self.users {
            root.insert("users", FieldValue::Array(users.iter().map(UserDef::to_field).collect()));
        }
        root.insert("permissions", FieldValue::Array(self.permissions.iter().map(PermissionDef::to_field).collect()));
        root.insert(
            "topic_permissions",
            FieldValue::Array(self.topic_permissions.iter().map(TopicPermissionDef::to_field).collect()),
        );
        let mut body = BytesMut::new();
        root.encode(&mut body);
        let mut out = BytesMut::with_capacity(SNAPSHOT_HEADER_LEN + body.len());
        out.extend_from_slice(SNAPSHOT_MAGIC);
        out.extend_from_slice(&(body.len() as u32).to_le_bytes());
        out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        out.extend_from_slice(&body);
        out.freeze()
    }

    /// Reads a snapshot file: the current format (header and checksum) or the one before it (the
    /// field table alone, without a checksum, as Warren wrote it before the header existed).
    pub fn decode(bytes: Bytes) -> Result<Self, String> {
        let body = match snapshot_body(&bytes)? {
            Some(range) => bytes.slice(range),
            None => bytes,
        };
        let root =
            FieldTable::decode(&mut Reader::new(body)).map_err(|e| format!("not a definitions snapshot: {e}"))?;
        match root.get("version").and_then(FieldValue::as_i64) {
            Some(VERSION) => {}
            other => return Err(format!("definitions snapshot version {other:?} is not {VERSION}")),
        }
        let mut d = Definitions::default();
        for v in get_array(&root, "vhosts")? {
            d.vhosts.push(v.as_str().ok_or("vhost name is not a string")?.to_owned());
        }
        // Snapshots written before vhost limits existed have none.
        if root.get("vhost_limits").is_some() {
            for t in tables(get_array(&root, "vhost_limits")?) {
                let t = t?;
                d.vhost_limits.push((get_str(t, "vhost")?, vhost_limits_of(t)));
            }
        }
        if root.get("user_limits").is_some() {
            for t in tables(get_array(&root, "user_limits")?) {
                let t = t?;
                d.user_limits.push((get_str(t, "user")?, user_limits_of(t)));
            }
        }
        d.generation = root.get("generation").and_then(FieldValue::as_i64).map_or(0, |g| g as u64);
        for t in tables(get_array(&root, "exchanges")?) {
            d.exchanges.push(ExchangeDef::from_table(t?)?);
        }
        for t in tables(get_array(&root, "queues")?) {
            d.queues.push(QueueDef::from_table(t?)?);
        }
        for t in tables(get_array(&root, "bindings")?) {
            d.bindings.push(BindingDef::from_table(t?)?);
        }
        // Snapshots written before policies existed have none.
        if root.get("policies").is_some() {
            for t in tables(get_array(&root, "policies")?) {
                d.policies.push(PolicyDef::from_table(t?)?);
            }
        }
        // Snapshots written before access control existed have no users and permissions.
        if root.get("users").is_some() {
            let mut users = Vec::new();
            for t in tables(get_array(&root, "users")?) {
                users.push(UserDef::from_table(t?)?);
            }
            d.users = Some(users);
        }
        if root.get("permissions").is_some() {
            for t in tables(get_array(&root, "permissions")?) {
                d.permissions.push(PermissionDef::from_table(t?)?);
            }
        }
        if root.get("topic_permissions").is_some() {
            for t in tables(get_array(&root, "topic_permissions")?) {
                d.topic_permissions.push(TopicPermissionDef::from_table(t?)?);
            }
        }
        Ok(d)
    }
}

/// Where the body of a snapshot file is, once its header and checksum are checked; None for a
/// file of the older format (no header: the body is the whole file, and has no checksum).
fn snapshot_body(bytes: &[u8]) -> Result<Option<std::ops::Range<usize>>, String> {
    let Some(rest) = bytes.strip_prefix(SNAPSHOT_MAGIC) else { return Ok(None) };
    let (Some(len), Some(crc)) = (rest.get(..4), rest.get(4..8)) else {
        return Err("the snapshot header is cut short".into());
    };
    let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
    let crc = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
    let body = &bytes[SNAPSHOT_HEADER_LEN.min(bytes.len())..];
    if body.len() != len {
        return Err(format!("the snapshot holds {} bytes after its header, not {len}", body.len()));
    }
    if crc32fast::hash(body) != crc {
        return Err("the snapshot fails its checksum".into());
    }
    Ok(Some(SNAPSHOT_HEADER_LEN..bytes.len()))
}

/// Checks a snapshot file without decoding it (one of the older format, which has no checksum,
/// must decode).
pub fn check_snapshot(bytes: &[u8]) -> Result<(), String> {
    match snapshot_body(bytes)? {
        Some(_) => Ok(()),
        None => Definitions::decode(Bytes::copy_from_slice(bytes)).map(drop),
    }
}

// ---- the journal ------------------------------------------------------------------------
//
// Declaring or deleting a durable queue, exchange or binding appends one record to the journal
// and syncs it, instead of rewriting the snapshot: O(1) per change however many definitions
// there are. Other changes (vhosts, users, permissions, policies, limits) rewrite the snapshot,
// and so does the journal outgrowing the snapshot. A rewrite bumps the generation and starts a
// fresh journal of that generation, so a journal the snapshot already includes (a crash between
// the two writes) is never replayed.
//
// Layout: a 16-byte header (magic `WDJ2`, the CRC-32 of the other 12 header bytes, the
// generation as a little-endian u64), then records: payload length (u32 LE), CRC-32 of the
// payload (u32 LE), payload (an encoded field table). Journals written before the header had a
// checksum start with `WDJ1` and 4 zero bytes; they are still read.
//
// Reading: a record cut short, failing its checksum or not decoding is a torn tail (a change
// never confirmed) if no valid record follows it; if one does, the bytes were damaged after they
// were written: the damage is reported (byte offset) and every valid record on either side of
// it is replayed. A damaged header costs only the generation check (the records are replayed
// onto the snapshot as if it matched).

const JOURNAL_MAGIC: &[u8; 4] = b"WDJ2";
/// The header of journals written before it had a checksum.
const JOURNAL_MAGIC_V1: &[u8; 4] = b"WDJ1";
pub const JOURNAL_HEADER_LEN: usize = 16;
/// A record header: payload length and payload checksum.
const JOURNAL_RECORD_HEADER_LEN: usize = 8;

/// One change to the durable definitions. The topology's (exchanges, queues, bindings) are
/// the journal's records; the others (vhosts, users, permissions, policies, limits) rewrite
/// the snapshot (see "the journal" above) and exist as changes for the metadata group, which
/// replicates them all in the order they were made (docs/clustering.md, "The metadata group").
#[derive(Debug, Clone, PartialEq)]
pub enum DefOp {
    PutExchange(ExchangeDef),
    /// Also removes the bindings from and to it.
    DelExchange {
        vhost: String,
        name: String,
    },
    PutQueue(QueueDef),
    /// Also removes the bindings to it.
    DelQueue {
        vhost: String,
        name: String,
    },
    PutBinding(BindingDef),
    DelBinding(BindingDef),
    /// A vhost (with its built-in exchanges) exists.
    PutVhost {
        name: String,
    },
    /// Also removes everything in it: exchanges, queues, bindings, permissions, topic
    /// permissions, policies, limits.
    DelVhost {
        name: String,
    },
    /// Adds or replaces a user (its password as hashed where it was set, never in clear).
    PutUser(UserDef),
    /// Also removes its permissions, topic permissions and limits.
    DelUser {
        name: String,
    },
    PutPermission(PermissionDef),
    DelPermission {
        user: String,
        vhost: String,
    },
    PutTopicPermission(TopicPermissionDef),
    DelTopicPermission {
        user: String,
        vhost: String,
        exchange: String,
    },
    /// Adds or replaces a policy or operator policy (`operator`).
    PutPolicy(PolicyDef),
    DelPolicy {
        vhost: String,
        name: String,
        operator: bool,
    },
    /// A vhost's limits, all of them as they are now (none set: no limits).
    SetVhostLimits {
        vhost: String,
        limits: VhostLimits,
    },
    /// A user's limits, all of them as they are now (none set: no limits).
    SetUserLimits {
        user: String,
        limits: UserLimits,
    },
}

impl DefOp {
    /// A change to exchanges, queues or bindings (the changes the journal holds).
    pub fn is_topology(&self) -> bool {
        matches!(
            self,
            DefOp::PutExchange(_)
                | DefOp::DelExchange { .. }
                | DefOp::PutQueue(_)
                | DefOp::DelQueue { .. }
                | DefOp::PutBinding(_)
                | DefOp::DelBinding(_)
        )
    }

    fn to_table(&self) -> FieldTable {
        let (op, body) = match self {
            DefOp::PutExchange(x) => ("put-exchange", x.to_field()),
            DefOp::DelExchange { vhost, name } => ("del-exchange", table(vec![("vhost", s(vhost)), ("name", s(name))])),
            DefOp::PutQueue(q) => ("put-queue", q.to_field()),
            DefOp::DelQueue { vhost, name } => ("del-queue", table(vec![("vhost", s(vhost)), ("name", s(name))])),
            DefOp::PutBinding(b) => ("put-binding", b.to_field()),
            DefOp::DelBinding(b) => ("del-binding", b.to_field()),
            DefOp::PutVhost { name } => ("put-vhost", table(vec![("name", s(name))])),
            DefOp::DelVhost { name } => ("del-vhost", table(vec![("name", s(name))])),
            DefOp::PutUser(u) => ("put-user", u.to_field()),
            DefOp::DelUser { name } => ("del-user", table(vec![("name", s(name))])),
            DefOp::PutPermission(p) => ("put-permission", p.to_field()),
            DefOp::DelPermission { user, vhost } => {
                ("del-permission", table(vec![("user", s(user)), ("vhost", s(vhost))]))
            }
            DefOp::PutTopicPermission(p) => ("put-topic-permission", p.to_field()),
            DefOp::DelTopicPermission { user, vhost, exchange } => {
                ("del-topic-permission", table(vec![("user", s(user)), ("vhost", s(vhost)), ("exchange", s(exchange))]))
            }
            DefOp::PutPolicy(p) => ("put-policy", p.to_field()),
            DefOp::DelPolicy { vhost, name, operator } => (
                "del-policy",
                table(vec![("vhost", s(vhost)), ("name", s(name)), ("operator", FieldValue::Bool(*operator))]),
            ),
            DefOp::SetVhostLimits { vhost, limits } => {
                ("set-vhost-limits", vhost_limits_field(("vhost", vhost), limits))
            }
            DefOp::SetUserLimits { user, limits } => ("set-user-limits", user_limits_field(("user", user), limits)),
        };
        let mut t = FieldTable::new();
        t.insert("op", s(op));
        t.insert("def", body);
        t
    }

    fn from_table(t: &FieldTable) -> Result<Self, String> {
        let def = get_table(t, "def")?;
        let field = |k: &str| get_str(&def, k);
        Ok(match get_str(t, "op")?.as_str() {
            "put-exchange" => DefOp::PutExchange(ExchangeDef::from_table(&def)?),
            "del-exchange" => DefOp::DelExchange { vhost: field("vhost")?, name: field("name")? },
            "put-queue" => DefOp::PutQueue(QueueDef::from_table(&def)?),
            "del-queue" => DefOp::DelQueue { vhost: field("vhost")?, name: field("name")? },
            "put-binding" => DefOp::PutBinding(BindingDef::from_table(&def)?),
            "del-binding" => DefOp::DelBinding(BindingDef::from_table(&def)?),
            "put-vhost" => DefOp::PutVhost { name: field("name")? },
            "del-vhost" => DefOp::DelVhost { name: field("name")? },
            "put-user" => DefOp::PutUser(UserDef::from_table(&def)?),
            "del-user" => DefOp::DelUser { name: field("name")? },
            "put-permission" => DefOp::PutPermission(PermissionDef::from_table(&def)?),
            "del-permission" => DefOp::DelPermission { user: field("user")?, vhost: field("vhost")? },
            "put-topic-permission" => DefOp::PutTopicPermission(TopicPermissionDef::from_table(&def)?),
            "del-topic-permission" => {
                DefOp::DelTopicPermission { user: field("user")?, vhost: field("vhost")?, exchange: field("exchange")? }
            }
            "put-policy" => DefOp::PutPolicy(PolicyDef::from_table(&def)?),
            "del-policy" => {
                DefOp::DelPolicy { vhost: field("vhost")?, name: field("name")?, operator: get_bool(&def, "operator")? }
            }
            "set-vhost-limits" => DefOp::SetVhostLimits { vhost: field("vhost")?, limits: vhost_limits_of(&def) },
            "set-user-limits" => DefOp::SetUserLimits { user: field("user")?, limits: user_limits_of(&def) },
            other => return Err(format!("unknown journal operation '{other}'")),
        })
    }

    /// Appends this change as one journal record.
    pub fn encode_record(&self, out: &mut BytesMut) {
        let mut payload = BytesMut::new();
        self.to_table().encode(&mut payload);
        out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        out.extend_from_slice(&payload);
    }
}

impl DefOp {
    /// Reads one change written by [`DefOp::encode_record`] from `bytes`, which must hold that
    /// record and nothing else.
    pub fn decode_record(bytes: &[u8]) -> Result<DefOp, String> {
        let (op, end) = journal_record(bytes, 0)?;
        if end != bytes.len() {
            return Err(format!("{} bytes after the record", bytes.len() - end));
        }
        Ok(op)
    }
}

/// The header of a journal continuing the snapshot of `generation`.
pub fn journal_header(generation: u64) -> [u8; JOURNAL_HEADER_LEN] {
    let mut h = [0u8; JOURNAL_HEADER_LEN];
    h[..4].copy_from_slice(JOURNAL_MAGIC);
    h[8..].copy_from_slice(&generation.to_le_bytes());
    let crc = journal_header_crc(&h);
    h[4..8].copy_from_slice(&crc.to_le_bytes());
    h
}

fn journal_header_crc(h: &[u8; JOURNAL_HEADER_LEN]) -> u32 {
    let mut c = crc32fast::Hasher::new();
    c.update(&h[..4]);
    c.update(&h[8..]);
    c.finalize()
}

/// A journal as read back: its generation and every change in it that could be read.
#[derive(Debug, Default, PartialEq)]
pub struct Journal {
    /// None when the header is damaged (then nothing tells which snapshot it continues).
    pub generation: Option<u64>,
    pub ops: Vec<DefOp>,
    /// The bytes after the last valid record, which no valid record follows (a torn tail: a
    /// change never confirmed): where and why.
    pub torn: Option<String>,
    /// Damage with valid records after it: (byte offset, what is wrong there). The valid records
    /// after each damaged spot are in `ops`.
    pub damaged: Vec<(u64, String)>,
}

/// The generation a journal header names, or None if the header is damaged.
pub fn journal_generation(bytes: &[u8]) -> Option<u64> {
    let h: &[u8; JOURNAL_HEADER_LEN] = bytes.get(..JOURNAL_HEADER_LEN)?.try_into().ok()?;
    let generation = u64::from_le_bytes(h[8..].try_into().ok()?);
    let crc = u32::from_le_bytes(h[4..8].try_into().ok()?);
    match &h[..4] {
        m if m == JOURNAL_MAGIC && crc == journal_header_crc(h) => Some(generation),
        m if m == JOURNAL_MAGIC_V1 && crc == 0 => Some(generation),
        _ => None,
    }
}

/// The change in the record at `at`, and where the next record starts; or what is wrong there.
fn journal_record(bytes: &[u8], at: usize) -> Result<(DefOp, usize), String> {
    let rest = &bytes[at..];
    let Some(header) = rest.get(..JOURNAL_RECORD_HEADER_LEN) else {
        return Err(format!("{} bytes of a record header", rest.len()));
    };
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    let end = JOURNAL_RECORD_HEADER_LEN.saturating_add(len);
    let Some(payload) = rest.get(JOURNAL_RECORD_HEADER_LEN..end) else {
        return Err("a record cut short".into());
    };
    if crc32fast::hash(payload) != crc {
        return Err("a record failing its checksum".into());
    }
    let op = FieldTable::decode(&mut Reader::new(Bytes::copy_from_slice(payload)))
        .map_err(|e| e.to_string())
        .and_then(|t| DefOp::from_table(&t))
        .map_err(|e| format!("an unreadable record: {e}"))?;
    Ok((op, at + end))
}

/// The first offset at or after `from` where a valid record starts. Candidates whose length
/// runs past the end are dismissed before any checksum, so this is about linear in the bytes.
fn next_journal_record(bytes: &[u8], from: usize) -> Option<usize> {
    let plausible = |at: usize| {
        let rest = &bytes[at..];
        let Some(h) = rest.get(..JOURNAL_RECORD_HEADER_LEN) else { return false };
        let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
        let crc = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
        rest.get(JOURNAL_RECORD_HEADER_LEN..JOURNAL_RECORD_HEADER_LEN.saturating_add(len))
            .is_some_and(|payload| crc32fast::hash(payload) == crc)
    };
    (from..bytes.len()).find(|&at| plausible(at) && journal_record(bytes, at).is_ok())
}

/// Reads a journal (any bytes: never panics). An empty file, or one too short for a header and
/// holding no record, gives a journal with no changes; see the layout comment for the rest.
pub fn read_journal(bytes: &[u8]) -> Journal {
    let mut j = Journal { generation: journal_generation(bytes), ..Journal::default() };
    let mut at = JOURNAL_HEADER_LEN;
    if j.generation.is_none() && !bytes.is_empty() {
        j.damaged.push((0, "a damaged journal header".into()));
    }
    while at < bytes.len() {
        match journal_record(bytes, at) {
            Ok((op, next)) => {
                j.ops.push(op);
                at = next;
            }
            Err(why) => match next_journal_record(bytes, at + 1) {
                Some(next) => {
                    j.damaged.push((at as u64, why));
                    at = next;
                }
                None => {
                    j.torn = Some(format!("{why} at byte {at}"));
                    break;
                }
            },
        }
    }
    j
}

impl Definitions {
    /// How many topology definitions the snapshot holds (the journal may grow to about this
    /// before it is folded into a new snapshot).
    pub fn topology_len(&self) -> usize {
        self.exchanges.len() + self.queues.len() + self.bindings.len()
    }

    /// Applies journal changes, in order, to the snapshot's topology.
    pub fn replay(&mut self, ops: Vec<DefOp>) {
        use std::collections::BTreeMap;
        let key = |vhost: &str, name: &str| (vhost.to_owned(), name.to_owned());
        let mut exchanges: BTreeMap<(String, String), ExchangeDef> =
            self.exchanges.drain(..).map(|x| (key(&x.vhost, &x.name), x)).collect();
        let mut queues: BTreeMap<(String, String), QueueDef> =
            self.queues.drain(..).map(|q| (key(&q.vhost, &q.name), q)).collect();
        let mut bindings: BTreeMap<Vec<u8>, BindingDef> = self.bindings.drain(..).map(|b| (b.key(), b)).collect();
        for op in ops {
            match op {
                DefOp::PutExchange(x) => {
                    exchanges.insert(key(&x.vhost, &x.name), x);
                }
                DefOp::DelExchange { vhost, name } => {
                    exchanges.remove(&key(&vhost, &name));
                    bindings.retain(|_, b| {
                        b.vhost != vhost || (b.source != name && (b.destination_is_queue || b.destination != name))
                    });
                }
                DefOp::PutQueue(q) => {
                    queues.insert(key(&q.vhost, &q.name), q);
                }
                DefOp::DelQueue { vhost, name } => {
                    queues.remove(&key(&vhost, &name));
                    bindings.retain(|_, b| b.vhost != vhost || !b.destination_is_queue || b.destination != name);
                }
                DefOp::PutBinding(b) => {
                    bindings.insert(b.key(), b);
                }
                DefOp::DelBinding(b) => {
                    bindings.remove(&b.key());
                }
                // Never in a journal: a change to anything but the topology rewrites the
                // snapshot (`Broker::save_definitions_for` appends topology changes only).
                _ => {}
            }
        }
        self.exchanges = exchanges.into_values().collect();
        self.queues = queues.into_values().collect();
        self.bindings = bindings.into_values().collect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_round_trips() {
        let mut args = FieldTable::new();
        args.insert("x-max-length", FieldValue::I64(10));
        let d = Definitions {
            generation: 7,
            vhosts: vec!["/".into(), "prod".into()],
            vhost_limits: vec![("prod".into(), VhostLimits { max_connections: Some(10), max_queues: Some(-1) })],
            user_limits: vec![("alice".into(), UserLimits { max_connections: None, max_channels: Some(5) })],
            users: Some(vec![UserDef {
                name: "alice".into(),
                password_hash: "UTIkULXG9baDsj/YUf/sdMnz1QDOltSY5foDoCyZhBbY7RiT".into(),
                hashing_algorithm: "rabbit_password_hashing_sha256".into(),
                tags: vec!["monitoring".into(), "management".into()],
            }]),
            permissions: vec![PermissionDef {
                user: "alice".into(),
                vhost: "prod".into(),
                configure: "^alice".into(),
                write: "".into(),
                read: ".*".into(),
            }],
            topic_permissions: vec![TopicPermissionDef {
                user: "alice".into(),
                vhost: "prod".into(),
                exchange: "amq.topic".into(),
                write: "^{username}".into(),
                read: ".*".into(),
            }],
            policies: vec![PolicyDef {
                vhost: "/".into(),
                name: "ttl".into(),
                pattern: "^t".into(),
                apply_to: "queues".into(),
                priority: 3,
                definition: {
                    let mut t = FieldTable::new();
                    t.insert("message-ttl", FieldValue::I64(1000));
                    t
                },
                operator: false,
            }],
            exchanges: vec![ExchangeDef {
                vhost: "/".into(),
                name: "logs".into(),
                kind: "fanout".into(),
                auto_delete: false,
                internal: true,
                arguments: FieldTable::new(),
            }],
            queues: vec![QueueDef { vhost: "/".into(), name: "tasks".into(), auto_delete: false, arguments: args }],
            bindings: vec![BindingDef {
                vhost: "/".into(),
                source: "logs".into(),
                destination: "tasks".into(),
                destination_is_queue: true,
                routing_key: "k".into(),
                arguments: FieldTable::new(),
            }],
        };
        assert_eq!(Definitions::decode(d.encode()).expect("decodes"), d);
        assert!(Definitions::decode(Bytes::from_static(b"junk")).is_err());
        // A snapshot from before access control: no users (the broker seeds the default one).
        let old = Definitions { users: None, permissions: vec![], topic_permissions: vec![], ..d.clone() };
        assert_eq!(Definitions::decode(old.encode()).expect("decodes").users, None);
    }
}

#[cfg(test)]
mod journal_tests {
    use super::*;

    fn queue(name: &str) -> QueueDef {
        QueueDef { vhost: "/".into(), name: name.into(), auto_delete: false, arguments: FieldTable::new() }
    }

    fn binding(source: &str, dest: &str, to_queue: bool) -> BindingDef {
        BindingDef {
            vhost: "/".into(),
            source: source.into(),
            destination: dest.into(),
            destination_is_queue: to_queue,
            routing_key: "k".into(),
            arguments: FieldTable::new(),
        }
    }

    fn exchange(name: &str) -> ExchangeDef {
        ExchangeDef {
            vhost: "/".into(),
            name: name.into(),
            kind: "direct".into(),
            auto_delete: false,
            internal: false,
            arguments: FieldTable::new(),
        }
    }

    fn six_ops() -> Vec<DefOp> {
        vec![
            DefOp::PutExchange(exchange("x")),
            DefOp::PutQueue(queue("a")),
            DefOp::PutBinding(binding("x", "a", true)),
            DefOp::DelBinding(binding("x", "a", true)),
            DefOp::DelQueue { vhost: "/".into(), name: "a".into() },
            DefOp::DelExchange { vhost: "/".into(), name: "x".into() },
        ]
    }

    /// The journal bytes of `ops`, and where each record starts.
    fn journal_of(generation: u64, ops: &[DefOp]) -> (BytesMut, Vec<usize>) {
        let mut bytes = BytesMut::from(&journal_header(generation)[..]);
        let mut starts = Vec::new();
        for op in ops {
            starts.push(bytes.len());
            op.encode_record(&mut bytes);
        }
        (bytes, starts)
    }

    #[test]
    fn journal_records_round_trip_and_a_torn_tail_ends_them() {
        let ops = six_ops();
        let (bytes, starts) = journal_of(3, &ops);
        let whole = read_journal(&bytes);
        assert_eq!(whole, Journal { generation: Some(3), ops: ops.clone(), torn: None, damaged: vec![] });
        // Every cut inside the last record loses that record only; a flipped byte likewise.
        let last_start = starts[5];
        for cut in last_start + 1..bytes.len() {
            let j = read_journal(&bytes[..cut]);
            assert_eq!(j.ops, ops[..5], "cut at {cut}");
            assert!(j.torn.is_some() && j.damaged.is_empty(), "cut at {cut}: {j:?}");
        }
        let mut flipped = bytes.clone();
        flipped[last_start + 9] ^= 0x40;
        let j = read_journal(&flipped);
        assert_eq!((j.ops, j.damaged), (ops[..5].to_vec(), vec![]));
        assert_eq!(read_journal(b"junk").generation, None);
    }

    #[test]
    fn a_damaged_record_mid_journal_costs_that_record_only() {
        let ops = six_ops();
        let (bytes, starts) = journal_of(3, &ops);
        for at in JOURNAL_HEADER_LEN..starts[5] {
            let hit = starts.iter().rposition(|&s| s <= at).expect("a record");
            for mask in [0x01, 0xff] {
                let mut flipped = bytes.clone();
                flipped[at] ^= mask;
                let j = read_journal(&flipped);
                let mut expected = ops.clone();
                expected.remove(hit);
                assert_eq!(j.ops, expected, "byte {at} ^ {mask:#x}");
                assert_eq!(j.generation, Some(3));
                assert_eq!(j.damaged.len(), 1, "byte {at}: {j:?}");
                assert_eq!(j.damaged[0].0, starts[hit] as u64, "byte {at}: the damaged record's offset");
                assert_eq!(j.torn, None);
            }
        }
    }

    #[test]
    fn a_damaged_journal_header_loses_no_record() {
        let ops = six_ops();
        let (bytes, _) = journal_of(3, &ops);
        for at in 0..JOURNAL_HEADER_LEN {
            let mut flipped = bytes.clone();
            flipped[at] ^= 0x01;
            let j = read_journal(&flipped);
            assert_eq!((j.generation, &j.ops), (None, &ops), "byte {at}");
            assert_eq!(j.damaged, vec![(0, "a damaged journal header".to_string())]);
        }
        // A journal from before the header had a checksum.
        let mut old = bytes.clone();
        old[..4].copy_from_slice(JOURNAL_MAGIC_V1);
        old[4..8].fill(0);
        assert_eq!(read_journal(&old), Journal { generation: Some(3), ops, torn: None, damaged: vec![] });
        assert_eq!(read_journal(b""), Journal::default());
    }

    #[test]
    fn any_damaged_snapshot_byte_is_refused_and_the_old_format_still_reads() {
        let d = Definitions {
            generation: 9,
            vhosts: vec!["/".into()],
            queues: vec![queue("a"), queue("b")],
            exchanges: vec![exchange("x")],
            bindings: vec![binding("x", "a", true)],
            users: Some(vec![]),
            ..Definitions::default()
        };
        let bytes = d.encode();
        assert_eq!(Definitions::decode(bytes.clone()).expect("decodes"), d);
        for at in 0..bytes.len() {
            let mut flipped = bytes.to_vec();
            flipped[at] ^= 0x01;
            assert!(Definitions::decode(Bytes::from(flipped)).is_err(), "byte {at} flipped went unnoticed");
        }
        for cut in 0..bytes.len() {
            assert!(Definitions::decode(bytes.slice(..cut)).is_err(), "cut at {cut} went unnoticed");
        }
        // Written before the header existed: the table alone.
        let old = bytes.slice(SNAPSHOT_HEADER_LEN..);
        assert_eq!(Definitions::decode(old).expect("the old format decodes"), d);
    }

    #[test]
    fn replay_applies_changes_in_order_and_deletes_take_their_bindings() {
        let mut d = Definitions {
            exchanges: vec![exchange("x"), exchange("y")],
            queues: vec![queue("a"), queue("b")],
            bindings: vec![binding("x", "a", true), binding("x", "b", true), binding("x", "y", false)],
            ..Definitions::default()
        };
        d.replay(vec![
            DefOp::DelQueue { vhost: "/".into(), name: "a".into() },
            DefOp::PutQueue(queue("a")),
            DefOp::PutBinding(binding("y", "a", true)),
            DefOp::DelExchange { vhost: "/".into(), name: "y".into() },
            DefOp::PutQueue(queue("c")),
            DefOp::DelBinding(binding("x", "b", true)),
        ]);
        assert_eq!(d.exchanges, vec![exchange("x")]);
        assert_eq!(d.queues, vec![queue("a"), queue("b"), queue("c")]);
        // x->a went with the first delete of a, x->y and y->a with the delete of y.
        assert_eq!(d.bindings, Vec::<BindingDef>::new());
    }
}
