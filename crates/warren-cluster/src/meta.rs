//! The metadata group's state machine: the cluster's durable topology (exchanges, queues,
//! bindings), replicated on every node (docs/clustering.md, "The metadata group").
//!
//! A node proposes the changes a client made on it ([`MetaCommand::Topology`], the
//! [`DefOp`]s its broker kept); every node applies them in log order. A change that no longer
//! fits when its turn comes (a declaration of something another node declared meanwhile with
//! other properties, a binding to a queue deleted meanwhile) is refused: the output says so,
//! and the origin undoes what it made locally and tells its client. Deterministic: ordered maps
//! only, nothing read but the state and the command.

use bytes::{Bytes, BytesMut};
use std::collections::BTreeMap;
use std::io;
use warren_core::definitions::{BindingDef, DefOp, Definitions, ExchangeDef, QueueDef};

/// A change to the metadata, as written in the group's log.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaCommand {
    /// Topology changes made on node `origin`, in the order they were made there.
    Topology { origin: u64, ops: Vec<DefOp> },
    /// Changes nothing: node `origin`, restarted, learns from its output that it has applied
    /// everything committed before (`nonce` tells its own barrier from one of an earlier run).
    Barrier { origin: u64, nonce: u64 },
}

/// What applying a command did, on every node.
#[derive(Debug, Clone, PartialEq)]
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
}

type Key = (String, String);

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

/// The replicated topology.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metadata {
    exchanges: BTreeMap<Key, ExchangeDef>,
    queues: BTreeMap<Key, QueueDef>,
    bindings: BTreeMap<Vec<u8>, BindingDef>,
    /// The quorum queues' placements.
    placements: BTreeMap<Key, Placement>,
}

/// Whether a queue's declaration makes it a quorum queue (replicated by a group of its own).
pub fn is_quorum(q: &QueueDef) -> bool {
    q.arguments.get("x-queue-type").and_then(|v| v.as_str()) == Some("quorum")
}

fn key(vhost: &str, name: &str) -> Key {
    (vhost.to_owned(), name.to_owned())
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
            placements: BTreeMap::new(),
        }
    }

    /// Where the quorum queue `name` in `vhost` lives.
    pub fn placement(&self, vhost: &str, name: &str) -> Option<Placement> {
        self.placements.get(&key(vhost, name)).copied()
    }

    /// Every quorum queue with its placement, ordered.
    pub fn placements(&self) -> impl Iterator<Item = (&Key, &Placement)> {
        self.placements.iter()
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
    /// `Err` when it is refused.
    fn apply_op(&mut self, index: u64, origin: u64, op: &DefOp) -> Result<bool, String> {
        match op {
            DefOp::PutExchange(x) => match self.exchanges.get(&key(&x.vhost, &x.name)) {
                Some(current) if current == x => Ok(false),
                Some(_) => Err(format!(
                    "exchange '{}' in vhost '{}' was declared meanwhile with other properties",
                    x.name, x.vhost
                )),
                None => {
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
                    if is_quorum(q) {
                        self.placements.insert(key(&q.vhost, &q.name), Placement { group: index, origin });
                    }
                    self.queues.insert(key(&q.vhost, &q.name), q.clone());
                    Ok(true)
                }
            },
            DefOp::DelQueue { vhost, name } => {
                if self.queues.remove(&key(vhost, name)).is_none() {
                    return Ok(false);
                }
                self.placements.remove(&key(vhost, name));
                self.bindings.retain(|_, b| b.vhost != *vhost || !b.destination_is_queue || b.destination != *name);
                Ok(true)
            }
            DefOp::PutBinding(b) => {
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
        }
    }

    /// Applies the command at log `index`; deterministic.
    pub fn apply(&mut self, index: u64, command: &MetaCommand) -> MetaOutput {
        match command {
            MetaCommand::Topology { origin, ops } => {
                let mut out = MetaOutput { origin: *origin, applied: Vec::new(), refused: Vec::new(), barrier: None };
                for op in ops {
                    match self.apply_op(index, *origin, op) {
                        Ok(true) => out.applied.push(op.clone()),
                        Ok(false) => {}
                        Err(why) => out.refused.push((op.clone(), why)),
                    }
                }
                out
            }
            MetaCommand::Barrier { origin, nonce } => {
                MetaOutput { origin: *origin, applied: Vec::new(), refused: Vec::new(), barrier: Some(*nonce) }
            }
        }
    }
}

const TOPOLOGY_TAG: u8 = 1;
const BARRIER_TAG: u8 = 2;

fn invalid(why: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why.into())
}

impl MetaCommand {
    /// The command's bytes: a tag, the origin (u64, big-endian), the number of changes (u32),
    /// then each change as a definitions journal record (length, CRC, field table).
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            MetaCommand::Topology { origin, ops } => {
                out.push(TOPOLOGY_TAG);
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
        if tag != TOPOLOGY_TAG {
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
        Ok(MetaCommand::Topology { origin, ops })
    }
}

impl warren_raft::Machine for Metadata {
    type Command = MetaCommand;
    type Output = MetaOutput;

    fn apply(&mut self, index: u64, command: &MetaCommand) -> MetaOutput {
        Metadata::apply(self, index, command)
    }

    /// The topology in the definitions snapshot format (length first), then each placement:
    /// vhost and name (u16 length, bytes), group and origin (u64), big-endian.
    fn snapshot(&self) -> Vec<u8> {
        let defs = self.topology().encode();
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
        out
    }

    fn restore(&mut self, bytes: &[u8]) -> io::Result<()> {
        let cut = || invalid("a metadata snapshot cut short");
        let len = u32::from_be_bytes(bytes.get(..4).ok_or_else(cut)?.try_into().expect("4 bytes")) as usize;
        let defs = bytes.get(4..4 + len).ok_or_else(cut)?;
        let defs = Definitions::decode(Bytes::copy_from_slice(defs)).map_err(invalid)?;
        let mut restored = Metadata::from_topology(&defs);
        let mut at = &bytes[4 + len..];
        while !at.is_empty() {
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

    #[test]
    fn declarations_take_effect_once_and_conflicts_are_refused() {
        let mut m = Metadata::default();
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
        let mut m = Metadata::default();
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

        let mut m = Metadata::default();
        m.apply(70, &topo(1, vec![DefOp::PutExchange(exchange("x", "topic")), DefOp::PutQueue(queue("q"))]));
        m.apply(80, &topo(1, vec![DefOp::PutBinding(binding("x", "q", "a.*"))]));
        let snap = warren_raft::Machine::snapshot(&m);
        let mut back = Metadata::default();
        warren_raft::Machine::restore(&mut back, &snap).expect("restore");
        assert_eq!(back, m);
        assert!(warren_raft::Machine::restore(&mut back, &snap[..snap.len() - 1]).is_err());
    }

    #[test]
    fn a_quorum_queue_is_placed_by_the_declaration_that_made_it() {
        let mut quorum = queue("qq");
        quorum.arguments.insert("x-queue-type", warren_amqp::FieldValue::from("quorum"));
        let mut m = Metadata::default();
        m.apply(5, &topo(7, vec![DefOp::PutQueue(quorum.clone()), DefOp::PutQueue(queue("classic"))]));
        assert_eq!(m.placement("/", "qq"), Some(Placement { group: 5, origin: 7 }));
        assert_eq!(m.placement("/", "classic"), None);
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
        m.apply(12, &topo(8, vec![DefOp::PutQueue(quorum)]));
        assert_eq!(m.placement("/", "qq"), Some(Placement { group: 12, origin: 8 }));
    }
}
