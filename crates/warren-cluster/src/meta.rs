//! The metadata group's state machine: the cluster's durable definitions (vhosts and their
//! limits, users and their limits, permissions, topic permissions, policies, operator
//! policies, exchanges, queues, bindings), replicated on every node (docs/clustering.md, "The
//! metadata group").
//!
//! A node proposes the changes a client or the management API made on it
//! ([`MetaCommand::Topology`], the [`DefOp`]s its broker kept); every node applies them in log
//! order. A change that no longer fits when its turn comes (a declaration of something another
//! node declared meanwhile with other properties, a binding to a queue deleted meanwhile, a
//! permission of a user deleted meanwhile, anything in a vhost deleted meanwhile) is refused:
//! the output says so, and the origin undoes what it made locally and tells its client.
//! Deterministic: ordered maps only, nothing read but the state and the command.

use bytes::{Bytes, BytesMut};
use std::collections::{BTreeMap, BTreeSet};
use std::io;
use warren_core::definitions::{
    BindingDef, DefOp, Definitions, ExchangeDef, PermissionDef, PolicyDef, QueueDef, TopicPermissionDef, UserDef,
    UserLimits, VhostLimits,
};

/// A change to the metadata, as written in the group's log.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaCommand {
    /// Changes made on node `origin`, in the order they were made there.
    Topology { origin: u64, ops: Vec<DefOp> },
    /// What node `origin` held before its first start in the cluster: taken where it does not
    /// clash with the cluster's, and where it does the cluster's is kept (refused, so that the
    /// node makes its own match). Unlike a [`MetaCommand::Topology`], a user, permission,
    /// policy or limit the cluster has already is not replaced: three fresh nodes each
    /// proposing their default user end with the first one's.
    Join { origin: u64, ops: Vec<DefOp> },
    /// Changes nothing: node `origin`, restarted, learns from its output that it has applied
    /// everything committed before (`nonce` tells its own barrier from one of an earlier run).
    Barrier { origin: u64, nonce: u64 },
    /// An operator's change of the members of quorum queue `name` in `vhost` (RabbitMQ's
    /// `add_member`, `delete_member`, `grow`, `shrink`), asked through node `origin`: from now
    /// on its group is to be `members` (node ids). Refused when the queue is not that group's
    /// any more (`group`: deleted, or declared again meanwhile).
    Members { origin: u64, vhost: String, name: String, group: u64, members: Vec<u64> },
    /// An operator's `forget_cluster_node`, asked through node `origin`: node `node` (stopped)
    /// is no longer in the cluster. Its classic queues go (RabbitMQ deletes the durable
    /// queues of a forgotten node), and it leaves the member lists operators set; the
    /// quorum queues' groups and the metadata group itself drop it after (their leaders).
    Forget { origin: u64, node: u64 },
    /// Node `node`, named `name` and reached at `addr` (its inter-node listener), joins the
    /// cluster (a node new to it, configured with its nodes, at its first start: see
    /// `membership`), as asked through node `origin`. The metadata group's leader then adds
    /// it to the group; quorum queues declared from then on count it among their nodes.
    AddNode { origin: u64, node: u64, name: String, addr: String },
}

/// What applying a command did, on every node.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct MetaOutput {
    /// The node that proposed it.
    pub origin: u64,
    /// The changes that took effect, in order (a declaration of what exists as declared, or a
    /// deletion of what is gone, changes nothing and is left out).
    pub applied: Vec<DefOp>,
    /// The changes refused, with why, in order.
    pub refused: Vec<(DefOp, String)>,
    /// The nonce of a [`MetaCommand::Barrier`].
    pub barrier: Option<u64>,
    /// What came of a [`MetaCommand::Members`]: done, or refused with why.
    pub members: Option<Result<(), String>>,
    /// The node a [`MetaCommand::Forget`] took out of the cluster.
    pub forgot: Option<u64>,
    /// The node a [`MetaCommand::AddNode`] brought in.
    pub added: Option<u64>,
}

/// A node that joined the cluster after it was formed (not in the configured list of the
/// nodes that formed it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinedNode {
    /// Its name, `name@host`.
    pub name: String,
    /// Its inter-node address.
    pub addr: String,
    /// The metadata log index of its joining: quorum queues placed before do not count it
    /// among their default members (as in RabbitMQ, a queue stays on its nodes when one joins).
    pub at: u64,
}

pub type Key = (String, String);
type TopicKey = (String, String, String);
/// A policy's key: operator or not, vhost, name.
type PolicyKey = (bool, String, String);

/// Where a replicated (quorum) queue lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    /// Its Raft group's id: the metadata log index of the declaration that created it, so a
    /// queue deleted and declared again gets a new group.
    pub group: u64,
    /// The node whose client declared it: its first leader (RabbitMQ's `client-local`
    /// leader locator, its default).
    pub origin: u64,
}

/// The replicated definitions.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metadata {
    /// Every vhost, with its limits (none set: empty).
    vhosts: BTreeMap<String, VhostLimits>,
    users: BTreeMap<String, UserDef>,
    /// The limits of the users that have any.
    user_limits: BTreeMap<String, UserLimits>,
    /// By (user, vhost).
    permissions: BTreeMap<Key, PermissionDef>,
    /// By (user, vhost, exchange).
    topic_permissions: BTreeMap<TopicKey, TopicPermissionDef>,
    /// Policies and operator policies.
    policies: BTreeMap<PolicyKey, PolicyDef>,
    exchanges: BTreeMap<Key, ExchangeDef>,
    queues: BTreeMap<Key, QueueDef>,
    bindings: BTreeMap<Vec<u8>, BindingDef>,
    /// Every queue's placement (quorum queues': their group and first leader; classic queues':
    /// their home, the node their declaration came through). Queues declared before classic
    /// queues had one (session 16) have none.
    placements: BTreeMap<Key, Placement>,
    /// The members of the quorum queues whose membership an operator changed (the others'
    /// follow from their placement and the nodes: `queues::members_of`), sorted.
    members: BTreeMap<Key, Vec<u64>>,
    /// The nodes taken out of the cluster by `forget_cluster_node` (node ids): the cluster is
    /// the configured nodes but these.
    forgotten: BTreeSet<u64>,
    /// The nodes that joined after the cluster formed, by id.
    joined: BTreeMap<u64, JoinedNode>,
}

/// Whether a queue's declaration makes it a quorum queue (replicated by a group of its own).
pub fn is_quorum(q: &QueueDef) -> bool {
    q.arguments.get("x-queue-type").and_then(|v| v.as_str()) == Some("quorum")
}

fn key(vhost: &str, name: &str) -> Key {
    (vhost.to_owned(), name.to_owned())
}

fn policy_key(operator: bool, vhost: &str, name: &str) -> PolicyKey {
    (operator, vhost.to_owned(), name.to_owned())
}

fn no_vhost(vhost: &str) -> String {
    format!("no vhost '{vhost}'")
}

/// Exchanges every vhost has from its creation: bindings from or to them need no declaration.
fn builtin(name: &str) -> bool {
    name.is_empty() || name.starts_with("amq.")
}

impl Metadata {
    /// The topology as definitions (exchanges, queues and bindings; the rest empty), ordered.
    pub fn topology(&self) -> Definitions {
        Definitions {
            exchanges: self.exchanges.values().cloned().collect(),
            queues: self.queues.values().cloned().collect(),
            bindings: self.bindings.values().cloned().collect(),
            ..Definitions::default()
        }
    }

    /// The topology `defs` holds (its exchanges, queues and bindings).
    pub fn from_topology(defs: &Definitions) -> Metadata {
        Metadata {
            exchanges: defs.exchanges.iter().map(|x| (key(&x.vhost, &x.name), x.clone())).collect(),
            queues: defs.queues.iter().map(|q| (key(&q.vhost, &q.name), q.clone())).collect(),
            bindings: defs.bindings.iter().map(|b| (b.key(), b.clone())).collect(),
            ..Metadata::default()
        }
    }

    /// Everything `defs` holds (no placements).
    pub fn from_definitions(defs: &Definitions) -> Metadata {
        let mut m = Metadata::from_topology(defs);
        m.vhosts = defs.vhosts.iter().map(|v| (v.clone(), VhostLimits::default())).collect();
        for (v, limits) in &defs.vhost_limits {
            if let Some(l) = m.vhosts.get_mut(v) {
                *l = *limits;
            }
        }
        m.users = defs.users.iter().flatten().map(|u| (u.name.clone(), u.clone())).collect();
        m.user_limits = defs.user_limits.iter().filter(|(_, l)| !l.is_empty()).cloned().collect();
        m.permissions = defs.permissions.iter().map(|p| (key(&p.user, &p.vhost), p.clone())).collect();
        m.topic_permissions = defs
            .topic_permissions
            .iter()
            .map(|p| ((p.user.clone(), p.vhost.clone(), p.exchange.clone()), p.clone()))
            .collect();
        m.policies = defs.policies.iter().map(|p| (policy_key(p.operator, &p.vhost, &p.name), p.clone())).collect();
        m
    }

    /// Everything the group holds, as definitions (ordered; placements aside).
    pub fn definitions(&self) -> Definitions {
        Definitions {
            vhosts: self.vhosts.keys().cloned().collect(),
            vhost_limits: self.vhosts.iter().filter(|(_, l)| !l.is_empty()).map(|(v, l)| (v.clone(), *l)).collect(),
            user_limits: self.user_limits.iter().map(|(u, l)| (u.clone(), *l)).collect(),
            users: Some(self.users.values().cloned().collect()),
            permissions: self.permissions.values().cloned().collect(),
            topic_permissions: self.topic_permissions.values().cloned().collect(),
            policies: self.policies.values().cloned().collect(),
            ..self.topology()
        }
    }

