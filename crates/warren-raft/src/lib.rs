//! warren-raft: replicated state machines for Warren, on openraft.
//!
//! Quorum queues and the broker's metadata are each a deterministic [`Machine`] replicated by a
//! Raft [`Group`] across the cluster's nodes (three, typically). A host proposes commands to the
//! group's leader; every node applies them in the same order and reports each output on its
//! applied stream, so the leader's host can act on the effects.
//!
//! # Why an adapter over openraft 0.9
//!
//! Raft itself is openraft's: elections, replication, membership changes, snapshots. We use its
//! stable 0.9 line (pinned exactly) because 0.10 is still reshaping its traits. openraft's API
//! is wide and generic, and it changes between releases, so it stays inside this crate: the rest
//! of Warren sees [`Machine`], [`Group`], [`Transport`] and plain error enums, and a move to a
//! later openraft touches only these files.
//!
//! # Layout
//!
//! - `machine`: [`Machine`], what a group replicates, and [`Applied`], what the host is told.
//! - `group`: [`Group`], one group on one node: start, initialize, propose, read, membership,
//!   status, shutdown, and the entry points for RPCs from peers.
//! - `config`: [`GroupConfig`] and its defaults, translated to openraft's config.
//! - `log`: [`MemLog`], the in-memory log store; a durable one implements the same openraft
//!   trait and is passed to [`Group::start_with_log`].
//! - `state`: openraft's state machine store around a [`Machine`], snapshots in memory.
//! - `network`: [`Transport`], the seam for a real network, and its plumbing into openraft.
//! - `local`: [`LocalNet`], an in-process network with fault controls, for tests.
//! - `types`: openraft's type configuration and the message types a transport carries.
//! - `error`: the error enums.
//!
//! # Time and randomness
//!
//! openraft runs on tokio: its timers are `tokio::time`, so a paused tokio clock controls them,
//! but each node draws its election timeout once, at start, from the thread's unseeded RNG.

#![warn(missing_docs)]

mod config;
mod error;
mod group;
mod local;
mod log;
mod machine;
mod network;
mod state;
mod types;

pub use config::{
    GroupConfig, DEFAULT_APPLIED_CAPACITY, DEFAULT_ELECTION_TIMEOUT_MAX_MS, DEFAULT_ELECTION_TIMEOUT_MIN_MS,
    DEFAULT_HEARTBEAT_MS, DEFAULT_KEPT_AFTER_SNAPSHOT_ENTRIES, DEFAULT_SNAPSHOT_EVERY_ENTRIES,
    DEFAULT_SNAPSHOT_TIMEOUT_MS,
};
pub use error::{AdminError, ProposeError, StartError, Stopped, WaitError};
pub use group::{AppliedRx, Group, Role, Status};
pub use local::{LocalNet, LocalTransport};
pub use log::MemLog;
pub use machine::{Applied, Machine};
pub use network::{Peer, RpcError, Transport};
pub use types::{
    AppendRequest, AppendResponse, Entry, Snapshot, SnapshotMeta, SnapshotResponse, Types, Vote, VoteRequest,
    VoteResponse,
};
