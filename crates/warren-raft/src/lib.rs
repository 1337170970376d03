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
//! - `log`: [`MemLog`], the in-memory log store; `file_log`: [`FileLog`], a durable one (a
//!   file per group); `wal`: [`Wal`], a node's write-ahead log shared by all its groups with
//!   group commit, and [`WalLog`], one group's durable log on it (what the cluster uses); any
//!   of them is passed to [`Group::start_with_log`].
//! - `state`: openraft's state machine store around a [`Machine`], snapshots in memory.
//! - `network`: [`Transport`], the seam for a real network, and its plumbing into openraft.
//! - `local`: [`LocalNet`], an in-process network with fault controls, for tests.
//! - `tcp`: [`TcpNode`], a node's endpoint on the real network: one authenticated TCP
//!   connection per peer carrying the RPCs of every group on the node, and [`TcpTransport`],
//!   one group's transport through it.
//! - [`codec`]: the wire encoding of the RPCs, and of log entries for a durable log.
//! - `types`: openraft's type configuration and the message types a transport carries.
//! - `error`: the error enums.
//!
//! # Time and randomness
//!
//! openraft runs on tokio: its timers are `tokio::time`, so a paused tokio clock controls them,
//! but each node draws its election timeout once, at start, from the thread's unseeded RNG.

#![warn(missing_docs)]

pub mod codec;
mod config;
mod error;
mod file_log;
mod group;
mod local;
mod log;
mod machine;
mod network;
mod state;
mod tcp;
#[cfg(test)]
mod test_machine;
mod types;
mod wal;

pub use config::{
    GroupConfig, DEFAULT_APPLIED_CAPACITY, DEFAULT_ELECTION_TIMEOUT_MAX_MS, DEFAULT_ELECTION_TIMEOUT_MIN_MS,
    DEFAULT_HEARTBEAT_MS, DEFAULT_KEPT_AFTER_SNAPSHOT_ENTRIES, DEFAULT_SNAPSHOT_EVERY_ENTRIES,
    DEFAULT_SNAPSHOT_TIMEOUT_MS,
};
pub use error::{AdminError, ProposeError, RegisterError, StartError, Stopped, WaitError};
pub use file_log::FileLog;
pub use group::{AppliedRx, Group, Role, Status};
pub use local::{LocalNet, LocalTransport};
pub use log::{DurableLog, MemLog};
pub use machine::{Applied, Machine};
pub use network::{Peer, RpcError, Transport};
pub use tcp::{
    Forwarded, Service, ServiceAnswer, TcpConfig, TcpNode, TcpStats, TcpTls, TcpTransport, DEFAULT_DEAD_AFTER_MS,
    DEFAULT_DIAL_TIMEOUT_MS, DEFAULT_HANDSHAKE_TIMEOUT_MS, DEFAULT_KEEPALIVE_MS, DEFAULT_MAX_FRAME_BYTES,
    DEFAULT_MAX_REQUESTS_IN_FLIGHT, DEFAULT_REDIAL_BACKOFF_MS, MIN_MAX_FRAME_BYTES,
};
pub use types::{
    AppendRequest, AppendResponse, Entry, EntryPayload, LeaderId, LogId, Membership, Snapshot, SnapshotMeta,
    SnapshotResponse, StoredMembership, Types, Vote, VoteRequest, VoteResponse,
};
pub use wal::{Wal, WalConfig, WalLog, WalStats, DEFAULT_WAL_SEGMENT_BYTES};