    /// What a node proposes when it first joins the cluster: everything `defs` holds, each
    /// thing after what it needs (vhosts and users before their permissions, exchanges and
    /// queues before their bindings).
    pub fn join_ops(defs: &Definitions) -> Vec<DefOp> {
        let mut ops: Vec<DefOp> = defs.vhosts.iter().map(|name| DefOp::PutVhost { name: name.clone() }).collect();
        ops.extend(
            defs.vhost_limits
                .iter()
                .map(|(vhost, limits)| DefOp::SetVhostLimits { vhost: vhost.clone(), limits: *limits }),
        );
        ops.extend(defs.users.iter().flatten().cloned().map(DefOp::PutUser));
        ops.extend(
            defs.user_limits.iter().map(|(user, limits)| DefOp::SetUserLimits { user: user.clone(), limits: *limits }),
        );
        ops.extend(defs.permissions.iter().cloned().map(DefOp::PutPermission));
        ops.extend(defs.topic_permissions.iter().cloned().map(DefOp::PutTopicPermission));
        ops.extend(defs.policies.iter().cloned().map(DefOp::PutPolicy));
        ops.extend(defs.exchanges.iter().cloned().map(DefOp::PutExchange));
        ops.extend(defs.queues.iter().cloned().map(DefOp::PutQueue));
        ops.extend(defs.bindings.iter().cloned().map(DefOp::PutBinding));
        ops
    }

    pub fn has_vhost(&self, name: &str) -> bool {
        self.vhosts.contains_key(name)
    }

    pub fn vhost_limits(&self, name: &str) -> Option<VhostLimits> {
        self.vhosts.get(name).copied()
    }

    pub fn user(&self, name: &str) -> Option<&UserDef> {
        self.users.get(name)
    }

    pub fn user_limits(&self, name: &str) -> UserLimits {
        self.user_limits.get(name).copied().unwrap_or_default()
    }

    pub fn permission(&self, user: &str, vhost: &str) -> Option<&PermissionDef> {
        self.permissions.get(&key(user, vhost))
    }

    pub fn topic_permission(&self, user: &str, vhost: &str, exchange: &str) -> Option<&TopicPermissionDef> {
        self.topic_permissions.get(&(user.to_owned(), vhost.to_owned(), exchange.to_owned()))
    }

    pub fn policy(&self, vhost: &str, name: &str, operator: bool) -> Option<&PolicyDef> {
        self.policies.get(&policy_key(operator, vhost, name))
    }

    /// Where the quorum queue `name` in `vhost` lives.
    pub fn placement(&self, vhost: &str, name: &str) -> Option<Placement> {
        self.placements.get(&key(vhost, name)).copied()
    }

    /// The members an operator made quorum queue `name` in `vhost` have, if one did.
    pub fn members(&self, vhost: &str, name: &str) -> Option<&[u64]> {
        self.members.get(&key(vhost, name)).map(Vec::as_slice)
    }

    /// The nodes taken out of the cluster ([`MetaCommand::Forget`]).
    pub fn forgotten(&self) -> &BTreeSet<u64> {
        &self.forgotten
    }

    /// The nodes that joined after the cluster formed ([`MetaCommand::AddNode`]), forgotten
    /// ones included.
    pub fn joined(&self) -> &BTreeMap<u64, JoinedNode> {
        &self.joined
    }

    /// Every quorum queue with its placement, ordered.
    pub fn placements(&self) -> impl Iterator<Item = (&Key, &Placement)> {
        self.placements.iter().filter(|(k, _)| self.queues.get(*k).is_some_and(is_quorum))
    }

    /// Every classic queue with a home recorded: its key, its placement's group and its home.
    pub fn homes(&self) -> impl Iterator<Item = (&Key, u64, u64)> {
        self.placements
            .iter()
            .filter(|(k, _)| self.queues.get(*k).is_some_and(|q| !is_quorum(q)))
            .map(|(k, p)| (k, p.group, p.origin))
    }

    /// The classic queue whose placement is `group`, with its home.
    pub fn home_of_group(&self, group: u64) -> Option<(Key, u64)> {
        self.homes().find(|(_, g, _)| *g == group).map(|(k, _, home)| (k.clone(), home))
    }

    /// The node classic queue `name` in `vhost` lives on (RabbitMQ's queue `node`): the one
    /// its declaration came through. None for a quorum queue, an unknown queue, or one
    /// declared before homes were recorded.
    pub fn home(&self, vhost: &str, name: &str) -> Option<u64> {
        let k = key(vhost, name);
        if is_quorum(self.queues.get(&k)?) {
            return None;
        }
        self.placements.get(&k).map(|p| p.origin)
    }

    pub fn exchange(&self, vhost: &str, name: &str) -> Option<&ExchangeDef> {
        self.exchanges.get(&key(vhost, name))
    }

    pub fn queue(&self, vhost: &str, name: &str) -> Option<&QueueDef> {
        self.queues.get(&key(vhost, name))
    }

    pub fn has_binding(&self, b: &BindingDef) -> bool {
        self.bindings.contains_key(&b.key())
    }

    fn exchange_exists(&self, vhost: &str, name: &str) -> bool {
        builtin(name) || self.exchanges.contains_key(&key(vhost, name))
    }

    /// Applies one change: `Ok(true)` when it took effect, `Ok(false)` when it changed nothing,
    /// `Err` when it is refused. `join`: a joining node's, which replaces nothing.
    fn apply_op(&mut self, index: u64, origin: u64, op: &DefOp, join: bool) -> Result<bool, String> {
        let need_vhost =
            |m: &Metadata, vhost: &str| if m.vhosts.contains_key(vhost) { Ok(()) } else { Err(no_vhost(vhost)) };
        let need_user = |m: &Metadata, user: &str| {
            if m.users.contains_key(user) {
                Ok(())
            } else {
                Err(format!("no user '{user}'"))
            }
        };
        // A joining node's differs from what the cluster has: the cluster's stays.
        let kept = |what: String| Err(format!("the cluster's {what} is kept"));
        match op {
            DefOp::PutExchange(x) => match self.exchanges.get(&key(&x.vhost, &x.name)) {
                Some(current) if current == x => Ok(false),
                Some(_) => Err(format!(
                    "exchange '{}' in vhost '{}' was declared meanwhile with other properties",
                    x.name, x.vhost
                )),
                None => {
                    need_vhost(self, &x.vhost)?;
                    self.exchanges.insert(key(&x.vhost, &x.name), x.clone());
                    Ok(true)
                }
            },
            DefOp::DelExchange { vhost, name } => {
                if self.exchanges.remove(&key(vhost, name)).is_none() {
                    return Ok(false);
                }
                self.bindings.retain(|_, b| {
                    b.vhost != *vhost || (b.source != *name && (b.destination_is_queue || b.destination != *name))
                });
                Ok(true)
            }
            DefOp::PutQueue(q) => match self.queues.get(&key(&q.vhost, &q.name)) {
                Some(current) if current == q => Ok(false),
                Some(_) => Err(format!(
                    "queue '{}' in vhost '{}' was declared meanwhile with other properties",
                    q.name, q.vhost
                )),
                None => {
                    need_vhost(self, &q.vhost)?;
                    self.placements.insert(key(&q.vhost, &q.name), Placement { group: index, origin });
                    self.members.remove(&key(&q.vhost, &q.name));
                    self.queues.insert(key(&q.vhost, &q.name), q.clone());
                    Ok(true)
                }
            },
            DefOp::DelQueue { vhost, name } => {
                if self.queues.remove(&key(vhost, name)).is_none() {
                    return Ok(false);
                }
                self.placements.remove(&key(vhost, name));
                self.members.remove(&key(vhost, name));
                self.bindings.retain(|_, b| b.vhost != *vhost || !b.destination_is_queue || b.destination != *name);
                Ok(true)
            }
            DefOp::PutBinding(b) => {
                need_vhost(self, &b.vhost)?;
                if !self.exchange_exists(&b.vhost, &b.source) {
                    return Err(format!("no exchange '{}' in vhost '{}'", b.source, b.vhost));
                }
                let dest_exists = if b.destination_is_queue {
                    self.queues.contains_key(&key(&b.vhost, &b.destination))
                } else {
                    self.exchange_exists(&b.vhost, &b.destination)
                };
                if !dest_exists {
                    let kind = if b.destination_is_queue { "queue" } else { "exchange" };
                    return Err(format!("no {kind} '{}' in vhost '{}'", b.destination, b.vhost));
                }
                Ok(self.bindings.insert(b.key(), b.clone()).is_none())
            }
            DefOp::DelBinding(b) => Ok(self.bindings.remove(&b.key()).is_some()),
            DefOp::PutVhost { name } => {
                if self.vhosts.contains_key(name) {
                    return Ok(false);
                }
                self.vhosts.insert(name.clone(), VhostLimits::default());
                Ok(true)
            }
            DefOp::DelVhost { name } => {
                if self.vhosts.remove(name).is_none() {
                    return Ok(false);
                }
                let elsewhere = |k: &Key| k.0 != *name;
                self.exchanges.retain(|k, _| elsewhere(k));
                self.queues.retain(|k, _| elsewhere(k));
                self.placements.retain(|k, _| elsewhere(k));
                self.members.retain(|k, _| elsewhere(k));
                self.bindings.retain(|_, b| b.vhost != *name);
                self.permissions.retain(|(_, v), _| v != name);
                self.topic_permissions.retain(|(_, v, _), _| v != name);
                self.policies.retain(|(_, v, _), _| v != name);
                Ok(true)
            }
            DefOp::PutUser(u) => match self.users.get(&u.name) {
                Some(current) if current == u => Ok(false),
                Some(_) if join => kept(format!("user '{}'", u.name)),
                _ => {
                    self.users.insert(u.name.clone(), u.clone());
                    Ok(true)
                }
            },
            DefOp::DelUser { name } => {
                if self.users.remove(name).is_none() {
                    return Ok(false);
                }
                self.user_limits.remove(name);
                self.permissions.retain(|(u, _), _| u != name);
                self.topic_permissions.retain(|(u, _, _), _| u != name);
                Ok(true)
            }
            DefOp::PutPermission(p) => {
                need_user(self, &p.user)?;
                need_vhost(self, &p.vhost)?;
                match self.permissions.get(&key(&p.user, &p.vhost)) {
                    Some(current) if current == p => Ok(false),
                    Some(_) if join => kept(format!("permissions of '{}' in vhost '{}'", p.user, p.vhost)),
                    _ => {
                        self.permissions.insert(key(&p.user, &p.vhost), p.clone());
                        Ok(true)
                    }
                }
            }
            DefOp::DelPermission { user, vhost } => Ok(self.permissions.remove(&key(user, vhost)).is_some()),
            DefOp::PutTopicPermission(p) => {
                need_user(self, &p.user)?;
                need_vhost(self, &p.vhost)?;
                let k = (p.user.clone(), p.vhost.clone(), p.exchange.clone());
                match self.topic_permissions.get(&k) {
                    Some(current) if current == p => Ok(false),
                    Some(_) if join => {
                        kept(format!("topic permissions of '{}' on '{}' in vhost '{}'", p.user, p.exchange, p.vhost))
                    }
                    _ => {
                        self.topic_permissions.insert(k, p.clone());
                        Ok(true)
                    }
                }
            }
            DefOp::DelTopicPermission { user, vhost, exchange } => {
                Ok(self.topic_permissions.remove(&(user.clone(), vhost.clone(), exchange.clone())).is_some())
            }
            DefOp::PutPolicy(p) => {
                need_vhost(self, &p.vhost)?;
                let k = policy_key(p.operator, &p.vhost, &p.name);
                match self.policies.get(&k) {
                    Some(current) if current == p => Ok(false),
                    Some(_) if join => kept(format!("policy '{}' in vhost '{}'", p.name, p.vhost)),
                    _ => {
                        self.policies.insert(k, p.clone());
                        Ok(true)
                    }
                }
            }
            DefOp::DelPolicy { vhost, name, operator } => {
                Ok(self.policies.remove(&policy_key(*operator, vhost, name)).is_some())
            }
            DefOp::SetVhostLimits { vhost, limits } => {
                let current = self.vhosts.get_mut(vhost).ok_or_else(|| no_vhost(vhost))?;
                if current == limits {
                    return Ok(false);
                }
                if join && !current.is_empty() {
                    return kept(format!("limits of vhost '{vhost}'"));
                }
                *current = *limits;
                Ok(true)
            }
            DefOp::SetUserLimits { user, limits } => {
                need_user(self, user)?;
                let current = self.user_limits(user);
                if current == *limits {
                    return Ok(false);
                }
                if join && !current.is_empty() {
                    return kept(format!("limits of user '{user}'"));
                }
                if limits.is_empty() {
                    self.user_limits.remove(user);
                } else {
                    self.user_limits.insert(user.clone(), *limits);
                }
                Ok(true)
            }
        }
    }

