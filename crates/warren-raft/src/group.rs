//! [`Group`]: one Raft group on one node, the API the rest of Warren uses.
//!
//! A group owns an openraft `Raft` (which runs its core, replication and state machine as tokio
//! tasks) and a handle on the machine's state for reads. Proposals and administration go to the
//! core; RPCs from peers come in through `handle_*`; the node's status comes from openraft's
//! metrics, which the core publishes after every change.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use openraft::storage::RaftLogStorage;
use openraft::{BasicNode, Raft, RaftMetrics, ServerState};
use parking_lot::Mutex;
use tokio::sync::mpsc;

use crate::error::{AdminError, ProposeError, StartError, Stopped, WaitError};
use crate::log::{DurableLog, MemLog};
use crate::network::{NetworkFactory, Transport};
use crate::state::{MachineState, MachineStore};
use crate::types::{AppendRequest, AppendResponse, Snapshot, SnapshotResponse, Types, Vote, VoteRequest, VoteResponse};
use crate::{Applied, GroupConfig, Machine};

/// The receiving end of a node's applied stream: every command applied on this node, in log
/// order, and every snapshot its machine was restored from. See [`Applied`].
pub type AppliedRx<O> = mpsc::Receiver<Applied<O>>;

/// A node's role in its group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Receives the log but does not vote.
    Learner,
    /// A voter following a leader.
    Follower,
    /// A voter asking for votes.
    Candidate,
    /// The voter whose log the others copy.
    Leader,
    /// The group has stopped on this node.
    Shutdown,
}

/// What a node knows about its group, as of its last change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    /// This node's id.
    pub id: u64,
    /// The term this node is in.
    pub term: u64,
    /// This node's role.
    pub role: Role,
    /// The leader this node knows of.
    pub leader: Option<u64>,
    /// The member this node's vote in `term` is for (itself as a candidate), if any.
    pub voted_for: Option<u64>,
    /// Whether that vote is known to have won: `voted_for` leads `term`.
    pub vote_committed: bool,
    /// Index of the last entry in this node's log.
    pub last_log_index: Option<u64>,
    /// Index of the last entry applied to this node's machine.
    pub applied_index: Option<u64>,
    /// Last index covered by this node's latest snapshot.
    pub snapshot_index: Option<u64>,
    /// Last index purged from this node's log.
    pub purged_index: Option<u64>,
    /// The voters of the membership in effect here (both halves while a change is joint).
    pub voters: BTreeSet<u64>,
    /// The learners of the membership in effect here.
    pub learners: BTreeSet<u64>,
    /// On a leader, the last index it knows each other member to hold; empty elsewhere.
    pub matched: BTreeMap<u64, Option<u64>>,
}

impl Status {
    fn from_metrics(m: &RaftMetrics<u64, BasicNode>) -> Self {
        let role = match m.state {
            ServerState::Learner => Role::Learner,
            ServerState::Follower => Role::Follower,
            ServerState::Candidate => Role::Candidate,
            ServerState::Leader => Role::Leader,
            ServerState::Shutdown => Role::Shutdown,
        };
        let role = if m.running_state.is_err() { Role::Shutdown } else { role };
        let membership = m.membership_config.membership();
        let matched = m
            .replication
            .iter()
            .flatten()
            .filter(|(id, _)| **id != m.id)
            .map(|(id, log_id)| (*id, log_id.map(|l| l.index)))
            .collect();
        Status {
            id: m.id,
            term: m.current_term,
            role,
            leader: m.current_leader,
            voted_for: m.vote.leader_id().voted_for(),
            vote_committed: m.vote.is_committed(),
            last_log_index: m.last_log_index,
            applied_index: m.last_applied.map(|l| l.index),
            snapshot_index: m.snapshot.map(|l| l.index),
            purged_index: m.purged.map(|l| l.index),
            voters: membership.voter_ids().collect(),
            learners: membership.learner_ids().collect(),
            matched,
        }
    }
}

