//! The errors of this crate's API, one enum per kind of call, free of openraft's types.
//!
//! openraft's errors are generic over node types and change between releases; they are turned
//! into these at the edge of [`Group`](crate::Group), keeping their text as the reason.

use std::fmt;
use std::time::Duration;

use openraft::error::{ClientWriteError, InitializeError, RaftError};
use openraft::BasicNode;

/// The group is not running: it was shut down, or stopped itself after a fatal error (a storage
/// failure, a panic in its core task).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stopped {
    /// What stopped it, as openraft described it.
    pub reason: String,
}

/// Why a group could not start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StartError {
    /// The [`GroupConfig`](crate::GroupConfig) is not usable.
    Config {
        /// What is wrong with it.
        reason: String,
    },
    /// Reading the initial state from the log store or the state machine failed.
    Storage {
        /// The storage error.
        reason: String,
    },
}

/// Why a proposal was not committed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProposeError {
    /// This node is not the leader; propose to `leader` instead, if it is known.
    NotLeader {
        /// The leader this node knows of, if any.
        leader: Option<u64>,
    },
    /// The group is not running.
    Stopped(Stopped),
}

/// Why a cluster administration call (initialize, add a learner, change membership) failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AdminError {
    /// This node is not the leader; ask `leader` instead, if it is known.
    NotLeader {
        /// The leader this node knows of, if any.
        leader: Option<u64>,
    },
    /// The request does not fit the group's state: it is already initialized, this node is not
    /// among the initial members, another membership change is in progress, a new voter is not
    /// yet a learner, or the new membership is empty.
    Rejected {
        /// openraft's description.
        reason: String,
    },
    /// The group is not running.
    Stopped(Stopped),
}

/// Why waiting on a group's status ended without the condition holding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WaitError {
    /// The condition did not hold within `after`.
    Timeout {
        /// How long was waited.
        after: Duration,
        /// What was waited for.
        what: String,
    },
    /// The group stopped while waiting.
    Stopped,
}

/// Why a group could not be registered with a [`TcpNode`](crate::TcpNode).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegisterError {
    /// Another group is registered under this group id.
    Taken {
        /// The group id.
        group: u64,
    },
    /// The group's member is not this endpoint's node.
    WrongNode {
        /// The group id.
        group: u64,
        /// The node id the group's member runs as.
        member: u64,
        /// The endpoint's node id.
        endpoint: u64,
    },
    /// The endpoint has been shut down.
    Stopped,
}

impl fmt::Display for RegisterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RegisterError::Taken { group } => write!(f, "group {group} is already registered on this node"),
            RegisterError::WrongNode { group, member, endpoint } => {
                write!(f, "group {group}'s member is node {member}, but this endpoint is node {endpoint}")
            }
            RegisterError::Stopped => f.write_str("the node's endpoint has been shut down"),
        }
    }
}

impl std::error::Error for RegisterError {}

impl fmt::Display for Stopped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "raft group stopped: {}", self.reason)
    }
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::Config { reason } => write!(f, "bad raft group config: {reason}"),
            StartError::Storage { reason } => write!(f, "raft group storage failed: {reason}"),
        }
    }
}

impl fmt::Display for ProposeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProposeError::NotLeader { leader } => write_not_leader(f, *leader),
            ProposeError::Stopped(stopped) => stopped.fmt(f),
        }
    }
}

impl fmt::Display for AdminError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AdminError::NotLeader { leader } => write_not_leader(f, *leader),
            AdminError::Rejected { reason } => write!(f, "rejected: {reason}"),
            AdminError::Stopped(stopped) => stopped.fmt(f),
        }
    }
}

impl fmt::Display for WaitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WaitError::Timeout { after, what } => write!(f, "timed out after {after:?} waiting for {what}"),
            WaitError::Stopped => f.write_str("raft group stopped while waiting"),
        }
    }
}

fn write_not_leader(f: &mut fmt::Formatter<'_>, leader: Option<u64>) -> fmt::Result {
    match leader {
        Some(id) => write!(f, "not the leader; the leader is node {id}"),
        None => f.write_str("not the leader; no leader is known"),
    }
}

impl std::error::Error for Stopped {}
impl std::error::Error for StartError {}
impl std::error::Error for ProposeError {}
impl std::error::Error for AdminError {}
impl std::error::Error for WaitError {}

impl From<openraft::error::Fatal<u64>> for Stopped {
    fn from(fatal: openraft::error::Fatal<u64>) -> Self {
        Stopped { reason: fatal.to_string() }
    }
}

impl From<RaftError<u64, ClientWriteError<u64, BasicNode>>> for ProposeError {
    fn from(err: RaftError<u64, ClientWriteError<u64, BasicNode>>) -> Self {
        match err {
            RaftError::APIError(ClientWriteError::ForwardToLeader(forward)) => {
                ProposeError::NotLeader { leader: forward.leader_id }
            }
            // A plain write never changes membership; should openraft report it anyway, the
            // write did not happen and the group cannot be trusted to go on.
            RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
                ProposeError::Stopped(Stopped { reason: format!("unexpected membership error on a write: {e}") })
            }
            RaftError::Fatal(fatal) => ProposeError::Stopped(fatal.into()),
        }
    }
}

impl From<RaftError<u64, ClientWriteError<u64, BasicNode>>> for AdminError {
    fn from(err: RaftError<u64, ClientWriteError<u64, BasicNode>>) -> Self {
        match err {
            RaftError::APIError(ClientWriteError::ForwardToLeader(forward)) => {
                AdminError::NotLeader { leader: forward.leader_id }
            }
            RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
                AdminError::Rejected { reason: e.to_string() }
            }
            RaftError::Fatal(fatal) => AdminError::Stopped(fatal.into()),
        }
    }
}

impl From<RaftError<u64, InitializeError<u64, BasicNode>>> for AdminError {
    fn from(err: RaftError<u64, InitializeError<u64, BasicNode>>) -> Self {
        match err {
            RaftError::APIError(e) => AdminError::Rejected { reason: e.to_string() },
            RaftError::Fatal(fatal) => AdminError::Stopped(fatal.into()),
        }
    }
}

impl From<openraft::metrics::WaitError> for WaitError {
    fn from(err: openraft::metrics::WaitError) -> Self {
        match err {
            openraft::metrics::WaitError::Timeout(after, what) => WaitError::Timeout { after, what },
            openraft::metrics::WaitError::ShuttingDown => WaitError::Stopped,
        }
    }
}