    /// Applies the command at log `index`; deterministic.
    pub fn apply(&mut self, index: u64, command: &MetaCommand) -> MetaOutput {
        match command {
            MetaCommand::Topology { origin, ops } | MetaCommand::Join { origin, ops } => {
                let join = matches!(command, MetaCommand::Join { .. });
                let mut out = MetaOutput { origin: *origin, ..MetaOutput::default() };
                for op in ops {
                    match self.apply_op(index, *origin, op, join) {
                        Ok(true) => out.applied.push(op.clone()),
                        Ok(false) => {}
                        Err(why) => out.refused.push((op.clone(), why)),
                    }
                }
                out
            }
            MetaCommand::Barrier { origin, nonce } => {
                MetaOutput { origin: *origin, barrier: Some(*nonce), ..MetaOutput::default() }
            }
            MetaCommand::Members { origin, vhost, name, group, members } => {
                let k = key(vhost, name);
                let quorum = self.queues.get(&k).is_some_and(is_quorum);
                let done = match self.placements.get(&k).filter(|_| quorum) {
                    _ if members.is_empty() => Err("a quorum queue keeps at least one member".to_owned()),
                    Some(p) if p.group == *group => {
                        let mut members = members.clone();
                        members.sort_unstable();
                        members.dedup();
                        self.members.insert(k, members);
                        Ok(())
                    }
                    _ => Err(format!("quorum queue '{name}' in vhost '{vhost}' is not the one asked about any more")),
                };
                MetaOutput { origin: *origin, members: Some(done), ..MetaOutput::default() }
            }
            MetaCommand::Forget { origin, node } => {
                let mut out = MetaOutput { origin: *origin, forgot: Some(*node), ..MetaOutput::default() };
                if !self.forgotten.insert(*node) {
                    return out;
                }
                let homed: Vec<Key> =
                    self.homes().filter(|(_, _, home)| home == node).map(|(k, _, _)| k.clone()).collect();
                for (vhost, name) in homed {
                    let op = DefOp::DelQueue { vhost, name };
                    if let Ok(true) = self.apply_op(index, *origin, &op, false) {
                        out.applied.push(op);
                    }
                }
                // A queue whose only member the node was keeps it (and is lost with it).
                for members in self.members.values_mut() {
                    if members.len() > 1 {
                        members.retain(|m| m != node);
                    }
                }
                out
            }
            MetaCommand::AddNode { origin, node, name, addr } => {
                let out = MetaOutput { origin: *origin, added: Some(*node), ..MetaOutput::default() };
                let rejoining = self.forgotten.remove(node);
                match self.joined.get_mut(node) {
                    Some(j) if !rejoining => {
                        // Joined already: only its address may have changed.
                        j.addr = addr.clone();
                    }
                    // New, or forgotten and joining again (afresh).
                    _ => {
                        self.joined.insert(*node, JoinedNode { name: name.clone(), addr: addr.clone(), at: index });
                    }
                }
                out
            }
        }
    }

    /// The changes that make `self` (a node's broker, as definitions) match `target` (the
    /// group's), for what `touching` touches, or everywhere when it is None. A change touches
    /// the objects it names, and a vhost or a user everything in or of it (undoing a deleted
    /// vhost brings back its queues, exchanges, policies and permissions); a binding is
    /// touched when either end is. In the order a broker can make them: vhosts, users, their
    /// limits, permissions, policies, exchanges and queues, bindings added, then bindings,
    /// queues, exchanges, policies, permissions, users and vhosts removed.
    pub fn changes_to(&self, target: &Metadata, touching: Option<&[DefOp]>) -> Vec<DefOp> {
        let t = Touched::of(touching);
        let (here, mut fixes) = (self, Vec::new());
        for (name, limits) in &target.vhosts {
            if t.vhost(name) && !here.vhosts.contains_key(name) {
                fixes.push(DefOp::PutVhost { name: name.clone() });
            }
            if t.vhost(name) && here.vhosts.get(name).copied().unwrap_or_default() != *limits {
                fixes.push(DefOp::SetVhostLimits { vhost: name.clone(), limits: *limits });
            }
        }
        for (name, u) in &target.users {
            if t.user(name) && here.users.get(name) != Some(u) {
                fixes.push(DefOp::PutUser(u.clone()));
            }
            if t.user(name) && here.user_limits(name) != target.user_limits(name) {
                fixes.push(DefOp::SetUserLimits { user: name.clone(), limits: target.user_limits(name) });
            }
        }
        for (k, p) in &target.permissions {
            if t.permission(&p.user, &p.vhost) && here.permissions.get(k) != Some(p) {
                fixes.push(DefOp::PutPermission(p.clone()));
            }
        }
        for (k, p) in &target.topic_permissions {
            if t.topic_permission(k) && here.topic_permissions.get(k) != Some(p) {
                fixes.push(DefOp::PutTopicPermission(p.clone()));
            }
        }
        for (k, p) in &target.policies {
            if t.policy(k) && here.policies.get(k) != Some(p) {
                fixes.push(DefOp::PutPolicy(p.clone()));
            }
        }
        for x in target.exchanges.values() {
            if t.exchange(&x.vhost, &x.name) && here.exchange(&x.vhost, &x.name) != Some(x) {
                fixes.push(DefOp::PutExchange(x.clone()));
            }
        }
        for q in target.queues.values() {
            if t.queue(&q.vhost, &q.name) && here.queue(&q.vhost, &q.name) != Some(q) {
                fixes.push(DefOp::PutQueue(q.clone()));
            }
        }
        for b in target.bindings.values() {
            if t.binding(b) && !here.has_binding(b) {
                fixes.push(DefOp::PutBinding(b.clone()));
            }
        }
        for b in here.bindings.values() {
            if t.binding(b) && !target.has_binding(b) {
                fixes.push(DefOp::DelBinding(b.clone()));
            }
        }
        for q in here.queues.values() {
            if t.queue(&q.vhost, &q.name) && target.queue(&q.vhost, &q.name).is_none() {
                fixes.push(DefOp::DelQueue { vhost: q.vhost.clone(), name: q.name.clone() });
            }
        }
        for x in here.exchanges.values() {
            if t.exchange(&x.vhost, &x.name) && target.exchange(&x.vhost, &x.name).is_none() {
                fixes.push(DefOp::DelExchange { vhost: x.vhost.clone(), name: x.name.clone() });
            }
        }
        for (k, p) in &here.policies {
            if t.policy(k) && !target.policies.contains_key(k) {
                fixes.push(DefOp::DelPolicy { vhost: p.vhost.clone(), name: p.name.clone(), operator: p.operator });
            }
        }
        for (k, p) in &here.topic_permissions {
            if t.topic_permission(k) && !target.topic_permissions.contains_key(k) {
                fixes.push(DefOp::DelTopicPermission {
                    user: p.user.clone(),
                    vhost: p.vhost.clone(),
                    exchange: p.exchange.clone(),
                });
            }
        }
        for (k, p) in &here.permissions {
            if t.permission(&p.user, &p.vhost) && !target.permissions.contains_key(k) {
                fixes.push(DefOp::DelPermission { user: p.user.clone(), vhost: p.vhost.clone() });
            }
        }
        for name in here.users.keys() {
            if t.user(name) && !target.users.contains_key(name) {
                fixes.push(DefOp::DelUser { name: name.clone() });
            }
        }
        for name in here.vhosts.keys() {
            if t.vhost(name) && !target.vhosts.contains_key(name) {
                fixes.push(DefOp::DelVhost { name: name.clone() });
            }
        }
        fixes
    }
}

