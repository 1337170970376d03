//! What a run records: every publish and how it was settled, every delivery, every fault with
//! its window, every metadata operation. The workload tasks append to one [`History`] behind a
//! lock; the checker reads it once the run is over.

use serde::Serialize;

/// How a publish ended, as its publisher saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Sent, no answer yet (every publish still pending when the run ends becomes `Unknown`).
    Pending,
    /// basic.ack from the broker: the broker promised to keep it.
    Acked,
    /// basic.nack: the broker refused it, it may or may not come out.
    Nacked,
    /// The connection was lost, or the confirm did not come in time: it may or may not come out.
    Unknown,
}

/// One publish. Its id is its index in [`History::publishes`].
#[derive(Clone, Debug)]
pub struct Publish {
    /// The node whose connection carried it.
    pub node: usize,
    /// When it was handed to the client library (µs since the run started). Ids are given out
    /// under the history's lock with this time, so it never decreases with the id.
    pub sent_us: u64,
    pub outcome: Outcome,
    /// When the outcome was known.
    pub settled_us: Option<u64>,
}

/// One delivery to a consumer (or a basic.get in the final sweep).
#[derive(Clone, Debug)]
pub struct Delivery {
    /// The publish id read from the body, if the body is one of this run's.
    pub id: Option<u64>,
    /// The body (cut short) when it was not one of this run's.
    pub foreign: Option<String>,
    pub node: usize,
    pub at_us: u64,
    pub redelivered: bool,
}

/// The kinds of fault the schedule injects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// SIGKILL a node, restart it on its data directory at the heal.
    Kill,
    /// SIGSTOP a node, SIGCONT at the heal.
    Pause,
    /// Split the nodes in two halves, both directions cut.
    Halves,
    /// Cut one node off from every other, both directions.
    Isolate,
    /// Cut one direction only between one node and every other.
    OneWay,
    /// Fill the file system that holds a node's replicated data (its WAL and snapshots: a
    /// tmpfs of its own), so that its writes fail; at the heal, free it and restart the node
    /// (a failed WAL write stops a node's Raft side until the process restarts). Not in
    /// `ALL`: asked for by name (it needs root, to mount the file systems).
    Disk,
    /// SIGKILL a node and take it out of the cluster (`forget_cluster_node` through another
    /// node, as for a machine gone for good); at the heal, start it on an emptied data
    /// directory (its cookie and configuration kept), so that it joins again, and grow every
    /// quorum queue back onto it. Not in `ALL`: asked for by name.
    Replace,
}

impl FaultKind {
    pub const ALL: [FaultKind; 5] =
        [FaultKind::Kill, FaultKind::Pause, FaultKind::Halves, FaultKind::Isolate, FaultKind::OneWay];

    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Kill => "kill",
            FaultKind::Pause => "pause",
            FaultKind::Halves => "halves",
            FaultKind::Isolate => "isolate",
            FaultKind::OneWay => "oneway",
            FaultKind::Disk => "disk",
            FaultKind::Replace => "replace",
        }
    }

    pub fn parse(s: &str) -> Option<FaultKind> {
        FaultKind::ALL.into_iter().chain([FaultKind::Disk, FaultKind::Replace]).find(|k| k.name() == s)
    }

    /// A network partition (needs the namespaces).
    pub fn is_network(self) -> bool {
        matches!(self, FaultKind::Halves | FaultKind::Isolate | FaultKind::OneWay)
    }
}

/// One injected fault.
#[derive(Clone, Debug, Serialize)]
pub struct Fault {
    pub kind: FaultKind,
    /// The nodes it hit: killed, paused, or cut off (for a partition, the nodes on a side that
    /// holds no majority; for a one-way cut, the node on its own side).
    pub targets: Vec<usize>,
    /// Every node on a side without a majority while it lasts (they cannot commit).
    pub cut_off: Vec<usize>,
    /// The queue's leader when the fault was chosen, if the management API said.
    pub leader: Option<usize>,
    /// When the fault was in place (µs since the run started).
    pub start_us: u64,
    /// When healing began (the time is taken before the heal, so a confirm before it was
    /// given while the fault held).
    pub end_us: Option<u64>,
    /// Human description (which direction was cut, and so on).
    pub note: String,
}