/// One Raft group on one node, replicating a machine `M`. Clones are handles on the same group.
pub struct Group<M: Machine> {
    id: u64,
    raft: Raft<Types<M>>,
    machine: Arc<Mutex<MachineState<M>>>,
    /// Whether this member's timers are off ([`set_quiet`](Self::set_quiet)).
    quiet: Arc<AtomicBool>,
    /// Whether this member refuses votes while its log is empty
    /// ([`set_votes_need_log`](Self::set_votes_need_log)).
    votes_need_log: Arc<AtomicBool>,
}

impl<M: Machine> Clone for Group<M> {
    fn clone(&self) -> Self {
        Group {
            id: self.id,
            raft: self.raft.clone(),
            machine: Arc::clone(&self.machine),
            quiet: Arc::clone(&self.quiet),
            votes_need_log: Arc::clone(&self.votes_need_log),
        }
    }
}

impl<M: Machine> Group<M> {
    /// Starts node `id` of a group with an in-memory log ([`MemLog`]), `machine` as its initial
    /// state, and `transport` to reach its peers.
    ///
    /// A new node is a learner that knows no peers: call [`initialize`](Self::initialize) on one
    /// node of a new group, or have the leader of an existing one add this node.
    pub async fn start<T: Transport<M>>(
        id: u64,
        config: &GroupConfig,
        machine: M,
        transport: T,
    ) -> Result<(Self, AppliedRx<M::Output>), StartError> {
        Self::start_with_log(id, config, machine, transport, MemLog::new()).await
    }

    /// Like [`start`](Self::start), with `log` as the log store: the seam for a durable log.
    ///
    /// `machine` must hold the state at the log's start: a store whose log was purged needs a
    /// machine restored from the matching snapshot.
    pub async fn start_with_log<T, L>(
        id: u64,
        config: &GroupConfig,
        machine: M,
        transport: T,
        log: L,
    ) -> Result<(Self, AppliedRx<M::Output>), StartError>
    where
        T: Transport<M>,
        L: RaftLogStorage<Types<M>>,
    {
        Self::launch(id, config, transport, log, |applied| Ok(MachineStore::new(machine, applied))).await
    }

    /// Starts node `id` durably: its log in `log` (a [`WalLog`](crate::WalLog) or a
    /// [`FileLog`](crate::FileLog)) and its snapshots in the file `snapshot_file`; a node that ran
    /// before comes back with its vote, its log and its latest snapshot (`machine` is restored
    /// from it), and applies the log on from there. The log purges only what a snapshot on disk
    /// covers ([`DurableLog`]).
    pub async fn start_durable<T, L>(
        id: u64,
        config: &GroupConfig,
        machine: M,
        transport: T,
        log: L,
        snapshot_file: std::path::PathBuf,
    ) -> Result<(Self, AppliedRx<M::Output>), StartError>
    where
        T: Transport<M>,
        L: RaftLogStorage<Types<M>> + DurableLog + Clone,
    {
        let gate: Arc<dyn DurableLog> = Arc::new(log.clone());
        Self::launch(id, config, transport, log, |applied| {
            MachineStore::durable(machine, applied, snapshot_file, gate)
                .map_err(|e| StartError::Storage { reason: format!("cannot read the group's snapshot: {e}") })
        })
        .await
    }

    /// Starts the group on the store `store` makes from the applied stream's sending end.
    async fn launch<T, L>(
        id: u64,
        config: &GroupConfig,
        transport: T,
        log: L,
        store: impl FnOnce(mpsc::Sender<Applied<M::Output>>) -> Result<MachineStore<M>, StartError>,
    ) -> Result<(Self, AppliedRx<M::Output>), StartError>
    where
        T: Transport<M>,
        L: RaftLogStorage<Types<M>>,
    {
        let raft_config = Arc::new(config.to_openraft()?);
        let (applied_tx, applied_rx) = mpsc::channel(config.applied_capacity);
        let store = store(applied_tx)?;
        let machine = store.state();
        let starting = store.clone();
        let network = NetworkFactory::new(transport);
        let raft = Raft::new(id, raft_config, network, log, store)
            .await
            .map_err(|e| StartError::Storage { reason: e.to_string() })?;
        starting.started().await;
        let (quiet, votes_need_log) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
        Ok((Group { id, raft, machine, quiet, votes_need_log }, applied_rx))
    }