/// What a list of changes touches (see [`Metadata::changes_to`]); everything when `all`.
#[derive(Debug, Default)]
struct Touched {
    all: bool,
    vhosts: BTreeSet<String>,
    users: BTreeSet<String>,
    exchanges: BTreeSet<Key>,
    queues: BTreeSet<Key>,
    permissions: BTreeSet<Key>,
    topic_permissions: BTreeSet<TopicKey>,
    policies: BTreeSet<PolicyKey>,
}

impl Touched {
    fn of(ops: Option<&[DefOp]>) -> Touched {
        let Some(ops) = ops else { return Touched { all: true, ..Touched::default() } };
        let mut t = Touched::default();
        for op in ops {
            match op {
                DefOp::PutExchange(x) => {
                    t.exchanges.insert(key(&x.vhost, &x.name));
                }
                DefOp::DelExchange { vhost, name } => {
                    t.exchanges.insert(key(vhost, name));
                }
                DefOp::PutQueue(q) => {
                    t.queues.insert(key(&q.vhost, &q.name));
                }
                DefOp::DelQueue { vhost, name } => {
                    t.queues.insert(key(vhost, name));
                }
                DefOp::PutBinding(b) | DefOp::DelBinding(b) => {
                    t.exchanges.insert(key(&b.vhost, &b.source));
                    let dest = key(&b.vhost, &b.destination);
                    if b.destination_is_queue {
                        t.queues.insert(dest);
                    } else {
                        t.exchanges.insert(dest);
                    }
                }
                DefOp::PutVhost { name } | DefOp::DelVhost { name } | DefOp::SetVhostLimits { vhost: name, .. } => {
                    t.vhosts.insert(name.clone());
                }
                DefOp::PutUser(UserDef { name, .. })
                | DefOp::DelUser { name }
                | DefOp::SetUserLimits { user: name, .. } => {
                    t.users.insert(name.clone());
                }
                DefOp::PutPermission(PermissionDef { user, vhost, .. }) | DefOp::DelPermission { user, vhost } => {
                    t.permissions.insert(key(user, vhost));
                }
                DefOp::PutTopicPermission(TopicPermissionDef { user, vhost, exchange, .. })
                | DefOp::DelTopicPermission { user, vhost, exchange } => {
                    t.topic_permissions.insert((user.clone(), vhost.clone(), exchange.clone()));
                }
                DefOp::PutPolicy(PolicyDef { vhost, name, operator, .. })
                | DefOp::DelPolicy { vhost, name, operator } => {
                    t.policies.insert(policy_key(*operator, vhost, name));
                }
            }
        }
        t
    }

    fn vhost(&self, name: &str) -> bool {
        self.all || self.vhosts.contains(name)
    }

    fn user(&self, name: &str) -> bool {
        self.all || self.users.contains(name)
    }

    fn exchange(&self, vhost: &str, name: &str) -> bool {
        self.vhost(vhost) || self.exchanges.contains(&key(vhost, name))
    }

    fn queue(&self, vhost: &str, name: &str) -> bool {
        self.vhost(vhost) || self.queues.contains(&key(vhost, name))
    }

    fn binding(&self, b: &BindingDef) -> bool {
        self.exchange(&b.vhost, &b.source)
            || if b.destination_is_queue {
                self.queue(&b.vhost, &b.destination)
            } else {
                self.exchange(&b.vhost, &b.destination)
            }
    }

    fn permission(&self, user: &str, vhost: &str) -> bool {
        self.user(user) || self.vhost(vhost) || self.permissions.contains(&key(user, vhost))
    }

    fn topic_permission(&self, k: &TopicKey) -> bool {
        self.user(&k.0) || self.vhost(&k.1) || self.topic_permissions.contains(k)
    }

    fn policy(&self, k: &PolicyKey) -> bool {
        self.vhost(&k.1) || self.policies.contains(k)
    }
}

const TOPOLOGY_TAG: u8 = 1;
const BARRIER_TAG: u8 = 2;
const JOIN_TAG: u8 = 3;
const MEMBERS_TAG: u8 = 4;
const FORGET_TAG: u8 = 5;
const ADD_NODE_TAG: u8 = 6;

/// In a snapshot, where the placements end and the operators' member lists begin (no vhost
/// name is that long).
const MEMBERS_SECTION: u16 = u16::MAX;

/// In a snapshot, after the placements and before the member lists: the forgotten nodes.
const FORGOTTEN_SECTION: u16 = u16::MAX - 1;

/// In a snapshot, after the placements and before the member lists: the joined nodes.
const JOINED_SECTION: u16 = u16::MAX - 2;

fn put_text(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// A u16 length and that many bytes of UTF-8, from the front of `at`.
fn take_text(at: &mut &[u8]) -> io::Result<String> {
    let cut = || invalid("a name cut short");
    let n = u16::from_be_bytes(at.get(..2).ok_or_else(cut)?.try_into().expect("2 bytes")) as usize;
    let s = at.get(2..2 + n).ok_or_else(cut)?;
    let s = String::from_utf8(s.to_vec()).map_err(|_| invalid("a name that is not UTF-8"))?;
    *at = &at[2 + n..];
    Ok(s)
}

fn take_u64(at: &mut &[u8]) -> io::Result<u64> {
    let n = u64::from_be_bytes(at.get(..8).ok_or_else(|| invalid("a number cut short"))?.try_into().expect("8 bytes"));
    *at = &at[8..];
    Ok(n)
}

/// A u16 count and that many node ids.
fn put_ids(out: &mut Vec<u8>, ids: &[u64]) {
    out.extend_from_slice(&(ids.len() as u16).to_be_bytes());
    for id in ids {
        out.extend_from_slice(&id.to_be_bytes());
    }
}

fn take_ids(at: &mut &[u8]) -> io::Result<Vec<u64>> {
    let n = u16::from_be_bytes(at.get(..2).ok_or_else(|| invalid("a member list cut short"))?.try_into().expect("2"));
    *at = &at[2..];
    (0..n).map(|_| take_u64(at)).collect()
}

fn invalid(why: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why.into())
}