impl Fault {
    /// Whether the fault hit the leader: `None` when the leader was not known.
    pub fn hit_leader(&self) -> Option<bool> {
        self.leader.map(|l| self.targets.contains(&l))
    }
}

/// Metadata operations of the metadata workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Hash, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum MetaKind {
    DeclareQueue,
    DeleteQueue,
    DeclareExchange,
    DeleteExchange,
}

impl MetaKind {
    /// What the operation is about: `("queue", true)` for a declare of a queue.
    pub fn entity(self) -> Entity {
        match self {
            MetaKind::DeclareQueue | MetaKind::DeleteQueue => Entity::Queue,
            MetaKind::DeclareExchange | MetaKind::DeleteExchange => Entity::Exchange,
        }
    }

    /// Whether the object exists after the operation took effect.
    pub fn leaves_present(self) -> bool {
        matches!(self, MetaKind::DeclareQueue | MetaKind::DeclareExchange)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Entity {
    Queue,
    Exchange,
}

/// One metadata operation through one node.
#[derive(Clone, Debug)]
pub struct MetaOp {
    pub node: usize,
    pub kind: MetaKind,
    pub name: String,
    pub invoke_us: u64,
    /// When the broker's ok came back; `None` when it did not (an error, a lost connection, a
    /// timeout: the operation may or may not have taken effect).
    pub ok_us: Option<u64>,
}

/// Everything a run recorded.
#[derive(Default, Debug)]
pub struct History {
    pub publishes: Vec<Publish>,
    pub deliveries: Vec<Delivery>,
    pub faults: Vec<Fault>,
    pub meta_ops: Vec<MetaOp>,
}

impl History {
    /// A new publish through `node` at `now_us`; its id.
    pub fn begin_publish(&mut self, node: usize, now_us: u64) -> u64 {
        // Keep sent_us nondecreasing with the id even if callers' clocks were read out of order.
        let sent_us = self.publishes.last().map_or(now_us, |p| p.sent_us.max(now_us));
        self.publishes.push(Publish { node, sent_us, outcome: Outcome::Pending, settled_us: None });
        (self.publishes.len() - 1) as u64
    }

    /// Settles publish `id` (the first outcome stands: a late confirm after a timeout is ignored).
    pub fn settle(&mut self, id: u64, outcome: Outcome, now_us: u64) {
        if let Some(p) = self.publishes.get_mut(id as usize) {
            if p.outcome == Outcome::Pending {
                p.outcome = outcome;
                p.settled_us = Some(now_us);
            }
        }
    }

    /// Every publish still pending becomes unknown (at the end of the run).
    pub fn settle_pending(&mut self, now_us: u64) {
        for p in &mut self.publishes {
            if p.outcome == Outcome::Pending {
                p.outcome = Outcome::Unknown;
                p.settled_us = Some(now_us);
            }
        }
    }
}

/// The body of publish `id` in run `run`.
pub fn body(run: &str, id: u64) -> String {
    format!("{run}:{id}")
}

/// The publish id in a body, if the body is one of run `run`'s.
pub fn parse_body(run: &str, body: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(body).ok()?;
    let (r, id) = text.split_once(':')?;
    if r != run {
        return None;
    }
    id.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_round_trip_and_foreign_ones_are_not_ours() {
        assert_eq!(parse_body("r1", body("r1", 42).as_bytes()), Some(42));
        assert_eq!(parse_body("r2", body("r1", 42).as_bytes()), None);
        assert_eq!(parse_body("r1", b"r1:x"), None);
        assert_eq!(parse_body("r1", b"\xff"), None);
    }

    #[test]
    fn the_first_outcome_stands_and_pending_becomes_unknown() {
        let mut h = History::default();
        let a = h.begin_publish(0, 10);
        let b = h.begin_publish(1, 5);
        assert_eq!(h.publishes[b as usize].sent_us, 10, "sent times never decrease with the id");
        h.settle(a, Outcome::Unknown, 20);
        h.settle(a, Outcome::Acked, 30);
        assert_eq!(h.publishes[a as usize].outcome, Outcome::Unknown);
        h.settle_pending(40);
        assert_eq!(h.publishes[b as usize].outcome, Outcome::Unknown);
        assert_eq!(h.publishes[b as usize].settled_us, Some(40));
    }
}
