//! warren-cluster: what makes several Warren nodes one broker (issue 15, docs/clustering.md).
//!
//! So far: a quorum queue replicated by a Raft group ([`ReplicatedQueue`]): the queue's state
//! machine (`warren_core::quorum::QuorumQueue`) applied on every member from the same log, its
//! snapshots the queue's own. To come, in this crate: the node-to-node transport, the metadata
//! group, and the hosts that turn a queue's effects into deliveries on the leader.

pub mod forward;
pub mod host;
pub mod membership;
pub mod meta;

pub mod node;
pub mod queues;

pub use node::{ClusterSettings, NodeName, PortRange};

use std::io;
use warren_core::quorum::{Output, QuorumConfig, QuorumQueue, Stamped};

/// A quorum queue as a Raft group replicates it: commands stamped with the leader's clock go in
/// the log; every member applies them to its own [`QuorumQueue`].
#[derive(Debug, Clone, Default)]
pub struct ReplicatedQueue {
    queue: QuorumQueue,
}

impl ReplicatedQueue {
    pub fn new(config: QuorumConfig) -> Self {
        ReplicatedQueue { queue: QuorumQueue::new(config) }
    }

    /// The queue as this member holds it.
    pub fn queue(&self) -> &QuorumQueue {
        &self.queue
    }
}

impl warren_raft::Machine for ReplicatedQueue {
    type Command = Stamped;
    type Output = Output;

    fn apply(&mut self, index: u64, command: &Stamped) -> Output {
        self.queue.apply(index, command)
    }

    fn snapshot(&self) -> Vec<u8> {
        self.queue.snapshot()
    }

    fn restore(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.queue = QuorumQueue::restore(bytes)?;
        Ok(())
    }

    fn encode_command(command: &Stamped, out: &mut Vec<u8>) {
        command.encode(out);
    }

    fn decode_command(bytes: &[u8]) -> io::Result<Stamped> {
        Stamped::decode(bytes)
    }
}
