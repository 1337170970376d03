//! A three-node cluster on a `LocalNet` replicating an append-only list, for the integration tests.

#![allow(dead_code)] // each test binary uses its own part of this module

use std::collections::BTreeMap;
use std::io;
use std::time::Duration;

use warren_raft::{Applied, AppliedRx, Group, GroupConfig, LocalNet, Machine, ProposeError};

/// Long enough for any election or catch-up here; tests finish far sooner when all is well.
pub const WAIT: Duration = Duration::from_secs(5);

/// Leader changes a proposal may chase before the test gives up.
const PROPOSE_ATTEMPTS: usize = 10;

/// An append-only list of numbers. Each output is a digest of the whole list after the append,
/// so two nodes produce the same outputs only if they applied the same commands in the same order.
#[derive(Debug, Default)]
pub struct List {
    pub values: Vec<u64>,
    pub digest: u64,
}

fn fold(digest: u64, value: u64) -> u64 {
    digest.wrapping_mul(1_000_003).wrapping_add(value)
}

impl Machine for List {
    type Command = u64;
    type Output = u64;

    fn apply(&mut self, _index: u64, value: &u64) -> u64 {
        self.values.push(*value);
        self.digest = fold(self.digest, *value);
        self.digest
    }

    fn snapshot(&self) -> Vec<u8> {
        self.values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    fn restore(&mut self, bytes: &[u8]) -> io::Result<()> {
        let chunks = bytes.chunks_exact(8);
        if !chunks.remainder().is_empty() {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "snapshot length is not a multiple of 8"));
        }
        let values: Vec<u64> = chunks.map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes"))).collect();
        self.digest = values.iter().fold(0, |d, v| fold(d, *v));
        self.values = values;
        Ok(())
    }

    fn encode_command(value: &u64, out: &mut Vec<u8>) {
        out.extend_from_slice(&value.to_be_bytes());
    }

    fn decode_command(bytes: &[u8]) -> io::Result<u64> {
        let bytes: [u8; 8] =
            bytes.try_into().map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "a command is 8 bytes"))?;
        Ok(u64::from_be_bytes(bytes))
    }
}

/// Timeouts short enough for tests: heartbeat 50 ms, election 150-300 ms.
pub fn fast_config() -> GroupConfig {
    GroupConfig {
        heartbeat_ms: 50,
        election_timeout_min_ms: 150,
        election_timeout_max_ms: 300,
        ..GroupConfig::default()
    }
}

pub struct Cluster {
    pub net: LocalNet<List>,
    pub config: GroupConfig,
    pub applied: BTreeMap<u64, AppliedRx<u64>>,
}

impl Cluster {
    /// Nodes 1, 2 and 3, initialized from node 1, once every node knows the same leader.
    pub async fn start(config: GroupConfig) -> Cluster {
        let net = LocalNet::new();
        let mut cluster = Cluster { net, config, applied: BTreeMap::new() };
        for id in 1..=3 {
            cluster.add_node(id).await;
        }
        let members = (1..=3).map(|id| (id, format!("local-{id}"))).collect();
        cluster.group(1).initialize(members).await.expect("initialize");
        let leader = cluster.group(1).wait_for_leader(WAIT).await.expect("a leader");
        cluster.wait_all_know_leader(&[1, 2, 3], leader).await;
        cluster
    }

    /// Nodes 1, 2 and 3 on durable logs (`dir/node-<id>.log`), initialized from node 1.
    pub async fn start_durable(config: GroupConfig, dir: &std::path::Path) -> Cluster {
        let net = LocalNet::new();
        let mut cluster = Cluster { net, config, applied: BTreeMap::new() };
        for id in 1..=3 {
            cluster.start_from_file(id, dir).await;
        }
        let members = (1..=3).map(|id| (id, format!("local-{id}"))).collect();
        cluster.group(1).initialize(members).await.expect("initialize");
        cluster.group(1).wait_for_leader(WAIT).await.expect("a leader");
        cluster
    }

