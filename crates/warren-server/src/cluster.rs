//! What the management side (the HTTP API, metrics, the AMQP handshake's server properties)
//! knows of the cluster this node is in: its name, this node's name, and which nodes there are
//! and are running. The binary sets it ([`Shared::set_cluster_view`](crate::Shared)); a server
//! without one is a node on its own named [`DEFAULT_NODE_NAME`].

use std::sync::{Arc, LazyLock};

/// The node name of a server told nothing else (the binary's default too).
pub const DEFAULT_NODE_NAME: &str = "warren@localhost";

/// One node of the cluster, as the management API lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeView {
    /// `name@host`.
    pub name: String,
    /// This node always; another while this node holds a connection to it.
    pub running: bool,
    /// Whether it is this node.
    pub is_self: bool,
}

/// A quorum queue's group as this node sees it (RabbitMQ's `leader`, `members`, `online`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaView {
    /// The leader this node knows of, by node name.
    pub leader: Option<String>,
    /// The group's voters, by node name, sorted.
    pub members: Vec<String>,
    /// The members running as far as this node knows (itself, and those it is connected to).
    pub online: Vec<String>,
}

/// The Raft state of this node's member of a quorum queue's group, for `/metrics`
/// (RabbitMQ's `rabbitmq_raft_*` families).
#[derive(Clone, Debug, PartialEq)]
pub struct RaftMetrics {
    pub vhost: String,
    pub queue: String,
    /// The member's current term.
    pub term: u64,
    /// The last index covered by its latest snapshot.
    pub snapshot_index: u64,
    /// The last index applied to its machine.
    pub last_applied_index: u64,
    /// The last index it knows committed.
    pub commit_index: u64,
    /// The last index in its log.
    pub last_written_index: u64,
    /// How long this node's latest batch took to commit, in seconds.
    pub commit_latency_seconds: f64,
}

/// What an operator's change of a quorum queue's members comes to.
pub type MembersFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, MembersError>> + Send>>;

/// Why a change of a quorum queue's members was refused or failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MembersError {
    /// The queue is not a quorum queue (or there is no such queue).
    NotQuorum,
    /// The request makes no sense as asked (an unknown node, a member added twice, the last
    /// member taken out), with why.
    Refused(String),
    /// The cluster could not record the change (no majority of the metadata group), with why.
    Unavailable(String),
}

/// Which queues a change of many queues' members touches, by vhost and name.
pub type QueueSelector = Arc<dyn Fn(&str, &str) -> bool + Send + Sync>;

/// The outcome of a change of many queues' members (`grow`, `shrink`): each queue touched,
/// by vhost and name, with its member count after the change or why it was not made.
pub type MembersOutcome = Vec<(String, String, Result<usize, String>)>;

/// The cluster as this node sees it.
pub trait ClusterView: Send + Sync {
    /// `cluster_name` (by default the name of the node).
    fn cluster_name(&self) -> String;
    /// This node's name, `name@host`.
    fn node_name(&self) -> String;
    /// Every node of the cluster, this one included, sorted by name.
    fn nodes(&self) -> Vec<NodeView>;
    /// The group of quorum queue `name` in `vhost`, if this node is one of its members.
    fn replica(&self, _vhost: &str, _name: &str) -> Option<ReplicaView> {
        None
    }
    /// The node classic queue `name` in `vhost` lives on, in a cluster (RabbitMQ's queue
    /// `node`): the one its declaration came through.
    fn home(&self, _vhost: &str, _name: &str) -> Option<String> {
        None
    }
    /// The Raft state of every quorum queue group this node is a member of.
    fn raft_metrics(&self) -> Vec<RaftMetrics> {
        Vec::new()
    }
    /// Adds a member on `node` to quorum queue `name` in `vhost` (`add: true`, RabbitMQ's
    /// `add_member`), or takes the one there out (`delete_member`). Done once the cluster
    /// recorded it; the group's leader then changes the group.
    fn change_member(&self, _vhost: &str, _name: &str, _node: &str, _add: bool) -> MembersFuture<()> {
        Box::pin(std::future::ready(Err(MembersError::NotQuorum)))
    }
    /// Adds a member on `node` to every quorum queue that `select` picks (by vhost and name)
    /// and that has none there (`grow`; `even_only`: only those with an even number of
    /// members), or takes out the member on `node` of every queue `select` picks (`shrink`,
    /// `grow: false`) but a queue's last.
    fn change_members_on(
        &self,
        _node: &str,
        _grow: bool,
        _even_only: bool,
        _select: QueueSelector,
    ) -> MembersFuture<MembersOutcome> {
        Box::pin(std::future::ready(Err(MembersError::Refused("this node is not in a cluster".into()))))
    }
    /// Takes `node`, stopped, out of the cluster (RabbitMQ's `forget_cluster_node`): its
    /// classic queues go, quorum queues and the metadata group drop their members on it, and
    /// the other nodes refuse it from then on. Refused for this node, a running node or one
    /// not in the cluster ([`MembersError::NotQuorum`] for the last: there is no such node).
    fn forget_node(&self, _node: &str) -> MembersFuture<()> {
        Box::pin(std::future::ready(Err(MembersError::Refused("this node is not in a cluster".into()))))
    }
}

/// A node on its own: the cluster is the node, named after it.
#[derive(Clone, Debug)]
pub struct SingleNode {
    pub cluster_name: String,
    pub node_name: String,
}

impl SingleNode {
    /// Node `node_name`, in a cluster named after it.
    pub fn new(node_name: impl Into<String>) -> Self {
        let node_name = node_name.into();
        SingleNode { cluster_name: node_name.clone(), node_name }
    }
}

impl ClusterView for SingleNode {
    fn cluster_name(&self) -> String {
        self.cluster_name.clone()
    }

    fn node_name(&self) -> String {
        self.node_name.clone()
    }

    fn nodes(&self) -> Vec<NodeView> {
        vec![NodeView { name: self.node_name.clone(), running: true, is_self: true }]
    }
}

/// The view of a server that was given none.
pub(crate) fn default_view() -> Arc<dyn ClusterView> {
    static DEFAULT: LazyLock<Arc<dyn ClusterView>> = LazyLock::new(|| Arc::new(SingleNode::new(DEFAULT_NODE_NAME)));
    Arc::clone(&DEFAULT)
}
