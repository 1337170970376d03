//! The network seam: [`Transport`], through which a group sends its RPCs, and the adapter that
//! plugs a transport into openraft.
//!
//! A transport only carries messages. openraft bounds each append and vote RPC with its own
//! timeout (the heartbeat interval) and backs off from a peer that returned
//! [`RpcError::Unreachable`]; the adapter bounds a snapshot transfer by the group's
//! `snapshot_timeout_ms`. Each bound is passed to the transport as the RPC's `timeout`, so that
//! it gives up (and frees what the RPC holds) no later than openraft does. On the receiving node
//! the transport hands each request to that node's [`Group`](crate::Group) (`handle_append`,
//! `handle_vote`, `handle_snapshot`).

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{NetworkError, RPCError, RaftError, ReplicationClosed, StreamingError, Timeout, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::{BasicNode, OptionalSend, RPCTypes};

use crate::types::{AppendRequest, AppendResponse, Snapshot, SnapshotResponse, Types, Vote, VoteRequest, VoteResponse};
use crate::Machine;

/// The node an RPC goes to: its id and the address it was added to the cluster with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    /// The node id.
    pub id: u64,
    /// The address given for it in [`Group::initialize`](crate::Group::initialize) or
    /// [`Group::add_learner`](crate::Group::add_learner); opaque to this crate.
    pub addr: String,
}

/// Why an RPC got no answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RpcError {
    /// The peer cannot be reached now (down, partitioned, stopped, refusing connections); the
    /// group waits a while before trying it again.
    Unreachable {
        /// What happened.
        reason: String,
    },
    /// The message was lost in a way worth retrying at once (a dropped connection, say).
    Network {
        /// What happened.
        reason: String,
    },
    /// No answer came within the RPC's timeout; the request may or may not have taken effect.
    Timeout {
        /// The timeout that passed.
        after: Duration,
    },
}

impl fmt::Display for RpcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RpcError::Unreachable { reason } => write!(f, "peer unreachable: {reason}"),
            RpcError::Network { reason } => write!(f, "network error: {reason}"),
            RpcError::Timeout { after } => write!(f, "no answer within {after:?}"),
        }
    }
}

impl std::error::Error for RpcError {}

/// Carries one node's RPCs to its peers, for a group replicating `M`.
///
/// One transport serves one node (it knows which node it sends from); openraft calls it from
/// several tasks at once. Each method delivers the request to `target` and returns its answer,
/// or fails no later than `timeout` after it was called (openraft drops the call then anyway;
/// a transport that knows the bound can stop waiting and release the request's resources).
pub trait Transport<M: Machine>: Send + Sync + 'static {
    /// Sends a leader's append-entries request (also its heartbeat).
    fn append(
        &self,
        target: &Peer,
        request: AppendRequest<M>,
        timeout: Duration,
    ) -> impl Future<Output = Result<AppendResponse, RpcError>> + Send;

    /// Sends a candidate's vote request.
    fn vote(
        &self,
        target: &Peer,
        request: VoteRequest,
        timeout: Duration,
    ) -> impl Future<Output = Result<VoteResponse, RpcError>> + Send;

    /// Sends a whole snapshot from the leader whose term and id are `vote`. `timeout` bounds
    /// each step: a transport that sends a snapshot in parts allows each part that long, and
    /// the install as long again.
    fn snapshot(
        &self,
        target: &Peer,
        vote: Vote,
        snapshot: Snapshot<M>,
        timeout: Duration,
    ) -> impl Future<Output = Result<SnapshotResponse, RpcError>> + Send;
}

/// openraft's network factory over a [`Transport`]: one client per peer, sharing the transport.
pub(crate) struct NetworkFactory<M, T> {
    transport: Arc<T>,
    _machine: PhantomData<fn() -> M>,
}

impl<M, T> NetworkFactory<M, T> {
    pub(crate) fn new(transport: T) -> Self {
        NetworkFactory { transport: Arc::new(transport), _machine: PhantomData }
    }
}

impl<M: Machine, T: Transport<M>> RaftNetworkFactory<Types<M>> for NetworkFactory<M, T> {
    type Network = PeerClient<M, T>;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> Self::Network {
        PeerClient {
            transport: Arc::clone(&self.transport),
            peer: Peer { id: target, addr: node.addr.clone() },
            _machine: PhantomData,
        }
    }
}

/// openraft's connection to one peer.
pub(crate) struct PeerClient<M, T> {
    transport: Arc<T>,
    peer: Peer,
    _machine: PhantomData<fn() -> M>,
}

/// openraft's error for a failed `action` RPC from node `from` to node `to`, whose remote error
/// type is `E`.
fn rpc_error<E: std::error::Error>(err: RpcError, action: RPCTypes, from: u64, to: u64) -> RPCError<u64, BasicNode, E> {
    match err {
        RpcError::Unreachable { .. } => RPCError::Unreachable(Unreachable::new(&err)),
        RpcError::Network { .. } => RPCError::Network(NetworkError::new(&err)),
        RpcError::Timeout { after } => RPCError::Timeout(Timeout { action, id: from, target: to, timeout: after }),
    }
}

impl<M: Machine, T: Transport<M>> RaftNetwork<Types<M>> for PeerClient<M, T> {
    async fn append_entries(
        &mut self,
        request: AppendRequest<M>,
        option: RPCOption,
    ) -> Result<AppendResponse, RPCError<u64, BasicNode, RaftError<u64>>> {
        let leader = request.vote.leader_id().voted_for().unwrap_or_default();
        let sent = self.transport.append(&self.peer, request, option.hard_ttl()).await;
        sent.map_err(|e| rpc_error(e, RPCTypes::AppendEntries, leader, self.peer.id))
    }

    async fn vote(
        &mut self,
        request: VoteRequest,
        option: RPCOption,
    ) -> Result<VoteResponse, RPCError<u64, BasicNode, RaftError<u64>>> {
        let candidate = request.vote.leader_id().voted_for().unwrap_or_default();
        let sent = self.transport.vote(&self.peer, request, option.hard_ttl()).await;
        sent.map_err(|e| rpc_error(e, RPCTypes::Vote, candidate, self.peer.id))
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot<M>,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse, StreamingError<Types<M>, openraft::error::Fatal<u64>>> {
        let ttl = option.hard_ttl();
        // No bound on the whole transfer (a snapshot's size has none): the transport bounds
        // each of its parts and the install by `ttl`, and `cancel` ends one openraft drops.
        let send = self.transport.snapshot(&self.peer, vote, snapshot, ttl);
        let timeout = || {
            StreamingError::Timeout(Timeout {
                action: RPCTypes::InstallSnapshot,
                id: vote.leader_id().voted_for().unwrap_or_default(),
                target: self.peer.id,
                timeout: ttl,
            })
        };
        tokio::select! {
            closed = cancel => Err(StreamingError::Closed(closed)),
            sent = send => match sent {
                Ok(response) => Ok(response),
                Err(err @ RpcError::Unreachable { .. }) => Err(StreamingError::Unreachable(Unreachable::new(&err))),
                Err(err @ RpcError::Network { .. }) => Err(StreamingError::Network(NetworkError::new(&err))),
                Err(RpcError::Timeout { .. }) => Err(timeout()),
            },
        }
    }
}