impl MetaCommand {
    /// The command's bytes: a tag, the origin (u64, big-endian), the number of changes (u32),
    /// then each change as a definitions journal record (length, CRC, field table).
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            MetaCommand::Topology { origin, ops } | MetaCommand::Join { origin, ops } => {
                out.push(if matches!(self, MetaCommand::Join { .. }) { JOIN_TAG } else { TOPOLOGY_TAG });
                out.extend_from_slice(&origin.to_be_bytes());
                out.extend_from_slice(&(ops.len() as u32).to_be_bytes());
                let mut records = BytesMut::new();
                for op in ops {
                    op.encode_record(&mut records);
                }
                out.extend_from_slice(&records);
            }
            MetaCommand::Barrier { origin, nonce } => {
                out.push(BARRIER_TAG);
                out.extend_from_slice(&origin.to_be_bytes());
                out.extend_from_slice(&nonce.to_be_bytes());
            }
            MetaCommand::Members { origin, vhost, name, group, members } => {
                out.push(MEMBERS_TAG);
                out.extend_from_slice(&origin.to_be_bytes());
                put_text(out, vhost);
                put_text(out, name);
                out.extend_from_slice(&group.to_be_bytes());
                put_ids(out, members);
            }
            MetaCommand::Forget { origin, node } => {
                out.push(FORGET_TAG);
                out.extend_from_slice(&origin.to_be_bytes());
                out.extend_from_slice(&node.to_be_bytes());
            }
            MetaCommand::AddNode { origin, node, name, addr } => {
                out.push(ADD_NODE_TAG);
                out.extend_from_slice(&origin.to_be_bytes());
                out.extend_from_slice(&node.to_be_bytes());
                put_text(out, name);
                put_text(out, addr);
            }
        }
    }

    /// Reads back exactly what [`MetaCommand::encode`] wrote.
    pub fn decode(bytes: &[u8]) -> io::Result<MetaCommand> {
        let (&tag, rest) = bytes.split_first().ok_or_else(|| invalid("an empty metadata command"))?;
        if tag == BARRIER_TAG {
            let fields: [u8; 16] = rest.try_into().map_err(|_| invalid("a barrier of the wrong length"))?;
            let origin = u64::from_be_bytes(fields[..8].try_into().expect("8 bytes"));
            let nonce = u64::from_be_bytes(fields[8..].try_into().expect("8 bytes"));
            return Ok(MetaCommand::Barrier { origin, nonce });
        }
        if tag == MEMBERS_TAG {
            let mut at = rest;
            let origin = take_u64(&mut at)?;
            let (vhost, name) = (take_text(&mut at)?, take_text(&mut at)?);
            let group = take_u64(&mut at)?;
            let members = take_ids(&mut at)?;
            if !at.is_empty() {
                return Err(invalid("bytes after a member change"));
            }
            return Ok(MetaCommand::Members { origin, vhost, name, group, members });
        }
        if tag == FORGET_TAG {
            let fields: [u8; 16] = rest.try_into().map_err(|_| invalid("a forgotten node of the wrong length"))?;
            let origin = u64::from_be_bytes(fields[..8].try_into().expect("8 bytes"));
            let node = u64::from_be_bytes(fields[8..].try_into().expect("8 bytes"));
            return Ok(MetaCommand::Forget { origin, node });
        }
        if tag == ADD_NODE_TAG {
            let mut at = rest;
            let (origin, node) = (take_u64(&mut at)?, take_u64(&mut at)?);
            let (name, addr) = (take_text(&mut at)?, take_text(&mut at)?);
            if !at.is_empty() {
                return Err(invalid("bytes after a joining node"));
            }
            return Ok(MetaCommand::AddNode { origin, node, name, addr });
        }
        if tag != TOPOLOGY_TAG && tag != JOIN_TAG {
            return Err(invalid(format!("unknown metadata command {tag}")));
        }
        let origin = rest.get(..8).ok_or_else(|| invalid("a metadata command cut short"))?;
        let origin = u64::from_be_bytes(origin.try_into().expect("8 bytes"));
        let count = rest.get(8..12).ok_or_else(|| invalid("a metadata command cut short"))?;
        let count = u32::from_be_bytes(count.try_into().expect("4 bytes")) as usize;
        let mut at = &rest[12..];
        let mut ops = Vec::with_capacity(count.min(at.len() / 8));
        for _ in 0..count {
            // A record: u32 length, u32 CRC, payload (little-endian, as the journal's).
            let len = at.get(..4).ok_or_else(|| invalid("a metadata change cut short"))?;
            let end = 8usize.saturating_add(u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize);
            let record = at.get(..end).ok_or_else(|| invalid("a metadata change cut short"))?;
            ops.push(DefOp::decode_record(record).map_err(invalid)?);
            at = &at[end..];
        }
        if !at.is_empty() {
            return Err(invalid(format!("{} bytes after a metadata command", at.len())));
        }
        Ok(if tag == JOIN_TAG { MetaCommand::Join { origin, ops } } else { MetaCommand::Topology { origin, ops } })
    }
}

impl warren_raft::Machine for Metadata {
    type Command = MetaCommand;
    type Output = MetaOutput;

    fn apply(&mut self, index: u64, command: &MetaCommand) -> MetaOutput {
        Metadata::apply(self, index, command)
    }

    /// Everything but the placements in the definitions snapshot format (length first), then
    /// each placement: vhost and name (u16 length, bytes), group and origin (u64), big-endian;
    /// then, if any node was forgotten, the mark `FORGOTTEN_SECTION` and their ids (a u16
    /// count, u64 each); then, if any node joined, the mark `JOINED_SECTION`, their number
    /// (u16) and each: id and index of joining (u64), name and address (u16 length, bytes);
    /// then, if an operator changed any queue's members, the mark
    /// `MEMBERS_SECTION` and each such queue: vhost, name, the number of members (u16) and
    /// their ids (u64).
    fn snapshot(&self) -> Vec<u8> {
        let defs = self.definitions().encode();
        let mut out = Vec::with_capacity(defs.len() + 4 + self.placements.len() * 48);
        out.extend_from_slice(&(defs.len() as u32).to_be_bytes());
        out.extend_from_slice(&defs);
        for ((vhost, name), p) in &self.placements {
            for s in [vhost, name] {
                out.extend_from_slice(&(s.len() as u16).to_be_bytes());
                out.extend_from_slice(s.as_bytes());
            }
            out.extend_from_slice(&p.group.to_be_bytes());
            out.extend_from_slice(&p.origin.to_be_bytes());
        }
        if !self.forgotten.is_empty() {
            out.extend_from_slice(&FORGOTTEN_SECTION.to_be_bytes());
            put_ids(&mut out, &self.forgotten.iter().copied().collect::<Vec<u64>>());
        }
        if !self.joined.is_empty() {
            out.extend_from_slice(&JOINED_SECTION.to_be_bytes());
            out.extend_from_slice(&(self.joined.len() as u16).to_be_bytes());
            for (id, j) in &self.joined {
                out.extend_from_slice(&id.to_be_bytes());
                out.extend_from_slice(&j.at.to_be_bytes());
                put_text(&mut out, &j.name);
                put_text(&mut out, &j.addr);
            }
        }
        if !self.members.is_empty() {
            out.extend_from_slice(&MEMBERS_SECTION.to_be_bytes());
            for ((vhost, name), members) in &self.members {
                put_text(&mut out, vhost);
                put_text(&mut out, name);
                put_ids(&mut out, members);
            }
        }
        out
    }

    fn restore(&mut self, bytes: &[u8]) -> io::Result<()> {
        let cut = || invalid("a metadata snapshot cut short");
        let len = u32::from_be_bytes(bytes.get(..4).ok_or_else(cut)?.try_into().expect("4 bytes")) as usize;
        let defs = bytes.get(4..4 + len).ok_or_else(cut)?;
        let defs = Definitions::decode(Bytes::copy_from_slice(defs)).map_err(invalid)?;
        let mut restored = Metadata::from_definitions(&defs);
        let mut at = &bytes[4 + len..];
        while !at.is_empty() {
            if at.starts_with(&FORGOTTEN_SECTION.to_be_bytes()) {
                at = &at[2..];
                restored.forgotten = take_ids(&mut at)?.into_iter().collect();
                continue;
            }
            if at.starts_with(&JOINED_SECTION.to_be_bytes()) {
                at = &at[2..];
                let n = u16::from_be_bytes(at.get(..2).ok_or_else(cut)?.try_into().expect("2 bytes"));
                at = &at[2..];
                for _ in 0..n {
                    let (id, joined_at) = (take_u64(&mut at)?, take_u64(&mut at)?);
                    let (name, addr) = (take_text(&mut at)?, take_text(&mut at)?);
                    restored.joined.insert(id, JoinedNode { name, addr, at: joined_at });
                }
                continue;
            }
            if at.starts_with(&MEMBERS_SECTION.to_be_bytes()) {
                at = &at[2..];
                while !at.is_empty() {
                    let (vhost, name) = (take_text(&mut at)?, take_text(&mut at)?);
                    let members = take_ids(&mut at)?;
                    if !restored.placements.contains_key(&key(&vhost, &name)) {
                        return Err(invalid(format!("members of '{name}' in '{vhost}', which is not placed")));
                    }
                    restored.members.insert((vhost, name), members);
                }
                break;
            }
            let mut text = || -> io::Result<String> {
                let n = u16::from_be_bytes(at.get(..2).ok_or_else(cut)?.try_into().expect("2 bytes")) as usize;
                let s = at.get(2..2 + n).ok_or_else(cut)?;
                let s = String::from_utf8(s.to_vec()).map_err(|_| invalid("a name that is not UTF-8"))?;
                at = &at[2 + n..];
                Ok(s)
            };
            let (vhost, name) = (text()?, text()?);
            let nums = at.get(..16).ok_or_else(cut)?;
            let group = u64::from_be_bytes(nums[..8].try_into().expect("8 bytes"));
            let origin = u64::from_be_bytes(nums[8..].try_into().expect("8 bytes"));
            at = &at[16..];
            if !restored.queues.contains_key(&key(&vhost, &name)) {
                return Err(invalid(format!("a placement of '{name}' in '{vhost}', which is not a queue")));
            }
            restored.placements.insert((vhost, name), Placement { group, origin });
        }
        *self = restored;
        Ok(())
    }

    fn encode_command(command: &MetaCommand, out: &mut Vec<u8>) {
        command.encode(out);
    }

