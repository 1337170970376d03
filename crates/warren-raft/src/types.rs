//! openraft's type configuration for a group, and short names for the openraft messages that a
//! [`Transport`](crate::Transport) carries.
//!
//! These aliases are the one place where openraft's generic message types are spelled out, so a
//! transport (and its wire encoding) names `AppendRequest<M>` rather than openraft's paths.

use std::cmp::Ordering;
use std::fmt;
use std::marker::PhantomData;

use openraft::impls::OneshotResponder;
use openraft::{BasicNode, RaftTypeConfig, TokioRuntime};

use crate::Machine;

/// openraft's type configuration for a group replicating machine `M`.
///
/// Node ids are `u64`; a node's membership record carries its address as a string
/// ([`BasicNode`]); snapshots travel as whole byte vectors; the runtime is tokio.
pub struct Types<M>(PhantomData<fn() -> M>);

// openraft wants these traits on the configuration type itself. Deriving them would demand them
// of `M` too, so they are written out for the empty marker.
impl<M> fmt::Debug for Types<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Types")
    }
}
impl<M> Clone for Types<M> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<M> Copy for Types<M> {}
impl<M> Default for Types<M> {
    fn default() -> Self {
        Types(PhantomData)
    }
}
impl<M> PartialEq for Types<M> {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl<M> Eq for Types<M> {}
impl<M> PartialOrd for Types<M> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<M> Ord for Types<M> {
    fn cmp(&self, _: &Self) -> Ordering {
        Ordering::Equal
    }
}

impl<M: Machine> RaftTypeConfig for Types<M> {
    type D = M::Command;
    // `None` for entries without a command (blank and membership entries): openraft wants one
    // response per applied entry.
    type R = Option<M::Output>;
    type NodeId = u64;
    type Node = BasicNode;
    type Entry = openraft::Entry<Self>;
    type SnapshotData = Vec<u8>;
    type AsyncRuntime = TokioRuntime;
    type Responder = OneshotResponder<Self>;
}

/// A log entry of a group replicating `M`.
pub type Entry<M> = openraft::Entry<Types<M>>;
/// A leader's request to append entries (also its heartbeat).
pub type AppendRequest<M> = openraft::raft::AppendEntriesRequest<Types<M>>;
/// A follower's answer to an [`AppendRequest`].
pub type AppendResponse = openraft::raft::AppendEntriesResponse<u64>;
/// A candidate's request for a vote.
pub type VoteRequest = openraft::raft::VoteRequest<u64>;
/// The answer to a [`VoteRequest`].
pub type VoteResponse = openraft::raft::VoteResponse<u64>;
/// The leader's term and identity, sent along with a snapshot.
pub type Vote = openraft::Vote<u64>;
/// The vote a member starts with: the one it stored, as a vote cast and never as a leadership
/// held (`committed` off).
///
/// openraft 0.9 starts a member whose stored vote is its own committed one straight back as the
/// leader of that term. But a leader sends entries to its followers before its own copy is
/// durable, so a leader that crashed (or whose disk failed a write) can come back without the
/// tail of its log that followers hold. Leading the same term again, it would append other
/// entries at those indexes under the same log ids, and a follower that already holds the first
/// ones sees their ids match and keeps them: the copies of the machine diverge. Read back as a
/// vote cast, the member starts as a follower; it can never win that term again (it voted in
/// it), so any entry it appends later is under a new term. Every log store returns its vote
/// through this at startup (openraft reads the vote only then).
pub(crate) fn startup_vote(stored: Option<Vote>) -> Option<Vote> {
    stored.map(|v| Vote { leader_id: v.leader_id, committed: false })
}
/// A whole snapshot: what it covers (`meta`) and the machine's bytes (`snapshot`).
pub type Snapshot<M> = openraft::Snapshot<Types<M>>;
/// What a snapshot covers: its last log id and the membership at that point.
pub type SnapshotMeta = openraft::SnapshotMeta<u64, BasicNode>;
/// The answer to an installed snapshot.
pub type SnapshotResponse = openraft::raft::SnapshotResponse<u64>;
/// The payload of a log entry: nothing (a new leader's blank entry), a command, or a membership.
pub type EntryPayload<M> = openraft::EntryPayload<Types<M>>;
/// A log entry's identity: the leader (term and node) that wrote it, and its index.
pub type LogId = openraft::LogId<u64>;
/// The term and node of the leader that wrote a log entry.
pub type LeaderId = openraft::CommittedLeaderId<u64>;
/// A group's membership: one voter set, or two while a change is joint, and every member's
/// address (learners are the members outside the voter sets).
pub type Membership = openraft::Membership<u64, BasicNode>;
/// A membership and the id of the log entry that holds it.
pub type StoredMembership = openraft::StoredMembership<u64, BasicNode>;