    /// This node's id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Makes this pristine node the founder of a new group whose voters are `members` (node id
    /// to address, this node included); it then elects a leader.
    ///
    /// Call it on one node only. Calling it again, or on a node that already has a log, is
    /// rejected, which is harmless.
    pub async fn initialize(&self, members: BTreeMap<u64, String>) -> Result<(), AdminError> {
        let nodes: BTreeMap<u64, BasicNode> = members.into_iter().map(|(id, addr)| (id, BasicNode { addr })).collect();
        self.raft.initialize(nodes).await?;
        Ok(())
    }

    /// Proposes `command`; once a quorum holds it and it is applied here, returns its log index
    /// and the machine's output.
    ///
    /// Only the leader accepts proposals. A leader cut off from its quorum keeps the proposal
    /// pending until it commits (the cut heals in time) or the node learns of a newer leader
    /// (then it fails with [`ProposeError::NotLeader`]), so callers should bound the wait.
    pub async fn propose(&self, command: M::Command) -> Result<(u64, M::Output), ProposeError> {
        self.submit(command)?.await
    }

    /// Hands `command` to the group's core now and returns the wait for its outcome (what
    /// [`propose`](Self::propose) returns). Commands submitted one after another from one task
    /// are appended to the log in that order, however their waits are then awaited: this is
    /// how a host keeps several proposals in flight without reordering them.
    ///
    /// The hand-over itself never waits: openraft 0.9's core takes requests through an
    /// unbounded channel, so the send completes on its first poll (a send that does not is a
    /// core that stopped, reported as such).
    ///
    /// A quiet member ([`set_quiet`](Self::set_quiet)) that leads, or knows no leader, wakes
    /// up first: a leader's followers must hear its heartbeats again, and a member without a
    /// leader must be able to call an election. One that knows another leader stays quiet (the
    /// command goes there, and wakes that one).
    pub fn submit(
        &self,
        command: M::Command,
    ) -> Result<impl Future<Output = Result<(u64, M::Output), ProposeError>> + Send + 'static, ProposeError> {
        if self.is_quiet() {
            let leader = self.leader();
            if leader.is_none() || leader == Some(self.id) {
                self.set_quiet(false);
            }
        }
        let send = std::pin::pin!(self.raft.client_write_ff(command));
        let rx = match send.poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(Ok(rx)) => rx,
            Poll::Ready(Err(fatal)) => return Err(ProposeError::Stopped(fatal.into())),
            Poll::Pending => {
                return Err(ProposeError::Stopped(Stopped { reason: "the raft core took no more requests".to_owned() }))
            }
        };
        Ok(async move {
            let result = rx.await.map_err(|_| {
                ProposeError::Stopped(Stopped { reason: "the raft core stopped before answering".to_owned() })
            })?;
            let response = result.map_err(|e| ProposeError::from(openraft::error::RaftError::APIError(e)))?;
            let index = response.log_id.index;
            match response.data {
                Some(output) => Ok((index, output)),
                // openraft answers a proposal with the response its own entry produced, and a
                // command entry always produces one.
                None => Err(ProposeError::Stopped(Stopped {
                    reason: format!("no output for the command at index {index}"),
                })),
            }
        })
    }

    /// The leader this node knows of. A node's view may be stale; only a successful
    /// [`propose`](Self::propose) proves leadership.
    pub fn leader(&self) -> Option<u64> {
        self.raft.metrics().borrow().current_leader
    }

    /// Whether this node believes it is the leader (see [`leader`](Self::leader)).
    pub fn is_leader(&self) -> bool {
        self.leader() == Some(self.id)
    }

    /// What this node knows about its group now.
    ///
    /// A member whose core ended without saying so (a panic in one of openraft's tasks drops
    /// the core's metrics before it can publish `Shutdown`) is reported `Shutdown` all the same.
    pub fn status(&self) -> Status {
        let metrics = self.raft.metrics();
        let mut status = Status::from_metrics(&metrics.borrow());
        if metrics.has_changed().is_err() {
            status.role = Role::Shutdown;
        }
        status
    }

    /// Waits until `condition` holds for this node's status, for at most `timeout`; returns the
    /// status that satisfied it. `what` names the condition in the timeout error.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        what: &str,
        condition: impl Fn(&Status) -> bool + Send,
    ) -> Result<Status, WaitError> {
        let metrics = self.raft.wait(Some(timeout)).metrics(move |m| condition(&Status::from_metrics(m)), what).await?;
        Ok(Status::from_metrics(&metrics))
    }

    /// Waits until this node knows a leader; returns its id.
    pub async fn wait_for_leader(&self, timeout: Duration) -> Result<u64, WaitError> {
        let status = self.wait_until(timeout, "a leader", |s| s.leader.is_some()).await?;
        // The condition guarantees a leader; the fallback only satisfies the type.
        status.leader.ok_or(WaitError::Stopped)
    }

    /// Waits until this node has applied the entry at `index`.
    pub async fn wait_for_applied(&self, index: u64, timeout: Duration) -> Result<(), WaitError> {
        let what = format!("applied index >= {index}");
        self.wait_until(timeout, &what, |s| s.applied_index >= Some(index)).await?;
        Ok(())
    }

    /// Runs `read` on this node's machine and returns its result.
    ///
    /// The machine holds what this node has applied, which on a follower may lag the leader. The
    /// group cannot apply while `read` runs, so keep it short.
    pub fn with_machine<R>(&self, read: impl FnOnce(&M) -> R) -> R {
        read(&self.machine.lock().machine)
    }

    /// On the leader: adds node `id` at `addr` as a learner and starts sending it the log;
    /// returns the index of the membership entry once committed. The learner may still be
    /// catching up: wait for the leader's [`Status::matched`] before making it a voter.
    pub async fn add_learner(&self, id: u64, addr: String) -> Result<u64, AdminError> {
        let response = self.raft.add_learner(id, BasicNode { addr }, false).await?;
        Ok(response.log_id.index)
    }

    /// On the leader: makes `voters` the group's voters, through a joint configuration; every
    /// new voter must already be a learner. Voters left out are removed from the group; learners
    /// stay learners. Returns the index of the final membership entry once committed.
    pub async fn change_membership(&self, voters: BTreeSet<u64>) -> Result<u64, AdminError> {
        let response = self.raft.change_membership(voters, false).await?;
        Ok(response.log_id.index)
    }

    /// On the leader: as [`change_membership`](Self::change_membership), but voters left out
    /// become learners rather than leave: they go on receiving the log, so each of them sees
    /// the membership that takes it out (its own [`Status::voters`] no longer has it). Drop
    /// them afterwards with [`remove_learners`](Self::remove_learners).
    pub async fn change_membership_retaining(&self, voters: BTreeSet<u64>) -> Result<u64, AdminError> {
        let response = self.raft.change_membership(voters, true).await?;
        Ok(response.log_id.index)
    }

    /// On the leader: removes learners `ids` from the group (voters among them are refused).
    /// Returns the index of the membership entry once committed.
    pub async fn remove_learners(&self, ids: BTreeSet<u64>) -> Result<u64, AdminError> {
        let response = self.raft.change_membership(openraft::ChangeMembers::RemoveNodes(ids), false).await?;
        Ok(response.log_id.index)
    }

    /// Asks this node to snapshot its machine now, whatever the snapshot policy says; returns
    /// without waiting for the snapshot (see [`Status::snapshot_index`]).
    pub async fn trigger_snapshot(&self) -> Result<(), Stopped> {
        self.raft.trigger().snapshot().await?;
        Ok(())
    }

    /// Calls an election now, without waiting for the election timeout: for a host that knows
    /// the leader is gone (its node's connection closed), which is how a leader killed outright
    /// is replaced in well under the timeout. Other members still refuse their vote until
    /// their leader lease (`election_timeout_max_ms` since they last heard the leader) ends.
    pub async fn campaign(&self) -> Result<(), Stopped> {
        self.raft.trigger().elect().await.map_err(|e| Stopped { reason: format!("raft core task failed: {e}") })
    }

    /// Turns this member's timers off (`true`) or on again: a quiet leader sends no heartbeats
    /// and a quiet follower never calls an election on its own; appends, votes and proposals
    /// go on as ever. For a group with nothing to do, whose host watches the leader's node
    /// itself (and calls [`campaign`](Self::campaign) when it goes): a thousand idle groups
    /// then cost no heartbeats at all. Wake a leader before its followers, and quiet followers
    /// before their leader, so that none calls an election for want of heartbeats.
    pub fn set_quiet(&self, quiet: bool) {
        self.quiet.store(quiet, Ordering::Relaxed);
        self.raft.runtime_config().tick(!quiet);
    }

    /// Whether this member's timers are off ([`set_quiet`](Self::set_quiet)).
    pub fn is_quiet(&self) -> bool {
        self.quiet.load(Ordering::Relaxed)
    }

    /// Stops the group on this node: its tasks end, pending proposals fail with
    /// [`ProposeError::Stopped`], and RPCs to it fail. Errs only if its core task had panicked.
    pub async fn shutdown(&self) -> Result<(), Stopped> {
        self.raft.shutdown().await.map_err(|e| Stopped { reason: format!("raft core task failed: {e}") })
    }

    /// Handles a leader's append-entries request that arrived from the network.
    pub async fn handle_append(&self, request: AppendRequest<M>) -> Result<AppendResponse, Stopped> {
        self.raft.append_entries(request).await.map_err(fatal_only)
    }

    /// Makes this member refuse every vote while its log is empty (`true`): for a member
    /// started with nothing on a node that held the group before and lost it (a node reset and
    /// joined again under its name, whose id the group may still count among its voters). Its
    /// empty log would grant any candidate its vote, as if it had never promised one nor
    /// acknowledged an entry, and a candidate missing committed entries could win with it.
    /// Once the leader has sent it the log (it is added again), it votes as any member.
    pub fn set_votes_need_log(&self, need: bool) {
        self.votes_need_log.store(need, Ordering::Relaxed);
    }

    /// Handles a candidate's vote request that arrived from the network.
    pub async fn handle_vote(&self, request: VoteRequest) -> Result<VoteResponse, Stopped> {
        if self.votes_need_log.load(Ordering::Relaxed) {
            let metrics = self.raft.metrics().borrow().clone();
            if metrics.last_log_index.is_none() && metrics.snapshot.is_none() {
                return Ok(VoteResponse { vote: metrics.vote, vote_granted: false, last_log_id: None });
            }
        }
        self.raft.vote(request).await.map_err(fatal_only)
    }

    /// Installs a whole snapshot sent by the leader whose term and id are `vote`.
    pub async fn handle_snapshot(&self, vote: Vote, snapshot: Snapshot<M>) -> Result<SnapshotResponse, Stopped> {
        Ok(self.raft.install_full_snapshot(vote, snapshot).await?)
    }
}

/// openraft's error for RPCs that can only fail fatally.
fn fatal_only(err: openraft::error::RaftError<u64>) -> Stopped {
    match err {
        openraft::error::RaftError::APIError(never) => match never {},
        openraft::error::RaftError::Fatal(fatal) => fatal.into(),
    }
}