    fn decode_command(bytes: &[u8]) -> io::Result<MetaCommand> {
        MetaCommand::decode(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use warren_core::definitions::ExchangeDef;

    fn exchange(name: &str, kind: &str) -> ExchangeDef {
        ExchangeDef {
            vhost: "/".into(),
            name: name.into(),
            kind: kind.into(),
            auto_delete: false,
            internal: false,
            arguments: Default::default(),
        }
    }

    fn queue(name: &str) -> QueueDef {
        QueueDef { vhost: "/".into(), name: name.into(), auto_delete: false, arguments: Default::default() }
    }

    fn binding(source: &str, queue: &str, key: &str) -> BindingDef {
        BindingDef {
            vhost: "/".into(),
            source: source.into(),
            destination: queue.into(),
            destination_is_queue: true,
            routing_key: key.into(),
            arguments: Default::default(),
        }
    }

    fn topo(origin: u64, ops: Vec<DefOp>) -> MetaCommand {
        MetaCommand::Topology { origin, ops }
    }

    /// The group's state with the vhost "/" that everything of these tests lives in.
    fn with_root() -> Metadata {
        let mut m = Metadata::default();
        m.apply(1, &topo(1, vec![DefOp::PutVhost { name: "/".into() }]));
        m
    }

    #[test]
    fn declarations_take_effect_once_and_conflicts_are_refused() {
        let mut m = with_root();
        let out = m.apply(
            10,
            &topo(
                7,
                vec![
                    DefOp::PutExchange(exchange("logs", "fanout")),
                    DefOp::PutQueue(queue("q")),
                    DefOp::PutBinding(binding("logs", "q", "")),
                ],
            ),
        );
        assert_eq!(out.origin, 7);
        assert_eq!(out.applied.len(), 3);
        assert!(out.refused.is_empty());
        // The same declarations again change nothing.
        let again = m.apply(
            20,
            &topo(8, vec![DefOp::PutExchange(exchange("logs", "fanout")), DefOp::PutBinding(binding("logs", "q", ""))]),
        );
        assert!(again.applied.is_empty() && again.refused.is_empty(), "{again:?}");
        // Another type for the same exchange is refused, and the first stays.
        let clash = m.apply(30, &topo(9, vec![DefOp::PutExchange(exchange("logs", "direct"))]));
        assert_eq!(clash.refused.len(), 1, "{clash:?}");
        assert_eq!(m.exchange("/", "logs").map(|x| x.kind.as_str()), Some("fanout"));
    }

    #[test]
    fn deletions_take_their_bindings_and_bindings_need_both_ends() {
        let mut m = with_root();
        m.apply(
            40,
            &topo(
                1,
                vec![
                    DefOp::PutExchange(exchange("x", "direct")),
                    DefOp::PutQueue(queue("q")),
                    DefOp::PutBinding(binding("x", "q", "k")),
                    DefOp::PutBinding(binding("amq.topic", "q", "a.#")),
                ],
            ),
        );
        assert!(m.has_binding(&binding("amq.topic", "q", "a.#")));
        let out = m.apply(50, &topo(1, vec![DefOp::DelQueue { vhost: "/".into(), name: "q".into() }]));
        assert_eq!(out.applied.len(), 1);
        assert!(!m.has_binding(&binding("x", "q", "k")) && !m.has_binding(&binding("amq.topic", "q", "a.#")));
        // A binding to the deleted queue is refused; deleting it again changes nothing.
        let late = m.apply(
            60,
            &topo(
                2,
                vec![
                    DefOp::PutBinding(binding("x", "q", "k")),
                    DefOp::DelQueue { vhost: "/".into(), name: "q".into() },
                ],
            ),
        );
        assert_eq!(late.refused.len(), 1, "{late:?}");
        assert!(late.applied.is_empty());
        assert_eq!(m.topology().bindings.len(), 0);
    }

    #[test]
    fn commands_and_snapshots_read_back_and_damage_is_refused() {
        let cmd = topo(
            u64::MAX - 3,
            vec![
                DefOp::PutExchange(exchange("x", "topic")),
                DefOp::PutQueue(queue("q")),
                DefOp::PutBinding(binding("x", "q", "a.*")),
                DefOp::DelExchange { vhost: "/".into(), name: "x".into() },
            ],
        );
        let mut bytes = Vec::new();
        cmd.encode(&mut bytes);
        assert_eq!(MetaCommand::decode(&bytes).expect("decode"), cmd);
        for cut in 0..bytes.len() {
            assert!(MetaCommand::decode(&bytes[..cut]).is_err(), "cut at {cut} accepted");
        }
        let barrier = MetaCommand::Barrier { origin: 3, nonce: u64::MAX };
        let mut b = Vec::new();
        barrier.encode(&mut b);
        assert_eq!(MetaCommand::decode(&b).expect("decode"), barrier);
        assert!(MetaCommand::decode(&b[..b.len() - 1]).is_err());
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(MetaCommand::decode(&longer).is_err());
        let mut flipped = bytes.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert!(MetaCommand::decode(&flipped).is_err(), "a damaged change passed its checksum");

        let mut m = with_root();
        m.apply(70, &topo(1, vec![DefOp::PutExchange(exchange("x", "topic")), DefOp::PutQueue(queue("q"))]));
        m.apply(80, &topo(1, vec![DefOp::PutBinding(binding("x", "q", "a.*"))]));
        let snap = warren_raft::Machine::snapshot(&m);
        let mut back = Metadata::default();
        warren_raft::Machine::restore(&mut back, &snap).expect("restore");
        assert_eq!(back, m);
        assert!(warren_raft::Machine::restore(&mut back, &snap[..snap.len() - 1]).is_err());
    }

    #[test]
    fn a_forgotten_node_takes_its_classic_queues_and_leaves_the_member_lists() {
        let mut quorum = queue("qq");
        quorum.arguments.insert("x-queue-type", warren_amqp::FieldValue::from("quorum"));
        let mut lone = queue("lone");
        lone.arguments.insert("x-queue-type", warren_amqp::FieldValue::from("quorum"));
        let mut m = with_root();
        m.apply(5, &topo(7, vec![DefOp::PutQueue(quorum), DefOp::PutQueue(lone), DefOp::PutQueue(queue("on7"))]));
        m.apply(6, &topo(8, vec![DefOp::PutQueue(queue("on8")), DefOp::PutExchange(exchange("x", "direct"))]));
        m.apply(
            7,
            &topo(8, vec![DefOp::PutBinding(binding("x", "on7", "k")), DefOp::PutBinding(binding("x", "on8", "k"))]),
        );
        let members = |name: &str, members: Vec<u64>| MetaCommand::Members {
            origin: 8,
            vhost: "/".into(),
            name: name.into(),
            group: 5,
            members,
        };
        assert_eq!(m.apply(8, &members("qq", vec![7, 8, 9])).members, Some(Ok(())));
        assert_eq!(m.apply(9, &members("lone", vec![7])).members, Some(Ok(())));

        let forget = MetaCommand::Forget { origin: 8, node: 7 };
        let out = m.apply(10, &forget);
        assert_eq!(out.forgot, Some(7));
        assert_eq!(out.origin, 8);
        assert_eq!(out.applied, vec![DefOp::DelQueue { vhost: "/".into(), name: "on7".into() }]);
        assert!(m.queue("/", "on7").is_none(), "its classic queue went");
        assert_eq!(m.topology().bindings, vec![binding("x", "on8", "k")], "and its bindings");
        assert_eq!(m.home("/", "on8"), Some(8), "other nodes' classic queues stay");
        assert_eq!(m.members("/", "qq"), Some(&[8, 9][..]));
        assert_eq!(m.members("/", "lone"), Some(&[7][..]), "a last member stays");
        assert!(m.placement("/", "qq").is_some() && m.placement("/", "lone").is_some());
        assert_eq!(m.forgotten(), &BTreeSet::from([7]));
        // Forgetting it again changes nothing.
        let again = m.apply(11, &forget);
        assert!(again.applied.is_empty());
        assert_eq!(again.forgot, Some(7));

        let mut bytes = Vec::new();
        forget.encode(&mut bytes);
        assert_eq!(MetaCommand::decode(&bytes).expect("decode"), forget);
        for cut in 0..bytes.len() {
            assert!(MetaCommand::decode(&bytes[..cut]).is_err(), "cut at {cut} accepted");
        }
        // In snapshots, with the member lists after.
        m.apply(12, &MetaCommand::Forget { origin: 8, node: 3 });
        let snap = warren_raft::Machine::snapshot(&m);
        let mut back = Metadata::default();
        warren_raft::Machine::restore(&mut back, &snap).expect("restore");
        assert_eq!(back, m);
        assert_eq!(back.forgotten(), &BTreeSet::from([3, 7]));
        assert_eq!(back.members("/", "qq"), Some(&[8, 9][..]));
        for cut in 1..20 {
            assert!(warren_raft::Machine::restore(&mut back, &snap[..snap.len() - cut]).is_err(), "cut {cut}");
        }
    }

    #[test]
    fn a_joining_node_is_recorded_once_and_again_afresh_after_it_was_forgotten() {
        let mut m = with_root();
        let add = |node: u64, addr: &str| MetaCommand::AddNode {
            origin: 1,
            node,
            name: format!("w{node}@h"),
            addr: addr.to_owned(),
        };
        let out = m.apply(20, &add(4, "h:1"));
        assert_eq!((out.added, out.origin), (Some(4), 1));
        let joined = |m: &Metadata| m.joined().get(&4).cloned().expect("joined");
        assert_eq!(joined(&m), JoinedNode { name: "w4@h".into(), addr: "h:1".into(), at: 20 });
        // Asked again (a restart before it heard back): the same joining, a new address kept.
        m.apply(25, &add(4, "h:2"));
        assert_eq!(joined(&m), JoinedNode { name: "w4@h".into(), addr: "h:2".into(), at: 20 });
        m.apply(30, &MetaCommand::Forget { origin: 2, node: 4 });
        assert!(m.forgotten().contains(&4));
        m.apply(40, &add(4, "h:3"));
        assert!(!m.forgotten().contains(&4), "back in");
        assert_eq!(joined(&m).at, 40, "joined afresh");
        m.apply(41, &add(5, "h5:1"));
        m.apply(
            42,
            &MetaCommand::Members { origin: 1, vhost: "/".into(), name: "none".into(), group: 1, members: vec![1] },
        );
        m.apply(43, &MetaCommand::Forget { origin: 2, node: 9 });

        let cmd = add(4, "h:1");
        let mut bytes = Vec::new();
        cmd.encode(&mut bytes);
        assert_eq!(MetaCommand::decode(&bytes).expect("decode"), cmd);
        for cut in 0..bytes.len() {
            assert!(MetaCommand::decode(&bytes[..cut]).is_err(), "cut at {cut} accepted");
        }
        let snap = warren_raft::Machine::snapshot(&m);
        let mut back = Metadata::default();
        warren_raft::Machine::restore(&mut back, &snap).expect("restore");
        assert_eq!(back, m);
        assert_eq!(back.joined().len(), 2);
        for cut in 1..30 {
            assert!(warren_raft::Machine::restore(&mut back, &snap[..snap.len() - cut]).is_err(), "cut {cut}");
        }
    }

    #[test]
    fn a_quorum_queue_is_placed_by_the_declaration_that_made_it() {
        let mut quorum = queue("qq");
        quorum.arguments.insert("x-queue-type", warren_amqp::FieldValue::from("quorum"));
        let mut m = with_root();
        m.apply(5, &topo(7, vec![DefOp::PutQueue(quorum.clone()), DefOp::PutQueue(queue("classic"))]));
        assert_eq!(m.placement("/", "qq"), Some(Placement { group: 5, origin: 7 }));
        // A classic queue is placed too: its home is the node its declaration came through.
        assert_eq!(m.placement("/", "classic"), Some(Placement { group: 5, origin: 7 }));
        assert_eq!(m.home("/", "classic"), Some(7));
        assert_eq!(m.home("/", "qq"), None);
        assert_eq!(m.placements().map(|(k, _)| k.1.as_str()).collect::<Vec<_>>(), ["qq"], "quorum queues only");
        // Declared again as it is: same group.
        m.apply(6, &topo(8, vec![DefOp::PutQueue(quorum.clone())]));
        assert_eq!(m.placement("/", "qq"), Some(Placement { group: 5, origin: 7 }));
        let snap = warren_raft::Machine::snapshot(&m);
        let mut back = Metadata::default();
        warren_raft::Machine::restore(&mut back, &snap).expect("restore");
        assert_eq!(back, m);
        for cut in [snap.len() - 1, snap.len() - 17] {
            assert!(warren_raft::Machine::restore(&mut back, &snap[..cut]).is_err(), "cut at {cut}");
        }
        // Deleted and declared again: a new group.
        m.apply(9, &topo(8, vec![DefOp::DelQueue { vhost: "/".into(), name: "qq".into() }]));
        assert_eq!(m.placement("/", "qq"), None);
        m.apply(12, &topo(8, vec![DefOp::PutQueue(quorum.clone())]));
        assert_eq!(m.placement("/", "qq"), Some(Placement { group: 12, origin: 8 }));

        // An operator's member list: kept, in snapshots too, and only for the group asked about.
        let members = |group: u64, members: Vec<u64>| MetaCommand::Members {
            origin: 3,
            vhost: "/".into(),
            name: "qq".into(),
            group,
            members,
        };
        let stale = m.apply(13, &members(5, vec![1, 2]));
        assert!(matches!(stale.members, Some(Err(_))), "{stale:?}");
        assert!(matches!(m.apply(14, &members(12, vec![])).members, Some(Err(_))));
        assert_eq!(m.members("/", "qq"), None);
        let done = m.apply(15, &members(12, vec![9, 1, 9]));
        assert_eq!(done.members, Some(Ok(())));
        assert_eq!(done.origin, 3);
        assert_eq!(m.members("/", "qq"), Some(&[1, 9][..]));
        for command in [members(12, vec![1, 9]), topo(8, vec![])] {
            let mut bytes = Vec::new();
            command.encode(&mut bytes);
            assert_eq!(MetaCommand::decode(&bytes).expect("decode"), command);
            assert!(MetaCommand::decode(&bytes[..bytes.len() - 1]).is_err());
        }
        let snap = warren_raft::Machine::snapshot(&m);
        let mut back = Metadata::default();
        warren_raft::Machine::restore(&mut back, &snap).expect("restore");
        assert_eq!(back, m);
        assert!(warren_raft::Machine::restore(&mut back, &snap[..snap.len() - 3]).is_err());
        // A new declaration is a new group with the members drawn afresh.
        m.apply(16, &topo(8, vec![DefOp::DelQueue { vhost: "/".into(), name: "qq".into() }]));
        m.apply(17, &topo(8, vec![DefOp::PutQueue(quorum)]));
        assert_eq!(m.members("/", "qq"), None);
    }
}

#[cfg(test)]
mod access_tests {
    use super::*;
    use warren_amqp::FieldValue;

    fn topo(origin: u64, ops: Vec<DefOp>) -> MetaCommand {
        MetaCommand::Topology { origin, ops }
    }

    fn vhost(name: &str) -> DefOp {
        DefOp::PutVhost { name: name.into() }
    }

    fn user(name: &str, hash: &str) -> UserDef {
        UserDef {
            name: name.into(),
            password_hash: hash.into(),
            hashing_algorithm: "rabbit_password_hashing_sha256".into(),
            tags: vec!["administrator".into()],
        }
    }

    fn permission(user: &str, vhost: &str, configure: &str) -> PermissionDef {
        PermissionDef {
            user: user.into(),
            vhost: vhost.into(),
            configure: configure.into(),
            write: ".*".into(),
            read: ".*".into(),
        }
    }

    fn topic(user: &str, vhost: &str, exchange: &str) -> TopicPermissionDef {
        TopicPermissionDef {
            user: user.into(),
            vhost: vhost.into(),
            exchange: exchange.into(),
            write: "^a".into(),
            read: ".*".into(),
        }
    }

    fn policy(vhost: &str, name: &str, ttl: i64, operator: bool) -> PolicyDef {
        let mut definition = warren_amqp::FieldTable::new();
        definition.insert("message-ttl", FieldValue::I64(ttl));
        PolicyDef {
            vhost: vhost.into(),
            name: name.into(),
            pattern: "^t".into(),
            apply_to: "queues".into(),
            priority: 1,
            definition,
            operator,
        }
    }

    fn queue(vhost: &str, name: &str) -> QueueDef {
        QueueDef { vhost: vhost.into(), name: name.into(), auto_delete: false, arguments: Default::default() }
    }

    fn exchange(vhost: &str, name: &str) -> ExchangeDef {
        ExchangeDef {
            vhost: vhost.into(),
            name: name.into(),
            kind: "topic".into(),
            auto_delete: false,
            internal: false,
            arguments: Default::default(),
        }
    }

    fn binding(vhost: &str, source: &str, queue: &str) -> BindingDef {
        BindingDef {
            vhost: vhost.into(),
            source: source.into(),
            destination: queue.into(),
            destination_is_queue: true,
            routing_key: "k".into(),
            arguments: Default::default(),
        }
    }

    /// A state with a bit of everything in vhosts "/" and "prod".
    fn populated() -> Metadata {
        let mut m = Metadata::default();
        let out = m.apply(
            1,
            &topo(
                1,
                vec![
                    vhost("/"),
                    vhost("prod"),
                    DefOp::SetVhostLimits {
                        vhost: "prod".into(),
                        limits: VhostLimits { max_connections: Some(5), max_queues: None },
                    },
                    DefOp::PutUser(user("alice", "h1")),
                    DefOp::PutUser(user("bob", "h2")),
                    DefOp::SetUserLimits {
                        user: "bob".into(),
                        limits: UserLimits { max_connections: None, max_channels: Some(3) },
                    },
                    DefOp::PutPermission(permission("alice", "prod", ".*")),
                    DefOp::PutPermission(permission("bob", "prod", "^bob")),
                    DefOp::PutPermission(permission("bob", "/", "")),
                    DefOp::PutTopicPermission(topic("bob", "prod", "amq.topic")),
                    DefOp::PutPolicy(policy("prod", "ttl", 1000, false)),
                    DefOp::PutPolicy(policy("prod", "ttl", 50, true)),
                    DefOp::PutPolicy(policy("/", "other", 7, false)),
                    DefOp::PutExchange(exchange("prod", "events")),
                    DefOp::PutQueue(queue("prod", "tasks")),
                    DefOp::PutQueue(queue("/", "tasks")),
                    DefOp::PutBinding(binding("prod", "events", "tasks")),
                ],
            ),
        );
        assert!(out.refused.is_empty(), "{out:?}");
        assert_eq!(out.applied.len(), 17);
        m
    }

    #[test]
    fn access_changes_need_what_they_name_and_deletions_take_what_depends_on_them() {
        let mut m = populated();
        assert_eq!(m.user("alice").map(|u| u.password_hash.as_str()), Some("h1"));
        assert_eq!(m.vhost_limits("prod").and_then(|l| l.max_connections), Some(5));
        // A policy and an operator policy of one name are two things.
        assert_eq!(m.policy("prod", "ttl", false).map(|p| p.name.as_str()), Some("ttl"));
        assert!(m.policy("prod", "ttl", true).is_some_and(|p| p.operator));

        // What names something absent is refused; the same again changes nothing.
        let out = m.apply(
            2,
            &topo(
                2,
                vec![
                    DefOp::PutPermission(permission("carol", "prod", ".*")),
                    DefOp::PutPermission(permission("alice", "test", ".*")),
                    DefOp::PutTopicPermission(topic("carol", "prod", "x")),
                    DefOp::PutPolicy(policy("test", "p", 1, false)),
                    DefOp::SetVhostLimits { vhost: "test".into(), limits: VhostLimits::default() },
                    DefOp::SetUserLimits { user: "carol".into(), limits: UserLimits::default() },
                    DefOp::PutQueue(queue("test", "q")),
                    DefOp::PutExchange(exchange("test", "x")),
                    DefOp::PutBinding(binding("test", "amq.direct", "q")),
                    DefOp::PutUser(user("alice", "h1")),
                    vhost("prod"),
                    DefOp::PutPermission(permission("alice", "prod", ".*")),
                ],
            ),
        );
        assert_eq!(out.refused.len(), 9, "{out:?}");
        assert!(out.applied.is_empty(), "{out:?}");
        // A user set again with another password replaces it (a PUT of the user).
        let out = m.apply(3, &topo(2, vec![DefOp::PutUser(user("alice", "h9"))]));
        assert_eq!(out.applied.len(), 1);
        assert_eq!(m.user("alice").map(|u| u.password_hash.as_str()), Some("h9"));

        // Deleting a user takes its permissions, topic permissions and limits.
        m.apply(4, &topo(3, vec![DefOp::DelUser { name: "bob".into() }]));
        assert!(m.permission("bob", "prod").is_none() && m.permission("bob", "/").is_none());
        assert!(m.topic_permission("bob", "prod", "amq.topic").is_none());
        assert!(m.user_limits("bob").is_empty());
        assert!(m.permission("alice", "prod").is_some());

        // Deleting a vhost takes everything in it, and nothing elsewhere.
        let out = m.apply(5, &topo(3, vec![DefOp::DelVhost { name: "prod".into() }]));
        assert_eq!(out.applied.len(), 1);
        let d = m.definitions();
        assert_eq!(d.vhosts, ["/"]);
        assert_eq!(d.queues, [queue("/", "tasks")]);
        assert!(d.exchanges.is_empty() && d.bindings.is_empty() && d.vhost_limits.is_empty());
        assert!(d.permissions.is_empty(), "{:?}", d.permissions);
        assert_eq!(d.policies, [policy("/", "other", 7, false)]);
        // Anything in it afterwards is refused.
        let late = m.apply(6, &topo(1, vec![DefOp::PutQueue(queue("prod", "late"))]));
        assert_eq!(late.refused.len(), 1);
        // Clearing limits removes them.
        m.apply(
            7,
            &topo(
                1,
                vec![
                    vhost("v"),
                    DefOp::SetVhostLimits {
                        vhost: "v".into(),
                        limits: VhostLimits { max_connections: None, max_queues: Some(1) },
                    },
                ],
            ),
        );
        m.apply(8, &topo(1, vec![DefOp::SetVhostLimits { vhost: "v".into(), limits: VhostLimits::default() }]));
        assert!(m.definitions().vhost_limits.is_empty());
    }

    #[test]
    fn a_joining_node_gives_way_where_the_cluster_has_something_else() {
        // Three fresh nodes, each with the default user (its password salted differently),
        // the default vhost and the user's permissions there.
        let fresh = |hash: &str| {
            vec![vhost("/"), DefOp::PutUser(user("guest", hash)), DefOp::PutPermission(permission("guest", "/", ".*"))]
        };
        let mut m = Metadata::default();
        let first = m.apply(1, &MetaCommand::Join { origin: 1, ops: fresh("salt1") });
        assert_eq!((first.applied.len(), first.refused.len()), (3, 0));
        for (i, hash) in ["salt2", "salt3"].iter().enumerate() {
            let out = m.apply(2 + i as u64, &MetaCommand::Join { origin: 2 + i as u64, ops: fresh(hash) });
            // The vhost and the permission are the same: nothing to do, nothing refused. The
            // user is the first node's, kept.
            assert!(out.applied.is_empty(), "{out:?}");
            assert_eq!(out.refused.len(), 1, "{out:?}");
            assert!(matches!(&out.refused[0].0, DefOp::PutUser(u) if u.name == "guest"));
            assert!(out.refused[0].1.contains("kept"), "{}", out.refused[0].1);
        }
        assert_eq!(m.user("guest").map(|u| u.password_hash.as_str()), Some("salt1"));
        // A joining node's own things the cluster lacks are taken; its policy and limits
        // where the cluster has others are not.
        m.apply(9, &topo(1, vec![DefOp::PutPolicy(policy("/", "ttl", 1, false))]));
        let out = m.apply(
            10,
            &MetaCommand::Join {
                origin: 4,
                ops: vec![
                    DefOp::PutPolicy(policy("/", "ttl", 2, false)),
                    DefOp::PutUser(user("dave", "d")),
                    DefOp::SetUserLimits {
                        user: "dave".into(),
                        limits: UserLimits { max_connections: Some(1), max_channels: None },
                    },
                ],
            },
        );
        assert_eq!((out.applied.len(), out.refused.len()), (2, 1), "{out:?}");
        assert_eq!(
            m.policy("/", "ttl", false).and_then(|p| p.definition.get("message-ttl").and_then(FieldValue::as_i64)),
            Some(1)
        );
        // The same changes in an ordinary command replace.
        let out = m.apply(11, &topo(4, vec![DefOp::PutPolicy(policy("/", "ttl", 2, false))]));
        assert_eq!(out.applied.len(), 1);
    }

    #[test]
    fn every_kind_of_change_and_the_whole_state_read_back() {
        let m = populated();
        let snap = warren_raft::Machine::snapshot(&m);
        let mut back = Metadata::default();
        warren_raft::Machine::restore(&mut back, &snap).expect("restore");
        assert_eq!(back, m);
        for cut in [1, snap.len() / 2, snap.len() - 1] {
            assert!(warren_raft::Machine::restore(&mut back, &snap[..cut]).is_err(), "cut at {cut}");
        }

        let mut ops = Metadata::join_ops(&m.definitions());
        ops.extend([
            DefOp::DelVhost { name: "v".into() },
            DefOp::DelUser { name: "u".into() },
            DefOp::DelPermission { user: "u".into(), vhost: "v".into() },
            DefOp::DelTopicPermission { user: "u".into(), vhost: "v".into(), exchange: "x".into() },
            DefOp::DelPolicy { vhost: "v".into(), name: "p".into(), operator: true },
        ]);
        for command in [MetaCommand::Join { origin: 5, ops: ops.clone() }, topo(6, ops)] {
            let mut bytes = Vec::new();
            command.encode(&mut bytes);
            assert_eq!(MetaCommand::decode(&bytes).expect("decode"), command);
            assert!(MetaCommand::decode(&bytes[..bytes.len() - 1]).is_err());
        }
        // Joining with everything a state holds makes the same state.
        let mut joined = Metadata::default();
        let out = joined.apply(1, &MetaCommand::Join { origin: 1, ops: Metadata::join_ops(&m.definitions()) });
        assert!(out.refused.is_empty(), "{out:?}");
        assert_eq!(joined, m);
    }

    /// Applies `fixes` to `m` as one command, which must take them all.
    fn apply_all(m: &mut Metadata, fixes: Vec<DefOp>) {
        let out = m.apply(100, &topo(9, fixes));
        assert!(out.refused.is_empty(), "{out:?}");
    }

    #[test]
    fn the_changes_to_another_state_make_it() {
        // The definitions are compared: placements record which command made a queue, and a
        // broker (what the changes are for) has none.
        let target = populated();
        // From nothing, and from a state that differs everywhere.
        let mut here = Metadata::default();
        apply_all(&mut here, Metadata::default().changes_to(&target, None));
        assert_eq!(here.definitions(), target.definitions());
        let mut other = populated();
        apply_all(
            &mut other,
            vec![
                DefOp::DelVhost { name: "prod".into() },
                vhost("stale"),
                DefOp::PutQueue(queue("stale", "q")),
                DefOp::PutUser(user("alice", "changed")),
                DefOp::PutUser(user("eve", "e")),
                DefOp::PutPermission(permission("eve", "/", ".*")),
                DefOp::DelPolicy { vhost: "/".into(), name: "other".into(), operator: false },
                DefOp::SetUserLimits { user: "bob".into(), limits: UserLimits::default() },
            ],
        );
        let fixes = other.changes_to(&target, None);
        apply_all(&mut other, fixes);
        assert_eq!(other.definitions(), target.definitions());

        // Only what the changes touch: undoing a vhost's deletion brings back all it held, and
        // leaves the rest as it is.
        let mut here = target.clone();
        apply_all(&mut here, vec![DefOp::DelVhost { name: "prod".into() }, DefOp::PutUser(user("eve", "e"))]);
        let fixes = here.changes_to(&target, Some(&[DefOp::DelVhost { name: "prod".into() }]));
        assert!(fixes.iter().all(|op| !matches!(op, DefOp::DelUser { .. })), "{fixes:?}");
        apply_all(&mut here, fixes);
        assert!(here.user("eve").is_some(), "an untouched user was removed");
        apply_all(&mut here, vec![DefOp::DelUser { name: "eve".into() }]);
        assert_eq!(here.definitions(), target.definitions());
        // Undoing a user's creation removes it with what was given to it.
        let mut here = target.clone();
        apply_all(
            &mut here,
            vec![DefOp::PutUser(user("eve", "e")), DefOp::PutPermission(permission("eve", "prod", ""))],
        );
        let fixes = here.changes_to(&target, Some(&[DefOp::PutUser(user("eve", "e"))]));
        assert_eq!(
            fixes,
            [DefOp::DelPermission { user: "eve".into(), vhost: "prod".into() }, DefOp::DelUser { name: "eve".into() }]
        );
    }
}
