//! The durable definitions (vhosts, users, permissions, topic permissions, policies, durable
//! exchanges, durable queues, bindings between durable ends) as one snapshot, encoded as an AMQP field table.
//!
//! The snapshot is rewritten whole, atomically and durably (`Backend::replace_durably`), each
//! time a durable definition changes, before the client is answered. Rewriting is O(number of
//! definitions) per change: fine for the thousands of definitions brokers hold; an append-only
//! log is the way forward if declare rates of many thousands per second on huge topologies
//! ever matter.

use bytes::{Bytes, BytesMut};
use warren_amqp::codec::Reader;
use warren_amqp::{FieldTable, FieldValue, ShortStr};

/// Bumped when the layout changes incompatibly.
const VERSION: i64 = 1;

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

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Definitions {
    pub vhosts: Vec<String>,
    /// The limits of the vhosts that have any.
    pub vhost_limits: Vec<(String, VhostLimits)>,
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
        root.insert("vhosts", FieldValue::Array(self.vhosts.iter().map(|v| s(v)).collect()));
        root.insert(
            "vhost_limits",
            FieldValue::Array(
                self.vhost_limits
                    .iter()
                    .map(|(vhost, l)| {
                        let mut t = vec![("vhost", s(vhost))];
                        t.extend(l.max_connections.map(|n| ("max-connections", FieldValue::I64(n))));
                        t.extend(l.max_queues.map(|n| ("max-queues", FieldValue::I64(n))));
                        table(t)
                    })
                    .collect(),
            ),
        );
        root.insert(
            "exchanges",
            FieldValue::Array(
                self.exchanges
                    .iter()
                    .map(|x| {
                        table(vec![
                            ("vhost", s(&x.vhost)),
                            ("name", s(&x.name)),
                            ("type", s(&x.kind)),
                            ("auto_delete", FieldValue::Bool(x.auto_delete)),
                            ("internal", FieldValue::Bool(x.internal)),
                            ("arguments", FieldValue::Table(x.arguments.clone())),
                        ])
                    })
                    .collect(),
            ),
        );
        root.insert(
            "queues",
            FieldValue::Array(
                self.queues
                    .iter()
                    .map(|q| {
                        table(vec![
                            ("vhost", s(&q.vhost)),
                            ("name", s(&q.name)),
                            ("auto_delete", FieldValue::Bool(q.auto_delete)),
                            ("arguments", FieldValue::Table(q.arguments.clone())),
                        ])
                    })
                    .collect(),
            ),
        );
        root.insert(
            "bindings",
            FieldValue::Array(
                self.bindings
                    .iter()
                    .map(|b| {
                        table(vec![
                            ("vhost", s(&b.vhost)),
                            ("source", s(&b.source)),
                            ("destination", s(&b.destination)),
                            ("destination_type", s(if b.destination_is_queue { "queue" } else { "exchange" })),
                            ("routing_key", s(&b.routing_key)),
                            ("arguments", FieldValue::Table(b.arguments.clone())),
                        ])
                    })
                    .collect(),
            ),
        );
        root.insert(
            "policies",
            FieldValue::Array(
                self.policies
                    .iter()
                    .map(|p| {
                        table(vec![
                            ("vhost", s(&p.vhost)),
                            ("name", s(&p.name)),
                            ("pattern", s(&p.pattern)),
                            ("apply-to", s(&p.apply_to)),
                            ("priority", FieldValue::I64(p.priority)),
                            ("definition", FieldValue::Table(p.definition.clone())),
                            ("operator", FieldValue::Bool(p.operator)),
                        ])
                    })
                    .collect(),
            ),
        );
        if let Some(users) = &self.users {
            root.insert(
                "users",
                FieldValue::Array(
                    users
                        .iter()
                        .map(|u| {
                            table(vec![
                                ("name", s(&u.name)),
                                ("password_hash", s(&u.password_hash)),
                                ("hashing_algorithm", s(&u.hashing_algorithm)),
                                ("tags", FieldValue::Array(u.tags.iter().map(|t| s(t)).collect())),
                            ])
                        })
                        .collect(),
                ),
            );
        }
        root.insert(
            "permissions",
            FieldValue::Array(
                self.permissions
                    .iter()
                    .map(|p| {
                        table(vec![
                            ("user", s(&p.user)),
                            ("vhost", s(&p.vhost)),
                            ("configure", s(&p.configure)),
                            ("write", s(&p.write)),
                            ("read", s(&p.read)),
                        ])
                    })
                    .collect(),
            ),
        );
        root.insert(
            "topic_permissions",
            FieldValue::Array(
                self.topic_permissions
                    .iter()
                    .map(|p| {
                        table(vec![
                            ("user", s(&p.user)),
                            ("vhost", s(&p.vhost)),
                            ("exchange", s(&p.exchange)),
                            ("write", s(&p.write)),
                            ("read", s(&p.read)),
                        ])
                    })
                    .collect(),
            ),
        );
        let mut out = BytesMut::new();
        root.encode(&mut out);
        out.freeze()
    }

    pub fn decode(bytes: Bytes) -> Result<Self, String> {
        let root =
            FieldTable::decode(&mut Reader::new(bytes)).map_err(|e| format!("not a definitions snapshot: {e}"))?;
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
                let limits = VhostLimits {
                    max_connections: t.get("max-connections").and_then(FieldValue::as_i64),
                    max_queues: t.get("max-queues").and_then(FieldValue::as_i64),
                };
                d.vhost_limits.push((get_str(t, "vhost")?, limits));
            }
        }
        for t in tables(get_array(&root, "exchanges")?) {
            let t = t?;
            d.exchanges.push(ExchangeDef {
                vhost: get_str(t, "vhost")?,
                name: get_str(t, "name")?,
                kind: get_str(t, "type")?,
                auto_delete: get_bool(t, "auto_delete")?,
                internal: get_bool(t, "internal")?,
                arguments: get_table(t, "arguments")?,
            });
        }
        for t in tables(get_array(&root, "queues")?) {
            let t = t?;
            d.queues.push(QueueDef {
                vhost: get_str(t, "vhost")?,
                name: get_str(t, "name")?,
                auto_delete: get_bool(t, "auto_delete")?,
                arguments: get_table(t, "arguments")?,
            });
        }
        for t in tables(get_array(&root, "bindings")?) {
            let t = t?;
            d.bindings.push(BindingDef {
                vhost: get_str(t, "vhost")?,
                source: get_str(t, "source")?,
                destination: get_str(t, "destination")?,
                destination_is_queue: get_str(t, "destination_type")? == "queue",
                routing_key: get_str(t, "routing_key")?,
                arguments: get_table(t, "arguments")?,
            });
        }
        // Snapshots written before policies existed have none.
        if root.get("policies").is_some() {
            for t in tables(get_array(&root, "policies")?) {
                let t = t?;
                d.policies.push(PolicyDef {
                    vhost: get_str(t, "vhost")?,
                    name: get_str(t, "name")?,
                    pattern: get_str(t, "pattern")?,
                    apply_to: get_str(t, "apply-to")?,
                    priority: t.get("priority").and_then(FieldValue::as_i64).unwrap_or(0),
                    definition: get_table(t, "definition")?,
                    operator: get_bool(t, "operator")?,
                });
            }
        }
        // Snapshots written before access control existed have no users and permissions.
        if root.get("users").is_some() {
            let mut users = Vec::new();
            for t in tables(get_array(&root, "users")?) {
                let t = t?;
                let mut tags = Vec::new();
                for v in get_array(t, "tags")? {
                    tags.push(v.as_str().ok_or("user tag is not a string")?.to_owned());
                }
                users.push(UserDef {
                    name: get_str(t, "name")?,
                    password_hash: get_str(t, "password_hash")?,
                    hashing_algorithm: get_str(t, "hashing_algorithm")?,
                    tags,
                });
            }
            d.users = Some(users);
        }
        if root.get("permissions").is_some() {
            for t in tables(get_array(&root, "permissions")?) {
                let t = t?;
                d.permissions.push(PermissionDef {
                    user: get_str(t, "user")?,
                    vhost: get_str(t, "vhost")?,
                    configure: get_str(t, "configure")?,
                    write: get_str(t, "write")?,
                    read: get_str(t, "read")?,
                });
            }
        }
        if root.get("topic_permissions").is_some() {
            for t in tables(get_array(&root, "topic_permissions")?) {
                let t = t?;
                d.topic_permissions.push(TopicPermissionDef {
                    user: get_str(t, "user")?,
                    vhost: get_str(t, "vhost")?,
                    exchange: get_str(t, "exchange")?,
                    write: get_str(t, "write")?,
                    read: get_str(t, "read")?,
                });
            }
        }
        Ok(d)
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
            vhosts: vec!["/".into(), "prod".into()],
            vhost_limits: vec![("prod".into(), VhostLimits { max_connections: Some(10), max_queues: Some(-1) })],
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