    /// Starts node `id` with a fresh machine on the durable log and snapshot it keeps in `dir`
    /// (which may hold what an earlier run of it wrote), and registers it on the network.
    pub async fn start_from_file(&mut self, id: u64, dir: &std::path::Path) -> Group<List> {
        let log = warren_raft::FileLog::open(&dir.join(format!("node-{id}.log"))).expect("open the log");
        let snapshot = dir.join(format!("node-{id}.snapshot"));
        let (group, applied) =
            Group::start_durable(id, &self.config, List::default(), self.net.transport(id), log, snapshot)
                .await
                .expect("start");
        self.net.register(group.clone());
        self.applied.insert(id, applied);
        group
    }

    /// Stops node `id` as a crash would leave it: its group shut down and off the network.
    pub async fn stop(&mut self, id: u64) {
        let group = self.net.unregister(id).expect("registered node");
        group.shutdown().await.expect("clean shutdown");
        self.applied.remove(&id);
    }

    /// Starts node `id` on the network, not yet a member.
    pub async fn add_node(&mut self, id: u64) -> Group<List> {
        let (group, applied) = self.net.start(id, &self.config, List::default()).await.expect("start");
        self.applied.insert(id, applied);
        group
    }

    pub fn group(&self, id: u64) -> Group<List> {
        self.net.group(id).expect("registered node")
    }

    pub fn leader(&self) -> u64 {
        self.group(1).leader().expect("a known leader")
    }

    /// Proposes `value` to whichever node leads, following "not leader" answers as a host would:
    /// leadership may move, e.g. when a node that was cut off returns with a higher term (openraft
    /// 0.9 has no pre-vote) and unseats the leader.
    pub async fn propose(&self, value: u64) -> (u64, u64) {
        let mut target = self.leader();
        for _ in 0..PROPOSE_ATTEMPTS {
            match self.group(target).propose(value).await {
                Ok(done) => return done,
                Err(ProposeError::NotLeader { leader: Some(next) }) => target = next,
                Err(ProposeError::NotLeader { leader: None }) => {
                    target = self.group(target).wait_for_leader(WAIT).await.expect("a new leader");
                }
                Err(e) => panic!("proposal failed: {e}"),
            }
        }
        panic!("no leader accepted {value} in {PROPOSE_ATTEMPTS} attempts");
    }

    pub async fn wait_all_know_leader(&self, ids: &[u64], leader: u64) {
        for id in ids {
            self.group(*id)
                .wait_until(WAIT, "the same leader", |s| s.leader == Some(leader))
                .await
                .expect("node agrees on the leader");
        }
    }

    pub async fn wait_applied(&self, ids: &[u64], index: u64) {
        for id in ids {
            self.group(*id).wait_for_applied(index, WAIT).await.expect("applied");
        }
    }

    /// Everything on node `id`'s applied stream so far.
    pub fn drain(&mut self, id: u64) -> Vec<Applied<u64>> {
        let rx = self.applied.get_mut(&id).expect("node's applied stream");
        let mut events = Vec::new();
        while let Ok(event) = rx.try_recv() {
            events.push(event);
        }
        events
    }

    /// (values, digest) of node `id`'s machine.
    pub fn state(&self, id: u64) -> (Vec<u64>, u64) {
        self.group(id).with_machine(|m| (m.values.clone(), m.digest))
    }

    pub async fn shutdown(&self, ids: &[u64]) {
        for id in ids {
            self.group(*id).shutdown().await.expect("clean shutdown");
        }
    }
}

/// The (index, output) pairs of the commands among `events`.
pub fn commands(events: &[Applied<u64>]) -> Vec<(u64, u64)> {
    events
        .iter()
        .filter_map(|e| match e {
            Applied::Command { index, output } => Some((*index, *output)),
            Applied::Restored { .. } => None,
        })
        .collect()
}
